-- An individual invite for which staff entered both the SSN and the date of birth and phone: accepting takes either,
-- and its email says so (InviteRequested.identity_checks). Replaced unvalidated: a moment's lock on the busiest
-- table, no scan under it; 0016 validates it while writes go on.
ALTER TABLE notifier.deliveries DROP CONSTRAINT deliveries_identity_check_check;
ALTER TABLE notifier.deliveries ADD CONSTRAINT deliveries_identity_check_check
    CHECK (identity_check IN ('ssn', 'date_of_birth_and_phone', 'ssn_or_date_of_birth_and_phone')) NOT VALID;
