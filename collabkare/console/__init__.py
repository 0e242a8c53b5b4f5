"""The staff console: a static single page over the connections and invitations APIs, and its small server."""
