"""Hand-checkable tests of the lock paths no sample trace and no other test reaches,
with the expected numbers derived in comments from the kernel code
(kernel/locking/rwsem.c, mm/mmap_lock.c, include/linux/mmap_lock.h, v6.15).

Some paths cannot be reached from any op stream: the engine runs a lock routine's
decisions at one simulated instant, so state that the kernel can see change between
two steps (a writer leaving between a failed mmap_read_trylock() and down_read()'s
xadd) never changes here.  Those are tested white-box: the lock is put into a state the
loader built, by hand, and the routine called directly (rwsem.down_read(),
rwsem.rwsem_mark_wake(), vma.vma_start_write_step()).
"""

import json

import polars as pl
import pytest

from replay.engine import fault_service_time, replay
from replay.engine.rwsem import (DR_GRANTED, DR_OWNER, DR_WAIT, RWSEM_FLAG_HANDOFF, RWSEM_FLAG_WAITERS,
                                 RWSEM_READER_BIAS, RWSEM_READER_OWNED, RWSEM_WRITER_LOCKED, down_read,
                                 down_read_trylock, rwsem_mark_wake, waiter_add, wake_up_q, RWSEM_WAIT_TIMEOUT_NS)
from replay.engine.variation import BARRIER_WAKE_NS
from replay.engine.vma import vma_start_write_step
from replay.models import get_model
from replay.models.kernels import VMA_LOCK_OFFSET

from engine_harness import BDW, PER_VMA, REFCNT, SLOW, Replay, by_op, frame, mk, run


# -- MAX_READERS_WAKEUP -----------------------------------------------------------------------


def test_readers_are_woken_at_most_max_readers_wakeup_at_a_time():
    # A writer holds mmap_lock for 500 us; 300 readers (mmap_lock faults) arrive 10 us in,
    # fail mmap_read_trylock(), and queue in down_read() (writer-locked: no stealing) -
    # all but the few that share the writer's CPU, which wait there for its op to end.
    # up_write() -> rwsem_wake() -> rwsem_mark_wake(RWSEM_WAKE_ANY) moves readers off
    # the queue and stops at woken >= MAX_READERS_WAKEUP (0x100 = 256): the rest stay
    # queued with RWSEM_FLAG_WAITERS set.  The writer's wake_up_q() wakes the 256 one
    # after another, one wake cost (W = BARRIER_WAKE_NS) apart, so all 256 are awake by
    # 500 us + 256 W.  The rest are not among them: they are granted later, when the next
    # reader queues (rwsem_cond_wake_waiter()'s RWSEM_WAKE_READERS: the readers from the
    # writer's CPU, once its op - its wake_up_q() included - has ended;
    # tests/test_rwsem_cond_wake.py pins that).
    m = SLOW  # fault service 100 us
    rows = mk([(1, "mprotect", [1], 0, 500_000)] + [(t, "fault", 1, 10_000, None) for t in range(2, 302)])
    r = Replay("mmap_lock", m, 8, rows)
    seen = {}

    def watch(r):
        count = int(r.mmap_lock["count"])
        if count & RWSEM_WRITER_LOCKED:
            seen["queued"] = len(r.waiters(0))
        elif "left" not in seen and r.now > 400_000 and count >> 8:
            seen["granted"], seen["left"] = count >> 8, r.waiters(0)

    res = by_op(r.run_stepped(watch))
    assert seen["granted"] == 256 and len(seen["left"]) == seen["queued"] - 256 > 0, seen
    # each reader's wake-up: the end of its last wait on mmap_lock (the waits table; its
    # op's start + lock_wait_ns would leave out the lock path's queueing on the count's
    # line before it slept - 300 requests in a row)
    end = {}
    for w in r.waits:
        if w["lock"] == "mm" and w["op_id"] != 0:
            end[w["op_id"]] = max(end.get(w["op_id"], 0.0), w["end_ns"])
    woken = sorted(end.get(i, res[i]["start_ns"] + res[i]["lock_wait_ns"]) for i in range(1, 301))
    assert woken[0] > 500_000 and woken[255] < 500_000 + 256 * BARRIER_WAKE_NS
    assert woken[256] > res[0]["end_ns"] - 1_000  # after the writer's wake_up_q() of the 256
    # every reader queued behind the writer contended, and the first from the writer's
    # CPU, whose queueing granted the rest; the others from there find RWSEM_FLAG_WAITERS
    # gone and take the fast path
    locks = r.lock_stats()
    assert locks["mm"]["acquisitions"] == 301 and locks["mm"]["contentions"] == seen["queued"] + 1


# -- vma_start_write() on a VMA already write-locked ------------------------------------------


@pytest.mark.parametrize("model", PER_VMA)
def test_vma_start_write_on_an_already_locked_vma_returns_at_once(model):
    # vma_start_write(): if (__is_vma_write_locked(vma, &mm_lock_seq)) return; - the VMA's
    # vm_lock_seq equals mm->mm_lock_seq once this mmap_write_lock() cycle locked it, so a
    # second call (a split VMA modified again in the same syscall) neither takes the
    # vma_lock again (pervma, inline-rwsem) nor drains vm_refcnt again (v7, v8, mainline).
    once = mk([(1, "mprotect", [1], 0, 1_000)])
    twice = mk([(1, "mprotect", [1, 1], 0, 1_000)])
    for rows, n in ((once, 1), (twice, 2)):
        _, locks, counters = run(model, BDW, 2, rows)
        if model in REFCNT:
            assert counters["writer_drains"] == 1, n  # __vma_enter_locked() once, not twice
        else:
            assert locks["vma:1"]["acquisitions"] == 1, n  # down_write(&vma->vm_lock->lock) once


# -- mremap moving a VMA -------------------------------------------------------------------------


def _moving_mremap():
    # T1: mremap(MREMAP_MAYMOVE) moves VMA 1 to a new address: move_vma() -> copy_vma()
    # makes VMA 2000 (attached write-locked), do_vmi_munmap() removes VMA 1.  T2 faults in
    # the new VMA (the trace saw it after the call), T3 in the old range 100 us later.
    rows = mk([(1, "mremap", [1], 0, 20_000), (2, "fault", 2000, 1_000, None), (3, "fault", 1, 100_000, None)])
    rows[0].update(vmas_freed=[1], vmas_created=[2000], vmas_successor=[-1])
    return rows


@pytest.mark.parametrize("model", ["mmap_lock", *PER_VMA])
def test_a_moving_mremap_frees_the_old_vma_and_creates_the_new(model):
    r, _, _ = run(model, BDW, 4, _moving_mremap())
    mremap, new, old = r[0], r[1], r[2]
    # the fault in the new VMA waits (causally, not on a lock) for the call that creates it
    assert new["start_ns"] >= mremap["start_ns"] + 20_000
    assert new["outcome"] == (None if model == "mmap_lock" else "success")  # mmap_lock counts no VMA lock event
    if model == "mmap_lock":  # find_vma() under mmap_lock: a fault in the hole is still served
        assert old["outcome"] is None and not old["fallback"]  # no VMA lock: no VMA_LOCK_* event
    else:  # lock_vma_under_rcu(): mas_walk() finds nothing -> VMA_LOCK_ABORT, mmap_lock path
        assert old["outcome"] == "abort" and old["fallback"] and old["attempts"] == 1
        assert not new["fallback"]


# -- fault service time ----------------------------------------------------------------------------


def _service_ops(holds):
    n = len(holds)
    return pl.DataFrame({"op_id": list(range(n)), "kind": ["fault"] * n, "observed_fallback": [True] * n,
                         "hold_ns": holds})


def test_trace_fault_service_is_the_median_hold_of_fallen_back_faults():
    # 11 holds of 1000 ns and 9 of 10000: the median is 1000, the mean 5050
    got, src = fault_service_time(_service_ops([1_000] * 11 + [10_000] * 9), BDW, "trace")
    assert got == 1_000.0 and "median" in src and "20 fallen-back" in src
    # below MIN_SERVICE_SAMPLES (20) the profile's figure
    assert fault_service_time(_service_ops([1_000] * 19), BDW, "trace") == (BDW.fault_service_ns, "profile broadwell-2s")
    assert fault_service_time(_service_ops([5] * 30), BDW, "profile")[0] == BDW.fault_service_ns
    assert fault_service_time(_service_ops([5] * 30), BDW, "1234") == (1234.0, "given")


def test_a_numeric_fault_service_is_each_uncontended_faults_work():
    # one thread, mmap_lock: every fault's duration is its cache accesses plus exactly the
    # given handle_mm_fault() time (no lock wait: nothing else runs)
    ops = frame(mk([(1, "fault", 1, 0, None)] * 3))
    run_ = replay(ops, get_model("mmap_lock"), BDW, 2, fault_service="1234")
    assert run_.params["fault_service_ns"] == 1234.0 and run_.params["fault_service_source"] == "given"
    res = run_.results
    assert (res["end_ns"] - res["start_ns"] - res["cache_ns"]).to_list() == pytest.approx([1234.0] * 3)
    assert res["lock_wait_ns"].to_list() == [0.0] * 3


def test_run_fault_service_numeric_from_the_command_line(cli, ws):
    from conftest import SAMPLES

    assert cli("ingest", SAMPLES / "pft-ftrace.txt.zst", "-w", ws, "--maps", SAMPLES / "pft-ftrace.maps")[0] == 0
    rc, out, err = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--machine", "local-2vcpu",
                       "--fault-service", "1234", "-w", ws, "-f", "json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["fault_service_ns"] == 1234.0 and s["fault_service_source"] == "given"
    row = pl.read_parquet(ws / "runs" / f"run_id={s['run_id']}").to_dicts()[0]
    assert row["fault_service_ns"] == 1234.0
    rc, _, err = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--fault-service", "fast", "-w", ws)
    assert rc != 0 and "--fault-service must be" in err and "Traceback" not in err


# -- white-box: the paths no op stream reaches -------------------------------------------------------


class Box:
    """mmap_lock (lock 0) of a state the loader built; no thread has started."""

    def __init__(self, model, rows, cpus=4):
        self.r = Replay(model, BDW, cpus, rows)
        self.lock = self.r.mmap_lock
        self.th = self.r.state["th"]

    def set(self, count, reader_owned=False):
        self.lock["count"] = count
        self.lock["owner"] = RWSEM_READER_OWNED if reader_owned else 0

    def count(self):
        return int(self.lock["count"])

    def queue(self, i, write, handoff=False):
        """Thread i asleep on the wait list (rwsem_add_waiter(), then schedule())."""
        waiter_add(self.r.S, 0, i, write)
        self.th[i]["waiter_handoff_set"] = handoff
        self.th[i]["blocked"] = True
        if not write:
            self.th[i]["dr"] = DR_WAIT

    def waiting(self):
        return self.r.waiters(0)

    def down_read(self, i):
        return down_read(self.r.S, i, 0)

    def trylock(self, i, failed):
        """down_read_trylock() by thread i to the end: (where it went on, its pc)."""
        while True:
            end, again = down_read_trylock(self.r.S, i, 0, failed)
            assert end >= 0
            if not again:
                return end, int(self.th[i]["pc"])
            self.r.g["now"] = end

    def mark_wake(self):
        """rwsem_mark_wake(RWSEM_WAKE_ANY) by the last thread (which none of these tests
        queues), then its wake_up_q()."""
        waker = len(self.th) - 1
        end = rwsem_mark_wake(self.r.S, waker, 0, False, self.r.now)
        wake_up_q(self.r.S, waker, 0, end)

    def granted(self, i):  # holds the lock for read (down_read() returns to it with it)
        return self.th[i]["dr"] in (DR_OWNER, DR_GRANTED)

    def stat(self, k):
        return int(self.lock[k])

    def start_write_detached(self, vid):
        """Detach VMA vid (vm_refcnt 0) and run vma_start_write() on it to the end, as
        thread 0 holding mmap_lock for write would (VMA_START_WRITE_NEXT's pending list)."""
        r, g = self.r, self.r.g
        o = r.obj(vid)
        r.vma(vid)["vm_refcnt"] = 0
        r.state["pend_obj"][0] = o
        g["pend_t"], g["pend_n"], g["pend_i"], g["pend_step"] = 0, 1, 0, 0
        while g["pend_i"] < 1:
            end = vma_start_write_step(r.S, 0)
            assert end >= 0, "vma_start_write() blocked on a detached VMA"
            g["now"] = end
        return (int(r.vma(vid)["vm_refcnt"]), int(r.vma(vid)["vm_lock_seq"]), int(g["mm_lock_seq"]),
                int(g["writer_drains"]))


THREE_READERS = mk([(t, "fault", 1, 0, None) for t in (1, 2, 3)])


def test_uncontended_down_read_takes_the_fast_path():
    # __down_read_common() -> rwsem_read_trylock(): count = atomic_long_add_return_acquire(
    # RWSEM_READER_BIAS); no WRITER_LOCKED/FLAG_WAITERS/FLAG_HANDOFF in it -> the lock is
    # ours (then rwsem_set_reader_owned()): count 0 -> 256, no contention, no queueing,
    # one more step (the owner store) and no sleep.  (Unreachable from op streams: a
    # fault only calls down_read() right after mmap_read_trylock() failed, at the same
    # instant, so the fast path would fail too.)
    b = Box("mmap_lock", THREE_READERS)
    b.set(0)
    end, again = b.down_read(0)
    assert end >= 0 and again  # one more step: rwsem_set_reader_owned()
    assert b.count() == RWSEM_READER_BIAS and b.granted(0) and b.waiting() == []
    assert (b.stat("acquisitions"), b.stat("contentions")) == (1, 0)


@pytest.mark.parametrize("bit", ["WRITER_LOCKED", "FLAG_WAITERS", "FLAG_HANDOFF"])
def test_read_trylock_fails_on_each_bit_of_the_read_failed_mask(bit):
    # rwsem_read_trylock() via down_read_trylock(): "while (!(tmp & RWSEM_READ_FAILED_MASK))
    # { if (atomic_long_try_cmpxchg_acquire(&sem->count, &tmp, tmp + RWSEM_READER_BIAS))
    # ... return 1; }  return 0;" - RWSEM_READ_FAILED_MASK is WRITER_MASK | FLAG_WAITERS |
    # FLAG_HANDOFF | FLAG_READFAIL.  Each bit alone fails it: no cmpxchg, count unchanged,
    # branch to the failure label.  (From op streams HANDOFF comes only with WAITERS -
    # a queued writer sets it - so only this test sees HANDOFF do it on its own.)
    failed = 17
    flag = {"WRITER_LOCKED": RWSEM_WRITER_LOCKED, "FLAG_WAITERS": RWSEM_FLAG_WAITERS,
            "FLAG_HANDOFF": RWSEM_FLAG_HANDOFF}[bit]
    b = Box("mmap_lock", THREE_READERS)
    b.set(flag)
    assert b.trylock(0, failed)[1] == failed
    assert b.count() == flag and b.stat("trylock_failures") == 1 and b.stat("acquisitions") == 0
    b = Box("mmap_lock", THREE_READERS)  # free: the cmpxchg adds its bias
    b.set(0)
    assert b.trylock(0, failed)[1] != failed
    assert b.count() == RWSEM_READER_BIAS and b.stat("trylock_failures") == 0 and b.stat("acquisitions") == 1


def test_down_read_slowpath_with_an_empty_queue_keeps_its_bias():
    # rwsem_down_read_slowpath(): the reader's xadd saw RWSEM_FLAG_HANDOFF (no stealing),
    # but under wait_lock: "if (list_empty(&sem->wait_list)) { if (!(count &
    # RWSEM_WRITER_MASK)) { ... rwsem_set_reader_owned(sem); return sem; }" - its
    # RWSEM_READER_BIAS stays in the count and it holds the lock without queueing:
    # count HANDOFF -> HANDOFF + 256; counted as a contention (it took the slow path).
    b = Box("mmap_lock", THREE_READERS)
    b.set(RWSEM_FLAG_HANDOFF)
    end, again = b.down_read(0)
    assert end >= 0 and again
    assert b.count() == RWSEM_FLAG_HANDOFF + RWSEM_READER_BIAS and b.granted(0) and b.waiting() == []
    assert (b.stat("acquisitions"), b.stat("contentions")) == (1, 1)
    # the same with a writer holding it: the reader must queue, setting FLAG_WAITERS
    b = Box("mmap_lock", THREE_READERS)
    b.set(RWSEM_WRITER_LOCKED)
    assert b.down_read(0)[0] == -1.0  # blocked
    assert b.count() == RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS and b.waiting() == [0] and not b.granted(0)


def test_a_reader_starved_past_the_timeout_sets_handoff():
    # rwsem_mark_wake(), the reader branch, when a writer got the lock first
    # (oldcount & RWSEM_WRITER_MASK): "if (time_after(jiffies, waiter->timeout)) { if
    # (!(oldcount & RWSEM_FLAG_HANDOFF)) adjustment -= RWSEM_FLAG_HANDOFF; ...
    # waiter->handoff_set = true; }" - waiter->timeout is RWSEM_WAIT_TIMEOUT after it
    # queued.  Then no writer may steal the lock (rwsem_try_write_lock(): HANDOFF and not
    # first; the optimistic spinners check it too) until the readers get it.
    for waited, want in ((RWSEM_WAIT_TIMEOUT_NS - 1, False), (RWSEM_WAIT_TIMEOUT_NS, True)):
        b = Box("mmap_lock", THREE_READERS)
        b.set(RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS)
        b.queue(0, write=False)  # queued at time 0
        b.r.g["now"] = float(waited)
        b.mark_wake()
        assert bool(b.count() & RWSEM_FLAG_HANDOFF) == want and bool(b.th[0]["waiter_handoff_set"]) == want
        assert b.waiting() == [0] and not b.granted(0)  # the writer still holds it: nobody is woken
    # and granting the readers later clears it again (below)


def test_mark_wake_granting_readers_clears_handoff():
    # rwsem_mark_wake(): "} else if (woken) { /* When we've woken a reader, we no longer
    # need to force writers to give up the lock and we can clear HANDOFF. */ if (oldcount
    # & RWSEM_FLAG_HANDOFF) adjustment -= RWSEM_FLAG_HANDOFF; }" and, the queue now empty,
    # FLAG_WAITERS goes too: count WAITERS|HANDOFF -> one reader's bias, 256.  (A reader at
    # the head with handoff_set is the only way here: one that waited RWSEM_WAIT_TIMEOUT
    # behind a writer, as in the test above.)
    b = Box("mmap_lock", THREE_READERS)
    b.set(RWSEM_FLAG_WAITERS | RWSEM_FLAG_HANDOFF)
    b.queue(0, write=False, handoff=True)
    b.mark_wake()
    assert b.count() == RWSEM_READER_BIAS and b.waiting() == [] and b.granted(0)
    # a writer behind the reader keeps FLAG_WAITERS, and HANDOFF still goes
    b = Box("mmap_lock", THREE_READERS)
    b.set(RWSEM_FLAG_WAITERS | RWSEM_FLAG_HANDOFF)
    b.queue(0, write=False, handoff=True)
    b.queue(1, write=True)
    b.mark_wake()
    assert b.count() == RWSEM_READER_BIAS | RWSEM_FLAG_WAITERS and b.waiting() == [1]


@pytest.mark.parametrize("model", REFCNT)
def test_vma_start_write_on_a_detached_vma_stores_the_seq_and_leaves_the_refcount(model):
    # __vma_start_write(): locked = __vma_enter_locked(vma, false) - refcount_add_not_zero(
    # VMA_LOCK_OFFSET, &vma->vm_refcnt) fails on 0 (detached): return false, no wait; then
    # WRITE_ONCE(vma->vm_lock_seq, mm_lock_seq); "if (locked)" __vma_exit_locked() - not
    # here.  So vm_refcnt stays 0, vm_lock_seq = mm_lock_seq, no drain counted.
    b = Box(model, mk([(1, "mprotect", [1], 0, 1_000)]))
    refcnt, seq, mm_seq, drains = b.start_write_detached(1)
    assert (seq, drains) == (mm_seq, 0)
    assert refcnt == 0, f"vm_refcnt {refcnt} (-VMA_LOCK_OFFSET = {-VMA_LOCK_OFFSET})"


# -- vm_refcnt writers: v7's three atomics, vma_mark_detached() waiting -------------------------------


@pytest.mark.parametrize("model, atomics", [("v7", 3), ("v8", 2), ("mainline", 2)])
def test_the_writers_atomics_on_vm_refcnt(model, atomics):
    # __vma_start_write() on an attached VMA with no readers: v7 12/17 (Dec 2024)
    # __vma_enter_locked(): refcount_inc_not_zero(), refcount_add(VMA_LOCK_OFFSET); then
    # __vma_exit_locked(): refcount_sub_and_test(VMA_LOCK_OFFSET + 1) - three atomics that
    # change the line.  v8 and v6.15: refcount_add_not_zero(VMA_LOCK_OFFSET) and
    # refcount_sub_and_test(VMA_LOCK_OFFSET) - two.  (A line's version counts its changes.)
    from replay.engine.vma import refcnt_line

    r = Replay(model, BDW, 2, mk([(1, "mprotect", [1], 0, 1_000)]))
    n = int(refcnt_line(r.S, r.obj(1)))
    before = int(r.line(n)["version"])
    r.run()
    assert int(r.line(n)["version"]) - before == atomics
    assert int(r.vma(1)["vm_refcnt"]) == 1  # attached, no readers, no writer


@pytest.mark.parametrize("model", REFCNT)
def test_vma_mark_detached_waits_for_a_readers_passing_reference(model):
    # vma_mark_detached() (v7 12/17, v10 12/18 as merged in v6.15): "if
    # (unlikely(!refcount_dec_and_test(&vma->vm_refcnt))) { /* Wait until vma is detached
    # with no readers. */ if (__vma_enter_locked(vma, true)) __vma_exit_locked(...); }" -
    # a fault raised vm_refcnt before it saw the VMA write-locked.  The munmap's commit
    # drops the tree's reference (2 -> 1), adds VMA_LOCK_OFFSET (v7: and its own), sleeps
    # until vm_refcnt is VMA_LOCK_OFFSET (v7: + 1); the reader's vma_refcount_put() wakes
    # it (is_vma_writer_only()); it subtracts and the VMA is detached (0) and only then
    # freed.
    from replay.engine import coherence, loop
    from replay.engine.isa import Op
    from replay.engine.vma import vma_refcount_put

    r = Replay(model, BDW, 2, mk([(1, "munmap", [1], 0, 1_000), (2, "fault", 1, 500_000, None)]))
    w, reader = r.run_until(1, Op.VMA_START_WRITE_NEXT), r.t(2)
    while r.next_insn(w) != Op.VMA_COMMIT or r.g["pend_i"] < r.g["pend_n"]:
        r.exec(w)  # vma_start_write()'s steps, the writer's work
    o = r.obj(1)
    r.vma(1)["vm_refcnt"] += 1  # the reader's passing reference
    r.state["th"][reader]["ref_obj"] = o
    drains, nfree = int(r.g["writer_drains"]), int(r.g["nfree"])
    wr = VMA_LOCK_OFFSET + (1 if model == "v7" else 0)
    blocked = False
    for _ in range(8):
        end = loop._exec(r.S, w)
        if end < 0 and int(r.state["th"][w]["lq_state"]) == coherence.LQ_QUEUED:
            n = int(r.state["th"][w]["lq_line"])  # its access waits for the line: its turn then
            r.g["now"] = float(r.line(n)["busy_until"])
            coherence.arbitrate(r.S, n)
            continue
        if end < 0:  # asleep on mm->vma_writer_wait
            assert int(r.vma(1)["vm_refcnt"]) == wr + 1 and int(r.g["vma_writer_wait"]) == w
            assert int(r.g["nfree"]) == nfree, "freed while a reader held a reference"
            blocked = True
            vma_refcount_put(r.S, reader)  # the reader leaves: it wakes the writer
            assert int(r.vma(1)["vm_refcnt"]) == wr and not r.state["th"][w]["blocked"]
            continue
        r.g["now"] = end
        if r.next_insn(w) != Op.VMA_COMMIT:
            break
    assert blocked, "vma_mark_detached() did not wait for the reader"
    assert int(r.vma(1)["vm_refcnt"]) == 0 and int(r.g["writer_drains"]) == drains + 1
    assert int(r.g["nfree"]) == nfree + 1 and int(r.g["commit_q"]) == -1
