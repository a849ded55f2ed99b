-- question: perf lock contention's view of a run: how often and how long ops blocked on the mm's rw_semaphores, by caller (default), by task (-t) or by lock (-l)?
-- needs: results, runs, ops
-- layout: lock_contention
-- param run_id: only this run (default: every run)
-- param by VARCHAR in (caller, task, lock): caller (perf's default: type and caller), task (perf -t: pid and comm) or lock (perf -l: address and symbol)
-- column run_id VARCHAR: the run
-- column contended BIGINT: ops that blocked (perf counts contention_begin/end pairs; an op that blocks is one here)
-- column total_wait_ns DOUBLE: time those ops spent blocked, ns (perf prints it in automatic units)
-- column max_wait_ns DOUBLE: the longest an op was blocked
-- column avg_wait_ns DOUBLE: total_wait_ns / contended
-- column type VARCHAR: by=caller: rwsem:R (down_read: a fault on the mmap_lock path, a writer taking mmap_lock for read) or rwsem:W (down_write: a writer), perf's names (tools/perf/builtin-lock.c lock_type_table)
-- column caller VARCHAR: by=caller: the kernel function that takes the lock for that op in v6.18 (results know the op, not the instruction: no +offset)
-- column pid INTEGER: by=task: the thread (perf -t prints the tid as pid)
-- column comm VARCHAR: by=task: its comm in the trace
-- column address VARCHAR: by=lock: the mm's key in the trace (pid:N, or its mm= pointer): perf prints the lock's address, which a replay does not have; mmap_lock is in mm_struct
-- column symbol VARCHAR: by=lock: the lock, as lockdep names its class
--
-- What the results cannot tell: an op's lock_wait_ns is its blocked time on every lock
-- together, not per lock.  A fault blocks only in down_read(&mm->mmap_lock) (the per-VMA
-- attempts are trylocks or refcount increments), so fault rows are exact.  A writer's
-- time covers mmap_write_lock() and, under per-VMA locking, vma_start_write() on each
-- VMA it changes - down_write(&vma->vm_lock->lock) for pervma, the vm_refcnt drain
-- (rcuwait_wait_event(), which perf lock contention does not see) for v7/v8/mainline -
-- so writer rows are listed under the mm's mmap_lock with that time included.
WITH w AS (
    SELECT r.run_id, r.tid, r.mm, r.kind, r.lock_wait_ns, u.trace_id,
           CASE WHEN r.kind = 'fault' OR o.lock_mode = 'read' THEN 'rwsem:R' ELSE 'rwsem:W' END AS type,
           CASE r.kind
               WHEN 'fault' THEN CASE WHEN r.model = 'mmap_lock' THEN 'do_user_addr_fault' ELSE 'lock_mm_and_find_vma' END
               WHEN 'mmap' THEN 'vm_mmap_pgoff' WHEN 'munmap' THEN '__vm_munmap' WHEN 'mprotect' THEN 'do_mprotect_pkey'
               WHEN 'mremap' THEN 'do_mremap' WHEN 'brk' THEN '__do_sys_brk' WHEN 'madvise' THEN 'do_madvise'
               WHEN 'exit' THEN 'exit_mmap' ELSE r.kind END AS caller
    FROM results r
    JOIN runs u USING (run_id)
    LEFT JOIN ops o ON o.trace_id = u.trace_id AND o.op_id = r.op_id
    WHERE r.lock_wait_ns > 0 AND ($run_id IS NULL OR r.run_id = $run_id)
), comms AS (
    SELECT trace_id, tid, any_value(comm) AS comm FROM ops o JOIN events e USING (trace_id, tid, seq) GROUP BY ALL
), keyed AS (
    SELECT w.*, c.comm,
           CASE coalesce($by, 'caller') WHEN 'caller' THEN type || ' ' || caller WHEN 'task' THEN CAST(w.tid AS VARCHAR)
                ELSE w.mm END AS k
    FROM w LEFT JOIN comms c ON c.trace_id = w.trace_id AND c.tid = w.tid
)
SELECT
    run_id,
    count(*) AS contended,
    sum(lock_wait_ns) AS total_wait_ns,
    max(lock_wait_ns) AS max_wait_ns,
    sum(lock_wait_ns) / count(*) AS avg_wait_ns,
    CASE WHEN coalesce($by, 'caller') = 'caller' THEN any_value(type) END AS type,
    CASE WHEN coalesce($by, 'caller') = 'caller' THEN any_value(caller) END AS caller,
    CASE WHEN $by = 'task' THEN any_value(tid) END AS pid,
    CASE WHEN $by = 'task' THEN any_value(comm) END AS comm,
    CASE WHEN $by = 'lock' THEN any_value(mm) END AS address,
    CASE WHEN $by = 'lock' THEN '&mm->mmap_lock' END AS symbol
FROM keyed
GROUP BY run_id, k
ORDER BY run_id, total_wait_ns DESC, k
