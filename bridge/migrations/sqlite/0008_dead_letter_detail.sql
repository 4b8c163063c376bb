-- Personal data in dead letters (issue 13). Keep in step with the other
-- backend's 0008_dead_letter_detail.sql.
--
-- detail: the event's values a reason leaves out (a lookup key that was
-- not found), for operators only, like the payload; purged with it.
ALTER TABLE dead_letters ADD COLUMN detail TEXT;
-- Retention: replayed and discarded dead letters still holding client
-- data, oldest resolution first (bridge/src/store/retention.rs).
CREATE INDEX dead_letters_purgeable ON dead_letters (resolved_at)
    WHERE payload IS NOT NULL AND state IN ('replayed', 'discarded');
