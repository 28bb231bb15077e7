-- The table source (EFFECTS_SOURCE=table): the ingest reads new rows straight
-- from this table instead of receiving Hasura's events.
--
-- published_at is when the ingest handed the row to JetStream (set only after
-- JetStream acknowledged it). Rows that existed before this migration came
-- through the webhook, the only source there was, so they read as published
-- long ago: the column is added with the constant default '-infinity', which
-- PostgreSQL stores in the catalog instead of rewriting the table, and the
-- default is then dropped so that every row inserted from now on starts
-- unpublished (NULL). The webhook source never sets it; its rows leave the
-- index below when they complete.
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS published_at timestamptz DEFAULT '-infinity';
ALTER TABLE {{.Table}} ALTER COLUMN published_at DROP DEFAULT;

-- Rows the table source still has to publish, oldest first. Partial, so it
-- holds only the backlog: a row leaves it when it is published or completed.
CREATE INDEX IF NOT EXISTS {{.UnpublishedIndex}} ON {{.Table}} (created_at)
    WHERE published_at IS NULL AND status = 'pending';

-- Wakes a waiting table source at once when rows are inserted. One
-- notification per statement (not per row), sent only on commit, and
-- PostgreSQL folds identical notifications of one transaction into one. It is
-- only a hint: the source also polls, so a lost notification delays a row by
-- at most the poll interval.
CREATE OR REPLACE FUNCTION {{.NotifyFunction}}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {{.NotifyTrigger}} ON {{.Table}};
CREATE TRIGGER {{.NotifyTrigger}} AFTER INSERT ON {{.Table}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{.NotifyFunction}}('{{.NotifyChannel}}');
