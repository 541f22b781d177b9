"""Kafka plumbing: the only package of the project that imports aiokafka.

The names below are imported on first use (PEP 562), so that importing one module of the package
(`shared.kafka.clients`, say, for `esctl lag`) does not import the processor and every message
model: a command-line tool pays for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.kafka.admin import Admin
    from shared.kafka.clients import (
        make_admin,
        make_consumer,
        make_producer,
        make_transactional_producer,
        running,
        stop_quietly,
        wait_for_brokers,
    )
    from shared.kafka.consumer import TopicConsumer
    from shared.kafka.errors import KafkaError
    from shared.kafka.processor import (
        PartitionHandler,
        ProcessorHooks,
        TransactionalPartitionProcessor,
        TwoPhaseHandler,
        transactional_id_for,
    )
    from shared.kafka.records import Delivered, InboundRecord, OutboundRecord, dead_letter
    from shared.kafka.topics import Topics, TopicSpec, bootstrap_system_topics, ensure_topics

_WHERE = {
    "Admin": "admin",
    "KafkaError": "errors",
    "TopicConsumer": "consumer",
    "running": "clients",
    "stop_quietly": "clients",
    "make_admin": "clients",
    "make_consumer": "clients",
    "make_producer": "clients",
    "make_transactional_producer": "clients",
    "wait_for_brokers": "clients",
    "PartitionHandler": "processor",
    "ProcessorHooks": "processor",
    "TransactionalPartitionProcessor": "processor",
    "TwoPhaseHandler": "processor",
    "transactional_id_for": "processor",
    "Delivered": "records",
    "InboundRecord": "records",
    "OutboundRecord": "records",
    "dead_letter": "records",
    "Topics": "topics",
    "TopicSpec": "topics",
    "bootstrap_system_topics": "topics",
    "ensure_topics": "topics",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Admin",
    "Delivered",
    "InboundRecord",
    "KafkaError",
    "OutboundRecord",
    "PartitionHandler",
    "ProcessorHooks",
    "TopicConsumer",
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
    "running",
    "stop_quietly",
    "transactional_id_for",
    "wait_for_brokers",
]
