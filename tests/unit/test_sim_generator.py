"""The PACS data generator: exact scales, determinism, realism of clean rows, and planted bad data.

The ``*_issues`` checkers below state the realism rules once; ``test_sim_workload`` reuses them to
hold the change workload to the same rules.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal

import pytest

from pacs_sync.sim.generator import (
    AS_OF_DATE,
    BENTON_SCALE,
    CITY_ZIP_CODES,
    CONDITIONS,
    DIRTY_KINDS,
    DWELLING_TYPES,
    LATEST_TAX_YEAR,
    OWNER_TABLE,
    OWNER_TYPES,
    PARCEL_NUMBER_PATTERN,
    PROPERTY_TABLE,
    SQUARE_FOOTAGE_RANGES,
    STRUCTURE_TABLE,
    STRUCTURE_TYPES,
    VALUATION_TABLE,
    PacsDataset,
    Scale,
    generate,
    make_owner_name,
    make_owner_set,
    make_parcel_number,
    scale_for,
    split_percentages,
)

US_STATE_CODES = frozenset(
    {
        "AL",
        "AK",
        "AZ",
        "AR",
        "CA",
        "CO",
        "CT",
        "DE",
        "DC",
        "FL",
        "GA",
        "HI",
        "ID",
        "IL",
        "IN",
        "IA",
        "KS",
        "KY",
        "LA",
        "ME",
        "MD",
        "MA",
        "MI",
        "MN",
        "MS",
        "MO",
        "MT",
        "NE",
        "NV",
        "NH",
        "NJ",
        "NM",
        "NY",
        "NC",
        "ND",
        "OH",
        "OK",
        "OR",
        "PA",
        "RI",
        "SC",
        "SD",
        "TN",
        "TX",
        "UT",
        "VT",
        "VA",
        "WA",
        "WV",
        "WI",
        "WY",
    }
)
_ADDRESS = re.compile(r"[0-9]{1,6} [A-Za-z0-9][A-Za-z0-9 ]*")
_TWO_PLACES = -2


def _places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


# -- Realism rules (shared with test_sim_workload) --------------------------------------------------


def property_issues(row: Sequence[object], *, max_year: int = LATEST_TAX_YEAR) -> set[str]:
    """Dirty kinds (DIRTY_KINDS names) and other realism breaks of one dbo.property row."""
    _, parcel, address, city, state, zip_code, legal, acreage, year_built = row
    issues: set[str] = set()
    if not isinstance(parcel, str) or not PARCEL_NUMBER_PATTERN.fullmatch(parcel):
        issues.add("malformed_parcel_number")
    if zip_code in (None, ""):
        issues.add("missing_zip")
    elif not (isinstance(zip_code, str) and zip_code.isdigit() and len(zip_code) == 5):
        issues.add("zip_wrong_length")
    elif city not in CITY_ZIP_CODES or zip_code not in CITY_ZIP_CODES[str(city)]:
        issues.add("city_zip_mismatch")
    if state not in US_STATE_CODES:
        issues.add("invalid_state")
    elif state != "WA":
        issues.add("not_washington")
    if not isinstance(acreage, Decimal):
        issues.add("missing_acreage")
    elif acreage < 0:
        issues.add("negative_acreage")
    elif not Decimal("0.1") <= acreage <= Decimal("40") or _places(acreage) != 4:
        issues.add("acreage_out_of_range")
    if year_built is not None and not (isinstance(year_built, int) and 1900 <= year_built <= max_year):
        issues.add("implausible_year_built")
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        issues.add("bad_address")
    if not isinstance(legal, str) or not legal or len(legal) > 500:
        issues.add("bad_legal_description")
    return issues


def owner_issues(row: Sequence[object], *, latest_date: date = AS_OF_DATE) -> set[str]:
    """Dirty kinds and other realism breaks of one dbo.propertyowner row."""
    _, _, name, owner_type, percentage, start, end = row
    issues: set[str] = set()
    if not isinstance(percentage, Decimal) or not Decimal(0) < percentage <= Decimal(100):
        issues.add("ownership_percentage_out_of_range")
    elif _places(percentage) != 2:
        issues.add("percentage_places")
    if isinstance(start, date) and isinstance(end, date) and end < start:
        issues.add("end_before_start")
    if not isinstance(start, date) or start > latest_date or (isinstance(end, date) and end > latest_date):
        issues.add("bad_dates")
    if owner_type not in OWNER_TYPES:
        issues.add("bad_owner_type")
    if not isinstance(name, str) or not name.strip() or len(name) > 150:
        issues.add("bad_owner_name")
    return issues


def owner_set_issues(owners: Iterable[Sequence[object]]) -> Counter[str]:
    """Per property: current owners (no end date) whose in-range percentages do not sum to 100.00."""
    current: dict[object, list[object]] = defaultdict(list)
    for row in owners:
        if row[6] is None:
            current[row[1]].append(row[4])
    issues: Counter[str] = Counter()
    for shares in current.values():
        if not all(isinstance(s, Decimal) and Decimal(0) < s <= Decimal(100) for s in shares):
            continue  # a row-level issue already covers this set
        total = sum(s for s in shares if isinstance(s, Decimal))
        if total > 100:
            issues["owner_set_over_100"] += 1
        elif total < 100:
            issues["owner_set_under_100"] += 1
        if len(shares) > 3:
            issues["too_many_current_owners"] += 1
    return issues


def valuation_issues(row: Sequence[object], *, max_year: int = LATEST_TAX_YEAR) -> set[str]:
    """Dirty kinds and other realism breaks of one dbo.propertyvalue row."""
    _, _, tax_year, assessed, market, land, improvement = row
    values = (assessed, market, land, improvement)
    if not all(isinstance(v, Decimal) for v in values):
        return {"missing_value"}
    assert isinstance(assessed, Decimal)
    assert isinstance(market, Decimal)
    assert isinstance(land, Decimal)
    assert isinstance(improvement, Decimal)
    issues: set[str] = set()
    if any(v < 0 for v in (assessed, market, land, improvement)):
        issues.add("negative_value")
    elif land + improvement != assessed:
        issues.add("value_sum_mismatch")
    elif not assessed * Decimal("0.9") <= market <= assessed * Decimal("1.1") or land <= 0:
        issues.add("market_far_from_assessed")
    if any(_places(v) != 2 for v in (assessed, market, land, improvement)):
        issues.add("money_places")
    if not isinstance(tax_year, int) or not 2000 <= tax_year <= max_year + 1:
        issues.add("implausible_tax_year")
    return issues


def structure_issues(row: Sequence[object], *, max_year: int = LATEST_TAX_YEAR) -> set[str]:
    """Dirty kinds and other realism breaks of one dbo.structure row (year 0 is PACS's 'unknown')."""
    _, _, structure_type, square_footage, condition, bedrooms, bathrooms, year_built = row
    issues: set[str] = set()
    if year_built != 0 and not (isinstance(year_built, int) and 1900 <= year_built <= max_year):
        issues.add("structure_implausible_year_built")
    if isinstance(square_footage, int) and square_footage < 0:
        issues.add("negative_square_footage")
    elif structure_type not in STRUCTURE_TYPES or not isinstance(square_footage, int):
        issues.add("bad_structure_type")
    else:
        low, high = SQUARE_FOOTAGE_RANGES[str(structure_type)]
        if not low <= square_footage <= high:
            issues.add("implausible_square_footage")
    if condition not in CONDITIONS:
        issues.add("bad_condition")
    if structure_type in DWELLING_TYPES:
        if not (isinstance(bedrooms, int) and 1 <= bedrooms <= 6):
            issues.add("implausible_bedrooms")
        if not (isinstance(bathrooms, Decimal) and Decimal(1) <= bathrooms <= Decimal("4.5")) or (
            isinstance(bathrooms, Decimal) and _places(bathrooms) != 1
        ):
            issues.add("implausible_bathrooms")
    elif bedrooms is not None or bathrooms is not None:
        issues.add("rooms_on_non_dwelling")
    return issues


def cross_table_issues(dataset: PacsDataset) -> Counter[str]:
    """Rules spanning tables: keys, one owner set per property, growing values, vacant land."""
    issues: Counter[str] = Counter()
    property_ids = [row[0] for row in dataset.properties]
    if len(set(property_ids)) != len(property_ids):
        issues["duplicate_property_id"] += 1
    parcels = [row[1] for row in dataset.properties]
    issues["duplicate_parcel_number"] += len(parcels) - len(set(parcels))
    known = set(property_ids)
    for table_rows in (dataset.owners, dataset.valuations, dataset.structures):
        ids = [row[0] for row in table_rows]
        issues["duplicate_child_id"] += len(ids) - len(set(ids))
        issues["orphan_child"] += sum(1 for row in table_rows if row[1] not in known)
    with_current_owner = {row[1] for row in dataset.owners if row[6] is None}
    issues["property_without_current_owner"] += len(known - with_current_owner)

    history: dict[int, list[tuple[int, Decimal | None]]] = defaultdict(list)
    for row in dataset.valuations:
        history[row[1]].append((row[2], row[3]))
    for years in history.values():
        years.sort()
        tax_years = [year for year, _ in years]
        if len(set(tax_years)) != len(tax_years):
            issues["duplicate_tax_year"] += 1
        assessed = [value for _, value in years]
        if any(a is None or b is None or b <= a for a, b in itertools.pairwise(assessed)):
            issues["value_not_growing"] += 1

    structure_properties = {structure[1] for structure in dataset.structures}
    improved = {value[1] for value in dataset.valuations if value[6] is not None and value[6] > 0}
    for prop in dataset.properties:
        if prop[8] is None and (prop[0] in structure_properties or prop[0] in improved):
            issues["vacant_land_with_improvements"] += 1
    return +issues


def dirty_kind_counts(dataset: PacsDataset) -> Counter[str]:
    """The planted kinds the checkers find (DIRTY_KINDS names only), to compare with ``dataset.dirty``."""
    found: Counter[str] = Counter()
    for prop in dataset.properties:
        found.update(property_issues(prop))
    for owner in dataset.owners:
        found.update(owner_issues(owner))
    found.update(owner_set_issues(dataset.owners))
    for value in dataset.valuations:
        found.update(valuation_issues(value))
    for structure in dataset.structures:
        found.update(structure_issues(structure))
    planted = {kind for kinds in DIRTY_KINDS.values() for kind in kinds}
    return Counter({kind: count for kind, count in found.items() if kind in planted})


def all_row_issues(dataset: PacsDataset, *, max_year: int, latest_date: date) -> Counter[str]:
    """Every row-level and cross-table issue in the data set, counted by kind (empty when clean)."""
    found: Counter[str] = Counter()
    for prop in dataset.properties:
        found.update(property_issues(prop, max_year=max_year))
    for owner in dataset.owners:
        found.update(owner_issues(owner, latest_date=latest_date))
    found.update(owner_set_issues(dataset.owners))
    for value in dataset.valuations:
        found.update(valuation_issues(value, max_year=max_year))
    for structure in dataset.structures:
        found.update(structure_issues(structure, max_year=max_year))
    found.update(cross_table_issues(dataset))
    return found


# -- Fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benton_timed() -> tuple[PacsDataset, float]:
    started = time.perf_counter()
    dataset = generate(scale_for("benton"), seed=1)
    return dataset, time.perf_counter() - started


@pytest.fixture(scope="module")
def benton(benton_timed: tuple[PacsDataset, float]) -> PacsDataset:
    return benton_timed[0]


@pytest.fixture(scope="module")
def benton_dirty() -> PacsDataset:
    return generate(scale_for("benton"), seed=1, dirty_rate=0.05)


# -- Scales ----------------------------------------------------------------------------------------


def test_benton_scale_is_exact() -> None:
    assert scale_for("benton") == Scale(
        properties=12_400, owners=18_600, valuations=62_000, structures=14_800
    )
    assert scale_for("  BENTON ") is BENTON_SCALE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("small", (200, 300, 1000, 239)),
        ("200", (200, 300, 1000, 239)),
        ("12400", (12_400, 18_600, 62_000, 14_800)),
        ("1", (1, 2, 5, 1)),  # 1.5 owners and 1.19 structures round half up / down
        ("3", (3, 5, 15, 4)),
        ("5000", (5000, 7500, 25_000, 5968)),
    ],
)
def test_named_and_numeric_scales_keep_benton_ratios(text: str, expected: tuple[int, int, int, int]) -> None:
    scale = scale_for(text)
    assert (scale.properties, scale.owners, scale.valuations, scale.structures) == expected


@pytest.mark.parametrize("text", ["", "huge", "0", "-5", "1.5", "12e3", "2_000", "\u0661\u0662", "99999999"])
def test_scale_for_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="scale"):
        scale_for(text)


def test_scale_rejects_counts_that_cannot_be_met() -> None:
    with pytest.raises(ValueError, match="owners"):
        Scale(properties=10, owners=5, valuations=50, structures=10)
    with pytest.raises(ValueError, match="structures"):
        Scale(properties=10, owners=15, valuations=50, structures=41)
    with pytest.raises(ValueError, match="properties"):
        Scale(properties=0, owners=0, valuations=0, structures=0)


# -- The clean Benton data set --------------------------------------------------------------------


def test_benton_counts_are_exact_and_fast(benton_timed: tuple[PacsDataset, float]) -> None:
    dataset, seconds = benton_timed
    assert len(dataset.properties) == 12_400
    assert len(dataset.owners) == 18_600
    assert len(dataset.valuations) == 62_000
    assert len(dataset.structures) == 14_800
    assert dataset.dirty == {}
    assert seconds < 10, f"generate(benton) took {seconds:.1f} s"


def test_ids_are_positive_unique_ordered_and_children_reference_properties(benton: PacsDataset) -> None:
    property_ids = {row[0] for row in benton.properties}
    for rows in benton.tables().values():
        ids = [row[0] for row in rows if isinstance(row[0], int) and row[0] > 0]
        assert len(ids) == len(rows), "ids are positive ints"
        assert ids == sorted(set(ids)), "ids are unique and rows are in id order"
    for rows in (benton.owners, benton.valuations, benton.structures):
        assert {row[1] for row in rows} <= property_ids


def test_every_clean_row_follows_the_realism_rules(benton: PacsDataset) -> None:
    assert all_row_issues(benton, max_year=LATEST_TAX_YEAR, latest_date=AS_OF_DATE) == Counter()


def test_parcel_numbers_are_unique_and_in_one_format(benton: PacsDataset) -> None:
    parcels = [row[1] for row in benton.properties]
    assert len(set(parcels)) == len(parcels)
    assert all(PARCEL_NUMBER_PATTERN.fullmatch(parcel) for parcel in parcels)
    assert not PARCEL_NUMBER_PATTERN.fullmatch("1-2345-678-9012-345\n")


def test_cities_carry_their_real_zip_codes_in_washington(benton: PacsDataset) -> None:
    pairs = Counter((row[3], row[5]) for row in benton.properties)
    assert {row[4] for row in benton.properties} == {"WA"}
    for city, zip_code in pairs:
        assert zip_code in CITY_ZIP_CODES[str(city)]
    assert {"Kennewick", "Richland", "West Richland", "Prosser", "Benton City"} <= {city for city, _ in pairs}
    assert {zip_code for _, zip_code in pairs} >= {"99336", "99337", "99338", "99352", "99354", "99353"}


def test_owner_sets_sum_to_exactly_100(benton: PacsDataset) -> None:
    current: dict[int, list[Decimal]] = defaultdict(list)
    for row in benton.owners:
        if row[6] is None:
            assert row[4] is not None
            current[row[1]].append(row[4])
    assert set(current) == {row[0] for row in benton.properties}, "every property has current owners"
    assert all(sum(shares) == Decimal("100.00") for shares in current.values())
    set_sizes = Counter(len(shares) for shares in current.values())
    assert set(set_sizes) <= {1, 2, 3}
    assert set_sizes[1] + set_sizes[2] > 0.9 * len(current), "typically one or two owners"
    former = [(row[5], row[6]) for row in benton.owners if row[6] is not None]
    assert former, "some properties have former owners"
    assert all(start is not None and end is not None and end >= start for start, end in former)
    assert {row[3] for row in benton.owners} == set(OWNER_TYPES)


def test_valuations_add_up_grow_and_cover_five_tax_years(benton: PacsDataset) -> None:
    years: dict[int, list[int]] = defaultdict(list)
    for _, property_id, tax_year, assessed, _, land, improvement in benton.valuations:
        assert land is not None
        assert improvement is not None
        assert land + improvement == assessed
        years[property_id].append(tax_year)
    assert all(sorted(tax_years) == [2021, 2022, 2023, 2024, 2025] for tax_years in years.values())
    vacant = {row[0] for row in benton.properties if row[8] is None}
    assert vacant, "some vacant land"
    assert all(row[6] == 0 for row in benton.valuations if row[1] in vacant)
    median_assessed = statistics.median(row[3] for row in benton.valuations if row[2] == 2025 and row[3])
    assert 200_000 < median_assessed < 600_000


def test_structures_are_plausible_and_unknown_year_is_zero(benton: PacsDataset) -> None:
    per_property = Counter(row[1] for row in benton.structures)
    vacant = {row[0] for row in benton.properties if row[8] is None}
    assert not vacant & set(per_property)
    without = len(benton.properties) - len(per_property)
    counts = Counter(per_property.values())
    assert without + counts[1] + counts[2] > 0.9 * len(benton.properties), "most have 0-2 structures"
    assert {row[2] for row in benton.structures} == set(STRUCTURE_TYPES)
    assert any(row[7] == 0 for row in benton.structures), "PACS's unknown year appears"
    assert any(row[6] == Decimal("2.5") for row in benton.structures)


def test_acreage_is_skewed_small(benton: PacsDataset) -> None:
    acres = [row[7] for row in benton.properties if row[7] is not None]
    assert statistics.median(acres) < 1
    assert max(acres) > 10


def test_column_value_types(benton: PacsDataset) -> None:
    allowed = (int, str, Decimal, date, type(None))
    for rows in benton.tables().values():
        for row in rows[:500]:
            assert all(isinstance(value, allowed) for value in row)
            assert not any(isinstance(value, bool | float) for value in row)


# -- Determinism ------------------------------------------------------------------------------------


def test_same_seed_same_data_and_different_seed_different_data() -> None:
    scale = scale_for("small")
    first, again, other = generate(scale, seed=7), generate(scale, seed=7), generate(scale, seed=8)
    assert first == again
    assert first.properties != other.properties
    assert first.owners != other.owners
    assert first.valuations != other.valuations


# -- Dirty data -------------------------------------------------------------------------------------


def test_dirty_rate_zero_plants_nothing() -> None:
    dataset = generate(scale_for("small"), seed=3, dirty_rate=0.0)
    assert dataset.dirty == {}
    assert dirty_kind_counts(dataset) == Counter()


def test_dirty_rate_plants_every_kind_and_keeps_counts_and_keys(
    benton: PacsDataset, benton_dirty: PacsDataset
) -> None:
    every_kind = {kind for kinds in DIRTY_KINDS.values() for kind in kinds}
    assert set(benton_dirty.dirty) == every_kind
    assert all(count >= 1 for count in benton_dirty.dirty.values())
    for table, rows in benton_dirty.tables().items():
        assert len(rows) == len(benton.tables()[table])
        assert [row[0] for row in rows] == [row[0] for row in benton.tables()[table]], "keys untouched"
    assert [row[1] for row in benton_dirty.owners] == [row[1] for row in benton.owners], "FKs untouched"
    assert all(row[1] for row in benton_dirty.properties), "parcelnumber NOT NULL"
    assert all(row[2] for row in benton_dirty.owners), "ownername NOT NULL"
    assert all(isinstance(row[2], int) for row in benton_dirty.valuations), "taxyear NOT NULL"
    assert all(len(str(row[4])) <= 2 for row in benton_dirty.properties), "state fits varchar(2)"
    assert all(len(row[1]) <= 20 for row in benton_dirty.properties), "parcelnumber fits varchar(20)"


def test_planted_counts_match_what_the_checkers_find(benton_dirty: PacsDataset) -> None:
    assert dirty_kind_counts(benton_dirty) == Counter(benton_dirty.dirty)


def test_dirty_rate_is_about_the_fraction_of_rows_per_table(
    benton: PacsDataset, benton_dirty: PacsDataset
) -> None:
    for table, clean_rows in benton.tables().items():
        dirty_rows = benton_dirty.tables()[table]
        changed = sum(1 for a, b in zip(clean_rows, dirty_rows, strict=True) if a != b)
        assert 0.04 * len(clean_rows) <= changed <= 0.06 * len(clean_rows), table


def test_clean_rows_do_not_depend_on_the_dirty_rate(benton: PacsDataset, benton_dirty: PacsDataset) -> None:
    changed_properties = sum(
        1 for a, b in zip(benton.properties, benton_dirty.properties, strict=True) if a != b
    )
    property_kinds = DIRTY_KINDS[PROPERTY_TABLE]
    assert changed_properties == sum(benton_dirty.dirty[kind] for kind in property_kinds)
    for table in (OWNER_TABLE, VALUATION_TABLE, STRUCTURE_TABLE):
        assert set(DIRTY_KINDS[table]) <= set(benton_dirty.dirty)


def test_everything_dirty_still_loads() -> None:
    dataset = generate(scale_for("small"), seed=2, dirty_rate=1.0)
    assert len(dataset.properties) == 200
    assert sum(dataset.dirty[kind] for kind in DIRTY_KINDS[PROPERTY_TABLE]) == 200
    assert dirty_kind_counts(dataset) == Counter(dataset.dirty)


@pytest.mark.parametrize("rate", [-0.01, 1.01, math.nan, math.inf])
def test_dirty_rate_outside_zero_to_one_is_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="dirty_rate"):
        generate(scale_for("small"), seed=1, dirty_rate=rate)


# -- Value helpers -----------------------------------------------------------------------------------


def test_value_helpers_follow_the_rules() -> None:
    import random

    rng = random.Random(5)
    for owner_count in (1, 2, 3):
        for _ in range(50):
            assert sum(split_percentages(rng, owner_count)) == Decimal("100.00")
            owner_set = make_owner_set(rng, owner_count)
            assert len(owner_set) == owner_count
            assert sum(share for _, _, share in owner_set) == Decimal("100.00")
    with pytest.raises(ValueError, match="owner_count"):
        split_percentages(rng, 4)
    with pytest.raises(ValueError, match="owner type"):
        make_owner_name(rng, "Partnership")
    assert all(
        PARCEL_NUMBER_PATTERN.fullmatch(make_parcel_number(rng, rng.randint(0, 999))) for _ in range(200)
    )
