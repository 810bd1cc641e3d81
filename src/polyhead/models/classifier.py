"""Multi-head image classifier: one timm or torchvision backbone, named heads split off it.

Backbones: ``"resnet18"`` / ``"timm:resnet18"`` (timm, built without classifier) or
``"torchvision:shufflenet_v2_x0_5"`` (any ``torchvision.models`` builder).

Split points (``split_at``) name where the heads branch off:

- ``None``: the whole backbone is shared (timm: ``forward_features`` then
  ``forward_head(pre_logits=True)``; torchvision: its conv trunk then a global mean) and each
  head is only a linear layer on the shared pooled features.
- a block name, e.g. ``"conv5"`` (ShuffleNetV2, the article's split), ``"layer4"`` (ResNet),
  ``"stages.3"``, ``"blocks.5"``: that block and all blocks after it are copied into each head.
  Blocks are the top-level children run by the feature pass; a ``Sequential`` holding several
  resolutions (timm ``blocks``/``stages``, torchvision ``features``) is opened one level, and
  naming a child (``"stage4.2"``) opens its parent.
- an int ``k``: stage ``k``, a run of consecutive blocks with the same output resolution
  (stage 0 is the stem); negative values count from the end.
- ``"last_stage"`` (default) = ``-1``, e.g. ResNet ``layer4``, ShuffleNetV2 ``stage4``+``conv5``.

:func:`describe_blocks` lists a backbone's blocks and stages. Split heads get their own copy of
the pooling (timm's ``forward_head`` in pre-logits mode, so ConvNeXt head norms are copied too;
a global mean for torchvision) and their own ``nn.Linear``. A 1-output head is a binary logit,
2+ outputs are class logits. A probe pass checks once that the blocks really run one after
another; backbones doing more between blocks (ViTs add position embeddings) accept only
``split_at=None``.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError, WeightsError
from polyhead.models.encoder import load_encoder_weights

LAST_STAGE = "last_stage"
_PROBE_SIZE = 64


def _build_backbone(backbone: str, in_channels: int) -> tuple[nn.Module, str]:
    """Build a randomly initialised backbone; returns (module, family: 'timm' | 'torchvision')."""
    family, _, name = backbone.rpartition(":")
    family = family or "timm"
    if family not in ("timm", "torchvision"):
        raise ConfigError(f"backbone {backbone!r}: prefix must be 'timm:' or 'torchvision:'")
    if family == "torchvision" and in_channels != 3:
        raise ConfigError(f"backbone {backbone!r}: torchvision models take 3 input channels")
    import timm
    import torchvision

    try:
        if family == "torchvision":
            return torchvision.models.get_model(name, weights=None), family
        return timm.create_model(name, num_classes=0, in_chans=in_channels), family
    except (ValueError, RuntimeError) as err:  # unknown model names
        raise ConfigError(f"backbone {backbone!r}: {err}") from err


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> int:
    """Load a local state dict into a whole backbone (classifier tensors of the file that the
    backbone lacks are ignored); every backbone tensor must be found. Returns the count."""
    loaded, total = load_encoder_weights(model, path)
    if loaded < total:
        raise WeightsError(
            f"{path}: only {loaded} of the backbone's {total} tensors are in the file; "
            "is the file for this backbone?"
        )
    return loaded


def _is_path(w: Any) -> bool:
    return isinstance(w, os.PathLike) or (
        isinstance(w, str) and (os.sep in w or bool(Path(w).suffix))
    )


@dataclass
class _Node:
    name: str
    module: nn.Module
    children: list[_Node] | None = None
    calls: list[tuple[int, Any, Any]] = field(default_factory=list)  # (order, args, output)


def _tree(model: nn.Module, open_names: set[str]) -> tuple[list[_Node], list[_Node]]:
    """(top-level nodes, all nodes): Sequential/ModuleList children and ancestors of named
    blocks get their children listed (opened only if needed, see :func:`_choose`)."""
    every: list[_Node] = []

    def walk(prefix: str, module: nn.Module, depth: int) -> list[_Node]:
        nodes = []
        for name, child in module.named_children():
            node = _Node(f"{prefix}{name}", child)
            named = any(n.startswith(node.name + ".") for n in open_names)
            container = depth == 0 and isinstance(child, nn.Sequential | nn.ModuleList)
            every.append(node)
            if (named or container) and len(list(child.children())) > 0:
                node.children = walk(node.name + ".", child, depth + 1)
            nodes.append(node)
        return nodes

    return walk("", model, 0), every


def _resolution(out: Any) -> Any:
    return tuple(out.shape[-2:]) if isinstance(out, torch.Tensor) and out.ndim == 4 else None


def _choose(node: _Node, open_names: set[str]) -> list[_Node]:
    """A container stays one block unless it is named open, is never called as a whole, or
    its children's outputs change resolution (a container holding several stages)."""
    if node.children is None:
        return [node] if node.calls else []
    called = [c for c in node.children if c.calls]
    named = any(n.startswith(node.name + ".") for n in open_names)
    several = len({_resolution(c.calls[-1][2]) for c in called}) > 1
    if node.calls and not named and not several:
        return [node]
    return [b for c in node.children for b in _choose(c, open_names)]


def _probe(
    model: nn.Module, family: str, open_names: set[str], size: int, in_channels: int
) -> tuple[list[tuple[str, nn.Module]], list[tuple[int, ...]], bool]:
    """Run the feature pass once on a random probe; returns (trunk blocks in call order, their
    output shapes, whether each block got exactly the previous block's output)."""
    roots, nodes = _tree(model, open_names)
    tick = itertools.count()
    hooks = [
        n.module.register_forward_hook(
            lambda _m, args, out, n=n: n.calls.append((next(tick), args, out))
        )
        for n in nodes
    ]
    x = torch.randn(1, in_channels, size, size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            final = model.forward_features(x) if family == "timm" else model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    blocks = [b for root in roots for b in _choose(root, open_names)]
    blocks.sort(key=lambda b: b.calls[0][0])  # hooks fire in execution order
    trunk: list[_Node] = []
    for block in blocks:  # torchvision: the trunk ends where pooling / flat tensors begin
        pooling = isinstance(block.module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
        if family == "torchvision" and (pooling or _resolution(block.calls[0][2]) is None):
            break
        trunk.append(block)
    chain = [x] + [b.calls[0][2] for b in trunk]  # each block must get the previous output
    sequential = bool(trunk) and all(
        len(b.calls) == 1 and bool(b.calls[0][1]) and _same(b.calls[0][1][0], chain[i])
        for i, b in enumerate(trunk)
    )
    if family == "timm" and not _same(chain[-1], final):
        sequential = False
    shapes = [tuple(b.calls[0][2].shape) for b in trunk]
    return [(b.name, b.module) for b in trunk], shapes, sequential


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    tensors = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return tensors and a.shape == b.shape and torch.equal(a, b)


def _stages(shapes: list[tuple[int, ...]]) -> list[int]:
    """Stage index of each block: runs of equal output resolution."""
    stages, stage, last = [], -1, None
    for shape in shapes:
        res = shape[-2:] if len(shape) == 4 else shape
        if res != last:
            stage, last = stage + 1, res
        stages.append(stage)
    return stages


def _probe_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return _PROBE_SIZE


def _set_child(root: nn.Module, dotted: str, value: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, value)


def describe_blocks(backbone: str, in_channels: int = 3) -> list[tuple[str, int]]:
    """``(block name, stage index)`` of each block a backbone can be split at, in order."""
    model, family = _build_backbone(backbone, in_channels)
    blocks, shapes, _ = _probe(model, family, set(), _probe_size(model), in_channels)
    return [(name, stage) for (name, _), stage in zip(blocks, _stages(shapes), strict=True)]


class _MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class _TimmPool(nn.Module):
    """A timm model stripped to its head modules; runs ``forward_head(pre_logits=True)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(x, pre_logits=True)


class _Head(nn.Module):
    """Copied blocks and pooling (both absent when nothing is split off) and a linear layer."""

    def __init__(self, blocks: nn.ModuleDict, pool: nn.Module | None, fc: nn.Linear) -> None:
        super().__init__()
        self.blocks = blocks
        self.pool = pool
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.fc(self.pool(x))


class MultiHeadClassifier(nn.Module):
    """Shared backbone trunk, then per-head copies of the blocks after ``split_at``.

    Args:
        backbone: timm name (``"resnet18"``, ``"timm:test_resnet"``) or
            ``"torchvision:<builder>"`` (e.g. ``"torchvision:shufflenet_v2_x0_5"``).
        heads: ``{name: outputs}``; 1 output is a binary logit, 2+ are class logits.
        split_at: where heads branch off: None, ``"last_stage"``, a stage index or a block
            name (see the module docstring).
        encoder_weights: None (random init) or a local weights file of the whole backbone
            (safetensors or torch state dict); classifier tensors in it are ignored.
            Downloads are never attempted.
        in_channels: input channels (timm backbones only; torchvision needs 3).
        output: ``"dict"`` (``{head: logits}``) or ``"tuple"`` (logits in head order, for export).
    """

    def __init__(
        self,
        backbone: str,
        heads: Mapping[str, int],
        split_at: str | int | None = LAST_STAGE,
        encoder_weights: str | os.PathLike | None = None,
        in_channels: int = 3,
        output: str = "dict",
    ) -> None:
        super().__init__()
        self.head_outputs = self._check_heads(heads)
        self.head_names = list(self.head_outputs)
        self.backbone_name, self.split_at = backbone, split_at
        self.set_output(output)
        model, self.family = _build_backbone(backbone, in_channels)
        if encoder_weights not in (None, False, ""):
            if not _is_path(encoder_weights):
                raise WeightsError(
                    f"encoder_weights={encoder_weights!r}: polyhead never downloads classifier "
                    "weights; pass a local .safetensors/.pth file of the backbone, or null"
                )
            load_backbone_weights(model, encoder_weights)
        open_names = {split_at} if isinstance(split_at, str) and split_at != LAST_STAGE else set()
        size = _probe_size(model)
        blocks, shapes, sequential = _probe(model, self.family, open_names, size, in_channels)
        self.block_names = names = [name for name, _ in blocks]
        self.block_stages = _stages(shapes)
        self.backbone: nn.Module | None = None
        self.shared = nn.ModuleDict()
        tail: dict[str, nn.Module] = {}
        if self.family == "timm" and split_at is None:
            self.backbone = model  # keeps timm's forward_features / forward_head
        else:
            if not sequential:
                raise ConfigError(
                    f"backbone {backbone!r} does not run its blocks one after another, so it "
                    "cannot be split; use split_at=null (shared features, separate linear heads)"
                )
            cut = self._split_index(split_at)
            self.shared.update({_key(n): m for n, m in blocks[:cut]})
            tail = {_key(n): m for n, m in blocks[cut:]}
            for name in names:  # what stays in ``model`` is the timm head template
                _set_child(model, name, nn.Identity())
        self.split_blocks = names[len(self.shared) :] if tail else []
        pool = _TimmPool(model) if self.family == "timm" else _MeanPool()
        with torch.no_grad():  # the pooled feature size, from one small eval pass
            x = self.eval().forward_features(torch.randn(1, in_channels, size, size))
            for block in tail.values():  # eval: a probe must not move BatchNorm statistics
                x = block.eval()(x)
            self.num_features = int((pool.eval()(x) if tail else self._pool(x)).shape[-1])
        self.heads = nn.ModuleDict(
            {
                name: _Head(
                    nn.ModuleDict(copy.deepcopy(tail)),
                    copy.deepcopy(pool) if tail else None,
                    nn.Linear(self.num_features, n),
                )
                for name, n in self.head_outputs.items()
            }
        )
        self.train()

    @staticmethod
    def _check_heads(heads: Mapping[str, int]) -> dict[str, int]:
        for name, n in dict(heads or {}).items():
            if not isinstance(name, str) or not name or "." in name or "/" in name:
                raise ConfigError(f"heads: bad head name {name!r} (no '.' or '/')")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"heads.{name}: outputs must be a positive integer, got {n!r}")
        if not heads:
            raise ConfigError("heads: give at least one head, e.g. {screen: 2, other: 2}")
        return dict(heads)

    def _split_index(self, split_at: str | int | None) -> int:
        names, stages = self.block_names, self.block_stages
        if split_at is None:
            return len(names)
        if split_at == LAST_STAGE:
            split_at = -1
        if isinstance(split_at, int) and not isinstance(split_at, bool):
            n_stages = stages[-1] + 1
            k = split_at + n_stages if split_at < 0 else split_at
            if not 0 <= k < n_stages:
                raise ConfigError(f"split_at={split_at}: backbone has stages 0..{n_stages - 1}")
            return stages.index(k)
        if split_at in names:
            return names.index(split_at)
        raise ConfigError(
            f"split_at={split_at!r}: not a block of {self.backbone_name!r}; blocks are "
            f"{', '.join(names)} (or use None, 'last_stage' or a stage index)"
        )

    def set_output(self, output: str) -> None:
        """``"dict"`` or ``"tuple"`` (logits in :attr:`head_names` order, e.g. for ONNX)."""
        if output not in ("dict", "tuple"):
            raise ConfigError(f"output must be 'dict' or 'tuple', got {output!r}")
        self.output = output

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk: everything before the split."""
        if self.backbone is not None:
            return self.backbone.forward_features(x)
        for block in self.shared.values():
            x = block(x)
        return x

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            return self.backbone.forward_head(features, pre_logits=True)
        return features.mean((2, 3))

    def forward_head(
        self, features: torch.Tensor, heads: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Logits of every head (or only of ``heads``) from the shared features."""
        names = self.head_names if heads is None else list(heads)
        if self.split_blocks:
            return {name: self.heads[name](features) for name in names}
        pooled = self._pool(features)  # split_at=None: one pooling, separate linear layers
        return {name: self.heads[name].fc(pooled) for name in names}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | tuple[torch.Tensor, ...]:
        logits = self.forward_head(self.forward_features(x))
        if self.output == "tuple":
            return tuple(logits[name] for name in self.head_names)
        return logits


def head_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of ``[B, 1]`` logits, softmax of ``[B, K]`` logits."""
    return logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(dim=-1)


def head_decisions(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per row: ``logit > 0`` for 1-output heads, argmax otherwise."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).long()
    return logits.argmax(dim=-1)


def _key(block_name: str) -> str:
    return block_name.replace(".", "_")
