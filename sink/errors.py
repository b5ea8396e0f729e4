"""The sink's errors: subclasses of the shared hierarchy, each with its PACS code."""

from __future__ import annotations

from pacs_sync.errors import ErrorCode, PoisonMessageError, RetriableError


class RowRejectedError(PoisonMessageError):
    """PostgreSQL refused one row (constraint, value out of range): it is dead-lettered (PACS-011)."""

    code = ErrorCode.TARGET_WRITE_REJECTED


class TargetUnavailableError(RetriableError):
    """The target database cannot be reached or dropped the connection (PACS-001); retried."""

    code = ErrorCode.CONNECTION_UNAVAILABLE


class ConsumerStalledError(RetriableError):
    """The clean-topic consumer receives nothing although the broker holds records past its position
    (seen after a broker restart); the consumer is rebuilt (PACS-010)."""

    code = ErrorCode.KAFKA_DELIVERY_FAILED


class DeadLetterDeliveryError(RetriableError):
    """Rejected rows could not be written to the dead-letter topic; the batch is not committed (PACS-010)."""

    code = ErrorCode.KAFKA_DELIVERY_FAILED
