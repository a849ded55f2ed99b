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
import os
import time
from dataclasses import dataclass

import polars as pl

from ..machines import Machine

RESULTS_SCHEMA = {
    "op_id": pl.Int64, "mm": pl.Utf8, "tid": pl.Int32, "kind": pl.Utf8, "vma_id": pl.Int64, "sim_cpu": pl.Int32,
    "start_ns": pl.Float64, "end_ns": pl.Float64, "lock_wait_ns": pl.Float64, "cache_ns": pl.Float64,
    "line_transfers": pl.Int64, "outcome": pl.Utf8, "misses": pl.Int32, "fallback": pl.Boolean, "attempts": pl.Int32,
    # a fault's time in handle_mm_fault(): its own work (the fault path's fixed part and
    # clearing the page, or the one service time), and in the shared resources
    # (faultpath.py), of which waiting for another CPU's hold
    "service_ns": pl.Float64, "resource_ns": pl.Float64, "resource_wait_ns": pl.Float64,
    # the op's time off its CPU: asleep on a lock, then waiting to run again (the rest of
    # end - start is on-CPU time, which pft's faults/cpu counts)
    "sleep_ns": pl.Float64,
    # the fault set its VMA's anon_vma (__anon_vma_prepare(): under the VMA lock after
    # vmf_anon_prepare()'s mmap_read_trylock(), 6.10+, or under mmap_lock; engine/retry.py)
    # - the simulated counterpart of the ops' observed_anon_prepare
    "anon_prepare": pl.Boolean,
}


# the waits table: one row per wait of an op on a lock (engine/waits.py records them) - the
# op, its thread and CPU, the lock as lock_stats names it, the mode (read or write; none
# for a spinlock), asleep or spinning, when, and which results column it is part of: an
# op's rows of one ``counted_in`` add up to that column of its results row
WAITS_SCHEMA = {
    "op_id": pl.Int64, "mm": pl.Utf8, "tid": pl.Int32, "sim_cpu": pl.Int32, "lock_class": pl.Utf8, "lock": pl.Utf8,
    "mode": pl.Utf8, "how": pl.Utf8, "start_ns": pl.Float64, "end_ns": pl.Float64, "wait_ns": pl.Float64,
    "counted_in": pl.Utf8,
}


def line_cpu_schema() -> dict:
    """The line_cpu table: per mm, line and simulated CPU (and its socket), the transfers
    of the line into that CPU by kind - perf c2c's classes of the access that moved it,
    named once in engine/coherence.py RX_NAMES."""
    from .coherence import RX_NAMES

    return {"mm": pl.Utf8, "line": pl.UInt64, "cpu": pl.Int32, "socket": pl.Int32, **{k: pl.Int64 for k in RX_NAMES}}


class Totals:
    """What the summary needs, accumulated chunk by chunk as results stream out."""

    def __init__(self):
        self.ops = self.faults = self.vma_faults = self.fallback = self.abort = self.retry = self.miss = 0
        self.start = float("inf")
        self.end = float("-inf")
        self.fault_ns = 0.0
        self.lock_wait_ns = 0.0

    def add(self, r: pl.DataFrame) -> None:
        if not r.height:
            return
        # the five columns read, not a filtered copy of the whole chunk
        f = r.select("kind", "fallback", "outcome", "misses", "start_ns", "end_ns").filter(pl.col("kind") == "fault")
        a = f.select(pl.col("fallback").sum(), (pl.col("outcome") == "abort").sum().alias("a"),
                     (pl.col("outcome") == "retry").sum().alias("r"), pl.col("misses").sum().alias("m"),
                     (pl.col("end_ns") - pl.col("start_ns")).sum().alias("d"),
                     pl.col("outcome").is_not_null().sum().alias("v")).row(0)
        self.ops += r.height
        self.faults += f.height
        self.vma_faults += int(a[5] or 0)
        self.fallback += int(a[0] or 0)
        self.abort += int(a[1] or 0)
        self.retry += int(a[2] or 0)
        self.miss += int(a[3] or 0)
        self.fault_ns += float(a[4] or 0.0)
        self.start = min(self.start, float(r["start_ns"].min()))
        self.end = max(self.end, float(r["end_ns"].max()))
        self.lock_wait_ns += float(r["lock_wait_ns"].sum())


# the types of the summary values that can be null (a run whose faults never try a VMA
# lock has no fallback rate; an empty run no rate at all), so runs of every model read together
SUMMARY_TYPES = {"faults_per_sec": pl.Int64, **{k: pl.Float64 for k in (
    "simulated_ms", "fallback_pct", "abort_pct", "retry_pct", "miss_pct", "mean_fault_ns", "lock_wait_ms", "wall_s")}}


@dataclass
class Run:
    run_id: str
    params: dict
    results: pl.DataFrame | None  # None when streamed to results_path
    lock_stats: pl.DataFrame
    line_stats: pl.DataFrame
    counters: dict
    wall_s: float
    totals: Totals
    results_path: str | None = None
    line_cpu: pl.DataFrame | None = None  # per line and CPU that received it: transfers by kind (line_cpu_schema())
    waits: pl.DataFrame | None = None  # one row per lock wait (WAITS_SCHEMA); None when streamed to waits_path
    waits_path: str | None = None

    def summary(self) -> dict:
        t = self.totals
        span_ns = t.end - t.start if t.ops else 0.0
        nf = t.faults
        nv = t.vma_faults  # the denominators: user faults that tried the VMA lock (kernel-mode ones never do)

        def pct(k):
            return round(100 * k / nv, 3) if nv else None

        return {
            "run_id": self.run_id, **{k: self.params[k] for k in ("trace_id", "model", "machine", "cpus", "seed")},
            "ops": t.ops, "faults": nf, "simulated_ms": round(span_ns / 1e6, 3),
            "faults_per_sec": round(nf / span_ns * 1e9) if span_ns else None,
            "fallback_pct": pct(t.fallback), "abort_pct": pct(t.abort), "retry_pct": pct(t.retry),
            "miss_pct": pct(t.miss), "mean_fault_ns": round(t.fault_ns / nf, 1) if nf else None,
            "lock_wait_ms": round(t.lock_wait_ns / 1e6, 3), "cas_retries": self.counters.get("cas_retries", 0),
            "writer_wakeups": self.counters.get("writer_wakeups", 0), "wall_s": round(self.wall_s, 2),
        }


MIN_SERVICE_SAMPLES = 20
# Bumped whenever the engine's semantics change, so a run id never names two different
# results.
# 16: a read-mode madvise runs the model's madvise program (mmap_read_lock() up to v6.16;
# mainline's VMA read lock for MADV_DONTNEED/MADV_FREE on one VMA, v6.17) for its hold,
# where before it took no lock and no time; inline-rwsem, v7 and v8 keep mm_lock_seq as a
# seqcount (mmap_write_lock() makes it odd), as their kernels do.
# 17: handle_mm_fault() on profiles with a [fault_path]: the page allocator's pcp refills
#     under zone->lock, the memcg charge, clearing the page, the rss counter, the LRU
#     batch under lru_lock, a PTE page per 512 faults, per fault kind (faultpath.py)
# 18: sem->wait_lock (offset 20 of every rwsem, on its own line in each layout) taken as a
#    spinlock around every wait-list change - the slow paths' queueing and each retry of a
#    woken writer, rwsem_wake()/rwsem_downgrade_wake() - with rwsem_mark_wake()'s atomics
#    under it; waiters woken by the waker's wake_up_q(), one try_to_wake_up()
#    (BARRIER_WAKE_NS) after another, paid by the waker; a slow path sleeps after its unlock
# 19: VM_FAULT_RETRY (retry.py): a special mapping's fault (fault kind special) returns it
#     under the VMA lock (vmf_can_call_fault()); a major file fault, and a file fault the
#     trace shows falling back with no writer of its VMA in flight, drop either lock to wait
#     for the page cache (their recorded first try, asleep) and retry under mmap_lock;
#     the per-VMA lock's coverage by release: up to 6.5 a VMA that is not anonymous aborts
#     in lock_vma_under_rcu() (which up to 6.9 reads vm_ops/anon_vma), 6.6 retries file
#     faults fault-around cannot serve, 6.7+ vmf_can_call_fault()
# 20: clear_page()'s DRAM traffic (faultpath.CLEAR_DRAM_BYTES, the read for ownership and
#    the write-back) queued FIFO on its NUMA node's memory channels at the profile's
#    [fault_path] dram_gbps: a clear ends at the later of its per-core time and that
# 21: rwsem_cond_wake_waiter() after a slow path queues (readers, and writers behind
#    others): RWSEM_WAKE_READERS on a reader-held lock grants readers left at the head
#    past MAX_READERS_WAKEUP, RWSEM_WAKE_ANY on a free one (with clear_nonspinnable()); a
#    writer at the head is woken for RWSEM_WAKE_ANY only; __up_read()'s
#    clear_nonspinnable() before rwsem_wake(), so writers spin again once the last reader
#    leaves; rwsem_down_read_slowpath() reads sem->owner, and a stealing reader stores
#    it (rwsem_set_reader_owned()); a writer entering its spin on a free lock tries it at
#    once (rwsem_try_write_lock_unqueued() on the loop's first pass)
# 22: lock_vma_under_rcu()'s range check by address on the VMA locked (vm_start/vm_end as
#     the writers leave them: ops range_*), not by whether the slot still holds the object
#     the walk found; a writer that changes an existing VMA's range stores to its first line;
#     a fault waits for the writer that grew or merged its VMA over its address
# 23: the walk finds the VMA by address (vma.vma_walk(): the live VMA covering it, where the
#     op's own VMA id no longer does - a fault the trace saw in a VMA a writer has since split
#     or shrunk), so the range check aborts only what no VMA covers, not the closed loop's
#     stale VMA ids
# 24: the writers' spinning on sem->owner as rwsem.c has it: a writer spins while the lock
#     is held with no owner (OWNER_NULL), readers' owner stores starting its threshold;
#     __up_write()'s rwsem_clear_owner() is a store to the owner's line, the release atomic
#     issuing once it has committed (the lock held with no owner meanwhile); the first
#     waiter with its handoff set spins on a writer owner between retries instead of
#     sleeping, and retries at once on OWNER_NULL
# 25: pervma@RELEASE before 6.4 has 6.2's mm_struct (models.on_release_mm()); the pvl-v2
#     model (the v2 posting's fault: the mm_users test, a validating re-walk)
# 26: the anon_vma per VMA object (retry.py): up to 6.9 lock_vma_under_rcu() aborts on an
#     anonymous VMA without one (6.4 before vma_start_read(), 6.5-6.9 after it); a fault that
#     maps an anonymous page sets it (__anon_vma_prepare(), est. cost) - under the VMA lock from
#     6.10 after vmf_anon_prepare()'s mmap_read_trylock() (failing: RETRY, then mmap_lock),
#     a file-backed private VMA's CoW returning RETRY at once in 6.6-6.9; split-off and moved
#     VMAs inherit it (ops vmas_parent), merges pass it on, new mappings start without; the
#     6.4-6.5 coverage test knows a CoW on a file's private VMA (ops vma_class)
# 27: the split PTE lock (faultpath.ptl_lock()/ptl_unlock()): a queued spinlock on its own
#     line per PTE page - per 2 MiB of a fault's address (a thread's own where the address
#     is unknown) - held across the rss add, the LRU add and faultpath.PTL_FIXED_SHARE of
#     the fixed part (est.); a CoW takes it twice (do_wp_page()'s check, wp_page_copy()'s
#     install); the fixed part outside it is the rest
# 28: as-recorded placement per op: each op runs on the CPU the trace recorded it on, the
#     thread migrating to that CPU's run queue at the op boundary (loop._next_cpu()); no
#     longer each thread on its most common CPU, nor recorded CPUs folded onto --cpus
# 29: a line serves one request at a time (coherence.py): a load that moves it occupies it as
#     an RMW does; prefetchw is a queued request for ownership whose fill the prefetching
#     CPU's own accesses before it lands are served by (coherence.served_by_fill()), and
#     a read prefetch (PREFETCHT0) on a CPU without PRFCHW (Machine.prefetchw: Ivy Bridge);
#     every fault loads mm->pgd (__handle_mm_fault()'s pgd_offset(): models.kernels.PGD_READ),
#     in mmap_lock's count line up to 6.10's mm_struct
# 30: each release's mm_struct for pervma@6.8-6.14 (models.kernels.MM_BY_RELEASE: pgd and
#     mmap_lock's count move with 6.8, 6.11 and 6.13) and the 6.13 one for inline-rwsem
# 31: the writer's call as the kernel runs it (preempt=none, Linux 6.18): its WORK where it
#     walks page tables (mprotect, mremap; munmap/brk's zap) passes cond_resched() once per
#     PMD of its range (load._resched_points; the hold in equal parts, est.), and yields its
#     CPU there, its locks held, when TIF_NEED_RESCHED is set - by the tick (HZ=250) or a
#     wake-up onto its CPU once its EEVDF request (sysctl_sched_base_slice) is used up, or it
#     is unprotected after a renewal (sched.account(), cond_resched()); a preempted owner is
#     off its CPU for the spinners.  And vma_start_write() where the walk reaches each VMA:
#     the call's VMAs in its range locked one at a time in address order, each followed by
#     its share of the hold by bytes in the range (est.), a merge's neighbours with the
#     first / last (micro.h_vma_start_write_next(), Op.VMA_START_WRITE_NEXT)
# 32: EEVDF's eligibility and lag (sched.py; kernel/sched/fair.c, 6.18, nice-0): each thread's
#     vruntime, deadline, vprot and vlag, each CPU's cfs_rq sums and avg_vruntime(); a woken
#     thread placed by place_entity() with its lag (PLACE_LAG); a sleeper that is not eligible
#     stays queued, delayed (DELAY_DEQUEUE, DELAY_ZERO); a wake-up preempts only when
#     pick_eevdf() picks the wakee (check_preempt_wakeup_fair()), passing over a current task
#     that is not eligible even inside its request; cond_resched() with TIF_NEED_RESCHED set
#     yields only if pick_eevdf() picks another; the next thread to run is pick_eevdf()'s, not
#     the run queue's first
# 33: a request that finds its line busy waits at the line, and the line's arbiter picks the
#     next when it comes free (coherence.wait_line(), arbitrate()): a request from the LLC
#     domain (socket, CCD) the line was last served to first, oldest first within it, not
#     arrival order.  A load or an atomic stalls its thread (its micro-op runs again when
#     its turn comes; its lock state changes then, not when it was issued); a store's
#     request and a prefetchw's wait at the line while the thread goes on, and a locked
#     instruction waits for the thread's queued stores (the store buffer drains).  The
#     accesses a step chains after its first, and the fault path's own locks
#     (faultpath.py), still take the line in arrival order
# 34: every fault ends with the exception's IRET (Op.IRET, coherence.serialize()), a
#     serializing instruction: the thread goes on when its entry prefetchw's fill has landed
#     and its queued stores have committed; and a model run on a release before 6.16 has
#     exc_page_fault()'s prefetchw whatever its design, one on 6.16 or later none
#     (models.kernels.on_release_entry(): mainline@6.13 prefetches, pervma@6.18 does not)
# 35: a reader's rwsem_set_reader_owned() as its release has it: before 4.20 (925b9cd1b89a)
#     a load of sem->owner and a store only when it is not RWSEM_READER_OWNED already
#     (rwsem.reader_owner_stores()); from it, a store every time, as before
REFERENCE_VERSION = 35
# 3: a writer's commit counts its cache time once, not once per VMA
# 4: VMA lock events as count_vm_vma_lock_event() counts them (misses kept beside the
#    final event; kernel-mode faults and mmap_lock count none); vma_start_write() on a
#    detached VMA stores vm_lock_seq and nothing else
# 5: spread placement on fewer CPUs than the machine has uses idle cores on every
#    socket before SMT siblings (the CPUs themselves chosen as the scheduler would)
# 6: replays vary as runs do: each fault's service time drawn from a seeded
#    distribution (the trace's own holds resampled, or a log-normal around the
#    profile's figure); threads leave their start barrier in a seeded order
# 7: prefetchw(&mm->mmap_lock) at every fault's entry for the kernels that had it (all
#    models but mainline), as a non-blocking request for ownership, not an atomic
# 8: a reader queued past RWSEM_WAIT_TIMEOUT behind a writer sets HANDOFF (rwsem_mark_wake())
# 9: layouts per kernel (replay/models/kernels.py): 6.3's mm_struct and vm_area_struct for
#    mmap_lock, 6.4's for pervma, v8 02/16's rwsem placement for inline-rwsem, v8's struct
#    with its shared field; VMA objects packed at their real sizes
# The spread of handle_mm_fault() times where the trace has none of its own: the
# robust log-spread ((ln q75 - ln q25) / 1.349) of the fallen-back faults' mmap_lock holds
# in sample_traces/mprotect-race, recorded on our machine - an estimate (0.24 over the 533
# the op builder found to ops version 9, 0.239 over the 552 it finds from version 10).
PROFILE_SERVICE_SIGMA = 0.24


@dataclass(frozen=True)
class Service:
    """How long a fault's handle_mm_fault() takes, drawn per fault with the run's seed:
    ``samples`` (the trace's own fallen-back holds, sorted) resampled, or a log-normal of
    median ``ns`` and spread ``sigma``; ``sigma`` 0 and no samples: always ``ns``.
    ``recorded``: a fault with its own recorded time (ops ``service_ns``) takes it
    instead (variation.py)."""

    ns: float
    source: str
    samples: object = None  # np.ndarray | None
    sigma: float = 0.0
    recorded: bool = False


def _trace_holds(src):
    import polars as pl

    if not {"hold_ns", "observed_fallback"} <= src.names:
        return None
    held = src.frame(["kind", "observed_fallback", "hold_ns"], lambda df: df.filter(
        (pl.col("kind").cast(pl.Utf8) == "fault") & pl.col("observed_fallback").fill_null(False)
        & pl.col("hold_ns").is_not_null()).select("hold_ns"))
    return held["hold_ns"] if held is not None else None


def service_for(ops, machine: Machine, how: str = "trace") -> Service:
    """The run's Service: ``trace`` resamples the trace's fallen-back holds when there
    are MIN_SERVICE_SAMPLES of them, else (and for ``profile``) a log-normal around the
    profile's figure with PROFILE_SERVICE_SIGMA; a number is that many ns, always."""
    import numpy as np

    from .source import OpsSource

    ns, source = fault_service_time(ops, machine, how)
    if source == "given":
        return Service(ns, source)
    src = ops if isinstance(ops, OpsSource) else OpsSource(ops)
    # ``trace``: the faults the trace timed (replay record's fault_end events) take their own time
    own = _recorded_services(src) if how == "trace" else 0
    mine = f"recorded handle_mm_fault() time for {own:,} faults; the rest: " if own else ""
    if source.startswith("trace"):
        holds = np.sort(_trace_holds(src).to_numpy().astype(np.float64))
        return Service(ns, mine + source + ", resampled per fault", holds, recorded=bool(own))
    return Service(ns, mine + source + f", log-normal per fault (sigma {PROFILE_SERVICE_SIGMA})", None,
                   PROFILE_SERVICE_SIGMA, recorded=bool(own))


def _recorded_services(src) -> int:
    """How many faults have their own recorded service time (ops ``service_ns``)."""
    import polars as pl

    if "service_ns" not in src.names:
        return 0
    n = src.frame(["service_ns"], lambda df: df.select(pl.col("service_ns").is_not_null().sum().alias("n")))
    return int(n["n"].sum()) if n is not None else 0


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
    from .source import OpsSource

    src = ops if isinstance(ops, OpsSource) else OpsSource(ops)
    if how == "trace":
        held = _trace_holds(src)
        if held is not None and held.len() >= MIN_SERVICE_SAMPLES:
            return float(held.median()), f"trace: median mmap_lock hold of {held.len()} fallen-back faults"
    if machine.fault_path is not None:
        return (float(machine.fault_path["fixed_ns"]),
                f"profile {machine.name}: the fault path (fixed part {machine.fault_path['fixed_ns']:g} ns, "
                f"then the shared resources)")
    return float(machine.fault_service_ns), f"profile {machine.name}"


def run_id_for(params: dict) -> str:
    """Same trace (by content), model, machine, CPUs, seed and placement: same run id.
    Which form of the engine ran it (numba, or the same source as plain Python) is
    recorded but not hashed: they give identical results."""
    keyed = {k: v for k, v in params.items() if k != "engine"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def run_params(ops, model, machine: Machine, cpus: int, seed: int, placement: str, trace_id: str,
               trace_sha256: str, open_loop: bool, fault_service: str) -> dict:
    """A run's parameters (its ``runs`` row, and through ``run_id_for`` its id), known
    before it runs: ``replay sweep`` skips the runs whose id the workspace already has."""
    service = service_for(ops, machine, fault_service)
    service_ns, service_src = service.ns, service.source
    if cpus < 1 or cpus > machine.ncpus:
        raise ValueError(f"--cpus must be between 1 and {machine.ncpus} for {machine.name}")
    return {"trace_id": trace_id, "trace_sha256": trace_sha256, "model": model.name, "machine": machine.name,
            "machine_sha256": machine.digest(), "model_sha256": model.digest(),
            "cpus": cpus, "seed": seed, "placement": placement, "semantics": REFERENCE_VERSION,
            "engine": engine_name(), "loop": "open" if open_loop else "closed", "fault_service_ns": service_ns,
            "fault_service_source": service_src, "kernel": model.release}


def engine_name() -> str:
    """Which form of the one engine runs: numba's compiled code, or (NUMBA_DISABLE_JIT=1)
    the same source as plain Python.  Recorded with a run, not hashed: same results."""
    from numba import config

    return "python" if config.DISABLE_JIT else "numba"


def replay(ops, model, machine: Machine, cpus: int, seed: int = 0,
           placement: str = "spread", trace_id: str = "", trace_sha256: str = "", progress=None,
           open_loop: bool = False, fault_service: str = "trace", results_path: str | None = None) -> Run:
    """Replay ``ops`` (a DataFrame or LazyFrame, or the path of an ops Parquet file -
    read in column batches; one or more mms, in op_id order).  With
    ``results_path``, results stream to that Parquet file chunk by chunk instead of
    being kept (``Run.results`` is then None), and the waits likewise to
    ``waits.parquet`` beside it (``Run.waits_path``): memory stays bounded whatever
    the size."""
    from .source import OpsSource

    if isinstance(ops, pl.DataFrame):
        ops = ops.sort("op_id")
    src = OpsSource(ops)
    params = run_params(src, model, machine, cpus, seed, placement, trace_id, trace_sha256, open_loop,
                        fault_service)
    rid = run_id_for(params)
    service = service_for(src, machine, fault_service)
    t0 = time.perf_counter()
    mms = src.mms()
    totals = Totals()
    frames: list = []
    writer = _ChunkWriter(results_path) if results_path is not None else None
    waits_path = os.path.join(os.path.dirname(results_path), "waits.parquet") if results_path is not None else None
    wwriter = _ChunkWriter(waits_path) if waits_path is not None else None
    wframes: list = []

    def emit(df: pl.DataFrame) -> None:
        totals.add(df)
        df = df.with_columns(pl.lit(rid).alias("run_id"), pl.lit(model.name).alias("model"),
                             pl.lit(machine.name).alias("machine"), pl.lit(cpus, pl.Int32).alias("cpus"))
        if writer is None:
            frames.append(df)
        else:
            writer.put(df.to_arrow())

    def emit_waits(df: pl.DataFrame) -> None:
        df = df.with_columns(pl.lit(rid).alias("run_id"))
        if wwriter is None:
            wframes.append(df)
        else:
            wwriter.put(df.to_arrow())

    try:
        locks, lines, line_cpu, counters = _replay_mms(ops, mms, model, machine, cpus, placement, open_loop,
                                                       service, seed, progress, emit, params["kernel"], emit_waits)
        if writer is not None and not writer.started:
            emit(pl.DataFrame(schema=RESULTS_SCHEMA))  # no ops: an empty file with the schema
        if wwriter is not None and not wwriter.started:
            emit_waits(pl.DataFrame(schema=WAITS_SCHEMA))  # no waits: an empty file with the schema
    finally:
        for w in (writer, wwriter):
            if w is not None:
                w.close()
    res = None
    if results_path is None:
        res = pl.concat(frames) if frames else pl.DataFrame(schema=RESULTS_SCHEMA).with_columns(
            pl.lit(rid).alias("run_id"), pl.lit(model.name).alias("model"), pl.lit(machine.name).alias("machine"),
            pl.lit(cpus, pl.Int32).alias("cpus"))
    lock_schema = {"mm": pl.Utf8, "lock_class": pl.Utf8, "lock": pl.Utf8, "acquisitions": pl.Int64,
                   "contentions": pl.Int64, "wait_total_ns": pl.Float64, "wait_max_ns": pl.Float64,
                   "wait_min_ns": pl.Float64, "hold_total_ns": pl.Float64, "hold_max_ns": pl.Float64,
                   "hold_min_ns": pl.Float64, "trylock_failures": pl.Int64, "con_bounces": pl.Int64}
    lock_df = pl.DataFrame(locks, schema=lock_schema)
    line_schema = {"mm": pl.Utf8, "line": pl.UInt64, "fields": pl.Utf8, "offsets": pl.Utf8, "transfers": pl.Int64,
                   "invalidations": pl.Int64}
    line_df = pl.DataFrame(lines, schema=line_schema)
    line_cpu_df = pl.DataFrame(line_cpu, schema=line_cpu_schema())
    waits = None
    if waits_path is None:
        waits = pl.concat(wframes) if wframes else pl.DataFrame(schema=WAITS_SCHEMA).with_columns(
            pl.lit(rid).alias("run_id"))
    return Run(rid, params, res, lock_df, line_df, counters, time.perf_counter() - t0, totals, results_path,
               line_cpu_df, waits, waits_path)


class _ChunkWriter:
    """Writes result chunks to one Parquet file on a thread of its own, so compression
    and I/O overlap the simulation (run_chunk releases the GIL)."""

    def __init__(self, path: str):
        import queue
        import threading

        self.path = path
        # bounded: one table waiting while one is written (a load.RESULT_CHUNK of rows,
        # ~13 MB of results), so memory stays at a few chunks
        self.q: queue.Queue = queue.Queue(maxsize=1)
        self.started = False
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        import pyarrow.parquet as pq

        w = None
        try:
            while (tab := self.q.get()) is not None:
                if w is None:
                    w = pq.ParquetWriter(self.path, tab.schema, compression="zstd", compression_level=1)
                w.write_table(tab)
        except BaseException as e:  # reported by close()
            self.error = e
            while self.q.get() is not None:
                pass
        finally:
            if w is not None:
                w.close()

    def put(self, tab) -> None:
        self.started = True
        self.q.put(tab)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.error is not None:
            raise self.error


def _mm_ops(ops, mm, mms):
    from .source import OpsSource

    return OpsSource(ops, None if len(mms) == 1 else mm)


def _replay_mms(ops, mms, model, machine, cpus, placement, open_loop, service, seed, progress, emit, release=None,
                emit_waits=None):
    from ..jit import notice_compile
    from . import load, loop

    notice_compile(loop.run_chunk, "the replay engine", "30")
    locks, lines, line_cpu = [], [], []
    counters: dict = {}
    done = 0
    for mm in mms:
        sub = _mm_ops(ops, mm, mms)
        n = sub.n

        def tick(k, base=done):
            if progress:
                progress(base + k)

        lk, ln, lc, ctr = load.simulate(model, machine, cpus, sub, placement, open_loop, service, seed=seed,
                                        sink=emit, progress=tick, mm=mm, release=release, wait_sink=emit_waits)
        done += n
        locks += [{"mm": mm, **x} for x in lk]
        lines += [{"mm": mm, **x} for x in ln]
        line_cpu += [{"mm": mm, **x} for x in lc]
        for k, v in ctr.items():
            counters[k] = counters.get(k, 0) + v
    return locks, lines, line_cpu, counters
