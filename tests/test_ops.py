"""The op builder: syscall pairing, the VMA tracker, attribution, observed fallback.
Small hand-built traces (real line formats) so every expected value can be checked by eye."""

import polars as pl
import pytest

from replay.ingest import scan
from replay.ingest.text import TextDecoder
from replay.ops import AddressSpace, IdSource, build_ops, mmap_vm_flags, parse_maps

RW_ANON = mmap_vm_flags(3, 0x22)  # a private anonymous read-write mmap's flags (VM_ACCOUNT)

MAPS = """# /proc/100/maps at exec of: ./prog
55550000-55551000 r-xp 00000000 fe:00 1 /usr/bin/prog
7fff0000-7fff2000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""


def events(lines: str) -> pl.DataFrame:
    d = TextDecoder(scan.DIALECT_PERF)
    ev, rj, _ = d.decode(lines.encode(), 1)
    assert rj.num_rows == 0, rj.to_pylist()
    return pl.from_arrow(ev)


def L(tid, t, ev, payload, pid=100):
    return f"            prog {pid:5d}/{tid:<5d} [000] {t:>14.9f}: {ev}: {payload}\n"


def pf(tid, t, addr, code=0x6):
    return L(tid, t, "exceptions:page_fault_user", f"address={addr:#x} ip=0x55550100 error_code={code:#x}")


def lock(tid, t, what, write, mm=0xFFFF888100001000, success=None):
    extra = "" if success is None else f" success={'true' if success else 'false'}"
    return L(tid, t, f"mmap_lock:mmap_lock_{what}", f"mm={mm:#x} memcg_id=1 write={'true' if write else 'false'}{extra}")


def mmap(tid, t0, t1, length, ret, prot=3, flags=0x22, addr=0):
    return (L(tid, t0, "syscalls:sys_enter_mmap", f"addr: {addr:#010x}, len: {length:#010x}, prot: {prot:#010x}, flags: {flags:#010x}, fd: 0xffffffff, off: 0x00000000")
            + L(tid, t1, "syscalls:sys_exit_mmap", f"{ret:#x}"))


def sc(tid, t0, t1, name, args, ret=0):
    return L(tid, t0, f"syscalls:sys_enter_{name}", args) + L(tid, t1, f"syscalls:sys_exit_{name}", f"{ret & (2**64 - 1):#x}")


def test_address_space_split_and_merge():
    a = AddressSpace(IdSource())
    v = a.new(0x10000, 0x20000, "rw-p", True, flags=RW_ANON, pgoff=0x10)
    assert v.id == 1
    locked = a.mprotect(0x14000, 0x16000, "r--p", 5)
    # __split_vma keeps the lower part in the original VMA: [1: 10000-14000][2: 14000-16000][3: 16000-20000]
    assert [(x.id, hex(x.start), hex(x.end), x.prot) for x in a.vmas] == [
        (1, "0x10000", "0x14000", "rw-p"), (2, "0x14000", "0x16000", "r--p"), (3, "0x16000", "0x20000", "rw-p")]
    assert [x.id for x in locked] == [1]
    locked = a.mprotect(0x14000, 0x16000, "rw-p", 6)  # back: the three merge into VMA 1
    assert [(x.id, hex(x.start), hex(x.end)) for x in a.vmas] == [(1, "0x10000", "0x20000")]
    assert sorted(x.id for x in locked) == [1, 2, 3]
    assert a.successor == {2: 1, 3: 1}  # merged away into VMA 1
    locked = a.unmap(0x18000, 0x19000, 7)  # a hole: split twice, the middle goes
    assert [(hex(x.start), hex(x.end)) for x in a.vmas] == [("0x10000", "0x18000"), ("0x19000", "0x20000")]
    assert [x.id for x in locked] == [1]
    # an anonymous mapping right after one with the same protection extends it
    locked = a.mmap(0x20000, 0x22000, "rw-p", True, "", 8, flags=RW_ANON)
    assert [(hex(x.start), hex(x.end)) for x in a.vmas][-1] == ("0x19000", "0x22000") and len(a.vmas) == 2
    assert a.find(0x21fff).id == a.find(0x19000).id and a.find(0x22000) is None


def test_parse_maps():
    m = parse_maps(MAPS)
    assert m[0] == (0x55550000, 0x55551000, "r-xp", False, "/usr/bin/prog")
    assert m[1][3] is True and m[1][4] == "[stack]"


def test_pairing_vmas_and_fault_ids():
    text = (mmap(100, 1.0, 1.1, 0x4000, 0x7F0000000000)
            + pf(100, 1.2, 0x7F0000001008)
            + pf(101, 1.25, 0x7FFF0100)  # in the seeded stack
            + sc(100, 1.3, 1.4, "mprotect", "start: 0x7f0000001000, len: 0x00001000, prot: 0x00000001")
            + pf(101, 1.35, 0x7F0000001010)  # during the mprotect: the old VMA
            + pf(101, 1.5, 0x7F0000001010)  # after: the split-off middle VMA
            + pf(101, 1.6, 0x7F0000003010)  # after: the upper part
            + sc(100, 1.7, 1.8, "munmap", "addr: 0x7f0000000000, len: 0x00004000")
            + sc(100, 1.9, 2.0, "munmap", "addr: 0x7f0000000000, len: 0x00004000", ret=-22))
    ops, vmas, rep = build_ops(events(text), "t", MAPS)
    w = ops.filter(pl.col("kind") != "fault")
    assert w["kind"].to_list() == ["mmap", "mprotect", "munmap", "munmap"]
    assert w["start_ns"].to_list()[0] == 1_000_000_000 and w["end_ns"].to_list()[0] == 1_100_000_000
    assert w["ret"].to_list() == [0x7F0000000000, 0, 0, -22]
    f = ops.filter(pl.col("kind") == "fault")
    stack = vmas.filter(pl.col("name") == "[stack]")["vma_id"][0]
    new = vmas.filter(pl.col("start") == 0x7F0000000000)["vma_id"][0]
    mid = vmas.filter(pl.col("start") == 0x7F0000001000)["vma_id"][0]
    upper = vmas.filter(pl.col("start") == 0x7F0000002000)["vma_id"][0]
    assert f["vma_id"].to_list() == [new, stack, new, mid, upper]
    # mprotect write-locks the VMA it splits; munmap the three pieces; the failed call nothing
    assert w["vma_ids"].to_list() == [[], [new], sorted([new, mid, upper]), []]
    assert rep.failed_calls == 1 and rep.seeded_vmas == 2 and rep.rule == "2 by pid/tgid"
    # what each call created and freed (a failed call nothing)
    assert w["vmas_created"].to_list() == [[new], [mid, upper], [], []]
    assert w["vmas_freed"].to_list() == [[], [], [new, mid, upper], []]
    # each call's VMAs as it leaves them (vma_set_range()): mmap the new one; mprotect the
    # lower part it keeps, the middle and the upper piece; munmap and the failed call none
    assert list(zip(w["range_vmas"].to_list(), w["range_start"].to_list(), w["range_end"].to_list())) == [
        ([new], [0x7F0000000000], [0x7F0000004000]),
        (sorted([new, mid, upper]), [0x7F0000000000, 0x7F0000001000, 0x7F0000002000],
         [0x7F0000001000, 0x7F0000002000, 0x7F0000004000]),
        ([], [], []), ([], [], [])]
    assert f["think_ns"].to_list()[0] == 100_000_000  # 1.2 s - the mmap's exit at 1.1 s


def test_observed_fallback_rule():
    text = (pf(100, 1.0, 0x7FFF0100, code=0x4)  # a read fault served under the VMA lock: nothing follows
            + pf(100, 1.05, 0x7FFF0180)  # first write fault in the private [stack] VMA: vmf_anon_prepare()
            + lock(100, 1.051, "start_locking", False) + lock(100, 1.052, "acquire_returned", False, success=True)
            + lock(100, 1.053, "released", False)
            + pf(100, 1.1, 0x7FFF0200)  # fell back: read start_locking before the next fault
            + lock(100, 1.11, "start_locking", False) + lock(100, 1.12, "acquire_returned", False, success=True)
            + lock(100, 1.13, "released", False)
            + pf(100, 1.2, 0x7FFF0300)  # acquire without start is mmap_write_downgrade(), not a fallback
            + lock(100, 1.21, "acquire_returned", False, success=True) + lock(100, 1.22, "released", False)
            + pf(100, 1.3, 0x7FFF0400)  # a lock on another mm (e.g. /proc reads) does not count
            + lock(100, 1.31, "start_locking", False, mm=0xFFFF888100009000)
            + pf(100, 1.4, 0x7FFF0500)  # stack expansion: write lock
            + lock(100, 1.41, "start_locking", True)
            + L(100, 1.5, "exceptions:page_fault_kernel", "address=0x7fff0600 ip=0xffffffff81000000 error_code=0x2"))
    ops, _, _ = build_ops(events(text), "t", MAPS)
    f = ops.filter(pl.col("kind") == "fault")
    assert f["observed_fallback"].to_list() == [False, False, True, False, False, False, None]
    assert f["observed_anon_prepare"].to_list() == [False, True, False, False, False, False, False]
    assert f["observed_mmap_write"].to_list() == [False, False, False, False, False, True, False]
    assert f["kernel"].to_list() == [False] * 6 + [True]
    assert f["end_ns"].to_list()[2] == 1_130_000_000  # the fallback ends at its mmap_read_unlock


def test_attribution_by_mm_when_no_pid():
    # default perf script output has no pid: threads join by the mm of their mmap_lock events
    d = TextDecoder(scan.DIALECT_PERF)
    text = ("            prog   100 [000]     1.000000: mmap_lock:mmap_lock_start_locking: mm=0xffff888100001000 memcg_id=1 write=false\n"
            "            prog   101 [001]     1.000001: mmap_lock:mmap_lock_start_locking: mm=0xffff888100001000 memcg_id=1 write=false\n"
            "            prog   102 [001]     1.000002: exceptions:page_fault_user: address=0x1000 ip=0x1 error_code=0x6\n")
    ev, _, _ = d.decode(text.encode(), 1)
    ops, _, rep = build_ops(pl.from_arrow(ev), "t")
    assert rep.unattributed == 1 and "1 unattributed" in rep.rule and "by the mm=" in rep.rule
    assert rep.notes and "--same-mm" in rep.notes[0]
    ops2, _, rep2 = build_ops(pl.from_arrow(ev), "t", same_mm=True)
    assert ops2["mm"].unique().to_list() == ["all"] and rep2.unattributed == 0


def test_madvise_lock_modes_and_brk():
    text = (sc(100, 1.0, 1.01, "brk", "brk: 0x00000000", ret=0x56000000)
            + sc(100, 1.1, 1.11, "brk", "brk: 0x56021000", ret=0x56021000)
            + pf(100, 1.2, 0x56000010)
            + sc(100, 1.3, 1.31, "madvise", "start: 0x56000000, len_in: 0x00001000, behavior: 0x00000004")  # DONTNEED
            + sc(100, 1.4, 1.41, "madvise", "start: 0x56000000, len_in: 0x00001000, behavior: 0x0000000e"))  # HUGEPAGE
    ops, vmas, _ = build_ops(events(text), "t", MAPS)
    heap, upper = vmas.filter(pl.col("name") == "[heap]").sort("start").to_dicts()
    # brk made [heap] 56000000-56021000; MADV_HUGEPAGE on its first page split it there
    assert (heap["start"], heap["end"], upper["start"], upper["end"]) == (0x56000000, 0x56001000, 0x56001000, 0x56021000)
    f = ops.filter(pl.col("kind") == "fault")
    assert f["vma_id"][0] == heap["vma_id"]
    m = ops.filter(pl.col("kind") == "madvise")
    assert m["lock_mode"].to_list() == ["read", "write"]
    assert m["vma_ids"].to_list()[1] == [heap["vma_id"]]
    # the read-mode DONTNEED: the VMA its range covers (and starts in), its behaviour, and
    # with no mmap_lock event in its window, sys_enter -> sys_exit as its hold
    assert m["vma_ids"].to_list()[0] == [heap["vma_id"]] and m["vma_id"][0] == heap["vma_id"]
    assert m["advice"].to_list() == [4, 14]
    assert m["hold_ns"][0] == 10_000_000


def test_faults_outside_known_vmas_get_inferred_regions():
    text = pf(100, 1.0, 0x10000000) + pf(100, 1.1, 0x10001000) + pf(100, 1.2, 0x20000000)
    ops, vmas, rep = build_ops(events(text), "t")
    assert rep.inferred_vmas == 2 and rep.faults_in_inferred == 3
    ids = ops["vma_id"].to_list()
    assert ids[0] == ids[1] != ids[2]
    assert vmas.filter(pl.col("inferred"))["end"].to_list() == [0x10002000, 0x20001000]


def test_ops_cli_on_a_sample_trace(cli, ws):
    import json
    from conftest import SAMPLES

    assert cli("ingest", SAMPLES / "mprotect-race.txt.zst", "-w", ws, "--maps", SAMPLES / "mprotect-race.maps")[0] == 0
    rc, out, err = cli("ops", "mprotect-race", "-w", ws, "-f", "json")
    assert rc == 0, err
    s = json.loads(out)
    ops = pl.read_parquet(ws / "ops" / "trace_id=mprotect-race")
    ev = pl.read_parquet(ws / "events" / "trace_id=mprotect-race")
    # independent count: faults, and syscalls by their enter events
    assert s["kinds"]["fault"] == ev.filter(pl.col("event").cast(str).str.starts_with("page_fault")).height
    assert s["kinds"]["mprotect"] == ev.filter(pl.col("event") == "sys_enter_mprotect").height
    assert s["attribution"] == "4 by pid/tgid" and s["vmas_inferred"] == 0 and s["vmas_seeded_from_maps"] == 12
    # observed fallback, recounted by hand: a user fault whose next own-thread events (before the
    # thread's next fault/syscall) include a read mmap_lock_start, less the first write fault of
    # each private VMA (vmf_anon_prepare's trylock)
    evs = ev.sort("seq").to_dicts()
    last_fault = {}
    fb = set()
    for e in evs:
        k = str(e["event"])
        if k.startswith("page_fault") or k.startswith("sys_enter"):
            last_fault[e["tid"]] = e["seq"] if k == "page_fault_user" else None
        elif k == "mmap_lock_start" and e["write"] is False and last_fault.get(e["tid"]):
            fb.add(last_fault[e["tid"]])
    anon = set(ops.filter(pl.col("observed_anon_prepare"))["seq"].to_list())
    assert s["observed_fallbacks"] == len(fb - anon) > 0 and s["observed_anon_prepare"] == len(anon)
    assert set(ops.filter(pl.col("observed_fallback"))["seq"].to_list()) == fb - anon
    assert 0.5 < s["observed_fallback_pct"] < 5
    rc, _, err = cli("ops", "nope", "-w", ws)
    assert rc == 1 and "no trace" in err


DOWNGRADING_MUNMAP = """\
   mprotect_race  6473/6473  [001]  1306.758530917:            syscalls:sys_enter_munmap: addr: 0x7fe7e42e3000, len: 0x00008827
   mprotect_race  6473/6473  [001]  1306.758531598:    mmap_lock:mmap_lock_start_locking: mm=0xffff88810006be80 memcg_id=2939 write=true
   mprotect_race  6473/6473  [001]  1306.758531800: mmap_lock:mmap_lock_acquire_returned: mm=0xffff88810006be80 memcg_id=2939 write=true success=true
   mprotect_race  6473/6473  [001]  1306.758532683: mmap_lock:mmap_lock_acquire_returned: mm=0xffff88810006be80 memcg_id=2939 write=false success=true
   mprotect_race  6473/6473  [001]  1306.758551700:         mmap_lock:mmap_lock_released: mm=0xffff88810006be80 memcg_id=2939 write=false
   mprotect_race  6473/6473  [001]  1306.758552348:             syscalls:sys_exit_munmap: 0x0
"""  # sample_traces/mprotect-race, lines as recorded (Linux 6.18)


def test_a_downgrading_writer_has_a_write_hold_and_a_read_hold():
    # mmap_write_downgrade() traces a read acquire_returned with no start_locking
    # (include/linux/mmap_lock.h: __mmap_lock_trace_acquire_returned(mm, false, true)):
    # the munmap held mmap_lock for write 1306.758531800 -> .758532683 (883 ns), then for
    # read to mmap_read_unlock() at .758551700 (19,017 ns).  A writer that never
    # downgrades keeps its whole hold and no read hold.
    ops, _, _ = build_ops(events(DOWNGRADING_MUNMAP), "t")
    w = ops.filter(pl.col("kind") == "munmap").row(0, named=True)
    assert (w["hold_ns"], w["read_hold_ns"]) == (883, 19_017)
    plain = DOWNGRADING_MUNMAP.replace("1306.758532683: mmap_lock:mmap_lock_acquire_returned: mm=0xffff88810006be80 memcg_id=2939 write=false success=true\n", "").replace("released: mm=0xffff88810006be80 memcg_id=2939 write=false", "released: mm=0xffff88810006be80 memcg_id=2939 write=true")
    w = build_ops(events(plain), "t")[0].filter(pl.col("kind") == "munmap").row(0, named=True)
    assert (w["hold_ns"], w["read_hold_ns"]) == (19_900, None)


JVM_DONTNEED = """\
         alloc-1  6493/6511  [000]  1314.528516354:           syscalls:sys_enter_madvise: start: 0x7fe821f2b000, len_in: 0x000fa000, behavior: 0x00000004
         alloc-1  6493/6511  [000]  1314.528518368:    mmap_lock:mmap_lock_start_locking: mm=0xffff88810006cb00 memcg_id=2939 write=false
         alloc-1  6493/6511  [000]  1314.528518821: mmap_lock:mmap_lock_acquire_returned: mm=0xffff88810006cb00 memcg_id=2939 write=false success=true
         alloc-1  6493/6511  [000]  1314.528563944:         mmap_lock:mmap_lock_released: mm=0xffff88810006cb00 memcg_id=2939 write=false
         alloc-1  6493/6511  [000]  1314.528564891:            syscalls:sys_exit_madvise: 0x0
"""  # sample_traces/jvm-alloc, lines as recorded (Linux 6.18: this DONTNEED fell back to mmap_read_lock())


def test_a_read_mode_madvise_holds_its_mmap_read_lock_or_else_its_call():
    # where the trace shows mmap_read_lock() -> mmap_read_unlock() in the call, that is its
    # hold (1314.528518821 -> .528563944: 45,123 ns); without the lock events, sys_enter ->
    # sys_exit (48,537 ns), as a v6.17+ DONTNEED under the VMA lock traces
    m = build_ops(events(JVM_DONTNEED), "t")[0].filter(pl.col("kind") == "madvise").row(0, named=True)
    assert (m["lock_mode"], m["advice"], m["hold_ns"]) == ("read", 4, 45_123)
    bare = "".join(ln + "\n" for ln in JVM_DONTNEED.splitlines() if "mmap_lock:" not in ln)
    m = build_ops(events(bare), "t")[0].filter(pl.col("kind") == "madvise").row(0, named=True)
    assert m["hold_ns"] == 48_537


def test_ops_summary_is_the_ops_files_group_by(sample_ops, tmp_path):
    """``ops_summary`` (what `replay ops` prints, counted on the dictionary codes a batch at a
    time) against polars over the whole ops file of each sample trace."""
    import importlib

    summary = importlib.import_module("replay.ops").ops_summary
    path = tmp_path / "ops.parquet"
    sample_ops.write_parquet(path)
    o = pl.read_parquet(path)
    s = summary(path)
    fault = pl.col("kind") == "fault"
    user = o.filter(fault & ~pl.col("kernel"))
    assert s["ops"] == o.height and s["faults_with_service"] == o["service_ns"].is_not_null().sum()
    assert s["user_faults"] == user.height and s["kernel_faults"] == o["kernel"].sum()
    assert (s["observed_fallbacks"], s["observed_anon_prepare"], s["faults_taking_mmap_write"]) == tuple(
        int(user[c].sum()) for c in ("observed_fallback", "observed_anon_prepare", "observed_mmap_write"))
    g = o.with_columns(dur=pl.col("end_ns") - pl.col("start_ns")).group_by("kind").agg(
        pl.len().alias("n"), pl.col("dur").mean().alias("mean"))
    want = {str(r["kind"]): (r["n"], r["mean"]) for r in g.to_dicts()}
    assert s["kinds"].keys() == want.keys()
    for k, (n, mean) in s["kinds"].items():
        assert n == want[k][0] and (mean is None) == (want[k][1] is None)
        assert mean is None or mean == pytest.approx(want[k][1], rel=1e-12)
    fk = o.filter(fault)["fault_kind"].cast(pl.Utf8).fill_null("unknown").value_counts()
    assert s["fault_kinds"] == {r["fault_kind"]: r["count"] for r in fk.to_dicts()}
    assert len(s["kinds"]) > 1 and len(s["fault_kinds"]) >= 1
