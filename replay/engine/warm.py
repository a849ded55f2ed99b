"""Whether the compiled engine is in numba's on-disk cache, and warming it.

A fresh install compiles the engine once (about 15-20 s on our machines); numba then
loads it from the cache in a fraction of a second.  ``replay()`` with ``engine="auto"``
does not make a user wait for that on a small trace: while the cache is cold it replays
with the reference engine (identical results, fast enough below a few hundred
thousand ops) and compiles the engine in a background process for the next run.
"""

from __future__ import annotations

import os
import subprocess
import sys


def is_warm() -> bool:
    """True when numba's cache holds a compiled run_chunk for the current source."""
    from ..jit import is_cached
    from .compiled import run_chunk

    return is_cached(run_chunk)


def start_background() -> None:
    """Compile the engine in a detached process (its output discarded)."""
    try:
        subprocess.Popen([sys.executable, "-m", "replay.engine.warm"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "REPLAY_NO_BACKGROUND_COMPILE": "1"})
    except OSError:
        pass


def compile_now() -> None:
    """Run a two-fault toy through the compiled engine: compiles (and caches) every
    function a replay uses."""
    import polars as pl

    from ..machines import load_machine
    from ..models import get_model
    from .compiled import simulate

    ops = pl.DataFrame({"op_id": [0, 1, 2], "tid": [1, 2, 1], "kind": ["fault", "fault", "munmap"],
                        "vma_id": [1, 1, None], "vma_ids": [None, None, [1]], "vmas_freed": [None, None, [1]],
                        "lock_mode": [None, None, "write"], "think_ns": [0, 0, 0], "kernel": [False, False, False]},
                       schema_overrides={"vma_ids": pl.List(pl.Int64), "vmas_freed": pl.List(pl.Int64)})
    simulate(get_model("v8"), load_machine("broadwell-2s"), 4, ops, sink=lambda r: None)


if __name__ == "__main__":
    compile_now()
