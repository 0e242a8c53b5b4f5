-- delivered_at used to take the time of any delivery outcome; it now means the SMTP server accepted the email.
UPDATE invites SET delivered_at = NULL WHERE delivery <> 'sent' AND delivered_at IS NOT NULL;
