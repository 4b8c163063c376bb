-- Labels of DHIS2 delivery metrics (issue 17). Keep in step with the
-- other backend's 0011_contribution_mapping.sql.
--
-- The mapping that made each contribution, so that a pushed or parked
-- total can be counted by the source and mapping behind it (one, or
-- `mixed`) without a look-up of the event per contribution. Rows stored
-- before this migration name no mapping ('').
ALTER TABLE dhis2_contributions ADD COLUMN mapping TEXT NOT NULL DEFAULT '';
