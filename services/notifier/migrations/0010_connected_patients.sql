-- migrate: without a transaction
-- Whether an invite's patient is already connected to its practice, asked when the invite is claimed: the
-- connection emails (one per ConnectionApproved, an approved request or an accepted invite) say so. Staff may
-- invite a patient a moment after approving her request, before the invitations service has heard of the
-- approval; that invite's email would reach a connected patient with a link that no longer works. Built
-- concurrently: deliveries is the notifier's busiest table, and a plain build stops its writes until it ends.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_connected
    ON deliveries (practice_id, (coalesce(recipient_key, lower(recipient))))
    WHERE kind = 'connection_approved';
