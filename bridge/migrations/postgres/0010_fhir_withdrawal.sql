-- FHIR withdrawal on edits (issue 18): keep in step with the other
-- backend's 0010_fhir_withdrawal.sql.
--
-- What each event's delivered bundles put on the FHIR server, so that an
-- edit, a replacement or a re-mapping that no longer produces a resource
-- withdraws it: computed, not guessed. One row per resource an event
-- placed with PUT at its own id (conditional creates, shared by many
-- events, are never withdrawn). body: the resource marked
-- entered-in-error, kept only where the destination withdraws that way.
CREATE TABLE fhir_placed (
    source      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    resource    TEXT NOT NULL,
    outbox_id   BIGINT NOT NULL,
    placed_at   BIGINT NOT NULL,
    body        TEXT,
    PRIMARY KEY (source, event_id, resource)
);
-- Whether another event still places a resource (then it stays).
CREATE INDEX fhir_placed_resource ON fhir_placed (resource);

-- What was withdrawn, when and how, shown on /v1/events/{id}.
CREATE TABLE fhir_withdrawals (
    id            BIGSERIAL PRIMARY KEY,
    source        TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    resource      TEXT NOT NULL,
    method        TEXT NOT NULL,
    by_event_id   TEXT NOT NULL,
    outbox_id     BIGINT NOT NULL,
    withdrawn_at  BIGINT NOT NULL
);
CREATE INDEX fhir_withdrawals_event ON fhir_withdrawals (source, event_id);
CREATE INDEX fhir_withdrawals_by ON fhir_withdrawals (source, by_event_id);

-- puts: the "Type/id" of every entry the bundle writes with PUT, one per
-- line, recorded as placed when it is delivered. withdraw_check: the
-- bundle is an edit's, a replacement's or a re-mapping's: its claim looks
-- for resources earlier versions placed that it no longer produces.
ALTER TABLE fhir_outbox ADD COLUMN puts TEXT;
ALTER TABLE fhir_outbox ADD COLUMN withdraw_check INTEGER NOT NULL DEFAULT 0;

-- Status messages to apps: each withdrawn event hears `withdrawn` once.
ALTER TABLE fhir_withdrawals ADD COLUMN notified INTEGER NOT NULL DEFAULT 0;
CREATE INDEX fhir_withdrawals_notify ON fhir_withdrawals (id) WHERE notified = 0;
