#!/usr/bin/env python3
"""Ingest throughput and memory, as ratios against baselines measured in the same run.

1. Records a real workload (stress-ng's mmap stressor) with perf, unless a recording
   from an earlier run is still in bench/out/.
2. Times `perf script` printing it as text: the rate the ingester must beat, since a
   pipeline is only as fast as its slowest stage.
3. Times `replay ingest` of that text (a fresh process, compiled scanners cached).
4. Times the straightforward line-by-line parser (bench/baseline_parser.py) on a prefix
   of the same text.
5. Ingests a >= 1 GB input (the text repeated) and reports the peak RSS.

usage: python bench/ingest.py [--seconds 3] [--skip-1gb]
Needs perf, stress-ng and root (or perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
EVENTS = ["exceptions:page_fault_user", "exceptions:page_fault_kernel", "mmap_lock:*",
          *(f"syscalls:sys_{d}_{s}" for s in ("mmap", "munmap", "mprotect", "mremap", "brk", "madvise") for d in ("enter", "exit")),
          "mmap:exit_mmap"]
FIELDS = ["--ns", "-F", "comm,pid,tid,cpu,time,event,trace", "--show-lost-events"]


def run(cmd, **kw):
    t = time.perf_counter()
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}: {getattr(r, 'stderr', b'') or ''}")
    return time.perf_counter() - t


def run_rss(cmd) -> tuple[float, float]:
    """Run cmd; return (seconds, its own peak RSS in MB) via wait4's rusage."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    el = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}: {p.stderr.read().decode()}")
    return el, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3, help="stress-ng run time (3 s gives ~800 MB of text)")
    ap.add_argument("--baseline-mb", type=int, default=100, help="prefix the line-by-line baseline parses")
    ap.add_argument("--skip-1gb", action="store_true")
    a = ap.parse_args()
    for tool in ("perf", "stress-ng"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/ingest.py needs {tool} (Debian: apt-get install {'linux-perf' if tool == 'perf' else tool})")
    replay = shutil.which("replay") or sys.exit("install the project first: pip install -e .")
    OUT.mkdir(exist_ok=True)
    data = OUT / "stress-mmap.perf.data"
    if not data.exists():
        args = ["perf", "record", "-q", "-m", "16M", "-o", str(data)]
        for e in EVENTS:
            args += ["-e", e]
        print(f"recording stress-ng --mmap 2 for {a.seconds} s ...", flush=True)
        run(args + ["--", "stress-ng", "--mmap", "2", "--timeout", f"{a.seconds}s", "-q"], capture_output=True)

    text = OUT / "stress-mmap.txt"
    with open(text, "wb") as f:
        t_perf = run(["perf", "script", "-i", str(data), *FIELDS], stdout=f, stderr=subprocess.DEVNULL)
    size = text.stat().st_size
    if size < 200e6:
        print(f"warning: only {size / 1e6:.0f} MB of text; use --seconds to record more", file=sys.stderr)
    lines = sum(buf.count(b"\n") for buf in iter(lambda f=open(text, "rb"): f.read(1 << 24), b""))

    ws = Path(tempfile.mkdtemp(prefix="replay-bench-", dir=OUT))
    try:
        run([replay, "ingest", str(OUT / "stress-mmap.txt"), "-w", str(ws), "--name", "warm"],
            capture_output=True)  # compiles the scanners once, if not cached yet
        t_ing = run([replay, "ingest", str(text), "-w", str(ws), "--name", "bench", "-O", "json"], capture_output=True)

        prefix = OUT / "prefix.txt"
        with open(text, "rb") as src, open(prefix, "wb") as dst:
            chunk = src.read(a.baseline_mb << 20)
            dst.write(chunk[: chunk.rfind(b"\n") + 1])
        t_base = run([sys.executable, str(HERE / "baseline_parser.py"), str(prefix), str(OUT / "baseline.parquet")],
                     capture_output=True)
        base_mb = prefix.stat().st_size / 1e6
        t_pipe = run(f"perf script -i {data} {' '.join(FIELDS[:2])} '{FIELDS[2]}' {FIELDS[3]} 2>/dev/null | "
                     f"{replay} ingest - -w {ws} --name piped -O json > /dev/null", shell=True)

        rss = None
        if not a.skip_1gb:
            big = OUT / "1gb.txt"
            with open(big, "wb") as dst:
                while dst.tell() < 1 << 30:
                    with open(text, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 24)
            t_big, rss = run_rss([replay, "ingest", str(big), "-w", str(ws), "--name", "big", "-O", "json"])
            big_mb = big.stat().st_size / 1e6
            big.unlink()
    finally:
        shutil.rmtree(ws, ignore_errors=True)

    mb = size / 1e6
    r_perf, r_ing, r_base = mb / t_perf, mb / t_ing, base_mb / t_base
    print()
    print(f"input: {mb:,.0f} MB of perf script text, {lines:,} lines, from stress-ng --mmap 2 ({os.uname().release}, {os.cpu_count()} CPUs)")
    print(f"{'stage':44} {'MB/s':>8} {'lines/s':>12}")
    print(f"{'perf script (text producer)':44} {r_perf:8.1f} {lines / t_perf:12,.0f}")
    print(f"{'replay ingest (file, whole process)':44} {r_ing:8.1f} {lines / t_ing:12,.0f}")
    print(f"{'line-by-line Python baseline':44} {r_base:8.1f} {lines * base_mb / mb / t_base:12,.0f}")
    print(f"{'perf script | replay ingest - (pipeline)':44} {mb / t_pipe:8.1f} {lines / t_pipe:12,.0f}")
    print()
    print(f"ingest / perf script   = {r_ing / r_perf:5.2f}x   (target >= 1.5x)")
    print(f"ingest / baseline      = {r_ing / r_base:5.2f}x   (target >= 10x)")
    if rss is not None:
        print(f"peak RSS ingesting {big_mb:,.0f} MB = {rss:,.0f} MB   (target < 1536 MB; {big_mb / t_big:.0f} MB/s)")


if __name__ == "__main__":
    main()
