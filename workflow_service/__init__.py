"""Workflow service: sagas that turn events into commands, with timers and compensation."""
