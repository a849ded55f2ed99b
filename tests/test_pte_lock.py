"""The split PTE lock (replay/engine/faultpath.py ptl_lock()/ptl_unlock(); docs/fault-path.md
2.8): one spinlock per PTE page - per 2 MiB of address space - in the page's struct
ptdesc, taken by every fault around its PTE update.  Hand-checked on a toy whose every
latency is 1 ps and whose zone lock holds 1 ns, with the whole fixed part (1000 ns) put
under the lock (faultpath.PTL_FIXED_SHARE = 1): then a fault is 1000 ns under the lock
and nothing else takes measurable time, so two threads in one PTE page alternate in it."""

from __future__ import annotations

import pytest

import test_fault_path as fp
from engine_harness import Replay, mk
from replay.engine import faultpath, load

# the fault-path tests' toy machine (1 ps latencies), with two cores and a zone lock held 1 ns
PROFILE = fp.PROFILE  # sigma 0: every fault's fixed part is exactly 1000 ns
BASE = 0x7F0000000000  # 2 MiB-aligned
N = 100  # faults a thread


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setattr(faultpath, "PTL_FIXED_SHARE", 1.0)
    return fp.toy(tmp_path, cores=2, zone_hold=1)


def faults(starts):
    """N write faults per thread, thread t at starts[t] + i pages, the threads interleaved."""
    rows = mk([(t, "fault", 1, 0, None) for _ in range(N) for t in range(len(starts))])
    seen = [0] * len(starts)
    for r in rows:
        t = r["tid"]
        r["address"] = starts[t] + seen[t] * 4096
        r["write"] = True
        seen[t] += 1
    return rows


def run(machine, cpus, starts):
    r = Replay("mmap_lock@6.3", machine, cpus, faults(starts), service=PROFILE)
    res = r.run()
    f = [x for x in res if x["kind"] == "fault"]
    span = max(x["end_ns"] for x in f) - min(x["start_ns"] for x in f)
    ptl = [x for x in load.lock_stats(r.state, r.model, r.meta) if x["lock_class"] == "ptlock_ptr(page)"]
    return r, f, span, {x["lock"]: x for x in ptl}


def test_two_threads_in_one_pte_page_take_turns(toy):
    """Thread 0 faults from the region's start, thread 1 from 1 MiB into it: one PTE
    page, one lock.  Each fault holds it 1000 ns, so the threads alternate: every
    acquisition but the first waits for the other's hold (199 contentions of 200), the
    200 faults take 200 x 1000 ns end to end, and the lock's line moves to the other CPU
    at every acquisition (200 transfers: the first from memory).  Each wait is a spin in
    the waits table, under the lock's name, counted in resource_wait_ns."""
    r, f, span, ptl = run(toy, 2, [BASE, BASE + (1 << 20)])
    assert list(ptl) == [f"pte:{BASE:#x}"]
    lk = ptl[f"pte:{BASE:#x}"]
    assert lk["acquisitions"] == 2 * N
    assert lk["contentions"] == 2 * N - 1
    assert lk["con_bounces"] == 2 * N
    assert span == pytest.approx(2 * N * 1000, rel=0.01)
    assert lk["hold_total_ns"] == pytest.approx(2 * N * 1000, rel=0.01)
    # the waits: ~1000 ns each but the first thread-1 one (it arrived a start offset late)
    assert lk["wait_total_ns"] == pytest.approx((2 * N - 1) * 1000, rel=0.01)
    w = [x for x in r.waits if x["lock_class"] == "ptlock_ptr(page)"]
    assert len(w) == 2 * N - 1
    assert {(x["lock"], x["how"], x["mode"], x["counted_in"]) for x in w} == {
        (f"pte:{BASE:#x}", "spin", None, "resource_wait_ns")}
    everything = [x for x in r.waits if x["counted_in"] == "resource_wait_ns"]  # with the zone lock's (1 ns holds)
    assert sum(x["wait_ns"] for x in everything) == pytest.approx(sum(x["resource_wait_ns"] for x in f))
    assert sum(x["wait_ns"] for x in w) == pytest.approx(lk["wait_total_ns"])
    assert all(x["sleep_ns"] == 0 for x in f)  # spinning keeps the CPU


def test_two_threads_in_two_pte_pages_never_wait(toy):
    """Thread 1 2 MiB above thread 0: two PTE pages, two locks, no waits; each line is
    fetched once and stays with its CPU; the 200 faults take 100 x 1000 ns."""
    r, f, span, ptl = run(toy, 2, [BASE, BASE + (2 << 20)])
    assert sorted(ptl) == [f"pte:{BASE:#x}", f"pte:{BASE + (2 << 20):#x}"]
    for lk in ptl.values():
        assert (lk["acquisitions"], lk["contentions"], lk["con_bounces"]) == (N, 0, 1)
    assert span == pytest.approx(N * 1000, rel=0.01)
    assert sum(x["resource_wait_ns"] for x in f) < 5  # the zone lock's first refills only (1 ns holds)
    assert not [x for x in r.waits if x["lock_class"] == "ptlock_ptr(page)"]


def test_one_cpu_one_pte_page_no_transfers(toy):
    """Both threads of the first test on one CPU: they take turns on the CPU, not at
    the lock (a fault releases it before its thread yields the CPU), and the lock's line
    never leaves that CPU: one transfer, no contention."""
    r, f, span, ptl = run(toy, 1, [BASE, BASE + (1 << 20)])
    lk = ptl[f"pte:{BASE:#x}"]
    assert (lk["acquisitions"], lk["contentions"], lk["con_bounces"]) == (2 * N, 0, 1)


def test_faults_without_an_address_take_their_threads_own(toy):
    """A fault with no recorded address takes a PTE lock no other thread shares."""
    rows = faults([BASE, BASE])
    for x in rows:
        x["address"] = None
    r = Replay("mmap_lock@6.3", toy, 2, rows, service=PROFILE)
    r.run()
    ptl = [x for x in load.lock_stats(r.state, r.model, r.meta) if x["lock_class"] == "ptlock_ptr(page)"]
    assert sorted(x["lock"] for x in ptl) == ["pte:tid:0", "pte:tid:1"]
    assert all(x["contentions"] == 0 for x in ptl)


def test_cow_takes_the_lock_twice(toy):
    """A CoW fault: handle_pte_fault()'s spin_lock(vmf->ptl) for do_wp_page(), and
    wp_page_copy()'s pte_offset_map_lock() to install the copy (mm/memory.c, 6.18)."""
    rows = faults([BASE])
    for x in rows:
        x["fault_kind"] = "cow"
    r = Replay("mmap_lock@6.3", toy, 1, rows, service=PROFILE)
    r.run()
    (lk,) = [x for x in load.lock_stats(r.state, r.model, r.meta) if x["lock_class"] == "ptlock_ptr(page)"]
    assert lk["acquisitions"] == 2 * N


def test_the_lock_is_named_per_release():
    """lockdep's class: ptlock_ptr(page) until struct ptdesc (6.6), then ptlock_ptr(ptdesc)."""
    assert (faultpath.ptl_class("6.3"), faultpath.ptl_class("6.5"), faultpath.ptl_class("6.8")) == (
        "ptlock_ptr(page)", "ptlock_ptr(page)", "ptlock_ptr(ptdesc)")
