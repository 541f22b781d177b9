"""The `workflows.state` changelog's record format, shared by its writer (the engine) and its
readers (the engine restoring a partition, the operator's view in `api.py`).

Key = workflow id, value = `WorkflowState` JSON, a tombstone once the workflow is forgotten; plus
one meta record per partition under `META_KEY`, which is no workflow: the round-robin counter of
reviewer assignment and the next offset of `workflows.control` to apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: key of the one meta record of each changelog partition
META_KEY = b"__partition__"


@dataclass(frozen=True)
class PartitionMeta:
    """What a changelog partition keeps besides its workflows."""

    round_robin: int = 0
    control_next: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            {"round_robin": self.round_robin, "control_next_offset": self.control_next}
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> PartitionMeta:
        meta = json.loads(value)
        return cls(
            round_robin=int(meta.get("round_robin", 0)),
            control_next=int(meta.get("control_next_offset", 0)),
        )
