"""The fast YAML loader gives exactly what `yaml.load` with the safe loader gives, errors included."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.yamlfast import safe_load

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SETTINGS = Path(__file__).resolve().parents[2] / "settings"

CASES = {
    "booleans": "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: False\ng: y\n",
    "integers": "a: 0x1f\nb: 017\nc: 0b101\nd: 1_000\ne: +5\nf: -3\ng: 1:30\nh: 0\n",
    "floats": "a: .inf\nb: -.Inf\nc: 1.5e+3\nd: 1e3\ne: 6.8523015e+5\nf: 1_0.5\ng: -0.0\n",
    "nulls": "a: ~\nb: null\nc:\nd: Null\n",
    "timestamps": "a: 2026-11-22\nb: 2026-11-22T10:00:00Z\nc: 2026-11-22 10:00:00.5 +02:00\n",
    "quoted": "a: '123'\nb: \"yes\"\nc: '${VAR}'\nd: \"a\\tb\"\ne: ''\n",
    "explicit tags": "a: !!str 123\nb: !!int '5'\nc: !!float '1'\nd: !!binary aGVsbG8=\ne: !!bool 'yes'\n",
    "anchors": "base: &b {x: 1, y: [1, 2]}\none: *b\ntwo: *b\nlist: &l [a, b]\nagain: *l\n",
    "merge key": "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",
    "set": "a: !!set {x, y}\n",
    "ordered map": "a: !!omap [x: 1, y: 2]\n",
    "pairs": "a: !!pairs [x: 1, x: 2]\n",
    "non-string keys": "1: a\ntrue: b\n~: c\n2.5: d\n",
    "duplicate keys": "a: 1\na: 2\n",
    "nested": "zones:\n  - id: z\n    tags: [area]\n    settings: {capacity: 8, label: null}\n",
    "scalar document": "just text\n",
    "sequence document": "- 1\n- two\n",
    "empty": "",
    "comment only": "# nothing\n",
    "unicode": "name: Päivä 🌞\nkey: \"\\u00e4\"\n",
    "block scalars": "a: |\n  line 1\n  line 2\nb: >\n  folded\n  text\n",
}

ERRORS = {
    "unknown tag": "a: !custom x\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "unhashable key": "? [a, b]\n: c\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "unclosed quote": "a: 'open\n",
    "unknown alias": "a: *nothing\n",
}


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_result_as_the_safe_loader(name: str) -> None:
    text = CASES[name]
    assert same(safe_load(text), yaml.load(text, Loader=LOADER))


def test_nan_and_shared_aliases() -> None:
    assert math.isnan(safe_load("a: .nan\n")["a"])
    loaded = safe_load("base: &b [1]\none: *b\n")
    assert loaded == {"base": [1], "one": [1]}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_same_error_as_the_safe_loader(name: str) -> None:
    text = ERRORS[name]
    with pytest.raises(yaml.YAMLError) as expected:
        yaml.load(text, Loader=LOADER)
    with pytest.raises(type(expected.value)) as got:
        safe_load(text)
    assert str(got.value) == str(expected.value)


def test_a_recursive_alias_falls_back() -> None:
    text = "a: &x\n  - *x\n"
    loaded = safe_load(text)
    assert loaded["a"][0] is loaded["a"]


def test_the_site_files_in_the_repository() -> None:
    files = sorted(SETTINGS.glob("*.yaml"))
    assert files
    for file in files:
        text = file.read_bytes()
        assert same(safe_load(text), yaml.load(text, Loader=LOADER)), file.name


def test_the_collector_is_left_as_it_was() -> None:
    assert gc.isenabled()
    safe_load("a: [1, 2]\n")
    assert gc.isenabled()
    gc.disable()
    try:
        safe_load("a: [1, 2]\n")
        assert not gc.isenabled()
    finally:
        gc.enable()


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=documents, flow=st.booleans())
def test_any_dumped_document_loads_the_same(doc: Any, flow: bool) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    assert same(safe_load(text), yaml.load(text, Loader=LOADER))
