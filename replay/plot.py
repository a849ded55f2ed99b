"""Plots that read without the terminal: throughput vs CPUs per model, fault-latency
CDF per run, the fallback/contention timeline of a run, and the VMA slab footprint of a
trace per model."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    from .workspace import atomic_output

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"-o must end in .png, .svg or .pdf, not {out.name!r}")
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")


def throughput(tp: pl.DataFrame, out: Path) -> None:
    """tp: the throughput query's rows (model, machine, trace_id, cpus, faults_per_sec)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("x", "--")]
    for i, ((model,), g) in enumerate(sorted(tp.group_by(["model"]), key=lambda kv: kv[0][0])):
        g = g.sort("cpus")
        m, ls = styles[i % len(styles)]
        ax.plot(g["cpus"], g["faults_per_sec"] / 1e6, marker=m, linestyle=ls, alpha=0.85, label=model)
    traces = ", ".join(sorted(tp["trace_id"].unique().to_list()))
    machines = ", ".join(sorted(tp["machine"].unique().to_list()))
    ax.set_title(f"Simulated page-fault throughput: {traces} on {machines}")
    ax.set_xlabel("simulated CPUs")
    ax.set_ylabel("faults per second (millions)")
    ax.grid(alpha=0.3)
    ax.legend(title="lock model")
    _save(fig, out)
    plt.close(fig)


def latency_cdf(res: pl.DataFrame, labels: dict[str, str], out: Path) -> None:
    """res: results rows of the runs to draw (faults only)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_id, label in labels.items():
        d = res.filter((pl.col("run_id") == run_id) & (pl.col("kind") == "fault")).select(
            ((pl.col("end_ns") - pl.col("start_ns")) / 1e3).alias("us")).sort("us")["us"]
        if d.len() == 0:
            continue
        y = [(i + 1) / d.len() for i in range(d.len())]
        ax.plot(d.to_list(), y, label=label)
    ax.set_xscale("log")
    ax.set_title("Fault latency, CDF (lock waits included)")
    ax.set_xlabel("fault latency (µs, log scale)")
    ax.set_ylabel("fraction of faults")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="run")
    _save(fig, out)
    plt.close(fig)


def timeline(tl: pl.DataFrame, labels: dict[str, str], out: Path) -> None:
    """tl: the timeline query's rows."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for run_id, label in labels.items():
        g = tl.filter(pl.col("run_id") == run_id).sort("bucket_ms")
        a1.step(g["bucket_ms"], g["fallbacks"], where="post", label=label)
        a2.step(g["bucket_ms"], g["lock_wait_ms"], where="post", label=label)
    a1.set_title("Fallbacks and lock waits over simulated time")
    a1.set_ylabel("faults falling back\nper bucket")
    a2.set_ylabel("time blocked on locks\nper bucket (ms)")
    a2.set_xlabel("simulated time (ms)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(title="run", fontsize=8)
    _save(fig, out)
    plt.close(fig)


def footprint(fp: pl.DataFrame, trace: str, out: Path) -> None:
    """fp: per model, machine and t_ns, the slab KiB, objects and RCU-held objects
    (the footprint dataset summed over a model's caches)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    styles = ["-", "--", "-.", ":"]
    groups = sorted(fp.group_by(["model", "machine"]), key=lambda kv: (-kv[1]["kib"].max(), kv[0]))
    machines = sorted(fp["machine"].unique().to_list())
    for i, ((model, machine), g) in enumerate(groups):
        g = g.sort("t_ns")
        label = model if len(machines) == 1 else f"{model} ({machine})"
        t = (g["t_ns"] / 1e6).to_list()
        a1.step(t, g["kib"].to_list(), where="post", linestyle=styles[i % len(styles)], linewidth=1.6, label=label)
        a2.step(t, g["objects"].to_list(), where="post", linestyle=styles[i % len(styles)], linewidth=1.3, label=label)
    a1.set_title(f"VMA slab memory over the trace: {trace} ({', '.join(machines)})")
    a1.set_ylabel("slab memory (KiB)\nvm_area_struct + vma_lock")
    a2.set_ylabel("slab objects\n(live + awaiting RCU)")
    a2.set_xlabel("time since the trace's start (ms)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(title="lock model", fontsize=8, ncol=2)
    _save(fig, out)
    plt.close(fig)
