"""Plots that read without the terminal, each from a library query's rows:

* ``throughput``: faults/sec and faults/cpu against CPUs, one line per trace and model
  (and machine, placement, ... where those vary), each point the Hmean of its
  iterations (runs that differ only in seed) with the Student t 95% interval as error
  bars, and the % change against a baseline model beneath - the panels of mmtests'
  graphs and compare-kernels (``replay/compare.py`` gives the statistics);
* ``latency``: the fault-latency survival curve (share of faults taking at least x) on
  log-log axes, p50/p99/p99.9 marked, so the tail shows;
* ``timeline``: fallbacks and lock waits per time bucket, empty buckets drawn as zero;
* ``lockwait``: a heatmap of lock wait per simulated CPU and time bucket;
* ``lines``: the hottest cache lines with the struct fields on each, as ``perf c2c``
  lists them, as a line x CPU heatmap (HITMs or all transfers into each CPU, CPUs
  grouped by socket), above a heatmap of the line transfers each CPU caused over time;
* ``footprint``: the VMA slab footprint of a trace per model.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import polars as pl

# the parameters a throughput line is drawn per (with cpus the x axis and seed the iterations)
LINE_KEY = ["trace_id", "model", "machine", "placement", "loop", "fault_service_ns"]


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
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format=out.suffix[1:].lower())


def check_suffix(out: Path) -> None:
    """Refuse a file type before any work is done."""
    if Path(out).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"-o must end in .png, .svg or .pdf, not {Path(out).name!r}")


def _cpu_axis(ax, cpus: list[int]) -> None:
    """Ticks at the CPU counts measured; log2 spacing when they span 8x or more."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    labels = [str(c) for c in cpus]
    if min(cpus) > 0 and max(cpus) / min(cpus) >= 8:
        ax.set_xscale("log", base=2)
        # on log2 spacing two counts under a third of an octave apart (110 and 128) print
        # over each other: keep the tick, drop the label of the one before, from the right
        shown = None
        for i in sorted(range(len(cpus)), key=lambda i: -cpus[i]):
            if shown is not None and math.log2(shown / cpus[i]) < 1 / 3:
                labels[i] = ""
            else:
                shown = cpus[i]
    ax.xaxis.set_major_locator(FixedLocator(cpus))
    ax.xaxis.set_major_formatter(FixedFormatter(labels))
    ax.xaxis.set_minor_locator(NullLocator())


def throughput_points(tp: pl.DataFrame, baseline: str | None = None) -> tuple[pl.DataFrame, str]:
    """Per line (LINE_KEY) and CPU count: the iterations, their Hmean and 95% interval
    for faults/sec and faults/cpu, and the % change against the same line of the
    baseline model.  ``tp``: the throughput query's rows joined with their ``runs``
    rows (seed, placement, loop, fault_service_ns; semantics, if given: then each point is
    drawn from its runs at the newest engine semantics the workspace holds for it).
    Returns the points and the baseline."""
    from .compare import stat

    if "semantics" in tp.columns:  # a workspace older than the engine holds a point at several
        # engine semantics (the run ids differ): each point is drawn from its newest runs
        newest = tp.group_by(LINE_KEY + ["cpus"]).agg(pl.col("semantics").max().alias("_newest"))
        tp = tp.join(newest, on=LINE_KEY + ["cpus"], nulls_equal=True).filter(
            pl.col("semantics") == pl.col("_newest")).drop("_newest")
    models = sorted(tp["model"].unique().to_list())
    base = baseline or ("mmap_lock" if "mmap_lock" in models else models[0])
    if base not in models:
        raise ValueError(f"--baseline {base}: no run of that model among these ({', '.join(models)})")
    rows = []
    for key, g in tp.group_by(LINE_KEY + ["cpus"]):
        d = dict(zip(LINE_KEY + ["cpus"], key))
        seeds = g["seed"].to_list()
        if len(set(seeds)) != len(seeds):  # cannot happen: same parameters, semantics and seed = same run id
            raise ValueError(f"two runs of {d} with one seed")
        for col, name in (("faults_per_sec", "fps"), ("faults_per_cpu_sec", "fpc")):
            s = stat(g[col].to_list(), "Hmean")
            d |= {name: s.mean, f"{name}_lo": s.lo, f"{name}_hi": s.hi}
        d["n"] = g.height
        rows.append(d)
    pts = pl.DataFrame(rows)
    other = [k for k in LINE_KEY if k != "model"]
    b = pts.filter(pl.col("model") == base).select(other + ["cpus", pl.col("fps").alias("b_fps"), pl.col("fpc").alias("b_fpc")])
    pts = pts.join(b, on=other + ["cpus"], how="left", nulls_equal=True).with_columns(
        (100 * (pl.col("fps") / pl.col("b_fps") - 1)).alias("fps_pct"),
        (100 * (pl.col("fpc") / pl.col("b_fpc") - 1)).alias("fpc_pct"))
    return pts.sort(LINE_KEY + ["cpus"]), base


def throughput(tp: pl.DataFrame, out: Path, baseline: str | None = None) -> dict:
    """faults/sec and faults/cpu vs CPUs, one line per (trace, model, ...), with the %
    change against the baseline model beneath each.  Returns what was drawn."""
    plt = _plt()
    pts, base = throughput_points(tp, baseline)
    # name only the parameters that tell lines apart (a trace's fault service time
    # follows from the trace, so it is named only where one trace has several)
    vary = [k for k in LINE_KEY if k != "model" and pts[k].n_unique() > 1]
    nlines = pts.select(LINE_KEY).unique().height
    for k in reversed(list(vary)):
        if pts.select([c for c in ["model", *vary] if c != k]).unique().height == nlines:
            vary.remove(k)
    models = sorted(pts["model"].unique().to_list())
    variants = sorted({tuple(r[k] for k in vary) for r in pts.iter_rows(named=True)}, key=str)
    colors = plt.get_cmap("tab10")
    markers = "osD^vx*P"
    dashes = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    cpus = sorted(pts["cpus"].unique().to_list())
    for key, g in sorted(pts.group_by(LINE_KEY), key=lambda kv: [str(x) for x in kv[0]]):
        d = dict(zip(LINE_KEY, key))
        mi = models.index(d["model"])
        vi = variants.index(tuple(d[k] for k in vary))
        label = d["model"] + "".join(f" · {_short(k, d[k])}" for k in vary)
        style = dict(color=colors(mi % 10), marker=markers[mi % len(markers)], linestyle=dashes[vi % len(dashes)],
                     alpha=0.9, capsize=3, markersize=5)
        g = g.sort("cpus")
        x = g["cpus"].to_list()
        for col, (ax, axp) in zip(("fps", "fpc"), zip(axes[0], axes[1])):
            m = g[col].to_numpy() / 1e6
            # the interval is of the arithmetic mean (compare.stat, as mmtests): it can
            # miss the Hmean by a rounding error when the iterations agree
            err = [(m - g[f"{col}_lo"].to_numpy() / 1e6).clip(0), (g[f"{col}_hi"].to_numpy() / 1e6 - m).clip(0)]
            ax.errorbar(x, m, yerr=err, label=label if col == "fps" else None, **style)
            p = g.filter(pl.col(f"{col}_pct").is_not_null())
            if p.height:
                axp.plot(p["cpus"].to_list(), p[f"{col}_pct"].to_list(), color=style["color"],
                         marker=style["marker"], linestyle=style["linestyle"], alpha=0.9, markersize=5)
    axes[0][0].set_ylabel("faults per second (millions)")
    axes[0][1].set_ylabel("faults per CPU-second (millions)\n(faults / on-CPU time in faults, as pft)")
    axes[0][0].set_title("faults/sec")
    axes[0][1].set_title("faults/cpu")
    for axp, what in zip(axes[1], ("faults/sec", "faults/cpu")):
        axp.axhline(0, color="0.4", linewidth=0.8)
        axp.set_ylabel(f"{what}, % vs {base}")
        axp.set_xlabel("simulated CPUs")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        _cpu_axis(ax, cpus)
    n = pts["n"]
    if n.max() == 1:
        how = "one run per point: no error bars (replay sweep --iterations K gives K seeds)"
    else:
        how = (f"points: Hmean over {n.min()}-{n.max()} iterations (seeds); bars: Student t 95% interval of the mean"
               if n.min() != n.max() else f"points: Hmean over {n.max()} iterations (seeds); "
                                          "bars: Student t 95% interval of the mean")
        if (pts["fps_hi"] - pts["fps_lo"]).abs().max() == 0:
            how += " - zero here: the iterations gave identical results"
    fixed = [_short(k, pts[k][0]) for k in LINE_KEY if k != "model" and pts[k].n_unique() == 1]
    fig.suptitle("Simulated page-fault throughput: " + ", ".join(fixed), y=0.995)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, title="lock model" + "".join(f" · {k}" for k in vary), loc="upper left",
               bbox_to_anchor=(1.0, 0.93), fontsize=8, title_fontsize=8)
    fig.text(0.01, -0.01, how, fontsize=8, color="0.3", ha="left", va="top")
    fig.tight_layout()
    drawn = {"points": pts, "baseline": base, "labels": labels, "xticks": list(axes[1][0].get_xticks()), "note": how}
    _save(fig, out)
    plt.close(fig)
    return drawn


def _short(k: str, v) -> str:
    if k == "fault_service_ns":
        return f"service {v:g} ns"
    if k == "loop":
        return f"{v} loop"
    return str(v)


def latency_ccdf(surv: pl.DataFrame, marks: pl.DataFrame, labels: dict[str, str], out: Path) -> dict:
    """surv: the latency_survival query's fault rows of the runs; marks: the latency
    query's fault rows (p50_ns, p99_ns, p999_ns).  Returns the curves and marks drawn."""
    plt = _plt()
    drawn: dict = {}
    fig, ax = plt.subplots(figsize=(8.5, 5))
    colors = plt.get_cmap("tab10")
    lowest = 1.0
    shown = [("p50_ns", 0.5, "o", "p50"), ("p99_ns", 0.01, "s", "p99"), ("p999_ns", 0.001, "^", "p99.9")]
    for i, (run_id, label) in enumerate(labels.items()):
        g = surv.filter(pl.col("run_id") == run_id).sort("ge_ns")
        if g.height == 0:
            continue
        n = int(g["ops"].sum())
        a = (g["ge_ns"] / 1e3).to_list()
        fr = g["at_least_frac"].to_list()
        step = 10 ** (1 / 40)
        # exact at the bin edges: S(a_k) = fr_k; S falls to fr_{k+1} across bin k (its
        # ops are somewhere in it) and stays there until the next bin with ops
        xs, ys = [a[0]], [1.0]
        for k in range(len(a)):
            xs += [a[k]]
            ys += [fr[k]]
            if k + 1 < len(a):
                xs += [min(a[k] * step, a[k + 1]), a[k + 1]]  # adjacent bins: the same edge
                ys += [fr[k + 1], fr[k + 1]]
        lowest = min(lowest, 1 / n)
        m = marks.filter(pl.col("run_id") == run_id)
        txt = ""
        if m.height:
            r = m.row(0, named=True)
            txt = "  " + " ".join(f"{nm} {_fmt_us(r[col] / 1e3)}" for col, p, _, nm in shown if n * p >= 1)
        c = colors(i % 10)
        ax.plot(xs, ys, color=c, linewidth=1.4, label=f"{label}{txt}")
        drawn[run_id] = {"x_us": xs, "y": ys, "marks": []}
        if m.height:
            for col, p, mk, _ in shown:
                if n * p >= 1:
                    ax.plot([r[col] / 1e3], [p], marker=mk, color=c, markersize=7, markerfacecolor="white",
                            markeredgewidth=1.5, linestyle="none")
                    drawn[run_id]["marks"].append((r[col] / 1e3, p))
    for _, p, mk, nm in shown:
        ax.axhline(p, color="0.6", linewidth=0.7, linestyle=":")
        ax.annotate(nm, xy=(1.0, p), xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8, color="0.35")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(lowest / 2, 1.5)
    ax.set_title("Fault latency survival: share of faults taking at least x (lock waits included)")
    ax.set_xlabel("fault latency x (µs, log scale)")
    ax.set_ylabel("share of faults ≥ x (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="run: percentiles marked ○ p50  □ p99  △ p99.9", fontsize=8, title_fontsize=8,
              loc="upper left", bbox_to_anchor=(0, -0.14))
    _save(fig, out)
    plt.close(fig)
    return drawn


def _fmt_us(us: float) -> str:
    return f"{us * 1e3:.0f} ns" if us < 1 else (f"{us:.2f} µs" if us < 10 else (f"{us:,.0f} µs" if us < 1e4 else f"{us / 1e3:,.1f} ms"))


def _filled(g: pl.DataFrame, bucket_ms: float, nb: int, cols: list[str]) -> dict:
    """Bucket values over 0..nb-1, zero where the query has no row (nothing started there)."""
    import numpy as np

    idx = (g["bucket_ms"] / bucket_ms).round().cast(pl.Int64).to_numpy()
    out = {}
    for c in cols:
        v = np.zeros(nb)
        np.add.at(v, idx, g[c].fill_null(0).to_numpy().astype(float))
        out[c] = v
    return out


def _nbuckets(df: pl.DataFrame, bucket_ms: float) -> int:
    return int(round(df["bucket_ms"].max() / bucket_ms)) + 1 if df.height else 1


def timeline(tl: pl.DataFrame, labels: dict[str, str], out: Path, bucket_ms: float = 1.0) -> dict:
    """tl: the timeline query's rows, at ``bucket_ms``.  Returns the bucket edges and
    each run's series as drawn."""
    import numpy as np

    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    nb = _nbuckets(tl, bucket_ms)
    edges = np.arange(nb + 1) * bucket_ms
    drawn: dict = {"edges": edges}
    for run_id, label in labels.items():
        v = drawn[run_id] = _filled(tl.filter(pl.col("run_id") == run_id), bucket_ms, nb, ["fallbacks", "lock_wait_ms"])
        line = a1.stairs(v["fallbacks"], edges, label=label, linewidth=1.3)
        a2.stairs(v["lock_wait_ms"], edges, color=line.get_edgecolor(), linewidth=1.3)
    w = f"{bucket_ms:g} ms"
    a1.set_title(f"Fallbacks and lock waits over simulated time ({w} buckets; empty buckets are zero)")
    a1.set_ylabel(f"faults falling back\nper {w}")
    a2.set_ylabel(f"time blocked on locks\nper {w} (ms)")
    a2.set_xlabel(f"simulated time (ms), {w} buckets; an op counts in the bucket it started in")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.set_xlim(0, edges[-1])
        a.set_ylim(bottom=0)
    fig.legend(title="run", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return drawn


def _heat(ax, m, bucket_ms: float, cmap: str, vmax: float):
    """A CPU x time grid; cells with nothing are white, so zero differs from a little."""
    import numpy as np
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
    return ax.imshow(np.ma.masked_equal(m, 0), aspect="auto", origin="lower", interpolation="nearest", cmap=cm, vmin=0,
                     vmax=vmax if vmax > 0 else 1, extent=(0, m.shape[1] * bucket_ms, -0.5, m.shape[0] - 0.5))


def _cpu_grid(g: pl.DataFrame, col: str, bucket_ms: float, nb: int):
    """``col`` per CPU (rows: the CPUs that started an op, in order) and bucket."""
    import numpy as np

    cpus = sorted(g["sim_cpu"].unique().to_list())
    m = np.zeros((max(len(cpus), 1), nb))
    if g.height:
        row = {c: i for i, c in enumerate(cpus)}
        ci = np.array([row[c] for c in g["sim_cpu"].to_list()])
        bi = (g["bucket_ms"] / bucket_ms).round().cast(pl.Int64).to_numpy()
        np.add.at(m, (ci, bi), g[col].fill_null(0).to_numpy().astype(float))
    return m, cpus


def _cpu_ticks(ax, cpus: list[int], total: int) -> None:
    step = max(1, math.ceil(len(cpus) / 16))
    ax.set_yticks(range(0, len(cpus), step))
    ax.set_yticklabels([str(c) for c in cpus[::step]])
    ax.set_ylabel("simulated CPU" + (f"\n(the {len(cpus)} of {total} that ran ops)" if len(cpus) < total else ""))


def lockwait(cw: pl.DataFrame, runs: dict[str, dict], out: Path, bucket_ms: float = 1.0) -> dict:
    """cw: the cpu_lock_wait query's rows; runs: run id -> its runs row (label, cpus).
    Returns each run's CPU x bucket grid (µs) and its rows' CPUs, as drawn."""
    plt = _plt()
    nb = _nbuckets(cw, bucket_ms)
    grids = {r: _cpu_grid(cw.filter(pl.col("run_id") == r), "lock_wait_us", bucket_ms, nb) for r in runs}
    vmax = max(float(g.max()) for g, _ in grids.values())
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.2 + 2.4 * len(runs)), sharex=True, squeeze=False)
    for ax, (r, info) in zip(axes[:, 0], runs.items()):
        m, cpus = grids[r]
        im = _heat(ax, m, bucket_ms, "magma_r", vmax)
        ax.set_title(f"{info['label']}: {m.sum() / 1e3:,.2f} ms blocked in all", fontsize=9, loc="left")
        _cpu_ticks(ax, cpus, info["cpus"])
    axes[-1, 0].set_xlabel(f"simulated time (ms), {bucket_ms:g} ms buckets (white: no wait); each lock wait in the "
                           "buckets it happened in (the run's waits)")
    fig.suptitle("Time blocked on locks per simulated CPU", y=1.0)
    fig.tight_layout()
    fig.colorbar(im, ax=axes[:, 0].tolist(), label=f"µs blocked per {bucket_ms:g} ms", fraction=0.03, pad=0.01)
    _save(fig, out)
    plt.close(fig)
    return grids


def short_fields(fields: str) -> str:
    """Struct fields as the summary tables print them (vm_area_struct.x -> vma.x)."""
    return (fields or "").replace("vm_area_struct.", "vma.").replace("mm_struct.", "mm.")


LINE_COUNTS = {"hitm": "HITM (loads finding the line Modified in another CPU)", "all": "transfers (every move)"}


def _socket_columns(lc: pl.DataFrame) -> list[tuple[int, int]]:
    """The (socket, CPU) pairs that received a line, grouped by socket."""
    return sorted(set(zip(lc["socket"].to_list(), lc["cpu"].to_list())))


def lines(hot: pl.DataFrame, lc: pl.DataFrame, cw: pl.DataFrame, info: dict, out: Path, bucket_ms: float = 1.0,
          count: str = "hitm") -> dict:
    """hot: the c2c query's rows of one run (idx, mm, line, fields, hitm, transfers,
    invalidations), the lines to draw; lc: its line_cpu query's rows; cw: its
    cpu_lock_wait rows; info: its runs row with a label.  Above, perf c2c's view as a
    heatmap: a row per line (its address and the struct fields on it), a column per
    simulated CPU that received one of them (grouped by socket), the colour how many
    times the CPU took the line - ``count`` hitm or all transfers, log scale; beside each
    row its totals.  Below, which CPUs moved lines when.  Returns what was drawn: the
    lines, their labels, the line x CPU matrix and its columns, the CPU x time grid."""
    import matplotlib
    import matplotlib.colors as mcolors
    import numpy as np

    if count not in LINE_COUNTS:
        raise ValueError(f"--count must be one of {', '.join(LINE_COUNTS)}, not {count!r}")
    plt = _plt()
    hot = hot.sort("idx")
    k = hot.height
    keys = list(zip(hot["mm"].to_list(), hot["line"].to_list()))
    mine = lc.join(hot.select("mm", "line"), on=["mm", "line"], how="semi")
    cols = _socket_columns(mine)
    col = {c: i for i, (_, c) in enumerate(cols)}
    row = {key: i for i, key in enumerate(keys)}
    mat = np.zeros((k, max(len(cols), 1)))
    metric = "hitm" if count == "hitm" else "transfers"
    for r in mine.iter_rows(named=True):
        mat[row[(r["mm"], r["line"])], col[r["cpu"]]] += r[metric]
    several_mms = hot["mm"].n_unique() > 1
    wrapped = []
    for r in hot.iter_rows(named=True):
        w = textwrap.wrap(short_fields(r["fields"]), 58) or ["(no field named)"]
        head = r["line"] + (f" ({r['mm']})" if several_mms else "")
        wrapped.append([head] + w)
    per_row = max(len(w) for w in wrapped)
    row_h = 0.16 * per_row + 0.12
    top_h = row_h * k + 2.0
    ncol = max(len(cols), 1)
    width = min(max(11.0, 5.2 + 0.22 * ncol + 3.2), 24.0)
    H = top_h + 3.6
    fig = plt.figure(figsize=(width, H))
    gs = fig.add_gridspec(2, 1, height_ratios=[top_h, 3.0], hspace=0.9 / ((top_h + 3.0) / 2))
    ax = fig.add_subplot(gs[0])
    ax2 = fig.add_subplot(gs[1])
    fig.subplots_adjust(left=0.36, right=0.80, top=1 - 0.8 / H, bottom=0.55 / H)
    cm = matplotlib.colormaps["inferno_r"].with_extremes(bad="white")
    vmax = max(float(mat.max()), 1.0)
    im = ax.imshow(np.ma.masked_equal(mat, 0), aspect="auto", interpolation="nearest", cmap=cm,
                   norm=mcolors.LogNorm(vmin=1, vmax=vmax if vmax > 1 else 10), extent=(-0.5, ncol - 0.5, k - 0.5, -0.5))
    ax.set_yticks(range(k))
    ax.set_yticklabels(["\n".join(w) for w in wrapped], family="monospace", fontsize=7)
    step = max(1, math.ceil(ncol / 40))
    ax.set_xticks(range(0, len(cols), step))
    ax.set_xticklabels([str(c) for _, c in cols[::step]], fontsize=7)
    ax.set_xlabel("simulated CPU that received the line" + (f" (the {len(cols)} of {info['cpus']} that took one)"
                                                            if len(cols) < info["cpus"] else ""))
    for i in range(1, k):
        ax.axhline(i - 0.5, color="0.85", linewidth=0.6)
    sockets = [s for s, _ in cols]
    for s in sorted(set(sockets)):
        lo, hi = sockets.index(s), len(sockets) - 1 - sockets[::-1].index(s)
        if lo:
            ax.axvline(lo - 0.5, color="black", linewidth=1.2)
        ax.text((lo + hi) / 2, -0.5, f"socket {s}", ha="center", va="bottom", fontsize=8,
                transform=ax.transData, clip_on=False)
    heads = (("HITM", "hitm"), ("xfers", "transfers"), ("inval", "invalidations"))
    for j, (h, c) in enumerate(heads):  # the line's totals, in columns a fixed width apart right of the grid
        at = dict(xycoords=("axes fraction", "data"), textcoords="offset points", ha="right", annotation_clip=False)
        ax.annotate(h, (1, -0.5), xytext=(44 + 48 * j, 2), va="bottom", fontsize=7.5, weight="bold", **at)
        for i, r in enumerate(hot.iter_rows(named=True)):
            v = r[c]
            ax.annotate("-" if v is None else f"{v:,}", (1, i), xytext=(44 + 48 * j, 0), va="center", fontsize=7,
                        family="monospace", **at)
    what = LINE_COUNTS[count]
    ax.set_title(f"the {k} lines with the most {'HITMs' if count == 'hitm' else 'transfers'}: how often each CPU took "
                 f"each, counted as {what}; white: never", fontsize=9, loc="left", pad=16)
    cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.6 / (row_h * k + 0.6), aspect=50,
                      pad=0.75 / (row_h * k + 0.6))
    cb.set_label(f"{'HITMs' if count == 'hitm' else 'transfers'} into the CPU (log scale)", fontsize=8)
    nb = _nbuckets(cw, bucket_ms)
    m, cpus = _cpu_grid(cw, "line_transfers", bucket_ms, nb)
    im2 = _heat(ax2, m, bucket_ms, "viridis_r", float(m.max()))
    _cpu_ticks(ax2, cpus, info["cpus"])
    ax2.set_xlabel(f"simulated time (ms), {bucket_ms:g} ms buckets (white: none)")
    ax2.set_title("line transfers each CPU's ops caused over time, all lines together (an op counts in the bucket it "
                  "started in)", fontsize=9, loc="left")
    fig.colorbar(im2, ax=ax2, label=f"transfers per {bucket_ms:g} ms", fraction=0.03, pad=0.01)
    fig.suptitle(f"Cache-line traffic, as perf c2c reads it: {info['label']}", x=0.02, ha="left", y=0.995)
    _save(fig, out)
    plt.close(fig)
    return {"lines": [line for _, line in keys], "fields": ["\n".join(w[1:]) for w in wrapped], "matrix": mat,
            "matrix_cpus": [c for _, c in cols], "matrix_sockets": sockets, "count": count, "grid": m, "cpus": cpus}


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
