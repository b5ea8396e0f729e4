"""A realistic assessment change workload for the emulated PACS database, planned as transactions.

Pure: :class:`WorkloadPlanner` keeps an in-memory view of the four PACS tables (keys, current owner
sets, tax years, acreage, parcel numbers) and plans every transaction against the state the earlier
ones produce, so replaying the plan in order never violates a primary or foreign key. It writes no
SQL itself to any database; the caller executes the statements, one transaction per
:class:`PlannedTransaction`.

Statements are plain parameterised INSERT, UPDATE and DELETE with qmark (``?``) placeholders and the
lower-case, unquoted names of ``sql/pacs_schema.sql``. Each statement also carries its table, verb,
the key of the row it touches and the columns it assigns, so a caller or a test can follow its effect
without parsing SQL. All values the planner makes are clean by the generator's rules
(:mod:`pacs_sync.sim.generator`); a transaction touching a dirty row fixes the columns it writes.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Final

from pacs_sync.sim.generator import (
    ACREAGE_PLACES,
    AS_OF_DATE,
    CITY_ZIP_CODES,
    CONDITIONS,
    DWELLING_TYPES,
    FULL_OWNERSHIP,
    MAX_ACREAGE,
    MAX_STRUCTURES_PER_PROPERTY,
    MIN_ACREAGE,
    OWNER_COLUMNS,
    OWNER_TABLE,
    OWNER_TYPES,
    PARCEL_NUMBER_PATTERN,
    PRIMARY_KEYS,
    PROPERTY_COLUMNS,
    PROPERTY_TABLE,
    SQUARE_FOOTAGE_RANGES,
    STATE_CODE,
    STRUCTURE_COLUMNS,
    STRUCTURE_TABLE,
    TABLE_COLUMNS,
    VALUATION_COLUMNS,
    VALUATION_TABLE,
    OwnerRow,
    PacsDataset,
    PropertyRow,
    StructureRow,
    ValuationRow,
    improvement_value,
    make_address,
    make_legal_description,
    make_owner_name,
    make_owner_set,
    make_parcel_number,
    make_structure_details,
    market_trend,
    market_value_near,
    pick_city,
    pick_zip_code,
    round_dollars,
    to_money,
)

logger = logging.getLogger(__name__)

TRANSACTION_KINDS: Final = (
    "revaluation",
    "ownership_transfer",
    "new_construction",
    "parcel_split",
    "parcel_merge",
    "correction",
    "multi_table",
)
# Corrections and revaluations dominate an assessor's day; splits and merges are rare and balance out.
_KIND_WEIGHTS: Final = {
    "correction": 28,
    "revaluation": 24,
    "ownership_transfer": 16,
    "new_construction": 10,
    "multi_table": 8,
    "parcel_split": 7,
    "parcel_merge": 7,
}
INSERT: Final = "INSERT"
UPDATE: Final = "UPDATE"
DELETE: Final = "DELETE"

WORKLOAD_START_DATE: Final = AS_OF_DATE + timedelta(days=1)
"""The planner's clock starts the day after the generated roll (or after the latest date in the state)."""
_DAY_ADVANCE_CHANCE = 0.05  # about 20 transactions per simulated day
_MIN_PROPERTIES = 2
_BATCH_SIZES = (5, 50)
_SPLIT_MIN_ACREAGE = Decimal("0.3000")
_MIN_SUBPARCEL_LAND = 5_000
_FIRST_SHORT_PLAT = 5_000  # the generator's short plats are numbered below this
_NEW_DWELLINGS = {"Single Family Residence": 75, "Manufactured Home": 20, "Duplex": 5}
_NEW_OUTBUILDINGS = {"Garage": 45, "Shop": 30, "Pole Building": 25}
_NEW_COMMERCIAL = {"Commercial": 50, "Shop": 25, "Pole Building": 25}
_BUYER_COUNTS = {1: 60, 2: 37, 3: 3}


# -- Statements ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One parameterised SQL statement and what it touches.

    Attributes:
        sql: the statement, with ``?`` placeholders.
        params: the values for the placeholders, in order.
        table: the qualified table it writes (``dbo.property``…).
        verb: ``INSERT``, ``UPDATE`` or ``DELETE``.
        key: the primary key of the row it touches; for an UPDATE that changes the primary key, the
            old key (the new one is among the assigned values).
        columns: for an INSERT, every inserted column (params in the same order); for an UPDATE, the
            assigned columns (params in the same order, then the key); empty for a DELETE.
    """

    sql: str
    params: tuple[object, ...]
    table: str | None = None
    verb: str | None = None
    key: int | None = None
    columns: tuple[str, ...] = ()

    @property
    def assignments(self) -> dict[str, object]:
        """The values the statement writes, by column (the whole row for an INSERT)."""
        return dict(zip(self.columns, self.params, strict=False))


def _insert(table: str, row: Sequence[object]) -> Statement:
    columns = TABLE_COLUMNS[table]
    placeholders = ", ".join("?" * len(columns))
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608  # fixed schema names; values are bound
    key = row[0]
    if not isinstance(key, int):
        raise TypeError(f"{table} key must be an int, got {key!r}")
    return Statement(sql, tuple(row), table, INSERT, key, columns)


def _update(table: str, key: int, assignments: dict[str, object]) -> Statement:
    setters = ", ".join(f"{column} = ?" for column in assignments)
    sql = f"UPDATE {table} SET {setters} WHERE {PRIMARY_KEYS[table]} = ?"  # noqa: S608  # fixed schema names; values are bound
    return Statement(sql, (*assignments.values(), key), table, UPDATE, key, tuple(assignments))


def _delete(table: str, key: int) -> Statement:
    sql = f"DELETE FROM {table} WHERE {PRIMARY_KEYS[table]} = ?"  # noqa: S608  # fixed schema names; values are bound
    return Statement(sql, (key,), table, DELETE, key, ())


@dataclass(frozen=True)
class PlannedTransaction:
    """Statements to run, in order, in one database transaction.

    Attributes:
        kind: one of TRANSACTION_KINDS.
        statements: the statements, each valid against the state the previous ones leave.
    """

    kind: str
    statements: tuple[Statement, ...]


# -- In-memory state -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Property:
    parcel_number: str
    address: str | None
    city: str | None
    state: str | None
    zip_code: str | None
    legal_description: str | None
    acreage: Decimal | None
    year_built: int | None
    # Ordered sets (dict keys) of the children's ids: deterministic iteration, O(1) removal.
    owner_ids: dict[int, None] = field(default_factory=dict)
    valuation_ids: dict[int, None] = field(default_factory=dict)
    structure_ids: dict[int, None] = field(default_factory=dict)

    def has_clean_acreage(self) -> bool:
        return self.acreage is not None and MIN_ACREAGE <= self.acreage <= MAX_ACREAGE

    def has_clean_location(self) -> bool:
        return (
            self.state == STATE_CODE
            and self.city in CITY_ZIP_CODES
            and self.zip_code in CITY_ZIP_CODES[self.city]
            and bool(self.address)
        )


@dataclass(slots=True)
class _Owner:
    property_id: int
    name: str
    owner_type: str | None
    percentage: Decimal | None
    start_date: date | None
    end_date: date | None


@dataclass(slots=True)
class _Valuation:
    property_id: int
    tax_year: int
    assessed: Decimal | None
    market: Decimal | None
    land: Decimal | None
    improvement: Decimal | None


@dataclass(slots=True)
class _Structure:
    property_id: int
    structure_type: str | None
    square_footage: int | None
    condition: str | None
    bedrooms: int | None
    bathrooms: Decimal | None
    year_built: int | None


class _KeyPool:
    """Keys with O(1) add and remove and a seeded random pick (list order is deterministic)."""

    def __init__(self, keys: Iterable[int] = ()) -> None:
        self._keys: list[int] = []
        self._positions: dict[int, int] = {}
        for key in keys:
            self.add(key)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._positions

    def add(self, key: int) -> None:
        if key not in self._positions:
            self._positions[key] = len(self._keys)
            self._keys.append(key)

    def discard(self, key: int) -> None:
        position = self._positions.pop(key, None)
        if position is None:
            return
        last = self._keys.pop()
        if position < len(self._keys):
            self._keys[position] = last
            self._positions[last] = position

    def choice(self, rng: random.Random) -> int:
        return self._keys[rng.randrange(len(self._keys))]

    def sample(self, rng: random.Random, count: int) -> list[int]:
        return rng.sample(self._keys, min(count, len(self._keys)))


# -- Coercion of rows read back from a database -----------------------------------------------------


def _required_int(value: object, column: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{column} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str | Decimal | float):
        return int(value)
    raise ValueError(f"{column} must be a whole number, got {value!r}")


def _optional_int(value: object, column: str) -> int | None:
    return None if value is None else _required_int(value, column)


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_decimal(value: object) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def _optional_date(value: object, column: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value)
    raise ValueError(f"{column} must be a date, got {value!r}")


def _checked_width(row: Sequence[object], columns: tuple[str, ...], table: str) -> Sequence[object]:
    if len(row) != len(columns):
        raise ValueError(f"{table} rows have {len(columns)} columns ({', '.join(columns)}), got {row!r}")
    return row


def _property_row(row: Sequence[object]) -> PropertyRow:
    v = _checked_width(row, PROPERTY_COLUMNS, PROPERTY_TABLE)
    parcel_number = _optional_str(v[1])
    if parcel_number is None:
        raise ValueError(f"parcelnumber is NOT NULL, got a NULL in {row!r}")
    return (
        _required_int(v[0], "propertyid"),
        parcel_number,
        _optional_str(v[2]),
        _optional_str(v[3]),
        _optional_str(v[4]),
        _optional_str(v[5]),
        _optional_str(v[6]),
        _optional_decimal(v[7]),
        _optional_int(v[8], "yearbuilt"),
    )


def _owner_row(row: Sequence[object]) -> OwnerRow:
    v = _checked_width(row, OWNER_COLUMNS, OWNER_TABLE)
    name = _optional_str(v[2])
    if name is None:
        raise ValueError(f"ownername is NOT NULL, got a NULL in {row!r}")
    return (
        _required_int(v[0], "propertyownerid"),
        _required_int(v[1], "propertyid"),
        name,
        _optional_str(v[3]),
        _optional_decimal(v[4]),
        _optional_date(v[5], "startdate"),
        _optional_date(v[6], "enddate"),
    )


def _valuation_row(row: Sequence[object]) -> ValuationRow:
    v = _checked_width(row, VALUATION_COLUMNS, VALUATION_TABLE)
    return (
        _required_int(v[0], "propertyvalueid"),
        _required_int(v[1], "propertyid"),
        _required_int(v[2], "taxyear"),
        _optional_decimal(v[3]),
        _optional_decimal(v[4]),
        _optional_decimal(v[5]),
        _optional_decimal(v[6]),
    )


def _structure_row(row: Sequence[object]) -> StructureRow:
    v = _checked_width(row, STRUCTURE_COLUMNS, STRUCTURE_TABLE)
    return (
        _required_int(v[0], "structureid"),
        _required_int(v[1], "propertyid"),
        _optional_str(v[2]),
        _optional_int(v[3], "squarefootage"),
        _optional_str(v[4]),
        _optional_int(v[5], "bedrooms"),
        _optional_decimal(v[6]),
        _optional_int(v[7], "yearbuilt"),
    )


# -- The planner -----------------------------------------------------------------------------------


class WorkloadPlanner:
    """Plans realistic PACS change transactions against an in-memory view of the tables.

    Build it from a generated data set (``WorkloadPlanner(dataset, seed)``) or from rows read back
    from the database (``WorkloadPlanner.from_state(...)``). Each ``next_transaction`` call updates
    the view as if the transaction had committed, so the plan must be applied in order and in full;
    a rolled-back transaction leaves the planner ahead of the database (rebuild it with from_state).

    Args:
        dataset: the tables' current rows; ``dataset.dirty`` is not used.
        seed: seeds the planner's only random source; the same state and seed give the same plan.
        latest_day: the planner's clock never passes this day (a live run passes today's date: its
            sale dates and tax years must stay valid for a pipeline that checks them against the
            real calendar, even after hundreds of thousands of transactions); None: no limit.

    Raises:
        ValueError: fewer than two properties, a duplicate primary key, or a child row whose
            property does not exist.
    """

    def __init__(self, dataset: PacsDataset, seed: int, *, latest_day: date | None = None) -> None:
        self._rng = random.Random(seed)  # noqa: S311  # simulation workload, not security: reproducible by design
        self._properties: dict[int, _Property] = {}
        self._owners: dict[int, _Owner] = {}
        self._valuations: dict[int, _Valuation] = {}
        self._structures: dict[int, _Structure] = {}
        self._parcel_numbers: set[str] = set()
        self._load(dataset)
        if len(self._properties) < _MIN_PROPERTIES:
            raise ValueError(
                f"the workload needs at least {_MIN_PROPERTIES} properties, got {len(self._properties)}"
            )

        self._next_ids = {
            PROPERTY_TABLE: max(self._properties) + 1,
            OWNER_TABLE: max(self._owners, default=0) + 1,
            VALUATION_TABLE: max(self._valuations, default=0) + 1,
            STRUCTURE_TABLE: max(self._structures, default=0) + 1,
        }
        self._property_pool = _KeyPool(self._properties)
        self._structure_pool = _KeyPool(self._structures)
        self._unclean_location_pool = _KeyPool(
            pid for pid, prop in self._properties.items() if not prop.has_clean_location()
        )
        latest_years = {pid: self._latest_tax_year(pid) for pid in self._properties}
        self._roll_year = max(
            (year for year in latest_years.values() if year is not None), default=AS_OF_DATE.year
        )
        # Properties still without a valuation for the roll year: the next-tax-year batches take these.
        self._behind_pool = _KeyPool(
            pid for pid, year in latest_years.items() if year is None or year < self._roll_year
        )
        known_dates = [
            day
            for owner in self._owners.values()
            for day in (owner.start_date, owner.end_date)
            if day is not None
            and day.year <= AS_OF_DATE.year + 50  # a typo'd far-future date must not stop the clock
        ]
        self._today = max([WORKLOAD_START_DATE, *(day + timedelta(days=1) for day in known_dates)])
        self._latest_day = latest_day
        self._next_short_plat = _FIRST_SHORT_PLAT
        self._summary: Counter[str] = Counter()
        self._kind_planners: dict[str, Callable[[], list[Statement]]] = {
            "revaluation": self._plan_revaluation,
            "ownership_transfer": self._plan_ownership_transfer,
            "new_construction": self._plan_new_construction,
            "parcel_split": self._plan_parcel_split,
            "parcel_merge": self._plan_parcel_merge,
            "correction": self._plan_correction,
            "multi_table": self._plan_multi_table,
        }

    @classmethod
    def from_state(
        cls,
        properties: Iterable[Sequence[object]],
        owners: Iterable[Sequence[object]],
        valuations: Iterable[Sequence[object]],
        structures: Iterable[Sequence[object]],
        *,
        seed: int,
        latest_day: date | None = None,
    ) -> WorkloadPlanner:
        """A planner for the state a caller read back from the database.

        Args:
            properties: ``dbo.property`` rows in table column order (tuples, lists or driver rows).
            owners: ``dbo.propertyowner`` rows in table column order.
            valuations: ``dbo.propertyvalue`` rows in table column order.
            structures: ``dbo.structure`` rows in table column order.
            seed: seeds the planner's random source.
            latest_day: the day the planner's clock stops at (see the class).

        Raises:
            ValueError: a row has the wrong number of columns, a NULL or non-numeric key, or breaks
                a key as described for the constructor.
        """
        dataset = PacsDataset(
            properties=[_property_row(row) for row in properties],
            owners=[_owner_row(row) for row in owners],
            valuations=[_valuation_row(row) for row in valuations],
            structures=[_structure_row(row) for row in structures],
        )
        return cls(dataset, seed, latest_day=latest_day)

    def _load(self, dataset: PacsDataset) -> None:
        for pid, parcel, address, city, state, zip_code, legal, acreage, year_built in dataset.properties:
            if pid in self._properties:
                raise ValueError(f"duplicate propertyid {pid}")
            self._properties[pid] = _Property(
                parcel, address, city, state, zip_code, legal, acreage, year_built
            )
            self._parcel_numbers.add(parcel)
        for oid, pid, name, owner_type, percentage, start, end in dataset.owners:
            self._parent(pid, OWNER_TABLE, oid).owner_ids[oid] = None
            if oid in self._owners:
                raise ValueError(f"duplicate propertyownerid {oid}")
            self._owners[oid] = _Owner(pid, name, owner_type, percentage, start, end)
        for vid, pid, tax_year, assessed, market, land, improvement in dataset.valuations:
            self._parent(pid, VALUATION_TABLE, vid).valuation_ids[vid] = None
            if vid in self._valuations:
                raise ValueError(f"duplicate propertyvalueid {vid}")
            self._valuations[vid] = _Valuation(pid, tax_year, assessed, market, land, improvement)
        for (
            sid,
            pid,
            structure_type,
            square_footage,
            condition,
            bedrooms,
            bathrooms,
            year_built,
        ) in dataset.structures:
            self._parent(pid, STRUCTURE_TABLE, sid).structure_ids[sid] = None
            if sid in self._structures:
                raise ValueError(f"duplicate structureid {sid}")
            self._structures[sid] = _Structure(
                pid, structure_type, square_footage, condition, bedrooms, bathrooms, year_built
            )

    def _parent(self, property_id: int, table: str, key: int) -> _Property:
        try:
            return self._properties[property_id]
        except KeyError:
            raise ValueError(f"{table} row {key} references missing property {property_id}") from None

    # -- Public API ---------------------------------------------------------------------------------

    def next_transaction(self) -> PlannedTransaction:
        """Plan the next transaction and apply it to the in-memory state.

        Returns:
            The transaction; its kind is drawn by realistic weights (corrections and revaluations
            most often). When the drawn kind has no candidate (say, no parcel large enough to split),
            a correction is planned instead.
        """
        advance = self._rng.random() < _DAY_ADVANCE_CHANCE  # drawn even when capped: same plan
        if advance and (self._latest_day is None or self._today < self._latest_day):
            self._today += timedelta(days=1)
        kind = self._rng.choices(tuple(_KIND_WEIGHTS), weights=tuple(_KIND_WEIGHTS.values()))[0]
        statements = self._kind_planners[kind]()
        if not statements:
            kind, statements = "correction", self._plan_correction()
        transaction = PlannedTransaction(kind, tuple(statements))
        self._summary["transactions"] += 1
        self._summary[f"transactions.{kind}"] += 1
        for statement in statements:
            self._summary["statements"] += 1
            self._summary[f"statements.{statement.table}.{str(statement.verb).lower()}"] += 1
        return transaction

    def plan(self, n: int) -> list[PlannedTransaction]:
        """The next ``n`` transactions, in the order they must be applied."""
        return [self.next_transaction() for _ in range(n)]

    def summary(self) -> dict[str, int]:
        """Counts of what was planned so far.

        Returns:
            ``transactions`` and ``transactions.<kind>``; ``statements`` and
            ``statements.<table>.<verb>`` (e.g. ``statements.dbo.propertyvalue.update``).
        """
        return dict(self._summary)

    def row_counts(self) -> dict[str, int]:
        """How many rows each table holds once every planned transaction is applied."""
        return {
            PROPERTY_TABLE: len(self._properties),
            OWNER_TABLE: len(self._owners),
            VALUATION_TABLE: len(self._valuations),
            STRUCTURE_TABLE: len(self._structures),
        }

    def snapshot(self) -> PacsDataset:
        """The tables as they will be once every planned transaction is applied, sorted by key.

        ``dirty`` is empty: the planner does not track which loaded rows were dirty.
        """
        properties: list[PropertyRow] = [
            (
                pid,
                p.parcel_number,
                p.address,
                p.city,
                p.state,
                p.zip_code,
                p.legal_description,
                p.acreage,
                p.year_built,
            )
            for pid, p in sorted(self._properties.items())
        ]
        owners: list[OwnerRow] = [
            (oid, o.property_id, o.name, o.owner_type, o.percentage, o.start_date, o.end_date)
            for oid, o in sorted(self._owners.items())
        ]
        valuations: list[ValuationRow] = [
            (vid, v.property_id, v.tax_year, v.assessed, v.market, v.land, v.improvement)
            for vid, v in sorted(self._valuations.items())
        ]
        structures: list[StructureRow] = [
            (
                sid,
                s.property_id,
                s.structure_type,
                s.square_footage,
                s.condition,
                s.bedrooms,
                s.bathrooms,
                s.year_built,
            )
            for sid, s in sorted(self._structures.items())
        ]
        return PacsDataset(properties, owners, valuations, structures)

    # -- Shared helpers -----------------------------------------------------------------------------

    def _allocate_id(self, table: str) -> int:
        key = self._next_ids[table]
        self._next_ids[table] = key + 1
        return key

    def _latest_valuation_id(self, property_id: int) -> int | None:
        valuation_ids = self._properties[property_id].valuation_ids
        if not valuation_ids:
            return None
        return max(valuation_ids, key=lambda vid: (self._valuations[vid].tax_year, vid))

    def _latest_tax_year(self, property_id: int) -> int | None:
        latest_id = self._latest_valuation_id(property_id)
        return None if latest_id is None else self._valuations[latest_id].tax_year

    def _current_owner_ids(self, property_id: int) -> list[int]:
        return [oid for oid in self._properties[property_id].owner_ids if self._owners[oid].end_date is None]

    def _is_vacant(self, property_id: int) -> bool:
        prop = self._properties[property_id]
        return prop.year_built is None and not prop.structure_ids

    def _is_commercial(self, property_id: int) -> bool:
        prop = self._properties[property_id]
        return any(self._structures[sid].structure_type == "Commercial" for sid in prop.structure_ids)

    def _clean_land(self, valuation: _Valuation | None, prop: _Property) -> int:
        """Land dollars to grow from: the recorded value if it is sane, else one from the acreage."""
        if valuation is not None and valuation.land is not None and valuation.land > 0:
            return int(valuation.land)
        acres = float(prop.acreage) if prop.has_clean_acreage() and prop.acreage is not None else 0.25
        return round_dollars(25_000 + 20_000 * acres)

    def _clean_improvement(self, valuation: _Valuation | None, property_id: int) -> int:
        if self._is_vacant(property_id) or valuation is None:
            return 0
        if valuation.improvement is not None and valuation.improvement >= 0:
            return int(valuation.improvement)
        return 0

    def _clean_location(self, prop: _Property) -> tuple[str, str]:
        """The property's city and ZIP code if they agree, else corrected ones (the city kept if known)."""
        city = prop.city
        if city is None or city not in CITY_ZIP_CODES:
            city = pick_city(self._rng)
        zip_code = prop.zip_code
        if zip_code is None or zip_code not in CITY_ZIP_CODES[city]:
            zip_code = pick_zip_code(self._rng, city)
        return city, zip_code

    def _nearby_address(self, prop: _Property, city: str, offset: int) -> str:
        """An address ``offset`` doors along the property's street, else a new one in ``city``."""
        number, _, street = (prop.address or "").partition(" ")
        if number.isdigit() and street and prop.city == city:
            return f"{max(1, int(number) + offset)} {street}"
        return make_address(self._rng, city)

    def _set_valuation(self, valuation_id: int, land: int, improvement: int) -> Statement:
        """UPDATE a valuation to ``land`` + ``improvement``, with a market value near the new total."""
        assessed = land + improvement
        valuation = self._valuations[valuation_id]
        valuation.land, valuation.improvement = to_money(land), to_money(improvement)
        valuation.assessed = to_money(assessed)
        valuation.market = to_money(market_value_near(self._rng, assessed))
        return _update(
            VALUATION_TABLE,
            valuation_id,
            {
                "assessedvalue": valuation.assessed,
                "marketvalue": valuation.market,
                "landvalue": valuation.land,
                "improvementvalue": valuation.improvement,
            },
        )

    def _add_valuation(self, property_id: int, tax_year: int, land: int, improvement: int) -> Statement:
        valuation_id = self._allocate_id(VALUATION_TABLE)
        assessed = land + improvement
        valuation = _Valuation(
            property_id,
            tax_year,
            to_money(assessed),
            to_money(market_value_near(self._rng, assessed)),
            to_money(land),
            to_money(improvement),
        )
        self._valuations[valuation_id] = valuation
        self._properties[property_id].valuation_ids[valuation_id] = None
        if tax_year >= self._roll_year:
            self._behind_pool.discard(property_id)
        return _insert(
            VALUATION_TABLE,
            (
                valuation_id,
                property_id,
                tax_year,
                valuation.assessed,
                valuation.market,
                valuation.land,
                valuation.improvement,
            ),
        )

    def _add_owner(
        self, property_id: int, name: str, owner_type: str, percentage: Decimal, start_date: date
    ) -> Statement:
        owner_id = self._allocate_id(OWNER_TABLE)
        self._owners[owner_id] = _Owner(property_id, name, owner_type, percentage, start_date, None)
        self._properties[property_id].owner_ids[owner_id] = None
        return _insert(OWNER_TABLE, (owner_id, property_id, name, owner_type, percentage, start_date, None))

    def _new_parcel_number(self, parent_parcel_number: str) -> str:
        """The next free split suffix of the parent's parcel number, else a fresh parcel number."""
        if PARCEL_NUMBER_PATTERN.fullmatch(parent_parcel_number):
            stem = parent_parcel_number[:-3]
            for suffix in range(1, 1000):
                candidate = f"{stem}{suffix:03d}"
                if candidate not in self._parcel_numbers:
                    self._parcel_numbers.add(candidate)
                    return candidate
        while True:
            candidate = make_parcel_number(self._rng)
            if candidate not in self._parcel_numbers:
                self._parcel_numbers.add(candidate)
                return candidate

    def _pick_property(self, accept: Callable[[int], bool], attempts: int = 25) -> int | None:
        for _ in range(attempts):
            property_id = self._property_pool.choice(self._rng)
            if accept(property_id):
                return property_id
        return None

    # -- Transaction kinds --------------------------------------------------------------------------

    def _plan_revaluation(self) -> list[Statement]:
        batch_size = self._rng.randint(*_BATCH_SIZES)
        if self._rng.random() < 0.5:
            return self._plan_next_tax_year(batch_size)
        return self._plan_reappraisal(batch_size)

    def _plan_next_tax_year(self, batch_size: int) -> list[Statement]:
        """INSERT next year's valuation for a batch of properties (the roll advances a year at a time,
        at most to the year after the clock's)."""
        if not self._behind_pool:
            if self._roll_year > self._today.year:
                # Next year's roll is complete; assessors do not value years further ahead.
                return self._plan_reappraisal(batch_size)
            self._roll_year += 1
            self._behind_pool = _KeyPool(self._properties)
        statements: list[Statement] = []
        tax_year = self._roll_year
        trend = market_trend(tax_year)
        for property_id in self._behind_pool.sample(self._rng, batch_size):
            prop = self._properties[property_id]
            latest_id = self._latest_valuation_id(property_id)
            latest = None if latest_id is None else self._valuations[latest_id]
            land = round_dollars(
                self._clean_land(latest, prop) * max(1.01, trend * self._rng.uniform(0.98, 1.03))
            )
            improvement = self._clean_improvement(latest, property_id)
            if improvement:
                improvement = round_dollars(improvement * trend * self._rng.uniform(0.96, 1.0))
            if latest is not None and latest.assessed is not None and land + improvement <= latest.assessed:
                land += int(latest.assessed) - (land + improvement) + 10  # values grow year over year
            statements.append(self._add_valuation(property_id, tax_year, land, improvement))
        return statements

    def _plan_reappraisal(self, batch_size: int) -> list[Statement]:
        """UPDATE the latest tax year's values of a batch of properties (never below the old values)."""
        statements: list[Statement] = []
        for property_id in self._property_pool.sample(self._rng, batch_size):
            latest_id = self._latest_valuation_id(property_id)
            if latest_id is None:
                continue
            latest = self._valuations[latest_id]
            land = self._clean_land(latest, self._properties[property_id])
            improvement = self._clean_improvement(latest, property_id)
            new_land = max(land, round_dollars(land * self._rng.uniform(1.0, 1.08)))
            new_improvement = max(improvement, round_dollars(improvement * self._rng.uniform(1.0, 1.06)))
            if not improvement:
                new_improvement = 0
            statements.append(self._set_valuation(latest_id, new_land, new_improvement))
        return statements

    def _plan_ownership_transfer(self) -> list[Statement]:
        """A sale: end every current owner on the sale date and insert the buyers (summing to 100 %)."""
        property_id = self._property_pool.choice(self._rng)
        current_ids = self._current_owner_ids(property_id)
        starts = [self._owners[oid].start_date for oid in current_ids]
        # EndDate >= StartDate even if a current owner's start was recorded in the future.
        sale_date = max([self._today, *(start for start in starts if start is not None)])
        statements: list[Statement] = []
        for owner_id in current_ids:
            self._owners[owner_id].end_date = sale_date
            statements.append(_update(OWNER_TABLE, owner_id, {"enddate": sale_date}))
        buyer_count = self._rng.choices(tuple(_BUYER_COUNTS), weights=tuple(_BUYER_COUNTS.values()))[0]
        for name, owner_type, percentage in make_owner_set(
            self._rng, buyer_count, commercial=self._is_commercial(property_id)
        ):
            statements.append(self._add_owner(property_id, name, owner_type, percentage, sale_date))
        return statements

    def _plan_new_construction(self) -> list[Statement]:
        """INSERT a structure; set the property's year built if it was vacant; raise its improvement value."""
        property_id = self._pick_property(
            lambda pid: len(self._properties[pid].structure_ids) < MAX_STRUCTURES_PER_PROPERTY
        )
        if property_id is None:
            return []
        prop = self._properties[property_id]
        if prop.year_built is None or not prop.structure_ids:
            weights = _NEW_DWELLINGS
        elif self._is_commercial(property_id):
            weights = _NEW_COMMERCIAL
        else:
            weights = _NEW_OUTBUILDINGS
        structure_type = self._rng.choices(tuple(weights), weights=tuple(weights.values()))[0]
        details = make_structure_details(self._rng, structure_type)
        year_built = self._today.year
        structure_id = self._allocate_id(STRUCTURE_TABLE)
        # Value the improvement before the structure joins the property: a vacant lot's recorded value is 0.
        latest_id = self._latest_valuation_id(property_id)
        latest = None if latest_id is None else self._valuations[latest_id]
        old_improvement = self._clean_improvement(latest, property_id)
        self._structures[structure_id] = _Structure(
            property_id,
            structure_type,
            details.square_footage,
            details.condition,
            details.bedrooms,
            details.bathrooms,
            year_built,
        )
        prop.structure_ids[structure_id] = None
        self._structure_pool.add(structure_id)
        statements = [
            _insert(
                STRUCTURE_TABLE,
                (
                    structure_id,
                    property_id,
                    structure_type,
                    details.square_footage,
                    details.condition,
                    details.bedrooms,
                    details.bathrooms,
                    year_built,
                ),
            )
        ]
        if prop.year_built is None:
            prop.year_built = year_built
            statements.append(_update(PROPERTY_TABLE, property_id, {"yearbuilt": year_built}))
        if latest_id is not None:
            added = improvement_value(
                structure_type, details.square_footage, details.condition, year_built, year_built
            )
            statements.append(
                self._set_valuation(latest_id, self._clean_land(latest, prop), old_improvement + added)
            )
        return statements

    def _plan_parcel_split(self) -> list[Statement]:
        """Carve one or two parcels out of a property: new parcels with owners and a valuation, the
        original's acreage reduced; sometimes the new parcel is renumbered (a primary-key update)
        before its children exist."""
        parent_id = self._pick_property(
            lambda pid: (
                self._properties[pid].has_clean_acreage()
                and (self._properties[pid].acreage or Decimal(0)) >= _SPLIT_MIN_ACREAGE
            )
        )
        if parent_id is None:
            return []
        parent = self._properties[parent_id]
        parent_acreage = parent.acreage
        if parent_acreage is None:
            return []
        new_count = 2 if parent_acreage >= 2 * _SPLIT_MIN_ACREAGE and self._rng.random() < 0.3 else 1
        new_acreages = [
            max(
                MIN_ACREAGE,
                (parent_acreage * Decimal(self._rng.uniform(0.2, 0.45)) / new_count).quantize(ACREAGE_PLACES),
            )
            for _ in range(new_count)
        ]
        remaining_acreage = parent_acreage - sum(new_acreages)
        if remaining_acreage < MIN_ACREAGE:
            return []

        latest_id = self._latest_valuation_id(parent_id)
        latest = None if latest_id is None else self._valuations[latest_id]
        parent_land = self._clean_land(latest, parent)
        tax_year = self._roll_year if latest is None else latest.tax_year
        owner_set = self._owner_set_to_copy(parent_id)
        city, zip_code = self._clean_location(parent)
        short_plat = self._next_short_plat
        self._next_short_plat += 1

        statements = [_update(PROPERTY_TABLE, parent_id, {"acreage": remaining_acreage})]
        for position, acreage in enumerate(new_acreages):
            new_id = self._allocate_id(PROPERTY_TABLE)
            row: PropertyRow = (
                new_id,
                self._new_parcel_number(parent.parcel_number),
                self._nearby_address(parent, city, offset=2 * (position + 1)),
                city,
                STATE_CODE,
                zip_code,
                f"LOT {position + 2} SHORT PLAT {short_plat}",
                acreage,
                None,
            )
            statements.append(_insert(PROPERTY_TABLE, row))
            if position == 0 and self._rng.random() < 0.35:
                # County renumbers the new parcel before anything references it: a primary-key update.
                final_id = self._allocate_id(PROPERTY_TABLE)
                statements.append(_update(PROPERTY_TABLE, new_id, {"propertyid": final_id}))
                new_id = final_id
            _, parcel_number, address, _, _, _, legal, _, _ = row
            self._properties[new_id] = _Property(
                parcel_number, address, city, STATE_CODE, zip_code, legal, acreage, None
            )
            self._property_pool.add(new_id)
            for name, owner_type, percentage in owner_set:
                statements.append(self._add_owner(new_id, name, owner_type, percentage, self._today))
            share = acreage / parent_acreage
            land = max(_MIN_SUBPARCEL_LAND, round_dollars(parent_land * float(share)))
            statements.append(self._add_valuation(new_id, tax_year, land, 0))
            if tax_year < self._roll_year:
                self._behind_pool.add(new_id)
        parent.acreage = remaining_acreage
        return statements

    def _owner_set_to_copy(self, property_id: int) -> list[tuple[str, str, Decimal]]:
        """The current owners (name, type, share) to record on a split-off parcel, cleaned."""
        current = [self._owners[oid] for oid in self._current_owner_ids(property_id)]
        shares = [owner.percentage for owner in current]
        clean = (
            current
            and all(share is not None and 0 < share <= FULL_OWNERSHIP for share in shares)
            and sum(share or Decimal(0) for share in shares) == FULL_OWNERSHIP
            and all(owner.owner_type in OWNER_TYPES for owner in current)
        )
        if not clean:
            return make_owner_set(self._rng, 1)
        return [(owner.name, str(owner.owner_type), owner.percentage or FULL_OWNERSHIP) for owner in current]

    def _plan_parcel_merge(self) -> list[Statement]:
        """Absorb a property into a neighbour: DELETE its children, then it; grow the survivor."""
        pair = self._pick_merge_pair()
        if pair is None:
            return []
        absorbed_id, survivor_id, merged_acreage = pair
        absorbed, survivor = self._properties[absorbed_id], self._properties[survivor_id]
        absorbed_latest_id = self._latest_valuation_id(absorbed_id)
        absorbed_land = (
            0
            if absorbed_latest_id is None
            else self._clean_land(self._valuations[absorbed_latest_id], absorbed)
        )

        statements: list[Statement] = []
        for structure_id in absorbed.structure_ids:
            del self._structures[structure_id]
            self._structure_pool.discard(structure_id)
            statements.append(_delete(STRUCTURE_TABLE, structure_id))
        for owner_id in absorbed.owner_ids:
            del self._owners[owner_id]
            statements.append(_delete(OWNER_TABLE, owner_id))
        for valuation_id in absorbed.valuation_ids:
            del self._valuations[valuation_id]
            statements.append(_delete(VALUATION_TABLE, valuation_id))
        statements.append(_delete(PROPERTY_TABLE, absorbed_id))
        del self._properties[absorbed_id]  # its parcel number stays reserved: retired numbers are not reused
        for pool in (self._property_pool, self._behind_pool, self._unclean_location_pool):
            pool.discard(absorbed_id)

        survivor.acreage = merged_acreage
        statements.append(_update(PROPERTY_TABLE, survivor_id, {"acreage": survivor.acreage}))
        survivor_latest_id = self._latest_valuation_id(survivor_id)
        if survivor_latest_id is not None:
            survivor_latest = self._valuations[survivor_latest_id]
            land = self._clean_land(survivor_latest, survivor) + absorbed_land
            improvement = self._clean_improvement(survivor_latest, survivor_id)
            statements.append(self._set_valuation(survivor_latest_id, land, improvement))
        return statements

    def _pick_merge_pair(self) -> tuple[int, int, Decimal] | None:
        """Two neighbours (same city) whose combined acreage stays plausible, and that acreage."""
        if len(self._properties) <= _MIN_PROPERTIES:
            return None
        for _ in range(40):
            absorbed_id = self._property_pool.choice(self._rng)
            survivor_id = self._property_pool.choice(self._rng)
            absorbed, survivor = self._properties[absorbed_id], self._properties[survivor_id]
            if absorbed_id == survivor_id or absorbed.city != survivor.city:
                continue
            if absorbed.acreage is None or survivor.acreage is None:
                continue
            if not (absorbed.has_clean_acreage() and survivor.has_clean_acreage()):
                continue
            merged_acreage = absorbed.acreage + survivor.acreage
            if merged_acreage <= MAX_ACREAGE:
                return absorbed_id, survivor_id, merged_acreage
        return None

    def _plan_correction(self) -> list[Statement]:
        """A single-row fix: an address, an owner name, a structure's condition or size, or its key."""
        draw = self._rng.random()
        if draw < 0.25:
            statements = self._correct_owner_name()
        elif draw < 0.5:
            statements = self._correct_structure()
        elif draw < 0.58:
            statements = self._renumber_structure()
        else:
            statements = []
        return statements or self._correct_location()

    def _correct_location(self) -> list[Statement]:
        if self._unclean_location_pool and self._rng.random() < 0.5:
            property_id = self._unclean_location_pool.choice(self._rng)  # fix known-bad rows first
        else:
            property_id = self._property_pool.choice(self._rng)
        prop = self._properties[property_id]
        city, zip_code = self._clean_location(prop)
        prop.address = self._nearby_address(prop, city, offset=self._rng.choice((-4, -2, 2, 4)))
        prop.city, prop.state, prop.zip_code = city, STATE_CODE, zip_code
        self._unclean_location_pool.discard(property_id)
        return [
            _update(
                PROPERTY_TABLE,
                property_id,
                {"address": prop.address, "city": city, "state": STATE_CODE, "zipcode": zip_code},
            )
        ]

    def _correct_owner_name(self) -> list[Statement]:
        property_id = self._pick_property(lambda pid: bool(self._properties[pid].owner_ids))
        if property_id is None:
            return []
        owner_ids = self._current_owner_ids(property_id) or list(self._properties[property_id].owner_ids)
        owner_id = self._rng.choice(owner_ids)
        owner = self._owners[owner_id]
        owner_type = owner.owner_type if owner.owner_type in OWNER_TYPES else "Individual"
        owner.name = make_owner_name(self._rng, str(owner_type))
        return [_update(OWNER_TABLE, owner_id, {"ownername": owner.name})]

    def _correct_structure(self) -> list[Statement]:
        if not self._structure_pool:
            return []
        structure_id = self._structure_pool.choice(self._rng)
        structure = self._structures[structure_id]
        if structure.structure_type in SQUARE_FOOTAGE_RANGES and self._rng.random() < 0.5:
            details = make_structure_details(self._rng, str(structure.structure_type))
            structure.square_footage = details.square_footage
            assignments: dict[str, object] = {"squarefootage": details.square_footage}
            if structure.structure_type in DWELLING_TYPES:
                # Re-measured living area: rooms follow the size.
                structure.bedrooms, structure.bathrooms = details.bedrooms, details.bathrooms
                assignments |= {"bedrooms": details.bedrooms, "bathrooms": details.bathrooms}
            return [_update(STRUCTURE_TABLE, structure_id, assignments)]
        structure.condition = self._rng.choice([c for c in CONDITIONS if c != structure.condition])
        return [_update(STRUCTURE_TABLE, structure_id, {"condition": structure.condition})]

    def _renumber_structure(self) -> list[Statement]:
        """A primary-key update: a structure keyed wrongly at entry gets a new id (nothing references it)."""
        if not self._structure_pool:
            return []
        old_id = self._structure_pool.choice(self._rng)
        new_id = self._allocate_id(STRUCTURE_TABLE)
        structure = self._structures.pop(old_id)
        self._structures[new_id] = structure
        self._structure_pool.discard(old_id)
        self._structure_pool.add(new_id)
        structure_ids = self._properties[structure.property_id].structure_ids
        del structure_ids[old_id]
        structure_ids[new_id] = None
        return [_update(STRUCTURE_TABLE, old_id, {"structureid": new_id})]

    def _plan_multi_table(self) -> list[Statement]:
        """A boundary line adjustment: property, owner and valuation rows change together."""
        property_id = self._pick_property(
            lambda pid: bool(self._current_owner_ids(pid)) and bool(self._properties[pid].valuation_ids),
            attempts=10,
        )
        if property_id is None:
            property_id = self._property_pool.choice(self._rng)
        prop = self._properties[property_id]
        if prop.has_clean_acreage() and prop.acreage is not None:
            old_acreage = prop.acreage
            new_acreage = min(
                MAX_ACREAGE, (old_acreage * Decimal(self._rng.uniform(1.02, 1.15))).quantize(ACREAGE_PLACES)
            )
        else:
            old_acreage = None
            new_acreage = Decimal(self._rng.uniform(0.15, 1.0)).quantize(ACREAGE_PLACES)
        base_legal = (prop.legal_description or "").split(" BLA ")[0]
        if not base_legal:
            city = prop.city if prop.city in CITY_ZIP_CODES else pick_city(self._rng)
            base_legal = make_legal_description(self._rng, str(city), platted=True)
        prop.acreage = new_acreage
        prop.legal_description = f"{base_legal[:400]} BLA {self._today.year}-{self._rng.randint(1, 999):03d}"
        statements = [
            _update(
                PROPERTY_TABLE,
                property_id,
                {"acreage": new_acreage, "legaldescription": prop.legal_description},
            )
        ]

        current_ids = self._current_owner_ids(property_id)
        if current_ids:
            owner_id = self._rng.choice(current_ids)
            owner = self._owners[owner_id]
            owner.name = make_owner_name(
                self._rng, str(owner.owner_type if owner.owner_type in OWNER_TYPES else "Individual")
            )
            statements.append(_update(OWNER_TABLE, owner_id, {"ownername": owner.name}))
        else:
            for name, owner_type, percentage in make_owner_set(self._rng, 1):
                statements.append(self._add_owner(property_id, name, owner_type, percentage, self._today))

        latest_id = self._latest_valuation_id(property_id)
        if latest_id is None:
            land = self._clean_land(None, prop)
            statements.append(self._add_valuation(property_id, self._roll_year, land, 0))
        else:
            latest = self._valuations[latest_id]
            land = self._clean_land(latest, prop)
            if old_acreage is not None:
                land = max(land, round_dollars(land * float(new_acreage / old_acreage)))
            statements.append(
                self._set_valuation(latest_id, land, self._clean_improvement(latest, property_id))
            )
        return statements
