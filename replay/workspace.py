"""The workspace: hive-partitioned Parquet datasets under one directory, and the rules
by which commands write it so that readers - and the commands after one that was killed -
only ever see whole commits.

Layout (``./replay-data`` unless ``--workspace`` / ``REPLAY_WORKSPACE`` says otherwise)::

    events/trace_id=NAME/part-0.parquet     one row per trace event
    rejects/trace_id=NAME/part-0.parquet    malformed lines, with line numbers
    traces/trace_id=NAME/part-0.parquet     one row: source, sha256, line accounting
    ops/trace_id=NAME/part-0.parquet        faults and address-space writers (replay ops)
    vmas/trace_id=NAME/part-0.parquet       the VMAs the tracker saw
    footprint/trace_id=NAME/part-0.parquet  slab memory of those VMAs per model (replay footprint)
    results/run_id=ID/part-0.parquet        one row per op per run (replay run)
    lock_stats/, line_stats/, runs/         per-lock and per-line stats, the run's parameters
    line_cpu/run_id=ID/part-0.parquet       per line and CPU that received it: transfers by kind
    waits/run_id=ID/part-0.parquet          one row per lock wait of an op: lock, mode, start, end
    .lock                                   the writers' lock (flock)
    .stage-PID-*/                           a writer's staging directory

**Commit records.**  A trace's partitions are visible while its ``traces`` row exists, a
run's while its ``runs`` row exists (``committed_files()``, which every reader uses).
ops and vmas are visible only as a pair from one build: both files carry the build's
id in their Parquet metadata, and a pair whose ids differ - a rebuild killed between its
two renames - is hidden (and removed by the next writer; the next run rebuilds it).
A query that opens the two files at the very moment of a rebuild can still read one of
each build; the contents differ only if the rebuild changed something (``--same-mm``
toggled, a new version of the op builder).

**Writing.**  A writer does its slow work (parsing, building ops, replaying) in a
staging directory of its own, outside any lock, then takes the workspace lock (an
exclusive ``flock`` on ``.lock``; readers never take it) and, holding it, re-checks
what it relied on (the trace name is still free, or the trace it read is still the same
content), renames the staged files into place - data first, the commit record last -
and lets go.  Each rename replaces one file, so a reader sees a file whole or not at all.
``--replace`` removes, in this order, the runs rows of the old trace's runs, its
``traces`` row, then its data and those runs' data; then places the new trace.

**Cleanup.**  Every time a writer takes the lock it first removes what dead writers
left: partitions whose commit record does not exist, ops/vmas pairs of two builds, and
staging directories whose owner is gone.  Because every placement and its commit record
happen under one hold of the lock, anything uncommitted seen while holding it is left by
a writer that died (kill -9) or failed; nothing a live writer is about to commit is ever
in the datasets yet.  A staging directory belongs to a live writer while that process
holds an ``flock`` on its ``.owner`` file: the kernel drops the lock when the process
dies, however it dies, so no pid is guessed at (pids are reused, and differ across pid
namespaces).  Staging directories are created under the workspace lock, so a cleanup
never sees one before its ``.owner`` is locked.  A commit that fails half-way (a full
disk, say) runs the same cleanup before it lets go of the lock.  Nothing is fsynced: this
is safety against a process dying, not the machine.

**Errors.**  ``writing(path)`` turns an OS error while writing into a
``WorkspaceError`` naming the path and the cause (the CLI prints it as one line, exit 1).

**Fault points.**  ``REPLAY_FAULT_POINT=NAME`` makes the process SIGKILL itself at the
step ``fault_point(NAME)`` marks (``NAME:stop`` SIGSTOPs it, ``NAME:SIGINT`` - any signal
name - sends it that signal, ``NAME:ENOSPC`` - any errno name - raises that error there); the tests kill commands at every step this way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Which commit record makes a partition visible: a trace's data while its ``traces`` row
# exists, a run's while its ``runs`` row exists.  Every reader (the SQL views, ``replay
# traces``/``runs``) sees only committed partitions, so a writer killed half-way leaves
# nothing a reader can see.
TRACE_KEYED = ("traces", "events", "rejects", "ops", "vmas", "footprint")
RUN_KEYED = ("runs", "results", "lock_stats", "line_stats", "line_cpu", "waits")
RUN_DATA = RUN_KEYED[1:]  # what a run's ``runs`` row commits
PART = "part-0.parquet"
LOCK_FILE = ".lock"
STAGE_PREFIX = ".stage-"
OWNER_FILE = ".owner"
BUILD_KEY = b"replay.build"  # ops/vmas Parquet metadata: which build the file belongs to
FAULT_ENV = "REPLAY_FAULT_POINT"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")
_HELD: dict[str, list] = {}  # realpath of a workspace -> [lock fd, depth]: the lock is reentrant per process
_OWNED: dict[str, int] = {}  # staging directory -> the fd holding its .owner lock


class WorkspaceError(Exception):
    """A workspace or output write that failed, or a commit that lost a race: one line
    for the user (exit 1)."""


def fault_point(name: str, path: str | Path | None = None) -> None:
    """A named step of a commit, for tests: see the module docstring."""
    want = os.environ.get(FAULT_ENV)
    if not want:
        return
    point, _, action = want.partition(":")
    if point != name:
        return
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action.startswith("SIG"):  # SIGINT: a Ctrl-C at exactly this step
        os.kill(os.getpid(), getattr(signal, action))
    elif action:
        code = getattr(errno, action)
        raise OSError(code, os.strerror(code), None if path is None else str(path))
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def os_cause(e: BaseException) -> str | None:
    """The OS error behind ``e`` as its message ("No space left on device"), or None.
    pyarrow and polars report some as their own exceptions with the errno in the text."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    if not isinstance(e, OSError) and type(e).__module__.split(".")[0] not in ("polars", "pyarrow"):
        return None  # our own errors may quote an errno; they are not write failures
    m = re.search(r"(?:os error|errno) (\d+)", str(e), re.IGNORECASE)
    return os.strerror(int(m.group(1))) if m else None


@contextlib.contextmanager
def writing(path: str | Path):
    """Turn an OS error raised while writing ``path`` into a one-line WorkspaceError."""
    try:
        yield
    except WorkspaceError:
        raise
    except Exception as e:
        cause = os_cause(e)
        if cause is None:
            raise
        raise WorkspaceError(f"cannot write {path}: {cause}") from e


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


def _keyname(dataset: str) -> str:
    if dataset in TRACE_KEYED:
        return "trace_id"
    if dataset in RUN_KEYED:
        return "run_id"
    raise ValueError(f"unknown dataset {dataset!r}")


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()

    def partition(self, dataset: str, key: str, keyname: str | None = None) -> Path:
        return self.root / dataset / f"{keyname or _keyname(dataset)}={key}"

    # -- what readers see ---------------------------------------------------------------

    def _live(self, record: str) -> set[str]:
        """Partition names (``trace_id=X``) of the commit records that exist."""
        return {p.parent.name for p in (self.root / record).glob(f"{_keyname(record)}=*/{PART}")}

    def committed_files(self, dataset: str) -> list[Path]:
        """The Parquet files of ``dataset`` that a committed record names, sorted."""
        key = _keyname(dataset)
        live = self._live("traces" if dataset in TRACE_KEYED else "runs")
        files = sorted(p for p in (self.root / dataset).glob(f"{key}=*/*.parquet") if p.parent.name in live)
        if dataset in ("ops", "vmas"):
            files = [f for f in files if self._one_build(f.parent.name.split("=", 1)[1])]
        return files

    def _build(self, dataset: str, trace_id: str) -> bytes | None:
        try:
            return (pq.read_metadata(self.partition(dataset, trace_id) / PART).metadata or {}).get(BUILD_KEY, b"")
        except (OSError, pa.ArrowException):  # missing, or not whole
            return None

    def _one_build(self, trace_id: str) -> bool:
        """The trace's ops and vmas both exist and come from one build."""
        b = self._build("ops", trace_id)
        return b is not None and b == self._build("vmas", trace_id)

    def has_trace(self, trace_id: str) -> bool:
        return (self.partition("traces", trace_id) / PART).exists()

    def trace_sha(self, trace_id: str) -> str | None:
        """The committed trace's content hash (None when there is no such trace)."""
        try:
            # ParquetFile, not read_table: read_table's first call imports pyarrow.dataset
            # (~50 ms of a replay's start-up) to read this one-row file
            with pq.ParquetFile(self.partition("traces", trace_id) / PART) as f:
                return f.read(columns=["sha256"])["sha256"][0].as_py()
        except FileNotFoundError:
            return None

    def ops_file(self, trace_id: str) -> Path | None:
        """The trace's committed ops file, when it has one."""
        if self.has_trace(trace_id) and self._one_build(trace_id):
            return self.partition("ops", trace_id) / PART
        return None

    def read(self, dataset: str, trace_id: str) -> pa.Table:
        try:
            return pq.read_table(self.partition(dataset, trace_id) / PART)
        except FileNotFoundError:
            raise self.gone(trace_id) from None

    def gone(self, trace_id: str) -> WorkspaceError:
        """The error for a trace that another command replaced or removed under this one."""
        return WorkspaceError(f"trace {trace_id!r} was replaced or removed in {self.root} while this command was "
                              "using it; run the command again")

    def runs(self):
        import polars as pl

        files = self.committed_files("runs")
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else None

    def traces(self) -> pa.Table | None:
        files = self.committed_files("traces")
        if not files:
            return None
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")

    # -- the writers' lock, staging and cleanup -------------------------------------------

    @contextlib.contextmanager
    def lock(self):
        """Hold the workspace's writer lock (reentrant within a process).  Taking it
        first cleans up what dead writers left; an error while holding it cleans up
        what this writer had placed but not committed."""
        key = os.path.realpath(self.root)
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD[key] = [fd, 1]
            try:
                self._cleanup()
                yield
            except BaseException:
                self._cleanup()
                raise
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # releases the flock

    def _holding(self) -> None:
        assert os.path.realpath(self.root) in _HELD, "workspace writes happen under Workspace.lock()"

    def stage(self) -> str:
        """A fresh staging directory on the workspace's filesystem (so renames from it
        are atomic), owned by this process until ``unstage``."""
        with self.lock(), writing(self.root):
            d = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=self.root)
            fd = os.open(os.path.join(d, OWNER_FILE), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _OWNED[d] = fd
        return d

    def unstage(self, stage: str) -> None:
        shutil.rmtree(stage, ignore_errors=True)
        fd = _OWNED.pop(stage, None)
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def staging(self):
        stage = self.stage()
        try:
            yield stage
        finally:
            self.unstage(stage)

    @staticmethod
    def _stage_alive(d: Path) -> bool:
        try:
            fd = os.open(d / OWNER_FILE, os.O_RDONLY)
        except FileNotFoundError:
            return False  # staging is created with its .owner under the lock: no .owner, no owner
        except OSError:
            return True  # cannot tell: leave it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def _cleanup(self) -> None:
        """Remove what no commit record names and no live writer owns (under the lock).
        Best effort: a cleanup that cannot remove something leaves it for next time."""
        self._holding()
        for d in self.root.glob(f"{STAGE_PREFIX}*"):
            if not self._stage_alive(d):
                shutil.rmtree(d, ignore_errors=True)
        for record, datasets in (("traces", TRACE_KEYED), ("runs", RUN_KEYED)):
            live = self._live(record)
            for ds in datasets:
                for part in (self.root / ds).glob(f"{_keyname(ds)}=*"):
                    if part.name not in live:
                        shutil.rmtree(part, ignore_errors=True)
        for part in sorted(set((self.root / "ops").glob("trace_id=*")) | set((self.root / "vmas").glob("trace_id=*"))):
            trace_id = part.name.split("=", 1)[1]
            if not self._one_build(trace_id):
                for ds in ("ops", "vmas"):  # ops first: what names the pair goes first
                    shutil.rmtree(self.partition(ds, trace_id), ignore_errors=True)

    def _place(self, src: str | Path, dataset: str, key: str, point: str | None = None) -> Path:
        """Rename a staged file into its partition (replacing one file: atomic)."""
        self._holding()
        dest = self.partition(dataset, key) / PART
        with writing(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            if point:
                fault_point(point, dest)
        return dest

    def _remove(self, dataset: str, key: str) -> None:
        self._holding()
        part = self.partition(dataset, key)
        with writing(part):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part / PART)  # for a commit record, the one step that un-commits it
            if part.exists():
                shutil.rmtree(part)

    def check_trace(self, trace_id: str, sha256: str | None) -> None:
        """Under the lock: the trace is still the content a command read."""
        self._holding()
        if sha256 is None or self.trace_sha(trace_id) != sha256:
            raise self.gone(trace_id)

    # -- commits ----------------------------------------------------------------------------

    @staticmethod
    def stage_table(table: pa.Table, stage: str, name: str) -> str:
        path = os.path.join(stage, f"{name}.parquet")
        pq.write_table(table, path, compression="zstd")
        return path

    def commit_trace(self, trace_id: str, stage: str) -> None:
        """Place a staged ingest (``events``, ``rejects``, ``traces`` .parquet in
        ``stage``), replacing a trace of that name; the caller has checked, under the
        lock, that it may."""
        with self.lock():
            fault_point("ingest.locked")
            self.drop_trace(trace_id)
            for ds in ("events", "rejects"):
                self._place(os.path.join(stage, f"{ds}.parquet"), ds, trace_id, f"ingest.{ds}_placed")
            self._place(os.path.join(stage, "traces.parquet"), "traces", trace_id, "ingest.committed")

    def _runs_of(self, trace_id: str) -> list[str]:
        out = []
        for f in self.committed_files("runs"):
            with contextlib.suppress(OSError, pa.ArrowException, KeyError):
                if pq.read_table(f, columns=["trace_id"])["trace_id"][0].as_py() == trace_id:
                    out.append(f.parent.name.split("=", 1)[1])
        return out

    def drop_trace(self, trace_id: str) -> None:
        """Remove a trace and the runs replayed from it: commit records first (the runs
        rows, so no run ever names a missing trace, then the traces row), data after."""
        with self.lock():
            runs = self._runs_of(trace_id)
            for i, run_id in enumerate(runs):
                self._remove("runs", run_id)
                if i == 0:
                    fault_point("replace.run_removed")
            fault_point("replace.runs_removed")
            if self.has_trace(trace_id):
                self._remove("traces", trace_id)
                fault_point("replace.record_removed")
            for ds in (d for d in TRACE_KEYED if d != "traces"):
                self._remove(ds, trace_id)
            for run_id in runs:
                for ds in RUN_DATA:
                    self._remove(ds, run_id)
            fault_point("replace.data_removed")

    def write_ops(self, trace_id: str, sha256: str, ops: pa.Table, vmas: pa.Table) -> Path:
        """Place a trace's ops and vmas, built from the content ``sha256``, as one build:
        vmas first, then ops (see the module docstring for what a reader sees)."""
        def stage(ops_path, vmas_path, meta):
            for t, path in ((vmas, vmas_path), (ops, ops_path)):
                pq.write_table(t.replace_schema_metadata({**(t.schema.metadata or {}), **meta}), path, compression="zstd")

        return self.build_ops(trace_id, sha256, stage)[0]

    def build_ops(self, trace_id: str, sha256: str, build):
        """Build a trace's ops and vmas into staging - ``build(ops_path, vmas_path,
        metadata)`` writes the two Parquet files, ``metadata`` (the build's id) in both
        schemas - then place them as one build, vmas first.  Returns (ops path, what
        ``build`` returned)."""
        meta = {BUILD_KEY: uuid.uuid4().hex.encode()}
        with self.staging() as stage:
            files = {name: os.path.join(stage, f"{name}.parquet") for name in ("vmas", "ops")}
            with writing(self.root):
                got = build(files["ops"], files["vmas"], meta)
            fault_point("ops.staged")
            with self.lock():
                self.check_trace(trace_id, sha256)
                self._place(files["vmas"], "vmas", trace_id, "ops.vmas_placed")
                return self._place(files["ops"], "ops", trace_id, "ops.committed"), got

    def write_footprint(self, trace_id: str, sha256: str, rows: pa.Table, keys: list[str]) -> Path:
        """Place a trace's footprint rows (``replay footprint``), computed from the trace
        content ``sha256``.  Rows already there for other values of ``keys`` (model,
        machine) are kept, so footprints of several machines or model lists add up; the
        merge happens under the lock, so two footprint commands never lose each other's."""
        import polars as pl

        with self.staging() as stage:
            new = pl.from_arrow(rows)
            with self.lock():
                self.check_trace(trace_id, sha256)
                old = self.partition("footprint", trace_id) / PART
                if old.exists():
                    kept = pl.read_parquet(old).drop("trace_id", strict=False).join(
                        new.select(keys).unique(), on=keys, how="anti")
                    new = pl.concat([kept, new], how="diagonal_relaxed")
                with writing(self.root):
                    staged = self.stage_table(new.to_arrow(), stage, "footprint")
                fault_point("footprint.staged")
                return self._place(staged, "footprint", trace_id, "footprint.committed")

    def write_run(self, run, stage: str | None = None) -> None:
        """A run's datasets, the ``runs`` row (its commit record) last.  ``stage``: the
        staging directory the run's results were streamed into, if they were."""
        import polars as pl

        from . import __version__
        from .engine import SUMMARY_TYPES

        with contextlib.ExitStack() as cleanup:
            if stage is None:
                stage = cleanup.enter_context(self.staging())
            row = {**run.summary(), **run.params, "tool_version": __version__}
            with writing(self.root):
                files = {"results": run.results_path if run.results is None else
                         self.stage_table(run.results.to_arrow(), stage, "results"),
                         "waits": run.waits_path if run.waits is None else
                         self.stage_table(run.waits.to_arrow(), stage, "waits")}
                for ds, df in (("lock_stats", run.lock_stats), ("line_stats", run.line_stats),
                               ("line_cpu", run.line_cpu),
                               ("runs", pl.DataFrame([row], schema_overrides={
                                   k: t for k, t in SUMMARY_TYPES.items() if k in row}))):
                    files[ds] = self.stage_table(df.to_arrow(), stage, ds)
            fault_point("run.staged")
            with self.lock():
                self.check_trace(run.params["trace_id"], run.params["trace_sha256"])
                for ds in RUN_DATA:
                    self._place(files[ds], ds, run.run_id, f"run.{ds}_placed")
                self._place(files["runs"], "runs", run.run_id, "run.committed")


@contextlib.contextmanager
def atomic_output(dest: str | Path):
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` whole
    (with ordinary permissions), on failure it vanishes.  OS errors name ``dest``."""
    dest = Path(dest)
    with writing(dest):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=dest.suffix, dir=str(dest.parent))
        os.close(fd)
    try:
        with writing(dest):
            yield tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary, not the result
            os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
