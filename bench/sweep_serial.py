"""Sweep benchmark, the serial part: where a sweep's time goes outside the replays, by
CPU time and by the coordinating process's own wall time - figures a loaded machine
does not distort the way it distorts wall-clock scaling.

    python bench/sweep_serial.py [--faults 200000] [--threads 56] [--models mmap_lock,pervma,v8]
                                 [--cpus 1,8,56] [-j 1] [--tree PATH]

Runs ``replay sweep`` in this process (``replay.cli.main``, in a fresh copy of the
workspace) with timers around the sweep's phases:

* the coordinator: its start (importing the CLI), the planner, finding the finished
  runs, starting the executor, the replays (the coordinator waiting), the end-of-sweep
  report, printing it, and closing the executor - wall and CPU (``time.process_time``)
  of this process alone;
* each worker: the CPU it spent before its first job (interpreter start, unpickling,
  the initializer), what its first job spent importing the CLI and loading the engine
  from numba's cache (timed by loading them before the job: the same work, measured
  apart), and per job its CPU and wall (``replay.sweep.run_job``, wrapped) against
  the engine's own replay time (the run's ``wall_s``).

Then the Amdahl bound on 2 workers of an idle 2-core machine: serial = the
coordinator's CPU outside the replays plus one worker's fixed cost (each worker pays it,
at the same time); parallel = the jobs' CPU; bound = (serial + parallel) / (serial +
parallel / 2).  ``--tree`` imports replay from another checkout (to measure main's).
Outputs go under bench/out/ (ignored by git).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

_FIRST: dict | None = None


def _timed_job(job):
    """``replay.sweep.run_job`` with its worker's CPU and wall time (runs in a worker)."""
    global _FIRST
    import replay.sweep as S

    warm = None
    if _FIRST is None:
        _FIRST = {"pid": os.getpid(), "before_cpu": time.process_time()}
        c, w = time.process_time(), time.perf_counter()
        import replay.cli  # noqa: F401  (what run_job imports)
        from replay.engine.warm import compile_now

        compile_now()  # loads every compiled function a replay uses from numba's cache
        warm = {"cpu": time.process_time() - c, "wall": time.perf_counter() - w}
    c, w = time.process_time(), time.perf_counter()
    r = getattr(S, "_bench_run_job", S.run_job)(job)
    r["_timing"] = {"pid": os.getpid(), "cpu": time.process_time() - c, "wall": time.perf_counter() - w,
                    "before_cpu": _FIRST["before_cpu"] if warm else None, "warm": warm}
    return r


def _stdout() -> io.TextIOWrapper:
    """A stdout to capture (the CLI writes some outputs to ``sys.stdout.buffer``)."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8")


class Phases:
    def __init__(self):
        self.rows: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        c, w = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            row = self.rows.setdefault(name, [0.0, 0.0])
            row[0] += time.perf_counter() - w
            row[1] += time.process_time() - c

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        phases = self

        def timed(*a, **k):
            with phases(name):
                return fn(*a, **k)

        setattr(owner, attr, timed)

    def wrap_gen(self, owner, attr: str, name: str) -> None:
        """A generator: its own time between results is the coordinator's, the rest
        (waiting for the next result) the replays'."""
        fn = getattr(owner, attr)
        phases = self

        def timed(*a, **k):
            it = fn(*a, **k)
            while True:
                with phases(name):
                    try:
                        r = next(it)
                    except StopIteration:
                        return
                yield r

        setattr(owner, attr, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=56)
    ap.add_argument("--models", default="mmap_lock,pervma,v8")
    ap.add_argument("--cpus", default="1,8,56")
    ap.add_argument("--machine", default="broadwell-2s")
    ap.add_argument("-j", "--workers", type=int, default=1)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout to import replay from")
    a = ap.parse_args()
    ph = Phases()
    sys.path.insert(0, str(a.tree.resolve()))
    with ph("start (import the CLI)"):
        from replay.cli import main as replay_main
    import replay.sweep as S
    from replay.engine.warm import compile_now, is_warm

    print(f"replay from {Path(S.__file__).parent.parent}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    pages = a.faults // a.threads
    name = f"bench-serial-pft-t{a.threads}-p{pages}"
    base = OUT / f"ws-serial-{a.threads}-{pages}"
    quiet = _stdout()
    if not (base / "ops" / f"trace_id={name}").exists():
        with contextlib.redirect_stdout(quiet):
            assert replay_main(["synth", "pft", "--threads", str(a.threads), "--pages", str(pages), "--name", name,
                                "-w", str(base)]) == 0
            assert replay_main(["ops", name, "-w", str(base), "-f", "json"]) == 0
    if not is_warm():
        compile_now()
    ws = OUT / "ws-serial"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base, ws)

    S._bench_run_job = S.run_job
    S.run_job = _timed_job
    for attr, label in (("plan", "plan"), ("finished", "finished runs"), ("report", "report"),
                        ("render_report", "render")):
        ph.wrap(S, attr, label)
    ph.wrap(S.LocalExecutor, "__init__", "start the executor")
    ph.wrap(S.LocalExecutor, "close", "close the executor")
    ph.wrap_gen(S, "execute", "replays (coordinator waiting)")
    results = []
    real_execute = S.execute

    def collect(*args, **kw):
        for r in real_execute(*args, **kw):
            results.append(r)
            yield r

    S.execute = collect
    out = _stdout()
    argv = ["sweep", "--trace", name, "--models", a.models, "--cpus", a.cpus, "--machine", a.machine,
            "-j", str(a.workers), "-w", str(ws), "-f", "json"]
    w0 = time.perf_counter()
    with ph("sweep (in all)"), contextlib.redirect_stdout(out):
        rc = replay_main(argv)
    total = time.perf_counter() - w0
    assert rc == 0, rc
    out.flush()
    text = out.buffer.getvalue().decode()
    rep = json.loads(text)
    (OUT / "sweep-serial.json").write_text(text)
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(ws)

    print(f"sweep of {len(rep['runs'])} runs ({a.models} x cpus {a.cpus}), {a.faults:,}-fault pft trace, "
          f"{a.workers} local worker(s); load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'coordinator phase':<34}{'wall s':>9}{'CPU s':>9}")
    serial_cpu = serial_wall = 0.0
    for k, (w, c) in ph.rows.items():
        if k == "sweep (in all)":
            continue
        print(f"{k:<34}{w:>9.2f}{c:>9.2f}")
        if not k.startswith("replays"):
            serial_cpu += c
            serial_wall += w
    print(f"{'sweep (in all, main())':<34}{total:>9.2f}{ph.rows['sweep (in all)'][1]:>9.2f}")
    print(f"{'serial (all but the replays)':<34}{serial_wall:>9.2f}{serial_cpu:>9.2f}")
    t = [r["_timing"] for r in results]
    firsts = [x for x in t if x["warm"]]
    print(f"workers: {len(firsts)}; CPU of the worker processes in all (getrusage) "
          f"{children.ru_utime + children.ru_stime:.2f} s")
    for x in firsts:
        print(f"  worker {x['pid']}: before its first job {x['before_cpu']:.2f} s CPU; "
              f"import the CLI + load the engine {x['warm']['wall']:.2f} s wall, {x['warm']['cpu']:.2f} s CPU")
    job_cpu = sum(x["cpu"] for x in t)
    job_wall = sum(x["wall"] for x in t)
    engine = sum(r["wall_s"] for r in rep["runs"])
    print(f"jobs: {len(t)}, CPU {job_cpu:.2f} s, wall {job_wall:.2f} s; the engine's own replay time (wall_s) "
          f"{engine:.2f} s")
    fixed = max((x["before_cpu"] + x["warm"]["cpu"] for x in firsts), default=0.0)
    s = serial_cpu + fixed
    p = job_cpu
    print(f"serial CPU = coordinator {serial_cpu:.2f} + one worker's start {fixed:.2f} = {s:.2f} s; "
          f"parallel (jobs' CPU) = {p:.2f} s")
    print(f"Amdahl bound, 2 workers on an idle 2-core machine: ({s:.2f} + {p:.2f}) / ({s:.2f} + {p:.2f}/2) "
          f"= {(s + p) / (s + p / 2):.2f}x")
    # jobs are whole and not all the same length: 2 workers taking them in the plan's order
    by_run = {r["run_id"]: r["_timing"] for r in results}
    ends = [0.0, 0.0]
    for r in rep["runs"]:
        ends[ends.index(min(ends))] += by_run[r["run_id"]]["cpu"]
    print(f"  with whole jobs, in the plan's order, on 2 workers: ({s:.2f} + {p:.2f}) / ({s:.2f} + "
          f"{max(ends):.2f}) = {(s + p) / (s + max(ends)):.2f}x")


if __name__ == "__main__":
    main()
