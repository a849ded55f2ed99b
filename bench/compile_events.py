"""The engine's cold compile, by function: run it in a fresh cache directory.

    NUMBA_CACHE_DIR=$(mktemp -d) python bench/compile_events.py [TOP]

Compiles the engine (replay.engine.warm.compile_now) with numba's ``numba:compile`` and
``numba:llvm_lock`` events recorded; prints the process CPU time, how long the LLVM lock
was held, the number of compiles, and the TOP functions by exclusive time (their own
compile less the callees compiled inside it).  Event times are wall time: on a loaded
machine read them as shares.
"""

import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numba.core import event  # noqa: E402


def main(top: int) -> None:
    with event.install_recorder("numba:compile") as rc, event.install_recorder("numba:llvm_lock") as rl:
        t = time.process_time()
        from replay.engine.warm import compile_now

        compile_now()
        total = time.process_time() - t
    excl, n, stack = collections.defaultdict(float), collections.Counter(), []
    for ts, ev in rc.buffer:
        f = ev.data["dispatcher"].py_func
        name = f"{f.__module__.split('.')[-1]}.{f.__qualname__}"
        if ev.is_start:
            stack.append([name, ts, 0.0])
        else:
            nm, t0, child = stack.pop()
            excl[nm] += (ts - t0) - child
            n[nm] += 1
            if stack:
                stack[-1][2] += ts - t0
    llvm, depth = 0.0, []
    for ts, ev in rl.buffer:
        if ev.is_start:
            depth.append(ts)
        else:
            t0 = depth.pop()
            if not depth:
                llvm += ts - t0
    wall = sum(excl.values())
    print(f"process CPU {total:.1f} s; {sum(n.values())} compiles, {wall:.1f} s of wall in them; "
          f"LLVM lock held {llvm:.1f} s ({llvm / max(wall, 1e-9):.0%})")
    for nm, e in sorted(excl.items(), key=lambda x: -x[1])[:top]:
        print(f"{e / max(wall, 1e-9):6.1%}  {nm}" + (f"  x{n[nm]}" if n[nm] > 1 else ""))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
