"""The one entry point of validation and transformation: a decoded change event in, a verdict out.

:func:`process_event` takes a change event shaped like ``schemas/<Table>.envelope.avsc`` (decoded:
``before``, ``after``, ``op``, ``source``, ``ts_ms``) and returns a :class:`ProcessResult`:

* ``c``/``u``/``r``: the ``after`` image is checked for shape (types, decimal precision and scale),
  then against the entity's business rules (:mod:`stream_processors.rules`) and, for owners, the
  cross-row owner-share ledger. Any ``error`` violation rejects the event (``ok`` False, no record:
  the caller dead-letters it); ``warning`` violations are reported and the record is produced.
* ``d``: a position-stamped delete record – the key set, every other field None, ``deleted`` True.
  Deletes are never rejected (only an event without a key or position cannot be processed at all).

Every record carries the source position: ``source_commit_lsn``, ``source_change_lsn``,
``source_serial`` (``event_serial_no``, 0 when absent), ``source_ts`` (the commit time) and
``deleted``. :func:`transform_row` gives the sink's reconciliation the same transformation of a bare
row, without a position.

Speed: the shape check is hand-written (``type(value) is int``…); pydantic
(:mod:`stream_processors.models`) runs only when it fails, to say precisely what is wrong.

Everything here is pure: no Kafka, no Faust, no I/O, no clock except the default ``as_of`` (today)
of an event that carries no commit time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from pydantic import ValidationError

from pacs_sync.errors import ErrorCode, PoisonMessageError
from pacs_sync.lsn import position_bytes
from stream_processors.models import (
    INPUT_KEY_FIELDS,
    INPUT_MODELS,
    INT32_MAX,
    INT32_MIN,
    OUTPUT_KEY_FIELDS,
    PacsRow,
)
from stream_processors.rules import (
    RULES_BY_ENTITY,
    SCHEMA_RULE,
    OwnerShareLedger,
    Rule,
    Violation,
    latest_plausible_year,
)
from stream_processors.transform import TRANSFORMS, deleted_fields

logger = logging.getLogger(__name__)

ROW_OPS: Final = frozenset({"c", "u", "r"})
DELETE_OP: Final = "d"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_VALUE_TEXT = 200

# (field, Python type, nullable, decimal precision, decimal scale) in row-schema order.
_FieldSpec = tuple[str, Any, bool, int, int]
ROW_FIELDS: Final[Mapping[str, tuple[_FieldSpec, ...]]] = {
    "properties": (
        ("PropertyID", int, False, 0, 0),
        ("ParcelNumber", str, False, 0, 0),
        ("Address", str, True, 0, 0),
        ("City", str, True, 0, 0),
        ("State", str, True, 0, 0),
        ("ZipCode", str, True, 0, 0),
        ("LegalDescription", str, True, 0, 0),
        ("Acreage", Decimal, True, 10, 4),
        ("YearBuilt", int, True, 0, 0),
    ),
    "owners": (
        ("PropertyOwnerID", int, False, 0, 0),
        ("PropertyID", int, False, 0, 0),
        ("OwnerName", str, False, 0, 0),
        ("OwnerType", str, True, 0, 0),
        ("OwnershipPercentage", Decimal, True, 5, 2),
        ("StartDate", date, True, 0, 0),
        ("EndDate", date, True, 0, 0),
    ),
    "valuations": (
        ("PropertyValueID", int, False, 0, 0),
        ("PropertyID", int, False, 0, 0),
        ("TaxYear", int, False, 0, 0),
        ("AssessedValue", Decimal, True, 14, 2),
        ("MarketValue", Decimal, True, 14, 2),
        ("LandValue", Decimal, True, 14, 2),
        ("ImprovementValue", Decimal, True, 14, 2),
    ),
    "structures": (
        ("StructureID", int, False, 0, 0),
        ("PropertyID", int, False, 0, 0),
        ("StructureType", str, True, 0, 0),
        ("SquareFootage", int, True, 0, 0),
        ("Condition", str, True, 0, 0),
        ("Bedrooms", int, True, 0, 0),
        ("Bathrooms", Decimal, True, 3, 1),
        ("YearBuilt", int, True, 0, 0),
    ),
}
"""The shape of each entity's row image, as in ``schemas/<Table>.row.avsc`` and the row models."""


class InvalidRowError(PoisonMessageError):
    """A row does not fit its entity's row schema (PACS-004); ``violations`` says where."""

    code = ErrorCode.DATA_VALIDATION

    def __init__(self, message: str, violations: Sequence[Violation], **context: Any) -> None:
        """Build the error with the ``SCHEMA`` violations that explain it."""
        super().__init__(message, **context)
        self.violations = tuple(violations)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """The verdict on one change event.

    Attributes:
        ok: True if the record may be published: no ``error`` violation (deletes are always ok).
        key: the clean topic's key record, e.g. ``{"property_id": 100001}``; empty if the event
            carried no readable key.
        record: the clean topic's value record (entity fields + source position), or None if not ok.
        violations: every violation found, errors and warnings, in rule order.
    """

    ok: bool
    key: dict[str, Any]
    record: dict[str, Any] | None
    violations: tuple[Violation, ...]

    @property
    def errors(self) -> tuple[Violation, ...]:
        """The ``error`` violations (why the event was rejected)."""
        return tuple(v for v in self.violations if v.severity == "error")

    @property
    def warnings(self) -> tuple[Violation, ...]:
        """The ``warning`` violations (reported, not rejected)."""
        return tuple(v for v in self.violations if v.severity == "warning")


# -- Shape -----------------------------------------------------------------------------------------


def _decimal_fits(value: Decimal, precision: int, scale: int) -> bool:
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN, Infinity
        return False
    return exponent >= -scale and len(digits) + exponent <= precision - scale


def _shape_ok(row: Mapping[str, Any], fields: tuple[_FieldSpec, ...]) -> bool:
    """The hot path: exact types, int32 range and decimal precision/scale, by hand."""
    for name, kind, nullable, precision, scale in fields:
        value: Any = row.get(name)
        if value is None:
            if nullable:
                continue
            return False
        if value.__class__ is not kind:  # exact type: no bool for int, no datetime for date
            return False
        if kind is int:
            if not INT32_MIN <= value <= INT32_MAX:
                return False
        elif kind is Decimal and not _decimal_fits(value, precision, scale):
            return False
    return True


def _value_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= _MAX_VALUE_TEXT else f"{text[: _MAX_VALUE_TEXT - 1]}…"


def _schema_violations(error: ValidationError, *, where: str) -> list[Violation]:
    violations = []
    for detail in error.errors(include_url=False):
        location = detail.get("loc") or ()
        field_name = str(location[0]) if location else where
        value = None if detail.get("type") == "missing" or not location else detail.get("input")
        violations.append(
            SCHEMA_RULE.violation(_value_text(value), field_name=field_name, message=detail["msg"])
        )
    return violations


def _checked_row(entity: str, row: object) -> tuple[Mapping[str, Any] | None, list[Violation]]:
    """The row if it fits the entity's shape (fast check, then pydantic), else its SCHEMA violations."""
    if isinstance(row, dict) and _shape_ok(row, ROW_FIELDS[entity]):
        return row, []
    model: type[PacsRow] = INPUT_MODELS[entity]
    try:
        validated = model.model_validate(row)
    except ValidationError as exc:
        return None, _schema_violations(exc, where="after")
    return validated.model_dump(), []


def _rule_violations(rules: tuple[Rule, ...], row: Mapping[str, Any], latest: int) -> list[Violation]:
    violations = []
    for rule in rules:
        if rule.check is not None and not rule.check(row, latest):
            violations.append(rule.violation(row.get(rule.field)))
    return violations


# -- Position --------------------------------------------------------------------------------------


def _commit_time(value: object) -> datetime | None:
    if value is None or type(value) is datetime:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
    if type(value) is int:
        return _EPOCH + timedelta(milliseconds=value)
    raise TypeError(f"commit_ts_ms must be a datetime or epoch milliseconds, not {type(value).__name__}")


def _position(source: object) -> dict[str, Any] | Violation:
    """The position fields of a record from the event's source block, or why they cannot be read."""
    if not isinstance(source, Mapping):
        return SCHEMA_RULE.violation(_value_text(source), field_name="source", message="no source block")
    commit_lsn = source.get("commit_lsn")
    change_lsn = source.get("change_lsn")
    serial = source.get("event_serial_no")
    if type(commit_lsn) is not str or not commit_lsn:
        return SCHEMA_RULE.violation(
            _value_text(commit_lsn), field_name="source.commit_lsn", message="the event has no commit LSN"
        )
    if change_lsn is not None and type(change_lsn) is not str:
        return SCHEMA_RULE.violation(
            _value_text(change_lsn), field_name="source.change_lsn", message="change LSN is not a string"
        )
    if serial is not None and type(serial) is not int:
        return SCHEMA_RULE.violation(
            _value_text(serial), field_name="source.event_serial_no", message="event serial is not an int"
        )
    try:
        commit_time = _commit_time(source.get("commit_ts_ms"))
    except (TypeError, OverflowError) as exc:
        return SCHEMA_RULE.violation(
            _value_text(source.get("commit_ts_ms")), field_name="source.commit_ts_ms", message=str(exc)
        )
    return {
        "source_commit_lsn": commit_lsn,
        "source_change_lsn": change_lsn,
        "source_serial": serial or 0,
        "source_ts": commit_time,
        "deleted": False,
    }


def _ledger_position(position: Mapping[str, Any]) -> str | None:
    """The event's position as order-preserving text for the owner ledger's replay check (None if
    it has no byte form: the ledger then checks without it)."""
    try:
        return position_bytes(
            position["source_commit_lsn"], position["source_change_lsn"], position["source_serial"]
        ).hex()
    except ValueError:
        return None


def _key_value(entity: str, *images: object) -> int | None:
    field_name = INPUT_KEY_FIELDS[entity]
    for image in images:
        if isinstance(image, Mapping):
            value = image.get(field_name)
            if type(value) is int:
                return value
    return None


def _rejected(entity: str, key_value: int | None, violations: Sequence[Violation]) -> ProcessResult:
    key = {} if key_value is None else {OUTPUT_KEY_FIELDS[entity]: key_value}
    return ProcessResult(False, key, None, tuple(violations))


# -- Entry points ----------------------------------------------------------------------------------


def process_event(
    entity: str,
    event: Mapping[str, Any],
    *,
    ledger: OwnerShareLedger | None = None,
    as_of: date | None = None,
    key: Mapping[str, Any] | None = None,
    rules: Mapping[str, tuple[Rule, ...]] | None = None,
) -> ProcessResult:
    """Validate and transform one decoded change event.

    Args:
        entity: ``properties``, ``owners``, ``valuations`` or ``structures``.
        event: the decoded envelope (``before``, ``after``, ``op``, ``source``…).
        ledger: for owner events, the owner-share ledger to check ``OWN-SET-OVER-100`` against and
            update (deletes remove the owner); None skips the cross-row rule.
        as_of: the day rules and the ledger judge by ("next year" for plausible years; current
            owners); default the event's commit date, or today (UTC) if it has none.
        key: the decoded Kafka message key (``{"PropertyID": 100001}``): the key of a delete whose
            ``before`` image is null, as the polling producer sends them.
        rules: a rule registry from :func:`stream_processors.rules.build_rules`; default the
            standard rules.

    Returns:
        The verdict, key, clean record (if ok) and violations.

    Raises:
        ValueError: the entity is unknown.
    """
    fields = ROW_FIELDS.get(entity)
    if fields is None:
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ROW_FIELDS)}")
    op = event.get("op")
    position = _position(event.get("source"))
    if isinstance(position, Violation):
        return _rejected(entity, _key_value(entity, event.get("after"), event.get("before"), key), [position])
    day = as_of or (position["source_ts"] or datetime.now(UTC)).date()

    if op == DELETE_OP:
        before = event.get("before")
        key_value = _key_value(entity, before, key)
        if key_value is None:
            problem = SCHEMA_RULE.violation(
                None,
                field_name=INPUT_KEY_FIELDS[entity],
                message="a delete needs a before image or a message key with the primary key",
            )
            return _rejected(entity, None, [problem])
        if ledger is not None and entity == "owners":
            previous_property = before.get("PropertyID") if isinstance(before, Mapping) else None
            ledger.apply(
                None, key_value, property_id=previous_property, as_of=day, position=_ledger_position(position)
            )
        record = deleted_fields(entity, key_value)
        record.update(position)
        record["deleted"] = True
        return ProcessResult(True, {OUTPUT_KEY_FIELDS[entity]: key_value}, record, ())

    after = event.get("after")
    if op not in ROW_OPS:
        problem = SCHEMA_RULE.violation(_value_text(op), field_name="op", message="op is not c, u, r or d")
        return _rejected(entity, _key_value(entity, after, event.get("before"), key), [problem])
    if type(after) is dict and _shape_ok(after, fields):
        row: Mapping[str, Any] = after
    else:
        if after is None:
            problem = SCHEMA_RULE.violation(
                None, field_name="after", message=f"an '{op}' event needs an after image"
            )
            return _rejected(entity, _key_value(entity, event.get("before"), key), [problem])
        checked, schema_problems = _checked_row(entity, after)
        if checked is None:
            return _rejected(entity, _key_value(entity, after, key), schema_problems)
        row = checked

    violations = _rule_violations((rules or RULES_BY_ENTITY)[entity], row, day.year + 1)
    key_value = row[fields[0][0]]
    if ledger is not None and entity == "owners":
        before = event.get("before")
        previous_property = before.get("PropertyID") if isinstance(before, Mapping) else None
        over = ledger.apply(
            row, key_value, property_id=previous_property, as_of=day, position=_ledger_position(position)
        )
        if over is not None:
            violations.append(over)
    out_key = {OUTPUT_KEY_FIELDS[entity]: key_value}
    for violation in violations:
        if violation.severity == "error":
            return ProcessResult(False, out_key, None, tuple(violations))
    record = TRANSFORMS[entity](row)
    record.update(position)
    return ProcessResult(True, out_key, record, tuple(violations))


def validate_row(
    entity: str,
    row: Mapping[str, Any],
    *,
    as_of: date | None = None,
    rules: Mapping[str, tuple[Rule, ...]] | None = None,
) -> tuple[Violation, ...]:
    """Check one bare row image for shape and row rules (no ledger, no position).

    Args:
        entity: ``properties``, ``owners``, ``valuations`` or ``structures``.
        row: PascalCase fields, as in the row schema.
        as_of: the day "next year" is counted from; default today (UTC).
        rules: a rule registry; default the standard rules.

    Returns:
        ``SCHEMA`` violations if the row does not fit its shape, else the rule violations.

    Raises:
        ValueError: the entity is unknown.
    """
    if entity not in ROW_FIELDS:
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ROW_FIELDS)}")
    checked, problems = _checked_row(entity, row)
    if checked is None:
        return tuple(problems)
    return tuple(_rule_violations((rules or RULES_BY_ENTITY)[entity], checked, latest_plausible_year(as_of)))


def transform_row(entity: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Transform one bare row image the way :func:`process_event` does, without a source position.

    For the sink's reconciliation: compare a target row with what the source row should become.
    Business rules are not applied (see :func:`validate_row`).

    Args:
        entity: ``properties``, ``owners``, ``valuations`` or ``structures``.
        row: PascalCase fields, as in the row schema.

    Returns:
        The entity fields of the clean record (snake_case), without ``source_*`` and ``deleted``.

    Raises:
        ValueError: the entity is unknown.
        InvalidRowError: the row does not fit the entity's row schema.
    """
    if entity not in ROW_FIELDS:
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ROW_FIELDS)}")
    checked, problems = _checked_row(entity, row)
    if checked is None:
        raise InvalidRowError(
            f"{entity} row does not fit its schema: "
            + "; ".join(f"{v.field}: {v.message}" for v in problems),
            problems,
            entity=entity,
        )
    return TRANSFORMS[entity](checked)


def dead_letter_record(
    violations: Sequence[Violation],
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    failed_at: datetime,
    event: Mapping[str, Any] | None = None,
    error_code: ErrorCode = ErrorCode.DATA_VALIDATION,
) -> dict[str, Any]:
    """Build an ``io.terrafusion.pacs.DeadLetter`` record for a rejected event.

    Args:
        violations: why it was rejected (``ProcessResult.violations``; may be empty for an
            undecodable event).
        topic: the input topic the event was read from.
        partition: its partition.
        offset: its offset.
        key: the original message key bytes.
        value: the original message value bytes.
        failed_at: when it was rejected (timezone-aware).
        event: the decoded event, if it could be decoded: its source LSNs are copied.
        error_code: the PACS error code, default ``PACS-004`` (data validation).

    Returns:
        The record, ready for ``AvroCodec.encode("io.terrafusion.pacs.DeadLetter", …)``.
    """
    source = event.get("source") if event is not None else None
    if not isinstance(source, Mapping):
        source = {}
    return {
        "error_code": str(error_code),
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "value": value,
        "violations": [violation.as_record() for violation in violations],
        "source_commit_lsn": _text_or_none(source.get("commit_lsn")),
        "source_change_lsn": _text_or_none(source.get("change_lsn")),
        "failed_at": failed_at,
    }


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
