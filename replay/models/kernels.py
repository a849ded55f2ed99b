"""The kernel's page-fault locking designs, each as a layout plus micro-op programs.

Every program mirrors the kernel function it models, named in the comments; the
semantic parameters say what differs between designs.  Sources:

* mmap_lock: arch/x86/mm/fault.c do_user_addr_fault() up to v6.3 (mmap_read_trylock,
  then mmap_read_lock).
* Every x86 fault, user or kernel mode and whatever the lock design, starts in
  exc_page_fault() with ``prefetchw(&current->mm->mmap_lock)``, until "x86/mm: Stop
  prefetching current->mm->mmap_lock on page faults" (Mateusz Guzik, posted 1 Apr 2025
  <20250401143520.1113572-1-mjguzik@gmail.com>; commit 1701771d3069, pulled for v6.16 in
  "[GIT PULL] x86 core updates for v6.16" <aDL35MA4vH0wQ6Gb@gmail.com>): so a model run
  on a release before 6.16 prefetches mmap_lock's count line at each fault's entry - the
  per-VMA designs too, where it moves a line the fault then never uses - and one on 6.16
  or later does not, whatever its lock design (on_release_entry(): mainline@6.13, as
  the Zen 5 table's v9 kernel ran, has it; pervma@6.18 has not).
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

Struct offsets follow include/linux/mm_types.h for x86-64 without debug options, per
kernel: mmap_lock has 6.3's mm_struct and vm_area_struct, pervma 6.4's, inline-rwsem and
v7/v8 the structs their postings produce, mainline the 6.18 layouts read with pahole from
the BTF of the kernel on our machines (v7/v8 use that mm_struct too).  The config
assumptions and the arithmetic are with the structs below.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.isa import Op
from .base import MADVISE_MMAP_READ, Layout, Model, Struct

VMA_LOCK_OFFSET = 0x40000000

# -- layouts ---------------------------------------------------------------------------------
# x86-64 without debug options (no LOCKDEP, DEBUG_SPINLOCK, DEBUG_RWSEMS, RANDSTRUCT: spinlock_t
# and raw_spinlock_t are 4 bytes, struct rw_semaphore is 40: count 0, owner 8, osq 16,
# wait_lock 20, wait_list 24 - pahole -C rw_semaphore on 6.18.44's BTF; every rwsem below
# lists wait_lock, its count + 20, which the slow paths and wake-ups take) and, for what
# the structs depend on, the config of the kernel on our machines (6.18.44, /proc/config.gz), which distro configs share:
# CONFIG_PER_VMA_LOCK=y (from 6.4), CONFIG_NUMA=y, CONFIG_NUMA_BALANCING=y, CONFIG_SWAP=y,
# CONFIG_USERFAULTFD=y, CONFIG_MMU=y, CONFIG_MEMBARRIER=y, CONFIG_SCHED_MM_CID=y (def_bool
# y on SMP && RSEQ), CONFIG_COMPAT=y (so HAVE_ARCH_COMPAT_MMAP_BASES), and
# CONFIG_ANON_VMA_NAME not set - Fedora and Ubuntu set it, adding 8 bytes (anon_name) after
# vm_private_data: every offset below from swap_readahead_info on moves by 8, the fields
# the engine uses do not.  Offsets are computed by hand from include/linux/mm_types.h of
# each release (the arithmetic is in the comments); sizes are each field's own bytes.
# Sources read: Linux 6.3.8, 6.4.6, 6.5, 6.8.1, 6.9, 6.11.11, 6.12.19, 6.13.7 and 6.14
# source trees (the stable updates change none of these structs), and the patch postings
# cited at each struct.  Union members (vm_rcu, vm_freeptr over vm_start/vm_end) are not
# listed: a layout never has two fields on the same bytes (Struct checks it).

# mm_struct up to v6.3, before "mm: move mm_count into its own cache line" (Mathieu
# Desnoyers, v6.4): mm_mt 0 (struct maple_tree: ma_lock 0, ma_root 8, ma_flags 16 -> 24),
# get_unmapped_area 24, mmap_base 32, mmap_legacy_base 40, mmap_compat_base 48,
# mmap_compat_legacy_base 56, task_size 64, pgd 72, membarrier_state 80, mm_users 84,
# mm_count 88, cid_lock 92 (SCHED_MM_CID, 6.3 only), pgtables_bytes 96, map_count 104,
# page_table_lock 108, mmap_lock 112 (count 112, owner 120, wait_lock 132), mmlist 152.
# So mmap_lock's count and owner share line 1 with mm_users and mm_count, its wait_lock
# (and wait_list) is in line 2 with mmlist, and the maple tree has line 0.
# No mm_lock_seq (CONFIG_PER_VMA_LOCK came with 6.4).  size: the 192 bytes through mmlist's
# line, the part modelled - mm_struct is one object per mm, so nothing packs after it.
MM_63 = Struct("mm_struct", 192, 64, {
    "mm_mt": 0, "pgd": 72, "mm_users": 84, "mm_count": 88, "pgtables_bytes": 96, "mmap_lock.count": 112, "mmap_lock.owner": 120,
    "mmap_lock.wait_lock": 132, "mmlist": 152,
}, sizes={"mm_mt": 24, "pgd": 8, "mm_users": 4, "mm_count": 4, "pgtables_bytes": 8, "mmap_lock.count": 8,
          "mmap_lock.owner": 8, "mmap_lock.wait_lock": 4, "mmlist": 16})

# mm_struct under the per-VMA lock patches on 6.2 (the v2 posting, "[PATCH v2 00/33]
# Per-VMA locks", Suren Baghdasaryan, 27 Jan 2023, <20230127194110.533103-1-surenb@google.com>,
# and its successors until "mm: move mm_count into its own cache line" reached 6.4): 6.2's
# layout - MM_63's offsets, 6.3's cid_lock at 92 falling in the hole before pgtables_bytes -
# with CONFIG_PER_VMA_LOCK's ``int mm_lock_seq`` after mmlist (v2 09/33), at 168, line 2,
# with mmap_lock's wait_lock and wait_list; mm_users (84), mm_count and mmap_lock's count
# (112) and owner (120) share line 1.  Offsets from the 6.3.8 source less cid_lock, not
# from pahole on a 6.2 build.
MM_62_PVL = Struct("mm_struct", 192, 64, {**MM_63.fields, "mm_lock_seq": 168},
                   sizes={**MM_63.sizes, "mm_lock_seq": 4})

# mm_struct at v6.4: mm_count alone in line 0 (struct { atomic_t mm_count; }
# ____cacheline_aligned_in_smp), mm_mt 64 (24), get_unmapped_area 88, mmap_base 96,
# mmap_legacy_base 104, mmap_compat_base 112, mmap_compat_legacy_base 120, task_size 128,
# pgd 136, membarrier_state 144, mm_users 148, pcpu_cid 152, mm_cid_next_scan 160,
# pgtables_bytes 168, map_count 176, page_table_lock 180, mmap_lock 184 (count 184 in line
# 2, owner 192 and wait_lock 204 in line 3), mmlist 224, mm_lock_seq 240 (int,
# CONFIG_PER_VMA_LOCK) - so wait_lock shares a line with mm_lock_seq, which every
# per-VMA fault reads.  6.5 has the same offsets; 6.6 and 6.7 are taken to (not checked:
# the maple tree shrank somewhere in 6.6-6.8).  Later releases move mmap_lock and pgd:
# MM_68, MM_611, MM_613 below.  6.4-6.14 have no vma_writer_wait.  size: through
# mm_lock_seq's line.
MM_64 = Struct("mm_struct", 256, 64, {
    "mm_count": 0, "mm_mt": 64, "pgd": 136, "mm_users": 148, "pgtables_bytes": 168, "mmap_lock.count": 184,
    "mmap_lock.owner": 192, "mmap_lock.wait_lock": 204, "mmlist": 224, "mm_lock_seq": 240,
}, sizes={"mm_count": 4, "mm_mt": 24, "pgd": 8, "mm_users": 4, "pgtables_bytes": 8, "mmap_lock.count": 8, "mmap_lock.owner": 8,
          "mmap_lock.wait_lock": 4, "mmlist": 16, "mm_lock_seq": 4})

# mm_struct from 6.8 to 6.14, where the fields before mmap_lock moved it (offsets computed
# from each release's include/linux/mm_types.h and include/linux/maple_tree.h with the
# config of our 6.18 kernel - CONFIG_MEMCG, CONFIG_PER_VMA_LOCK, CONFIG_SCHED_MM_CID,
# CONFIG_MEMBARRIER, no debug options - by a C copy of the struct's head checked against
# 6.18's BTF, where it gives every offset pahole gives; not from pahole on these builds):
# struct maple_tree is 16 bytes by 6.8 (ma_flags before ma_root), so everything after mm_mt
# moves up 8.
# 6.8-6.10 (6.8.1 and 6.9 sources; 6.10 taken to be 6.9): pgd 128, mm_users 140,
# pgtables_bytes 160, mmap_lock count 176 and owner 184 - both in line 2, with pgd - its
# wait_lock 196, mmlist 216, mm_lock_seq 232 in line 3.
MM_68 = Struct("mm_struct", 256, 64, {
    "mm_count": 0, "mm_mt": 64, "pgd": 128, "mm_users": 140, "pgtables_bytes": 160, "mmap_lock.count": 176,
    "mmap_lock.owner": 184, "mmap_lock.wait_lock": 196, "mmlist": 216, "mm_lock_seq": 232,
}, sizes={**MM_64.sizes, "mm_mt": 16})
# 6.11-6.12 (6.11.11 and 6.12.19 sources): get_unmapped_area gone from mm_struct, so pgd
# 120 (line 1, with the maple tree's root), mm_users 132, pgtables_bytes 152, mmap_lock's
# count 168, owner 176 and wait_lock 188 all in line 2, mmlist 208, mm_lock_seq 224.
MM_611 = Struct("mm_struct", 256, 64, {
    "mm_count": 0, "mm_mt": 64, "pgd": 120, "mm_users": 132, "pgtables_bytes": 152, "mmap_lock.count": 168,
    "mmap_lock.owner": 176, "mmap_lock.wait_lock": 188, "mmlist": 208, "mm_lock_seq": 224,
}, sizes={**MM_64.sizes, "mm_mt": 16})
# 6.13-6.14 (6.13.7 and 6.14 sources): SCHED_MM_CID's nr_cpus_allowed, max_nr_cid and
# cpus_allowed_lock after mm_cid_next_scan put mmap_lock back at 184 (count, line 2;
# owner 192 and wait_lock 204, line 3), pgtables_bytes 168, mmlist 224, mm_lock_seq 240
# (a seqcount_t from 6.14, an int before: the same 4 bytes); pgd stays at 120 (line 1).
MM_613 = Struct("mm_struct", 256, 64, {
    "mm_count": 0, "mm_mt": 64, "pgd": 120, "mm_users": 132, "pgtables_bytes": 168, "mmap_lock.count": 184,
    "mmap_lock.owner": 192, "mmap_lock.wait_lock": 204, "mmlist": 224, "mm_lock_seq": 240,
}, sizes={**MM_64.sizes, "mm_mt": 16})
# the mm_struct of each release from 6.4 (the first release a key names, to the next's)
MM_BY_RELEASE = (("6.4", MM_64), ("6.8", MM_68), ("6.11", MM_611), ("6.13", MM_613))

# mm_struct as the kernel on our machines lays it out (pahole -C mm_struct
# /sys/kernel/btf/vmlinux, Linux 6.18.44, x86-64): the maple tree root in line 1 (struct
# maple_tree is 16 bytes since ma_flags moved before ma_root); mmap_lock's count at 184
# (line 2) and its owner at 192 and wait_lock at 204 (line 3), straddling two lines;
# vma_writer_wait (struct rcuwait, 8) and mm_lock_seq (seqcount_t, 4) after mmlist, in
# the same line as the owner and wait_lock.
# v7/v8 (mm-unstable, Jan 2025) add vma_writer_wait in the same place; their mm_struct is
# not derived separately.  pgtables_bytes (atomic_long_t, mm_inc_nr_ptes()) at 168 shares
# the count's line; rss_stat[NR_MM_COUNTERS] (4 x struct percpu_counter of 40 bytes: lock 0,
# count 8, list 16, counters 32) at 968, so rss_stat[MM_ANONPAGES] (= 1) has its lock at
# 1008 and count at 1016, in line 15 with rss_stat[MM_FILEPAGES] - the fault path's
# (replay/engine/faultpath.py) rss counter.  MM_63 and MM_64 carry pgtables_bytes at the
# offsets above; their rss_stat offset was not derived, so the fault path gives it a line
# of its own there.
MM = Struct("mm_struct", 1472, 64, {
    "mm_mt": 64, "pgd": 120, "pgtables_bytes": 168, "mmap_lock.count": 184, "mmap_lock.owner": 192, "mmap_lock.wait_lock": 204,
    "mmlist": 224, "vma_writer_wait": 240, "mm_lock_seq": 248, "rss_stat": 968,
}, sizes={"mm_mt": 16, "pgd": 8, "pgtables_bytes": 8, "mmap_lock.count": 8, "mmap_lock.owner": 8, "mmap_lock.wait_lock": 4,
          "mmlist": 16, "vma_writer_wait": 8, "mm_lock_seq": 4, "rss_stat": 160})
MM_ANONPAGES_LOCK = 40  # offsetof rss_stat[MM_ANONPAGES].lock within rss_stat

# kmem_cache_create() flags, as in the kernel sources cited in the module docstring
PLAIN_SLAB = ("SLAB_PANIC", "SLAB_ACCOUNT")
TYPESAFE_SLAB = ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT")

# the fields every vm_area_struct here shares, with their sizes
_VMA_SIZES = {
    "vm_start": 8, "vm_end": 8, "vm_mm": 8, "vm_page_prot": 8, "vm_flags": 8, "vm_lock_seq": 4, "vm_lock": 8,
    "detached": 1, "shared.rb": 24, "anon_vma_chain": 16, "anon_vma": 8, "vm_ops": 8, "vm_pgoff": 8, "vm_file": 8,
    "vm_private_data": 8, "swap_readahead_info": 8, "vm_policy": 8, "numab_state": 8, "vm_refcnt": 4,
    "vm_userfaultfd_ctx": 8, "pfnmap_track_ctx": 8, "lock.count": 8, "lock.owner": 8, "lock.wait_lock": 4,
}


def _vma(size: int, align: int, offsets: dict, **kw) -> Struct:
    return Struct("vm_area_struct", size, align, offsets, sizes={f: _VMA_SIZES[f] for f in offsets}, **kw)


# vm_area_struct at v6.3 (no per-VMA lock): vm_start 0, vm_end 8, vm_mm 16, vm_page_prot
# 24, vm_flags 32, shared 40 (rb 24 + rb_subtree_last 8), anon_vma_chain 72, anon_vma 88,
# vm_ops 96, vm_pgoff 104, vm_file 112, vm_private_data 120, swap_readahead_info 128,
# vm_policy 136, vm_userfaultfd_ctx 144 -> 152 bytes (no numab_state yet).
# KMEM_CACHE(vm_area_struct, SLAB_PANIC|SLAB_ACCOUNT): aligned to __alignof__, 8.
VMA_63 = _vma(152, 8, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "shared.rb": 40,
    "anon_vma_chain": 72, "anon_vma": 88, "vm_ops": 96, "vm_pgoff": 104, "vm_file": 112, "vm_private_data": 120,
    "swap_readahead_info": 128, "vm_policy": 136, "vm_userfaultfd_ctx": 144,
}, slab_flags=PLAIN_SLAB)

# vm_area_struct at v6.4 (same through v6.9): after vm_flags 32, CONFIG_PER_VMA_LOCK's
# vm_lock_seq 40 (int; 4-byte hole), vm_lock 48 (struct vma_lock *), detached 56 (bool;
# 7-byte hole), so shared starts line 1 at 64 (rb 64, rb_subtree_last 88), anon_vma_chain
# 96, anon_vma 112, vm_ops 120, vm_pgoff 128, vm_file 136, vm_private_data 144,
# swap_readahead_info 152, vm_policy 160, numab_state 168 (NUMA_BALANCING, from 6.4),
# vm_userfaultfd_ctx 176 -> 184 bytes; KMEM_CACHE(), aligned to 8.  Commit 3b612c8f069f
# ("mm: optimize CONFIG_PER_VMA_LOCK member placement in vm_area_struct", David
# Hildenbrand, v6.10) moves detached to 40 and vm_lock_seq to 44 (vm_lock stays at 48),
# pulling everything after it 8 bytes down: shared 56, anon_vma_chain 88, anon_vma 104,
# vm_ops 112, vm_pgoff 120, vm_file 128 -> 176 bytes, through v6.14 (v6.14 makes
# vm_lock_seq unsigned, same size).  The lines the engine uses do not change (vm_start,
# vm_lock_seq, vm_lock in line 0; anon_vma, vm_ops in line 1); the size does.
VMA_PERVMA = _vma(184, 8, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "vm_lock": 48, "detached": 56, "shared.rb": 64, "anon_vma_chain": 96, "anon_vma": 112, "vm_ops": 120,
    "vm_pgoff": 128, "vm_file": 136, "vm_private_data": 144, "swap_readahead_info": 152, "vm_policy": 160,
    "numab_state": 168, "vm_userfaultfd_ctx": 176,
}, slab_flags=PLAIN_SLAB)
# vm_area_struct in the v2 posting with 33/33 ("mm: separate vma->lock from
# vm_area_struct", <20230127194110.533103-34-surenb@google.com>) applied, on 6.2: vm_flags
# 32, vm_lock_seq 40, vm_lock 48 (the pointer to its struct vma_lock), shared 56,
# anon_vma_chain 88, anon_vma 104, vm_ops 112, vm_pgoff 120, vm_file 128, vm_private_data
# 136, anon_name 144, swap_readahead_info 152, vm_policy 160, vm_userfaultfd_ctx 168 -> 176
# bytes; no detached flag (v3 added it); KMEM_CACHE(), aligned to 8.  Computed from the
# posting's types, not pahole.
VMA_PVL_V2 = _vma(176, 8, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "vm_lock": 48, "shared.rb": 56, "anon_vma_chain": 88, "anon_vma": 104, "vm_ops": 112, "vm_pgoff": 120,
    "vm_file": 128, "vm_private_data": 136, "swap_readahead_info": 152, "vm_policy": 160,
    "vm_userfaultfd_ctx": 168,
}, slab_flags=PLAIN_SLAB)
# struct vma_lock { struct rw_semaphore lock; }: 40 bytes, 102 per page, no alignment
VMA_LOCK = Struct("vma_lock", 40, 8, {"lock.count": 0, "lock.owner": 8, "lock.wait_lock": 20},
                  sizes={"lock.count": 8, "lock.owner": 8, "lock.wait_lock": 4}, slab_flags=PLAIN_SLAB)

# The rwsem inside vm_area_struct, as posted: "[PATCH v8 02/16] mm: move per-vma lock into
# vm_area_struct" (Suren Baghdasaryan, 9 Jan 2025,
# <20250109023025.2242447-3-surenb@google.com>; the same patch opens v5-v10), on its own:
# ``struct vma_lock vm_lock ____cacheline_aligned_in_smp`` after vm_userfaultfd_ctx, the
# vm_lock pointer gone, the cache ``KMEM_CACHE(vm_area_struct, SLAB_HWCACHE_ALIGN|
# SLAB_NO_MERGE|SLAB_PANIC|SLAB_ACCOUNT)`` and freeing still through call_rcu().  On the
# mm-unstable base it applies to (the 6.13/6.14 order): detached 40, vm_lock_seq 44,
# shared 48 (rb 48, rb_subtree_last 72), anon_vma_chain 80, anon_vma 96, vm_ops 104,
# vm_pgoff 112, vm_file 120, vm_private_data 128, swap_readahead_info 136, vm_policy 144,
# numab_state 152, vm_userfaultfd_ctx 160, then the lock at the next line, 192 (count 192,
# owner 200, wait_lock 212, to 232) -> sizeof 256 with __alignof__ 64 - the patch's own slabinfo
# ("vm_area_struct ... 256 32 2").  The patch cites an Aug 2024 investigation
# (lore.kernel.org/all/ZsQyI%2F087V34JoIt@xsang-OptiPlex-9020/, the kernel test robot's
# runs of the lock moved back in); that mail is not in the sources available here, so the
# placement is the one posted in the series.
VMA_INLINE_RWSEM = _vma(256, 64, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "detached": 40,
    "vm_lock_seq": 44, "shared.rb": 48, "anon_vma_chain": 80, "anon_vma": 96, "vm_ops": 104, "vm_pgoff": 112,
    "vm_file": 120, "vm_private_data": 128, "swap_readahead_info": 136, "vm_policy": 144, "numab_state": 152,
    "vm_userfaultfd_ctx": 160, "lock.count": 192, "lock.owner": 200, "lock.wait_lock": 212,
}, slab_flags=("SLAB_HWCACHE_ALIGN", "SLAB_NO_MERGE", "SLAB_PANIC", "SLAB_ACCOUNT"))
INLINE_LOCK_OFFSET = VMA_INLINE_RWSEM.fields["lock.count"]

# v8 ("move per-vma lock into vm_area_struct", <20250109023025.2242447-1-surenb@google.com>):
# patch 11/16 ("mm: replace vm_lock and detached flag with a reference count",
# <20250109023025.2242447-12-surenb@google.com>) removes detached and puts
# ``refcount_t vm_refcnt ____cacheline_aligned_in_smp`` where vm_lock was; 15/16 ("mm: make
# vma cache SLAB_TYPESAFE_BY_RCU", <20250109023025.2242447-16-surenb@google.com>) puts
# ``freeptr_t vm_freeptr`` in the union with vm_start/vm_end and creates the cache with
# SLAB_HWCACHE_ALIGN|SLAB_PANIC|SLAB_TYPESAFE_BY_RCU|SLAB_ACCOUNT and freeptr_offset.  v8
# has no regrouping patch (that came with v9 after review of v8's 00/16), so:
# vm_lock_seq 40 (4-byte hole), shared 48, anon_vma_chain 80, anon_vma 96, vm_ops 104,
# vm_pgoff 112, vm_file 120, vm_private_data 128, swap_readahead_info 136, vm_policy 144,
# numab_state 152, vm_userfaultfd_ctx 160, vm_refcnt alone in line 3 at 192 -> 256 bytes.
# v7 (<20241226170710.1159679-1-surenb@google.com>) makes the same struct changes.
VMA_V8 = _vma(256, 64, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "shared.rb": 48, "anon_vma_chain": 80, "anon_vma": 96, "vm_ops": 104, "vm_pgoff": 112, "vm_file": 120,
    "vm_private_data": 128, "swap_readahead_info": 136, "vm_policy": 144, "numab_state": 152,
    "vm_userfaultfd_ctx": 160, "vm_refcnt": 192,
}, slab_flags=TYPESAFE_SLAB, freeptr_in_object=True)
# mainline: regrouped to 192 bytes / 3 lines, vm_refcnt at 128 beside rarely used fields;
# exactly as pahole -C vm_area_struct shows it for Linux 6.18.44 (BTF of our machines)
VMA_MAINLINE = _vma(192, 64, {
    "vm_start": 0, "vm_end": 8, "vm_mm": 16, "vm_page_prot": 24, "vm_flags": 32, "vm_lock_seq": 40,
    "anon_vma_chain": 48, "anon_vma": 64, "vm_ops": 72, "vm_pgoff": 80, "vm_file": 88, "vm_private_data": 96,
    "swap_readahead_info": 104, "vm_policy": 112, "numab_state": 120, "vm_refcnt": 128, "shared.rb": 136,
    "vm_userfaultfd_ctx": 168, "pfnmap_track_ctx": 176,
}, slab_flags=TYPESAFE_SLAB, freeptr_in_object=True)


# -- the fault path's rules by release (replay/engine/faultpath.py; docs/fault-path.md) ---------
@dataclass(frozen=True)
class FaultPathKernel:
    """What the kernel decides in handle_mm_fault()'s shared resources: batch sizes and
    which counters exist.  The machine gives the costs (its profile's [fault_path])."""

    release: str
    pcp_batch: int
    """zone_batchsize() for a zone of 1 GiB or more (mm/page_alloc.c): min(managed >> 10,
    SZ_1M / PAGE_SIZE) / 4, then rounddown_pow_of_two(batch + batch / 2) - 1 = 63; 31
    before d8a759b57035 ("mm, page_alloc: double zone's batchsize", 4.19)."""
    pcp_scale_max: int
    """CONFIG_PCP_BATCH_SCALE_MAX (mm/Kconfig, default 5): nr_pcp_alloc() refills
    batch << alloc_factor and grows the factor up to it - the series "mm: PCP high
    auto-tuning" (Huang Ying, 6.7); 0 before: every refill is pcp->batch pages."""
    lru_batch: int
    """PAGEVEC_SIZE (include/linux/pagevec.h): 15, 31 from 9cecde80aae0 ("mm: increase
    folio batch size", 6.9)."""
    memcg_batch: int
    """MEMCG_CHARGE_BATCH (include/linux/memcontrol.h): 64 from 1813e51eece0 (6.1), 32
    before."""
    rss_per_task: bool
    """Before f1a7941243c1 ("mm: convert mm's rss stats into percpu_counter", 6.2),
    SPLIT_RSS_COUNTING: the task's own counts, synced into mm->rss_stat by
    sync_mm_rss() every TASK_RSS_EVENTS_THRESH (64) faults (mm/memory.c
    check_sync_rss_stat()); from 6.2 a percpu_counter whose batch is
    percpu_counter_batch = max(32, 2 x online CPUs) (lib/percpu_counter.c
    compute_batch_value())."""
    pte_ptrs: int = 512  # PTRS_PER_PTE (arch/x86/include/asm/pgtable_64_types.h)


TASK_RSS_EVENTS_THRESH = 64

# the release each entry starts at; a run follows the newest entry not after its release
FAULT_PATH_KERNELS = {k.release: k for k in (
    # 4.15 (the IvyBridge table's kernel): pcp batch 31 (the message of 97334162e4d7,
    # Aaron Lu: "pcp->batch(default=31 ...)"), MEMCG_CHARGE_BATCH 32, per-task rss,
    # PAGEVEC_SIZE 14 ("/* 14 pointers + two long's align the pagevec structure to a power
    # of two */"; Matthew Wilcox's patch making it 15, "15 pointers + header", is quoted in
    # Michal Hocko's reply of 6 Dec 2017 on linux-mm, so after 4.15)
    FaultPathKernel("4.15", pcp_batch=31, pcp_scale_max=0, lru_batch=14, memcg_batch=32, rss_per_task=True),
    FaultPathKernel("4.19", pcp_batch=63, pcp_scale_max=0, lru_batch=15, memcg_batch=32, rss_per_task=True),
    FaultPathKernel("6.1", pcp_batch=63, pcp_scale_max=0, lru_batch=15, memcg_batch=64, rss_per_task=True),
    FaultPathKernel("6.2", pcp_batch=63, pcp_scale_max=0, lru_batch=15, memcg_batch=64, rss_per_task=False),
    FaultPathKernel("6.7", pcp_batch=63, pcp_scale_max=5, lru_batch=15, memcg_batch=64, rss_per_task=False),
    FaultPathKernel("6.9", pcp_batch=63, pcp_scale_max=5, lru_batch=31, memcg_batch=64, rss_per_task=False),
)}


def _release_key(r: str) -> tuple:
    try:
        return tuple(int(x) for x in r.split("-")[0].split(".")[:2])
    except ValueError:
        raise ValueError(f"kernel release {r!r} is not MAJOR.MINOR (e.g. 6.8)") from None


def fault_path_kernel(release: str) -> FaultPathKernel:
    """The fault-path rules of ``release`` (e.g. "6.8", "6.2-rc4"): the newest entry of
    FAULT_PATH_KERNELS at or before it."""
    want = _release_key(release)
    older = [k for k in FAULT_PATH_KERNELS if _release_key(k) <= want]
    if not older:
        raise ValueError(f"kernel release {release!r} is older than the oldest fault path modelled "
                         f"({min(FAULT_PATH_KERNELS, key=_release_key)})")
    return FAULT_PATH_KERNELS[max(older, key=_release_key)]


# -- the mmap_lock path (a fault that never tries, or gave up on, the VMA lock) --------------
# __handle_mm_fault(): ``pgd = pgd_offset(mm, address);`` - a load of mm->pgd on every
# fault, before the p4d/pud/pmd walk and handle_pte_fault() (and so before
# do_anonymous_page()'s vmf_anon_prepare() and a file fault's VM_FAULT_RETRY: mm/memory.c,
# v6.3-v6.18).  pgd sits in the line of mmap_lock's count from 6.2 to 6.10 (72 in 6.3's
# mm_struct, 136 in 6.4's, 128 in 6.8's), and in the line before it from 6.11 (120 in 6.18's,
# BTF): with prefetchw(&mm->mmap_lock) at every fault's entry, the load finds that line
# wherever the last faulting CPU's prefetch took it.
PGD_READ = (Op.READ, "mm", "pgd")
# A fault's end: the exception returns (irqentry_exit(), then IRET: arch/x86/entry/entry_64.S
# native_irq_return_iret, to user space or to the kernel), which waits for the memory
# transactions still pending - the entry prefetchw's fill among them (coherence.serialize())
FAULT_RETURN = [(Op.IRET,), (Op.END,)]


def _mmap_lock_fault(prefetchw: bool, tag: str = "") -> list:
    """do_user_addr_fault()'s ``lock_mmap: retry:`` -> lock_mm_and_find_vma():
    mmap_read_trylock(), else mmap_read_lock_killable(); find_vma(); handle_mm_fault();
    mmap_read_unlock() - the fault's end.  A first call that drops mmap_lock for the page
    cache (replay/engine/retry.py: maybe_unlock_mmap_for_io() -> release_fault_lock())
    returns VM_FAULT_RETRY with the lock released: ``if (unlikely(fault &
    VM_FAULT_RETRY)) { flags |= FAULT_FLAG_TRIED; goto retry; }``."""
    p = []
    if prefetchw:
        p.append((Op.PREFETCHW, "mm", "mmap_lock.count"))  # prefetchw(&mm->mmap_lock)
    return p + [
        (Op.LABEL, f"lock_mmap{tag}"),
        (Op.RWSEM_TRYLOCK_READ, "mmap_lock", f"slow{tag}"),
        (Op.GOTO, f"locked{tag}"),
        (Op.LABEL, f"slow{tag}"),
        (Op.RWSEM_DOWN_READ, "mmap_lock"),
        (Op.LABEL, f"locked{tag}"),
        (Op.READ, "mm", "mm_mt"),  # find_vma(): maple tree walk
        (Op.READ, "vma", "vm_start"),  # vm_start, vm_end, vm_flags
        (Op.READ, "vma", "anon_vma"),  # anon_vma, vm_ops
        PGD_READ,
        # the fault maps an anonymous page and the VMA has no anon_vma: __anon_vma_prepare()
        # under mmap_lock (vmf_anon_prepare(); anon_vma_prepare() before 6.8: replay/engine/retry.py)
        (Op.ANON_VMA_CHECK, "mmap_lock", f"anon_ok{tag}", f"anon_ok{tag}"),
        (Op.ANON_VMA_PREPARE,),
        (Op.LABEL, f"anon_ok{tag}"),
        (Op.FAULT_RETRY, "mmap_lock", f"mm_retry{tag}"),  # the first call drops mmap_lock: VM_FAULT_RETRY
        (Op.HANDLE_MM_FAULT,),
        (Op.RWSEM_UP_READ, "mmap_lock"),
        *FAULT_RETURN,
        (Op.LABEL, f"mm_retry{tag}"),
        (Op.RWSEM_UP_READ, "mmap_lock"),  # release_fault_lock(): mmap_read_unlock()
        (Op.RETRY_WAIT,),  # the page cache's wait, lock dropped
        (Op.GOTO, f"lock_mmap{tag}"),  # FAULT_FLAG_TRIED; goto retry
    ]


def _unlock_or_downgrade() -> list:
    """munmap, brk and mremap end with mmap_write_downgrade() when they may (mm/vma.c
    vms_complete_munmap_vmas(), earlier do_vmi_align_munmap()/__do_munmap(): "if
    (unlock) mmap_write_downgrade(mm);" after the VMAs are detached from the tree), zap
    the pages and free the page tables (unmap_region()) under the read lock, then
    mmap_read_unlock(); the trace shows which did (a read acquire_returned with no
    start_locking; the op's read_hold_ns).  The rest: mmap_write_unlock()."""
    return [
        (Op.RWSEM_DOWNGRADE_WRITE, "mmap_lock", "write_unlock"),
        (Op.WORK, "zap"),
        (Op.RWSEM_UP_READ, "mmap_lock"),
        (Op.END,),
        (Op.LABEL, "write_unlock"),
        (Op.RWSEM_UP_WRITE, "mmap_lock"),  # mmap_write_unlock()
        (Op.END,),
    ]


MMAP_WRITER = [
    (Op.RWSEM_DOWN_WRITE, "mmap_lock"),  # mmap_write_lock()
    (Op.READ, "mm", "mm_mt"),
    (Op.WORK, "writer"),
    (Op.VMA_COMMIT,),
    *_unlock_or_downgrade(),
]


ENTRY_PREFETCH = (Op.PREFETCHW, "mm", "mmap_lock.count")  # exc_page_fault()'s prefetchw(&current->mm->mmap_lock)
PREFETCHW_DROPPED = "6.16"  # "x86/mm: Stop prefetching current->mm->mmap_lock on page faults" (module docstring)


def has_entry_prefetch(release: str) -> bool:
    """Whether a fault on ``release`` starts with exc_page_fault()'s prefetchw (before 6.16)."""
    return _release_key(release) < _release_key(PREFETCHW_DROPPED)


def _entry(prefetchw: bool) -> list:
    """exc_page_fault()'s ``prefetchw(&current->mm->mmap_lock)`` (see the module docstring)."""
    return [ENTRY_PREFETCH] if prefetchw else []


def on_release_entry(program: list, release: str) -> list:
    """A fault program as it starts on ``release``: exc_page_fault()'s prefetchw first
    before 6.16, none from 6.16 (has_entry_prefetch()), the rest unchanged."""
    body = list(program[1:]) if program and tuple(program[0]) == ENTRY_PREFETCH else list(program)
    return _entry(has_entry_prefetch(release)) + body


def _vma_lock_fault(kind: str, prefetchw: bool = True) -> list:
    """lock_vma_under_rcu() + vma_start_read(), then the fault, then vma_end_read();
    on failure the mmap_lock path.  kind: rwsem (pervma, inline-rwsem) or refcnt."""
    p = _entry(prefetchw) + [
        (Op.LABEL, "walk"),
        (Op.ATTEMPT,),
        (Op.WALK, "abort"),  # mas_walk() under rcu_read_lock(); no VMA -> inval
        (Op.CHECK_ANON, "abort"),  # up to 6.5: vm_ops (6.4: anon_vma too) -> inval
        (Op.READ, "vma", "vm_start"),  # the VMA's first line
        (Op.CHECK_SEQ, "abort"),  # vm_lock_seq == mm_lock_seq: write-locked, return NULL
    ]
    if kind == "rwsem":
        p += [
            (Op.READ, "vma", "vm_lock"),
            (Op.RWSEM_TRYLOCK_READ, "vma_lock", "abort"),  # down_read_trylock(&vma->vm_lock->lock)
            (Op.CHECK_SEQ, "abort_unlock"),  # re-check under the lock
            (Op.CHECK_ANON_VMA, "abort_unlock"),  # 6.5-6.9: anonymous without anon_vma -> inval_end_read
            (Op.CHECK_RANGE, "abort_unlock"),  # vm_start/vm_end may have changed before we locked
            (Op.CHECK_DETACHED, "miss_unlock"),  # isolated after we found it: VMA_LOCK_MISS, retry
        ]
    else:
        p += [
            (Op.REF_GET, "abort", "detached"),  # __refcount_inc_not_zero_limited_acquire()
            (Op.CHECK_MM, "abort_put"),  # vma->vm_mm != mm: reused by another mm
            (Op.CHECK_SEQ, "abort_put"),  # re-check with acquire ordering
            (Op.CHECK_ANON_VMA, "abort_put"),  # 6.5-6.9: anonymous without anon_vma -> inval_end_read
            (Op.CHECK_RANGE, "abort_put"),  # lock_vma_under_rcu(): reused for another range -> inval
        ]
    unlock = (Op.RWSEM_UP_READ, "vma_lock") if kind == "rwsem" else (Op.REF_PUT,)  # vma_end_read()
    p += [
        (Op.READ, "vma", "anon_vma"),  # range check done; the fault reads anon_vma, vm_ops
        PGD_READ,
        # vmf_anon_prepare() (replay/engine/retry.py): an anon_vma to set - up to 6.9
        # VM_FAULT_RETRY at once; from 6.10 mmap_read_trylock(), failing -> VM_FAULT_RETRY
        (Op.ANON_VMA_CHECK, "vma_lock", "anon_ok", "retry"),
        (Op.RWSEM_TRYLOCK_READ, "mmap_lock", "retry"),  # mmap_read_trylock(vma->vm_mm)
        (Op.ANON_VMA_PREPARE,),  # __anon_vma_prepare(vma)
        (Op.RWSEM_UP_READ, "mmap_lock"),  # mmap_read_unlock(vma->vm_mm)
        (Op.LABEL, "anon_ok"),
        # handle_mm_fault(..., flags | FAULT_FLAG_VMA_LOCK) returns VM_FAULT_RETRY, the VMA
        # lock dropped (replay/engine/retry.py)
        (Op.FAULT_RETRY, "vma_lock", "retry"),
        (Op.HANDLE_MM_FAULT,),
        unlock,
        (Op.OUTCOME, "success"),
        *FAULT_RETURN,
        (Op.LABEL, "retry"),
        unlock,  # vmf_can_call_fault() / release_fault_lock() / vmf_anon_prepare(): vma_end_read()
        (Op.RETRY_WAIT,),  # the page cache's wait, lock dropped (none for vmf_can_call_fault())
        (Op.OUTCOME, "retry"),  # count_vm_vma_lock_event(VMA_LOCK_RETRY)
        (Op.FALLBACK,),  # lock_mmap:
        (Op.GOTO, "lock_mmap_fb"),
        (Op.LABEL, "abort_unlock" if kind == "rwsem" else "abort_put"),
        unlock,
        (Op.LABEL, "abort"),
        (Op.OUTCOME, "abort"),  # count_vm_vma_lock_event(VMA_LOCK_ABORT)
        (Op.FALLBACK,),
        *_mmap_lock_fault(False, "_fb"),
    ]
    if kind == "rwsem":
        p += [(Op.LABEL, "miss_unlock"), (Op.RWSEM_UP_READ, "vma_lock"), (Op.OUTCOME, "miss"), (Op.GOTO, "walk")]
    return p


def _pvl_v2_fault() -> list:
    """The v2 posting's fault (patches 23, 24, 27 and 29 of 33: lock_vma_under_rcu() and
    do_user_addr_fault(), <20230127194110.533103-24/25/28/30-surenb@google.com>): pervma's,
    with two differences.  Every user fault first reads mm->mm_users, ``if (!(flags &
    FAULT_FLAG_USER) || atomic_read(&mm->mm_users) == 1) goto lock_mmap;`` - a load of
    the line prefetchw has just asked for, mmap_lock's count line on 6.2 - and a
    single-threaded mm takes mmap_lock without trying the VMA lock and without counting a
    VMA_LOCK_* event.  And after the range check ``validate = mas_walk(&mas); if (validate
    != vma) { vma_end_read(vma); count_vm_vma_lock_event(VMA_LOCK_MISS); vma = validate;
    goto retry; }`` stands where v3 and 6.4 test ``vma->detached`` - the same outcome for
    a VMA isolated after the walk found it (CHECK_DETACHED); the re-walk re-reads the leaf
    node the first walk left in the maple state (6.3.8 lib/maple_tree.c mas_start()), a
    line nobody writes, as the detached test reads the VMA's first line."""
    p = _vma_lock_fault("rwsem")
    assert p[0][0] == Op.PREFETCHW
    return [p[0], (Op.READ, "mm", "mm_users"), (Op.CHECK_MM_USERS, "single"), *p[1:],
            (Op.LABEL, "single"), *_mmap_lock_fault(False, "_single")]


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
        # do_mprotect_pkey(): for_each_vma_range() -> mprotect_fixup() -> vma_modify_flags()
        # (vma_merge_existing_range(), __split_vma(): vma_start_write()) and vma_start_write(),
        # then change_protection() on that VMA; munmap: vms_gather_munmap_vmas()'s
        # vma_start_write() per VMA gathered (mm/mprotect.c, mm/vma.c, 6.18)
        (Op.LABEL, "walk_next"),
        (Op.VMA_START_WRITE_NEXT, "walked"),
        (Op.WORK, "writer"),  # that VMA's share of the call's hold
        (Op.GOTO, "walk_next"),
        (Op.LABEL, "walked"),
        (Op.VMA_COMMIT,),  # new VMAs attached write-locked; removed ones detached and freed
        (Op.MM_SEQ_WRITE_END,),  # mmap_write_unlock() / mmap_write_downgrade() -> vma_end_write_all()
        *_unlock_or_downgrade(),
    ]


def _kernel_fault(prefetchw: bool = True) -> list:
    """do_user_addr_fault(): "if (!(flags & FAULT_FLAG_USER)) goto lock_mmap;" - a
    kernel-mode fault never tries the VMA lock and counts no VMA_LOCK_* event."""
    return _mmap_lock_fault(prefetchw)


KERNEL_FAULT = _kernel_fault()


def _madvise_vma_lock() -> list:
    """A read-mode madvise from v6.17 ("mm: use per_vma lock for MADV_DONTNEED" and "mm:
    madvise: use per_vma lock for MADV_FREE", Barry Song, in "[GIT PULL] MM updates for
    6.17-rc1" <20250730152806.16f5c618e3af0d3b8dea3159@linux-foundation.org>), as 6.18's
    mm/madvise.c has it: get_lock_mode() returns MADVISE_VMA_READ_LOCK for MADV_DONTNEED,
    MADV_DONTNEED_LOCKED and MADV_FREE (MADVISE_MMAP_READ_LOCK for the other read-mode
    behaviours), madvise_lock() then takes no lock, and madvise_walk_vmas() calls
    try_vma_read_lock(): ``vma = lock_vma_under_rcu(mm, madv_behavior->range.start); if
    (!vma) goto take_mmap_read_lock;`` and ``if (madv_behavior->range.end > vma->vm_end ||
    current->mm != mm || userfaultfd_armed(vma)) { vma_end_read(vma); goto
    take_mmap_read_lock; }`` - a single VMA under its VMA lock, else ``mmap_read_lock(mm)``
    and the walk.  lock_vma_under_rcu() (mm/mmap_lock.c) is the fault's: mas_walk(),
    vma_start_read(), a detached VMA re-walked (VMA_LOCK_MISS), the range check.  It
    counts VMA_LOCK_ABORT / VMA_LOCK_MISS in vmstat for madvise as for faults; the
    engine's outcome columns are the faults' and this program records none."""
    return [
        (Op.MADV_VMA_LOCK, "m_mmap"),  # get_lock_mode() != MADVISE_VMA_READ_LOCK
        (Op.LABEL, "m_walk"),
        (Op.WALK, "m_mmap"),  # lock_vma_under_rcu(mm, range.start): mas_walk(); none -> inval
        (Op.READ, "vma", "vm_start"),
        (Op.CHECK_SEQ, "m_mmap"),  # vma_start_read(): write-locked -> NULL
        (Op.REF_GET, "m_mmap", "m_detached"),
        (Op.CHECK_MM, "m_put"),
        (Op.CHECK_SEQ, "m_put"),
        (Op.CHECK_RANGE, "m_put"),  # address outside vm_start..vm_end -> vma_end_read(), inval
        (Op.CHECK_SPAN, "m_put"),  # range.end > vma->vm_end -> vma_end_read(), mmap_read_lock()
        (Op.WORK, "madvise"),  # madvise_vma_behavior() on the one VMA
        (Op.REF_PUT,),  # vma_end_read()
        (Op.END,),
        (Op.LABEL, "m_detached"),  # vma_start_read() -> -EAGAIN: VMA_LOCK_MISS, mas_set(), retry
        (Op.GOTO, "m_walk"),
        (Op.LABEL, "m_put"),
        (Op.REF_PUT,),  # vma_end_read()
        (Op.LABEL, "m_mmap"),
        *MADVISE_MMAP_READ,  # take_mmap_read_lock: mmap_read_lock(mm), the walk, mmap_read_unlock()
    ]


MODELS = {}


def _add(m: Model) -> None:
    MODELS[m.name] = m


_add(Model(
    "mmap_lock", "kernels up to 6.3: every fault read-locks mm->mmap_lock",
    ["arch/x86/mm/fault.c do_user_addr_fault() (v6.3)", "kernel/locking/rwsem.c (64489e78004c, v5.3)"],
    Layout(MM_63, VMA_63, vma_lock_in=""),
    # no CONFIG_PER_VMA_LOCK: no VMA_LOCK_* event is counted
    fault=_mmap_lock_fault(True),
    kernel_fault=_mmap_lock_fault(True),
    writer=MMAP_WRITER,
    params={"vma_lock": None}, release="6.3",
))
_add(Model(
    "pervma", "6.4-6.14: per-VMA rw_semaphore in a separate vma_lock slab object",
    ["mm/memory.c lock_vma_under_rcu() (50ee32537206, v6.4)", "include/linux/mm.h vma_start_read(), vma_start_write() (v6.4-v6.14)"],
    Layout(MM_64, VMA_PERVMA, VMA_LOCK, vma_lock_in="vma_lock", free_after_gp=True),
    fault=_vma_lock_fault("rwsem"), kernel_fault=KERNEL_FAULT, writer=_vma_writer(False),
    # mm_lock_seq an int, as 6.4-6.13 have it (6.14 has the seqcount: see LockParams.mm_lock_seq)
    params={"vma_lock": "rwsem", "mm_lock_seq": "int"}, release="6.4",
))
_add(Model(
    "pvl-v2", "the per-VMA lock as posted in v2 (Jan 2023, on 6.2): pervma's algorithm, every user fault "
    "reads mm_users (one user: mmap_lock), a validating re-walk instead of a detached flag",
    ["\"[PATCH v2 00/33] Per-VMA locks\" (Suren Baghdasaryan, 27 Jan 2023, "
     "<20230127194110.533103-1-surenb@google.com>): 23/33 lock_vma_under_rcu(), 29/33 do_user_addr_fault(), "
     "33/33 struct vma_lock"],
    Layout(MM_62_PVL, VMA_PVL_V2, VMA_LOCK, vma_lock_in="vma_lock", free_after_gp=True),
    fault=_pvl_v2_fault(), kernel_fault=KERNEL_FAULT, writer=_vma_writer(False),
    params={"vma_lock": "rwsem", "mm_lock_seq": "int"}, release="6.2",
))
_add(Model(
    "inline-rwsem", "pervma's algorithm with the rwsem in its own line of a 256-byte cache-aligned vm_area_struct",
    ["\"[PATCH v8 02/16] mm: move per-vma lock into vm_area_struct\" (Suren Baghdasaryan, Jan 2025, "
     "<20250109023025.2242447-3-surenb@google.com>) applied alone: struct vma_lock vm_lock "
     "____cacheline_aligned_in_smp in vm_area_struct, freed through call_rcu()"],
    Layout(MM_613, VMA_INLINE_RWSEM, vma_lock_in="vma", free_after_gp=True),
    # the patch applies over "mm: convert mm_lock_seq to a proper seqcount": its context lines
    # are ``READ_ONCE(vma->vm_mm->mm_lock_seq.sequence)`` and ``raw_read_seqcount(&vma->vm_mm->
    # mm_lock_seq)`` (v4 2/5, <20241120000826.335387-3-surenb@google.com>, as in v8 02/16)
    fault=_vma_lock_fault("rwsem"), kernel_fault=KERNEL_FAULT, writer=_vma_writer(True),
    params={"vma_lock": "rwsem", "lock_offset": INLINE_LOCK_OFFSET, "mm_lock_seq": "seqcount"}, release="6.13",
))
for _name, _limit, _wake, _desc in (
    ("v7", VMA_LOCK_OFFSET - 2, "eager", "vm_refcnt in a 256-byte cache-aligned VMA; writers take a count; readers wake the writer on every exit"),
    ("v8", VMA_LOCK_OFFSET - 1, "last", "vm_refcnt in a 256-byte cache-aligned VMA; the last reader wakes the writer"),
):
    _add(Model(
        _name, _desc, [f"\"move per-vma lock into vm_area_struct\" {_name} (Suren Baghdasaryan, {'Dec 2024' if _name == 'v7' else 'Jan 2025'})"],
        Layout(MM, VMA_V8, vma_lock_in=""),
        # mm_lock_seq a seqcount: v7 12/17 (<20241226170710.1159679-13-surenb@google.com>) reads
        # ``READ_ONCE(vma->vm_mm->mm_lock_seq.sequence)`` and ``raw_read_seqcount(&vma->vm_mm->
        # mm_lock_seq)``; "mm: convert mm_lock_seq to a proper seqcount" sat under the series in
        # mm-unstable (linux-next, 9 Dec 2024 and 6 Jan 2025, <20250106140928.50569876@canb.auug.org.au>)
        fault=_vma_lock_fault("refcnt") + _detached(False), kernel_fault=KERNEL_FAULT, writer=_vma_writer(True),
        params={"vma_lock": "refcnt", "ref_limit": _limit, "wake": _wake, "writer_ref": 1 if _name == "v7" else 0,
                "typesafe_by_rcu": True, "mm_lock_seq": "seqcount"}, release="6.13",
    ))
_add(Model(
    "mainline", "6.15+: vm_refcnt at 128 in a 192-byte VMA; detached means miss and re-walk; mm_lock_seq a seqcount",
    ["mm/mmap_lock.c vma_start_read(), __vma_start_write(), lock_vma_under_rcu() (v6.15)",
     "include/linux/mmap_lock.h vma_refcount_put(), is_vma_writer_only() (v6.15)"],
    Layout(MM, VMA_MAINLINE, vma_lock_in=""),
    fault=_vma_lock_fault("refcnt", prefetchw=False) + _detached(True), kernel_fault=_kernel_fault(prefetchw=False),
    writer=_vma_writer(True), madvise=_madvise_vma_lock(),
    params={"vma_lock": "refcnt", "ref_limit": VMA_LOCK_OFFSET - 1, "wake": "last", "writer_ref": 0,
            "typesafe_by_rcu": True, "mm_lock_seq": "seqcount"}, release="6.18",
))
