-- =====================================================================================
-- SQL Server Change Data Capture, emulated on PostgreSQL 15+.
--
-- Same object names, signatures and semantics a CDC reader sees on SQL Server, so the
-- connector's production SQL (qmark parameters, the T-SQL/PostgreSQL common subset) runs
-- unchanged. Built from shared/docs/SQLSERVER-CDC.md §4 and its verified prototype.
--
--   schema sys     : fn_cdc_* functions, sp_cdc_* procedures, catalog views
--   schema cdc     : change_tables, captured_columns, index_columns, ddl_history,
--                    lsn_time_mapping, <capture_instance>_ct, fn_cdc_get_all_changes_<ci>,
--                    fn_cdc_get_net_changes_<ci>
--   schema cdc_emu : internals (staging, commit tickets, job settings, clock); never read by
--                    the connector
--   schema public  : T-SQL built-ins with plain call syntax (max/min over binary, GETDATE)
--
-- Load as a superuser (the DDL event trigger needs one) into the PACS database:
--   psql -v ON_ERROR_STOP=1 -d pacs -f cdc_emulator.sql
-- Idempotent: re-running it replaces the functions and keeps data.
--
-- How the write path works: row triggers stage each change (inside the writer's transaction,
-- so a rollback leaves nothing), and a deferred constraint trigger takes a "commit ticket"
-- under a transaction-scoped advisory lock at COMMIT. A transaction becomes visible before it
-- releases its locks, so ticket order is commit order. The capture job (sys.sp_cdc_scan, run
-- by the emulated SQL Server Agent every pollinginterval seconds, or on demand) turns
-- committed tickets into change-table rows with 10-byte LSNs: nothing is visible before it runs.
-- =====================================================================================

CREATE SCHEMA IF NOT EXISTS sys;
CREATE SCHEMA IF NOT EXISTS cdc;
CREATE SCHEMA IF NOT EXISTS cdc_emu;

-- ---------------------------------------------------------------------------------
-- T-SQL built-ins: MAX()/MIN() over binary values (PostgreSQL has no max(bytea)), GETDATE()
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.bytea_larger(bytea, bytea) RETURNS bytea
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN $1 >= $2 THEN $1 ELSE $2 END $$;
CREATE OR REPLACE FUNCTION public.bytea_smaller(bytea, bytea) RETURNS bytea
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN $1 <= $2 THEN $1 ELSE $2 END $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
                 WHERE p.proname = 'max' AND p.pronamespace = 'public'::regnamespace) THEN
    CREATE AGGREGATE public.max(bytea) (SFUNC = public.bytea_larger, STYPE = bytea, SORTOP = >);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
                 WHERE p.proname = 'min' AND p.pronamespace = 'public'::regnamespace) THEN
    CREATE AGGREGATE public.min(bytea) (SFUNC = public.bytea_smaller, STYPE = bytea, SORTOP = <);
  END IF;
END $$;

-- ---------------------------------------------------------------------------------
-- Emulator settings and clock (tests move the clock to age data past the retention)
-- ---------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS cdc_emu.settings (k text PRIMARY KEY, v text NOT NULL);
INSERT INTO cdc_emu.settings VALUES
  ('clock_offset_seconds', '0'),
  ('is_cdc_enabled', '0'),
  ('idle_heartbeat', '1'),            -- write tran_id = 0x00 rows to lsn_time_mapping while idle
  ('idle_heartbeat_seconds', '5')     -- at most one such row per this many (emulated) seconds
ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION cdc_emu.setting(name text) RETURNS text LANGUAGE sql STABLE
  SECURITY DEFINER SET search_path = pg_catalog AS
  $$ SELECT v FROM cdc_emu.settings WHERE k = name $$;

CREATE OR REPLACE FUNCTION cdc_emu.now() RETURNS timestamp LANGUAGE sql VOLATILE AS $$
  SELECT (clock_timestamp()
          + make_interval(secs => cdc_emu.setting('clock_offset_seconds')::float8))::timestamp(3)
$$;
CREATE OR REPLACE FUNCTION public.getdate() RETURNS timestamp LANGUAGE sql VOLATILE
  AS $$ SELECT cdc_emu.now() $$;

-- msdb.dbo.cdc_jobs: the capture and cleanup jobs' parameters. pollinginterval is in seconds;
-- for the cleanup job it is how often the emulated Agent runs it (SQL Server: daily at 2 AM).
CREATE TABLE IF NOT EXISTS cdc_emu.cdc_jobs (
  job_type        text PRIMARY KEY,
  maxtrans        int,
  maxscans        int,
  continuous      boolean,
  pollinginterval float8,
  retention       bigint,            -- minutes
  threshold       bigint);
INSERT INTO cdc_emu.cdc_jobs VALUES
  ('capture', 500, 10, true, 1, NULL, NULL),
  ('cleanup', NULL, NULL, NULL, 60, 4320, 5000)
ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------------------------
-- The emulated transaction log. Every staged row change, every commit and every enable/DDL
-- record consumes one position. LSN = VLF(4 bytes) : block(4) : slot(2), big-endian.
-- ---------------------------------------------------------------------------------
CREATE SEQUENCE IF NOT EXISTS cdc_emu.log_pos START 256;

CREATE OR REPLACE FUNCTION cdc_emu.lsn(pos bigint) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT int4send((42 + pos / 2147483648)::int4) || int4send((pos % 2147483648)::int4) || '\x0001'::bytea
$$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_increment_lsn(lsn_value bytea) RETURNS bytea
  LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE r bytea := lsn_value; i int; b int;
BEGIN
  FOR i IN REVERSE octet_length(r) - 1 .. 0 LOOP
    b := get_byte(r, i);
    IF b < 255 THEN RETURN set_byte(r, i, b + 1); END IF;
    r := set_byte(r, i, 0);
  END LOOP;
  RETURN r;
END $$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_decrement_lsn(lsn_value bytea) RETURNS bytea
  LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE r bytea := lsn_value; i int; b int;
BEGIN
  FOR i IN REVERSE octet_length(r) - 1 .. 0 LOOP
    b := get_byte(r, i);
    IF b > 0 THEN RETURN set_byte(r, i, b - 1); END IF;
    r := set_byte(r, i, 255);
  END LOOP;
  RETURN r;
END $$;

-- ---------------------------------------------------------------------------------
-- CDC metadata tables (SQL Server's column names and meanings)
-- ---------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS cdc.change_tables (
  object_id            int PRIMARY KEY,        -- the change table's id
  version              int NOT NULL DEFAULT 0,
  source_object_id     int NOT NULL,           -- the source table's id
  capture_instance     text NOT NULL UNIQUE,
  start_lsn            bytea,                  -- low end of the validity interval; NULL until recognised
  end_lsn              bytea,
  supports_net_changes boolean NOT NULL DEFAULT false,
  has_drop_pending     boolean,
  role_name            text,
  index_name           text,
  filegroup_name       text,
  create_date          timestamp NOT NULL,
  partition_switch     boolean NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS cdc.captured_columns (
  object_id      int NOT NULL,                 -- the change table's id (tells two instances apart)
  column_name    text NOT NULL,
  column_id      int,
  column_type    text,
  column_ordinal int NOT NULL,                 -- 1-based, the bit in __$update_mask
  is_computed    boolean NOT NULL DEFAULT false,
  PRIMARY KEY (object_id, column_ordinal));
CREATE TABLE IF NOT EXISTS cdc.index_columns (
  object_id     int NOT NULL,
  column_name   text NOT NULL,
  index_ordinal smallint NOT NULL,
  column_id     int NOT NULL);
CREATE TABLE IF NOT EXISTS cdc.ddl_history (
  source_object_id       int,
  object_id              int,
  required_column_update boolean,
  ddl_command            text,
  ddl_lsn                bytea,
  ddl_time               timestamp);
CREATE TABLE IF NOT EXISTS cdc.lsn_time_mapping (
  start_lsn       bytea PRIMARY KEY,
  tran_begin_time timestamp,
  tran_end_time   timestamp,
  tran_id         bytea,                       -- exactly 0x00 for idle (dummy) rows
  tran_begin_lsn  bytea);
CREATE INDEX IF NOT EXISTS lsn_time_mapping_end_time ON cdc.lsn_time_mapping (tran_end_time);

-- One row per capture instance: the emulator's own view of it.
CREATE TABLE IF NOT EXISTS cdc_emu.instance (
  capture_instance text PRIMARY KEY,
  source_oid       oid NOT NULL,
  ct_name          text NOT NULL,
  created_pos      bigint NOT NULL,            -- log position of the enable record
  columns          text[] NOT NULL,            -- captured columns in ordinal order
  key_columns      text[] NOT NULL);

-- ---------------------------------------------------------------------------------
-- Staging, written by triggers inside the writer's transaction; drained by the capture job
-- ---------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS cdc_emu.staged_change (
  id         bigserial PRIMARY KEY,
  txid       xid8 NOT NULL,
  source_oid oid NOT NULL,
  kind       char(1) NOT NULL,                 -- I insert, D delete, U update, K key-changing update
  seq_pos    bigint NOT NULL,
  command_id int NOT NULL,
  before_img jsonb,
  after_img  jsonb);
CREATE INDEX IF NOT EXISTS staged_change_txid ON cdc_emu.staged_change (txid, source_oid, seq_pos);
CREATE TABLE IF NOT EXISTS cdc_emu.txn_commit (
  txid       xid8 PRIMARY KEY,
  commit_pos bigint NOT NULL UNIQUE,
  begin_time timestamp NOT NULL,
  end_time   timestamp NOT NULL);
CREATE TABLE IF NOT EXISTS cdc_emu.staged_ddl (
  id bigserial PRIMARY KEY, txid xid8 NOT NULL, source_oid oid NOT NULL,
  ddl_command text, seq_pos bigint NOT NULL, ddl_time timestamp NOT NULL);
-- DDL-only transactions touch this row so that they get a commit ticket too.
CREATE TABLE IF NOT EXISTS cdc_emu.ddl_marker (id int PRIMARY KEY, n bigint);
INSERT INTO cdc_emu.ddl_marker VALUES (1, 0) ON CONFLICT DO NOTHING;

-- Statement counter of the transaction -> __$command_id
CREATE OR REPLACE FUNCTION cdc_emu.trg_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('cdc_emu.command_id',
     (coalesce(nullif(current_setting('cdc_emu.command_id', true), ''), '0')::int + 1)::text, true);
  RETURN NULL;
END $$;

-- Trigger functions run as their (superuser) owner: writers need no rights on cdc_emu.
CREATE OR REPLACE FUNCTION cdc_emu.trg_row() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  cmd int := coalesce(nullif(current_setting('cdc_emu.command_id', true), ''), '1')::int;
  old_img jsonb; new_img jsonb; key_changed boolean := false; k text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO cdc_emu.staged_change(txid, source_oid, kind, seq_pos, command_id, after_img)
    VALUES (pg_current_xact_id(), TG_RELID, 'I', nextval('cdc_emu.log_pos'), cmd, to_jsonb(NEW));
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO cdc_emu.staged_change(txid, source_oid, kind, seq_pos, command_id, before_img)
    VALUES (pg_current_xact_id(), TG_RELID, 'D', nextval('cdc_emu.log_pos'), cmd, to_jsonb(OLD));
  ELSE
    old_img := to_jsonb(OLD); new_img := to_jsonb(NEW);
    FOREACH k IN ARRAY TG_ARGV LOOP      -- the primary-key columns, passed when triggers are attached
      IF (old_img -> k) IS DISTINCT FROM (new_img -> k) THEN key_changed := true; END IF;
    END LOOP;
    INSERT INTO cdc_emu.staged_change(txid, source_oid, kind, seq_pos, command_id, before_img, after_img)
    VALUES (pg_current_xact_id(), TG_RELID, CASE WHEN key_changed THEN 'K' ELSE 'U' END,
            nextval('cdc_emu.log_pos'), cmd, old_img, new_img);
  END IF;
  RETURN NULL;
END $$;

-- The commit ticket: fires at COMMIT (deferred), once per transaction. The advisory lock is held
-- until the transaction is visible, so the next committer's ticket is always larger.
CREATE OR REPLACE FUNCTION cdc_emu.trg_commit_ticket() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  IF current_setting('cdc_emu.ticket', true) = 'y' THEN RETURN NULL; END IF;
  PERFORM pg_advisory_xact_lock(727272);
  INSERT INTO cdc_emu.txn_commit(txid, commit_pos, begin_time, end_time)
  VALUES (pg_current_xact_id(), nextval('cdc_emu.log_pos'),
          (transaction_timestamp()
           + make_interval(secs => cdc_emu.setting('clock_offset_seconds')::float8))::timestamp(3),
          cdc_emu.now());
  PERFORM set_config('cdc_emu.ticket', 'y', true);
  RETURN NULL;
END $$;

-- Msg 4711: TRUNCATE is refused on a table enabled for CDC.
CREATE OR REPLACE FUNCTION cdc_emu.trg_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'Cannot truncate table ''%.%'' because it is published for replication or enabled for Change Data Capture.',
    TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '55000';
END $$;

CREATE OR REPLACE FUNCTION cdc_emu.attach_triggers(rel regclass, key_columns text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE keys text := (SELECT string_agg(quote_literal(k), ', ') FROM unnest(key_columns) k);
BEGIN
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_stmt ON %s', rel);
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_row ON %s', rel);
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_ticket ON %s', rel);
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_truncate ON %s', rel);
  EXECUTE format('CREATE TRIGGER cdc_emu_stmt BEFORE INSERT OR UPDATE OR DELETE ON %s '
                 'FOR EACH STATEMENT EXECUTE FUNCTION cdc_emu.trg_stmt()', rel);
  EXECUTE format('CREATE TRIGGER cdc_emu_row AFTER INSERT OR UPDATE OR DELETE ON %s '
                 'FOR EACH ROW EXECUTE FUNCTION cdc_emu.trg_row(%s)', rel, coalesce(keys, ''));
  EXECUTE format('CREATE CONSTRAINT TRIGGER cdc_emu_ticket AFTER INSERT OR UPDATE OR DELETE ON %s '
                 'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cdc_emu.trg_commit_ticket()', rel);
  EXECUTE format('CREATE TRIGGER cdc_emu_truncate BEFORE TRUNCATE ON %s '
                 'FOR EACH STATEMENT EXECUTE FUNCTION cdc_emu.trg_no_truncate()', rel);
END $$;

CREATE OR REPLACE FUNCTION cdc_emu.detach_triggers(rel regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_stmt ON %s', rel);
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_row ON %s', rel);
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_ticket ON %s', rel);
  EXECUTE format('DROP TRIGGER IF EXISTS cdc_emu_truncate ON %s', rel);
END $$;

DROP TRIGGER IF EXISTS cdc_emu_ticket ON cdc_emu.ddl_marker;
CREATE CONSTRAINT TRIGGER cdc_emu_ticket AFTER UPDATE ON cdc_emu.ddl_marker
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cdc_emu.trg_commit_ticket();

-- ---------------------------------------------------------------------------------
-- Update masks: ordinal 1 is the least significant bit of the LAST byte, as
-- sys.fn_cdc_is_bit_set reads it (SUBSTRING(mask, DATALENGTH(mask) - (ordinal - 1) / 8, 1)).
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION cdc_emu.build_mask(cols text[], before_img jsonb, after_img jsonb, all_bits boolean)
  RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE n int := coalesce(array_length(cols, 1), 0); nbytes int; m bytea; k int; bytepos int;
BEGIN
  nbytes := greatest((n + 7) / 8, 1);
  m := decode(repeat('00', nbytes), 'hex');
  FOR k IN 1 .. n LOOP
    IF all_bits OR (before_img -> cols[k]) IS DISTINCT FROM (after_img -> cols[k]) THEN
      bytepos := nbytes - 1 - (k - 1) / 8;
      m := set_byte(m, bytepos, get_byte(m, bytepos) | (1 << ((k - 1) % 8)));
    END IF;
  END LOOP;
  RETURN m;
END $$;

-- Bitwise OR of masks (net changes 'all with mask' reports every column any update changed).
CREATE OR REPLACE FUNCTION cdc_emu.bytea_or(a bytea, b bytea) RETURNS bytea LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE r bytea := a; i int;
BEGIN
  IF octet_length(a) <> octet_length(b) THEN RETURN a; END IF;
  FOR i IN 0 .. octet_length(a) - 1 LOOP r := set_byte(r, i, get_byte(a, i) | get_byte(b, i)); END LOOP;
  RETURN r;
END $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'mask_or' AND pronamespace = 'cdc_emu'::regnamespace) THEN
    CREATE AGGREGATE cdc_emu.mask_or(bytea) (SFUNC = cdc_emu.bytea_or, STYPE = bytea);
  END IF;
END $$;

-- ---------------------------------------------------------------------------------
-- sys.* LSN, time and column functions
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION sys.fn_cdc_get_max_lsn() RETURNS bytea LANGUAGE sql STABLE AS $$
  SELECT max(start_lsn) FROM cdc.lsn_time_mapping $$;

-- May the session's login read this capture instance? (SELECT on every captured column of the
-- source table, and membership in the gating role when there is one; superusers may.)
CREATE OR REPLACE FUNCTION cdc_emu.can_read(ci text) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
DECLARE inst cdc_emu.instance; gate text; c text;
BEGIN
  SELECT * INTO inst FROM cdc_emu.instance i WHERE lower(i.capture_instance) = lower(ci);
  IF NOT FOUND THEN RETURN false; END IF;
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN RETURN true; END IF;
  SELECT role_name INTO gate FROM cdc.change_tables WHERE lower(capture_instance) = lower(ci);
  IF gate IS NOT NULL AND NOT pg_has_role(session_user, gate, 'MEMBER') THEN RETURN false; END IF;
  FOREACH c IN ARRAY inst.columns LOOP
    IF NOT has_column_privilege(session_user, inst.source_oid, c, 'SELECT') THEN RETURN false; END IF;
  END LOOP;
  RETURN true;
END $$;

CREATE OR REPLACE FUNCTION cdc_emu.check_access(ci text, fn text) RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF NOT cdc_emu.can_read(ci) THEN
    RAISE EXCEPTION 'The SELECT permission was denied on the object ''%'', database ''%'', schema ''cdc''.',
      fn, current_database() USING ERRCODE = '42501';
  END IF;
END $$;

-- Returns 0x00000000000000000000 when the instance does not exist or the caller may not read it;
-- NULL while the capture job has not recognised a new instance yet.
CREATE OR REPLACE FUNCTION sys.fn_cdc_get_min_lsn(capture_instance_name text) RETURNS bytea
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE lo bytea;
BEGIN
  IF NOT cdc_emu.can_read(capture_instance_name) THEN RETURN '\x00000000000000000000'::bytea; END IF;
  SELECT start_lsn INTO lo FROM cdc.change_tables WHERE lower(capture_instance) = lower(capture_instance_name);
  RETURN lo;
END $$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_map_lsn_to_time(lsn_value bytea) RETURNS timestamp
  LANGUAGE sql STABLE AS $$ SELECT tran_end_time FROM cdc.lsn_time_mapping WHERE start_lsn = lsn_value $$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_map_time_to_lsn(relational_operator text, tracking_time timestamp)
  RETURNS bytea LANGUAGE sql STABLE AS $$
  SELECT CASE lower(btrim(relational_operator))
    WHEN 'largest less than'              THEN (SELECT max(start_lsn) FROM cdc.lsn_time_mapping WHERE tran_end_time <  tracking_time)
    WHEN 'largest less than or equal'     THEN (SELECT max(start_lsn) FROM cdc.lsn_time_mapping WHERE tran_end_time <= tracking_time)
    WHEN 'smallest greater than'          THEN (SELECT min(start_lsn) FROM cdc.lsn_time_mapping WHERE tran_end_time >  tracking_time)
    WHEN 'smallest greater than or equal' THEN (SELECT min(start_lsn) FROM cdc.lsn_time_mapping WHERE tran_end_time >= tracking_time)
  END $$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_get_column_ordinal(capture_instance_name text, column_name text)
  RETURNS int LANGUAGE sql STABLE AS $$
  SELECT cc.column_ordinal FROM cdc.captured_columns cc JOIN cdc.change_tables ct ON ct.object_id = cc.object_id
   WHERE lower(ct.capture_instance) = lower($1) AND lower(cc.column_name) = lower($2) $$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_is_bit_set(bit_position int, update_mask bytea) RETURNS boolean
  LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN bit_position IS NULL OR update_mask IS NULL OR bit_position < 1
                   OR bit_position > octet_length(update_mask) * 8 THEN NULL
              ELSE (get_byte(update_mask, octet_length(update_mask) - 1 - (bit_position - 1) / 8)
                    & (1 << ((bit_position - 1) % 8))) <> 0 END $$;

CREATE OR REPLACE FUNCTION sys.fn_cdc_has_column_changed(capture_instance text, column_name text, update_mask bytea)
  RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT sys.fn_cdc_is_bit_set(sys.fn_cdc_get_column_ordinal($1, $2), $3) $$;

-- Error 313, with SQL Server's (misleading) message text, SQLSTATE 42000. SQL Server names the
-- function literally 'cdc.fn_cdc_get_all_changes_ ...', so the text ends '... .'
CREATE OR REPLACE FUNCTION cdc_emu.check_parameters(ci text, from_lsn bytea, to_lsn bytea, opt text,
                                                     allowed text[], fn text) RETURNS void
  LANGUAGE plpgsql STABLE AS $$
DECLARE lo bytea; hi bytea;
BEGIN
  SELECT start_lsn INTO lo FROM cdc.change_tables WHERE lower(capture_instance) = lower(ci);
  hi := sys.fn_cdc_get_max_lsn();
  IF opt IS NULL OR NOT (lower(btrim(opt)) = ANY (allowed))
     OR from_lsn IS NULL OR to_lsn IS NULL OR lo IS NULL OR hi IS NULL
     OR from_lsn < lo OR from_lsn > hi OR to_lsn < lo OR to_lsn > hi OR from_lsn > to_lsn THEN
    RAISE EXCEPTION 'An insufficient number of arguments were supplied for the procedure or function %.', fn
      USING ERRCODE = '42000';
  END IF;
END $$;

-- ---------------------------------------------------------------------------------
-- Catalog views the common SQL may join (object_id = the PostgreSQL oid as int)
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE VIEW sys.schemas AS
  SELECT n.oid::int AS schema_id, n.nspname::text AS name FROM pg_namespace n;
CREATE OR REPLACE VIEW sys.tables AS
  SELECT c.oid::int AS object_id, c.relname::text AS name, c.relnamespace::int AS schema_id,
         EXISTS (SELECT 1 FROM cdc.change_tables ct WHERE ct.source_object_id = c.oid::int) AS is_tracked_by_cdc
    FROM pg_class c WHERE c.relkind IN ('r', 'p');
CREATE OR REPLACE VIEW sys.columns AS
  SELECT a.attrelid::int AS object_id, a.attname::text AS name, a.attnum::int AS column_id,
         NOT a.attnotnull AS is_nullable
    FROM pg_attribute a WHERE a.attnum > 0 AND NOT a.attisdropped;
CREATE OR REPLACE VIEW sys.databases AS
  SELECT d.datname::text AS name, d.oid::int AS database_id,
         (d.datname = current_database() AND cdc_emu.setting('is_cdc_enabled') = '1') AS is_cdc_enabled
    FROM pg_database d;

-- ---------------------------------------------------------------------------------
-- Enabling and disabling (PostgreSQL CALL syntax: administration, not the connector's SQL)
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE sys.sp_cdc_enable_db() LANGUAGE sql AS $$
  UPDATE cdc_emu.settings SET v = '1' WHERE k = 'is_cdc_enabled' $$;

CREATE OR REPLACE PROCEDURE sys.sp_cdc_enable_table(
    source_schema text, source_name text, role_name text,
    capture_instance text DEFAULT NULL, supports_net_changes boolean DEFAULT NULL,
    index_name text DEFAULT NULL, captured_column_list text DEFAULT NULL,
    filegroup_name text DEFAULT NULL, allow_partition_switch boolean DEFAULT true)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  src regclass; ci text; ct text; cols text[]; keys text[]; coldefs text; sel text; ct_oid oid;
  pos bigint; key_index text; net boolean; part text; all_fn text; net_fn text;
BEGIN
  IF cdc_emu.setting('is_cdc_enabled') <> '1' THEN
    RAISE EXCEPTION 'Database ''%'' is not enabled for Change Data Capture. Ensure that the correct database context is set and retry the operation.',
      current_database() USING ERRCODE = '55000';
  END IF;
  src := to_regclass(format('%I.%I', lower(source_schema), lower(source_name)));
  IF src IS NULL THEN
    RAISE EXCEPTION 'Source table ''%.%'' does not exist in the current database.', source_schema, source_name
      USING ERRCODE = '42P01';
  END IF;
  ci := rtrim(coalesce(capture_instance, source_schema || '_' || source_name));
  IF length(ci) > 100 OR length('fn_cdc_get_all_changes_' || ci) > 63 THEN
    RAISE EXCEPTION 'The capture instance name ''%'' is too long.', ci USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM cdc.change_tables x WHERE lower(x.capture_instance) = lower(ci)) THEN
    RAISE EXCEPTION 'Could not create a capture instance because the capture instance name ''%'' already exists in the current database. Specify an explicit unique name for the parameter @capture_instance.', ci
      USING ERRCODE = '42710';
  END IF;
  IF (SELECT count(*) FROM cdc.change_tables WHERE source_object_id = src::oid::int) >= 2 THEN
    RAISE EXCEPTION 'Could not create a capture instance because a maximum of two capture instances already exist for source table ''%.%''. A table can have at most two capture instances. Disable a capture instance to create a new one.',
      source_schema, source_name USING ERRCODE = '54000';
  END IF;
  ct := lower(ci) || '_ct';
  SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO cols
    FROM pg_attribute a WHERE a.attrelid = src AND a.attnum > 0 AND NOT a.attisdropped
     AND (captured_column_list IS NULL OR lower(a.attname) = ANY (
          SELECT lower(btrim(x, ' "[]')) FROM unnest(string_to_array(captured_column_list, ',')) x));
  SELECT array_agg(a.attname::text ORDER BY k.ord), min(c.relname) INTO keys, key_index
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = src AND (CASE WHEN index_name IS NULL THEN i.indisprimary
                                    ELSE i.indisunique AND lower(c.relname) = lower(index_name) END);
  IF index_name IS NOT NULL AND keys IS NULL THEN
    RAISE EXCEPTION 'The specified @index_name ''%'' is not a unique index of ''%.%''.', index_name, source_schema, source_name
      USING ERRCODE = '42704';
  END IF;
  IF keys IS NOT NULL AND NOT keys <@ cols THEN
    RAISE EXCEPTION 'The @captured_column_list must include the columns of the primary key or @index_name.'
      USING ERRCODE = '22023';
  END IF;
  net := coalesce(supports_net_changes, keys IS NOT NULL);
  IF net AND keys IS NULL THEN
    RAISE EXCEPTION 'Source table ''%.%'' has no primary key or unique index, so @supports_net_changes cannot be 1.',
      source_schema, source_name USING ERRCODE = '22023';
  END IF;

  SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
    INTO coldefs FROM pg_attribute a WHERE a.attrelid = src AND a.attname = ANY (cols);
  EXECUTE format('CREATE TABLE cdc.%I ("__$start_lsn" bytea NOT NULL, "__$end_lsn" bytea, "__$seqval" bytea NOT NULL, '
                 '"__$operation" int NOT NULL, "__$update_mask" bytea, %s, "__$command_id" int)', ct, coldefs);
  EXECUTE format('CREATE INDEX ON cdc.%I ("__$start_lsn", "__$seqval", "__$operation")', ct);
  ct_oid := format('cdc.%I', ct)::regclass::oid;
  sel := (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(cols) c);
  all_fn := 'fn_cdc_get_all_changes_' || lower(ci);

  -- The all-changes TVF. PL/pgSQL so the parameter check runs even when the table is empty.
  EXECUTE format($f$
    CREATE FUNCTION cdc.%I(from_lsn bytea, to_lsn bytea, row_filter_option text)
    RETURNS TABLE ("__$start_lsn" bytea, "__$seqval" bytea, "__$operation" int, "__$update_mask" bytea, %s)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $b$
    #variable_conflict use_column
    BEGIN
      PERFORM cdc_emu.check_access(%L, %L);
      PERFORM cdc_emu.check_parameters(%L, from_lsn, to_lsn, row_filter_option,
                                       ARRAY['all', 'all update old'], %L);
      RETURN QUERY SELECT t."__$start_lsn", t."__$seqval", t."__$operation", t."__$update_mask", %s
        FROM cdc.%I t
       WHERE t."__$start_lsn" >= from_lsn AND t."__$start_lsn" <= to_lsn
         AND (t."__$operation" <> 3 OR lower(btrim(row_filter_option)) = 'all update old');
    END $b$ $f$,
    all_fn, coldefs, ci, 'fn_cdc_get_all_changes_' || ci, ci, 'cdc.fn_cdc_get_all_changes_ ...', sel, ct);

  -- The net-changes TVF: one row per key with its final content (SQL Server's derivation rules).
  IF net THEN
    net_fn := 'fn_cdc_get_net_changes_' || lower(ci);
    part := (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(keys) k);
    EXECUTE format($f$
      CREATE FUNCTION cdc.%I(from_lsn bytea, to_lsn bytea, row_filter_option text)
      RETURNS TABLE ("__$start_lsn" bytea, "__$operation" int, "__$update_mask" bytea, %s)
      LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $b$
      #variable_conflict use_column
      DECLARE opt text := lower(btrim(row_filter_option));
      BEGIN
        PERFORM cdc_emu.check_access(%L, %L);
        PERFORM cdc_emu.check_parameters(%L, from_lsn, to_lsn, row_filter_option,
                                         ARRAY['all', 'all with mask', 'all with merge'], %L);
        RETURN QUERY
        WITH w AS (
          SELECT t.*,
                 row_number() OVER (PARTITION BY %s ORDER BY t."__$start_lsn" DESC, t."__$seqval" DESC, t."__$operation" DESC) AS rn_last,
                 first_value(t."__$operation") OVER (PARTITION BY %s ORDER BY t."__$start_lsn", t."__$seqval", t."__$operation") AS first_op,
                 count(*) OVER (PARTITION BY %s) AS n_changes,
                 cdc_emu.mask_or(CASE WHEN t."__$operation" = 4 THEN t."__$update_mask" END) OVER (PARTITION BY %s) AS any_mask
            FROM cdc.%I t
           WHERE t."__$start_lsn" >= from_lsn AND t."__$start_lsn" <= to_lsn AND t."__$operation" <> 3),
        d AS (
          SELECT w.*,
                 CASE WHEN w.n_changes = 1 THEN w."__$operation"
                      WHEN w.first_op = 2 THEN CASE WHEN w."__$operation" = 1 THEN NULL ELSE 2 END
                      WHEN w."__$operation" = 1 THEN 1
                      ELSE 4 END AS net_op
            FROM w WHERE w.rn_last = 1)
        SELECT t."__$start_lsn",
               CASE WHEN opt = 'all with merge' AND t.net_op IN (2, 4) THEN 5 ELSE t.net_op END,
               CASE WHEN opt = 'all with mask' AND t.net_op = 4 THEN t.any_mask ELSE NULL::bytea END,
               %s
          FROM d AS t
         WHERE t.net_op IS NOT NULL;
      END $b$ $f$,
      net_fn, coldefs, ci, 'fn_cdc_get_net_changes_' || ci, ci, 'cdc.fn_cdc_get_net_changes_ ...',
      part, part, part, part, ct, sel);
  END IF;

  pos := nextval('cdc_emu.log_pos');               -- the enable "log record"
  INSERT INTO cdc.change_tables(object_id, source_object_id, capture_instance, start_lsn, supports_net_changes,
                                role_name, index_name, filegroup_name, create_date, partition_switch)
  VALUES (ct_oid::int, src::oid::int, ci, NULL, net, role_name, key_index, filegroup_name, cdc_emu.now(),
          coalesce(allow_partition_switch, true));
  INSERT INTO cdc.captured_columns(object_id, column_name, column_id, column_type, column_ordinal)
  SELECT ct_oid::int, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), array_position(cols, a.attname::text)
    FROM pg_attribute a WHERE a.attrelid = src AND a.attname = ANY (cols);
  INSERT INTO cdc.index_columns(object_id, column_name, index_ordinal, column_id)
  SELECT ct_oid::int, k.col, k.ord, a.attnum
    FROM unnest(keys) WITH ORDINALITY AS k(col, ord) JOIN pg_attribute a ON a.attrelid = src AND a.attname = k.col;
  INSERT INTO cdc_emu.instance VALUES (ci, src::oid, ct, pos, cols, coalesce(keys, '{}'));
  PERFORM cdc_emu.attach_triggers(src, coalesce(keys, '{}'));
  IF role_name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
    EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
  END IF;
  -- Readers of the capture instance read its change table directly too (Debezium's direct mode).
  EXECUTE format('GRANT SELECT ON cdc.%I TO %s', ct,
                 coalesce(quote_ident(role_name), 'cdc_emu_readers'));
END $$;

CREATE OR REPLACE PROCEDURE sys.sp_cdc_disable_table(source_schema text, source_name text, capture_instance text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE r record; src oid;
BEGIN
  src := to_regclass(format('%I.%I', lower(source_schema), lower(source_name)))::oid;
  IF src IS NULL THEN
    RAISE EXCEPTION 'Source table ''%.%'' does not exist in the current database.', source_schema, source_name
      USING ERRCODE = '42P01';
  END IF;
  FOR r IN SELECT i.* FROM cdc_emu.instance i
            WHERE i.source_oid = src
              AND (lower(sp_cdc_disable_table.capture_instance) = 'all'
                   OR lower(i.capture_instance) = lower(sp_cdc_disable_table.capture_instance)) LOOP
    EXECUTE format('DROP FUNCTION IF EXISTS cdc.%I', 'fn_cdc_get_all_changes_' || lower(r.capture_instance));
    EXECUTE format('DROP FUNCTION IF EXISTS cdc.%I', 'fn_cdc_get_net_changes_' || lower(r.capture_instance));
    DELETE FROM cdc.captured_columns WHERE object_id = format('cdc.%I', r.ct_name)::regclass::oid::int;
    DELETE FROM cdc.index_columns   WHERE object_id = format('cdc.%I', r.ct_name)::regclass::oid::int;
    DELETE FROM cdc.change_tables x WHERE lower(x.capture_instance) = lower(r.capture_instance);
    EXECUTE format('DROP TABLE cdc.%I', r.ct_name);
    DELETE FROM cdc_emu.instance WHERE capture_instance = r.capture_instance;
  END LOOP;
  IF NOT EXISTS (SELECT 1 FROM cdc_emu.instance WHERE source_oid = src) THEN
    PERFORM cdc_emu.detach_triggers(src::regclass);
  END IF;
END $$;

-- sys.sp_cdc_change_job: change the capture or cleanup job's parameters (NULL keeps a value).
CREATE OR REPLACE PROCEDURE sys.sp_cdc_change_job(
    job_type text DEFAULT 'capture', maxtrans int DEFAULT NULL, maxscans int DEFAULT NULL,
    continuous boolean DEFAULT NULL, pollinginterval float8 DEFAULT NULL, retention bigint DEFAULT NULL,
    threshold bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
  IF lower(job_type) NOT IN ('capture', 'cleanup') THEN
    RAISE EXCEPTION 'Invalid value ''%'' specified for parameter @job_type.', job_type USING ERRCODE = '22023';
  END IF;
  IF retention IS NOT NULL AND (retention < 1 OR retention > 52494800) THEN
    RAISE EXCEPTION 'The retention value must be between 1 and 52494800 minutes.' USING ERRCODE = '22023';
  END IF;
  UPDATE cdc_emu.cdc_jobs j SET
    maxtrans = coalesce(maxtrans, j.maxtrans), maxscans = coalesce(maxscans, j.maxscans),
    continuous = coalesce(continuous, j.continuous), pollinginterval = coalesce(pollinginterval, j.pollinginterval),
    retention = coalesce(retention, j.retention), threshold = coalesce(threshold, j.threshold)
   WHERE j.job_type = lower(sp_cdc_change_job.job_type);
END $$;

-- DDL history: ALTER TABLE on a tracked table is recorded at its commit LSN.
CREATE OR REPLACE FUNCTION cdc_emu.evt_ddl() RETURNS event_trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'ALTER TABLE' LOOP
    IF EXISTS (SELECT 1 FROM cdc_emu.instance WHERE source_oid = r.objid) THEN
      INSERT INTO cdc_emu.staged_ddl(txid, source_oid, ddl_command, seq_pos, ddl_time)
      VALUES (pg_current_xact_id(), r.objid, current_query(), nextval('cdc_emu.log_pos'), cdc_emu.now());
      UPDATE cdc_emu.ddl_marker SET n = n + 1 WHERE id = 1;
    END IF;
  END LOOP;
END $$;
DROP EVENT TRIGGER IF EXISTS cdc_emu_ddl;
CREATE EVENT TRIGGER cdc_emu_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
  EXECUTE FUNCTION cdc_emu.evt_ddl();

-- ---------------------------------------------------------------------------------
-- The capture job: sys.sp_cdc_scan. Each scan cycle is one transaction (one COMMIT), takes at
-- most maxtrans whole transactions in commit order, and never splits one. Call it with
-- autocommit on (it commits). Concurrent scans are serialised by an advisory lock.
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE sys.sp_cdc_scan(maxtrans int DEFAULT NULL, maxscans int DEFAULT NULL,
                                            continuous boolean DEFAULT false, pollinginterval bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
  scan int; n int; total int := 0; inst cdc_emu.instance; txids xid8[]; poss bigint[];
  max_trans int; max_scans int; last_end timestamp; gap float8;
BEGIN
  SELECT coalesce(maxtrans, j.maxtrans), coalesce(maxscans, j.maxscans) INTO max_trans, max_scans
    FROM cdc_emu.cdc_jobs j WHERE j.job_type = 'capture';
  FOR scan IN 1 .. max_scans LOOP
    PERFORM pg_advisory_xact_lock(727273);
    -- Recognise capture instances enabled since the last scan: their validity interval starts here.
    UPDATE cdc.change_tables ct SET start_lsn = cdc_emu.lsn(i.created_pos)
      FROM cdc_emu.instance i
     WHERE ct.capture_instance = i.capture_instance AND ct.start_lsn IS NULL;
    SELECT array_agg(b.txid ORDER BY b.commit_pos), array_agg(b.commit_pos ORDER BY b.commit_pos)
      INTO txids, poss
      FROM (SELECT txid, commit_pos FROM cdc_emu.txn_commit ORDER BY commit_pos LIMIT max_trans) b;
    n := coalesce(array_length(txids, 1), 0);
    IF n > 0 THEN
      FOR inst IN SELECT * FROM cdc_emu.instance LOOP
        EXECUTE format($q$
          INSERT INTO cdc.%1$I
          SELECT cdc_emu.lsn(b.commit_pos), NULL, cdc_emu.lsn(c.seq_pos), op.op,
                 cdc_emu.build_mask($3, c.before_img, c.after_img, c.kind <> 'U'),
                 %2$s, c.command_id
            FROM unnest($1, $2) AS b(txid, commit_pos)
            JOIN cdc_emu.staged_change c ON c.txid = b.txid AND c.source_oid = $4
            CROSS JOIN LATERAL (
                  SELECT 2 AS op, c.after_img AS img, 2 AS ord WHERE c.kind = 'I'
        UNION ALL SELECT 1, c.before_img, 1 WHERE c.kind IN ('D', 'K')
        UNION ALL SELECT 2, c.after_img, 2 WHERE c.kind = 'K'
        UNION ALL SELECT 3, c.before_img, 3 WHERE c.kind = 'U'
        UNION ALL SELECT 4, c.after_img, 4 WHERE c.kind = 'U') AS op
            CROSS JOIN LATERAL jsonb_populate_record(NULL::cdc.%1$I, op.img) AS r
           WHERE b.commit_pos > $5
           ORDER BY b.commit_pos, c.seq_pos, op.ord $q$,
          inst.ct_name, (SELECT string_agg(format('r.%I', col), ', ') FROM unnest(inst.columns) col))
        USING txids, poss, inst.columns, inst.source_oid, inst.created_pos;
      END LOOP;
      INSERT INTO cdc.ddl_history(source_object_id, object_id, required_column_update, ddl_command, ddl_lsn, ddl_time)
      SELECT d.source_oid::int, ct.object_id, false, d.ddl_command, cdc_emu.lsn(b.commit_pos), d.ddl_time
        FROM unnest(txids, poss) AS b(txid, commit_pos)
        JOIN cdc_emu.staged_ddl d ON d.txid = b.txid
        JOIN cdc.change_tables ct ON ct.source_object_id = d.source_oid::int
        JOIN cdc_emu.instance i ON i.capture_instance = ct.capture_instance AND i.created_pos < d.seq_pos
       ORDER BY d.seq_pos;
      -- One mapping row per transaction that wrote change-table rows.
      INSERT INTO cdc.lsn_time_mapping(start_lsn, tran_begin_time, tran_end_time, tran_id, tran_begin_lsn)
      SELECT cdc_emu.lsn(b.commit_pos), t.begin_time, t.end_time,
             '\x0000'::bytea || int8send(b.txid::text::bigint), cdc_emu.lsn(f.first_pos)
        FROM unnest(txids, poss) AS b(txid, commit_pos)
        JOIN cdc_emu.txn_commit t ON t.txid = b.txid
        JOIN LATERAL (SELECT min(c.seq_pos) AS first_pos FROM cdc_emu.staged_change c
                       WHERE c.txid = b.txid
                         AND EXISTS (SELECT 1 FROM cdc_emu.instance i
                                      WHERE i.source_oid = c.source_oid AND i.created_pos < b.commit_pos)) f
          ON f.first_pos IS NOT NULL;
      DELETE FROM cdc_emu.staged_change WHERE txid = ANY (txids);
      DELETE FROM cdc_emu.staged_ddl WHERE txid = ANY (txids);
      DELETE FROM cdc_emu.txn_commit WHERE txid = ANY (txids);
    END IF;
    total := total + n;
    IF n = 0 THEN
      -- Idle: SQL Server still adds dummy lsn_time_mapping rows (tran_id = 0x00) now and then.
      IF total = 0 AND cdc_emu.setting('idle_heartbeat') = '1' THEN
        gap := coalesce(cdc_emu.setting('idle_heartbeat_seconds'), '5')::float8;
        SELECT max(tran_end_time) INTO last_end FROM cdc.lsn_time_mapping;
        IF last_end IS NULL OR last_end <= cdc_emu.now() - make_interval(secs => gap) THEN
          INSERT INTO cdc.lsn_time_mapping
          VALUES (cdc_emu.lsn(nextval('cdc_emu.log_pos')), cdc_emu.now(), cdc_emu.now(), '\x00'::bytea, NULL);
        END IF;
      END IF;
      COMMIT;
      EXIT;
    END IF;
    COMMIT;
  END LOOP;
END $$;

-- ---------------------------------------------------------------------------------
-- Cleanup: sys.sp_cdc_cleanup_change_table and the retention-based cleanup job.
-- ---------------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE sys.sp_cdc_cleanup_change_table(capture_instance text, low_water_mark bytea,
                                                            threshold bigint DEFAULT 5000)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE inst cdc_emu.instance; lwm bytea; cur bytea; t timestamp; deleted bigint;
BEGIN
  SELECT * INTO inst FROM cdc_emu.instance i
   WHERE lower(i.capture_instance) = lower(sp_cdc_cleanup_change_table.capture_instance);
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Capture instance ''%'' does not exist.', sp_cdc_cleanup_change_table.capture_instance
      USING ERRCODE = '42704';
  END IF;
  SELECT start_lsn INTO cur FROM cdc.change_tables ct WHERE ct.capture_instance = inst.capture_instance;
  IF low_water_mark IS NOT NULL THEN
    SELECT m.tran_end_time INTO t FROM cdc.lsn_time_mapping m WHERE m.start_lsn = low_water_mark;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'The specified @low_water_mark is not a valid start_lsn of cdc.lsn_time_mapping.'
        USING ERRCODE = '22023';
    END IF;
    SELECT min(start_lsn) INTO lwm FROM cdc.lsn_time_mapping WHERE tran_end_time = t;
    IF cur IS NULL OR lwm > cur THEN          -- the low end only ever moves forward
      UPDATE cdc.change_tables ct SET start_lsn = lwm WHERE ct.capture_instance = inst.capture_instance;
      cur := lwm;
    END IF;
  END IF;
  IF cur IS NULL THEN RETURN; END IF;
  LOOP                                       -- at most threshold rows per DELETE, as SQL Server does
    EXECUTE format('DELETE FROM cdc.%1$I WHERE ctid IN (SELECT ctid FROM cdc.%1$I WHERE "__$start_lsn" < $1 LIMIT $2)',
                   inst.ct_name) USING cur, greatest(coalesce(threshold, 5000), 1);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    EXIT WHEN deleted = 0;
  END LOOP;
END $$;

-- The cleanup job: low water mark = the smallest LSN committed within `retention` minutes of the
-- LAST commit time (not the wall clock), so a lagging capture never loses changes early.
CREATE OR REPLACE PROCEDURE cdc_emu.cleanup_job() LANGUAGE plpgsql AS $$
DECLARE ret bigint; thr bigint; lwm bytea; r record;
BEGIN
  SELECT retention, threshold INTO ret, thr FROM cdc_emu.cdc_jobs WHERE job_type = 'cleanup';
  SELECT min(start_lsn) INTO lwm FROM cdc.lsn_time_mapping
   WHERE tran_end_time >= (SELECT max(tran_end_time) FROM cdc.lsn_time_mapping) - make_interval(mins => ret::int);
  IF lwm IS NULL THEN RETURN; END IF;
  FOR r IN SELECT capture_instance FROM cdc.change_tables WHERE start_lsn IS NOT NULL LOOP
    CALL sys.sp_cdc_cleanup_change_table(r.capture_instance, lwm, thr);
  END LOOP;
  DELETE FROM cdc.lsn_time_mapping WHERE start_lsn < lwm;
END $$;

-- Readers of capture instances without a gating role (the sync login is granted this role).
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_emu_readers') THEN
    CREATE ROLE cdc_emu_readers NOLOGIN;
  END IF;
END $$;
GRANT USAGE ON SCHEMA sys, cdc TO cdc_emu_readers;
GRANT SELECT ON cdc.change_tables, cdc.captured_columns, cdc.index_columns, cdc.ddl_history,
                cdc.lsn_time_mapping TO cdc_emu_readers;
GRANT SELECT ON sys.schemas, sys.tables, sys.columns, sys.databases TO cdc_emu_readers;
-- The emulator's internals are nobody else's business.
REVOKE ALL ON SCHEMA cdc_emu FROM PUBLIC;
GRANT USAGE ON SCHEMA cdc_emu TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA cdc_emu FROM PUBLIC;
