"""replay run / replay models from the command line, on a real sample trace."""

import json

import polars as pl

from conftest import SAMPLES


def _ingest(cli, ws, name="pft-ftrace"):
    assert cli("ingest", SAMPLES / f"{name}.txt.zst", "-w", ws, "--maps", SAMPLES / f"{name}.maps")[0] == 0


def test_models_lists_all_six_with_citations(cli):
    rc, out, _ = cli("models", "-f", "json")
    rows = {r["model"]: r for r in json.loads(out)}
    assert set(rows) >= {"mmap_lock", "pervma", "inline-rwsem", "v7", "v8", "mainline"}
    assert "mm/mmap_lock.c" in rows["mainline"]["follows"] and "lock_vma_under_rcu" in rows["pervma"]["follows"]


def test_run_writes_datasets_and_is_deterministic(cli, ws):
    _ingest(cli, ws)
    rc, out, err = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--machine", "local-2vcpu", "-w", ws, "-f", "json")
    assert rc == 0, err
    s = json.loads(out)
    ops = pl.read_parquet(ws / "ops" / "trace_id=pft-ftrace")
    res = pl.read_parquet(ws / "results" / f"run_id={s['run_id']}")
    assert res.height == ops.height == s["ops"] and sorted(res["op_id"].to_list()) == sorted(ops["op_id"].to_list())
    assert s["faults"] == ops.filter(pl.col("kind") == "fault").height
    # the denominator: user faults that tried the VMA lock (a kernel-mode fault never does)
    tried = res.filter((pl.col("kind") == "fault") & pl.col("outcome").is_not_null())
    assert 0 < tried.height <= s["faults"]
    assert s["fallback_pct"] == round(100 * tried["fallback"].mean(), 3)
    runs = pl.read_parquet(ws / "runs" / f"run_id={s['run_id']}").to_dicts()[0]
    assert (runs["model"], runs["machine"], runs["cpus"], runs["seed"], runs["trace_id"]) == ("v8", "local-2vcpu", 2, 0, "pft-ftrace")
    assert runs["trace_sha256"] and runs["engine"] == "numba" and runs["semantics"] >= 2
    rc, out2, _ = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--machine", "local-2vcpu", "-w", ws, "-f", "json")
    again = pl.read_parquet(ws / "results" / f"run_id={s['run_id']}")
    assert json.loads(out2)["run_id"] == s["run_id"] and again.equals(res)
    rc, out, _ = cli("run", "--model", "mmap_lock", "--trace", "pft-ftrace", "--machine", "local-2vcpu", "-w", ws, "-f", "json")
    m = json.loads(out)
    # no CONFIG_PER_VMA_LOCK: no fault tries a VMA lock, so no rate has a denominator
    assert m["run_id"] != s["run_id"] and m["fallback_pct"] is None and m["miss_pct"] is None


def test_run_table_and_errors(cli, ws):
    _ingest(cli, ws)
    rc, out, _ = cli("run", "--model", "mainline", "--trace", "pft-ftrace", "--cpus", "8", "-w", ws)
    assert rc == 0 and "faults_per_sec" in out and "hottest cache lines" in out and "vma.vm_refcnt" in out
    rc, _, err = cli("run", "--model", "v9", "-w", ws)  # usage errors exit 2
    assert rc == 2 and "unknown model" in err
    rc, _, err = cli("run", "--model", "v8", "--machine", "pdp-11", "-w", ws)
    assert rc == 2 and "unknown machine" in err
    rc, _, err = cli("run", "--model", "v8", "--trace", "nope", "-w", ws)
    assert rc == 1 and "no trace" in err
    for n in ("999", "0"):
        rc, _, err = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--cpus", n, "-w", ws)
        assert rc == 2 and "--cpus must be between 1 and 56" in err and err.count("\n") == 1


def _cpus_by_thread(res):
    return [c for _, c in res.group_by("tid").agg(pl.col("sim_cpu").unique().sort()).sort("tid").rows()]


def test_placements_and_open_loop(cli, ws):
    _ingest(cli, ws)
    outs = {}
    for extra in ([], ["--placement", "as-recorded"], ["--open-loop"], ["--placement", "packed", "--cpus", "56"],
                  ["--cpus", "56"]):
        rc, out, err = cli("run", "--model", "mainline", "--trace", "pft-ftrace", "--machine", "broadwell-2s",
                           "--cpus", "4", "-w", ws, "-f", "json", *extra)
        assert rc == 0, err
        outs[" ".join(extra)] = pl.read_parquet(ws / "results" / f"run_id={json.loads(out)['run_id']}").sort("op_id")
    ops = pl.read_parquet(ws / "ops" / "trace_id=pft-ftrace").sort("op_id")
    # placement: pft-ftrace has 5 threads; broadwell-2s numbers socket 0's 14 cores 0-13,
    # socket 1's 14-27, their SMT siblings 28-55.  spread: one per physical core,
    # alternating sockets (0, 14, 1, 15, 2); packed: socket 0 first, SMT siblings next
    # to their cores (0, 28, 1, 29, 2).  Each thread stays on its CPU.
    assert _cpus_by_thread(outs["--cpus 56"]) == [[0], [14], [1], [15], [2]]
    assert _cpus_by_thread(outs["--placement packed --cpus 56"]) == [[0], [28], [1], [29], [2]]
    # --cpus 4 is the 4 CPUs spread would use - two cores on each socket (kernel/sched/fair.c,
    # see Machine.placement) - and the fifth thread goes back on the first
    assert _cpus_by_thread(outs[""]) == [[0], [14], [1], [15], [0]]
    # as-recorded: each op on the CPU the trace recorded it on - threads 6527 and 6532 migrate
    j = outs["--placement as-recorded"].join(ops.select("op_id", "tid", "cpu"), on="op_id")
    assert (j["cpu"].cast(pl.Int32) == j["sim_cpu"]).all()
    assert j.group_by("tid").agg(pl.col("sim_cpu").n_unique().alias("k")).filter(pl.col("k") > 1).height == 2
    # the trace ran on 2 CPUs: on 1, as-recorded cannot be (a usage error), and is not folded
    rc, _, err = cli("run", "--model", "mainline", "--trace", "pft-ftrace", "--machine", "broadwell-2s",
                     "--cpus", "1", "--placement", "as-recorded", "-w", ws)
    assert rc == 2 and err.count("\n") == 1
    assert "--placement as-recorded: the trace ran on CPU 1, but only CPU 0 is simulated; give --cpus 2" in err
    # open loop: each op starts at its recorded time (from the trace's first op) or, if
    # its thread is still busy with its previous op then, when that op ends - lock waits
    # and the closed loop's drift do not move it
    def due(res):
        j = res.join(ops.select("op_id", (pl.col("start_ns") - pl.col("start_ns").min()).alias("rel")), on="op_id")
        j = j.with_columns(pl.col("end_ns").shift(1).over("tid", order_by="op_id").fill_null(0.0).alias("prev_end"))
        # (to a picosecond: the engine's clock adds the gap to now, floating point).  A
        # writer may start later still: it waits for the faults on its VMAs that the trace
        # shows before it to have started (the causal order, replay/engine/loop.py _gate())
        d = pl.col("start_ns") - pl.max_horizontal(pl.col("rel").cast(pl.Float64), "prev_end")
        return j.select(pl.when(pl.col("kind") == "fault").then(d.abs() < 1e-3).otherwise(d > -1e-3).all()).item()

    assert due(outs["--open-loop"])
    assert not due(outs[""])  # the closed loop does drift from the recorded times


def test_synth_pft_through_the_real_ingester(cli, ws):
    rc, out, err = cli("synth", "pft", "--threads", "4", "--pages", "50", "--iterations", "2", "-w", ws)
    assert rc == 0, err
    ev = pl.read_parquet(ws / "events" / "trace_id=pft-t4")
    assert ev.filter(pl.col("event") == "page_fault_user").height == 4 * 50 * 2
    rc, out, err = cli("ops", "pft-t4", "-w", ws, "-f", "json")
    s = json.loads(out)
    assert s["kinds"] == {"fault": 400, "mmap": 2, "munmap": 2} and s["vmas_inferred"] == 0
    ops = pl.read_parquet(ws / "ops" / "trace_id=pft-t4")
    # each iteration's faults land in that iteration's region VMA
    assert ops.filter(pl.col("kind") == "fault")["vma_id"].n_unique() == 2
    rc, out, err = cli("run", "--model", "mainline", "--trace", "pft-t4", "-w", ws, "-f", "json")
    r = json.loads(out)
    assert rc == 0 and r["faults"] == 400 and r["fallback_pct"] == 0
    rc, _, err = cli("synth", "nope", "-w", ws)
    assert rc == 2 and "unknown workload" in err


def test_out_of_tree_model_through_the_entry_point_group(cli, ws, monkeypatch):
    # a new model is a new file: here, v8's programs with the adjacent VMA's refcount
    # placed in line 0 - registered the way a plugin package would register it

    import replay.models as models
    from replay.models.base import Layout, Model, Struct

    v8 = models.get_model("v8")
    fields = dict(v8.layout.vma.fields, vm_refcnt=44)  # the hole after vm_lock_seq
    plugin = Model("v8-refcnt-in-line0", "v8 with vm_refcnt among the fault-hot fields", ["test plugin"],
                   Layout(v8.layout.mm, Struct("vm_area_struct", 256, 64, fields, sizes=v8.layout.vma.sizes)),
                   v8.fault, v8.kernel_fault, v8.writer, dict(v8.params))

    class EP:
        name = "v8-refcnt-in-line0"

        def load(self):
            return plugin

    monkeypatch.setattr(models, "entry_points", lambda group: [EP()] if group == "replay.models" else [])
    rc, out, _ = cli("models", "-f", "json")
    assert "v8-refcnt-in-line0" in {r["model"] for r in json.loads(out)}
    _ingest(cli, ws)
    rc, out, err = cli("run", "--model", "v8-refcnt-in-line0", "--trace", "pft-ftrace", "--machine", "local-2vcpu",
                       "-w", ws, "-f", "json")
    assert rc == 0, err
    lines = pl.read_parquet(ws / "line_stats" / f"run_id={json.loads(out)['run_id']}")
    hot = lines.sort("transfers", descending=True).row(0, named=True)
    assert "vm_refcnt" in hot["fields"] and "vm_start" in hot["fields"]  # now they share a line

    class Broken:
        name = "broken"

        def load(self):
            raise ImportError("no module named broken_model")

    monkeypatch.setattr(models, "entry_points", lambda group: [Broken()])
    rc, _, err = cli("models")
    assert rc == 1 and "plugin 'broken' failed to load" in err


def test_sweep_writes_one_run_per_model_and_cpu_count(cli, ws):
    _ingest(cli, ws)
    rc, out, err = cli("sweep", "--models", "v8,mmap_lock", "--cpus", "1,2", "--trace", "pft-ftrace", "-w", ws, "-f", "json")
    assert rc == 0, err
    rows = {(r["model"], r["cpus"]): r for r in json.loads(out)["runs"]}
    runs = pl.read_parquet(ws / "runs" / "*" / "*.parquet")
    assert runs.height == 4
    for r in runs.iter_rows(named=True):
        assert rows[r["model"], r["cpus"]]["faults_per_sec"] == r["faults_per_sec"]
    rc, _, err = cli("sweep", "--models", "v8", "--cpus", "1,x", "-w", ws)
    assert rc == 2 and "--cpus" in err


def test_a_rerun_gives_the_same_run_from_the_command_line(cli, ws):
    _ingest(cli, ws)
    got = []
    for _ in range(2):
        rc, out, err = cli("run", "--model", "mainline", "--trace", "pft-ftrace", "--machine", "local-2vcpu",
                           "-w", ws, "-f", "json")
        assert rc == 0, err
        s = json.loads(out)
        res = pl.read_parquet(ws / "results" / f"run_id={s['run_id']}")
        got.append((s["run_id"], res, {k: v for k, v in s.items() if k != "wall_s"}))
    (ra, resa, sa), (rb, resb, sb) = got
    assert ra == rb and resa.equals(resb) and sa == sb
    rc, _, err = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--engine", "reference", "-w", ws)
    assert rc == 2 and "--engine" in err and "Traceback" not in err  # one engine now: the option is gone
