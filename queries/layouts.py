"""Tables printed in a kernel tool's own layout, so they read like the tool's output.

A library query whose header says ``-- layout: NAME`` prints its table through
``LAYOUTS[NAME](rows, params)``; ``-f csv|json|ndjson|parquet`` still give its columns.

- ``lock_stat``: /proc/lock_stat, as kernel/locking/lockdep_proc.c (v6.18) prints it:
  ``seq_header()``, ``seq_stats()``, ``seq_lock_time()``, ``snprint_time()``.  It is as
  wide as the kernel's (40 + 1 + 12 * 15 = 221 columns).
- ``lock_contention``: ``perf lock contention``, as tools/perf/builtin-lock.c prints it
  (``print_header_stdio()``, ``print_lock_stat_stdio()``, ``lock_stat_key_print_time()``),
  with perf 6.1's default keys: contended, total wait, max wait, avg wait.
- ``c2c``: ``perf c2c report --stdio``'s Shared Data Cache Line Table
  (tools/perf/builtin-c2c.c), with only the columns a replay counts.
"""

from __future__ import annotations

LOCK_STAT_WIDTH = 40 + 1 + 12 * (14 + 1)
LOCK_STAT_HEADER = ("class name", "con-bounces", "contentions", "waittime-min", "waittime-max", "waittime-total",
                    "waittime-avg", "acq-bounces", "acquisitions", "holdtime-min", "holdtime-max", "holdtime-total",
                    "holdtime-avg")
NOT_RECORDED = "-"  # a column the engine does not record (the query's header says which)


def snprint_time(ns: int) -> str:
    """lockdep_proc.c snprint_time(): ns as us with two decimals, rounded as the kernel
    rounds (nr += 5; div_s64_rem(nr, 1000, &rem); "%lld.%02d", div, rem / 10)."""
    nr = ns + 5
    div, rem = int(nr / 1000), int(abs(nr) % 1000)  # C division truncates towards zero
    return f"{div}.{rem // 10:02d}"


def _time(us) -> str:
    return f" {NOT_RECORDED if us is None else snprint_time(int(round(us * 1000))):>14}"


def _count(n) -> str:
    return f"{NOT_RECORDED if n is None else n:>14}"


def lock_stat_class_line(name: str, rw: str, con_bounces, contentions, wait: tuple, acq_bounces, acquisitions,
                         hold: tuple) -> str:
    """One seq_stats() statistics line: ``wait`` and ``hold`` are (min, max, total, avg)
    in us.  rw "W" or "R" adds lockdep's -W/-R (a class with both); anything else, none."""
    head = f"{name:>38}-{rw}:" if rw in ("W", "R") else f"{name:>40}:"
    return (head + f"{_count(con_bounces)} " + _count(contentions) + "".join(_time(x) for x in wait)
            + f" {_count(acq_bounces)} " + _count(acquisitions) + "".join(_time(x) for x in hold))


def lock_stat_header() -> list[str]:
    return (["lock_stat version 0.4", "-" * LOCK_STAT_WIDTH,
             f"{LOCK_STAT_HEADER[0]:>40} " + " ".join(f"{h:>14}" for h in LOCK_STAT_HEADER[1:]),
             "-" * LOCK_STAT_WIDTH, ""])


def _by_run(rows: list[dict], params: dict):
    """Each run's rows in order, with the ``run X:`` line a printout of several runs (or of
    every run) starts each block with."""
    runs = list(dict.fromkeys(r["run_id"] for r in rows))
    for run in runs:
        yield run, [r for r in rows if r["run_id"] == run], (
            [f"run {run}:"] if len(runs) > 1 or not params.get("run_id") else [])


def lock_stat(rows: list[dict], params: dict) -> list[str]:
    """The ``lock_stat`` query's rows as /proc/lock_stat, one block per run."""
    out: list[str] = []
    for run, mine, title in _by_run(rows, params):
        out += title
        out += lock_stat_header()
        for cls in dict.fromkeys(r["class_name"] for r in mine if r["section"] == "class"):
            c = next(r for r in mine if r["section"] == "class" and r["class_name"] == cls)
            rw = {"R": "R", "W": "W"}.get(c["rw"], "")
            if c["rw"] == "R":  # lockdep prints -R only beside a -W line; a read-only class has just -R
                rw = "R"
            out.append(lock_stat_class_line(
                cls, rw, c["con_bounces"], c["contentions"],
                (c["waittime_min_us"], c["waittime_max_us"], c["waittime_total_us"], c["waittime_avg_us"]),
                c["acq_bounces"], c["acquisitions"],
                (c["holdtime_min_us"], c["holdtime_max_us"], c["holdtime_total_us"], c["holdtime_avg_us"])))
            pts = [r for r in mine if r["section"] == "contention_point" and r["class_name"] == cls]
            if not c["contentions"] or not pts:  # seq_stats(): no waits, no points
                continue
            namelen = len(cls) + (2 if rw == "R" else 0)
            out.append(" " * (40 - namelen) + "-" * namelen)  # seq_line(m, '-', 40 - namelen, namelen)
            for p in pts:  # "%40s %14lu %29s %pS": no instruction address in a replay
                out.append(f"{cls:>40} {p['points']:>14} {'':>29} {p['call_site']}")
    out += ["", "# replay: each rw_semaphore class is one line, reads and writes together (the engine does not split",
            "# them; lockdep prints -W and -R lines); acq-bounces and contending points are not recorded (-); the",
            "# vm_refcnt class vm_lock has only its read acquisitions (replay query --list lock_stat: its header)."]
    return out


# perf lock contention --------------------------------------------------------------------
# (header, width) of perf 6.1's default output fields; builtin-lock.c contention_keys
CONTENTION_KEYS = (("contended", 10), ("total wait", 12), ("max wait", 12), ("avg wait", 12))
_UNITS = ((1e9 * 3600, "h "), (1e9 * 60, "m "), (1e9, "s "), (1e6, "ms"), (1e3, "us"))


def perf_time(nsec: int, width: int = 12) -> str:
    """builtin-lock.c lock_stat_key_print_time(): the largest unit not above the value,
    "%*.2f %s" in len - 3 columns; under 1 us, "%*llu ns"."""
    for base, unit in _UNITS:
        if nsec >= base:
            return f"{nsec / base:{width - 3}.2f} {unit}"
    return f"{nsec:{width - 3}d} ns"


def contention_header(by: str) -> list[str]:
    keys = "".join(f"{h:>{w}} " for h, w in CONTENTION_KEYS)
    tail = {"task": f"  {'pid':>10}   comm", "lock": f"  {'address':>16}   symbol"}.get(by, f"  {'type':>10}   caller")
    return [keys + tail, ""]


def contention_line(by: str, contended: int, total_ns: int, max_ns: int, avg_ns: int, *, type: str = "",
                    caller: str = "", pid: int = -1, comm: str = "", address: str = "", symbol: str = "") -> str:
    keys = f"{contended:{CONTENTION_KEYS[0][1]}d} " + "".join(
        perf_time(v, w) + " " for v, (_, w) in zip((total_ns, max_ns, avg_ns), CONTENTION_KEYS[1:]))
    if by == "task":
        return keys + f"  {pid:10d}   {comm if pid != -1 else 'Unknown'}"
    if by == "lock":  # perf: "%016llx" of the lock's address; a replay has the mm's key (pid:N, or mm=)
        return keys + f"  {address:>16}   {symbol} (rwsem)"
    return keys + f"  {type:>10}   {caller}"


def lock_contention(rows: list[dict], params: dict) -> list[str]:
    """The ``lock_contention`` query's rows as perf lock contention prints them."""
    by = params.get("by") or "caller"
    out: list[str] = []
    runs = list(dict.fromkeys(r["run_id"] for r in rows))
    for run in runs:
        if len(runs) > 1 or not params.get("run_id"):
            out.append(f"run {run}:")
        out += contention_header(by)
        for r in (x for x in rows if x["run_id"] == run):
            ns = [int(round(r[k])) for k in ("total_wait_ns", "max_wait_ns", "avg_wait_ns")]
            out.append(contention_line(by, r["contended"], *ns, type=r.get("type") or "", caller=r.get("caller") or "",
                                       pid=r["pid"] if r.get("pid") is not None else -1, comm=r.get("comm") or "",
                                       address=r.get("address") or "", symbol=r.get("symbol") or ""))
        out.append("")
    return out[:-1] if out else out


# perf c2c ------------------------------------------------------------------------------------
# perf c2c report --stdio's Shared Data Cache Line Table (tools/perf/builtin-c2c.c
# perf_c2c__hists_fprintf(); the column groups as perf 6.x heads them), with only the
# columns a replay counts: (group, header, row key, width)
C2C_COLUMNS = (("Load Hitm", "Total", "hitm", 8), ("Load Hitm", "LclHitm", "lcl_hitm", 8),
               ("Load Hitm", "RmtHitm", "rmt_hitm", 8), ("Stores", "L1Miss", "store_miss", 8),
               ("LLC Load Hit", "LclHit", "lcl_hit", 8), ("LLC Load Hit", "LclHitm", "lcl_hitm", 8),
               ("RMT Load Hit", "RmtHit", "rmt_hit", 8), ("RMT Load Hit", "RmtHitm", "rmt_hitm", 8),
               ("Pfetch", "fills", "prefetch", 8), ("Total", "xfers", "transfers", 8), ("cpu", "cnt", "cpu_cnt", 5))
C2C_SHOWN = {"tot": ("Tot", "Hitm"), "rmt": ("Rmt", "Hitm"), "lcl": ("Lcl", "Hitm"), "transfers": ("Xfer", "share")}
C2C_BANNER = ["=================================================",
              "           Shared Data Cache Line Table          ",
              "================================================="]


def _c2c_groups() -> tuple[str, str]:
    """Two header lines: each run of columns of one group under a dashed group title."""
    top, sub = "", ""
    i = 0
    while i < len(C2C_COLUMNS):
        g = C2C_COLUMNS[i][0]
        j = i
        while j < len(C2C_COLUMNS) and C2C_COLUMNS[j][0] == g:
            j += 1
        cols = C2C_COLUMNS[i:j]
        width = sum(w for *_, w in cols) + len(cols) - 1
        title = f" {g} " if j - i > 1 else g
        top += "  " + (title.center(width, "-") if j - i > 1 else f"{title:>{width}}")
        sub += "".join(f"  {h:>{w}}" if k == 0 else f" {h:>{w}}" for k, (_, h, _, w) in enumerate(cols))
        i = j
    return top, sub


def c2c(rows: list[dict], params: dict) -> list[str]:
    """The ``c2c`` query's rows as perf c2c report --stdio's Shared Data Cache Line Table,
    each line followed by its fields at their offsets (the Pareto's Data address Offset)."""
    shown = C2C_SHOWN[params.get("display") or "tot"]
    top, sub = _c2c_groups()
    out: list[str] = []
    for run, mine, title in _by_run(rows, params):
        out += title
        out += [*C2C_BANNER, "#",
                f"#        ----------- Cacheline ----------------------  {shown[0]:>8}" + top,
                f"# Index             Address            mm  {shown[1]:>8}" + sub + "  Node{cpu list}", "#"]
        if all(r["hitm"] is None for r in mine):
            out.append(f"# run {run} was replayed before the engine counted transfers per CPU: replay run it again")
            continue
        for r in mine:
            pct = "-" if r["pct"] is None else f"{r['pct']:.2f}%"
            cells = "".join(f"  {_count(r[k]).strip():>{w}}" if n == 0 or C2C_COLUMNS[n - 1][0] != g
                            else f" {_count(r[k]).strip():>{w}}" for n, (g, _, k, w) in enumerate(C2C_COLUMNS))
            out.append(f"  {r['idx']:>5}  {r['line']:>18}  {r['mm']:>12}  {pct:>8}" + cells + f"  {r['nodes'] or ''}")
            for off in (r["offsets"] or r["fields"] or "").split(", "):
                out.append(f"{'':>29}{off}")
        out.append("")
    out += ["# replay: every transfer of a line is counted, not sampled, so hits are not: no Total records/Loads/",
            "# Stores, Core Load Hit, Stores L1Hit, Load Dram (memory is not modelled), PA cnt, cycles, or code",
            "# address.  A locked RMW counts as a load (Load Hitm), a plain store as a store; Pfetch fills",
            "# (prefetchw, adjacent-line prefetch) and Total xfers are not perf columns; nodes are sockets; an SMT",
            "# sibling's Modified copy counts as a LclHitm (replay query --list shows c2c's columns)."]
    return out


LAYOUTS = {"lock_stat": lock_stat, "lock_contention": lock_contention, "c2c": c2c}
