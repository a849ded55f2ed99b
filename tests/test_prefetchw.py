"""prefetchw(&current->mm->mmap_lock) at every x86 fault's entry (arch/x86/mm/fault.c
exc_page_fault(), until "x86/mm: stop prefetching the mmap semaphore on page faults",
posted 1 Apr 2025): a request for ownership the core does not wait for, but a transfer
like any other - it queues at the line and takes its hand-off time - not an atomic that
holds it."""

import dataclasses

import polars as pl
import pytest

from replay.engine import coherence as C
from replay.engine import load as L
from replay.engine.isa import Op
from replay.machines import load_machine
from replay.models import get_model

BDW = load_machine("broadwell-2s")


def _state(model="v8"):
    ops = pl.DataFrame({"op_id": [0, 1], "tid": [1, 2], "mm": ["pid:1"] * 2, "kind": ["fault"] * 2,
                        "vma_id": [1, 1], "kernel": [False, False], "think_ns": [0, 0]})
    return L.load(get_model(model), BDW, 4, ops, "spread", False, None, 64)[0]


def test_prefetchw_is_a_transfer_the_core_does_not_wait_for():
    st = _state()
    S, ln = st.S[0], st["ln"]
    lat = BDW.latency_ns
    n = int(st["cfg"]["mm_count"][0])  # mmap_lock's count line
    C.coh_write(S, n, 14, 0.0, True, True)  # CPU 14 (the other socket) owns it, an RMW in flight
    busy, ver = float(ln["busy_until"][n]), int(ln["version"][n])
    assert busy > 0 and int(ln["owner"][n]) == 14
    assert C.coh_prefetchw(S, n, 0, 0.0)  # CPU 0 asks for ownership: the line moves...
    assert int(ln["owner"][n]) == 0 and not C.holds(S, n, 14) and int(ln["transfers"][n]) == 2
    # ...after the RMW in flight, in one cross-socket hand-off, without changing its value
    arrives = busy + lat["cross_socket_handoff"]
    assert float(ln["fill_until"][n]) == pytest.approx(arrives) and int(ln["version"][n]) == ver
    assert float(ln["busy_until"][n]) == pytest.approx(arrives)  # others queue behind the transfer
    assert not C.coh_prefetchw(S, n, 0, 0.0)  # already exclusive here: nothing moves
    # CPU 0's own load before the fill waits for it, then hits
    assert C.coh_read(S, n, 0, 1.0) == (pytest.approx(arrives), lat["l1_hit"])
    # CPU 14 must fetch it back from CPU 0 once it has arrived: a cross-socket hand-off
    start, cost = C.coh_write(S, n, 14, busy, True, True)
    assert start == pytest.approx(arrives)
    assert cost == lat["cross_socket_handoff"] + lat["owned_atomic"]


def test_prefetches_of_one_line_queue_behind_each_other():
    st = _state()
    S, ln = st.S[0], st["ln"]
    lat = BDW.latency_ns
    n = int(st["cfg"]["mm_count"][0])
    C.coh_prefetchw(S, n, 0, 0.0)  # from the LLC
    C.coh_prefetchw(S, n, 1, 0.0)  # then from CPU 0, same socket
    C.coh_prefetchw(S, n, 14, 0.0)  # then from CPU 1, across
    want = lat["llc_hit"] + lat["socket_handoff"] + lat["cross_socket_handoff"]
    assert float(ln["fill_until"][n]) == pytest.approx(want) and int(ln["owner"][n]) == 14
    assert int(ln["transfers"][n]) == 3


@pytest.mark.parametrize("model", ["mmap_lock", "pervma", "inline-rwsem", "v7", "v8", "mainline"])
def test_every_fault_prefetches_mmap_lock_until_2025(model):
    m = get_model(model)
    want = model != "mainline"  # the mainline model has 6.18's layouts: after the removal
    for prog in ("fault", "kernel_fault"):
        first = m.programs[prog][0]
        assert (first[0] == Op.PREFETCHW and first[1:] == ("mm", "mmap_lock.count")) == want, (model, prog)
        # once, at entry: a re-walk or the fallback path does not prefetch again
        assert sum(ins[0] == Op.PREFETCHW for ins in m.programs[prog]) == int(want)


def test_a_prefetching_fault_pays_an_instruction_not_the_transfer():
    from replay.engine import replay

    # one thread, v8: its fault's prefetchw takes the mmap_lock line (nobody else has it),
    # which costs the fault an L1 hit, not the LLC fetch an RMW would pay.  With the
    # adjacent-line prefetcher off: on, the fetch also brings the count line's buddy -
    # the line of mm_lock_seq, which the fault reads next - and that read hits
    ops = pl.DataFrame({"op_id": [0], "tid": [1], "mm": ["pid:1"], "kind": ["fault"], "vma_id": [1],
                        "kernel": [False], "think_ns": [0]})
    for m in (dataclasses.replace(BDW, adjacent_line_prefetch=False), BDW):
        v8 = replay(ops, get_model("v8"), m, 1, fault_service="0").results.row(0, named=True)
        ml = replay(ops, get_model("mainline"), m, 1, fault_service="0").results.row(0, named=True)
        saved = 0.0 if not m.adjacent_line_prefetch else BDW.latency_ns["llc_hit"] - BDW.latency_ns["l1_hit"]
        assert v8["cache_ns"] - ml["cache_ns"] == pytest.approx(BDW.latency_ns["l1_hit"] - saved)
