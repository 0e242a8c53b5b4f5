-- Each patient's newest registration, as platform.patients.v1 (compacted by patient id) keeps it; `patients` (who
-- answers at an address, in which language) is derived from it. `patients` alone, one row per address, lost an
-- address two patients had registered (a family's) for good as soon as one of them moved away from it or was
-- deleted, though the other's newest registration still named it.
CREATE TABLE registrations (
    patient_id    uuid        PRIMARY KEY,
    email         text        NOT NULL,  -- the directory's key (services/notifier/directory.py: directory_key)
    display_name  text,
    locale        text        NOT NULL CHECK (locale IN ('en', 'es')),
    registered_at timestamptz NOT NULL
);
CREATE INDEX registrations_by_email ON registrations (email);

-- Each patient has one address in `patients` since migration 0012: these are their newest registrations.
INSERT INTO registrations (patient_id, email, display_name, locale, registered_at)
SELECT DISTINCT ON (patient_id) patient_id, email, display_name, locale, registered_at
FROM patients
ORDER BY patient_id, registered_at DESC, email DESC;
