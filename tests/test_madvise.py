"""A read-mode madvise (MADV_DONTNEED, MADV_FREE, MADV_WILLNEED, ...) as each kernel runs it.

Up to v6.16, mm/madvise.c do_madvise(): madvise_need_mmap_write() is 0 for these, so
``mmap_read_lock(mm)`` for the whole call.  From v6.17 ("mm: use per_vma lock for
MADV_DONTNEED", "mm: madvise: use per_vma lock for MADV_FREE", Barry Song), get_lock_mode()
gives MADV_DONTNEED, MADV_DONTNEED_LOCKED and MADV_FREE the VMA read lock
(try_vma_read_lock(): lock_vma_under_rcu(mm, start), and back to mmap_read_lock() if
``range.end > vma->vm_end``); the other read-mode behaviours keep mmap_read_lock().

Each toy: thread 1's madvise holds its lock 10 us from t=0; thread 2's mprotect of another
VMA starts 1 us later.  mmap_write_lock() waits for the madvise's mmap_read_unlock(), so
its lock wait is about 9 us where the madvise read-locks mmap_lock and about 0 where it
takes only a VMA lock (the mprotect write-locks another VMA).
"""

from __future__ import annotations

import pytest

from engine_harness import BDW, Replay, by_op

HOLD = 10_000
MADV_WILLNEED, MADV_DONTNEED, MADV_FREE = 3, 4, 8


def _ops(advice, covers=(1,)):
    madvise = {"op_id": 0, "tid": 1, "kind": "madvise", "vma_id": covers[0], "vma_ids": list(covers),
               "lock_mode": "read", "advice": advice, "kernel": False, "think_ns": 0, "hold_ns": HOLD}
    # a fault first, so thread 2's mprotect starts 1 us after the madvise
    fault = {"op_id": 1, "tid": 2, "kind": "fault", "vma_id": 9, "kernel": False, "think_ns": 0}
    mprotect = {"op_id": 2, "tid": 2, "kind": "mprotect", "vma_ids": [9], "lock_mode": "write", "kernel": False,
                "think_ns": 1_000, "hold_ns": 1_000}
    return [madvise, fault, mprotect]


def _run(model, ops):
    sim = Replay(model, BDW, 4, ops)
    return by_op(sim.run()), sim


@pytest.mark.parametrize("model", ["mmap_lock", "pervma", "inline-rwsem", "v7", "v8"])
def test_before_v6_17_a_dontneed_read_locks_mmap_lock_for_its_hold(model):
    r, sim = _run(model, _ops(MADV_DONTNEED))
    m, w = r[0], r[2]
    assert HOLD <= m["end_ns"] - m["start_ns"] < HOLD + 1_000  # its hold, and the lock's few lines
    assert m["outcome"] is None  # the faults' counters only
    assert 8_000 < w["lock_wait_ns"] < 10_000  # mmap_write_lock() waited for mmap_read_unlock()
    assert sim.lock_stats()["mm"]["acquisitions"] >= 2


def test_mainline_dontneed_and_free_on_one_vma_take_only_its_vma_lock():
    for advice in (MADV_DONTNEED, MADV_FREE):
        r, sim = _run("mainline", _ops(advice))
        m, w = r[0], r[2]
        assert HOLD <= m["end_ns"] - m["start_ns"] < HOLD + 1_000
        assert w["lock_wait_ns"] < 1_000, advice  # mmap_lock was free
        assert sim.vma(1)["vm_refcnt"] == 1  # vma_end_read() dropped its reference


def test_mainline_dontneed_over_two_vmas_falls_back_to_mmap_read_lock():
    # try_vma_read_lock(): range.end > vma->vm_end -> vma_end_read(); mmap_read_lock()
    r, sim = _run("mainline", _ops(MADV_DONTNEED, covers=(1, 2)))
    assert 8_000 < r[2]["lock_wait_ns"] < 10_000
    assert sim.vma(1)["vm_refcnt"] == 1 and sim.vma(2)["vm_refcnt"] == 1


def test_mainline_willneed_keeps_mmap_read_lock():
    # get_lock_mode(): MADV_WILLNEED is MADVISE_MMAP_READ_LOCK
    r, _ = _run("mainline", _ops(MADV_WILLNEED))
    assert 8_000 < r[2]["lock_wait_ns"] < 10_000


def test_mainline_dontneed_waits_out_a_writer_of_its_vma_then_takes_mmap_read_lock():
    # vma_start_read() sees the VMA write-locked (vm_lock_seq == mm_lock_seq) -> NULL ->
    # take_mmap_read_lock: the madvise runs after the mprotect of its VMA releases mmap_lock
    ops = [{"op_id": 0, "tid": 2, "kind": "mprotect", "vma_ids": [1], "lock_mode": "write", "kernel": False,
            "think_ns": 0, "hold_ns": 5_000},
           {"op_id": 1, "tid": 1, "kind": "madvise", "vma_id": 1, "vma_ids": [1], "lock_mode": "read",
            "advice": MADV_DONTNEED, "kernel": False, "think_ns": 1_000, "hold_ns": HOLD}]
    r, sim = _run("mainline", ops)
    assert 3_000 < r[1]["lock_wait_ns"] < 5_000
    assert r[1]["start_ns"] < r[0]["end_ns"] <= r[1]["end_ns"] - HOLD
