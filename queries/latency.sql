-- question: How long did ops take in the replay - percentiles per run and op kind?
-- needs: results
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column model VARCHAR: lock model
-- column kind VARCHAR: op kind (fault, mmap, munmap, mprotect, ...)
-- column ops BIGINT: ops of that kind
-- column p50_ns DOUBLE: median duration (start to end, lock waits included)
-- column p90_ns DOUBLE: 90th percentile
-- column p99_ns DOUBLE: 99th percentile
-- column p999_ns DOUBLE: 99.9th percentile
-- column max_ns DOUBLE: longest
SELECT run_id, model, kind, ops, q[1] AS p50_ns, q[2] AS p90_ns, q[3] AS p99_ns, q[4] AS p999_ns, max_ns
FROM (
    -- one sort per group for all four percentiles (the list form of quantile_cont)
    SELECT
        run_id,
        any_value(model) AS model,
        kind,
        count(*) AS ops,
        quantile_cont(end_ns - start_ns, [0.5, 0.9, 0.99, 0.999]) AS q,
        max(end_ns - start_ns) AS max_ns
    FROM results
    WHERE $run_id IS NULL OR run_id = $run_id
    GROUP BY run_id, kind
)
ORDER BY run_id, kind
