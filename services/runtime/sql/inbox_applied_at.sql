-- The hourly prune reads the inbox by age: a BRIN index suits a table written in time order, and stays tiny.
CREATE INDEX inbox_applied_at ON {schema}.inbox USING brin (applied_at);
