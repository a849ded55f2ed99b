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


def test_the_mm_users_load_waits_for_its_prefetch_and_is_served_by_it():
    """Two threads' prefetchw of the count line at once, on CPUs of two sockets: the first
    fill comes from the LLC, the second one cross-socket hand-off later.  The first
    thread's mm_users load, issued before its fill arrived, is served by that fill though
    the second's request has taken the line meanwhile; the second's waits for its own."""
    from replay.engine import coherence as C
    from replay.engine import micro

    rows = mk([(1, "fault", 1, 0, None), (2, "fault", 2, 0, None)])
    r = Replay("pvl-v2", BDW, 28, rows, service=1000.0)
    lat = BDW.latency_ns
    a, b = r.t(1), r.t(2)
    r.thread(1)["cpu"], r.thread(2)["cpu"] = 0, 14
    n = int(r.state["cfg"]["mm_count"][0])
    assert int(r.state["cfg"]["mm_count"][0]) == get_model("pvl-v2").layout.mm.fields["mm_users"] // 64
    micro.h_prefetchw(r.S, a, 0, n, 0)
    micro.h_prefetchw(r.S, b, 0, n, 0)
    assert float(r.thread(2)["pf_until"]) == pytest.approx(lat["llc_hit"] + lat["cross_socket_handoff"])
    assert not C.holds(r.S, n, 0)  # CPU 14's request took it
    assert C.read_from(r.S, a, n, 1.0) == pytest.approx(lat["llc_hit"] + lat["l1_hit"])
    assert C.read_from(r.S, b, n, 1.0) == pytest.approx(lat["llc_hit"] + lat["cross_socket_handoff"]
                                                      + lat["l1_hit"])
    # issued after its fill came and went, CPU 0's next load fetches the line back
    assert C.read_from(r.S, a, n, 500.0) == pytest.approx(500.0 + lat["cross_socket_handoff"])


@pytest.mark.parametrize("model,line", [("pervma@6.2", 2), ("pervma", 3), ("pervma@6.13", 3)])
def test_pervma_on_a_6_2_kernel_has_6_2s_mm_struct(model, line):
    """mm_lock_seq after mmlist: line 2 of 6.2's mm_struct; 6.4 moved mm_count to its own
    line 0, and everything after it, mm_lock_seq to line 3."""
    assert get_model(model).layout.mm.fields["mm_lock_seq"] // 64 == line
