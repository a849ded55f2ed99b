"""handle_mm_fault() on the simulated machine: the fault's own work and the resources it
shares with every other faulting CPU.

docs/fault-path.md takes the anonymous write fault (do_anonymous_page(), mm/memory.c)
resource by resource, with the kernel code and the published figures; this is that
design running.  What a fault does here depends on its kind (ops ``fault_kind``,
replay/ops.py FAULT_KINDS) and on the kernel whose rules the run follows
(replay/models/kernels.py FAULT_PATH_KERNELS: batch sizes by release); the machine
gives the costs (the profile's ``[fault_path]`` table).  In kernel order, for an
anonymous first write:

1. **a PTE page** when the thread has walked into a PMD with no page table
   (``__pte_alloc()``: ``pte_alloc_one()`` - a page from the allocator, zeroed,
   charged with ``__GFP_ACCOUNT`` - then ``pmd_install()``: ``mm_inc_nr_ptes()``, an
   ``atomic_long_add()`` on ``mm->pgtables_bytes``, which shares the mmap_lock count's
   line in the mm_struct layouts here).  One per ``PTRS_PER_PTE`` = 512 faults of a
   thread: each thread is taken to fault its own run of consecutive pages (pft's
   slices).
2. **the page** from the CPU's pcp list (``rmqueue_pcplist()``); an empty list is
   refilled under the node's ``zone->lock`` (``rmqueue_bulk()``), ``pcp->batch``
   pages before 6.7, ``nr_pcp_alloc()``'s growing refills (63 << alloc_factor, the
   factor up to ``CONFIG_PCP_BATCH_SCALE_MAX``) after.  The hold per refill is the
   profile's table (Huang Ying's measurements by refill size), interpolated.
3. **the memcg charge** (``try_charge_memcg()``): the CPU's stock, refilled with
   ``MEMCG_CHARGE_BATCH`` pages by one ``page_counter_try_charge()`` walk - an atomic
   on each level's ``usage`` line and a store to its watermark line, up the hierarchy.
4. **clearing the page** (``clear_page()``, ``rep stosb`` over 4 KiB): the profile's
   per-core time; twice that to copy one (CoW, ``__wp_page_copy_user()``: est.).  The
   clear's DRAM traffic - ``CLEAR_DRAM_BYTES``, the 4 KiB read for ownership and
   written back - also passes through the node's memory channels, one FIFO queue per
   NUMA node at the profile's ``dram_gbps`` (a socket's, split over its nodes): the
   clear holds the channels for bytes / bandwidth from when the clears before it let
   go, and ends at the later of its per-core time and that; below saturation nothing
   changes, saturated a node clears one page per bytes / bandwidth.
5. **the rss counter** (``add_mm_counter()``, a percpu_counter since 6.2): the CPU's
   local count, folded into ``mm->rss_stat[]`` under its spinlock every
   ``max(32, 2 x online CPUs)`` increments (``percpu_counter_add_batch()``); before 6.2
   per-task counts synced with one atomic every ``TASK_RSS_EVENTS_THRESH`` faults.
6. **the LRU** (``folio_add_lru_vma()``): the CPU's folio batch, moved under the node's
   ``lruvec->lru_lock`` when full (``folio_batch_move_lru()``), the list head's line,
   ``lru_zone_size``'s and the previous head folio's struct page written under it.
   Steps 5 and 6 run under **the PTE page's split lock** (``pte_offset_map_lock()``:
   ``ptlock_ptr()``, a spinlock in the PTE page's struct ptdesc - struct page up to
   6.5 - on its own line), one per 2 MiB of the fault's address (``ptl_of()``), with
   ``PTL_FIXED_SHARE`` of the fixed part (est.: rmap, set_ptes()) held after them; a
   CoW takes it a first time for do_wp_page()'s check.
7. **the rest** - exception entry and exit, the page-table walk, rmap, ``set_pte_at()``,
   the user's own loop - as one per-fault time, ``[fault_path] fixed_ns``, the one
   fitted parameter (docs/validation.md), drawn per fault as the service time is
   (variation.py); the share held under the PTE lock is taken from it.

A spinlock here is a queued spinlock taken in arrival order (qspinlock's MCS queue:
kernel/locking/qspinlock.c): a CPU that finds it held spins until the holder releases
it, its lock word's line then coming over from the holder; with interrupts off
(``spin_lock_irqsave()``), nothing preempts the holder.  The engine processes arrivals
in time order, so taking the lock is one calculation: acquired at ``max(arrival,
release of the one before)`` plus the line's transfer, held for its hold time and its
data lines' transfers, released by a store.  The PTE lock, whose hold has other
locks' steps nested in it, is the queue itself: a CPU finding it held spins in its FIFO
until the holder's unlock hands it over (``ptl_lock()``, ``ptl_unlock()``).  Kinds without these steps skip them: the
zero page (a read of a never-touched anonymous page) maps a PTE and allocates nothing;
a CoW allocates and copies but needs no page table; a file-backed fault (a page-cache
hit, ``filemap_map_pages()``) maps existing pages.

The fault path runs when a fault's time comes from the machine profile (``replay run
--fault-service profile``, or a trace with no times of its own, as ``replay synth``'s
and the validation's).  A fault whose time comes from the trace (its own recorded
handle_mm_fault() time, or the trace's fallen-back holds resampled) takes that time
and none of the steps - it was measured with the recording machine's resources in it
- and so does one given as a number.
"""

from __future__ import annotations

from ..jit import internal

from .coherence import coh_write
from .sched import at
from .narrow import op_address
from .state import (cfg, fp_hold_b, fp_hold_ns, fp_lines, fpcpu, glob, op_arg, op_fkind, op_service, ptl, ptl_hash,
                    res, thread)
from .variation import fault_service
from .waits import H_SPIN, M_NONE, W_PTL, W_RES, record

# ops fault_kind codes: replay/ops.py's (FAULT_KINDS order), the op builder's own
from ..ops import FK_ANON as K_ANON, FK_COW as K_COW, FK_FILE as K_FILE, FK_ZERO as K_ZERO  # noqa: E402

# the steps, in kernel order (see the docstring); fp_step 0: not started
(S_WP_LOCK, S_WP_UNLOCK, S_PTE_ALLOC, S_PTE_CHARGE, S_PTE_CLEAR, S_PTE_INSTALL, S_ALLOC, S_CHARGE, S_CLEAR,
 S_PTL_LOCK, S_RSS, S_LRU, S_PTL_HOLD, S_PTL_UNLOCK, S_FIXED, S_DONE) = range(1, 17)
ERR_PTL_FULL = 6  # glob.err (after sched.py's 1-3 and waits.py's 4-5): more PTE pages than load counted


@internal(inline=True)
def _has_step(kind, s, ptl_on):
    """Which steps a fault kind takes (``ptl_on``: the PTE lock is modelled)."""
    if s == S_FIXED:
        return True
    if s == S_WP_LOCK or s == S_WP_UNLOCK:  # handle_pte_fault()'s spin_lock(vmf->ptl) before do_wp_page()
        return ptl_on and kind == K_COW
    if s == S_PTL_LOCK or s == S_PTL_HOLD or s == S_PTL_UNLOCK:  # every kind maps its PTE under the lock
        return ptl_on
    if s <= S_PTE_INSTALL:  # a missing PTE: anonymous, zero page, file
        return kind == K_ANON or kind == K_ZERO or kind == K_FILE
    if s == S_ALLOC or s == S_CHARGE or s == S_CLEAR or s == S_LRU:
        return kind == K_ANON or kind == K_COW
    if s == S_RSS:
        return kind == K_ANON or kind == K_COW or kind == K_FILE
    return False


@internal
def zone_hold(S, pages):
    """The zone->lock hold of one refill of ``pages`` pages: the profile's table,
    linear between its points and beyond its ends (the published holds grow
    linearly with the batch)."""
    n = cfg(S, 0).fp_nhold
    b, h = fp_hold_b(S), fp_hold_ns(S)
    if n == 1:
        return h[0] * pages / b[0]
    i = 1
    while i < n - 1 and b[i] < pages:
        i += 1
    return h[i - 1] + (h[i] - h[i - 1]) * (pages - b[i - 1]) / (b[i] - b[i - 1])



@internal(inline=True)
def _spun(S, t, lk, what, r, since, at):
    """A fault-path spinlock's contention: t spun from ``since`` until it took lock ``lk``
    (a RES or PTL record, r its index, ``what`` its waits-table class) at ``at``."""
    waited = at - since
    if waited > 0:
        lk.contentions += 1
        lk.wait_total += waited
        lk.wait_max = max(lk.wait_max, waited)
        thread(S, t).fp_rwait += waited
        record(S, t, what, r, M_NONE, H_SPIN, since, at)

@internal
def spin_lock_held(S, t, r, since, hold):
    """Thread t takes spinlock r at ``since``, holds it for ``hold`` ns plus its data
    lines' transfers, and releases it; returns when it releases.  FIFO: the lock is
    acquired when the holder before releases (qspinlock's queue), by an atomic on its
    line - which comes from the releasing CPU."""
    th = thread(S, t)
    c = th.cpu
    rr = res(S, r)
    at = max(since, rr.free_at)
    s, cost = coh_write(S, rr.line, c, at, True, True)  # atomic_try_cmpxchg_acquire(&lock->val, ...)
    got = s + cost
    end = got
    for d in range(rr.ndata):  # the data written under the lock, in order
        s, cost = coh_write(S, fp_lines(S)[rr.data0 + d], c, end, False, True)
        end = s + cost
    end += hold
    s, cost = coh_write(S, rr.line, c, end, False, True)  # smp_store_release(&lock->locked, 0)
    end = s + cost
    rr.free_at = end
    rr.acquisitions += 1
    _spun(S, t, rr, W_RES, r, since, at)
    held = end - got
    rr.hold_total += held
    rr.hold_max = max(rr.hold_max, held)
    th.fp_res += end - since
    return end


# A 64-bit odd multiplier (Fibonacci hashing: 2^64 / phi, made odd and below 2^63 so
# numba keeps it int64); ptl_hash's bucket is the product's low bits
_PTL_MIX = 0x61C8864680B583EB


@internal
def ptl_of(S, t, j):
    """The PTL record of fault op j's PTE page - pte_lockptr(mm, pmd) =
    ptlock_ptr(page_ptdesc(pmd_page(*pmd))): one per 2 MiB of address space - made the
    first time a fault there takes it.  A fault with no address takes its thread's own
    (key -(t + 1)): it shares a PTE page with no other thread."""
    k = cfg(S, 0)
    a = op_address(S, j, op_arg(S)[j])  # j is a fault: op_arg its VMA index
    key = a >> 21 if a >= 0 else -(t + 1)
    mask = k.fp_ptl_mask
    b = (key * _PTL_MIX) & mask
    while True:
        r = ptl_hash(S)[b]
        if r < 0:
            g = glob(S, 0)
            r = g.nptl
            if r >= k.fp_ptl_cap:
                g.err = ERR_PTL_FULL
                return 0
            g.nptl = r + 1
            ptl_hash(S)[b] = r
            ptl(S, r).key = key
            return r
        if ptl(S, r).key == key:
            return r
        b = (b + 1) & mask


@internal
def _ptl_take(S, t, r, since, when):
    """t takes PTE lock r at ``when`` (its release by the holder before, or ``since`` if
    it was free), having spun from ``since``: an atomic on the lock's line, which comes
    from the CPU that released it.  Returns when t has it."""
    th = thread(S, t)
    p = ptl(S, r)
    s, cost = coh_write(S, cfg(S, 0).fp_ptl_line + r, th.cpu, when, True, True)  # atomic_try_cmpxchg_acquire()
    got = s + cost
    p.holder = t
    p.got = got
    p.acquisitions += 1
    _spun(S, t, p, W_PTL, r, since, when)
    th.fp_res += got - since
    return got


@internal
def ptl_lock(S, t, r, now):
    """spin_lock(ptl) (pte_offset_map_lock()) of PTE lock r by t at ``now``: when t has
    it, or -1 when another thread holds it - t then spins in the lock's queue (FIFO, as
    qspinlock's MCS queue is; it keeps its CPU) until ptl_unlock() hands it over."""
    th = thread(S, t)
    p = ptl(S, r)
    th.ptl = r
    if p.holder < 0:
        return _ptl_take(S, t, r, now, max(now, p.free_at))  # free, or its release store still completing
    th.ptl_next = -1
    th.ptl_since = now
    if p.head < 0:
        p.head = t
    else:
        thread(S, p.tail).ptl_next = t
    p.tail = t
    return -1.0


@internal
def ptl_unlock(S, t, now):
    """spin_unlock(ptl) (pte_unmap_unlock()) by t at ``now``: a store to the lock's line;
    the first spinner in the queue then takes it.  Returns when t's store is done."""
    th = thread(S, t)
    r = th.ptl
    p = ptl(S, r)
    s, cost = coh_write(S, cfg(S, 0).fp_ptl_line + r, th.cpu, now, False, True)  # smp_store_release(&lock->locked, 0)
    end = s + cost
    held = end - p.got
    p.hold_total += held
    p.hold_max = max(p.hold_max, held)
    p.free_at = end
    p.holder = -1
    th.ptl = -1
    th.fp_res += end - now
    h = p.head
    if h >= 0:
        p.head = thread(S, h).ptl_next
        if p.head < 0:
            p.tail = -1
        at(S, _ptl_take(S, h, r, thread(S, h).ptl_since, end), h)
    return end


@internal
def _clear(S, t, now, d, occ):
    """clear_page() (or a CoW's copy) on t's CPU at ``now``: ``d`` ns of the core's own,
    and ``occ`` ns of its node's memory channels, queued FIFO behind the clears before
    it (the one-shot pattern of spin_lock_held(): arrivals come in time order).  Ends at
    the later of the two; the channels' lateness is resource wait."""
    th = thread(S, t)
    th.fp_svc += d
    end = now + d
    rr = res(S, cfg(S, 0).fp_r_bw + fpcpu(S, th.cpu).node)
    done = max(now, rr.free_at) + occ
    rr.free_at = done
    rr.acquisitions += 1
    rr.hold_total += occ
    rr.hold_max = max(rr.hold_max, occ)
    if done > end:  # the channels finish after the core would have
        late = done - end
        rr.contentions += 1
        rr.wait_total += late
        rr.wait_max = max(rr.wait_max, late)
        th.fp_rwait += late
        th.fp_res += late
        end = done
    return end


@internal
def _alloc(S, t, now):
    """One order-0 page from t's CPU's pcp list; an empty list is refilled under the
    node's zone->lock first (rmqueue_bulk())."""
    k = cfg(S, 0)
    p = fpcpu(S, thread(S, t).cpu)
    if p.pcp > 0:
        p.pcp -= 1
        return now
    n = k.fp_pcp_batch
    if k.fp_scale_max > 0:  # nr_pcp_alloc(): batch << alloc_factor, then the factor grows
        n = n << p.alloc_factor
        if p.alloc_factor < k.fp_scale_max:
            p.alloc_factor += 1
    end = spin_lock_held(S, t, k.fp_r_zone + p.node, now, zone_hold(S, n))
    p.pcp = n - 1
    return end


@internal
def _charge(S, t, now):
    """try_charge_memcg() for one page: the CPU's stock, else one page_counter walk
    charging MEMCG_CHARGE_BATCH - per level an atomic on usage (its own line) and the
    watermark store (the next line: usage set a new high in a run that only allocates)."""
    k = cfg(S, 0)
    if k.fp_memcg_levels <= 0:  # the root memcg: try_charge() returns at once
        return now
    p = fpcpu(S, thread(S, t).cpu)
    if p.stock > 0:
        p.stock -= 1
        return now
    c = thread(S, t).cpu
    end = now
    for lv in range(k.fp_memcg_levels):
        line_n = k.fp_memcg_line + 2 * lv
        s, cost = coh_write(S, line_n, c, end, True, True)  # atomic_long_add_return(nr_pages, &c->usage)
        end = s + cost
        s, cost = coh_write(S, line_n + 1, c, end, False, True)  # WRITE_ONCE(c->watermark, new)
        end = s + cost
    p.stock = k.fp_memcg_batch - 1
    thread(S, t).fp_res += end - now
    res(S, k.fp_r_rss + 1).acquisitions += 1  # one more page_counter walk
    return end


@internal
def _rss(S, t, now):
    """add_mm_counter(): percpu_counter_add_batch() folds the CPU's count into
    fbc->count under fbc->lock when it reaches the batch; before 6.2, the task's own
    count synced by one atomic_long_add() every TASK_RSS_EVENTS_THRESH faults."""
    k = cfg(S, 0)
    th = thread(S, t)
    if k.fp_rss_per_task:
        th.fp_rss_n += 1
        if th.fp_rss_n < k.fp_rss_batch:
            return now
        th.fp_rss_n = 0
        s, cost = coh_write(S, res(S, k.fp_r_rss).line, th.cpu, now, True, True)
        th.fp_res += s + cost - now
        return s + cost
    p = fpcpu(S, th.cpu)
    p.rss_n += 1
    if p.rss_n < k.fp_rss_batch:
        return now
    p.rss_n = 0
    return spin_lock_held(S, t, k.fp_r_rss, now, k.fp_fold_ns)


@internal
def _lru(S, t, now):
    """folio_add_lru(): into the CPU's folio batch; a full batch moves to the node's
    lruvec under lru_lock (lruvec_add_folio() per folio)."""
    k = cfg(S, 0)
    p = fpcpu(S, thread(S, t).cpu)
    p.lru_n += 1
    if p.lru_n < k.fp_lru_batch:
        return now
    p.lru_n = 0
    return spin_lock_held(S, t, k.fp_r_lru + p.node, now, k.fp_lru_batch * k.fp_lru_folio_ns)


@internal
def _own_time(S, j):
    """Whether fault op j has its own recorded time (which the fault path would count
    twice: the recording machine's resources are in it)."""
    if cfg(S, 0).recorded_service:
        d = op_service(S)[j]
        return d == d
    return False


@internal
def handle_mm_fault(S, t):
    """One step of handle_mm_fault() for t's fault: (when t continues, whether there
    are more steps).  Zero-time steps return now and come straight back."""
    th = thread(S, t)
    now = glob(S, 0).now
    j = th.op
    k = cfg(S, 0)
    if th.fp_step == 0:
        if not k.fp_on or _own_time(S, j):
            d = fault_service(S, j)
            th.fp_svc += d
            return now + d, False
        th.fp_step = S_WP_LOCK
        if _has_step(op_fkind(S)[j], S_PTE_ALLOC, False):  # a missing PTE: one more of the PTE page's
            th.fp_pte_n += 1
            if th.fp_pte_n > k.fp_pte_ptrs:
                th.fp_pte_n = 1
    kind = op_fkind(S)[j]
    ptl_on = k.fp_ptl != 0
    s = th.fp_step
    while s < S_DONE and not _has_step(kind, s, ptl_on):
        s += 1
    if S_PTE_ALLOC <= s <= S_PTE_INSTALL and th.fp_pte_n != 1:
        s = S_ALLOC  # the PMD already has its page table
        while s < S_DONE and not _has_step(kind, s, ptl_on):
            s += 1
    th.fp_step = s + 1
    if s == S_WP_LOCK or s == S_PTL_LOCK:
        end = ptl_lock(S, t, ptl_of(S, t, j), now)
        if end < 0:  # spinning in the lock's queue: ptl_unlock() resumes t at the next step
            return -1.0, True
    elif s == S_WP_UNLOCK or s == S_PTL_UNLOCK:
        end = ptl_unlock(S, t, now)
    elif s == S_PTL_HOLD:  # the rest under the lock: rmap, statistics, set_ptes() (est.: PTL_FIXED_SHARE)
        d = fault_service(S, j) * k.fp_ptl_share
        th.fp_svc += d
        end = now + d
    elif s == S_PTE_ALLOC or s == S_ALLOC:
        end = _alloc(S, t, now)
    elif s == S_PTE_CHARGE or s == S_CHARGE:
        end = _charge(S, t, now)
    elif s == S_PTE_CLEAR or s == S_CLEAR:
        if kind == K_COW and s == S_CLEAR:
            end = _clear(S, t, now, k.fp_copy_ns, k.fp_bw_copy_ns)
        else:
            end = _clear(S, t, now, k.fp_clear_ns, k.fp_bw_clear_ns)
    elif s == S_PTE_INSTALL:  # pmd_install(): mm_inc_nr_ptes()
        cs, cost = coh_write(S, k.fp_pgtables_line, th.cpu, now, True, True)
        end = cs + cost
        th.fp_res += end - now
        res(S, k.fp_r_rss + 2).acquisitions += 1  # one more PTE page
    elif s == S_RSS:
        end = _rss(S, t, now)
    elif s == S_LRU:
        end = _lru(S, t, now)
    elif s == S_FIXED:
        d = fault_service(S, j)
        if ptl_on:  # its share under the PTE lock was S_PTL_HOLD's
            d -= d * k.fp_ptl_share
        th.fp_svc += d
        end = now + d
    else:
        end = now
    if th.fp_step >= S_DONE:
        th.fp_step = 0
        return end, False
    return end, True


def node_of(machine, c) -> int:
    """The NUMA node of CPU c: the socket's nodes split its cores evenly."""
    per = machine.numa_nodes // machine.sockets
    return c.socket * per + (c.core % machine.cores_per_socket) * per // machine.cores_per_socket



# The DRAM traffic of one clear_page(): the 4 KiB read for ownership and written back.
# `rep stosb` allocates every line it writes on Skylake-SP and Ice Lake-SP (Ankur Arora,
# "[PATCH 4/8] x86/asm: add clear_page_nt()", 20201014083300.19077-5-ankur.a.arora@oracle.com:
# one L1D replacement per line written on Skylakex, "unlike REP; STOSB, MOVNTI does not
# result in a write-allocate"), and "Intel Skylake, Icelakex don't [forgo cacheline
# allocation] at all; AMD Milan does for extents > ~LLC-size" (the v3 clear_pages()
# cover, 20220606203725.1313715-2-ankur.a.arora@oracle.com) - a 4 KiB clear is far
# below that, so AMD allocates too (est. for Zen 4/5 and the older Intel cores).  That
# the allocation reads DRAM rather than being satisfied without data is est.: the L1D
# counts cannot tell (docs/fault-path.md 2.4).
CLEAR_DRAM_BYTES = 2 * 4096
# est.: a CoW copy reads the source page and allocates and writes back the new one
COPY_DRAM_BYTES = 3 * 4096


# est.: the memcg levels a charge walks.  A login session under systemd runs in
# user.slice/user-N.slice/session-M.scope, and page_counter_try_charge() walks every
# counter up to the root memcg's (``for (c = counter; c; c = c->parent)``): 4 usage
# lines.  The published runs' cgroup is not stated (docs/fault-path.md, open question 6).
MEMCG_LEVELS = 4


# est.: the share of the fault's fixed part (``[fault_path] fixed_ns``, the one fitted
# part) that runs under the PTE lock.  Under it (do_anonymous_page(), mm/memory.c, 6.3 to
# 6.18) are the PTE's recheck (vmf_pte_changed()), check_stable_address_space(),
# the rss add and folio_add_lru_vma() - modelled steps of their own - and
# folio_add_new_anon_rmap() with its statistics, and set_pte_at()/set_ptes(): these last
# are in the fixed part.  Of icelake-2s's 569 ns, about 1050 cycles (Linus Torvalds, "The
# cost of Linux's page fault handling", 2014, Haswell; ~350 ns at 3 GHz) are exception
# entry and exit; of the ~220 ns left (the walk, the allocator's and charge's per-CPU
# paths, rmap, set_pte, the user's store) a quarter is taken to be under the lock.  Not
# measured, not fitted: a measurement (the lock's hold, e.g. lock_stat's holdtime for
# ptlock_ptr(ptdesc) under a 1-thread pft) would replace it.
PTL_FIXED_SHARE = 0.1


def ptl_class(release: str) -> str:
    """The PTE lock's name as lockdep's /proc/lock_stat gives it: ptlock_init()'s
    spin_lock_init(ptlock_ptr(page)) up to 6.5, ptlock_ptr(ptdesc) once struct ptdesc
    overlays struct page (absent in the 6.5 tree, present in 6.8; include/linux/mm.h)."""
    from ..models.kernels import _release_key

    return "ptlock_ptr(ptdesc)" if _release_key(release) >= (6, 6) else "ptlock_ptr(page)"


class Plan:
    """The fault path of one replay as the engine's data: its config values, its
    spinlocks (RES records), its PTE locks (PTL records, ``ptl_cap`` of them, made as
    faults reach their PTE pages), its per-CPU state and the cache lines it adds after
    ``base`` (the lines the layouts already use), with their names for line_stats."""

    def __init__(self, machine, layout, release: str, base: int, ncpu: int, cpus, online: int, ptl_cap: int = 0):
        import numpy as np

        from ..models.kernels import MM_ANONPAGES_LOCK, TASK_RSS_EVENTS_THRESH, fault_path_kernel
        from . import state as st

        fp = machine.fault_path
        self.kernel = fault_path_kernel(release)
        kern = self.kernel
        nn = machine.numa_nodes
        self.names: dict[int, str] = {}
        line = base

        def lines(n, *names):
            nonlocal line
            first = line
            for i, nm in enumerate(names):
                self.names[first + i] = nm
            line += n
            return first

        # the spinlocks (zone->lock and lru_lock per node, the rss counter's), then two
        # counters kept in the same records: page_counter walks, PTE pages installed
        res = np.zeros(3 * nn + 3, st.RES)  # then each node's memory channels (faultpath._clear)
        data = []
        for n in range(nn):  # struct zone's lock, alone in its line (after CACHELINE_PADDING(_pad1_))
            z = lines(2, f"zone[node{n}].lock")
            res[n]["line"] = z
        for n in range(nn):  # struct lruvec: lists[] (line 0), lru_lock at 80 (line 1); lru_zone_size; a folio's page
            lv = lines(4, f"lruvec[node{n}].lists", f"lruvec[node{n}].lru_lock",
                       f"mem_cgroup_per_node[node{n}].lru_zone_size", f"page[lruvec{n}.head].lru")
            r = res[nn + n]
            r["line"], r["data0"], r["ndata"] = lv + 1, len(data), 3
            data += [lv, lv + 2, lv + 3]
        mmf = layout.mm.fields
        if "rss_stat" in mmf:  # the mm_struct's own line
            rss_line = (mmf["rss_stat"] + MM_ANONPAGES_LOCK) // 64
        else:
            rss_line = lines(2, "mm_struct.rss_stat[MM_ANONPAGES]")  # its offset not derived for this release
        res[2 * nn]["line"] = rss_line
        levels = MEMCG_LEVELS
        memcg = lines(2 * levels, *[x for lv in range(levels) for x in (
            f"page_counter[level{lv}].usage", f"page_counter[level{lv}].watermark")])
        pgt = (mmf["pgtables_bytes"] // 64 if "pgtables_bytes" in mmf
               else lines(2, "mm_struct.pgtables_bytes"))  # not in this layout
        if line % 2:
            line += 1
        # the PTE pages' locks, a line each: the ptl sits in the PTE page's struct page
        # (struct ptdesc overlays it: include/linux/mm_types.h 6.18, `spinlock_t ptl` unless
        # ALLOC_SPLIT_PTLOCKS - SPINLOCK_SIZE > BITS_PER_LONG/8, lock debugging -, when
        # it is a pointer to one from ptlock_cache), 64 bytes in the vmemmap, one line.
        # Named after the run (load.ptl_names): which region takes which is known then.
        ptl_line = line
        line += ptl_cap + (ptl_cap % 2)
        buckets = 1
        while buckets < 2 * ptl_cap:
            buckets *= 2
        self.ptl_cap = ptl_cap
        self.ptl_class = ptl_class(release)
        self.ptl = np.zeros(max(ptl_cap, 1), st.PTL)
        self.ptl["holder"], self.ptl["head"], self.ptl["tail"] = -1, -1, -1
        self.ptl_hash = np.full(buckets, -1, np.int64)
        self.nlines = line
        self.res = res
        self.lines = np.asarray(data or [0], np.int64)
        holds = fp["zone_lock_hold_ns"]
        self.hold_b = np.asarray([b for b, _ in holds], np.float64)
        self.hold_ns = np.asarray([h for _, h in holds], np.float64)
        fc = np.zeros(ncpu, st.FPCPU)
        fc["node"] = [node_of(machine, c) for c in cpus]
        self.fpcpu = fc
        L = machine.latency_ns
        self.cfg = {
            "fp_on": 1, "fp_pcp_batch": kern.pcp_batch, "fp_scale_max": kern.pcp_scale_max,
            "fp_lru_batch": kern.lru_batch, "fp_memcg_batch": kern.memcg_batch, "fp_memcg_levels": levels,
            "fp_rss_batch": TASK_RSS_EVENTS_THRESH if kern.rss_per_task else max(32, 2 * online),
            "fp_rss_per_task": int(kern.rss_per_task), "fp_pte_ptrs": kern.pte_ptrs, "fp_nhold": len(holds),
            "fp_r_zone": 0, "fp_r_lru": nn, "fp_r_rss": 2 * nn, "fp_memcg_line": memcg,
            "fp_pgtables_line": pgt,
            "fp_clear_ns": fp["clear_page_ns"], "fp_copy_ns": 2 * fp["clear_page_ns"],
            "fp_lru_folio_ns": fp["lru_folio_ns"],
            # a node's channels: dram_gbps (bytes per ns) is the socket's, its nodes share it
            "fp_r_bw": 2 * nn + 3,
            "fp_bw_clear_ns": CLEAR_DRAM_BYTES * nn / (machine.sockets * fp["dram_gbps"]),
            "fp_bw_copy_ns": COPY_DRAM_BYTES * nn / (machine.sockets * fp["dram_gbps"]),
            # the fold under fbc->lock: fbc->count += count (an add on the lock's own line, owned)
            "fp_fold_ns": L["owned_atomic"],
            "fp_ptl": int(ptl_cap > 0), "fp_ptl_line": ptl_line, "fp_ptl_cap": ptl_cap,
            "fp_ptl_mask": buckets - 1, "fp_ptl_share": PTL_FIXED_SHARE,
        }
        self.resource_names = ([("zone->lock", f"node{n}") for n in range(nn)]
                               + [("lruvec->lru_lock", f"node{n}") for n in range(nn)]
                               + [("mm->rss_stat[MM_ANONPAGES].lock" if not kern.rss_per_task
                                   else "mm->rss_stat (sync_mm_rss)", "mm")])
