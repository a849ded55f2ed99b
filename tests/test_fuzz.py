"""Fuzzing: the compiled scanners (no input may crash them, every line is accounted
for, lines built from random values parse back to those values), and the whole path -
ingest, ops and a replay under every model - on mutated real traces."""

import hashlib
import json
import os
import re
import string
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.ingest import scan
from replay.ingest.text import TextDecoder, scan_chunk
from conftest import DATA, SAMPLES

REAL = [ln for f in ("perf_default.txt", "perf_callchain.txt", "perf_ns_pid_lost.txt", "ftrace_tgid.txt",
                     "ftrace_pipe_lost.txt", "tracecmd_ns.txt")
        for ln in (DATA / f).read_bytes().splitlines(keepends=True)]


def _check(data: bytes, dialect: int) -> None:
    d = TextDecoder(dialect)
    ev, rj, n = d.decode(data, 1)
    c = d.counts
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert c.lines == n == len(lines)
    # every line is exactly one of: an event row, a reject row, or a non-data line
    # (header, blank, callchain, lost record) - checked against the rows themselves, not
    # against the counts they were tallied from
    ev_lines = ev.column("seq").to_pylist()
    rj_lines = rj.column("line").to_pylist()
    assert ev.num_rows == c.parsed and rj.num_rows == c.malformed
    assert len(set(ev_lines)) == len(ev_lines) and len(set(rj_lines)) == len(rj_lines)
    assert not set(ev_lines) & set(rj_lines) and set(ev_lines) | set(rj_lines) <= set(range(1, n + 1))
    rest = set(range(1, n + 1)) - set(ev_lines) - set(rj_lines)
    assert len(rest) == c.header + c.blank + c.callchain + c.lost_records
    blank = {i for i, ln in enumerate(lines, 1) if not ln.strip(b" \t\r")}  # the scanner's whitespace
    assert blank <= rest  # a blank line is no event and no reject
    ev.validate(full=True)
    rj.validate(full=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([scan.DIALECT_PERF, scan.DIALECT_FTRACE]))
def test_random_bytes(data, dialect):
    _check(data, dialect)


@st.composite
def mutated_lines(draw):
    lines = draw(st.lists(st.sampled_from(REAL), min_size=1, max_size=6))
    out = []
    for ln in lines:
        b = bytearray(ln)
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["flip", "cut", "dup", "ins"]))
            if not b:
                break
            i = draw(st.integers(0, len(b) - 1))
            if op == "flip":
                b[i] = draw(st.integers(0, 255))
            elif op == "cut":
                del b[i:]
            elif op == "dup":
                b[i:i] = b[i: i + draw(st.integers(1, 20))]
            else:
                b[i:i] = draw(st.sampled_from([b":", b" ", b"[", b"]", b"0x", b"=", b"(", b")", b"->", b"-", b"\t", b"\r"]))
        out.append(bytes(b))
    return b"".join(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_lines(), st.sampled_from([scan.DIALECT_PERF, scan.DIALECT_FTRACE]))
def test_mutated_real_lines(data, dialect):
    _check(data, dialect)


comm_chars = st.text(alphabet=string.ascii_letters + string.digits + " :-#/_.[]", min_size=1, max_size=15).filter(
    lambda s: s.strip() == s and s)


@settings(max_examples=300, deadline=None)
@given(comm=comm_chars, pid=st.integers(1, 4_194_304), tid=st.integers(1, 4_194_304), cpu=st.integers(0, 1023),
       sec=st.integers(0, 10**7), ns=st.integers(0, 10**9 - 1), addr=st.integers(0, 2**64 - 1),
       ip=st.integers(0, 2**64 - 1), code=st.integers(0, 2**32 - 1))
def test_perf_line_roundtrip(comm, pid, tid, cpu, sec, ns, addr, ip, code):
    line = (f"{comm:>16} {pid:5d}/{tid:<5d} [{cpu:03d}] {sec:5d}.{ns:09d}:           exceptions:page_fault_user: "
            f"address={addr:#x} ip={ip:#x} error_code={code:#x}\n").encode()
    sc = scan_chunk(line, scan.DIALECT_PERF)
    assert sc.k == 1, line
    v = sc.vals[:, 0]
    assert bytes(sc.buf[sc.comm_s[0]:sc.comm_e[0]]).decode() == comm
    assert (int(sc.pid[0]), int(sc.tid[0]), int(sc.cpu[0]), int(sc.ts[0])) == (pid, tid, cpu, sec * 10**9 + ns)
    assert (int(v[scan.F["address"]]), int(v[scan.F["ip"]]), int(v[scan.F["error_code"]])) == (addr, ip, code)


@settings(max_examples=300, deadline=None)
@given(comm=st.text(alphabet=string.ascii_letters + string.digits + " :-/_.", min_size=1, max_size=15).filter(lambda s: s.strip() == s),
       tid=st.integers(0, 4_194_304), tgid=st.one_of(st.none(), st.integers(0, 4_194_304)), cpu=st.integers(0, 999),
       us=st.integers(0, 10**12), length=st.integers(0, 2**47), prot=st.integers(0, 7))
def test_ftrace_line_roundtrip(comm, tid, tgid, cpu, us, length, prot):
    tg = "" if tgid is None else f"({tgid:>7}) "
    line = (f"{comm:>16}-{tid:<7} {tg}[{cpu:03d}] d..1. {us // 10**6:5d}.{us % 10**6:06d}: "
            f"sys_mprotect(start: {length:#x}, len: 0x4000, prot: {prot})\n").encode()
    sc = scan_chunk(line, scan.DIALECT_FTRACE)
    assert sc.k == 1, line
    assert bytes(sc.buf[sc.comm_s[0]:sc.comm_e[0]]).decode() == comm
    assert int(sc.tid[0]) == tid and int(sc.pid[0]) == (-2 if tgid is None else tgid) and int(sc.cpu[0]) == cpu
    assert int(sc.ts[0]) == us * 1000
    assert int(sc.vals[scan.F["address"], 0]) == length and int(sc.vals[scan.F["prot"], 0]) == prot
    assert int(sc.hint[0]) == scan.HINT_SYS_ENTER


def test_gather_roundtrip():
    buf = np.frombuffer(b"abcdefghij", np.uint8)
    data, offs = scan.gather(buf, np.array([0, 3, 9]), np.array([2, 3, 10]), np.array([2, 0, 1]))
    assert bytes(data) == b"jab" and offs.tolist() == [0, 1, 3, 3]


# -- the whole path: ingest -> ops -> run under every model, on mutated real traces ----------
#
# Each input is a few hundred lines cut from a bundled sample trace, mutated as traces
# get damaged or edited: lines swapped, dropped or duplicated, digits flipped, values set
# to the extremes of their type, the file cut short.  Whatever the input, every command
# either succeeds or fails with one line naming the cause (exit 1) - never exit 3, never
# a traceback - and ingest accounts for every input line.  An input that ever broke this
# goes into tests/data/fuzz_regressions/, which test_fuzz_regressions replays.

REGRESSIONS = DATA / "fuzz_regressions"
FUZZ_SAMPLES = ("pft-2t", "mprotect-race", "jvm-alloc", "pft-ftrace")
CUT_LINES = 400
EXTREMES = ["0", "0x0", "0x1", "0xfff", "0x1000", "0x7ffffffff000", "0x800000000000", "0x7ffffffffffff000",
            "0x8000000000000000", "0xfffffffffffff000", "0xffffffffffff0000", "0xffffffffffffffff", "0xffffffff",
            "-1", "18446744073709551615", "99999999999999999999999"]
NUMBER = re.compile(rb"0x[0-9a-fA-F]+|\d+")


JSON_SAMPLE = DATA / "perf_json_fields.json"


@lru_cache(maxsize=None)
def _sample_lines(name: str) -> tuple[bytes, ...]:
    with open(SAMPLES / f"{name}.txt.zst", "rb") as f:
        return tuple(zstandard.ZstdDecompressor().stream_reader(f).read().splitlines(keepends=True))


def _mutate(draw, out: list) -> None:
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["swap", "swap", "drop", "dup", "digit", "extreme", "extreme"]))
        i = draw(st.integers(0, len(out) - 1))
        if op == "swap":
            j = min(len(out) - 1, i + draw(st.integers(1, 60)))
            out[i], out[j] = out[j], out[i]
        elif op == "drop" and len(out) > 1:
            del out[i]
        elif op == "dup":
            out.insert(i, out[i])
        else:
            nums = list(NUMBER.finditer(out[i]))
            if nums:
                m = nums[draw(st.integers(0, len(nums) - 1))]
                if op == "digit":
                    k = draw(st.integers(m.start(), m.end() - 1))
                    if out[i][k:k + 1].isdigit():
                        out[i] = out[i][:k] + str(draw(st.integers(0, 9))).encode() + out[i][k + 1:]
                else:
                    out[i] = out[i][:m.start()] + draw(st.sampled_from(EXTREMES)).encode() + out[i][m.end():]


class Mutated(tuple):
    """(file name, bytes), shown short: hypothesis prints failing examples whole."""

    def __repr__(self):
        return f"Mutated({self[0]!r}, {len(self[1]):,} bytes, sha256 {hashlib.sha256(self[1]).hexdigest()[:12]})"


@st.composite
def mutated_traces(draw):
    """(file name, bytes): a cut of a sample trace, mutated."""
    name = draw(st.sampled_from(FUZZ_SAMPLES + ("perf-json",)))
    if name == "perf-json":  # one JSON file, mutated where it is valid JSON
        out = JSON_SAMPLE.read_bytes().splitlines(keepends=True)
        _mutate(draw, out)
        return Mutated((f"{name}-fuzz.json", b"".join(out)))
    lines = _sample_lines(name)
    head = [ln for ln in lines[:100] if ln.startswith(b"#")]
    start = draw(st.integers(len(head), len(lines) - CUT_LINES))
    out = list(head[: draw(st.integers(0, len(head)))]) + list(lines[start:start + CUT_LINES])
    _mutate(draw, out)
    data = b"".join(out)
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of them cut short
        data = data[: draw(st.integers(0, len(data)))]
    return Mutated((f"{name}-fuzz.txt", data))


def _models() -> list[str]:
    from replay.models import registry

    return sorted(registry())


def _input_lines(name: str, data: bytes) -> int | None:
    """What ingest must count as input lines: text lines, or perf JSON's samples
    (None: not JSON at all, so ingest must refuse it)."""
    if name.endswith(".json"):  # ingest reads the "samples" array only, wherever the file is broken
        text = data.decode("utf-8", errors="replace")
        at = text.find('"samples"')
        try:
            return len(json.JSONDecoder().raw_decode(text, text.index("[", at))[0]) if at >= 0 else None
        except ValueError:
            return None
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def _save_failure(name: str, data: bytes) -> Path:
    d = Path(tempfile.gettempdir()) / "replay-fuzz-failures"
    d.mkdir(exist_ok=True)
    p = d / f"{hashlib.sha256(data).hexdigest()[:12]}-{name}"
    p.write_bytes(data)
    return p


def whole_path(cli, name: str, data: bytes) -> list[tuple[str, int]]:
    """ingest -> ops -> run under every model; assert the CLI's contract at each step.
    Returns each step's (command, exit status)."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / name
        src.write_bytes(data)
        ws = Path(d) / "ws"
        steps = [("ingest", str(src), "-w", str(ws), "--name", "t", "-O", "json"), ("ops", "t", "-w", str(ws), "-f", "json")]
        steps += [("run", "--model", m, "--trace", "t", "--machine", "local-2vcpu", "-w", str(ws), "-f", "json")
                  for m in _models()]
        done = []
        faults = n_ops = None  # from replay ops, for the runs
        try:
            for args in steps:
                rc, out, err = cli(*args)
                done.append((args[0], rc))
                assert rc in (0, 1), f"{args[0]}: exit {rc}: {err}"
                assert "Traceback" not in err and "internal error" not in err, f"{args[0]}: {err}"
                if rc == 1:
                    lines = [ln for ln in err.splitlines() if ln.strip()]
                    assert len(lines) == 1 and lines[0].startswith("replay: error: "), f"{args[0]}: {err}"
                    if args[0] != "run":
                        return done  # refused: nothing to build on
                    assert faults == 0, f"a trace with {faults} faults refused: {err}"
                    continue
                res = json.loads(out)
                if args[0] == "ingest":
                    n = res["lines"]
                    assert n["lines"] == _input_lines(name, data), "ingest lost or invented lines"
                    assert n["lines"] == sum(n[k] for k in ("parsed", "header", "blank", "callchain", "lost_records",
                                                            "malformed")), "a line is in no class"
                    assert sum(res["events"].values()) == n["parsed"]
                    import polars as pl

                    tr = pl.read_parquet(ws / "traces" / "trace_id=t").to_dicts()[0]
                    assert (tr["lines"], tr["parsed"], tr["malformed"]) == (n["lines"], n["parsed"], n["malformed"])
                    assert pl.read_parquet(ws / "events" / "trace_id=t").height == n["parsed"]
                    assert pl.read_parquet(ws / "rejects" / "trace_id=t").height == n["malformed"]
                elif args[0] == "ops":
                    faults, n_ops = res["kinds"].get("fault", 0), res["ops"]
                else:
                    assert (res["ops"], res["faults"]) == (n_ops, faults), "the replay lost or invented ops"
                    assert faults > 0, "a replay of no page fault passed for a result"
        except AssertionError as e:
            where = _save_failure(name, data)
            raise AssertionError(f"{e}\n(input saved as {where}: copy it into {REGRESSIONS} once fixed)") from None
    return done


# a few examples by default (under a second each); REPLAY_FUZZ_EXAMPLES=N for a longer hunt,
# and -m slow runs 200
FUZZ_EXAMPLES = int(os.environ.get("REPLAY_FUZZ_EXAMPLES", "8"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(trace=mutated_traces())
def test_whole_path_on_mutated_traces(cli, trace):
    whole_path(cli, *trace)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(trace=mutated_traces())
def test_whole_path_on_mutated_traces_many(cli, trace):
    whole_path(cli, *trace)


@pytest.mark.parametrize("path", sorted(p for p in REGRESSIONS.iterdir() if p.name != "README.md"),
                         ids=lambda p: p.name)
def test_fuzz_regressions(cli, path):
    """Every input that once broke the path."""
    whole_path(cli, path.name, path.read_bytes())
