"""The producer's errors: subclasses of the shared hierarchy, each with its PACS code."""

from __future__ import annotations

from pacs_sync.errors import ConfigurationError, ErrorCode, FatalError, RetriableError


class SourceUnavailableError(RetriableError):
    """The PACS source cannot be reached, or its connection was lost (PACS-001): reconnect and retry."""

    code = ErrorCode.CONNECTION_UNAVAILABLE


class MappingError(ConfigurationError):
    """The column-mapping file is unreadable or names unknown tables or fields."""


class SchemaMismatchError(FatalError):
    """The source lacks a table, column or capture instance the mapping needs (PACS-003)."""

    code = ErrorCode.SCHEMA_MISMATCH


class CdcNotEnabledError(FatalError):
    """CDC is not enabled on the PACS database (PACS-007)."""

    code = ErrorCode.CDC_NOT_ENABLED


class RetentionExceededError(FatalError):
    """The saved position is older than a capture instance's min LSN: changes were lost (PACS-006)."""

    code = ErrorCode.CDC_RETENTION_EXCEEDED


class LsnOutOfRangeError(RetriableError):
    """SQL Server error 313: a query bound fell outside the validity interval (re-checked next poll)."""

    code = ErrorCode.CDC_RETENTION_EXCEEDED


class KafkaPublishError(RetriableError):
    """A Kafka transaction could not be committed; it was aborted and the window is retried (PACS-010)."""

    code = ErrorCode.KAFKA_DELIVERY_FAILED


class FencedProducerError(FatalError):
    """Another producer with the same transactional id took over (PACS-010): this one must stop."""

    code = ErrorCode.KAFKA_DELIVERY_FAILED
