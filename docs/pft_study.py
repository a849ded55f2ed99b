"""Regenerate README's *What the model says about pft on the 56-CPU Broadwell* table and
the tables of docs/fault-path-breakdown.md from one pft sweep, with the commands both
documents quote:

    replay synth pft --threads N --pages 1000 --name pft-tN      (N in THREADS)
    replay sweep --traces pft-t1,...,pft-t56 --models mmap_lock,pervma,v8,mainline \
        --cpus 56 --iterations 3

Run from the repository root: ``python docs/pft_study.py [--workspace DIR]`` (default a
fresh temporary workspace; the sweep is resumable, so a given workspace is reused).  It
rewrites the table between README's ``<!-- pft-study -->`` markers and everything in
docs/fault-path-breakdown.md between its ``<!-- tables -->`` markers; the prose around
them is written by hand from what the tables say.  About 1 CPU-minute per model on a
warm numba cache.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREADS = (1, 4, 7, 12, 21, 28, 56)
MODELS = ("mmap_lock", "pervma", "v8", "mainline")
CPUS = 56
ITERATIONS = 3
PAGES = 1000
PAIRS = (("v8", "pervma"), ("pervma", "mmap_lock"))  # the rows of % change under the table
BREAKDOWN_COLS = ("mean_ns", "lock_wait_ns", "sleep_ns", "cache_ns", "service_ns", "resource_ns",
                  "resource_wait_ns")


def _replay(*args: str, env: dict) -> str:
    p = subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"pft_study: replay {' '.join(args)} failed: {p.stderr.strip().splitlines()[-1:]}")
    return p.stdout


def _replace(text: str, marker: str, body: str, what: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n.*?<!-- /{marker} -->", text, re.S)
    if not m:
        raise SystemExit(f"pft_study: no <!-- {marker} --> ... <!-- /{marker} --> in {what}")
    return text[:m.start()] + f"<!-- {marker} -->\n{body}<!-- /{marker} -->" + text[m.end():]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", help="workspace (default: a new temporary one)")
    a = ap.parse_args(argv)
    ws = a.workspace or tempfile.mkdtemp(prefix="pft-study-")
    env = dict(os.environ, REPLAY_WORKSPACE=ws)
    sys.path.insert(0, str(ROOT))
    import replay
    from replay.compare import stat
    from replay.engine import REFERENCE_VERSION

    names = [f"pft-t{n}" for n in THREADS]
    have = set(replay.traces(ws)["trace_id"].to_list()) if Path(ws, "traces").exists() else set()
    for n, name in zip(THREADS, names):
        if name not in have:
            _replay("synth", "pft", "--threads", str(n), "--pages", str(PAGES), "--name", name, env=env)
    import json

    import polars as pl

    out = _replay("sweep", "--traces", ",".join(names), "--models", ",".join(MODELS), "--cpus", str(CPUS),
                  "--iterations", str(ITERATIONS), "--format", "json", env=env)
    ids = [r["run_id"] for r in json.loads(out)["runs"]]  # this sweep's runs: this semantics
    runs = (replay.query("throughput", workspace=ws).filter(pl.col("run_id").is_in(ids))
            .select("run_id", "trace_id", "model", pl.col("faults_per_sec").alias("fps"),
                    pl.col("faults_per_cpu_sec").alias("fpc")))
    bd = replay.query("breakdown", workspace=ws).filter(pl.col("kind") == "fault")
    bd = bd.join(runs.select("run_id", "trace_id", "model"), on="run_id")

    fps = {}
    for (trace, model), g in runs.group_by(["trace_id", "model"]):
        if g.height != ITERATIONS:
            raise SystemExit(f"pft_study: {trace} under {model}: {g.height} runs, not {ITERATIONS}")
        fps[trace, model] = (stat(g["fps"].to_list(), "Hmean").mean, stat(g["fpc"].to_list(), "Hmean").mean)

    head = "| model | " + " | ".join(("1 thread",) + tuple(str(n) for n in THREADS[1:])) + " |\n"
    rule = "|---" * (len(THREADS) + 1) + "|\n"
    body = head + rule
    for m in MODELS:
        body += f"| {m} | " + " | ".join(f"{fps[t, m][0]:,.0f}" for t in names) + " |\n"
    for x, y in PAIRS:
        body += f"| {x} vs {y} | " + " | ".join(f"{100 * (fps[t, x][0] / fps[t, y][0] - 1):+.1f} %"
                                             for t in names) + " |\n"
    body += f"\n(Semantics {REFERENCE_VERSION}, `python docs/pft_study.py`.)\n"
    readme = ROOT / "README.md"
    readme.write_text(_replace(readme.read_text(), "pft-study", body, "README.md"))

    doc = ""
    for m in MODELS:
        doc += (f"### {m}\n\n| threads | fault (ns) | lock wait | of which asleep | lock path's accesses | "
                "own work | shared resources | of which waiting | faults/cpu |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        for n, t in zip(THREADS, names):
            g = bd.filter((bd["trace_id"] == t) & (bd["model"] == m))
            vals = [g[c].mean() for c in BREAKDOWN_COLS]
            doc += f"| {n} | " + " | ".join(f"{v:,.0f}" for v in vals) + f" | {fps[t, m][1]:,.0f} |\n"
        doc += "\n"
    doc += f"(Semantics {REFERENCE_VERSION}, `python docs/pft_study.py`: faults only, the mean over the " \
           f"{ITERATIONS} iterations.)\n"
    bdoc = ROOT / "docs" / "fault-path-breakdown.md"
    bdoc.write_text(_replace(bdoc.read_text(), "tables", doc, "docs/fault-path-breakdown.md"))
    print(f"pft_study: README.md and docs/fault-path-breakdown.md at semantics {REFERENCE_VERSION} ({ws})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
