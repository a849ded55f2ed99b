"""Loading one mm's ops into the engine's state, and reading results and statistics
back out.

Columns are read one at a time and kept in compact arrays (24 bytes an op for v8 with
the fault path; think times and addresses in 4 bytes each, narrow.py), so a large
trace on Parquet never sits in memory whole; the per-VMA, per-thread and
per-writer tables are small.  Cache lines get dense ids: the mm_struct's page, then the
VMA slab, then the vma_lock slab, each region an even number of lines so ``line ^ 1``
is still the 128-byte buddy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import state as st
from .coherence import RX_KINDS, RX_NAMES
from .isa import OUTCOMES, encode
from .loop import F_END_KNOWN, F_PROG, F_START_KNOWN, run_chunk, start
from .variation import BARRIER_WAKE_NS, SERVICE_CONSTANT, SERVICE_LOGNORMAL, SERVICE_SAMPLES
from .micro import DEFAULT_WRITER_NS, PMD_SHIFT
from .sched import ERR_DEADLOCK, TICK_NS, base_slice_ns
from . import narrow
from .source import OpsSource, trim_heap
from .faultpath import Plan
from .retry import LVUR_ANON_CHECK_UNTIL, anon_vma_modes, retry_causes
from .retry import _release as retry_release
from .rwsem import READER_OWNER_STORES_FROM
from .vma import vma_alloc

# where the simulated objects sit (only for line_stats' addresses)
MM_BASE = 0xFFFF888100000000
VMA_SLAB_BASE = 0xFFFF888200000000
VMA_LOCK_SLAB_BASE = 0xFFFF888300000000
FAULT_PATH_BASE = 0xFFFF888400000000  # the fault path's own lines (zone, lruvec, page_counter)
# offsetof(struct ptdesc, ptl) on x86-64 without lock debugging: pt_flags 8, the
# rcu_head/pt_list union 16, __page_mapping 8, the pt_index union 8 (include/linux/mm_types.h
# 6.18; struct page's ptl at the same 40 in 6.3, after _pt_pad_1, pmd_huge_pte, _pt_pad_2, pt_mm)
PTDESC_PTL = 40


def encode_programs(model) -> np.ndarray:
    """The model's compiled programs as INSN records [len(Model.PROGRAMS) * plen]: fault,
    kernel fault, writer, read-mode madvise."""
    progs = [model.programs[k] for k in model.PROGRAMS]
    plen = max(len(p) for p in progs)
    out = np.zeros(len(progs) * plen, st.INSN)
    for pi, prog in enumerate(progs):
        for k, ins in enumerate(prog):
            out[pi * plen + k] = tuple(encode(ins, model.layout))
    return out, plen

def fault_kinds(src, c) -> np.ndarray:
    """Each op's fault kind code (faultpath.py K_*, replay/ops.py FAULT_KINDS order): the
    ops' ``fault_kind``; where it is null (no error code in the trace) or absent (ops
    written before the column), from the write flag - an anonymous first write, or a
    read of the zero page."""
    import polars as pl

    from ..ops import FAULT_KINDS

    by_write = pl.when(c("write", pl.Boolean).fill_null(True)).then(pl.lit(FAULT_KINDS.index("anon"), pl.Int8)) \
        .otherwise(pl.lit(FAULT_KINDS.index("zero"), pl.Int8))
    if "fault_kind" not in src.names and "write" not in src.names:
        return np.full(src.n, FAULT_KINDS.index("anon"), np.int8)
    if "fault_kind" not in src.names:
        return src.col(by_write, np.int8)
    e = pl.col("fault_kind").cast(pl.Utf8).replace_strict(
        {k: i for i, k in enumerate(FAULT_KINDS)}, default=None, return_dtype=pl.Int8)
    return src.col(pl.coalesce(e, by_write) if "write" in src.names else e.fill_null(FAULT_KINDS.index("anon")),
                   np.int8)


# the calls whose WORK walks the page tables of their range (cond_resched() per PMD), and
# whether the walk comes after mmap_write_downgrade() when the trace shows one
WALKS = {"mprotect": False, "mremap": False, "munmap": True, "brk": True}


# est.: the least a page-table walk spends per PMD entry - an empty entry's pmd_none()
# test and cond_resched()'s need-resched test, a few instructions - so a walk that the
# trace shows taking h ns passed at most h / PMD_STEP_MIN_NS cond_resched() points.  It
# bounds ranges far larger than what is mapped in them (a munmap of 2^63 bytes walks only
# its VMAs' page tables: unmap_single_vma() clamps to each VMA, zap_pud_range() skips
# empty PUDs), which the range alone would count in the trillions.
PMD_STEP_MIN_NS = 2


def _resched_points(kinds, addresses, lengths, hold, hold_read) -> np.ndarray:
    """Per writer, the cond_resched() points in the WORK that walks its range's page tables:
    one per PMD the range [address, address + length) spans - mm/mprotect.c (6.18)
    change_pmd_range(): ``next: cond_resched();`` per PMD, under change_protection() from
    mprotect_fixup(); mm/memory.c zap_pmd_range(): ``} while (pmd++, cond_resched(), addr
    != end);`` under unmap_region() (munmap, brk shrinking); mm/mremap.c move_page_tables():
    ``cond_resched();`` per extent (at most a PMD).  Positive: in the write-locked WORK
    (mprotect, mremap, and a munmap/brk that did not downgrade); negative: in the zap WORK
    after mmap_write_downgrade().  0: none (mmap, madvise, an unknown range).  Counts the
    PMD entries the range covers, present or not (an empty PMD skips the walk below it but
    still passes cond_resched() in zap_pmd_range(); change_pmd_range() too, via ``goto next``)."""
    out = np.zeros(len(kinds), np.int64)
    for i, (kd, a, n) in enumerate(zip(kinds, addresses, lengths)):
        if kd not in WALKS or a is None or n is None or n <= 0 or a < 0:
            continue
        pts = ((a + n - 1) >> PMD_SHIFT) - (a >> PMD_SHIFT) + 1
        after = WALKS[kd] and hold_read[i] > 0
        h = hold_read[i] if after else (hold[i] if hold[i] > 0 else DEFAULT_WRITER_NS)  # micro.h_work()'s
        pts = max(1, min(pts, int(h // PMD_STEP_MIN_NS)))
        out[i] = -pts if after else pts
    return out


def _csr(lists, index) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(lists) + 1, np.int64)
    flat = []
    for i, xs in enumerate(lists):
        xs = [index[x] for x in (xs or [])]
        flat.extend(xs)
        ptr[i + 1] = ptr[i] + len(xs)
    return ptr, np.asarray(flat, np.int64)


@njit(cache=True)
def _is_arange(a):
    for i in range(1, a.shape[0]):
        if a[i] != a[0] + i:
            return False
    return True


@njit(cache=True)
def _is_increasing(a):
    for i in range(1, a.shape[0]):
        if a[i] <= a[i - 1]:
            return False
    return True


_CHUNK = 1 << 20  # _distinct, _densify: numpy over this many values at a time (no temporaries of the ops' length)


def _distinct(a):
    """The distinct non-negative values of a (sorted), without sorting a copy of a.
    numpy, not compiled: compiling np.unique's sort took a tenth of the engine's cold
    compile, for a fallback that runs only on ids above 2**26."""
    hi = int(a.max()) if a.shape[0] else -1
    if hi < 0:
        return np.zeros(0, np.int64)
    if hi < 1 << 26:
        seen = np.zeros(hi + 1, np.bool_)
        for s in range(0, a.shape[0], _CHUNK):
            c = a[s:s + _CHUNK]
            seen[c[c >= 0]] = True
        return np.flatnonzero(seen).astype(np.int64)
    return np.unique(a[a >= 0]).astype(np.int64)


def _densify(a, uniq):
    """In place: each value becomes its index in the sorted uniq; negatives become -1."""
    for s in range(0, a.shape[0], _CHUNK):
        c = a[s:s + _CHUNK]
        c[:] = np.where(c >= 0, np.searchsorted(uniq, c), -1)


def _ptl_regions(addr, op_arg, is_fault, nt: int) -> int:
    """How many PTL records the faults need: one per distinct 2 MiB region (address >>
    21) of a fault with an address, and one a thread if any fault has none - counted a
    chunk at a time, so no copy of every fault's address is made."""
    regions = np.zeros(0, np.int64)
    unknown = False
    for s in range(0, is_fault.shape[0], _CHUNK):
        e = min(s + _CHUNK, is_fault.shape[0])
        fa = narrow.addresses(addr, op_arg, is_fault, s, e)[is_fault[s:e]]
        unknown = unknown or bool((fa < 0).any())
        regions = np.union1d(regions, fa[fa >= 0] >> 21)
    return len(regions) + (nt if unknown else 0)


@njit(cache=True)
def _group_order(key, mask, nkeys):
    """Stable counting sort: the indices i with mask[i] and key[i] >= 0, grouped by key
    value (int32), and each group's start."""
    start = np.zeros(nkeys + 1, np.int64)
    for i in range(key.shape[0]):
        if mask[i] and key[i] >= 0:
            start[key[i] + 1] += 1
    for k in range(nkeys):
        start[k + 1] += start[k]
    ptr = start[:-1].copy()
    out = np.empty(start[nkeys], np.int32)
    for i in range(key.shape[0]):
        k = key[i]
        if mask[i] and k >= 0:
            out[ptr[k]] = i
            ptr[k] += 1
    return out, start


@njit(cache=True)
def _longest_instant_run(order, starts, instant):
    best = 0
    for t in range(starts.shape[0] - 1):
        run = 0
        for q in range(starts[t], starts[t + 1]):
            run = run + 1 if instant[order[q]] else 0
            best = max(best, run)
    return best


@njit(cache=True)
def _range_deps(n, us_ops, us_p, A, h_p, h_w, h_row, h_start, h_end):
    """Per op, the writer whose range change a fault needs before it may start (-1: none):
    for a fault on VMA v at address a, in the trace's run of v's ranges up to the fault
    that all cover a, the writer that began it - a growth or a merge that mapped a (a
    creator, or the first range of a VMA the mm had already, is the run's start and no
    dependency: loop._gate waits for creators itself, and the range before a VMA's first
    writer is not known).  A fault whose VMA no longer covers its address at the last
    change before it ran inside that writer's syscall (the tracker shows it the old
    layout): it depends on nothing, and races the writer as it did."""
    dep = np.full(1, -1, np.int32)  # [1] while no fault has one (most traces: no 4-byte array of -1s)
    for v in range(us_p.shape[0] - 1):
        lo, hi = h_p[v], h_p[v + 1]
        if hi - lo < 2:
            continue
        k = lo - 1
        for q in range(us_p[v], us_p[v + 1]):
            j = us_ops[q]
            while k + 1 < hi and h_row[k + 1] < j:
                k += 1
            a = narrow.addr_at(A, j, v)  # j: a fault on VMA v
            if k < lo or a < 0 or not (h_start[k] <= a < h_end[k]):
                continue
            b = k
            while b - 1 >= lo and h_start[b - 1] <= a < h_end[b - 1]:
                b -= 1
            if b > lo:
                if dep.shape[0] != n:
                    dep = np.full(n, -1, np.int32)
                dep[j] = h_w[b]
    return dep


# results rows (and waits) a run_chunk() call hands back at most: the engine's out and
# wait buffers and every stage of a chunk's way to Parquet (the raw copy, the polars
# frame, its Arrow table queued for and in the writer thread) are this size, ~200 bytes
# a row each; the replay is the same whatever it is (tests/test_engine_properties.py)
RESULT_CHUNK = 1 << 16


def load(model, machine, ncpus: int, ops, placement: str = "spread", open_loop: bool = False,
         fault_service_ns=None, chunk: int = RESULT_CHUNK, seed: int = 0, release: str | None = None):
    """Build the state for one mm's ops: a polars DataFrame or LazyFrame in op_id order
    with the ops schema's columns.  Columns are read one at a time and kept in compact
    arrays (24 bytes an op for v8 with the fault path), so a large trace on Parquet
    never sits in memory whole.  Returns ((I, F, P), meta)."""
    import polars as pl

    lay = model.layout
    prm = model.lock
    src = ops if isinstance(ops, OpsSource) else OpsSource(ops)
    c = src.expr
    kind = c("kind", pl.Utf8).cast(pl.Utf8)
    src.prefetch()  # a file: the small per-op columns in one pass; the big ones one at a time
    op_prog = src.take("prog", src.prog)
    n = len(op_prog)
    is_fault = op_prog >= 0
    is_fault &= op_prog <= 1
    known = src.order("op_id")
    if known is not None and known[0] and known[1] is not None:
        op_base, op_ids = known[1], None
    else:
        op_id = src.column("op_id", np.int64)
        if not _is_increasing(op_id):
            raise ValueError("ops must be in op_id order")
        op_base = int(op_id[0]) if n and _is_arange(op_id) else None
        op_ids = None if op_base is not None else op_id
        del op_id
    if known is not None and not known[0]:
        raise ValueError("ops must be in op_id order")
    # the per-op arrays in an order that keeps the fewest alive at once (a 50 M-op load
    # peaks at its kept arrays, 24 bytes an op, not at their temporaries): the small
    # ones first, the two that narrow.py packs from 8 bytes (address, think_ns) last
    op_prog += 1
    flags = op_prog.astype(np.int16)  # program + 1 in the F_PROG bits; then whether the start and end are known
    del op_prog
    flags[src.take("start_ns", lambda: src.notnull("start_ns"))] |= F_START_KNOWN
    flags[src.take("end_ns", lambda: src.notnull("end_ns"))] |= F_END_KNOWN
    op_fkind = fault_kinds(src, c)
    op_retry, retry_ops, retry_wait = retry_causes(src, c, op_fkind, release or model.release)

    # writers (every non-fault op): few, read whole
    w = src.writers(lambda df: df.select(
        "_j", kind.alias("kind"), c("hold_ns"), c("read_hold_ns"), c("advice"), c("vma_id"),
        c("address", pl.UInt64).cast(pl.Int64, strict=False), c("length"),  # above 2^63: no user range (null)
        *(c(k, pl.List(pl.Int64)).cast(pl.List(pl.Int64)) for k in
                                                 ("vma_ids", "vmas_created", "vmas_freed", "vmas_successor",
                                                  "range_vmas", "range_start", "range_end", "vmas_parent"))))
    nf_idx = w["_j"].to_numpy().astype(np.int64)
    wl = {k: w[k].to_list() for k in ("vma_ids", "vmas_created", "vmas_freed", "vmas_successor")}
    rng = {k: w[k].to_list() for k in ("range_vmas", "range_start", "range_end")}
    w_kind = w["kind"].to_list()

    vma = src.column("vma_id", np.int32, -1)
    pieces = [_distinct(vma)]
    for k in wl:
        for xs in wl[k]:
            if xs:
                pieces.append(np.asarray([x for x in xs if x is not None and x >= 0], np.int64))
    uniq = np.unique(np.concatenate(pieces)) if pieces else np.zeros(0, np.int64)
    index = {int(v): i for i, v in enumerate(uniq)}
    nv = len(uniq)
    _densify(vma, uniq)
    op_vma = vma
    del vma

    freed, succ = [], []
    for fr, sc in zip(wl["vmas_freed"], wl["vmas_successor"]):
        fr = fr or []
        sc = sc if sc else [-1] * len(fr)
        pairs = list(zip(fr, sc))  # zip() as the reference does: the shorter list wins
        freed.append([p[0] for p in pairs])
        succ.append([p[1] for p in pairs])
    w_ids_p, w_ids = _csr(wl["vma_ids"], index)
    w_freed_p, w_freed = _csr(freed, index)
    w_succ = np.asarray([index[s] if s is not None and s >= 0 else -1 for ss in succ for s in ss], np.int64)
    w_created_p, w_created = _csr(wl["vmas_created"], index)
    # per created VMA the one whose anon_vma it takes (ops vmas_parent, parallel to vmas_created)
    w_parent = np.asarray([index.get(p, -1) if p is not None and p >= 0 else -1
                           for xs, ps in zip(wl["vmas_created"], w["vmas_parent"].to_list())
                           for _, p in zip(xs or [], list(ps or []) + [None] * len(xs or []))], np.int64)
    # each writer's VMAs as it leaves them (ops range_*; none in ops without the columns)
    w_rng_p, w_rng_vid = _csr([[x for x in (xs or []) if x in index] for xs in rng["range_vmas"]], index)
    w_rng_start = np.asarray([a for xs, ys in zip(rng["range_vmas"], rng["range_start"])
                              for x, a in zip(xs or [], ys or []) if x in index], np.int64)
    w_rng_end = np.asarray([a for xs, ys in zip(rng["range_vmas"], rng["range_end"])
                            for x, a in zip(xs or [], ys or []) if x in index], np.int64)
    gate = [sorted(set(a or []) | set(b or [])) for a, b in zip(wl["vma_ids"], wl["vmas_freed"])]
    w_gate_p, w_gate = _csr(gate, index)
    hold = w["hold_ns"].fill_null(0).to_numpy().astype(np.int64)
    hold_read = w["read_hold_ns"].fill_null(0).to_numpy().astype(np.int64)  # after mmap_write_downgrade()
    w_advice = w["advice"].fill_null(-1).to_numpy().astype(np.int64)
    w_resched = _resched_points(w_kind, w["address"].to_list(), w["length"].to_list(), hold, hold_read)
    w_addr = w["address"].fill_null(-1).to_numpy().astype(np.int64)
    w_len = w["length"].fill_null(0).to_numpy().astype(np.int64)
    w_vma = np.asarray([index.get(int(x), -1) if x is not None else -1 for x in w["vma_id"].to_list()], np.int64)
    op_arg = op_vma
    op_arg[nf_idx] = np.arange(len(nf_idx), dtype=np.int32)  # non-faults: their writer index
    del op_vma

    created = {index[x] for xs in wl["vmas_created"] for x in (xs or [])}
    vid_created = np.zeros(nv, np.int64)
    vid_created[list(created)] = 1
    seen = np.zeros(nv, np.bool_)  # the VMAs faults name (no copy of every fault's VMA to sort)
    for s in range(0, n, _CHUNK):
        c_ = op_arg[s:s + _CHUNK]
        seen[c_[is_fault[s:s + _CHUNK] & (c_ >= 0)]] = True
    every = set(np.flatnonzero(seen).tolist())
    del seen
    for k in ("vma_ids", "vmas_freed"):
        for xs in wl[k]:
            every.update(index[x] for x in (xs or []))
    initial = sorted(every - created)
    n_created = sum(len(xs or []) for xs in wl["vmas_created"])
    max_obj = len(initial) + n_created + 1

    # causal order is op order (ops arrive in op_id order, so an op's rank is its index;
    # seq, an input line, is not consulted): the faults per VMA in op order
    us_ops, us_p = _group_order(op_arg, is_fault, nv)

    tid = src.column("tid", np.int32)
    # the distinct tids as np.unique gives them, without its sorted copy of every op's tid
    tids = _distinct(tid).astype(np.int32) if n and int(tid.min()) >= 0 else np.unique(tid)
    nt = len(tids)
    tmin = int(tids.min()) if nt else 0
    lut = np.full(int(tids.max()) - tmin + 1 if nt else 1, -1, np.int32)
    lut[tids - tmin] = np.arange(nt)
    tix = tid  # each op's thread index, in place of its tid (a chunk at a time: no temporaries of the ops' length)
    for s in range(0, n, _CHUNK):
        c_ = tix[s:s + _CHUNK]
        c_[:] = lut[c_ - np.int32(tmin)]
    del tid, lut
    th_order, th_p = _group_order(tix, np.ones(len(tix), np.bool_), nt)
    recorded = None
    op_cpu = np.full(1, -1, np.int16)
    if placement == "as-recorded":
        # each op on the CPU the trace recorded it on (its first event's), -1 where none
        op_cpu = machine.as_recorded(src.column("cpu", np.int16, -1), ncpus)
        # each thread starts on the CPU of its first op that has one
        seen = np.flatnonzero(op_cpu[th_order] >= 0)  # positions in thread order
        at_or_after = np.searchsorted(seen, th_p[:-1])
        recorded = []
        for t in range(nt):
            f = int(seen[at_or_after[t]]) if at_or_after[t] < len(seen) else int(th_p[t + 1])
            recorded.append(int(op_cpu[th_order[f]]) if f < th_p[t + 1] else None)
    cpus = machine.placement(nt, ncpus, placement, recorded)
    del tix

    # lock_vma_under_rcu(mm, address)'s address (micro.h_check_range), where a program checks one
    addr = narrow.no_addresses(0)
    has_addr = bool(prm.vma_lock) and "address" in src.names
    # the fault path runs where the service comes from the profile (engine.service_for);
    # a trace's own times, a number given, or no Service (tests: one number) run none.
    # Its PTE locks are per 2 MiB of address: it reads every fault's address too.
    fp_run = machine.fault_path is not None and str(getattr(fault_service_ns, "source", "")).startswith("profile")
    if has_addr or (fp_run and "address" in src.names):
        addr = narrow.read_addresses(src, op_arg, is_fault)  # 4 bytes an op (narrow.py)
    elif fp_run:
        addr = narrow.no_addresses(n)
    ptl_cap = 0
    if fp_run:  # a PTL record for each 2 MiB region a fault touches, and one a thread for faults with no address
        ptl_cap = _ptl_regions(addr, op_arg, is_fault, nt)
    if open_loop:
        starts = src.frame(["start_ns"], lambda df: df.select(c("start_ns").min()))
        t0 = starts["start_ns"].min() if starts is not None else None
        op_rel_start = src.col((c("start_ns") - (t0 or 0)).fill_null(0).cast(pl.Float64), np.float64)
    else:
        op_rel_start = np.zeros(1)

    # zero-time ops can finish several in one step: keep that much room in the buffer
    # the fault service time: a number (always that), or an engine.Service (drawn per fault)
    svc = fault_service_ns
    service = float(machine.fault_service_ns if svc is None else getattr(svc, "ns", svc))
    samples = getattr(svc, "samples", None)
    sigma = float(getattr(svc, "sigma", 0.0))
    min_service = float(samples[0]) if samples is not None and len(samples) else service
    # each fault's recorded handle_mm_fault() time where the service comes from the trace
    recorded = bool(getattr(svc, "recorded", False)) and "service_ns" in src.names
    op_service = np.full(1, np.nan)
    if recorded:
        op_service = src.column("service_ns", np.float64, 0)
        op_service[~src.notnull("service_ns")] = np.nan
    if recorded and not np.isnan(op_service).all():
        min_service = min(min_service, float(np.nanmin(op_service)))
    instant = (flags & F_PROG) == 0  # no program, no time
    if not min_service:
        instant |= is_fault
    slack = 2 + (_longest_instant_run(th_order, th_p, instant) if instant.any() else 0)
    del instant, is_fault

    # lines: the mm_struct's page, the VMA slab, the vma_lock slab (even-sized regions)
    vma_st = lay.vma
    vlines = (max_obj // vma_st.per_page + 1) * 64
    llines = (max_obj // lay.vma_lock.per_page + 1) * 64 if lay.vma_lock_in == "vma_lock" else 0
    VBASE, LBASE = 64, 64 + vlines
    nlines = LBASE + llines
    mcpus = machine.cpus()
    plan = None
    if fp_run:
        plan = Plan(machine, lay, release or model.release, nlines, len(mcpus), mcpus, len(mcpus), ptl_cap)
        nlines = plan.nlines
    W = (len(mcpus) + 63) // 64
    nsock = machine.sockets

    k = np.zeros(1, st.CONFIG)[0]
    k["prefetch_pairs"] = int(machine.adjacent_line_prefetch)
    k["prfchw"] = int(machine.prefetchw)
    k["vma_lock"] = {"rwsem": 1, "refcnt": 2}.get(prm.vma_lock, 0)
    k["ref_limit"] = prm.ref_limit
    k["has_addr"] = int(has_addr)
    op_dep = np.full(1, -1, np.int32)
    if has_addr and len(w_rng_vid):  # each VMA's ranges in writer (= op) order
        order = np.argsort(w_rng_vid, kind="stable")
        wr = np.repeat(np.arange(len(w_rng_p) - 1), np.diff(w_rng_p))
        h_p = np.zeros(nv + 1, np.int64)
        np.cumsum(np.bincount(w_rng_vid, minlength=nv), out=h_p[1:])
        op_dep = _range_deps(n, us_ops, us_p, narrow.addr_tuple(addr), h_p, wr[order], nf_idx[wr[order]],
                             w_rng_start[order], w_rng_end[order])
    k["has_dep"] = int(len(op_dep) == n and bool((op_dep >= 0).any()))
    if not k["has_dep"]:  # no fault waits for a writer: the loop never reads op_dep (4 bytes an op saved)
        op_dep = np.full(1, -1, np.int32)
    trim_heap()  # before the last big column: what the ones before it freed, back to the OS
    think, think_xj, think_xv = narrow.read_think(src)  # 4 bytes an op (narrow.py)
    k["nthink_x"] = len(think_xj)
    k["addr_wide"], k["addr_seg"], k["naddr_x"] = addr["addr_wide"], addr["addr_seg"], addr["naddr_x"]
    k["has_op_cpu"] = int(len(op_cpu) == n and n > 0)
    k["wake_last"] = int(prm.wake == "last")
    k["reader_owner_store"] = int(retry_release(release or model.release) >= READER_OWNER_STORES_FROM)
    k["writer_ref"] = prm.writer_ref
    k["typesafe_by_rcu"] = int(prm.typesafe_by_rcu)
    k["open_loop"] = int(open_loop)
    k["vma_per_page"], k["vma_stride"] = vma_st.per_page, vma_st.stride
    if lay.vma_lock is not None:
        k["vl_per_page"], k["vl_stride"] = lay.vma_lock.per_page, lay.vma_lock.stride
    k["vma_base"], k["vl_base"] = VBASE, LBASE
    k["off_vm_start"] = vma_st.fields["vm_start"]
    # absent where the kernel has no such field (6.3: no vm_lock_seq, mm_lock_seq or
    # vma_writer_wait); Model refuses a layout lacking one its programs use
    # (replay/models/base.py needed_fields()), so the 0 is never read
    k["off_vm_lock_seq"] = vma_st.fields.get("vm_lock_seq", 0)
    k["off_vm_refcnt"] = vma_st.fields.get("vm_refcnt", 0)
    if lay.vma_lock_in in ("vma_lock", "vma"):
        vl = lay.vma_lock if lay.vma_lock_in == "vma_lock" else vma_st
        k["vl_off_count"], k["vl_off_owner"] = vl.fields["lock.count"], vl.fields["lock.owner"]
        k["vl_off_wait_lock"] = vl.fields["lock.wait_lock"]
        k["vl_in_vma"] = int(lay.vma_lock_in == "vma")
    mmf = lay.mm.fields
    for name, f in (("mm_mt", "mm_mt"), ("mm_count", "mmap_lock.count"), ("mm_owner", "mmap_lock.owner"),
                    ("mm_wait_lock", "mmap_lock.wait_lock"), ("mm_vma_writer_wait", "vma_writer_wait"),
                    ("mm_lock_seq", "mm_lock_seq")):
        k[name] = mmf.get(f, 0) // 64
    k["nsock"], k["mask_words"] = nsock, W
    L = machine.latency_ns
    for name in ("l1_hit", "llc_hit", "owned_atomic", "socket_read_shared", "socket_read_exclusive",
                 "cross_socket_handoff"):
        k[name] = L[name]
    k["fault_service_ns"] = service
    k["service_mode"] = SERVICE_SAMPLES if samples is not None and len(samples) else (
        SERVICE_LOGNORMAL if sigma > 0 else SERVICE_CONSTANT)
    k["service_sigma"] = sigma
    k["seed"] = seed
    k["nsamples"] = len(samples) if samples is not None else 0
    k["recorded_service"] = int(recorded)
    k["barrier_wake_ns"] = BARRIER_WAKE_NS
    for name, v in (plan.cfg if plan is not None else {}).items():
        k[name] = v
    k["nretry"] = len(retry_ops)
    k["lvur_anon_check"] = int(retry_release(release or model.release) < LVUR_ANON_CHECK_UNTIL)
    k["lvur_anon_vma"], k["vmf_anon"] = anon_vma_modes(release or model.release)
    k["off_anon_vma"] = vma_st.fields.get("anon_vma", 0)
    k["slice_ns"], k["tick_ns"] = base_slice_ns(len(mcpus)), TICK_NS
    k["wake_q_ns"] = BARRIER_WAKE_NS  # the same wake_up_q() step, paid by an rwsem's waker (rwsem.wake_up_q())
    handoff = np.array([[machine.handoff_ns(a, b) for b in mcpus] for a in mcpus], np.float64)

    nlk = max_obj + 1
    k["sharer_stride"] = nsock + W
    cap = chunk + slack
    max_w = int(np.diff(w_ids_p).max()) if len(w_ids_p) > 1 else 0
    # the heap: an event per thread, one per line with requests waiting (at most one a request
    # record), and superseded ones until a compaction (sched._compact_heap)
    hcap = 8 * nt + 64
    prog, plen = encode_programs(model)
    k["ncpu"], k["plen"], k["heap_cap"], k["nthreads"] = len(mcpus), plen, hcap, nt

    def table(dtype, n, **init):
        a = np.zeros(n, dtype)
        for f, v in init.items():
            a[f] = v
        return a

    # waits: a chunk's worth, and room for what one step can add past it - each thread
    # woken by one wake_up_q(), and the stepping thread's own few (waits.py)
    k["wait_cap"] = chunk + 2 * nt + 64
    g = table(st.GLOBALS, 1, vma_writer_wait=-1, pend_t=-1, commit_q=-1, chunk=chunk, wait_chunk=chunk)
    th = table(st.THREAD, nt, cpu=np.asarray(cpus), i=-1, rq_next=-1, slot=-1, found=-1, ref_obj=-1, held_vlock=-1,
               wc_next=-1, vma=-1, w=-1, waiter_next=-1, waiter_prev=-1, osq_next=-1, osq_prev=-1, start=np.nan,
               held_mm=np.nan, held_v=np.nan, wt_obj=-1, ptl=-1, ptl_next=-1, pf_line=-1, wk_n=-1, dl_cpu=-1, dl_next=-1,
               sb_line=-1, lq_line=-1)
    lk = table(st.LOCK, nlk, wait_head=-1, wait_tail=-1, osq_head=-1, osq_tail=-1, wait_min=np.nan, hold_min=np.nan,
               wake_q_head=-1, wake_q_tail=-1)
    lk[0]["count_line"], lk[0]["owner_line"], lk[0]["wait_lock_line"] = k["mm_count"], k["mm_owner"], k["mm_wait_lock"]
    arrays = dict(
        g=g, cfg=np.array([k]), th=th, lk=lk,
        ln=table(st.LINE, nlines, owner=-1, q_head=-1, q_tail=-1, arb_when=-1.0, reserved=-1, last_cpu=-1),
        lq_t=np.zeros(3 * nt, np.int64), lq_kind=np.zeros(3 * nt, np.int64),
        lq_next=np.append(np.arange(1, 3 * nt, dtype=np.int64), -1), sharers=np.zeros(nlines * (nsock + W), np.int64),
        ob=table(st.VMA_OBJ, max_obj), vid=table(st.VMA_ID, nv, obj=-1, created=vid_created, successor=-1,
                                                 wc_head=-1, wc_tail=-1, unstarted=us_p[:-1]),
        cpus=table(st.CPU, len(mcpus), busy=-1, rq_head=-1, rq_tail=-1, dl_head=-1, socket=[c.socket for c in mcpus],
                   llc=[c.socket * max(1, machine.ccds) + c.ccd for c in mcpus]),
        handoff=handoff.ravel(), hp=table(st.HEAP, hcap), out=table(st.OUT, cap), prog=prog,
        wt=table(st.WAIT, k["wait_cap"]),
        slot_obj=np.full(max_obj, -1, np.int64), freelist=np.zeros(max_obj, np.int64),
        pend_obj=np.zeros(max_w + 1, np.int64), waiting_writers=np.zeros(nt + 1, np.int64),
        vid_order=np.zeros(nv, np.int64),
        w_hold=hold, w_hold_read=hold_read, w_resched=w_resched, w_addr=w_addr, w_len=w_len, w_ids_p=w_ids_p, w_ids=w_ids, w_freed_p=w_freed_p, w_freed=w_freed, w_succ=w_succ,
        w_created_p=w_created_p, w_created=w_created, w_parent=w_parent, w_gate_p=w_gate_p, w_gate=w_gate,
        w_rng_p=w_rng_p, w_rng_vid=w_rng_vid, w_rng_start=w_rng_start, w_rng_end=w_rng_end,
        **{a: addr[a] for a in ("op_addr", "op_addr_seg", "addr_base", "addr_xj", "addr_xv", "op_addr_wide")},
        op_dep=op_dep, op_cpu=op_cpu, w_done=np.zeros(max(len(nf_idx), 1), np.int64),
        us_p=us_p, us_ops=us_ops, th_ops_p=th_p, th_order=th_order,
        op_flags=flags, op_arg=op_arg, op_think=think, think_xj=think_xj, think_xv=think_xv, op_start=op_rel_start,
        service_samples=samples if samples is not None and len(samples) else np.zeros(1),
        op_service=op_service, op_fkind=op_fkind, w_advice=w_advice, w_vma=w_vma,
        op_retry=op_retry, retry_ops=retry_ops if len(retry_ops) else np.full(1, -1, np.int64),
        retry_wait=retry_wait if len(retry_wait) else np.zeros(1),
        res=plan.res if plan is not None else np.zeros(1, st.RES),
        fpcpu=plan.fpcpu if plan is not None else np.zeros(1, st.FPCPU),
        fp_lines=plan.lines if plan is not None else np.zeros(1, np.int64),
        ptl=plan.ptl if plan is not None else np.zeros(1, st.PTL),
        ptl_hash=plan.ptl_hash if plan is not None else np.full(1, -1, np.int64),
        fp_hold_b=plan.hold_b if plan is not None else np.ones(1), fp_hold_ns=plan.hold_ns if plan is not None else np.ones(1),
        line_cpu=np.zeros(nlines * len(mcpus) * RX_KINDS, np.int64),  # calloc: pages mapped as lines move
    )
    state = st.State(arrays)
    del arrays
    _alloc_initial(state.S, np.asarray(initial, np.int64))
    trim_heap()  # the loader's freed temporaries and the Parquet reader's buffers, back to the OS
    meta = {"uniq": uniq, "chunk": chunk, "tids": tids, "op_base": op_base, "op_ids": op_ids, "vlines": vlines,
            "llines": llines, "w_kind": w_kind, "plan": plan}
    return state, meta


@njit(cache=True)
def _alloc_initial(Sarr, vids):
    """The VMAs the mm has before the trace's first writer - each with an anon_vma
    (replay/engine/retry.py: exec wrote the stack and the data segments)."""
    S = st.open_state(Sarr)
    for v in vids:
        st.vobj(S, vma_alloc(S, v)).anon_vma = 1


def lock_stats(state, model, meta) -> list[dict]:
    """lockstat-like figures per rw_semaphore that was used."""
    lk, ln, g = state["lk"], state["ln"], state.g
    out = []
    locks = [(0, "mmap_lock", "mm")]
    if state["cfg"][0]["vma_lock"] == 1:
        locks += [(int(state["vid"][v]["obj"]) + 1, "vma_lock", f"vma:{int(meta['uniq'][v])}")
                  for v in state["vid_order"][:g["nvorder"]]]
    for k, cls, key in locks:
        r = lk[k]
        acq, con, tf = int(r["acquisitions"]), int(r["contentions"]), int(r["trylock_failures"])
        if not (acq or con or tf):
            continue
        out.append({"lock_class": cls, "lock": key, "acquisitions": acq, "contentions": con,
                    "wait_total_ns": float(r["wait_total"]), "wait_max_ns": float(r["wait_max"]),
                    "wait_min_ns": None if np.isnan(r["wait_min"]) else float(r["wait_min"]),
                    "hold_total_ns": float(r["hold_total"]), "hold_max_ns": float(r["hold_max"]),
                    "hold_min_ns": None if np.isnan(r["hold_min"]) else float(r["hold_min"]),
                    "trylock_failures": tf, "con_bounces": int(ln[r["count_line"]]["transfers"])})
    plan = meta.get("plan")
    if plan is not None:  # the fault path's spinlocks (faultpath.py): no trylock, no separate count line
        for r, (cls, key) in zip(state["res"], plan.resource_names):  # the spinlocks, not the counters after them
            acq = int(r["acquisitions"])
            if not acq:
                continue
            out.append({"lock_class": cls, "lock": key, "acquisitions": acq, "contentions": int(r["contentions"]),
                        "wait_total_ns": float(r["wait_total"]), "wait_max_ns": float(r["wait_max"]),
                        "wait_min_ns": None, "hold_total_ns": float(r["hold_total"]), "hold_max_ns": float(r["hold_max"]),
                        "hold_min_ns": None, "trylock_failures": 0, "con_bounces": int(ln[r["line"]]["transfers"])})
        base = int(state["cfg"][0]["fp_ptl_line"])
        for i, (r, key) in enumerate(zip(state["ptl"][:g["nptl"]], ptl_names(state, meta))):  # each PTE page's lock
            out.append({"lock_class": plan.ptl_class, "lock": key, "acquisitions": int(r["acquisitions"]),
                        "contentions": int(r["contentions"]), "wait_total_ns": float(r["wait_total"]),
                        "wait_max_ns": float(r["wait_max"]), "wait_min_ns": None,
                        "hold_total_ns": float(r["hold_total"]), "hold_max_ns": float(r["hold_max"]),
                        "hold_min_ns": None, "trylock_failures": 0, "con_bounces": int(ln[base + i]["transfers"])})
    return out


def ptl_names(state, meta) -> list[str]:
    """The PTE locks made so far, in PTL record order, by the 2 MiB they cover:
    ``pte:0x7f0000000000`` (its start), or ``pte:tid:N`` for thread N's faults with no address."""
    keys = state["ptl"]["key"][:int(state.g["nptl"])].tolist()
    tids = meta["tids"]
    return [f"pte:{k << 21:#x}" if k >= 0 else f"pte:tid:{int(tids[-k - 1])}" for k in keys]


def line_stats(state, model, meta) -> list[dict]:
    """Every line that moved or was invalidated, with the struct fields on it."""
    lay = model.layout
    names: dict[int, set] = {}  # line -> {(offset in the line, struct.field)}

    def put(addr, name):
        names.setdefault(addr // 64, set()).add((addr % 64, name))

    for f, off in lay.mm.fields.items():
        put(off, f"mm_struct.{f}")
    for slot in range(int(state.g["nslots"])):
        rel = lay.vma.address(slot, 0)
        for f, off in lay.vma.fields.items():
            put(64 * 64 + rel + off, f"vm_area_struct.{f}")
        if lay.vma_lock_in == "vma_lock":
            a = lay.vma_lock.address(slot, 0)
            for f in ("lock.count", "lock.owner", "lock.wait_lock"):
                put((64 + meta["vlines"]) * 64 + a + lay.vma_lock.fields[f], f"vma_lock.{f}")
    plan = meta.get("plan")
    for d, nm in (plan.names.items() if plan is not None else ()):  # the fault path's own lines
        put(d * 64, nm)
    if plan is not None:  # the PTE pages' struct ptdesc, the lock at its offset
        base = int(state["cfg"][0]["fp_ptl_line"])
        for i, key in enumerate(ptl_names(state, meta)):
            put((base + i) * 64 + PTDESC_PTL, f"ptdesc[{key}].ptl")
    ln = state["ln"]
    ln_tr, ln_inv = ln["transfers"], ln["invalidations"]
    hot = np.flatnonzero((ln_tr > 0) | (ln_inv > 0))
    out = []
    for d in hot.tolist():
        on = names.get(d, set())
        out.append({"line": _line_address(d, meta), "fields": ", ".join(sorted({n for _, n in on})) or "?",
                    "offsets": ", ".join(f"0x{o:02x} {n}" for o, n in sorted(on)) or "?",
                    "transfers": int(ln_tr[d]), "invalidations": int(ln_inv[d])})
    return out


def _line_address(d: int, meta) -> int:
    """The simulated address of dense line d: the mm_struct's page, the VMA slab, the
    vma_lock slab, the fault path's lines (zone, lruvec, page_counter)."""
    if d < 64:
        return (MM_BASE // 64 + d) * 64
    if d < 64 + meta["vlines"]:
        return (VMA_SLAB_BASE // 64 + d - 64) * 64
    fp_base = 64 + meta["vlines"] + meta["llines"]
    if d < fp_base:
        return (VMA_LOCK_SLAB_BASE // 64 + d - 64 - meta["vlines"]) * 64
    return (FAULT_PATH_BASE // 64 + d - fp_base) * 64


def line_cpu_stats(state, meta) -> list[dict]:
    """Per line that moved and CPU that received it: the transfers into that CPU, by kind
    (coherence.RX_NAMES: perf c2c's classes).  Summed over CPUs and kinds, a line's rows
    give its line_stats transfers."""
    ncpu = int(state["cfg"][0]["ncpu"])
    per = state["line_cpu"].reshape(-1, ncpu, RX_KINDS)
    hot = np.flatnonzero(state["ln"]["transfers"] > 0)  # reads only the rows of lines that moved
    sockets = state["cpus"]["socket"]
    out = []
    for d in hot.tolist():
        m = per[d]
        addr = _line_address(d, meta)
        for c in np.flatnonzero(m.any(axis=1)).tolist():
            out.append({"line": addr, "cpu": c, "socket": int(sockets[c]),
                        **{k: int(v) for k, v in zip(RX_NAMES, m[c].tolist())}})
    return out


class EngineError(RuntimeError):
    pass


# results columns <- OUT record fields
OUT_COLUMNS = {"op": "op", "t": "t", "sim_cpu": "cpu", "start_ns": "start", "end_ns": "end", "lock_wait_ns": "wait",
               "cache_ns": "cache", "line_transfers": "transfers", "outcome": "outcome", "misses": "misses",
               "fallback": "fallback", "attempts": "attempts", "service_ns": "svc", "resource_ns": "res",
               "resource_wait_ns": "rwait", "sleep_ns": "sleep", "anon_prepare": "anon_prep"}
_OUTCOME_NAMES = None
LAST_TIMINGS: dict = {}  # the last simulate()'s load and simulation-loop seconds (benchmarks read it)


def results_frame(raw: dict, state, meta, mm: str):
    """A chunk of raw results as rows of the results schema."""
    import polars as pl

    from . import RESULTS_SCHEMA

    global _OUTCOME_NAMES
    if _OUTCOME_NAMES is None:
        _OUTCOME_NAMES = pl.Series(OUTCOMES, dtype=pl.Utf8)
    j = raw["op"]
    flags, arg = state["op_flags"][j], state["op_arg"][j].astype(np.int64)
    prog = (flags & F_PROG).astype(np.int64) - 1
    fault = (prog == 0) | (prog == 1)
    op_id = meta["op_base"] + j if meta["op_base"] is not None else meta["op_ids"][j]
    names = pl.Series(["fault"] + list(meta["w_kind"]), dtype=pl.Utf8)
    has_vma = fault & (arg >= 0)
    uniq = meta["uniq"]
    vma = uniq[np.where(has_vma, arg, 0)] if len(uniq) else np.zeros(len(j), np.int64)
    df = pl.DataFrame({
        "op_id": op_id.astype(np.int64), "tid": meta["tids"][raw["t"]].astype(np.int32),
        "kind": names.gather(np.where(fault, 0, arg + 1)), "vma_id": vma, "_has_vma": has_vma,
        "sim_cpu": raw["sim_cpu"].astype(np.int32), "start_ns": raw["start_ns"], "end_ns": raw["end_ns"],
        "lock_wait_ns": raw["lock_wait_ns"], "cache_ns": raw["cache_ns"], "line_transfers": raw["line_transfers"],
        "outcome": _OUTCOME_NAMES.gather(np.maximum(raw["outcome"], 0)), "_has_outcome": raw["outcome"] >= 0,
        "misses": raw["misses"].astype(np.int32), "fallback": raw["fallback"].astype(bool),
        "attempts": raw["attempts"].astype(np.int32), "service_ns": raw["service_ns"],
        "resource_ns": raw["resource_ns"], "resource_wait_ns": raw["resource_wait_ns"], "sleep_ns": raw["sleep_ns"],
        "anon_prepare": raw["anon_prepare"].astype(bool),
    }).with_columns(pl.lit(mm, pl.Utf8).alias("mm"),
                    pl.when(pl.col("_has_vma")).then(pl.col("vma_id")).alias("vma_id"),
                    pl.when(pl.col("_has_outcome")).then(pl.col("outcome")).alias("outcome"))
    return df.cast(RESULTS_SCHEMA).select(list(RESULTS_SCHEMA))


# waits.py's codes as the waits table names them (engine WAITS_SCHEMA)
_HOWS = ("sleep", "spin")
_CLASSES = ("mmap_lock", "vma_lock")  # an rwsem's lock_class: lock 0, lock k > 0 (lock_stats' names)


def waits_frame(raw: np.ndarray, state, meta, mm: str):
    """A chunk of WAIT records as rows of the waits schema: the op, its thread and CPU,
    the lock as lock_stats names it (lock_class, lock), mode, asleep or spinning, when,
    and which results column the wait is part of."""
    import polars as pl

    from . import WAITS_SCHEMA
    from .waits import W_PTL, W_REFCNT, W_RES, W_RWSEM, W_WAIT_LOCK

    j = raw["op"]
    op_id = meta["op_base"] + j if meta["op_base"] is not None else meta["op_ids"][j]
    what, k = raw["what"], raw["k"]
    lk = (what == W_RWSEM) | (what == W_WAIT_LOCK)
    # the VMA object of a per-VMA rwsem (lock k: object k - 1) or a vm_refcnt (object k)
    obj = np.where(what == W_REFCNT, k, np.where(lk & (k > 0), k - 1, -1))
    uniq = meta["uniq"]
    vma = uniq[state["ob"]["vid"][np.maximum(obj, 0)]] if len(uniq) else np.zeros(len(j), np.int64)
    plan = meta.get("plan")
    res_names = plan.resource_names if plan is not None else [("", "")]
    rc = pl.Series([c for c, _ in res_names], dtype=pl.Utf8).gather(np.where(what == W_RES, k, 0))
    rk = pl.Series([n for _, n in res_names], dtype=pl.Utf8).gather(np.where(what == W_RES, k, 0))
    if plan is not None and (what == W_PTL).any():  # a PTE page's lock: its class, the region as lock_stats names it
        pk = pl.Series(ptl_names(state, meta), dtype=pl.Utf8).gather(np.where(what == W_PTL, k, 0))
        rc = pl.Series(np.where(what == W_PTL, plan.ptl_class, rc.to_numpy()), dtype=pl.Utf8)
        rk = pl.Series(np.where(what == W_PTL, pk.to_numpy(), rk.to_numpy()), dtype=pl.Utf8)
        what = np.where(what == W_PTL, W_RES, what)  # named like the other fault-path spinlocks from here on
    df = pl.DataFrame({
        "op_id": op_id.astype(np.int64), "tid": meta["tids"][raw["t"]].astype(np.int32),
        "sim_cpu": raw["cpu"].astype(np.int32), "_what": what, "_k": k, "_vma": vma, "_rc": rc, "_rk": rk,
        "mode": pl.Series(["read", "write", None], dtype=pl.Utf8).gather(np.where(raw["mode"] < 0, 2, raw["mode"])),
        "how": pl.Series(_HOWS, dtype=pl.Utf8).gather(raw["how"]),
        "start_ns": raw["start"], "end_ns": raw["end"], "wait_ns": raw["end"] - raw["start"],
    })
    w, kk = pl.col("_what"), pl.col("_k")
    vkey = pl.lit("vma:") + pl.col("_vma").cast(pl.Utf8)
    df = df.with_columns(
        pl.lit(mm, pl.Utf8).alias("mm"),
        pl.when(w == W_RES).then(pl.col("_rc")).when(w == W_REFCNT).then(pl.lit("vm_refcnt"))
        .otherwise(pl.when(kk == 0).then(pl.lit(_CLASSES[0])).otherwise(pl.lit(_CLASSES[1]))
                   + pl.when(w == W_WAIT_LOCK).then(pl.lit(".wait_lock")).otherwise(pl.lit(""))).alias("lock_class"),
        pl.when(w == W_RES).then(pl.col("_rk")).when((w != W_REFCNT) & (kk == 0)).then(pl.lit("mm")).otherwise(vkey).alias("lock"),
        pl.when(w == W_RES).then(pl.lit("resource_wait_ns")).otherwise(pl.lit("lock_wait_ns")).alias("counted_in"))
    return df.cast(WAITS_SCHEMA).select(list(WAITS_SCHEMA))


def simulate(model, machine, ncpus: int, ops, placement: str = "spread", open_loop: bool = False,
             fault_service_ns=None, chunk: int = RESULT_CHUNK, sink=None, progress=None, mm=None, seed: int = 0,
             release: str | None = None, wait_sink=None):
    """Replay one mm.  Each chunk of results goes to ``sink`` as it is produced: a dict
    of numpy columns (op = the op's index in ``ops``), or with ``mm`` given, a frame in
    the results schema; likewise each chunk of waits to ``wait_sink`` (the WAIT records,
    or a frame in the waits schema), if given.  Returns (lock_stats, line_stats,
    line_cpu, counters)."""
    import time

    t0 = time.perf_counter()
    state, meta = load(model, machine, ncpus, ops, placement, open_loop, fault_service_ns, chunk, seed, release)
    LAST_TIMINGS["load_s"] = time.perf_counter() - t0
    LAST_TIMINGS["run_s"] = 0.0
    start(state.S)
    g = state.arrays["g"]
    done_n = nchunks = 0
    while True:
        t0 = time.perf_counter()
        ended = run_chunk(state.S)
        LAST_TIMINGS["run_s"] += time.perf_counter() - t0
        k = int(g[0]["nout"])
        if k:
            o = state["out"][:k]
            raw = {c: o[f].copy() for c, f in OUT_COLUMNS.items()}
            sink(raw if mm is None else results_frame(raw, state, meta, mm))
            done_n += k
            g["nout"][0] = 0
            nchunks += 1
            if nchunks % 16 == 0:  # what the chunks' frames and tables freed, back to the OS
                trim_heap()
            if progress:
                progress(done_n)
        k = int(g[0]["nwait"])
        if k:
            if wait_sink is not None:
                w = state["wt"][:k].copy()
                wait_sink(w if mm is None else waits_frame(w, state, meta, mm))
            g["nwait"][0] = 0
        if ended:
            break
    err = int(g[0]["err"])
    if err == ERR_DEADLOCK:
        stuck = [int(meta["tids"][t]) for t in np.flatnonzero(state["th"]["done"] == 0)]
        raise EngineError(f"simulation deadlocked: threads {stuck} never finished")
    if err:
        raise EngineError(f"engine invariant broken (code {err})")
    gg = state.g
    counters = {"writer_wakeups": int(gg["writer_wakeups"]), "writer_drains": int(gg["writer_drains"]),
                "cas_retries": int(gg["cas_retries"])}
    # The statistics read what is per lock, line, VMA and CPU; the per-op arrays (~30 bytes
    # an op: most of a big replay's memory) go before they are built - a 50 M-op replay
    # peaked there, the statistics' frames beside the whole state (bench/replay_rss.py)
    state.release(PER_OP_ARRAYS)
    meta["op_ids"] = None
    trim_heap()
    return lock_stats(state, model, meta), line_stats(state, model, meta), line_cpu_stats(state, meta), counters


# the state's per-op arrays and result buffers (state.ARRAYS, RECORDS), which nothing reads
# once the last chunk is out
PER_OP_ARRAYS = tuple(k for k in st.ARRAYS if k.startswith("op_")) + ("th_order", "us_ops", "out", "wt")
