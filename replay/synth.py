"""Synthetic traces in the same schema as recorded ones, for the benchmarks the
published measurements used but that a 2-CPU machine cannot record at 128 threads.

The generator writes ``perf script`` text (the ``replay record`` field list) and the
real ingester reads it, so a synthetic trace is indistinguishable downstream from a
recorded one - events, ops, VMAs - and is labelled by its ``source``.  Each task's
events come out in time order, the tasks merged (``heapq.merge``): a trace bigger than
memory is written as it is made.

Workloads (``WORKLOADS``), each following its benchmark's source:

* ``pft``: mmtests pft-threads (gormanm/pft ``pft.c``, run by mmtests'
  ``shellpack_src/src/pft/pft-bench`` as ``pft -m SIZE -t N`` once per iteration).
  ``alloc_test_memory()`` maps one MAP_PRIVATE|MAP_ANONYMOUS region
  (``valloc_private(bytes)``: one VMA, one anon_vma) before the threads start; each
  thread's ``pft_loop()`` writes ``cachelines`` (default 1) bytes per page of its own
  ``bytes_per_test = bytes / nr_tests`` slice - one write fault per page.  An
  iteration here is map, touch, unmap (mmtests runs a new pft process per iteration,
  whose exit unmaps the region).
* ``pft-multimap``: the same with pft's ``-M`` (one VMA per thread; enabled by Punit
  Agrawal's gormanm/pft commit 8fe554a3, the pft of the per-thread-VMA table):
  ``alloc_test_memory()`` reserves ``bytes + (nr_tests + 1) * pagesize``, unmaps its
  first page, then per test unmaps ``bytes_per_test + pagesize`` and maps
  ``bytes_per_test`` MAP_FIXED at its start - separate VMAs and anon_vmas with a
  one-page hole between them, so none merge.  pft measures from after that setup
  (``pft_loop()``'s ``wall_start``), so the trace starts there: the first iteration's
  VMAs are in the /proc/PID/maps snapshot, as ``replay record`` would have found them;
  later iterations make them with those 2 x threads + 2 calls (inside the replay's
  span: the replay starts every thread at once, and faults racing a long setup would
  measure the setup, not pft).
* will-it-scale (antonblanchard/will-it-scale ``tests/*.c``; each task runs
  ``testcase()`` forever, 128 MiB = ``MEMSIZE``), here ``iterations`` rounds of it:
  ``page_fault1`` (mmap anonymous private, write each page, munmap), ``page_fault2``
  (the same on a private mapping of a ``mkstemp()``/``ftruncate()``'d file: CoW write
  faults), ``page_fault3`` (a MAP_SHARED file mapping: shared write faults), ``brk1``
  (``brk(addr + page)``, ``brk(addr)`` from ``sbrk(0)``), ``brk2`` (the same above an
  ``sbrk(page)`` of the task's own), ``mmap1`` (mmap/munmap 128 MiB anonymous, no
  touch), ``mmap2`` (the same of a file).  brk1/2 and mmap1/2 fault nothing: their
  traces hold only address-space writers (``replay run`` refuses a trace without a
  page fault, in one line).

Modes (``mode``): ``thread`` - the tasks are threads of one process (pid 1000, tids
1001...), one mm, as will-it-scale's ``_threads`` binaries and pft ``-t``;
``process`` - each task is its own process (pid = tid = 1001..., its own ``mm=``), as
will-it-scale's ``_processes`` binaries fork them.  The op builder attributes threads
to address spaces by pid (``replay/ops.py``), so each process is its own mm, and the
engine replays each mm on its own (``replay/engine/__init__.py`` ``_replay_mms``:
one simulation per mm, each given the whole machine).  So in process mode no CPU and
no cache line is shared between processes: a process-mode replay is each process
alone, and oversubscription past the machine's CPUs is not modelled (``PROCESS_NOTE``).
"""

from __future__ import annotations

import heapq
import io
from dataclasses import dataclass
from typing import Callable, Iterator

PAGE = 4096
MM = 0xFFFF888104D6A000
BASE = 0x7F0000000000
PID = 1000
MEMSIZE = 128 << 20  # will-it-scale tests/*.c: #define MEMSIZE (128 * 1024 * 1024)
HEAP = (0x01000000, 0x01021000)  # the [heap] of the snapshot (will-it-scale's main() mallocs before testcase())
PROT_RW = 0x3
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
WRITE_FAULT = 0x6  # X86_PF_USER | X86_PF_WRITE, page not present (arch/x86/include/asm/trap_pf.h)
MODES = ("thread", "process")
PROCESS_NOTE = ("process mode: each process is its own address space and the engine replays each mm on its own "
                "(all CPUs each, one after another), so processes share no CPU or cache line and oversubscription "
                "past the machine's CPUs is not modelled")


@dataclass(frozen=True)
class Task:
    """One benchmark task: a thread of the process, or a process of its own."""

    pid: int
    tid: int
    mm: int
    comm: str


def tasks(n: int, mode: str, comm: str) -> list[Task]:
    if mode not in MODES:
        raise ValueError(f"mode must be thread or process, not {mode!r}")
    if mode == "thread":
        return [Task(PID, PID + 1 + k, MM, comm) for k in range(n)]
    return [Task(PID + 1 + k, PID + 1 + k, MM + (k + 1) * 0x2000, comm) for k in range(n)]


def _line(task: Task, t_ns: int, ev: str, payload: str) -> tuple[int, str]:
    return t_ns, (f"{task.comm:>16} {task.pid:5d}/{task.tid:<5d} [{task.tid % 1000:03d}] "
                  f"{t_ns // 1_000_000_000:5d}.{t_ns % 1_000_000_000:09d}: {ev}: {payload}\n")


def _pf(task: Task, t: int, addr: int) -> tuple[int, str]:
    return _line(task, t, "exceptions:page_fault_user", f"address={addr:#x} ip=0x401136 error_code={WRITE_FAULT:#x}")


def _syscall(task: Task, t: int, name: str, args: str, ret: int, hold_ns: int = 500):
    """The events of one mm-writing syscall (enter, mmap_write_lock(), exit); returns
    them and the time after."""
    ev = [_line(task, t, f"syscalls:sys_enter_{name}", args),
          _line(task, t + 100, "mmap_lock:mmap_lock_start_locking", f"mm={task.mm:#x} memcg_id=1 write=true"),
          _line(task, t + 150, "mmap_lock:mmap_lock_acquire_returned",
                f"mm={task.mm:#x} memcg_id=1 write=true success=true"),
          _line(task, t + 150 + hold_ns, "mmap_lock:mmap_lock_released", f"mm={task.mm:#x} memcg_id=1 write=true"),
          _line(task, t + 250 + hold_ns, f"syscalls:sys_exit_{name}", f"{ret:#x}")]
    return ev, t + 300 + hold_ns


def _mmap_args(length: int, flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fd: int = -1, addr: int = 0) -> str:
    return (f"addr: {addr:#010x}, len: {length:#010x}, prot: {PROT_RW:#010x}, flags: {flags:#010x}, "
            f"fd: {fd & 0xFFFFFFFF:#010x}, off: 0x00000000")


def _munmap_args(addr: int, length: int) -> str:
    return f"addr: {addr:#x}, len: {length:#010x}"


# -- mmtests pft ---------------------------------------------------------------------------
def _pft_events(threads: int, pages_per_thread: int, iterations: int, gap_ns: int, multimap: bool,
                slice_pages: int | None = None):
    """pft -t N (and -M): the main thread maps, the threads touch their slices in
    step, gap_ns apart, the main thread unmaps; per iteration.  ``slice_pages``: each
    slice's size (pft's bytes_per_test) when the threads touch only its first
    ``pages_per_thread`` pages - a scaled-down run that keeps the real run's spacing, so
    that threads share a PTE page (2 MiB) only where the real run's slices would."""
    main = Task(PID, PID, MM, "pft")
    workers = tasks(threads, "thread", "pft")
    t = 1_000_000_000
    bpt = max(slice_pages or 0, pages_per_thread) * PAGE
    for it in range(iterations):
        if not multimap:
            size = threads * bpt
            ev, t = _syscall(main, t, "mmap", _mmap_args(size), BASE)
            yield from ev
            slices = [BASE + k * bpt for k in range(threads)]
        elif it == 0:  # pft -M's first: the per-test VMAs as alloc_test_memory() left them (the snapshot's)
            slices, size = _multimap_slices(threads, bpt), threads * bpt + (threads + 1) * PAGE
        else:  # pft.c alloc_test_memory(), multimap
            abytes = threads * bpt + (threads + 1) * PAGE
            ev, t = _syscall(main, t, "mmap", _mmap_args(abytes), BASE)
            yield from ev
            ev, t = _syscall(main, t, "munmap", _munmap_args(BASE, PAGE), 0)
            yield from ev
            where, slices = BASE + PAGE, []
            for _k in range(threads):
                ev, t = _syscall(main, t, "munmap", _munmap_args(where, bpt + PAGE), 0)
                yield from ev
                ev, t = _syscall(main, t, "mmap", _mmap_args(bpt, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                                                             addr=where), where)
                yield from ev
                slices.append(where)
                where += bpt + PAGE
            size = abytes
        for p in range(pages_per_thread):
            for k, w in enumerate(workers):
                yield _pf(w, t + p * gap_ns + k, slices[k] + p * PAGE)
        t += pages_per_thread * gap_ns + threads + 1000
        ev, t = _syscall(main, t, "munmap", _munmap_args(BASE, size), 0)
        yield from ev


def _multimap_slices(threads: int, bpt: int) -> list[int]:
    """Where pft -M puts each test's region: one page above the last one's end."""
    return [BASE + PAGE + k * (bpt + PAGE) for k in range(threads)]


def _pft(threads: int, pages: int, iterations: int = 1, mode: str = "thread", gap_ns: int = 200,
         slice_pages: int | None = None):
    """mmtests pft-threads: ``pages`` per thread (pft's bytes_per_test / 4 KiB)."""
    return _pft_events(threads, pages, iterations, gap_ns, multimap=False, slice_pages=slice_pages)


def _pft_multimap(threads: int, pages: int, iterations: int = 1, mode: str = "thread", gap_ns: int = 200,
                  slice_pages: int | None = None):
    """pft -M: one VMA per thread."""
    return _pft_events(threads, pages, iterations, gap_ns, multimap=True, slice_pages=slice_pages)


def pft(threads: int, pages_per_thread: int, iterations: int = 1, gap_ns: int = 200, out=None):
    """``generate("pft", ...)``: (perf script text or None with ``out``, maps snapshot)."""
    return generate("pft", threads, pages_per_thread, iterations, out=out, gap_ns=gap_ns)


# -- will-it-scale -------------------------------------------------------------------------
def _wis(body: Callable[[Task, int, int, int], Iterator], comm: str):
    """A will-it-scale test: each task runs ``body(task, k, start, ...)`` (a generator
    of (time, line) in time order) ; the tasks' streams merged."""

    def workload(threads: int, pages: int = MEMSIZE // PAGE, iterations: int = 1, mode: str = "thread",
                 gap_ns: int = 200):
        ts = tasks(threads, mode, comm)
        streams = [body(task, k if mode == "thread" else 0, 1_000_000_000 + k * 10, pages, iterations, gap_ns)
                   for k, task in enumerate(ts)]
        return heapq.merge(*streams, key=lambda x: x[0])

    return workload


def _region(slot: int, pages: int) -> int:
    """Each thread's own range (the kernel's get_unmapped_area() gives each mapping its
    own and reuses it after munmap); processes all get the first."""
    return BASE + slot * (pages * PAGE + (1 << 30))


def _fault_loop(flags: int, fd_base: int, touch: bool):
    def body(task, slot, t, pages, iterations, gap_ns):
        base, size = _region(slot, pages), pages * PAGE
        fd = -1 if fd_base < 0 else fd_base + slot
        for _ in range(iterations):
            ev, t = _syscall(task, t, "mmap", _mmap_args(size, flags, fd), base)
            yield from ev
            if touch:
                for p in range(pages):
                    yield _pf(task, t + p * gap_ns, base + p * PAGE)
                t += pages * gap_ns + 500
            ev, t = _syscall(task, t, "munmap", _munmap_args(base, size), 0)
            yield from ev

    return body


def _brk_loop(own: bool):
    def body(task, slot, t, pages, iterations, gap_ns):
        # brk(0): what sbrk(0) reports (glibc asks the kernel once, then caches __curbrk)
        # (SYSCALL_DEFINE1(brk), mm/mmap.c: mmap_write_lock_killable() before anything, brk(0) too)
        ev, t = _syscall(task, t, "brk", "brk: 0x00000000", HEAP[1])
        yield from ev
        addr = HEAP[1]
        if own:  # brk2: sbrk(page_size) first; in thread mode each thread's page above the last
            addr = HEAP[1] + (slot + 1) * PAGE
            ev, t = _syscall(task, t, "brk", f"brk: {addr:#010x}", addr)
            yield from ev
        for _ in range(iterations):
            for target in (addr + PAGE, addr):
                ev, t = _syscall(task, t, "brk", f"brk: {target:#010x}", target)
                yield from ev
                t += gap_ns

    return body


def _maps(comm: str = "pft", heap: bool = False, regions: tuple = ()) -> str:
    return (f"# synthetic: /proc/{PID}/maps\n"
            f"00400000-00401000 r--p 00000000 00:00 1 /synthetic/{comm}\n"
            f"00401000-00402000 r-xp 00001000 00:00 1 /synthetic/{comm}\n"
            + (f"{HEAP[0]:08x}-{HEAP[1]:08x} rw-p 00000000 00:00 0 [heap]\n" if heap else "")
            + "".join(f"{lo:x}-{hi:x} rw-p 00000000 00:00 0\n" for lo, hi in regions)
            + "7ffff7fd0000-7ffff7ff0000 rw-p 00000000 00:00 0 [stack]\n")


@dataclass(frozen=True)
class Workload:
    name: str
    events: Callable
    source: str  # the benchmark source it follows
    faults: bool  # whether its trace has page faults (a replay needs them)
    modes: tuple = MODES
    default_pages: int = MEMSIZE // PAGE
    comm: str = "will-it-scale"
    heap: bool = False  # the snapshot has a [heap] (brk moves it)


_ANON, _FILE_PRIV, _FILE_SHARED = MAP_PRIVATE | MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED
WORKLOADS = {w.name: w for w in (
    Workload("pft", _pft, "gormanm/pft pft.c alloc_test_memory()/pft_loop(); mmtests pft-bench", True, ("thread",),
             1024, "pft"),
    Workload("pft-multimap", _pft_multimap, "gormanm/pft pft.c -M (commit 8fe554a3)", True, ("thread",), 1024, "pft"),
    Workload("page_fault1", _wis(_fault_loop(_ANON, -1, True), "page_fault1"),
             "will-it-scale tests/page_fault1.c", True, comm="page_fault1"),
    Workload("page_fault2", _wis(_fault_loop(_FILE_PRIV, 3, True), "page_fault2"),
             "will-it-scale tests/page_fault2.c", True, comm="page_fault2"),
    Workload("page_fault3", _wis(_fault_loop(_FILE_SHARED, 3, True), "page_fault3"),
             "will-it-scale tests/page_fault3.c", True, comm="page_fault3"),
    Workload("brk1", _wis(_brk_loop(False), "brk1"), "will-it-scale tests/brk1.c", False, default_pages=1,
             comm="brk1", heap=True),
    Workload("brk2", _wis(_brk_loop(True), "brk2"), "will-it-scale tests/brk2.c", False, default_pages=1,
             comm="brk2", heap=True),
    Workload("mmap1", _wis(_fault_loop(_ANON, -1, False), "mmap1"), "will-it-scale tests/mmap1.c", False,
             comm="mmap1"),
    Workload("mmap2", _wis(_fault_loop(_FILE_PRIV, 3, False), "mmap2"), "will-it-scale tests/mmap2.c", False,
             comm="mmap2"),
)}


def generate(workload: str, threads: int, pages: int | None = None, iterations: int = 1, mode: str = "thread",
             out=None, gap_ns: int = 200, slice_pages: int | None = None) -> tuple[str | None, str]:
    """Returns (perf script text, /proc/PID/maps snapshot); with ``out`` (a text file)
    the text goes there as it is made, for traces bigger than memory, and None comes
    back.  ``pages``: per task per iteration (default: the benchmark's); ``slice_pages``
    (pft only): each thread's slice, of which it touches the first ``pages``."""
    w = WORKLOADS[workload]
    if mode not in w.modes:
        raise ValueError(f"{workload} is synthesised in {' or '.join(w.modes)} mode only, not {mode!r}")
    kw = {"gap_ns": gap_ns}
    if slice_pages is not None:
        if not workload.startswith("pft"):
            raise ValueError(f"slice_pages is pft's (bytes_per_test), not {workload}'s")
        kw["slice_pages"] = slice_pages
    given = out is not None
    sink = out if given else io.StringIO()
    for _, line in w.events(threads, pages or w.default_pages, iterations, mode, **kw):
        sink.write(line)
    pages = pages or w.default_pages
    spacing = max(slice_pages or 0, pages)
    regions = tuple((a, a + spacing * PAGE) for a in _multimap_slices(threads, spacing * PAGE)) \
        if workload == "pft-multimap" else ()
    return None if given else sink.getvalue(), _maps(w.comm, w.heap, regions)
