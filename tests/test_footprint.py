"""The memory side of each design (issue 13): SLUB's slab arithmetic for each layout,
VMA objects over a trace's lifetime with and without the call_rcu() delay, the
``footprint`` dataset and query, the hot-fields table and the plot.

The slab figures below are worked by hand from mm/slub.c (calculate_sizes(),
calculate_order(), calc_slab_order()) and mm/slab_common.c (calculate_alignment()):

* min_objects = 4 * (fls(nr_cpus) + 1): 56 CPUs -> fls = 6 -> 28; 2 CPUs -> fls = 2 -> 12.
* min_order = get_order(min_objects * size); then the first order from there whose
  leftover (slab % size) is at most 1/16 of the slab.
"""

import json

import polars as pl
import pytest

from conftest import SAMPLES


# -- SLUB arithmetic, by hand ---------------------------------------------------------------

def _struct(size, align, flags=("SLAB_PANIC", "SLAB_ACCOUNT"), freeptr_in_object=False):
    from replay.models.base import Struct

    return Struct("toy", size, align, {}, sizes={}, slab_flags=flags, freeptr_in_object=freeptr_in_object)


@pytest.mark.parametrize("size,align,flags,freeptr,cpus,want_size,want_objs,want_order", [
    # 176 bytes (v6.10-v6.14), 8-aligned, no HWCACHE_ALIGN (KMEM_CACHE(vm_area_struct, SLAB_PANIC|SLAB_ACCOUNT)):
    # 56 CPUs: 28 * 176 = 4928 -> order 1; 8192 % 176 = 96 <= 8192/16 -> order 1, 8192 // 176 = 46
    (176, 8, ("SLAB_PANIC", "SLAB_ACCOUNT"), False, 56, 176, 46, 1),
    # 2 CPUs: 12 * 176 = 2112 -> order 0; 4096 % 176 = 48 <= 256 -> 23 a page
    (176, 8, ("SLAB_PANIC", "SLAB_ACCOUNT"), False, 2, 176, 23, 0),
    # 184 bytes (v6.4-v6.9): 28 * 184 = 5152 -> order 1; 8192 % 184 = 96 <= 512 -> 44
    (184, 8, ("SLAB_PANIC", "SLAB_ACCOUNT"), False, 56, 184, 44, 1),
    # 152 bytes (v6.3): 28 * 152 = 4256 -> order 1; 8192 % 152 = 136 <= 512 -> 53 (the v8
    # 02/16 posting's slabinfo shows the same rule: 176 -> 46 and 160 -> 51 per 2 pages)
    (152, 8, ("SLAB_PANIC", "SLAB_ACCOUNT"), False, 56, 152, 53, 1),
    # struct vma_lock, 40 bytes: 28 * 40 = 1120 -> order 0; 4096 % 40 = 16 -> 102 a page
    (40, 8, ("SLAB_PANIC", "SLAB_ACCOUNT"), False, 56, 40, 102, 0),
    # 192 bytes cache-aligned (mainline): 28 * 192 = 5376 -> order 1; 8192 % 192 = 128 <= 512 -> 42
    (192, 64, ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT"), True, 56, 192, 42, 1),
    # 2 CPUs: 12 * 192 = 2304 -> order 0; 4096 % 192 = 64 <= 256 -> 21 a page
    (192, 64, ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT"), True, 2, 192, 21, 0),
    # 256 bytes cache-aligned (v7/v8): 28 * 256 = 7168 -> order 1, no leftover -> 32
    (256, 64, ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT"), True, 56, 256, 32, 1),
    # 2 CPUs: 12 * 256 = 3072 -> order 0 -> 16 a page
    (256, 64, ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT"), True, 2, 256, 16, 0),
    # SLAB_TYPESAFE_BY_RCU without a free-pointer offset (the v5 posting, with a ctor): the
    # free pointer goes after the object, 192 + 8 = 200, and HWCACHE_ALIGN makes it 256
    (192, 64, ("SLAB_HWCACHE_ALIGN", "SLAB_PANIC", "SLAB_TYPESAFE_BY_RCU", "SLAB_ACCOUNT"), False, 56, 256, 32, 1),
    # HWCACHE_ALIGN on a small object aligns to the power of two above half its size:
    # 24 bytes -> 32 (calculate_alignment(): ralign halves while size <= ralign / 2)
    (24, 8, ("SLAB_HWCACHE_ALIGN",), False, 56, 32, 128, 0),
])
def test_slab_geometry_by_hand(size, align, flags, freeptr, cpus, want_size, want_objs, want_order):
    from replay.slub import kmem_cache

    c = kmem_cache(_struct(size, align, flags, freeptr), cpus)
    assert (c.size, c.objects, c.order) == (want_size, want_objs, want_order)
    assert c.slab_bytes == 4096 << want_order
    assert c.tail == c.slab_bytes - want_objs * want_size


def test_slub_alignment_and_order_rules():
    from replay.slub import calculate_alignment, calculate_order, get_order

    assert calculate_alignment(("SLAB_HWCACHE_ALIGN",), 8, 176) == 64
    assert calculate_alignment((), 16, 176) == 16
    assert calculate_alignment((), 1, 3) == 8  # at least ARCH_SLAB_MINALIGN, a word multiple
    assert calculate_alignment(("SLAB_HWCACHE_ALIGN",), 8, 16) == 16
    assert [get_order(n) for n in (1, 4096, 4097, 8192, 8193)] == [0, 0, 1, 1, 2]
    # a 3000-byte object on 2 CPUs: min_objects 12, capped at the 10 that fit in order 3;
    # min_order = get_order(30000) = 3; 32768 % 3000 = 2768 > 32768/16, so 1/16 fails
    # (order 4 is past slub_max_order) and 1/8 (4096) accepts order 3
    assert calculate_order(3000, 2) == 3
    # 1/16 met at once for 256-byte slots on 56 CPUs: get_order(28 * 256) = 1
    assert calculate_order(256, 56) == 1


def test_every_model_has_its_cache_flags_and_free_rule():
    """The layout data says how each struct's cache is created; SLAB_TYPESAFE_BY_RCU in
    it agrees with what the engine simulates (slots reused at once)."""
    from replay.footprint import free_mode
    from replay.models import registry

    for m in registry().values():
        lay = m.layout
        assert "SLAB_PANIC" in lay.vma.slab_flags, m.name
        typesafe = "SLAB_TYPESAFE_BY_RCU" in lay.vma.slab_flags
        assert typesafe == bool(m.params.get("typesafe_by_rcu")), m.name
        assert free_mode(lay) == ("typesafe" if typesafe else "call_rcu" if lay.free_after_gp else "immediate")
        if lay.vma_lock_in == "vma_lock":
            assert lay.vma_lock.slab_flags, m.name
    assert free_mode(registry()["pervma"].layout) == "call_rcu"
    assert free_mode(registry()["mmap_lock"].layout) == "immediate"
    assert free_mode(registry()["mainline"].layout) == "typesafe"


def test_cache_flags_leave_run_ids_alone():
    """The slab data describes the allocator, not the simulation: model digests (and so
    run ids) do not depend on it, nor on the field sizes (which only the layout check
    reads).  (The digests pinned here last changed with semantics 34 - the fault programs'
    IRET before each END; before that 31, the writer program's VMA walk, VMA_START_WRITE_NEXT in a loop where VMA_START_WRITE_ALL was; before that 29,
    the fault programs' mm->pgd load and the mm_struct layouts' pgd field; the slab flags
    were already there.)"""
    from replay.models import get_model

    assert get_model("v8").digest() == "9c62540d4e53c77a"
    assert get_model("pervma").digest() == "b3fa7c4b8659b2c7"
    from replay.models.base import Struct

    assert repr(Struct("s", 16, 8, {"a": 0}, sizes={"a": 8})) == repr(Struct("s", 16, 8, {"a": 0}, sizes={"a": 4}))


# -- lifetimes and the call_rcu() delay, on a toy trace -----------------------------------------

MS = 1_000_000


def _toy_vmas():
    # A exists from the start and lives on; B lives 10-20 ms; C 20-21 ms
    return pl.DataFrame({"vma_id": [1, 2, 3], "created_ns": [None, 10 * MS, 20 * MS],
                         "freed_ns": [None, 20 * MS, 21 * MS]}, schema={"vma_id": pl.Int64, "created_ns": pl.Int64,
                                                                        "freed_ns": pl.Int64})


def test_object_counts_over_time_immediate_free():
    from replay.footprint import object_series

    s = object_series(_toy_vmas(), 0, 40 * MS, hold_ns=0)
    got = [(r["t_ns"] // MS, r["live"], r["rcu_held"]) for r in s.iter_rows(named=True)]
    # at 20 ms B goes and C comes: still 2
    assert got == [(0, 1, 0), (10, 2, 0), (20, 2, 0), (21, 1, 0), (40, 1, 0)]
    assert s["frees"].to_list() == [0, 0, 1, 2, 2]


def test_object_counts_over_time_with_a_grace_period():
    """call_rcu(): a freed VMA's object stays allocated for the grace period (5 ms here):
    B until 25 ms, C until 26 ms."""
    from replay.footprint import object_series

    s = object_series(_toy_vmas(), 0, 40 * MS, hold_ns=5 * MS)
    got = [(r["t_ns"] // MS, r["live"], r["rcu_held"]) for r in s.iter_rows(named=True)]
    assert got == [(0, 1, 0), (10, 2, 0), (20, 2, 1), (21, 1, 2), (25, 1, 1), (26, 1, 0), (40, 1, 0)]


def test_time_weighted_footprint_on_the_toy_trace():
    """Objects x time / span: immediate (10*1 + 10*2 + 1*2 + 19*1) / 40 = 1.275;
    with the 5 ms delay (10*1 + 10*2 + 1*3 + 4*3 + 1*2 + 14*1) / 40 = 1.525."""
    from replay.footprint import object_series, time_weighted_mean

    now = object_series(_toy_vmas(), 0, 40 * MS, hold_ns=0)
    late = object_series(_toy_vmas(), 0, 40 * MS, hold_ns=5 * MS)
    objs = lambda s: s.with_columns((pl.col("live") + pl.col("rcu_held")).alias("objects"))  # noqa: E731
    assert time_weighted_mean(objs(now), "objects") == pytest.approx(1.275)
    assert time_weighted_mean(objs(late), "objects") == pytest.approx(1.525)
    assert objs(late)["objects"].max() == 3 and late["rcu_held"].max() == 2


def test_model_series_slabs_pages_and_kib():
    """pervma on 2 CPUs: 184-byte VMAs (v6.4) 22 a page (4096 - 22 * 184 = 48 left) and
    40-byte vma_locks 102 a page; three
    objects at the peak -> one page each; both held through the grace period."""
    from replay.footprint import model_series
    from replay.machines import load_machine
    from replay.models import get_model

    mach = load_machine("local-2vcpu")
    s = model_series(get_model("pervma"), mach, _toy_vmas(), 0, 40 * MS, 5 * MS)
    assert set(s["cache"]) == {"vm_area_struct", "vma_lock"}
    peak = s.filter(pl.col("t_ns") == 21 * MS)
    v = peak.filter(pl.col("cache") == "vm_area_struct").row(0, named=True)
    assert (v["objects"], v["slabs"], v["pages"], v["objs_per_slab"]) == (3, 1, 1, 22)
    assert v["slab_kib"] == 4.0 and v["payload_kib"] == pytest.approx(3 * 184 / 1024)
    lk = peak.filter(pl.col("cache") == "vma_lock").row(0, named=True)
    assert (lk["objects"], lk["objs_per_slab"], lk["free_mode"]) == (3, 102, "call_rcu")
    # mainline reuses at once: no grace period, no vma_lock cache
    m = model_series(get_model("mainline"), mach, _toy_vmas(), 0, 40 * MS, 5 * MS)
    assert set(m["cache"]) == {"vm_area_struct"} and m["rcu_held"].max() == 0 and m["objects"].max() == 2


# -- the CLI, the dataset, the query, the plot ---------------------------------------------------

@pytest.fixture(scope="module")
def fws(tmp_path_factory):
    from replay.cli import main

    ws = tmp_path_factory.mktemp("fp") / "ws"
    assert main(["ingest", str(SAMPLES / "mprotect-race.txt.zst"), "-w", str(ws), "--maps",
                 str(SAMPLES / "mprotect-race.maps"), "-O", "json"]) == 0
    return ws


def test_footprint_cli_every_model(cli, fws):
    from replay.models import registry

    rc, out, err = cli("footprint", "mprotect-race", "-w", fws, "--machine", "local-2vcpu", "-f", "json")
    assert rc == 0, err
    rows = json.loads(out)
    assert {r["model"] for r in rows} == set(registry())
    by = {r["model"]: r for r in rows}
    vmas = pl.read_parquet(fws / "vmas" / "trace_id=mprotect-race" / "part-0.parquet")
    assert by["v8"]["peak_vmas"] == by["pervma"]["peak_vmas"] <= vmas.height
    assert by["pervma"]["call_rcu_calls"] == vmas["freed_ns"].is_not_null().sum()
    assert by["v8"]["call_rcu_calls"] == 0 and by["v8"]["peak_rcu_held"] == 0
    assert by["pervma"]["peak_objects"] >= 2 * by["pervma"]["peak_vmas"]  # a vma_lock each
    # 256-byte VMAs take more than 192-byte ones for the same objects
    assert by["v8"]["peak_kib"] >= by["mainline"]["peak_kib"]
    assert by["v8"]["mean_kib"] > by["mainline"]["mean_kib"]
    # the dataset is in the workspace, and the library query reads it
    rc, out, _ = cli("query", "footprint", "-w", fws, "-p", "trace_id=mprotect-race", "-f", "json")
    assert rc == 0 and {r["model"] for r in json.loads(out)} == set(registry())


def test_footprint_cli_table_and_fields(cli, fws):
    rc, out, err = cli("footprint", "mprotect-race", "-w", fws, "--models", "v8,mainline")
    assert rc == 0, err
    assert "peak_kib" in out and "vm_area_struct" in out
    rc, out, err = cli("footprint", "mprotect-race", "-w", fws, "--fields", "-f", "json")
    assert rc == 0, err
    rows = json.loads(out)
    main = [r for r in rows if r["model"] == "mainline"]
    lock = [r for r in main if r["lock_line"]]
    assert len(lock) == 1 and "vm_refcnt" in lock[0]["fields"]
    # the fields sharing mainline's refcount line are none the fault touches
    assert lock[0]["fault_touches"] == "vm_refcnt (read+rmw)"  # the load, then the cmpxchg
    assert lock[0]["untouched"] == "shared.rb, vm_userfaultfd_ctx, pfnmap_track_ctx"
    # v8: vm_refcnt alone on the fourth line; the third line names nothing the fault reads
    v8 = {r["line"]: r for r in rows if r["model"] == "v8"}
    assert v8[3]["lock_line"] and v8[3]["fields"] == "vm_refcnt" and v8[2]["fault_touches"] == ""
    assert "vm_lock_seq (read)" in v8[0]["fault_touches"] and "vm_mm (read)" in v8[0]["fault_touches"]
    # pervma: the lock is the separate 40-byte vma_lock, with its owner store
    pv = [r for r in rows if r["model"] == "pervma" and r["struct"] == "vma_lock"]
    assert pv[0]["lock_line"] and pv[0]["fault_touches"] == "lock.count (read+rmw), lock.owner (store)"


def test_footprint_errors(cli, fws):
    rc, _, err = cli("footprint", "nope", "-w", fws)
    assert rc == 1 and "no trace 'nope'" in err and "Traceback" not in err
    rc, _, err = cli("footprint", "mprotect-race", "-w", fws, "--models", "v8,bogus")
    assert rc == 2 and "unknown model 'bogus'" in err
    rc, _, err = cli("footprint", "mprotect-race", "-w", fws, "--grace-period", "-5")
    assert rc == 2 and "--grace-period" in err


def test_footprint_plot(cli, fws, tmp_path):
    rc, _, err = cli("footprint", "mprotect-race", "-w", fws)
    assert rc == 0, err
    out = tmp_path / "fp.png"
    rc, _, err = cli("plot", "footprint", "--trace", "mprotect-race", "-w", fws, "-o", out)
    assert rc == 0, err
    assert out.stat().st_size > 10_000
    rc, _, err = cli("plot", "footprint", "--trace", "nope", "-w", fws, "-o", out)
    assert rc == 1 and "footprint" in err


def test_trace_replace_removes_its_footprint(cli, fws, tmp_path):
    from replay.workspace import TRACE_KEYED, Workspace

    assert "footprint" in TRACE_KEYED
    rc, _, err = cli("footprint", "mprotect-race", "-w", fws, "--models", "v8")
    assert rc == 0, err
    ws = Workspace(fws)
    assert ws.committed_files("footprint")
    ws.drop_trace("mprotect-race")
    assert not (fws / "footprint" / "trace_id=mprotect-race").exists()


@pytest.mark.parametrize("point", ["footprint.staged", "footprint.committed"])
def test_footprint_killed_at_each_step(cli, ws, point):
    """kill -9 while committing a footprint: the footprint already there stays whole
    (its rows, or its rows and the new ones merged), and the next writer cleans up."""
    import signal

    from test_workspace_safety import OLD, leftovers, replay

    from replay.workspace import Workspace

    assert cli("ingest", OLD, "-n", "t", "-w", ws)[0] == 0
    rc, _, err = cli("footprint", "t", "--models", "v8", "-w", ws, "-f", "json")
    assert rc == 0, err
    p = replay(ws, "footprint", "t", "--models", "mainline", "-f", "json", fault=point)
    assert p.returncode == -signal.SIGKILL, p.stderr
    (f,) = Workspace(ws).committed_files("footprint")
    want = {"v8", "mainline"} if point == "footprint.committed" else {"v8"}
    assert set(pl.read_parquet(f)["model"]) == want
    assert leftovers(ws)  # the dead writer's staging
    rc, _, err = cli("footprint", "t", "--models", "pervma", "-w", ws, "-f", "json")
    assert rc == 0, err
    assert leftovers(ws) == []
    (f,) = Workspace(ws).committed_files("footprint")
    assert set(pl.read_parquet(f)["model"]) == want | {"pervma"}


@pytest.mark.parametrize("name", ["pft-ftrace", "jvm-alloc", "pft-2t"])
def test_footprint_of_every_sample_trace_under_every_model(cli, tmp_path, name):
    """Issue 13's "footprints for the sample traces under every model": the other samples
    (mprotect-race is above), each model's peak object count at least its peak VMA count
    and the footprint of a 256-byte VMA at least that of a 192-byte one."""
    from replay.models import registry

    ws = tmp_path / "ws"
    assert cli("ingest", SAMPLES / f"{name}.txt.zst", "-w", ws, "--maps", SAMPLES / f"{name}.maps", "-O", "json")[0] == 0
    rc, out, err = cli("footprint", name, "-w", ws, "-f", "json")
    assert rc == 0, err
    by = {r["model"]: r for r in json.loads(out)}
    assert set(by) == set(registry())
    vmas = pl.read_parquet(ws / "vmas" / f"trace_id={name}" / "part-0.parquet")
    for r in by.values():
        assert 0 < r["peak_vmas"] <= vmas.height and r["peak_objects"] >= r["peak_vmas"], r
    assert by["v8"]["peak_kib"] >= by["mainline"]["peak_kib"]
