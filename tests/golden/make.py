"""Golden summaries: the aggregates of a replay that pin the engine's semantics.

For every sample trace under every model on one fixed machine, ``summarize`` reduces
a run to a few numbers per column - count, sum, min, max of every result column per op
kind, outcome counts, every lock_stats and line_stats column's sum and max, the
counters and the run summary - and ``tests/test_golden.py`` compares them with the
committed ``tests/golden/<trace>.json``.  The replay is deterministic (same trace,
model, machine, CPUs and seed: identical results), so floats are compared exactly;
sums are ``math.fsum`` (correctly rounded), so they do not depend on the summation
order of any library version.

Regenerate after an intended semantic change (bump ``REFERENCE_VERSION`` in
``replay/engine/__init__.py`` first) and review the diff:

    python tests/golden/make.py            # or: pytest tests/test_golden.py --update-golden
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SAMPLES = HERE.parent.parent / "sample_traces"
TRACES = ["pft-ftrace", "mprotect-race", "jvm-alloc", "pft-2t"]
MODELS = ["mmap_lock", "pervma", "inline-rwsem", "v7", "v8", "mainline"]
# four CPUs on two sockets (spread placement): cross-socket hand-offs and CPU sharing
# both occur in the traces with more threads than CPUs
MACHINE, CPUS, SEED = "broadwell-2s", 4, 0


def golden_path(trace: str) -> Path:
    return HERE / f"{trace}.json"


def _num(x):
    """JSON-exact: ints stay ints, floats keep every bit (repr round-trips)."""
    if x is None:
        return None
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x
    return float(x)


def _agg(values: list) -> list:
    """[count of non-null values, sum, min, max]."""
    vals = [v for v in values if v is not None]
    if not vals:
        return [0, None, None, None]
    ints = all(isinstance(v, (int, bool)) for v in vals)
    return [len(vals), int(sum(vals)) if ints else math.fsum(vals), _num(min(vals)), _num(max(vals))]


SUM, MAX = 1, 3


def summarize(run) -> dict:
    """The golden summary of one replay (a ``replay.engine.Run`` with results kept)."""
    import polars as pl

    res = run.results
    numeric = [c for c, t in res.schema.items() if t.is_numeric() and c not in ("cpus",)]
    per_kind = {}
    for kind in sorted(res["kind"].unique().to_list()):
        part = res.filter(pl.col("kind") == kind)
        cols = {c: _agg(part[c].to_list()) for c in numeric}
        cols["duration_ns"] = _agg((part["end_ns"] - part["start_ns"]).to_list())
        cols["fallback"] = int(part["fallback"].sum())
        cols["outcome"] = dict(sorted((k or "none", n) for k, n in part.group_by("outcome").len().iter_rows()))
        per_kind[kind] = cols
    locks = {}
    for cls in sorted(run.lock_stats["lock_class"].unique().to_list()):
        part = run.lock_stats.filter(pl.col("lock_class") == cls)
        locks[cls] = {"rows": part.height, **{c: [_agg(part[c].to_list())[a] for a in (SUM, MAX)]
                                               for c in part.columns if c not in ("mm", "lock_class", "lock")}}
    ln = run.line_stats
    lines = {"rows": ln.height, **{c: [_agg(ln[c].to_list())[a] for a in (SUM, MAX)] for c in ("transfers", "invalidations")},
             "hottest": [f"{a:#x} {n}" for a, n in
                         ln.sort(["transfers", "line"], descending=[True, False]).head(3).select("line", "transfers").rows()]}
    summary = {k: v for k, v in run.summary().items() if k not in ("run_id", "wall_s")}
    return {"summary": summary, "fault_service_ns": run.params["fault_service_ns"],
            "fault_service_source": run.params["fault_service_source"], "counters": dict(sorted(run.counters.items())),
            "results": per_kind, "lock_stats": locks, "line_stats": lines}


def load_ops(trace: str, root: Path):
    """The sample trace's ops, ingested into the workspace ``root`` as a user would."""
    import polars as pl

    from replay.ingesting import run_ingest
    from replay.ops import build_ops
    from replay.workspace import Workspace

    maps = (SAMPLES / f"{trace}.maps").read_text()
    run_ingest(str(SAMPLES / f"{trace}.txt.zst"), trace, "auto", root, False, False, maps_snapshot=maps)
    ev = pl.from_arrow(Workspace(root).read("events", trace))
    return build_ops(ev, trace, maps)[0]


def replay_one(ops, model: str):
    from replay.engine import replay
    from replay.machines import load_machine
    from replay.models import get_model

    trace = ops["trace_id"][0]
    return replay(ops, get_model(model), load_machine(MACHINE), CPUS, seed=SEED, trace_id=trace)


def header(trace: str) -> dict:
    from replay.engine import REFERENCE_VERSION

    return {"semantics": REFERENCE_VERSION, "trace": trace, "machine": MACHINE, "cpus": CPUS, "seed": SEED}


def compute(trace: str, ops) -> dict:
    return {**header(trace), "runs": {m: summarize(replay_one(ops, m)) for m in MODELS}}


def write(trace: str, golden: dict) -> None:
    import re

    text = json.dumps(golden, indent=1, sort_keys=True)
    # one line per aggregate: a smaller file and a diff that shows a column per line
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    golden_path(trace).write_text(text + "\n")


def main(argv: list[str]) -> int:
    traces = argv or TRACES
    for trace in traces:
        with tempfile.TemporaryDirectory() as d:
            write(trace, compute(trace, load_ops(trace, Path(d) / "ws")))
        print(f"wrote {golden_path(trace).name}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    raise SystemExit(main(sys.argv[1:]))
