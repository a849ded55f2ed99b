-- question: When in the replay did contention and fallbacks happen - per time bucket?
-- needs: results, waits
-- param run_id: only this run (default: every run)
-- param bucket_ms DOUBLE > 0: bucket width (default 1)
-- column run_id VARCHAR: the run
-- column bucket_ms DOUBLE: bucket start, simulated ms
-- column faults BIGINT: faults that started in the bucket
-- column fallbacks BIGINT: of them, faults that took the mmap_lock path
-- column writers BIGINT: address-space writers that started in the bucket
-- column lock_wait_ms DOUBLE: time ops spent blocked on locks within the bucket - each wait (the waits table) where it happened, split at the bucket edges; summed over buckets, the results' lock_wait_ns
-- column fallback_pct DOUBLE: 100 * fallbacks / faults
-- Ops count in the bucket they started in; their waits in the buckets they happened in
-- (as cpu_lock_wait has them per CPU), so a long wait shows where it was, not all at its
-- op's start.  A bucket with neither an op starting nor a wait has no row: it is zero.
-- The fault path's spinlocks (resource_wait_ns) are not lock waits here, as they are not
-- in lock_wait_ns.  A run replayed before the engine recorded waits has no waits rows, so
-- no wait here: replay run it again.
WITH p AS (
    SELECT coalesce(CAST($bucket_ms AS DOUBLE), 1) AS ms
),
o AS (  -- ops by the bucket they started in
    SELECT run_id, floor(start_ns / 1e6 / p.ms) AS i,
           count(*) FILTER (WHERE kind = 'fault') AS faults,
           count(*) FILTER (WHERE kind = 'fault' AND fallback) AS fallbacks,
           count(*) FILTER (WHERE kind <> 'fault') AS writers
    FROM results, p
    WHERE $run_id IS NULL OR run_id = $run_id
    GROUP BY run_id, i
),
w AS (
    SELECT run_id, start_ns, end_ns, p.ms * 1e6 AS b,
           CAST(floor(start_ns / 1e6 / p.ms) AS BIGINT) AS i0, CAST(floor(end_ns / 1e6 / p.ms) AS BIGINT) AS i1
    FROM waits, p
    WHERE counted_in = 'lock_wait_ns' AND ($run_id IS NULL OR run_id = $run_id)
),
piece AS (  -- each wait's part in each bucket it touches
    SELECT run_id, i, least(end_ns, (i + 1) * b) - greatest(start_ns, i * b) AS ns
    FROM (SELECT *, unnest(range(i0, i1 + 1)) AS i FROM w)
),
pw AS (
    SELECT run_id, CAST(i AS DOUBLE) AS i, sum(ns) AS ns
    FROM piece
    WHERE ns > 0
    GROUP BY run_id, i
)
SELECT
    coalesce(o.run_id, pw.run_id) AS run_id,
    coalesce(o.i, pw.i) * (SELECT ms FROM p) AS bucket_ms,
    coalesce(o.faults, 0) AS faults,
    coalesce(o.fallbacks, 0) AS fallbacks,
    coalesce(o.writers, 0) AS writers,
    coalesce(pw.ns, 0) / 1e6 AS lock_wait_ms,
    100.0 * o.fallbacks / nullif(o.faults, 0) AS fallback_pct
FROM o FULL JOIN pw ON o.run_id = pw.run_id AND o.i = pw.i
ORDER BY run_id, bucket_ms
