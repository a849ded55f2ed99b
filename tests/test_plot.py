"""The plots: what each draws, checked against the results read straight from Parquet
with polars, and the files the CLI writes."""

import math

import numpy as np
import polars as pl
import pytest

from conftest import SAMPLES


@pytest.fixture(scope="module")
def wsp(tmp_path_factory):
    from replay.cli import main

    ws = tmp_path_factory.mktemp("plot") / "ws"
    for name in ("pft-ftrace", "mprotect-race"):
        assert main(["ingest", str(SAMPLES / f"{name}.txt.zst"), "-w", str(ws), "--maps", str(SAMPLES / f"{name}.maps"),
                     "-O", "json"]) == 0
    # two iterations (seeds) of two models at two CPU counts on one trace; one model of
    # them on a second trace
    assert main(["sweep", "--traces", "pft-ftrace", "--models", "mmap_lock,mainline", "--machines", "broadwell-2s",
                 "--cpus", "1,2", "--iterations", "2", "-w", str(ws), "--format", "json"]) == 0
    assert main(["run", "--model", "mainline", "--trace", "mprotect-race", "--machine", "broadwell-2s", "--cpus", "2",
                 "-w", str(ws), "-f", "json"]) == 0
    return ws


def pq(ws, ds):
    return pl.read_parquet(ws / ds / "*" / "*.parquet", hive_partitioning=True)


def run_of(ws, trace, model, cpus, seed=0):
    rs = pq(ws, "runs")
    return rs.filter((pl.col("trace_id") == trace) & (pl.col("model") == model) & (pl.col("cpus") == cpus)
                     & (pl.col("seed") == seed))["run_id"][0]


def hmean(xs):
    return len(xs) / sum(1 / x for x in xs)


def test_throughput_a_line_per_trace_and_model_with_iterations_and_baseline(wsp, cli, tmp_path):
    from replay.queries import run_query
    from replay import plot as P

    res = pq(wsp, "results").join(pq(wsp, "runs").select("run_id", "trace_id", "seed"), on="run_id")
    f = res.filter(pl.col("kind") == "fault")
    # pft's figures: the faults' span, and their on-CPU time (durations less time off the CPU)
    per_run = f.group_by("run_id", "trace_id", "model", "cpus", "seed").agg(
        pl.len().alias("faults"), (pl.col("end_ns") - pl.col("start_ns") - pl.col("sleep_ns")).sum().alias("in_faults"))
    span = f.group_by("run_id").agg((pl.col("end_ns").max() - pl.col("start_ns").min()).alias("span"))
    per_run = per_run.join(span, on="run_id").with_columns(
        (pl.col("faults") / pl.col("span") * 1e9).alias("fps"), (pl.col("faults") / pl.col("in_faults") * 1e9).alias("fpc"))
    tp = run_query(wsp, "throughput", {}).join(pq(wsp, "runs").select("run_id", "seed", "placement", "loop",
                                                                      "fault_service_ns"), on="run_id")
    drawn = P.throughput(tp, tmp_path / "t.png")
    pts = drawn["points"]
    # one line per (trace, model): mainline on two traces is two lines, never merged
    lines = pts.select("trace_id", "model").unique()
    assert lines.height == 3 and pts.filter(pl.col("model") == "mainline")["trace_id"].n_unique() == 2
    assert sorted(drawn["labels"]) == ["mainline · mprotect-race", "mainline · pft-ftrace", "mmap_lock · pft-ftrace"]
    # each point: the Hmean of its iterations (seeds), with their count
    for r in pts.iter_rows(named=True):
        it = per_run.filter((pl.col("trace_id") == r["trace_id"]) & (pl.col("model") == r["model"])
                            & (pl.col("cpus") == r["cpus"]))
        assert r["n"] == it.height == (2 if r["trace_id"] == "pft-ftrace" else 1)
        assert math.isclose(r["fps"], hmean(it["fps"].to_list()), rel_tol=1e-9)
        assert math.isclose(r["fpc"], hmean(it["fpc"].to_list()), rel_tol=1e-9)
    # % vs the baseline (mmap_lock by default) of the same trace and CPU count
    assert drawn["baseline"] == "mmap_lock"
    for r in pts.filter(pl.col("trace_id") == "pft-ftrace").iter_rows(named=True):
        b = pts.filter((pl.col("trace_id") == "pft-ftrace") & (pl.col("model") == "mmap_lock") & (pl.col("cpus") == r["cpus"]))
        assert math.isclose(r["fps_pct"], 100 * (r["fps"] / b["fps"][0] - 1), abs_tol=1e-9)
    assert pts.filter(pl.col("trace_id") == "mprotect-race")["fps_pct"].is_null().all()  # no baseline run there
    assert drawn["xticks"] == [1, 2]  # at the CPU counts measured
    # seeds vary a replay (service-time draws, barrier order): the bars have a width
    two = pts.filter(pl.col("n") == 2)
    assert "identical" not in drawn["note"] and ((two["fps_hi"] - two["fps_lo"]) > 0).all()
    assert P.throughput(tp, tmp_path / "u.png", "mainline")["points"].filter(
        pl.col("model") == "mainline")["fps_pct"].drop_nulls().to_list() == [0.0, 0.0, 0.0]


def test_interval_over_iterations_is_compare_stat(wsp):
    """The error bars are the Student t 95% interval of compare.stat, the mmtests rule."""
    from replay.compare import stat
    from replay.plot import throughput_points

    from replay.queries import run_query

    tp = run_query(wsp, "throughput", {}).join(pq(wsp, "runs").select("run_id", "seed", "placement", "loop",
                                                                      "fault_service_ns"), on="run_id")
    # two different values at one point: the runs at 1 and 2 CPUs, made iterations of one
    one = tp.filter((pl.col("trace_id") == "pft-ftrace") & (pl.col("model") == "mainline") & (pl.col("seed") == 0))
    fake = one.with_columns(pl.lit(1, pl.Int64).alias("cpus"), pl.Series("seed", [0, 1]))
    p = throughput_points(fake)[0].row(0, named=True)
    s = stat(one["faults_per_sec"].to_list(), "Hmean")
    am = sum(one["faults_per_sec"]) / 2
    sd = float(np.std(one["faults_per_sec"].to_numpy(), ddof=1))
    assert p["n"] == 2 and (p["fps"], p["fps_lo"], p["fps_hi"]) == (s.mean, s.lo, s.hi)
    assert math.isclose(s.hi - am, 12.706 * sd / math.sqrt(2), rel_tol=1e-9) and s.lo < s.hi


def test_latency_survival_curve_and_percentile_marks(wsp, tmp_path):
    from replay.queries import run_query
    from replay import plot as P

    rid = run_of(wsp, "mprotect-race", "mainline", 2)
    d = pq(wsp, "results").filter((pl.col("run_id") == rid) & (pl.col("kind") == "fault")).select(
        (pl.col("end_ns") - pl.col("start_ns")).alias("d"))["d"].to_numpy()
    surv = run_query(wsp, "latency_survival", {"run_id": rid}).filter(pl.col("kind") == "fault")
    assert surv["ops"].sum() == len(d)
    for ge, frac in surv.select("ge_ns", "at_least_frac").iter_rows():
        near = np.abs(d / ge - 1) < 1e-9  # a duration on an edge may fall either side of it
        assert (d[~near] >= ge).sum() / len(d) <= frac + near.sum() / len(d) + 1e-12
        assert frac <= ((d >= ge) | near).sum() / len(d) + 1e-12
    marks = run_query(wsp, "latency", {"run_id": rid}).filter(pl.col("kind") == "fault")
    drawn = P.latency_ccdf(surv, marks, {rid: "mainline"}, tmp_path / "l.png")[rid]
    x, y = np.array(drawn["x_us"]), np.array(drawn["y"])
    assert y[0] == 1 and (np.diff(y) <= 0).all() and (np.diff(x) >= 0).all() and y[-1] >= 1 / len(d)
    # every bin edge is a corner of the curve at its exact survival
    for ge, frac in surv.select("ge_ns", "at_least_frac").iter_rows():
        assert any(abs(xx - ge / 1e3) < 1e-12 and abs(yy - frac) < 1e-12 for xx, yy in zip(x, y))
    # p50, p99 and p99.9 marked where that share of faults is slower
    assert [p for _, p in drawn["marks"]] == [0.5, 0.01, 0.001]
    for x_us, p in drawn["marks"]:  # the definition of a quantile, ties included
        assert (d > x_us * 1e3 + 1e-6).mean() <= p + 1 / len(d) and (d >= x_us * 1e3 - 1e-6).mean() >= p - 1 / len(d)


def test_timeline_draws_empty_buckets_as_zero(wsp, tmp_path):
    from replay.queries import run_query
    from replay import plot as P

    rid = run_of(wsp, "mprotect-race", "mainline", 2)
    # buckets narrow enough that some hold no op (the trace's threads pause between bursts)
    tl = run_query(wsp, "timeline", {"run_id": rid, "bucket_ms": "0.05"})
    drawn = P.timeline(tl, {rid: "x"}, tmp_path / "t.png", 0.05)
    v = drawn[rid]
    idx = (tl["bucket_ms"] / 0.05).round().cast(pl.Int64).to_list()
    assert len(v["fallbacks"]) == max(idx) + 1 == len(drawn["edges"]) - 1
    missing = sorted(set(range(max(idx) + 1)) - set(idx))
    assert missing and all(v["fallbacks"][i] == 0 and v["lock_wait_ms"][i] == 0 for i in missing)
    assert list(v["fallbacks"][idx]) == tl["fallbacks"].to_list()
    res = pq(wsp, "results").filter(pl.col("run_id") == rid)
    assert math.isclose(v["lock_wait_ms"].sum(), res["lock_wait_ns"].sum() / 1e6, rel_tol=1e-9)


def test_lockwait_and_lines_heatmaps(wsp, cli, tmp_path):
    from replay.queries import run_query
    from replay import plot as P

    rid = run_of(wsp, "mprotect-race", "mainline", 2)
    res = pq(wsp, "results").filter(pl.col("run_id") == rid)
    cw = run_query(wsp, "cpu_lock_wait", {"run_id": rid, "bucket_ms": "2"})
    grid, cpus = P.lockwait(cw, {rid: {"label": "x", "cpus": 2}}, tmp_path / "w.png", 2.0)[rid]
    per_cpu = res.group_by("sim_cpu").agg((pl.col("lock_wait_ns").sum() / 1e3).alias("us")).sort("sim_cpu")
    assert cpus == per_cpu["sim_cpu"].to_list() and grid.shape[0] == len(cpus) and grid.sum() > 0
    for c, us in per_cpu.iter_rows():
        assert math.isclose(grid[cpus.index(c)].sum(), us, rel_tol=1e-9, abs_tol=1e-9)
    lc_rows = run_query(wsp, "line_cpu", {"run_id": rid})
    lc = pq(wsp, "line_cpu").filter(pl.col("run_id") == rid)
    for count, col in (("hitm", "hitm"), ("all", "transfers")):
        hot = run_query(wsp, "c2c", {"run_id": rid, "top": "5", "display": "tot" if count == "hitm" else "transfers"})
        drawn = P.lines(hot, lc_rows, cw, {"label": "x", "cpus": 2}, tmp_path / f"c-{count}.png", 2.0, count)
        ls = pq(wsp, "line_stats").filter(pl.col("run_id") == rid).join(
            lc.group_by("line").agg((pl.col("lcl_hitm") + pl.col("rmt_hitm")).sum().alias("hitm")), on="line")
        ls = ls.sort([col, "transfers", "line"], descending=[True, True, False]).head(5)
        assert drawn["lines"] == [f"0x{x:x}" for x in ls["line"]]  # the rows: the hottest lines, in order
        assert [f.replace("\n", " ") for f in drawn["fields"]] == [P.short_fields(x) for x in ls["fields"]]
        # a cell: how often that CPU took that line (HITMs, or every transfer); columns by socket, then CPU
        assert drawn["matrix"].shape == (5, len(drawn["matrix_cpus"]))
        assert drawn["matrix_sockets"] == sorted(drawn["matrix_sockets"])
        for i, line in enumerate(ls["line"]):
            for j, c in enumerate(drawn["matrix_cpus"]):
                r = lc.filter((pl.col("line") == line) & (pl.col("cpu") == c))
                want = 0 if r.height == 0 else (r["lcl_hitm"] + r["rmt_hitm"] if count == "hitm" else
                                                 r.select(pl.sum_horizontal("lcl_hitm", "rmt_hitm", "lcl_hit", "rmt_hit",
                                                                            "store_miss", "prefetch")).to_series())[0]
                assert drawn["matrix"][i, j] == want, (count, line, c)
        if count == "all":
            assert (drawn["matrix"].sum(axis=1) == ls["transfers"].to_numpy()).all()
    assert drawn["grid"].sum() == res["line_transfers"].sum()
    for c, n in res.group_by("sim_cpu").agg(pl.col("line_transfers").sum()).iter_rows():
        assert drawn["grid"][drawn["cpus"].index(c)].sum() == n
    for kind, args in (("lockwait", [rid]), ("lines", [rid]), ("latency", [rid]), ("timeline", [rid])):
        dest = tmp_path / f"{kind}.png"
        rc, out, err = cli("plot", kind, *args, "-o", dest, "-w", wsp, "--bucket-ms", "2")
        assert rc == 0, err
        assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_usage_errors(wsp, cli, tmp_path):
    rid = run_of(wsp, "mprotect-race", "mainline", 2)
    other = run_of(wsp, "pft-ftrace", "mainline", 2)
    for args, msg in ((("lines", rid, other), "one run"), (("lockwait",), "needs run ids"),
                      (("timeline", rid, "--bucket-ms", "0"), "--bucket-ms"),
                      (("throughput", "--baseline", "nope"), "--baseline nope"), (("pie",), "unknown plot"),
                      (("lines", rid, "--top", "0"), "--top"), (("lines", rid, "--count", "some"), "--count")):
        rc, _, err = cli("plot", *args, "-o", tmp_path / "x.png", "-w", wsp)
        assert rc == 2 and msg in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "x.png").exists()


def test_throughput_query_is_compare_run_metrics(wsp):
    """One definition of pft's faults/sec and faults/cpu: the throughput query (the plot's)
    gives replay compare's figures (compare.run_metrics: the touch loops' span, on-CPU
    time) for every run."""
    import importlib

    from replay.queries import run_query

    C = importlib.import_module("replay.compare")
    tp = run_query(wsp, "throughput", {})
    res = pq(wsp, "results")
    assert tp.height >= 2
    for r in tp.iter_rows(named=True):
        m = C.run_metrics(res.filter(pl.col("run_id") == r["run_id"]))
        assert math.isclose(r["faults_per_sec"], m["faults_per_sec"], rel_tol=1e-9), r["run_id"]
        assert math.isclose(r["faults_per_cpu_sec"], m["faults_per_cpu"], rel_tol=1e-9), r["run_id"]


def test_cpu_axis_labels_do_not_overlap():
    """Ice Lake's thread list ends 110, 128: a fifth of an octave apart on log2 spacing, their
    labels printed over each other.  The tick stays, the label of the smaller goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from replay.plot import _cpu_axis

    fig, ax = plt.subplots()
    ticks = [1, 4, 7, 12, 21, 30, 48, 79, 110, 128]
    _cpu_axis(ax, ticks)
    fig.canvas.draw()
    assert list(ax.get_xticks()) == ticks
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "7", "12", "21", "30", "48", "79", "", "128"]
    plt.close(fig)


def test_a_point_with_runs_of_two_engine_semantics_is_drawn_from_the_newest(wsp):
    """A workspace that outlived an engine upgrade holds the same run (parameters, seed) at
    two semantics, under two run ids: the point is the newest semantics' runs, not an
    error and not a mean of both."""
    from replay.plot import throughput_points
    from replay.queries import run_query

    tp = run_query(wsp, "throughput", {}).join(pq(wsp, "runs").select("run_id", "seed", "placement", "loop",
                                                                      "fault_service_ns", "semantics"), on="run_id")
    one = tp.filter((pl.col("trace_id") == "pft-ftrace") & (pl.col("model") == "mainline") & (pl.col("seed") == 0)
                    & (pl.col("cpus") == 1))
    assert one.height == 1
    sem = int(one["semantics"][0])
    old = one.with_columns(pl.lit(sem - 1, one["semantics"].dtype).alias("semantics"),
                           (pl.col("faults_per_sec") * 2).alias("faults_per_sec"))
    p = throughput_points(pl.concat([old, one]))[0].row(0, named=True)
    assert p["n"] == 1 and p["fps"] == one["faults_per_sec"][0]

