"""A newcomer's first commands: quick ``--help`` (no torch imported), ``--version``, defaults
in every command's help, and a ``polyhead train`` without Lightning's banners (``--verbose``:
with them)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from polyhead.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "torchmetrics", "rasterio", "matplotlib", "albumentations")
COMMANDS = (
    "train",
    "predict",
    "check-data",
    "demo",
    "aggregate",
    "compare",
    "export",
    "distill-targets",
)
#: what Lightning prints at the start of a run (banners, tips, model summary) and its
#: short-epoch warning
BANNERS = ("GPU available", "TPU available", "litlogger", "Total FLOPs", "log_every_n_steps")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "POLYHEAD_VERBOSE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _commands() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


def test_building_the_parser_imports_no_heavy_library():
    code = (
        "import sys, polyhead.cli as c; c.build_parser(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"building the parser imported {proc.stdout.strip()}"


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    description = out.split("positional arguments")[0]
    for command in (*COMMANDS, *_commands()):
        assert command in description, command
    assert "--version" in out and "--verbose" in out and "--debug" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_lists_its_options_and_defaults(command, capsys):
    parser = _commands()[command]
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help lines wrap at any width
    for action in parser._actions:
        for option in action.option_strings:
            assert option in out, option
        default = action.default
        if action.option_strings and default is not None and not isinstance(default, bool):
            if default != "==SUPPRESS==":
                assert f"(default: {default})" in out, (action.dest, default)


def test_every_registered_command_help_exits_zero(capsys):
    for command in _commands():  # also commands added after this test was written
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0, command
        assert f"usage: polyhead {command}" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"polyhead {version('polyhead')}"


@pytest.mark.parametrize("package", ["polyhead.aggregation", "polyhead.distill"])
def test_lazy_packages_keep_every_public_name(package):
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):  # submodules set package attributes
        importlib.import_module(f"{package}.{info.name}")
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None and not isinstance(value, types.ModuleType), name
        assert name in dir(module)
    assert module.__all__ == sorted(set(module.__all__))
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_the_cli_and_train_read_the_same_verbose_variable():
    from polyhead import cli, train

    assert cli.VERBOSE_ENV == train.VERBOSE_ENV


def _train_output(config: Path, *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "polyhead", "train", "--config", str(config), *flags],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_is_quiet_unless_verbose(synthetic, tmp_path):
    from polyhead.demo.run import demo_config

    cfg = demo_config(
        synthetic, tmp_path / "runs", 1, "resnet18", crop_size=32, samples_per_epoch=8
    )
    cfg["train_dataset"]["data_loader"]["batch_size"] = 4
    cfg["pl_trainer"].update(enable_progress_bar=False, log_every_n_steps=50)
    del cfg["pl_trainer"]["enable_model_summary"]  # Lightning's default: a summary
    config = tmp_path / "train.yaml"
    OmegaConf.save(OmegaConf.create(cfg), config)

    quiet = _train_output(config)
    assert not [line for line in quiet.splitlines() if any(b in line for b in BANNERS)], quiet
    assert "site-packages" not in quiet, quiet
    loud = _train_output(config, "--verbose")
    for banner in BANNERS:
        assert banner in loud, (banner, loud)
