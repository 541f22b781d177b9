"""OpenTelemetry traces across every hop: HTTP, Kafka records, decisions, projections, queries.

Off by default. `configure_tracing(service)` (called by `shared.service.run` after logging)
turns it on when one of these is set:

* `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: OTLP over HTTP
  (http/protobuf, port 4318 of a collector or Jaeger), with the standard `OTEL_*` variables
  (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
  `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` ...);
* `ESCTL_TRACE_FILE=/path`: one JSON object per finished span, one per line (for tests and for
  people without a collector).

Hot paths test the module-level `ENABLED` once and build nothing when it is False.

Context travels in Kafka record headers as W3C `traceparent`/`tracestate` (the OpenTelemetry
propagator over our header list); spans follow the OpenTelemetry messaging conventions
(`send <topic>` PRODUCER spans, `process <topic>` CONSUMER batch spans with a link to each
record's context, one span per record as a child of that record's context). A record without
(or with an unreadable) `traceparent` starts a new trace.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from shared import logging as eslogging
from shared.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from shared.kafka.records import InboundRecord, OutboundRecord
    from shared.messages.codec import Headers

#: True once `configure_tracing` set up an exporter; every hot path checks this first
ENABLED = False

TRACE_FILE_VARIABLE = "ESCTL_TRACE_FILE"
TRACE_HEADERS = ("traceparent", "tracestate")

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


# -- propagation over our header list --------------------------------------------------------


class _HeaderGetter(Getter["Headers"]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


class _HeaderSetter(Setter["Headers"]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode("latin-1")))


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()


def extract(headers: Headers) -> otel_context.Context:
    """The context a record's headers carry (an empty one: a new trace starts from it)."""
    return propagate.extract(headers, getter=_GETTER, context=otel_context.Context())


def inject(headers: Headers) -> Headers:
    """`headers` with the current span's `traceparent`/`tracestate` (replacing any there)."""
    out = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
    propagate.inject(out, setter=_SETTER)
    return out


def traced(record: OutboundRecord) -> OutboundRecord:
    """`record` carrying the current span's context in its headers."""
    return replace(record, headers=inject(record.headers))


def traced_since(outputs: list[OutboundRecord], start: int) -> None:
    """Put the current span's context on `outputs[start:]` (the records one input made)."""
    for i in range(start, len(outputs)):
        outputs[i] = traced(outputs[i])


def ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, None when there is none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def traceparent() -> str | None:
    """The current span as a W3C `traceparent` value."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


# -- spans -------------------------------------------------------------------------------------


def _messaging(topic: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
    }


def _record_attributes(record: InboundRecord, group: str | None) -> dict[str, Any]:
    attributes = _messaging(record.topic, "process")
    attributes["messaging.destination.partition.id"] = str(record.partition)
    attributes["messaging.kafka.offset"] = record.offset
    if record.key is not None:
        attributes["messaging.kafka.message.key"] = record.key.decode(errors="replace")
    if group:
        attributes["messaging.consumer.group.name"] = group
    return attributes


@contextmanager
def producing(topic: str, key: bytes | None) -> Iterator[Span]:
    """A PRODUCER span `send <topic>`, current inside the block (inject its context there)."""
    attributes = _messaging(topic, "send")
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode(errors="replace")
    with _tracer.start_as_current_span(
        f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


def start_batch(
    topic: str, partition: int | None, records: Sequence[InboundRecord], group: str | None
) -> tuple[Span, object]:
    """A CONSUMER span `process <topic>` for one batch of one partition, linked to the context
    of each record that has one, made current; end it with `end`."""
    links = []
    for record in records:
        ctx = trace.get_current_span(extract(record.headers)).get_span_context()
        if ctx.is_valid:
            links.append(
                Link(
                    ctx,
                    {"messaging.kafka.offset": record.offset},
                )
            )
    attributes = _messaging(topic, "process")
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    attributes["messaging.batch.message_count"] = len(records)
    if group:
        attributes["messaging.consumer.group.name"] = group
    if records:
        attributes["messaging.kafka.offset"] = records[0].offset
    span = _tracer.start_span(
        f"process {topic}",
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
        context=otel_context.Context(),  # a batch is its own trace root: its records link it
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def start_record(record: InboundRecord, name: str, group: str | None = None) -> tuple[Span, object]:
    """A CONSUMER span `name` for one record, child of the context in its headers (a new trace
    when it has none) and linked to the current (batch) span, made current; end it with `end`.
    Records it makes carry its context (`traced_since`)."""
    batch = trace.get_current_span().get_span_context()
    span = _tracer.start_span(
        name,
        context=extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=_record_attributes(record, group),
        links=[Link(batch)] if batch.is_valid else None,
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def end(started: tuple[Span, object], error: BaseException | None = None) -> None:
    """End a span of `start_batch`/`start_record` and restore the context before it."""
    span, token = started
    otel_context.detach(token)  # type: ignore[arg-type]
    finish(span, error)


def finish(span: Span, error: BaseException | None = None) -> None:
    """End `span`, marked failed when `error` is given."""
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def child_of(record: InboundRecord, name: str, **attributes: Any) -> Span:
    """A span child of `record`'s context, not made current (ended by the caller)."""
    batch = trace.get_current_span().get_span_context()
    return _tracer.start_span(
        name,
        context=extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes={**_record_attributes(record, None), **attributes},
        links=[Link(batch)] if batch.is_valid else None,
    )


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """An INTERNAL span, child of the current one."""
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


# -- HTTP --------------------------------------------------------------------------------------

_ASGI = Any
#: probes and scrapes, every few seconds: not worth a trace each
UNTRACED_PATHS = frozenset({"/health", "/metrics"})


class TracingMiddleware:
    """A SERVER span per HTTP request: it continues the caller's trace when the request has a
    `traceparent` header, and answers with a `traceresponse` header (W3C Trace Context level 2)
    so that a client without a tracer can put its next request in the same trace."""

    def __init__(self, app: _ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not ENABLED or scope.get("path") in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        attributes = {"http.request.method": method, "url.path": path}
        with _tracer.start_as_current_span(
            method,  # `<method> <route>` once routed: never the raw path (unbounded names)
            context=propagate.extract(carrier, context=otel_context.Context()),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as current:
            ctx = current.get_span_context()
            flags = format(int(ctx.trace_flags), "02x")
            response_header = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}".encode()

            async def send_traced(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        current.set_status(Status(StatusCode.ERROR))
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", ()),
                            (b"traceresponse", response_header),
                        ],
                    }
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    current.set_attribute("http.route", template)
                    current.update_name(f"{method} {template}")


# -- the exporter to a file --------------------------------------------------------------------


def span_as_dict(span: ReadableSpan, service: str) -> dict[str, Any]:
    """One finished span as a line of the trace file."""
    ctx = span.context
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name", service),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
    }


def _file_exporter(path: str, service: str) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: PLC0415

    class JsonLinesExporter(SpanExporter):
        """Appends each span as one JSON line to `path` (the file is shared by nobody else)."""

        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = "".join(json.dumps(span_as_dict(s, service), default=str) + "\n" for s in spans)
            with self._lock:
                self._file.write(lines)
                self._file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                self._file.close()

    return JsonLinesExporter()


# -- set up and tear down ----------------------------------------------------------------------


def _otlp_endpoint(env: Mapping[str, str]) -> str | None:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the environment asks for it; True when it did. Raises
    ConfigurationError for settings it cannot honour (OTLP over gRPC)."""
    global ENABLED, _provider, _tracer  # noqa: PLW0603
    env = os.environ if env is None else env
    endpoint = _otlp_endpoint(env)
    trace_file = env.get(TRACE_FILE_VARIABLE)
    if not endpoint and not trace_file:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if endpoint and protocol != "http/protobuf":
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: traces are exported "
            "over OTLP/HTTP only; set it to 'http/protobuf' (or unset it) and point "
            "OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
        )
    # OTEL_SERVICE_NAME (and service.name in OTEL_RESOURCE_ATTRIBUTES) win over our name
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    attributes = {} if named else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if trace_file:
        provider.add_span_processor(BatchSpanProcessor(_file_exporter(trace_file, service_name)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("esctl")
    ENABLED = True
    eslogging.current_trace_ids = ids
    return True


def describe(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where the spans go (for the start-up log line)."""
    env = os.environ if env is None else env
    where = {}
    endpoint = _otlp_endpoint(env)
    if endpoint:
        where["otlp_endpoint"] = endpoint
    if env.get(TRACE_FILE_VARIABLE):
        where["trace_file"] = env[TRACE_FILE_VARIABLE]
    return where


def shutdown_tracing() -> None:
    """Flush and stop the exporters (at service stop); tracing is off afterwards."""
    global ENABLED, _provider, _tracer  # noqa: PLW0603
    provider, _provider = _provider, None
    ENABLED = False
    eslogging.current_trace_ids = None
    _tracer = trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


__all__ = [
    "ENABLED",
    "TracingMiddleware",
    "child_of",
    "configure_tracing",
    "end",
    "extract",
    "ids",
    "inject",
    "producing",
    "shutdown_tracing",
    "span",
    "start_batch",
    "start_record",
    "traced",
    "traced_since",
]
