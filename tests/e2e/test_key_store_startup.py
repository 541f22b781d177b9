"""The services that open the key store refuse to start without its key-encryption key, or with
one that does not open the stored keys: one log line with the code and the KEK ids, exit 1, before
Kafka is even asked; with the right KEK they serve."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from esctl.localstack.kafka import free_port
from shared.kek import KeyRing, encode_kek, new_kek
from shared.keystore import KeyStore
from tests.e2e.harness import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def exit_code(service: ServiceProcess) -> int:
    assert service.proc is not None
    return await asyncio.to_thread(service.proc.wait, 60)


def errors(service: ServiceProcess) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in service.logs().splitlines() if x.startswith("{")]
    assert "Traceback" not in service.logs()
    return [line for line in lines if line.get("level") == "error"]


async def test_a_service_without_the_right_kek_refuses_to_start_in_one_line(
    tmp_path: Path,
) -> None:
    keys = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    right, wrong = new_kek(), new_kek()
    store = KeyStore(keys, KeyRing(right))
    try:
        await store.keys_for(["ada"])
    finally:
        await store.close()
    common = {
        "KEY_STORE_URL": keys,
        "KEY_ENCRYPTION_KEY_FILE": "",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nothing there
        "READ_STORE_URL": f"sqlite:///{tmp_path / 'read.sqlite3'}",
    }

    no_kek = ServiceProcess("command_service", common, tmp_path, "no-kek")
    no_kek.start()
    assert await exit_code(no_kek) == 1
    [line] = errors(no_kek)
    assert line["event"] == "key_store_refused" and line["code"] == "kek_missing"
    assert "KEY_ENCRYPTION_KEY" in str(line["error"])

    wrong_kek = ServiceProcess(
        "query_service", common | {"KEY_ENCRYPTION_KEY": encode_kek(wrong)}, tmp_path, "wrong"
    )
    wrong_kek.start()
    assert await exit_code(wrong_kek) == 1
    [line] = errors(wrong_kek)
    assert line["event"] == "key_store_refused" and line["code"] == "kek_unknown"
    assert KeyRing(right).current_id in str(line["error"])
    assert KeyRing(wrong).current_id in str(line["error"])

    right_kek = ServiceProcess(
        "query_service", common | {"KEY_ENCRYPTION_KEY": encode_kek(right)}, tmp_path, "right"
    )
    right_kek.start()
    try:
        await right_kek.wait_healthy()
        assert not errors(right_kek)
    finally:
        await right_kek.stop()
