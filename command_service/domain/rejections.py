"""Rejections: a stable machine-readable `code`, a sentence for a person, and details.

The codes are part of the public contract (HTTP problem bodies, command results on Kafka).
`HTTP_STATUS` says how the HTTP edge reports each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


# code -> HTTP status. 404: the thing is not there; 409: it is there but in another state or
# version; 422: the command itself is invalid whatever the state.
HTTP_STATUS: dict[str, int] = {
    "post_not_found": 404,
    "author_not_found": 404,
    "version_conflict": 409,
    "post_already_exists": 409,
    "author_already_registered": 409,
    "already_published": 409,
    "not_published": 409,
    "not_approved": 409,
    "not_in_review": 409,
    "not_a_draft": 409,
    "post_in_review": 409,
    "post_archived": 409,
    "no_scheduled_publication": 409,
    "wrong_aggregate_type": 409,
    "subject_erased": 409,
    "already_erased": 409,
    "title_required": 422,
    "title_too_long": 422,
    "body_too_large": 422,
    "too_many_tags": 422,
    "invalid_tag": 422,
    "nothing_to_change": 422,
    "system_command": 403,  # only the system issues it (the message says what to do instead)
    # Record-level problems (the command could not be read or routed):
    "malformed_record": 422,
    "unknown_message_type": 422,
    "invalid_payload": 422,
    "unsupported_schema_version": 422,
    "missing_key": 422,
    "key_mismatch": 422,
    "wrong_partition": 422,
    "record_too_large": 413,
}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 422)
