"""``replay sweep``: every combination of traces, models, machines, CPU counts and seeds,
each an ordinary run, on an executor.

This module owns the sweep's plan (``plan``: which jobs a sweep makes, their run ids,
which of them the workspace already has), the job a worker runs (``run_job``: a pure
function of a ``Job``, committing through the same ``cli.run_one`` as ``replay run``),
the executors that run jobs (the ``Executor`` protocol, ``LocalExecutor``,
``DaskExecutor``), ``--plan``'s command lines, the sweep file and the end-of-sweep
comparison.

Why it is safe to run jobs anywhere at once: each job stages, takes the workspace lock
and commits exactly as ``replay run`` does (see ``replay/workspace.py``), so jobs on
any number of processes or machines sharing the workspace's filesystem commit whole
runs or nothing; a killed sweep leaves only committed runs, and running it again skips
them (finished run ids are known before any job starts: ``engine.run_params``).
The ops of each trace are built once, by the planner, before any job starts.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from .workspace import fault_point

SWEEP_KEYS = {"traces", "models", "machines", "cpus", "iterations", "seed", "placement", "fault_service",
              "open_loop"}


@dataclass(frozen=True)
class Job:
    """One run of a sweep, everything a worker needs (plain values: it crosses processes
    and machines)."""

    workspace: str  # absolute: a worker's working directory is not the planner's
    trace: str
    model: str
    machine: str
    cpus: int
    seed: int
    placement: str
    open_loop: bool
    fault_service: str
    trace_sha256: str  # the content planned for; a trace replaced meanwhile fails the job
    run_id: str


@dataclass
class Spec:
    traces: list[str]
    models: list[str]
    machines: list[str]
    cpus: list[int]
    iterations: int = 1
    seed: int = 0
    placement: str = "spread"
    fault_service: str = "trace"
    open_loop: bool = False


def read_sweep_file(path: Path) -> dict:
    """A TOML sweep file's settings (the option names, lists for the swept ones)."""
    from .cli import Fail

    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except OSError as e:
        raise Fail(f"cannot read sweep file {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise Fail(f"sweep file {path}: not valid TOML: {e}")
    unknown = sorted(set(d) - SWEEP_KEYS)
    if unknown:
        raise Fail(f"sweep file {path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(SWEEP_KEYS))})", 2)
    for k in ("traces", "models", "machines", "cpus"):
        if k in d and isinstance(d[k], (str, int)):
            d[k] = [d[k]]
        if k in d and not (isinstance(d[k], list) and all(isinstance(x, int if k == "cpus" else str) for x in d[k])):
            raise Fail(f"sweep file {path}: {k} must be a list of {'integers' if k == 'cpus' else 'names'}", 2)
    for k, types, what in (("iterations", int, "an integer"), ("seed", int, "an integer"),
                           ("placement", str, "a string"),
                           ("fault_service", (str, int, float), "trace, profile or a number of ns"),
                           ("open_loop", bool, "true or false")):
        if k in d and (not isinstance(d[k], types) or (types is int and isinstance(d[k], bool))):
            raise Fail(f"sweep file {path}: {k} must be {what}", 2)
    return d


# -- the job ------------------------------------------------------------------------------

def run_job(job: Job) -> dict:
    """Replay and commit one run; return ``{"run_id", "summary", "metrics"}`` (metrics:
    the run's ``compare.metrics_of``, for the end-of-sweep comparison - computed here, in
    parallel, rather than by the sweep after the last run) or, for a failure the user
    can act on (a bad parameter, a full disk, a trace replaced), ``{"run_id", "error",
    "code"}``.  A pure function of the job: any worker may run it."""
    import importlib

    from .ingest.sources import InputError

    from .cli import Fail, model_and_machine, run_one
    from .workspace import Workspace, WorkspaceError

    compare = importlib.import_module("replay.compare")  # the attribute replay.compare is the API function
    ws = Workspace(job.workspace)
    try:
        mdl, mach = model_and_machine(job.model, job.machine)
        _, s = run_one(ws, job.trace, mdl, mach, job.cpus, job.seed, job.placement,
                       job.open_loop, job.fault_service, bar=False, expect_sha=job.trace_sha256)
    except (Fail, InputError, WorkspaceError) as e:
        return {"run_id": job.run_id, "error": str(e), "code": getattr(e, "code", 1)}
    if s["run_id"] != job.run_id:  # the planner and the engine disagree on what the run is: a defect
        raise RuntimeError(f"run {s['run_id']} replayed for planned run {job.run_id}")
    # read back from the committed run (the page cache has it): the same reader as for a
    # run the sweep skipped, so the comparison is the same whichever replayed it
    return {"run_id": job.run_id, "summary": s, "metrics": compare.metrics_of(ws, job.run_id)}


def _worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group; the sweep (the parent) decides what stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_die_with, args=(parent,), daemon=True).start()
    warm_worker()


def warm_worker() -> None:
    """What a worker's first job would spend before replaying - importing the CLI and
    the engine, loading the compiled engine from numba's cache (1-2 s) - done as the
    worker starts, while the sweep is still planning.  Only from a warm cache: a cold
    one the planner compiles, once, and the first job loads."""
    from . import cli  # noqa: F401  (run_job's imports)
    from .engine import warm

    if warm.is_warm():
        warm.compile_now()


def _die_with(parent: int) -> None:
    """A pool's workers wait on its queue for ever once the sweep is gone (kill -9 of
    the sweep): go too.  Dying mid-commit is safe; the next writer cleans up."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


# -- executors ----------------------------------------------------------------------------

class Executor(Protocol):
    """Runs jobs somewhere.  ``map`` yields each job's ``run_job`` result as it finishes
    (in any order); ``close`` stops what is still running.  Another engine (Ray, say)
    is a class with these two methods."""

    def map(self, jobs: Sequence[Job]) -> Iterator[dict]: ...

    def close(self) -> None: ...


class WorkerLost(Exception):
    """A worker died (killed, out of memory) with jobs unfinished."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor:
    """A pool of worker processes on this machine, ``workers`` of them (default: every
    core this process may use).  Workers are spawned, not forked: forking a process
    that has numba and polars threads running is unsafe."""

    def __init__(self, workers: int | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        n = workers or default_workers()
        self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(os.getpid(),))
        # start every worker now (the pool starts one per task submitted while none is
        # idle): each warms itself (warm_worker) while the sweep plans
        for _ in range(n):
            self.pool.submit(os.getpid)

    def map(self, jobs: Sequence[Job]) -> Iterator[dict]:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        futures = [self.pool.submit(run_job, j) for j in jobs]
        try:
            for f in as_completed(futures):
                yield f.result()
        except BrokenProcessPool as e:
            raise WorkerLost(str(e)) from None

    def close(self) -> None:
        # a worker in the middle of a job is killed, not waited for: an unfinished
        # commit is safe to abandon (the next writer removes what it left)
        for p in list((getattr(self.pool, "_processes", None) or {}).values()):
            p.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Jobs on a Dask cluster: the scheduler at ``scheduler`` (its workers must see the
    workspace at the same path, on a shared filesystem, and have this package
    installed), or a LocalCluster of ``workers`` single-threaded worker processes."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        from .cli import Fail

        try:
            import logging

            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise Fail("--executor dask needs the dask extra: pip install -e '.[dask]' "
                       "(or pip install 'dask[distributed]')")
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise Fail(f"cannot reach the Dask scheduler at {scheduler}: {e}")
            self._warm()
            return
        env = {}
        if os.environ.get("NUMBA_CACHE_DIR"):  # the cache the planner warmed
            env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
        self.cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                                    dashboard_address=None, host="127.0.0.1", silence_logs=logging.ERROR, env=env)
        self.client = Client(self.cluster)
        self._warm()

    def _warm(self) -> None:
        """``warm_worker`` on every worker, as a task pinned to it (fire and forget: the
        futures are only kept, so that dask does not cancel them), while the sweep plans."""
        self.warming = [self.client.submit(warm_worker, workers=[w], allow_other_workers=False, pure=False)
                        for w in self.client.scheduler_info()["workers"]]

    def map(self, jobs: Sequence[Job]) -> Iterator[dict]:
        from dask.distributed import as_completed

        futures = self.client.map(run_job, list(jobs), pure=False)
        try:
            for f in as_completed(futures):
                yield f.result()
        except Exception as e:
            if type(e).__name__ == "KilledWorker":  # dask gave up retrying a job whose workers died
                raise WorkerLost(str(e)) from None
            raise

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def start(executor: str, scheduler: str | None, workers: int | None, spec: Spec) -> Executor:
    """The sweep's executor, started before the plan so that its workers start, and warm
    themselves (``warm_worker``), while the sweep plans: local, ``workers`` processes
    (default every core) but no more than the sweep can have jobs; or dask."""
    if executor == "dask":
        return DaskExecutor(scheduler, workers)
    return LocalExecutor(max(1, min(workers or default_workers(), len(grid(spec)))))


# -- planning -----------------------------------------------------------------------------

def grid(spec: Spec) -> list[tuple]:
    """The sweep's combinations in plan order, each once: (trace, machine, model, CPUs,
    seed) - what plan() makes a job of, and what bounds the executor's workers."""
    return list(dict.fromkeys(
        (t, x, m, c, seed) for t in spec.traces for x in spec.machines for m in spec.models for c in spec.cpus
        for seed in range(spec.seed, spec.seed + spec.iterations)))


def plan(ws, spec: Spec) -> list[Job]:
    """The sweep's jobs in order (trace, machine, model, CPUs, seed), with their run ids.
    Builds each trace's ops now, once, and compiles the engine now, once, so that the workers neither race to build the same ops nor each compile."""
    from .cli import Fail, _ensure_ops, check_run_options, model_and_machine
    from .engine import run_id_for, run_params, warm

    check_run_options(spec.placement)
    if spec.iterations < 1:
        raise Fail("--iterations must be at least 1", 2)
    loaded = {(m, x): model_and_machine(m, x) for m in spec.models for x in spec.machines}
    root = str(Path(ws.root).resolve())
    jobs = []
    sources: dict = {}
    for trace, x, m, c, seed in grid(spec):
        if trace not in sources:
            ops, sha = _ensure_ops(ws, trace)
            sources[trace] = (_planning_source(ops), sha)
        src, sha = sources[trace]
        # a machine given as a .toml path must name the same file from a worker's directory
        mach_arg = str(Path(x).resolve()) if x.endswith(".toml") else x
        try:
            p = run_params(src, *loaded[m, x], c, seed, spec.placement, trace, sha, spec.open_loop,
                           spec.fault_service)
        except ValueError as e:
            raise Fail(str(e))
        jobs.append(Job(root, trace, m, mach_arg, c, seed, spec.placement, spec.open_loop,
                        spec.fault_service, sha, run_id_for(p)))
    jobs = list({j.run_id: j for j in jobs}.values())  # two names for one run (a profile by name and by path) are one
    if jobs and not warm.is_warm():
        from .cli import err

        err.print("compiling the replay engine once for the workers (numba caches it)", markup=False)
        warm.compile_now()
    return jobs


def _planning_source(ops: str):
    """The ops file as an ``OpsSource`` whose ``frame`` answers are kept: the planner
    asks ``run_params`` (and so ``service_for``: the trace's fallen-back holds) the same
    questions of the same file for every job, and read anew each is a pass over the
    file per job - most of a 24-run plan's time.  An answer is keyed by all it depends
    on: the columns read and the function (its code, defaults and the values it closes
    over); a function that cannot be keyed is asked again.  What is kept is the answers
    (a few rows or an aggregate), not the columns."""
    from .engine.source import OpsSource

    class PlanningSource(OpsSource):
        def __init__(self, path):
            super().__init__(path)
            self.answers: dict = {}

        def frame(self, roots, fn):
            try:
                key = (tuple(roots), fn.__code__, fn.__defaults__,
                       tuple(c.cell_contents for c in fn.__closure__ or ()))
                hash(key)
            except (AttributeError, TypeError, ValueError):  # not a plain function, or unhashable values
                return super().frame(roots, fn)
            if key not in self.answers:
                self.answers[key] = super().frame(roots, fn)
            return self.answers[key]

    return PlanningSource(ops)


def finished(ws) -> set[str]:
    rs = ws.runs()
    return set() if rs is None else set(rs["run_id"].to_list())


def plan_commands(jobs: Iterable[Job], spec: Spec, workspace: str) -> list[str]:
    """One ``replay run`` command line per job, shell-quoted, for xargs, GNU parallel or
    a Slurm array; each gives the same run id as the sweep's job."""
    out = []
    for j in jobs:
        argv = ["replay", "run", "--trace", j.trace, "--model", j.model, "--machine", j.machine, "--cpus", str(j.cpus),
                "--seed", str(j.seed), "--placement", j.placement, "--fault-service", j.fault_service,
                *(["--open-loop"] if j.open_loop else []), "-w", workspace]
        out.append(shlex.join(argv))
    return out


def execute(executor: Executor, jobs: Sequence[Job], total: int, done_before: int) -> Iterator[dict]:
    """Run ``jobs`` on ``executor`` with one progress bar for the whole sweep (``total``
    runs, ``done_before`` of them already in the workspace); yields each result as it
    comes (so an interrupted sweep knows what it committed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .cli import err

    prog = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal)
    task = prog.add_task("sweep", total=total, completed=done_before)
    with prog:
        for r in executor.map(jobs):
            yield r
            fault_point("sweep.run_done")
            prog.advance(task)


# -- the end-of-sweep report ----------------------------------------------------------------

def report(ws, jobs: Sequence[Job], status: dict[str, str], metrics: dict[str, dict] | None = None) -> dict:
    """Every run of the sweep (from the workspace, so skipped and replayed runs alike)
    and the mmtests comparison of the models per trace, machine and CPU count, each
    cell the sweep's iterations pooled.  ``metrics``: the runs' ``compare.metrics_of``
    their workers computed (``run_job``); the others' are read here."""
    import math

    import polars as pl

    import importlib

    compare = importlib.import_module("replay.compare")  # the attribute replay.compare is the API function

    want = [j.run_id for j in jobs]
    rs = ws.runs()
    rows = {r["run_id"]: r for r in rs.filter(pl.col("run_id").is_in(want)).to_dicts()} if rs is not None else {}
    runs = [{**{k: rows[j.run_id][k] for k in ("run_id", "trace_id", "model", "machine", "cpus", "seed", "faults",
                                                "faults_per_sec", "fallback_pct", "wall_s")},
             "status": status[j.run_id]} for j in jobs if j.run_id in rows]
    blocks = []
    for key in dict.fromkeys((j.trace, j.machine) for j in jobs):
        group = [j for j in jobs if (j.trace, j.machine) == key and j.run_id in rows]
        models = list(dict.fromkeys(j.model for j in group))
        for c in dict.fromkeys(j.cpus for j in group):
            columns = [[j.run_id for j in group if j.model == m and j.cpus == c] for m in models]
            if not all(columns):
                continue
            stats = compare.compare_stats(compare.iteration_metrics(ws, [r for col in columns for r in col], metrics),
                                          columns, models, c)
            for st in stats:
                for k in ("value", "pct_change"):
                    if isinstance(st[k], float) and math.isnan(st[k]):
                        st[k] = None  # JSON has no NaN
            blocks.append({"trace_id": key[0], "machine": rows[group[0].run_id]["machine"], "cpus": c,
                           "models": models, "run_ids": columns, "stats": stats})
    return {"runs": runs, "compare": blocks}


def render_report(rep: dict) -> list[str]:
    """The comparison as mmtests compare-kernels text, one table per trace and machine
    (a line per metric and CPU count)."""
    import importlib

    compare = importlib.import_module("replay.compare")  # the attribute replay.compare is the API function

    lines = []
    by: dict = {}
    for b in rep["compare"]:
        by.setdefault((b["trace_id"], b["machine"]), []).append(b)
    for (trace, machine), bs in by.items():
        its = sorted({len(c) for b in bs for c in b["run_ids"]})
        lines.append(f"{trace} on {machine}, iterations per column: {', '.join(map(str, its))}")
        stats = [{**s, **{k: float("nan") if s[k] is None else s[k] for k in ("value", "pct_change")}}
                 for b in bs for s in b["stats"]]
        lines += compare.render(stats, bs[0]["models"])
    return lines


def job_label(j: Job) -> str:
    return f"{j.trace} {j.model} {j.machine} cpus={j.cpus} seed={j.seed}"
