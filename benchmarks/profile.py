"""Where the runtime's time goes under the QoS 0 burst: py-spy samples of the runtime process, summarised.

    python -m benchmarks.profile [--devices 10000] [--burst 200000] [--per-module 1] [--qos 0] [--privacy]

Starts the same session as the suite (mosquitto, subscriber, `python -m runtime run`), warms up, then records
the runtime with `py-spy record --nonblocking` for the whole burst (py-spy must be installed in the venv; it is
a profiling tool only, never a dependency of the product). Writes the collapsed stacks and a markdown table
of the top functions by own time and by inclusive time to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.procs import Children
from benchmarks.suite import Bench, Config

RESULTS = Path(__file__).resolve().parent / "results"


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)` relative to the repo or site-packages."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def summarise(collapsed: Path, top: int = 30) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples, the top functions by own samples and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own.most_common(top), inclusive.most_common(top)


def table(total: int, rows: list[tuple[str, int]], title: str) -> str:
    """A markdown table of (function, samples) with percentages."""
    lines = [f"| {title} | samples | % |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {n} | {100 * n / total:.1f} |" for name, n in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-module", type=int, default=1)
    parser.add_argument("--burst", type=int, default=200_000)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--privacy", action="store_true")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--name", default="profile", help="file name stem under benchmarks/results/")
    parser.add_argument("--source", type=Path, default=None, help="run the runtime from this source tree")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    RESULTS.mkdir(exist_ok=True)
    collapsed = RESULTS / f"{args.name}.collapsed.txt"
    workdir = Path(tempfile.mkdtemp(prefix="placeos-profile-"))
    children = Children()
    try:
        env = dict(os.environ, PYTHONPATH=str(args.source.resolve())) if args.source else None
        bench = Bench(Config(devices=args.devices, burst=args.burst), workdir, children, env=env)
        site = bench.site(args.devices, args.per_module)
        with bench.session(site, "runtime", qos=args.qos, privacy=args.privacy) as session:
            session.warmup()
            recorder = children.spawn([spy, "record", "--pid", str(session.pid), "--rate", str(args.rate),
                                       "--nonblocking", "--format", "raw", "-o", str(collapsed)], name="py-spy",
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            burst = session.burst(args.burst)
            recorder.send_signal(signal.SIGINT)
            recorder.wait(30)
            children.stop(recorder.pid)
    finally:
        children.close()
        shutil.rmtree(workdir, ignore_errors=True)
    total, own, inclusive = summarise(collapsed)
    text = (f"# Runtime profile: {args.burst} message burst, {args.devices} devices ({args.per_module} per module), "
            f"QoS {args.qos}, privacy {'on' if args.privacy else 'off'}\n\n"
            f"Burst: {burst['throughput']} msg/s, {burst['cpu_us_per_msg']} µs CPU per message, "
            f"{burst['published']} publishes. py-spy {args.rate} Hz, {total} samples (idle included).\n\n"
            f"{table(total, own, 'own time (leaf function)')}\n\n{table(total, inclusive, 'inclusive time')}\n")
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
