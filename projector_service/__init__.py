"""Projector: builds read models from the event log into SQLite or PostgreSQL."""
