"""`python -m benchmarks [--quick] [--runs 3]`: the runtime against the baseline relay, end to end.

Each run starts, per target, a fresh mosquitto, the counting subscriber and the target process, and alternates
relay and runtime so both see the same machine state. Results go to benchmarks/results/ as JSON and markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.procs import Children
from benchmarks.suite import Bench, BenchError, Config, Session, summarize

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"qos0": 1.0, "qos1": 1.5, "cpu": 25.0, "p99_5k": 10.0, "rss": 150.0, "start_json": 2.0,
           "start_yaml": 6.0}


def _log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def one_run(bench: Bench, run: int) -> dict[str, Any]:
    """Every scenario once; returns the raw figures of this run."""
    cfg = bench.config
    site = bench.site(cfg.devices, 1)
    grouped = bench.site(cfg.devices, 5)
    out: dict[str, Any] = {"run": run}

    def timed(name: str, body: Callable[[], dict[str, Any]]) -> None:
        began = time.monotonic()
        out[name] = body()
        _log(f"run {run}: {name} done in {time.monotonic() - began:.1f} s: {out[name]}")

    def bursts(session: Session, latency: bool = False) -> dict[str, Any]:
        figures: dict[str, Any] = {"startup_s": round(session.startup, 3) if session.startup else None,
                                   "warmup": session.warmup()}
        if latency:
            figures["latency"] = [session.latency(rate, cfg.latency_seconds) for rate in cfg.rates]
        figures["burst"] = session.burst(cfg.burst)
        figures["peak_rss_mb"] = session.peak_rss_mb()
        return figures

    def target(kind: str, s: Any, qos: int, **kw: Any) -> Callable[[], dict[str, Any]]:
        def body() -> dict[str, Any]:
            latency = kw.pop("latency", False)
            with bench.session(s, kind, qos=qos, **kw) as session:  # type: ignore[arg-type]
                figures = bursts(session, latency)
            figures["stop_s"] = bench.last_stop_s
            return figures
        return body

    def startup_only(fmt: str, qos: int) -> Callable[[], dict[str, Any]]:
        def body() -> dict[str, Any]:
            with bench.session(site, "runtime", qos=qos, fmt=fmt) as session:  # type: ignore[arg-type]
                figures: dict[str, Any] = {"startup_s": round(session.startup or 0.0, 3),
                                           "peak_rss_mb": session.peak_rss_mb()}
            figures["stop_s"] = bench.last_stop_s
            return figures
        return body

    timed("relay_qos0", target("relay", site, 0))
    timed("runtime_qos0", target("runtime", site, 0))
    timed("runtime_qos0_privacy", target("runtime", site, 0, privacy=True))
    timed("relay_qos1", target("relay", site, 1, latency=True))
    timed("runtime_qos1", target("runtime", site, 1, latency=True))
    timed("runtime_qos0_grouped", target("runtime", grouped, 0))
    timed("runtime_yaml", startup_only("yaml", 1))
    # Start-up is one sample per session and this machine's speed drifts from second to second: two more
    # sessions of the JSON settings (as in runtime_qos0) give the figure three samples per run.
    for extra in (1, 2):
        timed(f"runtime_json_{extra}", startup_only("json", 0))
    return out


def _get(run: dict[str, Any], path: str) -> Any:
    node: Any = run
    for part in path.split("."):
        if node is None:
            return None
        node = node[int(part)] if isinstance(node, list) else node.get(part)
    return node


def summary(runs: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Rows of the figures table: median/min/max over runs, ratios per run, targets."""
    rows: list[dict[str, Any]] = []

    def row(figure: str, runtime: str | None, relay: str | None = None, *, target: str = "",
            check: Callable[[float, float | None], bool] | None = None, digits: int = 1, ratio: bool = True) -> None:
        # `a|b|c`: every run's samples of the same figure from several sessions (no ratio is taken of those).
        rt = [_get(r, path) for r in runs for path in runtime.split("|")] if runtime else []
        rl = [_get(r, relay) for r in runs] if relay else []
        entry: dict[str, Any] = {"figure": figure, "runtime": summarize(rt), "relay": summarize(rl), "digits": digits,
                                 "target": target}
        if ratio and rt and rl:
            entry["ratio"] = summarize([a / b for a, b in zip(rt, rl, strict=True)
                                        if a is not None and b not in (None, 0)])
        if check is not None and entry["runtime"]:
            ratio_median = entry.get("ratio", {}) or {}
            entry["met"] = "yes" if check(entry["runtime"]["median"], ratio_median.get("median")) else "no"
        rows.append(entry)

    def ratio_at_least(x: float) -> Callable[[float, float | None], bool]:
        return lambda _v, r: r is not None and r >= x

    row("QoS 0 ingest, msg/s", "runtime_qos0.burst.throughput", "relay_qos0.burst.throughput",
        target=f">= {TARGETS['qos0']}x relay", check=ratio_at_least(TARGETS["qos0"]), digits=0)
    row("QoS 0 lost final-state topics", "runtime_qos0.burst.lost_final_state", "relay_qos0.burst.lost_final_state",
        target="0", check=lambda v, _r: v == 0, digits=0, ratio=False)
    row("QoS 1 ingest, msg/s", "runtime_qos1.burst.throughput", "relay_qos1.burst.throughput",
        target=f">= {TARGETS['qos1']}x relay", check=ratio_at_least(TARGETS["qos1"]), digits=0)
    row("QoS 1 lost final-state topics", "runtime_qos1.burst.lost_final_state", "relay_qos1.burst.lost_final_state",
        target="0 (runtime)", check=lambda v, _r: v == 0, digits=0, ratio=False)
    row("publishes per input message, QoS 0", "runtime_qos0.burst.published", "relay_qos0.burst.published",
        digits=2)
    row("CPU µs/msg, QoS 0, privacy off", "runtime_qos0.burst.cpu_us_per_msg", "relay_qos0.burst.cpu_us_per_msg")
    row("CPU µs/msg, QoS 0, privacy on", "runtime_qos0_privacy.burst.cpu_us_per_msg",
        "relay_qos0.burst.cpu_us_per_msg", target=f"<= {TARGETS['cpu']:.0f}",
        check=lambda v, _r: v <= TARGETS["cpu"])
    row("QoS 0 ingest, privacy on, msg/s", "runtime_qos0_privacy.burst.throughput", "relay_qos0.burst.throughput",
        digits=0)
    row("CPU µs/msg, QoS 1", "runtime_qos1.burst.cpu_us_per_msg", "relay_qos1.burst.cpu_us_per_msg")
    for i, rate in enumerate(cfg.rates):
        for q in ("p50", "p99"):
            target = f"< {TARGETS['p99_5k']:.0f} ms" if (rate == 5000 and q == "p99") else ""
            check = (lambda v, _r: v < TARGETS["p99_5k"]) if target else None
            row(f"latency {q} at {rate:,}/s (QoS 1), ms", f"runtime_qos1.latency.{i}.{q}_ms",
                f"relay_qos1.latency.{i}.{q}_ms", target=target, check=check, digits=2)
    row(f"peak RSS, {cfg.devices:,} modules of 1 device, MB", "runtime_qos0.peak_rss_mb", "relay_qos0.peak_rss_mb",
        target=f"< {TARGETS['rss']:.0f}", check=lambda v, _r: v < TARGETS["rss"])
    row(f"peak RSS, {cfg.devices // 5:,} modules of 5 devices, MB", "runtime_qos0_grouped.peak_rss_mb", None,
        target=f"< {TARGETS['rss']:.0f}", check=lambda v, _r: v < TARGETS["rss"])
    row(f"QoS 0 ingest, {cfg.devices // 5:,} modules of 5 devices, msg/s", "runtime_qos0_grouped.burst.throughput",
        "relay_qos0.burst.throughput", digits=0)
    row(f"start-up, {cfg.devices:,} modules, JSON, s (3 sessions per run)",
        "runtime_qos0.startup_s|runtime_json_1.startup_s|runtime_json_2.startup_s", None,
        target=f"< {TARGETS['start_json']:.0f} s", check=lambda v, _r: v < TARGETS["start_json"], digits=2)
    row(f"start-up, {cfg.devices:,} modules, YAML, s", "runtime_yaml.startup_s", None,
        target=f"< {TARGETS['start_yaml']:.0f} s", check=lambda v, _r: v < TARGETS["start_yaml"], digits=2)
    row(f"shutdown after SIGTERM, {cfg.devices:,} modules, s", "runtime_qos0.stop_s", "relay_qos0.stop_s", digits=2,
        ratio=False)
    for entry in rows:
        if entry["figure"].startswith("publishes per input"):
            for side in ("runtime", "relay"):
                if entry[side]:
                    entry[side] = {k: (round(v / cfg.burst, 2) if k != "n" else v) for k, v in entry[side].items()}
    notes = [
        "Ingest: messages sent in one burst divided by the time from the first publish of the load until the "
        "subscriber holds the last value sent for every state topic (or, when some never arrive, until the last "
        "message arrived); lost final-state topics are those whose last value never arrived.",
        "Every value in the load is new (the worst case for change detection); each message changes one state "
        "key and the module's `devices` detail, so the runtime may publish up to 2 messages per input.",
        "One mosquitto per target process, shared by the load (Haltian topics), the target and the subscriber; "
        "the subscriber reads `placeos/#` at QoS 0; latency runs use QoS 1 end to end (the product default).",
        "CPU: utime+stime of the target process over the burst, divided by the messages sent.",
    ]
    return {"rows": rows, "notes": notes}


def source_commit() -> str:
    """The repository's HEAD commit and whether runtime/ or drivers/ have uncommitted changes (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "runtime", "drivers"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return head + (" (uncommitted changes)" if dirty else "")


def privacy_micro() -> str:
    """The output of benchmarks/privacy_cost.py (per-call cost of the privacy filter)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "privacy_cost.py"), "50000"],
                          capture_output=True, text=True, timeout=120, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else f"(privacy_cost.py failed: {proc.stderr[-300:]})"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small site, one run (about a minute)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--source", type=Path, default=None,
                        help="run the runtime from this source tree (e.g. a patched copy) instead of the installed one")
    parser.add_argument("--name", default=None, help="results file stem (default: bench-<date> or quick-<date>)")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    config = Config(devices=2_000, burst=40_000, latency_seconds=1.0, quiet=2.0, timeout=60.0) if args.quick \
        else Config()
    workdir = Path(tempfile.mkdtemp(prefix="placeos-bench-"))
    children = Children()
    env = None
    if args.source is not None:
        env = dict(os.environ, PYTHONPATH=str(args.source.resolve()))

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    began = time.monotonic()
    raw: list[dict[str, Any]] = []
    try:
        bench = Bench(config, workdir, children, env=env)
        for run in range(1, runs + 1):
            raw.append(one_run(bench, run))
    except (KeyboardInterrupt, BenchError) as exc:
        _log(f"stopped: {exc!r}")
        if not raw:
            return 1
    finally:
        children.close()
        shutil.rmtree(workdir, ignore_errors=True)
    command = "make bench" if not args.quick and runs == 3 else \
        "python -m benchmarks" + (" --quick" if args.quick else "") + (f" --runs {runs}" if args.runs else "")
    source = str(args.source) if args.source else f"installed tree at {source_commit()}"
    results: dict[str, Any] = {
        "command": command, "machine": report.machine(),
        "config": {"runs": len(raw), "devices": config.devices, "burst": config.burst, "rates": list(config.rates),
                   "latency_seconds": config.latency_seconds, "source": source},
        "elapsed_s": round(time.monotonic() - began, 1), "summary": summary(raw, config), "runs": raw,
        "privacy_micro": privacy_micro()}
    stem = args.name or f"{'quick' if args.quick else 'bench'}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, md_path = report.write(results, RESULTS, stem, latest=args.source is None and not args.quick)
    print(report.markdown(results))
    print("privacy filter micro-benchmark (benchmarks/privacy_cost.py):\n" + results["privacy_micro"])
    print(f"\n{results['elapsed_s']} s; written {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
