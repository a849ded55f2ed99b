"""The op builder's streaming driver: events Parquet in, ops Parquet out, in bounded memory.

``replay/ops.py`` says what an op is (pairing, the VMA tracker, observed fallback, time
order); this module makes ops that way from a trace of any size without holding it.

* **Pass 1 (a survey).**  One read of eight narrow columns: the time-order check
  (``ingest/order.py``), the faults outside the user address space, which threads
  there are and, per thread, how often it prints each tgid and takes mmap_lock on each
  ``mm=`` (counted in a compiled pass per batch, ``_tally``).  Thread attribution
  (``attribute``) needs all of it before the first op.
  It also finds whether the events are already in time order (perf's ordered events
  and ftrace's merged buffers give that) and each batch's earliest timestamp.
* **Pass 2.**  The events again, batch by batch in time order - as read when they are
  sorted already; otherwise through a merge buffer that lets an event go once no later
  batch holds an earlier one (the earliest-timestamp list above) - through one
  compiled step per event (``_advance``).  What persists across batches is only what
  must: per thread its open fault or syscall (the events until its next fault or
  syscall decide a fault's fallback and a writer's hold time), per thread and syscall
  the open ``sys_enter`` and its arguments, the VMA layout of each address space
  (flat arrays the step searches; the tracker itself, ``ops.AddressSpace``, runs in
  Python at each writer's ``sys_exit``, which is rare next to faults), and the ops not
  yet written.
* **Writing.**  Ops are numbered in time order, so they are written in that order, a
  row group at a time, as soon as every op before them is complete.  A fault stays
  incomplete until its thread's next fault or syscall, which may be the end of the
  trace (an idle thread); when more than ``2 * ROW_GROUP`` ops wait behind one, the
  oldest row group is written with what is known and the incomplete ops in it are kept
  aside (``late``) and finished there.  Faults outside every known VMA get their
  inferred VMA only at the end (the clusters depend on every such fault's page).
  Either way the row groups from the first such one on go to an uncompressed Arrow IPC
  spill beside the ops file (as their typed arrays, ``SPILL_SCHEMA``, 133 bytes an op;
  their writers' rows, if any, to a second one, lz4, ``SPILL_WRITERS_SCHEMA``), read
  back over memory maps, and at the end through
  a second pass (``_Patch``) that puts the final values in place before their tables are
  made and appended to the ops file; the row groups before it
  are final and go straight in, so each op is Parquet-encoded once.  The Arrow tables
  are built and written on a thread of their own (``_Behind``), overlapping the step (in
  the second pass the tables are made on the step's thread, the writer thread encoding
  the one before).  The files are written
  into the caller's staging directory; the workspace renames them into place.

The output is the same, row for row and type for type, as building the ops in one
piece (the behaviour ``tests/test_ops.py`` and the golden replays pin); only the row
group boundaries and the column encodings (``OPS_PARQUET``) of the Parquet file differ.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
from collections import namedtuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numba import njit

from .ingest.arch import DEFAULT_ARCH, canonical_arch, error_code_is_x86
from .ingest.schema import EVENT_CODE, SYSCALLS
from .ingest.text import fault_major

import importlib

O = importlib.import_module("replay.ops")  # the attribute replay.ops is the API function

BATCH = 1 << 18  # events per read
ROW_GROUP = 1 << 19  # ops per Parquet row group
MISS_CAP = 1 << 16  # faults outside every known VMA, between merges into clusters

# -- event codes (ingest/schema.py EVENTS) --------------------------------------------
PF_USER, PF_KERNEL = EVENT_CODE["page_fault_user"], EVENT_CODE["page_fault_kernel"]
LOCK_START, LOCK_ACQ, LOCK_REL = (EVENT_CODE[f"mmap_lock_{x}"] for x in ("start", "acquired", "released"))
ENTER0, EXIT0 = EVENT_CODE[f"sys_enter_{SYSCALLS[0]}"], EVENT_CODE[f"sys_exit_{SYSCALLS[0]}"]
NSYS = len(SYSCALLS)
EXIT_MMAP = EVENT_CODE["exit_mmap"]
FAULT_END = EVENT_CODE["fault_end"]
assert [EVENT_CODE[f"sys_enter_{s}"] - ENTER0 for s in SYSCALLS] == list(range(NSYS))
assert [EVENT_CODE[f"sys_exit_{s}"] - EXIT0 for s in SYSCALLS] == list(range(NSYS))
RELEVANT = max(EXIT_MMAP, FAULT_END, ENTER0 + NSYS - 1, EXIT0 + NSYS - 1)  # codes above this make no op and touch none

# -- op kinds and lock modes as the step stores them ------------------------------------
K_FAULT, K_EXIT = O.OP_KINDS.index("fault"), O.OP_KINDS.index("exit")
K_MADVISE = O.OP_KINDS.index("madvise")
K_SYS0 = O.OP_KINDS.index(SYSCALLS[0])
assert [O.OP_KINDS.index(s) - K_SYS0 for s in SYSCALLS] == list(range(NSYS))
LOCK_MODES = ("read", "write", "none")
M_READ, M_WRITE = 0, 1
VMA_NONE, VMA_MISS = -1, -2  # no VMA (kernel fault outside every VMA, writers); an inferred one, known at the end

# -- step status ------------------------------------------------------------------------
ST_DONE, ST_APPLY, ST_SEED, ST_FULL, ST_MISS = 0, 1, 2, 3, 4
C_UNPAIRED, C_UNMATCHED, C_MISSED, C_END_ALONE, NCOUNTERS = 0, 1, 2, 3, 4  # counters
PAGE_MASK = np.uint64(~(O.PAGE - 1) & (2**64 - 1))
PF_WRITE, PF_PROT, PF_INSTR = O.X86_PF_WRITE, O.X86_PF_PROT, O.X86_PF_INSTR
_fault_kind = njit(cache=True, nogil=True, inline="always")(O.fault_kind)  # the rule, as ops.py writes it

# One batch of events in time order, a column each (``th``: the thread's index; ``*_ok``:
# the value is not null; write/success: 1, 0, or -1 for null; ``major``: the event is a
# major (1) or minor (0) fault's accounting event by its name, else -1 - ingest/text.py
# fault_major()).
EV_FIELDS = [
    ("code", np.int8), ("th", np.int32), ("seq", np.int64), ("ts", np.int64), ("ts_ok", np.bool_),
    ("cpu", np.int16), ("cpu_ok", np.bool_), ("mm", np.uint64), ("mm_ok", np.bool_),
    ("write", np.int8), ("success", np.int8), ("major", np.int8),
    ("address", np.uint64), ("addr_ok", np.bool_), ("error_code", np.int64), ("ec_ok", np.bool_),
    ("len", np.int64), ("len_ok", np.bool_), ("new_len", np.int64), ("new_len_ok", np.bool_),
    ("new_addr", np.uint64), ("new_addr_ok", np.bool_), ("prot", np.int64), ("prot_ok", np.bool_),
    ("flags", np.int64), ("flags_ok", np.bool_), ("ret", np.int64), ("ret_ok", np.bool_),
]
Ev = namedtuple("Ev", [f for f, _ in EV_FIELDS])
EV_TYPES = dict(EV_FIELDS)

# Ops as they are being built: a [field, op] matrix per width - ``rows`` (int64) for the
# numbers, ``flags`` (int8) for the fields of one byte, most of them (a fault's 35 fields
# in 13 int64 and 22 int8 slots: 126 bytes where one int64 matrix took 280, so half the
# stores, copies and shifts).  Two arrays keep the compiled helpers' calls cheap; each
# field's values stay contiguous for writing.  ``fb``: the fault's raw fallback (a read
# start_locking on its own mm in its window; -1 until the window closes), ``first``: a
# user-mode write fault in a private VMA that has no anon_vma yet (ops.AnonVmas), which
# prepares it (vmf_anon_prepare()'s trylock); ``pend``: parts still to come (a
# fault's window; a writer's window and its exit).  ``address`` holds the uint64's bits.
# A fault's ``present``/``instr`` (its error code's bits: 1, 0, -1 unknown) and ``vclass``
# (its VMA's ops.VC_*) make its ``fkind`` when its window closes (ops.FAULT_KINDS index,
# -1 null); ``first_try``: entry to the window's first mmap_lock start_locking.
OP_FIELDS = [
    ("seq", np.int64), ("th", np.int32), ("kind", np.int8), ("start", np.int64), ("start_ok", np.bool_),
    ("end", np.int64), ("end_ok", np.bool_), ("address", np.uint64), ("addr_ok", np.bool_),
    ("length", np.int64), ("len_ok", np.bool_), ("ret", np.int64), ("ret_ok", np.bool_),
    ("write", np.int8), ("kernel", np.bool_), ("lock", np.int8), ("fb", np.int8), ("fbw", np.bool_),
    ("first", np.bool_), ("vma", np.int64), ("hold", np.int64), ("hold_ok", np.bool_),
    ("rhold", np.int64), ("rhold_ok", np.bool_),
    ("cpu", np.int16), ("cpu_ok", np.bool_), ("svc", np.int64), ("svc_ok", np.bool_), ("pend", np.int8),
    ("present", np.int8), ("instr", np.int8), ("vclass", np.int8), ("fkind", np.int8),
    ("first_try", np.int64), ("first_try_ok", np.bool_),
]
Ops = namedtuple("Ops", [f for f, _ in OP_FIELDS])  # the fields, typed, for Python
# each field's matrix and row: (False, i) rows[i]; (True, i) flags[i]
OP_SLOT = {}
for _f, _dt in OP_FIELDS:
    _narrow = np.dtype(_dt).itemsize == 1
    OP_SLOT[_f] = (_narrow, sum(1 for g in OP_SLOT.values() if g[0] == _narrow))
N_ROWS, N_FLAGS = (sum(1 for g in OP_SLOT.values() if g[0] == x) for x in (False, True))
(R_SEQ, R_TH, R_START, R_END, R_ADDRESS, R_LENGTH, R_RET, R_VMA, R_HOLD, R_RHOLD, R_CPU, R_SVC,
 R_TRY) = range(N_ROWS)
(F_KIND, F_START_OK, F_END_OK, F_ADDR_OK, F_LEN_OK, F_RET_OK, F_WRITE, F_KERNEL, F_LOCK, F_FB, F_FBW, F_FIRST,
 F_HOLD_OK, F_RHOLD_OK, F_CPU_OK, F_SVC_OK, F_PEND, F_PRESENT, F_INSTR, F_VCLASS, F_FKIND, F_TRY_OK) = range(N_FLAGS)
assert [OP_SLOT[f] for f in ("seq", "th", "start", "end", "address", "length", "ret", "vma", "hold", "rhold", "cpu",
                             "svc", "first_try")] == [(False, i) for i in range(N_ROWS)]
assert [OP_SLOT[f] for f in ("kind", "start_ok", "end_ok", "addr_ok", "len_ok", "ret_ok", "write", "kernel", "lock",
                             "fb", "fbw", "first", "hold_ok", "rhold_ok", "cpu_ok", "svc_ok", "pend", "present", "instr",
                             "vclass", "fkind", "first_try_ok")] == [(True, i) for i in range(N_FLAGS)]


def _ops_buffer(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, flags) matrices for n ops."""
    return np.zeros((N_ROWS, n), np.int64), np.zeros((N_FLAGS, n), np.int8)


class Segment:
    """Room for the typed copies of up to ``n`` ops (``Ops`` of arrays, their think times
    and op ids), reused from row group to row group: fresh memory costs more than the
    copy (each new page is zeroed by the kernel on first touch)."""

    def __init__(self, n: int):
        self.n = n
        self.cols = Ops(*(np.empty(n, dt) for _, dt in OP_FIELDS))
        self.think, self.think_ok = np.empty(n, np.int64), np.empty(n, np.bool_)
        self.ops = np.empty(n, np.int64)
        self.iota = np.arange(n, dtype=np.int64)


def _ops_slice(rows: np.ndarray, flags: np.ndarray, a: int, b: int, into: Segment | None = None) -> Ops:
    """Ops a:b of the buffer, typed, each column a copy of its own (the buffer is reused):
    into ``into``'s arrays (their first b - a values), or new ones."""
    out = []
    for i, (name, dt) in enumerate(OP_FIELDS):
        narrow, j = OP_SLOT[name]
        src = flags[j, a:b] if narrow else rows[j, a:b]
        if dt == np.uint64 or dt == np.bool_:
            src = src.view(dt)  # (the address's bits; the flags are 0 or 1)
        if into is None:
            out.append(src.astype(dt))
        else:
            dst = into.cols[i][: b - a]
            np.copyto(dst, src, casting="unsafe")
            out.append(dst)
    return Ops(*out)


# Per thread: its address space, its own mm (the mm it takes mmap_lock on most), and the
# window of its latest fault or syscall: the op it belongs to and what the window saw
# (``acq_last``: its latest mmap_lock acquire; ``ended``: a fault_end was paired with it;
# ``major``: the fault was accounted major (1), minor (0) or neither is known (-1);
# ``try_ts``: its first mmap_lock start_locking).
TH_DTYPE = np.dtype([
    ("space", np.int32), ("own_mm", np.uint64), ("own_ok", np.bool_),
    ("grp_op", np.int64), ("grp_fault", np.bool_), ("has_start", np.bool_), ("fb_read", np.bool_),
    ("fb_write", np.bool_), ("rel_any", np.int64), ("rel_any_ok", np.bool_), ("acq_any", np.int64),
    ("acq_any_ok", np.bool_), ("rel_w", np.int64), ("rel_w_ok", np.bool_), ("acq_w", np.int64), ("acq_w_ok", np.bool_),
    ("acq_last", np.int64), ("ended", np.bool_), ("major", np.int8), ("try_ts", np.int64), ("try_ok", np.bool_),
    ("dg", np.int64), ("dg_ok", np.bool_), ("rel_r", np.int64), ("rel_r_ok", np.bool_),  # a writer's downgrade
])

# Per thread and syscall: the open sys_enter (its op, -1 when none) and its arguments.
SC_DTYPE = np.dtype([
    ("op", np.int64), ("address", np.uint64), ("addr_ok", np.bool_), ("len", np.int64), ("len_ok", np.bool_),
    ("new_len", np.int64), ("new_len_ok", np.bool_), ("new_addr", np.uint64), ("new_addr_ok", np.bool_),
    ("prot", np.int64), ("prot_ok", np.bool_), ("flags", np.int64), ("flags_ok", np.bool_),
])


# -- the compiled step ------------------------------------------------------------------------

@njit(cache=True, nogil=True, inline="always")
def _ref(op, base, late_at, late_ids):
    """Op ``op``'s row: among the unwritten ones, or - written before it was complete -
    among the late ones, which follow them from row ``late_at`` on."""
    if op >= base:
        return op - base
    return late_at + np.searchsorted(late_ids, op)


@njit(cache=True, nogil=True, inline="always")
def _close_window(s, base, rows, flags, late_at, late_ids):
    """A thread's fault or syscall window ends (its next fault or syscall, or the trace's
    end): what it saw becomes the op's fallback, end and hold time."""
    if s.grp_op < 0:
        return
    k = _ref(s.grp_op, base, late_at, late_ids)
    if s.grp_fault:
        flags[F_FB, k] = 1 if (s.has_start and s.fb_read) else 0
        flags[F_FBW, k] = s.has_start and s.fb_write
        flags[F_FKIND, k] = _fault_kind(flags[F_PRESENT, k], flags[F_WRITE, k], flags[F_INSTR, k], flags[F_VCLASS, k], s.major)
        # a fallback's first try: from its entry to lock_mm_and_find_vma()'s trylock (the
        # table keeps it for observed fallbacks only: not a kernel-mode fault, not the trylock
        # of vmf_anon_prepare())
        if s.fb_read and s.try_ok and flags[F_START_OK, k]:
            rows[R_TRY, k], flags[F_TRY_OK, k] = s.try_ts - rows[R_START, k], True
        if s.has_start:
            # a fallback ends at its mmap_read_unlock; it held the lock acquired -> released
            rows[R_END, k], flags[F_END_OK, k] = s.rel_any, s.rel_any_ok
            if s.rel_any_ok and s.acq_any_ok:
                rows[R_HOLD, k], flags[F_HOLD_OK, k] = s.rel_any - s.acq_any, True
    elif s.dg_ok and s.acq_w_ok:
        # mmap_write_downgrade(): write-locked from its acquire to the downgrade, then
        # read-locked to its mmap_read_unlock()
        rows[R_HOLD, k], flags[F_HOLD_OK, k] = s.dg - s.acq_w, True
        if s.rel_r_ok:
            rows[R_RHOLD, k], flags[F_RHOLD_OK, k] = s.rel_r - s.dg, True
    elif s.rel_w_ok and s.acq_w_ok:  # a writer held mmap_lock for write from its acquire to its release
        rows[R_HOLD, k], flags[F_HOLD_OK, k] = s.rel_w - s.acq_w, True
    elif flags[F_KIND, k] == K_MADVISE and s.acq_any_ok and s.rel_any_ok and s.rel_any >= s.acq_any:
        # a read-mode madvise's mmap_read_lock() hold (before it, _apply gave it sys_enter -> sys_exit)
        rows[R_HOLD, k], flags[F_HOLD_OK, k] = s.rel_any - s.acq_any, True
    flags[F_PEND, k] -= 1
    s.grp_op = -1


@njit(cache=True, nogil=True, inline="always")
def _open_window(s, op, fault):
    s.grp_op, s.grp_fault = op, fault
    s.has_start = False
    s.fb_read = False
    s.fb_write = False
    s.rel_any_ok = False
    s.acq_any_ok = False
    s.rel_w_ok = False
    s.acq_w_ok = False
    s.dg_ok = False
    s.rel_r_ok = False
    s.ended = False
    s.major = -1
    s.try_ok = False


@njit(cache=True, nogil=True, inline="always")
def _new_op(rows, flags, k, ev, i, kind, pend):
    rows[R_SEQ, k], rows[R_TH, k], flags[F_KIND, k], flags[F_PEND, k] = ev.seq[i], ev.th[i], kind, pend
    rows[R_START, k], flags[F_START_OK, k], rows[R_CPU, k], flags[F_CPU_OK, k] = ev.ts[i], ev.ts_ok[i], ev.cpu[i], ev.cpu_ok[i]
    flags[F_END_OK, k] = False
    flags[F_ADDR_OK, k] = False
    flags[F_LEN_OK, k] = False
    flags[F_RET_OK, k] = False
    flags[F_HOLD_OK, k] = False
    flags[F_RHOLD_OK, k] = False
    flags[F_SVC_OK, k] = False
    flags[F_KERNEL, k] = False
    flags[F_FBW, k] = False
    flags[F_FIRST, k] = False
    flags[F_TRY_OK, k] = False
    flags[F_WRITE, k], flags[F_FB, k], flags[F_LOCK, k], rows[R_VMA, k] = -1, -1, M_WRITE, VMA_NONE
    flags[F_PRESENT, k], flags[F_INSTR, k], flags[F_VCLASS, k], flags[F_FKIND, k] = -1, -1, O.VC_NONE, O.FK_NULL


@njit(cache=True, nogil=True, inline="always")
def _find_at(addr, lo, n, lay_start, lay_end):
    """The index (from ``lo``) of the VMA holding ``addr`` among a space's n VMAs at
    lay_*[lo:lo+n], or -1."""
    if n == 0:
        return -1
    j = np.searchsorted(lay_start[lo:lo + n], addr, side="right") - 1
    if j >= 0 and addr < lay_end[lo + j]:
        return j
    return -1


@njit(cache=True, nogil=True, inline="always")
def _prepare_anon_vma(vid, j, lo, n, lay_start, lay_end, lay_id, vclass, anon_vma):
    """__anon_vma_prepare() (mm/rmap.c, v6.18) for VMA ``vid``, at index j of its space's
    layout: find_mergeable_anon_vma() (mm/vma.c) takes the anon_vma of an adjacent VMA - the
    next, then the previous - that reusable_anon_vma() accepts (anon_vma_compatible(): it
    touches this one, same vm_file, equal vm_flags but for VM_ACCESS_FLAGS, contiguous
    pgoffs; the neighbour's anon_vma_chain singular, which only fork breaks); otherwise
    a new one (named by ``vid``).  Only anonymous private neighbours of an anonymous private
    VMA are taken as compatible here; their flags and pgoffs are not compared (the tracker
    compares them again before any merge, so a wrong match here changes no layout unless
    the two differ only in VM_ACCOUNT or a madvise flag)."""
    if vclass[vid] == O.VC_ANON:
        if j + 1 < n and lay_start[lo + j + 1] == lay_end[lo + j]:
            nb = lay_id[lo + j + 1]
            if vclass[nb] == O.VC_ANON and anon_vma[nb] != 0:
                anon_vma[vid] = anon_vma[nb]
                return
        if j > 0 and lay_end[lo + j - 1] == lay_start[lo + j]:
            nb = lay_id[lo + j - 1]
            if vclass[nb] == O.VC_ANON and anon_vma[nb] != 0:
                anon_vma[vid] = anon_vma[nb]
                return
    anon_vma[vid] = vid


@njit(cache=True, nogil=True)
def _advance(ev, i, th, sc, rows, flags, n_rows, base, late_at, late_ids, lay_start, lay_end, lay_id, lay_off, lay_n,
             private, anon_vma, vclass, x86, miss_space, miss_page, n_miss, need_seed, counters):
    """Run events ``ev[i:]`` (time order) until one needs Python or the batch ends.

    Parameters
    ----------
    ev : Ev, one batch in time order.
    th, sc : TH_DTYPE per thread; SC_DTYPE per thread and syscall (``th * NSYS + n``).
    rows, flags : the op buffer's int64 and int8 fields (OP_SLOT): columns [:late_at] the
        ops not yet written (column k is op ``base + k``; n_rows used), then the late ones:
        written before they were complete, their op ids in ``late_ids`` (ascending).
    lay_* : every address space's VMAs, sorted by start: space s at lay_off[s], lay_n[s] of them.
    private, anon_vma, vclass : per VMA id: a private mapping; its anon_vma (ops.AnonVmas: 0
        none, set at its first write fault); its ops.VC_* class.
    x86 : the error codes carry x86's X86_PF_PROT and X86_PF_INSTR bits.
    miss_space, miss_page : user faults outside every known VMA (n_miss so far).
    need_seed : [1] while the maps snapshot waits for the first op's address space.

    Returns (status, next event, n_rows, n_miss, op): ST_APPLY after a writer's sys_exit
    or exit_mmap (op: its id), ST_SEED before the first op, ST_FULL when the buffer is
    full, ST_MISS when the miss buffer is, ST_DONE at the batch's end.
    """
    n = len(ev.code)
    cap = late_at
    while i < n:
        c = ev.code[i]
        t = ev.th[i]
        s = th[t]
        opens = c == PF_USER or c == PF_KERNEL or (ENTER0 <= c < ENTER0 + NSYS)
        if opens or c == EXIT_MMAP:
            if need_seed[0]:
                return ST_SEED, i, n_rows, n_miss, -1
            if n_rows == cap:
                return ST_FULL, i, n_rows, n_miss, -1
        if c == PF_USER or c == PF_KERNEL:
            _close_window(s, base, rows, flags, late_at, late_ids)
            k = n_rows
            _new_op(rows, flags, k, ev, i, K_FAULT, 1)
            addr = ev.address[i]
            rows[R_ADDRESS, k], flags[F_ADDR_OK, k] = np.int64(addr), ev.addr_ok[i]
            kernel = c == PF_KERNEL
            flags[F_KERNEL, k] = kernel
            flags[F_LOCK, k] = M_READ
            write = -1  # the event's own write flag (ingest decodes it per architecture), else x86's bit 1
            if ev.write[i] >= 0:
                write = ev.write[i]
            elif ev.ec_ok[i]:
                write = 1 if (ev.error_code[i] & PF_WRITE) != 0 else 0
            flags[F_WRITE, k] = write
            if x86 and ev.ec_ok[i]:
                flags[F_PRESENT, k] = 1 if (ev.error_code[i] & PF_PROT) != 0 else 0
                flags[F_INSTR, k] = 1 if (ev.error_code[i] & PF_INSTR) != 0 else 0
            vid = -1
            j = -1
            if s.space >= 0 and ev.addr_ok[i]:
                lo = lay_off[s.space]
                j = _find_at(addr, lo, lay_n[s.space], lay_start, lay_end)
                if j >= 0:
                    vid = lay_id[lo + j]
            missed = False
            if vid >= 0:
                rows[R_VMA, k] = vid
                flags[F_VCLASS, k] = vclass[vid]
                # vmf_anon_prepare(): a write fault in a private VMA without an anon_vma
                # prepares one; a user-mode one under the VMA lock may trylock mmap_lock for
                # it (a kernel-mode one holds mmap_lock already: no fallback to mistake)
                if write == 1 and private[vid] and anon_vma[vid] == 0:
                    _prepare_anon_vma(vid, j, lay_off[s.space], lay_n[s.space], lay_start, lay_end, lay_id, vclass,
                                      anon_vma)
                    flags[F_FIRST, k] = not kernel
            elif not kernel and ev.addr_ok[i] and s.space >= 0:
                rows[R_VMA, k] = VMA_MISS
                flags[F_VCLASS, k] = O.VC_ANON  # inferred VMAs are anonymous private
                miss_space[n_miss] = s.space
                miss_page[n_miss] = np.int64(addr & PAGE_MASK)
                counters[C_MISSED] += 1
                n_miss += 1
                missed = True
            _open_window(s, base + k, True)
            s.major = ev.major[i]  # perf trace's majfault / minfault lines are the accounting event
            n_rows += 1
            if missed and n_miss == len(miss_page):
                return ST_MISS, i + 1, n_rows, n_miss, -1
        elif c == LOCK_START:
            # (once its fault_end is seen, the fault takes no more locks: a later start is not its fallback)
            if s.grp_op >= 0 and not s.ended and s.own_ok and ev.mm_ok[i] and ev.mm[i] == s.own_mm:
                s.has_start = True
                if not s.try_ok and ev.ts_ok[i]:
                    s.try_ts, s.try_ok = ev.ts[i], True
                if ev.write[i] == 0:
                    s.fb_read = True
                elif ev.write[i] == 1:
                    s.fb_write = True
        elif c == LOCK_ACQ:
            if s.grp_op >= 0 and not s.ended and s.own_ok and ev.mm_ok[i] and ev.mm[i] == s.own_mm and ev.success[i] == 1 \
                    and ev.ts_ok[i]:
                ts = ev.ts[i]
                s.acq_last = max(s.acq_last, ts) if s.acq_any_ok else ts
                if not s.acq_any_ok or ts < s.acq_any:
                    s.acq_any, s.acq_any_ok = ts, True
                if ev.write[i] == 1 and (not s.acq_w_ok or ts < s.acq_w):
                    s.acq_w, s.acq_w_ok = ts, True
                elif (ev.write[i] == 0 and not s.grp_fault and s.acq_w_ok and not s.rel_w_ok and not s.dg_ok
                      and ts >= s.acq_w):
                    # a read acquire_returned while the writer holds it for write, with no
                    # start_locking: mmap_write_downgrade() traces just that
                    # (__mmap_lock_trace_acquire_returned(mm, false, true), include/linux/mmap_lock.h)
                    s.dg, s.dg_ok = ts, True
        elif c == LOCK_REL:
            if s.grp_op >= 0 and s.own_ok and ev.mm_ok[i] and ev.mm[i] == s.own_mm and ev.ts_ok[i]:
                ts = ev.ts[i]
                if not s.rel_any_ok or ts > s.rel_any:
                    s.rel_any, s.rel_any_ok = ts, True
                if ev.write[i] == 1 and (not s.rel_w_ok or ts > s.rel_w):
                    s.rel_w, s.rel_w_ok = ts, True
                elif ev.write[i] == 0 and s.dg_ok and ts >= s.dg and (not s.rel_r_ok or ts > s.rel_r):
                    s.rel_r, s.rel_r_ok = ts, True
        elif ENTER0 <= c < ENTER0 + NSYS:
            x = c - ENTER0
            _close_window(s, base, rows, flags, late_at, late_ids)
            q = sc[t * NSYS + x]
            if q.op >= 0:  # an enter with no exit before the next enter of that call: never finished
                counters[C_UNPAIRED] += 1
                flags[F_PEND, _ref(q.op, base, late_at, late_ids)] -= 1
            k = n_rows
            _new_op(rows, flags, k, ev, i, K_SYS0 + x, 2)
            rows[R_ADDRESS, k], flags[F_ADDR_OK, k], rows[R_LENGTH, k], flags[F_LEN_OK, k] = \
                np.int64(ev.address[i]), ev.addr_ok[i], ev.len[i], ev.len_ok[i]
            q.op = base + k
            q.address, q.addr_ok, q.len, q.len_ok = ev.address[i], ev.addr_ok[i], ev.len[i], ev.len_ok[i]
            q.new_len, q.new_len_ok, q.new_addr, q.new_addr_ok = \
                ev.new_len[i], ev.new_len_ok[i], ev.new_addr[i], ev.new_addr_ok[i]
            q.prot, q.prot_ok, q.flags, q.flags_ok = ev.prot[i], ev.prot_ok[i], ev.flags[i], ev.flags_ok[i]
            _open_window(s, base + k, False)
            n_rows += 1
        elif c == FAULT_END:
            # the end of the call that completed the thread's open fault (mm_account_fault());
            # its service: since the fault's latest mmap_lock acquire (the completing call ran
            # under it) or, having none, since the fault's entry (ops.py, service time)
            k = -1
            if s.grp_op >= 0 and s.grp_fault and not s.ended and ev.ts_ok[i]:
                k = _ref(s.grp_op, base, late_at, late_ids)
                if ev.addr_ok[i] and flags[F_ADDR_OK, k] and np.uint64(rows[R_ADDRESS, k]) != ev.address[i]:
                    k = -1
            if k < 0:
                counters[C_END_ALONE] += 1
            else:
                s.ended = True
                s.major = ev.major[i]
                if s.acq_any_ok and not flags[F_FIRST, k]:  # (not vmf_anon_prepare()'s trylock)
                    rows[R_SVC, k], flags[F_SVC_OK, k] = ev.ts[i] - s.acq_last, True
                elif flags[F_START_OK, k]:
                    rows[R_SVC, k], flags[F_SVC_OK, k] = ev.ts[i] - rows[R_START, k], True
        elif EXIT0 <= c < EXIT0 + NSYS:
            q = sc[t * NSYS + (c - EXIT0)]
            if q.op < 0:
                counters[C_UNMATCHED] += 1
            else:
                op = q.op
                q.op = -1  # the arguments stay for the caller to apply
                j = _ref(op, base, late_at, late_ids)
                rows[R_END, j], flags[F_END_OK, j], rows[R_RET, j], flags[F_RET_OK, j] = ev.ts[i], ev.ts_ok[i], ev.ret[i], ev.ret_ok[i]
                return ST_APPLY, i + 1, n_rows, n_miss, op
        elif c == EXIT_MMAP:
            k = n_rows
            _new_op(rows, flags, k, ev, i, K_EXIT, 1)
            rows[R_END, k], flags[F_END_OK, k], rows[R_RET, k], flags[F_RET_OK, k] = ev.ts[i], ev.ts_ok[i], 0, True
            n_rows += 1
            return ST_APPLY, i + 1, n_rows, n_miss, base + k
        i += 1
    return ST_DONE, i, n_rows, n_miss, -1


@njit(cache=True, nogil=True)
def _done_prefix(pend, start, n):
    """How many ops from the front are complete (scanning on from ``start``)."""
    k = start
    while k < n and pend[k] == 0:
        k += 1
    return k


@njit(cache=True, nogil=True)
def _shift(R, k, n):
    """``R[:, :n - k] = R[:, k:n]`` in place: forward, so without the temporary copy numpy
    makes of overlapping operands (half of the cost, at a row group of ~1 M ops)."""
    for f in range(R.shape[0]):
        for j in range(n - k):
            R[f, j] = R[f, k + j]


@njit(cache=True, nogil=True)
def _finish(th, sc, rows, flags, base, late_at, late_ids, counters):
    """The trace's end: every window closes; every enter still open never finished."""
    for t in range(len(th)):
        _close_window(th[t], base, rows, flags, late_at, late_ids)
    for j in range(len(sc)):
        if sc[j].op >= 0:
            counters[C_UNPAIRED] += 1
            flags[F_PEND, _ref(sc[j].op, base, late_at, late_ids)] -= 1
            sc[j].op = -1


@njit(cache=True, nogil=True)
def _runnable_in(t, a, b, rq_off, rq_s, rq_e):
    """How long thread ``t`` was off its CPU though runnable between ``a`` and ``b``: the
    overlap of [a, b) with its run-queue intervals (``runq_intervals``: sorted, disjoint)
    that begin in it.  The thread ran at ``a`` (an op of it ended then), so an interval
    begun before had ended by then, whatever end the trace showed it (an open one's end
    is the thread's next op)."""
    lo, hi = rq_off[t], rq_off[t + 1]
    while lo < hi:  # the first interval that begins at a or later
        mid = (lo + hi) // 2
        if rq_s[mid] < a:
            lo = mid + 1
        else:
            hi = mid
    total = 0
    i = lo
    while i < rq_off[t + 1] and rq_s[i] < b:
        total += min(rq_e[i], b) - rq_s[i]
        i += 1
    return total


@njit(cache=True, nogil=True)
def _think(th, start, start_ok, end, end_ok, prev, prev_ok, out, out_ok, rq_off, rq_s, rq_e):
    """think_ns in op order: the gap since the thread's previous op ended (its start when
    it has no end), less the time the thread spent in it runnable but off its CPU (its
    run-queue intervals: the replay's scheduler makes that wait itself), at least 0; none
    for a thread's first op.  ``prev``/``prev_ok`` carry each thread's last end across
    calls (prev_ok: -1 no op yet, 0 an op without a time)."""
    for k in range(len(th)):
        t = th[k]
        out_ok[k] = start_ok[k] and prev_ok[t] == 1
        if out_ok[k]:
            gap = start[k] - prev[t]
            if gap > 0:
                gap -= _runnable_in(t, prev[t], start[k], rq_off, rq_s, rq_e)
            out[k] = max(gap, 0)
        if end_ok[k]:
            prev[t], prev_ok[t] = end[k], 1
        elif start_ok[k]:
            prev[t], prev_ok[t] = start[k], 1
        else:
            prev_ok[t] = 0


def runq_intervals(tids: np.ndarray, out_tid, out_ts, out_runnable, in_tid, in_ts):
    """Per thread (``tids``: the threads' tids ascending, their index the op builder's
    thread index), the intervals it was off its CPU though runnable, from the trace's
    sched_switch events (include/trace/events/sched.h; the line's task is the one
    switched out): each starts where the thread was switched out with prev_state R or R+
    (__trace_sched_switch_state(): still TASK_RUNNING, or preempted) and ends where it
    is next seen to have run again - switched in (next_pid) or switched out once more -
    else it stays open (its gaps end it: the thread's next op shows it running).  A
    perf recording of a task sees only the switches of its own threads out, so a switch
    in from a task outside it is bounded that way.  Returns (offsets per thread, starts,
    ends) for ``_think``."""
    T = len(tids)
    off = np.zeros(T + 2, np.int64)
    if not len(out_ts):
        return off, np.zeros(0, np.int64), np.zeros(0, np.int64)

    def index(tid):
        th = np.searchsorted(tids, tid).clip(0, max(T - 1, 0))
        ok = (tids[th] == tid) if T else np.zeros(len(tid), np.bool_)
        return th, ok

    th_o, ok_o = index(out_tid)
    th_i, ok_i = index(in_tid)
    ran_th = np.concatenate([th_o[ok_o], th_i[ok_i]])
    ran_ts = np.concatenate([out_ts[ok_o], in_ts[ok_i]])
    o = np.lexsort((ran_ts, ran_th))
    ran_th, ran_ts = ran_th[o], ran_ts[o]
    sel = ok_o & out_runnable
    s_th, s_ts = th_o[sel], out_ts[sel]
    o = np.lexsort((s_ts, s_th))
    s_th, s_ts = s_th[o], s_ts[o]
    s_e = np.full(len(s_ts), np.iinfo(np.int64).max, np.int64)
    r_off = np.searchsorted(ran_th, np.arange(T + 1))
    s_off = np.searchsorted(s_th, np.arange(T + 1))
    for t in np.flatnonzero(np.diff(s_off)):
        r = ran_ts[r_off[t]:r_off[t + 1]]
        j = np.searchsorted(r, s_ts[s_off[t]:s_off[t + 1]], side="right")
        e = s_e[s_off[t]:s_off[t + 1]]
        has = j < len(r)
        e[has] = r[j[has]]
    off[:T + 1] = s_off
    off[T + 1] = s_off[T]  # the thread index of events without a tid (never a sched_switch's)
    return off, s_ts.astype(np.int64), s_e


# -- reading events --------------------------------------------------------------------------

def _codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The event column as EVENT_CODE codes."""
    if isinstance(col, pa.ChunkedArray):
        return np.concatenate([_codes(c) for c in col.chunks]) if col.num_chunks else np.zeros(0, np.int8)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    other = EVENT_CODE["other"]
    lut = np.array([EVENT_CODE.get(x, other) for x in col.dictionary.to_pylist()] + [other], dtype=np.int8)
    idx = pc.fill_null(col.indices, len(lut) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    return lut[idx]


def _np(col, fill=0, dtype=None):
    n = len(col)
    if n and col.null_count == n:  # no value at all (a syscall argument in a batch of faults): no fill_null copy
        dt = dtype if dtype is not None else col.type.to_pandas_dtype()
        return np.zeros(n, dt) if fill == 0 else np.full(n, fill, dt)
    a = (pc.fill_null(col, fill) if col.null_count else col).to_numpy(zero_copy_only=False)
    return a if dtype is None else a.astype(dtype, copy=False)


def _ok(col) -> np.ndarray:
    n = len(col)
    if not col.null_count:
        return np.ones(n, np.bool_)
    return np.zeros(n, np.bool_) if col.null_count == n else pc.is_valid(col).to_numpy(zero_copy_only=False)


def _np_ok(col, fill, dtype, ones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(_np(col, fill, dtype), _ok(col))`` (``ones``: n True values the caller keeps),
    from an integer column's own buffers where it has some nulls (one copy instead of
    fill_null's and is_valid's)."""
    n = len(col)
    if not col.null_count:
        return _np(col, fill, dtype), ones
    a = col.chunks[0] if isinstance(col, pa.ChunkedArray) and col.num_chunks == 1 else col
    if col.null_count == n or not isinstance(a, pa.Array) or not pa.types.is_integer(a.type):
        return _np(col, fill, dtype), _ok(col)
    validity, data = a.buffers()[:2]
    off = a.offset
    ok = np.unpackbits(np.frombuffer(validity, np.uint8), count=off + n, bitorder="little")[off:].view(np.bool_)
    v = np.frombuffer(data, a.type.to_pandas_dtype(), count=off + n)[off:].astype(dtype)
    np.copyto(v, fill, where=~ok)  # (a null's slot holds whatever the writer left there)
    return v, ok


def _tri(col) -> np.ndarray:
    """A boolean column as int8: 1, 0, or -1 for null."""
    if len(col) and col.null_count == len(col):
        return np.full(len(col), -1, np.int8)
    v = _np(col, False).astype(np.int8)
    if col.null_count:
        v[~_ok(col)] = -1
    return v


SURVEY_COLUMNS = ["seq", "ts_ns", "cpu", "tid", "pid", "event", "mm", "address"]
SWITCH_COLUMNS = ["next_tid", "prev_state"]  # sched_switch's (events written before they were added have none)
SCHED_SWITCH = EVENT_CODE["sched_switch"]
STEP_COLUMNS = ["seq", "ts_ns", "cpu", "tid", "event", "mm", "write", "success", "address", "error_code", "len",
                "new_len", "new_addr", "prot", "flags", "ret", "tracepoint"]


def _majors(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The tracepoint column as ingest/text.py fault_major() says: 1, 0, or -1 (int8),
    looked up once per distinct name."""
    if isinstance(col, pa.ChunkedArray):
        return np.concatenate([_majors(c) for c in col.chunks]) if col.num_chunks else np.zeros(0, np.int8)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    lut = np.array([fault_major(x) for x in col.dictionary.to_pylist()] + [-1], dtype=np.int8)
    idx = pc.fill_null(col.indices, len(lut) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    return lut[idx]


def _arch(name: str | None) -> str:
    """The architecture an events file was decoded for (its ``replay.arch``, as the
    traces row has it: ``x86_64 (assumed)`` included); x86-64 when it does not say."""
    return canonical_arch((name or "").split(" ", 1)[0]) or DEFAULT_ARCH


class Events:
    """A trace's events as batches in input (line) order, twice over: from a Parquet file
    (read a batch at a time) or from a table in memory.  A file whose ``seq`` does not
    ascend (ingest writes it in order; something else may not) is read whole and sorted."""

    def __init__(self, source: str | os.PathLike | pa.Table):
        self.table = source if isinstance(source, pa.Table) else None
        # the file is opened once: both passes read the same file even if a new ingest
        # renames another over it meanwhile (the commit then fails on the trace's hash)
        self.file = None if self.table is not None else pq.ParquetFile(str(source))
        self.rows = self.table.num_rows if self.table is not None else self.file.metadata.num_rows
        meta = (self.table.schema if self.table is not None else self.file.schema_arrow).metadata or {}
        self.arch = _arch(meta.get(b"replay.arch", b"").decode())  # ingest/pipeline.py writes it
        self.columns = set((self.table.schema if self.table is not None else self.file.schema_arrow).names)

    def sort_by_seq(self) -> None:
        t = self.table if self.table is not None else self.file.read()
        self.table, self.file = t.take(pc.sort_indices(t, [("seq", "ascending")])), None

    def batches(self, columns):
        if self.table is not None:
            yield from self.table.select(columns).to_batches(max_chunksize=BATCH)
        else:
            # decoded on the caller's thread: for these batches of narrow columns pyarrow's
            # thread pool cost more CPU than it saved wall time (bench/opstages.py, README)
            yield from self.file.iter_batches(batch_size=BATCH, columns=columns, use_threads=False)


# -- pass 1: the survey -----------------------------------------------------------------------

NO_TID = np.int64(-1 << 40)  # the thread key of events that name no thread (outside int32)


@njit(cache=True, nogil=True)
def _tally(k1, k2, sel, n, first, start, tab_k1, tab_k2, tab_n, tab_first, tab_used, n_used):
    """From row ``start``, for each row with ``sel``: add ``n`` to its key's (k1, k2)
    count and keep the least of ``first`` for it, in an open-addressing table carried
    across batches.  Returns (rows done, keys in the table); stops early when the table
    is half full (the caller grows it)."""
    mask = np.uint64(len(tab_k1) - 1)
    for i in range(start, len(k1)):
        if not sel[i]:
            continue
        a, b = k1[i], k2[i]
        h = ((np.uint64(a) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(b) * np.uint64(0xC2B2AE3D27D4EB4F))) \
            >> np.uint64(17) & mask
        while tab_used[h] and (tab_k1[h] != a or tab_k2[h] != b):
            h = (h + np.uint64(1)) & mask
        if not tab_used[h]:
            if 2 * (n_used + 1) > len(tab_k1):
                return i, n_used
            tab_used[h] = True
            tab_k1[h], tab_k2[h], tab_n[h], tab_first[h] = a, b, 0, first[i]
            n_used += 1
        tab_n[h] += n[i]
        tab_first[h] = min(tab_first[h], first[i])
    return len(k1), n_used


class _Tally:
    """(thread, value) -> how many events, the first row: what a ``group_by`` of the
    events on those keys would count, one batch at a time in a compiled pass."""

    def __init__(self, capacity: int = 1 << 8):
        self._alloc(capacity)
        self.ones = np.ones(0, np.int64)

    def _alloc(self, capacity: int) -> None:
        self.k1, self.k2 = np.zeros(capacity, np.int64), np.zeros(capacity, np.int64)
        self.n, self.first = np.zeros(capacity, np.int64), np.zeros(capacity, np.int64)
        self.used = np.zeros(capacity, np.bool_)
        self.size = 0

    def _put(self, k1, k2, sel, n, first) -> None:
        pos = 0
        while True:
            pos, self.size = _tally(k1, k2, sel, n, first, pos, self.k1, self.k2, self.n, self.first, self.used,
                                    self.size)
            if pos == len(k1):
                return
            u = self.used
            old = self.k1[u], self.k2[u], self.n[u], self.first[u]
            self._alloc(len(self.k1) * 4)
            self._put(*old[:2], np.ones(len(old[0]), np.bool_), *old[2:])

    def add(self, k1: np.ndarray, k2: np.ndarray, sel: np.ndarray, row0: int) -> None:
        """Rows ``row0 + i`` of the trace: each one with ``sel`` counts once for its key."""
        n = len(k1)
        if len(self.ones) < n:
            self.ones = np.ones(n, np.int64)
            self.iota, self.rows = np.arange(n, dtype=np.int64), np.zeros(n, np.int64)
        self._put(k1, k2, sel, self.ones[:n], np.add(self.iota[:n], row0, out=self.rows[:n]))

    def frame(self, value: str | None, typ: pa.DataType | None, count: bool):
        """The keys as a polars frame: tid (Int32, null for NO_TID), [value], [n], first."""
        import polars as pl

        u = self.used
        k1 = self.k1[u]
        cols = {"tid": pa.array(k1.astype(np.int32), pa.int32(), mask=k1 == NO_TID)}
        if value is not None:
            v = self.k2[u]
            cols[value] = pa.array(v.view(np.uint64) if typ == pa.uint64() else v.astype(typ.to_pandas_dtype()), typ)
        if count:
            cols["n"] = pa.array(self.n[u], pa.int64())
        cols["first"] = pa.array(self.first[u], pa.int64())
        return pl.from_arrow(pa.table(cols))


class Survey:
    """What the op builder must know before its first op (see the module docstring)."""

    def __init__(self, events: Events):
        from .ingest.order import TimeOrder

        self.order = TimeOrder()
        self.outside = 0
        self.min_ts: list[int | None] = []  # per batch, the earliest timestamp of an event that matters
        self.batch_rows: list[int] = []
        self.in_time_order = True
        self.seq_ascending = True
        last_ts, last_seq, row0 = None, None, 0
        tids, pids, mms = _Tally(), _Tally(), _Tally()
        self._sw: list[tuple] = []  # per batch with sched_switch events: (tid, ts, runnable, next_tid, ts)
        switch_cols = [c for c in SWITCH_COLUMNS if c in events.columns]
        for b in events.batches(SURVEY_COLUMNS + (switch_cols if len(switch_cols) == len(SWITCH_COLUMNS) else [])):
            n = b.num_rows
            seq = _np(b.column("seq"), 0, np.int64)
            # non-decreasing: a perf trace syscall's enter and exit share one seq (its line)
            if n and ((last_seq is not None and seq[0] < last_seq) or (n > 1 and not (seq[1:] >= seq[:-1]).all())):
                self.seq_ascending = False
                return
            last_seq = int(seq[-1]) if n else last_seq
            ts_col, tid_col, pid_col, mm_col = (b.column(c) for c in ("ts_ns", "tid", "pid", "mm"))
            ones = np.ones(n, np.bool_)
            ts, ts_ok = _np_ok(ts_col, 0, np.int64, ones)
            tid, tid_ok = _np_ok(tid_col, -1, np.int64, ones)
            # as TimeOrder.feed_table: rows without a timestamp are skipped
            sel = (lambda x: x) if ts_ok.all() else (lambda x: x[ts_ok])
            if n:
                self.order.feed(sel(seq), sel(ts), sel(_np(b.column("cpu"), -1, np.int64)), sel(tid))
            code = _codes(b.column("event"))
            addr, addr_ok = _np_ok(b.column("address"), 0, np.uint64, ones)
            fault = (code == PF_USER) | (code == PF_KERNEL)
            out = fault & addr_ok & (addr >= np.uint64(O.TASK_SIZE_MAX))
            self.outside += int(out.sum())
            keep = ~out
            thread = np.where(tid_ok, tid, NO_TID)
            # a sched_switch names a thread only as the one switched out: in an ftrace
            # recording, it may be a task outside the traced ones (set_event_pid lets a
            # switch in to a traced task through) - no thread of the trace for that
            keep_thread = keep & (code != SCHED_SWITCH)
            tids.add(thread, np.zeros(n, np.int64), keep_thread, row0)
            pid, pid_ok = _np_ok(pid_col, 0, np.int64, ones)
            pids.add(thread, pid, keep_thread & pid_ok & (pid > 0), row0)
            lock = (code >= LOCK_START) & (code <= LOCK_REL)
            mm, mm_ok = _np_ok(mm_col, 0, np.uint64, ones)
            mms.add(thread, mm.view(np.int64), keep & lock & mm_ok, row0)
            row0 += n
            sw = (code == SCHED_SWITCH) & ts_ok
            if b.num_columns > len(SURVEY_COLUMNS) and sw.any():
                k = np.flatnonzero(sw)
                state = b.column("prev_state").take(pa.array(k))
                if pa.types.is_dictionary(state.type):
                    state = state.cast(pa.string())
                runnable = pc.fill_null(pc.starts_with(state, "R"), False).to_numpy(zero_copy_only=False)
                nxt, nxt_ok = _np_ok(b.column("next_tid").take(pa.array(k)), 0, np.int64, np.ones(len(k), np.bool_))
                self._sw.append((tid[k][tid_ok[k]], ts[k][tid_ok[k]], runnable[tid_ok[k]], nxt[nxt_ok], ts[k][nxt_ok]))
            # the events pass 2 steps through, for the time-order merge
            rel = keep & (code <= RELEVANT)
            if not ts_ok[rel].all():
                self.in_time_order = False
            tsn = ts[rel]
            if len(tsn):
                if (last_ts is not None and tsn[0] < last_ts) or (len(tsn) > 1 and (tsn[1:] < tsn[:-1]).any()):
                    self.in_time_order = False
                last_ts = int(tsn[-1])
            valid = tsn[ts_ok[rel]]
            self.min_ts.append(int(valid.min()) if len(valid) else None)
            self.batch_rows.append(n)
        self.tids = tids.frame(None, None, False)
        self.pids = pids.frame("pid", pa.int32(), True)
        self.mms = mms.frame("mm", pa.uint64(), True)


    def switches(self) -> tuple:
        """The sched_switch events: (switched-out tid, time, runnable, switched-in tid, time)."""
        cat = [np.concatenate([x[i] for x in self._sw]) if self._sw else np.zeros(0, np.bool_ if i == 2 else np.int64)
               for i in range(5)]
        return tuple(cat)


def _mode(counts, key: str, value: str):
    """Per ``key``, the ``value`` seen most often; a tie goes to the one seen first."""
    import polars as pl

    return (counts.sort([key, "n", "first"], descending=[False, True, False], nulls_last=True)
            .group_by(key, maintain_order=True).agg(pl.col(value).first()))


def attribute(sv: Survey, same_mm: bool, rep: O.BuildReport):
    """Threads -> (tid, address-space key ``pid:N`` / ``mm:HEX`` / ``tid:N`` / ``all``,
    pid, own mm) as a polars frame, tids ascending with a null tid last; the rule used
    goes into ``rep``.  A thread's pid is the tgid it prints most; else the pid most
    threads on its own mm print; its own mm is the mm= it takes mmap_lock on most."""
    import polars as pl

    t = sv.tids.select("tid", "first")
    rep.threads = t.filter(pl.col("tid").is_not_null()).height  # function_graph lines name no thread
    lock_mm = _mode(sv.mms, "tid", "mm").rename({"mm": "own_mm"}) if sv.mms.height else \
        pl.DataFrame(schema={"tid": t["tid"].dtype, "own_mm": pl.UInt64})
    t = t.join(lock_mm, on="tid", how="left")
    if same_mm:
        rep.rule = "all threads share one mm (--same-mm)"
        t = t.with_columns(pl.when(pl.col("tid").is_not_null()).then(pl.lit("all")).alias("mm"),
                           pl.lit(None, pl.Int32).alias("pid"))
    else:
        by_pid = _mode(sv.pids, "tid", "pid") if sv.pids.height else pl.DataFrame(schema={"tid": t["tid"].dtype,
                                                                                         "pid": pl.Int32})
        t = t.join(by_pid, on="tid", how="left")
        # threads with a pid lend it to the other threads on their mm
        lend = t.filter(pl.col("pid").is_not_null() & pl.col("own_mm").is_not_null()).group_by("own_mm", "pid").agg(
            pl.len().alias("n"), pl.col("first").min())
        mm_pid = _mode(lend, "own_mm", "pid").rename({"pid": "mm_pid"}) if lend.height else \
            pl.DataFrame(schema={"own_mm": pl.UInt64, "mm_pid": pl.Int32})
        t = t.join(mm_pid, on="own_mm", how="left").with_columns(pl.coalesce("pid", "mm_pid").cast(pl.Int32).alias("pid"))
        t = t.with_columns(
            pl.when(pl.col("tid").is_null()).then(None)
            .when(pl.col("pid").is_not_null()).then(pl.format("pid:{}", pl.col("pid")))
            .when(pl.col("own_mm").is_not_null()).then(
                pl.format("mm:{}", pl.col("own_mm").map_elements(lambda x: f"{x:x}", return_dtype=pl.Utf8)))
            .otherwise(pl.format("tid:{}", pl.col("tid"))).alias("mm"))
        t = t.with_columns(pl.when(pl.col("tid").is_null()).then(None).otherwise(pl.col("pid")).alias("pid"))
        n_pid = t.filter(pl.col("mm").str.starts_with("pid:")).height
        n_mm = t.filter(pl.col("mm").str.starts_with("mm:")).height
        rep.unattributed = t.filter(pl.col("mm").str.starts_with("tid:")).height
        rules = []
        if n_pid:
            rules.append(f"{n_pid} by pid/tgid")
        if n_mm:
            rules.append(f"{n_mm} by the mm= of their mmap_lock events")
        if rep.unattributed:
            rules.append(f"{rep.unattributed} unattributed (each its own mm)")
            rep.notes.append("this trace has no pid for some threads: record with `perf script -F comm,pid,tid,...` "
                             "(replay record does), or pass --same-mm if all threads share one address space")
        rep.rule = "; ".join(rules)
    return t.select("tid", "mm", pl.col("pid").cast(pl.Int32), "own_mm").sort("tid", nulls_last=True)


# -- pass 2 ---------------------------------------------------------------------------------

def _in_time_order(events: Events, sv: Survey, keep_fn):
    """The events that matter, batch by batch in time order (stable: ties keep input
    order; no timestamp last).  ``keep_fn(batch) -> mask``.  Unsorted input goes
    through a buffer: after reading up to row r, an event may go once its timestamp is
    at most the earliest of every survey batch that ends past r."""
    ends = np.cumsum(sv.batch_rows) if sv.batch_rows else np.zeros(0, np.int64)
    suffix: list = [None] * (len(sv.min_ts) + 1)
    for k in range(len(sv.min_ts) - 1, -1, -1):
        cur, nxt = sv.min_ts[k], suffix[k + 1]
        suffix[k] = cur if nxt is None else (nxt if cur is None else min(cur, nxt))
    pending, read = None, 0
    for b in events.batches(STEP_COLUMNS):
        read += b.num_rows
        keep = keep_fn(b)
        t = pa.Table.from_batches([b])
        if not keep.all():  # most traces keep every event: no copy then
            t = t.filter(pa.array(keep))
        if sv.in_time_order:
            yield t
            continue
        pending = t if pending is None else pa.concat_tables([pending, t])
        pending = pending.take(pc.sort_indices(pending, sort_keys=[("ts_ns", "ascending", "at_end")]))
        bound = suffix[int(np.searchsorted(ends, read, side="right"))]
        ts = pending.column("ts_ns")
        n_valid = pending.num_rows - ts.null_count
        if bound is None:
            cut = n_valid
        else:
            cut = int(np.searchsorted(_np(ts.slice(0, n_valid), 0, np.int64), bound, side="right"))
        yield pending.slice(0, cut)
        pending = pending.slice(cut)
    if pending is not None and pending.num_rows:
        yield pending


class _StepAnonVmas(O.AnonVmas):
    """ops.AnonVmas over the builder's ``anon_vma`` array, which the compiled step sets
    (the array is replaced as it grows: read through the builder)."""

    def __init__(self, b: "Builder"):
        self.b = b

    def get(self, vid: int) -> int:
        a = self.b.anon_vma
        return int(a[vid]) if vid < len(a) else 0

    def set(self, vid: int, av: int) -> None:
        self.b._ids_fit()
        self.b.anon_vma[vid] = av


class _Layout:
    """Every address space's VMAs as flat sorted arrays the compiled step searches; a
    space's slot is rewritten in place after each writer, moved to the end when it outgrows it."""

    def __init__(self, nspaces: int):
        self.start = np.zeros(64, np.uint64)
        self.end = np.zeros(64, np.uint64)
        self.id = np.zeros(64, np.int64)
        self.off = np.zeros(max(nspaces, 1), np.int64)
        self.cap = np.zeros(max(nspaces, 1), np.int64)
        self.n = np.zeros(max(nspaces, 1), np.int64)
        self.used = 0

    def set(self, s: int, asp: O.AddressSpace) -> None:
        m = len(asp.vmas)
        if m > self.cap[s]:
            cap = max(8, 2 * m)
            if self.used + cap > len(self.start):
                size = max(2 * len(self.start), self.used + cap)
                for name in ("start", "end", "id"):
                    a = getattr(self, name)
                    b = np.zeros(size, a.dtype)
                    b[: self.used] = a[: self.used]
                    setattr(self, name, b)
            self.off[s], self.cap[s] = self.used, cap
            self.used += cap
        lo = self.off[s]
        self.start[lo:lo + m] = asp.starts
        self.end[lo:lo + m] = [v.end for v in asp.vmas]
        self.id[lo:lo + m] = [v.id for v in asp.vmas]
        self.n[s] = m


def _arrow(values: np.ndarray, ok: np.ndarray | None, typ: pa.DataType) -> pa.Array:
    """A numpy column (and where it is valid) as an Arrow array over the same memory,
    or a converted copy: ``values`` must be the caller's own, never a view of the op
    buffer (``_ops_slice`` copies out of it), as the writer thread reads it later."""
    n = len(values)
    nulls = 0 if ok is None else n - int(np.count_nonzero(ok))
    validity = pa.py_buffer(np.packbits(ok, bitorder="little")) if nulls else None
    if pa.types.is_boolean(typ):
        data = pa.py_buffer(np.packbits(values.astype(np.bool_, copy=False), bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values, dtype=typ.to_pandas_dtype()))
    return pa.Array.from_buffers(typ, n, [validity, data], null_count=nulls)


def _repeat(text: str, n: int) -> pa.Array:
    """``text`` n times as a large_string array, built from its buffers (a take costs 5x)."""
    b = text.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(b)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b * n)])


@njit(cache=True, nogil=True)
def _fill_labels(idx, lab_off, lab_bytes, data):
    """The bytes of label ``idx[r]`` for each row r, one after another, into ``data``."""
    p = 0
    for r in range(len(idx)):
        for q in range(lab_off[idx[r]], lab_off[idx[r] + 1]):
            data[p] = lab_bytes[q]
            p += 1


def _labels(labels: list, idx: np.ndarray) -> pa.Array:
    """``labels[idx[r]]`` for each row r as a large_string array (None: null), built from
    its buffers: what ``pa.array(labels).take(idx)`` gives, at a fraction of its cost."""
    if len(idx) and labels[idx[0]] is not None and not (idx != idx[0]).any():
        return _repeat(labels[idx[0]], len(idx))  # one label (one address space; a part of faults)
    enc = [(x or "").encode() for x in labels]
    lab_off = np.zeros(len(enc) + 1, np.int64)
    np.cumsum([len(e) for e in enc], out=lab_off[1:])
    lab_bytes = np.array(bytearray(b"".join(enc)), np.uint8)
    n = len(idx)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.diff(lab_off)[idx], out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    _fill_labels(idx, lab_off, lab_bytes, data)
    valid = np.array([x is not None for x in labels])[idx]
    nulls = n - int(np.count_nonzero(valid))
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.large_string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=nulls)


def _pyint(v, ok):
    return int(v) if ok else None


class Builder:
    """One build: ``run()`` steps through the events and hands each finished row group to
    ``sink(part, final, release)``: ``part_table(part)`` builds its table (on whichever
    thread calls it: it reads nothing the step changes), ``final``: no second pass needs
    it, ``release()``: the part's Segment may be reused (call it once its table is written,
    or never)."""

    def __init__(self, events: Events, trace_id: str, maps_snapshot: str | None, same_mm: bool, sink):
        self.events, self.trace_id, self.maps, self.sink = events, trace_id, maps_snapshot, sink
        sv = Survey(events)
        if not sv.seq_ascending:
            events.sort_by_seq()
            sv = Survey(events)
        self.sv = sv
        self.rep = rep = O.BuildReport()
        threads = attribute(sv, same_mm, rep)
        rep.out_of_order = sv.order.count
        rep.faults_outside_user_space = sv.outside
        if sv.order.count:
            rep.notes.append(f"time goes backwards at {sv.order.count:,} events on their CPU or thread (the first at "
                             f"seq {sv.order.first[0]}): the ops follow the timestamps (a stable sort), not the input order")
        if sv.outside:
            rep.notes.append(f"{sv.outside:,} faults at or above TASK_SIZE_MAX ({O.TASK_SIZE_MAX:#x}) are no ops: the "
                             "kernel handles them in do_kern_addr_fault(), without an mm lock")
        tids = threads["tid"]
        self.null_tid = tids.null_count() > 0
        self.tids = tids.drop_nulls().to_numpy().astype(np.int64)
        names = threads["mm"].to_list()
        self.space_names = list(dict.fromkeys(x for x in names if x is not None))
        sidx = {x: i for i, x in enumerate(self.space_names)}
        T = len(names)
        self.th = np.zeros(T, TH_DTYPE)
        self.th["space"] = [sidx[x] if x is not None else -1 for x in names]
        own = threads["own_mm"]
        self.th["own_ok"] = own.is_not_null().to_numpy()
        self.th["own_mm"] = own.fill_null(0).to_numpy().astype(np.uint64)
        self.th["grp_op"] = -1
        self.th_tid = tids  # polars Series, th order
        self.runq = runq_intervals(self.tids, *sv.switches())
        self.th_pid = threads["pid"]
        self.th_ids = (tids.is_null().to_numpy(), tids.fill_null(0).to_numpy().astype(np.int32),
                       self.th_pid.is_null().to_numpy(), self.th_pid.fill_null(0).to_numpy().astype(np.int32))
        self.sc = np.zeros(T * NSYS, SC_DTYPE)
        self.sc["op"] = -1
        self.cap = min(max(events.rows, 16), 2 * ROW_GROUP + 1)  # rows[:cap] unwritten ops, then the late ones
        self.rows, self.flags = _ops_buffer(self.cap + 16)
        self.free: queue.SimpleQueue = queue.SimpleQueue()  # Segments the sink is done with
        self.done = 0  # rows[:done] are complete
        self.n_rows, self.base = 0, 0
        self.late_ids = np.zeros(16, np.int64)
        self.late_end = np.zeros((2, 16), np.int64)  # each late op's end_ns and end_ok as written
        self.n_late = 0
        # writer op -> (vma_ids, created, freed, successor, range_vmas, range_start, range_end, parent)
        self.lists: dict[int, tuple] = {}
        self.advice: dict[int, int | None] = {}  # madvise op -> its behaviour argument
        self.layout = _Layout(len(self.space_names))
        self.private = np.zeros(1024, np.bool_)
        self.anon_vma = np.zeros(1024, np.int64)  # per VMA id: its anon_vma (ops.AnonVmas), set by the step
        self.vclass = np.zeros(1024, np.int8)
        self.x86 = error_code_is_x86(events.arch)
        self.miss_space = np.zeros(MISS_CAP, np.int32)
        self.miss_page = np.zeros(MISS_CAP, np.int64)
        self.n_miss = 0
        self.clusters: dict[int, np.ndarray] = {}  # space -> [[lo page, hi page], ...] of missed pages
        self.need_seed = np.array([bool(maps_snapshot)])
        self.counters = np.zeros(NCOUNTERS, np.int64)
        self.ids = O.IdSource()
        self.spaces: dict[str, O.AddressSpace] = {}
        self.op_spaces: set[int] = set()
        self.prev = np.zeros(T, np.int64)
        self.prev_ok = np.full(T, -1, np.int8)
        self.patch_from = None  # (first op, prev, prev_ok) of the first row group the second pass must see
        self.ones = np.ones(0, np.bool_)

    # -- the stepping loop --
    def _keep(self, b: pa.RecordBatch) -> np.ndarray:
        code = _codes(b.column("event"))
        addr, addr_ok = _np_ok(b.column("address"), 0, np.uint64, np.ones(b.num_rows, np.bool_))
        fault = (code == PF_USER) | (code == PF_KERNEL)
        out = fault & addr_ok & (addr >= np.uint64(O.TASK_SIZE_MAX))
        return ~out & (code <= RELEVANT)

    def _batch(self, t: pa.Table) -> Ev:
        c = {name: t.column(name) for name in STEP_COLUMNS}
        n = t.num_rows
        if len(self.ones) < n:
            self.ones = np.ones(n, np.bool_)
        ones = self.ones[:n]
        tid = c["tid"]
        th = np.searchsorted(self.tids, _np(tid, 0, np.int64)).astype(np.int32)
        if tid.null_count:
            th[~_ok(tid)] = len(self.tids)
        f = {"code": _codes(c["event"]), "th": th, "seq": _np(c["seq"], 0, np.int64),
             "write": _tri(c["write"]), "success": _tri(c["success"]), "major": _majors(c["tracepoint"])}
        for name, col, ok in (("ts", "ts_ns", "ts_ok"), ("cpu", "cpu", "cpu_ok"), ("mm", "mm", "mm_ok"),
                              ("address", "address", "addr_ok"), ("error_code", "error_code", "ec_ok"),
                              ("len", "len", "len_ok"), ("new_len", "new_len", "new_len_ok"),
                              ("new_addr", "new_addr", "new_addr_ok"), ("prot", "prot", "prot_ok"),
                              ("flags", "flags", "flags_ok"), ("ret", "ret", "ret_ok")):
            f[name], f[ok] = _np_ok(c[col], 0, EV_TYPES[name], ones)
        return Ev(**f)

    def run(self) -> None:
        from .jit import notice_compile

        notice_compile(_advance, "the op builder", "15")
        for t in _in_time_order(self.events, self.sv, self._keep):
            if not t.num_rows:
                continue
            ev = self._batch(t)
            i = 0
            while True:
                st, i, self.n_rows, self.n_miss, op = _advance(
                    ev, i, self.th, self.sc, self.rows, self.flags, self.n_rows, self.base, self.cap,
                    self.late_ids[: self.n_late], self.layout.start, self.layout.end, self.layout.id, self.layout.off,
                    self.layout.n, self.private, self.anon_vma, self.vclass, self.x86, self.miss_space, self.miss_page,
                    self.n_miss,
                    self.need_seed, self.counters)
                if st == ST_DONE:
                    break
                if st == ST_APPLY:
                    self._apply(op)
                elif st == ST_SEED:
                    self._seed(int(ev.th[i]))
                elif st == ST_FULL:
                    self._flush(force=True)
                elif st == ST_MISS:
                    self._merge_misses()
            self._flush()
        _finish(self.th, self.sc, self.rows, self.flags, self.base, self.cap, self.late_ids[: self.n_late],
                self.counters)
        self._merge_misses()
        self._flush(all_rows=True)
        self.rep.faults_in_inferred = int(self.counters[C_MISSED])
        self.rep.unpaired_enter = int(self.counters[C_UNPAIRED])
        self.rep.unmatched_exit = int(self.counters[C_UNMATCHED])
        self.rep.fault_ends_unpaired = int(self.counters[C_END_ALONE])

    def _row(self, op: int) -> int:
        return int(_ref(op, self.base, self.cap, self.late_ids[: self.n_late]))

    def _space(self, s: int) -> O.AddressSpace:
        return self.spaces.setdefault(self.space_names[s], O.AddressSpace(self.ids, _StepAnonVmas(self)))

    def _ids_fit(self) -> None:
        if self.ids.n >= len(self.private):
            size = max(2 * len(self.private), self.ids.n + 1)
            for name in ("private", "anon_vma", "vclass"):
                a = np.zeros(size, getattr(self, name).dtype)
                a[: len(getattr(self, name))] = getattr(self, name)
                setattr(self, name, a)

    def _mark(self, asp: O.AddressSpace, ids) -> None:
        self._ids_fit()
        by_id = {v.id: v for v in asp.vmas}
        for i in ids:
            v = by_id.get(i)
            if v is not None:
                self.private[i] = v.prot.endswith("p")
                self.vclass[i] = O.vma_class(v.anon, v.prot, v.name)

    def _seed(self, t: int) -> None:
        """The snapshot belongs to the recorded command: the address space of the first op."""
        self.need_seed[0] = False
        s = int(self.th[t]["space"])
        if s < 0:
            asp = self.spaces.setdefault(None, O.AddressSpace(self.ids, _StepAnonVmas(self)))
        else:
            asp = self._space(s)
        for lo, hi, perms, anon, name in O.parse_maps(self.maps):
            if O.user_range(lo, hi - lo) is None:  # [vsyscall]: not in the mm's VMA tree
                continue
            # flags as maps shows them; an anonymous VMA's pgoff taken as its start's page
            # (maps prints 0 for one: show_map_vma(), fs/proc/task_mmu.c), the stack's unknown
            # (relocated by setup_arg_pages())
            flags = O.maps_vm_flags(perms, anon, name)
            pgoff = lo // O.PAGE if flags is not None and name != "[stack]" else None
            v = asp.new(lo, hi, perms, anon, name, None, flags=flags, pgoff=pgoff)
            self.rep.seeded_vmas += 1
            self._ids_fit()
            self.private[v.id] = perms.endswith("p")
            self.vclass[v.id] = O.vma_class(anon, perms, name)
        if s >= 0:
            self.layout.set(s, asp)

    def _apply(self, op: int) -> None:
        """A writer's change lands (its sys_exit, or exit_mmap): replay it on the tracker."""
        R, FL, k = self.rows, self.flags, self._row(op)
        kind = O.OP_KINDS[int(FL[F_KIND, k])]
        t = int(R[R_TH, k])
        s = int(self.th[t]["space"])
        asp = self._space(s) if s >= 0 else self.spaces.setdefault(None, O.AddressSpace(self.ids, _StepAnonVmas(self)))
        now = _pyint(R[R_END, k], FL[F_END_OK, k])
        if kind == "exit":
            res = O.apply_writer(asp, kind, {}, 0, now, self.rep)
        else:
            q = self.sc[t * NSYS + int(FL[F_KIND, k]) - K_SYS0]
            a = {"address": _pyint(q["address"], q["addr_ok"]), "len": _pyint(q["len"], q["len_ok"]),
                 "new_len": _pyint(q["new_len"], q["new_len_ok"]), "new_addr": _pyint(q["new_addr"], q["new_addr_ok"]),
                 "prot": _pyint(q["prot"], q["prot_ok"]), "flags": _pyint(q["flags"], q["flags_ok"])}
            res = O.apply_writer(asp, kind, a, _pyint(R[R_RET, k], FL[F_RET_OK, k]), now, self.rep)
        vma_ids, created, freed, succ, ranges, lock, parent = res
        FL[F_LOCK, k] = LOCK_MODES.index(lock)
        if kind == "madvise":
            self.advice[op] = a["flags"]
            if lock == "read":  # the VMA at its start; held sys_enter -> sys_exit unless a read hold shows
                v = asp.find(O.page_down(a["address"])) if O.is_user_address(a["address"]) else None
                R[R_VMA, k] = v.id if v is not None else VMA_NONE
                if FL[F_START_OK, k] and FL[F_END_OK, k]:
                    R[R_HOLD, k], FL[F_HOLD_OK, k] = R[R_END, k] - R[R_START, k], True
        self.lists[op] = (vma_ids, created, freed, succ, *ranges, parent)
        FL[F_PEND, k] -= 1
        self._mark(asp, created)
        if s >= 0:
            self.layout.set(s, asp)

    def _merge_misses(self) -> None:
        """Fold the buffered missed pages into each space's clusters (pages no more than
        GAP_SPLIT apart, as ``ops`` infers VMAs from them)."""
        n = self.n_miss
        if not n:
            return
        sp, pg = self.miss_space[:n], self.miss_page[:n]
        for s in np.unique(sp):
            pages = np.unique(pg[sp == s])
            cut = np.flatnonzero(np.diff(pages) > O.GAP_SPLIT) + 1
            lo = pages[np.r_[0, cut]]
            hi = pages[np.r_[cut - 1, len(pages) - 1]]
            new = np.stack([lo, hi], axis=1)
            old = self.clusters.get(int(s))
            allc = new if old is None else np.concatenate([old, new])
            allc = allc[np.argsort(allc[:, 0], kind="stable")]
            out = [list(allc[0])]
            for a, b in allc[1:]:
                if a - out[-1][1] <= O.GAP_SPLIT:
                    out[-1][1] = max(out[-1][1], b)
                else:
                    out.append([a, b])
            self.clusters[int(s)] = np.array(out, np.int64)
        self.n_miss = 0

    # -- writing --
    def _flush(self, force: bool = False, all_rows: bool = False) -> None:
        """Write the complete ops at the front, a row group at a time.  ``force`` (the
        buffer is full): write the oldest row group whatever its state; ``all_rows``:
        the trace has ended, write everything."""
        while self.n_rows:
            self.done = _done_prefix(self.flags[F_PEND], self.done, self.n_rows)
            if not (all_rows or force or self.done >= ROW_GROUP):
                return
            force = False
            self._write(min(ROW_GROUP, self.n_rows))

    def _segment(self) -> Segment:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            return Segment(min(ROW_GROUP, self.cap))

    def _write(self, k: int) -> None:
        room = self._segment()
        seg = _ops_slice(self.rows, self.flags, 0, k, room)
        ops = room.ops[:k]
        np.add(room.iota[:k], self.base, out=ops)
        inc = np.flatnonzero(seg.pend != 0)
        if len(inc):  # written before complete: kept aside, finished there, put in place by the second pass
            need = self.n_late + len(inc)
            width = self.rows.shape[1]
            if self.cap + need > width:
                rows, flags = _ops_buffer(self.cap + max(2 * (width - self.cap), need))
                rows[:, :width], flags[:, :width] = self.rows, self.flags
                self.rows, self.flags = rows, flags
            if need > len(self.late_ids):
                size = max(2 * len(self.late_ids), need)
                self.late_ids = np.resize(self.late_ids, size)
                grown = np.zeros((2, size), np.int64)
                grown[:, : self.n_late] = self.late_end[:, : self.n_late]
                self.late_end = grown
            self.rows[:, self.cap + self.n_late:self.cap + need] = self.rows[:, inc]
            self.flags[:, self.cap + self.n_late:self.cap + need] = self.flags[:, inc]
            self.late_ids[self.n_late:need] = ops[inc]
            self.late_end[0, self.n_late:need] = self.rows[R_END, inc]
            self.late_end[1, self.n_late:need] = self.flags[F_END_OK, inc]
            self.n_late = need
        if self.patch_from is None and (len(inc) or (seg.vma == VMA_MISS).any()):
            # from this row group on the second pass has work: every op before it is final
            # (a patch changes late ops, the faults in inferred VMAs and the think times
            # after a late op - all at or after the first of them)
            self.patch_from = (self.base, self.prev.copy(), self.prev_ok.copy())
        think, think_ok = room.think[:k], room.think_ok[:k]
        think[:], think_ok[:] = 0, False
        _think(seg.th, seg.start, seg.start_ok, seg.end, seg.end_ok, self.prev, self.prev_ok, think, think_ok, *self.runq)
        self.sink((seg, ops, think, think_ok, self.writers(seg, ops, pop=True)), self.patch_from is None,
                  lambda: self.free.put(room))
        _shift(self.rows, k, self.n_rows)
        _shift(self.flags, k, self.n_rows)
        self.n_rows -= k
        self.base += k
        self.done = max(self.done - k, 0)

    def table(self, seg: Ops, ops: np.ndarray, think: np.ndarray, think_ok: np.ndarray, pop: bool) -> pa.Table:
        """Ops rows as the ops table (OPS_ARROW schema)."""
        return self.make_table(seg, ops, think, think_ok, writer_columns(len(ops), self.writers(seg, ops, pop)))

    def writers(self, seg: Ops, ops: np.ndarray, pop: bool) -> list:
        """The writers among ops rows: (row, advice, VMA lists) of each; with ``pop``, those
        of complete ones leave ``advice`` and ``lists`` (the step's thread owns both)."""
        out = []
        for j in np.flatnonzero(seg.kind != K_FAULT).tolist():
            op = int(ops[j])
            done = seg.pend[j] == 0
            adv = self.advice.pop(op, None) if pop and done else self.advice.get(op)
            got = (self.lists.pop(op, None) if pop and done else self.lists.get(op))
            out.append((j, adv, got if got is not None else (None, *([],) * (NLISTS - 1))))
        return out

    def part_table(self, part: tuple) -> pa.Table:
        """A row group (``_write``'s part: the ops rows, op ids, think times, and the
        writers as ``writers(...)`` lists them or as their columns) as the ops table."""
        seg, ops, think, think_ok, w = part
        return self.make_table(seg, ops, think, think_ok, w if isinstance(w, dict) else writer_columns(len(ops), w))

    def make_table(self, seg: Ops, ops: np.ndarray, think: np.ndarray, think_ok: np.ndarray, wcols: dict) -> pa.Table:
        """``table`` from ``writer_columns(...)``: reads nothing the step changes, so it runs on
        the writer thread, beside the step."""
        n = len(seg.seq)
        fault = seg.kind == K_FAULT
        kernel = seg.kernel
        th = seg.th.astype(np.int64)
        space = self.th["space"][th]
        seen = np.zeros(len(self.space_names) + 1, np.bool_)
        seen[space] = True  # (-1, no space: the last)
        self.op_spaces.update(np.flatnonzero(seen[: len(self.space_names)]).tolist() + ([-1] if seen[-1] else []))
        # derived flags (ops docstring): a user fault's window fell back unless the
        # first-write trylock explains it; writers have none of these
        fb = seg.fb == 1
        fallback = fb & ~seg.first
        anon = fb & seg.first & ~kernel
        arr = _arrow

        tid_null, tid_vals, pid_null, pid_vals = self.th_ids
        vma = seg.vma
        cols = {
            "op_id": _arrow(ops, None, pa.int64()),
            "trace_id": _repeat(self.trace_id, n),
            "mm": _labels(self.space_names + [None], np.where(space < 0, len(self.space_names), space)),
            "pid": arr(pid_vals[th], ~pid_null[th], pa.int32()),
            "tid": arr(tid_vals[th], ~tid_null[th], pa.int32()),
            "kind": pa.DictionaryArray.from_arrays(_arrow(seg.kind.astype(np.uint8), None, pa.uint8()), KINDS,
                                                   ordered=True),
            "seq": _arrow(seg.seq, None, pa.int64()),
            "start_ns": arr(seg.start, seg.start_ok, pa.int64()),
            "end_ns": arr(seg.end, seg.end_ok, pa.int64()),
            "address": arr(seg.address, seg.addr_ok, pa.uint64()),
            "length": arr(seg.length, seg.len_ok, pa.int64()),
            "ret": arr(seg.ret, seg.ret_ok, pa.int64()),
            "vma_id": arr(vma, vma != VMA_NONE, pa.int64()),
            **wcols,
            "vma_class": pa.DictionaryArray.from_arrays(
                _arrow(np.maximum(seg.vclass.astype(np.int64) - 1, 0).astype(np.uint8), fault & (seg.vclass > 0),
                       pa.uint8()), VMA_CLASSES, ordered=True),
            "write": arr(seg.write == 1, seg.write >= 0, pa.bool_()),
            "kernel": _arrow(kernel, None, pa.bool_()),
            "fault_kind": pa.DictionaryArray.from_arrays(
                _arrow(np.maximum(seg.fkind, 0).astype(np.uint8), seg.fkind >= 0, pa.uint8()), FAULT_KINDS, ordered=True),
            "lock_mode": _labels(list(LOCK_MODES), seg.lock.astype(np.int64)),
            "observed_fallback": arr(fallback, fault & ~kernel, pa.bool_()),
            "observed_anon_prepare": arr(anon, fault, pa.bool_()),
            "observed_mmap_write": arr(seg.fbw, fault, pa.bool_()),
            "hold_ns": arr(seg.hold, seg.hold_ok, pa.int64()),
            "read_hold_ns": arr(seg.rhold, seg.rhold_ok, pa.int64()),
            "service_ns": arr(seg.svc, seg.svc_ok, pa.int64()),
            "first_try_ns": arr(seg.first_try, seg.first_try_ok & fallback & ~kernel, pa.int64()),
            "think_ns": arr(think, think_ok, pa.int64()),
            "cpu": arr(seg.cpu, seg.cpu_ok, pa.int16()),
        }
        return pa.Table.from_arrays([cols[f.name] for f in OPS_ARROW], schema=OPS_ARROW)

    # -- the second pass --
    def needs_patch(self) -> bool:
        return self.patch_from is not None

    def inferred(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The inferred VMAs (ids after every tracked one, spaces by name, then by address),
        as space -> (starts, ends, ids); they join the tracker's lists for the vmas table."""
        out = {}
        by_name = sorted(self.clusters, key=lambda s: self.space_names[s])
        for s in by_name:
            asp = self._space(s)
            c = self.clusters[s]
            ids = []
            for lo, hi in c.tolist():
                v = O.Vma(self.ids.next(), lo, hi + O.PAGE, "rw-p", True, "", True)
                asp.all.append(v)
                self.rep.inferred_vmas += 1
                ids.append(v.id)
            out[s] = (c[:, 0].astype(np.uint64), (c[:, 1] + O.PAGE).astype(np.uint64), np.array(ids, np.int64))
        return out

    def vmas(self):
        import polars as pl

        return pl.DataFrame(
            [dict(vma_id=v.id, mm=mm, start=v.start, end=v.end, prot=v.prot, anon=v.anon, name=v.name,
                  inferred=v.inferred, created_ns=v.created_ns, freed_ns=v.freed_ns)
             for mm, asp in self.spaces.items() for v in asp.all],
            schema=O.VMAS_SCHEMA)


WRITER_COLUMNS = ("vma_ids", "vmas_created", "vmas_freed", "vmas_successor", "range_vmas", "range_start", "range_end",
                  "vmas_parent", "advice")  # a writer's lists, in the order of Builder.lists' tuples, and its advice


@functools.lru_cache(maxsize=4)
def _no_writers(n: int) -> dict[str, pa.Array]:
    """The writer columns of n rows of faults: all null, over one shared zeroed buffer
    (offsets and validity alike; ``pa.nulls`` of a list type costs ~10 ms per column at
    a row group)."""
    zeros = pa.py_buffer(np.zeros(n + 1, np.int64))
    out = {}
    for c in WRITER_COLUMNS:
        typ = OPS_ARROW.field(c).type
        if pa.types.is_large_list(typ):
            out[c] = pa.Array.from_buffers(typ, n, [zeros, zeros], null_count=n,
                                           children=[pa.array([], typ.value_type)])
        else:
            out[c] = pa.nulls(n, typ)
    return out


def _list_column(c: int, n: int, rows: np.ndarray, lengths: np.ndarray, valid: np.ndarray,
                 values: pa.Array, shared: dict) -> pa.Array:
    """Writer list column ``c`` for n ops rows: at ``rows`` the lists of ``lengths``
    (where ``valid``) whose values follow one another in ``values``, null elsewhere;
    from its buffers (LargeListArray.from_arrays with a mask costs 10x).  ``shared``:
    the buffers already made for the other columns of these rows, by content (most
    writers' lists are empty or of one VMA: a part's eight columns share two or three)."""
    typ = OPS_ARROW.field(WRITER_COLUMNS[c]).type
    # rows ascend: the offsets are the running totals after each row, each repeated
    # until the next row (a cumsum over all n rows cost 10 ms a column at a row group)
    cum = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(np.where(valid, lengths, 0), out=cum[1:])
    key = ("off", cum.tobytes())
    if key not in shared:
        shared[key] = pa.py_buffer(np.repeat(cum, np.diff(np.concatenate(([0], rows + 1, [n + 1])))))
    nulls = n - int(np.count_nonzero(valid))
    validity = None
    if nulls:
        key = ("valid", valid.tobytes())
        if key not in shared:
            bits = np.zeros((n + 7) // 8, np.uint8)
            at = rows[valid]
            np.bitwise_or.at(bits, at >> 3, (1 << (at & 7)).astype(np.uint8))
            shared[key] = pa.py_buffer(bits)
        validity = shared[key]
    return pa.Array.from_buffers(typ, n, [validity, shared[("off", cum.tobytes())]], null_count=nulls,
                                 children=[values.cast(typ.value_type)])


def writer_columns(n: int, writers: list) -> dict[str, pa.Array]:
    """The ops table's writer columns for n ops rows from ``Builder.writers(...)``
    (a row group of faults only: the same null columns every time)."""
    if not writers:
        return _no_writers(n)
    k = len(writers)
    rows = np.fromiter((j for j, _, _ in writers), np.int64, k)
    lists = [[] for _ in range(NLISTS)]
    valid = np.zeros((NLISTS, k), np.bool_)
    lengths = np.zeros((NLISTS, k), np.int64)
    advice = np.zeros(n, np.int64)
    advice_ok = np.zeros(n, np.bool_)
    for r, (j, adv, vals) in enumerate(writers):
        if adv is not None:
            advice[j], advice_ok[j] = adv, True
        for c in range(NLISTS):
            if vals[c] is not None:
                valid[c, r] = True
                lengths[c, r] = len(vals[c])
                lists[c].extend(vals[c])
    shared: dict = {}
    out = {WRITER_COLUMNS[c]: _list_column(c, n, rows, lengths[c], valid[c],
                                           pa.array(lists[c], OPS_ARROW.field(WRITER_COLUMNS[c]).type.value_type),
                                           shared)
           for c in range(NLISTS)}
    out["advice"] = _arrow(advice, advice_ok, pa.int32())
    return out


def _writer_rows(writers: list) -> pa.RecordBatch | None:
    """A part's writers (``Builder.writers(...)``) as the spill keeps them: their rows
    only (``row``: the op's row in the part), none when it has none."""
    if not writers:
        return None
    w = writer_columns(len(writers), [(r, adv, vals) for r, (_, adv, vals) in enumerate(writers)])
    return pa.RecordBatch.from_arrays([pa.array([j for j, _, _ in writers], pa.int64())] + [w[c] for c in WRITER_COLUMNS],
                                      schema=SPILL_WRITERS_SCHEMA)


def _writer_columns_of(wb: pa.RecordBatch | None, n: int) -> dict[str, pa.Array]:
    """``_writer_rows``' batch back as the writer columns of the part's n rows."""
    if wb is None:
        return _no_writers(n)
    rows = wb.column("row").to_numpy()
    out, shared = {}, {}
    for c in range(NLISTS):
        col = wb.column(WRITER_COLUMNS[c])
        out[WRITER_COLUMNS[c]] = _list_column(c, n, rows, _np(pc.list_value_length(col), 0, np.int64), _ok(col),
                                              col.flatten(), shared)
    adv = wb.column("advice")
    advice, advice_ok = np.zeros(n, np.int64), np.zeros(n, np.bool_)
    advice[rows], advice_ok[rows] = _np(adv, 0, np.int64), _ok(adv)
    out["advice"] = _arrow(advice, advice_ok, pa.int32())
    return out


def _ops_arrow() -> pa.Schema:
    import polars as pl

    return pl.DataFrame(schema=O.OPS_SCHEMA).to_arrow().schema


OPS_ARROW = _ops_arrow()
NLISTS = 8  # a writer's list columns, in the order of Builder.lists' tuples
KINDS = pa.array(list(O.OP_KINDS), pa.large_string())
FAULT_KINDS = pa.array(list(O.FAULT_KINDS), pa.large_string())
VMA_CLASSES = pa.array(list(O.VMA_CLASSES), pa.large_string())


def _scatter(col: pa.ChunkedArray, pos: np.ndarray, values: pa.Array) -> pa.Array:
    """``col`` with the rows at ``pos`` replaced by ``values``."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    idx = np.arange(len(col), dtype=np.int64)
    idx[pos] = len(col) + np.arange(len(pos))
    return pa.concat_arrays([col, values.cast(col.type)]).take(pa.array(idx))


class _Patch:
    """The second pass over the row groups written before they were final: the late ops'
    final values, the inferred VMAs of faults outside every known VMA (and which of them
    is its VMA's first write fault), and think times again when a late op's end moved -
    on a part's own arrays, before its table is made."""

    def __init__(self, b: Builder):
        self.b = b
        self.inferred = b.inferred()
        self.seen: set[int] = set()
        n = self.n_late = b.n_late
        self.late_ids = b.late_ids[:n].copy()
        self.late = _ops_slice(b.rows, b.flags, b.cap, b.cap + n)
        self.late_w = writer_columns(n, b.writers(self.late, self.late_ids, pop=False))
        # think_ns depends on the ops' start and end only, and a late op's start is final
        # when it is made: unless a late op's end moved after it was written, the think
        # times written are the final ones
        was_ok, now_ok = b.late_end[1, :n] != 0, self.late.end_ok
        self.ends_moved = bool(((was_ok != now_ok) | (now_ok & (b.late_end[0, :n] != self.late.end))).any())
        _, self.prev, self.prev_ok = b.patch_from  # each thread's last end before the first row group it sees

    def __call__(self, part: tuple) -> tuple:
        b = self.b
        seg, ops, think, think_ok, wcols = part
        a, z = int(ops[0]), int(ops[-1]) + 1
        if self.n_late:
            lo, hi = np.searchsorted(self.late_ids, [a, z])
            if hi > lo:
                pos = self.late_ids[lo:hi] - a
                # only the fields that moved are copied and put right (a part's arrays
                # may be read-only views of the spill)
                seg = seg._make(col if np.array_equal(col[pos], late[lo:hi]) else _put(col, pos, late[lo:hi])
                                for col, late in zip(seg, self.late))
                # a writer's lists: only those that moved since it was written (a column
                # put back as it was costs a copy of the row group)
                at = pa.array(pos)
                wcols = {c: v if v.take(at).equals(self.late_w[c].slice(lo, hi - lo))
                         else _scatter(v, pos, self.late_w[c].slice(lo, hi - lo)) for c, v in wcols.items()}
        if self.inferred:
            miss = np.flatnonzero(seg.vma == VMA_MISS)
            if len(miss):
                space = b.th["space"][seg.th[miss].astype(np.int64)]
                addr = seg.address[miss]
                ids = np.zeros(len(miss), np.int64)
                for s in np.unique(space).tolist():
                    sel = space == s
                    starts, _, vids = self.inferred[s]
                    ids[sel] = vids[np.searchsorted(starts, addr[sel], side="right") - 1]
                # inferred VMAs are private: each one's first write fault (op order) may be
                # the trylock (make_table derives observed_fallback/anon_prepare from it)
                w = np.flatnonzero(seg.write[miss] == 1)
                uniq, at = np.unique(ids[w], return_index=True)
                new = ~np.isin(uniq, np.fromiter(self.seen, np.int64, len(self.seen)))
                first = np.zeros(len(miss), np.bool_)
                first[w[at[new]]] = True
                self.seen.update(uniq[new].tolist())
                seg = seg._replace(vma=_put(seg.vma, miss, ids), first=_put(seg.first, miss, first))
        if self.n_late and self.ends_moved:
            think, think_ok = np.zeros(len(think), np.int64), np.zeros(len(think), np.bool_)
            _think(seg.th, seg.start, seg.start_ok, seg.end, seg.end_ok, self.prev, self.prev_ok, think, think_ok,
                   *self.b.runq)
        return seg, ops, think, think_ok, wcols


def _put(col: np.ndarray, pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of ``col`` with ``values`` at ``pos``."""
    out = col.copy()
    out[pos] = values
    return out


# A part as the spill keeps it: the ops rows as the op buffer holds them (flags as int8),
# op ids and think times; its table (the strings, the derived flags) is made once, after
# the second pass.  Its writers, if any, go to a file of their own, their rows only
# (SPILL_WRITERS_SCHEMA): a part's eight list columns, null on every fault, cost more to
# spill and read back than all its other fields (0.9 s of 1.4 s of CPU for a 2 M-op pft).
SPILL_SCHEMA = pa.schema(
    [(name, pa.from_numpy_dtype(np.int8 if dt == np.bool_ else dt)) for name, dt in OP_FIELDS]
    + [("op_id", pa.int64()), ("think", pa.int64()), ("think_ok", pa.int8())])
SPILL_WRITERS_SCHEMA = pa.schema([("row", pa.int64())] + [OPS_ARROW.field(c) for c in WRITER_COLUMNS])


def _spill_batch(part: tuple) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
    """A part as a record batch over its own arrays (no copy), and its writers' rows."""
    seg, ops, think, think_ok, writers = part
    cols = [_arrow(c.view(np.int8) if c.dtype == np.bool_ else c, None, SPILL_SCHEMA.field(i).type)
            for i, c in enumerate(seg)]
    cols += [_arrow(ops, None, pa.int64()), _arrow(think, None, pa.int64()), _arrow(think_ok.view(np.int8), None, pa.int8())]
    return pa.RecordBatch.from_arrays(cols, schema=SPILL_SCHEMA), _writer_rows(writers)


def _spilled_batch(path: str, g: int) -> pa.RecordBatch:
    """Part ``g`` of the spill, over a memory map of its own: the part's arrays are the
    page cache's pages, neither copied nor decompressed, and the map goes (its pages
    leave the process's RSS) once the part's table is written and its arrays dropped."""
    return pa.ipc.open_file(pa.memory_map(path)).get_batch(g)


def _unspill(batch: pa.RecordBatch, wb: pa.RecordBatch | None) -> tuple:
    """A spilled part (and its writers' rows) back, as read-only views of the batch's own
    buffers (no copy: ``_Patch`` copies the few columns it changes)."""
    n = batch.num_rows

    def col(i, dt):
        a = batch.column(i).to_numpy()
        return a.view(dt) if dt == np.bool_ else a

    seg = [col(i, dt) for i, (_, dt) in enumerate(OP_FIELDS)]
    ops, think = batch.column("op_id").to_numpy(), batch.column("think").to_numpy()
    think_ok = batch.column("think_ok").to_numpy().view(np.bool_)
    return Ops(*seg), ops, think, think_ok, _writer_columns_of(wb, n)


# How the ops file is encoded (its values do not depend on it): dictionary pages only
# for the columns with a handful of values (a dictionary tried and abandoned on every
# int64 column cost about half the write time), and delta encoding for the 64-bit
# numbers: a 2 M-op pft ops file is 0.34 MB instead of 11.9 MB; on random addresses and
# think times, measured on 2 M values, about the size of plain + zstd and 1.4-2.5x
# faster to write.  Min/max statistics only on the integer columns (a reader can skip row
# groups by op_id, time, address, thread): on the strings, dictionaries, flags and lists
# they cost a sixth of the write (0.76-1.02 s instead of 1.05-1.23 s of CPU for the
# 2 M-op pft file, alternately) and would serve no filter.
OPS_PARQUET = {"compression": "zstd", "use_dictionary": ["trace_id", "mm", "kind", "fault_kind", "vma_class", "lock_mode", "pid", "tid"],
               "column_encoding": {c: "DELTA_BINARY_PACKED" for c in (
                   "op_id", "seq", "start_ns", "end_ns", "address", "length", "ret", "vma_id", "hold_ns", "think_ns")},
               "write_statistics": [f.name for f in OPS_ARROW if pa.types.is_integer(f.type)]}


class _Behind:
    """Calls run in order on one thread, at most one waiting: the Parquet and IPC writes
    (which release the GIL) overlap the step of the next events.  What a call writes must
    be its own (``_ops_slice`` copies out of the reused op buffer; ``Builder.make_table``
    reads nothing else the step changes)."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue(1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="replay-ops-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (call := self.q.get()) is not None:
            if self.error is None:
                try:
                    call()
                except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                    self.error = e

    def __call__(self, fn, *args) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(lambda: fn(*args))

    def stop(self) -> None:
        """Wait for every call (one that failed skips the rest)."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()

    def join(self) -> None:
        """Wait for every call; raise the first one's error."""
        self.stop()
        if self.error is not None:
            raise self.error


def build(events: Events, trace_id: str, maps_snapshot: str | None, same_mm: bool, ops_path: str, vmas_path: str,
          metadata: dict[bytes, bytes] | None = None) -> O.BuildReport:
    """Build a trace's ops into ``ops_path`` and its VMAs into ``vmas_path`` (Parquet,
    ``metadata`` added to both schemas' key-value metadata).  Row groups that are final
    when made go straight into the ops file; from the first one the second pass must see,
    they go to an Arrow IPC file beside it, as the op buffer's fields (SPILL_SCHEMA,
    uncompressed: written with one copy into the page cache and read back as its pages,
    unlike a Parquet encoding, which so happens once per op; lz4 cost ~0.35 s of CPU per
    2 M spilled ops, both ways and in the decompressed buffers' fresh pages, for 16.5
    bytes an op on disk instead of 133), and through the patch at the end.
    Both files are written on a thread of their own."""
    meta = {**(metadata or {}), O.OPS_VERSION_KEY: str(O.OPS_VERSION).encode()}
    schema = OPS_ARROW.with_metadata({**(OPS_ARROW.metadata or {}), **meta})
    spill_path, spill_w_path = ops_path + ".spill", ops_path + ".spill-writers"
    files: dict[str, object] = {}
    behind = _Behind()

    def write(part, release) -> None:  # then its Segment is free
        put(b.part_table(part))
        release()

    def put(t: pa.Table) -> None:
        files["ops"].write_table(t.replace_schema_metadata(schema.metadata))

    spilled: list[bool] = []  # per spilled part: it has writers (a batch in the writers' spill)

    def spill_to(name: str, path: str, sch: pa.Schema, batch: pa.RecordBatch, compression: str | None) -> None:
        if name not in files:
            files[name + "_file"] = pa.OSFile(path, "wb")
            files[name] = pa.ipc.new_file(files[name + "_file"], sch,
                                          options=pa.ipc.IpcWriteOptions(compression=compression))
        files[name].write_batch(batch)

    def spill(part, release) -> None:
        batch, wb = _spill_batch(part)
        spill_to("spill", spill_path, SPILL_SCHEMA, batch, None)
        if wb is not None:
            spill_to("spill_w", spill_w_path, SPILL_WRITERS_SCHEMA, wb, "lz4")
        spilled.append(wb is not None)
        del batch, wb
        release()

    def close_spill() -> None:
        for name in ("spill", "spill_w"):
            if name in files:
                files.pop(name).close()
                files.pop(name + "_file").close()

    try:
        files["ops"] = pq.ParquetWriter(ops_path, schema, **OPS_PARQUET)
        b = Builder(events, trace_id, maps_snapshot, same_mm,
                    lambda part, final, release: behind(write if final else spill, part, release))
        b.run()
        behind(close_spill)
        if b.needs_patch():
            patch = _Patch(b)
            behind.join()
            behind = _Behind()
            with pa.OSFile(spill_w_path, "rb") if any(spilled) else contextlib.nullcontext() as fw:
                rw = pa.ipc.open_file(fw) if fw is not None else None
                w = 0
                for g in range(len(spilled)):
                    wb = None
                    if spilled[g]:
                        wb, w = rw.get_batch(w), w + 1
                    # the table is made here: in this pass the step's thread has nothing
                    # else to do, and the writer thread's encoding is the longer part
                    behind(put, b.part_table(patch(_unspill(_spilled_batch(spill_path, g), wb))))
                behind.join()
        else:
            behind.join()
        files.pop("ops").close()
    finally:
        behind.stop()
        close_spill()
        if "ops" in files:
            files.pop("ops").close()
        for path in (spill_path, spill_w_path):
            if os.path.exists(path):
                os.unlink(path)
    _finish_report(b)
    vt = b.vmas().to_arrow()
    pq.write_table(vt.replace_schema_metadata({**(vt.schema.metadata or {}), **(metadata or {})}), vmas_path,
                   compression="zstd")
    return b.rep


def build_in_memory(ev: pa.Table, trace_id: str, maps_snapshot: str | None, same_mm: bool):
    """The same build with the ops kept in memory: (ops table, vmas frame, report)."""
    final: list[pa.Table] = []
    rest: list[tuple] = []
    # (the tables keep their Segments: none is released)
    b = Builder(Events(ev), trace_id, maps_snapshot, same_mm,
                lambda part, ok, release: final.append(b.part_table(part)) if ok else rest.append(part))
    b.run()
    if rest:
        patch = _Patch(b)
        rest = [b.part_table(patch(p)) for p in rest]
    _finish_report(b)
    parts = final + rest
    ops = pa.concat_tables(parts) if parts else OPS_ARROW.empty_table()
    return ops, b.vmas(), b.rep


def _finish_report(b: Builder) -> None:
    rep = b.rep
    rep.processes = len(b.op_spaces)
    if rep.out_of_range_calls:
        rep.notes.append(f"{rep.out_of_range_calls:,} calls reach outside the user address space, which the kernel "
                         "refuses: they change no VMA")
