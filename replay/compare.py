"""mmtests compare-kernels tables over runs.

mmtests reports a metric per thread count as the harmonic mean over iterations, the
% change against the first kernel (sign flipped for lower-is-better metrics), and
marks a difference significant (``*  *``) when the two 95% confidence intervals do
not overlap, ``(  )`` when they do.  A replay has no iterations, so each run is cut
into ``WINDOWS`` equal spans of simulated time and each span is one sample: the
faults/sec a span achieved, its faults per CPU-second, its mean fault latency, its
fallback rate.  The interval is the Student t 95% interval of the samples' mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

WINDOWS = 10
# t(0.975, df) for df = 1..30; above that the normal 1.96
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# (name, label, mean kind, higher is better)
METRICS = [
    ("faults_per_sec", "faults/sec", "Hmean", True),
    ("faults_per_cpu", "faults/cpu", "Hmean", True),
    ("fault_ns", "fault-ns", "Amean", False),
    ("fallback_pct", "fallback-pct", "Amean", False),
]


def samples(res: pl.DataFrame) -> pl.DataFrame:
    """One row per (run, window) with each metric's value in that window."""
    res = res.with_columns((pl.col("start_ns") - pl.col("start_ns").min().over("run_id")).alias("t"))
    span = res.group_by("run_id").agg(pl.col("t").max().alias("span"))
    res = res.join(span, on="run_id").with_columns(
        (pl.col("t") * WINDOWS // (pl.col("span") + 1)).cast(pl.Int32).alias("window"))
    f = res.filter(pl.col("kind") == "fault")
    return f.group_by("run_id", "window").agg(
        (pl.len() / (pl.col("span").first() / WINDOWS / 1e9)).alias("faults_per_sec"),
        (pl.len() / ((pl.col("end_ns") - pl.col("start_ns")).sum() / 1e9)).alias("faults_per_cpu"),
        (pl.col("end_ns") - pl.col("start_ns")).mean().alias("fault_ns"),
        (100 * pl.col("fallback").mean()).alias("fallback_pct"),
    ).sort("run_id", "window")


@dataclass
class Stat:
    mean: float
    lo: float
    hi: float


def stat(values: list[float], kind: str) -> Stat:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return Stat(float("nan"), float("nan"), float("nan"))
    n = len(vals)
    if kind == "Hmean" and all(v > 0 for v in vals):
        mean = n / sum(1 / v for v in vals)
    else:
        mean = sum(vals) / n
    if n < 2:
        return Stat(mean, mean, mean)
    am = sum(vals) / n
    sd = math.sqrt(sum((v - am) ** 2 for v in vals) / (n - 1))
    half = (_T975[n - 2] if n - 1 <= 30 else 1.96) * sd / math.sqrt(n)
    return Stat(mean, am - half, am + half)


def run_samples(path, run_id: str) -> pl.DataFrame:
    """``samples()`` of one run's results file, reading only the columns they need (a
    sweep compares runs of millions of ops)."""
    res = pl.read_parquet(path, columns=["kind", "start_ns", "end_ns", "fallback"])
    return samples(res.with_columns(pl.lit(run_id).alias("run_id")))


def compare_stats(s: pl.DataFrame, columns: list[list[str]], labels: list[str]) -> list[dict]:
    """Per metric and column: the Stat over the samples of the column's runs (one run,
    or a sweep's iterations pooled), the % change against the first column (sign
    flipped where lower is better) and whether the difference is significant."""
    rows = []
    for name, label, kind, higher in METRICS:
        stats = [stat(s.filter(pl.col("run_id").is_in(runs))[name].to_list(), kind) for runs in columns]
        base = stats[0]
        for i, (st, lbl) in enumerate(zip(stats, labels)):
            if i == 0 or base.mean == 0 or math.isnan(base.mean):
                pct = 0.0
            else:
                pct = (st.mean / base.mean * 100 - 100) * (1 if higher else -1)
            rows.append({"metric": label, "mean_kind": kind, "label": lbl, "mean": st.mean, "ci_low": st.lo,
                         "ci_high": st.hi, "pct_change": pct, "significant": i > 0 and (st.lo > base.hi or st.hi < base.lo)})
    return rows


def render(rows: list[dict], labels: list[str], ncpus) -> list[str]:
    """``compare_stats`` rows as mmtests compare-kernels lines, one per metric."""
    width = max(14, max(len(x) for x in labels) + 2)
    lines = [" " * 24 + "".join(f"{x:>{width + 12}}" for x in labels)]
    for k in range(0, len(rows), len(labels)):
        cells = []
        for r in rows[k:k + len(labels)]:
            mark = ("*", "*") if r["significant"] else ("(", ")")
            cells.append(f"{r['mean']:>{width}.2f} {mark[0]}{r['pct_change']:>7.2f}%{mark[1]}")
        head = f"{rows[k]['mean_kind']} {rows[k]['metric']}-{ncpus}"
        lines.append(f"{head:<24}" + "".join(f"{c:>{width + 12}}" for c in cells))
    return lines


def table(res: pl.DataFrame, runs: list[str], labels: list[str], cpus: dict[str, int]) -> list[str]:
    c = {cpus[r] for r in runs}
    return render(compare_stats(samples(res), [[r] for r in runs], labels), labels, c.pop() if len(c) == 1 else "n")
