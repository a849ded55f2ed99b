"""``perf trace`` output: strace-like syscall lines and ``--pf`` page-fault lines.

``perf trace -e mmap,munmap,mprotect --pf=all -- CMD`` prints (tools/perf/builtin-trace.c,
perf 6.1: trace__fprintf_entry_head(), trace__sys_exit(), trace__pgfault())::

    0.301 ( 0.022 ms): python3/8640 mmap(len: 8192, prot: READ|WRITE, flags: PRIVATE|ANONYMOUS) = 0x7fc17cb89000
    0.336 ( 0.000 ms): python3/8640 minfault [_dl_init_paths+0xce] => //anon@0x7fc17cb89008 (d.)

* Time is milliseconds since the first event, to the microsecond (``%10.3f``); the
  duration likewise.  One syscall line is both events: ``sys_enter_*`` at the printed
  time and ``sys_exit_*`` at time + duration, sharing the line's ``seq``.  A call
  interrupted by another event prints ``name(args) ...`` (the enter) and later
  `` ... [continued]: name()) = ret``, whose time is the call's entry (the exit is at
  time + duration).  No CPU column; ``comm/tid`` as ``%.14s/%d``.
* Arguments are the tracepoint's field names; values that are zero are not printed
  (``show_zeros`` off), and for MAP_ANONYMOUS mmap masks ``fd`` and ``off``
  (syscall_arg__scnprintf_mmap_flags()): absent means 0, and ``fd`` is then null.
  ``prot``, ``flags`` and madvise ``behavior`` are printed by name; the numbers come
  from include/uapi/asm-generic/mman-common.h, asm-generic/mman.h, linux/mman.h and
  x86's MAP_32BIT.  Errors print ``-1 ENOMEM (...)``: ``ret`` is -errno.
* Faults print ``[ip location] => target (map type, level)``.  The level is the
  sample's cpumode: ``k`` a kernel-mode fault (page_fault_kernel), else user.  The
  target is the raw address only where perf found no map (``0x...``) or the map is one
  perf does not relocate - ``//anon``, ``/dev/zero``, ``/anon_hugepage``, ``[stack``,
  ``[heap]``, ``/SYSV`` (tools/perf/util/map.c, map__new(): identity__map_ip for
  is_anon_memory() and is_no_dso_memory()).  On any other file-backed map perf prints
  ``file@offset``, an offset in the file, not the address: those faults are kept as
  ``other`` and counted.  perf trace does not say read or write: ``write`` is null.
"""

from __future__ import annotations

import errno
import re

import pyarrow as pa

from .schema import EVENTS_SCHEMA, REJECTS_SCHEMA, SYSCALLS
from .scan import FIELDS, KEY_TO_FIELD
from .text import Counts

BATCH = 65536
_HEAD = re.compile(r"^\s*(\d+)\.(\d+) \((?:\s*(\d+)\.(\d+) ms|\s*)\): (.*)$")
_TASK = re.compile(r"^(.{0,14}?)/(\d+) (.*)$")
_FAULT = re.compile(r"^(min|maj)fault \[(.*?)\] => (.+) \((.)(.)\)\s*$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s*= (.+?)\s*$")
_ENTER_ONLY = re.compile(r"^(\w+)\((.*?)\)?\s+\.\.\.\s*$")
_CONTINUED = re.compile(r"^\s*\.\.\. \[continued\]: (\w+)\(\)\)\s*= (.+?)\s*$")
_LOST = re.compile(r"^LOST (\d+) events!\s*$")  # trace__process_event(), PERF_RECORD_LOST
_ERR = re.compile(r"^-1 ([A-Z0-9]+)(?: \(.*\))?$")

PROT = {"NONE": 0x0, "READ": 0x1, "WRITE": 0x2, "EXEC": 0x4, "SEM": 0x8, "GROWSDOWN": 0x01000000,
        "GROWSUP": 0x02000000}
MAP_FLAGS = {"SHARED": 0x01, "PRIVATE": 0x02, "SHARED_VALIDATE": 0x03, "DROPPABLE": 0x08, "FIXED": 0x10,
             "ANONYMOUS": 0x20, "32BIT": 0x40, "GROWSDOWN": 0x0100, "DENYWRITE": 0x0800, "EXECUTABLE": 0x1000,
             "LOCKED": 0x2000, "NORESERVE": 0x4000, "POPULATE": 0x8000, "NONBLOCK": 0x10000, "STACK": 0x20000,
             "HUGETLB": 0x40000, "SYNC": 0x80000, "FIXED_NOREPLACE": 0x100000, "UNINITIALIZED": 0x4000000}
MREMAP_FLAGS = {"MAYMOVE": 1, "FIXED": 2, "DONTUNMAP": 4}
MADV = {"NORMAL": 0, "RANDOM": 1, "SEQUENTIAL": 2, "WILLNEED": 3, "DONTNEED": 4, "FREE": 8, "REMOVE": 9,
        "DONTFORK": 10, "DOFORK": 11, "MERGEABLE": 12, "UNMERGEABLE": 13, "HUGEPAGE": 14, "NOHUGEPAGE": 15,
        "DONTDUMP": 16, "DODUMP": 17, "WIPEONFORK": 18, "KEEPONFORK": 19, "COLD": 20, "PAGEOUT": 21,
        "POPULATE_READ": 22, "POPULATE_WRITE": 23, "DONTNEED_LOCKED": 24, "COLLAPSE": 25, "HWPOISON": 100,
        "SOFT_OFFLINE": 101, "GUARD_INSTALL": 102, "GUARD_REMOVE": 103}
_SYMBOLS = {("mmap", "prot"): PROT, ("mprotect", "prot"): PROT, ("mmap", "flags"): MAP_FLAGS,
            ("mremap", "flags"): MREMAP_FLAGS, ("madvise", "behavior"): MADV}
# maps perf does not relocate: the printed value is the address (tools/perf/util/map.c)
_IDENTITY_MAPS = ("//anon", "/dev/zero", "/anon_hugepage", "[stack", "[heap]", "/SYSV")
_SIGNED = {"len", "new_len", "flags", "off", "ret"}


def _value(sc: str, key: str, text: str) -> int:
    t = text.strip()
    if t == "NULL":
        return 0
    m = re.match(r"^(-?\d+)<.*>$", t)  # fd with its path
    if m:
        return int(m.group(1))
    table = _SYMBOLS.get((sc, key))
    if table is not None and not re.match(r"^-?(0x[0-9a-fA-F]+|\d+)$", t):
        v = 0
        for part in t.split("|"):
            v |= table[part] if part in table else int(part, 0)  # leftover bits print as hex
        return v
    return int(t, 0)


def _fit(name: str, v: int) -> int:
    if name in _SIGNED or name == "fd" or name == "prot":
        if v >= 1 << 63:
            v -= 1 << 64
    if name in ("fd", "prot") and not -(1 << 31) <= v < 1 << 31:
        raise ValueError(f"{name} {v} out of range")
    if not -(1 << 63) <= v < 1 << 64:
        raise ValueError(f"{name} {v} out of range")
    return v


def _args(sc: str, text: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(", "))):
        key, sep, val = part.partition(": ")
        if not sep:
            raise ValueError(f"argument {part!r} is not 'name: value'")
        fid = KEY_TO_FIELD.get(key)
        if fid is None or fid < 0:
            continue
        out[FIELDS[fid]] = _fit(FIELDS[fid], _value(sc, key, val))
    return out


def _ret(text: str) -> int:
    m = _ERR.match(text)
    if m:
        code = getattr(errno, m.group(1), None)
        if code is None:
            raise ValueError(f"unknown errno {m.group(1)}")
        return -code
    return _fit("ret", int(text.split()[0], 0))


_DEFAULTS = {  # fields perf trace leaves out when they are zero
    "mmap": ("address", "len", "prot", "flags", "off"), "munmap": ("address", "len"),
    "mprotect": ("address", "len", "prot"), "mremap": ("address", "len", "new_len", "flags", "new_addr"),
    "brk": ("address",), "madvise": ("address", "len", "flags"),
}


def _enter(sc: str, args: str) -> dict:
    row = {f: 0 for f in _DEFAULTS[sc]}
    row.update(_args(sc, args))
    if sc == "mmap":
        row.setdefault("fd", None if row["flags"] & MAP_FLAGS["ANONYMOUS"] else 0)
    return row


def _ns(sec: str, frac: str, scale: int) -> int:
    """``ms.frac`` (scale 1e6 ns per unit) -> ns."""
    return int(sec) * scale + int(frac.ljust(6, "0")[:6]) * (scale // 1_000_000)


def _parse(line: str, seq: int) -> tuple[list[dict], str | None]:
    """One line -> (event rows, None) or ([], reason)."""
    m = _HEAD.match(line)
    if not m:
        return [], "not a line of this format"
    ts = _ns(m.group(1), m.group(2), 1_000_000)
    dur = _ns(m.group(3), m.group(4), 1_000_000) if m.group(3) is not None else None
    body = m.group(5)
    t = _TASK.match(body)
    if not t:
        # "comm/tid" is printed only when more than one thread is traced (trace->multiple_threads)
        return [], "perf trace line without comm/tid (trace with inherit, as perf trace -- CMD does)"
    base = {"seq": seq, "ts_ns": ts, "comm": t.group(1).strip(), "tid": int(t.group(2)), "cpu": None, "pid": None}
    body = t.group(3)
    f = _FAULT.match(body)
    if f:
        target, level = f.group(3), f.group(5)
        event = "page_fault_kernel" if level == "k" else "page_fault_user"
        name, _, off = target.rpartition("@")
        row = dict(base, tracepoint=f"{f.group(1)}fault", raw=body)
        if not name and target.startswith("0x"):
            row.update(event=event, address=int(target, 16))
        elif name.startswith(_IDENTITY_MAPS):
            row.update(event=event, address=int(off, 16))
        else:
            row.update(event="other")  # file@offset: not the address
        return [row], None
    c = _CONTINUED.match(body)
    if c:
        sc = c.group(1)
        if sc not in SYSCALLS:
            return [dict(base, event="other", tracepoint=sc, raw=body)], None
        return [dict(base, ts_ns=ts + (dur or 0), event=f"sys_exit_{sc}", tracepoint=sc, ret=_ret(c.group(2)))], None
    c = _CALL.match(body)
    if c:
        sc = c.group(1)
        if sc not in SYSCALLS:
            return [dict(base, event="other", tracepoint=sc, raw=body)], None
        enter = dict(base, event=f"sys_enter_{sc}", tracepoint=sc, **_enter(sc, c.group(2)))
        exit_ = dict(base, ts_ns=ts + (dur or 0), event=f"sys_exit_{sc}", tracepoint=sc, ret=_ret(c.group(3)))
        return [enter, exit_], None
    c = _ENTER_ONLY.match(body)
    if c:
        sc = c.group(1)
        if sc not in SYSCALLS:
            return [dict(base, event="other", tracepoint=sc, raw=body)], None
        return [dict(base, event=f"sys_enter_{sc}", tracepoint=sc, **_enter(sc, c.group(2)))], None
    return [], "not a perf trace syscall or fault line"


def looks_like(lines: list[bytes]) -> int:
    """How many of these lines have perf trace's prefix (for format detection)."""
    return sum(1 for ln in lines if _HEAD.match(ln.decode("utf-8", "replace")))


def _table(rows: list[dict]) -> pa.Table:
    plain = pa.schema([f.with_type(f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                       for f in EVENTS_SCHEMA])
    cols = {f.name: [r.get(f.name) for r in rows] for f in EVENTS_SCHEMA}
    ev = pa.Table.from_pydict(cols, schema=plain)
    return pa.Table.from_arrays(
        [c.dictionary_encode().cast(EVENTS_SCHEMA.field(i).type) if pa.types.is_dictionary(EVENTS_SCHEMA.field(i).type)
         else c for i, c in enumerate(ev.columns)], schema=EVENTS_SCHEMA)


def decode_perf_trace(stream, head: bytes = b""):
    """Yield (events, rejects) batches; return the Counts at the end."""
    counts = Counts()
    rows: list[dict] = []
    rejects: list[tuple[int, str, str]] = []

    def lines():
        rest = b""
        data = head
        while True:
            if not data:
                data = stream.read(1 << 20)
                if not data:
                    break
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            data = b""
            yield from parts
        if rest:
            yield rest

    def flush():
        ev = _table(rows)
        rj = pa.Table.from_pylist([{"line": a, "reason": b, "text": c} for a, b, c in rejects], schema=REJECTS_SCHEMA)
        rows.clear()
        rejects.clear()
        return ev, rj

    for seq, raw in enumerate(lines(), 1):
        counts.lines += 1
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.strip():
            counts.blank += 1
            continue
        lost = _LOST.match(line)
        if lost:
            counts.lost_records += 1
            counts.lost_events += int(lost.group(1))
            continue
        try:
            new, reason = _parse(line, seq)
        except (ValueError, KeyError) as e:
            new, reason = [], f"bad value: {e}"
        if reason:
            counts.malformed += 1
            rejects.append((seq, reason, line[:400]))
        else:
            counts.parsed += 1
            for r in new:
                counts.per_event[r["event"]] = counts.per_event.get(r["event"], 0) + 1
                if r["event"].startswith("page_fault"):
                    counts.fault_access_unknown += 1
                elif r["event"] == "other" and r["tracepoint"].endswith("fault"):
                    counts.faults_file_offset += 1
            rows.extend(new)
        if len(rows) >= BATCH:
            yield flush()
    if rows or rejects:
        yield flush()
    return counts
