"""Translation of DB-API driver errors (pg8000, pyodbc, asyncpg) into the connector's error classes.

Adapters call :func:`translate_db_error` in their ``except`` clause and ``raise … from exc``, so the
rest of the code only sees :class:`~pacs_sync.errors.PacsSyncError` with a PACS-00x code.
"""

from __future__ import annotations

from typing import Any

from pacs_sync.errors import (
    ErrorCode,
    FatalError,
    PacsSyncError,
    RetriableError,
    classify_sqlstate,
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE a driver exception carries, whatever the driver.

    pg8000 puts the server's fields in a dict as ``args[0]`` (``C`` is the code); pyodbc puts the
    state first in ``args``; asyncpg exposes ``sqlstate``.
    """
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    if args and isinstance(args[0], dict):
        code = args[0].get("C")
        return code if isinstance(code, str) else None
    if args and isinstance(args[0], str) and len(args[0]) == 5 and args[0][:2].isalnum():
        return args[0]
    return None


# A statement cancelled by statement_timeout (PostgreSQL) or a query timeout (ODBC HYT00 after login
# is reported by pyodbc as a query timeout only with a cursor; PostgreSQL's 57014 is unambiguous).
_TIMEOUT_SQLSTATES = frozenset({"57014"})

# Serialization failure, deadlock, lock timeout, too many connections, admin shutdown: try again.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03"})


# Lost or refused connections that carry no SQLSTATE. pg8000 raises InterfaceError("network error")
# when a socket read or write fails mid-session, "communication error" for a unix socket,
# "connection is closed" on the next use of a connection it closed, and "Can't create a connection"
# when it cannot connect; a raw OSError (reset, timeout) can escape its first socket read. pyodbc
# always carries a SQLSTATE (08S01, 08001, HYT00… from FreeTDS and Microsoft's driver alike), which
# classify_sqlstate handles.
_LOST_CONNECTION_TEXTS = (
    "network error",
    "communication error",
    "connection is closed",
    "create a connection",
    "timed out",
)


def is_connection_lost(exc: BaseException) -> bool:
    """Whether a driver exception without a SQLSTATE means the server could not be reached or the
    connection dropped (rather than a statement failing on a live connection)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError | TimeoutError):
            return True
        seen = seen.__cause__
    text = str(exc).lower()
    return any(marker.lower() in text for marker in _LOST_CONNECTION_TEXTS)


def translate_db_error(exc: BaseException, *, server: str, **context: Any) -> PacsSyncError:
    """Return the connector error for a driver exception raised while talking to ``server``.

    Unreachable servers become retriable PACS-001, bad credentials fatal PACS-002; anything else is
    returned as a fatal error carrying the SQLSTATE, for the caller to refine (e.g. to PACS-003).
    """
    state = sqlstate_of(exc)
    code = classify_sqlstate(state)
    detail = _message_of(exc)
    if code is ErrorCode.AUTHENTICATION_FAILED:
        return FatalError(
            f"authentication failed for {server}: {detail} — check the user and password settings",
            code=code,
            sqlstate=state,
            server=server,
            **context,
        )
    if code is ErrorCode.CONNECTION_UNAVAILABLE or (state is None and is_connection_lost(exc)):
        return RetriableError(
            f"cannot reach {server}: {detail}",
            code=ErrorCode.CONNECTION_UNAVAILABLE,
            sqlstate=state,
            server=server,
            **context,
        )
    if state in _TIMEOUT_SQLSTATES:
        return RetriableError(
            f"a query on {server} timed out (SQLSTATE {state}): {detail}",
            code=ErrorCode.SYNC_TIMEOUT,
            sqlstate=state,
            server=server,
            **context,
        )
    if state is not None and state.startswith("42"):
        return FatalError(
            f"{server} does not have what the mapping expects (SQLSTATE {state}): {detail}",
            code=ErrorCode.SCHEMA_MISMATCH,
            sqlstate=state,
            server=server,
            **context,
        )
    if state in _TRANSIENT_SQLSTATES:
        return RetriableError(
            f"transient database error on {server} (SQLSTATE {state}): {detail}",
            code=ErrorCode.DATABASE_ERROR,
            sqlstate=state,
            server=server,
            **context,
        )
    return FatalError(
        f"database error on {server} (SQLSTATE {state}): {detail}",
        code=ErrorCode.DATABASE_ERROR,
        sqlstate=state,
        server=server,
        **context,
    )


def _message_of(exc: BaseException) -> str:
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    if args and isinstance(args[0], dict):
        return str(args[0].get("M", exc))
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return str(exc)
