-- Scheduled effects (docs/architecture.md, "Scheduled effects"): an effect
-- does not run before run_at. NULL, or a time not after created_at, means
-- now, as before.
--
-- A plain nullable column without a default: adding it rewrites nothing,
-- every existing row reads NULL (run now: they were all inserted to run
-- now), and Hasura tracks it like any column, so a GraphQL insert can set it.
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS run_at timestamptz;

-- Each index below is built in the migration's transaction, which reads
-- the whole table while it blocks writes: instant on a new table, minutes
-- on one of hundreds of millions of rows. For such a table create the
-- waiting and due indexes by hand first, without blocking writes
-- (CREATE INDEX CONCURRENTLY with the names and definitions below), and
-- these statements then find them.

-- A row whose run_at is after its created_at is scheduled: no source
-- publishes it (the webhook replies without publishing, the table source
-- skips it); the completer's scheduler publishes it once run_at has passed
-- and sets published_at. The rule is on the row's own values, so the
-- sources and the scheduler agree without asking each other. This index
-- holds only the scheduled rows still waiting (pending, not yet published),
-- due first: the scheduler's poll is one probe at its start.
CREATE INDEX IF NOT EXISTS {{.WaitingIndex}} ON {{.Table}} (run_at)
    WHERE status = 'pending' AND published_at IS NULL AND run_at > created_at;

-- When a pending row is due: run_at for a scheduled row, created_at for any
-- other (GREATEST ignores NULL). The oldest-pending gauge and the reconciler
-- read it, so that an effect waiting for next week is neither "old" nor
-- "lost": on the created_at index both would have to walk past every
-- waiting row at every scrape or pass.
CREATE INDEX IF NOT EXISTS {{.DueIndex}} ON {{.Table}} ((GREATEST(created_at, run_at)))
    WHERE status = 'pending';

-- The table source's cursor index (migration 006), without the scheduled
-- rows: the cursor passes them (they are the scheduler's), and they would
-- otherwise sit in it until they are due.
DROP INDEX IF EXISTS {{.TxidIndexQualified}};
CREATE INDEX IF NOT EXISTS {{.TxidIndex}} ON {{.Table}} (txid, id)
    WHERE status = 'pending' AND published_at IS NULL AND (run_at IS NULL OR run_at <= created_at);
