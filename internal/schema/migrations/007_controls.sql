-- Operator controls (`effects cancel`, `effects pause`, `effects resume`;
-- docs/architecture.md, "Controls").
--
-- A new final status, 'cancelled': an operator stopped a pending effect.
-- The check is replaced by one that also allows it. It is added NOT VALID:
-- PostgreSQL then checks every row written from now on but does not scan
-- the rows already there (a scan in the migration's transaction would block
-- writes to a large table for as long as it takes). Every existing row
-- passed the old, narrower check, so it passes this one; an operator who
-- wants the catalog to say so can run, without blocking writes,
--   ALTER TABLE <table> VALIDATE CONSTRAINT <table>_status_check;
ALTER TABLE {{.Table}} DROP CONSTRAINT IF EXISTS {{.StatusCheck}};
ALTER TABLE {{.Table}}
    ADD CONSTRAINT {{.StatusCheck}} CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')) NOT VALID;

-- Who cancelled and when (free text like rerun_requested_by; NULL when not
-- given). completed_at is set to the same time: the row reached its final
-- state then, which is what retention measures from. Plain nullable columns
-- without defaults: adding them rewrites nothing.
ALTER TABLE {{.Table}}
    ADD COLUMN IF NOT EXISTS cancelled_at timestamptz,
    ADD COLUMN IF NOT EXISTS cancelled_by text;

-- Cancelled rows, like failed ones: listing them and retention (oldest
-- first, by created_at), and the completer finding the recent cancels it
-- mirrors to the dispatchers (by cancelled_at). Partial, so they hold only
-- cancelled rows, and a cancel leaves the pending index.
CREATE INDEX IF NOT EXISTS {{.CancelledIndex}} ON {{.Table}} (created_at) WHERE status = 'cancelled';
CREATE INDEX IF NOT EXISTS {{.CancelledAtIndex}} ON {{.Table}} (cancelled_at) WHERE status = 'cancelled';

-- Paused kinds: one row per kind ever paused. paused says whether it is
-- paused now; the last pause and the last resume are kept with who asked.
-- This table is the truth; the dispatchers read a copy in the JetStream
-- key-value bucket EFFECTS_CONTROL, which the completer keeps equal to it.
CREATE TABLE IF NOT EXISTS {{.PausedTable}} (
    kind       text        PRIMARY KEY,
    paused     boolean     NOT NULL,
    paused_at  timestamptz,
    paused_by  text,
    resumed_at timestamptz,
    resumed_by text
);
