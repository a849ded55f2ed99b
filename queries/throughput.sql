-- question: How fast did the faults go, per run and CPU count - pft's faults/sec and faults/cpu?
-- needs: results, runs
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column trace_id VARCHAR: the trace replayed
-- column model VARCHAR: lock model
-- column machine VARCHAR: machine profile
-- column cpus BIGINT: simulated CPUs
-- column faults BIGINT: faults replayed
-- column elapsed_ms DOUBLE: simulated time from the first fault's start to the last fault's end (pft's wall interval: the touch loops, not the mmap before or the munmap after)
-- column faults_per_sec DOUBLE: faults / elapsed (pft: pages / wall time)
-- column fault_cpu_ms DOUBLE: the faults' on-CPU time, all threads: their durations less their time off the CPU (sleep_ns)
-- column faults_per_cpu_sec DOUBLE: faults / fault_cpu time (pft's faults/cpu: pages / (user + sys), getrusage(RUSAGE_THREAD)); the same figures as replay compare's (replay/compare.py run_metrics(), a test keeps them equal)
SELECT
    r.run_id,
    any_value(u.trace_id) AS trace_id,
    any_value(r.model) AS model,
    any_value(r.machine) AS machine,
    any_value(r.cpus) AS cpus,
    count(*) FILTER (WHERE r.kind = 'fault') AS faults,
    (max(r.end_ns) FILTER (WHERE r.kind = 'fault') - min(r.start_ns) FILTER (WHERE r.kind = 'fault')) / 1e6 AS elapsed_ms,
    count(*) FILTER (WHERE r.kind = 'fault')
        / ((max(r.end_ns) FILTER (WHERE r.kind = 'fault') - min(r.start_ns) FILTER (WHERE r.kind = 'fault')) / 1e9)
        AS faults_per_sec,
    sum(r.end_ns - r.start_ns - coalesce(r.sleep_ns, 0)) FILTER (WHERE r.kind = 'fault') / 1e6 AS fault_cpu_ms,
    count(*) FILTER (WHERE r.kind = 'fault')
        / (sum(r.end_ns - r.start_ns - coalesce(r.sleep_ns, 0)) FILTER (WHERE r.kind = 'fault') / 1e9)
        AS faults_per_cpu_sec
FROM results r JOIN runs u USING (run_id)
WHERE $run_id IS NULL OR r.run_id = $run_id
GROUP BY r.run_id
ORDER BY trace_id, model, machine, cpus
