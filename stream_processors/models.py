"""Typed shapes of the stream processors' input rows and TerraFusion output records.

Input: one pydantic model per PACS table (PascalCase fields, as in ``schemas/*.row.avsc``). They are
strict – a decoded Avro dict already carries ``int``, ``str``, ``Decimal`` and ``date`` values, so a
string where an int belongs is a contract break, not something to coerce – and they ignore extra
fields (an evolved capture instance adds columns). Decimal fields carry the source's precision and
scale. :mod:`stream_processors.validation` checks rows by hand on the hot path and asks these models
only when that check fails, for precise error details.

Output: the TerraFusion vocabulary (:class:`OwnerType`, :class:`StructureCondition`), one model per
entity (snake_case fields, every field but the key nullable because a delete record carries only its
key), the clean-topic and schema names, and the field lists the transformation fills.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, Strict

logger = logging.getLogger(__name__)

ENTITIES: Final = ("properties", "owners", "valuations", "structures")
"""The entities, parents first: the producer's entity names (``producer.mapping``)."""

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
AcreageDecimal = Annotated[Decimal, Field(max_digits=10, decimal_places=4)]
PercentDecimal = Annotated[Decimal, Field(max_digits=5, decimal_places=2)]
MoneyDecimal = Annotated[Decimal, Field(max_digits=14, decimal_places=2)]
BathroomsDecimal = Annotated[Decimal, Field(max_digits=3, decimal_places=1)]

# -- Input rows (PACS) -----------------------------------------------------------------------------


class PacsRow(BaseModel):
    """Base of the PACS row models: strict types, extra (evolved) columns ignored, immutable."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class PacsProperty(PacsRow):
    """One ``dbo.Property`` row image (``pacs.dbo.Property``)."""

    PropertyID: Int32
    ParcelNumber: str
    Address: str | None = None
    City: str | None = None
    State: str | None = None
    ZipCode: str | None = None
    LegalDescription: str | None = None
    Acreage: AcreageDecimal | None = None
    YearBuilt: Int32 | None = None


class PacsPropertyOwner(PacsRow):
    """One ``dbo.PropertyOwner`` row image (``pacs.dbo.PropertyOwner``)."""

    PropertyOwnerID: Int32
    PropertyID: Int32
    OwnerName: str
    OwnerType: str | None = None
    OwnershipPercentage: PercentDecimal | None = None
    StartDate: date | None = None
    EndDate: date | None = None


class PacsPropertyValue(PacsRow):
    """One ``dbo.PropertyValue`` row image (``pacs.dbo.PropertyValue``)."""

    PropertyValueID: Int32
    PropertyID: Int32
    TaxYear: Int32
    AssessedValue: MoneyDecimal | None = None
    MarketValue: MoneyDecimal | None = None
    LandValue: MoneyDecimal | None = None
    ImprovementValue: MoneyDecimal | None = None


class PacsStructure(PacsRow):
    """One ``dbo.Structure`` row image (``pacs.dbo.Structure``)."""

    StructureID: Int32
    PropertyID: Int32
    StructureType: str | None = None
    SquareFootage: Int32 | None = None
    Condition: str | None = None
    Bedrooms: Int32 | None = None
    Bathrooms: BathroomsDecimal | None = None
    YearBuilt: Int32 | None = None


INPUT_MODELS: Final[Mapping[str, type[PacsRow]]] = {
    "properties": PacsProperty,
    "owners": PacsPropertyOwner,
    "valuations": PacsPropertyValue,
    "structures": PacsStructure,
}
"""The row model of each entity."""

INPUT_KEY_FIELDS: Final[Mapping[str, str]] = {
    "properties": "PropertyID",
    "owners": "PropertyOwnerID",
    "valuations": "PropertyValueID",
    "structures": "StructureID",
}
"""The primary-key field of each entity's input rows (the Kafka key's only field)."""

# -- TerraFusion vocabulary ------------------------------------------------------------------------


class OwnerType(StrEnum):
    """TerraFusion's kinds of owner."""

    INDIVIDUAL = "individual"
    JOINT = "joint"
    TRUST = "trust"
    CORPORATION = "corporation"
    LLC = "llc"
    GOVERNMENT = "government"
    ESTATE = "estate"
    UNKNOWN = "unknown"


class StructureCondition(StrEnum):
    """TerraFusion's structure condition ratings."""

    POOR = "poor"
    FAIR = "fair"
    AVERAGE = "average"
    GOOD = "good"
    VERY_GOOD = "very_good"
    EXCELLENT = "excellent"
    UNKNOWN = "unknown"


def _vocabulary(synonyms: Mapping[str, tuple[str, ...]], members: Mapping[str, StrEnum]) -> dict[str, str]:
    return {spelling: members[name].value for name, spellings in synonyms.items() for spelling in spellings}


_OWNER_TYPE_SPELLINGS: Final[Mapping[str, tuple[str, ...]]] = {
    "INDIVIDUAL": ("INDIVIDUAL", "IND", "INDV", "PERSON", "SINGLE"),
    "JOINT": ("JOINT", "JT", "JOINT TENANTS", "JTWROS", "COMMUNITY PROPERTY", "HUSBAND AND WIFE", "H W"),
    "TRUST": ("TRUST", "TR", "TRS", "TRUSTEE", "LIVING TRUST", "FAMILY TRUST"),
    "CORPORATION": ("CORPORATION", "CORP", "INC", "COMPANY", "CO", "BUSINESS", "PARTNERSHIP", "LP", "LLP"),
    "LLC": ("LLC", "L L C", "LIMITED LIABILITY COMPANY"),
    "GOVERNMENT": ("GOVERNMENT", "GOV", "GOVT", "PUBLIC", "MUNICIPAL", "CITY", "COUNTY", "STATE", "FEDERAL"),
    "ESTATE": ("ESTATE", "EST"),
}
_CONDITION_SPELLINGS: Final[Mapping[str, tuple[str, ...]]] = {
    "POOR": ("POOR", "P", "PR", "UNSOUND", "VERY POOR"),
    "FAIR": ("FAIR", "F", "FR", "BELOW AVERAGE", "BELOW AVG"),
    "AVERAGE": ("AVERAGE", "A", "AV", "AVG", "NORMAL"),
    "GOOD": ("GOOD", "G", "GD", "ABOVE AVERAGE", "ABOVE AVG"),
    "VERY_GOOD": ("VERY GOOD", "VG", "VGOOD", "V GOOD"),
    "EXCELLENT": ("EXCELLENT", "EX", "EXC", "E", "EXCEL"),
}
OWNER_TYPE_VOCABULARY: Final[Mapping[str, str]] = _vocabulary(_OWNER_TYPE_SPELLINGS, OwnerType.__members__)
"""PACS owner-type spellings (upper case, punctuation as blanks, one blank between words) → OwnerType."""
CONDITION_VOCABULARY: Final[Mapping[str, str]] = _vocabulary(
    _CONDITION_SPELLINGS, StructureCondition.__members__
)
"""PACS condition spellings (upper case, punctuation as blanks, one blank between words) → condition."""

_PUNCTUATION = str.maketrans(dict.fromkeys("-_./,&", " "))


def vocabulary_key(text: str) -> str:
    """The lookup form of a PACS code: upper case, ``-_./,&`` as blanks, blanks collapsed.

    ``"Very-Good"`` → ``"VERY GOOD"``, ``"L.L.C."`` → ``"L L C"``.
    """
    return " ".join(text.translate(_PUNCTUATION).upper().split())


def owner_type_of(text: str | None) -> str | None:
    """Map a PACS owner type to an :class:`OwnerType` value.

    Args:
        text: ``OwnerType`` as recorded, e.g. ``"LLC"``, ``"Individual"``, ``"corp"``.

    Returns:
        The TerraFusion value; ``"unknown"`` for a NULL or blank type; None if the text is not a
        known spelling (the caller decides: the transformation writes ``"unknown"``, the
        ``OWN-TYPE`` rule warns).
    """
    if text is None:
        return OwnerType.UNKNOWN.value
    key = vocabulary_key(text)
    return OWNER_TYPE_VOCABULARY.get(key) if key else OwnerType.UNKNOWN.value


def condition_of(text: str | None) -> str | None:
    """Map a PACS condition rating to a :class:`StructureCondition` value.

    Args:
        text: ``Condition`` as recorded, e.g. ``"Very Good"``, ``"AVG"``.

    Returns:
        The TerraFusion value; ``"unknown"`` for a NULL or blank rating; None if the text is not a
        known spelling.
    """
    if text is None:
        return StructureCondition.UNKNOWN.value
    key = vocabulary_key(text)
    return CONDITION_VOCABULARY.get(key) if key else StructureCondition.UNKNOWN.value


# -- Output records (TerraFusion) ------------------------------------------------------------------

TOPIC_PREFIX: Final = "terrafusion."
OUTPUT_TOPICS: Final[Mapping[str, str]] = {entity: f"{TOPIC_PREFIX}{entity}" for entity in ENTITIES}
"""The clean, log-compacted topic of each entity, keyed by its primary key."""
MODEL_NAMESPACE: Final = "io.terrafusion.model"
OUTPUT_RECORD_NAMES: Final[Mapping[str, str]] = {
    "properties": "Property",
    "owners": "Owner",
    "valuations": "Valuation",
    "structures": "Structure",
}
OUTPUT_VALUE_SCHEMAS: Final[Mapping[str, str]] = {
    entity: f"{MODEL_NAMESPACE}.{name}" for entity, name in OUTPUT_RECORD_NAMES.items()
}
"""Full Avro name of each entity's value record, e.g. ``io.terrafusion.model.Property``."""
OUTPUT_KEY_SCHEMAS: Final[Mapping[str, str]] = {
    entity: f"{MODEL_NAMESPACE}.{name}Key" for entity, name in OUTPUT_RECORD_NAMES.items()
}
"""Full Avro name of each entity's key record, e.g. ``io.terrafusion.model.PropertyKey``."""
DEAD_LETTER_SCHEMA: Final = "io.terrafusion.pacs.DeadLetter"
"""Full Avro name of the dead-letter record."""

OUTPUT_KEY_FIELDS: Final[Mapping[str, str]] = {
    "properties": "property_id",
    "owners": "owner_id",
    "valuations": "valuation_id",
    "structures": "structure_id",
}
"""The primary-key field of each entity's output records (the clean topic's key)."""

POSITION_FIELDS: Final = ("source_commit_lsn", "source_change_lsn", "source_serial", "source_ts", "deleted")
"""Fields every output record of a change event carries after the entity's own."""

OUTPUT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "properties": (
        "property_id",
        "parcel_number",
        "address",
        "city",
        "state",
        "zip5",
        "zip4",
        "legal_description",
        "acreage",
        "year_built",
    ),
    "owners": (
        "owner_id",
        "property_id",
        "owner_name",
        "owner_type",
        "ownership_pct",
        "start_date",
        "end_date",
    ),
    "valuations": (
        "valuation_id",
        "property_id",
        "tax_year",
        "assessed_value",
        "market_value",
        "land_value",
        "improvement_value",
    ),
    "structures": (
        "structure_id",
        "property_id",
        "structure_type",
        "square_feet",
        "condition",
        "bedrooms",
        "bathrooms",
        "year_built",
    ),
}
"""The entity fields of each output record, in schema order (the key field first)."""


class TerraFusionRecord(BaseModel):
    """Base of the output models: the source position every clean-topic record carries.

    Attributes:
        source_commit_lsn: commit LSN of the source transaction, ``0000002a:00000104:0001``.
        source_change_lsn: LSN of the change itself; None for snapshot reads.
        source_serial: orders changes sharing a change LSN (0 for snapshot reads).
        source_ts: commit time in the source, UTC; None when unknown (snapshot reads).
        deleted: the row was deleted; every field but the key is then None.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    source_commit_lsn: str
    source_change_lsn: str | None
    source_serial: int
    source_ts: datetime | None
    deleted: bool


class TerraFusionProperty(TerraFusionRecord):
    """A record of ``terrafusion.properties`` (``io.terrafusion.model.Property``)."""

    property_id: Int32
    parcel_number: str | None
    address: str | None
    city: str | None
    state: str | None
    zip5: str | None
    zip4: str | None
    legal_description: str | None
    acreage: AcreageDecimal | None
    year_built: Int32 | None


class TerraFusionOwner(TerraFusionRecord):
    """A record of ``terrafusion.owners`` (``io.terrafusion.model.Owner``)."""

    owner_id: Int32
    property_id: Int32 | None
    owner_name: str | None
    owner_type: Annotated[OwnerType, Strict(False)] | None  # records hold the plain value, "llc"
    ownership_pct: PercentDecimal | None
    start_date: date | None
    end_date: date | None


class TerraFusionValuation(TerraFusionRecord):
    """A record of ``terrafusion.valuations`` (``io.terrafusion.model.Valuation``)."""

    valuation_id: Int32
    property_id: Int32 | None
    tax_year: Int32 | None
    assessed_value: MoneyDecimal | None
    market_value: MoneyDecimal | None
    land_value: MoneyDecimal | None
    improvement_value: MoneyDecimal | None


class TerraFusionStructure(TerraFusionRecord):
    """A record of ``terrafusion.structures`` (``io.terrafusion.model.Structure``)."""

    structure_id: Int32
    property_id: Int32 | None
    structure_type: str | None
    square_feet: Int32 | None
    condition: Annotated[StructureCondition, Strict(False)] | None
    bedrooms: Int32 | None
    bathrooms: BathroomsDecimal | None
    year_built: Int32 | None


OUTPUT_MODELS: Final[Mapping[str, type[TerraFusionRecord]]] = {
    "properties": TerraFusionProperty,
    "owners": TerraFusionOwner,
    "valuations": TerraFusionValuation,
    "structures": TerraFusionStructure,
}
"""The output model of each entity."""
