"""The event contract: Avro schemas (.avsc) and their single-object-encoding codec.

The ``.avsc`` files in this package are the contract between the producer, the stream processors
and the sink: a key, row and Debezium-shaped envelope schema per PACS table, plus the shared
``Source`` block, the idle ``Heartbeat`` and the producer's ``SourceOffset``. :mod:`schemas.codec`
encodes and decodes them in the Avro single-object encoding; ``vectors/golden.json`` pins their
fingerprints and sample bytes.
"""

from __future__ import annotations

from schemas.codec import (
    HEARTBEAT_SCHEMA,
    KEY_FIELDS,
    MAGIC,
    OFFSET_SCHEMA,
    SOURCE_SCHEMA,
    TABLES,
    AvroCodec,
    DecodedRecord,
    RegisteredSchema,
    SchemaKind,
    SchemaMismatchError,
    SchemaRegistry,
    SchemaResolver,
    UndecodableEventError,
    crc64_avro,
    fingerprint,
    load_package_schemas,
    parsing_canonical_form,
    schema_for_table,
)

__all__ = [
    "HEARTBEAT_SCHEMA",
    "KEY_FIELDS",
    "MAGIC",
    "OFFSET_SCHEMA",
    "SOURCE_SCHEMA",
    "TABLES",
    "AvroCodec",
    "DecodedRecord",
    "RegisteredSchema",
    "SchemaKind",
    "SchemaMismatchError",
    "SchemaRegistry",
    "SchemaResolver",
    "UndecodableEventError",
    "crc64_avro",
    "fingerprint",
    "load_package_schemas",
    "parsing_canonical_form",
    "schema_for_table",
]
