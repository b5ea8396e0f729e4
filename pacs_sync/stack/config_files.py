"""Pure renderers of the local stack's configuration files (unit-tested without services)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path


def new_kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as kafka-storage makes)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")


def render_server_properties(*, port: int, controller_port: int, log_dir: Path) -> str:
    """A single-node KRaft broker+controller bound to 127.0.0.1 that allows transactions."""
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        # One node: every internal topic has one replica, or init_transactions() hangs.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",  # one node: 50 partitions only slow the first group down
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Consumer groups in tests and the demo join at once instead of after 3 s.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "log.cleaner.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def render_log4j2(log_file: Path) -> str:
    """log4j2 configuration (properties format) that writes the broker's log to one rolling file."""
    return "\n".join(
        [
            "status = warn",
            "appender.file.type = RollingFile",
            "appender.file.name = FILE",
            f"appender.file.fileName = {log_file}",
            f"appender.file.filePattern = {log_file}.%i",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 50MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 3",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = FILE",
            "logger.kafka.name = kafka",
            "logger.kafka.level = INFO",
            "logger.state.name = state.change.logger",
            "logger.state.level = WARN",
            "",
        ]
    )


def render_postgresql_conf(*, port: int, socket_dir: Path) -> str:
    """Settings included from postgresql.conf: loopback TCP only, a private socket, sane sizes."""
    return "\n".join(
        [
            "# Written by `pacs-sync stack up`; edits are overwritten at the next start.",
            "listen_addresses = '127.0.0.1'",
            f"port = {port}",
            f"unix_socket_directories = '{socket_dir}'",
            "unix_socket_permissions = 0700",
            "max_connections = 200",
            "shared_buffers = 256MB",
            "password_encryption = 'scram-sha-256'",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] %u@%d '",
            "",
        ]
    )


def render_pg_hba() -> str:
    """Passwords on TCP, so wrong credentials fail as on SQL Server; the private socket trusts its owner."""
    return "\n".join(
        [
            "# TYPE  DATABASE  USER  ADDRESS        METHOD",
            "local   all       all                  trust",
            "host    all       all   127.0.0.1/32   scram-sha-256",
            "",
        ]
    )
