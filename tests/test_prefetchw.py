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


def _S(st):
    return st.S[0] if hasattr(st.S, "dtype") else st.S


def test_prefetchw_is_a_request_queued_like_any_other():
    """An RFO: it waits for the request in flight, occupies the line for its hand-off
    (the Cbo serves one request per address at a time), moves it, changes no value."""
    st = _state()
    S, ln = _S(st), st["ln"]
    lat = BDW.latency_ns
    n = int(st["cfg"]["mm_count"][0])  # mmap_lock's count line
    C.coh_write(S, n, 14, 0.0, True, True)  # CPU 14 (the other socket) owns it, an RMW in flight
    busy, ver = float(ln["busy_until"][n]), int(ln["version"][n])
    assert busy > 0 and int(ln["owner"][n]) == 14
    moved, fill = C.coh_prefetchw(S, n, 0, 0.0)  # CPU 0 asks for ownership at 0: queued behind it
    assert moved and fill == pytest.approx(busy + lat["cross_socket_handoff"])
    assert int(ln["owner"][n]) == 0 and not C.holds(S, n, 14) and int(ln["transfers"][n]) == 2
    assert float(ln["busy_until"][n]) == fill and int(ln["version"][n]) == ver  # occupied; no value change
    assert C.coh_prefetchw(S, n, 0, 1.0) == (False, fill)  # already here: nothing moves, the fill still due
    # CPU 14's next RMW waits for the fill, then fetches the line back: a cross-socket hand-off
    start, cost = C.coh_write(S, n, 14, 1.0, True, True)
    assert start == fill and cost == lat["cross_socket_handoff"] + lat["owned_atomic"]


def test_a_load_that_moves_a_line_occupies_it():
    """Two loads of a Modified line: the second waits for the first (it queues at the
    line's home) instead of being served beside it; a hit neither waits nor occupies."""
    st = _state()
    S, ln = _S(st), st["ln"]
    n = int(st["cfg"]["mm_count"][0]) + 2
    C.coh_write(S, n, 0, 0.0, False, True)
    free = float(ln["busy_until"][n])
    s1, c1 = C.coh_read(S, n, 1, free)
    assert s1 == free and float(ln["busy_until"][n]) == s1 + c1
    s2, c2 = C.coh_read(S, n, 2, free)
    assert s2 == s1 + c1 and c2 == BDW.latency_ns["socket_read_shared"]
    s3, c3 = C.coh_read(S, n, 1, free)  # CPU 1 holds a copy: a hit, at once
    assert (s3, c3) == (free, BDW.latency_ns["l1_hit"]) and float(ln["busy_until"][n]) == s2 + c2


def test_the_own_access_in_flight_is_served_by_the_fill():
    """A load or locked RMW by the prefetching CPU before its fill lands completes with
    the fill (LOAD_HIT_PRE.SW_PF), though another CPU's request queued behind the
    prefetch has taken the line in the engine's state meanwhile; afterwards it is a miss."""
    st = _state()
    S, ln = _S(st), st["ln"]
    lat = BDW.latency_ns
    n = int(st["cfg"]["mm_count"][0])
    th = st["th"]
    t = 0
    cpu0 = int(th["cpu"][t])
    C.coh_write(S, n, 14, 0.0, True, True)
    moved, fill = C.coh_prefetchw(S, n, cpu0, 0.0)
    th["pf_line"][t], th["pf_until"][t] = n, fill  # what h_prefetchw records
    C.coh_write(S, n, 15, 1.0, True, True)  # CPU 15's RMW queues behind the prefetch: the line will be its
    assert int(ln["owner"][n]) == 15
    ver = int(ln["version"][n])
    end = C.rmw_from(S, t, n, True, 2.0)  # t's xadd, issued before its fill lands
    assert end == pytest.approx(fill + lat["owned_atomic"]) and int(ln["version"][n]) == ver + 1
    assert C.read_from(S, t, n, end) == pytest.approx(end + lat["l1_hit"])  # issued as it completed: chained
    later = C.read_from(S, t, n, end + 500.0)  # after the window: the line is CPU 15's now, a transfer
    assert later > end + 500.0 + lat["l1_hit"]


def test_without_prfchw_the_prefetch_is_a_read():
    """Ivy Bridge has no PREFETCHW: Linux's prefetchw() is PREFETCHT0 there.  The line comes
    Shared, other copies stay, and a locked RMW after it sends its own RFO behind the fill."""
    ivb = load_machine("ivybridge-2s")
    assert not ivb.prefetchw and BDW.prefetchw
    ops = pl.DataFrame({"op_id": [0, 1], "tid": [1, 2], "mm": ["pid:1"] * 2, "kind": ["fault"] * 2,
                        "vma_id": [1, 1], "kernel": [False, False], "think_ns": [0, 0]})
    st = L.load(get_model("v8"), ivb, 4, ops, "spread", False, None, 64)[0]
    S, ln, th = _S(st), st["ln"], st["th"]
    n = int(st["cfg"]["mm_count"][0])
    C.coh_write(S, n, 1, 0.0, True, True)  # CPU 1 owns it Modified
    moved, fill = C.coh_prefetchw(S, n, 0, 0.0)
    assert moved and int(ln["owner"][n]) == -1 and C.holds(S, n, 1) and C.holds(S, n, 0)  # both Shared
    th["pf_line"][0], th["pf_until"][0] = n, fill
    assert int(th["cpu"][0]) == 0
    end = C.rmw_from(S, 0, n, True, 1.0)  # not served by the read's fill: an upgrade after it
    lat = ivb.latency_ns
    assert end == pytest.approx(fill + lat["socket_read_exclusive"] / 2 + lat["owned_atomic"])


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


@pytest.mark.parametrize("model", ["mmap_lock", "pervma", "pvl-v2", "inline-rwsem", "v7", "v8", "mainline"])
def test_every_fault_reads_mm_pgd_before_its_work(model):
    """__handle_mm_fault(): ``pgd = pgd_offset(mm, address);`` on every path that reaches
    the fault's work - under the VMA lock and under mmap_lock - before it (and so before
    vmf_anon_prepare() and a file fault's VM_FAULT_RETRY)."""
    from replay.models.kernels import PGD_READ

    prog = get_model(model).programs["fault"]
    work = [i for i, ins in enumerate(prog) if ins[0] == Op.HANDLE_MM_FAULT]
    assert work
    for i in work:
        back = [ins for ins in prog[max(0, i - 8):i]]
        assert PGD_READ in back, (model, i)
        j = i - back[::-1].index(PGD_READ) - 1
        assert not any(ins[0] in (Op.ANON_VMA_CHECK, Op.FAULT_RETRY) for ins in prog[max(0, i - 8):j]), (model, i)


def test_pgd_shares_the_count_line_until_6_11():
    """pgd at 72 (6.3) and 136 (6.4) is in the line of mmap_lock's count; at 120 in 6.18's
    mm_struct (BTF) it is in the line before."""
    from replay.models.kernels import MM, MM_63, MM_64

    for mm, same in ((MM_63, True), (MM_64, True), (MM, False)):
        assert (mm.fields["pgd"] // 64 == mm.fields["mmap_lock.count"] // 64) == same, mm
