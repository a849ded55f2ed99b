"""prefetchw(&current->mm->mmap_lock) at every x86 fault's entry (arch/x86/mm/fault.c
exc_page_fault(), until "x86/mm: stop prefetching the mmap semaphore on page faults",
posted 1 Apr 2025): a non-blocking request for ownership that moves the line, not an
atomic that holds it."""

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


def test_prefetchw_moves_the_line_and_holds_nothing():
    st = _state()
    S, ln = st.S[0], st["ln"]
    n = int(st["cfg"]["mm_count"][0])  # mmap_lock's count line
    C.coh_write(S, n, 14, 0.0, True, True)  # CPU 14 (the other socket) owns it, an RMW in flight
    busy, ver = float(ln["busy_until"][n]), int(ln["version"][n])
    assert busy > 0 and int(ln["owner"][n]) == 14
    assert C.coh_prefetchw(S, n, 0)  # CPU 0 asks for ownership: the line moves...
    assert int(ln["owner"][n]) == 0 and not C.holds(S, n, 14) and int(ln["transfers"][n]) == 2
    # ...without holding it or changing its value: an RMW's cmpxchg still sees its version
    assert float(ln["busy_until"][n]) == busy and int(ln["version"][n]) == ver
    assert not C.coh_prefetchw(S, n, 0)  # already exclusive here: nothing moves
    # CPU 14 must fetch it back from CPU 0: a cross-socket hand-off
    start, cost = C.coh_write(S, n, 14, busy, True, True)
    assert cost == BDW.latency_ns["cross_socket_handoff"] + BDW.latency_ns["owned_atomic"]


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
