"""vma->anon_vma (replay/engine/retry.py): lock_vma_under_rcu()'s abort on an anonymous VMA
without one up to 6.9, vmf_anon_prepare()'s mmap_read_trylock() from 6.10, and which VMAs
have one (the op builder's vmas_parent; merges; new mappings) - toys checked by hand.

The toys run on the harness's Broadwell profile with one service time (1 us) and no fault
path.  VMA 1 is the mm's before the trace (taken to have an anon_vma); ``mmap`` creates
VMA 1000 + its op index, which starts without one."""

from __future__ import annotations

import pytest

from engine_harness import BDW, Replay, by_op, mk
from replay.ops import AddressSpace, BuildReport, IdSource, apply_writer

NEW = 1000  # the VMA the first op (an mmap) creates


def fault(tid, vma, kind, write, cls="anon", think=0, **kw):
    return {**mk([(tid, "fault", vma, think, None)])[0], "fault_kind": kind, "write": write, "vma_class": cls, **kw}


def mmap(tid=1, think=0, hold=1000):
    return {**mk([(tid, "mmap", [], think, hold)])[0], "vmas_parent": [-1]}


def numbered(*rows):
    return [{**r, "op_id": i, **({"vmas_created": [NEW + i]} if r["kind"] == "mmap" else {})}
            for i, r in enumerate(rows)]


def replay(model, rows, cpus=2):
    r = Replay(model, BDW, cpus, rows, service=1000.0)
    res = by_op(r.run())
    return res, r.lock_stats(), r


def test_6_4_aborts_a_fault_on_an_anonymous_vma_without_anon_vma_until_a_write_prepares_it():
    """6.4's lock_vma_under_rcu(): "if (!vma->anon_vma) goto inval;" before vma_start_read()
    - an ABORT, no VMA lock taken.  The read (the zero page) sets none and aborts; the
    write aborts and prepares it under mmap_lock; the read after it is served under the
    VMA lock."""
    rows = numbered(mmap(), fault(1, NEW, "zero", False), fault(1, NEW, "anon", True), fault(1, NEW, "zero", False))
    res, lk, _ = replay("pervma", rows)  # release 6.4
    assert [res[i]["outcome"] for i in (1, 2, 3)] == ["abort", "abort", "success"]
    assert [res[i]["anon_prepare"] for i in (1, 2, 3)] == [False, True, False]
    assert lk["mm"]["acquisitions"] == 1 + 2  # the mmap, the two aborted faults
    assert lk[f"vma:{NEW}"]["acquisitions"] == 1  # only the last fault: the check comes before the lock
    # 6.5-6.9 test after vma_start_read(): the VMA lock taken and dropped by each (inval_end_read)
    res, lk, _ = replay("pervma@6.8", rows)
    assert [res[i]["outcome"] for i in (1, 2, 3)] == ["abort", "abort", "success"]
    assert lk[f"vma:{NEW}"]["acquisitions"] == 3
    # a VMA the mm had before the trace has one: no abort
    res, _, _ = replay("pervma", [fault(1, 1, "zero", False, op_id=0)])
    assert res[0]["outcome"] == "success"


def test_a_split_off_vma_inherits_the_anon_vma_and_a_new_mapping_starts_without():
    """__split_vma() -> anon_vma_clone(): the upper part (VMA 2, vmas_parent [1]) of VMA 1
    has VMA 1's; a new mapping (vmas_parent [-1]) has none."""
    split = {**mk([(1, "mprotect", [1], 0, 1000)])[0], "vmas_created": [2], "vmas_parent": [1]}
    rows = [split, fault(1, 2, "zero", False)]
    res, _, _ = replay("pervma", [{**r, "op_id": i} for i, r in enumerate(rows)])
    assert res[1]["outcome"] == "success"
    rows[0] = {**split, "vmas_parent": [-1]}  # the same VMA as a new mapping: no anon_vma
    res, _, _ = replay("pervma", [{**r, "op_id": i} for i, r in enumerate(rows)])
    assert res[1]["outcome"] == "abort"


def test_a_merge_passes_the_anon_vma_to_the_vma_that_absorbs_it():
    """vma_expand() -> dup_anon_vma(): VMA 1 (which has one) merges into the new VMA
    (vmas_freed [1], vmas_successor [1000]), which then has it."""
    merge = {**mk([(1, "mprotect", [1, NEW], 0, 1000)])[0], "vmas_freed": [1], "vmas_successor": [NEW]}
    rows = numbered(mmap(), merge, fault(1, NEW, "zero", False))
    res, _, _ = replay("pervma", rows)
    assert res[2]["outcome"] == "success"
    rows[1] = {**rows[1], "vmas_freed": [], "vmas_successor": []}  # no merge: the new VMA has none
    res, _, _ = replay("pervma", rows)
    assert res[2]["outcome"] == "abort"


def test_6_18_prepares_the_anon_vma_under_the_vma_lock_after_mmap_read_trylock():
    """__vmf_anon_prepare(): mmap_read_trylock(), __anon_vma_prepare(), mmap_read_unlock()
    - one mmap_lock acquisition inside a fault served under the VMA lock; the VMA's next
    fault needs none."""
    rows = numbered(mmap(), fault(1, NEW, "anon", True), fault(1, NEW, "anon", True))
    res, lk, r = replay("mainline", rows)
    assert [res[i]["outcome"] for i in (1, 2)] == ["success", "success"]
    assert [res[i]["anon_prepare"] for i in (1, 2)] == [True, False]
    assert not res[1]["fallback"]
    assert lk["mm"]["acquisitions"] == 1 + 1  # the mmap, the trylock
    assert r.vma(NEW)["anon_vma"] == 1
    d = [res[i]["end_ns"] - res[i]["start_ns"] for i in (1, 2)]
    # __anon_vma_prepare()'s own work (retry.ANON_VMA_PREPARE_NS, est. 200 ns), plus the trylock's and the
    # unlock's atomics and the store of vma->anon_vma
    assert d[0] - d[1] > 200.0
    # a read (the zero page) needs no anon_vma: none prepared, no mmap_lock
    res, lk, _ = replay("mainline", numbered(mmap(), fault(1, NEW, "zero", False)))
    assert not res[1]["anon_prepare"] and lk["mm"]["acquisitions"] == 1


def test_6_18_a_failed_trylock_returns_vm_fault_retry_and_the_fault_prepares_under_mmap_lock():
    """A writer holds mmap_lock (an mprotect of another VMA, 10-60 us): the fault's
    down_read_trylock() fails (RWSEM_READ_FAILED_MASK) - VM_FAULT_RETRY, the VMA lock
    dropped, then lock_mmap waits for the writer and prepares it there."""
    rows = numbered(mmap(tid=2), fault(2, NEW, "anon", True, think=20_000),
                    {**mk([(1, "mprotect", [1], 10_000, 50_000)])[0]})
    res, lk, _ = replay("mainline", rows)
    f = res[1]
    assert (f["outcome"], f["fallback"], f["anon_prepare"]) == ("retry", True, True)
    assert lk["mm"]["trylock_failures"] >= 1
    assert f["lock_wait_ns"] > 20_000  # asleep on mmap_lock until the writer's up_write()
    assert f["end_ns"] > res[2]["end_ns"]
    # with the writer elsewhere in time the same fault succeeds under the VMA lock
    rows[2] = {**rows[2], "think_ns": 200_000}
    res, _, _ = replay("mainline", rows)
    assert (res[1]["outcome"], res[1]["anon_prepare"]) == ("success", True)


def test_6_8_a_cow_on_a_files_private_vma_without_anon_vma_retries_at_once():
    """6.8's vmf_anon_prepare() under the VMA lock: "vma_end_read(vma); return
    VM_FAULT_RETRY;" - no trylock; prepared under mmap_lock.  6.4 refuses the file VMA in
    lock_vma_under_rcu() (not anonymous): an abort."""
    rows = numbered(mmap(), fault(1, NEW, "cow", True, cls="file"))
    res, lk, _ = replay("pervma@6.8", rows)
    assert (res[1]["outcome"], res[1]["anon_prepare"]) == ("retry", True)
    assert lk["mm"]["trylock_failures"] == 0 and lk["mm"]["acquisitions"] == 2
    res, _, _ = replay("pervma", rows)
    assert res[1]["outcome"] == "abort"


# -- the op builder's side: which VMA a created one is copied from --------------------------------
def _space():
    asp = AddressSpace(IdSource())
    v = asp.new(0x10000, 0x20000, "rw-p", True)
    return asp, v


def test_the_tracker_names_each_created_vmas_parent():
    """apply_writer()'s last list (ops vmas_parent): an mprotect inside a VMA splits it
    twice - both pieces copied from it; a fresh mmap has none; an mremap move's new VMA is
    copied from its source."""
    rep = BuildReport()
    asp, v = _space()
    _, created, _, _, _, _, parent = apply_writer(asp, "mprotect", {"address": 0x14000, "len": 0x4000, "prot": 1},
                                                     0, 1, rep)
    assert len(created) == 2 and parent == [v.id, v.id]
    _, created, _, _, _, _, parent = apply_writer(asp, "mmap", {"len": 0x1000, "prot": 3, "flags": 0x22},
                                                     0x40000, 2, rep)
    assert len(created) == 1 and parent == [-1]
    _, created, freed, _, _, _, parent = apply_writer(asp, "mremap", {"address": 0x10000, "len": 0x4000,
                                                                        "new_len": 0x4000}, 0x80000, 3, rep)
    assert v.id in freed and len(created) == 1 and parent == [v.id]
