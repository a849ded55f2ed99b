"""The per-VMA lock as posted in v2 ("[PATCH v2 00/33] Per-VMA locks", Suren
Baghdasaryan, 27 Jan 2023) - the kernel Punit Agrawal's Ice Lake pft tables measured as
`pvl-v2` - and pervma's patches on a 6.2 kernel (`pervma@6.2`): what differs from 6.4's
pervma, each small enough to check by hand.

29/33 do_user_addr_fault(): ``if (!(flags & FAULT_FLAG_USER) ||
atomic_read(&mm->mm_users) == 1) goto lock_mmap;`` - a single-threaded mm never tries the
VMA lock and counts no VMA_LOCK_* event; every user fault loads mm_users, on 6.2's
mmap_lock count line, the line its prefetchw has just asked for."""

from __future__ import annotations

import pytest

from engine_harness import BDW, Replay, by_op, mk
from replay.engine.isa import Op
from replay.models import get_model


def replay(model, rows, cpus=2):
    r = Replay(model, BDW, cpus, rows, service=1000.0)
    return by_op(r.run()), r.lock_stats()


def test_a_single_threaded_mm_takes_mmap_lock_without_trying_the_vma_lock():
    res, lk = replay("pvl-v2", mk([(1, "fault", 1, 0, None), (1, "fault", 1, 0, None)]))
    for f in res.values():
        assert (f["outcome"], f["fallback"], f["attempts"]) == (None, False, 0)
    assert lk["mm"]["acquisitions"] == 2  # both under mmap_lock
    # 6.4's pervma has no such test: the same faults go under the VMA lock
    res, lk = replay("pervma@6.2", mk([(1, "fault", 1, 0, None), (1, "fault", 1, 0, None)]))
    assert [f["outcome"] for f in res.values()] == ["success", "success"]
    assert "mm" not in lk or lk["mm"]["acquisitions"] == 0


def test_two_threads_take_the_vma_lock():
    res, lk = replay("pvl-v2", mk([(1, "fault", 1, 0, None), (2, "fault", 1, 0, None)]))
    assert [(f["outcome"], f["attempts"]) for f in res.values()] == [("success", 1), ("success", 1)]
    assert "mm" not in lk or lk["mm"]["acquisitions"] == 0


def test_every_user_fault_loads_mm_users_on_mmap_locks_count_line():
    m = get_model("pvl-v2")
    mm = m.layout.mm.fields
    assert mm["mm_users"] // 64 == mm["mmap_lock.count"] // 64 == 1  # 6.2's line 1
    fault = m.programs["fault"]
    assert fault[:2] == [(Op.PREFETCHW, "mm", "mmap_lock.count"), (Op.READ, "mm", "mm_users")]
    assert fault[2][0] == Op.CHECK_MM_USERS  # -> lock_mmap, the mmap_lock path:
    assert fault[fault[2][1]][0] == Op.RWSEM_TRYLOCK_READ and fault[fault[2][1]][1] == "mmap_lock"
    # a kernel-mode fault short-circuits the || before the load
    assert not any(ins[0] == Op.CHECK_MM_USERS for ins in m.programs["kernel_fault"])


@pytest.mark.parametrize("model,line", [("pervma@6.2", 2), ("pervma", 3), ("pervma@6.13", 3)])
def test_pervma_on_a_6_2_kernel_has_6_2s_mm_struct(model, line):
    """mm_lock_seq after mmlist: line 2 of 6.2's mm_struct; 6.4 moved mm_count to its own
    line 0, and everything after it, mm_lock_seq to line 3."""
    assert get_model(model).layout.mm.fields["mm_lock_seq"] // 64 == line
