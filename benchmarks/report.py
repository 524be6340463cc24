"""The machine, the figures table against the issue's targets, and the JSON and markdown files."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.broker import mosquitto_version


def machine() -> dict[str, Any]:
    """CPU model, cores, Python, mosquitto and library versions, kernel, date."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    libs = {name: _version(name) for name in ("gmqtt", "msgspec", "uvloop", "prometheus-client")}
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "mosquitto": mosquitto_version(), "kernel": platform.release(), "libraries": libs,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "?"


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def cell(stats: dict[str, float] | None, digits: int = 1) -> str:
    """`median (min..max)`."""
    if not stats:
        return "-"
    if stats["min"] == stats["max"]:
        return _fmt(stats["median"], digits)
    return f"{_fmt(stats['median'], digits)} ({_fmt(stats['min'], digits)}..{_fmt(stats['max'], digits)})"


def markdown(results: dict[str, Any]) -> str:
    """The summary: figures table, runtime vs relay, ratios and targets."""
    m = results["machine"]
    s = results["summary"]
    cfg = results["config"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['mosquitto']}, "
        f"gmqtt {m['libraries']['gmqtt']}, msgspec {m['libraries']['msgspec']}; {m['date']}.",
        f"Runtime: {cfg['source']}.",
        f"Command: `{results['command']}` ({cfg['runs']} runs; median (min..max); "
        f"{cfg['devices']:,} devices, one module each unless noted; bursts of {cfg['burst']:,} messages).",
        "",
        "| figure | runtime | baseline relay | runtime / relay | target | met |",
        "|---|---:|---:|---:|---|:---:|",
    ]
    for row in s["rows"]:
        lines.append(f"| {row['figure']} | {cell(row.get('runtime'), row.get('digits', 1))} | "
                     f"{cell(row.get('relay'), row.get('digits', 1))} | {cell(row.get('ratio'), 2)} | "
                     f"{row.get('target', '')} | {row.get('met', '')} |")
    notes = s.get("notes", [])
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], directory: Path, stem: str, *, latest: bool = True) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` (and, for the installed tree, the `latest` copies)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = msgspec.json.format(msgspec.json.encode(results), indent=2)
    text = "# Benchmark results\n\n" + markdown(results)
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_bytes(data)
    md_path.write_text(text)
    if latest:
        (directory / "latest.json").write_bytes(data)
        (directory / "latest.md").write_text(text)
    return json_path, md_path
