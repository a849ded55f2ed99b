"""replay sweep: every combination as ordinary runs, on real worker processes (a spawned
process pool; a real Dask LocalCluster), resumable, killed for real at named steps.

The replays are of a tiny synthetic pft trace (the Dask test: the smallest sample
trace): the sweep machinery, not the engine, is what is under test here.  The planner
compiles the engine once (numba's cache); workers load it from there.  Most of each
test's time is spawning worker processes."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ("sweep", "--trace", "tiny", "--models", "v8,mmap_lock", "--cpus", "1,2", "-j", "2")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workspace holding two traces and their ops, copied by each test: tiny (2 threads
    x 64 pages of pft) and the smallest sample, pft-ftrace."""
    from replay.cli import main

    ws = tmp_path_factory.mktemp("sweep-base") / "ws"
    assert main(["synth", "pft", "--threads", "2", "--pages", "64", "--name", "tiny", "-w", str(ws)]) == 0
    assert main(["ingest", str(SAMPLES / "pft-ftrace.txt.zst"), "-w", str(ws), "--maps",
                 str(SAMPLES / "pft-ftrace.maps")]) == 0
    for t in ("tiny", "pft-ftrace"):
        assert main(["ops", t, "-w", str(ws), "-f", "json"]) == 0
    return ws


@pytest.fixture(scope="module")
def clean(base, tmp_path_factory):
    """SWEEP run once, uninterrupted, in a copy of ``base``."""
    ws = tmp_path_factory.mktemp("sweep-clean") / "ws"
    shutil.copytree(base, ws)
    p = _cli_proc(*SWEEP, "-w", ws)
    assert p.returncode == 0, p.stderr
    return ws


@pytest.fixture
def sws(base, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(base, ws)
    return ws


def _cli_proc(*args, fault=None, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "REPLAY_FAULT_POINT"}
    if fault:
        env["REPLAY_FAULT_POINT"] = fault
    return subprocess.run([sys.executable, "-m", "replay", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def _runs(ws):
    from replay.workspace import Workspace

    rs = Workspace(ws).runs()
    return {} if rs is None else {r["run_id"]: r for r in rs.to_dicts()}


def _tables(ws, run_id):
    return {ds: pq.read_table(Path(ws) / ds / f"run_id={run_id}" / "part-0.parquet")
            for ds in ("results", "lock_stats", "line_stats", "line_cpu")}


def _same_runs(ws_a, ws_b):
    a, b = _runs(ws_a), _runs(ws_b)
    assert set(a) == set(b) and a
    for rid in a:
        ta, tb = _tables(ws_a, rid), _tables(ws_b, rid)
        for ds in ta:
            assert ta[ds].equals(tb[ds]), (rid, ds)


def test_sweep_runs_every_combination_as_the_runs_replay_run_gives(cli, sws, tmp_path):
    rc, out, err = cli(*SWEEP, "--iterations", "2", "-w", sws, "-f", "json")
    assert rc == 0, err
    rep = json.loads(out)
    combos = {(r["model"], r["cpus"], r["seed"]) for r in rep["runs"]}
    assert combos == {(m, c, s) for m in ("v8", "mmap_lock") for c in (1, 2) for s in (0, 1)}
    assert (rep["replayed"], rep["skipped"], rep["failed"]) == (8, 0, 0)
    assert set(_runs(sws)) == {r["run_id"] for r in rep["runs"]}
    # one block per CPU count, the two iterations of each model pooled in its column
    assert [(b["cpus"], b["models"], [len(c) for c in b["run_ids"]]) for b in rep["compare"]] == [
        (1, ["v8", "mmap_lock"], [2, 2]), (2, ["v8", "mmap_lock"], [2, 2])]
    assert {s["metric"] for s in rep["compare"][0]["stats"]} == {"faults/sec", "faults/cpu", "fault-ns", "fallback-pct"}
    # a sweep's run is replay run's run: same id, same tables
    solo = tmp_path / "solo"
    shutil.copytree(sws, solo, ignore=shutil.ignore_patterns("runs", "results", "lock_stats", "line_stats", "line_cpu"))
    rc, out, err = cli("run", "--trace", "tiny", "--model", "mmap_lock", "--cpus", "2", "--seed", "1",
                       "-w", solo, "-f", "json")
    assert rc == 0, err
    rid = json.loads(out)["run_id"]
    assert rid in _runs(sws)
    for ds, t in _tables(solo, rid).items():
        assert t.equals(_tables(sws, rid)[ds]), ds


def test_a_finished_sweep_is_skipped_and_the_table_shows_the_comparison(cli, sws):
    assert cli(*SWEEP, "-w", sws, "-f", "json")[0] == 0
    before = {rid: (Path(sws) / "runs" / f"run_id={rid}" / "part-0.parquet").stat().st_mtime_ns for rid in _runs(sws)}
    rc, out, err = cli(*SWEEP, "--models", "v8,mmap_lock,pervma", "-w", sws)
    assert rc == 0, err
    assert "6 runs: 2 replayed, 4 already in the workspace" in out
    assert "Hmean     faults/sec-1" in out and "Amean     fallback-pct-2" in out and "pervma" in out
    for rid, t in before.items():  # skipped runs were not replayed again
        assert (Path(sws) / "runs" / f"run_id={rid}" / "part-0.parquet").stat().st_mtime_ns == t


def test_plan_prints_the_replay_run_commands_of_the_unfinished_runs(cli, sws, tmp_path):
    rc, out, err = cli(*SWEEP, "--plan", "-w", sws)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.startswith("replay run ") for line in lines)
    assert _runs(sws) == {}  # --plan replays nothing
    for line in lines[:2]:  # run two of them the way xargs would
        argv = shlex.split(line)
        assert cli(*argv[1:])[0] == 0
    rc, out, err = cli(*SWEEP, "--plan", "-w", sws)
    assert rc == 0 and out.splitlines() == lines[2:] and "2 of 4 runs are in the workspace already" in err
    rc, out, err = cli(*SWEEP, "-w", sws, "-f", "json")
    assert rc == 0 and (json.loads(out)["replayed"], json.loads(out)["skipped"]) == (2, 2)


def test_sweep_file_with_options_overriding_it(cli, sws):
    f = sws.parent / "pft.toml"
    f.write_text('traces = ["tiny"]\nmodels = ["v8", "mainline"]\ncpus = [1, 2, 4]\n')
    rc, out, err = cli("sweep", f, "--cpus", "2", "-j", "2", "-w", sws, "-f", "json")
    assert rc == 0, err
    assert {(r["model"], r["cpus"]) for r in json.loads(out)["runs"]} == {("v8", 2), ("mainline", 2)}


@pytest.mark.parametrize("args, code, msg", [
    (("--models", "v9"), 2, "unknown model"),  # a usage error
    (("--cpus", "1,x"), 2, "--cpus takes comma-separated integers"),
    (("--cpus", "999"), 1, "--cpus must be between 1 and"),
    (("--executor", "ray"), 2, "--executor must be local or dask"),
    (("--scheduler", "tcp://127.0.0.1:1"), 2, "--scheduler is for --executor dask"),
    (("--iterations", "0"), 2, "--iterations must be at least 1"),
    (("--trace", "nope"), 1, "no trace 'nope'"),
])
def test_sweep_errors_are_one_line(cli, sws, args, code, msg):
    base = dict(zip(SWEEP[1::2], SWEEP[2::2]))
    base.update(dict(zip(args[::2], args[1::2])))
    rc, out, err = cli("sweep", *[x for kv in base.items() for x in kv], "-w", sws)
    assert rc == code and msg in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = cli("sweep", "--cpus", "1", "-w", sws)
    assert rc == 2 and "sweep needs --models" in err


def test_bad_sweep_files(cli, sws):
    bad = sws.parent / "bad.toml"
    for text, code, msg in (("models = [\n", 1, "not valid TOML"), ('modles = ["v8"]\n', 2, "unknown setting 'modles'"),
                            ('cpus = ["one"]\n', 2, "cpus must be a list of integers"),
                            ('iterations = "3"\n', 2, "iterations must be an integer")):
        bad.write_text(text)
        rc, _, err = cli("sweep", bad, "-w", sws)
        assert rc == code and str(bad) in err and msg in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = cli("sweep", sws.parent / "missing.toml", "-w", sws)
    assert rc == 1 and "cannot read sweep file" in err and "No such file" in err


def test_dask_executor_without_the_extra_is_one_line(cli, sws, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # what an install without .[dask] has
    rc, _, err = cli(*SWEEP, "--executor", "dask", "-w", sws)
    assert rc == 1 and "pip install -e '.[dask]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("point", ["sweep.run_done", pytest.param("run.results_placed", marks=pytest.mark.slow),
                                   "run.committed"])
def test_sweep_killed_then_resumed(sws, clean, point):
    """kill -9 of the sweep after its first finished run (sweep.run_done), or of a worker
    in the middle of a commit: only whole runs are visible, no worker outlives its sweep,
    and running the sweep again finishes it with the tables an uninterrupted sweep gives."""
    p = _cli_proc(*SWEEP, "-w", sws, fault=point)
    if point == "sweep.run_done":
        assert p.returncode == -signal.SIGKILL
    else:  # a worker died under the sweep: one line, exit 1
        assert p.returncode == 1 and "a sweep worker died" in p.stderr, p.stderr
        assert len([ln for ln in p.stderr.splitlines() if ln.startswith("replay:")]) == 1
    deadline = time.time() + 10
    while _workers_of(sws) and time.time() < deadline:
        time.sleep(0.2)
    assert not _workers_of(sws)
    for rid in _runs(sws):  # what is visible is whole
        assert _tables(sws, rid)["results"].num_rows > 0
    p = _cli_proc(*SWEEP, "-w", sws, "-f", "json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["replayed"] + rep["skipped"] == 4 and rep["skipped"] >= (1 if point == "sweep.run_done" else 0)
    _same_runs(sws, clean)
    assert not list(Path(sws).glob(".stage-*"))


def test_interrupted_sweep_says_what_it_committed(sws):
    """Ctrl-C (a SIGINT the sweep sends itself after its first finished run): exit 130,
    one line counting the runs committed - all the workspace has - and no worker left."""
    p = _cli_proc(*SWEEP, "-w", sws, fault="sweep.run_done:SIGINT")
    assert p.returncode == 130, p.stderr
    n = len(_runs(sws))
    assert n >= 1 and f"interrupted; {n} of the sweep's 4 runs to do were committed" in p.stderr, p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
    assert not _workers_of(sws)


def _workers_of(ws):
    """Live processes spawned by a sweep of the test's interpreter (multiprocessing workers)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "multiprocessing.spawn" in ln and sys.executable in ln]


DASK_SWEEP = tuple("pft-ftrace" if a == "tiny" else a for a in SWEEP)


@pytest.fixture(scope="module")
def local_ftrace(base, tmp_path_factory):
    """The Dask tests' sweep on the local executor."""
    ws = tmp_path_factory.mktemp("sweep-local") / "ws"
    shutil.copytree(base, ws)
    p = _cli_proc(*DASK_SWEEP, "-w", ws)
    assert p.returncode == 0, p.stderr
    return ws


def test_dask_local_cluster_gives_the_local_executors_runs_bit_for_bit(cli, sws, local_ftrace):
    """A real LocalCluster - 2 worker processes, one thread each, loopback, no dashboard -
    reached through --scheduler: the same run ids and identical results, lock_stats and
    line_stats tables as the local process pool."""
    import logging

    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
                      silence_logs=logging.ERROR) as cluster:
        rc, out, err = cli(*DASK_SWEEP, "--executor", "dask", "--scheduler", cluster.scheduler_address, "-w", sws,
                           "-f", "json")
        assert rc == 0, err
    assert json.loads(out)["replayed"] == 4
    _same_runs(local_ftrace, sws)


@pytest.mark.slow
def test_dask_executor_starts_its_own_local_cluster(cli, sws, local_ftrace):
    rc, out, err = cli(*DASK_SWEEP, "--executor", "dask", "-w", sws, "-f", "json")
    assert rc == 0, err
    _same_runs(local_ftrace, sws)


# -- the sweep's serial parts, cut (bench/sweep_serial.py measures them) --------------------

def test_worker_metrics_give_the_comparison_the_workspace_gives(cli, sws):
    """The comparison of a sweep that replayed its runs (each run's metrics computed by
    its worker) is the one a sweep of the same runs, all skipped (every run's metrics
    read by the sweep itself), prints - in JSON and as text."""
    rc, fresh, err = cli(*SWEEP, "--iterations", "2", "-w", sws, "-f", "json")
    assert rc == 0, err
    rc, again, err = cli(*SWEEP, "--iterations", "2", "-w", sws, "-f", "json")
    assert rc == 0, err
    fresh, again = json.loads(fresh), json.loads(again)
    assert (fresh["replayed"], again["skipped"]) == (8, 8)
    assert fresh["compare"] == again["compare"] and fresh["compare"]


def test_report_uses_the_workers_metrics_and_reads_the_rest(clean):
    """``report`` takes a run's metrics from its worker when it has them (a sentinel
    given for one run shows in that run's column) and reads the others' from the
    workspace; given exactly what the workspace holds, it is the report without them."""
    import replay.sweep as S
    from replay.compare import metrics_of
    from replay.workspace import Workspace

    ws = Workspace(clean)
    jobs = S.plan(ws, S.Spec(traces=["tiny"], models=["v8", "mmap_lock"], machines=["broadwell-2s"], cpus=[1, 2]))
    status = {j.run_id: "replayed" for j in jobs}
    read = S.report(ws, jobs, status)
    assert S.report(ws, jobs, status, {j.run_id: metrics_of(ws, j.run_id) for j in jobs}) == read
    one = jobs[0]
    sentinel = {"faults_per_sec": 1234.0, "faults_per_cpu": 5678.0, "fault_ns": 9.0, "fallback_pct": 1.5}
    rep = S.report(ws, jobs, status, {one.run_id: sentinel})
    block = next(b for b in rep["compare"] if b["cpus"] == one.cpus)
    col = block["models"].index(one.model)
    mine = {s["metric"]: s["value"] for s in block["stats"] if s["label"] == block["models"][col]
            and s["kind"] in ("Hmean", "Amean")}
    assert mine == {"faults/sec": 1234.0, "faults/cpu": 5678.0, "fault-ns": 9.0, "fallback-pct": 1.5}
    others = [b for b in rep["compare"] if b["cpus"] != one.cpus]
    assert others and others == [b for b in read["compare"] if b["cpus"] != one.cpus]


@pytest.fixture(scope="module")
def race_ops(tmp_path_factory):
    """The mprotect-race sample's ops: hundreds of faults that fell back, so ``--fault-service
    trace`` resamples their holds (the planner's questions have answers to read)."""
    from replay.cli import main
    from replay.workspace import Workspace

    ws = tmp_path_factory.mktemp("sweep-race") / "ws"
    assert main(["ingest", str(SAMPLES / "mprotect-race.txt.zst"), "-w", str(ws), "--maps",
                 str(SAMPLES / "mprotect-race.maps")]) == 0
    assert main(["ops", "mprotect-race", "-w", str(ws), "-f", "json"]) == 0
    return str(Workspace(ws).ops_file("mprotect-race"))


def test_planning_source_reads_each_question_once_and_answers_as_the_file(race_ops):
    """The planner's ops source gives every job the parameters (so the run id) a plain
    source gives, reading the file once per question however many jobs ask it."""
    from replay.engine import run_params
    from replay.engine.source import OpsSource
    from replay.machines import load_machine
    from replay.models import get_model
    from replay.sweep import _planning_source

    src = _planning_source(race_ops)
    reads = []
    plain_batches = src.batches
    src.batches = lambda cols: (reads.append(tuple(cols)), plain_batches(cols))[1]
    mach = load_machine("broadwell-2s")
    n = 0
    for how in ("trace", "profile", "1500"):
        for m in ("v8", "mmap_lock", "pervma"):
            for cpus, seed in ((1, 0), (4, 1), (8, 2)):
                args = (get_model(m), mach, cpus, seed, "spread", "mprotect-race", "sha", False, how)
                assert run_params(src, *args) == run_params(OpsSource(race_ops), *args)
                n += 1
    assert "trace: median mmap_lock hold of " in run_params(src, get_model("v8"), mach, 1, 0, "spread", "t", "s",
                                                               False, "trace")["fault_service_source"]
    assert n == 27 and 1 <= len(reads) == len(set(reads))  # each question read once, for 28 plans


def test_planning_source_keys_an_answer_by_the_function_and_its_values(race_ops):
    """Two questions of the same columns, or one question closing over two values, are
    answered apart."""
    import polars as pl

    from replay.sweep import _planning_source

    src = _planning_source(race_ops)

    def faults_over(ns):
        return lambda df: df.filter((pl.col("kind").cast(pl.Utf8) == "fault") & (pl.col("hold_ns") > ns)).select(
            pl.len().alias("n"))

    count = src.frame(["kind", "hold_ns"], lambda df: df.select(pl.len().alias("n")))["n"].sum()
    faults = src.frame(["kind", "hold_ns"], lambda df: df.filter(pl.col("kind").cast(pl.Utf8) == "fault").select(
        pl.len().alias("n")))["n"].sum()
    assert count == src.n and 0 < faults < count
    over = [src.frame(["kind", "hold_ns"], faults_over(ns))["n"].sum() for ns in (0, 10_000, 0)]
    assert over[0] == over[2] and over[0] > over[1] and count > over[0]


def _engine_loaded() -> bool:
    """Run in a pool worker: has it loaded the compiled engine?"""
    m = sys.modules.get("replay.engine.loop")
    return m is not None and len(m.run_chunk.overloads) > 0


def test_local_executor_starts_its_workers_warm():
    """The pool's workers start when the executor does (before any job: the sweep plans
    meanwhile) and have loaded the compiled engine before their first task."""
    import replay.sweep as S

    ex = S.LocalExecutor(2)
    try:
        assert len(ex.pool._processes) == 2
        assert ex.pool.submit(_engine_loaded).result(timeout=120)
    finally:
        ex.close()


def test_one_grid_gives_the_plan_and_the_executors_worker_bound(clean, monkeypatch):
    """A model, count or seed named twice is one combination (sweep.grid()); the plan
    makes one job of each, in grid order, and the local executor starts no more workers
    than there are combinations."""
    import replay.sweep as S
    from replay.workspace import Workspace

    spec = S.Spec(traces=["tiny"], models=["v8", "mmap_lock", "v8"], machines=["broadwell-2s"], cpus=[2, 1, 2],
                  iterations=2)
    g = S.grid(spec)
    assert g == [("tiny", "broadwell-2s", m, c, s) for m in ("v8", "mmap_lock") for c in (2, 1) for s in (0, 1)]
    jobs = S.plan(Workspace(clean), spec)
    assert [(j.trace, j.machine, j.model, j.cpus, j.seed) for j in jobs] == g
    made = []
    monkeypatch.setattr(S, "LocalExecutor", lambda n: made.append(n))
    monkeypatch.setattr(S, "default_workers", lambda: 64)
    S.start("local", None, None, spec)
    S.start("local", None, 3, spec)
    assert made == [len(g), 3]
