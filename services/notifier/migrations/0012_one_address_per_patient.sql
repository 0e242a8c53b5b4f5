-- A patient's one address is their newest registration's (platform.patients.v1 is compacted by patient id): the
-- addresses a patient changed from, kept until now, are dropped, as a directory rebuilt from the topic would not
-- know them. Two registered at the same moment: the greater address stays, as a registration decides now.
DELETE FROM patients AS p
WHERE EXISTS (SELECT 1 FROM patients AS q
              WHERE q.patient_id = p.patient_id AND (q.registered_at, q.email) > (p.registered_at, p.email));
