"""Requests that find a line busy wait at the line, and its arbiter picks the next
(replay/engine/coherence.py: wait_line(), arbitrate()): the LLC domain the line was last
served to first, the oldest first within it - the Cbo/CHA retries same-address requests
rather than queueing them in arrival order (UNC_C_RxR_IRQ_RETRY.ADDR_CONFLICT), and a
socket passes a line it holds among its own cores.  A load or an atomic stalls its
thread until its turn; a store and a prefetchw wait at the line while the thread goes on."""

import polars as pl
import pytest

from replay.engine import coherence as C
from replay.engine import load as L
from replay.machines import load_machine
from replay.models import get_model

from engine_harness import BDW as BDW_FIXED, Replay, mk

BDW = load_machine("broadwell-2s")
LAT = BDW.latency_ns


def _state(ntids=3):
    """Threads 0, 1, 2 on CPUs 0 (socket 0), 14 (socket 1), 1 (socket 0)."""
    ops = pl.DataFrame({"op_id": list(range(ntids)), "tid": list(range(1, ntids + 1)), "mm": ["pid:1"] * ntids,
                        "kind": ["fault"] * ntids, "vma_id": [1] * ntids, "kernel": [False] * ntids,
                        "think_ns": [0] * ntids})
    st = L.load(get_model("v8"), BDW, 4, ops, "spread", False, None, 64)[0]
    assert list(st["th"]["cpu"]) == [0, 14, 1][:ntids]
    assert [int(st["cpus"]["socket"][c]) for c in (0, 14, 1)] == [0, 1, 0]
    return st


def _S(st):
    return st.S[0] if hasattr(st.S, "dtype") else st.S


def _at(st, now):
    st["g"]["now"][0] = now


def _events(st):
    """The heap's current events: (when, thread) for threads, (when, 'line', n) for arbiters."""
    nt = int(st["cfg"]["nthreads"][0])
    out = []
    for e in st["hp"][: int(st["g"]["heap_n"][0])]:
        t = int(e["t"])
        if t < nt and e["token"] == st["th"]["token"][t]:
            out.append((float(e["when"]), t))
        elif t >= nt and e["token"] == st["ln"]["arb_tok"][t - nt]:
            out.append((float(e["when"]), "line", t - nt))
    return sorted(out, key=str)


def test_the_line_goes_to_its_own_socket_first():
    """CPU 0 holds the line in an atomic; CPU 14 (the other socket) asks first, CPU 1 (CPU
    0's socket) after it: when the line comes free the arbiter serves CPU 1, then 14."""
    st = _state()
    S, ln, th = _S(st), st["ln"], st["th"]
    n = int(st["cfg"]["mm_count"][0]) + 4  # a line nothing else touches
    s, cost = C.coh_write(S, n, 0, 0.0, True, True)
    free = s + cost
    assert free == LAT["llc_hit"] + LAT["owned_atomic"] and int(ln["last_cpu"][n]) == 0
    _at(st, 1.0)
    assert C.rmw(S, 1, n, True) == -1.0  # thread 1 (CPU 14) stalls at the busy line
    _at(st, 2.0)
    assert C.rmw(S, 2, n, True) == -1.0  # thread 2 (CPU 1)
    assert int(ln["q_n"][n]) == 2 and int(th["lq_state"][1]) == C.LQ_QUEUED == int(th["lq_state"][2])
    assert (free, "line", n) in _events(st)  # the arbiter runs when the line comes free
    _at(st, free)
    C.arbitrate(S, n)
    assert int(ln["reserved"][n]) == 2 and int(th["lq_state"][2]) == C.LQ_GRANTED
    assert (free, 2) in _events(st) and int(th["lq_state"][1]) == C.LQ_QUEUED
    end = C.rmw(S, 2, n, True)  # its access runs at the grant; its time counts from its issue at 2
    assert end == free + LAT["socket_handoff"] + LAT["owned_atomic"]
    assert float(th["cache"][2]) == end - 2.0 and int(ln["reserved"][n]) == -1
    assert (end, "line", n) in _events(st)  # thread 1 still waits: the arbiter again at the end
    _at(st, end)
    C.arbitrate(S, n)
    assert int(ln["reserved"][n]) == 1 and int(ln["q_n"][n]) == 0


def test_a_granted_access_schedules_the_arbiter_once():
    """The access a grant runs moves the line: the arbiter's next turn is scheduled once,
    when the line comes free again (_served()), not also at the grant (where the access
    moving the line would supersede it: a dead heap event per grant)."""
    st = _state()
    S, ln = _S(st), st["ln"]
    n = int(st["cfg"]["mm_count"][0]) + 4
    nt = int(st["cfg"]["nthreads"][0])
    s, cost = C.coh_write(S, n, 0, 0.0, True, True)
    free = s + cost
    _at(st, 1.0)
    assert C.rmw(S, 1, n, True) == -1.0
    _at(st, 2.0)
    assert C.rmw(S, 2, n, True) == -1.0

    def line_entries():  # the heap's entries for n's arbiter, current or superseded
        return sum(int(e["t"]) == nt + n for e in st["hp"][: int(st["g"]["heap_n"][0])])

    _at(st, free)
    C.arbitrate(S, n)
    assert int(ln["reserved"][n]) == 2
    before = line_entries()
    end = C.rmw(S, 2, n, True)
    assert (end, "line", n) in _events(st)  # thread 1 still waits: the arbiter again at the end
    assert line_entries() == before + 1


def test_a_store_waits_at_the_line_and_the_next_atomic_waits_for_it():
    """A store to a busy line retires at once (its request waits at the line); a locked
    instruction after it waits until the arbiter has committed it (the store buffer
    drains first), even on a free line."""
    st = _state()
    S, ln, th = _S(st), st["ln"], st["th"]
    n = int(st["cfg"]["mm_count"][0]) + 4
    m = n + 2
    s, cost = C.coh_write(S, n, 14, 0.0, True, True)  # CPU 14's atomic holds the line
    free = s + cost
    _at(st, 1.0)
    assert C.store(S, 0, n) == 1.0 + LAT["l1_hit"]  # thread 0 goes on
    assert int(th["sb_pending"][0]) == 1 and int(ln["owner"][n]) == 14  # not committed yet
    _at(st, 3.0)
    assert C.rmw(S, 0, m, True) == -1.0 and int(th["lq_state"][0]) == C.LQ_DRAIN  # m is free, but
    _at(st, free)
    C.arbitrate(S, n)  # the arbiter commits the store: the line comes across from the other socket
    drained = free + LAT["cross_socket_handoff"] + LAT["l1_hit"]
    assert int(ln["owner"][n]) == 0 and int(th["sb_pending"][0]) == 0
    assert float(th["sb_until"][0]) == drained and (drained, 0) in _events(st)
    _at(st, drained)
    assert C.rmw(S, 0, m, True) == drained + LAT["llc_hit"] + LAT["owned_atomic"]


def test_a_queued_prefetchw_serves_its_own_load_when_it_lands():
    """prefetchw to a busy line waits at the line while the thread goes on; the thread's
    load of the line then waits for that fill (not a request of its own) and completes
    with it (LOAD_HIT_PRE.SW_PF)."""
    st = _state()
    S, ln, th = _S(st), st["ln"], st["th"]
    n = int(st["cfg"]["mm_count"][0]) + 4
    s, cost = C.coh_write(S, n, 14, 0.0, True, True)
    free = s + cost
    _at(st, 1.0)
    assert C.prefetchw(S, 0, n) is False and int(th["pf_pending"][0]) == 1
    _at(st, 2.0)
    assert C.read(S, 0, n) == -1.0 and int(th["lq_state"][0]) == C.LQ_FILL
    assert int(ln["q_n"][n]) == 1  # only the prefetch waits at the line
    _at(st, free)
    C.arbitrate(S, n)
    fill = free + LAT["cross_socket_handoff"]
    assert float(th["pf_until"][0]) == fill and int(ln["owner"][n]) == 0 and (fill, 0) in _events(st)
    _at(st, fill)
    assert C.read(S, 0, n) == fill + LAT["l1_hit"] and float(th["cache"][0]) == fill + LAT["l1_hit"] - 2.0


def test_a_hit_does_not_wait_behind_requests_at_the_line():
    """A CPU with a copy reads it at once, though others wait for the line."""
    st = _state()
    S, ln = _S(st), st["ln"]
    n = int(st["cfg"]["mm_count"][0]) + 4
    C.coh_read(S, n, 0, 0.0)  # CPU 0 has a Shared copy
    s, cost = C.coh_write(S, n, 1, 30.0, True, True)  # CPU 1's atomic invalidates it...
    C.coh_read(S, n, 0, s + cost)  # ...and CPU 0 reads it back: Shared in 0 and 1
    busy = float(ln["busy_until"][n])
    _at(st, busy - 1.0)  # the read's transfer still occupies the line
    assert C.rmw(S, 1, n, True) == -1.0  # thread 1 (CPU 14) waits for the line
    assert C.read(S, 0, n) == busy - 1.0 + LAT["l1_hit"]  # thread 0 (CPU 0) hits its copy


def test_a_contended_line_mostly_stays_on_its_socket():
    """Eight threads on two sockets (spread) faulting on one VMA under mmap_lock: with the
    arbiter serving the line's own socket first, few of the count line's transfers cross
    sockets (in arrival order about half would: every other requester is remote)."""
    rows = [(1 + i % 8, "fault", 1, 0, 0) for i in range(8 * 60)]
    r = Replay("mmap_lock", BDW_FIXED, 8, mk(rows))
    r.run()
    n = int(r.state["cfg"]["mm_count"][0])
    k = C.RX_KINDS
    nc = int(r.state["cfg"]["ncpu"][0])
    rx = r.state["line_cpu"][n * nc * k:(n + 1) * nc * k].reshape(nc, k)
    lcl, rmt = int(rx[:, C.RX_LCL_HITM].sum()), int(rx[:, C.RX_RMT_HITM].sum())
    assert lcl + rmt > 400
    assert rmt / (lcl + rmt) < 0.15, (lcl, rmt)
