"""Traces: W3C context over our Kafka header lists, new traces for records without one, the
JSON-lines file, the HTTP middleware, trace ids in log lines, and the switch (off by default)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from command_service.handler import CommandHandler
from shared import tracing
from shared.errors import ConfigurationError
from shared.kafka.records import Delivered, InboundRecord
from shared.logging import add_trace_ids
from shared.messages.blog import CreatePost
from tests.unit.test_command_handler import TOPICS, command_record, handler

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[Any]:
    """Tracing on, into a file; calling the fixture's value flushes and returns the spans."""
    path = tmp_path / "spans.jsonl"
    assert tracing.configure_tracing("unit", {"ESCTL_TRACE_FILE": str(path)})
    assert tracing.ENABLED

    def finished() -> list[dict[str, Any]]:
        tracing.shutdown_tracing()
        return [json.loads(line) for line in path.read_text().splitlines()]

    yield finished
    tracing.shutdown_tracing()


def record(headers: list[tuple[str, bytes]], offset: int = 7) -> InboundRecord:
    return InboundRecord("t.commands", 2, offset, b"post-1", b"{}", headers)


def test_off_by_default_and_nothing_to_export_without_the_variables() -> None:
    assert not tracing.ENABLED
    assert not tracing.configure_tracing("unit", {})
    assert not tracing.ENABLED
    assert tracing.inject([("type", b"X")]) == [("type", b"X")]  # no span: nothing to carry


def test_otlp_over_grpc_is_refused_with_what_to_set_instead() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(ConfigurationError, match="http/protobuf"):
        tracing.configure_tracing("unit", env)
    assert not tracing.ENABLED


def test_the_context_goes_round_trip_through_a_header_list_and_replaces_an_older_one(
    spans: Any,
) -> None:
    started = tracing.start_record(record([("traceparent", TRACEPARENT.encode())]), "decide X")
    headers = tracing.inject([("type", b"PostCreated"), ("traceparent", b"00-old-old-01")])
    current = tracing.ids()
    tracing.end(started)
    assert [k for k, _ in headers] == ["type", "traceparent"]  # one traceparent, the new one
    assert current is not None and current[0] == TRACE_ID
    assert dict(headers)["traceparent"].decode() == f"00-{current[0]}-{current[1]}-01"
    # the receiving side: a child of that span in the same trace
    child = tracing.start_record(record(headers), "apply PostCreated")
    assert tracing.ids() is not None and tracing.ids()[0] == TRACE_ID  # type: ignore[index]
    tracing.end(child)
    by_name = {s["name"]: s for s in spans()}
    assert by_name["decide X"]["parent_span_id"] == PARENT_ID
    assert by_name["apply PostCreated"]["parent_span_id"] == current[1]
    assert by_name["decide X"]["kind"] == "CONSUMER"
    assert by_name["decide X"]["attributes"]["messaging.kafka.offset"] == 7
    assert by_name["decide X"]["attributes"]["messaging.kafka.message.key"] == "post-1"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("traceparent", b"garbage")],
        [("traceparent", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        [("traceparent", b"\xff\xfe")],
    ],
    ids=["none", "garbled", "zero-trace-id", "not-text"],
)
def test_a_record_without_a_readable_traceparent_starts_a_new_trace(
    spans: Any, headers: list[tuple[str, bytes]]
) -> None:
    batch = tracing.start_batch("t.commands", 2, [record(headers)], "g")
    started = tracing.start_record(record(headers), "decide X")
    tracing.end(started)
    tracing.end(batch)
    by_name = {s["name"]: s for s in spans()}
    decided = by_name["decide X"]
    assert decided["parent_span_id"] is None  # a root: not the batch's child either
    assert decided["trace_id"] != by_name["process t.commands"]["trace_id"]
    assert [link["span_id"] for link in decided["links"]] == [
        by_name["process t.commands"]["span_id"]
    ]
    assert by_name["process t.commands"]["links"] == []


def test_a_batch_span_links_each_record_with_a_context_and_counts_all(spans: Any) -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    records = [
        record([("traceparent", TRACEPARENT.encode())], 1),
        record([], 2),
        record([("traceparent", other.encode())], 3),
    ]
    tracing.end(tracing.start_batch("t.events", 0, records, "projector"))
    [batch] = spans()
    assert batch["name"] == "process t.events" and batch["kind"] == "CONSUMER"
    assert batch["attributes"]["messaging.batch.message_count"] == 3
    assert batch["attributes"]["messaging.system"] == "kafka"
    assert batch["attributes"]["messaging.consumer.group.name"] == "projector"
    assert [(link["trace_id"], link["span_id"]) for link in batch["links"]] == [
        (TRACE_ID, PARENT_ID),
        ("1" * 32, "2" * 16),
    ]
    assert [link["attributes"]["messaging.kafka.offset"] for link in batch["links"]] == [1, 3]


def test_the_file_holds_one_json_object_per_span_with_its_service_and_times(
    spans: Any,
) -> None:
    with tracing.producing("t.commands", b"post-1"), tracing.span("inner", detail="x"):
        pass
    lines = spans()
    assert {s["name"] for s in lines} == {"send t.commands", "inner"}
    for s in lines:
        assert set(s) >= {
            "name",
            "trace_id",
            "span_id",
            "parent_span_id",
            "links",
            "kind",
            "attributes",
            "service",
            "start",
            "end",
        }
        assert s["service"] == "unit" and s["end"] >= s["start"]
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16
    by_name = {s["name"]: s for s in lines}
    assert by_name["send t.commands"]["kind"] == "PRODUCER"
    assert by_name["inner"]["parent_span_id"] == by_name["send t.commands"]["span_id"]
    assert by_name["inner"]["attributes"] == {"detail": "x"}


def test_log_lines_carry_the_trace_and_span_ids_only_inside_a_span(spans: Any) -> None:
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with tracing.span("work"):
        current = tracing.ids()
        line = add_trace_ids(None, "info", {"event": "x"})
    assert current is not None
    assert (line["trace_id"], line["span_id"]) == current
    spans()


async def test_http_requests_continue_the_callers_trace_and_answer_a_traceresponse(
    spans: Any,
) -> None:
    app = FastAPI()

    @app.get("/posts/{post_id}")
    async def show(post_id: str) -> dict[str, str]:
        structlog.get_logger().info("inside")
        return {"id": post_id}

    transport = httpx.ASGITransport(app=tracing.TracingMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        continued = await http.get("/posts/1", headers={"traceparent": TRACEPARENT})
        fresh = await http.get("/posts/2")
        missing = await http.get("/no/such/path")
    assert missing.status_code == 404 and "traceresponse" in missing.headers
    [version, trace_id, span_id, flags] = continued.headers["traceresponse"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert fresh.headers["traceresponse"].split("-")[1] != TRACE_ID
    by_span = {s["span_id"]: s for s in spans()}
    server = by_span[span_id]
    assert server["kind"] == "SERVER" and server["parent_span_id"] == PARENT_ID
    assert server["name"] == "GET /posts/{post_id}"
    assert server["attributes"]["http.response.status_code"] == 200
    unrouted = by_span[missing.headers["traceresponse"].split("-")[2]]
    assert unrouted["name"] == "GET"  # no route: the method alone, never the raw path
    assert unrouted["attributes"]["url.path"] == "/no/such/path"


async def test_a_commands_events_and_outcome_carry_its_decision_span(spans: Any) -> None:
    h: CommandHandler = handler()
    await h.on_assigned(0)
    post = next(
        k for k in (f"post-{i}" for i in range(100)) if h.records.reroute(_rec(k), 0) is None
    )
    traced = command_record(CreatePost(author_id="ada", title="T"), post, partition=0)
    traced = InboundRecord(
        traced.topic,
        0,
        0,
        traced.key,
        traced.value,
        [*traced.headers, ("traceparent", TRACEPARENT.encode())],
    )
    outputs = list(await h.handle(0, [traced]))
    delivered = [Delivered(o, 0, 10 + i) for i, o in enumerate(outputs)]
    results = list(await h.after_send(0, delivered))
    [decide] = spans()
    assert decide["name"] == "decide CreatePost" and decide["parent_span_id"] == PARENT_ID
    expected = f"00-{TRACE_ID}-{decide['span_id']}-01".encode()
    assert [dict(o.headers)["traceparent"] for o in outputs] == [expected]
    assert [dict(r.headers)["traceparent"] for r in results] == [expected]


def _rec(key: str) -> InboundRecord:
    return InboundRecord(TOPICS.commands, 0, 0, key.encode(), b"", [])


def test_command_ids_are_read_from_the_header_or_the_body() -> None:
    h = handler()
    cid = uuid.uuid4()
    rec = command_record(CreatePost(author_id="ada", title="T"), "p", command_id=cid)
    assert h.records.command_id(rec) == cid
    bare = InboundRecord(rec.topic, 0, 0, rec.key, rec.value, [])
    assert h.records.command_id(bare) == cid
    assert h.records.command_id(InboundRecord(rec.topic, 0, 0, b"k", b"nope", [])) is None


def test_spans_go_over_otlp_http_to_the_endpoint_with_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local OTLP/HTTP receiver gets the spans as protobuf on /v1/traces, with the resource
    the OTEL_* variables describe."""
    received: list[tuple[str, str, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "OTEL_SERVICE_NAME": "renamed",
        }
        for name, value in env.items():  # the exporter reads the standard variables itself
            monkeypatch.setenv(name, value)
        assert tracing.configure_tracing("unit", env)
        with tracing.span("exported"):
            pass
        tracing.shutdown_tracing()
    finally:
        server.shutdown()
    [(path, content_type, body)] = received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "renamed"
    assert [s.name for ss in resource_spans.scope_spans for s in ss.spans] == ["exported"]
