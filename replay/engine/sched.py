"""The event loop's clock, the event heap, run queues, sleeping and waking.

One event per thread is current (``thread.token``); an event whose token is older was
superseded (a spinner's timeout after it was let in) and is skipped when popped.  Ties
in time run in scheduling order (``glob.seq``), so a replay is deterministic.  Each
simulated CPU runs one thread at a time; a woken thread whose CPU is busy waits in that
CPU's run queue, and a spinning writer yields to it (need_resched()).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .state import cfg, cpu, glob, heap, lock, thread

WAKEUP_NS = 2000.0  # est.: try_to_wake_up() until the woken task runs on an idle CPU
ERR_DEADLOCK, ERR_RUNQ, ERR_WAITER_READER = 1, 2, 3

# thread.dw: where a down_write() is (see rwsem.py)
DW_NONE, DW_OWNER, DW_SPIN, DW_WAIT, DW_NONSPIN = 0, 1, 2, 3, 4


# -- the heap -------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _less(S, a, b):
    x, y = heap(S, a), heap(S, b)
    return x.when < y.when or (x.when == y.when and x.seq < y.seq)


@njit(cache=True, inline="always")
def _swap(S, a, b):
    x, y = heap(S, a), heap(S, b)
    x.when, y.when = y.when, x.when
    x.seq, y.seq = y.seq, x.seq
    x.t, y.t = y.t, x.t
    x.token, y.token = y.token, x.token


@njit(cache=True, inline="always")
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


@njit(cache=True)
def _compact_heap(S):
    """Drop entries whose token is stale (never popped as current anyway); re-heapify."""
    g = glob(S, 0)
    k = 0
    for i in range(g.heap_n):
        e = heap(S, i)
        if e.token == thread(S, e.t).token:
            d = heap(S, k)
            d.when, d.seq, d.t, d.token = e.when, e.seq, e.t, e.token
            k += 1
    g.heap_n = k
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(S, i, k)


@njit(cache=True, inline="always")
def at(S, when, t):
    """Schedule thread t's next step at ``when`` (superseding any it had)."""
    g = glob(S, 0)
    g.seq += 1
    th = thread(S, t)
    th.token += 1
    if g.heap_n == cfg(S, 0).heap_cap:
        _compact_heap(S)
    i = g.heap_n
    g.heap_n = i + 1
    e = heap(S, i)
    e.when, e.seq, e.t, e.token = when, g.seq, t, th.token
    while i > 0:
        p = (i - 1) // 2
        if _less(S, i, p):
            _swap(S, i, p)
            i = p
        else:
            break


@njit(cache=True, inline="always")
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


# -- run queues -------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def rq_push(S, c, t):
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


@njit(cache=True, inline="always")
def _rq_pop(S, c):
    q = cpu(S, c)
    t = q.rq_head
    th = thread(S, t)
    q.rq_head = th.rq_next
    th.in_rq = False
    return t


@njit(cache=True, inline="always")
def release_cpu(S, t):
    """t leaves its CPU; the first thread queued there runs."""
    c = thread(S, t).cpu
    q = cpu(S, c)
    if q.busy != t:
        return
    q.busy = -1
    if q.rq_head >= 0:
        nxt = _rq_pop(S, c)
        q.busy = nxt
        now = glob(S, 0).now
        tn = thread(S, nxt)
        if tn.rq_woken:  # woken mid-op onto a busy CPU: off it until now
            tn.rq_woken = False
            tn.sleep += now - tn.blocked_at
        at(S, now, nxt)


@njit(cache=True)
def block(S, t):
    """t sleeps (schedule()): it leaves its CPU until wake() (``thread.sleep`` counts the
    time off it: pft's faults/cpu counts only on-CPU time, getrusage(RUSAGE_THREAD))."""
    now = glob(S, 0).now
    th = thread(S, t)
    th.blocked = True
    th.blocked_at = now
    release_cpu(S, t)
    # spinners on a lock this task owns stop once it is off the CPU (owner->on_cpu)
    if lock(S, 0).owner == t + 1:
        sp = lock(S, 0).osq_head
        while sp >= 0:
            at(S, now, sp)
            sp = thread(S, sp).osq_next
    k = th.wlock
    if k > 0 and lock(S, k).owner == t + 1:
        sp = lock(S, k).osq_head
        while sp >= 0:
            at(S, now, sp)
            sp = thread(S, sp).osq_next


@njit(cache=True)
def wake(S, t, k):
    """Wake t (try_to_wake_up()); its wait counts against lock k (-1: no lock)."""
    th = thread(S, t)
    if not th.blocked:  # granted before it went to sleep: it will see it
        return
    now = glob(S, 0).now
    waited = now - th.blocked_at
    th.wait += waited
    if k >= 0:
        lk = lock(S, k)
        lk.wait_total += waited
        lk.wait_max = max(lk.wait_max, waited)
        lk.wait_min = waited if np.isnan(lk.wait_min) else min(lk.wait_min, waited)
    th.blocked = False
    when = now + WAKEUP_NS
    c = th.cpu
    q = cpu(S, c)
    if q.busy < 0:
        q.busy = t
        th.sleep += when - th.blocked_at  # off its CPU until it runs
        at(S, when, t)
    else:
        th.rq_woken = True
        rq_push(S, c, t)
        cur = q.busy
        if thread(S, cur).dw == DW_SPIN:  # need_resched(): the spinner yields
            at(S, now, cur)
