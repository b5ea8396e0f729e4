"""Named business rules for PACS rows, and the cross-row owner-share ledger.

A :class:`Rule` names one check of one field; :func:`check_row` runs an entity's rules over a row
image (a dict with the PascalCase fields of ``schemas/*.row.avsc``, already of the right types – see
:mod:`stream_processors.validation`) and returns a :class:`Violation` per failed rule. Rules are pure:
the only outside input is the year that bounds "plausible" years, taken from an ``as_of`` date the
caller passes (the event's commit date, so a replay gives the same verdicts).

Severity ``error`` rejects the row (dead-letter topic); ``warning`` is reported and the row passes.

Rows of ``dbo.PropertyOwner`` also have a cross-row rule, ``OWN-SET-OVER-100``: the current owners of
a property may not hold more than 100 %. :class:`OwnerShareLedger` keeps the shares per property
(state a Faust table can hold: ``{"<PropertyOwnerID>": "<share>"}`` per property key) and checks it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from stream_processors.models import condition_of, owner_type_of

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
RowCheck = Callable[[Mapping[str, Any], int], bool]
"""``check(row, latest_plausible_year) -> True if the row passes``."""

PARCEL_NUMBER_PATTERN: Final = re.compile(r"\A[1-3]-[0-9]{4}-[0-9]{3}-[0-9]{4}-[0-9]{3}\Z")
"""Benton's 15-digit parcel number, e.g. ``1-0289-101-0021-000`` (the generator's format)."""
ZIP_CODE_PATTERN: Final = re.compile(r"\A[0-9]{5}(?:-?[0-9]{4})?\Z")
"""ZIP or ZIP+4: ``99336``, ``99336-1234`` or ``993361234``."""

US_STATE_CODES: Final = frozenset(
    {
        # The 50 states
        *("AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA"),
        *("KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ"),
        *("NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT"),
        *("VA", "WA", "WV", "WI", "WY"),
        # The federal district, the territories, the freely associated states, the military "states"
        *("DC", "AS", "GU", "MP", "PR", "VI", "FM", "MH", "PW", "AA", "AE", "AP"),
    }
)
"""Every two-letter USPS state, district, territory and military code."""

EARLIEST_YEAR_BUILT: Final = 1800
EARLIEST_TAX_YEAR: Final = 1900
UNKNOWN_YEAR_BUILT: Final = 0
"""What PACS writes for an unknown year built: it becomes NULL and is not a violation."""
FULL_OWNERSHIP: Final = Decimal("100.00")
DEFAULT_VALUE_SUM_TOLERANCE: Final = Decimal("1.00")
"""How far ``LandValue + ImprovementValue`` may be from ``AssessedValue`` (dollars)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A named business rule on one field.

    Attributes:
        id: stable identifier, e.g. ``PROP-ZIP``; dashboards and dead letters use it.
        severity: ``error`` rejects the row, ``warning`` only reports it.
        field: the (PascalCase) field the rule checks; several rules may share an id, one per field.
        message: what is wrong, in the words an operator reads.
        check: ``check(row, latest_plausible_year)``, True if the row passes; None for rules checked
            elsewhere (``SCHEMA`` by the models, ``OWN-SET-OVER-100`` by the ledger).
    """

    id: str
    severity: Severity
    field: str
    message: str
    check: RowCheck | None = dataclasses.field(default=None, repr=False, compare=False)

    def violation(
        self, value: object, *, field_name: str | None = None, message: str | None = None
    ) -> Violation:
        """A violation of this rule.

        Args:
            value: the offending value (rendered with ``str``; None stays None).
            field_name: the field, if not the rule's own (``SCHEMA`` names the field it found).
            message: a more specific message than the rule's.
        """
        return Violation(
            self.id,
            self.severity,
            self.field if field_name is None else field_name,
            self.message if message is None else message,
            None if value is None else str(value),
        )


@dataclass(frozen=True, slots=True)
class Violation:
    """One failed rule on one row.

    Attributes:
        rule_id: the rule's id, e.g. ``VAL-SUM``.
        severity: ``error`` or ``warning``.
        field: the PascalCase field at fault.
        message: what is wrong.
        value: the offending value as text, or None if it was NULL.
    """

    rule_id: str
    severity: Severity
    field: str
    message: str
    value: str | None

    def as_record(self) -> dict[str, str | None]:
        """The ``io.terrafusion.pacs.Violation`` Avro record (an item of a dead letter)."""
        return {
            "rule_id": self.rule_id,
            "severity": self.severity,
            "field": self.field,
            "message": self.message,
            "value": self.value,
        }


def latest_plausible_year(as_of: date | None = None) -> int:
    """The latest plausible year built or tax year: the year of ``as_of`` (default today, UTC) + 1."""
    return (as_of or datetime.now(UTC).date()).year + 1


# -- Row checks (pure; True = the row passes) ------------------------------------------------------


def _parcel_number_ok(row: Mapping[str, Any], _latest: int) -> bool:
    parcel_number = row.get("ParcelNumber")
    return parcel_number is not None and PARCEL_NUMBER_PATTERN.match(parcel_number.strip()) is not None


def _state_ok(row: Mapping[str, Any], _latest: int) -> bool:
    state = row.get("State")
    return state is None or state.strip().upper() in US_STATE_CODES


def _zip_present(row: Mapping[str, Any], _latest: int) -> bool:
    zip_code = row.get("ZipCode")
    return zip_code is not None and not zip_code.isspace() and zip_code != ""


def _zip_format_ok(row: Mapping[str, Any], _latest: int) -> bool:
    zip_code = row.get("ZipCode")
    if zip_code is None:
        return True
    zip_code = zip_code.strip()
    return not zip_code or ZIP_CODE_PATTERN.match(zip_code) is not None  # blank: PROP-ZIP-MISSING


def _acreage_ok(row: Mapping[str, Any], _latest: int) -> bool:
    acreage = row.get("Acreage")
    return acreage is None or acreage >= 0


def _year_built_ok(row: Mapping[str, Any], latest: int) -> bool:
    year = row.get("YearBuilt")
    return year is None or year == UNKNOWN_YEAR_BUILT or EARLIEST_YEAR_BUILT <= year <= latest


def _owner_name_ok(row: Mapping[str, Any], _latest: int) -> bool:
    name = row.get("OwnerName")
    return name is not None and name != "" and not name.isspace()


def _percentage_ok(row: Mapping[str, Any], _latest: int) -> bool:
    share = row.get("OwnershipPercentage")
    return share is None or 0 < share <= FULL_OWNERSHIP


def _owner_dates_ok(row: Mapping[str, Any], _latest: int) -> bool:
    start, end = row.get("StartDate"), row.get("EndDate")
    return start is None or end is None or end >= start


def _owner_type_known(row: Mapping[str, Any], _latest: int) -> bool:
    return owner_type_of(row.get("OwnerType")) is not None


def _tax_year_ok(row: Mapping[str, Any], latest: int) -> bool:
    year = row.get("TaxYear")
    return year is not None and EARLIEST_TAX_YEAR <= year <= latest


def _square_footage_ok(row: Mapping[str, Any], _latest: int) -> bool:
    square_feet = row.get("SquareFootage")
    return square_feet is None or square_feet > 0


def _condition_known(row: Mapping[str, Any], _latest: int) -> bool:
    return condition_of(row.get("Condition")) is not None


def _non_negative(field_name: str) -> RowCheck:
    def non_negative(row: Mapping[str, Any], _latest: int) -> bool:
        value = row.get(field_name)
        return value is None or value >= 0

    return non_negative


def _value_sum(tolerance: Decimal) -> RowCheck:
    def values_add_up(row: Mapping[str, Any], _latest: int) -> bool:
        assessed, land, improvement = (
            row.get("AssessedValue"),
            row.get("LandValue"),
            row.get("ImprovementValue"),
        )
        if assessed is None or land is None or improvement is None:
            return True
        return bool(abs(land + improvement - assessed) <= tolerance)

    return values_add_up


def build_rules(*, value_sum_tolerance: Decimal = DEFAULT_VALUE_SUM_TOLERANCE) -> dict[str, tuple[Rule, ...]]:
    """Build the row rules of every entity.

    Args:
        value_sum_tolerance: how far (dollars) ``LandValue + ImprovementValue`` may be from
            ``AssessedValue`` before ``VAL-SUM`` fires.

    Returns:
        ``{entity: rules}`` for ``properties``, ``owners``, ``valuations`` and ``structures``.
    """
    money_fields = ("AssessedValue", "MarketValue", "LandValue", "ImprovementValue")
    return {
        "properties": (
            Rule(
                "PROP-PARCEL-FORMAT",
                "error",
                "ParcelNumber",
                "parcel number is not in the county's format 9-9999-999-9999-999",
                _parcel_number_ok,
            ),
            Rule("PROP-STATE", "error", "State", "state is not a two-letter USPS state code", _state_ok),
            Rule("PROP-ZIP-MISSING", "error", "ZipCode", "ZIP code is missing", _zip_present),
            Rule(
                "PROP-ZIP",
                "error",
                "ZipCode",
                "ZIP code is not 5 digits or ZIP+4 (99999, 99999-9999, 999999999)",
                _zip_format_ok,
            ),
            Rule("PROP-ACREAGE", "error", "Acreage", "acreage is negative", _acreage_ok),
            Rule(
                "PROP-YEAR-BUILT",
                "error",
                "YearBuilt",
                f"year built is not between {EARLIEST_YEAR_BUILT} and next year (0 = unknown is allowed)",
                _year_built_ok,
            ),
        ),
        "owners": (
            Rule("OWN-NAME-BLANK", "error", "OwnerName", "owner name is blank", _owner_name_ok),
            Rule(
                "OWN-PERCENT-RANGE",
                "error",
                "OwnershipPercentage",
                "ownership percentage is not above 0 and at most 100",
                _percentage_ok,
            ),
            Rule("OWN-DATES", "error", "EndDate", "ownership ends before it starts", _owner_dates_ok),
            Rule(
                "OWN-TYPE",
                "warning",
                "OwnerType",
                "owner type is not a known kind; recorded as 'unknown'",
                _owner_type_known,
            ),
        ),
        "valuations": (
            *(
                Rule("VAL-NON-NEGATIVE", "error", name, f"{name} is negative", _non_negative(name))
                for name in money_fields
            ),
            Rule(
                "VAL-SUM",
                "error",
                "AssessedValue",
                f"assessed value differs from land + improvement value by more than {value_sum_tolerance}",
                _value_sum(value_sum_tolerance),
            ),
            Rule(
                "VAL-TAX-YEAR",
                "error",
                "TaxYear",
                f"tax year is not between {EARLIEST_TAX_YEAR} and next year",
                _tax_year_ok,
            ),
        ),
        "structures": (
            Rule("STR-SQFT", "error", "SquareFootage", "square footage is not positive", _square_footage_ok),
            Rule(
                "STR-YEAR-BUILT",
                "error",
                "YearBuilt",
                f"year built is not between {EARLIEST_YEAR_BUILT} and next year (0 = unknown is allowed)",
                _year_built_ok,
            ),
            Rule(
                "STR-ROOMS", "error", "Bedrooms", "number of bedrooms is negative", _non_negative("Bedrooms")
            ),
            Rule(
                "STR-ROOMS",
                "error",
                "Bathrooms",
                "number of bathrooms is negative",
                _non_negative("Bathrooms"),
            ),
            Rule(
                "STR-CONDITION",
                "warning",
                "Condition",
                "condition is not a known rating; recorded as 'unknown'",
                _condition_known,
            ),
        ),
    }


RULES_BY_ENTITY: Final[Mapping[str, tuple[Rule, ...]]] = build_rules()
"""The row rules of each entity, with the default tolerances."""

SCHEMA_RULE: Final = Rule("SCHEMA", "error", "", "value does not fit the row schema")
"""A field has the wrong type or shape (reported with the field's name and pydantic's message)."""
OWNER_SET_RULE: Final = Rule(
    "OWN-SET-OVER-100",
    "error",
    "OwnershipPercentage",
    "the current owners of the property would hold more than 100 %",
)
"""Cross-row: checked by :class:`OwnerShareLedger`, not by :func:`check_row`."""


def all_rules(rules: Mapping[str, Iterable[Rule]] = RULES_BY_ENTITY) -> list[Rule]:
    """Every rule, row rules by entity then the schema and cross-row rules (for docs and dashboards)."""
    return [rule for entity_rules in rules.values() for rule in entity_rules] + [SCHEMA_RULE, OWNER_SET_RULE]


def check_row(
    entity: str,
    row: Mapping[str, Any],
    *,
    as_of: date | None = None,
    rules: Mapping[str, tuple[Rule, ...]] | None = None,
) -> list[Violation]:
    """Run an entity's row rules over one row image.

    Args:
        entity: ``properties``, ``owners``, ``valuations`` or ``structures``.
        row: PascalCase fields of the right types (validate the shape first).
        as_of: the date "next year" is counted from for plausible years; default today (UTC).
        rules: a registry from :func:`build_rules`; default :data:`RULES_BY_ENTITY`.

    Returns:
        The violations, in rule order; empty if the row passes.

    Raises:
        KeyError: the entity is unknown.
    """
    latest = latest_plausible_year(as_of)
    violations: list[Violation] = []
    for rule in (rules or RULES_BY_ENTITY)[entity]:
        if rule.check is not None and not rule.check(row, latest):
            violations.append(rule.violation(row.get(rule.field)))
    return violations


# -- Cross-row: the owner-share ledger --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnerShare:
    """One owner's share of a property, with the dates that still matter.

    Attributes:
        share: percentage owned.
        start: first day, kept only while it is after the ``as_of`` date the share was applied on
            (a sale recorded ahead of time); None once started.
        end: last day (``EndDate``); None while open-ended. Already ended owners are not kept.
    """

    share: Decimal
    start: date | None = None
    end: date | None = None

    def current_on(self, day: date) -> bool:
        """Whether the owner holds the share on ``day``: started, and EndDate is None or after it."""
        return (self.start is None or self.start <= day) and (self.end is None or self.end > day)

    def to_text(self) -> str:
        """``"50.00"``, or ``"50.00|<start>|<end>"`` (ISO dates, blank if None) if either date is kept."""
        if self.start is None and self.end is None:
            return str(self.share)
        start = "" if self.start is None else self.start.isoformat()
        end = "" if self.end is None else self.end.isoformat()
        return f"{self.share}|{start}|{end}"

    @classmethod
    def from_text(cls, text: str) -> OwnerShare:
        """Parse :meth:`to_text`'s form.

        Raises:
            ValueError: the text is not in that form.
        """
        share_text, _, dates = text.partition("|")
        start_text, _, end_text = dates.partition("|")
        try:
            share = Decimal(share_text)
        except InvalidOperation:
            raise ValueError(f"not an owner share: {text!r}") from None
        return cls(
            share,
            date.fromisoformat(start_text) if start_text else None,
            date.fromisoformat(end_text) if end_text else None,
        )


class OwnerShareLedger:
    """The current owners' shares of each property, to check ``OWN-SET-OVER-100`` across rows.

    An owner counts as current on a day when its ``EndDate`` is None or after that day (and, for a
    sale recorded ahead of time, its ``StartDate`` is not after it). :meth:`apply` records every owner
    row – even one that breaks the rule, so a later correction that brings the property back to at
    most 100 % is accepted – and reports a violation when the current owners would hold more than
    100 %.

    The state of one property, :meth:`to_state`, is ``{"<PropertyOwnerID>": "<share>"}`` (JSON-safe:
    a Faust table keyed by PropertyID can hold it); a share recorded with a future start or an end
    date reads ``"50.00|<start>|<end>"``. Owners already ended are dropped, which assumes ``as_of``
    does not go backwards (events are applied in commit order).

    Replays. Applied with source positions (:func:`pacs_sync.lsn.position_bytes` as hex), the ledger
    also keeps, per owner, the position of the last change it applied (``"seen"`` in the state, ended
    owners included) and the verdict of that change if it broke the rule (``"rejected"``). A change
    at or before an owner's seen position is a replay: at-least-once processing re-reads the events
    after the last committed input offset while the ledger, saved per event to its changelog, already
    holds their effect and maybe later ones. A replay changes nothing and gets its first verdict
    again, so a restart re-emits what it emitted the first time (a buyer replayed after a later
    sale is not checked against the later buyers).
    """

    _SEEN, _REJECTED = "seen", "rejected"  # state keys beside the owner ids (which are digits)

    def __init__(self) -> None:
        """Create an empty ledger."""
        self._shares: dict[int, dict[int, OwnerShare]] = {}
        self._property_of: dict[int, int] = {}
        self._seen: dict[int, dict[int, str]] = {}
        self._rejected: dict[int, dict[int, str]] = {}

    def apply(
        self,
        row: Mapping[str, Any] | None,
        key: int,
        *,
        property_id: int | None = None,
        as_of: date | None = None,
        position: str | None = None,
    ) -> Violation | None:
        """Record an owner row (insert, update or snapshot read) or its delete, and check the property.

        Args:
            row: the owner's row image (PascalCase fields), or None for a delete.
            key: the owner's ``PropertyOwnerID``.
            property_id: the property the owner belonged to before this change (the ``before``
                image's ``PropertyID``); needed for a delete unless this ledger has seen the owner.
                An update that moves the owner to another property removes it from this one.
            as_of: the day the check is for (the change's commit date); default today (UTC).
            position: the change's source position (order-preserving text); a change at or before
                the owner's last applied one is a replay (see the class). None: no replay check.

        Returns:
            An ``OWN-SET-OVER-100`` violation if the owner is current (or, for a future-dated
            start, becomes current) and the property's current owners then hold more than 100 %;
            None otherwise (always None for a delete). A replay returns its first verdict.
        """
        day = as_of or datetime.now(UTC).date()
        known_property = self._property_of.get(key)
        previous = {pid for pid in (property_id, known_property) if pid is not None}
        if position is not None:
            home = row["PropertyID"] if row is not None else (property_id or known_property)
            if home is None:
                return self._apply(row, key, previous, day)
            seen = self._seen.get(home, {}).get(key)
            if seen is not None and position <= seen:
                return self._first_verdict(home, key, position)
            verdict = self._apply(row, key, previous, day)
            self._seen.setdefault(home, {})[key] = position
            rejected = self._rejected.setdefault(home, {})
            if verdict is None:
                rejected.pop(key, None)
            else:
                rejected[key] = f"{position}|{verdict.value}|{verdict.message}"
            return verdict
        return self._apply(row, key, previous, day)

    def _first_verdict(self, property_id: int, key: int, position: str) -> Violation | None:
        recorded = self._rejected.get(property_id, {}).get(key)
        if recorded is None:
            return None
        rejected_at, value, message = recorded.split("|", 2)
        return OWNER_SET_RULE.violation(value, message=message) if rejected_at == position else None

    def _apply(
        self, row: Mapping[str, Any] | None, key: int, previous: set[int], day: date
    ) -> Violation | None:
        if row is None:
            for pid in previous:
                self._remove(pid, key)
            if not previous:
                logger.debug("delete of owner %s of an unknown property: nothing to remove", key)
            return None
        new_property: int = row["PropertyID"]
        for pid in previous - {new_property}:
            self._remove(pid, key)
        share: Decimal | None = row.get("OwnershipPercentage")
        start: date | None = row.get("StartDate")
        end: date | None = row.get("EndDate")
        if share is None or share <= 0 or (end is not None and end <= day):
            self._remove(new_property, key)  # holds nothing that counts, or no longer current
            return None
        entry = OwnerShare(share, start if start is not None and start > day else None, end)
        self._shares.setdefault(new_property, {})[key] = entry
        self._property_of[key] = new_property
        check_day = max(day, entry.start) if entry.start is not None else day
        if not entry.current_on(check_day):
            return None
        total = self.total(new_property, check_day)
        if total <= FULL_OWNERSHIP:
            return None
        return OWNER_SET_RULE.violation(
            total,
            message=(
                f"the current owners of property {new_property} would hold {total} % "
                f"(more than {FULL_OWNERSHIP}) on {check_day.isoformat()}"
            ),
        )

    def total(self, property_id: int, day: date) -> Decimal:
        """The percentage the owners current on ``day`` hold of a property (0 if none)."""
        owners = self._shares.get(property_id)
        if not owners:
            return Decimal("0.00")
        return sum((entry.share for entry in owners.values() if entry.current_on(day)), Decimal("0.00"))

    def shares(self, property_id: int) -> dict[int, OwnerShare]:
        """A copy of the recorded owners of a property, by ``PropertyOwnerID``."""
        return dict(self._shares.get(property_id, {}))

    def property_ids(self) -> list[int]:
        """The properties that have recorded owners, sorted."""
        return sorted(pid for pid, owners in self._shares.items() if owners)

    def to_state(self, property_id: int) -> dict[str, Any]:
        """The JSON-safe state of one property: ``{"<PropertyOwnerID>": "<share>"}`` (empty if none),
        plus ``"seen"`` and ``"rejected"`` (``{"<PropertyOwnerID>": "<position>…"}``) once positions
        were applied."""
        state: dict[str, Any] = {
            str(owner_id): entry.to_text() for owner_id, entry in self._shares.get(property_id, {}).items()
        }
        for name, table in ((self._SEEN, self._seen), (self._REJECTED, self._rejected)):
            entries = table.get(property_id)
            if entries:
                state[name] = {str(owner_id): text for owner_id, text in entries.items()}
        return state

    def load_state(self, property_id: int, state: Mapping[str, Any] | None) -> None:
        """Replace a property's owners with a state from :meth:`to_state` (None or empty: no owners).

        Raises:
            ValueError: an owner id or share in the state cannot be parsed.
        """
        for owner_id in self._shares.pop(property_id, {}):
            if self._property_of.get(owner_id) == property_id:
                del self._property_of[owner_id]
        self._seen.pop(property_id, None)
        self._rejected.pop(property_id, None)
        if not state:
            return
        for name, table in ((self._SEEN, self._seen), (self._REJECTED, self._rejected)):
            entries = state.get(name)
            if entries:
                table[property_id] = {int(owner_id): str(text) for owner_id, text in entries.items()}
        owners = {
            int(owner_id): OwnerShare.from_text(text)
            for owner_id, text in state.items()
            if owner_id not in (self._SEEN, self._REJECTED)
        }
        if owners:
            self._shares[property_id] = owners
        for owner_id in owners:
            self._property_of[owner_id] = property_id

    @classmethod
    def from_state(cls, states: Mapping[int, Mapping[str, Any]]) -> OwnerShareLedger:
        """A ledger holding the states of several properties, ``{PropertyID: to_state(PropertyID)}``.

        Raises:
            ValueError: a state cannot be parsed.
        """
        ledger = cls()
        for property_id, state in states.items():
            ledger.load_state(int(property_id), state)
        return ledger

    def _remove(self, property_id: int, owner_id: int) -> None:
        owners = self._shares.get(property_id)
        if owners is not None and owners.pop(owner_id, None) is not None and not owners:
            del self._shares[property_id]
        if self._property_of.get(owner_id) == property_id:
            del self._property_of[owner_id]
