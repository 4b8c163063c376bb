-- Retention of resolved dead letters (issue 13). Keep in step with the
-- other backend's 0009_dead_letters_purgeable.sql.
--
-- 0008's index was keyed by state: SQLite, planning without statistics,
-- walked dead_letters_open by state instead. Resolved (replayed or
-- discarded) letters still holding client data, oldest resolution first;
-- a letter reopened by the same message again gets resolved_at NULL.
DROP INDEX dead_letters_purgeable;
UPDATE dead_letters SET resolved_at = NULL WHERE state = 'open';
CREATE INDEX dead_letters_purgeable ON dead_letters (resolved_at)
    WHERE payload IS NOT NULL AND resolved_at IS NOT NULL;
