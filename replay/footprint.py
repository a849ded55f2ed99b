"""The memory side of each design: the slab memory a trace's VMAs take under each model,
over the trace's lifetime, and which vm_area_struct fields a fault touches on which line.

* **Objects over time.**  The op builder's VMA tracker gives every VMA its lifetime
  (``vmas``: created_ns, null = existed at the start; freed_ns, null = never freed).
  Each VMA is one vm_area_struct object, and, where the design has one (pervma), one
  struct vma_lock with the same lifetime (vm_area_alloc()/vm_area_dup() allocate it,
  the VMA's free frees it).  ``object_series`` counts them at every change.
* **Freeing.**  ``free_mode``: a design whose faults look VMAs up without mmap_lock and
  whose cache is not SLAB_TYPESAFE_BY_RCU frees each VMA through call_rcu(): the object
  (and its vma_lock) stays allocated for the grace period (the machine profile's
  ``rcu_grace_period_ns``, an estimate; ``--grace-period`` overrides) - ``rcu_held``.
  With SLAB_TYPESAFE_BY_RCU the slot is free at once (and may be reused at once, which
  is what lock_vma_under_rcu() re-checks); without per-VMA locks it is freed at once.
* **Slabs.**  Each cache's geometry comes from the model's layout through SLUB's rules
  (replay/slub.py); the slabs a count of objects needs are counted as if packed:
  ceil(objects / objects per slab).  That is a lower bound - SLUB keeps per-CPU and
  partial slabs, so a real cache holds more - and it is the same bound for every model.
* **Hot fields.**  ``field_lines`` reads the model's fault program along its fast path
  (every check passing) and lists the struct fields each micro-op touches, as the
  engine does (replay/engine/micro.py and the lock routines), line by line of the object, with the
  lock's line marked and, from a run's ``line_stats``, the transfers per fault on each.
"""

from __future__ import annotations

import math

import polars as pl

from .engine.isa import Op
from .slub import kmem_cache

FREE_IMMEDIATE, FREE_CALL_RCU, FREE_TYPESAFE = "immediate", "call_rcu", "typesafe"

SERIES_SCHEMA = {
    "model": pl.Utf8, "machine": pl.Utf8, "nr_cpus": pl.Int32, "cache": pl.Utf8, "free_mode": pl.Utf8,
    "grace_period_ns": pl.Int64, "object_size": pl.Int32, "slot_size": pl.Int32, "align": pl.Int32,
    "objs_per_slab": pl.Int32, "slab_order": pl.Int32, "cache_desc": pl.Utf8,
    "t_ns": pl.Int64, "live": pl.Int64, "rcu_held": pl.Int64, "objects": pl.Int64, "frees": pl.Int64,
    "slabs": pl.Int64, "pages": pl.Int64, "slab_kib": pl.Float64, "payload_kib": pl.Float64, "align_kib": pl.Float64,
}


def free_mode(layout) -> str:
    """How vm_area_free() returns an object: at once into a SLAB_TYPESAFE_BY_RCU cache,
    after a grace period (call_rcu()), or at once (no lockless readers)."""
    if "SLAB_TYPESAFE_BY_RCU" in layout.vma.slab_flags:
        return FREE_TYPESAFE
    return FREE_CALL_RCU if layout.free_after_gp else FREE_IMMEDIATE


def caches(model, nr_cpus: int) -> list:
    """The slab caches a model's VMAs live in: vm_area_struct, and vma_lock where separate."""
    lay = model.layout
    out = [kmem_cache(lay.vma, nr_cpus)]
    if lay.vma_lock_in == "vma_lock" and lay.vma_lock is not None:
        out.append(kmem_cache(lay.vma_lock, nr_cpus))
    return out


def trace_span(ops_path, vmas: pl.DataFrame) -> tuple[int, int]:
    """The trace's first and last moment: its ops, and the VMA changes they made."""
    from .workspace import scan_ops

    o = scan_ops(ops_path).select(pl.col("start_ns").min().alias("a"),
                                  pl.max_horizontal(pl.col("start_ns").max(), pl.col("end_ns").max()).alias("b")).collect()
    lo = [x for x in (o["a"][0], vmas["created_ns"].min(), vmas["freed_ns"].min()) if x is not None]
    hi = [x for x in (o["b"][0], vmas["created_ns"].max(), vmas["freed_ns"].max()) if x is not None]
    return (int(min(lo)), int(max(hi))) if lo else (0, 0)


def object_series(vmas: pl.DataFrame, t0: int, t1: int, hold_ns: int) -> pl.DataFrame:
    """Objects at every change in [t0, t1] (times relative to t0): ``live`` (VMAs that
    exist), ``rcu_held`` (freed less than ``hold_ns`` ago: still allocated), ``frees``
    (VMAs freed so far).  Each row is the state from its t_ns to the next row's; the
    last row is at t1 - t0."""
    born = vmas.select(pl.col("created_ns").fill_null(t0).clip(t0, None).alias("t"))
    freed = vmas.filter(pl.col("freed_ns").is_not_null()).select(pl.col("freed_ns").alias("t"))
    parts = [born.with_columns(pl.lit(1).alias("dl"), pl.lit(0).alias("dh"), pl.lit(0).alias("df")),
             freed.with_columns(pl.lit(-1).alias("dl"), pl.lit(1 if hold_ns > 0 else 0).alias("dh"), pl.lit(1).alias("df"))]
    if hold_ns > 0:
        parts.append(freed.select((pl.col("t") + hold_ns).alias("t"), pl.lit(0).alias("dl"), pl.lit(-1).alias("dh"),
                                  pl.lit(0).alias("df")))
    ev = pl.concat([p.cast({"t": pl.Int64, "dl": pl.Int64, "dh": pl.Int64, "df": pl.Int64}) for p in parts])
    ev = pl.concat([ev, pl.DataFrame({"t": [t0, t1]}, schema={"t": pl.Int64}).with_columns(
        pl.lit(0, pl.Int64).alias("dl"), pl.lit(0, pl.Int64).alias("dh"), pl.lit(0, pl.Int64).alias("df"))])
    s = (ev.group_by("t").agg(pl.col("dl").sum(), pl.col("dh").sum(), pl.col("df").sum()).sort("t")
         .with_columns(pl.col("dl").cum_sum().alias("live"), pl.col("dh").cum_sum().alias("rcu_held"),
                       pl.col("df").cum_sum().alias("frees")))
    return s.filter(pl.col("t") <= t1).select((pl.col("t") - t0).alias("t_ns"), "live", "rcu_held", "frees")


def time_weighted_mean(s: pl.DataFrame, col: str) -> float:
    """The mean of ``col`` over time, each row holding until the next one's t_ns."""
    dur = s["t_ns"].shift(-1) - s["t_ns"]
    span = s["t_ns"].max() - s["t_ns"].min()
    if not span:
        return float(s[col].max())
    return float((s[col] * dur).sum()) / span


def model_series(model, machine, vmas: pl.DataFrame, t0: int, t1: int, grace_period_ns: float | None = None) -> pl.DataFrame:
    """One row per cache per change: objects, slabs, pages, KiB (SERIES_SCHEMA)."""
    gp = int(machine.rcu_grace_period_ns if grace_period_ns is None else grace_period_ns)
    mode = free_mode(model.layout)
    base = object_series(vmas, t0, t1, gp if mode == FREE_CALL_RCU else 0)
    out = []
    for c in caches(model, machine.ncpus):
        objects = pl.col("live") + pl.col("rcu_held")
        slabs = (objects + (c.objects - 1)) // c.objects
        out.append(base.with_columns(objects.alias("objects")).with_columns(
            slabs.alias("slabs"), (slabs * (1 << c.order)).alias("pages"),
            (slabs * c.slab_bytes / 1024).alias("slab_kib"), (pl.col("objects") * c.object_size / 1024).alias("payload_kib"),
            (pl.col("objects") * (c.size - c.object_size) / 1024).alias("align_kib"),
            pl.lit(model.name).alias("model"), pl.lit(machine.name).alias("machine"), pl.lit(machine.ncpus).alias("nr_cpus"),
            pl.lit(c.name).alias("cache"), pl.lit(mode).alias("free_mode"),
            pl.lit(gp if mode == FREE_CALL_RCU else 0).alias("grace_period_ns"), pl.lit(c.object_size).alias("object_size"),
            pl.lit(c.size).alias("slot_size"), pl.lit(c.align).alias("align"), pl.lit(c.objects).alias("objs_per_slab"),
            pl.lit(c.order).alias("slab_order"), pl.lit(c.describe()).alias("cache_desc")))
    return pl.concat(out).select([pl.col(k).cast(v) for k, v in SERIES_SCHEMA.items()])


# -- which fields a fault touches ------------------------------------------------------------

_BRANCH = {Op.CHECK_SEQ, Op.RWSEM_TRYLOCK_READ, Op.REF_GET, Op.CHECK_MM, Op.WALK, Op.CHECK_RANGE, Op.CHECK_DETACHED}


def fast_path(program: list) -> list:
    """The instructions a compiled program runs when every check passes (no abort, no
    fallback): conditional branches fall through, GOTOs jump, until END."""
    seen, pc, out = set(), 0, []
    while pc < len(program) and pc not in seen:
        seen.add(pc)
        ins = program[pc]
        if ins[0] == Op.END:
            break
        out.append(ins)
        pc = ins[1] if ins[0] == Op.GOTO else pc + 1
    return out


def _lock_fields(model, lock: str) -> list[tuple[str, str]]:
    """(object, field prefix) of an rwsem the programs name."""
    if lock == "mmap_lock":
        return [("mm", "mmap_lock.")]
    if model.layout.vma_lock_in == "vma_lock":
        return [("vma_lock", "lock.")]
    return [("vma", "lock.")]


def touches(model, ins) -> list[tuple[str, str, str]]:
    """(object, field, access) an instruction touches - what the engine's micro-op
    loads, stores or changes atomically (replay/engine/micro.py's handlers and the lock
    routines in rwsem.py and vma.py): access is read, rmw (atomic) or store."""
    op = ins[0]
    vma_fields = model.layout.vma.fields
    if op in (Op.READ, Op.PREFETCHW, Op.STORE):
        obj, f = ins[1], ins[2]
        if obj == "vma" and f not in vma_fields:  # vm_lock when the layout has none: the engine reads vm_start
            f = "vm_start"
        return [(obj, f, {Op.READ: "read", Op.PREFETCHW: "rmw", Op.STORE: "store"}[op])]
    if op == Op.WALK:
        return [("mm", "mm_mt", "read")]
    if op == Op.CHECK_SEQ:
        return [("vma", "vm_lock_seq", "read"), ("mm", "mm_lock_seq", "read")]
    if op in (Op.CHECK_RANGE, Op.CHECK_DETACHED):
        return [("vma", "vm_start", "read")]
    if op == Op.CHECK_MM:
        return [("vma", "vm_mm", "read")]
    if op == Op.REF_GET:
        return [("vma", "vm_refcnt", "read"), ("vma", "vm_refcnt", "rmw")]
    if op == Op.REF_PUT:
        return [("vma", "vm_refcnt", "rmw")]
    if op in (Op.RWSEM_TRYLOCK_READ, Op.RWSEM_DOWN_READ):
        out = []
        for obj, pre in _lock_fields(model, ins[1]):
            if op == Op.RWSEM_TRYLOCK_READ:
                out.append((obj, pre + "count", "read"))
            out += [(obj, pre + "count", "rmw"), (obj, pre + "owner", "store")]
        return out
    if op in (Op.RWSEM_UP_READ, Op.RWSEM_DOWN_WRITE, Op.RWSEM_UP_WRITE):
        return [(obj, pre + "count", "rmw") for obj, pre in _lock_fields(model, ins[1])]
    return []


def fault_touches(model) -> list[tuple[str, str, str]]:
    """What a user fault touches on its fast path, in program order (duplicates kept)."""
    return [t for ins in fast_path(model.programs["fault"]) for t in touches(model, ins)]


def lock_field(model) -> tuple[str, str] | None:
    """(object, field) of the per-VMA lock word, or None (mmap_lock only)."""
    lay = model.layout
    if "vm_refcnt" in lay.vma.fields:
        return ("vma", "vm_refcnt")
    if lay.vma_lock_in == "vma":
        return ("vma", "lock.count")
    if lay.vma_lock_in == "vma_lock":
        return ("vma_lock", "lock.count")
    return None


def _line_transfers(line_stats: pl.DataFrame | None, struct_name: str, fields: dict) -> dict[int, int]:
    """Transfers per object line (offset // 64) from a run's line_stats: each line's
    transfers go to every object line whose fields it lists (a line two unaligned
    objects share counts for both)."""
    out: dict[int, int] = {}
    if line_stats is None:
        return out
    pre = struct_name + "."
    for names, tr in zip(line_stats["fields"].to_list(), line_stats["transfers"].to_list()):
        idx = {fields[n[len(pre):]] // 64 for n in (x.strip() for x in names.split(",")) if n.startswith(pre)
               and n[len(pre):] in fields}
        for i in idx:
            out[i] = out.get(i, 0) + tr
    return out


def field_lines(model, line_stats: pl.DataFrame | None = None, faults: int | None = None) -> list[dict]:
    """One row per 64-byte line of each per-VMA struct of the model (vm_area_struct,
    and vma_lock where separate): the fields on it, those the fault's fast path touches
    (with the access), whether it is the lock's line, the transfers per fault a run saw
    on it, and which of its fields could move onto the lock's line without adding
    fault-time accesses (the fault touches none of them)."""
    lay = model.layout
    lk = lock_field(model)
    fault = fault_touches(model)
    structs = [("vma", lay.vma)] + ([("vma_lock", lay.vma_lock)] if lay.vma_lock_in == "vma_lock" else [])
    rows = []
    for obj, st in structs:
        per_line = _line_transfers(line_stats, st.name, st.fields)
        touched = {}
        for o, f, acc in fault:
            if o == obj:
                touched.setdefault(f, [])
                if acc not in touched[f]:
                    touched[f].append(acc)
        lock_line = st.fields[lk[1]] // 64 if lk and lk[0] == obj else None
        for i in range(math.ceil(st.size / 64)):
            on = sorted((off, f) for f, off in st.fields.items() if off // 64 == i)
            names = [f for _, f in on]
            t = [f"{f} ({'+'.join(touched[f])})" for f in names if f in touched]
            rows.append({
                "model": model.name, "struct": st.name, "line": i, "bytes": f"{64 * i}-{min(64 * i + 63, st.size - 1)}",
                "lock_line": i == lock_line, "fields": ", ".join(names), "fault_touches": ", ".join(t),
                "untouched": ", ".join(f for f in names if f not in touched),
                "transfers_per_fault": round(per_line.get(i, 0) / faults, 3) if faults else None,
            })
    return rows
