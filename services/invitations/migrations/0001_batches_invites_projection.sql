-- Roster batches and their rows, invites (roster and individual), and the projection of connected patients.

-- One submitted roster. The idempotency key makes a retried submission find this batch instead of sending twice.
CREATE TABLE batches (
    id              uuid        PRIMARY KEY,
    practice_id     uuid        NOT NULL,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    idempotency_key text,
    request_digest  bytea       NOT NULL,  -- SHA-256 of roster and default note: a reused key must carry the same
    lines           integer     NOT NULL,  -- physical lines, blank lines and comments included
    total           integer     NOT NULL,  -- entries: lines that are neither blank nor comments
    invited         integer     NOT NULL,  -- entries that were ready and got an invite
    correlation_id  text        NOT NULL
);
CREATE UNIQUE INDEX batches_idempotency_key ON batches (practice_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_by_practice ON batches (practice_id, created_at);

-- One row per roster entry. Rows are written with their batch in one transaction; there is no foreign key
-- because its per-row trigger would cost a 100,000-line roster a noticeable share of its time budget.
-- For rows with an invite, `outcome` is that invite's delivery state, updated in the same statement.
CREATE TABLE batch_rows (
    batch_id     uuid        NOT NULL,
    line_number  integer     NOT NULL,
    email        text        NOT NULL,  -- normalised when valid; the text as given when not
    note         text,                  -- the row's note, or the default note
    outcome      text        NOT NULL CHECK (outcome IN ('queued', 'sent', 'not_on_platform', 'error', 'invalid',
                                                        'duplicate', 'already_connected', 'already_invited')),
    reason       text,
    duplicate_of integer,
    invite_id    uuid,                  -- the row's current invite (a resend points it at the new one)
    attempts     integer     NOT NULL DEFAULT 0,  -- invites sent for this row
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (batch_id, line_number)
);

-- Every invite, from a roster or individual. Tokens and identity factors are stored only as digests.
CREATE TABLE invites (
    id              uuid        PRIMARY KEY,
    practice_id     uuid        NOT NULL,
    email           text        NOT NULL,
    email_key       text        NOT NULL,  -- lower(email): "the same patient" ignores case
    note            text,
    token_hash      bytea       NOT NULL,  -- SHA-256 of the accept token, which starts with the invite id
    status          text        NOT NULL CHECK (status IN ('pending', 'accepted', 'expired', 'revoked')),
    delivery        text        NOT NULL CHECK (delivery IN ('queued', 'sent', 'not_on_platform', 'error')),
    delivery_reason text,
    delivered_at    timestamptz,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    batch_id        uuid,
    line_number     integer,
    replaces        uuid,                  -- the invite this one resends
    ssn_digest      bytea,                 -- HMAC-SHA256, keyed by IDENTITY_HMAC_KEY
    dob_digest      bytea,
    phone_digest    bytea,
    failed_attempts integer     NOT NULL DEFAULT 0,
    locked_at       timestamptz,
    accepted_at     timestamptz,
    accepted_by     text,
    revoked_at      timestamptz,
    revoked_by      text,
    replaced_by     uuid,
    expired_at      timestamptz
);
-- A patient's invites at a practice: access history and the "already invited" check. At most one pending
-- invite per patient and practice is kept by the per-practice advisory lock every invite-creating use case
-- takes (docs/decisions/0004-invitations-one-pending-invite-by-lock.md): a second, unique index costs a 100,000-line
-- roster ~0.3 s of database time.
CREATE INDEX invites_by_patient ON invites (practice_id, email_key);
CREATE INDEX invites_due ON invites (expires_at) WHERE status = 'pending';

-- Patients connected to each practice, from ConnectionApproved: what "already connected" is checked against.
CREATE TABLE connected_patients (
    practice_id   uuid        NOT NULL,
    patient_id    uuid        NOT NULL,
    email         text        NOT NULL,
    email_key     text        NOT NULL,
    connection_id uuid        NOT NULL,
    connected_at  timestamptz NOT NULL,
    PRIMARY KEY (practice_id, patient_id)
);
CREATE INDEX connected_patients_by_email ON connected_patients (practice_id, email_key);
