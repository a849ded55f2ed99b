"""Two per-op columns kept in 4 bytes instead of 8, exactly: a big trace's think times
and fault addresses (the loader's largest arrays: at 50 M ops each 8-byte column is
381 MiB).  Every value decodes to the very number the 8-byte column held, so a replay
is the same bit for bit; what does not fit the narrow form is kept aside, and looked up
by a binary search over the few ops that have one.

- think time (ops ``think_ns``, as the engine's float64): an int32 where the value is an
  integer within int32 (|think| < 2.1 s); THINK_X marks one in ``think_xj``/``think_xv``
  (op index, value).  The op builder's think is the gap since the thread's previous op
  ended (opstream._think), so a thread has at most one such gap per 2.1 s of trace.
- address (ops ``address``, as int64, -1 where unknown): a fault's address less the
  lowest address of the faults on its VMA (``addr_base[vma + 1]``; ``addr_base[0]`` for
  the other ops and faults without a VMA), its low 32 bits in ``op_addr`` (uint32) and,
  where some VMA's faults span 4 GiB or more (``cfg.addr_seg``), the rest in
  ``op_addr_seg`` (uint8: 1 TiB a VMA); ADDR_UNKNOWN for -1; ADDR_X for one kept aside in
  ``addr_xj``/``addr_xv`` (an address above 2**63, 1 TiB above its VMA's lowest, or for
  the other ops 4 GiB above their lowest unless op_addr_seg is kept anyway).
  Where more than 1/WIDE_FRACTION of the ops would be kept aside, the loader keeps the
  8-byte column instead (``cfg.addr_wide``, ``op_addr_wide``).

The decoders take the arrays (the loader's numpy arrays, or the engine's state
pointers) so the loader and the engine share one definition.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..jit import internal
from .state import (addr_base, addr_xj, addr_xv, cfg, op_addr, op_addr_seg, op_addr_wide, op_think, think_xj,
                    think_xv)

THINK_X = -(1 << 31)  # op_think: the value is in think_xv
ADDR_UNKNOWN = 0xFFFFFFFF  # op_addr: address -1 (unknown)
ADDR_X = 0xFFFFFFFE  # op_addr: the address is in addr_xv
ADDR_SEGS = 256  # op_addr_seg: 4 GiB segments above a VMA's lowest fault
WIDE_FRACTION = 16  # more ops than n / this kept aside: keep the 8-byte addresses


@internal(inline=True)
def _find(keys, nkeys, j):
    """The index of j in the sorted keys[0:nkeys] (j is there)."""
    lo, hi = 0, nkeys
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < j:
            lo = mid + 1
        else:
            hi = mid
    return lo


@internal(inline=True)
def think_at(codes, xj, xv, nx, j):
    """Op j's think time, ns (float64)."""
    c = codes[j]
    if c != THINK_X:
        return float(c)
    return xv[_find(xj, nx, j)]


@internal(inline=True)
def addr_at(A, j, v):
    """Op j's address (int64, -1 unknown); v: its VMA index if it is a fault, else -1.
    A: (addr_wide, op_addr_wide, op_addr, addr_seg, op_addr_seg, addr_base, addr_xj,
    addr_xv, naddr_x) - the loader's arrays (addr_tuple()) or the engine's state's."""
    wide, wide_addr, codes, seg_on, seg, base, xj, xv, nx = A
    if wide:
        return wide_addr[j]
    c = codes[j]
    if c == ADDR_UNKNOWN:
        return np.int64(-1)
    if c == ADDR_X:
        return xv[_find(xj, nx, j)]
    hi = np.int64(seg[j]) << 32 if seg_on else np.int64(0)
    return base[v + 1] + hi + np.int64(c)


@internal(inline=True)
def op_think_ns(S, j):
    """The engine's: op j's think time (ops think_ns), ns."""
    return think_at(op_think(S), think_xj(S), think_xv(S), cfg(S, 0).nthink_x, j)


@internal(inline=True)
def op_address(S, j, v):
    """The engine's: op j's address (ops address, -1 unknown); v: its VMA index if it is
    a fault (op_arg), else -1."""
    k = cfg(S, 0)
    return addr_at((k.addr_wide, op_addr_wide(S), op_addr(S), k.addr_seg, op_addr_seg(S), addr_base(S), addr_xj(S),
                    addr_xv(S), k.naddr_x), j, v)


# -- the loader's side ------------------------------------------------------------------------

def read_think(src) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int32 [n], xj, xv): ops think_ns (null: 0) as the engine reads it, a batch
    of the column at a time (no 8-byte copy of the column is made)."""
    codes = np.empty(src.n, np.int32)
    xjs, xvs = [], []
    for pos, v, _ in src.column_chunks("think_ns", 0):
        f = np.empty(len(v), np.float64)
        f[:] = v  # the conversion the 8-byte column made (OpsSource.column)
        ok = (f == np.floor(f)) & (f > THINK_X) & (f < 1 << 31) & ~((f == 0) & np.signbit(f))  # -0.0 aside too
        c = codes[pos:pos + len(v)]
        c[:] = np.where(ok, f, 0)
        bad = np.flatnonzero(~ok)
        if len(bad):
            c[bad] = THINK_X
            xjs.append(bad.astype(np.int64) + pos)
            xvs.append(f[bad])
    xj = np.concatenate(xjs) if xjs else np.zeros(0, np.int64)
    xv = np.concatenate(xvs) if xvs else np.zeros(0, np.float64)
    return codes, xj, xv


@njit(cache=True)
def _addr_span(a, arg, fault, base, top):
    """Per key (VMA index + 1, 0 for the rest), the lowest and highest address >= 0."""
    for i in range(a.shape[0]):
        if a[i] >= 0:
            k = arg[i] + 1 if fault[i] and arg[i] >= 0 else 0
            base[k] = min(base[k], a[i])
            top[k] = max(top[k], a[i])


@njit(cache=True)
def _addr_encode(a, arg, fault, base, codes, seg, seg_on, xj, xv, pos):
    """codes[i] (and seg[i]) for a batch; the ops kept aside into xj/xv (from 0);
    returns their count."""
    nx = 0
    for i in range(a.shape[0]):
        x = a[i]
        if x == -1:
            codes[i] = ADDR_UNKNOWN
            continue
        if x >= 0:
            d = x - base[arg[i] + 1 if fault[i] and arg[i] >= 0 else 0]
            lo = d & 0xFFFFFFFF
            hi = d >> 32
            if lo < ADDR_X and (hi == 0 or (seg_on and hi < ADDR_SEGS)):
                codes[i] = lo
                if seg_on:
                    seg[i] = hi
                continue
        codes[i] = ADDR_X
        xj[nx] = pos + i
        xv[nx] = x
        nx += 1
    return nx


def _address_batches(src):
    """ops address as int64 (the 8-byte column's values: null -1), a batch at a time."""
    for pos, v, valid in src.column_chunks("address", 0):
        a = np.empty(len(v), np.int64)
        a[:] = v
        if valid is not None:
            a[~valid] = -1
        yield pos, a


def _empty(n: int, wide=None) -> dict:
    one = np.zeros(1, np.int64)
    return {"op_addr": np.full(max(n, 1), ADDR_UNKNOWN, np.uint32), "op_addr_seg": np.zeros(1, np.uint8),
            "addr_base": one, "addr_xj": one, "addr_xv": one, "op_addr_wide": one if wide is None else wide,
            "addr_wide": int(wide is not None), "addr_seg": 0, "naddr_x": 0}


def read_addresses(src, op_arg, is_fault) -> dict:
    """The address arrays of the engine's state (op_addr, op_addr_seg, addr_base,
    addr_xj, addr_xv, op_addr_wide) and cfg's addr_wide, addr_seg, naddr_x: two passes
    over the column, one for each VMA's lowest and highest fault address, one to encode."""
    n = src.n
    nbase = int(op_arg.max()) + 2 if n else 1
    base = np.full(nbase, np.iinfo(np.int64).max, np.int64)
    top = np.full(nbase, -1, np.int64)
    for pos, a in _address_batches(src):
        sl = slice(pos, pos + len(a))
        _addr_span(a, op_arg[sl], is_fault[sl], base, top)
    # segments where a VMA's faults span 4 GiB or more; the rest (writers, faults without
    # a VMA: their addresses anywhere) beyond 4 GiB of their lowest are kept aside
    seg_on = bool(((top[1:] - base[1:]) >> 32 > 0).any())
    codes = np.empty(n, np.uint32)
    seg = np.zeros(n if seg_on else 1, np.uint8)
    xjs, xvs, total = [], [], 0
    for pos, a in _address_batches(src):
        sl = slice(pos, pos + len(a))
        xj, xv = np.empty(len(a), np.int64), np.empty(len(a), np.int64)
        k = _addr_encode(a, op_arg[sl], is_fault[sl], base, codes[sl], seg[sl] if seg_on else seg, seg_on, xj, xv, pos)
        xjs.append(xj[:k].copy())
        xvs.append(xv[:k].copy())
        total += k
        if total > n // WIDE_FRACTION:
            break
    if total > n // WIDE_FRACTION:  # too many kept aside: the 8-byte column
        del codes, seg, xjs, xvs
        wide = np.empty(n, np.int64)
        for pos, a in _address_batches(src):
            wide[pos:pos + len(a)] = a
        return _empty(0, wide)
    xj = np.concatenate(xjs) if xjs else np.zeros(0, np.int64)
    return {"op_addr": codes, "op_addr_seg": seg, "addr_base": base, "addr_xj": xj,
            "addr_xv": np.concatenate(xvs) if xvs else np.zeros(0, np.int64),
            "op_addr_wide": np.zeros(1, np.int64), "addr_wide": 0, "addr_seg": int(seg_on), "naddr_x": len(xj)}


def no_addresses(n: int) -> dict:
    """Every op's address unknown (-1), n of them (0: none is read)."""
    return _empty(n)


def addr_tuple(A: dict) -> tuple:
    """read_addresses()' arrays as addr_at() takes them."""
    return (A["addr_wide"], A["op_addr_wide"], A["op_addr"], A["addr_seg"], A["op_addr_seg"], A["addr_base"],
            A["addr_xj"], A["addr_xv"], A["naddr_x"])


@njit(cache=True)
def _addr_chunk(A, arg, fault, s, e, out):
    for j in range(s, e):
        out[j - s] = addr_at(A, j, arg[j] if fault[j] else -1)


def addresses(A: dict, op_arg, is_fault, s: int, e: int) -> np.ndarray:
    """Ops s..e's addresses (int64) from read_addresses()' arrays."""
    out = np.empty(e - s, np.int64)
    _addr_chunk(addr_tuple(A), op_arg, is_fault, s, e, out)
    return out
