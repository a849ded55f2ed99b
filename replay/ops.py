"""The op builder: a trace's events become per-thread streams of operations.

One op per page fault (a reader of the address space) and per address-space writer
(mmap, munmap, mprotect, mremap, brk, VMA-changing madvise; exit_mmap).  For each:

* **the thread's address space.**  Threads are attributed to a process by the tgid the
  format prints (``pid``), else by the ``mm=`` of their own mmap_lock events, else they
  stay alone (each its own mm) - the rule used and the count left unattributed are
  reported; ``same_mm=True`` puts every thread in one mm.
* **syscall pairing.**  ``sys_enter_X`` and the next ``sys_exit_X`` of the same thread
  make one writer op (start, end, return value); a failed call (negative return) changes
  nothing; an enter with no exit (trace cut, lost events) keeps ``end_ns`` null.
* **the VMAs.**  A tracker replays the writers over an interval map, seeded from the
  ``/proc/PID/maps`` snapshot when the trace has one, so every fault gets the id of the
  VMA it hits and every writer the ids of the VMAs it write-locks.  Splits keep the
  lower part in the original vm_area_struct and put the upper part in a new one, as
  ``__split_vma()`` does for the common new_below=0 case (mm/vma.c); an anonymous
  private mapping placed right after one with the same protection and flags extends it
  (``vma_merge_new_range()``), which is how glibc's arenas and the JVM's heap grow.
  A writer's new layout becomes visible at its ``sys_exit``.  Faults outside every known
  VMA get inferred VMAs: their pages clustered per mm, split at gaps over 1 MiB.
* **observed fallback.**  In per-VMA-lock kernels a fault served under the VMA lock
  emits no mmap_lock event, so a user fault followed on the same thread, before that
  thread's next fault or syscall, by ``mmap_lock_start_locking write=false`` on its own
  mm fell back to mmap_lock (abort or VM_FAULT_RETRY: the trace cannot tell which;
  lock_mm_and_find_vma() starts with mmap_read_trylock(), which traces start_locking
  too - include/linux/mmap_lock.h).  One exception looks the same: since v6.10 the
  first write fault in a private VMA without an anon_vma takes mmap_read_trylock() in
  vmf_anon_prepare() (mm/memory.c) and may still complete under the VMA lock.  Such a
  fault - the first write fault the trace shows in a private VMA - is counted as
  ``observed_anon_prepare``, not as a fallback.  ``acquire_returned`` with no
  start_locking is mmap_write_downgrade() (munmap, brk, mremap), not a fault.  A fault
  that takes the lock for write (stack expansion, lock_mm_and_find_vma()) is counted
  in ``observed_mmap_write``.  Kernel-mode faults never try the VMA lock
  (arch/x86/mm/fault.c, do_user_addr_fault: ``if (!(flags & FAULT_FLAG_USER)) goto
  lock_mmap``) and have no observed_fallback.
* **time order.**  Events are taken in timestamp order (a stable sort: ties keep their
  input order), as perf's ordered events deliver them; a trace whose time runs
  backwards on a CPU or a thread (``ingest/order.py`` counts those steps, reported as
  ``out_of_order``) is replayed as if it had been printed sorted.  Ops are numbered in
  that order - it is the causal order the engines keep - and ``seq`` stays the input
  line of each op's first event.  A writer's change is seen by the faults after its
  ``sys_exit`` in that order.
* **the user address space.**  A fault at or above TASK_SIZE_MAX is not a fault on a
  user VMA: handle_page_fault() sends it to do_kern_addr_fault() (arch/x86/mm/fault.c,
  fault_in_kernel_space()), which takes neither mmap_lock nor a VMA lock, so it is no
  op (counted in ``faults_outside_user_space``).  A writer whose range leaves the user
  address space, or whose "address" return value lies above it, cannot have succeeded
  (do_vmi_munmap(): ``start > TASK_SIZE || len > TASK_SIZE - start`` is -EINVAL, mm/vma.c;
  get_unmapped_area() gives -ENOMEM past TASK_SIZE, mm/mmap.c): it changes no VMA, like a
  failed call, and is counted in ``out_of_range_calls``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import polars as pl

PAGE = 4096
GAP_SPLIT = 1 << 20
# TASK_SIZE_MAX, arch/x86/include/asm/page_64_types.h: (1 << __VIRTUAL_MASK_SHIFT) - PAGE_SIZE,
# the shift 47 with 4-level paging and 56 with 5-level.  The larger one, because a trace
# does not say which: with 4-level paging nothing lies in between (those addresses are
# non-canonical and raise #GP, not a page fault), so no real user fault is misjudged.
TASK_SIZE_MAX = (1 << 56) - PAGE
MAX_ERRNO = 4095  # include/linux/err.h

# x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h)
X86_PF_WRITE = 1 << 1

# include/uapi/asm-generic/mman-common.h
MAP_ANONYMOUS = 0x20
MAP_SHARED = 0x01
# madvise behaviours that change vm_flags, so split/merge VMAs under mmap_write_lock
# (mm/madvise.c, madvise_need_mmap_write() and madvise_update_vma())
MADV_VMA_CHANGING = {
    0: "NORMAL", 1: "RANDOM", 2: "SEQUENTIAL", 10: "DONTFORK", 11: "DOFORK", 12: "MERGEABLE",
    13: "UNMERGEABLE", 14: "HUGEPAGE", 15: "NOHUGEPAGE", 16: "DONTDUMP", 17: "DODUMP",
    18: "WIPEONFORK", 19: "KEEPONFORK",
}

# Bumped when the op builder gives other ops for the same events; ops files stamped
# with an older version are rebuilt before a replay.  2: events in time order, faults
# and calls outside the user address space dropped.
OPS_VERSION = 2

OP_KINDS = ("fault", "mmap", "munmap", "mprotect", "mremap", "brk", "madvise", "exit")

OPS_SCHEMA = {
    "op_id": pl.Int64, "trace_id": pl.Utf8, "mm": pl.Utf8, "pid": pl.Int32, "tid": pl.Int32,
    "kind": pl.Enum(OP_KINDS), "seq": pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64,
    "address": pl.UInt64, "length": pl.Int64, "ret": pl.Int64, "vma_id": pl.Int64,
    "vma_ids": pl.List(pl.Int64), "vmas_created": pl.List(pl.Int64), "vmas_freed": pl.List(pl.Int64),
    "vmas_successor": pl.List(pl.Int64),
    "write": pl.Boolean, "kernel": pl.Boolean, "lock_mode": pl.Utf8,
    "observed_fallback": pl.Boolean, "observed_anon_prepare": pl.Boolean, "observed_mmap_write": pl.Boolean,
    "hold_ns": pl.Int64, "think_ns": pl.Int64, "cpu": pl.Int16,
}


def ops_table(ops: pl.DataFrame):
    """The ops as an Arrow table stamped with the builder's version."""
    t = ops.to_arrow()
    return t.replace_schema_metadata({**(t.schema.metadata or {}), b"replay.ops_version": str(OPS_VERSION).encode()})


def ops_current(path) -> bool:
    """Whether this version of the op builder wrote the ops file at ``path``."""
    import pyarrow.parquet as pq

    return (pq.read_schema(path).metadata or {}).get(b"replay.ops_version") == str(OPS_VERSION).encode()


def causal_violation(path) -> str | None:
    """The first fault in an ops file that comes before the writer creating its VMA - an
    order no replay can keep (the fault waits for that writer) - or None.  The op
    builder never writes one: a writer's VMAs reach only the faults after its exit."""
    import pyarrow.parquet as pq

    o = pl.from_arrow(pq.read_table(path, columns=["op_id", "kind", "vma_id", "vmas_created"]))
    made = (o.filter(pl.col("vmas_created").list.len() > 0).select(pl.col("op_id").alias("creator"), "vmas_created")
            .explode("vmas_created").rename({"vmas_created": "vma_id"}))
    bad = (o.filter(pl.col("kind").cast(pl.Utf8) == "fault").join(made, on="vma_id")
           .filter(pl.col("op_id") < pl.col("creator")).sort("op_id"))
    if not bad.height:
        return None
    r = bad.row(0, named=True)
    return f"fault op {r['op_id']} is on VMA {r['vma_id']}, which the later op {r['creator']} creates"


class MapsError(ValueError):
    """A maps snapshot that is not /proc/PID/maps text."""


def is_err_value(ret) -> bool:
    """IS_ERR_VALUE(): a syscall return in the last page of the address space is -errno."""
    return ret is not None and -MAX_ERRNO <= ret < 0


def is_user_address(a) -> bool:
    return a is not None and 0 <= a < TASK_SIZE_MAX


def user_range(start, length) -> tuple[int, int] | None:
    """[start, start + length) widened to pages, or None when it leaves the user
    address space (a negative length included: the kernel reads it as a huge size_t)."""
    length = length or 0
    if not is_user_address(start) or length < 0:
        return None
    lo, hi = page_down(start), page_up(start + length)
    return (lo, hi) if hi <= TASK_SIZE_MAX else None


def page_down(a: int) -> int:
    return a & ~(PAGE - 1)


def page_up(a: int) -> int:
    return (a + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Vma:
    id: int
    start: int
    end: int
    prot: str  # "rwxp"-style from maps, or derived from PROT_* bits
    anon: bool
    name: str = ""
    inferred: bool = False
    created_ns: int | None = None
    freed_ns: int | None = None


def prot_str(prot: int, shared: bool = False) -> str:
    return ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + ("s" if shared else "p")


def parse_maps(text: str) -> list[tuple[int, int, str, bool, str]]:
    """(start, end, perms, anonymous, name) for each line of a /proc/PID/maps snapshot."""
    out = []
    for no, ln in enumerate(text.splitlines(), 1):
        if not ln.strip() or ln.startswith("#"):
            continue
        parts = ln.split(None, 5)
        try:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            inode = int(parts[4]) if len(parts) > 4 else 0
            perms = parts[1]
        except (ValueError, IndexError):
            raise MapsError(f"line {no} is not a /proc/PID/maps line: {ln[:80]!r}") from None
        if len(perms) != 4 or lo >= hi:
            raise MapsError(f"line {no} is not a /proc/PID/maps line: {ln[:80]!r}")
        name = parts[5].strip() if len(parts) > 5 else ""
        out.append((lo, hi, perms, inode == 0 and not name.startswith("/"), name))
    return out


class AddressSpace:
    """One mm's VMAs as a sorted, non-overlapping interval map."""

    def __init__(self, ids: "IdSource"):
        self.ids = ids
        self.starts: list[int] = []
        self.vmas: list[Vma] = []
        self.all: list[Vma] = []
        self.created: list[int] = []  # journal of the writer call being replayed
        self.freed: list[int] = []
        self.successor: dict[int, int] = {}  # a VMA merged away -> the VMA that absorbed it
        self.brk_start: int | None = None  # what brk(0) reported

    # -- primitives ------------------------------------------------------------
    def _insert(self, v: Vma) -> None:
        i = bisect.bisect_left(self.starts, v.start)
        self.starts.insert(i, v.start)
        self.vmas.insert(i, v)

    def _remove(self, v: Vma, now) -> None:
        i = self.vmas.index(v)
        del self.starts[i]
        del self.vmas[i]
        v.freed_ns = now
        self.freed.append(v.id)

    def new(self, start, end, prot, anon, name="", now=None, inferred=False) -> Vma:
        v = Vma(self.ids.next(), start, end, prot, anon, name, inferred, created_ns=now)
        self.all.append(v)
        self._insert(v)
        self.created.append(v.id)
        return v

    def overlapping(self, start: int, end: int) -> list[Vma]:
        i = bisect.bisect_right(self.starts, start) - 1
        i = max(i, 0)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            if self.vmas[i].end > start:
                out.append(self.vmas[i])
            i += 1
        return out

    def find(self, addr: int) -> Vma | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and self.vmas[i].end > addr:
            return self.vmas[i]
        return None

    def split(self, v: Vma, at: int, now) -> Vma:
        """__split_vma(new_below=0): v keeps [start, at), a new VMA gets [at, end)."""
        upper = Vma(self.ids.next(), at, v.end, v.prot, v.anon, v.name, v.inferred, created_ns=now)
        self.all.append(upper)
        self.created.append(upper.id)
        v.end = at
        self._insert(upper)
        return upper

    # -- writers: each returns the VMAs it write-locks ---------------------------------
    def carve(self, start: int, end: int, now) -> tuple[list[Vma], list[Vma]]:
        """Split the VMAs overlapping [start, end) at its edges.  Returns (the VMAs that
        were there, write-locked by the writer; the pieces now inside the range)."""
        locked, inside = [], []
        for v in self.overlapping(start, end):
            locked.append(v)
            if v.start < start:
                v = self.split(v, start, now)
            if v.end > end:
                self.split(v, end, now)
            inside.append(v)
        return locked, inside

    def unmap(self, start: int, end: int, now) -> list[Vma]:
        locked, inside = self.carve(start, end, now)
        for v in inside:
            self._remove(v, now)
        return locked

    def mmap(self, start: int, end: int, prot: str, anon: bool, name: str, now) -> list[Vma]:
        locked = self.unmap(start, end, now)  # MAP_FIXED over existing mappings
        prev = self.find(start - 1)
        if anon and prev is not None and prev.end == start and prev.anon and prev.prot == prot and not prev.inferred:
            prev.end = end  # vma_merge_new_range(): extend the previous VMA
            return locked + [prev]
        self.new(start, end, prot, anon, name, now)
        return locked

    def mprotect(self, start: int, end: int, prot: str, now) -> list[Vma]:
        locked, inside = self.carve(start, end, now)
        for v in inside:
            v.prot = prot[:3] + v.prot[3]
        # merge with neighbours that now match (vma_modify_flags() -> vma_merge_existing_range())
        around = self.overlapping(start - 1, end + 1)
        v = around[0] if around else None
        while v is not None and v.start <= end:
            nxt = self.find(v.end)
            if nxt is not None and nxt.start == v.end and nxt.prot == v.prot and nxt.anon and v.anon \
                    and v.name == nxt.name and not v.inferred and not nxt.inferred:
                for x in (v, nxt):
                    if x not in locked:
                        locked.append(x)
                v.end = nxt.end
                self._remove(nxt, now)
                self.successor[nxt.id] = v.id
            else:
                v = nxt
        return locked

    def modify_flags(self, start: int, end: int, now) -> list[Vma]:
        """madvise that changes vm_flags: split at the range edges, lock what it covers."""
        return self.carve(start, end, now)[0]

    def resize(self, addr: int, old_end: int, new_end: int, now) -> list[Vma]:
        """Grow or shrink the mapping at addr in place (mremap without a move, brk)."""
        if new_end < old_end:
            return self.unmap(new_end, old_end, now)
        v = self.find(addr) or self.find(old_end - 1)
        if v is None:
            self.new(page_down(addr), new_end, "rw-p", True, "", now)
            return []
        v.end = max(v.end, new_end)
        return [v]


class IdSource:
    def __init__(self):
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


@dataclass
class BuildReport:
    threads: int = 0
    processes: int = 0
    rule: str = ""
    unattributed: int = 0
    unpaired_enter: int = 0
    unmatched_exit: int = 0
    failed_calls: int = 0
    out_of_range_calls: int = 0
    faults_outside_user_space: int = 0
    out_of_order: int = 0
    faults_in_inferred: int = 0
    inferred_vmas: int = 0
    seeded_vmas: int = 0
    notes: list = field(default_factory=list)


def attribute_threads(ev: pl.DataFrame, same_mm: bool = False) -> tuple[pl.DataFrame, BuildReport]:
    """tid -> mm key (``pid:N`` or ``mm:HEX``), with the rule used."""
    rep = BuildReport()
    tids = ev.select("tid").unique()
    rep.threads = tids.height
    if same_mm:
        rep.rule = "all threads share one mm (--same-mm)"
        return tids.with_columns(pl.lit("all").alias("mm"), pl.lit(None, pl.Int32).alias("pid")), rep
    by_pid = ev.filter(pl.col("pid").is_not_null() & (pl.col("pid") > 0)).group_by("tid").agg(pl.col("pid").mode().first())
    # a thread's own mm: the mm it takes mmap_lock on most often
    by_mm = (ev.filter(pl.col("event").cast(pl.Utf8).str.starts_with("mmap_lock") & pl.col("mm").is_not_null())
             .group_by("tid").agg(pl.col("mm").mode().first().alias("lock_mm")))
    t = tids.join(by_pid, on="tid", how="left").join(by_mm, on="tid", how="left")
    # threads with a pid lend it to the other threads on their mm
    mm_pid = t.filter(pl.col("pid").is_not_null() & pl.col("lock_mm").is_not_null()).group_by("lock_mm").agg(
        pl.col("pid").mode().first().alias("mm_pid"))
    t = t.join(mm_pid, on="lock_mm", how="left").with_columns(pl.coalesce("pid", "mm_pid").alias("pid"))
    t = t.with_columns(
        pl.when(pl.col("pid").is_not_null()).then(pl.format("pid:{}", pl.col("pid")))
        .when(pl.col("lock_mm").is_not_null()).then(pl.format("mm:{}", pl.col("lock_mm").map_elements(lambda x: f"{x:x}", return_dtype=pl.Utf8)))
        .otherwise(pl.format("tid:{}", pl.col("tid"))).alias("mm"))
    n_pid = t.filter(pl.col("mm").str.starts_with("pid:")).height
    n_mm = t.filter(pl.col("mm").str.starts_with("mm:")).height
    rep.unattributed = t.filter(pl.col("mm").str.starts_with("tid:")).height
    rules = []
    if n_pid:
        rules.append(f"{n_pid} by pid/tgid")
    if n_mm:
        rules.append(f"{n_mm} by the mm= of their mmap_lock events")
    if rep.unattributed:
        rules.append(f"{rep.unattributed} unattributed (each its own mm)")
        rep.notes.append("this trace has no pid for some threads: record with `perf script -F comm,pid,tid,...` "
                         "(replay record does), or pass --same-mm if all threads share one address space")
    rep.rule = "; ".join(rules)
    return t.select("tid", "mm", pl.col("pid").cast(pl.Int32)), rep


def build_ops(ev: pl.DataFrame, trace_id: str, maps_snapshot: str | None = None,
              same_mm: bool = False) -> tuple[pl.DataFrame, pl.DataFrame, BuildReport]:
    """events of one trace -> (ops, vmas, report)."""
    from .ingest.order import TimeOrder

    ev = ev.sort("seq")
    order = TimeOrder()
    order.feed_table(ev.select("seq", "ts_ns", "cpu", "tid").to_arrow())
    # time order, ties in input order; ``_ord`` is an event's place in it
    ev = ev.sort("ts_ns", maintain_order=True, nulls_last=True).with_row_index("_ord")
    fault_ev = pl.col("event").cast(pl.Utf8).is_in(["page_fault_user", "page_fault_kernel"])
    outside = (fault_ev & (pl.col("address") >= TASK_SIZE_MAX)).fill_null(False)
    n_outside = int(ev.select(outside.sum()).item())
    ev = ev.filter(~outside)
    threads, rep = attribute_threads(ev, same_mm)
    rep.out_of_order = order.count
    rep.faults_outside_user_space = n_outside
    if order.count:
        rep.notes.append(f"time goes backwards at {order.count:,} events on their CPU or thread (the first at seq "
                         f"{order.first[0]}): the ops follow the timestamps (a stable sort), not the input order")
    if n_outside:
        rep.notes.append(f"{n_outside:,} faults at or above TASK_SIZE_MAX ({TASK_SIZE_MAX:#x}) are no ops: the kernel "
                         "handles them in do_kern_addr_fault(), without an mm lock")
    # "space": the address-space key (``mm`` in ops); the events' own ``mm`` is the
    # mmap_lock pointer of that event
    ev = ev.join(threads.rename({"pid": "proc_pid", "mm": "space"}), on="tid", how="left")
    ev = ev.with_columns(pl.col("event").cast(pl.Utf8).alias("ev"))

    # -- observed fallback: per thread, the events between one fault/syscall and the next
    opens = pl.col("ev").str.starts_with("page_fault") | pl.col("ev").str.starts_with("sys_enter")
    ev = ev.with_columns(opens.cast(pl.Int64).cum_sum().over("tid").alias("_grp"))
    own_mm = ev.filter(pl.col("ev").str.starts_with("mmap_lock")).group_by("tid").agg(pl.col("mm").mode().first().alias("_own_mm"))
    ev = ev.join(own_mm, on="tid", how="left")
    lock_ev = ev.filter((pl.col("ev") == "mmap_lock_start") & (pl.col("mm") == pl.col("_own_mm")))
    grp_lock = lock_ev.group_by("tid", "_grp").agg(
        (~pl.col("write")).any().alias("_fb_read"), pl.col("write").any().alias("_fb_write"),
        pl.col("ts_ns").min().alias("_lock_ts"))
    rel = ev.filter((pl.col("ev") == "mmap_lock_released") & (pl.col("mm") == pl.col("_own_mm"))).group_by("tid", "_grp").agg(
        pl.col("ts_ns").max().alias("_rel_ts"))
    acq = ev.filter((pl.col("ev") == "mmap_lock_acquired") & pl.col("success") & (pl.col("mm") == pl.col("_own_mm"))).group_by(
        "tid", "_grp").agg(pl.col("ts_ns").min().alias("_acq_ts"))

    faults = ev.filter(pl.col("ev").is_in(["page_fault_user", "page_fault_kernel"])).join(
        grp_lock, on=["tid", "_grp"], how="left").join(rel, on=["tid", "_grp"], how="left").join(acq, on=["tid", "_grp"], how="left")
    faults = faults.select(
        "seq", "_ord", "tid", pl.col("space").alias("mm"), pl.col("proc_pid").alias("pid"),
        # how long the fault held mmap_lock (acquired -> released): its service time on that path
        pl.when(pl.col("_fb_read") | pl.col("_fb_write")).then(pl.col("_rel_ts") - pl.col("_acq_ts")).otherwise(None).alias("hold_ns"), pl.lit("fault").alias("kind"),
        pl.col("ts_ns").alias("start_ns"),
        pl.when(pl.col("_fb_read") | pl.col("_fb_write")).then(pl.col("_rel_ts")).otherwise(None).alias("end_ns"),
        "address", pl.lit(None, pl.Int64).alias("length"), pl.lit(None, pl.Int64).alias("ret"),
        ((pl.col("error_code") & X86_PF_WRITE) != 0).alias("write"),
        (pl.col("ev") == "page_fault_kernel").alias("kernel"),
        pl.lit("read").alias("lock_mode"),
        pl.when(pl.col("ev") == "page_fault_kernel").then(None).otherwise(pl.col("_fb_read").fill_null(False)).alias("observed_fallback"),
        pl.col("_fb_write").fill_null(False).alias("observed_mmap_write"),
    )

    # -- syscalls: pair enter/exit per thread
    sc = ev.filter(pl.col("ev").str.starts_with("sys_") | (pl.col("ev") == "exit_mmap")).select(
        "seq", "_ord", "tid", pl.col("space").alias("mm"), "proc_pid", "ev", "ts_ns", "address", "len", "new_len", "new_addr", "prot", "flags", "ret")
    writers = _pair_syscalls(sc, rep)
    # how long each writer held mmap_lock for write: its own acquire -> release
    held = ev.filter(pl.col("ev").is_in(["mmap_lock_acquired", "mmap_lock_released"]) & pl.col("write")
                     & (pl.col("mm") == pl.col("_own_mm"))).group_by("tid", "_grp").agg(
        (pl.col("ts_ns").filter(pl.col("ev") == "mmap_lock_released").max()
         - pl.col("ts_ns").filter((pl.col("ev") == "mmap_lock_acquired") & pl.col("success")).min()).alias("hold_ns"))
    enters = ev.filter(pl.col("ev").str.starts_with("sys_enter")).select("seq", "tid", "_grp")
    hold = enters.join(held, on=["tid", "_grp"]).select("seq", "hold_ns")
    writers = writers.join(hold, on="seq", how="left") if writers.height else writers.with_columns(pl.lit(None, pl.Int64).alias("hold_ns"))

    vmas, fault_vma, writers = _track_vmas(faults, writers, maps_snapshot, rep)
    faults = faults.with_columns(pl.Series("vma_id", fault_vma, pl.Int64), pl.lit(None, pl.List(pl.Int64)).alias("vma_ids"),
                                 pl.lit(None, pl.List(pl.Int64)).alias("vmas_created"),
                                 pl.lit(None, pl.List(pl.Int64)).alias("vmas_freed"),
                                 pl.lit(None, pl.List(pl.Int64)).alias("vmas_successor"))
    # the first write fault in a private VMA may take mmap_read_trylock in vmf_anon_prepare()
    private = vmas.filter(pl.col("prot").str.ends_with("p")).select("vma_id")
    first_write = (faults.filter(pl.col("write") & ~pl.col("kernel") & pl.col("vma_id").is_not_null())
                   .join(private, on="vma_id").group_by("vma_id").agg(pl.col("_ord").min().alias("_first_ord")))
    faults = faults.join(first_write, on="vma_id", how="left").with_columns(
        (pl.col("_ord") == pl.col("_first_ord")).fill_null(False).alias("_first"))
    faults = faults.with_columns(
        (pl.col("observed_fallback") & pl.col("_first")).alias("observed_anon_prepare"),
        pl.when(pl.col("_first")).then(pl.col("observed_fallback") & False).otherwise(pl.col("observed_fallback")).alias("observed_fallback"),
    ).drop("_first_ord", "_first")
    ops = pl.concat([faults.select(_cols(faults)), writers.select(_cols(writers))],
                    how="vertical_relaxed")
    ops = ops.sort("_ord").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("op_id"), pl.lit(trace_id).alias("trace_id"))
    prev_end = pl.coalesce("end_ns", "start_ns").shift(1).over("tid")
    ops = ops.with_columns((pl.col("start_ns") - prev_end).clip(lower_bound=0).alias("think_ns"))
    ops = ops.join(ev.select("seq", "cpu"), on="seq", how="left")  # the CPU it ran on
    ops = ops.select([pl.col(c).cast(t) for c, t in OPS_SCHEMA.items()])
    rep.processes = ops["mm"].n_unique()
    return ops, vmas, rep


def _cols(df: pl.DataFrame) -> list[str]:
    return ["seq", "_ord", "tid", "mm", "pid", "kind", "start_ns", "end_ns", "address", "length", "ret", "write", "kernel",
            "lock_mode", "observed_fallback", "observed_anon_prepare", "observed_mmap_write", "vma_id", "vma_ids",
            "vmas_created", "vmas_freed", "vmas_successor", "hold_ns"]


def _pair_syscalls(sc: pl.DataFrame, rep: BuildReport) -> pl.DataFrame:
    """One row per writer call (enter and exit of one thread paired; ``_end_ord``: the
    exit's place in time order, where its change lands) and per exit_mmap."""
    rows = []
    open_: dict[tuple[int, str], dict] = {}
    for r in sc.iter_rows(named=True):
        ev = r["ev"]
        if ev == "exit_mmap":
            rows.append(dict(seq=r["seq"], _ord=r["_ord"], _end_ord=r["_ord"], tid=r["tid"], mm=r["mm"],
                             pid=r["proc_pid"], kind="exit", start_ns=r["ts_ns"], end_ns=r["ts_ns"], address=None,
                             length=None, ret=0, args={}))
            continue
        d, name = ("enter", ev[10:]) if ev.startswith("sys_enter_") else ("exit", ev[9:])
        key = (r["tid"], name)
        if d == "enter":
            if key in open_:
                rep.unpaired_enter += 1
                _close(open_.pop(key), None, rows)
            open_[key] = r
        else:
            start = open_.pop(key, None)
            if start is None:
                rep.unmatched_exit += 1
                continue
            _close(start, r, rows)
    for start in open_.values():
        rep.unpaired_enter += 1
        _close(start, None, rows)
    if not rows:
        return pl.DataFrame(schema={"seq": pl.Int64, "_ord": pl.UInt32, "_end_ord": pl.UInt32, "tid": pl.Int32,
                                    "mm": pl.Utf8, "pid": pl.Int32, "kind": pl.Utf8, "start_ns": pl.Int64,
                                    "end_ns": pl.Int64, "address": pl.UInt64, "length": pl.Int64, "ret": pl.Int64,
                                    "args": pl.Object})
    return pl.DataFrame(rows, schema_overrides={"args": pl.Object, "address": pl.UInt64, "ret": pl.Int64, "end_ns": pl.Int64,
                                                "length": pl.Int64, "pid": pl.Int32, "_ord": pl.UInt32,
                                                "_end_ord": pl.UInt32})


def _close(enter: dict, exit_: dict | None, rows: list) -> None:
    name = enter["ev"][10:]
    args = {k: enter[k] for k in ("address", "len", "new_len", "new_addr", "prot", "flags")}
    rows.append(dict(seq=enter["seq"], _ord=enter["_ord"], _end_ord=None if exit_ is None else exit_["_ord"],
                     tid=enter["tid"], mm=enter["mm"], pid=enter["proc_pid"], kind=name, start_ns=enter["ts_ns"],
                     end_ns=None if exit_ is None else exit_["ts_ns"], address=enter["address"], length=enter["len"],
                     ret=None if exit_ is None else exit_["ret"], args=args))


class _OutOfRange(Exception):
    """A writer call whose range leaves the user address space."""


def _range(start, length) -> tuple[int, int]:
    r = user_range(start, length)
    if r is None:
        raise _OutOfRange
    return r


def _apply(asp: AddressSpace, kind: str, a: dict, ret: int, now) -> tuple[list[Vma], str]:
    """Replay one successful writer call on ``asp``: (the VMAs it write-locks, its lock
    mode).  An empty range changes no VMA (the kernel refuses it, or returns at once).
    Raises _OutOfRange before changing anything."""
    if kind == "mmap":
        lo, hi = _range(ret, a["len"])
        flags = a["flags"] or 0
        prot = prot_str(a["prot"] or 0, bool(flags & MAP_SHARED))
        return (asp.mmap(lo, hi, prot, bool(flags & MAP_ANONYMOUS), "", now) if lo < hi else []), "write"
    if kind in ("munmap", "mprotect"):
        lo, hi = _range(a["address"], a["len"])
        if lo == hi:
            return [], "write"
        if kind == "munmap":
            return asp.unmap(lo, hi, now), "write"
        return asp.mprotect(lo, hi, prot_str(a["prot"] or 0), now), "write"
    if kind == "mremap":
        old, old_end = _range(a["address"], a["len"])
        if ret == old:
            _, new_end = _range(old, page_up(a["new_len"] or 0))
            return asp.resize(old, old_end, new_end, now), "write"
        lo, hi = _range(ret, page_up(a["new_len"] or 0))  # moved: the old range goes, a new VMA takes the pages
        src = asp.find(old)
        prot, anon = (src.prot, src.anon) if src else ("rw-p", True)
        return asp.unmap(old, old_end, now) + (asp.mmap(lo, hi, prot, anon, "", now) if lo < hi else []), "write"
    if kind == "brk":
        heap = next((v for v in asp.vmas if v.name == "[heap]"), None)
        req = a["address"] or 0
        if not req:
            asp.brk_start = ret  # brk(0) reports the current break
            return [], "none"
        if ret != req:  # the break did not move (brk() returns the old one on failure)
            return [], "write"
        if heap is not None:
            _, new_end = _range(heap.start, ret - heap.start)
            return asp.resize(heap.start, heap.end, new_end, now), "write"
        if asp.brk_start:
            _, hi = _range(asp.brk_start, ret - asp.brk_start)
            if asp.brk_start < hi:
                asp.new(asp.brk_start, hi, "rw-p", True, "[heap]", now)
        return [], "write"
    if kind == "madvise":
        if a["flags"] not in MADV_VMA_CHANGING:
            return [], "read"  # e.g. MADV_DONTNEED zaps pages under mmap_read_lock
        lo, hi = _range(a["address"], a["len"])
        return (asp.modify_flags(lo, hi, now) if lo < hi else []), "write"
    return [], "write"


def _track_vmas(faults: pl.DataFrame, writers: pl.DataFrame, maps_snapshot, rep: BuildReport):
    """Replay writers per mm in the (time) order their changes land; give faults VMA ids."""
    ids = IdSource()
    spaces: dict[str, AddressSpace] = {}
    seeded_mm = None
    if maps_snapshot:
        # the snapshot belongs to the recorded command: the mm of the first thread
        first = pl.concat([faults.select("_ord", "mm"), writers.select(pl.col("_ord").cast(pl.UInt32), "mm")]).sort("_ord")
        if first.height:
            seeded_mm = first["mm"][0]
            asp = spaces.setdefault(seeded_mm, AddressSpace(ids))
            for lo, hi, perms, anon, name in parse_maps(maps_snapshot):
                if user_range(lo, hi - lo) is None:  # [vsyscall]: not in the mm's VMA tree
                    continue
                asp.new(lo, hi, perms, anon, name, None)
                rep.seeded_vmas += 1

    w_vma_ids: list = [None] * writers.height
    w_created: list = [[] for _ in range(writers.height)]
    w_freed: list = [[] for _ in range(writers.height)]
    w_succ: list = [[] for _ in range(writers.height)]
    w_lock: list = ["write"] * writers.height
    f_vma = np.full(faults.height, -1, dtype=np.int64)
    f_mm = faults["mm"].to_numpy()
    f_addr = faults["address"].to_numpy().astype(np.uint64)
    f_ord = faults["_ord"].to_numpy().astype(np.int64)
    f_kernel = faults["kernel"].to_numpy()

    # writers take effect at their exit; unfinished ones never
    wl = writers.with_row_index("_i").filter(pl.col("_end_ord").is_not_null()).sort("_end_ord")
    order_f = np.argsort(f_ord, kind="stable")
    fi = 0

    def resolve_faults_until(t_ord):
        """Give the faults before ``t_ord`` in time order the VMAs they hit now."""
        nonlocal fi
        j = fi
        while j < len(order_f) and f_ord[order_f[j]] < t_ord:
            j += 1
        if j == fi:
            return
        idx = order_f[fi:j]
        fi = j
        for mm in np.unique(f_mm[idx]):
            asp = spaces.get(mm)
            if asp is None or not asp.vmas:
                continue
            sel = idx[f_mm[idx] == mm]
            starts = np.array(asp.starts, dtype=np.uint64)
            ends = np.array([v.end for v in asp.vmas], dtype=np.uint64)
            vid = np.array([v.id for v in asp.vmas], dtype=np.int64)
            pos = np.searchsorted(starts, f_addr[sel], side="right") - 1
            ok = (pos >= 0) & (f_addr[sel] < ends[np.maximum(pos, 0)])
            f_vma[sel[ok]] = vid[pos[ok]]

    for r in wl.iter_rows(named=True):
        resolve_faults_until(r["_end_ord"])
        i = r["_i"]
        asp = spaces.setdefault(r["mm"], AddressSpace(ids))
        asp.created, asp.freed = [], []
        ret = r["ret"]
        a = r["args"]
        kind = r["kind"]
        now = r["end_ns"]
        if kind == "exit":
            locked = list(asp.vmas)
            for v in locked:
                asp._remove(v, now)
            w_vma_ids[i] = [v.id for v in locked]
            w_freed[i] = [v.id for v in locked]
            w_succ[i] = [-1] * len(locked)
            continue
        if is_err_value(ret):
            rep.failed_calls += 1
            w_vma_ids[i] = []
            continue
        try:
            locked, w_lock[i] = _apply(asp, kind, a, ret, now)
        except _OutOfRange:
            rep.out_of_range_calls += 1
            w_vma_ids[i] = []
            continue
        w_vma_ids[i] = sorted({v.id for v in locked})
        both = set(asp.created) & set(asp.freed)  # split off and unmapped in the same call
        w_created[i] = [x for x in asp.created if x not in both]
        w_freed[i] = [x for x in asp.freed if x not in both]
        w_succ[i] = [asp.successor.get(x, -1) for x in w_freed[i]]
    resolve_faults_until(np.iinfo(np.int64).max)
    if rep.out_of_range_calls:
        rep.notes.append(f"{rep.out_of_range_calls:,} calls reach outside the user address space, which the kernel "
                         "refuses: they change no VMA")

    # faults outside every known VMA: infer regions from the faulting pages
    miss = np.flatnonzero(f_vma < 0)
    user_miss = miss[~f_kernel[miss]]
    rep.faults_in_inferred = int(len(user_miss))
    for mm in np.unique(f_mm[user_miss]) if len(user_miss) else []:
        asp = spaces.setdefault(mm, AddressSpace(ids))
        sel = user_miss[f_mm[user_miss] == mm]
        pages = np.unique(f_addr[sel] & np.uint64(~(PAGE - 1) & (2**64 - 1)))
        cut = np.flatnonzero(np.diff(pages.astype(np.int64)) > GAP_SPLIT) + 1
        for grp in np.split(pages, cut):
            v = Vma(ids.next(), int(grp[0]), int(grp[-1]) + PAGE, "rw-p", True, "", True)
            asp.all.append(v)
            rep.inferred_vmas += 1
            inside = (f_addr[sel] >= np.uint64(v.start)) & (f_addr[sel] < np.uint64(v.end))
            f_vma[sel[inside]] = v.id
    f_vma_out = [None if x < 0 else int(x) for x in f_vma.tolist()]

    writers = writers.with_columns(
        pl.Series("vma_ids", w_vma_ids, pl.List(pl.Int64)), pl.Series("lock_mode", w_lock, pl.Utf8),
        pl.Series("vmas_created", w_created, pl.List(pl.Int64)), pl.Series("vmas_freed", w_freed, pl.List(pl.Int64)),
        pl.Series("vmas_successor", w_succ, pl.List(pl.Int64)),
        pl.lit(None, pl.Int64).alias("vma_id"), pl.lit(None, pl.Boolean).alias("write"),
        pl.lit(False).alias("kernel"), pl.lit(None, pl.Boolean).alias("observed_fallback"),
        pl.lit(None, pl.Boolean).alias("observed_anon_prepare"), pl.lit(None, pl.Boolean).alias("observed_mmap_write"),
    ).drop("args")
    vmas = pl.DataFrame(
        [dict(vma_id=v.id, mm=mm, start=v.start, end=v.end, prot=v.prot, anon=v.anon, name=v.name,
              inferred=v.inferred, created_ns=v.created_ns, freed_ns=v.freed_ns)
         for mm, asp in spaces.items() for v in asp.all],
        schema={"vma_id": pl.Int64, "mm": pl.Utf8, "start": pl.UInt64, "end": pl.UInt64, "prot": pl.Utf8,
                "anon": pl.Boolean, "name": pl.Utf8, "inferred": pl.Boolean, "created_ns": pl.Int64, "freed_ns": pl.Int64})
    return vmas, f_vma_out, writers
