"""The workspace: hive-partitioned Parquet datasets under one directory.

Layout (``./replay-data`` unless ``--workspace`` / ``REPLAY_WORKSPACE`` says otherwise)::

    events/trace_id=NAME/part-0.parquet     one row per trace event
    rejects/trace_id=NAME/part-0.parquet    malformed lines, with line numbers
    traces/trace_id=NAME/part-0.parquet     one row: source, sha256, line accounting
    ops/trace_id=NAME/part-0.parquet        faults and address-space writers (replay ops)
    vmas/trace_id=NAME/part-0.parquet       the VMAs the tracker saw
    results/run_id=ID/part-0.parquet        one row per op per run (replay run)
    lock_stats/, line_stats/, runs/         per-lock and per-line stats, the run's parameters

Every write goes to a staging directory inside the workspace and is renamed into
place, so a reader never sees half a file.  The ``traces`` row is the commit record: it
is written last and removed first, so a trace is listed only when all its data is
whole.  An interrupted ingest leaves at most a staging directory, removed next time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATASETS = ("events", "rejects", "traces")
# Which commit record makes a partition visible: a trace's data while its ``traces`` row
# exists, a run's while its ``runs`` row exists.  Every reader (the SQL views, ``replay
# traces``/``runs``) sees only committed partitions, so a writer killed half-way leaves
# nothing a reader can see.
TRACE_KEYED = ("traces", "events", "rejects", "ops", "vmas")
RUN_KEYED = ("runs", "results", "lock_stats", "line_stats")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


def scan_ops(path: str | Path):
    """A lazy scan of an ops Parquet file, read through pyarrow.

    polars 2.1's own Parquet reader decodes the dictionary-encoded ``kind`` column
    (a pl.Enum) wrongly now and then when a file has several row groups - the same
    query gives different kinds on different runs - so ops are read by pyarrow."""
    import polars as pl
    import pyarrow.dataset as pads

    return pl.scan_pyarrow_dataset(pads.dataset(str(path), format="parquet"))


def read_ops(path: str | Path):
    import polars as pl

    return pl.from_arrow(pq.read_table(str(path)))


def default_root() -> Path:
    return Path(os.environ.get("REPLAY_WORKSPACE", "replay-data"))


def check_name(name: str) -> str:
    if not name or name.startswith(".") or set(name) - _NAME_OK:
        raise ValueError(f"trace name {name!r}: use letters, digits, '.', '_', '-', '+' (not starting with '.')")
    return name


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()

    def partition(self, dataset: str, key: str, keyname: str = "trace_id") -> Path:
        return self.root / dataset / f"{keyname}={key}"

    def committed_files(self, dataset: str) -> list[Path]:
        """The Parquet files of ``dataset`` that a committed record names, sorted."""
        if dataset in TRACE_KEYED:
            record, key = "traces", "trace_id"
        elif dataset in RUN_KEYED:
            record, key = "runs", "run_id"
        else:
            raise ValueError(f"unknown dataset {dataset!r}")
        live = {p.parent.name for p in (self.root / record).glob(f"{key}=*/part-0.parquet")}
        return sorted(p for p in (self.root / dataset).glob(f"{key}=*/*.parquet") if p.parent.name in live)

    def has_trace(self, trace_id: str) -> bool:
        return (self.partition("traces", trace_id) / "part-0.parquet").exists()

    def stage(self) -> str:
        """A fresh staging directory on the workspace's filesystem (so rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        return tempfile.mkdtemp(prefix=f".stage-{os.getpid()}-", dir=self.root)

    def _sweep(self):
        for p in self.root.glob(".stage-*"):
            try:
                pid = int(p.name.split("-")[1])
            except (IndexError, ValueError):
                pid = None
            if pid is None or not _alive(pid):
                shutil.rmtree(p, ignore_errors=True)

    def commit_trace(self, trace_id: str, stage: str, traces_row: pa.Table) -> None:
        """Move staged events/rejects into place, then write the traces row (the commit)."""
        pq.write_table(traces_row, os.path.join(stage, "traces.parquet"), compression="zstd")
        self.drop_trace(trace_id)
        for ds in DATASETS:
            dest = self.partition(ds, trace_id)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if ds == "traces":
                continue
            tmp = Path(stage) / f"{ds}.dir"
            tmp.mkdir()
            os.replace(os.path.join(stage, f"{ds}.parquet"), tmp / "part-0.parquet")
            os.replace(tmp, dest)
        tmp = Path(stage) / "traces.dir"
        tmp.mkdir()
        os.replace(os.path.join(stage, "traces.parquet"), tmp / "part-0.parquet")
        os.replace(tmp, self.partition("traces", trace_id))
        shutil.rmtree(stage, ignore_errors=True)

    def write_derived(self, dataset: str, key: str, table: pa.Table, keyname: str = "trace_id") -> Path:
        """Atomically (re)place one partition of a derived dataset (ops, vmas, run outputs)."""
        return self._place(dataset, key, keyname, lambda f: pq.write_table(table, f, compression="zstd"))

    def write_derived_file(self, dataset: str, key: str, src: str | Path, keyname: str = "trace_id") -> Path:
        """Atomically (re)place one partition with an already written Parquet file
        (one on this filesystem, such as a file in a staging directory)."""
        return self._place(dataset, key, keyname, lambda f: os.replace(src, f))

    def _place(self, dataset: str, key: str, keyname: str, fill) -> Path:
        stage = self.stage()
        try:
            tmp = Path(stage) / "dir"
            tmp.mkdir()
            fill(tmp / "part-0.parquet")
            dest = self.partition(dataset, key, keyname)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                os.replace(dest, Path(stage) / "old")
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dest

    def read(self, dataset: str, trace_id: str) -> pa.Table:
        p = self.partition(dataset, trace_id) / "part-0.parquet"
        if not p.exists():
            raise FileNotFoundError(p)
        return pq.read_table(p)

    def drop_trace(self, trace_id: str) -> None:
        for ds in ("traces", "events", "rejects", "ops", "vmas"):  # commit record first
            p = self.partition(ds, trace_id)
            if p.exists():
                trash = Path(tempfile.mkdtemp(prefix=".stage-trash-", dir=self.root))
                os.replace(p, trash / p.name)
                shutil.rmtree(trash, ignore_errors=True)

    def write_run(self, run) -> None:
        """A run's datasets; the ``runs`` row (its commit record) last."""
        import polars as pl

        if run.results is None:  # streamed to a file as the replay ran
            self.write_derived_file("results", run.run_id, run.results_path, "run_id")
        else:
            self.write_derived("results", run.run_id, run.results.to_arrow(), "run_id")
        for ds, df in (("lock_stats", run.lock_stats), ("line_stats", run.line_stats)):
            self.write_derived(ds, run.run_id, df.to_arrow(), "run_id")
        from . import __version__

        row = {**run.summary(), **{k: v for k, v in run.params.items()}, "tool_version": __version__}
        self.write_derived("runs", run.run_id, pl.DataFrame([row]).to_arrow(), "run_id")

    def runs(self):
        import polars as pl

        files = self.committed_files("runs")
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else None

    def traces(self) -> pa.Table | None:
        files = self.committed_files("traces")
        if not files:
            return None
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


@contextlib.contextmanager
def atomic_output(dest: str | Path):
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` whole
    (with ordinary permissions), on failure it vanishes."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=dest.suffix, dir=str(dest.parent) or ".")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary, not the result
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
