"""The asyncpg adapter's pure parts: the exact date codec."""

from __future__ import annotations

from datetime import date

import pytest

from pacs_sync.pg_async import decode_date, encode_date


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
