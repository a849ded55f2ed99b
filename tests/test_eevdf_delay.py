"""DELAY_DEQUEUE and DELAY_ZERO (replay/engine/sched.py dequeue(), enqueue(), _pick_next(),
_finish_delayed(); kernel/sched/fair.c, 6.18: dequeue_entity(), requeue_delayed_entity(),
finish_delayed_dequeue_entity(); both features on in kernel/sched/features.h).

One CPU's cfs_rq set by hand - zero_vruntime 0, every weight 1 - and the scheduler's own
functions called on it, so each number below is checked with a pencil:

* a task that goes to sleep ineligible (vruntime past the average) is not dequeued: it
  stays in the tree, ``sched_delayed``, still counted in the average (DELAY_DEQUEUE);
* one that goes to sleep eligible leaves, its lag kept (update_entity_lag());
* a delayed task woken once the others have run past it has a positive lag, which is
  dropped: it is placed at the average, not before it (DELAY_ZERO in
  requeue_delayed_entity());
* a delayed task the pick chooses is dequeued then (pick_next_entity() ->
  dequeue_entities(DEQUEUE_DELAYED)), its positive lag clipped to 0
  (finish_delayed_dequeue_entity()), and the pick is made again.
"""

from replay.engine import sched

from engine_harness import SLOW, Replay


def _cfs(vruntimes: dict, curr: int | None):
    """Three threads (tids 1-3) on one CPU: ``vruntimes`` {tid: ns} in the tree and queued
    (rq list), ``curr`` the running one (None: the CPU is idle); returns (r, t of tid)."""
    rows = [{"op_id": i, "tid": tid, "kind": "fault", "vma_id": 1, "kernel": False, "think_ns": 0}
            for i, tid in enumerate([1, 2, 3])]
    r = Replay("mainline", SLOW, 1, rows)
    t = {tid: r.t(tid) for tid in (1, 2, 3)}
    q = r.state["cpus"][0]
    q["zero_vruntime"] = q["sum_w_vruntime"] = q["sum_weight"] = 0
    q["busy"], q["rq_head"], q["rq_tail"], q["dl_head"] = -1, -1, -1, -1
    slice_ns = int(r.state["cfg"][0]["slice_ns"])
    for tid in (1, 2, 3):
        th = r.thread(tid)
        assert th["cpu"] == 0
        th["vruntime"] = vruntimes.get(tid, 0)
        th["deadline"] = th["vruntime"] + slice_ns
        th["vlag"] = 0
        th["sched_delayed"] = False
        th["in_rq"] = False
        th["ran_at"] = 0.0
    for tid in vruntimes:
        if tid == curr:
            continue
        th = r.thread(tid)
        th["in_rq"], th["rq_next"] = True, -1
        if q["rq_head"] < 0:
            q["rq_head"] = t[tid]
        else:
            r.state["th"][q["rq_tail"]]["rq_next"] = t[tid]
        q["rq_tail"] = t[tid]
        sched._tree_add(r.S, 0, t[tid])
    if curr is not None:
        q["busy"] = t[curr]
    return r, t


def test_an_ineligible_task_going_to_sleep_stays_in_the_tree_delayed():
    # tid 1 queued at 0, tid 2 at 3,000 and running: the average is 1,500, tid 2 is past it
    r, t = _cfs({1: 0, 2: 3_000}, curr=2)
    sched.dequeue(r.S, t[2], 0.0)
    q = r.state["cpus"][0]
    assert r.thread(2)["sched_delayed"] and q["dl_head"] == t[2]
    assert q["sum_weight"] == 2 and q["sum_w_vruntime"] == 3_000, "still in the tree, counted in the average"
    q["busy"] = -1  # it has left its CPU
    assert sched.avg_vruntime(r.S, 0) == 1_500
    # the pick passes over it (ineligible) for tid 1, and it stays delayed
    assert sched._pick_next(r.S, 0, -1, False, -1) == t[1]
    assert r.thread(2)["sched_delayed"]


def test_an_eligible_task_going_to_sleep_leaves_with_its_lag():
    # tid 1 queued at 3,000, tid 2 at 1,000 and running: average 2,000, tid 2 eligible
    r, t = _cfs({1: 3_000, 2: 1_000}, curr=2)
    sched.dequeue(r.S, t[2], 0.0)
    q = r.state["cpus"][0]
    assert not r.thread(2)["sched_delayed"] and q["dl_head"] == -1
    assert q["sum_weight"] == 1, "only tid 1 in the tree"
    assert r.thread(2)["vlag"] == 1_000  # avg_vruntime() 2,000 - 1,000


def test_a_delayed_task_woken_with_a_positive_lag_is_placed_at_the_average():
    r, t = _cfs({1: 0, 2: 3_000}, curr=2)
    sched.dequeue(r.S, t[2], 0.0)  # delayed, as above
    q = r.state["cpus"][0]
    # tid 1 takes the CPU and runs to vruntime 6,000: the average is (3,000 + 6,000) / 2 =
    # 4,500, so tid 2's lag is now +1,500
    q["busy"] = t[1]
    sched.take(r.S, t[1], 0.0)
    r.thread(1)["vruntime"] = 6_000
    sched.enqueue(r.S, 0, t[2], 0.0)  # woken: requeue_delayed_entity()
    th = r.thread(2)
    assert not th["sched_delayed"] and q["dl_head"] == -1
    assert th["vlag"] == 0, "DELAY_ZERO: the positive lag dropped"
    assert th["vruntime"] == 6_000, "placed at the average without it (only curr, 6,000), not at 3,000"
    assert q["sum_weight"] == 1 and q["sum_w_vruntime"] == th["vruntime"] - q["zero_vruntime"]


def test_a_delayed_task_woken_with_a_negative_lag_keeps_its_place():
    r, t = _cfs({1: 0, 2: 3_000}, curr=2)
    sched.dequeue(r.S, t[2], 0.0)
    q = r.state["cpus"][0]
    q["busy"] = t[1]
    sched.take(r.S, t[1], 0.0)
    r.thread(1)["vruntime"] = 1_000  # average (3,000 + 1,000) / 2 = 2,000: lag -1,000
    sched.enqueue(r.S, 0, t[2], 0.0)
    th = r.thread(2)
    assert not th["sched_delayed"]
    assert th["vruntime"] == 3_000 and th["vlag"] == -1_000, "not re-placed; its lag as update_entity_lag() left it"
    assert q["sum_weight"] == 1


def test_a_delayed_task_picked_is_dequeued_with_its_positive_lag_clipped():
    # tid 3 goes to sleep at 12,000 with tids 1 (6,000) and 2 (9,000) queued: average 9,000,
    # ineligible - delayed
    r, t = _cfs({1: 6_000, 2: 9_000, 3: 12_000}, curr=3)
    q = r.state["cpus"][0]
    sched.dequeue(r.S, t[3], 0.0)
    q["busy"] = -1
    assert r.thread(3)["sched_delayed"]
    # tid 1 runs to 21,000 and is put back: average (21,000 + 9,000 + 12,000) / 3 = 14,000,
    # tid 3 now eligible with lag +2,000; tid 2's request was renewed once (deadline one
    # slice later), so tid 3's is the earliest deadline of the eligible
    q["busy"] = t[1]
    sched.take(r.S, t[1], 0.0)
    r.thread(1)["vruntime"] = 21_000
    sched._tree_add(r.S, 0, t[1])
    q["busy"] = -1
    slice_ns = int(r.state["cfg"][0]["slice_ns"])
    r.thread(2)["deadline"] = 9_000 + 2 * slice_ns
    # the pick takes tid 3, dequeues it (lag clipped to 0) and picks again: average of
    # 21,000 and 9,000 is 15,000 - tid 2
    assert sched._pick_next(r.S, 0, -1, False, -1) == t[2]
    th = r.thread(3)
    assert not th["sched_delayed"] and q["dl_head"] == -1
    assert th["vlag"] == 0, "finish_delayed_dequeue_entity(): the positive lag (+2,000) clipped"
    assert q["sum_weight"] == 2, "tid 3 left the tree"
