"""`replay record`: run a command under perf (or tracefs) and ingest what it did.

The command is started stopped at its first instruction after execve (PTRACE_TRACEME:
the kernel stops a traced child with SIGTRAP once exec succeeds), so that
``/proc/PID/maps`` can be read exactly as exec left it - the binary, the dynamic
loader, the stack, vdso/vvar - before any mmap the trace will show.  The tracer is
attached to that pid (perf record -p / tracefs set_event_pid with event-fork), then the
child is detached and runs.  Threads and children it creates are followed.

**Each fault's time.**  With perf, the recording also carries perf's ``minor-faults``
and ``major-faults`` software events, every one (``-c 1``) with its address (``-d``):
mm_account_fault() (mm/memory.c) emits one as the handle_mm_fault() call that
completes a fault returns, so beside the fault's entry and its mmap_lock events it
gives the fault's handle_mm_fault() time (the op builder's ``service_ns``, replay/ops.py;
the engine replays it, engine/variation.py).  Not a return probe on handle_mm_fault():
kprobe events (``perf probe -a 'handle_mm_fault%return'``, tracefs ``kprobe_events``)
need CONFIG_KPROBE_EVENTS, and BPF fexit programs a kernel that lets them load; the
6.18 kernel we record on has neither (built without CONFIG_KPROBES; under lockdown,
loading an fentry/fexit program on handle_mm_fault fails with EPERM), while the
software events need nothing but perf.  tracefs has no software events, so ``--ftrace``
recordings carry no fault times (a one-line note says so); ``--no-fault-times`` leaves
them out of a perf recording.  They cost a sample per fault: about as much as the
page-fault tracepoint itself.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .ingest.sources import InputError
from .ingest.text import FAULT_END_EVENTS

DEFAULT_EVENTS = [
    "exceptions:page_fault_user",
    "exceptions:page_fault_kernel",
    "mmap_lock:mmap_lock_start_locking",
    "mmap_lock:mmap_lock_acquire_returned",
    "mmap_lock:mmap_lock_released",
    *(f"syscalls:sys_{d}_{s}" for s in ("mmap", "munmap", "mprotect", "mremap", "brk", "madvise") for d in ("enter", "exit")),
    "mmap:exit_mmap",
    # when a thread was off its CPU though runnable (prev_state R/R+): the op builder takes
    # that run-queue wait out of its think times, which the replay's own scheduler
    # reproduces (replay/opstream.py _think)
    "sched:sched_switch",
]
# perf record's switches for the fault-end events: every event sampled (-c 1: a
# software event is otherwise sampled at perf's default frequency) with its address (-d)
FAULT_TIME_ARGS = ["-c", "1", "-d", *(a for e in FAULT_END_EVENTS for a in ("-e", e))]
TRACEFS = Path("/sys/kernel/tracing")
PTRACE_TRACEME, PTRACE_DETACH = 0, 17
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _traceme():  # runs in the child between fork and exec
    _libc.ptrace(PTRACE_TRACEME, 0, None, None)


def _start_stopped(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    """Start cmd stopped right after execve; return it and its /proc/PID/maps then."""
    try:
        child = subprocess.Popen(cmd, preexec_fn=_traceme)
    except (FileNotFoundError, PermissionError) as e:
        raise InputError(f"cannot run {cmd[0]!r}: {e.strerror}") from None
    _, status = os.waitpid(child.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise InputError(f"{cmd[0]!r} exited before it could be traced")
    with open(f"/proc/{child.pid}/maps") as f:
        maps = f.read()
    return child, maps


def _detach(child: subprocess.Popen) -> None:
    if _libc.ptrace(PTRACE_DETACH, child.pid, None, None) != 0:
        raise InputError(f"cannot release pid {child.pid}: {os.strerror(ctypes.get_errno())}")


def _open_fifo(path: str, flags: int, proc: subprocess.Popen) -> int | None:
    """Open our end of a FIFO without hanging if perf dies before opening its end."""
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            return os.open(path, flags | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.01)
    return None


def record_perf(cmd: list[str], events: list[str], out: str, buffer_mb: int,
                fault_times: bool = True) -> tuple[str, int, int]:
    """perf record -p the stopped child (with the fault-end events unless not
    ``fault_times``); returns (maps at exec, pid, exit status)."""
    perf = shutil.which("perf")
    if perf is None:
        raise InputError("replay record needs perf (Debian: apt-get install linux-perf), or use --ftrace")
    child, maps = _start_stopped(cmd)
    pages = max(1, buffer_mb * 256)
    pages = 1 << (pages.bit_length() - 1)  # perf wants a power of two
    err = tempfile.TemporaryFile()
    # Events start disabled (-D -1) and are enabled through perf's control FIFO, whose
    # "ack" says they are live: only then is the child let go, so nothing is missed.
    fifodir = tempfile.mkdtemp(prefix="replay-perf-ctl-")
    ctl, ack = os.path.join(fifodir, "ctl"), os.path.join(fifodir, "ack")
    os.mkfifo(ctl)
    os.mkfifo(ack)
    args = [perf, "record", "-q", "-m", str(pages), "-D", "-1", "--control", f"fifo:{ctl},{ack}",
            "-p", str(child.pid), "-o", out]
    for e in events:
        args += ["-e", e]
    if fault_times:
        args += FAULT_TIME_ARGS
    rec = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def perf_failed():
        err.seek(0)
        msg = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
        return InputError(f"perf record failed: {msg[-1].strip() if msg else 'exit ' + str(rec.poll())}")

    try:
        ctl_fd = _open_fifo(ctl, os.O_WRONLY, rec)
        ack_fd = _open_fifo(ack, os.O_RDONLY, rec)
        if ctl_fd is None or ack_fd is None:
            raise perf_failed()
        os.write(ctl_fd, b"enable\n")
        got = b""
        deadline = time.monotonic() + 20
        while not got.startswith(b"ack"):
            r, _, _ = select.select([ack_fd], [], [], 0.1)
            if r:
                got += os.read(ack_fd, 16)
            if rec.poll() is not None or time.monotonic() > deadline:
                raise perf_failed()
        os.close(ctl_fd)
        os.close(ack_fd)
        _detach(child)
        rc = child.wait()
        try:
            rec.wait(timeout=10)  # perf -p ends when the traced task is gone
        except subprocess.TimeoutExpired:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=30)
    except BaseException:
        shutil.rmtree(fifodir, ignore_errors=True)
        for p in (child, rec):
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    shutil.rmtree(fifodir, ignore_errors=True)
    if rec.returncode not in (0, -signal.SIGINT) or not os.path.exists(out):
        raise perf_failed()
    return maps, child.pid, rc


def _tracefs_write(name: str, value: str) -> None:
    with open(TRACEFS / name, "w") as f:
        f.write(value)


def record_ftrace(cmd: list[str], events: list[str], out: str, buffer_mb: int) -> tuple[str, int, int]:
    """tracefs: set_event_pid + event-fork on the stopped child; stream trace_pipe to ``out``."""
    if not (TRACEFS / "trace_pipe").exists():
        raise InputError(f"tracefs is not mounted at {TRACEFS} (mount -t tracefs nodev {TRACEFS})")
    try:
        _tracefs_write("tracing_on", "0")
    except OSError as e:
        raise InputError(f"cannot control tracefs: {e.strerror}") from None
    saved = {k: (TRACEFS / k).read_text().strip() for k in ("buffer_size_kb", "options/record-tgid", "options/event-fork")}
    child, maps = _start_stopped(cmd)
    stop = threading.Event()
    try:
        _tracefs_write("buffer_size_kb", str(buffer_mb * 1024))
        _tracefs_write("options/record-tgid", "1")
        _tracefs_write("options/event-fork", "1")
        _tracefs_write("set_event", " ".join(events) + "\n")
        _tracefs_write("set_event_pid", str(child.pid))
        _tracefs_write("trace", "")
        fd = os.open(TRACEFS / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)

        def pump():
            with open(out, "wb") as f:
                while True:
                    r, _, _ = select.select([fd], [], [], 0.1)
                    try:
                        data = os.read(fd, 1 << 20) if r else b""
                    except BlockingIOError:
                        data = b""
                    if data:
                        f.write(data)
                    elif stop.is_set():
                        return

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        _tracefs_write("tracing_on", "1")
        _detach(child)
        rc = child.wait()
        _tracefs_write("tracing_on", "0")
        time.sleep(0.2)
        stop.set()
        t.join()
        os.close(fd)
    except OSError as e:
        raise InputError(f"tracefs: {e.strerror}: {e.filename}") from None
    finally:
        stop.set()
        if child.poll() is None:
            child.kill()
            child.wait()
        _tracefs_write("tracing_on", "0")
        _tracefs_write("set_event", "")
        _tracefs_write("set_event_pid", "")
        for k, v in saved.items():
            try:
                _tracefs_write(k, v)
            except OSError:
                pass
    return maps, child.pid, rc


def workload_failure(rc: int) -> tuple[str, int] | None:
    """How a workload that did not exit 0 ended, and the status replay record exits
    with: 1 for a non-zero exit (so replay's own 2 and 3 keep their meaning), 128 + N
    for death by signal N - what a shell reports for a command killed by it."""
    if rc == 0:
        return None
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
        return f"the workload was killed by {sig}", 128 - rc
    return f"the workload exited with status {rc}", 1


def record_and_ingest(cmd, name, events, ftrace, keep, buffer_mb, workspace, replace, fault_times: bool = True):
    """Record and ingest; returns (IngestResult, the workload's wait status as
    subprocess gives it: negative for a signal).  A failing workload's trace is
    ingested all the same - it is what the program really did.  ``fault_times``: with
    perf, record each fault's end too (see the module docstring)."""
    from .ingesting import claim_name, run_ingest
    from .workspace import Workspace, atomic_output

    ws = Workspace(workspace)
    claim_name(ws, name, replace)
    with ws.staging() as stage:  # the raw recording: in the workspace, removed with the staging
        raw = os.path.join(stage, "trace.txt" if ftrace else "perf.data")
        if ftrace:
            maps, pid, rc = record_ftrace(cmd, events or DEFAULT_EVENTS, raw, buffer_mb)
        else:
            maps, pid, rc = record_perf(cmd, events or DEFAULT_EVENTS, raw, buffer_mb, fault_times)
        # one comment line: an argument with a newline (python -c "...") must not end it
        shown = " ".join(cmd).replace("\\", "\\\\").replace("\n", "\\n")
        snapshot = f"# /proc/{pid}/maps at exec of: {shown}\n{maps}"
        if keep:
            with atomic_output(keep) as tmp:
                shutil.copyfile(raw, tmp)
            with atomic_output(f"{keep}.maps") as tmp:
                Path(tmp).write_text(snapshot)
        try:
            res = run_ingest(raw, name, "ftrace" if ftrace else "perf-data", workspace, False, replace,
                             maps_snapshot=snapshot, source_label=f"record: {' '.join(cmd)}",
                             extra_meta={"hostname": os.uname().nodename, "kernel": os.uname().release,
                                         "nr_cpus": os.cpu_count()})
        except InputError as e:
            failed = workload_failure(rc)
            if failed is None:
                raise
            raise InputError(f"{failed[0]}, and its recording could not be ingested: {e}") from None
        if ftrace and fault_times:
            res.warnings.append("no per-fault times in an --ftrace recording: tracefs has no perf software events "
                                "(record with perf for them)")
        return res, rc
