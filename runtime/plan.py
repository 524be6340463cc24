"""From a validated `Site` to the plan the runtime executes: zones resolved, names, indexes, topics.

`build_plan` also performs every cross-reference check and reports all problems with
their paths; `check` prints the plan it returns.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from runtime import topics
from runtime.errors import SettingsError
from runtime.model import Site
from runtime.payloads import encode_metadata
from runtime.privacy import validate_privacy
from runtime.registry import Registry
from runtime.settings import format_path

S = TypeVar("S")


class Binding(msgspec.Struct, frozen=True):
    """A module's place in one system: its index there and its topic prefix."""

    system: str
    idx: int
    prefix: str


class ModulePlan(msgspec.Struct, frozen=True):
    """One module as the runtime runs it."""

    id: str
    driver_id: str
    driver_key: str
    name: str
    settings: dict[str, Any]  # merged; its values are the settings file's own objects, shared, not copied
    timezone: str
    bindings: tuple[Binding, ...]
    checked: Any = None
    """The merged settings as converted when the plan was checked, kept when the driver's Struct is frozen."""

    def driver_settings(self, settings_type: type[S]) -> S:
        """The merged settings as the driver's Struct (its defaults filled in, values shared)."""
        checked = self.checked
        if type(checked) is settings_type:
            return checked
        return msgspec.convert(self.settings, settings_type, strict=False)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Topic prefixes, one per system the module is in."""
        return tuple(b.prefix for b in self.bindings)


class SystemPlan(msgspec.Struct, frozen=True):
    """One system: its zone per hierarchy level and its modules with their references."""

    id: str
    levels: tuple[str | None, ...]
    modules: tuple[str, ...]
    refs: dict[str, str]  # "Name_idx" -> module id


class Plan(msgspec.Struct, frozen=True):
    """Everything resolved from a settings file.

    `site` keeps the site-wide settings only (org, hierarchy, brokers, http, privacy, state_dir):
    its zones, systems, drivers and modules are empty, as everything resolved from them is in
    `modules`, `systems` and `metadata` (a large site would otherwise be held twice).
    """

    site: Site
    org: str
    modules: dict[str, ModulePlan]
    systems: dict[str, SystemPlan]
    metadata: dict[str, bytes]  # metadata topic -> its payload, encoded
    warnings: tuple[str, ...] = ()

    def prefixes(self) -> set[str]:
        """Every module topic prefix of the site."""
        return {p for m in self.modules.values() for p in m.prefixes}


def _valid_tz(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class _Checker:
    def __init__(self, site: Site, registry: Registry) -> None:
        self.site = site
        self.registry = registry
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def err(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(f"{format_path(path)}: {message}")

    def warn(self, path: tuple[str | int, ...], message: str) -> None:
        self.warnings.append(f"{format_path(path)}: {message}")


def _check_ids(c: _Checker) -> None:
    site = c.site
    seen: dict[str, tuple[str | int, ...]] = {site.org.id: ("org", "id")}
    ids: list[tuple[str, int, str]] = [("zones", i, z.id) for i, z in enumerate(site.zones)]
    ids += [("drivers", i, d.id) for i, d in enumerate(site.drivers)]
    ids += [("modules", i, m.id) for i, m in enumerate(site.modules)]
    ids += [("systems", i, s.id) for i, s in enumerate(site.systems)]
    for kind, i, item_id in ids:
        path = (kind, i, "id")
        if item_id in seen:
            c.err(path, f"duplicate id {item_id!r} (also {format_path(seen[item_id])}); ids are unique "
                        "across the org, zones, drivers, modules and systems")
        else:
            seen[item_id] = path
    names: dict[str, int] = {}
    client_ids: dict[str, int] = {}
    for i, broker in enumerate(site.brokers):
        if broker.name in names:
            c.err(("brokers", i, "name"), f"duplicate broker name {broker.name!r} (also brokers[{names[broker.name]}])")
        names.setdefault(broker.name, i)
        cid = broker.client_id or ""
        if cid and cid in client_ids:
            c.err(("brokers", i, "client_id"), f"duplicate client id {cid!r} (also brokers[{client_ids[cid]}])")
        client_ids.setdefault(cid, i)
    if not _valid_tz(site.org.timezone):
        c.err(("org", "timezone"), f"unknown IANA time zone {site.org.timezone!r}")
    for i, zone in enumerate(site.zones):
        if "timezone" in zone.settings and not _valid_tz(zone.settings["timezone"]):
            c.err(("zones", i, "settings", "timezone"), f"unknown IANA time zone {zone.settings['timezone']!r}")


def _zone_parents(c: _Checker) -> dict[str, str | None]:
    """Zone id -> parent zone id (None for the org); errors for unknown parents and cycles."""
    site = c.site
    known = {z.id for z in site.zones}
    parents: dict[str, str | None] = {site.org.id: None}
    for i, zone in enumerate(site.zones):
        parent = zone.parent or site.org.id
        if parent != site.org.id and parent not in known:
            c.err(("zones", i, "parent"), f"unknown parent zone {parent!r}")
            parent = site.org.id
        parents[zone.id] = parent
    index = {z.id: i for i, z in enumerate(site.zones)}
    for zone in site.zones:
        seen = [zone.id]
        cur = parents.get(zone.id)
        while cur is not None:
            if cur == zone.id:
                chain = " -> ".join([*seen, cur])
                c.err(("zones", index[zone.id], "parent"), f"zone parents form a cycle: {chain}")
                parents[zone.id] = site.org.id
                break
            if cur in seen:
                break
            seen.append(cur)
            cur = parents.get(cur)
    return parents


def _ancestors(zone: str, parents: dict[str, str | None]) -> list[str]:
    """The zone and its ancestors up to (excluding) the org, innermost first."""
    chain: list[str] = []
    cur: str | None = zone
    while cur is not None and parents.get(cur) is not None and cur not in chain:
        chain.append(cur)
        cur = parents.get(cur)
    return chain


SettingsPath = tuple[str | int, ...]


def _merge(layers: list[tuple[SettingsPath, dict[str, Any]]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged.update(layer)
    return merged


def _origin(layers: list[tuple[SettingsPath, dict[str, Any]]]) -> dict[str, SettingsPath]:
    """Where each merged key came from (the last layer that set it); needed only to blame an error."""
    return {key: (*path, key) for path, layer in layers for key in layer}


def build_plan(site: Site, registry: Registry) -> Plan:
    """Resolve a site into a plan; raises `SettingsError` with every problem found."""
    c = _Checker(site, registry)
    _check_ids(c)
    parents = _zone_parents(c)
    org = site.org.id
    hierarchy = site.hierarchy
    zones = {z.id: z for z in site.zones}
    zone_index = {z.id: i for i, z in enumerate(site.zones)}
    drivers = {d.id: d for d in site.drivers}
    modules = {m.id: m for m in site.modules}
    module_index = {m.id: i for i, m in enumerate(site.modules)}

    for i, record in enumerate(site.drivers):
        if record.driver not in registry:
            c.err(("drivers", i, "driver"), f"unknown driver {record.driver!r} (installed: "
                                            f"{', '.join(registry.keys()) or 'none'})")
    resolved_names: dict[str, str] = {}
    for i, module in enumerate(site.modules):
        found = drivers.get(module.driver)
        if found is None:
            c.err(("modules", i, "driver"), f"unknown driver record {module.driver!r}")
            continue
        if module.name is not None:
            resolved_names[module.id] = module.name
        elif found.driver in registry:
            generic = registry.get(found.driver).generic_name
            resolved_names[module.id] = generic
            if not topics.is_valid_level(generic):
                c.err(("modules", i), f"driver generic name {generic!r} is not a valid topic level; set `name`")

    systems: dict[str, SystemPlan] = {}
    module_systems: dict[str, list[tuple[str, int]]] = {m.id: [] for m in site.modules}
    system_zone_chain: dict[str, list[str]] = {}
    for si, system in enumerate(site.systems):
        chain: list[str] = []
        for zi, zone_id in enumerate(system.zones):
            if zone_id == org:
                continue
            if zone_id not in zones:
                c.err(("systems", si, "zones", zi), f"unknown zone {zone_id!r}")
                continue
            for z in _ancestors(zone_id, parents):
                if z not in chain:
                    chain.append(z)
        levels: list[str | None] = []
        for tag in hierarchy:
            tagged = [z for z in chain if tag in zones[z].tags]
            if len(tagged) > 1:
                c.err(("systems", si, "zones"), f"zones {', '.join(map(repr, tagged))} both give the {tag!r} level")
            levels.append(tagged[0] if tagged else None)
        system_zone_chain[system.id] = chain
        counts: Counter[str] = Counter()
        refs: dict[str, str] = {}
        members: list[str] = []
        for mi, module_id in enumerate(system.modules):
            if module_id not in modules:
                c.err(("systems", si, "modules", mi), f"unknown module {module_id!r}")
                continue
            if module_id in members:
                c.err(("systems", si, "modules", mi), f"module {module_id!r} is listed twice")
                continue
            members.append(module_id)
            name = resolved_names.get(module_id)
            if name is None:
                continue
            counts[name] += 1
            refs[f"{name}_{counts[name]}"] = module_id
            module_systems[module_id].append((system.id, counts[name]))
        systems[system.id] = SystemPlan(system.id, tuple(levels), tuple(members), refs)

    module_plans: dict[str, ModulePlan] = {}
    system_by_id = {s.id: (i, s) for i, s in enumerate(site.systems)}
    driver_index = {d.id: i for i, d in enumerate(site.drivers)}
    # Per driver: its settings Struct, the keys a module may set, and whether the checked Struct can be kept.
    settings_of: dict[str, tuple[type[msgspec.Struct], frozenset[str], bool]] = {}
    for key in {d.driver for d in site.drivers}:
        if key in registry:
            settings_type = registry.get(key).Settings
            settings_of[key] = (settings_type, frozenset(settings_type.__struct_fields__) | {"timezone"},
                                settings_type.__struct_config__.frozen)
    for module in site.modules:
        i = module_index[module.id]
        maybe_record = drivers.get(module.driver)
        if maybe_record is None or module.id not in resolved_names:
            continue
        record = maybe_record
        placements = module_systems[module.id]
        layers: list[tuple[tuple[str | int, ...], dict[str, Any]]] = [
            (("drivers", driver_index[record.id], "settings"), record.settings),
            (("org", "settings"), site.org.settings)]
        if placements:
            # Zone and system layers come from the module's first system.
            si, first = system_by_id[placements[0][0]]
            for z in reversed(system_zone_chain[first.id]):
                layers.append((("zones", zone_index[z], "settings"), zones[z].settings))
            layers.append((("systems", si, "settings"), first.settings))
        else:
            c.warn(("modules", i), "module is in no system: it runs but publishes nothing")
        layers.append((("modules", i, "settings"), module.settings))
        merged = _merge(layers)
        tz = merged.get("timezone", site.org.timezone)
        if not _valid_tz(tz):
            tz = site.org.timezone
        checked = None
        driver_settings = settings_of.get(record.driver)
        if driver_settings is not None:
            settings_type, known, keep = driver_settings
            try:
                converted = msgspec.convert(merged, settings_type, strict=False)
                checked = converted if keep else None
            except msgspec.ValidationError as exc:
                c.err(_blame(exc, _origin(layers), ("modules", i, "settings")),
                      f"{exc} (merged settings of module {module.id!r})")
            for key in module.settings:
                if key not in known:
                    c.warn(("modules", i, "settings", key), f"no setting {key!r} in driver {record.driver!r}; ignored")
        bindings = tuple(
            Binding(sys_id, idx, topics.state_prefix(org, systems[sys_id].levels, sys_id, record.id,
                                                     resolved_names[module.id], idx))
            for sys_id, idx in placements)
        module_plans[module.id] = ModulePlan(module.id, record.id, record.driver, resolved_names[module.id], merged,
                                             tz, bindings, checked)

    c.problems += validate_privacy(site, resolved_names)
    if c.problems:
        raise SettingsError(c.problems)
    metadata = {topic: encode_metadata(payload) for topic, payload in _metadata(site, parents, registry).items()}
    lean = msgspec.structs.replace(site, zones=[], systems=[], drivers=[], modules=[])
    return Plan(lean, org, module_plans, systems, metadata, tuple(c.warnings))


def _blame(exc: msgspec.ValidationError, origin: dict[str, tuple[str | int, ...]],
           default: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The path of the settings layer that gave the offending top-level key."""
    text = str(exc)
    marker = "at `$."
    if marker in text:
        key = text.split(marker, 1)[1].split("`", 1)[0].split(".", 1)[0].split("[", 1)[0]
        if key in origin:
            return origin[key]
    return default


def _without_none(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if v is not None or k == "parent"}


def _metadata(site: Site, parents: dict[str, str | None], registry: Registry) -> dict[str, dict[str, Any]]:
    org = site.org.id
    meta: dict[str, dict[str, Any]] = {
        topics.metadata_topic(org, org): _without_none({"id": org, "name": site.org.name, "tags": ["org"],
                                                         "parent": None, "description": site.org.description})}
    for zone in site.zones:
        meta[topics.metadata_topic(org, zone.id)] = _without_none({
            "id": zone.id, "name": zone.name, "tags": list(zone.tags), "parent": parents.get(zone.id) or org,
            "description": zone.description})
    for system in site.systems:
        meta[topics.metadata_topic(org, system.id)] = _without_none({
            "id": system.id, "name": system.name, "description": system.description,
            "zones": list(system.zones), "modules": list(system.modules)})
    for record in site.drivers:
        description = record.description
        if description is None:
            description = registry.get(record.driver).description if record.driver in registry else ""
        meta[topics.metadata_topic(org, record.id)] = {
            "id": record.id, "name": record.name, "driver": record.driver, "description": description}
    return meta
