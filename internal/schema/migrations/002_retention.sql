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

-- Storage settings, measured (docs/architecture.md):
-- fillfactor leaves room on each page for the row's completion, so the
--   new row version stays on its page instead of moving to the end of the
--   table (the completion cannot be a HOT update: status is in the partial
--   indexes' predicates).
-- autovacuum_vacuum_scale_factor: PostgreSQL waits for 20% of a table to be
--   dead before vacuuming it; on a table of a billion rows that is 200
--   million dead rows and their index entries. Every row is written at least
--   twice and, with retention, deleted once, so vacuum is asked for after 2%.
-- autovacuum_vacuum_insert_scale_factor: the same for inserts, so pages are
--   marked all-visible (and frozen) while they are still in cache.
ALTER TABLE {{.Table}} SET (
    fillfactor = {{.Fillfactor}},
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
