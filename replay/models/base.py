"""What a lock model is: a layout, programs, and semantic parameters."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

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


VMA_LOCKS = (None, "rwsem", "refcnt")
WAKES = ("last", "eager")


@dataclass(frozen=True)
class LockParams:
    """A model's semantic parameters, typed, with the one set of defaults the engine
    uses.  A model declares them as a dict (``Model.params``, which its digest hashes);
    ``LockParams.parse`` checks it, so a plugin with a missing, unknown or mistyped
    parameter fails with one line when it loads instead of deep in a replay."""

    vma_lock: str | None = None
    """None: faults take mmap_lock (<= 6.3); "rwsem": a per-VMA rw_semaphore (6.4-6.14,
    vma_start_read()'s down_read_trylock); "refcnt": vm_refcnt ("mm: replace vm_lock and
    detached flag with a reference count", v6.15)."""
    ref_limit: int = 0
    """refcnt: the limit of __refcount_inc_not_zero_limited_acquire() in vma_start_read():
    VMA_REF_LIMIT = VMA_LOCK_OFFSET - 1 in v6.15 (v7 of the series used one less)."""
    wake: str = "last"
    """refcnt: "last": vma_refcount_put() wakes the writer only when the last reader
    leaves (is_vma_writer_only(), v8 and v6.15); "eager": on every reader exit while a
    writer waits (v7)."""
    writer_ref: int = 0
    """refcnt: references the writer itself holds while write-locked (1 in v7's
    __vma_enter_locked(), 0 from v8)."""
    typesafe_by_rcu: bool = False
    """vm_area_struct's slab is SLAB_TYPESAFE_BY_RCU ("mm: make vma cache
    SLAB_TYPESAFE_BY_RCU", v6.15): freed objects are reused at once."""
    lock_offset: int | None = None
    """inline-rwsem: the rwsem's offset in vm_area_struct (documentation; the layout
    carries the fields)."""

    @classmethod
    def parse(cls, model: str, given: dict) -> "LockParams":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"model {model!r}: unknown parameter {', '.join(unknown)}; known: {', '.join(known)}")
        for k, v in given.items():
            want = {"vma_lock": (str, type(None)), "ref_limit": int, "wake": str, "writer_ref": int,
                    "typesafe_by_rcu": bool, "lock_offset": (int, type(None))}[k]
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise ValueError(f"model {model!r}: parameter {k} = {v!r} has the wrong type")
        p = cls(**given)
        if p.vma_lock not in VMA_LOCKS:
            raise ValueError(f"model {model!r}: vma_lock must be one of {VMA_LOCKS}, not {p.vma_lock!r}")
        if p.wake not in WAKES:
            raise ValueError(f"model {model!r}: wake must be one of {WAKES}, not {p.wake!r}")
        if p.vma_lock == "refcnt" and p.ref_limit <= 1:
            raise ValueError(f"model {model!r}: vma_lock 'refcnt' needs ref_limit (the readers' limit on vm_refcnt, "
                             f"VMA_LOCK_OFFSET - 1 in v6.15), not {p.ref_limit}")
        if p.ref_limit < 0 or p.writer_ref < 0:
            raise ValueError(f"model {model!r}: ref_limit and writer_ref cannot be negative")
        return p


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
        self.lock = LockParams.parse(self.name, self.params)  # what the engines read
        self.programs = {
            "fault": compile_program(self.fault),
            "kernel_fault": compile_program(self.kernel_fault),
            "writer": compile_program(self.writer),
        }
