"""Every MQTT topic the runtime uses is built here, and nowhere else.

    placeos/<org>/state/<bld>/<lvl>/<area>/<sys>/<drv>/<mod>/<idx>/<state>
    placeos/<org>/metadata/<id>
    placeos/<org>/runtime/<client_id>
"""

from __future__ import annotations

from collections.abc import Sequence

ROOT = "placeos"
MISSING = "_"
_FORBIDDEN = ("/", "+", "#", "\x00")


def is_valid_level(level: str) -> bool:
    """True when `level` can be one MQTT topic level (non-empty, no `/`, `+`, `#`, NUL)."""
    return bool(level) and not any(c in level for c in _FORBIDDEN)


def state_prefix(org: str, levels: Sequence[str | None], system: str, driver: str, module: str, idx: int) -> str:
    """The topic prefix of one module in one system (everything but the state key)."""
    parts = [ROOT, org, "state", *(lvl or MISSING for lvl in levels), system, driver, module, str(idx)]
    return "/".join(parts)


def state_topic(prefix: str, key: str) -> str:
    """The topic of one state key under a module prefix."""
    return f"{prefix}/{key}"


def is_state_topic(org: str, topic: str) -> bool:
    """True for a state topic of the org."""
    return topic.startswith(f"{ROOT}/{org}/state/")


def prefix_of(topic: str) -> str:
    """The module prefix of a state topic (drops the state key)."""
    return topic.rsplit("/", 1)[0]


def metadata_topic(org: str, entity_id: str) -> str:
    """The retained metadata topic of a zone, system or driver."""
    return f"{ROOT}/{org}/metadata/{entity_id}"


def presence_topic(org: str, client_id: str) -> str:
    """The runtime presence topic of one broker connection."""
    return f"{ROOT}/{org}/runtime/{client_id}"


def org_filter(org: str) -> str:
    """A filter selecting everything the runtime publishes for an org."""
    return f"{ROOT}/{org}/#"


def is_presence_topic(org: str, topic: str) -> bool:
    """True for any runtime presence topic of the org (ours or another runtime's)."""
    return topic.startswith(f"{ROOT}/{org}/runtime/")


def sync_topic(client_id: str, nonce: str) -> str:
    """A private topic (outside `placeos/`) used to know when retained messages have all arrived."""
    return f"{ROOT}-runtime-sync/{client_id}/{nonce}"

