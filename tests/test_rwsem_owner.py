"""sem->owner as the writers' spinning reads it - kernel/locking/rwsem.c, the code the
same in v6.3, v6.4 and v6.18 (compared in the kernels' own trees; 6.3/6.4's
"if (!(owner_state & OWNER_SPINNABLE)) break;" is 6.18's "if (owner_state ==
OWNER_NONSPINNABLE) break;", OWNER_NONSPINNABLE being the one state outside
OWNER_SPINNABLE):

* no owner (OWNER_NULL): rwsem_can_spin_on_owner()'s "(owner && !(flags &
  RWSEM_READER_OWNED) && !owner_on_cpu(owner))" is false for a NULL owner, so a
  writer spins; rwsem_spin_on_owner() returns OWNER_NULL at once,
  rwsem_try_write_lock_unqueued() fails on a held count, and rwsem_optimistic_spin()'s
  loop goes round again ("if (owner_state != OWNER_WRITER) { if (need_resched())
  break; ...}") - until the lock is free, or readers store themselves as owner, which
  starts the reader-owned threshold ("if (prev_owner_state != OWNER_READER)").
* __up_write(): "rwsem_clear_owner(sem); tmp = atomic_long_fetch_add_release(
  -RWSEM_WRITER_LOCKED, &sem->count);" - rwsem_clear_owner() is
  "atomic_long_set(&sem->owner, 0)", a plain store: a request for ownership of the
  owner's line, which the locked fetch_add waits for (x86: the store buffer drains
  before a locked instruction).  Between the two the lock is held with no owner.
* rwsem_down_write_slowpath(): "if (waiter.handoff_set) { owner_state =
  rwsem_spin_on_owner(sem); if (owner_state == OWNER_NULL) goto trylock_again; }
  schedule_preempt_disabled();" - the first waiter, once it has set HANDOFF, spins on a
  writer owner between its retries instead of sleeping.

The white-box tests set the state by hand at one instant (now = 0) and call the
engine's functions; the run test uses its toy's own times (a 5 ms fault service, 20 and
50 us writer holds).
"""

import dataclasses

import pytest

from replay.engine.rwsem import (DR_OWNER, RSPIN_BASE_NS, RSPIN_PER_READER_NS, RWSEM_FLAG_HANDOFF,
                                 RWSEM_FLAG_WAITERS, RWSEM_READER_BIAS, RWSEM_READER_OWNED, RWSEM_WRITER_LOCKED,
                                 TRY_NONE, TRY_OWNER, down_read, down_read_trylock, down_write, up_write)
from replay.engine.sched import DW_CLEARED, DW_NONE, DW_SPIN

from engine_harness import served, BDW, SLOW, Replay, mk


def _toy(model="mmap_lock", n=4):
    return Replay(model, SLOW, n, mk([(t, "fault", 1, 0, None) for t in range(1, n + 1)]))


def _events(r, t):
    """Thread t's live events on the heap (not superseded), as times."""
    hp = r.state["hp"][: int(r.g["heap_n"])]
    tok = int(r.state["th"][t]["token"])
    return sorted(float(e["when"]) for e in hp if e["t"] == t and e["token"] == tok)


# -- OWNER_NULL: a writer spins while the lock is held with no owner ----------------------------------------


def test_a_writer_spins_on_a_held_lock_with_no_owner_and_takes_it_at_the_release():
    # Thread 1 holds mmap_lock for write and runs up_write(): its first step stores 0 to
    # sem->owner (rwsem_clear_owner()), the release atomic still to come.  Thread 2's
    # down_write() then fails its cmpxchg on the held count and finds no owner:
    # rwsem_can_spin_on_owner() lets it spin, and it does - in the OSQ, not queued,
    # awake, with no reader threshold.  Thread 1's second step (count -= WRITER_LOCKED)
    # frees the lock and lets thread 2 in; its next step takes the lock
    # (rwsem_try_write_lock_unqueued()) without having slept.
    r = _toy()
    lk, th = r.mmap_lock, r.state["th"]
    lk["count"], lk["owner"] = RWSEM_WRITER_LOCKED, 1 + 1
    end1, again = up_write(r.S, 1, 0)
    assert again and th[1]["dw"] == DW_CLEARED
    assert (int(lk["count"]), int(lk["owner"])) == (RWSEM_WRITER_LOCKED, 0), "held, no owner"
    # its cmpxchg waits for the line while the owner store's request holds it (the owner
    # shares the count's line here): it is served when the store has committed
    end2, again = served(r, 2, lambda: down_write(r.S, 2, 0))
    t_spin = float(r.g["now"])
    assert (end2, again) == (-1.0, True)
    assert th[2]["dw"] == DW_SPIN and r.spinners(0) == [2] and r.waiters(0) == [], "OWNER_NULL spins"
    assert not th[2]["blocked"] and th[2]["dw_deadline"] == float("inf")
    assert _events(r, 2) == [], "nothing to try until the lock is free"
    r.g["now"] = max(end1, float(r.g["now"]))
    end1b, again = served(r, 1, lambda: up_write(r.S, 1, 0))  # the release atomic
    assert not again and int(lk["count"]) == 0 and th[1]["dw"] == DW_NONE
    (when,) = _events(r, 2)  # _let_spinner_in()
    r.g["now"] = when
    end2, again = served(r, 2, lambda: down_write(r.S, 2, 0))  # its cmpxchg, when the line is its
    assert again and int(lk["count"]) == RWSEM_WRITER_LOCKED and r.spinners(0) == []
    assert th[2]["wait"] == pytest.approx(float(r.g["now"]) - t_spin), "its lock wait is the spin"


def test_readers_storing_their_owner_start_the_spinners_threshold():
    # Thread 0's down_read() fast path has added its bias (count = one reader) but not yet
    # stored sem->owner, which thread 1's up_write() left 0.  Thread 2's down_write()
    # spins on OWNER_NULL (no threshold).  Thread 0's owner store (rwsem_set_reader_owned())
    # turns it to OWNER_READER after a non-reader state: the spinner looks again at once
    # and starts rwsem_rspin_threshold() - 10.5 us for one reader - then gives up there.
    r = _toy()
    lk, th = r.mmap_lock, r.state["th"]
    lk["count"], lk["owner"] = RWSEM_READER_BIAS, 0
    th[0]["dr"] = DR_OWNER
    assert down_write(r.S, 2, 0) == (-1.0, True) and r.spinners(0) == [2]
    assert th[2]["dw_deadline"] == float("inf") and _events(r, 2) == []
    down_read(r.S, 0, 0)  # the owner store
    assert int(lk["owner"]) == RWSEM_READER_OWNED
    (when,) = _events(r, 2)
    assert when < 1_000
    r.g["now"] = when
    assert down_write(r.S, 2, 0) == (-1.0, True)
    threshold = RSPIN_BASE_NS + RSPIN_PER_READER_NS
    assert th[2]["dw_deadline"] == pytest.approx(when + threshold)
    assert _events(r, 2) == [pytest.approx(when + threshold)]


# -- __up_write()'s rwsem_clear_owner(): a store to the owner's line -----------------------------------------


@pytest.mark.parametrize("model", ["mmap_lock", "mainline"])
def test_up_write_stores_the_owner_before_its_release(model):
    # Thread 1 holds the lock; thread 0 last wrote the owner's line (its CPU has it
    # Modified).  up_write()'s owner store fetches the line for thread 1's CPU (one
    # transfer, a store miss); the release atomic issues once the store has committed.
    # 6.3's mm_struct (mmap_lock) has the owner on the count's line: the store's fetch
    # leaves that line here, and the atomic is an owned one.  6.18's (mainline) has them
    # on two lines: the count's line moves too.
    from replay.engine.coherence import store

    r = _toy(model)
    lk, th = r.mmap_lock, r.state["th"]
    same = int(lk["owner_line"]) == int(lk["count_line"])
    assert same == (model == "mmap_lock")
    lk["count"], lk["owner"] = RWSEM_WRITER_LOCKED, 1 + 1
    store(r.S, 0, int(lk["owner_line"]))
    r.g["now"] = 1_000.0  # thread 0's store has committed
    ol = r.line(int(lk["owner_line"]))
    moved = int(ol["transfers"])
    end, again = up_write(r.S, 1, 0)
    assert again and int(ol["owner"]) == int(th[1]["cpu"]), "the store took the owner's line"
    assert int(ol["transfers"]) == moved + 1
    committed = float(th[1]["sb_until"])
    assert end == committed > 1_000.0 + BDW.latency_ns["l1_hit"], "the atomic waits for the store"
    assert int(lk["count"]) == RWSEM_WRITER_LOCKED, "not released before the atomic"
    r.g["now"] = end
    done, again = up_write(r.S, 1, 0)
    assert not again and int(lk["count"]) == 0
    k = r.state["cfg"][0]
    if same:
        assert done - end == pytest.approx(k["owned_atomic"])
    else:
        assert done - end > k["owned_atomic"]


# -- the handoff writer's spin ---------------------------------------------------------------------------------


def _cfg():
    return _toy().state["cfg"][0]


def _handoff_run(spin_window_ns):
    """tid 1's fault read-locks mmap_lock at 0 for 5 ms.  tid 2's mprotect comes at 1 us,
    spins 10.5 us on the reader-owned lock, sets RWSEM_NONSPINNABLE and sleeps at the
    head.  The reader's up_read() at ~5 ms clears the bit and wakes tid 2, which runs
    WAKEUP_NS (2 us) later; tid 3's mprotect comes ``spin_window_ns`` after that release,
    spins (a stale reader owner, no bit) and takes the free lock first, for 50 us.  tid 2
    then retries past RWSEM_WAIT_TIMEOUT: it sets HANDOFF and, the owner a writer on its
    CPU, spins on it."""
    m = dataclasses.replace(BDW, fault_service_ns=5_000_000.0)
    base = mk([(1, "fault", 1, 0, None), (2, "mprotect", [1], 1_000, 20_000)])
    release = Replay("mmap_lock", m, 4, base).run()[0]["end_ns"]  # the reader's up_read()
    rows = mk([(1, "fault", 1, 0, None), (2, "mprotect", [1], 1_000, 20_000),
               (3, "mprotect", [1], int(release) + spin_window_ns, 50_000)])
    r = Replay("mmap_lock", m, 4, rows)
    handoff = []
    r.run_stepped(lambda r: handoff.append((r.now, bool(r.mmap_lock["count"] & RWSEM_FLAG_HANDOFF))))
    return release, {x["tid"]: x for x in r.results}, [w for w in r.waits if w["tid"] == 2], handoff


def test_the_handoff_writer_spins_on_the_writer_owner_instead_of_sleeping():
    release, res, waits2, handoff = _handoff_run(500)
    c_end = res[3]["end_ns"]
    assert res[3]["start_ns"] < release + 1_000 and res[3]["lock_wait_ns"] < 2_000, "tid 3 stole the free lock"
    first_h = next(now for now, h in handoff if h)
    assert release < first_h < release + 5_000, "tid 2 set HANDOFF at its retry"
    on_lock = [w for w in waits2 if w["lock_class"] == "mmap_lock"]
    sleeps = [w for w in on_lock if w["how"] == "sleep"]
    spins = [w for w in on_lock if w["how"] == "spin"]
    # tid 1's up_read() wakes it (the sleep ends there), then its op ends one
    # try_to_wake_up() later (wake_up_q(): the waker pays)
    wake_q_ns = float(_cfg()["wake_q_ns"])
    assert len(sleeps) == 1 and sleeps[0]["end_ns"] == pytest.approx(release - wake_q_ns), \
        "one sleep, behind the reader; none behind tid 3"
    long_spin = [w for w in spins if w["start_ns"] > release]
    assert len(long_spin) == 1, spins
    (s,) = long_spin
    assert first_h <= s["start_ns"] < first_h + 1_000
    assert 48_000 < s["end_ns"] - s["start_ns"] < 50_000, "it spun through tid 3's 50 us hold"
    # tid 2 took the lock at tid 3's release, with no wake-up: its op ends its 20 us hold
    # after tid 3's release, within a few cache transfers
    assert res[2]["end_ns"] - 20_000 == pytest.approx(c_end, abs=1_000)
    # the per-wait rows add up to tid 2's lock wait: the handoff spin is recorded where it
    # is added (waits.py)
    total = sum(w["wait_ns"] for w in waits2 if w["counted_in"] == "lock_wait_ns")
    assert total == pytest.approx(res[2]["lock_wait_ns"], rel=1e-12)


def test_a_handoff_spinner_woken_while_it_spins_does_not_sleep():
    # Thread 2, the first waiter with its handoff set, spins on thread 1 (a writer on its
    # CPU).  A wake-up reaches it meanwhile (rwsem_mark_wake(RWSEM_WAKE_ANY) puts the
    # writer at the head on the wake_q): try_to_wake_up() sets it TASK_RUNNING, so when
    # thread 1 then leaves its CPU (OWNER_NONSPINNABLE) the schedule() thread 2 would
    # sleep in returns at once and it goes back to trylock_again - awake - where without
    # that wake-up it sleeps.
    from replay.engine.rwsem import RWSEM_WAKE_ANY, rwsem_mark_wake, waiter_add, wake_up_q
    from replay.engine.sched import DW_HSPIN, DW_WAIT, block_at

    for woken in (True, False):
        r = _toy()
        lk, th = r.mmap_lock, r.state["th"]
        lk["count"], lk["owner"] = RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS | RWSEM_FLAG_HANDOFF, 1 + 1
        waiter_add(r.S, 0, 2, True)
        th[2]["waiter_handoff_set"], th[2]["dw"] = True, DW_WAIT
        th[2]["waiter_since"] = -5e6
        assert down_write(r.S, 2, 0) == (-1.0, True) and th[2]["dw"] == DW_HSPIN and not th[2]["blocked"]
        if woken:
            wake_up_q(r.S, 3, 0, rwsem_mark_wake(r.S, 3, 0, RWSEM_WAKE_ANY, 0.0))
        r.g["now"] = 1_000.0
        block_at(r.S, 1, 1_000.0)  # the owner leaves its CPU: the spinner looks again
        assert _events(r, 2) == [1_000.0]
        end, again = down_write(r.S, 2, 0)
        assert th[2]["dw"] == DW_WAIT and again
        assert bool(th[2]["blocked"]) == (not woken), woken
        assert end == (1_000.0 if woken else -1.0)


# -- the reader's owner store by release ----------------------------------------------------------------


@pytest.mark.parametrize("model,stores", [("mmap_lock", True), ("mmap_lock@6.2", True), ("mmap_lock@4.19", False),
                                          ("mmap_lock@4.15", False)])
def test_a_reader_before_4_20_stores_the_owner_only_when_it_changes(model, stores):
    """rwsem_set_reader_owned() before 925b9cd1b89a ("locking/rwsem: Make owner store task
    pointer of last owning reader", after v4.19): "if (READ_ONCE(sem->owner) !=
    RWSEM_READER_OWNED) WRITE_ONCE(sem->owner, RWSEM_READER_OWNED);" - a reader joining
    readers loads the owner and writes nothing; from it every reader stores its task.
    After a writer (owner cleared) both store.  Thread 2's down_read() has taken the count
    (DR_OWNER, the fast path's xadd done) and its owner step runs."""
    for owner_before, want in ((RWSEM_READER_OWNED, stores), (0, True)):
        r = _toy(model)
        lk, th, ln = r.mmap_lock, r.state["th"], r.state["ln"]
        lk["count"], lk["owner"] = 2 * RWSEM_READER_BIAS, owner_before
        n = int(lk["owner_line"])
        ver = int(ln["version"][n])
        th[2]["dr"] = DR_OWNER
        end, again = served(r, 2, lambda: down_read(r.S, 2, 0))
        assert not again and end >= 0 and int(th[2]["dr"]) == 0
        assert (int(ln["version"][n]) == ver + 1) == want, (model, owner_before)
        assert int(lk["owner"]) == RWSEM_READER_OWNED
        # the same after down_read_trylock()'s cmpxchg (the fault's fast path): thread 3
        lk["owner"] = owner_before
        r.g["now"] = max(float(r.g["now"]), float(ln["busy_until"][n])) + 1.0  # thread 2's store served
        ver = int(ln["version"][n])
        th[3]["try_state"] = TRY_OWNER
        end, again = served(r, 3, lambda: down_read_trylock(r.S, 3, 0, 0))
        assert not again and end >= 0 and int(th[3]["try_state"]) == TRY_NONE
        assert (int(ln["version"][n]) == ver + 1) == want, (model, owner_before, "trylock")
