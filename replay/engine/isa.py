"""The micro-op set lock models are written in.

A model is data: a layout (which struct fields sit on which cache lines) and, per op
kind, a program of these micro-ops.  Loads and stores cost what the coherence model
says; the lock micro-ops (RWSEM_*, REF_*, VMA_START_WRITE_ALL) carry the kernel's
algorithms - trylock CAS loops, reader bias and waiter bits, queued waiters woken
together, writers that drain readers - parameterised by the model (limits, wake
policy, what a detached VMA means).  Programs branch to labels; ``compile_program``
resolves labels to indices so the engine only sees integers.
"""

from __future__ import annotations

from enum import IntEnum


class Op(IntEnum):
    LABEL = 0  # pseudo-op: a branch target, removed by compile_program
    READ = 1  # (obj, field): a load
    PREFETCHW = 2  # (obj, field): x86 prefetchw, an exclusive fetch without a write
    STORE = 3  # (obj, field): a plain store
    WORK = 4  # (what,): "fault" service time, "writer" service time
    CHECK_SEQ = 5  # (label,): vma->vm_lock_seq == mm->mm_lock_seq -> goto label (write-locked)
    RWSEM_TRYLOCK_READ = 6  # (lock, label): down_read_trylock(); failure -> goto label
    RWSEM_DOWN_READ = 7  # (lock,): down_read(), sleeping in the slow path
    RWSEM_UP_READ = 8  # (lock,)
    RWSEM_DOWN_WRITE = 9  # (lock,)
    RWSEM_UP_WRITE = 10  # (lock,)
    REF_GET = 11  # (label_fail, label_detached): __refcount_inc_not_zero_limited(vm_refcnt)
    REF_PUT = 12  # (): vma_refcount_put(): decrement, wake the writer per the model's policy
    CHECK_MM = 13  # (label,): vma->vm_mm != mm -> goto label (TYPESAFE_BY_RCU reuse)
    VMA_START_WRITE_ALL = 14  # (): vma_start_write() on each VMA the writer op modifies
    MM_SEQ_WRITE_BEGIN = 15  # (): mmap_write_lock's mm_lock_seq bump (seqcount, mainline)
    MM_SEQ_WRITE_END = 16  # (): vma_end_write_all(): mm_lock_seq bump unlocks every VMA
    OUTCOME = 17  # (name,): success | abort | retry | miss
    FALLBACK = 18  # (): the op fell back to the mmap_lock path
    ATTEMPT = 19  # (): one more per-VMA lock attempt
    GOTO = 20  # (label,)
    END = 21  # ()
    WALK = 22  # (label,): the RCU maple-tree walk: keeps a pointer to the VMA's slab object; none -> goto label
    CHECK_RANGE = 23  # (label,): address outside vma->vm_start..vm_end (the object was reused) -> goto label
    CHECK_DETACHED = 24  # (label,): vma->detached (before v6.15) -> goto label
    VMA_COMMIT = 25  # (): the writer's VMAs appear (attached, write-locked) and vanish (detached, freed)



def compile_program(prog: list[tuple]) -> list[tuple]:
    """Resolve ("LABEL", name) markers: branch arguments that name labels become indices."""
    labels = {}
    out = []
    for ins in prog:
        if ins[0] == Op.LABEL:
            labels[ins[1]] = len(out)
        else:
            out.append(ins)
    label_args = {Op.CHECK_SEQ: (1,), Op.RWSEM_TRYLOCK_READ: (2,), Op.REF_GET: (1, 2), Op.CHECK_MM: (1,), Op.GOTO: (1,),
                  Op.WALK: (1,), Op.CHECK_RANGE: (1,), Op.CHECK_DETACHED: (1,)}
    resolved = []
    for ins in out:
        ins = list(ins)
        for k in label_args.get(ins[0], ()):
            if ins[k] not in labels:
                raise ValueError(f"undefined label {ins[k]!r} in {Op(ins[0]).name}")
            ins[k] = labels[ins[k]]
        resolved.append(tuple(ins))
    if not resolved or resolved[-1][0] not in (Op.END, Op.GOTO):
        raise ValueError("a program must end with END or GOTO")
    return resolved
