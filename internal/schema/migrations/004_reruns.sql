-- Re-runs asked by hand (`effects retry`): when the last one was asked and by
-- whom (free text, e.g. an on-call name; NULL when not given). Plain nullable
-- columns without defaults, so adding them rewrites nothing, Hasura tracks
-- them like any column, and the table source and the completer, which name
-- the columns they read and write, are unaffected. The outcome of the re-run
-- is written by the completer as for any run: a success replaces the failure.
ALTER TABLE {{.Table}}
    ADD COLUMN IF NOT EXISTS rerun_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS rerun_requested_by text;
