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
with another task queued (account(), update_curr(); the section below has the
citations); a task inside its request is protected (RUN_TO_PARITY: protect_slice(),
se->vprot set by set_next_entity()) - unless it is not eligible: each thread's vruntime
and lag and each CPU's avg_vruntime() are kept as fair.c keeps them, a woken thread is
placed with its lag (place_entity()), and pick_eevdf() decides a wake-up's preemption
(check_preempt_wakeup_fair()), whether a flagged task at cond_resched() yields, and who
runs next.  Faults have no cond_resched() on their path here and are never preempted
(tests/test_rwsem_wake.py pins it; tests/test_cond_resched.py the writer's).  Not
modelled: preempt=voluntary's might_resched() points and preempt=full; nice levels,
cgroups and custom slices (every weight and slice equal); load balancing beyond the
recorded CPUs.  (The other way round, the engine is more eager than EEVDF: a thread
yields at every op end while another waits for its CPU, where RUN_TO_PARITY would keep
it running to the end of its request.)
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
def _put(S, i, when, seq, t, token):
    e = heap(S, i)
    e.when, e.seq, e.t, e.token = when, seq, t, token


@internal(inline=True)
def _place_down(S, i, n, when, seq, t, token):
    """The entry (when, seq, t, token) into the hole at i of a heap of n, moved down to its
    place: each smaller child moves up into the hole, the entry is written once."""
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        m = left
        if left + 1 < n and _less(S, left + 1, left):
            m = left + 1
        c = heap(S, m)
        if c.when < when or (c.when == when and c.seq < seq):
            _put(S, i, c.when, c.seq, c.t, c.token)
            i = m
        else:
            break
    _put(S, i, when, seq, t, token)


@internal(inline=True)
def _sift_down(S, i, n):
    e = heap(S, i)
    _place_down(S, i, n, e.when, e.seq, e.t, e.token)


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
    # the hole at the end moved up to the entry's place: its seq is the newest, so it goes
    # above a parent only when earlier in time
    while i > 0:
        p = (i - 1) // 2
        e = heap(S, p)
        if when < e.when:
            _put(S, i, e.when, e.seq, e.t, e.token)
            i = p
        else:
            break
    _put(S, i, when, g.seq, t, token)


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
    if n > 0:  # the last entry into the hole at the top
        last = heap(S, n)
        _place_down(S, 0, n, last.when, last.seq, last.t, last.token)
    return when, t, tok


# -- EEVDF: vruntime, lag, eligibility, the request and TIF_NEED_RESCHED -----------------------------
# kernel/sched/fair.c (6.18), nice-0 tasks only: calc_delta_fair() is then the identity
# (vruntime advances with CPU time) and every weight is NICE_0_LOAD, which cancels in each
# formula below, so the engine counts each entity as weight 1.  Times are the kernel's:
# integer ns (_ns(): rq_clock_task() ticks in whole ns).  Each CPU's cfs_rq holds its
# running task (``cpu.busy``: cfs_rq->curr, kept out of the tree) and the tree - the tasks
# in its run queue (``rq_head`` list: runnable, waiting) and those whose dequeue is delayed
# (``dl_head`` list: DELAY_DEQUEUE, asleep but still competing).  The tree's sums are
# cfs_rq->sum_w_vruntime (the keys v - zero_vruntime) and cfs_rq->sum_weight
# (sum_w_vruntime_add()/_sub() in __enqueue_entity()/__dequeue_entity()); avg_vruntime()
# adds curr.  sched_feat defaults (kernel/sched/features.h, 6.18): PLACE_LAG,
# RUN_TO_PARITY, DELAY_DEQUEUE, DELAY_ZERO, WAKEUP_PREEMPTION on; NEXT_BUDDY off (so
# PICK_BUDDY's cfs_rq->next is never set here); PREEMPT_SHORT has nothing to do with equal
# slices; PLACE_DEADLINE_INITIAL is for forked tasks (the replay's threads exist at its start).
#
# The request: update_curr() - from the tick (task_tick_fair() -> entity_tick()), from
# enqueue_entity()/dequeue_entity()/put_prev_entity() and pick_task_fair() - adds the CPU
# time to vruntime and calls update_deadline(), which on a used-up request (vruntime >=
# deadline) gives a new one (deadline = vruntime + sysctl_sched_base_slice) and returns
# true; then ``if (cfs_rq->nr_queued == 1) return; if (resched || !protect_slice(curr))
# resched_curr_lazy(rq)``.  set_next_entity() -> set_protect_slice() puts se->vprot at the
# deadline (equal slices), so a task is protected until its request is used up, and not
# after a renewal while it runs until it is picked again.  With preempt=none
# resched_curr_lazy() sets TIF_NEED_RESCHED itself (get_lazy_tif_bit(): dynamic_preempt_lazy()
# is false), which the task acts on at cond_resched() or at the return to user mode; then
# __schedule() -> pick_task_fair() -> pick_eevdf() chooses, and may choose the task again.
#
# Eligibility: pick_eevdf() passes over a current task that is not eligible - vruntime past
# the queue's weighted average, entity_eligible() - even inside its request, and picks the
# eligible entity with the earliest deadline; a wake-up (check_preempt_wakeup_fair())
# preempts only if that pick is the woken task.  A task's lag (vlag = avg_vruntime() -
# vruntime, update_entity_lag(), clamped to the slice plus TICK_NSEC) is kept across a sleep
# and restored by place_entity() when it wakes (PLACE_LAG); a task going to sleep
# ineligible stays queued (DELAY_DEQUEUE) until picked - then dequeued, its lag clipped to
# 0 (DELAY_ZERO) - or woken (requeue_delayed_entity()).  A task's CPU time counts from when
# it takes its CPU (take()) to when it leaves it (release_cpu_at()); think time is off the
# CPU here (loop.py): a sleep, whose user time does not advance vruntime.
@internal(inline=True)
def _ns(x):
    """The kernel's clock: whole ns."""
    return np.int64(np.floor(x))


@internal(inline=True)
def _div_s64(a, b):
    """div_s64(): truncating division (b > 0); numba's // floors, as Python's does."""
    return a // b if a >= 0 else -((-a) // b)


@internal(inline=True)
def _key(S, c, t):
    """entity_key(): t's vruntime relative to its cfs_rq's zero_vruntime."""
    return thread(S, t).vruntime - cpu(S, c).zero_vruntime


@internal(inline=True)
def _tree_add(S, c, t):
    """__enqueue_entity() -> sum_w_vruntime_add()."""
    q = cpu(S, c)
    q.sum_w_vruntime += _key(S, c, t)
    q.sum_weight += 1


@internal(inline=True)
def _tree_sub(S, c, t):
    """__dequeue_entity() -> sum_w_vruntime_sub()."""
    q = cpu(S, c)
    q.sum_w_vruntime -= _key(S, c, t)
    q.sum_weight -= 1


@internal
def avg_vruntime(S, c):
    """avg_vruntime(): the weighted average of the tree's and curr's vruntimes, moving
    zero_vruntime there (update_zero_vruntime()).  The kernel floors a negative sum
    (``runtime -= (weight - 1)`` before div_s64()), so a task placed at the average is
    eligible; numba's // floors both ways."""
    q = cpu(S, c)
    cur = q.busy
    weight = q.sum_weight
    delta = 0
    if weight > 0:
        runtime = q.sum_w_vruntime
        if cur >= 0:
            runtime += _key(S, c, cur)
            weight += 1
        delta = runtime // weight
    elif cur >= 0:
        delta = _key(S, c, cur)  # one entity: it is the average
    q.sum_w_vruntime -= q.sum_weight * delta
    q.zero_vruntime += delta
    return q.zero_vruntime


@internal
def vruntime_eligible(S, c, v):
    """vruntime_eligible(): lag >= 0 at vruntime v, ``avg >= (v - zero_vruntime) * load``
    over the tree and curr (no division: exact)."""
    q = cpu(S, c)
    avg = q.sum_w_vruntime
    load = q.sum_weight
    if q.busy >= 0:
        avg += _key(S, c, q.busy)
        load += 1
    return avg >= (v - q.zero_vruntime) * load


@internal
def update_entity_lag(S, c, t):
    """update_entity_lag(): vlag = avg_vruntime() - vruntime, within +-(max slice +
    TICK_NSEC) (cfs_rq_max_slice(): every slice is sysctl_sched_base_slice here)."""
    k = cfg(S, 0)
    limit = np.int64(k.slice_ns) + np.int64(k.tick_ns)
    th = thread(S, t)
    th.vlag = min(max(avg_vruntime(S, c) - th.vruntime, -limit), limit)


@internal
def place_entity(S, c, t):
    """place_entity() for t joining CPU c's cfs_rq (not its curr): at avg_vruntime() less
    its lag, the lag inflated by (load + 1) / load so that it survives t's own effect on
    the average (PLACE_LAG: ``lag *= load + w; lag = div_s64(lag, load)``) - none on an
    empty cfs_rq (``cfs_rq->nr_queued && se->vlag``); a new request from there."""
    q = cpu(S, c)
    th = thread(S, t)
    v = avg_vruntime(S, c)
    load = q.sum_weight + (1 if q.busy >= 0 else 0)  # cfs_rq->nr_queued; curr's weight
    lag = np.int64(0)
    if load > 0 and th.vlag != 0:
        lag = _div_s64(th.vlag * (load + 1), load)
    th.vruntime = v - lag
    th.deadline = th.vruntime + np.int64(cfg(S, 0).slice_ns)


@internal(inline=True)
def _protected(th):
    """protect_slice(): vruntime < vprot."""
    return th.vruntime < th.vprot


@internal(inline=True)
def take(S, t, when):
    """t takes its CPU at ``when``: set_next_entity() - out of the tree, and
    set_protect_slice(): vprot at its deadline (RUN_TO_PARITY, equal slices)."""
    th = thread(S, t)
    _tree_sub(S, th.cpu, t)
    th.vprot = th.deadline
    th.ran_at = when
    th.resched = False
    th.preempted = False


@internal
def account(S, t, when):
    """The ticks of t, running since ran_at, up to ``when``: at each, update_curr() from
    entity_tick() - vruntime, update_deadline(), and TIF_NEED_RESCHED with another entity
    on the cfs_rq; then t's CPU time up to ``when`` (no update_curr() there: its deadline is
    looked at by the next).  Every change to the cfs_rq of t's CPU accounts t first, so
    the cfs_rq held at tick T what it holds now."""
    th = thread(S, t)
    if when <= th.ran_at:
        return
    k = cfg(S, 0)
    q = cpu(S, th.cpu)
    if k.tick_ns > 0:
        tick = (np.floor(th.ran_at / k.tick_ns) + 1.0) * k.tick_ns
        while tick <= when:
            th.vruntime += _ns(tick) - _ns(th.ran_at)
            th.ran_at = tick
            if _update_deadline(S, t) or not _protected(th):
                if q.sum_weight > 0:  # cfs_rq->nr_queued > 1
                    th.resched = True  # resched_curr_lazy()
            tick += k.tick_ns
    th.vruntime += _ns(when) - _ns(th.ran_at)
    th.ran_at = when


@internal(inline=True)
def _update_deadline(S, t):
    """update_deadline(): a used-up request renewed, returning true."""
    th = thread(S, t)
    if th.vruntime < th.deadline:
        return False
    th.deadline = th.vruntime + np.int64(cfg(S, 0).slice_ns)
    avg_vruntime(S, th.cpu)
    return True


@internal
def update_curr(S, t, when):
    """update_curr() for t, its CPU's curr, at ``when``: the ticks since it last ran
    (account()), then update_deadline() and, had it run meanwhile, resched as at a tick."""
    th = thread(S, t)
    ran = when > th.ran_at
    account(S, t, when)
    renewed = _update_deadline(S, t)
    if ran and cpu(S, th.cpu).sum_weight > 0 and (renewed or not _protected(th)):
        th.resched = True


@internal
def _pick_eevdf(S, c, cur, protect, excl):
    """pick_eevdf() on CPU c with curr ``cur`` (-1: none on_rq): curr if it is the only
    entity; curr dropped if not eligible; curr if protected (``protect``, RUN_TO_PARITY);
    else the eligible entity of the tree with the earliest deadline - the augmented
    rb-tree's search, here a walk of the run queue then the delayed list, ties to the
    first - or curr if its deadline is earlier (entity_before()).  ``excl``: a tree entity
    not to pick (the engine's own yield at an op's end: the yielder), -1 none.  -1: none."""
    q = cpu(S, c)
    if q.sum_weight + (1 if cur >= 0 else 0) == 1 and excl < 0:  # cfs_rq->nr_queued == 1
        if cur >= 0:
            return cur
        return q.rq_head if q.rq_head >= 0 else q.dl_head
    if cur >= 0 and not vruntime_eligible(S, c, thread(S, cur).vruntime):
        cur = -1
    if cur >= 0 and protect and _protected(thread(S, cur)):
        return cur
    best = -1
    for lst in range(2):
        s = q.rq_head if lst == 0 else q.dl_head
        while s >= 0:
            ts = thread(S, s)
            if s != excl and vruntime_eligible(S, c, ts.vruntime) and (
                    best < 0 or ts.deadline < thread(S, best).deadline):
                best = s
            s = ts.rq_next if lst == 0 else ts.dl_next
    if best < 0 or (cur >= 0 and thread(S, cur).deadline < thread(S, best).deadline):
        best = cur
    return best


@internal
def _pick_next(S, c, cur, protect, excl):
    """pick_next_entity(): pick_eevdf(), and a delayed entity picked is dequeued
    (dequeue_entities(DEQUEUE_DELAYED)) and the pick made again."""
    while True:
        se = _pick_eevdf(S, c, cur, protect, excl)
        if se < 0 or se == cur or not thread(S, se).sched_delayed:
            return se
        _finish_delayed(S, c, se)


@internal
def _finish_delayed(S, c, t):
    """dequeue_entity() of t, delayed on CPU c's cfs_rq: update_entity_lag(), out of the
    tree, then finish_delayed_dequeue_entity(): a positive lag clipped to 0 (DELAY_ZERO)."""
    update_entity_lag(S, c, t)
    th = thread(S, t)
    if th.vlag > 0:
        th.vlag = 0
    _tree_sub(S, c, t)
    _dl_unlink(S, c, t)


@internal
def _dl_unlink(S, c, t):
    q = cpu(S, c)
    th = thread(S, t)
    p = -1
    s = q.dl_head
    while s >= 0 and s != t:
        p = s
        s = thread(S, s).dl_next
    if s == t:
        if p < 0:
            q.dl_head = th.dl_next
        else:
            thread(S, p).dl_next = th.dl_next
    th.sched_delayed = False
    th.dl_next = -1


@internal
def enqueue(S, c, t, when):
    """enqueue_entity() of t, woken onto CPU c (t is not its curr): update_curr() of curr,
    then place_entity() and into the tree; a task whose dequeue was delayed there is
    requeue_delayed_entity()'d instead - its lag looked at again, and a positive one
    dropped (DELAY_ZERO: placed at the average) - and one delayed on another CPU is
    dequeued there first (its lag carried over, as a migration's is)."""
    th = thread(S, t)
    q = cpu(S, c)
    if th.sched_delayed:
        d = th.dl_cpu
        if q.busy >= 0 and q.busy != t:
            account(S, q.busy, when)
        if d == c:
            update_entity_lag(S, c, t)
            if th.vlag > 0:
                _tree_sub(S, c, t)
                th.vlag = 0
                place_entity(S, c, t)
                _tree_add(S, c, t)
            _dl_unlink(S, c, t)
            return
        od = cpu(S, d).busy
        if od >= 0:
            account(S, od, when)
        _finish_delayed(S, d, t)
    if q.busy >= 0 and q.busy != t:
        update_curr(S, q.busy, when)
    place_entity(S, c, t)
    _tree_add(S, c, t)


@internal
def dequeue(S, t, when):
    """t, its CPU's curr, leaves the cfs_rq asleep (dequeue_entity(DEQUEUE_SLEEP)): an
    ineligible one stays in the tree, delayed (DELAY_DEQUEUE), else update_entity_lag();
    a thread that is done (TASK_DEAD: is_special_task_state(), so DEQUEUE_SPECIAL, no
    delay - try_to_block_task(), kernel/sched/core.c) just leaves."""
    th = thread(S, t)
    c = th.cpu
    if not th.done and not vruntime_eligible(S, c, th.vruntime):
        q = cpu(S, c)
        _tree_add(S, c, t)
        th.sched_delayed = True
        th.dl_cpu = c
        th.dl_next = q.dl_head
        q.dl_head = t
    else:
        update_entity_lag(S, c, t)


@internal(inline=True)
def _wakeup_preempt(S, cur, pse):
    """check_preempt_wakeup_fair() on the CPU ``cur`` runs, pse just enqueued there (its
    update_curr() is enqueue()'s: no time has passed since): TIF_NEED_RESCHED if the pick
    - protected curr kept - is pse; else update_protect_slice() (RUN_TO_PARITY)."""
    th = thread(S, cur)
    if th.resched:  # test_tsk_need_resched(rq->curr)
        return
    if _pick_next(S, th.cpu, cur, True, -1) == pse:
        th.resched = True  # resched_curr_lazy()
    else:
        th.vprot = min(th.vprot, th.vruntime + np.int64(cfg(S, 0).slice_ns))


# -- run queues -------------------------------------------------------------------------------------
@internal(inline=True)
def rq_push(S, c, t):
    """t joins CPU c's run queue: woken there (enqueue(), then wakeup_preempt() for the task
    on c), or - t is c's running task - put back by its yield (put_prev_entity():
    release_cpu_at() puts it in the tree)."""
    th = thread(S, t)
    if th.in_rq:
        glob(S, 0).err = ERR_RUNQ
        return
    th.in_rq = True
    th.rq_next = -1
    q = cpu(S, c)
    if q.rq_head < 0:
        q.rq_head = t
    else:
        thread(S, q.rq_tail).rq_next = t
    q.rq_tail = t
    if q.busy == t:
        return
    now = glob(S, 0).now
    enqueue(S, c, t, now)
    if q.busy >= 0:
        _wakeup_preempt(S, q.busy, t)


@internal(inline=True)
def run_idle(S, c, t, when):
    """t, woken onto CPU c, which is idle, runs there from ``when``: enqueue() on the empty
    cfs_rq (at zero_vruntime, its lag unused), then set_next_entity()."""
    enqueue(S, c, t, glob(S, 0).now)
    cpu(S, c).busy = t
    take(S, t, when)


@internal(inline=True)
def _rq_remove(S, c, t):
    """t out of CPU c's run queue, wherever it is in it."""
    q = cpu(S, c)
    th = thread(S, t)
    p = -1
    s = q.rq_head
    while s != t:
        p = s
        s = thread(S, s).rq_next
    if p < 0:
        q.rq_head = th.rq_next
    else:
        thread(S, p).rq_next = th.rq_next
    if q.rq_tail == t:
        q.rq_tail = p
    th.in_rq = False


@internal(inline=True)
def release_cpu_at(S, t, when):
    """t leaves its CPU at ``when`` (>= now): update_curr(), then back in the tree if it
    yielded (its run queue place kept) or dequeue()'d; the thread pick_eevdf() picks runs
    then - not t (the engine's yield at an op's end gives the CPU away), and where no
    other is eligible then, the first queued."""
    c = thread(S, t).cpu
    q = cpu(S, c)
    if q.busy != t:
        return
    th = thread(S, t)
    update_curr(S, t, when)
    th.resched = False  # __schedule(): clear_tsk_need_resched(prev)
    if th.in_rq:
        _tree_add(S, c, t)
    else:
        dequeue(S, t, when)
    q.busy = -1
    nxt = _pick_next(S, c, -1, True, t if th.in_rq else -1)
    if nxt < 0:  # none eligible but the yielder, or the cfs_rq emptied
        nxt = q.rq_head
        if nxt == t and th.rq_next >= 0:
            nxt = th.rq_next
    if nxt >= 0:
        _rq_remove(S, c, nxt)
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
        run_idle(S, c, t, now + WAKEUP_NS)
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
    1; }``): with TIF_NEED_RESCHED set (account(), _wakeup_preempt()) and pick_eevdf()
    picking another task, t leaves its CPU now, still runnable and still holding its
    locks; it resumes the op where it left it when it runs again.  Picked again, it goes
    on, the flag cleared.  Returns whether it yielded.  Spinners on a lock it owns stop (owner->on_cpu is 0: block_at())."""
    now = glob(S, 0).now
    th = thread(S, t)
    account(S, t, now)
    if not th.resched:
        return False
    # __schedule() -> pick_task_fair(): update_curr(), pick_next_entity(); then
    # clear_tsk_need_resched(prev) (``picked:``) - t again, and it goes on
    update_curr(S, t, now)
    th.resched = False
    nxt = _pick_next(S, th.cpu, t, True, -1)
    if nxt < 0 or nxt == t:
        return False
    th.preempted = True
    th.rq_woken = True  # off its CPU from now until it runs again (thread.sleep)
    th.blocked_at = now
    rq_push(S, th.cpu, t)
    release_cpu_at(S, t, now)
    _locks_owner_off_cpu(S, t, now)
    return True
