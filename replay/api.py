"""The Python API: what the command line does, as functions a notebook calls.

    import replay
    t = replay.ingest("trace.txt.zst", name="mine")      # or the bundled sample: replay.run(model=...)
    r = replay.run("mine", model="v8", machine="broadwell-2s", cpus=14)
    r.summary["faults_per_sec"]; r.results; r.lock_stats; r.line_stats; r.line_cpu; r.waits   # dict, polars
    replay.compare([r, replay.run("mine", model="mmap_lock", cpus=14)])
    replay.sql("SELECT model, faults_per_sec FROM runs")                 # polars

Every ``replay`` command that does work calls these functions (``replay/cli.py`` only
parses options and prints), so a notebook and the CLI get the same runs, the same ids
and the same one-line errors: a ``ReplayError`` whose ``code`` is the CLI's exit
status (2 for a usage error such as an unknown model, 1 for bad input).  The workspace
is ``workspace=`` (a path), else ``$REPLAY_WORKSPACE``, else ``./replay-data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class ReplayError(Exception):
    """One line for the user; ``code`` is the exit status the CLI gives it."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class UsageError(ReplayError):
    """A call or command line that asks for something that does not exist or cannot be (exit 2)."""

    def __init__(self, msg: str):
        super().__init__(msg, 2)


SAMPLE_TRACE = "mprotect-race"  # the bundled sample, ingested on first use


def _ws(workspace):
    from .workspace import Workspace

    return Workspace(workspace if workspace is not None else os.environ.get("REPLAY_WORKSPACE"))


# -- traces -------------------------------------------------------------------------------
@dataclass
class Ingested:
    """An ingested trace: ``trace_id``, ``summary`` (what ``replay ingest -f json``
    prints: format, per-event counts, line accounting, warnings) and the ingester's
    own result (``result``)."""

    trace_id: str
    summary: dict
    result: object = field(repr=False)


def ingest(path: str | os.PathLike, name: str | None = None, *, format: str = "auto", strict: bool = False,
           replace: bool = False, maps: str | os.PathLike | None = None, arch: str | None = None,
           workspace=None) -> Ingested:
    """Parse a trace (perf script / ftrace / trace-cmd text, .gz/.zst, perf.data, trace.dat,
    perf JSON, perf trace; ``"-"`` is stdin) into the workspace.  ``maps``: the
    /proc/PID/maps snapshot taken when the trace started.  ``replace``: replace a trace of
    the same name.  ``arch``: x86_64, arm64 or riscv64 (default: the trace's header, else
    x86_64)."""
    from .ingest.sources import InputError
    from .ingesting import run_ingest

    snapshot = None
    if maps is not None:
        from .ops import MapsError, parse_maps

        try:
            snapshot = Path(maps).read_text()
            parse_maps(snapshot)
        except OSError as e:
            raise ReplayError(f"cannot read --maps {maps}: {e.strerror}") from None
        except (MapsError, UnicodeDecodeError) as e:
            raise ReplayError(f"--maps {maps}: {e}") from None
    try:
        res = run_ingest(str(path), name, format, _ws(workspace).root, strict, replace, maps_snapshot=snapshot,
                         arch=arch)
    except InputError as e:
        raise ReplayError(str(e)) from None
    return Ingested(res.trace_id, ingest_summary(res), res)


def ingest_summary(res) -> dict:
    c = res.counts
    return {"trace_id": res.trace_id, "format": res.format, "source": res.source, "arch": res.meta.get("arch"),
            "sha256": res.sha256,
            "events": dict(sorted(c.per_event.items())),
            "lines": {k: getattr(c, k) for k in ("lines", "parsed", "header", "blank", "callchain", "lost_records",
                                                 "malformed")},
            "lost_events": c.lost_events, "out_of_order": res.out_of_order, "first_rejects": res.first_rejects,
            "warnings": res.warnings, "path": str(res.where)}


def traces(workspace=None):
    """The workspace's traces (one row each, as ``replay traces``), a polars frame."""
    import polars as pl

    t = _ws(workspace).traces()
    return pl.DataFrame() if t is None else pl.from_arrow(t.drop_columns(["maps_snapshot"]))


@dataclass
class Ops:
    """A trace's ops: ``summary`` (dict: threads, attribution, observed fallbacks, ops
    per kind, ...), ``ops`` and ``vmas`` (polars LazyFrames over the committed files: a
    trace's ops need not fit in memory; ``.collect()`` them), ``kinds`` (ops and mean
    duration per kind) and the op builder's ``notes``."""

    trace_id: str
    summary: dict
    ops: object = field(repr=False)
    vmas: object = field(repr=False)
    notes: list = field(default_factory=list)
    kinds: dict = field(default_factory=dict, repr=False)


def ops(trace: str, *, same_mm: bool = False, workspace=None) -> Ops:
    """Build (again) a trace's ops: faults and address-space writers, with their VMAs,
    thread attribution and the fallbacks the trace itself shows.  Streams: the events
    are read and the ops written a batch at a time."""
    import polars as pl

    from .cli import _build_ops
    from .ops import ops_summary
    from .workspace import PART

    ws = _ws(workspace)
    if not ws.has_trace(trace):
        raise ReplayError(f"no trace {trace!r} in {ws.root} (replay traces lists them)")
    path, rep = _build_ops(ws, trace, ws.trace_sha(trace), same_mm)
    c = ops_summary(path)  # read back a batch at a time
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
        "faults_with_service": c["faults_with_service"], "fault_ends_unpaired": rep.fault_ends_unpaired,
        "out_of_order_events": rep.out_of_order, "faults_outside_user_space": rep.faults_outside_user_space,
        "out_of_range_calls": rep.out_of_range_calls,
        "kinds": {k: n for k, (n, _) in c["kinds"].items()},
        "fault_kinds": c["fault_kinds"],
    }
    return Ops(trace, summary, pl.scan_parquet(str(path)), pl.scan_parquet(str(ws.partition("vmas", trace) / PART)),
               list(rep.notes), dict(c["kinds"]))


def ensure_ops(trace: str, workspace=None) -> str:
    """The path of a trace's ops, built now if missing or made by an older op builder
    (the bundled sample is ingested on first use)."""
    from .cli import _ensure_ops

    return _ensure_ops(_ws(workspace), trace)[0]


# -- runs ---------------------------------------------------------------------------------
@dataclass
class Run:
    """A committed run: ``run_id``, ``summary`` (dict, as ``replay run -f json``), and
    its datasets as polars frames, read from the workspace when first asked for:
    ``results`` (one row per op), ``lock_stats`` (per lock), ``line_stats`` (per cache
    line, with the struct fields on it), ``line_cpu`` (per line and CPU that received
    it: the transfers by perf c2c's kinds), ``waits`` (one row per lock wait: the
    lock, mode, start and end)."""

    run_id: str
    summary: dict
    root: Path = field(repr=False)

    def _read(self, dataset: str):
        import polars as pl

        from .workspace import Workspace

        return pl.read_parquet(Workspace(self.root).partition(dataset, self.run_id, "run_id") / "part-0.parquet")

    @property
    def results(self):
        return self._read("results")

    @property
    def lock_stats(self):
        return self._read("lock_stats")

    @property
    def line_stats(self):
        return self._read("line_stats")

    @property
    def line_cpu(self):
        return self._read("line_cpu")

    @property
    def waits(self):
        return self._read("waits")


def model_and_machine(model: str, machine: str):
    """The lock model and machine profile of those names (a machine may be a .toml path):
    an unknown name is a usage error, a broken plugin or profile bad input."""
    from .machines import MachineError, load_machine
    from .models import ModelError, get_model

    try:
        return get_model(model), load_machine(machine)
    except (ModelError, MachineError) as e:
        if str(e).startswith("unknown "):
            raise UsageError(str(e)) from None
        raise ReplayError(str(e)) from None


PLACEMENTS = ("spread", "packed", "as-recorded")


def check_run_options(placement: str, cpus: int | None = None, machine=None) -> None:
    if placement not in PLACEMENTS:
        raise UsageError(f"--placement must be spread, packed or as-recorded, not {placement!r}")
    if cpus is not None and machine is not None and not 1 <= cpus <= machine.ncpus:
        raise UsageError(f"--cpus must be between 1 and {machine.ncpus} for {machine.name}, not {cpus}")


def run(trace: str = SAMPLE_TRACE, *, model: str, machine: str = "broadwell-2s", cpus: int | None = None,
        seed: int = 0, placement: str = "spread", open_loop: bool = False, fault_service: str | float = "trace",
        iterations: int = 1, workspace=None, progress: bool = False):
    """Replay ``trace`` through lock ``model`` on ``machine`` with ``cpus`` simulated CPUs
    (default: all the machine's) and commit the run; the same arguments give the same
    run id, and re-running one replaces it.  ``seed`` drives the run's service-time
    draws and start order: another seed is another sample of the same run.  With
    ``iterations`` K > 1, K runs with seeds seed..seed+K-1, returned as a list (what
    ``compare`` takes as one column).  ``progress``: a progress bar on stderr."""
    from .cli import err, run_one

    mdl, mach = model_and_machine(model, machine)
    check_run_options(placement, cpus, mach)
    if iterations < 1:
        raise UsageError("--iterations must be at least 1")
    ws = _ws(workspace)
    out = []
    for i in range(iterations):
        if iterations > 1 and progress:
            err.print(f"iteration {i + 1}/{iterations} (seed {seed + i})", markup=False)
        r, s = run_one(ws, trace, mdl, mach, cpus, seed + i, placement, open_loop, str(fault_service), bar=progress)
        out.append(Run(r.run_id, s, ws.root))
    return out[0] if iterations == 1 else out


def load_run(run_id: str, workspace=None) -> Run:
    """A run already in the workspace, by id (``replay.runs()`` lists them)."""
    ws = _ws(workspace)
    rs = ws.runs()
    if rs is None or run_id not in set(rs["run_id"].to_list()):
        raise ReplayError(f"no run {run_id!r} in {ws.root} (replay runs lists them)")
    import polars as pl

    return Run(run_id, rs.filter(pl.col("run_id") == run_id).to_dicts()[0], ws.root)


def runs(workspace=None):
    """The workspace's runs (one row each, with everything needed to reproduce it), polars."""
    import polars as pl

    df = _ws(workspace).runs()
    return pl.DataFrame() if df is None else df.sort("trace_id", "model", "machine", "cpus")


def models():
    """The lock models: name, description, the kernel code each follows (polars)."""
    import polars as pl

    from .models import ModelError, registry

    try:
        reg = registry()
    except ModelError as e:
        raise ReplayError(str(e)) from None
    return pl.DataFrame([{"model": m.name, "description": m.description, "follows": "; ".join(m.citations)}
                         for m in reg.values()])


# -- comparing and querying -----------------------------------------------------------------
@dataclass
class Comparison:
    """mmtests compare-kernels over runs and their iterations: ``frame`` (polars: per CPU
    count, kind - Hmean/Amean, Stddev, CoeffVar - metric and column, the value, the %
    change against the first column, whether it is significant, the iterations) and
    ``text`` (the table as compare-kernels prints it)."""

    frame: object = field(repr=False)
    text: str

    def __repr__(self) -> str:  # a notebook cell shows the table
        return self.text


def compare(runs=None, *, models: list[str] | str | None = None, trace: str | None = None,
            machine: str | None = None, workspace=None) -> Comparison:
    """Compare runs (``Run`` objects or run ids, or lists of them; the first is the
    baseline), each standing for its iterations (the runs of the same configuration
    with other seeds); or with ``models=``, those models' runs of ``trace`` on
    ``machine``, a line per CPU count."""
    import importlib

    import polars as pl

    C = importlib.import_module("replay.compare")  # replay.compare, the attribute, is the API function

    ws = _ws(workspace)
    rs = ws.runs()
    if rs is None:
        raise ReplayError("no runs in the workspace yet: replay run --model v8")

    def rid(r):
        if isinstance(r, (list, tuple)):
            return rid(r[0]) if r else None
        return r.run_id if isinstance(r, Run) else str(r)

    ids = [rid(r) for r in (runs or [])]
    blocks: list = []  # (cpus, columns of run ids, labels)
    if models:
        names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
        if ids:
            raise UsageError("give run ids or --models, not both")
        sel = rs.filter(pl.col("model").is_in(names))
        if trace:
            sel = sel.filter(pl.col("trace_id") == trace)
        if machine:
            sel = sel.filter(pl.col("machine") == machine)
        if sel["trace_id"].n_unique() > 1 or sel["machine"].n_unique() > 1:
            raise UsageError("those runs span several traces or machines; pick one with --trace and --machine")
        for c in sorted(sel["cpus"].unique().to_list()):
            cols = []
            for m in names:
                hit = sel.filter((pl.col("model") == m) & (pl.col("cpus") == c)).sort("seed")
                if hit.height:
                    cols.append(C.iterations_of(rs, hit["run_id"][0]))
            if len(cols) == len(names):
                blocks.append((c, cols, names))
        if not blocks:
            raise ReplayError(f"no CPU count has a run of every one of {', '.join(names)}")
    else:
        if len(ids) < 2:
            raise UsageError("compare needs at least two run ids (or --models A,B)")
        missing = [r for r in ids if r not in set(rs["run_id"].to_list())]
        if missing:
            raise ReplayError(f"no run {missing[0]!r} in {ws.root} (replay runs lists them)")
        info = {r["run_id"]: r for r in rs.to_dicts()}
        labels = [info[r]["model"] for r in ids]
        if len(set(labels)) < len(labels):
            labels = list(ids)
        cpus = {info[r]["cpus"] for r in ids}
        blocks.append((cpus.pop() if len(cpus) == 1 else "n", [C.iterations_of(rs, r) for r in ids], labels))
    metrics = C.iteration_metrics(ws, [r for _, cols, _ in blocks for col in cols for r in col])
    rows = [{**r, "run_id": cols[labels.index(r["label"])][0]}  # the run given for the column
            for c, cols, labels in blocks for r in C.compare_stats(metrics, cols, labels, c)]
    first = rs.filter(pl.col("run_id") == blocks[0][1][0][0]).to_dicts()[0]
    its = sorted({len(col) for _, cols, _ in blocks for col in cols})
    lines = [f"{first['trace_id']} on {first['machine']}, iterations per column: {', '.join(map(str, its))}"]
    lines += C.render(rows, blocks[0][2])
    frame = pl.DataFrame([{**r, "cpus": str(r["cpus"])} for r in rows])  # "n": runs of several CPU counts
    return Comparison(frame, "\n".join(lines))


def sql(query: str, params: dict | None = None, *, tables: dict | None = None, workspace=None):
    """Read-only DuckDB SQL over the workspace's views (events, traces, ops, vmas, results,
    lock_stats, line_stats, runs, ...) as a polars frame.  ``tables``: extra views over
    your own CSV/Parquet/JSON files, ``{"name": "file.csv"}``."""
    from .queries import QueryError, run_sql

    try:
        return run_sql(_ws(workspace).root, query, params, tables)
    except QueryError as e:
        raise ReplayError(f"SQL: {e}") from None


def query(name: str, workspace=None, **params):
    """A query of the library (``replay query --list``) as a polars frame, e.g.
    ``replay.query("lock_contention", run_id=r.run_id, by="task")``.  Ops it needs and
    the workspace lacks are built first."""
    import polars as pl
    import pyarrow as pa

    with open_query(name, {k: str(v) for k, v in params.items() if v is not None}, workspace) as r:
        return pl.from_arrow(pa.Table.from_batches(list(r), schema=r.schema))


def open_query(name: str, params: dict[str, str], workspace=None):
    """``query`` as a stream of Arrow record batches (what ``replay query`` prints)."""
    from .queries import ParamError, QueryError, library_sql
    from .queries import open_query as _open

    ws = _ws(workspace)
    try:
        _, used, needed = library_sql(name, params)
    except ParamError as e:
        raise UsageError(str(e)) from None
    except QueryError as e:
        raise ReplayError(str(e)) from None
    if {"ops", "vmas"} & set(needed):  # built on demand, as replay run builds them
        todo = [used["trace_id"]] if used.get("trace_id") else _trace_ids(ws)
        for t in todo:
            try:
                ensure_ops(t, ws.root)
            except ReplayError:
                if ws.ops_file(t) is None:  # a trace without faults still has its ops
                    raise
    import contextlib

    @contextlib.contextmanager
    def opened():
        try:
            with _open(ws.root, name, params) as r:
                yield r
        except QueryError as e:
            raise ReplayError(str(e)) from None

    return opened()


def _trace_ids(ws) -> list[str]:
    t = ws.traces()
    return [] if t is None else t.column("trace_id").to_pylist()
