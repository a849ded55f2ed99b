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
from numba import njit

from .sched import sleep_for
from .state import cfg, glob, op_retry, retry_ops, retry_wait, thread

RETRY_NONE, RETRY_NO_MAP_PAGES, RETRY_PAGE_CACHE = 0, 1, 2
RETRY_CAUSES = ("none", "no_map_pages", "page_cache")
LOCK_VMA = 1  # FAULT_RETRY's lock argument (isa.encode: 0 mmap_lock, 1 the VMA's)


def retry_causes(src, c, kinds: np.ndarray):
    """Per op its RETRY_* cause (int8), and for the ops that wait, their op indices
    (sorted) and waits in ns - the few faults that have one.  ``kinds``: the ops' fault
    kind codes (load.fault_kinds())."""
    import polars as pl

    from ..ops import FK_FILE, FK_FILE_IO, FK_SPECIAL, writer_in_flight

    cause = np.zeros(src.n, np.int8)
    cause[kinds == FK_SPECIAL] = RETRY_NO_MAP_PAGES
    cause[kinds == FK_FILE_IO] = RETRY_PAGE_CACHE
    is_fault = c("kind", pl.Utf8).cast(pl.Utf8) == "fault"
    if "observed_fallback" in src.names:
        cand = src.frame(["kind", "observed_fallback", "kernel", "vma_id", "start_ns", "end_ns"], lambda df: df.filter(
            is_fault & c("observed_fallback", pl.Boolean).fill_null(False) & ~c("kernel", pl.Boolean).fill_null(False)
        ).select("_j", c("vma_id"), c("start_ns"), c("end_ns")))
        cand = cand.filter(pl.Series(kinds[cand["_j"].to_numpy()] == FK_FILE)) if cand is not None else None
        if cand is not None and cand.height:
            w = src.writers(lambda df: df.select(c("lock_mode", pl.Utf8).cast(pl.Utf8), c("start_ns"), c("end_ns"),
                                                 c("vma_ids", pl.List(pl.Int64)).cast(pl.List(pl.Int64))))
            mine = cand.filter(~writer_in_flight(cand, w))["_j"].to_numpy().astype(np.int64)
            cause[mine] = RETRY_PAGE_CACHE
    waits = np.flatnonzero(cause == RETRY_PAGE_CACHE).astype(np.int64)
    wait_ns = np.zeros(len(waits), np.float64)
    if len(waits) and "first_try_ns" in src.names:
        ft = src.column("first_try_ns", np.float64, 0)
        ok = src.notnull("first_try_ns")
        wait_ns = np.where(ok[waits], ft[waits], 0.0)
    return cause, waits, wait_ns


@njit(cache=True)
def fault_retry(S, t, which, retry):
    """FAULT_RETRY: whether this call of handle_mm_fault() under lock ``which`` returns
    VM_FAULT_RETRY (-> goto retry).  Zero time: the call's work is the completing one's."""
    th = thread(S, t)
    c = op_retry(S)[th.op]
    if not th.retried and (c == RETRY_PAGE_CACHE or (c == RETRY_NO_MAP_PAGES and which == LOCK_VMA)):
        th.retried = True
        th.pc = retry
    return glob(S, 0).now, False


@njit(cache=True)
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


@njit(cache=True)
def retry_wait_step(S, t):
    """RETRY_WAIT: the fault sleeps its recorded wait off its CPU (sched.sleep_for)."""
    d = wait_of(S, thread(S, t).op)
    if d <= 0.0:
        return glob(S, 0).now, False
    sleep_for(S, t, d)
    return -1.0, False
