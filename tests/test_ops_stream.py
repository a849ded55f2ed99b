"""The streaming op builder: memory bounded by its buffers, not by the trace, and the same
ops whatever the batch and row-group sizes (which decide how many ops are written before
they are complete and put in place by the second pass)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Build ops from an events file in a child process with small buffers (rows per batch and
# per row group), print the child's own peak RSS.
CHILD = """
import json, resource, sys
import replay.opstream as S
S.BATCH = S.ROW_GROUP = int(sys.argv[5])
from replay.ops import build_ops_file
rep = build_ops_file(sys.argv[1], "t", open(sys.argv[2]).read(), False, sys.argv[3], sys.argv[4])
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "unpaired": rep.unpaired_enter}))
"""


def _trace(tmp_path, pages: int) -> tuple[Path, Path]:
    """A pft trace of 56 threads x ``pages`` faults (replay synth's generator) through the real ingester."""
    from replay.ingesting import run_ingest
    from replay.synth import pft
    from replay.workspace import Workspace

    tmp_path.mkdir(parents=True, exist_ok=True)
    text = tmp_path / f"pft-{pages}.txt"
    with open(text, "w") as f:
        _, maps = pft(56, pages, out=f)
    ws = tmp_path / "ws"
    run_ingest(str(text), f"p{pages}", "perf-script", ws, True, False, maps_snapshot=maps)
    text.unlink()
    (tmp_path / "maps").write_text(maps)
    return Workspace(ws).partition("events", f"p{pages}") / "part-0.parquet", tmp_path / "maps"


def _build(events: Path, maps: Path, out: Path, rows: int) -> int:
    """Peak RSS (MB) of a child building ops for ``events``, measured by wait4 for that child alone."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(events), str(maps), str(out / "ops.parquet"),
                          str(out / "vmas.parquet"), str(rows)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, ru = os.wait4(p.pid, 0)
    out_text, err = p.stdout.read(), p.stderr.read()
    assert os.waitstatus_to_exitcode(status) == 0, err.decode()
    assert json.loads(out_text)["maxrss_kb"] <= ru.ru_maxrss  # wait4 sees the child to its end
    return ru.ru_maxrss / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_trace(tmp_path):
    # 8x the events, about the same peak: a builder that held the trace (the old one took
    # ~900 bytes per op) would need ~1.6 GB more for the bigger one
    small, maps = _trace(tmp_path / "a", 4_500)
    big, _ = _trace(tmp_path / "b", 36_000)
    assert pq.ParquetFile(big).metadata.num_rows > 2_000_000
    for d in ("oa", "ob"):
        (tmp_path / d).mkdir()
    rss_small = _build(small, maps, tmp_path / "oa", 1 << 14)
    rss_big = _build(big, maps, tmp_path / "ob", 1 << 14)
    print(f"peak RSS {rss_small:.0f} MB, {rss_big:.0f} MB")
    assert rss_big - rss_small < 150, (rss_small, rss_big)
    assert rss_big < 1024
    ops = pq.ParquetFile(tmp_path / "ob" / "ops.parquet")
    assert ops.metadata.num_rows == 56 * 36_000 + 2  # every fault, the mmap and the munmap
    assert ops.metadata.num_row_groups > 50  # written as it went


def test_the_same_ops_whatever_the_buffer_sizes(tmp_path):
    # 2,000 faults of 56 threads in row groups of 64 ops: the main thread's mmap stays
    # incomplete (its window lasts until its munmap) and so do each thread's faults
    # between row groups - all written before complete and put right in the second pass
    events, maps = _trace(tmp_path, 40)
    outs = []
    for rows in (64, 1 << 20):
        d = tmp_path / f"o{rows}"
        d.mkdir()
        _build(events, maps, d, rows)
        outs.append(pl.from_arrow(pq.read_table(d / "ops.parquet")))
        assert pq.ParquetFile(d / "ops.parquet").metadata.num_row_groups == (-(-outs[-1].height // rows))
    small, whole = outs
    assert small.equals(whole)
    mmap = whole.filter(pl.col("kind") == "mmap").row(0, named=True)
    assert mmap["op_id"] == 0 and mmap["hold_ns"] == 500  # synth's mmap holds mmap_lock 500 ns
    assert whole.filter(pl.col("kind") == "fault")["think_ns"].null_count() == 56  # each thread's first op


def _sample(tmp_path, name: str) -> tuple[Path, str]:
    """A bundled sample recording through the real ingester: (its events file, its maps snapshot)."""
    from replay.ingesting import run_ingest
    from replay.workspace import Workspace

    samples = ROOT / "sample_traces"
    maps = (samples / f"{name}.maps").read_text()
    run_ingest(str(samples / f"{name}.txt.zst"), name, "auto", tmp_path / "ws", False, False, maps_snapshot=maps)
    return Workspace(tmp_path / "ws").partition("events", name) / "part-0.parquet", maps


@pytest.mark.parametrize("name", ["mprotect-race", "jvm-alloc"])
def test_row_groups_final_when_made_go_straight_into_the_file(tmp_path, monkeypatch, name):
    # In row groups of 64 ops these recordings' first row groups are final when made (no
    # op in them incomplete, no fault outside a known VMA) and go straight into the ops
    # file; from the first that is not, the rest go through the spill and the patch, whose
    # think times carry on from each thread's last op before it (jvm-alloc has faults in
    # inferred VMAs too).  The ops are those of one row group holding the whole trace.
    import replay.opstream as S
    from replay.ops import build_ops_file

    events, maps = _sample(tmp_path, name)
    first_patched = []

    class Spy(S._Patch):
        def __init__(self, b):
            first_patched.append(b.patch_from[0])
            super().__init__(b)

    monkeypatch.setattr(S, "_Patch", Spy)
    outs = []
    for rows in (64, 1 << 20):
        monkeypatch.setattr(S, "BATCH", rows)
        monkeypatch.setattr(S, "ROW_GROUP", rows)
        d = tmp_path / f"o{rows}"
        d.mkdir()
        build_ops_file(events, name, maps, False, str(d / "ops.parquet"), str(d / "vmas.parquet"))
        assert sorted(os.listdir(d)) == ["ops.parquet", "vmas.parquet"]  # the spill is gone
        outs.append(pq.read_table(d / "ops.parquet"))
    assert first_patched[0] > 0  # a final prefix, then the spill
    assert outs[0].num_rows > 20_000 and outs[0].equals(outs[1])
    assert outs[0].schema.equals(outs[1].schema, check_metadata=True)


def test_a_failed_write_fails_the_build(tmp_path, monkeypatch):
    # the ops are written on a thread of their own: its error is the build's - the last
    # write's too, which nothing is queued behind - and the spill goes with it
    import replay.opstream as S
    from replay.ops import build_ops_file

    events, maps = _sample(tmp_path, "mprotect-race")
    monkeypatch.setattr(S, "BATCH", 4096)
    monkeypatch.setattr(S, "ROW_GROUP", 4096)
    real = pq.ParquetWriter.write_table
    calls, fail_at = [], [0]

    def write_table(self, table, *a, **k):
        if threading.current_thread().name != "replay-ops-writer":  # the vmas file
            return real(self, table, *a, **k)
        calls.append(table.num_rows)
        if len(calls) == fail_at[0]:
            raise OSError(28, "No space left on device")
        return real(self, table, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    build_ops_file(events, "m", maps, False, str(tmp_path / "ops.parquet"), str(tmp_path / "vmas.parquet"))
    n = len(calls)
    assert n > 3
    for k in (2, n):
        calls.clear()
        fail_at[0] = k
        with pytest.raises(OSError, match="No space left"):
            build_ops_file(events, "m", maps, False, str(tmp_path / "ops.parquet"), str(tmp_path / "vmas.parquet"))
        assert not (tmp_path / "ops.parquet.spill").exists()


def test_survey_tallies_are_a_group_by():
    # the survey counts (thread, pid) and (thread, mm) keys in a compiled hash table that
    # grows as it fills: against a plain group_by (the oracle), over batches, with many
    # more keys than its first capacity and events that name no thread
    import numpy as np
    import pyarrow as pa
    from replay.opstream import NO_TID, _Tally

    rng = np.random.default_rng(7)
    t = _Tally(capacity=8)
    parts, row0 = [], 0
    for n in (50, 1, 3000, 700):
        k1 = rng.integers(1, 400, n).astype(np.int64)
        k1[rng.random(n) < 0.05] = NO_TID
        mm = rng.integers(0, 3, n).astype(np.uint64) * np.uint64(1 << 62) + np.uint64(0x1000)  # the top bit set too
        sel = rng.random(n) < 0.8
        t.add(k1, mm.view(np.int64), sel, row0)  # as the survey passes an mm
        parts.append(pl.DataFrame({"k1": k1, "mm": mm, "row": np.arange(row0, row0 + n)}).filter(pl.Series(sel)))
        row0 += n
    want = (pl.concat(parts).with_columns(pl.when(pl.col("k1") == NO_TID).then(None).otherwise(pl.col("k1"))
                                          .cast(pl.Int32).alias("tid"))
            .group_by("tid", "mm").agg(pl.len().cast(pl.Int64).alias("n"), pl.col("row").min().alias("first")))
    got = t.frame("mm", pa.uint64(), True)
    assert got.height > 8 * 50  # grown many times
    assert got.schema == {"tid": pl.Int32, "mm": pl.UInt64, "n": pl.Int64, "first": pl.Int64}
    assert got.sort("tid", "mm").equals(want.sort("tid", "mm"))


def test_event_columns_read_from_their_buffers_are_as_fill_null_gives():
    """``opstream._np_ok`` reads an integer column with some nulls from its own buffers:
    the values at nulls must be the fill whatever the buffer holds there (Arrow leaves a
    null's slot undefined), in a slice or a one-chunk ChunkedArray too."""
    import numpy as np
    import pyarrow as pa

    import replay.opstream as S

    data = np.array([7, -3, 1 << 40, 5, 9, 11, 13, 2], np.int64)  # every slot holds a value
    valid = np.array([1, 0, 1, 0, 0, 1, 1, 0], np.bool_)
    arr = pa.Array.from_buffers(pa.int64(), len(data), [pa.py_buffer(np.packbits(valid, bitorder="little")),
                                                        pa.py_buffer(data)], null_count=int((~valid).sum()))
    for col in (arr, arr.slice(1), arr.slice(3, 4), pa.chunked_array([arr.slice(2)])):
        want = [0 if v is None else v for v in col.to_pylist()]
        for dt in (np.int64, np.uint64):
            v, ok = S._np_ok(col, 0, dt, np.ones(len(col), np.bool_))
            assert v.dtype == dt and v.tolist() == np.array(want, dt).tolist()
            assert ok.tolist() == [x is not None for x in col.to_pylist()]
