-- Patients the platform deleted (a tombstone on platform.patients.v1), until they register again: a token issued
-- before the deletion still authenticates until it expires, and must not accept an invite (connecting an account
-- that no longer exists).
CREATE TABLE deleted_patients (
    patient_id uuid        PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
