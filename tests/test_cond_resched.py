"""A writer preempted at cond_resched() inside its call (replay/engine/sched.py account(),
_pick_eevdf(), cond_resched(); micro.h_work; load._resched_points), Linux 6.18 with preempt=none:

* mm/mprotect.c change_pmd_range() passes ``cond_resched()`` once per PMD of the range;
  the engine splits the call's hold into that many equal parts, a cond_resched() after
  each.  The window below, 0x1f0000 + 128 KiB, spans two PMDs (2 MiB each): points at
  half the hold and at its end.
* TIF_NEED_RESCHED comes from update_curr() (kernel/sched/fair.c): at the tick
  (TICK_NS, 4 ms at HZ=250) and when a task is queued on the CPU
  (check_preempt_wakeup_fair()), once the running task's request - sysctl_sched_base_slice,
  2.8 ms on the 56-CPU Broadwell profile the toys run on (0.7 ms x (1 + ilog2(min(56, 8))))
  - is used up, and only with another task queued (``if (cfs_rq->nr_queued == 1) return;``).
* Then the writer leaves its CPU at the next cond_resched(), its mmap_lock and VMA write
  lock held; the queued thread runs - here a fault on the write-locked VMA, which aborts
  (vma_start_read() sees vm_lock_seq == mm_lock_seq) and falls back to mmap_read_lock(),
  where it sleeps until the writer, back on its CPU, finishes and unlocks.

The toys use one CPU of that machine, so every thread shares it; 100 us a fault (SLOW).
"""

import pytest

from replay.engine.sched import TICK_NS, base_slice_ns

from engine_harness import SLOW, Replay, by_op

WIN = 0x200000 - 0x10000  # 16 pages below a PMD boundary, 16 above
MS = 1_000_000


def _ops(rows):
    """rows: (tid, kind, vma_id, think_ns, hold_ns); an mprotect covers WIN, 128 KiB."""
    out = []
    for i, (tid, kind, vma, think, hold) in enumerate(rows):
        fault = kind == "fault"
        out.append({"op_id": i, "tid": tid, "kind": kind, "vma_id": vma if fault else None,
                    "vma_ids": None if fault else [vma], "kernel": False, "lock_mode": "write",
                    "think_ns": think, "hold_ns": hold, "address": None if fault else WIN,
                    "length": None if fault else 0x20000})
    return out


def test_constants_are_the_kernels():
    assert TICK_NS == 4 * MS  # (NSEC_PER_SEC + HZ/2) / HZ, HZ=250
    assert [base_slice_ns(n) for n in (1, 2, 4, 8, 56)] == [0.7 * MS, 1.4 * MS, 2.1 * MS, 2.8 * MS, 2.8 * MS]


def test_the_tick_preempts_the_writer_at_its_next_cond_resched():
    # t1's mprotect (6 ms hold) runs from 0 with t2 queued behind it since 0.  The
    # cond_resched() at 3 ms finds no TIF_NEED_RESCHED (no tick yet, and the queueing at 0
    # found the request unused); the tick at 4 ms finds it used up (> 2.8 ms) with t2
    # queued: resched.  At the cond_resched() at 6 ms t1 yields, locks held; t2's fault
    # aborts on the write-locked VMA and sleeps on mmap_lock; t1 finishes, t2 gets the lock.
    r = Replay("mainline", SLOW, 1, _ops([(1, "mprotect", 1, 0, 6 * MS), (2, "fault", 1, 0, None)]))
    res = by_op(r.run())
    w, f = res[0], res[1]
    # (the writer's work starts after mmap_write_lock() and vma_start_write(): ~0.1 us of loads
    # and atomics)
    assert f["start_ns"] == pytest.approx(6 * MS, abs=1_000), "t2 runs at the writer's cond_resched() after the tick"
    assert f["outcome"] == "abort" and f["fallback"]
    assert w["sleep_ns"] > 0 and w["end_ns"] > f["start_ns"], "the writer resumed its call after the fault ran"


def test_a_wakeup_preempts_a_writer_whose_request_is_used_up():
    # t1 faults on VMA 2 (0 - 0.1 ms) and yields to t2, which thinks 50 us and leaves the
    # CPU to t1; t1 thinks until 3.2 ms (the trace's gap, less the fault's 0.1 ms).  t2's
    # mprotect runs from 0.15 ms, 3.7 ms hold, cond_resched() at 2.0 and 3.85 ms - before
    # the first tick (4 ms).  t1 is queued again at 3.2 ms: enqueue_entity()'s update_curr()
    # finds t2's 3.05 ms past its 2.8 ms request and renews it (no resched: t2 was alone),
    # so t2 is unprotected; t1, placed at the average (no lag), has a deadline no later
    # than t2's new one, and check_preempt_wakeup_fair()'s pick_eevdf() picks it - resched.
    # t2 yields at 3.85 ms and t1's fault on VMA 1 aborts.
    res = _wakeup(3.2 * MS)
    assert res[1]["start_ns"] == pytest.approx(0.15 * MS, abs=1_000)
    assert res[2]["start_ns"] == pytest.approx(3.85 * MS, abs=1_000) and res[2]["outcome"] == "abort"
    assert res[2]["fallback"] and res[1]["end_ns"] > res[2]["start_ns"] and res[1]["sleep_ns"] > 0


def test_a_writer_inside_its_request_keeps_its_cpu():
    # The same with t1 back at 2.6 ms: t2 has run 2.45 ms of its 2.8 ms request
    # (protect_slice(), RUN_TO_PARITY) - no resched, and no tick before the call ends; t1's
    # fault waits for the whole call and finds the VMA unlocked.
    res = _wakeup(2.6 * MS)
    assert res[2]["start_ns"] >= res[1]["end_ns"]
    assert res[2]["outcome"] == "success" and not res[2]["fallback"]
    assert res[1]["sleep_ns"] == 0


def _wakeup(back):
    r = Replay("mainline", SLOW, 1, _ops([(1, "fault", 2, 0, None), (2, "mprotect", 1, 50_000, int(3.7 * MS)),
                                          (1, "fault", 1, int(back), None)]))
    return by_op(r.run())


def test_a_range_far_beyond_what_is_mapped_is_not_walked_pmd_by_pmd():
    """A munmap of 2^63 bytes walks only its VMAs' page tables (unmap_single_vma() clamps
    to each VMA; zap_pud_range() skips empty PUDs): its cond_resched() points are bounded
    by its recorded time (load.PMD_STEP_MIN_NS a PMD at least), not counted from the range
    in the trillions - which hung the fuzzed trace test_odd_inputs' munmap-len case."""
    import numpy as np

    from replay.engine import load as L

    pts = L._resched_points(["munmap", "mprotect", "mprotect"], [0x7f0000000000, 0x7f0000000000, None],
                            [0x7ffffffffffff000, 4 << 20, 4096], np.array([5_000, 1_000_000, 1_000]),
                            np.array([0, 0, 0]))
    assert list(pts) == [5_000 // L.PMD_STEP_MIN_NS, 2, 0]  # bounded; 4 MiB from a PMD boundary: 2; no range: none


def test_a_woken_task_with_lag_preempts_an_ineligible_writer_inside_its_request():
    """pick_eevdf()'s eligibility and place_entity()'s lag (kernel/sched/fair.c, 6.18).

    t1 faults 0 - 0.1 ms (vruntime 0.1 ms) and yields to t2, whose mprotect of VMA 3 runs
    0.1 - 0.6 ms (vruntime 0.5 ms).  At 0.6 ms t1 runs and goes at once to sleep (its next
    op's 0.3 ms gap): avg_vruntime() is (0.1 + 0.5) / 2 = 0.3 ms, so its lag is +0.2 ms
    (update_entity_lag()).  t2 runs its mprotect of VMA 1 from 0.6 ms, 2 ms hold,
    cond_resched() at 1.6 and 2.6 ms; its request (0 - 2.8 ms) is far from used up and no
    tick comes before 4 ms, so it is protected (RUN_TO_PARITY).  t1 wakes at 0.9 ms:
    place_entity() puts it at 0.8 - 0.2 x (1 + 1) / 1 = 0.4 ms, the average drops to
    0.6 ms, and t2 (0.8 ms) is no longer eligible: pick_eevdf() passes over it for t1 -
    TIF_NEED_RESCHED.  t2 yields at 1.6 ms, its locks held, and t1's fault on VMA 1 aborts.
    (With no eligibility test, or no lag kept, t2 keeps its CPU to the call's end and
    the fault succeeds: tests/README.md.)"""
    r = Replay("mainline", SLOW, 1, _ops([(1, "fault", 2, 0, None), (2, "mprotect", 3, 0, int(0.5 * MS)),
                                          (2, "mprotect", 1, 0, 2 * MS),
                                          (1, "fault", 1, int(0.3 * MS), None)]))
    res = by_op(r.run())
    w, f = res[2], res[3]
    assert w["start_ns"] == pytest.approx(0.6 * MS, abs=1_000)
    assert f["start_ns"] == pytest.approx(1.6 * MS, abs=1_000), "t1 runs at the writer's first cond_resched()"
    assert f["outcome"] == "abort" and f["fallback"]
    assert w["sleep_ns"] > 0 and w["end_ns"] > f["start_ns"]
