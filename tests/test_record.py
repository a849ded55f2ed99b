"""`replay record` for real: perf and tracefs on this machine (skipped where not permitted)."""

import json
import os
import sys

import polars as pl
import pytest

from conftest import needs_perf, needs_tracefs

PROG = "import mmap\nm = mmap.mmap(-1, 1 << 22)\nfor i in range(0, 1 << 22, 4096): m[i] = 1\nm.close()\n"


def _check(ws, name, fmt):
    tr = pl.read_parquet(ws / "traces" / f"trace_id={name}").to_dicts()[0]
    assert tr["format"] == fmt and tr["malformed"] == 0 and tr["lost_events"] == 0
    snap = tr["maps_snapshot"]
    assert snap.startswith("# /proc/") and " at exec of: " in snap
    pid = int(snap.split("/")[2])
    # at exec: the interpreter binary, the dynamic loader and the stack, nothing mmapped yet
    assert os.path.realpath(sys.executable) in snap or "python" in snap
    assert "[stack]" in snap and "ld-linux" in snap and "libc.so" not in snap
    ev = pl.read_parquet(ws / "events" / f"trace_id={name}")
    # the trace starts with the child itself (a sched_switch's task is the one switched
    # out: tracefs's set_event_pid lets a switch to the child from another task through)
    own = ev.filter(pl.col("event") != "sched_switch")
    assert own["tid"][0] == pid
    faults = ev.filter((pl.col("event") == "page_fault_user") & (pl.col("tid") == pid))
    # the 4 MiB loop faults 1024 pages; the rest is the interpreter starting up
    assert faults.height > 1024
    assert ev.filter(pl.col("event") == "sys_enter_mmap").height > 5
    assert (own["pid"] == pid).all()
    return tr


@needs_perf
def test_record_perf(cli, ws, tmp_path):
    keep = tmp_path / "r.perf.data"
    rc, out, err = cli("record", "-w", ws, "-o", "py", "--keep", keep, "--", sys.executable, "-c", PROG)
    assert rc == 0, err
    tr = _check(ws, "py", "perf-data")
    assert tr["kernel"] == os.uname().release and tr["source"].startswith("record: ")
    assert keep.exists() and (tmp_path / "r.perf.data.maps").read_text() == tr["maps_snapshot"]
    # the kept perf.data ingests to the same events
    rc, out, err = cli("ingest", keep, "-w", ws, "--name", "again", "-O", "json")
    assert rc == 0 and json.loads(out)["lines"]["parsed"] == tr["parsed"]


@needs_perf
def test_record_perf_times_every_fault(cli, ws):
    """The fault_end events (perf minor-/major-faults, replay/recording.py): one per
    fault that completed, at its address, so every fault of the mmap loop gets its
    service time; --no-fault-times records none."""
    rc, out, err = cli("record", "-w", ws, "-o", "timed", "--", sys.executable, "-c", PROG)
    assert rc == 0, err
    ev = pl.read_parquet(ws / "events" / "trace_id=timed")
    ends = ev.filter(pl.col("event") == "fault_end")
    assert set(ends["tracepoint"].unique().to_list()) <= {"minor-faults", "major-faults"}
    nfaults = ev.filter(pl.col("event").is_in(["page_fault_user", "page_fault_kernel"])).height
    assert ends.height == nfaults  # every fault of this program completes
    rc, out, err = cli("ops", "timed", "-w", ws, "-f", "json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["faults_with_service"] == s["user_faults"] + s["kernel_faults"] and s["fault_ends_unpaired"] == 0
    ops = pl.read_parquet(ws / "ops" / "trace_id=timed").filter(pl.col("kind") == "fault")
    assert ops["service_ns"].min() > 0 and ops["service_ns"].median() < 100_000
    rc, out, err = cli("record", "-w", ws, "-o", "untimed", "--no-fault-times", "--", sys.executable, "-c", PROG)
    assert rc == 0, err
    ev = pl.read_parquet(ws / "events" / "trace_id=untimed")
    assert ev.filter(pl.col("event") == "fault_end").height == 0 and ev.filter(pl.col("event") == "other").height == 0


@needs_tracefs
def test_record_ftrace(cli, ws):
    rc, out, err = cli("record", "-w", ws, "-o", "pyf", "--ftrace", "--", sys.executable, "-c", PROG)
    assert rc == 0, err
    _check(ws, "pyf", "ftrace")
    assert "warning: no per-fault times in an --ftrace recording" in err
    with open("/sys/kernel/tracing/set_event") as f:
        assert f.read().strip() == ""  # tracefs left as found


def test_record_errors(cli, ws):
    rc, out, err = cli("record", "-w", ws, "-o", "x")
    assert rc == 2 and "needs a command" in err
    rc, out, err = cli("record", "-w", ws, "-o", "x", "--", "/nonexistent/program")
    assert rc == 1 and err.startswith("replay: error: cannot run")


# the workload must not leave a core file behind wherever the tests run
NO_CORE = "import resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"


@needs_perf
@pytest.mark.parametrize("tail,status,what", [
    ("raise SystemExit(3)\n", 1, "the workload exited with status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)\n", 128 + 11, "the workload was killed by SIGSEGV"),
], ids=["exit-3", "sigsegv"])
def test_record_a_failing_workload_keeps_its_trace_and_fails(cli, ws, tail, status, what):
    rc, out, err = cli("record", "-w", ws, "-o", "bad", "--", sys.executable, "-c", NO_CORE + PROG + tail)
    assert rc == status
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"replay: error: {what}") and "'bad'" in lines[0], err
    assert "line accounting" in out  # the recording was ingested all the same: it is real data
    _check(ws, "bad", "perf-data")
