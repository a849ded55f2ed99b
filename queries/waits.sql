-- question: Which lock waits were the longest - each with its op, thread, CPU, lock, mode, and when it began and ended?
-- needs: waits, results
-- param run_id: only this run (default: every run)
-- param lock_class VARCHAR: only this lock class (mmap_lock, vma_lock, mmap_lock.wait_lock, vm_refcnt, zone->lock, ...; default: every one)
-- param top INTEGER > 0: waits per run (default 20)
-- column run_id VARCHAR: the run
-- column rank BIGINT: 1 = the run's longest wait
-- column op_id BIGINT: the op that waited (results.op_id)
-- column kind VARCHAR: its kind (fault, mmap, munmap, mprotect, ...)
-- column tid INTEGER: its thread
-- column sim_cpu INTEGER: the simulated CPU it waited on
-- column lock_class VARCHAR: what it waited for, in lock_stats' names
-- column lock VARCHAR: which one: mm, vma:ID, node0, ...
-- column mode VARCHAR: read or write (null: a spinlock)
-- column how VARCHAR: sleep (schedule() until woken) or spin
-- column start_us DOUBLE: when the wait began, simulated us
-- column end_us DOUBLE: when it ended, simulated us
-- column wait_us DOUBLE: its length, us
-- column op_start_us DOUBLE: when the op began, simulated us
-- column op_wait_share DOUBLE: this wait's share of the op's time, end - start (%)
SELECT run_id, rank, op_id, kind, tid, sim_cpu, lock_class, lock, mode, how, start_ns / 1e3 AS start_us,
       end_ns / 1e3 AS end_us, wait_ns / 1e3 AS wait_us, op_start_ns / 1e3 AS op_start_us,
       round(100 * wait_ns / nullif(op_end_ns - op_start_ns, 0), 2) AS op_wait_share
FROM (
    SELECT w.*, r.kind, r.start_ns AS op_start_ns, r.end_ns AS op_end_ns,
           row_number() OVER (PARTITION BY w.run_id ORDER BY w.wait_ns DESC, w.start_ns, w.op_id) AS rank
    FROM waits w
    JOIN results r ON r.run_id = w.run_id AND r.mm = w.mm AND r.op_id = w.op_id
    WHERE ($run_id IS NULL OR w.run_id = $run_id) AND ($lock_class IS NULL OR w.lock_class = $lock_class)
)
WHERE rank <= coalesce(CAST($top AS INTEGER), 20)
ORDER BY run_id, rank
