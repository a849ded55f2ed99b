"""Ingest one input into Parquet files in a staging directory, streaming in chunks.

Three stages overlap: a reader thread (read, decompress, hash), compiled scans on a
small thread pool (they release the GIL), and a writer thread (Parquet, zstd).  The
ordered middle stage - dictionaries, validation, Arrow assembly - runs in the calling
thread.  Memory is bounded by the chunks in flight, whatever the input size.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from . import arch as archmod
from .order import TimeOrder
from .perfjson import decode_json
from .perftrace import decode_perf_trace
from .schema import EVENTS_SCHEMA, REJECTS_SCHEMA, SCHEMA_VERSION, TRACES_SCHEMA
from .sources import InputError, Source, header_meta, read_chunks
from .text import DIALECTS, BufferPool, Counts, TextDecoder, scan_chunk

CHUNK = 16 << 20
_STATS_COLUMNS = ["seq", "ts_ns", "cpu", "pid", "tid", "event", "mm"]
_DICT_COLUMNS = ["cpu", "pid", "tid", "comm", "event", "tracepoint", "mm", "error_code", "prot", "flags", "fd", "raw"]
_DONE = object()


@dataclass
class IngestResult:
    trace_id: str
    format: str
    source: str
    counts: Counts
    first_rejects: list = field(default_factory=list)
    sha256: str = ""
    bytes_in: int = 0
    text_bytes: int = 0
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    out_of_order: int = 0  # events earlier than the previous one on their CPU or thread
    out_of_order_first: list = field(default_factory=list)  # their first few lines (JSON: samples)
    warnings: list = field(default_factory=list)  # one line each, for the user

    def traces_row(self, tool_version: str, maps_snapshot: str | None = None) -> pa.Table:
        c = self.counts
        row = {
            "trace_id": self.trace_id, "source": self.source, "format": self.format, "sha256": self.sha256,
            "bytes": self.bytes_in, "ingested_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
            "hostname": self.meta.get("hostname"), "kernel": self.meta.get("kernel"),
            "nr_cpus": self.meta.get("nr_cpus"), "arch": self.meta.get("arch"), "lines": c.lines, "parsed": c.parsed, "header": c.header,
            "blank": c.blank, "callchain": c.callchain, "lost_records": c.lost_records,
            "lost_events": c.lost_events, "malformed": c.malformed, "events": sum(c.per_event.values()),
            "out_of_order": self.out_of_order,
            "schema_version": SCHEMA_VERSION, "tool_version": tool_version, "maps_snapshot": maps_snapshot,
        }
        return pa.Table.from_pylist([row], schema=TRACES_SCHEMA)


class _Writer(threading.Thread):
    """Writes (events, rejects) batches to two Parquet files off the main thread."""

    def __init__(self, stage: str):
        super().__init__(daemon=True)
        self.q: queue.Queue = queue.Queue(maxsize=3)
        # Dictionary pages only where values repeat; sequence numbers, timestamps and
        # addresses are near-unique and cost time to dictionary-encode for no gain.
        # zstd level 1 and min/max statistics only on the columns queries filter on:
        # together a third faster to write than the defaults, for the same file size.
        self.events = pq.ParquetWriter(os.path.join(stage, "events.parquet"), EVENTS_SCHEMA, compression="zstd",
                                       compression_level=1, use_dictionary=_DICT_COLUMNS,
                                       write_statistics=_STATS_COLUMNS)
        self.rejects = pq.ParquetWriter(os.path.join(stage, "rejects.parquet"), REJECTS_SCHEMA, compression="zstd")
        self.error: BaseException | None = None

    def run(self):
        try:
            while (item := self.q.get()) is not _DONE:
                ev, rj, release = item
                if ev.num_rows:
                    self.events.write_table(ev)
                if rj.num_rows:
                    self.rejects.write_table(rj)
                del ev, rj
                if release:
                    release()
        except BaseException as e:  # surfaced by close()
            self.error = e
            while self.q.get() is not _DONE:
                pass

    def put(self, item):
        if self.error:
            raise self.error
        self.q.put(item)

    def close(self, metadata: dict[bytes, bytes]):
        self.q.put(_DONE)
        self.join()
        if self.error:
            raise self.error
        self.events.add_key_value_metadata(metadata)
        self.events.close()
        self.rejects.close()


def _reader(src: Source, out: queue.Queue, stop: threading.Event):
    try:
        for chunk in read_chunks(src.stream, CHUNK, src.head):
            if stop.is_set():
                break
            out.put(chunk)
        out.put(_DONE)
    except Exception as e:  # decompression errors, I/O errors
        out.put(e)


def _first_rejects(rj: pa.Table, have: list, limit: int = 5):
    if len(have) < limit and rj.num_rows:
        have.extend(rj.slice(0, limit - len(have)).to_pylist())


def resolve_arch(src: Source, arch: str | None) -> str:
    """--arch, else the trace's header (perf's ``# arch :`` in the first lines or the
    perf.data header; the uname a trace.dat saved), else x86-64, marked assumed."""
    if arch:
        got = archmod.canonical_arch(arch)
        if got is None:
            raise InputError(f"unknown --arch {arch!r}; choose one of {', '.join(archmod.ARCHES)}")
        return got
    said = src.meta.get("arch")
    if not said and src.format == "perf-json":  # data-convert-json.c writes the header's arch
        m = re.search(rb'"arch"\s*:\s*"([^"]*)"', src.head[:65536])
        said = m.group(1).decode("utf-8", "replace") if m else None
    if not said and src.head:
        said = header_meta(ln.decode("utf-8", "replace") for ln in src.head.split(b"\n", 200)[:200]
                           if ln.startswith(b"#")).get("arch")
    if said:
        got = archmod.canonical_arch(said)
        if got is None:
            raise InputError(f"{src.name} was recorded on {said}, an architecture this tool cannot decode "
                             f"(it knows {', '.join(archmod.ARCHES)}); pass --arch to decode it as one of them")
        return got
    return archmod.DEFAULT_ARCH + " (assumed)"


def ingest_to(src: Source, stage: str, trace_id: str, strict: bool = False, explicit_format: bool = False,
              progress=None, arch: str | None = None) -> IngestResult:
    """Parse ``src`` into ``stage``/events.parquet and rejects.parquet; return the accounting."""
    t0 = time.perf_counter()
    res = IngestResult(trace_id, src.format, src.name, Counts(), meta=dict(src.meta))
    res.meta["arch"] = resolve_arch(src, arch)
    writer = _Writer(stage)
    writer.start()
    order = TimeOrder()
    try:
        if src.format in ("perf-json", "perf-trace"):
            _ingest_records(src, res, writer, order, strict, progress)
        else:
            _ingest_text(src, res, writer, order, strict, explicit_format, progress)
        src.finish()
    except BaseException:
        writer.q.put(_DONE)
        writer.join()
        src.close()
        raise
    res.sha256 = src.sha256
    res.bytes_in = src.bytes_in or src.meta.get("bytes", 0)
    res.out_of_order, res.out_of_order_first = order.count, order.first
    res.warnings = warnings(res)
    md = {
        "replay.schema_version": str(SCHEMA_VERSION), "replay.trace_id": trace_id, "replay.format": src.format,
        "replay.source": src.name, "replay.sha256": res.sha256, "replay.lines": str(res.counts.lines),
        "replay.parsed": str(res.counts.parsed), "replay.malformed": str(res.counts.malformed),
        "replay.lost_events": str(res.counts.lost_events), "replay.arch": res.meta["arch"],
    }
    writer.close({k.encode(): v.encode() for k, v in md.items()})
    res.seconds = time.perf_counter() - t0
    return res


def warnings(res: IngestResult) -> list[str]:
    """What the user should know about an ingested trace, one line each."""
    c, out = res.counts, []
    if c.lost_events:
        out.append(f"the tracer lost {c.lost_events:,} events in {c.lost_records} records; the trace has gaps "
                   "(a larger buffer helps: perf record -m, tracefs buffer_size_kb)")
    if res.out_of_order:
        unit = "sample" if res.format == "perf-json" else "line"
        first = ", ".join(f"{unit} {x}" for x in res.out_of_order_first)
        more = ", ..." if res.out_of_order > len(res.out_of_order_first) else ""
        out.append(f"time goes backwards at {res.out_of_order:,} events on their CPU or thread ({first}{more}): "
                   "the events are kept as recorded; replay ops takes them in timestamp order "
                   "(a stable sort, as perf orders events)")
    if c.fault_samples_no_addr:
        out.append(f"{c.fault_samples_no_addr:,} page-faults samples show no sample address, so they are kept as "
                   "`other`: record with perf record -e page-faults -d and print the address "
                   "(perf script -F ...,addr,ip; replay ingest perf.data does)")
    if c.fault_samples_period:
        out.append(f"{c.fault_samples_period:,} of {c.fault_samples:,} page-faults samples stand for more than one "
                   f"fault (sample period up to {c.fault_samples_max_period:,}): perf sampled the faults; record "
                   "with -c 1 to see every one")
    if c.faults_file_offset:
        out.append(f"{c.faults_file_offset:,} perf trace faults are on file-backed mappings, which perf trace prints "
                   "as file@offset, not as the address: they are kept as `other`; perf record -e page-faults -d "
                   "gives every fault's address")
    if c.fault_access_unknown:
        out.append(f"{c.fault_access_unknown:,} page faults do not say whether they read or wrote (`write` is null: "
                   f"{_unknown_access_why(res)})")
    if c.fieldless:
        out.append(f"{c.fieldless:,} of {c.lines:,} samples carry no tracepoint fields, so they are kept as `other` "
                   "and cannot be replayed: this perf's `data convert --to-json` does not write them (perf 6.1 as "
                   "Debian 12 ships it); ingest the perf.data itself instead (replay ingest perf.data runs perf "
                   "script), or `perf script --ns -F comm,pid,tid,cpu,time,event,trace` text")
    return out


def _unknown_access_why(res: IngestResult) -> str:
    if res.format == "perf-trace":
        return "perf trace prints no access type"
    if res.counts.fault_samples:
        return "a perf page-faults sample carries no error code"
    return f"their error code says nothing of it on {res.meta.get('arch')}, or they print none"


def _ingest_text(src: Source, res: IngestResult, writer: _Writer, order: TimeOrder, strict: bool, explicit: bool,
                 progress):
    dialect = DIALECTS[src.format if src.format in DIALECTS else "perf-script"]
    dec = TextDecoder(dialect, res.meta["arch"].split()[0])
    chunks: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(src, chunks, stop), daemon=True)
    reader.start()
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    buffers = BufferPool()
    inflight: deque = deque()
    next_line = 1
    first = True
    last_chunk_ends_nl = True
    try:
        done = False
        while not done or inflight:
            while not done and len(inflight) < pool._max_workers + 1:
                item = chunks.get()
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, Exception):
                    raise InputError(f"cannot read {src.name}: {item}")
                last_chunk_ends_nl = item.endswith(b"\n")
                inflight.append((pool.submit(scan_chunk, item, dialect, buffers), len(item)))
            if not inflight:
                break
            fut, nbytes = inflight.popleft()
            sc = fut.result()
            ev, rj, n = dec.assemble(sc, next_line)
            res.text_bytes += nbytes
            if first:
                first = False
                c = dec.counts
                if explicit and c.malformed and c.malformed > c.parsed:
                    raise InputError(
                        f"{src.name} does not look like {src.format} text: {c.malformed} of the first {c.lines} "
                        f"lines do not parse (line {rj['line'][0].as_py()}); "
                        f"auto-detection says {src.meta.get('detected') or 'no known format'}"
                    )
            if strict and rj.num_rows:
                r = rj.slice(0, 1).to_pylist()[0]
                raise InputError(f"line {r['line']}: {r['reason']}: {(r['text'] or '')[:120]!r} (--strict)")
            if not inflight and done and not last_chunk_ends_nl and rj.num_rows and rj["line"][-1].as_py() == next_line + n - 1:
                raise InputError(
                    f"{src.name} is truncated: its last line ({next_line + n - 1}) ends mid-record without a newline; "
                    f"cut it off (head -n -1) to ingest the rest"
                )
            next_line += n
            _first_rejects(rj, res.first_rejects)
            order.feed_table(ev)
            owner = sc.owner
            del sc
            writer.put((ev, rj, lambda o=owner: buffers.give(o)))
            if progress:
                progress(nbytes, src.bytes_in)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        while reader.is_alive():  # unblock the reader if it waits on a full queue
            try:
                chunks.get_nowait()
            except queue.Empty:
                reader.join(0.05)
    res.counts = dec.counts
    for k, v in header_meta(dec.header_lines).items():
        res.meta.setdefault(k, v)
    if res.counts.parsed == 0:
        src.check_tool()  # perf script / trace-cmd report failing says why better than we can
        raise InputError(f"{src.name}: no event parsed from {res.counts.lines} lines (format {src.format})")
    if res.counts.raw_clock:
        raise InputError(
            f"{src.name}: the timestamps of {res.counts.raw_clock:,} events are raw trace-clock counts, not time "
            "(no fraction of a second: ftrace prints them so for trace_clock counter, uptime and x86-tsc, "
            "kernel/trace/trace_output.c); record with a clock that counts ns (echo local > trace_clock, the default, "
            "or global, mono, boot)")


def _ingest_records(src: Source, res: IngestResult, writer: _Writer, order: TimeOrder, strict: bool, progress):
    """perf JSON (samples) and perf trace (lines): formats decoded in Python, a record at a time."""
    json = src.format == "perf-json"
    gen = decode_json(src.stream, head=src.head, arch=res.meta["arch"].split()[0]) if json else \
        decode_perf_trace(src.stream, head=src.head)
    unit = "sample" if json else "line"
    try:
        while True:
            ev, rj = next(gen)
            if strict and rj.num_rows:
                r = rj.slice(0, 1).to_pylist()[0]
                raise InputError(f"{unit} {r['line']}: {r['reason']} (--strict)")
            _first_rejects(rj, res.first_rejects)
            order.feed_table(ev)
            writer.put((ev, rj, None))
            if progress:
                progress(0, src.bytes_in)
    except StopIteration as stop:
        res.counts = stop.value
    except ValueError as e:
        raise InputError(f"{src.name}: {e}") from None
    if res.counts.lines == 0:
        raise InputError(f"{src.name}: perf JSON with no samples" if json else f"{src.name} is empty")
    if res.counts.parsed == 0 and not json:
        raise InputError(f"{src.name}: no event parsed from {res.counts.lines} lines (format perf-trace)")

