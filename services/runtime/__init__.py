"""The shared service runtime: settings, logs, database, outbox/inbox, Kafka consumption, HTTP and auth."""
