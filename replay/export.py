"""A run - and, beside it, the trace it replayed - as Chrome trace-event JSON, the
format ui.perfetto.dev and chrome://tracing open.

The format is the Trace Event Format (Duca and Griffith, "Trace Event Format",
https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU/): the
JSON Object Format ``{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}``,
timestamps and durations in microseconds (fractions allowed: we give nanoseconds as
three decimals), and four kinds of event:

* ``X`` complete events (a slice with ``dur``): each op, and each lock wait nested in
  its op.  Complete events need no matching end; slices on one track must nest, which
  ``_Out`` checks as it writes (a slice may not end after the slice it starts in).
* ``i`` instant events with thread scope (``"s": "t"``): fallbacks to mmap_lock, per-VMA
  lock retries and misses; in the recorded trace, faults whose end the trace lacks.
* ``C`` counter events (process-local, as the format says counters are): each CPU's
  running count of cache-line transfers.
* ``M`` metadata events: ``process_name``, ``process_sort_index``, ``thread_name``.

Tracks.  A *process* per CPU - ``sim CPU n`` (pid n+1) for the simulation and
``recorded CPU n`` (pid 100001+n) for the trace - and a *thread* track in it per thread
that ran there.  A CPU with one thread is one track; where threads share a simulated
CPU (more threads than CPUs, or several mms: each mm replays on its own from time 0)
their ops interleave or overlap in time - a thread blocked on a lock leaves its CPU to
another - and one track per CPU would nest one thread's fault inside another's.
Perfetto keys a thread by (pid, tid) (src/trace_processor/importers/common/
process_tracker.cc, ``ProcessTracker::UpdateThread``), so a recorded thread that
migrated between CPUs appears once under each CPU it ran an op on.

Lock waits.  Each wait in the run's ``waits`` table (replay/engine/waits.py: asleep on
an rwsem, a writer spinning on the owner, a spin on sem->wait_lock, a writer waiting for
vm_refcnt's readers, a fault-path spinlock) is a slice at the time it happened, nested
in its op, named as the recorded side names its own (``mmap_lock wait (read)``;
``... spin`` for a spin), with the lock, mode and length as args.  An op's outcome,
fallback flag and attempts are in ``results`` with no time of their own: fallbacks and
retries are instants at the op's start.  A run replayed before the engine recorded
waits has no waits table: its ops are drawn without wait slices, and otherData says so.
The recorded side's lock waits are ``mmap_lock_start_locking`` to the next
``mmap_lock_acquire_returned`` of the same thread (include/trace/events/mmap_lock.h),
placed on the track of the op they happen in.

Memory stays bounded: the rows come from DuckDB sorted per track (an external sort
under ``MEMORY_LIMIT``, spilling to a temporary directory) as Arrow batches, and the
JSON is written as it is made, to a temporary file renamed over ``-o`` at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPEC = "https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU/"
SIM_PID = 1  # + simulated CPU
REC_PID = 100_001  # + recorded CPU
MEMORY_LIMIT = "1GB"  # DuckDB's, for the sorts; beyond it they spill to disk
BATCH = 8_192  # rows a batch: Python holds one batch of output lines at a time

SIM, REC = "simulated", "recorded"  # the events' categories ("cat"): a viewer can hide either
# event names (the tests count them against the results)
WAIT, FALLBACK, TRANSFERS = "lock wait", "fallback", "line transfers"
OUTCOME_INSTANTS = ("retry", "miss")  # per-VMA lock outcomes drawn as instants, besides fallbacks
NO_END = " (end not traced)"  # recorded ops whose end the trace lacks are instants named KIND + this
REC_WAIT = "mmap_lock wait"  # + " (read)" / " (write)"
REC_FALLBACK = "fallback (observed)"


class ExportError(ValueError):
    """Input that cannot be exported as it stands (one line for the CLI)."""


@dataclass
class _Track:
    last_ts: int = 0
    open_ends: list = field(default_factory=list)  # ends of the slices open at last_ts, outermost first


class _Out:
    """Writes trace events as they come and holds the format's rules per track: time
    starts at 0 and never goes back on a track, and a complete event lies inside the
    slice it starts in.  A breach is a defect of this module, not of the input."""

    def __init__(self, f):
        self.f = f
        self.n = 0
        self.tracks: dict[tuple, _Track] = {}
        self.counts: Counter = Counter()  # (ph, cat, name) -> events written
        self._key: tuple | None = None
        self._t = _Track()
        self._buf: list[str] = []
        self._started = False

    def _write(self, s: str) -> None:
        self._buf.append(s)
        self.n += 1
        if len(self._buf) >= 8192:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.f.write((",\n" if self._started else "\n") + ",\n".join(self._buf))
            self._started = True
            self._buf.clear()

    def meta(self, pid: int, tid: int | None, name: str, args: dict) -> None:
        tid_s = "" if tid is None else f',"tid":{tid}'
        self._write(f'{{"ph":"M","pid":{pid}{tid_s},"name":"{name}","args":{json.dumps(args)}}}')

    def put(self, track: tuple, ts: int, dur: int | None, line: str, count: tuple) -> None:
        """One event, ``line`` its JSON; ``dur`` for a complete event, None for the rest."""
        if track != self._key:  # rows come sorted by track: this is rare
            self._key = track
            self._t = self.tracks.setdefault(track, _Track())
        t = self._t
        if ts < t.last_ts:
            raise AssertionError(f"export: {count} at {ts} ns on track {track} comes after {t.last_ts} ns")
        t.last_ts = ts
        ends = t.open_ends
        while ends and ends[-1] <= ts:
            ends.pop()
        if dur is not None:
            if ends and ts + dur > ends[-1]:
                raise AssertionError(f"export: {count} [{ts}, {ts + dur}] ns on track {track} ends after the "
                                     f"slice it starts in ({ends[-1]} ns)")
            ends.append(ts + dur)
        self.counts[count] += 1
        self._buf.append(line)
        self.n += 1
        if len(self._buf) >= 8192:
            self.flush()


def _q(s: str | Path) -> str:
    return "'" + str(s).replace("'", "''") + "'"


# The event lines are made in SQL (DuckDB does it on every core; formatting them in
# Python was most of the time).  jstr: a JSON string literal of a value that has no
# control characters (kinds, outcomes, mm keys: made by the op builder); names from
# the maps snapshot and comms go through Python's encoder instead.  us: nanoseconds
# as the format's microseconds, exactly.
_MACROS = r"""
CREATE MACRO jstr(x) AS '"' || replace(replace(x, '\', '\\'), '"', '\"') || '"';
CREATE MACRO us(n) AS printf('%d.%03d', n // 1000, n % 1000);
CREATE MACRO kv(k, v) AS CASE WHEN v IS NOT NULL THEN '"' || k || '":' || v END;
CREATE MACRO jbool(b) AS CASE WHEN b THEN 'true' WHEN NOT b THEN 'false' END;
CREATE MACRO jlist(l) AS CASE WHEN l IS NOT NULL THEN '[' || array_to_string(l, ',') || ']' END;
"""


@contextlib.contextmanager
def _duck():
    """A DuckDB connection for the export's own fixed queries over the files it names:
    sorts bounded by MEMORY_LIMIT, spilling to a temporary directory."""
    import duckdb

    spill = tempfile.mkdtemp(prefix="replay-export-")
    con = duckdb.connect(":memory:", config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill,
                                             "preserve_insertion_order": "false"})
    try:
        con.execute("SET enable_progress_bar = false")
        for m in _MACROS.strip().splitlines():
            con.execute(m)
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _tuples(con, sql: str):
    """A query's rows as tuples, batch by batch."""
    for batch in con.sql(sql).to_arrow_reader(BATCH):
        yield from zip(*(c.to_pylist() for c in batch.columns))


@dataclass
class Sources:
    """The files an export reads: the run's results, waits and ``runs`` row, and its
    trace's ops, vmas and events (None where the workspace has none: the export says
    less)."""
    results: Path
    run: dict
    waits: Path | None = None
    ops: Path | None = None
    vmas: Path | None = None
    events: Path | None = None


def export(src: Sources, dest: Path, with_trace: bool = False) -> dict:
    """Write the run (with ``with_trace`` also its recorded trace) to ``dest``
    atomically; return the event counts by (phase, category, name) and the notes put
    in otherData."""
    from .workspace import atomic_output

    run = src.run
    if with_trace and (src.ops is None or src.events is None):
        raise ExportError(f"trace {run['trace_id']!r} of run {run['run_id']} is no longer in the workspace "
                          "(or has no ops): export the run without --trace")
    notes: dict = {}
    with _duck() as con, atomic_output(dest) as tmp:
        with open(tmp, "w", buffering=1 << 20) as f:
            f.write('{"traceEvents":[')
            out = _Out(f)
            comm = _comms(con, src)
            _vma_table(con, src)
            _simulated(con, src, out, notes, comm)
            if with_trace:
                _recorded(con, src, out, notes, comm)
            out.flush()
            other = {"tool": "replay export", "format": SPEC, **{k: run.get(k) for k in (
                "run_id", "trace_id", "model", "machine", "cpus", "seed", "placement", "loop")}, **notes}
            f.write('\n],\n"displayTimeUnit":"ns",\n"otherData":' + json.dumps(other, default=str) + "}\n")
    return {"counts": dict(out.counts), "events": out.n, "notes": notes}


def _comms(con, src: Sources) -> dict:
    if src.events is None:
        return {}
    return dict(con.execute(f"SELECT tid, any_value(CAST(comm AS VARCHAR)) FROM read_parquet({_q(src.events)}) "
                            "WHERE tid IS NOT NULL AND comm IS NOT NULL GROUP BY tid").fetchall())


def _thread_name(tid, mm, comm: dict) -> str:
    who = f"{comm[tid]} {tid}" if comm.get(tid) else f"tid {tid}"
    return who + (f" ({mm})" if mm else "")


def _vma_table(con, src: Sources) -> None:
    """vtext(vma_id, js): each VMA as 'start-end prot name', a JSON string literal."""
    import pyarrow as pa

    ids, texts = [], []
    if src.vmas is not None:
        for vid, start, end, prot, name in con.execute(
                f'SELECT vma_id, start, "end", prot, name FROM read_parquet({_q(src.vmas)})').fetchall():
            ids.append(vid)
            texts.append(json.dumps(f"{start:x}-{end:x} {prot or ''}" + (f" {name}" if name else "")))
    con.register("vtext", pa.table({"vma_id": pa.array(ids, pa.int64()), "js": pa.array(texts, pa.string())}))


def _simulated(con, src: Sources, out: _Out, notes: dict, comm: dict) -> None:
    run = src.run
    res = f"read_parquet({_q(src.results)})"
    label = f"{run['model']}, {run['machine']}"
    threads = con.execute(f"SELECT DISTINCT sim_cpu, tid, mm FROM {res} ORDER BY sim_cpu, tid").fetchall()
    for cpu in sorted({c for c, _, _ in threads}):
        out.meta(SIM_PID + cpu, None, "process_name", {"name": f"sim CPU {cpu} ({label})"})
        out.meta(SIM_PID + cpu, None, "process_sort_index", {"sort_index": cpu})
    for cpu, tid, mm in threads:
        out.meta(SIM_PID + cpu, tid, "thread_name", {"name": _thread_name(tid, mm, comm)})
    writers = ("(SELECT NULL::BIGINT AS op_id, NULL::BIGINT[] AS vma_ids WHERE false)" if src.ops is None else
               f"(SELECT op_id, vma_ids FROM read_parquet({_q(src.ops)}) WHERE CAST(kind AS VARCHAR) <> 'fault')")
    model = json.dumps(run["model"])
    head = '\'"pid":\' || pid || \',"tid":\' || tid || \',"ts":\' || us(s)'
    wait_cte, wait_union = _wait_rows(src, head)
    sql = f"""
        WITH r AS (
            SELECT r.*, {SIM_PID} + r.sim_cpu AS pid, CAST(round(r.start_ns) AS BIGINT) AS s,
                   CAST(round(r.end_ns) AS BIGINT) AS e, CAST(round(r.lock_wait_ns) AS BIGINT) AS wait,
                   v.js AS vma, w.vma_ids AS writes
            FROM {res} r LEFT JOIN vtext v ON v.vma_id = r.vma_id LEFT JOIN {writers} w ON w.op_id = r.op_id),
        x AS (SELECT *, e - s AS d FROM r){wait_cte},
        ops AS (
        SELECT pid, tid, s, s AS os, 0 AS what, op_id, 0::BIGINT AS n, d, kind, outcome,
            '{{"ph":"X",' || {head} || ',"dur":' || us(d) || ',"name":' || jstr(kind)
              || ',"cat":"{SIM}","args":{{' || concat_ws(',', kv('model', '{model}'), kv('op_id', op_id::VARCHAR),
                 kv('mm', jstr(mm)), kv('vma_id', vma_id::VARCHAR), kv('vma', vma), kv('vma_ids', jlist(writes)),
                 kv('outcome', jstr(outcome)), kv('fallback', jbool(fallback)), kv('attempts', attempts::VARCHAR),
                 kv('lock_wait_ns', wait::VARCHAR), kv('cache_ns', printf('%.1f', cache_ns)),
                 kv('line_transfers', line_transfers::VARCHAR)) || '}}}}' AS op_line,
            CASE WHEN fallback THEN '{{"ph":"i","s":"t",' || {head} || ',"name":"{FALLBACK}","cat":"{SIM}",'
                 || '"args":{{"op_id":' || op_id || ',"outcome":' || jstr(outcome) || '}}}}' END AS fb_line,
            CASE WHEN outcome IN {OUTCOME_INSTANTS} THEN '{{"ph":"i","s":"t",' || {head} || ',"name":' || jstr(outcome)
                 || ',"cat":"{SIM}","args":{{"op_id":' || op_id || ',"attempts":' || attempts || '}}}}' END AS oc_line
        FROM x{wait_union})
        SELECT pid, tid, s, d, what, kind, outcome, op_line, fb_line, oc_line FROM ops
        ORDER BY pid, tid, s, os, what, op_id, n"""
    for pid, tid, s, d, what, kind, outcome, op_line, fb_line, oc_line in _tuples(con, sql):
        track = (pid, tid)
        if what:  # a lock wait, nested in its op (which comes first at its start: os, what)
            out.put(track, s, d, op_line, ("X", SIM, WAIT))
            continue
        out.put(track, s, d, op_line, ("X", SIM, kind))
        if fb_line is not None:
            out.put(track, s, None, fb_line, ("i", SIM, FALLBACK))
        if oc_line is not None:
            out.put(track, s, None, oc_line, ("i", SIM, outcome))
    # each CPU's running count of line transfers, at the end of each op that made some
    sql = f"""
        WITH c AS (
            SELECT {SIM_PID} + sim_cpu AS pid, CAST(round(end_ns) AS BIGINT) AS e,
                   sum(line_transfers) OVER (PARTITION BY sim_cpu ORDER BY end_ns, op_id ROWS UNBOUNDED PRECEDING) AS n
            FROM {res} WHERE line_transfers > 0)
        SELECT pid, e, '{{"ph":"C","pid":' || pid || ',"ts":' || us(e) || ',"name":"{TRANSFERS}","cat":"{SIM}",'
               || '"args":{{"transfers":' || n || '}}}}'
        FROM c ORDER BY pid, e, n"""
    for pid, e, line in _tuples(con, sql):
        out.put((pid, "C"), e, None, line, ("C", SIM, TRANSFERS))
    notes["simulated"] = (f"one process per simulated CPU (pid = {SIM_PID} + CPU), a thread track per thread on it; "
                          "each lock wait a slice nested in its op at the time it happened (the run's waits table); "
                          "fallbacks and retries instants at the op's start: the results record an op's outcome, "
                          "not when in the op it happened")
    if src.waits is None:
        notes["simulated_waits"] = ("the run was replayed before the engine recorded each wait (it has no waits "
                                    "table): no lock wait slices; replay run it again for them")


def _wait_rows(src: Sources, head: str) -> tuple[str, str]:
    """The SQL of the simulated lock waits - a CTE, and its rows to ``UNION ALL`` onto the
    ops' (none without a waits table): each on its op's track, ordered after the op at
    the op's start (``os``, ``what``), then in the order they were recorded (``n``, the
    row in the file).  Rounded to whole ns as the ops are, a wait stays inside its op:
    rounding keeps order."""
    if src.waits is None:
        return "", ""
    cte = f""",
        wt AS (
            SELECT w.*, w.file_row_number AS n, {SIM_PID} + w.sim_cpu AS pid, CAST(round(w.start_ns) AS BIGINT) AS s,
                   CAST(round(w.end_ns) AS BIGINT) - CAST(round(w.start_ns) AS BIGINT) AS d,
                   CAST(round(r.start_ns) AS BIGINT) AS os,
                   w.lock_class || CASE WHEN w.how = 'spin' THEN ' spin' ELSE ' wait' END
                     || coalesce(' (' || w.mode || ')', '') AS name
            FROM read_parquet({_q(src.waits)}, file_row_number = true) w
            JOIN read_parquet({_q(src.results)}) r ON r.mm = w.mm AND r.op_id = w.op_id)"""
    union = f"""
        UNION ALL
        SELECT pid, tid, s, os, 1, op_id, n, d, NULL::VARCHAR, NULL::VARCHAR,
            '{{"ph":"X",' || {head} || ',"dur":' || us(d) || ',"name":' || jstr(name) || ',"cat":"{SIM}","args":{{'
              || concat_ws(',', kv('op_id', op_id::VARCHAR), kv('lock', jstr(lock)), kv('mode', jstr(mode)),
                           kv('how', jstr(how)), kv('wait_ns', printf('%.1f', wait_ns)),
                           kv('counted_in', jstr(counted_in))) || '}}}}',
            NULL::VARCHAR, NULL::VARCHAR
        FROM wt"""
    return cte, union


def _recorded(con, src: Sources, out: _Out, notes: dict, comm: dict) -> None:
    """The trace as recorded: each op on the CPU and at the time the trace shows it,
    mmap_lock waits from the tracepoints, nested in the op they happen in."""
    ops, ev = f"read_parquet({_q(src.ops)})", f"read_parquet({_q(src.events)})"
    con.execute(f"""
        CREATE TEMP TABLE waits AS
        WITH m AS (
            SELECT tid, cpu, ts_ns, CAST(event AS VARCHAR) AS ev, write,
                   lead(CAST(event AS VARCHAR)) OVER w AS next_ev, lead(ts_ns) OVER w AS next_ts,
                   lead(success) OVER w AS next_success
            FROM {ev}
            WHERE CAST(event AS VARCHAR) IN ('mmap_lock_start', 'mmap_lock_acquired', 'mmap_lock_released')
            WINDOW w AS (PARTITION BY tid ORDER BY ts_ns, seq))
        SELECT tid, cpu, ts_ns AS ws, next_ts AS we, write, next_success AS success,
               coalesce(next_ev = 'mmap_lock_acquired', false) AS paired
        FROM m WHERE ev = 'mmap_lock_start'""")
    t0 = con.execute(f"SELECT least((SELECT min(start_ns) FROM {ops}), (SELECT min(ws) FROM waits))").fetchone()[0] or 0
    unpaired = con.execute("SELECT count(*) FROM waits WHERE NOT paired").fetchone()[0]
    tracks = con.execute(f"SELECT DISTINCT coalesce(cpu, -1), tid, mm FROM {ops} ORDER BY 1, 2").fetchall()
    cpus = sorted({c for c, _, _ in tracks})
    # a wait belongs to the op of its thread that started last before it when it ends
    # within that op; else it stands alone on the CPU it started on (a track of its own
    # if no op of the thread ran there)
    placed = f"""
        SELECT w.*, CASE WHEN o.end_ns IS NOT NULL AND w.we <= o.end_ns THEN o.cpu ELSE w.cpu END AS track_cpu,
               CASE WHEN o.end_ns IS NOT NULL AND w.we <= o.end_ns THEN o.op_id END AS in_op
        FROM (SELECT * FROM waits WHERE paired) w
        ASOF LEFT JOIN (SELECT op_id, tid, cpu, start_ns, end_ns FROM {ops}) o ON w.tid = o.tid AND w.ws >= o.start_ns"""
    extra = con.execute(f"SELECT DISTINCT coalesce(track_cpu, -1), tid FROM ({placed}) EXCEPT "
                        f"SELECT DISTINCT coalesce(cpu, -1), tid FROM {ops}").fetchall()
    for cpu in sorted(set(cpus) | {c for c, _ in extra}):
        name = f"recorded CPU {cpu} ({src.run['trace_id']})" if cpu >= 0 else f"recorded, CPU unknown ({src.run['trace_id']})"
        out.meta(REC_PID + cpu, None, "process_name", {"name": name})
        out.meta(REC_PID + cpu, None, "process_sort_index", {"sort_index": REC_PID + cpu})
    for cpu, tid, mm in tracks + [(c, t, None) for c, t in extra]:
        out.meta(REC_PID + cpu, tid, "thread_name", {"name": _thread_name(tid, mm, comm)})
    head = '\'"pid":\' || pid || \',"tid":\' || tid || \',"ts":\' || us(s)'
    sql = f"""
        WITH o AS (
            SELECT {REC_PID} + coalesce(cpu, -1) AS pid, tid, start_ns - {t0} AS s, end_ns - start_ns AS d,
                   CAST(kind AS VARCHAR) AS kind, observed_fallback, op_id,
                   concat_ws(',', kv('op_id', op_id::VARCHAR), kv('mm', jstr(mm)), kv('vma_id', vma_id::VARCHAR),
                       kv('vma', v.js), kv('vma_ids', jlist(vma_ids)), kv('write', jbool(write)),
                       kv('kernel', jbool(kernel)), kv('observed_fallback', jbool(observed_fallback)),
                       kv('mmap_lock_hold_ns', hold_ns::VARCHAR), kv('address', printf('"0x%x"', address)),
                       kv('length', length::VARCHAR), kv('ret', ret::VARCHAR)) AS args
            FROM {ops} LEFT JOIN vtext v USING (vma_id)),
        l AS (
            SELECT {REC_PID} + coalesce(track_cpu, -1) AS pid, tid, ws - {t0} AS s, we - ws AS d,
                   '{REC_WAIT} (' || CASE WHEN write THEN 'write' ELSE 'read' END || ')' AS kind,
                   NULL::BOOLEAN AS observed_fallback, in_op AS op_id,
                   concat_ws(',', kv('op_id', in_op::VARCHAR), kv('acquired', jbool(success)),
                       kv('wait_ns', (we - ws)::VARCHAR)) AS args
            FROM ({placed})),
        u AS (SELECT *, 0 AS what FROM o UNION ALL SELECT *, 1 FROM l)
        SELECT pid, tid, s, d, CASE WHEN d IS NULL THEN kind || '{NO_END}' ELSE kind END AS name,
            CASE WHEN d IS NULL THEN '{{"ph":"i","s":"t",' ELSE '{{"ph":"X",' END || {head}
              || CASE WHEN d IS NULL THEN '' ELSE ',"dur":' || us(d) END
              || ',"name":' || jstr(CASE WHEN d IS NULL THEN kind || '{NO_END}' ELSE kind END)
              || ',"cat":"{REC}","args":{{' || args || '}}}}' AS line,
            CASE WHEN observed_fallback THEN '{{"ph":"i","s":"t",' || {head} || ',"name":"{REC_FALLBACK}",'
              || '"cat":"{REC}","args":{{"op_id":' || op_id || '}}}}' END AS fb_line
        FROM u
        ORDER BY pid, tid, s, d DESC NULLS LAST, what"""
    for pid, tid, s, d, name, line, fb_line in _tuples(con, sql):
        track = (pid, tid)
        out.put(track, s, d, line, ("X" if d is not None else "i", REC, name))
        if fb_line is not None:
            out.put(track, s, None, fb_line, ("i", REC, REC_FALLBACK))
    notes["recorded"] = (f"one process per recorded CPU (pid = {REC_PID} + CPU); time 0 is the trace's first op or "
                         f"mmap_lock wait, {t0} ns on the trace's clock; a fault's end is traced only when it took "
                         "mmap_lock (its mmap_read_unlock), so the other faults are instants")
    if unpaired:
        notes["recorded_unpaired_lock_starts"] = unpaired
