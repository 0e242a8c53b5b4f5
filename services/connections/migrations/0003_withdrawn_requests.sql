-- A patient the platform deleted (a tombstone on platform.patients.v1) withdraws her pending requests: nobody is
-- left to connect. The request rows go, her address, name and message with them; the audit log says so. The check
-- is replaced unvalidated (a moment's lock, no scan of the never-pruned log, which every decision writes to);
-- 0005 validates it without stopping the writes.
ALTER TABLE connections.audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE connections.audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('requested', 'approved', 'rejected', 'invite_accepted', 'withdrawn')) NOT VALID;
