"""VM_FAULT_RETRY (replay/engine/retry.py): which faults return it, under which lock, and
what the retry costs - each case small enough to check by hand.

The toys run on the harness's Broadwell profile with one service time (SLOW: 100 us) and
no fault path, so a fault's time is its service time plus what the lock path adds."""

from __future__ import annotations

import pytest

from engine_harness import BDW, MM, PER_VMA, Replay, by_op, mk

FT = 300_000  # a recorded first try: 300 us, most of it asleep on the folio


def fault(tid, vma, kind, think=0, **kw):
    return {**mk([(tid, "fault", vma, think, None)])[0], "fault_kind": kind, **kw}


def ops(*rows):
    out = []
    for i, r in enumerate(rows):
        out.append({**r, "op_id": i})
    return out


def replay(model, rows, cpus=2):
    r = Replay(model, BDW, cpus, rows, service=1000.0)
    res = by_op(r.run())
    return res, r.lock_stats()


@pytest.mark.parametrize("model", [m for m in PER_VMA if m != "pervma"] + ["pervma@6.7"])
def test_a_special_mapping_fault_retries_under_the_vma_lock_at_once(model):
    """[vdso]/[vvar]: vmf_can_call_fault() - VM_FAULT_RETRY, no wait; then mmap_lock."""
    res, lk = replay(model, ops(fault(1, 1, "special")))
    f = res[0]
    assert (f["outcome"], f["fallback"], f["attempts"]) == ("retry", True, 1)
    assert lk["mm"]["acquisitions"] == 1  # served under mmap_lock, once
    assert f["sleep_ns"] == 0  # nothing to wait for


def test_a_special_mapping_fault_does_not_retry_under_mmap_lock():
    """vmf_can_call_fault() tests FAULT_FLAG_VMA_LOCK: under mmap_lock the call completes."""
    res, lk = replay("mmap_lock", ops(fault(1, 1, "special")))
    assert res[0]["outcome"] is None and not res[0]["fallback"]
    assert lk["mm"]["acquisitions"] == 1


@pytest.mark.parametrize("model", ["mainline", "pervma@6.7"])
def test_a_page_cache_wait_drops_the_vma_lock_sleeps_and_retries(model):
    """A file fault the trace shows falling back with no writer in flight: its recorded
    first try (300 us) asleep with the VMA lock dropped, RETRY, then one mmap_lock call."""
    res, lk = replay(model, ops(fault(1, 1, "file", observed_fallback=True, first_try_ns=FT)))
    f = res[0]
    assert (f["outcome"], f["fallback"]) == ("retry", True)
    assert lk["mm"]["acquisitions"] == 1
    # asleep for the wait, then the wake-up latency until it runs (sched.WAKEUP_NS)
    assert f["sleep_ns"] == pytest.approx(FT + 2000.0)
    assert f["lock_wait_ns"] == 0  # an I/O wait is no lock wait
    assert FT + 1000.0 < f["end_ns"] - f["start_ns"] < FT + 2000.0 + 1000.0 + 2000.0


def test_under_mmap_lock_the_page_cache_wait_drops_mmap_lock_and_retakes_it():
    """maybe_unlock_mmap_for_io() -> mmap_read_unlock(); goto retry: two acquisitions."""
    res, lk = replay("mmap_lock", ops(fault(1, 1, "file_io", first_try_ns=FT)))
    assert lk["mm"]["acquisitions"] == 2
    assert res[0]["sleep_ns"] == pytest.approx(FT + 2000.0)
    assert res[0]["outcome"] is None  # no VMA_LOCK_* event without CONFIG_PER_VMA_LOCK


@pytest.mark.parametrize("model", ["mmap_lock", "mainline"])
def test_a_writer_is_not_held_up_by_a_fault_waiting_for_the_page_cache(model):
    """The wait is with the lock dropped: a writer that comes during it takes mmap_lock
    (and write-locks the VMA) at once, not after the 300 us."""
    rows = ops(fault(1, 1, "file_io", first_try_ns=FT),
               *[{**w, "tid": 2} for w in mk([(2, "mprotect", [1], 50_000, 1000)])])
    res, lk = replay(model, rows)
    assert res[1]["lock_wait_ns"] < 10_000
    assert res[1]["end_ns"] < res[0]["end_ns"]


def test_a_fallback_with_a_writer_of_its_vma_in_flight_is_no_page_cache_retry():
    """ops.writer_in_flight(): a fallback during a writer of its VMA is an abort's shape;
    the engine simulates the abort itself and adds no retry."""
    w = {**mk([(2, "mprotect", [1], 0, 1000)])[0], "start_ns": 1000, "end_ns": 900_000}
    f = fault(1, 1, "file", observed_fallback=True, first_try_ns=FT, start_ns=2000, end_ns=400_000)
    res, _ = replay("mainline", ops(w, f))
    assert res[1]["sleep_ns"] == 0 and res[1]["outcome"] != "retry"
    # the same fault with the writer elsewhere in time is a retry
    w2 = {**w, "start_ns": 500_000, "end_ns": 600_000}
    res, _ = replay("mainline", ops(w2, {**f, "start_ns": 2000, "end_ns": 400_000}))
    assert res[1]["outcome"] == "retry"


def test_an_unobserved_file_fault_and_a_kernel_mode_one_do_not_retry_for_the_page_cache():
    res, lk = replay("mainline", ops(fault(1, 1, "file"), fault(1, 1, "file", observed_fallback=True, first_try_ns=FT,
                                                                  kernel=True)))
    assert res[0]["outcome"] == "success" and res[0]["sleep_ns"] == 0
    assert res[1]["outcome"] is None and res[1]["sleep_ns"] == 0  # kernel mode: mmap_lock, observed or not
    assert lk["mm"]["acquisitions"] == 1


def test_a_major_fault_waits_once():
    """After the wait the second call completes (FAULT_FLAG_TRIED): one RETRY, one sleep."""
    res, lk = replay("mainline", ops(fault(1, 1, "file_io", first_try_ns=FT), fault(1, 1, "file_io")))
    assert [res[i]["outcome"] for i in (0, 1)] == ["retry", "retry"]
    assert res[0]["sleep_ns"] == pytest.approx(FT + 2000.0)
    assert res[1]["sleep_ns"] == 0  # no first try recorded: no wait known
    assert lk["mm"]["acquisitions"] == 2


# -- the per-VMA lock's coverage by release (retry.py) -------------------------------------------

def test_up_to_6_5_a_vma_that_is_not_anonymous_aborts():
    """6.4's lock_vma_under_rcu(): "if (!vma_is_anonymous(vma)) goto inval;" - an ABORT,
    no VMA lock taken; the page cache's wait then comes under mmap_lock (2 acquisitions)."""
    rows = ops(fault(1, 1, "special"), fault(1, 2, "file"), fault(1, 3, "file_io", first_try_ns=FT), fault(1, 4, "anon"))
    res, lk = replay("pervma", rows)  # release 6.4
    assert [res[i]["outcome"] for i in range(4)] == ["abort", "abort", "abort", "success"]
    assert lk["mm"]["acquisitions"] == 4  # 1 + 1 + 2: the major fault drops mmap_lock for its read
    assert res[2]["sleep_ns"] == pytest.approx(FT + 2000.0)
    assert not any(k.startswith("vma") and v["acquisitions"] and k != "vma:4" for k, v in lk.items())
    res, _ = replay("pervma@6.2", rows)  # a posting measured on 6.2: the same test
    assert res[1]["outcome"] == "abort"


def test_in_6_6_file_writes_and_misses_retry_at_once_and_fault_around_hits_stay():
    """6.6's do_read_fault() maps what fault-around finds, else returns VM_FAULT_RETRY before
    ->fault(); do_cow_fault()/do_shared_fault() return it at once.  A major fault thus
    retries twice: at once under the VMA lock, then dropping mmap_lock for its read."""
    rows = ops(fault(1, 1, "file"), {**fault(1, 1, "file"), "write": True}, fault(1, 2, "file_io", first_try_ns=FT))
    res, lk = replay("pervma@6.6", rows)
    assert [res[i]["outcome"] for i in range(3)] == ["success", "retry", "retry"]
    assert res[1]["sleep_ns"] == 0
    assert res[2]["sleep_ns"] == pytest.approx(FT + 2000.0)
    assert lk["mm"]["acquisitions"] == 1 + 2
    res, lk = replay("pervma@6.7", rows)  # vmf_can_call_fault(): all three under the VMA lock
    assert [res[i]["outcome"] for i in range(3)] == ["success", "success", "retry"]
    assert lk["mm"]["acquisitions"] == 1
