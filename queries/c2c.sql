-- question: perf c2c's Shared Data Cache Line Table of a run: which lines bounced between CPUs, as HITMs (local, remote) and the rest, which CPUs took them, and the struct fields at each offset?
-- needs: line_stats, line_cpu
-- layout: c2c
-- param run_id: only this run (default: every run)
-- param top INTEGER > 0: lines per run (default 10)
-- param display VARCHAR in (tot, rmt, lcl, transfers): what the lines are sorted on and the percentage is of: tot (perf c2c -d tot, its default: all load HITMs), rmt, lcl (-d rmt, -d lcl), or transfers (every move, not a perf mode)
-- column run_id VARCHAR: the run
-- column mm VARCHAR: address space (each replays apart; the same address in two mms is two lines)
-- column idx BIGINT: perf's Index: 0 = the line highest on the display metric
-- column line VARCHAR: cacheline address (hex), simulated: the mm_struct at 0xffff888100000000, the VMA slab at 0xffff888200000000, the vma_lock slab at 0xffff888300000000
-- column pct DOUBLE: the line's share of the run's display metric, % (perf's Tot Hitm / Rmt Hitm / Lcl Hitm column)
-- column hitm BIGINT: Load Hitm Total: loads (a locked RMW's load included) that found the line Modified in another CPU
-- column lcl_hitm BIGINT: Load Hitm LclHitm: ... in a CPU of the loading CPU's socket
-- column rmt_hitm BIGINT: Load Hitm RmtHitm: ... in a CPU of another socket
-- column store_miss BIGINT: Stores L1Miss: plain stores that fetched the line
-- column lcl_hit BIGINT: LLC Load Hit LclHit: loads served by a Shared copy on their socket or by the LLC
-- column rmt_hit BIGINT: RMT Load Hit RmtHit: loads served by a Shared copy only on another socket
-- column prefetch BIGINT: fills perf cannot sample: prefetchw and the adjacent-line prefetcher's (not a perf column)
-- column transfers BIGINT: every move of the line (line_stats.transfers: the kinds above summed)
-- column invalidations BIGINT: copies killed by writes (not a perf column)
-- column cpu_cnt BIGINT: perf's cpu cnt: CPUs the line moved into
-- column nodes VARCHAR: perf -N's Node{cpu list}, socket for node: the CPUs the line moved into, per socket
-- column fields VARCHAR: the struct fields on the line
-- column offsets VARCHAR: each field's offset in the line (perf's Pareto: Data address Offset), by name
--
-- Counted, not sampled: every transfer of a line is one count, where perf c2c samples
-- loads and stores (load latency, precise stores) and so also counts hits.  So there are
-- no Total records, Total Loads or Total Stores, no Core Load Hit (FB, L1, L2), no Stores
-- L1Hit, no Load Dram (a line in no private cache comes from the LLC: memory is not
-- modelled), no PA cnt or Node of the line's memory, no cycles (latency samples), and no
-- code address, symbol, pid or tid per offset: transfers are counted per line and CPU,
-- not per instruction.  A run replayed before the engine counted per CPU (no line_cpu
-- rows) has its lines with null counts: replay run it again.
WITH cpu AS (
    SELECT *, cpu - row_number() OVER (PARTITION BY run_id, mm, line, socket ORDER BY cpu) AS island
    FROM line_cpu
    WHERE $run_id IS NULL OR run_id = $run_id
),
span AS (  -- consecutive CPUs of a socket, as perf prints a CPU list: 0-3,7
    SELECT run_id, mm, line, socket, min(cpu) AS lo,
           CASE WHEN min(cpu) = max(cpu) THEN min(cpu)::VARCHAR ELSE min(cpu)::VARCHAR || '-' || max(cpu)::VARCHAR END AS cpus
    FROM cpu
    GROUP BY run_id, mm, line, socket, island
),
node AS (
    SELECT run_id, mm, line, socket, socket::VARCHAR || '{' || string_agg(cpus, ',' ORDER BY lo) || '}' AS node
    FROM span
    GROUP BY run_id, mm, line, socket
),
per AS (
    SELECT run_id, mm, line, sum(lcl_hitm)::BIGINT AS lcl_hitm, sum(rmt_hitm)::BIGINT AS rmt_hitm,
           sum(lcl_hit)::BIGINT AS lcl_hit, sum(rmt_hit)::BIGINT AS rmt_hit, sum(store_miss)::BIGINT AS store_miss,
           sum(prefetch)::BIGINT AS prefetch, count(*) AS cpu_cnt
    FROM cpu
    GROUP BY run_id, mm, line
),
lines AS (
    SELECT l.run_id, l.mm, l.line, p.lcl_hitm + p.rmt_hitm AS hitm, p.lcl_hitm, p.rmt_hitm, p.store_miss, p.lcl_hit,
           p.rmt_hit, p.prefetch, l.transfers, l.invalidations, p.cpu_cnt,
           (SELECT string_agg(n.node, ' ' ORDER BY n.socket) FROM node n
            WHERE n.run_id = l.run_id AND n.mm = l.mm AND n.line = l.line) AS nodes,
           l.fields, l.offsets,
           CASE coalesce($display, 'tot') WHEN 'rmt' THEN p.rmt_hitm WHEN 'lcl' THEN p.lcl_hitm
               WHEN 'transfers' THEN l.transfers ELSE p.lcl_hitm + p.rmt_hitm END AS shown
    FROM line_stats l
    LEFT JOIN per p ON p.run_id = l.run_id AND p.mm = l.mm AND p.line = l.line
    WHERE ($run_id IS NULL OR l.run_id = $run_id) AND l.transfers > 0
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY shown DESC NULLS LAST, transfers DESC, mm, line) - 1 AS idx,
           100.0 * shown / nullif(sum(shown) OVER (PARTITION BY run_id), 0) AS pct
    FROM lines
)
SELECT run_id, mm, idx, printf('0x%x', line) AS line, pct, hitm, lcl_hitm, rmt_hitm, store_miss, lcl_hit, rmt_hit,
       prefetch, transfers, invalidations, cpu_cnt, nodes, fields, offsets
FROM ranked
WHERE idx < coalesce(CAST($top AS INTEGER), 10)
ORDER BY run_id, idx
