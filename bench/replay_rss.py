"""Where a replay's memory goes: replay an ops file under v8 on broadwell-2s (56 CPUs),
results streamed to RESULTS (and waits.parquet beside it), with VmRSS sampled every
20 ms from /proc/self/status together with the main thread's innermost replay/ frames;
prints the RSS timeline by function (spans of 0.1 s and more, and every sample within
a fifth of the peak), the peak sample's frames, and VmHWM.

    python bench/replay_rss.py OPS.parquet RESULTS.parquet

(tracemalloc does not see numpy's and Arrow's buffers; RSS does.)  A 50 M-op ops file:
bench/engine.py's make_trace() and repeat_ops(), as its memory step makes one.
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def rss():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":"); d[k] = int(v.split()[0]) // 1024
    return d

samples = []
main_id = threading.main_thread().ident
stop = False
def sampler():
    while not stop:
        f = sys._current_frames().get(main_id)
        where = []
        while f is not None:
            fn = f.f_code.co_filename
            if "/replay/" in fn:
                where.append(f"{os.path.basename(fn)}:{f.f_code.co_name}:{f.f_lineno}")
            f = f.f_back
        samples.append((time.perf_counter(), rss()["VmRSS"], where[:3]))
        time.sleep(0.02)

threading.Thread(target=sampler, daemon=True).start()
from replay.engine import replay
from replay.machines import load_machine
from replay.models import get_model
t = time.perf_counter()
r = replay(sys.argv[1], get_model("v8"), load_machine("broadwell-2s"), 56, results_path=sys.argv[2])
stop = True
time.sleep(0.05)
wall = time.perf_counter() - t
# collapse: consecutive samples with the same innermost frame function
segs = []
for ts, m, w in samples:
    key = " < ".join(x.rsplit(":", 1)[0] for x in w[:2]) or "-"
    if segs and segs[-1][0] == key:
        segs[-1][2] = max(segs[-1][2], m); segs[-1][3] = ts
    else:
        segs.append([key, ts, m, ts])
for k, a, m, b in segs:
    if b - a >= 0.1 or m > 0.8 * max(s[1] for s in samples):
        print(f"{a - t:8.1f}-{b - t:8.1f}s  max {m:6,} MB  {k}")
top = max(samples, key=lambda s: s[1])
print("peak sample", top[1], "MB at", top[2])
print(json.dumps({"ops": r.totals.ops, "wall_s": round(wall, 1), **rss()}))
