"""Settings of the ``pacs-sync stack`` process: the connector settings plus ports and tools."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pacs_sync.settings import LOCAL_KAFKA_PORT, LOCAL_POSTGRES_PORT, PacsSettings

_REPO_ROOT = Path(__file__).resolve().parents[2]


class StackSettings(PacsSettings):
    """Where the local stack listens and what it runs. Both services bind 127.0.0.1 only."""

    stack_kafka_port: int = Field(default=LOCAL_KAFKA_PORT, ge=1024, le=65535)
    """Kafka client listener port."""
    stack_kafka_controller_port: int = Field(default=9093, ge=1024, le=65535)
    """Kafka KRaft controller listener port."""
    stack_kafka_heap: str = Field(default="512m", pattern=r"^\d+[mg]$")
    """JVM heap of the broker (-Xmx); a single-node test broker needs little."""
    stack_kafka_pom: Path = _REPO_ROOT / "deploy" / "local" / "pom.xml"
    """The pom that pins the Kafka version; Maven resolves the broker's jars from it."""
    stack_postgres_port: int = Field(default=LOCAL_POSTGRES_PORT, ge=1024, le=65535)
    """PostgreSQL TCP port."""
    stack_postgres_bin_dir: Path | None = None
    """Directory of initdb/pg_ctl; default: the newest /usr/lib/postgresql/<version>/bin."""
    stack_start_timeout_s: float = Field(default=90.0, gt=0)
    """How long ``stack up`` waits for each service to answer."""
