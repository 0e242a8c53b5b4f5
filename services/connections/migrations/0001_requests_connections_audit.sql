-- Connection requests, connections and the audit log of every decision (outbox and inbox come from 0000).

-- A patient's request to link their record to a practice, and the staff decision on it.
CREATE TABLE connections.connection_requests (
    id            uuid        PRIMARY KEY,
    practice_id   uuid        NOT NULL,
    patient_id    uuid        NOT NULL,
    patient_email text        NOT NULL,
    display_name  text,
    message       text        CHECK (char_length(message) <= 500),
    status        text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    created_at    timestamptz NOT NULL,
    decided_by    text,
    decided_at    timestamptz,
    reason        text        CHECK (char_length(reason) <= 500),
    connection_id uuid,
    -- A decision always says who and when; a pending request has neither.
    CONSTRAINT decided_when_not_pending CHECK (
        (status = 'pending') = (decided_at IS NULL) AND (decided_at IS NULL) = (decided_by IS NULL)
    ),
    CONSTRAINT reason_only_when_rejected CHECK (reason IS NULL OR status = 'rejected')
);

-- Asking twice must find the first request: at most one pending request per patient and practice.
CREATE UNIQUE INDEX connection_requests_one_pending
    ON connections.connection_requests (practice_id, patient_id) WHERE status = 'pending';

-- The staff list: one practice, optionally one status, newest first, keyset-paginated.
CREATE INDEX connection_requests_by_practice
    ON connections.connection_requests (practice_id, created_at DESC, id DESC);
CREATE INDEX connection_requests_by_practice_status
    ON connections.connection_requests (practice_id, status, created_at DESC, id DESC);

-- A patient linked to a practice, through an approved request or an accepted invite.
CREATE TABLE connections.connections (
    id            uuid        PRIMARY KEY,
    practice_id   uuid        NOT NULL,
    patient_id    uuid        NOT NULL,
    patient_email text        NOT NULL,
    connected_at  timestamptz NOT NULL,
    via           text        NOT NULL CHECK (via IN ('request', 'invite')),
    request_id    uuid        REFERENCES connections.connection_requests (id),
    invite_id     uuid,
    approved_by   text        NOT NULL,
    CONSTRAINT one_connection_per_patient UNIQUE (practice_id, patient_id),
    CONSTRAINT via_names_its_source CHECK (
        (via = 'request' AND request_id IS NOT NULL AND invite_id IS NULL)
        OR (via = 'invite' AND invite_id IS NOT NULL AND request_id IS NULL)
    )
);

CREATE INDEX connections_by_practice ON connections.connections (practice_id, connected_at DESC, id DESC);

ALTER TABLE connections.connection_requests
    ADD CONSTRAINT connection_requests_connection_fk
    FOREIGN KEY (connection_id) REFERENCES connections.connections (id);

-- Who did what when: one row per request and per decision; rows are never changed or removed.
CREATE TABLE connections.audit_log (
    id            bigserial   PRIMARY KEY,
    practice_id   uuid        NOT NULL,
    patient_id    uuid        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('requested', 'approved', 'rejected', 'invite_accepted')),
    actor         text        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    reason        text,
    request_id    uuid,
    connection_id uuid,
    invite_id     uuid
);

CREATE INDEX audit_log_by_practice ON connections.audit_log (practice_id, occurred_at);

-- Append-only is enforced by the database, not only by the code that happens to write here today.
CREATE FUNCTION connections.audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'connections.audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON connections.audit_log
    FOR EACH ROW EXECUTE FUNCTION connections.audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON connections.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION connections.audit_log_is_append_only();
