"""Odd but possible traces (issue 8): each must ingest, build ops and replay - or be
refused with one line naming the cause - never an internal error."""

import json
import re

import polars as pl
import pytest
import zstandard

from conftest import DATA, SAMPLES

MODELS_FAST = ["mmap_lock", "v8"]


def sample_text(name: str, body_lines: int) -> list[str]:
    """A sample trace's header and its first ``body_lines`` event lines."""
    text = zstandard.ZstdDecompressor().stream_reader(open(SAMPLES / f"{name}.txt.zst", "rb")).read().decode()
    lines = text.splitlines(keepends=True)
    head = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")][:body_lines]
    return head + body


def write(tmp_path, name: str, lines: list[str]):
    p = tmp_path / f"{name}.txt"
    p.write_text("".join(lines))
    return p


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("replay: error: ") and "Traceback" not in err, err
    return lines[0]


def ops_json(cli, ws, trace):
    rc, out, err = cli("ops", trace, "-w", ws, "-f", "json")
    assert rc == 0, err
    return json.loads(out)


def run_json(cli, ws, trace, model="v8"):
    rc, out, err = cli("run", "--model", model, "--trace", trace, "--machine", "local-2vcpu",
                       "-w", ws, "-f", "json")
    assert rc == 0, err
    return json.loads(out)


# -- a faults-only trace ----------------------------------------------------------------

def test_faults_only_trace_replays(cli, ws, tmp_path):
    """`replay record --events exceptions:page_fault_user`: no writer at all.  The
    engine's loader once read the (empty) writers' columns from a file and
    crashed; every fault is replayed, alike on a second run."""
    lines = [ln for ln in sample_text("pft-2t", 3000) if ln.startswith("#") or "page_fault_user" in ln]
    assert cli("ingest", write(tmp_path, "faults", lines), "-w", ws)[0] == 0
    ref = run_json(cli, ws, "faults")
    comp = run_json(cli, ws, "faults", "mainline")
    assert ref["faults"] == comp["faults"] == sum(not ln.startswith("#") for ln in lines)
    assert ref["fallback_pct"] == comp["fallback_pct"] == 0  # no writer: nothing to fall back from


# -- addresses near 2^64 ------------------------------------------------------------------

def test_faults_above_task_size_are_not_user_vma_faults(cli, ws, tmp_path):
    lines = sample_text("pft-2t", 3000)
    base = write(tmp_path, "base", lines)
    for nth, addr in enumerate(("0xffffffffffffffff", "0xfffffffffffff000", "0xffff888100000000")):
        i = [j for j, ln in enumerate(lines) if "page_fault_user" in ln][100 + nth]
        lines[i] = lines[i].split("address=")[0] + f"address={addr} ip=0x401000 error_code=0x6\n"
    assert cli("ingest", base, "-w", ws)[0] == 0
    assert cli("ingest", write(tmp_path, "high", lines), "-w", ws)[0] == 0
    s, b = ops_json(cli, ws, "high"), ops_json(cli, ws, "base")
    assert s["faults_outside_user_space"] == 3 and b["faults_outside_user_space"] == 0
    rc, out, err = cli("ops", "high", "-w", ws)
    assert rc == 0 and "note: 3 faults at or above TASK_SIZE_MAX" in err
    assert s["user_faults"] == b["user_faults"] - 3
    ops = pl.read_parquet(ws / "ops" / "trace_id=high")
    assert ops.filter(pl.col("kind") == "fault")["address"].max() < 1 << 56
    vmas = pl.read_parquet(ws / "vmas" / "trace_id=high")
    assert vmas["end"].max() <= (1 << 56) - 4096
    for m in MODELS_FAST:
        run_json(cli, ws, "high", m)


def _set(line: str, key: str | None, value: str) -> str:
    """A perf script line with one payload field (or, key None, a sys_exit's return
    value) set to ``value``."""
    if key is None:
        return re.sub(r"(sys_exit_\w+: )\S+", lambda m: m.group(1) + value, line)
    return re.sub(rf"({key}: )0x[0-9a-f]+", lambda m: m.group(1) + value, line)


@pytest.mark.parametrize("edits", [
    [("sys_exit_mmap", 0, None, "0xffffffffffff0000")],  # an address above TASK_SIZE, not an errno
    [("sys_enter_munmap", 0, "len", "0x7ffffffffffff000")],  # a length that runs past the top
    [("sys_enter_mprotect", 0, "len", "0xffffffffffffffff")],  # -1 as printed
    [("sys_enter_mprotect", 0, "start", "0xfffffffffffff000")],
    [("sys_enter_brk", 2, "brk", "0x7ffffffffffff000"), ("sys_exit_brk", 2, None, "0x7ffffffffffff000")],
], ids=["mmap-ret", "munmap-len", "mprotect-len", "mprotect-start", "brk"])
def test_writers_outside_user_space_change_nothing(cli, ws, tmp_path, edits):
    lines = sample_text("pft-2t", 3000)
    for needle, nth, key, value in edits:
        i = [i for i, ln in enumerate(lines) if needle in ln and not ln.startswith("#")][nth]
        lines[i] = _set(lines[i], key, value)
        assert value in lines[i]
    assert cli("ingest", write(tmp_path, "w", lines), "-w", ws)[0] == 0
    s = ops_json(cli, ws, "w")
    assert s["out_of_range_calls"] == 1
    vmas = pl.read_parquet(ws / "vmas" / "trace_id=w")
    assert vmas["end"].max() <= (1 << 56) - 4096 and (vmas["start"] < vmas["end"]).all()
    run_json(cli, ws, "w")


def test_mremap_returning_an_error_pointer(cli, ws, tmp_path):
    lines = (DATA / "ftrace_tgid.txt").read_text().splitlines(keepends=True)
    i = next(i for i, ln in enumerate(lines) if "sys_mremap -> 0x7f594393e000" in ln)
    lines[i] = lines[i].replace("0x7f594393e000", "0xffffffffffff0000")
    assert cli("ingest", write(tmp_path, "mr", lines), "-w", ws)[0] == 0
    s = ops_json(cli, ws, "mr")
    assert s["out_of_range_calls"] == 1 and s["kinds"]["mremap"] == 1


# -- timestamps out of order ------------------------------------------------------------------

def _swap(lines, i, j):
    lines[i], lines[j] = lines[j], lines[i]


PREFIX = re.compile(r"\s*\S+\s+\d+/(\d+)\s+\[(\d+)\]\s+(\d+)\.(\d+):")


def _key(line):
    m = PREFIX.match(line)
    return (int(m[1]), int(m[2])), int(m[3]) * 10**9 + int(m[4])


def test_swapped_lines_are_reported_and_replayed_in_time_order(cli, ws, tmp_path):
    lines = sample_text("mprotect-race", 4000)
    orig = write(tmp_path, "orig", lines)
    # two lines of one thread on one CPU, strictly increasing in time in between
    body = [i for i, ln in enumerate(lines) if not ln.startswith("#")]
    a = next(i for i in body[1000:] if len({_key(ln)[0] for ln in lines[i:i + 6]}) == 1
             and all(_key(x)[1] < _key(y)[1] for x, y in zip(lines[i:i + 5], lines[i + 1:i + 6])))
    b = a + 5
    _swap(lines, a, b)
    rc, out, err = cli("ingest", write(tmp_path, "swapped", lines), "-w", ws, "-O", "json")
    assert rc == 0, err
    j = json.loads(out)
    # both ends of the swap step back in time (1-based lines): the one after the early
    # line, and the late line itself
    assert j["out_of_order"] == 2 and "time goes backwards at 2 events" in err
    assert f"line {a + 2}, line {b + 1})" in err
    tr = pl.read_parquet(ws / "traces" / "trace_id=swapped").to_dicts()[0]
    assert tr["out_of_order"] == 2
    assert cli("ingest", orig, "-w", ws)[0] == 0
    s, o = ops_json(cli, ws, "swapped"), ops_json(cli, ws, "orig")
    assert s["out_of_order_events"] == 2 and o["out_of_order_events"] == 0
    rc, out, err = cli("ops", "swapped", "-w", ws)
    assert rc == 0 and "out_of_order_events" in out and "note: time goes backwards at 2 events" in err
    # sorted back into time order, the ops are the original's (their input lines aside)
    x, y = (pl.read_parquet(ws / "ops" / f"trace_id={t}").drop("seq", "trace_id") for t in ("swapped", "orig"))
    assert x.equals(y)
    for m in MODELS_FAST:
        r, o = run_json(cli, ws, "swapped", m), run_json(cli, ws, "orig", m)
        assert {k: v for k, v in r.items() if k not in ("run_id", "trace_id", "wall_s")} == \
               {k: v for k, v in o.items() if k not in ("run_id", "trace_id", "wall_s")}


def test_many_swaps_never_deadlock_the_replay(cli, ws, tmp_path):
    import random

    lines = sample_text("mprotect-race", 4000)
    body = [i for i, ln in enumerate(lines) if not ln.startswith("#")]
    r = random.Random(1)
    for _ in range(200):
        i = r.randrange(len(body) - 1)
        _swap(lines, body[i], body[min(len(body) - 1, i + r.randrange(1, 50))])
    rc, _, err = cli("ingest", write(tmp_path, "sw", lines), "-w", ws)
    assert rc == 0 and "time goes backwards" in err
    for m in ("mmap_lock", "pervma", "v8"):
        run_json(cli, ws, "sw", m)


# -- perf JSON without tracepoint fields ---------------------------------------------------------

def test_perf_json_without_fields_is_explained_and_not_replayed(cli, ws):
    rc, out, err = cli("ingest", DATA / "perf_json_61_nofields.json", "-w", ws, "--name", "nf")
    assert rc == 0
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "40 of 40 samples" in warn[0] and "no tracepoint fields" in warn[0]
    assert "replay ingest perf.data" in warn[0]  # the fix
    rc, out, err = cli("run", "--model", "v8", "--trace", "nf", "-w", ws)
    assert rc == 1 and "no page faults" in one_error_line(err) and "'nf'" in err
    rc, out, err = cli("sweep", "--models", "v8", "--cpus", "1", "--trace", "nf", "-w", ws)
    assert rc == 1 and "no page faults" in one_error_line(err)
    # with fields, no warning
    rc, out, err = cli("ingest", DATA / "perf_json_fields.json", "-w", ws)
    assert rc == 0 and "warning" not in err


def test_a_timestamp_past_int64_ns_is_malformed_not_wrapped(cli, ws, tmp_path):
    lines = sample_text("pft-2t", 200)
    body = [i for i, ln in enumerate(lines) if not ln.startswith("#")]
    for i, t in ((body[50], "9223372037.000000000"), (body[60], "99999999999999999999.5"),
                 (body[70], "9223372036.854775807")):  # the last one fits, exactly
        lines[i] = re.sub(r"\d+\.\d+:", t + ":", lines[i], count=1)
    rc, out, err = cli("ingest", write(tmp_path, "ts", lines), "-w", ws, "-O", "json")
    assert rc == 0 and json.loads(out)["lines"]["malformed"] == 2
    rj = pl.read_parquet(ws / "rejects" / "trace_id=ts")
    assert rj["line"].to_list() == [body[50] + 1, body[60] + 1] and rj["reason"][0].startswith("timestamp out of range")
    ev = pl.read_parquet(ws / "events" / "trace_id=ts")
    assert ev.filter(pl.col("seq") == body[70] + 1)["ts_ns"][0] == 2**63 - 1 and ev["ts_ns"].min() > 0


def test_ids_that_do_not_fit_their_columns_are_malformed_not_wrapped(cli, ws, tmp_path):
    lines = sample_text("pft-2t", 200)
    # tracepoint lines (perf prints no [cpu] for the minor-faults software events)
    body = [i for i, ln in enumerate(lines) if not ln.startswith("#") and re.search(r"\[\d+\]", ln)]
    pid = re.search(r" (\d+)/\1 ", lines[body[10]]).group(1)
    lines[body[10]] = lines[body[10]].replace(f"{pid}/{pid}", f"{pid}/4294967297", 1)  # tid 2^32 + 1
    lines[body[11]] = lines[body[11]].replace(f"{pid}/{pid}", f"99999999999999999999999/{pid}", 1)
    lines[body[12]] = re.sub(r"\[\d+\]", "[65537]", lines[body[12]], count=1)
    rc, out, err = cli("ingest", write(tmp_path, "ids", lines), "-w", ws, "-O", "json")
    assert rc == 0 and json.loads(out)["lines"]["malformed"] == 3
    assert pl.read_parquet(ws / "rejects" / "trace_id=ids")["line"].to_list() == [body[10] + 1, body[11] + 1, body[12] + 1]


@pytest.mark.parametrize("key,value", [
    ("timestamp", 99999999999999999999), ("timestamp", 1.5), ("pid", 99999999999), ("cpu", 70000), ("cpu", "3"),
    ("tid", None), ("comm", 5), ("address", "0xffffffffffffffffff"), ("address", "-1"), ("len", "0x1ffffffffffffffff"),
])
def test_perf_json_sample_that_does_not_fit_is_rejected_alone(cli, ws, tmp_path, key, value):
    """One bad sample is a reject with its reason, as a bad text line is, not the end of the file."""
    d = json.loads((DATA / "perf_json_fields.json").read_text())
    n = len(d["samples"])
    hit = next(i for i, smp in enumerate(d["samples"]) if key in smp)
    d["samples"][hit][key] = value
    p = tmp_path / "j.json"
    p.write_text(json.dumps(d))
    rc, out, err = cli("ingest", p, "-w", ws, "-O", "json")
    assert rc == 0, err
    j = json.loads(out)
    assert (j["lines"]["lines"], j["lines"]["parsed"], j["lines"]["malformed"]) == (n, n - 1, 1)
    assert j["first_rejects"][0]["line"] == hit + 1


def test_a_deadlock_names_its_cause_in_the_ops(cli, ws, tmp_path):
    """The op builder cannot write ops that deadlock the replay; ops that do (here: a
    fault before the mmap creating its VMA, on one thread) are named as the cause."""
    from replay.ops import ops_table

    lines = sample_text("pft-2t", 200)
    assert cli("ingest", write(tmp_path, "dl", lines), "-w", ws)[0] == 0
    ops_json(cli, ws, "dl")
    p = ws / "ops" / "trace_id=dl" / "part-0.parquet"
    ops = pl.read_parquet(p)
    w = ops.filter(pl.col("vmas_created").list.len() > 0).row(0, named=True)
    made = w["vmas_created"][0]
    # the first op of the writer's thread becomes a fault on the VMA the writer creates
    first = ops.filter(pl.col("tid") == w["tid"])["op_id"].min()
    assert first < w["op_id"]
    bad = ops.with_columns(
        pl.when(pl.col("op_id") == first).then(pl.lit("fault")).otherwise(pl.col("kind").cast(pl.Utf8)).cast(ops["kind"].dtype).alias("kind"),
        pl.when(pl.col("op_id") == first).then(made).otherwise(pl.col("vma_id")).alias("vma_id"),
        pl.when(pl.col("op_id") == first).then(False).otherwise(pl.col("kernel")).alias("kernel"))
    import pyarrow.parquet as pq

    t = ops_table(bad)  # keep the build id the workspace pairs ops with vmas by
    pq.write_table(t.replace_schema_metadata({**pq.read_schema(p).metadata, **t.schema.metadata}), p)
    rc, out, err = cli("run", "--model", "v8", "--trace", "dl", "-w", ws)
    line = one_error_line(err)
    assert rc == 1 and "deadlocked" in line and "not in causal order" in line and f"op {first}" in line
    assert "replay ops dl" in line
