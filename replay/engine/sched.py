"""The event loop's clock, the event heap, run queues, sleeping and waking.

One event per thread is current (``thread.token``); an event whose token is older was
superseded (a spinner's timeout after it was let in) and is skipped when popped.  Ties
in time run in scheduling order (``glob.seq``), so a replay is deterministic.  Each
simulated CPU runs one thread at a time; a woken thread whose CPU is busy waits in that
CPU's run queue, and a spinning writer yields to it (need_resched()).

A woken thread does not take the CPU from one in the middle of an op at once; it gets
the CPU at that op's end (loop._step), when the op sleeps (block_at()), or - a writer's
call that walks page tables - at its next cond_resched() once TIF_NEED_RESCHED is set
(cond_resched(), below).  With preempt=none (__sched_dynamic_update(): might_resched,
preempt_schedule and irqentry_exit_cond_resched disabled; "Dynamic Preempt: none" on the
kernel the sample traces were recorded on) a task in the kernel acts on the flag only at
cond_resched(), at schedule(), and at the return to user mode (exit_to_user_mode_loop(),
kernel/entry/common.c: "if (ti_work & (_TIF_NEED_RESCHED | _TIF_NEED_RESCHED_LAZY))
schedule();"), the op's end.  The flag itself is EEVDF's (Linux 6.18, kernel/sched/fair.c):
update_curr() from the tick and from check_preempt_wakeup_fair() sets it once the running
task's request (sysctl_sched_base_slice) is used up, or after a renewal while it runs,
with another task queued (account(), _wakeup_preempt(); the section below has the
citations); a task inside its request is protected (RUN_TO_PARITY: protect_slice(),
se->vprot set by set_next_entity()).  Faults have no cond_resched() on their path here and
are never preempted (tests/test_rwsem_wake.py pins it; tests/test_cond_resched.py the
writer's).  Not modelled: pick_eevdf()'s eligibility test (an ineligible current task is
not protected), preempt=voluntary's might_resched() points and preempt=full.  (The other
way round, the engine is more eager than EEVDF: a thread yields at every op end while
another waits for its CPU, where RUN_TO_PARITY would keep it running to the end of its
request.)
"""

from __future__ import annotations

import numpy as np
from ..jit import internal

from .state import cfg, cpu, glob, heap, line, lock, thread
from .waits import slept

WAKEUP_NS = 2000.0  # est.: try_to_wake_up() until the woken task runs on an idle CPU
# The scheduler tick: CONFIG_HZ=250 on the kernel the sample traces were recorded on
# (6.18.44, /proc/config.gz; HZ_250 is also the x86 defconfig's choice); TICK_NSEC =
# (NSEC_PER_SEC + HZ/2) / HZ.  Every CPU ticks at the same instants (tick_setup_sched_timer()
# offsets them only with the skew_tick boot option), from the replay's time 0 - the
# recording's phase is not known.  The same HZ for every machine profile: an assumption.
CONFIG_HZ = 250
TICK_NS = float((1_000_000_000 + CONFIG_HZ // 2) // CONFIG_HZ)
NORMALIZED_BASE_SLICE_NS = 700_000  # kernel/sched/fair.c normalized_sysctl_sched_base_slice (6.18)


def base_slice_ns(ncpus: int) -> float:
    """sysctl_sched_base_slice: update_sysctl() scales the normalized 0.7 ms by
    get_update_sysctl_factor() = 1 + ilog2(min(num_online_cpus(), 8)) (SCHED_TUNABLESCALING_LOG,
    the default): 1.4 ms on 2 CPUs, 2.8 ms from 8."""
    n = max(1, min(int(ncpus), 8))
    return float(NORMALIZED_BASE_SLICE_NS * (1 + n.bit_length() - 1))
ERR_DEADLOCK, ERR_RUNQ, ERR_WAITER_READER = 1, 2, 3

# thread.dw: where a down_write() is (see rwsem.py) - or, DW_CLEARED, an up_write() between
# its owner store and its release atomic
DW_NONE, DW_OWNER, DW_SPIN, DW_WAIT, DW_NONSPIN, DW_HSPIN, DW_CLEARED = 0, 1, 2, 3, 4, 5, 6


# -- the heap -------------------------------------------------------------------------------------
@internal(inline=True)
def _less(S, a, b):
    x, y = heap(S, a), heap(S, b)
    return x.when < y.when or (x.when == y.when and x.seq < y.seq)


@internal(inline=True)
def _swap(S, a, b):
    x, y = heap(S, a), heap(S, b)
    x.when, y.when = y.when, x.when
    x.seq, y.seq = y.seq, x.seq
    x.t, y.t = y.t, x.t
    x.token, y.token = y.token, x.token


@internal(inline=True)
def _sift_down(S, i, n):
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        m = left
        if left + 1 < n and _less(S, left + 1, left):
            m = left + 1
        if _less(S, m, i):
            _swap(S, m, i)
            i = m
        else:
            return


@internal(inline=True)
def current(S, t, tok):
    """Whether a heap entry for t with token tok is still current: t < nthreads is a thread,
    t - nthreads a line's arbiter (coherence.arbitrate(), at_line())."""
    n = cfg(S, 0).nthreads
    return tok == (thread(S, t).token if t < n else line(S, t - n).arb_tok)


@internal
def _compact_heap(S):
    """Drop entries whose token is stale (never popped as current anyway); re-heapify."""
    g = glob(S, 0)
    k = 0
    for i in range(g.heap_n):
        e = heap(S, i)
        if current(S, e.t, e.token):
            d = heap(S, k)
            d.when, d.seq, d.t, d.token = e.when, e.seq, e.t, e.token
            k += 1
    g.heap_n = k
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(S, i, k)


@internal(inline=True)
def _push(S, when, t, token):
    g = glob(S, 0)
    g.seq += 1
    if g.heap_n == cfg(S, 0).heap_cap:
        _compact_heap(S)
    i = g.heap_n
    g.heap_n = i + 1
    e = heap(S, i)
    e.when, e.seq, e.t, e.token = when, g.seq, t, token
    while i > 0:
        p = (i - 1) // 2
        if _less(S, i, p):
            _swap(S, i, p)
            i = p
        else:
            break


@internal(inline=True)
def at(S, when, t):
    """Schedule thread t's next step at ``when`` (superseding any it had)."""
    th = thread(S, t)
    th.token += 1
    _push(S, when, t, th.token)


@internal(inline=True)
def at_line(S, when, n):
    """Schedule line n's arbiter at ``when`` (superseding any it had): coherence.arbitrate()."""
    ln = line(S, n)
    ln.arb_tok += 1
    ln.arb_when = when
    _push(S, when, cfg(S, 0).nthreads + n, ln.arb_tok)


@internal(inline=True)
def pop(S):
    g = glob(S, 0)
    n = g.heap_n - 1
    top = heap(S, 0)
    when, t, tok = top.when, top.t, top.token
    g.heap_n = n
    if n > 0:
        last = heap(S, n)
        top.when, top.seq, top.t, top.token = last.when, last.seq, last.t, last.token
        _sift_down(S, 0, n)
    return when, t, tok


# -- EEVDF's request and TIF_NEED_RESCHED ------------------------------------------------------------
# kernel/sched/fair.c (6.18), nice-0 tasks only (calc_delta_fair() is then the identity, so
# vruntime advances with CPU time): each task runs against a request of
# sysctl_sched_base_slice, its deadline.  update_curr() - from the tick (task_tick_fair() ->
# entity_tick()) and from check_preempt_wakeup_fair() - calls update_deadline(), which on a
# used-up request gives a new one (deadline = vruntime + slice) and returns true; then ``if
# (cfs_rq->nr_queued == 1) return; if (resched || !protect_slice(curr)) resched_curr_lazy(rq)``.
# With equal slices set_next_entity() -> set_protect_slice() puts se->vprot at the deadline,
# so a task is protected until its request is used up, and after a renewal while it runs (vprot
# is not moved on) it is not protected until it is picked again (``unprot``).  With
# preempt=none resched_curr_lazy() sets TIF_NEED_RESCHED itself (get_lazy_tif_bit():
# dynamic_preempt_lazy() is false), which the task acts on at cond_resched() or at the
# return to user mode.  A task's CPU time counts from when it takes its CPU (_take) to
# when it leaves it (release_cpu_at); think time is off the CPU here (loop.py), so a
# thread's user time does not use up its request.  Not modelled: eligibility (lag
# against avg_vruntime), which can also make pick_eevdf() pass over an unprotected or
# ineligible current task - a wake-up here preempts exactly when the current task's request
# is used up or it is unprotected, and the wakee is taken to be the pick.
@internal(inline=True)
def take(S, t, when):
    """t takes its CPU at ``when``: set_next_entity() -> set_protect_slice()."""
    th = thread(S, t)
    th.ran_at = when
    th.unprot = False
    th.resched = False
    th.preempted = False


@internal
def account(S, t, when):
    """update_curr() for t, running since ran_at, up to ``when``, with the ticks in between
    (the run queue of t's CPU has only grown meanwhile: nothing left it while t ran, so it
    held someone at tick T iff it does now and went non-empty by T)."""
    th = thread(S, t)
    if when <= th.ran_at:
        return
    k = cfg(S, 0)
    q = cpu(S, th.cpu)
    if k.tick_ns > 0:
        tick = (np.floor(th.ran_at / k.tick_ns) + 1.0) * k.tick_ns
        while tick <= when:
            th.ran += tick - th.ran_at
            th.ran_at = tick
            renewed = th.ran >= k.slice_ns
            if renewed:  # update_deadline(): a new request
                th.ran = 0.0
            if q.rq_head >= 0 and q.rq_since <= tick and (renewed or th.unprot):
                th.resched = True  # resched_curr_lazy()
            th.unprot = th.unprot or renewed
            tick += k.tick_ns
    th.ran += when - th.ran_at
    th.ran_at = when


@internal(inline=True)
def _wakeup_preempt(S, cur, when):
    """check_preempt_wakeup_fair() on the CPU ``cur`` runs, a task just queued there."""
    th = thread(S, cur)
    if th.resched:
        return
    account(S, cur, when)
    if th.ran >= cfg(S, 0).slice_ns:
        th.ran = 0.0
        th.unprot = True
        th.resched = True
    elif th.unprot:
        th.resched = True


# -- run queues -------------------------------------------------------------------------------------
@internal(inline=True)
def rq_push(S, c, t):
    """t joins CPU c's run queue (enqueue_task(), then wakeup_preempt() for the task on c)."""
    th = thread(S, t)
    if th.in_rq:
        glob(S, 0).err = ERR_RUNQ
        return
    th.in_rq = True
    th.rq_next = -1
    q = cpu(S, c)
    if q.rq_head < 0:
        q.rq_head = t
        q.rq_since = glob(S, 0).now
    else:
        thread(S, q.rq_tail).rq_next = t
    q.rq_tail = t
    if q.busy >= 0 and q.busy != t:
        _wakeup_preempt(S, q.busy, glob(S, 0).now)


@internal(inline=True)
def _rq_pop(S, c):
    q = cpu(S, c)
    t = q.rq_head
    th = thread(S, t)
    q.rq_head = th.rq_next
    th.in_rq = False
    return t


@internal(inline=True)
def release_cpu_at(S, t, when):
    """t leaves its CPU at ``when`` (>= now); the first thread queued there runs then."""
    c = thread(S, t).cpu
    q = cpu(S, c)
    if q.busy != t:
        return
    account(S, t, when)
    thread(S, t).resched = False  # __schedule(): clear_tsk_need_resched(prev)
    q.busy = -1
    if q.rq_head >= 0:
        nxt = _rq_pop(S, c)
        q.busy = nxt
        take(S, nxt, when)
        tn = thread(S, nxt)
        if tn.rq_woken:  # woken mid-op onto a busy CPU: off it until it runs now
            tn.rq_woken = False
            tn.sleep += when - tn.blocked_at
        at(S, when, nxt)


@internal(inline=True)
def release_cpu(S, t):
    """t leaves its CPU; the first thread queued there runs."""
    release_cpu_at(S, t, glob(S, 0).now)


@internal
def block_at(S, t, when):
    """t sleeps (schedule()) from ``when`` (>= now: the rest of its slow path - dropping
    sem->wait_lock - runs until then): it leaves its CPU until wake_at().  The time off
    it, until it runs again, is ``thread.sleep``: pft's faults/cpu counts on-CPU time
    only (getrusage(RUSAGE_THREAD))."""
    th = thread(S, t)
    th.blocked = True
    th.blocked_at = when
    release_cpu_at(S, t, when)
    _locks_owner_off_cpu(S, t, when)


@internal
def _locks_owner_off_cpu(S, t, when):
    """Spinners on a lock t owns stop once t is off its CPU (owner->on_cpu): the OSQ's, and
    the first waiter spinning with its handoff set (DW_HSPIN, rwsem.py) - mmap_lock and
    the VMA rwsem t holds for write."""
    if lock(S, 0).owner == t + 1:
        _owner_off_cpu(S, 0, when)
    k = thread(S, t).wlock
    if k > 0 and lock(S, k).owner == t + 1:
        _owner_off_cpu(S, k, when)


@internal
def _owner_off_cpu(S, k, when):
    """Lock k's owner leaves its CPU at ``when``: every thread spinning on it
    (rwsem_spin_on_owner()'s ``!owner_on_cpu(owner)``) looks again then."""
    lk = lock(S, k)
    sp = lk.osq_head
    while sp >= 0:
        at(S, when, sp)
        sp = thread(S, sp).osq_next
    h = lk.wait_head
    if h >= 0 and thread(S, h).dw == DW_HSPIN:
        at(S, when, h)


@internal
def sleep_for(S, t, d):
    """t sleeps ``d`` ns off its CPU on no lock (an I/O wait: io_schedule()), then wants
    its CPU back (runnable()); the time counts in ``thread.sleep``, not as a lock wait."""
    now = glob(S, 0).now
    block_at(S, t, now)
    th = thread(S, t)
    th.blocked = False
    th.waking = True
    at(S, now + d, t)


@internal
def block(S, t):
    """t sleeps (schedule()) now."""
    block_at(S, t, glob(S, 0).now)


@internal
def wake_at(S, t, k, when):
    """try_to_wake_up() of t at ``when`` (>= now: a wake_up_q() step the waker reaches
    later, rwsem.wake_up_q()); its wait counts against lock k (-1: no lock).  Until then
    t is no longer asleep (nobody wakes it twice) but not yet runnable (``waking``: its
    event at ``when`` makes it so, loop._step)."""
    th = thread(S, t)
    if not th.blocked:  # granted before it went to sleep: it will see it
        return
    when = max(when, th.blocked_at)  # not before it slept (block_at())
    waited = when - th.blocked_at
    th.wait += waited
    slept(S, t, k, th.blocked_at, when)  # the waits table's record of it
    if k >= 0:
        lk = lock(S, k)
        lk.wait_total += waited
        lk.wait_max = max(lk.wait_max, waited)
        lk.wait_min = waited if np.isnan(lk.wait_min) else min(lk.wait_min, waited)
    th.blocked = False
    if when > glob(S, 0).now:
        th.waking = True
        at(S, when, t)
        return
    runnable(S, t)


@internal
def wake(S, t, k):
    """Wake t now (try_to_wake_up()); its wait counts against lock k (-1: no lock)."""
    wake_at(S, t, k, glob(S, 0).now)


@internal
def runnable(S, t):
    """t, woken, wants its CPU: an idle CPU runs it after the wake-up latency; a busy
    one queues it - a spinning writer yields to it (rwsem_optimistic_spin()'s
    need_resched()), anything else runs its op to the end first (the module docstring)."""
    th = thread(S, t)
    now = glob(S, 0).now
    c = th.cpu
    q = cpu(S, c)
    if q.busy < 0:
        q.busy = t
        take(S, t, now + WAKEUP_NS)
        th.sleep += now + WAKEUP_NS - th.blocked_at  # off its CPU until it runs
        at(S, now + WAKEUP_NS, t)
    else:
        th.rq_woken = True
        rq_push(S, c, t)
        cur = q.busy
        if thread(S, cur).dw == DW_SPIN or thread(S, cur).dw == DW_HSPIN:  # need_resched(): a spinner yields
            at(S, now, cur)


@internal
def cond_resched(S, t):
    """cond_resched() in t's op (include/linux/sched.h -> __cond_resched(), kernel/sched/core.c
    6.18: ``if (should_resched(0) && !irqs_disabled()) { preempt_schedule_common(); return
    1; }``): with TIF_NEED_RESCHED set (account()) and another task queued on its CPU, t
    leaves its CPU now, still runnable and still holding its locks, queued behind the
    others; it resumes the op where it left it when it runs again.  Returns whether it
    yielded.  Spinners on a lock it owns stop (owner->on_cpu is 0: block_at())."""
    now = glob(S, 0).now
    th = thread(S, t)
    account(S, t, now)
    q = cpu(S, th.cpu)
    if not th.resched or q.rq_head < 0:
        return False
    th.preempted = True
    th.rq_woken = True  # off its CPU from now until it runs again (thread.sleep)
    th.blocked_at = now
    rq_push(S, th.cpu, t)
    release_cpu_at(S, t, now)
    _locks_owner_off_cpu(S, t, now)
    return True
