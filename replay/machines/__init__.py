"""Machine profiles: topology and cache-coherence latencies, as data with sources.

A profile is a TOML file (those shipped here, or any path).  Every latency carries a
source in ``[sources]``; "est." marks an estimate.  ``rcu_grace_period_ns`` (how long
a call_rcu()'d object stays allocated; the memory footprint uses it, the replay does
not, so it is left out of the digest) and ``fault_service_ns`` need a source too.  A
parameter no source gives may instead be fitted: it is then named in ``[fitted]``
with what it was fitted to (``fault_service_ns = "development set: ..."``), and
not in ``[sources]`` - each number has one provenance, and ``parameters()`` is
what ``replay machines`` prints it from.  ``Machine.cpus()`` numbers CPUs the
way Linux does on these boxes (all first SMT threads across sockets, then the
siblings), and ``placement()`` assigns threads to CPUs like the scheduler spreads a
throughput load: one per physical core across sockets first, then SMT siblings.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

LATENCY_KEYS = ("l1_hit", "l2_hit", "llc_hit", "smt_handoff", "socket_handoff", "socket_read_shared",
                "socket_read_exclusive", "cross_socket_handoff", "owned_atomic", "dram_local", "dram_remote")


# est.: the delay from call_rcu() to its callback on a busy HZ=1000 box.  A normal grace
# period ends once every CPU has passed a quiescent state; on a loaded machine that
# takes until the first force-quiescent-state scan, jiffies_till_first_fqs =
# RCU_JIFFIES_TILL_FORCE_QS (1 + (HZ > 250) + (HZ > 500) = 3 jiffies) + nr_cpu_ids /
# RCU_JIFFIES_FQS_DIV (256) (kernel/rcu/tree.h, rcu_init_geometry() in
# kernel/rcu/tree.c): 3 ms.  A callback queued during a grace period waits for the rest
# of that one and all of the next (rcu_accelerate_cbs()), 1.5 periods on average:
# 4.5 ms.  No source gives a measured figure for these machines; hence an estimate.
DEFAULT_RCU_GP_NS = 4.5e6


# parameters besides the latencies that carry a provenance (a source, or what they were fitted to)
SOURCED_SCALARS = ("fault_service_ns", "rcu_grace_period_ns", "prefetchw")
# [fault_path]: handle_mm_fault()'s costs on this machine (replay/engine/faultpath.py); each
# needs a provenance under its dotted name ("fault_path.fixed_ns") in [sources] or [fitted]
# (dram_gbps: a socket's DRAM bandwidth in GB/s = bytes per ns, which its NUMA nodes split)
FAULT_PATH_KEYS = ("fixed_ns", "clear_page_ns", "zone_lock_hold_ns", "lru_folio_ns", "dram_gbps")


class MachineError(ValueError):
    pass


class PlacementError(MachineError):
    """A placement these CPUs cannot give the trace (a usage error: the CLI exits 2)."""


@dataclass(frozen=True)
class Cpu:
    id: int
    socket: int
    core: int  # physical core, global
    thread: int  # SMT thread within the core
    ccd: int = 0


@dataclass
class Machine:
    name: str
    description: str
    sockets: int
    cores_per_socket: int
    smt: int
    latency_ns: dict
    adjacent_line_prefetch: bool
    fault_service_ns: float
    sources: dict = field(default_factory=dict)
    ccds: int = 1
    path: str = ""
    rcu_grace_period_ns: float = DEFAULT_RCU_GP_NS
    fitted: dict = field(default_factory=dict)  # parameter -> what it was fitted to
    # handle_mm_fault()'s costs (FAULT_PATH_KEYS; zone_lock_hold_ns a list of [pages, ns]),
    # or None: a fault is one service time (fault_service_ns), nothing in it shared
    fault_path: dict | None = None
    numa_nodes: int = 0  # 0: one per socket
    # the CPU has PREFETCHW (CPUID PRFCHW, X86_FEATURE_3DNOWPREFETCH: Broadwell and later,
    # AMD); without it Linux's prefetchw() is the alternative's BASE_PREFETCH, "prefetcht0"
    # on x86-64 (arch/x86/include/asm/processor.h prefetchw(), v6.3-v6.14): a read prefetch
    prefetchw: bool = True

    def __post_init__(self):
        if not self.numa_nodes:
            self.numa_nodes = self.sockets

    def digest(self) -> str:
        """Content hash of the profile, so a run names exactly the numbers it used."""
        import hashlib
        import json

        d = {k: getattr(self, k) for k in ("sockets", "cores_per_socket", "smt", "latency_ns",
                                           "adjacent_line_prefetch", "fault_service_ns", "ccds")}
        if self.fault_path is not None:  # so profiles without one keep their digest
            d |= {"fault_path": self.fault_path, "numa_nodes": self.numa_nodes}
        if not self.prefetchw:  # likewise
            d["prefetchw"] = False
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def provenance(self, key: str) -> str:
        """Where a parameter's value comes from: its source, or "fitted to ..."."""
        if key in self.fitted:
            return f"fitted to {self.fitted[key]}"
        return str(self.sources.get(key, ""))

    def parameters(self) -> list[dict]:
        """Every modelled number with its provenance, as ``replay machines NAME`` shows them."""
        vals = dict(self.latency_ns, adjacent_line_prefetch=self.adjacent_line_prefetch,
                    fault_service_ns=self.fault_service_ns, rcu_grace_period_ns=self.rcu_grace_period_ns)
        if "prefetchw" in self.sources:  # stated where the profile says (the default: it has it)
            vals["prefetchw"] = self.prefetchw
        for k, v in (self.fault_path or {}).items():
            vals[f"fault_path.{k}"] = ", ".join(f"{int(b)}: {h:g}" for b, h in v) if k == "zone_lock_hold_ns" else v
        return [{"parameter": k, "value": v, "fitted": k in self.fitted, "source": self.provenance(k)}
                for k, v in vals.items()]

    @property
    def ncpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.smt

    def cpus(self) -> list[Cpu]:
        out = []
        ncores = self.sockets * self.cores_per_socket
        per_ccd = max(1, self.cores_per_socket // self.ccds)
        for t in range(self.smt):
            for c in range(ncores):
                sock = c // self.cores_per_socket
                out.append(Cpu(len(out), sock, c, t, (c % self.cores_per_socket) // per_ccd))
        return out

    def placement(self, nthreads: int, ncpus: int | None = None, policy: str = "spread",
                  recorded: list[int] | None = None) -> list[int]:
        """CPU for each of nthreads, on ncpus of the machine's CPUs (threads beyond share).

        ``spread`` - a throughput load as the scheduler spreads it: which ncpus CPUs the
        threads get, and in which order, follow kernel/sched/fair.c's load balancing,
        which moves tasks to a sibling group with spare capacity while the busiest
        has more than one task more (SD_PREFER_SIBLING, sched_balance_find_src_group()
        / calculate_imbalance()'s group_has_spare case, at the NUMA level as between
        cores), and select_idle_core(), which prefers a core whose SMT siblings are all
        idle.  So: idle physical cores on every socket, alternating sockets, before any
        SMT sibling; ``--cpus 12`` on a 2-socket machine is 6 cores on each.  Within
        a socket of several CCDs the same holds one level down: each CCD is an LLC
        (MC) sched domain, whose SD_PREFER_SIBLING (set by sd_init() in
        kernel/sched/topology.c for every level but NUMA) makes the package-level
        balancer spread tasks over the CCDs, so threads take the CCDs in turn, a
        first core on each before any second one.  (Not
        modelled: adjust_numa_imbalance(), which lets a few communicating tasks stay
        on one node while they are under imb_numa_nr.)
        ``packed`` - the first ncpus CPUs socket by socket, a core's SMT siblings
        together (taskset on a contiguous list of one socket's CPUs).
        ``as-recorded`` - where each thread starts: the CPU of its first op with a
        recorded CPU (``recorded``, by thread; ``as_recorded()`` maps it), or for a
        thread with none, the i-th of the ncpus CPUs in turn.  From there each op runs
        on the CPU the trace recorded it on (replay/engine/loop.py ``_step()``)."""
        n = ncpus or self.ncpus
        every = self.cpus()
        if policy == "as-recorded":
            if recorded is None:
                raise MachineError("as-recorded placement needs the trace's CPUs")
            ids = self.as_recorded(np.asarray([-1 if c is None else c for c in recorded], np.int64), n)
            return [int(c) if c >= 0 else every[i % n].id for i, c in enumerate(ids.tolist())]
        if policy == "spread":
            per_ccd = self.cores_per_socket // self.ccds
            order = sorted(every, key=lambda c: (c.thread, c.core % per_ccd, c.ccd, c.socket))
        elif policy == "packed":
            order = sorted(every, key=lambda c: (c.socket, c.core, c.thread))
        else:
            raise MachineError(f"unknown placement {policy!r}: spread, packed or as-recorded")
        chosen = order[:n]
        return [chosen[i % n].id for i in range(nthreads)]

    def as_recorded(self, recorded, ncpus: int | None = None):
        """The simulated CPU of each recorded CPU id (a numpy array; -1: none recorded):
        CPU k of the trace is CPU k of the machine (``cpus()`` numbers them as Linux does
        on these boxes), so the ids come back as they are, once checked.  A recorded CPU
        beyond the ncpus simulated is an error, not folded onto another: folding would
        put threads on one CPU that ran side by side."""
        n = ncpus or self.ncpus
        hi = int(recorded.max()) if len(recorded) else -1
        if hi >= n:
            more = (f"give --cpus {hi + 1} or more" if hi < self.ncpus
                    else f"{self.name} has {self.ncpus}: give a machine with more")
            only = "only CPU 0 is" if n == 1 else f"only CPUs 0-{n - 1} are"
            raise PlacementError(f"--placement as-recorded: the trace ran on CPU {hi}, but {only} simulated; "
                                 f"{more}, or another placement")
        return recorded

    def handoff_ns(self, a: Cpu, b: Cpu) -> float:
        """One-way transfer of a Modified line from a's cache to b's."""
        L = self.latency_ns
        if a.id == b.id:
            return L["l1_hit"]
        if a.core == b.core:
            return L["smt_handoff"]
        if a.socket != b.socket:
            return L["cross_socket_handoff"]
        if self.ccds > 1 and a.ccd != b.ccd:
            return L.get("cross_ccd_handoff", L["cross_socket_handoff"])
        return L["socket_handoff"]


def _load(text: str, path: str) -> Machine:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MachineError(f"{path}: not valid TOML: {e}") from None
    try:
        lat = {k: float(v) for k, v in d["latency_ns"].items()}
        missing = [k for k in LATENCY_KEYS if k not in lat]
        if missing:
            raise MachineError(f"{path}: [latency_ns] lacks {', '.join(missing)}")
        bad = [k for k, v in lat.items() if not v > 0]
        if bad:
            raise MachineError(f"{path}: latencies must be positive: {', '.join(bad)}")
        m = Machine(name=str(d["name"]), description=str(d.get("description", "")), sockets=int(d["sockets"]),
                    cores_per_socket=int(d["cores_per_socket"]), smt=int(d.get("smt", 1)), latency_ns=lat,
                    adjacent_line_prefetch=bool(d.get("adjacent_line_prefetch", False)),
                    fault_service_ns=float(d.get("fault_service_ns", 1000)), sources=_flat(d.get("sources", {})),
                    ccds=int(d.get("ccds", 1)), path=path,
                    rcu_grace_period_ns=float(d.get("rcu_grace_period_ns", DEFAULT_RCU_GP_NS)),
                    fitted=_flat(d.get("fitted", {})), fault_path=_fault_path(d.get("fault_path"), path),
                    numa_nodes=int(d.get("numa_nodes", 0)), prefetchw=bool(d.get("prefetchw", True)))
    except KeyError as e:
        raise MachineError(f"{path}: missing key {e.args[0]!r}") from None
    if min(m.sockets, m.cores_per_socket, m.smt, m.ccds) < 1:
        raise MachineError(f"{path}: sockets, cores_per_socket, smt and ccds must be >= 1")
    if m.cores_per_socket % m.ccds:
        raise MachineError(f"{path}: {m.ccds} ccds do not divide {m.cores_per_socket} cores_per_socket")
    if m.ccds > 1 and "cross_ccd_handoff" not in lat:
        raise MachineError(f"{path}: ccds = {m.ccds} needs [latency_ns] cross_ccd_handoff")
    if m.numa_nodes % m.sockets or m.cores_per_socket % (m.numa_nodes // m.sockets):
        raise MachineError(f"{path}: numa_nodes = {m.numa_nodes} must split the sockets' cores evenly")
    if not m.rcu_grace_period_ns >= 0:
        raise MachineError(f"{path}: rcu_grace_period_ns must not be negative")
    _check_fitted(m, lat, path)
    given = list(lat) + [k for k in SOURCED_SCALARS if k in d] + [f"fault_path.{k}" for k in (m.fault_path or {})]
    unsourced = [k for k in given if k not in m.sources and k not in m.fitted]
    if unsourced:
        raise MachineError(f"{path}: every latency needs a source in [sources] (or a [fitted] entry); "
                           f"missing: {', '.join(unsourced)}")
    return m


def _flat(t: dict) -> dict:
    """[sources] and [fitted] with dotted keys written either way (``fault_path.fixed_ns =``
    makes a sub-table in TOML; ``"fault_path.fixed_ns" =`` does not): one level, dotted."""
    out = {}
    for k, v in dict(t).items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _fault_path(t, path: str) -> dict | None:
    """The [fault_path] table, checked: every key, positive costs, the zone->lock holds
    as [pages, ns] pairs in increasing pages."""
    if t is None:
        return None
    if not isinstance(t, dict):
        raise MachineError(f"{path}: [fault_path] must be a table")
    odd = sorted(set(t) ^ set(FAULT_PATH_KEYS))
    if odd:
        raise MachineError(f"{path}: [fault_path] needs exactly {', '.join(FAULT_PATH_KEYS)}; differs in {', '.join(odd)}")
    out = {}
    try:
        for k in ("fixed_ns", "clear_page_ns", "lru_folio_ns"):
            out[k] = float(t[k])
            if not out[k] >= 0:
                raise MachineError(f"{path}: [fault_path] {k} must not be negative")
        out["dram_gbps"] = float(t["dram_gbps"])
        holds = [(float(b), float(h)) for b, h in t["zone_lock_hold_ns"]]
    except (TypeError, ValueError):
        raise MachineError(f"{path}: [fault_path] costs must be numbers, zone_lock_hold_ns a list of "
                           f"[pages, ns] pairs") from None
    if not holds or any(b <= 0 or h <= 0 for b, h in holds) or any(b2 <= b1 for (b1, _), (b2, _) in zip(holds, holds[1:])):
        raise MachineError(f"{path}: [fault_path] zone_lock_hold_ns must be [pages, ns] pairs, both positive, "
                           f"pages increasing")
    if not out["dram_gbps"] > 0:  # (outside the try: MachineError is a ValueError)
        raise MachineError(f"{path}: [fault_path] dram_gbps must be positive")
    out["zone_lock_hold_ns"] = holds
    return out


def _check_fitted(m: Machine, lat: dict, path: str) -> None:
    """[fitted] names modelled parameters, each with a non-empty account of what it was
    fitted to; a fitted parameter has no [sources] entry, and a source may not claim
    "fitted" without that account."""
    fittable = set(lat) | set(SOURCED_SCALARS) | {f"fault_path.{k}" for k in FAULT_PATH_KEYS}
    for k, to in m.fitted.items():
        if k not in fittable:
            raise MachineError(f"{path}: [fitted] {k}: not a parameter that can be fitted "
                               f"(a [latency_ns] key, {' or '.join(SOURCED_SCALARS)})")
        if not isinstance(to, str) or not to.strip():
            raise MachineError(f'{path}: [fitted] {k} must name what it was fitted to ({k} = "development set: ...")')
        if k in m.sources:
            raise MachineError(f"{path}: {k} is both in [sources] and [fitted]; a fitted parameter's "
                               f"provenance is its [fitted] entry alone")
    for k, src in m.sources.items():
        if k not in m.fitted and str(src).strip().lower().startswith("fitted"):
            raise MachineError(f'{path}: {k} is marked fitted in [sources]; name what it was fitted to in '
                               f'[fitted] instead ({k} = "development set: ...")')


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml"))


def load_machine(name_or_path: str) -> Machine:
    """A shipped profile by name, or a TOML file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise MachineError(f"no machine profile at {p}")
        return _load(p.read_text(), str(p))
    f = resources.files(__package__) / f"{name_or_path}.toml"
    if not f.is_file():
        raise MachineError(f"unknown machine {name_or_path!r}; built in: {', '.join(builtin_names())}, or a path to a .toml")
    return _load(f.read_text(), f"{name_or_path} (built in)")


def all_machines() -> list[Machine]:
    return [load_machine(n) for n in builtin_names()]
