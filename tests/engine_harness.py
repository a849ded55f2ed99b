"""A test harness over the replay engine (replay/engine: state.py, loop.py, load.py).

``Replay`` is one mm's state as ``load.load`` builds it from op dicts (``mk`` rows), with
the engine's own functions to run it:

* ``run()``: to the end, ``loop.run_chunk`` chunk by chunk as ``load.simulate`` does;
  results as dicts in the results schema (``load.results_frame``), and ``.waits`` the
  waits table's rows (``load.waits_frame``).
* ``run_stepped(observe)``: ``loop.run_events(S, 1)`` event by event, calling
  ``observe(replay)`` after each.  The loop runs a thread on without the heap while
  nothing else is due (``_step``'s shortcut, taken only while ``glob.nout < glob.chunk``);
  stepping turns that off (``glob.chunk = 0``) so that each event runs at one simulated
  instant and an observer sees the state at every time a thread acts.  The shortcut
  keeps the same order, sequence and token numbers, so the results are the same
  (the property tests check it).
* ``start_op`` / ``run_until`` / ``finish``: one thread's micro-ops by hand, as
  ``loop._step`` runs them (``_next_op``, the start time, then ``loop._exec``), for tests
  that change the state between two micro-ops.

State is read by name: ``r.mmap_lock["count"]``, ``r.vma(1)["vm_refcnt"]``,
``r.vma_lock(1)``, ``r.thread(2)["dr"]``, ``r.g["mm_lock_seq"]`` - numpy records that
are views of the engine's arrays (writes go to the state).  White-box calls pass
``r.S``: ``rwsem.down_read(r.S, t, 0)``.  ``r.S`` holds the arrays' addresses, not the
arrays: keep ``r`` alive while it is used.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
from numba import config

from replay.engine import load, loop
from replay.engine.isa import OUTCOMES, Op
from replay.engine.rwsem import RWSEM_READER_OWNED, RWSEM_WRITER_LOCKED
from replay.machines import load_machine
from replay.models import get_model

# the lock semantics are tested with one service time per fault, as before the fault path
# existed; the fault path (handle_mm_fault()'s shared resources) has its own tests,
# tests/test_fault_path.py, on toy profiles
BDW = dataclasses.replace(load_machine("broadwell-2s"), fault_path=None)
SLOW = dataclasses.replace(BDW, fault_service_ns=100_000.0)
PER_VMA = ["pervma", "inline-rwsem", "v7", "v8", "mainline"]
MODELS = ["mmap_lock", *PER_VMA]
REFCNT = ["v7", "v8", "mainline"]
MM = "pid:1"

# the ops columns a toy has (the op builder's schema, as far as the engine reads it)
COLS = {"op_id": pl.Int64, "tid": pl.Int32, "kind": pl.Utf8, "vma_id": pl.Int64, "vma_ids": pl.List(pl.Int64),
        "vmas_created": pl.List(pl.Int64), "vmas_freed": pl.List(pl.Int64), "vmas_successor": pl.List(pl.Int64),
        "kernel": pl.Boolean, "lock_mode": pl.Utf8, "think_ns": pl.Int64, "hold_ns": pl.Int64,
        "read_hold_ns": pl.Int64, "seq": pl.Int64,
        "start_ns": pl.Int64, "end_ns": pl.Int64, "cpu": pl.Int16, "mm": pl.Utf8, "write": pl.Boolean,
        "advice": pl.Int32, "fault_kind": pl.Utf8, "observed_fallback": pl.Boolean, "first_try_ns": pl.Int64,
        "address": pl.UInt64, "length": pl.Int64, "range_vmas": pl.List(pl.Int64),
        "range_start": pl.List(pl.UInt64), "range_end": pl.List(pl.UInt64),
        "vmas_parent": pl.List(pl.Int64), "vma_class": pl.Utf8}


def mk(rows):
    """rows: (tid, kind, vma_id or vma_ids, think_ns, hold_ns) -> op dicts.  munmap frees
    the VMAs it locks; mmap creates VMA 1000 + its op index."""
    out = []
    for i, (tid, kind, vmas, think, hold) in enumerate(rows):
        fault = kind == "fault"
        out.append({"op_id": i, "tid": tid, "mm": MM, "kind": kind, "vma_id": vmas if fault else None,
                    "vma_ids": None if fault else list(vmas), "kernel": False, "lock_mode": "write",
                    "vmas_freed": list(vmas) if kind == "munmap" else None,
                    "vmas_created": [1000 + i] if kind == "mmap" else None,
                    "think_ns": think, "hold_ns": hold})
    return out


def kernel_faults(rows):
    """The same ops with every fault a kernel-mode one (mmap_lock read-locked)."""
    rows = [dict(r) for r in rows]
    for o in rows:
        o["kernel"] = o["kind"] == "fault"
    return rows


def frame(rows) -> pl.DataFrame:
    """Op dicts as an ops frame."""
    return pl.DataFrame([{k: r.get(k, MM if k == "mm" else None) for k in COLS} for r in rows], schema=COLS)


def by_op(results):
    return {r["op_id"]: r for r in results}


class Replay:
    """One mm's engine state, loaded from op dicts."""

    def __init__(self, model, machine, cpus, rows, placement="spread", open_loop=False, service=None,
                 chunk=1 << 18, seed=0, barrier=False):
        self.model = get_model(model) if isinstance(model, str) else model
        self.machine = machine
        self.rows = [dict(r) for r in rows]
        self.state, self.meta = load.load(self.model, machine, cpus, frame(self.rows), placement, open_loop,
                                          service, chunk, seed)
        if not barrier:
            # A toy's threads start together, so its timings can be checked by hand; the
            # seeded barrier exit (variation.py) has its own tests (test_variation.py).
            # The service time is one number here unless ``service`` is an engine.Service.
            self.state["cfg"]["barrier_wake_ns"][0] = 0.0
        # what the engine's functions take as S (plain Python under NUMBA_DISABLE_JIT)
        self.S = self.state.S if config.DISABLE_JIT else self.state.S[0]
        self.results: list[dict] = []
        self.waits: list[dict] = []  # the waits table's rows (load.waits_frame), in the order recorded
        self.started = False

    # -- state by name -------------------------------------------------------------------------------
    @property
    def g(self):
        return self.state.g

    @property
    def now(self) -> float:
        return float(self.g["now"])

    def lock(self, k=0):
        """rw_semaphore k: 0 is mmap_lock, VMA object o's rwsem is o + 1."""
        return self.state["lk"][k]

    @property
    def mmap_lock(self):
        return self.lock(0)

    def vid(self, vma_id) -> int:
        """The engine's dense index of a trace's VMA id."""
        i = int(np.searchsorted(self.meta["uniq"], vma_id))
        assert i < len(self.meta["uniq"]) and self.meta["uniq"][i] == vma_id, f"no VMA {vma_id} in this replay"
        return i

    def obj(self, vma_id) -> int:
        """The VMA object VMA id vma_id last had (-1: never allocated)."""
        return int(self.state["vid"][self.vid(vma_id)]["obj"])

    def vma(self, vma_id):
        return self.state["ob"][self.obj(vma_id)]

    def vma_lock(self, vma_id):
        return self.lock(self.obj(vma_id) + 1)

    def objects(self):
        """Every VMA object allocated so far."""
        return self.state["ob"][: int(self.g["nobj"])]

    def t(self, tid) -> int:
        """The engine's thread index of a tid."""
        return int(np.flatnonzero(self.meta["tids"] == tid)[0])

    def thread(self, tid):
        return self.state["th"][self.t(tid)]

    def line(self, n):
        return self.state["ln"][n]

    def waiters(self, k=0) -> list[int]:
        """Thread indices on lock k's wait list, head first."""
        out, w = [], int(self.lock(k)["wait_head"])
        while w >= 0:
            out.append(w)
            w = int(self.state["th"][w]["waiter_next"])
        return out

    def spinners(self, k=0) -> list[int]:
        out, w = [], int(self.lock(k)["osq_head"])
        while w >= 0:
            out.append(w)
            w = int(self.state["th"][w]["osq_next"])
        return out

    @property
    def counters(self) -> dict:
        return {k: int(self.g[k]) for k in ("writer_wakeups", "writer_drains", "cas_retries")}

    def lock_stats(self) -> dict:
        """load.lock_stats by lock ("mm", "vma:<id>")."""
        return {x["lock"]: x for x in load.lock_stats(self.state, self.model, self.meta)}

    def line_stats(self) -> list[dict]:
        return load.line_stats(self.state, self.model, self.meta)

    # -- running -----------------------------------------------------------------------------------------
    def _start(self):
        if not self.started:
            loop.start(self.state.S)
            self.started = True

    def _collect(self):
        g = self.state["g"]
        k = int(g[0]["nout"])
        if k:
            o = self.state["out"][:k]
            raw = {c: o[f].copy() for c, f in load.OUT_COLUMNS.items()}
            self.results += load.results_frame(raw, self.state, self.meta, MM).to_dicts()
            g["nout"][0] = 0
        self._collect_waits()

    def _collect_waits(self):
        g = self.state["g"]
        k = int(g[0]["nwait"])
        if k:
            self.waits += load.waits_frame(self.state["wt"][:k].copy(), self.state, self.meta, MM).to_dicts()
            g["nwait"][0] = 0

    def _check(self):
        err = int(self.g["err"])
        assert not err, f"engine error code {err}"
        stuck = [int(self.meta["tids"][t]) for t in np.flatnonzero(self.state["th"]["done"] == 0)]
        assert not stuck, f"deadlocked: threads {stuck} never finished"

    def run(self) -> list[dict]:
        """To the end, a result chunk at a time (as load.simulate)."""
        self._start()
        while True:
            ended = loop.run_chunk(self.state.S)
            self._collect()
            if ended:
                break
        self._check()
        return self.results

    def step(self) -> bool:
        """One event (loop.run_events); True when the simulation has ended."""
        self._start()
        ended = bool(loop.run_events(self.state.S, 1))
        self._collect_waits()  # run_events does not stop for a full waits buffer: empty it each event
        return ended

    def run_stepped(self, observe=None) -> list[dict]:
        """To the end one event at a time, each at one instant; observe(self) after each."""
        assert int(self.state["out"].shape[0]) >= len(self.rows), "load with chunk >= the number of ops"
        self.state["g"]["chunk"][0] = 0  # no shortcut past the heap: one instant per event
        self._start()
        if observe:
            observe(self)
        while not self.step():
            if observe:
                observe(self)
        if observe:
            observe(self)
        self._collect()
        self._check()
        return self.results

    # -- one thread by hand ------------------------------------------------------------------------------
    def start_op(self, tid) -> int:
        """What loop._step does before tid's next op runs: tid on its CPU, the op
        (loop._next_op), its gap skipped, its start time now.  Returns the thread index."""
        t = self.t(tid)
        th = self.state["th"][t]
        self.state["cpus"][th["cpu"]]["busy"] = t
        assert loop._next_op(self.S, t), f"thread {tid} has no op left"
        th["think"] = 0.0
        th["start"] = self.now
        return t

    def next_insn(self, t) -> Op:
        th = self.state["th"][t]
        return Op(int(self.state["prog"][th["prog"] * self.state["cfg"][0]["plen"] + th["pc"]]["op"]))

    def exec(self, t) -> float:
        """One micro-op of thread t (loop._exec); the clock moves to when t continues."""
        end = loop._exec(self.S, t)
        assert end >= 0, "blocked"
        self.g["now"] = end
        return end

    def run_until(self, tid, stop_op: Op) -> int:
        """Start tid's next op and execute it up to and including the first ``stop_op``."""
        t = self.start_op(tid)
        while True:
            op = self.next_insn(t)
            self.exec(t)
            if op == stop_op:
                return t

    def finish(self, t) -> dict:
        """Run thread t's op to its END; its result so far (outcome, fallback, attempts)."""
        th = self.state["th"][t]
        while not th["finished"]:
            self.exec(t)
        return {"outcome": OUTCOMES[int(th["outcome"])], "fallback": bool(th["fallback"]),
                "attempts": int(th["attempts"])}


class WriteHolds:
    """An observer for run_stepped: mmap_lock's write-hold windows [start, end] - the
    times between which lock(0).count & RWSEM_WRITER_LOCKED holds - and the writers
    seen owning it (sem->owner) in each."""

    def __init__(self):
        self.windows: list[list] = []
        self.owners: list[set] = []

    def __call__(self, r: Replay):
        lk = r.mmap_lock
        held = bool(lk["count"] & RWSEM_WRITER_LOCKED)
        open_ = bool(self.windows) and self.windows[-1][1] is None
        if held and not open_:
            self.windows.append([r.now, None])
            self.owners.append(set())
        elif open_ and not held:
            self.windows[-1][1] = r.now
        if held and lk["owner"] not in (0, RWSEM_READER_OWNED):
            self.owners[-1].add(int(lk["owner"]) - 1)


def run(model, machine, cpus, rows, **kw):
    """(results by op_id, lock_stats by lock, counters) of a replay to the end."""
    r = Replay(model, machine, cpus, rows, **kw)
    res = r.run()
    return by_op(res), r.lock_stats(), r.counters


def assert_quiescent(r: Replay) -> None:
    """A replay's end state: mmap_lock and every VMA lock free (count 0, nobody waiting
    or spinning), vm_refcnt 1 on every attached VMA object (no reader or writer left)
    and 0 on a detached one, no writer sleeping on mm->vma_writer_wait."""
    for k in range(int(r.g["nobj"]) + 1):
        lk = r.lock(k)
        assert (lk["count"], r.waiters(k), r.spinners(k)) == (0, [], []), f"lock {k}"
    for o, ob in enumerate(r.objects()):
        assert ob["vm_refcnt"] == (1 if ob["attached"] else 0), f"VMA object {o}: {ob}"
    assert r.g["vma_writer_wait"] == -1


def assert_one_writer_at_a_time(holds: WriteHolds, nwriters: int) -> None:
    """One write-hold window per writer op, each closed before the next opens, each
    owned by one thread."""
    w = holds.windows
    assert len(w) == nwriters, w
    assert all(a[1] is not None and a[1] <= b[0] for a, b in zip(w, w[1:])), w
    assert all(x[1] is not None for x in w), w
    assert all(len(o) == 1 for o in holds.owners), holds.owners


def served(r: Replay, t: int, call):
    """``call()`` - a white-box micro-op step of thread t, e.g. ``lambda: down_write(r.S, t, 0)``
    - until its first access is served: while t stalls at a busy line (coherence.wait_line()),
    the clock moves to when the line comes free and its arbiter runs (coherence.arbitrate()),
    as the event loop would do, and the step runs again.  Returns the step's result."""
    from replay.engine import coherence

    th = r.state["th"]
    for _ in range(64):
        out = call()
        if int(th[t]["lq_state"]) != coherence.LQ_QUEUED:
            return out
        n = int(th[t]["lq_line"])
        while int(th[t]["lq_state"]) == coherence.LQ_QUEUED:
            r.g["now"] = max(float(r.g["now"]), float(r.line(n)["busy_until"]))
            coherence.arbitrate(r.S, n)
        th[t]["token"] += 1  # the grant's wake-up event is this run of the step (the loop pops it)
    raise AssertionError(f"thread {t} never served")
