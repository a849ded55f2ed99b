"""struct rw_semaphore, as kernel/locking/rwsem.c has it since commit 64489e78004c
("locking/rwsem: Implement a new locking scheme", v5.3).

``sem->count``: RWSEM_WRITER_LOCKED (bit 0), RWSEM_FLAG_WAITERS (1), RWSEM_FLAG_HANDOFF
(2), readers in bits 8 and up (RWSEM_READER_BIAS).  ``sem->owner``: the writer task, or
RWSEM_READER_OWNED.  Lock 0 is the mm's mmap_lock; lock k > 0 is the rwsem of VMA
object k - 1 (pervma's separate ``struct vma_lock``, or inside the VMA).

* down_read() - xadd READER_BIAS; rwsem_down_read_slowpath() reads sem->owner and
  steals the lock when it is neither writer-locked nor handed off (unless it is
  reader-owned with other readers, rcnt > 1), storing the owner
  (rwsem_set_reader_owned()) before it wakes the readers behind it; else it queues, and
  a reader finding an empty queue and no writer keeps its bias.  Queued, it runs
  rwsem_cond_wake_waiter() on the count its add_return left.  down_read_trylock():
  load + cmpxchg loop, failing at once on any bit of RWSEM_READ_FAILED_MASK.
  up_read(): xadd -READER_BIAS; when only the waiters bit is left,
  clear_nonspinnable() and rwsem_wake().
* down_write() - cmpxchg 0 -> WRITER_LOCKED, else rwsem_optimistic_spin(): while a
  writer owner is on a CPU, while there is no owner (OWNER_NULL: a writer releasing, a
  taker yet to store itself), or on a reader-owned lock for rwsem_rspin_threshold()
  (10 us + 0.5 us a reader, at most 25 us), taking the lock the moment it is free
  (rwsem_try_write_lock_unqueued()); it stops when the owner sleeps or another task
  wants the CPU (need_resched()), then queues.  The first waiter, once it has set
  HANDOFF (waiter.handoff_set), spins on a writer owner between its retries instead of
  sleeping, and retries at once on OWNER_NULL (_handoff_spin()).  A spinner whose reader-owned threshold
  runs out sets RWSEM_NONSPINNABLE in sem->owner (rwsem_set_nonspinnable()): no writer
  spins on the lock again (rwsem_can_spin_on_owner(), rwsem_spin_on_owner()) until a
  writer owns it (rwsem_set_owner() and rwsem_clear_owner() store the owner whole;
  readers keep the bit, __rwsem_set_reader_owned()), or the last reader leaves with
  waiters queued (__up_read()'s clear_nonspinnable()), or a slow path finds the lock
  free (rwsem_cond_wake_waiter()).  The threshold starts each time the owner turns
  from a writer to readers ("prev_owner_state != OWNER_READER").
  A queued writer that has waited RWSEM_WAIT_TIMEOUT (4 ms at HZ=1000) at the head sets
  HANDOFF (rwsem_try_write_lock()).  A writer queueing behind others runs
  rwsem_cond_wake_waiter() on atomic_long_read(&sem->count), emptying its wake_q with
  wait_lock dropped.
* up_write() - rwsem_clear_owner()'s plain store to sem->owner (its line's request for
  ownership), then the release atomic once it has committed, then rwsem_wake().
* downgrade_write() - the writer becomes a reader and wakes the readers at the head.
* rwsem_mark_wake(wake_type) - a writer at the head is woken to retry (RWSEM_WAKE_ANY
  only); readers at the head get the lock together - every queued reader, up to
  MAX_READERS_WAKEUP, writers skipped - unless a writer holds it by then.
  rwsem_wake() (up_read(), up_write()) wakes RWSEM_WAKE_ANY; rwsem_downgrade_wake()
  and a stealing reader RWSEM_WAKE_READ_OWNED (they hold it for read);
  rwsem_cond_wake_waiter() nobody on a writer-held lock, RWSEM_WAKE_READERS on a
  reader-held one, RWSEM_WAKE_ANY on a free one.
* sem->wait_lock (a raw spinlock, at the rwsem's offset 20: on the count's line for a
  40-byte rwsem at a line start, elsewhere in mm_struct - replay/models/kernels.py) is
  taken (an atomic on its line) by every change of the wait list: queueing in
  rwsem_down_read_slowpath()/rwsem_down_write_slowpath() - a queued writer takes it
  again at each retry - and rwsem_wake()/rwsem_downgrade_wake() (and a stealing reader
  waking the readers behind it) around rwsem_mark_wake(), whose atomics run under it.
  A CPU taking it while another holds it spins until the holder's unlock commits.
  The same in v6.4 and v6.18 (kernel/locking/rwsem.c).  Everything here is the same in
  6.3, 6.4 and 6.18 (the three releases' rwsem.c compared for these functions).
* wake-ups go through a wake_q: rwsem_mark_wake() queues the waiters and the waker,
  after dropping wait_lock, runs wake_up_q() - one try_to_wake_up() per waiter, one
  after another, so waiter i is woken i wake costs after the first and the waker pays
  them all (wake_up_q() below).

Multi-step operations keep where they are in thread registers (``try_state``, ``dr``,
``dw``) and return ``again`` so the interpreter re-runs them after their access.
"""

from __future__ import annotations

import numpy as np
from ..jit import internal

from .coherence import RQ_RMW, read, read_from, rmw, rmw_from, store, store_from, wait_line
from .sched import (DW_CLEARED, DW_HSPIN, DW_NONE, DW_NONSPIN, DW_OWNER, DW_SPIN, DW_WAIT, ERR_WAITER_READER, at,
                    block_at, wake_at)
from .state import cfg, cpu, glob, line, lock, thread
from .waits import H_SPIN, M_NONE, M_WRITE, W_RWSEM, W_WAIT_LOCK, record

RWSEM_WRITER_LOCKED = 1 << 0
RWSEM_FLAG_WAITERS = 1 << 1
RWSEM_FLAG_HANDOFF = 1 << 2
RWSEM_READER_SHIFT = 8
RWSEM_READER_BIAS = 1 << RWSEM_READER_SHIFT
RWSEM_READER_MASK = ~(RWSEM_READER_BIAS - 1)
RWSEM_LOCK_MASK = RWSEM_WRITER_LOCKED | RWSEM_READER_MASK
RWSEM_READ_FAILED_MASK = RWSEM_WRITER_LOCKED | RWSEM_FLAG_WAITERS | RWSEM_FLAG_HANDOFF
RWSEM_READER_OWNED = -1  # sem->owner of a reader-owned lock (0: none; else the writer thread + 1)
MAX_READERS_WAKEUP = 0x100
RWSEM_WAIT_TIMEOUT_NS = 4_000_000  # DIV_ROUND_UP(HZ, 250) jiffies at HZ=1000
RSPIN_BASE_NS, RSPIN_PER_READER_NS, RSPIN_MAX_NS = 10_000.0, 500.0, 25_000.0  # rwsem_rspin_threshold()

# enum rwsem_wake_type, rwsem_mark_wake()'s second argument: "RWSEM_WAKE_ANY, /* Wake
# whatever's at head of wait list */ RWSEM_WAKE_READERS, /* Wake readers only */
# RWSEM_WAKE_READ_OWNED /* Waker thread holds the read lock */"
RWSEM_WAKE_ANY, RWSEM_WAKE_READERS, RWSEM_WAKE_READ_OWNED = 0, 1, 2

# thread.try_state: down_read_trylock()'s load, cmpxchg, owner store
TRY_NONE, TRY_CAS, TRY_OWNER = 0, 1, 2
# thread.dr: down_read() granted, owner store pending, queued
DR_NONE, DR_OWNER, DR_WAIT, DR_GRANTED = 0, 1, 2, 3


# -- lockstat ------------------------------------------------------------------------------------------
@internal(inline=True)
def acquired(S, k, t):
    lock(S, k).acquisitions += 1
    hold_begins(S, k, t)


@internal(inline=True)
def hold_begins(S, k, t):
    now = glob(S, 0).now
    th = thread(S, t)
    if k == 0:
        th.held_mm = now
    else:
        th.held_v = now
        th.held_vlock = k


@internal
def released(S, k, t):
    th = thread(S, t)
    since = np.nan
    if k == 0:
        since = th.held_mm
        th.held_mm = np.nan
    elif th.held_vlock == k:
        since = th.held_v
        th.held_v = np.nan
        th.held_vlock = -1
    if not np.isnan(since):
        lk = lock(S, k)
        h = glob(S, 0).now - since
        lk.hold_total += h
        lk.hold_max = max(lk.hold_max, h)
        lk.hold_min = h if np.isnan(lk.hold_min) else min(lk.hold_min, h)


# -- sem->wait_list and the OSQ of spinning writers: doubly linked through the threads -------------------
@internal
def waiter_add(S, k, t, write):
    """rwsem_add_waiter(): t at the tail of the wait list."""
    lk, th = lock(S, k), thread(S, t)
    th.waiter_write = write
    th.waiter_since = glob(S, 0).now
    th.waiter_handoff_set = False
    last = lk.wait_tail
    th.waiter_next = -1
    th.waiter_prev = last
    if last >= 0:
        thread(S, last).waiter_next = t
    else:
        lk.wait_head = t
    lk.wait_tail = t


@internal
def waiter_del(S, k, t):
    lk, th = lock(S, k), thread(S, t)
    p, n = th.waiter_prev, th.waiter_next
    if p >= 0:
        thread(S, p).waiter_next = n
    else:
        lk.wait_head = n
    if n >= 0:
        thread(S, n).waiter_prev = p
    else:
        lk.wait_tail = p


@internal
def osq_add(S, k, t):
    lk, th = lock(S, k), thread(S, t)
    last = lk.osq_tail
    th.osq_next = -1
    th.osq_prev = last
    if last >= 0:
        thread(S, last).osq_next = t
    else:
        lk.osq_head = t
    lk.osq_tail = t


@internal
def osq_del(S, k, t):
    lk, th = lock(S, k), thread(S, t)
    p, n = th.osq_prev, th.osq_next
    if p >= 0:
        thread(S, p).osq_next = n
    else:
        lk.osq_head = n
    if n >= 0:
        thread(S, n).osq_prev = p
    else:
        lk.osq_tail = p


# -- sem->wait_lock and the wake_q -----------------------------------------------------------------
@internal
def wait_lock_lock(S, t, k, since):
    """raw_spin_lock_irq(&sem->wait_lock), issued at ``since``: queued_spin_lock()'s
    "atomic_try_cmpxchg_acquire(&lock->val, &val, _Q_LOCKED_VAL)"
    (include/asm-generic/qspinlock.h), an atomic on the wait_lock's line; while another
    CPU holds it (until ``lock.wait_lock_until``) t spins in queued_spin_lock_slowpath()
    - FIFO, as its MCS queue is - and that spin is the op's lock wait.  Returns when t
    holds it."""
    lk, th = lock(S, k), thread(S, t)
    begin = max(since, lk.wait_lock_until)
    th.wait += begin - since
    record(S, t, W_WAIT_LOCK, k, M_NONE, H_SPIN, since, begin)
    return rmw_from(S, t, lk.wait_lock_line, True, begin)


@internal
def wait_lock_unlock(S, t, k, since):
    """raw_spin_unlock_irq(): queued_spin_unlock() is "smp_store_release(&lock->locked,
    0)", a plain store on x86: t goes on at once (coherence.store_from), and the lock is
    free for the next taker when the store commits (its store buffer drained)."""
    end = store_from(S, t, lock(S, k).wait_lock_line, since)
    lock(S, k).wait_lock_until = thread(S, t).sb_until
    return end


@internal
def wake_q_add(S, k, w):
    """wake_q_add(): w joins the waker's wake_q (kept on the lock: rwsem_mark_wake()
    fills it and wake_up_q() empties it in the same call)."""
    lk = lock(S, k)
    thread(S, w).wake_q_next = -1
    if lk.wake_q_head < 0:
        lk.wake_q_head = w
    else:
        thread(S, lk.wake_q_tail).wake_q_next = w
    lk.wake_q_tail = w


@internal
def wake_up_q(S, t, k, since):
    """wake_up_q() (kernel/sched/core.c), run by the waker t after it dropped wait_lock:
    "while (node != WAKE_Q_TAIL) { ... wake_up_process(task); ... }" - one
    try_to_wake_up() after another, each ``cfg.wake_q_ns`` of t's time (one figure with
    the start barrier's futex_wake(), which empties a wake_q the same way:
    variation.BARRIER_WAKE_NS).  The i-th wakee (from 0) is woken i wake costs after
    the first, at ``since`` + i * wake_q_ns; t goes on when the last is done.  A wakee
    that is not asleep (t itself, granted by its own rwsem_mark_wake(), or one granted
    before it slept) costs nothing: try_to_wake_up() finds it running.  Returns when t
    goes on."""
    lk = lock(S, k)
    cost = cfg(S, 0).wake_q_ns
    w = lk.wake_q_head
    lk.wake_q_head = -1
    lk.wake_q_tail = -1
    when = since
    while w >= 0:
        nxt = thread(S, w).wake_q_next
        thread(S, w).wake_q_next = -1
        if w != t and thread(S, w).blocked:
            wake_at(S, w, k, when)
            when += cost
        elif thread(S, w).dw == DW_HSPIN:
            # the first waiter spinning on the owner with its handoff set: it is on its
            # CPU in TASK_UNINTERRUPTIBLE (set_current_state(state) before the loop), so
            # try_to_wake_up() makes it TASK_RUNNING and the schedule() it would next
            # run returns at once (rwsem_down_write_slowpath(), _handoff_spin())
            thread(S, w).dw_woken = True
        w = nxt
    return when


# -- waking --------------------------------------------------------------------------------------------
@internal
def rwsem_mark_wake(S, t, k, wake_type, since):
    """rwsem_mark_wake(sem, wake_type, wake_q), run by t holding sem->wait_lock from
    ``since``: the waiters to wake go on the wake_q (wake_up_q() wakes them after the
    unlock).  A writer at the head is woken (to retry rwsem_try_write_lock()) only for
    RWSEM_WAKE_ANY: "if (waiter->type == RWSEM_WAITING_FOR_WRITE) { if (wake_type ==
    RWSEM_WAKE_ANY) wake_q_add(wake_q, waiter->task); return; }" - for RWSEM_WAKE_READERS
    and RWSEM_WAKE_READ_OWNED nobody is woken.  Readers at the head get the lock; unless
    the waker holds it for read already (RWSEM_WAKE_READ_OWNED: downgrade_write(), a
    stealing reader), the grant starts with "oldcount = atomic_long_fetch_add(adjustment,
    &sem->count)" (given back with atomic_long_add() if a writer got there first), then
    __rwsem_set_reader_owned() stores the owner, and "if (adjustment)
    atomic_long_add(adjustment, &sem->count)" settles the readers' biases and the flags -
    RWSEM_WAKE_ANY and RWSEM_WAKE_READERS alike.  Its atomics are t's.  Returns when t is
    done.  kernel/locking/rwsem.c, the same in v6.3, v6.4 and v6.18."""
    lk = lock(S, k)
    first = lk.wait_head
    if first < 0:
        return since
    end = since
    if thread(S, first).waiter_write:
        if wake_type == RWSEM_WAKE_ANY:
            wake_q_add(S, k, first)  # it retries rwsem_try_write_lock() (already awake: no cost, wake_up_q())
        return end
    c0 = lk.count
    if wake_type != RWSEM_WAKE_READ_OWNED:
        end = rmw_from(S, t, lk.count_line, True, end)  # atomic_long_fetch_add(RWSEM_READER_BIAS)
        if lk.count & RWSEM_WRITER_LOCKED:
            # rwsem_mark_wake(): a writer took the lock before the readers could be granted
            # it; "When we've been waiting "too" long (for writers to give up the lock),
            # request a HANDOFF to force the issue": if time_after(jiffies, waiter->timeout),
            # set RWSEM_FLAG_HANDOFF (unless set) and waiter->handoff_set
            if glob(S, 0).now - thread(S, first).waiter_since >= RWSEM_WAIT_TIMEOUT_NS:
                lk.count |= RWSEM_FLAG_HANDOFF
                thread(S, first).waiter_handoff_set = True
            return rmw_from(S, t, lk.count_line, True, end)  # atomic_long_add(-adjustment)
        if reader_owner_stores(S, k):  # __rwsem_set_reader_owned(sem, waiter->task)
            end = store_from(S, t, lk.owner_line, end)
    # readers at the head and behind queued writers, up to MAX_READERS_WAKEUP
    n = 0
    w = first
    while w >= 0 and n < MAX_READERS_WAKEUP:
        nxt = thread(S, w).waiter_next
        if not thread(S, w).waiter_write:
            waiter_del(S, k, w)
            lk.count += RWSEM_READER_BIAS
            acquired(S, k, w)
            thread(S, w).dr = DR_GRANTED
            wake_q_add(S, k, w)
            n += 1
        w = nxt
    # "if (list_empty(&sem->wait_list)) { adjustment -= RWSEM_FLAG_WAITERS; if (oldcount &
    # RWSEM_FLAG_HANDOFF) adjustment -= RWSEM_FLAG_HANDOFF; } else if (woken) { if
    # (oldcount & RWSEM_FLAG_HANDOFF) adjustment -= RWSEM_FLAG_HANDOFF; }" - woken is at
    # least 1 here, so HANDOFF goes whoever set it
    lk.count &= ~RWSEM_FLAG_HANDOFF
    if lk.wait_head < 0:
        lk.count &= ~RWSEM_FLAG_WAITERS
    lk.owner = RWSEM_READER_OWNED
    _let_spinner_in(S, k)
    # the count moved by more than the first reader's fetch_add: "if (adjustment)
    # atomic_long_add(adjustment, &sem->count)"
    if lk.count - c0 != (0 if wake_type == RWSEM_WAKE_READ_OWNED else RWSEM_READER_BIAS):
        end = rmw_from(S, t, lk.count_line, True, end)
    return end


@internal
def rwsem_wake(S, t, k, wake_type, since):
    """rwsem_wake() (from up_read() and up_write(): RWSEM_WAKE_ANY) and
    rwsem_downgrade_wake() (RWSEM_WAKE_READ_OWNED; also the stealing reader's wake-up in
    rwsem_down_read_slowpath()): "raw_spin_lock_irqsave(&sem->wait_lock, flags); if
    (!list_empty(&sem->wait_list)) rwsem_mark_wake(sem, ..., &wake_q);
    raw_spin_unlock_irqrestore(&sem->wait_lock, flags); wake_up_q(&wake_q);" - issued by
    t at ``since``; returns when t goes on."""
    end = wait_lock_lock(S, t, k, since)
    if lock(S, k).wait_head >= 0:
        end = rwsem_mark_wake(S, t, k, wake_type, end)
    end = wait_lock_unlock(S, t, k, end)
    return wake_up_q(S, t, k, end)


@internal
def clear_nonspinnable(S, t, k, since):
    """clear_nonspinnable(), issued by t at ``since``: "if (unlikely(rwsem_test_oflags(sem,
    RWSEM_NONSPINNABLE))) atomic_long_andnot(RWSEM_NONSPINNABLE, &sem->owner);" - a load
    of the owner's line, and an atomic on it when the bit is set.  "This should only be
    called when the reader count reaches 0": __up_read() calls it when the last reader
    leaves with waiters queued, before rwsem_wake(); rwsem_cond_wake_waiter() on a free
    lock.  The bit goes otherwise only with a writer owner (rwsem_set_owner(),
    rwsem_clear_owner() store the owner whole); readers keep it
    (__rwsem_set_reader_owned()).  kernel/locking/rwsem.c, v6.3 to v6.18 alike.
    Returns when t goes on."""
    lk = lock(S, k)
    end = read_from(S, t, lk.owner_line, since)  # rwsem_test_oflags(): atomic_long_read(&sem->owner)
    if lk.nonspinnable:
        lk.nonspinnable = 0
        end = rmw_from(S, t, lk.owner_line, True, end)
    return end


@internal
def rwsem_cond_wake_waiter(S, t, k, count, since):
    """rwsem_cond_wake_waiter(sem, count, wake_q), t holding wait_lock from ``since``,
    right after queueing itself - in rwsem_down_read_slowpath() with "count =
    atomic_long_add_return(adjustment, &sem->count)", in rwsem_down_write_slowpath() when
    it is not the first waiter, with atomic_long_read(&sem->count):

        if (count & RWSEM_WRITER_MASK) return;
        if (count & RWSEM_READER_MASK) { wake_type = RWSEM_WAKE_READERS; }
        else { wake_type = RWSEM_WAKE_ANY; clear_nonspinnable(sem); }
        rwsem_mark_wake(sem, wake_type, wake_q);

    A writer-held lock: nothing.  A free one (its holders left while t was queueing):
    whoever is at the head - a writer woken to retry, or the readers granted.  A
    reader-held one: readers at the head join the holders; a writer at the head is not
    woken (RWSEM_WAKE_READERS), nor is the nonspinnable bit cleared.

    Readers wait at the head of a reader-held lock only when more than
    MAX_READERS_WAKEUP were queued - rwsem_mark_wake() grants every queued reader up to
    that many, and in this engine a release and its rwsem_wake() happen at one instant,
    so no writer can take the lock in between (the kernel's "a writer stole it" bail-out
    never runs here) - so that is the one state in which RWSEM_WAKE_READERS grants
    anything: the readers left over wait for the next slow-path arrival rather than for
    the holders to leave (tests/test_rwsem_cond_wake.py).  On a free lock the
    clear_nonspinnable() here finds the bit clear in this engine - the release that
    freed a lock with waiters queued was __up_read()'s, which cleared it, or
    up_write()'s, whose rwsem_clear_owner() did - so it costs its load of the owner's
    line and no more.
    kernel/locking/rwsem.c, the same in v6.3, v6.4 and v6.18.  Returns when t is done
    (its wake_q still to empty)."""
    if count & RWSEM_WRITER_LOCKED:
        return since
    if count & RWSEM_READER_MASK:
        return rwsem_mark_wake(S, t, k, RWSEM_WAKE_READERS, since)
    end = clear_nonspinnable(S, t, k, since)
    return rwsem_mark_wake(S, t, k, RWSEM_WAKE_ANY, end)


@internal
def _let_spinner_in(S, k):
    """The OSQ head (the one writer spinning on the owner; the rest spin on their own
    OSQ nodes) sees the release or the readers' owner store: a free lock it tries to
    take, and a lock readers now own - after a writer or no owner - starts its
    reader-owned threshold (rwsem_optimistic_spin()'s loop re-reads the owner each time
    round: "if (prev_owner_state != OWNER_READER) ... rspin_threshold =
    rwsem_rspin_threshold(sem)")."""
    lk = lock(S, k)
    h = lk.osq_head
    if h < 0:
        return
    free = not lk.count & (RWSEM_LOCK_MASK | RWSEM_FLAG_HANDOFF)
    if free or (lk.owner == RWSEM_READER_OWNED and thread(S, h).dw_deadline == np.inf):
        at(S, glob(S, 0).now + cfg(S, 0).socket_read_shared, h)


# Whether a reader writes sem->owner every time.  From 925b9cd1b89a ("locking/rwsem: Make
# owner store task pointer of last owning reader", after v4.19) __rwsem_set_reader_owned()
# stores the reader's task pointer each time, so every reader's store changes the line;
# before it kernel/locking/rwsem.h's rwsem_set_reader_owned() was "We check the owner value
# first to make sure that we will only do a write to the rwsem cacheline when it is really
# necessary to minimize cacheline contention. if (READ_ONCE(sem->owner) != RWSEM_READER_OWNED)
# WRITE_ONCE(sem->owner, RWSEM_READER_OWNED);" - a load, and a store only after a writer
# (which sets or clears the owner) or on a fresh lock (load.py sets cfg.reader_owner_store by
# the run's release: READER_OWNER_STORES_FROM).
READER_OWNER_STORES_FROM = (4, 20)


@internal(inline=True)
def reader_owner_stores(S, k):
    """Whether rwsem_set_reader_owned() on lock k stores (else it only loads the owner)."""
    return cfg(S, 0).reader_owner_store != 0 or lock(S, k).owner != RWSEM_READER_OWNED


@internal(inline=True)
def set_reader_owned(S, t, k):
    """t's rwsem_set_reader_owned() on lock k, the first access of its step: the owner's
    store (it goes into the store buffer), or before 4.20 on a lock readers own already
    its load alone.  Returns when t goes on; < 0: the load waits for the line and the
    step runs again."""
    lk = lock(S, k)
    if not reader_owner_stores(S, k):
        return read(S, t, lk.owner_line)
    lk.owner = RWSEM_READER_OWNED
    _let_spinner_in(S, k)
    return store(S, t, lk.owner_line)


@internal(inline=True)
def _rspin_threshold(S, k):
    """rwsem_rspin_threshold(): (20 + readers) * NSEC_PER_USEC / 2, readers at most 30."""
    readers = lock(S, k).count >> RWSEM_READER_SHIFT
    return min(RSPIN_BASE_NS + RSPIN_PER_READER_NS * readers, RSPIN_MAX_NS)


@internal
def rwsem_set_nonspinnable(S, t, k):
    """rwsem_set_nonspinnable(): cmpxchg RWSEM_NONSPINNABLE into sem->owner while it is
    still RWSEM_READER_OWNED; an atomic on the owner's line."""
    lk = lock(S, k)
    now = glob(S, 0).now  # in arrival order at the line, not through its arbiter (a slow path's)
    if lk.owner != RWSEM_READER_OWNED or lk.nonspinnable:
        return read_from(S, t, lk.owner_line, now)
    lk.nonspinnable = 1
    return rmw_from(S, t, lk.owner_line, True, now)


@internal
def _owner_running(S, k):
    o = lock(S, k).owner
    if o == RWSEM_READER_OWNED or o == 0:  # reader-owned, or no owner recorded
        return True
    # owner_on_cpu(): off its CPU asleep, or preempted at a cond_resched() (sched.cond_resched())
    return not thread(S, o - 1).blocked and not thread(S, o - 1).preempted


# -- readers -------------------------------------------------------------------------------------------
@internal
def down_read_trylock(S, t, k, label):
    """rwsem_read_trylock()'s cmpxchg loop: load, then cmpxchg count -> count + BIAS
    unless a RWSEM_READ_FAILED_MASK bit is set (then goto label), then the owner store."""
    lk, th = lock(S, k), thread(S, t)
    ln = lk.count_line
    now = glob(S, 0).now
    if th.try_state == TRY_NONE:  # the load
        ver = line(S, ln).version
        end = read(S, t, ln)
        if end < 0:  # waits for the line (coherence.wait_line): this step runs again
            return end, True
        th.try_state = TRY_CAS
        th.try_ver = ver
        return end, True
    if th.try_state == TRY_OWNER:  # rwsem_set_reader_owned()
        end = set_reader_owned(S, t, k)
        if end < 0:
            return end, True
        th.try_state = TRY_NONE
        return end, False
    if lk.count & RWSEM_READ_FAILED_MASK:
        th.try_state = TRY_NONE
        th.pc = label
        lk.trylock_failures += 1
        return now, False
    if wait_line(S, t, ln, RQ_RMW):  # the cmpxchg waits for the line: this step runs again
        return -1.0, True
    extra = 0.0
    if line(S, ln).version != th.try_ver:  # the line changed since the load: the cmpxchg fails once
        glob(S, 0).cas_retries += 1
        extra = cfg(S, 0).owned_atomic
    lk.count += RWSEM_READER_BIAS
    acquired(S, k, t)
    th.try_state = TRY_OWNER
    return rmw(S, t, ln, True) + extra, True


@internal
def down_read(S, t, k):
    lk, th = lock(S, k), thread(S, t)
    now = glob(S, 0).now
    if th.dr == DR_GRANTED:
        th.dr = DR_NONE
        return now, False
    if th.dr == DR_OWNER:  # rwsem_set_reader_owned()
        end = set_reader_owned(S, t, k)
        if end < 0:
            return end, True
        th.dr = DR_NONE
        return end, False
    if th.dr == DR_WAIT:
        glob(S, 0).err = ERR_WAITER_READER
        return -1.0, True
    if wait_line(S, t, lk.count_line, RQ_RMW):  # the xadd waits for the line: this step runs again
        return -1.0, True
    lk.count += RWSEM_READER_BIAS
    end = rmw(S, t, lk.count_line, True)
    cnt = lk.count
    if not cnt & RWSEM_READ_FAILED_MASK:
        acquired(S, k, t)
        th.dr = DR_OWNER
        return end, True
    # rwsem_down_read_slowpath(): "if ((atomic_long_read(&sem->owner) & RWSEM_READER_OWNED)
    # && (rcnt > 1) && !(count & RWSEM_WRITER_LOCKED)) goto queue;" - a load of the owner's
    # line (on the count's in 6.3's mm_struct, its own line from 6.4)
    rcnt = cnt >> RWSEM_READER_SHIFT
    end = read_from(S, t, lk.owner_line, end)
    if not (lk.owner == RWSEM_READER_OWNED and rcnt > 1 and not cnt & RWSEM_WRITER_LOCKED):
        if not cnt & (RWSEM_WRITER_LOCKED | RWSEM_FLAG_HANDOFF):  # reader optimistic lock stealing
            # "rwsem_set_reader_owned(sem);": __rwsem_set_reader_owned()'s "val = (unsigned
            # long)owner | RWSEM_READER_OWNED | (atomic_long_read(&sem->owner) &
            # RWSEM_NONSPINNABLE); atomic_long_set(&sem->owner, val);" - the load hits the
            # line just read, the store asks for ownership of it (the nonspinnable bit
            # stays), before any wake-up, as on the fast path (DR_OWNER)
            acquired(S, k, t)
            if reader_owner_stores(S, k):
                lk.owner = RWSEM_READER_OWNED
                _let_spinner_in(S, k)
                end = store_from(S, t, lk.owner_line, end)
            if rcnt == 1 and cnt & RWSEM_FLAG_WAITERS:  # "Wake up other readers in the wait queue
                end = rwsem_wake(S, t, k, RWSEM_WAKE_READ_OWNED, end)  # if it is the first reader"
            return end, False
    lk.contentions += 1
    # queue: "raw_spin_lock_irq(&sem->wait_lock); if (list_empty(&sem->wait_list)) ...;
    # rwsem_add_waiter(); count = atomic_long_add_return(adjustment, &sem->count);
    # rwsem_cond_wake_waiter(); raw_spin_unlock_irq(&sem->wait_lock); wake_up_q();"
    end = wait_lock_lock(S, t, k, end)  # after the xadd above
    adjustment = -RWSEM_READER_BIAS
    if lk.wait_head < 0:
        if not lk.count & RWSEM_WRITER_LOCKED:  # empty queue, no writer: keep the bias
            acquired(S, k, t)
            th.dr = DR_OWNER
            return wait_lock_unlock(S, t, k, end), True
        adjustment += RWSEM_FLAG_WAITERS
    waiter_add(S, k, t, False)
    lk.count += adjustment
    end = rmw_from(S, t, lk.count_line, True, end)
    th.dr = DR_WAIT
    end = rwsem_cond_wake_waiter(S, t, k, lk.count, end)  # count: atomic_long_add_return()'s
    end = wait_lock_unlock(S, t, k, end)
    end = wake_up_q(S, t, k, end)
    if th.dr == DR_GRANTED:
        th.dr = DR_NONE
        return end, False
    block_at(S, t, end)
    return -1.0, True


@internal
def up_read(S, t, k):
    lk = lock(S, k)
    if wait_line(S, t, lk.count_line, RQ_RMW):  # the xadd waits for the line: this step runs again
        return -1.0
    released(S, k, t)
    lk.count -= RWSEM_READER_BIAS
    end = rmw(S, t, lk.count_line, True)
    # __up_read(): "if (unlikely((tmp & (RWSEM_LOCK_MASK|RWSEM_FLAG_WAITERS)) ==
    # RWSEM_FLAG_WAITERS)) { clear_nonspinnable(sem); rwsem_wake(sem); }" - the last
    # reader out lets writers spin again before it wakes the head
    if (lk.count & (RWSEM_LOCK_MASK | RWSEM_FLAG_WAITERS)) == RWSEM_FLAG_WAITERS:
        end = clear_nonspinnable(S, t, k, end)
        end = rwsem_wake(S, t, k, RWSEM_WAKE_ANY, end)
    _let_spinner_in(S, k)
    return end


# -- writers -------------------------------------------------------------------------------------------
@internal
def rwsem_try_write_lock(S, k, w):
    lk = lock(S, k)
    first = lk.wait_head == w
    if lk.count & RWSEM_LOCK_MASK:
        if (first and not lk.count & RWSEM_FLAG_HANDOFF
                and glob(S, 0).now - thread(S, w).waiter_since >= RWSEM_WAIT_TIMEOUT_NS):
            lk.count |= RWSEM_FLAG_HANDOFF
            thread(S, w).waiter_handoff_set = True
        return False
    if lk.count & RWSEM_FLAG_HANDOFF and not first:
        return False
    waiter_del(S, k, w)
    lk.count |= RWSEM_WRITER_LOCKED
    lk.count &= ~RWSEM_FLAG_HANDOFF
    if lk.wait_head < 0:
        lk.count &= ~RWSEM_FLAG_WAITERS
    return True


@internal
def _queue_writer(S, t, k):
    if lock(S, k).wait_head < 0:
        lock(S, k).count |= RWSEM_FLAG_WAITERS
    waiter_add(S, k, t, True)
    thread(S, t).dw = DW_WAIT


@internal
def down_write(S, t, k):
    lk, th = lock(S, k), thread(S, t)
    now = glob(S, 0).now
    if th.dw == DW_OWNER:  # rwsem_set_owner(): atomic_long_set(&sem->owner, current) - flags gone
        th.dw = DW_NONE
        lk.owner = t + 1
        lk.nonspinnable = 0
        if k > 0:
            th.wlock = k
        return store(S, t, lk.owner_line), False
    issued = now  # when this call's next atomic issues: after the failed cmpxchg, if there was one
    queue = False  # into the slow path's queue (else DW_WAIT: woken, it retries)
    if th.dw == DW_NONE:  # rwsem_write_trylock(): cmpxchg 0 -> WRITER_LOCKED
        free = lk.count == 0
        end = rmw(S, t, lk.count_line, free)
        if end < 0:  # waits for the line (coherence.wait_line): this step runs again
            return end, True
        issued = end
        if lk.count == 0:
            lk.count = RWSEM_WRITER_LOCKED
            acquired(S, k, t)
            th.dw = DW_OWNER
            return end, True
        lk.contentions += 1
        # rwsem_can_spin_on_owner() - not when need_resched(), nor "if ((flags &
        # RWSEM_NONSPINNABLE) || (owner && !(flags & RWSEM_READER_OWNED) &&
        # !owner_on_cpu(owner)))" - then rwsem_rspin_threshold() on a reader-owned lock.
        # No owner (OWNER_NULL: a writer between up_write()'s rwsem_clear_owner() and its
        # release, a reader or writer between its atomic and its owner store) passes:
        # "owner &&" is false, so it spins (see DW_SPIN below)
        can = False
        deadline = 0.0
        if cpu(S, th.cpu).rq_head < 0 and not lk.nonspinnable:
            if lk.owner == RWSEM_READER_OWNED:
                deadline = now + _rspin_threshold(S, k)
                can = True
            elif _owner_running(S, k):  # a writer on its CPU, or no owner
                deadline = np.inf
                can = True
        if can:  # rwsem_optimistic_spin(): stay on the CPU
            th.dw = DW_SPIN
            th.dw_deadline = deadline
            th.dw_since = now
            osq_add(S, k, t)
            if lk.osq_head == t and not lk.count & (RWSEM_LOCK_MASK | RWSEM_FLAG_HANDOFF):
                # a free lock with a stale reader owner (the last reader left, a woken
                # waiter has not retried yet): the loop's first rwsem_spin_on_owner()
                # returns OWNER_READER at once and rwsem_try_write_lock_unqueued() takes it
                at(S, end, t)
            elif deadline != np.inf:
                at(S, max(deadline, end), t)
            return -1.0, True
        queue = True
    elif th.dw == DW_SPIN:
        since = th.dw_since
        if not lk.count & (RWSEM_LOCK_MASK | RWSEM_FLAG_HANDOFF):  # rwsem_try_write_lock_unqueued()
            if wait_line(S, t, lk.count_line, RQ_RMW):  # its cmpxchg waits for the line: runs again
                return -1.0, True
            osq_del(S, k, t)
            lk.count |= RWSEM_WRITER_LOCKED
            th.wait += now - since
            record(S, t, W_RWSEM, k, M_WRITE, H_SPIN, since, now)
            acquired(S, k, t)
            th.dw = DW_OWNER
            return rmw(S, t, lk.count_line, True), True
        # rwsem_optimistic_spin()'s loop, the owner as it is now (rwsem_spin_on_owner())
        spin = cpu(S, th.cpu).rq_head < 0  # need_resched() ends it
        gave_up = False
        if lk.owner == RWSEM_READER_OWNED:
            if lk.nonspinnable:  # OWNER_NONSPINNABLE
                spin = False
            elif th.dw_deadline == np.inf:  # prev_owner_state != OWNER_READER: a new threshold
                th.dw_deadline = now + _rspin_threshold(S, k)
            elif now >= th.dw_deadline:  # sched_clock() > rspin_threshold
                gave_up = spin
                spin = False
        else:
            # a writer owner: spin while it is on a CPU.  No owner: rwsem_spin_on_owner()
            # returns OWNER_NULL at once, rwsem_try_write_lock_unqueued() fails (the count
            # is held), and "if (owner_state != OWNER_WRITER) { if (need_resched())
            # break; ... }" goes round again - it spins while the owner is NULL, until the
            # lock is free (_let_spinner_in()) or has an owner; readers storing theirs
            # start its threshold (prev_owner_state != OWNER_READER: _let_spinner_in())
            th.dw_deadline = np.inf
            spin = spin and _owner_running(S, k)
        if spin:
            if th.dw_deadline != np.inf:
                at(S, th.dw_deadline, t)  # re-armed: this event may have superseded it
            return -1.0, True
        osq_del(S, k, t)
        th.wait += now - since
        record(S, t, W_RWSEM, k, M_WRITE, H_SPIN, since, now)
        if gave_up:  # rwsem_set_nonspinnable(), then out of the loop to the slow path
            th.dw = DW_NONSPIN
            return rwsem_set_nonspinnable(S, t, k), True
        queue = True
    elif th.dw == DW_NONSPIN:
        queue = True
    elif th.dw == DW_HSPIN:  # the first waiter spinning on the owner, handoff set
        return _handoff_spin_step(S, t, k)
    # rwsem_down_write_slowpath(), under sem->wait_lock: "raw_spin_lock_irq(&sem->wait_lock);
    # rwsem_add_waiter(sem, &waiter);" and, first in the queue, "atomic_long_or(
    # RWSEM_FLAG_WAITERS, &sem->count)"; then "for (;;) { if (rwsem_try_write_lock(sem,
    # &waiter)) break; raw_spin_unlock_irq(&sem->wait_lock); ... schedule_preempt_disabled();
    # ... trylock_again: raw_spin_lock_irq(&sem->wait_lock); }" - so a woken writer
    # (DW_WAIT) takes wait_lock again to retry.
    end = wait_lock_lock(S, t, k, issued)
    if queue:
        was_empty = lk.wait_head < 0
        _queue_writer(S, t, k)
        if was_empty:
            end = rmw_from(S, t, lk.count_line, True, end)  # atomic_long_or(RWSEM_FLAG_WAITERS)
        else:
            # "if (rwsem_first_waiter(sem) != &waiter) { rwsem_cond_wake_waiter(sem,
            # atomic_long_read(&sem->count), &wake_q); if (!wake_q_empty(&wake_q)) {
            # raw_spin_unlock_irq(&sem->wait_lock); wake_up_q(&wake_q);
            # raw_spin_lock_irq(&sem->wait_lock); } }" - on a free lock the head is woken
            # (a writer that may be awake already: its try_to_wake_up() finds it running)
            end = read_from(S, t, lk.count_line, end)
            end = rwsem_cond_wake_waiter(S, t, k, lk.count, end)
            if lk.wake_q_head >= 0:
                end = wait_lock_unlock(S, t, k, end)
                end = wake_up_q(S, t, k, end)
                # t's own unlock was the last: wait_lock is free once it commits, which
                # the cmpxchg waits for anyway (rmw_from: the store buffer drains first)
                end = rmw_from(S, t, lk.wait_lock_line, True, end)
    before = lk.count
    if rwsem_try_write_lock(S, k, t):
        acquired(S, k, t)
        th.dw = DW_OWNER
        end = rmw_from(S, t, lk.count_line, True, end)  # its cmpxchg
        return wait_lock_unlock(S, t, k, end), True
    if lk.count != before:  # it set HANDOFF: a cmpxchg
        end = rmw_from(S, t, lk.count_line, True, end)
    else:  # atomic_long_read(&sem->count) and no cmpxchg
        end = read_from(S, t, lk.count_line, end)
    end = wait_lock_unlock(S, t, k, end)
    if th.waiter_handoff_set:
        return _handoff_spin(S, t, k, end)
    block_at(S, t, end)
    return -1.0, True


# rwsem_owner_state()'s answers (enum owner_state)
OWNER_NULL, OWNER_WRITER, OWNER_READER, OWNER_NONSPINNABLE = 1, 2, 4, 8


@internal(inline=True)
def _owner_state(S, k):
    """rwsem_owner_state(owner, flags) of sem->owner as it is now."""
    lk = lock(S, k)
    if lk.nonspinnable:
        return OWNER_NONSPINNABLE
    if lk.owner == RWSEM_READER_OWNED:
        return OWNER_READER
    return OWNER_WRITER if lk.owner != 0 else OWNER_NULL


@internal
def _handoff_spin(S, t, k, since):
    """rwsem_down_write_slowpath(), the first waiter t with its handoff set, wait_lock
    dropped at ``since`` after another failed rwsem_try_write_lock():

        if (waiter.handoff_set) {
            enum owner_state owner_state;

            owner_state = rwsem_spin_on_owner(sem);
            if (owner_state == OWNER_NULL)
                goto trylock_again;
        }
        schedule_preempt_disabled();

    rwsem_spin_on_owner() reads sem->owner (a load of its line); anything but a writer
    it returns at once - OWNER_NULL (the writer has just run rwsem_clear_owner()): t
    takes wait_lock and tries again without sleeping; readers, or the nonspinnable bit:
    it sleeps.  A writer: t spins on its CPU (DW_HSPIN, not in the OSQ) until the owner
    word changes or the writer leaves its CPU or t's CPU wants another task
    (need_resched()) - _handoff_spin_step().  The HANDOFF bit keeps every other taker
    out (RWSEM_READ_FAILED_MASK, rwsem_try_write_lock_unqueued()), so the next owner is
    t.  kernel/locking/rwsem.c since "locking/rwsem: Make handoff writer optimistically
    spin on owner" (Waiman Long), with only the first waiter's handoff_set since
    "locking/rwsem: Prevent non-first waiter from spinning in down_write() slowpath";
    the code the same in v6.3, v6.4 and v6.18 (compared).  Returns (end, again) as
    down_write()."""
    lk, th = lock(S, k), thread(S, t)
    end = read_from(S, t, lk.owner_line, since)  # rwsem_owner_flags(): atomic_long_read(&sem->owner)
    state = _owner_state(S, k)
    if state == OWNER_NULL:  # goto trylock_again
        return end, True
    if state == OWNER_WRITER and cpu(S, th.cpu).rq_head < 0 and _owner_running(S, k):
        th.dw = DW_HSPIN
        th.dw_owner = lk.owner
        th.dw_since = end
        th.dw_woken = False
        return -1.0, True
    block_at(S, t, end)
    return -1.0, True


@internal
def _handoff_spin_step(S, t, k):
    """rwsem_spin_on_owner()'s loop for the handoff writer t (DW_HSPIN), at an instant
    its owner may have changed: "if ((new != owner) || (new_flags != flags)) { state =
    rwsem_owner_state(new, new_flags); break; } ... if (need_resched() ||
    !owner_on_cpu(owner)) { state = OWNER_NONSPINNABLE; break; }".  On OWNER_NULL it
    tries again; otherwise it sleeps - unless a wake-up came while it spun
    (wake_up_q(): TASK_RUNNING, so schedule() returns at once), when it tries again."""
    lk, th = lock(S, k), thread(S, t)
    now = max(glob(S, 0).now, th.dw_since)
    if lk.owner == th.dw_owner and not lk.nonspinnable:
        if cpu(S, th.cpu).rq_head < 0 and _owner_running(S, k):
            return -1.0, True  # the owner runs on, unchanged: still spinning
        state = OWNER_NONSPINNABLE
    else:
        state = _owner_state(S, k)
    since = th.dw_since
    th.wait += now - since
    record(S, t, W_RWSEM, k, M_WRITE, H_SPIN, since, now)
    th.dw = DW_WAIT
    if state == OWNER_NULL or th.dw_woken:
        th.dw_woken = False
        return now, True  # trylock_again: wait_lock, rwsem_try_write_lock()
    block_at(S, t, now)
    return -1.0, True


@internal
def downgrade_write(S, t, k):
    """__downgrade_write(): "tmp = atomic_long_fetch_add_release(-RWSEM_WRITER_LOCKED +
    RWSEM_READER_BIAS, &sem->count); rwsem_set_reader_owned(sem); if (tmp &
    RWSEM_FLAG_WAITERS) rwsem_downgrade_wake(sem);" - the writer keeps the lock as a
    reader, and the readers at the head of the queue join it (rwsem_mark_wake(sem,
    RWSEM_WAKE_READ_OWNED): a writer at the head is not woken).  Two steps: the xadd,
    then the owner store and rwsem_downgrade_wake() (wait_lock, the wake_q).  Returns
    (end, again)."""
    lk, th = lock(S, k), thread(S, t)
    if th.dw == DW_OWNER:  # back for the owner store (the NONSPINNABLE bit stays)
        th.dw = DW_NONE
        end = store(S, t, lk.owner_line)
        if lk.count & RWSEM_FLAG_WAITERS:
            end = rwsem_wake(S, t, k, RWSEM_WAKE_READ_OWNED, end)
        return end, False
    if wait_line(S, t, lk.count_line, RQ_RMW):  # the xadd waits for the line: this step runs again
        return -1.0, True
    released(S, k, t)  # lockstat: the write hold ends, a read hold begins (lock_downgrade(): no new acquisition)
    hold_begins(S, k, t)
    if k > 0 and th.wlock == k:
        th.wlock = 0
    lk.count += RWSEM_READER_BIAS - RWSEM_WRITER_LOCKED
    end = rmw(S, t, lk.count_line, True)
    lk.owner = RWSEM_READER_OWNED
    _let_spinner_in(S, k)
    _owner_changed(S, k)
    th.dw = DW_OWNER
    return end, True


@internal
def _owner_changed(S, k):
    """sem->owner has just changed from the writer a handoff waiter spins on
    (DW_HSPIN): it sees the new word (rwsem_spin_on_owner()'s ``new != owner``)."""
    h = lock(S, k).wait_head
    if h >= 0 and thread(S, h).dw == DW_HSPIN:
        at(S, glob(S, 0).now, h)


@internal
def up_write(S, t, k):
    """__up_write(): "rwsem_clear_owner(sem); tmp = atomic_long_fetch_add_release(
    -RWSEM_WRITER_LOCKED, &sem->count); if (unlikely(tmp & RWSEM_FLAG_WAITERS))
    rwsem_wake(sem);" - rwsem_clear_owner() is "atomic_long_set(&sem->owner, 0)", a
    plain store: its request for ownership of the owner's line occupies that line
    (coherence.store_from), as the readers' owner store does, and the locked
    fetch_add waits for it to commit (the store buffer drains first).  Two steps: the
    owner store, then - when it has committed - the release and the wake-up.  Between
    them the lock is still write-locked with no owner: a spinner sees OWNER_NULL
    (rwsem_optimistic_spin() goes on spinning; the handoff waiter tries again).  With
    the owner on the count's line (6.3's mm_struct) the store's fetch leaves the line
    here for the atomic; from 6.4's layout they are two lines.  The hold ends at the
    first step (lock_release() runs before __up_write()).  kernel/locking/rwsem.c, the
    same in v6.3, v6.4 and v6.18.  Returns (end, again)."""
    lk, th = lock(S, k), thread(S, t)
    if th.dw == DW_CLEARED:
        if wait_line(S, t, lk.count_line, RQ_RMW):  # the fetch_add waits for the line: runs again
            return -1.0, True
        th.dw = DW_NONE
        lk.count -= RWSEM_WRITER_LOCKED
        end = rmw(S, t, lk.count_line, True)
        if lk.count & RWSEM_FLAG_WAITERS:
            end = rwsem_wake(S, t, k, RWSEM_WAKE_ANY, end)
        _let_spinner_in(S, k)
        return end, False
    released(S, k, t)
    lk.owner = 0  # rwsem_clear_owner(): atomic_long_set(&sem->owner, 0)
    lk.nonspinnable = 0
    if k > 0 and th.wlock == k:
        th.wlock = 0
    _owner_changed(S, k)
    end = store(S, t, lk.owner_line)
    # the fetch_add issues once the store has committed: t stalls at it until then
    stall = max(end, th.sb_until)
    th.cache += stall - end
    th.dw = DW_CLEARED
    return stall, True
