"""The local broker's proxied listener (tests/faults: a Toxiproxy in front of one listener)."""

from __future__ import annotations

from pathlib import Path

import pytest

from esctl.localstack.kafka import LocalKafkaCluster
from shared.errors import ConfigurationError


def test_a_proxied_listener_is_advertised_as_the_proxy_beside_the_direct_one(
    tmp_path: Path,
) -> None:
    cluster = LocalKafkaCluster.create(tmp_path, nodes=1, port=19092)
    port = cluster.add_proxied_listener(1, advertised="127.0.0.1:29092")
    props = cluster.server_properties(cluster.node(1))
    controller = cluster.node(1).controller_port
    assert props["listeners"] == (
        f"PLAINTEXT://127.0.0.1:19092,PROXIED://127.0.0.1:{port},"
        f"CONTROLLER://127.0.0.1:{controller}"
    )
    assert props["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,PROXIED://127.0.0.1:29092"
    )
    assert props["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT"
    )
    # brokers talk to each other directly, and clients bootstrap on the direct listener
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert cluster.bootstrap_servers == "127.0.0.1:19092"
    # kept in cluster.json: `restart` and another process's `load` see the same listener
    loaded = LocalKafkaCluster.load(tmp_path)
    assert loaded is not None
    assert loaded.server_properties(loaded.node(1))["advertised.listeners"].endswith(
        "PROXIED://127.0.0.1:29092"
    )


def test_without_a_proxied_listener_nothing_changes(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster.create(tmp_path, nodes=1, port=19092)
    props = cluster.server_properties(cluster.node(1))
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert "PROXIED" not in props["listener.security.protocol.map"]


def test_a_secure_cluster_has_no_proxied_listener(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster.create(tmp_path, nodes=1, secure=True)
    with pytest.raises(ConfigurationError, match="PLAINTEXT clusters only"):
        cluster.add_proxied_listener(1, advertised="127.0.0.1:29092")
