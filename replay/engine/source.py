"""Where a replay reads its ops from: a polars frame, or an ops Parquet file read in
batches of columns (so memory does not grow with the trace)."""

from __future__ import annotations

import os

import numpy as np


class OpsSource:
    """One mm's ops (or all of them), read in batches of columns.

    ``ops`` is a polars DataFrame/LazyFrame, or the path of an ops Parquet file.  A file
    is read by pyarrow a row batch at a time, only the columns asked for, and each
    column lands in a preallocated compact array - so a 50 M-op trace never sits in
    memory whole.  (pyarrow, not polars' own Parquet reader: polars 2.1 sometimes
    decodes the dictionary-encoded ``kind`` column wrongly in files with several row
    groups.)"""

    BATCH = 1 << 20

    def __init__(self, ops, mm: str | None = None):
        import polars as pl

        self.mm = mm
        if isinstance(ops, (str, os.PathLike)):
            import pyarrow.parquet as pq

            self.path = str(ops)
            import pyarrow as pa

            # the system allocator hands freed batches back to the OS; pyarrow's default
            # pool keeps them, and a 50 M-op load would hold a second copy of its columns
            pa.set_memory_pool(pa.system_memory_pool())
            self.pf = pq.ParquetFile(self.path, read_dictionary=["mm", "kind", "lock_mode"])
            self.names = set(self.pf.schema_arrow.names)
            self.lf = None
        else:
            self.path = None
            lf = ops.lazy()
            self.names = set(lf.collect_schema().names())
            self.lf = lf.filter(pl.col("mm") == mm) if mm is not None and "mm" in self.names else lf
        self._n = None
        self._cache: dict = {}
        self._order: dict = {}

    def batches(self, cols):
        """polars DataFrames of ``cols`` (those the ops have), in op order."""
        import polars as pl

        cols = [c for c in dict.fromkeys(cols) if c in self.names]
        if self.path is None:
            yield self.lf.select(cols).collect() if cols else self.lf.select(pl.len()).collect()
            return
        extra = ["mm"] if self.mm is not None and "mm" not in cols else []
        for b in self.pf.iter_batches(batch_size=self.BATCH, columns=(cols + extra) or ["op_id"], use_threads=True):
            df = pl.from_arrow(b)
            if self.mm is not None:
                df = df.filter(pl.col("mm").cast(pl.Utf8) == self.mm)
            yield df.drop(extra) if extra else df

    def expr(self, name, dtype=None):
        import polars as pl

        return pl.col(name) if name in self.names else pl.lit(None, dtype or pl.Int64).alias(name)

    @property
    def n(self) -> int:
        if self._n is None:
            if self.path is not None and self.mm is None:
                self._n = self.pf.metadata.num_rows
            else:
                self._n = sum(df.height for df in self.batches(["op_id"]))
        return self._n

    def col(self, expr, dtype) -> np.ndarray:
        """One expression over every op, as a numpy array of ``dtype``."""
        roots = expr.meta.root_names()
        out = np.empty(self.n, dtype)
        pos = 0
        for df in self.batches(roots):
            v = df.select(expr).to_series().to_numpy()
            out[pos:pos + len(v)] = v
            pos += len(v)
        trim_heap()
        return out

    def column(self, name: str, dtype, fill=0) -> np.ndarray:
        """One plain column (nulls as ``fill``) as a numpy array of ``dtype``.  From a
        file this goes pyarrow -> numpy a batch at a time, without polars."""
        if self.path is None or self.mm is not None or name not in self.names:
            return self.col(self.expr(name).fill_null(fill), dtype)
        out = np.empty(self.n, dtype)
        for pos, v, _ in self.column_chunks(name, fill, valid=False):
            out[pos:pos + len(v)] = v
        trim_heap()  # the decoded batches' buffers: glibc keeps them otherwise (~100 MB a column at 50 M ops)
        return out

    def column_chunks(self, name: str, fill=0, valid: bool = True):
        """One plain column a batch at a time: (its first op's index, its values with
        nulls as ``fill`` - numpy, the column's own type -, which are not null or None
        where all are), for whoever packs the values narrower than the column
        (narrow.py).  From a file: pyarrow -> numpy, without polars."""
        if name not in self.names:
            if self.n:
                yield 0, np.full(self.n, fill), None
            return
        if self.path is None or self.mm is not None:
            pos = 0
            for df in self.batches([name]):
                c = df[name]
                ok = c.is_not_null().to_numpy() if valid and c.null_count() else None
                v = c.fill_null(fill).to_numpy()
                yield pos, v, ok
                pos += len(v)
            return
        import pyarrow.compute as pc

        for pos, b in self._file_batches([name]):
            a = b.column(0)
            ok = a.is_valid().to_numpy(zero_copy_only=False) if valid and a.null_count else None
            if a.null_count:
                a = pc.fill_null(a, fill)
            yield pos, a.to_numpy(zero_copy_only=False), ok

    def notnull(self, name: str) -> np.ndarray:
        if self.path is None or self.mm is not None or name not in self.names:
            return self.col(self.expr(name).is_not_null(), bool)
        out = np.empty(self.n, bool)
        pos = 0
        for b in self.pf.iter_batches(batch_size=self.BATCH, columns=[name], use_threads=True):
            a = b.column(0)
            v = a.is_valid().to_numpy(zero_copy_only=False)
            out[pos:pos + len(v)] = v
            pos += len(v)
        trim_heap()
        return out

    def frame(self, roots, fn):
        """fn(batch DataFrame with a global row index ``_j``) for every batch, concatenated:
        for the few rows (writers) or small aggregates the loader needs whole."""
        import polars as pl

        parts, pos = [], 0
        for df in self.batches(roots):
            parts.append(fn(df.with_row_index("_j", offset=pos)))
            pos += df.height
        return pl.concat(parts, how="vertical_relaxed") if parts else None


    def _file_batches(self, cols):
        """pyarrow record batches of a file source (no mm filter), with their offsets."""
        pos = 0
        for b in self.pf.iter_batches(batch_size=self.BATCH, columns=cols, use_threads=True):
            yield pos, b
            pos += b.num_rows

    @staticmethod
    def _codes(arr, value: str) -> np.ndarray:
        """Rows of a (dictionary-encoded) string column equal to value, as a bool array."""
        import pyarrow as pa

        if pa.types.is_dictionary(arr.type):
            d = arr.dictionary.to_pylist()
            if value not in d:
                return np.zeros(len(arr), bool)
            idx = arr.indices.to_numpy(zero_copy_only=False)
            hit = idx == d.index(value)
            if arr.null_count:
                hit &= arr.is_valid().to_numpy(zero_copy_only=False)
            return hit
        return np.asarray(arr.to_pylist(), dtype=object) == value

    def prog(self) -> np.ndarray:
        """Which program each op runs: 0 user fault, 1 kernel fault, 2 writer (a write-
        locking syscall, or exit), 3 a read-mode madvise (MADV_DONTNEED, ...), -1 none - int8."""
        import polars as pl

        if self.path is None or self.mm is not None:
            c = self.expr
            kind = c("kind", pl.Utf8).cast(pl.Utf8)
            e = (pl.when(kind == "fault").then(pl.when(c("kernel", pl.Boolean).fill_null(False)).then(1).otherwise(0))
                 .when((c("lock_mode", pl.Utf8).cast(pl.Utf8) == "write").fill_null(False) | (kind == "exit")).then(2)
                 .when((kind == "madvise") & (c("lock_mode", pl.Utf8).cast(pl.Utf8) == "read").fill_null(False)).then(3)
                 .otherwise(-1).cast(pl.Int8))
            return self.col(e, np.int8)
        cols = [x for x in ("kind", "kernel", "lock_mode") if x in self.names]
        out = np.empty(self.n, np.int8)
        for pos, b in self._file_batches(cols):
            out[pos:pos + b.num_rows] = self._prog_batch(dict(zip(b.schema.names, b.columns)), b.num_rows)
        return out

    def writers(self, fn):
        """fn(polars frame of the non-fault ops, with their row index ``_j``): the few
        rows the loader needs whole.  From a file only those rows reach polars."""
        import polars as pl

        roots = ["kind", "lock_mode", "hold_ns", "read_hold_ns", "advice", "vma_id", "vma_ids", "vmas_created",
                 "vmas_freed", "vmas_successor", "start_ns", "end_ns", "range_vmas", "range_start",
                 "range_end", "vmas_parent", "address", "length"]
        if self.path is None or self.mm is not None:
            return self.frame(roots, lambda df: fn(df.filter(pl.col("kind").cast(pl.Utf8) != "fault")))
        import pyarrow as pa

        cols = [x for x in roots if x in self.names]
        parts = []
        pos = 0
        # a row group at a time: its kind column first, the other columns (lists among them)
        # only for a row group that has a writer - most of a big trace's have none
        for i in range(self.pf.metadata.num_row_groups):
            kind = self.pf.read_row_group(i, columns=["kind"]).column(0)
            m = len(kind)
            keep = ~np.concatenate([self._codes(c, "fault") for c in kind.chunks]) if m else np.zeros(0, bool)
            if keep.any():
                rows = np.flatnonzero(keep)
                sub = self.pf.read_row_group(i, columns=cols).filter(pa.array(keep))
                parts.append(fn(pl.from_arrow(sub).with_columns(pl.Series("_j", rows + pos, dtype=pl.UInt32))))
            pos += m
        trim_heap()
        if parts:
            return pl.concat(parts, how="vertical_relaxed")
        # no writer at all (a faults-only trace): fn still selects every column it reads
        empty = pl.from_arrow(self.pf.schema_arrow.empty_table().select(cols))
        return fn(empty.with_columns(pl.Series("_j", [], dtype=pl.UInt32)))

    def prefetch(self) -> None:
        """Read the small per-op columns the loader needs (program, whether start and end
        are known, whether op_id runs in order) in one pass over the file; the
        big ones (vma_id, tid, think_ns) are read one at a time by column(), so they are
        never all in memory at once.  Only for a file source without an mm filter."""
        if self.path is None or self.mm is not None:
            return
        n = self.pf.metadata.num_rows
        self._n = n
        want = {"op_id", "start_ns", "end_ns", "kind", "kernel", "lock_mode"}
        cols = [c for c in self.pf.schema_arrow.names if c in want]
        prog = np.empty(n, np.int8)
        start_ok = np.zeros(n, bool)
        end_ok = np.zeros(n, bool)
        order = {k: [True, True, None, None] for k in ("op_id",)}  # increasing, arange, first, last
        pos = 0
        for b in self.pf.iter_batches(batch_size=self.BATCH, columns=cols, use_threads=True):
            get = dict(zip(b.schema.names, b.columns))
            m = b.num_rows
            sl = slice(pos, pos + m)
            prog[sl] = self._prog_batch(get, m)
            if "start_ns" in get:
                start_ok[sl] = get["start_ns"].is_valid().to_numpy(zero_copy_only=False)
            if "end_ns" in get:
                end_ok[sl] = get["end_ns"].is_valid().to_numpy(zero_copy_only=False)
            for k, o in order.items():
                if k not in get or get[k].null_count:
                    o[0] = o[1] = False
                    continue
                a = get[k].to_numpy(zero_copy_only=False)
                if not m:
                    continue
                if o[3] is not None and a[0] <= o[3]:
                    o[0] = False
                if o[3] is not None and a[0] != o[3] + 1:
                    o[1] = False
                if m > 1:
                    d = np.diff(a)
                    o[0] = o[0] and bool((d > 0).all())
                    o[1] = o[1] and bool((d == 1).all())
                if o[2] is None:
                    o[2] = int(a[0])
                o[3] = int(a[-1])
            pos += m
            del get, b
        self._cache = {"prog": prog, "start_ns": start_ok, "end_ns": end_ok}
        self._order = order
        trim_heap()

    def order(self, name: str):
        """(increasing, first value if it runs first, first+1, ... else None) for op_id;
        None when unknown (then read the column)."""
        o = self._order.get(name)
        if o is None:
            return None
        return o[0], (o[2] if o[1] else None)

    def take(self, name: str, default):
        """A prefetched array (handed over: the source forgets it), or default()."""
        a = self._cache.pop(name, None)
        return a if a is not None else default()

    def _prog_batch(self, get, m) -> np.ndarray:
        fault = self._codes(get["kind"], "fault")
        if "kernel" in get:
            k = get["kernel"]
            kern = np.asarray(k.fill_null(False).to_numpy(zero_copy_only=False) if k.null_count
                              else k.to_numpy(zero_copy_only=False), bool)
        else:
            kern = np.zeros(m, bool)
        writer = self._codes(get["kind"], "exit")
        madvise = np.zeros(m, bool)
        if "lock_mode" in get:
            writer |= self._codes(get["lock_mode"], "write")
            madvise = self._codes(get["kind"], "madvise") & self._codes(get["lock_mode"], "read")
        return np.where(fault, kern.astype(np.int8), np.where(writer, np.int8(2),
                                                              np.where(madvise, np.int8(3), np.int8(-1))))

    def mms(self) -> list[str]:
        """The mms in order of first appearance."""
        import polars as pl

        seen: dict = {}
        for df in self.batches(["mm"]):
            for m in df["mm"].cast(pl.Utf8).unique(maintain_order=True).to_list():
                seen.setdefault(m, None)
        return list(seen)

    def collect(self, cols=None):
        """The ops whole (small traces; tests)."""
        import polars as pl

        parts = list(self.batches(cols or sorted(self.names)))
        return pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()


def trim_heap() -> None:
    """Give the C heap's free memory back to the OS (glibc keeps what the Parquet
    reader's many small buffers freed: hundreds of MB after a 50 M-row pass)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
