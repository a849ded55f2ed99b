#!/usr/bin/env python3
"""Query-library latency over a results dataset of >= 50 M rows, against a plain
COUNT(*) scan of the same data measured in the same run.

The dataset is synthetic (50 M ops, built directly rather than replayed): ten
runs of 5 M ops each, with the results schema and plausible distributions (faults with
~1 % fallbacks, writers, lock waits, 56 CPUs), plus their runs, lock_stats and
line_stats rows, and a 5 M-op ops dataset for observed_fallbacks.  Every query runs
with its default parameters, i.e. over every run.

usage: python bench/queries.py [--rows-per-run 5000000] [--runs 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from replay.queries import catalog, close, connect, run_query  # noqa: E402


def make(ws: Path, runs: int, n: int) -> int:
    rng = np.random.default_rng(1)
    total = 0
    for k in range(runs):
        rid = f"bench{k:02d}"
        start = np.cumsum(rng.exponential(150.0, n))
        dur = rng.lognormal(7.0, 0.6, n)
        kind = np.where(rng.random(n) < 0.98, "fault", np.where(rng.random(n) < 0.5, "mprotect", "munmap"))
        fb = (kind == "fault") & (rng.random(n) < 0.01)
        df = pl.DataFrame({
            "op_id": np.arange(n, dtype=np.int64), "mm": "pid:1", "tid": rng.integers(1, 57, n).astype(np.int32),
            "kind": kind, "vma_id": rng.integers(1, 40, n), "sim_cpu": rng.integers(0, 56, n).astype(np.int32),
            "start_ns": start, "end_ns": start + dur, "lock_wait_ns": np.where(fb, dur * 0.8, 0.0),
            "cache_ns": dur * 0.2, "line_transfers": rng.integers(0, 6, n), "outcome": np.where(fb, "abort", "success"),
            "fallback": fb, "attempts": np.ones(n, np.int32), "model": ["v8", "mainline", "pervma", "mmap_lock", "inline-rwsem"][k % 5],
            "machine": "broadwell-2s", "cpus": [1, 14, 28, 56][k % 4],
        })
        for ds, part in (("results", df),
                         ("lock_stats", pl.DataFrame({"mm": ["pid:1"] * 40, "lock_class": ["vma_lock"] * 40,
                                                      "lock": [f"vma:{i}" for i in range(40)],
                                                      "acquisitions": rng.integers(1, 10**6, 40), "contentions": rng.integers(0, 10**4, 40),
                                                      "wait_total_ns": rng.random(40) * 1e9, "wait_max_ns": rng.random(40) * 1e6,
                                                      "wait_min_ns": rng.random(40) * 1e2, "hold_total_ns": rng.random(40) * 1e9,
                                                      "hold_max_ns": rng.random(40) * 1e6, "hold_min_ns": rng.random(40) * 1e2,
                                                      "trylock_failures": rng.integers(0, 100, 40), "con_bounces": rng.integers(0, 10**5, 40)})),
                         ("line_stats", pl.DataFrame({"mm": ["pid:1"] * 200, "line": rng.integers(0, 2**40, 200).astype(np.uint64),
                                                      "fields": ["vm_area_struct.vm_refcnt"] * 200,
                                                      "transfers": rng.integers(0, 10**6, 200), "invalidations": rng.integers(0, 10**6, 200)})),
                         ("runs", pl.DataFrame([{"run_id": rid, "trace_id": "bench", "model": df["model"][0],
                                                  "machine": "broadwell-2s", "cpus": df["cpus"][0], "seed": 0}]).drop("run_id"))):
            d = ws / ds / f"run_id={rid}"
            d.mkdir(parents=True, exist_ok=True)
            part.write_parquet(d / "part-0.parquet")
        total += n
        print(f"  wrote run {k + 1}/{runs} ({total:,} rows)", flush=True)
    make_ops(ws, min(n, 5_000_000))
    return total


def make_ops(ws: Path, m: int) -> None:
    """A synthetic trace's ops for observed_fallbacks, committed as the workspace commits
    a trace's ops (its traces row, then vmas and ops of one build), so readers see it."""
    from replay.workspace import Workspace

    rng = np.random.default_rng(2)
    ops = pl.DataFrame({
        "op_id": np.arange(m), "tid": rng.integers(1, 57, m).astype(np.int32), "kind": "fault",
        "kernel": rng.random(m) < 0.01, "vma_id": rng.integers(1, 40, m), "start_ns": np.cumsum(rng.exponential(150.0, m)).astype(np.int64),
        "observed_fallback": rng.random(m) < 0.01, "observed_anon_prepare": rng.random(m) < 0.001,
    })
    vmas = pl.DataFrame({"vma_id": np.arange(1, 40), "start": np.arange(1, 40) * 4096, "end": np.arange(2, 41) * 4096})
    d = ws / "traces" / "trace_id=bench"
    d.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"source": ["bench/queries.py"], "sha256": ["bench"]}).write_parquet(d / "part-0.parquet")
    Workspace(ws).write_ops("bench", "bench", ops.to_arrow(), vmas.to_arrow())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows-per-run", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--keep", type=Path, help="build the dataset here and keep it")
    a = ap.parse_args()
    ws = a.keep or Path(tempfile.mkdtemp(prefix="replay-bench-q-"))
    try:
        if not (ws / "results").exists():
            print(f"building {a.runs * a.rows_per_run:,} result rows in {ws} ...", flush=True)
            rows = make(ws, a.runs, a.rows_per_run)
        else:
            rows = pl.scan_parquet(ws / "results" / "*" / "*.parquet").select(pl.len()).collect().item()
            from replay.workspace import Workspace

            if not Workspace(ws).committed_files("ops"):  # a dataset from before ops needed a commit
                make_ops(ws, 5_000_000)
        con = connect(ws)
        base = min(timed(lambda: con.execute("SELECT count(*) FROM results").fetchall()) for _ in range(3))
        scan = min(timed(lambda: con.execute("SELECT sum(end_ns - start_ns) FROM results").fetchall()) for _ in range(3))
        close(con)
        print(f"\n{rows:,} result rows; COUNT(*) {base:.3f} s; a full-column scan (sum of durations) {scan:.3f} s")
        print(f"{'query':22} {'seconds':>8} {'x COUNT(*)':>11} {'x scan':>8} {'rows out':>10}   target <= 2 s")
        worst = 0.0
        for name, q in catalog().items():
            if "footprint" in q.needs:  # made by replay footprint, not by this synthetic workspace
                continue
            t = time.perf_counter()
            df = run_query(ws, name, {})
            el = time.perf_counter() - t
            worst = max(worst, el)
            print(f"{name:22} {el:8.3f} {el / base:11.1f} {el / scan:8.2f} {df.height:10,}   {'ok' if el <= 2 else 'SLOW'}")
        print(f"\nslowest query: {worst:.3f} s")
    finally:
        if not a.keep:
            shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
