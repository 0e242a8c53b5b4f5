"""The local infrastructure (PostgreSQL, a Kafka-protocol broker, an SMTP catcher) as child processes."""
