-- Delivery state (issue 4). Times are milliseconds since the Unix epoch.

-- A claimed bundle is `delivering` until `lease_until`; a crash leaves it
-- there, and once the lease passes another worker claims it again.
ALTER TABLE fhir_outbox ADD COLUMN lease_until BIGINT;
-- `Type/id` of each entry as the server answered, JSON array.
ALTER TABLE fhir_outbox ADD COLUMN server_ids TEXT;

-- Retry schedule of totals whose push failed for a transient reason.
ALTER TABLE dhis2_dirty ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dhis2_dirty ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dhis2_dirty ADD COLUMN last_error TEXT;
ALTER TABLE dhis2_dirty ADD COLUMN lease_until BIGINT;
-- Which claim holds the row, and how many changes it has seen: a push
-- clears the row only if no change arrived while it was in flight.
ALTER TABLE dhis2_dirty ADD COLUMN claim TEXT;
ALTER TABLE dhis2_dirty ADD COLUMN changes BIGINT NOT NULL DEFAULT 0;

-- The last value DHIS2 accepted for each total.
CREATE TABLE dhis2_pushed (
    data_element TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    org_unit     TEXT    NOT NULL,
    coc          TEXT    NOT NULL,
    aoc          TEXT    NOT NULL,
    value        TEXT    NOT NULL,
    pushed_at    BIGINT NOT NULL,
    PRIMARY KEY (data_element, period, org_unit, coc, aoc)
);

-- Health of each destination, shared by replicas.
CREATE TABLE destinations (
    name                 TEXT    PRIMARY KEY,
    circuit              TEXT    NOT NULL DEFAULT 'closed',
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    open_until           BIGINT,
    last_success_at      BIGINT,
    last_error           TEXT,
    last_error_at        BIGINT
);
