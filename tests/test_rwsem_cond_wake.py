"""Which waiter the rw_semaphore slow paths and up_read() wake, the nonspinnable bit's
clearing, and the stealing reader's owner store - kernel/locking/rwsem.c, the same in
v6.3, v6.4 and v6.18 (compared in the kernels' own trees):

* rwsem_cond_wake_waiter(sem, count, wake_q), called under wait_lock by a reader that
  has just queued itself (rwsem_down_read_slowpath(), with the count its
  atomic_long_add_return() left) and by a writer that has queued behind others
  (rwsem_down_write_slowpath(), "if (rwsem_first_waiter(sem) != &waiter)"):
  a writer-held lock wakes nobody; a reader-held one "wake_type = RWSEM_WAKE_READERS";
  a free one "wake_type = RWSEM_WAKE_ANY; clear_nonspinnable(sem);".
* rwsem_mark_wake(): a writer at the head is woken only for RWSEM_WAKE_ANY; readers at
  the head are granted for RWSEM_WAKE_ANY and RWSEM_WAKE_READERS with a first
  atomic_long_fetch_add() and __rwsem_set_reader_owned() (the waker does not hold the
  lock), for RWSEM_WAKE_READ_OWNED (downgrade_write(), a stealing reader) without.
* __up_read(): "if (unlikely((tmp & (RWSEM_LOCK_MASK|RWSEM_FLAG_WAITERS)) ==
  RWSEM_FLAG_WAITERS)) { clear_nonspinnable(sem); rwsem_wake(sem); }".
* rwsem_down_read_slowpath()'s reader lock stealing: "rwsem_set_reader_owned(sem);" -
  a store to sem->owner, before it wakes the readers behind it.

The white-box tests set the state by hand at one instant (now = 0) and call the
engine's functions; the run tests use the toys' times (fault service 100 us,
engine_harness.SLOW).
"""

import numpy as np
import pytest

from replay.engine.rwsem import (DR_GRANTED, DR_WAIT, MAX_READERS_WAKEUP, RWSEM_FLAG_WAITERS, RWSEM_READER_BIAS,
                                 RWSEM_READER_OWNED, RWSEM_WRITER_LOCKED, down_read, down_write, rwsem_cond_wake_waiter,
                                 up_read, wake_up_q, waiter_add)
from replay.engine.sched import DW_SPIN, DW_WAIT
from replay.engine.variation import BARRIER_WAKE_NS

from engine_harness import served, SLOW, Replay, mk


def _toy(model="mmap_lock", n=4):
    return Replay(model, SLOW, n, mk([(t, "fault", 1, 0, None) for t in range(1, n + 1)]))


def _queue(r, t, write, k=0):
    """Thread t asleep on lock k's wait list, as its slow path leaves it."""
    waiter_add(r.S, k, t, write)
    th = r.state["th"][t]
    th["blocked"], th["blocked_at"] = True, 0.0
    if write:
        th["dw"] = DW_WAIT
    else:
        th["dr"] = DR_WAIT


def _wake_q(r, k=0) -> list[int]:
    out, w = [], int(r.lock(k)["wake_q_head"])
    while w >= 0:
        out.append(w)
        w = int(r.state["th"][w]["wake_q_next"])
    return out


# -- rwsem_cond_wake_waiter(): what holds the lock decides whom it wakes ---------------------------------


@pytest.mark.parametrize("held", ["writer", "readers, a writer first", "readers, readers first", "nobody"])
def test_cond_wake_waiter_wakes_by_what_holds_the_lock(held):
    # Thread 3 has just queued (its own waiter is not modelled in the list: it sleeps
    # behind these) and calls rwsem_cond_wake_waiter() with the count it saw.  The
    # owner word is reader-owned with RWSEM_NONSPINNABLE set (a writer's spin timed out).
    r = _toy()
    lk, th = r.mmap_lock, r.state["th"]
    lk["owner"], lk["nonspinnable"] = RWSEM_READER_OWNED, 1
    if held == "writer":
        lk["count"], lk["owner"], lk["nonspinnable"] = RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS, 2 + 1, 0
        _queue(r, 0, False)
        _queue(r, 1, True)
    elif held == "readers, a writer first":
        lk["count"] = RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS
        _queue(r, 0, True)
        _queue(r, 1, False)
    elif held == "readers, readers first":
        # the state only more than MAX_READERS_WAKEUP queued readers leave (see
        # test_readers_left_over_by_max_readers_wakeup_join_at_the_next_arrival)
        lk["count"] = RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS
        _queue(r, 0, False)
        _queue(r, 1, True)
        _queue(r, 2, False)
    else:  # the holders left while thread 3 queued
        lk["count"] = RWSEM_FLAG_WAITERS
        _queue(r, 0, True)
        _queue(r, 1, False)
    before = int(lk["count"])
    end = rwsem_cond_wake_waiter(r.S, 3, 0, before, 0.0)
    q = _wake_q(r)
    if held == "writer":  # "if (count & RWSEM_WRITER_MASK) return;" - not even a load
        assert (q, end, int(lk["count"]), r.waiters(0)) == ([], 0.0, before, [0, 1])
    elif held == "readers, a writer first":  # RWSEM_WAKE_READERS: the writer stays asleep, the bit stays
        assert (q, end, int(lk["count"]), r.waiters(0)) == ([], 0.0, before, [0, 1])
        assert lk["nonspinnable"] == 1
    elif held == "readers, readers first":  # both readers join the holder, past the writer
        assert q == [0, 2] and r.waiters(0) == [1]
        assert int(lk["count"]) == 3 * RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS
        assert th[0]["dr"] == th[2]["dr"] == DR_GRANTED
        assert lk["owner"] == RWSEM_READER_OWNED and lk["nonspinnable"] == 1  # the bit is not cleared
        assert end > 0  # the fetch_add, the owner store, the second add: thread 3's atomics
    else:  # RWSEM_WAKE_ANY: clear_nonspinnable(), and the writer at the head is woken to retry
        assert q == [0] and r.waiters(0) == [0, 1] and int(lk["count"]) == before
        assert lk["nonspinnable"] == 0
    wake_up_q(r.S, 3, 0, end)
    assert [bool(th[t]["blocked"]) for t in (0, 1, 2)] == {
        "writer": [True, True, False], "readers, a writer first": [True, True, False],
        "readers, readers first": [False, True, False], "nobody": [False, True, False]}[held]


@pytest.mark.parametrize("head", ["a woken writer, the lock free", "readers, the lock reader-held"])
def test_a_writer_queueing_behind_others_wakes_by_what_holds_the_lock(head):
    # rwsem_down_write_slowpath(), thread 2 past its spin (DW_NONSPIN), not the first
    # waiter: "rwsem_cond_wake_waiter(sem, atomic_long_read(&sem->count), &wake_q); if
    # (!wake_q_empty(&wake_q)) { raw_spin_unlock_irq(&sem->wait_lock);
    # wake_up_q(&wake_q); raw_spin_lock_irq(&sem->wait_lock); }", then
    # rwsem_try_write_lock().
    # * The holder has just left and woken thread 1, the writer at the head, which has not
    #   retried yet: RWSEM_WAKE_ANY puts thread 1 on the wake_q (its try_to_wake_up()
    #   finds it running: no cost), so thread 2 drops and retakes wait_lock - its line is
    #   written four times, not two - and then takes the free lock itself (no handoff).
    # * Readers at the head of a reader-held lock (more than MAX_READERS_WAKEUP were
    #   queued): RWSEM_WAKE_READERS grants them, and thread 2 sleeps.
    from replay.engine.sched import DW_NONSPIN

    r = _toy()
    lk, th = r.mmap_lock, r.state["th"]
    if head.startswith("a woken writer"):
        lk["count"], lk["owner"] = RWSEM_FLAG_WAITERS, 0
        waiter_add(r.S, 0, 1, True)
        th[1]["dw"] = DW_WAIT  # woken: not blocked
    else:
        lk["count"], lk["owner"] = RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS, RWSEM_READER_OWNED
        _queue(r, 0, False)
        _queue(r, 1, False)
    wl = r.line(int(lk["wait_lock_line"]))
    v0 = int(wl["version"])
    th[2]["dw"] = DW_NONSPIN
    end, again = down_write(r.S, 2, 0)
    assert _wake_q(r) == []
    if head.startswith("a woken writer"):
        assert again and th[2]["dw"] != DW_WAIT and lk["count"] & RWSEM_WRITER_LOCKED and r.waiters(0) == [1]
        assert int(wl["version"]) - v0 == 4  # lock, unlock, lock, unlock
    else:
        assert (end, again) == (-1.0, True) and th[2]["blocked"] and r.waiters(0) == [2]
        assert th[0]["dr"] == th[1]["dr"] == DR_GRANTED and not th[0]["blocked"] and not th[1]["blocked"]
        assert int(lk["count"]) == 3 * RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS
        assert int(wl["version"]) - v0 == 4


# -- clear_nonspinnable() in __up_read() -------------------------------------------------------------------


def test_the_last_reader_out_lets_writers_spin_again():
    # Reader-owned, RWSEM_NONSPINNABLE set by a writer (thread 1) whose spin timed out and
    # which sleeps at the head.  The last reader's (thread 0) up_read(): clear_nonspinnable()
    # then rwsem_wake() wakes thread 1.  Before thread 1 runs, thread 2's down_write()
    # finds the lock free but RWSEM_FLAG_WAITERS set (its cmpxchg 0 -> WRITER_LOCKED
    # fails); rwsem_can_spin_on_owner() sees a stale reader owner without the bit, so it
    # spins (rwsem_optimistic_spin()) instead of queueing behind thread 1 - and tries the
    # free lock at once (rwsem_spin_on_owner() returns OWNER_READER at once, then
    # rwsem_try_write_lock_unqueued()), not after rwsem_rspin_threshold().
    r = _toy()
    lk, th = r.mmap_lock, r.state["th"]
    lk["count"], lk["owner"], lk["nonspinnable"] = RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS, RWSEM_READER_OWNED, 1
    _queue(r, 1, True)
    up_read(r.S, 0, 0)
    assert lk["nonspinnable"] == 0 and lk["owner"] == RWSEM_READER_OWNED and lk["count"] == RWSEM_FLAG_WAITERS
    assert not th[1]["blocked"] and th[1]["waking"]
    # its cmpxchg waits for the count line while the up_read()'s xadd holds it (served then)
    end, again = served(r, 2, lambda: down_write(r.S, 2, 0))
    assert (end, again) == (-1.0, True) and th[2]["dw"] == DW_SPIN and r.spinners(0) == [2]
    assert r.waiters(0) == [1]
    hp = r.state["hp"][: int(r.g["heap_n"])]
    mine = hp[(hp["t"] == 2) & (hp["token"] == th[2]["token"])]  # its current event
    assert len(mine) == 1 and mine["when"][0] < 1_000, mine  # its trylock: after the failed cmpxchg
    r.g["now"] = float(mine["when"][0])
    end, again = down_write(r.S, 2, 0)  # rwsem_try_write_lock_unqueued() on the free lock
    assert again and lk["count"] & RWSEM_WRITER_LOCKED and r.spinners(0) == [] and r.waiters(0) == [1]


# -- the stealing reader's owner store ---------------------------------------------------------------------


def test_a_stealing_reader_stores_the_owner():
    # 6.18's mm_struct (mainline): sem->owner on the wait_lock's line, apart from the
    # count.  Thread 3's down_read() fast path has just added its bias (its owner store
    # still to come), and thread 2, a writer, has queued (RWSEM_FLAG_WAITERS); thread 1
    # stored the owner word last (its up_write()), so that line is Modified on its CPU.
    # Thread 0's down_read() fails the fast path on the waiters bit; in
    # rwsem_down_read_slowpath() the owner is not reader-owned yet, so it may steal (not
    # writer-locked, no handoff): it reads the owner word, takes the lock, and
    # rwsem_set_reader_owned() stores it - the line ends Modified on thread 0's CPU, where
    # the load alone would leave it Shared with thread 1's.  rcnt is 2 (not the first
    # reader): no wake-up, so no wait_lock, whose line this is too.
    r = _toy("mainline")
    lk, th = r.mmap_lock, r.state["th"]
    assert lk["owner_line"] == lk["wait_lock_line"] != lk["count_line"]
    lk["count"], lk["owner"] = RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS, 0
    waiter_add(r.S, 0, 2, True)
    th[2]["dw"] = DW_WAIT
    from replay.engine.coherence import store

    store(r.S, 1, int(lk["owner_line"]))
    ol = r.line(int(lk["owner_line"]))
    moved = int(ol["transfers"])
    assert ol["owner"] == th[1]["cpu"] != th[0]["cpu"]
    end, again = down_read(r.S, 0, 0)
    assert (again, r.waiters(0), _wake_q(r)) == (False, [2], [])
    assert lk["owner"] == RWSEM_READER_OWNED and lk["count"] == 2 * RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS
    assert ol["owner"] == th[0]["cpu"], "the owner store took the line"
    assert int(ol["transfers"]) == moved + 1  # the load's HITM; the store's RFO upgrades the Shared copy
    assert th[0]["sb_until"] > end, "the store is in thread 0's store buffer when it goes on"


# -- RWSEM_WAKE_READERS in a run: the readers MAX_READERS_WAKEUP left behind ---------------------------------


def test_readers_left_over_by_max_readers_wakeup_join_at_the_next_arrival():
    # tid 1's mprotect write-locks mmap_lock at 0 for 300 us; MAX_READERS_WAKEUP + 8
    # readers fault at 1 us.  56 CPUs for them all: the few that share tid 1's CPU wait
    # there until its op ends (no preemption mid-op), the rest queue behind the writer -
    # more than MAX_READERS_WAKEUP.  up_write() -> rwsem_mark_wake() grants
    # MAX_READERS_WAKEUP of them ("if (unlikely(woken >= MAX_READERS_WAKEUP)) break;")
    # and the rest stay at the head of a now reader-held lock.  The readers from tid 1's
    # CPU then fault: RWSEM_FLAG_WAITERS fails their fast path, the lock is reader-owned
    # with rcnt > 1 (no stealing), so they queue, and rwsem_cond_wake_waiter() sees
    # reader bits: RWSEM_WAKE_READERS grants the left-over readers and the newcomer
    # together.  That is when tid 1's op ends - its wake_up_q() of MAX_READERS_WAKEUP
    # readers, one BARRIER_WAKE_NS try_to_wake_up() after another, is its own time,
    # 256 us - long before the granted readers' 100 us faults, sharing 56 CPUs, have all
    # ended (~850 us): without RWSEM_WAKE_READERS the left-over readers would wait for
    # the last of them (its up_read()'s rwsem_wake()).
    n = MAX_READERS_WAKEUP + 8
    rows = mk([(1, "mprotect", [1], 0, 300_000)] + [(t, "fault", 1, 1_000, None) for t in range(2, n + 2)])
    r = Replay("mmap_lock", SLOW, 56, rows)
    seen = {}

    def watch(r):
        if "left" not in seen and r.now > 300_000 and int(r.mmap_lock["count"]) & ~0xFF:
            seen["left"] = r.waiters(0)
            seen["granted"] = int(r.mmap_lock["count"]) >> 8
            seen["at"] = r.now

    res = {x["tid"]: x for x in r.run_stepped(watch)}
    left, up_write_at = seen["left"], seen["at"]
    assert seen["granted"] == MAX_READERS_WAKEUP and len(left) >= 1, seen
    granted_at = {t: res[int(r.meta["tids"][t])]["start_ns"] + res[int(r.meta["tids"][t])]["lock_wait_ns"]
                  for t in left}
    writer_end = res[1]["end_ns"]
    assert writer_end == pytest.approx(up_write_at + MAX_READERS_WAKEUP * BARRIER_WAKE_NS, abs=2_000)
    # (a lock wait ends at the wake-up; start_ns is a few us before the reader slept)
    assert all(writer_end - 10_000 < g < writer_end + 10_000 for g in granted_at.values()), (writer_end, granted_at)
    holders_out = max(x["end_ns"] for tid, x in res.items() if tid >= 2 and r.t(tid) not in left)
    assert holders_out > writer_end + 200_000
