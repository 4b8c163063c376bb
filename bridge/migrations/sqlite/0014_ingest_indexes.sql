-- Fewer index inserts at random places per ingested event (issue 16).
-- Keep in step with the other backend's 0014_ingest_indexes.sql.
--
-- An index whose key starts with the event's id takes each new event at a
-- random place: on a large store every such insert dirties a page of its
-- own, written once to the journal and again by the checkpoint, and read
-- back first when it has left the cache. At 50,000 events these writes
-- were most of the ingest commit's I/O. Three such indexes duplicated what
-- another index already gives:
-- - events_event_id: GET /v1/events/{id} without a source looks the id up
--   under each source through the primary key, found by a loose scan of
--   the few sources (store/operations.rs).
-- - fhir_outbox_in_flight: the claim's probe for an older version of a
--   candidate's event in flight goes through the unique (source, event_id,
--   version_hash) index (an event has a few versions, each one row); the
--   backlog gauge counts pending and delivering rows through
--   fhir_outbox_ready and fhir_outbox_leased.
-- - dhis2_contributions_notify: unpublished contributions keyed by their
--   commit time first, so that a batch's rows land together at the end.
DROP INDEX events_event_id;
DROP INDEX fhir_outbox_in_flight;
DROP INDEX dhis2_contributions_notify;
CREATE INDEX dhis2_contributions_unnotified ON dhis2_contributions (created_at, source, event_id)
    WHERE notified = 0;
