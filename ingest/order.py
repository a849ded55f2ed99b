"""Time order: on one CPU, and within one thread, a trace's time never goes backwards.

``perf script`` prints events sorted by timestamp (perf's ordered events) and ftrace
merges its per-CPU buffers by timestamp, so an event earlier than the previous event
on its CPU or its thread was delivered late (perf's "N out of order events" warning)
or the text was edited afterwards.  Ingest keeps the events as given and counts these
steps back; the op builder (``replay/ops.py``) orders events by timestamp.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _steps_back(key: np.ndarray, ts: np.ndarray, last: dict) -> np.ndarray:
    """Which events are earlier than the previous event with the same key.  ``last``
    maps each key to the timestamp of its latest event in earlier batches; it is
    replaced by the same for this batch too."""
    carried = np.fromiter(last.keys(), np.int64, len(last))
    k = np.concatenate([carried, key.astype(np.int64)])
    t = np.concatenate([np.fromiter(last.values(), np.int64, len(last)), ts.astype(np.int64)])
    order = np.argsort(k, kind="stable")  # within a key: the carried value, then input order
    ks, tsorted = k[order], t[order]
    same = np.zeros(len(k), bool)
    same[1:] = ks[1:] == ks[:-1]
    back_sorted = np.zeros(len(k), bool)
    back_sorted[1:] = same[1:] & (tsorted[1:] < tsorted[:-1])
    back = np.empty(len(k), bool)
    back[order] = back_sorted
    ends = np.flatnonzero(np.append(~same[1:], True))
    last.clear()
    last.update(zip(ks[ends].tolist(), tsorted[ends].tolist()))
    return back[len(carried):]


class TimeOrder:
    """Counts, across batches in input order, the events whose timestamp is earlier
    than the previous event's on the same CPU or in the same thread."""

    KEEP = 5

    def __init__(self) -> None:
        self.count = 0
        self.first: list[int] = []  # seq (input line / sample) of the first few
        self._cpu: dict = {}
        self._tid: dict = {}

    def feed(self, seq: np.ndarray, ts: np.ndarray, cpu: np.ndarray, tid: np.ndarray) -> np.ndarray:
        """One batch (numpy arrays; cpu < 0 where unknown); returns which stepped back."""
        n = len(seq)
        back = np.zeros(n, bool)
        known = cpu >= 0
        if known.any():
            back[known] = _steps_back(cpu[known], ts[known], self._cpu)
        back |= _steps_back(tid, ts, self._tid)
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
