-- question: In a recorded trace, which faults fell back to mmap_lock - by thread, VMA and time window?
-- needs: ops
-- param trace_id: only this trace (default: every trace)
-- param window_ms DOUBLE > 0: width of a time window (default 10)
-- column trace_id VARCHAR: the trace
-- column tid INTEGER: the faulting thread
-- column vma_id BIGINT: the VMA faulted on
-- column window_start_ms DOUBLE: start of the window, from the trace's first op
-- column user_faults BIGINT: user-mode faults in the group
-- column observed_fallbacks BIGINT: of them, faults followed by mmap_lock_start_locking write=false
-- column observed_anon_prepare BIGINT: first write faults of a private VMA whose vmf_anon_prepare() trylock looks alike
-- column fallback_pct DOUBLE: 100 * observed_fallbacks / user_faults
WITH f AS (
    SELECT o.*, (o.start_ns - min(o.start_ns) OVER (PARTITION BY o.trace_id)) / 1e6 AS t_ms
    FROM ops o
    WHERE o.kind = 'fault' AND NOT o.kernel AND ($trace_id IS NULL OR o.trace_id = $trace_id)
), w AS (
    SELECT *, floor(t_ms / coalesce(CAST($window_ms AS DOUBLE), 10)) * coalesce(CAST($window_ms AS DOUBLE), 10) AS window_start_ms
    FROM f
)
SELECT trace_id, tid, vma_id, window_start_ms,
       count(*) AS user_faults,
       count(*) FILTER (WHERE observed_fallback) AS observed_fallbacks,
       count(*) FILTER (WHERE observed_anon_prepare) AS observed_anon_prepare,
       100.0 * count(*) FILTER (WHERE observed_fallback) / count(*) AS fallback_pct
FROM w
GROUP BY trace_id, tid, vma_id, window_start_ms
HAVING count(*) FILTER (WHERE observed_fallback) > 0
ORDER BY trace_id, window_start_ms, tid, vma_id
