"""Time order: on one CPU, and within one thread, a trace's time never goes backwards.

``perf script`` prints events sorted by timestamp (perf's ordered events) and ftrace
merges its per-CPU buffers by timestamp, so an event earlier than the previous event
on its CPU or its thread was delivered late (perf's "N out of order events" warning)
or the text was edited afterwards.  Ingest keeps the events as given and counts these
steps back; the op builder (``replay/ops.py``) orders events by timestamp.

The check runs in ingest's ordered stage, so it is one compiled pass per batch: each
key's latest timestamp lives in an open-addressing table carried across batches.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit


@njit(cache=True, nogil=True)
def _scan(key, ts, start, back, tab_key, tab_last, tab_used, n_used):
    """From row ``start``: mark in ``back`` the rows earlier than the previous row with
    their key, recording each key's latest time.  Returns (rows done, keys in the
    table); stops early when the table is half full (the caller grows it)."""
    mask = np.uint64(len(tab_key) - 1)
    for i in range(start, len(key)):
        k = key[i]
        h = (np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20) & mask
        while tab_used[h] and tab_key[h] != k:
            h = (h + np.uint64(1)) & mask
        if tab_used[h]:
            if ts[i] < tab_last[h]:
                back[i] = True
        else:
            if 2 * (n_used + 1) > len(tab_key):
                return i, n_used
            tab_used[h] = True
            tab_key[h] = k
            n_used += 1
        tab_last[h] = ts[i]
    return len(key), n_used


class _Latest:
    """Key -> its latest timestamp, across batches."""

    def __init__(self, capacity: int = 1 << 10):
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.key = np.zeros(capacity, np.int64)
        self.last = np.zeros(capacity, np.int64)
        self.used = np.zeros(capacity, np.bool_)
        self.n = 0

    def steps_back(self, key: np.ndarray, ts: np.ndarray) -> np.ndarray:
        key, ts = key.astype(np.int64, copy=False), ts.astype(np.int64, copy=False)
        back = np.zeros(len(key), np.bool_)
        pos = 0
        while True:
            pos, self.n = _scan(key, ts, pos, back, self.key, self.last, self.used, self.n)
            if pos == len(key):
                return back
            self._grow()

    def _grow(self) -> None:
        keys, last = self.key[self.used], self.last[self.used]
        self._alloc(len(self.key) * 4)
        _, self.n = _scan(keys, last, 0, np.zeros(len(keys), np.bool_), self.key, self.last, self.used, 0)


class TimeOrder:
    """Counts, across batches in input order, the events whose timestamp is earlier
    than the previous event's on the same CPU or in the same thread."""

    KEEP = 5

    def __init__(self) -> None:
        self.count = 0
        self.first: list[int] = []  # seq (input line / sample) of the first few
        self._cpu = _Latest()
        self._tid = _Latest()

    def feed(self, seq: np.ndarray, ts: np.ndarray, cpu: np.ndarray, tid: np.ndarray) -> np.ndarray:
        """One batch (numpy arrays; cpu < 0 where unknown); returns which stepped back."""
        back = self._tid.steps_back(tid, ts)
        known = cpu >= 0
        if known.all():
            back |= self._cpu.steps_back(cpu, ts)
        elif known.any():
            back[known] |= self._cpu.steps_back(cpu[known], ts[known])
        hit = np.flatnonzero(back)
        self.count += len(hit)
        if len(self.first) < self.KEEP and len(hit):
            self.first.extend(np.sort(seq[hit])[: self.KEEP - len(self.first)].tolist())
        return back

    def feed_table(self, ev: pa.Table) -> None:
        """An events batch (the events schema); rows without a timestamp are skipped."""
        if not ev.num_rows:
            return

        def col(name, fill):
            return pc.fill_null(ev.column(name), fill).to_numpy(zero_copy_only=False)

        ts_known = ev.column("ts_ns").is_valid().to_numpy(zero_copy_only=False)
        sel = (lambda a: a) if ts_known.all() else (lambda a: a[ts_known])
        self.feed(sel(col("seq", 0)), sel(col("ts_ns", 0)), sel(col("cpu", -1)), sel(col("tid", -1)))
