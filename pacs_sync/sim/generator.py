"""A deterministic, realistic PACS data set for Benton County, WA: the emulated source tables' contents.

Pure: no database, no network, no I/O. ``generate(scale_for("benton"), seed=1)`` builds the rows of the
four tables in ``sql/pacs_schema.sql`` (``dbo.property``, ``dbo.propertyowner``, ``dbo.propertyvalue``,
``dbo.structure``) as lists of tuples in table column order. With ``dirty_rate > 0`` a seeded fraction of
rows carries the kinds of bad data real PACS exports contain; the kinds and counts injected are returned
with the rows, so a test can check that the validation stage catches exactly what was planted.

The value helpers (cities and ZIP codes, addresses, parcel numbers, owner names, ownership splits,
structures, money) are public because the change workload (:mod:`pacs_sync.sim.workload`) must make new
values by the same rules the clean generator follows.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Final, Generic, TypeAlias, TypeVar

logger = logging.getLogger(__name__)

# -- Tables and row shapes -------------------------------------------------------------------------

PROPERTY_TABLE: Final = "dbo.property"
OWNER_TABLE: Final = "dbo.propertyowner"
VALUATION_TABLE: Final = "dbo.propertyvalue"
STRUCTURE_TABLE: Final = "dbo.structure"

PROPERTY_COLUMNS: Final = (
    "propertyid",
    "parcelnumber",
    "address",
    "city",
    "state",
    "zipcode",
    "legaldescription",
    "acreage",
    "yearbuilt",
)
OWNER_COLUMNS: Final = (
    "propertyownerid",
    "propertyid",
    "ownername",
    "ownertype",
    "ownershippercentage",
    "startdate",
    "enddate",
)
VALUATION_COLUMNS: Final = (
    "propertyvalueid",
    "propertyid",
    "taxyear",
    "assessedvalue",
    "marketvalue",
    "landvalue",
    "improvementvalue",
)
STRUCTURE_COLUMNS: Final = (
    "structureid",
    "propertyid",
    "structuretype",
    "squarefootage",
    "condition",
    "bedrooms",
    "bathrooms",
    "yearbuilt",
)

TABLE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    PROPERTY_TABLE: PROPERTY_COLUMNS,
    OWNER_TABLE: OWNER_COLUMNS,
    VALUATION_TABLE: VALUATION_COLUMNS,
    STRUCTURE_TABLE: STRUCTURE_COLUMNS,
}
"""Column names of each table, in table order (the order of every row tuple)."""

PRIMARY_KEYS: Final[dict[str, str]] = {table: columns[0] for table, columns in TABLE_COLUMNS.items()}
"""The primary-key column of each table (always the first column)."""

PropertyRow: TypeAlias = tuple[
    int, str, str | None, str | None, str | None, str | None, str | None, Decimal | None, int | None
]
OwnerRow: TypeAlias = tuple[int, int, str, str | None, Decimal | None, date | None, date | None]
ValuationRow: TypeAlias = tuple[int, int, int, Decimal | None, Decimal | None, Decimal | None, Decimal | None]
StructureRow: TypeAlias = tuple[
    int, int, str | None, int | None, str | None, int | None, Decimal | None, int | None
]

# -- Realism constants -----------------------------------------------------------------------------

AS_OF_DATE: Final = date(2025, 6, 30)
"""The data set describes the roll as of this day: no date in it is later."""
LATEST_TAX_YEAR: Final = 2025
EARLIEST_YEAR_BUILT: Final = 1900
UNKNOWN_YEAR_BUILT: Final = 0
"""What PACS writes in ``structure.yearbuilt`` when the year is unknown: valid data, not dirty."""

CENTS: Final = Decimal("0.01")
ACREAGE_PLACES: Final = Decimal("0.0001")
MIN_ACREAGE: Final = Decimal("0.1000")
MAX_ACREAGE: Final = Decimal("40.0000")
FULL_OWNERSHIP: Final = Decimal("100.00")

STATE_CODE: Final = "WA"

CITY_ZIP_CODES: Final[dict[str, tuple[str, ...]]] = {
    "Kennewick": ("99336", "99337", "99338"),
    "Richland": ("99352", "99354"),
    "West Richland": ("99353",),
    "Pasco": ("99301",),  # Franklin County, but Benton's roll carries a few Pasco situs addresses
    "Prosser": ("99350",),
    "Benton City": ("99320",),
    "Plymouth": ("99346",),
    "Paterson": ("99345",),
    "Finley": ("99336",),
}
"""The cities on the roll and their real ZIP codes (Finley shares Kennewick's 99336)."""

PARCEL_NUMBER_PATTERN: Final = re.compile(r"\A[1-3]-[0-9]{4}-[0-9]{3}-[0-9]{4}-[0-9]{3}\Z")
"""Benton's 15-digit parcel number, e.g. ``1-0289-101-0021-000``; the last group numbers splits."""

OWNER_TYPES: Final = ("Individual", "Joint", "Trust", "Corporation", "LLC", "Government", "Estate")
STRUCTURE_TYPES: Final = (
    "Single Family Residence",
    "Manufactured Home",
    "Duplex",
    "Garage",
    "Pole Building",
    "Shop",
    "Commercial",
)
DWELLING_TYPES: Final = frozenset({"Single Family Residence", "Manufactured Home", "Duplex"})
"""Structure types that have bedrooms and bathrooms; all others have None for both."""
CONDITIONS: Final = ("Poor", "Fair", "Average", "Good", "Very Good", "Excellent")

SQUARE_FOOTAGE_RANGES: Final[dict[str, tuple[int, int]]] = {
    "Single Family Residence": (600, 4500),
    "Manufactured Home": (700, 2400),
    "Duplex": (1400, 3600),
    "Garage": (240, 1200),
    "Pole Building": (600, 4800),
    "Shop": (400, 3000),
    "Commercial": (1500, 60000),
}
"""Plausible square footage by structure type (inclusive)."""

DIRTY_KINDS: Final[dict[str, tuple[str, ...]]] = {
    PROPERTY_TABLE: (
        "missing_zip",
        "zip_wrong_length",
        "invalid_state",
        "negative_acreage",
        "malformed_parcel_number",
        "implausible_year_built",
    ),
    OWNER_TABLE: ("owner_set_over_100", "ownership_percentage_out_of_range", "end_before_start"),
    VALUATION_TABLE: ("negative_value", "value_sum_mismatch"),
    STRUCTURE_TABLE: ("structure_implausible_year_built", "negative_square_footage"),
}
"""The kinds of bad data ``generate`` can inject, by table."""

MAX_PROPERTIES: Final = 1_000_000
MAX_OWNER_ROWS_PER_PROPERTY: Final = 8
MAX_CURRENT_OWNERS: Final = 3
MAX_TAX_YEARS_PER_PROPERTY: Final = 15
MAX_STRUCTURES_PER_PROPERTY: Final = 4

# Distinct id ranges per table, so a join on the wrong id column finds nothing instead of wrong rows.
PROPERTY_ID_START: Final = 100_001
OWNER_ID_START: Final = 2_000_001
VALUATION_ID_START: Final = 5_000_001
STRUCTURE_ID_START: Final = 30_000_001

# -- Scale -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How many rows of each table to generate.

    Attributes:
        properties: rows of ``dbo.property``.
        owners: rows of ``dbo.propertyowner`` (current and former owners).
        valuations: rows of ``dbo.propertyvalue`` (one per property and tax year).
        structures: rows of ``dbo.structure``.
    """

    properties: int
    owners: int
    valuations: int
    structures: int

    def __post_init__(self) -> None:
        """Reject counts the generator cannot honour exactly."""
        if not 1 <= self.properties <= MAX_PROPERTIES:
            raise ValueError(f"properties must be between 1 and {MAX_PROPERTIES:,}, got {self.properties}")
        if not self.properties <= self.owners <= self.properties * MAX_OWNER_ROWS_PER_PROPERTY:
            raise ValueError(
                f"owners must be between properties ({self.properties}) and "
                f"{MAX_OWNER_ROWS_PER_PROPERTY}x properties: every property has an owner, got {self.owners}"
            )
        if not self.properties <= self.valuations <= self.properties * MAX_TAX_YEARS_PER_PROPERTY:
            raise ValueError(
                f"valuations must be between properties ({self.properties}) and "
                f"{MAX_TAX_YEARS_PER_PROPERTY}x properties, got {self.valuations}"
            )
        if not 0 <= self.structures <= self.properties * MAX_STRUCTURES_PER_PROPERTY:
            raise ValueError(
                f"structures must be between 0 and {MAX_STRUCTURES_PER_PROPERTY}x properties, "
                f"got {self.structures}"
            )


BENTON_SCALE: Final = Scale(properties=12_400, owners=18_600, valuations=62_000, structures=14_800)
"""Benton County's roll: 12,400 parcels, 18,600 owner rows, 5 tax years, 14,800 structures."""
SMALL_PROPERTY_COUNT: Final = 200
_WHOLE_NUMBER = re.compile(r"[0-9]+")


def _scaled(property_count: int) -> Scale:
    def ratio(benton_count: int) -> int:
        # Round half up in integers: floor(n * a / b + 1/2), no float error at any size.
        return (2 * property_count * benton_count + BENTON_SCALE.properties) // (2 * BENTON_SCALE.properties)

    return Scale(
        properties=property_count,
        owners=ratio(BENTON_SCALE.owners),
        valuations=ratio(BENTON_SCALE.valuations),
        structures=ratio(BENTON_SCALE.structures),
    )


def scale_for(name_or_number: str) -> Scale:
    """The scale named ``benton`` or ``small``, or N properties with Benton's ratios.

    Args:
        name_or_number: ``"benton"`` (12,400 properties), ``"small"`` (200 properties) or a positive
            whole number of properties such as ``"5000"``; case and surrounding blanks are ignored.

    Returns:
        The row counts; named and numeric scales keep Benton's owner, valuation and structure ratios
        (rounded half up).

    Raises:
        ValueError: the text is neither a known name nor a whole number between 1 and MAX_PROPERTIES.
    """
    text = name_or_number.strip().lower()
    if text == "benton":
        return BENTON_SCALE
    if text == "small":
        return _scaled(SMALL_PROPERTY_COUNT)
    if _WHOLE_NUMBER.fullmatch(text):
        property_count = int(text)
        if not 1 <= property_count <= MAX_PROPERTIES:
            raise ValueError(
                f"scale {name_or_number!r}: the number of properties must be between 1 and {MAX_PROPERTIES:,}"
            )
        return _scaled(property_count)
    raise ValueError(
        f"unknown scale {name_or_number!r}: expected 'benton', 'small' or a whole number of properties"
    )


# -- The data set ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacsDataset:
    """The rows of the four PACS tables, each a tuple in table column order, sorted by primary key.

    Attributes:
        properties: ``dbo.property`` rows (see PROPERTY_COLUMNS).
        owners: ``dbo.propertyowner`` rows (see OWNER_COLUMNS).
        valuations: ``dbo.propertyvalue`` rows (see VALUATION_COLUMNS).
        structures: ``dbo.structure`` rows (see STRUCTURE_COLUMNS).
        dirty: injected bad data by kind (keys from DIRTY_KINDS). Counts are rows, except
            ``owner_set_over_100``, which counts owner sets (each spans two or three rows). Empty for
            a clean data set.
    """

    properties: list[PropertyRow]
    owners: list[OwnerRow]
    valuations: list[ValuationRow]
    structures: list[StructureRow]
    dirty: dict[str, int] = field(default_factory=dict)

    def tables(self) -> dict[str, Sequence[tuple[object, ...]]]:
        """The rows by qualified table name, parents first (the order to load them in)."""
        return {
            PROPERTY_TABLE: self.properties,
            OWNER_TABLE: self.owners,
            VALUATION_TABLE: self.valuations,
            STRUCTURE_TABLE: self.structures,
        }


# -- Weighted choice ------------------------------------------------------------------------------

_T = TypeVar("_T")


class _Weighted(Generic[_T]):
    """A fixed weighted choice, with the cumulative weights computed once (generation is hot)."""

    def __init__(self, weights: Mapping[_T, float]) -> None:
        self.options = tuple(weights)
        self.cumulative = tuple(itertools.accumulate(weights.values()))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> _T:
        return self.options[bisect.bisect_right(self.cumulative, rng.random() * self.total)]


# -- Vocabulary ------------------------------------------------------------------------------------

_URBAN_CITIES = _Weighted(
    {
        "Kennewick": 38,
        "Richland": 28,
        "West Richland": 10,
        "Prosser": 7,
        "Benton City": 5,
        "Finley": 4,
        "Pasco": 4,
        "Plymouth": 2,
        "Paterson": 2,
    }
)
_RURAL_CITIES = _Weighted(
    {
        "Prosser": 20,
        "Benton City": 16,
        "West Richland": 14,
        "Finley": 14,
        "Kennewick": 12,
        "Plymouth": 8,
        "Richland": 6,
        "Paterson": 6,
        "Pasco": 4,
    }
)
_ZIP_WEIGHTS: dict[str, _Weighted[str]] = {
    "Kennewick": _Weighted({"99336": 45, "99337": 35, "99338": 20}),
    "Richland": _Weighted({"99352": 60, "99354": 40}),
}

_CITY_STREETS: dict[str, tuple[str, ...]] = {
    "Kennewick": (
        "W Clearwater Ave",
        "W Canal Dr",
        "W 10th Ave",
        "W 27th Ave",
        "S Union St",
        "S Edison St",
        "W Kennewick Ave",
        "W Metaline Ave",
        "S Olympia St",
        "W Gage Blvd",
        "S Kellogg St",
        "W 4th Ave",
        "S Vancouver St",
        "W Hildebrand Blvd",
        "S Conway Dr",
        "W 19th Ave",
        "S Quillan St",
        "W Yellowstone Ave",
        "S Morain St",
        "W Bruneau Ave",
        "S Ely St",
        "S Zintel Way",
        "W 45th Ave",
        "S Garfield St",
        "W Victoria Ave",
        "S Columbia Center Blvd",
    ),
    "Richland": (
        "George Washington Way",
        "Jadwin Ave",
        "Stevens Dr",
        "Van Giesen St",
        "Lee Blvd",
        "Swift Blvd",
        "Thayer Dr",
        "Wright Ave",
        "Keene Rd",
        "Duportail St",
        "Gage Blvd",
        "Leslie Rd",
        "Queensgate Dr",
        "Symons St",
        "Cottonwood Dr",
        "Meadow Hills Dr",
        "Bellerive Dr",
        "Canyon St",
        "Hills West Way",
        "Sagebrush Dr",
        "Williams Blvd",
        "Goethals Dr",
    ),
    "West Richland": (
        "W Van Giesen St",
        "Bombing Range Rd",
        "Paradise Way",
        "S 38th Ave",
        "Belmont Blvd",
        "W Kennedy Rd",
        "Mt Adams View Dr",
        "Grosscup Blvd",
        "Keene Rd",
        "S 62nd Ave",
        "Austin Dr",
    ),
    "Pasco": ("W Court St", "Road 68", "Argent Rd", "W Sylvester St", "W Lewis St", "Burden Blvd"),
    "Prosser": (
        "Wine Country Rd",
        "6th St",
        "Meade Ave",
        "Bennitz Ave",
        "Grant Ave",
        "Kinney Way",
        "Sommers Ave",
        "Nunn Rd",
        "Highland Dr",
    ),
    "Benton City": ("9th St", "Horne Dr", "Dale Ave", "Ellis St", "Babs Ave", "Hazel Ave", "Riverview Dr"),
    "Plymouth": ("Plymouth Rd", "Christy Rd", "Sonova Rd", "Sheldon Ave"),
    "Paterson": ("Paterson Rd", "Main St", "Church Rd", "Butler Loop Rd"),
    "Finley": ("E Finley Rd", "S Bowles Rd", "E Game Farm Rd", "S Piert Rd", "E Chemical Dr", "S Haney Rd"),
}
_RURAL_ROADS: dict[str, tuple[str, ...]] = {
    "Kennewick": ("S Clodfelter Rd", "S Bermuda Rd", "E Badger Rd", "S Nine Canyon Rd", "S Sherman Rd"),
    "Richland": ("N Rd 170 PR SE", "Dallas Rd", "E Badger Rd", "Reata Rd"),
    "West Richland": ("N Crosby Rd", "W Ruppert Rd", "N Harrington Rd", "W Sunset Rd"),
    "Pasco": ("Road 108", "Taylor Flats Rd"),
    "Prosser": ("N Crosby Rd", "Old Inland Empire Hwy", "Hinzerling Rd", "N River Rd", "Sellards Rd"),
    "Benton City": ("N Webber Canyon Rd", "E Kennedy Rd", "N Hanks Rd", "Sunset Rd", "E Orchard Rd"),
    "Plymouth": ("Christy Rd", "Mottinger Rd", "Sonova Rd", "Coffin Rd"),
    "Paterson": ("Paterson Rd", "Hwy 221", "Alderdale Rd", "Sixprong Rd"),
    "Finley": ("E Game Farm Rd", "S Finley Rd", "E Bofer Canyon Rd", "S Whitcomb Rd", "E Perkins Rd"),
}
_SUBDIVISIONS: dict[str, tuple[str, ...]] = {
    "Kennewick": (
        "DESERT HILLS",
        "CANYON LAKES",
        "SOUTHRIDGE ESTATES",
        "HANSEN PARK",
        "PANORAMA HEIGHTS",
        "CREEKSTONE",
        "SUNSET VIEW",
        "VISTA FIELD",
        "KENNEWICK HIGHLANDS",
        "TWIN RIVERS",
        "CHAMNA RIDGE",
    ),
    "Richland": (
        "MEADOW SPRINGS",
        "HORN RAPIDS",
        "BADGER MOUNTAIN SOUTH",
        "COLUMBIA POINT",
        "SHOCKLEY HEIGHTS",
        "SOUTH ORCHARD",
        "RICHLAND HEIGHTS",
        "QUEENSGATE VILLAGE",
        "WEST HIGHLANDS",
        "CHAPPARAL ESTATES",
    ),
    "West Richland": ("WHITE BLUFFS", "PARADISE ESTATES", "BLUE HERON ESTATES", "COUNTRY MEADOWS", "BELMONT"),
    "Pasco": ("ROAD 68 COMMONS", "BROADMOOR ESTATES"),
    "Prosser": ("PROSSER ORIGINAL TOWN", "VINEYARD HEIGHTS", "HORSE HEAVEN VISTA"),
    "Benton City": ("BENTON CITY ORIGINAL TOWNSITE", "RIVERVIEW ADDITION"),
    "Plymouth": ("PLYMOUTH TOWNSITE",),
    "Paterson": ("PATERSON TOWNSITE",),
    "Finley": ("FINLEY ADDITION", "RIVERSHORE ESTATES"),
}
_QUARTERS = ("NE4", "NW4", "SE4", "SW4", "NE4 NE4", "NW4 SE4", "SW4 SW4", "E2 NE4", "W2 SW4", "N2 SE4")
_LEGAL_EXCEPTIONS = ("", "", "", " LESS RD", " EXC N 30 FT FOR RD", " LESS CANAL R/W")

_SURNAMES = (
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "MILLER",
    "DAVIS",
    "GARCIA",
    "RODRIGUEZ",
    "WILSON",
    "MARTINEZ",
    "ANDERSON",
    "TAYLOR",
    "THOMAS",
    "HERNANDEZ",
    "MOORE",
    "MARTIN",
    "JACKSON",
    "THOMPSON",
    "WHITE",
    "LOPEZ",
    "LEE",
    "GONZALEZ",
    "HARRIS",
    "CLARK",
    "LEWIS",
    "ROBINSON",
    "WALKER",
    "PEREZ",
    "HALL",
    "YOUNG",
    "ALLEN",
    "SANCHEZ",
    "WRIGHT",
    "KING",
    "SCOTT",
    "GREEN",
    "BAKER",
    "ADAMS",
    "NELSON",
    "HILL",
    "RAMIREZ",
    "CAMPBELL",
    "MITCHELL",
    "ROBERTS",
    "CARTER",
    "PHILLIPS",
    "EVANS",
    "TURNER",
    "TORRES",
    "PARKER",
    "COLLINS",
    "EDWARDS",
    "STEWART",
    "FLORES",
    "MORRIS",
    "NGUYEN",
    "MURPHY",
    "RIVERA",
    "COOK",
    "ROGERS",
    "MORGAN",
    "PETERSON",
    "COOPER",
    "REED",
    "BAILEY",
    "BELL",
    "GOMEZ",
    "KELLY",
    "HOWARD",
    "WARD",
    "COX",
    "DIAZ",
    "RICHARDSON",
    "WOOD",
    "WATSON",
    "BROOKS",
    "BENNETT",
    "GRAY",
    "JAMES",
    "OLSON",
    "LARSON",
    "HANSEN",
    "JENSEN",
    "MENDOZA",
    "CHAVEZ",
    "O'BRIEN",
    "MCDONALD",
    "VAN HOOSE",
)
_MALE_NAMES = (
    "JOHN",
    "ROBERT",
    "MICHAEL",
    "WILLIAM",
    "DAVID",
    "RICHARD",
    "JOSEPH",
    "THOMAS",
    "CHARLES",
    "DANIEL",
    "MATTHEW",
    "ANTHONY",
    "MARK",
    "STEVEN",
    "PAUL",
    "ANDREW",
    "JOSHUA",
    "KENNETH",
    "KEVIN",
    "BRIAN",
    "GEORGE",
    "TIMOTHY",
    "RONALD",
    "JASON",
    "JOSE",
    "JUAN",
    "LUIS",
    "CARLOS",
    "GARY",
    "ERIC",
)
_FEMALE_NAMES = (
    "MARY",
    "PATRICIA",
    "JENNIFER",
    "LINDA",
    "ELIZABETH",
    "BARBARA",
    "SUSAN",
    "JESSICA",
    "SARAH",
    "KAREN",
    "LISA",
    "NANCY",
    "BETTY",
    "MARGARET",
    "SANDRA",
    "ASHLEY",
    "KIMBERLY",
    "EMILY",
    "DONNA",
    "MICHELLE",
    "CAROL",
    "AMANDA",
    "MELISSA",
    "DEBORAH",
    "MARIA",
    "ROSA",
    "ANA",
    "LAURA",
    "JULIE",
    "KATHLEEN",
)
_COMPANY_FIRST_WORDS = (
    "TRI-CITIES",
    "COLUMBIA BASIN",
    "BADGER MOUNTAIN",
    "RATTLESNAKE RIDGE",
    "YAKIMA RIVER",
    "HORSE HEAVEN",
    "CASCADE",
    "PACIFIC NORTHWEST",
    "SAGEBRUSH",
    "THREE RIVERS",
    "ATOMIC CITY",
    "RED MOUNTAIN",
    "BLUE MOUNTAIN",
    "CANYON VIEW",
    "GATEWAY",
    "DESERT WIND",
)
_COMPANY_SECOND_WORDS = (
    "HOLDINGS",
    "PROPERTIES",
    "INVESTMENTS",
    "RENTALS",
    "DEVELOPMENT",
    "LAND",
    "REAL ESTATE",
    "VENTURES",
    "FARMS",
    "ORCHARDS",
    "VINEYARDS",
    "HOMES",
    "CAPITAL",
    "PARTNERS",
)
_CORPORATION_SUFFIXES = ("INC", "CORP", "CO", "INCORPORATED")
_TRUST_FORMS = ("FAMILY TRUST", "LIVING TRUST", "REVOCABLE TRUST", "TRUST")
_GOVERNMENT_OWNERS = (
    "CITY OF KENNEWICK",
    "CITY OF RICHLAND",
    "CITY OF WEST RICHLAND",
    "CITY OF PROSSER",
    "BENTON COUNTY",
    "STATE OF WASHINGTON",
    "PORT OF BENTON",
    "PORT OF KENNEWICK",
    "UNITED STATES OF AMERICA",
    "KENNEWICK SCHOOL DISTRICT 17",
    "RICHLAND SCHOOL DISTRICT 400",
    "BENTON PUD",
)

_SOLE_OWNER_TYPES = _Weighted(
    {"Individual": 62, "Trust": 12, "LLC": 11, "Estate": 6, "Corporation": 6, "Government": 3}
)
_COMMERCIAL_OWNER_TYPES = _Weighted(
    {"LLC": 50, "Corporation": 32, "Individual": 10, "Trust": 5, "Government": 3}
)
_CURRENT_OWNER_COUNTS = _Weighted({1: 64, 2: 33, 3: 3})
_FORMER_OWNER_COUNTS = _Weighted({0: 89, 1: 10, 2: 1})

_LAND_USES = _Weighted({"residential": 76, "manufactured": 8, "rural": 10, "commercial": 6})
_VACANT_SHARE = 0.10
# (median acres, lognormal sigma) by land use: town lots are small, rural and commercial parcels large.
_ACREAGE_SHAPES = {
    "residential": (0.22, 0.45),
    "manufactured": (0.45, 0.8),
    "rural": (5.0, 0.9),
    "commercial": (1.2, 0.9),
    "vacant": (1.0, 1.3),
}
# (base dollars, dollars per acre) of land value by land use, before the city factor.
_LAND_VALUE_MODEL = {
    "residential": (60_000, 150_000),
    "manufactured": (35_000, 45_000),
    "rural": (30_000, 9_000),
    "commercial": (80_000, 400_000),
    "vacant": (20_000, 18_000),
}
_CITY_LAND_FACTOR = {
    "Richland": 1.15,
    "West Richland": 1.05,
    "Kennewick": 1.0,
    "Pasco": 0.9,
    "Prosser": 0.8,
    "Finley": 0.75,
    "Benton City": 0.7,
    "Plymouth": 0.65,
    "Paterson": 0.55,
}
# Year-over-year market movement of the Tri-Cities, by tax year.
_MARKET_TREND = {
    2015: 1.04,
    2016: 1.05,
    2017: 1.06,
    2018: 1.06,
    2019: 1.05,
    2020: 1.06,
    2021: 1.09,
    2022: 1.14,
    2023: 1.07,
    2024: 1.03,
    2025: 1.04,
}
_DEFAULT_MARKET_TREND = 1.04

_DECADES_BUILT = _Weighted(
    {
        1900: 1,
        1910: 1,
        1920: 1.5,
        1930: 1.5,
        1940: 6,
        1950: 8,
        1960: 6,
        1970: 12,
        1980: 9,
        1990: 15,
        2000: 18,
        2010: 16,
        2020: 6,
    }
)
_MAIN_STRUCTURE = {
    "residential": _Weighted({"Single Family Residence": 92, "Duplex": 8}),
    "manufactured": _Weighted({"Manufactured Home": 1}),
    "rural": _Weighted({"Single Family Residence": 70, "Manufactured Home": 30}),
    "commercial": _Weighted({"Commercial": 1}),
}
_EXTRA_STRUCTURE = {
    "residential": _Weighted({"Garage": 55, "Shop": 30, "Pole Building": 15}),
    "manufactured": _Weighted({"Garage": 50, "Pole Building": 30, "Shop": 20}),
    "rural": _Weighted({"Pole Building": 45, "Shop": 35, "Garage": 20}),
    "commercial": _Weighted({"Commercial": 40, "Shop": 30, "Pole Building": 30}),
}
_STRUCTURE_COUNTS = _Weighted({1: 72, 2: 22, 3: 5, 4: 1})
_CONDITION_WEIGHTS = _Weighted(
    {"Poor": 3, "Fair": 12, "Average": 50, "Good": 25, "Very Good": 8, "Excellent": 2}
)
_CONDITION_FACTOR = {
    "Poor": 0.6,
    "Fair": 0.8,
    "Average": 1.0,
    "Good": 1.1,
    "Very Good": 1.2,
    "Excellent": 1.3,
}
_DOLLARS_PER_SQUARE_FOOT = {
    "Single Family Residence": 185,
    "Manufactured Home": 95,
    "Duplex": 165,
    "Garage": 45,
    "Pole Building": 28,
    "Shop": 40,
    "Commercial": 140,
}
_UNKNOWN_YEAR_SHARE = 0.02
_CONVERTED_NAME_SHARE = 0.12  # people's names kept as "John A Smith" from an older system
_EARLIEST_OWNERSHIP = date(1940, 1, 1)
_BATHROOM_STEPS = tuple(Decimal(f"{halves / 2:.1f}") for halves in range(2, 10))  # 1.0 .. 4.5

_OWNERSHIP_SPLITS: dict[int, _Weighted[tuple[str, ...]]] = {
    2: _Weighted(
        {("50.00", "50.00"): 75, ("60.00", "40.00"): 8, ("75.00", "25.00"): 8, ("66.67", "33.33"): 9}
    ),
    3: _Weighted(
        {("33.33", "33.33", "33.34"): 60, ("50.00", "25.00", "25.00"): 25, ("40.00", "30.00", "30.00"): 15}
    ),
}

# -- Public value helpers (shared with the workload) --------------------------------------------------


def to_money(dollars: int) -> Decimal:
    """Whole dollars as a PACS money value (numeric(14,2), two places)."""
    return Decimal(dollars).quantize(CENTS)


def round_dollars(amount: float, step: int = 10) -> int:
    """``amount`` rounded to a multiple of ``step`` dollars (assessors round values), at least ``step``."""
    return max(step, round(amount / step) * step)


def market_value_near(rng: random.Random, assessed: int) -> int:
    """A market value within ±7 % of ``assessed`` (rounded to $100): near, as WA assesses at market."""
    return max(100, round_dollars(assessed * rng.uniform(0.93, 1.07), step=100))


def pick_city(rng: random.Random, *, rural: bool = False) -> str:
    """A city on the roll, weighted like Benton's parcels (rural parcels lean to the small towns)."""
    return (_RURAL_CITIES if rural else _URBAN_CITIES).pick(rng)


def pick_zip_code(rng: random.Random, city: str) -> str:
    """One of ``city``'s real ZIP codes.

    Raises:
        KeyError: ``city`` is not in CITY_ZIP_CODES.
    """
    weighted = _ZIP_WEIGHTS.get(city)
    return weighted.pick(rng) if weighted else CITY_ZIP_CODES[city][0]


def make_address(rng: random.Random, city: str, *, rural: bool = False) -> str:
    """A situs address in ``city``, e.g. ``8903 W Clearwater Ave`` (rural roads get 5-digit numbers)."""
    if rural:
        return f"{rng.randint(10_000, 99_999)} {rng.choice(_RURAL_ROADS[city])}"
    return f"{rng.randint(100, 9_999)} {rng.choice(_CITY_STREETS[city])}"


def make_parcel_number(rng: random.Random, split_suffix: int = 0) -> str:
    """A parcel number in Benton's format (PARCEL_NUMBER_PATTERN); callers keep them unique.

    The groups follow the map: area, section/township/range, block, lot and the split suffix
    (``000`` for an original parcel, ``001``… for parcels split from it).
    """
    section = rng.randint(1, 36)
    township = rng.randint(7, 11) % 10
    range_ = rng.randint(23, 30) % 10
    return (
        f"{rng.randint(1, 3)}-{section:02d}{township}{range_}-{rng.randint(0, 999):03d}-"
        f"{rng.randint(0, 9999):04d}-{split_suffix:03d}"
    )


def make_legal_description(rng: random.Random, city: str, *, platted: bool) -> str:
    """A legal description: a platted lot (``LOT 5 BLK 3 DESERT HILLS PH 2``) or an aliquot part."""
    if platted:
        subdivision = rng.choice(_SUBDIVISIONS[city])
        phase = f" PH {rng.randint(1, 6)}" if rng.random() < 0.35 else ""
        if rng.random() < 0.1:
            return f"LOT {rng.randint(1, 4)} SHORT PLAT {rng.randint(1200, 4999)}"
        return f"LOT {rng.randint(1, 40)} BLK {rng.randint(1, 12)} {subdivision}{phase}"
    return (
        f"SEC {rng.randint(1, 36)} TWN {rng.randint(7, 11)} RGE {rng.randint(23, 30)} "
        f"{rng.choice(_QUARTERS)}{rng.choice(_LEGAL_EXCEPTIONS)}"
    )


def _person_name(rng: random.Random, surname: str | None, converted_style: bool | None) -> str:
    first = rng.choice(_MALE_NAMES if rng.random() < 0.5 else _FEMALE_NAMES)
    last = surname or rng.choice(_SURNAMES)
    middle = f" {chr(rng.randint(65, 90))}" if rng.random() < 0.75 else ""
    if converted_style is None:
        converted_style = rng.random() < _CONVERTED_NAME_SHARE
    if converted_style:
        return f"{first.title()}{middle} {last.title()}"
    return f"{last} {first}{middle}"


def make_owner_name(
    rng: random.Random, owner_type: str, *, surname: str | None = None, converted_style: bool | None = None
) -> str:
    """A realistic owner name for ``owner_type`` (PACS style, upper case, surname first for people).

    Args:
        rng: the seeded random source.
        owner_type: one of OWNER_TYPES.
        surname: the surname to use for a person, so joint owners can share one.
        converted_style: write a person as ``John A Smith`` (records converted from an older system)
            instead of ``SMITH JOHN A``; None picks at random (mostly PACS style).

    Raises:
        ValueError: ``owner_type`` is not one of OWNER_TYPES.
    """
    if owner_type in ("Individual", "Joint"):
        return _person_name(rng, surname, converted_style)
    if owner_type == "Trust":
        if rng.random() < 0.3:
            return f"{_person_name(rng, surname, converted_style=False)} TRUSTEE"
        return f"{surname or rng.choice(_SURNAMES)} {rng.choice(_TRUST_FORMS)}"
    if owner_type == "LLC":
        return f"{rng.choice(_COMPANY_FIRST_WORDS)} {rng.choice(_COMPANY_SECOND_WORDS)} LLC"
    if owner_type == "Corporation":
        suffix = rng.choice(_CORPORATION_SUFFIXES)
        return f"{rng.choice(_COMPANY_FIRST_WORDS)} {rng.choice(_COMPANY_SECOND_WORDS)} {suffix}"
    if owner_type == "Government":
        return rng.choice(_GOVERNMENT_OWNERS)
    if owner_type == "Estate":
        person = _person_name(rng, surname, converted_style=False)
        return f"ESTATE OF {person}" if rng.random() < 0.5 else f"{person} ESTATE"
    raise ValueError(f"unknown owner type {owner_type!r}; expected one of {', '.join(OWNER_TYPES)}")


def split_percentages(rng: random.Random, owner_count: int) -> tuple[Decimal, ...]:
    """Ownership percentages for ``owner_count`` current owners, summing to exactly 100.00.

    Raises:
        ValueError: ``owner_count`` is not between 1 and MAX_CURRENT_OWNERS.
    """
    if owner_count == 1:
        return (FULL_OWNERSHIP,)
    if owner_count not in _OWNERSHIP_SPLITS:
        raise ValueError(f"owner_count must be between 1 and {MAX_CURRENT_OWNERS}, got {owner_count}")
    return tuple(Decimal(share) for share in _OWNERSHIP_SPLITS[owner_count].pick(rng))


def make_owner_set(
    rng: random.Random, owner_count: int, *, commercial: bool = False
) -> list[tuple[str, str, Decimal]]:
    """``owner_count`` current owners as (name, type, percentage), percentages summing to 100.00.

    A sole owner may be a person, trust, company, government or estate; two or three owners are a
    couple or family (``Joint``, sharing a surname) or unrelated co-owners (``Individual``).
    """
    percentages = split_percentages(rng, owner_count)
    if owner_count == 1:
        owner_type = (_COMMERCIAL_OWNER_TYPES if commercial else _SOLE_OWNER_TYPES).pick(rng)
        return [(make_owner_name(rng, owner_type), owner_type, percentages[0])]
    converted_style = rng.random() < _CONVERTED_NAME_SHARE  # one record, one style
    if rng.random() < 0.7:
        surname = rng.choice(_SURNAMES)
        return [
            (make_owner_name(rng, "Joint", surname=surname, converted_style=converted_style), "Joint", share)
            for share in percentages
        ]
    return [
        (make_owner_name(rng, "Individual", converted_style=converted_style), "Individual", share)
        for share in percentages
    ]


@dataclass(frozen=True)
class StructureDetails:
    """The descriptive columns of a new ``dbo.structure`` row.

    Attributes:
        square_footage: within SQUARE_FOOTAGE_RANGES for the type.
        condition: one of CONDITIONS.
        bedrooms: for dwellings; None for garages, shops, pole buildings and commercial buildings.
        bathrooms: one decimal place (``2.5``) for dwellings; None otherwise.
    """

    square_footage: int
    condition: str
    bedrooms: int | None
    bathrooms: Decimal | None


def make_structure_details(rng: random.Random, structure_type: str) -> StructureDetails:
    """Plausible size, condition and rooms for a structure of ``structure_type``.

    Raises:
        KeyError: ``structure_type`` is not one of STRUCTURE_TYPES.
    """
    low, high = SQUARE_FOOTAGE_RANGES[structure_type]
    if structure_type == "Commercial":
        square_footage = int(rng.lognormvariate(math.log(6000), 0.8))
    elif structure_type == "Single Family Residence":
        square_footage = int(rng.gauss(1900, 650))
    else:
        square_footage = int(rng.triangular(low, high, low + (high - low) * 0.35))
    square_footage = min(high, max(low, square_footage))
    condition = _CONDITION_WEIGHTS.pick(rng)
    if structure_type not in DWELLING_TYPES:
        return StructureDetails(square_footage, condition, None, None)
    if structure_type == "Duplex":
        bedrooms = rng.randint(4, 6)
        bathrooms = _BATHROOM_STEPS[rng.randint(2, 6)]  # 2.0 .. 4.0
    elif structure_type == "Manufactured Home":
        bedrooms = 2 if square_footage < 1100 else rng.randint(3, 4)
        bathrooms = _BATHROOM_STEPS[0 if square_footage < 1100 else rng.randint(1, 2)]
    else:
        # Bedrooms and baths follow size: a 900 sq ft house has 2 bedrooms, a 3,500 sq ft one 4-6.
        size_band = min(4, square_footage // 800)
        bedrooms = min(6, max(1, size_band + rng.randint(1, 2)))
        bathrooms = _BATHROOM_STEPS[min(len(_BATHROOM_STEPS) - 1, size_band + rng.randint(0, 2))]
    return StructureDetails(square_footage, condition, bedrooms, bathrooms)


def improvement_value(
    structure_type: str, square_footage: int, condition: str, year_built: int, as_of_year: int
) -> int:
    """The assessed improvement value of one structure in ``as_of_year`` dollars (rounded to $10)."""
    if year_built == UNKNOWN_YEAR_BUILT:
        age_factor = 0.8
    else:
        age_factor = max(0.4, 1.0 - 0.006 * max(0, as_of_year - year_built))
    amount = (
        square_footage
        * _DOLLARS_PER_SQUARE_FOOT[structure_type]
        * _CONDITION_FACTOR.get(condition, 1.0)
        * age_factor
    )
    return round_dollars(amount)


def market_trend(tax_year: int) -> float:
    """How much values moved into ``tax_year`` from the year before (1.04 = +4 %)."""
    return _MARKET_TREND.get(tax_year, _DEFAULT_MARKET_TREND)


# -- Generation ------------------------------------------------------------------------------------


def _adjust_counts(
    rng: random.Random, counts: list[int], target: int, minima: Sequence[int], maxima: Sequence[int]
) -> None:
    """Nudge ``counts`` one at a time (random order) until they sum to ``target`` within the bounds."""
    difference = target - sum(counts)
    order = list(range(len(counts)))
    while difference:
        rng.shuffle(order)
        changed = False
        for index in order:
            if difference > 0 and counts[index] < maxima[index]:
                counts[index] += 1
                difference -= 1
                changed = True
            elif difference < 0 and counts[index] > minima[index]:
                counts[index] -= 1
                difference += 1
                changed = True
            if not difference:
                break
        if not changed:  # the Scale checks make this unreachable; guard against a silent endless loop
            raise ValueError(f"cannot distribute {target} rows within the per-property limits")


def _year_built(rng: random.Random, land_use: str) -> int:
    decade = _DECADES_BUILT.pick(rng)
    year = rng.randint(decade, min(decade + 9, LATEST_TAX_YEAR))
    if land_use == "manufactured":
        year = max(year, rng.randint(1965, 1985))  # manufactured homes on the roll are 1965 or newer
    return year


def _acreage(rng: random.Random, land_use: str) -> Decimal:
    median, sigma = _ACREAGE_SHAPES[land_use]
    acres = min(40.0, max(0.1, rng.lognormvariate(math.log(median), sigma)))
    return Decimal(f"{acres:.4f}")


@dataclass
class _PlannedStructure:
    structure_type: str
    details: StructureDetails
    year_built: int


class _DatasetBuilder:
    """Builds the clean rows table by table; ids are handed out in row order."""

    def __init__(self, scale: Scale, rng: random.Random) -> None:
        self.scale = scale
        self.rng = rng
        self.properties: list[PropertyRow] = []
        self.owners: list[OwnerRow] = []
        self.valuations: list[ValuationRow] = []
        self.structures: list[StructureRow] = []
        self.parcel_numbers: set[str] = set()

    def build(self) -> None:
        rng = self.rng
        property_count = self.scale.properties
        land_uses = self._land_uses()
        structure_counts = self._structure_counts(land_uses)
        owner_counts = self._owner_counts()
        valuation_counts = [self.scale.valuations // property_count] * property_count
        _adjust_counts(
            rng,
            valuation_counts,
            self.scale.valuations,
            [1] * property_count,
            [MAX_TAX_YEARS_PER_PROPERTY] * property_count,
        )
        next_owner_id = OWNER_ID_START
        next_valuation_id = VALUATION_ID_START
        next_structure_id = STRUCTURE_ID_START
        for index in range(property_count):
            property_id = PROPERTY_ID_START + index
            land_use = land_uses[index]
            year_built, city, acreage = self._add_property(property_id, land_use)
            planned = self._plan_structures(land_use, structure_counts[index], year_built)
            for structure in planned:
                details = structure.details
                self.structures.append(
                    (
                        next_structure_id,
                        property_id,
                        structure.structure_type,
                        details.square_footage,
                        details.condition,
                        details.bedrooms,
                        details.bathrooms,
                        structure.year_built,
                    )
                )
                next_structure_id += 1
            current_count, former_count = owner_counts[index]
            next_owner_id = self._add_owners(
                next_owner_id, property_id, land_use, year_built, current_count, former_count
            )
            next_valuation_id = self._add_valuations(
                next_valuation_id, property_id, land_use, city, acreage, planned, valuation_counts[index]
            )

    def _land_uses(self) -> list[str]:
        rng = self.rng
        property_count = self.scale.properties
        structure_count = self.scale.structures
        vacant_count = max(round(property_count * _VACANT_SHARE), property_count - structure_count)
        if structure_count:
            # Enough improved parcels to hold every structure at the per-property maximum.
            improved_needed = math.ceil(structure_count / MAX_STRUCTURES_PER_PROPERTY)
            vacant_count = min(vacant_count, property_count - improved_needed)
        vacant = set(rng.sample(range(property_count), vacant_count))
        return ["vacant" if index in vacant else _LAND_USES.pick(rng) for index in range(property_count)]

    def _structure_counts(self, land_uses: list[str]) -> list[int]:
        rng = self.rng
        counts = [0 if use == "vacant" else _STRUCTURE_COUNTS.pick(rng) for use in land_uses]
        minima = [0 if use == "vacant" else 1 for use in land_uses]
        maxima = [0 if use == "vacant" else MAX_STRUCTURES_PER_PROPERTY for use in land_uses]
        _adjust_counts(rng, counts, self.scale.structures, minima, maxima)
        return counts

    def _owner_counts(self) -> list[tuple[int, int]]:
        rng = self.rng
        property_count = self.scale.properties
        current = [_CURRENT_OWNER_COUNTS.pick(rng) for _ in range(property_count)]
        totals = [count + _FORMER_OWNER_COUNTS.pick(rng) for count in current]
        _adjust_counts(
            rng,
            totals,
            self.scale.owners,
            [1] * property_count,
            [MAX_OWNER_ROWS_PER_PROPERTY] * property_count,
        )
        return [
            (min(cur, total), total - min(cur, total)) for cur, total in zip(current, totals, strict=True)
        ]

    def _unique_parcel_number(self) -> str:
        rng = self.rng
        while True:
            # Most parcels are originals (suffix 000); some were split before the data set's time.
            suffix = 0 if rng.random() < 0.9 else rng.randint(1, 4)
            parcel_number = make_parcel_number(rng, suffix)
            if parcel_number not in self.parcel_numbers:
                self.parcel_numbers.add(parcel_number)
                return parcel_number

    def _add_property(self, property_id: int, land_use: str) -> tuple[int | None, str, Decimal]:
        rng = self.rng
        rural = land_use in ("rural", "vacant") and rng.random() < 0.7
        city = pick_city(rng, rural=rural)
        acreage = _acreage(rng, land_use)
        platted = not rural and acreage < 5
        year_built = None if land_use == "vacant" else _year_built(rng, land_use)
        self.properties.append(
            (
                property_id,
                self._unique_parcel_number(),
                make_address(rng, city, rural=rural),
                city,
                STATE_CODE,
                pick_zip_code(rng, city),
                make_legal_description(rng, city, platted=platted),
                acreage,
                year_built,
            )
        )
        return year_built, city, acreage

    def _plan_structures(self, land_use: str, count: int, year_built: int | None) -> list[_PlannedStructure]:
        if not count or year_built is None:
            return []
        rng = self.rng
        planned: list[_PlannedStructure] = []
        for position in range(count):
            if position == 0:
                structure_type = _MAIN_STRUCTURE[land_use].pick(rng)
                structure_year = year_built
            else:
                structure_type = _EXTRA_STRUCTURE[land_use].pick(rng)
                structure_year = rng.randint(year_built, LATEST_TAX_YEAR)
            if rng.random() < _UNKNOWN_YEAR_SHARE:
                structure_year = UNKNOWN_YEAR_BUILT
            planned.append(
                _PlannedStructure(structure_type, make_structure_details(rng, structure_type), structure_year)
            )
        return planned

    def _add_owners(
        self,
        next_owner_id: int,
        property_id: int,
        land_use: str,
        year_built: int | None,
        current_count: int,
        former_count: int,
    ) -> int:
        rng = self.rng
        earliest = date(max(1970, year_built or 1970), 1, 1)
        sale_date = date.fromordinal(rng.randint(earliest.toordinal(), AS_OF_DATE.toordinal()))
        # Former owners, oldest first: each held the parcel until the next one bought it.
        former_periods: list[tuple[date, date]] = []
        period_end = sale_date
        for _ in range(former_count):
            held_from = period_end - timedelta(days=rng.randint(400, 7300))
            period_start = min(period_end, max(_EARLIEST_OWNERSHIP, held_from))
            former_periods.append((period_start, period_end))
            period_end = period_start
        for period_start, period_end in reversed(former_periods):
            owner_type = "Individual" if rng.random() < 0.8 else "Trust"
            self.owners.append(
                (
                    next_owner_id,
                    property_id,
                    make_owner_name(rng, owner_type),
                    owner_type,
                    FULL_OWNERSHIP,
                    period_start,
                    period_end,
                )
            )
            next_owner_id += 1
        for name, owner_type, share in make_owner_set(
            rng, current_count, commercial=land_use == "commercial"
        ):
            self.owners.append((next_owner_id, property_id, name, owner_type, share, sale_date, None))
            next_owner_id += 1
        return next_owner_id

    def _add_valuations(
        self,
        next_valuation_id: int,
        property_id: int,
        land_use: str,
        city: str,
        acreage: Decimal,
        structures: list[_PlannedStructure],
        year_count: int,
    ) -> int:
        rng = self.rng
        base, per_acre = _LAND_VALUE_MODEL[land_use]
        land_latest = (base + per_acre * float(acreage)) * _CITY_LAND_FACTOR[city] * rng.uniform(0.85, 1.15)
        structure_values = [
            (
                s.year_built,
                improvement_value(
                    s.structure_type,
                    s.details.square_footage,
                    s.details.condition,
                    s.year_built,
                    LATEST_TAX_YEAR,
                ),
            )
            for s in structures
        ]
        first_year = LATEST_TAX_YEAR - year_count + 1
        # Cumulative growth from each tax year to the latest one, compounded backwards.
        land_growth = 1.0
        improvement_growth = 1.0
        yearly: list[tuple[int, int, int]] = []
        next_land: int | None = None
        for tax_year in range(LATEST_TAX_YEAR, first_year - 1, -1):
            land = round_dollars(land_latest / land_growth)
            if next_land is not None:
                land = max(10, min(land, next_land - 10))  # strictly growing year over year
            improvement = sum(
                value
                for built, value in structure_values
                if built == UNKNOWN_YEAR_BUILT or built < tax_year  # assessed once standing on Jan 1
            )
            improvement = round_dollars(improvement / improvement_growth) if improvement else 0
            yearly.append((tax_year, land, improvement))
            next_land = land
            trend = market_trend(tax_year)
            land_growth *= max(1.01, trend * rng.uniform(0.97, 1.03))
            improvement_growth *= max(1.0, trend * rng.uniform(0.95, 1.0))
        for tax_year, land, improvement in reversed(yearly):
            assessed = land + improvement
            self.valuations.append(
                (
                    next_valuation_id,
                    property_id,
                    tax_year,
                    to_money(assessed),
                    to_money(market_value_near(rng, assessed)),
                    to_money(land),
                    to_money(improvement),
                )
            )
            next_valuation_id += 1
        return next_valuation_id


# -- Dirty data ------------------------------------------------------------------------------------


def _quotas(rng: random.Random, row_count: int, dirty_rate: float, kinds: tuple[str, ...]) -> dict[str, int]:
    """Split ``dirty_rate`` of ``row_count`` evenly over ``kinds`` (the remainder to random kinds)."""
    total = round(row_count * dirty_rate)
    per_kind, remainder = divmod(total, len(kinds))
    shuffled = list(kinds)
    rng.shuffle(shuffled)
    return {kind: per_kind + (1 if position < remainder else 0) for position, kind in enumerate(shuffled)}


def _malformed_parcel_number(rng: random.Random, parcel_number: str) -> str:
    variant = rng.randrange(5)
    if variant == 0:
        return parcel_number.replace("-", "")  # dashes lost in an export
    if variant == 1:
        return parcel_number[:-4]  # split suffix missing
    if variant == 2:
        return parcel_number.replace("0", "O", 1) if "0" in parcel_number else parcel_number + "X"
    if variant == 3:
        return parcel_number.replace("-", " ")
    return f"{parcel_number[0]}{parcel_number[2:]}"  # first dash dropped


def _inject_property_dirt(
    rng: random.Random, properties: list[PropertyRow], dirty_rate: float, dirty: dict[str, int]
) -> None:
    quotas = _quotas(rng, len(properties), dirty_rate, DIRTY_KINDS[PROPERTY_TABLE])
    chosen = rng.sample(range(len(properties)), sum(quotas.values()))
    start = 0
    for kind, quota in quotas.items():
        for index in chosen[start : start + quota]:
            property_id, parcel, address, city, state, zip_code, legal, acreage, year_built = properties[
                index
            ]
            if kind == "missing_zip":
                zip_code = rng.choice((None, ""))
            elif kind == "zip_wrong_length":
                zip_code = str(zip_code)
                zip_code = zip_code[:4] if rng.random() < 0.5 else f"{zip_code}{rng.randint(10, 99)}"
            elif kind == "invalid_state":
                # Two characters at most: state is varchar(2), and the row must still load.
                state = rng.choice(("XX", "ZZ", "W.", "WS"))
            elif kind == "negative_acreage":
                acreage = -(acreage or MIN_ACREAGE)
            elif kind == "malformed_parcel_number":
                parcel = _malformed_parcel_number(rng, parcel)
            else:
                year_built = rng.choice((1500, 2150))
            properties[index] = (
                property_id,
                parcel,
                address,
                city,
                state,
                zip_code,
                legal,
                acreage,
                year_built,
            )
        if quota:
            dirty[kind] = quota
        start += quota


def _inject_owner_dirt(
    rng: random.Random, owners: list[OwnerRow], dirty_rate: float, dirty: dict[str, int]
) -> None:
    quotas = _quotas(rng, len(owners), dirty_rate, DIRTY_KINDS[OWNER_TABLE])
    current_rows: dict[int, list[int]] = {}
    former_rows: list[int] = []
    for index, row in enumerate(owners):
        if row[6] is None:
            current_rows.setdefault(row[1], []).append(index)
        else:
            former_rows.append(index)
    used: set[int] = set()

    # An over-100 owner set spans two or three rows, so it takes about half as many sets as rows.
    set_quota = (quotas["owner_set_over_100"] + 1) // 2
    shared_sets = [rows for rows in current_rows.values() if len(rows) >= 2]
    for rows in rng.sample(shared_sets, min(set_quota, len(shared_sets))):
        inflated_share = Decimal(120 // len(rows)).quantize(CENTS)  # 60 + 60, or 40 + 40 + 40
        for index in rows:
            owner_id, property_id, name, owner_type, _, start, end = owners[index]
            owners[index] = (owner_id, property_id, name, owner_type, inflated_share, start, end)
            used.add(index)
        dirty["owner_set_over_100"] = dirty.get("owner_set_over_100", 0) + 1

    for index in rng.sample(former_rows, min(quotas["end_before_start"], len(former_rows))):
        owner_id, property_id, name, owner_type, share, start, _ = owners[index]
        if start is None:
            continue
        end = start - timedelta(days=rng.randint(1, 3650))
        owners[index] = (owner_id, property_id, name, owner_type, share, start, end)
        used.add(index)
        dirty["end_before_start"] = dirty.get("end_before_start", 0) + 1

    free_rows = [index for index in range(len(owners)) if index not in used]
    for index in rng.sample(free_rows, min(quotas["ownership_percentage_out_of_range"], len(free_rows))):
        owner_id, property_id, name, owner_type, _, start, end = owners[index]
        bad_share = rng.choice((Decimal("0.00"), Decimal("120.00"), Decimal("150.00"), Decimal("250.00")))
        owners[index] = (owner_id, property_id, name, owner_type, bad_share, start, end)
        dirty["ownership_percentage_out_of_range"] = dirty.get("ownership_percentage_out_of_range", 0) + 1


def _inject_valuation_dirt(
    rng: random.Random, valuations: list[ValuationRow], dirty_rate: float, dirty: dict[str, int]
) -> None:
    quotas = _quotas(rng, len(valuations), dirty_rate, DIRTY_KINDS[VALUATION_TABLE])
    chosen = rng.sample(range(len(valuations)), sum(quotas.values()))
    negative_count = quotas["negative_value"]
    for position, index in enumerate(chosen):
        value_id, property_id, tax_year, assessed, market, land, improvement = valuations[index]
        if assessed is None or market is None or land is None or improvement is None:
            continue  # clean rows carry every value; nothing to corrupt consistently otherwise
        if position < negative_count:
            if rng.random() < 0.5:
                market = -market
            else:
                # Sign flipped on the whole row: still land + improvement == assessed, only negative.
                assessed, land = -assessed, -land
                improvement = -improvement if improvement else improvement
            kind = "negative_value"
        else:
            assessed += Decimal(rng.choice((-1, 1)) * rng.randint(1, 50) * 1000).quantize(CENTS)
            assessed = abs(assessed) or Decimal("1000.00")
            if assessed == land + improvement:  # the flip landed on the right sum: push it off
                assessed += Decimal("10.00")
            kind = "value_sum_mismatch"
        valuations[index] = (value_id, property_id, tax_year, assessed, market, land, improvement)
        dirty[kind] = dirty.get(kind, 0) + 1


def _inject_structure_dirt(
    rng: random.Random, structures: list[StructureRow], dirty_rate: float, dirty: dict[str, int]
) -> None:
    quotas = _quotas(rng, len(structures), dirty_rate, DIRTY_KINDS[STRUCTURE_TABLE])
    chosen = rng.sample(range(len(structures)), sum(quotas.values()))
    year_count = quotas["structure_implausible_year_built"]
    for position, index in enumerate(chosen):
        (
            structure_id,
            property_id,
            structure_type,
            square_footage,
            condition,
            bedrooms,
            bathrooms,
            year_built,
        ) = structures[index]
        if position < year_count:
            year_built = rng.choice((1500, 2150))
            kind = "structure_implausible_year_built"
        else:
            square_footage = -abs(square_footage or 1)
            kind = "negative_square_footage"
        structures[index] = (
            structure_id,
            property_id,
            structure_type,
            square_footage,
            condition,
            bedrooms,
            bathrooms,
            year_built,
        )
        dirty[kind] = dirty.get(kind, 0) + 1


def generate(scale: Scale, seed: int, dirty_rate: float = 0.0) -> PacsDataset:
    """Generate the PACS tables for ``scale``: the same seed gives the same data set.

    Args:
        scale: how many rows of each table (exactly).
        seed: seeds the only random source, ``random.Random(seed)``.
        dirty_rate: the fraction (about, per table) of rows that get realistic bad data, one kind per
            row, without changing row counts, keys or NOT NULL columns. The clean rows are identical
            whatever the rate: bad data is planted after the clean data set is built.

    Returns:
        The rows, sorted by primary key, and the injected bad data counted by kind.

    Raises:
        ValueError: ``dirty_rate`` is not within [0, 1].
    """
    if not 0.0 <= dirty_rate <= 1.0:
        raise ValueError(f"dirty_rate must be between 0 and 1, got {dirty_rate}")
    rng = random.Random(seed)  # noqa: S311  # simulation data, not security: reproducible by design
    builder = _DatasetBuilder(scale, rng)
    builder.build()
    dirty: dict[str, int] = {}
    if dirty_rate > 0:
        _inject_property_dirt(rng, builder.properties, dirty_rate, dirty)
        _inject_owner_dirt(rng, builder.owners, dirty_rate, dirty)
        _inject_valuation_dirt(rng, builder.valuations, dirty_rate, dirty)
        _inject_structure_dirt(rng, builder.structures, dirty_rate, dirty)
        dirty = {kind: count for kind, count in dirty.items() if count}
    logger.debug(
        "generated %d properties, %d owners, %d valuations, %d structures (seed %d, dirty %s)",
        len(builder.properties),
        len(builder.owners),
        len(builder.valuations),
        len(builder.structures),
        seed,
        dirty or "none",
    )
    return PacsDataset(builder.properties, builder.owners, builder.valuations, builder.structures, dirty)
