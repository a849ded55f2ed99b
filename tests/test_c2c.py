"""Transfers per cache line and receiving CPU (the engine's line_cpu counts), perf c2c's
classes of them, and ``replay query c2c``, which prints them as perf c2c report does."""

import json

import numpy as np
import polars as pl
import pytest

from conftest import SAMPLES
from replay.engine import coherence as C
from replay.engine import load as L
from replay.machines import load_machine
from replay.models import get_model

BDW = load_machine("broadwell-2s")  # CPUs 0-13 socket 0, 14-27 socket 1; adjacent-line prefetch on
KIND = {k: i for i, k in enumerate(C.RX_NAMES)}


def _state():
    ops = pl.DataFrame({"op_id": [0, 1], "tid": [1, 2], "mm": ["pid:1"] * 2, "kind": ["fault"] * 2,
                        "vma_id": [1, 1], "kernel": [False, False], "think_ns": [0, 0]})
    return L.load(get_model("v8"), BDW, 4, ops, "spread", False, None, 64)[0]


def _S(st):
    """The state record the coherence functions take (compiled: the SIM array's one record)."""
    return st.S[0] if hasattr(st.S, "dtype") else st.S


def _received(st, n):
    """line n's transfers into each CPU, by kind: {cpu: {kind: count}} (nonzero only)."""
    per = st["line_cpu"].reshape(-1, BDW.ncpus, C.RX_KINDS)[n]
    return {c: {k: int(per[c, i]) for k, i in KIND.items() if per[c, i]} for c in np.flatnonzero(per.any(axis=1))}


def test_two_cpus_alternating_atomics_count_each_transfer_on_the_receiver():
    """CPU 0 (socket 0) and CPU 14 (socket 1) take turns at an xadd on one line, k each:
    CPU 0's first fetches it from the LLC, every later one takes it Modified from the
    other socket - a remote HITM, counted on the CPU that took the line."""
    st = _state()
    S, ln = _S(st), st["ln"]
    n = int(st["cfg"]["mm_count"][0])
    k, t = 5, 0.0
    for _ in range(k):
        for c in (0, 14):
            s, cost = C.coh_write(S, n, c, t, True, True)
            t = s + cost
    assert int(ln["transfers"][n]) == 2 * k
    assert _received(st, n) == {0: {"lcl_hit": 1, "rmt_hitm": k - 1}, 14: {"rmt_hitm": k}}
    # each first fetch by a CPU brought the 128-byte buddy along, as a prefetch into that CPU
    assert _received(st, n ^ 1) == {0: {"prefetch": 1}, 14: {"prefetch": 1}}
    assert int(ln["transfers"][n ^ 1]) == 2
    assert st["line_cpu"].sum() == ln["transfers"].sum()


def test_loads_stores_and_prefetchw_by_where_the_line_was():
    st = _state()
    S, ln = _S(st), st["ln"]
    n = int(st["cfg"]["mm_count"][0]) + 2  # a line and buddy nobody has touched
    C.coh_write(S, n, 0, 0.0, False, True)  # CPU 0's store fetches it: a store miss
    C.coh_read(S, n, 1, 100.0)  # CPU 1, same socket, loads it from CPU 0's Modified copy: a local HITM
    C.coh_read(S, n, 14, 200.0)  # CPU 14: only socket 0 holds it, Shared: a remote hit
    C.coh_read(S, n, 15, 300.0)  # CPU 15: CPU 14 on its socket has a copy: an LLC (local) hit
    C.coh_read(S, n, 15, 400.0)  # held: no transfer
    C.coh_write(S, n, 14, 500.0, True, True)  # an upgrade of a held line: invalidations, no transfer
    C.coh_read(S, n, 0, 600.0)  # CPU 0 loads it back from CPU 14's Modified copy: a remote HITM
    assert C.coh_prefetchw(S, n, 2, 700.0)[0]  # CPU 2's prefetchw takes it: a prefetch
    assert _received(st, n) == {0: {"store_miss": 1, "rmt_hitm": 1}, 1: {"lcl_hitm": 1}, 14: {"rmt_hit": 1},
                                15: {"lcl_hit": 1}, 2: {"prefetch": 1}}
    assert int(ln["transfers"][n]) == 6 == sum(sum(v.values()) for v in _received(st, n).values())


@pytest.fixture(scope="module")
def wsc(tmp_path_factory):
    from replay.cli import main

    ws = tmp_path_factory.mktemp("c2c") / "ws"
    assert main(["ingest", str(SAMPLES / "mprotect-race.txt.zst"), "-w", str(ws), "--maps",
                 str(SAMPLES / "mprotect-race.maps"), "-O", "json"]) == 0
    assert main(["run", "--model", "v8", "--trace", "mprotect-race", "--machine", "broadwell-2s", "--cpus", "4",
                 "-w", str(ws), "-f", "json"]) == 0
    return ws


def pq(ws, ds):
    return pl.read_parquet(ws / ds / "*" / "*.parquet", hive_partitioning=True)


def test_a_runs_line_cpu_sums_to_its_line_stats(wsc):
    lc, ls = pq(wsc, "line_cpu"), pq(wsc, "line_stats")
    kinds = list(C.RX_NAMES)
    assert set(kinds) <= set(lc.columns)
    per = lc.group_by("run_id", "mm", "line").agg(pl.sum_horizontal(kinds).sum().alias("s"), pl.len().alias("cpus"))
    both = ls.filter(pl.col("transfers") > 0).join(per, on=["run_id", "mm", "line"], how="left")
    assert both.height == ls.filter(pl.col("transfers") > 0).height > 3
    assert (both["s"] == both["transfers"]).all()
    runs = pq(wsc, "runs")
    assert set(lc["cpu"]) <= {0, 1, 14, 15} and runs["cpus"][0] == 4  # spread: the CPUs the threads ran on
    assert (lc["socket"] == (lc["cpu"] // 14) % 2).all()
    assert lc.select(pl.sum_horizontal(kinds).min()).item() > 0  # only CPUs that took the line have a row


def test_c2c_query_columns_and_counts(wsc, cli):
    from replay.queries import catalog, run_query

    rid = pq(wsc, "runs")["run_id"][0]
    got = run_query(wsc, "c2c", {"run_id": rid, "top": "6"})
    assert got.columns == [c for c, _, _ in catalog()["c2c"].columns]
    assert got["idx"].to_list() == list(range(6))
    lc = pq(wsc, "line_cpu").with_columns(pl.format("0x{}", pl.col("line").map_elements(
        lambda x: f"{x:x}", return_dtype=pl.Utf8)).alias("hex"))
    for r in got.iter_rows(named=True):
        mine = lc.filter(pl.col("hex") == r["line"])
        for k in ("lcl_hitm", "rmt_hitm", "lcl_hit", "rmt_hit", "store_miss", "prefetch"):
            assert r[k] == mine[k].sum(), (r["line"], k)
        assert r["hitm"] == r["lcl_hitm"] + r["rmt_hitm"] and r["cpu_cnt"] == mine.height
        # perf -N's Node{cpu list}: sockets in order, each with its CPUs as ranges
        want = " ".join(f"{s}{{{','.join(_ranges(sorted(g['cpu'].to_list())))}}}"
                        for (s,), g in sorted(mine.group_by("socket"), key=lambda kv: kv[0]))
        assert r["nodes"] == want
        assert all(o.split(" ", 1)[1] in r["fields"] for o in r["offsets"].split(", "))
    # sorted on all HITMs (perf c2c's default, -d tot), percentages of the run's HITMs
    assert got["hitm"].to_list() == sorted(got["hitm"].to_list(), reverse=True)
    everything = run_query(wsc, "c2c", {"run_id": rid, "top": "100000"})
    assert abs(everything["pct"].sum() - 100) < 1e-9
    assert everything["pct"][0] == pytest.approx(100 * got["hitm"][0] / everything["hitm"].sum())
    rmt = run_query(wsc, "c2c", {"run_id": rid, "display": "rmt"})
    assert rmt["rmt_hitm"].to_list() == sorted(rmt["rmt_hitm"].to_list(), reverse=True)
    # the mmap_lock count line: mmap_lock.count at its offset in v8's mm_struct
    off = get_model("v8").layout.mm.fields["mmap_lock.count"]
    mm0 = everything.filter(pl.col("fields").str.contains("mmap_lock.count"))
    assert mm0["line"].to_list() == [f"0x{L.MM_BASE + off // 64 * 64:x}"]
    assert f"0x{off % 64:02x} mm_struct.mmap_lock.count" in mm0["offsets"][0].split(", ")
    # perf's layout, only the columns counted, and the words for what is not
    rc, out, err = cli("query", "c2c", "-p", f"run_id={rid}", "-p", "top=3", "-w", wsc)
    assert rc == 0, err
    text = out.splitlines()
    assert "Shared Data Cache Line Table" in text[1]
    head = "\n".join(text[:8])
    for h in ("Load Hitm", "LclHitm", "RmtHitm", "L1Miss", "LclHit", "RmtHit", "Tot", "Node{cpu list}"):
        assert h in head, h
    assert "records" not in head and "no Total records" in out
    rows = [ln for ln in text if ln.startswith("  ") and ln.split()[0].isdigit()]
    assert [ln.split()[1] for ln in rows] == got["line"].head(3).to_list()
    assert rows[0].split()[-1] == got["nodes"][0].split()[-1]
    rc, out, err = cli("query", "c2c", "-p", f"run_id={rid}", "-p", "display=nope", "-w", wsc)
    assert rc == 2 and "display" in err
    rc, out, err = cli("query", "c2c", "-p", f"run_id={rid}", "-f", "json", "-w", wsc)
    assert rc == 0 and json.loads(out)[0]["line"] == got["line"][0]


def _ranges(cpus):
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return out


def test_c2c_on_a_run_from_before_line_cpu_says_so(wsc, cli, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(wsc, old)
    rid = pq(wsc, "runs")["run_id"][0]
    # a second run, as an older engine wrote it: no line_cpu partition, no line_stats offsets
    for ds in ("results", "lock_stats", "line_stats", "runs"):  # the commit record last
        df = pl.read_parquet(old / ds / f"run_id={rid}" / "part-0.parquet").drop("offsets", strict=False)
        if "run_id" in df.columns:
            df = df.with_columns(pl.lit("older").alias("run_id"))
        (old / ds / "run_id=older").mkdir()
        df.write_parquet(old / ds / "run_id=older" / "part-0.parquet")
    rc, out, err = cli("query", "c2c", "-p", "run_id=older", "-w", old)
    assert rc == 0, err
    assert "replayed before the engine counted transfers per CPU" in out
    rc, out, err = cli("plot", "lines", "older", "-o", tmp_path / "x.png", "-w", old)
    assert rc == 1 and "replayed before" in err and not (tmp_path / "x.png").exists()
