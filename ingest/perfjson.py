"""``perf data convert --to-json`` output: samples without event names.

perf's JSON writer (tools/perf/util/data-convert-json.c, since v5.13) emits one object
per sample with timestamp, pid, tid, cpu, comm and, where perf was built with
libtraceevent, each tracepoint field as a string (pointers and longs as ``0x…``, other
integers in decimal).  There is no event-name key, so events are told apart by their
field sets:

* address + ip + error_code: a page fault.  On x86 ``error_code`` bit 2 (X86_PF_USER)
  says user or kernel mode, which is exactly what separates the two tracepoints
  (arch/x86/mm/fault.c, trace_page_fault_entries); elsewhere the error code does not
  say (RISC-V's is scause), so the ip does: in the kernel's half of the address space
  (ingest/arch.py) it was a kernel-mode fault.
* mm + write [+ success]: an mmap_lock event; with ``success`` it is
  acquire_returned, else start_locking or released, told apart by whether this thread
  holds that lock (the trace_mmap_lock_* calls in include/linux/mmap_lock.h bracket it;
  mmap_write_downgrade traces a read acquire_returned with no release of the write hold).
* mm + mt: mmap:exit_mmap.
* ``__syscall_nr``: a syscalls:sys_enter_*/sys_exit_* event (exit events carry ``ret``);
  the recording architecture's syscall numbers name it (ingest/arch.py).

Samples are streamed one object at a time; memory stays bounded by one sample.
Samples with no tracepoint fields (perf built without libtraceevent, e.g. perf 6.1 in
Debian 12) are kept as ``other`` and counted (``Counts.fieldless``; ingest warns).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from . import arch as archmod
from .schema import EVENTS_SCHEMA, FAULT_EVENTS, REJECTS_SCHEMA, REQUIRED
from .scan import FIELDS, KEY_TO_FIELD
from .text import Counts

# what every sample has, tracepoint or not (data-convert-json.c, process_sample_event())
SAMPLE_KEYS = frozenset({"timestamp", "cpu", "pid", "tid", "comm", "callchain", "ip", "sym", "dso", "period"})
BATCH = 65536


def _num(v, hex_always=False):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    s = str(v).strip()
    if s in ("true", "false"):
        return int(s == "true")
    return int(s, 16) if hex_always and not s.startswith("0x") else int(s, 0)


def _int_range(t: pa.DataType):
    if pa.types.is_dictionary(t):
        t = t.value_type
    if not pa.types.is_integer(t):
        return None
    bits = t.bit_width
    return (0, 1 << bits) if pa.types.is_unsigned_integer(t) else (-(1 << (bits - 1)), 1 << (bits - 1))


# integer columns -> [lo, hi) of their Arrow type: a sample's value outside it rejects the
# sample (as the text scanner rejects a line), instead of failing the whole file
_RANGE = {f.name: r for f in EVENTS_SCHEMA if (r := _int_range(f.type)) is not None}


def _check_row(row: dict) -> None:
    for k in ("cpu", "pid", "tid"):
        v = row[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{k} {v!r} is not an integer")
    if row["tid"] is None:
        raise ValueError("sample without tid")
    if row["comm"] is not None and not isinstance(row["comm"], str):
        raise ValueError(f"comm {row['comm']!r} is not a string")
    for k, v in row.items():
        lo_hi = _RANGE.get(k)
        if lo_hi is not None and v is not None and not lo_hi[0] <= v < lo_hi[1]:
            raise ValueError(f"{k} {v} out of range")
    if row["ts_ns"] < 0 or (row["cpu"] is not None and row["cpu"] < 0):
        raise ValueError("negative timestamp or cpu")


def _timestamp(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"timestamp {v!r} is not an integer")
    return v


def _classify(sample: dict, held: dict, arch: str = archmod.DEFAULT_ARCH) -> str:
    if "__syscall_nr" in sample:
        name = archmod.SYSCALLS[arch].get(int(_num(sample["__syscall_nr"])))
        if name is None:
            return "other"
        return f"sys_exit_{name}" if "ret" in sample else f"sys_enter_{name}"
    if "address" in sample and "error_code" in sample:
        if arch == "x86_64":
            return "page_fault_user" if _num(sample["error_code"]) & archmod.X86_PF_USER else "page_fault_kernel"
        kernel = archmod.kernel_mode_ip(np.array([_num(sample.get("ip", 0))], np.uint64))[0]
        return "page_fault_kernel" if kernel else "page_fault_user"
    if "mm" in sample and "mt" in sample:  # mmap:exit_mmap (include/trace/events/mmap.h)
        return "exit_mmap"
    if "mm" in sample and "write" in sample:
        # Keyed by (tid, mm), not by mode: mmap_write_downgrade traces a read acquire
        # while the write hold is untraced as released, and the read release ends both.
        key = (sample.get("tid"), sample["mm"])
        if "success" in sample:
            if _num(sample["success"]):
                held[key] = True
            return "mmap_lock_acquired"
        if held.pop(key, False):
            return "mmap_lock_released"
        return "mmap_lock_start"
    return "other"


def iter_samples(stream, chunk_size: int = 1 << 20, head: bytes = b""):
    """Yield (index, sample dict) from the "samples" array without loading the file."""
    dec = json.JSONDecoder()
    buf = head.decode("utf-8", errors="replace")
    pending = b""
    eof = False

    def more():
        nonlocal buf, pending, eof
        data = stream.read(chunk_size)
        if not data:
            eof = True
            return False
        data = pending + data
        try:
            text = data.decode("utf-8")
            pending = b""
        except UnicodeDecodeError as e:
            text = data[: e.start].decode("utf-8")
            pending = data[e.start:]
        buf += text
        return True

    while '"samples"' not in buf:
        if not more():
            raise ValueError("no \"samples\" array")
    pos = buf.index('"samples"')
    while "[" not in buf[pos:]:
        if not more():
            raise ValueError("truncated before the samples array")
    buf = buf[buf.index("[", pos) + 1:]
    idx = 0
    while True:
        s = buf.lstrip().lstrip(",").lstrip()
        if s.startswith("]"):
            return
        try:
            obj, end = dec.raw_decode(s)
        except json.JSONDecodeError:
            if eof or not more():
                if s.strip():
                    raise ValueError(f"truncated JSON in sample {idx + 1}") from None
                return
            continue
        buf = s[end:]
        idx += 1
        yield idx, obj


def decode_json(stream, head: bytes = b"", arch: str = archmod.DEFAULT_ARCH):
    """Yield (events table, rejects table) batches and return the Counts at the end."""
    counts = Counts()
    held: dict = {}
    rows: list[dict] = []
    rejects: list[tuple[int, str, str]] = []

    def flush():
        cols = {f.name: [] for f in EVENTS_SCHEMA}
        for r in rows:
            for k in cols:
                cols[k].append(r.get(k))
        ev = pa.Table.from_pydict(cols, schema=pa.schema([f.with_type(f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in EVENTS_SCHEMA]))
        ev = pa.Table.from_arrays(
            [c.dictionary_encode().cast(EVENTS_SCHEMA.field(i).type) if pa.types.is_dictionary(EVENTS_SCHEMA.field(i).type) else c
             for i, c in enumerate(ev.columns)], schema=EVENTS_SCHEMA)
        rj = pa.Table.from_pylist([{"line": a, "reason": b, "text": c} for a, b, c in rejects], schema=REJECTS_SCHEMA)
        rows.clear()
        rejects.clear()
        return ev, rj

    for idx, smp in iter_samples(stream, head=head):
        counts.lines += 1
        if not isinstance(smp, dict):
            counts.malformed += 1
            rejects.append((idx, "sample is not a JSON object", json.dumps(smp)[:400]))
            continue
        try:
            event = _classify(smp, held, arch)
            row = {"seq": idx, "ts_ns": _timestamp(smp["timestamp"]), "cpu": smp.get("cpu"), "pid": smp.get("pid"),
                   "tid": smp.get("tid"), "comm": smp.get("comm"), "event": event, "tracepoint": None}
            extra = {}
            for k, v in smp.items():
                if k in SAMPLE_KEYS or k == "__syscall_nr":
                    if k == "ip" and "address" in smp:
                        row["ip"] = _num(v)
                    continue
                fid = KEY_TO_FIELD.get(k)
                if fid is None:
                    extra[k] = v
                elif fid >= 0:
                    val = _num(v, hex_always=(k == "mm"))
                    name = FIELDS[fid]
                    if name in ("write", "success"):
                        val = bool(val)
                    elif name in ("len", "new_len", "flags", "off", "ret") and val >= 1 << 63:
                        val -= 1 << 64
                    elif name in ("fd", "prot") and val >= 1 << 31:
                        val = (val & 0xFFFFFFFF) - (1 << 32) if val & 0x80000000 else val & 0xFFFFFFFF
                    row[name] = val
            if extra:
                row["raw"] = json.dumps(extra, sort_keys=True)
            if event in FAULT_EVENTS:
                w = archmod.fault_write(arch, np.array([row.get("error_code") or 0], np.int64))
                row["write"] = None if w is None or row.get("error_code") is None else bool(w[0])
                if row["write"] is None:
                    counts.fault_access_unknown += 1
            need = [f for f in REQUIRED.get(event, ()) if row.get(f) is None]
            if need:
                raise ValueError(f"{event} without {', '.join(need)}")
            _check_row(row)
        except (KeyError, ValueError, TypeError) as e:
            counts.malformed += 1
            rejects.append((idx, str(e) if isinstance(e, ValueError) else f"missing or bad field {e}", json.dumps(smp)[:400]))
            continue
        counts.parsed += 1
        counts.per_event[event] = counts.per_event.get(event, 0) + 1
        if smp.keys() <= SAMPLE_KEYS:
            counts.fieldless += 1
        rows.append(row)
        if len(rows) >= BATCH:
            yield flush()
    if rows or rejects:
        yield flush()
    return counts

