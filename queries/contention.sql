-- question: Which locks did the replay contend on, and for how long? /proc/lock_stat's columns per lock and per lock class, per run.
-- needs: lock_stats
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column lock_class VARCHAR: mmap_lock or vma_lock
-- column lock VARCHAR: the lock instance; '(class)' for the class total
-- column contentions BIGINT: times a task blocked for the lock (lock_contended())
-- column con_bounces BIGINT: transfers of the lock word's cache line between CPUs
-- column waittime_min_us DOUBLE: shortest block
-- column waittime_max_us DOUBLE: longest block
-- column waittime_total_us DOUBLE: time blocked, all tasks
-- column waittime_avg_us DOUBLE: waittime_total_us / contentions
-- column acquisitions BIGINT: times the lock was taken
-- column holdtime_min_us DOUBLE: shortest hold
-- column holdtime_max_us DOUBLE: longest hold
-- column holdtime_total_us DOUBLE: time held, all holders
-- column holdtime_avg_us DOUBLE: holdtime_total_us / acquisitions
-- column trylock_failures BIGINT: trylocks that failed (not contentions: a trylock never blocks)
SELECT
    run_id,
    lock_class,
    coalesce(lock, '(class)') AS lock,
    sum(contentions)::BIGINT AS contentions,
    sum(con_bounces)::BIGINT AS con_bounces,
    min(wait_min_ns) / 1e3 AS waittime_min_us,
    max(wait_max_ns) / 1e3 AS waittime_max_us,
    sum(wait_total_ns) / 1e3 AS waittime_total_us,
    sum(wait_total_ns) / 1e3 / nullif(sum(contentions), 0) AS waittime_avg_us,
    sum(acquisitions)::BIGINT AS acquisitions,
    min(hold_min_ns) / 1e3 AS holdtime_min_us,
    max(hold_max_ns) / 1e3 AS holdtime_max_us,
    sum(hold_total_ns) / 1e3 AS holdtime_total_us,
    sum(hold_total_ns) / 1e3 / nullif(sum(acquisitions), 0) AS holdtime_avg_us,
    sum(trylock_failures)::BIGINT AS trylock_failures
FROM lock_stats
WHERE $run_id IS NULL OR run_id = $run_id
GROUP BY GROUPING SETS ((run_id, lock_class, lock), (run_id, lock_class))
ORDER BY run_id, lock_class, lock <> '(class)', contentions DESC, lock
