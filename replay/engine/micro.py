"""The micro-ops' handlers, one per row of isa.MICRO_OPS.

Each takes the state, the thread and the instruction's three integer arguments (isa.encode)
and returns (when the thread continues - now for an op that takes no time, < 0 if it
blocked; whether the interpreter runs the same instruction again: multi-step
operations such as a cmpxchg loop come back after each access).  The thread's ``pc``
already points past the instruction; a branch sets it.
"""

from __future__ import annotations

from numba import njit

from ..jit import internal

from .coherence import prefetchw, read, serialize, store
from .isa import OUTCOMES, WORK_KINDS
from .faultpath import handle_mm_fault
from .retry import anon_vma_check, anon_vma_prepare, check_anon, check_anon_vma, fault_retry, retry_wait_step
from .rwsem import down_read, down_read_trylock, down_write, downgrade_write, up_read, up_write
from .sched import cond_resched
from .state import (cfg, glob, pend_obj, thread, vmaid, vobj, w_advice, w_hold, w_hold_read, w_ids, w_ids_p,
                    w_addr, w_len, w_resched)
from .vma import current, field_line, vma_commit, vma_refcount_get, vma_refcount_put, vma_walk

OUTCOME_MISS = OUTCOMES.index("miss")
WORK_ZAP = WORK_KINDS.index("zap")
WORK_WRITER = WORK_KINDS.index("writer")
PMD_SHIFT = 21  # x86-64, 4-level or 5-level paging: a PMD entry maps 2 MiB
DEFAULT_WRITER_NS = 2000.0  # est.: a writer's work when the trace gives no hold time


@internal(inline=True)
def _lock_index(S, t, which):
    """Lock 0 is mmap_lock; the VMA's rwsem is lock object + 1."""
    return 0 if which == 0 else current(S, t) + 1


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_read(S, t, obj, off, _):
    return read(S, t, field_line(S, t, obj, off)), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_prefetchw(S, t, obj, off, _):
    """prefetchw(): the line's request is sent (coherence.prefetchw: at once, or to wait at
    a busy line) while the thread goes on; it spends an instruction, an L1 hit's time."""
    th = thread(S, t)
    if prefetchw(S, t, field_line(S, t, obj, off)):
        th.transfers += 1
    k = cfg(S, 0)
    th.cache += k.l1_hit
    return glob(S, 0).now + k.l1_hit, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_store(S, t, obj, off, _):
    return store(S, t, field_line(S, t, obj, off)), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_work(S, t, what, _a, _b):
    """The op's recorded hold; where the call walks its range's page tables
    (load._resched_points: one cond_resched() per PMD), in as many equal parts (est.: no
    kernel figure splits the hold), each followed by cond_resched() (sched.cond_resched()),
    where the writer may lose its CPU, its locks held, and resume later (thread.wk_i: the
    part it is at, even, or the cond_resched() after it, odd)."""
    now = glob(S, 0).now
    th = thread(S, t)
    w = th.w
    pts = w_resched(S)[w]
    if what == WORK_ZAP:  # after mmap_write_downgrade(): the trace's read-locked hold
        h = float(w_hold_read(S)[w])
        pts = -pts if pts < 0 else 0
    elif what == WORK_WRITER and th.wk_n >= 0:  # a step of the VMA walk (h_vma_start_write_next())
        h = th.wk_h
        pts = th.wk_n
    else:
        h = float(w_hold(S)[w])  # a writer, or a read-mode madvise: the op's hold_ns
        h = h if h else DEFAULT_WRITER_NS
        pts = pts if pts > 0 and what == WORK_WRITER else 0
    if pts == 0:
        return now + h, False
    i = th.wk_i
    if i >= 2 * pts:  # resumed after yielding at the last cond_resched()
        th.wk_i = 0
        return now, False
    th.wk_i = i + 1
    if i % 2 == 0:  # the work up to the next cond_resched()
        return now + h / pts, True
    if cond_resched(S, t):
        return -1.0, True
    if i + 1 >= 2 * pts:
        th.wk_i = 0
        return now, False
    return now, True


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_handle_mm_fault(S, t, _a, _b, _c):
    return handle_mm_fault(S, t)


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_seq(S, t, locked, _a, _b):
    """vma_start_read(): READ_ONCE(vma->vm_lock_seq), then mm->mm_lock_seq; equal: the
    VMA is write-locked -> goto locked."""
    th = thread(S, t)
    o = current(S, t)
    k = cfg(S, 0)
    if not th.seq_has:
        end = read(S, t, field_line(S, t, 1, k.off_vm_lock_seq))
        if end < 0:  # waits for the line (coherence.wait_line): this step runs again
            return end, True
        th.seq_has = True
        return end, True
    end = read(S, t, k.mm_lock_seq)
    if end < 0:
        return end, True
    th.seq_has = False
    if vobj(S, o).vm_lock_seq == glob(S, 0).mm_lock_seq:
        th.pc = locked
    return end, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_rwsem_trylock_read(S, t, which, failed, _):
    return down_read_trylock(S, t, _lock_index(S, t, which), failed)


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_rwsem_down_read(S, t, which, _a, _b):
    return down_read(S, t, _lock_index(S, t, which))


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_rwsem_up_read(S, t, which, _a, _b):
    return up_read(S, t, _lock_index(S, t, which)), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_rwsem_down_write(S, t, which, _a, _b):
    return down_write(S, t, _lock_index(S, t, which))


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_rwsem_up_write(S, t, which, _a, _b):
    return up_write(S, t, _lock_index(S, t, which))


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_rwsem_downgrade_write(S, t, which, no_downgrade, _):
    """mmap_write_downgrade() if the writer did (the trace shows its read hold), else goto."""
    if w_hold_read(S)[thread(S, t).w] <= 0:
        thread(S, t).pc = no_downgrade
        return glob(S, 0).now, False
    return downgrade_write(S, t, _lock_index(S, t, which))


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_ref_get(S, t, failed, detached, _):
    return vma_refcount_get(S, t, failed, detached)


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_ref_put(S, t, _a, _b, _c):
    return vma_refcount_put(S, t), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_mm(S, t, _reused, off, _):
    return read(S, t, field_line(S, t, 1, off)), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_walk(S, t, none, _a, _b):
    """mas_walk(): the maple tree's line; the thread keeps the slot of the object found."""
    end = read(S, t, cfg(S, 0).mm_mt)
    if end < 0:
        return end, True
    th = thread(S, t)
    o = vma_walk(S, th.vma, th.addr)
    if o < 0:
        th.pc = none
    else:
        th.slot = vobj(S, o).slot
        th.found = o
    return end, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_range(S, t, outside, _a, _b):
    """lock_vma_under_rcu()'s check on the VMA it locked - ``if (unlikely(vma->vm_mm != mm
    || address < vma->vm_start || address >= vma->vm_end)) goto inval_end_read;``
    (mm/mmap_lock.c, v6.15; mm/memory.c v6.4-v6.14: ``/* Check since vm_start/vm_end
    might change before we lock the VMA */``) - by address on whatever object is in the
    slot now: a reused object (SLAB_TYPESAFE_BY_RCU) that covers the address passes, the
    VMA the walk found fails if a split or a shrink has moved the address out of it.
    vm_start/vm_end are the writers' (vma.vma_commit()); an op without an address passes."""
    th = thread(S, t)
    end = read(S, t, field_line(S, t, 1, cfg(S, 0).off_vm_start))
    if end < 0:
        return end, True
    ob = vobj(S, current(S, t))
    if th.addr >= 0 and (th.addr < ob.vm_start or th.addr >= ob.vm_end):
        th.pc = outside
    return end, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_mm_users(S, t, single, _a, _b):
    """``atomic_read(&mm->mm_users) == 1`` (the READ of mm_users before it pays the load):
    one user - the trace's only thread of this mm - goes to ``lock_mmap``.  mm_users
    counts the mm's threads as the trace has them, all of them for the whole replay (a
    thread that exits before another starts still counts; a transient mmget() - a
    /proc reader - is not seen)."""
    if cfg(S, 0).nthreads == 1:
        thread(S, t).pc = single
    return glob(S, 0).now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_detached(S, t, detached, _a, _b):
    end = read(S, t, field_line(S, t, 1, cfg(S, 0).off_vm_start))
    if end < 0:
        return end, True
    if not vobj(S, current(S, t)).attached:
        thread(S, t).pc = detached
    return end, False


@internal(inline=True)
def _overlap(S, o, lo, hi):
    """Bytes of VMA object o inside [lo, hi) (a VMA whose range is not known yet covers all)."""
    ob = vobj(S, o)
    return max(0, min(hi, ob.vm_end) - max(lo, ob.vm_start))


@internal
def h_vma_start_write_next(S, t, walked, _a, _b):
    """The call's walk reaches its next VMA (thread.wv: the step): vma_start_write() on it
    (the pending list vma.vma_start_write_step() works through) and its share of the WORK
    that follows (thread.wk_h, wk_n); none left: goto ``walked``.

    mm/mprotect.c do_mprotect_pkey() (6.18): ``for_each_vma_range(vmi, vma, end) { ...
    error = mprotect_fixup(&vmi, &tlb, vma, &prev, nstart, tmp, newflags); ... }`` -
    mprotect_fixup() write-locks the VMA through vma_modify_flags() (mm/vma.c
    vma_merge_existing_range(): ``vma_start_write(middle)``, then next, then prev;
    __split_vma(): ``vma_start_write(vma); vma_start_write(new);``) and again directly
    (``vma_start_write(vma);``), then runs change_protection() on it alone; munmap's
    vms_gather_munmap_vmas() write-locks each VMA as for_each_vma_range() gathers it.  So
    VMA i is write-locked only from when the walk reaches it.  The steps are the call's
    VMAs that overlap its range [address, address + length), in address order; a VMA of
    the call outside the range - the neighbour a merge takes - is locked with the first
    step if below the range (prev: merged at the first mprotect_fixup()), with the last if
    above (next).  Each step's share of the recorded hold is its bytes in the range over
    all the steps' (est.: change_protection()'s work goes by pages; no kernel figure splits
    the rest - the split, the merge, the TLB flush), and its cond_resched() points the
    PMDs its part of the range spans (load._resched_points).  With no VMA in the range
    (mmap, an unknown range): one step, every VMA of the call and the whole hold, as before."""
    g = glob(S, 0)
    th = thread(S, t)
    w = th.w
    lo = w_addr(S)[w]
    hi = lo + w_len(S)[w] if lo >= 0 and w_len(S)[w] > 0 else lo
    q0, q1 = w_ids_p(S)[w], w_ids_p(S)[w + 1]
    m = 0
    total = 0
    for q in range(q0, q1):
        o = vmaid(S, w_ids(S)[q]).obj
        if o >= 0 and vobj(S, o).attached and hi > lo:
            ov = _overlap(S, o, lo, hi)
            if ov > 0:
                m += 1
                total += ov
    i = th.wv
    if i >= max(m, 1):
        th.wv = 0
        th.pc = walked
        return g.now, False
    th.wv = i + 1
    h = float(w_hold(S)[w])
    h = h if h else DEFAULT_WRITER_NS
    pts = w_resched(S)[w]
    n = 0
    if m == 0:
        for q in range(q0, q1):
            o = vmaid(S, w_ids(S)[q]).obj
            if o >= 0 and vobj(S, o).attached:
                pend_obj(S)[n] = o
                n += 1
        th.wk_h = h
        th.wk_n = pts if pts > 0 else 0
    else:
        for q in range(q0, q1):
            o = vmaid(S, w_ids(S)[q]).obj
            if o < 0 or not vobj(S, o).attached:
                continue
            ov = _overlap(S, o, lo, hi)
            if ov == 0:  # a merge's neighbour: with the first step below the range, the last above
                if (i == 0 and vobj(S, o).vm_end <= lo) or (i == m - 1 and vobj(S, o).vm_start >= hi):
                    pend_obj(S)[n] = o
                    n += 1
                continue
            rank = 0  # its place in address order among the steps (ties: the call's order)
            for q2 in range(q0, q1):
                o2 = vmaid(S, w_ids(S)[q2]).obj
                if o2 >= 0 and vobj(S, o2).attached and _overlap(S, o2, lo, hi) > 0 and (
                        vobj(S, o2).vm_start < vobj(S, o).vm_start
                        or (vobj(S, o2).vm_start == vobj(S, o).vm_start and q2 < q)):
                    rank += 1
            if rank == i:
                pend_obj(S)[n] = o
                n += 1
                th.wk_h = h * ov / total
                a = max(lo, vobj(S, o).vm_start)
                b = min(hi, vobj(S, o).vm_end)
                th.wk_n = ((b - 1) >> PMD_SHIFT) - (a >> PMD_SHIFT) + 1 if pts > 0 else 0
    g.pend_t = t
    g.pend_n = n
    g.pend_i = 0
    g.pend_step = 0
    return g.now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_vma_commit(S, t, _a, _b, _c):
    return vma_commit(S, t)


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_mm_seq_write(S, t, _a, _b, _c):
    glob(S, 0).mm_lock_seq += 1
    return store(S, t, cfg(S, 0).mm_lock_seq), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_outcome(S, t, which, _a, _b):
    """count_vm_vma_lock_event(): VMA_LOCK_MISS once per re-walk in lock_vma_under_rcu(),
    kept beside the fault's one ABORT (lock_vma_under_rcu() failed), SUCCESS or RETRY
    (do_user_addr_fault(), after handle_mm_fault()).  A fault that never tries the VMA
    lock - kernel mode (!FAULT_FLAG_USER: straight to lock_mmap), or a kernel without
    CONFIG_PER_VMA_LOCK - counts none."""
    if which == OUTCOME_MISS:
        thread(S, t).misses += 1
    else:
        thread(S, t).outcome = which
    return glob(S, 0).now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_fallback(S, t, _a, _b, _c):
    thread(S, t).fallback = True
    return glob(S, 0).now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_attempt(S, t, _a, _b, _c):
    thread(S, t).attempts += 1
    return glob(S, 0).now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_goto(S, t, target, _a, _b):
    thread(S, t).pc = target
    return glob(S, 0).now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_iret(S, t, _a, _b, _c):
    """The fault's IRET back to where it was raised (coherence.serialize()): t goes on when
    its prefetchw's fill has landed and its queued stores have committed; < 0: it stalls
    on its CPU until then, and this runs again."""
    return serialize(S, t), False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_end(S, t, _a, _b, _c):
    thread(S, t).finished = True
    return glob(S, 0).now, False



# madvise behaviours get_lock_mode() gives MADVISE_VMA_READ_LOCK (mm/madvise.c, v6.17;
# include/uapi/asm-generic/mman-common.h): MADV_DONTNEED 4, MADV_FREE 8, MADV_DONTNEED_LOCKED 24
MADV_DONTNEED, MADV_FREE, MADV_DONTNEED_LOCKED = 4, 8, 24


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_madv_vma_lock(S, t, mmap_lock, _a, _b):
    """get_lock_mode(): not MADVISE_VMA_READ_LOCK -> goto (the mmap_read_lock path)."""
    a = w_advice(S)[thread(S, t).w]
    if a != MADV_DONTNEED and a != MADV_FREE and a != MADV_DONTNEED_LOCKED:
        thread(S, t).pc = mmap_lock
    return glob(S, 0).now, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_span(S, t, spans, _a, _b):
    """try_vma_read_lock(): ``range.end > vma->vm_end`` (vm_end is in the line the VMA lock's
    checks already read).  A successful madvise's range has no gap (madvise_walk_vmas()
    returns -ENOMEM on one), so it runs past the VMA iff the op builder found it over more
    than one VMA."""
    w = thread(S, t).w
    end = read(S, t, field_line(S, t, 1, cfg(S, 0).off_vm_start))
    if end < 0:
        return end, True
    if w_ids_p(S)[w + 1] - w_ids_p(S)[w] > 1:
        thread(S, t).pc = spans
    return end, False


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_fault_retry(S, t, which, retry, _):
    return fault_retry(S, t, which, retry)


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_retry_wait(S, t, _a, _b, _c):
    return retry_wait_step(S, t)


@njit(inline="always")  # spliced into dispatch (its one caller): no compile unit of its own
def h_check_anon(S, t, refused, _a, _b):
    return check_anon(S, t, refused)


@njit(cache=True)
def h_check_anon_vma(S, t, refused, _a, _b):
    return check_anon_vma(S, t, refused)


@njit(cache=True)
def h_anon_vma_check(S, t, which, prepared, retry):
    return anon_vma_check(S, t, which, prepared, retry)


@njit(cache=True)
def h_anon_vma_prepare(S, t, _a, _b, _c):
    return anon_vma_prepare(S, t)
