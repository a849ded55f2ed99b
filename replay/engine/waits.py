"""Per-wait records: each time a simulated thread waits for a lock, when and on what.

``results`` holds an op's total lock wait (``lock_wait_ns``) and its fault path's spin
on shared resources (``resource_wait_ns``); this module records the pieces those totals
are made of, one WAIT record (state.py) each, at the very statement that adds the piece
to the thread's total - so for every op the records of one column, summed in the order
they were made, give that column exactly (tests/test_waits.py).  The places:

* sleeping - sched.wake_at(): from block_at() to the try_to_wake_up() that ends it.  On
  an rw_semaphore (rwsem_down_read_slowpath() / rwsem_down_write_slowpath() sleeping in
  schedule(), kernel/locking/rwsem.c) the mode is the waiter's (``waiter_write``); on
  vm_refcnt, the writer in rcuwait_wait_event() on mm->vma_writer_wait until the readers
  have drained (__vma_enter_locked(), mm/mmap_lock.c, v6.15): the object is the one
  vma.py names in ``thread.wt_obj`` before it sleeps.
* spinning on the owner - rwsem.down_write() in rwsem_optimistic_spin() (until it takes
  the lock or gives up and queues).
* spinning on sem->wait_lock - rwsem.wait_lock_lock(), queued_spin_lock_slowpath() while
  another CPU holds the rwsem's raw spinlock.
* spinning on a fault-path spinlock - faultpath.spin_lock_held() (zone->lock,
  lruvec->lru_lock, the rss counter's lock), and a PTE page's split lock, from
  faultpath.ptl_lock() until the holder's faultpath.ptl_unlock() lets it in: counted in
  ``resource_wait_ns``.

A wait of zero length is not recorded (it adds nothing); a sleep before the op started
(the causal gate of loop._gate(): waiting for the writer that creates the VMA, or for
the faults before a writer) is not a lock wait and the loop drops it from the total, so
it is not recorded either.  Records go to a buffer beside the results' (``glob.nwait``
of them; load.simulate() empties it between chunks, and run_chunk() stops when it
nears full), so memory stays bounded however many waits a run has.
"""

from __future__ import annotations

import numpy as np
from ..jit import internal

from .state import cfg, glob, thread, wrec

# wrec.what: the kind of thing waited on, and what wrec.k then indexes
W_RWSEM = 0  # lock k: 0 the mm's mmap_lock, k > 0 VMA object k - 1's rw_semaphore (pervma's vma_lock)
W_WAIT_LOCK = 1  # lock k's sem->wait_lock (a raw spinlock inside the rw_semaphore)
W_REFCNT = 2  # VMA object k's vm_refcnt: a writer waiting for its readers to drain
W_RES = 3  # fault-path spinlock k (faultpath.py RES; Plan.resource_names)
W_PTL = 4  # PTE page k's split lock (faultpath.py PTL records; named by their key, load.ptl_names)
# wrec.mode: the rwsem's or vm_refcnt's mode; a spinlock has none
M_NONE, M_READ, M_WRITE = -1, 0, 1
# wrec.how: asleep (schedule()) or spinning on a CPU
H_SLEEP, H_SPIN = 0, 1
# glob.err codes (after sched.py's 1-3): the buffer overflowed; a sleep inside an op with
# no lock named for it (a blocking site that forgot its recording hook)
ERR_WAITS_FULL, ERR_WAIT_UNNAMED = 4, 5


@internal
def record(S, t, what, k, mode, how, start, end):
    """Thread t's op waited on (what, k) in ``mode``, ``how``, from start to end (ns)."""
    if not end > start:
        return
    g = glob(S, 0)
    if g.nwait >= cfg(S, 0).wait_cap:
        g.err = ERR_WAITS_FULL
        return
    th = thread(S, t)
    r = wrec(S, g.nwait)
    g.nwait += 1
    r.op = th.op
    r.t = t
    r.cpu = th.cpu
    r.what = what
    r.k = k
    r.mode = mode
    r.how = how
    r.start = start
    r.end = end


@internal
def slept(S, t, k, start, end):
    """sched.wake_at()'s piece of thread.wait: asleep on rwsem k (k >= 0), else on the
    vm_refcnt of the object in ``thread.wt_obj``.  Not before the op started."""
    th = thread(S, t)
    if np.isnan(th.start):  # the causal gate, before the op: not a lock wait
        return
    if k >= 0:
        record(S, t, W_RWSEM, k, M_WRITE if th.waiter_write else M_READ, H_SLEEP, start, end)
    elif th.wt_obj >= 0:
        record(S, t, W_REFCNT, th.wt_obj, M_WRITE, H_SLEEP, start, end)
    elif end > start:
        glob(S, 0).err = ERR_WAIT_UNNAMED
    th.wt_obj = -1
