"""What makes one replay of a trace differ from another, as runs of a benchmark do:
the seed.

A fixed service time and a common start put every thread in lockstep - at 4-7 threads a
v8 get/put pair on one vm_refcnt line then costs about one transfer per fault, where
real runs pay two - so each fault's handle_mm_fault() time is drawn from a
distribution, and the threads leave their start barrier in a random order:

* a fault's own recorded time (ops ``service_ns``, replay/ops.py), where the trace has
  one and the service comes from the trace (``recorded_service``): exactly that, no
  draw - it is this fault's measurement, not a sample of a distribution, so replaying
  it as recorded is what "from the trace" means, and it keeps the run a pure function
  of trace, model, machine and seed;
* ``SERVICE_SAMPLES`` - the trace's own: the mmap_lock holds of the faults it shows
  falling back (engine.service_for), resampled (a bootstrap draw per fault);
* ``SERVICE_LOGNORMAL`` - around the profile's figure (median ``fault_service_ns``,
  log-spread ``service_sigma``), where the trace has too few holds;
* ``SERVICE_CONSTANT`` - a number given on the command line: always that.

Threads start as pft's do after its barrier: the last thread to arrive wakes the
others with one futex_wake(), which wakes them one after another, so thread i starts
``rank_i * barrier_wake_ns`` late in a seeded random order (the rank drawn uniformly:
each thread's offset is uniform over [0, nthreads * barrier_wake_ns)).

Draws are counter-based (splitmix64 of seed, stream and op or thread index), so a
fault's draw does not depend on the order events run in, the result chunk size, or
anything but the seed: the same seed reproduces a run bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from ..jit import internal

from .state import cfg, op_service, service_samples

SERVICE_CONSTANT, SERVICE_SAMPLES, SERVICE_LOGNORMAL = 0, 1, 2
# est.: one try_to_wake_up() in a wake_up_q() loop (kernel/sched/core.c), the waker's time
# per task it wakes, one after another: futex_wake() (kernel/futex/waitwake.c) empties its
# wake_q so at the barrier, and so do the rwsem's wake-ups (rwsem.wake_up_q(): cfg.wake_q_ns)
BARRIER_WAKE_NS = 1000.0
STREAM_SERVICE, STREAM_NORMAL, STREAM_START = 1, 2, 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAM = np.uint64(0xD1B54A32D192ED03)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@internal(inline=True)
def _mix(x):
    """splitmix64's finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom
    number generators", OOPSLA 2014)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@internal
def uniform(seed, stream, i):
    """A uniform draw in (0, 1), a pure function of (seed, stream, i)."""
    x = _mix(np.uint64(seed) * _GOLDEN + np.uint64(stream) * _STREAM + np.uint64(i))
    return (float(x >> _S11) + 0.5) * (1.0 / 9007199254740992.0)


@internal
def fault_service(S, j):
    """handle_mm_fault()'s time for the fault that is op j."""
    k = cfg(S, 0)
    if k.recorded_service:
        d = op_service(S)[j]
        if d == d:  # not NaN: the fault's own time
            return d
    if k.service_mode == SERVICE_SAMPLES:
        n = k.nsamples
        return service_samples(S)[min(n - 1, int(uniform(k.seed, STREAM_SERVICE, j) * n))]
    if k.service_mode == SERVICE_LOGNORMAL:  # Box-Muller
        u1 = uniform(k.seed, STREAM_SERVICE, j)
        u2 = uniform(k.seed, STREAM_NORMAL, j)
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        return k.fault_service_ns * math.exp(k.service_sigma * z)
    return k.fault_service_ns


@internal
def start_offset(S, t):
    """How late thread t leaves the start barrier."""
    k = cfg(S, 0)
    return uniform(k.seed, STREAM_START, t) * k.nthreads * k.barrier_wake_ns
