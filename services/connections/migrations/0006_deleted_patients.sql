-- Patients the platform deleted (a tombstone on platform.patients.v1), until they register again: a token issued
-- before the deletion still works until it expires, and must not make new requests staff would see and approve.
CREATE TABLE connections.deleted_patients (
    patient_id uuid        PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
