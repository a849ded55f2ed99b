"""Synthetic traces in the same schema as recorded ones, for workloads the seed's
evaluation used but that a 2-CPU machine cannot record at 56 threads.

The generator writes ``perf script`` text (the ``replay record`` field list) and the
real ingester reads it, so a synthetic trace is indistinguishable downstream from a
recorded one - events, ops, VMAs - and is labelled by its ``source``.

* ``pft``: mmtests pft, threads mode.  One MAP_PRIVATE|MAP_ANONYMOUS region (one VMA,
  one anon_vma) split into per-thread slices; each thread writes one byte per 4 KiB
  page, one write fault each; the region is munmapped and mapped again per iteration.
* ``page_fault1`` (will-it-scale): each thread mmaps its own 128 MiB anonymous
  region, writes one byte per page, munmaps it, and repeats.
"""

from __future__ import annotations

import io

PAGE = 4096
MM = 0xFFFF888104D6A000
BASE = 0x7F0000000000
PID = 1000


def _line(out, tid, t_ns, ev, payload):
    out.write(f"{'pft':>16} {PID:5d}/{tid:<5d} [{tid % 1000:03d}] {t_ns // 1_000_000_000:5d}.{t_ns % 1_000_000_000:09d}: "
              f"{ev}: {payload}\n")


def _pf(out, tid, t, addr):
    _line(out, tid, t, "exceptions:page_fault_user", f"address={addr:#x} ip=0x401136 error_code=0x6")


def _syscall(out, tid, t, name, args, ret, hold_ns=500):
    _line(out, tid, t, f"syscalls:sys_enter_{name}", args)
    _line(out, tid, t + 100, "mmap_lock:mmap_lock_start_locking", f"mm={MM:#x} memcg_id=1 write=true")
    _line(out, tid, t + 150, "mmap_lock:mmap_lock_acquire_returned", f"mm={MM:#x} memcg_id=1 write=true success=true")
    _line(out, tid, t + 150 + hold_ns, "mmap_lock:mmap_lock_released", f"mm={MM:#x} memcg_id=1 write=true")
    _line(out, tid, t + 250 + hold_ns, f"syscalls:sys_exit_{name}", f"{ret:#x}")
    return t + 300 + hold_ns


def _mmap_args(length):
    return (f"addr: 0x00000000, len: {length:#010x}, prot: 0x00000003, flags: 0x00000022, "
            f"fd: 0xffffffff, off: 0x00000000")


def pft(threads: int, pages_per_thread: int, iterations: int = 1, gap_ns: int = 200, out=None) -> tuple[str | None, str]:
    """Returns (perf script text, /proc/PID/maps snapshot); with ``out`` (a text file)
    the text goes there as it is made, for traces bigger than memory, and None comes back."""
    given = out is not None
    out = out if given else io.StringIO()
    t = 1_000_000_000
    size = threads * pages_per_thread * PAGE
    main = PID
    for _ in range(iterations):
        t = _syscall(out, main, t, "mmap", _mmap_args(size), BASE)
        # the threads start together and touch their slices in lockstep, gap_ns apart
        for p in range(pages_per_thread):
            for k in range(threads):
                _pf(out, PID + 1 + k, t + p * gap_ns + k, BASE + (k * pages_per_thread + p) * PAGE)
        t += pages_per_thread * gap_ns + threads + 1000
        t = _syscall(out, main, t, "munmap", f"addr: {BASE:#x}, len: {size:#010x}", 0)
    return None if given else out.getvalue(), _maps()


def page_fault1(threads: int, pages: int = 32768, iterations: int = 1, gap_ns: int = 200) -> tuple[str, str]:
    out = io.StringIO()
    t = 1_000_000_000
    size = pages * PAGE
    clock = {k: t for k in range(threads)}
    for _ in range(iterations):
        for k in range(threads):
            tid = PID + 1 + k
            base = BASE + k * (size + (1 << 30))
            c = _syscall(out, tid, clock[k] + k * 10, "mmap", _mmap_args(size), base)
            for p in range(pages):
                _pf(out, tid, c + p * gap_ns, base + p * PAGE)
            c += pages * gap_ns + 500
            clock[k] = _syscall(out, tid, c, "munmap", f"addr: {base:#x}, len: {size:#010x}", 0)
    text = "".join(sorted(out.getvalue().splitlines(keepends=True), key=_ts))
    return text, _maps()


def _ts(line: str) -> float:
    return float(line.split("]", 1)[1].split(":", 1)[0])


def _maps() -> str:
    return (f"# synthetic: /proc/{PID}/maps\n"
            "00400000-00401000 r--p 00000000 00:00 1 /synthetic/pft\n"
            "00401000-00402000 r-xp 00001000 00:00 1 /synthetic/pft\n"
            "7ffff7fd0000-7ffff7ff0000 rw-p 00000000 00:00 0 [stack]\n")


WORKLOADS = {"pft": pft, "page_fault1": page_fault1}
