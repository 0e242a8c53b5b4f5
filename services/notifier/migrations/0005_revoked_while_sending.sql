-- An invite revoked while its email was being sent: if that attempt does not end the delivery (a 4xx, a shutdown,
-- a crash), the next claim finishes it as revoked instead of sending it.
ALTER TABLE notifier.deliveries ADD COLUMN revoked_at timestamptz;
