"""The three CollabKare services and the runtime they share."""
