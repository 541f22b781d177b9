"""Kafka plumbing: the only package of the project that imports aiokafka."""

from shared.kafka.clients import (
    make_admin,
    make_consumer,
    make_producer,
    make_transactional_producer,
    wait_for_brokers,
)
from shared.kafka.processor import (
    PartitionHandler,
    ProcessorHooks,
    TransactionalPartitionProcessor,
    TwoPhaseHandler,
    transactional_id_for,
)
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord, dead_letter
from shared.kafka.topics import Topics, TopicSpec, bootstrap_system_topics, ensure_topics

__all__ = [
    "Delivered",
    "InboundRecord",
    "OutboundRecord",
    "PartitionHandler",
    "ProcessorHooks",
    "TopicSpec",
    "Topics",
    "TransactionalPartitionProcessor",
    "TwoPhaseHandler",
    "bootstrap_system_topics",
    "dead_letter",
    "ensure_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
    "make_transactional_producer",
    "transactional_id_for",
    "wait_for_brokers",
]
