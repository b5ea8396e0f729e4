-- The emulated PACS source tables (SQL Server dbo.* on the real system).
-- Names are lower case because PostgreSQL folds unquoted identifiers: the connector's SQL writes
-- dbo.Property / PropertyID unquoted and resolves here exactly as it does on SQL Server's
-- case-insensitive collation. Types follow PACS: money is numeric(14,2), dates are dates, and
-- columns PACS lets be NULL are nullable. There are no CHECK constraints, on purpose: real PACS
-- data is dirty, and catching it is the validation stage's job.
-- Load with:  psql -v ON_ERROR_STOP=1 -d <database> -f pacs_schema.sql   (after cdc_emulator.sql)

CREATE SCHEMA IF NOT EXISTS dbo;

CREATE TABLE dbo.property (
    propertyid        int           NOT NULL PRIMARY KEY,
    parcelnumber      varchar(20)   NOT NULL,
    address           varchar(100),
    city              varchar(50),
    state             varchar(2),
    zipcode           varchar(10),
    legaldescription  varchar(500),
    acreage           numeric(10,4),
    yearbuilt         smallint
);

CREATE TABLE dbo.propertyowner (
    propertyownerid      int           NOT NULL PRIMARY KEY,
    propertyid           int           NOT NULL REFERENCES dbo.property (propertyid),
    ownername            varchar(150)  NOT NULL,
    ownertype            varchar(20),
    ownershippercentage  numeric(5,2),
    startdate            date,
    enddate              date
);
CREATE INDEX ix_propertyowner_propertyid ON dbo.propertyowner (propertyid);

CREATE TABLE dbo.propertyvalue (
    propertyvalueid   int            NOT NULL PRIMARY KEY,
    propertyid        int            NOT NULL REFERENCES dbo.property (propertyid),
    taxyear           smallint       NOT NULL,
    assessedvalue     numeric(14,2),
    marketvalue       numeric(14,2),
    landvalue         numeric(14,2),
    improvementvalue  numeric(14,2)
);
CREATE INDEX ix_propertyvalue_propertyid ON dbo.propertyvalue (propertyid);

CREATE TABLE dbo.structure (
    structureid    int           NOT NULL PRIMARY KEY,
    propertyid     int           NOT NULL REFERENCES dbo.property (propertyid),
    structuretype  varchar(30),
    squarefootage  int,
    condition      varchar(20),
    bedrooms       smallint,
    bathrooms      numeric(3,1),
    yearbuilt      smallint
);
CREATE INDEX ix_structure_propertyid ON dbo.structure (propertyid);
