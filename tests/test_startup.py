"""What a command that never simulates imports (README: Speed, start-up).

Each command runs in a fresh interpreter, as ``replay`` runs it, and lists the modules it
ended with.  The engine (``replay.engine``: polars, numpy, the models and, once a replay
dispatches, numba's ~0.5 s of import and type registries) is a simulating command's
cost: ``replay --help``, ``replay sql``, ``replay traces``, ``replay ingest`` and
``replay ops`` must not pay it - nor must the help of the commands whose options list the
registries' models and machines until that help is shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).parent.parent / "sample_traces"

CHILD = """
import json, sys
out = sys.argv.pop(1)
from replay.cli import entry
try:
    entry()
except SystemExit as e:
    rc = e.code
with open(out, "w") as f:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, f)
"""

ENGINE = ("numba", "replay.engine", "replay.models")
HEAVY = ENGINE + ("polars", "pyarrow", "numpy", "duckdb", "replay.machines", "replay.workspace")


def modules_after(tmp_path: Path, *args) -> set[str]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if k != "REPLAY_WORKSPACE"}
    p = subprocess.run([sys.executable, "-c", CHILD, str(out), *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert out.exists(), p.stderr
    d = json.loads(out.read_text())
    assert d["rc"] in (0, None), (args, p.stderr)
    return set(d["modules"])


def loaded(mods: set[str], names) -> list[str]:
    return sorted(m for m in mods if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("args", [["--help"], ["version"], ["sql", "--help"], ["ingest", "--help"]])
def test_help_and_version_import_none_of_the_heavy_libraries(tmp_path, args):
    assert loaded(modules_after(tmp_path, *args), HEAVY) == []


def test_commands_that_never_simulate_do_not_import_the_engine(tmp_path):
    ws = tmp_path / "ws"
    mods = modules_after(tmp_path, "ingest", SAMPLES / "pft-ftrace.txt.zst", "--maps", SAMPLES / "pft-ftrace.maps",
                         "-w", ws)
    assert loaded(mods, ("replay.engine", "replay.models")) == []  # the ingest scanner is numba's: numba may load
    mods = modules_after(tmp_path, "ops", "pft-ftrace", "-w", ws, "-f", "json")
    assert loaded(mods, ("replay.engine", "replay.models")) == []
    for args in (["sql", "SELECT count(*) FROM traces", "-w", ws], ["traces", "-w", ws, "-f", "json"]):
        assert loaded(modules_after(tmp_path, *args), ENGINE) == [], args


def test_run_help_lists_the_registries_without_numba(tmp_path, cli):
    """--help of the commands whose options name the choices fills them in from the
    registries (test_cli_output checks the names), and only then: none of them loads
    numba, and no placeholder is left in any command's help."""
    import typer.main

    from replay.cli import app

    for name in ("run", "sweep", "compare", "machines"):
        assert "numba" not in modules_after(tmp_path, name, "--help"), name
    for name in typer.main.get_command(app).commands:
        rc, out, _ = cli(name, "--help")
        assert rc == 0 and not any(k in out for k in ("{MODELS}", "{MACHINES}", "{PLACEMENTS}")), name
