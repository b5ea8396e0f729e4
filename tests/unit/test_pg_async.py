"""The asyncpg adapter's pure parts: the exact date codec, the translation of driver errors."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as ClientDataError

from pacs_sync.errors import ErrorCode
from pacs_sync.pg_async import decode_date, encode_date, is_connection_lost, translate_async_error


@pytest.mark.parametrize(
    ("value", "days"),
    [
        (date(2000, 1, 1), 0),
        (date(1999, 12, 31), -1),
        (date(2026, 11, 30), 9830),
        (date(9999, 12, 31), 2_921_939),  # SQL Server's open end: a real date, not 'infinity'
        (date(1, 1, 1), -730_119),  # not '-infinity'
    ],
)
def test_dates_are_encoded_as_postgresql_day_counts(value: date, days: int) -> None:
    assert encode_date(value) == (days,)
    assert decode_date((days,)) == value


def test_the_extreme_dates_do_not_collide_with_the_infinities() -> None:
    assert encode_date(date.max)[0] < 0x7FFFFFFF
    assert encode_date(date.min)[0] > -0x80000000


def test_stored_infinities_read_as_the_python_extremes() -> None:
    assert decode_date((0x7FFFFFFF,)) == date.max
    assert decode_date((-0x80000000,)) == date.min


def _chained(exc: BaseException, context: BaseException) -> BaseException:
    exc.__context__ = context
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        # A PostgreSQL restart cutting a COPY: the ROLLBACK finds the protocol still in ERROR_CONSUME.
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.exceptions.InternalClientError(
            'cannot switch to state 15; protocol is in the "failed" state'
        ),
        _chained(
            asyncpg.exceptions.InternalClientError("unexpected"),
            asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            ),
        ),
        asyncpg.exceptions.ProtocolError("unexpected message type"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError(113, "No route to host"),
        TimeoutError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_lost_connection_is_retriable_pacs_001(exc: BaseException) -> None:
    assert is_connection_lost(exc)
    translated = translate_async_error(exc, "PostgreSQL h:5432/db")
    assert translated.code is ErrorCode.CONNECTION_UNAVAILABLE
    assert translated.retriable
    assert "PostgreSQL h:5432/db" in str(translated)


@pytest.mark.parametrize(
    "exc",
    [
        ClientDataError("invalid input for query argument $1: 'x' (an integer is required)"),
        asyncpg.exceptions.ClientConfigurationError("invalid connection option"),
        asyncpg.exceptions.InternalClientError("no binary format encoder for type foo"),
        asyncpg.exceptions.OutdatedSchemaCacheError("cached statement plan is invalid"),
        asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'),
        ValueError("not a connection problem"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_other_errors_are_not_a_lost_connection(exc: BaseException) -> None:
    assert not is_connection_lost(exc)
    translated = translate_async_error(exc, "PostgreSQL h:5432/db")
    assert translated.code is not ErrorCode.CONNECTION_UNAVAILABLE
    assert not translated.retriable
