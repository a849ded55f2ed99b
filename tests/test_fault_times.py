"""Per-fault service times from a real recording: perf's minor-faults samples become
``fault_end`` events (ingest/text.py), the op builder pairs each with its thread's fault
into ``service_ns`` (replay/ops.py, service time).  tests/data/perf_fault_end.txt holds
lines of the re-recorded pft-2t; every expected value below is read off those lines."""

import polars as pl

from conftest import DATA
from replay.ingest import scan
from replay.ingest.text import TextDecoder
from replay.ops import build_ops

LINES = (DATA / "perf_fault_end.txt").read_text()


def decode(text: str):
    d = TextDecoder(scan.DIALECT_PERF)
    ev, rj, n = d.decode(text.encode(), 1)
    return pl.from_arrow(ev), rj, n, d.counts


def faults(text: str):
    ops, _, rep = build_ops(decode(text)[0], "t")
    return ops.filter(pl.col("kind") == "fault").sort("op_id"), rep


def ns(secs: str) -> int:
    a, b = secs.split(".")
    return int(a) * 10**9 + int(b)


def test_minor_faults_samples_are_fault_end_events():
    ev, rj, n, c = decode(LINES)
    assert rj.num_rows == 0 and n == c.lines == c.parsed == 58  # every line an event
    assert c.per_event["fault_end"] == 18 and c.per_event["page_fault_user"] == 18
    end = ev.filter(pl.col("event") == "fault_end")
    assert end["tracepoint"].unique().to_list() == ["minor-faults"]
    first = end.row(0, named=True)  # "pft 11288/11288 20938.740767169:  1  minor-faults:  7f6c5d7c5b70  7f6c5d7c5b70"
    assert (first["seq"], first["pid"], first["tid"], first["ts_ns"]) == (2, 11288, 11288, ns("20938.740767169"))
    assert first["address"] == 0x7F6C5D7C5B70 and first["ip"] == 0x7F6C5D7C5B70 and first["cpu"] is None
    kernel = end.filter(pl.col("ip") == 0xFFFFFFFF82256C64).row(0, named=True)  # the kernel-mode fault's end
    assert kernel["address"] == 0x7F6C5D74CDD5 and kernel["tid"] == 11288


def test_each_fault_gets_its_completing_calls_time():
    f, rep = faults(LINES)
    assert rep.fault_ends_unpaired == 0
    svc = dict(zip(f["start_ns"].to_list(), f["service_ns"].to_list()))
    # served under the VMA lock: from the fault's entry to its minor-faults sample
    assert svc[ns("20938.740752401")] == ns("20938.740767169") - ns("20938.740752401") == 14768
    # fell back (start_locking, acquire_returned, end, released): from the acquire
    fb = f.filter(pl.col("start_ns") == ns("20938.740933019")).row(0, named=True)
    assert fb["observed_fallback"] and fb["service_ns"] == ns("20938.740942227") - ns("20938.740937779") == 4448
    assert fb["hold_ns"] == ns("20938.740943429") - ns("20938.740937779")  # the hold: as before
    # kernel mode (no VMA lock: straight to lock_mmap): from its acquire too
    assert svc[ns("20939.215551237")] == ns("20939.215560995") - ns("20939.215554213") == 6782
    # the last fault ended before the exit's mmap_lock read lock: not its fallback
    last = f.row(-1, named=True)
    assert last["service_ns"] == 11352 and last["observed_fallback"] is False
    assert last["observed_anon_prepare"] is False and last["end_ns"] is None and last["hold_ns"] is None
    # 19 faults, 18 samples: the fault cut off at line 40 (its acquire_returned is the
    # excerpt's last line before the jump to the trace's end) has no end, so no time
    assert f.height == 19 and f["service_ns"].null_count() == 1
    assert f.filter(pl.col("service_ns").is_null())["start_ns"].to_list() == [ns("20938.740996269")]


def test_a_fault_end_with_no_fault_of_its_own_is_counted_not_paired():
    lines = LINES.splitlines(keepends=True)
    # drop the first fault: its minor-faults sample has no open fault on the thread
    f, rep = faults("".join(lines[1:]))
    assert f.height == 18 and rep.fault_ends_unpaired == 1
    # a sample at another address than the open fault's is not that fault's end either
    moved = [ln.replace("minor-faults:     7f6c5d7dee06", "minor-faults:     7f6c5d7dee07") for ln in lines]
    f, rep = faults("".join(moved))
    assert rep.fault_ends_unpaired == 1
    assert f.filter(pl.col("address") == 0x7F6C5D7DEE06)["service_ns"].to_list() == [None]
    # without the samples, the ops are those of a trace recorded without them: no times
    plain, rep = faults("".join(ln for ln in lines if "minor-faults" not in ln))
    assert plain["service_ns"].null_count() == plain.height and rep.fault_ends_unpaired == 0
