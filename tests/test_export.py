"""`replay export`: a run (and its trace) as Chrome trace-event JSON.

The JSON is checked against the Trace Event Format's rules by an independent checker
(``check_trace_events``), and its events are counted against the run's results, the
trace's ops and events, read straight from the Parquet files with polars."""

import json
import tracemalloc

import polars as pl
import pytest

from conftest import SAMPLES


@pytest.fixture(scope="module")
def wse(tmp_path_factory):
    from replay.cli import main

    ws = tmp_path_factory.mktemp("export") / "ws"
    assert main(["ingest", str(SAMPLES / "mprotect-race.txt.zst"), "-w", str(ws), "--maps",
                 str(SAMPLES / "mprotect-race.maps"), "-O", "json"]) == 0
    runs = {}
    for key, model, cpus in (("m4", "mainline", "4"), ("v1", "v8", "1")):
        assert main(["run", "--model", model, "--trace", "mprotect-race", "--machine", "broadwell-2s", "--cpus", cpus,
                     "-w", str(ws), "-f", "json"]) == 0
    rs = pl.read_parquet(ws / "runs" / "*" / "*.parquet")
    for key, model in (("m4", "mainline"), ("v1", "v8")):
        runs[key] = rs.filter(pl.col("model") == model)["run_id"][0]
    return ws, runs


def results(ws, run_id):
    return pl.read_parquet(ws / "results" / f"run_id={run_id}" / "part-0.parquet")


def waits_of(ws, run_id):
    return pl.read_parquet(ws / "waits" / f"run_id={run_id}" / "part-0.parquet")


def is_wait(e) -> bool:
    """A simulated lock wait slice (its args name the results column it is part of)."""
    return e["ph"] == "X" and e.get("cat") == "simulated" and "counted_in" in e.get("args", {})


# -- an independent checker of the format's rules ------------------------------------------

PHASES = {"X", "B", "E", "i", "I", "C", "M"}


def check_trace_events(doc) -> None:
    """The Trace Event Format's rules (JSON Object Format): traceEvents a list, every
    event a phase and a pid, timestamps numbers; per track (pid, tid) time never goes
    back in file order, every B has its E on the same track (names match, properly
    nested), every X lies inside the slice it starts in; counters per (pid, name) in
    time order with numeric series; every pid named, every thread named."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    last, stacks, counters = {}, {}, {}
    named_p, named_t, used_p, used_t = set(), set(), set(), set()
    for e in doc["traceEvents"]:
        ph = e["ph"]
        assert ph in PHASES, e
        assert isinstance(e["pid"], int), e
        if ph == "M":
            assert e["name"] in ("process_name", "process_sort_index", "thread_name", "process_labels",
                                 "thread_sort_index"), e
            if e["name"] == "process_name":
                named_p.add(e["pid"])
            if e["name"] == "thread_name":
                named_t.add((e["pid"], e["tid"]))
            continue
        ts = e["ts"]
        assert isinstance(ts, (int, float)) and ts >= 0, e
        used_p.add(e["pid"])
        if ph == "C":
            key = (e["pid"], e["name"])
            assert ts >= counters.get(key, 0), e
            counters[key] = ts
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
            continue
        track = (e["pid"], e["tid"])
        used_t.add(track)
        assert ts >= last.get(track, 0), f"time goes back on {track}: {e}"
        last[track] = ts
        st = stacks.setdefault(track, [])
        # slices that ended by now are closed (X: by their dur; B: only by an E)
        while st and st[-1][0] == "X" and st[-1][1] <= ts + 1e-9:
            st.pop()
        if ph == "B":
            st.append(("B", None, e["name"]))
        elif ph == "E":
            assert st and st[-1][0] == "B", f"E without B on {track}: {e}"
            assert st[-1][2] == e.get("name", st[-1][2]), e
            st.pop()
        elif ph == "X":
            dur = e["dur"]
            assert isinstance(dur, (int, float)) and dur >= 0, e
            if st and st[-1][0] == "X":
                assert ts + dur <= st[-1][1] + 1e-9, f"{e} ends after its parent (ends {st[-1][1]})"
            st.append(("X", ts + dur, e["name"]))
        else:
            assert e.get("s", "t") in ("g", "p", "t"), e
    assert all(not any(x[0] == "B" for x in st) for st in stacks.values()), "a B without its E"
    assert used_p <= named_p and used_t <= named_t


def export(cli, ws, run_id, dest, *extra):
    rc, out, err = cli("export", run_id, "-o", dest, "-w", ws, *extra)
    assert rc == 0, err
    return json.loads(dest.read_text()), out


def by(doc, **kw):
    return [e for e in doc["traceEvents"] if all(e.get(k) == v for k, v in kw.items())]


def test_simulated_run_follows_the_format_and_matches_the_results(wse, cli, tmp_path):
    from replay.export import SIM_PID

    ws, runs = wse
    for key in ("m4", "v1"):
        doc, out = export(cli, ws, runs[key], tmp_path / f"{key}.json")
        check_trace_events(doc)
        res = results(ws, runs[key])
        sim = [e for e in doc["traceEvents"] if e.get("cat") == "simulated"]
        assert not [e for e in doc["traceEvents"] if e.get("cat") == "recorded"]
        ops = [e for e in sim if e["ph"] == "X" and not is_wait(e)]
        assert len(ops) == res.height
        kinds = res.group_by("kind").len()
        got = pl.DataFrame({"kind": [e["name"] for e in ops]}).group_by("kind").len()
        assert kinds.sort("kind").equals(got.sort("kind"))
        # each op on its CPU's process and its thread's track, with its outcome and VMA
        row = {r["op_id"]: r for r in res.to_dicts()}
        for e in ops:
            r = row[e["args"]["op_id"]]
            assert (e["pid"], e["tid"]) == (SIM_PID + r["sim_cpu"], r["tid"])
            assert e["args"].get("outcome") == r["outcome"] and e["args"].get("vma_id") == r["vma_id"]
            assert abs(e["ts"] * 1e3 - r["start_ns"]) <= 0.5 + 1e-6 and abs(e["dur"] * 1e3 - (r["end_ns"] - r["start_ns"])) <= 1
        # each wait of the waits table a slice at its own time, inside its op on the op's track
        waits, table = [e for e in sim if is_wait(e)], waits_of(ws, runs[key])
        assert len(waits) == table.height  # v1 (one CPU) has none; m4 has some (below)
        op_of = {e["args"]["op_id"]: e for e in ops}
        drawn, recorded = {}, {}  # per op, in the order written (time) and recorded (time: one wait at a time)
        for e in waits:
            drawn.setdefault(e["args"]["op_id"], []).append(e)
        for w in table.iter_rows(named=True):
            recorded.setdefault(w["op_id"], []).append(w)
        assert drawn.keys() == recorded.keys()
        for e, w in ((e, w) for j in drawn for e, w in zip(drawn[j], recorded[j], strict=True)):
            o = op_of[e["args"]["op_id"]]
            assert (e["pid"], e["tid"]) == (o["pid"], o["tid"])
            assert o["ts"] <= e["ts"] and e["ts"] + e["dur"] <= o["ts"] + o["dur"] + 1e-9, (e, o)
            assert abs(e["ts"] * 1e3 - w["start_ns"]) <= 0.5 + 1e-6 and abs(e["dur"] * 1e3 - w["wait_ns"]) <= 1
            mode = f" ({w['mode']})" if w["mode"] else ""
            assert e["name"] == w["lock_class"] + (" spin" if w["how"] == "spin" else " wait") + mode
        lock = [e for e in waits if e["args"]["counted_in"] == "lock_wait_ns"]
        assert abs(sum(e["dur"] for e in lock) * 1e3 - res["lock_wait_ns"].sum()) <= len(lock)
        assert "placed" not in json.dumps(doc)
        assert len(by(doc, name="fallback", ph="i")) == res["fallback"].sum()
        for oc in ("retry", "miss"):
            assert len(by(doc, name=oc, ph="i")) == res.filter(pl.col("outcome") == oc).height
        # the last value of each CPU's counter is that CPU's line transfers
        per_cpu = res.group_by("sim_cpu").agg(pl.col("line_transfers").sum())
        final = {}
        for e in by(doc, ph="C", name="line transfers"):
            final[e["pid"]] = e["args"]["transfers"]
        want = {SIM_PID + c: n for c, n in per_cpu.iter_rows() if n}
        assert final == want
        assert f"simulated {res.height:,} ops" in out
    # v1 ran 4 threads on one CPU: one process, a track per thread
    doc = json.loads((tmp_path / "v1.json").read_text())
    tracks = {(e["pid"], e["tid"]) for e in doc["traceEvents"] if e["ph"] == "X"}
    assert {p for p, _ in tracks} == {SIM_PID} and len(tracks) == results(ws, runs["v1"])["tid"].n_unique() > 1
    m4 = json.loads((tmp_path / "m4.json").read_text())
    assert [e for e in m4["traceEvents"] if is_wait(e)] and by(m4, name="fallback")  # the run has both


def test_a_wait_is_drawn_where_it_happened_not_at_its_ops_start(wse, cli, tmp_path):
    """Some waits begin after their op did (a fault that tried the VMA lock first; a
    writer's vma_start_write() after mmap_write_lock()): drawn there, not at the start."""
    ws, runs = wse
    doc, out = export(cli, ws, runs["m4"], tmp_path / "m4.json")
    ops = {e["args"]["op_id"]: e for e in doc["traceEvents"] if e["ph"] == "X" and not is_wait(e)}
    later = [e for e in doc["traceEvents"] if is_wait(e) and e["ts"] > ops[e["args"]["op_id"]]["ts"]]
    table = waits_of(ws, runs["m4"]).join(results(ws, runs["m4"]).select("op_id", pl.col("start_ns").alias("op_s")),
                                          on="op_id")
    assert len(later) == table.filter(pl.col("start_ns").round() > pl.col("op_s").round()).height > 0
    assert f"{len([e for e in doc['traceEvents'] if is_wait(e)]):,} lock waits" in out


def test_a_run_without_a_waits_table_is_drawn_without_waits(wse, cli, tmp_path):
    """A run replayed before the engine recorded waits: no wait slices, and otherData says why."""
    import shutil

    ws, runs = wse
    old = tmp_path / "ws"
    shutil.copytree(ws, old)
    shutil.rmtree(old / "waits" / f"run_id={runs['m4']}")
    doc, out = export(cli, old, runs["m4"], tmp_path / "old.json")
    check_trace_events(doc)
    assert not [e for e in doc["traceEvents"] if is_wait(e)] and "0 lock waits" in out
    assert "replay run it again" in doc["otherData"]["simulated_waits"]


def test_recorded_trace_beside_the_simulation(wse, cli, tmp_path):
    from replay.export import NO_END, REC_PID

    ws, runs = wse
    doc, out = export(cli, ws, runs["m4"], tmp_path / "both.json", "--trace")
    check_trace_events(doc)
    rec = [e for e in doc["traceEvents"] if e.get("cat") == "recorded"]
    ops = pl.read_parquet(ws / "ops" / "trace_id=mprotect-race" / "part-0.parquet")
    ev = pl.read_parquet(ws / "events" / "trace_id=mprotect-race" / "part-0.parquet")
    op_events = [e for e in rec if not e["name"].startswith("mmap_lock") and e["name"] != "fallback (observed)"]
    assert len(op_events) == ops.height
    ended = ops.filter(pl.col("end_ns").is_not_null())
    assert len([e for e in op_events if e["ph"] == "X"]) == ended.height
    assert len([e for e in op_events if e["ph"] == "i" and e["name"].endswith(NO_END)]) == ops.height - ended.height
    # each op at its recorded time (from the first op) on its recorded CPU
    t0 = ops["start_ns"].min()
    row = {r["op_id"]: r for r in ops.to_dicts()}
    for e in op_events[:2000]:
        r = row[e["args"]["op_id"]]
        assert e["pid"] == REC_PID + r["cpu"] and e["tid"] == r["tid"]
        assert round(e["ts"] * 1e3) == r["start_ns"] - t0
    # mmap_lock waits: start_locking to the thread's next acquire_returned
    m = (ev.filter(pl.col("event").cast(pl.Utf8).is_in(["mmap_lock_start", "mmap_lock_acquired", "mmap_lock_released"]))
         .sort("tid", "ts_ns", "seq")
         .with_columns(pl.col("event").cast(pl.Utf8).shift(-1).over("tid").alias("nxt"),
                       pl.col("ts_ns").shift(-1).over("tid").alias("nts")))
    want = m.filter((pl.col("event").cast(pl.Utf8) == "mmap_lock_start") & (pl.col("nxt") == "mmap_lock_acquired"))
    waits = [e for e in rec if e["name"].startswith("mmap_lock wait")]
    assert len(waits) == want.height > 0
    assert round(sum(e["dur"] for e in waits) * 1e3) == (want["nts"] - want["ts_ns"]).sum()
    assert sum(e["name"].endswith("(write)") for e in waits) == want["write"].sum()
    assert len(by(doc, name="fallback (observed)")) == ops["observed_fallback"].sum()
    # waits inside a writer op lie on that op's track
    inside = [e for e in waits if e["args"].get("op_id") is not None]
    assert inside and all(e["pid"] == REC_PID + row[e["args"]["op_id"]]["cpu"] for e in inside)
    assert f"{len(waits):,} mmap_lock waits" in out and doc["otherData"]["run_id"] == runs["m4"]


def test_streams_with_bounded_memory_and_spills(wse, cli, tmp_path, monkeypatch):
    """Python holds a few thousand lines at a time, not the file; DuckDB's sorts spill
    under a memory limit and give the same bytes."""
    import replay.export as X

    ws, runs = wse
    a = tmp_path / "a.json"
    export(cli, ws, runs["m4"], a, "--trace")  # imports done before measuring
    tracemalloc.start()
    assert cli("export", runs["m4"], "-o", a, "-w", ws, "--trace")[0] == 0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < a.stat().st_size / 2, (peak, a.stat().st_size)
    monkeypatch.setattr(X, "MEMORY_LIMIT", "48MB")
    monkeypatch.setattr(X, "BATCH", 997)
    b = tmp_path / "b.json"
    export(cli, ws, runs["m4"], b, "--trace")
    assert a.read_bytes() == b.read_bytes()


def test_checker_and_writer_refuse_what_the_format_forbids(tmp_path):
    import io

    from replay.export import _Out

    bad = [{"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10, "name": "a"},
           {"ph": "X", "pid": 1, "tid": 1, "ts": 5, "dur": 10, "name": "b"}]  # b crosses a's end
    with pytest.raises(AssertionError, match="ends after"):
        check_trace_events({"traceEvents": [{"ph": "M", "pid": 1, "name": "process_name", "args": {}},
                                            {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {}}] + bad})
    with pytest.raises(AssertionError, match="E without B"):
        check_trace_events({"traceEvents": [{"ph": "E", "pid": 1, "tid": 1, "ts": 0}]})
    o = _Out(io.StringIO())
    o.put((1, 1), 0, 10_000, "{}", ("X", "t", "a"))
    with pytest.raises(AssertionError, match="ends after"):
        o.put((1, 1), 5_000, 10_000, "{}", ("X", "t", "b"))
    with pytest.raises(AssertionError, match="comes after"):
        o.put((1, 1), 4_000, None, "{}", ("i", "t", "c"))


def test_export_errors(wse, cli, tmp_path, monkeypatch):
    import replay.export as X

    ws, runs = wse
    dest = tmp_path / "keep.json"
    dest.write_text("old")
    rc, _, err = cli("export", "nope", "-o", dest, "-w", ws)
    assert rc == 1 and err.startswith("replay: error: no run 'nope'") and err.count("\n") == 1
    rc, _, err = cli("export", runs["m4"], "-o", tmp_path / "x.txt", "-w", ws)
    assert rc == 2 and ".json" in err
    rc, _, err = cli("export", runs["m4"], "-o", tmp_path / "no" / "x.json", "-w", ws)
    assert rc == 1 and "No such file or directory" in err and not (tmp_path / "no").exists()

    def broken(*a, **k):  # the recorded half fails after the simulated half was written
        raise X.ExportError("the trace broke half-way")

    monkeypatch.setattr(X, "_recorded", broken)
    rc, _, err = cli("export", runs["m4"], "-o", dest, "-w", ws, "--trace")
    assert rc == 1 and "half-way" in err
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]
