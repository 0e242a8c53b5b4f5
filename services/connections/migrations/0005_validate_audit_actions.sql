-- migrate: without a transaction
-- 0003's check, over the rows written before it (all within it: the check it replaced was narrower). A validation
-- takes a lock that lets the log's writes go on while it reads the table.
ALTER TABLE connections.audit_log VALIDATE CONSTRAINT audit_log_action_check;
