-- Placeholder. Version 5 belongs to another change made at the same time
-- (the table source's cursor); this empty migration only keeps this
-- branch's versions contiguous, which tern requires. When the two branches
-- meet, the real 005 replaces this file (delete it).
SELECT 1;
