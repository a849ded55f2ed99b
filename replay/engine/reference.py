"""The reference engine: a plain heap-loop discrete-event simulation in Python.

It interprets a model's micro-op programs (isa.py) for every thread of one mm on a
simulated machine, one timed step at a time, in global time order (ties broken by
insertion order: deterministic).  Every load/store/atomic goes through the coherence
model, so a step's cost depends on where the line is and on who else is hammering it.

It is the semantic reference (small, legible, checked by hand-made tests) and the
baseline a compiled engine is measured against; it is not fast.

Lock algorithms, with the kernel code they follow:

* rw_semaphore - kernel/locking/rwsem.c (v6.x): count bits WRITER_LOCKED (bit 0),
  FLAG_WAITERS (1), FLAG_HANDOFF (2), readers in bits 8+ (READER_BIAS 256).
  down_read(): xadd READER_BIAS; the slow path (rwsem_down_read_slowpath()) steals the
  lock when it is neither writer-locked nor handed off (unless it is reader-owned with
  other readers, rcnt > 1), else queues, and a reader finding an empty queue and no
  writer keeps its bias.  down_read_trylock(): load + cmpxchg loop, failing at once on
  any of the three bits.  up_read(): xadd -READER_BIAS, waking when only the waiters
  bit is left.  down_write(): cmpxchg 0 -> WRITER_LOCKED, else queue; a queued writer
  that has waited RWSEM_WAIT_TIMEOUT (4 ms at HZ=1000) at the head sets HANDOFF.
  rwsem_mark_wake(): a writer at the head is woken to retry; readers at the head get
  the lock together - every queued reader, up to MAX_READERS_WAKEUP (256), writers
  skipped - unless a writer holds it by then.  Writers spin first
  (rwsem_optimistic_spin()): while a writer owner is on a CPU, or on a reader-owned
  lock for rwsem_rspin_threshold() (10 us + 0.5 us a reader, at most 25 us), taking
  the lock the moment it is free (rwsem_try_write_lock_unqueued()); they stop when
  the owner sleeps or another task wants the CPU (need_resched()), then queue.
* vm_refcnt - mm/mmap_lock.c and include/linux/mmap_lock.h (v6.15) and the v7/v8
  postings: readers __refcount_inc_not_zero_limited() (load + cmpxchg loop; fails
  without writing on 0 = detached or above the limit = writer bit set); writers add
  VMA_LOCK_OFFSET, sleep on mm->vma_writer_wait until vm_refcnt == OFFSET + 1 (readers
  drained), store vm_lock_seq, subtract OFFSET.  vma_refcount_put(): decrement, and
  wake the writer when is_vma_writer_only() (v8, mainline: the last reader) or on
  every reader exit while the writer bit is set (v7).
* vm_lock_seq / mm_lock_seq - a VMA is write-locked while its vm_lock_seq equals the
  mm's mm_lock_seq; mmap_write_unlock() -> vma_end_write_all() bumps mm_lock_seq,
  unlocking them all at once.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from ..machines import Machine
from ..models.base import Model
from ..models.kernels import VMA_LOCK_OFFSET
from .coherence import Coherence
from .isa import Op

WRITER_LOCKED, FLAG_WAITERS, FLAG_HANDOFF = 1, 2, 4
READER_BIAS = 1 << 8
READ_FAILED_MASK = WRITER_LOCKED | FLAG_WAITERS | FLAG_HANDOFF
READER_MASK = ~(READER_BIAS - 1)
LOCK_MASK = WRITER_LOCKED | READER_MASK
MAX_READERS_WAKEUP = 0x100
RWSEM_WAIT_TIMEOUT_NS = 4_000_000
RSPIN_BASE_NS, RSPIN_PER_READER_NS, RSPIN_MAX_NS = 10_000.0, 500.0, 25_000.0
READER_OWNED = -1
WAKEUP_NS = 2000.0  # est.: try_to_wake_up() until the woken task runs on an idle CPU
DEFAULT_WRITER_NS = 2000.0  # est.: when the trace gives no hold time

MM_BASE = 0xFFFF888100000000
VMA_SLAB_BASE = 0xFFFF888200000000
VMA_LOCK_SLAB_BASE = 0xFFFF888300000000


@dataclass
class Waiter:
    thread: "Thread"
    write: bool
    since: float
    handoff_set: bool = False


@dataclass
class Rwsem:
    name: str  # lock class: mmap_lock or vma_lock
    key: str  # instance
    count_line: int
    owner_line: int
    count: int = 0
    owner: int = 0
    waiters: deque = field(default_factory=deque)
    stats: dict = field(default_factory=lambda: {"acquisitions": 0, "contentions": 0, "wait_total_ns": 0.0,
                                                 "wait_max_ns": 0.0, "wait_min_ns": None, "hold_total_ns": 0.0,
                                                 "hold_max_ns": 0.0, "hold_min_ns": None,
                                                 "trylock_failures": 0})
    held_since: dict = field(default_factory=dict)  # tid -> when it took the lock (lockstat holdtime)
    spinners: list = field(default_factory=list)  # writers spinning optimistically, in OSQ order


@dataclass
class Vma:
    id: int
    addr: int
    slot: int
    lock: Rwsem | None = None
    vm_lock_seq: int = -1
    refcnt: int = 1  # attached
    live: bool = True  # in the tree; False once detached


@dataclass
class Thread:
    tid: int
    cpu: int
    ops: list  # dicts from the ops table, in order
    i: int = -1  # current op
    pc: int = 0
    prog: list = field(default_factory=list)
    pending: deque = field(default_factory=deque)  # expanded internal steps (vma_start_write)
    reg: dict = field(default_factory=dict)
    rec: dict | None = None  # the current op's result row
    blocked_at: float | None = None
    done: bool = False
    reg_prev_unknown: float = 0.0  # simulated duration of the previous op, if the trace lacks its end
    token: int = 0  # the one scheduled event that is current; an older one is stale


class Simulation:
    def __init__(self, model: Model, machine: Machine, ncpus: int, ops: list[dict], placement: str = "spread",
                 open_loop: bool = False, fault_service_ns: float | None = None):
        self.model = model
        self.m = machine
        self.fault_service_ns = machine.fault_service_ns if fault_service_ns is None else fault_service_ns
        self.coh = Coherence(machine)
        self.now = 0.0
        self.heap: list = []
        self.seq = 0
        lay = model.layout
        self.mm_fields = lay.mm.fields
        self.mm_lock_seq = 0
        self.mmap_lock = Rwsem("mmap_lock", "mm", self._mm_line("mmap_lock.count"), self._mm_line("mmap_lock.owner"))
        self.writer_waiting: Thread | None = None  # mm->vma_writer_wait (one rcuwait)
        self.line_names: dict[int, set] = {}
        for f, off in self.mm_fields.items():
            self.line_names.setdefault((MM_BASE + off) // 64, set()).add(f"mm_struct.{f}")
        # VMA objects live in slab slots.  With SLAB_TYPESAFE_BY_RCU (v7, v8, mainline) a
        # freed slot is reused at once, so a reader may hold a pointer to an object that
        # has become another VMA; before v6.15 VMAs were freed through call_rcu() and a
        # slot is not reused while readers could still see it.
        self.vmas: dict[int, Vma] = {}
        self.slots: list[Vma] = []
        self.freelist: list[int] = []
        created = {x for o in ops for x in (o.get("vmas_created") or [])}
        # Causal order the closed loop must keep (it drifts from the recorded timeline):
        # a fault waits for the writer that created its VMA, and a writer waits until
        # the faults on its VMAs that the trace shows before it have started.  Both
        # point from later to earlier trace order, so they cannot deadlock; races that
        # really happened (a fault overlapping the writer) stay races.  Trace order is op
        # order (op_id), the order each thread runs its ops in: the op builder numbers ops
        # in time order, while ``seq`` is an input line and runs backwards where the
        # trace's timestamps did.
        self.creator_of = {x: o["op_id"] for o in ops for x in (o.get("vmas_created") or [])}
        self.unstarted: dict[int, list] = {}  # vma -> heap of op_ids of faults not yet started
        for o in ops:
            if o["kind"] == "fault" and o["vma_id"] is not None:
                self.unstarted.setdefault(o["vma_id"], []).append(o["op_id"])
        for h in self.unstarted.values():
            heapq.heapify(h)
        self.started_ops: set = set()
        self.wait_create: dict[int, list] = {}
        self.successor: dict[int, int] = {}  # merged away -> absorbed by (set at commit)
        self.wait_start: list = []  # (writer thread, seq, vmas)
        every = ({o["vma_id"] for o in ops if o["vma_id"] is not None}
                 | {x for o in ops for k in ("vma_ids", "vmas_freed") for x in (o.get(k) or [])})
        for vid in sorted(every - created):
            self._alloc(vid)
        by_tid: dict[int, list] = {}
        for o in ops:
            by_tid.setdefault(o["tid"], []).append(o)
        tids = sorted(by_tid)
        recorded = None
        if placement == "as-recorded":
            recorded = []
            for tid in tids:
                seen = [o.get("cpu") for o in by_tid[tid] if o.get("cpu") is not None]
                recorded.append(max(set(seen), key=seen.count) if seen else None)
        cpus = machine.placement(len(tids), ncpus, placement, recorded)
        # open loop: each op starts at its recorded time (relative to the trace's first
        # op), or when its thread is free, whichever is later
        self.open_loop = open_loop
        self.t0 = min((o["start_ns"] for o in ops if o.get("start_ns") is not None), default=0)
        self.threads = [Thread(t, c, by_tid[t]) for t, c in zip(tids, cpus)]
        self.cpu_busy: dict[int, Thread | None] = {c: None for c in set(cpus)}
        self.runq: dict[int, deque] = {c: deque() for c in set(cpus)}
        self.results: list[dict] = []
        self.counters = {"writer_wakeups": 0, "writer_drains": 0, "cas_retries": 0}
        self.write_holds: list = []  # mmap_lock write hold windows (checked by tests)

    def _alloc(self, vid: int) -> Vma:
        lay = self.model.layout
        slot = self.freelist.pop() if self.freelist else len(self.slots)
        v = Vma(vid, lay.vma.address(slot, VMA_SLAB_BASE), slot)
        if lay.vma_lock_in == "vma_lock":
            a = lay.vma_lock.address(slot, VMA_LOCK_SLAB_BASE)
            v.lock = Rwsem("vma_lock", f"vma:{vid}", (a + lay.vma_lock.fields["lock.count"]) // 64,
                           (a + lay.vma_lock.fields["lock.owner"]) // 64)
            self.line_names.setdefault(v.lock.count_line, set()).add("vma_lock.lock.count")
            self.line_names.setdefault(v.lock.owner_line, set()).add("vma_lock.lock.owner")
        elif lay.vma_lock_in == "vma":
            v.lock = Rwsem("vma_lock", f"vma:{vid}", (v.addr + lay.vma.fields["lock.count"]) // 64,
                           (v.addr + lay.vma.fields["lock.owner"]) // 64)
        for f, off in lay.vma.fields.items():
            self.line_names.setdefault((v.addr + off) // 64, set()).add(f"vm_area_struct.{f}")
        if slot == len(self.slots):
            self.slots.append(v)
        else:
            self.slots[slot] = v
        self.vmas[vid] = v
        return v

    def _cur(self, t: "Thread") -> Vma | None:
        """The VMA object the thread points at: whatever occupies the slot it found."""
        slot = t.reg.get("slot")
        if slot is not None:
            return self.slots[slot]
        return self.vmas.get(t.rec["vma_id"])

    # -- addresses --------------------------------------------------------------------
    def _mm_line(self, f: str) -> int:
        return (MM_BASE + self.mm_fields[f]) // 64

    def _line(self, t: Thread, obj: str, f: str) -> int:
        if obj == "mm":
            return self._mm_line(f)
        v = self._cur(t)
        if v is None:  # a VMA this replay never had: the tree walk's line stands in
            return self._mm_line("mm_mt")
        if obj == "vma":
            if f == "vm_lock" and "vm_lock" not in self.model.layout.vma.fields:
                f = "vm_start"
            return (v.addr + self.model.layout.vma.fields[f]) // 64
        raise ValueError(obj)

    # -- scheduling -------------------------------------------------------------------
    def _at(self, when: float, t: Thread) -> None:
        self.seq += 1
        t.token += 1
        heapq.heappush(self.heap, (when, self.seq, t.tid, t, t.token))

    def _block(self, t: Thread, lock: Rwsem | None) -> None:
        t.blocked_at = self.now
        if lock is not None:
            lock.stats["contentions"] += 1
        self._release_cpu(t)
        # spinners on a lock this task owns stop once it is off the CPU (owner->on_cpu)
        for lk in self._locks_owned_by(t):
            for sp in lk.spinners:
                self._at(self.now, sp)

    def _release_cpu(self, t: Thread) -> None:
        if self.cpu_busy[t.cpu] is not t:
            return
        self.cpu_busy[t.cpu] = None
        if self.runq[t.cpu]:
            nxt = self.runq[t.cpu].popleft()
            self.cpu_busy[t.cpu] = nxt
            self._at(self.now, nxt)

    def _wake(self, t: Thread, lock: Rwsem | None = None) -> None:
        if t.blocked_at is None:  # granted before it went to sleep: it will see it
            return
        waited = self.now - t.blocked_at
        t.rec["lock_wait_ns"] += waited
        if lock is not None:
            s = lock.stats
            s["wait_total_ns"] += waited
            s["wait_max_ns"] = max(s["wait_max_ns"], waited)
            s["wait_min_ns"] = waited if s["wait_min_ns"] is None else min(s["wait_min_ns"], waited)
        t.blocked_at = None
        when = self.now + WAKEUP_NS
        if self.cpu_busy[t.cpu] is None:
            self.cpu_busy[t.cpu] = t
            self._at(when, t)
        else:
            self.runq[t.cpu].append(t)
            cur = self.cpu_busy[t.cpu]
            st = cur.reg.get("dw")
            if isinstance(st, tuple) and st[0] == "spin":  # need_resched(): the spinner yields
                self._at(self.now, cur)

    # -- memory accesses --------------------------------------------------------------
    def _cost(self, t: Thread, start: float, cost: float, since: float | None = None) -> float:
        """Account one access that the thread began at ``since`` (default: now), with
        any wait for the line included; return the time the thread continues."""
        end = start + cost
        t.rec["cache_ns"] += end - (self.now if since is None else since)
        if cost > self.coh.l1 and cost != self.coh.atomic:
            t.rec["line_transfers"] += 1
        return end

    def _read(self, t: Thread, line: int) -> float:
        s, c = self.coh.read(line, t.cpu, self.now)
        return self._cost(t, s, c)

    def _rmw(self, t: Thread, line: int, changes: bool = True) -> float:
        s, c = self.coh.write(line, t.cpu, self.now, atomic=True, changes=changes)
        return self._cost(t, s, c)

    def _store(self, t: Thread, line: int) -> float:
        s, c = self.coh.write(line, t.cpu, self.now, atomic=False)
        return self._cost(t, s, c)

    # -- the loop -----------------------------------------------------------------------
    def run(self, progress=None) -> list[dict]:
        for t in self.threads:
            if self.cpu_busy[t.cpu] is None:
                self.cpu_busy[t.cpu] = t
                self._at(0.0, t)
            else:
                self.runq[t.cpu].append(t)
        n = 0
        while self.heap:
            self.now, _, _, t, token = heapq.heappop(self.heap)
            if token != t.token:  # superseded (a spinner's timeout after it was let in)
                continue
            self._step(t)
            n += 1
            if progress and not n & 0xFFFF:
                progress(len(self.results))
        stuck = [t.tid for t in self.threads if not t.done]
        if stuck:
            raise RuntimeError(f"simulation deadlocked: threads {stuck} never finished")
        return self.results

    def _next_op(self, t: Thread) -> bool:
        t.i += 1
        if t.i >= len(t.ops):
            t.done = True
            self._release_cpu(t)
            return False
        o = t.ops[t.i]
        kind = o["kind"]
        if kind == "fault":
            prog = self.model.programs["kernel_fault" if o["kernel"] else "fault"]
        elif o["lock_mode"] == "write" or kind == "exit":
            prog = self.model.programs["writer"]
        else:
            prog = None  # brk(0), MADV_DONTNEED under mmap_read_lock: not modelled as writers
        t.prog, t.pc = prog, 0
        t.reg = {}
        t.rec = {"op_id": o["op_id"], "tid": t.tid, "kind": kind, "vma_id": o["vma_id"], "sim_cpu": t.cpu,
                 "start_ns": None, "end_ns": None, "lock_wait_ns": 0.0, "cache_ns": 0.0, "line_transfers": 0,
                 "outcome": "success", "fallback": False, "attempts": 0, "_o": o}
        # The trace's gap since the previous op ended; where that op's end is unknown
        # (a fault served under the VMA lock traces no end), the gap also holds the real
        # fault's duration, which the simulated fault has just replaced: subtract it.
        if self.open_loop and o.get("start_ns") is not None:
            think = float(o["start_ns"] - self.t0) - self.now
        else:
            think = float(o["think_ns"] or 0) - t.reg_prev_unknown
        t.reg["think"] = max(0.0, think)
        return True

    def _step(self, t: Thread) -> None:
        """Run t from now until it spends time, blocks, or runs out of ops."""
        if t.reg.pop("thinking", False):  # back from its gap: needs its CPU again
            if self.cpu_busy[t.cpu] is not None and self.cpu_busy[t.cpu] is not t:
                self.runq[t.cpu].append(t)
                return
            self.cpu_busy[t.cpu] = t
        while True:
            if t.rec is None or t.reg.get("finished"):
                if t.rec is not None:
                    self._finish(t)
                    if self.runq[t.cpu]:  # yield the CPU at op boundaries
                        self.runq[t.cpu].append(t)
                        self._release_cpu(t)
                        t.rec = None
                        return
                if not self._next_op(t):
                    return
                if t.reg["think"] > 0:
                    # The gap before the op: user time or sleep, the trace cannot say
                    # which.  The thread leaves its CPU to others meanwhile (a thread
                    # sleeping in pthread_join must not hold a CPU for 60 ms).
                    t.reg["thinking"] = True
                    self._release_cpu(t)
                    self._at(self.now + t.reg.pop("think"), t)
                    return
            if t.rec["start_ns"] is None:
                if not self._gate(t):
                    return
                t.rec["start_ns"] = self.now
                t.rec["lock_wait_ns"] = 0.0  # a causal wait before the op is not a lock wait
                self._started(t)
            if t.prog is None:
                t.reg["finished"] = True
                continue
            r = self._exec(t)
            if r is None:  # blocked
                return
            if r > self.now:
                self._at(r, t)
                return

    def _min_unstarted(self, vid: int) -> float:
        h = self.unstarted.get(vid)
        while h and h[0] in self.started_ops:
            heapq.heappop(h)
        return h[0] if h else float("inf")

    def _gate(self, t: Thread) -> bool:
        o = t.rec["_o"]
        if o["kind"] == "fault":
            vid = o["vma_id"]
            if vid is not None and vid in self.creator_of and vid not in self.vmas:
                self.wait_create.setdefault(vid, []).append(t)
                self._block(t, None)
                return False
            return True
        seq = o["op_id"]
        vids = set(o.get("vma_ids") or []) | set(o.get("vmas_freed") or [])
        if any(self._min_unstarted(v) < seq for v in vids):
            self.wait_start.append((t, seq, vids))
            self._block(t, None)
            return False
        return True

    def _started(self, t: Thread) -> None:
        o = t.rec["_o"]
        if o["kind"] != "fault":
            return
        self.started_ops.add(o["op_id"])
        if self.wait_start and o["vma_id"] is not None:
            still = []
            for w, seq, vids in self.wait_start:
                if o["vma_id"] in vids and all(self._min_unstarted(v) > seq for v in vids):
                    self._wake(w)
                else:
                    still.append((w, seq, vids))
            self.wait_start = still

    def _finish(self, t: Thread) -> None:
        rec = t.rec
        rec["end_ns"] = self.now
        o = rec.pop("_o")
        t.reg_prev_unknown = (rec["end_ns"] - rec["start_ns"]) if o.get("end_ns") is None else 0.0
        rec["trace_op_kind"] = o["kind"]
        self.results.append(rec)

    # -- the interpreter ----------------------------------------------------------------
    # Lock routines take several timed steps (a load, then a cmpxchg, then the owner
    # store...).  Each returns (end, again): the time the thread continues (None: it
    # blocked) and whether the same instruction must run again for its next step.

    def _exec(self, t: Thread):
        """Execute one step; return the time t continues at, or None when blocked."""
        if t.pending:
            end, again = t.pending[0](t)
            if not again:
                t.pending.popleft()
            return end
        ins = t.prog[t.pc]
        op = ins[0]
        t.pc += 1
        if op == Op.READ:
            return self._read(t, self._line(t, ins[1], ins[2]))
        if op == Op.PREFETCHW:
            return self._rmw(t, self._line(t, ins[1], ins[2]), changes=False)
        if op == Op.STORE:
            return self._store(t, self._line(t, ins[1], ins[2]))
        if op == Op.WORK:
            if ins[1] == "fault":
                return self.now + self.fault_service_ns
            hold = t.rec["_o"].get("hold_ns")
            return self.now + float(hold if hold else DEFAULT_WRITER_NS)
        if op == Op.CHECK_MM:
            # each mm replays alone, so a reused object always belongs to this mm here;
            # reuse by another mm (vm_mm != mm -> abort) needs mms replayed together
            return self._read(t, self._line(t, "vma", "vm_mm"))
        if op == Op.WALK:
            end = self._read(t, self._mm_line("mm_mt"))
            v = self._resolve(t.rec["vma_id"])
            if v is None:  # unmapped by now in this replay: nothing to lock
                t.pc = ins[1]
            else:
                t.reg["slot"] = v.slot
                t.reg["found"] = v
            return end
        if op == Op.CHECK_RANGE:
            end = self._read(t, self._line(t, "vma", "vm_start"))
            if self._cur(t) is not t.reg.get("found"):
                t.pc = ins[1]  # the object now maps another range: it was freed and reused
            return end
        if op == Op.CHECK_DETACHED:
            end = self._read(t, self._line(t, "vma", "vm_start"))
            if not self._cur(t).live:
                t.pc = ins[1]
            return end
        if op == Op.VMA_START_WRITE_ALL:
            for vid in t.rec["_o"]["vma_ids"] or []:
                v = self.vmas.get(vid)
                if v is not None and v.live:
                    self._queue_start_write(t, v)
            return self.now
        if op == Op.VMA_COMMIT:
            return self._commit(t)
        if op in (Op.MM_SEQ_WRITE_BEGIN, Op.MM_SEQ_WRITE_END):
            self.mm_lock_seq += 1
            return self._store(t, self._mm_line("mm_lock_seq"))
        if op == Op.OUTCOME:
            t.rec["outcome"] = ins[1]
            return self.now
        if op == Op.FALLBACK:
            t.rec["fallback"] = True
            return self.now
        if op == Op.ATTEMPT:
            t.rec["attempts"] += 1
            return self.now
        if op == Op.GOTO:
            t.pc = ins[1]
            return self.now
        if op == Op.END:
            t.reg["finished"] = True
            return self.now
        if op == Op.CHECK_SEQ:
            end, again = self._check_seq(t, ins[1])
        elif op == Op.RWSEM_TRYLOCK_READ:
            end, again = self._trylock_read(t, self._lock(t, ins[1]), ins[2])
        elif op == Op.RWSEM_DOWN_READ:
            end, again = self._down_read(t, self._lock(t, ins[1]))
        elif op == Op.RWSEM_UP_READ:
            end, again = self._up_read(t, self._lock(t, ins[1])), False
        elif op == Op.RWSEM_DOWN_WRITE:
            end, again = self._down_write(t, self._lock(t, ins[1]))
        elif op == Op.RWSEM_UP_WRITE:
            end, again = self._up_write(t, self._lock(t, ins[1])), False
        elif op == Op.REF_GET:
            end, again = self._ref_get(t, ins[1], ins[2])
        elif op == Op.REF_PUT:
            end, again = self._ref_put(t), False
        else:
            raise ValueError(f"unknown micro-op {op}")
        if again:
            t.pc -= 1
        return end

    def _resolve(self, vid: int) -> Vma | None:
        """The live VMA now covering what ``vid`` covered when the trace saw the fault.

        The closed loop drifts from the recorded timeline: a writer can land earlier than
        it did, so a fault the trace saw in VMA X may, here, come after X was merged into
        its neighbour; the walk then finds the neighbour (or nothing, if X was unmapped)."""
        seen = 0
        v = self.vmas.get(vid)
        while v is not None and not v.live and seen < 64:
            nxt = self.successor.get(v.id, -1)
            v = self.vmas.get(nxt) if nxt >= 0 else None
            seen += 1
        return v if v is not None and v.live else None

    def _lock(self, t: Thread, which: str) -> Rwsem:
        return self.mmap_lock if which == "mmap_lock" else self._cur(t).lock

    def _commit(self, t: Thread) -> float:
        """The writer's changes land: removed VMAs are detached (vma_mark_detached():
        vm_refcnt 1 -> 0; before v6.15 vma->detached = true) and freed; new ones are
        attached (vm_refcnt = 1) already write-locked (vm_lock_seq = mm_lock_seq)."""
        o = t.rec["_o"]
        end = self.now
        for vid, succ in zip(o.get("vmas_freed") or [], o.get("vmas_successor") or [-1] * len(o.get("vmas_freed") or [])):
            if succ >= 0:
                self.successor[vid] = succ
            v = self.vmas.get(vid)
            if v is None or not v.live:
                continue
            v.live = False
            if self.model.lock.vma_lock == "refcnt":
                v.refcnt -= 1
                s, c = self.coh.write(self._refline(v), t.cpu, end)
            else:  # vma->detached = true
                v.refcnt = 0
                s, c = self.coh.write((v.addr + self.model.layout.vma.fields["vm_start"]) // 64, t.cpu, end, atomic=False)
            end = self._cost(t, s, c, since=end)
            if self.model.lock.typesafe_by_rcu:
                self.freelist.append(v.slot)
        for vid in o.get("vmas_created") or []:
            if vid in self.vmas and self.vmas[vid].live:
                continue
            v = self._alloc(vid)
            v.vm_lock_seq = self.mm_lock_seq
            for w in self.wait_create.pop(vid, []):
                self._wake(w)
            s, c = self.coh.write((v.addr + self.model.layout.vma.fields["vm_start"]) // 64, t.cpu, end, atomic=False)
            end = self._cost(t, s, c, since=end)
        return end

    def _check_seq(self, t: Thread, label: int):
        v = self._cur(t)
        if "seq" not in t.reg:  # READ_ONCE(vma->vm_lock_seq)
            t.reg["seq"] = 1
            return self._read(t, self._line(t, "vma", "vm_lock_seq")), True
        del t.reg["seq"]  # READ_ONCE(mm->mm_lock_seq)
        end = self._read(t, self._mm_line("mm_lock_seq"))
        if v.vm_lock_seq == self.mm_lock_seq:
            t.pc = label
        return end, False

    # -- rw_semaphore ---------------------------------------------------------------------
    def _acquired(self, lock: Rwsem, t: Thread) -> None:
        lock.stats["acquisitions"] += 1
        lock.held_since[t.tid] = self.now

    def _released(self, lock: Rwsem, t: Thread) -> None:
        since = lock.held_since.pop(t.tid, None)
        if since is not None:
            h = self.now - since
            st = lock.stats
            st["hold_total_ns"] += h
            st["hold_max_ns"] = max(st["hold_max_ns"], h)
            st["hold_min_ns"] = h if st["hold_min_ns"] is None else min(st["hold_min_ns"], h)

    def _trylock_read(self, t: Thread, lock: Rwsem, label: int):
        """down_read_trylock(): tmp = atomic_long_read(&count); while (!(tmp &
        READ_FAILED_MASK)) if (atomic_long_try_cmpxchg_acquire(&count, &tmp, tmp +
        READER_BIAS)) { rwsem_set_reader_owned(); return 1; } return 0;"""
        st = t.reg.get("try")
        ln = self.coh.line(lock.count_line)
        if st is None:  # the load
            t.reg["try"] = ("cas", ln.version)
            return self._read(t, lock.count_line), True
        if st[0] == "owner":  # rwsem_set_reader_owned()
            del t.reg["try"]
            lock.owner = READER_OWNED
            return self._store(t, lock.owner_line), False
        if lock.count & READ_FAILED_MASK:
            del t.reg["try"]
            t.pc = label
            lock.stats["trylock_failures"] += 1  # lockstat counts contention only where it blocks
            return self.now, False
        extra = 0.0
        if ln.version != st[1]:
            # The cmpxchg fails (another CPU wrote since our load) but returns the new
            # value with the line held exclusively; the loop's retry runs before anyone
            # can take the line back, so it succeeds if the new value still passes.
            self.counters["cas_retries"] += 1
            extra = self.coh.atomic
        lock.count += READER_BIAS
        self._acquired(lock, t)
        t.reg["try"] = ("owner",)
        return self._rmw(t, lock.count_line) + extra, True

    def _down_read(self, t: Thread, lock: Rwsem):
        st = t.reg.get("dr")
        if st == "granted":  # woken by rwsem_mark_wake(): the lock is ours
            del t.reg["dr"]
            return self.now, False
        if st == "owner":
            del t.reg["dr"]
            lock.owner = READER_OWNED
            return self._store(t, lock.owner_line), False
        if st == "wait":  # woken but not granted: cannot happen for readers
            raise AssertionError("reader woken without the lock")
        # fast path: atomic_long_add_return_acquire(READER_BIAS, &count)
        lock.count += READER_BIAS
        end = self._rmw(t, lock.count_line)
        cnt = lock.count
        if not cnt & READ_FAILED_MASK:
            self._acquired(lock, t)
            t.reg["dr"] = "owner"
            return end, True
        # rwsem_down_read_slowpath(sem, count)
        rcnt = cnt >> 8
        if not (lock.owner == READER_OWNED and rcnt > 1 and not cnt & WRITER_LOCKED):
            if not cnt & (WRITER_LOCKED | FLAG_HANDOFF):  # reader optimistic lock stealing
                self._acquired(lock, t)
                lock.owner = READER_OWNED
                if rcnt == 1 and cnt & FLAG_WAITERS and lock.waiters:
                    self._mark_wake(lock, read_owned=True)
                return end, False
        lock.stats["contentions"] += 1
        adjustment = -READER_BIAS
        if not lock.waiters:
            if not lock.count & WRITER_LOCKED:  # empty queue, no writer: keep the bias
                self._acquired(lock, t)
                t.reg["dr"] = "owner"
                return end, True
            adjustment += FLAG_WAITERS
        lock.waiters.append(Waiter(t, False, self.now))
        lock.count += adjustment
        end = self._rmw(t, lock.count_line)
        t.reg["dr"] = "wait"
        # rwsem_cond_wake_waiter(): if nothing holds it any more, wake the head
        if not lock.count & LOCK_MASK:
            self._mark_wake(lock)
        if t.reg.get("dr") == "granted":
            del t.reg["dr"]
            return end, False
        self._block(t, None)
        return None, True

    def _up_read(self, t: Thread, lock: Rwsem) -> float:
        """up_read(): xadd -READER_BIAS; rwsem_wake() when only FLAG_WAITERS is left."""
        self._released(lock, t)
        lock.count -= READER_BIAS
        end = self._rmw(t, lock.count_line)
        if (lock.count & (LOCK_MASK | FLAG_WAITERS)) == FLAG_WAITERS:
            self._mark_wake(lock)
        self._let_spinner_in(lock)
        return end

    def _try_write_lock(self, lock: Rwsem, w: Waiter) -> bool:
        """rwsem_try_write_lock(), called with wait_lock held by a queued writer."""
        first = bool(lock.waiters) and lock.waiters[0] is w
        if lock.count & LOCK_MASK:
            if first and not lock.count & FLAG_HANDOFF and self.now - w.since >= RWSEM_WAIT_TIMEOUT_NS:
                lock.count |= FLAG_HANDOFF  # waited too long at the head: no more stealing
                w.handoff_set = True
            return False
        if lock.count & FLAG_HANDOFF and not first:
            return False
        lock.waiters.remove(w)
        lock.count |= WRITER_LOCKED
        lock.count &= ~FLAG_HANDOFF
        if not lock.waiters:
            lock.count &= ~FLAG_WAITERS
        return True

    def _down_write(self, t: Thread, lock: Rwsem):
        st = t.reg.get("dw")
        if st == "owner":  # rwsem_set_owner()
            del t.reg["dw"]
            if lock is self.mmap_lock:
                self.write_holds.append([self.now, None])
            lock.owner = t.tid
            return self._store(t, lock.owner_line), False
        if st is None:  # rwsem_write_trylock(): cmpxchg 0 -> WRITER_LOCKED
            end = self._rmw(t, lock.count_line, changes=lock.count == 0)
            if lock.count == 0:
                lock.count = WRITER_LOCKED
                self._acquired(lock, t)
                t.reg["dw"] = "owner"
                return end, True
            lock.stats["contentions"] += 1
            deadline = self._spin_deadline(lock, t)
            if deadline is not None:  # rwsem_optimistic_spin(): stay on the CPU
                t.reg["dw"] = ("spin", deadline, self.now)
                lock.spinners.append(t)
                if deadline != float("inf"):
                    self._at(max(deadline, end), t)  # give up then, unless let in before
                return None, True
            st = self._queue_writer(t, lock)
        elif st[0] == "spin":
            _, deadline, since = st
            # rwsem_try_write_lock_unqueued(): only with no holder and no handoff
            if not lock.count & (LOCK_MASK | FLAG_HANDOFF):
                lock.spinners.remove(t)
                lock.count |= WRITER_LOCKED
                t.rec["lock_wait_ns"] += self.now - since
                self._acquired(lock, t)
                t.reg["dw"] = "owner"
                return self._rmw(t, lock.count_line), True
            if self.now < deadline and self._owner_running(lock) and not self.runq[t.cpu]:
                return None, True  # keep spinning: a release or the deadline brings it back
            lock.spinners.remove(t)  # out of budget, or the owner went to sleep: queue
            t.rec["lock_wait_ns"] += self.now - since
            st = self._queue_writer(t, lock)
        w = st[1]
        if self._try_write_lock(lock, w):
            self._acquired(lock, t)
            t.reg["dw"] = "owner"
            return self._rmw(t, lock.count_line), True
        self._block(t, None)
        return None, True

    def _queue_writer(self, t: Thread, lock: Rwsem):
        """rwsem_down_write_slowpath(): join the wait queue (setting FLAG_WAITERS first)."""
        w = Waiter(t, True, self.now)
        if not lock.waiters:
            lock.count |= FLAG_WAITERS
        lock.waiters.append(w)
        t.reg["dw"] = ("wait", w)
        return t.reg["dw"]

    def _locks_owned_by(self, t: Thread):
        locks = [self.mmap_lock] + [v.lock for v in self.vmas.values() if v.lock is not None]
        return [lk for lk in locks if lk.owner == t.tid and lk.spinners]

    def _owner_running(self, lock: Rwsem) -> bool:
        if lock.owner == READER_OWNED:
            return True
        owner = next((x for x in self.threads if x.tid == lock.owner), None)
        return owner is None or owner.blocked_at is None

    def _spin_deadline(self, lock: Rwsem, t: Thread) -> float | None:
        """rwsem_can_spin_on_owner() / rwsem_optimistic_spin(): a writer spins while a
        writer owner runs (no bound), or on a reader-owned lock for
        rwsem_rspin_threshold(): 10 us + 0.5 us per reader, at most 25 us.  Not when
        another task waits for this CPU (need_resched())."""
        if self.runq[t.cpu]:
            return None
        if lock.owner == READER_OWNED:
            readers = lock.count >> 8
            return self.now + min(RSPIN_BASE_NS + RSPIN_PER_READER_NS * readers, RSPIN_MAX_NS)
        if lock.owner and self._owner_running(lock):
            return float("inf")
        return None

    def _let_spinner_in(self, lock: Rwsem) -> None:
        """The lock word just went free: the OSQ head, spinning on it, sees it at once."""
        if lock.spinners and not lock.count & (LOCK_MASK | FLAG_HANDOFF):
            s = lock.spinners[0]
            self._at(self.now + self.m.latency_ns["socket_read_shared"], s)

    def _up_write(self, t: Thread, lock: Rwsem) -> float:
        if lock is self.mmap_lock:
            self.write_holds[-1][1] = self.now
        self._released(lock, t)
        lock.owner = 0  # rwsem_clear_owner()
        lock.count -= WRITER_LOCKED
        end = self._rmw(t, lock.count_line)
        if lock.count & FLAG_WAITERS:
            self._mark_wake(lock)
        self._let_spinner_in(lock)
        return end

    def _mark_wake(self, lock: Rwsem, read_owned: bool = False) -> None:
        """rwsem_mark_wake(RWSEM_WAKE_ANY or RWSEM_WAKE_READ_OWNED)."""
        if not lock.waiters:
            return
        first = lock.waiters[0]
        if first.write:
            if not read_owned and first.thread.blocked_at is not None:
                self._wake(first.thread, lock)  # it retries rwsem_try_write_lock()
            return
        if not read_owned and lock.count & WRITER_LOCKED:
            return  # a writer took the lock first
        woken = []
        for w in list(lock.waiters):
            if w.write:
                continue  # readers are granted past queued writers
            woken.append(w)
            if len(woken) >= MAX_READERS_WAKEUP:
                break
        for w in woken:
            lock.waiters.remove(w)
            lock.count += READER_BIAS
            self._acquired(lock, w.thread)
            w.thread.reg["dr"] = "granted"
            self._wake(w.thread, lock)
        if first.handoff_set:
            lock.count &= ~FLAG_HANDOFF
        if not lock.waiters:
            lock.count &= ~FLAG_WAITERS
        lock.owner = READER_OWNED

    # -- vm_refcnt ------------------------------------------------------------------------
    def _refline(self, v: Vma) -> int:
        return (v.addr + self.model.layout.vma.fields["vm_refcnt"]) // 64

    def _ref_get(self, t: Thread, fail: int, detached: int):
        """__refcount_inc_not_zero_limited_acquire(&vma->vm_refcnt, &oldcnt, limit):
        load; loop { if (!old) break; if (i > limit - old) return false; }
        while (!atomic_try_cmpxchg_acquire(&r->refs, &old, old + i))."""
        v = self._cur(t)
        line = self._refline(v)
        ln = self.coh.line(line)
        st = t.reg.get("ref")
        if st is None:  # old = refcount_read(r)
            t.reg["ref"] = ln.version
            return self._read(t, line), True
        old = v.refcnt
        if old == 0:
            del t.reg["ref"]
            t.pc = detached
            return self.now, False
        if old + 1 > self.model.lock.ref_limit:  # the writer bit: fail without writing
            del t.reg["ref"]
            t.pc = fail
            return self.now, False
        extra = 0.0
        if ln.version != st:  # lost a race: retried at once with the line held (see _trylock_read)
            self.counters["cas_retries"] += 1
            extra = self.coh.atomic
        del t.reg["ref"]
        v.refcnt += 1
        t.reg["ref_obj"] = v  # vma_refcount_put() drops the reference on this object
        return self._rmw(t, line) + extra, False

    def _ref_put(self, t: Thread) -> float:
        """vma_refcount_put(): __refcount_dec_and_test(); then rcuwait_wake_up() when
        is_vma_writer_only(oldcnt - 1) (v8, mainline) - or whenever a writer waits (v7)."""
        v = t.reg.pop("ref_obj")
        v.refcnt -= 1
        end = self._rmw(t, self._refline(v))
        n = v.refcnt
        if self.model.lock.wake == "last":
            wake = bool(n & VMA_LOCK_OFFSET) and n <= VMA_LOCK_OFFSET + 1 + self.model.lock.writer_ref
        else:
            wake = bool(n & VMA_LOCK_OFFSET)
        if wake and self.writer_waiting is not None:
            self.counters["writer_wakeups"] += 1
            w, self.writer_waiting = self.writer_waiting, None
            self._read(t, self._mm_line("vma_writer_wait"))
            self._wake(w)
        return end

    # -- vma_start_write --------------------------------------------------------------------
    def _queue_start_write(self, t: Thread, v: Vma) -> None:
        if self.model.lock.vma_lock == "rwsem":
            # vma_start_write() before v6.15: down_write(&vma->vm_lock->lock);
            # WRITE_ONCE(vma->vm_lock_seq, mm_lock_seq); up_write(&vma->vm_lock->lock)
            steps = [lambda th: self._vsw_check(th, v, 3), lambda th: self._down_write(th, v.lock),
                     lambda th: self._vsw_store(th, v), lambda th: (self._up_write(th, v.lock), False)]
        else:
            # __vma_start_write(): __vma_enter_locked() (add VMA_LOCK_OFFSET, wait for
            # readers), store vm_lock_seq, __vma_exit_locked() (subtract it)
            steps = [lambda th: self._vsw_check(th, v, 4), lambda th: self._vsw_ref_add(th, v),
                     lambda th: self._vsw_ref_wait(th, v), lambda th: self._vsw_store(th, v),
                     lambda th: self._vsw_ref_sub(th, v)]
        t.pending.extend(steps)

    def _vsw_check(self, t: Thread, v: Vma, rest: int):
        """__is_vma_write_locked(): already locked in this mmap_write_lock cycle?"""
        end = self._read(t, (v.addr + self.model.layout.vma.fields["vm_lock_seq"]) // 64)
        if v.vm_lock_seq == self.mm_lock_seq:
            for _ in range(rest):
                del t.pending[1]
        return end, False

    def _vsw_store(self, t: Thread, v: Vma):
        v.vm_lock_seq = self.mm_lock_seq  # WRITE_ONCE(vma->vm_lock_seq, mm_lock_seq)
        return self._store(t, (v.addr + self.model.layout.vma.fields["vm_lock_seq"]) // 64), False

    def _writer_ref(self) -> int:
        return VMA_LOCK_OFFSET + self.model.lock.writer_ref

    def _vsw_ref_add(self, t: Thread, v: Vma):
        if v.refcnt == 0:  # detached: refcount_add_not_zero() fails, nothing to wait for
            del t.pending[1]
            return self.now, False
        v.refcnt += self._writer_ref()
        self.counters["writer_drains"] += 1
        return self._rmw(t, self._refline(v)), False

    def _vsw_ref_wait(self, t: Thread, v: Vma):
        """rcuwait_wait_event(&mm->vma_writer_wait, refcount_read(&vma->vm_refcnt) == tgt)."""
        end = self._read(t, self._refline(v))
        if v.refcnt == self._writer_ref() + 1:
            return end, False
        self.writer_waiting = t
        self._block(t, None)
        return None, True

    def _vsw_ref_sub(self, t: Thread, v: Vma):
        v.refcnt -= self._writer_ref()
        return self._rmw(t, self._refline(v)), False

    # -- reports ----------------------------------------------------------------------------
    def lock_stats(self) -> list[dict]:
        locks = [self.mmap_lock] + [v.lock for v in self.vmas.values() if v.lock is not None]
        out = []
        for lk in locks:
            s = lk.stats
            if s["acquisitions"] or s["contentions"] or s["trylock_failures"]:
                out.append({"lock_class": lk.name, "lock": lk.key, **s,
                            "con_bounces": self.coh.line(lk.count_line).transfers})
        return out

    def line_stats(self) -> list[dict]:
        return [{"line": n * 64, "fields": ", ".join(sorted(self.line_names.get(n, {"?"}))),
                 "transfers": ln.transfers, "invalidations": ln.invalidations}
                for n, ln in sorted(self.coh.lines.items()) if ln.transfers or ln.invalidations]
