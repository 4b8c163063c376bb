-- Kiungo store, PostgreSQL flavour. Times are milliseconds since the Unix epoch.
-- Keep in step with ../sqlite/0001_store.sql: the code issues the same
-- statements against both.

-- Every event seen, by (source, event id): its current version, or a
-- tombstone when a later event replaced it (`state = 'superseded'`).
CREATE TABLE events (
    source          TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('live', 'superseded')),
    superseded_by   TEXT,
    mapping         TEXT,
    mapping_version BIGINT,
    version_hash    TEXT,
    version_ts      BIGINT,
    versions        BIGINT NOT NULL DEFAULT 0,
    message_id      TEXT,
    -- The raw payload of the current version, kept for re-mapping and
    -- replay; purged by the retention job once delivery no longer needs it.
    payload         BYTEA,
    received_at     BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (source, event_id)
);

-- Version hashes seen per event other than the current one (earlier
-- versions, late arrivals), so that a late re-delivery of an older version
-- is recognised and never overwrites a newer one.
CREATE TABLE event_versions (
    source       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    version_hash TEXT    NOT NULL,
    seen_at      BIGINT NOT NULL,
    PRIMARY KEY (source, event_id, version_hash)
);

-- FHIR deliveries: one row per event version, holding its transaction
-- bundle until it is delivered.
CREATE TABLE fhir_outbox (
    id              BIGSERIAL PRIMARY KEY,
    source          TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    version_hash    TEXT    NOT NULL,
    mapping         TEXT    NOT NULL,
    bundle          TEXT,
    entries         BIGINT NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivering', 'delivered', 'dead', 'superseded')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (source, event_id, version_hash)
);
CREATE INDEX fhir_outbox_due ON fhir_outbox (state, next_attempt_at);
-- Lookups by (source, event_id) use the unique index's prefix.

-- DHIS2 contributions of each live event; totals are recomputed from
-- these, so a replay or a withdrawal never double-counts.
CREATE TABLE dhis2_contributions (
    source         TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    rule           TEXT    NOT NULL,
    data_element   TEXT    NOT NULL,
    period         TEXT    NOT NULL,
    org_unit       TEXT    NOT NULL,
    coc            TEXT    NOT NULL,
    aoc            TEXT    NOT NULL,
    aggregation    TEXT    NOT NULL,
    value          TEXT,
    value_num      DOUBLE PRECISION,
    event_date     TEXT    NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (source, event_id, rule)
);
CREATE INDEX dhis2_contributions_total
    ON dhis2_contributions (data_element, period, org_unit, coc, aoc);

-- Totals whose contributions changed since they were last pushed.
CREATE TABLE dhis2_dirty (
    data_element TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    org_unit     TEXT    NOT NULL,
    coc          TEXT    NOT NULL,
    aoc          TEXT    NOT NULL,
    marked_at    BIGINT NOT NULL,
    PRIMARY KEY (data_element, period, org_unit, coc, aoc)
);

-- Messages and deliveries that could not go on, with the exact reason.
CREATE TABLE dead_letters (
    id           BIGSERIAL PRIMARY KEY,
    fingerprint  TEXT    NOT NULL UNIQUE,
    stage        TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    queue        TEXT,
    message_id   TEXT,
    event_id     TEXT,
    mapping      TEXT,
    reason_code  TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    payload      BYTEA,
    headers      TEXT,
    state        TEXT    NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'replayed', 'discarded')),
    seen_count   BIGINT NOT NULL DEFAULT 1,
    replay_count BIGINT NOT NULL DEFAULT 0,
    received_at  BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    resolved_at  BIGINT
);
CREATE INDEX dead_letters_open ON dead_letters (state, received_at);

-- Append-only record of operator actions.
CREATE TABLE audit_log (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT
);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
