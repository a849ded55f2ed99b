"""The loader keeps think times and addresses in 4 bytes an op (replay/engine/narrow.py):
each must decode to the number the 8-byte column held, including the values that do not
fit the narrow form (kept aside), and a replay must not depend on which form the
addresses took."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from numba import njit

from replay.engine import load, narrow, replay
from replay.machines import load_machine
from replay.models import get_model

MACHINE = "broadwell-2s"


def odd(ops: pl.DataFrame) -> pl.DataFrame:
    """The sample's ops with the values the narrow form keeps aside: think times outside
    int32 (and INT32_MIN, narrow's marker), a null one; on the VMA with the most faults,
    one 2 TiB above its lowest and one 8 GiB above, one above 2**63 (the loader reads it
    as a negative int64), a null one."""
    ops = ops.sort("op_id")
    f = ops.with_row_index("_i").filter((pl.col("kind") == "fault") & pl.col("address").is_not_null())
    top = f["vma_id"].drop_nulls().mode().sort()[0]  # the VMA with the most faults
    faults = f.filter(pl.col("vma_id") == top).sort("address")["_i"].to_list()  # its faults, lowest address first
    assert len(faults) > 10
    think = ops["think_ns"].to_list()
    for i, v in zip(range(1, 8), (1 << 31, (1 << 31) - 1, -(1 << 31), 1 << 45, None, -5, 7)):
        think[i] = v
    addr = ops["address"].to_list()
    a, b, c, d = odd.faults = faults[3], faults[5], faults[7], faults[9]
    addr[a] = addr[a] + (1 << 41)  # beyond op_addr_seg's 1 TiB
    addr[d] = addr[d] + (1 << 33)  # op_addr_seg 2
    addr[b] = (1 << 63) + 12
    addr[c] = None
    return ops.with_columns(pl.Series("think_ns", think, dtype=pl.Int64),
                            pl.Series("address", addr, dtype=pl.UInt64))


@njit
def _thinks(codes, xj, xv, nx, n):
    out = np.empty(n, np.float64)
    for j in range(n):
        out[j] = narrow.think_at(codes, xj, xv, nx, j)
    return out


def _state(ops):
    return load.load(get_model("v8"), load_machine(MACHINE), 4, ops)[0]


@pytest.mark.parametrize("sample_ops", ["jvm-alloc"], indirect=True)
@pytest.mark.parametrize("from_file", [False, True])
def test_decodes_to_the_8_byte_values(sample_ops, from_file, tmp_path):
    ops = odd(sample_ops)
    src = ops
    if from_file:
        src = tmp_path / "ops.parquet"
        ops.write_parquet(src, row_group_size=7)  # several row groups and batches
        src = str(src)
    st = _state(src)
    n = ops.height
    assert st["op_think"].dtype == np.int32 and len(st["op_think"]) == n
    assert st["op_addr"].dtype == np.uint32 and len(st["op_addr"]) == n and st["cfg"][0]["addr_wide"] == 0
    assert st["cfg"][0]["addr_seg"] == 1 and len(st["op_addr_seg"]) == n
    want_think = ops["think_ns"].fill_null(0).cast(pl.Float64).to_numpy()
    k = st["cfg"][0]
    got = _thinks(st["op_think"], st["think_xj"], st["think_xv"], k["nthink_x"], n)
    assert np.array_equal(got, want_think)
    assert k["nthink_x"] == 3  # 2**31, INT32_MIN, 2**45; 2**31 - 1 fits
    a = ops["address"]
    want_addr = a.fill_null(0).to_numpy().view(np.int64).copy()
    want_addr[a.is_null().to_numpy()] = -1
    is_fault = ops["kind"].cast(pl.Utf8).to_numpy() == "fault"
    A = {x: st[x] for x in ("op_addr", "op_addr_seg", "addr_base", "addr_xj", "addr_xv", "op_addr_wide")}
    A.update(addr_wide=k["addr_wide"], addr_seg=k["addr_seg"], naddr_x=k["naddr_x"])
    got = narrow.addresses(A, st["op_arg"], is_fault, 0, n)
    assert np.array_equal(got, want_addr)
    # kept aside: the two odd faults (not the one 8 GiB up), and only ops measured from base 0 (writers, faults
    # without a VMA); not the null one (ADDR_UNKNOWN), nor any other fault
    xj = set(st["addr_xj"][:k["naddr_x"]].tolist())
    a, b, c, d = odd.faults
    assert {a, b} <= xj and c not in xj and st["op_addr"][c] == narrow.ADDR_UNKNOWN
    assert d not in xj and st["op_addr_seg"][d] == 2
    assert all(not is_fault[j] or st["op_arg"][j] < 0 for j in xj - {a, b})


@pytest.mark.parametrize("sample_ops", ["jvm-alloc"], indirect=True)
def test_narrow_and_wide_addresses_replay_the_same(sample_ops, monkeypatch):
    ops = odd(sample_ops)
    machine = load_machine(MACHINE)

    def run():
        r = replay(ops, get_model("v8"), machine, 4, fault_service="profile")  # the fault path: its PTE locks
        return r.results, r.lock_stats

    narrow_res, narrow_locks = run()
    assert _state(ops)["cfg"][0]["addr_wide"] == 0
    monkeypatch.setattr(narrow, "WIDE_FRACTION", 1 << 62)  # any address kept aside: all 8 bytes
    assert _state(ops)["cfg"][0]["addr_wide"] == 1
    wide_res, wide_locks = run()
    assert narrow_res.equals(wide_res)
    assert narrow_locks.equals(wide_locks)
