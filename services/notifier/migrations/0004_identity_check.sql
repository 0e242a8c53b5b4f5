-- What accepting an individual invite will ask the patient for (InviteRequested.identity_check): its email says so.
ALTER TABLE notifier.deliveries ADD COLUMN identity_check text
    CHECK (identity_check IN ('ssn', 'date_of_birth_and_phone'));
