"""Properties of the replay engine that hold whatever the ops: every op completes
exactly once; mmap_lock and every VMA lock end free with nobody waiting; vm_refcnt ends
1 on an attached VMA and 0 on a detached one; no two writers hold mmap_lock at once; an
op's cache time is part of its duration.  And the results are a function of the ops
alone: the same whatever the result chunk size, run to the end or event by event, from
an ops Parquet file or a frame, on a re-run, in another process, and with numba off
(the same source as plain Python).  Checked on the semantic toys, on random op streams
(incl. a drain-heavy strategy) and on the real sample traces.  Last, the engine's
generated dispatch is what its micro-op table says."""

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.engine import isa, micro, replay
from replay.machines import load_machine
from replay.models import get_model

from engine_harness import (BDW, MODELS, REFCNT, SLOW, Replay, WriteHolds, assert_one_writer_at_a_time,
                            assert_quiescent, kernel_faults, mk)

ROOT = Path(__file__).resolve().parent.parent
BIG = 1 << 18  # more than any toy's ops (load.RESULT_CHUNK is 1 << 16): a toy's results come in one


def outcome(r: Replay):
    """Everything a replay reports: results, lock and line statistics, counters."""
    return r.results, r.lock_stats(), r.line_stats(), r.counters


def check(model, machine, cpus, rows, chunk=7, **kw):
    """Replay rows three ways - result chunks of ``chunk``, one chunk, event by event -
    assert they agree exactly and the end state holds the invariants; return the run."""
    small = Replay(model, machine, cpus, rows, chunk=chunk, **kw)
    small.run()
    big = Replay(model, machine, cpus, rows, chunk=BIG, **kw)
    big.run()
    stepped = Replay(model, machine, cpus, rows, chunk=max(len(rows), 1), **kw)
    holds = WriteHolds()
    stepped.run_stepped(holds)
    a, b, c = outcome(small), outcome(big), outcome(stepped)
    assert a == b, "the result chunk size changed the replay"
    assert c == b, "stepping event by event changed the replay"
    res = b[0]
    assert sorted(x["op_id"] for x in res) == sorted(o["op_id"] for o in rows)  # each op exactly once
    for x in res:
        assert 0 <= x["cache_ns"] <= x["end_ns"] - x["start_ns"] + 1e-6, x
        assert np.isfinite(x["end_ns"]) and x["end_ns"] >= x["start_ns"]
    for r in (small, big, stepped):
        assert_quiescent(r)
    nwriters = sum(o["kind"] == "exit" or (o["kind"] != "fault" and o["lock_mode"] == "write") for o in rows)
    assert_one_writer_at_a_time(holds, nwriters)
    return big


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
    "handoff": (dataclasses.replace(BDW, fault_service_ns=1_500_000.0), 4,
                kernel_faults(mk([(1, "mprotect", [1], 100_000, 1_000)] + [(t, "fault", 1, 0, None) for t in (2, 3)] * 6))),
    "writer-sleeps-after-reader-budget": (SLOW, 4, kernel_faults(mk([(2, "fault", 1, 0, None), (3, "fault", 1, 0, None),
                                                                     (1, "mprotect", [1], 10_000, 1_000)]))),
    # a munmap freeing 30 VMAs: 30 back-to-back stores in its commit
    "commit-of-many-vmas": (BDW, 4, mk([(1, "munmap", list(range(1, 31)), 0, 100)] + [(2, "fault", 40, 0, None)])),
}
# found by random testing: a writer spinning on a lock whose owner field is 0 (a
# writer took it but has not stored itself as owner yet) must keep spinning
TOYS["spin-on-unowned-lock"] = (BDW, 2, mk(
    [(1, 'fault', 1, 0, 0), (1, 'mprotect', [1], 2322, 0), (2, 'fault', 1, 0, 0)] + [(1, 'fault', 1, 0, 0)] * 21
    + [(2, 'fault', 1, 0, 0), (2, 'fault', 1, 0, 0), (2, 'mprotect', [2], 0, 0)]))
_merged = mk([(1, "mprotect", [1, 2], 0, 100), (2, "fault", 2, 50_000, None)])
_merged[0]["vmas_freed"], _merged[0]["vmas_successor"] = [2], [1]
TOYS["merged-away"] = (BDW, 4, _merged)


@pytest.mark.parametrize("toy", sorted(TOYS))
@pytest.mark.parametrize("model", MODELS)
def test_toys_hold_the_invariants_whatever_the_chunk(toy, model):
    machine, cpus, rows = TOYS[toy]
    check(model, machine, cpus, rows)


MACHINES = [BDW, load_machine("local-2vcpu"), load_machine("spr-1s"),
            dataclasses.replace(BDW, adjacent_line_prefetch=False)]
ops_strategy = st.lists(
    st.tuples(st.integers(1, 8), st.sampled_from(["fault", "fault", "fault", "fault", "mprotect", "munmap", "mmap"]),
              st.integers(1, 4), st.integers(0, 20_000), st.integers(0, 20_000), st.booleans()),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ops_strategy, model=st.sampled_from(MODELS), cpus=st.integers(1, 6), machine=st.sampled_from(range(4)),
       placement=st.sampled_from(["spread", "packed", "as-recorded"]), open_loop=st.booleans(),
       chunk=st.integers(1, 9), service=st.sampled_from([None, 0.0, 250.0, 50_000.0]),
       recorded=st.lists(st.one_of(st.none(), st.integers(0, 5)), min_size=40, max_size=40))
def test_random_op_streams_hold_the_invariants(rows, model, cpus, machine, placement, open_loop, chunk, service,
                                               recorded):
    ops = mk([(t, k, v if k == "fault" else [v], think, hold) for t, k, v, think, hold, _ in rows])
    m = MACHINES[machine]
    cpus = min(cpus, m.ncpus)
    clock = 0
    for o, (*_, kernel), c in zip(ops, rows, recorded):
        o["kernel"] = kernel and o["kind"] == "fault"
        clock += o["think_ns"]
        o["start_ns"] = clock  # for the open loop
        o["cpu"] = None if c is None else c % cpus  # as-recorded: threads migrate between ops
    check(model, m, cpus, ops, chunk, placement=placement, open_loop=open_loop, service=service)


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
def test_drain_heavy_op_streams_hold_the_invariants(rows, model, cpus, machine, service, chunk):
    ops = mk([(t, k, v if k == "fault" else [v], think, hold) for t, k, v, think, hold, _ in rows])
    for o, (*_, kernel) in zip(ops, rows):
        o["kernel"] = kernel
    m = MACHINES[machine]
    r = check(model, m, min(cpus, m.ncpus), ops, chunk, service=service)
    if model in REFCNT:  # the stream does what it is for
        assert r.counters["writer_drains"] == sum(k != "fault" for _, k, *_ in rows)


def test_buffer_keeps_room_for_zero_time_ops():
    # brk(0)-like ops (not writers) finish in no time: several end in one step
    ops = mk([(1, "fault", 1, 0, None)] + [(1, "brk", [1], 0, 0)] * 20 + [(2, "fault", 1, 0, None)])
    for o in ops[1:21]:
        o["lock_mode"] = "read"
    r = check("v8", BDW, 2, ops, chunk=1)
    assert sum(x["end_ns"] == x["start_ns"] for x in r.results) >= 20


def test_causal_order_is_op_order_not_the_input_line():
    """The op builder numbers ops in time order; ``seq`` is the input line, which runs
    backwards where the trace's timestamps did and the builder sorted them.  A writer
    waits only for faults before it in op order - by seq this one would wait for a
    fault queued behind it on its own thread, forever."""
    ops = mk([(1, "munmap", [1], 0, 100), (1, "fault", 1, 0, None), (2, "fault", 1, 0, None)])
    in_order = [dict(o, seq=i) for i, o in enumerate(ops)]
    ops[0]["seq"], ops[1]["seq"], ops[2]["seq"] = 10, 5, 11
    for model in MODELS:
        r = check(model, BDW, 4, ops)
        assert outcome(r) == outcome(check(model, BDW, 4, in_order)), model  # seq is not consulted


# -- the sample traces -----------------------------------------------------------------------------

def _same(a, b):
    assert a.results.equals(b.results)
    assert a.lock_stats.equals(b.lock_stats) and a.line_stats.equals(b.line_stats) and a.counters == b.counters
    assert a.line_cpu.equals(b.line_cpu) and a.run_id == b.run_id


@pytest.mark.parametrize("model", MODELS)
def test_sample_traces_replay_the_same_on_a_rerun(sample_ops, model):
    """Whole replays of the real sample traces: identical result frames and statistics."""
    m = load_machine("local-2vcpu")
    a = replay(sample_ops, get_model(model), m, 2)
    b = replay(sample_ops, get_model(model), m, 2)
    _same(a, b)
    assert a.results.height == sample_ops.height
    assert np.isfinite(b.results["end_ns"].to_numpy()).all()


def test_as_recorded_replays_the_same_on_a_rerun_and_in_another_process(sample_ops, tmp_path):
    """as-recorded placement on a real trace: each op on the CPU it was recorded on, and
    the same results, statistics and run id on a re-run and in another interpreter."""
    import pyarrow.parquet as pq

    m = load_machine("local-2vcpu")
    a = replay(sample_ops, get_model("mainline"), m, 2, placement="as-recorded")
    _same(a, replay(sample_ops, get_model("mainline"), m, 2, placement="as-recorded"))
    cpus = a.results.join(sample_ops.select("op_id", "cpu"), on="op_id")
    assert cpus.filter(pl.col("cpu").is_not_null())["sim_cpu"].equals(
        cpus.filter(pl.col("cpu").is_not_null())["cpu"].cast(pl.Int32), check_names=False)
    p = tmp_path / "ops.parquet"
    pq.write_table(sample_ops.to_arrow(), p)
    code = textwrap.dedent("""
        import pickle, sys
        from replay.engine import replay
        from replay.machines import load_machine
        from replay.models import get_model
        r = replay(sys.argv[1], get_model("mainline"), load_machine("local-2vcpu"), 2, placement="as-recorded")
        pickle.dump((r.results.to_arrow(), r.lock_stats.to_arrow(), r.counters, r.run_id), open(sys.argv[2], "wb"))
    """)
    out = tmp_path / "run.pickle"
    r = subprocess.run([sys.executable, "-c", code, str(p), str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": "54321"}, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    res, locks, counters, run_id = pickle.loads(out.read_bytes())
    assert a.results.equals(pl.from_arrow(res)) and a.lock_stats.equals(pl.from_arrow(locks))
    assert (a.counters, a.run_id) == (counters, run_id)


_OTHER_PROCESS = """
    import pickle, sys
    from replay.engine import replay
    from replay.machines import load_machine
    from replay.models import get_model
    path, out, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    runs = {}
    for model in models:
        r = replay(path, get_model(model), load_machine("local-2vcpu"), 2)
        runs[model] = (r.results.to_arrow(), r.lock_stats.to_arrow(), r.line_stats.to_arrow(), r.counters, r.run_id)
    with open(out, "wb") as f:
        pickle.dump(runs, f)
"""


def test_sample_traces_replay_the_same_in_another_process(sample_ops, tmp_path):
    """Another interpreter, with another hash seed (set and dict order of strings):
    the same results, statistics and run id, from the ops Parquet file."""
    import pyarrow.parquet as pq

    p = tmp_path / "ops.parquet"
    pq.write_table(sample_ops.to_arrow(), p)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = tmp_path / "runs.pickle"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_OTHER_PROCESS), str(p), str(out), *MODELS],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    other = pickle.loads(out.read_bytes())
    m = load_machine("local-2vcpu")
    for model in MODELS:
        here = replay(str(p), get_model(model), m, 2)
        res, locks, lines, counters, run_id = other[model]
        assert here.results.equals(pl.from_arrow(res)), model
        assert here.lock_stats.equals(pl.from_arrow(locks)) and here.line_stats.equals(pl.from_arrow(lines)), model
        assert (here.counters, here.run_id) == (counters, run_id), model


def test_replay_from_a_many_row_group_file_equals_in_memory(sample_ops, tmp_path):
    """An ops Parquet file is read in column batches (pyarrow); row groups and batch
    boundaries must not matter."""
    import pyarrow.parquet as pq

    from replay.engine.source import OpsSource

    p = tmp_path / "ops.parquet"
    pq.write_table(sample_ops.to_arrow(), p, row_group_size=3_000)
    m = load_machine("local-2vcpu")
    old = OpsSource.BATCH
    OpsSource.BATCH = 4_096  # several batches per trace
    try:
        a = replay(sample_ops, get_model("mainline"), m, 2)
        b = replay(str(p), get_model("mainline"), m, 2)
    finally:
        OpsSource.BATCH = old
    assert a.results.equals(b.results)
    assert a.lock_stats.equals(b.lock_stats) and a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}


def test_writers_read_from_a_file_a_row_group_at_a_time_are_the_frames(sample_ops, tmp_path):
    """The loader's writers (every non-fault op) from an ops file - read a row group at a
    time, the columns only of row groups with a writer - are the frame's, row indices
    included."""
    import pyarrow.parquet as pq

    from replay.engine.source import OpsSource

    p = tmp_path / "ops.parquet"
    pq.write_table(sample_ops.to_arrow(), p, row_group_size=500)  # some with writers, some without
    assert pq.ParquetFile(p).metadata.num_row_groups > 3

    def fn(df):
        return df.select("_j", pl.col("kind").cast(pl.Utf8), "hold_ns", "vma_id", "vma_ids", "vmas_freed")

    a, b = OpsSource(sample_ops).writers(fn), OpsSource(str(p)).writers(fn)
    assert a.height == (sample_ops["kind"].cast(pl.Utf8) != "fault").sum() > 0
    assert a.equals(b)


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
        alone = replay(sample_ops, get_model("v8"), m, 2, fault_service="profile").results
        two = replay(str(p), get_model("v8"), m, 2, fault_service="profile").results
    finally:
        OpsSource.BATCH = old
    cols = [c for c in alone.columns if c not in ("run_id", "mm", "op_id")]
    first = two.filter(pl.col("op_id") < n)
    second = two.filter(pl.col("op_id") >= n)
    assert first.select(cols).equals(alone.select(cols))
    assert second.select(cols).equals(alone.select(cols))
    assert (second["op_id"] - n).equals(alone["op_id"])


def test_faults_only_ops_file_equals_the_frame(sample_ops, tmp_path):
    """A trace with no writer at all (`replay record --events exceptions:page_fault_user`),
    read from a file: the loader's writer columns are empty but must still be there."""
    import pyarrow.parquet as pq

    faults = sample_ops.filter(pl.col("kind") == "fault").with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("op_id"))
    p = tmp_path / "ops.parquet"
    pq.write_table(faults.to_arrow(), p)
    m = load_machine("local-2vcpu")
    a = replay(faults, get_model("v8"), m, 2)
    b = replay(str(p), get_model("v8"), m, 2)
    assert b.results.height == faults.height
    _same(a, b)


# -- the same source as plain Python ---------------------------------------------------------------

# tiny: numpy record access from plain Python costs about a microsecond
PLAIN_TOYS = {"drain": ["v7", "v8", "mainline"], "writer-vs-faults": ["mmap_lock", "pervma", "inline-rwsem"],
              "spinning-writers": ["v8"], "merged-away": ["mainline"]}

_PLAIN = """
    import pickle, sys
    sys.path.insert(0, "tests")
    from numba import config
    from replay.engine import engine_name
    from replay.engine.state import State
    from test_engine_properties import PLAIN_TOYS, TOYS, outcome
    from engine_harness import Replay
    assert config.DISABLE_JIT and engine_name() == "python"
    out = {}
    for toy, models in PLAIN_TOYS.items():
        machine, cpus, rows = TOYS[toy]
        for model in models:
            r = Replay(model, machine, cpus, rows, chunk=7)
            assert not hasattr(r.S, "dtype")  # plain records, not the compiled state record
            r.run()
            out[toy, model] = outcome(r)
    with open(sys.argv[1], "wb") as f:
        pickle.dump(out, f)
"""


def test_numba_off_gives_the_compiled_results(tmp_path):
    """NUMBA_DISABLE_JIT=1 runs the engine's source as ordinary Python (state.py's
    accessors index numpy recarrays): every result, statistic and counter the same."""
    out = tmp_path / "plain.pickle"
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_PLAIN), str(out)], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    plain = pickle.loads(out.read_bytes())
    assert set(plain) == {(t, m) for t, ms in PLAIN_TOYS.items() for m in ms}
    for (toy, model), got in plain.items():
        machine, cpus, rows = TOYS[toy]
        jit = Replay(model, machine, cpus, rows, chunk=7)
        jit.run()
        assert got == outcome(jit), (toy, model)


# -- the engine's source ------------------------------------------------------------------------------

def test_dispatch_is_generated_from_the_micro_op_table():
    assert isa.DISPATCH_PATH.read_text() == isa.dispatch_source(), \
        "replay/engine/_dispatch.py is stale: run python -m replay.engine.isa"


def test_every_micro_op_has_its_handler():
    handlers = {m.handler for m in isa.MICRO_OPS if m.handler}
    for m in isa.MICRO_OPS:
        if m.op == isa.Op.LABEL:
            assert m.handler == ""  # compile_program removes labels
            continue
        assert callable(getattr(micro, m.handler, None)), f"{m.op.name}: no {m.handler} in micro.py"
    spare = {n for n in vars(micro) if n.startswith("h_")} - handlers
    assert not spare, f"handlers no micro-op uses: {sorted(spare)}"
