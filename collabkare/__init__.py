"""CollabKare developer tooling: the local stack and the command line around the services."""
