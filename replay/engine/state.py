"""The simulation's state, declared once: record types and the arrays of them.

Everything the engine knows sits in numpy structured arrays whose dtypes are declared
here - one record per thread, rw_semaphore, cache line, VMA object, VMA id, CPU, heap
entry and result row, plus one record of globals and one of configuration - and in a
few plain arrays (CSR lists, the hand-off matrix, sharer bitmasks).  The engine reads
them by name: ``th = thread(S, t); th.pc += 1``, ``lock(S, k).count & RWSEM_READ_FAILED_MASK``.

Why records behind accessors rather than arrays passed around: numba reference-counts
every array a compiled function receives (atomic increments and decrements on every
call, which were most of an earlier engine's run time), and a tuple of three dozen
arrays is three dozen counts per call.  So the state is one small record, ``S``, that
holds each array's address; ``thread(S, t)`` and its siblings are generated from the
declarations below and compile to an address load and an offset - what
``I[I[H_th_pc] + t]`` compiled to in the flat-array engine this one replaced, but
readable.  Under ``NUMBA_DISABLE_JIT=1`` the same functions index plain
``np.recarray``\\ s, so the same source runs as ordinary Python for debugging (slowly:
numpy record access costs about a microsecond).

The Python side keeps the arrays alive while compiled code runs (``State.arrays``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import config, from_dtype, types
from numba.core import cgutils
from numba.extending import intrinsic
from llvmlite import ir

i8, f8 = np.int64, np.float64


def _rec(*fields) -> np.dtype:
    return np.dtype([(f[0], f[1] if len(f) > 1 else i8) for f in fields], align=True)


# -- the records ---------------------------------------------------------------------------------
GLOBALS = _rec(
    ("now", f8),  # the simulated clock
    ("seq",),  # events scheduled so far: ties in time run in scheduling order
    ("mm_lock_seq",),  # mm->mm_lock_seq
    ("vma_writer_wait",),  # the thread sleeping on mm->vma_writer_wait (one rcuwait), or -1
    ("heap_n",), ("nout",), ("nobj",), ("nslots",), ("nfree",),
    ("pend_n",), ("pend_i",), ("pend_step",), ("pend_t",),  # vma_start_write()'s steps of the write holder
    ("pend_locked",),  # __vma_enter_locked() took the VMA (it was attached)
    ("commit_q",), ("commit_step",),  # vma_commit()'s place: the freed VMA it is at (-1: none), its step
    ("ws_n",),  # writers waiting for the faults before them to start
    ("writer_wakeups",), ("writer_drains",), ("cas_retries",),
    ("err",), ("nvorder",), ("chunk",),
    ("nwait",), ("wait_chunk",),  # waits.py: records in the buffer; run_chunk() stops at wait_chunk of them
    ("nptl",),  # faultpath.py: the PTE pages whose lock has been taken so far (PTL records in use)
    ("lq_free",),  # coherence.py: the first free request record (lq_next chains them), -1 none
)
CONFIG = _rec(
    ("prefetch_pairs",), ("prfchw",), ("vma_lock",), ("ref_limit",), ("wake_last",), ("writer_ref",), ("typesafe_by_rcu",), ("reader_owner_store",),
    ("open_loop",), ("vma_per_page",), ("vma_stride",), ("vl_per_page",), ("vl_stride",), ("vma_base",),
    ("vl_base",), ("off_vm_start",), ("off_vm_lock_seq",), ("off_vm_refcnt",), ("vl_off_count",),
    ("vl_off_owner",), ("vl_in_vma",), ("mm_mt",), ("mm_count",), ("mm_owner",), ("mm_vma_writer_wait",),
    ("mm_lock_seq",), ("nsock",), ("mask_words",), ("ncpu",), ("plen",), ("heap_cap",), ("nthreads",),
    ("sharer_stride",),
    ("l1_hit", f8), ("llc_hit", f8), ("owned_atomic", f8), ("socket_read_shared", f8),
    ("socket_read_exclusive", f8), ("cross_socket_handoff", f8), ("fault_service_ns", f8),
    # variation.py: how each fault's service time is drawn, and the start barrier
    ("service_mode",), ("service_sigma", f8), ("seed",), ("barrier_wake_ns", f8), ("nsamples",),
    ("recorded_service",),  # 1: a fault with a recorded time (op_service not NaN) takes it
    # faultpath.py: handle_mm_fault()'s shared resources (0 in fp_on: one service time, as before)
    ("fp_on",), ("fp_pcp_batch",), ("fp_scale_max",), ("fp_lru_batch",), ("fp_memcg_batch",),
    ("fp_memcg_levels",), ("fp_rss_batch",), ("fp_rss_per_task",), ("fp_pte_ptrs",), ("fp_nhold",),
    ("fp_r_zone",), ("fp_r_lru",), ("fp_r_rss",), ("fp_memcg_line",), ("fp_pgtables_line",),
    ("fp_clear_ns", f8), ("fp_copy_ns", f8), ("fp_lru_folio_ns", f8), ("fp_fold_ns", f8),
    ("fp_r_bw",), ("fp_bw_clear_ns", f8), ("fp_bw_copy_ns", f8),  # the nodes' DRAM: first RES, ns a clear/copy holds it
    # faultpath.py: the split PTE lock - on (1), the first PTE page's lock line, the PTL
    # records there are room for, ptl_hash's mask, the share of the fixed part held under it
    ("fp_ptl",), ("fp_ptl_line",), ("fp_ptl_cap",), ("fp_ptl_mask",), ("fp_ptl_share", f8),
    # rwsem.py: sem->wait_lock's line (mmap_lock's, and its offset in a VMA's rwsem), and
    # what one wake_up_q() step costs the waker (variation.BARRIER_WAKE_NS)
    ("mm_wait_lock",), ("vl_off_wait_lock",), ("wake_q_ns", f8),
    ("nretry",),  # retry.py: how many ops have a retry wait (retry_ops, retry_wait)
    ("lvur_anon_check",), ("off_anon_vma",),  # retry.check_anon: up to 6.5, and the field it reads
    # retry.py: where lock_vma_under_rcu() refuses an anonymous VMA without an anon_vma
    # (ANON_VMA_*: none, before or after vma_start_read()), and what vmf_anon_prepare() does
    # under the VMA lock without one (VMF_ANON_*: RETRY at once, or mmap_read_trylock())
    ("lvur_anon_vma",), ("vmf_anon",),
    ("wait_cap",),  # waits.py: the WAIT buffer's size (wait_chunk and room for one step's records)
    ("has_addr",),  # op_addr holds every op's address (a model whose faults take the VMA lock)
    # narrow.py: the ops kept aside from op_think and op_addr, and whether op_addr_wide holds the addresses
    ("nthink_x",), ("naddr_x",), ("addr_wide",), ("addr_seg",),
    ("has_dep",),  # op_dep holds every op's range dependency (load._range_deps)
    ("has_op_cpu",),  # op_cpu holds every op's CPU (as-recorded placement: loop._step migrates by it)
    # sched.py: EEVDF's request (sysctl_sched_base_slice) and the scheduler tick (TICK_NSEC), ns
    ("slice_ns", f8), ("tick_ns", f8),
)
THREAD = _rec(
    # scheduling
    ("cpu",), ("token",), ("in_rq",), ("rq_next",), ("blocked",), ("blocked_at", f8), ("done",), ("thinking",),
    ("think", f8),
    # the current op and its program
    ("i",), ("op",), ("prog",), ("pc",), ("w",), ("vma",), ("slot",), ("found",), ("rec",), ("finished",),
    ("addr",),  # the op's address (a fault's; a madvise's range start), -1 unknown
    ("start", f8), ("wait", f8), ("cache", f8), ("transfers",), ("outcome",), ("misses",), ("fallback",), ("attempts",),
    ("prev_unknown", f8),
    # registers of multi-step micro-ops
    ("try_state",), ("try_ver",), ("dr",), ("dw",), ("dw_deadline", f8), ("dw_since", f8),
    ("dw_owner",), ("dw_woken",),  # the handoff writer's spin: the owner it spins on; woken meanwhile (rwsem.py)
    ("ref_has",),
    ("ref_ver",), ("ref_obj",), ("seq_has",),
    # lockstat holdtime, and the VMA rwsem this writer owns
    ("held_mm", f8), ("held_v", f8), ("held_vlock",), ("wlock",),
    ("sb_until", f8),  # when its store buffer has drained (coherence.store_from)
    ("pf_line",), ("pf_until", f8),  # its last prefetchw's line and when that fill lands (coherence.py)
    # coherence.py: its prefetchw still queued at the line (pf_until unknown); its stores whose
    # request is still queued, and the line of the last; what its access waits for (LQ_*), on
    # which line, issued when
    ("pf_pending",), ("sb_pending",), ("sb_line",), ("lq_state",), ("lq_line",), ("lq_since", f8),
    # its rwsem_waiter (a thread waits on one lock at a time) and its OSQ node
    ("waiter_write",), ("waiter_handoff_set",), ("waiter_since", f8), ("waiter_next",), ("waiter_prev",),
    ("osq_next",), ("osq_prev",),
    ("wc_next",),  # in the list of faults waiting for their VMA's creator
    # faultpath.py: the step handle_mm_fault() is at, this fault's time in the shared
    # resources (of which waiting for another CPU's hold) and in its own work; faults
    # since its last PTE page, and since its last rss sync (4.15's per-task counters)
    ("fp_step",), ("fp_res", f8), ("fp_rwait", f8), ("fp_svc", f8), ("fp_pte_n",), ("fp_rss_n",),
    # the op's time off its CPU (asleep on a lock, then until it runs again), and whether
    # it is runnable in a run queue now, off its CPU since blocked_at (sched.py)
    ("sleep", f8), ("rq_woken",),
    ("wake_q_next",),  # in a waker's wake_q (rwsem.wake_q_add())
    ("waking",),  # woken by a wake_up_q() step still to come: runnable when its event fires (sched.wake_at)
    ("retried",),  # its fault returned VM_FAULT_RETRY once (retry.py): FAULT_FLAG_TRIED, no second wait
    ("wait_due",),  # that retry's page-cache wait is still to be slept (retry.retry_wait_step)
    ("wt_obj",),  # waits.py: the VMA object whose vm_refcnt it sleeps on (vma.py), -1: none
    # faultpath.py: the PTE lock (PTL record) its fault holds or spins on (-1: none), the
    # next spinner in that lock's queue, and since when it has spun
    ("ptl",), ("ptl_next",), ("ptl_since", f8),
    ("anon_prep",),  # it set its VMA's anon_vma (retry.anon_vma_prepare(): __anon_vma_prepare())
    # sched.py: its CPU time counted up to ran_at while it has its CPU; TIF_NEED_RESCHED; off its
    # CPU at a cond_resched() of an op in progress (its locks still held); micro.h_work: the part
    # of a WORK it is at
    ("ran_at", f8), ("resched",), ("preempted",), ("wk_i",),
    # sched.py: its sched_entity, integer ns - se->vruntime, se->deadline (its request's end),
    # se->vprot (RUN_TO_PARITY's protection), se->vlag (its lag, kept across a sleep); its
    # dequeue delayed (se->sched_delayed: DELAY_DEQUEUE) on CPU dl_cpu, next in that CPU's list
    ("vruntime",), ("deadline",), ("vprot",), ("vlag",), ("sched_delayed",), ("dl_cpu",), ("dl_next",),
    # micro.h_vma_start_write_next(): the step of the call's VMA walk it is at, and that
    # step's share of the hold and its cond_resched() points (wk_n -1: no walk, the whole WORK)
    ("wv",), ("wk_h", f8), ("wk_n",),
)
LOCK = _rec(
    ("count",), ("owner",),  # sem->count, sem->owner: 0 none, READER_OWNED, else thread + 1
    ("nonspinnable",),  # sem->owner's RWSEM_NONSPINNABLE bit
    ("count_line",), ("owner_line",),
    ("wait_head",), ("wait_tail",), ("osq_head",), ("osq_tail",),
    ("acquisitions",), ("contentions",), ("trylock_failures",),
    ("wait_total", f8), ("wait_max", f8), ("wait_min", f8), ("hold_total", f8), ("hold_max", f8), ("hold_min", f8),
    # sem->wait_lock: its line, and when its holder's unlock commits (a spinlock: a taker waits until then)
    ("wait_lock_line",), ("wait_lock_until", f8),
    ("wake_q_head",), ("wake_q_tail",),  # the waker's wake_q, filled by rwsem_mark_wake(), emptied by wake_up_q()
)
# coherence.py: the requests waiting for the line (a list of request records: q_head .. q_tail,
# q_n of them), its arbiter's event (arb_tok, arb_when: -1 none), the thread granted the line
# whose access has not run yet (-1 none), and the CPU the last request served was from
LINE = _rec(("owner",), ("nsharers",), ("version",), ("transfers",), ("invalidations",), ("busy_until", f8),
            ("q_head",), ("q_tail",), ("q_n",), ("arb_tok",), ("arb_when", f8), ("reserved",), ("last_cpu",))
# vm_start/vm_end: the range as the writers leave it (ops range_*); a VMA the mm had
# before the trace's first writer has [0, VM_UNKNOWN_END) until a writer sets its range
# anon_vma: whether vma->anon_vma is set (retry.py: lock_vma_under_rcu() up to 6.9, vmf_anon_prepare())
VMA_OBJ = _rec(("vid",), ("slot",), ("vm_lock_seq",), ("vm_refcnt",), ("attached",), ("vm_start",), ("vm_end",),
               ("anon_vma",))
VM_UNKNOWN_END = np.iinfo(np.int64).max
VMA_ID = _rec(("obj",), ("ever",), ("created",), ("successor",), ("wc_head",), ("wc_tail",), ("unstarted",))
# busy: cfs_rq->curr (-1: idle); its run queue (rq_head .. rq_tail); sched.py: its cfs_rq's
# zero_vruntime, sum_w_vruntime and sum_weight over the tree (kernel/sched/fair.c, integer ns;
# every weight 1), and its delayed entities (dl_head list: DELAY_DEQUEUE); llc: its last-level
# cache's domain (socket, or CCD/CCX where a socket has several L3s): the line's arbiter serves
# its own domain's requests first (coherence.arbitrate())
CPU = _rec(("busy",), ("rq_head",), ("rq_tail",), ("socket",), ("llc",),
           ("zero_vruntime",), ("sum_w_vruntime",), ("sum_weight",), ("dl_head",))
HEAP = _rec(("when", f8), ("seq",), ("t",), ("token",))
OUT = _rec(("op",), ("t",), ("cpu",), ("start", f8), ("end", f8), ("wait", f8), ("cache", f8), ("transfers",),
           ("outcome",), ("misses",), ("fallback",), ("attempts",), ("svc", f8), ("res", f8), ("rwait", f8),
           ("sleep", f8), ("anon_prep",))
# waits.py: one wait of an op - what it waited on (waits.W_*: an rwsem, its wait_lock, a VMA's
# vm_refcnt, a fault-path spinlock; k indexes it), the mode (waits.M_*), asleep or spinning (waits.H_*)
WAIT = _rec(("op",), ("t",), ("cpu",), ("what",), ("k",), ("mode",), ("how",), ("start", f8), ("end", f8))
# faultpath.py: a spinlock of the fault path (zone->lock, lruvec->lru_lock, the rss
# counter's lock) - its line, its data lines, when its last holder releases it, lockstat
RES = _rec(("line",), ("data0",), ("ndata",), ("free_at", f8), ("acquisitions",), ("contentions",),
           ("wait_total", f8), ("wait_max", f8), ("hold_total", f8), ("hold_max", f8))
# faultpath.py: one PTE page's split lock (ptlock_ptr()), made the first time a fault in its
# 2 MiB takes it - the region (address >> 21; < 0: a thread's own, for faults with no
# address), the thread holding it (-1 none), its queue of spinners (thread ids), when its
# last holder's release completed and when the holder took it, lockstat
PTL = _rec(("key",), ("holder",), ("head",), ("tail",), ("free_at", f8), ("got", f8), ("acquisitions",),
           ("contentions",), ("wait_total", f8), ("wait_max", f8), ("hold_total", f8), ("hold_max", f8))
# faultpath.py: per CPU - pages left on its pcp list, nr_pcp_alloc()'s alloc_factor, its
# memcg stock, folios in its LRU batch, its rss counter's local count, its NUMA node
FPCPU = _rec(("pcp",), ("alloc_factor",), ("stock",), ("lru_n",), ("rss_n",), ("node",))
INSN = _rec(("op",), ("a1",), ("a2",), ("a3",))

# accessor name -> (array name, record dtype)
RECORDS = {
    "glob": ("g", GLOBALS), "cfg": ("cfg", CONFIG), "thread": ("th", THREAD), "lock": ("lk", LOCK),
    "line": ("ln", LINE), "vobj": ("ob", VMA_OBJ), "vmaid": ("vid", VMA_ID), "cpu": ("cpus", CPU),
    "heap": ("hp", HEAP), "out": ("out", OUT), "wrec": ("wt", WAIT), "insn": ("prog", INSN), "res": ("res", RES), "fpcpu": ("fpcpu", FPCPU),
    "ptl": ("ptl", PTL),
}
# plain arrays: name -> element type
ARRAYS = {
    "sharers": i8,  # per line: sharers per socket, then the sharer bitmask (cfg.sharer_stride words a line)
    "handoff": f8,  # [ncpu * ncpu] one-way hand-off ns, owner CPU x requesting CPU
    "slot_obj": i8, "freelist": i8, "pend_obj": i8, "waiting_writers": i8, "vid_order": i8,
    # writers (CSR: w_X_p[w] .. w_X_p[w + 1] index w_X)
    "w_hold": i8, "w_hold_read": i8, "w_ids_p": i8, "w_ids": i8, "w_freed_p": i8, "w_freed": i8, "w_succ": i8,
    "w_created_p": i8, "w_created": i8, "w_gate_p": i8, "w_gate": i8,
    "w_parent": i8,  # per w_created entry: the VMA id whose anon_vma it takes (ops vmas_parent), -1 none
    "w_rng_p": i8, "w_rng_vid": i8, "w_rng_start": i8, "w_rng_end": i8,  # ops range_vmas/range_start/range_end
    "us_p": i8, "us_ops": np.int32,  # faults per VMA id in op order (CSR)
    "th_ops_p": i8, "th_order": np.int32,  # each thread's ops (CSR)
    # per op: bits 0-2 program + 1, 3 start known, 4 end known, 5 started (loop.F_*); its VMA id or writer index
    "op_flags": np.int16, "op_arg": np.int32, "op_start": f8,
    # per op, 4 bytes each (narrow.py: decoded by op_think_ns(), op_address()): its think
    # time (ops think_ns), those that do not fit in think_xj/think_xv; its address (ops
    # address) less its VMA's addr_base (the low 32 bits; the rest in op_addr_seg where
    # cfg.addr_seg), those that do not fit in addr_xj/addr_xv, or all in op_addr_wide
    # (cfg.addr_wide); [1] where no program reads one
    "op_think": np.int32, "think_xj": i8, "think_xv": f8,
    "op_addr": np.uint32, "op_addr_seg": np.uint8, "addr_base": i8, "addr_xj": i8, "addr_xv": i8, "op_addr_wide": i8,
    "op_dep": np.int32,  # per op: the writer whose range a fault waits for (load._range_deps), -1 none
    "op_cpu": np.int16,  # per op: the CPU it runs on (ops cpu), -1 its thread's current one; [1] unless as-recorded
    "w_done": i8,  # per writer: 1 once its commit (vma.vma_commit) has set its ranges
    "service_samples": f8,  # the trace's fallen-back faults' holds, sorted (variation.py)
    "op_service": f8,  # per op: its recorded handle_mm_fault() time (ops service_ns), NaN where none
    "op_fkind": np.int8,  # per op: its fault kind (faultpath.py KINDS; ops fault_kind)
    "op_retry": np.int8,  # per op: why its first handle_mm_fault() returns VM_FAULT_RETRY (retry.RETRY_*)
    "retry_ops": i8, "retry_wait": f8,  # the ops that wait in that call (sorted) and their waits, ns
    "fp_hold_b": f8, "fp_hold_ns": f8,  # zone->lock hold by refill size: pages, ns (interpolated)
    "fp_lines": i8,  # the fault path's locks' data lines (res.data0 .. res.data0 + res.ndata index it)
    "ptl_hash": i8,  # open addressing, address >> 21 -> its PTL record (-1: empty); cfg.fp_ptl_mask + 1 buckets
    # [(line * ncpu + cpu) * coherence.RX_KINDS + kind]: transfers of each line into each CPU, by
    # kind (coherence.RX_NAMES); zeroed pages are mapped lazily, so only lines that move cost memory
    "line_cpu": i8,
    # per writer (every non-fault op): a madvise's behaviour (ops advice, -1: none) and the VMA
    # id at its range's start (ops vma_id, -1: none) - the read-mode madvise program's
    "w_advice": i8, "w_vma": i8,
    # per writer: the cond_resched() points in its WORK - one per PMD its range spans (load._resched_points)
    "w_resched": i8,
    "w_addr": i8, "w_len": i8,  # per writer: its range (ops address, length; -1 / 0 unknown)
    # coherence.py: request records - the thread, what it asks for (coherence.RQ_*), the next
    # in its line's queue (or in the free list); three a thread (an access, a prefetch, a store)
    "lq_t": i8, "lq_kind": i8, "lq_next": i8,
}
NAMES = tuple(a for a, _ in RECORDS.values()) + tuple(ARRAYS)


def _layout_digest() -> str:
    """A digest of every record layout and of the engine's source.  numba's cache keys a
    compiled function on its own file and its argument types, not on a dtype or a
    constant it reads from another module: a field added to THREAD would leave cached
    code writing to the old offsets.  The digest is a field name of the state record,
    which every compiled function takes, so any change recompiles them all."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256(repr([(a, d.descr) for a, d in RECORDS.values()] + sorted(ARRAYS.items(), key=str)).encode())
    here = Path(__file__).parent
    for p in [*sorted(here.glob("*.py")), here.parent / "models" / "kernels.py"]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


LAYOUT = _layout_digest()
SIM = np.dtype([(k, np.uint64) for k in NAMES] + [(f"layout_{LAYOUT}", np.uint64)])


def _field_ptr(builder, s, S, name):
    """An array's address, read from the state record.  The record is written once, by
    State(), before any compiled code runs, so the load is marked ``invariant.load``:
    without it LLVM must assume any store through a record pointer (numba emits no
    type-based alias information) may have changed it, and reloads it at every
    accessor call after a store."""
    off = S.offset(name)
    p = builder.gep(s, [cgutils.int32_t(0), cgutils.int32_t(off)], inbounds=True)
    ld = builder.load(builder.bitcast(p, ir.IntType(64).as_pointer()))
    ld.set_metadata("invariant.load", builder.module.add_metadata([]))
    return ld


def _record_accessor(arr: str, dtype: np.dtype):
    if config.DISABLE_JIT:
        return lambda S, i: getattr(S, arr)[i]
    rec = from_dtype(dtype)

    @intrinsic
    def accessor(typingctx, S, i):
        def codegen(context, builder, sig, args):
            base = builder.inttoptr(_field_ptr(builder, args[0], S, arr), context.get_data_type(rec).as_pointer())
            item = builder.gep(base, [args[1]], inbounds=True)
            return builder.bitcast(item, context.get_value_type(rec))

        return rec(S, i), codegen

    return accessor


def _array_accessor(name: str, dt):
    if config.DISABLE_JIT:
        return lambda S: getattr(S, name)
    nt = from_dtype(np.dtype(dt))

    @intrinsic
    def accessor(typingctx, S):
        def codegen(context, builder, sig, args):
            return builder.inttoptr(_field_ptr(builder, args[0], S, name), context.get_data_type(nt).as_pointer())

        return types.CPointer(nt)(S), codegen

    return accessor


if config.DISABLE_JIT:
    def open_state(Sarr):
        return Sarr
else:
    @intrinsic
    def open_state(typingctx, arr):
        """The state record of a one-element SIM array (as a pointer: no reference count)."""
        rec = arr.dtype

        def codegen(context, builder, sig, args):
            data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
            return builder.bitcast(data, context.get_value_type(rec))

        return rec(arr), codegen


# the accessors, one per record and per plain array, generated from RECORDS and ARRAYS (the
# one place a name's type is written): ``thread(S, t)``, ``sharers(S)[i]``
for _name, (_arr, _dt) in RECORDS.items():
    globals()[_name] = _record_accessor(_arr, _dt)
for _name, _dt in ARRAYS.items():
    globals()[_name] = _array_accessor(_name, _dt)
del _name, _arr, _dt


class State:
    """The arrays of one mm's simulation, and the record the compiled code gets."""

    def __init__(self, arrays: dict):
        missing = set(NAMES) - set(arrays)
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}")
        want = {a: d for a, d in RECORDS.values()} | {k: np.dtype(v) for k, v in ARRAYS.items()}
        self.arrays = {}
        for k in NAMES:
            a = np.ascontiguousarray(arrays[k], dtype=want[k])
            if a.size == 0:  # an address must point somewhere
                a = np.zeros(1, want[k])
            self.arrays[k] = a
        if config.DISABLE_JIT:
            self.S = SimpleNamespace(**{k: (a.view(np.recarray) if a.dtype.names else a)
                                        for k, a in self.arrays.items()})
        else:
            self.S = np.zeros(1, SIM)
            for k, a in self.arrays.items():
                self.S[k] = a.ctypes.data

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def release(self, names) -> None:
        """Free arrays the simulation is done with (each left as one element, so the
        record's pointer still points at memory): after the last chunk, what is left to
        read is per lock, line, VMA and CPU."""
        for k in names:
            a = self.arrays[k]
            if a.size > 1:
                self.arrays[k] = np.zeros(1, a.dtype)
                if isinstance(self.S, SimpleNamespace):
                    setattr(self.S, k, self.arrays[k].view(np.recarray) if a.dtype.names else self.arrays[k])
                else:
                    self.S[k] = self.arrays[k].ctypes.data

    @property
    def g(self):
        return self.arrays["g"][0]
