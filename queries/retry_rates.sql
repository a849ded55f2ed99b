-- question: How did the simulated faults fare on the per-VMA lock - success, abort, retry, miss, fallback - per run, per VMA and per thread?
-- needs: results
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column level VARCHAR: run, vma or thread: what the row totals
-- column vma_id BIGINT: the VMA (level vma)
-- column tid INTEGER: the thread (level thread)
-- column faults BIGINT: user faults that tried the per-VMA lock (kernel-mode faults never do), each counted once however many attempts it made
-- column faults_success BIGINT: faults whose last per-VMA attempt succeeded
-- column faults_abort BIGINT: faults that gave up on the VMA lock (VMA_LOCK_ABORT) and took mmap_lock
-- column faults_retry BIGINT: faults that returned VM_FAULT_RETRY under the VMA lock (VMA_LOCK_RETRY)
-- column faults_miss BIGINT: faults that found their VMA detached at least once and walked again
-- column miss_events BIGINT: VMA_LOCK_MISS events, one per re-walk (as /proc/vmstat vma_lock_miss counts them)
-- column faults_fallback BIGINT: faults that took the mmap_lock path (abort or retry)
-- column vma_lock_attempts BIGINT: per-VMA lock attempts, a miss's re-walk counted again
-- column fallback_pct_of_faults DOUBLE: 100 * faults_fallback / faults
-- column abort_pct_of_faults DOUBLE: 100 * faults_abort / faults
-- column miss_pct_of_faults DOUBLE: 100 * miss_events / faults (vma_lock_miss over the faults' SUCCESS + ABORT + RETRY)
WITH f AS (SELECT * FROM results WHERE kind = 'fault' AND outcome IS NOT NULL AND ($run_id IS NULL OR run_id = $run_id))
SELECT
    run_id,
    CASE WHEN grouping(vma_id) = 0 THEN 'vma' WHEN grouping(tid) = 0 THEN 'thread' ELSE 'run' END AS level,
    vma_id,
    tid,
    count(*) AS faults,
    count(*) FILTER (WHERE outcome = 'success') AS faults_success,
    count(*) FILTER (WHERE outcome = 'abort') AS faults_abort,
    count(*) FILTER (WHERE outcome = 'retry') AS faults_retry,
    count(*) FILTER (WHERE misses > 0) AS faults_miss,
    sum(misses)::BIGINT AS miss_events,
    count(*) FILTER (WHERE fallback) AS faults_fallback,
    sum(attempts)::BIGINT AS vma_lock_attempts,
    100.0 * count(*) FILTER (WHERE fallback) / count(*) AS fallback_pct_of_faults,
    100.0 * count(*) FILTER (WHERE outcome = 'abort') / count(*) AS abort_pct_of_faults,
    100.0 * sum(misses) / count(*) AS miss_pct_of_faults
FROM f
GROUP BY GROUPING SETS ((run_id), (run_id, vma_id), (run_id, tid))
ORDER BY run_id, level DESC, faults DESC, vma_id, tid
