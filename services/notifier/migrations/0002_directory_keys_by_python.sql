-- A delivery keeps the directory key of its recipient, computed by the notifier (Python's str.lower), and the
-- directory stops checking its keys with PostgreSQL's lower(): under the C locale that lowercases ASCII only, so
-- "Üser@example.com" never met the entry "üser@example.com" and ended not_on_platform.
-- Nullable, and not backfilled: notifier pods of the release before keep inserting without it during a rolling
-- update, and the table is not rewritten under its lock; readers fall back to lower(recipient) where it is NULL.
ALTER TABLE notifier.deliveries ADD COLUMN recipient_key text;
ALTER TABLE notifier.patients DROP CONSTRAINT patients_email_check;
