-- Management API state, version 1: sync jobs, the audit trail, the sealed PACS connection settings.
-- Lives in the target database next to the sink's pacs_sync schema, in a schema of its own.

CREATE SCHEMA IF NOT EXISTS pacs_sync_api;

-- One row per sync job started from the API or the schedule. The executor process (api.executor)
-- moves it from queued to running to an end state and reports a heartbeat while it runs, so the
-- record outlives an API restart and a vanished executor is noticed.
CREATE TABLE pacs_sync_api.jobs (
    job_id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('full', 'incremental', 'resync', 'reconcile')),
    entities        text[]      NOT NULL,
    state           text        NOT NULL DEFAULT 'queued'
                                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger         text        NOT NULL CHECK (trigger IN ('api', 'schedule')),
    requested_by    text        NOT NULL,
    requested_role  text        NOT NULL,
    plan            jsonb       NOT NULL,
    progress        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    result          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    exit_code       integer,
    error           text,
    output_tail     text        NOT NULL DEFAULT '',
    executor_pid    integer,
    executor_host   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);
-- At most one job queued or running at a time, whichever API instance started it: a second start
-- violates this index and is answered 409.
CREATE UNIQUE INDEX jobs_one_active_idx ON pacs_sync_api.jobs ((true)) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_created_at_idx ON pacs_sync_api.jobs (created_at DESC);

-- Append-only audit trail: every API call that changes something (or was refused), every job
-- start and finish.
CREATE TABLE pacs_sync_api.audit (
    audit_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text        NOT NULL,
    role      text        NOT NULL,
    action    text        NOT NULL,
    target    text,
    outcome   text        NOT NULL
                          CHECK (outcome IN ('succeeded', 'failed', 'started', 'refused', 'denied', 'invalid')),
    detail    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    client    text
);
CREATE INDEX audit_at_idx ON pacs_sync_api.audit (at DESC);

CREATE FUNCTION pacs_sync_api.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pacs_sync_api.audit is append-only';
END
$$;
CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON pacs_sync_api.audit
    FOR EACH ROW EXECUTE FUNCTION pacs_sync_api.audit_is_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON pacs_sync_api.audit
    FOR EACH STATEMENT EXECUTE FUNCTION pacs_sync_api.audit_is_append_only();

-- The PACS connection settings saved from the dashboard, sealed with AES-256-GCM (api.crypto);
-- key_id names the key (a fingerprint, not the key) so a changed key is reported as such.
CREATE TABLE pacs_sync_api.connection_settings (
    name        text        PRIMARY KEY CHECK (name = 'pacs'),
    sealed      bytea       NOT NULL,
    key_id      text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL
);
