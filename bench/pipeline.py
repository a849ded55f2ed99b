#!/usr/bin/env python3
"""The big-trace path, stage by stage, as ratios against baselines measured in the same run.

    python bench/pipeline.py [--events 50000000] [--threads 56] [--model v8] [--keep]

1. ``replay synth pft`` writes a pft trace (``--threads`` threads, ``--events`` faults in
   all) as perf script text and ingests it - the real ingester.  The text is written once
   more to a file, so the ingest can be timed on its own against ``cat`` of that file
   (the read ceiling).
2. ``replay ingest`` of that text: MB/s and events/s, x ``cat``.
3. ``replay ops``: events/s, x a plain pyarrow read of the same events Parquet (every
   column the builder reads, a batch at a time: the read ceiling of the op builder).
4. ``replay run --model`` on the ops: ops/s, x a plain pyarrow read of the ops Parquet.

Every stage runs as a child process; its peak RSS is the child's own (wait4's rusage,
what RUSAGE_CHILDREN reports for one child).  Outputs go under bench/out/ (ignored by
git) and are removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))


def child(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """Run cmd; (seconds, its peak RSS in MB)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, ru = os.wait4(p.pid, 0)
    el = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}: {p.stderr.read().decode()}")
    return el, ru.ru_maxrss / 1024


READ = """
import sys, time, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1]); cols = sys.argv[2].split(",") if len(sys.argv) > 2 else None
n = sum(b.num_rows for b in f.iter_batches(batch_size=1 << 18, columns=cols))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000_000, help="faults in the trace (default 50 M)")
    ap.add_argument("--threads", type=int, default=56)
    ap.add_argument("--model", default="v8")
    ap.add_argument("--keep", action="store_true", help="keep bench/out/pipeline-ws")
    a = ap.parse_args()
    from replay.opstream import STEP_COLUMNS
    from replay.synth import pft

    py = sys.executable
    OUT.mkdir(parents=True, exist_ok=True)
    ws = OUT / "pipeline-ws"
    shutil.rmtree(ws, ignore_errors=True)
    pages = max(1, a.events // a.threads)
    text = OUT / "pipeline-pft.txt"
    maps_file = OUT / "pipeline-pft.maps"
    print(f"[1] synth: pft, {a.threads} threads x {pages:,} pages", flush=True)
    t = time.perf_counter()
    with open(text, "w") as f:
        _, maps = pft(a.threads, pages, out=f)
    maps_file.write_text(maps)
    t_synth = time.perf_counter() - t
    size = text.stat().st_size
    lines = a.threads * pages + 10

    print("[2] ingest", flush=True)
    t_cat, _ = child(["cat", str(text)])
    sample = ROOT / "sample_traces" / "pft-2t.txt.zst"  # compiles the scanners and the op builder once
    child([py, "-m", "replay", "ingest", str(sample), "-w", str(ws), "--name", "warm", "-O", "json"])
    t_ing, rss_ing = child([py, "-m", "replay", "ingest", str(text), "-w", str(ws), "--name", "big", "--maps",
                            str(maps_file), "-O", "json"])
    if not a.keep:
        text.unlink()
    events = ws / "events" / "trace_id=big" / "part-0.parquet"
    import pyarrow.parquet as pq

    n_events = pq.ParquetFile(events).metadata.num_rows

    print("[3] ops", flush=True)
    t_read_ev, _ = child([py, "-c", READ, str(events), ",".join(STEP_COLUMNS)])
    child([py, "-m", "replay", "ops", "warm", "-w", str(ws), "-f", "json"])  # compiles once
    t_ops, rss_ops = child([py, "-m", "replay", "ops", "big", "-w", str(ws), "-f", "json"])
    ops = ws / "ops" / "trace_id=big" / "part-0.parquet"
    n_ops = pq.ParquetFile(ops).metadata.num_rows

    print(f"[4] run --model {a.model}", flush=True)
    t_read_ops, _ = child([py, "-c", READ, str(ops)])
    t_run, rss_run = child([py, "-m", "replay", "run", "--model", a.model, "--trace", "big", "-w", str(ws),
                            "-f", "json"])
    if not a.keep:
        shutil.rmtree(ws, ignore_errors=True)

    mb = size / 1e6
    report = {"events": n_events, "ops": n_ops, "text_mb": round(mb), "synth_s": round(t_synth, 1),
              "stages": {"ingest": [t_ing, rss_ing], "ops": [t_ops, rss_ops], "run": [t_run, rss_run]}}
    (OUT / "pipeline.json").write_text(json.dumps(report, indent=2))
    print(f"\ninput: pft {a.threads} threads, {mb:,.0f} MB of perf script text, {lines:,} lines, {n_events:,} events, "
          f"{n_ops:,} ops ({os.uname().release}, {os.cpu_count()} CPUs); synth {t_synth:.0f} s")
    print(f"{'stage':34} {'seconds':>8} {'rate':>18} {'baseline (same run)':>34} {'x baseline':>10} {'peak RSS':>9}")
    rows = [("replay ingest", t_ing, f"{lines / t_ing / 1e6:.2f} M lines/s", "cat of the text", t_cat, rss_ing),
            ("replay ops", t_ops, f"{n_events / t_ops / 1e6:.2f} M events/s", "pyarrow read of the events",
             t_read_ev, rss_ops),
            (f"replay run --model {a.model}", t_run, f"{n_ops / t_run / 1e6:.2f} M ops/s", "pyarrow read of the ops",
             t_read_ops, rss_run)]
    for name, secs, rate, base, tb, rss in rows:
        print(f"{name:34} {secs:8.1f} {rate:>18} {base + f' {tb:.1f} s':>34} {tb / secs:9.2f}x {rss:7,.0f} MB")
    print(f"\nop building: {n_events / t_ops / 1e6:.2f} M events/s (target >= 2 M), "
          f"{(n_events / t_ops) / (lines / t_ing):.2f}x ingest's rate (target >= 1x); "
          f"peak RSS {rss_ops:,.0f} MB for {n_ops:,} ops (target <= 2,048 MB at 50 M)")


if __name__ == "__main__":
    main()
