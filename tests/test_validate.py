"""replay validate and the benchmark workloads of replay synth.

The synthetic traces go through the real ingester and op builder; validation replays
them with the real engine and reads the runs back with DuckDB/Parquet.  The published
tables are the shared development set (docs/validation/published.json)."""

import importlib
import json

import polars as pl
import pytest

from replay import validate as V
from replay.workspace import Workspace

ICE = "punit-2023-02-15-pft-single-vma"
PERVMA_TABLE = "punit-2023-02-28-pft-vma-per-thread"


def _ops(cli, ws, name):
    rc, out, err = cli("ops", name, "-w", ws, "-f", "json")
    assert rc == 0, err
    return json.loads(out), pl.read_parquet(ws / "ops" / f"trace_id={name}"), pl.read_parquet(ws / "vmas" / f"trace_id={name}")


def test_page_fault2_is_write_faults_on_a_private_file_mapping_per_thread(cli, ws):
    rc, _, err = cli("synth", "page_fault2", "--threads", "3", "--pages", "5", "--iterations", "2", "-w", ws)
    assert rc == 0, err
    s, ops, vmas = _ops(cli, ws, "page_fault2-t3")
    assert s["kinds"] == {"fault": 3 * 5 * 2, "mmap": 6, "munmap": 6}
    ev = pl.read_parquet(ws / "events" / "trace_id=page_fault2-t3")
    pf = ev.filter(pl.col("event") == "page_fault_user")
    assert pf["error_code"].unique().to_list() == [6]  # user write to a not-present page
    faults = ops.filter(pl.col("kind") == "fault")
    hit = vmas.filter(pl.col("vma_id").is_in(faults["vma_id"].unique().implode()))
    # tests/page_fault2.c: mmap(MAP_PRIVATE, fd) - file-backed, private, writable; one per thread per round
    assert hit["anon"].to_list() == [False] * 6 and set(hit["prot"]) == {"rw-p"}
    assert (hit["end"].cast(pl.Int64) - hit["start"].cast(pl.Int64)).unique().to_list() == [5 * 4096]
    per = faults.group_by("tid").agg(pl.col("vma_id").n_unique().alias("n"), pl.len().alias("f"))
    assert per["n"].to_list() == [2] * 3 and per["f"].to_list() == [10] * 3
    assert faults.group_by("vma_id").agg(pl.col("address").n_unique())["address"].to_list() == [5] * 6  # each page once
    assert faults["mm"].unique().to_list() == ["pid:1000"]  # threads: one address space


def test_page_fault3_is_shared_and_page_fault1_anonymous(cli, ws):
    for w in ("page_fault3", "page_fault1"):
        assert cli("synth", w, "--threads", "2", "--pages", "3", "-w", ws)[0] == 0
    _, ops, vmas = _ops(cli, ws, "page_fault3-t2")
    hit = vmas.filter(pl.col("vma_id").is_in(ops.filter(pl.col("kind") == "fault")["vma_id"].unique().implode()))
    assert set(hit["prot"]) == {"rw-s"} and not any(hit["anon"])
    _, ops, vmas = _ops(cli, ws, "page_fault1-t2")
    hit = vmas.filter(pl.col("vma_id").is_in(ops.filter(pl.col("kind") == "fault")["vma_id"].unique().implode()))
    assert set(hit["prot"]) == {"rw-p"} and all(hit["anon"])


def test_process_mode_gives_each_process_its_own_address_space(cli, ws):
    rc, _, err = cli("synth", "page_fault1", "--threads", "3", "--pages", "4", "--mode", "process", "-w", ws)
    assert rc == 0 and "process mode: each process is its own address space" in err
    s, ops, _ = _ops(cli, ws, "page_fault1-p3")
    f = ops.filter(pl.col("kind") == "fault")
    assert sorted(f["mm"].unique().to_list()) == ["pid:1001", "pid:1002", "pid:1003"]
    # each process's faults land in its own mapping, at the same address in every mm
    assert f.group_by("mm").agg(pl.col("vma_id").n_unique())["vma_id"].to_list() == [1, 1, 1]
    assert f["address"].n_unique() == 4
    rc, out, err = cli("run", "--model", "mainline", "--trace", "page_fault1-p3", "--machine", "local-2vcpu",
                       "-w", ws, "-f", "json")
    assert rc == 0, err and json.loads(out)["faults"] == 12
    rc, _, err = cli("synth", "pft", "--mode", "process", "-w", ws)
    assert rc == 2 and err.count("\n") == 1 and "thread mode only" in err


def test_writer_only_benchmarks_are_refused_by_run_in_one_line(cli, ws):
    for w, kinds in (("brk1", {"brk": 1 + 2 * 3}), ("brk2", {"brk": 1 + 1 + 2 * 3}), ("mmap1", {"mmap": 3, "munmap": 3})):
        rc, _, err = cli("synth", w, "--threads", "1", "--iterations", "3", "-w", ws)
        assert rc == 0 and "faults nothing" in err
        s, _, _ = _ops(cli, ws, f"{w}-t1")
        assert s["kinds"] == kinds, w
    rc, _, err = cli("run", "--model", "v8", "--trace", "brk1-t1", "-w", ws)
    assert rc == 1 and err.count("\n") == 1 and "no page faults to replay" in err


def test_pft_multimap_gives_each_thread_its_own_vma_with_holes(cli, ws):
    assert cli("synth", "pft-multimap", "--threads", "4", "--pages", "8", "--iterations", "2", "-w", ws)[0] == 0
    s, ops, vmas = _ops(cli, ws, "pft-multimap-t4")
    # the first iteration's VMAs come from the snapshot (pft measures after its setup), the
    # second's from pft.c alloc_test_memory()'s calls: mmap, munmap 1 page, per test munmap + mmap
    assert s["kinds"] == {"fault": 64, "mmap": 1 + 4, "munmap": 1 + (1 + 4 + 1)}
    f = ops.filter(pl.col("kind") == "fault").sort("op_id")
    for it, part in enumerate((f.head(32), f.tail(32))):
        per = part.group_by("tid").agg(pl.col("vma_id").unique())
        ids = [x[0] for x in per["vma_id"].to_list()]
        assert all(len(x) == 1 for x in per["vma_id"].to_list()) and len(set(ids)) == 4, it
        v = vmas.filter(pl.col("vma_id").is_in(ids)).sort("start")
        assert (v["end"] - v["start"]).to_list() == [8 * 4096] * 4
        assert (v["start"][1:].cast(pl.Int64) - v["end"][:-1].cast(pl.Int64)).to_list() == [4096] * 3  # the holes
        assert v["created_ns"].is_null().all() == (it == 0)
    # plain pft: one VMA for every thread
    assert cli("synth", "pft", "--threads", "4", "--pages", "8", "-w", ws)[0] == 0
    _, ops, _ = _ops(cli, ws, "pft-t4")
    assert ops.filter(pl.col("kind") == "fault")["vma_id"].n_unique() == 1


def test_plan_maps_designs_to_models_and_machines_to_profiles():
    pub = V.load_published()
    tbs = {t.id: t for t in V.plan(pub)}
    ice = tbs[ICE]
    # pvl-v2 is the v2 posting (its mm_users test); +opt is v3's logic: pervma on 6.2
    assert ice.models == {"mm-unstable-20230210": "mmap_lock", "pvl-v2": "pvl-v2", "pvl-v2+opt": "pervma"}
    assert ice.profile == "icelake-2s" and ice.workload == "pft"
    assert tbs[PERVMA_TABLE].workload == "pft-multimap"
    zen = tbs["shivank-2025-01-28-zen5-v9"]
    assert list(zen.models.values()) == ["pervma", "mainline"] and zen.profile == "zen5-2s"
    ivy = tbs["bueso-2018-02-05-pft-range-mmap_lock"]
    assert list(ivy.models.values()) == ["mmap_lock", None] and ivy.profile == "ivybridge-2s"


def test_a_table_without_its_profile_is_one_line_and_the_others_go_on(cli, ws, tmp_path, monkeypatch):
    # the profiles ship now; a table whose machine has none (here: the Ice Lake tables
    # pointed at a profile name nobody has) is one line, never another machine
    monkeypatch.setattr(V, "PROFILES", (("8336C", "icelake-9s"), ("Zen 5", "zen5-9s"), ("IvyBridge", "ivybridge-2s")))
    rc, out, err = cli("validate", "--tables", f"{ICE},shivank-2025-01-28-zen5-v9", "-w", ws)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{ICE}: not replayed: machine profile icelake-9s is not in this checkout (replay machines lists them)"
    assert lines[1].startswith("shivank-2025-01-28-zen5-v9: not replayed: machine profile zen5-9s")
    rc, _, err = cli("validate", "--tables", "nope", "-w", ws)
    assert rc == 1 and err.startswith("replay: error: no table 'nope'") and err.count("\n") == 1
    rc, _, err = cli("validate", "--published", tmp_path / "none.json", "-w", ws)
    assert rc == 1 and "cannot read the published tables" in err and err.count("\n") == 1


def test_validate_end_to_end_on_one_table_and_two_thread_counts(ws, tmp_path):
    """Real synth, ingest, engine and Parquet; another machine given explicitly (the API
    allows it, the CLI does not) and named in the output."""
    res = V.run_validation(Workspace(ws), [ICE], [1, 4], iterations=2, pages=256,
                           machines={ICE: "broadwell-2s"})
    tb = res["tables"][0]
    assert tb.status == "ok" and tb.profile == "broadwell-2s"
    rows = V.rows_of(tb)
    assert len(rows) == 2 * 2 * 3  # thread counts x metrics x designs
    assert all(list(r) == V.ROW_COLUMNS for r in rows)  # what -f csv/ndjson/parquet write
    r = next(x for x in rows if x["threads"] == 4 and x["metric"] == "faults/sec" and x["design"] == "pvl-v2")
    assert r["published"] == 2683651.5664 and r["published_pct"] == -9.51
    assert r["iterations"] == 2 and r["predicted"] > 0
    # the prediction is what the runs say: Hmean of the runs' faults/sec read back from the workspace
    runs = tb.runs[("pvl-v2", 4)]  # the pvl-v2 column is the v2 posting's model
    got = pl.concat([pl.read_parquet(ws / "results" / f"run_id={x}") for x in runs])
    # (pft's: the faults over the span of the touch loops, first fault's start to last fault's end)
    per = [f.height / (f["end_ns"].max() - f["start_ns"].min()) * 1e9
           for f in (g.filter(pl.col("kind") == "fault") for _, g in got.group_by("run_id"))]
    assert r["predicted"] == pytest.approx(len(per) / sum(1 / x for x in per))
    base = next(x for x in rows if x["threads"] == 4 and x["metric"] == "faults/sec" and x["design"] == "mm-unstable-20230210")
    assert r["predicted_pct"] == pytest.approx((r["predicted"] / base["predicted"] - 1) * 100)
    assert r["error_pp"] == pytest.approx(r["predicted_pct"] - r["published_pct"])
    assert r["abs_error_pct"] == pytest.approx((r["predicted"] / r["published"] - 1) * 100)
    # the traces are the benchmark: 256 faults per iteration split across the threads, one VMA;
    # each thread's slice the published run's (V.PFT_REGION_BYTES / 4), its first 64 pages touched
    ops = pl.read_parquet(ws / "ops" / f"trace_id=val-pft-t4-p64-s{V.PFT_REGION_BYTES // 4 // 4096}")
    f = ops.filter(pl.col("kind") == "fault")
    assert f.height == 256 and f["vma_id"].n_unique() == 1
    starts = sorted(f.group_by("tid").agg(pl.col("address").min())["address"].to_list())
    assert [b - a for a, b in zip(starts, starts[1:])] == [V.PFT_REGION_BYTES // 4] * 3

    # the layout: compare-kernels' lines, published then predicted then the errors
    text = V.render_table(tb)
    assert text[0].startswith(f"{ICE}: published")
    assert text[1].split() == ["mm-unstable-20230210", "pvl-v2", "pvl-v2+opt"]
    assert text[2].startswith("Hmean     faults/cpu-1   ") and "*  -0.47%*" in text[2]
    assert text[5].startswith("Hmean     faults/sec-4   ") and "2965588.9697 (   0.00%)" in text[5]
    i = next(k for k, x in enumerate(text) if ": predicted on broadwell-2s" in x)
    assert "Hmean of 2 iterations" in text[i] and text[i + 5].startswith("Hmean     faults/sec-4")
    assert f"{r['predicted']:.4f}" in text[i + 5]
    err = [x for x in text if x.startswith("Error     faults/sec-4")][0]
    assert f"{r['error_pp']:+7.2f}pp" in err

    # the document and the plot
    doc = tmp_path / "validation.md"
    V.write_doc(res, doc, tmp_path / "validation.png", "replay validate --tables x")
    md = doc.read_text()
    assert "**Fitted parameters.** fault_path.fixed_ns" in md and "256 faults per iteration" in md
    # each fitted value, from its profile, with what it was fitted to
    from replay.machines import load_machine
    ice = load_machine("icelake-2s")
    assert f"| `icelake-2s` | fault_path.fixed_ns | {ice.fault_path['fixed_ns']:g} | {ice.fitted['fault_path.fixed_ns']} |" in md
    assert f"Replayed on `broadwell-2s`" in md and "\n".join(text) in md
    assert (tmp_path / "validation.png").stat().st_size > 10_000
    j = V.as_json(res)
    assert j["fitted"] == ["fault_path.fixed_ns"] and j["tables"][0]["rows"][0]["table"] == ICE


def test_local_rows_compare_measured_and_predicted(ws):
    """The local comparison from a measurement record (values of a real run, cached
    form): the prediction replays pft with the same parameters."""
    local = {"date": "d", "kernel": "k", "cpu": "c", "nproc": 2, "loadavg": ["0", "0", "0"], "mb_total": 2,
             "build": "b", "points": [{"threads": 2, "mb_per_thread": 1, "faults": 512, "command": "pft 2 1 1",
                                       "faults_per_sec": [100000.0], "faults_per_cpu": [300000.0],
                                       "hmean_faults_per_sec": 100000.0, "hmean_faults_per_cpu": 300000.0}]}
    rows = V.predict_local(local, Workspace(ws), 1)
    fps = next(r for r in rows if r["metric"] == "faults/sec")
    assert fps["measured"] == 100000.0 and fps["error_pct"] == pytest.approx((fps["predicted"] / 1e5 - 1) * 100)
    ops = pl.read_parquet(ws / "ops" / "trace_id=val-pft-t2-p256")
    assert ops.filter(pl.col("kind") == "fault").height == 512  # 1 MiB per thread, 2 threads


@pytest.mark.slow
def test_measure_local_runs_pft_for_real():
    m = V.measure_local(iterations=2, threads=(1,), mb_total=16)
    p = m["points"][0]
    assert p["faults"] == 16 * 256 and len(p["faults_per_sec"]) == 2 and p["hmean_faults_per_sec"] > 0
    assert m["kernel"] and m["cpu"]


def test_quick_takes_the_first_three_thread_counts_and_json_says_so(cli, ws):
    rc, out, err = cli("validate", "--quick", "--tables", ICE, "-f", "json", "-w", ws)
    assert rc == 0, err
    j = json.loads(out)
    assert j["faults_per_iteration"] == 2048 and j["iterations"] == 2 and j["fitted"] == ["fault_path.fixed_ns"]
    t = j["tables"][0]
    assert t["threads"] == [1, 4, 7] and t["status"] == "ok"
    assert t["models"] == {"mm-unstable-20230210": "mmap_lock", "pvl-v2": "pvl-v2", "pvl-v2+opt": "pervma"}
    rc, out, err = cli("validate", "--quick", "--tables", ICE, "--threads", "1", "-f", "csv", "-w", ws)  # the rows
    lines = out.splitlines()
    assert rc == 0 and lines[0] == ",".join(V.ROW_COLUMNS), (err, out)
    assert len(lines) == 1 + 2 * 3  # one thread count x two metrics x three designs


def test_a_design_without_a_model_is_published_only(ws):
    B = "bueso-2018-02-05-pft-range-mmap_lock"
    res = V.run_validation(Workspace(ws), [B], [1], iterations=1, pages=64, machines={B: "local-2vcpu"})
    tb = res["tables"][0]
    rows = V.rows_of(tb)
    rng = [r for r in rows if r["design"] == "range-mmap_lock-v1"]
    assert rng and all(r["predicted"] is None and r["error_pp"] is None for r in rng)
    text = V.render_table(tb)
    i = next(k for k, x in enumerate(text) if ": predicted on local-2vcpu" in x)
    assert "range-mmap_lock-v1=no model" in text[i] and text[i + 1].split() == ["v4.15-rc8"]
    assert V.summary_of(tb)["of_pp"] == 0


def test_fallbacks_of_one_sample_end_to_end(cli, ws):
    """pft-ftrace (the smallest sample) ingested from sample_traces/, replayed under the
    model of its kernel; the observed counts are the op builder's own, per VMA class."""
    res = V.run_validation(Workspace(ws), fallbacks=True, samples=["pft-ftrace"], iterations=2)
    assert res["tables"] == [] and res["local"] is None  # --fallbacks alone: nothing else
    (s,) = res["fallbacks"]
    assert s.status == "ok" and s.trace == "val-sample-pft-ftrace"
    # an ftrace text has no header: the kernel and CPUs are the ones the perf-recorded samples give
    assert s.kernel.startswith("6.18.") and s.cpus == 2 and "other samples" in s.kernel_source
    assert s.model == "mainline" and len(s.runs) == 2
    rows = {r["vmas"]: r for r in V.fallback_rows(s)}
    assert all(list(r) == V.FALLBACK_COLUMNS for r in rows.values())
    # observed: what `replay ops` counts from the same ops (ops_summary)
    rc, out, err = cli("ops", s.trace, "-w", ws, "-f", "json")
    assert rc == 0, err
    summ = json.loads(out)
    a = rows["all"]
    assert a["observed"] == summ["observed_fallbacks"] == 3 and a["user_faults"] == summ["user_faults"]
    assert rows["anonymous"]["observed"] + rows["file/special"]["observed"] == a["observed"]
    # the classes from the VMAs each fallback hit: pft's 3 are [vdso], [vvar] and a file's text
    ops = pl.read_parquet(ws / "ops" / f"trace_id={s.trace}").filter(pl.col("observed_fallback").fill_null(False)
                                                                      & ~pl.col("kernel"))
    vmas = pl.read_parquet(ws / "vmas" / f"trace_id={s.trace}")
    hit = ops.join(vmas, on="vma_id")
    assert sorted(hit["name"].to_list()) == sorted(["[vdso]", "[vvar]", hit.filter(~pl.col("anon"))["name"][0]])
    assert rows["file/special"]["observed"] == 3 and rows["anonymous"]["observed"] == 0
    # a writer of the fault's VMA in flight: checked against a plain loop over the ops
    all_ops = pl.read_parquet(ws / "ops" / f"trace_id={s.trace}")
    writers = all_ops.filter(pl.col("kind").cast(pl.Utf8) != "fault").to_dicts()
    naive = sum(any(f["vma_id"] in (w["vma_ids"] or []) and w["mm"] == f["mm"] and w["start_ns"] <= f["end_ns"]
                    and (w["end_ns"] if w["end_ns"] is not None else w["start_ns"]) >= f["start_ns"] for w in writers)
                for f in ops.to_dicts())
    assert a["observed_writer_in_flight"] == naive
    # simulated: the same rate as compare.py's fallback-pct (and the run summary's)
    C = importlib.import_module("replay.compare")
    m = C.iteration_metrics(Workspace(ws), s.runs)
    assert a["simulated_pct"] == pytest.approx(sum(m["fallback_pct"]) / 2)
    got = pl.concat([pl.read_parquet(ws / "results" / f"run_id={r}") for r in s.runs])
    assert a["simulated"] == got.filter(pl.col("kind") == "fault")["fallback"].sum() / 2
    assert a["simulated_abort"] + a["simulated_retry"] == a["simulated"]
    assert a["target"] == "x2" and a["meets"] == V.meets(3, a["simulated"])
    text = V.fallback_lines(res["fallbacks"])
    assert text[1].split()[:4] == ["trace", "vmas", "faults", "observed"]
    assert text[2].split()[:5] == ["pft-ftrace", "all", f"{a['user_faults']:,}", "3", f"{a['observed_pct']:.3f}%"]


def test_fallback_targets_and_kernel_models():
    assert V.meets(100, 125) and not V.meets(100, 126) and V.meets(200, 150) and not V.meets(200, 149)
    assert V.meets(99, 198) and not V.meets(99, 199) and V.meets(8, 4) and not V.meets(8, 3.9)
    assert V.meets(0, 0) and not V.meets(0, 1)
    assert V.model_for_kernel("6.18.44-fc-v669") == "mainline" and V.model_for_kernel("6.15.0") == "mainline"
    assert V.model_for_kernel("6.14.2") == "pervma" and V.model_for_kernel("6.4.0") == "pervma"
    assert V.model_for_kernel("6.3.13") == "mmap_lock" and V.model_for_kernel("5.15.0") == "mmap_lock"
    assert V.model_for_kernel("") is None
    assert V.vma_class(True, "[vdso]") == "file/special" and V.vma_class(True, "[heap]") == "anonymous"
    assert V.vma_class(False, "/usr/lib/libc.so.6") == "file/special"


def test_fallbacks_cli_rows_and_tables_alone(cli, ws):
    rc, out, err = cli("validate", "--fallbacks", "-k", "1", "-f", "csv", "-w", ws)  # every sample, one seed
    lines = out.splitlines()
    assert rc == 0 and lines[0] == ",".join(V.FALLBACK_COLUMNS), err
    names = V.sample_names()
    assert [tuple(x.split(",")[i] for i in (0, 6)) for x in lines[1:]] == [(n, c) for n in names for c in V.VMA_CLASSES]
    rows = pl.read_csv(out.encode())
    race = rows.filter((pl.col("trace") == "mprotect-race") & (pl.col("vmas") == "anonymous")).to_dicts()[0]
    # mprotect-race's faults abort on the VMA its mprotect() write-locks, in the trace and in the engine
    assert race["observed"] > 100 and race["target"] == "±25%" and race["simulated"] > 0
    assert race["simulated_abort"] + race["simulated_retry"] == race["simulated"]
    rc, out, err = cli("validate", "--fallbacks", "-k", "1", "-w", ws)
    assert rc == 0 and out.startswith("fallbacks: observed in the sample traces") and "mprotect-race" in out, err
    rc, out, _ = cli("validate", "--quick", "--tables", ICE, "--threads", "1", "-f", "json", "-w", ws)
    assert json.loads(out)["fallbacks"] is None  # --tables alone: not the fallbacks


def test_a_borrowed_fitted_value_is_the_one_it_names():
    """A profile whose fixed part is "est.: NAME's fitted value" carries NAME's current
    value, not a copy from an earlier fit (skylake-2s and spr-1s had 569 where icelake-2s
    had been re-fitted to 560)."""
    import re

    from replay.machines import builtin_names, load_machine

    borrowed = 0
    for name in builtin_names():
        m = load_machine(name)
        src = m.sources.get("fault_path.fixed_ns", "")
        hit = re.match(r"est\.: (\S+)'s fitted value", src)
        if hit:
            borrowed += 1
            other = load_machine(hit.group(1))
            assert "fault_path.fixed_ns" in other.fitted, (name, hit.group(1))
            assert m.fault_path["fixed_ns"] == other.fault_path["fixed_ns"], (name, hit.group(1))
    assert borrowed >= 4
