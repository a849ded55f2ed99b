"""The cache-coherence cost model: what one access to one 64-byte line costs, and
what it does to the line's state.

A line is Modified in one CPU (``owner``), or Shared by a set of CPUs, or in no private
cache.  Reading a line another CPU has Modified costs a hand-off (SMT sibling, same
socket, other socket: the machine profile's one-way figures) and leaves both sharing;
a write (store, xadd, cmpxchg) needs the line exclusively and invalidates every other
copy.  An atomic read-modify-write occupies the line for its service time (``busy``):
N CPUs hammering one line queue behind each other, so one hot line serves about one
operation per hand-off time whatever N is - the contention this tool is about.

With the adjacent-line prefetcher on (MSR 0x1A4 bit 1 clear on Intel), the unit of
false sharing is the 128-byte pair: a write to line L also takes L's buddy (L ^ 1)
away from every other CPU, as the prefetcher pulled the pair into the writer's L2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..machines import Cpu, Machine


@dataclass
class Line:
    owner: int = -1  # CPU holding it Modified/Exclusive, or -1
    sharers: set = field(default_factory=set)  # CPUs with a valid copy (owner included)
    busy_until: float = 0.0  # an RMW in flight holds the line until then
    version: int = 0  # bumped on every value change (CAS loops compare against it)
    transfers: int = 0  # times the line moved to a CPU that did not hold it
    invalidations: int = 0  # copies killed by writes (buddy invalidations included)


class Coherence:
    def __init__(self, machine: Machine):
        self.m = machine
        self.cpus: list[Cpu] = machine.cpus()
        self.lines: dict[int, Line] = {}
        L = machine.latency_ns
        self.l1 = L["l1_hit"]
        self.llc = L["llc_hit"]
        self.atomic = L["owned_atomic"]
        self.read_shared = L["socket_read_shared"]
        self.read_excl = L["socket_read_exclusive"]
        self.prefetch_pairs = machine.adjacent_line_prefetch

    def line(self, n: int) -> Line:
        ln = self.lines.get(n)
        if ln is None:
            ln = self.lines[n] = Line()
        return ln

    def _fetch_cost(self, ln: Line, cpu: int) -> float:
        """Bringing a line this CPU does not hold into its cache."""
        c = self.cpus[cpu]
        if ln.owner >= 0:
            return self.m.handoff_ns(self.cpus[ln.owner], c)
        if ln.sharers:
            near = [s for s in ln.sharers if self.cpus[s].socket == c.socket]
            return self.read_shared if near else self.m.latency_ns["cross_socket_handoff"]
        return self.llc

    def read(self, n: int, cpu: int, now: float) -> tuple[float, float]:
        """A load.  Returns (start, cost): it waits for an RMW in flight on the line."""
        ln = self.line(n)
        start = max(now, ln.busy_until)
        if cpu in ln.sharers:
            return start, self.l1
        cost = self._fetch_cost(ln, cpu)
        ln.transfers += 1
        if ln.owner >= 0:  # M -> S in the old owner
            ln.owner = -1
        ln.sharers.add(cpu)
        return start, cost

    def write(self, n: int, cpu: int, now: float, atomic: bool = True, changes: bool = True) -> tuple[float, float]:
        """A store or an atomic RMW (xadd, cmpxchg): exclusive ownership, other copies
        invalidated; an atomic holds the line for its duration.  Returns (start, cost)."""
        ln = self.line(n)
        start = max(now, ln.busy_until)
        base = self.atomic if atomic else self.l1
        if ln.owner == cpu and ln.sharers == {cpu}:
            cost = base
        else:
            if ln.owner >= 0 and ln.owner != cpu:
                cost = self.m.handoff_ns(self.cpus[ln.owner], self.cpus[cpu]) + base
            elif ln.sharers - {cpu}:
                c = self.cpus[cpu]
                far = any(self.cpus[s].socket != c.socket for s in ln.sharers - {cpu})
                inval = self.m.latency_ns["cross_socket_handoff"] if far else self.read_excl
                cost = (inval if cpu not in ln.sharers else inval / 2) + base
            else:
                cost = self.llc + base
            if cpu not in ln.sharers or ln.owner not in (-1, cpu):
                ln.transfers += 1
            ln.invalidations += len(ln.sharers - {cpu})
        ln.owner = cpu
        ln.sharers = {cpu}
        if atomic:
            ln.busy_until = start + cost
        if changes:
            ln.version += 1
        if self.prefetch_pairs:
            buddy = self.line(n ^ 1)
            others = buddy.sharers - {cpu}
            if others:
                buddy.invalidations += len(others)
                buddy.transfers += 1
                buddy.sharers = {cpu}
                buddy.owner = cpu if buddy.owner >= 0 else -1
        return start, cost
