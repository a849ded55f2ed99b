"""Compiled line scanners for trace text (perf script, ftrace, trace-cmd report).

One pass over a byte buffer of whole lines classifies every line (event, header,
blank, callchain frame, lost-event record, malformed) and, for events, decodes the
fixed prefix (comm, pid, tid, cpu, timestamp, event name) and the payload's
``key=value`` / ``key: value`` pairs straight into typed columns.  No Python object is
made per line: strings that repeat (comm, event name) leave only a 64-bit FNV-1a hash
and a span, which the caller turns into dictionary columns; payloads are kept as spans
and copied out only where a part of them did not land in a typed column.

Why compiled: a regex-per-line pipeline (polars' Rust regex included) splits the
fixed prefix at ~110 MB/s on our machines, slower than ``perf script`` prints; the
target is 1.5x perf's rate (see bench/ingest.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from replay.jit import internal

# -- line status ---------------------------------------------------------------------
PARSED, HEADER, BLANK, CALLCHAIN, LOST, MALFORMED = 0, 1, 2, 3, 4, 5

# -- scanner dialects ----------------------------------------------------------------
DIALECT_PERF = 0  # `perf script` text: "comm [pid/]tid [cpu] secs.frac: event: payload"
DIALECT_FTRACE = 1  # ftrace trace/trace_pipe and trace-cmd report: "comm-pid [(tgid)] [cpu] [flags] ts: event: payload"

# -- event-name shapes: ftrace's syscall events (sys_mmap(...) / sys_mmap -> ret), and
# lines that print no event name: the function tracer's "func <-parent" and the
# function_graph tracer's "CPU) duration | call" (kernel/trace/trace_output.c,
# trace_fn_trace(); kernel/trace/trace_functions_graph.c, print_graph_*()) ---------
HINT_NONE, HINT_SYS_ENTER, HINT_SYS_EXIT, HINT_FUNCTION, HINT_FUNCGRAPH = 0, 1, 2, 3, 4
# the tracepoint name each nameless shape is kept under (ftrace's own event names for them)
HINT_NAMES = {HINT_FUNCTION: "function", HINT_FUNCGRAPH: "function_graph"}

# -- per-chunk counters the scan returns beside the events (``notes``) ---------------
NOTE_LOST, NOTE_RAW_CLOCK, NNOTES = 0, 1, 2

# -- typed payload fields (row index into the ``vals`` matrix) ------------------------
FIELDS = (
    "address", "ip", "error_code", "mm", "write", "success", "len", "new_len",
    "new_addr", "prot", "flags", "fd", "off", "ret", "next_tid",
)
F = {name: i for i, name in enumerate(FIELDS)}
NFIELDS = len(FIELDS)
F_ADDRESS, F_IP, F_RET = F["address"], F["ip"], F["ret"]
UNMAPPED_BIT = np.int32(1 << 30)  # part of the payload did not land in a typed column

# Payload keys as the kernel's TP_printk formats spell them, mapped to typed fields.
# -1: known and deliberately not stored (memcg_id, a number per boot; syscall number).
# memcg_path (mmap_lock events before memcg_id replaced it) is not in the table: a key
# outside it keeps the payload in ``raw``, so the cgroup path is not lost.
KEY_TO_FIELD = {
    "address": F["address"], "ip": F["ip"], "error_code": F["error_code"],
    # RISC-V page faults as the posted arch/riscv/include/asm/trace/exceptions.h prints
    # them ("user page fault, address=%ps epc=%ps cause=0x%lx"): epc is the faulting pc,
    # cause the scause value; mainline prints scause as error_code (include/trace/events/
    # exceptions.h, used by arch/riscv/mm/fault.c).  ingest/arch.py decodes it.
    "epc": F["ip"], "cause": F["error_code"],
    "mm": F["mm"], "write": F["write"], "success": F["success"],
    # syscalls: mmap(addr,len,prot,flags,fd,off), munmap(addr,len), mprotect(start,len,prot),
    # mremap(addr,old_len,new_len,flags,new_addr), brk(brk), madvise(start,len_in,behavior)
    "addr": F["address"], "start": F["address"], "brk": F["address"],
    "len": F["len"], "len_in": F["len"], "old_len": F["len"],
    "new_len": F["new_len"], "new_addr": F["new_addr"], "prot": F["prot"],
    "flags": F["flags"], "behavior": F["flags"], "fd": F["fd"], "off": F["off"],
    "pgoff": F["off"], "ret": F["ret"],
    "memcg_id": -1, "__syscall_nr": -1,
    # sched_switch ("prev_comm=%s prev_pid=%d prev_prio=%d prev_state=%s ==> next_comm=%s
    # next_pid=%d next_prio=%d", include/trace/events/sched.h): the switched-in task;
    # prev_state is text, taken from the payload (ingest/text.py)
    "next_pid": F["next_tid"],
}
KEY_HEX_ALWAYS = {"mm"}  # ftrace prints the hashed mm pointer as bare hex


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# Keys are looked up through a collision-free 256-slot table (one load and one compare
# per key; a binary search's unpredictable branches cost more than the rest of a line).
_hashes = {k: fnv1a(k.encode()) for k in KEY_TO_FIELD}
KEY_SHIFT = next(s for s in range(57) if len({(h >> s) & 255 for h in _hashes.values()}) == len(_hashes))
KEY_HASH = np.zeros(256, dtype=np.uint64)  # slot -> full hash (0: empty)
KEY_FIELD = np.full(256, -2, dtype=np.int32)
KEY_HEX = np.zeros(256, dtype=np.bool_)
for _k, _h in _hashes.items():
    _slot = (_h >> KEY_SHIFT) & 255
    KEY_HASH[_slot], KEY_FIELD[_slot], KEY_HEX[_slot] = _h, KEY_TO_FIELD[_k], _k in KEY_HEX_ALWAYS
KEY_TABLES = (KEY_HASH, KEY_FIELD, KEY_HEX)


# -- helpers -------------------------------------------------------------------------
@internal(inline=True)
def _hash(buf, s, e):
    h = np.uint64(0xCBF29CE484222325)
    p = np.uint64(0x100000001B3)
    for i in range(s, e):
        h = (h ^ np.uint64(buf[i])) * p
    return h


@internal(inline=True)
def _isdigit(c):
    return 48 <= c <= 57


@internal(inline=True)
def _hexval(c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@internal(inline=True)
def _isspace(c):
    return c == 32 or c == 9 or c == 13


@internal
def _parse_number(buf, s, e, bare_hex):
    """Parse buf[s:e] as 0x-hex, decimal (optionally negative), true/false, or bare hex.

    Returns (ok, value as uint64 bit pattern)."""
    n = e - s
    if n <= 0:
        return False, np.uint64(0)
    if n > 2 and buf[s] == 48 and (buf[s + 1] == 120 or buf[s + 1] == 88):
        v = np.uint64(0)
        if n - 2 > 16:
            return False, v
        for i in range(s + 2, e):
            d = _hexval(buf[i])
            if d < 0:
                return False, v
            v = (v << np.uint64(4)) | np.uint64(d)
        return True, v
    if n == 4 and buf[s] == 116 and buf[s + 1] == 114 and buf[s + 2] == 117 and buf[s + 3] == 101:
        return True, np.uint64(1)
    if n == 5 and buf[s] == 102 and buf[s + 1] == 97 and buf[s + 2] == 108 and buf[s + 3] == 115 and buf[s + 4] == 101:
        return True, np.uint64(0)
    if bare_hex:
        v = np.uint64(0)
        if n > 16:
            return False, v
        for i in range(s, e):
            d = _hexval(buf[i])
            if d < 0:
                return False, v
            v = (v << np.uint64(4)) | np.uint64(d)
        return True, v
    neg = buf[s] == 45
    i = s + 1 if neg else s
    if i >= e or e - i > 20:
        return False, np.uint64(0)
    v = np.uint64(0)
    while i < e:
        c = buf[i]
        if not _isdigit(c):
            return False, np.uint64(0)
        v = v * np.uint64(10) + np.uint64(c - 48)
        i += 1
    if neg:
        v = ~v + np.uint64(1)
    return True, v


@njit(cache=True, nogil=True, inline="always")
def _parse_payload(buf, p, e, r, vals, present, key_hash, key_field, key_hex, bare_hex):
    """Decode ``k=v k=v`` / ``k: v, k: v`` pairs; a lone number is a return value."""
    q = p
    first = True
    mask = present[r]
    while q < e:
        while q < e and (_isspace(buf[q]) or buf[q] == 44):
            q += 1
        if q >= e:
            break
        ks = q
        while q < e and (buf[q] == 95 or _isdigit(buf[q]) or (97 <= buf[q] <= 122) or (65 <= buf[q] <= 90)):
            q += 1
        ke = q
        sep = False
        if ke > ks and q < e and buf[q] == 61:  # '='
            q += 1
            sep = True
        elif ke > ks and q < e and buf[q] == 58 and (q + 1 == e or buf[q + 1] == 32):  # ': '
            q += 1
            while q < e and buf[q] == 32:
                q += 1
            sep = True
        if not sep:
            # not a key: a lone value (syscall exit "0x7f..") or free text
            q = ks
            while q < e and not _isspace(buf[q]) and buf[q] != 44:
                q += 1
            ok = False
            v = np.uint64(0)
            if first:
                ok, v = _parse_number(buf, ks, q, False)
            if ok:
                vals[13, r] = v  # ret
                mask |= np.int32(1 << 13)
            else:
                mask |= UNMAPPED_BIT
            first = False
            continue
        first = False
        vs = q
        while q < e and not _isspace(buf[q]) and buf[q] != 44 and buf[q] != 41:
            q += 1
        h = _hash(buf, ks, ke)
        j = (h >> np.uint64(KEY_SHIFT)) & np.uint64(255)
        if key_hash[j] == h:
            fid = key_field[j]
            if fid >= 0:
                ok, v = _parse_number(buf, vs, q, bare_hex or key_hex[j])
                if ok:
                    vals[fid, r] = v
                    mask |= np.int32(1 << fid)
                else:
                    mask |= UNMAPPED_BIT  # e.g. ip=elf_load (perf resolved a symbol)
        else:
            mask |= UNMAPPED_BIT
        if q < e and buf[q] == 41:
            q += 1
    present[r] = mask


@internal
def _parse_time(buf, s, dot, e):
    """secs[.frac] -> ns; frac of any width (µs from ftrace, ns from --ns/-t).  -1 when
    the time does not fit in int64 ns (past the year 2262): never a wrapped value."""
    sec = np.int64(0)
    for i in range(s, dot):
        if sec > 922337203685477579:  # one more digit would overflow
            return np.int64(-1)
        sec = sec * 10 + (buf[i] - 48)
    if dot >= e:
        return sec  # raw counter clock: keep the integer as is
    frac = np.int64(0)
    nd = 0
    for i in range(dot + 1, e):
        if nd < 9:
            frac = frac * 10 + (buf[i] - 48)
            nd += 1
    while nd < 9:
        frac *= 10
        nd += 1
    if sec > (9223372036854775807 - frac) // 1000000000:
        return np.int64(-1)
    return sec * 1000000000 + frac


@internal
def _starts_with(buf, s, e, lit):
    if e - s < lit.shape[0]:
        return False
    for i in range(lit.shape[0]):
        if buf[s + i] != lit[i]:
            return False
    return True


@internal
def _find(buf, s, e, lit):
    n = lit.shape[0]
    for i in range(s, e - n + 1):
        if buf[i] == lit[0]:
            ok = True
            for k in range(1, n):
                if buf[i + k] != lit[k]:
                    ok = False
                    break
            if ok:
                return i
    return -1


@internal
def _read_uint(buf, s, e):
    """Decimal digits at s -> (value, end); saturates at int64's maximum, never wraps."""
    v = np.int64(0)
    i = s
    while i < e and _isdigit(buf[i]):
        v = v * 10 + (buf[i] - 48) if v <= 922337203685477579 else np.int64(9223372036854775807)
        i += 1
    return v, i


@internal(inline=True)
def _ids_fit(c, pid_v, tid_v):
    """cpu, pid and tid fit their columns (int16, int32): else the prefix is not one."""
    return c <= 32767 and pid_v <= 2147483647 and tid_v <= 2147483647


@internal
def _is_frame(buf, i, e):
    """Callchain frame: indented hex address then a space (``\\t ffffffff81 sym+0x1 (dso)``)."""
    j = i
    while j < e and _hexval(buf[j]) >= 0:
        j += 1
    return j > i and j < e and buf[j] == 32


@njit(cache=True, nogil=True, inline="always")
def _event_and_payload(buf, p, e, r, ev_s, ev_e, ev_h, hint, pay_s, pay_e, vals, present,
                       key_hash, key_field, key_hex, ftrace):
    """Event name at p, then its payload.  Returns False when there is no event name."""
    while p < e and buf[p] == 32:
        p += 1
    es = p
    h = HINT_NONE
    if ftrace and p < e and buf[p] == 60:  # "<stack trace>", "<user stack trace>" (trace_output.c)
        while p < e and buf[p] != 62:
            p += 1
        if p == e:
            return False
        p += 1
        ev_s[r] = es
        ev_e[r] = p
        ev_h[r] = _hash(buf, es, p)
        hint[r] = HINT_NONE
        pay_s[r] = p
        pay_e[r] = p
        return True
    while p < e:
        c = buf[p]
        if c == 58 and (p + 1 == e or buf[p + 1] == 32):  # "name: "
            break
        if ftrace and (c == 40 or c == 32):  # "sys_mmap(" / "sys_mmap -> "
            break
        p += 1
    ee = p
    if ee == es:
        return False
    bare_hex = False
    if p < e and buf[p] == 40:  # ftrace syscall enter: sys_mmap(addr: 0, len: 0x2000, ...)
        h = HINT_SYS_ENTER
        ps = p + 1
        pe = e
        while pe > ps and buf[pe - 1] != 41:
            pe -= 1
        if pe == ps:
            return False
        pe -= 1
        # Older kernels print every argument as bare hex ("len: 2000"); newer ones print
        # 0x-prefixed hex except for values below 10.  No "0x" anywhere: bare is hex.
        bare_hex = _find(buf, ps, pe, np.array([48, 120], np.uint8)) < 0
    elif p < e and buf[p] == 32:
        if p + 3 < e and buf[p + 1] == 45 and buf[p + 2] == 62 and buf[p + 3] == 32:  # " -> "
            h = HINT_SYS_EXIT
            ps = p + 4
            pe = e
        elif p + 2 < e and buf[p + 1] == 60 and buf[p + 2] == 45:  # function tracer: "func <-parent"
            ev_s[r] = es
            ev_e[r] = ee
            ev_h[r] = FUNCTION_HASH
            hint[r] = HINT_FUNCTION
            pay_s[r] = es
            pay_e[r] = e
            present[r] |= UNMAPPED_BIT  # the call and its caller: kept in raw
            return True
        else:
            return False
    elif p < e:  # ':'
        ps = p + 1
        pe = e
    else:  # no "name:" - a line cut short
        return False
    while ps < pe and buf[ps] == 32:
        ps += 1
    ev_s[r] = es
    ev_e[r] = ee
    hv = _hash(buf, es, ee)
    if h == HINT_SYS_ENTER:
        hv ^= np.uint64(0x1111111111111111)
    elif h == HINT_SYS_EXIT:
        hv ^= np.uint64(0x2222222222222222)
    ev_h[r] = hv
    hint[r] = h
    pay_s[r] = ps
    pay_e[r] = pe
    _parse_payload(buf, ps, pe, r, vals, present, key_hash, key_field, key_hex, bare_hex)
    return True


FUNCTION_HASH = np.uint64(fnv1a(b"function") ^ 0x3333333333333333)
FUNCGRAPH_HASH = np.uint64(fnv1a(b"function_graph") ^ 0x3333333333333333)
NO_TASK = np.int32(-2147483648)  # tid of a line that names no task (function_graph output)
NO_TIME = np.int64(-2)  # ts of a line without a timestamp (-1: a time past int64 ns)

LIT_LOST_PERF = np.frombuffer(b"PERF_RECORD_LOST", dtype=np.uint8).copy()
LIT_LOST = np.frombuffer(b"lost ", dtype=np.uint8).copy()
LIT_LOST_FTRACE = np.frombuffer(b"[LOST ", dtype=np.uint8).copy()
LIT_CPU = np.frombuffer(b"CPU", dtype=np.uint8).copy()
LIT_CPUS = np.frombuffer(b"cpus=", dtype=np.uint8).copy()
LIT_VERSION = np.frombuffer(b"version = ", dtype=np.uint8).copy()
LIT_IS_EMPTY = np.frombuffer(b" is empty", dtype=np.uint8).copy()
LIT_UNKNOWN_COMM = np.frombuffer(b"<...>", dtype=np.uint8).copy()


@njit(cache=True, nogil=True, inline="always")
def _perf_line(buf, s, e, r, ts, cpu, pid, tid, comm_s, comm_e, ev_s, ev_e, ev_h, hint,
               pay_s, pay_e, vals, present, lost, key_hash, key_field, key_hex):
    i = s
    while i < e and _isspace(buf[i]):
        i += 1
    if i == e:
        return BLANK
    if buf[s] == 35:  # comments start in column 0; a padded comm may start with '#'
        return HEADER
    # Anchor on the first " secs.frac:" whose left side reads as "comm [pid/]tid [cpu]".
    # comm is at most 15 bytes (TASK_COMM_LEN) and may hold spaces, ':' and '-'.
    k = i + 1
    while k < e:
        if _isdigit(buf[k]) and buf[k - 1] == 32:
            j = k
            while j < e and _isdigit(buf[j]):
                j += 1
            if j < e and buf[j] == 46:
                j2 = j + 1
                while j2 < e and _isdigit(buf[j2]):
                    j2 += 1
                if j2 > j + 1 and j2 < e and buf[j2] == 58 and (j2 + 1 == e or buf[j2 + 1] == 32):
                    # left side: [i, k) minus trailing spaces
                    le = k
                    while le > i and buf[le - 1] == 32:
                        le -= 1
                    c = -1
                    if le > i and buf[le - 1] == 93:  # [cpu]
                        b = le - 2
                        while b >= i and _isdigit(buf[b]):
                            b -= 1
                        if b >= i and buf[b] == 91 and b < le - 2:
                            c, _ = _read_uint(buf, b + 1, le - 1)
                            le = b
                            while le > i and buf[le - 1] == 32:
                                le -= 1
                        else:
                            le = -1
                    if le > i:
                        t = le - 1
                        while t >= i and _isdigit(buf[t]):
                            t -= 1
                        if t >= i and buf[t] == 45:  # -1
                            t -= 1
                        if t < le - 1:
                            tid_v = np.int64(-1) if buf[t + 1] == 45 else _read_uint(buf, t + 1, le)[0]
                            pid_v = np.int64(-2)
                            if t >= i and buf[t] == 47:  # pid/tid
                                u = t - 1
                                while u >= i and _isdigit(buf[u]):
                                    u -= 1
                                if u >= i and buf[u] == 45:
                                    u -= 1
                                if u < t - 1:
                                    pid_v = np.int64(-1) if buf[u + 1] == 45 else _read_uint(buf, u + 1, t)[0]
                                    t = u
                                else:
                                    t = -2
                            if not _ids_fit(c, pid_v, tid_v):
                                return MALFORMED
                            if t == i - 1 or (t >= i and buf[t] == 32):
                                ce = t + 1
                                while ce > i and buf[ce - 1] == 32:
                                    ce -= 1
                                comm_s[r] = i
                                comm_e[r] = ce
                                tid[r] = tid_v
                                pid[r] = pid_v
                                cpu[r] = c
                                ts[r] = _parse_time(buf, k, j, j2)
                                p = j2 + 1
                                while p < e and buf[p] == 32:
                                    p += 1
                                if _starts_with(buf, p, e, LIT_LOST_PERF):
                                    q = _find(buf, p, e, LIT_LOST)
                                    if q >= 0:
                                        lost[0] = _read_uint(buf, q + 5, e)[0]
                                    return LOST
                                # sample period column of non-tracepoint events
                                q = p
                                while q < e and _isdigit(buf[q]):
                                    q += 1
                                if q > p and q < e and buf[q] == 32:
                                    p = q
                                if _event_and_payload(buf, p, e, r, ev_s, ev_e, ev_h, hint, pay_s, pay_e,
                                                      vals, present, key_hash, key_field, key_hex, False):
                                    return PARSED
                                return MALFORMED
                k = j
            else:
                k = j
        else:
            k += 1
    if buf[s] == 9 or buf[s] == 32:
        if _is_frame(buf, i, e):
            return CALLCHAIN
    return MALFORMED


@njit(cache=True, nogil=True, inline="always")
def _ftrace_line(buf, s, e, r, ts, cpu, pid, tid, comm_s, comm_e, ev_s, ev_e, ev_h, hint,
                 pay_s, pay_e, vals, present, lost, key_hash, key_field, key_hex):
    i = s
    while i < e and _isspace(buf[i]):
        i += 1
    if i == e:
        return BLANK
    if buf[s] == 35:  # comments start in column 0; a padded comm may start with '#'
        return HEADER
    if _starts_with(buf, i, e, LIT_CPU):
        q = _find(buf, i, e, LIT_LOST_FTRACE)
        if q >= 0:  # "CPU:1 [LOST 123 EVENTS]"
            lost[0] = _read_uint(buf, q + 6, e)[0]
            return LOST
    # Anchor on the first " [NNN] " whose left side reads as "comm-pid [(tgid)]".
    k = i + 1
    while k < e:
        if buf[k] == 91 and buf[k - 1] == 32:
            b = k + 1
            while b < e and _isdigit(buf[b]):
                b += 1
            if b > k + 1 and b < e and buf[b] == 93:
                c, _ = _read_uint(buf, k + 1, b)
                le = k
                while le > i and buf[le - 1] == 32:
                    le -= 1
                tgid = np.int64(-2)
                ok = True
                if le > i and buf[le - 1] == 41:  # (tgid) or (-------)
                    o = le - 2
                    while o >= i and buf[o] != 40:
                        o -= 1
                    if o < i:
                        ok = False
                    else:
                        a = o + 1
                        while a < le - 1 and buf[a] == 32:
                            a += 1
                        if a < le - 1 and _isdigit(buf[a]):
                            tgid, _ = _read_uint(buf, a, le - 1)
                        le = o
                        while le > i and buf[le - 1] == 32:
                            le -= 1
                d = le - 1
                while d >= i and _isdigit(buf[d]):
                    d -= 1
                if ok and d >= i and d < le - 1 and buf[d] == 45:
                    tid_v, _ = _read_uint(buf, d + 1, le)
                    # after ']': optional irq-info flags, then the timestamp
                    p = b + 1
                    while p < e and buf[p] == 32:
                        p += 1
                    q = p
                    while q < e and buf[q] != 32 and buf[q] != 58:
                        q += 1
                    allnum = q > p and _isdigit(buf[p])
                    for x in range(p, q):
                        if not (_isdigit(buf[x]) or buf[x] == 46):
                            allnum = False
                            break
                    if not allnum and q < e and buf[q] == 32:
                        p = q
                        while p < e and buf[p] == 32:
                            p += 1
                    t0 = p
                    while p < e and _isdigit(buf[p]):
                        p += 1
                    dot = p
                    if p < e and buf[p] == 46:
                        p += 1
                        while p < e and _isdigit(buf[p]):
                            p += 1
                    if p > t0 and p < e and buf[p] == 58 and dot > t0:
                        if not _ids_fit(c, tgid, tid_v):
                            return MALFORMED
                        if dot == p:  # no fraction: a clock that does not count ns (trace_clock counter, x86-tsc, uptime)
                            lost[NOTE_RAW_CLOCK] += 1
                        cs = i
                        if d - i > 15:
                            # longer than any comm (TASK_COMM_LEN - 1): trace-cmd report of
                            # an instance buffer puts "instance: " first
                            q = i
                            while q < d and not (buf[q] == 58 and q + 1 < d and buf[q + 1] == 32):
                                q += 1
                            if q < d:
                                cs = q + 1
                                while cs < d and buf[cs] == 32:
                                    cs += 1
                        if _starts_with(buf, cs, d, LIT_UNKNOWN_COMM) and d - cs == 5:
                            comm_s[r] = -1
                            comm_e[r] = -1
                        else:
                            comm_s[r] = cs
                            comm_e[r] = d
                        tid[r] = tid_v
                        pid[r] = tgid
                        cpu[r] = c
                        ts[r] = _parse_time(buf, t0, dot, p)
                        if _event_and_payload(buf, p + 1, e, r, ev_s, ev_e, ev_h, hint, pay_s, pay_e,
                                              vals, present, key_hash, key_field, key_hex, True):
                            return PARSED
                        return MALFORMED
        k += 1
    # trace-cmd report's preamble: "cpus=2", "version = 6", "CPU 3 is empty"
    if _starts_with(buf, i, e, LIT_CPUS) or _starts_with(buf, i, e, LIT_VERSION) or (
            _starts_with(buf, i, e, LIT_CPU) and _find(buf, i, e, LIT_IS_EMPTY) >= 0):
        return HEADER
    # a stack-trace frame: " => func" after "<stack trace>", " =>  <00007f..>" after
    # "<user stack trace>" (trace_output.c, trace_stack_print()/trace_user_stack_print())
    if i > s and i + 2 < e and buf[i] == 61 and buf[i + 1] == 62 and buf[i + 2] == 32:
        return CALLCHAIN
    if _funcgraph_line(buf, s, i, e, r, ts, cpu, pid, tid, comm_s, comm_e, ev_s, ev_e, ev_h, hint, pay_s, pay_e,
                       present):
        return PARSED
    return MALFORMED


@internal
def _funcgraph_line(buf, s, i, e, r, ts, cpu, pid, tid, comm_s, comm_e, ev_s, ev_e, ev_h, hint, pay_s, pay_e,
                    present):
    """A function_graph tracer line (trace_functions_graph.c): `` 3)   4.429 us    |  func();``,
    `` 2)               |  /* event: payload */``, `` 0)  bash-1 =>  sshd-2``, optionally
    after an absolute time (``funcgraph-abstime``: ``  2616.730120 |   2)  ...``), or a
    ``------`` separator.  It names no task and (mostly) no time: an ``other`` event on
    its CPU, its text in raw."""
    j = i
    c = np.int64(-1)
    if j < e and _isdigit(buf[j]):
        v, j = _read_uint(buf, j, e)
        if j < e and buf[j] == 46:  # funcgraph-abstime: "secs.usecs |"
            j += 1
            while j < e and _isdigit(buf[j]):
                j += 1
            while j < e and buf[j] == 32:
                j += 1
            if not (j < e and buf[j] == 124):
                return False
            j += 1
            while j < e and buf[j] == 32:
                j += 1
            if not (j < e and _isdigit(buf[j])):
                return False
            v, j = _read_uint(buf, j, e)
        if not (j < e and buf[j] == 41 and v <= 32767):  # "N)"
            return False
        c = v
    else:
        j = i
        while j < e and buf[j] == 45:
            j += 1
        if j - i < 8 or j != e:  # the context-switch separator: a row of dashes
            return False
    ts[r] = NO_TIME
    cpu[r] = c
    tid[r] = NO_TASK
    comm_s[r] = -1
    comm_e[r] = -1
    ev_s[r] = i
    ev_e[r] = i
    ev_h[r] = FUNCGRAPH_HASH
    hint[r] = HINT_FUNCGRAPH
    pay_s[r] = i
    pay_e[r] = e
    present[r] = UNMAPPED_BIT
    return True


@njit(cache=True, nogil=True, inline="always")
def _line_start(buf, starts, ends, r, k, present, pid, cpu, lost):
    s = starts[r]
    e = ends[r]
    if e > s and buf[e - 1] == 13:
        e -= 1
    present[k] = 0
    pid[k] = -2
    cpu[k] = -1
    lost[0] = 0
    return s, e


@njit(cache=True, nogil=True, inline="always")
def _line_done(buf, st, r, k, seq, ev_h, comm_s, comm_e, comm_h):
    """Bookkeeping after a line: returns the next event slot."""
    if st == PARSED:
        seq[k] = r
        ev_h[k] |= np.uint64(1)  # 0 is the interning table's empty slot
        if comm_s[k] < 0:
            comm_h[k] = np.uint64(0)  # unknown comm (ftrace "<...>")
        else:
            comm_h[k] = _hash(buf, comm_s[k], comm_e[k]) | np.uint64(1)
        return k + 1
    return k


# One compiled loop per dialect, so that a first run compiles only the one it needs.
@njit(cache=True, nogil=True)
def scan_perf_lines(buf, starts, ends, status, seq, ts, cpu, pid, tid, comm_s, comm_e, comm_h,
                    ev_s, ev_e, ev_h, hint, pay_s, pay_e, vals, present, key_hash, key_field, key_hex):
    k = 0
    lost = np.zeros(NNOTES, np.int64)
    lost_total = 0
    for r in range(starts.shape[0]):
        s, e = _line_start(buf, starts, ends, r, k, present, pid, cpu, lost)
        st = _perf_line(buf, s, e, k, ts, cpu, pid, tid, comm_s, comm_e, ev_s, ev_e, ev_h, hint,
                        pay_s, pay_e, vals, present, lost, key_hash, key_field, key_hex)
        status[r] = st
        k = _line_done(buf, st, r, k, seq, ev_h, comm_s, comm_e, comm_h)
        lost_total += lost[0]
    return k, lost_total, lost[NOTE_RAW_CLOCK]


@njit(cache=True, nogil=True)
def scan_ftrace_lines(buf, starts, ends, status, seq, ts, cpu, pid, tid, comm_s, comm_e, comm_h,
                      ev_s, ev_e, ev_h, hint, pay_s, pay_e, vals, present, key_hash, key_field, key_hex):
    k = 0
    lost = np.zeros(NNOTES, np.int64)
    lost_total = 0
    for r in range(starts.shape[0]):
        s, e = _line_start(buf, starts, ends, r, k, present, pid, cpu, lost)
        st = _ftrace_line(buf, s, e, k, ts, cpu, pid, tid, comm_s, comm_e, ev_s, ev_e, ev_h, hint,
                          pay_s, pay_e, vals, present, lost, key_hash, key_field, key_hex)
        status[r] = st
        k = _line_done(buf, st, r, k, seq, ev_h, comm_s, comm_e, comm_h)
        lost_total += lost[0]
    return k, lost_total, lost[NOTE_RAW_CLOCK]


def scanner(dialect: int):
    """The compiled scan loop of a dialect (one per dialect: halves the first compile)."""
    return scan_perf_lines if dialect == DIALECT_PERF else scan_ftrace_lines


def scan_lines(buf, starts, ends, dialect, *arrays):
    """Scan every line ``buf[starts[r]:ends[r]]`` into ``status[r]``; events are packed
    densely into the per-event arrays (slot k holds line ``seq[k]``).

    Returns (number of events, lost events reported by lost-event records, lines whose
    timestamp has no fraction - a trace clock that does not count time)."""
    return scanner(dialect)(buf, starts, ends, *arrays)


@njit(cache=True, nogil=True)
def intern(hashes, out, start, tab_h, tab_c, ncodes, new_rows):
    """Map hashes[start:] to dense codes in ``out`` through an open-addressing table that
    persists across chunks; hash 0 maps to -1 (null).  New codes' first rows go to
    ``new_rows``.  Stops when the table is half full: returns (next row, ncodes, nnew)."""
    mask = np.uint64(tab_h.shape[0] - 1)
    nnew = 0
    for i in range(start, hashes.shape[0]):
        if 2 * ncodes >= tab_h.shape[0]:
            return i, ncodes, nnew
        h = hashes[i]
        if h == 0:
            out[i] = -1
            continue
        j = (h ^ (h >> np.uint64(29))) & mask
        while True:
            if tab_h[j] == h:
                out[i] = tab_c[j]
                break
            if tab_h[j] == 0:
                tab_h[j] = h
                tab_c[j] = ncodes
                new_rows[nnew] = i
                nnew += 1
                out[i] = ncodes
                ncodes += 1
                break
            j = (j + np.uint64(1)) & mask
    return hashes.shape[0], ncodes, nnew


@njit(cache=True, nogil=True)
def split_lines(buf, starts, ends):
    """Line spans of ``buf`` (the last line may lack its newline)."""
    k = 0
    s = 0
    for i in range(buf.shape[0]):
        if buf[i] == 10:
            starts[k] = s
            ends[k] = i
            k += 1
            s = i + 1
    if s < buf.shape[0]:
        starts[k] = s
        ends[k] = buf.shape[0]
        k += 1
    return k


@njit(cache=True, nogil=True)
def gather(buf, starts, ends, rows):
    """Copy the spans of ``rows`` into one contiguous buffer; return (data, offsets)."""
    n = rows.shape[0]
    offs = np.empty(n + 1, np.int64)
    offs[0] = 0
    tot = 0
    for k in range(n):
        r = rows[k]
        tot += ends[r] - starts[r]
        offs[k + 1] = tot
    out = np.empty(tot, np.uint8)
    for k in range(n):
        r = rows[k]
        o = offs[k]
        for i in range(starts[r], ends[r]):
            out[o] = buf[i]
            o += 1
    return out, offs


@njit(cache=True, nogil=True)
def sample_payloads(buf, ev_s, pay_s, pay_e, rows, vals, present, period):
    """perf script lines of sampled software events (``page-faults``): the payload is
    ``ADDR IP [sym (dso)]`` in bare hex - ``addr`` and ``ip`` as tools/perf/builtin-script.c
    prints them (perf_sample__fprintf_addr() before the ip) - and the sample period
    stands before the event name.  For each row in ``rows``: the two leading hex words
    become address and ip (one word alone is the ip: perf's default fields have no
    addr), and ``period[k]`` the period (0 when the line shows none)."""
    for k in range(rows.shape[0]):
        r = rows[k]
        mask = present[r] & ~np.int32((1 << F_RET) | (1 << F_ADDRESS) | (1 << F_IP))
        words = 0
        w0 = np.uint64(0)
        w1 = np.uint64(0)
        q = pay_s[r]
        e = pay_e[r]
        while q < e and words < 2:
            while q < e and _isspace(buf[q]):
                q += 1
            ws = q
            while q < e and not _isspace(buf[q]):
                q += 1
            if q == ws:
                break
            ok, v = _parse_number(buf, ws, q, True)
            if not ok:
                break
            if words == 0:
                w0 = v
            else:
                w1 = v
            words += 1
        if words == 2:
            vals[F_ADDRESS, r] = w0
            vals[F_IP, r] = w1
            mask |= np.int32((1 << F_ADDRESS) | (1 << F_IP))
        elif words == 1:
            vals[F_IP, r] = w0
            mask |= np.int32(1 << F_IP)
        present[r] = mask
        # "...: 1 page-faults:": the digits before the event name
        b = ev_s[r] - 1
        while b > 0 and buf[b] == 32:
            b -= 1
        t = b
        while t >= 0 and _isdigit(buf[t]):
            t -= 1
        p = np.int64(0)
        if t < b and t >= 0 and buf[t] == 32:
            p, _ = _read_uint(buf, t + 1, b + 1)
        period[k] = p
