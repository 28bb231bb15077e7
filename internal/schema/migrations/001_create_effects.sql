-- The effects table: one row per requested effect. Whoever asks for an effect
-- (Hasura, a backend, a SQL script) inserts kind and payload; the completer
-- writes status, completion, error, attempts and completed_at back.
--
-- This migration also upgrades a table that already exists without this
-- project's version table (made by hand or in Hasura's console): the table is
-- created only if missing, each column is added only if missing, and so are
-- the status check and the indexes. Columns that exist are left as they are
-- (type, default and nullability are not changed).
CREATE TABLE IF NOT EXISTS {{.Table}} (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending',
    attempts     int         NOT NULL DEFAULT 0,
    completed_at timestamptz,
    completion   jsonb,
    error        text,
    CONSTRAINT {{.StatusCheck}} CHECK (status IN ('pending', 'succeeded', 'failed'))
);

ALTER TABLE {{.Table}}
    ADD COLUMN IF NOT EXISTS id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    ADD COLUMN IF NOT EXISTS kind         text        NOT NULL,
    ADD COLUMN IF NOT EXISTS payload      jsonb       NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS created_at   timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS status       text        NOT NULL DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS attempts     int         NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS completed_at timestamptz,
    ADD COLUMN IF NOT EXISTS completion   jsonb,
    ADD COLUMN IF NOT EXISTS error        text;

-- PostgreSQL has no ADD CONSTRAINT IF NOT EXISTS.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint
         WHERE conrelid = '{{.Table}}'::regclass AND conname = '{{.StatusCheckName}}'
    ) THEN
        ALTER TABLE {{.Table}}
            ADD CONSTRAINT {{.StatusCheck}} CHECK (status IN ('pending', 'succeeded', 'failed'));
    END IF;
END
$$;

-- Listing work left to do (a reconciler re-publishing rows left pending, oldest
-- first) and failures (operators finding and retrying failed rows, newest
-- first). Partial indexes hold only those rows, so they stay small however
-- many succeeded rows the audit trail keeps, and a completion that makes a row
-- succeeded adds no entry to either of them.
CREATE INDEX IF NOT EXISTS {{.PendingIndex}} ON {{.Table}} (created_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS {{.FailedIndex}} ON {{.Table}} (created_at) WHERE status = 'failed';
