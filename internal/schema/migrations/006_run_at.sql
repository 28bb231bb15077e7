-- Scheduled effects (docs/architecture.md, "Scheduled effects"): an effect
-- does not run before run_at. NULL, or a time not after created_at, means
-- now, as before.
--
-- A plain nullable column without a default: adding it rewrites nothing,
-- every existing row reads NULL (run now: they were all inserted to run
-- now), and Hasura tracks it like any column, so a GraphQL insert can set it.
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS run_at timestamptz;

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

-- The table source's claim index (migration 003), without the scheduled
-- rows: otherwise each claim would read past every waiting row.
DROP INDEX IF EXISTS {{.UnpublishedIndexQualified}};
CREATE INDEX IF NOT EXISTS {{.UnpublishedIndex}} ON {{.Table}} (created_at)
    WHERE published_at IS NULL AND status = 'pending' AND (run_at IS NULL OR run_at <= created_at);
