"""Connector settings, read once at the edge (the CLI) from the environment and a ``.env`` file.

The seed's variable names work as documented: ``PACS_DB_HOST``, ``PACS_DB_PORT``, ``PACS_DB_NAME``,
``PACS_DB_USER``, ``PACS_DB_PASSWORD``, ``PACS_SYNC_BATCH_SIZE`` (10–1000),
``PACS_SYNC_SCHEDULE`` (a cron expression) and ``PACS_ENABLE_CDC``. The defaults point at the local
stack (``pacs-sync stack up``): the emulated PACS database as the source and the TerraFusion
database as the target, so every command works with no configuration on a developer machine.
The default passwords exist only for that loopback-only stack; set real ones for a real server.

Each process (stack, producer, processors, sink, API) has one frozen settings class, which extends
:class:`PacsSettings`; nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import annotated_types
from croniter import croniter
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pacs_sync.errors import ConfigurationError

MASK = "********"

LOCAL_POSTGRES_PORT = 55432
"""Port of the local stack's PostgreSQL; not 5432, so it never collides with a system cluster."""
LOCAL_KAFKA_PORT = 9092


_NAME = r"^[A-Za-z0-9._-]+$"
"""Allowed in topic, group and application names."""


class PacsSettings(BaseSettings):
    """Settings shared by every process: the PACS source, Kafka, the target and the state dir."""

    model_config = SettingsConfigDict(
        env_prefix="PACS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # --- the PACS source (SQL Server in production, the CDC emulator locally) ---
    db_host: str = "127.0.0.1"
    """Host of the PACS database server."""
    db_port: int = Field(default=LOCAL_POSTGRES_PORT, ge=1, le=65535)
    """TCP port of the PACS database server (SQL Server: 1433)."""
    db_name: str = Field(default="pacs", min_length=1)
    """Name of the PACS database."""
    db_user: str = Field(default="pacs_sync", min_length=1)
    """Read-only sync login (GRANT SELECT on the PACS tables and the cdc schema)."""
    db_password: SecretStr = SecretStr("pacs_sync_local")
    """Password of the sync login."""

    # --- sync behaviour (seed) ---
    sync_batch_size: int = Field(default=500, ge=10, le=1000)
    """Records per batch read from the source and written to the target."""
    sync_schedule: str = "*/15 * * * *"
    """Cron expression for scheduled syncs when continuous CDC is off."""
    enable_cdc: bool = True
    """Stream changes continuously from SQL Server CDC (false: scheduled syncs only)."""

    # --- Kafka and the target ---
    kafka_bootstrap_servers: str = Field(default=f"127.0.0.1:{LOCAL_KAFKA_PORT}", min_length=1)
    """Comma-separated Kafka bootstrap servers."""
    target_dsn: SecretStr = SecretStr(
        f"postgresql://terrafusion:terrafusion_local@127.0.0.1:{LOCAL_POSTGRES_PORT}/terrafusion"
    )
    """TerraFusion PostgreSQL DSN (postgresql://user:password@host:port/database)."""

    db_schema: str = Field(default="dbo", pattern=_NAME)
    """Schema of the PACS tables (part of the change topic names)."""

    # --- topics and consumer groups: named once, every stage derives its names from these ---
    topic_prefix: str = Field(default="pacs", pattern=_NAME)
    """The producer's change topics are <prefix>.<database>.<schema>.<table>."""
    clean_topic_prefix: str = Field(
        default="terrafusion",
        pattern=_NAME,
        validation_alias=AliasChoices("PACS_CLEAN_TOPIC_PREFIX", "PACS_OUTPUT_PREFIX", "clean_topic_prefix"),
    )
    """Clean topics are <prefix>.<entity>; rejects of the processors and the sink go to <prefix>.dlq.
    (PACS_OUTPUT_PREFIX, its earlier name, is still read.)"""
    processor_app_id: str = Field(default="pacs-sync-processors", pattern=_NAME)
    """Faust application id = the processors' consumer group; workers with the same id share partitions."""
    sink_group_id: str = Field(default="pacs-sync-sink", pattern=_NAME)
    """The sink's consumer group, and its key in pacs_sync.sync_offsets."""

    # --- local process state ---
    state_dir: Path = Path(".pacs-sync")
    """Project-local state: the local stack's data, logs, pid files and the Kafka jar cache."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of every module logger."""

    # --- topic names: the one place their form is written ---

    def change_topic(self, table: str) -> str:
        """The producer's change topic of a PACS table: ``<prefix>.<database>.<schema>.<table>``
        (Debezium's SQL Server naming)."""
        return f"{self.topic_prefix}.{self.db_name}.{self.db_schema}.{table}"

    def producer_topic(self, name: str) -> str:
        """One of the producer's own topics of this database: ``<prefix>.<database>._<name>``
        (``offsets``, ``schemas``, ``heartbeat``, ``snapshot_sweeps``, ``row_hashes``)."""
        return f"{self.topic_prefix}.{self.db_name}._{name}"

    def clean_topic(self, entity: str) -> str:
        """The processors' clean, log-compacted topic of an entity: ``<clean prefix>.<entity>``."""
        return f"{self.clean_topic_prefix}.{entity}"

    def dead_letter_topic(self) -> str:
        """Where the processors and the sink send what they reject: ``<clean prefix>.dlq``."""
        return f"{self.clean_topic_prefix}.dlq"

    @field_validator("sync_schedule")
    @classmethod
    def _is_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (five fields, e.g. '*/15 * * * *')")
        return value

    @field_validator("target_dsn")
    @classmethod
    def _is_postgres_dsn(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname or not parts.path.strip("/"):
            raise ValueError("must look like postgresql://user:password@host:port/database")
        return value

    # ---- construction with operator-facing errors ----

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the settings; invalid values raise :class:`ConfigurationError` naming the variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error(cls, exc)) from exc

    # ---- derived values ----

    @property
    def target_parts(self) -> dict[str, Any]:
        """The target DSN split into host, port, database, user and password."""
        parts = urlsplit(self.target_dsn.get_secret_value())
        return {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 5432,
            "database": parts.path.lstrip("/"),
            "user": parts.username or "",
            "password": parts.password or "",
        }

    def masked(self) -> dict[str, Any]:
        """The effective settings as environment-variable names and values, secrets masked."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "target_dsn":
                value = mask_dsn(value.get_secret_value())
            elif isinstance(value, SecretStr):
                value = MASK if value.get_secret_value() else ""
            elif isinstance(value, Path):
                value = str(value)
            shown[env_name(type(self), name)] = value
        return shown


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings_cls``."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def mask_dsn(dsn: str) -> str:
    """Replace the password in a URL-style DSN with a mask; leave the rest readable."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _allowed_range(settings_cls: type[BaseSettings], field: str) -> str | None:
    info = settings_cls.model_fields.get(field)
    if info is None:
        return None
    low = high = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Le):
            high = item.le
    if low is not None and high is not None:
        return f"allowed range {low}–{high}"
    return None


def describe_validation_error(settings_cls: type[BaseSettings], exc: ValidationError) -> str:
    """Turn a pydantic error into one line per bad setting, named as the operator sets it."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = env_name(settings_cls, field)
        given = error.get("input")
        shown = MASK if "password" in field or "dsn" in field else given
        reason = str(error["msg"]).removeprefix("Value error, ")
        allowed = _allowed_range(settings_cls, field)
        lines.append(f"{name}={shown!s}: {reason}" + (f" ({allowed})" if allowed else ""))
    return "invalid configuration: " + "; ".join(lines)
