-- The addresses of patients the platform deleted (a tombstone on platform.patients.v1), kept for
-- DELIVERY_RETENTION_DAYS: a connection email queued for one of them (staff approved or rejected her request after
-- she deleted her account) is not sent. Registering the address again takes it off; invites need none of this (an
-- address nobody has registered is never invited).
CREATE TABLE departed_patients (
    email      text PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
