"""Kafka's client errors, for code outside `shared.kafka` that must catch them."""

from aiokafka.errors import KafkaError

__all__ = ["KafkaError"]
