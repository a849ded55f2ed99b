-- question: perf lock contention's view of a run: how often and how long ops blocked on the mm's rw_semaphores, by caller (default), by task (-t) or by lock (-l)?
-- needs: waits, results, runs, ops
-- layout: lock_contention
-- param run_id: only this run (default: every run)
-- param by VARCHAR in (caller, task, lock): caller (perf's default: type and caller), task (perf -t: pid and comm) or lock (perf -l: address and symbol)
-- column run_id VARCHAR: the run
-- column contended BIGINT: contentions - an op's waits on one rw_semaphore (perf counts contention_begin/end pairs: one per slow path, its sleeps and retries inside)
-- column total_wait_ns DOUBLE: time those contentions waited, ns (perf prints it in automatic units)
-- column max_wait_ns DOUBLE: the longest contention
-- column avg_wait_ns DOUBLE: total_wait_ns / contended
-- column type VARCHAR: by=caller: rwsem:R (down_read: the wait's mode read) or rwsem:W (down_write), perf's names (tools/perf/builtin-lock.c lock_type_table)
-- column caller VARCHAR: by=caller: the kernel function that takes the lock for that op in v6.18 (results know the op, not the instruction: no +offset)
-- column pid INTEGER: by=task: the thread (perf -t prints the tid as pid)
-- column comm VARCHAR: by=task: its comm in the trace
-- column address VARCHAR: by=lock: the lock as the waits table names it (the mm's key, pid:N or its mm= pointer, and vma:ID for a VMA's rwsem): perf prints the lock's address, which a replay does not have
-- column symbol VARCHAR: by=lock: the lock, as lockdep names its class
--
-- Each contention is one op's waits on one lock in the waits table (replay/engine/waits.py:
-- asleep in the slow path, spinning on the owner), added up: where a writer is woken,
-- loses the lock and sleeps again, that is one contention, as it is one
-- contention_begin/end pair in rwsem_down_write_slowpath() (kernel/locking/rwsem.c).
-- An op that waits for the same lock twice (a fault that drops mmap_lock for
-- VM_FAULT_RETRY and waits again) is one contention here.  The writer's optimistic spin,
-- which comes before trace_contention_begin() and so is not in perf's pairs, is in the
-- waits and counted here.  Not listed: the spin on sem->wait_lock (a raw spinlock, which
-- perf lists on its own as a spinlock), a writer's wait for vm_refcnt's readers
-- (rcuwait_wait_event(), which perf lock contention does not see), the fault path's
-- spinlocks.  A fault waits only in down_read(&mm->mmap_lock) (the per-VMA attempts are
-- trylocks or refcount increments); a pervma or inline-rwsem writer's wait in
-- vma_start_write() is on its VMA's rwsem, listed under that lock.
WITH c AS (  -- the contentions: an op's waits on one rw_semaphore
    SELECT w.run_id, w.mm, w.op_id, w.lock_class, w.lock, min(w.tid) AS tid, min(w.mode) AS mode,
           sum(w.wait_ns) AS wait_ns
    FROM waits w
    WHERE w.lock_class IN ('mmap_lock', 'vma_lock') AND ($run_id IS NULL OR w.run_id = $run_id)
    GROUP BY w.run_id, w.mm, w.op_id, w.lock_class, w.lock
), w AS (
    SELECT c.*, u.trace_id,
           CASE WHEN c.mode = 'read' THEN 'rwsem:R' ELSE 'rwsem:W' END AS type,
           CASE WHEN c.lock_class = 'vma_lock' THEN 'vma_start_write'
           ELSE CASE r.kind
               WHEN 'fault' THEN CASE WHEN r.model = 'mmap_lock' THEN 'do_user_addr_fault' ELSE 'lock_mm_and_find_vma' END
               WHEN 'mmap' THEN 'vm_mmap_pgoff' WHEN 'munmap' THEN '__vm_munmap' WHEN 'mprotect' THEN 'do_mprotect_pkey'
               WHEN 'mremap' THEN 'do_mremap' WHEN 'brk' THEN '__do_sys_brk' WHEN 'madvise' THEN 'do_madvise'
               WHEN 'exit' THEN 'exit_mmap' ELSE r.kind END END AS caller,
           CASE WHEN c.lock_class = 'mmap_lock' THEN '&mm->mmap_lock'
                WHEN u.model = 'inline-rwsem' THEN '&vma->vm_lock.lock'
                ELSE '&vma->vm_lock->lock' END AS symbol,
           CASE WHEN c.lock = 'mm' THEN c.mm ELSE c.mm || ' ' || c.lock END AS address
    FROM c
    JOIN runs u USING (run_id)
    JOIN results r ON r.run_id = c.run_id AND r.mm = c.mm AND r.op_id = c.op_id
), comms AS (
    SELECT trace_id, tid, any_value(comm) AS comm FROM ops o JOIN events e USING (trace_id, tid, seq) GROUP BY ALL
), keyed AS (
    SELECT w.*, m.comm,
           CASE coalesce($by, 'caller') WHEN 'caller' THEN type || ' ' || caller WHEN 'task' THEN CAST(w.tid AS VARCHAR)
                ELSE w.address END AS k
    FROM w LEFT JOIN comms m ON m.trace_id = w.trace_id AND m.tid = w.tid
)
SELECT
    run_id,
    count(*) AS contended,
    sum(wait_ns) AS total_wait_ns,
    max(wait_ns) AS max_wait_ns,
    sum(wait_ns) / count(*) AS avg_wait_ns,
    CASE WHEN coalesce($by, 'caller') = 'caller' THEN any_value(type) END AS type,
    CASE WHEN coalesce($by, 'caller') = 'caller' THEN any_value(caller) END AS caller,
    CASE WHEN $by = 'task' THEN any_value(tid) END AS pid,
    CASE WHEN $by = 'task' THEN any_value(comm) END AS comm,
    CASE WHEN $by = 'lock' THEN any_value(address) END AS address,
    CASE WHEN $by = 'lock' THEN any_value(symbol) END AS symbol
FROM keyed
GROUP BY run_id, k
ORDER BY run_id, total_wait_ns DESC, k
