"""The workspace under kill -9, concurrent commands and a hostile filesystem.

Kills are real: the CLI runs in a subprocess with REPLAY_FAULT_POINT naming a step of a
commit, and SIGKILLs itself there (``NAME:stop`` SIGSTOPs instead, so two commands can
be interleaved at a chosen step without timing).  What a reader sees is then checked
from this process, which wrote nothing: the traces and runs the CLI lists, and the files
``Workspace.committed_files()`` gives the SQL views, must describe only whole commits.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import DATA, SAMPLES
from replay.workspace import RUN_KEYED, TRACE_KEYED, Workspace

OLD, NEW = DATA / "perf_default.txt", DATA / "tracecmd.txt"  # two different traces (different sha256)
RUN = ("run", "--model", "v8", "--trace", "t", "--machine", "local-2vcpu")


def _env(fault=None, **extra):
    env = {k: v for k, v in os.environ.items() if k != "REPLAY_FAULT_POINT"}
    if fault:
        env["REPLAY_FAULT_POINT"] = fault
    env.update(extra)
    return env


def _argv(ws, args):
    return [sys.executable, "-m", "replay", *map(str, args), "-w", str(ws)]


def replay(ws, *args, fault=None, **kw):
    """The real CLI in a process of its own."""
    return subprocess.run(_argv(ws, args), capture_output=True, text=True, env=_env(fault), cwd=ws.parent,
                          timeout=120, **kw)


def spawn_stopped(ws, *args, point):
    """Start the CLI and wait until it has stopped itself at ``point``."""
    p = subprocess.Popen(_argv(ws, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(f"{point}:stop"), cwd=ws.parent)
    _, status = os.waitpid(p.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"{args} did not stop at {point} (status {status:#x}): {p.stderr.read()}"
    return p


def resume(p):
    os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def _key(f: Path) -> str:
    return f.parent.name.split("=", 1)[1]


def visible(cli, ws):
    """What a reader sees, checked whole: ({trace_id: traces row}, {run_id: runs row}).

    Every listed trace has its events and rejects, ops and vmas come as a pair, every
    listed run has its results, lock_stats, line_stats and line_cpu, and names a listed trace by
    the content (sha256) it was replayed from."""
    w = Workspace(ws)
    rc, out, err = cli("traces", "-w", ws, "-f", "json")
    assert rc == 0, err
    traces = {r["trace_id"]: r for r in json.loads(out)}
    rc, out, err = cli("runs", "-w", ws, "-f", "json")
    assert rc == 0, err
    runs = {r["run_id"]: r for r in json.loads(out)}
    keys = {ds: sorted(_key(f) for f in w.committed_files(ds)) for ds in TRACE_KEYED + RUN_KEYED}
    for ds in ("traces", "events", "rejects"):
        assert keys[ds] == sorted(traces), (ds, keys)
    assert keys["ops"] == keys["vmas"] and set(keys["ops"]) <= set(traces), keys
    for ds in RUN_KEYED:
        assert keys[ds] == sorted(runs), (ds, keys)
    for r in runs.values():
        assert r["trace_id"] in traces and traces[r["trace_id"]]["sha256"] == r["trace_sha256"], r
    return traces, runs


def leftovers(ws):
    """Everything on disk a reader does not see: uncommitted partitions and staging."""
    w = Workspace(ws)
    seen = {f.parent for ds in TRACE_KEYED + RUN_KEYED for f in w.committed_files(ds)}
    parts = {p for ds in TRACE_KEYED + RUN_KEYED for p in (ws / ds).glob("*=*")}
    return sorted(str(p.relative_to(ws)) for p in parts - seen) + sorted(p.name for p in ws.glob(".stage-*"))


def _sha(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(rc, err, *needles, code=1):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code and len(lines) == 1 and lines[0].startswith("replay: error: "), (rc, err)
    assert "internal error" not in err and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -- kill -9 at every step of every commit ---------------------------------------------

INGEST_POINTS = ["ingest.staged", "ingest.locked", "ingest.events_placed", "ingest.rejects_placed", "ingest.committed"]


@pytest.mark.parametrize("point", INGEST_POINTS)
def test_ingest_killed_at_each_step(cli, ws, point):
    assert cli("ingest", NEW, "-n", "base", "-w", ws)[0] == 0
    p = replay(ws, "ingest", OLD, "-n", "t", fault=point)
    assert p.returncode == -signal.SIGKILL, p.stderr
    traces, _ = visible(cli, ws)
    assert ("t" in traces) == (point == "ingest.committed")
    assert leftovers(ws)  # at least the dead process's staging directory
    assert cli("ingest", DATA / "ftrace_tgid.txt", "-n", "other", "-w", ws)[0] == 0  # the next writer cleans up
    assert leftovers(ws) == []
    rc, _, err = cli("ingest", OLD, "-n", "t", "-w", ws)
    if point == "ingest.committed":
        _one_line_error(rc, err, "already in")
    else:
        assert rc == 0, err
    traces, _ = visible(cli, ws)
    assert traces["t"]["sha256"] == _sha(OLD) and leftovers(ws) == []


# (point, what is listed after the kill: t's content, how many of t's two runs)
REPLACE_POINTS = [
    ("ingest.staged", "old", 2), ("ingest.locked", "old", 2), ("replace.run_removed", "old", 1),
    ("replace.runs_removed", "old", 0), ("replace.record_removed", None, 0), ("replace.data_removed", None, 0),
    ("ingest.events_placed", None, 0), ("ingest.rejects_placed", None, 0), ("ingest.committed", "new", 0),
]


def _trace_with_two_runs(cli, ws):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    for model in ("v8", "mmap_lock"):
        rc, _, err = cli(*RUN[:2], model, *RUN[3:], "-w", ws)
        assert rc == 0, err
    traces, runs = visible(cli, ws)
    assert len(runs) == 2 and {r["trace_id"] for r in runs.values()} == {"t"}


@pytest.mark.parametrize("point,content,nruns", REPLACE_POINTS)
def test_replace_killed_at_each_step(cli, ws, point, content, nruns):
    _trace_with_two_runs(cli, ws)
    p = replay(ws, "ingest", NEW, "-n", "t", "--replace", fault=point)
    assert p.returncode == -signal.SIGKILL, p.stderr
    traces, runs = visible(cli, ws)
    sha = {"old": _sha(OLD), "new": _sha(NEW), None: None}[content]
    assert (traces["t"]["sha256"] if "t" in traces else None) == sha
    assert len(runs) == nruns
    assert cli("ingest", DATA / "ftrace_tgid.txt", "-n", "other", "-w", ws)[0] == 0
    assert leftovers(ws) == []
    rc, _, err = cli("ingest", NEW, "-n", "t", "--replace", "-w", ws)
    assert rc == 0, err
    traces, runs = visible(cli, ws)
    assert traces["t"]["sha256"] == _sha(NEW) and runs == {} and leftovers(ws) == []


def test_replace_drops_the_old_traces_runs_and_ops(cli, ws):
    _trace_with_two_runs(cli, ws)
    rc, _, err = cli("ingest", NEW, "-n", "t", "--replace", "-w", ws)
    assert rc == 0, err
    traces, runs = visible(cli, ws)
    assert traces["t"]["sha256"] == _sha(NEW) and runs == {}
    assert not Workspace(ws).committed_files("ops") and leftovers(ws) == []


RUN_POINTS = ["run.staged", "run.results_placed", "run.lock_stats_placed", "run.line_stats_placed",
              "run.line_cpu_placed", "run.committed"]


@pytest.mark.parametrize("point", RUN_POINTS)
def test_run_killed_at_each_step(cli, ws, point):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    assert cli("ops", "t", "-w", ws)[0] == 0
    p = replay(ws, *RUN, "-f", "json", fault=point)
    assert p.returncode == -signal.SIGKILL, p.stderr
    _, runs = visible(cli, ws)
    assert len(runs) == (point == "run.committed")
    assert leftovers(ws)
    rc, _, err = cli(*RUN[:2], "mmap_lock", *RUN[3:], "-w", ws)  # another run: the next writer
    assert rc == 0, err
    assert leftovers(ws) == []
    rc, out, err = cli(*RUN, "-w", ws, "-f", "json")
    assert rc == 0, err
    _, runs = visible(cli, ws)
    assert json.loads(out)["run_id"] in runs and len(runs) == 2 and leftovers(ws) == []


@pytest.mark.parametrize("point", ["ops.staged", "ops.vmas_placed", "ops.committed"])
def test_ops_rebuild_killed_at_each_step(cli, ws, point):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    assert cli("ops", "t", "-w", ws)[0] == 0
    p = replay(ws, "ops", "t", "--same-mm", fault=point)
    assert p.returncode == -signal.SIGKILL, p.stderr
    visible(cli, ws)  # ops and vmas of two different builds are never shown together
    w = Workspace(ws)
    if point == "ops.vmas_placed":
        assert not w.committed_files("ops") and not w.committed_files("vmas")
    else:
        assert len(w.committed_files("ops")) == 1
    rc, _, err = cli(*RUN, "-w", ws)  # the next writer cleans up; run rebuilds missing ops
    assert rc == 0, err
    assert leftovers(ws) == [] and len(w.committed_files("ops")) == 1
    assert cli("ops", "t", "--same-mm", "-w", ws)[0] == 0
    visible(cli, ws)
    assert leftovers(ws) == []


def test_orphans_of_dead_processes_are_cleaned_by_the_next_writer(cli, ws):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    rc, out, _ = cli(*RUN, "-w", ws, "-f", "json")
    rid = json.loads(out)["run_id"]
    w = Workspace(ws)
    # what a writer killed before its commit record leaves: data without a record
    for ds, key in (("results", "run_id=deadbeef0000"), ("events", "trace_id=gone")):
        d = ws / ds / key
        d.mkdir(parents=True)
        (d / "part-0.parquet").write_bytes((ws / ds / (f"run_id={rid}" if ds == "results" else "trace_id=t")
                                            / "part-0.parquet").read_bytes())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (ws / f".stage-{dead.stdout.strip()}-x").mkdir()
    assert len(leftovers(ws)) == 3 and len(list((ws / "results").glob("*/*.parquet"))) == 2
    assert cli("traces", "-w", ws)[0] == 0 and cli("runs", "-w", ws)[0] == 0
    assert len(leftovers(ws)) == 3  # readers never clean (nor lock)
    assert cli("ingest", NEW, "-n", "other", "-w", ws)[0] == 0
    assert leftovers(ws) == [] and [_key(f) for f in w.committed_files("results")] == [rid]


# -- concurrent commands -----------------------------------------------------------------


def test_two_ingests_of_one_name_one_wins_waiting_outside_the_lock(cli, ws):
    assert cli("ingest", NEW, "-n", "base", "-w", ws)[0] == 0
    a = spawn_stopped(ws, "ingest", OLD, "-n", "same", point="ingest.staged")  # parsed, not yet committed
    b = replay(ws, "ingest", NEW, "-n", "same")
    assert b.returncode == 0, b.stderr
    rc, _, err = resume(a)
    _one_line_error(rc, err, "'same' is already in")
    traces, _ = visible(cli, ws)
    assert traces["same"]["sha256"] == _sha(NEW) and leftovers(ws) == []


def test_two_ingests_of_one_name_one_wins_waiting_on_the_lock(cli, ws):
    assert cli("ingest", NEW, "-n", "base", "-w", ws)[0] == 0
    a = spawn_stopped(ws, "ingest", OLD, "-n", "same", point="ingest.locked")  # holds the lock
    b = subprocess.Popen(_argv(ws, ["ingest", NEW, "-n", "same"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env(), cwd=ws.parent)
    rc, _, err = resume(a)
    assert rc == 0, err
    _, err = b.communicate(timeout=120)
    _one_line_error(b.returncode, err, "'same' is already in")
    traces, _ = visible(cli, ws)
    assert traces["same"]["sha256"] == _sha(OLD) and leftovers(ws) == []


@pytest.mark.parametrize("model_b", ["v8", "mmap_lock"])
def test_concurrent_runs_of_one_trace(cli, ws, model_b):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    a = spawn_stopped(ws, *RUN, "-f", "json", point="run.staged")  # built the ops, replayed, not committed
    b = replay(ws, *RUN[:2], model_b, *RUN[3:], "-f", "json")
    assert b.returncode == 0, b.stderr
    rc, out, err = resume(a)
    assert rc == 0, err
    _, runs = visible(cli, ws)
    assert set(runs) == {json.loads(out)["run_id"], json.loads(b.stdout)["run_id"]}
    assert len(runs) == (1 if model_b == "v8" else 2) and leftovers(ws) == []


def test_run_waiting_on_the_lock_of_another_runs_commit(cli, ws):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    assert cli("ops", "t", "-w", ws)[0] == 0
    a = spawn_stopped(ws, *RUN, point="run.results_placed")  # holds the lock mid-commit
    for reader in (("traces",), ("runs", "-f", "json")):  # readers do not wait for it
        p = replay(ws, *reader)
        assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []  # and see none of its commit
    b = subprocess.Popen(_argv(ws, [*RUN[:2], "mmap_lock", *RUN[3:]]), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(), cwd=ws.parent)
    rc, _, err = resume(a)
    assert rc == 0, err
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    _, runs = visible(cli, ws)
    assert len(runs) == 2 and leftovers(ws) == []


def test_concurrent_ops_builds_of_one_trace(cli, ws):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    a = spawn_stopped(ws, "ops", "t", point="ops.vmas_placed")
    b = subprocess.Popen(_argv(ws, ["ops", "t", "--same-mm"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env(), cwd=ws.parent)
    rc, _, err = resume(a)
    assert rc == 0, err
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    visible(cli, ws)
    assert len(Workspace(ws).committed_files("ops")) == 1 and leftovers(ws) == []


@pytest.mark.parametrize("cmd,point", [(RUN, "run.staged"), (("ops", "t"), "ops.staged")])
def test_a_trace_replaced_under_a_run_or_ops_build(cli, ws, cmd, point):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    if cmd is RUN:
        assert cli("ops", "t", "-w", ws)[0] == 0
    a = spawn_stopped(ws, *cmd, point=point)  # has read the old trace
    b = replay(ws, "ingest", NEW, "-n", "t", "--replace")
    assert b.returncode == 0, b.stderr
    rc, _, err = resume(a)
    _one_line_error(rc, err, "'t'", "replaced")
    traces, runs = visible(cli, ws)
    assert traces["t"]["sha256"] == _sha(NEW) and runs == {} and leftovers(ws) == []
    assert not Workspace(ws).committed_files("ops")


# -- full disks, read-only and forbidden workspaces, missing directories -----------------


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs; yields a function (size, ro=False) -> its directory."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size="64k", ro=False):
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)])


def remount(d, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(d)], check=True)


def fill(d):
    """Fill a filesystem to the last byte."""
    with open(d / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)


def test_disk_full_during_ingest(cli, tmpfs):
    ws = tmpfs("64k") / "ws"
    rc, _, err = cli("ingest", SAMPLES / "mprotect-race.txt.zst", "--maps", SAMPLES / "mprotect-race.maps", "-w", ws)
    _one_line_error(rc, err, f"cannot write {ws}: No space left on device")
    assert leftovers(ws) == [] and visible(cli, ws) == ({}, {})


def test_disk_full_during_run_and_ops(cli, tmpfs):
    ws = tmpfs("4m") / "ws"
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    fill(ws.parent)
    rc, _, err = cli("ops", "t", "-w", ws)
    _one_line_error(rc, err, "No space left on device", str(ws))
    rc, _, err = cli(*RUN, "-w", ws)
    _one_line_error(rc, err, "No space left on device", str(ws))
    assert leftovers(ws) == [] and len(visible(cli, ws)[0]) == 1
    (ws.parent / "filler").unlink()
    assert cli(*RUN, "-w", ws)[0] == 0 and len(visible(cli, ws)[1]) == 1


def test_disk_full_writing_output_files(cli, ws, tmpfs):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    assert cli("ops", "t", "-w", ws)[0] == 0
    full = tmpfs("64k")
    fill(full)
    for args in (("sql", "SELECT * FROM events"), ("query", "observed_fallbacks")):
        for fmt in ("csv", "parquet"):
            dest = full / f"out.{fmt}"
            rc, _, err = cli(*args, "-w", ws, "-f", fmt, "-o", dest)
            _one_line_error(rc, err, f"cannot write {dest}: No space left on device")
            assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_read_only_workspace(cli, tmpfs):
    ws = tmpfs("4m") / "ws"
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    remount(ws.parent, "ro")
    for args in (("ingest", NEW, "-n", "u"), ("ingest", NEW, "-n", "t", "--replace"), ("ops", "t"), RUN,
                 ("synth", "pft", "--threads", "2", "--pages", "8"),
                 ("sweep", "--models", "v8", "--cpus", "1", "--trace", "t")):
        rc, _, err = cli(*args, "-w", ws)
        _one_line_error(rc, err, str(ws), "Read-only file system")
    rc, out, _ = cli("traces", "-w", ws, "-f", "json")  # readers need no write access
    assert rc == 0 and [r["trace_id"] for r in json.loads(out)] == ["t"]
    assert cli("runs", "-w", ws)[0] == 0
    remount(ws.parent, "rw")
    assert cli(*RUN, "-w", ws)[0] == 0


def test_immutable_workspace(cli, ws):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(ws)], capture_output=True).returncode:
        pytest.skip("chattr +i needs root and a filesystem that supports it")
    try:
        rc, _, err = cli("ingest", NEW, "-n", "u", "-w", ws)
        _one_line_error(rc, err, str(ws), "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(ws)])
    assert leftovers(ws) == []


def test_permission_denied_workspace(cli):
    """A workspace another user owns: a real EACCES (root ignores permission bits, so
    the command runs as nobody)."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a command as another user")
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)
        ws = top / "ws"
        assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
        cache = top / "numba"
        cache.mkdir(mode=0o777)
        cache.chmod(0o777)
        for args in (("ingest", NEW, "-n", "u"), RUN):
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *_argv(ws, args)],
                               capture_output=True, text=True, cwd=top, env=_env(NUMBA_CACHE_DIR=str(cache)), timeout=120)
            _one_line_error(p.returncode, p.stderr, str(ws), "Permission denied")
        assert leftovers(ws) == []
    finally:
        subprocess.run(["rm", "-rf", str(top)])


def test_output_into_a_missing_directory(cli, ws, tmp_path):
    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    assert cli(*RUN, "-w", ws)[0] == 0
    missing = tmp_path / "no" / "such"
    for args, name in ((("sql", "SELECT 1 AS x"), "out.csv"), (("query", "throughput"), "out.json"),
                       (("plot", "throughput", "--trace", "t"), "out.png")):
        dest = missing / name
        rc, _, err = cli(*args, "-w", ws, "-o", dest, *(("-f", "json") if name.endswith("json") else ()))
        _one_line_error(rc, err, f"cannot write {dest}: No such file or directory")
    assert not (tmp_path / "no").exists()
    rc, _, err = cli("sql", "SELECT 1 AS x", "-w", ws, "-o", tmp_path)  # a directory
    _one_line_error(rc, err, f"cannot write {tmp_path}: Is a directory")
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))


def test_an_error_inside_a_commit_leaves_nothing(cli, ws, monkeypatch):
    """A write that fails half-way through a commit (injected: renames rarely fail on a
    real full disk) is undone before the lock is released."""
    assert cli("ingest", NEW, "-n", "base", "-w", ws)[0] == 0
    for point in ("ingest.events_placed", "ingest.rejects_placed"):
        monkeypatch.setenv("REPLAY_FAULT_POINT", f"{point}:ENOSPC")
        rc, _, err = cli("ingest", OLD, "-n", "t", "-w", ws)
        _one_line_error(rc, err, "No space left on device", str(ws))
        monkeypatch.delenv("REPLAY_FAULT_POINT")
        traces, _ = visible(cli, ws)
        assert list(traces) == ["base"] and leftovers(ws) == []
    monkeypatch.setenv("REPLAY_FAULT_POINT", "run.lock_stats_placed:ENOSPC")
    rc, _, err = cli(*RUN[:4], "base", *RUN[5:], "-w", ws)
    _one_line_error(rc, err, "No space left on device")
    monkeypatch.delenv("REPLAY_FAULT_POINT")
    assert visible(cli, ws)[1] == {} and leftovers(ws) == []


@pytest.mark.slow
def test_concurrent_first_runs_both_ingest_the_sample(cli, ws):
    """Two runs on a fresh workspace both ingest the bundled sample on first use: the
    one that loses the name uses the winner's trace."""
    args = ("run", "--model", "v8", "--machine", "local-2vcpu", "-f", "json")
    a = spawn_stopped(ws, *args, point="ingest.staged")
    b = replay(ws, *args)
    assert b.returncode == 0, b.stderr
    rc, out, err = resume(a)
    assert rc == 0, err
    _, runs = visible(cli, ws)
    assert list(runs) == [json.loads(out)["run_id"]] == [json.loads(b.stdout)["run_id"]] and leftovers(ws) == []
