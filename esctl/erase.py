"""`esctl erase`: crypto-shredding of a data subject, through the command service."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

from esctl.common import CONNECT_TIMEOUT_S, console, http_why, json_or_none, say_and_exit
from esctl.tokens import bearer_headers
from shared.principal import ADMIN


def _credentials() -> dict[str, str]:
    """ERASURE_TOKEN (deprecated), else an admin token: ESCTL_TOKEN, or minted with the local
    secret (AUTH_HS256_SECRET, or the local stack's)."""
    token = os.environ.get("ERASURE_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else bearer_headers(ADMIN)


CommandUrl = Annotated[
    str,
    typer.Option(envvar="COMMAND_SERVICE_URL", help="the command service (any instance)"),
]
QueryUrl = Annotated[
    str,
    typer.Option(
        envvar="QUERY_SERVICE_URL",
        help="the query service, asked afterwards whether anything of the subject still opens",
    ),
]


def erase_command(
    subject: Annotated[str, typer.Argument(help="the data subject: an author id")],
    reason: Annotated[str | None, typer.Option(help="why (kept in SubjectErased)")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="erase an id that never had personal data stored (else refused as a likely "
            "typo): personal data for it is refused from then on",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the erasure")] = 120.0,
    url: CommandUrl = "http://127.0.0.1:8001",
    query_url: QueryUrl = "http://127.0.0.1:8002",
) -> None:
    """Erase a data subject's personal data for good (crypto-shredding), through the command
    service, which owns the key store: it appends SubjectErased, deletes the key, confirms in
    its key store that the key is gone, and purges the processed plaintext commands and the
    subject's dead letters. The query service is then asked whether any of the subject's
    personal fields still opens.

    Prints the report as JSON. Exit code: 0 complete (confirmed), 1 incomplete (run again),
    2 refused, not confirmed or error (the reason on stderr). The caller must hold the admin
    role: ESCTL_TOKEN, else a token minted with AUTH_HS256_SECRET or the local stack's secret
    (ERASURE_TOKEN, deprecated, is still sent when set)."""
    import httpx

    if not yes:
        try:
            confirmed = typer.confirm(
                f"Erase {subject}? Its name and email become unreadable everywhere, for good.",
                err=True,
            )
        except typer.Abort:  # Ctrl-C, or end of input (nothing to answer: no terminal)
            console.print()
            confirmed = False
        if not confirmed:
            say_and_exit(f"{subject} not erased: not confirmed (--yes: do not ask)")
    credentials = _credentials()
    endpoint = f"{url.rstrip('/')}/subjects/{subject}/erase"
    try:
        with console.status(f"erasing {subject} through {url}"):  # on a terminal only
            response = httpx.post(
                endpoint,
                json={"reason": reason, "force": force},
                headers=credentials,
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S),
            )
    except httpx.HTTPError as exc:
        say_and_exit(
            f"the command service at {url} does not answer ({http_why(exc)}): is it running? "
            "(--url or COMMAND_SERVICE_URL names another)"
        )
    body = json_or_none(response)
    if not isinstance(body, dict) or "subject" not in body:  # a problem, not a report
        problem = body if isinstance(body, dict) else {"detail": response.text[:300]}
        code = problem.get("code", f"HTTP {response.status_code}")
        say_and_exit(f"erasure of {subject} refused ({code}): {problem.get('detail', '')}")
    report: dict[str, Any] = body
    if report.get("complete"):
        leaks = _still_opening(query_url, subject)
        report["query_service"] = leaks if leaks is not None else "not reachable"
        if leaks:
            report["complete"] = False
            print(json.dumps(report))
            say_and_exit(
                f"the key is gone from the command service's key store, yet the query service "
                f"at {query_url} still opens {', '.join(leaks)} of {subject}: it reads another "
                "key store (give it the command service's KEY_STORE_URL)"
            )
        if leaks is None:
            console.print(
                f"[yellow]note[/yellow]: the query service at {query_url} does not answer "
                "(or does not show this caller the subject's personal fields); it was not "
                "asked whether anything still opens"
            )
    print(json.dumps(report))
    if not report.get("complete"):
        console.print(
            "[yellow]incomplete[/yellow]: a step is left (see the report); run the erasure "
            "again to finish it"
        )
        raise typer.Exit(1)
    outcome = report.get("outcome")
    if isinstance(outcome, dict) and outcome.get("code") == "author_not_found":
        console.print(
            f"[yellow]marked erased[/yellow] {subject} (--force): nothing was stored for it; "
            "personal data for this id is refused from now on"
        )
        return
    console.print(f"[green]erased[/green] {subject}")


def _still_opening(query_url: str, subject: str) -> list[str] | None:
    """The personal fields of `subject` the query service still returns opened (None: it does
    not answer, or withholds them from this caller): `/streams/{id}/events` opens every event's
    fields with its key store. Asked as admin (`ESCTL_TOKEN`, else a token minted with the local
    secret): the query service shows an author's email only to that author and admins."""
    import httpx

    from shared.personal import is_sealed

    try:
        response = httpx.get(
            f"{query_url.rstrip('/')}/streams/{subject}/events",
            headers=bearer_headers(ADMIN),  # an admin is shown every personal field
            timeout=10,
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    events = response.json().get("events", [])
    if any(event.get("withheld_fields") for event in events):
        return None  # not shown to this caller: nothing can be said of what opens
    opened: list[str] = []
    for event in events:
        payload = event.get("payload") or {}
        for name in _personal_fields_of(event.get("type", "")):
            value = payload.get(name)
            if isinstance(value, str) and not is_sealed(value):
                opened.append(f"{name} (version {event.get('aggregate_version')})")
    return opened


def _personal_fields_of(event_type: str) -> tuple[str, ...]:
    from shared.errors import EsError as _EsError
    from shared.messages import EVENTS
    from shared.personal import personal_fields

    try:
        return personal_fields(EVENTS.get(event_type))
    except _EsError:
        return ()
