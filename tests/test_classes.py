"""The class table: names and colours from config, defaults, errors naming the entry."""

import pytest

from polyhead.classes import ClassTable, default_color
from polyhead.errors import ConfigError


def test_defaults_fill_what_the_config_leaves_out():
    table = ClassTable.from_config(["water", {"name": "forest", "color": "#00ff00"}], 3)
    assert table.names == ("water", "forest", "class_2")
    assert table.colors == (default_color(0), (0, 255, 0), default_color(2))
    assert table.colormap()[1] == (0, 255, 0, 255)
    assert ClassTable.from_config(table.to_config(), 3) == table


def test_default_palette_stays_distinct_past_its_length():
    colors = ClassTable.default(60).colors
    assert len(set(colors)) == 60


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["a", "b", "c"], "3 entries for 2 classes"),
        ([{"name": "a", "color": [300, 0, 0]}], r"classes\[0\]: colour"),
        ([{"name": "a", "colr": [3, 0, 0]}], r"classes\[0\]: unknown key"),
        (["a", "a"], "given for ids 0 and 1"),
        ([3], r"classes\[0\]: 3 is neither"),
        ("water", "expected a list"),
    ],
)
def test_bad_entries_are_named(entries, message):
    with pytest.raises(ConfigError, match=message):
        ClassTable.from_config(entries, 2)
