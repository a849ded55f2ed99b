"""DuckDB over the workspace: views on every dataset, and the library of named queries.

``connect()`` builds an in-memory, read-only DuckDB with one view per dataset over the
workspace's committed Parquet files, with a comment on every column, so new traces and
runs appear without any manual step.  ``open_sql()`` / ``open_query()`` stream a
result as Arrow batches; ``run_sql()`` / ``run_query()`` return it as polars.

The library is the ``*.sql`` files beside this module.  Each starts with a header in
the Perfetto stdlib's manner - what question it answers, which data it needs, its
parameters, and every output column with a type and a comment - and ``catalog()``
reads the library from those headers.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from replay.ingest.schema import EVENTS_SCHEMA as _EVENTS_SCHEMA

DATASETS = {
    "events": "trace_id", "traces": "trace_id", "rejects": "trace_id", "ops": "trace_id", "vmas": "trace_id",
    "footprint": "trace_id",
    "results": "run_id", "lock_stats": "run_id", "line_stats": "run_id", "line_cpu": "run_id", "waits": "run_id",
    "runs": "run_id",
}

COLUMN_DOCS = {
    "traces": {
        "trace_id": "trace name (partition)", "source": "file the trace came from, or the recorded command",
        "format": "perf-script, ftrace, trace-cmd, trace-dat, perf-data, perf-json or perf-trace", "sha256": "of the input as given",
        "bytes": "input size", "ingested_at": "when", "hostname": "recording host", "kernel": "recording kernel",
        "nr_cpus": "CPUs of the recording host", "arch": "architecture the trace was decoded for: from --arch, the trace's header, or x86_64 (assumed)",
        "lines": "input lines (JSON: samples)", "parsed": "events parsed",
        "header": "header/comment lines", "blank": "blank lines", "callchain": "callchain frame lines",
        "lost_records": "lost-event records", "lost_events": "events the tracer reported lost",
        "malformed": "malformed lines (see rejects)", "events": "events in the events dataset",
        "schema_version": "events schema version", "tool_version": "replay version",
        "maps_snapshot": "/proc/PID/maps at exec of the recorded command",
        "out_of_order": "events earlier than the previous event on their CPU or thread (replay ops orders events by time)",
    },
    "rejects": {"trace_id": "trace name (partition)", "line": "input line number", "reason": "why it was rejected",
                "text": "the line as it was"},
    "vmas": {
        "trace_id": "trace name (partition)", "vma_id": "VMA id (per trace)", "mm": "address space key",
        "start": "vm_start (final, or when freed)", "end": "vm_end", "prot": "rwxp/s", "anon": "anonymous mapping",
        "name": "mapping name from the maps snapshot", "inferred": "inferred from faults outside every known VMA",
        "created_ns": "when the writer that made it returned (null: existed at the start)",
        "freed_ns": "when the writer that removed it returned",
    },
    "footprint": {
        "trace_id": "trace name (partition)", "model": "lock model", "machine": "machine profile (its CPU count sets SLUB's min_objects)",
        "nr_cpus": "num_present_cpus() of that machine", "cache": "slab cache: vm_area_struct or vma_lock",
        "free_mode": "how a freed VMA's object returns: typesafe (SLAB_TYPESAFE_BY_RCU, at once), call_rcu (after a grace period) or immediate",
        "grace_period_ns": "call_rcu() delay used (0 unless call_rcu)", "object_size": "sizeof the struct (bytes)",
        "slot_size": "s->size: the slot each object takes (alignment and an outside free pointer included)",
        "align": "the cache's alignment", "objs_per_slab": "objects per slab (SLUB's oo_objects)",
        "slab_order": "slab page order", "cache_desc": "the cache's geometry in words",
        "t_ns": "time since the trace's start; the row holds until the next one's", "live": "VMAs that exist",
        "rcu_held": "freed VMAs whose objects wait for a grace period", "objects": "allocated objects (live + rcu_held)",
        "frees": "VMAs freed so far", "slabs": "slabs the objects need, packed (a lower bound)", "pages": "4 KiB pages of those slabs",
        "slab_kib": "slab memory (KiB)", "payload_kib": "objects x object_size (KiB)",
        "align_kib": "objects x (slot_size - object_size): bytes lost to alignment and free pointer (KiB)",
    },
    "runs": {
        "run_id": "run (partition)", "trace_id": "trace replayed", "trace_sha256": "its input's sha256",
        "model": "lock model", "model_sha256": "hash of the model's layout, programs and parameters",
        "machine": "machine profile", "machine_sha256": "hash of the profile's numbers", "cpus": "simulated CPUs",
        "seed": "seed", "placement": "thread placement", "loop": "closed or open", "engine": "implementation that ran it: compiled or reference (identical results)",
        "semantics": "engine semantics version (bumped when results change)",
        "fault_service_ns": "fault service time used", "fault_service_source": "where it came from",
        "kernel": "release whose fault-path rules (batch sizes) the run followed (MODEL@RELEASE names another)",
        "ops": "ops replayed", "faults": "faults replayed", "simulated_ms": "simulated span",
        "faults_per_sec": "faults / simulated span", "fallback_pct": "faults that fell back (%)",
        "abort_pct": "faults whose last attempt aborted (%)", "retry_pct": "... retried (%)", "miss_pct": "... missed (%)",
        "mean_fault_ns": "mean fault duration", "lock_wait_ms": "time blocked on locks, all ops",
        "cas_retries": "failed cmpxchg attempts", "writer_wakeups": "vma_writer_wait wake-ups",
        "wall_s": "host time the replay took", "tool_version": "replay version",
    },
    "events": {
        "trace_id": "trace name (partition)", "seq": "input line number (1-based)", "ts_ns": "timestamp, ns",
        "cpu": "CPU the event was recorded on", "pid": "tgid (null when the format has none)", "tid": "thread id",
        "comm": "task name", "event": "event kind (page_fault_user, mmap_lock_start, sys_enter_mmap, ..., other)",
        "tracepoint": "tracepoint as named in the trace", "mm": "mm_struct pointer as printed (hashed by ftrace)",
        "write": "mmap_lock: write (true) or read", "success": "mmap_lock_acquired: whether it was taken",
        "address": "fault address; syscall addr/start/brk", "ip": "faulting instruction",
        "error_code": "x86 page-fault error code", "len": "syscall len / len_in / old_len", "new_len": "mremap new_len",
        "new_addr": "mremap new_addr", "prot": "PROT_* bits", "flags": "mmap/mremap flags; madvise behavior",
        "fd": "mmap fd", "off": "mmap offset", "ret": "syscall return value (negative errno on failure)",
        "raw": "payload, where part of it has no typed column",
        # the schema's own words (ingest/schema.py)
        **{c: _EVENTS_SCHEMA.field(c).metadata[b"doc"].decode() for c in ("next_tid", "prev_state")},
    },
    "ops": {
        "trace_id": "trace name (partition)", "op_id": "op number within the trace", "mm": "address space key",
        "pid": "process", "tid": "thread", "kind": "fault, mmap, munmap, mprotect, mremap, brk, madvise or exit",
        "seq": "input line of the op's first event", "start_ns": "recorded start (ns)",
        "end_ns": "recorded end: syscall exit; fallen-back fault's mmap_read_unlock; else null",
        "address": "fault address / syscall address", "length": "syscall length", "ret": "syscall return value",
        "vma_id": "fault: the VMA it hit", "vma_ids": "writer: the VMAs it write-locks",
        "vmas_created": "writer: VMAs it created", "vmas_freed": "writer: VMAs it freed",
        "vmas_successor": "writer: for each freed VMA, the VMA that absorbed it (-1: none)",
        "range_vmas": "writer (write mode): each VMA it locked or created that is still mapped after it",
        "range_start": "writer: for each of range_vmas, its vm_start after the call",
        "range_end": "writer: for each of range_vmas, its vm_end after the call",
        "vmas_parent": "writer: for each of vmas_created, the VMA whose anon_vma it takes (__split_vma(), mremap's "
                       "copy_vma()); -1: a new mapping, without one",
        "vma_class": "fault: its VMA as the fault path sees it - anon (private anonymous), file (a file's private "
                     "mapping), shared (VM_MAYSHARE, shmem included) or special ([vdso], [vvar]); null: none known",
        "write": "write fault", "kernel": "kernel-mode fault",
        "fault_kind": "fault: anon, zero, cow, file, file_io or other - the handle_pte_fault() path that served it "
                      "(replay/ops.py); null for writers and where the trace cannot tell",
        "lock_mode": "writer: write, read or none",
        "observed_fallback": "user fault that took mmap_lock for read in the trace",
        "observed_anon_prepare": "first write fault of a private VMA whose mmap_read_trylock looked like a fallback",
        "observed_mmap_write": "fault that took mmap_lock for write (stack expansion)",
        "advice": "madvise: its behaviour (MADV_*; null for other ops)",
        "hold_ns": "recorded mmap_lock hold (acquired -> released; a downgrading writer's: acquired -> mmap_write_downgrade())",
        "read_hold_ns": "a writer that called mmap_write_downgrade() (munmap, brk, mremap): its read-locked hold after it, to mmap_read_unlock()",
        "service_ns": "fault: its recorded handle_mm_fault() time, to its fault_end (from its latest mmap_lock "
                      "acquire, else its entry); null without one",
        "first_try_ns": "observed fallback: its entry to lock_mm_and_find_vma()'s mmap_lock start_locking (the "
                        "attempt under the VMA lock, a VM_FAULT_RETRY's I/O wait included); null otherwise",
        "think_ns": "gap since the thread's previous op",
        "cpu": "CPU it was recorded on",
    },
    "results": {
        "run_id": "run (partition)", "op_id": "op (ops.op_id)", "mm": "address space", "tid": "thread",
        "kind": "op kind", "vma_id": "fault's VMA", "sim_cpu": "simulated CPU", "start_ns": "simulated start (ns)",
        "end_ns": "simulated end (ns)", "lock_wait_ns": "time blocked on locks (ns)",
        "cache_ns": "time in memory accesses, queueing on busy lines included (ns)",
        "line_transfers": "cache-line transfers the op caused", "outcome": "the fault's count_vm_vma_lock_event(): success, abort or retry; null when it never tried the VMA lock (kernel mode, or the mmap_lock model)", "misses": "VMA_LOCK_MISS events: re-walks after finding the VMA detached",
        "fallback": "fell back to the mmap_lock path", "attempts": "per-VMA lock attempts (a miss re-walks)",
        "service_ns": "fault: handle_mm_fault()'s own work (the fault path's fixed part and clear_page(), or the one service time)",
        "resource_ns": "fault: time in the fault path's shared resources (zone->lock, lru_lock, rss, memcg, PTE page), waits included",
        "resource_wait_ns": "fault: the part of resource_ns spent waiting for another CPU's hold",
        "sleep_ns": "time off its CPU: asleep on a lock, then until it ran again (end - start - sleep_ns is on-CPU time)",
        "anon_prepare": "fault: it set its VMA's anon_vma (__anon_vma_prepare(): under the VMA lock after "
                        "vmf_anon_prepare()'s mmap_read_trylock() from 6.10, else under mmap_lock) - the simulated "
                        "observed_anon_prepare",
        "model": "lock model", "machine": "machine profile", "cpus": "simulated CPUs",
    },
    "lock_stats": {
        "run_id": "run (partition)", "mm": "address space", "lock_class": "mmap_lock, vma_lock, or a fault-path spinlock (zone->lock, lruvec->lru_lock, the rss counter's)", "lock": "instance",
        "acquisitions": "times taken", "contentions": "times a task blocked (or spun, for the fault path's spinlocks) for it",
        "wait_total_ns": "time blocked, total", "wait_max_ns": "longest block", "wait_min_ns": "shortest block",
        "hold_total_ns": "time held, total", "hold_max_ns": "longest hold", "hold_min_ns": "shortest hold",
        "trylock_failures": "trylocks that failed", "con_bounces": "transfers of the lock word's line",
    },
    "line_stats": {
        "run_id": "run (partition)", "mm": "address space", "line": "line address",
        "fields": "struct fields on the line",
        "offsets": "each field's byte offset in the line and name (0x08 mm_struct.mmap_lock.owner, ...), as perf c2c's Pareto lists offsets",
        "transfers": "times it moved to another CPU",
        "invalidations": "copies killed by writes",
    },
    "waits": {  # replay/engine/waits.py records them; the schema: replay/engine WAITS_SCHEMA
        "run_id": "run (partition)", "op_id": "op that waited (results.op_id)", "mm": "address space",
        "tid": "thread", "sim_cpu": "simulated CPU it waited on",
        "lock_class": "mmap_lock, vma_lock (an rw_semaphore); mmap_lock.wait_lock, vma_lock.wait_lock (its "
                      "sem->wait_lock spinlock); vm_refcnt (a writer waiting for the VMA's readers to drain); "
                      "or a fault-path spinlock (zone->lock, lruvec->lru_lock, the rss counter's) - lock_stats' classes",
        "lock": "instance, as lock_stats names it: mm, vma:ID, node0, ...",
        "mode": "read or write (the rwsem's, or write for vm_refcnt's writer); null for a spinlock",
        "how": "sleep (schedule() until woken) or spin (on the owner, or in the spinlock's queue)",
        "start_ns": "simulated time the wait began (ns)", "end_ns": "simulated time it ended: woken, or the lock taken (ns)",
        "wait_ns": "end_ns - start_ns",
        "counted_in": "the results column it is part of: lock_wait_ns, or resource_wait_ns for a fault-path spinlock; "
                      "an op's waits of one counted_in add up to it",
    },
    "line_cpu": {  # the kinds: replay/engine/coherence.py RX_NAMES (perf c2c's classes, util/mem-events.c c2c_decode_stats())
        "run_id": "run (partition)", "mm": "address space", "line": "line address (line_stats.line)",
        "cpu": "simulated CPU that received the line", "socket": "that CPU's socket",
        "lcl_hitm": "loads (locked RMWs' included) that found the line Modified in another CPU of this socket",
        "rmt_hitm": "loads that found it Modified in a CPU of another socket",
        "lcl_hit": "loads served by a Shared copy on this socket or by the LLC",
        "rmt_hit": "loads served by a Shared copy only on another socket",
        "store_miss": "plain stores that fetched the line (perf c2c: Stores L1Miss)",
        "prefetch": "prefetchw and adjacent-line prefetcher fills: moves perf c2c cannot sample",
    },
}


class QueryError(ValueError):
    pass


class ParamError(QueryError):
    """A library query asked for with a parameter it does not take or a value it
    cannot use (a usage error)."""


# What makes each dataset, for the message when a query needs one the workspace lacks.
# ops and vmas are not here: replay query builds them itself (replay.api.open_query).
MADE_BY = {"events": "replay ingest TRACE", "traces": "replay ingest TRACE", "rejects": "replay ingest TRACE",
           "footprint": "replay footprint TRACE", "results": "replay run --model M", "lock_stats": "replay run --model M",
           "line_stats": "replay run --model M", "line_cpu": "replay run --model M", "waits": "replay run --model M",
           "runs": "replay run --model M",
           "ops": "replay ops TRACE", "vmas": "replay ops TRACE"}


def connect(workspace: str | Path, tables: dict[str, str | Path] | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection: an in-memory database with one view per dataset.

    Read-only is structural, in three layers:

    - the database is in memory and the workspace is never opened for writing (its old
      ``replay.duckdb`` file is not used), so nothing a query does outlives it, readers
      never take a lock, and a read-only or full workspace can be queried;
    - ``enable_external_access = false`` with ``allowed_paths`` set to exactly the
      committed Parquet files (``Workspace.committed_files``) and the files named in
      ``tables``: no other file on the machine can be read, listed or created, no
      extension loaded; then ``lock_configuration = true``, so no statement can undo it;
    - statements are checked before they run (``check_read_only``): DuckDB's
      ``COPY ... TO f (USE_TMP_FILE false)`` can still overwrite an *allowed* file in
      place, so COPY, EXPORT, ATTACH and the rest are refused by their parsed type, also
      under ``EXPLAIN ANALYZE``.

    ``tables`` maps extra view names to files (CSV, Parquet, JSON) the user chose to
    join with the workspace (``replay sql --table name=FILE``); they are read-only too.
    """
    from replay.workspace import Workspace

    ws = Workspace(workspace)
    con = duckdb.connect(":memory:")
    allowed: list[str] = []
    con.execute("SET enable_progress_bar = false")  # results go to stdout; no bar in them
    for ds, key in DATASETS.items():
        files = [str(f.resolve()) for f in ws.committed_files(ds)]
        if not files:
            continue
        allowed += files
        con.execute(f"CREATE VIEW {ds} AS SELECT * FROM read_parquet({_sql_list(files)}, "
                    f"hive_partitioning = true, union_by_name = true)")
        cols = {r[0] for r in con.execute(f"DESCRIBE {ds}").fetchall()}
        for col, doc in COLUMN_DOCS.get(ds, {}).items():
            if col in cols:
                con.execute(f"COMMENT ON COLUMN {ds}.\"{col}\" IS {_sql_str(doc)}")
    for name, path in (tables or {}).items():
        if name in DATASETS or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise QueryError(f"--table {name}: use a new identifier (letters, digits, '_'), not a workspace view")
        f = Path(path).resolve()
        if not f.is_file():
            raise QueryError(f"--table {name}={path}: no such file")
        reader = {".parquet": "read_parquet", ".json": "read_json_auto", ".ndjson": "read_json_auto",
                  ".jsonl": "read_json_auto"}.get(f.suffix.lower(), "read_csv_auto")
        allowed.append(str(f))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {reader}({_sql_str(str(f))})")
    import tempfile

    spill = tempfile.mkdtemp(prefix="replay-duckdb-")  # big sorts spill here, not into the cwd
    con.execute(f"SET temp_directory = {_sql_str(spill)}")
    con.execute(f"SET allowed_paths = {_sql_list(allowed)}")
    con.execute(f"SET allowed_directories = [{_sql_str(spill + '/')}]")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    _SPILL[id(con)] = spill
    return con


_SPILL: dict[int, str] = {}


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Close a ``connect()`` connection and remove its spill directory."""
    import shutil

    con.close()
    spill = _SPILL.pop(id(con), None)
    if spill:
        shutil.rmtree(spill, ignore_errors=True)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join(_sql_str(i) for i in items) + "]"


# Statement types that only read.  EXPLAIN is checked again on the statement it explains
# (EXPLAIN ANALYZE runs it); PRAGMA only where the pragma reads (IMPORT DATABASE is a
# pragma too, and runs a script).
READS = {"SELECT", "EXPLAIN", "PRAGMA", "RELATION", "CALL"}
READ_PRAGMAS = {"show_tables", "show_tables_expanded", "table_info", "show", "version", "database_size",
                "database_list", "functions", "collations", "platform", "storage_info", "metadata_info",
                "user_agent", "pragma_version"}


def check_read_only(sql: str) -> list:
    """The statements of ``sql``, or a QueryError naming the first that would write."""
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    if not stmts:
        raise QueryError("no SQL statement given")
    for st in stmts:
        _check_statement(st)
    return stmts


def _check_statement(st) -> None:
    kind = st.type.name
    refuse = kind not in READS
    if kind == "EXPLAIN":
        inner = _explained(st.query)
        if inner is None:
            refuse = True
        else:
            for sub in duckdb.extract_statements(inner):
                _check_statement(sub)
    elif kind == "PRAGMA":
        m = re.match(r"\s*(?:PRAGMA\s+)?([A-Za-z_]+)", st.query, re.I)
        refuse = not m or m.group(1).lower() not in READ_PRAGMAS
        if m and m.group(1).upper() == "IMPORT":
            kind = "IMPORT DATABASE"
    if refuse:
        raise QueryError(f"replay sql is read-only: {kind} statements are refused (query the views; "
                         f"write results elsewhere with --format parquet -o FILE)")


def _explained(query: str) -> str | None:
    """The statement that ``EXPLAIN [ANALYZE] [(options)] stmt`` explains, found with
    DuckDB's own tokenizer (so comments and spacing cannot hide it)."""
    toks = [t for t in duckdb.tokenize(query) if t[1] != duckdb.token_type.comment]
    ends = [t[0] for t in toks[1:]] + [len(query)]
    words = [query[t[0]:e].split("--")[0].split("/*")[0].strip() for t, e in zip(toks, ends)]
    i, depth = 1, 0  # past EXPLAIN
    while i < len(toks):
        w = words[i].upper()
        if depth or w == "(":  # EXPLAIN (FORMAT json, ANALYZE) stmt
            depth += w.count("(") - w.count(")")
        elif w != "ANALYZE":
            return query[toks[i][0]:]
        i += 1
    return None


def one_line(e: Exception) -> str:
    """DuckDB's multi-line message as one line, its caret turned into a position."""
    text = str(e)
    pos = ""
    m = re.search(r"\n\s*LINE (\d+): (.*)\n(\s*)\^", text)
    if m:
        prefix = len(f"LINE {m.group(1)}: ")
        col = len(m.group(3)) - prefix + 1
        pos = f" (line {m.group(1)}, column {max(col, 1)})"
        text = text[: m.start()]
    return " ".join(text.split()) + pos


@contextlib.contextmanager
def open_sql(workspace, sql: str, params: dict | None = None, tables: dict | None = None,
             batch_rows: int = 65_536) -> Iterator["pa.RecordBatchReader"]:
    """Run read-only SQL over the workspace views and yield its result as a stream of
    Arrow record batches (bounded memory however large the result).  Every statement
    but the last runs first; the last one's rows are streamed.  Ctrl-C interrupts
    DuckDB itself (see ``interruptible``) and surfaces as KeyboardInterrupt."""
    stmts = check_read_only(sql)
    with interruptible() as live:
        con = connect(workspace, tables)
        live.append(con)
        try:
            _raise_if_interrupted()
            for st in stmts[:-1]:  # read-only, so only their errors matter
                con.execute(st.query, params or None)
                con.complete()
            last = stmts[-1].query
            yield _Reader(con.sql(last, params=params or None).to_arrow_reader(batch_rows),
                          lambda: con.cursor().execute(f"SELECT count(*) FROM ({last}\n)", params or None).fetchone()[0])
        except Exception as e:
            raise _translate(e) from None
        finally:
            live.clear()
            close(con)


def _translate(e: Exception) -> BaseException:
    """An error from DuckDB (directly, or re-raised by pyarrow's reader) as the caller
    should see it: an interrupt as KeyboardInterrupt (DuckDB reports it as
    InterruptException or, through the Arrow stream, RuntimeError), DuckDB's own
    errors as QueryError, anything else unchanged."""
    if isinstance(e, duckdb.InterruptException) or _INTERRUPTED.is_set():
        return KeyboardInterrupt()
    if isinstance(e, (duckdb.Error, pa.ArrowException)):
        msg = one_line(e)
        if "disabled by configuration" in msg:
            msg += " (replay sql reads only the workspace; name other files with --table NAME=FILE)"
        return QueryError(msg)
    return e


def _raise_if_interrupted() -> None:
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


class _Reader:
    """Record batches from DuckDB, its errors as QueryError and an interrupt as
    KeyboardInterrupt, while the caller iterates."""

    def __init__(self, reader, count=None):
        self._r = reader
        self._count = count
        self.schema = reader.schema

    def total_rows(self) -> int:
        """How many rows the whole result has, without streaming them: the same query
        counted on a second cursor, whose optimizer drops the unused columns."""
        self._r.close()  # stop the first query: it would go on filling buffers meanwhile
        try:
            return self._count()
        except Exception as e:
            raise _translate(e) from None

    def __iter__(self):
        while True:
            try:
                b = self._r.read_next_batch()
            except StopIteration:
                return
            except Exception as e:
                raise _translate(e) from None
            _raise_if_interrupted()
            yield b


_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def interruptible():
    """Let Ctrl-C stop a running DuckDB query; yields a list to put the connection in.

    DuckDB runs a query in C++ without returning to the interpreter, so Python's own
    SIGINT handler would run only after the query ends.  Python's C-level handler
    still runs at once, in whichever thread the kernel delivers the signal to, and
    writes the signal's number to ``signal.set_wakeup_fd``; a watcher thread blocked
    reading that pipe calls ``interrupt()`` on the connection, DuckDB fails the query,
    and the caller sees KeyboardInterrupt (the CLI: one line, exit 130)."""
    live: list = []
    if threading.current_thread() is not threading.main_thread():
        yield live
        return
    _INTERRUPTED.clear()
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    old = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    done = threading.Event()

    def watch():
        while not done.is_set():
            got = os.read(rfd, 64)
            if signal.SIGINT in got and not done.is_set():
                _INTERRUPTED.set()
                for con in list(live):
                    con.interrupt()

    w = threading.Thread(target=watch, name="replay-sigint", daemon=True)
    w.start()
    try:
        yield live
    finally:
        done.set()
        os.write(wfd, b"\0")
        w.join()
        signal.set_wakeup_fd(old)
        os.close(rfd)
        os.close(wfd)
    _raise_if_interrupted()


def run_sql(workspace, sql: str, params: dict | None = None, tables: dict | None = None):
    """Run read-only SQL over the workspace views; returns a polars DataFrame."""
    import polars as pl

    with open_sql(workspace, sql, params, tables) as r:
        return pl.from_arrow(pa.Table.from_batches(list(r), schema=r.schema))


@dataclass
class LibraryQuery:
    name: str
    question: str
    needs: str
    params: dict = field(default_factory=dict)  # name -> doc
    columns: list = field(default_factory=list)  # (name, type, doc)
    sql: str = ""
    param_types: dict = field(default_factory=dict)  # name -> DOUBLE / INTEGER / VARCHAR
    param_rules: dict = field(default_factory=dict)  # name -> "> 0" or ("a", "b", ...)
    layout: str | None = None  # how replay query prints the table: a tool's own layout (queries/layouts.py)


_HEADER = re.compile(r"^--\s*(\w+):\s*(.*)$")
_COLUMN = re.compile(r"^--\s*column\s+(\w+)\s+([A-Z0-9_\[\]]+):\s*(.*)$")
# -- param NAME [TYPE] [> 0 | in (a, b, c)]: doc
_PARAM = re.compile(r"^--\s*param\s+(\w+)(?:\s+(DOUBLE|INTEGER|VARCHAR))?(?:\s+(> 0|in \([^)]*\)))?:\s*(.*)$")


def _parse(name: str, text: str) -> LibraryQuery:
    q = LibraryQuery(name, "", "", sql=text)
    for ln in text.splitlines():
        if not ln.startswith("--"):
            break
        if m := _COLUMN.match(ln):
            q.columns.append(m.groups())
        elif m := _PARAM.match(ln):
            name, typ, rule, doc = m.groups()
            q.params[name] = doc
            if typ:
                q.param_types[name] = typ
            if rule:
                q.param_rules[name] = rule if rule == "> 0" else tuple(
                    v.strip() for v in rule[len("in ("):-1].split(","))
        elif m := _HEADER.match(ln):
            if m.group(1) == "question":
                q.question = m.group(2)
            elif m.group(1) == "needs":
                q.needs = m.group(2)
            elif m.group(1) == "layout":
                q.layout = m.group(2).strip()
    return q


def catalog() -> dict[str, LibraryQuery]:
    out = {}
    for f in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if f.name.endswith(".sql"):
            out[f.name[:-4]] = _parse(f.name[:-4], f.read_text())
    return out


def library_sql(name: str, params: dict[str, str]) -> tuple[str, dict, list[str]]:
    """A library query's SQL (header stripped), the parameters it uses, and the
    datasets it needs."""
    cat = catalog()
    if name not in cat:
        raise ParamError(f"no query {name!r}; replay query --list shows the library: {', '.join(cat)}")
    q = cat[name]
    unknown = set(params) - set(q.params)
    if unknown:
        raise ParamError(f"{name} takes no parameter {', '.join(sorted(unknown))}; it takes: {', '.join(q.params) or 'none'}")
    values = {p: params.get(p) for p in q.params}
    for p, v in values.items():
        if v is not None:
            check_param(q, p, v)
    sql = "\n".join(ln for ln in q.sql.splitlines() if not ln.startswith("--"))
    used = {p: v for p, v in values.items() if f"${p}" in sql}
    return sql, used, [ds.strip() for ds in q.needs.split(",") if ds.strip()]


def check_param(q: LibraryQuery, name: str, value: str) -> None:
    """A parameter value against its header's type and rule, or a ParamError."""
    typ, rule = q.param_types.get(name), q.param_rules.get(name)
    if typ in ("DOUBLE", "INTEGER"):
        try:
            x = float(value) if typ == "DOUBLE" else int(value)
        except ValueError:
            raise ParamError(f"{q.name}: {name} takes {'a number' if typ == 'DOUBLE' else 'an integer'}, "
                             f"not {value!r}") from None
        if rule == "> 0" and not x > 0:
            raise ParamError(f"{q.name}: {name} must be > 0, not {value}")
    if isinstance(rule, tuple) and value not in rule:
        raise ParamError(f"{q.name}: {name} must be one of {', '.join(rule)}, not {value!r}")


@contextlib.contextmanager
def open_query(workspace, name: str, params: dict[str, str], batch_rows: int = 65_536):
    """A library query's result as a stream of record batches (see ``open_sql``)."""
    from replay.workspace import Workspace

    sql, used, needed = library_sql(name, params)
    ws = Workspace(workspace)
    missing = [ds for ds in needed if not ws.committed_files(ds)]
    if missing:
        makers = list(dict.fromkeys(MADE_BY.get(ds, "replay run") for ds in missing))
        raise QueryError(f"{name} needs {', '.join(missing)}, and {ws.root} has none yet: {' / '.join(makers)} makes "
                         f"{'them' if len(missing) > 1 else 'it'}")
    with open_sql(workspace, sql, used, batch_rows=batch_rows) as r:
        yield r


def run_query(workspace, name: str, params: dict[str, str]):
    """A library query's result as a polars DataFrame."""
    import polars as pl

    with open_query(workspace, name, params) as r:
        return pl.from_arrow(pa.Table.from_batches(list(r), schema=r.schema))
