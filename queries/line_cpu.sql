-- question: Which simulated CPUs received each cache line, how often, and as what (HITM or not) - the line x CPU matrix behind perf c2c's view?
-- needs: line_cpu
-- param run_id: only this run (default: every run)
-- column run_id VARCHAR: the run
-- column mm VARCHAR: address space
-- column line VARCHAR: line address (hex), as c2c and hot_lines print it
-- column cpu INTEGER: simulated CPU that received the line
-- column socket INTEGER: its socket
-- column hitm BIGINT: loads (locked RMWs' included) by the CPU that found the line Modified in another CPU (lcl_hitm + rmt_hitm)
-- column lcl_hitm BIGINT: ... Modified in a CPU of its own socket
-- column rmt_hitm BIGINT: ... Modified in a CPU of another socket
-- column other BIGINT: the CPU's other fetches of the line: loads served by a Shared copy or the LLC, plain stores, prefetches
-- column transfers BIGINT: every move of the line into the CPU (hitm + other)
SELECT run_id, mm, printf('0x%x', line) AS line, cpu, socket, lcl_hitm + rmt_hitm AS hitm, lcl_hitm, rmt_hitm,
       lcl_hit + rmt_hit + store_miss + prefetch AS other,
       lcl_hitm + rmt_hitm + lcl_hit + rmt_hit + store_miss + prefetch AS transfers
FROM line_cpu
WHERE $run_id IS NULL OR run_id = $run_id
ORDER BY run_id, mm, line, cpu
