"""``pacs-sync stack up | down | status``: the local Kafka + PostgreSQL stack as one unit."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from pacs_sync.stack.kafka import KafkaServer
from pacs_sync.stack.postgres import PostgresServer
from pacs_sync.stack.settings import StackSettings

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` reports for one service."""

    name: str
    address: str
    answers: bool
    detail: str


class LocalStack:
    """The two local services and the databases and logins the default settings expect."""

    def __init__(self, settings: StackSettings) -> None:
        """Bind the stack to its settings; nothing is started."""
        self.settings = settings
        self.kafka = KafkaServer(settings)
        self.postgres = PostgresServer(settings)

    def up(self) -> dict[str, bool]:
        """Start whatever is not running and wait until both answer. Idempotent.

        Returns:
            For each service, whether it was started by this call (False: it was already up).
        """
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        started = {"postgresql": self.postgres.start(), "kafka": self.kafka.start()}
        self._provision()
        return started

    def _provision(self) -> None:
        """Create the logins and databases the default settings point at, when they point here."""
        port = self.settings.stack_postgres_port
        target = self.settings.target_parts
        if target["host"] in _LOOPBACK and target["port"] == port:
            self.postgres.ensure_login(target["user"], target["password"], database=target["database"])
        if self.settings.db_host in _LOOPBACK and self.settings.db_port == port:
            # The emulated PACS database; `pacs-sync sim init` fills it and grants the sync login.
            self.postgres.ensure_login(self.settings.db_user, self.settings.db_password.get_secret_value())
            self.postgres.ensure_database(self.settings.db_name)

    def down(self, *, purge: bool = False) -> dict[str, bool]:
        """Stop what ``up`` started; with ``purge`` also delete the data (not the Kafka jar cache).

        Returns:
            For each service, whether it was running and was stopped.
        """
        stopped = {"kafka": self.kafka.stop(), "postgresql": self.postgres.stop()}
        if purge:
            self.kafka.purge()
            self.postgres.purge()
            shutil.rmtree(self.settings.state_dir.resolve() / "secrets", ignore_errors=True)
            logger.info("purged the stack's data under %s (the jar cache is kept)", self.settings.state_dir)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Ask each service to answer (Kafka: a metadata request; PostgreSQL: a query)."""
        kafka = self.kafka.ping()
        postgres = self.postgres.ping()
        return [
            ServiceStatus("kafka", self.kafka.address, kafka is not None, kafka or "does not answer"),
            ServiceStatus(
                "postgresql", self.postgres.address, postgres is not None, postgres or "does not answer"
            ),
        ]
