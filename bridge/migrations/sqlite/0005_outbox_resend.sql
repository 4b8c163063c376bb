-- Replacements committed out of order (issue 6): keep in step with the
-- other backend's 0005_outbox_resend.sql.
--
-- With Y replacing X, an edit Y' of Y that does not name X can be
-- committed, and delivered, before Y itself (replicas, redeliveries).
-- X's bundle may then reach the server after Y''s and overwrite the
-- resources the two share. When Y finally withdraws X, the live version's
-- bundle is sent again: a delivered row goes back to pending, and a row
-- in flight is marked here and goes back to pending when its attempt ends.
ALTER TABLE fhir_outbox ADD COLUMN resend INTEGER NOT NULL DEFAULT 0;
