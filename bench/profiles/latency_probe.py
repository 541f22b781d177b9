"""Timestamps at the stages of one command, in a service process, for `latency_driver.py`.

Not part of any service: the driver starts a service as `python -m bench.profiles.latency_probe`
with `PROBE_TARGET=<module>` and `PROBE_FILE=<path>`; this module wraps a few methods (class
level, nothing in the services changes) so that each call appends `<time.time()> <stage>` to
the file, then runs the target module as `__main__`. All processes share the wall clock, so the
driver can line the stages of all of them up per request (one sequential client: every stage
logged between a request's start and its end belongs to that request).
"""

from __future__ import annotations

import functools
import os
import runpy
import time
from typing import Any

_out = None


def _mark(stage: str) -> None:
    if _out is not None:
        _out.write(f"{time.time():.6f} {stage}\n")


def _wrap_async(
    owner: Any, name: str, stage: str, *, entry: bool = True, exit: bool = True
) -> None:
    original = owner.__dict__[name]
    is_static = isinstance(original, staticmethod)
    func = original.__func__ if is_static else original

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if entry:
            _mark(f"{stage}.in")
        try:
            return await func(*args, **kwargs)
        finally:
            if exit:
                _mark(f"{stage}.out")

    setattr(owner, name, staticmethod(wrapper) if is_static else wrapper)


def _wrap_sync(owner: Any, name: str, stage: str) -> None:
    func = owner.__dict__[name]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(stage)
        return func(*args, **kwargs)

    setattr(owner, name, wrapper)


def install(target: str) -> None:
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    if target == "command_service":
        from shared.kafka.commands import CommandClient  # noqa: PLC0415
        from shared.kafka.processor import TransactionalPartitionProcessor as P  # noqa: PLC0415

        _wrap_async(CommandClient, "send", "cmd.client_send")
        _wrap_async(AIOKafkaProducer, "send_and_wait", "cmd.produce_command")
        _wrap_sync(CommandClient, "_on_results", "cmd.outcome_seen")
        _wrap_async(P, "_transact", "proc.transact")
        _wrap_async(P, "_send_all", "proc.send_all")
        _wrap_async(P, "_commit_skipped", "proc.commit_skipped", exit=False)
        _wrap_sync(AIOKafkaProducer, "begin_transaction", "proc.begin")
        _wrap_async(AIOKafkaProducer, "send_offsets_to_transaction", "proc.send_offsets")
        _wrap_async(AIOKafkaProducer, "commit_transaction", "proc.commit")
    elif target == "projector_service":
        from projector_service.projector import Projector  # noqa: PLC0415
        from shared.readmodel.store import ReadStore  # noqa: PLC0415

        _wrap_async(Projector, "_apply", "proj.apply")
        _wrap_async(ReadStore, "apply_batches", "proj.db_apply")
    elif target == "query_service":
        from query_service.api import PositionWatcher  # noqa: PLC0415
        from shared.readmodel.store import ReadStore  # noqa: PLC0415

        _wrap_async(PositionWatcher, "wait_for", "query.wait_for")
        _wrap_async(ReadStore, "freshness", "query.freshness")
        _wrap_async(ReadStore, "get_post", "query.get_post")


if __name__ == "__main__":
    module = os.environ["PROBE_TARGET"]
    path = os.environ.get("PROBE_FILE")
    if path:
        _out = open(path, "a", buffering=1)  # noqa: SIM115  # line-buffered, for the process's life
        install(module)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
