"""The engine's semantics on toys small enough to check by hand (tests/engine_harness.py
runs them: to the end, event by event, or one thread's micro-ops by hand)."""

import dataclasses

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.engine import replay
from replay.engine.coherence import coh_read, coh_write, holds
from replay.engine.isa import Op
from replay.engine.rwsem import RWSEM_FLAG_HANDOFF, RWSEM_WAIT_TIMEOUT_NS, RWSEM_WRITER_LOCKED
from replay.engine.sched import WAKEUP_NS
from replay.engine.variation import BARRIER_WAKE_NS
from replay.engine.vma import vma_alloc
from replay.machines import PlacementError
from replay.models import get_model

from engine_harness import (BDW, PER_VMA, SLOW, Replay, WriteHolds, assert_one_writer_at_a_time, assert_quiescent,
                            by_op, kernel_faults, mk)


@pytest.mark.parametrize("model", PER_VMA)
def test_writer_makes_faults_on_its_vma_fall_back_others_succeed(model):
    # T1 mprotects VMA 1 for 50 us; 10 us in, T2 faults on VMA 1 and T3 on VMA 2
    ops = mk([(1, "mprotect", [1], 0, 50_000), (2, "fault", 1, 10_000, None), (3, "fault", 2, 10_000, None)])
    r = by_op(Replay(model, BDW, 4, ops).run())
    writer_end = r[0]["end_ns"]
    assert r[0]["kind"] == "mprotect"
    assert r[1]["outcome"] == "abort" and r[1]["fallback"] and r[1]["attempts"] == 1
    assert r[1]["end_ns"] > writer_end  # it waited for the writer on mmap_lock
    assert r[1]["lock_wait_ns"] > 30_000
    assert r[2]["outcome"] == "success" and not r[2]["fallback"] and r[2]["end_ns"] < writer_end
    assert r[2]["lock_wait_ns"] == 0


def test_under_mmap_lock_every_fault_waits_behind_a_writer():
    ops = mk([(1, "mprotect", [1], 0, 50_000), (2, "fault", 1, 10_000, None), (3, "fault", 2, 10_000, None)])
    sim = Replay("mmap_lock", BDW, 4, ops)
    r = by_op(sim.run())
    st = sim.lock_stats()["mm"]  # lockstat: 3 acquisitions, 2 contended, the writer held it >= 50 us
    assert (st["acquisitions"], st["contentions"]) == (3, 2)
    assert 50_000 <= st["hold_max_ns"] < 51_000 and st["hold_min_ns"] >= BDW.fault_service_ns
    assert st["wait_max_ns"] > 30_000 and np.isnan(sim.state["th"]["held_mm"]).all()  # nobody holds it
    for i in (1, 2):
        assert r[i]["end_ns"] > r[0]["end_ns"] and r[i]["lock_wait_ns"] > 30_000
        # no CONFIG_PER_VMA_LOCK: no VMA_LOCK_* event is counted (count_vm_vma_lock_event())
        assert r[i]["outcome"] is None and r[i]["misses"] == 0 and not r[i]["fallback"]


def test_waiting_readers_are_woken_together():
    # three faults queue behind a writer under mmap_lock; up_write() grants all three at
    # once (one rwsem_mark_wake()) and its wake_up_q() wakes them one wake cost apart -
    # so they hold the lock together (100 us faults), not one after another
    ops = mk([(1, "mprotect", [1], 0, 50_000)] + [(t, "fault", 1, 10_000 + t, None) for t in (2, 3, 4)])
    sim = Replay("mmap_lock", SLOW, 8, ops)
    r = by_op(sim.run())
    assert sim.lock_stats()["mm"]["acquisitions"] == 4 and sim.mmap_lock["count"] == 0 and sim.waiters(0) == []
    starts_after = [r[i]["end_ns"] - r[i]["lock_wait_ns"] for i in (1, 2, 3)]
    woken_at = [r[i]["start_ns"] + r[i]["lock_wait_ns"] for i in (1, 2, 3)]
    assert max(woken_at) - min(woken_at) < 3 * BARRIER_WAKE_NS  # granted together, woken serially
    assert min(r[i]["end_ns"] for i in (1, 2, 3)) > max(woken_at) + 90_000  # all three inside at once
    assert all(s > 0 for s in starts_after)


def _drain_toy(model):
    # a long fault service time keeps three readers inside VMA 1 while a writer arrives
    m = dataclasses.replace(BDW, fault_service_ns=100_000.0)
    ops = mk([(2, "fault", 1, 0, None), (3, "fault", 1, 5_000, None), (4, "fault", 1, 10_000, None),
              (1, "mprotect", [1], 20_000, 1_000)])
    sim = Replay(model, m, 8, ops)
    r = by_op(sim.run())
    return sim, r


def test_v8_wakes_the_writer_once_per_drain_v7_on_every_reader_exit():
    sim8, r8 = _drain_toy("v8")
    sim7, r7 = _drain_toy("v7")
    assert sim8.counters["writer_drains"] == 1 and sim8.counters["writer_wakeups"] == 1
    assert sim7.counters["writer_drains"] == 1 and sim7.counters["writer_wakeups"] == 3
    for r in (r8, r7):
        assert all(r[i]["outcome"] == "success" for i in (0, 1, 2))
        assert r[3]["end_ns"] > max(r[i]["end_ns"] for i in (0, 1, 2))  # the writer waited for all readers
    for sim in (sim8, sim7):
        assert sim.vma(1)["vm_refcnt"] == 1 and sim.g["vma_writer_wait"] == -1


def test_reader_arriving_during_drain_fails_and_falls_back():
    m = dataclasses.replace(BDW, fault_service_ns=100_000.0)
    ops = mk([(2, "fault", 1, 0, None), (1, "mprotect", [1], 20_000, 1_000), (3, "fault", 1, 40_000, None)])
    for model in ("v8", "mainline"):
        r = by_op(Replay(model, m, 8, ops).run())
        assert r[0]["outcome"] == "success"
        assert r[2]["outcome"] == "abort" and r[2]["fallback"]


def _coherence_state(machine):
    """A loaded state whose cache lines no access has touched yet (the toy is never run)."""
    r = Replay("mmap_lock", machine, 1, mk([(1, "fault", 1, 0, None)]))
    assert not r.state["ln"]["transfers"].any() and (r.state["ln"]["owner"] == -1).all()
    return r


def test_one_hot_line_serves_one_op_per_handoff_whatever_n():
    rates = {}
    for n in (2, 4, 8, 13):
        r = _coherence_state(BDW)  # kept: S holds the addresses of its arrays, not the arrays
        S = r.S
        t = [0.0] * n
        ops = 0
        while min(t) < 200_000:
            c = min(range(n), key=lambda i: (t[i], i))
            s, cost = coh_write(S, 7, c, t[c], True, True)  # atomics by CPUs 0..12: one socket
            t[c] = s + cost
            ops += 1
        rates[n] = ops / 200_000 * 1e9
    expect = 1e9 / (BDW.latency_ns["socket_handoff"] + BDW.latency_ns["owned_atomic"])
    for n, rate in rates.items():
        assert abs(rate - expect) / expect < 0.05, (n, rate, expect)


def test_adjacent_line_prefetch_brings_the_buddy_shared():
    # the spatial prefetcher completes a fetched line to its 128-byte pair as a read
    # (replay/engine/coherence.py; tests/test_coherence.py has the Modified case)
    for prefetch in (True, False):
        m = dataclasses.replace(BDW, adjacent_line_prefetch=prefetch)
        r = _coherence_state(m)
        coh_read(r.S, 11, 1, 0.0)  # CPU 1 caches line 11 (buddy of 10)
        assert coh_read(r.S, 11, 1, 10.0)[1] == m.latency_ns["l1_hit"]
        coh_write(r.S, 10, 0, 20.0, True, True)  # CPU 0 fetches line 10 for ownership
        again = coh_read(r.S, 11, 1, 100.0)[1]
        assert again == m.latency_ns["l1_hit"] and r.line(11)["invalidations"] == 0  # CPU 1 keeps its copy
        assert bool(holds(r.S, 11, 0)) == prefetch  # and CPU 0 has one too, with the prefetcher on


def test_cas_loops_retry_under_contention_xadd_does_not():
    # many readers trylock one vma_lock at once: pervma's down_read_trylock is a CAS loop
    ops = mk([(t, "fault", 1, 0, None) for t in range(1, 9)])
    sim = Replay("pervma", BDW, 8, ops)
    sim.run()
    assert sim.counters["cas_retries"] > 0
    sim2 = Replay("mmap_lock", BDW, 8, mk([(t, "fault", 1, 0, None) for t in range(1, 9)]))
    sim2.run()
    # mmap_lock's fault path starts with a trylock too, but its down_read() slow path is an xadd
    assert sim2.mmap_lock["count"] == 0


ops_strategy = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from(["fault", "fault", "fault", "mprotect", "munmap", "mmap"]),
              st.integers(1, 3), st.integers(0, 20_000), st.integers(500, 20_000)),
    min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ops_strategy, model=st.sampled_from(["mmap_lock", *PER_VMA]), cpus=st.integers(1, 6))
def test_invariants_on_random_ops(rows, model, cpus):
    ops = mk([(t, k, v if k == "fault" else [v], think, hold) for t, k, v, think, hold in rows])
    sim = Replay(model, BDW, cpus, ops, chunk=len(ops))
    holds = WriteHolds()
    res = sim.run_stepped(holds)
    assert sorted(r["op_id"] for r in res) == list(range(len(ops)))  # every op completes exactly once
    assert_quiescent(sim)  # locks free, vm_refcnt 1 if attached (no reader or writer left) else 0
    # no two writers held the mm's mmap_lock at once
    assert_one_writer_at_a_time(holds, sum(k != "fault" for _, k, _, _, _ in rows))
    again = Replay(model, BDW, cpus, ops).run()
    assert again == res  # deterministic (and stepping event by event changes nothing)


def test_processes_replay_independently():
    a = mk([(1, "fault", 1, 0, None), (2, "mprotect", [1], 100, 5_000), (1, "fault", 1, 50, None)])
    b = mk([(7, "fault", 5, 0, None), (8, "fault", 5, 10, None)])
    for o in b:
        o["mm"], o["op_id"] = "pid:2", o["op_id"] + 10
    ops1 = pl.DataFrame(a + b, infer_schema_length=None)
    ops2 = pl.DataFrame(b + a, infer_schema_length=None)
    r1 = replay(ops1, get_model("v8"), BDW, 8).results.sort("op_id")
    r2 = replay(ops2, get_model("v8"), BDW, 8).results.sort("op_id")
    assert r1.equals(r2)


@pytest.mark.parametrize("covers", [False, True])
@pytest.mark.parametrize("model", ["v8", "mainline"])
def test_typesafe_by_rcu_reuse_makes_a_stale_reader_abort(model, covers):
    ops = mk([(2, "fault", 1, 0, None), (1, "mmap", [], 0, 100)])
    ops[0]["address"] = 0x20000
    sim = Replay(model, BDW, 4, ops)
    t = sim.run_until(2, Op.WALK)  # the reader found VMA 1's object under RCU...
    v1 = sim.vma(1)
    v1["attached"], v1["vm_refcnt"] = False, 0  # ...munmap detaches and frees it (SLAB_TYPESAFE_BY_RCU: no grace period)
    g = sim.g
    sim.state["freelist"][g["nfree"]] = v1["slot"]
    g["nfree"] += 1
    vma_alloc(sim.S, sim.vid(1001))  # ...an mmap reuses the object for another VMA, and unlocks
    g["mm_lock_seq"] += 1
    v2 = sim.vma(1001)
    assert v2["slot"] == v1["slot"]
    v2["vm_start"], v2["vm_end"] = (0x1F000, 0x21000) if covers else (0x30000, 0x31000)
    rec = sim.finish(t)
    # __refcount_inc_not_zero_limited() succeeds on the new VMA; vm_mm matches (same
    # mm), so lock_vma_under_rcu()'s range check decides by address: the new VMA covers
    # 0x20000 -> the fault goes on under it; it does not -> put, abort, fall back
    if covers:
        assert rec == {"outcome": "success", "fallback": False, "attempts": 1}
        return
    assert rec == {"outcome": "abort", "fallback": True, "attempts": 1}
    assert v2["vm_refcnt"] == 1 and sim.state["th"][t]["ref_obj"] == -1


def test_detached_vma_is_a_miss_and_rewalk_in_mainline_an_abort_in_v8():
    for model, attempts in (("mainline", 2), ("v8", 1), ("pervma", 2)):
        sim = Replay(model, BDW, 4, mk([(2, "fault", 1, 0, None)]))
        t = sim.run_until(2, Op.WALK)
        v1 = sim.vma(1)
        v1["attached"] = False  # detached under the reader; the object is not reused
        if model != "pervma":
            v1["vm_refcnt"] = 0
        rec = sim.finish(t)
        # mainline: refcnt 0 -> -EAGAIN -> VMA_LOCK_MISS and a new walk, which finds nothing;
        # pervma: vma->detached after locking -> VMA_LOCK_MISS, retry; v8: NULL -> abort
        assert rec["attempts"] == attempts, model
        assert rec["outcome"] == "abort" and rec["fallback"]


def test_fault_after_its_vma_was_merged_away_walks_to_the_survivor():
    # the closed loop let the merging mprotect land before a fault the trace saw in VMA 2:
    # the walk finds VMA 1, which absorbed it, and the fault succeeds there
    ops = mk([(1, "mprotect", [1, 2], 0, 100), (2, "fault", 2, 50_000, None)])
    ops[0]["vmas_freed"], ops[0]["vmas_successor"] = [2], [1]
    for model in ("v8", "mainline", "pervma"):
        sim = Replay(model, BDW, 4, ops)
        r = by_op(sim.run())
        assert not sim.vma(2)["attached"] and sim.vma(1)["attached"]
        assert r[1]["outcome"] == "success" and not r[1]["fallback"], model
        ops_unmapped = [dict(o) for o in ops]
        ops_unmapped[0]["vmas_successor"] = [-1]  # munmap instead: nothing covers it any more
        r2 = by_op(Replay(model, BDW, 4, ops_unmapped).run())
        assert r2[1]["outcome"] == "abort" and r2[1]["fallback"]


def test_range_check_is_by_address_on_the_vma_locked():
    # The mprotect splits VMA 1 [0x10000, 0x14000) at 0x11000 (VMA 1 keeps the lower page,
    # new VMA 2 the rest).  A fault the trace gave VMA 1 runs after it: mas_walk() finds the
    # VMA by address - at 0x12000 VMA 2, at 0x10000 VMA 1, both served under their VMA lock
    # (the one locked is the one the walk found: VMA 2's lock taken, not VMA 1's).  At
    # 0x14000 nothing covers the address: lock_vma_under_rcu()'s "address < vma->vm_start ||
    # address >= vma->vm_end" on the VMA it has -> VMA_LOCK_ABORT and the mmap_lock path.
    ops = mk([(1, "mprotect", [1], 0, 100), (2, "fault", 1, 50_000, None)])
    ops[0].update(vmas_created=[2], range_vmas=[1, 2], range_start=[0x10000, 0x11000],
                  range_end=[0x11000, 0x14000])
    for model in PER_VMA:
        for addr, outcome, vma in ((0x12000, "success", 2), (0x10000, "success", 1), (0x14000, "abort", None)):
            ops[1]["address"] = addr
            sim = Replay(model, BDW, 4, ops)
            r = by_op(sim.run())
            assert (sim.vma(1)["vm_start"], sim.vma(1)["vm_end"]) == (0x10000, 0x11000)
            assert r[1]["outcome"] == outcome and r[1]["fallback"] == (outcome == "abort"), (model, hex(addr))
            if model == "pervma" and vma:  # whose rwsem the fault read-locked (VMA 1's is also the writer's)
                got = sim.lock_stats().get("vma:2", {"acquisitions": 0})["acquisitions"]
                assert got == (1 if vma == 2 else 0), hex(addr)


@pytest.mark.parametrize("split", [False, True])
def test_the_range_check_catches_a_split_between_the_walk_and_the_lock(split):
    # lock_vma_under_rcu(): mas_walk() found VMA 1 [0x10000, 0x14000) for 0x12000 under RCU;
    # before vma_start_read() an mprotect split it at 0x11000 and finished (VMA 1 keeps the
    # lower page; mm_lock_seq moved on, so the VMA is not write-locked any more).  The
    # check "address < vma->vm_start || address >= vma->vm_end" on the VMA it locked sends
    # the fault to lock_mmap (VMA_LOCK_ABORT); without the split it is served there
    for model in PER_VMA:
        ops = mk([(2, "fault", 1, 0, None)])
        ops[0]["address"] = 0x12000
        sim = Replay(model, BDW, 4, ops)
        v1 = sim.vma(1)
        v1["vm_start"], v1["vm_end"] = 0x10000, 0x14000
        t = sim.run_until(2, Op.WALK)
        if split:
            v1["vm_end"] = 0x11000
            sim.g["mm_lock_seq"] += 2  # mmap_write_lock() ... mmap_write_unlock(): even again
        rec = sim.finish(t)
        want = {"outcome": "abort", "fallback": True} if split else {"outcome": "success", "fallback": False}
        assert {k: rec[k] for k in want} == want, model


def test_a_fault_waits_for_the_writer_that_grew_its_vma_over_its_address():
    # the trace: mmap creates VMA 1000 [0x10000, 0x11000); an mremap in place grows it to
    # 0x14000; then a fault at 0x12000 on it.  The closed loop would run the fault (thread 2,
    # no gap) before the mremap (thread 1, 20 us gap) - at an address not mapped yet, which
    # lock_vma_under_rcu()'s range check would abort; it waits for the growth instead
    ops = mk([(1, "mmap", [], 0, 100), (1, "mremap", [1000], 20_000, 100), (2, "fault", 1000, 0, None)])
    ops[0].update(range_vmas=[1000], range_start=[0x10000], range_end=[0x11000])
    ops[1].update(range_vmas=[1000], range_start=[0x10000], range_end=[0x14000])
    ops[2]["address"] = 0x12000
    for model in PER_VMA:
        r = by_op(Replay(model, BDW, 4, ops).run())
        assert r[2]["outcome"] == "success" and not r[2]["fallback"], model
        assert r[2]["start_ns"] > r[1]["start_ns"], model


def test_a_writer_starved_4ms_at_the_head_sets_handoff():
    # readers keep mmap_lock read-held back to back (a slow fault service on mmap_lock);
    # a writer queued behind them sets RWSEM_FLAG_HANDOFF after RWSEM_WAIT_TIMEOUT (4 ms),
    # after which new readers can no longer steal the lock and the writer gets it
    m = dataclasses.replace(BDW, fault_service_ns=1_500_000.0)
    rows = [(1, "mprotect", [1], 100_000, 1_000)]
    for tid in (2, 3):
        rows += [(tid, "fault", 1, 0, None)] * 6
    ops = kernel_faults(mk(rows))  # kernel-mode faults take mmap_lock for read
    sim = Replay("v8", m, 4, ops, chunk=len(ops))
    seen = []  # after each event: (now, HANDOFF set, write-locked, acquisitions so far)

    def spy(s):
        lk = s.mmap_lock
        seen.append((s.now, bool(lk["count"] & RWSEM_FLAG_HANDOFF), bool(lk["count"] & RWSEM_WRITER_LOCKED),
                     int(lk["acquisitions"])))

    r = by_op(sim.run_stepped(spy))
    writer = r[0]
    assert any(h for _, h, _, _ in seen), "handoff never set"
    first_h = next(i for i, x in enumerate(seen) if x[1])
    got = next(i for i, x in enumerate(seen) if x[2])
    assert seen[first_h][0] - writer["start_ns"] >= RWSEM_WAIT_TIMEOUT_NS
    # once handed off, no reader took the lock before the writer
    assert got > first_h and seen[got][3] == seen[first_h][3] + 1
    assert writer["end_ns"] < max(x["end_ns"] for x in r.values())  # readers still behind it


def test_writers_spin_on_a_running_writer_and_sleep_after_the_reader_budget():
    # W2 arrives while W1 (running) holds mmap_lock: it spins and takes the lock the
    # moment W1 lets go - no sleep, no wake-up latency
    ops = mk([(1, "mprotect", [1], 0, 50_000), (2, "mprotect", [2], 10_000, 1_000)])
    holds = WriteHolds()
    Replay("v8", BDW, 4, ops, chunk=len(ops)).run_stepped(holds)
    (a0, a1), (b0, b1) = holds.windows
    assert 0 <= b0 - a1 < 200 and b0 - a1 < WAKEUP_NS
    # readers hold it for 100 us: the writer spins rwsem_rspin_threshold() (<= 25 us),
    # then sleeps in the queue and is woken when the last reader leaves
    m = dataclasses.replace(BDW, fault_service_ns=100_000.0)
    ops = kernel_faults(mk([(2, "fault", 1, 0, None), (3, "fault", 1, 0, None), (1, "mprotect", [1], 10_000, 1_000)]))
    sim = Replay("v8", m, 4, ops, chunk=len(ops))
    holds = WriteHolds()
    r = by_op(sim.run_stepped(holds))
    last_reader = max(r[0]["end_ns"], r[1]["end_ns"])
    (w0, _), = holds.windows
    # it had gone to sleep: woken, not spinning - by the last reader's up_read(), whose
    # wake_up_q() woke it one wake cost before that reader's op ended
    assert w0 - (last_reader - BARRIER_WAKE_NS) >= 0.9 * WAKEUP_NS
    assert sim.lock_stats()["mm"]["contentions"] == 1 and sim.spinners(0) == []


def test_mainline_mm_lock_seq_is_a_seqcount_odd_while_write_locked():
    # a seqcount mm_lock_seq ("mm: convert mm_lock_seq to a proper seqcount", v6.14, under
    # the v7/v8 postings and "move per-vma lock into vm_area_struct" too): mmap_write_lock()
    # begins it (odd), vma_start_write() stores that odd value, mmap_write_unlock() ends it
    # (even).  pervma keeps 6.4-6.13's int, which only vma_end_write_all() bumps.
    ops = mk([(1, "mprotect", [1], 0, 1_000)])
    for model, seq_end, stored in (("mainline", 2, 1), ("v8", 2, 1), ("v7", 2, 1), ("inline-rwsem", 2, 1),
                                   ("pervma", 1, 0)):
        sim = Replay(model, BDW, 2, ops)
        sim.run()
        assert (sim.g["mm_lock_seq"], sim.vma(1)["vm_lock_seq"]) == (seq_end, stored), model
        assert sim.vma(1)["vm_lock_seq"] != sim.g["mm_lock_seq"]  # unlocked again


@pytest.mark.parametrize("model", ["mmap_lock", *PER_VMA])
def test_cache_time_never_exceeds_the_op(model):
    # a munmap freeing 30 VMAs makes 30 back-to-back stores in its commit; each op's
    # cache time is part of its duration, however many lines it touches
    ops = mk([(1, "munmap", list(range(1, 31)), 0, 100)] + [(2, "fault", 40, 0, None)])
    r = by_op(Replay(model, BDW, 4, ops).run())
    for x in r.values():
        assert 0 <= x["cache_ns"] <= x["end_ns"] - x["start_ns"] + 1e-6, (model, x)


def _cpus_by_thread(res):
    return [sorted({x["sim_cpu"] for x in res if x["tid"] == tid}) for tid in sorted({x["tid"] for x in res})]


def _per_op_cpus_toy():
    """Two faulters and a writer on 2 CPUs, each faulter's ops on alternating CPUs, as
    mprotect-race's migrate: W mprotects VMA 1 for 100 us from 20 us, on CPU 0.  A's
    first fault (VMA 2) is on CPU 1, its second (VMA 1) on CPU 0; B's the other way
    round (VMA 3 on CPU 0, then VMA 1 on CPU 1).  Both second faults come 30 us after
    the first ends - inside W's window.  Each op's end is known, so its gap is
    exactly its think_ns."""
    ops = mk([(2, "fault", 2, 0, None), (3, "fault", 3, 0, None), (1, "mprotect", [1], 20_000, 100_000),
              (2, "fault", 1, 30_000, None), (3, "fault", 1, 30_000, None)])
    for o, c in zip(ops, (1, 0, 0, 0, 1)):
        o["cpu"], o["start_ns"], o["end_ns"] = c, 0, 0
    return ops


@pytest.mark.parametrize("model", ["pervma", "v8", "mainline"])
def test_as_recorded_runs_each_op_on_its_recorded_cpu(model):
    # Per op (loop._next_cpu()): at t = 0 W (the first thread) has CPU 0 and leaves it for
    # its 20 us gap, so B, queued there, runs its first fault on CPU 0 while A runs its
    # own on CPU 1.  Each then migrates for its second fault: A to CPU 0, where W's
    # mprotect is running by then - it waits in CPU 0's run queue (no preemption mid-op)
    # and faults once W's op has ended, under the VMA lock; B to CPU 1, idle, so it
    # faults during W's window, finds VMA 1 write-locked and falls back to mmap_lock.
    # Kept on their first CPUs instead, it would be the other way round: A's second fault
    # in the window, B's after it.
    r = by_op(Replay(model, BDW, 2, _per_op_cpus_toy(), placement="as-recorded").run())
    a0, b0, w, a1, b1 = (r[i] for i in range(5))
    assert [x["sim_cpu"] for x in (a0, b0, w, a1, b1)] == [1, 0, 0, 0, 1]  # each where it was recorded
    assert a0["start_ns"] == b0["start_ns"] == 0 and w["start_ns"] == 20_000
    assert b1["start_ns"] == b0["end_ns"] + 30_000 < w["end_ns"]  # CPU 1 is free when its gap ends
    assert not a1["fallback"] and a1["outcome"] == "success"
    assert a1["start_ns"] == w["end_ns"]  # queued on CPU 0 behind W's op, run when it ended
    assert b1["fallback"] and b1["end_ns"] > w["end_ns"]  # waited for W's mmap_lock


def test_as_recorded_without_a_recorded_cpu_stays_put_and_beyond_cpus_is_an_error():
    ops = _per_op_cpus_toy()
    ops[3]["cpu"] = None  # A's second fault: no CPU recorded, so it stays on CPU 1
    r = by_op(Replay("mainline", BDW, 2, ops, placement="as-recorded").run())
    assert [r[i]["sim_cpu"] for i in range(5)] == [1, 0, 0, 1, 1]
    assert r[3]["fallback"]  # in W's window on CPU 1 now; B queues behind it there
    assert r[4]["start_ns"] > r[3]["start_ns"]
    for o in ops:  # a thread with no CPU recorded at all starts on the i-th CPU, and stays
        if o["tid"] == 3:
            o["cpu"] = None
    r = by_op(Replay("mainline", BDW, 3, ops, placement="as-recorded").run())
    assert [r[i]["sim_cpu"] for i in range(5)] == [1, 2, 0, 1, 2]  # B: thread 2, CPU 2 of 3
    # no gap between two ops on different CPUs: the thread goes straight to the other CPU's
    # run queue, and waits there for the op running on it (W's, from 0 to its end)
    ops = mk([(1, "mprotect", [1], 0, 100_000), (2, "fault", 2, 0, None), (2, "fault", 3, 0, None)])
    for o, c in zip(ops, (0, 1, 0)):
        o["cpu"], o["start_ns"], o["end_ns"] = c, 0, 0
    r = by_op(Replay("mainline", BDW, 2, ops, placement="as-recorded").run())
    assert [r[i]["sim_cpu"] for i in range(3)] == [0, 1, 0]
    assert r[1]["end_ns"] < r[2]["start_ns"] == r[0]["end_ns"] and not r[2]["fallback"]
    ops[0]["cpu"] = 2  # the trace ran on a third CPU: not folded onto one of the two
    with pytest.raises(PlacementError, match=r"the trace ran on CPU 2, but only CPUs 0-1 are simulated; "
                                             r"give --cpus 3 or more"):
        Replay("mainline", BDW, 2, ops, placement="as-recorded")


def test_placements_and_the_open_loop():
    # five threads, three faults each on its own VMA (no lock contention).  Recorded start
    # times, per thread: 0, 300 ns (before the first fault can have ended) and 40 us;
    # the recorded gaps (think_ns) say 100 ns, and each fault's end is known (its gap
    # holds no fault time to take out).
    rows = [(tid, "fault", tid, 100, None) for _ in range(3) for tid in range(1, 6)]
    ops = mk(rows)
    for o in ops:
        o["start_ns"] = 1_000_000 + 1_000 * o["tid"] + (0, 300, 40_000)[o["op_id"] // 5]
        o["end_ns"] = o["start_ns"] + 200
    # placement: broadwell-2s numbers socket 0's 14 cores 0-13, socket 1's 14-27, their SMT
    # siblings 28-55.  spread: one per physical core, alternating sockets (0, 14, 1, 15, 2);
    # packed: socket 0 first, SMT siblings next to their cores (0, 28, 1, 29, 2).  Each
    # thread stays on its CPU.
    assert _cpus_by_thread(Replay("mainline", BDW, 56, ops).run()) == [[0], [14], [1], [15], [2]]
    assert _cpus_by_thread(Replay("mainline", BDW, 56, ops, placement="packed").run()) == [[0], [28], [1], [29], [2]]
    # 4 CPUs are the ones spread would use: two cores on each socket (kernel/sched/fair.c)
    assert _cpus_by_thread(Replay("mainline", BDW, 4, ops).run()) == [[0], [14], [1], [15], [0]]
    # open loop: each op starts at its recorded time (from the trace's first op) or, if
    # its thread is still busy with its previous op then, when that op ends; the closed
    # loop keeps the recorded gaps instead
    t0 = min(o["start_ns"] for o in ops)
    for open_loop in (True, False):
        res = by_op(Replay("mainline", BDW, 8, ops, open_loop=open_loop).run())
        prev_end = {}
        for o in ops:
            x = res[o["op_id"]]
            due = (max(o["start_ns"] - t0, prev_end.get(o["tid"], 0.0)) if open_loop
                   else prev_end.get(o["tid"], 0.0) + o["think_ns"])
            assert x["start_ns"] == due, (open_loop, x)
            prev_end[o["tid"]] = x["end_ns"]
        if open_loop:  # both cases occur: the previous op's end, and the recorded time
            assert all(res[i]["start_ns"] == res[i - 5]["end_ns"] > ops[i]["start_ns"] - t0 for i in range(5, 10))
            assert all(res[i]["start_ns"] == ops[i]["start_ns"] - t0 > res[i - 5]["end_ns"] for i in range(10, 15))


def test_a_replay_frees_its_per_op_arrays_before_the_statistics():
    """simulate() releases the per-op arrays once the last chunk is out (the statistics
    read only per-lock, -line, -VMA and -CPU arrays): each becomes one element and the
    compiled code's record points at it; the statistics are the same as with them."""
    import numpy as np
    import polars as pl

    from replay.engine import load as L
    from replay.engine import state as st
    from replay.machines import load_machine
    from replay.models import get_model

    assert L.PER_OP_ARRAYS and set(L.PER_OP_ARRAYS) <= set(st.NAMES)
    ops = pl.DataFrame({"op_id": list(range(6)), "tid": [1, 2] * 3, "mm": ["pid:1"] * 6, "kind": ["fault"] * 6,
                        "vma_id": [1] * 6, "kernel": [False] * 6, "think_ns": [100] * 6})
    state, _ = L.load(get_model("v8"), load_machine("broadwell-2s"), 4, ops, "spread", False, None, 64)
    assert state["op_flags"].size == 6
    state.release(L.PER_OP_ARRAYS)
    for k in L.PER_OP_ARRAYS:
        assert state[k].size == 1, k
        if not isinstance(state.S, np.ndarray):
            continue
        assert int(state.S[0][k]) == state[k].ctypes.data, k
    got = L.simulate(get_model("v8"), load_machine("broadwell-2s"), 4, ops, sink=lambda c: None)
    kept = L.PER_OP_ARRAYS
    try:
        L.PER_OP_ARRAYS = ()
        want = L.simulate(get_model("v8"), load_machine("broadwell-2s"), 4, ops, sink=lambda c: None)
    finally:
        L.PER_OP_ARRAYS = kept
    assert got == want
