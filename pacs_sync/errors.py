"""The one error hierarchy and the PACS-00x error-code table.

Every error the connector raises on purpose is a :class:`PacsSyncError` carrying an
:class:`ErrorCode`. The class says what the caller should do (retry, stop, dead-letter, fix the
configuration); the code says what happened, in the words an operator searches for. Driver
exceptions are translated into these classes at the adapter that talks to the driver, keeping the
original as ``__cause__``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Error codes shown to operators. The seed's PACS-001…005 keep their meaning."""

    CONNECTION_UNAVAILABLE = "PACS-001"
    AUTHENTICATION_FAILED = "PACS-002"
    SCHEMA_MISMATCH = "PACS-003"
    DATA_VALIDATION = "PACS-004"
    SYNC_TIMEOUT = "PACS-005"
    CDC_RETENTION_EXCEEDED = "PACS-006"
    CDC_NOT_ENABLED = "PACS-007"
    CONFIGURATION_INVALID = "PACS-008"
    LOCAL_STACK_FAILED = "PACS-009"
    KAFKA_DELIVERY_FAILED = "PACS-010"
    TARGET_WRITE_REJECTED = "PACS-011"
    UNDECODABLE_EVENT = "PACS-012"
    DATABASE_ERROR = "PACS-013"

    @property
    def meaning(self) -> str:
        """The one-line meaning from the error-code table."""
        return ERROR_CODE_MEANINGS[self]


ERROR_CODE_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.CONNECTION_UNAVAILABLE: (
        "connection timeout / unreachable (SQLSTATE 08S01, 08001, HYT00, HYT01)"
    ),
    ErrorCode.AUTHENTICATION_FAILED: "authentication failed (SQLSTATE 28000)",
    ErrorCode.SCHEMA_MISMATCH: "schema mismatch: missing table/column/capture instance vs. the mapping",
    ErrorCode.DATA_VALIDATION: "data validation error (event sent to the dead-letter topic)",
    ErrorCode.SYNC_TIMEOUT: "sync job timeout",
    ErrorCode.CDC_RETENTION_EXCEEDED: (
        "CDC retention exceeded: the saved position is older than the capture instance's min LSN "
        "(changes were lost)"
    ),
    ErrorCode.CDC_NOT_ENABLED: "CDC is not enabled on the database or table",
    ErrorCode.CONFIGURATION_INVALID: "invalid configuration: a setting is missing or out of range",
    ErrorCode.LOCAL_STACK_FAILED: "the local Kafka/PostgreSQL stack could not be started or reached",
    ErrorCode.KAFKA_DELIVERY_FAILED: "Kafka produce, transaction or consume failure",
    ErrorCode.TARGET_WRITE_REJECTED: "the target PostgreSQL rejected a row (sent to the dead-letter topic)",
    ErrorCode.UNDECODABLE_EVENT: "an event's bytes could not be decoded (sent to the dead-letter topic)",
    ErrorCode.DATABASE_ERROR: "any other database error (the SQLSTATE and server message say which)",
}


class PacsSyncError(Exception):
    """Root of every error the connector raises on purpose.

    Attributes:
        code: the operator-facing error code.
        context: structured details (table, lsn, topic, partition, offset, setting…), also logged.
    """

    code: ErrorCode = ErrorCode.CONNECTION_UNAVAILABLE
    retriable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None, **context: Any) -> None:
        """Build an error with a message that says what to do next, and its code."""
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        """Render as ``PACS-00x: message``, the form operators search for."""
        return f"{self.code}: {self.message}"


class RetriableError(PacsSyncError):
    """A transient condition (dropped connection, broker unavailable): retry with backoff."""

    retriable = True


class FatalError(PacsSyncError):
    """A condition that retrying cannot fix (lost CDC data, schema mismatch): stop and report."""


class PoisonMessageError(PacsSyncError):
    """One record cannot be processed: send it to the dead-letter topic and carry on."""

    code = ErrorCode.DATA_VALIDATION


class ConfigurationError(FatalError):
    """Bad or missing configuration: stop start-up with a message naming the setting."""

    code = ErrorCode.CONFIGURATION_INVALID


class LocalStackError(FatalError):
    """The local Kafka/PostgreSQL stack failed to start, stop or answer."""

    code = ErrorCode.LOCAL_STACK_FAILED


# SQLSTATE classes and codes from ODBC (SQL Server through pyodbc) and PostgreSQL (the emulator and
# the target) that mean "cannot reach the server" or "wrong credentials". FreeTDS reports a refused
# port as 08S01, not 08001; pyodbc raises InterfaceError for 28000, so classify by state, not class.
_UNREACHABLE_SQLSTATES = frozenset({"08S01", "08001", "08004", "08006", "HYT00", "HYT01"})
_AUTH_SQLSTATES = frozenset({"28000", "28P01"})


def classify_sqlstate(sqlstate: str | None) -> ErrorCode | None:
    """Map a SQLSTATE to the connection error code it implies, or None if it is not one."""
    if not sqlstate:
        return None
    state = sqlstate.upper()
    if state in _AUTH_SQLSTATES:
        return ErrorCode.AUTHENTICATION_FAILED
    if state in _UNREACHABLE_SQLSTATES or state.startswith("08"):
        return ErrorCode.CONNECTION_UNAVAILABLE
    return None
