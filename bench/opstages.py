#!/usr/bin/env python3
"""Where the op builder's time goes: thread CPU time of each stage of one build.

    python bench/opstages.py TRACE [-w WORKSPACE] [--warm TRACE2]

Builds TRACE's ops (``replay.ops.build_ops_file``, the path ``replay ops`` takes) into a
temporary directory, after a first build of ``--warm`` (default pft-2t, which must be in
the workspace too) so that numba's one-time start-up (its type registries, the cached
machine code) is not counted, and prints per thread the CPU time spent in each stage.
Stages nest (``_write`` includes ``_ops_slice`` and ``_think``; ``table`` includes
``make_table``); ``_spill_batch`` and ``_unspill`` are the spill's two ends (a row group
written before it is final); the rest of the
process's CPU is pyarrow's own threads decoding the events.  CPU time rather than wall
time because our machine is shared: wall time there depends on the other tenants.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("-w", "--workspace", default=os.environ.get("REPLAY_WORKSPACE", "replay-data"))
    ap.add_argument("--warm", default="pft-2t")
    a = ap.parse_args()
    import pyarrow.parquet as pq

    import replay.opstream as S
    from replay.ops import build_ops_file
    from replay.workspace import PART, Workspace

    ws = Workspace(a.workspace)
    spent: dict = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()

    def timed(owner, name: str, label: str | None = None) -> None:
        f = getattr(owner, name, None)
        if f is None:  # (an older op builder, timed for comparison)
            return

        @functools.wraps(f)
        def g(*args, **kw):
            t = time.thread_time()
            try:
                return f(*args, **kw)
            finally:
                key = (threading.current_thread().name, label or name)
                spent[key] += time.thread_time() - t
                calls[key] += 1

        setattr(owner, name, g)

    for name in ("Survey", "attribute", "_advance", "_ops_slice", "_think", "_spill_batch", "_unspill"):
        timed(S, name)
    for name in ("_batch", "_write", "_apply", "table", "make_table", "vmas"):
        timed(S.Builder, name)
    timed(S._Patch, "__call__", "_Patch")
    timed(pq.ParquetWriter, "write_table", "Parquet write")

    def build(trace: str, out: str) -> None:
        snap = ws.read("traces", trace).column("maps_snapshot")[0].as_py()
        build_ops_file(ws.partition("events", trace) / PART, trace, snap, False, f"{out}/ops.parquet",
                       f"{out}/vmas.parquet")

    with tempfile.TemporaryDirectory() as out:
        build(a.warm, out)
        spent.clear()
        calls.clear()
        c, t, m = time.process_time(), time.perf_counter(), time.thread_time()
        build(a.trace, out)
        c, t, m = time.process_time() - c, time.perf_counter() - t, time.thread_time() - m
    rows = pq.ParquetFile(ws.partition("events", a.trace) / PART).metadata.num_rows
    print(f"{a.trace}: {rows:,} events; process CPU {c:.2f} s (main thread {m:.2f} s), wall {t:.2f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    for (th, name), v in sorted(spent.items(), key=lambda x: -x[1]):
        print(f"  {th[:18]:18} {name:14} {v:7.3f} s  ({calls[th, name]} calls)")


if __name__ == "__main__":
    main()
