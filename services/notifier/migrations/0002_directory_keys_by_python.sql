-- A delivery keeps the directory key of its recipient, computed by the notifier (Python's str.lower), and the
-- directory stops checking its keys with PostgreSQL's lower(): under the C locale that lowercases ASCII only, so
-- "Üser@example.com" never met the entry "üser@example.com" and ended not_on_platform.
ALTER TABLE notifier.deliveries ADD COLUMN recipient_key text;
UPDATE notifier.deliveries SET recipient_key = lower(recipient);
ALTER TABLE notifier.deliveries ALTER COLUMN recipient_key SET NOT NULL;
ALTER TABLE notifier.patients DROP CONSTRAINT patients_email_check;
