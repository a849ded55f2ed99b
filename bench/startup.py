"""Start-up benchmark: what a command costs before it does its work, as ratios to a
baseline measured in the same run.

    python bench/startup.py [--rounds 7] [--against PYTHON] [--skip-breakdown] [--breakdown-runs 5]

Each command runs in a fresh process, in rounds (every command once per round, so a
load that comes and goes on a shared machine touches them all alike); for each, the
median and the least CPU time (user+sys, from the child's rusage) and wall time:

- baselines: ``python -c pass`` and ``python -c "import polars"`` (one of the
  libraries every simulating command needs);
- ``replay --help``, ``replay sql "SELECT 1"`` (commands that never simulate: they must
  not import numba or the engine - tests/test_startup.py checks what they import);
- ``replay run --model v8`` of the bundled sample (mprotect-race, 50 k ops) with a
  warm numba cache and its ops already built: a later run, what issue 9's 1.5 s
  target is about.  (A first warm-up run, untimed, ingests it and fills the cache.)

``--against PYTHON``: the same commands under another interpreter whose ``replay`` is
another checkout (e.g. a venv with the previous commit installed), in the same rounds,
with its own workspace: before/after on the same minutes.

Then (unless ``--skip-breakdown``) a warm run's CPU per phase (the median of
``--breakdown-runs`` runs, each side alternately), in one process with marks: the CLI's
imports, the engine package's, typer's parsing and the workspace's checks, numba's
import, the engine's modules, the load (with numba's first dispatch of each compiled
entry point: its type registries and the cached machine code), the simulation loop,
the results and the commit, and the interpreter's start and exit; the cyclic GC's share.

Outputs under bench/out/ (ignored by git); timings are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _host import host_cpu  # bench/_host.py: run as python bench/NAME.py, bench/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    """(wall s, stdout) of one child process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err.decode()[-2000:]}")
    return wall, out.decode()


def child_cpu(fn):
    """(CPU s, wall s, stdout) of ``fn``'s child: user+sys, the growth of RUSAGE_CHILDREN
    (the child has been reaped when ``fn`` returns)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, out = fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall, out


PHASES = r"""
import gc, os, sys, time
W0, C0 = time.perf_counter(), time.process_time()
marks = []
def mark(n): marks.append((n, time.perf_counter() - W0, time.process_time() - C0))
gcs = {"t": 0.0}
def cb(ph, info):
    if ph == "start": gcs["s"] = time.process_time()
    else: gcs["t"] += time.process_time() - gcs["s"]
gc.callbacks.append(cb)
import replay.cli as C
mark("the CLI's imports (typer, rich, replay.api)")
import replay.engine as E
mark("the engine package (polars, numpy, the models)")
dsp = {"n": 0, "cpu": 0.0}
def patch_numba():
    import numba.core.dispatcher as D
    orig = D._DispatcherBase._compile_for_args
    def cfa(self, *a, **k):
        c = time.process_time(); r = orig(self, *a, **k)
        dsp["n"] += 1; dsp["cpu"] += time.process_time() - c; return r
    D._DispatcherBase._compile_for_args = cfa
orp = E.run_params
def rp(*a, **k):
    mark("typer's parsing (pydantic), the workspace's checks, the ops snapshot")
    import numba
    mark("numba's import")
    patch_numba()
    return orp(*a, **k)
E.run_params = rp
orm = E._replay_mms
def rmms(*a, **k):
    mark("run parameters (the trace's fault service time)")
    from replay.engine import load as L
    mark("the engine's modules (load, loop, ...: their dispatchers)")
    osim, oload = L.simulate, L.load
    def ld(*a, **k):
        r = oload(*a, **k); mark("load: the ops into the engine's state, first dispatches"); return r
    def sim(*a, **k):
        r = osim(*a, **k); mark("the simulation loop, results frames, lock/line stats"); return r
    L.simulate, L.load = sim, ld
    return orm(*a, **k)
E._replay_mms = rmms
try:
    C.entry()  # as the replay command does, with whatever it does around main()
except SystemExit as e:
    rc = e.code
mark("results written, the run committed, the summary printed")
import json
sys.stderr.write("PHASES " + json.dumps({"marks": marks, "dispatch": dsp, "gc_cpu": gcs["t"]}) + "\n")
sys.exit(rc)
"""


def breakdown(py: str, env: dict, ws: Path) -> dict:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([py, "-c", PHASES, "run", "--model", "v8", "-w", str(ws), "-f", "json"],
                       capture_output=True, text=True, env=env, cwd=OUT)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"breakdown failed: {p.stderr[-2000:]}")
    d = json.loads(next(ln for ln in p.stderr.splitlines() if ln.startswith("PHASES "))[7:])
    d["total_cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    d["total_wall"] = wall
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--against", help="another interpreter whose replay is another checkout (before/after)")
    ap.add_argument("--skip-breakdown", action="store_true")
    ap.add_argument("--breakdown-runs", type=int, default=5)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # a user's shell writes .pyc files; this checkout's children import it first on their
    # path (whatever the interpreter has installed), the other side's its own install
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    envs = {"this": {**env, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])},
            "against": env, "baseline": env}
    sides = {"this": sys.executable}
    if a.against:
        sides["against"] = a.against
    wss = {s: Path(tempfile.mkdtemp(prefix=f"ws-startup-{s}-", dir=OUT)) for s in sides}
    # every child runs in bench/out: ``-m`` puts the working directory first on sys.path,
    # and each side must import its own checkout's replay
    for s, py in sides.items():  # the warm-up: ingests the sample, builds its ops, fills numba's cache
        where = subprocess.run([py, "-c", "import replay; print(replay.__file__)"], capture_output=True, text=True,
                               env=envs[s], cwd=OUT, check=True).stdout.strip()
        print(f"{s}: {py}: {where}", flush=True)
        t = time.perf_counter()
        subprocess.run([py, "-m", "replay", "run", "--model", "v8", "-w", str(wss[s]), "-f", "json"], check=True,
                       capture_output=True, env=envs[s], cwd=OUT)
        print(f"warm-up run ({s}: {py}) {time.perf_counter() - t:.1f} s", flush=True)

    def commands(side: str, py: str):
        ws = str(wss[side])
        return {"replay --help": [py, "-m", "replay", "--help"],
                'replay sql "SELECT 1"': [py, "-m", "replay", "sql", "SELECT 1", "-w", ws],
                "replay run --model v8 (warm)": [py, "-m", "replay", "run", "--model", "v8", "-w", ws, "-f", "json"]}

    base = {"python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import polars"': [sys.executable, "-c", "import polars"]}
    jobs = [("baseline", k, v) for k, v in base.items()]
    for s, py in sides.items():
        jobs += [(s, k, v) for k, v in commands(s, py).items()]
    times: dict = {(s, k): [] for s, k, _ in jobs}
    for r in range(a.rounds):
        for s, k, cmd in jobs:
            cpu, wall, _ = child_cpu(lambda: timed(cmd, envs[s], OUT))
            times[(s, k)].append((cpu, wall))
        print(f"round {r + 1}/{a.rounds} done (load average {os.getloadavg()[0]:.2f})", flush=True)

    def med(v, i):
        return statistics.median(x[i] for x in v)

    ref = med(times[("baseline", 'python -c "import polars"')], 0)
    rows = []
    print(f"\n{a.rounds} rounds on {host_cpu()} ({os.cpu_count()} CPUs); CPU = user+sys of the process\n")
    print(f"{'side':8s} {'command':34s} {'CPU s med':>9s} {'min':>6s} {'wall med':>9s} {'min':>6s} "
          f"{'CPU / import polars':>20s}")
    for (s, k), v in times.items():
        row = {"side": s, "command": k, "cpu_median_s": round(med(v, 0), 3), "cpu_min_s": round(min(x[0] for x in v), 3),
               "wall_median_s": round(med(v, 1), 3), "wall_min_s": round(min(x[1] for x in v), 3),
               "cpu_ratio_to_import_polars": round(med(v, 0) / ref, 2)}
        rows.append(row)
        print(f"{s:8s} {k:34s} {row['cpu_median_s']:9.3f} {row['cpu_min_s']:6.3f} {row['wall_median_s']:9.3f} "
              f"{row['wall_min_s']:6.3f} {row['cpu_ratio_to_import_polars']:19.2f}x")
    report = {"host_cpu": host_cpu(), "rounds": a.rounds, "sides": sides, "rows": rows}
    if a.against:
        print()
        for k in commands("this", "").keys():
            t, b = med(times[("this", k)], 0), med(times[("against", k)], 0)
            print(f"  {k:34s} CPU this / against = {t / b:.2f}  ({t:.3f} s against {b:.3f} s)")
    if not a.skip_breakdown:
        k = a.breakdown_runs
        print(f"\na warm `replay run --model v8` by phase: CPU s, the median of {k} runs per side, alternately "
              "(one process each, with marks)")
        runs: dict = {s: [] for s in sides}
        for _ in range(k):
            for s, py in sides.items():
                runs[s].append(breakdown(py, envs[s], wss[s]))
        names = [n for n, _, _ in runs["this"][0]["marks"]]

        def phases(d: dict) -> dict:
            out, prev = {}, 0.0
            for n, _, c in d["marks"]:
                out[n] = c - prev
                prev = c
            out["the interpreter's start and exit (the process less the above)"] = d["total_cpu"] - prev
            out["total (the process's user+sys)"] = d["total_cpu"]
            out["  of which numba's first dispatches (its type registries, the cached code)"] = d["dispatch"]["cpu"]
            out["  of which the cyclic GC while the command ran"] = d["gc_cpu"]
            return out

        table = {s: [phases(d) for d in v] for s, v in runs.items()}
        rows_b = list(table["this"][0])
        print(f"  {'phase':70s} " + " ".join(f"{s:>8s}" for s in sides))
        summary = {}
        for n in rows_b:
            vals = {s: statistics.median(t[n] for t in table[s] if n in t) if any(n in t for t in table[s]) else None
                    for s in sides}
            summary[n] = vals
            print(f"  {n:70s} " + " ".join(f"{v:8.3f}" if v is not None else f"{'-':>8s}" for v in vals.values()))
        report["breakdown"] = {"runs": k, "median_cpu_s": summary, "raw": runs}
    (OUT / "startup.json").write_text(json.dumps(report, indent=2))
    print(f"written {OUT / 'startup.json'}")
    import shutil

    for w in wss.values():
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
