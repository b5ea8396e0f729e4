from __future__ import annotations

import base64
from pathlib import Path

from pacs_sync.stack.config_files import (
    new_kafka_cluster_id,
    render_log4j2,
    render_pg_hba,
    render_postgresql_conf,
    render_server_properties,
)
from pacs_sync.stack.kafka import min_heap


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_broker_allows_transactions_on_one_node_and_binds_loopback(tmp_path: Path) -> None:
    props = _props(render_server_properties(port=19092, controller_port=19093, log_dir=tmp_path))
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path)


def test_log4j_writes_to_the_given_file(tmp_path: Path) -> None:
    text = render_log4j2(tmp_path / "server.log")
    assert f"appender.file.fileName = {tmp_path / 'server.log'}" in text


def test_postgres_binds_loopback_and_hba_requires_passwords_on_tcp(tmp_path: Path) -> None:
    conf = render_postgresql_conf(port=55432, socket_dir=tmp_path)
    assert "listen_addresses = '127.0.0.1'" in conf
    assert "port = 55432" in conf
    hba = [line.split() for line in render_pg_hba().splitlines() if line and not line.startswith("#")]
    tcp = [line for line in hba if line[0] == "host"]
    assert tcp == [["host", "all", "all", "127.0.0.1/32", "scram-sha-256"]]


def test_cluster_id_is_16_bytes_urlsafe() -> None:
    cluster_id = new_kafka_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert cluster_id != new_kafka_cluster_id()


def test_min_heap_is_half_with_a_floor() -> None:
    assert min_heap("512m") == "256m"
    assert min_heap("1g") == "512m"
    assert min_heap("128m") == "128m"
