"""sem->wait_lock and the wake-ups of rw_semaphore waiters, as kernel/locking/rwsem.c
has them (v6.4 and v6.18 alike), and what a woken thread does when its CPU is busy.

* rwsem_down_read_slowpath() and rwsem_down_write_slowpath() queue under
  "raw_spin_lock_irq(&sem->wait_lock)"; rwsem_wake() (up_read(), up_write()) and
  rwsem_downgrade_wake() call rwsem_mark_wake() under it.  It is a queued spinlock
  (include/asm-generic/qspinlock.h: a cmpxchg to take it, "smp_store_release(
  &lock->locked, 0)" to drop it) in struct rw_semaphore at offset 20 (pahole -C
  rw_semaphore: count 0, owner 8, osq 16, wait_lock 20, wait_list 24; 40 bytes).
* rwsem_mark_wake() only puts the waiters on a wake_q; after the unlock the waker runs
  wake_up_q() (kernel/sched/core.c): "wake_up_process(task)" for one task after
  another.  So the waker pays one try_to_wake_up() per waiter (BARRIER_WAKE_NS, the
  figure futex_wake()'s wake_q at the start barrier already uses), and waiter i is
  woken i of them after the first.
* A woken thread whose CPU runs another thread in the middle of an op waits for that
  op's end: the op is a page fault or an mm syscall, in the kernel, where wakeup
  preemption (check_preempt_wakeup_fair(), which RUN_TO_PARITY holds back anyway) can
  only act at a preemption point - with preempt=none, cond_resched(), schedule() or the
  return to user mode (replay/engine/sched.py's docstring has the citations).

The toys' times: fault service 100 us (engine_harness.SLOW), line costs from the
Broadwell profile (tens to a hundred ns), the wake-up latency WAKEUP_NS (2 us).
"""

import pytest

from replay.engine.rwsem import (RWSEM_FLAG_WAITERS, RWSEM_READER_BIAS, RWSEM_READER_OWNED, RWSEM_WAKE_ANY,
                                 RWSEM_WRITER_LOCKED, down_read, down_write, rwsem_wake, up_read, wait_lock_lock,
                                 waiter_add)
from replay.engine.sched import DW_NONSPIN, DW_WAIT
from replay.engine.variation import BARRIER_WAKE_NS
from replay.models import get_model

from engine_harness import MODELS, SLOW, Replay, by_op, mk

W = BARRIER_WAKE_NS


# -- where wait_lock is -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_wait_lock_is_where_struct_rw_semaphore_puts_it(model):
    # every rwsem's wait_lock is its count + 20, and the engine takes the line it is on
    m = get_model(model)
    mm = m.layout.mm
    assert mm.fields["mmap_lock.wait_lock"] == mm.fields["mmap_lock.count"] + 20
    r = Replay(model, SLOW, 4, mk([(1, "fault", 1, 0, None)]))
    assert r.mmap_lock["wait_lock_line"] == mm.fields["mmap_lock.wait_lock"] // 64
    if model == "mmap_lock":  # 6.3: count and owner in line 1, wait_lock 132 in line 2 with mmlist
        assert (r.mmap_lock["count_line"], r.mmap_lock["wait_lock_line"]) == (1, 2)
    if model in ("pervma", "mainline"):  # 6.4 and 6.18: wait_lock 204 beside the owner and mm_lock_seq
        assert r.mmap_lock["wait_lock_line"] == r.mmap_lock["owner_line"] == mm.fields["mm_lock_seq"] // 64 == 3
    if model in ("pervma", "inline-rwsem"):  # the VMA's rwsem: a 40-byte vma_lock, or at 192 in the VMA
        st = m.layout.vma_lock if model == "pervma" else m.layout.vma
        assert st.fields["lock.wait_lock"] == st.fields["lock.count"] + 20
        vl = r.vma_lock(1)  # the first object: at a line start, so all three on one line
        assert vl["wait_lock_line"] == vl["count_line"] == vl["owner_line"]


# -- wake_up_q(): one try_to_wake_up() after another, paid by the waker ------------------------------------


class Wakes:
    """The instant each thread's wake-up came (sched.wake_at(): ``waking`` set until its
    wake_up_q() step), and mmap_lock's wait list as it last was before it emptied, over
    a stepped run."""

    def __init__(self):
        self.was = {}
        self.at = {}
        self.queue = []

    def __call__(self, r):
        for t, th in enumerate(r.state["th"]):
            if self.was.get(t) and not th["waking"]:
                self.at.setdefault(t, r.now)
            self.was[t] = bool(th["waking"])
        self.queue = r.waiters(0) or self.queue


def test_the_waker_pays_one_wake_up_per_waiter_and_wakes_them_one_after_another():
    # tid 1's mprotect write-locks mmap_lock at 0 for 50 us; tids 2, 3, 4 fault at 10 us
    # and queue, each taking wait_lock (in the order their cache misses let them).
    # up_write() -> rwsem_wake(): wait_lock, rwsem_mark_wake() grants all three and puts
    # them on the wake_q in queue order, the unlock, then wake_up_q(): the first woken at
    # the unlock (t0), the second at t0 + W, the third at t0 + 2W, and the writer's
    # up_write() - the last micro-op of its op - returns at t0 + 3W.
    rows = mk([(1, "mprotect", [1], 0, 50_000)] + [(t, "fault", 1, 10_000 + t, None) for t in (2, 3, 4)])
    r = Replay("mmap_lock", SLOW, 8, rows)
    w = Wakes()
    res = by_op(r.run_stepped(w))
    assert sorted(w.queue) == [r.t(t) for t in (2, 3, 4)]
    t0 = w.at[w.queue[0]]
    assert 50_000 < t0 < 51_000
    assert [w.at[t] - t0 for t in w.queue] == pytest.approx([0, W, 2 * W], abs=1e-6)
    assert res[0]["end_ns"] == pytest.approx(t0 + 3 * W, abs=1e-6)
    # the lock waits (wake-up minus going to sleep), in queue order, grow by about the
    # same steps (they went to sleep within a few hundred ns of each other)
    waits = [res[int(r.meta["tids"][t]) - 1]["lock_wait_ns"] for t in w.queue]
    assert waits[0] < waits[1] < waits[2] and waits[2] - waits[0] > 2 * W - 500
    # wait_lock's line (line 2 of 6.3's mm_struct: wait_lock, wait_list, mmlist; nothing
    # else touches it) moved four times: to each reader that queued, then to the writer
    line2 = [x for x in r.line_stats() if "mm_struct.mmap_lock.wait_lock" in x["fields"]]
    assert len(line2) == 1 and line2[0]["transfers"] == 4, line2


# -- wait_lock is a spinlock: a second taker waits for the holder's unlock ---------------------------------


def test_a_cpu_taking_wait_lock_while_another_holds_it_spins_until_the_unlock():
    # White-box, at one instant (now = 0): threads 0 and 1 queued readers behind a writer
    # that has just let go; thread 2's rwsem_wake() takes wait_lock, grants them and drops
    # it - the lock is free only when that unlock commits, lock.wait_lock_until.  Thread 3
    # (another CPU) taking wait_lock at 0 spins until then - that spin is its lock wait -
    # and its cmpxchg then brings the line from thread 2's CPU: a hand-off plus an atomic.
    r = Replay("mmap_lock", SLOW, 4, mk([(t, "fault", 1, 0, None) for t in (1, 2, 3, 4)]))
    lk, th = r.mmap_lock, r.state["th"]
    lk["count"] = RWSEM_FLAG_WAITERS  # the writer's up_write() took WRITER_LOCKED away
    for i in (0, 1):
        waiter_add(r.S, 0, i, False)
        th[i]["blocked"] = True
    end2 = rwsem_wake(r.S, 2, 0, RWSEM_WAKE_ANY, 0.0)
    until = float(lk["wait_lock_until"])
    assert 0 < until < end2 and r.waiters(0) == [] and not th[0]["blocked"] and not th[1]["blocked"]
    assert end2 == pytest.approx(until + 2 * W, abs=50)  # then its wake_up_q() of the two
    wait_before = float(th[3]["wait"])
    end3 = wait_lock_lock(r.S, 3, 0, 0.0)
    k = r.state["cfg"][0]
    c2, c3 = int(th[2]["cpu"]), int(th[3]["cpu"])
    handoff = float(r.state["handoff"][c2 * int(k["ncpu"]) + c3])
    assert float(th[3]["wait"]) - wait_before == pytest.approx(until, abs=1e-9)
    assert end3 == pytest.approx(until + handoff + float(k["owned_atomic"]), abs=1e-9)


@pytest.mark.parametrize("path", ["down_read", "down_write", "writer_retry", "up_read"])
def test_every_wait_list_change_takes_wait_lock(path):
    # White-box, at one instant (now = 0), another CPU holding wait_lock until 5 us
    # (lock.wait_lock_until).  Each path that changes the wait list takes it, so it spins
    # until 5 us - a lock wait - and only then queues and sleeps, or wakes the waiter:
    # rwsem_down_read_slowpath() queueing a reader behind a writer; rwsem_down_write_
    # slowpath() queueing a writer (after its spin, DW_NONSPIN) and a woken writer
    # retrying ("trylock_again: raw_spin_lock_irq(&sem->wait_lock)", DW_WAIT); up_read()
    # -> rwsem_wake() waking a queued writer.
    held = 5_000.0
    r = Replay("mmap_lock", SLOW, 4, mk([(t, "fault", 1, 0, None) for t in (1, 2, 3, 4)]))
    lk, th = r.mmap_lock, r.state["th"]
    lk["wait_lock_until"] = held
    t = 0
    if path == "down_read":
        lk["count"], lk["owner"] = RWSEM_WRITER_LOCKED, 3 + 1  # thread 3 holds it for write
        end, _ = down_read(r.S, t, 0)
    elif path in ("down_write", "writer_retry"):
        lk["count"], lk["owner"] = RWSEM_WRITER_LOCKED, 3 + 1
        if path == "writer_retry":  # queued, woken, back to retry
            waiter_add(r.S, 0, t, True)
            lk["count"] |= RWSEM_FLAG_WAITERS
            th[t]["dw"] = DW_WAIT
        else:
            th[t]["dw"] = DW_NONSPIN
        end, _ = down_write(r.S, t, 0)
    else:  # the last reader leaves with a writer (thread 1) queued
        lk["count"], lk["owner"] = RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS, RWSEM_READER_OWNED
        waiter_add(r.S, 0, 1, True)
        th[1]["blocked"] = True
        end = up_read(r.S, t, 0)
        assert not th[1]["blocked"] and th[1]["waking"]  # its wake-up comes after the unlock
    assert th[t]["wait"] >= held - 300  # the spin: from its first atomic's end to 5 us
    if path == "up_read":
        assert end > held
    else:
        assert end == -1.0 and th[t]["blocked"] and th[t]["blocked_at"] > held and r.waiters(0) == [t]


# -- no wake-up preemption mid-op ---------------------------------------------------------------------------


def test_a_woken_thread_waits_for_the_op_running_on_its_cpu():
    # 2 CPUs, 3 threads: tids 1 and 3 share a CPU, tid 2 has the other.  tid 2's mprotect
    # write-locks mmap_lock at 0 for 50 us.  tid 3's kernel-mode fault comes at 1 us, fails
    # mmap_read_trylock() and sleeps in down_read(), leaving the CPU; tid 1's fault (on
    # another VMA: v8's per-VMA path, no mmap_lock) takes it at 5 us for its 100 us.  At
    # ~50 us up_write() wakes tid 3, whose CPU is in the middle of tid 1's fault: tid 1
    # runs on to its op's end (~105 us) - the kernel would not preempt a task in a page
    # fault under preempt=none, nor an eligible one inside its slice (RUN_TO_PARITY) -
    # and tid 3 then runs its 100 us fault: it ends >= 100 us after tid 1's.
    rows = mk([(1, "fault", 2, 5_000, None), (2, "mprotect", [1], 0, 50_000), (3, "fault", 1, 1_000, None)])
    rows[2]["kernel"] = True
    r = Replay("v8", SLOW, 2, rows)
    res = {x["tid"]: x for x in r.run()}
    a, w, b = res[1], res[2], res[3]
    assert a["sim_cpu"] == b["sim_cpu"] != w["sim_cpu"]
    assert a["start_ns"] < w["end_ns"] < a["end_ns"]  # the wake-up came mid-op
    assert a["end_ns"] - a["start_ns"] < 100_000 + 2_000  # tid 1's fault ran uninterrupted
    assert b["end_ns"] - a["end_ns"] >= 100_000  # tid 3 waited for it, then did its own
    assert b["lock_wait_ns"] < w["end_ns"]  # its lock wait ended at the wake-up, not when it got the CPU
