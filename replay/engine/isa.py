"""The micro-op set lock models are written in: one table.

A model is data: a layout (which struct fields sit on which cache lines) and, per op
kind, a program of these micro-ops.  Loads and stores cost what the coherence model
says; the lock micro-ops carry the kernel's algorithms - trylock CAS loops, reader bias
and waiter bits, queued waiters woken together, writers that drain readers -
parameterised by the model (limits, wake policy, what a detached VMA means).

``MICRO_OPS`` declares each one: its arguments (those that are branch labels marked),
how its arguments are encoded for the engine, the kernel code it stands for, and its
handler in ``micro.py``.  A new primitive is its row plus its handler; the engine's
dispatch (``_dispatch.py``) is generated from this table
(``python -m replay.engine.isa``; a test checks it is current).  ``compile_program``
resolves labels to instruction indices, so the engine only sees integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


class Op(IntEnum):
    LABEL = 0
    READ = 1
    PREFETCHW = 2
    STORE = 3
    WORK = 4
    CHECK_SEQ = 5
    RWSEM_TRYLOCK_READ = 6
    RWSEM_DOWN_READ = 7
    RWSEM_UP_READ = 8
    RWSEM_DOWN_WRITE = 9
    RWSEM_UP_WRITE = 10
    REF_GET = 11
    REF_PUT = 12
    CHECK_MM = 13
    VMA_START_WRITE_NEXT = 14
    MM_SEQ_WRITE_BEGIN = 15
    MM_SEQ_WRITE_END = 16
    OUTCOME = 17
    FALLBACK = 18
    ATTEMPT = 19
    GOTO = 20
    END = 21
    WALK = 22
    CHECK_RANGE = 23
    CHECK_DETACHED = 24
    VMA_COMMIT = 25
    RWSEM_DOWNGRADE_WRITE = 26
    HANDLE_MM_FAULT = 27
    MADV_VMA_LOCK = 28
    CHECK_SPAN = 29
    FAULT_RETRY = 30
    RETRY_WAIT = 31
    CHECK_ANON = 32
    CHECK_ANON_VMA = 33
    ANON_VMA_CHECK = 34
    ANON_VMA_PREPARE = 35
    CHECK_MM_USERS = 36
    IRET = 37


OUTCOMES = ("success", "abort", "retry", "miss")
WORK_KINDS = ("writer", "zap", "madvise")  # WORK's argument, encoded as its index


@dataclass(frozen=True)
class MicroOp:
    op: Op
    args: tuple  # argument names; a name ending in "?" is a branch label
    encoding: str  # how encode() turns the arguments into the engine's three integers
    kernel: str  # what it stands for in the kernel
    handler: str  # its function in micro.py ("" for LABEL: removed by compile_program)

    @property
    def labels(self) -> tuple[int, ...]:
        """Positions (1-based, as in the instruction tuple) of label arguments."""
        return tuple(i + 1 for i, a in enumerate(self.args) if a.endswith("?"))


MICRO_OPS = (
    MicroOp(Op.LABEL, ("name",), "none", "a branch target", ""),
    MicroOp(Op.READ, ("obj", "field"), "field", "a load of obj->field", "h_read"),
    MicroOp(Op.PREFETCHW, ("obj", "field"), "field", "prefetchw(): a non-blocking request for ownership "
            "(x86 exc_page_fault's prefetchw(&current->mm->mmap_lock))", "h_prefetchw"),
    MicroOp(Op.STORE, ("obj", "field"), "field", "a plain store to obj->field", "h_store"),
    MicroOp(Op.WORK, ("what",), "work", "the writer's work under the write lock (\"writer\"), after "
            "mmap_write_downgrade() (\"zap\": unmap_region() under the read lock), or a read-mode madvise's "
            "behaviour on its VMAs (\"madvise\": the op's hold_ns)", "h_work"),
    MicroOp(Op.CHECK_SEQ, ("locked?",), "labels", "vma->vm_lock_seq == mm->mm_lock_seq: write-locked "
            "(vma_start_read())", "h_check_seq"),
    MicroOp(Op.RWSEM_TRYLOCK_READ, ("lock", "failed?"), "lock", "down_read_trylock()", "h_rwsem_trylock_read"),
    MicroOp(Op.RWSEM_DOWN_READ, ("lock",), "lock", "down_read(), sleeping in rwsem_down_read_slowpath()",
            "h_rwsem_down_read"),
    MicroOp(Op.RWSEM_UP_READ, ("lock",), "lock", "up_read()", "h_rwsem_up_read"),
    MicroOp(Op.RWSEM_DOWN_WRITE, ("lock",), "lock", "down_write(), spinning then sleeping", "h_rwsem_down_write"),
    MicroOp(Op.RWSEM_UP_WRITE, ("lock",), "lock", "up_write()", "h_rwsem_up_write"),
    MicroOp(Op.REF_GET, ("failed?", "detached?"), "labels", "__refcount_inc_not_zero_limited_acquire(&vma->vm_refcnt)"
            " in vma_start_read()", "h_ref_get"),
    MicroOp(Op.REF_PUT, (), "none", "vma_refcount_put(): decrement, wake the writer per the model's policy",
            "h_ref_put"),
    MicroOp(Op.CHECK_MM, ("reused?",), "vm_mm", "vma->vm_mm != mm: reused by another mm (SLAB_TYPESAFE_BY_RCU); "
            "each mm replays alone, so only the load", "h_check_mm"),
    MicroOp(Op.VMA_START_WRITE_NEXT, ("walked?",), "labels", "the call's walk reaches its next VMA: "
            "vma_start_write() on it (and on the neighbours a merge takes with it), its share of the WORK "
            "to come (micro.h_vma_start_write_next); none left -> goto", "h_vma_start_write_next"),
    MicroOp(Op.MM_SEQ_WRITE_BEGIN, (), "none", "mmap_write_lock()'s mm_lock_seqcount_begin() (a seqcount "
            "mm_lock_seq: v6.14+, the v7/v8 postings)",
            "h_mm_seq_write"),
    MicroOp(Op.MM_SEQ_WRITE_END, (), "none", "mmap_write_unlock() -> vma_end_write_all(): the mm_lock_seq bump "
            "unlocks every VMA", "h_mm_seq_write"),
    MicroOp(Op.OUTCOME, ("name",), "outcome", "count_vm_vma_lock_event(): success | abort | retry | miss",
            "h_outcome"),
    MicroOp(Op.FALLBACK, (), "none", "the fault falls back to the mmap_lock path", "h_fallback"),
    MicroOp(Op.ATTEMPT, (), "none", "one more per-VMA lock attempt", "h_attempt"),
    MicroOp(Op.GOTO, ("target?",), "labels", "a jump", "h_goto"),
    MicroOp(Op.END, (), "none", "the op is done", "h_end"),
    MicroOp(Op.WALK, ("none?",), "labels", "mas_walk() under rcu_read_lock(): a pointer to the VMA's slab object; "
            "none -> goto", "h_walk"),
    MicroOp(Op.CHECK_RANGE, ("outside?",), "labels", "the address outside the locked VMA's vm_start..vm_end (split, "
            "shrunk, or its slot reused) -> goto (lock_vma_under_rcu())", "h_check_range"),
    MicroOp(Op.CHECK_DETACHED, ("detached?",), "labels", "vma->detached (before v6.15) -> goto", "h_check_detached"),
    MicroOp(Op.VMA_COMMIT, (), "none", "the writer's VMAs appear (attached, write-locked) and vanish (detached, "
            "freed)", "h_vma_commit"),
    MicroOp(Op.RWSEM_DOWNGRADE_WRITE, ("lock", "no_downgrade?"), "lock", "mmap_write_downgrade() -> "
            "downgrade_write() where the writer downgraded (munmap, brk, mremap: the trace's read hold after it); "
            "else goto", "h_rwsem_downgrade_write"),
    MicroOp(Op.HANDLE_MM_FAULT, (), "none", "handle_mm_fault(): the fault's own work and the resources it shares "
            "(page allocator, memcg, rss, LRU, page tables: faultpath.py)", "h_handle_mm_fault"),
    MicroOp(Op.MADV_VMA_LOCK, ("mmap_lock?",), "labels", "mm/madvise.c get_lock_mode() (v6.17): the madvise is "
            "not MADV_DONTNEED, MADV_DONTNEED_LOCKED or MADV_FREE (not MADVISE_VMA_READ_LOCK) -> goto",
            "h_madv_vma_lock"),
    MicroOp(Op.CHECK_SPAN, ("spans?",), "labels", "try_vma_read_lock(): ``range.end > vma->vm_end`` - the "
            "madvise covers more than the VMA it locked -> goto", "h_check_span"),
    MicroOp(Op.FAULT_RETRY, ("lock", "retry?"), "lock", "handle_mm_fault() returns VM_FAULT_RETRY under this lock "
            "(vmf_can_call_fault() under the VMA lock; the page cache's maybe_unlock_mmap_for_io() under either, "
            "first attempt only): retry.py -> goto", "h_fault_retry"),
    MicroOp(Op.RETRY_WAIT, (), "none", "the wait inside that call with the lock dropped (__folio_lock_killable(), "
            "the read): the fault sleeps off its CPU (retry.py)", "h_retry_wait"),
    MicroOp(Op.CHECK_ANON, ("refused?",), "labels", "lock_vma_under_rcu() up to 6.5, before vma_start_read(): "
            "\"if (!vma_is_anonymous(vma)) goto inval;\", 6.4 also \"if (!vma->anon_vma) goto inval;\" -> goto "
            "(retry.py)", "h_check_anon"),
    MicroOp(Op.CHECK_ANON_VMA, ("refused?",), "labels", "lock_vma_under_rcu() 6.5-6.9, after vma_start_read(): "
            "\"if (unlikely(vma_is_anonymous(vma) && !vma->anon_vma)) goto inval_end_read;\" -> goto (retry.py)",
            "h_check_anon_vma"),
    MicroOp(Op.ANON_VMA_CHECK, ("lock", "prepared?", "retry?"), "lock_labels", "vmf_anon_prepare() under this lock: "
            "the VMA has an anon_vma, or the fault needs none -> goto prepared; up to 6.9 under the VMA lock "
            "VM_FAULT_RETRY -> goto retry; else on to mmap_read_trylock() (6.10+) and __anon_vma_prepare() "
            "(retry.py)", "h_anon_vma_check"),
    MicroOp(Op.ANON_VMA_PREPARE, (), "none", "__anon_vma_prepare(): vma->anon_vma set (retry.py)",
            "h_anon_vma_prepare"),
    MicroOp(Op.CHECK_MM_USERS, ("single?",), "labels", "the per-VMA lock v2 posting's do_user_addr_fault(): \"if "
            "(!(flags & FAULT_FLAG_USER) || atomic_read(&mm->mm_users) == 1) goto lock_mmap;\" - mm_users the mm's "
            "threads in the trace (the load is the READ before it) -> goto", "h_check_mm_users"),
    MicroOp(Op.IRET, (), "none", "the exception's return to the faulting context, IRET (arch/x86/entry/entry_64.S "
            "native_irq_return_iret), a serializing instruction: it completes when the CPU's memory transactions "
            "still pending have - its prefetchw's fill, its queued stores (Intel SDM vol. 3A, \"Serializing "
            "Instructions\"; PREFETCHh and PREFETCHW: \"ordered with respect to serializing instructions\")",
            "h_iret"),
)
BY_OP = {m.op: m for m in MICRO_OPS}
assert set(BY_OP) == set(Op), "every Op has its row"


def compile_program(prog: list[tuple]) -> list[tuple]:
    """Resolve ("LABEL", name) markers: branch arguments that name labels become indices."""
    labels = {}
    out = []
    for ins in prog:
        if ins[0] == Op.LABEL:
            labels[ins[1]] = len(out)
        else:
            out.append(ins)
    resolved = []
    for ins in out:
        ins = list(ins)
        row = BY_OP[Op(ins[0])]
        if len(ins) - 1 != len(row.args):
            raise ValueError(f"{row.op.name} takes {len(row.args)} arguments ({', '.join(row.args)}), "
                             f"not {len(ins) - 1}")
        for k in row.labels:
            if ins[k] not in labels:
                raise ValueError(f"undefined label {ins[k]!r} in {row.op.name}")
            ins[k] = labels[ins[k]]
        resolved.append(tuple(ins))
    if not resolved or resolved[-1][0] not in (Op.END, Op.GOTO):
        raise ValueError("a program must end with END or GOTO")
    return resolved


def encode(ins: tuple, layout) -> list[int]:
    """One compiled instruction as the engine's [op, a1, a2, a3]: mm fields become line
    ids, VMA fields byte offsets, locks 0 = mmap_lock / 1 = the VMA's (before any labels), WORK its index in
    WORK_KINDS, outcomes their index, labels instruction indices."""
    row = BY_OP[Op(ins[0])]
    a = list(ins[1:])
    if row.encoding == "field":
        obj, f = a
        if obj == "mm":
            args = [0, layout.mm.fields[f] // 64]
        else:
            if f == "vm_lock" and "vm_lock" not in layout.vma.fields:
                f = "vm_start"
            args = [1, layout.vma.fields[f]]
    elif row.encoding == "vm_mm":
        args = [a[0], layout.vma.fields["vm_mm"]]
    elif row.encoding == "lock":
        args = [0 if a[0] == "mmap_lock" else 1, a[1] if len(a) > 1 else 0]
    elif row.encoding == "work":
        args = [WORK_KINDS.index(a[0])]
    elif row.encoding == "outcome":
        args = [OUTCOMES.index(a[0])]
    elif row.encoding == "labels":
        args = [int(x) for x in a]
    elif row.encoding == "lock_labels":
        args = [0 if a[0] == "mmap_lock" else 1] + [int(x) for x in a[1:]]
    else:
        args = []
    return [int(row.op)] + args + [0] * (3 - len(args))


def dispatch_source() -> str:
    """The engine's dispatch, generated from MICRO_OPS."""
    rows = [m for m in MICRO_OPS if m.handler]
    handlers = sorted({m.handler for m in rows})
    lines = [
        '"""GENERATED from replay/engine/isa.py MICRO_OPS by `python -m replay.engine.isa`: do not edit."""',
        "",
        "from ..jit import internal",
        "from .micro import (" + ", ".join(handlers) + ")  # noqa: F401",
        "",
        "",
        "# One compile unit with the handlers spliced into it (micro.py), inlined by LLVM into",
        "# loop._step: not a unit per handler that LLVM would optimise and emit again in every",
        "# unit above it.",
        "@internal(inline=True)",
        "def dispatch(S, t, op, a1, a2, a3):",
        '    """Run one micro-op: (the time the thread continues, or < 0 if it blocked;',
        '    whether to run the same instruction again)."""',
    ]
    for m in rows:
        lines.append(f"    if op == {int(m.op)}:  # {m.op.name}: {m.kernel[:60]}")
        lines.append(f"        return {m.handler}(S, t, a1, a2, a3)")
    lines += ["    return -2.0, False  # not an op: the loop reports it", ""]
    return "\n".join(lines)


DISPATCH_PATH = Path(__file__).with_name("_dispatch.py")

if __name__ == "__main__":
    DISPATCH_PATH.write_text(dispatch_source())
    print(f"wrote {DISPATCH_PATH}")
