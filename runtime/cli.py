"""`placeos-runtime run SETTINGS` and `placeos-runtime check SETTINGS [--json]`.

Exit codes: 0 ok, 2 invalid settings (every error with its path, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from runtime import topics
from runtime.app import Runtime
from runtime.errors import SettingsError
from runtime.logs import setup_logging
from runtime.plan import Plan, build_plan
from runtime.registry import Registry
from runtime.settings import load_settings

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="placeos-runtime", description="PlaceOS-style driver module runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a site")
    run.add_argument("settings", help="settings file (YAML or JSON)")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--log-level", default="INFO")
    check = sub.add_parser("check", help="validate settings and print the topic plan")
    check.add_argument("settings", help="settings file (YAML or JSON)")
    check.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def plan_summary(plan: Plan) -> dict[str, Any]:
    """The topic plan as plain data."""
    site = plan.site
    systems = []
    for sp in plan.systems.values():
        modules = []
        for ref, module_id in sp.refs.items():
            module = plan.modules[module_id]
            binding = next(b for b in module.bindings if b.system == sp.id)
            modules.append({"ref": ref, "id": module_id, "driver": module.driver_id, "name": module.name,
                            "idx": binding.idx, "prefix": binding.prefix,
                            "topic": topics.state_topic(binding.prefix, "<state>")})
        systems.append({"id": sp.id, "levels": dict(zip(site.hierarchy, sp.levels, strict=True)),
                        "modules": modules})
    return {"ok": True, "org": plan.org, "hierarchy": site.hierarchy, "brokers": [b.name for b in site.brokers],
            "metadata": sorted(plan.metadata), "systems": systems, "warnings": list(plan.warnings)}


def _print_plan(summary: dict[str, Any]) -> None:
    print(f"settings OK: org {summary['org']}, hierarchy {'/'.join(summary['hierarchy'])}, "
          f"brokers {', '.join(summary['brokers'])}")
    print("\nmetadata topics (retained):")
    for topic in summary["metadata"]:
        print(f"  {topic}")
    print("\nsystems:")
    for system in summary["systems"]:
        print(f"  {system['id']}")
        for m in system["modules"]:
            print(f"    {m['ref']:<24} {m['id']:<28} {m['topic']}")
    if summary["warnings"]:
        print("\nwarnings:")
        for w in summary["warnings"]:
            print(f"  {w}")


def check(path: str, as_json: bool) -> int:
    """Validate a settings file and print its topic plan."""
    try:
        plan = build_plan(load_settings(path), Registry.from_entry_points())
    except SettingsError as exc:
        if as_json:
            print(msgspec.json.encode({"ok": False, "errors": exc.problems}).decode())
        else:
            print(f"invalid settings: {path}", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    summary = plan_summary(plan)
    if as_json:
        print(msgspec.json.encode(summary).decode())
    else:
        _print_plan(summary)
    return EXIT_OK


def _install_uvloop() -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(path: str, log_format: str, log_level: str) -> int:
    """Run a site until a signal."""
    setup_logging("json" if log_format == "json" else "text", getattr(logging, log_level.upper(), logging.INFO))
    _install_uvloop()
    try:
        return asyncio.run(Runtime(path).run())
    except SettingsError as exc:
        print(f"invalid settings: {path}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m runtime`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return check(args.settings, args.json)
        return run(args.settings, args.log_format, args.log_level)
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        logging.getLogger("runtime").critical("fatal: %s", exc, exc_info=exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
