"""The compiled engine: reference.py's simulation, step for step, over integer arrays.

Same events in the same order, same floating-point operations in the same order, so
the results are identical to the reference engine's (tests/test_compiled.py checks
every column, lock and line statistic on toys, random traces and the sample traces);
the reference stays the readable statement of the semantics and this is what runs.

How the reference's objects became arrays:

* cache lines get dense ids (the mm_struct's page, then the VMA slab, then the
  vma_lock slab, each region an even number of lines so ``line ^ 1`` is still the
  128-byte buddy); a line's sharers are a bitmask (words of 64 CPUs) with per-socket
  counts, so "another socket holds a copy" is a subtraction, not a scan;
* threads, VMA objects, rw_semaphores are indices; wait queues and OSQ spinner lists
  are doubly linked lists threaded through per-thread arrays (a thread waits on one
  lock at a time), run queues singly linked;
* the event heap is a binary heap of (time, sequence) keys with the reference's
  stale-token rule; a full heap drops its stale entries (at most one entry a thread
  is current).  When a thread's next step is due before anything in the heap, it runs
  at once with the sequence and token numbers a push and pop would have given it - the
  same order without the heap traffic (two thirds of the steps);
* all state lives in two flat arrays, I (int64) and F (float64), with a header of
  region offsets (``H_*``); inside the loop they are raw typed pointers, because numba
  reference-counts every array passed to a function (atomic increments and
  decrements, which were most of the run time) and a pointer has no count;
* vma_start_write()'s expanded steps (the reference's ``pending`` deque) live in one
  buffer, since only the mmap_lock write holder can have any;
* results leave in chunks (``run_chunk`` returns when its buffer is full), so memory
  does not grow with the trace.

Every function here mirrors the reference method of the same name; read that one for
the kernel citations.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..models.kernels import VMA_LOCK_OFFSET
from .isa import Op
from .reference import (DEFAULT_WRITER_NS, MAX_READERS_WAKEUP, MM_BASE, RSPIN_BASE_NS, RSPIN_MAX_NS,
                        RSPIN_PER_READER_NS, RWSEM_WAIT_TIMEOUT_NS, VMA_LOCK_SLAB_BASE, VMA_SLAB_BASE, WAKEUP_NS)
from .source import OpsSource

WL, FW, HO = 1, 2, 4
BIAS = 256
RFM = WL | FW | HO
LOCK_MASK = WL | ~(BIAS - 1)
RO = -1  # READER_OWNED
INF = np.inf

OUTCOMES = ("success", "abort", "retry", "miss")

# integer config (CI) and float config (CF) slots
(CI_PREFETCH, CI_VLOCK, CI_REF_LIMIT, CI_WAKE_LAST, CI_WRITER_REF, CI_TYPESAFE, CI_OPEN_LOOP, CI_VMA_PER_PAGE,
 CI_VMA_STRIDE, CI_VL_PER_PAGE, CI_VL_STRIDE, CI_VBASE, CI_LBASE, CI_F_VM_START, CI_F_VM_LOCK_SEQ, CI_F_VM_REFCNT,
 CI_VL_COUNT, CI_VL_OWNER, CI_VL_IN_VMA, CI_MM_MT, CI_MM_COUNT, CI_MM_OWNER, CI_MM_WWAIT, CI_MM_SEQ, CI_NSOCK,
 CI_W, CI_NCPU, CI_PLEN, CI_HCAP, CI_NT, CI_LS, CI_RANK_IS_INDEX, CI_N) = range(33)
LN_OWNER, LN_NSH, LN_VER, LN_TR, LN_INV, LN_SCNT = range(6)  # line record fields; then masks
CF_L1, CF_LLC, CF_ATOMIC, CF_RSHARED, CF_REXCL, CF_CROSS, CF_SERVICE, CF_N = range(8)
# mutable scalars: G (int64) and NOW (float64)
(G_SEQ, G_MM_SEQ, G_WW, G_HEAP, G_NOUT, G_NOBJ, G_NSLOTS, G_NFREE, G_PEND_N, G_PEND_I, G_PEND_STEP, G_PEND_T,
 G_WS_N, G_WAKEUPS, G_DRAINS, G_CAS, G_ERR, G_NVORDER, G_CHUNK, G_N) = range(20)

# thread register states
TRY_NONE, TRY_CAS, TRY_OWNER = 0, 1, 2
DR_NONE, DR_OWNER, DR_WAIT, DR_GRANTED = 0, 1, 2, 3
DW_NONE, DW_OWNER, DW_SPIN, DW_WAIT = 0, 1, 2, 3

ERR_DEADLOCK, ERR_RUNQ, ERR_WAITER_READER = 1, 2, 3


# lock integer stats (lk_i columns) and float stats (lk_f columns)
LI_ACQ, LI_CON, LI_TF = range(3)
LF_WT, LF_WMAX, LF_WMIN, LF_HT, LF_HMAX, LF_HMIN = range(6)

# The state is two flat arrays, I (int64) and F (float64): I starts with the scalars G,
# then the integer config CI, then the offset of every region below; F starts with
# the clock, then the float config CF.  Per-op data lives in P (compact dtypes).
CI0 = G_N
CF0 = 1
HB = CI0 + CI_N
I_REGIONS = (
    'ln', 'out_t', 'sock', 'hp_seq', 'hp_t', 'hp_tok', 'th_token', 'th_in_rq', 'th_rq_next',
    'rq_head', 'rq_tail', 'th_cpu', 'cpu_busy', 'th_blocked', 'lk_owner', 'lk_sh', 'sp_next',
    'th_wlock', 'th_dw', 'th_tr', 'ob_slot', 'th_slot', 'slot_obj', 'th_vma', 'vid_obj', 'freelist',
    'ob_vid', 'ob_seq', 'ob_ref', 'ob_live', 'lk_count', 'lk_wh', 'lk_wt', 'lk_st', 'lk_cline',
    'lk_oline', 'vid_ever', 'vid_order', 'vid_succ', 'lk_i', 'th_hs_vlock', 'w_write', 'w_handoff',
    'w_next', 'w_prev', 'sp_prev', 'th_dr', 'th_try', 'th_try_ver', 'th_pc', 'th_ref_has',
    'th_ref_ver', 'th_ref_obj', 'pend_obj', 'th_op', 'w_freed_p', 'w_freed', 'w_succ',
    'w_created_p', 'w_created', 'wc_head', 'th_wc_next', 'th_prog', 'prog', 'th_w', 'w_hold',
    'th_found', 'w_ids_p', 'w_ids', 'th_outcome', 'th_fb', 'th_att', 'th_finished', 'th_seq_has',
    'us_pos', 'us_p', 'vid_created', 'wc_tail', 'w_gate_p', 'w_gate', 'ws', 'th_i', 'th_p',
    'th_done', 'th_thinking', 'th_rec', 'out_op', 'out_cpu', 'out_tr', 'out_outcome', 'out_fb',
    'out_att',
)
F_REGIONS = (
    'handoff', 'ln_busy', 'hp_when', 'th_blocked_at', 'th_wait', 'lk_f', 'th_cache', 'th_hs_mm',
    'th_hs_v', 'w_since', 'th_dw_deadline', 'th_dw_since', 'th_start', 'th_prev_unknown',
    'th_think', 'out_start', 'out_end', 'out_wait', 'out_cache',
)
H_ln = HB + 0
H_out_t = HB + 1
H_sock = HB + 2
H_hp_seq = HB + 3
H_hp_t = HB + 4
H_hp_tok = HB + 5
H_th_token = HB + 6
H_th_in_rq = HB + 7
H_th_rq_next = HB + 8
H_rq_head = HB + 9
H_rq_tail = HB + 10
H_th_cpu = HB + 11
H_cpu_busy = HB + 12
H_th_blocked = HB + 13
H_lk_owner = HB + 14
H_lk_sh = HB + 15
H_sp_next = HB + 16
H_th_wlock = HB + 17
H_th_dw = HB + 18
H_th_tr = HB + 19
H_ob_slot = HB + 20
H_th_slot = HB + 21
H_slot_obj = HB + 22
H_th_vma = HB + 23
H_vid_obj = HB + 24
H_freelist = HB + 25
H_ob_vid = HB + 26
H_ob_seq = HB + 27
H_ob_ref = HB + 28
H_ob_live = HB + 29
H_lk_count = HB + 30
H_lk_wh = HB + 31
H_lk_wt = HB + 32
H_lk_st = HB + 33
H_lk_cline = HB + 34
H_lk_oline = HB + 35
H_vid_ever = HB + 36
H_vid_order = HB + 37
H_vid_succ = HB + 38
H_lk_i = HB + 39
H_th_hs_vlock = HB + 40
H_w_write = HB + 41
H_w_handoff = HB + 42
H_w_next = HB + 43
H_w_prev = HB + 44
H_sp_prev = HB + 45
H_th_dr = HB + 46
H_th_try = HB + 47
H_th_try_ver = HB + 48
H_th_pc = HB + 49
H_th_ref_has = HB + 50
H_th_ref_ver = HB + 51
H_th_ref_obj = HB + 52
H_pend_obj = HB + 53
H_th_op = HB + 54
H_w_freed_p = HB + 55
H_w_freed = HB + 56
H_w_succ = HB + 57
H_w_created_p = HB + 58
H_w_created = HB + 59
H_wc_head = HB + 60
H_th_wc_next = HB + 61
H_th_prog = HB + 62
H_prog = HB + 63
H_th_w = HB + 64
H_w_hold = HB + 65
H_th_found = HB + 66
H_w_ids_p = HB + 67
H_w_ids = HB + 68
H_th_outcome = HB + 69
H_th_fb = HB + 70
H_th_att = HB + 71
H_th_finished = HB + 72
H_th_seq_has = HB + 73
H_us_pos = HB + 74
H_us_p = HB + 75
H_vid_created = HB + 76
H_wc_tail = HB + 77
H_w_gate_p = HB + 78
H_w_gate = HB + 79
H_ws = HB + 80
H_th_i = HB + 81
H_th_p = HB + 82
H_th_done = HB + 83
H_th_thinking = HB + 84
H_th_rec = HB + 85
H_out_op = HB + 86
H_out_cpu = HB + 87
H_out_tr = HB + 88
H_out_outcome = HB + 89
H_out_fb = HB + 90
H_out_att = HB + 91
H_handoff = HB + 92
H_ln_busy = HB + 93
H_hp_when = HB + 94
H_th_blocked_at = HB + 95
H_th_wait = HB + 96
H_lk_f = HB + 97
H_th_cache = HB + 98
H_th_hs_mm = HB + 99
H_th_hs_v = HB + 100
H_w_since = HB + 101
H_th_dw_deadline = HB + 102
H_th_dw_since = HB + 103
H_th_start = HB + 104
H_th_prev_unknown = HB + 105
H_th_think = HB + 106
H_out_start = HB + 107
H_out_end = HB + 108
H_out_wait = HB + 109
H_out_cache = HB + 110
NREG = 111


# -- coherence --------------------------------------------------------------------------
# A line is a record of int64s in region "ln": owner, sharer count, version, transfers,
# invalidations, sharers per socket, then the sharer bitmask (one word per 64 CPUs).
@njit(cache=True, inline="always")
def _lrec(I, n):
    return I[H_ln] + n * I[CI0 + CI_LS]


@njit(cache=True, inline="always")
def _has(I, r, cpu):
    return (I[r + LN_SCNT + I[CI0 + CI_NSOCK] + (cpu >> 6)] >> (cpu & 63)) & 1


@njit(cache=True)
def _only_sharer(I, r, cpu):
    NS = I[CI0 + CI_NSOCK]
    for k in range(LN_SCNT, LN_SCNT + NS + I[CI0 + CI_W]):
        I[r + k] = 0
    I[r + LN_SCNT + NS + (cpu >> 6)] = np.int64(1) << (cpu & 63)
    I[r + LN_NSH] = 1
    I[r + LN_SCNT + I[I[H_sock] + cpu]] = 1


@njit(cache=True)
def coh_read(I, F, n, cpu, now):
    start = max(now, F[I[H_ln_busy] + n])
    r = _lrec(I, n)
    if _has(I, r, cpu):
        return start, F[CF0 + CF_L1]
    own = I[r + LN_OWNER]
    sock = I[I[H_sock] + cpu]
    if own >= 0:
        cost = F[I[H_handoff] + own * I[CI0 + CI_NCPU] + cpu]
    elif I[r + LN_NSH] > 0:
        cost = F[CF0 + CF_RSHARED] if I[r + LN_SCNT + sock] > 0 else F[CF0 + CF_CROSS]
    else:
        cost = F[CF0 + CF_LLC]
    I[r + LN_TR] += 1
    if own >= 0:
        I[r + LN_OWNER] = -1
    I[r + LN_SCNT + I[CI0 + CI_NSOCK] + (cpu >> 6)] |= np.int64(1) << (cpu & 63)
    I[r + LN_NSH] += 1
    I[r + LN_SCNT + sock] += 1
    return start, cost


@njit(cache=True)
def coh_write(I, F, n, cpu, now, atomic, changes):
    start = max(now, F[I[H_ln_busy] + n])
    base = F[CF0 + CF_ATOMIC] if atomic else F[CF0 + CF_L1]
    r = _lrec(I, n)
    has = _has(I, r, cpu) != 0
    own = I[r + LN_OWNER]
    nsh = I[r + LN_NSH]
    if own == cpu and has and nsh == 1:
        cost = base  # already exclusive here: the sharer set stays {cpu}
    else:
        others = nsh - (1 if has else 0)
        if own >= 0 and own != cpu:
            cost = F[I[H_handoff] + own * I[CI0 + CI_NCPU] + cpu] + base
        elif others > 0:
            far = nsh - I[r + LN_SCNT + I[I[H_sock] + cpu]] > 0
            inval = F[CF0 + CF_CROSS] if far else F[CF0 + CF_REXCL]
            cost = (inval if not has else inval / 2) + base
        else:
            cost = F[CF0 + CF_LLC] + base
        if not has or (own != -1 and own != cpu):
            I[r + LN_TR] += 1
        I[r + LN_INV] += others
        I[r + LN_OWNER] = cpu
        _only_sharer(I, r, cpu)
    if atomic:
        F[I[H_ln_busy] + n] = start + cost
    if changes:
        I[r + LN_VER] += 1
    if I[CI0 + CI_PREFETCH]:
        rb = _lrec(I, n ^ 1)
        ob = I[rb + LN_NSH] - (1 if _has(I, rb, cpu) else 0)
        if ob > 0:
            I[rb + LN_INV] += ob
            I[rb + LN_TR] += 1
            _only_sharer(I, rb, cpu)
            I[rb + LN_OWNER] = cpu if I[rb + LN_OWNER] >= 0 else -1
    return start, cost


# -- heap -------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _less(I, F, a, b):
    return F[I[H_hp_when] + a] < F[I[H_hp_when] + b] or (F[I[H_hp_when] + a] == F[I[H_hp_when] + b] and I[I[H_hp_seq] + a] < I[I[H_hp_seq] + b])


@njit(cache=True, inline="always")
def _swap(I, F, a, b):
    F[I[H_hp_when] + a], F[I[H_hp_when] + b] = F[I[H_hp_when] + b], F[I[H_hp_when] + a]
    I[I[H_hp_seq] + a], I[I[H_hp_seq] + b] = I[I[H_hp_seq] + b], I[I[H_hp_seq] + a]
    I[I[H_hp_t] + a], I[I[H_hp_t] + b] = I[I[H_hp_t] + b], I[I[H_hp_t] + a]
    I[I[H_hp_tok] + a], I[I[H_hp_tok] + b] = I[I[H_hp_tok] + b], I[I[H_hp_tok] + a]


@njit(cache=True, inline="always")
def _sift_down(I, F, i, n):
    while True:
        l = 2 * i + 1
        if l >= n:
            return
        m = l
        if l + 1 < n and _less(I, F, l + 1, l):
            m = l + 1
        if _less(I, F, m, i):
            _swap(I, F, m, i)
            i = m
        else:
            return


@njit(cache=True)
def _compact_heap(I, F):
    """Drop entries whose token is stale (never popped as current anyway); re-heapify."""
    n = I[G_HEAP]
    k = 0
    for i in range(n):
        t = I[I[H_hp_t] + i]
        if I[I[H_hp_tok] + i] == I[I[H_th_token] + t]:
            F[I[H_hp_when] + k] = F[I[H_hp_when] + i]
            I[I[H_hp_seq] + k] = I[I[H_hp_seq] + i]
            I[I[H_hp_t] + k] = t
            I[I[H_hp_tok] + k] = I[I[H_hp_tok] + i]
            k += 1
    I[G_HEAP] = k
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(I, F, i, k)


@njit(cache=True, inline="always")
def _at(I, F, when, t):
    I[G_SEQ] += 1
    I[I[H_th_token] + t] += 1
    if I[G_HEAP] == I[CI0 + CI_HCAP]:
        _compact_heap(I, F)
    i = I[G_HEAP]
    I[G_HEAP] = i + 1
    F[I[H_hp_when] + i] = when
    I[I[H_hp_seq] + i] = I[G_SEQ]
    I[I[H_hp_t] + i] = t
    I[I[H_hp_tok] + i] = I[I[H_th_token] + t]
    while i > 0:
        p = (i - 1) // 2
        if _less(I, F, i, p):
            _swap(I, F, i, p)
            i = p
        else:
            break


# -- run queues, blocking, waking -----------------------------------------------------------
@njit(cache=True, inline="always")
def _rq_push(I, F, c, t):
    if I[I[H_th_in_rq] + t]:
        I[G_ERR] = ERR_RUNQ
        return
    I[I[H_th_in_rq] + t] = True
    I[I[H_th_rq_next] + t] = -1
    if I[I[H_rq_head] + c] < 0:
        I[I[H_rq_head] + c] = t
    else:
        I[I[H_th_rq_next] + (I[I[H_rq_tail] + c])] = t
    I[I[H_rq_tail] + c] = t


@njit(cache=True, inline="always")
def _rq_pop(I, F, c):
    t = I[I[H_rq_head] + c]
    I[I[H_rq_head] + c] = I[I[H_th_rq_next] + t]
    I[I[H_th_in_rq] + t] = False
    return t


@njit(cache=True, inline="always")
def _release_cpu(I, F, t):
    c = I[I[H_th_cpu] + t]
    if I[I[H_cpu_busy] + c] != t:
        return
    I[I[H_cpu_busy] + c] = -1
    if I[I[H_rq_head] + c] >= 0:
        nxt = _rq_pop(I, F, c)
        I[I[H_cpu_busy] + c] = nxt
        _at(I, F, F[0], nxt)


@njit(cache=True)
def _block(I, F, t):
    I[I[H_th_blocked] + t] = True
    F[I[H_th_blocked_at] + t] = F[0]
    _release_cpu(I, F, t)
    # spinners on a lock this task owns stop once it is off the CPU (owner->on_cpu)
    if I[I[H_lk_owner] + 0] == t + 1:
        sp = I[I[H_lk_sh] + 0]
        while sp >= 0:
            _at(I, F, F[0], sp)
            sp = I[I[H_sp_next] + sp]
    lk = I[I[H_th_wlock] + t]
    if lk > 0 and I[I[H_lk_owner] + lk] == t + 1:
        sp = I[I[H_lk_sh] + lk]
        while sp >= 0:
            _at(I, F, F[0], sp)
            sp = I[I[H_sp_next] + sp]


@njit(cache=True)
def _wake(I, F, t, lock):
    if not I[I[H_th_blocked] + t]:
        return
    now = F[0]
    waited = now - F[I[H_th_blocked_at] + t]
    F[I[H_th_wait] + t] += waited
    if lock >= 0:
        F[I[H_lk_f] + lock * 6 + LF_WT] += waited
        F[I[H_lk_f] + lock * 6 + LF_WMAX] = max(F[I[H_lk_f] + lock * 6 + LF_WMAX], waited)
        F[I[H_lk_f] + lock * 6 + LF_WMIN] = waited if np.isnan(F[I[H_lk_f] + lock * 6 + LF_WMIN]) else min(F[I[H_lk_f] + lock * 6 + LF_WMIN], waited)
    I[I[H_th_blocked] + t] = False
    when = now + WAKEUP_NS
    c = I[I[H_th_cpu] + t]
    if I[I[H_cpu_busy] + c] < 0:
        I[I[H_cpu_busy] + c] = t
        _at(I, F, when, t)
    else:
        _rq_push(I, F, c, t)
        cur = I[I[H_cpu_busy] + c]
        if I[I[H_th_dw] + cur] == DW_SPIN:  # need_resched(): the spinner yields
            _at(I, F, now, cur)


# -- memory accesses ------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _cost(I, F, t, start, cost):
    return _cost_since(I, F, t, start, cost, F[0])


@njit(cache=True, inline="always")
def _cost_since(I, F, t, start, cost, since):
    end = start + cost
    F[I[H_th_cache] + t] += end - since
    if cost > F[CF0 + CF_L1] and cost != F[CF0 + CF_ATOMIC]:
        I[I[H_th_tr] + t] += 1
    return end


@njit(cache=True, inline="always")
def _read(I, F, t, line):
    s, c = coh_read(I, F, line, I[I[H_th_cpu] + t], F[0])
    return _cost(I, F, t, s, c)


@njit(cache=True, inline="always")
def _rmw(I, F, t, line, changes):
    s, c = coh_write(I, F, line, I[I[H_th_cpu] + t], F[0], True, changes)
    return _cost(I, F, t, s, c)


@njit(cache=True, inline="always")
def _store(I, F, t, line):
    s, c = coh_write(I, F, line, I[I[H_th_cpu] + t], F[0], False, True)
    return _cost(I, F, t, s, c)


# -- addresses ------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _vma_rel(I, F, slot):
    pp = I[CI0 + CI_VMA_PER_PAGE]
    return (slot // pp) * 4096 + (slot % pp) * I[CI0 + CI_VMA_STRIDE]


@njit(cache=True, inline="always")
def _vline(I, F, obj, off):
    return I[CI0 + CI_VBASE] + (_vma_rel(I, F, I[I[H_ob_slot] + obj]) + off) // 64


@njit(cache=True, inline="always")
def _cur(I, F, t):
    slot = I[I[H_th_slot] + t]
    if slot >= 0:
        return I[I[H_slot_obj] + slot]
    vid = I[I[H_th_vma] + t]
    return I[I[H_vid_obj] + vid] if vid >= 0 else -1


@njit(cache=True, inline="always")
def _line(I, F, t, obj, off):
    if obj == 0:
        return off  # an mm line id, resolved at load time
    v = _cur(I, F, t)
    if v < 0:  # a VMA this replay never had: the tree walk's line stands in
        return I[CI0 + CI_MM_MT]
    return _vline(I, F, v, off)


@njit(cache=True, inline="always")
def _refline(I, F, v):
    return _vline(I, F, v, I[CI0 + CI_F_VM_REFCNT])


# -- VMA objects ------------------------------------------------------------------------------
@njit(cache=True)
def _alloc(I, F, vid):
    if I[G_NFREE] > 0:
        I[G_NFREE] -= 1
        slot = I[I[H_freelist] + (I[G_NFREE])]
    else:
        slot = I[G_NSLOTS]
    o = I[G_NOBJ]
    I[G_NOBJ] += 1
    I[I[H_ob_vid] + o] = vid
    I[I[H_ob_slot] + o] = slot
    I[I[H_ob_seq] + o] = -1
    I[I[H_ob_ref] + o] = 1
    I[I[H_ob_live] + o] = True
    if I[CI0 + CI_VLOCK] == 1:  # an rwsem: its own slab object, or inside the VMA
        lk = o + 1
        I[I[H_lk_count] + lk] = 0
        I[I[H_lk_owner] + lk] = 0
        I[I[H_lk_wh] + lk] = -1
        I[I[H_lk_wt] + lk] = -1
        I[I[H_lk_sh] + lk] = -1
        I[I[H_lk_st] + lk] = -1
        if I[CI0 + CI_VL_IN_VMA]:
            rel = _vma_rel(I, F, slot)
            I[I[H_lk_cline] + lk] = I[CI0 + CI_VBASE] + (rel + I[CI0 + CI_VL_COUNT]) // 64
            I[I[H_lk_oline] + lk] = I[CI0 + CI_VBASE] + (rel + I[CI0 + CI_VL_OWNER]) // 64
        else:
            pp = I[CI0 + CI_VL_PER_PAGE]
            rel = (slot // pp) * 4096 + (slot % pp) * I[CI0 + CI_VL_STRIDE]
            I[I[H_lk_cline] + lk] = I[CI0 + CI_LBASE] + (rel + I[CI0 + CI_VL_COUNT]) // 64
            I[I[H_lk_oline] + lk] = I[CI0 + CI_LBASE] + (rel + I[CI0 + CI_VL_OWNER]) // 64
    if slot == I[G_NSLOTS]:
        I[G_NSLOTS] += 1
    I[I[H_slot_obj] + slot] = o
    I[I[H_vid_obj] + vid] = o
    if not I[I[H_vid_ever] + vid]:
        I[I[H_vid_ever] + vid] = True
        I[I[H_vid_order] + (I[G_NVORDER])] = vid
        I[G_NVORDER] += 1
    return o


@njit(cache=True)
def _resolve(I, F, vid):
    if vid < 0:
        return -1
    seen = 0
    v = I[I[H_vid_obj] + vid]
    while v >= 0 and not I[I[H_ob_live] + v] and seen < 64:
        nxt = I[I[H_vid_succ] + (I[I[H_ob_vid] + v])]
        v = I[I[H_vid_obj] + nxt] if nxt >= 0 else -1
        seen += 1
    return v if v >= 0 and I[I[H_ob_live] + v] else -1


# -- locks --------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _acquired(I, F, lock, t):
    I[I[H_lk_i] + lock * 3 + LI_ACQ] += 1
    if lock == 0:
        F[I[H_th_hs_mm] + t] = F[0]
    else:
        F[I[H_th_hs_v] + t] = F[0]
        I[I[H_th_hs_vlock] + t] = lock


@njit(cache=True)
def _released(I, F, lock, t):
    since = np.nan
    if lock == 0:
        since = F[I[H_th_hs_mm] + t]
        F[I[H_th_hs_mm] + t] = np.nan
    elif I[I[H_th_hs_vlock] + t] == lock:
        since = F[I[H_th_hs_v] + t]
        F[I[H_th_hs_v] + t] = np.nan
        I[I[H_th_hs_vlock] + t] = -1
    if not np.isnan(since):
        h = F[0] - since
        F[I[H_lk_f] + lock * 6 + LF_HT] += h
        F[I[H_lk_f] + lock * 6 + LF_HMAX] = max(F[I[H_lk_f] + lock * 6 + LF_HMAX], h)
        F[I[H_lk_f] + lock * 6 + LF_HMIN] = h if np.isnan(F[I[H_lk_f] + lock * 6 + LF_HMIN]) else min(F[I[H_lk_f] + lock * 6 + LF_HMIN], h)


@njit(cache=True)
def _list_append(I, nxt, prv, head, tail, lock, t):
    """Append thread t to lock's doubly linked list (wait queue or OSQ spinners): nxt
    and prv name the per-thread link regions, head and tail the per-lock ends."""
    last = I[I[tail] + lock]
    I[I[nxt] + t] = -1
    I[I[prv] + t] = last
    if last >= 0:
        I[I[nxt] + last] = t
    else:
        I[I[head] + lock] = t
    I[I[tail] + lock] = t


@njit(cache=True)
def _list_remove(I, nxt, prv, head, tail, lock, t):
    p, n = I[I[prv] + t], I[I[nxt] + t]
    if p >= 0:
        I[I[nxt] + p] = n
    else:
        I[I[head] + lock] = n
    if n >= 0:
        I[I[prv] + n] = p
    else:
        I[I[tail] + lock] = p


@njit(cache=True)
def _w_append(I, F, lock, t, write):
    I[I[H_w_write] + t] = write
    F[I[H_w_since] + t] = F[0]
    I[I[H_w_handoff] + t] = False
    _list_append(I, H_w_next, H_w_prev, H_lk_wh, H_lk_wt, lock, t)


@njit(cache=True)
def _w_remove(I, F, lock, t):
    _list_remove(I, H_w_next, H_w_prev, H_lk_wh, H_lk_wt, lock, t)


@njit(cache=True)
def _sp_append(I, F, lock, t):
    _list_append(I, H_sp_next, H_sp_prev, H_lk_sh, H_lk_st, lock, t)


@njit(cache=True)
def _sp_remove(I, F, lock, t):
    _list_remove(I, H_sp_next, H_sp_prev, H_lk_sh, H_lk_st, lock, t)


@njit(cache=True)
def _mark_wake(I, F, lock, read_owned):
    first = I[I[H_lk_wh] + lock]
    if first < 0:
        return
    if I[I[H_w_write] + first]:
        if not read_owned and I[I[H_th_blocked] + first]:
            _wake(I, F, first, lock)  # it retries rwsem_try_write_lock()
        return
    if not read_owned and I[I[H_lk_count] + lock] & WL:
        return
    # readers at the head and behind queued writers, up to MAX_READERS_WAKEUP
    n = 0
    w = first
    while w >= 0 and n < MAX_READERS_WAKEUP:
        nxt = I[I[H_w_next] + w]
        if not I[I[H_w_write] + w]:
            _w_remove(I, F, lock, w)
            I[I[H_lk_count] + lock] += BIAS
            _acquired(I, F, lock, w)
            I[I[H_th_dr] + w] = DR_GRANTED
            _wake(I, F, w, lock)
            n += 1
        w = nxt
    if I[I[H_w_handoff] + first]:
        I[I[H_lk_count] + lock] &= ~HO
    if I[I[H_lk_wh] + lock] < 0:
        I[I[H_lk_count] + lock] &= ~FW
    I[I[H_lk_owner] + lock] = RO


@njit(cache=True)
def _let_spinner_in(I, F, lock):
    if I[I[H_lk_sh] + lock] >= 0 and not I[I[H_lk_count] + lock] & (LOCK_MASK | HO):
        _at(I, F, F[0] + F[CF0 + CF_RSHARED], I[I[H_lk_sh] + lock])


@njit(cache=True)
def _owner_running(I, F, lock):
    o = I[I[H_lk_owner] + lock]
    if o == RO or o == 0:  # reader-owned, or no owner recorded (the reference's None)
        return True
    return not I[I[H_th_blocked] + o - 1]


@njit(cache=True)
def _trylock_read(I, F, t, lock, label):
    ln = I[I[H_lk_cline] + lock]
    st = I[I[H_th_try] + t]
    if st == TRY_NONE:  # the load
        I[I[H_th_try] + t] = TRY_CAS
        I[I[H_th_try_ver] + t] = I[_lrec(I, ln) + LN_VER]
        return _read(I, F, t, ln), True
    if st == TRY_OWNER:  # rwsem_set_reader_owned()
        I[I[H_th_try] + t] = TRY_NONE
        I[I[H_lk_owner] + lock] = RO
        return _store(I, F, t, I[I[H_lk_oline] + lock]), False
    if I[I[H_lk_count] + lock] & RFM:
        I[I[H_th_try] + t] = TRY_NONE
        I[I[H_th_pc] + t] = label
        I[I[H_lk_i] + lock * 3 + LI_TF] += 1
        return F[0], False
    extra = 0.0
    if I[_lrec(I, ln) + LN_VER] != I[I[H_th_try_ver] + t]:
        I[G_CAS] += 1
        extra = F[CF0 + CF_ATOMIC]
    I[I[H_lk_count] + lock] += BIAS
    _acquired(I, F, lock, t)
    I[I[H_th_try] + t] = TRY_OWNER
    return _rmw(I, F, t, ln, True) + extra, True


@njit(cache=True)
def _down_read(I, F, t, lock):
    st = I[I[H_th_dr] + t]
    if st == DR_GRANTED:
        I[I[H_th_dr] + t] = DR_NONE
        return F[0], False
    if st == DR_OWNER:
        I[I[H_th_dr] + t] = DR_NONE
        I[I[H_lk_owner] + lock] = RO
        return _store(I, F, t, I[I[H_lk_oline] + lock]), False
    if st == DR_WAIT:
        I[G_ERR] = ERR_WAITER_READER
        return -1.0, True
    I[I[H_lk_count] + lock] += BIAS
    end = _rmw(I, F, t, I[I[H_lk_cline] + lock], True)
    cnt = I[I[H_lk_count] + lock]
    if not cnt & RFM:
        _acquired(I, F, lock, t)
        I[I[H_th_dr] + t] = DR_OWNER
        return end, True
    rcnt = cnt >> 8
    if not (I[I[H_lk_owner] + lock] == RO and rcnt > 1 and not cnt & WL):
        if not cnt & (WL | HO):  # reader optimistic lock stealing
            _acquired(I, F, lock, t)
            I[I[H_lk_owner] + lock] = RO
            if rcnt == 1 and cnt & FW and I[I[H_lk_wh] + lock] >= 0:
                _mark_wake(I, F, lock, True)
            return end, False
    I[I[H_lk_i] + lock * 3 + LI_CON] += 1
    adjustment = -BIAS
    if I[I[H_lk_wh] + lock] < 0:
        if not I[I[H_lk_count] + lock] & WL:  # empty queue, no writer: keep the bias
            _acquired(I, F, lock, t)
            I[I[H_th_dr] + t] = DR_OWNER
            return end, True
        adjustment += FW
    _w_append(I, F, lock, t, False)
    I[I[H_lk_count] + lock] += adjustment
    end = _rmw(I, F, t, I[I[H_lk_cline] + lock], True)
    I[I[H_th_dr] + t] = DR_WAIT
    if not I[I[H_lk_count] + lock] & LOCK_MASK:
        _mark_wake(I, F, lock, False)
    if I[I[H_th_dr] + t] == DR_GRANTED:
        I[I[H_th_dr] + t] = DR_NONE
        return end, False
    _block(I, F, t)
    return -1.0, True


@njit(cache=True)
def _up_read(I, F, t, lock):
    _released(I, F, lock, t)
    I[I[H_lk_count] + lock] -= BIAS
    end = _rmw(I, F, t, I[I[H_lk_cline] + lock], True)
    if (I[I[H_lk_count] + lock] & (LOCK_MASK | FW)) == FW:
        _mark_wake(I, F, lock, False)
    _let_spinner_in(I, F, lock)
    return end


@njit(cache=True)
def _try_write_lock(I, F, lock, w):
    first = I[I[H_lk_wh] + lock] == w
    if I[I[H_lk_count] + lock] & LOCK_MASK:
        if first and not I[I[H_lk_count] + lock] & HO and F[0] - F[I[H_w_since] + w] >= RWSEM_WAIT_TIMEOUT_NS:
            I[I[H_lk_count] + lock] |= HO
            I[I[H_w_handoff] + w] = True
        return False
    if I[I[H_lk_count] + lock] & HO and not first:
        return False
    _w_remove(I, F, lock, w)
    I[I[H_lk_count] + lock] |= WL
    I[I[H_lk_count] + lock] &= ~HO
    if I[I[H_lk_wh] + lock] < 0:
        I[I[H_lk_count] + lock] &= ~FW
    return True


@njit(cache=True)
def _queue_writer(I, F, t, lock):
    if I[I[H_lk_wh] + lock] < 0:
        I[I[H_lk_count] + lock] |= FW
    _w_append(I, F, lock, t, True)
    I[I[H_th_dw] + t] = DW_WAIT


@njit(cache=True)
def _down_write(I, F, t, lock):
    now = F[0]
    st = I[I[H_th_dw] + t]
    if st == DW_OWNER:  # rwsem_set_owner()
        I[I[H_th_dw] + t] = DW_NONE
        I[I[H_lk_owner] + lock] = t + 1
        if lock > 0:
            I[I[H_th_wlock] + t] = lock
        return _store(I, F, t, I[I[H_lk_oline] + lock]), False
    if st == DW_NONE:  # rwsem_write_trylock(): cmpxchg 0 -> WRITER_LOCKED
        free = I[I[H_lk_count] + lock] == 0
        end = _rmw(I, F, t, I[I[H_lk_cline] + lock], free)
        if I[I[H_lk_count] + lock] == 0:
            I[I[H_lk_count] + lock] = WL
            _acquired(I, F, lock, t)
            I[I[H_th_dw] + t] = DW_OWNER
            return end, True
        I[I[H_lk_i] + lock * 3 + LI_CON] += 1
        # _spin_deadline()
        c = I[I[H_th_cpu] + t]
        can = False
        deadline = 0.0
        if I[I[H_rq_head] + c] < 0:
            if I[I[H_lk_owner] + lock] == RO:
                readers = I[I[H_lk_count] + lock] >> 8
                deadline = now + min(RSPIN_BASE_NS + RSPIN_PER_READER_NS * readers, RSPIN_MAX_NS)
                can = True
            elif I[I[H_lk_owner] + lock] != 0 and _owner_running(I, F, lock):
                deadline = INF
                can = True
        if can:  # rwsem_optimistic_spin(): stay on the CPU
            I[I[H_th_dw] + t] = DW_SPIN
            F[I[H_th_dw_deadline] + t] = deadline
            F[I[H_th_dw_since] + t] = now
            _sp_append(I, F, lock, t)
            if deadline != INF:
                _at(I, F, max(deadline, end), t)
            return -1.0, True
        _queue_writer(I, F, t, lock)
    elif st == DW_SPIN:
        since = F[I[H_th_dw_since] + t]
        if not I[I[H_lk_count] + lock] & (LOCK_MASK | HO):  # rwsem_try_write_lock_unqueued()
            _sp_remove(I, F, lock, t)
            I[I[H_lk_count] + lock] |= WL
            F[I[H_th_wait] + t] += now - since
            _acquired(I, F, lock, t)
            I[I[H_th_dw] + t] = DW_OWNER
            return _rmw(I, F, t, I[I[H_lk_cline] + lock], True), True
        if now < F[I[H_th_dw_deadline] + t] and _owner_running(I, F, lock) and I[I[H_rq_head] + (I[I[H_th_cpu] + t])] < 0:
            return -1.0, True
        _sp_remove(I, F, lock, t)
        F[I[H_th_wait] + t] += now - since
        _queue_writer(I, F, t, lock)
    if _try_write_lock(I, F, lock, t):
        _acquired(I, F, lock, t)
        I[I[H_th_dw] + t] = DW_OWNER
        return _rmw(I, F, t, I[I[H_lk_cline] + lock], True), True
    _block(I, F, t)
    return -1.0, True


@njit(cache=True)
def _up_write(I, F, t, lock):
    _released(I, F, lock, t)
    I[I[H_lk_owner] + lock] = 0
    if lock > 0 and I[I[H_th_wlock] + t] == lock:
        I[I[H_th_wlock] + t] = 0
    I[I[H_lk_count] + lock] -= WL
    end = _rmw(I, F, t, I[I[H_lk_cline] + lock], True)
    if I[I[H_lk_count] + lock] & FW:
        _mark_wake(I, F, lock, False)
    _let_spinner_in(I, F, lock)
    return end


# -- vm_refcnt -----------------------------------------------------------------------------------
@njit(cache=True)
def _ref_get(I, F, t, fail, detached):
    v = _cur(I, F, t)
    line = _refline(I, F, v)
    if not I[I[H_th_ref_has] + t]:  # old = refcount_read(r)
        I[I[H_th_ref_has] + t] = True
        I[I[H_th_ref_ver] + t] = I[_lrec(I, line) + LN_VER]
        return _read(I, F, t, line), True
    old = I[I[H_ob_ref] + v]
    I[I[H_th_ref_has] + t] = False
    if old == 0:
        I[I[H_th_pc] + t] = detached
        return F[0], False
    if old + 1 > I[CI0 + CI_REF_LIMIT]:
        I[I[H_th_pc] + t] = fail
        return F[0], False
    extra = 0.0
    if I[_lrec(I, line) + LN_VER] != I[I[H_th_ref_ver] + t]:
        I[G_CAS] += 1
        extra = F[CF0 + CF_ATOMIC]
    I[I[H_ob_ref] + v] += 1
    I[I[H_th_ref_obj] + t] = v
    return _rmw(I, F, t, line, True) + extra, False


@njit(cache=True)
def _ref_put(I, F, t):
    v = I[I[H_th_ref_obj] + t]
    I[I[H_th_ref_obj] + t] = -1
    I[I[H_ob_ref] + v] -= 1
    end = _rmw(I, F, t, _refline(I, F, v), True)
    n = I[I[H_ob_ref] + v]
    if I[CI0 + CI_WAKE_LAST]:
        wake = (n & VMA_LOCK_OFFSET) != 0 and n <= VMA_LOCK_OFFSET + 1 + I[CI0 + CI_WRITER_REF]
    else:
        wake = (n & VMA_LOCK_OFFSET) != 0
    if wake and I[G_WW] >= 0:
        I[G_WAKEUPS] += 1
        w = I[G_WW]
        I[G_WW] = -1
        _read(I, F, t, I[CI0 + CI_MM_WWAIT])
        _wake(I, F, w, -1)
    return end


# -- vma_start_write -----------------------------------------------------------------------------
@njit(cache=True)
def _pending_step(I, F, t):
    """One step of vma_start_write() on the current VMA of the pending buffer."""
    v = I[I[H_pend_obj] + (I[G_PEND_I])]
    step = I[G_PEND_STEP]
    rwsem = I[CI0 + CI_VLOCK] == 1
    nsteps = 4 if rwsem else 5
    now = F[0]
    again = False
    seqline = _vline(I, F, v, I[CI0 + CI_F_VM_LOCK_SEQ])
    if step == 0:  # __is_vma_write_locked()
        end = _read(I, F, t, seqline)
        if I[I[H_ob_seq] + v] == I[G_MM_SEQ]:
            step = nsteps - 1  # the rest of this VMA's steps go
    elif rwsem:
        lk = v + 1
        if step == 1:
            end, again = _down_write(I, F, t, lk)
        elif step == 2:
            I[I[H_ob_seq] + v] = I[G_MM_SEQ]
            end = _store(I, F, t, seqline)
        else:
            end = _up_write(I, F, t, lk)
    else:
        wr = VMA_LOCK_OFFSET + I[CI0 + CI_WRITER_REF]
        if step == 1:  # __vma_enter_locked()
            if I[I[H_ob_ref] + v] == 0:  # detached: nothing to wait for
                end = now
                step += 1
            else:
                I[I[H_ob_ref] + v] += wr
                I[G_DRAINS] += 1
                end = _rmw(I, F, t, _refline(I, F, v), True)
        elif step == 2:  # rcuwait_wait_event(..., vm_refcnt == tgt)
            end = _read(I, F, t, _refline(I, F, v))
            if I[I[H_ob_ref] + v] != wr + 1:
                I[G_WW] = t
                _block(I, F, t)
                end = -1.0
                again = True
        elif step == 3:
            I[I[H_ob_seq] + v] = I[G_MM_SEQ]
            end = _store(I, F, t, seqline)
        else:
            I[I[H_ob_ref] + v] -= wr
            end = _rmw(I, F, t, _refline(I, F, v), True)
    if not again:
        step += 1
        if step >= nsteps:
            I[G_PEND_I] += 1
            step = 0
        I[G_PEND_STEP] = step
    return end


@njit(cache=True)
def _commit(I, F, t):
    w = I[I[H_th_w] + t]
    cpu = I[I[H_th_cpu] + t]
    end = F[0]
    refcnt = I[CI0 + CI_VLOCK] == 2
    for k in range(I[I[H_w_freed_p] + w], I[I[H_w_freed_p] + w + 1]):
        vid = I[I[H_w_freed] + k]
        succ = I[I[H_w_succ] + k]
        if succ >= 0:
            I[I[H_vid_succ] + vid] = succ
        v = I[I[H_vid_obj] + vid]
        if v < 0 or not I[I[H_ob_live] + v]:
            continue
        I[I[H_ob_live] + v] = False
        if refcnt:
            I[I[H_ob_ref] + v] -= 1
            s, c = coh_write(I, F, _refline(I, F, v), cpu, end, True, True)
        else:
            I[I[H_ob_ref] + v] = 0
            s, c = coh_write(I, F, _vline(I, F, v, I[CI0 + CI_F_VM_START]), cpu, end, False, True)
        end = _cost_since(I, F, t, s, c, end)
        if I[CI0 + CI_TYPESAFE]:
            I[I[H_freelist] + (I[G_NFREE])] = I[I[H_ob_slot] + v]
            I[G_NFREE] += 1
    for k in range(I[I[H_w_created_p] + w], I[I[H_w_created_p] + w + 1]):
        vid = I[I[H_w_created] + k]
        if I[I[H_vid_obj] + vid] >= 0 and I[I[H_ob_live] + (I[I[H_vid_obj] + vid])]:
            continue
        v = _alloc(I, F, vid)
        I[I[H_ob_seq] + v] = I[G_MM_SEQ]
        x = I[I[H_wc_head] + vid]
        I[I[H_wc_head] + vid] = -1
        while x >= 0:
            nx = I[I[H_th_wc_next] + x]
            _wake(I, F, x, -1)
            x = nx
        s, c = coh_write(I, F, _vline(I, F, v, I[CI0 + CI_F_VM_START]), cpu, end, False, True)
        end = _cost_since(I, F, t, s, c, end)
    return end


# -- the interpreter ---------------------------------------------------------------------------
@njit(cache=True)
def _exec(I, F, t):
    now = F[0]
    if I[G_PEND_T] == t and I[G_PEND_I] < I[G_PEND_N]:
        return _pending_step(I, F, t)
    p = I[I[H_th_prog] + t]
    pc = I[I[H_th_pc] + t]
    op = I[I[H_prog] + ((p) * I[CI0 + CI_PLEN] + (pc)) * 4 + 0]
    a1 = I[I[H_prog] + ((p) * I[CI0 + CI_PLEN] + (pc)) * 4 + 1]
    a2 = I[I[H_prog] + ((p) * I[CI0 + CI_PLEN] + (pc)) * 4 + 2]
    I[I[H_th_pc] + t] = pc + 1
    if op == 1:  # READ
        return _read(I, F, t, _line(I, F, t, a1, a2))
    if op == 2:  # PREFETCHW
        return _rmw(I, F, t, _line(I, F, t, a1, a2), False)
    if op == 3:  # STORE
        return _store(I, F, t, _line(I, F, t, a1, a2))
    if op == 4:  # WORK
        if a1 == 0:
            return now + F[CF0 + CF_SERVICE]
        h = I[I[H_w_hold] + (I[I[H_th_w] + t])]
        return now + (h if h else DEFAULT_WRITER_NS)
    if op == 13:  # CHECK_MM
        return _read(I, F, t, _line(I, F, t, 1, a2))
    if op == 22:  # WALK
        end = _read(I, F, t, I[CI0 + CI_MM_MT])
        v = _resolve(I, F, I[I[H_th_vma] + t])
        if v < 0:
            I[I[H_th_pc] + t] = a1
        else:
            I[I[H_th_slot] + t] = I[I[H_ob_slot] + v]
            I[I[H_th_found] + t] = v
        return end
    if op == 23:  # CHECK_RANGE
        end = _read(I, F, t, _line(I, F, t, 1, I[CI0 + CI_F_VM_START]))
        if _cur(I, F, t) != I[I[H_th_found] + t]:
            I[I[H_th_pc] + t] = a1
        return end
    if op == 24:  # CHECK_DETACHED
        end = _read(I, F, t, _line(I, F, t, 1, I[CI0 + CI_F_VM_START]))
        if not I[I[H_ob_live] + (_cur(I, F, t))]:
            I[I[H_th_pc] + t] = a1
        return end
    if op == 14:  # VMA_START_WRITE_ALL
        w = I[I[H_th_w] + t]
        n = 0
        for k in range(I[I[H_w_ids_p] + w], I[I[H_w_ids_p] + w + 1]):
            v = I[I[H_vid_obj] + (I[I[H_w_ids] + k])]
            if v >= 0 and I[I[H_ob_live] + v]:
                I[I[H_pend_obj] + n] = v
                n += 1
        I[G_PEND_T] = t
        I[G_PEND_N] = n
        I[G_PEND_I] = 0
        I[G_PEND_STEP] = 0
        return now
    if op == 25:  # VMA_COMMIT
        return _commit(I, F, t)
    if op == 15 or op == 16:  # MM_SEQ_WRITE_BEGIN / END
        I[G_MM_SEQ] += 1
        return _store(I, F, t, I[CI0 + CI_MM_SEQ])
    if op == 17:  # OUTCOME
        I[I[H_th_outcome] + t] = a1
        return now
    if op == 18:  # FALLBACK
        I[I[H_th_fb] + t] = True
        return now
    if op == 19:  # ATTEMPT
        I[I[H_th_att] + t] += 1
        return now
    if op == 20:  # GOTO
        I[I[H_th_pc] + t] = a1
        return now
    if op == 21:  # END
        I[I[H_th_finished] + t] = True
        return now
    again = False
    if op == 5:  # CHECK_SEQ
        v = _cur(I, F, t)
        if not I[I[H_th_seq_has] + t]:  # READ_ONCE(vma->vm_lock_seq)
            I[I[H_th_seq_has] + t] = True
            end = _read(I, F, t, _line(I, F, t, 1, I[CI0 + CI_F_VM_LOCK_SEQ]))
            again = True
        else:  # READ_ONCE(mm->mm_lock_seq)
            I[I[H_th_seq_has] + t] = False
            end = _read(I, F, t, I[CI0 + CI_MM_SEQ])
            if I[I[H_ob_seq] + v] == I[G_MM_SEQ]:
                I[I[H_th_pc] + t] = a1
    elif op == 6:  # RWSEM_TRYLOCK_READ
        end, again = _trylock_read(I, F, t, 0 if a1 == 0 else _cur(I, F, t) + 1, a2)
    elif op == 7:
        end, again = _down_read(I, F, t, 0 if a1 == 0 else _cur(I, F, t) + 1)
    elif op == 8:
        end = _up_read(I, F, t, 0 if a1 == 0 else _cur(I, F, t) + 1)
    elif op == 9:
        end, again = _down_write(I, F, t, 0 if a1 == 0 else _cur(I, F, t) + 1)
    elif op == 10:
        end = _up_write(I, F, t, 0 if a1 == 0 else _cur(I, F, t) + 1)
    elif op == 11:
        end, again = _ref_get(I, F, t, a1, a2)
    elif op == 12:
        end = _ref_put(I, F, t)
    else:
        end = now
    if again:
        I[I[H_th_pc] + t] -= 1
    return end


# -- gates (causal order the closed loop keeps; see reference.Simulation.__init__) ---------------
@njit(cache=True, inline="always")
def _rank(I, P, j):
    """The op's place in trace order: its op order (the op builder numbers ops in time order)."""
    return j if I[CI0 + CI_RANK_IS_INDEX] else P[4][j]


@njit(cache=True)
def _min_unstarted(I, F, P, vid):
    pos = I[I[H_us_pos] + vid]
    end = I[I[H_us_p] + vid + 1]
    while pos < end and (P[0][P[6][pos]] & 16):
        pos += 1
    I[I[H_us_pos] + vid] = pos
    return _rank(I, P, P[6][pos]) if pos < end else np.iinfo(np.int64).max


@njit(cache=True)
def _gate(I, F, P, t):
    j = I[I[H_th_op] + t]
    if ((P[0][j] & 3) - 1) == 0 or ((P[0][j] & 3) - 1) == 1:  # a fault
        vid = P[1][j]
        if vid >= 0 and I[I[H_vid_created] + vid] and not I[I[H_vid_ever] + vid]:
            I[I[H_th_wc_next] + t] = -1
            if I[I[H_wc_head] + vid] < 0:
                I[I[H_wc_head] + vid] = t
            else:
                I[I[H_th_wc_next] + (I[I[H_wc_tail] + vid])] = t
            I[I[H_wc_tail] + vid] = t
            _block(I, F, t)
            return False
        return True
    w = P[1][j]
    seq = _rank(I, P, j)
    for k in range(I[I[H_w_gate_p] + w], I[I[H_w_gate_p] + w + 1]):
        if _min_unstarted(I, F, P, I[I[H_w_gate] + k]) < seq:
            I[I[H_ws] + (I[G_WS_N])] = t
            I[G_WS_N] += 1
            _block(I, F, t)
            return False
    return True


@njit(cache=True)
def _started(I, F, P, t):
    j = I[I[H_th_op] + t]
    if not (((P[0][j] & 3) - 1) == 0 or ((P[0][j] & 3) - 1) == 1):
        return
    P[0][j] |= 16
    vid = P[1][j]
    n = I[G_WS_N]
    if n and vid >= 0:
        k = 0
        for i in range(n):
            w = I[I[H_ws] + i]
            jw = I[I[H_th_op] + w]
            ww = P[1][jw]
            seq = _rank(I, P, jw)
            hit = False
            ok = True
            for q in range(I[I[H_w_gate_p] + ww], I[I[H_w_gate_p] + ww + 1]):
                if I[I[H_w_gate] + q] == vid:
                    hit = True
            if hit:
                for q in range(I[I[H_w_gate_p] + ww], I[I[H_w_gate_p] + ww + 1]):
                    if not _min_unstarted(I, F, P, I[I[H_w_gate] + q]) > seq:
                        ok = False
                        break
            if hit and ok:
                _wake(I, F, w, -1)
            else:
                I[I[H_ws] + k] = w
                k += 1
        I[G_WS_N] = k


# -- the loop ----------------------------------------------------------------------------------------
@njit(cache=True)
def _next_op(I, F, P, t):
    i = I[I[H_th_i] + t] + 1
    I[I[H_th_i] + t] = i
    if I[I[H_th_p] + t] + i >= I[I[H_th_p] + t + 1]:
        I[I[H_th_done] + t] = True
        _release_cpu(I, F, t)
        return False
    j = P[5][I[I[H_th_p] + t] + i]
    I[I[H_th_op] + t] = j
    prog = (P[0][j] & 3) - 1
    I[I[H_th_prog] + t] = prog
    I[I[H_th_vma] + t] = P[1][j] if prog == 0 or prog == 1 else -1
    I[I[H_th_w] + t] = -1 if prog == 0 or prog == 1 else P[1][j]
    I[I[H_th_pc] + t] = 0
    I[I[H_th_slot] + t] = -1
    I[I[H_th_found] + t] = -1
    I[I[H_th_ref_obj] + t] = -1
    I[I[H_th_ref_has] + t] = False
    I[I[H_th_seq_has] + t] = False
    I[I[H_th_try] + t] = TRY_NONE
    I[I[H_th_dr] + t] = DR_NONE
    I[I[H_th_dw] + t] = DW_NONE
    I[I[H_th_thinking] + t] = False
    I[I[H_th_finished] + t] = False
    I[I[H_th_rec] + t] = True
    F[I[H_th_start] + t] = np.nan
    F[I[H_th_wait] + t] = 0.0
    F[I[H_th_cache] + t] = 0.0
    I[I[H_th_tr] + t] = 0
    I[I[H_th_outcome] + t] = 0
    I[I[H_th_fb] + t] = False
    I[I[H_th_att] + t] = 0
    if I[CI0 + CI_OPEN_LOOP] and (P[0][j] & 4):
        think = P[3][j] - F[0]
    else:
        think = P[2][j] - F[I[H_th_prev_unknown] + t]
    F[I[H_th_think] + t] = max(0.0, think)
    return True


@njit(cache=True)
def _finish(I, F, P, t):
    j = I[I[H_th_op] + t]
    end = F[0]
    k = I[G_NOUT]
    I[G_NOUT] = k + 1
    I[I[H_out_op] + k] = j
    I[I[H_out_t] + k] = t
    I[I[H_out_cpu] + k] = I[I[H_th_cpu] + t]
    F[I[H_out_start] + k] = F[I[H_th_start] + t]
    F[I[H_out_end] + k] = end
    F[I[H_out_wait] + k] = F[I[H_th_wait] + t]
    F[I[H_out_cache] + k] = F[I[H_th_cache] + t]
    I[I[H_out_tr] + k] = I[I[H_th_tr] + t]
    I[I[H_out_outcome] + k] = I[I[H_th_outcome] + t]
    I[I[H_out_fb] + k] = I[I[H_th_fb] + t]
    I[I[H_out_att] + k] = I[I[H_th_att] + t]
    F[I[H_th_prev_unknown] + t] = (end - F[I[H_th_start] + t]) if not (P[0][j] & 8) else 0.0


@njit(cache=True)
def _step(I, F, P, t):
    c = I[I[H_th_cpu] + t]
    if I[I[H_th_thinking] + t]:  # back from its gap: needs its CPU again
        I[I[H_th_thinking] + t] = False
        if I[I[H_cpu_busy] + c] >= 0 and I[I[H_cpu_busy] + c] != t:
            _rq_push(I, F, c, t)
            return
        I[I[H_cpu_busy] + c] = t
    while True:
        if not I[I[H_th_rec] + t] or I[I[H_th_finished] + t]:
            if I[I[H_th_rec] + t]:
                _finish(I, F, P, t)
                if I[I[H_rq_head] + c] >= 0:  # yield the CPU at op boundaries
                    _rq_push(I, F, c, t)
                    _release_cpu(I, F, t)
                    I[I[H_th_rec] + t] = False
                    return
            if not _next_op(I, F, P, t):
                return
            if F[I[H_th_think] + t] > 0:
                I[I[H_th_thinking] + t] = True
                _release_cpu(I, F, t)
                _at(I, F, F[0] + F[I[H_th_think] + t], t)
                return
        if np.isnan(F[I[H_th_start] + t]):
            if not _gate(I, F, P, t):
                return
            F[I[H_th_start] + t] = F[0]
            F[I[H_th_wait] + t] = 0.0
            _started(I, F, P, t)
        if I[I[H_th_prog] + t] < 0:
            I[I[H_th_finished] + t] = True
            continue
        r = _exec(I, F, t)
        if r < 0:  # blocked
            return
        if r > F[0]:
            if (I[G_HEAP] == 0 or F[I[H_hp_when]] > r) and I[G_NOUT] < I[G_CHUNK]:
                # The event would be pushed and popped straight back: nothing else is
                # due before r (ties go to the older event, so strictly before).  Same
                # order, same sequence and token numbers, no heap traffic.
                I[G_SEQ] += 1
                I[I[H_th_token] + t] += 1
                F[0] = r
                continue
            _at(I, F, r, t)
            return


@njit(cache=True, inline="always")
def _pop(I, F):
    n = I[G_HEAP] - 1
    when, t, tok = F[I[H_hp_when] + 0], I[I[H_hp_t] + 0], I[I[H_hp_tok] + 0]
    I[G_HEAP] = n
    if n > 0:
        F[I[H_hp_when] + 0] = F[I[H_hp_when] + n]
        I[I[H_hp_seq] + 0] = I[I[H_hp_seq] + n]
        I[I[H_hp_t] + 0] = I[I[H_hp_t] + n]
        I[I[H_hp_tok] + 0] = I[I[H_hp_tok] + n]
        _sift_down(I, F, 0, n)
    return when, t, tok


@intrinsic
def _data_ptr(typingctx, arr):
    """The array's data as a raw typed pointer (indexable like the array)."""
    def codegen(context, builder, signature, args):
        return cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


@njit(cache=True)
def _unref(I, F, P):
    """The state as raw pointers.  Numba reference-counts every array it passes around
    (atomic increments and decrements, dozens per step once helpers are inlined), which
    was most of the run time; pointers carry no count.  The caller's arrays keep the
    memory alive for the duration of the call.  (Indexing is unchecked either way.)"""
    return _data_ptr(I), _data_ptr(F), (_data_ptr(P[0]), _data_ptr(P[1]), _data_ptr(P[2]), _data_ptr(P[3]),
                                        _data_ptr(P[4]), _data_ptr(P[5]), _data_ptr(P[6]))


@njit(cache=True)
def start(I, F, P):
    I, F, P = _unref(I, F, P)
    for t in range(I[CI0 + CI_NT]):
        c = I[I[H_th_cpu] + t]
        if I[I[H_cpu_busy] + c] < 0:
            I[I[H_cpu_busy] + c] = t
            _at(I, F, 0.0, t)
        else:
            _rq_push(I, F, c, t)


@njit(cache=True, nogil=True)
def run_chunk(I, F, P):
    """Run until the result buffer is full or the simulation ends.  Returns True when
    it ended (then check I[G_ERR])."""
    I, F, P = _unref(I, F, P)
    while I[G_HEAP] > 0:
        if I[G_NOUT] >= I[G_CHUNK]:  # the buffer keeps room for a step's zero-time ops
            return False
        when, t, tok = _pop(I, F)
        F[0] = when
        if tok != I[I[H_th_token] + t]:
            continue
        _step(I, F, P, t)
        if I[G_ERR]:
            return True
    for t in range(I[CI0 + CI_NT]):
        if not I[I[H_th_done] + t]:
            I[G_ERR] = ERR_DEADLOCK
            break
    return True


# -- loading: one mm's ops into a State ------------------------------------------------------------
_LABEL_ARGS = {Op.CHECK_SEQ: (1,), Op.RWSEM_TRYLOCK_READ: (2,), Op.REF_GET: (1, 2), Op.CHECK_MM: (1,), Op.GOTO: (1,),
               Op.WALK: (1,), Op.CHECK_RANGE: (1,), Op.CHECK_DETACHED: (1,)}


def encode_programs(model) -> np.ndarray:
    """The model's compiled programs as int64 [3, len, 4]: op, then integer arguments
    (mm fields become dense line ids, VMA fields byte offsets, locks 0 = mmap_lock / 1 =
    the VMA's, WORK 0 = fault / 1 = writer, outcomes their index)."""
    lay = model.layout
    progs = [model.programs[k] for k in ("fault", "kernel_fault", "writer")]
    out = np.zeros((3, max(len(p) for p in progs), 4), np.int64)
    for pi, prog in enumerate(progs):
        for k, ins in enumerate(prog):
            op = int(ins[0])
            args = [0, 0, 0]
            if op in (Op.READ, Op.PREFETCHW, Op.STORE):
                obj, f = ins[1], ins[2]
                if obj == "mm":
                    args = [0, lay.mm.fields[f] // 64, 0]
                else:
                    if f == "vm_lock" and "vm_lock" not in lay.vma.fields:
                        f = "vm_start"
                    args = [1, lay.vma.fields[f], 0]
            elif op == Op.CHECK_MM:
                args = [ins[1], lay.vma.fields["vm_mm"], 0]
            elif op in (Op.RWSEM_TRYLOCK_READ, Op.RWSEM_DOWN_READ, Op.RWSEM_UP_READ, Op.RWSEM_DOWN_WRITE,
                        Op.RWSEM_UP_WRITE):
                args = [0 if ins[1] == "mmap_lock" else 1, ins[2] if op == Op.RWSEM_TRYLOCK_READ else 0, 0]
            elif op == Op.WORK:
                args = [0 if ins[1] == "fault" else 1, 0, 0]
            elif op == Op.OUTCOME:
                args = [OUTCOMES.index(ins[1]), 0, 0]
            elif op in _LABEL_ARGS:
                args = [int(x) for x in ins[1:]] + [0] * (3 - len(ins[1:]))
            out[pi, k, 0] = op
            out[pi, k, 1:] = args
    return out


def _csr(lists, index) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(lists) + 1, np.int64)
    flat = []
    for i, xs in enumerate(lists):
        xs = [index[x] for x in (xs or [])]
        flat.extend(xs)
        ptr[i + 1] = ptr[i] + len(xs)
    return ptr, np.asarray(flat, np.int64)


@njit(cache=True)
def _is_arange(a):
    for i in range(1, a.shape[0]):
        if a[i] != a[0] + i:
            return False
    return True


@njit(cache=True)
def _is_increasing(a):
    for i in range(1, a.shape[0]):
        if a[i] <= a[i - 1]:
            return False
    return True


@njit(cache=True)
def _distinct(a):
    """The distinct non-negative values of a (sorted), without sorting a copy of a."""
    hi = -1
    for x in a:
        hi = max(hi, x)
    if hi < 0:
        return np.zeros(0, np.int64)
    if hi < 1 << 26:
        seen = np.zeros(hi + 1, np.bool_)
        for x in a:
            if x >= 0:
                seen[x] = True
        return np.flatnonzero(seen).astype(np.int64)
    return np.unique(a[a >= 0]).astype(np.int64)


@njit(cache=True)
def _densify(a, uniq):
    """In place: each value becomes its index in the sorted uniq; negatives become -1."""
    for i in range(a.shape[0]):
        x = a[i]
        a[i] = np.searchsorted(uniq, x) if x >= 0 else -1


@njit(cache=True)
def _group_order(key, mask, nkeys):
    """Stable counting sort: the indices i with mask[i] and key[i] >= 0, grouped by key
    value (int32), and each group's start."""
    start = np.zeros(nkeys + 1, np.int64)
    for i in range(key.shape[0]):
        if mask[i] and key[i] >= 0:
            start[key[i] + 1] += 1
    for k in range(nkeys):
        start[k + 1] += start[k]
    ptr = start[:-1].copy()
    out = np.empty(start[nkeys], np.int32)
    for i in range(key.shape[0]):
        k = key[i]
        if mask[i] and k >= 0:
            out[ptr[k]] = i
            ptr[k] += 1
    return out, start


@njit(cache=True)
def _longest_instant_run(order, starts, instant):
    best = 0
    for t in range(starts.shape[0] - 1):
        run = 0
        for q in range(starts[t], starts[t + 1]):
            run = run + 1 if instant[order[q]] else 0
            best = max(best, run)
    return best


def load(model, machine, ncpus: int, ops, placement: str = "spread", open_loop: bool = False,
         fault_service_ns: float | None = None, chunk: int = 1 << 18):
    """Build the state for one mm's ops: a polars DataFrame or LazyFrame in op_id order
    with the ops schema's columns.  Columns are read one at a time and kept in compact
    arrays (about 25 bytes an op), so a large trace on Parquet never sits in memory
    whole.  Returns ((I, F, P), meta)."""
    import polars as pl

    lay = model.layout
    prm = model.lock
    src = ops if isinstance(ops, OpsSource) else OpsSource(ops)
    c = src.expr
    kind = c("kind", pl.Utf8).cast(pl.Utf8)
    src.prefetch()  # a file: the small per-op columns in one pass; the big ones one at a time
    op_prog = src.take("prog", src.prog)
    n = len(op_prog)
    is_fault = op_prog >= 0
    is_fault &= op_prog <= 1
    known = src.order("op_id")
    if known is not None and known[0] and known[1] is not None:
        op_base, op_ids = known[1], None
    else:
        op_id = src.column("op_id", np.int64)
        if not _is_increasing(op_id):
            raise ValueError("ops must be in op_id order")
        op_base = int(op_id[0]) if n and _is_arange(op_id) else None
        op_ids = None if op_base is not None else op_id
        del op_id
    if known is not None and not known[0]:
        raise ValueError("ops must be in op_id order")

    # writers (every non-fault op): few, read whole
    w = src.writers(lambda df: df.select(
        "_j", kind.alias("kind"), c("hold_ns"), *(c(k, pl.List(pl.Int64)).cast(pl.List(pl.Int64)) for k in
                                                 ("vma_ids", "vmas_created", "vmas_freed", "vmas_successor"))))
    nf_idx = w["_j"].to_numpy().astype(np.int64)
    wl = {k: w[k].to_list() for k in ("vma_ids", "vmas_created", "vmas_freed", "vmas_successor")}
    w_kind = w["kind"].to_list()

    vma = src.column("vma_id", np.int32, -1)
    pieces = [_distinct(vma)]
    for k in wl:
        for xs in wl[k]:
            if xs:
                pieces.append(np.asarray([x for x in xs if x is not None and x >= 0], np.int64))
    uniq = np.unique(np.concatenate(pieces)) if pieces else np.zeros(0, np.int64)
    index = {int(v): i for i, v in enumerate(uniq)}
    nv = len(uniq)
    _densify(vma, uniq)
    op_vma = vma
    del vma

    freed, succ = [], []
    for fr, sc in zip(wl["vmas_freed"], wl["vmas_successor"]):
        fr = fr or []
        sc = sc if sc else [-1] * len(fr)
        pairs = list(zip(fr, sc))  # zip() as the reference does: the shorter list wins
        freed.append([p[0] for p in pairs])
        succ.append([p[1] for p in pairs])
    w_ids_p, w_ids = _csr(wl["vma_ids"], index)
    w_freed_p, w_freed = _csr(freed, index)
    w_succ = np.asarray([index[s] if s is not None and s >= 0 else -1 for ss in succ for s in ss], np.int64)
    w_created_p, w_created = _csr(wl["vmas_created"], index)
    gate = [sorted(set(a or []) | set(b or [])) for a, b in zip(wl["vma_ids"], wl["vmas_freed"])]
    w_gate_p, w_gate = _csr(gate, index)
    hold = w["hold_ns"].fill_null(0).to_numpy().astype(np.int64)
    op_arg = op_vma
    op_arg[nf_idx] = np.arange(len(nf_idx), dtype=np.int32)  # non-faults: their writer index
    del op_vma

    created = {index[x] for xs in wl["vmas_created"] for x in (xs or [])}
    vid_created = np.zeros(nv, np.int64)
    vid_created[list(created)] = 1
    every = set(np.unique(op_arg[is_fault & (op_arg >= 0)]).tolist())
    for k in ("vma_ids", "vmas_freed"):
        for xs in wl[k]:
            every.update(index[x] for x in (xs or []))
    initial = sorted(every - created)
    n_created = sum(len(xs or []) for xs in wl["vmas_created"])
    max_obj = len(initial) + n_created + 1

    # causal order: op order, as the reference keeps it (ops arrive in op_id order, so
    # an op's rank is its index; seq, an input line, is not consulted)
    rank_is_index, op_rank = True, np.zeros(1, np.int32)
    # faults per VMA in op order: the reference's ``unstarted`` heaps
    us_ops, us_p = _group_order(op_arg, is_fault, nv)

    tid = src.column("tid", np.int32)
    tids = np.unique(tid)
    nt = len(tids)
    tmin = int(tids.min()) if nt else 0
    lut = np.full(int(tids.max()) - tmin + 1 if nt else 1, -1, np.int32)
    lut[tids - tmin] = np.arange(nt)
    tid -= np.int32(tmin)
    tix = lut[tid]
    del tid, lut
    th_order, th_p = _group_order(tix, np.ones(len(tix), np.bool_), nt)
    recorded = None
    if placement == "as-recorded":
        per = src.frame(["tid", "cpu"], lambda df: df.select(
            "_j", c("tid", pl.Int32).alias("t"), c("cpu", pl.Int16).alias("c")).filter(pl.col("c").is_not_null())
            .group_by("t", "c").agg(pl.len().alias("k"), pl.col("_j").min().alias("first")))
        per = per.group_by("t", "c").agg(pl.col("k").sum(), pl.col("first").min())
        recorded = []
        for tid_v in tids.tolist():
            rows = per.filter(pl.col("t") == tid_v).sort("first")
            counts = dict(zip(rows["c"].to_list(), rows["k"].to_list()))
            # max(set(seen), key=seen.count), exactly: the set built in first-seen order
            recorded.append(max(set(counts), key=counts.get) if counts else None)
    cpus = machine.placement(nt, ncpus, placement, recorded)
    del tix

    think = src.column("think_ns", np.float64)
    op_prog += 1
    flags = op_prog  # program + 1 in bits 0-1; then whether the start and end are known
    del op_prog
    flags |= src.take("start_ns", lambda: src.notnull("start_ns")).view(np.int8) << 2
    flags |= src.take("end_ns", lambda: src.notnull("end_ns")).view(np.int8) << 3
    if open_loop:
        starts = src.frame(["start_ns"], lambda df: df.select(c("start_ns").min()))
        t0 = starts["start_ns"].min() if starts is not None else None
        op_rel_start = src.col((c("start_ns") - (t0 or 0)).fill_null(0).cast(pl.Float64), np.float64)
    else:
        op_rel_start = np.zeros(1)

    # zero-time ops can finish several in one step: keep that much room in the buffer
    service = machine.fault_service_ns if fault_service_ns is None else fault_service_ns
    instant = (flags & 3) == 0  # neither fault nor writer: no program, no time
    if not service:
        instant |= is_fault
    slack = 2 + (_longest_instant_run(th_order, th_p, instant) if instant.any() else 0)
    del instant, is_fault

    # lines: the mm_struct's page, the VMA slab, the vma_lock slab (even-sized regions)
    vma_st = lay.vma
    vlines = (max_obj // vma_st.per_page + 1) * 64
    llines = (max_obj // lay.vma_lock.per_page + 1) * 64 if lay.vma_lock_in == "vma_lock" else 0
    VBASE, LBASE = 64, 64 + vlines
    nlines = LBASE + llines
    mcpus = machine.cpus()
    W = (len(mcpus) + 63) // 64
    nsock = machine.sockets

    CI = np.zeros(CI_N, np.int64)
    CI[CI_PREFETCH] = int(machine.adjacent_line_prefetch)
    CI[CI_VLOCK] = {"rwsem": 1, "refcnt": 2}.get(prm.vma_lock, 0)
    CI[CI_REF_LIMIT] = prm.ref_limit
    CI[CI_WAKE_LAST] = int(prm.wake == "last")
    CI[CI_WRITER_REF] = prm.writer_ref
    CI[CI_TYPESAFE] = int(prm.typesafe_by_rcu)
    CI[CI_OPEN_LOOP] = int(open_loop)
    CI[CI_VMA_PER_PAGE], CI[CI_VMA_STRIDE] = vma_st.per_page, vma_st.stride
    if lay.vma_lock is not None:
        CI[CI_VL_PER_PAGE], CI[CI_VL_STRIDE] = lay.vma_lock.per_page, lay.vma_lock.stride
    CI[CI_VBASE], CI[CI_LBASE] = VBASE, LBASE
    CI[CI_F_VM_START] = vma_st.fields["vm_start"]
    CI[CI_F_VM_LOCK_SEQ] = vma_st.fields["vm_lock_seq"]
    CI[CI_F_VM_REFCNT] = vma_st.fields.get("vm_refcnt", 0)
    if lay.vma_lock_in == "vma_lock":
        CI[CI_VL_COUNT], CI[CI_VL_OWNER] = lay.vma_lock.fields["lock.count"], lay.vma_lock.fields["lock.owner"]
    elif lay.vma_lock_in == "vma":
        CI[CI_VL_COUNT], CI[CI_VL_OWNER], CI[CI_VL_IN_VMA] = vma_st.fields["lock.count"], vma_st.fields["lock.owner"], 1
    mmf = lay.mm.fields
    for slot, f in ((CI_MM_MT, "mm_mt"), (CI_MM_COUNT, "mmap_lock.count"), (CI_MM_OWNER, "mmap_lock.owner"),
                    (CI_MM_WWAIT, "vma_writer_wait"), (CI_MM_SEQ, "mm_lock_seq")):
        CI[slot] = mmf[f] // 64
    CI[CI_NSOCK], CI[CI_W] = nsock, W
    L = machine.latency_ns
    CF = np.zeros(CF_N, np.float64)
    CF[[CF_L1, CF_LLC, CF_ATOMIC, CF_RSHARED, CF_REXCL, CF_CROSS]] = [
        L["l1_hit"], L["llc_hit"], L["owned_atomic"], L["socket_read_shared"], L["socket_read_exclusive"],
        L["cross_socket_handoff"]]
    CF[CF_SERVICE] = service
    handoff = np.array([[machine.handoff_ns(a, b) for b in mcpus] for a in mcpus], np.float64)
    sock = np.array([c.socket for c in mcpus], np.int64)

    nlk = max_obj + 1
    CI[CI_LS] = LN_SCNT + nsock + W
    ln = np.zeros((nlines, CI[CI_LS]), np.int64)
    ln[:, LN_OWNER] = -1
    z = np.zeros
    cap = chunk + slack
    max_w = int(np.diff(w_ids_p).max()) if len(w_ids_p) > 1 else 0
    hcap = 4 * nt + 64
    neg = lambda k: np.full(k, -1, np.int64)  # noqa: E731
    lk_f = np.tile(np.array([0.0, 0.0, np.nan, 0.0, 0.0, np.nan]), nlk)
    regs = dict(
        sock=sock, prog=encode_programs(model).ravel(), w_hold=hold, w_ids_p=w_ids_p, w_ids=w_ids,
        w_freed_p=w_freed_p, w_freed=w_freed, w_succ=w_succ, w_created_p=w_created_p, w_created=w_created,
        w_gate_p=w_gate_p, w_gate=w_gate,
        vid_obj=neg(nv), vid_ever=z(nv), vid_created=vid_created, vid_succ=neg(nv), vid_order=z(nv), us_p=us_p,
        us_pos=us_p[:-1].copy(), wc_head=neg(nv), wc_tail=neg(nv),
        th_p=th_p, th_cpu=np.asarray(cpus), th_i=neg(nt), th_pc=z(nt), th_prog=z(nt), th_done=z(nt),
        th_blocked=z(nt), th_token=z(nt), th_thinking=z(nt), th_finished=z(nt), th_slot=neg(nt), th_found=neg(nt),
        th_ref_obj=neg(nt), th_ref_has=z(nt), th_ref_ver=z(nt), th_seq_has=z(nt), th_try=z(nt), th_try_ver=z(nt),
        th_dr=z(nt), th_dw=z(nt), th_rec=z(nt), th_op=z(nt), th_tr=z(nt), th_outcome=z(nt), th_fb=z(nt),
        th_att=z(nt), th_rq_next=neg(nt), th_in_rq=z(nt), th_hs_vlock=neg(nt), th_wlock=z(nt), th_wc_next=neg(nt),
        th_vma=neg(nt), th_w=neg(nt),
        w_next=neg(nt), w_prev=neg(nt), w_write=z(nt), w_handoff=z(nt), sp_next=neg(nt),
        sp_prev=neg(nt),
        cpu_busy=neg(len(mcpus)), rq_head=neg(len(mcpus)), rq_tail=neg(len(mcpus)),
        ob_vid=z(max_obj), ob_slot=z(max_obj), ob_seq=z(max_obj), ob_ref=z(max_obj), ob_live=z(max_obj),
        slot_obj=neg(max_obj), freelist=z(max_obj),
        lk_count=z(nlk), lk_owner=z(nlk), lk_cline=z(nlk), lk_oline=z(nlk), lk_wh=neg(nlk), lk_wt=neg(nlk),
        lk_sh=neg(nlk), lk_st=neg(nlk), lk_i=z(nlk * 3),
        ln=ln.ravel(),
        hp_seq=z(hcap), hp_t=z(hcap), hp_tok=z(hcap), pend_obj=z(max_w + 1), ws=z(nt + 1),
        out_op=z(cap), out_t=z(cap), out_cpu=z(cap), out_tr=z(cap), out_outcome=z(cap), out_fb=z(cap), out_att=z(cap),
        # float regions
        handoff=handoff.ravel(), th_blocked_at=z(nt), th_prev_unknown=z(nt), th_think=z(nt), th_dw_deadline=z(nt),
        th_dw_since=z(nt), th_start=np.full(nt, np.nan), th_wait=z(nt), th_cache=z(nt), th_hs_mm=np.full(nt, np.nan),
        th_hs_v=np.full(nt, np.nan), w_since=z(nt), lk_f=lk_f, ln_busy=z(nlines), hp_when=z(hcap),
        out_start=z(cap), out_end=z(cap), out_wait=z(cap), out_cache=z(cap),
    )
    CI[CI_NCPU], CI[CI_PLEN], CI[CI_HCAP], CI[CI_NT] = len(mcpus), regs["prog"].size // 12, hcap, nt
    I, F, where = pack(regs, CI, CF)
    I[CI0 + CI_RANK_IS_INDEX] = int(rank_is_index)
    P = (flags, op_arg, think, op_rel_start, op_rank.astype(np.int32), th_order, us_ops.astype(np.int32))
    I[I[H_lk_cline]], I[I[H_lk_oline]] = CI[CI_MM_COUNT], CI[CI_MM_OWNER]
    I[G_WW] = -1
    I[G_PEND_T] = -1
    I[G_CHUNK] = chunk
    for v in initial:
        _alloc(I, F, v)
    meta = {"uniq": uniq, "chunk": chunk, "tids": tids, "op_base": op_base, "op_ids": op_ids, "vlines": vlines,
            "llines": llines, "where": where, "w_kind": w_kind}
    return (I, F, P), meta


def pack(regs: dict, CI: np.ndarray, CF: np.ndarray):
    """Lay the regions out in I and F after their headers; returns (I, F, where) with
    where[name] = (array letter, offset, length)."""
    ni = HB + NREG + sum(regs[r].size for r in I_REGIONS)
    nf = 1 + CF_N + sum(regs[r].size for r in F_REGIONS)
    I = np.zeros(ni, np.int64)
    F = np.zeros(nf, np.float64)
    I[CI0:CI0 + CI_N] = CI
    F[CF0:CF0 + CF_N] = CF
    where = {}
    pos = HB + NREG
    for k, r in enumerate(I_REGIONS):
        a = regs[r]
        I[HB + k] = pos
        I[pos:pos + a.size] = a
        where[r] = ("I", pos, a.size)
        pos += a.size
    fpos = 1 + CF_N
    for k, r in enumerate(F_REGIONS):
        a = regs[r]
        I[HB + len(I_REGIONS) + k] = fpos
        F[fpos:fpos + a.size] = a
        where[r] = ("F", fpos, a.size)
        fpos += a.size
    return I, F, where


def region(state, meta, name):
    I, F, _ = state
    arr, off, n = meta["where"][name]
    return (I if arr == "I" else F)[off:off + n]


def lock_stats(state, model, meta) -> list[dict]:
    I = state[0]
    R = lambda name: region(state, meta, name)  # noqa: E731
    lk_i, lk_f, vid_obj, lk_cline = R("lk_i"), R("lk_f"), R("vid_obj"), R("lk_cline")
    ln_tr = R("ln").reshape(-1, I[CI0 + CI_LS])[:, LN_TR]
    out = []
    locks = [(0, "mmap_lock", "mm")]
    if I[CI0 + CI_VLOCK] == 1:
        locks += [(int(vid_obj[v]) + 1, "vma_lock", f"vma:{int(meta['uniq'][v])}")
                  for v in R("vid_order")[:I[G_NVORDER]]]
    for lk, cls, key in locks:
        acq, con, tf = (int(x) for x in lk_i[lk * 3:lk * 3 + 3])
        if not (acq or con or tf):
            continue
        f = [float(x) for x in lk_f[lk * 6:lk * 6 + 6]]
        out.append({"lock_class": cls, "lock": key, "acquisitions": acq, "contentions": con, "wait_total_ns": f[0],
                    "wait_max_ns": f[1], "wait_min_ns": None if np.isnan(f[2]) else f[2], "hold_total_ns": f[3],
                    "hold_max_ns": f[4], "hold_min_ns": None if np.isnan(f[5]) else f[5], "trylock_failures": tf,
                    "con_bounces": int(ln_tr[lk_cline[lk]])})
    return out


def line_stats(state, model, meta) -> list[dict]:
    I = state[0]
    lay = model.layout
    names: dict[int, set] = {}
    for f, off in lay.mm.fields.items():
        names.setdefault(off // 64, set()).add(f"mm_struct.{f}")
    nslots = int(I[G_NSLOTS])
    for slot in range(nslots):
        rel = lay.vma.address(slot, 0)
        for f, off in lay.vma.fields.items():
            names.setdefault(64 + (rel + off) // 64, set()).add(f"vm_area_struct.{f}")
        if lay.vma_lock_in == "vma_lock":
            a = lay.vma_lock.address(slot, 0)
            for f in ("lock.count", "lock.owner"):
                names.setdefault(64 + meta["vlines"] + (a + lay.vma_lock.fields[f]) // 64, set()).add(f"vma_lock.{f}")
    ln = region(state, meta, "ln").reshape(-1, I[CI0 + CI_LS])
    ln_tr, ln_inv = ln[:, LN_TR], ln[:, LN_INV]
    hot = np.flatnonzero((ln_tr > 0) | (ln_inv > 0))
    out = []
    for d in hot.tolist():
        if d < 64:
            absl = MM_BASE // 64 + d
        elif d < 64 + meta["vlines"]:
            absl = VMA_SLAB_BASE // 64 + d - 64
        else:
            absl = VMA_LOCK_SLAB_BASE // 64 + d - 64 - meta["vlines"]
        out.append({"line": absl * 64, "fields": ", ".join(sorted(names.get(d, {"?"}))),
                    "transfers": int(ln_tr[d]), "invalidations": int(ln_inv[d])})
    return out


class EngineError(RuntimeError):
    pass


OUT_COLUMNS = {"op": "out_op", "t": "out_t", "sim_cpu": "out_cpu", "start_ns": "out_start", "end_ns": "out_end",
               "lock_wait_ns": "out_wait", "cache_ns": "out_cache", "line_transfers": "out_tr",
               "outcome": "out_outcome", "fallback": "out_fb", "attempts": "out_att"}


_OUTCOME_NAMES = None
LAST_TIMINGS: dict = {}  # the last simulate()'s load and simulation-loop seconds (benchmarks read it)


def results_frame(raw: dict, state, meta, mm: str):
    """A chunk of raw results as rows of the results schema."""
    import polars as pl

    from . import RESULTS_SCHEMA

    global _OUTCOME_NAMES
    if _OUTCOME_NAMES is None:
        _OUTCOME_NAMES = pl.Series(OUTCOMES, dtype=pl.Utf8)
    P = state[2]
    j = raw["op"]
    flags, arg = P[0][j], P[1][j].astype(np.int64)
    prog = (flags & 3).astype(np.int64) - 1
    fault = (prog == 0) | (prog == 1)
    op_id = meta["op_base"] + j if meta["op_base"] is not None else meta["op_ids"][j]
    names = pl.Series(["fault"] + list(meta["w_kind"]), dtype=pl.Utf8)
    has_vma = fault & (arg >= 0)
    uniq = meta["uniq"]
    vma = uniq[np.where(has_vma, arg, 0)] if len(uniq) else np.zeros(len(j), np.int64)
    df = pl.DataFrame({
        "op_id": op_id.astype(np.int64), "tid": meta["tids"][raw["t"]].astype(np.int32),
        "kind": names.gather(np.where(fault, 0, arg + 1)), "vma_id": vma, "_has_vma": has_vma,
        "sim_cpu": raw["sim_cpu"].astype(np.int32), "start_ns": raw["start_ns"], "end_ns": raw["end_ns"],
        "lock_wait_ns": raw["lock_wait_ns"], "cache_ns": raw["cache_ns"], "line_transfers": raw["line_transfers"],
        "outcome": _OUTCOME_NAMES.gather(raw["outcome"]), "fallback": raw["fallback"].astype(bool),
        "attempts": raw["attempts"].astype(np.int32),
    }).with_columns(pl.lit(mm, pl.Utf8).alias("mm"),
                    pl.when(pl.col("_has_vma")).then(pl.col("vma_id")).alias("vma_id"))
    return df.cast(RESULTS_SCHEMA).select(list(RESULTS_SCHEMA))


def simulate(model, machine, ncpus: int, ops, placement: str = "spread", open_loop: bool = False,
             fault_service_ns: float | None = None, chunk: int = 1 << 18, sink=None, progress=None, mm=None):
    """Replay one mm.  Each chunk of results goes to ``sink`` as it is produced: a dict
    of numpy columns (op = the op's index in ``ops``), or with ``mm`` given, a frame in
    the results schema.  Returns (lock_stats, line_stats, counters)."""
    import time

    t0 = time.perf_counter()
    state, meta = load(model, machine, ncpus, ops, placement, open_loop, fault_service_ns, chunk)
    LAST_TIMINGS["load_s"] = time.perf_counter() - t0
    LAST_TIMINGS["run_s"] = 0.0
    I, F, P = state
    start(I, F, P)
    done_n = 0
    while True:
        t0 = time.perf_counter()
        ended = run_chunk(I, F, P)
        LAST_TIMINGS["run_s"] += time.perf_counter() - t0
        k = int(I[G_NOUT])
        if k:
            raw = {c: region(state, meta, r)[:k].copy() for c, r in OUT_COLUMNS.items()}
            sink(raw if mm is None else results_frame(raw, state, meta, mm))
            done_n += k
            I[G_NOUT] = 0
            if progress:
                progress(done_n)
        if ended:
            break
    err = int(I[G_ERR])
    if err == ERR_DEADLOCK:
        done = region(state, meta, "th_done")
        stuck = [int(meta["tids"][t]) for t in np.flatnonzero(done == 0)]
        raise EngineError(f"simulation deadlocked: threads {stuck} never finished")
    if err:
        raise EngineError(f"compiled engine invariant broken (code {err})")
    counters = {"writer_wakeups": int(I[G_WAKEUPS]), "writer_drains": int(I[G_DRAINS]), "cas_retries": int(I[G_CAS])}
    return lock_stats(state, model, meta), line_stats(state, model, meta), counters


if config.DISABLE_JIT:  # pure-Python debugging runs: plain arrays are fine
    def _unref(I, F, P):  # noqa: F811
        return I, F, P
