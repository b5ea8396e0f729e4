"""asyncpg on the target PostgreSQL, shared by the sink and the management API: opening a pool,
translating driver errors, and applying versioned SQL migrations.

Each package ships its migrations as ``<package>/migrations/NNNN_name.sql``; they are applied in
version order, serialised across processes by an advisory lock, and recorded with the digest of
their text, so a shipped migration that changed is refused instead of silently diverging.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import date
from importlib import resources
from typing import Any

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from pacs_sync.db_errors import translate_db_error
from pacs_sync.errors import ErrorCode, FatalError, PacsSyncError, RetriableError

logger = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.InterfaceError,  # "connection is closed", released or aborted connections
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionError,  # ConnectionResetError, BrokenPipeError, ...
    OSError,
    TimeoutError,
)
"""A server that cannot be reached, went away or is shutting down: retriable (PACS-001)."""

_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    ClientDataError,
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)
"""InterfaceErrors that are the caller's mistake, not a lost connection: retrying cannot help."""


# PostgreSQL's binary date is a signed count of days since 2000-01-01, with the int32 extremes as the
# infinities. asyncpg's built-in codec maps date.max/date.min to those infinities, so SQL Server's
# usual open end 9999-12-31 (and 0001-01-01) would be stored as 'infinity'/'-infinity'.
_PG_EPOCH_ORDINAL = date(2000, 1, 1).toordinal()
_PG_DATE_INFINITY = 0x7FFFFFFF
_PG_DATE_NEGATIVE_INFINITY = -0x80000000


def encode_date(value: date) -> tuple[int]:
    """A date as PostgreSQL's binary day count, every date as itself (9999-12-31 is not infinity)."""
    return (value.toordinal() - _PG_EPOCH_ORDINAL,)


def decode_date(value: tuple[int]) -> date:
    """PostgreSQL's binary day count as a date; the infinities (never written by us) as date.max/min."""
    days = value[0]
    if days == _PG_DATE_INFINITY:
        return date.max
    if days == _PG_DATE_NEGATIVE_INFINITY:
        return date.min
    return date.fromordinal(days + _PG_EPOCH_ORDINAL)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Prepare a new pooled connection: the exact date codec (binary, so COPY still works).

    Costs ~0.1 µs per date in Python (the owner rows' two dates), against ~20 µs per row written.
    """
    await conn.set_type_codec(
        "date", schema="pg_catalog", encoder=encode_date, decoder=decode_date, format="tuple"
    )


def server_name(parts: Mapping[str, Any]) -> str:
    """How errors and logs name the server: ``PostgreSQL host:port/database``."""
    return f"PostgreSQL {parts['host']}:{parts['port']}/{parts['database']}"


async def open_pool(
    parts: Mapping[str, Any],
    *,
    application_name: str,
    pool_size: int,
    timeout: float = 10.0,
    command_timeout: float = 60.0,
) -> asyncpg.Pool:
    """A pool to the target (``PacsSettings.target_parts``); PACS-001/002 when it cannot be opened."""
    try:
        return await asyncpg.create_pool(
            host=parts["host"],
            port=parts["port"],
            user=parts["user"],
            password=parts["password"],
            database=parts["database"],
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            command_timeout=command_timeout,
            server_settings={"application_name": application_name},
            init=init_connection,
        )
    except Exception as exc:
        raise translate_async_error(exc, server_name(parts)) from exc


@asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; one that failed with a lost connection is terminated, never pooled again.

    asyncpg's pool can hand out again a connection cut inside a COPY whose protocol is still waiting
    for the server's end of the error (every later statement: "cannot switch to state …"), so the
    retry would fail the same way; terminating it makes the next acquire open a new one.
    """
    async with pool.acquire() as conn:
        try:
            yield conn
        except BaseException as exc:
            if is_connection_lost(exc):
                with suppress(asyncpg.InterfaceError):  # already closed and released by asyncpg
                    conn.terminate()
            raise


def server_message(exc: BaseException) -> str:
    """The server's message with its DETAIL line, if any."""
    detail = getattr(exc, "detail", None)
    message = str(exc)
    return f"{message} ({detail})" if detail else message


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone or unusable (the remedy is a new connection).

    Besides the socket and connection errors, asyncpg reports a connection cut mid-statement (a
    PostgreSQL restart) as an ``InternalClientError`` "cannot switch to state N; another operation
    (2) is in progress": its protocol was still consuming the server's error when the transaction's
    ROLLBACK was sent. A protocol out of step is as unusable as a closed one; the original error is
    its ``__context__``.
    """
    if isinstance(exc, _CLIENT_ERRORS):
        return False
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.exceptions.ProtocolError):
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        if str(exc).startswith("cannot switch to state"):
            return True
        cause = exc.__cause__ or exc.__context__
        return cause is not None and cause is not exc and is_connection_lost(cause)
    return False


def translate_async_error(exc: BaseException, server: str) -> PacsSyncError:
    """An asyncpg (or socket) exception as the connector's error: PACS-001 retriable for a lost or
    unreachable server, PACS-002 for credentials, the driver translation's retriable codes, and
    PACS-013 fatal for anything else (with the SQLSTATE)."""
    if isinstance(exc, PacsSyncError):
        return exc
    if is_connection_lost(exc):
        return RetriableError(
            f"lost or cannot open a connection to {server}: {exc}",
            code=ErrorCode.CONNECTION_UNAVAILABLE,
            server=server,
        )
    translated = translate_db_error(exc, server=server)
    if translated.retriable or translated.code is ErrorCode.AUTHENTICATION_FAILED:
        return translated
    return FatalError(
        f"{server} failed: {server_message(exc)}",
        code=ErrorCode.DATABASE_ERROR,
        sqlstate=getattr(exc, "sqlstate", None),
        server=server,
    )


def migration_files(package: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped in ``<package>/migrations``, in order."""
    found = []
    for entry in (resources.files(package) / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def apply_migrations(
    pool: asyncpg.Pool, package: str, *, schema: str, lock_id: int, server: str
) -> list[str]:
    """Apply ``package``'s migrations not yet recorded in ``<schema>.schema_migrations``.

    Returns the names applied now. Raises a fatal PACS-003 when an applied migration's text changed.
    """
    table = f"{schema}.schema_migrations"
    applied: list[str] = []
    try:
        async with acquire(pool) as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({int(lock_id)})")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY, name text NOT NULL, "
                "sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]: r["sha256"] for r in await conn.fetch(f"SELECT version, sha256 FROM {table}")
            }
            for version, name, text in migration_files(package):
                digest = hashlib.sha256(text.encode()).hexdigest()
                if version in done:
                    if done[version] != digest:
                        raise FatalError(
                            f"migration {package}/{name} was applied with different text; a shipped "
                            "migration must never change (add a new one instead)",
                            code=ErrorCode.SCHEMA_MISMATCH,
                            migration=name,
                        )
                    continue
                await conn.execute(text)
                await conn.execute(
                    f"INSERT INTO {table} (version, name, sha256) VALUES ($1, $2, $3)", version, name, digest
                )
                applied.append(name)
    except Exception as exc:
        raise translate_async_error(exc, server) from exc
    if applied:
        logger.info("%s schema: applied %s", package, ", ".join(applied))
    return applied
