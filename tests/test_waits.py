"""The waits table: one row per lock wait of an op (replay/engine/waits.py).

Each op's waits of one ``counted_in`` add up, exactly, to that column of its results row
(``lock_wait_ns``, ``resource_wait_ns``): the engine records a wait at the statement that
adds it to the op's total, so a blocking path that forgot its record makes an op's sum
come short.  The toys below make every kind of wait happen (asleep on an rwsem for read
and for write, a writer spinning on the owner, a spin on sem->wait_lock, a writer
waiting for vm_refcnt's readers to drain, a fault-path spinlock), and the test checks
that they all did, so none is left out of the check."""

import dataclasses

import polars as pl
import pytest

from engine_harness import SLOW, Replay, mk
from replay.engine import WAITS_SCHEMA, Service
from replay.machines import load_machine

FULL = load_machine("broadwell-2s")  # with its [fault_path]: zone->lock, lru_lock, the rss counter
PROFILE = Service(1000.0, "profile broadwell-2s", None, 0.0)  # the fault path runs (engine.service_for)
ZERO = dataclasses.replace(SLOW, latency_ns={k: 0.0 for k in SLOW.latency_ns})  # every access free: times by hand


def contended(nthreads=12, rounds=30):
    """Threads faulting on three VMAs, every fourth thread an mprotect now and then."""
    rows = []
    for i in range(rounds):
        for t in range(nthreads):
            if t % 4 == 0 and i % 5 == 0:
                rows.append((t, "mprotect", [1 + i % 3], 500, 20_000))
            else:
                rows.append((t, "fault", 1 + (i + t) % 3, 200, None))
    return mk(rows)


def sums(waits: list[dict], col: str) -> dict:
    """Per op, its waits of ``col`` added up in the order they were recorded - the order
    the engine added them to the op's total, so the float sums are the same."""
    acc: dict = {}
    for w in waits:
        if w["counted_in"] == col:
            acc[w["op_id"]] = acc.get(w["op_id"], 0.0) + w["wait_ns"]
    return acc


def check_adds_up(results: list[dict], waits: list[dict]) -> None:
    row = {r["op_id"]: r for r in results}
    for col in ("lock_wait_ns", "resource_wait_ns"):
        got = sums(waits, col)
        wrong = [(j, r[col], got.get(j, 0.0)) for j, r in row.items() if (r[col] or 0.0) != got.get(j, 0.0)]
        assert not wrong, f"{col}: ops whose waits do not add up (op, results, waits): {wrong[:5]}"
    per_op: dict = {}
    for w in waits:
        r = row[w["op_id"]]
        assert (w["tid"], w["sim_cpu"]) == (r["tid"], r["sim_cpu"]), w
        assert r["start_ns"] <= w["start_ns"] < w["end_ns"] <= r["end_ns"], (w, r)
        assert w["wait_ns"] == w["end_ns"] - w["start_ns"]
        per_op.setdefault(w["op_id"], []).append(w)
    for ws in per_op.values():  # one thread waits for one thing at a time
        ws = sorted(ws, key=lambda w: w["start_ns"])
        assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(ws, ws[1:])), ws


@pytest.mark.parametrize("model", ["mmap_lock", "pervma", "inline-rwsem", "v7", "v8", "mainline"])
def test_each_ops_waits_add_up_to_its_results(model):
    r = Replay(model, FULL, 8, contended(), service=PROFILE)
    res = r.run()
    assert r.waits and sum(x["lock_wait_ns"] for x in res) > 0
    check_adds_up(res, r.waits)
    assert set(r.waits[0]) == set(WAITS_SCHEMA)


def test_every_kind_of_wait_is_recorded():
    """The check above covers every recording site: each kind happens in the toys."""
    seen = set()
    for model in ("mmap_lock", "pervma", "v8"):
        r = Replay(model, FULL, 8, contended(), service=PROFILE)
        r.run()
        seen |= {(w["lock_class"], w["mode"], w["how"]) for w in r.waits}
    want = {("mmap_lock", "read", "sleep"), ("mmap_lock", "write", "sleep"),  # rwsem_down_*_slowpath()
            ("mmap_lock", "write", "spin"), ("vma_lock", "write", "spin"),  # rwsem_optimistic_spin()
            ("vma_lock", "write", "sleep"),
            ("mmap_lock.wait_lock", None, "spin"),  # queued_spin_lock_slowpath() on sem->wait_lock
            ("vm_refcnt", "write", "sleep"),  # __vma_enter_locked()'s rcuwait for the readers
            ("zone->lock", None, "spin")}  # rmqueue_bulk()'s spin_lock(&zone->lock)
    assert want <= seen, want - seen


def test_a_fault_behind_a_writer_waits_exactly_the_writers_hold():
    """By hand, every memory access free: the writer takes mmap_lock at 0 and holds it
    50 us; the fault comes at 1 us, down_read() finds it write-locked and sleeps; the
    writer's up_write() -> rwsem_wake() -> wake_up_q() wakes it at 50 us (the first
    wakee at once; the waker then pays the try_to_wake_up(), 1 us: the writer ends at
    51 us).  One wait: mmap_lock for read, asleep, 1 us -> 50 us."""
    rows = mk([(1, "mprotect", [1], 0, 50_000), (2, "fault", 1, 1000, 0)])
    for model in ("mmap_lock", "v8"):  # v8's fault finds the VMA write-locked and falls back to mmap_lock
        r = Replay(model, ZERO, 2, rows)
        res = {x["op_id"]: x for x in r.run()}
        assert res[0]["end_ns"] == 51_000
        [w] = r.waits
        assert {k: w[k] for k in ("op_id", "tid", "sim_cpu", "lock_class", "lock", "mode", "how", "counted_in")} == {
            "op_id": 1, "tid": 2, "sim_cpu": res[1]["sim_cpu"], "lock_class": "mmap_lock", "lock": "mm",
            "mode": "read", "how": "sleep", "counted_in": "lock_wait_ns"}
        assert (w["start_ns"], w["end_ns"], w["wait_ns"]) == (1000.0, 50_000.0, 49_000.0) == (
            res[1]["start_ns"], 50_000.0, res[1]["lock_wait_ns"])


def test_a_writer_waits_for_the_readers_vm_refcnt_to_drain():
    """v8 by hand: the fault at 0 holds vm_refcnt through its 100 us service; the
    mprotect at 1 us takes mmap_lock, and vma_start_write() adds VMA_LOCK_OFFSET and
    sleeps on mm->vma_writer_wait until the fault's vma_refcount_put() at 100 us."""
    rows = mk([(2, "fault", 1, 0, 0), (1, "mprotect", [1], 1000, 50_000)])
    r = Replay("v8", ZERO, 2, rows)
    res = {x["op_id"]: x for x in r.run()}
    assert res[0]["end_ns"] == 100_000
    [w] = r.waits
    assert (w["op_id"], w["lock_class"], w["lock"], w["mode"], w["how"]) == (1, "vm_refcnt", "vma:1", "write", "sleep")
    assert (w["start_ns"], w["end_ns"]) == (1000.0, 100_000.0) and w["wait_ns"] == res[1]["lock_wait_ns"]


def test_the_waits_buffer_stays_bounded_and_the_chunks_change_nothing():
    """A waits chunk far smaller than the run's waits: the run stops and empties it as
    often as needed, and the results and waits are the same as in one chunk."""
    rows = contended()
    whole = Replay("mmap_lock", FULL, 8, rows, service=PROFILE)
    res = whole.run()
    small = Replay("mmap_lock", FULL, 8, rows, service=PROFILE, chunk=7)
    assert small.state["wt"].shape[0] < len(whole.waits) / 2
    assert small.run() == res and small.waits == whole.waits


def test_a_run_writes_its_waits_table(tmp_path, cli):
    """replay run commits the waits with the run; they add up to its results, and the
    SQL view has them."""
    ws = tmp_path / "ws"
    rc, out, err = cli("run", "--model", "v8", "--trace", "mprotect-race", "--cpus", "4", "-w", ws, "-f", "json")
    assert rc == 0, err
    rid = pl.read_parquet(ws / "runs" / "*" / "*.parquet")["run_id"][0]
    waits = pl.read_parquet(ws / "waits" / f"run_id={rid}" / "part-0.parquet")
    results = pl.read_parquet(ws / "results" / f"run_id={rid}" / "part-0.parquet")
    assert waits.height and set(waits.columns) == set(WAITS_SCHEMA) | {"run_id"}
    check_adds_up(results.to_dicts(), waits.to_dicts())
    assert results["lock_wait_ns"].sum() > 0
    rc, out, err = cli("sql", f"SELECT count(*) AS n FROM waits WHERE run_id = '{rid}'", "-w", ws, "-f", "csv")
    assert rc == 0 and out.split() == ["n", str(waits.height)], err

    # the heatmap's query: each wait's time in the buckets it touches, split at their edges
    from replay.queries import run_query

    b = 0.05  # ms: narrower than the longest waits, so some span buckets
    assert (waits["wait_ns"] > 2 * b * 1e6).any()
    want: dict = {}
    for w in waits.filter(pl.col("counted_in") == "lock_wait_ns").iter_rows(named=True):
        i = int(w["start_ns"] // (b * 1e6))
        while i * b * 1e6 < w["end_ns"]:
            part = min(w["end_ns"], (i + 1) * b * 1e6) - max(w["start_ns"], i * b * 1e6)
            if part > 0:
                want[(w["sim_cpu"], i)] = want.get((w["sim_cpu"], i), 0.0) + part / 1e3
            i += 1
    cw = run_query(ws, "cpu_lock_wait", {"run_id": rid, "bucket_ms": str(b)})
    got = {(c, round(m / b)): us for c, m, us in cw.select("sim_cpu", "bucket_ms", "lock_wait_us").iter_rows() if us}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in want)
    assert cw["ops"].sum() == results.height
    # the longest waits, with their ops
    top = run_query(ws, "waits", {"run_id": rid, "top": "3"})
    longest = waits.sort("wait_ns", descending=True).head(3)
    assert top["op_id"].to_list() == longest["op_id"].to_list()
    assert top["wait_us"].to_list() == pytest.approx((longest["wait_ns"] / 1e3).to_list(), rel=1e-12)
