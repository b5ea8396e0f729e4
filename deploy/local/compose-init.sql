-- The logins and databases `pacs-sync stack up` provisions, for the compose stack.
-- Keep in step with pacs_sync/stack/manager.py (_provision) and the defaults in pacs_sync/settings.py.
CREATE ROLE terrafusion LOGIN PASSWORD 'terrafusion_local';
CREATE DATABASE terrafusion OWNER terrafusion;
CREATE ROLE pacs_sync LOGIN PASSWORD 'pacs_sync_local';
CREATE DATABASE pacs;
