"""Per-message cost of privacy filtering (StateFilter.apply) on typical sensor states, with and without rules.

Run: .venv/bin/python benchmarks/privacy_cost.py [iterations]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from runtime.model import Privacy, PrivacyRule
from runtime.privacy import PrivacyEngine, StateFilter

STATES: dict[str, Any] = {
    "number": 21.5,
    "small dict": {"temperature": 21.5, "humidity": 40, "co2": 612, "occupied": True},
    "dict with email": {"organizer": "john.smith@example.com", "attendees": 3, "booked": True},
    "list of 2 dicts": [{"device": "tag-17", "rssi": -61, "battery": 87},
                        {"device": "tag-18", "rssi": -70, "battery": 91}],
}

RULES = [
    PrivacyRule(name="emails", match="email", action="hash"),
    PrivacyRule(name="ids", match="uuid", action="mask"),
    PrivacyRule(name="phones", match="phone", action="mask"),
    PrivacyRule(name="visitors", match="(?i)visitor", action="drop"),
]


def per_call_ns(func: Callable[[Any], Any], values: Sequence[Any]) -> float:
    """Mean nanoseconds per call of func(value) over `values`, best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for value in values:
            func(value)
        best = min(best, time.perf_counter() - start)
    return best / len(values) * 1e9


def main() -> None:
    """Print a table: encoding cost for scale, then apply() without and with rules."""
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    engine = PrivacyEngine(Privacy(secret="benchmark-secret", rules=RULES))
    rule_set = engine.for_rules([rule.name for rule in RULES])
    assert rule_set is not None
    state_filter = rule_set.scope("drv-haltian", "mod-201-sensor", "status")
    assert isinstance(state_filter, StateFilter)
    no_rules = engine.for_rules([])

    def without_rules(value: Any) -> Any:
        # What the publisher does for a broker without rules: one None check.
        return value if no_rules is None else no_rules

    cases: dict[str, list[Any]] = {label: [value] * iterations for label, value in STATES.items()}
    # Strings seen for the first time miss the memo and pay for the regular expressions.
    cases["unseen strings"] = [{"device": f"tag-{i}", "note": f"moved to desk {i}"} for i in range(iterations)]

    print(f"{'state':<18}{'json encode':>12}{'no rules':>10}{'4 rules':>10}   ns per message, {iterations} messages")
    for label, values in cases.items():
        encode = per_call_ns(msgspec.json.encode, values)
        bare = per_call_ns(without_rules, values)
        filtered = per_call_ns(state_filter.apply, values)
        print(f"{label:<18}{encode:>12.0f}{bare:>10.0f}{filtered:>10.0f}")


if __name__ == "__main__":
    main()
