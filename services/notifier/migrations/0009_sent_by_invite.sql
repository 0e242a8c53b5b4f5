-- Whether an invite's email went out, following its resends back: a resend says "that invitation's link no longer
-- works" only to a patient who got an earlier email (not to one whose earlier invites ended not_on_platform, error
-- or revoked unsent). Connection emails have no invite.
CREATE INDEX deliveries_by_invite ON deliveries (invite_id) WHERE invite_id IS NOT NULL;
