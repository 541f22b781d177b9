"""`esctl workflows`: list, inspect, retry, skip, compensate, through the workflow service's HTTP
API."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from esctl.common import (
    CONNECT_TIMEOUT_S,
    console,
    http_why,
    json_or_none,
    say,
    say_and_exit,
)
from esctl.output import Column, print_line, print_table
from esctl.tokens import bearer_headers
from shared.principal import OPERATOR

app = typer.Typer(
    help="Workflows (sagas): list, inspect, retry, skip, compensate. Talks to the workflow "
    "service's HTTP API.",
    no_args_is_help=True,
)
WorkflowUrl = Annotated[
    str,
    typer.Option(envvar="WORKFLOW_URL", help="the workflow service (any instance)"),
]


def _workflow_call(method: str, base_url: str, path: str, **kwargs: object) -> dict[str, object]:
    """One request to the workflow service; any failure is one line on stderr (exit 2 when it
    does not answer or the request is invalid, 1 when it refuses: unknown, finished...)."""
    import httpx

    try:
        response = httpx.request(
            method,
            f"{base_url.rstrip('/')}{path}",
            timeout=httpx.Timeout(10.0, connect=CONNECT_TIMEOUT_S),
            headers=bearer_headers(OPERATOR),
            **kwargs,  # type: ignore[arg-type]
        )
    except httpx.HTTPError as exc:
        say_and_exit(
            f"the workflow service at {base_url} does not answer ({http_why(exc)}): is it "
            "running? (--url or WORKFLOW_URL names another)"
        )
    body = json_or_none(response)
    if not isinstance(body, dict):
        say_and_exit(
            f"{base_url} answered HTTP {response.status_code} without a JSON object: is it the "
            "workflow service? (--url or WORKFLOW_URL)"
        )
    if response.status_code == 422 and isinstance(body.get("detail"), list):  # FastAPI's
        words = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {str(e.get('msg', '')).lower()}"
            for e in body["detail"]
            if isinstance(e, dict)
        )
        say_and_exit(f"invalid request: {words}")
    if response.status_code >= 400:
        say(f"{body.get('detail', '')}", label=str(body.get("title", "error")))
        raise typer.Exit(1)
    return body


#: The statuses of a workflow (workflow_service/model.py; a unit test keeps them equal), and
#: `running`, which --status takes for every unfinished one.
WORKFLOW_STATUSES = (
    "active",
    "compensating",
    "published",
    "scheduled",
    "rejected",
    "auto_rejected",
    "cancelled",
    "completed",
    "failed",
)


@app.command("list")
def workflows_list(
    url: WorkflowUrl = "http://127.0.0.1:8004",
    status: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(WORKFLOW_STATUSES)}, or running (every unfinished one)",
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="review, schedule or publication")] = None,
    stuck: Annotated[bool, typer.Option("--stuck", help="only workflows without progress")] = False,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Workflows, newest first, with their step, next timer and failures; the counts of all
    workflows per status on stderr.

    None matching: a note on stderr, exit 0. An unknown --status: exit 2, with the valid ones.
    """
    import difflib

    params: dict[str, object] = {"limit": limit}
    if status:
        if status not in (*WORKFLOW_STATUSES, "running"):
            close = difflib.get_close_matches(status, [*WORKFLOW_STATUSES, "running"], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            say_and_exit(
                f"unknown workflow status {status}; {hint}valid: "
                f"{', '.join(WORKFLOW_STATUSES)}, running (every unfinished one)"
            )
        params["status"] = status
    if kind:
        params["kind"] = kind
    if stuck:
        params["stuck"] = "true"
    body = _workflow_call("GET", url, "/workflows", params=params)
    if as_json:
        print(json.dumps(body))
        return
    rows: list[dict[str, Any]] = body["workflows"]  # type: ignore[assignment]
    counts: dict[str, int] = body["counts"]  # type: ignore[assignment]
    everything = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    if not rows:
        asked = [f"{k} {v}" for k, v in (("status", status), ("kind", kind)) if v]
        asked += ["stuck"] if stuck else []
        which = f" with {', '.join(asked)}" if asked else ""
        say(f"no workflows{which} (all workflows: {everything})", label="note", style="yellow")
        return
    print_table(
        ["workflow", "status", "step", "next timer", "due at", "failures", "stuck", "updated"],
        [
            (
                row["workflow_id"],
                row["status"],
                row["step"],
                (row.get("next_timer") or {}).get("id"),
                (row.get("next_timer") or {}).get("due_at"),
                row["failures"],
                "STUCK" if row["stuck"] else "no",
                row["updated_at"],
            )
            for row in rows
        ],
    )
    sys.stdout.flush()  # the table first, where both streams go to one place (`2>&1`)
    say(everything, label="all workflows", style="bold")  # on stderr: stdout is the table only


@app.command("show")
def workflows_show(
    workflow_id: str,
    url: WorkflowUrl = "http://127.0.0.1:8004",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """State, history, pending timers, current step and failures of one workflow."""
    from urllib.parse import quote

    body = _workflow_call("GET", url, f"/workflows/{quote(workflow_id, safe=':')}")
    if as_json:
        print(json.dumps(body))
        return
    stuck = "  STUCK" if body["stuck"] else ""
    print_line(f"{body['workflow_id']}  {body['status']}  step: {body['step']}{stuck}")
    if body.get("error"):
        print_line(f"error: {body['error']}", style="red")
    timers: list[dict[str, Any]] = body["pending_timers"]  # type: ignore[assignment]
    print_line("")
    if timers:
        print_table(["pending timer", "due at"], [(t["id"], t["due_at"]) for t in timers])
    else:
        print_line("no pending timers")
    history: list[dict[str, Any]] = body["history"]  # type: ignore[assignment]
    print_line("")
    print_table(
        ["at", "what", Column("detail", wrap=True)],
        [(h["at"], h["what"], json.dumps(h["detail"]) if h["detail"] else None) for h in history],
    )


def _action(name: str) -> None:
    def command(
        workflow_id: str,
        url: WorkflowUrl = "http://127.0.0.1:8004",
        reason: Annotated[str | None, typer.Option(help="recorded in the history")] = None,
    ) -> None:
        from urllib.parse import quote

        path = f"/workflows/{quote(workflow_id, safe=':')}/{name}"
        body = _workflow_call("POST", url, path, json={"reason": reason})
        console.print(
            f"{name} of {body['workflow_id']} sent (request {body['request_id']}); "
            f"`esctl workflows show {workflow_id}` shows its effect",
            soft_wrap=True,
            highlight=False,
        )

    command.__doc__ = {
        "retry": "Run the waiting step now (or re-send the current command).",
        "skip": "Skip the waiting step of a publication workflow and go on.",
        "compensate": "Compensate the completed steps now and unpublish the post.",
    }[name]
    app.command(name)(command)


for _name in ("retry", "skip", "compensate"):
    _action(_name)
