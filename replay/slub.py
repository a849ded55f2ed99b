"""SLUB's slab geometry for a struct: the slot size, objects per slab and slab order a
kmem_cache gets, computed by the kernel's own rules (x86-64, 4 KiB pages, 64-byte
lines, no slab debugging, KASAN off).

Each rule below follows one kernel function; the text is the one in Linux v6.8-v6.18
(calculate_order() has looped over the waste fraction only since "mm/slub: remove
min_objects loop from calculate_order()", v6.8; for the objects sizes of our models -
up to 256 bytes, where the 1/16 fraction is met at the first order tried - the older
loop over min_objects gives the same orders):

* mm/slab_common.c calculate_alignment(): SLAB_HWCACHE_ALIGN raises the alignment to
  the cache line, halved while the object fits in half of it; then at least
  ARCH_SLAB_MINALIGN (8 on x86-64), rounded to a word.
* mm/slub.c calculate_sizes(): the size rounded to a word; the free pointer after the
  object (one more word) when the cache is SLAB_TYPESAFE_BY_RCU without
  ``use_freeptr_offset`` (or has a constructor), else inside it; then rounded to the
  alignment: that is ``s->size``, the slot each object takes.
* mm/slub.c calculate_order() / calc_slab_order(): ``min_objects = 4 * (fls(nr_cpus)
  + 1)`` (nr_cpus: num_present_cpus()), capped by what fits in slub_max_order
  (PAGE_ALLOC_COSTLY_ORDER = 3); ``min_order = get_order(min_objects * size)``; then the
  lowest order from there whose leftover (slab size % s->size) is at most 1/16 of the
  slab, else 1/8, 1/4, 1/2.  ``oo_make()``: objects = (PAGE_SIZE << order) / size.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SIZE = 4096
CACHE_LINE = 64  # cache_line_size() on x86-64
WORD = 8  # sizeof(void *)
ARCH_SLAB_MINALIGN = 8  # __alignof__(unsigned long long)
SLUB_MIN_ORDER = 0  # slub_min_order default
SLUB_MAX_ORDER = 3  # slub_max_order default: PAGE_ALLOC_COSTLY_ORDER
MAX_OBJS_PER_PAGE = 32767  # slab->objects is 15 bits


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


def fls(x: int) -> int:
    """include/asm-generic/bitops/fls.h: the 1-based position of the highest set bit."""
    return int(x).bit_length()


def get_order(size: int) -> int:
    """include/asm-generic/getorder.h: the smallest order whose block holds ``size``."""
    return max(0, (int(size) - 1).bit_length() - 12)


def calculate_alignment(flags, align: int, size: int) -> int:
    """mm/slab_common.c calculate_alignment()."""
    if "SLAB_HWCACHE_ALIGN" in flags:
        ralign = CACHE_LINE
        while size <= ralign // 2:
            ralign //= 2
        align = max(align, ralign)
    align = max(align, ARCH_SLAB_MINALIGN)
    return _align(align, WORD)


def _order_objects(order: int, size: int) -> int:
    return (PAGE_SIZE << order) // size


def calc_slab_order(size: int, min_order: int, max_order: int, fract_leftover: int) -> int:
    """mm/slub.c calc_slab_order(): the first order from min_order wasting at most
    1/fract_leftover of the slab (max_order + 1 when none does)."""
    order = min_order
    while order <= max_order:
        slab_size = PAGE_SIZE << order
        if slab_size % size <= slab_size // fract_leftover:
            break
        order += 1
    return order


def calculate_order(size: int, nr_cpus: int) -> int:
    """mm/slub.c calculate_order(), slub_min_objects unset (the default)."""
    min_objects = 4 * (fls(max(1, nr_cpus)) + 1)
    max_objects = max(_order_objects(SLUB_MAX_ORDER, size), 1)
    min_objects = min(min_objects, max_objects)
    min_order = max(SLUB_MIN_ORDER, get_order(min_objects * size))
    if _order_objects(min_order, size) > MAX_OBJS_PER_PAGE:
        return get_order(size * MAX_OBJS_PER_PAGE) - 1
    fraction = 16
    while fraction > 1:
        order = calc_slab_order(size, min_order, SLUB_MAX_ORDER, fraction)
        if order <= SLUB_MAX_ORDER:
            return order
        fraction //= 2
    return get_order(size)


@dataclass(frozen=True)
class Cache:
    """A kmem_cache as SLUB lays it out."""

    name: str
    object_size: int  # sizeof(struct)
    size: int  # s->size: the slot, alignment and an outside free pointer included
    align: int
    offset: int  # s->offset: where the free pointer lives in the slot
    order: int
    objects: int  # per slab (oo_objects(s->oo))
    flags: tuple

    @property
    def slab_bytes(self) -> int:
        return PAGE_SIZE << self.order

    @property
    def tail(self) -> int:
        """Bytes at the end of each slab that no object fits in."""
        return self.slab_bytes - self.objects * self.size

    @property
    def freeptr_outside(self) -> bool:
        return self.offset >= self.object_size

    def describe(self) -> str:
        fp = ", free pointer after the object" if self.freeptr_outside else ""
        return (f"{self.name} {self.object_size} B in {self.size} B slots{fp}, "
                f"{self.objects}/slab of {self.slab_bytes // 1024} KiB")


def kmem_cache(struct, nr_cpus: int) -> Cache:
    """The cache kmem_cache_create() makes for ``struct`` (a models.base.Struct: its
    size, alignment, slab_flags and freeptr_in_object) on a machine of nr_cpus."""
    flags = tuple(struct.slab_flags)
    align = calculate_alignment(flags, struct.align, struct.size)
    size = _align(struct.size, WORD)  # calculate_sizes()
    if "SLAB_TYPESAFE_BY_RCU" in flags and not struct.freeptr_in_object:
        offset = size  # the object must stay intact after free: pointer after it
        size += WORD
    elif "SLAB_TYPESAFE_BY_RCU" in flags:
        offset = 0  # args->freeptr_offset: vm_freeptr, in a union with vm_start/vm_end
    else:
        offset = (struct.size // 2) // WORD * WORD  # near the middle of the object
    size = _align(size, align)
    order = calculate_order(size, nr_cpus)
    return Cache(struct.name, struct.size, size, align, offset, order, _order_objects(order, size), flags)
