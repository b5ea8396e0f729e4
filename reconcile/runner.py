"""One verify run: read the dead-letter topic, merge-compare source and target per entity, report.

The dead-letter topic is read in a background thread while the entities are compared (it is only
needed to classify what the comparison found). Each entity is one pass over two key-ordered streams:
the source in the producer's keyset chunks, transformed by the processors' ``transform_row``, and
the target's live view in keyset chunks of the same size. Memory holds one chunk per side plus the
discrepancies found.

The result is recorded in ``pacs_sync.sync_runs`` (``kind = 'verify'``; ``succeeded`` when source
and target match, else ``failed``, with the report as ``detail``) when the target has that table;
a run that fails with an error is recorded as ``failed`` too, when the target can still be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from pacs_sync.errors import ConfigurationError, PacsSyncError
from reconcile.compare import EntityReport, classify, compare_rows
from reconcile.dlq import LetterContext, index_letters, read_dead_letters
from reconcile.report import VerifyReport
from reconcile.settings import ReconcileSettings
from reconcile.source import SourceReader
from reconcile.target import TargetReader
from schemas.codec import AvroCodec, SchemaRegistry
from sink.tables import ENTITIES

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 20

LetterReader = Callable[[ReconcileSettings], list[bytes | None]]


def _read_letters(settings: ReconcileSettings) -> list[bytes | None]:
    return read_dead_letters(
        settings.kafka_bootstrap_servers,
        settings.dead_letter_topic(),
        timeout_s=settings.verify_dlq_timeout_s,
    )


def checked_entities(requested: Sequence[str] | None, settings: ReconcileSettings) -> list[str]:
    """The entities to verify, in the pipeline's order; unknown names are a configuration error.

    Accepts repeated and comma-separated names (``-e properties,owners``); none: ``PACS_ENTITIES``.
    """
    names = [n.strip() for item in (requested or ()) for n in item.split(",") if n.strip()]
    if not names:
        names = list(settings.entities)
    unknown = [n for n in names if n not in ENTITIES]
    if unknown:
        raise ConfigurationError(
            f"--entity: unknown entit{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
            f"(known: {', '.join(ENTITIES)})"
        )
    return [e for e in ENTITIES if e in names]


def run_verify(
    settings: ReconcileSettings,
    entities: Sequence[str] | None = None,
    *,
    limit: int = DEFAULT_LIMIT,
    read_letters: LetterReader = _read_letters,
    source_reader: SourceReader | None = None,
    target_reader: TargetReader | None = None,
    record: bool = True,
) -> VerifyReport:
    """Reconcile the PACS source with the target for ``entities`` (default: ``PACS_ENTITIES``).

    Args:
        settings: the source, target and dead-letter settings.
        entities: entity names (repeated or comma-separated); unknown ones raise ConfigurationError.
        limit: keys listed per kind and entity (counts are always complete).
        read_letters: reads the dead-letter topic's record values (replaceable in tests).
        source_reader: an open source reader to use (default: connect with ``settings``).
        target_reader: an open target reader to use (default: connect to ``PACS_TARGET_DSN``).
        record: add the run to ``pacs_sync.sync_runs`` when the target has that table.

    Returns:
        The report; ``report.exit_code`` is 0 when source and target match (dead-lettered keys
        allowed), 1 when any difference is unexplained.

    Raises:
        ConfigurationError: an unknown entity or a negative limit.
        PacsSyncError: the source, the target or Kafka cannot be read (PACS-001/002/003/010…).
    """
    if limit < 0:
        raise ConfigurationError("--limit must not be negative")
    names = checked_entities(entities, settings)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    codec = AvroCodec(SchemaRegistry.from_package())
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-dlq")
    letters: Future[list[bytes | None]] = executor.submit(read_letters, settings)
    source: SourceReader | None = source_reader
    target: TargetReader | None = target_reader
    try:
        if source is None:
            source = SourceReader(settings)
        if target is None:
            target = TargetReader(settings.target_parts)
        comparisons = []
        for entity in names:
            spec = ENTITIES[entity]
            columns = (spec.key_column, *spec.data_columns)
            began = time.perf_counter()
            comparison = compare_rows(
                columns,
                source.rows(entity, columns, chunk_rows=settings.verify_chunk_rows),
                target.rows(spec, chunk_rows=settings.verify_chunk_rows),
                range_width=settings.verify_range_width,
            )
            seconds = time.perf_counter() - began
            logger.info(
                "%s: %d source rows, %d target rows, %d discrepancies (%.2f s)",
                entity,
                comparison.source_count,
                comparison.target_count,
                len(comparison.discrepancies),
                seconds,
            )
            comparisons.append((entity, comparison, seconds))
        began = time.perf_counter()
        values = letters.result()
        context = LetterContext.build(
            source.mappings,
            topic_prefix=settings.topic_prefix,
            db_name=settings.db_name,
            db_schema=settings.db_schema,
        )
        index = index_letters(codec, values, context)
        index.topic = settings.dead_letter_topic()
        index.seconds = time.perf_counter() - began
        reports: list[EntityReport] = [
            classify(entity, comparison, index.for_entity(entity), limit=limit, seconds=seconds)
            for entity, comparison, seconds in comparisons
        ]
        report = VerifyReport(
            reports,
            index,
            limit,
            source=source.server,
            target=target.server,
            seconds=time.perf_counter() - started,
        )
        if index.unattributed:
            report.notes.append(
                f"note: {index.unattributed:,} dead letter(s) name no row (undecodable, no Avro key); "
                "differences they explain are counted as unexplained"
            )
        if record:
            report.run_id = _record(target, names, report.matched, started_at, report.as_dict())
        return report
    except PacsSyncError as exc:
        if record and target is not None:
            _record(target, names, False, started_at, {"error": str(exc)})
        raise
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if source is not None and source_reader is None:
            source.close()
        if target is not None and target_reader is None:
            target.close()


def _record(
    target: TargetReader,
    entities: Sequence[str],
    matched: bool,
    started_at: datetime,
    detail: dict[str, object],
) -> int | None:
    """Record the run; a failure to record is logged, never changes the verdict."""
    try:
        return target.record_run(entities, succeeded=matched, started_at=started_at, detail=detail)
    except PacsSyncError as exc:
        logger.warning("could not record the verify run in the target: %s", exc)
        return None
