"""The ``replay`` command line.

Errors are one line on stderr: exit 1 for bad input, 2 for bad usage; never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand

from . import __version__
from .api import ReplayError
from .output import FORMATS, Fmt, OutputError, emit, emit_stream, resolve

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
err = Console(stderr=True, soft_wrap=True)
QFmt = Fmt  # one list of output formats (replay/output.py FORMATS) for every command


class InFmt(str, Enum):
    auto = "auto"
    perf_script = "perf-script"
    ftrace = "ftrace"
    trace_cmd = "trace-cmd"
    perf_data = "perf-data"
    trace_dat = "trace-dat"
    perf_json = "perf-json"
    perf_trace = "perf-trace"


class Arch(str, Enum):
    x86_64 = "x86_64"
    arm64 = "arm64"
    riscv64 = "riscv64"


class Fail(ReplayError):
    """A user-facing error: one line, exit code ``code`` (the API's ReplayError, so a
    notebook sees the same sentence)."""


WorkspaceOpt = typer.Option(None, "--workspace", "-w", envvar="REPLAY_WORKSPACE",
                            help="Workspace directory (default: ./replay-data).")
# The output switches of every data command, declared once (replay/output.py says how they behave).
FormatOpt = typer.Option(None, "--format", "-f", help=f"Output format: {', '.join(FORMATS)} (default: table, or -o FILE's suffix: .csv .json .ndjson .parquet).")
OutOpt = typer.Option(None, "--output", "-o", help="Write to FILE (atomically) instead of printing; - is stdout.")
QFmtOpt, QOutOpt = FormatOpt, OutOpt


def _emit(rows: list[dict], columns: list[str], fmt: Fmt, title: str | None = None, dest: Path | None = None,
          single: bool = False, con=None) -> None:
    """Rows in the chosen format (replay/output.py ``emit``)."""
    emit(rows, columns, fmt, dest, title, single, con)


def _progress(total: int | None, what: str):
    """A rich progress bar on stderr for work over a second; silent when not a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    prog = Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)
    task = prog.add_task(what, total=total)

    def update(_nbytes, consumed):
        prog.update(task, completed=consumed)

    return prog, update


@app.command(epilog="Example: replay ingest trace.txt.zst --maps trace.maps --name mine")
def ingest(
    path: str = typer.Argument(..., help="Trace file (text, .gz, .zst, perf.data, trace.dat, perf JSON, perf trace) or '-' for stdin."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Trace name (default: the file name less .gz/.zst and then one of .txt/.data/.dat/.json/.trace)."),
    in_fmt: InFmt = typer.Option(InFmt.auto, "--input-format", help="Input format; auto detects it from the content."),
    workspace: Optional[Path] = WorkspaceOpt,
    strict: bool = typer.Option(False, "--strict", help="Fail on the first malformed line instead of keeping it in rejects."),
    replace: bool = typer.Option(False, "--replace", help="Replace a trace of the same name."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="/proc/PID/maps snapshot taken when the trace started (seeds the VMA tracker)."),
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
    old_fmt: Optional[Fmt] = typer.Option(None, "--output-format", "-O", hidden=True, help="Old name of -f."),
    arch: Optional[Arch] = typer.Option(None, "--arch", help="Architecture the trace was recorded on (default: the trace's header, else x86_64); decides syscall numbers and what a fault's error code says."),
):
    """Parse a trace into the workspace's typed Parquet datasets and print per-event counts."""
    from . import api

    fmt = resolve(fmt or old_fmt, output)
    ing = api.ingest(path, name, format=in_fmt.value, strict=strict, replace=replace, maps=maps,
                     arch=arch.value if arch else None, workspace=workspace)
    _print_ingest(ing.result, fmt, output)


def _print_ingest(res, fmt: Fmt, dest: Optional[Path] = None) -> None:
    from . import api
    from .output import table_out

    c = res.counts
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    if fmt is not Fmt.table:
        s = api.ingest_summary(res)
        _emit([s], list(s), fmt, dest=dest, single=True)
        return
    acct = [
        {"lines": "parsed events", "count": c.parsed}, {"lines": "header/comment", "count": c.header},
        {"lines": "blank", "count": c.blank}, {"lines": "callchain frames", "count": c.callchain},
        {"lines": "lost-event records", "count": c.lost_records}, {"lines": "malformed (kept in rejects)", "count": c.malformed},
        {"lines": "total", "count": c.lines},
    ]
    with table_out(dest) as con:
        _emit([{"event": k, "count": v} for k, v in sorted(c.per_event.items())], ["event", "count"], Fmt.table,
              title=f"{res.trace_id}: {sum(c.per_event.values()):,} events ({res.format}, {res.text_bytes / 1e6:,.1f} MB in {res.seconds:.2f} s)",
              con=con)
        _emit(acct, ["lines", "count"], Fmt.table, title="line accounting", con=con)
    for r in res.first_rejects:
        err.print(f"  malformed line {r['line']}: {r['reason']}: {(r['text'] or '')[:100]!r}", markup=False, highlight=False)
    (out if dest is None else err).print(f"wrote {res.where}", markup=False, highlight=False)


@app.command(epilog="Example: replay traces -f csv -o traces.csv")
def traces(workspace: Optional[Path] = WorkspaceOpt, fmt: Optional[Fmt] = FormatOpt, output: Optional[Path] = OutOpt):
    """List the traces in the workspace."""
    from . import api

    fmt = resolve(fmt, output)
    t = api.traces(workspace)
    rows = t.to_dicts()
    for r in rows:
        r["ingested_at"] = str(r["ingested_at"])
    cols = ["trace_id", "format", "events", "lines", "malformed", "lost_events", "kernel", "nr_cpus", "source"]
    if not rows and fmt is Fmt.table:
        out.print("no traces yet: replay ingest TRACE, or replay record -o NAME -- CMD")
        return
    _emit(rows, cols, fmt, dest=output)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="Example: sudo replay record -o myrun -- ./my-program args")
def record(
    ctx: typer.Context,
    output_name: str = typer.Option(..., "--output", "-o", help="Trace name to ingest the recording as."),
    events: Optional[str] = typer.Option(None, "--events", "-e", help="Comma-separated tracepoints (default: page faults, mmap_lock, mm syscalls)."),
    ftrace: bool = typer.Option(False, "--ftrace", help="Record through tracefs instead of perf."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="Also keep the raw recording (perf.data, or ftrace text) at this path, and the maps snapshot at PATH.maps."),
    buffer_mb: int = typer.Option(64, "--buffer-mb", help="Ring buffer size per CPU (MiB)."),
    workspace: Optional[Path] = WorkspaceOpt,
    replace: bool = typer.Option(False, "--replace", help="Replace a trace of the same name."),
    no_fault_times: bool = typer.Option(False, "--no-fault-times", help="perf: leave out the minor-/major-faults events that time each fault."),
):
    """Record CMD with perf (or tracefs), snapshot its /proc/PID/maps at exec, then ingest.

    Usage: replay record -o NAME [--ftrace] -- CMD [ARGS...]"""
    from .recording import record_and_ingest, workload_failure

    cmd = list(ctx.args)
    if not cmd:
        raise Fail("record needs a command after --, e.g. replay record -o ls -- ls -l", 2)
    res, status = record_and_ingest(cmd, output_name, events.split(",") if events else None, ftrace, keep,
                                    buffer_mb, workspace, replace, fault_times=not no_fault_times)
    _print_ingest(res, Fmt.table)
    failed = workload_failure(status)
    if failed is not None:
        msg, code = failed
        raise Fail(f"{msg}; what it did until then is recorded and ingested as {res.trace_id!r}", code)


@app.command(epilog="Example: replay ops mprotect-race -f json")
def ops(
    trace: str = typer.Argument(..., help="Trace name in the workspace (see replay traces)."),
    same_mm: bool = typer.Option(False, "--same-mm", help="Treat every thread as one address space (for traces without pids)."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
):
    """Build a trace's ops (faults and address-space writers, with VMAs and observed fallbacks)."""
    from . import api
    from .output import table_out

    fmt = resolve(fmt, output)
    built = api.ops(trace, same_mm=same_mm, workspace=workspace)
    summary = dict(built.summary)
    if fmt is not Fmt.table:
        _emit([summary], list(summary), fmt, dest=output, single=True)
    else:
        summary.pop("kinds")
        summary.update({f"faults {k}": n for k, n in summary.pop("fault_kinds").items()})  # ops.FAULT_KINDS
        with table_out(output) as con:
            _emit([{"kind": k, "ops": n, "mean duration ns": None if mean is None else round(mean)}
                   for k, (n, mean) in built.kinds.items()], ["kind", "ops", "mean duration ns"], fmt, con=con,
                  title=f"{trace}: {summary['ops']:,} ops (durations: syscalls enter->exit; faults only where they fell back)")
            _emit([{"": k, "value": v} for k, v in summary.items() if k not in ("trace_id", "ops")], ["", "value"], fmt,
                  con=con)
    for n in built.notes:
        err.print(f"note: {n}", markup=False, highlight=False)


FOOTPRINT_COLUMNS = ["model", "free_mode", "peak_vmas", "peak_objects", "peak_rcu_held", "call_rcu_calls", "peak_slabs",
                     "peak_pages", "peak_kib", "mean_kib", "align_kib_at_peak", "waste_kib_at_peak", "bytes_per_vma_at_peak"]
FIELD_COLUMNS = ["model", "struct", "line", "bytes", "lock_line", "fields", "fault_touches", "untouched", "transfers_per_fault"]


@app.command(epilog="Example: replay footprint jvm-alloc --models v8,mainline --machine broadwell-2s")
def footprint(
    trace: str = typer.Argument(..., help="Trace name in the workspace (the bundled sample is ingested on first use)."),
    models_: Optional[str] = typer.Option(None, "--models", help="Comma-separated lock models (default: every model)."),
    machine: str = typer.Option("broadwell-2s", "--machine", help="Machine profile: its CPU count sets SLUB's slab order, its rcu_grace_period_ns the call_rcu() delay."),
    grace_period: Optional[float] = typer.Option(None, "--grace-period", help="call_rcu() delay in ns (default: the profile's rcu_grace_period_ns)."),
    fields: bool = typer.Option(False, "--fields", help="Instead: per line of each model's VMA, the fields a fault touches, the lock's line, and what could share it."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
):
    """The slab memory a trace's VMAs take under each model over the trace (writes the footprint dataset)."""
    import polars as pl

    from . import footprint as F
    from .machines import MachineError, load_machine
    from .models import ModelError, get_model, registry
    from .workspace import Workspace

    dest, output = output, resolve(fmt, output)
    if grace_period is not None and not grace_period >= 0:
        raise Fail(f"--grace-period must be a number of ns >= 0, not {grace_period}", 2)
    try:
        names = [m.strip() for m in models_.split(",") if m.strip()] if models_ else sorted(registry())
        mdls = [get_model(m) for m in names]
        mach = load_machine(machine)
    except (ModelError, MachineError) as e:
        raise Fail(str(e), 2 if str(e).startswith("unknown ") else 1)
    ws = Workspace(workspace)
    if fields:
        _print_field_lines(ws, trace, mdls, output, dest)
        return
    ops, sha = _ensure_ops(ws, trace)
    vmas = pl.from_arrow(ws.read("vmas", trace))
    t0, t1 = F.trace_span(ops, vmas)
    series = pl.concat([F.model_series(m, mach, vmas, t0, t1, grace_period) for m in mdls])
    ws.write_footprint(trace, sha, series.to_arrow(), ["model", "machine"])
    from .queries import QueryError, run_query

    try:
        rows = run_query(ws.root, "footprint", {"trace_id": trace}).filter(
            pl.col("model").is_in(names) & (pl.col("machine") == mach.name)).to_dicts()
    except QueryError as e:
        raise Fail(str(e))
    if output is not Fmt.table:
        _emit(rows, ["trace_id", "machine", "caches"] + FOOTPRINT_COLUMNS, output, dest=dest)
        return
    from .output import table_out

    gp = mach.rcu_grace_period_ns if grace_period is None else grace_period
    with table_out(dest) as con:
        _emit(rows, [c for c in FOOTPRINT_COLUMNS if c not in ("align_kib_at_peak", "bytes_per_vma_at_peak")], output,
              title=f"{trace}: VMA slab footprint on {mach.name} ({mach.ncpus} CPUs; call_rcu() delay {gp / 1e6:g} ms; "
                    f"{(t1 - t0) / 1e6:,.1f} ms of trace)", con=con)
        _emit([{"model": r["model"], "caches": r["caches"]} for r in rows], ["model", "caches"], output,
              title="slab caches (SLUB: mm/slub.c calculate_sizes(), calculate_order())", con=con)


def _print_field_lines(ws, trace: str, mdls, output: Fmt, dest: Optional[Path] = None) -> None:
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
    _emit(rows, FIELD_COLUMNS, output, dest=dest,
          title=f"{trace}: per 64-byte line of each model's per-VMA structs, the fields a fault's fast path touches "
                "(from the model's program) and transfers per fault (its run on the most CPUs, if any)")


from .api import SAMPLE_TRACE  # noqa: E402


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
    from .ops import ops_current

    if not ws.has_trace(trace):
        if trace != SAMPLE_TRACE or not (_sample_dir() / f"{trace}.txt.zst").exists():
            raise Fail(f"no trace {trace!r} in {ws.root} (replay traces lists them)")
        # imported here: a run of a trace already ingested does not load the ingesters
        # (their modules and their compiled scanners' dispatchers)
        from .ingest.sources import InputError
        from .ingesting import run_ingest

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


def _replay_to(ws, stage, ops, mdl, mach, cpus, seed, placement, trace, sha, open_loop, fault_service,
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
                       results_path=os.path.join(stage, "results.parquet"))
    except (ValueError, RuntimeError) as e:  # bad parameters; an engine that could not finish the replay
        raise _replay_failed(trace, ops, e)
    ws.write_run(r, stage)
    return r


def run_one(ws, trace, mdl, mach, cpus, seed, placement, open_loop, fault_service, bar: bool = True,
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
        r = _replay_to(ws, stage, ops, mdl, mach, cpus, seed, placement, trace, sha, open_loop, fault_service, bar)
        s = _summary_with_observed(r, ops)
    finally:
        ws.unstage(stage)
    return r, s


from .api import PLACEMENTS, check_run_options, model_and_machine  # noqa: E402  (sweep imports them from here)


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
    one it is the engine's defect.  A placement the trace cannot have on the CPUs asked
    for (a recorded CPU beyond --cpus) is a usage error."""
    from .machines import PlacementError

    if isinstance(e, PlacementError):
        return Fail(str(e), 2)
    if not str(e).startswith("simulation deadlocked"):
        return Fail(str(e))
    from .ops import causal_violation

    cause = causal_violation(ops_path)
    if cause:
        return Fail(f"trace {trace!r}: {e}: its ops are not in causal order ({cause}); rebuild them: replay ops {trace}")
    return Fail(f"trace {trace!r}: {e}, and its ops are in causal order: a defect in the engine, "
                "please report it with the trace", 3)


def _choices() -> dict[str, str]:
    """The choices of the enumerated options, for --help, from the registries themselves."""
    from .machines import builtin_names
    from .models import ModelError, registry

    try:
        models = ", ".join(registry())
    except ModelError:  # a broken plugin: replay models says which
        models = "see replay models"
    return {"{MODELS}": models, "{MACHINES}": ", ".join(builtin_names()), "{PLACEMENTS}": ", ".join(PLACEMENTS)}


class ChoicesCommand(TyperCommand):
    """A command whose options' help names the registries' choices ({MODELS}, {MACHINES},
    {PLACEMENTS} in the help text), filled in when the help is shown: the model registry
    imports the model definitions and the engine package (polars, numpy), which a
    command that never simulates - or a run, before it has parsed its options - has no
    use for (tests/test_startup.py)."""

    def format_help(self, ctx, formatter):
        choices = _choices()
        for p in self.params:
            if p.help and "{" in p.help:
                for k, v in choices.items():
                    p.help = p.help.replace(k, v)
        return super().format_help(ctx, formatter)


@app.command(cls=ChoicesCommand, epilog="Example: replay run --model v8 --trace mprotect-race --machine local-2vcpu --cpus 2 -f json")
def run(
    model: str = typer.Option(..., "--model", "-m", help="Lock model: {MODELS} (replay models says what each follows)."),
    trace: str = typer.Option(SAMPLE_TRACE, "--trace", "-t", help="Trace name (default: the bundled sample, ingested on first use)."),
    machine: str = typer.Option("broadwell-2s", "--machine", help="Machine profile: {MACHINES}, or a .toml path."),
    cpus: Optional[int] = typer.Option(None, "--cpus", "-c", help="Simulated CPUs (default: all of the machine's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the run's service-time draws and start order: the same seed gives the same run, another seed another sample."),
    placement: str = typer.Option("spread", "--placement", help="Thread placement: {PLACEMENTS} (spread: like the scheduler; as-recorded: each op on the CPU the trace recorded it on)."),
    open_loop: bool = typer.Option(False, "--open-loop", help="Start each op at its recorded time instead of after the recorded gap."),
    fault_service: str = typer.Option("trace", "--fault-service", help="Fault service time: trace (the trace's fallen-back faults' holds, resampled per fault, if 20+), profile (log-normal around its figure), or ns."),
    iterations: int = typer.Option(1, "--iterations", "-k", help="Replay K times, seeds SEED..SEED+K-1 (each an ordinary run), and summarise across them as mmtests does."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
):
    """Replay a trace through a lock model on a simulated machine; print a summary.

    With --iterations K: K runs, one per seed, and their Hmean, Stddev and CoeffVar."""
    from . import api
    from .output import table_out

    fmt = resolve(fmt, output)
    if iterations > 1:
        _run_iterations(trace, model, machine, cpus, seed, placement, open_loop, fault_service, iterations,
                        workspace, fmt, output)
        return
    r = api.run(trace, model=model, machine=machine, cpus=cpus, seed=seed, placement=placement, open_loop=open_loop,
                fault_service=fault_service, iterations=iterations, workspace=workspace, progress=True)
    s = r.summary
    if fmt is not Fmt.table:
        _emit([s], list(s), fmt, dest=output, single=True)
        return
    locks, lines = r.lock_stats, r.line_stats
    with table_out(output) as con:
        _emit([{"": k, "value": v} for k, v in s.items() if k not in ("run_id",)], ["", "value"], Fmt.table, con=con,
              title=f"run {r.run_id}: {trace} under {s['model']} on {s['machine']} ({s['cpus']} CPUs)")
        if locks.height:
            top = locks.sort(["contentions", "wait_total_ns"], descending=True).head(5)
            _emit([{"lock": f"{x['lock_class']} {x['lock']}", "acquisitions": x["acquisitions"],
                    "contentions": x["contentions"], "wait_total_us": round(x["wait_total_ns"] / 1e3, 1),
                    "wait_max_us": round(x["wait_max_ns"] / 1e3, 1), "con_bounces": x["con_bounces"]}
                   for x in top.to_dicts()],
                  ["lock", "acquisitions", "contentions", "wait_total_us", "wait_max_us", "con_bounces"], Fmt.table,
                  title="most contended locks", con=con)
        if lines.height:
            top = lines.sort("transfers", descending=True).head(5)
            _emit([{"line": hex(x["line"]), "transfers": x["transfers"], "invalidations": x["invalidations"],
                    "fields": x["fields"].replace("vm_area_struct.", "vma.").replace("mm_struct.", "mm.")}
                   for x in top.to_dicts()], ["line", "transfers", "invalidations", "fields"], Fmt.table,
                  title="hottest cache lines", con=con)


def _run_iterations(trace, model, machine, cpus, seed, placement, open_loop, fault_service, k, workspace, fmt,
                    output) -> None:
    """replay run --iterations K: K runs, one per seed, and their Hmean/Stddev/CoeffVar."""
    import importlib

    from . import api
    from .output import table_out

    runs = api.run(trace, model=model, machine=machine, cpus=cpus, seed=seed, placement=placement,
                   open_loop=open_loop, fault_service=fault_service, iterations=k, workspace=workspace, progress=True)
    summaries = [r.summary for r in runs]
    if fmt is not Fmt.table:
        _emit(summaries, list(summaries[0]), fmt, dest=output)
        return
    cols = ["run_id", "seed", "faults_per_sec", "fallback_pct", "miss_pct", "mean_fault_ns", "lock_wait_ms"]
    s0 = summaries[0]
    C = importlib.import_module("replay.compare")  # replay.compare, the attribute, is the API function
    ids = [r.run_id for r in runs]
    rows = C.compare_stats(C.iteration_metrics(api._ws(workspace), ids), [ids], [s0["model"]], s0["cpus"])
    with table_out(output) as con:
        _emit([{x: s[x] for x in cols} for s in summaries], cols, Fmt.table, con=con,
              title=f"{trace} under {s0['model']} on {s0['machine']} ({s0['cpus']} CPUs), {k} iterations")
        for line in C.render(rows, [s0["model"]]):
            con.print(line, markup=False, highlight=False, soft_wrap=True)


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


@app.command(cls=ChoicesCommand, epilog="Example: replay sweep --trace pft-t56 --models mmap_lock,pervma,v8 --cpus 1,14,28,56")
def sweep(
    sweep_file: Optional[Path] = typer.Argument(None, help="A TOML sweep file (traces, models, machines, cpus, iterations, seed, placement, fault_service, open_loop); options given here override it."),
    traces: Optional[str] = typer.Option(None, "--traces", "--trace", "-t", help="Comma-separated traces (default: the bundled sample)."),
    models_: Optional[str] = typer.Option(None, "--models", help="Comma-separated lock models: {MODELS}."),
    machines_: Optional[str] = typer.Option(None, "--machines", "--machine", help="Comma-separated machine profiles ({MACHINES}) or .toml paths (default: broadwell-2s)."),
    cpus: Optional[str] = typer.Option(None, "--cpus", "-c", help="Comma-separated CPU counts, e.g. 1,4,14,28,56."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-k", help="Runs per combination, seeds SEED, SEED+1, ... (default 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="First seed (default 0)."),
    placement: Optional[str] = typer.Option(None, "--placement", help="{PLACEMENTS} (default spread)."),
    open_loop: Optional[bool] = typer.Option(None, "--open-loop/--closed-loop", help="As for replay run (default closed)."),
    fault_service: Optional[str] = typer.Option(None, "--fault-service", help="trace (default), profile or ns, as for replay run."),
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

    output = resolve(output, None)
    f = S.read_sweep_file(sweep_file) if sweep_file is not None else {}

    def pick(given, key, default):
        return given if given is not None else f.get(key, default)

    spec = S.Spec(
        traces=pick(_csv_list(traces, "--traces"), "traces", [SAMPLE_TRACE]),
        models=pick(_csv_list(models_, "--models"), "models", None),
        machines=pick(_csv_list(machines_, "--machines"), "machines", ["broadwell-2s"]),
        cpus=pick(_csv_list(cpus, "--cpus", as_int=True), "cpus", None),
        iterations=pick(iterations, "iterations", 1), seed=pick(seed, "seed", 0),
        placement=pick(placement, "placement", "spread"),
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
    ex = None if plan_only else S.start(executor, scheduler, workers, spec)  # its workers start while we plan
    try:
        jobs = S.plan(ws, spec)
        done = S.finished(ws)
    except BaseException:
        if ex is not None:
            ex.close()
        raise
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
    metrics = {}  # each replayed run's, from its worker
    try:
        if todo:
            for res in S.execute(ex, todo, len(jobs), len(jobs) - len(todo)):
                if "error" in res:
                    failed.append(res)
                else:
                    status[res["run_id"]] = "replayed"
                    metrics[res["run_id"]] = res["metrics"]
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
    rep = S.report(ws, [j for j in jobs if j.run_id in status], status, metrics)
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


@app.command(epilog="Example: replay synth pft --threads 56 --pages 1000")
def synth(
    workload: str = typer.Argument(..., help="pft, pft-multimap (mmtests pft, one VMA / one per thread), page_fault1/2/3, brk1/2, mmap1/2 (will-it-scale)."),
    threads: int = typer.Option(4, "--threads", "-n", help="Faulting threads (or processes, with --mode process)."),
    pages: Optional[int] = typer.Option(None, "--pages", help="Pages each task faults (maps) per iteration (default: pft 1024, will-it-scale 128 MiB)."),
    iterations: int = typer.Option(1, "--iterations", help="Map/touch/unmap rounds."),
    mode: str = typer.Option("thread", "--mode", help="thread (one process, one mm) or process (one mm per task; will-it-scale only)."),
    name: Optional[str] = typer.Option(None, "--name", help="Trace name (default: WORKLOAD-tN, WORKLOAD-pN in process mode)."),
    workspace: Optional[Path] = WorkspaceOpt,
    replace: bool = typer.Option(True, "--replace/--no-replace", help="Replace a trace of the same name."),
):
    """Generate a synthetic trace (perf script text through the real ingester) into the workspace."""
    import tempfile

    from .ingesting import run_ingest
    from .synth import PROCESS_NOTE, WORKLOADS, generate

    if workload not in WORKLOADS:
        raise Fail(f"unknown workload {workload!r}: {', '.join(WORKLOADS)}", 2)
    w = WORKLOADS[workload]
    if mode not in w.modes:
        raise Fail(f"--mode {mode}: {workload} is synthesised in {' or '.join(w.modes)} mode only", 2)
    pages = pages if pages is not None else w.default_pages
    if threads < 1 or pages < 1 or iterations < 1:
        raise Fail("--threads, --pages and --iterations must be at least 1", 2)
    name = name or f"{workload}-{'t' if mode == 'thread' else 'p'}{threads}"
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        _, maps = generate(workload, threads, pages, iterations, mode, out=f)  # written as made
        f.flush()
        res = run_ingest(f.name, name, "perf-script", workspace, True, replace, maps_snapshot=maps,
                         source_label=f"synth: {workload} {mode}={threads} pages={pages} iterations={iterations}")
    tasks = {"thread": "threads", "process": "processes"}[mode]
    out.print(f"{name}: {res.counts.parsed:,} events ({workload}, {threads} {tasks} x {pages} pages x {iterations})")
    if mode == "process":
        err.print(f"replay: note: {PROCESS_NOTE}", markup=False)
    if not w.faults:
        err.print(f"replay: note: {workload} faults nothing (will-it-scale's test changes the address space without "
                  "touching it): its trace has writers only, and replay run refuses a trace without page faults", markup=False)


@app.command(epilog="Example: replay validate --quick --tables punit-2023-02-15-pft-single-vma")
def validate(
    tables: Optional[str] = typer.Option(None, "--tables", help="Comma-separated table ids of published.json (default: all, and the local measurement)."),
    threads_: Optional[str] = typer.Option(None, "--threads", help="Only these thread counts, e.g. 1,4."),
    quick: bool = typer.Option(False, "--quick", help="A fast subset: the first three thread counts of each table, 2,048 faults per iteration, 2 iterations."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-k", help="Seeds (mmtests iterations) per point (default 3; --quick 2)."),
    pages: Optional[int] = typer.Option(None, "--pages", help="Faults per iteration, all threads together (default 16,384; --quick 2,048)."),
    measure_local: bool = typer.Option(False, "--measure-local", help="Build and run pft.c here for real at 1 and 2 threads, and cache the result in docs/validation-local.json."),
    local_json: Path = typer.Option(None, "--local-json", help="The local measurement's cache (default: docs/validation-local.json)."),
    published: Optional[Path] = typer.Option(None, "--published", help="The published tables (default: docs/validation/published.json, or $REPLAY_PUBLISHED)."),
    doc: Optional[Path] = typer.Option(None, "--doc", help="Write the report as Markdown to DOC (atomically), with its plot beside it (DOC's name, .png)."),
    fallbacks: bool = typer.Option(False, "--fallbacks", help="Only the sample traces' observed fallbacks against simulated ones (with --tables: those tables too; without --tables every run includes them)."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
):
    """Replay the published pft benchmarks under the models of their designs and print predicted beside published."""
    import shlex

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import validate as V
    from .workspace import Workspace

    fmt = resolve(fmt, output)
    want = _csv_list(tables, "--tables")
    ths = _csv_list(threads_, "--threads", as_int=True)
    k = iterations if iterations is not None else (2 if quick else 3)
    n = pages if pages is not None else (V.QUICK_PAGES if quick else V.FULL_PAGES)
    if k < 1 or n < 1:
        raise Fail("--iterations and --pages must be at least 1", 2)
    try:
        pub = V.load_published(published)
        plan = V.plan(pub, want, ths)
        if quick and not ths:
            ths = sorted({t for tb in plan for t in tb.threads[:3]})
            plan = V.plan(pub, want, ths)
        ws = Workspace(workspace)
        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=not err.is_terminal)
        only = fallbacks and want is None
        total = (0 if only else V.count_runs(plan) + (len(V.LOCAL_THREADS) if want is None else 0)) \
            + (len(V.sample_names()) if fallbacks or want is None else 0)
        task = prog.add_task("validate", total=total)
        with prog:
            res = V.run_validation(ws, want, ths, k, n, measure_local, local_path=local_json or V.LOCAL_JSON,
                                   published=pub, fallbacks=True if fallbacks else None,
                                   progress=lambda what: prog.update(task, advance=1, description=what))
        if doc is not None:
            given = [("--tables", tables), ("--threads", threads_), ("--quick", quick), ("--iterations", iterations),
                     ("--pages", pages), ("--measure-local", measure_local), ("--fallbacks", fallbacks), ("--doc", doc)]
            cmd = " ".join(["replay validate"] + [o if v is True else f"{o} {shlex.quote(str(v))}"
                                                  for o, v in given if v not in (None, False)])
            V.write_doc(res, doc, doc.with_suffix(".png"), cmd)
    except V.ValidateError as e:
        raise Fail(str(e))
    if fmt not in (Fmt.table, Fmt.json):  # csv, ndjson, parquet: the rows, one per table, thread count, metric, design
        if only:  # or, with --fallbacks alone, one per sample trace and VMA class
            _emit([r for x in res["fallbacks"] if x.status == "ok" for r in V.fallback_rows(x)], V.FALLBACK_COLUMNS,
                  fmt, dest=output)
            return
        rows = [r for tb in res["tables"] if tb.status == "ok" for r in V.rows_of(tb)]
        _emit(rows, V.ROW_COLUMNS, fmt, dest=output)
        return
    if fmt is Fmt.json:
        text = json.dumps(V.as_json(res), indent=1, default=str) + "\n"
    else:
        text = "\n".join(V.text_lines(res) + [f"({res['wall_s']:.0f} s)"]) + "\n"
    if output is not None and str(output) != "-":
        from .workspace import atomic_output

        with atomic_output(output) as tmp:
            Path(tmp).write_text(text)
    else:
        sys.stdout.write(text)


def _query_format(fmt: Optional[Fmt], dest: Optional[Path]) -> Fmt:
    return resolve(fmt, dest)


def _emit_stream(reader, fmt: Fmt, dest: Optional[Path], max_rows: int = 200, layout=None) -> None:
    emit_stream(reader, fmt, dest, max_rows=max_rows, layout=layout)


def _pairs(items: list[str], option: str, form: str) -> dict[str, str]:
    """Repeated ``option k=v`` values as a dict; anything else is a usage error."""
    out = {}
    for item in items:
        if "=" not in item:
            raise Fail(f"{option} takes {form}, not {item!r}", 2)
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


@app.command(epilog='Example: replay sql "SELECT model, cpus, faults_per_sec FROM runs ORDER BY model, cpus"')
def sql(
    query: str = typer.Argument(..., help="SQL over the workspace views (events, traces, rejects, ops, vmas, results, lock_stats, line_stats, line_cpu, waits, runs); '-' reads it from stdin."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
    table: List[str] = typer.Option([], "--table", "-t", help="NAME=FILE: also a view NAME over a CSV, Parquet or JSON file (repeatable); no other file is readable."),
):
    """Run read-only SQL (DuckDB) over every trace and run in the workspace."""
    from .queries import QueryError, open_sql
    from .workspace import default_root

    if query == "-":
        query = sys.stdin.read()
    tables = _pairs(table, "--table", "NAME=FILE")
    fmt = resolve(fmt, output)
    try:
        with open_sql(workspace or default_root(), query, tables=tables) as r:
            _emit_stream(r, fmt, output)
    except QueryError as e:
        raise Fail(f"SQL: {e}")


@app.command(epilog="Example: replay query lock_contention -p run_id=edf38520feb5 -p by=task")
def query(
    name: Optional[str] = typer.Argument(None, help="A query from the library (replay query --list)."),
    list_: bool = typer.Option(False, "--list", "-l", help="Print the library: each query's question, parameters and columns."),
    param: List[str] = typer.Option([], "--param", "-p", help="A parameter as k=v (repeatable)."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
):
    """Run a named query from the library (lock_stat, lock_contention, retry_rates, throughput, latency, ...).

    Ops a query needs are built first where the workspace lacks them.  lock_stat,
    lock_contention and c2c print as /proc/lock_stat, perf lock contention and perf c2c
    report --stdio do; -f csv|json
    gives their columns."""
    from . import api
    from .queries import catalog
    from .queries.layouts import LAYOUTS

    fmt = resolve(fmt, output)
    if list_ or not name:
        cat = catalog()
        rows = [{"name": q.name, "question": q.question, "needs": q.needs,
                 "params": [{"name": k, "doc": v} for k, v in q.params.items()],
                 "columns": [{"name": c, "type": t, "doc": d} for c, t, d in q.columns]} for q in cat.values()]
        if fmt is not Fmt.table:
            _emit(rows, ["name", "question", "needs", "params", "columns"], fmt, dest=output)
            return
        from .output import table_out

        with table_out(output) as con:
            for q in cat.values():
                con.print(f"{q.name} - {q.question}", markup=False, highlight=False, soft_wrap=True)
                con.print(f"  needs: {q.needs}" + (f"; params: {', '.join(f'{k} ({v})' for k, v in q.params.items())}" if q.params else ""),
                          markup=False, highlight=False, soft_wrap=True)
                con.print("  columns: " + ", ".join(c for c, _, _ in q.columns), markup=False, highlight=False,
                          soft_wrap=True)
        return
    params = _pairs(param, "--param", "k=v")
    layout = catalog().get(name)
    layout = LAYOUTS.get(layout.layout) if layout is not None and layout.layout else None
    with api.open_query(name, params, workspace) as r:
        _emit_stream(r, fmt, output, layout=(lambda rows: layout(rows, params)) if layout else None)


@app.command(epilog="Example: echo 'SELECT count(*) FROM runs;' | replay shell")
def shell(workspace: Optional[Path] = WorkspaceOpt):
    """An interactive read-only SQL session over the workspace views.

    Statements end with ';'; .tables lists the views, .quit leaves.  Every statement
    runs as `replay sql` would (same read-only connection), so the shell is as safe.
    """
    from .queries import QueryError, open_sql
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
                    _emit_stream(r, Fmt.table, None)
            except QueryError as e:
                err.print(f"error: {e}", markup=False, highlight=False)
            except KeyboardInterrupt:
                err.print("interrupted", markup=False)
            buf = ""


@app.command(cls=ChoicesCommand, epilog="Example: replay compare --models mmap_lock,pervma,v8 --trace pft-t56 --machine broadwell-2s")
def compare(
    run_ids: List[str] = typer.Argument(None, help="Runs to compare (replay runs lists them); the first is the baseline. Each stands for its iterations: the runs that differ from it only in the seed."),
    models_: Optional[str] = typer.Option(None, "--models", help="Instead of run ids: compare these models (comma-separated: {MODELS}), a line per CPU count."),
    trace: Optional[str] = typer.Option(None, "--trace", "-t", help="With --models: the trace."),
    machine: Optional[str] = typer.Option(None, "--machine", help="With --models: the machine profile ({MACHINES})."),
    workspace: Optional[Path] = WorkspaceOpt,
    fmt: Optional[Fmt] = FormatOpt,
    output: Optional[Path] = OutOpt,
):
    """mmtests compare-kernels table across iterations: Hmean/Amean, Stddev and CoeffVar per metric and CPU count.

    A run's iterations are the runs of the same configuration with other seeds (replay
    run --iterations K, replay sweep --iterations K).  % change is against the first
    column, sign flipped where lower is better.  A mean is marked * * when the Student-t
    95% confidence intervals of the two columns' iterations do not overlap, ( ) when
    they do or there is one iteration - mmtests' reading.  Example:
    replay compare --models pervma,v8 --trace pft-t56 --machine broadwell-2s"""
    from . import api
    from .output import table_out

    fmt = resolve(fmt, output)
    c = api.compare(run_ids or None, models=models_, trace=trace, machine=machine, workspace=workspace)
    if fmt is not Fmt.table:
        _emit(c.frame.to_dicts(), c.frame.columns, fmt, dest=output)
        return
    with table_out(output) as con:
        for line in c.text.splitlines():
            con.print(line, markup=False, highlight=False, soft_wrap=True)


REPORT_TABLES = (  # (query, columns, title) of replay report
    ("retry_rates", ["level", "faults", "faults_success", "faults_abort", "faults_miss", "faults_fallback",
                     "fallback_pct_of_faults"], "per-VMA lock outcomes"),
    ("contention", ["lock_class", "lock", "contentions", "waittime_total_us", "waittime_max_us", "acquisitions",
                    "holdtime_avg_us", "trylock_failures"], "lock_stat"),
    ("latency", ["kind", "ops", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"], "latency"),
    ("hot_lines", ["rank", "line", "transfers", "invalidations", "fields"], "hottest cache lines"),
)


@app.command(epilog="Example: replay report edf38520feb5 -f json")
def report(run_id: str = typer.Argument(..., help="A run id (replay runs lists them)."),
           workspace: Optional[Path] = WorkspaceOpt, fmt: Optional[Fmt] = FormatOpt,
           output: Optional[Path] = OutOpt):
    """One run's summary tables: parameters, outcomes, contention, latency, hot lines
    (-f json: one object with the run and each table's rows)."""
    import polars as pl

    from . import api
    from .output import table_out

    fmt = resolve(fmt, output)
    r = api.load_run(run_id, workspace)
    tables = []
    for name, cols, title in REPORT_TABLES:
        df = api.query(name, workspace, run_id=run_id)
        if name == "retry_rates":
            df = df.filter(pl.col("level") == "run")
        tables.append((name, cols, title, df.select(cols).head(10).to_dicts()))
    if fmt is not Fmt.table:
        rec = {"run": {k: v for k, v in r.summary.items() if v is not None}, **{name: rows for name, _, _, rows in tables}}
        _emit([rec], list(rec), fmt, dest=output, single=True)
        return
    with table_out(output) as con:
        _emit([{"": k, "value": v} for k, v in r.summary.items() if v is not None], ["", "value"], Fmt.table,
              title=f"run {run_id}", con=con)
        for _, cols, title, rows in tables:
            _emit(rows, cols, Fmt.table, title=title, con=con)


PLOTS = {
    "throughput": "faults/sec and faults/cpu vs CPUs, a line per trace and model, iterations as error bars, % vs --baseline",
    "latency": "fault-latency survival curve (log-log) of RUNs with p50/p99/p99.9 marked",
    "timeline": "fallbacks and lock waits of RUNs per --bucket-ms",
    "lockwait": "heatmap of lock wait per simulated CPU and time bucket, a panel per RUN",
    "lines": "perf c2c's view of one RUN: its hottest cache lines (the struct fields on each) x the CPUs that took them, HITMs or all transfers (--count), above its CPUs' line transfers over time",
    "footprint": "VMA slab memory over --trace per model (replay footprint first)",
}


@app.command(epilog="Example: replay plot throughput --trace pft-t56 --machine broadwell-2s -o pft.png")
def plot(
    kind: str = typer.Argument(..., help="; ".join(f"{k}: {v}" for k, v in PLOTS.items()) + "."),
    run_ids: List[str] = typer.Argument(None, help="Runs to draw (throughput: default every run, or those of --trace/--machine)."),
    output: Path = typer.Option(..., "--output", "-o", help="FILE.png, .svg or .pdf"),
    trace: Optional[str] = typer.Option(None, "--trace", "-t", help="throughput: only this trace's runs; footprint: the trace."),
    machine: Optional[str] = typer.Option(None, "--machine", help="throughput: only runs on this machine; footprint: only this machine's footprint."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="throughput: the model the % panels compare against (default mmap_lock when drawn, else the first model by name)."),
    bucket_ms: float = typer.Option(1.0, "--bucket-ms", help="timeline, lockwait, lines: bucket width (ms)."),
    top: int = typer.Option(12, "--top", help="lines: how many of the hottest lines."),
    count: str = typer.Option("hitm", "--count", help="lines: what colours a line x CPU cell and picks the lines: hitm (loads finding the line Modified in another CPU, perf c2c's sort) or all (every transfer)."),
    workspace: Optional[Path] = WorkspaceOpt,
):
    """Draw a plot of runs to a file."""
    import polars as pl

    from .queries import QueryError, run_query
    from . import plot as P
    from .workspace import Workspace

    if kind not in PLOTS:
        raise Fail(f"unknown plot {kind!r}: {', '.join(PLOTS)}", 2)
    if not bucket_ms > 0:
        raise Fail("--bucket-ms must be a positive number of ms", 2)
    if top < 1:
        raise Fail("--top must be at least 1", 2)
    if count not in P.LINE_COUNTS:
        raise Fail(f"--count must be one of {', '.join(P.LINE_COUNTS)}, not {count!r}", 2)
    try:
        P.check_suffix(output)
    except ValueError as e:
        raise Fail(str(e))
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
    labels = {r: f"{info[r]['model']} {info[r]['trace_id']} {info[r]['machine']} {info[r]['cpus']} CPUs ({r})"
              for r in run_ids or []}
    if kind != "throughput" and not run_ids:
        raise Fail(f"{kind} needs run ids (replay runs lists them)", 2)
    if kind == "lines" and len(run_ids) != 1:
        raise Fail("lines draws one run: give one run id", 2)
    bucket = {"bucket_ms": repr(float(bucket_ms))}
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
            if baseline and baseline not in set(tp["model"].to_list()):
                raise Fail(f"--baseline {baseline}: no run of that model among these "
                           f"({', '.join(sorted(set(tp['model'].to_list())))})", 2)
            params = rs.select("run_id", "seed", "placement", "loop", "fault_service_ns", "semantics")
            P.throughput(tp.join(params, on="run_id"), output, baseline)
        elif kind == "latency":
            surv = pl.concat([run_query(ws.root, "latency_survival", {"run_id": r}) for r in run_ids])
            marks = pl.concat([run_query(ws.root, "latency", {"run_id": r}) for r in run_ids])
            kind_fault = pl.col("kind") == "fault"
            P.latency_ccdf(surv.filter(kind_fault), marks.filter(kind_fault), labels, output)
        elif kind == "timeline":
            tl = pl.concat([run_query(ws.root, "timeline", {"run_id": r, **bucket}) for r in run_ids])
            P.timeline(tl, labels, output, bucket_ms)
        elif kind == "lockwait":
            cw = pl.concat([run_query(ws.root, "cpu_lock_wait", {"run_id": r, **bucket}) for r in run_ids])
            P.lockwait(cw, {r: {"label": labels[r], "cpus": info[r]["cpus"]} for r in run_ids}, output, bucket_ms)
        else:  # lines
            r = run_ids[0]
            hot = run_query(ws.root, "c2c", {"run_id": r, "top": str(top),
                                             "display": "tot" if count == "hitm" else "transfers"})
            if hot.height == 0:
                raise Fail(f"run {r} moved no cache line between CPUs: nothing to draw")
            if hot["hitm"].is_null().all():
                raise Fail(f"run {r} was replayed before the engine counted transfers per CPU: replay run it again")
            lc = run_query(ws.root, "line_cpu", {"run_id": r})
            cw = run_query(ws.root, "cpu_lock_wait", {"run_id": r, **bucket})
            P.lines(hot, lc, cw, {"label": labels[r], "cpus": info[r]["cpus"]}, output, bucket_ms, count)
    except (QueryError, ValueError) as e:
        raise Fail(str(e))
    out.print(f"wrote {output}")


@app.command("export", epilog="Example: replay export edf38520feb5 --trace -o run.json, then open run.json in ui.perfetto.dev")
def export_cmd(
    run_id: str = typer.Argument(..., help="A run id (replay runs lists them)."),
    output: Path = typer.Option(..., "--output", "-o", help="FILE.json (Chrome trace-event JSON: ui.perfetto.dev, chrome://tracing)."),
    with_trace: bool = typer.Option(False, "--trace", "-t", help="Also the recorded trace the run replayed, on its real CPUs and times, beside the simulation."),
    workspace: Optional[Path] = WorkspaceOpt,
):
    """Write a run as a trace viewer's timeline: a track per simulated CPU and thread,
    each op a slice (model, VMA, outcome as args), lock waits nested in it, fallbacks
    and retries as instants, each CPU's cache-line transfers as a counter."""
    import polars as pl

    from .export import ExportError, Sources, export
    from .workspace import Workspace

    if output.suffix.lower() != ".json":
        raise Fail(f"-o must end in .json, not {output.name!r}", 2)
    ws = Workspace(workspace)
    rs = ws.runs()
    if rs is None or run_id not in set(rs["run_id"].to_list()):
        raise Fail(f"no run {run_id!r} in {ws.root} (replay runs lists them)")
    run = rs.filter(pl.col("run_id") == run_id).to_dicts()[0]
    trace = run["trace_id"]
    part = {ds: ws.partition(ds, trace) / "part-0.parquet" for ds in ("vmas", "events")}
    have_ops = ws.ops_file(trace)
    waits = ws.partition("waits", run_id) / "part-0.parquet"  # none for a run replayed before waits were recorded
    src = Sources(results=ws.partition("results", run_id) / "part-0.parquet", run=run, ops=have_ops,
                  waits=waits if waits.exists() else None,
                  vmas=part["vmas"] if have_ops else None,
                  events=part["events"] if ws.has_trace(trace) and part["events"].exists() else None)
    try:
        got = export(src, output, with_trace)
    except ExportError as e:
        raise Fail(str(e))
    c = got["counts"]

    def n(ph, cat, pred=lambda name: True):
        return sum(v for (p, k, name), v in c.items() if p == ph and k == cat and pred(name))

    line = (f"wrote {output}: {got['events']:,} events: simulated {n('X', 'simulated', lambda x: x != 'lock wait'):,} "
            f"ops, {n('X', 'simulated', lambda x: x == 'lock wait'):,} lock waits, {n('i', 'simulated'):,} fallbacks "
            "and retries")
    if with_trace:
        line += (f"; recorded {n('X', 'recorded', lambda x: not x.startswith('mmap_lock')) + n('i', 'recorded', lambda x: 'end not traced' in x):,} "
                 f"ops, {n('X', 'recorded', lambda x: x.startswith('mmap_lock')):,} mmap_lock waits")
    out.print(line + "; open it in ui.perfetto.dev", markup=False, highlight=False)


def _plot_footprint(ws, trace: str | None, machine: str | None, output: Path) -> None:
    from .queries import QueryError, run_sql

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


@app.command(epilog="Example: replay runs -f json -o runs.json")
def runs(workspace: Optional[Path] = WorkspaceOpt, fmt: Optional[Fmt] = FormatOpt, output: Optional[Path] = OutOpt):
    """List the runs in the workspace (-f json gives everything needed to reproduce each)."""
    from . import api

    fmt = resolve(fmt, output)
    df = api.runs(workspace)
    if df.height == 0 and fmt is Fmt.table:
        out.print("no runs yet: replay run --model v8")
        return
    rows = df.to_dicts()
    _emit(rows, ["run_id", "trace_id", "model", "machine", "cpus", "seed", "placement", "faults", "faults_per_sec",
                 "fallback_pct"], fmt, dest=output)


@app.command(epilog="Example: replay models -f csv")
def models(fmt: Optional[Fmt] = FormatOpt, output: Optional[Path] = OutOpt):
    """List the lock models, with the kernel code each follows."""
    from . import api

    _emit(api.models().to_dicts(), ["model", "description", "follows"], resolve(fmt, output), dest=output)


@app.command(cls=ChoicesCommand, epilog="Example: replay machines broadwell-2s")
def machines(show: Optional[str] = typer.Argument(None, help="A profile ({MACHINES}) or .toml path to show in full."),
             fmt: Optional[Fmt] = FormatOpt, output: Optional[Path] = OutOpt):
    """List the machine profiles (topology, hand-off latencies, prefetcher, estimated and fitted counts); or show one with each number's source or what it was fitted to."""
    from .machines import all_machines

    fmt = resolve(fmt, output)
    if show:
        from . import api

        m = api.model_and_machine("mmap_lock", show)[1]
        _emit(m.parameters(), ["parameter", "value", "fitted", "source"], fmt, dest=output,
              title=f"{m.name}: {m.description} ({m.ncpus} CPUs)")
        return
    rows = [{"machine": m.name, "cpus": m.ncpus,
             "topology": f"{m.sockets}x{m.cores_per_socket}x{m.smt}" + (f" ({m.ccds} CCDs/socket)" if m.ccds > 1 else ""),
             "smt_ns": m.latency_ns["smt_handoff"], "socket_ns": m.latency_ns["socket_handoff"],
             "cross_ccd_ns": m.latency_ns["cross_ccd_handoff"] if m.ccds > 1 else None,
             "cross_socket_ns": m.latency_ns["cross_socket_handoff"] if m.sockets > 1 else None,
             "prefetch_128B": m.adjacent_line_prefetch,
             "estimates": sum("est." in p["source"] for p in m.parameters()),
             "fitted": sum(p["fitted"] for p in m.parameters()), "description": m.description}
            for m in all_machines()]
    _emit(rows, list(rows[0]), fmt, dest=output)


@app.command(epilog="Example: replay version")
def version():
    """Print the version (also: replay --version)."""
    print(__version__)


def _version_flag(value: bool):
    if value:
        print(f"replay {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version_flag, is_eager=True,
                                       help="Print the version and exit.")):
    pass  # the help is the app's; this callback only holds --version


INTERRUPTED = "replay: interrupted; nothing was written to the workspace or to -o FILE"


def _user_errors() -> tuple:
    """The exceptions that are the user's one line: the API's, and the ingesters' and the
    workspace's if those modules were imported (a command that never imported them
    cannot have raised theirs; importing the workspace's would import pyarrow)."""
    found = [ReplayError]
    for module, name in (("replay.ingest.sources", "InputError"), ("replay.workspace", "WorkspaceError")):
        m = sys.modules.get(module)
        if m is not None:
            found.append(getattr(m, name))
    return tuple(found)


def main(argv: List[str] | None = None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)
        if rc == 130:  # click turns KeyboardInterrupt into Abort, typer into 130
            raise KeyboardInterrupt
        if isinstance(rc, int):
            return rc
    except OutputError as e:
        err.print(f"replay: error: {e}", markup=False, highlight=False)
        return 2
    except _user_errors() as e:  # evaluated when an exception reaches it
        err.print(f"replay: error: {e}", markup=False, highlight=False)
        return getattr(e, "code", 1)
    except KeyboardInterrupt:
        err.print(INTERRUPTED, markup=False)
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
        # the SIGINT that reached DuckDB mid-query: its InterruptException, or - a streaming
        # fetch interrupted (duckdb 2.0) - a RuntimeError "Query interrupted"
        if kind == "InterruptException" or (isinstance(e, RuntimeError) and str(e) == "Query interrupted"):
            err.print(INTERRUPTED, markup=False)
            return 130
        if os.environ.get("REPLAY_DEBUG"):
            raise
        err.print(f"replay: internal error: {type(e).__name__}: {e} (set REPLAY_DEBUG=1 for the traceback)",
                  markup=False, highlight=False)
        return 3
    return 0


def entry() -> None:
    """The ``replay`` command.  Everything the imports made so far (typer, rich, this
    module's commands) lives until the process exits, so it is moved out of the cyclic
    garbage collector's sight (``gc.freeze()``): the collections that numba's and
    polars' imports would trigger no longer walk it again and again.  Once the command
    is done, everything is frozen: the interpreter's shutdown would otherwise walk the
    whole heap (numba's typing registries, the engine's dispatchers: ~0.4 s of CPU after
    a replay) only to free memory the exit frees anyway.  Nothing is left to collect
    that matters: every file a command writes is closed and committed before it
    returns, and atexit handlers and stdout's flush run as before."""
    import gc

    gc.freeze()
    rc = main()
    gc.freeze()
    sys.exit(rc)
