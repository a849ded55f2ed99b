"""Open an input (file, ``-``, gzip, zstd, perf.data) and tell which trace format it is."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field


FORMATS = ("auto", "perf-script", "ftrace", "trace-cmd", "perf-data", "trace-dat", "perf-json", "perf-trace")
PERF_MAGIC = b"PERFILE2"
TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"  # trace-cmd's trace.dat (Documentation/trace-cmd/trace-cmd.dat.v7.5.txt)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# perf script with every field the events dataset needs, nanosecond timestamps, and
# lost-event records so that nothing is dropped silently.  Fields per event type:
# tracepoints with their payload; software events (page-faults) with the sample period,
# address and ip.  With a type given perf prints the fields a sample has and leaves out
# the rest (no CPU unless recorded with it), where a plain -F list fails the whole file
# ("Samples for 'page-faults' event do not have CPU attribute set").
PERF_SCRIPT_ARGS = ["--ns", "-F", "trace:comm,pid,tid,cpu,time,event,trace",
                    "-F", "sw:comm,pid,tid,cpu,time,period,event,addr,ip", "--show-lost-events"]
# trace-cmd report with full nanosecond timestamps
TRACE_CMD_REPORT_ARGS = ["-t"]
# kernel/trace/trace.c, trace_clocks[]: the clocks whose in_ns is 0 count no nanoseconds
# (counter: a bare increment; uptime: jiffies; x86-tsc, ppc-tb: cycles)
RAW_CLOCKS = ("counter", "uptime", "x86-tsc", "ppc-tb")


class InputError(Exception):
    """Bad input: reported as one line on stderr with exit status 1."""


class _Hashing(io.RawIOBase):
    """Pass-through reader that hashes and counts the bytes as given (compressed or not)."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self):
        return True

    def readinto(self, b):
        n = self.f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.nbytes += n
        return n


@dataclass
class Source:
    """An opened input: a binary stream of trace text plus what we know about it."""

    name: str
    format: str
    stream: io.BufferedIOBase
    size: int | None  # bytes on disk, when known (for progress)
    hashing: _Hashing | None
    proc: subprocess.Popen | None = None
    stderr_file: object = None
    meta: dict = field(default_factory=dict)
    head: bytes = b""  # bytes already read from ``stream`` for format detection
    _tmp: str | None = None
    tool: str = ""  # the command whose output this is ("perf script", "trace-cmd report")

    @property
    def sha256(self) -> str:
        return self.hashing.sha.hexdigest() if self.hashing else self.meta.get("sha256", "")

    @property
    def bytes_in(self) -> int:
        return self.hashing.nbytes if self.hashing else 0

    def check_tool(self) -> None:
        """When the input is a tool's output (perf script, trace-cmd report): raise its own
        message if it failed.  Call once its output has been read to the end."""
        if self.proc is None:
            return
        self.stream.close()
        rc = self.proc.wait()
        if rc != 0:
            self.stderr_file.seek(0)
            lines = [ln.strip() for ln in self.stderr_file.read().decode(errors="replace").splitlines() if ln.strip()]
            raise InputError(f"{self.tool} failed on {self.name} (exit {rc}): {lines[-1] if lines else 'no message'}")

    def finish(self) -> None:
        """Check a tool subprocess ended well; remove temporary files."""
        try:
            self.check_tool()
        finally:
            self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._tmp:
            os.unlink(self._tmp)
            self._tmp = None


def _buffered(raw, size=1 << 20) -> io.BufferedReader:
    return io.BufferedReader(raw, buffer_size=size)


def _looks_binary(head: bytes) -> bool:
    return b"\x00" in head[:65536]


# Line shapes for format detection: cheap regular expressions over the first lines, so
# that detecting a format does not compile the scanner of every dialect (seconds each).
# The compiled scanner of the chosen format then checks every line for real.
_PERF_LINE = re.compile(rb"^\s*\S.*?\s(?:-?\d+/)?-?\d+\s+(?:\[\d+\]\s+)?\d+\.\d+:\s+(?:\d+\s+)?\S+:(?:\s|$)")
_FTRACE_LINE = re.compile(rb"^\s*\S.*-\d+\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?\d+(?:\.\d+)?:\s+\S")


def sniff_text(head: bytes) -> tuple[str | None, dict]:
    """Pick the text format whose line shape matches the most of the first lines."""
    stripped = head.lstrip()
    if stripped.startswith(b"{") and b"linux-perf-json-version" in head[:4096]:
        return "perf-json", {}
    lines = [ln for ln in head.split(b"\n")[:400] if ln.strip() and not ln.startswith(b"#")]
    perf = sum(1 for ln in lines if _PERF_LINE.match(ln))
    ftrace = sum(1 for ln in lines if _FTRACE_LINE.match(ln))
    from .perftrace import looks_like

    ptrace = looks_like(lines)
    if ptrace > max(perf, ftrace):
        return "perf-trace", {}
    if not perf and not ftrace:
        return None, {}
    best = "ftrace" if ftrace > perf else "perf-script"
    if best == "ftrace" and any(ln.startswith((b"cpus=", b"version = ")) for ln in head.split(b"\n", 40)[:40]):
        best = "trace-cmd"
    return best, {}


def open_source(path: str, fmt: str = "auto") -> Source:
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if path == "-":
        raw = sys.stdin.buffer
        size = None
        name = "<stdin>"
    else:
        if not os.path.exists(path):
            raise InputError(f"no such file: {path}")
        if os.path.isdir(path):
            raise InputError(f"{path} is a directory, not a trace")
        raw = open(path, "rb", buffering=0)
        size = os.fstat(raw.fileno()).st_size
        name = path
    hashing = _Hashing(raw)
    outer = _buffered(hashing)
    magic = outer.peek(8)[:8]

    if magic.startswith(PERF_MAGIC) or fmt == "perf-data":
        if not magic.startswith(PERF_MAGIC):
            raise InputError(f"{name} is not a perf.data file (no PERFILE2 magic); try --format auto")
        return _open_perf_data(path, name, outer, hashing)
    if outer.peek(10)[:10].startswith(TRACE_DAT_MAGIC) or fmt == "trace-dat":
        if not outer.peek(10)[:10].startswith(TRACE_DAT_MAGIC):
            raise InputError(f"{name} is not a trace-cmd trace.dat (no \\x17\\x08Dtracing magic); try --format auto")
        return _open_trace_dat(path, name, outer, hashing)

    stream = outer
    if magic.startswith(GZIP_MAGIC):
        stream = _buffered(gzip.GzipFile(fileobj=outer, mode="rb"))
    elif magic.startswith(ZSTD_MAGIC):
        import zstandard

        stream = _buffered(zstandard.ZstdDecompressor().stream_reader(outer, read_across_frames=True))
    try:
        head = stream.read(1 << 18)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"cannot decompress {name}: {e}") from None
    except Exception as e:  # zstandard.ZstdError
        raise InputError(f"cannot decompress {name}: {e}") from None
    if not head:
        raise InputError(f"{name} is empty")
    if _looks_binary(head):
        raise InputError(f"{name} is binary, not trace text (and not perf.data, trace.dat, gzip or zstd)")
    detected, meta = sniff_text(head)
    if fmt == "auto":
        if detected is None:
            first = head.split(b"\n", 1)[0][:80].decode(errors="replace")
            raise InputError(
                f"cannot tell the format of {name}: no line matches perf script, ftrace, trace-cmd report, "
                f"perf trace or perf JSON (first line: {first!r}); pass --format"
            )
        fmt = detected
    elif fmt == "perf-json" and detected != "perf-json":
        raise InputError(f"{name} is not perf JSON (no linux-perf-json-version header); it looks like {detected or 'no known format'}")
    return Source(name, fmt, stream, size, hashing, head=head, meta={"detected": detected})


def _seekable(path: str, outer, suffix: str) -> tuple[str, str | None]:
    """A path the tool can seek in (stdin is copied to a temporary file), hashing the
    bytes as given on the way."""
    if path == "-":
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(outer, f, 1 << 20)
        return tmp, tmp
    while outer.read(1 << 22):  # hash the file as given
        pass
    return path, None


def _open_perf_data(path: str, name: str, outer, hashing: _Hashing) -> Source:
    perf = shutil.which("perf")
    if perf is None:
        raise InputError(
            f"{name} is perf.data; reading it needs perf (Debian: apt-get install linux-perf), "
            f"or run `perf script {' '.join(PERF_SCRIPT_ARGS)}` where perf is and ingest the text"
        )
    path, tmp = _seekable(path, outer, ".perf.data")
    meta = {"sha256": hashing.sha.hexdigest(), "bytes": hashing.nbytes}
    hdr = subprocess.run([perf, "script", "-i", path, "--header-only", "-f"], capture_output=True, text=True)
    if hdr.returncode != 0:
        if tmp:
            os.unlink(tmp)
        msg = [ln for ln in hdr.stderr.splitlines() if ln.strip()]
        raise InputError(f"perf cannot read {name}: {msg[-1].strip() if msg else 'exit ' + str(hdr.returncode)}")
    meta.update(header_meta(hdr.stdout.splitlines()))
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([perf, "script", "-i", path, "-f", *PERF_SCRIPT_ARGS], stdout=subprocess.PIPE,
                            stderr=err, stdin=subprocess.DEVNULL)
    src = Source(name, "perf-data", _buffered(proc.stdout), os.path.getsize(path), None, proc, err, meta,
                 tool="perf script")
    src._tmp = tmp
    return src


def _open_trace_dat(path: str, name: str, outer, hashing: _Hashing) -> Source:
    """trace-cmd's binary trace.dat, read through ``trace-cmd report`` as perf.data is
    through ``perf script``."""
    tc = shutil.which("trace-cmd")
    if tc is None:
        raise InputError(
            f"{name} is a trace-cmd trace.dat; reading it needs trace-cmd (Debian: apt-get install trace-cmd), "
            f"or run `trace-cmd report {' '.join(TRACE_CMD_REPORT_ARGS)} -i {name}` where it is and ingest the text"
        )
    path, tmp = _seekable(path, outer, ".trace.dat")
    meta = {"sha256": hashing.sha.hexdigest(), "bytes": hashing.nbytes}

    def ask(*args) -> str:
        r = subprocess.run([tc, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            if tmp:
                os.unlink(tmp)
            msg = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
            raise InputError(f"trace-cmd cannot read {name}: {msg[-1].strip() if msg else 'exit ' + str(r.returncode)}")
        return r.stdout

    # the trace clock the file saved ("[local] global counter ..."; the chosen one in brackets)
    clock = re.search(r"\[([^\]]+)\]", ask("dump", "--clock", path))
    if clock and clock.group(1) in RAW_CLOCKS:
        if tmp:
            os.unlink(tmp)
        raise InputError(
            f"{name} was recorded with trace clock {clock.group(1)!r}, which counts "
            f"{'cycles' if clock.group(1).endswith(('tsc', 'tb')) else 'no time'}, not nanoseconds: its timestamps "
            "cannot be replayed as time; record with a clock that counts ns (trace-cmd record -C local, the default, "
            "or global, mono, boot)")
    if clock:
        meta["trace_clock"] = clock.group(1)
    for line in ask("report", "--uname", "-i", path).splitlines():  # "cpus=2", "Linux HOST RELEASE MACHINE", version
        uname = line.split()
        if len(uname) == 4 and uname[0] == "Linux":
            meta.update(hostname=uname[1], kernel=uname[2], arch=uname[3])
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([tc, "report", *TRACE_CMD_REPORT_ARGS, "-i", path], stdout=subprocess.PIPE, stderr=err,
                            stdin=subprocess.DEVNULL)
    src = Source(name, "trace-dat", _buffered(proc.stdout), os.path.getsize(path), None, proc, err, meta,
                 tool="trace-cmd report")
    src._tmp = tmp
    return src


def _cpu_count(text: str) -> int | None:
    """A CPU count as a header prints it; None for anything that is not one."""
    try:
        n = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return n if 0 < n < 1 << 31 else None


def header_meta(lines) -> dict:
    """Host, kernel and CPU count from perf --header lines, ftrace's header or trace-cmd's
    preamble.  A field that does not parse is left out."""
    meta: dict = {}
    for ln in lines:
        s = ln.strip()
        n = None
        if s.startswith("# hostname :"):
            meta["hostname"] = s.split(":", 1)[1].strip()
        elif s.startswith("# os release :"):
            meta["kernel"] = s.split(":", 1)[1].strip()
        elif s.startswith("# nrcpus online :"):
            n = _cpu_count(s.split(":", 1)[1])
        elif "#P:" in s:
            n = _cpu_count(s.rsplit("#P:", 1)[1])
        elif s.startswith("cpus="):
            n = _cpu_count(s[5:])
        elif s.startswith("# arch :"):
            meta["arch"] = s.split(":", 1)[1].strip()
        if n is not None:
            meta["nr_cpus"] = n
    return meta


def read_chunks(stream, size: int, head: bytes = b""):
    """Yield chunks of whole lines (the last may end without a newline)."""
    rest = head
    while True:
        data = stream.read(size)
        if not data:
            break
        if rest:
            data = rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1:]
        yield data[: cut + 1]
    if rest:
        yield rest
