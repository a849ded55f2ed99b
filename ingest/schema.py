"""The events dataset's schema: typed columns, the event vocabulary, required fields.

One row per trace event.  Integers stay integers (addresses are uint64, return values
int64, flags and lengths int64), booleans are booleans, and the strings that repeat
(comm, event, tracepoint) are dictionary-encoded.  ``mm`` is the lock's mm_struct
pointer as the trace prints it (hashed by ftrace, raw in perf/trace-cmd): a key that is
stable within one boot, stored as uint64 rather than text so joins stay cheap.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# Canonical event names.  Tracepoints outside this list are kept as ``other`` with
# their original name in ``tracepoint`` and the payload in ``raw``.
SYSCALLS = ("mmap", "munmap", "mprotect", "mremap", "brk", "madvise")
EVENTS = (
    "page_fault_user",
    "page_fault_kernel",
    "mmap_lock_start",  # mmap_lock:mmap_lock_start_locking
    "mmap_lock_acquired",  # mmap_lock:mmap_lock_acquire_returned
    "mmap_lock_released",
    *(f"sys_enter_{s}" for s in SYSCALLS),
    *(f"sys_exit_{s}" for s in SYSCALLS),
    "exit_mmap",
    # perf's minor-faults / major-faults software events (ingest/text.py FAULT_END_EVENTS):
    # mm_account_fault() emits one as the completing handle_mm_fault() call returns
    "fault_end",
    "vm_unmapped_area",
    # sched:sched_switch (kernel/sched/core.c __schedule()): the line's task is the one
    # switched out (prev); prev_state says whether it was still runnable (R, R+: preempted)
    "sched_switch",
    "other",
)
EVENT_CODE = {name: i for i, name in enumerate(EVENTS)}
FAULT_EVENTS = ("page_fault_user", "page_fault_kernel")

ALIASES = {
    "mmap_lock_start_locking": "mmap_lock_start",
    "mmap_lock_acquire_returned": "mmap_lock_acquired",
}

# Fields each event must carry to be usable; a line without them is malformed.  A
# fault's error_code is required only on x86, where it is the record of the access
# (ingest/arch.py); perf page-faults samples and other architectures may lack it.
REQUIRED = {
    "page_fault_user": ("address", "error_code"),
    "page_fault_kernel": ("address", "error_code"),
    "mmap_lock_start": ("mm", "write"),
    "mmap_lock_acquired": ("mm", "write", "success"),
    "mmap_lock_released": ("mm", "write"),
    "sys_enter_mmap": ("address", "len", "prot", "flags", "fd", "off"),
    "sys_enter_munmap": ("address", "len"),
    "sys_enter_mprotect": ("address", "len", "prot"),
    "sys_enter_mremap": ("address", "len", "new_len", "flags", "new_addr"),
    "sys_enter_brk": ("address",),
    "sys_enter_madvise": ("address", "len", "flags"),
    **{f"sys_exit_{s}": ("ret",) for s in SYSCALLS},
}


def canonical_event(name: str) -> str:
    """Map a tracepoint name to the vocabulary (``exceptions:page_fault_user`` ->
    ``page_fault_user``; ``mmap_lock:mmap_lock_start_locking`` -> ``mmap_lock_start``)."""
    base = name.rsplit(":", 1)[-1]
    base = ALIASES.get(base, base)
    return base if base in EVENT_CODE else "other"


EVENT_TYPE = pa.dictionary(pa.int8(), pa.string())
STR_DICT = pa.dictionary(pa.int32(), pa.string())

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False, metadata={"doc": "input line number (1-based); JSON: sample index"}),
        pa.field("ts_ns", pa.int64(), metadata={"doc": "timestamp in ns (relative to the first event for perf trace); null for function_graph output lines"}),
        pa.field("cpu", pa.int16()),
        pa.field("pid", pa.int32(), metadata={"doc": "tgid; null when the format does not print it"}),
        pa.field("tid", pa.int32(), metadata={"doc": "thread id; null for function_graph output lines, which name no task"}),
        pa.field("comm", STR_DICT),
        pa.field("event", EVENT_TYPE, nullable=False),
        pa.field("tracepoint", STR_DICT, metadata={"doc": "event name as printed"}),
        pa.field("mm", pa.uint64(), metadata={"doc": "mm_struct pointer as printed (hashed in ftrace)"}),
        pa.field("write", pa.bool_(), metadata={
            "doc": "mmap_lock: write lock; page faults: write access from the error code as the arch defines it "
                   "(ingest/arch.py), null where the trace does not say (perf page-faults samples, perf trace, arm64)"}),
        pa.field("success", pa.bool_()),
        pa.field("address", pa.uint64(), metadata={"doc": "fault address; syscall addr/start/brk"}),
        pa.field("ip", pa.uint64()),
        pa.field("error_code", pa.uint32(), metadata={"doc": "page-fault error code as printed: x86 X86_PF_* bits, RISC-V scause"}),
        pa.field("len", pa.int64(), metadata={"doc": "len / len_in / old_len (mremap)"}),
        pa.field("new_len", pa.int64()),
        pa.field("new_addr", pa.uint64()),
        pa.field("prot", pa.int32()),
        pa.field("flags", pa.int64(), metadata={"doc": "mmap/mremap flags; madvise behavior"}),
        pa.field("fd", pa.int32()),
        pa.field("off", pa.int64()),
        pa.field("ret", pa.int64(), metadata={"doc": "syscall return value (negative errno on failure)"}),
        pa.field("next_tid", pa.int32(), metadata={"doc": "sched_switch: next_pid, the task switched in"}),
        pa.field("prev_state", STR_DICT, metadata={
            "doc": "sched_switch: prev_state as printed (R, R+ = preempted while runnable; S, D, ... = asleep)"}),
        pa.field("raw", pa.string(), metadata={"doc": "payload, kept where part of it has no typed column"}),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("text", pa.string()),
    ]
)

TRACES_SCHEMA = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("format", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("ingested_at", pa.timestamp("s", tz="UTC")),
        pa.field("hostname", pa.string()),
        pa.field("kernel", pa.string()),
        pa.field("nr_cpus", pa.int32()),
        pa.field("arch", pa.string(), metadata={
            "doc": "architecture the trace was decoded for (--arch, the trace's header, or 'x86_64 (assumed)')"}),
        pa.field("lines", pa.int64()),
        pa.field("parsed", pa.int64()),
        pa.field("header", pa.int64()),
        pa.field("blank", pa.int64()),
        pa.field("callchain", pa.int64()),
        pa.field("lost_records", pa.int64()),
        pa.field("lost_events", pa.int64()),
        pa.field("malformed", pa.int64()),
        pa.field("events", pa.int64()),
        pa.field("out_of_order", pa.int64(), metadata={
            "doc": "events earlier than the previous event on their CPU or thread (replay ops sorts by time)"}),
        pa.field("schema_version", pa.int32()),
        pa.field("tool_version", pa.string()),
        pa.field("maps_snapshot", pa.string(), metadata={"doc": "/proc/PID/maps text captured at record start"}),
    ]
)
