"""The query library and `replay sql` on real small runs, checked against values
computed independently with polars from the same Parquet files."""

import io
import json
import sys

import polars as pl
import pytest

from conftest import SAMPLES
from replay.queries import QueryError, catalog, run_query, run_sql


@pytest.fixture(scope="module")
def wsq(tmp_path_factory):
    from replay.cli import main

    ws = tmp_path_factory.mktemp("q") / "ws"
    for name in ("pft-ftrace", "mprotect-race"):
        assert main(["ingest", str(SAMPLES / f"{name}.txt.zst"), "-w", str(ws), "--maps", str(SAMPLES / f"{name}.maps"), "-O", "json"]) == 0
    for model in ("v8", "mmap_lock"):
        assert main(["run", "--model", model, "--trace", "mprotect-race", "--machine", "local-2vcpu", "-w", str(ws), "-f", "json"]) == 0
    assert main(["run", "--model", "mainline", "--trace", "pft-ftrace", "--machine", "broadwell-2s", "--cpus", "4", "-w", str(ws), "-f", "json"]) == 0
    assert main(["footprint", "mprotect-race", "--models", "v8,pervma", "-w", str(ws), "-f", "json"]) == 0
    return ws


def pq(ws, ds):
    return pl.read_parquet(ws / ds / "*" / "*.parquet", hive_partitioning=True)


def test_every_query_documents_its_columns_and_runs(wsq):
    cat = catalog()
    assert set(cat) >= {"contention", "lock_contention", "retry_rates", "throughput", "latency", "hot_lines",
                        "observed_fallbacks", "timeline", "footprint"}
    for name, q in cat.items():
        assert q.question and q.needs and q.columns, name
        df = run_query(wsq, name, {})
        assert df.columns == [c for c, _, _ in q.columns], name
        assert df.height > 0, name


def test_contention_matches_lock_stats(wsq):
    ls = pq(wsq, "lock_stats")
    got = run_query(wsq, "contention", {}).filter(pl.col("lock") != "(class)")
    j = got.join(ls, on=["run_id", "lock_class", "lock"])
    assert j.height == ls.height
    assert (j["contentions"] == j["contentions_right"]).all()
    assert ((j["waittime_total_us"] - j["wait_total_ns"] / 1e3).abs() < 1e-6).all()
    assert ((j["holdtime_avg_us"] - j["hold_total_ns"] / 1e3 / j["acquisitions"]).abs() < 1e-6).all()
    cls = run_query(wsq, "contention", {}).filter(pl.col("lock") == "(class)")
    want = ls.group_by("run_id", "lock_class").agg(pl.col("acquisitions").sum())
    assert cls.join(want, on=["run_id", "lock_class"]).select((pl.col("acquisitions") == pl.col("acquisitions_right")).all()).item()


def test_retry_rates_and_throughput_match_results(wsq):
    res = pq(wsq, "results")
    f = res.filter((pl.col("kind") == "fault") & pl.col("outcome").is_not_null())  # tried the VMA lock
    want = f.group_by("run_id").agg(pl.len().alias("faults"), pl.col("fallback").sum().alias("fb"),
                                    (pl.col("outcome") == "abort").sum().alias("ab"), pl.col("attempts").sum().alias("att"))
    every = run_query(wsq, "retry_rates", {}).filter(pl.col("level") == "run")
    got = every.join(want, on="run_id")
    # three runs, and mmap_lock's has no row: none of its faults tries a VMA lock
    assert every.height == got.height == 2 and want.height == 2 and res["run_id"].n_unique() == 3
    assert (got["faults"] == got["faults_right"]).all() and (got["faults_fallback"] == got["fb"]).all()
    assert (got["faults_abort"] == got["ab"]).all() and (got["vma_lock_attempts"] == got["att"]).all()
    assert ((got["fallback_pct_of_faults"] - 100 * got["fb"] / got["faults"]).abs() < 1e-9).all()
    # pft's faults/sec: the faults over their own span (the touch loops)
    span = res.filter(pl.col("kind") == "fault").group_by("run_id").agg(
        ((pl.col("end_ns").max() - pl.col("start_ns").min()) / 1e9).alias("s"), pl.len().alias("n"))
    tp = run_query(wsq, "throughput", {}).join(span, on="run_id")
    assert ((tp["faults_per_sec"] - tp["n"] / tp["s"]).abs() / tp["faults_per_sec"] < 1e-9).all()
    one = run_query(wsq, "throughput", {"run_id": tp["run_id"][0]})
    assert one.height == 1


def test_latency_percentiles(wsq):
    res = pq(wsq, "results").with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("d"))
    got = run_query(wsq, "latency", {}).filter(pl.col("kind") == "fault")
    for r in got.iter_rows(named=True):
        d = res.filter((pl.col("run_id") == r["run_id"]) & (pl.col("kind") == "fault"))["d"]
        assert abs(r["p50_ns"] - d.quantile(0.5, interpolation="linear")) < 1e-6
        assert abs(r["p99_ns"] - d.quantile(0.99, interpolation="linear")) < 1e-6
        assert r["max_ns"] == d.max() and r["ops"] == d.len()


def test_hot_lines_observed_fallbacks_timeline(wsq):
    ls = pq(wsq, "line_stats")
    hot = run_query(wsq, "hot_lines", {"top": "3"})
    for rid in ls["run_id"].unique():
        want = ls.filter(pl.col("run_id") == rid).sort(["transfers", "line"], descending=[True, False]).head(3)
        got = hot.filter(pl.col("run_id") == rid)
        assert got["transfers"].to_list() == want["transfers"].to_list()
        assert got["line"].to_list() == [f"0x{x:x}" for x in want["line"].to_list()]
    ops = pq(wsq, "ops")
    ob = run_query(wsq, "observed_fallbacks", {"trace_id": "mprotect-race", "window_ms": "5"})
    want = ops.filter((pl.col("trace_id") == "mprotect-race") & (pl.col("kind") == "fault") & ~pl.col("kernel"))
    assert ob["observed_fallbacks"].sum() == want["observed_fallback"].sum()
    assert set(ob["window_start_ms"].to_list()) <= {5.0 * k for k in range(100)}
    tl = run_query(wsq, "timeline", {"bucket_ms": "2"})
    res = pq(wsq, "results")
    for rid in res["run_id"].unique():
        r = res.filter(pl.col("run_id") == rid)
        t = tl.filter(pl.col("run_id") == rid)
        assert t["faults"].sum() == r.filter(pl.col("kind") == "fault").height
        assert t["fallbacks"].sum() == r.filter(pl.col("fallback")).height


def _split(waits: pl.DataFrame, b_ms: float, key: str) -> dict:
    """Each lock wait's time in the buckets of b_ms it touches, split at their edges (us),
    by (key, bucket index) - computed here from the waits rows, apart from the SQL."""
    b = b_ms * 1e6
    out: dict = {}
    for w in waits.filter(pl.col("counted_in") == "lock_wait_ns").iter_rows(named=True):
        i = int(w["start_ns"] // b)
        while i * b < w["end_ns"]:
            part = min(w["end_ns"], (i + 1) * b) - max(w["start_ns"], i * b)
            if part > 0:
                out[(w[key], i)] = out.get((w[key], i), 0.0) + part / 1e3
            i += 1
    return out


def test_timeline_puts_each_wait_where_it_happened(wsq):
    # 50 us buckets: narrower than the longest waits, so some span buckets, and shorter
    # than the writers' ops, whose waits come buckets after they started - the per-op
    # total at the op's start bucket (what the query summed before the waits table) gives
    # other figures
    b = 0.05
    waits, res = pq(wsq, "waits"), pq(wsq, "results")
    tl = run_query(wsq, "timeline", {"bucket_ms": str(b)})
    want = _split(waits, b, "run_id")
    got = {(rid, round(m / b)): ms * 1e3 for rid, m, ms in tl.select("run_id", "bucket_ms", "lock_wait_ms").iter_rows() if ms}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in want)
    for rid in res["run_id"].unique():  # every op counted once, every wait's time once
        r, t = res.filter(pl.col("run_id") == rid), tl.filter(pl.col("run_id") == rid)
        assert t["faults"].sum() + t["writers"].sum() == r.height
        assert abs(t["lock_wait_ms"].sum() - r["lock_wait_ns"].sum() / 1e6) < 1e-9
    per_op = (res.with_columns((pl.col("start_ns") // (b * 1e6)).cast(pl.Int64).alias("i"))
              .group_by("run_id", "i").agg((pl.col("lock_wait_ns").sum() / 1e3).alias("us")))
    old = {(rid, i): us for rid, i, us in per_op.iter_rows() if us}
    assert old.keys() != want.keys() or any(abs(old[k] - want[k]) > 1e-3 for k in want)


def test_sql_is_read_only_and_errors_are_one_line(wsq, cli, tmp_path):
    with pytest.raises(QueryError, match="read-only"):
        run_sql(wsq, "CREATE TABLE x AS SELECT 1")
    rc, _, err = cli("sql", "DROP VIEW events", "-w", wsq)
    assert rc == 1 and err.count("\n") == 1 and "read-only" in err
    rc, _, err = cli("sql", "SELECT count(*) FORM results", "-w", wsq)
    assert rc == 1 and err.rstrip().endswith("(line 1, column 22)")  # the caret, as a position
    rc, _, err = cli("sql", "SELECT no_such_column FROM results", "-w", wsq)
    assert rc == 1 and err.startswith("replay: error: SQL:") and "no_such_column" in err and "Traceback" not in err
    rc, out, _ = cli("sql", "SELECT model, count(*) AS n FROM results GROUP BY model ORDER BY model", "-w", wsq, "-f", "json")
    rows = json.loads(out)
    res = pq(wsq, "results")
    assert {r["model"]: r["n"] for r in rows} == dict(res.group_by("model").len().iter_rows())
    rc, out, _ = cli("sql", "SELECT trace_id, events FROM traces ORDER BY trace_id", "-w", wsq, "-f", "csv")
    assert out.splitlines()[0] == "trace_id,events" and out.splitlines()[1].startswith("mprotect-race,")
    dest = tmp_path / "r.parquet"
    rc, _, err = cli("sql", "SELECT * FROM results WHERE kind = 'fault'", "-w", wsq, "-f", "parquet", "-o", dest)
    assert rc == 0 and pl.read_parquet(dest).height == res.filter(pl.col("kind") == "fault").height
    rc, _, err = cli("sql", "SELECT 1", "-w", wsq, "-f", "parquet")
    assert rc == 2 and "needs -o" in err


def test_query_cli_and_shell(wsq, cli, monkeypatch):
    rc, out, _ = cli("query", "--list", "-f", "json")
    assert {q["name"] for q in json.loads(out)} == set(catalog())
    rc, out, _ = cli("query", "contention", "-w", wsq, "-p", "run_id=nope")
    assert rc == 0
    rc, _, err = cli("query", "contention", "-w", wsq, "-p", "colour=red")  # usage errors: exit 2
    assert rc == 2 and "takes no parameter colour" in err
    rc, _, err = cli("query", "nope", "-w", wsq)
    assert rc == 2 and "no query" in err
    rc, _, err = cli("query", "timeline", "-w", wsq, "-p", "bucket_ms=0")
    assert rc == 2 and err == "replay: error: timeline: bucket_ms must be > 0, not 0\n"
    rc, _, err = cli("query", "timeline", "-w", wsq, "-p", "bucket_ms=wide")
    assert rc == 2 and "bucket_ms takes a number, not 'wide'" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(".tables\nSELECT count(*) AS n\nFROM traces;\nSELECT nope;\n.quit\n"))
    rc, out, err = cli("shell", "-w", wsq)
    import re

    assert rc == 0 and "results" in out and re.search(r"^n\n\s*2$", out, re.M)  # .tables, then count(*) = 2 traces
    assert "error:" in err and "nope" in err


def test_compare_across_iterations_like_mmtests(cli, tmp_path):
    from replay.compare import run_metrics, stat

    ws = tmp_path / "ws"
    assert cli("ingest", SAMPLES / "pft-ftrace.txt.zst", "-w", ws, "--maps", SAMPLES / "pft-ftrace.maps")[0] == 0
    its = {}
    for model in ("mmap_lock", "v8"):
        rc, out, err = cli("run", "--model", model, "--trace", "pft-ftrace", "--machine", "local-2vcpu",
                           "--iterations", "3", "-w", ws, "-f", "json")
        assert rc == 0, err
        its[model] = json.loads(out)
        assert [x["seed"] for x in its[model]] == [0, 1, 2] and len({x["faults_per_sec"] for x in its[model]}) == 3
    ids = {m: [x["run_id"] for x in v] for m, v in its.items()}
    rc, out, err = cli("compare", ids["mmap_lock"][0], ids["v8"][0], "-w", ws)  # each run stands for its iterations
    assert rc == 0, err
    lines = out.splitlines()
    assert "iterations per column: 3" in lines[0]
    row = next(ln for ln in lines if ln.startswith("Hmean     faults/sec-2"))
    assert row[:10] == "Hmean     " and row[10:27].rstrip() == "faults/sec-2"  # kind padded to 10, metric to 17

    def st(model, metric, kind):
        return stat([run_metrics(pl.read_parquet(ws / "results" / f"run_id={r}"))[metric] for r in ids[model]], kind)

    sa, sb = st("mmap_lock", "faults_per_sec", "Hmean"), st("v8", "faults_per_sec", "Hmean")
    assert sa.n == sb.n == 3 and f"{sa.mean:.4f}" in row and f"{sb.mean:.4f}" in row  # four decimals
    pct = sb.mean / sa.mean * 100 - 100
    assert f"{pct:.2f}%" in row
    sig = sb.am - sb.half > sa.am + sa.half or sb.am + sb.half < sa.am - sa.half
    assert row.split(f"{sb.mean:.4f}", 1)[1].strip().startswith("*" if sig else "(")
    sd = next(ln for ln in lines if ln.startswith("Stddev    faults/sec-2"))
    assert f"{sa.sd:.4f}" in sd and f"{sb.sd:.4f}" in sd
    cv = next(ln for ln in lines if ln.startswith("CoeffVar  faults/sec-2"))
    assert f"{100 * sa.sd / sa.am:.4f}" in cv
    # lower-is-better metrics have their sign flipped: a shorter mean fault is a gain
    fa, fb = st("mmap_lock", "fault_ns", "Amean"), st("v8", "fault_ns", "Amean")
    lower = next(ln for ln in lines if ln.startswith("Amean     fault-ns-2"))
    assert fa.mean != fb.mean and lower.split()[-1].strip("*()%") == f"{100 - fb.mean / fa.mean * 100:.2f}"
    # two runs of one configuration are the same iterations: no change, never a collapse
    rc, out, _ = cli("compare", ids["v8"][0], ids["v8"][2], "-w", ws)
    same = next(ln for ln in out.splitlines() if ln.startswith("Hmean     faults/sec-2"))
    assert same.count("(   0.00%)") == 2
    rc, _, err = cli("compare", ids["v8"][0], "-w", ws)
    assert rc == 2 and "at least two" in err
    rc, out, err = cli("compare", "--models", "mmap_lock,v8", "--trace", "pft-ftrace", "-w", ws, "-f", "json")
    rows = json.loads(out)
    assert rc == 0 and {r["kind"] for r in rows} == {"Hmean", "Amean", "Stddev", "CoeffVar"}
    assert {r["iterations"] for r in rows if r["metric"] == "faults/sec"} == {3}
    assert {r["label"] for r in rows} == {"mmap_lock", "v8"}
    # mmap_lock's faults never try a VMA lock: its fallback rate has no iteration to average
    assert {r["iterations"] for r in rows if r["metric"] == "fallback-pct" and r["label"] == "mmap_lock"} == {0}


def test_report_and_plots(wsq, cli, tmp_path):
    rs = pl.read_parquet(wsq / "runs" / "*" / "*.parquet", hive_partitioning=True)
    rid = rs["run_id"][0]
    rc, out, err = cli("report", rid, "-w", wsq)
    assert rc == 0 and "lock_stat" in out and "latency" in out and "hottest cache lines" in out
    ids = rs["run_id"].to_list()[:2]
    for kind, args in (("throughput", []), ("latency", ids), ("timeline", ids)):
        dest = tmp_path / f"{kind}.png"
        rc, out, err = cli("plot", kind, *args, "-o", dest, "-w", wsq)
        assert rc == 0, err
        assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and dest.stat().st_size > 10_000
    svg = tmp_path / "t.svg"
    assert cli("plot", "throughput", "-o", svg, "-w", wsq)[0] == 0 and svg.read_text().lstrip().startswith("<?xml")
    rc, _, err = cli("plot", "pie", "-o", tmp_path / "x.png", "-w", wsq)
    assert rc == 2 and "unknown plot" in err
    rc, _, err = cli("plot", "throughput", "-o", tmp_path / "x.gif", "-w", wsq)
    assert rc == 1 and ".png" in err


def _contentions(wsq) -> pl.DataFrame:
    """The rw_semaphores' contentions, from the waits rows: an op's waits on one lock
    added up (the queries' rule, computed here with polars)."""
    return (pq(wsq, "waits").filter(pl.col("lock_class").is_in(["mmap_lock", "vma_lock"]))
            .group_by("run_id", "mm", "op_id", "lock_class", "lock")
            .agg(pl.col("wait_ns").sum(), pl.col("mode").min(), pl.col("tid").min()))


def test_perf_lock_contention_view_and_column_comments(wsq):
    res = pq(wsq, "results").filter(pl.col("lock_wait_ns") > 0)
    c = _contentions(wsq)
    got = run_query(wsq, "lock_contention", {})
    assert got["contended"].sum() == c.height
    assert abs(got["total_wait_ns"].sum() - c["wait_ns"].sum()) < 1e-3
    assert abs(got["max_wait_ns"].max() - c["wait_ns"].max()) < 1e-9
    # per wait, not per op: the ops' totals also hold their spins on sem->wait_lock (and,
    # for v8, the writers' waits for vm_refcnt's readers), which perf lists apart or not
    # at all - so the per-op figures the query used before are not these
    assert c["wait_ns"].sum() < res["lock_wait_ns"].sum() - 1e3
    assert set(got["type"]) <= {"rwsem:R", "rwsem:W"} and got["caller"].null_count() == 0
    for typ, mode in (("rwsem:R", "read"), ("rwsem:W", "write")):  # the type is the wait's mode
        assert got.filter(pl.col("type") == typ)["contended"].sum() == c.filter(pl.col("mode") == mode).height
    faults = res.filter(pl.col("kind") == "fault")  # faults block only in down_read(mmap_lock): rwsem:R
    fc = c.join(faults.select("run_id", "mm", "op_id"), on=["run_id", "mm", "op_id"])
    mine = got.filter(pl.col("caller").is_in(["lock_mm_and_find_vma", "do_user_addr_fault"]))
    assert mine["contended"].sum() == fc.height and set(mine["type"]) == {"rwsem:R"}
    assert set(fc["lock_class"]) == {"mmap_lock"}
    by_task = run_query(wsq, "lock_contention", {"by": "task"})
    assert by_task["contended"].sum() == c.height and by_task["comm"].null_count() == 0
    assert set(by_task["pid"]) == set(c["tid"])
    by_lock = run_query(wsq, "lock_contention", {"by": "lock"})
    assert by_lock["contended"].sum() == c.height
    assert set(by_lock["symbol"]) == {"&mm->mmap_lock"} and by_lock["address"].null_count() == 0
    from replay.queries import connect

    con = connect(wsq)
    undocumented = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal AND table_name IN "
        "('events','traces','rejects','ops','vmas','results','lock_stats','line_stats','line_cpu','runs') AND comment IS NULL").fetchall()
    con.close()
    assert undocumented == []  # every view's every column carries a comment


def test_lock_stat_waits_are_the_waits_tables(wsq):
    # a rw_semaphore class's wait times: its contentions from the waits rows (asleep and
    # spinning on the owner), where lock_stats' own wait_total has the sleeps only; its
    # contention points: those contentions by call site, under the class waited on
    c = _contentions(wsq)
    ls = pq(wsq, "lock_stats")
    got = run_query(wsq, "lock_stat", {})
    cls = got.filter((pl.col("section") == "class") & (pl.col("class_name") == "&mm->mmap_lock"))
    mm = c.filter(pl.col("lock_class") == "mmap_lock")
    for row in cls.iter_rows(named=True):
        mine = mm.filter(pl.col("run_id") == row["run_id"])
        assert row["waittime_total_us"] == pytest.approx(mine["wait_ns"].sum() / 1e3, rel=1e-12)
        if mine.height:
            assert row["waittime_max_us"] == pytest.approx(mine["wait_ns"].max() / 1e3, rel=1e-12)
            assert row["waittime_min_us"] == pytest.approx(mine["wait_ns"].min() / 1e3, rel=1e-12)
        else:  # no wait (pft-ftrace's mainline run): none made up
            assert (row["waittime_max_us"], row["waittime_min_us"]) == (0, None)
        own = ls.filter((pl.col("run_id") == row["run_id"]) & (pl.col("lock_class") == "mmap_lock"))
        assert row["contentions"] == own["contentions"].sum()
        pts = got.filter((pl.col("section") == "contention_point") & (pl.col("run_id") == row["run_id"])
                         & (pl.col("class_name") == "&mm->mmap_lock"))
        assert pts["points"].sum() == mine.height
    # the writers' spins on the owner are in: lock_stats' sleeps alone come short
    spun = pq(wsq, "waits").filter((pl.col("lock_class") == "mmap_lock") & (pl.col("how") == "spin"))
    assert spun.height > 0
    assert cls["waittime_total_us"].sum() > ls.filter(pl.col("lock_class") == "mmap_lock")["wait_total_ns"].sum() / 1e3
