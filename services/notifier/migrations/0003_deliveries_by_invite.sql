-- InviteRevoked finds the invite's delivery while it is still open (pending, or being sent): a small partial index.
CREATE INDEX deliveries_open_by_invite ON notifier.deliveries (invite_id) WHERE status IN ('pending', 'sending');
