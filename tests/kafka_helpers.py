"""Reading and writing test records, always with a deadline."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from esctl.localstack.kafka import java_executable, libs_dir
from esctl.localstack.kafka_security import java_client_properties
from shared.kafka import InboundRecord, make_admin, make_consumer, make_producer
from shared.kafka.security import process_security


async def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=k, partition=partition) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    isolation_level: str = "read_committed",
    timeout_s: float = 30.0,
) -> list[InboundRecord]:
    """Every record of `topic` from the beginning up to the current end (visible ones only)."""
    consumer = make_consumer(bootstrap, isolation_level=isolation_level)
    await consumer.start()
    out: list[InboundRecord] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # read_committed end offsets are the last stable offsets: nothing beyond is visible.
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                out.extend(
                    InboundRecord(
                        tp.topic,
                        tp.partition,
                        m.offset,
                        m.key,
                        m.value,
                        list(m.headers or ()),
                        m.timestamp,
                    )
                    for m in msgs
                )
        return out
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int | None]:
    consumer = make_consumer(bootstrap, group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def wait_until(
    predicate, *, timeout_s: float, interval_s: float = 0.2, what: str = ""
) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        await asyncio.sleep(interval_s)


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = make_admin(bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """The configs of each topic as the broker describes them (defaults included)."""
    admin = make_admin(bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, error, _type, name, entries in response.resources:
            assert error_code == 0, f"describe_configs {name}: {error}"
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


def kafka_consumer_groups_describe(
    bootstrap: str, group: str
) -> dict[tuple[str, int], tuple[int | str, ...]]:
    """Kafka's own `kafka-consumer-groups.sh --describe --group G`, run from the broker's jars:
    (topic, partition) -> (CURRENT-OFFSET, LOG-END-OFFSET, LAG), numbers where it prints them.
    On a secure broker it runs as this process's principal (`--command-config`)."""
    props = java_client_properties(process_security())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "client.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        run = subprocess.run(
            [
                java_executable(),
                "-cp",
                f"{libs_dir()}/*",
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
                bootstrap,
                "--command-config",
                str(config),
                "--describe",
                "--group",
                group,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    rows = {}
    for line in run.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group:
            rows[(cols[1], int(cols[2]))] = tuple(
                int(c) if c.lstrip("-").isdigit() else c for c in cols[3:6]
            )
    return rows


async def commit_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit `offsets` for `group`, as a member of it that consumed up to there would."""
    consumer = make_consumer(bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
