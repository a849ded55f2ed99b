"""Engine benchmark: simulated faults per second, as ratios measured in this run.

    python bench/engine.py [--faults 5000000] [--threads 56] [--machine broadwell-2s]
                           [--python-ops 3000] [--memory-ops 50000000] [--skip-memory] [--skip-startup]

1. A pft-style trace (mmtests pft, threads mode: one region, every thread faulting its
   slice page by page) of ``--faults`` faults from ``--threads`` threads, made with
   ``replay synth pft`` - perf script text through the real ingester and op builder.
2. Each lock model replays it on a 56-CPU profile (the engine as numba compiles it): end-to-end
   wall time (reading the ops, simulating, writing the results Parquet) and the
   simulation loop alone, as simulated faults per second of this machine's one core.
3. Baseline: the first ``--python-ops`` ops of the same trace through the same engine
   source run as plain Python (NUMBA_DISABLE_JIT=1, in a child process) and compiled;
   the ratio compares rates on identical input (and the full-trace rate against the
   plain-Python one), and the results must be identical.
4. Memory: the trace repeated as pft's iterations up to ``--memory-ops`` ops, replayed
   in a child process with results streamed to Parquet; its peak RSS.
5. Startup: ``replay run`` on the bundled sample in a fresh workspace with an empty numba
   cache (a fresh install), then again: seconds until the summary is printed.  (Later
   runs' start-up alone, by phase and against a baseline: ``bench/startup.py``.)

Outputs go under bench/out/ (ignored by git).  Deterministic inputs; timings are this
machine's (see `lscpu`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _host import host_cpu  # bench/_host.py: run as python bench/NAME.py, bench/ is on sys.path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from replay.cli import main as cli  # noqa: E402
from replay.engine import load, replay  # noqa: E402
from replay.engine.warm import compile_now  # noqa: E402
from replay.machines import load_machine  # noqa: E402
from replay.models import registry  # noqa: E402
from replay.workspace import read_ops, scan_ops  # noqa: E402


def make_trace(ws: Path, threads: int, faults: int) -> tuple[str, Path]:
    name = f"bench-pft-t{threads}-{faults}"
    ops = ws / "ops" / f"trace_id={name}" / "part-0.parquet"
    if not ops.exists():
        t = time.perf_counter()
        rc = cli(["synth", "pft", "--threads", str(threads), "--pages", str(faults // threads), "--name", name,
                  "-w", str(ws)])
        assert rc == 0, "synth failed"
        rc = cli(["ops", name, "-w", str(ws), "-f", "json"])
        assert rc == 0, "ops failed"
        print(f"  made {name} in {time.perf_counter() - t:.1f} s", flush=True)
    return name, ops


def timed_replay(lf, model, machine, cpus, results):
    t = time.perf_counter()
    r = replay(lf, model, machine, cpus, results_path=str(results))
    wall = time.perf_counter() - t
    return r, wall, dict(load.LAST_TIMINGS)


def repeat_ops(src: Path, dest: Path, target_ops: int) -> int:
    """The trace as k iterations of itself: op ids, seqs and times shifted, the VMAs a
    copy creates renamed, so it reads like pft run with more iterations."""
    base = read_ops(src)
    n = base.height
    k = -(-target_ops // n)
    span = int(base["end_ns"].max() or 0) - int(base["start_ns"].min()) + 1_000_000
    created = base.select(pl.col("vmas_created").explode().drop_nulls()).to_series()
    vmax = int(base.select(pl.max_horizontal(pl.col("vma_id").max(), pl.col("vma_ids").list.max().max())).item()) + 1
    is_new = lambda e: e.is_in(created.implode())  # noqa: E731

    def shift(e, off):
        return pl.when(is_new(e)).then(e + off).otherwise(e)

    parts = []
    for i in range(k):
        off = i * vmax
        parts.append(base.lazy().with_columns(
            pl.col("op_id") + i * n, pl.col("seq") + i * (int(base["seq"].max()) + 1),
            pl.col("start_ns") + i * span, pl.col("end_ns") + i * span,
            shift(pl.col("vma_id"), off),
            *(pl.col(c).list.eval(shift(pl.element(), off)) for c in ("vma_ids", "vmas_created", "vmas_freed")),
            pl.col("vmas_successor").list.eval(pl.when(pl.element() >= 0).then(shift(pl.element(), off))
                                               .otherwise(pl.element()))))
    pl.concat(parts).head(target_ops).sink_parquet(dest)
    return min(k * n, target_ops)


PLAIN = """
import json, sys, time
from replay.engine import load, replay
from replay.machines import load_machine
from replay.models import get_model
t = time.perf_counter()
r = replay(sys.argv[1], get_model("v8"), load_machine(sys.argv[2]), int(sys.argv[3]), results_path=sys.argv[4])
print(json.dumps({"wall_s": time.perf_counter() - t, "run_s": load.LAST_TIMINGS["run_s"], "faults": r.totals.faults}))
"""

CHILD = """
import json, resource, sys, time
import polars as pl
from replay.engine import replay
from replay.machines import load_machine
from replay.models import get_model
t = time.perf_counter()
r = replay(sys.argv[1], get_model("v8"), load_machine(sys.argv[2]), 56, results_path=sys.argv[3])
print(json.dumps({"wall_s": time.perf_counter() - t, "ops": r.totals.ops,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=5_000_000)
    ap.add_argument("--threads", type=int, default=56)
    ap.add_argument("--machine", default="broadwell-2s")
    ap.add_argument("--python-ops", type=int, default=3_000)
    ap.add_argument("--memory-ops", type=int, default=50_000_000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-startup", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ws = OUT / "ws"
    machine = load_machine(a.machine)
    cpus = min(56, machine.ncpus)
    report: dict = {"machine": a.machine, "cpus": cpus, "host_cpu": host_cpu()}

    print(f"[1] trace: pft, {a.threads} threads, {a.faults:,} faults", flush=True)
    name, ops_path = make_trace(ws, a.threads, a.faults)
    lf = str(ops_path)  # replay() reads an ops file in column batches
    nfaults = scan_ops(ops_path).filter(pl.col("kind") == "fault").select(pl.len()).collect().item()
    compile_now()  # numba compiles once per install; not part of a replay's time

    print(f"[2] every model, {cpus} simulated CPUs of {a.machine}", flush=True)
    rows = []
    for mname, model in sorted(registry().items()):
        r, wall, tm = timed_replay(lf, model, machine, cpus, OUT / "results.parquet")
        rows.append({"model": mname, "faults": nfaults, "wall_s": round(wall, 2),
                     "faults_per_s": round(nfaults / wall), "sim_loop_s": round(tm["run_s"], 2),
                     "sim_faults_per_s": round(nfaults / tm["run_s"]), "simulated_faults_per_s": r.summary()["faults_per_sec"]})
        print("   ", rows[-1], flush=True)
    report["models"] = rows

    print(f"[3] baseline: the first {a.python_ops:,} ops through the same source as plain Python", flush=True)
    head_path = OUT / "head-ops.parquet"
    scan_ops(ops_path).head(a.python_ops).sink_parquet(head_path)
    p = subprocess.run([sys.executable, "-c", PLAIN, str(head_path), a.machine, str(cpus), str(OUT / "py.parquet")],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_DISABLE_JIT": "1"})
    if p.returncode:
        raise SystemExit(f"plain-Python child failed ({p.returncode}): {p.stderr or p.stdout}")
    py = json.loads(p.stdout.strip().splitlines()[-1])
    v8 = registry()["v8"]
    cr, cwall, ctm = timed_replay(str(head_path), v8, machine, cpus, OUT / "cmp.parquet")
    same = pl.read_parquet(OUT / "py.parquet").drop("run_id").equals(pl.read_parquet(OUT / "cmp.parquet").drop("run_id"))
    py_rate, py_sim_rate = py["faults"] / py["wall_s"], py["faults"] / py["run_s"]
    full = next(x for x in rows if x["model"] == "v8")
    report["baseline"] = {"ops": cr.totals.ops, "python_faults_per_s": round(py_rate),
                          "compiled_faults_per_s_same_ops": round(cr.totals.faults / cwall),
                          "ratio_same_ops": round(cr.totals.faults / cwall / py_rate, 1),
                          "ratio_same_ops_simulation": round(cr.totals.faults / ctm["run_s"] / py_sim_rate, 1),
                          "ratio_full_trace": round(full["faults_per_s"] / py_rate, 1),
                          "identical_results": same}
    print("   ", report["baseline"], flush=True)

    if not a.skip_memory:
        print(f"[4] memory: {a.memory_ops:,} ops (the trace repeated), replayed in a child process", flush=True)
        big = OUT / f"ops-{a.memory_ops}.parquet"
        if not big.exists():
            repeat_ops(ops_path, big, a.memory_ops)
        p = subprocess.run([sys.executable, "-c", CHILD, str(big), a.machine, str(OUT / "big-results.parquet")],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode:
            raise SystemExit(f"memory child failed ({p.returncode}): {p.stderr or p.stdout}")
        m = json.loads(p.stdout.strip().splitlines()[-1])
        report["memory"] = {"ops": m["ops"], "peak_rss_mb": round(m["maxrss_mb"]), "wall_s": round(m["wall_s"], 1),
                            "ops_per_s": round(m["ops"] / m["wall_s"])}
        print("   ", report["memory"], flush=True)
        (OUT / "big-results.parquet").unlink(missing_ok=True)

    if not a.skip_startup:
        print("[5] startup: replay run --model v8 in a fresh workspace, empty numba cache, then again", flush=True)
        cache = tempfile.mkdtemp(prefix="numba-cache-", dir=OUT)
        fresh = tempfile.mkdtemp(prefix="ws-", dir=OUT)
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for label in ("first", "second"):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "replay", "run", "--model", "v8", "-w", fresh, "-f", "json"],
                               capture_output=True, text=True, env=env, cwd=ROOT)
            total = time.perf_counter() - t
            s = json.loads(p.stdout)
            runs.append({"run": label, "summary_after_s": round(total, 1), "replay_s": s["wall_s"]})
            print("   ", runs[-1], flush=True)
        report["startup"] = runs
    (OUT / "engine.json").write_text(json.dumps(report, indent=2))
    v8r, b = next(x for x in rows if x["model"] == "v8"), report["baseline"]
    print(f"\nv8, {cpus} simulated CPUs, {nfaults:,} faults on {report['host_cpu']}:")
    print(f"  simulation loop   {v8r['sim_faults_per_s'] / 1e6:5.2f} M faults/s per core   (target >= 2 M)")
    print(f"  end to end        {v8r['faults_per_s'] / 1e6:5.2f} M faults/s   (reading ops, simulating, writing results)")
    print(f"  compiled / plain Python (same source) on the same {b['ops']:,} ops: {b['ratio_same_ops_simulation']}x "
          f"simulating, {b['ratio_same_ops']}x end to end   (target >= 50x); identical results: {b['identical_results']}")
    print(f"  compiled on the full trace / plain Python = {b['ratio_full_trace']}x end to end")
    if "memory" in report:
        print(f"  {report['memory']['ops']:,} ops: peak RSS {report['memory']['peak_rss_mb']:,} MB   (target <= 2,048 MB)")
    if "startup" in report:
        f, s2 = report["startup"]
        print(f"  fresh install: the first run's summary after {f['summary_after_s']} s (target <= 12 s); "
              f"later runs after {s2['summary_after_s']} s (target <= 1.5 s)")
    print(f"written {OUT / 'engine.json'}")
    if "startup" in report:  # the fresh-install stand-ins are not needed afterwards
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)


if __name__ == "__main__":
    main()
