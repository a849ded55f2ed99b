-- question: How did the simulated faults fare on the per-VMA lock - success, abort, retry, miss, fallback - per run, per VMA and per thread?
-- needs: results
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column level VARCHAR: run, vma or thread: what the row totals
-- column vma_id BIGINT: the VMA (level vma)
-- column tid INTEGER: the thread (level thread)
-- column faults BIGINT: faults, each counted once however many attempts it made
-- column faults_success BIGINT: faults whose last per-VMA attempt succeeded
-- column faults_abort BIGINT: faults that gave up on the VMA lock (VMA_LOCK_ABORT) and took mmap_lock
-- column faults_retry BIGINT: faults that returned VM_FAULT_RETRY under the VMA lock (VMA_LOCK_RETRY)
-- column faults_miss BIGINT: faults whose last attempt found the VMA detached (VMA_LOCK_MISS)
-- column faults_fallback BIGINT: faults that took the mmap_lock path (abort or retry)
-- column vma_lock_attempts BIGINT: per-VMA lock attempts, a miss's re-walk counted again
-- column fallback_pct_of_faults DOUBLE: 100 * faults_fallback / faults
-- column abort_pct_of_faults DOUBLE: 100 * faults_abort / faults
-- column miss_pct_of_attempts DOUBLE: 100 * (vma_lock_attempts - faults with an attempt) / vma_lock_attempts
WITH f AS (SELECT * FROM results WHERE kind = 'fault' AND ($run_id IS NULL OR run_id = $run_id))
SELECT
    run_id,
    CASE WHEN grouping(vma_id) = 0 THEN 'vma' WHEN grouping(tid) = 0 THEN 'thread' ELSE 'run' END AS level,
    vma_id,
    tid,
    count(*) AS faults,
    count(*) FILTER (WHERE outcome = 'success') AS faults_success,
    count(*) FILTER (WHERE outcome = 'abort') AS faults_abort,
    count(*) FILTER (WHERE outcome = 'retry') AS faults_retry,
    count(*) FILTER (WHERE outcome = 'miss') AS faults_miss,
    count(*) FILTER (WHERE fallback) AS faults_fallback,
    sum(attempts)::BIGINT AS vma_lock_attempts,
    100.0 * count(*) FILTER (WHERE fallback) / count(*) AS fallback_pct_of_faults,
    100.0 * count(*) FILTER (WHERE outcome = 'abort') / count(*) AS abort_pct_of_faults,
    100.0 * (sum(attempts) - count(*) FILTER (WHERE attempts > 0)) / nullif(sum(attempts), 0) AS miss_pct_of_attempts
FROM f
GROUP BY GROUPING SETS ((run_id), (run_id, vma_id), (run_id, tid))
ORDER BY run_id, level DESC, faults DESC, vma_id, tid
