"""ingest/ and queries/ ship as replay.ingest and replay.queries (pyproject's package-dir):
PyPI has unrelated top-level packages of both names, and an installed replay must
neither shadow them nor be shadowed by them."""

import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def test_unrelated_top_level_ingest_and_queries_packages_do_not_mix_with_replays(tmp_path):
    other = tmp_path / "site"
    for name in ("ingest", "queries"):  # stand-ins for the PyPI packages of those names
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text(f"WHO = 'the other {name}'\n")
    code = (
        "import ingest, queries, sys\n"
        "from replay.cli import main\n"
        "rc = main(['ingest', sys.argv[1], '-w', sys.argv[2], '-f', 'json'])\n"
        "rc = rc or main(['query', 'latency', '-w', sys.argv[2], '-f', 'csv'])\n"
        "import replay.ingest, replay.queries\n"
        "print(ingest.WHO, '|', queries.WHO, '|', sys.modules['replay.ingest'].__name__, replay.queries.__name__, replay.ingest.__doc__.split(chr(10))[0])\n"
        "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, str(DATA / "perf_default.txt"), str(tmp_path / "ws")],
                       capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(other), "PATH": "/usr/bin:/bin"},
                       timeout=300)
    # the query has no results to read: one line, exit 1 - after ingest worked through replay.ingest
    # and replay.ingest, the attribute, is the API function, the subpackage being sys.modules["replay.ingest"]
    assert "the other ingest | the other queries | replay.ingest replay.queries Parse a trace" in r.stdout, r.stderr
    assert '"trace_id": "perf_default"' in r.stdout
    assert "Traceback" not in r.stderr
