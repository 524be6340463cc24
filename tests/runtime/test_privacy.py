"""Privacy filters: hash, mask and drop on strings, nested values, keys, state keys and metadata; validation."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

import msgspec
import pytest

from runtime.errors import SettingsError
from runtime.model import Privacy, PrivacyRule, Site
from runtime.privacy import BUILTINS, DROP, PrivacyEngine, RuleSet, StateFilter, validate_privacy

SECRET = "test-secret"
EMAIL = "john.smith@example.com"
UUID = "6E5F8AC6-1234-4bcd-9abc-0123456789ab"
PHONE = "+358 40 123 4567"


def digest(text: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def rule(name: str, match: str, action: str, **scope: list[str]) -> PrivacyRule:
    return msgspec.convert({"name": name, "match": match, "action": action, **scope}, PrivacyRule)


def rules(*items: PrivacyRule, secret: str | None = SECRET, actions: list[tuple[str, str]] | None = None) -> RuleSet:
    """A rule set of every given rule."""
    engine = PrivacyEngine(Privacy(secret=secret, rules=list(items)),
                           on_action=None if actions is None else lambda r, a: actions.append((r, a)))
    rule_set = engine.for_rules([item.name for item in items])
    assert rule_set is not None
    return rule_set


def state(rule_set: RuleSet, key: str = "status", driver: str = "drv-1", module: str = "mod-1") -> StateFilter:
    scoped = rule_set.scope(driver, module, key)
    assert scoped is not None
    return scoped


def one(match: str, action: str, key: str = "status") -> StateFilter:
    return state(rules(rule("r", match, action)), key)


# --- built-ins and actions on flat strings -----------------------------------------------------------------


def test_builtins_are_the_documented_patterns() -> None:
    assert BUILTINS["email"] == r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
    assert BUILTINS["phone"] == r"\+?\d[\d ().-]{7,}\d"
    assert one("uuid", "hash").apply(UUID) == digest(UUID)
    assert one("uuid", "hash").apply(UUID.lower()) == digest(UUID.lower())
    assert one("uuid", "hash").apply("6e5f8ac6-1234-4bcd-9abc") == "6e5f8ac6-1234-4bcd-9abc"


def test_hash_replaces_each_match_with_its_hmac() -> None:
    value = f"from {EMAIL} to a@b.io"
    assert one("email", "hash").apply(value) == f"from {digest(EMAIL)} to {digest('a@b.io')}"


def test_hash_uses_utf8_bytes_of_the_match() -> None:
    assert one("café-\\d+", "hash").apply("x café-12 y") == f"x {digest('café-12')} y"


def test_mask_email_keeps_first_characters_and_last_label() -> None:
    f = one("email", "mask")
    assert f.apply(EMAIL) == "j***@e***.com"
    assert f.apply("write to a.b@mail.example.co.uk!") == "write to a***@m***.uk!"


def test_mask_anything_else_hides_the_length() -> None:
    assert one("uuid", "mask").apply(f"id {UUID}") == "id ****"
    assert one("phone", "mask").apply(f"call {PHONE}") == "call ****"
    assert one(r"guest-\d+", "mask").apply("guest-1 and guest-123456") == "**** and ****"


def test_mask_uses_the_email_form_for_an_email_matched_by_any_rule() -> None:
    assert one(r"[\w.]+@example\.com", "mask").apply(f"<{EMAIL}>") == "<j***@e***.com>"


def test_drop_on_a_match_and_not_otherwise() -> None:
    f = one("(?i)visitor", "drop")
    assert f.apply("a VISITOR badge") is DROP
    text = "a staff badge"
    assert f.apply(text) is text


def test_mask_is_deterministic_and_hash_is_stable_across_engines() -> None:
    first = one("email", "hash").apply(EMAIL)
    again = one("email", "hash").apply(EMAIL)  # a new engine: a restart with the same secret
    assert first == again == digest(EMAIL)
    other = state(rules(rule("r", "email", "hash"), secret="another")).apply(EMAIL)
    assert other == digest(EMAIL, "another") != first
    assert one("email", "mask").apply(EMAIL) == one("email", "mask").apply(EMAIL)


# --- values at any depth ------------------------------------------------------------------------------------


def test_nested_dicts_lists_and_keys() -> None:
    f = one("email", "hash")
    value = {"meeting": {"organizer": EMAIL, "attendees": [EMAIL, "x@y.org", 3]},
             EMAIL: {"count": 2}, "tuple": (EMAIL, 1.5)}
    assert f.apply(value) == {
        "meeting": {"organizer": digest(EMAIL), "attendees": [digest(EMAIL), digest("x@y.org"), 3]},
        digest(EMAIL): {"count": 2},
        "tuple": (digest(EMAIL), 1.5),
    }


def test_mask_in_nested_values_and_keys() -> None:
    f = one("email", "mask")
    assert f.apply([{"host": EMAIL}, {EMAIL: [EMAIL]}]) == [{"host": "j***@e***.com"},
                                                          {"j***@e***.com": ["j***@e***.com"]}]


def test_drop_anywhere_in_a_nested_value_including_keys() -> None:
    f = one("visitor", "drop")
    assert f.apply({"a": [1, {"b": ["x", "visitor 7"]}]}) is DROP
    assert f.apply({"a": {"visitor": 1}}) is DROP
    assert f.apply([("x", "a visitor")]) is DROP


def test_key_order_is_kept_when_a_key_changes() -> None:
    out = one("email", "hash").apply({"a": 1, EMAIL: 2, "z": 3})
    assert isinstance(out, dict) and list(out) == ["a", digest(EMAIL), "z"]


def test_masked_keys_that_collide_keep_the_later_value() -> None:
    assert one("email", "mask").apply({"ann@x.com": 1, "amy@xy.com": 2}) == {"a***@x***.com": 2}


@pytest.mark.parametrize("value", [0, 12345678901, -4.5, 3.14e10, True, False, None, [], {}, [1, 2.5, None],
                                   {"count": 4}, ["plain", ("text", 1)], "no match here"])
def test_values_without_matches_are_returned_as_the_same_object(value: Any) -> None:
    f = state(rules(rule("e", "email", "hash"), rule("p", "phone", "mask"), rule("v", "visitor", "drop")))
    assert f.apply(value) is value


def test_numbers_are_not_strings_and_pass_through() -> None:
    value = {"phone_as_number": 358401234567}
    assert one("phone", "hash").apply(value) is value


def test_unchanged_parts_of_a_changed_value_are_shared() -> None:
    inner = {"temperature": 21.5, "tags": ["a", "b"]}
    value = {"sensor": inner, "owner": EMAIL, "list": [inner]}
    out = one("email", "hash").apply(value)
    assert isinstance(out, dict) and out is not value
    assert out["sensor"] is inner and out["list"] is value["list"]
    assert value["owner"] == EMAIL  # the input is never modified


def test_structs_and_objects_are_filtered_as_the_encoder_writes_them() -> None:
    class Booking(msgspec.Struct):
        host: str
        room: str

    f = state(rules(rule("e", "email", "hash"), rule("u", "uuid", "mask")))
    assert f.apply(Booking(EMAIL, "201")) == {"host": digest(EMAIL), "room": "201"}
    booking = Booking("nobody", "201")
    assert f.apply(booking) is booking
    assert f.apply({"id": uuid.UUID(UUID)}) == {"id": "****"}
    assert msgspec.json.encode(f.apply([Booking(EMAIL, "1")])) == msgspec.json.encode([{"host": digest(EMAIL),
                                                                                         "room": "1"}])


# --- state keys and metadata --------------------------------------------------------------------------------


def test_state_key_is_filtered_as_a_topic_level() -> None:
    assert one("email", "hash", key=f"seen:{EMAIL}").key == f"seen:{digest(EMAIL)}"
    assert one("email", "mask", key=EMAIL).key == "j***@e***.com"
    assert one("email", "hash", key="temperature").key == "temperature"


def test_drop_rule_matching_the_state_key_drops_every_event() -> None:
    actions: list[tuple[str, str]] = []
    f = state(rules(rule("v", "visitor", "drop"), actions=actions), key="visitor_count")
    assert f.key is DROP
    assert f.apply(5) is DROP
    assert actions == [("v", "drop")]


def test_metadata_gets_the_unscoped_rules() -> None:
    rule_set = rules(rule("e", "email", "hash"), rule("g", r"guest-\d+", "mask", states=["booking*"]))
    payload = {"id": "sys-1", "name": f"Desk of {EMAIL} guest-12", "zones": ["zone-a"]}
    assert rule_set.metadata(payload) == {"id": "sys-1", "name": f"Desk of {digest(EMAIL)} guest-12",
                                          "zones": ["zone-a"]}
    clean = {"id": "sys-1", "name": "Room 2.01"}
    assert rule_set.metadata(clean) is clean


def test_metadata_drop_and_scoped_only_rule_sets() -> None:
    assert rules(rule("v", "(?i)visitor", "drop")).metadata({"name": "Visitor lounge"}) is DROP
    scoped_only = rules(rule("e", "email", "hash", drivers=["drv-1"]))
    payload = {"name": EMAIL}
    assert scoped_only.metadata(payload) is payload


# --- scopes -------------------------------------------------------------------------------------------------


def test_states_globs_limit_a_rule() -> None:
    rule_set = rules(rule("g", r"guest-\d+", "mask", states=["booking*", "host_?"]))
    assert rule_set.scope("drv-1", "mod-1", "status") is None
    assert state(rule_set, "booking_host").apply("guest-7") == "****"
    assert state(rule_set, "host_1").apply("guest-7") == "****"
    assert rule_set.scope("drv-1", "mod-1", "host_12") is None
    assert rule_set.scope("drv-1", "mod-1", "Booking") is None  # globs are case-sensitive


def test_drivers_and_modules_limit_a_rule_and_combine() -> None:
    rule_set = rules(rule("e", "email", "hash", drivers=["drv-a"]),
                     rule("p", "phone", "mask", modules=["mod-x"]),
                     rule("u", "uuid", "mask", drivers=["drv-a"], modules=["mod-x"], states=["id*"]))
    assert rule_set.scope("drv-b", "mod-y", "status") is None
    assert state(rule_set, "status", "drv-a", "mod-y").rules == ("e",)
    assert state(rule_set, "status", "drv-b", "mod-x").rules == ("p",)
    assert state(rule_set, "status", "drv-a", "mod-x").rules == ("e", "p")
    f = state(rule_set, "id", "drv-a", "mod-x")
    assert f.rules == ("e", "p", "u")
    assert f.apply([EMAIL, PHONE, UUID]) == [digest(EMAIL), "****", "****"]


def test_modules_whose_key_the_same_rules_admit_share_one_filter() -> None:
    rule_set = rules(rule("e", "email", "hash"), rule("p", "phone", "mask", modules=["mod-x"]))
    shared = state(rule_set, "status", "drv-1", "mod-1")
    assert state(rule_set, "status", "drv-2", "mod-2") is shared
    assert state(rule_set, "status", "drv-1", "mod-x").rules == ("e", "p")  # another set of rules: its own
    assert state(rule_set, "note", "drv-1", "mod-1") is not shared  # another key: its own
    assert shared.apply(f"by {EMAIL}") == f"by {digest(EMAIL)}"


# --- how rules combine --------------------------------------------------------------------------------------


def test_drop_wins_over_every_other_rule() -> None:
    f = state(rules(rule("e", "email", "hash"), rule("v", "visitor", "drop")))
    assert f.apply({"host": EMAIL, "note": "visitor"}) is DROP
    # The email match covers the drop rule's text, and the drop still wins.
    assert f.apply("visitor@example.com") is DROP


def test_overlapping_matches_merge_and_take_the_earliest_rules_action() -> None:
    f = state(rules(rule("digits", r"\d{4}", "mask"), rule("e", "email", "hash")))
    # The digits and the email overlap: one piece, masked by the earlier rule (and it is an email).
    assert f.apply("x1234@ex.com") == "x***@e***.com"
    g = state(rules(rule("e", "email", "hash"), rule("digits", r"\d{4}", "mask")))
    assert g.apply("to x1234@ex.com") == f"to {digest('x1234@ex.com')}"
    assert g.apply("5678 a@b.io") == f"**** {digest('a@b.io')}"
    # Matches that only touch stay apart.
    h = state(rules(rule("e", "email", "mask"), rule("u", "uuid", "mask")))
    assert h.apply("a@b.io12345678-1234-1234-1234-123456789abc") == "a***@b***.io****"


def test_no_part_of_an_overlapped_match_survives() -> None:
    # The email's last label ends inside the uuid; masking the email alone would keep its `e`, and the
    # uuid would be whole again on the wire.
    text = "0@0.Ae3e70682-c209-4cac-629f-6fbed82c07cd"
    f = state(rules(rule("e", "email", "mask"), rule("u", "uuid", "hash")))
    assert f.apply(text) == "****"
    g = state(rules(rule("u", "uuid", "hash"), rule("e", "email", "mask")))
    assert g.apply(text) == digest(text)


def test_replacements_are_never_scanned_again() -> None:
    # The second rule would match inside any hex digest.
    f = state(rules(rule("e", "email", "hash"), rule("hex", "[0-9a-f]{6}", "mask")))
    assert f.apply(EMAIL) == digest(EMAIL)
    assert f.apply(f"{EMAIL} abcdef") == f"{digest(EMAIL)} ****"


def test_leading_inline_flags_and_verbose_patterns_join_the_combined_pattern() -> None:
    f = state(rules(rule("g", r"(?i)guest-\d+", "mask"),
                    rule("v", "(?x) vis itor  # a comment at the end", "hash"),
                    rule("e", "email", "hash")))
    assert f.apply("GUEST-1 visitor a@b.io") == f"**** {digest('visitor')} {digest('a@b.io')}"


def test_rules_referring_to_their_own_groups_give_the_same_result() -> None:
    # A backreference and a reused group name keep rules out of one combined pattern.
    f = state(rules(rule("double", r"(\w)\1\d", "mask"), rule("e", "email", "hash"),
                    rule("n1", r"(?P<n>#\d+)", "mask"), rule("n2", r"(?P<n>!\d+)", "hash")))
    text = f"aa1 bb {EMAIL} cc9 #12 !34"
    assert f.apply(text) == f"**** bb {digest(EMAIL)} **** **** {digest('!34')}"
    assert f.apply("xaa1@ex.com") == "x***@e***.com"  # merged with the email, masked by the earlier rule


def test_empty_matches_never_count() -> None:
    # An alternative that can match empty text: only its non-empty matches act.
    f = one(r"\b|visitor", "drop")
    assert f.apply("staff") == "staff"
    assert f.apply("a visitor") is DROP
    assert one(r"(?=x)|guest", "mask").apply("x guest") == "x ****"


# --- counting -----------------------------------------------------------------------------------------------


def test_on_action_counts_every_match_and_each_drop_once() -> None:
    actions: list[tuple[str, str]] = []
    rule_set = rules(rule("e", "email", "hash"), rule("p", "phone", "mask"), rule("v", "visitor", "drop"),
                     actions=actions)
    f = state(rule_set)
    f.apply({EMAIL: [EMAIL, PHONE], "n": 1})
    assert actions == [("e", "hash"), ("e", "hash"), ("p", "mask")]
    actions.clear()
    f.apply({EMAIL: "visitor", "other": "visitor"})
    assert actions == [("v", "drop")]  # a dropped event counts its drop, not what was replaced before it
    actions.clear()
    f.apply({EMAIL: 1})
    f.apply({EMAIL: 1})  # remembered verdicts still count
    assert actions == [("e", "hash"), ("e", "hash")]


def test_on_action_counts_the_state_key_on_every_event() -> None:
    actions: list[tuple[str, str]] = []
    f = state(rules(rule("e", "email", "hash"), actions=actions), key=f"{EMAIL}_seen")
    assert actions == []
    f.apply(1)
    f.apply(2)
    assert actions == [("e", "hash"), ("e", "hash")]


# --- engine -------------------------------------------------------------------------------------------------


def test_for_rules_is_cached_ordered_by_settings_and_none_when_empty() -> None:
    engine = PrivacyEngine(Privacy(secret=SECRET, rules=[rule("a", "email", "hash"), rule("b", "uuid", "mask")]))
    assert engine.for_rules([]) is None
    both = engine.for_rules(["b", "a"])
    assert both is not None and both.names == ("a", "b")
    assert engine.for_rules(["a", "b", "a"]) is both
    assert engine.for_rules(["a"]) is not both
    with pytest.raises(SettingsError, match="unknown privacy rule 'c'"):
        engine.for_rules(["c"])


def test_engine_refuses_invalid_rules() -> None:
    with pytest.raises(SettingsError) as info:
        PrivacyEngine(Privacy(secret=None, rules=[rule("a", "email", "hash"), rule("b", "(", "mask")]))
    assert info.value.problems == [
        "privacy.rules[1].match: invalid regular expression: missing ), unterminated subpattern at position 0",
        "privacy.secret: required because rule 'a' hashes",
    ]


# --- validation ---------------------------------------------------------------------------------------------


def site(**extra: Any) -> Site:
    doc: dict[str, Any] = {
        "org": {"id": "zone-acme", "name": "Acme"},
        "brokers": [{"name": "local", "url": "mqtt://127.0.0.1:1883", "privacy": ["emails"]},
                    {"name": "cloud", "url": "mqtts://cloud:8883", "privacy": ["emails", "ids"]}],
        "privacy": {"secret": SECRET, "rules": [{"name": "emails", "match": "email", "action": "hash"},
                                                {"name": "ids", "match": "uuid", "action": "drop"},
                                                {"name": "nums", "match": r"\d{3}", "action": "mask"}]},
        "zones": [{"id": "zone-hq", "name": "HQ", "tags": ["building"], "parent": "zone-acme"}],
        "drivers": [{"id": "drv-1", "name": "Demo", "driver": "demo"}],
        "modules": [{"id": "mod-1", "driver": "drv-1"}, {"id": "mod-2", "driver": "drv-1", "name": "Sensor"}],
        "systems": [{"id": "sys-101", "name": "Room", "modules": ["mod-1", "mod-2"]}],
    }
    doc.update(extra)
    return msgspec.convert(doc, Site)


NAMES = {"mod-1": "Demo", "mod-2": "Sensor"}


def test_a_valid_site_has_no_problems() -> None:
    # sys-101 matches the mask rule `nums`: masks are not checked against ids.
    assert validate_privacy(site(), NAMES) == []


def test_each_bad_rule_is_reported_with_its_path() -> None:
    s = site(privacy={"rules": [
        {"name": "a", "match": "[a-", "action": "mask"},
        {"name": "b", "match": "Email", "action": "mask"},
        {"name": "c", "match": "uuids", "action": "mask"},
        {"name": "d", "match": "x*", "action": "mask"},
        {"name": "a", "match": "email", "action": "hash"},
        {"name": "emails", "match": "email", "action": "mask", "states": []},
        {"name": "ids", "match": "uuid", "action": "mask", "drivers": ["drv-1", "drv-x"], "modules": ["mod-y"]},
    ]})
    assert validate_privacy(s, NAMES) == [
        "privacy.rules[0].match: invalid regular expression: unterminated character set at position 0",
        "privacy.rules[1].match: unknown built-in 'Email': the built-ins are exactly email, uuid and phone; "
        "to match this text as a regular expression write (?:Email)",
        "privacy.rules[2].match: unknown built-in 'uuids': the built-ins are exactly email, uuid and phone; "
        "to match this text as a regular expression write (?:uuids)",
        "privacy.rules[3].match: the regular expression matches the empty string",
        "privacy.rules[4].name: duplicate rule name 'a' (also privacy.rules[0])",
        "privacy.rules[5].states: empty, so the rule would never apply; omit it to apply everywhere",
        "privacy.secret: required because rule 'a' hashes",
        "privacy.rules[6].drivers[1]: unknown driver 'drv-x'",
        "privacy.rules[6].modules[0]: unknown module 'mod-y'",
    ]


def test_an_empty_secret_is_missing() -> None:
    s = site(privacy={"secret": "", "rules": [{"name": "emails", "match": "email", "action": "hash"},
                                              {"name": "ids", "match": "uuid", "action": "hash"}]})
    assert validate_privacy(s, NAMES) == ["privacy.secret: required because rules 'emails', 'ids' hash"]


def test_literal_text_that_looks_like_a_builtin_can_be_written_as_a_group() -> None:
    s = site(privacy={"rules": [{"name": "emails", "match": "(?:Email)", "action": "mask"},
                                {"name": "ids", "match": "uuid", "action": "mask"}]})
    assert validate_privacy(s, NAMES) == []
    assert one("(?:Email)", "mask").apply("Email: x") == "****: x"


def test_unknown_rule_names_on_brokers_and_http() -> None:
    s = site(http={"privacy": ["emails", "nope"]})
    s.brokers[1].privacy.append("missing")
    assert validate_privacy(s, NAMES) == [
        "brokers[1].privacy[2]: unknown privacy rule 'missing'",
        "http.privacy[1]: unknown privacy rule 'nope'",
    ]


def test_ids_and_names_matched_by_a_hash_or_drop_rule_of_any_broker() -> None:
    uid = "6e5f8ac6-1234-4bcd-9abc-0123456789ab"
    s = site(
        org={"id": "a@acme.com", "name": "Acme"},
        zones=[{"id": "zone-hq", "name": "x@y.com is a name, not an id"}, {"id": f"zone-{uid}", "name": "L2"}],
        drivers=[{"id": "drv-1", "name": "Demo", "driver": "demo"}, {"id": "ops@x.io", "name": "D", "driver": "demo"}],
        modules=[{"id": "mod-1", "driver": "drv-1"}, {"id": "m@x.io", "driver": "drv-1", "name": "Sensor"},
                 {"id": "mod-3", "driver": "drv-1", "name": "bob@x.io"}],
        systems=[{"id": uid, "name": "Room"}],
    )
    s.brokers[0].client_id = "rt@acme.com"
    names = {"mod-1": "owner@x.io", "m@x.io": "Sensor", "mod-3": "bob@x.io"}
    assert validate_privacy(s, names) == [
        "org.id: 'a@acme.com' matches privacy rule 'emails' (hash); ids become topic levels, "
        "which privacy rules never rewrite",
        "brokers[0].client_id: 'rt@acme.com' matches privacy rule 'emails' (hash); client ids become topic levels, "
        "which privacy rules never rewrite",
        f"zones[1].id: 'zone-{uid}' matches privacy rule 'ids' (drop); ids become topic levels, "
        "which privacy rules never rewrite",
        f"systems[0].id: '{uid}' matches privacy rule 'ids' (drop); ids become topic levels, "
        "which privacy rules never rewrite",
        "drivers[1].id: 'ops@x.io' matches privacy rule 'emails' (hash); ids become topic levels, "
        "which privacy rules never rewrite",
        "modules[0]: 'owner@x.io' matches privacy rule 'emails' (hash); module names become topic levels, "
        "which privacy rules never rewrite",
        "modules[1].id: 'm@x.io' matches privacy rule 'emails' (hash); ids become topic levels, "
        "which privacy rules never rewrite",
        "modules[2].name: 'bob@x.io' matches privacy rule 'emails' (hash); module names become topic levels, "
        "which privacy rules never rewrite",
    ]


def test_scoped_rules_still_guard_ids_but_unattached_and_mask_rules_do_not() -> None:
    s = site(privacy={"secret": SECRET, "rules": [
        {"name": "emails", "match": "email", "action": "hash", "states": ["booking*"], "drivers": ["drv-1"]},
        {"name": "ids", "match": "mod", "action": "mask"},
        {"name": "loose", "match": "zone", "action": "drop"},
    ]}, org={"id": "x@y.com", "name": "Acme"}, http={"privacy": ["loose"]})
    assert validate_privacy(s, NAMES) == [
        "org.id: 'x@y.com' matches privacy rule 'emails' (hash); ids become topic levels, "
        "which privacy rules never rewrite",
    ]


def test_a_masked_email_followed_by_an_at_sign_leaves_no_raw_match() -> None:
    from runtime.model import Privacy, PrivacyRule
    from runtime.privacy import PrivacyEngine

    engine = PrivacyEngine(Privacy(rules=[PrivacyRule(name="m", match="email", action="mask")]))
    rules = engine.for_rules(["m"])
    assert rules is not None
    scoped = rules.scope("d", "m", "k")
    assert scoped is not None
    assert scoped.apply("A@0.AA@0.AA") == "****@0.AA"
    assert scoped.apply("x j.doe@acme.com y") == "x j***@a***.com y"
