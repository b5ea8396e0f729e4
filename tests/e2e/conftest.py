"""The whole pipeline on the real local stack, isolated per test: its own emulated PACS database,
topics, consumer groups and target database (so a running demo on the same stack is not disturbed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
from confluent_kafka.admin import AdminClient

from pacs_sync.stack import LocalStack, StackSettings


@dataclass
class Pipeline:
    """An isolated pipeline: environment for every ``pacs-sync`` command, and names to clean up."""

    env: dict[str, str]
    db_name: str
    clean_prefix: str
    target_dsn: str

    def cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``pacs-sync <args>`` with this pipeline's environment; output captured."""
        done = subprocess.run(
            [sys.executable, "-m", "pacs_sync", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"pacs-sync {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
            )
        return done


def _unavailable(what: str) -> None:
    message = f"{what} does not answer; start the local stack with `pacs-sync stack up`"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    stack = LocalStack(StackSettings.load())
    if stack.kafka.ping(timeout_s=10) is None:
        _unavailable(f"Kafka at {stack.kafka.address}")
    if stack.postgres.ping() is None:
        _unavailable(f"PostgreSQL at {stack.postgres.address}")
    tag = uuid.uuid4().hex[:8]
    db_name, target_db, prefix = f"e2e_pacs_{tag}", f"e2e_target_{tag}", f"e2e{tag}"
    target = urlsplit(stack.settings.target_dsn.get_secret_value())
    target_dsn = urlunsplit(target._replace(path=f"/{target_db}"))
    root = stack.postgres.connect()
    root.cursor().execute(f'CREATE DATABASE "{target_db}" OWNER "{target.username}"')
    env = {
        **os.environ,
        "PACS_DB_NAME": db_name,
        "PACS_TARGET_DSN": target_dsn,
        "PACS_CLEAN_TOPIC_PREFIX": prefix,
        "PACS_PROCESSOR_APP_ID": f"{prefix}-processors",
        "PACS_SINK_GROUP_ID": f"{prefix}-sink",
        "PACS_SINK_INSTANCE_ID": f"{prefix}-sink-1",
        # A demo may hold the default metrics ports on this machine: the stages serve none here.
        "PACS_SUPERVISOR_METRICS_PORT": "0",
        "PACS_PRODUCER_METRICS_PORT": "0",
        "PACS_PROCESSOR_METRICS_PORT": "0",
        "PACS_SINK_METRICS_PORT": "0",
        "PACS_METRICS_PORT": "0",
    }
    created = Pipeline(env, db_name, prefix, target_dsn)
    try:
        yield created
    finally:
        created.cli("sim", "agent", "stop", check=False)
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{target_db}" WITH (FORCE)')
        root.cursor().execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        root.close()
        admin = AdminClient({"bootstrap.servers": stack.settings.kafka_bootstrap_servers})
        mine = [t for t in admin.list_topics(timeout=30).topics if db_name in t or t.startswith(prefix)]
        if mine:
            for future in admin.delete_topics(mine).values():
                future.result(timeout=60)
