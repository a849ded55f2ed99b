"""A straightforward line-by-line Python parser of `perf script` text: the baseline.

This is what one writes first: a regular expression per line for the fixed prefix,
a second for the payload's key/value pairs, ints parsed with int(x, 0), rows appended
to Python lists, then one Parquet file.  bench/ingest.py measures replay's ingester
against it on the same input.
"""

from __future__ import annotations

import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq

LINE = re.compile(r"^\s*(.*?)\s+(?:(-?\d+)/)?(-?\d+)\s+\[(\d+)\]\s+(\d+)\.(\d+):\s+(\S+):\s*(.*)$")
PAIR = re.compile(r"(\w+)(?:=|: )([^\s,]+)")
INT_FIELDS = ("address", "ip", "error_code", "mm", "addr", "start", "len", "len_in", "prot",
              "flags", "fd", "off", "behavior", "old_len", "new_len", "new_addr", "brk")


def parse(path: str, out: str) -> int:
    cols: dict[str, list] = {k: [] for k in ("seq", "ts_ns", "cpu", "pid", "tid", "comm", "event", "write", "success", "ret", *INT_FIELDS)}
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            m = LINE.match(line)
            if not m:
                continue
            comm, pid, tid, cpu, sec, frac, event, payload = m.groups()
            row = dict.fromkeys(cols)
            row.update(seq=no, ts_ns=int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), cpu=int(cpu),
                       pid=int(pid) if pid else None, tid=int(tid), comm=comm, event=event)
            pairs = PAIR.findall(payload)
            if not pairs and payload.strip():
                ret = int(payload.strip(), 0)  # a long: 0xfffffffffffffff4 is -ENOMEM
                row["ret"] = ret - (1 << 64) if ret >= 1 << 63 else ret
            for k, v in pairs:
                if k in ("write", "success"):
                    row[k] = v == "true"
                elif k in cols:
                    try:
                        row[k] = int(v, 16) if k == "mm" else int(v, 0)
                    except ValueError:
                        pass
            for k, v in row.items():
                cols[k].append(v)
    n = len(cols["seq"])
    for k in INT_FIELDS:  # values above 2**63 (kernel pointers) do not fit int64
        cols[k] = pa.array(cols[k], pa.uint64())
    pq.write_table(pa.table(cols), out, compression="zstd")
    return n


if __name__ == "__main__":
    print(parse(sys.argv[1], sys.argv[2]))
