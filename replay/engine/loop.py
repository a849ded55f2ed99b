"""The interpreter and the event loop.

Each thread runs its ops in order: a gap the trace recorded (think time: the thread
leaves its CPU), then the op's program, one micro-op at a time, each taking the time
the coherence model and the locks give it.  ``run_chunk`` pops events in time order
until the result buffer is full or the simulation ends.

Causal order the closed loop must keep (it drifts from the recorded timeline): a fault
waits for the writer that created its VMA (or grew it over its address), and a writer waits until the faults on its
VMAs that the trace shows before it have started.  Both point from later to earlier
trace order, so they cannot deadlock; races that really happened (a fault overlapping
the writer) stay races.  Trace order is op order (op_id), which the op builder numbers
in time order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..jit import internal

from ._dispatch import dispatch
from .coherence import LQ_GRANTED, LQ_READY, serve_next, stalled, still_waiting
from .coherence import abandon as abandon_access
from .rwsem import DR_NONE, TRY_NONE
from .sched import DW_NONE, ERR_DEADLOCK, at, block, current, pop, release_cpu, rq_push, run_idle, runnable, wake
from .narrow import op_address, op_think_ns
from .state import (cfg, cpu, glob, heap, insn, op_arg, op_cpu, op_dep, op_flags, op_start,
                    open_state, out, th_ops_p, th_order, thread, us_ops, us_p, vmaid, w_done, w_gate, w_gate_p, w_vma,
                    waiting_writers)
from .variation import start_offset
from .vma import vma_start_write_step

# op_flags bits (int16)
F_PROG = 7  # program + 1: 1 user fault, 2 kernel fault, 3 writer, 4 read-mode madvise, 0 none (no time)
F_START_KNOWN, F_END_KNOWN, F_STARTED = 8, 16, 32
PROG_FAULT, PROG_KERNEL_FAULT, PROG_WRITER, PROG_MADVISE = 0, 1, 2, 3  # Model.PROGRAMS order


@internal(inline=True)
def _is_fault(f):
    p = (f & F_PROG) - 1
    return p == PROG_FAULT or p == PROG_KERNEL_FAULT


@internal
def _min_unstarted(S, vid):
    """The first fault on VMA id vid, in op order, that has not started."""
    v = vmaid(S, vid)
    pos = v.unstarted
    end = us_p(S)[vid + 1]
    while pos < end and (op_flags(S)[us_ops(S)[pos]] & F_STARTED):
        pos += 1
    v.unstarted = pos
    return us_ops(S)[pos] if pos < end else np.iinfo(np.int64).max


@internal
def _gate(S, t):
    """Whether t's op may start now; if not, t sleeps until it may."""
    th = thread(S, t)
    j = th.op
    if _is_fault(op_flags(S)[j]):
        vid = op_arg(S)[j]
        if (vid >= 0 and vmaid(S, vid).created and not vmaid(S, vid).ever  # its creator has not run
                # the trace shows the address in this VMA only after a writer grew or merged it
                # (load._range_deps): wait for that writer's commit, as for a creator
                or cfg(S, 0).has_dep and op_dep(S)[j] >= 0 and not w_done(S)[op_dep(S)[j]]):
            v = vmaid(S, vid)
            th.wc_next = -1
            if v.wc_head < 0:
                v.wc_head = t
            else:
                thread(S, v.wc_tail).wc_next = t
            v.wc_tail = t
            block(S, t)
            return False
        return True
    w = op_arg(S)[j]
    for q in range(w_gate_p(S)[w], w_gate_p(S)[w + 1]):
        if _min_unstarted(S, w_gate(S)[q]) < j:
            g = glob(S, 0)
            waiting_writers(S)[g.ws_n] = t
            g.ws_n += 1
            block(S, t)
            return False
    return True


@internal
def _started(S, t):
    """t's fault started: wake the writers that waited only for the faults before them."""
    j = thread(S, t).op
    if not _is_fault(op_flags(S)[j]):
        return
    op_flags(S)[j] |= F_STARTED
    vid = op_arg(S)[j]
    g = glob(S, 0)
    n = g.ws_n
    if n and vid >= 0:
        k = 0
        for i in range(n):
            w = waiting_writers(S)[i]
            jw = thread(S, w).op
            ww = op_arg(S)[jw]
            hit = False
            ok = True
            for q in range(w_gate_p(S)[ww], w_gate_p(S)[ww + 1]):
                if w_gate(S)[q] == vid:
                    hit = True
            if hit:
                for q in range(w_gate_p(S)[ww], w_gate_p(S)[ww + 1]):
                    if not _min_unstarted(S, w_gate(S)[q]) > jw:
                        ok = False
                        break
            if hit and ok:
                wake(S, w, -1)
            else:
                waiting_writers(S)[k] = w
                k += 1
        g.ws_n = k


@internal
def _next_op(S, t):
    """t's next op (False: it has none left)."""
    th = thread(S, t)
    i = th.i + 1
    th.i = i
    base = th_ops_p(S)[t]
    if base + i >= th_ops_p(S)[t + 1]:
        th.done = True
        release_cpu(S, t)
        return False
    j = th_order(S)[base + i]
    th.op = j
    f = op_flags(S)[j]
    prog = (f & F_PROG) - 1
    th.prog = prog
    fault = prog == PROG_FAULT or prog == PROG_KERNEL_FAULT
    th.vma = op_arg(S)[j] if fault else -1
    th.w = -1 if fault else op_arg(S)[j]
    th.addr = op_address(S, j, th.vma) if cfg(S, 0).has_addr else -1
    if prog == PROG_MADVISE:  # lock_vma_under_rcu(mm, range.start): the VMA there
        th.vma = w_vma(S)[th.w]
    th.pc = 0
    th.slot = -1
    th.found = -1
    th.ref_obj = -1
    th.ref_has = False
    th.seq_has = False
    th.try_state = TRY_NONE
    th.dr = DR_NONE
    th.dw = DW_NONE
    th.thinking = False
    th.finished = False
    th.rec = True
    th.start = np.nan
    th.wait = 0.0
    th.cache = 0.0
    th.transfers = 0
    th.outcome = -1  # no count_vm_vma_lock_event() yet
    th.misses = 0
    th.fallback = False
    th.attempts = 0
    th.fp_step = 0
    th.retried = False
    th.wait_due = False
    th.anon_prep = False
    th.fp_res = 0.0
    th.fp_rwait = 0.0
    th.fp_svc = 0.0
    th.sleep = 0.0
    th.wk_i = 0
    th.wv = 0
    th.wk_n = -1
    # The trace's gap since the previous op ended; where that op's end is unknown (a
    # fault served under the VMA lock traces no end), the gap also holds the real
    # fault's duration, which the simulated fault has just replaced: subtract it.
    # Open loop: the op starts at its recorded time, or when its thread is free.
    if cfg(S, 0).open_loop and (f & F_START_KNOWN):
        think = op_start(S)[j] - glob(S, 0).now
    else:
        think = op_think_ns(S, j) - th.prev_unknown
    if i == 0 and not cfg(S, 0).open_loop:  # its first op: it leaves the start barrier (variation.py);
        think += start_offset(S, t)  # open loop keeps the recorded start instead
    th.think = max(0.0, think)
    return True


@internal(inline=True)
def _next_cpu(S, t):
    """The CPU t's next op was recorded on (as-recorded placement), -1: none, or no next op.

    The scheduler moved the thread between the two ops, in the gap the trace recorded:
    woken on another CPU (try_to_wake_up(): select_task_rq(), set_task_cpu(), then
    ttwu_do_activate() enqueues it there), or pulled there by load balancing
    (detach_task() / attach_task(), kernel/sched/fair.c) or the migration stopper
    (move_queued_task(), kernel/sched/core.c) - Linux 6.18.  Each ends the same way:
    activate_task() on the destination rq, then wakeup_preempt() there, which takes the
    CPU from an op in progress only at a writer's cond_resched() (sched.py's docstring).  So the thread leaves
    its CPU at the op's end (the first thread queued there runs), takes the new CPU
    after the gap if it is idle, and otherwise waits in its run queue until the op
    running there ends.  Its lines stay where they were: the coherence model moves them
    as it touches them from the new CPU."""
    if not cfg(S, 0).has_op_cpu:
        return -1
    th = thread(S, t)
    k = th_ops_p(S)[t] + th.i + 1
    if k >= th_ops_p(S)[t + 1]:
        return -1
    return op_cpu(S)[th_order(S)[k]]


@internal
def _finish(S, t):
    th = thread(S, t)
    g = glob(S, 0)
    j = th.op
    end = g.now
    r = out(S, g.nout)
    g.nout += 1
    r.op = j
    r.t = t
    r.cpu = th.cpu
    r.start = th.start
    r.end = end
    r.wait = th.wait
    r.cache = th.cache
    r.transfers = th.transfers
    r.outcome = th.outcome
    r.misses = th.misses
    r.fallback = th.fallback
    r.attempts = th.attempts
    r.svc = th.fp_svc
    r.res = th.fp_res
    r.rwait = th.fp_rwait
    r.sleep = th.sleep
    r.anon_prep = th.anon_prep
    th.prev_unknown = (end - th.start) if not (op_flags(S)[j] & F_END_KNOWN) else 0.0


@njit(cache=True, inline="always")
def _exec(S, t):
    """One micro-op of t: when t continues (< 0: it blocked, or stalls at an access that
    waits for its line - coherence.wait_line(): the same micro-op runs again when the
    wait is over)."""
    g = glob(S, 0)
    th = thread(S, t)
    if still_waiting(S, t):  # run by a wake-up meant for something else: its access still waits
        return -1.0
    if g.pend_t == t and g.pend_i < g.pend_n:
        end = vma_start_write_step(S, t)
    else:
        pc = th.pc
        ins = insn(S, th.prog * cfg(S, 0).plen + pc)
        th.pc = pc + 1
        end, again = dispatch(S, t, ins.op, ins.a1, ins.a2, ins.a3)
        if stalled(S, t):
            th.pc = pc
            return -1.0
        if again:
            th.pc -= 1
    if stalled(S, t):
        return -1.0
    if th.lq_state == LQ_GRANTED or th.lq_state == LQ_READY:  # its step went another way
        abandon_access(S, t)
    return end


@internal
def _step(S, t):
    """Run t from now until it spends time, blocks, or runs out of ops."""
    th = thread(S, t)
    g = glob(S, 0)
    c = th.cpu
    q = cpu(S, c)
    if th.waking:  # its wake_up_q() step has come (sched.wake_at): it wants its CPU
        th.waking = False
        runnable(S, t)
        return
    if th.thinking:  # back from its gap: needs its CPU again
        th.thinking = False
        if q.busy >= 0 and q.busy != t:
            rq_push(S, c, t)
            return
        run_idle(S, c, t, g.now)
    while True:
        if not th.rec or th.finished:
            moved = False
            if th.rec:
                _finish(S, t)
                nc = _next_cpu(S, t)
                if nc >= 0 and nc != c:  # its next op ran on another CPU: it migrates there
                    release_cpu(S, t)
                    th.cpu = c = nc
                    q = cpu(S, c)
                    moved = True
                elif q.rq_head >= 0:  # yield the CPU at op boundaries
                    rq_push(S, c, t)
                    release_cpu(S, t)
                    th.rec = False
                    return
            if not _next_op(S, t):
                return
            if th.think > 0:
                # The gap before the op: user time or sleep, the trace cannot say which.
                # The thread leaves its CPU to others meanwhile (a thread sleeping in
                # pthread_join must not hold a CPU for 60 ms).
                th.thinking = True
                release_cpu(S, t)
                at(S, g.now + th.think, t)
                return
            if moved:  # no gap: it wants its new CPU now, queued if that one is busy
                if q.busy >= 0:
                    rq_push(S, c, t)
                    return
                run_idle(S, c, t, g.now)
        if np.isnan(th.start):
            if not _gate(S, t):
                return
            th.start = g.now
            th.wait = 0.0  # a causal wait before the op is not a lock wait
            th.sleep = 0.0
            _started(S, t)
        if th.prog < 0:
            th.finished = True
            continue
        r = _exec(S, t)
        if r < 0:  # blocked
            return
        if r > g.now:
            if (g.heap_n == 0 or _heap_top(S) > r) and g.nout < g.chunk and g.nwait < g.wait_chunk:
                # The event would be pushed and popped straight back: nothing else is
                # due before r (ties go to the older event, so strictly before).  Same
                # order, same sequence and token numbers, no heap traffic.
                g.seq += 1
                th.token += 1
                g.now = r
                continue
            at(S, r, t)
            return


@internal(inline=True)
def _heap_top(S):
    return heap(S, 0).when


@njit(cache=True)
def start(Sarr):
    """Every thread on its CPU, or queued behind the one already there."""
    S = open_state(Sarr)
    for t in range(cfg(S, 0).nthreads):
        c = thread(S, t).cpu
        if cpu(S, c).busy < 0:
            run_idle(S, c, t, 0.0)
            at(S, 0.0, t)
        else:
            rq_push(S, c, t)


@njit(cache=True, inline="always")
def _events(S, n, chunked):
    """Pop and run at most n events in time order; with ``chunked``, stop when the result
    buffer is full (it keeps room for a step's zero-time ops), or the waits buffer
    (room for a step's waits: waits.py).  Returns True when the simulation ended (no
    event left, or glob.err set)."""
    g = glob(S, 0)
    k = 0
    while g.heap_n > 0 and k < n:
        if chunked and (g.nout >= g.chunk or g.nwait >= g.wait_chunk):
            return False
        when, t, tok = pop(S)
        g.now = when
        k += 1
        if not current(S, t, tok):  # superseded (a spinner's timeout after it was let in)
            continue
        if t >= cfg(S, 0).nthreads:  # a line came free with requests waiting
            t = serve_next(S, t - cfg(S, 0).nthreads)
            if t < 0:
                continue
            # A load or an atomic granted: its thread runs the access now (coherence.arbitrate()
            # would schedule it).  With nothing else due first (ties go to the older event) and
            # room in the buffers, that event would be pushed and popped straight back: run it
            # here, with its sequence and token numbers, as _step's shortcut does.
            if not (g.nout < g.chunk and g.nwait < g.wait_chunk and (g.heap_n == 0 or _heap_top(S) > g.now)):
                at(S, g.now, t)
                continue
            g.seq += 1
            thread(S, t).token += 1
        _step(S, t)
        if g.err:
            return True
    return g.heap_n == 0


@njit(cache=True, nogil=True)
def run_chunk(Sarr):
    """Run until the result buffer is full or the simulation ends.  Returns True when
    it ended (then check glob.err: a thread left unfinished is a deadlock)."""
    S = open_state(Sarr)
    if not _events(S, np.iinfo(np.int64).max, True):
        return False
    g = glob(S, 0)
    if not g.err:
        for t in range(cfg(S, 0).nthreads):
            if not thread(S, t).done:
                g.err = ERR_DEADLOCK
                break
    return True


@njit(cache=True)
def run_events(Sarr, n):
    """Run at most n events (for stepping through a replay by hand: tests, debugging).
    Returns True when the simulation ended."""
    return _events(open_state(Sarr), n, False)
