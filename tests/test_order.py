"""ingest/order.py: steps back in time per CPU and per thread, across batches."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.ingest.order import TimeOrder


def reference(rows):
    """rows: (seq, ts, cpu, tid) in input order -> seqs that step back on their CPU or thread."""
    last_cpu, last_tid, out = {}, {}, []
    for seq, ts, cpu, tid in rows:
        back = (cpu >= 0 and cpu in last_cpu and ts < last_cpu[cpu]) or (tid in last_tid and ts < last_tid[tid])
        if back:
            out.append(seq)
        if cpu >= 0:
            last_cpu[cpu] = ts
        last_tid[tid] = ts
    return out


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 50), st.integers(-1, 3), st.integers(-1, 3000)), max_size=400),
       cuts=st.lists(st.integers(0, 400), max_size=5))
def test_matches_a_plain_reference_whatever_the_batches(rows, cuts):
    # many distinct tids: the carried table grows several times
    data = [(i + 1, ts, cpu, tid) for i, (ts, cpu, tid) in enumerate(rows)]
    arr = np.array(data, np.int64).reshape(-1, 4)
    o = TimeOrder()
    flagged = []
    for lo, hi in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)]):
        b = arr[lo:hi]
        if len(b):
            back = o.feed(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
            flagged += b[back, 0].tolist()
    want = reference(data)
    assert flagged == want and o.count == len(want) and o.first == want[:TimeOrder.KEEP]


def test_sorted_input_has_no_step_back():
    n = 100_000
    ts = np.arange(n, dtype=np.int64) * 7
    o = TimeOrder()
    o.feed(np.arange(n), ts, (np.arange(n) % 3).astype(np.int64), (np.arange(n) % 5000).astype(np.int64))
    assert o.count == 0 and o.first == []
    # 5,000 threads grew the carried table twice; what it knew survives
    last_of_tid_0 = ts[(np.arange(n) % 5000) == 0][-1]
    o.feed(np.array([n + 1]), np.array([last_of_tid_0 - 1]), np.array([-1]), np.array([0]))
    assert o.count == 1 and o.first == [n + 1]
