-- A patient the platform deleted (a tombstone on platform.patients.v1) withdraws her pending requests: nobody is
-- left to connect. The request rows go, her address, name and message with them; the audit log says so.
ALTER TABLE connections.audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE connections.audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('requested', 'approved', 'rejected', 'invite_accepted', 'withdrawn'));
