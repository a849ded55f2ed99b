-- question: How much slab memory do a trace's VMAs take under each lock model - peak and time-weighted mean, bytes lost to alignment, and what call_rcu() keeps allocated?
-- needs: footprint
-- param trace_id: only this trace (default: every trace)
-- param model: only this model (default: every model)
-- column trace_id VARCHAR: the trace
-- column model VARCHAR: lock model
-- column machine VARCHAR: machine profile (its CPU count sets SLUB's objects per slab)
-- column free_mode VARCHAR: typesafe (SLAB_TYPESAFE_BY_RCU: reused at once), call_rcu (held a grace period) or immediate
-- column caches VARCHAR: each slab cache's geometry
-- column peak_vmas BIGINT: most VMAs alive at once
-- column peak_objects BIGINT: most slab objects allocated at once, every cache (a vma_lock each for pervma; RCU-held ones included)
-- column peak_rcu_held BIGINT: most freed VMAs at once whose objects (and vma_locks) wait for a grace period
-- column call_rcu_calls BIGINT: call_rcu() invocations, one per freed VMA (0 when the cache is SLAB_TYPESAFE_BY_RCU)
-- column peak_slabs BIGINT: most slabs needed at once, packed (a lower bound: SLUB keeps partial and per-CPU slabs too)
-- column peak_pages BIGINT: most 4 KiB pages those slabs take
-- column peak_kib DOUBLE: most slab memory at once (KiB)
-- column mean_kib DOUBLE: slab memory averaged over the trace's time (KiB)
-- column payload_kib_at_peak DOUBLE: at the peak, objects x sizeof (KiB)
-- column align_kib_at_peak DOUBLE: at the peak, bytes lost to alignment and outside free pointers (KiB)
-- column waste_kib_at_peak DOUBLE: at the peak, slab memory not holding a struct: alignment, free pointers, empty slots and slab tails (KiB)
-- column bytes_per_vma_at_peak DOUBLE: slab memory per live VMA at the peak
WITH per_t AS (
    SELECT trace_id, model, machine, t_ns, any_value(free_mode) AS free_mode,
           sum(live) FILTER (WHERE cache = 'vm_area_struct') AS vmas, sum(objects) AS objects,
           sum(rcu_held) FILTER (WHERE cache = 'vm_area_struct') AS rcu_held, max(frees) AS frees, sum(slabs) AS slabs, sum(pages) AS pages,
           sum(slab_kib) AS kib, sum(payload_kib) AS payload_kib, sum(align_kib) AS align_kib
    FROM footprint
    WHERE ($trace_id IS NULL OR trace_id = $trace_id) AND ($model IS NULL OR model = $model)
    GROUP BY trace_id, model, machine, t_ns
), timed AS (
    SELECT *, coalesce(lead(t_ns) OVER w, t_ns) - t_ns AS dur,
           row_number() OVER (PARTITION BY trace_id, model, machine ORDER BY kib DESC, t_ns) AS peak_rank
    FROM per_t
    WINDOW w AS (PARTITION BY trace_id, model, machine ORDER BY t_ns)
), geometry AS (
    SELECT trace_id, model, machine, string_agg(DISTINCT cache_desc, '; ' ORDER BY cache_desc DESC) AS caches
    FROM footprint
    WHERE ($trace_id IS NULL OR trace_id = $trace_id) AND ($model IS NULL OR model = $model)
    GROUP BY trace_id, model, machine
)
SELECT t.trace_id, t.model, t.machine, any_value(t.free_mode) AS free_mode, any_value(g.caches) AS caches,
       max(t.vmas)::BIGINT AS peak_vmas, max(t.objects)::BIGINT AS peak_objects,
       max(t.rcu_held)::BIGINT AS peak_rcu_held,
       (CASE WHEN any_value(t.free_mode) = 'call_rcu' THEN max(t.frees) ELSE 0 END)::BIGINT AS call_rcu_calls,
       max(t.slabs)::BIGINT AS peak_slabs, max(t.pages)::BIGINT AS peak_pages, max(t.kib) AS peak_kib,
       coalesce(sum(t.kib * t.dur) / nullif(sum(t.dur), 0), max(t.kib)) AS mean_kib,
       any_value(t.payload_kib) FILTER (WHERE t.peak_rank = 1) AS payload_kib_at_peak,
       any_value(t.align_kib) FILTER (WHERE t.peak_rank = 1) AS align_kib_at_peak,
       any_value(t.kib - t.payload_kib) FILTER (WHERE t.peak_rank = 1) AS waste_kib_at_peak,
       any_value(t.kib * 1024 / nullif(t.vmas, 0)) FILTER (WHERE t.peak_rank = 1) AS bytes_per_vma_at_peak
FROM timed t JOIN geometry g USING (trace_id, model, machine)
GROUP BY t.trace_id, t.model, t.machine
ORDER BY t.trace_id, t.machine, peak_kib, t.model
