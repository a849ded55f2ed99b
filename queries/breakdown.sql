-- question: Where did each op kind's time go - waiting for its lock, in memory accesses, in its own work, in the fault path's shared resources (and waiting for them), off its CPU - per run?
-- needs: results
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column kind VARCHAR: op kind (fault, mmap, munmap, ...)
-- column ops BIGINT: ops of that kind
-- column mean_ns DOUBLE: mean duration, end_ns - start_ns
-- column lock_wait_ns DOUBLE: mean time waiting for mmap_lock or the VMA lock (asleep or spinning)
-- column cache_ns DOUBLE: mean time in the lock path's memory accesses, queueing on busy lines included
-- column service_ns DOUBLE: a fault's mean time in its own work: the fault path's fixed part and clear_page(), or its one service time (0 for writers: their hold is in other_ns)
-- column resource_ns DOUBLE: mean time in the fault path's shared resources - zone->lock refills, the memcg page_counter walks, the rss fold, the LRU drain under lru_lock, a PTE page's install - waits included
-- column resource_wait_ns DOUBLE: the part of resource_ns spent spinning for another CPU's hold
-- column sleep_ns DOUBLE: mean time off its CPU (asleep on a lock, then until it ran again; part of lock_wait_ns)
-- column other_ns DOUBLE: mean_ns minus the parts above (lock_wait_ns counted once): scheduling and a writer's time outside its parts
-- column on_cpu_ns DOUBLE: mean_ns - sleep_ns: what pft's faults/cpu counts (getrusage(RUSAGE_THREAD))
SELECT
    run_id,
    kind,
    count(*) AS ops,
    avg(end_ns - start_ns) AS mean_ns,
    avg(lock_wait_ns) AS lock_wait_ns,
    avg(cache_ns) AS cache_ns,
    avg(service_ns) AS service_ns,
    avg(resource_ns) AS resource_ns,
    avg(resource_wait_ns) AS resource_wait_ns,
    avg(sleep_ns) AS sleep_ns,
    avg(end_ns - start_ns) - avg(lock_wait_ns) - avg(cache_ns) - avg(service_ns) - avg(resource_ns) AS other_ns,
    avg(end_ns - start_ns - sleep_ns) AS on_cpu_ns
FROM results
WHERE $run_id IS NULL OR run_id = $run_id
GROUP BY run_id, kind
ORDER BY run_id, kind
