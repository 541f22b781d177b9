"""Shared contract and plumbing for the event-sourced blog services.

`shared` holds the message contract, Kafka plumbing (the only package importing aiokafka),
settings, logging and errors. Services import `shared` and never each other.
"""
