"""The source side: PACS rows as the processors would make them, in key order.

Rows are read exactly as the producer's snapshot reads them (:class:`producer.source.CdcSource`'s
keyset chunks, the column mapping of ``PACS_COLUMN_MAPPING_FILE``, :meth:`TableMapping.record` for
the row image), then transformed by the processors' own
:func:`stream_processors.validation.transform_row` and reduced to canonical tokens in sink column
order. So a difference found later is a sync error, not a second normalisation disagreeing with the
first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from producer.mapping import TableMapping, load_mappings
from producer.source import CdcSource
from reconcile.compare import SourceRow, canonical_row
from reconcile.settings import ReconcileSettings
from stream_processors.validation import InvalidRowError, transform_row

logger = logging.getLogger(__name__)


class SourceReader:
    """Streams one entity's source rows, transformed, in ascending key order."""

    def __init__(self, settings: ReconcileSettings, source: CdcSource | None = None) -> None:
        """Load the column mapping and connect to PACS (or adopt ``source``)."""
        self.settings = settings
        self.mappings = load_mappings(settings.column_mapping_file)
        self._by_entity = {mapping.entity: mapping for mapping in self.mappings.values()}
        self.source = source if source is not None else CdcSource(settings)
        self.server = self.source.server

    def close(self) -> None:
        """Close the source connection."""
        self.source.close()

    def mapping(self, entity: str) -> TableMapping:
        """The table mapping of an entity."""
        return self._by_entity[entity]

    def rows(self, entity: str, columns: Sequence[str], *, chunk_rows: int) -> Iterator[SourceRow]:
        """The entity's rows as :class:`SourceRow` (tokens in ``columns`` order), key-ordered.

        One keyset query per chunk, the read transaction ended after each (no locks or snapshot
        held on PACS between chunks, as in the producer's snapshot).
        """
        mapping = self.mapping(entity)
        source = self.source
        last_key = None
        while True:
            chunk = source.snapshot_chunk(
                mapping.table, mapping.columns, mapping.key_column, last_key, chunk_rows
            )
            source.end_read()
            for values in chunk:
                record = mapping.record(values)
                try:
                    clean = transform_row(entity, record)
                except InvalidRowError as exc:
                    yield SourceRow(values[0], None, exc.message)
                    continue
                yield SourceRow(values[0], canonical_row([clean[column] for column in columns]))
            if len(chunk) < chunk_rows:
                return
            last_key = chunk[-1][0]
