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

One parameter per profile is fitted (``FITTED``): the fault path's per-fault fixed
part (``[fault_path] fixed_ns``), to the published 1-thread faults/cpu of the
baseline design of that machine's tables (``FIT_TABLES``, ``fit_fixed()``) and, for
local-2vcpu, to our own 1-thread pft measurement - every other thread count and every
other design is a prediction.  Each table's designs run on the fault path of the kernel
they were measured on (``TABLE_KERNELS``: MODEL@RELEASE).  Thread counts above a
profile's CPUs run as many threads as it has CPUs: pft clips its threads to the CPUs
it may use (gormanm/pft pft.c: "clipping nr_tests to nr_cpus_allowed").  A table whose machine has no profile in this
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
# a design column that is one posting whose fault path differs from its design's merged
# code, modelled as that posting: "pvl-v2" ran "[PATCH v2 00/33] Per-VMA locks" (every user
# fault reads mm_users, a validating re-walk; replay/models/kernels.py _pvl_v2_fault()).
# "pvl-v2+opt", the fixes Suren Baghdasaryan sent Punit Agrawal to test and posted as v3 the
# same day ("[PATCH v3 00/35] Per-VMA locks": "remove mm->mm_users check", the vma->detached
# flag, "to address pft-threads regression reported by Punit Agrawal"), is v3's - 6.4's -
# logic on 6.2: pervma@6.2, which has 6.2's mm_struct (models.on_release_mm())
POSTED_MODELS = {"pvl-v2": "pvl-v2"}
# the machine a table was measured on -> its profile (matched in the table's machine.cpu)
PROFILES = (("8336C", "icelake-2s"), ("Zen 5", "zen5-2s"), ("IvyBridge", "ivybridge-2s"))
# the kernel each table's designs ran on (their fault path's batch sizes: the runs are
# MODEL@RELEASE), from the table's own design text in published.json
TABLE_KERNELS = {
    "punit-2023-02-15-pft-single-vma": "6.2",  # "6.2.0-rc4 based mm-unstable as of 2023-02-10"
    "punit-2023-02-28-pft-vma-per-thread": "6.2",  # "6.2.0-rc4"
    "shivank-2025-01-28-zen5-v9": "6.13",  # "mm-unstable ..., Jan 2025": the 6.14 merge window's base, 6.13
    "bueso-2018-02-05-pft-range-mmap_lock": "4.15",  # "v4.15-rc8"
}
# what each profile's one fitted parameter, [fault_path] fixed_ns, is fitted to: the
# published 1-thread faults/cpu of these tables' baseline designs (fit_fixed()), and for
# local-2vcpu our own pft measurement at 1 thread (docs/validation-local.json)
FIT_TABLES = {
    "icelake-2s": ("punit-2023-02-15-pft-single-vma", "punit-2023-02-28-pft-vma-per-thread"),
    "zen5-2s": ("shivank-2025-01-28-zen5-v9",),
    "ivybridge-2s": ("bueso-2018-02-05-pft-range-mmap_lock",),
}
FITTED = ["fault_path.fixed_ns"]  # the parameters fitted to the development set and our measurements
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
        models = {d: POSTED_MODELS.get(d, DESIGN_MODELS.get(nos[d])) for d in designs}
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
        from .machines import load_machine

        ncpus = load_machine(tb.profile).ncpus
        for n in tb.threads:
            run_n = min(n, ncpus)  # pft's clipping
            trace = _synth(ws, tb.workload, run_n, max(1, pages // run_n))
            for d in tb.designs:
                model = tb.models[d]
                if model is None:
                    continue
                at = f"{model}@{TABLE_KERNELS[tb.id]}" if tb.id in TABLE_KERNELS else model  # its kernel's fault path
                key = (trace, at, tb.profile)
                if key not in done:
                    runs = api.run(trace, model=at, machine=tb.profile, iterations=iterations,
                                   workspace=ws.root, fault_service="trace")
                    runs = runs if isinstance(runs, list) else [runs]
                    done[key] = [r.run_id for r in runs]
                    if progress:
                        progress(f"{tb.id}: {model}, {n} threads")
                tb.runs[(model, n)] = done[key]
                tb.predicted[(d, n)] = _stats(ws, done[key])
        _mark_significance(tb, ws)


def _on_cpu_ns_per_fault(ops, model, machine, seeds) -> float:
    """The mean on-CPU time of a fault (pft's faults/cpu, inverted) over ``seeds`` replays."""
    from .engine import replay

    tot = n = 0.0
    for seed in seeds:
        r = replay(ops, model, machine, machine.ncpus, seed=seed, fault_service="trace").results
        f = r.filter(r["kind"] == "fault")
        tot += float((f["end_ns"] - f["start_ns"] - f["sleep_ns"]).sum())
        n += f.height
    return tot / n


def fit_fixed(ws, profile: str, target_ns: float, workload: str = "pft", model: str = "mmap_lock",
              pages: int = FULL_PAGES, seeds=(0, 1, 2)) -> dict:
    """[fault_path] fixed_ns for ``profile`` such that a 1-thread pft replay's mean
    on-CPU time per fault is ``target_ns`` (1e9 / the published 1-thread faults/cpu):
    replayed with fixed_ns 0, the rest of the fault (the lock, the modelled resources)
    is measured, and fixed_ns is what is left, divided by the log-normal draw's mean
    factor exp(sigma^2 / 2) (the fixed part is drawn per fault, variation.py)."""
    import dataclasses

    from .engine import PROFILE_SERVICE_SIGMA
    from .machines import load_machine
    from .models import get_model

    mach = load_machine(profile)
    zero = dataclasses.replace(mach, fault_path=dict(mach.fault_path, fixed_ns=0.0))
    from .cli import _ensure_ops

    trace = _synth(ws, workload, 1, pages)
    ops, _ = _ensure_ops(ws, trace)  # the ops a run of the trace reads
    mdl = get_model(model)
    rest = _on_cpu_ns_per_fault(ops, mdl, zero, seeds)
    fixed = (target_ns - rest) / math.exp(PROFILE_SERVICE_SIGMA ** 2 / 2)
    return {"profile": profile, "model": model, "target_ns": target_ns, "rest_ns": rest, "fixed_ns": fixed}


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


# -- the sample traces' fallbacks ------------------------------------------------------------------
# The bundled traces (sample_traces/record.sh records them all, one run on one machine) and
# the profile of that machine (its description says so).
SAMPLES = REPO / "sample_traces"
SAMPLE_MACHINE = "local-2vcpu"
SAMPLE_PLACEMENT = "as-recorded"  # each thread on the CPU the trace shows it on, as it ran
# The release a trace was recorded on -> the model of its fault path, newest first:
# vm_refcnt and the regrouped vm_area_struct from v6.15 ("mm: replace vm_lock and detached
# flag with a reference count"), per-VMA locks from v6.4 (commit 50ee32537206, "mm:
# introduce lock_vma_under_rcu to be used from arch-specific code"), mmap_lock before.
KERNEL_MODELS = (((6, 15), "mainline"), ((6, 4), "pervma"), ((0, 0), "mmap_lock"))
# The targets (issue 10): within 25 % (relative) where the trace shows MANY or more, else a factor of 2.
MANY, WITHIN_REL, WITHIN_FACTOR = 100, 0.25, 2.0
# The VMAs a fault hit, as the trace tells them: anonymous, or file-backed / a special
# mapping (_install_special_mapping(): arch/x86/entry/vdso/vma.c's vdso and vvar mappings,
# the vsyscall page), which have vm_ops, so the kernel's vma_is_anonymous() is false.
SPECIAL_MAPPINGS = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")
VMA_CLASSES = ("all", "anonymous", "file/special")
FALLBACK_COLUMNS = ["trace", "kernel", "model", "machine", "cpus", "placement", "vmas", "user_faults", "observed",
                    "observed_pct", "observed_writer_in_flight", "simulated", "simulated_pct", "simulated_stddev",
                    "simulated_abort", "simulated_retry", "iterations", "error_pct", "ratio", "target", "meets"]


@dataclass
class SampleTrace:
    """One bundled trace and its comparison."""

    name: str  # the sample's name (sample_traces/NAME.txt.zst)
    trace: str = ""  # its name in the workspace
    kernel: str | None = None
    kernel_source: str = "the trace's header"
    cpus: int | None = None
    model: str | None = None
    status: str = "ok"
    user_faults: int = 0
    observed: dict = field(default_factory=dict)  # class -> observed fallbacks
    writer_in_flight: dict = field(default_factory=dict)  # class -> of them, with a writer of their VMA in flight
    simulated: list = field(default_factory=list)  # per run: {class: {"fallback", "abort", "retry", "tried"}}
    runs: list = field(default_factory=list)
    writer_ms: tuple = (0.0, 0.0)  # the time of the writers of the fallbacks' VMAs: recorded, simulated (Amean)


def sample_names() -> list[str]:
    return sorted(p.name[: -len(".txt.zst")] for p in SAMPLES.glob("*.txt.zst"))


def model_for_kernel(release: str) -> str | None:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    if not m:
        return None
    v = (int(m.group(1)), int(m.group(2)))
    return next(model for since, model in KERNEL_MODELS if v >= since)


def _ingest_sample(ws, name: str) -> str:
    """The sample in the workspace as ``val-sample-NAME``, ingested again only when the
    bundled file's content differs from what is there."""
    import hashlib

    from .ingesting import run_ingest

    trace = f"val-sample-{name}"
    path = SAMPLES / f"{name}.txt.zst"
    if ws.trace_sha(trace) != hashlib.sha256(path.read_bytes()).hexdigest():
        run_ingest(str(path), trace, "auto", ws.root, True, True, maps_snapshot=(SAMPLES / f"{name}.maps").read_text(),
                   source_label=f"sample_traces/{name}.txt.zst (replay validate)")
    return trace


def vma_class(anon: bool | None, name: str | None) -> str:
    return "anonymous" if anon and (name or "") not in SPECIAL_MAPPINGS else "file/special"


def _classes(vmas) -> "pl.DataFrame":
    import polars as pl

    return vmas.select("vma_id", pl.struct("anon", "name").map_elements(
        lambda r: vma_class(r["anon"], r["name"]), return_dtype=pl.Utf8).alias("vmas"))


def observe(ws, trace: str) -> tuple[int, dict, dict, list]:
    """From the trace's ops: its user faults, the fallbacks the op builder marked
    (``observed_fallback``) per VMA class, and of those the ones during which a writer
    that write-locks the fault's VMA was in flight (between its sys_enter and sys_exit) -
    the shape of a VMA-lock abort; one without is no abort of that writer.  Last, the op
    ids of the writers that write-lock a VMA an observed fallback hit."""
    import polars as pl

    from .api import ensure_ops
    from .ops import writer_in_flight

    ops = pl.read_parquet(ensure_ops(trace, ws.root))
    cls = _classes(pl.from_arrow(ws.read("vmas", trace)))
    user = ops.filter((pl.col("kind").cast(pl.Utf8) == "fault") & ~pl.col("kernel"))
    fb = user.filter(pl.col("observed_fallback").fill_null(False)).join(cls, on="vma_id", how="left").with_columns(
        pl.col("vmas").fill_null("file/special"))
    wr = ops.filter(pl.col("kind").cast(pl.Utf8) != "fault")
    fb = fb.with_columns(writer_in_flight(fb, wr, on=("mm", "vma_id")))
    writers = (wr.filter(pl.col("lock_mode").cast(pl.Utf8) == "write").select("mm", "vma_ids")
               .explode("vma_ids").rename({"vma_ids": "vma_id"}))
    observed = {"all": fb.height, **{c: fb.filter(pl.col("vmas") == c).height for c in VMA_CLASSES[1:]}}
    writer = {"all": int(fb["writer"].sum()),
              **{c: int(fb.filter(pl.col("vmas") == c)["writer"].sum()) for c in VMA_CLASSES[1:]}}
    mine = writers.join(fb.select("mm", "vma_id").unique(), on=["mm", "vma_id"], how="semi")
    return user.height, observed, writer, _writer_ops(ops, mine)


def _writer_ops(ops, mine) -> list[int]:
    import polars as pl

    w = ops.filter(pl.col("kind").cast(pl.Utf8) != "fault").select("op_id", "mm", "vma_ids").explode("vma_ids")
    return sorted(set(w.join(mine.select("mm", pl.col("vma_id").alias("vma_ids")).unique(), on=["mm", "vma_ids"],
                             how="semi")["op_id"].to_list()))


def simulate_counts(ws, run_id: str, cls) -> dict:
    """One run's fallbacks per VMA class: faults that tried the VMA lock (``outcome`` set:
    user faults) and fell back (``fallback``), and of them the aborts and retries."""
    import polars as pl

    res = pl.read_parquet(ws.partition("results", run_id, "run_id") / "part-0.parquet",
                          columns=["kind", "vma_id", "outcome", "fallback"])
    f = res.filter((pl.col("kind") == "fault") & pl.col("outcome").is_not_null()).join(cls, on="vma_id", how="left")
    f = f.with_columns(pl.col("vmas").fill_null("file/special"))
    out = {}
    for c in VMA_CLASSES:
        g = f if c == "all" else f.filter(pl.col("vmas") == c)
        fb = g.filter(pl.col("fallback"))
        out[c] = {"tried": f.height, "fallback": fb.height, "abort": fb.filter(pl.col("outcome") == "abort").height,
                  "retry": fb.filter(pl.col("outcome") == "retry").height}
    return out


def _writer_ms(path, op_ids: list[int]) -> float:
    """The time of these writers in all, in ms, from an ops or a results file (a recorded
    call without its sys_exit counts nothing)."""
    import polars as pl

    d = pl.read_parquet(path, columns=["op_id", "start_ns", "end_ns"]).filter(pl.col("op_id").is_in(op_ids))
    return float((d["end_ns"] - d["start_ns"]).sum() or 0) / 1e6


def _header(name: str) -> dict:
    """A sample's kernel and CPU count from its text's header (the ingester's
    header_meta(), reading only the first lines)."""
    import io

    import zstandard

    from .ingest.sources import header_meta

    with open(SAMPLES / f"{name}.txt.zst", "rb") as f:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), errors="replace")
        head = [ln for _, ln in zip(range(200), text)]
    return header_meta(head)


def plan_samples(ws, names: list[str] | None = None) -> list[SampleTrace]:
    """Each sample ingested, with the kernel and CPUs it was recorded on (the ingested
    trace's, from its header) and the model of that kernel.  A trace whose text has no
    header (ftrace's) takes the kernel and CPU count the other samples' headers agree on
    (record.sh recorded them on one machine; builds of one release that one model covers
    agree)."""
    out = []
    for name in names or sample_names():
        st = SampleTrace(name, _ingest_sample(ws, name))
        row = ws.read("traces", st.trace).select(["kernel", "nr_cpus"]).to_pylist()[0]
        st.kernel, st.cpus = row["kernel"], row["nr_cpus"]
        out.append(st)
    known = None
    for s in out:
        if not (s.kernel and s.cpus):
            if known is None:
                known = {(h.get("kernel"), h.get("nr_cpus")) for h in map(_header, sample_names())}
                known = {k for k in known if all(k)}
            # one kernel and CPU count, or builds of one release the same model covers
            # (pft-2t was re-recorded on a later build of 6.18.44)
            if len({(model_for_kernel(k), c) for k, c in known}) == 1:
                s.kernel, s.cpus = sorted(known)[0]
                s.kernel_source = "the other samples' headers (an ftrace text has none; record.sh recorded all in one run)"
            else:
                s.status = "the trace does not say which kernel and CPUs it was recorded on"
                continue
        s.model = model_for_kernel(s.kernel)
        if s.model is None:
            s.status = f"no model for kernel {s.kernel!r}"
    return out


def replay_samples(samples: list[SampleTrace], ws, iterations: int, progress=None) -> None:
    """Each sample replayed under its kernel's model on SAMPLE_MACHINE with its own CPU
    count and placement, ``iterations`` seeds; the observed and simulated fallbacks."""
    import polars as pl

    from . import api

    for s in samples:
        if s.status != "ok":
            continue
        s.user_faults, s.observed, s.writer_in_flight, wops = observe(ws, s.trace)
        runs = api.run(s.trace, model=s.model, machine=SAMPLE_MACHINE, cpus=s.cpus, placement=SAMPLE_PLACEMENT,
                       iterations=iterations, workspace=ws.root)
        s.runs = [r.run_id for r in (runs if isinstance(runs, list) else [runs])]
        cls = _classes(pl.from_arrow(ws.read("vmas", s.trace)))
        s.simulated = [simulate_counts(ws, r, cls) for r in s.runs]
        s.writer_ms = (_writer_ms(ws.ops_file(s.trace), wops),
                       sum(_writer_ms(ws.partition("results", r, "run_id") / "part-0.parquet", wops)
                           for r in s.runs) / len(s.runs))
        if progress:
            progress(f"fallbacks: {s.name}, {s.model} on {SAMPLE_MACHINE}")


def meets(observed: int, simulated: float) -> bool:
    """Issue 10's target: within WITHIN_REL where the trace shows MANY or more, else
    within WITHIN_FACTOR either way (none observed: none simulated)."""
    if observed >= MANY:
        return abs(simulated / observed - 1) <= WITHIN_REL
    if observed == 0:
        return simulated == 0
    return observed / WITHIN_FACTOR <= simulated <= observed * WITHIN_FACTOR


def fallback_rows(s: SampleTrace) -> list[dict]:
    C = importlib.import_module("replay.compare")  # the Amean and Stddev of the iterations
    rows = []
    for c in VMA_CLASSES:
        obs = s.observed[c]
        per = [x[c] for x in s.simulated]
        n = C.stat([float(x["fallback"]) for x in per], "Amean")
        pct = C.stat([100 * x["fallback"] / x["tried"] if x["tried"] else float("nan") for x in per], "Amean")
        rows.append({"trace": s.name, "kernel": s.kernel, "model": s.model, "machine": SAMPLE_MACHINE, "cpus": s.cpus,
                     "placement": SAMPLE_PLACEMENT, "vmas": c, "user_faults": s.user_faults, "observed": obs,
                     "observed_pct": 100 * obs / s.user_faults if s.user_faults else None,
                     "observed_writer_in_flight": s.writer_in_flight[c], "simulated": n.mean,
                     "simulated_pct": pct.mean, "simulated_stddev": n.sd,
                     "simulated_abort": C.stat([float(x["abort"]) for x in per], "Amean").mean,
                     "simulated_retry": C.stat([float(x["retry"]) for x in per], "Amean").mean, "iterations": n.n,
                     "error_pct": _pct(n.mean, obs), "ratio": n.mean / obs if obs else None,
                     "target": f"±{WITHIN_REL:.0%}" if obs >= MANY else f"x{WITHIN_FACTOR:g}",
                     "meets": meets(obs, n.mean)})
    return rows


def why(r: dict, s: SampleTrace) -> str | None:
    """One line on a row that misses its target, from what the trace and the runs show."""
    if r["meets"]:
        return None
    obs, sim, writer = r["observed"], r["simulated"], r["observed_writer_in_flight"]
    if sim < obs and obs - writer >= (obs - sim) / 2 and not r["simulated_retry"]:
        return (f"{obs - writer} of {obs} had no writer of their VMA in flight, so no abort on a write-locked VMA: "
                f"VM_FAULT_RETRY or no VMA found, of a kind the engine does not retry (replay/engine/retry.py: "
                f"special mappings, page-cache waits of file faults); its {sim:g} are aborts")
    if sim < obs:
        return (f"{writer} of {obs} came while a writer of their VMA was in flight (those writers: "
                f"{s.writer_ms[0]:.1f} ms from sys_enter to sys_exit recorded, {s.writer_ms[1]:.1f} ms simulated - "
                f"the trace's mmap_lock holds); {sim:g} simulated faults meet them")
    return (f"more simulated ({sim:g}) than observed ({obs}): the simulated faults meet the writers "
            f"({s.writer_ms[1]:.1f} ms, against {s.writer_ms[0]:.1f} ms recorded) more often than the recorded ones did")


def fallback_lines(samples: list[SampleTrace]) -> list[str]:
    """The comparison as a table: per trace and VMA class, observed and simulated (Amean of
    the iterations) counts and rates, the error and the target; then a line per miss."""
    head = (f"{'trace':<15}{'vmas':<14}{'faults':>8}{'observed':>10}{'rate':>9}{'writer':>8}{'simulated':>11}"
            f"{'rate':>9}{'abort':>8}{'retry':>7}{'error':>9}{'target':>8}  meets")
    k = max((len(s.runs) for s in samples), default=0)
    out = [f"fallbacks: observed in the sample traces vs simulated ({SAMPLE_MACHINE}, {SAMPLE_PLACEMENT} "
           f"placement, the trace's own CPUs, the model of its kernel; Amean of {k} iterations)", head]
    notes = []
    for s in samples:
        if s.status != "ok":
            out.append(f"{s.name}: not replayed: {s.status}")
            continue
        for r in fallback_rows(s):
            err = f"{r['error_pct']:+8.1f}%" if r["error_pct"] is not None else f"{'-':>9}"
            out.append(f"{s.name if r['vmas'] == 'all' else '':<15}{r['vmas']:<14}{r['user_faults']:>8,}"
                       f"{r['observed']:>10,}{r['observed_pct']:>8.3f}%{r['observed_writer_in_flight']:>8,}"
                       f"{r['simulated']:>11.1f}{r['simulated_pct']:>8.3f}%{r['simulated_abort']:>8.1f}"
                       f"{r['simulated_retry']:>7.1f}{err}{r['target']:>8}  {'yes' if r['meets'] else 'no'}")
            w = why(r, s) if r["vmas"] != "all" else None  # the classes' lines explain the whole
            if w:
                notes.append(f"  {s.name}, {r['vmas']}: {w}")
    out.append("models: " + "; ".join(
        f"{s.name} {s.model} (Linux {s.kernel}, {s.cpus} CPUs"
        + ("" if s.kernel_source == "the trace's header" else f", from {s.kernel_source}") + ")"
        for s in samples if s.status == "ok"))
    if notes:
        out += ["misses:"] + notes
    return out


def fallback_doc(res: dict) -> list[str]:
    """The fallbacks' section of docs/validation.md."""
    fb = res["fallbacks"]
    rows = [r for x in fb if x.status == "ok" for r in fallback_rows(x) if r["vmas"] == "all"]
    met = sum(r["meets"] for r in rows)
    return ["## Our machine: the sample traces' fallbacks", "",
            "Each bundled trace (`sample_traces/`, recorded by `sample_traces/record.sh`) is ingested as "
            "`val-sample-NAME` and replayed under the model of the kernel it was recorded on (from the trace's "
            "header" + "".join(f"; {x.name}: {x.kernel_source}" for x in fb if x.kernel_source != "the trace's header")
            + f") on `{SAMPLE_MACHINE}` - the profile of that machine - with the trace's own CPU count and "
            f"`{SAMPLE_PLACEMENT}` placement, {res['iterations']} iterations (seeds); simulated counts are the "
            "Amean of the iterations.", "",
            "**What is compared.** *Observed*: the user faults the op builder marks `observed_fallback` (`replay ops` "
            "counts the same): a fault followed on its thread, before its next fault or syscall, by "
            "`mmap_lock_start_locking write=false` - it left the VMA lock for mmap_lock.  In the kernel that is "
            "either VMA_LOCK_ABORT (lock_vma_under_rcu() returned NULL: the VMA write-locked, or none found) or "
            "VMA_LOCK_RETRY (handle_mm_fault() under the VMA lock returned VM_FAULT_RETRY; arch/x86/mm/fault.c "
            "do_user_addr_fault()), and the trace shows no difference between them: both reach `lock_mmap`.  So "
            "the rates compared are fallbacks (abort + retry) against the simulation's `fallback` (`results`, the "
            "same rate as the run summary's `fallback_pct`), split by what the trace does tell: the VMA the fault "
            "hit - anonymous, or file-backed / a special mapping (`[vdso]`, `[vvar]`: vm_ops without "
            "->map_pages, which vmf_can_call_fault() in mm/memory.c sends back with VM_FAULT_RETRY; a "
            "page-cache miss in filemap_fault() drops the VMA lock to wait for I/O the same way) - and whether a "
            "writer that write-locks that VMA was in flight (between its sys_enter and sys_exit) during the "
            "fault (`writer`): an abort on a write-locked VMA needs one, so a fallback without one is a retry "
            "or a fault that found no VMA.  The file/special row is where the JVM trace's file-backed retries "
            "are.  The simulation's fallbacks are split into its aborts and retries (`abort`, `retry`).  "
            "What is predicted and what is replayed: the engine retries a special mapping's fault by the kernel's "
            "rule (fault kind `special`: vmf_can_call_fault()) and a major file fault by filemap_fault()'s, both "
            "predictions; a minor file fault's page-cache wait (a folio locked by a read in flight, or marked for "
            "readahead) is the page cache's state, which the trace records and no lock design changes, so a file "
            "fault the trace shows falling back with no writer of its VMA in flight is replayed as a retry with "
            "its recorded first try as its wait (replay/engine/retry.py) - its count in the file/special row is "
            "the trace's, not a prediction; the aborts, and which faults meet a write-locked VMA, are.  Not "
            "counted as fallbacks: `observed_anon_prepare` (the first write fault of a private VMA, whose "
            "vmf_anon_prepare() trylock traces alike and may still finish under the VMA lock) and kernel-mode "
            "faults, which never try the VMA lock.", "",
            f"**Target** (issue 10): within ±{WITHIN_REL:.0%} (relative) where the trace shows at least {MANY}, "
            f"within a factor of {WITHIN_FACTOR:g} where it shows fewer (none observed: none simulated).  "
            f"Met for {met} of {len(rows)} traces (all VMAs).", "",
            "```"] + fallback_lines(fb) + ["```", ""]


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
                   machines: dict | None = None, published=None, fallbacks: bool | None = None,
                   samples: list[str] | None = None, progress=None) -> dict:
    """Everything ``replay validate`` prints: the tables (replayed where they can be),
    the local measurement (measured now with ``measure``, else read from its cache) and
    the sample traces' fallbacks.  ``fallbacks``: None - the fallbacks and the local
    measurement with every table (``tables`` None), neither with some; True - the
    fallbacks (of ``samples``, default all), with the tables only when ``tables`` names
    some; False - no fallbacks."""
    t0 = time.perf_counter()
    only = fallbacks is True and tables is None
    pub = published if published is not None else load_published()
    tbs = [] if only else plan(pub, tables, threads, machines)
    replay_tables(tbs, ws, iterations, pages, progress)
    local = None
    if measure:
        local = measure_local(local_iterations, progress=progress)
        write_json(Path(local_path), local)
    elif tables is None and not only:
        local = read_local(local_path)
    local_rows = predict_local(local, ws, iterations, progress) if local else None
    fb = None
    if fallbacks or (fallbacks is None and tables is None):
        fb = plan_samples(ws, samples)
        replay_samples(fb, ws, iterations, progress)
    return {"tables": tbs, "local": local, "local_rows": local_rows, "fallbacks": fb, "iterations": iterations,
            "pages": pages, "wall_s": time.perf_counter() - t0}


def as_json(res: dict) -> dict:
    return {"fitted": FITTED, "iterations": res["iterations"], "faults_per_iteration": res["pages"],
            "wall_s": round(res["wall_s"], 1),
            "tables": [{"id": tb.id, "source": tb.raw["source"], "machine": tb.raw["machine"].get("cpu"),
                        "profile": tb.profile, "status": tb.status, "workload": tb.workload,
                        "models": tb.models, "threads": tb.threads,
                        "rows": rows_of(tb) if tb.status == "ok" else [],
                        "summary": summary_of(tb) if tb.status == "ok" else None} for tb in res["tables"]],
            "local": res["local"], "local_rows": res["local_rows"],
            "fallbacks": None if res["fallbacks"] is None else [
                {"trace": x.name, "workspace_trace": x.trace, "status": x.status, "kernel": x.kernel,
                 "kernel_from": x.kernel_source, "cpus": x.cpus, "model": x.model, "runs": x.runs,
                 "rows": fallback_rows(x) if x.status == "ok" else []} for x in res["fallbacks"]]}


def text_lines(res: dict) -> list[str]:
    lines = []
    for tb in res["tables"]:
        if tb.status != "ok":
            lines.append(f"{tb.id}: not replayed: {tb.status}")
            continue
        lines += render_table(tb) + [""]
    if res["local_rows"]:
        lines += local_lines(res) + [""]
    if res["fallbacks"] is not None:
        lines += fallback_lines(res["fallbacks"]) + [""]
    return lines[:-1] if lines and lines[-1] == "" else lines


def local_lines(res: dict) -> list[str]:
    loc = res["local"]
    out = [f"local: pft measured on this machine ({loc['cpu']}, {loc['nproc']} CPUs, Linux {loc['kernel']}, "
           f"{loc['date']}) vs {LOCAL_MODEL} on {LOCAL_MACHINE}",
           f"{'':<10}{'':<17}{'measured':>20}{'predicted':>20}{'error':>10}"]
    for r in res["local_rows"]:
        out.append(f"{'Hmean':<10}{r['metric'] + '-' + str(r['threads']):<17}{r['measured']:>20.4f}"
                   f"{r['predicted']:>20.4f}{r['error_pct']:>9.2f}%")
    return out


def fitted_lines() -> list[str]:
    """The fitted parameters' values, profile by profile, with what each was fitted to
    (the profiles' own [fitted] entries: one source)."""
    from .machines import all_machines

    out = ["| profile | parameter | value | fitted to |", "|---|---|---|---|"]
    for m in all_machines():
        for p in m.parameters():
            if p["fitted"]:
                out.append(f"| `{m.name}` | {p['parameter']} | {p['value']:g} | {m.fitted[p['parameter']]} |")
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
         "count pft clips the threads to the CPUs: none of these tables' rows does). Faults/sec and faults/cpu "
         "as pft computes them: faults over the span of the touch loops (the first fault's start to the last "
         "fault's end), and over the faults' on-CPU time (time asleep on a lock, or waiting for a CPU, does "
         "not count; spinning does).", "",
         "**Fitted parameters.** " + ", ".join(FITTED) + ": each profile's per-fault fixed part of the fault "
         "path, fitted to the 1-thread faults/cpu of the baseline design of that machine's tables (Ice Lake: "
         "both tables' mm-unstable column; Zen 5: mm-unstable-vanilla; IvyBridge: v4.15-rc8) and, for "
         "local-2vcpu, to our own 1-thread pft measurement. Everything else comes from its source: every other "
         "thread count, and every other design's 1-thread point, is a prediction. `replay machines PROFILE` "
         "shows each fitted value with what it was fitted to.", "",
         *fitted_lines(), "",
         "**The Ice Lake machine has 128 CPUs**, not the 64 `published.json` gives it: Punit's \"2-socket 32 core "
         "(64 threads)\" is per socket. pft clips its threads to the CPUs it may use, so faults/sec / faults/cpu "
         "(the threads on a CPU at once) cannot exceed the CPU count, and it reaches 116 at 128 threads; "
         "mmtests' thread stride up to NUMCPUS gives the published 1, 4, ..., 79, 110, 128 only for 128 CPUs. "
         "`icelake-2s` is 2 x 32 x 2, and no row here oversubscribes.", "",
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
    if res["fallbacks"] is not None:
        L += fallback_doc(res)
    if drawn["panels"]:
        L += [f"![predicted beside measured]({image.name})", ""]
    with atomic_output(doc) as tmp:
        Path(tmp).write_text("\n".join(L))
