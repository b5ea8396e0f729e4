from __future__ import annotations

import pg8000.exceptions
import pytest

from pacs_sync.db_errors import sqlstate_of, translate_db_error
from pacs_sync.errors import (
    ERROR_CODE_MEANINGS,
    ConfigurationError,
    ErrorCode,
    FatalError,
    LocalStackError,
    PacsSyncError,
    PoisonMessageError,
    RetriableError,
    classify_sqlstate,
)


def test_every_code_has_a_meaning_and_codes_are_unique() -> None:
    assert set(ERROR_CODE_MEANINGS) == set(ErrorCode)
    values = [code.value for code in ErrorCode]
    assert len(values) == len(set(values))
    assert all(v.startswith("PACS-") and len(v) == 8 for v in values)


def test_seed_codes_keep_their_meaning() -> None:
    assert ErrorCode("PACS-001") is ErrorCode.CONNECTION_UNAVAILABLE
    assert ErrorCode("PACS-002") is ErrorCode.AUTHENTICATION_FAILED
    assert ErrorCode("PACS-003") is ErrorCode.SCHEMA_MISMATCH
    assert ErrorCode("PACS-004") is ErrorCode.DATA_VALIDATION
    assert ErrorCode("PACS-005") is ErrorCode.SYNC_TIMEOUT


def test_hierarchy_says_what_to_do() -> None:
    assert issubclass(RetriableError, PacsSyncError)
    assert issubclass(FatalError, PacsSyncError)
    assert issubclass(PoisonMessageError, PacsSyncError)
    assert issubclass(ConfigurationError, FatalError)
    assert issubclass(LocalStackError, FatalError)
    assert RetriableError("x").retriable
    assert not FatalError("x").retriable
    assert PoisonMessageError("x").code is ErrorCode.DATA_VALIDATION
    assert ConfigurationError("x").code is ErrorCode.CONFIGURATION_INVALID


def test_error_renders_code_first_and_keeps_context() -> None:
    err = FatalError("lost changes", code=ErrorCode.CDC_RETENTION_EXCEEDED, table="dbo.Property")
    assert str(err) == "PACS-006: lost changes"
    assert err.context == {"table": "dbo.Property"}


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("08S01", ErrorCode.CONNECTION_UNAVAILABLE),  # FreeTDS refused port
        ("08001", ErrorCode.CONNECTION_UNAVAILABLE),
        ("HYT00", ErrorCode.CONNECTION_UNAVAILABLE),
        ("HYT01", ErrorCode.CONNECTION_UNAVAILABLE),
        ("28000", ErrorCode.AUTHENTICATION_FAILED),  # SQL Server login failed
        ("28P01", ErrorCode.AUTHENTICATION_FAILED),  # PostgreSQL password failed
        ("42P01", None),
        (None, None),
    ],
)
def test_classify_sqlstate(state: str | None, code: ErrorCode | None) -> None:
    assert classify_sqlstate(state) is code


class _Pg8000Like(Exception):
    pass


class _PyodbcLike(Exception):
    pass


def test_pg8000_auth_error_is_fatal_pacs_002() -> None:
    exc = _Pg8000Like({"S": "FATAL", "C": "28P01", "M": 'password authentication failed for user "x"'})
    assert sqlstate_of(exc) == "28P01"
    err = translate_db_error(exc, server="PACS db")
    assert isinstance(err, FatalError)
    assert err.code is ErrorCode.AUTHENTICATION_FAILED
    assert "password authentication failed" in str(err)


def test_pyodbc_login_failure_is_pacs_002_whatever_the_class() -> None:
    exc = _PyodbcLike("28000", "[28000] [FreeTDS][SQL Server]Login failed for user 'tf' (18456)")
    err = translate_db_error(exc, server="sql1")
    assert err.code is ErrorCode.AUTHENTICATION_FAILED


def test_freetds_refused_port_is_retriable_pacs_001() -> None:
    exc = _PyodbcLike(
        "08S01", "[08S01] [FreeTDS][SQL Server]Unable to connect: Adaptive Server is unavailable"
    )
    err = translate_db_error(exc, server="sql1")
    assert isinstance(err, RetriableError)
    assert err.code is ErrorCode.CONNECTION_UNAVAILABLE


def test_pg8000_connect_failure_without_sqlstate_is_pacs_001() -> None:
    exc = _Pg8000Like("Can't create a connection to host 127.0.0.1 and port 1 (timeout is 2)")
    err = translate_db_error(exc, server="PACS db")
    assert isinstance(err, RetriableError)
    assert err.code is ErrorCode.CONNECTION_UNAVAILABLE


def test_missing_table_is_schema_mismatch_and_deadlock_is_retriable() -> None:
    missing = translate_db_error(_Pg8000Like({"C": "42P01", "M": "relation does not exist"}), server="s")
    assert missing.code is ErrorCode.SCHEMA_MISMATCH
    deadlock = translate_db_error(_Pg8000Like({"C": "40P01", "M": "deadlock detected"}), server="s")
    assert isinstance(deadlock, RetriableError)


def _raised_from(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause  # as ``raise exc from cause`` leaves it
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        # pg8000 1.31, a socket cut mid-session: read/write/flush wrap the OSError
        _raised_from(pg8000.exceptions.InterfaceError("network error"), ConnectionResetError(104, "reset")),
        # pg8000 reading EOF (the peer closed): no cause at all
        pg8000.exceptions.InterfaceError("network error"),
        pg8000.exceptions.InterfaceError("communication error"),
        # the next use of a connection pg8000 closed after the error
        pg8000.exceptions.InterfaceError("connection is closed"),
        # pg8000's first socket read is outside its try: the OSError itself escapes
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        # pyodbc, FreeTDS and Microsoft's driver: classified by SQLSTATE
        _PyodbcLike(
            "08S01", "[08S01] [FreeTDS][SQL Server]Write to the server failed (20006) (SQLExecDirectW)"
        ),
        _PyodbcLike("08S01", "[08S01] [Microsoft][ODBC Driver 18 for SQL Server]Communication link failure"),
        _PyodbcLike("08001", "[08001] [Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: timed out"),
        _PyodbcLike("HYT00", "[HYT00] [FreeTDS][SQL Server]Timeout expired (0) (SQLDriverConnect)"),
    ],
    ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}",
)
def test_a_lost_connection_is_retriable_pacs_001(exc: Exception) -> None:
    err = translate_db_error(exc, server="PACS db")
    assert isinstance(err, RetriableError)
    assert err.code is ErrorCode.CONNECTION_UNAVAILABLE
    assert str(err).startswith("PACS-001: cannot reach PACS db")


@pytest.mark.parametrize(
    "exc",
    [
        pg8000.exceptions.InterfaceError("The parameter x can't be of type <class 'object'>."),
        pg8000.exceptions.InterfaceError("in failed transaction block"),
        _raised_from(pg8000.exceptions.DatabaseError("bad"), ValueError("not a socket problem")),
    ],
)
def test_a_driver_error_on_a_live_connection_stays_fatal(exc: Exception) -> None:
    err = translate_db_error(exc, server="PACS db")
    assert isinstance(err, FatalError)
    assert err.code is ErrorCode.DATABASE_ERROR
