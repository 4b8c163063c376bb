-- Status messages find the DHIS2 contributions they can tell "delivered"
-- without walking those still waiting for their total (issue 16).
-- Keep in step with the other backend's 0015_contributions_waiting.sql.
--
-- dhis2_contributions.notified now has three values:
-- - 2: waiting. A new contribution, or one whose total was refused after
--   it was accepted. No push DHIS2 accepted has included it yet.
-- - 0: accepted, not yet told. A push of its total that DHIS2 accepted
--   included it: the push that clears the total's dirty row (no change
--   arrived while it was in flight) moves the total's waiting rows here.
-- - 1: told "delivered" by a status message.
-- A round of status messages reads only rows at 0 (dhis2_contributions_
-- unnotified, oldest first, under its LIMIT), however many wait behind an
-- outage, and reads the time DHIS2 accepted them from accepted_at, set by
-- the push that moved them (no join with the totals). The push that accepts a total finds its waiting rows by the
-- total's index, which now ends with notified, without reading the rows
-- already accepted.
--
-- Rows at 0 that the old rule could not yet tell (their total not pushed
-- since they arrived, dirty again, or refused: an open dead letter) wait
-- for the next accepted push.
ALTER TABLE dhis2_contributions ADD COLUMN accepted_at BIGINT;
UPDATE dhis2_contributions SET notified = 2
WHERE notified = 0 AND (
    EXISTS (SELECT 1 FROM dhis2_dirty d
        WHERE d.data_element = dhis2_contributions.data_element AND d.period = dhis2_contributions.period
        AND d.org_unit = dhis2_contributions.org_unit AND d.coc = dhis2_contributions.coc
        AND d.aoc = dhis2_contributions.aoc)
    OR NOT EXISTS (SELECT 1 FROM dhis2_pushed p
        WHERE p.data_element = dhis2_contributions.data_element AND p.period = dhis2_contributions.period
        AND p.org_unit = dhis2_contributions.org_unit AND p.coc = dhis2_contributions.coc
        AND p.aoc = dhis2_contributions.aoc AND p.pushed_at >= dhis2_contributions.created_at)
    OR EXISTS (SELECT 1 FROM dead_letters dl WHERE dl.state = 'open'
        AND dl.fingerprint = 'dhis2:' || dhis2_contributions.data_element || ':' || dhis2_contributions.period
        || ':' || dhis2_contributions.org_unit || ':' || dhis2_contributions.coc || ':' || dhis2_contributions.aoc));
UPDATE dhis2_contributions SET accepted_at = (SELECT p.pushed_at FROM dhis2_pushed p
    WHERE p.data_element = dhis2_contributions.data_element AND p.period = dhis2_contributions.period
    AND p.org_unit = dhis2_contributions.org_unit AND p.coc = dhis2_contributions.coc
    AND p.aoc = dhis2_contributions.aoc)
WHERE notified = 0;
DROP INDEX dhis2_contributions_total;
CREATE INDEX dhis2_contributions_total
    ON dhis2_contributions (data_element, period, org_unit, coc, aoc, notified);
