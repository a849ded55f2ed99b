-- question: When in the replay did contention and fallbacks happen - per time bucket?
-- needs: results
-- param run_id: only this run (default: every run)
-- param bucket_ms DOUBLE > 0: bucket width (default 1)
-- column run_id VARCHAR: the run
-- column bucket_ms DOUBLE: bucket start, simulated ms
-- column faults BIGINT: faults that started in the bucket
-- column fallbacks BIGINT: of them, faults that took the mmap_lock path
-- column writers BIGINT: address-space writers that started in the bucket
-- column lock_wait_ms DOUBLE: time the bucket's ops spent blocked on locks
-- column fallback_pct DOUBLE: 100 * fallbacks / faults
SELECT
    run_id,
    floor(start_ns / 1e6 / coalesce(CAST($bucket_ms AS DOUBLE), 1)) * coalesce(CAST($bucket_ms AS DOUBLE), 1) AS bucket_ms,
    count(*) FILTER (WHERE kind = 'fault') AS faults,
    count(*) FILTER (WHERE kind = 'fault' AND fallback) AS fallbacks,
    count(*) FILTER (WHERE kind <> 'fault') AS writers,
    sum(lock_wait_ns) / 1e6 AS lock_wait_ms,
    100.0 * count(*) FILTER (WHERE kind = 'fault' AND fallback) / nullif(count(*) FILTER (WHERE kind = 'fault'), 0) AS fallback_pct
FROM results
WHERE $run_id IS NULL OR run_id = $run_id
GROUP BY run_id, bucket_ms
ORDER BY run_id, bucket_ms
