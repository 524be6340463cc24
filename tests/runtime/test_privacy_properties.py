"""Property tests: generated nested values embedding emails, uuids and phone numbers never leak a raw match."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.model import Privacy, PrivacyRule
from runtime.privacy import BUILTINS, DROP, PrivacyEngine

SECRET = "property-secret"
KEYS = ["booking_host", "status"]
HEX_RUN = re.compile("[0-9a-f]+")
EMAIL = re.compile(BUILTINS["email"])

# Segments stay short so the input itself never holds a run of 64 hex digits: such a run in the output
# can then only be a hash.
filler = st.text(max_size=8)
emails = st.from_regex(BUILTINS["email"], fullmatch=True).filter(lambda s: len(s) <= 15)
phones = st.from_regex(BUILTINS["phone"], fullmatch=True).filter(lambda s: len(s) <= 15)
uuids = st.builds(lambda u, upper: str(u).upper() if upper else str(u), st.uuids(), st.booleans())
texts = st.lists(st.one_of(filler, emails, phones, uuids), max_size=4).map("".join)
leaves = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), texts)
values = st.recursive(leaves, lambda children: st.one_of(st.lists(children, max_size=4),
                                                         st.dictionaries(texts, children, max_size=4)),
                      max_leaves=20)


@dataclass(frozen=True)
class Rule:
    name: str
    match: str
    action: str
    scoped: bool

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(BUILTINS.get(self.match, self.match))

    def settings(self) -> PrivacyRule:
        return msgspec.convert({"name": self.name, "match": self.match, "action": self.action,
                                "states": ["booking*"] if self.scoped else None}, PrivacyRule)


@st.composite
def rule_sets(draw: st.DrawFn, actions: tuple[str, ...] = ("hash", "mask")) -> list[Rule]:
    """Built-ins in any order with any action, some scoped; sometimes a rule that needs the per-rule scan."""
    matches = draw(st.permutations(["email", "uuid", "phone"]))
    count = draw(st.integers(1, 3))
    chosen = [Rule(f"r{i}", m, draw(st.sampled_from(actions)), draw(st.booleans()))
              for i, m in enumerate(matches[:count])]
    if draw(st.booleans()):
        # A backreference (a doubled symbol) keeps the set out of one combined pattern. `*` is left out: a
        # mask's own stars would look like a leak.
        chosen.insert(draw(st.integers(0, len(chosen))), Rule("twice", r"([^\w*])\1", "mask", False))
    return chosen


class Dropped(Exception):
    pass


class Reference:
    """A plain re-implementation of the documented semantics."""

    def __init__(self, rules: list[Rule]) -> None:
        self.drops = [(r, r.pattern) for r in rules if r.action == "drop"]
        self.rewrites = [(r, r.pattern) for r in rules if r.action != "drop"]
        self.hashes: set[str] = set()

    def text(self, text: str) -> str:
        if any(p.search(text) for _, p in self.drops):
            raise Dropped
        # Every match of every rule as [start, end, rule position]; overlapping ones merge.
        pieces: list[list[int]] = []
        for start, end, order in sorted((m.start(), m.end(), i) for i, (_, p) in enumerate(self.rewrites)
                                        for m in p.finditer(text)):
            if pieces and start < pieces[-1][1]:
                last = pieces[-1]
                last[1], last[2] = max(last[1], end), min(last[2], order)
            else:
                pieces.append([start, end, order])
        out, pos = [], 0
        for start, end, order in pieces:
            rule = self.rewrites[order][0]
            # A mask right before `@` would turn the kept last label into a new local part: fully masked.
            masked_whole = rule.action == "mask" and text[end:end + 1] == "@"
            out += [text[pos:start], "****" if masked_whole else self.replace(rule, text[start:end])]
            pos = end
        return "".join(out) + text[pos:]

    def replace(self, rule: Rule, matched: str) -> str:
        if rule.action == "hash":
            digest = hmac.new(SECRET.encode(), matched.encode(), hashlib.sha256).hexdigest()
            self.hashes.add(digest)
            return digest
        if EMAIL.fullmatch(matched):
            local, _, domain = matched.partition("@")
            return f"{local[0]}***@{domain[0]}***.{domain.rsplit('.', 1)[1]}"
        return "****"

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        return value

    def filtered(self, value: Any) -> Any:
        try:
            return self.value(value)
        except Dropped:
            return DROP


def strings(value: Any) -> list[str]:
    """Every string inside a value, dict keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    return []


def engine(rules: list[Rule]) -> PrivacyEngine:
    return PrivacyEngine(Privacy(secret=SECRET, rules=[r.settings() for r in rules]))


def applicable(rules: list[Rule], key: str | None) -> list[Rule]:
    """The rules for state changes of `key`, or for metadata when `key` is None."""
    return [r for r in rules if not r.scoped or (key is not None and key.startswith("booking"))]


def assert_no_leak(rules: list[Rule], raw: Any, wire: bytes) -> None:
    """No raw match of any rule in any input string appears in the encoded output."""
    for rule in rules:
        for text in strings(raw):
            for m in rule.pattern.finditer(text):
                assert msgspec.json.encode(m.group())[1:-1] not in wire, (rule, m.group())


def assert_hashes_are_hmacs(wire: bytes, expected: set[str]) -> None:
    """Every 64-hex token in the output is HMAC-SHA256(secret, a match)."""
    for run in HEX_RUN.findall(wire.decode()):
        leftover, i = 0, 0
        while i < len(run):
            if run[i:i + 64] in expected:
                i += 64
                leftover = 0
            else:
                i += 1
                leftover += 1
                assert leftover < 64, run


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(), key=st.sampled_from(KEYS), value=values)
def test_no_raw_match_leaks_and_hashes_are_hmacs(rules: list[Rule], key: str, value: Any) -> None:
    rule_set = engine(rules).for_rules([r.name for r in rules])
    assert rule_set is not None
    active = applicable(rules, key)
    reference = Reference(active)
    expected = reference.filtered(value)

    scoped = rule_set.scope("drv-1", "mod-1", key)
    out = value if scoped is None else scoped.apply(value)
    assert out == expected
    wire = msgspec.json.encode(out)
    assert_no_leak(active, value, wire)
    assert_hashes_are_hmacs(wire, reference.hashes)

    if isinstance(value, dict):
        meta_rules = applicable(rules, None)
        meta_reference = Reference(meta_rules)
        meta = rule_set.metadata(value)
        assert meta == meta_reference.filtered(value)
        meta_wire = msgspec.json.encode(meta)
        assert_no_leak(meta_rules, value, meta_wire)
        assert_hashes_are_hmacs(meta_wire, meta_reference.hashes)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(("hash", "mask", "drop")), key=texts, value=values)
def test_state_keys_and_drops_follow_the_reference(rules: list[Rule], key: str, value: Any) -> None:
    rule_set = engine(rules).for_rules([r.name for r in rules])
    assert rule_set is not None
    active = applicable(rules, key)
    scoped = rule_set.scope("drv-1", "mod-1", key)
    if not active:
        assert scoped is None
        return
    assert scoped is not None
    assert scoped.key == Reference(active).filtered(key)
    expected = DROP if scoped.key is DROP else Reference(active).filtered(value)
    assert scoped.apply(value) == expected
    if expected is not DROP:
        assert_no_leak(active, [key, value], msgspec.json.encode([scoped.key, expected]))


@settings(max_examples=100, deadline=None)
@given(value=values)
def test_a_value_without_matches_is_returned_as_the_same_object(value: Any) -> None:
    rule_set = engine([Rule("never", "§§never§§", "mask", False)]).for_rules(["never"])
    assert rule_set is not None
    scoped = rule_set.scope("drv-1", "mod-1", "status")
    assert scoped is not None
    if not any("§§never§§" in s for s in strings(value)):
        assert scoped.apply(value) is value
