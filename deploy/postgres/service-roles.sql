-- Two PostgreSQL roles per service (docs/operations.md, "Database roles"), run once per service by a database
-- administrator with {schema} (the service's schema: auth, ingest, threading or outbound), {owner}, {app} and
-- the passwords filled in:
--   {owner}  owns the schema and everything in it; only the migration Job uses it (<SERVICE>_MIGRATION_DATABASE_URL)
--   {app}    what the service runs as (<SERVICE>_DATABASE_URL): reads and writes rows, changes no table
-- tests/deploy/test_database_roles.py runs this file against a real PostgreSQL.
CREATE ROLE {owner} LOGIN PASSWORD '{owner_password}';
CREATE ROLE {app} LOGIN PASSWORD '{app_password}';
CREATE SCHEMA {schema} AUTHORIZATION {owner};
GRANT USAGE ON SCHEMA {schema} TO {app};
-- Tables and sequences the owner's migrations create later are the service's to use, never to alter.
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {app};
