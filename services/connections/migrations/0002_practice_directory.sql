-- The practices on CollabKare, from the platform's PracticeRegistered events: a patient can only ask to connect
-- to one of them. Only what the check needs; the platform's own directory keeps the rest.
CREATE TABLE connections.practices (
    practice_id   uuid        PRIMARY KEY,
    registered_at timestamptz NOT NULL
);
