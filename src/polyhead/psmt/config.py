"""psmt config entries as polyhead ones: the model, the datasets and the Kendall loss.

`translate_config` rewrites a psmt run config (plain data) in place of the entries polyhead
reads: ``model`` (psmt's ``UPerNetDualHead``), ``train/val/test_dataset`` (psmt's
``RandomCropSegmentationDataset``) and ``loss`` (psmt's ``DualHeadKendallLoss``, which becomes
``task.balancing``: polyhead's `UncertaintyWeighting` over the terms ``A``, ``B`` and
``consistency``). An option polyhead cannot honour fails as one `ConfigError` line naming it;
options that change nothing in polyhead are reported. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from polyhead.errors import ConfigError

SEED = "pytorch_segmentation_models_trainer"
PSMT_MODEL = f"{SEED}.custom_models.upernet_dual_head.UPerNetDualHead"
PSMT_DATASET = f"{SEED}.dataset_loader.dataset.RandomCropSegmentationDataset"
PSMT_KENDALL = f"{SEED}.custom_losses.loss.DualHeadKendallLoss"
DUAL_HEAD = "polyhead.models.UPerNetDualHead"
MULTI_HEAD = "polyhead.models.MultiHeadSegmentationModel"
DATASET = "polyhead.data.RandomCropSegmentationDataset"
BALANCER = "polyhead.losses.balancing.UncertaintyWeighting"

#: psmt's UPerNetDualHead arguments polyhead takes as they are, with psmt's defaults
MODEL_DEFAULTS: dict[str, Any] = {
    "encoder_name": "tu-convnextv2_tiny.fcmae_ft_in22k_in1k_384",
    "encoder_depth": 5,
    "encoder_weights": "imagenet",
    "decoder_channels": 256,
    "in_channels": 3,
    "classes": 6,
    "inference_head": "average",
}
#: psmt model options polyhead supports only at these values (its heads' own behaviour)
MODEL_ONLY: dict[str, tuple[Any, ...]] = {
    "activation": (None, "identity"),
    "upsampling": (4,),
    "output_stride": (None, 32),
}
DEFAULT_NORM = "batchnorm"

#: dataset options with the same name and meaning in polyhead
DATASET_SAME = (
    "input_csv_path",
    "samples_per_epoch",
    "n_classes",
    "soft_labels",
    "augmentation_list",
    "data_loader",
    "grid_mode",
    "ignore_index",
    "validate",
    "extra_targets",
    "nonfinite",
)
#: psmt dataset options translated (crop_size [h, w], the second CSV of hard masks)
DATASET_TRANSLATED = ("crop_size", "hard_mask_csv", "return_hard_mask")
#: psmt dataset options that match polyhead only at these values; others are refused
DATASET_ONLY: dict[str, tuple[Any, ...]] = {
    "class_balanced_sampling": (False,),
    "cutmix_prob": (0,),
    "classmix": (False,),
    "pre_mix_color_aug": (None, []),
    "selected_bands": (None,),
    "min_valid_ratio": (0,),
    "overlap_x": (0,),
    "overlap_y": (0,),
    "class_presence_cache": (None,),
    "grid_cache": (None,),
    "image_key": (None, "image"),
    "mask_key": (None, "mask"),
    "root_dir": (None,),
    "n_first_rows_to_read": (None,),
    "gpu_augmentation_list": (None, []),
}
#: psmt dataset options without effect in polyhead (reading, caching, options of the
#: sampling features above when those are off): accepted and reported
DATASET_NO_EFFECT = (
    "use_rasterio",
    "reset_augmentation_function",
    "file_cache_maxsize",
    "max_retries",
    "class_sampling_stride",
    "cutmix_alpha",
    "cutmix_rare_classes",
    "cutmix_rare_weights",
    "cutmix_rare_prob",
)
#: psmt's defaults where polyhead has none
DATASET_DEFAULTS = {"crop_size": 256, "n_classes": 2, "samples_per_epoch": 10000}

#: DualHeadKendallLoss options and the task argument each becomes
KENDALL_TASK_ARGS = {"consistency_warmup_epochs": "consistency_warmup_epochs"}
KENDALL_CHECKED = ("num_classes", "ignore_index")
#: psmt's learned log-sigma tensors and the polyhead term each seeds
SIGMA_TERMS = {"log_sigma_hard": "A", "log_sigma_soft": "B", "log_sigma_consist": "consistency"}

#: ``place(key, input_csv_path, hard_mask_csv) -> path of the merged CSV``
Placer = Callable[[str, str, str], str]


def _refuse(key: str, what: str, bad: list[str], supported: list[str]) -> ConfigError:
    return ConfigError(
        f"{key}: psmt {what} option(s) polyhead does not support: {', '.join(bad)} "
        f"(supported: {', '.join(supported)})"
    )


def _same(value: Any, allowed: Any) -> bool:
    if value is None or allowed is None or isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed  # True is not 1 here, nor None 0
    return value == allowed


def _unequal(value: Any, allowed: tuple[Any, ...]) -> bool:
    return not any(_same(value, a) for a in allowed)


def translate_model(node: Mapping[str, Any], key: str = "model") -> dict[str, Any]:
    """psmt's ``UPerNetDualHead`` entry as polyhead's (same weights layout: heads ``A``
    (hard) and ``B`` (soft)): `UPerNetDualHead`, or a `MultiHeadSegmentationModel` of two
    UPerNet heads when ``decoder_use_norm`` is not psmt's default."""
    opts = {k: v for k, v in node.items() if k != "_target_"}
    known = [*MODEL_DEFAULTS, "decoder_use_norm", *MODEL_ONLY]
    bad = [f"{k}={v!r}" for k, v in opts.items() if k in MODEL_ONLY and _unequal(v, MODEL_ONLY[k])]
    bad += sorted(k for k in opts if k not in known)
    if bad:
        raise _refuse(key, "UPerNetDualHead", bad, known)
    out = {k: opts.get(k, default) for k, default in MODEL_DEFAULTS.items()}
    norm = opts.get("decoder_use_norm", DEFAULT_NORM)
    if norm == DEFAULT_NORM:
        return {"_target_": DUAL_HEAD, **out}
    head = {"decoder": "upernet", "decoder_channels": out.pop("decoder_channels")}
    head["decoder_use_norm"] = norm
    heads = {"A": {**head, "role": "hard"}, "B": {**head, "role": "soft"}}
    return {"_target_": MULTI_HEAD, "heads": heads, **out}


def square_crop(value: Any, key: str) -> Any:
    """psmt's ``crop_size`` ``[h, w]`` as polyhead's one side (crops are square)."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(
                f"{key}.crop_size is {list(value)}; polyhead crops squares: give one size "
                "(or [n, n])"
            )
        return value[0]
    return value


def _polyhead_dataset_options(opts: Mapping[str, Any]) -> list[str]:
    """Options of ``opts`` that only polyhead's dataset takes (a polyhead option given under
    psmt's name); polyhead's dataset module is imported only when there are such options."""
    psmt = {*DATASET_SAME, *DATASET_TRANSLATED, *DATASET_ONLY, *DATASET_NO_EFFECT}
    rest = [k for k in opts if k not in psmt]
    if not rest:
        return []
    import inspect

    from polyhead.data import RandomCropSegmentationDataset

    own = inspect.signature(RandomCropSegmentationDataset).parameters
    return [k for k in rest if k in own]


def translate_dataset(
    node: Mapping[str, Any], key: str, place: Placer, notes: list[str] | None = None
) -> dict[str, Any]:
    """psmt's ``RandomCropSegmentationDataset`` entry as polyhead's.

    ``hard_mask_csv`` with ``soft_labels``: ``place`` gets the two CSVs and returns the path
    of the merged ``image,mask,soft_mask`` CSV (`polyhead.psmt.masks`). Options without
    effect are appended to ``notes`` as ``key.option``.
    """
    opts = {k: v for k, v in node.items() if k != "_target_"}
    same = [*DATASET_SAME, *_polyhead_dataset_options(opts)]
    known = [*same, *DATASET_TRANSLATED, *DATASET_ONLY, *DATASET_NO_EFFECT]
    bad = [
        f"{k}={v!r}" for k, v in opts.items() if k in DATASET_ONLY and _unequal(v, DATASET_ONLY[k])
    ]
    bad += sorted(k for k in opts if k not in known)
    if bad:
        raise _refuse(key, "RandomCropSegmentationDataset", bad, known)
    if opts.get("samples_per_epoch") == 0 and not opts.get("grid_mode"):
        raise ConfigError(
            f"{key}.samples_per_epoch is 0 (psmt: count it from the image area); polyhead "
            "needs the number of crops per epoch"
        )
    out = {"_target_": DATASET, **{k: opts[k] for k in same if k in opts}}
    for k, default in DATASET_DEFAULTS.items():
        if k == "samples_per_epoch" and opts.get("grid_mode"):
            continue
        out.setdefault(k, default)
    out["crop_size"] = square_crop(opts.get("crop_size", out["crop_size"]), key)
    ignored = [k for k in DATASET_NO_EFFECT if k in opts]
    hard_csv = opts.get("hard_mask_csv")
    if hard_csv and opts.get("soft_labels"):
        out["input_csv_path"] = place(key, str(opts["input_csv_path"]), str(hard_csv))
    elif hard_csv or opts.get("return_hard_mask"):  # psmt reads them only with soft labels
        ignored += [k for k in ("hard_mask_csv", "return_hard_mask") if opts.get(k)]
    if notes is not None:
        notes += [f"{key}.{k}" for k in ignored]
    return out


def kendall_task_args(
    node: Mapping[str, Any],
    key: str = "loss",
    classes: int | None = None,
    sigmas: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """psmt's ``DualHeadKendallLoss`` entry as ``SegmentationTask`` arguments: the learned
    `UncertaintyWeighting` (``balancing``; psmt's ``log sigma`` becomes ``log sigma^2``), its
    unweighted consistency term (``consistency_weight: 1``) and warm-up. ``sigmas`` (psmt's
    ``log_sigma_*`` values) seed the balancing."""
    opts = {k: v for k, v in node.items() if k != "_target_"}
    known = [*KENDALL_TASK_ARGS, *KENDALL_CHECKED]
    bad = sorted(k for k in opts if k not in known)
    if bad:
        raise _refuse(key, "DualHeadKendallLoss", bad, known)
    if classes is not None and opts.get("num_classes", classes) != classes:
        raise ConfigError(
            f"{key}.num_classes is {opts['num_classes']}, the model has {classes} classes"
        )
    balancing: dict[str, Any] = {"_target_": BALANCER}
    if sigmas:
        balancing["init"] = {SIGMA_TERMS[n]: 2.0 * float(v) for n, v in sigmas.items()}
    args: dict[str, Any] = {"balancing": balancing, "consistency_weight": 1.0}
    for name, arg in KENDALL_TASK_ARGS.items():
        if name in opts:
            args[arg] = opts[name]
    if "ignore_index" in opts:
        args["ignore_index"] = opts["ignore_index"]
    return args


def _is(node: Any, target: str) -> bool:
    return isinstance(node, Mapping) and node.get("_target_") == target


def _dataset_slots(cfg: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """``(parent, name, key)`` of every dataset entry (flat layout and ``data.*``)."""
    slots = [(cfg, name, name) for name in ("train_dataset", "val_dataset", "test_dataset")]
    data = cfg.get("data")
    if isinstance(data, dict):
        slots += [(data, n, f"data.{n}") for n in ("train_dataset", "val_dataset", "test_dataset")]
    return [s for s in slots if _is(s[0].get(s[1]), PSMT_DATASET)]


def _move_kendall(cfg: dict[str, Any], sigmas: Mapping[str, float] | None) -> bool:
    """Replace a Kendall ``loss`` (top level or ``task.loss``) by task arguments."""
    task = dict(cfg.get("task") or {})
    if _is(cfg.get("loss"), PSMT_KENDALL):
        node, key = cfg.pop("loss"), "loss"
    elif _is(task.get("loss"), PSMT_KENDALL):
        node, key = task.pop("loss"), "task.loss"
    else:
        return False
    if "balancing" in task:
        raise ConfigError(f"{key} is psmt's DualHeadKendallLoss and task.balancing is set too")
    classes = (cfg.get("model") or {}).get("classes")
    task.update(kendall_task_args(node, key, classes if isinstance(classes, int) else None, sigmas))
    cfg["task"] = task
    return True


def translate_config(
    cfg: Mapping[str, Any],
    place: Placer,
    sigmas: Mapping[str, float] | None = None,
    report: Callable[[str], None] | None = print,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(config, {psmt target: what replaced it})``: a copy of a plain run config with psmt's
    model, datasets and Kendall loss translated (see the module doc); ``report`` gets one line
    naming the options that have no effect in polyhead."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    used: dict[str, str] = {}
    if _is(out.get("model"), PSMT_MODEL):
        out["model"] = translate_model(out["model"])
        used[PSMT_MODEL] = out["model"]["_target_"]
    notes: list[str] = []
    for parent, name, key in _dataset_slots(out):
        parent[name] = translate_dataset(parent[name], key, place, notes)
        used[PSMT_DATASET] = DATASET
    if _move_kendall(out, sigmas):
        used[PSMT_KENDALL] = f"{BALANCER} (task.balancing)"
    if notes and report is not None:
        report(f"polyhead: psmt options without effect in polyhead, ignored: {', '.join(notes)}")
    return out, used
