-- InviteRevoked finds the invite's delivery while it is still pending (not yet sent): a small partial index.
CREATE INDEX deliveries_pending_by_invite ON notifier.deliveries (invite_id) WHERE status = 'pending';
