"""The simulation loop alone, for A/B of engine trees on one input (no PMU needed).

    python bench/loop_ab.py dump OPS.parquet MODEL STATE.npz   # the engine state after load()
    python bench/loop_ab.py run TREE STATE.npz [REPS]           # TREE's start + run_chunk on it

``dump`` replays OPS under MODEL on 56 CPUs of broadwell-2s far enough to build the
engine's state (``load.load()``) and saves its arrays.  ``run`` imports only TREE's
``replay/jit.py`` and ``replay/engine/{loop,state,...}.py`` (not polars or pyarrow), loads
run_chunk from TREE's numba cache before timing, and prints the fastest of REPS runs'
thread CPU time (``time.thread_time()`` around the run_chunk calls; results discarded).
A state is valid for every tree with the same state layout (state.py's records).
"""

import sys
import time
import types


def dump(ops, model, dest):
    import numpy as np

    from replay.engine import load, replay
    from replay.machines import load_machine
    from replay.models import get_model

    orig = load.load

    def capture(*a, **k):
        state, _ = orig(*a, **k)
        np.savez(dest, **state.arrays)
        raise SystemExit(0)

    load.load = capture
    replay(ops, get_model(model), load_machine("broadwell-2s"), 56, results_path=dest + ".unused.parquet")


def run(root, path, reps):
    for name, p in [("replay", root + "/replay"), ("replay.engine", root + "/replay/engine")]:
        m = types.ModuleType(name)
        m.__path__ = [p]
        sys.modules[name] = m
    import replay.jit

    replay.jit.use_user_cache()
    import numba
    import numpy as np
    from replay.engine.loop import run_chunk, start
    from replay.engine.state import State

    z = np.load(path)
    best = float("inf")
    for _ in range(reps):
        st = State({k: z[k] for k in z.files})
        start(st.S)
        run_chunk.compile((numba.typeof(st.S),))
        g = st.arrays["g"]
        n, t = 0, time.thread_time()
        while True:
            ended = run_chunk(st.S)
            n += int(g[0]["nout"])
            g["nout"][0] = 0
            g["nwait"][0] = 0
            if ended:
                break
        best = min(best, time.thread_time() - t)
    print(f"{root}: {n} ops, err {int(g[0]['err'])}, simulated {float(g[0]['now']):.0f} ns, "
          f"loop CPU {best:.3f} s (fastest of {reps})")


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "dump":
        sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
        dump(*sys.argv[2:5])
    elif len(sys.argv) >= 4 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 5)
    else:
        raise SystemExit(__doc__)
