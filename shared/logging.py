"""structlog configuration with correlation ids carried in contextvars.

`configure_logging("json")` in services, `"console"` for people at a terminal. Bind the ids of the
message being handled with `message_context(...)`: every log line inside carries them, also lines
from code that knows nothing about messages.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: what aiokafka logs at ERROR and then retries by itself (a broker coming up, a leader or a
#: group coordinator moving, new topics whose leaders are not elected yet); if the retries run
#: out, the caller gets the exception and our own code logs the error that matters
_RETRIED_BY_AIOKAFKA = (
    "Unable connect to",
    "NotLeaderForPartitionError",
    "LeaderNotAvailableError",
    "CoordinatorNotAvailableError",
    "NotCoordinatorError",
    "CoordinatorLoadInProgressError",
    "UnknownTopicOrPartitionError",
    "NodeNotReadyError",
    "KafkaConnectionError",
    "RequestTimedOutError",
)


class _RetriedIsNoError(logging.Filter):
    """Demote aiokafka's errors that it retries by itself to warnings: a normal start (broker
    still coming up, topics just created) shows no error lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and record.name.startswith("aiokafka")
            and any(s in record.getMessage() for s in _RETRIED_BY_AIOKAFKA)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: set by `shared.tracing` while tracing is on: (trace id, span id) of the current span, or
#: None (kept here so that logging, e.g. the CLI's, imports no OpenTelemetry)
current_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """`trace_id` and `span_id` (hex) of the current span, when tracing is on and one is."""
    if current_trace_ids is not None:
        current = current_trace_ids()
        if current is not None:
            event["trace_id"], event["span_id"] = current
    return event


def configure_logging(
    fmt: Literal["json", "console"] = "json",
    level: Literal["debug", "info", "warning", "error"] = "info",
    *,
    service: str | None = None,
) -> None:
    """Configure structlog (and route stdlib logging, e.g. aiokafka's, through the same output)."""
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared_processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # one write per line (print() writes the line and its newline apart: with
        # PYTHONUNBUFFERED the four services of `esctl up` interleave halves of their lines)
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RetriedIsNoError())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared_processors)
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # aiokafka logs every reconnect at INFO/WARNING; keep it but one level quieter than ours.
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    if service:
        structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; `name` becomes the `logger` field."""
    return structlog.get_logger(name) if name else structlog.get_logger()


@contextmanager
def message_context(
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    message_id: str | None = None,
    **extra: Any,
) -> Iterator[None]:
    """Bind message ids to every log line emitted inside the block (contextvars, task-local)."""
    values = {
        k: v
        for k, v in {
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "message_id": message_id,
            **extra,
        }.items()
        if v is not None
    }
    # bind + reset by token: what `bound_contextvars` does, without its copy of the whole
    # context on every entry (one of these per command in the command service)
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
