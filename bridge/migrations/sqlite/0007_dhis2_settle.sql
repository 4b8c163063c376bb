-- DHIS2 totals pushed once their contributions settle (issue 16). Keep in
-- step with the other backend's 0007_dhis2_settle.sql.
--
-- marked_at is a total's first change since its last push; changed_at its
-- latest. A total is pushed when it has not changed for push_delay, or
-- max_push_delay after its first change while changes keep coming: during
-- a backlog each total goes out a bounded number of times, not once per
-- push_delay.
ALTER TABLE dhis2_dirty ADD COLUMN changed_at INTEGER NOT NULL DEFAULT 0;
UPDATE dhis2_dirty SET changed_at = marked_at;
