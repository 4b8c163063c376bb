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
-- SQLite cannot change a primary key: each table is made anew, filled,
-- and takes the old one's place, with the pass's partial index.
CREATE TABLE dhis2_completeness_new (
    data_set      TEXT    NOT NULL,
    period        TEXT    NOT NULL,
    org_unit      TEXT    NOT NULL,
    aoc           TEXT    NOT NULL,
    due_at        INTEGER NOT NULL,
    registered    INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER,
    check_at      INTEGER,
    changes       INTEGER NOT NULL DEFAULT 0,
    claim         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    failing_since INTEGER,
    last_error    TEXT,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (data_set, period, org_unit, aoc)
);
INSERT INTO dhis2_completeness_new (data_set, period, org_unit, aoc, due_at, registered,
    registered_at, check_at, changes, claim, attempts, failing_since, last_error, updated_at)
SELECT data_set, period, org_unit, 'HllvX50cXC0', due_at, registered, registered_at, check_at,
    changes, claim, attempts, failing_since, last_error, updated_at
FROM dhis2_completeness;
DROP TABLE dhis2_completeness;
ALTER TABLE dhis2_completeness_new RENAME TO dhis2_completeness;
CREATE INDEX dhis2_completeness_due ON dhis2_completeness (check_at) WHERE check_at IS NOT NULL;

CREATE TABLE dhis2_completeness_changes_new (
    data_element TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    org_unit     TEXT    NOT NULL,
    aoc          TEXT    NOT NULL,
    filled       INTEGER NOT NULL DEFAULT 0,
    emptied      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (data_element, period, org_unit, aoc)
);
INSERT INTO dhis2_completeness_changes_new (data_element, period, org_unit, aoc, filled, emptied)
SELECT data_element, period, org_unit, 'HllvX50cXC0', filled, emptied
FROM dhis2_completeness_changes;
DROP TABLE dhis2_completeness_changes;
ALTER TABLE dhis2_completeness_changes_new RENAME TO dhis2_completeness_changes;

-- A completeness dead letter's fingerprint names the combo too, so that
-- a later success resolves the letter of its own combo only.
UPDATE dead_letters SET fingerprint = fingerprint || ':HllvX50cXC0'
WHERE fingerprint LIKE 'dhis2-completeness:%';
