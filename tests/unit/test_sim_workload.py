"""The change workload planner: valid keys on replay, every kind, clean values, plain qmark SQL.

Replays use a tiny in-memory model of the four tables that applies each statement from its structured
metadata (table, verb, key, columns) and enforces the primary keys, foreign keys and NOT NULL
columns of ``sql/pacs_schema.sql`` statement by statement, as PostgreSQL does.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest

from pacs_sync.sim.generator import (
    OWNER_TABLE,
    PARCEL_NUMBER_PATTERN,
    PRIMARY_KEYS,
    PROPERTY_TABLE,
    STRUCTURE_TABLE,
    TABLE_COLUMNS,
    VALUATION_TABLE,
    OwnerRow,
    PacsDataset,
    PropertyRow,
    StructureRow,
    ValuationRow,
    generate,
    scale_for,
)
from pacs_sync.sim.workload import TRANSACTION_KINDS, PlannedTransaction, Statement, WorkloadPlanner
from tests.unit.test_sim_generator import (
    all_row_issues,
    owner_issues,
    property_issues,
    structure_issues,
    valuation_issues,
)

_SCHEMA_SQL = Path(__file__).resolve().parents[2] / "pacs_sync" / "sim" / "sql" / "pacs_schema.sql"
_CHILD_TABLES = (OWNER_TABLE, VALUATION_TABLE, STRUCTURE_TABLE)
_NOT_NULL = {
    PROPERTY_TABLE: ("propertyid", "parcelnumber"),
    OWNER_TABLE: ("propertyownerid", "propertyid", "ownername"),
    VALUATION_TABLE: ("propertyvalueid", "propertyid", "taxyear"),
    STRUCTURE_TABLE: ("structureid", "propertyid"),
}
_PARAM_TYPES = (int, str, Decimal, date, type(None))
_MAX_YEAR = 2026  # the planner's clock stays in 2025 for a few thousand transactions; rolls reach 2026
_LATEST_DATE = date(2026, 12, 31)


class KeyViolation(AssertionError):
    """A statement the database would reject."""


class InMemoryPacs:
    """The four tables as dicts of rows by key, enforcing keys and NOT NULL per statement."""

    def __init__(self, dataset: PacsDataset) -> None:
        self.rows: dict[str, dict[int, dict[str, object]]] = {}
        for table, rows in dataset.tables().items():
            columns = TABLE_COLUMNS[table]
            self.rows[table] = {int(str(row[0])): dict(zip(columns, row, strict=True)) for row in rows}
        self.child_counts: Counter[object] = Counter(
            row["propertyid"] for table in _CHILD_TABLES for row in self.rows[table].values()
        )
        self.primary_key_updates = 0
        self.inserted: dict[str, set[int]] = {table: set() for table in TABLE_COLUMNS}

    def apply(self, statement: Statement) -> None:
        table, key = statement.table, statement.key
        if table not in self.rows or key is None:
            raise KeyViolation(f"statement without table/key metadata: {statement}")
        rows = self.rows[table]
        primary_key = PRIMARY_KEYS[table]
        if statement.verb == "INSERT":
            row = statement.assignments
            if set(row) != set(TABLE_COLUMNS[table]) or row[primary_key] != key:
                raise KeyViolation(f"INSERT must list every column: {statement}")
            if key in rows:
                raise KeyViolation(f"duplicate key {key} in {table}")
            self._check_row(table, row)
            rows[key] = row
            self.inserted[table].add(key)
            if table != PROPERTY_TABLE:
                self.child_counts[row["propertyid"]] += 1
        elif statement.verb == "UPDATE":
            if key not in rows:
                raise KeyViolation(f"UPDATE of missing {table} row {key}")
            if statement.params[-1] != key:
                raise KeyViolation(f"UPDATE key must be the last parameter: {statement}")
            old = rows[key]
            new = {**old, **statement.assignments}
            new_key = new[primary_key]
            assert isinstance(new_key, int)
            if new_key != key:
                if new_key in rows:
                    raise KeyViolation(f"PK update onto existing key {new_key} in {table}")
                if table == PROPERTY_TABLE and self.child_counts[key]:
                    raise KeyViolation(f"PK update of property {key}, which has children")
                self.primary_key_updates += 1
                if key in self.inserted[table]:
                    self.inserted[table].discard(key)
                    self.inserted[table].add(new_key)
            self._check_row(table, new)
            if table != PROPERTY_TABLE and new["propertyid"] != old["propertyid"]:
                self.child_counts[old["propertyid"]] -= 1
                self.child_counts[new["propertyid"]] += 1
            del rows[key]
            rows[new_key] = new
        elif statement.verb == "DELETE":
            if key not in rows:
                raise KeyViolation(f"DELETE of missing {table} row {key}")
            if table == PROPERTY_TABLE and self.child_counts[key]:
                raise KeyViolation(f"DELETE of property {key} before its {self.child_counts[key]} children")
            removed = rows.pop(key)
            self.inserted[table].discard(key)
            if table != PROPERTY_TABLE:
                self.child_counts[removed["propertyid"]] -= 1
        else:
            raise KeyViolation(f"unexpected verb {statement.verb!r}")

    def _check_row(self, table: str, row: dict[str, object]) -> None:
        for column in _NOT_NULL[table]:
            if row[column] is None:
                raise KeyViolation(f"NULL in NOT NULL column {table}.{column}")
        if table != PROPERTY_TABLE and row["propertyid"] not in self.rows[PROPERTY_TABLE]:
            raise KeyViolation(f"{table} row references missing property {row['propertyid']}")

    def dataset(self) -> PacsDataset:
        """The model's rows as a data set, sorted by key (for comparison with the planner's snapshot)."""

        def ordered(table: str) -> list[tuple[object, ...]]:
            columns = TABLE_COLUMNS[table]
            return [tuple(row[c] for c in columns) for _, row in sorted(self.rows[table].items())]

        # Rows rebuilt from dicts have the tables' shapes; the casts only restore the static types.
        return PacsDataset(
            cast("list[PropertyRow]", ordered(PROPERTY_TABLE)),
            cast("list[OwnerRow]", ordered(OWNER_TABLE)),
            cast("list[ValuationRow]", ordered(VALUATION_TABLE)),
            cast("list[StructureRow]", ordered(STRUCTURE_TABLE)),
        )


def replay(dataset: PacsDataset, transactions: list[PlannedTransaction]) -> InMemoryPacs:
    model = InMemoryPacs(dataset)
    for number, transaction in enumerate(transactions):
        for statement in transaction.statements:
            try:
                model.apply(statement)
            except KeyViolation as exc:
                raise AssertionError(f"transaction {number} ({transaction.kind}): {exc}") from exc
    return model


# -- Fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset() -> PacsDataset:
    return generate(scale_for("2000"), seed=11)


@pytest.fixture(scope="module")
def planned(dataset: PacsDataset) -> tuple[WorkloadPlanner, list[PlannedTransaction]]:
    planner = WorkloadPlanner(dataset, seed=4)
    return planner, planner.plan(2000)


@pytest.fixture(scope="module")
def replayed(dataset: PacsDataset, planned: tuple[WorkloadPlanner, list[PlannedTransaction]]) -> InMemoryPacs:
    return replay(dataset, planned[1])


# -- Keys and kinds --------------------------------------------------------------------------------


def test_2000_transactions_replay_without_key_violations(replayed: InMemoryPacs) -> None:
    assert replayed.rows[PROPERTY_TABLE], "the replay ran (key checks are inside apply)"


def test_the_workload_includes_primary_key_updates(
    replayed: InMemoryPacs, planned: tuple[WorkloadPlanner, list[PlannedTransaction]]
) -> None:
    assert replayed.primary_key_updates >= 1
    pk_updated_tables = {
        statement.table
        for transaction in planned[1]
        for statement in transaction.statements
        if statement.verb == "UPDATE" and PRIMARY_KEYS[str(statement.table)] in statement.columns
    }
    assert {PROPERTY_TABLE, STRUCTURE_TABLE} <= pk_updated_tables


def test_every_kind_appears_in_2000_transactions(
    planned: tuple[WorkloadPlanner, list[PlannedTransaction]],
) -> None:
    kinds = Counter(transaction.kind for transaction in planned[1])
    assert set(kinds) == set(TRANSACTION_KINDS)
    assert kinds.most_common(2)[0][0] in {"correction", "revaluation"}
    assert kinds["correction"] + kinds["revaluation"] > 0.4 * 2000


def test_planner_snapshot_matches_the_replayed_tables(
    replayed: InMemoryPacs, planned: tuple[WorkloadPlanner, list[PlannedTransaction]]
) -> None:
    planner = planned[0]
    snapshot = planner.snapshot()
    model = replayed.dataset()
    assert snapshot.properties == model.properties
    assert snapshot.owners == model.owners
    assert snapshot.valuations == model.valuations
    assert snapshot.structures == model.structures
    assert planner.row_counts() == {table: len(rows) for table, rows in replayed.rows.items()}


# -- Clean values ----------------------------------------------------------------------------------


def test_the_state_after_the_workload_is_still_clean(replayed: InMemoryPacs) -> None:
    assert all_row_issues(replayed.dataset(), max_year=_MAX_YEAR, latest_date=_LATEST_DATE) == Counter()


def test_new_parcels_use_the_parcel_format_and_stay_unique(replayed: InMemoryPacs) -> None:
    parcels = [str(row["parcelnumber"]) for row in replayed.rows[PROPERTY_TABLE].values()]
    assert len(parcels) == len(set(parcels))
    new_parcels = [
        str(replayed.rows[PROPERTY_TABLE][key]["parcelnumber"]) for key in replayed.inserted[PROPERTY_TABLE]
    ]
    assert new_parcels
    assert all(PARCEL_NUMBER_PATTERN.fullmatch(parcel) for parcel in new_parcels)
    assert any(not parcel.endswith("-000") for parcel in new_parcels), "splits take the next split suffix"


def test_rows_written_on_dirty_data_are_clean() -> None:
    dirty = generate(scale_for("small"), seed=6, dirty_rate=0.3)
    planner = WorkloadPlanner(dirty, seed=2)
    model = replay(dirty, planner.plan(600))
    checks = {
        PROPERTY_TABLE: property_issues,
        VALUATION_TABLE: valuation_issues,
        STRUCTURE_TABLE: structure_issues,
    }
    for table, check in checks.items():
        columns = TABLE_COLUMNS[table]
        for key in model.inserted[table]:
            row = tuple(model.rows[table][key][c] for c in columns)
            assert check(row, max_year=_MAX_YEAR) == set(), (table, row)
    for key in model.inserted[OWNER_TABLE]:
        row = tuple(model.rows[OWNER_TABLE][key][c] for c in TABLE_COLUMNS[OWNER_TABLE])
        assert owner_issues(row, latest_date=_LATEST_DATE) == set(), row


# -- Statement shapes ------------------------------------------------------------------------------


def _schema_columns() -> dict[str, set[str]]:
    columns: dict[str, set[str]] = {}
    for match in re.finditer(r"CREATE TABLE (dbo\.\w+) \((.*?)\n\);", _SCHEMA_SQL.read_text(), re.S):
        columns[match.group(1)] = set(re.findall(r"^\s+(\w+)\s+\w", match.group(2), re.M))
    return columns


def test_statements_are_plain_qmark_sql_on_the_schema_names(
    planned: tuple[WorkloadPlanner, list[PlannedTransaction]],
) -> None:
    schema = _schema_columns()
    assert set(schema) == set(TABLE_COLUMNS)
    shapes = {
        "INSERT": re.compile(r"INSERT INTO (dbo\.[a-z]+) \(([a-z, ]+)\) VALUES \(([?, ]+)\)"),
        "UPDATE": re.compile(r"UPDATE (dbo\.[a-z]+) SET ([a-z]+ = \?(?:, [a-z]+ = \?)*) WHERE ([a-z]+) = \?"),
        "DELETE": re.compile(r"DELETE FROM (dbo\.[a-z]+) WHERE ([a-z]+) = \?"),
    }
    for transaction in planned[1]:
        for statement in transaction.statements:
            match = shapes[str(statement.verb)].fullmatch(statement.sql)
            assert match, statement.sql
            assert match.group(1) == statement.table
            assert statement.sql.count("?") == len(statement.params)
            assert set(statement.columns) <= schema[match.group(1)]
            assert all(isinstance(value, _PARAM_TYPES) for value in statement.params)
            assert not any(isinstance(value, bool | float) for value in statement.params)
            if statement.verb == "INSERT":
                assert tuple(match.group(2).split(", ")) == statement.columns == TABLE_COLUMNS[match.group(1)]


def _tables(transaction: PlannedTransaction) -> set[str]:
    return {str(statement.table) for statement in transaction.statements}


def test_each_kind_has_its_shape(planned: tuple[WorkloadPlanner, list[PlannedTransaction]]) -> None:
    for transaction in planned[1]:
        statements = transaction.statements
        verbs = [(statement.table, statement.verb) for statement in statements]
        if transaction.kind == "revaluation":
            assert 1 <= len(statements) <= 50
            assert _tables(transaction) == {VALUATION_TABLE}
            assert len({statement.verb for statement in statements}) == 1, "a batch inserts or updates"
        elif transaction.kind == "ownership_transfer":
            inserts = [s for s in statements if s.verb == "INSERT"]
            ends = [s for s in statements if s.verb == "UPDATE"]
            assert _tables(transaction) == {OWNER_TABLE}
            assert 1 <= len(inserts) <= 3
            assert all(s.columns == ("enddate",) for s in ends)
            assert sum(Decimal(str(s.assignments["ownershippercentage"])) for s in inserts) == 100
            assert statements[: len(ends)] == tuple(ends), "old owners end before the buyers arrive"
        elif transaction.kind == "new_construction":
            assert verbs.count((STRUCTURE_TABLE, "INSERT")) == 1
        elif transaction.kind == "parcel_split":
            assert verbs.count((PROPERTY_TABLE, "INSERT")) in (1, 2)
            assert _tables(transaction) == {PROPERTY_TABLE, OWNER_TABLE, VALUATION_TABLE}
        elif transaction.kind == "parcel_merge":
            assert verbs.count((PROPERTY_TABLE, "DELETE")) == 1
            property_delete = verbs.index((PROPERTY_TABLE, "DELETE"))
            assert all(verb == "DELETE" for _, verb in verbs[:property_delete]), "children go first"
            assert verbs[property_delete + 1] == (PROPERTY_TABLE, "UPDATE"), "the survivor grows"
        elif transaction.kind == "correction":
            assert len(statements) == 1
            assert statements[0].verb == "UPDATE"
        else:
            assert transaction.kind == "multi_table"
            assert _tables(transaction) == {PROPERTY_TABLE, OWNER_TABLE, VALUATION_TABLE}


def test_summary_counts_what_was_planned(planned: tuple[WorkloadPlanner, list[PlannedTransaction]]) -> None:
    planner, transactions = planned
    summary = planner.summary()
    assert summary["transactions"] == 2000
    for kind, count in Counter(t.kind for t in transactions).items():
        assert summary[f"transactions.{kind}"] == count
    statements = [s for t in transactions for s in t.statements]
    assert summary["statements"] == len(statements)
    by_table_verb = Counter(f"statements.{s.table}.{str(s.verb).lower()}" for s in statements)
    assert {key: value for key, value in summary.items() if key.count(".") == 3} == dict(by_table_verb)


# -- Determinism and construction ------------------------------------------------------------------


def test_same_seed_same_plan_different_seed_different_plan(dataset: PacsDataset) -> None:
    first = WorkloadPlanner(dataset, seed=1).plan(200)
    assert first == WorkloadPlanner(dataset, seed=1).plan(200)
    assert first != WorkloadPlanner(dataset, seed=2).plan(200)


def test_from_state_plans_like_the_data_set_it_was_read_from(dataset: PacsDataset) -> None:
    # Rows as a driver returns them: lists, dates as ISO text, numbers as text.
    def as_driver_rows(rows: Sequence[Sequence[object]]) -> list[list[object]]:
        return [[value.isoformat() if isinstance(value, date) else value for value in row] for row in rows]

    from_state = WorkloadPlanner.from_state(
        as_driver_rows(dataset.properties),
        as_driver_rows(dataset.owners),
        as_driver_rows(dataset.valuations),
        as_driver_rows(dataset.structures),
        seed=9,
    )
    assert from_state.plan(300) == WorkloadPlanner(dataset, seed=9).plan(300)


def test_a_planner_rebuilt_from_replayed_state_continues_validly(
    dataset: PacsDataset, replayed: InMemoryPacs
) -> None:
    state = replayed.dataset()
    planner = WorkloadPlanner.from_state(
        state.properties, state.owners, state.valuations, state.structures, seed=3
    )
    continued = replay(state, planner.plan(300))
    assert continued.rows[PROPERTY_TABLE]


def test_from_state_rejects_rows_the_database_could_not_hold(dataset: PacsDataset) -> None:
    properties, owners = dataset.properties[:3], dataset.owners[:3]
    orphan = (9_999_999, 1, "SMITH JOHN", "Individual", Decimal("100.00"), date(2020, 1, 1), None)
    with pytest.raises(ValueError, match="missing property"):
        WorkloadPlanner.from_state(properties, [*owners, orphan], [], [], seed=1)
    with pytest.raises(ValueError, match="columns"):
        WorkloadPlanner.from_state([row[:5] for row in properties], [], [], [], seed=1)
    with pytest.raises(ValueError, match="duplicate propertyid"):
        WorkloadPlanner.from_state([*properties, properties[0]], [], [], [], seed=1)
    with pytest.raises(ValueError, match="at least 2 properties"):
        WorkloadPlanner.from_state(properties[:1], [], [], [], seed=1)


def test_a_small_data_set_survives_a_long_workload() -> None:
    small = generate(scale_for("small"), seed=5)
    planner = WorkloadPlanner(small, seed=5)
    model = replay(small, planner.plan(2000))
    assert all_row_issues(model.dataset(), max_year=_MAX_YEAR, latest_date=_LATEST_DATE) == Counter()
    tax_years = {row["taxyear"] for row in model.rows[VALUATION_TABLE].values()}
    assert max(int(str(year)) for year in tax_years) <= _MAX_YEAR, "the roll does not run decades ahead"


def _planned_dates(transactions: Sequence[PlannedTransaction]) -> tuple[date, int]:
    """The latest date and tax year the transactions write."""
    days = [p for t in transactions for s in t.statements for p in s.params if isinstance(p, date)]
    years = [
        int(cast(int, p))
        for t in transactions
        for s in t.statements
        for column, p in zip(s.columns, s.params, strict=False)
        if column == "taxyear"
    ]
    return max(days), max(years)


def test_the_clock_stops_at_the_latest_day_without_changing_the_draws(dataset: PacsDataset) -> None:
    latest = date(2025, 7, 20)
    capped = WorkloadPlanner(dataset, seed=4, latest_day=latest).plan(3000)
    free = WorkloadPlanner(dataset, seed=4).plan(3000)
    last_day, last_year = _planned_dates(capped)
    assert last_day <= latest
    assert last_year <= latest.year + 1
    assert _planned_dates(free)[0] > latest  # uncapped, 3000 transactions run months past it
    assert [t.kind for t in capped[:50]] == [t.kind for t in free[:50]]  # same draws before the cap
