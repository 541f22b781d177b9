"""The principals of the system and their Kafka ACLs: each service may use exactly the topics,
consumer groups and transactional ids it uses, and nothing else.

A broker with `allow.everyone.if.no.acl.found=false` denies whatever no ACL allows; the broker
itself and `admin` (the operator tool, `esctl`) are super users. Kafka lets READ, WRITE, DELETE
and ALTER imply DESCRIBE, so DESCRIBE is listed only where it is all a principal needs.

The bindings are a function of the topic prefix and the group id, so that a deployment with
`TOPIC_PREFIX=dev.` (or a test with its own prefix) gets the same least privilege on its names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import IntEnum

from aiokafka.protocol.admin import CreateAclsRequest

from shared.errors import ConfigurationError
from shared.kafka.clients import make_admin, running
from shared.kafka.security import KafkaSecurity
from shared.kafka.topics import Topics


class Resource(IntEnum):
    """Kafka's resource type codes (org.apache.kafka.common.resource.ResourceType)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Pattern(IntEnum):
    """Kafka's pattern type codes: a name, or every name starting with it."""

    LITERAL = 3
    PREFIXED = 4


class Op(IntEnum):
    """Kafka's ACL operation codes (org.apache.kafka.common.acl.AclOperation)."""

    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    DESCRIBE = 8


ALLOW = 3

#: The Kafka principal (SCRAM user name) of each service, of the operator tool, and the broker.
BROKER = "broker"
ADMIN = "admin"
COMMAND = "command-service"
PROJECTOR = "projector"
QUERY = "query-service"
WORKFLOW = "workflow-service"
SERVICE_PRINCIPALS = (COMMAND, PROJECTOR, QUERY, WORKFLOW)
#: Super users: everything is allowed to them, ACLs or not.
SUPER_USERS = (BROKER, ADMIN)
PRINCIPALS = (*SUPER_USERS, *SERVICE_PRINCIPALS)

#: The module each service process runs, and its principal.
MODULE_PRINCIPALS = {
    "command_service": COMMAND,
    "projector_service": PROJECTOR,
    "query_service": QUERY,
    "workflow_service": WORKFLOW,
}


@dataclass(frozen=True)
class AclBinding:
    """ALLOW `principal` to do `operation` on the resource(s) named `name` (or prefixed)."""

    principal: str
    resource: Resource
    name: str
    operation: Op
    pattern: Pattern = Pattern.LITERAL

    def describe(self) -> str:
        where = f"{self.name}*" if self.pattern is Pattern.PREFIXED else self.name
        return f"User:{self.principal} {self.operation.name} {self.resource.name.lower()} {where}"


def _topic(principal: str, name: str, *ops: Op) -> list[AclBinding]:
    return [AclBinding(principal, Resource.TOPIC, name, op) for op in ops]


def _group(principal: str, group_id: str) -> list[AclBinding]:
    # READ: join the group and commit offsets (also inside transactions); DESCRIBE: its lag
    return [
        AclBinding(principal, Resource.GROUP, group_id, Op.READ),
        AclBinding(principal, Resource.GROUP, group_id, Op.DESCRIBE),
    ]


def _transactional_ids(principal: str, prefix: str) -> list[AclBinding]:
    # the processor's ids are `<service>.<input topic>.<partition>` (transactional_id_for)
    return [
        AclBinding(principal, Resource.TRANSACTIONAL_ID, prefix, op, Pattern.PREFIXED)
        for op in (Op.WRITE, Op.DESCRIBE)
    ]


def service_acls(
    principal: str, topics: Topics, *, group_id: str, service_name: str
) -> list[AclBinding]:
    """What `principal` (one of SERVICE_PRINCIPALS) needs on `topics`, as the service runs
    with consumer group `group_id` and SERVICE_NAME `service_name`."""
    rw = (Op.READ, Op.WRITE, Op.CREATE)
    t = topics
    if principal == COMMAND:
        return [
            # intake writes commands, the processor reads them, erasure purges processed ones
            *_topic(principal, t.commands, *rw, Op.DELETE),
            # the processor appends events and outcomes, restores from events and snapshots
            *_topic(principal, t.events, *rw),
            *_topic(principal, t.command_results, *rw),
            *_topic(principal, t.snapshots, *rw),
            # dead letters: written here; erasure rewrites both without the erased subject
            *_topic(principal, t.commands_dlq, *rw, Op.DELETE),
            *_topic(principal, t.events_dlq, *rw, Op.DELETE),
            # it creates the whole topic set at start (as it did before ACLs), so that it can
            # run alone; creating and describing a topic is no right to read or write it
            *(
                b
                for name in (t.workflow_state, t.workflow_control, t.workflow_history)
                for b in _topic(principal, name, Op.CREATE, Op.DESCRIBE)
            ),
            *_topic(principal, t.workflow_dlq, Op.CREATE, Op.DESCRIBE),
            *_group(principal, group_id),
            *_transactional_ids(principal, f"{service_name}.{t.commands}."),
        ]
    if principal == PROJECTOR:
        return [
            *_topic(principal, t.events, Op.READ, Op.CREATE),
            *_topic(principal, t.events_dlq, Op.WRITE, Op.CREATE),
            # the partition counts of commands and events must agree (checked at start)
            *_topic(principal, t.commands, Op.DESCRIBE),
            *_group(principal, group_id),
        ]
    if principal == WORKFLOW:
        return [
            *_topic(principal, t.events, Op.READ, Op.CREATE),
            # the trust boundary: the workflow service sends commands (as its own actor)
            *_topic(principal, t.commands, Op.WRITE, Op.CREATE),
            *_topic(principal, t.workflow_state, *rw),
            *_topic(principal, t.workflow_control, *rw),
            *_topic(principal, t.workflow_history, Op.WRITE, Op.CREATE),
            *_topic(principal, t.workflow_dlq, Op.WRITE, Op.CREATE),
            *_group(principal, group_id),
            *_transactional_ids(principal, f"{service_name}.{t.events}."),
        ]
    if principal == QUERY:
        return []  # the query service reads its read store, never Kafka
    raise ConfigurationError(f"{principal} is not a service principal ({SERVICE_PRINCIPALS})")


async def create_acls(
    bootstrap_servers: str, bindings: list[AclBinding], *, security: KafkaSecurity | None = None
) -> None:
    """Create `bindings` (idempotent: an existing ACL is no error). Needs a super user (or
    ALTER on the cluster)."""
    if not bindings:
        return
    async with running(
        make_admin(bootstrap_servers, security=security), "cannot create ACLs"
    ) as admin:
        # one request per binding (aiokafka's request carries one), sent together
        responses = await asyncio.gather(
            *(
                admin._send_request(  # no public API for ACLs in aiokafka
                    CreateAclsRequest(
                        int(b.resource),
                        b.name,
                        int(b.pattern),
                        f"User:{b.principal}",
                        "*",
                        int(b.operation),
                        ALLOW,
                    )
                )
                for b in bindings
            )
        )
    for binding, response in zip(bindings, responses, strict=True):
        for code, message in response.creation_responses:
            if code != 0:
                raise ConfigurationError(
                    f"cannot create ACL {binding.describe()}: error {code} {message or ''}"
                )
