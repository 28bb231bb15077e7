-- One pending effect per key (see docs/architecture.md, "One pending effect
-- per key"). A row may carry a key; while it is pending no other pending row
-- of the same kind may carry the same key, so a second insert is refused with
-- PostgreSQL's unique violation (23505), or skipped by
--   INSERT ... ON CONFLICT (kind, key) WHERE status = 'pending' DO NOTHING
-- Once the row is final (succeeded, failed) it leaves the index and the key
-- is free again. Rows without a key are not limited (NULLs never conflict).
--
-- A plain nullable column without a default: adding it rewrites nothing, and
-- the services, which name the columns they read and write, are unaffected.
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS key text;

-- A bound on the key's length, so that a huge key is refused by name
-- ("violates check constraint <table>_key_length") rather than by the index's
-- "index row size ... exceeds btree version 4 maximum 2704", which would
-- also depend on how well the key compresses. 512 bytes holds any id, or a
-- few of them joined; hash anything longer into the key (md5(...)).
-- NOT VALID: the column is new, so existing rows hold NULL and need no scan
-- under the migration's lock; new and updated rows are checked all the same.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint
         WHERE conrelid = '{{.Table}}'::regclass AND conname = '{{.KeyLengthCheckName}}'
    ) THEN
        ALTER TABLE {{.Table}}
            ADD CONSTRAINT {{.KeyLengthCheck}} CHECK (octet_length(key) <= 512) NOT VALID;
    END IF;
END
$$;

-- The predicate is status = 'pending' alone, not "AND key IS NOT NULL":
-- ON CONFLICT (kind, key) WHERE status = 'pending' finds a partial index
-- only when its WHERE implies the index's predicate. Pending rows without a
-- key have an entry too; there are few pending rows at any time.
--
-- Built in the migration's transaction, which blocks writes while it scans
-- the table: instant on a new table, minutes on one of hundreds of millions
-- of rows. For such a table create it by hand first, without blocking writes,
-- and this statement then finds it:
--   CREATE UNIQUE INDEX CONCURRENTLY <table>_key_idx ON <table> (kind, key) WHERE status = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS {{.KeyIndex}} ON {{.Table}} (kind, key) WHERE status = 'pending';
