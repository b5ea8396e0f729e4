-- Enable CDC on the emulated PACS database and its four tables, as a DBA would on SQL Server
-- (EXEC sys.sp_cdc_enable_db; EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', ...).
-- Run after cdc_emulator.sql and pacs_schema.sql:
--   psql -v ON_ERROR_STOP=1 -d <database> -f pacs_enable_cdc.sql
-- Changes become visible in cdc.* after the capture job runs: CALL sys.sp_cdc_scan();
CALL sys.sp_cdc_enable_db();
CALL sys.sp_cdc_enable_table(source_schema => 'dbo', source_name => 'Property', role_name => NULL);
CALL sys.sp_cdc_enable_table(source_schema => 'dbo', source_name => 'PropertyOwner', role_name => NULL);
CALL sys.sp_cdc_enable_table(source_schema => 'dbo', source_name => 'PropertyValue', role_name => NULL);
CALL sys.sp_cdc_enable_table(source_schema => 'dbo', source_name => 'Structure', role_name => NULL);
CALL sys.sp_cdc_scan();
