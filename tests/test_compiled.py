"""The compiled engine gives the reference engine's results exactly: every result
column, every lock and line statistic, every counter - on the semantic toys, on random
op streams, and on the real sample traces."""

import dataclasses

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.engine import compiled, replay
from replay.engine.reference import Simulation
from replay.machines import load_machine
from replay.models import get_model

from test_engine import BDW, PER_VMA, mk

MODELS = ["mmap_lock", *PER_VMA]
COLS = {"op_id": pl.Int64, "tid": pl.Int32, "kind": pl.Utf8, "vma_id": pl.Int64, "vma_ids": pl.List(pl.Int64),
        "vmas_created": pl.List(pl.Int64), "vmas_freed": pl.List(pl.Int64), "vmas_successor": pl.List(pl.Int64),
        "kernel": pl.Boolean, "lock_mode": pl.Utf8, "think_ns": pl.Int64, "hold_ns": pl.Int64, "seq": pl.Int64,
        "start_ns": pl.Int64, "end_ns": pl.Int64, "cpu": pl.Int16}
RESULT_KEYS = ["op_id", "sim_cpu", "start_ns", "end_ns", "lock_wait_ns", "cache_ns", "line_transfers", "outcome",
               "fallback", "attempts"]


def run_reference(model, machine, cpus, rows, placement="spread", open_loop=False, service=None):
    """The reference engine on op dicts: (results, lock_stats, line_stats, counters)."""
    sim = Simulation(model, machine, cpus, [dict(r) for r in rows], placement, open_loop, service)
    ref = [{k: r[k] for k in RESULT_KEYS} for r in sim.run()]
    return ref, sim.lock_stats(), sim.line_stats(), sim.counters


def run_compiled(model, machine, cpus, rows, placement="spread", open_loop=False, service=None, chunk=7):
    """The compiled engine on the same op dicts, results in the reference's form."""
    df = pl.DataFrame([{k: r.get(k) for k in COLS} for r in rows], schema=COLS)
    chunks = []
    locks, lines, counters = compiled.simulate(model, machine, cpus, df, placement, open_loop, service,
                                               chunk=chunk, sink=chunks.append)
    ids = df["op_id"].to_numpy()
    got = []
    for c in chunks:
        for i in range(len(c["op"])):
            got.append({"op_id": int(ids[c["op"][i]]), "sim_cpu": int(c["sim_cpu"][i]), "start_ns": float(c["start_ns"][i]),
                        "end_ns": float(c["end_ns"][i]), "lock_wait_ns": float(c["lock_wait_ns"][i]),
                        "cache_ns": float(c["cache_ns"][i]), "line_transfers": int(c["line_transfers"][i]),
                        "outcome": compiled.OUTCOMES[c["outcome"][i]], "fallback": bool(c["fallback"][i]),
                        "attempts": int(c["attempts"][i])})
    return got, locks, lines, counters


def both(model, machine, cpus, rows, placement="spread", open_loop=False, service=None, chunk=7):
    """Run the reference and the compiled engine on the same op dicts; return both sides."""
    return (run_reference(model, machine, cpus, rows, placement, open_loop, service),
            run_compiled(model, machine, cpus, rows, placement, open_loop, service, chunk))


def assert_same(a, b):
    (ra, la, na, ca), (rb, lb, nb, cb) = a, b
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x == y
    assert la == lb
    assert na == nb
    assert ca == cb


SLOW = dataclasses.replace(BDW, fault_service_ns=100_000.0)
TOYS = {
    "writer-vs-faults": (BDW, 4, mk([(1, "mprotect", [1], 0, 50_000), (2, "fault", 1, 10_000, None),
                                     (3, "fault", 2, 10_000, None)])),
    "readers-woken-together": (BDW, 8, mk([(1, "mprotect", [1], 0, 50_000)]
                                          + [(t, "fault", 1, 10_000 + t, None) for t in (2, 3, 4)])),
    "drain": (SLOW, 8, mk([(2, "fault", 1, 0, None), (3, "fault", 1, 5_000, None), (4, "fault", 1, 10_000, None),
                           (1, "mprotect", [1], 20_000, 1_000)])),
    "reader-during-drain": (SLOW, 8, mk([(2, "fault", 1, 0, None), (1, "mprotect", [1], 20_000, 1_000),
                                         (3, "fault", 1, 40_000, None)])),
    "cas-storm": (BDW, 8, mk([(t, "fault", 1, 0, None) for t in range(1, 9)])),
    "spinning-writers": (BDW, 4, mk([(1, "mprotect", [1], 0, 50_000), (2, "mprotect", [2], 10_000, 1_000)])),
    "shared-cpus": (BDW, 2, mk([(t, "fault", t % 3, 100 * t, None) for t in range(1, 9)]
                               + [(9, "munmap", [1], 500, 3_000), (3, "mmap", [], 0, 2_000), (4, "fault", 2, 0, None)])),
}


def _kernel(rows):
    rows = [dict(r) for r in rows]
    for o in rows:
        o["kernel"] = o["kind"] == "fault"
    return rows


TOYS["handoff"] = (dataclasses.replace(BDW, fault_service_ns=1_500_000.0), 4,
                   _kernel(mk([(1, "mprotect", [1], 100_000, 1_000)] + [(t, "fault", 1, 0, None) for t in (2, 3)] * 6)))
TOYS["writer-sleeps-after-reader-budget"] = (SLOW, 4, _kernel(mk([(2, "fault", 1, 0, None), (3, "fault", 1, 0, None),
                                                                  (1, "mprotect", [1], 10_000, 1_000)])))
# found by the random test: a writer spinning on a lock whose owner field is 0 (a
# writer took it but has not stored itself as owner yet) must keep spinning
_stale = mk([(t, k, v if k == "fault" else [v], think, hold) for t, k, v, think, hold in [(1, 'fault', 1, 0, 0), (1, 'mprotect', 1, 2322, 0), (2, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (1, 'fault', 1, 0, 0), (2, 'fault', 1, 0, 0), (2, 'fault', 1, 0, 0), (2, 'mprotect', 2, 0, 0)]])
TOYS["spin-on-unowned-lock"] = (BDW, 2, _stale)
_merged = mk([(1, "mprotect", [1, 2], 0, 100), (2, "fault", 2, 50_000, None)])
_merged[0]["vmas_freed"], _merged[0]["vmas_successor"] = [2], [1]
TOYS["merged-away"] = (BDW, 4, _merged)


@pytest.mark.parametrize("toy", sorted(TOYS))
@pytest.mark.parametrize("model", MODELS)
def test_toys_match_the_reference(toy, model):
    machine, cpus, rows = TOYS[toy]
    assert_same(*both(get_model(model), machine, cpus, rows))


MACHINES = [BDW, load_machine("local-2vcpu"), load_machine("spr-1s"),
            dataclasses.replace(BDW, adjacent_line_prefetch=False)]
ops_strategy = st.lists(
    st.tuples(st.integers(1, 8), st.sampled_from(["fault", "fault", "fault", "fault", "mprotect", "munmap", "mmap"]),
              st.integers(1, 4), st.integers(0, 20_000), st.integers(0, 20_000), st.booleans()),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ops_strategy, model=st.sampled_from(MODELS), cpus=st.integers(1, 6), machine=st.sampled_from(range(4)),
       placement=st.sampled_from(["spread", "packed"]), open_loop=st.booleans(), chunk=st.integers(1, 9),
       service=st.sampled_from([None, 0.0, 250.0, 50_000.0]))
def test_random_op_streams_match_the_reference(rows, model, cpus, machine, placement, open_loop, chunk, service):
    ops = mk([(t, k, v if k == "fault" else [v], think, hold) for t, k, v, think, hold, _ in rows])
    clock = 0
    for o, (*_, kernel) in zip(ops, rows):
        o["kernel"] = kernel and o["kind"] == "fault"
        clock += o["think_ns"]
        o["start_ns"] = clock  # for the open loop
    m = MACHINES[machine]
    assert_same(*both(get_model(model), m, min(cpus, m.ncpus), ops, placement, open_loop, service, chunk))


@st.composite
def drain_heavy(draw):
    """Many faults on one VMA while one writer write-locks it again and again: vm_refcnt
    drains (readers inside when VMA_LOCK_OFFSET is added), writer wake-ups by the last or
    every reader, readers failing on the writer bit and falling back - what the uniform
    streams above produce only now and then."""
    readers = draw(st.integers(2, 7))
    rows = []
    for _ in range(draw(st.integers(2, 6))):  # rounds: a burst of faults, then a writer
        for t in range(2, 2 + readers):
            rows += [(t, "fault", 1, draw(st.integers(0, 3_000)), 0, draw(st.booleans()))
                     for _ in range(draw(st.integers(1, 4)))]
        rows.append((1, draw(st.sampled_from(["mprotect", "mprotect", "madvise"])), 1, draw(st.integers(0, 5_000)),
                     draw(st.integers(0, 5_000)), False))
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=drain_heavy(), model=st.sampled_from(MODELS), cpus=st.integers(2, 8), machine=st.sampled_from([0, 2, 3]),
       service=st.sampled_from([None, 20_000.0, 100_000.0]), chunk=st.integers(1, 9))
def test_drain_heavy_op_streams_match_the_reference(rows, model, cpus, machine, service, chunk):
    ops = mk([(t, k, v if k == "fault" else [v], think, hold) for t, k, v, think, hold, _ in rows])
    for o, (*_, kernel) in zip(ops, rows):
        o["kernel"] = kernel
    m = MACHINES[machine]
    a, b = both(get_model(model), m, min(cpus, m.ncpus), ops, service=service, chunk=chunk)
    assert_same(a, b)
    if model in ("v7", "v8", "mainline"):  # the stream does what it is for
        assert a[3]["writer_drains"] == sum(k != "fault" for _, k, *_ in rows)


def test_buffer_keeps_room_for_zero_time_ops():
    # brk(0)-like ops (not writers) finish in no time: several end in one step
    ops = mk([(1, "fault", 1, 0, None)] + [(1, "brk", [1], 0, 0)] * 20 + [(2, "fault", 1, 0, None)])
    for o in ops[1:21]:
        o["lock_mode"] = "read"
    assert_same(*both(get_model("v8"), BDW, 2, ops, chunk=1))


@pytest.mark.parametrize("model", MODELS)
def test_sample_traces_match_the_reference(sample_ops, model):
    """Whole replays of the real sample traces: identical result frames and statistics."""
    ops = sample_ops
    m = load_machine("local-2vcpu")
    a = replay(ops, get_model(model), m, 2, engine="reference")
    b = replay(ops, get_model(model), m, 2, engine="compiled")
    assert a.run_id == b.run_id
    assert a.results.equals(b.results)
    assert a.lock_stats.equals(b.lock_stats)
    assert a.line_stats.equals(b.line_stats)
    assert a.counters == b.counters
    assert np.isfinite(b.results["end_ns"].to_numpy()).all()


def test_replay_from_a_many_row_group_file_equals_in_memory(sample_ops, tmp_path):
    """An ops Parquet file is read in column batches (pyarrow); row groups and batch
    boundaries must not matter - nor which engine reads it."""
    import pyarrow.parquet as pq

    from replay.engine.source import OpsSource

    p = tmp_path / "ops.parquet"
    pq.write_table(sample_ops.to_arrow(), p, row_group_size=3_000)
    m = load_machine("local-2vcpu")
    old = OpsSource.BATCH
    OpsSource.BATCH = 4_096  # several batches per trace
    try:
        a = replay(sample_ops, get_model("mainline"), m, 2, engine="compiled")
        b = replay(str(p), get_model("mainline"), m, 2, engine="compiled")
        c = replay(str(p), get_model("mainline"), m, 2, engine="reference")
    finally:
        OpsSource.BATCH = old
    assert a.results.equals(b.results) and a.results.equals(c.results)
    assert a.lock_stats.equals(b.lock_stats) and a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}


def test_auto_engine_choice(monkeypatch):
    from replay import engine as E
    from replay.engine import warm

    started = []
    monkeypatch.setattr(warm, "start_background", lambda: started.append(1))
    monkeypatch.delenv("REPLAY_NO_BACKGROUND_COMPILE", raising=False)
    monkeypatch.setattr(warm, "is_warm", lambda: False)
    assert E.choose_engine("auto", 1000) == "reference" and started == [1]  # cold, small: don't wait
    assert E.choose_engine("auto", E.AUTO_REFERENCE_MAX_OPS + 1) == "compiled"  # cold, big: worth compiling
    monkeypatch.setattr(warm, "is_warm", lambda: True)
    assert E.choose_engine("auto", 10) == "compiled"
    assert E.choose_engine("reference", 10**9) == "reference" and started == [1]
    with pytest.raises(ValueError, match="--engine"):
        replay(pl.DataFrame({"op_id": [0]}), get_model("v8"), BDW, 2, engine="fast")


def test_file_with_two_mms_replays_each_as_alone(sample_ops, tmp_path):
    """Two processes in one ops file: the batched reader's per-mm filter gives each the
    results it gets alone (mms are independent), and the same as from memory."""
    import pyarrow.parquet as pq

    from replay.engine.source import OpsSource

    n = sample_ops.height
    other = sample_ops.with_columns(pl.concat_str(pl.lit("copy-"), pl.col("mm")).alias("mm"), pl.col("op_id") + n)
    both_mms = pl.concat([sample_ops, other])
    p = tmp_path / "ops.parquet"
    pq.write_table(both_mms.to_arrow(), p, row_group_size=5_000)
    m = load_machine("local-2vcpu")
    old = OpsSource.BATCH
    OpsSource.BATCH = 7_000
    try:
        # a fixed fault service time: the trace-derived one is a median over the whole file
        alone = replay(sample_ops, get_model("v8"), m, 2, engine="compiled", fault_service="profile").results
        two = replay(str(p), get_model("v8"), m, 2, engine="compiled", fault_service="profile").results
    finally:
        OpsSource.BATCH = old
    cols = [c for c in alone.columns if c not in ("run_id", "mm", "op_id")]
    first = two.filter(pl.col("op_id") < n)
    second = two.filter(pl.col("op_id") >= n)
    assert first.select(cols).equals(alone.select(cols))
    assert second.select(cols).equals(alone.select(cols))
    assert (second["op_id"] - n).equals(alone["op_id"])


def test_writer_commit_of_many_vmas_matches_the_reference():
    ops = mk([(1, "munmap", list(range(1, 31)), 0, 100)] + [(2, "fault", 40, 0, None)])
    for model in MODELS:
        assert_same(*both(get_model(model), BDW, 4, ops))


def test_faults_only_ops_file_matches_the_reference(sample_ops, tmp_path):
    """A trace with no writer at all (`replay record --events exceptions:page_fault_user`),
    read from a file: the loader's writer columns are empty but must still be there."""
    import pyarrow.parquet as pq

    faults = sample_ops.filter(pl.col("kind") == "fault").with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("op_id"))
    p = tmp_path / "ops.parquet"
    pq.write_table(faults.to_arrow(), p)
    m = load_machine("local-2vcpu")
    a = replay(str(p), get_model("v8"), m, 2, engine="reference")
    b = replay(str(p), get_model("v8"), m, 2, engine="compiled")
    assert a.results.height == faults.height and a.results.equals(b.results)
    assert a.lock_stats.equals(b.lock_stats) and a.line_stats.equals(b.line_stats) and a.counters == b.counters


def test_causal_order_is_op_order_not_the_input_line():
    """The op builder numbers ops in time order; ``seq`` is the input line, which runs
    backwards where the trace's timestamps did and the builder sorted them.  A writer
    waits only for faults before it in op order - by seq this one would wait for a
    fault queued behind it on its own thread, forever."""
    ops = mk([(1, "munmap", [1], 0, 100), (1, "fault", 1, 0, None), (2, "fault", 1, 0, None)])
    ops[0]["seq"], ops[1]["seq"], ops[2]["seq"] = 10, 5, 11
    for model in MODELS:
        assert_same(*both(get_model(model), BDW, 4, ops))
