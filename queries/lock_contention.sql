-- question: perf lock contention's view of a run: which waiters blocked, how often and how long, by the op that waited?
-- needs: results
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column contended BIGINT: ops that blocked on a lock at least once
-- column total_wait_us DOUBLE: time those ops spent blocked
-- column max_wait_us DOUBLE: the longest an op was blocked
-- column avg_wait_us DOUBLE: total_wait_us / contended
-- column type VARCHAR: what the op waited as: a fault on the mmap_lock path (fallen back), a fault on the VMA lock, or a writer (mmap_lock for write, or draining a VMA's readers)
-- column caller VARCHAR: the op kind that waited (perf lock contention names a kernel function; a replay knows the op)
SELECT
    run_id,
    count(*) AS contended,
    sum(lock_wait_ns) / 1e3 AS total_wait_us,
    max(lock_wait_ns) / 1e3 AS max_wait_us,
    sum(lock_wait_ns) / 1e3 / count(*) AS avg_wait_us,
    CASE WHEN kind <> 'fault' THEN 'writer' WHEN fallback THEN 'fault, mmap_lock path' ELSE 'fault, vma lock' END AS type,
    kind AS caller
FROM results
WHERE lock_wait_ns > 0 AND ($run_id IS NULL OR run_id = $run_id)
GROUP BY run_id, type, caller
ORDER BY run_id, total_wait_us DESC
