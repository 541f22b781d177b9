"""Schemathesis against the command, query and workflow APIs of the running services (real
processes on a real broker), with every check on: no server error, documented status codes,
content types, response bodies and headers, schema-invalid requests refused, schema-valid ones
accepted. The budget is bounded and the generation deterministic (derandomized), so a CI run
is reproducible; the number of cases per API is reported in the terminal summary.

Generated ids rarely name something that exists, so a share of the valid ids is replaced by ids
the fixture created (an author, a post, a workflow, a command): those cases reach the 200 answers
and the business rules (404, 409) with real data.

Each API is fuzzed twice, authentication on: with an admin token (sent over whatever
Authorization header schemathesis generates, so every case reaches the route, and a 401 to it
fails the case; only the cases schemathesis sends without the header on purpose are refused)
and without one (the guarded routes answer 401 as documented, the public ones their data;
schemathesis's own `ignored_auth` check sends the token run's cases without and with a wrong
token too).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, CheckContext, Response
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from shared.http import CONSISTENCY_TOKEN
from shared.messages.base import AGGREGATE_ID_PATTERN
from tests.conftest import fresh_database, unique
from tests.e2e.harness import ServiceProcess, bearer, command_service_env, http_client
from tests.kafka_helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

#: Cases of the fuzzing phase per operation (the examples and coverage phases add theirs).
MAX_EXAMPLES = 20


@dataclass
class Run:
    """What one API's fuzz run did (reported in the terminal summary)."""

    api: str
    operations: int = 0
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


#: api name -> its run, for tests/e2e/conftest.py's terminal summary
RUNS: dict[str, Run] = {}


@dataclass
class Known:
    """Ids that exist on the running stack."""

    ids: dict[str, list[str]]

    def substitute(self, schema: BaseSchema) -> None:
        """Replace a valid generated path id by a known one in about half of the cases (an
        invalid one is left alone: it is what a negative case is about)."""
        valid = re.compile(AGGREGATE_ID_PATTERN)

        @schema.hook("flatmap_path_parameters")
        def known_ids(_: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
            options = [path_parameters]
            for name, value in (path_parameters or {}).items():
                known = self.ids.get(name)
                if known and isinstance(value, str) and valid.fullmatch(value):
                    options += [(path_parameters or {}) | {name: k} for k in known]
            return st.sampled_from(options)


def run_name(api: str, request: pytest.FixtureRequest | None = None, token: bool = True) -> str:
    """`command API with a token`: the run of the requesting test (`..._with_a_token`)."""
    if request is not None:  # the test's node (schemathesis wraps the function)
        token = "_with_a_token" in request.node.name
    return f"{api} API {'with' if token else 'without'} a token"


def configure(schema: BaseSchema, name: str) -> BaseSchema:
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")
    RUNS[name] = Run(name, operations=len(list(schema.get_all_operations())))
    return schema


def not_a_server_error_but_not_consistent_yet(
    ctx: CheckContext, response: Response, case: Case
) -> bool | None:
    """`not_a_server_error`, except the query service's documented 503 `not_consistent_yet`:
    a consistency token names positions the read model has not reached (it is generated, so
    usually beyond the log's end); the answer says so and to retry (Retry-After). Any other 5xx
    fails as the built-in check would."""
    if (
        response.status_code == 503
        and case.headers
        and "X-Consistency-Token" in case.headers
        and response.json().get("code") == "not_consistent_yet"
    ):
        return None
    return not_a_server_error(ctx, response, case)


def unstatable_rule(api: str, code: str, case: Case) -> bool:
    """Whether a 422 `code` answers a well-formed request for a rule that a JSON Schema cannot
    state, as this very request shows. Command API: an edit or rename to what the aggregate
    already holds (state); tags equal but for case (case-insensitive uniqueness); a body over
    100 KB in UTF-8 within its length in characters. Query API: a cursor that this service did
    not make (opaque: only the ones it hands out are valid). The schemas state every other rule,
    so any other 422 to a schema-valid request fails."""
    body = case.body if isinstance(case.body, dict) else {}
    tags = body.get("tags") or []
    if api == "command" and code == "invalid_tag":
        return len({t.lower() for t in tags}) != len(tags)
    if api == "command" and code == "body_too_large":
        return len(str(body.get("body", "")).encode()) > 100 * 1024
    return (api, code) in {("command", "nothing_to_change"), ("query", "invalid_cursor")}


def positive_data_acceptance_except_unstatable(api: str) -> Any:
    def check(ctx: CheckContext, response: Response, case: Case) -> bool | None:
        """`positive_data_acceptance`, except (1) the documented 422 of a rule that the schema
        cannot state (`unstatable_rule`), and (2) a case whose X-Consistency-Token is not
        schema-valid: schemathesis 4.32's coverage phase cannot draw a header value for a
        pattern with punctuation (`<partition>:<offset>`), and its "default positive" case
        then carries the token `0`, which the pattern refuses, and so does the service."""
        if response.status_code == 422 and unstatable_rule(api, response.json()["code"], case):
            return None
        token = (case.headers or {}).get("X-Consistency-Token")
        if token is not None and not re.fullmatch(CONSISTENCY_TOKEN, token):
            return None
        return positive_data_acceptance(ctx, response, case)

    check.__name__ = "positive_data_acceptance"
    return check


#: the token of the runs with a token: an admin may call every route
ADMIN = bearer("admin", sub="fuzz-admin")


def fuzz(case: Case, api: str, token: bool, *excluded: Any, **replaced: Any) -> None:
    """Send the case (with the admin token, or as generated); run every check
    (positive_data_acceptance with the API's exceptions). With the token, no case may be
    refused as unauthenticated: each one reaches its route."""
    response = case.call_and_validate(
        timeout=30,
        headers=ADMIN if token else None,
        excluded_checks=[positive_data_acceptance, *excluded],
        additional_checks=[positive_data_acceptance_except_unstatable(api), *replaced.values()],
    )
    if token and response.request.headers.get("Authorization") == ADMIN["Authorization"]:
        # (schemathesis's coverage phase also sends cases without the header on purpose,
        # about the security requirement: those answer 401 as documented)
        assert response.status_code != 401, f"the admin token was refused: {response.text}"
    run = RUNS[run_name(api, token=token)]
    run.cases += 1
    run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> Any:
    r = await http.post(path, json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def fuzz_env(bootstrap: str, prefix: str, group: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": str(PARTITIONS),
        "GROUP_ID": f"{prefix}{group}",
        "SESSION_TIMEOUT_MS": "6000",
        **extra,
    }


PARTITIONS = 2


def command_service(bootstrap: str, prefix: str, tmp_path: Path) -> ServiceProcess:
    """The command service; a post for an unknown author is refused after 100 ms, not 2 s."""
    env = command_service_env(bootstrap, prefix, PARTITIONS, AUTHOR_WAIT_MS="100")
    return ServiceProcess("command_service", env, tmp_path, "command")


async def seed(url: str, submit: bool = False) -> dict[str, str]:
    """An author and a post (submitted for review if asked): ids that exist."""
    async with http_client(base_url=url, timeout=30) as http:
        author = await post(
            http,
            "/authors",
            # a new subject each time: the key store is the session's, and the token runs
            # erase the known author (POST /subjects/{id}/erase with its id)
            {"author_id": unique("fuzz-author"), "name": "Ada Fuzz", "email": "ada@example.org"},
        )
        created = await post(
            http,
            "/posts",
            {
                "post_id": "fuzz-post",
                "author_id": author["aggregate_id"],
                "title": "Hello",
                "tags": ["kafka"],
            },
        )
        last = created
        if submit:
            last = await post(http, "/posts/fuzz-post/submit")
    return {
        "author": author["aggregate_id"],
        "post": created["aggregate_id"],
        "command": created["command_id"],
        "token": last["consistency_token"],
    }


@pytest.fixture
async def command_api(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BaseSchema]:
    """The command service as a process, with an author and a post; its OpenAPI document."""
    name = run_name("command", request)
    cmd = command_service(kafka_bootstrap, unique("fuzz") + ".", tmp_path)
    cmd.start()
    try:
        await cmd.wait_healthy()
        ids = await seed(cmd.url)
        schema = configure(schemathesis.openapi.from_url(f"{cmd.url}/openapi.json"), name)
        Known(
            {
                "author_id": [ids["author"]],
                "post_id": [ids["post"]],
                "subject_id": [ids["author"]],
                "command_id": [ids["command"]],
            }
        ).substitute(schema)
        started = time.monotonic()
        yield schema
        RUNS[name].seconds = time.monotonic() - started
    finally:
        await cmd.stop()


@pytest.fixture
async def query_api(
    kafka_bootstrap: str, postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BaseSchema]:
    """Command service, projector and query service as processes on a PostgreSQL read store
    that holds an author and a post in review; the query service's OpenAPI document."""
    name = run_name("query", request)
    prefix = unique("fuzz") + "."
    async with fresh_database(postgres_url, "fuzz") as store_url:
        cmd = command_service(kafka_bootstrap, prefix, tmp_path)
        read = {"READ_STORE_URL": store_url, "CONSISTENCY_WAIT_MS": "200"}
        projector = ServiceProcess(
            "projector_service",
            fuzz_env(kafka_bootstrap, prefix, "projector", **read),
            tmp_path,
            "projector",
        )
        query = ServiceProcess(
            "query_service", fuzz_env(kafka_bootstrap, prefix, "query", **read), tmp_path, "query"
        )
        services = (cmd, projector, query)
        try:
            for svc in services:
                svc.start()
            for svc in services:
                await svc.wait_healthy()
            ids = await seed(cmd.url, submit=True)
            async with http_client(base_url=query.url, timeout=30) as http:

                async def projected() -> bool:
                    headers = {"X-Consistency-Token": ids["token"]}
                    r = await http.get(f"/posts/{ids['post']}", headers=headers)
                    return r.status_code == 200

                await wait_until(projected, timeout_s=60, what="the seeded post in the read model")
            schema = configure(schemathesis.openapi.from_url(f"{query.url}/openapi.json"), name)
            both = [ids["post"], ids["author"]]
            Known(
                {"post_id": [ids["post"]], "author_id": [ids["author"]], "aggregate_id": both}
            ).substitute(schema)
            started = time.monotonic()
            yield schema
            RUNS[name].seconds = time.monotonic() - started
        finally:
            for svc in reversed(services):
                await svc.stop()


@pytest.fixture
async def workflow_api(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BaseSchema]:
    """Command and workflow services as processes, with a review workflow running; the
    workflow service's OpenAPI document."""
    name = run_name("workflow", request)
    prefix = unique("fuzz") + "."
    cmd = command_service(kafka_bootstrap, prefix, tmp_path)
    workflow = ServiceProcess(
        "workflow_service",
        fuzz_env(
            kafka_bootstrap,
            prefix,
            "workflow-service",
            WORKFLOW_STORE_URL=f"sqlite:///{tmp_path / 'workflows.sqlite3'}",
        ),
        tmp_path,
        "workflow",
    )
    services = (cmd, workflow)
    try:
        for svc in services:
            svc.start()
        for svc in services:
            await svc.wait_healthy()
        await seed(cmd.url, submit=True)
        found: list[str] = []
        async with http_client(base_url=workflow.url, timeout=30) as http:

            async def started() -> bool:
                found[:] = [
                    w["workflow_id"] for w in (await http.get("/workflows")).json()["workflows"]
                ]
                return bool(found)

            await wait_until(started, timeout_s=60, what="the review workflow of the seeded post")
        schema = configure(schemathesis.openapi.from_url(f"{workflow.url}/openapi.json"), name)
        Known({"workflow_id": found}).substitute(schema)
        began = time.monotonic()
        yield schema
        RUNS[name].seconds = time.monotonic() - began
    finally:
        for svc in reversed(services):
            await svc.stop()


command_schema = schemathesis.pytest.from_fixture("command_api")
query_schema = schemathesis.pytest.from_fixture("query_api")
workflow_schema = schemathesis.pytest.from_fixture("workflow_api")


@command_schema.parametrize()
def test_the_command_api_answers_as_its_openapi_document_says_with_a_token(case: Case) -> None:
    """Every check of schemathesis holds for every operation of the command API, called by an
    admin (a 422 to a schema-valid request only for a documented rule that a schema cannot
    state)."""
    fuzz(case, "command", True)


@command_schema.parametrize()
def test_the_command_api_answers_as_its_openapi_document_says_without_a_token(case: Case) -> None:
    """The same without a token: every command route answers 401 as documented."""
    fuzz(case, "command", False)


@query_schema.parametrize()
def test_the_query_api_answers_as_its_openapi_document_says_with_a_token(case: Case) -> None:
    """Every check of schemathesis holds for every operation of the query API (a 503 is no
    server error only as the documented `not_consistent_yet` answer to a consistency token;
    a case with a schema-invalid token is no positive case)."""
    fuzz(case, "query", True, not_a_server_error, server=not_a_server_error_but_not_consistent_yet)


@query_schema.parametrize()
def test_the_query_api_answers_as_its_openapi_document_says_without_a_token(case: Case) -> None:
    """The same without a token (the query routes are public; /metrics answers 401)."""
    fuzz(case, "query", False, not_a_server_error, server=not_a_server_error_but_not_consistent_yet)


@workflow_schema.parametrize()
def test_the_workflow_api_answers_as_its_openapi_document_says_with_a_token(case: Case) -> None:
    """Every check of schemathesis holds for every operation of the workflow API."""
    fuzz(case, "workflow", True)


@workflow_schema.parametrize()
def test_the_workflow_api_answers_as_its_openapi_document_says_without_a_token(
    case: Case,
) -> None:
    """The same without a token: every workflow route answers 401 as documented."""
    fuzz(case, "workflow", False)
