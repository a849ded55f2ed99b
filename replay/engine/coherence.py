"""The cache-coherence cost model: what one access to one 64-byte line costs, and
what it does to the line's state.

A line is Modified in one CPU (``line.owner``), or Shared by a set of CPUs, or in no
private cache.  Reading a line another CPU has Modified costs a hand-off (SMT sibling,
same socket, other socket: the machine profile's one-way figures) and leaves both
sharing; a write (store, xadd, cmpxchg) needs the line exclusively and invalidates every
other copy.  An atomic read-modify-write occupies the line for its service time
(``line.busy_until``): N CPUs hammering one line queue behind each other, so one hot
line serves about one operation per hand-off time whatever N is - the contention this
tool is about.

Every request that moves a line - a load's, an RFO, a prefetch's - is served by the line
one at a time, each for its hand-off time: "requests to the same address are not allowed
to pass each other up in the Cbo ... if there is an outstanding request to a given
address, one cannot issue another request to that address until it is complete" (Intel's
uncore event UNC_C_RxR_IRQ_RETRY.ADDR_CONFLICT, Ivy Bridge-EP and Broadwell-EP,
tools/perf/pmu-events/arch/x86/{ivytown,broadwellx}/uncore-cache.json; Skylake-SP and Ice
Lake-SP reject the same way, PA_MATCH).  So a load that misses waits for the request in
flight before it, and occupies the line meanwhile, as an RMW does; a hit does neither.

A plain store's request for ownership occupies the line as an atomic's does, but the
store itself retires into the store buffer: the storing thread goes on at once, its
stores commit in order, and its next locked instruction waits for them to drain (Intel
SDM vol. 3A, "Memory Ordering in P6 and More Recent Processor Families": reads and
writes are not reordered with locked instructions).  So the rwsem's reader-owner store
after its xadd is a second transfer of a contended line, as on hardware, that costs
the next CPU in line rather than the storer.

With the adjacent-line prefetcher on (MSR 0x1A4 bit 1 clear on Intel), a line fetched
into a core's L2 brings its 128-byte pair with it: "Spatial Prefetcher: This
prefetcher strives to complete every cache line fetched to the L2 cache with the pair
line that completes it to a 128-byte aligned chunk" (Intel 64 and IA-32 Architectures
Optimization Reference Manual, "Data Prefetch to the L2 and Last Level Cache").  It is
a hardware prefetch, which asks for a copy, not for ownership (Intel documents no RFO
prefetch from it; an estimate of ours, stated as such in README): the buddy (L ^ 1)
arrives Shared, a core holding it Modified keeps a Shared copy (its next write must
invalidate ours), Shared holders keep theirs.  It runs on a fill only - a demand
miss, an RFO that fetched the line, a prefetchw - never on a hit or an upgrade of a
line already held.  False sharing between a hot line and its buddy comes out of that.

A line's sharers are a bitmask (``cfg.mask_words`` words of 64 CPUs) with per-socket
counts before it, so "another socket holds a copy" is a subtraction, not a scan.

Every transfer (``line.transfers``) is also counted on the CPU that received the line,
by kind (``line_cpu``), in ``perf c2c``'s classes of the access that caused it
(tools/perf/util/mem-events.c c2c_decode_stats(), perf c2c since v4.10): a load - or the
load half of a locked RMW (perf counts those as loads, flagged PERF_MEM_LOCK_LOCKED) -
that found the line Modified in another CPU's cache is a HITM, local or remote by the
owner's socket (an SMT sibling's too: siblings keep copies of their own here, where on
hardware they share an L1 and perf would see an L1 hit); one
served by a Shared copy or the LLC on its own socket an LLC hit (LclHit), by a Shared
copy only on another socket a remote hit (RmtHit); a plain store that fetched the line is
a store L1 miss; a prefetch (prefetchw, the adjacent-line prefetcher's buddy fill) moves
the line without an access perf could sample.  The kinds sum to ``line.transfers``.
"""

from __future__ import annotations

import numpy as np
from ..jit import internal

from .sched import at, at_line
from .state import cfg, cpu, glob, handoff, line, line_cpu, lq_kind, lq_next, lq_t, sharers, thread

# what each transfer into a CPU was (line_cpu's kinds, and the line_cpu table's columns)
RX_NAMES = ("lcl_hitm", "rmt_hitm", "lcl_hit", "rmt_hit", "store_miss", "prefetch")
RX_LCL_HITM, RX_RMT_HITM, RX_LCL_HIT, RX_RMT_HIT, RX_STORE, RX_PREFETCH = range(len(RX_NAMES))
RX_KINDS = len(RX_NAMES)


@internal(inline=True)
def _mask_word(S, n, c):
    k = cfg(S, 0)
    return n * k.sharer_stride + k.nsock + (c >> 6)


@internal(inline=True)
def holds(S, n, c):
    """Whether CPU c has a valid copy of line n."""
    return (sharers(S)[_mask_word(S, n, c)] >> (c & 63)) & 1


@internal
def _only_sharer(S, n, c):
    k = cfg(S, 0)
    base = n * k.sharer_stride
    for w in range(k.nsock + k.mask_words):
        sharers(S)[base + w] = 0
    sharers(S)[_mask_word(S, n, c)] = np.int64(1) << (c & 63)
    line(S, n).nsharers = 1
    sharers(S)[base + cpu(S, c).socket] = 1


@internal(inline=True)
def _received(S, n, c, kind):
    """Line n moved into CPU c (a transfer): counted on c, as ``kind`` (RX_*)."""
    line_cpu(S)[(n * cfg(S, 0).ncpu + c) * RX_KINDS + kind] += 1


@internal(inline=True)
def _load_kind(S, n, c):
    """The c2c class of a load by CPU c of line n, which c does not hold (before the line's
    state changes): HITM when another CPU has it Modified, else where a copy is."""
    own = line(S, n).owner
    if own >= 0:
        return RX_LCL_HITM if cpu(S, own).socket == cpu(S, c).socket else RX_RMT_HITM
    if line(S, n).nsharers > 0 and sharers(S)[n * cfg(S, 0).sharer_stride + cpu(S, c).socket] == 0:
        return RX_RMT_HIT
    return RX_LCL_HIT  # a Shared copy on c's socket, or only the LLC's


@internal
def coh_read(S, n, c, now):
    """A load of line n by CPU c.  Returns (start, cost): it waits for the request in flight."""
    return _fetch_shared(S, n, c, now, False)


@internal
def _fetch_shared(S, n, c, now, prefetch):
    """A load (or, ``prefetch``, a read prefetch) of line n by CPU c: (start, cost)."""
    k = cfg(S, 0)
    ln = line(S, n)
    if holds(S, n, c):  # a hit, at once (its own store in flight is forwarded from the store
        # buffer; another CPU's load queued at the line does not delay it)
        return now, k.l1_hit
    start = max(now, ln.busy_until)
    own = ln.owner
    sock = cpu(S, c).socket
    if own >= 0:
        cost = handoff(S)[own * k.ncpu + c]
    elif ln.nsharers > 0:
        cost = k.socket_read_shared if sharers(S)[n * k.sharer_stride + sock] > 0 else k.cross_socket_handoff
    else:
        cost = k.llc_hit
    ln.transfers += 1
    _received(S, n, c, RX_PREFETCH if prefetch else _load_kind(S, n, c))
    if own >= 0:  # M -> S in the old owner
        ln.owner = -1
    _add_sharer(S, n, c)
    _buddy(S, n, c)
    ln.busy_until = start + cost  # the next request to the line waits for this one
    _served(S, n, c)
    return start, cost


@internal(inline=True)
def _add_sharer(S, n, c):
    k = cfg(S, 0)
    sharers(S)[_mask_word(S, n, c)] |= np.int64(1) << (c & 63)
    line(S, n).nsharers += 1
    sharers(S)[n * k.sharer_stride + cpu(S, c).socket] += 1


@internal(inline=True)
def _rfo_cost(S, n, c, has, own, others):
    """What a request for ownership of line n by CPU c costs, before the access itself:
    the hand-off from its owner, else invalidating the other sharers (an upgrade of a
    held copy half that), else a fetch from the LLC."""
    k = cfg(S, 0)
    if own >= 0 and own != c:
        return handoff(S)[own * k.ncpu + c]
    if others > 0:
        far = line(S, n).nsharers - sharers(S)[n * k.sharer_stride + cpu(S, c).socket] > 0
        inval = k.cross_socket_handoff if far else k.socket_read_exclusive
        return inval if not has else inval / 2
    return k.llc_hit


@internal
def coh_write(S, n, c, now, atomic, changes):
    """A store (atomic False) or an atomic RMW - xadd, cmpxchg - by CPU c: exclusive
    ownership, other copies invalidated; an atomic holds the line for its duration;
    ``changes``: the value changes (CAS loops compare versions).  Returns (start, cost)."""
    k = cfg(S, 0)
    ln = line(S, n)
    start = max(now, ln.busy_until)
    base = k.owned_atomic if atomic else k.l1_hit
    has = holds(S, n, c) != 0
    own = ln.owner
    nsh = ln.nsharers
    if own == c and has and nsh == 1:
        cost = base  # already exclusive here: the sharer set stays {c}
    else:
        others = nsh - (1 if has else 0)
        cost = _rfo_cost(S, n, c, has, own, others) + base
        if not has or (own != -1 and own != c):
            ln.transfers += 1
            _received(S, n, c, _load_kind(S, n, c) if atomic else RX_STORE)
        ln.invalidations += others
        ln.owner = c
        _only_sharer(S, n, c)
        if not has:  # fetched: the spatial prefetcher completes the pair
            _buddy(S, n, c)
    ln.busy_until = start + cost  # an atomic holds the line; a store's RFO occupies it as long
    _served(S, n, c)
    if changes:
        ln.version += 1
    return start, cost


@internal(inline=True)
def _buddy(S, n, c):
    """The spatial prefetcher: line n was fetched into CPU c's L2; its 128-byte pair
    (n ^ 1) comes too, as a read - Shared in c, a Modified copy elsewhere downgraded to
    Shared, nobody invalidated.  It costs c nothing (the prefetch is not waited for)."""
    if cfg(S, 0).prefetch_pairs:
        b = n ^ 1
        if holds(S, b, c):
            return
        bl = line(S, b)
        bl.transfers += 1
        _received(S, b, c, RX_PREFETCH)
        if bl.owner >= 0:  # M -> S in its owner
            bl.owner = -1
        _add_sharer(S, b, c)


@internal
def coh_prefetchw(S, n, c, now):
    """PREFETCHW: "fetches the cache line of data from memory that contains the byte
    specified with the source operand to a location in the 1st or 2nd level cache and
    invalidates other cached instances of the line" (Intel SDM vol. 2B, PREFETCHW) - a
    request for ownership that does not stall the core: it issues it and goes on (Ice
    Lake-SP counts it as a demand RFO: OFFCORE_REQUESTS.DEMAND_RFO).  It is a request like
    any other: it waits for the one in flight on the line and occupies the line for its
    hand-off time, so other CPUs' requests queue behind it, and the line reaches c at the
    returned time (its fill); c's own access before then is served by that fill
    (``served_by_fill``).  No value changes.  The buddy comes as for a write (the spatial
    prefetcher).  Returns (moved, when the fill lands)."""
    if _prefetch_needless(S, n, c):
        return False, max(now, line(S, n).busy_until) if cfg(S, 0).prfchw else now
    return _prefetch_serve(S, n, c, now)


@internal(inline=True)
def _prefetch_needless(S, n, c):
    """A prefetchw that sends no request: the line is exclusive in c already (perhaps its own
    request in flight), or - no PRFCHW, a read prefetch - c has a copy."""
    has = holds(S, n, c) != 0
    if not cfg(S, 0).prfchw:
        return has
    ln = line(S, n)
    return ln.owner == c and has and ln.nsharers == 1


@internal
def _prefetch_serve(S, n, c, now):
    """coh_prefetchw()'s request, served from ``now`` (it waits for the one in flight)."""
    k = cfg(S, 0)
    ln = line(S, n)
    has = holds(S, n, c) != 0
    if not k.prfchw:  # no PRFCHW: Linux's prefetchw() is PREFETCHT0, a read prefetch, queued as a load
        start, cost = _fetch_shared(S, n, c, now, True)
        return True, start + cost
    own = ln.owner
    nsh = ln.nsharers
    start = max(now, ln.busy_until)
    others = nsh - (1 if has else 0)
    cost = _rfo_cost(S, n, c, has, own, others)
    moved = not has or (own != -1 and own != c)
    if moved:
        ln.transfers += 1
        _received(S, n, c, RX_PREFETCH)
    ln.invalidations += others
    ln.owner = c
    _only_sharer(S, n, c)
    ln.busy_until = start + cost
    _served(S, n, c)
    if not has:
        _buddy(S, n, c)
    return moved, start + cost


# -- requests waiting at a line, and the arbiter that picks the next -------------------------------
# A request that finds its line busy - a request in flight, others waiting, or one granted whose
# access has not run yet - waits at the line (a list of request records) rather than being
# given a start time at once: when the line comes free, the arbiter (arbitrate(), an event of
# the line) picks which waiting request is served next.  A load or an atomic stalls its
# thread until then (thread.lq_state); a store (it retires into the store buffer) and a
# prefetchw leave it running, and are served by the arbiter itself.
RQ_LOAD, RQ_RMW, RQ_STORE, RQ_PREFETCH = 0, 1, 2, 3  # what a request asks for (lq_kind's low bits)
RQ_KIND_BITS = 2  # lq_kind = kind | cpu << RQ_KIND_BITS: the CPU it was issued from
# thread.lq_state: its access waits at lq_line (QUEUED), was picked and is to run (GRANTED),
# waits for its own prefetchw's fill (FILL) or for its stores to commit (DRAIN), or has waited
# and is to run (READY: issued at lq_since)
LQ_NONE, LQ_QUEUED, LQ_GRANTED, LQ_FILL, LQ_DRAIN, LQ_READY = 0, 1, 2, 3, 4, 5


@internal(inline=True)
def _busy(S, n, now):
    """Whether a request for line n issued at ``now`` has to wait its turn."""
    ln = line(S, n)
    return ln.q_n > 0 or ln.reserved >= 0 or ln.busy_until > now


@internal(inline=True)
def _served(S, n, c):
    """Line n has just been given to a request from CPU c, until its busy_until: the arbiter
    runs then if others wait (unless a grant's access is still to run: it will come here)."""
    ln = line(S, n)
    ln.last_cpu = c
    if ln.q_n > 0 and ln.reserved < 0 and ln.arb_when < ln.busy_until:
        at_line(S, ln.busy_until, n)


@internal
def _enqueue(S, n, t, kind):
    """t's request for line n waits at the line.  False: no request record is free (then
    the caller serves it in arrival order, as if it had found the line free)."""
    g = glob(S, 0)
    r = g.lq_free
    if r < 0:
        return False
    g.lq_free = lq_next(S)[r]
    lq_t(S)[r] = t
    lq_kind(S)[r] = kind | (thread(S, t).cpu << RQ_KIND_BITS)
    lq_next(S)[r] = -1
    ln = line(S, n)
    if ln.q_tail >= 0:
        lq_next(S)[ln.q_tail] = r
    else:
        ln.q_head = r
    ln.q_tail = r
    ln.q_n += 1
    if ln.reserved < 0 and ln.arb_when < 0:
        at_line(S, max(g.now, ln.busy_until), n)
    return True


@internal(inline=True)
def _unlink(S, n, prev, r):
    """Take request record r (after ``prev``, -1: the head) off line n's list and free it."""
    ln = line(S, n)
    nxt = lq_next(S)[r]
    if prev < 0:
        ln.q_head = nxt
    else:
        lq_next(S)[prev] = nxt
    if ln.q_tail == r:
        ln.q_tail = prev
    ln.q_n -= 1
    g = glob(S, 0)
    lq_next(S)[r] = g.lq_free
    g.lq_free = r


@internal
def abandon(S, t):
    """t's step went another way than the access it waited for (it was run again by
    someone else's wake-up, or its lock state changed while it waited): its queued access
    is withdrawn, a grant it did not use goes to the next request."""
    th = thread(S, t)
    n = th.lq_line
    st = th.lq_state
    th.lq_state = LQ_NONE
    th.lq_line = -1
    if n < 0:
        return
    ln = line(S, n)
    if st == LQ_QUEUED:
        prev = -1
        r = ln.q_head
        while r >= 0:
            if lq_t(S)[r] == t and (lq_kind(S)[r] & 3) <= RQ_RMW:
                _unlink(S, n, prev, r)
                break
            prev = r
            r = lq_next(S)[r]
    elif st == LQ_GRANTED and ln.reserved == t:
        ln.reserved = -1
        if ln.q_n > 0 and ln.arb_when < 0:
            at_line(S, max(glob(S, 0).now, ln.busy_until), n)


@internal
def arbitrate(S, n):
    """Line n is free: its arbiter serves the next request (serve_next()); a load or an
    atomic it grants runs its access now, an event of its thread."""
    t = serve_next(S, n)
    if t >= 0:
        at(S, glob(S, 0).now, t)


@internal
def serve_next(S, n):
    """Line n is free: serve a waiting request from the last-level cache domain the line
    was last served to (its socket; its CCD on a part with several L3s a socket), the
    oldest first; with none there, the oldest from the nearest other domain (least
    hand-off: another CCD of the socket before the other socket).

    Why.  Requests to one address are served one at a time, and the ones that find it
    busy are not queued in arrival order: core requests wait in the LLC slice's ingress
    queue (IRQ) and are retried, "requests to the same address are not allowed to pass
    each other up in the Cbo ... [a request] will then sit in the IRQ and get retried"
    (Ivy Bridge-EP / Broadwell-EP UNC_C_RxR_IRQ_RETRY.ADDR_CONFLICT; Skylake-SP and Ice
    Lake-SP CHA: UNC_CHA_RxC_IRQ1_REJECT.PA_MATCH, UNC_CHA_RxC_OTHER1_RETRY.PA_MATCH),
    while snoops from the other socket wait in another queue (the IPQ, "snoops from Intel
    QPI", Intel Xeon E5-2600 uncore performance monitoring guide 327043-001 section
    2.3.4.2) and are retried when they meet an outstanding local request
    (UNC_C_RxR_IPQ_RETRY.ADDR_CONFLICT).  A request its own socket can serve by snooping
    its own cores never leaves the socket (Skylake-SP UNC_CHA_TOR_INSERTS.MISS: "If only
    IDI snoops were required, it is not a miss"): the socket holding the line passes it
    among its cores, and the other socket's request gets it when none of them is
    waiting.  Within a domain the order is not documented (est.: oldest first); an SMT
    sibling is one of its domain's cores here (the home arbitrates between cores' requests,
    and a snoop waiting for the line takes it from the core after the locked op in
    progress).  Zen's L3 serves its CCX's cores the same way (Zen 5 counts those fills
    apart: ls_any_fills_from_sys.local_ccx against near_cache / far_cache).  Ivy
    Bridge-EP and Broadwell-EP count that the IPQ or the IRQ can be starved
    (UNC_C_RxR_EXT_STARVED, UNC_C_RxR_INT_STARVED), so hardware bounds a far request's
    wait somehow; no source gives the bound, and none is modelled (est.).  README, *The
    cost model* ("Which request goes next") and *Validation* say what it moved.

    Returns the thread whose load or atomic it granted, to run its access now (-1: none):
    arbitrate() schedules it, the event loop runs it at once when nothing else is due
    first (loop._events)."""
    g = glob(S, 0)
    ln = line(S, n)
    ln.arb_when = -1.0
    if ln.q_n == 0 or ln.reserved >= 0:
        return -1
    now = g.now
    if ln.busy_until > now:  # a request served in arrival order (a chained access) took it meanwhile
        at_line(S, ln.busy_until, n)
        return -1
    k = cfg(S, 0)
    last = ln.last_cpu
    dom = cpu(S, last).llc if last >= 0 else -1
    best, bprev = -1, -1
    bcost = np.inf
    prev = -1
    r = ln.q_head
    while r >= 0:
        c = lq_kind(S)[r] >> RQ_KIND_BITS
        d = 0.0 if last < 0 or cpu(S, c).llc == dom else handoff(S)[last * k.ncpu + c]
        if d < bcost:
            best, bprev, bcost = r, prev, d
            if d == 0.0:  # the oldest of its domain
                break
        prev = r
        r = lq_next(S)[r]
    t = lq_t(S)[best]
    kind = lq_kind(S)[best] & 3
    c = lq_kind(S)[best] >> RQ_KIND_BITS
    _unlink(S, n, bprev, best)
    th = thread(S, t)
    if kind == RQ_PREFETCH:
        moved, fill = _prefetch_serve(S, n, c, now)
        if moved:
            th.transfers += 1
        if th.pf_pending and th.pf_line == n:
            th.pf_pending = False
            th.pf_until = fill
            if th.lq_state == LQ_FILL and th.lq_line == n:
                at(S, fill, t)
    elif kind == RQ_STORE:
        s, cost = coh_write(S, n, c, now, False, True)
        th.sb_until = max(th.sb_until, s + cost)
        th.sb_pending -= 1
        if th.sb_pending == 0:
            th.sb_line = -1
            if th.lq_state == LQ_DRAIN:
                at(S, max(now, th.sb_until), t)
    else:  # a load or an atomic: t runs its access now
        ln.reserved = t
        th.lq_state = LQ_GRANTED
        return t
    return -1


@internal
def _stall(S, t, n, state, since):
    th = thread(S, t)
    th.lq_state = state
    th.lq_line = n
    th.lq_since = since
    return True


@internal
def wait_line(S, t, n, kind):
    """Whether t's access to line n (RQ_LOAD or RQ_RMW), the first of its step, has to wait:
    then t stalls on its CPU (it is not descheduled) and its step runs again when the wait
    is over - the caller returns at once, before changing anything.  An access waits
    its turn at a busy line (the arbiter), for t's own prefetchw of the line still queued
    (its fill serves the access: served_by_fill()), or - an atomic - for t's stores still
    queued (a locked instruction drains the store buffer first).  A hit, or an atomic on
    a line t owns exclusively, does not wait."""
    th = thread(S, t)
    g = glob(S, 0)
    now = g.now
    since = now
    st = th.lq_state
    if st != LQ_NONE:
        if th.lq_line == n:
            if st == LQ_GRANTED or st == LQ_READY:
                return False
            if st == LQ_QUEUED or (st == LQ_FILL and th.pf_pending) or (st == LQ_DRAIN and th.sb_pending > 0):
                return True  # run early (a wake-up for something else): still waiting
            since = th.lq_since
        else:
            abandon(S, t)
    c = th.cpu
    k = cfg(S, 0)
    ln = line(S, n)
    if th.pf_pending and th.pf_line == n and (kind == RQ_LOAD or k.prfchw):
        return _stall(S, t, n, LQ_FILL, since)
    if kind == RQ_RMW and th.sb_pending > 0:
        return _stall(S, t, n, LQ_DRAIN, since)
    has = holds(S, n, c) != 0
    if kind == RQ_LOAD and (has or (th.sb_pending > 0 and th.sb_line == n)):
        pass  # a hit (or forwarded from its own store)
    elif (kind == RQ_LOAD or k.prfchw) and served_by_fill(S, t, n, since) >= 0:
        pass
    elif kind == RQ_RMW and has and ln.owner == c and ln.nsharers == 1:
        pass  # exclusive here: the atomic is done in its cache
    elif _busy(S, n, now) and _enqueue(S, n, t, kind):
        return _stall(S, t, n, LQ_QUEUED, since)
    if since != now:
        th.lq_state = LQ_READY
        th.lq_line = n
        th.lq_since = since
    else:
        th.lq_state = LQ_NONE
    return False


@internal
def serialize(S, t):
    """A serializing instruction of t - the exception's IRET at the end of every fault
    (arch/x86/entry/entry_64.S: both the return to user space and the one to the kernel
    end in native_irq_return_iret).  "When the processor serializes instruction
    execution, it ensures that all pending memory transactions are completed (including
    writes stored in its store buffer) before it executes the next instruction" (Intel
    SDM vol. 3A, "Serializing Instructions": IRET is one), and a software prefetch, which
    is ordered with no fence and no locked instruction, "is ordered with respect to
    serializing instructions" (SDM vol. 2B, PREFETCHh and PREFETCHW).  So t goes on when
    its last prefetchw's fill has landed (thread.pf_until; one still queued at its line:
    t stalls, LQ_FILL, until the arbiter serves it) and its stores still queued at their
    line have committed (LQ_DRAIN, then thread.sb_until); the wait is its cache time.
    Profiles show the wait where the prefetched line is contended: Intel's kernel test
    robot on "x86/mm: Stop prefetching current->mm->mmap_lock on page faults" (commit
    0f0a9bf60244 in tip), will-it-scale page_fault2 threads on Granite Rapids,
    native_irq_return_iret 65.96 % of cycles before, 2.08 % after
    (<202508180417.950a8478-lkp@intel.com>); page_fault3 on Sapphire Rapids 30.3 % -> 10.0 %
    (<202507211051.661da739-lkp@intel.com>).  Returns when t goes on; -1: it stalls (and
    runs again when served).  On AMD parts (the Zen 5 profile) no source here says
    either way; the same is assumed (est.)."""
    th = thread(S, t)
    now = glob(S, 0).now
    st = th.lq_state
    since = now
    if st == LQ_FILL or st == LQ_DRAIN:  # back from its wait
        since = th.lq_since
        th.lq_state = LQ_NONE
        th.lq_line = -1
    elif st != LQ_NONE:
        abandon(S, t)
    if th.pf_pending:
        _stall(S, t, th.pf_line, LQ_FILL, since)
        return -1.0
    if th.sb_pending > 0:
        _stall(S, t, th.sb_line, LQ_DRAIN, since)
        return -1.0
    end = max(now, th.pf_until, th.sb_until)
    th.cache += end - since
    return end


@internal(inline=True)
def stalled(S, t):
    """Whether t's step stopped at an access that waits (wait_line())."""
    st = thread(S, t).lq_state
    return st == LQ_QUEUED or st == LQ_FILL or st == LQ_DRAIN


@internal(inline=True)
def still_waiting(S, t):
    """Whether t's access waits still (it is run before its wait is over: a wake-up for
    something else - a spinner let in - finds it stalled at the line)."""
    th = thread(S, t)
    st = th.lq_state
    return st == LQ_QUEUED or (st == LQ_FILL and th.pf_pending) or (st == LQ_DRAIN and th.sb_pending > 0)


@internal(inline=True)
def _issue(S, t, n, since):
    """(when t's access to line n issues, when its time counts from, whether the arbiter
    granted it the line: then _granted() after it): an access that waited (wait_line())
    issues now, counted from when it was first issued."""
    th = thread(S, t)
    st = th.lq_state
    if (st == LQ_GRANTED or st == LQ_READY) and th.lq_line == n:
        th.lq_state = LQ_NONE
        th.lq_line = -1
        if st == LQ_GRANTED:
            line(S, n).reserved = -1
        return glob(S, 0).now, th.lq_since, st == LQ_GRANTED
    return since, since, False


@internal(inline=True)
def _granted(S, n):
    """The access line n was granted for has run: the next request's turn - after it if it
    moved the line (_served() has moved the arbiter on), at once if it was a hit (a copy
    came meanwhile: the buddy of a fill).  Decided after the access, not before it: an
    arbiter event scheduled at the grant would be superseded by _served()'s at every
    access that moves the line."""
    ln = line(S, n)
    if ln.q_n > 0 and ln.arb_when < 0:
        at_line(S, max(glob(S, 0).now, ln.busy_until), n)


@internal
def prefetchw(S, t, n):
    """t's prefetchw() of line n (coh_prefetchw): sent at once to a free line; one that
    finds it busy waits at the line (the arbiter serves it) while t goes on.  Returns
    whether it moved the line now (a queued one counts when served)."""
    th = thread(S, t)
    now = glob(S, 0).now
    c = th.cpu
    if th.pf_pending and th.pf_line == n:
        return False  # its request is already waiting
    th.pf_pending = False  # one to another line, still queued, is left to land unwaited-for
    if not _prefetch_needless(S, n, c) and _busy(S, n, now) and _enqueue(S, n, t, RQ_PREFETCH):
        th.pf_line = n
        th.pf_pending = True
        th.pf_until = np.inf
        return False
    moved, fill = coh_prefetchw(S, n, c, now)
    th.pf_line = n
    th.pf_until = fill
    return moved


# -- a thread's accesses: their cost is its cache time ---------------------------------------------
@internal(inline=True)
def cost_since(S, t, start, cost, since):
    """Account one access thread t began at ``since`` (any wait for the line included);
    returns when t continues.  A cost above an L1 hit that is not an owned atomic
    moved the line: a transfer."""
    k = cfg(S, 0)
    end = start + cost
    th = thread(S, t)
    th.cache += end - since
    if cost > k.l1_hit and cost != k.owned_atomic:
        th.transfers += 1
    return end


@internal(inline=True)
def served_by_fill(S, t, n, since):
    """When t's access to line n, issued at ``since``, completes on the fill of t's own
    prefetchw of n still in flight - a demand access to a line whose software prefetch is
    outstanding is served by that prefetch's fill buffer, not sent as a second request
    (Intel's core event LOAD_HIT_PRE.SW_PF: "Demand load dispatches that hit L1D fill
    buffer (FB) allocated for software prefetch", and "some lock instructions") - and
    so does each access t issues the moment the one before it, served so, completed (the
    load and the cmpxchg of down_read_trylock(), then its owner store), before the line
    passes to the request queued behind (whose hand-off the few ns these take do not
    delay here).  -1: not so."""
    th = thread(S, t)
    if th.pf_line == n and since <= th.pf_until and not th.pf_pending:
        return th.pf_until
    return -1.0


@internal(inline=True)
def read_from(S, t, n, since):
    """t loads from line n, issued at ``since``."""
    since, acct, granted = _issue(S, t, n, since)
    th = thread(S, t)
    f = served_by_fill(S, t, n, since)
    if f >= 0:
        end = cost_since(S, t, f, cfg(S, 0).l1_hit, acct)
        th.pf_until = end
    elif th.sb_pending > 0 and th.sb_line == n:  # forwarded from its own store still waiting at the line
        end = cost_since(S, t, since, cfg(S, 0).l1_hit, acct)
    else:
        s, c = coh_read(S, n, th.cpu, since)
        end = cost_since(S, t, s, c, acct)
    if granted:
        _granted(S, n)
    return end


@internal(inline=True)
def read(S, t, n):
    """t loads from line n, the first access of its step: -1 if it waits (wait_line())."""
    if wait_line(S, t, n, RQ_LOAD):
        return -1.0
    return read_from(S, t, n, glob(S, 0).now)


@internal(inline=True)
def rmw_from(S, t, n, changes, since):
    """t's atomic read-modify-write on line n, issued at ``since``: a locked instruction
    first waits for t's store buffer to drain (thread.sb_until)."""
    since, acct, granted = _issue(S, t, n, since)
    th = thread(S, t)
    # the line arrives Modified: the locked op completes on it (a PREFETCHT0's Shared fill
    # does not serve it: the RMW sends its own request for ownership, queued behind the fill)
    f = served_by_fill(S, t, n, max(since, th.sb_until)) if cfg(S, 0).prfchw else -1.0
    if f >= 0:
        if changes:
            line(S, n).version += 1
        end = cost_since(S, t, f, cfg(S, 0).owned_atomic, acct)
        th.pf_until = end
    else:
        s, c = coh_write(S, n, th.cpu, max(since, th.sb_until), True, changes)
        end = cost_since(S, t, s, c, acct)
    if granted:
        _granted(S, n)
    return end


@internal(inline=True)
def rmw(S, t, n, changes):
    """t's atomic read-modify-write on line n, the first access of its step: -1 if it
    waits (wait_line())."""
    if wait_line(S, t, n, RQ_RMW):
        return -1.0
    return rmw_from(S, t, n, changes, glob(S, 0).now)


@internal(inline=True)
def store_from(S, t, n, since):
    """t's plain store to line n, issued at ``since``: it retires into the store buffer
    (an instruction's time, an L1 hit) and commits in order after t's earlier stores;
    its request for ownership occupies the line meanwhile (coh_write)."""
    k = cfg(S, 0)
    th = thread(S, t)
    f = served_by_fill(S, t, n, max(since, th.sb_until)) if k.prfchw else -1.0
    g = glob(S, 0)
    if f < 0 and since == g.now and not (holds(S, n, th.cpu) and line(S, n).owner == th.cpu
                                         and line(S, n).nsharers == 1) and _busy(S, n, since):
        # its request for ownership waits at the busy line (the arbiter commits it) while t goes on
        if _enqueue(S, n, t, RQ_STORE):
            th.sb_pending += 1
            th.sb_line = n
            th.cache += k.l1_hit
            th.transfers += 1
            return since + k.l1_hit
    if f >= 0:  # commits into the arriving line
        line(S, n).version += 1
        s, c = f, k.l1_hit
        th.pf_until = f + c
    else:
        s, c = coh_write(S, n, th.cpu, max(since, th.sb_until), False, True)
    th.sb_until = s + c
    th.cache += k.l1_hit
    if c > k.l1_hit:
        th.transfers += 1
    return since + k.l1_hit


@internal(inline=True)
def store(S, t, n):
    """t's plain store to line n."""
    return store_from(S, t, n, glob(S, 0).now)
