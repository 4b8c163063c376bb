-- Backlog-flat cost (issue 16): every hot statement walks only the rows
-- it works on, however many events are stored or pending. Keep in step
-- with the other backend's 0006_backlog_indexes.sql; bridge/tests/plans.rs
-- checks each statement's plan against a large backlog.
--
-- (state, next_attempt_at) let SQLite, which plans without statistics,
-- answer "state = 'pending' AND source = ? AND event_id IN (...)" (an
-- edit withdrawing its older version's bundle) and the feedback round by
-- walking every pending or delivered row. Each of its uses has a narrower
-- index: the claim fhir_outbox_ready, the lease sweep fhir_outbox_leased,
-- retention fhir_outbox_purgeable, status messages fhir_outbox_notify.
DROP INDEX fhir_outbox_due;
-- The lease sweep: bundles in flight whose lease ran out.
CREATE INDEX fhir_outbox_leased ON fhir_outbox (lease_until) WHERE state = 'delivering';
-- Retention: delivered or superseded bundles still holding their body,
-- oldest first; events still holding their payload.
CREATE INDEX fhir_outbox_purgeable ON fhir_outbox (updated_at)
    WHERE bundle IS NOT NULL AND state IN ('delivered', 'superseded');
CREATE INDEX events_purgeable ON events (updated_at) WHERE payload IS NOT NULL;
-- The DHIS2 claim walks totals due now (never retried first, oldest mark
-- first) and stops after its batch; totals waiting for a retry sit past
-- the walk's end.
CREATE INDEX dhis2_dirty_due ON dhis2_dirty (next_attempt_at, marked_at);
-- The recompute reads the totals of one claim.
CREATE INDEX dhis2_dirty_claim ON dhis2_dirty (claim) WHERE claim IS NOT NULL;
