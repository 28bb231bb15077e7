-- The table source publishes from a commit-ordered cursor instead of
-- claiming and marking each row (docs/architecture.md, "Table source"): the
-- only writes per effect are the insert and the completion.
--
-- txid is the inserting transaction's id (pg_current_xact_id(), the
-- top-level id even inside a subtransaction). The column is added with the
-- constant default 0, which PostgreSQL stores in the catalog instead of
-- rewriting the table, so every row from before this migration reads 0: a
-- transaction id older than any snapshot, "already published" to the
-- cursor (those rows came through the old claim and mark, or through the
-- webhook). The default then becomes pg_current_xact_id() for the rows
-- inserted from now on.
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS txid xid8 NOT NULL DEFAULT '0';
ALTER TABLE {{.Table}} ALTER COLUMN txid SET DEFAULT pg_current_xact_id();

-- The rows the old table source had not published yet (pending, published_at
-- NULL) are handed to the cursor: they get this migration's transaction id,
-- so the first pass after it publishes them. ALTER TABLE above holds the
-- table's exclusive lock until the commit: an old table source's claim in
-- flight finished before it (its rows are marked and are not taken here),
-- and none runs while this UPDATE does. The old unpublished index makes it a
-- scan of that backlog only.
UPDATE {{.Table}} SET txid = pg_current_xact_id() WHERE published_at IS NULL AND status = 'pending';

-- The cursor's reads: keyset order on (txid, id), from the transactions a
-- snapshot saw running and above the snapshot's xmax. On txid alone, a
-- transaction that inserted thousands of rows would be one key to scan
-- through at every batch. Partial, like the claim's index was: a completion
-- (status no longer pending) adds no entry to it, and rows inserted with
-- published_at set (for another source) never enter it.
--
-- Built in the migration's transaction, which blocks writes to the table
-- while it is built: instant on a new table, minutes on one that already
-- holds hundreds of millions of rows. For such a table create it by hand
-- first, without blocking writes, and this statement then finds it:
--   CREATE INDEX CONCURRENTLY <table>_txid_idx ON <table> (txid, id) WHERE status = 'pending' AND published_at IS NULL;
CREATE INDEX IF NOT EXISTS {{.TxidIndex}} ON {{.Table}} (txid, id) WHERE status = 'pending' AND published_at IS NULL;

-- The claim's partial index is no longer read; every insert paid an entry
-- in it.
DROP INDEX IF EXISTS {{.UnpublishedIndexQualified}};

-- The cursor, one row per table source (name 'table_source'), written once
-- per published batch by the one ingest that holds the table source's
-- advisory lock. A row is published when its transaction is visible in
-- base (every row such a transaction inserted was published), or, while a
-- pass from base to target is part done, when its transaction is visible in
-- target and (txid, id) <= (after_txid, after_id). The row is made by the
-- first table source that runs, so a table fed only by the webhook has
-- none, and the reconciler knows no table source ever published from it.
CREATE TABLE IF NOT EXISTS {{.CursorTable}} (
    name       text        PRIMARY KEY,
    base       pg_snapshot NOT NULL,
    target     pg_snapshot,
    after_txid xid8,
    after_id   uuid,
    version    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT {{.CursorCheck}} CHECK ((target IS NULL) = (after_txid IS NULL) AND (after_txid IS NULL) = (after_id IS NULL))
);
