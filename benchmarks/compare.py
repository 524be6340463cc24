"""A/B: the runtime from two (or more) source trees, alternating sessions, same load; for trying a patch.

    python -m benchmarks.compare /work/main /tmp/patched [--rounds 3] [--qos 0] [--privacy] [--per-module 1]

Each round starts one runtime session per tree (fresh mosquitto each), warms up and sends one burst; prints
start-up, throughput, CPU per message and peak RSS, median per tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.procs import Children
from benchmarks.suite import Bench, Config


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-module", type=int, default=1)
    parser.add_argument("--burst", type=int, default=200_000)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--privacy", action="store_true")
    parser.add_argument("--latency", type=int, default=0, help="also a fixed-rate run at this rate (msg/s)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="placeos-compare-"))
    children = Children()
    figures: dict[str, list[dict[str, Any]]] = {str(s): [] for s in args.sources}
    try:
        for rnd in range(args.rounds):
            for source in args.sources:
                env = dict(os.environ, PYTHONPATH=str(source.resolve()))
                bench = Bench(Config(devices=args.devices, burst=args.burst), workdir, children, env=env)
                site = bench.site(args.devices, args.per_module)
                with bench.session(site, "runtime", qos=args.qos, privacy=args.privacy) as session:
                    session.warmup()
                    row: dict[str, Any] = {"startup_s": session.startup}
                    if args.latency:
                        lat = session.latency(args.latency, 3.0)
                        row |= {"p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms")}
                    burst = session.burst(args.burst)
                    row |= {"throughput": burst["throughput"], "cpu_us": burst["cpu_us_per_msg"],
                            "published": burst["published"], "lost": burst["lost_final_state"],
                            "rss_mb": session.peak_rss_mb()}
                row["stop_s"] = bench.last_stop_s
                figures[str(source)].append(row)
                print(f"round {rnd + 1} {source}: {row}", flush=True)
    finally:
        children.close()
        shutil.rmtree(workdir, ignore_errors=True)
    for source, rows in figures.items():
        keys = [k for k in rows[0] if all(r.get(k) is not None for r in rows)]
        medians = {k: round(statistics.median(float(r[k]) for r in rows), 3) for k in keys}
        print(f"median {source}: {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
