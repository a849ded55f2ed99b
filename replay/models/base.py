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
MM_LOCK_SEQS = (None, "int", "seqcount")


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
    mm_lock_seq: str | None = None
    """How the kernel keeps mm->mm_lock_seq (None: no CONFIG_PER_VMA_LOCK, <= 6.3).  "int":
    6.4-6.13, ``int mm_lock_seq`` bumped only by vma_end_write_all() (``WRITE_ONCE(mm->mm_lock_seq,
    mm->mm_lock_seq + 1)``, later smp_store_release()); vma_start_read() compares
    ``READ_ONCE(vma->vm_mm->mm_lock_seq)`` and, after the trylock, the same load
    (smp_load_acquire() from 6.9).  "seqcount": ``seqcount_t mm_lock_seq`` ("mm: convert
    mm_lock_seq to a proper seqcount", Suren Baghdasaryan, v6.14; under the v7/v8 postings
    and "move per-vma lock into vm_area_struct" in mm-unstable): mmap_write_lock() ->
    mm_lock_seqcount_begin() makes it odd, vma_end_write_all() -> mm_lock_seqcount_end() even
    again; vma_start_read() compares ``READ_ONCE(mm_lock_seq.sequence)`` and then
    ``raw_read_seqcount()``.  The compare is the same; a seqcount model's writer program has
    MM_SEQ_WRITE_BEGIN (one more store to mm_lock_seq's line per write-locked section) and
    an "int" one must not (Model checks it where the parameter is given)."""

    @classmethod
    def parse(cls, model: str, given: dict) -> "LockParams":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"model {model!r}: unknown parameter {', '.join(unknown)}; known: {', '.join(known)}")
        for k, v in given.items():
            want = {"vma_lock": (str, type(None)), "ref_limit": int, "wake": str, "writer_ref": int,
                    "typesafe_by_rcu": bool, "lock_offset": (int, type(None)), "mm_lock_seq": (str, type(None))}[k]
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
        if p.mm_lock_seq not in MM_LOCK_SEQS:
            raise ValueError(f"model {model!r}: mm_lock_seq must be one of {MM_LOCK_SEQS}, not {p.mm_lock_seq!r}")
        if p.vma_lock is None and p.mm_lock_seq is not None:
            raise ValueError(f"model {model!r}: mm_lock_seq without a per-VMA lock (mmap_lock alone has none)")
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
    # the release whose fault-path rules (batch sizes: replay/models/kernels.py
    # FAULT_PATH_KERNELS) a replay follows unless the run names another
    release: str = "6.18"
    madvise: list | None = None  # a read-mode madvise (MADV_DONTNEED, MADV_FREE, ...); None: MADVISE_MMAP_READ

    def digest(self) -> str:
        """Content hash of the layout, programs, parameters and release."""
        import hashlib

        return hashlib.sha256(repr((self.layout, self.programs, sorted(self.params.items()), self.release))
                              .encode()).hexdigest()[:16]

    PROGRAMS = ("fault", "kernel_fault", "writer", "madvise")  # the engine's program numbers, in order

    def __post_init__(self):
        self.lock = LockParams.parse(self.name, self.params)  # what the engines read
        self.programs = {
            "fault": compile_program(self.fault),
            "kernel_fault": compile_program(self.kernel_fault),
            "writer": compile_program(self.writer),
            "madvise": compile_program(self.madvise if self.madvise is not None else MADVISE_MMAP_READ),
        }
        begins = any(ins[0] == Op.MM_SEQ_WRITE_BEGIN for ins in self.writer)
        if self.lock.mm_lock_seq is not None and begins != (self.lock.mm_lock_seq == "seqcount"):
            raise ValueError(f"model {self.name!r}: mm_lock_seq {self.lock.mm_lock_seq!r} but its writer "
                             f"{'has' if begins else 'lacks'} MM_SEQ_WRITE_BEGIN (mmap_write_lock()'s "
                             f"mm_lock_seqcount_begin())")
        missing = sorted(f"{o}.{f}" for o, f in needed_fields(self)
                         if getattr(self.layout, o) is None or f not in getattr(self.layout, o).fields)
        if missing:
            raise ValueError(f"model {self.name!r}: its programs need {', '.join(missing)}, which its layout lacks")


# A read-mode madvise up to v6.16, mm/madvise.c do_madvise(): madvise_need_mmap_write() is 0
# for MADV_DONTNEED, MADV_FREE, MADV_WILLNEED, MADV_COLD, MADV_PAGEOUT, MADV_REMOVE, ... so
# ``mmap_read_lock(mm)`` (not a trylock), find_vma_prev() and the VMA walk, the behaviour on
# each VMA, ``mmap_read_unlock(mm)``.  The work under the lock is the trace's (WORK "madvise":
# the op's hold_ns - its mmap_lock read hold, or sys_enter -> sys_exit where the trace has no
# lock events).  v6.17 takes the VMA lock instead for some (kernels.py, mainline).
MADVISE_MMAP_READ = [
    (Op.RWSEM_DOWN_READ, "mmap_lock"),  # mmap_read_lock()
    (Op.READ, "mm", "mm_mt"),  # find_vma_prev(): the maple tree
    (Op.READ, "vma", "vm_start"),  # vm_start, vm_end, vm_flags of each VMA in the range
    (Op.WORK, "madvise"),  # madvise_vma_behavior() on each VMA: zap_page_range_single(), ...
    (Op.RWSEM_UP_READ, "mmap_lock"),  # mmap_read_unlock()
    (Op.END,),
]

# Fields the engine reads for an op without the program naming them (replay/engine/load.py
# turns them into offsets and line ids; micro.py, rwsem.py and vma.py use them).
_IMPLICIT = {
    Op.WALK: (("mm", "mm_mt"),),
    Op.CHECK_SEQ: (("vma", "vm_lock_seq"), ("mm", "mm_lock_seq")),
    Op.VMA_START_WRITE_NEXT: (("vma", "vm_lock_seq"), ("mm", "mm_lock_seq")),
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
    for prog in (model.fault, model.kernel_fault, model.writer, model.madvise or MADVISE_MMAP_READ):
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
