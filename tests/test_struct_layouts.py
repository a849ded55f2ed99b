"""Struct layouts (replay/models/kernels.py): every shipped struct has no two fields on the
same bytes and none past its size, a hand-made bad one is refused with one line, a model
whose programs need a field its layout lacks is refused, and the offsets the engine
depends on are the ones derived from include/linux/mm_types.h (the arithmetic is in the
comments beside each struct)."""

import pytest

from replay.models import registry
from replay.models import kernels as K
from replay.models.base import Layout, Model, Struct


def _structs():
    out = {}
    for name, m in registry().items():
        for role in ("mm", "vma", "vma_lock"):
            st = getattr(m.layout, role)
            if st is not None:
                out[f"{name}.{role}"] = st
    return out


@pytest.mark.parametrize("where", sorted(_structs()))
def test_every_shipped_struct_has_disjoint_fields_inside_it(where):
    st = _structs()[where]
    assert set(st.sizes) == set(st.fields)
    spans = sorted((off, off + st.sizes[f], f) for f, off in st.fields.items())
    for (_, end, f), (start, _, g) in zip(spans, spans[1:]):
        assert end <= start, f"{where}: {f} runs into {g}"
    assert spans[-1][1] <= st.size
    # rebuilding it runs the same check Struct runs when a model loads
    Struct(st.name, st.size, st.align, dict(st.fields), sizes=dict(st.sizes))


def test_the_old_inline_rwsem_layout_is_refused():
    # what _inline_vma(64) built: the rwsem's count over anon_vma_chain (56, 16 bytes)
    f = {"vm_start": 0, "anon_vma_chain": 56, "lock.count": 64, "lock.owner": 72}
    with pytest.raises(ValueError) as e:
        Struct("vm_area_struct", 216, 16, f, sizes={"vm_start": 8, "anon_vma_chain": 16, "lock.count": 8,
                                                      "lock.owner": 8})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == "struct vm_area_struct: fields anon_vma_chain (56..71) and lock.count (64..71) overlap"


def test_fields_past_the_end_and_missing_sizes_are_refused():
    with pytest.raises(ValueError, match=r"^struct s: field b \(12\.\.19\) runs past the struct's 16 bytes$"):
        Struct("s", 16, 8, {"a": 0, "b": 12}, sizes={"a": 8, "b": 8})
    with pytest.raises(ValueError, match=r"^struct s: no field sizes"):
        Struct("s", 16, 8, {"a": 0})
    with pytest.raises(ValueError, match=r"^struct s: fields and sizes must name the same fields; differ in b$"):
        Struct("s", 16, 8, {"a": 0, "b": 8}, sizes={"a": 8})
    Struct("s", 16, 8, {"a": 0, "b": 8}, sizes={"a": 8, "b": 8})  # touching is not overlapping


def test_a_model_needing_a_field_its_layout_lacks_is_refused():
    pervma = registry()["pervma"]
    # 6.3's mm_struct has no mm_lock_seq: pervma's CHECK_SEQ could not be replayed on it
    with pytest.raises(ValueError, match=r"^model 'x': its programs need mm\.mm_lock_seq, which its layout lacks$"):
        Model("x", "", [], Layout(K.MM_63, pervma.layout.vma, pervma.layout.vma_lock, vma_lock_in="vma_lock"),
              pervma.fault, pervma.kernel_fault, pervma.writer, dict(pervma.params))
    # and 6.3's vm_area_struct no vm_lock_seq, vm_lock
    with pytest.raises(ValueError, match=r"need vma\.vm_lock, vma\.vm_lock_seq, which"):
        Model("x", "", [], Layout(K.MM_64, K.VMA_63, pervma.layout.vma_lock, vma_lock_in="vma_lock"),
              pervma.fault, pervma.kernel_fault, pervma.writer, dict(pervma.params))


def test_offsets_the_engine_uses_per_kernel():
    line = lambda st, f: st.fields[f] // 64  # noqa: E731
    m = registry()
    # 6.3: mmap_lock's count and owner share line 1 with mm_users and mm_count; mm_mt line 0
    mm = m["mmap_lock"].layout.mm
    assert (mm.fields["mmap_lock.count"], mm.fields["mmap_lock.owner"]) == (112, 120)
    assert {line(mm, f) for f in ("mmap_lock.count", "mmap_lock.owner", "mm_users", "mm_count")} == {1}
    assert line(mm, "mm_mt") == 0
    # 6.4: mm_count alone in line 0; the count at 184 (line 2), the owner at 192 (line 3)
    mm = m["pervma"].layout.mm
    assert (mm.fields["mm_count"], mm.fields["mm_mt"], mm.fields["mmap_lock.count"], mm.fields["mmap_lock.owner"],
            mm.fields["mm_lock_seq"]) == (0, 64, 184, 192, 240)
    # vm_area_struct per kernel: (vm_lock_seq, vm_lock, anon_vma, vm_file, size)
    want = {"mmap_lock": (None, None, 88, 112, 152), "pervma": (40, 48, 112, 136, 184),
            "inline-rwsem": (44, None, 96, 120, 256), "v8": (40, None, 96, 120, 256),
            "mainline": (40, None, 64, 88, 192)}
    for name, w in want.items():
        v = m[name].layout.vma
        assert (v.fields.get("vm_lock_seq"), v.fields.get("vm_lock"), v.fields["anon_vma"], v.fields["vm_file"],
                v.size) == w, name
    assert m["pervma"].layout.vma.fields["detached"] == 56
    # the lock words: their own line in both cache-aligned designs
    assert m["inline-rwsem"].layout.vma.fields["lock.count"] == 192 == m["v8"].layout.vma.fields["vm_refcnt"]
    assert m["inline-rwsem"].lock.lock_offset == 192


@pytest.mark.parametrize("release, pgd, count, owner, seq", [
    ("6.2", 72, 112, 120, 168), ("6.4", 136, 184, 192, 240), ("6.5", 136, 184, 192, 240),
    ("6.9", 128, 176, 184, 232), ("6.11", 120, 168, 176, 224), ("6.12", 120, 168, 176, 224),
    ("6.13", 120, 184, 192, 240), ("6.14", 120, 184, 192, 240)])
def test_pervma_has_each_releases_mm_struct(release, pgd, count, owner, seq):
    """pervma@RELEASE's mm_struct is that release's (6.8 shrank the maple tree, 6.11 dropped
    get_unmapped_area, 6.13 added SCHED_MM_CID's fields): where pgd, mmap_lock's count and
    owner and mm_lock_seq sit decides which of them share the line prefetchw takes."""
    from replay.models import get_model

    f = get_model(f"pervma@{release}").layout.mm.fields
    assert (f["pgd"], f["mmap_lock.count"], f["mmap_lock.owner"], f["mm_lock_seq"]) == (pgd, count, owner, seq)
    for st in (K.MM_64, K.MM_68, K.MM_611, K.MM_613):  # disjoint, inside, like every shipped struct
        spans = sorted((off, off + st.sizes[k]) for k, off in st.fields.items())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= st.size


def test_inline_rwsem_has_the_6_13_mm_struct():
    """The v8 02/16 posting applied alone is on Jan 2025 mm-unstable (6.13): pgd in line 1,
    not in the count's line as in 6.4-6.10."""
    from replay.models import get_model

    f = get_model("inline-rwsem").layout.mm.fields
    assert f["pgd"] // 64 == 1 and f["mmap_lock.count"] // 64 == 2
