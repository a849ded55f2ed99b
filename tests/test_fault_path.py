"""handle_mm_fault()'s shared resources (replay/engine/faultpath.py), each pinned by a
hand-checkable case on a toy machine whose latencies are all 1 ns (docs/fault-path.md
section 5): batch sizes by release, one zone lock shared by N CPUs, the per-kind steps,
and a fault's time adding up."""

from __future__ import annotations

import math

import pytest

from engine_harness import Replay, mk
from replay.engine import Service
from replay.engine.faultpath import MEMCG_LEVELS
from replay.machines import load_machine
from replay.models.kernels import fault_path_kernel

TOY = """
name = "toy"
sockets = {sockets}
cores_per_socket = {cores}
smt = 1
fault_service_ns = 1000
{nodes}
[latency_ns]
{lat}

[fault_path]
fixed_ns = 1000
clear_page_ns = {clear}
zone_lock_hold_ns = [[63, {zone_hold}]]
lru_folio_ns = 0
dram_gbps = {dram}

[sources]
{src}

[sources.fault_path]
fixed_ns = "test"
clear_page_ns = "test"
zone_lock_hold_ns = "test"
lru_folio_ns = "test"
dram_gbps = "test"
"""
KEYS = ("l1_hit", "l2_hit", "llc_hit", "smt_handoff", "socket_handoff", "socket_read_shared", "socket_read_exclusive",
        "cross_socket_handoff", "owned_atomic", "dram_local", "dram_remote")


def toy(tmp_path, sockets=1, cores=1, nodes=0, clear=0, lat=0.001, dram=1e9, zone_hold=2000):
    p = tmp_path / f"toy-{sockets}-{cores}-{nodes}-{clear}-{dram:g}-{zone_hold}.toml"
    p.write_text(TOY.format(sockets=sockets, cores=cores, clear=clear, dram=dram, zone_hold=zone_hold,
                            nodes=f"numa_nodes = {nodes}" if nodes else "",
                            lat="\n".join(f"{k} = {lat}" for k in KEYS),
                            src="\n".join(f'{k} = "test"\nfault_service_ns = "test"' if k == "l1_hit" else f'{k} = "test"'
                                          for k in KEYS)))
    return load_machine(str(p))


# the fault path runs where the service comes from the profile; sigma 0: exactly fixed_ns
PROFILE = Service(1000.0, "profile toy", None, 0.0)


def faults(nthreads, n, write=True):
    rows = mk([(t, "fault", 1, 0, None) for _ in range(n) for t in range(nthreads)])
    for r in rows:
        r["write"] = write
    return rows


def replay(model, machine, cpus, rows, service=PROFILE):
    r = Replay(model, machine, cpus, rows, service=service)
    res = r.run()
    return r, res


def zone_acquisitions(r):
    plan = r.meta["plan"]
    return sum(int(x["acquisitions"]) for x, (cls, _) in zip(r.state["res"], plan.resource_names) if cls == "zone->lock")


def counter(r, which):
    """The fault path's counters after its spinlocks: page_counter walks, PTE pages."""
    nn = r.machine.numa_nodes
    return int(r.state["res"][2 * nn + 1 + ("memcg", "pte").index(which)]["acquisitions"])


def lock_acq(r, cls):
    plan = r.meta["plan"]
    return sum(int(x["acquisitions"]) for x, (c, _) in zip(r.state["res"], plan.resource_names) if c == cls)


def test_releases_batch_sizes():
    """The rules by release, as the kernel sources give them."""
    k63, k67, k69, k415 = (fault_path_kernel(r) for r in ("6.3", "6.8", "6.18", "4.15"))
    assert (k63.pcp_batch, k63.pcp_scale_max, k63.lru_batch, k63.memcg_batch) == (63, 0, 15, 64)
    assert (k67.pcp_scale_max, k67.lru_batch) == (5, 15)
    assert k69.lru_batch == 31
    assert (k415.pcp_batch, k415.memcg_batch, k415.rss_per_task, k415.lru_batch) == (31, 32, True, 14)
    assert fault_path_kernel("6.2-rc4").rss_per_task is False  # percpu_counter rss since 6.2
    with pytest.raises(ValueError):
        fault_path_kernel("3.10")


@pytest.mark.parametrize("n,refills", [(628, 10), (629, 11)])
def test_pcp_refill_every_batch_before_67(tmp_path, n, refills):
    """rmqueue_pcplist(): an empty pcp list is refilled with pcp->batch = 63 pages under
    zone->lock (6.3): 630 pages of one CPU take the lock 10 times, 631 eleven - 628
    faults are 630 pages with their 2 PTE pages, 629 faults 631."""
    r, _ = replay("mmap_lock@6.3", toy(tmp_path), 1, faults(1, n))
    assert zone_acquisitions(r) == refills


def test_pcp_refills_grow_from_67(tmp_path):
    """nr_pcp_alloc() (6.7+): refills of 63 << alloc_factor, the factor growing to
    CONFIG_PCP_BATCH_SCALE_MAX = 5 - 63, 126, 252, 504, 1008, then 2016: 10,017 pages
    in 9 refills, held 2000 ns per 63 pages each (the toy's table); 9,977 faults are
    9,997 pages with their 20 PTE pages, 9,998 faults 10,018."""
    r, _ = replay("mainline", toy(tmp_path), 1, faults(1, 9_977))
    assert zone_acquisitions(r) == 9
    zone = r.state["res"][0]
    pages = 63 + 126 + 252 + 504 + 1008 + 4 * 2016
    r2, _ = replay("mainline", toy(tmp_path), 1, faults(1, 9_998))
    assert zone_acquisitions(r2) == 10
    assert zone["hold_total"] == pytest.approx(pages * 2000 / 63, rel=1e-3)


def test_one_zone_lock_serves_one_refill_per_hold(tmp_path):
    """docs/fault-path.md 5.3: a fault takes 1 us and a refill holds the zone lock 2 us
    per 63 pages.  One CPU: 63 faults per 63 + 2 us = 0.969 M faults/s.  64 CPUs on one
    node ask 62 M/s, more than the lock serves, so it is never idle: 63 / 2 us = 31.5 M
    faults/s.  The same 64 CPUs as two nodes of 32 each ask 31.0 M/s of their lock."""
    def rate(machine, cpus, n):
        _, res = replay("mmap_lock@6.3", machine, cpus, faults(cpus, n))
        f = [x for x in res if x["kind"] == "fault"]
        return len(f) / (max(x["end_ns"] for x in f) - min(x["start_ns"] for x in f)) * 1e9

    one = rate(toy(tmp_path), 1, 6300)
    assert one == pytest.approx(63 / (63 * 1000 + 2000) * 1e9, rel=0.01)
    node = rate(toy(tmp_path, cores=64), 64, 3150)  # long enough that the last CPUs' tails are ~1 %
    assert node == pytest.approx(63 / 2000 * 1e9, rel=0.03)
    two = rate(toy(tmp_path, sockets=2, cores=32), 64, 3150)
    assert two > 1.6 * node  # two locks: no longer pinned at one lock's rate


def test_zone_lock_waits_are_spins_on_cpu(tmp_path):
    """A CPU waiting for zone->lock spins (spin_lock_irqsave()): its wait is resource
    time on its CPU - never sleep_ns - and counted as the lock's contention."""
    r, res = replay("mmap_lock@6.3", toy(tmp_path, cores=64), 64, faults(64, 200))
    f = [x for x in res if x["kind"] == "fault"]
    assert sum(x["resource_wait_ns"] for x in f) > 0
    assert all(x["sleep_ns"] == 0 for x in f)
    from replay.engine import load

    stats = [x for x in load.lock_stats(r.state, r.model, r.meta) if x["lock_class"] == "zone->lock"]
    assert stats and stats[0]["contentions"] > 0
    assert sum(s["wait_total_ns"] for s in stats) == pytest.approx(sum(x["resource_wait_ns"] for x in f), rel=0.05)


@pytest.mark.parametrize("model,n,drains", [("mmap_lock@6.8", 15, 1), ("mmap_lock@6.8", 14, 0),
                                            ("mmap_lock@6.9", 31, 1), ("mmap_lock@6.9", 30, 0)])
def test_lru_batch(tmp_path, model, n, drains):
    """folio_add_lru(): the per-CPU folio batch moves to the lruvec under lru_lock when
    full - PAGEVEC_SIZE 15 up to 6.8, 31 from 6.9."""
    r, _ = replay(model, toy(tmp_path), 1, faults(1, n))
    assert lock_acq(r, "lruvec->lru_lock") == drains


@pytest.mark.parametrize("n,walks", [(63, 1), (64, 2)])
def test_memcg_stock(tmp_path, n, walks):
    """try_charge_memcg(): one page_counter walk charges MEMCG_CHARGE_BATCH = 64 pages,
    the next 63 come from the CPU's stock: 63 faults are 64 charges with their PTE page
    (__GFP_ACCOUNT), one walk; 64 faults two."""
    r, res = replay("mmap_lock@6.3", toy(tmp_path), 1, faults(1, n))
    assert counter(r, "memcg") == walks


def test_memcg_walk_touches_each_level(tmp_path):
    """page_counter_try_charge() walks to the root: an atomic on each level's usage line
    and a store to its watermark - 2 lines per level, MEMCG_LEVELS levels."""
    r, _ = replay("mmap_lock@6.3", toy(tmp_path), 1, faults(1, 10))
    names = r.meta["plan"].names
    touched = [d for d, nm in names.items() if nm.startswith("page_counter") and r.state["ln"][d]["transfers"] > 0]
    assert len(touched) == 2 * MEMCG_LEVELS


@pytest.mark.parametrize("n,pages", [(512, 1), (513, 2), (1024, 2), (1025, 3)])
def test_pte_page_per_512_faults(tmp_path, n, pages):
    """__pte_alloc(): a thread walking its own pages needs a PTE page every PTRS_PER_PTE =
    512 faults, installed with mm_inc_nr_ptes() - an atomic on pgtables_bytes, which in
    6.3's mm_struct shares the mmap_lock count's line."""
    r, _ = replay("mmap_lock@6.3", toy(tmp_path), 1, faults(1, n))
    assert counter(r, "pte") == pages
    lay = r.model.layout
    assert lay.mm.fields["pgtables_bytes"] // 64 == lay.mm.fields["mmap_lock.count"] // 64


@pytest.mark.parametrize("cores,n,folds", [(64, 127, 0), (64, 128, 1), (2, 32, 1), (2, 31, 0)])
def test_rss_fold(tmp_path, cores, n, folds):
    """percpu_counter_add_batch(): the CPU's count folds into mm->rss_stat under its lock
    every percpu_counter_batch = max(32, 2 x online CPUs) increments."""
    r, _ = replay("mmap_lock@6.3", toy(tmp_path, cores=cores), 1, faults(1, n))
    assert lock_acq(r, "mm->rss_stat[MM_ANONPAGES].lock") == folds


def test_rss_per_task_before_62(tmp_path):
    """Before 6.2: the task's own counts, one atomic sync every TASK_RSS_EVENTS_THRESH = 64
    faults; no lock."""
    r, _ = replay("mmap_lock@4.15", toy(tmp_path, cores=64), 1, faults(1, 130))
    assert lock_acq(r, "mm->rss_stat[MM_ANONPAGES].lock") == 0
    nn = r.machine.numa_nodes
    assert r.state["res"][2 * nn]["acquisitions"] == 0
    assert r.state["th"][0]["fp_rss_n"] == 130 - 2 * 64


def test_zero_page_read_allocates_nothing(tmp_path):
    """do_anonymous_page() for a read: the zero page, mapped; no page, no charge, no LRU
    (a PTE page still: the PTE is missing)."""
    r, res = replay("mmap_lock@6.3", toy(tmp_path), 1, faults(1, 630, write=False))
    assert zone_acquisitions(r) == 1  # the PTE pages' allocations only: 2 pages
    assert lock_acq(r, "lruvec->lru_lock") == 0
    assert counter(r, "pte") == 2


def test_a_faults_time_adds_up(tmp_path):
    """end - start of a fault = its lock wait + its cache time + its own work
    (service_ns) + its time in the shared resources (resource_ns), here with 8 CPUs
    contending and a clear_page of 300 ns: nothing lost, nothing counted twice - to an
    L1 hit (5 ns here): the lock path leaves one instruction's time unattributed, with
    or without the fault path."""
    r, res = replay("v8@6.8", toy(tmp_path, cores=8, clear=300, lat=5.0), 8, faults(8, 300))
    for x in res:
        if x["kind"] != "fault":
            continue
        parts = x["lock_wait_ns"] + x["cache_ns"] + x["service_ns"] + x["resource_ns"]
        assert x["end_ns"] - x["start_ns"] == pytest.approx(parts, abs=5.0 + 1e-6), x
    assert sum(x["service_ns"] for x in res) >= 8 * 300 * 1300


def test_trace_times_run_no_fault_path(tmp_path):
    """A service time given as a number (or from the trace) is the whole of
    handle_mm_fault(): no resource is taken."""
    r, res = replay("mmap_lock@6.3", toy(tmp_path), 1, faults(1, 200), service=Service(800.0, "given"))
    assert r.meta["plan"] is None
    assert all(x["resource_ns"] == 0 and x["service_ns"] == 800.0 for x in res)


def test_model_at_release():
    """MODEL@RELEASE: the lock design on another release's fault path, its own digest."""
    from replay.models import ModelError, get_model

    a, b = get_model("pervma"), get_model("pervma@6.2")
    assert (a.release, b.release, b.name) == ("6.4", "6.2", "pervma@6.2")
    assert a.digest() != b.digest() and a.programs == b.programs
    with pytest.raises(ModelError):
        get_model("pervma@2.6")
    assert math.isfinite(float(b.release))


@pytest.mark.parametrize("kind,refills,pte_pages,drains", [
    ("cow", 10, 0, 40),  # wp_page_copy(): a page (600: 10 refills of 63), copied; the PTE exists
    ("file", 1, 2, 0),  # filemap_map_pages(): page-cache pages, nothing allocated but the 2 PTE pages
    ("anon", 10, 2, 40),  # 602 pages with the PTE pages: still 10 refills
    ("zero", 1, 2, 0),
])
def test_the_fault_kind_picks_the_steps(tmp_path, kind, refills, pte_pages, drains):
    """ops fault_kind (replay/ops.py) chooses handle_mm_fault()'s steps: a CoW allocates
    and fills the LRU but needs no page table; a page-cache hit allocates nothing but the
    page table; 600 faults of one CPU, 6.3 rules (LRU batch 15: 40 drains)."""
    rows = faults(1, 600)
    for r in rows:
        r["fault_kind"] = kind
    r, _ = replay("mmap_lock@6.3", toy(tmp_path), 1, rows)
    assert (zone_acquisitions(r), counter(r, "pte"), lock_acq(r, "lruvec->lru_lock")) == (refills, pte_pages, drains)


def bw(r):
    """The memory channels' records (faultpath._clear), one per node, after the counters."""
    nn = r.machine.numa_nodes
    return r.state["res"][2 * nn + 3:3 * nn + 3]


def test_clear_page_bandwidth_shared_per_node(tmp_path):
    """clear_page()'s DRAM traffic (CLEAR_DRAM_BYTES = 8 KiB: the read for ownership and
    the write-back) queues FIFO on its node's channels.  A fault is 1000 ns fixed + a
    1000 ns clear + 2000 ns of zone lock per 63 pages (~2032 ns); at 81.92 GB/s a clear
    holds the channels 8192 / 81.92 = 100 ns, so a socket clears at most 10 M pages/s.
    8 CPUs ask 3.9 M/s: at most 8 x 100 = 800 ns queued, under the 1000 ns clear -
    unchanged, no wait at all.  64 CPUs ask 31 M/s: saturated, one clear per 100 ns -
    600 faults and 2 PTE pages per thread, 9.97 M faults/s, each fault taking 64 x
    100 ns x 602 / 600.  Two sockets of 32 CPUs: twice that; one socket as two nodes:
    each node half the socket's bandwidth, the socket still 10 M/s."""
    def run(machine, cpus, n):
        r, res = replay("mmap_lock@6.3", machine, cpus, faults(cpus, n))
        f = [x for x in res if x["kind"] == "fault"]
        rate = len(f) / (max(x["end_ns"] for x in f) - min(x["start_ns"] for x in f)) * 1e9
        return r, f, rate

    fast = dict(clear=1000)  # the toy's default bandwidth: a clear holds the channels ~0 ns
    slow = dict(clear=1000, dram=81.92)
    for cpus in (1, 8):
        r, _, rate = run(toy(tmp_path, cores=64, **slow), cpus, 600)
        _, _, unlimited = run(toy(tmp_path, cores=64, **fast), cpus, 600)
        assert rate == pytest.approx(unlimited, rel=1e-9)
        assert bw(r)[0]["wait_total"] == 0 and bw(r)[0]["acquisitions"] == cpus * 602
        assert bw(r)[0]["hold_total"] == pytest.approx(cpus * 602 * 100.0)
    r, f, one = run(toy(tmp_path, cores=64, **slow), 64, 600)
    assert one == pytest.approx(600 / (602 * 100e-9), rel=0.03)
    steady = sorted(x["end_ns"] - x["start_ns"] for x in f)[len(f) // 2]  # the median fault
    assert steady == pytest.approx(64 * 100 * 602 / 600, rel=0.03)
    assert bw(r)[0]["wait_total"] > 0.5 * sum(x["resource_ns"] for x in f)  # what the faults wait for, mostly
    # every wait is some resource's: the channels' and the spinlocks' (zone->lock's here)
    assert sum(x["resource_wait_ns"] for x in f) == pytest.approx(r.state["res"]["wait_total"].sum(), rel=1e-9)
    _, _, two = run(toy(tmp_path, sockets=2, cores=32, **slow), 64, 600)
    assert two == pytest.approx(2 * one, rel=0.03)
    r, _, nodes = run(toy(tmp_path, cores=64, nodes=2, **slow), 64, 600)
    assert nodes == pytest.approx(one, rel=0.03)
    assert all(x["hold_total"] == pytest.approx(32 * 602 * 200.0) for x in bw(r))


@pytest.mark.parametrize("dram", [0, -1])
def test_dram_bandwidth_must_be_positive(tmp_path, dram):
    """A socket without bandwidth would hold every clear forever: a clear one-line error."""
    from replay.machines import MachineError

    with pytest.raises(MachineError, match=r"\[fault_path\] dram_gbps must be positive"):
        toy(tmp_path, dram=dram)
