"""`esctl send`: one command onto the commands topic, and its outcome."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from esctl.common import (
    reach_kafka,
    run_kafka,
    say,
    say_and_exit,
    settings_from_env,
    validation_words,
)


def send(
    command_type: Annotated[str, typer.Argument(metavar="TYPE", help="e.g. PublishPost")],
    aggregate: Annotated[str, typer.Option("--aggregate", "-a", help="aggregate id (the key)")],
    payload: Annotated[str, typer.Option("--json", "-j", help="payload as JSON")] = "{}",
    expected_version: Annotated[int | None, typer.Option(help="optimistic check")] = None,
    command_id: Annotated[str | None, typer.Option(help="UUID; random by default")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 10.0,
) -> None:
    """Produce a command onto the commands topic and print its outcome (JSON on stdout).

    Exit code: 0 accepted, 1 rejected, 3 no outcome within the timeout, 2 invalid input or
    Kafka unreachable (the reason in one line on stderr).
    """
    import uuid

    from shared.kafka.commands import CommandClient
    from shared.kafka.topics import Topics
    from shared.messages import COMMANDS, encode_command
    from shared.messages.codec import utcnow
    from shared.settings import KafkaSettings

    cls = _command_class(command_type, COMMANDS.types())
    if cls.issuers:
        say_and_exit(
            f"{command_type} is issued by the system itself, not sent by people: {cls.instead}"
        )
    command = _parse_command(cls, payload)
    try:
        cid = uuid.UUID(command_id) if command_id else uuid.uuid4()
    except ValueError:
        say_and_exit(f"--command-id {command_id!r} is not a UUID")
    settings = settings_from_env(KafkaSettings)
    bootstrap = settings.kafka_bootstrap_servers
    reach_kafka(bootstrap)
    message = encode_command(
        command,
        command_id=cid,
        aggregate_id=aggregate,
        expected_version=expected_version,
        occurred_at=utcnow(),
    )

    async def go() -> object:
        client = CommandClient(bootstrap, Topics.from_settings(settings), recent_window_s=0)
        await client.start()
        try:
            return await client.send(cid, message, wait_s=timeout)
        finally:
            await client.stop()

    outcome = run_kafka(go(), bootstrap)
    if outcome is None:
        print(json.dumps({"command_id": str(cid), "status": "pending"}))
        say(
            f"no outcome within {timeout:g}s: is the command service running?",
            label="pending",
            style="yellow",
        )
        raise typer.Exit(3)
    from shared.messages.results import CommandOutcome

    assert isinstance(outcome, CommandOutcome)
    print(outcome.model_dump_json())
    if outcome.status == "rejected":
        say(f"{outcome.code}: {outcome.message}", label="rejected", style="yellow")
        raise typer.Exit(1)


def _command_class(name: str, known: dict[str, Any]) -> Any:
    """The command type called `name`; else one line with the closest name, exit 2."""
    import difflib

    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:  # a case slip: createpost
        close = [k for k in known if k.lower() == name.lower()]
    for_people = sorted(k for k, cls in known.items() if not cls.issuers)
    hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(for_people)
    say_and_exit(f"unknown command type {name}; {hint}")


def _parse_command(cls: Any, payload: str) -> Any:
    """The command from --json; invalid JSON says where, an invalid payload says which field
    and what is wrong (one line, exit 2)."""
    from pydantic import ValidationError

    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        say_and_exit(
            f"invalid JSON in --json at line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg[:1].lower()}{exc.msg[1:]}"
        )
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        say_and_exit(
            f"--json must be a JSON object ({{...}}) with the fields of {cls.__name__}, "
            f"not {kinds.get(type(value), 'a number')}"
        )
    try:
        return cls.model_validate_json(payload)
    except ValidationError as exc:
        words = validation_words(exc, fields=list(cls.model_fields))
        say_and_exit(f"invalid {cls.__name__}: {words}")
