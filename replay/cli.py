"""The ``replay`` command line.

Errors are one line on stderr: exit 1 for bad input, 2 for bad usage; never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(
    name="replay",
    help=(
        "Replay recorded page-fault and mmap_lock traces through kernel locking designs "
        "(mmap_lock, per-VMA locks, vm_refcnt) on simulated machines.\n\n"
        "Start with `replay ingest TRACE` (or `replay record -o NAME -- CMD`), then `replay traces`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)
if not out.is_terminal:  # pipes and CI logs: do not squeeze tables into 80 columns
    out = Console(soft_wrap=True, width=160)
err = Console(stderr=True, soft_wrap=True)


class Fmt(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class InFmt(str, Enum):
    auto = "auto"
    perf_script = "perf-script"
    ftrace = "ftrace"
    trace_cmd = "trace-cmd"
    perf_data = "perf-data"
    perf_json = "perf-json"


class Fail(Exception):
    """A user-facing error: one line, exit code ``code``."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


WorkspaceOpt = typer.Option(None, "--workspace", "-w", envvar="REPLAY_WORKSPACE",
                            help="Workspace directory (default: ./replay-data).")
FormatOpt = typer.Option(Fmt.table, "--format", "-f", help="Output format.")


def _emit(rows: list[dict], columns: list[str], fmt: Fmt, title: str | None = None) -> None:
    if fmt is Fmt.json:
        print(json.dumps(rows, indent=2, default=str))
    elif fmt is Fmt.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        out.print(_table(rows, columns, title))


def _table(rows: list[dict], columns: list[str], title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        num = rows and isinstance(rows[0].get(c), (int, float)) and not isinstance(rows[0].get(c), bool)
        t.add_column(c, justify="right" if num else "left")
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in columns))
    return t


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def _progress(total: int | None, what: str):
    """A rich progress bar on stderr for work over a second; silent when not a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    prog = Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)
    task = prog.add_task(what, total=total)

    def update(_nbytes, consumed):
        prog.update(task, completed=consumed)

    return prog, update


@app.command()
def ingest(
    path: str = typer.Argument(..., help="Trace file (text, .gz, .zst, perf.data, perf JSON) or '-' for stdin."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Trace name (default: the file name without extensions)."),
    fmt: InFmt = typer.Option(InFmt.auto, "--format", help="Input format; auto detects it from the content."),
    workspace: Optional[Path] = WorkspaceOpt,
    strict: bool = typer.Option(False, "--strict", help="Fail on the first malformed line instead of keeping it in rejects."),
    replace: bool = typer.Option(False, "--replace", help="Replace a trace of the same name."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="/proc/PID/maps snapshot taken when the trace started (seeds the VMA tracker)."),
    output: Fmt = typer.Option(Fmt.table, "--output-format", "-O", help="How to print the summary (--format is the input's)."),
):
    """Parse a trace into the workspace's typed Parquet datasets and print per-event counts."""
    from .ingesting import run_ingest

    snapshot = None
    if maps is not None:
        from .ops import MapsError, parse_maps

        try:
            snapshot = maps.read_text()
            parse_maps(snapshot)
        except OSError as e:
            raise Fail(f"cannot read --maps {maps}: {e.strerror}")
        except (MapsError, UnicodeDecodeError) as e:
            raise Fail(f"--maps {maps}: {e}")
    res = run_ingest(path, name, fmt.value, workspace, strict, replace, maps_snapshot=snapshot)
    _print_ingest(res, output)


def _print_ingest(res, output: Fmt) -> None:
    c = res.counts
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    if output is not Fmt.table:
        rows = [{"trace_id": res.trace_id, "event": k, "count": v} for k, v in sorted(c.per_event.items())]
        if output is Fmt.json:
            print(json.dumps({"trace_id": res.trace_id, "format": res.format, "source": res.source,
                              "sha256": res.sha256, "events": dict(sorted(c.per_event.items())),
                              "lines": {k: getattr(c, k) for k in ("lines", "parsed", "header", "blank", "callchain",
                                                                   "lost_records", "malformed")},
                              "lost_events": c.lost_events, "out_of_order": res.out_of_order,
                              "first_rejects": res.first_rejects, "warnings": res.warnings,
                              "path": str(res.where)}, indent=2))
        else:
            _emit(rows, ["trace_id", "event", "count"], output)
        return
    _emit([{"event": k, "count": v} for k, v in sorted(c.per_event.items())], ["event", "count"], Fmt.table,
          title=f"{res.trace_id}: {c.parsed:,} events ({res.format}, {res.text_bytes / 1e6:,.1f} MB in {res.seconds:.2f} s)")
    acct = [
        {"lines": "parsed events", "count": c.parsed}, {"lines": "header/comment", "count": c.header},
        {"lines": "blank", "count": c.blank}, {"lines": "callchain frames", "count": c.callchain},
        {"lines": "lost-event records", "count": c.lost_records}, {"lines": "malformed (kept in rejects)", "count": c.malformed},
        {"lines": "total", "count": c.lines},
    ]
    _emit(acct, ["lines", "count"], Fmt.table, title="line accounting")
    for r in res.first_rejects:
        err.print(f"  malformed line {r['line']}: {r['reason']}: {(r['text'] or '')[:100]!r}", markup=False, highlight=False)
    out.print(f"wrote {res.where}")


@app.command()
def traces(workspace: Optional[Path] = WorkspaceOpt, output: Fmt = FormatOpt):
    """List the traces in the workspace."""
    from .workspace import Workspace

    t = Workspace(workspace).traces()
    rows = [] if t is None else t.drop_columns(["maps_snapshot"]).to_pylist()
    for r in rows:
        r["ingested_at"] = str(r["ingested_at"])
    cols = ["trace_id", "format", "events", "lines", "malformed", "lost_events", "kernel", "nr_cpus", "source"]
    if output is Fmt.json:
        cols = list(rows[0]) if rows else cols
    if not rows and output is Fmt.table:
        out.print("no traces yet: replay ingest TRACE, or replay record -o NAME -- CMD")
        return
    _emit(rows, cols, output)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def record(
    ctx: typer.Context,
    output_name: str = typer.Option(..., "--output", "-o", help="Trace name to ingest the recording as."),
    events: Optional[str] = typer.Option(None, "--events", "-e", help="Comma-separated tracepoints (default: page faults, mmap_lock, mm syscalls)."),
    ftrace: bool = typer.Option(False, "--ftrace", help="Record through tracefs instead of perf."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="Also keep the raw recording (perf.data, or ftrace text) at this path, and the maps snapshot at PATH.maps."),
    buffer_mb: int = typer.Option(64, "--buffer-mb", help="Ring buffer size per CPU (MiB)."),
    workspace: Optional[Path] = WorkspaceOpt,
    replace: bool = typer.Option(False, "--replace", help="Replace a trace of the same name."),
):
    """Record CMD with perf (or tracefs), snapshot its /proc/PID/maps at exec, then ingest.

    Usage: replay record -o NAME [--ftrace] -- CMD [ARGS...]"""
    from .recording import record_and_ingest, workload_failure

    cmd = list(ctx.args)
    if not cmd:
        raise Fail("record needs a command after --, e.g. replay record -o ls -- ls -l", 2)
    res, status = record_and_ingest(cmd, output_name, events.split(",") if events else None, ftrace, keep,
                                    buffer_mb, workspace, replace)
    _print_ingest(res, Fmt.table)
    failed = workload_failure(status)
    if failed is not None:
        msg, code = failed
        raise Fail(f"{msg}; what it did until then is recorded and ingested as {res.trace_id!r}", code)


@app.command()
def ops(
    trace: str = typer.Argument(..., help="Trace name in the workspace (see replay traces)."),
    same_mm: bool = typer.Option(False, "--same-mm", help="Treat every thread as one address space (for traces without pids)."),
    workspace: Optional[Path] = WorkspaceOpt,
    output: Fmt = FormatOpt,
):
    """Build a trace's ops (faults and address-space writers, with VMAs and observed fallbacks)."""
    from .ops import ops_summary
    from .workspace import Workspace

    ws = Workspace(workspace)
    if not ws.has_trace(trace):
        raise Fail(f"no trace {trace!r} in {ws.root} (replay traces lists them)")
    path, rep = _build_ops(ws, trace, ws.trace_sha(trace), same_mm)
    c = ops_summary(path)  # read back a batch at a time: a trace's ops need not fit in memory
    user, fb = c["user_faults"], c["observed_fallbacks"]
    summary = {
        "trace_id": trace, "ops": c["ops"], "threads": rep.threads, "processes": rep.processes,
        "attribution": rep.rule, "user_faults": user, "kernel_faults": c["kernel_faults"],
        "observed_fallbacks": fb, "observed_fallback_pct": round(100 * fb / user, 3) if user else None,
        "observed_anon_prepare": c["observed_anon_prepare"],
        "faults_taking_mmap_write": c["faults_taking_mmap_write"],
        "vmas_seeded_from_maps": rep.seeded_vmas, "vmas_inferred": rep.inferred_vmas,
        "faults_in_inferred_vmas": rep.faults_in_inferred, "failed_calls": rep.failed_calls,
        "unpaired_enters": rep.unpaired_enter, "unmatched_exits": rep.unmatched_exit,
        "out_of_order_events": rep.out_of_order, "faults_outside_user_space": rep.faults_outside_user_space,
        "out_of_range_calls": rep.out_of_range_calls,
    }
    if output is Fmt.json:
        summary["kinds"] = {k: n for k, (n, _) in c["kinds"].items()}
        print(json.dumps(summary, indent=2))
        return
    if output is Fmt.csv:
        _emit([summary], list(summary), output)
        return
    _emit([{"kind": k, "ops": n, "mean duration ns": None if mean is None else round(mean)}
           for k, (n, mean) in c["kinds"].items()], ["kind", "ops", "mean duration ns"], output,
          title=f"{trace}: {c['ops']:,} ops (durations: syscalls enter->exit; faults only where they fell back)")
    _emit([{"": k, "value": v} for k, v in summary.items() if k not in ("trace_id", "ops")], ["", "value"], output)
    for n in rep.notes:
        err.print(f"note: {n}", markup=False, highlight=False)


FOOTPRINT_COLUMNS = ["model", "free_mode", "peak_vmas", "peak_objects", "peak_rcu_held", "call_rcu_calls", "peak_slabs",
                     "peak_pages", "peak_kib", "mean_kib", "align_kib_at_peak", "waste_kib_at_peak", "bytes_per_vma_at_peak"]
FIELD_COLUMNS = ["model", "struct", "line", "bytes", "lock_line", "fields", "fault_touches", "untouched", "transfers_per_fault"]


@app.command()
def footprint(
    trace: str = typer.Argument(..., help="Trace name in the workspace (the bundled sample is ingested on first use)."),
    models_: Optional[str] = typer.Option(None, "--models", help="Comma-separated lock models (default: every model)."),
    machine: str = typer.Option("broadwell-2s", "--machine", help="Machine profile: its CPU count sets SLUB's slab order, its rcu_grace_period_ns the call_rcu() delay."),
    grace_period: Optional[float] = typer.Option(None, "--grace-period", help="call_rcu() delay in ns (default: the profile's rcu_grace_period_ns)."),
    fields: bool = typer.Option(False, "--fields", help="Instead: per line of each model's VMA, the fields a fault touches, the lock's line, and what could share it."),
    workspace: Optional[Path] = WorkspaceOpt,
    output: Fmt = FormatOpt,
):
    """The slab memory a trace's VMAs take under each model over the trace (writes the footprint dataset)."""
    import polars as pl

    from . import footprint as F
    from .machines import MachineError, load_machine
    from .models import ModelError, get_model, registry
    from .workspace import Workspace

    if grace_period is not None and not grace_period >= 0:
        raise Fail(f"--grace-period must be a number of ns >= 0, not {grace_period}", 2)
    try:
        names = [m.strip() for m in models_.split(",") if m.strip()] if models_ else sorted(registry())
        mdls = [get_model(m) for m in names]
        mach = load_machine(machine)
    except (ModelError, MachineError) as e:
        raise Fail(str(e))
    ws = Workspace(workspace)
    if fields:
        _print_field_lines(ws, trace, mdls, output)
        return
    ops, sha = _ensure_ops(ws, trace)
    vmas = pl.from_arrow(ws.read("vmas", trace))
    t0, t1 = F.trace_span(ops, vmas)
    series = pl.concat([F.model_series(m, mach, vmas, t0, t1, grace_period) for m in mdls])
    ws.write_footprint(trace, sha, series.to_arrow(), ["model", "machine"])
    from queries import QueryError, run_query

    try:
        rows = run_query(ws.root, "footprint", {"trace_id": trace}).filter(
            pl.col("model").is_in(names) & (pl.col("machine") == mach.name)).to_dicts()
    except QueryError as e:
        raise Fail(str(e))
    if output is not Fmt.table:
        _emit(rows, ["trace_id", "machine", "caches"] + FOOTPRINT_COLUMNS, output)
        return
    gp = mach.rcu_grace_period_ns if grace_period is None else grace_period
    _emit(rows, [c for c in FOOTPRINT_COLUMNS if c not in ("align_kib_at_peak", "bytes_per_vma_at_peak")], output,
          title=f"{trace}: VMA slab footprint on {mach.name} ({mach.ncpus} CPUs; call_rcu() delay {gp / 1e6:g} ms; "
                f"{(t1 - t0) / 1e6:,.1f} ms of trace)")
    _emit([{"model": r["model"], "caches": r["caches"]} for r in rows], ["model", "caches"], output,
          title="slab caches (SLUB: mm/slub.c calculate_sizes(), calculate_order())")


def _print_field_lines(ws, trace: str, mdls, output: Fmt) -> None:
    """The hot-fields table, with transfers per fault from the trace's run of each model
    on the most CPUs, where there is one."""
    import polars as pl

    from . import footprint as F

    runs = ws.runs()
    if not ws.has_trace(trace) and trace != SAMPLE_TRACE:
        raise Fail(f"no trace {trace!r} in {ws.root} (replay traces lists them)")
    rows = []
    for m in mdls:
        ls, faults = None, None
        if runs is not None and "trace_id" in runs.columns:
            mine = runs.filter((pl.col("trace_id") == trace) & (pl.col("model") == m.name)).sort(["cpus", "run_id"], descending=True)
            if mine.height:
                run = mine.row(0, named=True)
                p = ws.partition("line_stats", run["run_id"]) / "part-0.parquet"
                if p.exists():
                    ls, faults = pl.read_parquet(p), run["faults"]
        rows += F.field_lines(m, ls, faults)
    _emit(rows, FIELD_COLUMNS, output,
          title=f"{trace}: per 64-byte line of each model's per-VMA structs, the fields a fault's fast path touches "
                "(from the model's program) and transfers per fault (its run on the most CPUs, if any)")


SAMPLE_TRACE = "mprotect-race"


def _sample_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "sample_traces"


def _build_ops(ws, trace: str, sha256: str, same_mm: bool):
    """Build a trace's ops from its events (read after ``sha256``, the content the ops
    will be committed as: a trace replaced meanwhile fails the commit) and place them,
    stamped with the op builder's version.  The events are streamed from their Parquet
    file and the ops written a row group at a time.  Returns (ops path, BuildReport)."""
    from .ops import MapsError, build_ops_file
    from .workspace import PART

    events = ws.partition("events", trace) / PART
    snap = ws.read("traces", trace).column("maps_snapshot")[0].as_py()
    if not events.exists():
        raise ws.gone(trace)
    try:
        return ws.build_ops(trace, sha256, lambda ops, vmas, meta: build_ops_file(
            events, trace, snap, same_mm, ops, vmas, meta))
    except MapsError as e:
        raise Fail(f"trace {trace!r}: its /proc/PID/maps snapshot: {e}")


def _ensure_ops(ws, trace: str, same_mm: bool = False):
    """The trace's ops file and the content (sha256) it was built from, built now if
    missing or made by an older op builder; the bundled sample is ingested on first
    use.  The hash is read before the ops, so a commit checked against it fails if the
    trace was replaced in between.  A trace without a page fault is refused: there is
    nothing to replay."""
    from ingest.sources import InputError

    from .ingesting import run_ingest
    from .ops import ops_current

    if not ws.has_trace(trace):
        if trace != SAMPLE_TRACE or not (_sample_dir() / f"{trace}.txt.zst").exists():
            raise Fail(f"no trace {trace!r} in {ws.root} (replay traces lists them)")
        try:
            run_ingest(str(_sample_dir() / f"{trace}.txt.zst"), trace, "auto", ws.root, False, False,
                       maps_snapshot=(_sample_dir() / f"{trace}.maps").read_text())
        except InputError:
            if not ws.has_trace(trace):
                raise
            # another command ingested the sample first: theirs is the same content
    sha = ws.trace_sha(trace)
    if sha is None:
        raise ws.gone(trace)
    p = ws.ops_file(trace)
    if p is None or same_mm or not ops_current(p):
        _build_ops(ws, trace, sha, same_mm)
        p = ws.ops_file(trace)
        if p is None:
            raise ws.gone(trace)
    _require_faults(ws, trace, p)
    return str(p), sha


def _ops_snapshot(ws, trace: str, stage: str):
    """``_ensure_ops`` with the ops file hard-linked into ``stage``: a replay opens the
    file several times, and a rebuild meanwhile renames a new file over the original."""
    ops, sha = _ensure_ops(ws, trace)
    snap = os.path.join(stage, "ops.parquet")
    try:
        os.link(ops, snap)
    except OSError:  # a filesystem without hard links: the original it is
        return ops, sha
    return snap, sha


def _replay_to(ws, stage, ops, mdl, mach, cpus, seed, placement, trace, sha, open_loop, fault_service, engine,
               bar: bool = True):
    """One replay with a progress bar (unless ``bar`` is off), its results streamed into
    ``stage``, committed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine import replay
    from .engine.source import OpsSource
    from .workspace import writing

    prog = Progress(TextColumn(f"replay {trace} under {mdl.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("ops"),
                    TimeElapsedColumn(), console=err, transient=True, disable=not (bar and err.is_terminal))
    task = prog.add_task("run", total=OpsSource(ops).n)
    try:
        with prog, writing(ws.root):
            r = replay(ops, mdl, mach, cpus or mach.ncpus, seed, placement, trace, sha, open_loop=open_loop,
                       progress=lambda done: prog.update(task, completed=done), fault_service=fault_service,
                       engine=engine, results_path=os.path.join(stage, "results.parquet"))
    except (ValueError, RuntimeError) as e:  # bad parameters; an engine that could not finish the replay
        raise _replay_failed(trace, ops, e)
    ws.write_run(r, stage)
    return r


def run_one(ws, trace, mdl, mach, cpus, seed, placement, open_loop, fault_service, engine, bar: bool = True,
            expect_sha: str | None = None):
    """One run replayed and committed: what ``replay run`` does, and each job of
    ``replay sweep`` (in whichever process or machine runs it), so both commit alike.
    ``expect_sha``: the trace content the caller planned the run for; a trace replaced
    since then fails the run instead of replaying the new content under another id.
    Returns the Run and its summary."""
    stage = ws.stage()  # results stream here as the replay runs, then move into place
    try:
        ops, sha = _ops_snapshot(ws, trace, stage)
        if expect_sha is not None and sha != expect_sha:
            raise ws.gone(trace)
        r = _replay_to(ws, stage, ops, mdl, mach, cpus, seed, placement, trace, sha, open_loop, fault_service, engine,
                       bar)
        s = _summary_with_observed(r, ops)
    finally:
        ws.unstage(stage)
    return r, s


def model_and_machine(model: str, machine: str):
    """The lock model and machine profile named on the command line, or a Fail."""
    from .machines import MachineError, load_machine
    from .models import ModelError, get_model

    try:
        return get_model(model), load_machine(machine)
    except (ModelError, MachineError) as e:
        raise Fail(str(e))


def check_run_options(placement: str, engine: str) -> None:
    from .engine import ENGINES

    if placement not in PLACEMENTS:
        raise Fail(f"--placement must be spread, packed or as-recorded, not {placement!r}", 2)
    if engine not in ENGINES:
        raise Fail(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}", 2)


PLACEMENTS = ("spread", "packed", "as-recorded")


def _summary_with_observed(r, ops) -> dict:
    """The run's summary, with the fault service time used and the trace's own fallback rate."""
    import polars as pl

    from .engine.source import OpsSource

    s = r.summary()
    s["fault_service_ns"] = r.params["fault_service_ns"]
    s["fault_service_source"] = r.params["fault_service_source"]
    obs = OpsSource(ops).frame(["kind", "kernel", "observed_fallback"], lambda df: df.filter(
        (pl.col("kind").cast(pl.Utf8) == "fault") & ~pl.col("kernel")).select(
        pl.len().alias("rows"), pl.col("observed_fallback").count().alias("n"),
        pl.col("observed_fallback").cast(pl.Int64).sum().alias("k")))
    rows, n_obs, k_obs = (int(obs[c].sum()) for c in ("rows", "n", "k")) if obs is not None else (0, 0, 0)
    s["observed_fallback_pct"] = (round(100 * k_obs / n_obs, 3) if n_obs else 0.0) if rows else None
    return s


def _require_faults(ws, trace: str, ops_path: Path) -> None:
    """Refuse a trace whose ops hold no page fault, naming what its events were."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for b in pq.ParquetFile(ops_path).iter_batches(columns=["kind"]):
        if pc.any(pc.equal(pc.cast(b.column(0), pa.string()), "fault")).as_py():
            return
    ev = pq.read_table(ws.partition("events", trace) / "part-0.parquet", columns=["event"])
    kinds = pl.from_arrow(ev)["event"].cast(pl.Utf8).value_counts(sort=True)
    what = ", ".join(f"{r['count']:,} {r['event']}" for r in kinds.head(4).to_dicts())
    raise Fail(f"trace {trace!r} has no page faults to replay: its {ev.num_rows:,} events are {what or 'none'} "
               "(a replay needs exceptions:page_fault_user/kernel events with their fields)")


def _replay_failed(trace: str, ops_path: str, e: Exception) -> Fail:
    """The one line for a replay that could not finish.  A deadlock names its cause in
    the ops when they have one (a fault before the writer that creates its VMA); without
    one it is the engine's defect."""
    if not str(e).startswith("simulation deadlocked"):
        return Fail(str(e))
    from .ops import causal_violation

    cause = causal_violation(ops_path)
    if cause:
        return Fail(f"trace {trace!r}: {e}: its ops are not in causal order ({cause}); rebuild them: replay ops {trace}")
    return Fail(f"trace {trace!r}: {e}, and its ops are in causal order: a defect in the engine, "
                "please report it with the trace", 3)


@app.command()
def run(
    model: str = typer.Option(..., "--model", "-m", help="Lock model (replay models lists them)."),
    trace: str = typer.Option(SAMPLE_TRACE, "--trace", "-t", help="Trace name (default: the bundled sample, ingested on first use)."),
    machine: str = typer.Option("broadwell-2s", "--machine", help="Machine profile name or .toml path."),
    cpus: Optional[int] = typer.Option(None, "--cpus", "-c", help="Simulated CPUs (default: all of the machine's)."),
    seed: int = typer.Option(0, "--seed", help="Seed (recorded; the engine is deterministic without it)."),
    placement: str = typer.Option("spread", "--placement", help="Thread placement: spread (like the scheduler), packed, or as-recorded."),
    open_loop: bool = typer.Option(False, "--open-loop", help="Start each op at its recorded time instead of after the recorded gap."),
    fault_service: str = typer.Option("trace", "--fault-service", help="Fault service time: trace (median hold of the trace's fallen-back faults, if 20+), profile, or ns."),
    engine: str = typer.Option("auto", "--engine", help="auto (compiled once numba has cached it; the reference engine on a small trace until then), compiled, or reference (plain Python; same results, ~100x slower)."),
    workspace: Optional[Path] = WorkspaceOpt,
    output: Fmt = FormatOpt,
):
    """Replay a trace through a lock model on a simulated machine; print a summary."""
    from .workspace import Workspace

    mdl, mach = model_and_machine(model, machine)
    check_run_options(placement, engine)
    r, s = run_one(Workspace(workspace), trace, mdl, mach, cpus, seed, placement, open_loop, fault_service, engine)
    if output is not Fmt.table:
        if output is Fmt.json:
            print(json.dumps(s, indent=2))
        else:
            _emit([s], list(s), output)
        return
    _emit([{"": k, "value": v} for k, v in s.items() if k not in ("run_id",)], ["", "value"], Fmt.table,
          title=f"run {r.run_id}: {trace} under {mdl.name} on {mach.name} ({s['cpus']} CPUs)")
    if r.lock_stats.height:
        top = r.lock_stats.sort(["contentions", "wait_total_ns"], descending=True).head(5)
        _emit([{"lock": f"{x['lock_class']} {x['lock']}", "acquisitions": x["acquisitions"], "contentions": x["contentions"],
                "wait_total_us": round(x["wait_total_ns"] / 1e3, 1), "wait_max_us": round(x["wait_max_ns"] / 1e3, 1),
                "con_bounces": x["con_bounces"]} for x in top.to_dicts()],
              ["lock", "acquisitions", "contentions", "wait_total_us", "wait_max_us", "con_bounces"], Fmt.table,
              title="most contended locks")
    if r.line_stats.height:
        top = r.line_stats.sort("transfers", descending=True).head(5)
        _emit([{"line": hex(x["line"]), "transfers": x["transfers"], "invalidations": x["invalidations"],
                "fields": x["fields"].replace("vm_area_struct.", "vma.").replace("mm_struct.", "mm.")}
               for x in top.to_dicts()], ["line", "transfers", "invalidations", "fields"], Fmt.table,
              title="hottest cache lines")


def _csv_list(value: str | None, what: str, as_int: bool = False) -> list | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if as_int:
        try:
            return [int(v) for v in items]
        except ValueError:
            raise Fail(f"{what} takes comma-separated integers, not {value!r}", 2)
    return items


@app.command()
def sweep(
    sweep_file: Optional[Path] = typer.Argument(None, help="A TOML sweep file (traces, models, machines, cpus, iterations, seed, placement, engine, fault_service, open_loop); options given here override it."),
    traces: Optional[str] = typer.Option(None, "--traces", "--trace", "-t", help="Comma-separated traces (default: the bundled sample)."),
    models_: Optional[str] = typer.Option(None, "--models", help="Comma-separated lock models."),
    machines_: Optional[str] = typer.Option(None, "--machines", "--machine", help="Comma-separated machine profiles or .toml paths (default: broadwell-2s)."),
    cpus: Optional[str] = typer.Option(None, "--cpus", "-c", help="Comma-separated CPU counts, e.g. 1,4,14,28,56."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-k", help="Runs per combination, seeds SEED, SEED+1, ... (default 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="First seed (default 0)."),
    placement: Optional[str] = typer.Option(None, "--placement", help="spread (default), packed or as-recorded."),
    open_loop: Optional[bool] = typer.Option(None, "--open-loop/--closed-loop", help="As for replay run (default closed)."),
    fault_service: Optional[str] = typer.Option(None, "--fault-service", help="trace (default), profile or ns, as for replay run."),
    engine: Optional[str] = typer.Option(None, "--engine", help="auto (default), compiled or reference, as for replay run."),
    executor: str = typer.Option("local", "--executor", "-x", help="local (a process pool on this machine) or dask."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="local: worker processes; dask without --scheduler: LocalCluster workers (default: every core)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask: the scheduler's address, e.g. tcp://host:8786 (default: a LocalCluster here)."),
    plan_only: bool = typer.Option(False, "--plan", help="Print one `replay run` command per unfinished run (for xargs, GNU parallel, Slurm) and exit."),
    workspace: Optional[Path] = WorkspaceOpt,
    output: Fmt = FormatOpt,
):
    """Replay every combination of traces, models, machines, CPU counts and seeds, in parallel.

    Each combination is an ordinary run (the run id replay run would give); runs already
    in the workspace are skipped, so an interrupted sweep resumes where it stopped.
    Prints faults/sec per run and the mmtests comparison of the models."""
    from . import sweep as S
    from .workspace import Workspace

    f = S.read_sweep_file(sweep_file) if sweep_file is not None else {}

    def pick(given, key, default):
        return given if given is not None else f.get(key, default)

    spec = S.Spec(
        traces=pick(_csv_list(traces, "--traces"), "traces", [SAMPLE_TRACE]),
        models=pick(_csv_list(models_, "--models"), "models", None),
        machines=pick(_csv_list(machines_, "--machines"), "machines", ["broadwell-2s"]),
        cpus=pick(_csv_list(cpus, "--cpus", as_int=True), "cpus", None),
        iterations=pick(iterations, "iterations", 1), seed=pick(seed, "seed", 0),
        placement=pick(placement, "placement", "spread"), engine=pick(engine, "engine", "auto"),
        fault_service=str(pick(fault_service, "fault_service", "trace")), open_loop=pick(open_loop, "open_loop", False))
    for key in ("traces", "models", "machines", "cpus"):
        if not getattr(spec, key):
            raise Fail(f"sweep needs --{key} (or {key} in a sweep file)", 2)
    if executor not in ("local", "dask"):
        raise Fail(f"--executor must be local or dask, not {executor!r}", 2)
    if scheduler and executor != "dask":
        raise Fail("--scheduler is for --executor dask", 2)
    if workers is not None and workers < 1:
        raise Fail("--workers must be at least 1", 2)
    ws = Workspace(workspace)
    jobs = S.plan(ws, spec)
    done = S.finished(ws)
    todo = [j for j in jobs if j.run_id not in done]
    if plan_only:
        for line in S.plan_commands(todo, spec, str(ws.root)):
            print(line)
        if len(todo) < len(jobs):
            err.print(f"({len(jobs) - len(todo)} of {len(jobs)} runs are in the workspace already and left out)",
                      markup=False)
        return
    status = {j.run_id: "skipped" for j in jobs if j.run_id in done}
    failed = []
    ex = None
    try:
        if todo:
            ex = (S.DaskExecutor(scheduler, workers) if executor == "dask"
                  else S.LocalExecutor(min(workers or S.default_workers(), len(todo))))
            for res in S.execute(ex, todo, len(jobs), len(jobs) - len(todo)):
                if "error" in res:
                    failed.append(res)
                else:
                    status[res["run_id"]] = "replayed"
    except (KeyboardInterrupt, S.WorkerLost) as e:
        if ex is not None:
            ex.close()  # first: a worker may commit the run it was finishing
            ex = None
        n = len({j.run_id for j in todo} & S.finished(ws))
        if isinstance(e, KeyboardInterrupt):
            raise Fail(f"interrupted; {n} of the sweep's {len(todo)} runs to do were committed "
                       "(run it again to resume: finished runs are skipped)", 130)
        raise Fail(f"a sweep worker died ({e}); {n} of the sweep's {len(todo)} runs to do were committed, "
                   "run the sweep again to resume")
    finally:
        if ex is not None:
            ex.close()
    rep = S.report(ws, [j for j in jobs if j.run_id in status], status)
    if output is Fmt.json:
        print(json.dumps({**rep, "replayed": sum(v == "replayed" for v in status.values()),
                          "skipped": sum(v == "skipped" for v in status.values()), "failed": len(failed)}, indent=2))
    elif output is Fmt.csv:
        _emit(rep["runs"], list(rep["runs"][0]) if rep["runs"] else ["run_id"], output)
    else:
        _emit(rep["runs"], ["run_id", "trace_id", "model", "machine", "cpus", "seed", "faults", "faults_per_sec",
                            "fallback_pct", "status"], output,
              title=f"{len(jobs)} runs: {sum(v == 'replayed' for v in status.values())} replayed, "
                    f"{sum(v == 'skipped' for v in status.values())} already in the workspace")
        for line in S.render_report(rep):
            print(line)
    if failed:
        first = failed[0]
        raise Fail(f"{len(failed)} of {len(jobs)} runs failed; the first: {first['error']}", first.get("code", 1))


@app.command()
def synth(
    workload: str = typer.Argument(..., help="pft (mmtests pft, threads mode) or page_fault1 (will-it-scale)."),
    threads: int = typer.Option(4, "--threads", "-n", help="Faulting threads."),
    pages: int = typer.Option(1024, "--pages", help="Pages each thread faults per iteration."),
    iterations: int = typer.Option(1, "--iterations", help="Map/touch/unmap rounds."),
    name: Optional[str] = typer.Option(None, "--name", help="Trace name (default: WORKLOAD-tN)."),
    workspace: Optional[Path] = WorkspaceOpt,
    replace: bool = typer.Option(True, "--replace/--no-replace", help="Replace a trace of the same name."),
):
    """Generate a synthetic trace (perf script text through the real ingester) into the workspace."""
    import tempfile

    from .ingesting import run_ingest
    from .synth import WORKLOADS

    if workload not in WORKLOADS:
        raise Fail(f"unknown workload {workload!r}: {', '.join(WORKLOADS)}", 2)
    if threads < 1 or pages < 1 or iterations < 1:
        raise Fail("--threads, --pages and --iterations must be at least 1", 2)
    name = name or f"{workload}-t{threads}"
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        if workload == "pft":  # written as it is made: a big trace need not fit in memory
            _, maps = WORKLOADS[workload](threads, pages, iterations, out=f)
        else:
            text, maps = WORKLOADS[workload](threads, pages, iterations)
            f.write(text)
        f.flush()
        res = run_ingest(f.name, name, "perf-script", workspace, True, replace, maps_snapshot=maps,
                         source_label=f"synth: {workload} threads={threads} pages={pages} iterations={iterations}")
    out.print(f"{name}: {res.counts.parsed:,} events ({workload}, {threads} threads x {pages} pages x {iterations})")


class QFmt(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    ndjson = "ndjson"
    parquet = "parquet"


_SUFFIX_FMT = {".csv": QFmt.csv, ".json": QFmt.json, ".ndjson": QFmt.ndjson, ".jsonl": QFmt.ndjson,
               ".parquet": QFmt.parquet}


def _query_format(fmt: Optional[QFmt], dest: Optional[Path]) -> QFmt:
    """-f as given; without it, -o FILE's suffix (x.json writes JSON), else a table."""
    if fmt is not None:
        return fmt
    return _SUFFIX_FMT.get(dest.suffix.lower(), QFmt.table) if dest is not None else QFmt.table


def _emit_stream(reader, fmt: QFmt, dest: Optional[Path], max_rows: int = 200) -> None:
    """Print or write a query result (``queries.open_sql``'s reader) batch by batch, in
    bounded memory however many rows it has.  The table shows the first ``max_rows``
    rows and how many followed;
    csv, json, ndjson and parquet stream every row to ``dest`` (atomically) or stdout."""
    if fmt is QFmt.table:
        rows: list[dict] = []
        full = False
        for b in reader:
            rows += b.slice(0, max_rows - len(rows)).to_pylist()
            if len(rows) >= max_rows:
                full = True
                break
        if dest is not None:
            from .workspace import atomic_output

            with atomic_output(dest) as tmp, open(tmp, "w") as f:
                Console(file=f, width=160, soft_wrap=True).print(_table(rows, reader.schema.names))
        else:
            _emit(rows, reader.schema.names, Fmt.table)
        if full and (total := reader.total_rows()) > len(rows):
            err.print(f"({total - len(rows):,} more rows: use --format csv|json|ndjson|parquet)", markup=False)
        return
    if dest is None or str(dest) == "-":
        if fmt is QFmt.parquet and dest is None:
            raise Fail("--format parquet needs -o FILE (-o - for stdout)", 2)
        _write_rows(reader, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    from .workspace import atomic_output

    with atomic_output(dest) as tmp, open(tmp, "wb") as f:
        n = _write_rows(reader, fmt, f)
    err.print(f"wrote {n:,} rows to {dest}", markup=False)


def _write_rows(reader, fmt: QFmt, f) -> int:
    """Stream record batches to a binary file object as csv, json, ndjson or parquet."""
    import pyarrow as pa

    n = 0
    if fmt is QFmt.parquet:
        import pyarrow.parquet as pq

        with pq.ParquetWriter(f, reader.schema, compression="zstd") as w:
            for b in reader:
                w.write_batch(b)
                n += b.num_rows
        return n
    import polars as pl

    if fmt is QFmt.csv:
        nested = [i for i, t in enumerate(reader.schema.types) if pa.types.is_nested(t)]
        for b in reader:
            for i in nested:  # CSV has no lists: write them as JSON text
                b = b.set_column(i, b.schema.names[i], pa.array(
                    [None if v is None else json.dumps(v, default=str) for v in b.column(i).to_pylist()], pa.string()))
            f.write(pl.from_arrow(b).write_csv(include_header=n == 0).encode())
            n += b.num_rows
        if n == 0:
            f.write((",".join(reader.schema.names) + "\n").encode())
        return n
    first = True  # JSON: an array, one row a line; ndjson: one row a line
    if fmt is QFmt.json:
        f.write(b"[")
    for b in reader:
        if b.num_rows:
            lines = pl.from_arrow(b).write_ndjson().encode()
            if fmt is QFmt.json:
                lines = (b"\n  " if first else b",\n  ") + lines.rstrip(b"\n").replace(b"\n", b",\n  ")
            f.write(lines)
            first = False
        n += b.num_rows
    if fmt is QFmt.json:
        f.write(b"]\n" if first else b"\n]\n")
    return n


def _pairs(items: list[str], option: str, form: str) -> dict[str, str]:
    """Repeated ``option k=v`` values as a dict; anything else is a usage error."""
    out = {}
    for item in items:
        if "=" not in item:
            raise Fail(f"{option} takes {form}, not {item!r}", 2)
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


QFmtOpt = typer.Option(None, "--format", "-f", help="Output format (default: table, or -o FILE's suffix: .csv .json .ndjson .parquet).")
QOutOpt = typer.Option(None, "--output", "-o", help="Write to FILE (atomically) instead of printing; - is stdout.")


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL over the workspace views (events, traces, rejects, ops, vmas, results, lock_stats, line_stats, runs); '-' reads it from stdin."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[QFmt] = QFmtOpt,
    output: Optional[Path] = QOutOpt,
    table: List[str] = typer.Option([], "--table", "-t", help="NAME=FILE: also a view NAME over a CSV, Parquet or JSON file (repeatable); no other file is readable."),
):
    """Run read-only SQL (DuckDB) over every trace and run in the workspace.

    Example: replay sql "SELECT model, avg(end_ns - start_ns) FROM results GROUP BY model"
    """
    from queries import QueryError, open_sql
    from .workspace import default_root

    if query == "-":
        query = sys.stdin.read()
    tables = _pairs(table, "--table", "NAME=FILE")
    fmt = _query_format(fmt, output)
    try:
        with open_sql(workspace or default_root(), query, tables=tables) as r:
            _emit_stream(r, fmt, output)
    except QueryError as e:
        raise Fail(f"SQL: {e}")


@app.command()
def query(
    name: Optional[str] = typer.Argument(None, help="A query from the library (replay query --list)."),
    list_: bool = typer.Option(False, "--list", "-l", help="Print the library: each query's question, parameters and columns."),
    param: List[str] = typer.Option([], "--param", "-p", help="A parameter as k=v (repeatable)."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[QFmt] = QFmtOpt,
    output: Optional[Path] = QOutOpt,
):
    """Run a named query from the library (contention, retry_rates, throughput, latency, hot_lines, ...).

    Example: replay query retry_rates -p run_id=edf38520feb5
    """
    from queries import QueryError, catalog, open_query
    from .workspace import default_root

    fmt = _query_format(fmt, output)
    if list_ or not name:
        cat = catalog()
        if fmt is QFmt.json:
            print(json.dumps([{"name": q.name, "question": q.question, "needs": q.needs, "params": q.params,
                               "columns": [{"name": c, "type": t, "doc": d} for c, t, d in q.columns]}
                              for q in cat.values()], indent=2))
            return
        for q in cat.values():
            out.print(f"[bold]{q.name}[/bold] - {q.question}")
            out.print(f"  needs: {q.needs}" + (f"; params: {', '.join(f'{k} ({v})' for k, v in q.params.items())}" if q.params else ""),
                      markup=False, highlight=False)
            out.print("  columns: " + ", ".join(c for c, _, _ in q.columns), markup=False, highlight=False)
        return
    params = _pairs(param, "--param", "k=v")
    try:
        with open_query(workspace or default_root(), name, params) as r:
            _emit_stream(r, fmt, output)
    except QueryError as e:
        raise Fail(str(e))


@app.command()
def shell(workspace: Optional[Path] = WorkspaceOpt):
    """An interactive read-only SQL session over the workspace views.

    Statements end with ';'; .tables lists the views, .quit leaves.  Every statement
    runs as `replay sql` would (same read-only connection), so the shell is as safe.
    """
    from queries import QueryError, open_sql
    from .workspace import default_root

    root = workspace or default_root()
    tty = sys.stdin.isatty()
    if tty:
        import readline  # noqa: F401  line editing and history for input()
    err.print("replay shell: SQL ending in ';' (read-only), .tables, .quit", markup=False)

    def lines():
        if not tty:
            yield from sys.stdin
            return
        while True:
            try:
                yield input("replay> ") + "\n"
            except EOFError:
                return

    buf = ""
    for line in lines():
        if line.strip() in (".quit", ".exit"):
            break
        if line.strip() == ".tables":
            line = "SELECT view_name AS name FROM duckdb_views() WHERE NOT internal ORDER BY 1;"
        buf += line
        if buf.strip().endswith(";"):
            try:
                with open_sql(root, buf) as r:
                    _emit_stream(r, QFmt.table, None)
            except QueryError as e:
                err.print(f"error: {e}", markup=False, highlight=False)
            except KeyboardInterrupt:
                err.print("interrupted", markup=False)
            buf = ""


@app.command()
def compare(
    run_ids: List[str] = typer.Argument(None, help="Runs to compare (replay runs lists them); the first is the baseline."),
    models_: Optional[str] = typer.Option(None, "--models", help="Instead of run ids: compare these models (comma-separated), one block per CPU count."),
    trace: Optional[str] = typer.Option(None, "--trace", "-t", help="With --models: the trace."),
    machine: Optional[str] = typer.Option(None, "--machine", help="With --models: the machine profile name."),
    workspace: Optional[Path] = WorkspaceOpt,
):
    """mmtests compare-kernels table: Hmean/Amean per metric and CPU count, % change vs the first.

    Significance: each run is cut into 10 equal spans of simulated time, one sample each;
    a difference is marked * * when the two Student-t 95% confidence intervals of the
    samples' mean do not overlap, ( ) when they do - mmtests' rule."""
    import polars as pl

    from .compare import table
    from .workspace import Workspace

    ws = Workspace(workspace)
    rs = ws.runs()
    if rs is None:
        raise Fail("no runs in the workspace yet: replay run --model v8")
    groups: list[list[str]] = []
    if models_:
        if run_ids:
            raise Fail("give run ids or --models, not both", 2)
        names = [m.strip() for m in models_.split(",") if m.strip()]
        sel = rs.filter(pl.col("model").is_in(names))
        if trace:
            sel = sel.filter(pl.col("trace_id") == trace)
        if machine:
            sel = sel.filter(pl.col("machine") == machine)
        if sel["trace_id"].n_unique() > 1 or sel["machine"].n_unique() > 1:
            raise Fail("those runs span several traces or machines; pick one with --trace and --machine", 2)
        for c in sorted(sel["cpus"].unique().to_list()):
            row = []
            for m in names:
                hit = sel.filter((pl.col("model") == m) & (pl.col("cpus") == c))
                if hit.height:
                    row.append(hit["run_id"][0])
            if len(row) == len(names):
                groups.append(row)
        if not groups:
            raise Fail(f"no CPU count has a run of every one of {', '.join(names)}")
    else:
        if not run_ids or len(run_ids) < 2:
            raise Fail("compare needs at least two run ids (or --models A,B)", 2)
        missing = [r for r in run_ids if r not in set(rs["run_id"].to_list())]
        if missing:
            raise Fail(f"no run {missing[0]!r} in {ws.root} (replay runs lists them)")
        groups.append(list(run_ids))
    info = {r["run_id"]: r for r in rs.to_dicts()}
    first = True
    for g in groups:
        res = pl.concat([pl.read_parquet(ws.partition("results", r, "run_id") / "part-0.parquet") for r in g],
                        how="diagonal_relaxed")
        labels = [info[r]["model"] for r in g] if len(set(info[r]["model"] for r in g)) == len(g) else g
        if first:
            print("  ".join(f"{lbl}={r} ({info[r]['trace_id']}, {info[r]['machine']})" for lbl, r in zip(labels, g)))
            first = False
        for line in table(res, g, labels, {r: info[r]["cpus"] for r in g}):
            print(line)


@app.command()
def report(run_id: str = typer.Argument(..., help="A run id (replay runs lists them)."),
           workspace: Optional[Path] = WorkspaceOpt):
    """One run's summary tables: parameters, outcomes, contention, latency, hot lines."""
    import polars as pl

    from queries import QueryError, run_query
    from .workspace import Workspace

    ws = Workspace(workspace)
    rs = ws.runs()
    if rs is None or run_id not in set(rs["run_id"].to_list()):
        raise Fail(f"no run {run_id!r} in {ws.root} (replay runs lists them)")
    r = rs.filter(pl.col("run_id") == run_id).to_dicts()[0]
    _emit([{"": k, "value": v} for k, v in r.items() if v is not None], ["", "value"], Fmt.table, title=f"run {run_id}")
    p = {"run_id": run_id}
    try:
        for name, cols, title in (
            ("retry_rates", ["level", "faults", "faults_success", "faults_abort", "faults_miss", "faults_fallback",
                             "fallback_pct_of_faults"], "per-VMA lock outcomes"),
            ("contention", ["lock_class", "lock", "contentions", "waittime_total_us", "waittime_max_us", "acquisitions",
                            "holdtime_avg_us", "trylock_failures"], "lock_stat"),
            ("latency", ["kind", "ops", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"], "latency"),
            ("hot_lines", ["rank", "line", "transfers", "invalidations", "fields"], "hottest cache lines"),
        ):
            df = run_query(ws.root, name, p)
            if name == "retry_rates":
                df = df.filter(pl.col("level") == "run")
            _emit(df.select(cols).head(10).to_dicts(), cols, Fmt.table, title=title)
    except QueryError as e:
        raise Fail(str(e))


@app.command()
def plot(
    kind: str = typer.Argument(..., help="throughput (faults/sec vs CPUs per model), latency (fault-latency CDF per run), timeline, or footprint (VMA slab memory over a trace per model; replay footprint first)."),
    run_ids: List[str] = typer.Argument(None, help="Runs to draw (default for throughput: every run of --trace)."),
    output: Path = typer.Option(..., "--output", "-o", help="FILE.png, .svg or .pdf"),
    trace: Optional[str] = typer.Option(None, "--trace", "-t", help="throughput: the trace whose runs to draw; footprint: the trace."),
    machine: Optional[str] = typer.Option(None, "--machine", help="throughput: only runs on this machine; footprint: only this machine's footprint."),
    bucket_ms: float = typer.Option(1.0, "--bucket-ms", help="timeline: bucket width."),
    workspace: Optional[Path] = WorkspaceOpt,
):
    """Draw a plot of runs to a file."""
    import polars as pl

    from queries import QueryError, run_query
    from . import plot as P
    from .workspace import Workspace

    ws = Workspace(workspace)
    if kind == "footprint":
        _plot_footprint(ws, trace, machine, output)
        return
    rs = ws.runs()
    if rs is None:
        raise Fail("no runs in the workspace yet: replay run --model v8")
    known = set(rs["run_id"].to_list())
    for r in run_ids or []:
        if r not in known:
            raise Fail(f"no run {r!r} in {ws.root} (replay runs lists them)")
    info = {r["run_id"]: r for r in rs.to_dicts()}
    labels = {r: f"{info[r]['model']} {info[r]['machine']} {info[r]['cpus']} CPUs ({r})" for r in run_ids or []}
    try:
        if kind == "throughput":
            tp = run_query(ws.root, "throughput", {})
            if run_ids:
                tp = tp.filter(pl.col("run_id").is_in(run_ids))
            if trace:
                tp = tp.filter(pl.col("trace_id") == trace)
            if machine:
                tp = tp.filter(pl.col("machine") == machine)
            if tp.height == 0:
                raise Fail("no runs match; replay runs lists them")
            P.throughput(tp, output)
        elif kind == "latency":
            if not run_ids:
                raise Fail("latency needs run ids", 2)
            res = pl.concat([pl.read_parquet(ws.partition("results", r, "run_id") / "part-0.parquet").with_columns(
                pl.lit(r).alias("run_id")) for r in run_ids], how="diagonal_relaxed")
            P.latency_cdf(res, labels, output)
        elif kind == "timeline":
            if not run_ids:
                raise Fail("timeline needs run ids", 2)
            tl = run_query(ws.root, "timeline", {"bucket_ms": str(bucket_ms)}).filter(pl.col("run_id").is_in(run_ids))
            P.timeline(tl, labels, output)
        else:
            raise Fail(f"unknown plot {kind!r}: throughput, latency, timeline or footprint", 2)
    except (QueryError, ValueError) as e:
        raise Fail(str(e))
    out.print(f"wrote {output}")


def _plot_footprint(ws, trace: str | None, machine: str | None, output: Path) -> None:
    from queries import QueryError, run_sql

    from . import plot as P

    if not trace:
        raise Fail("footprint needs --trace", 2)
    if not ws.committed_files("footprint"):
        raise Fail(f"no footprint in {ws.root} yet: replay footprint {trace}")
    try:
        fp = run_sql(ws.root, "SELECT model, machine, t_ns, sum(slab_kib) AS kib, sum(objects) AS objects, "
                              "sum(rcu_held) AS rcu_held FROM footprint WHERE trace_id = $trace "
                              "AND ($machine IS NULL OR machine = $machine) GROUP BY ALL ORDER BY model, machine, t_ns",
                     {"trace": trace, "machine": machine})
        if fp.height == 0:
            raise Fail(f"no footprint of trace {trace!r} in {ws.root}: replay footprint {trace}")
        P.footprint(fp, trace, output)
    except (QueryError, ValueError) as e:
        raise Fail(str(e))
    out.print(f"wrote {output}")


@app.command()
def runs(workspace: Optional[Path] = WorkspaceOpt, output: Fmt = FormatOpt):
    """List the runs in the workspace (--format json gives everything needed to reproduce each)."""
    from .workspace import Workspace

    df = Workspace(workspace).runs()
    if df is None:
        if output is Fmt.table:
            out.print("no runs yet: replay run --model v8")
        else:
            _emit([], ["run_id"], output)
        return
    rows = df.sort("trace_id", "model", "machine", "cpus").to_dicts()
    cols = list(rows[0]) if output is Fmt.json else ["run_id", "trace_id", "model", "machine", "cpus", "seed", "placement",
                                                      "faults", "faults_per_sec", "fallback_pct"]
    _emit(rows, cols, output)


@app.command()
def models(output: Fmt = FormatOpt):
    """List the lock models, with the kernel code each follows."""
    from .models import ModelError, registry

    try:
        reg = registry()
    except ModelError as e:
        raise Fail(str(e))
    rows = [{"model": m.name, "description": m.description, "follows": "; ".join(m.citations)} for m in reg.values()]
    _emit(rows, ["model", "description", "follows"], output)


@app.command()
def machines(output: Fmt = FormatOpt, show: Optional[str] = typer.Argument(None, help="A profile name or .toml path to show in full.")):
    """List the machine profiles (topology, hand-off latencies, prefetcher); or show one with its sources."""
    from .machines import MachineError, all_machines, load_machine

    if show:
        try:
            m = load_machine(show)
        except MachineError as e:
            raise Fail(str(e))
        rows = [{"parameter": k, "value": v, "source": m.sources.get(k, "")} for k, v in m.latency_ns.items()]
        rows += [{"parameter": "adjacent_line_prefetch", "value": m.adjacent_line_prefetch, "source": m.sources.get("adjacent_line_prefetch", "")},
                 {"parameter": "fault_service_ns", "value": m.fault_service_ns, "source": m.sources.get("fault_service_ns", "")}]
        _emit(rows, ["parameter", "value", "source"], output, title=f"{m.name}: {m.description} ({m.ncpus} CPUs)")
        return
    rows = [{"machine": m.name, "cpus": m.ncpus, "topology": f"{m.sockets}x{m.cores_per_socket}x{m.smt}",
             "smt_ns": m.latency_ns["smt_handoff"], "socket_ns": m.latency_ns["socket_handoff"],
             "cross_socket_ns": m.latency_ns["cross_socket_handoff"] if m.sockets > 1 else None,
             "prefetch_128B": m.adjacent_line_prefetch,
             "estimates": sum("est." in str(v) for v in m.sources.values()), "description": m.description}
            for m in all_machines()]
    _emit(rows, list(rows[0]), output)


@app.command()
def version():
    """Print the version."""
    print(__version__)


def main(argv: List[str] | None = None) -> int:
    from ingest.sources import InputError

    from .workspace import WorkspaceError

    try:
        rc = app(args=argv, standalone_mode=False)
        if rc == 130:  # click turns KeyboardInterrupt into Abort, typer into 130
            raise KeyboardInterrupt
        if isinstance(rc, int):
            return rc
    except (Fail, InputError, WorkspaceError) as e:
        err.print(f"replay: error: {e}", markup=False, highlight=False)
        return getattr(e, "code", 1)
    except KeyboardInterrupt:
        err.print("replay: interrupted; nothing was written to the workspace or to -o FILE", markup=False)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # the environment (a file, a disk, a permission), not a defect
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"replay: error: {where}{e.strerror or e}", markup=False, highlight=False)
        return 1
    except Exception as e:  # click's usage errors (typer vendors click in newer releases) and the rest
        kind = type(e).__name__
        if kind == "Exit":
            return e.exit_code
        if kind == "Abort":
            return 130
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # UsageError, BadParameter, ...
            e.show()
            return e.exit_code
        if os.environ.get("REPLAY_DEBUG"):
            raise
        err.print(f"replay: internal error: {type(e).__name__}: {e} (set REPLAY_DEBUG=1 for the traceback)",
                  markup=False, highlight=False)
        return 3
    return 0


def entry() -> None:
    sys.exit(main())
