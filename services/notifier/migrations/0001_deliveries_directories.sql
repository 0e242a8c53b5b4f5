-- Deliveries (one per source event) and the platform's patient and practice directories (outbox/inbox: 0000).

-- Patients with a CollabKare account, from PatientRegistered: who can be invited, and in which language.
CREATE TABLE notifier.patients (
    email         text        PRIMARY KEY CHECK (email = lower(email)),
    patient_id    uuid        NOT NULL,
    display_name  text,
    locale        text        NOT NULL CHECK (locale IN ('en', 'es')),
    registered_at timestamptz NOT NULL
);

-- Practices on CollabKare, from PracticeRegistered: the name every email gives, and where replies go.
CREATE TABLE notifier.practices (
    practice_id   uuid        PRIMARY KEY,
    name          text        NOT NULL,
    reply_to      text,
    registered_at timestamptz NOT NULL
);

-- One row per source event: the guard that makes "one email per event" hold under redelivery and restarts.
-- The key is derived from the source event id (uuid5, services.notifier.domain.delivery_id_for), so the
-- primary key is the guard and no second unique index has to be kept up to date on every status change.
CREATE TABLE notifier.deliveries (
    id                uuid        PRIMARY KEY,
    source_event_id   uuid        NOT NULL,
    source_event_type text        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('invite', 'connection_approved', 'connection_rejected')),
    recipient         text        NOT NULL,
    practice_id       uuid,
    correlation_id    text        NOT NULL,
    invite_id         uuid,
    batch_id          uuid,
    line_number       integer,
    -- What the email says; PHI and a live invite token, so cleared once the delivery is final.
    note              text,
    accept_url        text,
    expires_at        timestamptz,
    reason            text,
    status            text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'sent', 'not_on_platform', 'error')),
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before        timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz,
    locale            text,
    last_error        text,
    smtp_reply        text,
    message_id        text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    decided_at        timestamptz,
    CONSTRAINT decided_when_final CHECK ((status IN ('sent', 'not_on_platform', 'error')) = (decided_at IS NOT NULL)),
    CONSTRAINT claimed_when_sending CHECK (status <> 'sending' OR claimed_at IS NOT NULL)
);

-- The sender's queue: due pending rows in order, stale `sending` rows, and the backlog count, all from
-- one small index that final rows leave.
CREATE INDEX deliveries_open ON notifier.deliveries (status, not_before) WHERE status IN ('pending', 'sending');

-- One notification per statement, delivered at commit: senders wake when a consumed batch is queued.
CREATE FUNCTION notifier.deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifier_deliveries', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_notify AFTER INSERT ON notifier.deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION notifier.deliveries_notify();
