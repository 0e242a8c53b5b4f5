-- Whether an invite's email went out: a resend says "that invitation's link no longer works" only to a patient
-- who got the earlier email (not to one whose earlier invite ended not_on_platform, error or revoked unsent).
CREATE INDEX deliveries_sent_by_invite ON deliveries (invite_id) WHERE status = 'sent';
