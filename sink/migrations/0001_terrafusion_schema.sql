-- TerraFusion target schema, version 1.
--
-- pacs_sync.<entity>: every row the pipeline has seen, delete markers included, stamped with the
--   source position of the change that wrote it. The sink only ever moves a row forward in source
--   order (INSERT ... ON CONFLICT ... WHERE target.source_position < excluded.source_position), so a
--   replay or a late duplicate cannot overwrite newer data, and a deleted row (deleted = true, every
--   business column null) cannot be brought back by a stale insert.
-- terrafusion.<entity>: the views applications read: live rows, business columns only.
-- No foreign keys between the entities: each entity arrives on its own topic, so a valuation may
--   land before its property. Checks mirror the source's column types and the TerraFusion model, so
--   a value PostgreSQL cannot hold is rejected row by row and dead-lettered (PACS-011).

CREATE SCHEMA IF NOT EXISTS pacs_sync;
CREATE SCHEMA IF NOT EXISTS terrafusion;

CREATE TABLE pacs_sync.properties (
    property_id        integer       NOT NULL PRIMARY KEY,
    parcel_number      varchar(20),
    address            varchar(100),
    city               varchar(50),
    state              char(2),
    zip5               char(5)       CHECK (zip5 ~ '^[0-9]{5}$'),
    zip4               char(4)       CHECK (zip4 ~ '^[0-9]{4}$'),
    legal_description  varchar(500),
    acreage            numeric(10,4) CHECK (acreage >= 0),
    year_built         smallint,
    source_commit_lsn  char(22)      NOT NULL,
    source_change_lsn  char(22),
    source_serial      bigint        NOT NULL,
    source_ts          timestamptz,
    deleted            boolean       NOT NULL,
    source_position    bytea         NOT NULL,
    synced_at          timestamptz   NOT NULL DEFAULT now(),
    CHECK (deleted OR parcel_number IS NOT NULL)
);

CREATE TABLE pacs_sync.owners (
    owner_id           integer       NOT NULL PRIMARY KEY,
    property_id        integer,
    owner_name         varchar(150),
    owner_type         varchar(20),
    ownership_pct      numeric(5,2)  CHECK (ownership_pct > 0 AND ownership_pct <= 100),
    start_date         date,
    end_date           date,
    source_commit_lsn  char(22)      NOT NULL,
    source_change_lsn  char(22),
    source_serial      bigint        NOT NULL,
    source_ts          timestamptz,
    deleted            boolean       NOT NULL,
    source_position    bytea         NOT NULL,
    synced_at          timestamptz   NOT NULL DEFAULT now(),
    CHECK (deleted OR (property_id IS NOT NULL AND owner_name IS NOT NULL)),
    CHECK (end_date IS NULL OR start_date IS NULL OR end_date >= start_date)
);
CREATE INDEX owners_property_id_idx ON pacs_sync.owners (property_id);

CREATE TABLE pacs_sync.valuations (
    valuation_id       integer       NOT NULL PRIMARY KEY,
    property_id        integer,
    tax_year           smallint,
    assessed_value     numeric(14,2) CHECK (assessed_value >= 0),
    market_value       numeric(14,2) CHECK (market_value >= 0),
    land_value         numeric(14,2) CHECK (land_value >= 0),
    improvement_value  numeric(14,2) CHECK (improvement_value >= 0),
    source_commit_lsn  char(22)      NOT NULL,
    source_change_lsn  char(22),
    source_serial      bigint        NOT NULL,
    source_ts          timestamptz,
    deleted            boolean       NOT NULL,
    source_position    bytea         NOT NULL,
    synced_at          timestamptz   NOT NULL DEFAULT now(),
    CHECK (deleted OR (property_id IS NOT NULL AND tax_year IS NOT NULL))
);
CREATE INDEX valuations_property_id_idx ON pacs_sync.valuations (property_id);

CREATE TABLE pacs_sync.structures (
    structure_id       integer       NOT NULL PRIMARY KEY,
    property_id        integer,
    structure_type     varchar(30),
    square_feet        integer       CHECK (square_feet >= 0),
    condition          varchar(20),
    bedrooms           smallint      CHECK (bedrooms >= 0),
    bathrooms          numeric(3,1)  CHECK (bathrooms >= 0),
    year_built         smallint,
    source_commit_lsn  char(22)      NOT NULL,
    source_change_lsn  char(22),
    source_serial      bigint        NOT NULL,
    source_ts          timestamptz,
    deleted            boolean       NOT NULL,
    source_position    bytea         NOT NULL,
    synced_at          timestamptz   NOT NULL DEFAULT now(),
    CHECK (deleted OR property_id IS NOT NULL)
);
CREATE INDEX structures_property_id_idx ON pacs_sync.structures (property_id);

-- The next Kafka offset to read per clean-topic partition, written in the same transaction as the
-- rows consumed before it (exactly-once). consumer = the sink's group id, or a resync run's own.
CREATE TABLE pacs_sync.sync_offsets (
    consumer     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- One row per sync, resync or verification run: what ran, when, and how it ended.
CREATE TABLE pacs_sync.sync_runs (
    run_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    entities     text[]      NOT NULL,
    state        text        NOT NULL DEFAULT 'running'
                             CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX sync_runs_started_at_idx ON pacs_sync.sync_runs (started_at DESC);
