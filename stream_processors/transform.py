"""The TerraFusion model: pure transformation of validated PACS rows into snake_case records.

What changes on the way (everything else is copied):

* text is trimmed and its whitespace collapsed; a blank text becomes None;
* owner names are title-cased the way people write them: ``SMITH JOHN A`` → ``Smith John A``,
  ``TRI-CITIES HOLDINGS LLC`` → ``Tri-Cities Holdings LLC``, ``O'BRIEN`` → ``O'Brien``,
  ``MCDONALD`` → ``McDonald``, ``ESTATE OF …`` → ``Estate of …``; company forms and generational
  suffixes (LLC, INC, CO, LP, LLP, II, III, IV…) stay upper case;
* addresses are title-cased with directionals upper case (N, S, E, W, NE, NW, SE, SW) and the street
  type abbreviated (``AVENUE`` → ``Ave``; St, Rd, Dr, Ln, Ct, Blvd, Pl, Way, Hwy) when it is in the
  street-type position – last, before trailing directionals or a unit – so ``Road 68`` stays a name;
* cities are title-cased (``WEST RICHLAND`` → ``West Richland``), states upper-cased;
* a ZIP+4 is split into ``zip5`` and ``zip4``;
* decimals keep their source scale (money 2 places, acreage 4, percentages 2, bathrooms 1);
* ``YearBuilt`` 0 (PACS for "unknown") becomes None;
* owner types and structure conditions map to :class:`~stream_processors.models.OwnerType` and
  :class:`~stream_processors.models.StructureCondition` values (``unknown`` when unmapped).

The functions expect rows that passed :mod:`stream_processors.validation`'s shape check; they do not
validate business rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

from stream_processors.models import (
    OUTPUT_FIELDS,
    OUTPUT_KEY_FIELDS,
    OwnerType,
    StructureCondition,
    condition_of,
    owner_type_of,
)

logger = logging.getLogger(__name__)

CENTS: Final = Decimal("0.01")
ACRE_PLACES: Final = Decimal("0.0001")
HALF_UNITS: Final = Decimal("0.1")

DIRECTIONALS: Final = frozenset({"N", "S", "E", "W", "NE", "NW", "SE", "SW"})
STREET_TYPES: Final[Mapping[str, str]] = {
    "AVE": "Ave",
    "AV": "Ave",
    "AVENUE": "Ave",
    "ST": "St",
    "STR": "St",
    "STREET": "St",
    "RD": "Rd",
    "ROAD": "Rd",
    "DR": "Dr",
    "DRIVE": "Dr",
    "LN": "Ln",
    "LANE": "Ln",
    "CT": "Ct",
    "COURT": "Ct",
    "BLVD": "Blvd",
    "BOULEVARD": "Blvd",
    "PL": "Pl",
    "PLACE": "Pl",
    "WAY": "Way",
    "WY": "Way",
    "HWY": "Hwy",
    "HIGHWAY": "Hwy",
}
"""Street-type spellings (upper case) and their TerraFusion abbreviation."""
UNIT_DESIGNATORS: Final = frozenset({"APT", "UNIT", "STE", "SUITE", "SPC", "SPACE", "BLDG", "TRLR", "#"})
NAME_UPPER_WORDS: Final = frozenset(
    {"LLC", "INC", "CO", "LP", "LLP", "LLLP", "PLLC", "PC", "II", "III", "IV", "PUD", "USA", "DBA", "FBO"}
)
"""Words of owner names that stay upper case (company forms, generational suffixes, acronyms)."""
ADDRESS_UPPER_WORDS: Final = DIRECTIONALS | {"PO", "PR", "US", "SR"}
"""Words of addresses that stay upper case (directionals, PO Box, private road, US/state routes)."""
SMALL_WORDS: Final = frozenset({"OF", "AND", "THE"})
"""Lower case unless first: ``Estate of …``, ``City of Kennewick``, ``United States of America``."""

_ORDINAL = re.compile(r"\A[0-9]+(?:ST|ND|RD|TH)\Z")
_TRAILING_PUNCTUATION = ".,;:"
_CACHE_SIZE = 65_536


# -- Text ------------------------------------------------------------------------------------------


def clean_text(value: str | None) -> str | None:
    """Trim and collapse whitespace; None for None or a blank text."""
    if value is None:
        return None
    cleaned = " ".join(value.split())
    return cleaned or None


def capitalize_word(word: str, upper_words: frozenset[str] = frozenset()) -> str:
    """Title-case one word the way names and places are written.

    ``TRI-CITIES`` → ``Tri-Cities``, ``O'BRIEN`` → ``O'Brien``, ``JOHN'S`` → ``John's``,
    ``MCDONALD`` → ``McDonald``, ``10TH`` → ``10th``, ``12B`` → ``12B``; a word in ``upper_words``
    (compared without trailing ``.,;:``) is upper-cased. No letter is dropped: a first character
    whose title case is longer than one character expands (``ﬁsh`` → ``Fish``).

    Args:
        word: one blank-free word.
        upper_words: words to upper-case instead.
    """
    if not word:
        return word
    core = word.rstrip(_TRAILING_PUNCTUATION)
    if core != word:
        return capitalize_word(core, upper_words) + word[len(core) :] if core else word
    upper = word.upper()
    if upper in upper_words:
        return upper
    if "-" in word:
        return "-".join(capitalize_word(part, upper_words) for part in word.split("-"))
    if "'" in word:
        head, _, tail = word.partition("'")
        if len(head) == 1 and tail:  # O'Brien, D'Angelo
            return f"{head.title()}'{capitalize_word(tail, upper_words)}"
        return f"{capitalize_word(head, upper_words)}'{tail.lower()}"
    if word[0].isdigit():
        return upper.lower() if _ORDINAL.match(upper) else upper
    if len(upper) > 3 and upper.startswith("MC") and upper.isalpha():
        return f"Mc{upper[2]}{upper[3:].lower()}"
    # The title case of the first character, not upper[0]: a character whose upper case is longer
    # ("ﬁ" -> "FI", "ŉ" -> "ʼN") would lose the rest of it; .title() keeps every letter ("Fi", "ʼN").
    return word[:1].title() + word[1:].lower()


def _title_words(text: str, upper_words: frozenset[str]) -> str:
    words = text.split()
    return " ".join(
        word.lower() if position and word.upper() in SMALL_WORDS else capitalize_word(word, upper_words)
        for position, word in enumerate(words)
    )


@lru_cache(maxsize=_CACHE_SIZE)
def _owner_name(text: str) -> str | None:
    return _title_words(text, NAME_UPPER_WORDS) or None


def normalize_owner_name(value: str | None) -> str | None:
    """An owner name title-cased: ``SMITH JOHN A`` → ``Smith John A``, ``… LLC`` keeps ``LLC``."""
    return None if value is None else _owner_name(value)


def _street_type_position(words: list[str]) -> int:
    """Index of the word that may be a street type: the last before trailing directionals or a unit."""
    end = len(words)
    for position, word in enumerate(words):
        if word.upper() in UNIT_DESIGNATORS or word.startswith("#"):
            end = position
            break
    position = end - 1
    while position > 0 and words[position].upper() in DIRECTIONALS:
        position -= 1
    return position if position >= 1 else -1


@lru_cache(maxsize=_CACHE_SIZE)
def _address(text: str) -> str | None:
    words = text.split()
    if not words:
        return None
    type_position = _street_type_position(words)
    normalized: list[str] = []
    for position, word in enumerate(words):
        upper = word.upper()
        if upper in DIRECTIONALS:
            normalized.append(upper)
        elif position == type_position and upper in STREET_TYPES:
            normalized.append(STREET_TYPES[upper])
        elif upper in ("HWY", "HIGHWAY"):
            normalized.append("Hwy")
        elif position and upper in SMALL_WORDS:
            normalized.append(word.lower())
        else:
            normalized.append(capitalize_word(word, ADDRESS_UPPER_WORDS))
    return " ".join(normalized)


def normalize_address(value: str | None) -> str | None:
    """A street address: ``8903 W CLEARWATER AVENUE`` → ``8903 W Clearwater Ave``."""
    return None if value is None else _address(value)


@lru_cache(maxsize=4096)
def _city(text: str) -> str | None:
    return _title_words(text, frozenset()) or None


def normalize_city(value: str | None) -> str | None:
    """A city title-cased: ``WEST RICHLAND`` → ``West Richland``."""
    return None if value is None else _city(value)


def normalize_state(value: str | None) -> str | None:
    """A state code trimmed and upper-cased; None if blank."""
    if value is None:
        return None
    return value.strip().upper() or None


def split_zip(value: str | None) -> tuple[str | None, str | None]:
    """Split a ZIP or ZIP+4 into ``(zip5, zip4)``.

    ``"99336"`` → ``("99336", None)``; ``"99336-1234"`` and ``"993361234"`` → ``("99336", "1234")``.
    Anything else (blank, wrong length, letters) → ``(None, None)``: the ``PROP-ZIP`` rules reject it
    before a change event gets here.
    """
    if value is None:
        return None, None
    text = value.strip()
    length = len(text)
    if length == 5 and text.isdigit() and text.isascii():
        return text, None
    if length == 9 and text.isdigit() and text.isascii():
        return text[:5], text[5:]
    if length == 10 and text[5] == "-" and text.isascii() and text[:5].isdigit() and text[6:].isdigit():
        return text[:5], text[6:]
    return None, None


def year_or_none(year: int | None) -> int | None:
    """A year, with PACS's 0 ("unknown") as None."""
    return year or None


def owner_type_value(value: str | None) -> str:
    """The :class:`OwnerType` value of a PACS owner type, ``unknown`` when it is not a known spelling."""
    return owner_type_of(value) or OwnerType.UNKNOWN.value


def condition_value(value: str | None) -> str:
    """The :class:`StructureCondition` value of a PACS rating, ``unknown`` when not a known spelling."""
    return condition_of(value) or StructureCondition.UNKNOWN.value


def _quantized(value: Decimal | None, places: Decimal) -> Decimal | None:
    return None if value is None else value.quantize(places)


# -- Records ---------------------------------------------------------------------------------------


def transform_property(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dbo.Property`` row as a TerraFusion property record (entity fields only)."""
    zip5, zip4 = split_zip(row.get("ZipCode"))
    acreage = row.get("Acreage")
    return {
        "property_id": row["PropertyID"],
        "parcel_number": row["ParcelNumber"].strip(),
        "address": normalize_address(row.get("Address")),
        "city": normalize_city(row.get("City")),
        "state": normalize_state(row.get("State")),
        "zip5": zip5,
        "zip4": zip4,
        "legal_description": clean_text(row.get("LegalDescription")),
        "acreage": None if acreage is None else acreage.quantize(ACRE_PLACES),
        "year_built": row.get("YearBuilt") or None,
    }


def transform_owner(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dbo.PropertyOwner`` row as a TerraFusion owner record (entity fields only)."""
    share = row.get("OwnershipPercentage")
    return {
        "owner_id": row["PropertyOwnerID"],
        "property_id": row["PropertyID"],
        "owner_name": normalize_owner_name(row["OwnerName"]),
        "owner_type": owner_type_value(row.get("OwnerType")),
        "ownership_pct": None if share is None else share.quantize(CENTS),
        "start_date": row.get("StartDate"),
        "end_date": row.get("EndDate"),
    }


def transform_valuation(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dbo.PropertyValue`` row as a TerraFusion valuation record (entity fields only)."""
    return {
        "valuation_id": row["PropertyValueID"],
        "property_id": row["PropertyID"],
        "tax_year": row["TaxYear"],
        "assessed_value": _quantized(row.get("AssessedValue"), CENTS),
        "market_value": _quantized(row.get("MarketValue"), CENTS),
        "land_value": _quantized(row.get("LandValue"), CENTS),
        "improvement_value": _quantized(row.get("ImprovementValue"), CENTS),
    }


def transform_structure(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dbo.Structure`` row as a TerraFusion structure record (entity fields only)."""
    bathrooms = row.get("Bathrooms")
    return {
        "structure_id": row["StructureID"],
        "property_id": row["PropertyID"],
        "structure_type": clean_text(row.get("StructureType")),
        "square_feet": row.get("SquareFootage"),
        "condition": condition_value(row.get("Condition")),
        "bedrooms": row.get("Bedrooms"),
        "bathrooms": None if bathrooms is None else bathrooms.quantize(HALF_UNITS),
        "year_built": row.get("YearBuilt") or None,
    }


TRANSFORMS: Final[Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "properties": transform_property,
    "owners": transform_owner,
    "valuations": transform_valuation,
    "structures": transform_structure,
}
"""The transformation of each entity (entity fields only: no source position)."""


def output_key(entity: str, key_value: int) -> dict[str, int]:
    """The clean topic's key record, e.g. ``{"property_id": 100001}``.

    Raises:
        KeyError: the entity is unknown.
    """
    return {OUTPUT_KEY_FIELDS[entity]: key_value}


def deleted_fields(entity: str, key_value: int) -> dict[str, Any]:
    """The entity fields of a delete record: the key set, every other field None.

    Raises:
        KeyError: the entity is unknown.
    """
    fields = OUTPUT_FIELDS[entity]
    record: dict[str, Any] = dict.fromkeys(fields)
    record[fields[0]] = key_value
    return record
