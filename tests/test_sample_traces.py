"""The bundled sample traces: per-event counts equal what grep counts in the same text."""

import json
import subprocess

import pytest
import zstandard

from conftest import SAMPLES

TRACES = sorted(p.name[: -len(".txt.zst")] for p in SAMPLES.glob("*.txt.zst"))

PERF_TOKENS = {
    "page_fault_user": " exceptions:page_fault_user: ",
    "page_fault_kernel": " exceptions:page_fault_kernel: ",
    "mmap_lock_start": " mmap_lock:mmap_lock_start_locking: ",
    "mmap_lock_acquired": " mmap_lock:mmap_lock_acquire_returned: ",
    "mmap_lock_released": " mmap_lock:mmap_lock_released: ",
    "exit_mmap": " mmap:exit_mmap: ",
    **{f"sys_{d}_{s}": f" syscalls:sys_{d}_{s}: " for s in ("mmap", "munmap", "mprotect", "mremap", "brk", "madvise") for d in ("enter", "exit")},
}
FTRACE_TOKENS = {
    "page_fault_user": ": page_fault_user: ",
    "page_fault_kernel": ": page_fault_kernel: ",
    "mmap_lock_start": ": mmap_lock_start_locking: ",
    "mmap_lock_acquired": ": mmap_lock_acquire_returned: ",
    "mmap_lock_released": ": mmap_lock_released: ",
    "exit_mmap": ": exit_mmap: ",
    **{f"sys_enter_{s}": f": sys_{s}(" for s in ("mmap", "munmap", "mprotect", "mremap", "brk", "madvise")},
    **{f"sys_exit_{s}": f": sys_{s} -> " for s in ("mmap", "munmap", "mprotect", "mremap", "brk", "madvise")},
}


def test_there_are_four_samples():
    assert {"pft-2t", "mprotect-race", "jvm-alloc", "pft-ftrace"} <= set(TRACES)
    for t in TRACES:
        assert (SAMPLES / f"{t}.maps").exists()
        assert (SAMPLES / f"{t}.txt.zst").stat().st_size < 2_000_000


@pytest.mark.parametrize("name", TRACES)
def test_counts_equal_grep(cli, ws, tmp_path, name):
    text = tmp_path / f"{name}.txt"
    text.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress((SAMPLES / f"{name}.txt.zst").read_bytes()))
    rc, out, err = cli("ingest", SAMPLES / f"{name}.txt.zst", "-w", ws, "--maps", SAMPLES / f"{name}.maps", "-O", "json")
    assert rc == 0, err
    got = json.loads(out)
    tokens = FTRACE_TOKENS if got["format"] == "ftrace" else PERF_TOKENS
    for event, token in tokens.items():
        r = subprocess.run(["grep", "-cF", "--", token, str(text)], capture_output=True, text=True)
        want = int(r.stdout.strip() or 0)
        assert got["events"].get(event, 0) == want, (event, token)
    lines = int(subprocess.run(["wc", "-l", str(text)], capture_output=True, text=True).stdout.split()[0])
    assert got["lines"]["lines"] == lines and got["lines"]["malformed"] == 0
    assert sum(v for k, v in got["lines"].items() if k != "lines") == lines
    rc, out, _ = cli("traces", "-w", ws, "-f", "json")
    tr = json.loads(out)[0]
    assert tr["trace_id"] == name
