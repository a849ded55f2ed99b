"""``replay validate``: the model's predictions beside published measurements.

For each table of the development set (``published.json``; its README says what each
design is and which model corresponds), the benchmark is synthesised (``replay
synth``: mmtests pft, or pft -M for the per-thread-VMA table; through the real
ingester), replayed under the model of each design on the profile of the machine the
table was measured on, with all the profile's CPUs (thread counts above its CPU count
oversubscribe, as the published runs did), ``iterations`` seeds per point (each seed
one mmtests iteration: one map / touch / unmap), and summarised as mmtests does -
the Hmean over iterations of faults/cpu and faults/sec (``replay/compare.py``, the
one source of these statistics and of the table layout).  Beside the published rows:
the predicted rows, the % change against the table's baseline design in both, the
error of the % change in percentage points and of the absolute values in %.

Nothing is fitted: the profiles' parameters come from their sources (``FITTED`` is
empty and the document says so).  A table whose machine has no profile in this
checkout, or whose design has no model, is reported in one line and the others go
on; no other machine is substituted.

The local measurement (``measure_local``): pft (``sample_traces/programs/pft.c``,
built as ``sample_traces/record.sh`` builds it) run for real at 1 and 2 threads on
this machine, several iterations, Hmean of faults/sec and faults/cpu (faults over
the child's user + system time, ``wait4()``'s rusage, as pft's own faults/cpu uses
getrusage()), cached with the date, kernel and CPU in ``docs/validation-local.json``;
against ``--model mainline --machine local-2vcpu`` replays of the same pft
synthesised with the same parameters.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "docs" / "validation" / "published.json"  # the development set, copied with its README
LOCAL_JSON = REPO / "docs" / "validation-local.json"
PFT_C = REPO / "sample_traces" / "programs" / "pft.c"

# the README of published.json: design number -> model ("v8 / mainline": v9 onwards has
# mainline's regrouped layout; the only design-4 table here measures v9)
DESIGN_MODELS = {1: "mmap_lock", 2: "pervma", 3: "inline-rwsem", 4: "mainline", 5: None}
# the machine a table was measured on -> its profile (matched in the table's machine.cpu)
PROFILES = (("8336C", "icelake-2s"), ("Zen 5", "zen5-2s"), ("IvyBridge", "ivybridge-2s"))
FITTED: list[str] = []  # parameters fitted to these tables: none yet
METRICS = ("faults/cpu", "faults/sec")  # the published rows the model predicts (compare.METRICS labels)
FULL_PAGES = 16384  # faults per iteration, all threads together (the published regions scaled down)
QUICK_PAGES = 2048
LOCAL_THREADS = (1, 2)
LOCAL_MB = 256  # pft.c's region at the local measurement, all threads together
LOCAL_MODEL, LOCAL_MACHINE = "mainline", "local-2vcpu"


class ValidateError(Exception):
    pass


@dataclass
class Table:
    """One published table and what validating it takes."""

    id: str
    raw: dict
    designs: list[str]  # column order, the first the baseline
    design_no: dict  # design column -> design number
    models: dict  # design column -> model name or None
    profile: str | None
    workload: str
    threads: list[int]
    status: str = "ok"  # or why it was not replayed
    predicted: dict = field(default_factory=dict)  # (design, threads) -> {metric: Stat-like dict}
    runs: dict = field(default_factory=dict)  # (model, threads) -> [run ids]
    pages: int = 0


def load_published(path: Path | str | None = None) -> list[dict]:
    p = Path(path or os.environ.get("REPLAY_PUBLISHED", PUBLISHED))
    try:
        return json.loads(p.read_text())
    except OSError as e:
        raise ValidateError(f"cannot read the published tables {p}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValidateError(f"{p}: not JSON: {e}") from None


def _design_number(text: str) -> int | None:
    m = re.match(r"\s*design (\d+)", text)
    return int(m.group(1)) if m else None


def plan(published: list[dict], tables: list[str] | None = None, threads: list[int] | None = None,
         machines: dict | None = None) -> list[Table]:
    """The tables to validate, each with its models, profile and workload.  ``machines``
    maps a table id to the profile to use instead of its own (the API's, for tests
    that have no 64-CPU profile: the output names the profile used)."""
    from .machines import builtin_names

    ids = [t["id"] for t in published]
    for want in tables or []:
        if want not in ids:
            raise ValidateError(f"no table {want!r} in the published set: {', '.join(ids)}")
    out = []
    for t in published:
        if tables and t["id"] not in tables:
            continue
        designs = list(t["designs"])
        nos = {d: _design_number(t["designs"][d]) for d in designs}
        models = {d: DESIGN_MODELS.get(nos[d]) for d in designs}
        cpu = str(t["machine"].get("cpu", ""))
        prof = next((p for key, p in PROFILES if key in cpu), None)
        if machines and t["id"] in machines:
            prof = machines[t["id"]]
        vma = " ".join(str(t["params"].get(k, "")) for k in ("vma_layout", "region")) + t["benchmark"]
        workload = "pft-multimap" if "one VMA per thread" in vma else "pft"
        ths = [n for n in t["params"]["threads"] if not threads or n in threads]
        tb = Table(t["id"], t, designs, nos, models, prof, workload, ths)
        if prof is None:
            tb.status = f"no machine profile corresponds to {cpu!r}"
        elif not prof.endswith(".toml") and prof not in builtin_names():
            tb.status = f"machine profile {prof} is not in this checkout (replay machines lists them)"
        elif models[designs[0]] is None:
            tb.status = f"its baseline design ({designs[0]}) has no model"
        elif not ths:
            tb.status = "none of the thread counts asked for is in this table"
        out.append(tb)
    return out


def _synth(ws, workload: str, threads: int, pages: int) -> str:
    """The benchmark's trace in the workspace (replay synth's generator through the
    real ingester); its name says its parameters."""
    from .ingesting import run_ingest
    from .synth import generate

    name = f"val-{workload}-t{threads}-p{pages}"
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        _, maps = generate(workload, threads, pages, 1, out=f)
        f.flush()
        run_ingest(f.name, name, "perf-script", ws.root, True, True, maps_snapshot=maps,
                   source_label=f"synth: {workload} thread={threads} pages={pages} iterations=1 (replay validate)")
    return name


def _stats(ws, run_ids: list[str]) -> dict:
    """Hmean, Stddev and iterations of faults/cpu and faults/sec over the runs (compare.py)."""
    C = importlib.import_module("replay.compare")  # replay.compare, the attribute, is the API function

    m = C.iteration_metrics(ws, run_ids)
    rows = C.compare_stats(m, [run_ids], ["x"], 0)
    out = {}
    for metric in METRICS:
        mean = next(r for r in rows if r["metric"] == metric and r["kind"] == "Hmean")
        sd = next(r for r in rows if r["metric"] == metric and r["kind"] == "Stddev")
        out[metric] = {"hmean": mean["value"], "stddev": sd["value"], "n": mean["iterations"]}
    return out


def replay_tables(tables: list[Table], ws, iterations: int, pages: int, progress=None) -> None:
    """Synthesise and replay every (table, model, thread count) that can be; fills
    ``predicted``.  Runs shared by tables (same trace, model, machine, seed) are replayed once."""
    from . import api

    done: dict = {}  # (trace, model, profile) -> run ids
    for tb in tables:
        if tb.status != "ok":
            continue
        tb.pages = pages
        for n in tb.threads:
            trace = _synth(ws, tb.workload, n, max(1, pages // n))
            for d in tb.designs:
                model = tb.models[d]
                if model is None:
                    continue
                key = (trace, model, tb.profile)
                if key not in done:
                    runs = api.run(trace, model=model, machine=tb.profile, iterations=iterations,
                                   workspace=ws.root, fault_service="trace")
                    runs = runs if isinstance(runs, list) else [runs]
                    done[key] = [r.run_id for r in runs]
                    if progress:
                        progress(f"{tb.id}: {model}, {n} threads")
                tb.runs[(model, n)] = done[key]
                tb.predicted[(d, n)] = _stats(ws, done[key])
        _mark_significance(tb, ws)


def _mark_significance(tb: Table, ws) -> None:
    """compare.py's significance of each design's predicted mean against the baseline's
    (Student t 95% intervals that do not overlap), as mmtests' asterisks."""
    C = importlib.import_module("replay.compare")
    for n in tb.threads:
        cols = [d for d in tb.designs if (d, n) in tb.predicted]
        if len(cols) < 2 or cols[0] != tb.designs[0]:
            continue
        runs = [tb.runs[(tb.models[d], n)] for d in cols]
        m = C.iteration_metrics(ws, [r for col in runs for r in col])
        for r in C.compare_stats(m, runs, cols, n):
            if r["metric"] in METRICS and r["kind"] == "Hmean":
                tb.predicted[(r["label"], n)][r["metric"]]["significant"] = r["significant"]


def count_runs(tables: list[Table]) -> int:
    seen = set()
    for tb in tables:
        if tb.status == "ok":
            for n in tb.threads:
                for d in tb.designs:
                    if tb.models[d]:
                        seen.add((tb.workload, n, tb.models[d], tb.profile))
    return len(seen)


# -- the comparison --------------------------------------------------------------------------
def _pct(v, base):
    return (v / base - 1) * 100 if v is not None and base and not math.isnan(v) and not math.isnan(base) else None


ROW_COLUMNS = ["table", "threads", "metric", "design", "model", "published", "published_pct", "published_significant",
               "predicted", "predicted_pct", "predicted_stddev", "predicted_significant", "iterations", "error_pp",
               "abs_error_pct"]


def rows_of(tb: Table) -> list[dict]:
    """Per thread count, metric and design: published and predicted value, each's %
    change against the baseline design, the % change's error in points and the
    absolute value's error in %."""
    pub = {(r["threads"], r["metric"].split()[-1]): r for r in tb.raw["rows"]
           if r["metric"].split()[-1] in METRICS}
    out = []
    base = tb.designs[0]
    for n in tb.threads:
        for metric in METRICS:
            r = pub.get((n, metric))
            if r is None:
                continue
            for d in tb.designs:
                p_val = r["values"].get(d)
                p_pct = 0.0 if d == base else r.get("pct_change", {}).get(d)
                pr = tb.predicted.get((d, n), {}).get(metric)
                prb = tb.predicted.get((base, n), {}).get(metric)
                m_val = pr["hmean"] if pr else None
                m_pct = (0.0 if d == base else _pct(m_val, prb["hmean"] if prb else None)) if pr else None
                out.append({"table": tb.id, "threads": n, "metric": metric, "design": d,
                            "model": tb.models[d], "published": p_val, "published_pct": p_pct,
                            "published_significant": bool(r.get("significant_per_mmtests_asterisk", {}).get(d, False)),
                            "predicted": m_val, "predicted_pct": m_pct,
                            "predicted_stddev": pr["stddev"] if pr else None,
                            "predicted_significant": bool(pr.get("significant", False)) if pr else False, "iterations": pr["n"] if pr else 0,
                            "error_pp": (m_pct - p_pct) if m_pct is not None and p_pct is not None and d != base else None,
                            "abs_error_pct": _pct(m_val, p_val)})
    return out


def render_table(tb: Table) -> list[str]:
    """The published and the predicted table in compare-kernels' layout (compare.render),
    then the errors, a line per thread count and metric."""
    C = importlib.import_module("replay.compare")  # replay.compare, the attribute, is the API function

    rows = rows_of(tb)
    labels = tb.designs
    def block(kind):
        out = []
        for r in rows:
            v = r["published"] if kind == "published" else r["predicted"]
            pct = r["published_pct"] if kind == "published" else r["predicted_pct"]
            if v is None:
                continue
            out.append({"kind": "Hmean", "metric": r["metric"], "cpus": r["threads"], "label": r["design"],
                        "value": v, "pct_change": pct if pct is not None else float("nan"),
                        "significant": r["published_significant"] if kind == "published"
                        else r["predicted_significant"]})
        return out

    models = ", ".join(f"{d}={tb.models[d] or 'no model'}" for d in labels)
    lines = [f"{tb.id}: published ({tb.raw['machine'].get('cpu')}; {tb.raw['source']})"]
    lines += C.render(block("published"), labels)
    pr = block("predicted")
    if pr:
        present = [d for d in labels if any(r["label"] == d for r in pr)]
        lines.append(f"{tb.id}: predicted on {tb.profile} ({models}; {tb.workload}, {tb.pages:,} faults per "
                     f"iteration, Hmean of {max(r['iterations'] for r in rows)} iterations)")
        lines += C.render(pr, present)
        lines.append(f"{tb.id}: error (predicted - published: % change in points; absolute value in %)")
        width = max(16, max(len(x) for x in present) + 2)  # compare.render's
        lines.append(" " * 27 + "".join(f"{x:>{width + 11}}" for x in present))
        for metric in METRICS:  # compare.render's order: metric, then thread count
            for n in tb.threads:
                cells = []
                for d in present:
                    r = next((x for x in rows if x["threads"] == n and x["metric"] == metric and x["design"] == d), None)
                    if r is None:
                        continue
                    pp = r["error_pp"]
                    cells.append(f"{(r['abs_error_pct'] if r['abs_error_pct'] is not None else float('nan')):>{width}.2f}%"
                                 + (f" {pp:+7.2f}pp" if pp is not None else " " * 10))
                lines.append(f"{'Error':<10}{metric + '-' + str(n):<17}" + "".join(cells))
    return lines


def summary_of(tb: Table) -> dict:
    rows = [r for r in rows_of(tb) if r["predicted"] is not None]
    pp = [abs(r["error_pp"]) for r in rows if r["error_pp"] is not None]
    ab = [abs(r["abs_error_pct"]) for r in rows if r["abs_error_pct"] is not None]
    return {"max_abs_error_pp": max(pp) if pp else None, "max_abs_value_error_pct": max(ab) if ab else None,
            "within_5pp": sum(x <= 5 for x in pp), "of_pp": len(pp),
            "within_15pct": sum(x <= 15 for x in ab), "of_values": len(ab)}


# -- the local measurement -----------------------------------------------------------------------
def _hmean(xs):
    xs = [x for x in xs if x and x > 0]
    return len(xs) / sum(1 / x for x in xs) if xs else None


def machine_info() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"kernel": platform.release(), "cpu": cpu, "nproc": os.cpu_count(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def measure_local(iterations: int = 5, threads=LOCAL_THREADS, mb_total: int = LOCAL_MB, progress=None) -> dict:
    """pft.c built and run for real: per thread count, ``iterations`` runs of one
    map/touch/unmap each, their faults/sec (pft's own figure) and faults/cpu (faults
    over the child's user + system time)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ValidateError("--measure-local needs a C compiler (gcc) to build sample_traces/programs/pft.c")
    info = machine_info()
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **info, "mb_total": mb_total,
           "build": f"gcc -O2 -Wall -pthread -o pft sample_traces/programs/pft.c", "points": []}
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "pft")
        r = subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", exe, str(PFT_C)], capture_output=True, text=True)
        if r.returncode:
            raise ValidateError(f"building pft.c failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
        for n in threads:
            mb = mb_total // n
            fps, fpc = [], []
            for i in range(iterations):
                if progress:
                    progress(f"measuring pft {n} threads, iteration {i + 1}/{iterations}")
                p = subprocess.Popen([exe, str(n), str(mb), "1"], stdout=subprocess.PIPE, text=True)
                _, status, ru = os.wait4(p.pid, 0)
                text = p.stdout.read()
                p.stdout.close()
                p.returncode = os.waitstatus_to_exitcode(status)
                m = re.search(r"faults=(\d+) faults/sec=(\d+)", text)
                if p.returncode or not m:
                    raise ValidateError(f"pft {n} {mb} 1 failed (status {p.returncode}): {text.strip()!r}")
                faults = int(m.group(1))
                fps.append(float(m.group(2)))
                fpc.append(faults / (ru.ru_utime + ru.ru_stime))
            out["points"].append({"threads": n, "mb_per_thread": mb, "faults": faults,
                                  "command": f"pft {n} {mb} 1", "faults_per_sec": fps, "faults_per_cpu": fpc,
                                  "hmean_faults_per_sec": _hmean(fps), "hmean_faults_per_cpu": _hmean(fpc)})
    return out


def predict_local(local: dict, ws, iterations: int, progress=None) -> list[dict]:
    """mainline on local-2vcpu over pft synthesised with the measurement's parameters."""
    from . import api

    rows = []
    for pt in local["points"]:
        n = pt["threads"]
        pages = pt["mb_per_thread"] * 256
        trace = _synth(ws, "pft", n, pages)
        if progress:
            progress(f"local: {LOCAL_MODEL} on {LOCAL_MACHINE}, {n} threads")
        runs = api.run(trace, model=LOCAL_MODEL, machine=LOCAL_MACHINE, iterations=iterations, workspace=ws.root)
        runs = runs if isinstance(runs, list) else [runs]
        st = _stats(ws, [r.run_id for r in runs])
        for metric, key in (("faults/sec", "hmean_faults_per_sec"), ("faults/cpu", "hmean_faults_per_cpu")):
            rows.append({"threads": n, "metric": metric, "measured": pt[key], "predicted": st[metric]["hmean"],
                         "iterations": st[metric]["n"], "error_pct": _pct(st[metric]["hmean"], pt[key])})
    return rows


def read_local(path: Path = LOCAL_JSON) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ValidateError(f"{path}: cannot read the cached local measurement: {e}") from None


def write_json(path: Path, data) -> None:
    from .workspace import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1) + "\n")


# -- the plot ----------------------------------------------------------------------------------------
def plot(tables: list[Table], local_rows: list[dict] | None, out: Path) -> dict:
    """Per replayed table: faults/sec against threads, published solid and predicted
    dashed per design, and the % change against the baseline beneath; then the local
    measurement against its prediction.  Returns what was drawn."""
    from .plot import _cpu_axis, _plt, _save

    plt = _plt()
    shown = [tb for tb in tables if tb.predicted]
    ncols = len(shown) + (1 if local_rows else 0)
    if not ncols:
        return {"panels": []}
    fig, axes = plt.subplots(2, ncols, figsize=(5.2 * ncols, 7), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = plt.get_cmap("tab10")
    drawn = {"panels": []}
    for i, tb in enumerate(shown):
        ax, axp = axes[0][i], axes[1][i]
        rows = [r for r in rows_of(tb) if r["metric"] == "faults/sec"]
        for j, d in enumerate(tb.designs):
            rs = [r for r in rows if r["design"] == d]
            x = [r["threads"] for r in rs]
            ax.plot(x, [r["published"] / 1e6 for r in rs], color=colors(j), marker="o", label=f"{d} published")
            pr = [r for r in rs if r["predicted"] is not None]
            if pr:
                ax.plot([r["threads"] for r in pr], [r["predicted"] / 1e6 for r in pr], color=colors(j), marker="s",
                        linestyle="--", label=f"{d} predicted ({tb.models[d]})")
            if j:
                axp.plot(x, [r["published_pct"] for r in rs], color=colors(j), marker="o")
                axp.plot([r["threads"] for r in pr], [r["predicted_pct"] for r in pr], color=colors(j), marker="s",
                         linestyle="--")
        ax.set_title(f"{tb.id}\non {tb.profile}", fontsize=9)
        ax.set_ylabel("faults/sec (millions), Hmean")
        axp.set_ylabel("faults/sec, % vs the baseline")
        axp.set_title(f"% change against {tb.designs[0]}", fontsize=8)
        axp.axhline(0, color="0.4", linewidth=0.8)
        shared = len({m for m in tb.models.values() if m}) < sum(1 for m in tb.models.values() if m)
        axp.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3),
                   title="designs of one model coincide" if shared else None, title_fontsize=7)
        for a in (ax, axp):
            _cpu_axis(a, tb.threads)
            a.grid(alpha=0.3)
            a.set_xlabel("threads")
        drawn["panels"].append({"table": tb.id, "designs": tb.designs, "lines": len(ax.get_lines())})
    if local_rows:
        ax, axp = axes[0][-1], axes[1][-1]
        for j, metric in enumerate(METRICS):
            rs = [r for r in local_rows if r["metric"] == metric]
            x = [r["threads"] for r in rs]
            ax.plot(x, [r["measured"] / 1e6 for r in rs], color=colors(j), marker="o", label=f"{metric} measured")
            ax.plot(x, [r["predicted"] / 1e6 for r in rs], color=colors(j), marker="s", linestyle="--",
                    label=f"{metric} predicted")
            axp.bar([t + (j - 0.5) * 0.3 for t in x], [r["error_pct"] for r in rs], width=0.3, color=colors(j),
                    label=metric)
        ax.set_title(f"pft on this machine vs {LOCAL_MODEL} on {LOCAL_MACHINE}", fontsize=9)
        ax.set_ylabel("millions (Hmean)")
        axp.set_ylabel("predicted vs measured, %")
        axp.axhline(0, color="0.4", linewidth=0.8)
        axp.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3))
        for a in (ax, axp):
            a.set_xticks(list(LOCAL_THREADS))
            a.set_xlabel("threads")
            a.grid(alpha=0.3)
        drawn["panels"].append({"table": "local", "lines": len(ax.get_lines())})
    fig.suptitle("replay validate: predicted (dashed) beside measured (solid)", y=0.995)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return drawn


# -- the whole run and its document -----------------------------------------------------------------
def run_validation(ws, tables=None, threads=None, iterations: int = 3, pages: int = FULL_PAGES,
                   measure: bool = False, local_iterations: int = 5, local_path: Path = LOCAL_JSON,
                   machines: dict | None = None, published=None, progress=None) -> dict:
    """Everything ``replay validate`` prints: the tables (replayed where they can be)
    and the local measurement (measured now with ``measure``, else read from its cache)."""
    t0 = time.perf_counter()
    pub = published if published is not None else load_published()
    tbs = plan(pub, tables, threads, machines)
    replay_tables(tbs, ws, iterations, pages, progress)
    local = None
    if measure:
        local = measure_local(local_iterations, progress=progress)
        write_json(Path(local_path), local)
    elif tables is None:
        local = read_local(local_path)
    local_rows = predict_local(local, ws, iterations, progress) if local else None
    return {"tables": tbs, "local": local, "local_rows": local_rows, "iterations": iterations, "pages": pages,
            "wall_s": time.perf_counter() - t0}


def as_json(res: dict) -> dict:
    return {"fitted": FITTED, "iterations": res["iterations"], "faults_per_iteration": res["pages"],
            "wall_s": round(res["wall_s"], 1),
            "tables": [{"id": tb.id, "source": tb.raw["source"], "machine": tb.raw["machine"].get("cpu"),
                        "profile": tb.profile, "status": tb.status, "workload": tb.workload,
                        "models": tb.models, "threads": tb.threads,
                        "rows": rows_of(tb) if tb.status == "ok" else [],
                        "summary": summary_of(tb) if tb.status == "ok" else None} for tb in res["tables"]],
            "local": res["local"], "local_rows": res["local_rows"]}


def text_lines(res: dict) -> list[str]:
    lines = []
    for tb in res["tables"]:
        if tb.status != "ok":
            lines.append(f"{tb.id}: not replayed: {tb.status}")
            continue
        lines += render_table(tb) + [""]
    if res["local_rows"]:
        lines += local_lines(res)
    return lines


def local_lines(res: dict) -> list[str]:
    loc = res["local"]
    out = [f"local: pft measured on this machine ({loc['cpu']}, {loc['nproc']} CPUs, Linux {loc['kernel']}, "
           f"{loc['date']}) vs {LOCAL_MODEL} on {LOCAL_MACHINE}",
           f"{'':<10}{'':<17}{'measured':>20}{'predicted':>20}{'error':>10}"]
    for r in res["local_rows"]:
        out.append(f"{'Hmean':<10}{r['metric'] + '-' + str(r['threads']):<17}{r['measured']:>20.4f}"
                   f"{r['predicted']:>20.4f}{r['error_pct']:>9.2f}%")
    return out


def write_doc(res: dict, doc: Path, image: Path | None, command: str) -> None:
    """docs/validation.md from a run, atomically; the plot beside it."""
    from .workspace import atomic_output

    drawn = plot(res["tables"], res["local_rows"], image) if image else {"panels": []}
    tbs = res["tables"]
    L = ["# Validation: predictions against published measurements", "",
         f"Generated by `{command}` (wall time {res['wall_s']:.0f} s); do not edit by hand.", "",
         "Each table of the development set (`docs/validation/published.json`) is synthesised "
         "(`replay synth pft`, or `pft-multimap` for one VMA per thread, through the real ingester), "
         f"replayed under the model of each design on the profile of its machine with all its CPUs, "
         f"{res['iterations']} iterations (seeds) per point, and summarised as mmtests does (Hmean).", "",
         f"**Scaling.** The published regions (~100 GB, mmtests' MemTotal/5) are scaled down to "
         f"{res['pages']:,} faults per iteration (4 KiB pages, {res['pages'] * 4096 >> 20} MiB), split evenly "
         "across the threads as pft splits its region; thread counts as published (above the profile's CPU "
         "count the threads oversubscribe it, as the published runs did).", "",
         "**Fitted parameters.** " + (", ".join(FITTED) if FITTED else
                                      "None: every profile parameter comes from its source; nothing here "
                                      "was tuned to these tables."), "",
         "## The tables", ""]
    for tb in tbs:
        L.append(f"### {tb.id}")
        L.append("")
        L.append(f"{tb.raw['author']}, {tb.raw['date']}, <{tb.raw['source']}>; {tb.raw['machine'].get('cpu')}; "
                 f"designs: " + ", ".join(f"`{d}` (design {tb.design_no[d]}) -> "
                                          f"{'`' + tb.models[d] + '`' if tb.models[d] else 'no model'}"
                                          for d in tb.designs) + ".")
        L.append("")
        if tb.status != "ok":
            L.append(f"Not replayed: {tb.status}.")
            L.append("")
            continue
        s = summary_of(tb)
        pp = (f"% change within 5 points of published: {s['within_5pp']} of {s['of_pp']} "
              f"(worst {s['max_abs_error_pp']:.1f} pp)" if s["of_pp"] else "no % change to compare (one design modelled)")
        L.append(f"Replayed on `{tb.profile}`.  {pp}; absolute values within 15 %: "
                 f"{s['within_15pct']} of {s['of_values']} (worst {s['max_abs_value_error_pct']:.0f} %).")
        L += ["", "```"] + render_table(tb) + ["```", ""]
    L += ["## Our machine: pft measured for real", ""]
    if res["local"]:
        loc = res["local"]
        L.append(f"Measured {loc['date']} on {loc['cpu']} ({loc['nproc']} CPUs), Linux {loc['kernel']} "
                 f"(load average {' '.join(loc['loadavg'])} when it started; the machine is shared), "
                 f"`{loc['build']}`, then per thread count {len(loc['points'][0]['faults_per_sec'])} runs of "
                 + ", ".join(f"`{p['command']}`" for p in loc["points"])
                 + f" ({loc['mb_total']} MiB in all, one map/touch/unmap each): faults/sec is pft's own figure, "
                   "faults/cpu the faults over the child's user + system time (`wait4()`), Hmean over the runs; "
                   f"the cache is `docs/validation-local.json` (`replay validate --measure-local` measures again). "
                   f"Predicted: `{LOCAL_MODEL}` on `{LOCAL_MACHINE}` over the same pft synthesised with the same "
                   "parameters.")
        L += ["", "```"] + local_lines(res) + ["```", ""]
        per = {p["threads"]: p for p in loc["points"]}
        L.append("Per run (faults/sec): " + "; ".join(
            f"{n} thread{'s' if n > 1 else ''}: " + ", ".join(f"{x:,.0f}" for x in per[n]["faults_per_sec"])
            for n in per) + ".")
    else:
        L.append("No local measurement cached: run `replay validate --measure-local`.")
    L.append("")
    if drawn["panels"]:
        L += [f"![predicted beside measured]({image.name})", ""]
    with atomic_output(doc) as tmp:
        Path(tmp).write_text("\n".join(L))
