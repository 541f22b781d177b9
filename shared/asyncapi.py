"""The AsyncAPI 3.0 document of the system's topics, generated from the code that writes them.

Other teams plug into the system through Kafka; this document says, per topic, what may be put
on it and what comes back: the key, the headers, the payload schemas (the pydantic message
models, personal fields marked `x-personal`), the topic's configuration and which service
produces and consumes it. `esctl schema asyncapi` writes it to `schemas/asyncapi.yaml`
(`make schemas`); tests/unit/test_asyncapi.py fails when the committed file is not what this
module generates, and `make test-contracts` validates it with the AsyncAPI project's CLI.

One document for the whole system rather than one per service: every topic has its producer
and its consumers in different services, so one document holds each channel and message once,
and each operation names its service in its tags (`command-service`, `projector`,
`workflow-service`, `other-clients`). The query service has no operation: it reads its read
store, never Kafka.

The header names are not typed out here: they are read from what the encoders really write
(`encode_command`, `encode_event`, `CommandOutcome.encode`, `dead_letter`), so a header added to
the codec without a description here stops the generation with its name.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from uuid import UUID

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.errors import EsError
from shared.kafka.records import InboundRecord, dead_letter
from shared.kafka.topics import Topics, TopicSpec, system_topic_specs
from shared.messages.base import AGGREGATE_ID_PATTERN, COMMANDS, EVENTS
from shared.messages.blog import ERASURE_ISSUER, WORKFLOW_ISSUER, EditPost, PostEdited
from shared.messages.codec import Headers, encode_command, encode_event
from shared.messages.results import CommandOutcome
from shared.messages.schema import command_record_model, event_record_model
from shared.messages.snapshots import CHECKPOINT_KEY, SNAPSHOT_SCHEMA
from shared.settings import (
    CommandServiceSettings,
    KafkaSettings,
    ProjectorSettings,
    WorkflowSettings,
)

#: the code of the error raised when the code writes something the document does not describe
INCOMPLETE = "asyncapi_incomplete"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
REF = "#/components/schemas/{model}"

# The services, as operation tags.
COMMAND_SERVICE = "command-service"
PROJECTOR = "projector"
WORKFLOW_SERVICE = "workflow-service"
OTHER_CLIENTS = "other-clients"

#: the commands the workflow service's policies send (tests/unit/test_asyncapi.py holds this to
#: the command classes workflow_service/policies.py uses)
WORKFLOW_COMMANDS = (
    "AssignReviewer",
    "PublishPost",
    "RejectPost",
    "SchedulePublication",
    "SendReviewReminder",
    "UnpublishPost",
)

_SERVICE_TAGS = {
    COMMAND_SERVICE: "HTTP intake (port 8001) and the transactional command processor: "
    "decides commands, appends events, writes outcomes and snapshots.",
    PROJECTOR: "Applies events to the read store (SQLite/PostgreSQL) exactly once; the query "
    "service reads that store and has no Kafka operation.",
    WORKFLOW_SERVICE: "Sagas over the events (editorial review, scheduled publication): sends "
    "commands, keeps its state on a compacted changelog.",
    OTHER_CLIENTS: "What another team's Kafka client may do: produce commands, read events and "
    "outcomes.",
}

#: every header the encoders write, with what it means; a header missing here stops generation
_HEADER_TEXT: dict[str, dict[str, Any]] = {
    "content-type": {"description": "always `application/json`", "const": "application/json"},
    "type": {"description": "the message type (the body's `type`)"},
    "message_id": {
        "description": "the command id (commands) or the event id (events)",
        "format": "uuid",
    },
    "schema_version": {
        "description": "the payload's schema version (decimal)",
        "pattern": "^[1-9][0-9]*$",
    },
    "aggregate_id": {"description": "the aggregate id, equal to the record key"},
    "expected_version": {
        "description": "optimistic concurrency: the aggregate version the command expects",
        "pattern": "^[0-9]+$",
    },
    "aggregate_version": {
        "description": "the aggregate's version after this event (decimal)",
        "pattern": "^[1-9][0-9]*$",
    },
    "occurred_at": {"description": "when the event happened (ISO 8601)", "format": "date-time"},
    "correlation_id": {
        "description": "the conversation the message belongs to (a command's own id unless "
        "given; a workflow's id for the commands it sends); events carry their command's"
    },
    "causation_id": {"description": "what caused the message (e.g. `workflow:<id>/<step>`)"},
    "issued_by": {
        "description": "which part of the system issued the command "
        f"(`{WORKFLOW_ISSUER}`, `{ERASURE_ISSUER}`); absent from other clients"
    },
    "actor": {"description": "who asked for the command (the subject of the caller's token)"},
    "status": {"description": "the outcome", "enum": ["accepted", "rejected"]},
    "code": {"description": "the rejection code (rejected outcomes only)"},
    "dlq.error.code": {"description": "why the record was dead-lettered (an error code)"},
    "dlq.error.message": {"description": "the reason in words (at most 4000 characters)"},
    "dlq.source.topic": {"description": "the topic the record was read from"},
    "dlq.source.partition": {
        "description": "its partition there (decimal)",
        "pattern": "^[0-9]+$",
    },
    "dlq.source.offset": {"description": "its offset there (decimal)", "pattern": "^[0-9]+$"},
}

#: W3C trace context (https://www.w3.org/TR/trace-context/), optional on every record
_TRACE_HEADERS: dict[str, dict[str, Any]] = {
    "traceparent": {
        "description": "W3C trace context of the span that produced the record (optional; a "
        "record without it starts a new trace)",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    },
    "tracestate": {"description": "W3C vendor trace state (optional, with traceparent)"},
}

_PREFIX_PARAMETER = {
    "description": "TOPIC_PREFIX of the deployment, prepended to every topic name (empty by "
    "default; e.g. `dev.`)",
    "default": "",
    "examples": ["", "dev."],
}

_DLQ_PAYLOAD_TEXT = (
    "The original record's value, byte for byte (it may not even be JSON: that may be why it "
    "is here); the key is the original key, so per-key order is kept."
)


def _header(name: str) -> dict[str, Any]:
    text = _HEADER_TEXT.get(name) or _TRACE_HEADERS.get(name)
    if text is None:
        raise EsError(
            f"the codec writes header {name!r}, which shared/asyncapi.py does not describe: "
            "add it to _HEADER_TEXT",
            code=INCOMPLETE,
        )
    return {"type": "string", **text}


def _headers_schema(
    written: Iterable[str], *, required: Iterable[str] = (), extra: str = ""
) -> dict[str, Any]:
    names = sorted(set(written))
    properties = {n: _header(n) for n in names}
    properties |= {n: {"type": "string", **t} for n, t in _TRACE_HEADERS.items()}
    schema: dict[str, Any] = {
        "type": "object",
        "description": "Kafka record headers, UTF-8 values."
        + (f" {extra}" if extra else "")
        + " `traceparent`/`tracestate`: W3C trace context, optional.",
        "properties": properties,
    }
    req = sorted(set(required))
    if req:
        schema["required"] = req
    return schema


def _names(headers: Headers) -> list[str]:
    return [name for name, _ in headers]


_SAMPLE_ID = UUID(int=1)
_SAMPLE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def command_headers() -> tuple[list[str], list[str]]:
    """(every header a command record may carry, those it always carries), as encoded."""
    full = encode_command(
        EditPost(title="t"),
        command_id=_SAMPLE_ID,
        aggregate_id="post-1",
        expected_version=1,
        occurred_at=_SAMPLE_TIME,
        correlation_id="c",
        causation_id="c",
        issued_by=WORKFLOW_ISSUER,
        actor="a",
        actor_roles=["editor"],
    )
    bare = encode_command(EditPost(title="t"), command_id=_SAMPLE_ID, aggregate_id="post-1")
    return _names(full.headers), _names(bare.headers)


def event_headers() -> tuple[list[str], list[str]]:
    """(every header an event record may carry, those it always carries), as encoded."""
    full = encode_event(
        PostEdited(title="t"),
        event_id=_SAMPLE_ID,
        aggregate_id="post-1",
        aggregate_version=1,
        occurred_at=_SAMPLE_TIME,
        command_id=_SAMPLE_ID,
        correlation_id="c",
        causation_id="c",
        actor="a",
    )
    bare = encode_event(
        PostEdited(title="t"),
        event_id=_SAMPLE_ID,
        aggregate_id="post-1",
        aggregate_version=1,
        occurred_at=_SAMPLE_TIME,
    )
    return _names(full.headers), _names(bare.headers)


def outcome_headers() -> tuple[list[str], list[str]]:
    """(every header an outcome record may carry, those it always carries), as encoded."""
    rejected = CommandOutcome(command_id=_SAMPLE_ID, status="rejected", code="c").encode()
    accepted = CommandOutcome(command_id=_SAMPLE_ID, status="accepted").encode()
    return _names(rejected.headers), _names(accepted.headers)


def dead_letter_headers() -> list[str]:
    """The headers `dead_letter` adds to the original record's."""
    record = InboundRecord(topic="t", partition=0, offset=0, key=None, value=None)
    return _names(dead_letter(record, ValueError("x"), "t.dlq").headers)


# ---------------------------------------------------------------------------------------------
# Schemas


def _schemas() -> dict[str, Any]:
    """Every payload schema, in components/schemas, referenced as #/components/schemas/X."""
    models: list[type[BaseModel]] = [command_record_model(n) for n in sorted(COMMANDS.types())]
    models += [event_record_model(n) for n in sorted(EVENTS.types())]
    models.append(CommandOutcome)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    for name, cls in COMMANDS.types().items():
        if cls.issuers:
            record = schemas[f"{name}Record"]
            record["x-issued-by"] = sorted(cls.issuers)
            record["description"] += (
                f"\n\nIssued by the system itself ({', '.join(sorted(cls.issuers))}); from any "
                f"other client refused with `system_command`: {cls.instead}."
            )
    for name, event in EVENTS.types().items():
        schemas[f"{name}Record"]["properties"]["schema_version"]["maximum"] = event.schema_version
    schemas |= _header_schemas()
    schemas |= _hand_written_schemas()
    return dict(sorted(schemas.items()))


def _header_schemas() -> dict[str, Any]:
    """The header sets, as the encoders write them."""
    cmd_all, _ = command_headers()
    ev_all, ev_required = event_headers()
    out_all, out_required = outcome_headers()
    dlq = dead_letter_headers()
    kept = (
        "The original record's headers are kept (those of a record produced without them are "
        "absent), with the `dlq.*` headers added."
    )
    return {
        "CommandHeaders": _headers_schema(
            cmd_all,
            extra="The system's producers write them; other clients may leave them out: the "
            "body is authoritative and a consumer ignores them.",
        ),
        "EventHeaders": _headers_schema(ev_all, required=ev_required),
        "CommandOutcomeHeaders": _headers_schema(out_all, required=out_required),
        "DeadLetteredCommandHeaders": _headers_schema([*cmd_all, *dlq], required=dlq, extra=kept),
        "DeadLetteredEventHeaders": _headers_schema([*ev_all, *dlq], required=dlq, extra=kept),
    }


def _hand_written_schemas() -> dict[str, Any]:
    """Values whose writers build them as plain JSON (the workflow service's records, the
    snapshot checkpoint): described here, held to the writers by tests."""
    text = {"type": "string"}
    when = {"type": "string", "format": "date-time"}
    return {
        "SnapshotCheckpoint": {
            "type": "object",
            "description": f"Key `{CHECKPOINT_KEY.decode()}`: every aggregate changed below "
            "`next_offset` of the same events partition has its snapshot on the topic (restore "
            "reads the snapshots, then replays from there; `esctl prune` never prunes above "
            "it).",
            "required": ["snapshot_schema", "next_offset", "aggregates", "at"],
            "properties": {
                "snapshot_schema": {"const": SNAPSHOT_SCHEMA},
                "next_offset": {"type": "integer", "minimum": 0},
                "aggregates": {"type": "integer", "minimum": 0},
                "at": when,
            },
        },
        "AggregateSnapshot": {
            "type": "object",
            "description": "Key = aggregate id: the aggregate's state, internal to the command "
            "service (its fields change with its domain; personal fields stay sealed). A "
            "`snapshot_schema` this code does not read makes the restore replay instead.",
            "required": ["snapshot_schema", "kind", "state"],
            "properties": {
                "snapshot_schema": {"const": SNAPSHOT_SCHEMA},
                "kind": {"enum": ["post", "author"]},
                "state": {"type": "object"},
            },
        },
        "WorkflowState": {
            "type": ["object", "null"],
            "description": "Key = workflow id: the saga's last state, internal to the workflow "
            "service (read it through its HTTP API, `esctl workflows show`); null (a "
            "tombstone) once the workflow is forgotten. Key `__partition__`: the partition's "
            "meta record `{round_robin, control_next_offset}`.",
        },
        "OperatorAction": {
            "type": "object",
            "description": "An operator action (POST /workflows/{id}/retry|skip|compensate, "
            "`esctl workflows retry|skip|compensate`), applied once by the owner of the "
            "workflow's partition.",
            "required": ["workflow_id", "action", "request_id", "at"],
            "properties": {
                "workflow_id": text,
                "action": {"enum": ["retry", "skip", "compensate"]},
                "reason": {"type": ["string", "null"]},
                "request_id": {"type": "string", "format": "uuid"},
                "at": when,
            },
        },
        "WorkflowStep": {
            "type": "object",
            "description": "One step of one workflow, for people (header `what` repeats it).",
            "required": ["workflow_id", "kind", "post_id", "status", "at", "what", "detail"],
            "properties": {
                "workflow_id": text,
                "kind": text,
                "post_id": text,
                "status": text,
                "at": when,
                "what": text,
                "detail": {"type": "object"},
            },
        },
        "WorkflowDeadLetter": {
            "type": "object",
            "description": "An activity of a workflow that failed for good (header `error` "
            "holds the reason, at most 1000 characters).",
            "required": ["workflow_id", "post_id", "reason", "detail", "at"],
            "properties": {
                "workflow_id": text,
                "post_id": text,
                "reason": text,
                "detail": {"type": "object"},
                "at": when,
            },
        },
    }


# ---------------------------------------------------------------------------------------------
# Messages


def _key(description: str, **schema: Any) -> dict[str, Any]:
    return {"kafka": {"key": {"type": "string", "description": description, **schema}}}


def _aggregate_key() -> dict[str, Any]:
    return _key("the aggregate id (UTF-8)", pattern=AGGREGATE_ID_PATTERN)


def _messages() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    cmd_headers = {"$ref": REF.format(model="CommandHeaders")}
    for name, cls in sorted(COMMANDS.types().items()):
        message: dict[str, Any] = {
            "name": name,
            "title": name,
            "summary": (cls.__doc__ or name).strip().split("\n\n")[0].replace("\n", " "),
            "contentType": "application/json",
            "headers": cmd_headers,
            "payload": {"$ref": REF.format(model=f"{name}Record")},
            "bindings": _aggregate_key(),
            "tags": [{"name": "command"}],
        }
        if cls.issuers:
            message["x-issued-by"] = sorted(cls.issuers)
        messages[name] = message
    ev_headers = {"$ref": REF.format(model="EventHeaders")}
    for name, event in sorted(EVENTS.types().items()):
        summary = (event.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        messages[name] = {
            "name": name,
            "title": name,
            "summary": summary or f"{name} (schema version {event.schema_version})",
            "description": f"The payload of schema version {event.schema_version}. The log also "
            "holds records of the older versions (`schema_version` below it) with the payload "
            "of their time: the system's readers upcast them (README: Schema evolution); read "
            "`schema_version` before the payload.",
            "contentType": "application/json",
            "headers": ev_headers,
            "payload": {"$ref": REF.format(model=f"{name}Record")},
            "bindings": _aggregate_key(),
            "tags": [{"name": "event"}],
        }
    messages["CommandOutcome"] = {
        "name": "CommandOutcome",
        "title": "Command outcome",
        "summary": "Accepted (with the events and their positions) or rejected (code, reason).",
        "description": "Partition = the command's partition on the commands topic (not a hash "
        "of the key). `<partition>:<offset>` of the last event is the consistency token "
        "readers wait for. A retried command id answers with the first outcome and "
        "`duplicate: true`.",
        "contentType": "application/json",
        "headers": {"$ref": REF.format(model="CommandOutcomeHeaders")},
        "payload": {"$ref": REF.format(model="CommandOutcome")},
        "bindings": _key("the command id", format="uuid"),
    }
    for name, what in (
        ("DeadLetteredCommand", "A command record"),
        ("DeadLetteredEvent", "An event record"),
    ):
        messages[name] = {
            "name": name,
            "title": name,
            "summary": f"{what} that could not be decoded (not JSON, unknown type, invalid "
            "payload, newer schema), set aside so that its consumer goes on.",
            "description": _DLQ_PAYLOAD_TEXT,
            "headers": {"$ref": REF.format(model=f"{name}Headers")},
            "payload": {"description": _DLQ_PAYLOAD_TEXT},
            "bindings": _key("the original record's key (unchanged)"),
        }
    messages["SnapshotCheckpoint"] = {
        "name": "SnapshotCheckpoint",
        "title": "Snapshot checkpoint",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model="SnapshotCheckpoint")},
        "bindings": _key("always this constant", const=CHECKPOINT_KEY.decode()),
    }
    messages["AggregateSnapshot"] = {
        "name": "AggregateSnapshot",
        "title": "Aggregate snapshot",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model="AggregateSnapshot")},
        "bindings": _aggregate_key(),
    }
    messages["WorkflowState"] = {
        "name": "WorkflowState",
        "title": "Workflow state (internal changelog)",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model="WorkflowState")},
        "bindings": _key("the workflow id, or `__partition__` for the meta record"),
    }
    messages["OperatorAction"] = {
        "name": "OperatorAction",
        "title": "Operator action",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model="OperatorAction")},
        "bindings": _key("the workflow's post id (the partition of the workflow's owner)"),
    }
    messages["WorkflowStep"] = {
        "name": "WorkflowStep",
        "title": "Workflow step",
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "required": ["what"],
            "properties": {"what": {"type": "string", "description": "the step"}},
        },
        "payload": {"$ref": REF.format(model="WorkflowStep")},
        "bindings": _key("the workflow id"),
    }
    messages["WorkflowDeadLetter"] = {
        "name": "WorkflowDeadLetter",
        "title": "Workflow dead letter",
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "the reason"}},
        },
        "payload": {"$ref": REF.format(model="WorkflowDeadLetter")},
        "bindings": _key("the workflow id"),
    }
    return dict(sorted(messages.items()))


# ---------------------------------------------------------------------------------------------
# Channels and operations

#: Topics field -> (channel id, description, its messages)
_CHANNELS: dict[str, tuple[str, str, list[str]]] = {
    "commands": (
        "commands",
        "Commands, the system's only input: produce the command record with key = aggregate "
        "id. Each is answered on the command-results topic. Same partition count as the "
        "events topic. Partitioned by murmur2 of the key (the Java client's default); a "
        "record on another partition (e.g. librdkafka's default partitioner) is moved to its "
        "key's partition by the command service before it is decided.",
        sorted(COMMANDS.types()),
    ),
    "events": (
        "events",
        "The event log, the source of truth: never deleted by time or size. Partition p is "
        "written only by the owner of commands partition p, in transactions: read it with "
        "isolation.level=read_committed.",
        sorted(EVENTS.types()),
    ),
    "command_results": (
        "commandResults",
        "The outcome of every command, keyed by command id, on the command's partition.",
        ["CommandOutcome"],
    ),
    "snapshots": (
        "snapshots",
        "Aggregate snapshots and one checkpoint per partition, co-partitioned with the events "
        "(internal to the command service; `esctl prune` reads the checkpoints).",
        ["AggregateSnapshot", "SnapshotCheckpoint"],
    ),
    "commands_dlq": (
        "commandsDeadLetters",
        "Command records that could not be decoded (each also answered with a rejected "
        "outcome when its command id could be read).",
        ["DeadLetteredCommand"],
    ),
    "events_dlq": (
        "eventsDeadLetters",
        "Event records the projector could not read.",
        ["DeadLetteredEvent"],
    ),
    "workflow_state": (
        "workflowState",
        "The workflow service's saga changelog (internal): partition p belongs to the owner "
        "of events partition p.",
        ["WorkflowState"],
    ),
    "workflow_control": (
        "workflowControl",
        "Operator actions on workflows.",
        ["OperatorAction"],
    ),
    "workflow_history": (
        "workflowHistory",
        "Every step of every workflow, for people.",
        ["WorkflowStep"],
    ),
    "workflow_dlq": (
        "workflowDeadLetters",
        "Workflow activities that failed for good, and event records the workflow service "
        "could not read.",
        ["WorkflowDeadLetter", "DeadLetteredEvent"],
    ),
}


def _topic_binding(spec: TopicSpec) -> dict[str, Any]:
    config: dict[str, Any] = {"cleanup.policy": spec.configs["cleanup.policy"].split(",")}
    for name in ("retention.ms", "retention.bytes"):
        if name in spec.configs:
            config[name] = int(spec.configs[name])
    return {"kafka": {"topicConfiguration": config, "bindingVersion": KAFKA_BINDING}}


def _channels() -> dict[str, Any]:
    defaults = KafkaSettings.model_construct()  # the defaults, whatever the environment says
    names = Topics.from_settings(defaults)
    specs = {s.name: s for s in system_topic_specs(defaults)}
    channels: dict[str, Any] = {}
    for field, (channel_id, description, messages) in _CHANNELS.items():
        topic = getattr(names, field)
        channels[channel_id] = {
            "address": "{prefix}" + topic,
            "title": topic,
            "description": description
            + f" Partitions: PARTITIONS (default {defaults.partitions}).",
            "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
            "bindings": _topic_binding(specs[topic]),
        }
    if set(specs) != {getattr(names, f) for f in _CHANNELS}:
        missing = sorted(set(specs) - {getattr(names, f) for f in _CHANNELS})
        raise EsError(
            f"topics without a channel in shared/asyncapi.py: {', '.join(missing)}; add them "
            "to _CHANNELS",
            code=INCOMPLETE,
        )
    return dict(sorted(channels.items()))


def _group(default: object) -> dict[str, Any]:
    return {
        "kafka": {
            "groupId": {
                "type": "string",
                "enum": [default],
                "description": "the default; GROUP_ID sets another",
            },
            "bindingVersion": KAFKA_BINDING,
        }
    }


def _operations(channels: dict[str, Any]) -> dict[str, Any]:
    groups = {
        COMMAND_SERVICE: CommandServiceSettings.model_fields["group_id"].default,
        PROJECTOR: ProjectorSettings.model_fields["group_id"].default,
        WORKFLOW_SERVICE: WorkflowSettings.model_fields["group_id"].default,
    }
    # (operation id, service, action, channel, summary, consumer group?, messages or all)
    table: list[tuple[str, str, str, str, str, bool, list[str] | None]] = [
        (
            "commandServiceSendCommands",
            COMMAND_SERVICE,
            "send",
            "commands",
            "The HTTP intake (POST /authors, /posts, /posts/{id}/<action>, "
            "/subjects/{id}/erase) produces commands; the processor moves a record that "
            "arrived on a partition other than its key's.",
            False,
            None,
        ),
        (
            "commandServiceReceiveCommands",
            COMMAND_SERVICE,
            "receive",
            "commands",
            "The transactional processor: partition p's owner decides each command.",
            True,
            None,
        ),
        (
            "commandServiceSendEvents",
            COMMAND_SERVICE,
            "send",
            "events",
            "Appends the events of each accepted command, in the transaction that consumes it.",
            False,
            None,
        ),
        (
            "commandServiceReceiveEvents",
            COMMAND_SERVICE,
            "receive",
            "events",
            "Restores a partition's aggregates (snapshot, then replay) when it is assigned; "
            "follows the log for author lookups. Assigned partitions, no group.",
            False,
            None,
        ),
        (
            "commandServiceSendOutcomes",
            COMMAND_SERVICE,
            "send",
            "commandResults",
            "Writes every command's outcome in the same transaction.",
            False,
            None,
        ),
        (
            "commandServiceReceiveOutcomes",
            COMMAND_SERVICE,
            "receive",
            "commandResults",
            "Rebuilds the idempotency window at restore; the HTTP intake waits on outcomes.",
            False,
            None,
        ),
        (
            "commandServiceSendSnapshots",
            COMMAND_SERVICE,
            "send",
            "snapshots",
            "Snapshots and checkpoints, in the transactions of the events.",
            False,
            None,
        ),
        (
            "commandServiceReceiveSnapshots",
            COMMAND_SERVICE,
            "receive",
            "snapshots",
            "Reads partition p's snapshots when restoring it.",
            False,
            None,
        ),
        (
            "commandServiceSendDeadLetters",
            COMMAND_SERVICE,
            "send",
            "commandsDeadLetters",
            "Sets aside command records it cannot decode.",
            False,
            None,
        ),
        (
            "projectorReceiveEvents",
            PROJECTOR,
            "receive",
            "events",
            "Applies events to the read store, exactly once.",
            True,
            None,
        ),
        (
            "projectorSendDeadLetters",
            PROJECTOR,
            "send",
            "eventsDeadLetters",
            "Sets aside event records it cannot read.",
            False,
            None,
        ),
        (
            "workflowServiceReceiveEvents",
            WORKFLOW_SERVICE,
            "receive",
            "events",
            "Starts and advances workflows from events.",
            True,
            None,
        ),
        (
            "workflowServiceSendCommands",
            WORKFLOW_SERVICE,
            "send",
            "commands",
            "The commands its workflows decide (issued_by and actor `workflow-service`).",
            False,
            sorted(WORKFLOW_COMMANDS),
        ),
        (
            "workflowServiceSendState",
            WORKFLOW_SERVICE,
            "send",
            "workflowState",
            "Each workflow's new state, in the transaction of its input.",
            False,
            None,
        ),
        (
            "workflowServiceReceiveState",
            WORKFLOW_SERVICE,
            "receive",
            "workflowState",
            "Restores partition p's workflows; the operator view follows it.",
            False,
            None,
        ),
        (
            "workflowServiceSendControl",
            WORKFLOW_SERVICE,
            "send",
            "workflowControl",
            "The operator API (POST /workflows/{id}/retry|skip|compensate) writes actions.",
            False,
            None,
        ),
        (
            "workflowServiceReceiveControl",
            WORKFLOW_SERVICE,
            "receive",
            "workflowControl",
            "The owner of partition p applies its actions once (the offset is in the state).",
            False,
            None,
        ),
        (
            "workflowServiceSendHistory",
            WORKFLOW_SERVICE,
            "send",
            "workflowHistory",
            "Every step of every workflow.",
            False,
            None,
        ),
        (
            "workflowServiceSendDeadLetters",
            WORKFLOW_SERVICE,
            "send",
            "workflowDeadLetters",
            "Activities failed for good; event records it cannot read.",
            False,
            None,
        ),
        (
            "otherClientsSendCommands",
            OTHER_CLIENTS,
            "send",
            "commands",
            "Produce a command record (key = aggregate id); wait for its outcome on the "
            "command-results topic. Commands the system issues itself are refused "
            "(`x-issued-by`).",
            False,
            sorted(n for n, c in COMMANDS.types().items() if not c.issuers),
        ),
        (
            "otherClientsReceiveEvents",
            OTHER_CLIENTS,
            "receive",
            "events",
            "Read the event log with your own group and isolation.level=read_committed; "
            "personal fields (`x-personal`) are sealed.",
            False,
            None,
        ),
        (
            "otherClientsReceiveOutcomes",
            OTHER_CLIENTS,
            "receive",
            "commandResults",
            "Find a command's outcome by its id (the key).",
            False,
            None,
        ),
    ]
    operations: dict[str, Any] = {}
    for op_id, service, action, channel, summary, grouped, only in table:
        messages = only if only is not None else list(channels[channel]["messages"])
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "tags": [{"name": service}],
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
        }
        if grouped:
            operation["bindings"] = _group(groups[service])
        operations[op_id] = operation
    return dict(sorted(operations.items()))


# ---------------------------------------------------------------------------------------------
# The document


def _version() -> str:
    try:
        return version("kafka-es-blog")
    except PackageNotFoundError:  # pragma: no cover - the project is always installed
        return "0.0.0"


def asyncapi_document() -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document (deterministic: no clock, maps in sorted order)."""
    channels = _channels()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Blog publishing on Kafka: the topics",
            "version": _version(),
            "description": (
                "Every topic of the event-sourced blog system: what may be put on it, what "
                "comes back, and which service produces and consumes it (operations, tagged "
                "by service). Generated from the message models by `esctl schema asyncapi` "
                "(`make schemas`); do not edit by hand.\n\n"
                "Records are JSON (UTF-8). The body is authoritative; the headers mirror the "
                "envelope so that routers need not parse it. Fields marked `x-personal: true` "
                "are personal data: plaintext in commands, sealed (`pii:v1:<subject>:...`) in "
                "events and snapshots, unreadable once their subject is erased.\n\n"
                "The query service reads its read store and has no Kafka operation."
            ),
            "tags": [{"name": n, "description": d} for n, d in _SERVICE_TAGS.items()],
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The broker of `esctl up` (PLAINTEXT). A deployment may use "
                "SSL or SASL_SSL with SCRAM (README: Security: Kafka).",
            }
        },
        "channels": channels,
        "operations": _operations(channels),
        "components": {
            "parameters": {"prefix": _PREFIX_PARAMETER},
            "messages": _messages(),
            "schemas": _schemas(),
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style for text of several lines, and no `&id001` aliases: every repeat is
    written out (a reader of the file should not have to chase anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _text)


def asyncapi_yaml() -> str:
    """The document as YAML, as committed in schemas/asyncapi.yaml."""
    text: str = yaml.dump(
        asyncapi_document(),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return text
