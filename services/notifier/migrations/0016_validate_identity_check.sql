-- migrate: without a transaction
-- 0015's check, over the deliveries queued before it (all within it: the check it replaced was narrower). A
-- validation takes a lock that lets the table's writes go on while it reads it.
ALTER TABLE notifier.deliveries VALIDATE CONSTRAINT deliveries_identity_check_check;
