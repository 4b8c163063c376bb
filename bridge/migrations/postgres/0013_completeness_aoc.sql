-- DHIS2 data set completeness per attribute option combo (issue 14).
-- Keep in step with the other backend's 0013_completeness_aoc.sql.
--
-- DHIS2 keys a registration by data set, period, org unit and attribute
-- option combo: a data set with an attribute category combo (projects,
-- funding mechanisms) is registered once per combo that holds values.
-- Both completeness tables gain the attribute option combo (as the
-- mappings wrote it, like dhis2_contributions.aoc) in their key. Rows and
-- notes made before were all of the default combo, HllvX50cXC0 (the
-- mappings' default, mappings/src/output.rs), and keep it.
--
-- The column is added with that default for the existing rows, which is
-- then dropped: every new row names its combo. The partial index
-- dhis2_completeness_due is on check_at alone and stays as it is.
ALTER TABLE dhis2_completeness ADD COLUMN aoc TEXT NOT NULL DEFAULT 'HllvX50cXC0';
ALTER TABLE dhis2_completeness ALTER COLUMN aoc DROP DEFAULT;
ALTER TABLE dhis2_completeness DROP CONSTRAINT dhis2_completeness_pkey;
ALTER TABLE dhis2_completeness ADD PRIMARY KEY (data_set, period, org_unit, aoc);

ALTER TABLE dhis2_completeness_changes ADD COLUMN aoc TEXT NOT NULL DEFAULT 'HllvX50cXC0';
ALTER TABLE dhis2_completeness_changes ALTER COLUMN aoc DROP DEFAULT;
ALTER TABLE dhis2_completeness_changes DROP CONSTRAINT dhis2_completeness_changes_pkey;
ALTER TABLE dhis2_completeness_changes ADD PRIMARY KEY (data_element, period, org_unit, aoc);

-- A completeness dead letter's fingerprint names the combo too, so that
-- a later success resolves the letter of its own combo only.
UPDATE dead_letters SET fingerprint = fingerprint || ':HllvX50cXC0'
WHERE fingerprint LIKE 'dhis2-completeness:%';
