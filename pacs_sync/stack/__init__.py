"""The local stack: a real Apache Kafka broker (KRaft) and a PostgreSQL server, no Docker."""

from __future__ import annotations

from pacs_sync.stack.manager import LocalStack, ServiceStatus
from pacs_sync.stack.settings import StackSettings

__all__ = ["LocalStack", "ServiceStatus", "StackSettings"]
