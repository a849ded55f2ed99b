"""The op builder's VMA merges and anon_vma lineage (replay/ops.py AddressSpace.mmap,
AnonVmas; replay/opstream.py _prepare_anon_vma), on small hand-built traces in real line
formats, so every expected value can be checked by eye.

* A new anonymous mapping merges with the VMA before it and/or after it, as 6.18's
  vma_merge_new_range() does (mm/vma.c: can_vma_merge_after(), can_vma_merge_before(),
  can_vma_merge_right()), when the flags mmap() gives it (mmap_vm_flags()) and the pgoffs
  match and the anon_vmas are compatible.
* A VMA split off (__split_vma() -> anon_vma_clone()) has its parent's anon_vma, and a
  kernel-mode write fault prepares one: the first user write fault there that traces like
  a fallback is a fallback, not vmf_anon_prepare()'s trylock (observed_anon_prepare)."""

import polars as pl
import pytest

from replay.ops import build_ops
from test_ops import MAPS, L, events, lock, mmap, pf, sc

X = 0x7F0000000000


def trylock(tid, t):
    """A read start_locking / acquire / release in the fault's window: vmf_anon_prepare()'s
    trylock or a fallback's lock_mm_and_find_vma() - the trace cannot tell them apart."""
    return (lock(tid, t + 0.001, "start_locking", False) + lock(tid, t + 0.002, "acquire_returned", False, success=True)
            + lock(tid, t + 0.003, "released", False))


def build(text):
    ops, vmas, _ = build_ops(events(text), "t", MAPS)
    return ops.filter(pl.col("kind") == "fault"), ops.filter(pl.col("kind") != "fault"), vmas


@pytest.mark.parametrize("flags, prot, merged", [
    (0x22, 3, True),  # the same flags as A: vma_merge_new_range() grows A down over it
    (0x4022, 3, False),  # MAP_NORESERVE: VM_NORESERVE and no VM_ACCOUNT - is_mergeable_vma() refuses
    (0x20022, 3, False),  # MAP_STACK: VM_NOHUGEPAGE
    (0x22, 1, False),  # another protection
])
def test_a_new_mapping_merges_with_the_next_vma(flags, prot, merged):
    """A at X+0x2000; B mapped right below it.  Merged, B's range is A's vm_area_struct
    (``vmg->target = next``), which has the anon_vma A's first write prepared, so B's first
    write fault that traces a read start_locking is a fallback; not merged, it is B's
    first write fault: vmf_anon_prepare()'s trylock."""
    text = (mmap(100, 1.00, 1.01, 0x2000, X + 0x2000)
            + pf(100, 1.1, X + 0x2000) + trylock(100, 1.1)  # A's first write: its anon_vma
            + mmap(100, 1.2, 1.21, 0x2000, X, prot=prot, flags=flags)
            + pf(100, 1.3, X + 0x1000, code=0x6 if prot & 2 else 0x4) + trylock(100, 1.3))
    f, w, vmas = build(text)
    a = w["vmas_created"].to_list()[0][0]
    if merged:
        assert f["vma_id"].to_list() == [a, a] and vmas.height == 3  # the [stack], prog, A
        assert vmas.filter(pl.col("vma_id") == a)[["start", "end"]].row(0) == (X, X + 0x4000)
        # B write-locks A and creates nothing; A leaves it as [X, X + 0x4000)
        assert w["vma_ids"].to_list()[1] == [a] and w["vmas_created"].to_list()[1] == []
        assert (w["range_start"].to_list()[1], w["range_end"].to_list()[1]) == ([X], [X + 0x4000])
        assert f["observed_anon_prepare"].to_list() == [True, False]
        assert f["observed_fallback"].to_list() == [False, True]
    else:
        b = vmas.filter(pl.col("start") == X)["vma_id"][0]
        assert f["vma_id"].to_list()[1] == b != f["vma_id"].to_list()[0]
        assert w["vmas_created"].to_list()[1] == [b]
        if prot & 2:
            assert f["observed_anon_prepare"].to_list() == [True, True]


@pytest.mark.parametrize("a_written", [False, True])
def test_a_new_mapping_filling_a_gap_merges_with_both_unless_their_anon_vmas_differ(a_written):
    """C at X, A at X+0x4000, C written (its anon_vma); B fills [X+0x2000, X+0x4000).  A
    without an anon_vma: C grows over B and A, A is freed into C (vma_expand(): remove_next;
    successor C).  A written too, with an anon_vma of its own (C was not its neighbour when
    it was prepared): can_vma_merge_right()'s ``prev->anon_vma == next->anon_vma`` fails, and
    B merges with C alone."""
    text = (mmap(100, 1.00, 1.01, 0x2000, X) + mmap(100, 1.02, 1.03, 0x2000, X + 0x4000)
            + pf(100, 1.1, X) + trylock(100, 1.1)
            + (pf(100, 1.15, X + 0x4000) + trylock(100, 1.15) if a_written else "")
            + mmap(100, 1.2, 1.21, 0x2000, X + 0x2000)
            + pf(100, 1.3, X + 0x5000, code=0x4))  # a read in A's range
    f, w, vmas = build(text)
    c = vmas.filter(pl.col("start") == X)["vma_id"][0]
    a = w["vmas_created"].to_list()[1][0]
    if not a_written:
        assert w["vma_ids"].to_list()[2] == sorted([c, a])
        assert w["vmas_freed"].to_list()[2] == [a] and w["vmas_successor"].to_list()[2] == [c]
        assert vmas.filter(pl.col("vma_id") == c)[["start", "end"]].row(0) == (X, X + 0x6000)
        assert f["vma_id"].to_list()[-1] == c
    else:
        assert w["vma_ids"].to_list()[2] == [c] and w["vmas_freed"].to_list()[2] == []
        assert vmas.filter(pl.col("vma_id") == c)[["start", "end"]].row(0) == (X, X + 0x4000)
        assert f["vma_id"].to_list()[-1] == a


@pytest.mark.parametrize("written_before", [True, False])
def test_a_split_off_vma_has_its_parents_anon_vma(written_before):
    """R = [X, X+0x3000) written (its anon_vma), then mprotect(X+0x1000, 0x1000, PROT_READ)
    splits it: the upper piece U = [X+0x2000, X+0x3000) is a new VMA (vmas_parent: R) with
    R's anon_vma (anon_vma_clone()), so U's first write fault with a read start_locking is a
    fallback.  R never written before the split: U has none, and the same fault is
    vmf_anon_prepare()'s trylock."""
    text = (mmap(100, 1.00, 1.01, 0x3000, X)
            + (pf(100, 1.1, X) + trylock(100, 1.1) if written_before else "")
            + sc(100, 1.2, 1.21, "mprotect", f"start: {X + 0x1000:#x}, len: 0x00001000, prot: 0x00000001")
            + pf(100, 1.3, X + 0x2000) + trylock(100, 1.3))
    f, w, vmas = build(text)
    r = vmas.filter(pl.col("start") == X)["vma_id"][0]
    u = vmas.filter(pl.col("start") == X + 0x2000)["vma_id"][0]
    assert w["vmas_parent"].to_list()[1] == [r, r]  # the middle and U, both copies of R
    last = f.filter(pl.col("vma_id") == u).row(0, named=True)
    assert (last["observed_fallback"], last["observed_anon_prepare"]) == (written_before, not written_before)


@pytest.mark.parametrize("code, prepared", [(0x2, True), (0x0, False)])
def test_a_kernel_mode_write_fault_prepares_the_anon_vma(code, prepared):
    """A kernel-mode write fault (copy_to_user() into a fresh mapping) is served under
    mmap_lock (do_user_addr_fault(): ``goto lock_mmap``) and do_anonymous_page() ->
    vmf_anon_prepare() sets the anon_vma; the next user write fault then takes no trylock,
    and one that traces a read start_locking is a fallback.  A kernel-mode read maps the
    zero page and prepares nothing."""
    text = (mmap(100, 1.00, 1.01, 0x2000, X)
            + L(100, 1.1, "exceptions:page_fault_kernel", f"address={X:#x} ip=0xffffffff81000000 error_code={code:#x}")
            + trylock(100, 1.1)  # mmap_read_lock(): a kernel-mode fault's, none of its flags
            + pf(100, 1.2, X + 0x1000) + trylock(100, 1.2))
    f, _, _ = build(text)
    user = f.filter(~pl.col("kernel")).row(0, named=True)
    assert (user["observed_fallback"], user["observed_anon_prepare"]) == (prepared, not prepared)


@pytest.mark.parametrize("written, merged", [(False, True), (True, False)])
def test_vm_account_as_mprotect_leaves_it_decides_a_merge(written, merged):
    """A = mmap(PROT_READ|PROT_WRITE) at X+0x2000 is accounted (VM_ACCOUNT: __mmap_prepare()'s
    accountable_mapping()); mprotect(A, PROT_NONE) drops VM_ACCOUNT only while A has no
    anon_vma (mprotect_fixup(): ``(oldflags & VM_ACCOUNT) && vma_is_anonymous(vma) &&
    !vma->anon_vma``).  Then B = mmap(PROT_NONE) right below, never accounted, merges into
    A only if A lost it - if A was never written."""
    text = (mmap(100, 1.00, 1.01, 0x2000, X + 0x2000)
            + (pf(100, 1.1, X + 0x2000) + trylock(100, 1.1) if written else "")
            + sc(100, 1.2, 1.21, "mprotect", f"start: {X + 0x2000:#x}, len: 0x00002000, prot: 0x00000000")
            + mmap(100, 1.3, 1.31, 0x2000, X, prot=0))
    _, w, vmas = build(text)
    a = w["vmas_created"].to_list()[0][0]
    assert (w["vmas_created"].to_list()[2] == [], w["vma_ids"].to_list()[2] == [a]) == (merged, merged)
    assert vmas.filter(pl.col("vma_id") == a)["start"][0] == (X if merged else X + 0x2000)


def test_a_vma_prepared_beside_one_with_an_anon_vma_shares_it():
    """R = mmap(RW) [X, X+0x2000); mprotect(X+0x1000, PROT_READ|PROT_WRITE|PROT_EXEC) splits
    off U, before any write (no anon_vma to clone).  L's first write prepares a new anon_vma;
    U's finds L beside it, anon_vma_compatible() (flags equal but for VM_ACCESS_FLAGS,
    pgoffs contiguous), and find_mergeable_anon_vma() gives U L's anon_vma - so
    mprotect(U, RW) merges U back into L (is_mergeable_anon_vma(): one anon_vma, the
    flags equal again).  With an anon_vma of U's own the merge would be refused."""
    text = (mmap(100, 1.00, 1.01, 0x2000, X)
            + sc(100, 1.1, 1.11, "mprotect", f"start: {X + 0x1000:#x}, len: 0x00001000, prot: 0x00000007")
            + pf(100, 1.2, X) + trylock(100, 1.2)  # L: a new anon_vma
            + pf(100, 1.3, X + 0x1000) + trylock(100, 1.3)  # U: L's
            + sc(100, 1.4, 1.41, "mprotect", f"start: {X + 0x1000:#x}, len: 0x00001000, prot: 0x00000003"))
    f, w, vmas = build(text)
    l_, u = w["vmas_created"].to_list()[0][0], w["vmas_created"].to_list()[1][0]
    assert f["vma_id"].to_list() == [l_, u]
    assert f["observed_anon_prepare"].to_list() == [True, True]  # both prepared (U's trylock all the same)
    assert w["vmas_freed"].to_list()[2] == [u] and w["vmas_successor"].to_list()[2] == [l_]
    assert vmas.filter(pl.col("vma_id") == l_)[["start", "end"]].row(0) == (X, X + 0x2000)
