"""mmtests compare-kernels tables over runs, across iterations.

A configuration's iterations are its runs that differ only in the seed (same trace
content, model, machine, CPU count, placement, loop and fault service): each is one
sample, as each of mmtests' iterations of pft is.  Per metric and CPU count the table
gives, for every column, the Hmean (rates) or Amean over the iterations, the Stddev and
the CoeffVar, and the % change against the first column - the sign flipped where lower
is better, and for Stddev and CoeffVar, where a smaller spread is the gain.  A mean's
difference is marked ``*  *`` when the two Student-t 95% confidence intervals of the
iterations' mean do not overlap, ``(  )`` when they do; one iteration has no interval
and is never marked.  Never across spans of one run: those are not independent samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

# t(0.975, df) for df = 1..30; above that the normal 1.96
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# (column, label, mean kind, higher is better), in mmtests pft's order
METRICS = [
    ("faults_per_cpu", "faults/cpu", "Hmean", True),
    ("faults_per_sec", "faults/sec", "Hmean", True),
    ("fault_ns", "fault-ns", "Amean", False),
    ("fallback_pct", "fallback-pct", "Amean", False),
]
# the configuration a run is an iteration of (runs-dataset columns)
CONFIG = ("trace_sha256", "model", "machine", "machine_sha256", "model_sha256", "cpus", "placement", "semantics",
          "loop", "fault_service_source", "fault_service_ns")


def run_metrics(res: pl.DataFrame) -> dict:
    """One run's metrics from its results, as pft computes its own (gormanm/pft pft.c
    main(): ``faults_per_sec = pages / elapsed_time``, ``faults_per_sec_per_cpu = pages /
    (user_time + sys_time)``): faults/sec over the span from the first fault's start to
    the last fault's end (pft's wall interval, the earliest thread start to the latest
    thread end of its touch loops - the mmap before and the munmap after are outside it);
    faults/cpu over the faults' on-CPU time (pft sums each thread's
    getrusage(RUSAGE_THREAD) user + system time over its loop: time asleep on a lock or
    waiting for a CPU does not count, spinning does); the mean fault, and the fallback
    rate of the faults that tried the VMA lock."""
    f = res.filter(pl.col("kind") == "fault")
    span = ((f["end_ns"].max() or 0) - (f["start_ns"].min() or 0)) if f.height else 0
    busy = float((f["end_ns"] - f["start_ns"]).sum() or 0)
    on_cpu = busy - float(f["sleep_ns"].sum() or 0) if "sleep_ns" in f.columns else busy
    tried = f.filter(pl.col("outcome").is_not_null())
    return {"faults_per_sec": f.height / span * 1e9 if span else None,
            "faults_per_cpu": f.height / on_cpu * 1e9 if on_cpu > 0 else None,
            "fault_ns": busy / f.height if f.height else None,
            "fallback_pct": 100 * float(tried["fallback"].mean()) if tried.height else None}


def metrics_of(ws, run_id: str) -> dict:
    """``run_metrics`` of a committed run, reading only the columns it needs (a sweep
    compares runs of millions of ops)."""
    res = pl.read_parquet(ws.partition("results", run_id, "run_id") / "part-0.parquet",
                          columns=["kind", "start_ns", "end_ns", "fallback", "outcome", "sleep_ns"])
    return run_metrics(res)


def iteration_metrics(ws, run_ids, known: dict[str, dict] | None = None) -> pl.DataFrame:
    """``metrics_of`` each run, a row per run in ``run_ids``' order; ``known``: runs'
    metrics already computed (a sweep's workers compute their runs' own, in parallel)."""
    known = known or {}
    rows = [{"run_id": r, **(known[r] if r in known else metrics_of(ws, r))} for r in dict.fromkeys(run_ids)]
    return pl.DataFrame(rows, schema={"run_id": pl.Utf8, **{m[0]: pl.Float64 for m in METRICS}})


def iterations_of(runs: pl.DataFrame, run_id: str) -> list[str]:
    """The run and its siblings that differ only in the seed, in seed order."""
    me = runs.filter(pl.col("run_id") == run_id)
    keys = [c for c in CONFIG if c in runs.columns]
    same = runs.join(me.select(keys), on=keys, how="semi", nulls_equal=True)
    return same.sort("seed")["run_id"].to_list()


@dataclass
class Stat:
    mean: float  # Hmean or Amean
    am: float  # the arithmetic mean: the confidence interval's centre
    sd: float
    n: int

    @property
    def lo(self) -> float:
        """The 95% interval of the mean (the centre itself with one sample)."""
        return self.am - (self.half if self.n > 1 else 0.0)

    @property
    def hi(self) -> float:
        return self.am + (self.half if self.n > 1 else 0.0)

    @property
    def half(self) -> float:
        """The half-width of the Student t 95% interval of the mean."""
        if self.n < 2:
            return float("nan")
        return (_T975[self.n - 2] if self.n - 1 <= 30 else 1.96) * self.sd / math.sqrt(self.n)


def stat(values: list, kind: str) -> Stat:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return Stat(float("nan"), float("nan"), float("nan"), 0)
    n = len(vals)
    am = sum(vals) / n
    sd = math.sqrt(sum((v - am) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    mean = n / sum(1 / v for v in vals) if kind == "Hmean" and all(v > 0 for v in vals) else am
    return Stat(mean, am, sd, n)


def _pct(value: float, base: float, higher: bool) -> float:
    if base == 0 or math.isnan(base) or math.isnan(value):
        return 0.0 if value == base else float("nan")
    return (value / base * 100 - 100) * (1 if higher else -1)


def compare_stats(m: pl.DataFrame, columns: list[list[str]], labels: list[str], cpus) -> list[dict]:
    """mmtests' rows for one CPU count: per metric, its mean, Stddev and CoeffVar in
    every column (a column: one configuration's iterations), each with the % change
    against the first column and, for means, whether the difference is significant."""
    rows = []
    for name, label, kind, higher in METRICS:
        stats = [stat(m.filter(pl.col("run_id").is_in(runs))[name].to_list(), kind) for runs in columns]
        base = stats[0]
        for i, (st, lbl) in enumerate(zip(stats, labels)):
            sig = (i > 0 and st.n > 1 and base.n > 1
                   and (st.am - st.half > base.am + base.half or st.am + st.half < base.am - base.half))
            cv = 100 * st.sd / st.am if st.n and st.am else float("nan")
            base_cv = 100 * base.sd / base.am if base.n and base.am else float("nan")
            for k, v, b, hb in ((kind, st.mean, base.mean, higher), ("Stddev", st.sd, base.sd, False),
                                ("CoeffVar", cv, base_cv, False)):
                rows.append({"kind": k, "metric": label, "cpus": cpus, "label": lbl, "value": v,
                             "pct_change": 0.0 if i == 0 else _pct(v, b, hb),
                             "significant": bool(sig) if k == kind else False, "iterations": st.n})
    return rows


def render(rows: list[dict], labels: list[str]) -> list[str]:
    """Rows of one or more CPU counts as compare-kernels prints them: grouped by kind
    (the means, then Stddev, then CoeffVar) and metric, a line per CPU count; the kind
    padded to 10, the metric to 17, values with four decimals."""
    width = max(16, max(len(x) for x in labels) + 2)
    lines = [" " * 27 + "".join(f"{x:>{width + 11}}" for x in labels)]
    order = {k: i for i, k in enumerate(("Hmean", "Amean", "Stddev", "CoeffVar"))}
    metric_order = {m[1]: i for i, m in enumerate(METRICS)}
    keyed: dict = {}
    for r in rows:
        keyed.setdefault((order[r["kind"]] // 2 if r["kind"] in ("Hmean", "Amean") else order[r["kind"]],
                          metric_order[r["metric"]], r["cpus"], r["kind"]), []).append(r)
    for (_, _, cpus, kind), cells in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1], _num(kv[0][2]))):
        out = []
        for r in cells:
            mark = ("*", "*") if r["significant"] else ("(", ")")
            v = r["value"]
            out.append(f"{v:>{width}.4f} {mark[0]}{r['pct_change']:7.2f}%{mark[1]}")
        metric = f"{cells[0]['metric']}-{cpus}"
        lines.append(f"{kind:<10}{metric:<17}" + "".join(out))
    return lines


def _num(c):
    return c if isinstance(c, (int, float)) else float("inf")
