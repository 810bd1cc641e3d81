"""The README's Python blocks run as written, and its commands name real CLI flags."""

import re
import shlex
from pathlib import Path

import pytest

from polyhead.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[index], f"README.md python block {index}", "exec"), {})


def _commands() -> list[tuple[str, set[str]]]:
    """``(sub-command, --flags)`` of every ``polyhead ...`` the README shows: bash blocks and
    inline code (the command table)."""
    found = []
    lines = [ln for b in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S) for ln in b.split("\n")]
    spans = re.findall(r"`(polyhead [^`]+)`", TEXT) + lines
    for span in spans:
        _, sep, rest = span.partition("polyhead ")
        words = shlex.split(rest.replace("\\|", " ").replace("[", " ").replace("]", " "))
        if sep and words and words[0].islower() and not words[0].startswith("-"):
            found.append((words[0], set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest))))
    return found


def test_readme_commands_use_real_commands_and_flags():
    commands = _commands()
    assert len(commands) > 5, "the README shows polyhead commands"
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command, used in commands:
        assert command in sub, command
        flags = {o for a in sub[command]._actions for o in a.option_strings}
        assert used <= flags, (command, used - flags)
