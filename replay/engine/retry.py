"""VM_FAULT_RETRY: a fault whose first handle_mm_fault() call drops the lock it holds,
perhaps waits, and returns VM_FAULT_RETRY - then is served under mmap_lock.

The path (arch/x86/mm/fault.c do_user_addr_fault(), Linux 6.18)::

    vma = lock_vma_under_rcu(mm, address);
    ...
    fault = handle_mm_fault(vma, address, flags | FAULT_FLAG_VMA_LOCK, regs);
    if (!(fault & (VM_FAULT_RETRY | VM_FAULT_COMPLETED)))
        vma_end_read(vma);
    if (!(fault & VM_FAULT_RETRY)) {
        count_vm_vma_lock_event(VMA_LOCK_SUCCESS);
        goto done;
    }
    count_vm_vma_lock_event(VMA_LOCK_RETRY);
    if (fault & VM_FAULT_MAJOR)
        flags |= FAULT_FLAG_TRIED;
    ...
    lock_mmap:
    retry:
    vma = lock_mm_and_find_vma(mm, address, regs);
    ...
    fault = handle_mm_fault(vma, address, flags, regs);
    ...
    if (unlikely(fault & VM_FAULT_RETRY)) {
        flags |= FAULT_FLAG_TRIED;
        goto retry;
    }

The callee releases the lock before returning VM_FAULT_RETRY ("mm: drop per-VMA lock
when returning VM_FAULT_RETRY or VM_FAULT_COMPLETED", Suren Baghdasaryan, v6.5): the
programs (replay/models/kernels.py) drop it, run ``RETRY_WAIT``, count RETRY and go to
``lock_mmap``.  Which faults return it (``retry_causes()``, read from the ops):

Each op carries bits (``op_retry``); which are set depends on the release the design runs
on (the coverage table below), as of 6.7:

* ``RETRY_NO_MAP_PAGES`` - fault kind ``special`` (a special mapping's page not present:
  ``[vdso]``, ``[vvar]``): do_read_fault() / do_cow_fault() / do_shared_fault() call
  vmf_can_call_fault() (mm/memory.c), which under FAULT_FLAG_VMA_LOCK returns
  VM_FAULT_RETRY at once for vm_ops without ->map_pages ("We could add a bitflag
  somewhere, but for now, we know that all vm_ops that have a ->map_pages have been
  audited and don't need the mmap_lock to be held").  Under the VMA lock only; no wait.
* ``RETRY_PAGE_CACHE`` - the first call drops whichever lock it holds to wait on the page
  cache: maybe_unlock_mmap_for_io() (mm/internal.h) -> release_fault_lock() -
  vma_end_read() or mmap_read_unlock() - "if (fault_flag_allow_retry_first(flags) &&
  !(flags & FAULT_FLAG_RETRY_NOWAIT))", so on the first attempt only, under either lock:
  - fault kind ``file_io`` (major): filemap_fault() (mm/filemap.c) found no folio, and
    do_sync_mmap_readahead() drops the lock for the read;
  - a ``file`` fault the trace shows falling back (ops ``observed_fallback``) with no
    writer that write-locks its VMA in flight (replay/ops.py writer_in_flight()): not an
    abort on a write-locked VMA, so its first call returned VM_FAULT_RETRY - the folio
    locked by a read in flight (lock_folio_maybe_drop_mmap(): folio_trylock() fails,
    the lock is dropped for __folio_lock_killable()) or marked for readahead
    (do_async_mmap_readahead(): folio_test_readahead() -> maybe_unlock_mmap_for_io()).
    What made it wait is the page cache's state, which the trace recorded and the lock
    design does not change: it is replayed as recorded, under every model.
* ``NOT_ANON`` - before 6.6 (below): lock_vma_under_rcu() refuses the VMA, an ABORT
  (``CHECK_ANON``), and the fault goes to mmap_lock, where a page-cache wait still drops it.
* the anon_vma (``ANON_VMA_NEEDED``, ``ANONYMOUS``; below): up to 6.9 an anonymous VMA
  without one is refused, an ABORT (``CHECK_ANON`` / ``CHECK_ANON_VMA``); from 6.6 a fault
  that needs one and finds none returns VM_FAULT_RETRY under the VMA lock - at once up to
  6.9, from 6.10 only if vmf_anon_prepare()'s mmap_read_trylock() fails (``ANON_VMA_CHECK``).

Under the VMA lock ``RETRY_NO_MAP_PAGES`` comes first: a call that cannot run ->fault()
there returns before it could wait (6.6 sets it for a major fault too, which then waits
under mmap_lock).

The wait (``RETRY_WAIT``) is the fault's first try as the trace recorded it (ops
``first_try_ns``: its entry to its first mmap_lock start_locking - lock_vma_under_rcu(),
the first call and its sleep), spent asleep off the CPU (io_schedule() in the folio
wait); none where the trace has no first try (a special mapping's retry returns at once;
a major fault on a kernel without the VMA lock shows its first try under mmap_lock,
which the op builder does not measure).  A fault waits once: after a major fault's
retry FAULT_FLAG_TRIED is set and the folio is up to date; a minor retry's second call
finds the folio it waited for unlocked (lock_folio_maybe_drop_mmap() succeeds), which
the engine takes as given.  The first call's own work before it drops the lock (the
page-table walk, the page-cache lookup) is not charged: the completing call's time is
the fault's service time.
"""

from __future__ import annotations

import numpy as np
from ..jit import internal

from .coherence import read, store_from
from .sched import sleep_for
from .vma import current, field_line, vma_line, vma_walk
from .state import cfg, glob, op_retry, retry_ops, retry_wait, thread, vobj

# op_retry bits
RETRY_NO_MAP_PAGES = 1  # VM_FAULT_RETRY under the VMA lock at once, no wait
RETRY_PAGE_CACHE = 2  # the first call (either lock) drops it to wait on the page cache
NOT_ANON = 4  # lock_vma_under_rcu() refuses the VMA: not anonymous (before 6.6)
LOCK_VMA = 1  # FAULT_RETRY's lock argument (isa.encode: 0 mmap_lock, 1 the VMA's)


def _release(r: str) -> tuple:
    from ..models.kernels import _release_key

    return _release_key(r)


# The per-VMA lock's coverage by release (the kernel the design runs on: Model.release, or
# NAME@RELEASE), each step read in that release's mm/memory.c:
# * up to 6.5, lock_vma_under_rcu(): "/* Only anonymous vmas are supported for now */ if
#   (!vma_is_anonymous(vma)) goto inval;" (v6.4; v6.5 adds "&& !vma_is_tcp(vma)"), so a
#   fault on a file-backed or special mapping counts VMA_LOCK_ABORT and takes mmap_lock.
#   Before 6.4 the release is the base a posting of the series was measured on (pervma@6.2),
#   whose lock_vma_under_rcu() had the same test.
# * 6.6, "mm: Allow per-VMA locks on file-backed VMAs" (Matthew Wilcox) and "mm: Run the
#   fault-around code under the VMA lock": any VMA is locked, but do_read_fault() maps under
#   it only what fault-around finds in the page cache and returns "if (vmf->flags &
#   FAULT_FLAG_VMA_LOCK) { vma_end_read(vmf->vma); return VM_FAULT_RETRY; }" before
#   calling ->fault(); do_cow_fault() and do_shared_fault() (write faults on a file) begin
#   with that test, and so does do_wp_page() for a shared mapping's write.
# * 6.7, "Handle more faults under the VMA lock" (Matthew Wilcox; "mm: handle read faults
#   under the VMA lock", 12214eba1992, and its siblings for COW, shared and RO-write faults):
#   the test becomes vmf_can_call_fault() - only vm_ops without ->map_pages retry - and
#   filemap_fault() drops the VMA lock itself to wait (lock_folio_maybe_drop_mmap() made
#   VMA-lock aware), as in 6.18.
# * the anon_vma (below): up to 6.9 lock_vma_under_rcu() refuses an anonymous VMA without
#   one; from 6.10 vmf_anon_prepare() prepares it under mmap_read_trylock().
FILE_VMAS_LOCKED = (6, 6)
FILE_FAULTS_UNDER_VMA_LOCK = (6, 7)
# lock_vma_under_rcu()'s tests before vma_start_read() - 6.4's "if (!vma_is_anonymous(vma))
# goto inval;" and "if (!vma->anon_vma) goto inval;", 6.5's first - read vm_ops and
# anon_vma (one line); 6.5 moved the anon_vma test after vma_start_read(), and 6.6 the
# anonymous one with it ("if (unlikely(vma_is_anonymous(vma) && !vma->anon_vma)) goto
# inval_end_read;", as 6.8 and 6.9 have it)
LVUR_ANON_CHECK_UNTIL = (6, 6)

# -- the anon_vma --------------------------------------------------------------------------------
# A fault that maps an anonymous page - do_anonymous_page()'s write, do_cow_fault() (a write
# fault on a file-backed private VMA), wp_page_copy() (a CoW, the zero page's included) -
# needs vma->anon_vma, and sets it where it is NULL: __anon_vma_prepare() (mm/rmap.c), which
# "will look at adjacent VMAs to determine if this VMA can share its anon_vma, and that's not
# safe to do with only the per-VMA lock held for this VMA" (mm/memory.c, v6.11 and v6.18,
# __vmf_anon_prepare()'s comment).  So, by release (mm/memory.c lock_vma_under_rcu() and
# vmf_anon_prepare(), read in v6.4, v6.5, v6.8, v6.9, v6.11, v6.18):
# * up to 6.9 lock_vma_under_rcu() refuses an anonymous VMA without one: VMA_LOCK_ABORT, and
#   the fault prepares it under mmap_lock - 6.4 before vma_start_read() ("/* find_mergeable_
#   anon_vma uses adjacent vmas which are not locked */ if (!vma->anon_vma) goto inval;"),
#   6.5-6.9 after it ("This check must happen after vma_start_read(); otherwise, a concurrent
#   mremap() with MREMAP_DONTUNMAP could dissociate the VMA from its anon_vma": goto
#   inval_end_read).  A read fault there (the zero page) aborts too: it sets no anon_vma.
# * a file-backed private VMA is locked from 6.6; without an anon_vma its CoW returns
#   VM_FAULT_RETRY under the VMA lock: 6.8's and 6.9's vmf_anon_prepare() "if (vmf->flags &
#   FAULT_FLAG_VMA_LOCK) { vma_end_read(vma); return VM_FAULT_RETRY; }" (do_cow_fault(),
#   wp_page_copy()).  6.6's and 6.7's mm/memory.c are not mirrored here: taken as 6.8's.
# * from 6.10 ("mm: delay the check for a NULL anon_vma" and "mm: optimise
#   vmf_anon_prepare() for VMAs without an anon_vma", Matthew Wilcox, "MM updates for
#   6.10-rc1") lock_vma_under_rcu() locks every VMA and __vmf_anon_prepare() does "if
#   (vmf->flags & FAULT_FLAG_VMA_LOCK) { if (!mmap_read_trylock(vma->vm_mm)) return
#   VM_FAULT_RETRY; } if (__anon_vma_prepare(vma)) ret = VM_FAULT_OOM; if (vmf->flags &
#   FAULT_FLAG_VMA_LOCK) mmap_read_unlock(vma->vm_mm);", its wrapper vmf_anon_prepare()
#   (mm/internal.h) calling vma_end_read() on VM_FAULT_RETRY; do_anonymous_page() calls it
#   too from then on (v6.11, v6.18).  The trylock is down_read_trylock(): it fails while a
#   writer holds mmap_lock or waits for it (RWSEM_READ_FAILED_MASK) - RETRY, then mmap_lock.
# Which VMAs have one (VMA_OBJ.anon_vma): a VMA the mm had before the trace's first writer
# is taken to have one - exec wrote the stack (copy_strings()) and the data segments' last
# pages, and in the sample traces no first write fault in such a VMA traces the trylock; a
# VMA a writer creates starts without, unless it was copied from one (ops vmas_parent:
# __split_vma() and mremap's copy_vma() call anon_vma_clone()); a VMA a merge removes
# passes its anon_vma to the one that absorbs it (vma_expand() -> dup_anon_vma()); a VMA
# that grows keeps its own.  Not modelled: hugetlb's vmf_anon_prepare() (the engine has no
# hugetlb), fork's anon_vma_fork(), and an mremap moved onto a neighbour it merges with
# (the neighbour keeps its own).
ANON_VMA_NEEDED = 8  # op_retry bit: a write fault in a private VMA (it maps an anonymous page)
ANONYMOUS = 16  # op_retry bit: its VMA is anonymous (vma_is_anonymous(): no vm_ops)
ANON_VMA_NONE, ANON_VMA_BEFORE_LOCK, ANON_VMA_AFTER_LOCK = 0, 1, 2  # cfg.lvur_anon_vma
VMF_ANON_NONE, VMF_ANON_RETRY, VMF_ANON_TRYLOCK = 0, 1, 2  # cfg.vmf_anon
LVUR_ANON_VMA_AFTER_LOCK_FROM = (6, 5)
VMF_ANON_TRYLOCK_FROM = (6, 10)
# est.: __anon_vma_prepare()'s own work - anon_vma_chain_alloc() and anon_vma_alloc() (two
# slab allocations), find_mergeable_anon_vma() (the neighbours in the maple tree),
# anon_vma_lock_write(), mm->page_table_lock, anon_vma_chain_link() (an interval-tree
# insert) - uncontended, a few tens of ns each; no measurement of it is at hand
ANON_VMA_PREPARE_NS = 200.0


def anon_vma_modes(release: str) -> tuple[int, int]:
    """(cfg.lvur_anon_vma, cfg.vmf_anon) for a release."""
    rel = _release(release)
    if rel >= VMF_ANON_TRYLOCK_FROM:
        return ANON_VMA_NONE, VMF_ANON_TRYLOCK
    lvur = ANON_VMA_AFTER_LOCK if rel >= LVUR_ANON_VMA_AFTER_LOCK_FROM else ANON_VMA_BEFORE_LOCK
    return lvur, VMF_ANON_RETRY if rel >= FILE_VMAS_LOCKED else VMF_ANON_NONE


def retry_causes(src, c, kinds: np.ndarray, release: str):
    """Per op its op_retry bits (int8), and for the ops that wait, their op indices
    (sorted) and waits in ns - the few faults that have one.  ``kinds``: the ops' fault
    kind codes (load.fault_kinds()); ``release``: the kernel the design runs on."""
    import polars as pl

    from ..ops import FK_FILE, FK_FILE_IO, FK_SPECIAL, VMA_CLASSES, writer_in_flight

    rel = _release(release)
    cause = np.zeros(src.n, np.int8)
    not_anon = (kinds == FK_SPECIAL) | (kinds == FK_FILE) | (kinds == FK_FILE_IO)
    if "vma_class" in src.names:  # the fault's VMA (ops vma_class; null: none known - no anon_vma rule)
        vclass = src.col(c("vma_class", pl.Utf8).cast(pl.Utf8).replace_strict(
            {k: i for i, k in enumerate(VMA_CLASSES)}, default=-1, return_dtype=pl.Int8), np.int8)
        write = src.col(c("write", pl.Boolean).fill_null(False), bool) if "write" in src.names else np.zeros(src.n, bool)
        anon = vclass == VMA_CLASSES.index("anon")
        not_anon |= vclass > VMA_CLASSES.index("anon")  # file, shared, special: a CoW on a file's private VMA too
        cause[anon] |= ANONYMOUS
        cause[write & (anon | (vclass == VMA_CLASSES.index("file")))] |= ANON_VMA_NEEDED
    if rel < FILE_VMAS_LOCKED:
        cause[not_anon] |= NOT_ANON
    elif rel < FILE_FAULTS_UNDER_VMA_LOCK:  # 6.6: only fault-around's page-cache hits stay
        write = src.col(c("write", pl.Boolean).fill_null(False), bool)
        cause[(kinds == FK_SPECIAL) | (kinds == FK_FILE_IO) | ((kinds == FK_FILE) & write)] |= RETRY_NO_MAP_PAGES
    else:
        cause[kinds == FK_SPECIAL] |= RETRY_NO_MAP_PAGES
    cause[kinds == FK_FILE_IO] |= RETRY_PAGE_CACHE
    is_fault = c("kind", pl.Utf8).cast(pl.Utf8) == "fault"
    # the trace's fallbacks and the faults with a recorded first try (few; the op builder
    # gives the first try to a user fault's fallback only): read here rather than as
    # columns of every op
    fb = None
    if "observed_fallback" in src.names or "first_try_ns" in src.names:
        fallback = c("observed_fallback", pl.Boolean).fill_null(False)
        fb = src.frame(["kind", "observed_fallback", "kernel", "vma_id", "start_ns", "end_ns", "first_try_ns"],
                       lambda df: df.filter(is_fault & (fallback | c("first_try_ns").is_not_null()))
                       .select("_j", c("vma_id"), c("start_ns"), c("end_ns"), c("first_try_ns"),
                               (fallback & ~c("kernel", pl.Boolean).fill_null(False)).alias("_fb")))
    if fb is not None and fb.height:
        cand = fb.filter(pl.col("_fb") & pl.Series(kinds[fb["_j"].to_numpy()] == FK_FILE))
        if cand.height:
            w = src.writers(lambda df: df.select(c("lock_mode", pl.Utf8).cast(pl.Utf8), c("start_ns"), c("end_ns"),
                                                 c("vma_ids", pl.List(pl.Int64)).cast(pl.List(pl.Int64))))
            mine = cand.filter(~writer_in_flight(cand, w))["_j"].to_numpy().astype(np.int64)
            cause[mine] |= RETRY_PAGE_CACHE
    waits = np.flatnonzero(cause & RETRY_PAGE_CACHE).astype(np.int64)
    wait_ns = np.zeros(len(waits), np.float64)
    if len(waits) and fb is not None and fb.height:
        known = fb.filter(pl.col("first_try_ns").is_not_null())
        at = known["_j"].to_numpy().astype(np.int64)  # in op order, as src.frame() reads
        i = np.searchsorted(at, waits)
        hit = (i < len(at)) & (at[np.minimum(i, len(at) - 1)] == waits) if len(at) else np.zeros(len(waits), bool)
        wait_ns[hit] = known["first_try_ns"].to_numpy().astype(np.float64)[i[hit]]
    return cause, waits, wait_ns


@internal
def fault_retry(S, t, which, retry):
    """FAULT_RETRY: whether this call of handle_mm_fault() under lock ``which`` returns
    VM_FAULT_RETRY (-> goto retry).  Under the VMA lock a fault that cannot be served there
    returns before it would wait (6.6's FAULT_FLAG_VMA_LOCK tests, vmf_can_call_fault());
    else the page cache's wait drops whichever lock it holds, once (``retried``: the
    wait's RETRY_WAIT is then due).  Zero time: the call's work is the completing one's."""
    th = thread(S, t)
    c = op_retry(S)[th.op]
    if which == LOCK_VMA and (c & RETRY_NO_MAP_PAGES):
        th.pc = retry
    elif (c & RETRY_PAGE_CACHE) and not th.retried:
        th.retried = True
        th.wait_due = True
        th.pc = retry
    return glob(S, 0).now, False


@internal
def check_anon(S, t, refused):
    """CHECK_ANON: lock_vma_under_rcu() up to 6.5 reads vma->vm_ops (and 6.4 vma->anon_vma,
    on the same line) before vma_start_read(): a VMA that is not anonymous, or (6.4) has no
    anon_vma -> goto (abort)."""
    th = thread(S, t)
    k = cfg(S, 0)
    now = glob(S, 0).now
    if not k.lvur_anon_check:
        return now, False
    end = read(S, t, field_line(S, t, 1, k.off_anon_vma))
    if end < 0:  # waits for the line (coherence.wait_line): this step runs again
        return end, True
    c = op_retry(S)[th.op]
    if c & NOT_ANON:
        th.pc = refused
    elif k.lvur_anon_vma == ANON_VMA_BEFORE_LOCK and (c & ANONYMOUS) and not _has_anon_vma(S, t):
        th.pc = refused
    return end, False


@internal
def check_anon_vma(S, t, refused):
    """CHECK_ANON_VMA: 6.5-6.9's lock_vma_under_rcu() after vma_start_read(): "if
    (unlikely(vma_is_anonymous(vma) && !vma->anon_vma)) goto inval_end_read;"."""
    th = thread(S, t)
    k = cfg(S, 0)
    if k.lvur_anon_vma != ANON_VMA_AFTER_LOCK:
        return glob(S, 0).now, False
    end = read(S, t, field_line(S, t, 1, k.off_anon_vma))
    if end < 0:
        return end, True
    if (op_retry(S)[th.op] & ANONYMOUS) and not _has_anon_vma(S, t):
        th.pc = refused
    return end, False


@internal(inline=True)
def _vma_of_fault(S, t):
    """The VMA object the fault is on: the one it locked (or, after an abort, the walk
    found), else - under mmap_lock from the start - find_vma()'s, by address."""
    th = thread(S, t)
    if th.slot >= 0:
        return current(S, t)
    return vma_walk(S, th.vma, th.addr)


@internal(inline=True)
def _has_anon_vma(S, t):
    o = _vma_of_fault(S, t)
    return o < 0 or vobj(S, o).anon_vma != 0  # a VMA the replay never had: taken as prepared


@internal
def anon_vma_check(S, t, which, prepared, retry):
    """ANON_VMA_CHECK: vmf_anon_prepare()'s "if (likely(vma->anon_vma)) return 0;" (the
    line the fault read) - also when the fault maps no anonymous page, or under the VMA
    lock vmf_can_call_fault() returned first (6.6's FAULT_FLAG_VMA_LOCK tests included) ->
    goto ``prepared``.  Without one: under mmap_lock, and under the VMA lock from 6.10, on
    (mmap_read_trylock() there, then ANON_VMA_PREPARE); under the VMA lock up to 6.9 ->
    goto ``retry`` (vma_end_read(), VM_FAULT_RETRY)."""
    th = thread(S, t)
    now = glob(S, 0).now
    c = op_retry(S)[th.op]
    if not (c & ANON_VMA_NEEDED) or _has_anon_vma(S, t):
        th.pc = prepared
    elif which == LOCK_VMA:
        if c & RETRY_NO_MAP_PAGES:
            th.pc = prepared  # FAULT_RETRY returns first
        elif cfg(S, 0).vmf_anon != VMF_ANON_TRYLOCK:
            th.pc = retry
    return now, False


@internal
def anon_vma_prepare(S, t):
    """ANON_VMA_PREPARE: __anon_vma_prepare() - its own work (ANON_VMA_PREPARE_NS, est.),
    then ``vma->anon_vma = anon_vma`` under mm->page_table_lock "if (likely(!vma->anon_vma))"
    (a fault that lost the race frees what it allocated): the store to the VMA's line."""
    th = thread(S, t)
    o = _vma_of_fault(S, t)
    end = glob(S, 0).now + ANON_VMA_PREPARE_NS
    if o >= 0 and not vobj(S, o).anon_vma:
        vobj(S, o).anon_vma = 1
        th.anon_prep = True
        end = store_from(S, t, vma_line(S, o, cfg(S, 0).off_anon_vma), end)
    return end, False


@internal
def wait_of(S, j):
    """The retry wait of op j (0 if it has none)."""
    ops = retry_ops(S)
    lo, hi = 0, cfg(S, 0).nretry  # binary search: ops is sorted
    while lo < hi:
        m = (lo + hi) // 2
        if ops[m] < j:
            lo = m + 1
        else:
            hi = m
    if lo < cfg(S, 0).nretry and ops[lo] == j:
        return retry_wait(S)[lo]
    return 0.0


@internal
def retry_wait_step(S, t):
    """RETRY_WAIT: the fault sleeps its recorded wait off its CPU (sched.sleep_for)."""
    th = thread(S, t)
    if not th.wait_due:  # a retry that waits for nothing (vmf_can_call_fault())
        return glob(S, 0).now, False
    th.wait_due = False
    d = wait_of(S, th.op)
    if d <= 0.0:
        return glob(S, 0).now, False
    sleep_for(S, t, d)
    return -1.0, False
