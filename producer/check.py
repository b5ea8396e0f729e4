"""``pacs-sync check-connection``: can we reach PACS, log in, and read CDC as configured?

With ``--conformance`` every production statement runs once, read-only, and is reported as working
or not: the dialect check a county runs against its real SQL Server, since none runs here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacs_sync.errors import PacsSyncError
from pacs_sync.lsn import Lsn
from producer import statements as sql
from producer.mapping import TABLES, load_mappings, mapping_problems
from producer.settings import ProducerSettings
from producer.source import CdcSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    ok: bool
    detail: str


def check_connection(
    settings: ProducerSettings,
    *,
    conformance: bool = False,
    source_factory: Callable[[ProducerSettings], CdcSource] = CdcSource,
) -> list[CheckResult]:
    """Run the checks; a connection failure raises (PACS-001/002), later failures are reported."""
    source = source_factory(settings)
    results = [CheckResult("connect", True, f"logged in to {source.server} as {settings.db_user}")]
    try:
        results += _cdc_checks(settings, source)
        if conformance:
            results += _conformance(settings, source)
    finally:
        source.close()
    return results


def _attempt(name: str, action: Callable[[], str], source: CdcSource) -> CheckResult:
    try:
        return CheckResult(name, True, action())
    except PacsSyncError as exc:
        return CheckResult(name, False, str(exc))


def _cdc_checks(settings: ProducerSettings, source: CdcSource) -> list[CheckResult]:
    results = [
        _attempt(
            "cdc enabled",
            lambda: "yes" if source.cdc_enabled() else _fail("no: run sys.sp_cdc_enable_db (needs sysadmin)"),
            source,
        )
    ]
    mappings = load_mappings(settings.column_mapping_file)

    def instances() -> str:
        found = {
            i.table.lower(): i
            for i in source.capture_instances()
            if i.schema.lower() == settings.db_schema.lower()
        }
        problems = []
        for table in TABLES:
            instance = found.get(table.lower())
            if instance is None:
                problems.append(f"{table}: no capture instance")
            elif missing := mapping_problems(mappings[table], instance.columns):
                problems.append(f"{instance.name}: missing {', '.join(missing)}")
        if problems:
            _fail("PACS-003: " + "; ".join(problems))
        return ", ".join(sorted(i.name for i in found.values()))

    results.append(_attempt("capture instances", instances, source))
    results.append(_attempt("max LSN", lambda: str(source.max_lsn()), source))
    source.end_read()
    return results


def _fail(message: str) -> str:
    raise PacsSyncError(message)


def _conformance(settings: ProducerSettings, source: CdcSource) -> list[CheckResult]:
    """Each production statement once, with harmless parameters; nothing is written."""
    max_lsn = source.max_lsn() or Lsn.zero()
    source.end_read()
    samples: dict[str, tuple[Any, ...]] = {
        "GET_MAX_LSN": (),
        "GET_MIN_LSN": ("dbo_Property",),
        "INCREMENT_LSN": (max_lsn.value,),
        "MAP_LSN_TO_TIME": (max_lsn.value,),
        "GET_MAX_TRANSACTION_LSN": (sql.IDLE_TRAN_ID,),
        "GET_NTH_TRANSACTION_LSN_AFTER": (Lsn.zero().value, sql.IDLE_TRAN_ID, 1),
        "GET_DATABASE_CDC_ENABLED": (settings.db_name,),
        "GET_CHANGE_TABLES": (),
        "GET_CAPTURED_COLUMNS": (),
        "GET_SOURCE_COLUMNS": (settings.db_schema,),
    }
    results = []
    for name, statement in sql.all_static_statements().items():
        results.append(_attempt(name, lambda s=statement, n=name: _rows(source, s, samples[n]), source))  # type: ignore[misc]
    mappings = load_mappings(settings.column_mapping_file)
    for instance in source.capture_instances():
        table = next((t for t in TABLES if t.lower() == instance.table.lower()), None)
        if table is None:
            continue
        mapping = mappings[table]

        def changes(ci: str = instance.name, columns: tuple[str, ...] = mapping.columns) -> str:
            low = source.min_lsn(ci)
            high = source.max_lsn()
            if low is None or high is None or low > high:
                return "no validity interval yet (nothing captured)"
            rows = source.changes(ci, columns, from_lsn=low, to_lsn=high, after=(b"", b"", 0), limit=1)
            return f"{len(rows)} row(s)"

        results.append(_attempt(f"CHANGES {instance.name}", changes, source))
        results.append(
            _attempt(
                f"SNAPSHOT {table}",
                lambda t=table, m=mapping: (
                    f"{len(source.snapshot_chunk(t, m.columns, m.key_column, None, 1))} row(s)"
                ),  # type: ignore[misc]
                source,
            )
        )
    source.end_read()
    return results


def _rows(source: CdcSource, statement: str, params: tuple[Any, ...]) -> str:
    rows = source._rows(statement, params)  # the conformance check runs raw statements on purpose
    return f"{len(rows)} row(s)"
