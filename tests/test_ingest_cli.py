"""`replay ingest` / `replay traces` driven as a user drives them."""

import gzip
import json
import os
import subprocess
import sys

import polars as pl
import pytest
import zstandard

from conftest import DATA


def test_ingest_prints_counts_and_writes_dataset(cli, ws):
    rc, out, err = cli("ingest", DATA / "perf_default.txt", "-w", ws)
    assert rc == 0, err
    assert "page_fault_user" in out and "line accounting" in out and "wrote" in out
    df = pl.read_parquet(ws / "events" / "trace_id=perf_default" / "part-0.parquet")
    assert df.height == 168
    tr = pl.read_parquet(ws / "traces" / "trace_id=perf_default" / "part-0.parquet").to_dicts()[0]
    assert (tr["format"], tr["lines"], tr["parsed"], tr["malformed"], tr["schema_version"]) == ("perf-script", 168, 168, 0, 1)
    import hashlib
    assert tr["sha256"] == hashlib.sha256((DATA / "perf_default.txt").read_bytes()).hexdigest()
    import pyarrow.parquet as pq
    md = pq.read_metadata(ws / "events" / "trace_id=perf_default" / "part-0.parquet").metadata
    assert md[b"replay.schema_version"] == b"1" and md[b"replay.lines"] == b"168"


def test_json_output_and_traces_listing(cli, ws):
    rc, out, _ = cli("ingest", DATA / "ftrace_tgid.txt", "-w", ws, "--name", "ft", "-O", "json")
    assert rc == 0
    d = json.loads(out)
    assert d["format"] == "ftrace" and d["lines"]["header"] == 12 and sum(d["events"].values()) == d["lines"]["parsed"]
    rc, out, _ = cli("traces", "-w", ws, "-f", "json")
    rows = json.loads(out)
    assert [r["trace_id"] for r in rows] == ["ft"] and rows[0]["nr_cpus"] == 2
    rc, out, _ = cli("traces", "-w", ws, "-f", "csv")
    assert out.splitlines()[0].startswith("trace_id,format,events") and out.splitlines()[1].startswith("ft,ftrace,122")


def test_reingest_refused_then_replaced(cli, ws):
    assert cli("ingest", DATA / "tracecmd.txt", "-w", ws)[0] == 0
    rc, _, err = cli("ingest", DATA / "tracecmd.txt", "-w", ws)
    assert rc == 1 and "already in" in err and "--replace" in err and "Traceback" not in err
    rc, out, _ = cli("ingest", DATA / "tracecmd_ns.txt", "-w", ws, "--name", "tracecmd", "--replace")
    assert rc == 0
    df = pl.read_parquet(ws / "events" / "trace_id=tracecmd")
    assert df["ts_ns"][0] == 337_958_036_958
    assert not list(ws.glob(".stage-*"))


@pytest.mark.parametrize("opener", ["gzip", "zstd", "stdin"])
def test_compressed_and_stdin(cli, ws, tmp_path, opener, monkeypatch):
    raw = (DATA / "perf_ns_pid_lost.txt").read_bytes()
    if opener == "gzip":
        p = tmp_path / "t.txt.gz"
        p.write_bytes(gzip.compress(raw))
        args = [p]
    elif opener == "zstd":
        p = tmp_path / "t.txt.zst"
        p.write_bytes(zstandard.ZstdCompressor().compress(raw))
        args = [p]
    else:
        import io
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
        args = ["-", "--name", "t"]
    rc, out, err = cli("ingest", *args, "-w", ws, "-O", "json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["lines"]["parsed"] == 136 and d["lines"]["lost_records"] == 9 and d["lost_events"] > 0
    assert (ws / "events" / "trace_id=t").exists()


def _traces(ws):
    return sorted(p.name for p in (ws / "traces").iterdir()) if (ws / "traces").exists() else []


def _err(cli, ws, *args):
    before = _traces(ws)
    rc, out, err = cli("ingest", *args, "-w", ws)
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("replay: error: ") and "Traceback" not in err, err
    assert _traces(ws) == before and not list(ws.glob(".stage-*"))
    return rc, lines[0]


def test_bad_inputs_one_line_errors(cli, ws, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "is empty" in _err(cli, ws, empty)[1]
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    assert "binary" in _err(cli, ws, binary)[1]
    prose = tmp_path / "notes.txt"
    prose.write_text("hello world\nthis is not a trace\n")
    assert "cannot tell the format" in _err(cli, ws, prose)[1]
    assert "does not look like ftrace" in _err(cli, ws, DATA / "perf_default.txt", "--input-format", "ftrace")[1]
    assert "not a perf.data" in _err(cli, ws, DATA / "perf_default.txt", "--input-format", "perf-data")[1]
    assert "not perf JSON" in _err(cli, ws, DATA / "perf_default.txt", "--input-format", "perf-json")[1]
    assert "no such file" in _err(cli, ws, tmp_path / "missing.txt")[1]
    bad_gz = tmp_path / "cut.txt.gz"
    bad_gz.write_bytes(gzip.compress((DATA / "perf_default.txt").read_bytes())[:-40])
    assert "cannot" in _err(cli, ws, bad_gz)[1]
    rc, _ = _err(cli, ws, DATA / "perf_default.txt", "--name", "../x")
    assert rc == 1


def test_truncated_last_line(cli, ws, tmp_path):
    text = (DATA / "perf_default.txt").read_bytes()
    cut = tmp_path / "cut.txt"
    cut.write_bytes(text[: text.rfind(b"address=") + 5])  # ends mid-record, no newline
    assert "truncated" in _err(cli, ws, cut)[1]


def test_malformed_lines_kept_with_line_numbers_and_strict(cli, ws, tmp_path):
    lines = (DATA / "perf_default.txt").read_text().splitlines(keepends=True)
    lines.insert(5, "this line was mangled by a terminal\n")
    lines.insert(50, lines[49][:60] + "\n")  # cut mid-prefix
    p = tmp_path / "mangled.txt"
    p.write_text("".join(lines))
    rc, out, err = cli("ingest", p, "-w", ws)
    assert rc == 0 and "malformed line 6" in err
    rj = pl.read_parquet(ws / "rejects" / "trace_id=mangled" / "part-0.parquet")
    assert rj["line"].to_list() == [6, 51] and rj["text"][0] == "this line was mangled by a terminal"
    tr = pl.read_parquet(ws / "traces" / "trace_id=mangled" / "part-0.parquet").to_dicts()[0]
    assert tr["parsed"] + tr["malformed"] == tr["lines"] == len(lines)
    rc, line = _err(cli, ws, p, "--name", "strict", "--strict")
    assert "line 6" in line and "--strict" in line


def test_interrupted_ingest_leaves_nothing(cli, ws, monkeypatch):
    from replay.ingest import text

    real = text.TextDecoder.assemble

    def boom(self, sc, first_line):
        real(self, sc, first_line)
        raise KeyboardInterrupt

    monkeypatch.setattr(text.TextDecoder, "assemble", boom)
    rc, _, err = cli("ingest", DATA / "perf_default.txt", "-w", ws)
    assert rc == 130 and "nothing was written" in err
    assert not list(ws.glob(".stage-*")) and not (ws / "events").exists()
    monkeypatch.setattr(text.TextDecoder, "assemble", real)
    assert cli("ingest", DATA / "perf_default.txt", "-w", ws)[0] == 0


def test_perf_json(cli, ws):
    rc, out, _ = cli("ingest", DATA / "perf_json_fields.json", "-w", ws, "-O", "json")
    assert rc == 0
    j = json.loads(out)
    rc, out, _ = cli("ingest", DATA / "perf_json_fields.perf-script.txt", "-w", ws, "-O", "json")
    t = json.loads(out)
    assert j["format"] == "perf-json" and j["events"] == t["events"]  # same samples, same events
    # exit_mmap's mm is a JSON field but not in the text's "mt_mod %p" payload
    a = pl.read_parquet(ws / "events" / "trace_id=perf_json_fields").filter(pl.col("event") != "exit_mmap")
    b = pl.read_parquet(ws / "events" / "trace_id=perf_json_fields.perf-script").filter(pl.col("event") != "exit_mmap")
    a, b = (x.drop("seq", "tracepoint", "raw", "ip") for x in (a, b))
    assert a.select(pl.exclude("comm", "event")).equals(b.select(pl.exclude("comm", "event")))
    rc, out, err = cli("ingest", DATA / "perf_json_61_nofields.json", "-w", ws, "-O", "json")
    assert rc == 0 and json.loads(out)["events"] == {"other": 40}


def test_console_script_help_and_usage_error():
    exe = os.path.join(os.path.dirname(sys.executable), "replay")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "ingest" in r.stdout and "record" in r.stdout
    r = subprocess.run([exe, "ingest"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_perf_data_without_perf_and_corrupt(cli, ws, tmp_path, monkeypatch):
    fake = tmp_path / "x.perf.data"
    fake.write_bytes(b"PERFILE2" + bytes(4096))
    monkeypatch.setenv("PATH", str(tmp_path))  # no perf on PATH
    rc, line = _err(cli, ws, fake)
    assert "needs perf" in line and "linux-perf" in line
    monkeypatch.undo()
    import shutil
    if shutil.which("perf"):
        rc, line = _err(cli, ws, fake)
        assert "perf cannot read" in line or "perf script failed" in line
