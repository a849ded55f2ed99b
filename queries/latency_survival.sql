-- question: What share of a run's ops took at least x - the latency survival curve (1 - CDF) that shows the tail, per run and op kind?
-- needs: results
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column kind VARCHAR: op kind (fault, mmap, munmap, mprotect, ...)
-- column ge_ns DOUBLE: a duration: bin edges 40 to a decade (10^(k/40) ns, 6 % apart)
-- column ops BIGINT: ops of the kind with duration in [ge_ns, the next edge)
-- column at_least_frac DOUBLE: share of the run's ops of that kind that took at least ge_ns (the survival function at ge_ns)
-- Exact at every edge (no sampling): the durations are binned, not sorted, so the curve
-- costs one pass over the results whatever their size.  A duration under 1 ns counts as 1 ns.
SELECT run_id, kind, ge_ns, ops,
       1 - coalesce(sum(ops) OVER (PARTITION BY run_id, kind ORDER BY ge_ns ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
           / sum(ops) OVER (PARTITION BY run_id, kind) AS at_least_frac
FROM (
    SELECT run_id, kind, pow(10, floor(log10(greatest(end_ns - start_ns, 1)) * 40) / 40) AS ge_ns, count(*) AS ops
    FROM results
    WHERE $run_id IS NULL OR run_id = $run_id
    GROUP BY ALL
)
ORDER BY run_id, kind, ge_ns
