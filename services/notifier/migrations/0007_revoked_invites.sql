-- Invites revoked, remembered whether or not their delivery was queued yet: an InviteRevoked that overtook its
-- InviteRequested (a publish retried after a failure) must still stop the email.
CREATE TABLE revoked_invites (
    invite_id  uuid PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
