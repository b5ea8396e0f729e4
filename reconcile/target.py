"""The target side: the live rows of the ``terrafusion.<entity>`` views, in key order (pg8000).

Only the business columns the sink writes are read (``sink.tables``), in the sink's column order.
``char(n)`` columns are read as ``text``, which drops the blank padding PostgreSQL adds: padding is
storage, not value. Also records the run in ``pacs_sync.sync_runs`` when the target has that table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pacs_sync import dbapi
from pacs_sync.db_errors import translate_db_error
from pacs_sync.errors import ErrorCode, FatalError, PacsSyncError
from reconcile.compare import TargetRow, canonical_row
from sink.tables import PUBLIC_SCHEMA, SYNC_SCHEMA, EntitySpec

logger = logging.getLogger(__name__)

_COLUMNS_QUERY = (
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position"
)
_PADDED_TYPES = frozenset({"character"})


class TargetReader:
    """One DB-API connection to the target: reads the views, records the run."""

    def __init__(self, parts: Mapping[str, Any], connection: Any | None = None) -> None:
        """Connect to the target (``PacsSettings.target_parts``) or adopt ``connection``."""
        self.server = f"PostgreSQL {parts['host']}:{parts['port']}/{parts['database']}"
        if connection is not None:
            self.conn = connection
        else:
            self.conn = dbapi.connect(
                host=parts["host"],
                port=parts["port"],
                user=parts["user"],
                password=parts["password"],
                database=parts["database"],
                application_name="pacs-sync verify",
            )

    def close(self) -> None:
        """Close the connection (errors on close are ignored)."""
        try:
            self.conn.close()
        except Exception:  # a broken connection must not mask the real error
            logger.debug("closing the target connection failed", exc_info=True)

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return dbapi.fetch_all(self.conn, sql, tuple(params))
        except (dbapi.DriverError, OSError) as exc:
            self._rollback_quietly()
            raise translate_db_error(exc, server=self.server) from exc

    def _rollback_quietly(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # the connection may be gone; the original error is what matters
            logger.debug("rollback after an error failed", exc_info=True)

    def select_list(self, spec: EntitySpec) -> str:
        """The view's columns to read for ``spec`` (char(n) cast to text).

        Raises:
            FatalError: PACS-003 when the view or one of its columns does not exist (the sink has not
                migrated this database).
        """
        found = dict(self._fetch(_COLUMNS_QUERY, (PUBLIC_SCHEMA, spec.entity)))
        view = f"{PUBLIC_SCHEMA}.{spec.entity}"
        if not found:
            raise FatalError(
                f"{self.server} has no view {view}: the sink has not created the target schema here "
                "(run `pacs-sync sink` once, it migrates) or PACS_TARGET_DSN names another database",
                code=ErrorCode.SCHEMA_MISMATCH,
                view=view,
            )
        columns = (spec.key_column, *spec.data_columns)
        absent = [c for c in columns if c not in found]
        if absent:
            raise FatalError(
                f"{self.server}: view {view} lacks the column(s) {', '.join(absent)} the sink writes",
                code=ErrorCode.SCHEMA_MISMATCH,
                view=view,
            )
        return ", ".join(f"{c}::text" if found[c] in _PADDED_TYPES else c for c in columns)

    def rows(self, spec: EntitySpec, *, chunk_rows: int) -> Iterator[TargetRow]:
        """The view's live rows as :class:`TargetRow`, in ascending key order, one keyset chunk per query."""
        projected = self.select_list(spec)
        view = f"{PUBLIC_SCHEMA}.{spec.entity}"
        key = spec.key_column
        # Identifiers come from the entity specs (sink.tables), never from input; values are bound.
        first = f"SELECT {projected} FROM {view} ORDER BY {key} LIMIT ?"  # noqa: S608
        after = f"SELECT {projected} FROM {view} WHERE {key} > ? ORDER BY {key} LIMIT ?"  # noqa: S608
        last_key = None
        while True:
            if last_key is None:
                chunk = self._fetch(first, (chunk_rows,))
            else:
                chunk = self._fetch(after, (last_key, chunk_rows))
            for values in chunk:
                yield TargetRow(values[0], canonical_row(values))
            if len(chunk) < chunk_rows:
                self._end_read()
                return
            last_key = chunk[-1][0]

    def _end_read(self) -> None:
        try:
            self.conn.rollback()
        except (dbapi.DriverError, OSError) as exc:
            raise translate_db_error(exc, server=self.server) from exc

    def record_run(
        self,
        entities: Sequence[str],
        *,
        succeeded: bool,
        started_at: datetime,
        detail: Mapping[str, Any],
    ) -> int | None:
        """Add a ``kind = 'verify'`` row to ``pacs_sync.sync_runs`` if the table exists; its run id.

        Returns None when the target has no such table (nothing is recorded then).
        """
        table = f"{SYNC_SCHEMA}.sync_runs"
        exists = self._fetch("SELECT to_regclass(?) IS NOT NULL", (table,))
        if not exists or not exists[0][0]:
            self._end_read()
            return None
        statement = (
            f"INSERT INTO {table} (kind, entities, state, started_at, finished_at, detail) "  # noqa: S608
            "VALUES ('verify', CAST(? AS text[]), ?, ?, now(), CAST(? AS jsonb)) RETURNING run_id"
        )
        state = "succeeded" if succeeded else "failed"
        try:
            rows = self._fetch(
                statement, (list(entities), state, started_at, json.dumps(detail, default=str))
            )
            self.conn.commit()
        except PacsSyncError:
            raise
        except (dbapi.DriverError, OSError) as exc:
            self._rollback_quietly()
            raise translate_db_error(exc, server=self.server) from exc
        return int(rows[0][0]) if rows else None
