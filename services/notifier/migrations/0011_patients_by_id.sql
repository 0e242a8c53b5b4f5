-- migrate: without a transaction
-- A patient's addresses by their id: a registration drops the addresses the patient changed from, and a tombstone
-- deletes them all (both scanned the whole directory before). Built concurrently: registrations go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS patients_by_id ON patients (patient_id);
