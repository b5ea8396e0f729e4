"""The CDC source: the only module that talks to the PACS database (SQL Server or the emulator).

pyodbc for SQL Server (FreeTDS or Microsoft's driver, TLS on by default), pg8000 for the CDC
emulator; both in qmark paramstyle, running the statements of :mod:`producer.statements`. Driver
errors are translated here: unreachable or a lost connection →
:class:`~producer.errors.SourceUnavailableError` (PACS-001, retriable), credentials → PACS-002, a
missing object → PACS-003, error 313 → :class:`~producer.errors.LsnOutOfRangeError`. After every error the
transaction is rolled back (PostgreSQL aborts it; on SQL Server it is harmless).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pacs_sync import dbapi
from pacs_sync.db_errors import sqlstate_of, translate_db_error
from pacs_sync.errors import ErrorCode, FatalError, PacsSyncError, RetriableError
from pacs_sync.lsn import Lsn
from producer import statements as sql
from producer.errors import LsnOutOfRangeError, SchemaMismatchError, SourceUnavailableError
from producer.settings import ProducerSettings

logger = logging.getLogger(__name__)

_OUT_OF_RANGE = "An insufficient number of arguments were supplied"
_PERMISSION_DENIED = "permission was denied"
_MISSING_OBJECT = ("Invalid object name", "does not exist")


def _odbc_braced(value: str) -> str:
    return "{" + value.replace("}", "}}") + "}"


def _odbc_value(value: str) -> str:
    """Brace-quote an attribute value that contains ODBC syntax characters, so it stays one value."""
    return _odbc_braced(value) if any(ch in value for ch in ";{}=") or value != value.strip() else value


def odbc_connection_string(settings: ProducerSettings) -> str:
    """The ODBC connection string for SQL Server (pure; the password is included, never logged)."""
    driver = settings.db_odbc_driver
    parts = {
        "DRIVER": f"{{{driver}}}",
        "SERVER": _odbc_value(settings.db_host),
        "PORT": str(settings.db_port),
        "DATABASE": _odbc_value(settings.db_name),
        "UID": _odbc_value(settings.db_user),
        "PWD": _odbc_braced(settings.db_password.get_secret_value()),
        "APP": "pacs-sync",
    }
    if "freetds" in driver.lower():
        # TDS 7.4 = SQL Server 2012+ (date types come back as dates); FreeTDS has no TDS 8 strict mode.
        parts["TDS_Version"] = "7.4"
        parts["Encryption"] = "require" if settings.db_encrypt else "off"
    else:
        # Microsoft's driver takes "host,port" and validates the certificate unless told not to.
        parts["SERVER"] = _odbc_value(f"{settings.db_host},{settings.db_port}")
        del parts["PORT"]
        parts["Encrypt"] = "yes" if settings.db_encrypt else "no"
        parts["TrustServerCertificate"] = "yes" if settings.db_trust_server_certificate else "no"
    return ";".join(f"{k}={v}" for k, v in parts.items())


def source_error(error: PacsSyncError) -> PacsSyncError:
    """A translated driver error, with "cannot reach the source" as :class:`SourceUnavailableError`."""
    if isinstance(error, RetriableError) and error.code is ErrorCode.CONNECTION_UNAVAILABLE:
        return SourceUnavailableError(error.message, **error.context)
    return error


def open_connection(settings: ProducerSettings) -> Any:
    """A DB-API connection to the PACS source, autocommit off.

    Raises:
        SourceUnavailableError: the server does not answer (PACS-001).
    """
    server = f"PACS {settings.db_host}:{settings.db_port}/{settings.db_name}"
    if settings.db_driver == "pg8000":
        try:
            return dbapi.connect(
                host=settings.db_host,
                port=settings.db_port,
                user=settings.db_user,
                password=settings.db_password.get_secret_value(),
                database=settings.db_name,
                timeout=settings.db_login_timeout_s,
                application_name="pacs-sync producer",
            )
        except PacsSyncError as exc:
            raise source_error(exc) from exc.__cause__
    import pyodbc

    try:
        return pyodbc.connect(
            odbc_connection_string(settings), autocommit=False, timeout=settings.db_login_timeout_s
        )
    except pyodbc.Error as exc:
        raise source_error(translate_db_error(exc, server=server)) from exc


@dataclass(frozen=True)
class CaptureInstance:
    """A row of cdc.change_tables with its source table and captured columns."""

    name: str
    object_id: int
    start_lsn: Lsn | None
    schema: str
    table: str
    columns: tuple[str, ...]
    column_types: tuple[str, ...] = ()

    def type_of(self, column: str) -> str:
        """The captured SQL type of a column ('' if unknown)."""
        lowered = [c.lower() for c in self.columns]
        index = lowered.index(column.lower())
        return self.column_types[index] if index < len(self.column_types) else ""


@dataclass(frozen=True)
class ChangeRow:
    """One row of a change table, as read."""

    commit_lsn: Lsn
    seqval: Lsn
    operation: int
    update_mask: bytes | None
    values: tuple[Any, ...]
    commit_time: datetime | None

    @property
    def position(self) -> tuple[bytes, bytes, int]:
        """(commit LSN, seqval, operation): the log order key."""
        return (self.commit_lsn.value, self.seqval.value, self.operation)


class CdcSource:
    """Reads CDC metadata, change rows and snapshot chunks over one DB-API connection."""

    def __init__(self, settings: ProducerSettings, connection: Any | None = None) -> None:
        """Connect now (or adopt ``connection``)."""
        self.settings = settings
        self.server = f"PACS {settings.db_host}:{settings.db_port}/{settings.db_name}"
        self.conn = connection if connection is not None else open_connection(settings)
        self._tz = ZoneInfo(settings.db_server_timezone)

    def close(self) -> None:
        """Close the connection (errors on close are ignored: the connection may be gone)."""
        try:
            self.conn.close()
        except Exception:  # closing a broken connection must not mask the real error
            logger.debug("closing the source connection failed", exc_info=True)

    # ---- plumbing ----

    def _rows(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cursor = self.conn.cursor()
            cursor.execute(statement, tuple(params))
            return [tuple(r) for r in cursor.fetchall()]
        except Exception as exc:
            if isinstance(exc, PacsSyncError):
                raise
            self._rollback_quietly()
            raise self._translate(exc) from exc

    def _scalar(self, statement: str, params: Sequence[Any] = ()) -> Any:
        rows = self._rows(statement, params)
        return rows[0][0] if rows else None

    def _translate(self, exc: BaseException) -> PacsSyncError:
        translated = source_error(translate_db_error(exc, server=self.server))
        if isinstance(translated, SourceUnavailableError):
            # Before the message checks: FreeTDS's "Adaptive Server is unavailable or does not
            # exist" is not a missing object.
            return translated
        message = str(exc.args[0].get("M", exc)) if exc.args and isinstance(exc.args[0], dict) else str(exc)
        if _OUT_OF_RANGE in message:
            return LsnOutOfRangeError(
                f"{self.server}: a CDC query bound is outside the validity interval (313)"
            )
        if _PERMISSION_DENIED in message or sqlstate_of(exc) == "42501":
            return FatalError(
                f"{self.server}: {message} — grant the sync login SELECT on the captured columns "
                "and the CDC objects",
                code=ErrorCode.AUTHENTICATION_FAILED,
            )
        if any(text in message for text in _MISSING_OBJECT):
            return SchemaMismatchError(f"{self.server}: {message}")
        return translated

    def _rollback_quietly(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # the connection may be broken; the original error is what matters
            logger.debug("rollback after an error failed", exc_info=True)

    def end_read(self) -> None:
        """End the read transaction (no snapshot or locks held between polls)."""
        try:
            self.conn.rollback()
        except Exception as exc:
            raise self._translate(exc) from exc

    def local_time(self, value: datetime | None) -> datetime | None:
        """A server-local naive datetime as an aware UTC one."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=self._tz)
        return value.astimezone(UTC)

    # ---- metadata ----

    def cdc_enabled(self) -> bool:
        """Whether CDC is enabled on the database."""
        return bool(self._scalar(sql.GET_DATABASE_CDC_ENABLED, (self.settings.db_name,)))

    def capture_instances(self) -> list[CaptureInstance]:
        """Every capture instance with its captured columns, oldest first per table."""
        columns: dict[int, list[str]] = {}
        types: dict[int, list[str]] = {}
        for object_id, column, _ordinal, column_type in self._rows(sql.GET_CAPTURED_COLUMNS):
            columns.setdefault(int(object_id), []).append(str(column))
            types.setdefault(int(object_id), []).append(str(column_type or ""))
        result = []
        for name, object_id, start_lsn, schema, table in self._rows(sql.GET_CHANGE_TABLES):
            result.append(
                CaptureInstance(
                    name=str(name),
                    object_id=int(object_id),
                    start_lsn=None if start_lsn is None else Lsn(bytes(start_lsn)),
                    schema=str(schema),
                    table=str(table),
                    columns=tuple(columns.get(int(object_id), ())),
                    column_types=tuple(types.get(int(object_id), ())),
                )
            )
        return result

    def max_lsn(self) -> Lsn | None:
        """``sys.fn_cdc_get_max_lsn()``: the high-water mark (None before the first capture)."""
        value = self._scalar(sql.GET_MAX_LSN)
        return None if value is None else Lsn(bytes(value))

    def min_lsn(self, capture_instance: str) -> Lsn | None:
        """``sys.fn_cdc_get_min_lsn``; None while unrecognised, zeros if missing or not readable."""
        value = self._scalar(sql.GET_MIN_LSN, (capture_instance,))
        return None if value is None else Lsn(bytes(value))

    def max_transaction_lsn(self) -> Lsn | None:
        """The newest real transaction's commit LSN (idle dummy rows excluded)."""
        value = self._scalar(sql.GET_MAX_TRANSACTION_LSN, (sql.IDLE_TRAN_ID,))
        return None if value is None else Lsn(bytes(value))

    def nth_transaction_lsn_after(self, after: Lsn, n: int) -> Lsn | None:
        """The commit LSN of the n-th real transaction after ``after`` (or the last one, if fewer)."""
        value = self._scalar(sql.GET_NTH_TRANSACTION_LSN_AFTER, (after.value, sql.IDLE_TRAN_ID, n))
        return None if value is None else Lsn(bytes(value))

    def lsn_time(self, lsn: Lsn) -> datetime | None:
        """Commit time of a transaction LSN (UTC)."""
        return self.local_time(self._scalar(sql.MAP_LSN_TO_TIME, (lsn.value,)))

    # ---- data ----

    def changes(
        self,
        capture_instance: str,
        columns: Sequence[str],
        *,
        from_lsn: Lsn,
        to_lsn: Lsn,
        after: tuple[bytes, bytes, int],
        limit: int,
    ) -> list[ChangeRow]:
        """One page of changes in ``[from_lsn, to_lsn]`` strictly after ``after``, in log order."""
        lsn, seq, op = after
        params = (from_lsn.value, to_lsn.value, lsn, seq, op, lsn, seq, lsn, to_lsn.value, limit)
        rows = self._rows(sql.build_changes_query(capture_instance, columns), params)
        width = len(columns)
        return [
            ChangeRow(
                commit_lsn=Lsn(bytes(r[0])),
                seqval=Lsn(bytes(r[1])),
                operation=int(r[2]),
                update_mask=None if r[3] is None else bytes(r[3]),
                values=tuple(r[4 : 4 + width]),
                commit_time=self.local_time(r[4 + width]),
            )
            for r in rows
        ]

    def snapshot_chunk(
        self, table: str, columns: Sequence[str], key: str, after_key: Any | None, limit: int
    ) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows of a table with key greater than ``after_key``, ordered by key."""
        first = after_key is None
        statement = sql.build_snapshot_query(self.settings.db_schema, table, columns, key, first=first)
        return self._rows(statement, (limit,) if first else (after_key, limit))

    def count(self, table: str) -> int:
        """Rows in a table."""
        return int(self._scalar(sql.build_count_query(self.settings.db_schema, table)) or 0)
