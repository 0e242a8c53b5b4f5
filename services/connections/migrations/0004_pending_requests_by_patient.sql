-- migrate: without a transaction
-- A deleted patient's pending requests, at every practice, found without reading every request ever made. Built
-- concurrently: a plain build would stop the requests' writes until it ends.
CREATE INDEX CONCURRENTLY IF NOT EXISTS connection_requests_pending_by_patient
    ON connections.connection_requests (patient_id) WHERE status = 'pending';
