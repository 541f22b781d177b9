"""The command service's HTTP edge in process: every route on `build_app` with the in-memory
command client (the processor's answers scripted), every problem it answers, the body limit,
and the erasure token's parsing."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from fastapi import FastAPI

from command_service.adapters import InMemoryCommandClient
from command_service.api import IDEMPOTENCY_NAMESPACE, Eraser
from command_service.bootstrap import CommandAdapters, build_app
from shared.errors import InfrastructureUnavailable
from shared.http import PROBLEM_JSON
from shared.lifecycle.erase import ErasureRefused, ErasureReport, KeyCheck, NotADataSubject
from shared.messages.codec import EncodedMessage
from shared.messages.results import CommandOutcome, EventPosition
from shared.principal import LOCAL_DEMO
from shared.settings import CommandServiceSettings
from tests.inprocess.conftest import HTTPClient, as_caller, bearer, healthy
from tests.inprocess.test_shared_http import call_chunked

route = pytest.mark.route
TOKEN = "s3cret"  # the test's erasure token
LIMIT = 2048


class Processor:
    """Plays the command processor: accepts each command with one event at the next offset of
    partition 0, unless told to reject (`code`) or to stay silent (no outcome in the wait)."""

    def __init__(self) -> None:
        self.offset = 0
        self.code: str | None = None
        self.silent = False

    def __call__(self, command_id: uuid.UUID, message: EncodedMessage) -> CommandOutcome | None:
        if self.silent:
            return None
        aggregate = message.key.decode()
        if self.code is not None:
            return CommandOutcome(
                command_id=command_id,
                status="rejected",
                aggregate_id=aggregate,
                version=3,
                code=self.code,
                message=f"rejected: {self.code}",
                details={"why": "scripted"},
            )
        self.offset += 2  # a transaction marker follows each event
        return CommandOutcome(
            command_id=command_id,
            status="accepted",
            aggregate_id=aggregate,
            version=1,
            events=[
                EventPosition(type="Done", aggregate_version=1, partition=0, offset=self.offset)
            ],
        )


def report(subject: str, *, complete: bool) -> ErasureReport:
    return ErasureReport(
        subject=subject,
        key_deleted=True,
        outcome={"status": "accepted"},
        key_check=KeyCheck(
            key_store="memory", key_left=False, tombstone=True, probe_opens=not complete
        ),
    )


class ScriptedEraser:
    """A scripted eraser: what `erase_subject` answers for a few subjects, and the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, bool]] = []

    async def __call__(self, subject: str, reason: str | None, force: bool) -> ErasureReport:
        self.calls.append((subject, reason, force))
        if subject == "typo":
            raise NotADataSubject("no personal data was ever stored for typo")
        if subject == "post-1":
            raise ErasureRefused("post-1 is a post: wrong_aggregate_type")
        if subject == "down":
            raise InfrastructureUnavailable("the key store did not answer")
        return report(subject, complete=subject != "half")


def command_app(
    client: InMemoryCommandClient,
    *,
    eraser: Eraser | None = None,
    erasure_token: str = TOKEN,
) -> FastAPI:
    settings = CommandServiceSettings(
        http_body_limit_bytes=LIMIT, erasure_token=erasure_token, command_timeout_ms=250
    )
    return build_app(settings, CommandAdapters(client=client, health=healthy, eraser=eraser))


@pytest.fixture
def processor() -> Processor:
    return Processor()


@pytest.fixture
def client(processor: Processor) -> InMemoryCommandClient:
    return InMemoryCommandClient(processor)


@pytest.fixture
def eraser() -> ScriptedEraser:
    return ScriptedEraser()


@pytest.fixture
def app(client: InMemoryCommandClient, eraser: ScriptedEraser) -> FastAPI:
    return command_app(client, eraser=eraser)


def sent(client: InMemoryCommandClient) -> list[dict[str, Any]]:
    """The command envelopes the client put on the topic."""
    return [json.loads(m.value) for m in client.sent]


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM_JSON), r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["type"] == f"urn:esctl:problem:{code}", body
    return body


# --------------------------------------------------------------------------------------------
# Accepted, pending, rejected, unavailable


@route("command", "POST /authors")
async def test_registering_an_author_is_201_with_its_events_and_consistency_token(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """POST /authors: 201 with the outcome, `X-Consistency-Token` at the last event; the command
    is RegisterAuthor keyed by a generated `author-...` id when the caller has no subject
    (authentication off; with one, the subject is the id: test_ownership_http.py)."""
    api = http(as_caller(app, LOCAL_DEMO))
    r = await api.post("/authors", json={"name": "Ada", "email": "ada@example.org"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["consistency_token"] == "0:2"
    assert r.headers["x-consistency-token"] == "0:2"
    [command] = sent(client)
    assert command["type"] == "RegisterAuthor" and command["payload"]["name"] == "Ada"
    assert re.fullmatch("author-[0-9a-f]{16}", body["aggregate_id"])
    assert client.sent[0].key == body["aggregate_id"].encode()


@route("command", "POST /posts")
async def test_an_idempotency_key_makes_the_command_id_a_function_of_the_key(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """The same Idempotency-Key twice: the same command id (uuid5 of the caller and the key)."""
    post = {"post_id": "p1", "author_id": "ada", "title": "T"}
    headers = {"Idempotency-Key": "k-1"}
    first = await http(app).post("/posts", json=post, headers=headers)
    again = await http(app).post("/posts", json=post, headers=headers)
    # scoped by the caller's subject (the admin token's): another caller's k-1 is another command
    expected = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "test-admin\nk-1"))
    assert first.json()["command_id"] == again.json()["command_id"] == expected
    assert [c["command_id"] for c in sent(client)] == [expected, expected]


@route("command", "POST /posts")
@route("command", "GET /commands/{command_id}")
async def test_no_outcome_within_the_wait_is_202_and_the_outcome_is_polled_later(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient, processor: Processor
) -> None:
    """No outcome in the wait: 202 `pending` with `Location: /commands/{id}`, which answers 404
    `command_unknown` until the outcome arrives, then 200 with it and its consistency token."""
    processor.silent = True
    r = await http(app).post("/posts", json={"author_id": "ada", "title": "T"})
    assert r.status_code == 202, r.text
    command_id = r.json()["command_id"]
    assert r.json()["status"] == "pending" and "0.25s" in r.json()["detail"]
    assert r.headers["location"] == f"/commands/{command_id}"
    assert_problem(await http(app).get(r.headers["location"]), 404, "command_unknown")
    processor.silent = False
    client.deliver(processor(uuid.UUID(command_id), client.sent[0]))  # type: ignore[arg-type]
    late = await http(app).get(r.headers["location"])
    assert late.status_code == 200, late.text
    assert (late.json()["status"], late.json()["consistency_token"]) == ("accepted", "0:2")


@route("command", "GET /commands/{command_id}")
async def test_a_command_id_that_is_no_uuid_is_a_422_naming_it(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /commands/not-a-uuid: 422 `invalid_request` on `path.command_id`."""
    r = await http(app).get("/commands/not-a-uuid")
    body = assert_problem(r, 422, "invalid_request")
    assert [e["field"] for e in body["errors"]] == ["path.command_id"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("author_already_registered", 409),
        ("author_not_found", 404),
        ("system_command", 403),
        ("malformed_record", 422),
        ("record_too_large", 413),
        ("a_code_the_edge_does_not_know", 422),
    ],
)
@route("command", "POST /authors")
async def test_a_rejection_is_a_problem_with_its_code_and_the_status_of_the_code(
    http: HTTPClient, app: FastAPI, processor: Processor, code: str, status: int
) -> None:
    """A rejected outcome: problem+json with the rejection's code, its HTTP status, the
    message, the command id, the aggregate's current version and the details."""
    processor.code = code
    r = await http(app).post("/authors", json={"author_id": "ada", "name": "A", "email": "a@b"})
    body = assert_problem(r, status, code)
    assert body["detail"] == f"rejected: {code}" and body["current_version"] == 3
    assert body["aggregate_id"] == "ada" and body["details"] == {"why": "scripted"}
    uuid.UUID(body["command_id"])


@route("command", "PATCH /authors/{author_id}")
async def test_a_stale_expected_version_is_a_409_version_conflict(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient, processor: Processor
) -> None:
    """PATCH /authors/{id}?expected_version=2: the version goes into the command; the processor's
    `version_conflict` is 409 with the current version."""
    processor.code = "version_conflict"
    r = await http(app).patch("/authors/ada", params={"expected_version": 2}, json={"name": "B"})
    assert assert_problem(r, 409, "version_conflict")["current_version"] == 3
    [command] = sent(client)
    assert (command["type"], command["expected_version"]) == ("RenameAuthor", 2)


@route("command", "PATCH /authors/{author_id}")
async def test_renaming_an_author_is_200(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """PATCH /authors/{id}: 200 (not 201) with the outcome, the command keyed by the path id."""
    r = await http(app).patch("/authors/ada", json={"name": "Ada L."})
    assert r.status_code == 200, r.text
    assert client.sent[0].key == b"ada" and sent(client)[0]["payload"] == {"name": "Ada L."}


@route("command", "POST /posts")
async def test_kafka_not_taking_the_command_is_a_retriable_503(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """The command cannot be enqueued: 503 `infrastructure_unavailable`, `retriable: true`."""
    client.unavailable = "no broker"
    r = await http(app).post("/posts", json={"author_id": "ada", "title": "T"})
    body = assert_problem(r, 503, "infrastructure_unavailable")
    assert body["retriable"] is True and "no broker" in body["detail"]


# --------------------------------------------------------------------------------------------
# Invalid requests


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field"),
    [
        pytest.param(
            "POST", "/authors", {"json": {"name": "A"}}, "body.email",
            marks=route("command", "POST /authors"),
        ),
        pytest.param(
            "POST", "/authors", {"json": {"name": "A", "email": "a@b", "x": 1}}, "body.x",
            marks=route("command", "POST /authors"),
        ),
        pytest.param(
            "PATCH", "/authors/ada", {"json": {"name": "   "}}, "body.name",
            marks=route("command", "PATCH /authors/{author_id}"),
        ),
        pytest.param(
            "PATCH", "/authors/-bad", {"json": {"name": "A"}}, "path.author_id",
            marks=route("command", "PATCH /authors/{author_id}"),
        ),
        pytest.param(
            "PATCH", "/posts/p1?expected_version=-1", {"json": {"title": "T"}},
            "query.expected_version", marks=route("command", "PATCH /posts/{post_id}"),
        ),
        pytest.param(
            "PATCH", "/posts/p1", {"json": {"title": None}}, "body.title",
            marks=route("command", "PATCH /posts/{post_id}"),
        ),
        pytest.param(
            "POST", "/posts",
            {"json": {"author_id": "ada", "title": "T"}, "headers": {"Idempotency-Key": "k" * 201}},
            "header.idempotency-key", marks=route("command", "POST /posts"),
        ),
        pytest.param(
            "POST", "/posts/p1/schedule", {}, "body.publish_at",
            marks=route("command", "POST /posts/{post_id}/schedule"),
        ),
        pytest.param(
            "POST", "/posts/p1/submit", {"json": {"publish_at": "1700000000"}}, "body.publish_at",
            marks=route("command", "POST /posts/{post_id}/submit"),
        ),
        pytest.param(
            "POST", "/posts/p1/reject", {"json": {"reason": ""}}, "body.reason",
            marks=route("command", "POST /posts/{post_id}/reject"),
        ),
        pytest.param(
            "POST", "/posts/p1/approve", {"json": {"reviewer": "r" * 201}}, "body.reviewer",
            marks=route("command", "POST /posts/{post_id}/approve"),
        ),
        pytest.param(
            "POST", "/posts/p1/unpublish", {"json": {"reason": "r" * 2001}}, "body.reason",
            marks=route("command", "POST /posts/{post_id}/unpublish"),
        ),
        pytest.param(
            "POST", "/posts/p1/archive?expected_version=2147483648", {}, "query.expected_version",
            marks=route("command", "POST /posts/{post_id}/archive"),
        ),
    ],
)  # fmt: skip
async def test_an_invalid_request_is_a_422_naming_the_field_and_sends_nothing(
    http: HTTPClient,
    app: FastAPI,
    client: InMemoryCommandClient,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    """A missing, extra, blank, too long or malformed field, path id, query or header value:
    422 `invalid_request` whose `errors` name it; nothing reaches the commands topic."""
    r = await http(app).request(method, path, **kwargs)
    body = assert_problem(r, 422, "invalid_request")
    assert field in [e["field"] for e in body["errors"]], body
    assert field in body["detail"]
    assert client.sent == []


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        pytest.param("POST", "/posts", {"author_id": "ada", "title": "T", "tags": [""]},
                     "invalid_tag", marks=route("command", "POST /posts")),
        pytest.param("PATCH", "/posts/p1", {"tags": [""]}, "invalid_tag",
                     marks=route("command", "PATCH /posts/{post_id}")),
        pytest.param("POST", "/posts", {"author_id": "ada", "title": "x" * 201},
                     "title_too_long", marks=route("command", "POST /posts")),
        pytest.param("PATCH", "/posts/p1", {"tags": [f"t{i}" for i in range(11)]},
                     "too_many_tags", marks=route("command", "PATCH /posts/{post_id}")),
        pytest.param("PATCH", "/posts/p1", {}, "nothing_to_change",
                     marks=route("command", "PATCH /posts/{post_id}")),
    ],
)  # fmt: skip
async def test_invalid_content_is_rejected_at_the_edge_with_the_domain_code(
    http: HTTPClient,
    app: FastAPI,
    client: InMemoryCommandClient,
    method: str,
    path: str,
    body: dict[str, Any],
    code: str,
) -> None:
    """Content the domain refuses whatever the state (an empty tag, a long title, too many
    tags, an edit of nothing): 422 with the domain's code, decided before anything is sent."""
    r = await http(app).request(method, path, json=body)
    assert_problem(r, 422, code)
    assert client.sent == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/posts", marks=route("command", "POST /posts")),
        pytest.param("/posts/p1/reject", marks=route("command", "POST /posts/{post_id}/reject")),
    ],
)
async def test_a_json_syntax_error_says_at_which_line_and_column(
    http: HTTPClient, app: FastAPI, path: str
) -> None:
    """A body that breaks JSON: 422 naming the line and column where, and what is wrong."""
    r = await http(app).post(
        path,
        content=b'{"post_id": "p1",\n "reason": }',
        headers={"content-type": "application/json"},
    )
    [error] = assert_problem(r, 422, "invalid_request")["errors"]
    assert error["field"] == "body"
    assert re.search(r"line 2,? column 12", error["message"]), error


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/posts", marks=route("command", "POST /posts")),
        pytest.param("/posts/p1/reject", marks=route("command", "POST /posts/{post_id}/reject")),
        pytest.param("/authors", marks=route("command", "POST /authors")),
    ],
)
async def test_a_form_encoded_body_is_told_that_json_is_expected(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient, path: str
) -> None:
    """A form post (what `curl -d a=b` sends): 422 saying the body must be JSON, with its
    content type, and nothing is sent to Kafka."""
    r = await http(app).post(path, data={"title": "x", "reason": "y"})
    [error] = assert_problem(r, 422, "invalid_request")["errors"]
    assert error["field"] == "body"
    assert "must be JSON" in error["message"]
    assert "application/x-www-form-urlencoded" in error["message"]
    assert client.sent == []


@route("command", "POST /posts")
async def test_a_body_that_is_not_utf8_json_is_a_422_naming_the_body(
    http: HTTPClient, app: FastAPI
) -> None:
    """Bytes that are not UTF-8 as a JSON body: 422 `invalid_request` on `body` (was 400)."""
    r = await http(app).post(
        "/posts", content=b"\xff", headers={"content-type": "application/json"}
    )
    assert [e["field"] for e in assert_problem(r, 422, "invalid_request")["errors"]] == ["body"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/posts", marks=route("command", "POST /posts")),
        pytest.param("/authors", marks=route("command", "POST /authors")),
        pytest.param("/posts/p1/reject", marks=route("command", "POST /posts/{post_id}/reject")),
    ],
)
async def test_a_body_over_the_limit_is_413_declared_or_chunked(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient, hits: set[str], path: str
) -> None:
    """A body above HTTP_BODY_LIMIT_BYTES: 413 `request_too_large`, whether Content-Length
    says so or a chunked body grows past it; a body just under the limit is read."""
    big = json.dumps({"title": "x" * LIMIT}).encode()
    assert_problem(await http(app).post(path, content=big), 413, "request_too_large")
    status, body = await call_chunked(app, path, [big[:1500], big[1500:]])
    assert status == 413 and b'"code":"request_too_large"' in body
    under = json.dumps({"reason": "x" * (LIMIT - 20)})
    r = await http(app).post(path, content=under, headers={"content-type": "application/json"})
    assert r.status_code == 422  # read, and refused for its content
    assert client.sent == []


# --------------------------------------------------------------------------------------------
# The transitions


TRANSITIONS = [
    ("submit", {"publish_at": "2030-01-01T09:00:00Z"}, "SubmitPostForReview"),
    ("schedule", {"publish_at": "2030-01-01T09:00:00+02:00"}, "SchedulePublication"),
    ("cancel-schedule", None, "CancelScheduledPublication"),
    ("approve", {"reviewer": "bob"}, "ApprovePost"),
    ("reject", {"reason": "too short", "reviewer": "bob"}, "RejectPost"),
    ("publish", None, "PublishPost"),
    ("unpublish", {"reason": "outdated"}, "UnpublishPost"),
    ("archive", None, "ArchivePost"),
]


@pytest.mark.parametrize(
    ("action", "body", "command_type"),
    [
        pytest.param(*t, marks=route("command", f"POST /posts/{{post_id}}/{t[0]}"), id=t[0])
        for t in TRANSITIONS
    ],
)
async def test_each_transition_sends_its_command_and_answers_200(
    http: HTTPClient,
    app: FastAPI,
    client: InMemoryCommandClient,
    action: str,
    body: dict[str, Any] | None,
    command_type: str,
) -> None:
    """POST /posts/{id}/<action>: 200 with the outcome; the command on the topic is the
    action's, keyed by the post, with the body's fields and the expected version."""
    r = await http(app).post(f"/posts/p1/{action}", params={"expected_version": 4}, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-consistency-token"] == "0:2"
    [command] = sent(client)
    assert (command["type"], command["aggregate_id"], command["expected_version"]) == (
        command_type,
        "p1",
        4,
    )
    for name, value in (body or {}).items():
        if name != "publish_at":
            assert command["payload"][name] == value


@pytest.mark.parametrize(
    ("action", "code", "status"),
    [
        pytest.param("approve", "not_in_review", 409,
                     marks=route("command", "POST /posts/{post_id}/approve")),
        pytest.param("publish", "post_not_found", 404,
                     marks=route("command", "POST /posts/{post_id}/publish")),
        pytest.param("cancel-schedule", "no_scheduled_publication", 409,
                     marks=route("command", "POST /posts/{post_id}/cancel-schedule")),
    ],
)  # fmt: skip
async def test_a_rejected_transition_is_a_problem_with_the_code(
    http: HTTPClient, app: FastAPI, processor: Processor, action: str, code: str, status: int
) -> None:
    """A transition the processor rejects: the code's status and the code (no body needed)."""
    processor.code = code
    assert_problem(await http(app).post(f"/posts/p1/{action}"), status, code)


@route("command", "POST /posts/{post_id}/submit")
async def test_submit_without_a_body_sends_no_publication_time(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """POST /posts/{id}/submit with no body at all: the body is optional, publish_at null."""
    r = await http(app).post("/posts/p1/submit")
    assert r.status_code == 200, r.text
    assert sent(client)[0]["payload"].get("publish_at") is None


# --------------------------------------------------------------------------------------------
# Reads, methods


@pytest.mark.parametrize("path", ["/posts/p1", "/posts", "/authors/ada", "/"])
async def test_a_read_on_the_command_service_points_to_the_query_service(
    http: HTTPClient, app: FastAPI, path: str
) -> None:
    """GET of a read path (or of nothing) on the command service: the 404/405 problem says
    that reads are served by the query service and where."""
    r = await http(app).get(path)
    assert r.status_code in (404, 405), r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert "query service" in r.json()["detail"] and "8002" in r.json()["detail"]


async def test_a_method_the_route_lacks_is_405_with_allow(http: HTTPClient, app: FastAPI) -> None:
    """405 problem+json keeps the `Allow` header that lists the route's methods."""
    r = await http(app).delete("/posts")
    assert_problem(r, 405, "http_405")
    assert r.headers["allow"] == "POST"


# --------------------------------------------------------------------------------------------
# Erasure


ERASE = "POST /subjects/{subject_id}/erase"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer {TOKEN}x",
        f"Token {TOKEN}",
    ],
)
@route("command", ERASE)
async def test_erasure_without_the_right_bearer_token_is_401_and_erases_nothing(
    http: HTTPClient, app: FastAPI, eraser: ScriptedEraser, authorization: str | None
) -> None:
    """No Authorization header (401 `unauthenticated`), another scheme, no token, or a wrong
    one (401 `invalid_token`), with a Bearer challenge; the eraser is not called."""
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await http(app, caller=None).post("/subjects/ada/erase", headers=headers)
    assert_problem(r, 401, "unauthenticated" if authorization is None else "invalid_token")
    assert r.headers["www-authenticate"].startswith('Bearer realm="esctl"')
    assert eraser.calls == []


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  "]
)
@route("command", ERASE)
async def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    http: HTTPClient, app: FastAPI, eraser: ScriptedEraser, authorization: str
) -> None:
    """`Bearer`, `bearer`, `BEARER` with extra spaces: the token is read; the erasure runs and
    answers 200 with the report."""
    r = await http(app).post("/subjects/ada/erase", headers={"Authorization": authorization})
    assert r.status_code == 200, r.text
    assert r.json()["complete"] is True and r.json()["subject"] == "ada"
    assert eraser.calls == [("ada", None, False)]


@route("command", ERASE)
async def test_erasure_passes_reason_and_force_and_answers_the_report(
    http: HTTPClient, app: FastAPI, eraser: ScriptedEraser
) -> None:
    """The body's reason and force reach the eraser; 200 carries the report's members."""
    r = await http(app).post(
        "/subjects/ada/erase",
        json={"reason": "GDPR art. 17", "force": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 200, r.text
    assert eraser.calls == [("ada", "GDPR art. 17", True)]
    assert r.json()["key_check"]["tombstone"] is True and r.json()["key_deleted"] is True


@pytest.mark.parametrize(
    ("subject", "status", "code"),
    [("typo", 409, "not_a_data_subject"), ("post-1", 409, "erasure_refused"),
     ("down", 503, "infrastructure_unavailable")],
)  # fmt: skip
@route("command", ERASE)
async def test_an_erasure_that_is_refused_or_cannot_finish_is_a_problem(
    http: HTTPClient, app: FastAPI, subject: str, status: int, code: str
) -> None:
    """An id that never had personal data: 409 `not_a_data_subject`; a post: 409
    `erasure_refused`; a step that failed: 503 with the error's code."""
    r = await http(app).post(
        f"/subjects/{subject}/erase", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert_problem(r, status, code)


@route("command", ERASE)
async def test_an_unfinished_erasure_is_503_with_the_report(http: HTTPClient, app: FastAPI) -> None:
    """The key store's check did not confirm: 503 with the report (`complete: false`)."""
    r = await http(app).post("/subjects/half/erase", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503 and r.json()["complete"] is False
    assert r.headers["content-type"] == "application/json"


@route("command", ERASE)
async def test_erasure_needs_the_admin_role_and_erasure_token_is_an_admin_credential(
    http: HTTPClient, client: InMemoryCommandClient, eraser: ScriptedEraser
) -> None:
    """Without credentials 401 `unauthenticated`; a token that is neither a JWT nor
    ERASURE_TOKEN 401 `invalid_token`; an editor's token 403 `forbidden`; an admin token
    erases, also while ERASURE_TOKEN is empty; ERASURE_TOKEN (deprecated) still erases."""
    off = http(command_app(client, eraser=eraser, erasure_token=""), caller=None)
    assert_problem(await off.post("/subjects/ada/erase"), 401, "unauthenticated")
    r = await off.post("/subjects/ada/erase", headers={"Authorization": "Bearer x"})
    assert_problem(r, 401, "invalid_token")
    r = await off.post("/subjects/ada/erase", headers=bearer("editor"))
    assert_problem(r, 403, "forbidden")
    assert eraser.calls == []
    r = await off.post("/subjects/ada/erase", headers=bearer("admin"))
    assert r.status_code == 200, r.text
    static = http(command_app(client, eraser=eraser), caller=None)
    r = await static.post("/subjects/bob/erase", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert [c[0] for c in eraser.calls] == ["ada", "bob"]


@route("command", ERASE)
async def test_erasure_without_a_key_store_is_off_even_with_the_right_token(
    http: HTTPClient, client: InMemoryCommandClient
) -> None:
    """A token set but no eraser (no key store): 403 `erasure_disabled`."""
    r = await http(command_app(client, eraser=None)).post(
        "/subjects/ada/erase", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert_problem(r, 403, "erasure_disabled")


@pytest.mark.parametrize(
    ("path", "kwargs", "field"),
    [
        ("/subjects/-x/erase", {}, "path.subject_id"),
        ("/subjects/ada/erase", {"json": {"reason": "r" * 2001}}, "body.reason"),
        ("/subjects/ada/erase", {"json": {"force": "maybe"}}, "body.force"),
        ("/subjects/ada/erase", {"json": {"force": 0}}, "body.force"),
    ],
)
@route("command", ERASE)
async def test_an_invalid_erasure_request_is_a_422_naming_the_field(
    http: HTTPClient,
    app: FastAPI,
    eraser: ScriptedEraser,
    path: str,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    """A malformed subject id, a reason too long, a force that is no JSON boolean (also 0): 422."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = await http(app).post(path, headers=headers, **kwargs)
    assert field in [e["field"] for e in assert_problem(r, 422, "invalid_request")["errors"]]
    assert eraser.calls == []


async def test_a_transition_whose_body_has_required_fields_documents_it_as_required(
    app: FastAPI,
) -> None:
    """`schedule` needs `publish_at`: its body is required in the document; `submit`'s is not."""
    paths = app.openapi()["paths"]
    assert paths["/posts/{post_id}/schedule"]["post"]["requestBody"]["required"] is True
    assert paths["/posts/{post_id}/submit"]["post"]["requestBody"]["required"] is False
