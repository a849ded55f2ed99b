"""Run-queue waits come out of think times: a gap in which a thread was switched out
still runnable (sched_switch prev_state R / R+) is replayed without that wait, which the
replay's own scheduler makes itself (replay/opstream.py runq_intervals, _think).
Hand-built perf script lines (include/trace/events/sched.h's sched_switch format)."""

import polars as pl

from replay.ingest import scan
from replay.ingest.text import TextDecoder
from replay.ops import build_ops

from tests.test_ops import MAPS, L, pf


def switch(tid, t, state, nxt, comm="prog"):
    return L(tid, t, "sched:sched_switch", f"prev_comm={comm} prev_pid={tid} prev_prio=120 prev_state={state} "
                                          f"==> next_comm=other next_pid={nxt} next_prio=120")


def ops_of(lines: str) -> pl.DataFrame:
    ev, rj, _ = TextDecoder(scan.DIALECT_PERF).decode(lines.encode(), 1)
    assert rj.num_rows == 0, rj.to_pylist()
    ops, _, _ = build_ops(pl.from_arrow(ev), "t", MAPS)
    return ops.filter(pl.col("tid") == 101).sort("op_id")


def test_sched_switch_is_typed():
    ev, _, _ = TextDecoder(scan.DIALECT_PERF).decode(switch(101, 1.0, "R+", 102, comm="Thread 1").encode(), 1)
    row = ev.to_pylist()[0]
    assert (row["event"], row["tid"], row["next_tid"], row["prev_state"]) == ("sched_switch", 101, 102, "R+")


def _two_faults(between: str) -> list:
    # thread 101 faults at 1.0 s and at 1.0 s + 100 us; the second fault's think time is the
    # gap, less what ``between`` says it waited runnable
    return ops_of(pf(101, 1.0, 0x7FFF0000) + between + pf(101, 1.0001, 0x7FFF1000))["think_ns"].to_list()


def test_a_preempted_threads_wait_for_its_cpu_is_not_think_time():
    # switched out runnable at +20 us, switched in by thread 102 at +50 us: 30 us less
    gap = _two_faults(switch(101, 1.00002, "R", 102) + switch(102, 1.00005, "S", 101))
    plain = _two_faults("")
    assert plain[1] - gap[1] == 30_000


def test_a_sleep_stays_think_time():
    gap = _two_faults(switch(101, 1.00002, "S", 102) + switch(102, 1.00005, "S", 101))
    assert gap == _two_faults("")


def test_a_switch_in_the_trace_does_not_see_is_bounded_by_the_thread_running_again():
    # preempted (R+) at +20 us, switched back in by a task outside the trace: its next
    # switch out (+70 us, asleep) shows it ran again - 50 us at most; with nothing after
    # it, the next fault (+100 us) ends the wait: 80 us
    bounded = _two_faults(switch(101, 1.00002, "R+", 102) + switch(101, 1.00007, "S", 0))
    open_ = _two_faults(switch(101, 1.00002, "R+", 102))
    plain = _two_faults("")
    assert (plain[1] - bounded[1], plain[1] - open_[1]) == (50_000, 80_000)


def test_an_open_wait_ends_at_the_threads_next_op():
    # preempted at +20 us and never seen switched in: the fault at +100 us ends the wait
    # (80 us); the gap after that fault is all think time
    lines = pf(101, 1.0, 0x7FFF0000) + switch(101, 1.00002, "R+", 102) + pf(101, 1.0001, 0x7FFF1000) \
        + pf(101, 1.0002, 0x7FFF0000)
    plain = pf(101, 1.0, 0x7FFF0000) + pf(101, 1.0001, 0x7FFF1000) + pf(101, 1.0002, 0x7FFF0000)
    got, want = ops_of(lines)["think_ns"].to_list(), ops_of(plain)["think_ns"].to_list()
    assert (want[1] - got[1], want[2] - got[2]) == (80_000, 0)


def test_sched_switch_names_no_thread():
    # an ftrace recording lets through a switch from a task outside the trace (here tid
    # 7) to a traced one: that task is no thread of the trace
    lines = pf(101, 1.0, 0x7FFF0000) + switch(7, 1.00001, "R", 101) + pf(101, 1.0001, 0x7FFF1000)
    ev, _, _ = TextDecoder(scan.DIALECT_PERF).decode(lines.encode(), 1)
    _, _, rep = build_ops(pl.from_arrow(ev), "t", MAPS)
    assert rep.threads == 1
