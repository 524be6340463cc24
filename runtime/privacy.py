"""Privacy filters: hash, mask or drop sensitive text in state values, state keys and metadata.

Rules
    A rule's `match` is a built-in when it is exactly `email`, `uuid` or `phone` (lowercase, nothing else);
    anything else is a Python regular expression. A case or plural variant of a built-in name (`Email`,
    `UUIDs`, `phones`) is rejected as an unknown built-in, since it is almost certainly a typo; to match such
    a literal text write it as a group, e.g. `(?:Email)`. A pattern that matches the empty string is rejected.

What is scanned
    Every string inside a value at any depth: str values, dict keys, list and tuple items. Numbers, booleans
    and null are not strings and pass through unchanged, so a rule never changes a value's JSON type. Other
    objects (Structs, dataclasses, enums, datetimes, UUID objects) are scanned in the form
    `msgspec.to_builtins` gives them, which is what the JSON encoder writes. State changes get the rules
    whose scopes admit them; the state key, a topic level, is filtered like a string. Metadata gets the
    unscoped rules.

Scopes
    `states` (state-key globs, case-sensitive fnmatch), `drivers` (driver record ids) and `modules` (module
    ids) each limit a rule; a rule with several applies where all of them admit the change. A rule with any
    scope never applies to metadata. An empty scope list, or a driver or module id that names nothing, is a
    settings error: the rule would silently not apply.

How rules combine
    Each rule that applies finds its matches in a string on its own, as `re.finditer` does (empty matches
    never count). Matches of different rules that overlap merge into one piece of text, and each piece is
    replaced once, with the action of the earliest rule in settings order among those that matched in it
    (a hash is then the HMAC of the whole piece). So no character of any match survives beside a
    replacement, and a replacement is never scanned again. Drop rules are searched on their own: a
    non-empty match of a drop rule in any string (or in the state key) drops the whole event, whatever the
    other rules would have done.

Actions
    hash: lowercase hex HMAC-SHA256 keyed with the UTF-8 bytes of `privacy.secret`, over the UTF-8 bytes of
    the matched text; stable across restarts and runtimes sharing the secret.
    mask: a match that is an email (it fully matches the `email` built-in) becomes `j***@e***.com` (first
    character of the local part, `***@`, first character of the domain, `***`, `.` and the last label);
    anything else becomes `****`. Masking is lossy: two dict keys that mask alike collapse into one, the
    later value winning.
    drop: the filter returns `DROP`.

Cost
    Rules are compiled once. Each distinct set of applicable rules has one combined pattern for its
    replacing rules and one for its drop rules, which settle a string that nothing matches (the common
    case) in one scan; only a string that matches is scanned rule by rule. (A rule that refers to its own
    groups by number cannot join a combined pattern; its sets scan rule by rule.) Numbers, booleans and
    null are never scanned. The verdict on each short string is remembered in a bounded memo, so the keys
    and values that repeat from message to message cost one dict lookup. A filter returns its input object
    itself when nothing matched, and copies only the containers on the path to a replaced string.

`on_action(rule, action)` is called once per replaced piece and once per dropped event, so the runtime can
count them per rule and action.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import hashlib
import hmac
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec

from runtime.errors import SettingsError
from runtime.model import Privacy, PrivacyRule, Site

__all__ = ["BUILTINS", "DROP", "Drop", "OnAction", "PrivacyEngine", "RuleSet", "StateFilter", "validate_privacy"]

BUILTINS: Final[Mapping[str, str]] = MappingProxyType({
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "uuid": r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
    "phone": r"\+?\d[\d ().-]{7,}\d",
})
"""The built-in patterns a rule names by `match: email | uuid | phone`."""

OnAction = Callable[[str, str], None]
"""Called with (rule name, action) for every applied action."""

Action = Literal["hash", "mask", "drop"]


class Drop(enum.Enum):
    """The type of the `DROP` sentinel."""

    DROP = "drop"

    def __repr__(self) -> str:
        """Plain `DROP` in reprs and test output."""
        return "DROP"


DROP: Final = Drop.DROP
"""Returned instead of a value when a drop rule matched: the event must not reach the destination."""

_SCALARS: Final = frozenset({int, float, bool, type(None)})
_EMAIL: Final = re.compile(BUILTINS["email"])
_LEADING_FLAGS: Final = re.compile(r"\(\?([aiLmsux]+)\)")


# --- rules -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Rule:
    index: int
    name: str
    action: Action
    pattern: re.Pattern[str]
    # The regex as the body of one alternative of a combined pattern; None when it cannot join one.
    alternative: str | None
    states: tuple[str, ...] | None
    drivers: frozenset[str] | None
    modules: frozenset[str] | None

    @property
    def scoped(self) -> bool:
        return self.states is not None or self.drivers is not None or self.modules is not None

    def admits(self, driver_id: str, module_id: str, state_key: str) -> bool:
        if self.drivers is not None and driver_id not in self.drivers:
            return False
        if self.modules is not None and module_id not in self.modules:
            return False
        return self.states is None or any(fnmatch.fnmatchcase(state_key, glob) for glob in self.states)


def _unknown_builtin(match: str) -> bool:
    return match not in BUILTINS and match.lower().removesuffix("s") in BUILTINS


def _compile_match(match: str) -> tuple[re.Pattern[str] | None, str | None]:
    """The compiled pattern of a rule's `match`, or the problem with it."""
    if _unknown_builtin(match):
        return None, (f"unknown built-in {match!r}: the built-ins are exactly email, uuid and phone; "
                      f"to match this text as a regular expression write (?:{match})")
    try:
        pattern = re.compile(BUILTINS.get(match, match))
    except re.error as exc:
        return None, f"invalid regular expression: {exc}"
    if pattern.search("") is not None:
        return None, "the regular expression matches the empty string"
    return pattern, None


def _refers_to_groups(source: str) -> bool:
    """Whether a regex may refer to its own groups (backreferences, conditionals); conservative."""
    i = 0
    while i < len(source):
        char = source[i]
        if char == "\\":
            if source[i + 1:i + 2] in tuple("123456789"):
                return True
            i += 2
            continue
        if source.startswith(("(?P=", "(?("), i):
            return True
        i += 1
    return False


def _alternative(source: str) -> str | None:
    """The regex rewritten to sit inside a larger alternation: leading global flags become scoped ones."""
    # Group numbers shift inside a combined pattern, so a regex that refers to them cannot join one.
    if _refers_to_groups(source):
        return None
    flags, pos = "", 0
    while found := _LEADING_FLAGS.match(source, pos):
        flags, pos = flags + found.group(1), found.end()
    if not flags:
        return source
    # In verbose mode a trailing comment would swallow the closing parenthesis.
    return f"(?{flags}:{source[pos:]}{chr(10) if 'x' in flags else ''})"


def _build(rule: PrivacyRule, index: int, pattern: re.Pattern[str]) -> _Rule:
    return _Rule(
        index=index, name=rule.name, action=rule.action, pattern=pattern,
        alternative=_alternative(pattern.pattern),
        states=None if rule.states is None else tuple(rule.states),
        drivers=None if rule.drivers is None else frozenset(rule.drivers),
        modules=None if rule.modules is None else frozenset(rule.modules),
    )


def _rule_problems(privacy: Privacy) -> tuple[list[_Rule | None], list[str]]:
    """Every rule compiled (None where invalid) and the problems of the privacy section on its own."""
    compiled: list[_Rule | None] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for i, rule in enumerate(privacy.rules):
        path = f"privacy.rules[{i}]"
        if rule.name in first_seen:
            first = first_seen[rule.name]
            problems.append(f"{path}.name: duplicate rule name {rule.name!r} (also privacy.rules[{first}])")
        else:
            first_seen[rule.name] = i
        pattern, problem = _compile_match(rule.match)
        if problem is not None:
            problems.append(f"{path}.match: {problem}")
        for field, scope in (("states", rule.states), ("drivers", rule.drivers), ("modules", rule.modules)):
            if scope is not None and not scope:
                problems.append(f"{path}.{field}: empty, so the rule would never apply; omit it to apply everywhere")
        compiled.append(None if pattern is None else _build(rule, i, pattern))
    hashing = [rule.name for rule in privacy.rules if rule.action == "hash"]
    if hashing and not privacy.secret:
        which = f"rule {hashing[0]!r} hashes" if len(hashing) == 1 else f"rules {', '.join(map(repr, hashing))} hash"
        problems.append(f"privacy.secret: required because {which}")
    return compiled, problems


# --- matching --------------------------------------------------------------------------------------------


def _first_nonempty(pattern: re.Pattern[str], text: str, pos: int) -> re.Match[str] | None:
    """The first non-empty match at or after `pos`."""
    found = pattern.search(text, pos)
    if found is None or found.end() > found.start():
        return found
    # An empty match can hide a non-empty one at the same position; finditer then tries that too.
    for later in pattern.finditer(text, found.start()):
        if later.end() > later.start():
            return later
    return None


class _Matcher:
    """The matches of an ordered list of rules; one combined pattern settles the common no-match case."""

    __slots__ = ("_any", "_replace", "rules")

    def __init__(self, rules: Sequence[_Rule], replace: Callable[[_Rule, str], str]) -> None:
        self.rules = tuple(rules)
        self._replace = replace
        self._any: re.Pattern[str] | None = None
        alternatives = [rule.alternative for rule in self.rules]
        if all(alt is not None for alt in alternatives):
            # Two rules reusing a group name cannot be combined: each pattern is asked instead.
            with contextlib.suppress(re.error):
                self._any = re.compile("|".join(f"(?:{alt})" for alt in alternatives))

    def _nothing(self, text: str) -> bool:
        """True when no rule can match `text` (False means: look closer)."""
        return self._any is not None and self._any.search(text) is None

    def first(self, text: str) -> _Rule | None:
        """The earliest rule in settings order with a non-empty match in `text`, or None."""
        if self._nothing(text):
            return None
        return next((rule for rule in self.rules if _first_nonempty(rule.pattern, text, 0) is not None), None)

    def replace(self, text: str) -> tuple[str, list[_Rule]] | None:
        """`text` with every match replaced and the rule of each replacement, or None when nothing matched."""
        if self._nothing(text):
            return None
        spans = sorted((found.start(), found.end(), order) for order, rule in enumerate(self.rules)
                       for found in rule.pattern.finditer(text) if found.end() > found.start())
        if not spans:
            return None
        pieces: list[str] = []
        applied: list[_Rule] = []
        pos = i = 0
        while i < len(spans):
            start, end, order = spans[i]
            i += 1
            # Overlapping matches merge, so no part of any of them survives next to a replacement.
            while i < len(spans) and spans[i][0] < end:
                end, order = max(end, spans[i][1]), min(order, spans[i][2])
                i += 1
            rule = self.rules[order]
            replacement = self._replace(rule, text[start:end])
            if rule.action == "mask" and text.startswith("@", end):
                # A masked email keeps its last label, which the `@` after it would turn into the
                # local part of a new raw match (`a@b.cc@d.ee`): mask the piece entirely instead.
                replacement = "****"
            pieces += (text[pos:start], replacement)
            applied.append(rule)
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces), applied


def _mask(text: str) -> str:
    if _EMAIL.fullmatch(text) is None:
        return "****"
    local, _, domain = text.partition("@")
    return f"{local[0]}***@{domain[0]}***.{domain.rpartition('.')[2]}"


class _Verdict:
    """What the rules do to one string: drop it, or replace it (with the actions to count)."""

    __slots__ = ("actions", "drop", "result")

    def __init__(self, drop: _Rule | None, result: str, actions: tuple[tuple[str, str], ...]) -> None:
        self.drop = drop
        self.result = result
        self.actions = actions


_CLEAN: Final = _Verdict(None, "", ())  # a string no rule touches

# Strings repeat (dict keys, device names, states), so verdicts of short ones are remembered in two
# generations rather than tracked per entry, which keeps a hit to one dict lookup.
_MEMO_SIZE: Final = 4096
_MEMO_MAX_LENGTH: Final = 256


class _Dropped(Exception):
    def __init__(self, rule: _Rule) -> None:
        super().__init__(rule.name)
        self.rule = rule


class _Scan:
    """Drop detection and replacement over whole values, for one ordered set of rules."""

    __slots__ = ("_drops", "_emit", "_memo", "_older", "_pending", "_rewrites")

    def __init__(self, rules: Sequence[_Rule], replace: Callable[[_Rule, str], str], emit: OnAction | None) -> None:
        drops = [rule for rule in rules if rule.action == "drop"]
        rewrites = [rule for rule in rules if rule.action != "drop"]
        self._drops = _Matcher(drops, replace) if drops else None
        self._rewrites = _Matcher(rewrites, replace) if rewrites else None
        self._emit = emit
        self._memo: dict[str, _Verdict] = {}
        self._older: dict[str, _Verdict] = {}  # the memo before it last filled up
        self._pending: list[tuple[str, str]] = []  # actions of the value being filtered, counted if it is not dropped

    def verdict(self, text: str) -> _Verdict:
        """What the rules do to one string; `_CLEAN` when nothing matches."""
        verdict = self._memo.get(text)
        if verdict is not None:
            return verdict
        verdict = self._older.get(text)
        if verdict is not None:
            self._remember(text, verdict)  # still in use: keep it across the next turnover
            return verdict
        verdict = _CLEAN
        if self._drops is not None and (rule := self._drops.first(text)) is not None:
            verdict = _Verdict(rule, text, ((rule.name, "drop"),))
        elif self._rewrites is not None and (replaced := self._rewrites.replace(text)) is not None:
            result, applied = replaced
            verdict = _Verdict(None, result, tuple((rule.name, rule.action) for rule in applied))
        if len(text) <= _MEMO_MAX_LENGTH:
            self._remember(text, verdict)
        return verdict

    def _remember(self, text: str, verdict: _Verdict) -> None:
        if len(self._memo) >= _MEMO_SIZE:
            # Two generations: one-off strings (timestamps) age out, while ids and labels seen since the
            # last turnover are carried over on their next use instead of being matched again.
            self._older, self._memo = self._memo, {}
        self._memo[text] = verdict

    def value(self, value: Any) -> Any:
        """A whole value filtered: DROP, the value itself, or a copy with the matches replaced."""
        if type(value) in _SCALARS:
            return value
        pending = self._pending
        if pending:
            pending.clear()  # left over from a walk that raised (an object msgspec cannot encode)
        try:
            result = self._walk_dict(value) if type(value) is dict else self._walk(value)
        except _Dropped as dropped:
            pending.clear()
            if self._emit is not None:
                self._emit(dropped.rule.name, "drop")
            return DROP
        if pending and self._emit is not None:
            for rule, action in pending:
                self._emit(rule, action)
        pending.clear()
        return result

    def _text(self, text: str) -> str:
        verdict = self.verdict(text)
        if verdict is _CLEAN:
            return text
        if verdict.drop is not None:
            raise _Dropped(verdict.drop)
        self._pending += verdict.actions
        return verdict.result

    def _walk(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return self._text(value)
        if kind in _SCALARS:
            return value
        if kind is dict:
            return self._walk_dict(value)
        if kind is list or kind is tuple:
            return self._walk_sequence(value)
        plain = msgspec.to_builtins(value)
        result = self._walk(plain)
        return value if result is plain else result

    def _walk_dict(self, value: dict[Any, Any]) -> dict[Any, Any]:
        # Strings known to be clean are the common case: settle them with one memo lookup, inline.
        memo = self._memo
        out: dict[Any, Any] | None = None
        position = 0
        for key, item in value.items():
            kind = type(key)
            if kind is str:
                new_key = key if memo.get(key) is _CLEAN else self._text(key)
            else:
                new_key = key if kind in _SCALARS else self._walk(key)
            kind = type(item)
            if kind is str:
                new_item = item if memo.get(item) is _CLEAN else self._text(item)
            else:
                new_item = item if kind in _SCALARS else self._walk(item)
            if out is None:
                if new_key is key and new_item is item:
                    position += 1
                    continue
                out = dict(itertools.islice(value.items(), position))
            out[new_key] = new_item
        return value if out is None else out

    def _walk_sequence(self, value: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
        memo = self._memo
        out: list[Any] | None = None
        for position, item in enumerate(value):
            kind = type(item)
            if kind is str:
                new_item = item if memo.get(item) is _CLEAN else self._text(item)
            else:
                new_item = item if kind in _SCALARS else self._walk(item)
            if out is None:
                if new_item is item:
                    continue
                out = list(value[:position])
            out.append(new_item)
        if out is None:
            return value
        return out if type(value) is list else tuple(out)


# --- public API ------------------------------------------------------------------------------------------


class StateFilter:
    """The privacy rules for one state key of one module: the filtered key and a filter for its values.

    `apply` also counts the key's own actions (and its drop), so call it for every event, even when `key`
    is DROP.
    """

    __slots__ = ("_emit", "_key_actions", "_scan", "key", "rules")

    def __init__(self, key: str | Drop, rules: tuple[str, ...], scan: _Scan,
                 key_actions: tuple[tuple[str, str], ...], emit: OnAction | None) -> None:
        self.key = key
        """The state key as a topic level after the rules, or DROP when a drop rule matches it."""
        self.rules = rules
        """The names of the rules that apply, in settings order."""
        self._scan = scan
        self._key_actions = key_actions
        self._emit = emit

    def apply(self, value: Any) -> Any | Drop:
        """The value with every match replaced, the value itself when nothing matched, or DROP."""
        if self.key is DROP:
            result: Any = DROP
        else:
            result = self._scan.value(value)
            if result is DROP:
                return result
        if self._key_actions and self._emit is not None:
            for rule, action in self._key_actions:
                self._emit(rule, action)
        return result

    def __repr__(self) -> str:
        """The key and the rule names."""
        return f"StateFilter(key={self.key!r}, rules={self.rules!r})"


class RuleSet:
    """The rules one destination (a broker, the HTTP API) applies, in settings order."""

    __slots__ = ("_engine", "_filters", "_metadata", "_rules", "names")

    def __init__(self, engine: PrivacyEngine, rules: Sequence[_Rule]) -> None:
        self._engine = engine
        self._rules = tuple(rules)
        self.names = tuple(rule.name for rule in self._rules)
        """The rule names, in settings order."""
        # (indices of the admitting rules, state key) -> its filter: immutable, so shared by every module
        # whose key the same rules admit (a site has 10,000 modules with the same few keys).
        self._filters: dict[tuple[tuple[int, ...], str], StateFilter] = {}
        unscoped = [rule for rule in self._rules if not rule.scoped]
        self._metadata = engine._scan(unscoped) if unscoped else None

    def scope(self, driver_id: str, module_id: str, state_key: str) -> StateFilter | None:
        """The filter for state changes of `state_key` of a module, or None when no rule applies to them."""
        rules = [rule for rule in self._rules if rule.admits(driver_id, module_id, state_key)]
        if not rules:
            return None
        cache_key = (tuple(rule.index for rule in rules), state_key)
        found = self._filters.get(cache_key)
        if found is None:
            scan = self._engine._scan(rules)
            verdict = scan.verdict(state_key)
            key: str | Drop = DROP if verdict.drop is not None else state_key if verdict is _CLEAN else verdict.result
            found = self._filters[cache_key] = StateFilter(key, tuple(rule.name for rule in rules), scan,
                                                           verdict.actions, self._engine._on_action)
        return found

    def metadata(self, payload: dict[str, Any]) -> dict[str, Any] | Drop:
        """A metadata payload through the unscoped rules: DROP, the payload itself, or a filtered copy."""
        if self._metadata is None:
            return payload
        result: dict[str, Any] | Drop = self._metadata.value(payload)
        return result

    def __repr__(self) -> str:
        """The rule names."""
        return f"RuleSet({list(self.names)!r})"


class PrivacyEngine:
    """Every privacy rule of a site, compiled once; hands out the rule sets destinations apply."""

    def __init__(self, privacy: Privacy, on_action: OnAction | None = None) -> None:
        compiled, problems = _rule_problems(privacy)
        if problems:
            raise SettingsError(problems)
        self._by_name = {rule.name: rule for rule in compiled if rule is not None}
        self._by_index = {rule.index: rule for rule in self._by_name.values()}
        self._on_action = on_action
        self._key = None if privacy.secret is None else hmac.new(privacy.secret.encode(), digestmod=hashlib.sha256)
        self._scans: dict[tuple[int, ...], _Scan] = {}
        self._rule_sets: dict[tuple[int, ...], RuleSet] = {}

    def for_rules(self, names: Iterable[str]) -> RuleSet | None:
        """The rule set for a destination's rule names (any order), cached; None when there are none."""
        try:
            indices = tuple(sorted({self._by_name[name].index for name in names}))
        except KeyError as exc:
            raise SettingsError([f"unknown privacy rule {exc.args[0]!r}"]) from None
        if not indices:
            return None
        rule_set = self._rule_sets.get(indices)
        if rule_set is None:
            rule_set = self._rule_sets[indices] = RuleSet(self, [self._by_index[i] for i in indices])
        return rule_set

    def _scan(self, rules: Sequence[_Rule]) -> _Scan:
        """The compiled scan for an ordered set of rules, shared by every key and destination using it."""
        indices = tuple(rule.index for rule in rules)
        scan = self._scans.get(indices)
        if scan is None:
            scan = self._scans[indices] = _Scan(rules, self._replace, self._on_action)
        return scan

    def _replace(self, rule: _Rule, text: str) -> str:
        if rule.action == "mask":
            return _mask(text)
        assert self._key is not None  # the constructor refuses hash rules without a secret
        digest = self._key.copy()
        digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()


def validate_privacy(site: Site, module_names: Mapping[str, str]) -> list[str]:
    """Every privacy problem of a site as `path: message` (`module_names`: module id -> resolved name)."""
    compiled, problems = _rule_problems(site.privacy)
    names = {rule.name for rule in site.privacy.rules}
    for i, broker in enumerate(site.brokers):
        problems += _unknown_names(f"brokers[{i}].privacy", broker.privacy, names)
    problems += _unknown_names("http.privacy", site.http.privacy, names)

    driver_ids = {driver.id for driver in site.drivers}
    module_ids = {module.id for module in site.modules}
    for i, settings_rule in enumerate(site.privacy.rules):
        for field, scope, known, what in (("drivers", settings_rule.drivers, driver_ids, "driver"),
                                          ("modules", settings_rule.modules, module_ids, "module")):
            for j, ref in enumerate(scope or ()):
                if ref not in known:
                    problems.append(f"privacy.rules[{i}].{field}[{j}]: unknown {what} {ref!r}")

    on_brokers = {name for broker in site.brokers for name in broker.privacy}
    guards = [rule for rule in compiled
              if rule is not None and rule.action != "mask" and rule.name in on_brokers]
    if guards:
        for path, text, what in _topic_levels(site, module_names):
            for rule in guards:
                if _first_nonempty(rule.pattern, text, 0) is not None:
                    problems.append(f"{path}: {text!r} matches privacy rule {rule.name!r} ({rule.action}); {what} "
                                    f"become topic levels, which privacy rules never rewrite")
    return problems


def _unknown_names(path: str, listed: Sequence[str], names: set[str]) -> list[str]:
    return [f"{path}[{i}]: unknown privacy rule {name!r}" for i, name in enumerate(listed) if name not in names]


def _topic_levels(site: Site, module_names: Mapping[str, str]) -> Iterable[tuple[str, str, str]]:
    """(path, text, what) for every id and name of the settings that appears in a topic."""
    yield "org.id", site.org.id, "ids"
    for i, broker in enumerate(site.brokers):
        if broker.client_id is not None:
            yield f"brokers[{i}].client_id", broker.client_id, "client ids"
    for kind, ids in (("zones", [zone.id for zone in site.zones]), ("systems", [system.id for system in site.systems]),
                      ("drivers", [driver.id for driver in site.drivers])):
        for i, item_id in enumerate(ids):
            yield f"{kind}[{i}].id", item_id, "ids"
    for i, module in enumerate(site.modules):
        yield f"modules[{i}].id", module.id, "ids"
        name = module_names.get(module.id, module.name)
        if name is not None:
            yield (f"modules[{i}].name" if module.name is not None else f"modules[{i}]"), name, "module names"
