"""The kernel's page-fault locking designs, each as a layout plus micro-op programs.

Every program mirrors the kernel function it models, named in the comments; the
semantic parameters say what differs between designs.  Sources:

* mmap_lock: arch/x86/mm/fault.c do_user_addr_fault() up to v6.3 (mmap_read_trylock,
  then mmap_read_lock).
* Every x86 fault, user or kernel mode and whatever the lock design, starts in
  exc_page_fault() with ``prefetchw(&current->mm->mmap_lock)``, until "x86/mm: stop
  prefetching the mmap semaphore on page faults" (Mateusz Guzik, posted 1 Apr 2025,
  merged after v6.15): so every model but mainline (whose layouts are 6.18's)
  prefetches mmap_lock's count line at each fault's entry - the per-VMA designs too,
  where it moves a line the fault then never uses.
  kernel/locking/rwsem.c since commit 64489e78004c ("locking/rwsem: Implement a new
  locking scheme", v5.3) for the rw_semaphore.
* pervma: commit 50ee32537206 ("mm: introduce lock_vma_under_rcu to be used from arch-
  specific code", v6.4) and the per-VMA lock series it ends: include/linux/mm.h
  vma_start_read()/vma_start_write()/vma_end_write_all() with ``struct vma_lock``
  allocated from its own slab (mm/mmap.c vma_lock_cachep) until v6.15.
* v7, v8: "move per-vma lock into vm_area_struct" (Suren Baghdasaryan), postings v7
  (Dec 2024) and v8 (Jan 2025): vm_refcnt with VMA_LOCK_OFFSET, SLAB_TYPESAFE_BY_RCU.
* mainline: v10 of that series as merged for v6.15 ("mm: replace vm_lock and detached
  flag with a reference count", "mm: move lesser used vma_area_struct members into the
  last cacheline", "mm: make vma cache SLAB_TYPESAFE_BY_RCU"; hashes differ between the
  mm tree and mainline, so titles are cited): mm/mmap_lock.c vma_start_read(), __vma_start_write(),
  lock_vma_under_rcu(); include/linux/mmap_lock.h vma_refcount_put(),
  is_vma_writer_only(); mm_lock_seq as a seqcount_t (odd while write-locked).

Slab caches (``Struct.slab_flags``; replay/slub.py turns them into slab geometry):

* up to v6.14, kernel/fork.c proc_caches_init(): ``vm_area_cachep =
  KMEM_CACHE(vm_area_struct, SLAB_PANIC|SLAB_ACCOUNT)`` and, from "mm: move vma locks out
  of vm_area_struct" (v6.4), ``vma_lock_cachep = KMEM_CACHE(vma_lock,
  SLAB_PANIC|SLAB_ACCOUNT)``; with CONFIG_PER_VMA_LOCK vm_area_free() is
  ``call_rcu(&vma->vm_rcu, vm_area_free_rcu_cb)``, whose callback frees the vma_lock and
  the VMA (``Layout.free_after_gp``); without it (up to v6.3) kmem_cache_free() at once.
* v7/v8 and mainline, "mm: make vma cache SLAB_TYPESAFE_BY_RCU" (v7 16/17, Dec 2024;
  kernel/fork.c in v6.15, mm/vma_init.c vma_state_init() later):
  ``kmem_cache_create("vm_area_struct", sizeof(struct vm_area_struct), &args,
  SLAB_HWCACHE_ALIGN|SLAB_PANIC|SLAB_TYPESAFE_BY_RCU|SLAB_ACCOUNT)`` with
  ``args.use_freeptr_offset = true, .freeptr_offset = offsetof(struct vm_area_struct,
  vm_freeptr)`` - vm_freeptr in a union with vm_start/vm_end, so the free pointer stays
  inside the object (earlier postings, v5, had a constructor, which puts it after).

Struct offsets follow include/linux/mm_types.h for x86-64 without debug options;
mm_struct and the mainline vm_area_struct are the 6.18 layouts read with pahole from the
BTF of the kernel on our machines.
"""

from __future__ import annotations

from ..engine.isa import Op
from .base import Layout, Model, Struct

VMA_LOCK_OFFSET = 0x40000000

# mm_struct as the kernel on our machines lays it out (pahole -C mm_struct
# /sys/kernel/btf/vmlinux, Linux 6.18.44, x86-64): the maple tree root in line 1;
# mmap_lock's count at 184 (line 2) and its owner at 192 (line 3), straddling two lines;
# vma_writer_wait and mm_lock_seq after mmlist, in the same line as the owner.  Older
# kernels move these by a few fields; the lines they share are the same.
MM = Struct("mm_struct", 1472, 64, {
    "mm_mt": 64, "mmap_lock.count": 184, "mmap_lock.owner": 192, "mmlist": 224, "vma_writer_wait": 240,
    "mm_lock_seq": 248,
})

# kmem_cache_create() flags, as in the kernel sources cited in the module docstring
PLAIN_SLAB = ("SLAB_PANIC", "SLAB_ACCOUNT")
TYPESAFE_SLAB = ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT")

# vm_area_struct before v6.15: 176 bytes from a plain slab (16-byte aligned objects),
# vm_lock_seq and the vm_lock pointer in the first line with vm_start..vm_flags.
VMA_PERVMA = Struct("vm_area_struct", 176, 16, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "vm_lock": 48, "anon_vma_chain": 56, "anon_vma": 72, "vm_ops": 80, "vm_pgoff": 88, "vm_file": 96,
}, slab_flags=PLAIN_SLAB)
# struct vma_lock { struct rw_semaphore lock; }: 40 bytes, 102 per page, no alignment
VMA_LOCK = Struct("vma_lock", 40, 8, {"lock.count": 0, "lock.owner": 8}, slab_flags=PLAIN_SLAB)

# v7/v8: SLAB_HWCACHE_ALIGN, 256 bytes, vm_refcnt ____cacheline_aligned_in_smp at 192
VMA_V8 = Struct("vm_area_struct", 256, 64, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "anon_vma_chain": 48, "anon_vma": 64, "vm_ops": 72, "vm_pgoff": 80, "vm_file": 88, "vm_refcnt": 192,
}, slab_flags=TYPESAFE_SLAB, freeptr_in_object=True)
# mainline: regrouped to 192 bytes / 3 lines, vm_refcnt at 128 beside rarely used fields;
# exactly as pahole -C vm_area_struct shows it for Linux 6.18.44 (BTF of our machines)
VMA_MAINLINE = Struct("vm_area_struct", 192, 64, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "anon_vma_chain": 48, "anon_vma": 64, "vm_ops": 72, "vm_pgoff": 80, "vm_file": 88, "vm_private_data": 96,
    "swap_readahead_info": 104, "vm_policy": 112, "numab_state": 120, "vm_refcnt": 128, "shared.rb": 136,
    "vm_userfaultfd_ctx": 168, "pfnmap_track_ctx": 176,
}, slab_flags=TYPESAFE_SLAB, freeptr_in_object=True)


def _inline_vma(lock_offset: int) -> Struct:
    f = dict(VMA_PERVMA.fields)
    del f["vm_lock"]
    f["lock.count"] = lock_offset
    f["lock.owner"] = lock_offset + 8
    # a hypothetical design: the cache as pervma's, freed through call_rcu() as there
    return Struct("vm_area_struct", 176 + 40, 16, f, slab_flags=PLAIN_SLAB)


# -- the mmap_lock path (a fault that never tries, or gave up on, the VMA lock) --------------
def _mmap_lock_fault(prefetchw: bool, tag: str = "") -> list:
    """do_user_addr_fault() -> lock_mm_and_find_vma(): mmap_read_trylock(), else
    mmap_read_lock_killable(); find_vma(); handle_mm_fault(); mmap_read_unlock()."""
    p = []
    if prefetchw:
        p.append((Op.PREFETCHW, "mm", "mmap_lock.count"))  # prefetchw(&mm->mmap_lock)
    return p + [
        (Op.RWSEM_TRYLOCK_READ, "mmap_lock", f"slow{tag}"),
        (Op.GOTO, f"locked{tag}"),
        (Op.LABEL, f"slow{tag}"),
        (Op.RWSEM_DOWN_READ, "mmap_lock"),
        (Op.LABEL, f"locked{tag}"),
        (Op.READ, "mm", "mm_mt"),  # find_vma(): maple tree walk
        (Op.READ, "vma", "vm_start"),  # vm_start, vm_end, vm_flags
        (Op.READ, "vma", "anon_vma"),  # anon_vma, vm_ops
        (Op.WORK, "fault"),  # handle_mm_fault()
        (Op.RWSEM_UP_READ, "mmap_lock"),
    ]


MMAP_WRITER = [
    (Op.RWSEM_DOWN_WRITE, "mmap_lock"),  # mmap_write_lock()
    (Op.READ, "mm", "mm_mt"),
    (Op.WORK, "writer"),
    (Op.VMA_COMMIT,),
    (Op.RWSEM_UP_WRITE, "mmap_lock"),  # mmap_write_unlock()
    (Op.END,),
]


def _entry(prefetchw: bool) -> list:
    """exc_page_fault()'s ``prefetchw(&current->mm->mmap_lock)`` (see the module docstring)."""
    return [(Op.PREFETCHW, "mm", "mmap_lock.count")] if prefetchw else []


def _vma_lock_fault(kind: str, prefetchw: bool = True) -> list:
    """lock_vma_under_rcu() + vma_start_read(), then the fault, then vma_end_read();
    on failure the mmap_lock path.  kind: rwsem (pervma, inline-rwsem) or refcnt."""
    p = _entry(prefetchw) + [
        (Op.LABEL, "walk"),
        (Op.ATTEMPT,),
        (Op.WALK, "abort"),  # mas_walk() under rcu_read_lock(); no VMA -> inval
        (Op.READ, "vma", "vm_start"),  # the VMA's first line
        (Op.CHECK_SEQ, "abort"),  # vm_lock_seq == mm_lock_seq: write-locked, return NULL
    ]
    if kind == "rwsem":
        p += [
            (Op.READ, "vma", "vm_lock"),
            (Op.RWSEM_TRYLOCK_READ, "vma_lock", "abort"),  # down_read_trylock(&vma->vm_lock->lock)
            (Op.CHECK_SEQ, "abort_unlock"),  # re-check under the lock
            (Op.CHECK_RANGE, "abort_unlock"),  # vm_start/vm_end may have changed before we locked
            (Op.CHECK_DETACHED, "miss_unlock"),  # isolated after we found it: VMA_LOCK_MISS, retry
        ]
    else:
        p += [
            (Op.REF_GET, "abort", "detached"),  # __refcount_inc_not_zero_limited_acquire()
            (Op.CHECK_MM, "abort_put"),  # vma->vm_mm != mm: reused by another mm
            (Op.CHECK_SEQ, "abort_put"),  # re-check with acquire ordering
            (Op.CHECK_RANGE, "abort_put"),  # lock_vma_under_rcu(): reused for another range -> inval
        ]
    p += [
        (Op.READ, "vma", "anon_vma"),  # range check done; the fault reads anon_vma, vm_ops
        (Op.WORK, "fault"),
        (Op.RWSEM_UP_READ, "vma_lock") if kind == "rwsem" else (Op.REF_PUT,),  # vma_end_read()
        (Op.OUTCOME, "success"),
        (Op.END,),
        (Op.LABEL, "abort_unlock" if kind == "rwsem" else "abort_put"),
        (Op.RWSEM_UP_READ, "vma_lock") if kind == "rwsem" else (Op.REF_PUT,),
        (Op.LABEL, "abort"),
        (Op.OUTCOME, "abort"),  # count_vm_vma_lock_event(VMA_LOCK_ABORT)
        (Op.FALLBACK,),
        *_mmap_lock_fault(False, "_fb"),
        (Op.END,),
    ]
    if kind == "rwsem":
        p += [(Op.LABEL, "miss_unlock"), (Op.RWSEM_UP_READ, "vma_lock"), (Op.OUTCOME, "miss"), (Op.GOTO, "walk")]
    return p


def _detached(retry_walk: bool) -> list:
    if retry_walk:  # mainline: -EAGAIN -> VMA_LOCK_MISS, mas_set(), goto retry
        return [(Op.LABEL, "detached"), (Op.OUTCOME, "miss"), (Op.GOTO, "walk")]
    return [(Op.LABEL, "detached"), (Op.GOTO, "abort")]  # v7/v8: NULL -> abort


def _vma_writer(seqcount: bool) -> list:
    p = [(Op.RWSEM_DOWN_WRITE, "mmap_lock")]
    if seqcount:
        p.append((Op.MM_SEQ_WRITE_BEGIN,))  # mmap_write_lock(): mm_lock_seqcount_begin()
    return p + [
        (Op.READ, "mm", "mm_mt"),
        (Op.VMA_START_WRITE_ALL,),  # vma_start_write() on every VMA the call modifies
        (Op.WORK, "writer"),
        (Op.VMA_COMMIT,),  # new VMAs attached write-locked; removed ones detached and freed
        (Op.MM_SEQ_WRITE_END,),  # mmap_write_unlock() -> vma_end_write_all()
        (Op.RWSEM_UP_WRITE, "mmap_lock"),
        (Op.END,),
    ]


def _kernel_fault(prefetchw: bool = True) -> list:
    """do_user_addr_fault(): "if (!(flags & FAULT_FLAG_USER)) goto lock_mmap;" - a
    kernel-mode fault never tries the VMA lock and counts no VMA_LOCK_* event."""
    return _mmap_lock_fault(prefetchw) + [(Op.END,)]


KERNEL_FAULT = _kernel_fault()

MODELS = {}


def _add(m: Model) -> None:
    MODELS[m.name] = m


_add(Model(
    "mmap_lock", "kernels up to 6.3: every fault read-locks mm->mmap_lock",
    ["arch/x86/mm/fault.c do_user_addr_fault() (v6.3)", "kernel/locking/rwsem.c (64489e78004c, v5.3)"],
    Layout(MM, VMA_PERVMA, vma_lock_in=""),
    # no CONFIG_PER_VMA_LOCK: no VMA_LOCK_* event is counted
    fault=_mmap_lock_fault(True) + [(Op.END,)],
    kernel_fault=_mmap_lock_fault(True) + [(Op.END,)],
    writer=MMAP_WRITER,
    params={"vma_lock": None},
))
_add(Model(
    "pervma", "6.4-6.14: per-VMA rw_semaphore in a separate vma_lock slab object",
    ["mm/memory.c lock_vma_under_rcu() (50ee32537206, v6.4)", "include/linux/mm.h vma_start_read(), vma_start_write() (v6.4-v6.14)"],
    Layout(MM, VMA_PERVMA, VMA_LOCK, vma_lock_in="vma_lock", free_after_gp=True),
    fault=_vma_lock_fault("rwsem"), kernel_fault=KERNEL_FAULT, writer=_vma_writer(False),
    params={"vma_lock": "rwsem"},
))
_add(Model(
    "inline-rwsem", "pervma's algorithm with the rwsem inside an unaligned vm_area_struct (lock_offset parameter)",
    ["Mateusz Guzik's RFC (Aug 2024) and the 2023/2024 experiments: struct rw_semaphore in vm_area_struct"],
    Layout(MM, _inline_vma(64), vma_lock_in="vma", free_after_gp=True),
    fault=_vma_lock_fault("rwsem"), kernel_fault=KERNEL_FAULT, writer=_vma_writer(False),
    params={"vma_lock": "rwsem", "lock_offset": 64},
))
for _name, _limit, _wake, _desc in (
    ("v7", VMA_LOCK_OFFSET - 2, "eager", "vm_refcnt in a 256-byte cache-aligned VMA; writers take a count; readers wake the writer on every exit"),
    ("v8", VMA_LOCK_OFFSET - 1, "last", "vm_refcnt in a 256-byte cache-aligned VMA; the last reader wakes the writer"),
):
    _add(Model(
        _name, _desc, [f"\"move per-vma lock into vm_area_struct\" {_name} (Suren Baghdasaryan, {'Dec 2024' if _name == 'v7' else 'Jan 2025'})"],
        Layout(MM, VMA_V8, vma_lock_in=""),
        fault=_vma_lock_fault("refcnt") + _detached(False), kernel_fault=KERNEL_FAULT, writer=_vma_writer(False),
        params={"vma_lock": "refcnt", "ref_limit": _limit, "wake": _wake, "writer_ref": 1 if _name == "v7" else 0,
                "typesafe_by_rcu": True},
    ))
_add(Model(
    "mainline", "6.15+: vm_refcnt at 128 in a 192-byte VMA; detached means miss and re-walk; mm_lock_seq a seqcount",
    ["mm/mmap_lock.c vma_start_read(), __vma_start_write(), lock_vma_under_rcu() (v6.15)",
     "include/linux/mmap_lock.h vma_refcount_put(), is_vma_writer_only() (v6.15)"],
    Layout(MM, VMA_MAINLINE, vma_lock_in=""),
    fault=_vma_lock_fault("refcnt", prefetchw=False) + _detached(True), kernel_fault=_kernel_fault(prefetchw=False),
    writer=_vma_writer(True),
    params={"vma_lock": "refcnt", "ref_limit": VMA_LOCK_OFFSET - 1, "wake": "last", "writer_ref": 0,
            "typesafe_by_rcu": True},
))
