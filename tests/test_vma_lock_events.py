"""count_vm_vma_lock_event() as the kernel counts it, per fault.

mm/mmap_lock.c lock_vma_under_rcu() (v6.15): ``vma = vma_start_read(mm, vma); if
(IS_ERR_OR_NULL(vma)) { if (PTR_ERR(vma) == -EAGAIN) { count_vm_vma_lock_event(
VMA_LOCK_MISS); goto retry; } goto inval; }`` ... ``inval: count_vm_vma_lock_event(
VMA_LOCK_ABORT)``; arch/x86/mm/fault.c do_user_addr_fault(): VMA_LOCK_SUCCESS or
VMA_LOCK_RETRY after handle_mm_fault(), and ``if (!(flags & FAULT_FLAG_USER)) goto
lock_mmap;`` before any of it.  So a fault keeps every MISS it had beside its one
final event, and a kernel-mode fault counts none."""

import polars as pl

from replay.engine import load as L
from replay.engine import loop
from replay.engine.isa import Op
from replay.machines import load_machine
from replay.models import get_model

BDW = load_machine("broadwell-2s")
COLS = {"op_id": pl.Int64, "tid": pl.Int32, "mm": pl.Utf8, "kind": pl.Utf8, "vma_id": pl.Int64,
        "vma_ids": pl.List(pl.Int64), "kernel": pl.Boolean, "lock_mode": pl.Utf8, "vmas_freed": pl.List(pl.Int64),
        "vmas_created": pl.List(pl.Int64), "vmas_successor": pl.List(pl.Int64), "think_ns": pl.Int64,
        "hold_ns": pl.Int64}


def _faults(*vmas, kernel=False):
    return pl.DataFrame([{"op_id": i, "tid": i + 1, "mm": "pid:1", "kind": "fault", "vma_id": v, "kernel": kernel,
                          "think_ns": 0} for i, v in enumerate(vmas)], schema=COLS)


def _run_until(state, t, stop):
    """Start thread t's first op and run its micro-ops up to and including ``stop``."""
    S = state.S[0]
    assert loop._next_op(S, t)
    th = state["th"]
    th["start"][t] = 0.0
    plen = int(state["cfg"]["plen"][0])
    while True:
        op = int(state["prog"]["op"][int(th["prog"][t]) * plen + int(th["pc"][t])])
        end = loop._exec(S, t)
        assert end >= 0, "blocked"
        state["g"]["now"][0] = end
        if op == stop:
            return


def _finish(state, t):
    S = state.S[0]
    while not state["th"]["finished"][t]:
        end = loop._exec(S, t)
        assert end >= 0, "blocked"
        state["g"]["now"][0] = end


def _detach(state, meta, vid, successor=None):
    """What vma_mark_detached() leaves: vm_refcnt 0; merged into ``successor``, if any."""
    import numpy as np

    d = int(np.searchsorted(meta["uniq"], vid))
    o = int(state["vid"]["obj"][d])
    state["ob"]["vm_refcnt"][o] = 0
    state["ob"]["attached"][o] = 0
    if successor is not None:
        state["vid"]["successor"][d] = int(np.searchsorted(meta["uniq"], successor))


def test_a_miss_and_then_success_keeps_both_events():
    # mainline: the walk finds VMA 1; it is merged into VMA 2 before vma_start_read()'s
    # refcount: __refcount_inc_not_zero_limited_acquire() sees 0 -> -EAGAIN -> one
    # VMA_LOCK_MISS and a new walk, which finds VMA 2 and locks it -> VMA_LOCK_SUCCESS.
    state, meta = L.load(get_model("mainline"), BDW, 4, _faults(1, 2), "spread", False, None, 64)
    _run_until(state, 0, Op.WALK)
    _detach(state, meta, 1, successor=2)
    _finish(state, 0)
    th = state["th"][0]
    assert (int(th["outcome"]), int(th["misses"]), int(th["attempts"]), bool(th["fallback"])) == (0, 1, 2, False)


def test_v8_aborts_where_mainline_misses():
    # v7/v8: vma_start_read() returns NULL on a detached VMA -> inval: one VMA_LOCK_ABORT, no miss
    state, meta = L.load(get_model("v8"), BDW, 4, _faults(1, 2), "spread", False, None, 64)
    _run_until(state, 0, Op.WALK)
    _detach(state, meta, 1, successor=2)
    _finish(state, 0)
    th = state["th"][0]
    assert (int(th["outcome"]), int(th["misses"]), bool(th["fallback"])) == (1, 0, True)


def test_summary_counts_misses_per_fault_and_leaves_kernel_faults_out():
    from replay.engine import replay

    user = _faults(1, 1, 2).with_columns(pl.lit("pid:1").alias("mm"))
    both = pl.concat([user, _faults(1, kernel=True).with_columns(pl.col("op_id") + 3, pl.col("tid") + 3)])
    r = replay(both, get_model("mainline"), BDW, 4)
    res = r.results.sort("op_id")
    assert res["outcome"].to_list() == ["success", "success", "success", None]  # kernel mode: no event
    assert res["misses"].to_list() == [0, 0, 0, 0]
    s = r.summary()
    assert s["faults"] == 4 and s["fallback_pct"] == 0.0 and s["miss_pct"] == 0.0
    # mmap_lock (no CONFIG_PER_VMA_LOCK): no fault counts an event, no rate has a denominator
    s = replay(both, get_model("mmap_lock"), BDW, 4).summary()
    assert s["faults"] == 4 and s["fallback_pct"] is None and s["abort_pct"] is None
