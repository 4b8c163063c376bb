-- Operations (issue 5): status messages to apps, trace context, lookups.
-- Keep in step with the other backend's 0003_operations.sql.

-- Feedback to apps: whether an outcome has been published as a status
-- message (after the broker confirmed it). Rows that exist before this
-- migration count as published, so that enabling feedback does not send
-- a flood of old statuses. (PostgreSQL 11+ adds a column with a constant
-- default without rewriting the table; the default then changes for new
-- rows.) A row whose outcome changes again (a replayed
-- bundle delivered, a dead letter parked again) is set back to 0.
ALTER TABLE fhir_outbox ADD COLUMN notified BIGINT NOT NULL DEFAULT 1;
ALTER TABLE fhir_outbox ALTER COLUMN notified SET DEFAULT 0;
CREATE INDEX fhir_outbox_notify ON fhir_outbox (id) WHERE notified = 0 AND state = 'delivered';
ALTER TABLE dead_letters ADD COLUMN notified BIGINT NOT NULL DEFAULT 1;
ALTER TABLE dead_letters ALTER COLUMN notified SET DEFAULT 0;
CREATE INDEX dead_letters_notify ON dead_letters (id) WHERE notified = 0;
ALTER TABLE dhis2_contributions ADD COLUMN notified BIGINT NOT NULL DEFAULT 1;
ALTER TABLE dhis2_contributions ALTER COLUMN notified SET DEFAULT 0;
CREATE INDEX dhis2_contributions_notify ON dhis2_contributions (source, event_id) WHERE notified = 0;

-- W3C traceparent the event arrived with (or one Kiungo started for it),
-- forwarded with its FHIR delivery.
ALTER TABLE fhir_outbox ADD COLUMN traceparent TEXT;

-- GET /v1/events/{id}: an event and its dead letters by event id.
CREATE INDEX events_event_id ON events (event_id);
CREATE INDEX dead_letters_event ON dead_letters (event_id);
CREATE INDEX dead_letters_message ON dead_letters (message_id);

-- Leases held by one replica at a time (the status publisher).
CREATE TABLE leases (
    name   TEXT   PRIMARY KEY,
    holder TEXT   NOT NULL,
    until  BIGINT NOT NULL
);
