"""The op builder: a trace's events become per-thread streams of operations.

One op per page fault (a reader of the address space) and per address-space writer
(mmap, munmap, mprotect, mremap, brk, VMA-changing madvise; exit_mmap).  For each:

* **the thread's address space.**  Threads are attributed to a process by the tgid the
  format prints (``pid``), else by the ``mm=`` of their own mmap_lock events, else they
  stay alone (each its own mm) - the rule used and the count left unattributed are
  reported; ``same_mm=True`` puts every thread in one mm.
* **syscall pairing.**  ``sys_enter_X`` and the next ``sys_exit_X`` of the same thread
  make one writer op (start, end, return value); a failed call (negative return) changes
  nothing; an enter with no exit (trace cut, lost events) keeps ``end_ns`` null.
* **the VMAs.**  A tracker replays the writers over an interval map, seeded from the
  ``/proc/PID/maps`` snapshot when the trace has one, so every fault gets the id of the
  VMA it hits and every writer the ids of the VMAs it write-locks.  Splits keep the
  lower part in the original vm_area_struct and put the upper part in a new one, as
  ``__split_vma()`` does for the common new_below=0 case (mm/vma.c); a new anonymous
  private mapping merges with the VMA before it and/or the one after it as 6.18's
  ``vma_merge_new_range()`` does (``AddressSpace.mmap``: the vm_flags mmap()'s prot and
  flags give it - ``mmap_vm_flags()`` -, vm_pgoff, the anon_vmas), which is how glibc's
  arenas and the JVM's heap grow, and how a thread stack's PROT_NONE mapping joins the
  guard page above it; a file mapping is never merged (the trace has the fd, not the
  file).  A writer's new layout becomes visible at its ``sys_exit``.  Faults outside
  every known VMA get inferred VMAs: their pages clustered per mm, split at gaps over 1
  MiB.  Each VMA a writer creates names the VMA it was copied from (``vmas_parent``: a
  split's original, an mremap move's source - anon_vma_clone() gives it that VMA's
  anon_vma), and each fault its VMA's class (``vma_class``: ``vma_class()`` below), which
  the engine's anon_vma rules read (replay/engine/retry.py).  Not tracked: madvise's
  flag changes (MADV_DONTFORK, MADV_HUGEPAGE, ...: a VMA-changing madvise splits, its
  pieces keep their flags), mbind()'s mempolicy, userfaultfd, fork.
* **the anon_vma** (``AnonVmas``).  Which VMAs have one, as far as the trace shows: none
  to begin with (a maps snapshot's VMAs included); a write fault in a private VMA
  without one prepares one (vmf_anon_prepare() -> __anon_vma_prepare(), mm/memory.c and
  mm/rmap.c) - a user-mode fault under the VMA lock, a kernel-mode one under mmap_lock
  - sharing an adjacent anonymous VMA's where find_mergeable_anon_vma() would (mm/vma.c);
  a split-off or moved VMA has its source's (anon_vma_clone()); a merge keeps one
  (dup_anon_vma()) and is refused between two different ones (is_mergeable_anon_vma()).
* **observed fallback.**  In per-VMA-lock kernels a fault served under the VMA lock
  emits no mmap_lock event, so a user fault followed on the same thread, before that
  thread's next fault or syscall, by ``mmap_lock_start_locking write=false`` on its own
  mm fell back to mmap_lock (abort or VM_FAULT_RETRY: the trace cannot tell which;
  lock_mm_and_find_vma() starts with mmap_read_trylock(), which traces start_locking
  too - include/linux/mmap_lock.h).  One exception looks the same: since v6.10 the
  first write fault in a private VMA without an anon_vma takes mmap_read_trylock() in
  vmf_anon_prepare() (mm/memory.c) and may still complete under the VMA lock.  Such a
  fault - a user-mode write fault in a private VMA that has no anon_vma yet (the anon_vma,
  above: not a split-off piece of a VMA that had one, nor a VMA a kernel-mode write
  fault already prepared) - is counted as ``observed_anon_prepare``, not as a fallback.  ``acquire_returned`` with no
  start_locking is mmap_write_downgrade() (munmap, brk, mremap), not a fault.  A fault
  that takes the lock for write (stack expansion, lock_mm_and_find_vma()) is counted
  in ``observed_mmap_write``.  Kernel-mode faults never try the VMA lock
  (arch/x86/mm/fault.c, do_user_addr_fault: ``if (!(flags & FAULT_FLAG_USER)) goto
  lock_mmap``) and have no observed_fallback.
* **service time.**  ``service_ns``: the fault's handle_mm_fault() time, where the trace
  has the fault's ``fault_end`` (perf's minor-faults / major-faults software events, which
  mm_account_fault() emits as the handle_mm_fault() call that completes the fault
  returns; ``replay record`` records them, ingest/text.py).  The first ``fault_end`` of
  the thread in the fault's window (until its next fault or syscall), at the fault's
  address, is the fault's; any other - a second one, one in a syscall's window, at
  another address - is counted (``fault_ends_unpaired``) and attached to nothing.  What
  it measures follows do_user_addr_fault() (arch/x86/mm/fault.c, read in a recent
  mainline copy: the per-VMA-lock path 6.18 has; handle_mm_fault() in mm/memory.c ends
  ``out: mm_account_fault(mm, regs, address, flags, ret); return ret;``), which calls
  handle_mm_fault() once under the VMA lock (``flags | FAULT_FLAG_VMA_LOCK``) and, if
  that returns VM_FAULT_RETRY or the VMA lock was not had (``goto lock_mmap``), again
  after lock_mm_and_find_vma() takes mmap_lock, and again after each VM_FAULT_RETRY
  (``goto retry``).  mm_account_fault() skips a call returning VM_FAULT_RETRY
  ("Incomplete faults will be accounted upon completion"), so the end is always the
  completing call's.  Its start: for a fault whose window shows it acquiring mmap_lock,
  the latest such acquire (mmap_lock_acquire_returned: the completing call ran under
  it, after lock_mm_and_find_vma()'s VMA lookup), so the time is that call's, the
  lock wait and any earlier attempt - the VMA-lock call that returned VM_FAULT_RETRY
  included - left out (the engine simulates the wait; the abandoned attempt is work the
  engine does not model, and the trace cannot tell a retry from an abort); for a fault
  served under the VMA lock, the fault's entry (exceptions:page_fault_user, traced in
  handle_page_fault() before do_user_addr_fault()), so it includes lock_vma_under_rcu()
  (so too for the first write fault of a private VMA, whose mmap_lock events are
  vmf_anon_prepare()'s trylock inside handle_mm_fault(): see observed fallback).
  Either way one recorded event's own cost lies inside it (page_fault_user's or
  acquire_returned's: 1-1.4 us an event on our VM, measured as an uncontended
  mmap_read_trylock()'s start_locking -> acquire_returned gap) - the instrument's error,
  on the high side, as it is in ``hold_ns`` - and, being wall time, any sleep or
  preemption inside handle_mm_fault().  A fault without a ``fault_end`` (a trace
  recorded without them, a fault ending in an error or a signal) has ``service_ns``
  null and the engine draws its time as before.  A ``fault_end`` also closes the
  fault's share of its window: an mmap_lock start or acquire after it is not the
  fault's fallback (the fault is done; its mmap_read_unlock() may still follow).
* **read-mode madvise.**  A madvise whose behaviour changes no vm_flags (MADV_DONTNEED,
  MADV_FREE, MADV_WILLNEED, ...: lock_mode "read") gets the VMAs its range covers
  (``vma_ids``, none write-locked), the VMA at the range's start (``vma_id``: the one
  lock_vma_under_rcu(mm, start) finds in v6.17's try_vma_read_lock()), its behaviour
  (``advice``), and as ``hold_ns`` its mmap_lock read hold (acquire_returned -> released)
  where the trace shows one, else sys_enter -> sys_exit (a v6.17+ kernel traces no
  mmap_lock event for one under the VMA lock).
* **fault kind** (``fault_kind``, null for writers): which of handle_mm_fault()'s paths
  served the fault, read off the x86 error code the fault's tracepoint prints
  (arch/x86/include/asm/trap_pf.h: X86_PF_PROT, bit 0, the page was present; X86_PF_WRITE,
  bit 1; X86_PF_INSTR, bit 4), the fault's VMA and whether perf accounted the fault as
  major (its ``fault_end`` was a ``major-faults`` sample; perf trace prints ``majfault``
  on the fault itself: ingest/text.py FAULT_MAJOR).  Read in 6.18's mm/memory.c
  (handle_pte_fault(), do_pte_missing(), do_anonymous_page(), do_fault(), do_wp_page(),
  mm_account_fault()) and mm/filemap.c (filemap_fault()); ``fault_kind()`` below is the
  rule, one line a branch:

  - ``anon``: page not present, anonymous private VMA, write - do_anonymous_page()
    allocates a zeroed page (vmf_anon_prepare(), alloc_anon_folio()).
  - ``zero``: page not present, anonymous private VMA, read or instruction fetch -
    do_anonymous_page() maps the shared zero page (``if (!(vmf->flags &
    FAULT_FLAG_WRITE) && !mm_forbids_zeropage(...))``, my_zero_pfn()).
  - ``cow``: page present, write, private VMA (anonymous or file) - do_wp_page():
    wp_page_copy(), or wp_page_reuse() where the anonymous page is this mm's alone.
  - ``file``: a file-backed or shared VMA, not major: page not present - do_fault():
    do_read_fault(), do_cow_fault() (write, private), do_shared_fault() (write,
    shared) - a page-cache hit; or present, write, shared - do_wp_page():
    wp_page_shared(), the file system's page_mkwrite.  A shared anonymous mapping is a
    shmem file (__mmap_new_vma(), mm/vma.c: ``else if (map->vm_flags & VM_SHARED)
    shmem_zero_setup(vma)``; vma_is_anonymous() is ``!vma->vm_ops``), so its faults are
    ``file`` too.  "Shared" is maps' ``s`` (VM_MAYSHARE, fs/proc/task_mmu.c).
  - ``file_io``: a file-backed or shared VMA, major - the page had to be read:
    filemap_fault() found no folio in the page cache (``ret = VM_FAULT_MAJOR``), waited
    for the read with the lock dropped (lock_folio_maybe_drop_mmap(),
    maybe_unlock_mmap_for_io()) and returned VM_FAULT_RETRY under FAULT_FLAG_ALLOW_RETRY;
    mm_account_fault() counts the completing call major (``(ret & VM_FAULT_MAJOR) ||
    (flags & FAULT_FLAG_TRIED)``; do_user_addr_fault() sets FAULT_FLAG_TRIED after a
    VMA-lock attempt that returned VM_FAULT_RETRY | VM_FAULT_MAJOR, and after every
    retry under mmap_lock).  A fault that waited for a read already in flight (its folio
    in the cache, locked or not uptodate) returns VM_FAULT_RETRY without VM_FAULT_MAJOR
    from the VMA-lock attempt, completes minor and is ``file``: its wait shows only in
    ``first_try_ns``.
  - ``other``: everything else - a present page read or fetched (an access error:
    SIGSEGV, protection keys), a major fault on an anonymous VMA (do_swap_page()'s
    swap-in sets VM_FAULT_MAJOR; a retry under mmap_lock - userfaultfd, a locked swap
    folio - sets FAULT_FLAG_TRIED: neither is file I/O, and the engine has no swap),
    a present page in a special mapping (an access error there).
  - ``special``: a special mapping's page not present (or the present bit unknown) -
    ``[vdso]``, ``[vvar]``, ``[uprobes]``: _install_special_mapping(), mm/mmap.c, whose
    vm_ops have a ->fault (special_mapping_fault(), vvar_fault()) but no ->map_pages, so
    do_read_fault() / do_cow_fault() / do_shared_fault() return VM_FAULT_RETRY under the
    VMA lock at once (vmf_can_call_fault(), mm/memory.c: "if (vma->vm_ops->map_pages ||
    !(vmf->flags & FAULT_FLAG_VMA_LOCK)) return 0; vma_end_read(vma); return
    VM_FAULT_RETRY;") and the fault is served under mmap_lock (the engine's retry:
    replay/engine/retry.py).

  Inferred VMAs count as anonymous private; a kernel-mode fault outside every known VMA
  (which gets no inferred VMA) has a null kind.  What the trace cannot tell: a not-present
  fault on an anonymous VMA whose PTE holds a swap entry that the swap cache still had
  (do_swap_page(), minor) or a NUMA-hinting PTE (do_numa_page(); X86_PF_PROT is clear
  for PROT_NONE PTEs) is classed ``anon``/``zero``; a huge-page fault
  (do_huge_pmd_anonymous_page()) is classed as its base-page counterpart.  Without a
  ``fault_end`` - a trace recorded without them (ftrace, ``--no-fault-times``), a fault
  that ended in an error - a fault is taken as not major: its file-backed faults are
  ``file``, none ``file_io``.  Without an x86 error code (perf page-faults samples, perf
  trace, RISC-V's scause, arm64) the present bit is unknown, and the kind is null
  unless the fault was major or is in a special mapping.
* **first try** (``first_try_ns``): for an observed fallback (above), the time from the
  fault's entry (page_fault_user) to the first mmap_lock start_locking in its window -
  lock_mm_and_find_vma()'s mmap_read_trylock(): the attempt under the VMA lock
  (lock_vma_under_rcu(), and for a VM_FAULT_RETRY the handle_mm_fault() call that
  returned it, filemap_fault()'s I/O wait included) before the fault went to
  ``lock_mmap``.  Null for every other op (a kernel-mode fault takes mmap_lock first;
  observed_anon_prepare's trylock is inside the one call under the VMA lock).  Each
  recorded event's cost (see service time) lies inside it.
* **time order.**  Events are taken in timestamp order (a stable sort: ties keep their
  input order), as perf's ordered events deliver them; a trace whose time runs
  backwards on a CPU or a thread (``ingest/order.py`` counts those steps, reported as
  ``out_of_order``) is replayed as if it had been printed sorted.  Ops are numbered in
  that order - it is the causal order the engines keep - and ``seq`` stays the input
  line of each op's first event.  A writer's change is seen by the faults after its
  ``sys_exit`` in that order.
* **the user address space.**  A fault at or above TASK_SIZE_MAX is not a fault on a
  user VMA: handle_page_fault() sends it to do_kern_addr_fault() (arch/x86/mm/fault.c,
  fault_in_kernel_space()), which takes neither mmap_lock nor a VMA lock, so it is no
  op (counted in ``faults_outside_user_space``).  A writer whose range leaves the user
  address space, or whose "address" return value lies above it, cannot have succeeded
  (do_vmi_munmap(): ``start > TASK_SIZE || len > TASK_SIZE - start`` is -EINVAL, mm/vma.c;
  get_unmapped_area() gives -ENOMEM past TASK_SIZE, mm/mmap.c): it changes no VMA, like a
  failed call, and is counted in ``out_of_range_calls``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from .ingest.arch import X86_PF_INSTR, X86_PF_PROT, X86_PF_WRITE  # noqa: F401 - the error code's bits, for the builder

PAGE = 4096
GAP_SPLIT = 1 << 20
# TASK_SIZE_MAX, arch/x86/include/asm/page_64_types.h: (1 << __VIRTUAL_MASK_SHIFT) - PAGE_SIZE,
# the shift 47 with 4-level paging and 56 with 5-level.  The larger one, because a trace
# does not say which: with 4-level paging nothing lies in between (those addresses are
# non-canonical and raise #GP, not a page fault), so no real user fault is misjudged.
TASK_SIZE_MAX = (1 << 56) - PAGE
MAX_ERRNO = 4095  # include/linux/err.h


# include/uapi/asm-generic/mman-common.h, include/uapi/linux/mman.h (MAP_DROPPABLE),
# arch/x86/include/uapi/asm/mman.h (MAP_GROWSDOWN, MAP_LOCKED, MAP_NORESERVE)
MAP_ANONYMOUS = 0x20
MAP_SHARED = 0x01
MAP_TYPE, MAP_DROPPABLE = 0x0F, 0x08
MAP_GROWSDOWN, MAP_LOCKED, MAP_NORESERVE, MAP_STACK, MAP_HUGETLB = 0x100, 0x2000, 0x4000, 0x20000, 0x40000
# the vm_flags a VMA merge compares beyond its protection (include/linux/mm.h, v6.18; VM_READ,
# VM_WRITE, VM_EXEC and VM_SHARED are the tracker's ``prot`` string)
VM_GROWSDOWN, VM_LOCKED, VM_ACCOUNT, VM_NORESERVE = 0x100, 0x2000, 0x00100000, 0x00200000
VM_WIPEONFORK, VM_DONTDUMP, VM_NOHUGEPAGE, VM_DROPPABLE = 0x02000000, 0x04000000, 0x40000000, 1 << 40
# madvise behaviours that change vm_flags, so split/merge VMAs under mmap_write_lock
# (mm/madvise.c, madvise_need_mmap_write() and madvise_update_vma())
MADV_VMA_CHANGING = {
    0: "NORMAL", 1: "RANDOM", 2: "SEQUENTIAL", 10: "DONTFORK", 11: "DOFORK", 12: "MERGEABLE",
    13: "UNMERGEABLE", 14: "HUGEPAGE", 15: "NOHUGEPAGE", 16: "DONTDUMP", 17: "DODUMP",
    18: "WIPEONFORK", 19: "KEEPONFORK",
}

# Bumped when the op builder gives other ops for the same events; ops files stamped
# with an older version are rebuilt before a replay.  2: events in time order, faults
# and calls outside the user address space dropped.  3: service_ns.
# 4: read_hold_ns.  5: read-mode madvise's VMAs, hold and advice.  6: fault_kind and
# first_try_ns.  7: fault kind ``special`` (a special mapping's page not present).
# 8: range_vmas / range_start / range_end.  9: vma_class (a fault's VMA, which the
# engine's anon_vma rules need: replay/engine/retry.py) and vmas_parent.  10: a new mapping
# merges with the next VMA too, by the kernel's rule (flags, pgoff, anon_vma:
# ``AddressSpace.mmap``), and a VMA's anon_vma is tracked (``AnonVmas``): a split-off or
# moved VMA inherits it, a merge passes it on, a kernel-mode write fault prepares it - so
# the first write fault in a VMA that has one is no observed_anon_prepare.
OPS_VERSION = 10

OP_KINDS = ("fault", "mmap", "munmap", "mprotect", "mremap", "brk", "madvise", "exit")

# A fault's kind (module docstring, fault kind; ``fault_kind()``; replay/engine/faultpath.py
# runs each)
FAULT_KINDS = ("anon", "zero", "cow", "file", "file_io", "other", "special")
FK_ANON, FK_ZERO, FK_COW, FK_FILE, FK_FILE_IO, FK_OTHER, FK_SPECIAL = range(len(FAULT_KINDS))
FK_NULL = -1
# What a fault's VMA is, for its kind (``vma_class()``)
VC_NONE, VC_ANON, VC_FILE, VC_SHARED, VC_SPECIAL = range(5)  # no VMA; anonymous private; file private; shared; special
# ... as the ops' ``vma_class`` names them (VC_ANON.. in order; VC_NONE is null)
VMA_CLASSES = ("anon", "file", "shared", "special")

OPS_SCHEMA = {
    "op_id": pl.Int64, "trace_id": pl.Utf8, "mm": pl.Utf8, "pid": pl.Int32, "tid": pl.Int32,
    "kind": pl.Enum(OP_KINDS), "seq": pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64,
    "address": pl.UInt64, "length": pl.Int64, "ret": pl.Int64, "vma_id": pl.Int64,
    "vma_ids": pl.List(pl.Int64), "vmas_created": pl.List(pl.Int64), "vmas_freed": pl.List(pl.Int64),
    "vmas_successor": pl.List(pl.Int64),
    # a writer's VMAs as it leaves them (``apply_writer()``): each VMA it locked or created
    # that is still mapped, and its vm_start / vm_end after the call
    "range_vmas": pl.List(pl.Int64), "range_start": pl.List(pl.UInt64), "range_end": pl.List(pl.UInt64),
    # per VMA the call created (vmas_created, in order): the VMA whose anon_vma it takes -
    # __split_vma()'s original, mremap's source (copy_vma()), both anon_vma_clone() - or -1
    # for a new mapping, which starts without one
    "vmas_parent": pl.List(pl.Int64),
    # a fault's VMA as the fault path sees it (``vma_class()``: VMA_CLASSES); null: none known
    "vma_class": pl.Enum(VMA_CLASSES),
    "write": pl.Boolean, "kernel": pl.Boolean, "fault_kind": pl.Enum(FAULT_KINDS), "lock_mode": pl.Utf8,
    "observed_fallback": pl.Boolean, "observed_anon_prepare": pl.Boolean, "observed_mmap_write": pl.Boolean,
    "hold_ns": pl.Int64, "read_hold_ns": pl.Int64, "service_ns": pl.Int64, "first_try_ns": pl.Int64,
    "think_ns": pl.Int64, "cpu": pl.Int16,
    "advice": pl.Int32,  # madvise's behaviour argument (MADV_*); null for every other op
}


VMAS_SCHEMA = {"vma_id": pl.Int64, "mm": pl.Utf8, "start": pl.UInt64, "end": pl.UInt64, "prot": pl.Utf8,
               "anon": pl.Boolean, "name": pl.Utf8, "inferred": pl.Boolean, "created_ns": pl.Int64, "freed_ns": pl.Int64}
OPS_VERSION_KEY = b"replay.ops_version"


def ops_table(ops: pl.DataFrame):
    """The ops as an Arrow table stamped with the builder's version."""
    t = ops.to_arrow()
    return t.replace_schema_metadata({**(t.schema.metadata or {}), OPS_VERSION_KEY: str(OPS_VERSION).encode()})


def ops_current(path) -> bool:
    """Whether this version of the op builder wrote the ops file at ``path``."""
    import pyarrow.parquet as pq

    return (pq.read_schema(path).metadata or {}).get(OPS_VERSION_KEY) == str(OPS_VERSION).encode()


def causal_violation(path) -> str | None:
    """The first fault in an ops file that comes before the writer creating its VMA - an
    order no replay can keep (the fault waits for that writer) - or None.  The op
    builder never writes one: a writer's VMAs reach only the faults after its exit."""
    import pyarrow.parquet as pq

    o = pl.from_arrow(pq.read_table(path, columns=["op_id", "kind", "vma_id", "vmas_created"]))
    made = (o.filter(pl.col("vmas_created").list.len() > 0).select(pl.col("op_id").alias("creator"), "vmas_created")
            .explode("vmas_created").rename({"vmas_created": "vma_id"}))
    bad = (o.filter(pl.col("kind").cast(pl.Utf8) == "fault").join(made, on="vma_id")
           .filter(pl.col("op_id") < pl.col("creator")).sort("op_id"))
    if not bad.height:
        return None
    r = bad.row(0, named=True)
    return f"fault op {r['op_id']} is on VMA {r['vma_id']}, which the later op {r['creator']} creates"


def vma_class(anon: bool, prot: str, name: str) -> int:
    """A VMA as the fault path sees it (VC_*): anonymous private (vma_is_anonymous(): no
    vm_ops), file-backed private, shared (VM_MAYSHARE: a file's, or a shmem file's for a
    shared anonymous mapping), or a special mapping - a bracketed maps name other than
    the anonymous ones (``[heap]``, ``[stack]``, ``[anon:NAME]``; ``[anon_shmem:NAME]``
    is shmem, shared)."""
    if name.startswith("[") and not (name in ("[heap]", "[stack]") or name.startswith("[anon:")):
        return VC_SHARED if name.startswith("[anon_shmem:") else VC_SPECIAL
    if prot.endswith("s"):
        return VC_SHARED
    return VC_ANON if anon else VC_FILE


def fault_kind(present: int, write: int, instr: int, vma: int, major: int) -> int:
    """The fault's kind as an index into FAULT_KINDS, or FK_NULL (module docstring,
    fault kind).  ``present``, ``write``, ``instr``: the error code's X86_PF_PROT,
    X86_PF_WRITE and X86_PF_INSTR (1, 0, or -1 unknown); ``vma``: its VC_* class;
    ``major``: 1 when perf accounted the fault major, else 0 or -1.  (Compiled into the
    op builder's step as it is: ints only.)"""
    if vma == VC_NONE:  # the trace shows no VMA: which path is unknown
        return FK_NULL
    file = vma == VC_FILE or vma == VC_SHARED
    if major == 1:  # mm_account_fault(): VM_FAULT_MAJOR or FAULT_FLAG_TRIED
        return FK_FILE_IO if file else FK_OTHER
    if not file and vma != VC_ANON:  # a special mapping: do_fault() -> ->fault(), or an access error
        return FK_OTHER if present == 1 else FK_SPECIAL
    if present < 0:
        return FK_NULL
    if present == 1:  # handle_pte_fault(): a present PTE
        if write == 1 and instr != 1:  # do_wp_page()
            return FK_FILE if vma == VC_SHARED else FK_COW  # wp_page_shared() / wp_page_copy()
        return FK_OTHER
    if file:  # do_pte_missing() -> do_fault()
        return FK_FILE
    return FK_ANON if write == 1 else FK_ZERO  # do_anonymous_page()


class MapsError(ValueError):
    """A maps snapshot that is not /proc/PID/maps text."""


def writer_in_flight(faults: "pl.DataFrame", writers: "pl.DataFrame", on=("vma_id",)) -> "pl.Series":
    """For each fault (columns ``on``, ``start_ns``, ``end_ns``), whether a writer that
    write-locks its VMA (``lock_mode`` "write", the fault's VMA among its ``vma_ids``)
    was in flight during it - between the writer's sys_enter and sys_exit (``start_ns``,
    ``end_ns``; a writer without an end counts at its start; a fault without an end, at
    its start).  That is the shape of a VMA-lock abort (vma_start_read() found the VMA
    write-locked); a fallback without one is VM_FAULT_RETRY or a fault that found no
    VMA.  The op builder's fallbacks, the engine's page-cache retries
    (replay/engine/retry.py) and ``replay validate`` read it here."""
    on = list(on)
    w = (writers.filter(pl.col("lock_mode").cast(pl.Utf8) == "write")
         .select(*[c for c in on if c != "vma_id"], pl.col("start_ns").alias("_ws"), pl.col("end_ns").alias("_we"),
                 pl.col("vma_ids").alias("vma_id")).explode("vma_id"))
    f = faults.select(*on, "start_ns", "end_ns").with_row_index("_i")
    hit = f.join(w, on=on, how="inner").filter(
        (pl.col("_ws") <= pl.col("end_ns").fill_null(pl.col("start_ns")))
        & (pl.col("_we").fill_null(pl.col("_ws")) >= pl.col("start_ns")))["_i"].unique()
    return f["_i"].is_in(hit.implode()).alias("writer")


def is_err_value(ret) -> bool:
    """IS_ERR_VALUE(): a syscall return in the last page of the address space is -errno."""
    return ret is not None and -MAX_ERRNO <= ret < 0


def is_user_address(a) -> bool:
    return a is not None and 0 <= a < TASK_SIZE_MAX


def user_range(start, length) -> tuple[int, int] | None:
    """[start, start + length) widened to pages, or None when it leaves the user
    address space (a negative length included: the kernel reads it as a huge size_t)."""
    length = length or 0
    if not is_user_address(start) or length < 0:
        return None
    lo, hi = page_down(start), page_up(start + length)
    return (lo, hi) if hi <= TASK_SIZE_MAX else None


def page_down(a: int) -> int:
    return a & ~(PAGE - 1)


def page_up(a: int) -> int:
    return (a + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Vma:
    id: int
    start: int
    end: int
    prot: str  # "rwxp"-style from maps, or derived from PROT_* bits
    anon: bool
    name: str = ""
    inferred: bool = False
    created_ns: int | None = None
    freed_ns: int | None = None
    # vm_flags beyond the protection (VM_* above: ``mmap_vm_flags()``), None unknown (a file
    # mapping: never merged, as the tracker cannot tell its file); vm_pgoff, for an anonymous
    # VMA the page its pages were first mapped at (None: unknown)
    flags: int | None = None
    pgoff: int | None = None


def mmap_vm_flags(prot: int, flags: int) -> int:
    """The vm_flags beyond VM_READ/WRITE/EXEC/SHARED that mmap(prot, flags) gives a private
    anonymous mapping in 6.18: do_mmap() (mm/mmap.c) - calc_vm_flag_bits() (include/linux/mman.h:
    MAP_GROWSDOWN, MAP_LOCKED, MAP_STACK -> VM_NOHUGEPAGE with CONFIG_TRANSPARENT_HUGEPAGE, taken
    as set), MAP_DROPPABLE's VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP, MAP_NORESERVE's
    VM_NORESERVE (unless vm.overcommit_memory is 2, which a trace does not show: taken as not) -
    and __mmap_prepare()'s VM_ACCOUNT for an accountable_mapping() (mm/vma.c: private, writable,
    not VM_NORESERVE).  mm->def_flags (mlockall(MCL_FUTURE)) is the same for every mapping of
    the mm, so it changes no comparison."""
    vm = 0
    if flags & MAP_GROWSDOWN:
        vm |= VM_GROWSDOWN
    if flags & MAP_LOCKED:
        vm |= VM_LOCKED
    if flags & MAP_STACK:
        vm |= VM_NOHUGEPAGE
    if flags & MAP_TYPE == MAP_DROPPABLE:
        vm |= VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP
    if flags & MAP_NORESERVE:
        vm |= VM_NORESERVE
    if prot & 2 and not vm & VM_NORESERVE:
        vm |= VM_ACCOUNT
    return vm


def maps_vm_flags(perms: str, anon: bool, name: str) -> int | None:
    """A maps snapshot's VMA's vm_flags beyond its protection, as far as maps shows them:
    an anonymous private VMA is taken as a plain mmap()'s (maps does not show VM_NORESERVE,
    VM_LOCKED, VM_NOHUGEPAGE: smaps' VmFlags would); ``[stack]`` is VM_STACK_FLAGS'
    VM_GROWSDOWN | VM_ACCOUNT (include/linux/mm.h), ``[heap]`` do_brk_flags()'s VM_ACCOUNT
    (mm/vma.c).  None for every other VMA (file, shared, special: never merged)."""
    if vma_class(anon, perms, name) != VC_ANON:
        return None
    if name == "[stack]":
        return VM_GROWSDOWN | VM_ACCOUNT
    return mmap_vm_flags(2 if perms[1] == "w" else 0, MAP_ANONYMOUS)


def anon_name(name: str) -> str:
    """The anon_vma_name() a merge compares (is_mergeable_vma(): anon_vma_name_eq()): prctl's
    ``[anon:NAME]``; ``[heap]`` and ``[stack]`` are maps' names for address ranges, no VMA's."""
    return name if name.startswith("[anon:") else ""


class AnonVmas:
    """Each VMA's anon_vma, by VMA id: 0 none, else the id of the VMA that prepared it - the
    kernel's ``vma->anon_vma`` as far as the trace shows it.  The op builder's step sets it at
    a VMA's first write fault (``opstream._advance``: __anon_vma_prepare()); the tracker copies
    it to a split-off or moved VMA (anon_vma_clone()) and to the VMA a merge keeps
    (dup_anon_vma()), and compares it before merging (is_mergeable_anon_vma()).  This one is a
    dict; the builder's reads and writes the step's array."""

    def __init__(self):
        self.of: dict[int, int] = {}

    def get(self, vid: int) -> int:
        return self.of.get(vid, 0)

    def set(self, vid: int, av: int) -> None:
        self.of[vid] = av


def prot_str(prot: int, shared: bool = False) -> str:
    return ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + ("s" if shared else "p")


def parse_maps(text: str) -> list[tuple[int, int, str, bool, str]]:
    """(start, end, perms, anonymous, name) for each line of a /proc/PID/maps snapshot."""
    out = []
    for no, ln in enumerate(text.splitlines(), 1):
        if not ln.strip() or ln.startswith("#"):
            continue
        parts = ln.split(None, 5)
        try:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            inode = int(parts[4]) if len(parts) > 4 else 0
            perms = parts[1]
        except (ValueError, IndexError):
            raise MapsError(f"line {no} is not a /proc/PID/maps line: {ln[:80]!r}") from None
        if len(perms) != 4 or lo >= hi:
            raise MapsError(f"line {no} is not a /proc/PID/maps line: {ln[:80]!r}")
        name = parts[5].strip() if len(parts) > 5 else ""
        out.append((lo, hi, perms, inode == 0 and not name.startswith("/"), name))
    return out


class AddressSpace:
    """One mm's VMAs as a sorted, non-overlapping interval map."""

    def __init__(self, ids: "IdSource", anon: AnonVmas | None = None):
        self.ids = ids
        self.anon = anon if anon is not None else AnonVmas()
        self.starts: list[int] = []
        self.vmas: list[Vma] = []
        self.all: list[Vma] = []
        self.created: list[int] = []  # journal of the writer call being replayed
        self.made: list[Vma] = []  # the same VMAs (created) as objects
        self.freed: list[int] = []
        self.successor: dict[int, int] = {}  # a VMA merged away -> the VMA that absorbed it
        self.parent: dict[int, int] = {}  # a VMA split off or moved -> the one it was copied from
        self.brk_start: int | None = None  # what brk(0) reported

    # -- primitives ------------------------------------------------------------
    def _insert(self, v: Vma) -> None:
        i = bisect.bisect_left(self.starts, v.start)
        self.starts.insert(i, v.start)
        self.vmas.insert(i, v)

    def _remove(self, v: Vma, now) -> None:
        i = self.vmas.index(v)
        del self.starts[i]
        del self.vmas[i]
        v.freed_ns = now
        self.freed.append(v.id)

    def new(self, start, end, prot, anon, name="", now=None, inferred=False, flags=None, pgoff=None) -> Vma:
        v = Vma(self.ids.next(), start, end, prot, anon, name, inferred, created_ns=now, flags=flags, pgoff=pgoff)
        self.all.append(v)
        self._insert(v)
        self.created.append(v.id)
        self.made.append(v)
        return v

    def overlapping(self, start: int, end: int) -> list[Vma]:
        i = bisect.bisect_right(self.starts, start) - 1
        i = max(i, 0)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            if self.vmas[i].end > start:
                out.append(self.vmas[i])
            i += 1
        return out

    def find(self, addr: int) -> Vma | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and self.vmas[i].end > addr:
            return self.vmas[i]
        return None

    def split(self, v: Vma, at: int, now) -> Vma:
        """__split_vma(new_below=0): v keeps [start, at), a new VMA gets [at, end) - a copy
        (vm_area_dup(): flags; ``new->vm_pgoff += ((addr - vma->vm_start) >> PAGE_SHIFT)``)
        with v's anon_vma (anon_vma_clone()), mm/vma.c v6.18."""
        pgoff = None if v.pgoff is None else v.pgoff + (at - v.start) // PAGE
        upper = Vma(self.ids.next(), at, v.end, v.prot, v.anon, v.name, v.inferred, created_ns=now, flags=v.flags,
                    pgoff=pgoff)
        self.parent[upper.id] = self.parent.get(v.id, v.id) if v.id in self.created else v.id
        self.anon.set(upper.id, self.anon.get(v.id))
        self.all.append(upper)
        self.created.append(upper.id)
        self.made.append(upper)
        v.end = at
        self._insert(upper)
        return upper

    # -- writers: each returns the VMAs it write-locks ---------------------------------
    def carve(self, start: int, end: int, now) -> tuple[list[Vma], list[Vma]]:
        """Split the VMAs overlapping [start, end) at its edges.  Returns (the VMAs that
        were there, write-locked by the writer; the pieces now inside the range)."""
        locked, inside = [], []
        for v in self.overlapping(start, end):
            locked.append(v)
            if v.start < start:
                v = self.split(v, start, now)
            if v.end > end:
                self.split(v, end, now)
            inside.append(v)
        return locked, inside

    def unmap(self, start: int, end: int, now) -> list[Vma]:
        locked, inside = self.carve(start, end, now)
        for v in inside:
            self._remove(v, now)
        return locked

    # -- merging (mm/vma.c, v6.18) ----------------------------------------------------------
    def _mergeable(self, v: Vma, prot: str, flags: int | None, name: str, anon_vma: int) -> bool:
        """is_mergeable_vma() and is_mergeable_anon_vma() of existing VMA ``v`` with a range of
        this protection, flags, name and anon_vma (0 none): both anonymous private (no
        vm_file; a file's mapping never merges here - the trace has its fd, not its file -
        nor a shared anonymous one, whose shmem file is its own), equal vm_flags (the
        protection and ``Vma.flags``; VM_SOFTDIRTY is not tracked), equal anon_vma_name(),
        and anon_vmas that are one or where one side has none (the fork child test
        vma_is_fork_child() never applies: fork is not traced).  The mempolicy (mbind())
        and userfaultfd context are not traced: taken as equal."""
        if v.inferred or v.flags is None or flags is None or vma_class(v.anon, v.prot, v.name) != VC_ANON:
            return False
        if v.prot != prot or v.flags != flags or anon_name(v.name) != anon_name(name):
            return False
        mine = self.anon.get(v.id)
        return not mine or not anon_vma or mine == anon_vma

    def _absorb(self, keep: Vma, gone: Vma, now) -> None:
        """vma_expand() / commit_merge(): ``keep`` takes ``gone``'s range and, having no
        anon_vma of its own, its anon_vma (dup_anon_vma()); ``gone`` is freed."""
        keep.start, keep.end = min(keep.start, gone.start), max(keep.end, gone.end)
        if not self.anon.get(keep.id):
            self.anon.set(keep.id, self.anon.get(gone.id))
        self._remove(gone, now)
        self.successor[gone.id] = keep.id

    def mmap(self, start: int, end: int, prot: str, anon: bool, name: str, now, flags: int | None = None,
             pgoff: int | None = None, anon_vma: int = 0, hugetlb: bool = False) -> list[Vma]:
        """A new mapping of [start, end) (mmap, and mremap's copy): what it replaces is
        unmapped (MAP_FIXED), then __mmap_region() tries vma_merge_new_range() before
        __mmap_new_vma().  ``flags``: ``Vma.flags`` (None: never merged); ``pgoff``: the
        range's vm_pgoff (an anonymous mmap's is ``addr >> PAGE_SHIFT``, do_mmap()); ``anon_vma``:
        the one it brings (mremap's copy_vma(): the source's), 0 none; ``hugetlb``:
        MAP_HUGETLB, a hugetlbfs file (ksys_mmap_pgoff()), never merged.

        vma_merge_new_range(): with the previous VMA if it ends at ``start`` and
        can_vma_merge_after() (mergeable, ``prev->vm_pgoff + vma_pages(prev) == pgoff``); with
        the next if it starts at ``end`` and can_vma_merge_before() (mergeable,
        ``next->vm_pgoff == pgoff + pglen``) and, merging both, can_vma_merge_right()'s
        ``!prev->anon_vma || !next->anon_vma || prev->anon_vma == next->anon_vma``.  Both: prev
        grows over the range and next (vma_expand(), next freed, its anon_vma passed on
        by dup_anon_vma()); prev only: prev grows; next only: next grows down
        (``vmg->target = next``) and takes ``pgoff``.  The VMAs grown or freed are
        write-locked (vma_expand(): vma_start_write(target), vma_start_write(next))."""
        locked = self.unmap(start, end, now)  # MAP_FIXED over existing mappings
        if anon and pgoff is None:
            pgoff = start // PAGE  # do_mmap(): "Set pgoff according to addr for anon_vma"
        if anon and not hugetlb and flags is not None and pgoff is not None:
            prev, nxt = self.find(start - 1), self.find(end)
            left = (prev is not None and prev.end == start and self._mergeable(prev, prot, flags, name, anon_vma)
                    and prev.pgoff is not None and prev.pgoff + (prev.end - prev.start) // PAGE == pgoff)
            right = (nxt is not None and nxt.start == end and self._mergeable(nxt, prot, flags, name, anon_vma)
                     and nxt.pgoff == pgoff + (end - start) // PAGE)
            if left and right:
                a, b = self.anon.get(prev.id), self.anon.get(nxt.id)
                right = not a or not b or a == b
            target = prev if left else nxt if right else None
            if target is not None:
                target.start, target.end = min(target.start, start), max(target.end, end)
                if target is nxt:
                    target.pgoff = pgoff
                    self.starts[self.vmas.index(nxt)] = start
                if anon_vma and not self.anon.get(target.id):  # vma_expand(): dup_anon_vma(target, copied_from)
                    self.anon.set(target.id, anon_vma)
                if left and right:
                    self._absorb(prev, nxt, now)
                    return locked + [prev, nxt]
                return locked + [target]
        v = self.new(start, end, prot, anon, name, now, flags=flags, pgoff=pgoff)
        if anon_vma:
            self.anon.set(v.id, anon_vma)
        return locked

    def mprotect(self, start: int, end: int, prot: str, now) -> list[Vma]:
        """mprotect_fixup() (mm/mprotect.c, v6.18) on each piece of [start, end): the new
        protection, and VM_ACCOUNT as it changes it - charged when a piece first becomes
        writable (``if (!(oldflags & (VM_ACCOUNT|VM_WRITE|VM_HUGETLB|VM_SHARED|VM_NORESERVE)))
        newflags |= VM_ACCOUNT``), dropped when an anonymous one without an anon_vma stops
        being (``else if ((oldflags & VM_ACCOUNT) && vma_is_anonymous(vma) && !vma->anon_vma)``);
        then merges with the neighbours that now match (vma_modify_flags() ->
        vma_merge_existing_range(): the same tests as a new mapping's, ``_mergeable()``, and
        contiguous pgoffs)."""
        locked, inside = self.carve(start, end, now)
        write = prot[1] == "w"
        for v in inside:
            if v.flags is not None:
                if write and v.prot[1] != "w" and not v.flags & (VM_ACCOUNT | VM_NORESERVE):
                    v.flags |= VM_ACCOUNT
                elif not write and v.flags & VM_ACCOUNT and v.anon and not self.anon.get(v.id):
                    v.flags &= ~VM_ACCOUNT
            v.prot = prot[:3] + v.prot[3]
        around = self.overlapping(start - 1, end + 1)
        v = around[0] if around else None
        while v is not None and v.start <= end:
            nxt = self.find(v.end)
            if nxt is not None and nxt.start == v.end and self._mergeable(v, nxt.prot, nxt.flags, nxt.name,
                                                                         self.anon.get(nxt.id)) \
                    and v.pgoff is not None and v.pgoff + (v.end - v.start) // PAGE == nxt.pgoff:
                for x in (v, nxt):
                    if x not in locked:
                        locked.append(x)
                self._absorb(v, nxt, now)
            else:
                v = nxt
        return locked

    def modify_flags(self, start: int, end: int, now) -> list[Vma]:
        """madvise that changes vm_flags: split at the range edges, lock what it covers."""
        return self.carve(start, end, now)[0]

    def resize(self, addr: int, old_end: int, new_end: int, now) -> list[Vma]:
        """Grow or shrink the mapping at addr in place (mremap without a move, brk)."""
        if new_end < old_end:
            return self.unmap(new_end, old_end, now)
        v = self.find(addr) or self.find(old_end - 1)
        if v is None:  # a VMA the trace never showed: its flags unknown, never merged
            self.new(page_down(addr), new_end, "rw-p", True, "", now)
            return []
        v.end = max(v.end, new_end)
        return [v]


class IdSource:
    def __init__(self):
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


@dataclass
class BuildReport:
    threads: int = 0
    processes: int = 0
    rule: str = ""
    unattributed: int = 0
    unpaired_enter: int = 0
    unmatched_exit: int = 0
    fault_ends_unpaired: int = 0  # fault_end events paired with no fault (see service time)
    failed_calls: int = 0
    out_of_range_calls: int = 0
    faults_outside_user_space: int = 0
    out_of_order: int = 0
    faults_in_inferred: int = 0
    inferred_vmas: int = 0
    seeded_vmas: int = 0
    notes: list = field(default_factory=list)


def build_ops(ev: pl.DataFrame, trace_id: str, maps_snapshot: str | None = None,
              same_mm: bool = False) -> tuple[pl.DataFrame, pl.DataFrame, BuildReport]:
    """events of one trace (in memory) -> (ops, vmas, report).  The streaming builder
    (``replay/opstream.py``) over the frame; ``build_ops_file`` reads and writes Parquet."""
    from .opstream import build_in_memory

    ops, vmas, rep = build_in_memory(ev.to_arrow(), trace_id, maps_snapshot, same_mm)
    return pl.from_arrow(ops), vmas, rep


def build_ops_file(events_path, trace_id: str, maps_snapshot: str | None, same_mm: bool, ops_path: str,
                   vmas_path: str, metadata: dict | None = None) -> BuildReport:
    """An events Parquet file -> ops and vmas Parquet files, in bounded memory (the
    events are read a batch at a time, the ops written a row group at a time)."""
    from .opstream import Events, build

    return build(Events(events_path), trace_id, maps_snapshot, same_mm, ops_path, vmas_path, metadata)


def ops_summary(path) -> dict:
    """Counts over an ops file, read a batch at a time: ops, user and kernel faults, the
    observed fallbacks, per kind (in OP_KINDS order) the ops and their mean duration,
    and the faults of each fault kind.  Counted on the dictionary codes of ``kind`` and
    ``fault_kind`` in numpy (casting them to strings and grouping cost 0.5 s per 2 M ops)."""
    import numpy as np
    import pyarrow.parquet as pq

    s = {"ops": 0, "user_faults": 0, "kernel_faults": 0, "observed_fallbacks": 0, "observed_anon_prepare": 0,
         "faults_taking_mmap_write": 0, "faults_with_service": 0}
    kinds = {k: [0, 0, 0] for k in OP_KINDS}  # ops, durations known, their sum
    fault_kinds = dict.fromkeys((*FAULT_KINDS, "unknown"), 0)
    cols = ["kind", "kernel", "observed_fallback", "observed_anon_prepare", "observed_mmap_write", "start_ns", "end_ns",
            "service_ns", "fault_kind"]

    def codes(col, names):  # a dictionary column as codes into ``names`` (-1: null)
        if not pa.types.is_dictionary(col.type):
            col = col.dictionary_encode()
        lut = np.array([names.index(x) for x in col.dictionary.to_pylist()] + [-1], np.int64)
        return lut[col.indices.fill_null(len(lut) - 1).to_numpy(zero_copy_only=False).astype(np.int64)]

    def true(col, sel=None):  # how many rows (of ``sel``) hold True (nulls: not)
        v = col.fill_null(False).to_numpy(zero_copy_only=False) if col.null_count else col.to_numpy(zero_copy_only=False)
        return int(np.count_nonzero(v if sel is None else v & sel))

    def ints(col):  # values (0 at nulls) and validity
        ok = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else np.ones(len(col), np.bool_)
        return (col.fill_null(0) if col.null_count else col).to_numpy(zero_copy_only=False).astype(np.int64), ok

    nk = len(OP_KINDS)
    for b in pq.ParquetFile(str(path)).iter_batches(batch_size=1 << 18, columns=cols):
        s["ops"] += b.num_rows
        s["faults_with_service"] += b.num_rows - b.column("service_ns").null_count
        kind = codes(b.column("kind"), list(OP_KINDS))
        if (kind < 0).any():
            raise ValueError(f"{path}: an op without a kind")
        fault = kind == OP_KINDS.index("fault")
        kernel = b.column("kernel")
        user = fault & ~kernel.fill_null(True).to_numpy(zero_copy_only=False)
        s["user_faults"] += int(np.count_nonzero(user))
        s["kernel_faults"] += true(kernel)
        for key, col in (("observed_fallbacks", "observed_fallback"), ("observed_anon_prepare", "observed_anon_prepare"),
                         ("faults_taking_mmap_write", "observed_mmap_write")):
            s[key] += true(b.column(col), user)
        fk = codes(b.column("fault_kind"), list(FAULT_KINDS))[fault]
        fault_kinds["unknown"] += int(np.count_nonzero(fk < 0))
        for i, n in enumerate(np.bincount(fk[fk >= 0], minlength=len(FAULT_KINDS)).tolist()):
            fault_kinds[FAULT_KINDS[i]] += n
        (start, start_ok), (end, end_ok) = ints(b.column("start_ns")), ints(b.column("end_ns"))
        known = start_ok & end_ok
        n_all = np.bincount(kind, minlength=nk)
        n_known = np.bincount(kind[known], minlength=nk)
        tot = np.zeros(nk, np.int64)
        np.add.at(tot, kind[known], (end - start)[known])
        for i in np.flatnonzero(n_all).tolist():
            k = kinds[OP_KINDS[i]]
            k[0] += int(n_all[i])
            k[1] += int(n_known[i])
            k[2] += int(tot[i])
    s["kinds"] = {k: (n, (tot / known) if known else None) for k, (n, known, tot) in kinds.items() if n}
    s["fault_kinds"] = {k: n for k, n in fault_kinds.items() if n}  # FAULT_KINDS order; "unknown": null kinds
    return s


def apply_writer(asp: AddressSpace, kind: str, a: dict, ret, now, rep: BuildReport):
    """Replay one writer on ``asp`` at its exit (exit_mmap: at the event): (the VMAs it
    write-locks, the VMAs it created, freed, what each freed one merged into (-1: none),
    its ranges, its lock mode, and per VMA created the VMA whose anon_vma it takes, -1
    none: ops vmas_parent).  A failed call and one outside the user address space
    change nothing.

    Its ranges: (ids, vm_starts, vm_ends) of every VMA a write-mode call locked or
    created that is still mapped after it, as the call leaves them - the vm_start/vm_end
    a split (__split_vma()), a merge (vma_expand(), vma_merge_existing_range()), a
    shrink or a growth (vma_shrink(), do_brk_flags(), mremap's vma_expand()) stores
    (mm/vma.c vma_set_range(), v6.18) - so the engine knows each VMA's range as the
    writers change it (lock_vma_under_rcu()'s range check: replay/engine/micro.py)."""
    asp.created, asp.freed, asp.made = [], [], []
    asp.parent = {}
    none = ([], [], [])
    if kind == "exit":
        locked = list(asp.vmas)
        for v in locked:
            asp._remove(v, now)
        ids = [v.id for v in locked]
        return ids, [], list(ids), [-1] * len(locked), none, "write", []
    if is_err_value(ret):
        rep.failed_calls += 1
        return [], [], [], [], none, "write", []
    try:
        locked, lock = _apply(asp, kind, a, ret, now)
    except _OutOfRange:
        rep.out_of_range_calls += 1
        return [], [], [], [], none, "write", []
    both = set(asp.created) & set(asp.freed)  # split off and unmapped in the same call
    created = [x for x in asp.created if x not in both]
    freed = [x for x in asp.freed if x not in both]
    gone = set(asp.freed)
    left = {} if lock != "write" else {v.id: v for v in (*locked, *asp.made) if v.id not in gone}
    ranged = [left[x] for x in sorted(left)]
    ranges = ([v.id for v in ranged], [v.start for v in ranged], [v.end for v in ranged])
    return (sorted({v.id for v in locked}), created, freed, [asp.successor.get(x, -1) for x in freed], ranges, lock,
            [asp.parent.get(x, -1) for x in created])


class _OutOfRange(Exception):
    """A writer call whose range leaves the user address space."""


def _range(start, length) -> tuple[int, int]:
    r = user_range(start, length)
    if r is None:
        raise _OutOfRange
    return r


def _apply(asp: AddressSpace, kind: str, a: dict, ret: int, now) -> tuple[list[Vma], str]:
    """Replay one successful writer call on ``asp``: (the VMAs it write-locks, its lock
    mode).  An empty range changes no VMA (the kernel refuses it, or returns at once).
    Raises _OutOfRange before changing anything."""
    if kind == "mmap":
        lo, hi = _range(ret, a["len"])
        flags = a["flags"] or 0
        prot = prot_str(a["prot"] or 0, bool(flags & MAP_SHARED))
        anon = bool(flags & MAP_ANONYMOUS)
        vm = mmap_vm_flags(a["prot"] or 0, flags) if anon and not flags & MAP_SHARED else None
        return (asp.mmap(lo, hi, prot, anon, "", now, flags=vm, hugetlb=bool(flags & MAP_HUGETLB))
                if lo < hi else []), "write"
    if kind in ("munmap", "mprotect"):
        lo, hi = _range(a["address"], a["len"])
        if lo == hi:
            return [], "write"
        if kind == "munmap":
            return asp.unmap(lo, hi, now), "write"
        return asp.mprotect(lo, hi, prot_str(a["prot"] or 0), now), "write"
    if kind == "mremap":
        old, old_end = _range(a["address"], a["len"])
        if ret == old:
            _, new_end = _range(old, page_up(a["new_len"] or 0))
            return asp.resize(old, old_end, new_end, now), "write"
        lo, hi = _range(ret, page_up(a["new_len"] or 0))  # moved: the old range goes, a new VMA takes the pages
        src = asp.find(old)
        prot, anon = (src.prot, src.anon) if src else ("rw-p", True)
        # copy_vma(): the source's flags, name, anon_vma and pgoff (of the page at ``old``)
        flags, name = (src.flags, src.name) if src else (None, "")
        pgoff = src.pgoff + (old - src.start) // PAGE if src is not None and src.pgoff is not None else None
        av = asp.anon.get(src.id) if src is not None else 0
        locked = asp.unmap(old, old_end, now)
        moved = len(asp.created)
        if src is not None and src.pgoff is None:
            flags = None  # pgoff unknown: never merged
        locked += asp.mmap(lo, hi, prot, anon, name, now, flags=flags, pgoff=pgoff, anon_vma=av) if lo < hi else []
        for x in asp.created[moved:]:  # copy_vma(): anon_vma_clone(new_vma, vma)
            if src is not None:
                asp.parent[x] = asp.parent.get(src.id, src.id) if src.id in asp.created else src.id
        return locked, "write"
    if kind == "brk":
        heap = next((v for v in asp.vmas if v.name == "[heap]"), None)
        req = a["address"] or 0
        if not req:
            asp.brk_start = ret  # brk(0) reports the current break
            return [], "none"
        if ret != req:  # the break did not move (brk() returns the old one on failure)
            return [], "write"
        if heap is not None:
            _, new_end = _range(heap.start, ret - heap.start)
            return asp.resize(heap.start, heap.end, new_end, now), "write"
        if asp.brk_start:
            _, hi = _range(asp.brk_start, ret - asp.brk_start)
            if asp.brk_start < hi:  # do_brk_flags(): VM_DATA_DEFAULT_FLAGS | VM_ACCOUNT, pgoff addr >> PAGE_SHIFT
                asp.new(asp.brk_start, hi, "rw-p", True, "[heap]", now, flags=VM_ACCOUNT, pgoff=asp.brk_start // PAGE)
        return [], "write"
    if kind == "madvise":
        if a["flags"] not in MADV_VMA_CHANGING:
            # e.g. MADV_DONTNEED zaps pages under mmap_read_lock (up to v6.16) or one VMA's
            # lock (v6.17): the VMAs its range covers, none of them write-locked
            lo, hi = _range(a["address"], a["len"])
            return (asp.overlapping(lo, hi) if lo < hi else []), "read"
        lo, hi = _range(a["address"], a["len"])
        return (asp.modify_flags(lo, hi, now) if lo < hi else []), "write"
    return [], "write"
