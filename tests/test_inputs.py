"""Inputs people already have (issue 12): trace.dat, perf trace, perf page-faults
samples, other architectures, ftrace's non-event lines, raw trace clocks, perf's own
failures and default trace names.  Fixtures: tests/data/README.md says where each
line came from; trace.dat and perf.data are recorded here at test time."""

import os
import shutil
import subprocess
import sys

import polars as pl
import pytest

from conftest import DATA, PERF_OK, TRACEFS_OK, needs_perf
from replay.ingest import scan
from replay.ingest.text import TextDecoder

PROG = "import mmap\nm = mmap.mmap(-1, 1 << 16)\nfor i in range(0, 1 << 16, 4096):\n    m[i] = 1\nm.close()\n"


def decode(path_or_bytes, dialect=scan.DIALECT_PERF, arch="x86_64"):
    text = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    d = TextDecoder(dialect, arch)
    ev, rj, n = d.decode(text, 1)
    return d.counts, pl.from_arrow(ev), pl.from_arrow(rj)


def events(ws, name):
    return pl.read_parquet(ws / "events" / f"trace_id={name}" / "part-0.parquet")


def trace_row(ws, name):
    return pl.read_parquet(ws / "traces" / f"trace_id={name}" / "part-0.parquet").to_dicts()[0]


def one_line_error(cli, *args):
    rc, out, err = cli(*args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


# -- trace.dat -------------------------------------------------------------------------

def _record_trace_dat(out: str) -> None:
    """tracefs events on an instance of our own (the top-level buffer belongs to the
    machine), the workload filtered by set_event_pid, then ``trace-cmd extract``
    (``trace-cmd record`` cannot enable ftrace in our VMs)."""
    inst = f"replay_test_{os.getpid()}"
    root = f"/sys/kernel/tracing/instances/{inst}"
    os.mkdir(root)
    try:
        with open(f"{root}/tracing_on", "w") as f:  # a new instance starts with tracing on, for every task
            f.write("0")
        for ev in ("exceptions/page_fault_user", "syscalls/sys_enter_mmap", "syscalls/sys_exit_mmap",
                   "syscalls/sys_enter_munmap", "syscalls/sys_exit_munmap"):
            with open(f"{root}/events/{ev}/enable", "w") as f:
                f.write("1")
        subprocess.run(["sh", "-c", f"echo $$ > {root}/set_event_pid; echo 1 > {root}/tracing_on; "
                                    f"exec {sys.executable} -c '{PROG}'"], check=True)
        with open(f"{root}/tracing_on", "w") as f:
            f.write("0")
        subprocess.run(["trace-cmd", "extract", "-B", inst, "-o", out], check=True, capture_output=True)
    finally:
        if os.path.isdir(root):  # trace-cmd extract removes the instance itself
            with open(f"{root}/events/enable", "w") as f:
                f.write("0")
            os.rmdir(root)


@pytest.fixture(scope="module")
def trace_dat(tmp_path_factory):
    if not (TRACEFS_OK and shutil.which("trace-cmd")):
        pytest.skip("needs tracefs and trace-cmd")
    out = str(tmp_path_factory.mktemp("tracedat") / "trace.dat")
    _record_trace_dat(out)
    return out


def test_trace_dat_is_read_through_trace_cmd_report(cli, ws, trace_dat):
    with open(trace_dat, "rb") as f:
        assert f.read(10) == b"\x17\x08\x44tracing"
    rc, out, err = cli("ingest", trace_dat, "-w", ws, "--strict")
    assert rc == 0, err
    tr = trace_row(ws, "trace")
    report = subprocess.run(["trace-cmd", "report", "-i", trace_dat], capture_output=True, text=True).stdout
    faults = sum(1 for ln in report.splitlines() if " page_fault_user: " in ln)
    df = events(ws, "trace")
    assert tr["format"] == "trace-dat" and faults > 10
    assert df.filter(pl.col("event") == "page_fault_user").height == faults
    # the instance buffer's "replay_test_N:" prefix is not part of the comm
    assert set(df["comm"].unique().to_list()) <= {"python3", os.path.basename(sys.executable)[:15], "sh"}
    # trace-cmd report -t: nanoseconds, not microseconds rounded
    assert (df["ts_ns"] % 1000 != 0).any()
    uname = os.uname()
    assert (tr["kernel"], tr["hostname"], tr["arch"]) == (uname.release, uname.nodename, "x86_64")
    assert df.filter(pl.col("event") == "sys_exit_mmap").height > 0


def test_trace_dat_with_a_raw_clock_is_refused(cli, ws, trace_dat, tmp_path):
    # the same file with its saved trace clock set to counter (trace-cmd dump --clock
    # prints the option as "[local] global counter ..."; edited in place, same length)
    data = open(trace_dat, "rb").read()
    assert data.count(b"[local] global counter") == 1
    edited = tmp_path / "counter.dat"
    edited.write_bytes(data.replace(b"[local] global counter", b"local global [counter]"))
    line = one_line_error(cli, "ingest", edited, "-w", ws)
    assert "trace clock 'counter'" in line and "nanoseconds" in line


def test_trace_dat_without_trace_cmd(cli, ws, trace_dat, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    line = one_line_error(cli, "ingest", trace_dat, "-w", ws)
    assert "needs trace-cmd" in line and "apt-get install trace-cmd" in line and "trace-cmd report -t" in line


def test_trace_cmd_report_of_an_instance_buffer():
    c, df, rj = decode(DATA / "tracecmd_instance.txt", scan.DIALECT_FTRACE)
    assert c.malformed == 0 and c.header == 1 and c.parsed == c.lines - 1
    assert df["comm"].unique().to_list() == ["python3"] and df["tid"].unique().to_list() == [7434]
    f = df.filter(pl.col("event") == "page_fault_user").to_dicts()[1]
    assert (f["address"], f["ip"], f["error_code"], f["write"]) == (0x7FADA2434E06, 0x7FADA241C7AD, 0x6, True)
    assert df["ts_ns"][0] == 9931_455_534_048


# -- perf trace ------------------------------------------------------------------------

def test_perf_trace_output(cli, ws):
    rc, out, err = cli("ingest", DATA / "perf_trace.txt", "-w", ws)
    assert rc == 0, err
    tr = trace_row(ws, "perf_trace")
    assert tr["format"] == "perf-trace" and tr["malformed"] == 0
    assert tr["parsed"] + tr["lost_records"] == tr["lines"] and tr["lost_records"] == 3 and tr["lost_events"] == 2115 + 9 + 5
    df = events(ws, "perf_trace")
    # "0.301 ( 0.022 ms): python3/8640 mmap(len: 8192, prot: READ|WRITE, flags: PRIVATE|ANONYMOUS) = 0x7fc17cb89000"
    line = df.filter(pl.col("seq") == 15).sort("ts_ns").to_dicts()
    assert [r["event"] for r in line] == ["sys_enter_mmap", "sys_exit_mmap"]
    e, x = line
    assert (e["ts_ns"], x["ts_ns"], e["comm"], e["tid"], e["pid"], e["cpu"]) == (301_000, 323_000, "python3", 8640, None, None)
    assert (e["address"], e["len"], e["prot"], e["flags"], e["fd"], e["off"]) == (0, 8192, 3, 0x22, None, 0)
    assert x["ret"] == 0x7FC17CB89000
    # file-backed: "fd: 4, off: 0x26000", flags PRIVATE|FIXED|DENYWRITE, prot READ|EXEC
    m = df.filter((pl.col("event") == "sys_enter_mmap") & (pl.col("address") == 0x7FC17C9C4000)).to_dicts()[0]
    assert (m["len"], m["prot"], m["flags"], m["fd"], m["off"]) == (1400832, 5, 0x2 | 0x10 | 0x800, 4, 0x26000)
    # faults: the anonymous and /dev/zero ones carry their address; kernel-mode ("?k") ones are page_fault_kernel
    f = df.filter(pl.col("seq") == 16).to_dicts()[0]
    assert (f["event"], f["address"], f["write"], f["tracepoint"]) == ("page_fault_user", 0x7FC17CB89008, None, "minfault")
    k = df.filter(pl.col("seq") == 1).to_dicts()[0]
    assert (k["event"], k["address"]) == ("page_fault_kernel", 0x56335F48B424)
    z = df.filter(pl.col("raw").str.contains("/dev/zero", literal=True)).to_dicts()
    assert [r["address"] for r in z] == [0x7FEAD128D000, 0x7FEAD128E000, 0x7FEAD128F000]
    # file@offset is not an address: other
    lib = df.filter(pl.col("raw").str.contains("libc.so.6@0x1d4868", literal=True)).to_dicts()[0]
    assert lib["event"] == "other" and lib["address"] is None
    # the interrupted call ("... (         ): readlink/8672 mmap(...) ...") is an enter without its exit
    i = df.filter(pl.col("address") == 0x7F525282D000).to_dicts()
    assert [r["event"] for r in i] == ["sys_enter_mmap"]
    assert "file-backed mappings" in err and "do not say whether they read or wrote" in err
    rc, out, err = cli("ops", "perf_trace", "-w", ws)  # two events per line, no CPU, no pid: the op builder copes
    assert rc == 0, err


def test_perf_trace_bad_lines_are_rejects(cli, ws, tmp_path):
    lines = (DATA / "perf_trace.txt").read_text().splitlines()
    lines[14] = lines[14].replace("prot: READ|WRITE", "prot: READ|BOGUS")
    p = tmp_path / "pt.txt"
    p.write_text("\n".join(lines) + "\n")
    rc, out, err = cli("ingest", p, "-w", ws)
    assert rc == 0 and trace_row(ws, "pt")["malformed"] == 1 and "malformed line 15" in err
    rc, _, err = cli("ingest", p, "-w", ws, "--name", "pt2", "--strict")
    assert rc == 1 and "line 15" in err and "--strict" in err


# -- perf record -e page-faults -d -------------------------------------------------------

def test_page_fault_samples_become_faults():
    c, df, rj = decode(DATA / "perf_pagefaults_addr.txt")
    assert c.malformed == 0
    s = df.filter(pl.col("tracepoint") == "page-faults")
    assert s.height == c.fault_samples > 0 and set(s["event"].unique()) <= {"page_fault_user", "page_fault_kernel"}
    # "1 page-faults:     7f37b5796b70     7f37b5796b70": addr then ip (builtin-script.c)
    r = s.filter(pl.col("address") == 0x7F37B5796B70).to_dicts()[0]
    assert (r["event"], r["ip"], r["write"], r["error_code"]) == ("page_fault_user", 0x7F37B5796B70, None, None)
    # "5579833b8424 ffffffff8177819a": the kernel (elf_load) touching user memory
    k = s.filter(pl.col("address") == 0x5579833B8424).to_dicts()[0]
    assert (k["event"], k["ip"]) == ("page_fault_kernel", 0xFFFFFFFF8177819A)
    # the tracepoint's own line for the same fault keeps its error code and says the access
    t = df.filter((pl.col("tracepoint") == "exceptions:page_fault_user") & (pl.col("address") == 0x7F37B57AFE06)).to_dicts()[0]
    assert (t["error_code"], t["write"]) == (0x6, True)
    assert c.fault_access_unknown == s.height


def test_page_fault_samples_without_addr_or_sampled():
    c, df, _ = decode(DATA / "perf_pagefaults_default.txt")  # default perf script fields: ip, no addr
    assert c.malformed == 0 and c.fault_samples == 0 and c.fault_samples_no_addr == df.height
    assert set(df["event"].unique()) == {"other"}
    c, df, _ = decode(DATA / "perf_pagefaults_sampled.txt")  # perf record's default: 4000 Hz, periods > 1
    assert c.fault_samples == df.height and c.fault_samples_period == 9 and c.fault_samples_max_period == 74


@needs_perf
def test_perf_data_of_page_fault_samples(cli, ws, tmp_path):
    data = tmp_path / "pf.data"
    subprocess.run(["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d", "-o", data, "--",
                    sys.executable, "-c", PROG], check=True, capture_output=True)
    rc, out, err = cli("ingest", data, "-w", ws, "--strict")
    assert rc == 0, err
    df = events(ws, "pf")
    faults = df.filter(pl.col("event").cast(pl.Utf8).str.starts_with("page_fault"))
    assert faults.height == df.height > 16 and faults["address"].null_count() == 0 and faults["write"].null_count() == faults.height
    assert trace_row(ws, "pf")["arch"] == "x86_64"  # from perf's header
    # the 16 pages the program touched are among the faults, at their addresses
    rc, out, err = cli("ops", "pf", "-w", ws)
    assert rc == 0, err


@needs_perf
def test_perf_script_failure_shows_perfs_message(cli, ws, tmp_path):
    data = tmp_path / "pf.data"
    subprocess.run(["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d", "-o", data, "--",
                    sys.executable, "-c", PROG], check=True, capture_output=True)
    cut = tmp_path / "cut.data"
    cut.write_bytes(data.read_bytes()[:20000])  # the header survives, the samples do not
    line = one_line_error(cli, "ingest", cut, "-w", ws)
    assert "perf script failed on" in line and "failed to process type" in line and "no event parsed" not in line


# -- other architectures -----------------------------------------------------------------

def test_riscv_page_faults_by_scause():
    c, df, rj = decode(DATA / "riscv_page_faults_constructed.txt", arch="riscv64")
    assert c.malformed == 0
    got = [(r["event"], r["address"], r["ip"], r["error_code"], r["write"]) for r in df.to_dicts()]
    assert got == [
        ("page_fault_user", 0x3FB7E15B70, 0x3FB7E15B70, 0xC, False),  # instruction fetch
        ("page_fault_user", 0x3FB7E2EE06, 0x3FB7E167AD, 0xF, True),  # store
        ("page_fault_user", 0x3FB7E2DA80, 0x3FB7E167C9, 0xD, False),  # load
        ("page_fault_kernel", 0x2AB8E4C424, 0xFFFFFFFF80A3C19A, 0xF, True),
        ("page_fault_user", 0x3FB7E2C910, 0x3FB7E16A07, 0xF, True),  # posted form: epc=, cause=
        ("page_fault_user", 0x3FB7E2410F, 0x3FB7E0EA34, 0xD, False),
    ]


def test_arch_from_the_header_or_the_option(cli, ws, tmp_path):
    rc, out, err = cli("ingest", DATA / "riscv_page_faults_constructed.txt", "-w", ws, "--name", "rv")
    assert rc == 0 and trace_row(ws, "rv")["arch"] == "riscv64"
    assert events(ws, "rv")["write"].to_list() == [False, True, False, True, True, False]
    rc, out, err = cli("ingest", DATA / "ftrace_tgid.txt", "-w", ws, "--name", "ft")
    assert trace_row(ws, "ft")["arch"] == "x86_64 (assumed)"
    rc, out, err = cli("ingest", DATA / "ftrace_tgid.txt", "-w", ws, "--name", "ft64", "--arch", "arm64")
    assert rc == 0 and trace_row(ws, "ft64")["arch"] == "arm64"
    ev = events(ws, "ft64").filter(pl.col("event") == "page_fault_user")
    assert ev.height > 0 and ev["write"].null_count() == ev.height  # arm64: the error code says nothing
    bad = tmp_path / "s390.txt"
    bad.write_text("# arch : s390x\n" + (DATA / "perf_default.txt").read_text())
    line = one_line_error(cli, "ingest", bad, "-w", ws)
    assert "s390x" in line and "--arch" in line
    rc, out, err = cli("ingest", DATA / "perf_default.txt", "-w", ws, "--arch", "mips")
    assert rc == 2 and "Traceback" not in err


def test_syscall_numbers_follow_the_architecture(cli, ws, tmp_path):
    src = (DATA / "perf_json_fields.json").read_text()
    assert cli("ingest", DATA / "perf_json_fields.json", "-w", ws, "--name", "x86", "-O", "json")[0] == 0
    x86 = trace_row(ws, "x86")
    assert x86["arch"] == "x86_64"  # the JSON header's
    # the same samples as an arm64 recording would number them (include/uapi/asm-generic/unistd.h)
    generic = {'"__syscall_nr": "9"': '"__syscall_nr": "222"', '"__syscall_nr": "10"': '"__syscall_nr": "226"',
               '"__syscall_nr": "11"': '"__syscall_nr": "215"', '"__syscall_nr": "12"': '"__syscall_nr": "214"'}
    arm = src.replace('"arch": "x86_64"', '"arch": "aarch64"')
    for a, b in generic.items():
        arm = arm.replace(a, b)
    p = tmp_path / "arm.json"
    p.write_text(arm)
    assert cli("ingest", p, "-w", ws)[0] == 0
    assert trace_row(ws, "arm")["arch"] == "arm64"
    def count(n):
        ev = events(ws, n).with_columns(pl.col("event").cast(pl.Utf8))
        sys_ = ev.filter(pl.col("event").str.starts_with("sys_")).group_by("event").len().sort("event").rows()
        return sys_, ev.filter(pl.col("event").str.starts_with("page_fault")).height

    assert count("arm") == count("x86") and count("x86")[0]
    # x86 numbers read as arm64's name nothing of ours
    assert cli("ingest", DATA / "perf_json_fields.json", "-w", ws, "--name", "wrong", "--arch", "arm64")[0] == 0
    assert not events(ws, "wrong")["event"].cast(pl.Utf8).str.starts_with("sys_").any()


# -- ftrace lines that are not trace events ------------------------------------------------

def test_stack_traces_in_ftrace_text(cli, ws):
    c, df, rj = decode(DATA / "ftrace_stacktrace.txt", scan.DIALECT_FTRACE)
    assert c.malformed == 0 and c.callchain > 20
    assert {"<user stack trace>", "<stack trace>"} <= set(df["tracepoint"].unique().to_list())
    assert cli("ingest", DATA / "ftrace_stacktrace.txt", "-w", ws, "--strict")[0] == 0


def test_function_tracer_lines_are_other_events(cli, ws):
    c, df, rj = decode(DATA / "ftrace_function_lkml.txt", scan.DIALECT_FTRACE)
    assert c.malformed == 0 and c.callchain == 16 and c.header == 11
    fn = df.filter(pl.col("tracepoint") == "function")
    assert fn.height == 5 and set(fn["event"].unique()) == {"other"}
    assert fn.to_dicts()[0] | {} == fn.to_dicts()[0] | {"comm": "modprobe", "tid": 1720, "cpu": 1,
                                                         "ts_ns": 823_724_284_000, "raw": "ebtables_init <-do_one_initcall"}
    rc, out, err = cli("ingest", DATA / "ftrace_function_lkml.txt", "-w", ws, "--strict")
    assert rc == 0, err


def test_function_graph_lines_are_other_events(cli, ws):
    c, df, rj = decode(DATA / "ftrace_function_graph_lkml.txt", scan.DIALECT_FTRACE)
    assert c.malformed == 0 and c.parsed == c.lines
    fg = df.filter(pl.col("tracepoint") == "function_graph")
    assert fg.height == 8 and fg["tid"].null_count() == 8 and fg["ts_ns"].null_count() == 8
    assert fg["cpu"].to_list() == [3, 3, 3, 3, 3, 2, 2, 2]
    assert fg.to_dicts()[3]["raw"] == "3)   + 10.033 us | __do_page_fault();"
    # the event printed inside the graph names no task or time: kept, not a replayable fault
    assert "/* page_fault_user: address=0x7fadaba40fd8" in fg.to_dicts()[6]["raw"]
    assert df.filter(pl.col("event") == "page_fault_user")["tid"].to_list() == [911]
    rc, out, err = cli("ingest", DATA / "ftrace_function_graph_lkml.txt", "-w", ws, "--strict", "--input-format", "ftrace")
    assert rc == 0, err
    rc, out, err = cli("ops", "ftrace_function_graph_lkml", "-w", ws)
    assert rc == 0, err


@pytest.mark.parametrize("name,clock", [("ftrace_counter_clock.txt", "counter"), ("ftrace_x86tsc_clock.txt", "x86-tsc")])
def test_raw_trace_clocks_are_refused(cli, ws, name, clock):
    c, df, _ = decode(DATA / name, scan.DIALECT_FTRACE)
    assert c.raw_clock == c.parsed > 0
    line = one_line_error(cli, "ingest", DATA / name, "-w", ws)
    assert "raw trace-clock counts" in line and "echo local > trace_clock" in line


def test_fractional_timestamps_are_not_raw_clocks():
    for name in ("ftrace_tgid.txt", "ftrace_noirq.txt", "tracecmd.txt", "tracecmd_ns.txt"):
        c, _, _ = decode(DATA / name, scan.DIALECT_FTRACE)
        assert c.raw_clock == 0 and c.parsed > 0


# -- default names ----------------------------------------------------------------------------

def test_default_names_follow_one_rule():
    from replay.ingesting import default_name

    assert [default_name(p) for p in ("a/x.txt.zst", "x.json", "perf.data", "trace.dat", "x.data.txt", "x.gz",
                                      "run.1.txt", "-")] == ["x", "x", "perf", "trace", "x.data", "x", "run.1", "stdin"]


def test_default_name_collision_names_both_files_and_the_fix(cli, ws, tmp_path):
    a = tmp_path / "x.txt"
    a.write_bytes((DATA / "perf_default.txt").read_bytes())
    b = tmp_path / "x.json"
    b.write_bytes((DATA / "perf_json_fields.json").read_bytes())
    assert cli("ingest", a, "-w", ws)[0] == 0
    line = one_line_error(cli, "ingest", b, "-w", ws)
    assert "already in" in line and str(a) in line and "same default name" in line and "--name" in line
    assert cli("ingest", b, "-w", ws, "--name", "x-json")[0] == 0
    # the same file again is a re-ingest, not a collision: --replace as before
    line = one_line_error(cli, "ingest", a, "-w", ws)
    assert "same default name" not in line and "--replace" in line
