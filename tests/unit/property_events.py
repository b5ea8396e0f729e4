"""A valid ``dbo.Property`` insert event, encoded as the producer publishes it (for processor tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.codec import AvroCodec, SchemaRegistry

CODEC = AvroCodec(SchemaRegistry.from_package())
COMMIT_TIME = datetime(2025, 6, 1, tzinfo=UTC)


def property_insert_envelope(
    pid: int, zip_code: str, *, capture_instance: str = "dbo_Property", **extra_columns: Any
) -> dict[str, Any]:
    """The envelope of the insert of property ``pid`` with ``zip_code``; its position grows with
    ``pid``. ``extra_columns`` are columns of an evolved schema (a later capture instance)."""
    row = {
        "PropertyID": pid,
        "ParcelNumber": "1-0289-101-0021-000",
        "Address": "1234 W CLEARWATER AVE",
        "City": "KENNEWICK",
        "State": "WA",
        "ZipCode": zip_code,
        "LegalDescription": None,
        "Acreage": Decimal("0.2500"),
        "YearBuilt": 1998,
        **extra_columns,
    }
    source = {
        "connector": "terrafusion-pacs-sync",
        "version": "test",
        "db": "pacs",
        "schema": "dbo",
        "table": "Property",
        "capture_instance": capture_instance,
        "commit_lsn": f"0000002a:{pid:08x}:0001",
        "change_lsn": f"0000002a:{pid:08x}:0001",
        "event_serial_no": 2,
        "commit_ts_ms": COMMIT_TIME,
        "snapshot": "false",
    }
    return {"before": None, "after": row, "op": "c", "source": source, "ts_ms": COMMIT_TIME}


def property_insert(pid: int, zip_code: str) -> bytes:
    """The insert of property ``pid`` with ``zip_code``, encoded with the shipped schema."""
    return CODEC.encode("pacs.dbo.PropertyEnvelope", property_insert_envelope(pid, zip_code))
