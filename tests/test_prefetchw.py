"""prefetchw(&current->mm->mmap_lock) at every x86 fault's entry (arch/x86/mm/fault.c
exc_page_fault(), until "x86/mm: Stop prefetching current->mm->mmap_lock on page
faults", pulled for v6.16): a non-blocking request for ownership that moves the line, not an
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


@pytest.mark.parametrize("model,want", [
    ("mmap_lock", True), ("pervma", True), ("pvl-v2", True), ("inline-rwsem", True), ("v7", True), ("v8", True),
    ("mainline", False),  # its own release, 6.18: after the removal (v6.16)
    ("mainline@6.13", True), ("mainline@6.15", True),  # the design on the kernels before it (Zen 5's v9 column)
    ("pervma@6.16", False), ("pervma@6.18", False), ("pvl-v2@6.18", False), ("v8@6.15", True)])
def test_every_fault_prefetches_mmap_lock_before_6_16(model, want):
    """exc_page_fault()'s prefetchw(&current->mm->mmap_lock) is in every x86 fault of a
    release before 6.16 ("x86/mm: Stop prefetching current->mm->mmap_lock on page
    faults", pulled for v6.16), whatever the lock design, and in none after."""
    m = get_model(model)
    for prog in ("fault", "kernel_fault"):
        first = m.programs[prog][0]
        assert (first[0] == Op.PREFETCHW and first[1:] == ("mm", "mmap_lock.count")) == want, (model, prog)
        # once, at entry: a re-walk or the fallback path does not prefetch again
        assert sum(ins[0] == Op.PREFETCHW for ins in m.programs[prog]) == int(want)


def test_the_design_on_an_older_release_prefetches_at_its_cost():
    """mainline@6.13 (the merged design as its v9 posting ran, on 6.13) pays the entry
    prefetch's instruction that mainline on 6.18 does not: with one thread the line is
    free, so an L1 hit's time (adjacent-line prefetcher off, as in the test below)."""
    from replay.engine import replay

    ops = pl.DataFrame({"op_id": [0], "tid": [1], "mm": ["pid:1"], "kind": ["fault"], "vma_id": [1],
                        "kernel": [False], "think_ns": [0]})
    m = dataclasses.replace(BDW, adjacent_line_prefetch=False)
    old = replay(ops, get_model("mainline@6.13"), m, 1, fault_service="0").results.row(0, named=True)
    new = replay(ops, get_model("mainline"), m, 1, fault_service="0").results.row(0, named=True)
    assert old["cache_ns"] - new["cache_ns"] == pytest.approx(BDW.latency_ns["l1_hit"])


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


def test_the_faults_iret_waits_for_its_prefetch_fill():
    """IRET is serializing (Intel SDM vol. 3A) and a software prefetch is ordered before a
    serializing instruction (vol. 2B PREFETCHW): a fault whose entry prefetchw is still in
    flight at its return goes on when the fill lands, the wait counted as cache time -
    whether the request was sent at once or waited its turn at a busy line."""
    st = _state()
    S, th, g = _S(st), st["th"], st["g"]
    lat = BDW.latency_ns
    n = int(st["cfg"]["mm_count"][0])
    t = 0
    assert int(th["cpu"][t]) == 0
    C.coh_write(S, n, 14, 0.0, True, True)  # the other socket's RMW holds the line until `busy`
    busy = float(st["ln"]["busy_until"][n])
    g["now"][0] = 1.0
    C.prefetchw(S, t, n)  # finds the line busy: waits at it, t goes on
    assert bool(th["pf_pending"][t])
    g["now"][0] = 2.0
    cache0 = float(th["cache"][t])
    assert C.serialize(S, t) == -1.0  # the return stalls on the queued prefetch
    assert int(th["lq_state"][t]) == C.LQ_FILL and C.still_waiting(S, t)
    g["now"][0] = busy
    C.arbitrate(S, n)  # the line comes free: the prefetch is served, its fill due after the hand-off
    fill = float(th["pf_until"][t])
    assert not th["pf_pending"][t] and fill == pytest.approx(busy + lat["cross_socket_handoff"])
    g["now"][0] = fill  # arbitrate() ran t again at the fill (sched.at)
    assert C.serialize(S, t) == pytest.approx(fill)
    assert float(th["cache"][t]) - cache0 == pytest.approx(fill - 2.0)  # counted from the return's issue
    assert int(th["lq_state"][t]) == C.LQ_NONE
    # sent at once to a free line: the return waits for the fill's hand-off alone
    m = n + 2
    C.coh_write(S, m, 14, 0.0, True, True)
    g["now"][0] = float(st["ln"]["busy_until"][m]) + 10.0
    C.prefetchw(S, t, m)
    fill = float(th["pf_until"][t])
    assert fill == pytest.approx(g["now"][0] + lat["cross_socket_handoff"])
    assert C.serialize(S, t) == pytest.approx(fill)
    g["now"][0] = fill + 5.0  # landed already: no wait
    assert C.serialize(S, t) == pytest.approx(fill + 5.0)


@pytest.mark.parametrize("model", ["mmap_lock", "pervma", "pvl-v2", "inline-rwsem", "v7", "v8", "mainline"])
def test_every_fault_returns_through_iret(model):
    """Each way a fault program ends (the VMA lock's success, the mmap_lock path, the
    fallback's) is IRET then END; no other op kind's program has an IRET."""
    m = get_model(model)
    for prog in ("fault", "kernel_fault"):
        p = m.programs[prog]
        ends = [i for i, ins in enumerate(p) if ins[0] == Op.END]
        assert ends and all(p[i - 1][0] == Op.IRET for i in ends), (model, prog)
    for prog in ("writer", "madvise"):
        assert not any(ins[0] == Op.IRET for ins in m.programs[prog])


def test_a_contended_prefetch_holds_the_fault_until_its_fill():
    """Two threads of v8 on the two sockets, each faulting twice on its own VMA with no
    service time, the second faults at once (open loop, 5 us): warm, nothing in them
    misses but the entry prefetch of mm's count line (pgd is in the line before it), which
    CPU 14's first fault left there.  CPU 0's prefetch takes it over in one cross-socket
    hand-off, CPU 14's queues behind it and takes it back in a second - and each fault
    ends at its fill, at its IRET: 118 and 236 ns on Broadwell.  On 6.16 (no prefetch)
    both take the same few L1 hits and no transfer."""
    from replay.engine import replay

    ops = pl.DataFrame({"op_id": [0, 1, 2, 3], "tid": [1, 2, 1, 2], "mm": ["pid:1"] * 4, "kind": ["fault"] * 4,
                        "vma_id": [1, 2, 1, 2], "kernel": [False] * 4, "think_ns": [0] * 4,
                        "start_ns": [0, 0, 5000, 5000]})
    m = dataclasses.replace(BDW, adjacent_line_prefetch=False)
    hop = BDW.latency_ns["cross_socket_handoff"]
    got = {}
    for model in ("v8", "v8@6.16"):
        res = replay(ops, get_model(model), m, 28, placement="spread", fault_service="0", open_loop=True).results
        got[model] = {r["op_id"]: r for r in res.iter_rows(named=True)}
    v8, new = got["v8"], got["v8@6.16"]
    assert (v8[2]["sim_cpu"], v8[3]["sim_cpu"]) == (0, 14)
    assert v8[2]["end_ns"] - 5000 == pytest.approx(hop) and v8[2]["line_transfers"] == 1
    assert v8[3]["end_ns"] - 5000 == pytest.approx(2 * hop) and v8[3]["line_transfers"] == 1
    assert v8[3]["cache_ns"] == pytest.approx(2 * hop)
    assert new[2]["end_ns"] == new[3]["end_ns"] < 5000 + hop / 2 and new[3]["line_transfers"] == 0
