"""vma_start_write() where the kernel calls it: each VMA of the call write-locked only when
the call's walk reaches it (micro.h_vma_start_write_next(); Linux 6.18 mm/mprotect.c
do_mprotect_pkey(): ``for_each_vma_range(vmi, vma, end)`` -> mprotect_fixup() ->
vma_modify_flags() / ``vma_start_write(vma)``, then change_protection() on that VMA).

The toy: an mmap (the trace's creator of both VMAs) gives VMA 10 [A, A + 1 MiB) and VMA 11
[A + 1 MiB, A + 2 MiB); one mprotect over [A, A + 2 MiB), a 2 ms hold: it locks VMA 10,
spends its share of the hold there - half, by bytes in the range - then locks VMA 11 for
the other half.  Faults from two other threads, each on its own CPU (100 us each, SLOW):
on VMA 11 at 0.5 ms (not yet reached: it succeeds under the VMA lock) and again at ~1.6 ms
(reached: abort), and on VMA 10 at 0.5 ms (locked from the start: abort).
"""

import pytest

from engine_harness import SLOW, Replay, by_op

A = 0x40000000
MIB = 1 << 20
MS = 1_000_000


def _ops():
    return [
        {"op_id": 0, "tid": 1, "kind": "mmap", "vma_ids": [], "vmas_created": [10, 11], "lock_mode": "write",
         "range_vmas": [10, 11], "range_start": [A, A + MIB], "range_end": [A + MIB, A + 2 * MIB],
         "think_ns": 0, "hold_ns": 1_000, "kernel": False},
        {"op_id": 1, "tid": 1, "kind": "mprotect", "vma_ids": [10, 11], "lock_mode": "write", "address": A,
         "length": 2 * MIB, "think_ns": 0, "hold_ns": 2 * MS, "kernel": False},
        {"op_id": 2, "tid": 2, "kind": "fault", "vma_id": 11, "address": A + MIB + 4096, "think_ns": MS // 2,
         "kernel": False},
        {"op_id": 3, "tid": 3, "kind": "fault", "vma_id": 10, "address": A + 4096, "think_ns": MS // 2,
         "kernel": False},
        {"op_id": 4, "tid": 2, "kind": "fault", "vma_id": 11, "address": A + MIB + 8192, "think_ns": MS,
         "kernel": False},
    ]


@pytest.mark.parametrize("model", ["pervma", "mainline"])
def test_each_vma_is_write_locked_from_when_the_walk_reaches_it(model):
    res = by_op(Replay(model, SLOW, 3, _ops()).run())
    w = res[1]
    assert w["start_ns"] < 0.5 * MS and w["end_ns"] == pytest.approx(w["start_ns"] + 2 * MS, abs=10_000)
    early11, early10, late11 = res[2], res[3], res[4]
    assert early11["start_ns"] < w["start_ns"] + 1 * MS < late11["start_ns"] < w["end_ns"]
    assert early11["outcome"] == "success" and not early11["fallback"], "VMA 11 not reached yet"
    assert early10["outcome"] == "abort" and early10["fallback"], "VMA 10 locked since the walk began"
    assert late11["outcome"] == "abort" and late11["fallback"], "VMA 11 reached: locked until the call ends"
