"""Event lifecycle operations: pruning the event log into an archive."""
