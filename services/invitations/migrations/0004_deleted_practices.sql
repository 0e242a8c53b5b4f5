-- Practices the platform deleted (a tombstone on platform.practices.v1), until they register again: their invites
-- still out there accept nothing (a connection to a practice no email could name).
CREATE TABLE deleted_practices (
    practice_id uuid        PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
