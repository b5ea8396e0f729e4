"""The TerraFusion transformation: names, addresses, cities, ZIP+4, enums, decimals and record shapes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from pacs_sync.sim.generator import CONDITIONS, OWNER_TYPES, generate, make_owner_name, scale_for
from stream_processors.models import (
    CONDITION_VOCABULARY,
    OUTPUT_FIELDS,
    OWNER_TYPE_VOCABULARY,
    OwnerType,
    StructureCondition,
    condition_of,
    owner_type_of,
    vocabulary_key,
)
from stream_processors.transform import (
    TRANSFORMS,
    capitalize_word,
    clean_text,
    condition_value,
    deleted_fields,
    normalize_address,
    normalize_city,
    normalize_owner_name,
    normalize_state,
    output_key,
    owner_type_value,
    split_zip,
    transform_owner,
    transform_property,
    transform_structure,
    transform_valuation,
    year_or_none,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("SMITH JOHN A", "Smith John A"),
        ("TRI-CITIES HOLDINGS LLC", "Tri-Cities Holdings LLC"),
        ("  O'BRIEN   MARY K ", "O'Brien Mary K"),
        ("MCDONALD RONALD", "McDonald Ronald"),
        ("VAN HOOSE SUSAN", "Van Hoose Susan"),
        ("ESTATE OF SMITH JOHN A", "Estate of Smith John A"),
        ("SMITH JOHN A ESTATE", "Smith John A Estate"),
        ("SMITH JOHN A TRUSTEE", "Smith John A Trustee"),
        ("UNITED STATES OF AMERICA", "United States of America"),
        ("CITY OF WEST RICHLAND", "City of West Richland"),
        ("BENTON PUD", "Benton PUD"),
        ("RICHLAND SCHOOL DISTRICT 400", "Richland School District 400"),
        ("CASCADE LAND CO", "Cascade Land CO"),
        ("GATEWAY PARTNERS LP", "Gateway Partners LP"),
        ("BLUE MOUNTAIN FARMS INC", "Blue Mountain Farms INC"),
        ("RED MOUNTAIN CAPITAL CORP", "Red Mountain Capital Corp"),
        ("JONES DAVID III", "Jones David III"),
        ("JONES DAVID IV", "Jones David IV"),
        ("SMITH, JOHN A.", "Smith, John A."),
        ("John A Smith", "John A Smith"),  # converted records are already in this form
        ("THE SMITH FAMILY TRUST", "The Smith Family Trust"),
        ("SMITH JOHN & MARY", "Smith John & Mary"),
    ],
)
def test_owner_names(raw: str, expected: str) -> None:
    assert normalize_owner_name(raw) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("JOHN'S", "John's"),
        ("D'ANGELO", "D'Angelo"),
        ("MCCOY", "McCoy"),
        ("MC", "Mc"),
        ("10TH", "10th"),
        ("21ST", "21st"),
        ("12B", "12B"),
        ("ÉLODIE", "Élodie"),
        ("ﬁsh", "Fish"),  # a ligature whose upper case is two letters expands, loses none
        ("ﬂOWERS", "Flowers"),
        ("ŉ", "ʼN"),
        ("o'ﬁsh", "O'Fish"),
        ("MCﬁsh", "McFish"),
        ("", ""),
        ("...", "..."),
    ],
)
def test_capitalize_word(word: str, expected: str) -> None:
    assert capitalize_word(word) == expected


# Every character whose upper or title case is not a single character (ligatures, ß, ŉ, ΐ…): the
# ones a "first character upper-cased" rule truncates.
_MULTI_CHARACTER_CASES = [
    c for c in map(chr, range(0x80, 0x30000)) if len(c.upper()) > 1 or len(c.title()) > 1
]


def test_title_casing_keeps_every_letter_of_words_starting_with_special_cased_characters() -> None:
    assert len(_MULTI_CHARACTER_CASES) > 100  # the set is what it claims to be
    for first in _MULTI_CHARACTER_CASES:
        for word in (first, f"{first}SH", f"{first}sh", f"X{first}"):
            result = capitalize_word(word)
            assert result.casefold() == word.casefold(), (word, result)
    assert normalize_owner_name("ﬁsh and chips llc") == "Fish and Chips LLC"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("8903 W CLEARWATER AVENUE", "8903 W Clearwater Ave"),
        ("8903 W Clearwater Ave", "8903 W Clearwater Ave"),
        ("8903  w  clearwater  ave ", "8903 W Clearwater Ave"),
        ("412 S 38TH AVE", "412 S 38th Ave"),
        ("1500 GEORGE WASHINGTON WAY", "1500 George Washington Way"),
        ("77 MAIN STREET NE APT 4", "77 Main St NE Apt 4"),
        ("77 MAIN STREET #4", "77 Main St #4"),
        ("12 N KELLOGG STREET SW", "12 N Kellogg St SW"),
        ("12345 N RD 170 PR SE", "12345 N Rd 170 PR SE"),
        ("1234 ROAD 68", "1234 Road 68"),  # a road named by number: not a street type
        ("55 OLD INLAND EMPIRE HIGHWAY", "55 Old Inland Empire Hwy"),
        ("12 HIGHWAY 221", "12 Hwy 221"),
        ("9 HILLS WEST WAY", "9 Hills West Way"),
        ("3 N WEST ST", "3 N West St"),
        ("100 MT ADAMS VIEW DRIVE", "100 Mt Adams View Dr"),
        ("5 MAPLE LANE", "5 Maple Ln"),
        ("5 MAPLE COURT", "5 Maple Ct"),
        ("5 MAPLE BOULEVARD", "5 Maple Blvd"),
        ("5 MAPLE PLACE", "5 Maple Pl"),
        ("5 MAPLE ROAD", "5 Maple Rd"),
        ("5 AVENUE OF THE STARS", "5 Avenue of the Stars"),
        ("PO BOX 12", "PO Box 12"),
        ("   ", None),
        (None, None),
    ],
)
def test_addresses(raw: str | None, expected: str | None) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("WEST RICHLAND", "West Richland"),
        ("benton city", "Benton City"),
        ("  KENNEWICK ", "Kennewick"),
        ("", None),
        (None, None),
    ],
)
def test_cities(raw: str | None, expected: str | None) -> None:
    assert normalize_city(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("99336", ("99336", None)),
        ("99336-1234", ("99336", "1234")),
        ("993361234", ("99336", "1234")),
        (" 99336 ", ("99336", None)),
        ("9933", (None, None)),
        ("9933612", (None, None)),
        ("99336 1234", (None, None)),
        ("9933A", (None, None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_zip_split(raw: str | None, expected: tuple[str | None, str | None]) -> None:
    assert split_zip(raw) == expected


def test_small_text_helpers() -> None:
    assert clean_text("  LOT 5   BLK 3\tDESERT HILLS ") == "LOT 5 BLK 3 DESERT HILLS"
    assert clean_text(" ") is None
    assert clean_text(None) is None
    assert normalize_state(" wa ") == "WA"
    assert normalize_state("  ") is None
    assert normalize_state(None) is None
    assert year_or_none(0) is None
    assert year_or_none(None) is None
    assert year_or_none(1998) == 1998


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Individual", "individual"),
        ("JOINT", "joint"),
        ("Trust", "trust"),
        ("Corporation", "corporation"),
        ("corp", "corporation"),
        ("LLC", "llc"),
        ("L.L.C.", "llc"),
        ("Government", "government"),
        ("Estate", "estate"),
        (None, "unknown"),
        ("", "unknown"),
        ("Alien Overlord", "unknown"),
    ],
)
def test_owner_types(raw: str | None, expected: str) -> None:
    assert owner_type_value(raw) == expected
    assert OwnerType(expected).value == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Poor", "poor"),
        ("Fair", "fair"),
        ("Average", "average"),
        ("AVG", "average"),
        ("Good", "good"),
        ("Very Good", "very_good"),
        ("VERY-GOOD", "very_good"),
        ("vg", "very_good"),
        ("Excellent", "excellent"),
        (None, "unknown"),
        ("Splendid", "unknown"),
    ],
)
def test_conditions(raw: str | None, expected: str) -> None:
    assert condition_value(raw) == expected
    assert StructureCondition(expected).value == expected


def test_vocabularies() -> None:
    assert vocabulary_key(" very_good ") == "VERY GOOD"
    assert owner_type_of("nonsense") is None  # the OWN-TYPE rule warns about these
    assert condition_of("nonsense") is None
    assert set(OWNER_TYPE_VOCABULARY.values()) == {t.value for t in OwnerType} - {"unknown"}
    assert set(CONDITION_VOCABULARY.values()) == {c.value for c in StructureCondition} - {"unknown"}
    assert {owner_type_value(t) for t in OWNER_TYPES} == set(OWNER_TYPE_VOCABULARY.values())
    assert {condition_value(c) for c in CONDITIONS} == set(CONDITION_VOCABULARY.values())


def test_generator_values_are_already_normal() -> None:
    dataset = generate(scale_for("small"), seed=3)
    for row in dataset.properties:
        address, city = row[2], row[3]
        assert normalize_address(address) == address
        assert normalize_city(city) == city


def test_generator_owner_names_title_case_sensibly() -> None:
    import random

    rng = random.Random(5)
    for owner_type in OWNER_TYPES:
        for _ in range(50):
            name = make_owner_name(rng, owner_type)
            normalized = normalize_owner_name(name)
            assert normalized is not None
            assert normalized.upper() == " ".join(name.upper().split())  # only the case changes
            assert normalized != normalized.upper() or len(normalized) <= 3


# ------------------------------------------------------------------------------------------------
# Records


def test_property_record() -> None:
    row: dict[str, Any] = {
        "PropertyID": 100001,
        "ParcelNumber": " 1-0289-101-0021-000 ",
        "Address": "8903 W CLEARWATER AVENUE",
        "City": "KENNEWICK",
        "State": "wa",
        "ZipCode": "99336-1234",
        "LegalDescription": "LOT 5  BLK 3 DESERT HILLS",
        "Acreage": Decimal("0.22"),
        "YearBuilt": 0,
    }
    record = transform_property(row)
    assert record == {
        "property_id": 100001,
        "parcel_number": "1-0289-101-0021-000",
        "address": "8903 W Clearwater Ave",
        "city": "Kennewick",
        "state": "WA",
        "zip5": "99336",
        "zip4": "1234",
        "legal_description": "LOT 5 BLK 3 DESERT HILLS",
        "acreage": Decimal("0.2200"),
        "year_built": None,
    }
    assert str(record["acreage"]) == "0.2200"
    assert tuple(record) == OUTPUT_FIELDS["properties"]


def test_owner_record() -> None:
    row = {
        "PropertyOwnerID": 2000001,
        "PropertyID": 100001,
        "OwnerName": "TRI-CITIES HOLDINGS LLC",
        "OwnerType": "LLC",
        "OwnershipPercentage": Decimal("50"),
        "StartDate": date(2010, 5, 1),
        "EndDate": None,
    }
    record = transform_owner(row)
    assert record == {
        "owner_id": 2000001,
        "property_id": 100001,
        "owner_name": "Tri-Cities Holdings LLC",
        "owner_type": "llc",
        "ownership_pct": Decimal("50.00"),
        "start_date": date(2010, 5, 1),
        "end_date": None,
    }
    assert str(record["ownership_pct"]) == "50.00"
    assert type(record["owner_type"]) is str
    assert tuple(record) == OUTPUT_FIELDS["owners"]


def test_valuation_record() -> None:
    row = {
        "PropertyValueID": 5000001,
        "PropertyID": 100001,
        "TaxYear": 2025,
        "AssessedValue": Decimal("350000"),
        "MarketValue": None,
        "LandValue": Decimal("90000.00"),
        "ImprovementValue": Decimal("260000.0"),
    }
    record = transform_valuation(row)
    assert [str(record[name]) for name in ("assessed_value", "land_value", "improvement_value")] == [
        "350000.00",
        "90000.00",
        "260000.00",
    ]
    assert record["market_value"] is None
    assert (record["valuation_id"], record["property_id"], record["tax_year"]) == (5000001, 100001, 2025)
    assert tuple(record) == OUTPUT_FIELDS["valuations"]


def test_structure_record() -> None:
    row = {
        "StructureID": 30000001,
        "PropertyID": 100001,
        "StructureType": " Single  Family Residence ",
        "SquareFootage": 1850,
        "Condition": "Very Good",
        "Bedrooms": 3,
        "Bathrooms": Decimal("2"),
        "YearBuilt": 0,
    }
    record = transform_structure(row)
    assert record == {
        "structure_id": 30000001,
        "property_id": 100001,
        "structure_type": "Single Family Residence",
        "square_feet": 1850,
        "condition": "very_good",
        "bedrooms": 3,
        "bathrooms": Decimal("2.0"),
        "year_built": None,
    }
    assert str(record["bathrooms"]) == "2.0"
    assert tuple(record) == OUTPUT_FIELDS["structures"]


@pytest.mark.parametrize("entity", sorted(OUTPUT_FIELDS))
def test_delete_fields_and_keys(entity: str) -> None:
    fields = deleted_fields(entity, 7)
    key_field = OUTPUT_FIELDS[entity][0]
    assert tuple(fields) == OUTPUT_FIELDS[entity]
    assert fields[key_field] == 7
    assert all(value is None for name, value in fields.items() if name != key_field)
    assert output_key(entity, 7) == {key_field: 7}
    assert entity in TRANSFORMS
