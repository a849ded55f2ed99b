"""A writer's optimistic spinning on mmap_lock, as kernel/locking/rwsem.c has it since
"locking/rwsem: Remove reader optimistic spinning" (617f3ef95177, v5.12) left one
RWSEM_NONSPINNABLE bit in sem->owner:

* rwsem_optimistic_spin(): on a reader-owned lock a writer spins until
  rwsem_rspin_threshold() - (20 + readers) * NSEC_PER_USEC / 2, 10.5 us with one
  reader - then "rwsem_set_nonspinnable(sem); ... break;" and sleeps in the slow path;
  the threshold starts "if (prev_owner_state != OWNER_READER)", i.e. each time the owner
  turns from a writer (or nobody) to readers;
* rwsem_can_spin_on_owner(): "if ((flags & RWSEM_NONSPINNABLE) || ...) ret = false" -
  once set, no writer spins; readers keep the bit (__rwsem_set_reader_owned()), a writer
  owner clears it (rwsem_set_owner() stores current whole, rwsem_clear_owner() 0).

The times below are the toys' own: fault service 100 us (engine_harness.SLOW), the
spinners' threshold 10.5 us, line costs from the Broadwell profile (well under 1 us).
"""

from replay.engine.rwsem import RSPIN_BASE_NS, RSPIN_PER_READER_NS, RWSEM_READER_OWNED

from engine_harness import SLOW, Replay, mk

THRESHOLD_1 = RSPIN_BASE_NS + RSPIN_PER_READER_NS  # one reader: 10.5 us


class Watch:
    """Who spun on mmap_lock, and the owner word, at every instant of a stepped run."""

    def __init__(self):
        self.spun = {}  # thread index -> (the instant it joined the OSQ, the instant it left)
        self.nonspinnable = []  # (now, owner, bit)

    def __call__(self, r):
        now = r.now
        on = set(r.spinners(0))
        for t in on - set(self.spun):
            self.spun[t] = (now, None)
        for t, (first, left) in self.spun.items():
            if left is None and t not in on:
                self.spun[t] = (first, now)
        self.nonspinnable.append((now, int(r.mmap_lock["owner"]), int(r.mmap_lock["nonspinnable"])))


def test_a_spinner_past_its_threshold_makes_the_lock_nonspinnable_for_the_next_writer():
    # tid 1's fault read-locks mmap_lock at 0 for 100 us.  tid 2's mprotect comes at
    # 1 us: reader-owned, so it spins until 1 + 10.5 us, sets RWSEM_NONSPINNABLE and
    # sleeps.  tid 3's mprotect comes at 30 us: rwsem_can_spin_on_owner() sees the bit
    # and it queues at once - it never spins.  The reader's up_read() at ~100 us wakes
    # tid 2, whose rwsem_set_owner() clears the bit.
    rows = mk([(1, "fault", 1, 0, None), (2, "mprotect", [1], 1_000, 20_000), (3, "mprotect", [1], 30_000, 20_000)])
    r = Replay("mmap_lock", SLOW, 4, rows)
    w = Watch()
    r.run_stepped(w)
    t2, t3 = r.t(2), r.t(3)
    assert t2 in w.spun, "the first writer spins on the reader-owned lock"
    first, left = w.spun[t2]
    assert 1_000 <= first < 2_000 and THRESHOLD_1 <= left - first < THRESHOLD_1 + 1_000, w.spun[t2]
    assert t3 not in w.spun, f"tid 3 spun {w.spun.get(t3)} though RWSEM_NONSPINNABLE was set"
    at_30us = [bit for now, owner, bit in w.nonspinnable if 12_000 < now < 100_000]
    assert at_30us and all(at_30us), "the bit stays set while readers own the lock"
    assert [bit for now, owner, bit in w.nonspinnable if owner not in (0, RWSEM_READER_OWNED)] and all(
        bit == 0 for now, owner, bit in w.nonspinnable if owner not in (0, RWSEM_READER_OWNED)), \
        "a writer owner clears it"


def test_the_threshold_starts_when_readers_take_over_from_a_writer():
    # tid 1's mprotect write-locks mmap_lock at 0 for 50 us.  tid 2's fault comes at 5 us
    # and queues (writer-locked: no stealing).  tid 3's mprotect comes at 10 us and spins
    # on the running writer owner, with no threshold.  At ~50 us up_write() hands the lock
    # to the queued reader (rwsem_mark_wake()); tid 3's loop sees OWNER_READER after a
    # non-reader owner and starts rwsem_rspin_threshold(): it gives up ~10.5 us later,
    # long before the reader's 100 us fault ends, setting RWSEM_NONSPINNABLE.
    rows = mk([(1, "mprotect", [1], 0, 50_000), (2, "fault", 1, 5_000, None), (3, "mprotect", [1], 10_000, 20_000)])
    r = Replay("mmap_lock", SLOW, 4, rows)
    w = Watch()
    res = {x["tid"]: x for x in r.run_stepped(w)}
    t3 = r.t(3)
    first, left = w.spun[t3]
    # the reader got the lock: rwsem_mark_wake() grants it (sem->owner reader-owned) under
    # wait_lock in up_write(); the end of its lock wait comes after the unlock, within a
    # microsecond of the hand-over (which of the two the engine's clock puts first moves
    # with the lines' queueing: 12 ns either way at semantics 29)
    handed = next(now for now, owner, _ in w.nonspinnable if now > 40_000 and owner == RWSEM_READER_OWNED)
    woken = res[2]["start_ns"] + res[2]["lock_wait_ns"]
    assert 10_000 <= first < 11_000
    assert 50_000 < handed < 51_000 and 50_000 < woken < handed + 1_000, (handed, res[2])
    assert THRESHOLD_1 <= left - handed < THRESHOLD_1 + 1_000, (first, left, handed)
    assert any(bit for now, owner, bit in w.nonspinnable if owner == RWSEM_READER_OWNED)


# -- mmap_write_downgrade() -----------------------------------------------------------------------


def _downgrading(read_hold):
    """tid 1's munmap write-locks mmap_lock at 0: 10 us of write-locked work then, with
    read_hold, mmap_write_downgrade() and read_hold of zapping under the read lock (else
    it holds it for write the whole 110 us).  tid 2's fault comes at 5 us and queues;
    tid 3's at 20 us."""
    rows = mk([(1, "munmap", [1], 0, 10_000 if read_hold else 110_000), (2, "fault", 2, 5_000, None),
               (3, "fault", 2, 20_000, None)])
    rows[0]["read_hold_ns"] = read_hold
    r = Replay("mmap_lock", SLOW, 4, rows)
    states = []
    r.run_stepped(lambda r: states.append((r.now, int(r.mmap_lock["count"]), int(r.mmap_lock["owner"]))))
    return {x["tid"]: x for x in r.results}, states


def test_a_downgraded_writer_lets_readers_in_while_it_zaps():
    # __downgrade_write(): count += READER_BIAS - WRITER_LOCKED, owner reader-owned, and
    # rwsem_downgrade_wake() grants the queued readers (RWSEM_WAKE_READ_OWNED): tid 2,
    # queued at 5 us, gets the lock at the downgrade (~10 us), not at the end (110 us);
    # tid 3 at 20 us takes it at once (mmap_read_trylock() on a reader-owned lock).
    res, states = _downgrading(100_000)
    assert res[2]["lock_wait_ns"] < 10_000, res[2]
    assert res[3]["lock_wait_ns"] == 0, res[3]
    from replay.engine.rwsem import RWSEM_READER_BIAS

    during = [(c, o) for now, c, o in states if 12_000 < now < 19_000]
    assert during and all(o == RWSEM_READER_OWNED and c >= 2 * RWSEM_READER_BIAS for c, o in during), during
    # write-locked for the whole 110 us, both wait for the writer
    res, _ = _downgrading(None)
    assert res[2]["lock_wait_ns"] > 100_000 and res[3]["lock_wait_ns"] > 80_000, (res[2], res[3])
    assert res[1]["end_ns"] - res[1]["start_ns"] >= 110_000
