"""Each fault's kind and a fallback's first try (replay/ops.py, fault kind, first try).

A real recording pins one fault of each kind (tests/data/perf_fault_kinds.txt:
tests/data/fault_kinds.c under ``replay record``; its major fault is a read of a file
page dropped from the page cache); small hand-built traces in real line formats pin
each branch of the rule, so every expected value can be checked by eye; the sample
traces' counts are pinned at the end."""

import polars as pl
import pyarrow as pa
import pytest

from conftest import DATA
from replay.ingest import scan
from replay.ingest.text import TextDecoder
from replay.ops import FAULT_KINDS, VC_ANON, VC_FILE, VC_NONE, VC_SHARED, VC_SPECIAL, build_ops, fault_kind, vma_class
from replay.opstream import build_in_memory
from test_ops import L, lock, mmap, pf

MAPS = """# /proc/100/maps at exec of: ./prog
55550000-55551000 r-xp 00000000 fe:00 1 /usr/bin/prog
7ff000000000-7ff000002000 r--p 00000000 00:00 0 [vvar]
7ff000002000-7ff000004000 r-xp 00000000 00:00 0 [vdso]
7fff0000-7fff2000 rw-p 00000000 00:00 0 [stack]
"""


def events(text: str) -> pa.Table:
    d = TextDecoder(scan.DIALECT_PERF)
    ev, rj, _ = d.decode(text.encode(), 1)
    assert rj.num_rows == 0, rj.to_pylist()
    return ev


def faults(text: str, maps: str = MAPS, arch: str | None = None) -> pl.DataFrame:
    ev = events(text)
    if arch:  # as ingest stamps the events file (ingest/pipeline.py, replay.arch)
        ev = ev.replace_schema_metadata({b"replay.arch": arch.encode()})
    ops, _, _ = build_in_memory(ev, "t", maps, False)
    ops = pl.from_arrow(ops)
    assert ops.filter(pl.col("kind") != "fault")["fault_kind"].null_count() == ops.filter(pl.col("kind") != "fault").height
    return ops.filter(pl.col("kind") == "fault").sort("op_id")


def end(tid, t, addr, major=False, pid=100):
    """perf's minor-/major-faults sample as replay record's field list prints it."""
    ev = "major-faults" if major else "minor-faults"
    return f"            prog {pid:5d}/{tid:<5d} {t:>14.9f}:          1 {ev:>28}:     {addr:x}     55550100\n"


A, F, S, H = 0x7F0000000000, 0x7F0000100000, 0x7F0000200000, 0x7F0000300000
MAPPINGS = (mmap(100, 1.00, 1.01, 0x4000, A)  # anonymous private
            + mmap(100, 1.02, 1.03, 0x4000, F, flags=0x02)  # a file, private
            + mmap(100, 1.04, 1.05, 0x4000, S, flags=0x01)  # a file, shared
            + mmap(100, 1.06, 1.07, 0x4000, H, flags=0x21))  # anonymous shared: a shmem file


def kinds_of(text: str, **kw) -> list:
    return faults(MAPPINGS + text, **kw)["fault_kind"].to_list()


def test_each_branch_of_the_rule():
    text = (pf(100, 2.00, A, 0x6)  # not present, write: do_anonymous_page() allocates
            + pf(100, 2.01, A + 0x1000, 0x4)  # not present, read: the zero page
            + pf(100, 2.02, A + 0x1000, 0x7)  # present, write: do_wp_page() copies the zero page
            + pf(100, 2.03, A + 0x2000, 0x14)  # not present, instruction fetch: the zero page too
            + pf(100, 2.04, A + 0x2000, 0x15)  # present, instruction fetch: an access error
            + pf(100, 2.05, A + 0x3000, 0x5)  # present, read: an access error
            + pf(100, 2.10, F, 0x4)  # file, not present, read: do_read_fault()
            + pf(100, 2.11, F, 0x7)  # file, private, present, write: do_wp_page() -> wp_page_copy()
            + pf(100, 2.12, F + 0x1000, 0x6)  # file, private, not present, write: do_cow_fault()
            + pf(100, 2.20, S, 0x6)  # shared file, not present, write: do_shared_fault()
            + pf(100, 2.21, S, 0x7)  # shared file, present, write: wp_page_shared()
            + pf(100, 2.30, H, 0x6)  # shared anonymous: shmem
            + pf(100, 2.40, 0x7FF000002100, 0x14)  # [vdso]: a special mapping
            + pf(100, 2.41, 0x7FFF0100, 0x6)  # [stack]: anonymous
            + pf(100, 2.50, 0x10000000, 0x6)  # outside every known VMA: an inferred VMA, anonymous
            + pf(100, 2.51, 0x10001000, 0x4)
            # kernel mode, outside every known VMA (no inferred VMA): which path is unknown
            + L(100, 2.60, "exceptions:page_fault_kernel", "address=0x20000000 ip=0xffffffff81000000 error_code=0x2"))
    assert kinds_of(text) == ["anon", "zero", "cow", "zero", "other", "other", "file", "cow", "file", "file", "file",
                              "file", "special", "anon", "anon", "zero", None]


def test_a_major_fault_is_file_io_on_a_file_and_other_on_anonymous_memory():
    text = (pf(100, 2.0, F + 0x2000, 0x4) + end(100, 2.0001, F + 0x2000, major=True)  # filemap_fault() read it
            + pf(100, 2.1, H + 0x1000, 0x6) + end(100, 2.1001, H + 0x1000, major=True)  # shmem: swapped out
            + pf(100, 2.2, A, 0x4) + end(100, 2.2001, A, major=True)  # anonymous: do_swap_page()
            + pf(100, 2.3, F + 0x3000, 0x4) + end(100, 2.3001, F + 0x3000))  # minor: a page-cache hit
    assert kinds_of(text) == ["file_io", "file_io", "other", "file"]
    # a major-faults sample at another address is not the fault's: not major either
    assert kinds_of(pf(100, 2.0, F + 0x2000, 0x4) + end(100, 2.0001, F + 0x3000, major=True)) == ["file"]


def test_without_an_x86_error_code_only_what_the_vma_says():
    text = (pf(100, 2.0, A, 0xF)  # RISC-V scause 15: a store, present or not unknown
            + pf(100, 2.1, F, 0xD)  # a load
            + pf(100, 2.2, F + 0x1000, 0xD) + end(100, 2.2001, F + 0x1000, major=True)
            + pf(100, 2.3, 0x7FF000002100, 0xC))  # [vdso]
    assert kinds_of(text, arch="riscv64") == [None, None, "file_io", "special"]
    # the same lines read as x86 (0xf: present, write, user, reserved bit): what the bits say
    assert kinds_of(text, arch="x86_64 (assumed)") == ["cow", "other", "file_io", "special"]


def test_first_try_is_entry_to_the_first_start_locking_of_a_fallback():
    text = (pf(100, 2.0, A + 0x1000, 0x4)  # falls back: the VMA lock's try, then lock_mm_and_find_vma()
            + lock(100, 2.0000005, "start_locking", False) + lock(100, 2.0000007, "acquire_returned", False, success=True)
            + end(100, 2.000001, A + 0x1000) + lock(100, 2.0000011, "released", False)
            + lock(100, 2.0000020, "start_locking", False)  # after its fault_end: not the fault's
            + pf(100, 2.1, A + 0x2000, 0x4) + end(100, 2.100001, A + 0x2000)  # served under the VMA lock
            # (a read: a kernel-mode write would prepare the anon_vma - test_ops.py)
            + L(100, 2.2, "exceptions:page_fault_kernel", "address=0x7f0000003000 ip=0xffffffff81000000 error_code=0x0")
            + lock(100, 2.2000004, "start_locking", False)  # kernel mode: lock_mmap at once, no first try
            + lock(100, 2.2000006, "acquire_returned", False, success=True) + lock(100, 2.2000009, "released", False)
            + pf(100, 2.3, A, 0x6)  # the VMA's first write fault: vmf_anon_prepare()'s trylock, inside the call
            + lock(100, 2.3000003, "start_locking", False)
            + lock(100, 2.3000004, "acquire_returned", False, success=True) + lock(100, 2.3000005, "released", False)
            # a later write fault falls back and finds mmap_lock taken: get_mmap_lock_carefully()'s
            # mmap_read_trylock() fails, then mmap_read_lock_killable() - the first try ends at the first
            + pf(100, 2.4, A + 0x3000, 0x6)
            + lock(100, 2.4000025, "start_locking", False) + lock(100, 2.4000026, "acquire_returned", False, success=False)
            + lock(100, 2.4000027, "start_locking", False) + lock(100, 2.4000090, "acquire_returned", False, success=True))
    f = faults(MAPPINGS + text)
    assert f["observed_fallback"].to_list() == [True, False, None, False, True]
    assert f["observed_anon_prepare"].to_list() == [False, False, False, True, False]
    assert f["first_try_ns"].to_list() == [500, None, None, None, 2500]


def test_first_try_in_an_inferred_vma():
    # faults outside every known VMA get their VMA (and which is its first write fault)
    # only in the builder's second pass, which must drop the trylock's first try
    text = (pf(100, 2.0, 0x10000000, 0x6) + lock(100, 2.0000003, "start_locking", False)
            + lock(100, 2.0000004, "acquire_returned", False, success=True) + lock(100, 2.0000005, "released", False)
            + pf(100, 2.1, 0x10001000, 0x6) + lock(100, 2.1000009, "start_locking", False))
    f = faults(text)
    assert f["observed_anon_prepare"].to_list() == [True, False] and f["observed_fallback"].to_list() == [False, True]
    assert f["first_try_ns"].to_list() == [None, 900] and f["fault_kind"].to_list() == ["anon", "anon"]


def test_the_rule_itself():
    # (present, write, instr, vma, major) -> kind, one row per branch of ops.fault_kind()
    rows = [((0, 1, 0, VC_ANON, 0), "anon"), ((0, 0, 0, VC_ANON, -1), "zero"), ((0, 0, 1, VC_ANON, 0), "zero"),
            ((1, 1, 0, VC_ANON, 0), "cow"), ((1, 1, 0, VC_FILE, 0), "cow"), ((1, 1, 0, VC_SHARED, 0), "file"),
            ((0, 0, 0, VC_FILE, 0), "file"), ((0, 1, 0, VC_SHARED, -1), "file"), ((0, 0, 0, VC_FILE, 1), "file_io"),
            ((-1, -1, -1, VC_SHARED, 1), "file_io"), ((0, 0, 0, VC_ANON, 1), "other"), ((1, 0, 0, VC_ANON, 0), "other"),
            ((1, 0, 1, VC_FILE, 0), "other"), ((0, 1, 0, VC_SPECIAL, 0), "special"), ((1, 0, 0, VC_SPECIAL, 0), "other"), ((0, 0, 0, VC_NONE, 0), None),
            ((-1, 1, -1, VC_ANON, 0), None), ((-1, 0, -1, VC_FILE, -1), None), ((-1, -1, -1, VC_SPECIAL, -1), "special"), ((0, 0, 0, VC_NONE, 1), None)]
    for args, want in rows:
        got = fault_kind(*args)
        assert (FAULT_KINDS[got] if got >= 0 else None) == want, args
    assert [vma_class(True, "rw-p", n) for n in ("", "[heap]", "[stack]", "[anon:x]", "[anon_shmem:x]", "[vdso]")] == \
        [VC_ANON, VC_ANON, VC_ANON, VC_ANON, VC_SHARED, VC_SPECIAL]
    assert [vma_class(False, "r--p", "/lib/x"), vma_class(False, "rw-s", "/dev/zero (deleted)"),
            vma_class(True, "rw-s", "")] == [VC_FILE, VC_SHARED, VC_SHARED]


# -- a real recording -----------------------------------------------------------------------

def test_one_fault_of_each_kind_recorded():
    text = (DATA / "perf_fault_kinds.txt").read_text()
    f = faults(text, (DATA / "perf_fault_kinds.maps").read_text())
    assert f["fault_kind"].null_count() == 0
    by_seq = {r["seq"]: r for r in f.to_dicts()}
    # the program's own faults, in its order (addresses from its three mmap returns)
    want = {356: ("anon", 0x7F68D8AF5000), 358: ("zero", 0x7F68D8AF6000), 360: ("cow", 0x7F68D8AF6000),
            372: ("file_io", 0x7F68D88CB000), 377: ("cow", 0x7F68D88CB000), 382: ("file", 0x7F68D88EB000),
            389: ("file", 0x7F68D8AF4000)}
    assert {s: (by_seq[s]["fault_kind"], by_seq[s]["address"]) for s in want} == want
    # the major fault went back for its page: the VMA-lock call returned VM_FAULT_RETRY
    # after the read, then lock_mm_and_find_vma(): "29639.368209737: page_fault_user ...
    # error_code=0x4", "29639.368387681: mmap_lock_start_locking ... write=false"
    io = by_seq[372]
    assert io["observed_fallback"] and io["first_try_ns"] == 368387681 - 368209737 == 177944
    # the cow of the file page: vmf_anon_prepare()'s trylock, not a fallback, no first try
    assert by_seq[377]["observed_anon_prepare"] and by_seq[377]["first_try_ns"] is None
    # the one other fallback: a read in [vdso] (29639.356641706 -> start_locking at
    # .356644081), whose special mapping has no ->map_pages, so do_read_fault()'s
    # vmf_can_call_fault() returns VM_FAULT_RETRY under the VMA lock at once
    assert f.filter(pl.col("first_try_ns").is_not_null())["seq"].to_list() == [76, 372]
    assert by_seq[76]["fault_kind"] == "special" and by_seq[76]["first_try_ns"] == 356644081 - 356641706 == 2375
    assert f.filter(pl.col("fault_kind") == "special")["seq"].to_list() == [76]
    # at exit, an instruction fetch in libc's text (mapped by ld.so, traced)
    assert by_seq[409]["fault_kind"] == "file"
    assert f["fault_kind"].value_counts().sort("fault_kind").rows() == [
        ("anon", 73), ("zero", 2), ("cow", 6), ("file", 34), ("file_io", 1), ("special", 1)]


def test_the_events_keep_which_accounting_event_it_was():
    ev = pl.from_arrow(events((DATA / "perf_fault_kinds.txt").read_text()))
    end = ev.filter(pl.col("event") == "fault_end")
    assert end["tracepoint"].value_counts().sort("tracepoint").rows() == [("major-faults", 1), ("minor-faults", 116)]


def test_perf_trace_faults_have_no_error_code(cli, ws, tmp_path):
    # perf trace prints no error code: the kind is null, unless the line is a majfault
    # (trace__pgfault(): the PERF_COUNT_SW_PAGE_FAULTS_MAJ event itself)
    lines = (DATA / "perf_trace.txt").read_text().splitlines(keepends=True)
    assert "minfault" in lines[42] and "/dev/zero (deleted)@0x7fead128d000" in lines[42]
    lines[42] = lines[42].replace("minfault", "majfault")  # the shared anonymous mapping's first fault
    p = tmp_path / "pt.txt"
    p.write_text("".join(lines))
    assert cli("ingest", p, "-w", ws)[0] == 0 and cli("ops", "pt", "-w", ws)[0] == 0
    o = pl.read_parquet(next((ws / "ops" / "trace_id=pt").glob("*.parquet"))).filter(pl.col("kind") == "fault")
    assert o.filter(pl.col("address") == 0x7FEAD128D000)["fault_kind"].to_list() == ["file_io"]
    assert o["fault_kind"].null_count() == o.height - 1


# -- the sample traces -------------------------------------------------------------------------

SAMPLE_KINDS = {
    "pft-2t": {"anon": 24591, "zero": 1, "cow": 7, "file": 39, "special": 2},
    "pft-ftrace": {"anon": 8206, "zero": 1, "cow": 4, "file": 41, "special": 2},
    "jvm-alloc": {"anon": 17590, "zero": 371, "cow": 421, "file": 3114, "special": 2},
    "mprotect-race": {"anon": 49169, "zero": 1, "cow": 7, "file": 38, "special": 1},
}


def test_sample_trace_kinds(sample_ops):
    ops = sample_ops
    name = ops["trace_id"][0]
    f = ops.filter(pl.col("kind") == "fault")
    got = dict(f["fault_kind"].value_counts().rows())
    assert got == SAMPLE_KINDS[name]
    assert ops.filter(pl.col("kind") != "fault")["fault_kind"].null_count() == ops.height - f.height
    # every fault has an x86 error code and a kind; the special ones are [vdso]/[vvar]
    assert f["fault_kind"].null_count() == 0 and got["special"] <= 2 and "other" not in got
    if name.startswith("pft") or name == "mprotect-race":  # one anonymous VMA written page by page
        assert got["anon"] / f.height > 0.99
    if name == "jvm-alloc":  # the JVM's libraries, CDS archive and perf-data file
        assert got["file"] > 3000 and got["cow"] > 400 and got["zero"] > 300
    assert "file_io" not in got  # none recorded a major fault (pft-2t's 24,640 fault ends are all minor-faults)
    # a first try exactly for each observed fallback
    assert f.filter(pl.col("first_try_ns").is_not_null()).height == f["observed_fallback"].sum()
    assert (f.filter(pl.col("observed_fallback"))["first_try_ns"] > 0).all()
    if name == "mprotect-race":  # mprotect's write-locked anonymous window
        fb = f.filter(pl.col("observed_fallback"))
        # (550 since ops version 10: 19 first write faults in VMAs an mprotect split off, which
        # inherit their parent's anon_vma, fell back - aborts, not vmf_anon_prepare()'s trylock)
        assert dict(fb["fault_kind"].value_counts().rows()) == {"anon": 550, "file": 1, "special": 1}
