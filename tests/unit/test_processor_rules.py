"""Business rules and the owner-share ledger: every rule both ways, and every kind of planted bad data."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from pacs_sync.sim import generator
from pacs_sync.sim.generator import AS_OF_DATE, BENTON_SCALE, DIRTY_KINDS, PacsDataset, generate, scale_for
from producer.mapping import default_mappings
from stream_processors.rules import (
    OWNER_SET_RULE,
    PARCEL_NUMBER_PATTERN,
    RULES_BY_ENTITY,
    SCHEMA_RULE,
    US_STATE_CODES,
    OwnerShare,
    OwnerShareLedger,
    Rule,
    Violation,
    all_rules,
    build_rules,
    check_row,
)

AS_OF = date(2025, 6, 30)
TABLES = {
    "properties": "Property",
    "owners": "PropertyOwner",
    "valuations": "PropertyValue",
    "structures": "Structure",
}

PROPERTY: dict[str, Any] = {
    "PropertyID": 100001,
    "ParcelNumber": "1-0289-101-0021-000",
    "Address": "8903 W Clearwater Ave",
    "City": "Kennewick",
    "State": "WA",
    "ZipCode": "99336",
    "LegalDescription": "LOT 5 BLK 3 DESERT HILLS PH 2",
    "Acreage": Decimal("0.2200"),
    "YearBuilt": 1998,
}
OWNER: dict[str, Any] = {
    "PropertyOwnerID": 2000001,
    "PropertyID": 100001,
    "OwnerName": "SMITH JOHN A",
    "OwnerType": "Individual",
    "OwnershipPercentage": Decimal("100.00"),
    "StartDate": date(2010, 5, 1),
    "EndDate": None,
}
VALUATION: dict[str, Any] = {
    "PropertyValueID": 5000001,
    "PropertyID": 100001,
    "TaxYear": 2025,
    "AssessedValue": Decimal("350000.00"),
    "MarketValue": Decimal("362000.00"),
    "LandValue": Decimal("90000.00"),
    "ImprovementValue": Decimal("260000.00"),
}
STRUCTURE: dict[str, Any] = {
    "StructureID": 30000001,
    "PropertyID": 100001,
    "StructureType": "Single Family Residence",
    "SquareFootage": 1850,
    "Condition": "Good",
    "Bedrooms": 3,
    "Bathrooms": Decimal("2.5"),
    "YearBuilt": 1998,
}
BASE_ROWS = {"properties": PROPERTY, "owners": OWNER, "valuations": VALUATION, "structures": STRUCTURE}


def rule_ids(entity: str, row: dict[str, Any], as_of: date = AS_OF) -> list[str]:
    return [v.rule_id for v in check_row(entity, row, as_of=as_of)]


# ------------------------------------------------------------------------------------------------
# Each rule, passing and failing


@pytest.mark.parametrize("entity", sorted(BASE_ROWS))
def test_base_rows_pass_every_rule(entity: str) -> None:
    assert check_row(entity, BASE_ROWS[entity], as_of=AS_OF) == []


PASSING: list[tuple[str, dict[str, Any]]] = [
    ("properties", {"ParcelNumber": "3-3610-999-9999-004"}),
    ("properties", {"ParcelNumber": " 1-0289-101-0021-000 "}),
    ("properties", {"State": "wa"}),
    ("properties", {"State": "PR"}),
    ("properties", {"State": "DC"}),
    ("properties", {"State": None}),
    ("properties", {"ZipCode": "99336-1234"}),
    ("properties", {"ZipCode": "993361234"}),
    ("properties", {"ZipCode": " 99336 "}),
    ("properties", {"Acreage": Decimal("0.0000")}),
    ("properties", {"Acreage": None}),
    ("properties", {"YearBuilt": 0}),
    ("properties", {"YearBuilt": None}),
    ("properties", {"YearBuilt": 1800}),
    ("properties", {"YearBuilt": 2026}),
    ("owners", {"OwnerName": "Tri-Cities Holdings LLC"}),
    ("owners", {"OwnershipPercentage": Decimal("0.01")}),
    ("owners", {"OwnershipPercentage": Decimal("100.00")}),
    ("owners", {"OwnershipPercentage": None}),
    ("owners", {"EndDate": date(2010, 5, 1)}),
    ("owners", {"StartDate": None, "EndDate": date(2001, 1, 1)}),
    ("owners", {"OwnerType": "llc"}),
    ("owners", {"OwnerType": "L.L.C."}),
    ("owners", {"OwnerType": None}),
    ("valuations", {"AssessedValue": Decimal("350001.00")}),  # within the 1.00 tolerance
    ("valuations", {"AssessedValue": Decimal("349999.00")}),
    ("valuations", {"AssessedValue": None}),
    ("valuations", {"MarketValue": Decimal("0.00")}),
    ("valuations", {"TaxYear": 1900}),
    ("valuations", {"TaxYear": 2026}),
    ("structures", {"SquareFootage": None}),
    ("structures", {"SquareFootage": 1}),
    ("structures", {"YearBuilt": 0}),
    ("structures", {"YearBuilt": None}),
    ("structures", {"Bedrooms": 0, "Bathrooms": Decimal("0.0")}),
    ("structures", {"Bedrooms": None, "Bathrooms": None}),
    ("structures", {"Condition": "VERY GOOD"}),
    ("structures", {"Condition": None}),
]


@pytest.mark.parametrize(("entity", "changes"), PASSING)
def test_rule_passes(entity: str, changes: dict[str, Any]) -> None:
    assert rule_ids(entity, {**BASE_ROWS[entity], **changes}) == []


FAILING: list[tuple[str, dict[str, Any], str, str]] = [
    ("properties", {"ParcelNumber": "102891010021000"}, "PROP-PARCEL-FORMAT", "error"),
    ("properties", {"ParcelNumber": "1-0289-101-0021"}, "PROP-PARCEL-FORMAT", "error"),
    ("properties", {"ParcelNumber": "1-O289-101-0021-000"}, "PROP-PARCEL-FORMAT", "error"),
    ("properties", {"ParcelNumber": "1 0289 101 0021 000"}, "PROP-PARCEL-FORMAT", "error"),
    ("properties", {"ParcelNumber": "10289-101-0021-000"}, "PROP-PARCEL-FORMAT", "error"),
    ("properties", {"ParcelNumber": "4-0289-101-0021-000"}, "PROP-PARCEL-FORMAT", "error"),
    ("properties", {"State": "XX"}, "PROP-STATE", "error"),
    ("properties", {"State": "W."}, "PROP-STATE", "error"),
    ("properties", {"State": "WS"}, "PROP-STATE", "error"),
    ("properties", {"State": ""}, "PROP-STATE", "error"),
    ("properties", {"ZipCode": None}, "PROP-ZIP-MISSING", "error"),
    ("properties", {"ZipCode": ""}, "PROP-ZIP-MISSING", "error"),
    ("properties", {"ZipCode": "   "}, "PROP-ZIP-MISSING", "error"),
    ("properties", {"ZipCode": "9933"}, "PROP-ZIP", "error"),
    ("properties", {"ZipCode": "9933612"}, "PROP-ZIP", "error"),
    ("properties", {"ZipCode": "99336-12"}, "PROP-ZIP", "error"),
    ("properties", {"ZipCode": "9933A"}, "PROP-ZIP", "error"),
    ("properties", {"ZipCode": "99336 1234"}, "PROP-ZIP", "error"),
    ("properties", {"Acreage": Decimal("-0.2200")}, "PROP-ACREAGE", "error"),
    ("properties", {"YearBuilt": 1500}, "PROP-YEAR-BUILT", "error"),
    ("properties", {"YearBuilt": 1799}, "PROP-YEAR-BUILT", "error"),
    ("properties", {"YearBuilt": 2027}, "PROP-YEAR-BUILT", "error"),
    ("properties", {"YearBuilt": -1}, "PROP-YEAR-BUILT", "error"),
    ("owners", {"OwnerName": "   "}, "OWN-NAME-BLANK", "error"),
    ("owners", {"OwnerName": ""}, "OWN-NAME-BLANK", "error"),
    ("owners", {"OwnershipPercentage": Decimal("0.00")}, "OWN-PERCENT-RANGE", "error"),
    ("owners", {"OwnershipPercentage": Decimal("100.01")}, "OWN-PERCENT-RANGE", "error"),
    ("owners", {"OwnershipPercentage": Decimal("250.00")}, "OWN-PERCENT-RANGE", "error"),
    ("owners", {"OwnershipPercentage": Decimal("-5.00")}, "OWN-PERCENT-RANGE", "error"),
    ("owners", {"EndDate": date(2010, 4, 30)}, "OWN-DATES", "error"),
    ("owners", {"OwnerType": "Alien Overlord"}, "OWN-TYPE", "warning"),
    ("valuations", {"MarketValue": Decimal("-362000.00")}, "VAL-NON-NEGATIVE", "error"),
    ("valuations", {"MarketValue": Decimal("-1.00")}, "VAL-NON-NEGATIVE", "error"),
    ("valuations", {"AssessedValue": Decimal("350001.01")}, "VAL-SUM", "error"),
    ("valuations", {"AssessedValue": Decimal("300000.00")}, "VAL-SUM", "error"),
    ("valuations", {"TaxYear": 1899}, "VAL-TAX-YEAR", "error"),
    ("valuations", {"TaxYear": 2027}, "VAL-TAX-YEAR", "error"),
    ("structures", {"SquareFootage": 0}, "STR-SQFT", "error"),
    ("structures", {"SquareFootage": -1850}, "STR-SQFT", "error"),
    ("structures", {"YearBuilt": 2150}, "STR-YEAR-BUILT", "error"),
    ("structures", {"YearBuilt": 1500}, "STR-YEAR-BUILT", "error"),
    ("structures", {"Bedrooms": -1}, "STR-ROOMS", "error"),
    ("structures", {"Bathrooms": Decimal("-0.5")}, "STR-ROOMS", "error"),
    ("structures", {"Condition": "Splendid"}, "STR-CONDITION", "warning"),
]


@pytest.mark.parametrize(("entity", "changes", "rule_id", "severity"), FAILING)
def test_rule_fails(entity: str, changes: dict[str, Any], rule_id: str, severity: str) -> None:
    violations = check_row(entity, {**BASE_ROWS[entity], **changes}, as_of=AS_OF)
    assert [(v.rule_id, v.severity) for v in violations] == [(rule_id, severity)]
    (field_name, value), *_ = changes.items()
    assert violations[0].field == field_name
    assert violations[0].value == (None if value is None else str(value))
    assert violations[0].message


def test_land_and_market_values_both_negative_give_a_violation_each() -> None:
    row = {**VALUATION, "LandValue": Decimal("-90000.00"), "MarketValue": Decimal("-1.00")}
    violations = check_row("valuations", row, as_of=AS_OF)
    assert [(v.rule_id, v.field) for v in violations] == [
        ("VAL-NON-NEGATIVE", "MarketValue"),
        ("VAL-NON-NEGATIVE", "LandValue"),
        ("VAL-SUM", "AssessedValue"),
    ]


def test_a_row_with_every_sign_flipped_still_adds_up_but_is_negative() -> None:
    row = {
        **VALUATION,
        "AssessedValue": Decimal("-350000.00"),
        "LandValue": Decimal("-90000.00"),
        "ImprovementValue": Decimal("-260000.00"),
    }
    violations = check_row("valuations", row, as_of=AS_OF)
    assert [(v.rule_id, v.field) for v in violations] == [
        ("VAL-NON-NEGATIVE", "AssessedValue"),
        ("VAL-NON-NEGATIVE", "LandValue"),
        ("VAL-NON-NEGATIVE", "ImprovementValue"),
    ]


@pytest.mark.parametrize("entity", ["properties", "structures"])
def test_year_built_zero_means_unknown_and_is_no_violation(entity: str) -> None:
    assert check_row(entity, {**BASE_ROWS[entity], "YearBuilt": 0}, as_of=AS_OF) == []


def test_plausible_years_follow_as_of() -> None:
    row = {**PROPERTY, "YearBuilt": 2031}
    assert rule_ids("properties", row, as_of=date(2029, 1, 1)) == ["PROP-YEAR-BUILT"]
    assert rule_ids("properties", row, as_of=date(2030, 1, 1)) == []
    assert check_row("properties", PROPERTY) == []  # default: today


def test_value_sum_tolerance_is_configurable() -> None:
    strict = build_rules(value_sum_tolerance=Decimal("0.00"))
    loose = build_rules(value_sum_tolerance=Decimal("100.00"))
    row = {**VALUATION, "AssessedValue": Decimal("350050.00")}
    assert [v.rule_id for v in check_row("valuations", row, as_of=AS_OF, rules=strict)] == ["VAL-SUM"]
    assert check_row("valuations", row, as_of=AS_OF, rules=loose) == []
    exact = {**VALUATION, "AssessedValue": Decimal("350000.01")}
    assert [v.rule_id for v in check_row("valuations", exact, as_of=AS_OF, rules=strict)] == ["VAL-SUM"]


def test_unknown_entity_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        check_row("parcels", PROPERTY)


def test_rule_registry_is_complete_and_documented() -> None:
    ids = {rule.id for rule in all_rules()}
    assert ids >= {
        "PROP-PARCEL-FORMAT",
        "PROP-STATE",
        "PROP-ZIP",
        "PROP-ZIP-MISSING",
        "PROP-ACREAGE",
        "PROP-YEAR-BUILT",
        "OWN-PERCENT-RANGE",
        "OWN-DATES",
        "OWN-SET-OVER-100",
        "VAL-NON-NEGATIVE",
        "VAL-SUM",
        "VAL-TAX-YEAR",
        "STR-SQFT",
        "STR-YEAR-BUILT",
        "STR-ROOMS",
        "SCHEMA",
    }
    assert set(RULES_BY_ENTITY) == set(TABLES)
    for entity, rules in RULES_BY_ENTITY.items():
        fields = set(BASE_ROWS[entity])
        for rule in rules:
            assert rule.check is not None, rule.id
            assert rule.field in fields, rule.id
            assert rule.severity in ("error", "warning")
            assert rule.id.split("-")[0] in {"PROP", "OWN", "VAL", "STR"}
    assert SCHEMA_RULE.check is None
    assert OWNER_SET_RULE.check is None


def test_rule_and_violation_shapes() -> None:
    rule = Rule("X-TEST", "warning", "State", "message")
    violation = rule.violation(None)
    assert violation == Violation("X-TEST", "warning", "State", "message", None)
    assert rule.violation(Decimal("1.50"), field_name="Other", message="m").value == "1.50"
    assert violation.as_record() == {
        "rule_id": "X-TEST",
        "severity": "warning",
        "field": "State",
        "message": "message",
        "value": None,
    }


def test_parcel_pattern_is_the_generators() -> None:
    assert PARCEL_NUMBER_PATTERN.pattern == generator.PARCEL_NUMBER_PATTERN.pattern


def test_state_codes_are_the_usps_list() -> None:
    assert len(US_STATE_CODES) == 50 + 1 + 5 + 3 + 3  # states, DC, territories, freely associated, military
    assert {"WA", "OR", "ID", "DC", "PR", "GU", "VI", "AS", "MP"} <= US_STATE_CODES
    assert not {"XX", "ZZ", "WS", "W.", "UK"} & US_STATE_CODES


# ------------------------------------------------------------------------------------------------
# The owner-share ledger


def owner(
    owner_id: int, share: str | None, *, property_id: int = 100001, **dates: date | None
) -> dict[str, Any]:
    return {
        **OWNER,
        "PropertyOwnerID": owner_id,
        "PropertyID": property_id,
        "OwnershipPercentage": None if share is None else Decimal(share),
        "StartDate": dates.get("start", date(2010, 5, 1)),
        "EndDate": dates.get("end"),
    }


def test_ledger_reports_a_set_over_100_and_accepts_the_correction() -> None:
    ledger = OwnerShareLedger()
    assert ledger.apply(owner(1, "60.00"), 1, as_of=AS_OF) is None
    over = ledger.apply(owner(2, "60.00"), 2, as_of=AS_OF)
    assert over is not None
    assert (over.rule_id, over.severity, over.field, over.value) == (
        "OWN-SET-OVER-100",
        "error",
        "OwnershipPercentage",
        "120.00",
    )
    assert "100001" in over.message
    assert ledger.total(100001, AS_OF) == Decimal("120.00")  # recorded even though it broke the rule
    assert ledger.apply(owner(1, "40.00"), 1, as_of=AS_OF) is None  # the correction brings it to 100
    assert ledger.total(100001, AS_OF) == Decimal("100.00")


def test_ledger_allows_exactly_100_split_three_ways() -> None:
    ledger = OwnerShareLedger()
    for owner_id, share in ((1, "33.33"), (2, "33.33"), (3, "33.34")):
        assert ledger.apply(owner(owner_id, share), owner_id, as_of=AS_OF) is None
    assert ledger.apply(owner(4, "0.01"), 4, as_of=AS_OF) is not None


def test_ledger_delete_removes_the_owner() -> None:
    ledger = OwnerShareLedger()
    ledger.apply(owner(1, "100.00"), 1, as_of=AS_OF)
    assert ledger.apply(None, 1, property_id=100001, as_of=AS_OF) is None
    assert ledger.total(100001, AS_OF) == 0
    ledger.apply(owner(2, "100.00"), 2, as_of=AS_OF)
    assert ledger.apply(None, 2, as_of=AS_OF) is None  # the ledger remembers the owner's property
    assert ledger.property_ids() == []
    assert ledger.apply(None, 99, as_of=AS_OF) is None  # an owner never seen: nothing to do


def test_ended_owners_do_not_count() -> None:
    ledger = OwnerShareLedger()
    assert ledger.apply(owner(1, "100.00", end=date(2020, 3, 1)), 1, as_of=AS_OF) is None
    assert ledger.apply(owner(2, "100.00", start=date(2020, 3, 1)), 2, as_of=AS_OF) is None
    assert ledger.apply(owner(3, "100.00", end=AS_OF), 3, as_of=AS_OF) is None  # ends today: not current
    assert ledger.total(100001, AS_OF) == Decimal("100.00")
    assert set(ledger.shares(100001)) == {2}


def test_a_sale_ending_current_owners_first_never_exceeds_100() -> None:
    ledger = OwnerShareLedger()
    ledger.apply(owner(1, "50.00"), 1, as_of=AS_OF)
    ledger.apply(owner(2, "50.00"), 2, as_of=AS_OF)
    sale = date(2025, 6, 1)
    assert ledger.apply(owner(1, "50.00", end=sale), 1, as_of=AS_OF) is None
    assert ledger.apply(owner(2, "50.00", end=sale), 2, as_of=AS_OF) is None
    assert ledger.apply(owner(3, "100.00", start=sale), 3, as_of=AS_OF) is None


def test_a_sale_recorded_ahead_of_time_is_checked_on_its_dates() -> None:
    ledger = OwnerShareLedger()
    ledger.apply(owner(1, "100.00"), 1, as_of=AS_OF)
    sale = date(2025, 9, 1)  # after as_of: the seller is current until then, the buyer from then on
    assert ledger.apply(owner(1, "100.00", end=sale), 1, as_of=AS_OF) is None
    assert ledger.apply(owner(2, "100.00", start=sale), 2, as_of=AS_OF) is None
    assert ledger.total(100001, AS_OF) == Decimal("100.00")
    assert ledger.total(100001, sale) == Decimal("100.00")
    later = date(2025, 10, 1)
    assert ledger.apply(owner(2, "100.00", start=sale), 2, as_of=later) is None  # seller dropped by now
    # A buyer recorded ahead of time whose share does not fit is reported at once.
    assert ledger.apply(owner(3, "50.00", start=sale), 3, as_of=AS_OF) is not None


def test_owner_moved_to_another_property_leaves_the_first() -> None:
    ledger = OwnerShareLedger()
    ledger.apply(owner(1, "100.00"), 1, as_of=AS_OF)
    assert ledger.apply(owner(1, "100.00", property_id=100002), 1, as_of=AS_OF) is None
    assert ledger.total(100001, AS_OF) == 0
    assert ledger.total(100002, AS_OF) == Decimal("100.00")
    fresh = OwnerShareLedger.from_state({100002: ledger.to_state(100002)})  # without the owner index
    fresh.load_state(100003, {"1": "100.00"})
    assert fresh.apply(owner(1, "100.00", property_id=100002), 1, property_id=100003, as_of=AS_OF) is None
    assert fresh.property_ids() == [100002]


def test_null_or_zero_shares_are_not_counted() -> None:
    ledger = OwnerShareLedger()
    assert ledger.apply(owner(1, None), 1, as_of=AS_OF) is None
    assert ledger.apply(owner(2, "0.00"), 2, as_of=AS_OF) is None
    assert ledger.apply(owner(3, "100.00"), 3, as_of=AS_OF) is None
    assert ledger.to_state(100001) == {"3": "100.00"}


def test_ledger_state_round_trip() -> None:
    ledger = OwnerShareLedger()
    ledger.apply(owner(1, "50.00"), 1, as_of=AS_OF)
    ledger.apply(owner(2, "50.00", end=date(2025, 12, 31)), 2, as_of=AS_OF)
    ledger.apply(owner(3, "50.00", start=date(2026, 1, 1)), 3, as_of=AS_OF)
    ledger.apply(owner(9, "100.00", property_id=100002), 9, as_of=AS_OF)
    state = ledger.to_state(100001)
    assert state == {"1": "50.00", "2": "50.00||2025-12-31", "3": "50.00|2026-01-01|"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in state.items())  # JSON-safe
    copy = OwnerShareLedger.from_state({100001: state, 100002: ledger.to_state(100002)})
    assert copy.to_state(100001) == state
    assert copy.shares(100001) == ledger.shares(100001)
    assert copy.property_ids() == [100001, 100002]
    assert copy.apply(owner(4, "0.01"), 4, as_of=AS_OF) is not None  # 1 + 2 + 4 current: 100.01
    copy.load_state(100001, None)
    assert copy.to_state(100001) == {}
    assert copy.apply(None, 1, as_of=AS_OF) is None
    assert ledger.to_state(424242) == {}


def test_owner_share_text_round_trip_and_errors() -> None:
    for share in (
        OwnerShare(Decimal("33.33")),
        OwnerShare(Decimal("1.00"), date(2026, 1, 1), date(2027, 1, 1)),
    ):
        assert OwnerShare.from_text(share.to_text()) == share
    with pytest.raises(ValueError, match="owner share"):
        OwnerShare.from_text("half")
    with pytest.raises(ValueError):
        OwnerShareLedger.from_state({1: {"x": "50.00"}})


# ------------------------------------------------------------------------------------------------
# The generator's data: clean data passes, every planted bad row is caught by the right rule


def as_rows(dataset: PacsDataset, entity: str) -> list[dict[str, Any]]:
    fields = default_mappings()[TABLES[entity]].fields
    return [dict(zip(fields, values, strict=True)) for values in getattr(dataset, entity)]


def errors_of(entity: str, row: dict[str, Any]) -> set[str]:
    return {v.rule_id for v in check_row(entity, row, as_of=AS_OF_DATE) if v.severity == "error"}


def test_clean_benton_data_has_no_error_and_no_warning() -> None:
    dataset = generate(BENTON_SCALE, seed=1)
    found: Counter[str] = Counter()
    for entity in TABLES:
        for row in as_rows(dataset, entity):
            found.update(v.rule_id for v in check_row(entity, row, as_of=AS_OF_DATE))
    ledger = OwnerShareLedger()
    for row in as_rows(dataset, "owners"):
        over = ledger.apply(row, row["PropertyOwnerID"], as_of=AS_OF_DATE)
        if over is not None:
            found[over.rule_id] += 1
    assert found == Counter()


def planted(
    clean: PacsDataset, dirty: PacsDataset, entity: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(clean row, dirty row) for every row the generator changed."""
    for before, after in zip(as_rows(clean, entity), as_rows(dirty, entity), strict=True):
        if before != after:
            yield before, after


def planted_kind(entity: str, clean_row: dict[str, Any], dirty_row: dict[str, Any]) -> str:
    """Which DIRTY_KINDS entry changed a row, from what changed (one kind per row)."""
    changed = {name for name in clean_row if clean_row[name] != dirty_row[name]}
    if entity == "properties":
        if changed == {"ZipCode"}:
            return "missing_zip" if not dirty_row["ZipCode"] else "zip_wrong_length"
        return {
            "State": "invalid_state",
            "Acreage": "negative_acreage",
            "ParcelNumber": "malformed_parcel_number",
            "YearBuilt": "implausible_year_built",
        }[changed.pop()]
    if entity == "owners":
        if changed == {"EndDate"}:
            return "end_before_start"
        if (
            dirty_row["OwnershipPercentage"] in (Decimal("60.00"), Decimal("40.00"))
            and dirty_row["EndDate"] is None
        ):
            return "owner_set_over_100"
        return "ownership_percentage_out_of_range"
    if entity == "valuations":
        negative = any(dirty_row[name] is not None and dirty_row[name] < 0 for name in changed)
        return "negative_value" if negative else "value_sum_mismatch"
    return "structure_implausible_year_built" if changed == {"YearBuilt"} else "negative_square_footage"


EXPECTED_RULE = {
    "missing_zip": "PROP-ZIP-MISSING",
    "zip_wrong_length": "PROP-ZIP",
    "invalid_state": "PROP-STATE",
    "negative_acreage": "PROP-ACREAGE",
    "malformed_parcel_number": "PROP-PARCEL-FORMAT",
    "implausible_year_built": "PROP-YEAR-BUILT",
    "end_before_start": "OWN-DATES",
    "ownership_percentage_out_of_range": "OWN-PERCENT-RANGE",
    "owner_set_over_100": "OWN-SET-OVER-100",
    "negative_value": "VAL-NON-NEGATIVE",
    "value_sum_mismatch": "VAL-SUM",
    "structure_implausible_year_built": "STR-YEAR-BUILT",
    "negative_square_footage": "STR-SQFT",
}


def test_expected_rules_cover_every_dirty_kind() -> None:
    assert set(EXPECTED_RULE) == {kind for kinds in DIRTY_KINDS.values() for kind in kinds}


@pytest.mark.parametrize("seed", [1, 7])
def test_every_planted_bad_row_is_caught_by_its_rule(seed: int) -> None:
    scale = scale_for("small")
    clean, dirty = generate(scale, seed=seed), generate(scale, seed=seed, dirty_rate=0.3)
    caught: Counter[str] = Counter()
    planted_rows: dict[str, set[int]] = defaultdict(set)
    over_100_properties: set[int] = set()
    for entity in ("properties", "valuations", "structures", "owners"):
        key_field = default_mappings()[TABLES[entity]].key_field
        for clean_row, dirty_row in planted(clean, dirty, entity):
            kind = planted_kind(entity, clean_row, dirty_row)
            planted_rows[entity].add(dirty_row[key_field])
            if kind == "owner_set_over_100":
                over_100_properties.add(dirty_row["PropertyID"])
                assert errors_of(entity, dirty_row) == set()  # 60 + 60: each row is fine alone
                continue
            assert EXPECTED_RULE[kind] in errors_of(entity, dirty_row), (kind, dirty_row)
            caught[kind] += 1

    # Cross-row: replay the owners in key order through the ledger.
    ledger = OwnerShareLedger()
    flagged: set[int] = set()
    for row in as_rows(dirty, "owners"):
        over = ledger.apply(row, row["PropertyOwnerID"], as_of=AS_OF_DATE)
        if over is not None:
            flagged.add(row["PropertyID"])
            assert row["PropertyOwnerID"] in planted_rows["owners"] or any(
                other["PropertyOwnerID"] in planted_rows["owners"]
                for other in as_rows(dirty, "owners")
                if other["PropertyID"] == row["PropertyID"]
            )
    assert over_100_properties <= flagged
    caught["owner_set_over_100"] = len(over_100_properties)
    assert caught == Counter(dirty.dirty)  # exactly what the generator says it planted

    # And no clean row is rejected by a row rule.
    for entity in TABLES:
        key_field = default_mappings()[TABLES[entity]].key_field
        for row in as_rows(dirty, entity):
            if row[key_field] not in planted_rows[entity]:
                assert errors_of(entity, row) == set(), row
