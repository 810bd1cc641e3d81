"""Class names and colours: one table that flows from the data config to every output.

A data config (or a training config's ``data`` section) may carry ``classes:``, a list with
one entry per class id, each a name (``"water"``) or a mapping ``{name: water, color:
[43, 108, 196]}`` (``color`` also as ``"#2b6cc4"``). Classes left out get ``class_{k}`` and
the default palette. The table names the bands of probability GeoTIFFs, gives class maps their
colour table, and labels figures. Light module: no torch, no matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polyhead.errors import ConfigError

#: background, water, vegetation, building, road, cropland, then tab20's colours
DEFAULT_PALETTE: tuple[str, ...] = (
    "#c8b48c",
    "#2b6cc4",
    "#2e8b3a",
    "#d43d2f",
    "#555555",
    "#e8d044",
    "#9467bd",
    "#17becf",
    "#ff7f0e",
    "#e377c2",
    "#1f77b4",
    "#aec7e8",
    "#ffbb78",
    "#2ca02c",
    "#98df8a",
    "#d62728",
    "#ff9896",
    "#c5b0d5",
    "#8c564b",
    "#c49c94",
    "#f7b6d2",
    "#7f7f7f",
    "#c7c7c7",
    "#bcbd22",
    "#dbdb8d",
    "#9edae5",
)

RGB = tuple[int, int, int]


def _hex_rgb(text: str) -> RGB:
    value = text.lstrip("#")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def default_color(index: int) -> RGB:
    """The default colour of class ``index`` (the palette repeats, darkened, after 26)."""
    r, g, b = _hex_rgb(DEFAULT_PALETTE[index % len(DEFAULT_PALETTE)])
    shade = 0.6 ** (index // len(DEFAULT_PALETTE))
    return (round(r * shade), round(g * shade), round(b * shade))


def _parse_color(value: Any, where: str) -> RGB:
    if isinstance(value, str):
        text = value.strip()
        if len(text.lstrip("#")) == 6:
            try:
                return _hex_rgb(text)
            except ValueError:
                pass
        raise ConfigError(f"{where}: colour {value!r} is not '#rrggbb' or [r, g, b]")
    if isinstance(value, Sequence) and len(value) == 3:
        try:
            rgb = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) == 3 and all(
            0 <= v <= 255 and float(v) == float(o) for v, o in zip(rgb, value, strict=True)
        ):
            return rgb  # type: ignore[return-value]
    raise ConfigError(
        f"{where}: colour {value!r} must be [r, g, b] with integers 0-255 or '#rrggbb'"
    )


@dataclass(frozen=True)
class ClassTable:
    """Names and RGB colours (0-255) of classes ``0..K-1``."""

    names: tuple[str, ...]
    colors: tuple[RGB, ...]

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def default(cls, n_classes: int) -> ClassTable:
        """``class_0 .. class_{K-1}`` with the default palette."""
        return cls(
            tuple(f"class_{k}" for k in range(n_classes)),
            tuple(default_color(k) for k in range(n_classes)),
        )

    @classmethod
    def from_config(cls, entries: Any, n_classes: int, where: str = "classes") -> ClassTable:
        """The table for ``n_classes`` from a config's ``classes`` list (None: defaults).

        ConfigError naming the entry at fault: more entries than classes, a bad colour, a name
        given twice or an entry that is neither a name nor ``{name, color}``.
        """
        if entries is None:
            return cls.default(n_classes)
        if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
            raise ConfigError(f"{where}: expected a list of class names or {{name, color}} entries")
        if len(entries) > n_classes:
            raise ConfigError(f"{where}: {len(entries)} entries for {n_classes} classes")
        names, colors = list(cls.default(n_classes).names), list(cls.default(n_classes).colors)
        for k, entry in enumerate(entries):
            at = f"{where}[{k}]"
            if isinstance(entry, str):
                names[k] = entry
            elif isinstance(entry, Mapping):
                unknown = sorted(set(entry) - {"name", "color", "colour"})
                if unknown:
                    raise ConfigError(f"{at}: unknown key(s) {unknown}; valid: name, color")
                if "name" in entry:
                    names[k] = str(entry["name"])
                color = entry.get("color", entry.get("colour"))
                if color is not None:
                    colors[k] = _parse_color(color, at)
            else:
                raise ConfigError(f"{at}: {entry!r} is neither a name nor {{name, color}}")
            if not names[k].strip():
                raise ConfigError(f"{at}: empty class name")
        seen: dict[str, int] = {}
        for k, name in enumerate(names):
            if name in seen:
                raise ConfigError(
                    f"{where}: class name {name!r} given for ids {seen[name]} and {k}"
                )
            seen[name] = k
        return cls(tuple(names), tuple(colors))

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """rasterio's ``write_colormap`` form: ``{id: (r, g, b, 255)}``."""
        return {k: (*rgb, 255) for k, rgb in enumerate(self.colors)}

    def colors_float(self) -> list[tuple[float, float, float]]:
        """Colours in [0, 1] for matplotlib."""
        return [(r / 255, g / 255, b / 255) for r, g, b in self.colors]

    def to_config(self) -> list[dict[str, Any]]:
        """The ``classes`` list that `from_config` reads back to this table."""
        return [{"name": n, "color": list(c)} for n, c in zip(self.names, self.colors, strict=True)]
