"""The coherence model's stores and its adjacent-line prefetcher, white-box on a state the
loader built (replay/engine/coherence.py; costs from the Broadwell profile).

* A plain store retires into the store buffer: the storer goes on after an
  instruction's time, its request for ownership occupies the line for the transfer as an
  atomic's does, and the storer's next locked instruction waits for the store to commit
  (Intel SDM vol. 3A, memory ordering: reads and writes are not reordered with locked
  instructions).
* The L2 spatial prefetcher completes a line fetched into L2 with its 128-byte pair
  (Intel Optimization Reference Manual, "Data Prefetch to the L2 and Last Level
  Cache") as a read: the buddy arrives Shared, a Modified holder keeps a Shared copy,
  nobody is invalidated - and only on a fill, not on a hit or an upgrade.
"""

import pytest

from replay.engine.coherence import arbitrate, holds, read, rmw, store

from engine_harness import BDW, Replay, mk

L, B = 6, 7  # a line and its buddy (6 ^ 1): two lines of the mm_struct, in no lock's way here


def _box():
    r = Replay("v8", BDW, 4, mk([(t, "fault", 1, 0, None) for t in (1, 2, 3)]))
    cpus = [int(r.state["th"][i]["cpu"]) for i in range(3)]
    k = r.state["cfg"][0]
    return r, cpus, k


def _handoff(r, a, b):
    ncpu = int(r.state["cfg"][0]["ncpu"])
    return float(r.state["handoff"][a * ncpu + b])


def test_a_store_retires_at_once_its_rfo_occupies_the_line_and_a_locked_op_drains_it():
    r, (a, b, _), k = _box()
    g, th = r.g, r.state["th"]
    g["now"] = 0.0
    rmw(r.S, 0, L, True)  # thread 0 (CPU a) has L Modified
    rmw(r.S, 1, 12, True)  # thread 1 (CPU b) has line 12 Modified
    assert r.line(L)["owner"] == a and r.line(12)["owner"] == b
    g["now"] = 1_000.0
    committed = 1_000.0 + _handoff(r, a, b) + k["l1_hit"]
    end = store(r.S, 1, L)  # thread 1 stores to L
    assert end == pytest.approx(1_000.0 + k["l1_hit"]), "the storer waited for its RFO"
    assert r.line(L)["owner"] == b and r.line(L)["busy_until"] == pytest.approx(committed)
    assert th[1]["sb_until"] == pytest.approx(committed)
    # thread 1's next atomic, on a line it has to itself, first waits for the store to commit
    g["now"] = end
    assert rmw(r.S, 1, 12, True) == pytest.approx(committed + k["owned_atomic"])
    # CPU a reading L meanwhile waits for the RFO in flight (it stalls at the busy line,
    # coherence.wait_line()), then - the arbiter's turn for it - pays the hand-off back
    r, (a, b, _), k = _box()
    r.g["now"] = 0.0
    rmw(r.S, 0, L, True)
    r.g["now"] = 1_000.0
    store(r.S, 1, L)
    assert read(r.S, 0, L) == -1.0
    r.g["now"] = committed
    arbitrate(r.S, L)
    assert read(r.S, 0, L) == pytest.approx(committed + _handoff(r, b, a))


def test_the_buddy_comes_shared_on_a_fill_and_a_modified_holder_keeps_a_copy():
    r, (a, b, _), k = _box()
    g = r.g
    g["now"] = 0.0
    rmw(r.S, 0, B, True)  # CPU a: B Modified (its own fill brought L along, Shared)
    assert r.line(B)["owner"] == a and holds(r.S, L, a)
    invalidations = int(r.line(B)["invalidations"])
    rmw(r.S, 1, L, True)  # CPU b fetches L for ownership: B comes to b as a read
    assert holds(r.S, B, b) and holds(r.S, B, a), "the prefetch left a Modified holder without its copy"
    assert r.line(B)["owner"] == -1 and int(r.line(B)["nsharers"]) == 2
    assert int(r.line(B)["invalidations"]) == invalidations, "a prefetch invalidates nobody"
    # a's next write to B is an upgrade now: it invalidates b's copy, at half a snoop round trip
    g["now"] = 1_000.0
    socket = int(r.state["cpus"][a]["socket"]) == int(r.state["cpus"][b]["socket"])
    inval = k["socket_read_exclusive"] if socket else k["cross_socket_handoff"]
    assert rmw(r.S, 0, B, True) == pytest.approx(1_000.0 + inval / 2 + k["owned_atomic"])
    assert not holds(r.S, B, b) and r.line(B)["owner"] == a
    assert not holds(r.S, L, a), "an upgrade fetched nothing, so the prefetcher brought no pair"
    # a hit fetches nothing: b's write to L it owns leaves B alone
    transfers = int(r.line(B)["transfers"])
    rmw(r.S, 1, L, True)
    assert int(r.line(B)["transfers"]) == transfers and not holds(r.S, B, b)
