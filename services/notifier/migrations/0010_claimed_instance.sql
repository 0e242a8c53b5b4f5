-- Which process slot (INSTANCE_NAME: the pod's name, kept across a restart of its container) holds a `sending`
-- delivery. A process starting under a name takes back what earlier runs under that name still hold: they are dead,
-- as no two processes run under one name at once. A nullable column: instant, no rewrite.
ALTER TABLE deliveries ADD COLUMN claimed_instance text;
