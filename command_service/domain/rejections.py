"""Rejections: a stable machine-readable `code`, a sentence for a person, and details.

The codes are part of the public contract (HTTP problem bodies, command results on Kafka). Which
HTTP status answers each is decided at the HTTP edge (`command_service/api.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
