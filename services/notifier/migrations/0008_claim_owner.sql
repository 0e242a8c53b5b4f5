-- Which sender process holds a `sending` delivery. A live process renews the lease of each delivery it still
-- holds, so only the claims of a dead or frozen process expire; a process gives back or reschedules only claims
-- that are still its own, and sends nothing whose ownership it has not confirmed recently.
ALTER TABLE deliveries ADD COLUMN claimed_by uuid;
