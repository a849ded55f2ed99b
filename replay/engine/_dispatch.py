"""GENERATED from replay/engine/isa.py MICRO_OPS by `python -m replay.engine.isa`: do not edit."""

from ..jit import internal
from .micro import (h_anon_vma_check, h_anon_vma_prepare, h_attempt, h_check_anon, h_check_anon_vma, h_check_detached, h_check_mm, h_check_mm_users, h_check_range, h_check_seq, h_check_span, h_end, h_fallback, h_fault_retry, h_goto, h_handle_mm_fault, h_iret, h_madv_vma_lock, h_mm_seq_write, h_outcome, h_prefetchw, h_read, h_ref_get, h_ref_put, h_retry_wait, h_rwsem_down_read, h_rwsem_down_write, h_rwsem_downgrade_write, h_rwsem_trylock_read, h_rwsem_up_read, h_rwsem_up_write, h_store, h_vma_commit, h_vma_start_write_next, h_walk, h_work)  # noqa: F401


# One compile unit with the handlers spliced into it (micro.py), inlined by LLVM into
# loop._step: not a unit per handler that LLVM would optimise and emit again in every
# unit above it.
@internal(inline=True)
def dispatch(S, t, op, a1, a2, a3):
    """Run one micro-op: (the time the thread continues, or < 0 if it blocked;
    whether to run the same instruction again)."""
    if op == 1:  # READ: a load of obj->field
        return h_read(S, t, a1, a2, a3)
    if op == 2:  # PREFETCHW: prefetchw(): a non-blocking request for ownership (x86 exc_p
        return h_prefetchw(S, t, a1, a2, a3)
    if op == 3:  # STORE: a plain store to obj->field
        return h_store(S, t, a1, a2, a3)
    if op == 4:  # WORK: the writer's work under the write lock ("writer"), after mma
        return h_work(S, t, a1, a2, a3)
    if op == 5:  # CHECK_SEQ: vma->vm_lock_seq == mm->mm_lock_seq: write-locked (vma_start
        return h_check_seq(S, t, a1, a2, a3)
    if op == 6:  # RWSEM_TRYLOCK_READ: down_read_trylock()
        return h_rwsem_trylock_read(S, t, a1, a2, a3)
    if op == 7:  # RWSEM_DOWN_READ: down_read(), sleeping in rwsem_down_read_slowpath()
        return h_rwsem_down_read(S, t, a1, a2, a3)
    if op == 8:  # RWSEM_UP_READ: up_read()
        return h_rwsem_up_read(S, t, a1, a2, a3)
    if op == 9:  # RWSEM_DOWN_WRITE: down_write(), spinning then sleeping
        return h_rwsem_down_write(S, t, a1, a2, a3)
    if op == 10:  # RWSEM_UP_WRITE: up_write()
        return h_rwsem_up_write(S, t, a1, a2, a3)
    if op == 11:  # REF_GET: __refcount_inc_not_zero_limited_acquire(&vma->vm_refcnt) in 
        return h_ref_get(S, t, a1, a2, a3)
    if op == 12:  # REF_PUT: vma_refcount_put(): decrement, wake the writer per the model
        return h_ref_put(S, t, a1, a2, a3)
    if op == 13:  # CHECK_MM: vma->vm_mm != mm: reused by another mm (SLAB_TYPESAFE_BY_RCU
        return h_check_mm(S, t, a1, a2, a3)
    if op == 14:  # VMA_START_WRITE_NEXT: the call's walk reaches its next VMA: vma_start_write() on i
        return h_vma_start_write_next(S, t, a1, a2, a3)
    if op == 15:  # MM_SEQ_WRITE_BEGIN: mmap_write_lock()'s mm_lock_seqcount_begin() (a seqcount mm_
        return h_mm_seq_write(S, t, a1, a2, a3)
    if op == 16:  # MM_SEQ_WRITE_END: mmap_write_unlock() -> vma_end_write_all(): the mm_lock_seq 
        return h_mm_seq_write(S, t, a1, a2, a3)
    if op == 17:  # OUTCOME: count_vm_vma_lock_event(): success | abort | retry | miss
        return h_outcome(S, t, a1, a2, a3)
    if op == 18:  # FALLBACK: the fault falls back to the mmap_lock path
        return h_fallback(S, t, a1, a2, a3)
    if op == 19:  # ATTEMPT: one more per-VMA lock attempt
        return h_attempt(S, t, a1, a2, a3)
    if op == 20:  # GOTO: a jump
        return h_goto(S, t, a1, a2, a3)
    if op == 21:  # END: the op is done
        return h_end(S, t, a1, a2, a3)
    if op == 22:  # WALK: mas_walk() under rcu_read_lock(): a pointer to the VMA's sla
        return h_walk(S, t, a1, a2, a3)
    if op == 23:  # CHECK_RANGE: the address outside the locked VMA's vm_start..vm_end (split
        return h_check_range(S, t, a1, a2, a3)
    if op == 24:  # CHECK_DETACHED: vma->detached (before v6.15) -> goto
        return h_check_detached(S, t, a1, a2, a3)
    if op == 25:  # VMA_COMMIT: the writer's VMAs appear (attached, write-locked) and vanish
        return h_vma_commit(S, t, a1, a2, a3)
    if op == 26:  # RWSEM_DOWNGRADE_WRITE: mmap_write_downgrade() -> downgrade_write() where the writer
        return h_rwsem_downgrade_write(S, t, a1, a2, a3)
    if op == 27:  # HANDLE_MM_FAULT: handle_mm_fault(): the fault's own work and the resources it
        return h_handle_mm_fault(S, t, a1, a2, a3)
    if op == 28:  # MADV_VMA_LOCK: mm/madvise.c get_lock_mode() (v6.17): the madvise is not MAD
        return h_madv_vma_lock(S, t, a1, a2, a3)
    if op == 29:  # CHECK_SPAN: try_vma_read_lock(): ``range.end > vma->vm_end`` - the madvi
        return h_check_span(S, t, a1, a2, a3)
    if op == 30:  # FAULT_RETRY: handle_mm_fault() returns VM_FAULT_RETRY under this lock (vm
        return h_fault_retry(S, t, a1, a2, a3)
    if op == 31:  # RETRY_WAIT: the wait inside that call with the lock dropped (__folio_loc
        return h_retry_wait(S, t, a1, a2, a3)
    if op == 32:  # CHECK_ANON: lock_vma_under_rcu() up to 6.5, before vma_start_read(): "if
        return h_check_anon(S, t, a1, a2, a3)
    if op == 33:  # CHECK_ANON_VMA: lock_vma_under_rcu() 6.5-6.9, after vma_start_read(): "if (u
        return h_check_anon_vma(S, t, a1, a2, a3)
    if op == 34:  # ANON_VMA_CHECK: vmf_anon_prepare() under this lock: the VMA has an anon_vma,
        return h_anon_vma_check(S, t, a1, a2, a3)
    if op == 35:  # ANON_VMA_PREPARE: __anon_vma_prepare(): vma->anon_vma set (retry.py)
        return h_anon_vma_prepare(S, t, a1, a2, a3)
    if op == 36:  # CHECK_MM_USERS: the per-VMA lock v2 posting's do_user_addr_fault(): "if (!(f
        return h_check_mm_users(S, t, a1, a2, a3)
    if op == 37:  # IRET: the exception's return to the faulting context, IRET (arch/x
        return h_iret(S, t, a1, a2, a3)
    return -2.0, False  # not an op: the loop reports it
