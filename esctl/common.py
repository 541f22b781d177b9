"""What every esctl command shares: the console, the exit codes, one line per error.

An error is one line on stderr and exit code 2, never a traceback (`say_and_exit`, `fail`); a
command that talks to Kafka first checks, in seconds, that a broker answers (`reach_kafka`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from shared.errors import EsError, KafkaUnreachable

# soft_wrap: a message is never wrapped at the terminal width (an id or a URL cut across lines
# cannot be copied); the terminal wraps long lines by itself
console = Console(stderr=True, soft_wrap=True)
STATE_DIR = Path(os.environ.get("ESCTL_STATE_DIR", "./var"))

DataDir = Annotated[Path, typer.Option(help="where the cluster keeps its data and state")]


#: Exit code of an error: invalid input, Kafka or a service unreachable, refused (see --help).
EXIT_ERROR = 2
#: How long a person waits for Kafka to accept a connection before being told it does not.
CONNECT_TIMEOUT_S = 5.0


def say(message: str, *, label: str = "error", style: str = "red") -> None:
    """One line on stderr, whatever its length (never wrapped, markup never interpreted)."""
    console.print(Text.assemble((f"{label}:", style), " ", message), soft_wrap=True)


def say_and_exit(message: str) -> NoReturn:
    say(message)
    raise typer.Exit(EXIT_ERROR)


def fail(exc: EsError) -> NoReturn:
    if isinstance(exc, KafkaUnreachable) and "KAFKA_SECURITY_PROTOCOL" not in exc.reason:
        say_and_exit(
            f"{exc.message}: is the broker running, and is that its address? Check "
            "KAFKA_BOOTSTRAP_SERVERS (`esctl kafka status` shows the local broker)"
        )
    say_and_exit(exc.message + (" (retrying may help)" if exc.retriable else ""))


def settings_from_env(cls: type[Any]) -> Any:
    """The settings from the environment; an invalid variable is named in one line, exit 2."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        say_and_exit("invalid setting " + validation_words(exc, env=True))


def validation_words(exc: Any, *, env: bool = False, fields: list[str] | None = None) -> str:
    """A pydantic ValidationError in words: `field: what is wrong; other: ...`, no URLs."""
    import difflib

    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "(the whole value)"
        if env:
            where = where.upper()
        what = str(error["msg"])
        what = what[:1].lower() + what[1:]
        if error["type"] == "extra_forbidden":
            what = "unknown field"
            close = difflib.get_close_matches(str(error["loc"][-1]), fields or [], n=1)
            if close:
                what += f" (did you mean {close[0]}?)"
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


def reach_kafka(bootstrap_servers: str) -> None:
    """Stop here, in seconds and in one line, when no broker answers at `bootstrap_servers`."""
    from shared.kafka.clients import ensure_reachable

    try:
        asyncio.run(ensure_reachable(bootstrap_servers, timeout_s=CONNECT_TIMEOUT_S))
    except EsError as exc:
        fail(exc)


def run_kafka(coro: Any, bootstrap_servers: str) -> Any:
    """Run a coroutine talking to Kafka: any failure becomes one line on stderr and exit 2."""
    from shared.kafka.errors import KafkaError

    try:
        return asyncio.run(coro)
    except EsError as exc:
        fail(exc)
    except (KafkaError, ConnectionError, TimeoutError) as exc:
        say_and_exit(
            f"Kafka at {bootstrap_servers} failed: {type(exc).__name__} {exc}".rstrip()
            + " (retrying may help)"
        )
    except OSError as exc:  # a file of the archive, say
        say_and_exit(str(exc))


def http_why(exc: Exception) -> str:
    """A few words on a failed HTTP request: `connection refused`, `no answer within 5s`..."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if cause is not None and getattr(cause, "strerror", None):
        return str(cause.strerror).lower()
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.split("] ", 1)[-1].lower() or type(exc).__name__


def json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
