"""Replay a trace's ops through a lock model on a simulated machine.

Each mm (process) replays on its own - processes share no lock, and running them apart
means reordering independent processes cannot change any process's results.  Within
an mm, threads run closed-loop by default: each thread's ops back to back, separated by
the gaps the trace recorded (during which the thread leaves its CPU), on the CPUs the
placement policy gives them; open-loop starts each op at its recorded time instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import polars as pl

from ..machines import Machine

RESULTS_SCHEMA = {
    "op_id": pl.Int64, "mm": pl.Utf8, "tid": pl.Int32, "kind": pl.Utf8, "vma_id": pl.Int64, "sim_cpu": pl.Int32,
    "start_ns": pl.Float64, "end_ns": pl.Float64, "lock_wait_ns": pl.Float64, "cache_ns": pl.Float64,
    "line_transfers": pl.Int64, "outcome": pl.Utf8, "fallback": pl.Boolean, "attempts": pl.Int32,
}


@dataclass
class Run:
    run_id: str
    params: dict
    results: pl.DataFrame
    lock_stats: pl.DataFrame
    line_stats: pl.DataFrame
    counters: dict
    wall_s: float

    def summary(self) -> dict:
        r = self.results
        faults = r.filter(pl.col("kind") == "fault")
        span_ns = float(r["end_ns"].max() - r["start_ns"].min()) if r.height else 0.0
        nf = faults.height

        def pct(expr):
            return round(100 * faults.filter(expr).height / nf, 3) if nf else None

        return {
            "run_id": self.run_id, **{k: self.params[k] for k in ("trace_id", "model", "machine", "cpus", "seed")},
            "ops": r.height, "faults": nf, "simulated_ms": round(span_ns / 1e6, 3),
            "faults_per_sec": round(nf / span_ns * 1e9) if span_ns else None,
            "fallback_pct": pct(pl.col("fallback")), "abort_pct": pct(pl.col("outcome") == "abort"),
            "retry_pct": pct(pl.col("outcome") == "retry"), "miss_pct": pct(pl.col("outcome") == "miss"),
            "mean_fault_ns": round(float((faults["end_ns"] - faults["start_ns"]).mean()), 1) if nf else None,
            "lock_wait_ms": round(r["lock_wait_ns"].sum() / 1e6, 3), "cas_retries": self.counters.get("cas_retries", 0),
            "writer_wakeups": self.counters.get("writer_wakeups", 0), "wall_s": round(self.wall_s, 2),
        }


MIN_SERVICE_SAMPLES = 20
# Bumped whenever the engines' semantics change (both engines, together), so a run id
# never names two different results.
REFERENCE_VERSION = 2


def fault_service_time(ops: pl.DataFrame, machine: Machine, how: str = "trace") -> tuple[float, str]:
    """The time a fault spends being handled once it holds its lock.

    ``trace``: the median mmap_lock hold of the faults the trace shows falling back
    (acquire_returned -> released around the fault: handle_mm_fault() under the lock),
    when there are at least MIN_SERVICE_SAMPLES of them; else the profile's default.
    ``profile``: the machine profile's figure.  A number: that many ns."""
    if how not in ("trace", "profile"):
        try:
            ns = float(how)
        except ValueError:
            raise ValueError(f"--fault-service must be trace, profile or a number of ns, not {how!r}") from None
        if ns < 0:
            raise ValueError("--fault-service must not be negative")
        return ns, "given"
    if how == "trace" and {"hold_ns", "observed_fallback"} <= set(ops.columns):
        held = ops.filter((pl.col("kind") == "fault") & pl.col("observed_fallback").fill_null(False)
                          & pl.col("hold_ns").is_not_null())["hold_ns"]
        if held.len() >= MIN_SERVICE_SAMPLES:
            return float(held.median()), f"trace: median mmap_lock hold of {held.len()} fallen-back faults"
    return float(machine.fault_service_ns), f"profile {machine.name}"


def run_id_for(params: dict) -> str:
    """Same trace (by content), model, machine, CPUs, seed and placement: same run id.
    Which implementation ran it (compiled or reference) is recorded but not hashed:
    they give identical results."""
    keyed = {k: v for k, v in params.items() if k != "engine"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


ENGINES = ("compiled", "reference")


def replay(ops: pl.DataFrame, model, machine: Machine, cpus: int, seed: int = 0,
           placement: str = "spread", trace_id: str = "", trace_sha256: str = "", progress=None,
           open_loop: bool = False, fault_service: str = "trace", engine: str = "compiled") -> Run:
    """Replay ``ops`` (one or more mms).  ``engine``: ``compiled`` (numba; the default)
    or ``reference`` (the plain-Python statement of the semantics; same results)."""
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    service_ns, service_src = fault_service_time(ops, machine, fault_service)

    if cpus < 1 or cpus > machine.ncpus:
        raise ValueError(f"--cpus must be between 1 and {machine.ncpus} for {machine.name}")
    params = {"trace_id": trace_id, "trace_sha256": trace_sha256, "model": model.name, "machine": machine.name,
              "machine_sha256": machine.digest(), "model_sha256": model.digest(),
              "cpus": cpus, "seed": seed, "placement": placement, "semantics": REFERENCE_VERSION,
              "engine": engine, "loop": "open" if open_loop else "closed", "fault_service_ns": service_ns,
              "fault_service_source": service_src}
    t0 = time.perf_counter()
    mms = ops["mm"].unique(maintain_order=True).to_list()
    if engine == "reference":
        res, locks, lines, counters = _replay_reference(ops, mms, model, machine, cpus, placement, open_loop,
                                                        service_ns, progress)
    else:
        res, locks, lines, counters = _replay_compiled(ops, mms, model, machine, cpus, placement, open_loop,
                                                       service_ns, progress)
    rid = run_id_for(params)
    res = res.with_columns(pl.lit(rid).alias("run_id"), pl.lit(model.name).alias("model"),
                           pl.lit(machine.name).alias("machine"), pl.lit(cpus).alias("cpus"))
    lock_schema = {"mm": pl.Utf8, "lock_class": pl.Utf8, "lock": pl.Utf8, "acquisitions": pl.Int64,
                   "contentions": pl.Int64, "wait_total_ns": pl.Float64, "wait_max_ns": pl.Float64,
                   "wait_min_ns": pl.Float64, "hold_total_ns": pl.Float64, "hold_max_ns": pl.Float64,
                   "hold_min_ns": pl.Float64, "trylock_failures": pl.Int64, "con_bounces": pl.Int64}
    lock_df = pl.DataFrame(locks, schema=lock_schema)
    line_schema = {"mm": pl.Utf8, "line": pl.UInt64, "fields": pl.Utf8, "transfers": pl.Int64, "invalidations": pl.Int64}
    line_df = pl.DataFrame(lines, schema=line_schema)
    return Run(rid, params, res, lock_df, line_df, counters, time.perf_counter() - t0)


def _replay_reference(ops, mms, model, machine, cpus, placement, open_loop, service_ns, progress):
    from .reference import Simulation  # here: models import the ISA from this package

    results, locks, lines = [], [], []
    counters: dict = {}
    for mm in mms:
        rows = ops.filter(pl.col("mm") == mm).sort("op_id").to_dicts()
        sim = Simulation(model, machine, cpus, rows, placement, open_loop, service_ns)
        for r in sim.run(progress):
            r["mm"] = mm
            results.append(r)
        locks += [{"mm": mm, **x} for x in sim.lock_stats()]
        lines += [{"mm": mm, **x} for x in sim.line_stats()]
        for k, v in sim.counters.items():
            counters[k] = counters.get(k, 0) + v
    res = pl.DataFrame([{k: r[k] for k in RESULTS_SCHEMA} for r in results], schema=RESULTS_SCHEMA)
    return res, locks, lines, counters


def _replay_compiled(ops, mms, model, machine, cpus, placement, open_loop, service_ns, progress):
    from . import compiled

    parts, locks, lines = [], [], []
    counters: dict = {}
    done = 0
    for mm in mms:
        sub = ops.filter(pl.col("mm") == mm).sort("op_id")
        chunks = []

        def tick(n, base=done):
            if progress:
                progress(base + n)

        lk, ln, ctr = compiled.simulate(model, machine, cpus, sub, placement, open_loop, service_ns,
                                        sink=chunks.append, progress=tick)
        done += sub.height
        parts.append(compiled_results(sub, chunks, mm))
        locks += [{"mm": mm, **x} for x in lk]
        lines += [{"mm": mm, **x} for x in ln]
        for k, v in ctr.items():
            counters[k] = counters.get(k, 0) + v
    res = pl.concat(parts) if parts else pl.DataFrame(schema=RESULTS_SCHEMA)
    return res, locks, lines, counters


def compiled_results(sub: pl.DataFrame, chunks: list, mm: str) -> pl.DataFrame:
    """The compiled engine's result chunks as rows of the results schema."""
    import numpy as np

    from .compiled import OUTCOMES

    if not chunks:
        return pl.DataFrame(schema=RESULTS_SCHEMA)
    c = {k: np.concatenate([x[k] for x in chunks]) for k in chunks[0]}
    idx = pl.Series(c["op"])
    meta = sub.select("op_id", "tid", pl.col("kind").cast(pl.Utf8), "vma_id")[idx]
    return pl.DataFrame({
        "op_id": meta["op_id"], "mm": pl.Series([mm] * len(idx), dtype=pl.Utf8), "tid": meta["tid"].cast(pl.Int32),
        "kind": meta["kind"], "vma_id": meta["vma_id"], "sim_cpu": c["sim_cpu"].astype(np.int32),
        "start_ns": c["start_ns"], "end_ns": c["end_ns"], "lock_wait_ns": c["lock_wait_ns"], "cache_ns": c["cache_ns"],
        "line_transfers": c["line_transfers"], "outcome": pl.Series(np.asarray(OUTCOMES)[c["outcome"]]),
        "fallback": c["fallback"].astype(bool), "attempts": c["attempts"].astype(np.int32),
    }, schema=RESULTS_SCHEMA)
