"""Sweep benchmark: how a sweep's wall time scales with workers, as ratios measured in
this run.

    python bench/sweep.py [--faults-per-run 840000] [--threads 56] [--models mmap_lock,pervma,v8]
                          [--cpus 1,2,4,8,14,28,42,56] [--skip-dask] [--skip-single]

1. A pft-style trace (``replay synth pft``: perf script text through the real ingester
   and op builder) of ``--faults-per-run`` faults; its ops built once.
2. The sweep ``--models`` x ``--cpus`` (3 x 8 = 24 runs, over 20 M faults replayed in
   all by default), each time as ``replay sweep`` in a fresh
   copy of the workspace (so no run is skipped), timed from the outside:
   with 1 local worker (the baseline), 2 local workers, and a Dask LocalCluster of 2
   workers.  Scaling = baseline wall / wall.
3. The same runs one at a time as ``replay run`` commands: the sum of their wall times,
   against the 1-worker sweep's (what a sweep saves by starting once).

The numba cache is warmed first (compiling is once per install, not per sweep).
Outputs go under bench/out/ (ignored by git).  Timings are this machine's.
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


def replay_cmd(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    p = subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        sys.exit(f"replay {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def timed_sweep(base: Path, name: str, sweep: list[str], extra: list[str]) -> tuple[float, dict]:
    ws = OUT / f"ws-{name}"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base, ws)
    t = time.perf_counter()
    p = replay_cmd(*sweep, *extra, "-w", str(ws), "-f", "json")
    wall = time.perf_counter() - t
    rep = json.loads(p.stdout)
    assert rep["replayed"] == len(rep["runs"]) and not rep["failed"], rep
    shutil.rmtree(ws)  # a few hundred MB of results each
    return wall, rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults-per-run", type=int, default=840_000)
    ap.add_argument("--threads", type=int, default=56)
    ap.add_argument("--models", default="mmap_lock,pervma,v8")
    ap.add_argument("--cpus", default="1,2,4,8,14,28,42,56")
    ap.add_argument("--machine", default="broadwell-2s")
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--skip-single", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    base = OUT / "ws-sweep-base"
    pages = a.faults_per_run // a.threads
    name = f"bench-sweep-pft-t{a.threads}-p{pages}"
    if not (base / "ops" / f"trace_id={name}").exists():
        print(f"[1] trace: pft, {a.threads} threads x {pages} pages", flush=True)
        replay_cmd("synth", "pft", "--threads", str(a.threads), "--pages", str(pages), "--name", name, "-w", str(base))
        replay_cmd("ops", name, "-w", str(base), "-f", "json")
    from replay.engine.warm import compile_now, is_warm

    if not is_warm():
        compile_now()
    models, counts = a.models.split(","), a.cpus.split(",")
    sweep = ["sweep", "--trace", name, "--models", a.models, "--cpus", a.cpus, "--machine", a.machine]
    print(f"[2] sweep: {len(models)} models x {len(counts)} CPU counts on {a.machine}, {os.cpu_count()} cores here",
          flush=True)
    rows = {}
    w1, rep = timed_sweep(base, "1", sweep, ["-j", "1"])
    faults = sum(r["faults"] for r in rep["runs"])
    engine_s = sum(r["wall_s"] for r in rep["runs"])
    rows["local, 1 worker (baseline)"] = w1
    rows["local, 2 workers"] = timed_sweep(base, "2", sweep, ["-j", "2"])[0]
    if not a.skip_dask:
        rows["dask LocalCluster, 2 workers"] = timed_sweep(base, "dask", sweep, ["--executor", "dask", "-j", "2"])[0]
    single = None
    if not a.skip_single:
        print(f"[3] the same {len(rep['runs'])} runs as single replay run commands", flush=True)
        ws = OUT / "ws-single"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(base, ws)
        single = 0.0
        for r in rep["runs"]:
            t = time.perf_counter()
            replay_cmd("run", "--trace", name, "--model", r["model"], "--cpus", str(r["cpus"]), "--machine", a.machine,
                       "-w", str(ws), "-f", "json")
            single += time.perf_counter() - t
        shutil.rmtree(ws)
    print()
    print(f"sweep: {len(rep['runs'])} runs, {faults:,} faults replayed in all ({faults / len(rep['runs']):,.0f} a run); "
          f"sum of the runs' own replay time {engine_s:.1f} s")
    print(f"{'executor':<34}{'wall s':>8}{'faults/s':>14}{'scaling':>10}")
    for k, v in rows.items():
        print(f"{k:<34}{v:>8.1f}{faults / v:>14,.0f}{w1 / v:>9.2f}x")
    print()
    print(f"scaling, 2 local workers      = {w1 / rows['local, 2 workers']:.2f}x   (target >= 1.7x on 2 cores)")
    if "dask LocalCluster, 2 workers" in rows:
        print(f"scaling, dask 2 workers       = {w1 / rows['dask LocalCluster, 2 workers']:.2f}x   (target >= 1.6x)")
    if single is not None:
        print(f"sum of {len(rep['runs'])} single `replay run`s = {single:.1f} s; 1-worker sweep = {w1:.1f} s "
              f"({single / w1:.2f}x), 2-worker sweep = {rows['local, 2 workers']:.1f} s "
              f"({single / rows['local, 2 workers']:.2f}x)")
    (OUT / "sweep.json").write_text(json.dumps({"faults": faults, "runs": len(rep["runs"]), "wall_s": rows,
                                                "single_runs_s": single, "runs_replay_s": engine_s}, indent=2))


if __name__ == "__main__":
    main()
