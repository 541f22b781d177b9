"""The AsyncAPI document (schemas/asyncapi.yaml): committed, current, and true to the records
the code really writes (keys, headers, payload fields, personal fields, who reads and writes).

The AsyncAPI project's own validator runs on the committed file in `make test-contracts`
(scripts/asyncapi-validate.sh); these tests hold the document to the code.
"""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from pydantic import BaseModel

from command_service.domain import PostState, PostStatus
from command_service.snapshots import encode_state
from shared.asyncapi import (
    INCOMPLETE,
    WORKFLOW_COMMANDS,
    _header,
    asyncapi_document,
    asyncapi_yaml,
)
from shared.errors import EsError
from shared.kafka.records import InboundRecord, dead_letter
from shared.kafka.topics import Topics, system_topic_specs
from shared.messages import COMMANDS, EVENTS, Command
from shared.messages.blog import CreatePost, PostSubmittedForReview, RegisterAuthor
from shared.messages.codec import encode_command, encode_event
from shared.messages.results import CommandOutcome, EventPosition
from shared.messages.snapshots import encode_checkpoint
from shared.personal import personal_fields
from shared.settings import (
    CommandServiceSettings,
    KafkaSettings,
    ProjectorSettings,
    WorkflowSettings,
)
from workflow_service import policies
from workflow_service.activities import Activities
from workflow_service.engine import PartitionWorkflows, WorkflowEngine
from workflow_service.model import WorkflowConfig

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schemas" / "asyncapi.yaml"
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi_document()


def _schema(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].removeprefix("#/components/schemas/")
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _message(doc: dict[str, Any], channel: str, name: str) -> dict[str, Any]:
    ref = doc["channels"][channel]["messages"][name]["$ref"]
    message: dict[str, Any] = doc["components"]["messages"][ref.rsplit("/", 1)[1]]
    return message


def _check_headers(doc: dict[str, Any], message: dict[str, Any], headers: Any) -> None:
    """Every header written is documented; every documented required header is written."""
    schema = _schema(doc, message["headers"])
    names = [name for name, _ in headers]
    assert set(names) <= set(schema["properties"]), set(names) - set(schema["properties"])
    assert set(schema.get("required", [])) <= set(names)


def _check_body(doc: dict[str, Any], schema: dict[str, Any], body: dict[str, Any]) -> None:
    """The body's fields are the schema's, its required ones present, the constants equal."""
    assert set(body) <= set(schema["properties"]), set(body) - set(schema["properties"])
    assert set(schema.get("required", [])) <= set(body)
    for name, value in body.items():
        prop = schema["properties"][name]
        if "const" in prop:
            assert value == prop["const"], name
        if "$ref" in prop and isinstance(value, dict):
            _check_body(doc, _schema(doc, prop), value)


def test_the_committed_document_is_what_the_code_generates() -> None:
    """A change to a message model, a topic or a header without `make schemas` fails here."""
    diff = list(
        difflib.unified_diff(
            COMMITTED.read_text().splitlines(),
            asyncapi_yaml().splitlines(),
            "schemas/asyncapi.yaml (committed)",
            "generated",
            lineterm="",
        )
    )
    assert not diff, "schemas/asyncapi.yaml is stale: run `make schemas` and commit it\n" + (
        "\n".join(diff[:40])
    )


def test_the_document_does_not_depend_on_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A developer's TOPIC_PREFIX or GROUP_ID does not leak into the committed contract."""
    before = asyncapi_yaml()
    monkeypatch.setenv("TOPIC_PREFIX", "dev.")
    monkeypatch.setenv("GROUP_ID", "mine")
    monkeypatch.setenv("PARTITIONS", "3")
    assert asyncapi_yaml() == before
    assert "dev." not in yaml.safe_load(before)["channels"]["commands"]["address"]


def test_every_topic_is_a_channel_with_its_prefix_and_configuration(doc: dict[str, Any]) -> None:
    defaults = KafkaSettings.model_construct()
    specs = {s.name: s for s in system_topic_specs(defaults)}
    addresses = {c["address"]: c for c in doc["channels"].values()}
    assert set(addresses) == {"{prefix}" + name for name in specs}
    for name, spec in specs.items():
        channel = addresses["{prefix}" + name]
        assert "prefix" in channel["parameters"]
        config = channel["bindings"]["kafka"]["topicConfiguration"]
        assert config["cleanup.policy"] == spec.configs["cleanup.policy"].split(",")
        if "retention.ms" in spec.configs:
            assert config["retention.ms"] == int(spec.configs["retention.ms"])
    assert (
        addresses["{prefix}posts.events"]["bindings"]["kafka"]["topicConfiguration"]["retention.ms"]
        == -1
    )


def test_every_command_and_event_type_is_a_message_of_its_topic(doc: dict[str, Any]) -> None:
    assert set(doc["channels"]["commands"]["messages"]) == set(COMMANDS.types())
    assert set(doc["channels"]["events"]["messages"]) == set(EVENTS.types())
    for name, cls in EVENTS.types().items():
        record = _schema(doc, _message(doc, "events", name)["payload"])
        assert record["properties"]["schema_version"]["maximum"] == cls.schema_version


def test_a_real_command_record_matches_its_message(doc: dict[str, Any]) -> None:
    """Key, headers and body of what encode_command writes, field for field."""
    encoded = encode_command(
        CreatePost(author_id="author-1", title="T", tags=["a"]),
        command_id=uuid4(),
        aggregate_id="post-1",
        expected_version=0,
        correlation_id="corr",
        causation_id="cause",
        actor="ada",
        actor_roles=["author"],
    )
    message = _message(doc, "commands", "CreatePost")
    _check_headers(doc, message, encoded.headers)
    _check_body(doc, _schema(doc, message["payload"]), json.loads(encoded.value))
    key = message["bindings"]["kafka"]["key"]
    assert key["type"] == "string" and "pattern" in key


def test_a_real_event_record_matches_its_message(doc: dict[str, Any]) -> None:
    encoded = encode_event(
        PostSubmittedForReview(publish_at=NOW),
        event_id=uuid4(),
        aggregate_id="post-1",
        aggregate_version=2,
        occurred_at=NOW,
        command_id=uuid4(),
        correlation_id="corr",
        actor="ada",
    )
    message = _message(doc, "events", "PostSubmittedForReview")
    _check_headers(doc, message, encoded.headers)
    _check_body(doc, _schema(doc, message["payload"]), json.loads(encoded.value))


def test_outcomes_and_dead_letters_match_their_messages(doc: dict[str, Any]) -> None:
    command_id = uuid4()
    for outcome in (
        CommandOutcome(
            command_id=command_id,
            status="accepted",
            command_type="CreatePost",
            aggregate_id="post-1",
            version=1,
            events=[EventPosition(type="PostCreated", aggregate_version=1, partition=0, offset=9)],
            processed_at=NOW,
        ),
        CommandOutcome(command_id=command_id, status="rejected", code="not_found", message="m"),
    ):
        encoded = outcome.encode()
        message = _message(doc, "commandResults", "CommandOutcome")
        _check_headers(doc, message, encoded.headers)
        _check_body(doc, _schema(doc, message["payload"]), json.loads(encoded.value))
    command = encode_command(RegisterAuthor(name="Ada", email="a@b"), command_id=command_id,
                             aggregate_id="author-1")  # fmt: skip
    source = InboundRecord("posts.commands", 3, 17, command.key, b"not json", command.headers)
    letter = dead_letter(source, ValueError("bad"), "posts.commands.dlq")
    _check_headers(doc, _message(doc, "commandsDeadLetters", "DeadLetteredCommand"), letter.headers)
    event = encode_event(
        PostSubmittedForReview(),
        event_id=uuid4(),
        aggregate_id="post-1",
        aggregate_version=1,
        occurred_at=NOW,
    )
    source = InboundRecord("posts.events", 0, 1, event.key, event.value, event.headers)
    letter = dead_letter(source, ValueError("newer"), "posts.events.dlq")
    for channel in ("eventsDeadLetters", "workflowDeadLetters"):
        _check_headers(doc, _message(doc, channel, "DeadLetteredEvent"), letter.headers)


def test_snapshot_records_match_their_messages(doc: dict[str, Any]) -> None:
    checkpoint = json.loads(encode_checkpoint(10, 2, NOW))
    _check_body(doc, doc["components"]["schemas"]["SnapshotCheckpoint"], checkpoint)
    state = PostState(
        id="post-1",
        version=1,
        author_id="author-1",
        title="T",
        body="",
        tags=(),
        status=PostStatus.DRAFT,
        created_at=NOW,
        updated_at=NOW,
    )
    snapshot = json.loads(encode_state(state))
    _check_body(doc, doc["components"]["schemas"]["AggregateSnapshot"], snapshot)
    assert (
        snapshot["kind"]
        in doc["components"]["schemas"]["AggregateSnapshot"]["properties"]["kind"]["enum"]
    )


async def test_the_workflow_services_records_match_their_messages(doc: dict[str, Any]) -> None:
    """The review workflow, fed one PostSubmittedForReview, writes its state, a history step
    and an AssignReviewer command: each as the document says."""
    topics = Topics.from_settings(KafkaSettings.model_construct())
    engine = WorkflowEngine(
        bootstrap_servers="127.0.0.1:1",  # never reached: handle() only decides
        topics=topics,
        config=WorkflowConfig(),
        activities=Activities(store_url="sqlite:///:memory:", webhook_url="", timeout_s=1),
        clock=lambda: NOW,
    )
    engine.partitions[0] = PartitionWorkflows(retention=engine.retention)
    event = encode_event(
        PostSubmittedForReview(),
        event_id=uuid4(),
        aggregate_id="post-1",
        aggregate_version=2,
        occurred_at=NOW,
        actor="ada",
    )
    out = await engine.handle(0, [InboundRecord(topics.events, 0, 5, event.key, event.value)])
    by_topic: dict[str, list[Any]] = {}
    for record in out:
        by_topic.setdefault(record.topic, []).append(record)
    assert set(by_topic) >= {topics.workflow_state, topics.workflow_history, topics.commands}
    for step in by_topic[topics.workflow_history]:
        message = _message(doc, "workflowHistory", "WorkflowStep")
        _check_body(doc, _schema(doc, message["payload"]), json.loads(step.value))
        assert {n for n, _ in step.headers} == set(message["headers"]["required"])
    for command in by_topic[topics.commands]:
        body = json.loads(command.value)
        message = _message(doc, "commands", body["type"])
        assert message.get("x-issued-by") == ["workflow-service"]
        _check_headers(doc, message, command.headers)
        _check_body(doc, _schema(doc, message["payload"]), body)
    sent = {
        ref["$ref"].rsplit("/", 1)[1]
        for ref in doc["operations"]["workflowServiceSendCommands"]["messages"]
    }
    assert {json.loads(c.value)["type"] for c in by_topic[topics.commands]} <= sent


def test_the_workflow_services_commands_are_those_its_policies_send(doc: dict[str, Any]) -> None:
    used = {
        name
        for name, obj in vars(policies).items()
        if isinstance(obj, type) and issubclass(obj, Command) and obj is not Command
    }
    assert used == set(WORKFLOW_COMMANDS)
    sent = [r["$ref"] for r in doc["operations"]["workflowServiceSendCommands"]["messages"]]
    assert sent == [f"#/channels/commands/messages/{n}" for n in sorted(used)]


def test_personal_fields_are_marked_as_the_models_mark_them(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    registered: dict[str, type[BaseModel]] = {**COMMANDS.types(), **EVENTS.types()}
    for name, cls in registered.items():
        marked = {
            field for field, prop in schemas[name]["properties"].items() if prop.get("x-personal")
        }
        assert marked == set(personal_fields(cls)), name
    assert {"name", "email"} <= {
        f for f, p in schemas["RegisterAuthor"]["properties"].items() if p.get("x-personal")
    }


def test_commands_only_the_system_issues_are_not_offered_to_other_clients(
    doc: dict[str, Any],
) -> None:
    offered = {
        ref["$ref"].rsplit("/", 1)[1]
        for ref in doc["operations"]["otherClientsSendCommands"]["messages"]
    }
    for name, cls in COMMANDS.types().items():
        message = doc["components"]["messages"][name]
        if cls.issuers:
            assert name not in offered
            assert message["x-issued-by"] == sorted(cls.issuers)
        else:
            assert name in offered


def test_operations_name_their_service_and_its_consumer_group(doc: dict[str, Any]) -> None:
    groups = {
        "command-service": CommandServiceSettings.model_fields["group_id"].default,
        "projector": ProjectorSettings.model_fields["group_id"].default,
        "workflow-service": WorkflowSettings.model_fields["group_id"].default,
    }
    grouped = {}
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive")
        (tag,) = [t["name"] for t in op["tags"]]
        channel = op["channel"]["$ref"].removeprefix("#/channels/")
        for ref in op["messages"]:
            assert ref["$ref"].startswith(f"#/channels/{channel}/messages/")
            assert ref["$ref"].rsplit("/", 1)[1] in doc["channels"][channel]["messages"]
        if "bindings" in op:
            grouped[(tag, channel)] = op["bindings"]["kafka"]["groupId"]["enum"]
            assert op_id.startswith(tag.split("-")[0])
    assert grouped == {
        ("command-service", "commands"): [groups["command-service"]],
        ("projector", "events"): [groups["projector"]],
        ("workflow-service", "events"): [groups["workflow-service"]],
    }
    # every channel has a writer in the system, and the two inputs have their readers
    sent = {op["channel"]["$ref"] for op in doc["operations"].values() if op["action"] == "send"}
    assert sent == {f"#/channels/{c}" for c in doc["channels"]}


def test_the_yaml_has_no_aliases_and_reads_back_as_the_document(doc: dict[str, Any]) -> None:
    text = asyncapi_yaml()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == json.loads(json.dumps(doc))


def test_a_header_the_document_does_not_describe_stops_the_generation() -> None:
    """A header added to an encoder without its description here is named, not dropped."""
    with pytest.raises(EsError, match="'tenant'") as caught:
        _header("tenant")
    assert caught.value.code == INCOMPLETE
    assert _header("traceparent")["pattern"].startswith("^[0-9a-f]{2}-")
