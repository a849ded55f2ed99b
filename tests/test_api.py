"""The Python API a notebook uses, and the CLI built on it (same runs, same errors)."""

import json

import polars as pl
import pytest

import replay
from conftest import SAMPLES


@pytest.fixture(scope="module")
def api_ws(tmp_path_factory):
    return tmp_path_factory.mktemp("api") / "ws"


def test_ingest_ops_run_compare_sql(api_ws, cli):
    t = replay.ingest(SAMPLES / "pft-ftrace.txt.zst", name="pft", maps=SAMPLES / "pft-ftrace.maps", workspace=api_ws)
    assert t.trace_id == "pft" and t.summary["lines"]["parsed"] == sum(t.summary["events"].values())
    o = replay.ops("pft", workspace=api_ws)
    got = o.ops.collect()  # a LazyFrame over the committed file
    assert o.summary["ops"] == got.height and o.summary["kinds"]["fault"] == got.filter(pl.col("kind") == "fault").height
    a = replay.run("pft", model="mmap_lock", machine="local-2vcpu", cpus=2, seed=0, workspace=api_ws)
    b = replay.run("pft", model="v8", machine="local-2vcpu", cpus=2, seed=0, workspace=api_ws)
    assert isinstance(a.summary, dict) and a.summary["run_id"] == a.run_id != b.run_id
    assert a.results.height == a.summary["ops"] and a.results["run_id"].unique().to_list() == [a.run_id]
    assert a.lock_stats["acquisitions"].sum() > 0 and b.line_stats["transfers"].sum() > 0
    assert a.waits["run_id"].unique().to_list() == [a.run_id] and a.waits.filter(
        pl.col("counted_in") == "lock_wait_ns")["wait_ns"].sum() == pytest.approx(a.results["lock_wait_ns"].sum())
    # the CLI is the same function: the same run id and summary
    rc, out, _ = cli("run", "--model", "v8", "--trace", "pft", "--machine", "local-2vcpu", "--cpus", "2", "-w", api_ws,
                     "-f", "json")
    s = json.loads(out)
    assert rc == 0 and s["run_id"] == b.run_id and {k: v for k, v in s.items() if k != "wall_s"} == \
        {k: v for k, v in b.summary.items() if k != "wall_s"}
    c = replay.compare([a, b.run_id], workspace=api_ws)
    rc, out, _ = cli("compare", a.run_id, b.run_id, "-w", api_ws)
    assert out == c.text + "\n" and repr(c) == c.text
    assert set(c.frame["run_id"]) == {a.run_id, b.run_id} and c.frame.filter(
        (pl.col("run_id") == a.run_id) & pl.col("kind").is_in(["Hmean", "Amean"]))["pct_change"].to_list() == [0.0] * 4
    df = replay.sql("SELECT model, faults FROM runs ORDER BY model", workspace=api_ws)
    assert df.to_dicts() == [{"model": "mmap_lock", "faults": a.summary["faults"]}, {"model": "v8", "faults": b.summary["faults"]}]
    assert replay.runs(api_ws).height == 2 and replay.traces(api_ws)["trace_id"].to_list() == ["pft"]
    lc = replay.query("lock_contention", api_ws, run_id=a.run_id, by="task")
    assert lc["contended"].sum() == a.results.filter(pl.col("lock_wait_ns") > 0).height


def test_errors_are_one_line_with_the_cli_exit_code(api_ws):
    with pytest.raises(replay.UsageError, match="unknown model 'v9'") as e:
        replay.run("pft", model="v9", workspace=api_ws)
    assert e.value.code == 2
    with pytest.raises(replay.UsageError, match="--cpus must be between 1 and 2"):
        replay.run("pft", model="v8", machine="local-2vcpu", cpus=0, workspace=api_ws)
    with pytest.raises(replay.ReplayError, match="no trace 'nope'") as e:
        replay.run("nope", model="v8", workspace=api_ws)
    assert e.value.code == 1
    with pytest.raises(replay.ReplayError, match="SQL: .*nope"):
        replay.sql("SELECT nope", workspace=api_ws)
    with pytest.raises(replay.UsageError, match="bucket_ms must be > 0"):
        replay.query("timeline", api_ws, bucket_ms=0)


def test_the_cli_calls_the_api(monkeypatch, cli, api_ws):
    import replay.api

    def refuse(*a, **k):
        raise replay.ReplayError("the api was asked", 1)

    for name in ("run", "ingest", "ops", "compare", "runs", "traces", "load_run"):
        monkeypatch.setattr(replay.api, name, refuse)
    for args in (["run", "--model", "v8"], ["ingest", "x"], ["ops", "pft"], ["compare", "a", "b"], ["runs"],
                 ["traces"], ["report", "a"]):
        rc, _, err = cli(*args, "-w", api_ws)
        assert rc == 1 and err == "replay: error: the api was asked\n", args
