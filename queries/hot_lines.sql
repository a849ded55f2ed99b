-- question: Which cache lines moved between CPUs most, and which struct fields sit on them?
-- needs: line_stats
-- param run_id: only this run (default: every run)
-- param top INTEGER > 0: lines per run (default 10)
-- column run_id VARCHAR: the run
-- column rank BIGINT: 1 = most transferred in the run
-- column line VARCHAR: line address (hex)
-- column transfers BIGINT: times the line moved to a CPU that did not hold it
-- column invalidations BIGINT: copies killed by writes (adjacent-line buddies included)
-- column fields VARCHAR: the struct fields on the line
SELECT run_id, rank, printf('0x%x', line) AS line, transfers, invalidations, fields
FROM (
    SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY transfers DESC, line) AS rank
    FROM line_stats
    WHERE $run_id IS NULL OR run_id = $run_id
)
WHERE rank <= coalesce(CAST($top AS INTEGER), 10)
ORDER BY run_id, rank
