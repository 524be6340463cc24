"""YAML settings files loaded fast on PyYAML's C parser, with exactly `yaml.safe_load`'s result.

PyYAML spends most of a large file in the garbage collector (paused here while parsing) and in
two pure-Python steps: resolving the implicit tag of every scalar, and the constructor's
bookkeeping for every node. Here tag resolution looks up
a table built once per first character, and plain strings, mappings and sequences are built
by one small function; every other scalar (int, float, bool, null, timestamp, binary) goes to
PyYAML's own constructor, so values are the same. Anything this path does not handle (merge
keys, sets, ordered maps, unknown tags, recursive aliases) falls back to `yaml.load`, which
gives the usual result or the usual error.
"""

from __future__ import annotations

import gc
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Unsupported(Exception):
    """A node this loader leaves to `yaml.load`."""


class _FastLoader(_LOADER):  # type: ignore[misc,valid-type]
    """The C safe loader with a table-driven implicit tag resolver."""

    _by_first: dict[str, list[tuple[str, Any]]] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        """The tag of a node, as `Resolver.resolve` gives it for the safe loader."""
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in self._by_first.get(value[:1], _WILDCARD):
                    if regexp.match(value):
                        return str(tag)
            return str(self.DEFAULT_SCALAR_TAG)
        if kind is SequenceNode:
            return str(self.DEFAULT_SEQUENCE_TAG)
        return str(self.DEFAULT_MAPPING_TAG)


# The safe loader has no path resolvers, so the implicit ones (by first character, then the
# wildcard ones) are all that `Resolver.resolve` consults.
_WILDCARD: list[tuple[str, Any]] = list(_LOADER.yaml_implicit_resolvers.get(None, []))
_FastLoader._by_first = {first: list(found) + _WILDCARD
                         for first, found in _LOADER.yaml_implicit_resolvers.items() if first is not None}


def safe_load(text: str | bytes) -> Any:
    """Like `yaml.load(text, Loader=CSafeLoader)`, faster on large plain files."""
    # The parser makes several objects per node and no cyclic garbage; with the collector on,
    # its repeated passes over the growing tree cost more than the parsing (4 s of 5 on 10,000 modules).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(text)
    finally:
        if enabled:
            gc.enable()


def _load(text: str | bytes) -> Any:
    loader = _FastLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return _build(loader, node)
        except (_Unsupported, RecursionError):
            pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=_LOADER)


def _build(loader: Any, node: yaml.Node) -> Any:
    tag = node.tag
    if tag == _STR and type(node) is ScalarNode:
        return node.value
    if type(node) is MappingNode:
        if tag != _MAP:
            raise _Unsupported(tag)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag != _STR or type(key_node) is not ScalarNode:
                raise _Unsupported(key_node.tag)  # merge keys and non-string keys: PyYAML's rules apply
            out[key_node.value] = _build(loader, value_node)
        return out
    if type(node) is SequenceNode:
        if tag != _SEQ:
            raise _Unsupported(tag)
        return [_build(loader, item) for item in node.value]
    construct = loader.yaml_constructors.get(tag)
    if construct is None:
        raise _Unsupported(tag)
    value = construct(loader, node)
    if hasattr(value, "__next__"):  # a two-step (collection) constructor
        raise _Unsupported(tag)
    return value
