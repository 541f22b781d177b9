"""aiokafka's errors, for code outside `shared.kafka` that must tell a Kafka failure apart
(an HTTP edge answering 503, a loop that backs off) without importing aiokafka itself."""

from aiokafka.errors import KafkaError

__all__ = ["KafkaError"]
