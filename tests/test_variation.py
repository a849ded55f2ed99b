"""Replays vary as runs do (replay/engine/variation.py): each fault's service time is a
seeded draw, threads leave their start barrier in a seeded order; the same seed gives
the same run bit for bit, another seed another sample."""

import dataclasses
import math

import numpy as np
import polars as pl
import pytest

from replay.engine import PROFILE_SERVICE_SIGMA, replay, service_for
from replay.engine.variation import BARRIER_WAKE_NS, uniform
from replay.machines import load_machine
from replay.models import get_model

# one service time per fault, as these tests draw it (the fault path's own: test_fault_path.py)
BDW = dataclasses.replace(load_machine("broadwell-2s"), fault_path=None)


def _ops(n, threads=1, holds=None):
    rows = {"op_id": list(range(n)), "tid": [1 + i % threads for i in range(n)], "mm": ["pid:1"] * n,
            "kind": ["fault"] * n, "vma_id": [1] * n, "kernel": [False] * n, "think_ns": [0] * n}
    if holds is not None:
        rows["observed_fallback"] = [i < len(holds) for i in range(n)]
        rows["hold_ns"] = [holds[i] if i < len(holds) else None for i in range(n)]
    return pl.DataFrame(rows)


def _service(res):
    """Each fault's handle_mm_fault() time: one thread, no contention, so its duration
    less its memory accesses."""
    return (res["end_ns"] - res["start_ns"] - res["cache_ns"]).to_numpy()


def test_uniform_draws_are_a_pure_function_of_seed_stream_and_index():
    a = np.array([uniform(7, 1, i) for i in range(20_000)])
    assert np.array_equal(a, [uniform(7, 1, i) for i in range(20_000)])
    assert (a > 0).all() and (a < 1).all() and abs(a.mean() - 0.5) < 0.01 and abs(a.var() - 1 / 12) < 0.003
    assert uniform(7, 1, 5) != uniform(8, 1, 5) != uniform(7, 2, 5)


def test_trace_holds_are_resampled_fault_by_fault():
    holds = [1000 + 100 * k for k in range(25)]  # 25 fallen-back faults' mmap_lock holds
    ops = _ops(2000, holds=holds)
    svc = service_for(ops, BDW, "trace")
    assert svc.ns == 2200.0 and "resampled" in svc.source and list(svc.samples) == sorted(holds)
    got = _service(replay(ops, get_model("mmap_lock"), BDW, 1, seed=3).results.sort("op_id"))
    assert set(np.round(got, 6)) <= set(float(h) for h in holds)  # every draw is one of the trace's holds
    assert len(set(np.round(got, 6))) == 25  # and 2000 draws meet all 25
    assert abs(np.median(got) - 2200) <= 100


def test_a_recorded_fault_time_is_that_faults_service_exactly():
    """ops service_ns (replay record's fault_end events): a fault that has one is
    served exactly that long, whatever the seed; one without keeps its draw (the
    trace's holds resampled, here), and the same fault gets the same draw it would get
    in a trace without any recorded time.  One thread, mmap_lock: no contention."""
    holds = [1000 + 100 * k for k in range(25)]
    base = _ops(60, holds=holds)
    timed = base.with_columns(service_ns=pl.Series([7_000 + 10 * i if i % 2 else None for i in range(60)],
                                                   dtype=pl.Int64))
    svc = service_for(timed, BDW, "trace")
    assert svc.recorded and svc.source.startswith("recorded handle_mm_fault() time for 30 faults; the rest: trace")
    for seed in (0, 4):
        got = _service(replay(timed, get_model("mmap_lock"), BDW, 1, seed=seed).results.sort("op_id"))
        want = _service(replay(base, get_model("mmap_lock"), BDW, 1, seed=seed).results.sort("op_id"))
        odd = np.arange(60) % 2 == 1
        assert np.allclose(got[odd], 7_000 + 10 * np.arange(60)[odd])  # 7010, 7030, ...: exactly the recording
        assert np.allclose(got[~odd], want[~odd], rtol=0, atol=1e-6)  # the others: today's draw, unchanged
        assert set(np.round(got[~odd], 6)) <= set(float(h) for h in holds)
    # the recorded times are the trace's: --fault-service profile or a number ignores them
    assert not service_for(timed, BDW, "profile").recorded
    assert np.allclose(_service(replay(timed, get_model("mmap_lock"), BDW, 1, fault_service="1234").results), 1234.0)


def test_profile_service_is_log_normal_around_the_profile_figure():
    ops = _ops(6000)
    svc = service_for(ops, BDW, "trace")  # no holds in this trace: the profile's figure
    assert svc.samples is None and svc.sigma == PROFILE_SERVICE_SIGMA and "log-normal" in svc.source
    got = _service(replay(ops, get_model("mmap_lock"), BDW, 1, seed=1).results)
    logs = np.log(got)
    assert abs(math.exp(np.median(logs)) / BDW.fault_service_ns - 1) < 0.03
    assert abs(logs.std() - PROFILE_SERVICE_SIGMA) < 0.01


def test_a_given_number_is_every_faults_service():
    got = _service(replay(_ops(50), get_model("mmap_lock"), BDW, 1, fault_service="1234", seed=5).results)
    assert np.allclose(got, 1234.0)


def test_threads_leave_the_barrier_in_a_seeded_order():
    # pft: the last thread to reach the barrier wakes the others one futex wake-up after
    # another; each thread's first op starts at its offset in [0, n * BARRIER_WAKE_NS)
    ops = _ops(8, threads=8)
    firsts = replay(ops, get_model("v8"), BDW, 8, seed=2).results.sort("tid")["start_ns"].to_numpy()
    assert len(set(firsts)) == 8 and (firsts >= 0).all() and (firsts < 8 * BARRIER_WAKE_NS).all()
    again = replay(ops, get_model("v8"), BDW, 8, seed=3).results.sort("tid")["start_ns"].to_numpy()
    assert not np.array_equal(firsts, again)


@pytest.mark.parametrize("model", ["v8", "pervma"])
def test_same_seed_same_run_other_seed_other_sample(sample_ops, model):
    m = load_machine("local-2vcpu")
    a = replay(sample_ops, get_model(model), m, 2, seed=0)
    b = replay(sample_ops, get_model(model), m, 2, seed=0)
    c = replay(sample_ops, get_model(model), m, 2, seed=1)
    assert a.results.equals(b.results) and a.run_id == b.run_id
    assert a.run_id != c.run_id and not a.results["end_ns"].equals(c.results["end_ns"])
    sa, sc = a.summary(), c.summary()
    assert sa["faults"] == sc["faults"]
    if not sample_ops["service_ns"].is_not_null().any():  # (a recorded fault's time is no draw)
        assert sa["faults_per_sec"] != sc["faults_per_sec"]
    # another sample of the same run, not another run: within a few percent
    assert abs(sa["faults_per_sec"] / sc["faults_per_sec"] - 1) < 0.05
