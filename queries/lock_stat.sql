-- question: /proc/lock_stat for a replay: per lock class as lockdep names it, contentions, waits, acquisitions and holds, and the call sites that contended?
-- needs: lock_stats, waits, results, runs
-- layout: lock_stat
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column section VARCHAR: class (a class's statistics line) or contention_point (a call site that waited, listed under its class)
-- column class_name VARCHAR: the class as lockdep names it: &mm->mmap_lock (init_rwsem(&mm->mmap_lock), include/linux/mmap_lock.h mmap_init_lock()), &vma->vm_lock->lock (pervma: init_rwsem() in kernel/fork.c vma_lock_alloc(), v6.4), &vma->vm_lock.lock (inline-rwsem: the rwsem inside vm_area_struct, as in the first step of "move per-vma lock into vm_area_struct"), vm_lock (the vm_refcnt "lock": lockdep_init_map(&vma->vmlock_dep_map, "vm_lock", ...) in vma_lock_init(), v6.15); the fault path's spinlocks where it ran (replay/engine/faultpath.py): &zone->lock, &lruvec->lru_lock, &mm->rss_stat[MM_ANONPAGES].lock
-- column rw VARCHAR: R+W (reads and writes together), R (reads only); lockdep prints -W and -R lines where a class has both
-- column con_bounces BIGINT: transfers of the lock word's cache line between CPUs (lockdep: contentions that involved another CPU's data)
-- column contentions BIGINT: acquisitions that did not get the lock at once (lockdep: lock_contended() calls, as LOCK_CONTENDED() makes them when the trylock fails)
-- column waittime_min_us DOUBLE: shortest contention's wait (lockdep: us, two decimals); a rw_semaphore's from the waits table, each contention being an op's waits on one lock added up
-- column waittime_max_us DOUBLE: longest contention's wait
-- column waittime_total_us DOUBLE: time waited, total (a rw_semaphore's: its waits in the waits table - asleep, and spinning on the owner)
-- column waittime_avg_us DOUBLE: waittime_total_us / contentions
-- column acq_bounces BIGINT: acquisitions that involved another CPU's data (not recorded by the engine: null)
-- column acquisitions BIGINT: times taken (lockdep: hold times recorded, trylocks included)
-- column holdtime_min_us DOUBLE: shortest hold
-- column holdtime_max_us DOUBLE: longest hold
-- column holdtime_total_us DOUBLE: time held, total
-- column holdtime_avg_us DOUBLE: holdtime_total_us / acquisitions
-- column call_site VARCHAR: contention_point rows: the kernel function that takes the lock for the op kind that blocked (v6.18; no +offset: the replay knows the op, not the instruction)
-- column points BIGINT: contention_point rows: contentions at that call site (an op's waits on a lock of the class)
--
-- What the engine does not record, and so is not invented here:
-- * The read/write split.  lock_stats counts each rw_semaphore's reads and writes together
--   (replay/engine: one acquisitions/contentions/wait/hold set per lock), so each rwsem
--   class is one line marked R+W where lockdep would print a -W and a -R line.
-- * acq-bounces: lock_stats has con_bounces (the lock word's line transfers) only.
-- * The vm_refcnt "lock" (v7, v8, mainline): lock_stats has no row for it.  Its line
--   has only what results record: read acquisitions, the faults whose vma_start_read()
--   succeeded (outcome success or retry); waits and holds are null.  (In the kernel a
--   writer's wait for readers to drain is rcuwait_wait_event() inside the vm_lock
--   write "hold", never a lockdep contention.)
-- * Contending points (the holders a waiter waited for): not recorded.  Contention points
--   come from the waits table: each contention under the class of the lock it waited on
--   (a pervma or inline-rwsem writer's wait in vma_start_write() under the VMA's rwsem),
--   its call site by op kind (the replay knows the op, not the instruction: lockdep's
--   _RET_IP_ would be inside the function named, vma_start_write() being inlined into
--   its callers).  lockdep keeps 4 points per class; all are listed here.
-- * A rw_semaphore's wait times are its waits in the waits table (replay/engine/waits.py),
--   each contention's added up; lockdep times lock_contended() to lock_acquired(), which
--   also covers the slow path's own instructions and its spin on sem->wait_lock (a raw
--   spinlock, its own class in lockdep, not listed here).  The fault path's spinlocks
--   have lock_stats' own figures (one spin a contention).
WITH runs_m AS (SELECT run_id, model FROM runs WHERE $run_id IS NULL OR run_id = $run_id),
c AS (  -- the rw_semaphores' contentions: an op's waits on one lock (as lock_contention)
    SELECT w.run_id, w.mm, w.op_id, w.lock_class, w.lock, sum(w.wait_ns) AS wait_ns
    FROM waits w JOIN runs_m m USING (run_id)
    WHERE w.lock_class IN ('mmap_lock', 'vma_lock')
    GROUP BY ALL
),
cw AS (
    SELECT run_id, lock_class, min(wait_ns) AS wmin, max(wait_ns) AS wmax, sum(wait_ns) AS wtotal FROM c GROUP BY ALL
),
classes AS (
    SELECT s.run_id,
           CASE WHEN s.lock_class = 'mmap_lock' THEN '&mm->mmap_lock'
                WHEN s.lock_class <> 'vma_lock' THEN '&' || s.lock_class  -- the fault path's spinlocks
                WHEN m.model = 'inline-rwsem' THEN '&vma->vm_lock.lock'
                ELSE '&vma->vm_lock->lock' END AS class_name,
           'R+W' AS rw,
           sum(s.con_bounces)::BIGINT AS con_bounces,
           sum(s.contentions)::BIGINT AS contentions,
           CASE WHEN rw_sem THEN any_value(cw.wmin) ELSE min(s.wait_min_ns) END / 1e3 AS waittime_min_us,
           CASE WHEN rw_sem THEN coalesce(any_value(cw.wmax), 0) ELSE max(s.wait_max_ns) END / 1e3 AS waittime_max_us,
           CASE WHEN rw_sem THEN coalesce(any_value(cw.wtotal), 0) ELSE sum(s.wait_total_ns) END / 1e3 AS waittime_total_us,
           coalesce(CASE WHEN rw_sem THEN coalesce(any_value(cw.wtotal), 0) ELSE sum(s.wait_total_ns) END
                    / 1e3 / nullif(sum(s.contentions), 0), 0) AS waittime_avg_us,
           NULL::BIGINT AS acq_bounces,
           sum(s.acquisitions)::BIGINT AS acquisitions,
           min(s.hold_min_ns) / 1e3 AS holdtime_min_us,
           max(s.hold_max_ns) / 1e3 AS holdtime_max_us,
           sum(s.hold_total_ns) / 1e3 AS holdtime_total_us,
           coalesce(sum(s.hold_total_ns) / 1e3 / nullif(sum(s.acquisitions), 0), 0) AS holdtime_avg_us
    FROM (SELECT *, lock_class IN ('mmap_lock', 'vma_lock') AS rw_sem FROM lock_stats) s
    JOIN runs_m m USING (run_id)
    LEFT JOIN cw ON cw.run_id = s.run_id AND cw.lock_class = s.lock_class
    GROUP BY s.run_id, class_name, rw_sem
),
refcnt AS (  -- runs whose faults tried a per-VMA lock that lock_stats does not count: vm_refcnt
    SELECT r.run_id, 'vm_lock' AS class_name, 'R' AS rw,
           count(*) FILTER (WHERE r.outcome IN ('success', 'retry'))::BIGINT AS acquisitions
    FROM results r JOIN runs_m m USING (run_id)
    WHERE r.kind = 'fault'
      AND r.run_id NOT IN (SELECT run_id FROM lock_stats WHERE lock_class = 'vma_lock')
    GROUP BY r.run_id
    HAVING sum(r.attempts) > 0
),
points AS (
    SELECT c.run_id,
           CASE WHEN c.lock_class = 'mmap_lock' THEN '&mm->mmap_lock'
                WHEN m.model = 'inline-rwsem' THEN '&vma->vm_lock.lock'
                ELSE '&vma->vm_lock->lock' END AS class_name,
           CASE WHEN c.lock_class = 'vma_lock' THEN 'vma_start_write'
           ELSE CASE r.kind
               WHEN 'fault' THEN CASE WHEN m.model = 'mmap_lock' THEN 'do_user_addr_fault' ELSE 'lock_mm_and_find_vma' END
               WHEN 'mmap' THEN 'vm_mmap_pgoff' WHEN 'munmap' THEN '__vm_munmap' WHEN 'mprotect' THEN 'do_mprotect_pkey'
               WHEN 'mremap' THEN 'do_mremap' WHEN 'brk' THEN '__do_sys_brk' WHEN 'madvise' THEN 'do_madvise'
               WHEN 'exit' THEN 'exit_mmap' ELSE r.kind END END AS call_site,
           count(*)::BIGINT AS points
    FROM c JOIN runs_m m USING (run_id)
    JOIN results r ON r.run_id = c.run_id AND r.mm = c.mm AND r.op_id = c.op_id
    GROUP BY ALL
),
unioned AS (
    SELECT run_id, 'class' AS section, class_name, rw, con_bounces, contentions, waittime_min_us, waittime_max_us,
           waittime_total_us, waittime_avg_us, acq_bounces, acquisitions, holdtime_min_us, holdtime_max_us,
           holdtime_total_us, holdtime_avg_us, NULL AS call_site, NULL::BIGINT AS points
    FROM classes
    UNION ALL
    SELECT run_id, 'class', class_name, rw, NULL, NULL, NULL, NULL, NULL, NULL, NULL, acquisitions, NULL, NULL, NULL,
           NULL, NULL, NULL
    FROM refcnt
    UNION ALL
    SELECT run_id, 'contention_point', class_name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, call_site, points
    FROM points
)
SELECT u.* FROM unioned u
LEFT JOIN (SELECT run_id, class_name, max(contentions) AS c FROM classes GROUP BY ALL) k USING (run_id, class_name)
-- lock_stat's order: classes by contentions, most first (lockdep_proc.c lock_stat_cmp()); points after their class
ORDER BY u.run_id, coalesce(k.c, -1) DESC, u.class_name, u.section, u.points DESC NULLS FIRST, u.call_site
