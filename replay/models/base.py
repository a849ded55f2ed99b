"""What a lock model is: a layout, programs, and semantic parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.isa import compile_program


@dataclass(frozen=True)
class Struct:
    """A slab-allocated struct: field offsets (bytes), object size and alignment.

    Objects are packed ``4096 // stride`` to a page, stride = size rounded up to align,
    so neighbouring objects share cache lines unless align is 64 (SLAB_HWCACHE_ALIGN).
    (That packing is the engine's address map; the memory footprint uses SLUB's own
    rules, replay/slub.py.)

    ``slab_flags`` and ``freeptr_in_object`` say how the struct's kmem_cache is created:
    the kmem_cache_create() flags, and whether kmem_cache_args gives a free-pointer
    offset inside the object (use_freeptr_offset).  They describe the allocator, not
    what the engine simulates, so they are left out of repr: model digests - and so run
    ids - do not change with them."""

    name: str
    size: int
    align: int
    fields: dict
    slab_flags: tuple = field(default=(), repr=False)
    freeptr_in_object: bool = field(default=False, repr=False)

    @property
    def stride(self) -> int:
        return -(-self.size // self.align) * self.align

    @property
    def per_page(self) -> int:
        return 4096 // self.stride

    def address(self, index: int, base: int) -> int:
        return base + (index // self.per_page) * 4096 + (index % self.per_page) * self.stride


@dataclass(frozen=True)
class Layout:
    mm: Struct
    vma: Struct
    vma_lock: Struct | None = None  # a separate lock object (pervma)
    vma_lock_in: str = ""  # "vma_lock" (separate), "vma" (inline rwsem) or "" (no rwsem)
    # vm_area_free() goes through call_rcu() (per-VMA locks before SLAB_TYPESAFE_BY_RCU:
    # lockless readers may still hold the object); footprint only, out of repr as above
    free_after_gp: bool = field(default=False, repr=False)


@dataclass
class Model:
    name: str
    description: str
    citations: list
    layout: Layout
    fault: list  # the user-fault program
    kernel_fault: list  # the kernel-mode-fault program
    writer: list  # the address-space writer program
    params: dict = field(default_factory=dict)

    def digest(self) -> str:
        """Content hash of the layout, programs and parameters."""
        import hashlib

        return hashlib.sha256(repr((self.layout, self.programs, sorted(self.params.items()))).encode()).hexdigest()[:16]

    def __post_init__(self):
        self.programs = {
            "fault": compile_program(self.fault),
            "kernel_fault": compile_program(self.kernel_fault),
            "writer": compile_program(self.writer),
        }
