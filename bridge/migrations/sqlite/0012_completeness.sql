-- DHIS2 data set completeness (issue 14). Keep in step with the other
-- backend's 0012_completeness.sql.
--
-- One row per data set, period and org unit that Kiungo has registered
-- complete with DHIS2 (completeDataSetRegistrations), or is to look at:
-- registered says whether DHIS2 holds Kiungo's registration; check_at is
-- when the completeness pass looks at the row next (NULL: nothing to do),
-- at first the period's end plus the grace (due_at), later a retry, or
-- the end of a claim's lease (a claim moves it there, so a crashed pass's
-- rows come back and the walk never meets rows in flight). changes moves
-- when the values behind the row change, so that a result recorded for a
-- claim taken before then leaves the row to be looked at again.
CREATE TABLE dhis2_completeness (
    data_set      TEXT    NOT NULL,
    period        TEXT    NOT NULL,
    org_unit      TEXT    NOT NULL,
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
    PRIMARY KEY (data_set, period, org_unit)
);
-- The pass walks the rows due now, oldest first, and stops after its
-- batch: registered rows with nothing to do are not in the index.
CREATE INDEX dhis2_completeness_due ON dhis2_completeness (check_at) WHERE check_at IS NOT NULL;

-- Where DHIS2's values from Kiungo changed, written with the push's
-- result when completeness is configured, one row per data element,
-- period and org unit: filled when a value was stored there, emptied when
-- one was deleted. The pass turns each into rows of the data sets holding
-- the data element (known from DHIS2's metadata), then deletes it: every
-- row is work, so its walk is bounded by the batch.
CREATE TABLE dhis2_completeness_changes (
    data_element TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    org_unit     TEXT    NOT NULL,
    filled       INTEGER NOT NULL DEFAULT 0,
    emptied      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (data_element, period, org_unit)
);
