"""What a lock model is: a layout, programs, and semantic parameters."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..engine.isa import BY_OP, Op, compile_program


@dataclass(frozen=True)
class Struct:
    """A slab-allocated struct: field offsets (bytes), object size and alignment.

    Objects are packed ``4096 // stride`` to a page, stride = size rounded up to align,
    so neighbouring objects share cache lines unless align is 64 (SLAB_HWCACHE_ALIGN).
    (That packing is the engine's address map; the memory footprint uses SLUB's own
    rules, replay/slub.py.)

    ``sizes`` gives each field's size in bytes (``fields`` keeps the offsets, so every
    reader of ``fields`` is unchanged); a struct whose fields overlap one another or run
    past ``size``, or whose ``sizes`` do not name exactly its fields, is rejected when it is
    built, with one line (a plugin gets it as "model plugin 'x' failed to load: ...").

    ``slab_flags`` and ``freeptr_in_object`` say how the struct's kmem_cache is created:
    the kmem_cache_create() flags, and whether kmem_cache_args gives a free-pointer
    offset inside the object (use_freeptr_offset).  They describe the allocator, not
    what the engine simulates, so they are left out of repr: model digests - and so run
    ids - do not change with them."""

    name: str
    size: int
    align: int
    fields: dict
    sizes: dict = field(default=None, repr=False)
    slab_flags: tuple = field(default=(), repr=False)
    freeptr_in_object: bool = field(default=False, repr=False)

    def __post_init__(self):
        where = f"struct {self.name}"
        if not isinstance(self.sizes, dict):
            raise ValueError(f"{where}: no field sizes (Struct(..., sizes={{field: bytes}}))")
        if set(self.sizes) != set(self.fields):
            odd = sorted(set(self.sizes) ^ set(self.fields))
            raise ValueError(f"{where}: fields and sizes must name the same fields; differ in {', '.join(odd)}")
        if self.size <= 0 or self.align <= 0 or self.align & (self.align - 1):
            raise ValueError(f"{where}: size {self.size} and alignment {self.align} must be positive, "
                             f"the alignment a power of two")
        spans = sorted((off, off + self.sizes[f], f) for f, off in self.fields.items())
        for off, end, f in spans:
            if off < 0 or end <= off:
                raise ValueError(f"{where}: field {f} at {off} with size {end - off} is not a byte range")
            if end > self.size:
                raise ValueError(f"{where}: field {f} ({off}..{end - 1}) runs past the struct's {self.size} bytes")
        for (a, a_end, fa), (b, b_end, fb) in zip(spans, spans[1:]):
            if b < a_end:
                raise ValueError(f"{where}: fields {fa} ({a}..{a_end - 1}) and {fb} ({b}..{b_end - 1}) overlap")

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
        missing = sorted(f"{o}.{f}" for o, f in needed_fields(self)
                         if getattr(self.layout, o) is None or f not in getattr(self.layout, o).fields)
        if missing:
            raise ValueError(f"model {self.name!r}: its programs need {', '.join(missing)}, which its layout lacks")


# Fields the engine reads for an op without the program naming them (replay/engine/load.py
# turns them into offsets and line ids; micro.py, rwsem.py and vma.py use them).
_IMPLICIT = {
    Op.WALK: (("mm", "mm_mt"),),
    Op.CHECK_SEQ: (("vma", "vm_lock_seq"), ("mm", "mm_lock_seq")),
    Op.VMA_START_WRITE_ALL: (("vma", "vm_lock_seq"), ("mm", "mm_lock_seq")),
    Op.MM_SEQ_WRITE_BEGIN: (("mm", "mm_lock_seq"),),
    Op.MM_SEQ_WRITE_END: (("mm", "mm_lock_seq"),),
    Op.CHECK_RANGE: (("vma", "vm_start"),),
    Op.CHECK_DETACHED: (("vma", "vm_start"),),
}


def needed_fields(model: "Model") -> set[tuple[str, str]]:
    """(object, field) pairs a model's programs make the engine read, so that a layout
    without one (6.3 has no mm_lock_seq, no vm_lock_seq) fails when the model loads
    rather than reading offset 0.  The fields a program names (READ vma anon_vma) and
    those its ops imply; ``READ vma vm_lock`` with the lock inline (no vm_lock pointer)
    reads vm_start, as replay/engine/isa.py encode() does."""
    need = {("mm", "mmap_lock.count"), ("mm", "mmap_lock.owner"), ("mm", "mmap_lock.wait_lock"), ("vma", "vm_start")}
    for prog in (model.fault, model.kernel_fault, model.writer):
        for ins in prog:
            op = Op(ins[0])
            enc = BY_OP[op].encoding
            if enc == "field" and not (ins[1] == "vma" and ins[2] == "vm_lock" and model.layout.vma_lock_in == "vma"):
                need.add((ins[1], ins[2]))
            elif enc == "vm_mm":
                need.add(("vma", "vm_mm"))
            need.update(_IMPLICIT.get(op, ()))
    if model.lock.vma_lock == "refcnt":  # vma_start_read(), vma_refcount_put()'s rcuwait_wake_up()
        need |= {("vma", "vm_refcnt"), ("mm", "vma_writer_wait")}
    if model.layout.vma_lock_in == "vma_lock":
        need |= {("vma_lock", "lock.count"), ("vma_lock", "lock.owner"), ("vma_lock", "lock.wait_lock")}
    elif model.layout.vma_lock_in == "vma":
        need |= {("vma", "lock.count"), ("vma", "lock.owner"), ("vma", "lock.wait_lock")}
    return need
