-- question: Which simulated CPUs blocked on locks, and when - lock wait per CPU and time bucket (the lock-wait heatmap)?
-- needs: results
-- param run_id: only this run (default: every run)
-- param bucket_ms: bucket width (default 1)
-- column run_id VARCHAR: the run
-- column sim_cpu INTEGER: simulated CPU
-- column bucket_ms DOUBLE: bucket start, simulated ms
-- column ops BIGINT: ops that started on the CPU in the bucket
-- column waited BIGINT: of them, ops that blocked on a lock
-- column lock_wait_us DOUBLE: time those ops spent blocked (an op's whole wait counts in the bucket it started in: results record the total, not when)
-- column line_transfers BIGINT: cache-line transfers the bucket's ops caused on the CPU
-- Buckets where the CPU started no op have no row: they are zero.  Each mm replays
-- on its own from time 0, so the ops of several mms on one CPU add up.
SELECT
    run_id,
    sim_cpu,
    floor(start_ns / 1e6 / coalesce(CAST($bucket_ms AS DOUBLE), 1)) * coalesce(CAST($bucket_ms AS DOUBLE), 1) AS bucket_ms,
    count(*) AS ops,
    count(*) FILTER (WHERE lock_wait_ns > 0) AS waited,
    sum(lock_wait_ns) / 1e3 AS lock_wait_us,
    sum(line_transfers)::BIGINT AS line_transfers
FROM results
WHERE $run_id IS NULL OR run_id = $run_id
GROUP BY run_id, sim_cpu, bucket_ms
ORDER BY run_id, sim_cpu, bucket_ms
