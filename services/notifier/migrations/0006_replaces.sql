-- The invite an InviteRequested resends (InviteRequested.replaces): its email says the earlier link no longer works.
ALTER TABLE notifier.deliveries ADD COLUMN replaces uuid;
