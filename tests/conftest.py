import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings

# Tests stay deterministic: Hypothesis draws the same examples on every run (a seed
# derived from each test's name) and keeps no example database between runs.
settings.register_profile("replay", derandomize=True, database=None)
settings.load_profile("replay")

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).parent.parent / "sample_traces"


@pytest.fixture
def ws(tmp_path):
    return tmp_path / "ws"


@pytest.fixture
def cli(capsys):
    """Run the CLI as a user would (main() with its error handling); return (rc, out, err)."""
    from replay.cli import main

    def run(*args):
        rc = main([str(a) for a in args])
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    return run


def _perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        r = subprocess.run(["perf", "record", "-q", "-e", "exceptions:page_fault_user", "-o", os.devnull, "--", "true"],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _tracefs_works() -> bool:
    try:
        with open("/sys/kernel/tracing/tracing_on", "w") as f:
            f.write("0")
        return os.path.exists("/sys/kernel/tracing/events/exceptions/page_fault_user")
    except OSError:
        return False


PERF_OK = _perf_works()
TRACEFS_OK = _tracefs_works()
needs_perf = pytest.mark.skipif(not PERF_OK, reason="perf record is not permitted here")
needs_tracefs = pytest.mark.skipif(not TRACEFS_OK, reason="tracefs is not writable here")


SAMPLE_NAMES = ["pft-ftrace", "mprotect-race", "jvm-alloc", "pft-2t"]


@pytest.fixture(scope="session", params=SAMPLE_NAMES)
def sample_ops(request, tmp_path_factory):
    """A bundled sample trace's ops, ingested once per session."""
    from replay.ingesting import run_ingest
    from replay.ops import build_ops
    from replay.workspace import Workspace

    import polars as pl

    name = request.param
    root = tmp_path_factory.mktemp(f"samples-{name}")
    run_ingest(str(SAMPLES / f"{name}.txt.zst"), name, "auto", root, False, False,
               maps_snapshot=(SAMPLES / f"{name}.maps").read_text())
    ws = Workspace(root)
    ev = pl.from_arrow(ws.read("events", name))
    ops, _, _ = build_ops(ev, name, (SAMPLES / f"{name}.maps").read_text())
    return ops




def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.json from the current engine instead of comparing")
