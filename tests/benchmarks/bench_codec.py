"""Decode cost per record: the compiled decoder (``AvroCodec.decode``) against the fastavro path it replaced.

A script, not a pytest test; no services needed::

    .venv/bin/python tests/benchmarks/bench_codec.py [--number 20000] [--repeat 15] [--output PATH]

Three events, built like the pipeline builds them: a clean ``io.terrafusion.model.Valuation`` record
(what the sink decodes), a ``pacs.dbo.PropertyValueEnvelope`` update with before and after images
(what the stream processors decode) and an ``io.terrafusion.pacs.DeadLetter`` with one violation.
For each, two ways of decoding the same bytes into the same ``DecodedRecord``:

* ``fastavro``: the codec's former ``decode``: header checks and registry lookup, then fastavro's
  ``schemaless_reader`` over a ``BytesIO`` (still the codec's path for schemas the compiled decoder
  lacks, and for ``decode_as`` with another reader schema);
* ``compiled``: ``AvroCodec.decode`` as it is now (the compiled decoder, cached per fingerprint).

Each figure is the best of ``--repeat`` batches of ``--number`` calls, in CPU time of this process
(``time.process_time``), so other processes on the machine disturb it less than wall time would; the
median of the batches is printed too. Prints a table; ``--output`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro

from schemas import AvroCodec, DecodedRecord, SchemaRegistry

COMMIT_TS = datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)
VALUATION = {
    "valuation_id": 9001,
    "property_id": 1001,
    "tax_year": 2024,
    "assessed_value": Decimal("312450.00"),
    "market_value": Decimal("335000.00"),
    "land_value": Decimal("85000.00"),
    "improvement_value": Decimal("227450.00"),
    "source_commit_lsn": "0000002a:00000104:0001",
    "source_change_lsn": "0000002a:00000104:0003",
    "source_serial": 4,
    "source_ts": COMMIT_TS,
    "deleted": False,
}
ROW = {
    "PropertyValueID": 9001,
    "PropertyID": 1001,
    "TaxYear": 2024,
    "AssessedValue": Decimal("312450.00"),
    "MarketValue": Decimal("335000.00"),
    "LandValue": Decimal("85000.00"),
    "ImprovementValue": Decimal("227450.00"),
}
ENVELOPE = {
    "before": ROW,
    "after": dict(ROW, MarketValue=Decimal("340000.00"), AssessedValue=Decimal("317450.00")),
    "op": "u",
    "source": {
        "connector": "pacs-sync",
        "version": "0.1.0",
        "db": "pacs",
        "schema": "dbo",
        "table": "PropertyValue",
        "capture_instance": "dbo_PropertyValue",
        "commit_lsn": "0000002a:00000104:0001",
        "change_lsn": "0000002a:00000104:0003",
        "event_serial_no": 4,
        "commit_ts_ms": COMMIT_TS,
        "snapshot": "false",
    },
    "ts_ms": datetime(2024, 6, 1, 12, 0, 0, 456000, tzinfo=UTC),
}
DEAD_LETTER = {
    "error_code": "PACS-004",
    "topic": "pacs.dbo.PropertyValue",
    "partition": 2,
    "offset": 123456,
    "key": b"\xc3\x01" + bytes(range(13)),
    "value": b"\xc3\x01" + bytes(range(150)),
    "violations": [
        {
            "rule_id": "VAL-SUM",
            "severity": "error",
            "field": "AssessedValue",
            "message": "assessed value is not land value + improvement value",
            "value": "312450.00",
        }
    ],
    "source_commit_lsn": "0000002a:00000104:0001",
    "source_change_lsn": "0000002a:00000104:0003",
    "failed_at": COMMIT_TS,
}
EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "Valuation (clean record)": ("io.terrafusion.model.Valuation", VALUATION),
    "PropertyValue envelope (update)": ("pacs.dbo.PropertyValueEnvelope", ENVELOPE),
    "DeadLetter (1 violation)": ("io.terrafusion.pacs.DeadLetter", DEAD_LETTER),
}


def fastavro_decode(codec: AvroCodec) -> Callable[[bytes], DecodedRecord]:
    """The codec's decode before the compiled decoder (its fastavro path, kept for fallbacks)."""

    def decode(data: bytes) -> DecodedRecord:
        entry = codec._writer_schema(data)
        return DecodedRecord(entry.name, entry.fingerprint, AvroCodec._read(data, entry, None))

    return decode


def measure(call: Callable[[], object], number: int, repeat: int) -> tuple[float, float]:
    """Best and median microseconds per call over ``repeat`` batches of ``number`` calls (CPU time)."""
    batches = timeit.repeat(call, number=number, repeat=repeat, timer=time.process_time)
    per_call = [batch / number * 1e6 for batch in batches]
    return min(per_call), statistics.median(per_call)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per batch")
    parser.add_argument("--repeat", type=int, default=15, help="batches per figure (the best is reported)")
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args(argv)

    codec = AvroCodec(SchemaRegistry.from_package())
    old_decode = fastavro_decode(codec)
    results = []
    print(f"{'event':34} {'bytes':>5} {'fastavro µs':>12} {'compiled µs':>12} {'speed-up':>9}")  # noqa: T201
    for label, (name, record) in EVENTS.items():
        data = codec.encode(name, record)
        new, old = codec.decode(data), old_decode(data)
        if new != old or new.value != record:  # the same answer, or the figures mean nothing
            raise SystemExit(f"{label}: the two decoders disagree: {new} != {old}")
        old_best, old_median = measure(lambda data=data: old_decode(data), args.number, args.repeat)  # type: ignore[misc]
        new_best, new_median = measure(lambda data=data: codec.decode(data), args.number, args.repeat)  # type: ignore[misc]
        results.append(
            {
                "event": label,
                "schema": name,
                "bytes": len(data),
                "fastavro_us": {"best": round(old_best, 3), "median": round(old_median, 3)},
                "compiled_us": {"best": round(new_best, 3), "median": round(new_median, 3)},
                "speedup": round(old_best / new_best, 2),
            }
        )
        print(  # noqa: T201
            f"{label:34} {len(data):5} {old_best:7.2f} ({old_median:5.2f})"
            f" {new_best:6.2f} ({new_median:5.2f}) {old_best / new_best:8.1f}x"
        )
    print("best of the batches, (median); CPU time per decode")  # noqa: T201
    if args.output:
        document = {
            "benchmark": "codec-decode",
            "machine": {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "fastavro": fastavro.__version__,
            },
            "settings": {"number": args.number, "repeat": args.repeat, "timer": "process_time"},
            "results": results,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
