-- Retention and writes that age well (see docs/architecture.md, "Table
-- health").
--
-- The retention pass of the completer removes succeeded rows oldest first,
-- a small batch at a time: this index lets it find them without reading the
-- rows it keeps, like the failed index does for failed rows. It also serves
-- "recent successes" listings. It is partial, so pending rows (the hot end of
-- the table) are not in it.
--
-- Built in the migration's transaction, which blocks writes to the table
-- while it is built: instant on a new table, minutes on one that already
-- holds hundreds of millions of rows. For such a table create it by hand
-- first, without blocking writes, and this statement then finds it:
--   CREATE INDEX CONCURRENTLY <table>_succeeded_idx ON <table> (created_at) WHERE status = 'succeeded';
CREATE INDEX IF NOT EXISTS {{.SucceededIndex}} ON {{.Table}} (created_at) WHERE status = 'succeeded';

-- Autovacuum thresholds (measured and reasoned in docs/architecture.md,
-- "Table health"). PostgreSQL waits for 20% of a table to be dead before it
-- vacuums it; every row here is written twice (insert, completion) and, with
-- retention, deleted once, so on a table of a billion rows that default lets
-- 200 million dead rows and their index entries pile up. 2% asks for vacuum
-- at a tenth of that; on a small table autovacuum's 1-minute naptime is the
-- limit either way. Analyze follows the same share, so the planner's
-- estimates for the partial indexes stay current as the table turns over.
-- No fillfactor: a completion cannot be a HOT update (status is in the
-- partial indexes' predicates), and the measured table was smaller at the
-- default 100 than at 90.
ALTER TABLE {{.Table}} SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
