"""Whether the engine is in numba's on-disk cache, and warming it.

A fresh install compiles the engine once; numba then loads it from its cache
(``$XDG_CACHE_HOME/replay/numba``) in a fraction of a second.  ``replay sweep``
compiles it once here before it starts its workers, so they do not all compile it.
"""

from __future__ import annotations


def is_warm() -> bool:
    """True when numba's cache holds a compiled run_chunk for the current source."""
    from ..jit import is_cached
    from .loop import run_chunk

    return is_cached(run_chunk)


def compile_now() -> None:
    """Run a three-op toy through the engine: compiles (and caches) every function a
    replay uses."""
    import polars as pl

    from ..machines import load_machine
    from ..models import get_model
    from .load import simulate

    ops = pl.DataFrame({"op_id": [0, 1, 2], "tid": [1, 2, 1], "kind": ["fault", "fault", "munmap"],
                        "vma_id": [1, 1, None], "vma_ids": [None, None, [1]], "vmas_freed": [None, None, [1]],
                        "lock_mode": [None, None, "write"], "think_ns": [0, 0, 0], "kernel": [False, False, False]},
                       schema_overrides={"vma_ids": pl.List(pl.Int64), "vmas_freed": pl.List(pl.Int64)})
    simulate(get_model("v8"), load_machine("broadwell-2s"), 4, ops, sink=lambda r: None)


if __name__ == "__main__":
    compile_now()
