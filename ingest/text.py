"""Turn chunks of trace text into typed Arrow tables (events, rejects) and line counts.

The compiled scanner (``scan.py``) does the per-line work; this module does the
per-chunk work: it resolves event names and comms through their hashes (one Python
string per distinct value, not per line), checks each event carries its required
fields, and assembles Arrow arrays with nulls where a field was absent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replay.jit import notice_compile

from . import arch as archmod
from . import scan
from .schema import EVENT_CODE, EVENTS, EVENTS_SCHEMA, FAULT_EVENTS, REJECTS_SCHEMA, REQUIRED, canonical_event

_F = scan.F
_FAULT_CODES = np.array([EVENT_CODE[e] for e in FAULT_EVENTS], np.int8)


def _required_mask(arch: str) -> np.ndarray:
    """Per event code, the field bits an event must carry (ingest/arch.py: the error
    code is required only where it is the record of the access)."""
    mask = np.zeros(len(EVENTS), dtype=np.int32)
    for name, fields in REQUIRED.items():
        for f in fields:
            if f == "error_code" and name in FAULT_EVENTS and not archmod.error_code_required(arch):
                continue
            mask[EVENT_CODE[name]] |= 1 << _F[f]
    return mask


# perf's software page-fault event as perf script names it (tools/perf/util/parse-events.c,
# event_symbols_sw[PERF_COUNT_SW_PAGE_FAULTS]: "page-faults", alias "faults"), with or
# without modifiers ("page-faults:u").
SAMPLED_FAULT_EVENTS = ("page-faults", "faults")
# minor-faults / major-faults are not more faults: mm_account_fault() (mm/memory.c, the
# last call in handle_mm_fault()) emits one as the call that completes a fault returns -
# not for a call returning VM_FAULT_RETRY ("Incomplete faults will be accounted upon
# completion"), nor an error, nor get_user_pages() (no regs) - with the fault's address.
# They become ``fault_end`` events, which the op builder pairs with the thread's fault
# (replay/ops.py, service time); ``replay record`` records them (replay/recording.py).
FAULT_END_EVENTS = ("minor-faults", "major-faults")
# Which of the two: mm_account_fault() counts a fault major when the completing call
# returned VM_FAULT_MAJOR (the page was read: filemap_fault(), do_swap_page()) or the
# fault had retried (FAULT_FLAG_TRIED), and emits PERF_COUNT_SW_PAGE_FAULTS_MAJ
# ("major-faults") for it, else _MIN.  perf trace's --pf lines are those same events,
# printed "majfault" / "minfault" (tools/perf/builtin-trace.c, trace__pgfault()).  The
# events keep the name as printed (``tracepoint``); the op builder reads it there
# (replay/ops.py, fault kind).
FAULT_MAJOR = {"major-faults": 1, "minor-faults": 0, "majfault": 1, "minfault": 0}


def fault_major(tracepoint: str | None) -> int:
    """1 for a major fault's accounting event, 0 for a minor one's, -1 for any other event."""
    return FAULT_MAJOR.get((tracepoint or "").split(":", 1)[0], -1)


def is_sampled_fault(tracepoint: str) -> bool:
    return tracepoint.split(":", 1)[0] in SAMPLED_FAULT_EVENTS


def is_fault_end(tracepoint: str) -> bool:
    return tracepoint.split(":", 1)[0] in FAULT_END_EVENTS

_EVENT_DICT = pa.array(EVENTS, pa.string())
DIALECTS = {"perf-script": scan.DIALECT_PERF, "perf-data": scan.DIALECT_PERF, "ftrace": scan.DIALECT_FTRACE,
            "trace-cmd": scan.DIALECT_FTRACE, "trace-dat": scan.DIALECT_FTRACE}


@dataclass
class Counts:
    lines: int = 0
    parsed: int = 0
    header: int = 0
    blank: int = 0
    callchain: int = 0
    lost_records: int = 0
    lost_events: int = 0
    malformed: int = 0
    per_event: dict = field(default_factory=dict)
    fieldless: int = 0  # perf JSON: samples with no tracepoint fields at all
    raw_clock: int = 0  # ftrace lines whose timestamp is a raw counter, not time
    fault_samples: int = 0  # perf page-faults samples made into faults
    fault_samples_no_addr: int = 0  # ... printed without the sample address (kept as other)
    fault_samples_period: int = 0  # ... whose sample period was over 1 (each stands for several faults)
    fault_samples_max_period: int = 0
    fault_access_unknown: int = 0  # faults whose read/write the trace does not say
    faults_file_offset: int = 0  # perf trace faults printed as file@offset, not an address (kept as other)

    def add_status(self, status: np.ndarray) -> None:
        bc = np.bincount(status, minlength=6)
        self.lines += int(status.shape[0])
        self.parsed += int(bc[scan.PARSED])
        self.header += int(bc[scan.HEADER])
        self.blank += int(bc[scan.BLANK])
        self.callchain += int(bc[scan.CALLCHAIN])
        self.lost_records += int(bc[scan.LOST])
        self.malformed += int(bc[scan.MALFORMED])

    def accounted(self) -> int:
        return self.parsed + self.header + self.blank + self.callchain + self.lost_records + self.malformed


_SCHED_SWITCH = EVENT_CODE["sched_switch"]
PREV_STATE_TYPE = EVENTS_SCHEMA.field("prev_state").type


def _prev_state(raw: pa.Array, ev_code: np.ndarray) -> pa.Array:
    """sched_switch's prev_state, as printed ("R", "R+", "S", "D", "D|K"...), from its
    payload (a sched_switch payload always lands in ``raw``: prev_comm and the prios have
    no typed column); null for every other event and where the payload has none."""
    sw = ev_code == _SCHED_SWITCH
    if not sw.any():
        return pa.nulls(len(ev_code), PREV_STATE_TYPE)
    got = pc.extract_regex(raw.filter(pa.array(sw)), r"(?:^|\s)prev_state=(?P<s>\S+)")
    state = np.full(len(ev_code), None, dtype=object)
    state[np.flatnonzero(sw)] = pc.struct_field(got, [0]).to_numpy(zero_copy_only=False)
    return pa.array(state, pa.string()).dictionary_encode().cast(PREV_STATE_TYPE)


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _tracepoint_name(buf: np.ndarray, s: int, e: int, hint: int) -> str:
    """The tracepoint's name: as printed, except ftrace's syscall shapes
    (``sys_mmap(...)`` / ``sys_mmap -> ret``), which are named as the tracepoints are."""
    if hint in scan.HINT_NAMES:
        return scan.HINT_NAMES[hint]
    name = _decode(bytes(buf[s:e]))
    if hint and name.startswith("sys_"):
        name = ("sys_enter_" if hint == scan.HINT_SYS_ENTER else "sys_exit_") + name[4:]
    return name


class _Interner:
    """Hash -> dense dictionary code, shared by all chunks of one trace."""

    def __init__(self) -> None:
        self.tab_h = np.zeros(1 << 12, np.uint64)
        self.tab_c = np.zeros(1 << 12, np.int32)
        self.values: list[str | None] = []

    def codes(self, hashes: np.ndarray, example_text) -> np.ndarray:
        out = np.empty(len(hashes), np.int32)
        new_rows = np.empty(len(hashes), np.int64)
        i = 0
        while True:
            i, ncodes, nnew = scan.intern(hashes, out, i, self.tab_h, self.tab_c, len(self.values), new_rows)
            for r in new_rows[:nnew].tolist():
                self.values.append(example_text(r))
            if i == len(hashes):
                return out
            self._grow()

    def _grow(self) -> None:
        used = self.tab_h != 0
        keys, codes = self.tab_h[used], self.tab_c[used]
        keys = keys[np.argsort(codes)]
        self.tab_h = np.zeros(len(self.tab_h) * 4, np.uint64)
        self.tab_c = np.zeros(len(self.tab_c) * 4, np.int32)
        scan.intern(keys, np.empty(len(keys), np.int32), 0, self.tab_h, self.tab_c, 0, np.empty(len(keys), np.int64))

    def dictionary(self) -> pa.Array:
        return pa.array(self.values, type=pa.string())


def _strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray) -> pa.Array:
    data, offs = scan.gather(buf, starts, ends, rows)
    arr = pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(offs), pa.py_buffer(data))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:  # invalid UTF-8 in the input: replace, never fail
        arr = pa.array([_decode(bytes(data[offs[k]:offs[k + 1]])) for k in range(len(rows))], pa.large_string())
    return arr.cast(pa.string())


@dataclass
class Scanned:
    """One chunk after the compiled scan: per-line status, per-event arrays (length k)."""

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    n: int
    k: int
    lost: int
    status: np.ndarray
    seq: np.ndarray
    ts: np.ndarray
    cpu: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    comm_s: np.ndarray
    comm_e: np.ndarray
    comm_h: np.ndarray
    ev_s: np.ndarray
    ev_e: np.ndarray
    ev_h: np.ndarray
    hint: np.ndarray
    pay_s: np.ndarray
    pay_e: np.ndarray
    vals: np.ndarray
    present: np.ndarray


class ScanBuffers:
    """Output arrays for one chunk's scan, reused across chunks: fresh multi-megabyte
    arrays cost a page fault per 4 KiB on first touch, which was a third of scan time."""

    DTYPES = (np.int8, np.int64, np.int64, np.int16, np.int32, np.int32, np.int64, np.int64, np.uint64,
              np.int64, np.int64, np.uint64, np.int8, np.int64, np.int64, None, np.int32)

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.starts = np.empty(capacity, np.int64)
        self.ends = np.empty(capacity, np.int64)
        self.arrays = [np.empty((scan.NFIELDS, capacity), np.uint64) if t is None else np.empty(capacity, t)
                       for t in self.DTYPES]


class BufferPool:
    def __init__(self):
        self._free: list[ScanBuffers] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> ScanBuffers:
        with self._lock:
            for i, b in enumerate(self._free):
                if b.capacity >= n:
                    return self._free.pop(i)
        return ScanBuffers(max(n + n // 4, 1024))  # headroom: chunks differ in line count

    def give(self, b: "ScanBuffers | None") -> None:
        if b is not None:
            with self._lock:
                if len(self._free) < 8:
                    self._free.append(b)


def scan_chunk(chunk: bytes | memoryview, dialect: int, pool: BufferPool | None = None) -> Scanned:
    """The stateless, thread-safe half of decoding (the compiled scan releases the GIL).

    With a pool, the result's arrays belong to ``result.owner`` until given back."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    n = bytes(chunk[-1:]) != b"\n" and len(buf) > 0
    n += chunk.count(b"\n")
    owner = pool.take(n) if pool is not None else ScanBuffers(n)
    starts, ends = owner.starts[:n], owner.ends[:n]
    notice_compile(scan.scanner(dialect), "the trace scanner", "15")
    scan.split_lines(buf, starts, ends)
    # vals is passed whole ((fields, capacity), C-contiguous: rows stay contiguous when
    # sliced, and the compiled scan keeps its contiguous-array specialisation)
    arrays = [a if a.ndim == 2 else a[:n] for a in owner.arrays]
    k, lost, raw_clock = scan.scan_lines(buf, starts, ends, dialect, *arrays, *scan.KEY_TABLES)
    per_event = [a[:, :k] if a.ndim == 2 else a[:k] for a in arrays[1:]]
    sc = Scanned(buf, starts, ends, n, k, lost, arrays[0], *per_event)
    sc.raw_clock = raw_clock
    sc.owner = owner if pool is not None else None
    return sc


class TextDecoder:
    """Stateful decoder for one trace: feed chunks of whole lines in order."""

    def __init__(self, dialect: int, arch: str = archmod.DEFAULT_ARCH) -> None:
        self.dialect = dialect
        self.arch = arch
        self._req_mask = _required_mask(arch)
        self.counts = Counts()
        self.comms = _Interner()
        self.tracepoints = _Interner()
        self._tp_event: list[int] = []  # tracepoint dictionary index -> event code
        self._tp_sampled: list[bool] = []  # tracepoint dictionary index -> a perf page-faults sample
        self._tp_end: list[bool] = []  # tracepoint dictionary index -> a perf minor-/major-faults sample
        self.header_lines: list[str] = []  # the first header lines, for trace metadata

    def decode(self, chunk: bytes | memoryview, first_line: int) -> tuple[pa.Table, pa.Table, int]:
        """Decode one chunk; ``first_line`` is the 1-based number of its first line.

        Returns (events, rejects, number of lines in the chunk)."""
        return self.assemble(scan_chunk(chunk, self.dialect), first_line)

    def assemble(self, sc: Scanned, first_line: int) -> tuple[pa.Table, pa.Table, int]:
        """The ordered, stateful half of decoding: dictionaries, validation, Arrow."""
        buf, status = sc.buf, sc.status
        if len(self.header_lines) < 64:
            for r in np.flatnonzero(status == scan.HEADER)[: 64 - len(self.header_lines)].tolist():
                self.header_lines.append(_decode(bytes(buf[sc.starts[r]:sc.ends[r]])))

        tp_codes = self.tracepoints.codes(sc.ev_h, lambda i: _tracepoint_name(buf, sc.ev_s[i], sc.ev_e[i], sc.hint[i]))
        while len(self._tp_event) < len(self.tracepoints.values):
            name = self.tracepoints.values[len(self._tp_event)]
            self._tp_event.append(EVENT_CODE[canonical_event(name)])
            self._tp_sampled.append(self.dialect == scan.DIALECT_PERF and is_sampled_fault(name))
            self._tp_end.append(self.dialect == scan.DIALECT_PERF and is_fault_end(name))
        ev_code = np.asarray(self._tp_event, dtype=np.int8)[tp_codes]
        self.counts.raw_clock += sc.raw_clock
        sampled = None
        if any(self._tp_sampled):
            ev_code, sampled = self._sampled_faults(sc, tp_codes, ev_code)
        if any(self._tp_end):
            ev_code = self._fault_ends(sc, tp_codes, ev_code)
        self._fault_access(sc, ev_code)

        # required fields: a page fault without an address is not a page fault; and a
        # time past int64 ns (the scanner's -1) is no time
        missing = self._req_mask[ev_code] & ~sc.present
        if sampled is not None:  # a sampled fault has an address and no error code
            missing[sampled] &= ~np.int32(1 << _F["error_code"])
        bad_ts = sc.ts == -1
        bad = np.flatnonzero((missing != 0) | bad_ts)
        rej = np.flatnonzero(status == scan.MALFORMED)
        reasons = ["not a line of this format"] * len(rej)
        keep = None
        if len(bad):
            for j in bad.tolist():
                if bad_ts[j]:
                    reasons.append("timestamp out of range (past int64 nanoseconds)")
                    continue
                need = [f for f in scan.FIELDS if missing[j] & (1 << scan.F[f])]
                reasons.append(f"{EVENTS[ev_code[j]]} without {', '.join(need)}")
            status[sc.seq[bad]] = scan.MALFORMED
            rej = np.concatenate([rej, sc.seq[bad]])
            order = np.argsort(rej, kind="stable")
            rej = rej[order]
            reasons = [reasons[j] for j in order.tolist()]
            keep = (missing == 0) & ~bad_ts
            ev_code, tp_codes = ev_code[keep], tp_codes[keep]

        self.counts.add_status(status)
        self.counts.lost_events += sc.lost
        if len(ev_code):
            bc = np.bincount(ev_code, minlength=len(EVENTS))
            for code in np.flatnonzero(bc).tolist():
                self.counts.per_event[EVENTS[code]] = self.counts.per_event.get(EVENTS[code], 0) + int(bc[code])

        events = self._events_table(sc, keep, first_line, tp_codes, ev_code)
        rejects = pa.Table.from_arrays(
            [pa.array(rej + first_line, pa.int64()), pa.array(reasons, pa.string()), _strings(buf, sc.starts, sc.ends, rej)],
            schema=REJECTS_SCHEMA,
        )
        return events, rejects, sc.n

    def _sampled_faults(self, sc: Scanned, tp_codes: np.ndarray, ev_code: np.ndarray):
        """perf ``page-faults`` samples -> page_fault_user / page_fault_kernel, address from
        the sample addr (perf_sw_event(PERF_COUNT_SW_PAGE_FAULTS, 1, regs, address) in
        each arch's fault handler); a sample printed without addr stays ``other``."""
        rows = np.flatnonzero(np.asarray(self._tp_sampled, dtype=np.bool_)[tp_codes])
        if not len(rows):
            return ev_code, None
        period = np.zeros(len(rows), np.int64)
        scan.sample_payloads(sc.buf, sc.ev_s, sc.pay_s, sc.pay_e, rows, sc.vals, sc.present, period)
        has_addr = (sc.present[rows] & (1 << _F["address"])) != 0
        kernel = archmod.kernel_mode_ip(sc.vals[_F["ip"], rows])
        ev_code = ev_code.copy()
        ok = rows[has_addr]
        ev_code[ok] = np.where(kernel[has_addr], EVENT_CODE["page_fault_kernel"], EVENT_CODE["page_fault_user"])
        c = self.counts
        c.fault_samples += int(has_addr.sum())
        c.fault_samples_no_addr += int((~has_addr).sum())
        c.fault_samples_period += int((period > 1).sum())
        c.fault_samples_max_period = max(c.fault_samples_max_period, int(period.max(initial=0)))
        return ev_code, rows

    def _fault_ends(self, sc: Scanned, tp_codes: np.ndarray, ev_code: np.ndarray) -> np.ndarray:
        """perf ``minor-faults`` / ``major-faults`` samples -> ``fault_end``, the address
        from the sample addr as for page-faults samples (perf_sw_event(..., regs, address)
        in mm_account_fault()); printed without one, the address is null."""
        rows = np.flatnonzero(np.asarray(self._tp_end, dtype=np.bool_)[tp_codes])
        if not len(rows):
            return ev_code
        scan.sample_payloads(sc.buf, sc.ev_s, sc.pay_s, sc.pay_e, rows, sc.vals, sc.present, np.zeros(len(rows), np.int64))
        ev_code = ev_code.copy()
        ev_code[rows] = EVENT_CODE["fault_end"]
        return ev_code

    def _fault_access(self, sc: Scanned, ev_code: np.ndarray) -> None:
        """``write`` of each page fault, from its error code as the architecture defines it
        (ingest/arch.py); null where the trace does not say."""
        faults = np.flatnonzero(np.isin(ev_code, _FAULT_CODES))
        if not len(faults):
            return
        ec_bit, w_bit = np.int32(1 << _F["error_code"]), np.int32(1 << _F["write"])
        pres = sc.present[faults]
        known = (pres & ec_bit) != 0
        w = archmod.fault_write(self.arch, sc.vals[_F["error_code"], faults])
        if w is None:
            known[:] = False
        else:
            sc.vals[_F["write"], faults] = w.astype(np.uint64)
        sc.present[faults] = np.where(known, pres | w_bit, pres & ~w_bit)
        self.counts.fault_access_unknown += int((~known).sum())

    def _events_table(self, sc: Scanned, keep, first_line, tp_codes, ev_code) -> pa.Table:
        buf = sc.buf
        comm_codes = self.comms.codes(sc.comm_h, lambda i: _decode(bytes(buf[sc.comm_s[i]:sc.comm_e[i]])))
        sel = (lambda a: a) if keep is None else (lambda a: a[..., keep])
        comm_codes = sel(comm_codes)
        pres = sel(sc.present)
        v = sel(sc.vals)
        n = len(pres)

        def col(name, typ, conv=None):
            bit = 1 << scan.F[name]
            raw = v[scan.F[name]]
            data = conv(raw) if conv else raw
            has = (pres & bit) != 0
            return pa.array(data, typ, mask=None if has.all() else ~has)

        def signed(raw):
            return raw.view(np.int64)

        def int32(raw):
            return raw.astype(np.uint32).view(np.int32)

        raw_k = np.flatnonzero((pres & scan.UNMAPPED_BIT) != 0)
        if len(raw_k):
            raw_full = np.full(n, None, dtype=object)
            raw_full[raw_k] = _strings(buf, sel(sc.pay_s), sel(sc.pay_e), raw_k).to_numpy(zero_copy_only=False)
            raw = pa.array(raw_full, pa.string())
        else:
            raw = pa.nulls(n, pa.string())
        cpu, pid, ts, tid = sel(sc.cpu), sel(sc.pid), sel(sc.ts), sel(sc.tid)
        no_ts, no_tid = ts == scan.NO_TIME, tid == scan.NO_TASK  # function_graph lines
        arrays = [
            pa.array(sel(sc.seq) + first_line, pa.int64()),
            pa.array(ts, pa.int64(), mask=no_ts if no_ts.any() else None),
            pa.array(cpu, pa.int16(), mask=cpu < 0),
            pa.array(pid, pa.int32(), mask=pid == -2),
            pa.array(tid, pa.int32(), mask=no_tid if no_tid.any() else None),
            pa.DictionaryArray.from_arrays(pa.array(comm_codes, pa.int32(), mask=comm_codes < 0), self.comms.dictionary()),
            pa.DictionaryArray.from_arrays(pa.array(ev_code, pa.int8()), _EVENT_DICT),
            pa.DictionaryArray.from_arrays(pa.array(tp_codes, pa.int32()), self.tracepoints.dictionary()),
            col("mm", pa.uint64()),
            col("write", pa.bool_(), lambda r: r != 0),
            col("success", pa.bool_(), lambda r: r != 0),
            col("address", pa.uint64()),
            col("ip", pa.uint64()),
            col("error_code", pa.uint32(), lambda r: r.astype(np.uint32)),
            col("len", pa.int64(), signed),
            col("new_len", pa.int64(), signed),
            col("new_addr", pa.uint64()),
            col("prot", pa.int32(), int32),
            col("flags", pa.int64(), signed),
            col("fd", pa.int32(), int32),
            col("off", pa.int64(), signed),
            col("ret", pa.int64(), signed),
            col("next_tid", pa.int32(), int32),
            _prev_state(raw, ev_code),
            raw,
        ]
        return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)
