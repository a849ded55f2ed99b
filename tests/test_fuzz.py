"""Fuzzing the compiled scanners: no input may crash them, every line is accounted for,
and lines built from random values parse back to those values."""

import string

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import scan
from ingest.text import TextDecoder, scan_chunk
from conftest import DATA

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
