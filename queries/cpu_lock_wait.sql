-- question: Which simulated CPUs blocked on locks, and when - lock wait per CPU and time bucket (the lock-wait heatmap)?
-- needs: results, waits
-- param run_id: only this run (default: every run)
-- param bucket_ms DOUBLE > 0: bucket width (default 1)
-- column run_id VARCHAR: the run
-- column sim_cpu INTEGER: simulated CPU
-- column bucket_ms DOUBLE: bucket start, simulated ms
-- column ops BIGINT: ops that started on the CPU in the bucket
-- column waited BIGINT: ops that were blocked on a lock on the CPU during the bucket (one whose wait spans buckets counts in each)
-- column lock_wait_us DOUBLE: time the CPU's ops spent blocked on locks within the bucket - each wait (the waits table) where it happened, split at the bucket edges; summed over buckets, the results' lock_wait_ns
-- column line_transfers BIGINT: cache-line transfers the ops that started in the bucket caused on the CPU
-- Buckets where the CPU started no op and waited for nothing have no row: they are zero.
-- Each mm replays on its own from time 0, so the ops of several mms on one CPU add up.
-- The fault path's spinlocks (waits counted in resource_wait_ns) are not lock waits
-- here, as they are not in lock_wait_ns.  A run replayed before the engine recorded
-- waits has no waits rows, so no wait here: replay run it again.
WITH p AS (
    SELECT coalesce(CAST($bucket_ms AS DOUBLE), 1) AS ms
),
o AS (  -- ops by the bucket they started in
    SELECT run_id, sim_cpu, floor(start_ns / 1e6 / p.ms) AS i, count(*) AS ops,
           sum(line_transfers)::BIGINT AS line_transfers
    FROM results, p
    WHERE $run_id IS NULL OR run_id = $run_id
    GROUP BY run_id, sim_cpu, i
),
w AS (
    SELECT run_id, sim_cpu, op_id, start_ns, end_ns, p.ms * 1e6 AS b,
           CAST(floor(start_ns / 1e6 / p.ms) AS BIGINT) AS i0, CAST(floor(end_ns / 1e6 / p.ms) AS BIGINT) AS i1
    FROM waits, p
    WHERE counted_in = 'lock_wait_ns' AND ($run_id IS NULL OR run_id = $run_id)
),
piece AS (  -- each wait's part in each bucket it touches
    SELECT run_id, sim_cpu, op_id, i, least(end_ns, (i + 1) * b) - greatest(start_ns, i * b) AS ns
    FROM (SELECT *, unnest(range(i0, i1 + 1)) AS i FROM w)
),
pw AS (
    SELECT run_id, sim_cpu, CAST(i AS DOUBLE) AS i, count(DISTINCT op_id) AS waited, sum(ns) AS ns
    FROM piece
    WHERE ns > 0
    GROUP BY run_id, sim_cpu, i
)
SELECT
    coalesce(o.run_id, pw.run_id) AS run_id,
    coalesce(o.sim_cpu, pw.sim_cpu) AS sim_cpu,
    coalesce(o.i, pw.i) * (SELECT ms FROM p) AS bucket_ms,
    coalesce(o.ops, 0) AS ops,
    coalesce(pw.waited, 0) AS waited,
    coalesce(pw.ns, 0) / 1e3 AS lock_wait_us,
    coalesce(o.line_transfers, 0)::BIGINT AS line_transfers
FROM o FULL JOIN pw ON o.run_id = pw.run_id AND o.sim_cpu = pw.sim_cpu AND o.i = pw.i
ORDER BY run_id, sim_cpu, bucket_ms
