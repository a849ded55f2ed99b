"""VMA objects in their slab, vm_refcnt, vma_start_write() and a writer's commit.

A VMA id (the op builder's) names a VMA over its life; an *object* is one allocation of
it in a slab slot.  With SLAB_TYPESAFE_BY_RCU (v7, v8, mainline: "mm: make vma cache
SLAB_TYPESAFE_BY_RCU") a freed slot is reused at once, so a lockless reader may hold a
pointer to an object that has become another VMA; before v6.15 VMAs were freed through
call_rcu() and a slot is not reused while readers could still see it.

vm_refcnt - mm/mmap_lock.c and include/linux/mmap_lock.h (v6.15) and the v7/v8 postings:
readers __refcount_inc_not_zero_limited_acquire() (load + cmpxchg loop; fails without
writing on 0 = detached or above the limit = writer bit set); writers add
VMA_LOCK_OFFSET, sleep on mm->vma_writer_wait until vm_refcnt == OFFSET + 1 (readers
drained), store vm_lock_seq, subtract OFFSET.  vma_refcount_put(): decrement, and wake
the writer when is_vma_writer_only() (v8, mainline: the last reader) or on every reader
exit while the writer bit is set (v7).

vm_lock_seq / mm_lock_seq - a VMA is write-locked while its vm_lock_seq equals the mm's
mm_lock_seq; mmap_write_unlock() -> vma_end_write_all() bumps mm_lock_seq, unlocking
them all at once.
"""

from __future__ import annotations

from ..jit import internal

from ..models.kernels import VMA_LOCK_OFFSET
from .coherence import RQ_RMW, read, read_from, rmw, rmw_from, stalled, store, store_from, wait_line
from .rwsem import down_write, up_write
from .sched import block, wake
from .state import (VM_UNKNOWN_END, cfg, freelist, glob, line, lock, pend_obj, slot_obj, thread, vid_order, vmaid,
                    vobj, w_created, w_created_p, w_done, w_parent, w_freed, w_freed_p, w_rng_end, w_rng_p, w_rng_start,
                    w_rng_vid, w_succ)

VMA_LOCK_RWSEM, VMA_LOCK_REFCNT = 1, 2  # cfg.vma_lock (0: faults take mmap_lock)


# -- addresses -------------------------------------------------------------------------------------------
@internal(inline=True)
def _slot_offset(S, slot, per_page, stride):
    return (slot // per_page) * 4096 + (slot % per_page) * stride


@internal(inline=True)
def vma_line(S, o, off):
    """The line of byte ``off`` of VMA object o."""
    k = cfg(S, 0)
    return k.vma_base + (_slot_offset(S, vobj(S, o).slot, k.vma_per_page, k.vma_stride) + off) // 64


@internal(inline=True)
def refcnt_line(S, o):
    return vma_line(S, o, cfg(S, 0).off_vm_refcnt)


@internal(inline=True)
def current(S, t):
    """The VMA object t points at: whatever occupies the slot its walk found."""
    th = thread(S, t)
    if th.slot >= 0:
        return slot_obj(S)[th.slot]
    return vmaid(S, th.vma).obj if th.vma >= 0 else -1


@internal(inline=True)
def field_line(S, t, obj, off):
    """The line of a program's (obj, field): obj 0 = the mm (off is its line id), 1 = the VMA."""
    if obj == 0:
        return off
    o = current(S, t)
    if o < 0:  # a VMA this replay never had: the tree walk's line stands in
        return cfg(S, 0).mm_mt
    return vma_line(S, o, off)


# -- objects -------------------------------------------------------------------------------------------
@internal
def vma_alloc(S, vid):
    """vm_area_alloc(): a new object for VMA id vid, in a free slot (reused at once with
    SLAB_TYPESAFE_BY_RCU) or a new one; attached (vm_refcnt 1)."""
    g, k = glob(S, 0), cfg(S, 0)
    if g.nfree > 0:
        g.nfree -= 1
        slot = freelist(S)[g.nfree]
    else:
        slot = g.nslots
    o = g.nobj
    g.nobj += 1
    ob = vobj(S, o)
    ob.vid = vid
    ob.slot = slot
    ob.vm_lock_seq = -1
    ob.vm_refcnt = 1
    ob.attached = True
    ob.vm_start = 0  # until the creating writer's range (vma_commit()): covers every address
    ob.vm_end = VM_UNKNOWN_END
    ob.anon_vma = 0  # vm_area_alloc(): none until a fault prepares it or it is copied (vma_commit())
    if k.vma_lock == VMA_LOCK_RWSEM:  # an rwsem: its own slab object, or inside the VMA
        lk = lock(S, o + 1)
        lk.count = 0
        lk.owner = 0
        lk.wait_head = lk.wait_tail = lk.osq_head = lk.osq_tail = -1
        lk.wake_q_head = lk.wake_q_tail = -1
        if k.vl_in_vma:
            rel = _slot_offset(S, slot, k.vma_per_page, k.vma_stride)
            base = k.vma_base
        else:
            rel = _slot_offset(S, slot, k.vl_per_page, k.vl_stride)
            base = k.vl_base
        lk.count_line = base + (rel + k.vl_off_count) // 64
        lk.owner_line = base + (rel + k.vl_off_owner) // 64
        lk.wait_lock_line = base + (rel + k.vl_off_wait_lock) // 64
    if slot == g.nslots:
        g.nslots += 1
    slot_obj(S)[slot] = o
    v = vmaid(S, vid)
    v.obj = o
    if not v.ever:
        v.ever = True
        vid_order(S)[g.nvorder] = vid
        g.nvorder += 1
    return o


@internal
def vma_resolve(S, vid):
    """The live object for VMA id vid, following merges to the VMA that absorbed it."""
    if vid < 0:
        return -1
    seen = 0
    o = vmaid(S, vid).obj
    while o >= 0 and not vobj(S, o).attached and seen < 64:
        nxt = vmaid(S, vobj(S, o).vid).successor
        o = vmaid(S, nxt).obj if nxt >= 0 else -1
        seen += 1
    return o if o >= 0 and vobj(S, o).attached else -1


@internal
def vma_walk(S, vid, addr):
    """mas_walk(&mas) for ``addr``: the live VMA whose range covers it now.  The op's own
    VMA id (vma_resolve()) when its range covers the address or is not known; else the
    live object whose known range does - a fault the trace shows in a VMA that a writer
    has since split or shrunk (the op builder gives each fault the VMA its recording saw,
    and the closed loop may run it after the writer) is found where the address now is,
    as the maple tree finds it.  None covering it: the op's own, whose range check then
    sends the fault to lock_mmap as lock_vma_under_rcu() does (``inval``)."""
    o = vma_resolve(S, vid)
    if addr < 0 or (o >= 0 and (vobj(S, o).vm_end == VM_UNKNOWN_END
                                or vobj(S, o).vm_start <= addr < vobj(S, o).vm_end)):
        return o
    for x in range(glob(S, 0).nobj):
        ob = vobj(S, x)
        if ob.attached and ob.vm_end != VM_UNKNOWN_END and ob.vm_start <= addr < ob.vm_end:
            return x
    return o


# -- vm_refcnt -------------------------------------------------------------------------------------------
@internal
def vma_refcount_get(S, t, fail, detached):
    """vma_start_read()'s __refcount_inc_not_zero_limited_acquire(): load, then cmpxchg
    unless 0 (detached: goto ``detached``) or above ref_limit (a writer: goto ``fail``)."""
    th = thread(S, t)
    o = current(S, t)
    ln = refcnt_line(S, o)
    g = glob(S, 0)
    if not th.ref_has:  # old = refcount_read(r)
        ver = line_version(S, ln)
        end = read(S, t, ln)
        if end < 0:  # waits for the line (coherence.wait_line): this step runs again
            return end, True
        th.ref_has = True
        th.ref_ver = ver
        return end, True
    old = vobj(S, o).vm_refcnt
    if old == 0:
        th.ref_has = False
        th.pc = detached
        return g.now, False
    if old + 1 > cfg(S, 0).ref_limit:
        th.ref_has = False
        th.pc = fail
        return g.now, False
    if wait_line(S, t, ln, RQ_RMW):  # the cmpxchg waits for the line: this step runs again
        return -1.0, True
    th.ref_has = False
    extra = 0.0
    if line_version(S, ln) != th.ref_ver:
        g.cas_retries += 1
        extra = cfg(S, 0).owned_atomic
    vobj(S, o).vm_refcnt += 1
    th.ref_obj = o
    return rmw(S, t, ln, True) + extra, False


@internal(inline=True)
def line_version(S, n):
    return line(S, n).version


@internal
def vma_refcount_put(S, t):
    """vma_refcount_put(): decrement; wake the writer per the model's policy."""
    th = thread(S, t)
    o = th.ref_obj
    if wait_line(S, t, refcnt_line(S, o), RQ_RMW):  # waits for the line: this step runs again
        return -1.0
    th.ref_obj = -1
    ob = vobj(S, o)
    ob.vm_refcnt -= 1
    end = rmw(S, t, refcnt_line(S, o), True)
    n = ob.vm_refcnt
    k = cfg(S, 0)
    if k.wake_last:  # is_vma_writer_only()
        wakeit = (n & VMA_LOCK_OFFSET) != 0 and n <= VMA_LOCK_OFFSET + 1 + k.writer_ref
    else:
        wakeit = (n & VMA_LOCK_OFFSET) != 0
    g = glob(S, 0)
    if wakeit and g.vma_writer_wait >= 0:
        g.writer_wakeups += 1
        w = g.vma_writer_wait
        g.vma_writer_wait = -1
        end = read_from(S, t, k.mm_vma_writer_wait, end)  # rcuwait_wake_up(), after the decrement
        wake(S, w, -1)
    return end


# -- vma_start_write() -------------------------------------------------------------------------------------
@internal
def vma_enter_locked(S, t, o, since):
    """__vma_enter_locked()'s atomics on an attached VMA's vm_refcnt, issued at since:
    from v8 (and in v6.15) one refcount_add_not_zero(VMA_LOCK_OFFSET); in v7 (12/17,
    Dec 2024) refcount_inc_not_zero() - the writer's own reference (writer_ref) - then
    refcount_add(VMA_LOCK_OFFSET).  With __vma_exit_locked()'s subtract, v7's writer
    makes three atomics on the line, v8's two."""
    k = cfg(S, 0)
    ln = refcnt_line(S, o)
    end = since
    if k.writer_ref:
        vobj(S, o).vm_refcnt += k.writer_ref
        end = rmw_from(S, t, ln, True, end)
    vobj(S, o).vm_refcnt += VMA_LOCK_OFFSET
    return rmw_from(S, t, ln, True, end)


@internal
def vma_start_write_step(S, t):
    """One step of vma_start_write() on the current VMA of the write holder's list
    (glob.pend_*): __is_vma_write_locked(); then the rwsem's down_write, the
    vm_lock_seq store, up_write (pervma); or __vma_enter_locked()'s add of
    VMA_LOCK_OFFSET (vma_enter_locked()), the wait for readers to drain, the store, the
    subtract (vm_refcnt).

    mm/mmap_lock.c __vma_start_write() (v6.15): ``locked = __vma_enter_locked(vma,
    false)`` - refcount_add_not_zero() fails on a detached VMA (vm_refcnt 0): no add,
    no wait; ``WRITE_ONCE(vma->vm_lock_seq, mm_lock_seq)`` always; ``if (locked)
    __vma_exit_locked()`` - so a detached VMA gets the store and nothing else."""
    g, k = glob(S, 0), cfg(S, 0)
    o = pend_obj(S)[g.pend_i]
    ob = vobj(S, o)
    step = g.pend_step
    rwsem = k.vma_lock == VMA_LOCK_RWSEM
    nsteps = 4 if rwsem else 5
    now = g.now
    again = False
    seqline = vma_line(S, o, k.off_vm_lock_seq)
    if step == 0:  # __is_vma_write_locked()
        end = read(S, t, seqline)
        if end < 0:  # waits for the line (coherence.wait_line): this step runs again
            return end
        if ob.vm_lock_seq == g.mm_lock_seq:
            step = nsteps - 1  # the rest of this VMA's steps go
    elif rwsem:
        if step == 1:
            end, again = down_write(S, t, o + 1)
        elif step == 2:
            ob.vm_lock_seq = g.mm_lock_seq
            end = store(S, t, seqline)
        else:
            end, again = up_write(S, t, o + 1)
    else:
        wr = VMA_LOCK_OFFSET + k.writer_ref
        if step == 1:  # __vma_enter_locked()
            if ob.vm_refcnt == 0:  # detached: refcount_add_not_zero() fails, nothing to wait for
                g.pend_locked = False
                end = now
                step += 1
            else:
                g.pend_locked = True
                g.writer_drains += 1
                end = vma_enter_locked(S, t, o, now)
        elif step == 2:  # rcuwait_wait_event(..., vm_refcnt == tgt)
            end = read(S, t, refcnt_line(S, o))
            if end < 0:
                return end
            if ob.vm_refcnt != wr + 1:
                g.vma_writer_wait = t
                thread(S, t).wt_obj = o  # what the waits table names this sleep after (waits.py)
                block(S, t)
                end = -1.0
                again = True
        elif step == 3:
            ob.vm_lock_seq = g.mm_lock_seq
            end = store(S, t, seqline)
        elif g.pend_locked:  # __vma_exit_locked()
            if wait_line(S, t, refcnt_line(S, o), RQ_RMW):
                return -1.0
            ob.vm_refcnt -= wr
            end = rmw(S, t, refcnt_line(S, o), True)
        else:
            end = now
    if stalled(S, t):  # a step's access waits for its line (coherence.wait_line): it runs again
        return -1.0
    if not again:
        step += 1
        if step >= nsteps:
            g.pend_i += 1
            step = 0
        g.pend_step = step
    return end


# -- the writer's commit -------------------------------------------------------------------------------------
@internal
def vma_commit(S, t):
    """The writer's VMAs vanish (detached: vm_refcnt to 0, or the rwsem's detached
    flag; freed - reused at once with SLAB_TYPESAFE_BY_RCU) and appear (allocated,
    attached, write-locked, waking the faults that waited for them).  Returns (when t
    goes on, < 0 if it sleeps; whether to run again), keeping its place in
    glob.commit_q / commit_step.

    vma_mark_detached() (mm/mmap_lock.c, v6.15; the same in v7 12/17 and v10 12/18 of
    "mm: replace vm_lock and detached flag with a reference count"): "if
    (unlikely(!refcount_dec_and_test(&vma->vm_refcnt))) { /* Wait until vma is detached
    with no readers. */ if (__vma_enter_locked(vma, true)) { __vma_exit_locked(vma,
    &detached); } }" - a reader that raised vm_refcnt for a moment (before it saw the
    VMA write-locked) holds the writer up: it adds VMA_LOCK_OFFSET (and v7 its own
    reference) and sleeps on mm->vma_writer_wait until vm_refcnt is VMA_LOCK_OFFSET (v7:
    + 1), then subtracts them."""
    g, k = glob(S, 0), cfg(S, 0)
    w = thread(S, t).w
    end = g.now
    refcnt = k.vma_lock == VMA_LOCK_REFCNT
    wr = VMA_LOCK_OFFSET + k.writer_ref
    if g.commit_q < 0:
        g.commit_q = w_freed_p(S)[w]
        g.commit_step = 0
    while g.commit_q < w_freed_p(S)[w + 1]:
        q = g.commit_q
        vid = w_freed(S)[q]
        o = vmaid(S, vid).obj
        if g.commit_step == 0:
            succ = w_succ(S)[q]
            if succ >= 0:
                vmaid(S, vid).successor = succ
                so = vmaid(S, succ).obj  # vma_expand() -> dup_anon_vma(): the absorbing VMA takes it
                if o >= 0 and so >= 0 and vobj(S, o).anon_vma:
                    vobj(S, so).anon_vma = 1
            if o < 0 or not vobj(S, o).attached:
                g.commit_q += 1
                continue
            ob = vobj(S, o)
            ob.attached = False
            if refcnt:  # vma_mark_detached(): refcount_dec_and_test()
                ob.vm_refcnt -= 1
                end = rmw_from(S, t, refcnt_line(S, o), True, end)
                if ob.vm_refcnt != 0:  # a reader's passing reference: wait until it is gone
                    g.commit_step = 1
                    return end, True
            else:
                ob.vm_refcnt = 0
                end = store_from(S, t, vma_line(S, o, k.off_vm_start), end)
        elif g.commit_step == 1:  # __vma_enter_locked(vma, true)
            if vobj(S, o).vm_refcnt != 0:  # else refcount_add_not_zero() fails: the readers left
                g.writer_drains += 1
                g.commit_step = 2
                return vma_enter_locked(S, t, o, end), True
        elif g.commit_step == 2:  # rcuwait_wait_event(..., vm_refcnt == tgt_refcnt)
            end = read(S, t, refcnt_line(S, o))
            if end < 0:  # waits for the line (coherence.wait_line): this step runs again
                return end, True
            if vobj(S, o).vm_refcnt != wr:
                g.vma_writer_wait = t
                thread(S, t).wt_obj = o  # what the waits table names this sleep after (waits.py)
                block(S, t)
                return -1.0, True
            g.commit_step = 3
            return end, True
        else:  # __vma_exit_locked(): refcount_sub_and_test() - detached
            vobj(S, o).vm_refcnt -= wr
            end = rmw_from(S, t, refcnt_line(S, o), True, end)
        if k.typesafe_by_rcu:
            freelist(S)[g.nfree] = vobj(S, o).slot
            g.nfree += 1
        g.commit_step = 0
        g.commit_q += 1
    g.commit_q = -1
    for q in range(w_created_p(S)[w], w_created_p(S)[w + 1]):
        vid = w_created(S)[q]
        v = vmaid(S, vid)
        if v.obj >= 0 and vobj(S, v.obj).attached:
            continue
        o = vma_alloc(S, vid)
        vobj(S, o).vm_lock_seq = g.mm_lock_seq
        p = w_parent(S)[q]  # __split_vma() / copy_vma(): anon_vma_clone() - a new mapping has none
        if p >= 0 and vmaid(S, p).obj >= 0:
            vobj(S, o).anon_vma = vobj(S, vmaid(S, p).obj).anon_vma
        _wake_waiting_faults(S, v)
        end = store_from(S, t, vma_line(S, o, k.off_vm_start), end)
    # vm_start/vm_end as the call leaves them (ops range_*): a split's or a shrink's new
    # vm_end, a merge's or a growth's, a new VMA's range - vma_set_range() (mm/vma.h),
    # stored under the VMA's write lock, so a reader sees it once it locks the VMA
    for q in range(w_rng_p(S)[w], w_rng_p(S)[w + 1]):
        o = vmaid(S, w_rng_vid(S)[q]).obj
        if o < 0:
            continue
        ob = vobj(S, o)
        lo, hi = w_rng_start(S)[q], w_rng_end(S)[q]
        if ob.vm_start != lo or ob.vm_end != hi:
            known = ob.vm_end != VM_UNKNOWN_END
            ob.vm_start = lo
            ob.vm_end = hi
            if known:  # an existing VMA's fields change; a new one's were stored above
                end = store_from(S, t, vma_line(S, o, k.off_vm_start), end)
    w_done(S)[w] = 1
    for q in range(w_rng_p(S)[w], w_rng_p(S)[w + 1]):  # wake the faults waiting for these ranges (loop._gate)
        _wake_waiting_faults(S, vmaid(S, w_rng_vid(S)[q]))
    return end, False


@internal
def _wake_waiting_faults(S, v):
    """Wake the faults waiting (loop._gate) on VMA id record v: for its creator or for the
    writer that gave it their address."""
    x = v.wc_head
    v.wc_head = -1
    while x >= 0:
        nx = thread(S, x).wc_next
        wake(S, x, -1)
        x = nx
