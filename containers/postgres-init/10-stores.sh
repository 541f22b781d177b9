#!/bin/sh
# The stores' own roles and databases, made when the PostgreSQL container first makes its data
# directory (the official postgres image, and containers/postgres, run /docker-entrypoint-initdb.d):
#
#   readstore  password READ_STORE_PASSWORD   database readstore: the read store, the workflow store
#   keystore   password KEY_STORE_PASSWORD    database keystore: the key store (wrapped keys), only
#
# Neither role is a superuser, and neither may connect to the other's database (CONNECT is revoked
# from PUBLIC): the read side's credentials open no key. Safe to run again on an existing data
# directory (roles and databases are made when missing, passwords set):
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/10-stores.sh
set -e
if [ -z "${READ_STORE_PASSWORD:-}" ] || [ -z "${KEY_STORE_PASSWORD:-}" ]; then
    echo "10-stores.sh: READ_STORE_PASSWORD and KEY_STORE_PASSWORD must be set" >&2
    exit 1
fi
psql -v ON_ERROR_STOP=1 --no-psqlrc -q --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v read_pw="$READ_STORE_PASSWORD" -v key_pw="$KEY_STORE_PASSWORD" <<'SQL'
SELECT 'CREATE ROLE readstore' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'readstore')\gexec
SELECT 'CREATE ROLE keystore' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keystore')\gexec
ALTER ROLE readstore WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'read_pw';
ALTER ROLE keystore WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'key_pw';
SELECT 'CREATE DATABASE readstore OWNER readstore' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'readstore')\gexec
SELECT 'CREATE DATABASE keystore OWNER keystore' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'keystore')\gexec
REVOKE ALL ON DATABASE readstore FROM PUBLIC;
REVOKE ALL ON DATABASE keystore FROM PUBLIC;
SQL
echo "10-stores.sh: roles and databases readstore, keystore ready"
