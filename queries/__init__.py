"""DuckDB over the workspace: views on every dataset, and the library of named queries.

``connect()`` opens ``replay.duckdb`` in the workspace and (re)creates one view per
hive-partitioned Parquet dataset present, with a comment on every column, so new
traces and runs appear without any manual step.  Queries only read Parquet.

The library is the ``*.sql`` files beside this module.  Each starts with a header in
the Perfetto stdlib's manner - what question it answers, which data it needs, its
parameters, and every output column with a type and a comment - and ``catalog()``
reads the library from those headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import duckdb

DATASETS = {
    "events": "trace_id", "traces": "trace_id", "rejects": "trace_id", "ops": "trace_id", "vmas": "trace_id",
    "results": "run_id", "lock_stats": "run_id", "line_stats": "run_id", "runs": "run_id",
}

COLUMN_DOCS = {
    "traces": {
        "trace_id": "trace name (partition)", "source": "file the trace came from, or the recorded command",
        "format": "perf-script, ftrace, trace-cmd, perf-data or perf-json", "sha256": "of the input as given",
        "bytes": "input size", "ingested_at": "when", "hostname": "recording host", "kernel": "recording kernel",
        "nr_cpus": "CPUs of the recording host", "lines": "input lines (JSON: samples)", "parsed": "events parsed",
        "header": "header/comment lines", "blank": "blank lines", "callchain": "callchain frame lines",
        "lost_records": "lost-event records", "lost_events": "events the tracer reported lost",
        "malformed": "malformed lines (see rejects)", "events": "events in the events dataset",
        "schema_version": "events schema version", "tool_version": "replay version",
        "maps_snapshot": "/proc/PID/maps at exec of the recorded command",
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
    "runs": {
        "run_id": "run (partition)", "trace_id": "trace replayed", "trace_sha256": "its input's sha256",
        "model": "lock model", "model_sha256": "hash of the model's layout, programs and parameters",
        "machine": "machine profile", "machine_sha256": "hash of the profile's numbers", "cpus": "simulated CPUs",
        "seed": "seed", "placement": "thread placement", "loop": "closed or open", "engine": "implementation that ran it: compiled or reference (identical results)",
        "semantics": "engine semantics version (bumped when results change)",
        "fault_service_ns": "fault service time used", "fault_service_source": "where it came from",
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
        "write": "write fault", "kernel": "kernel-mode fault", "lock_mode": "writer: write, read or none",
        "observed_fallback": "user fault that took mmap_lock for read in the trace",
        "observed_anon_prepare": "first write fault of a private VMA whose mmap_read_trylock looked like a fallback",
        "observed_mmap_write": "fault that took mmap_lock for write (stack expansion)",
        "hold_ns": "recorded mmap_lock hold (acquired -> released)", "think_ns": "gap since the thread's previous op",
        "cpu": "CPU it was recorded on",
    },
    "results": {
        "run_id": "run (partition)", "op_id": "op (ops.op_id)", "mm": "address space", "tid": "thread",
        "kind": "op kind", "vma_id": "fault's VMA", "sim_cpu": "simulated CPU", "start_ns": "simulated start (ns)",
        "end_ns": "simulated end (ns)", "lock_wait_ns": "time blocked on locks (ns)",
        "cache_ns": "time in memory accesses, queueing on busy lines included (ns)",
        "line_transfers": "cache-line transfers the op caused", "outcome": "per-VMA lock: success, abort, retry or miss",
        "fallback": "fell back to the mmap_lock path", "attempts": "per-VMA lock attempts (a miss re-walks)",
        "model": "lock model", "machine": "machine profile", "cpus": "simulated CPUs",
    },
    "lock_stats": {
        "run_id": "run (partition)", "mm": "address space", "lock_class": "mmap_lock or vma_lock", "lock": "instance",
        "acquisitions": "times taken", "contentions": "times a task blocked for it",
        "wait_total_ns": "time blocked, total", "wait_max_ns": "longest block", "wait_min_ns": "shortest block",
        "hold_total_ns": "time held, total", "hold_max_ns": "longest hold", "hold_min_ns": "shortest hold",
        "trylock_failures": "trylocks that failed", "con_bounces": "transfers of the lock word's line",
    },
    "line_stats": {
        "run_id": "run (partition)", "mm": "address space", "line": "line address",
        "fields": "struct fields on the line", "transfers": "times it moved to another CPU",
        "invalidations": "copies killed by writes",
    },
}


def _glob(root: Path, ds: str) -> str:
    return str((root / ds).resolve() / "*" / "*.parquet")


def connect(workspace: str | Path) -> duckdb.DuckDBPyConnection:
    """A connection to the workspace database with every dataset's view refreshed."""
    root = Path(workspace)
    root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(root / "replay.duckdb"))
    con.execute("SET enable_progress_bar = false")  # results go to stdout; no bar in them
    for ds in DATASETS:
        files = list((root / ds).glob("*/*.parquet"))
        if not files:
            con.execute(f"DROP VIEW IF EXISTS {ds}")
            continue
        con.execute(f"CREATE OR REPLACE VIEW {ds} AS SELECT * FROM read_parquet('{_glob(root, ds)}', "
                    f"hive_partitioning = true, union_by_name = true)")
        cols = {r[0] for r in con.execute(f"DESCRIBE {ds}").fetchall()}
        for col, doc in COLUMN_DOCS.get(ds, {}).items():
            if col in cols:
                con.execute(f"COMMENT ON COLUMN {ds}.\"{col}\" IS '{doc.replace(chr(39), chr(39) * 2)}'")
    return con


WRITES = {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "COPY", "ATTACH", "DETACH", "EXPORT",
          "LOAD", "TRANSACTION", "VACUUM", "CREATE_FUNC", "SET", "VARIABLE_SET", "MERGE_INTO", "UPDATE_EXTENSIONS"}


class QueryError(ValueError):
    pass


def check_read_only(sql: str) -> None:
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    if not stmts:
        raise QueryError("no SQL statement given")
    for st in stmts:
        kind = st.type.name
        if kind in WRITES or kind not in ("SELECT", "EXPLAIN", "PRAGMA", "RELATION", "CALL"):
            raise QueryError(f"replay sql is read-only: {kind} statements are refused (query the views; "
                             f"write results elsewhere with --format parquet -o FILE)")


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


def run_sql(workspace, sql: str, params: dict | None = None):
    """Run read-only SQL over the workspace views; returns a polars DataFrame."""
    check_read_only(sql)
    con = connect(workspace)
    try:
        stmts = duckdb.extract_statements(sql)
        for st in stmts[:-1]:
            con.execute(st.query, params or None)
        return con.sql(stmts[-1].query, params=params or None).pl()
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    finally:
        con.close()


@dataclass
class LibraryQuery:
    name: str
    question: str
    needs: str
    params: dict = field(default_factory=dict)  # name -> doc
    columns: list = field(default_factory=list)  # (name, type, doc)
    sql: str = ""


_HEADER = re.compile(r"^--\s*(\w+):\s*(.*)$")
_COLUMN = re.compile(r"^--\s*column\s+(\w+)\s+([A-Z0-9_\[\]]+):\s*(.*)$")
_PARAM = re.compile(r"^--\s*param\s+(\w+):\s*(.*)$")


def _parse(name: str, text: str) -> LibraryQuery:
    q = LibraryQuery(name, "", "", sql=text)
    for ln in text.splitlines():
        if not ln.startswith("--"):
            break
        if m := _COLUMN.match(ln):
            q.columns.append(m.groups())
        elif m := _PARAM.match(ln):
            q.params[m.group(1)] = m.group(2)
        elif m := _HEADER.match(ln):
            if m.group(1) == "question":
                q.question = m.group(2)
            elif m.group(1) == "needs":
                q.needs = m.group(2)
    return q


def catalog() -> dict[str, LibraryQuery]:
    out = {}
    for f in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if f.name.endswith(".sql"):
            out[f.name[:-4]] = _parse(f.name[:-4], f.read_text())
    return out


def run_query(workspace, name: str, params: dict[str, str]):
    cat = catalog()
    if name not in cat:
        raise QueryError(f"no query {name!r}; replay query --list shows the library")
    q = cat[name]
    unknown = set(params) - set(q.params)
    if unknown:
        raise QueryError(f"{name} takes no parameter {', '.join(sorted(unknown))}; it takes: {', '.join(q.params) or 'none'}")
    values = {p: params.get(p) for p in q.params}
    needed = [ds.strip() for ds in q.needs.split(",") if ds.strip()]
    con = connect(workspace)
    try:
        have = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        missing = [ds for ds in needed if ds not in have]
        if missing:
            raise QueryError(f"{name} needs {', '.join(missing)}, and the workspace has none yet "
                             f"(replay ingest / replay run make them)")
        sql = "\n".join(ln for ln in q.sql.splitlines() if not ln.startswith("--"))
        used = {p: v for p, v in values.items() if f"${p}" in sql}
        return con.sql(sql, params=used or None).pl()
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    finally:
        con.close()
