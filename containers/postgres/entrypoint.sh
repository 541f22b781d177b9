#!/bin/sh
# PostgreSQL configured like the official image: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB;
# data in $PGDATA; listens on every address, port 5432; password authentication from outside; the
# scripts of /docker-entrypoint-initdb.d run when the data directory is first made.
set -eu
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
BIN=/usr/lib/postgresql/15/bin
USER_NAME="${POSTGRES_USER:-postgres}"
DB="${POSTGRES_DB:-$USER_NAME}"
PASSWORD="${POSTGRES_PASSWORD:-}"
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" --username=postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$USER_NAME" != postgres ]; then
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -c "CREATE ROLE \"$USER_NAME\" LOGIN SUPERUSER PASSWORD '$PASSWORD'"
  else
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -c "ALTER ROLE postgres PASSWORD '$PASSWORD'"
  fi
  if [ "$DB" != postgres ]; then
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE \"$DB\" OWNER \"$USER_NAME\""
  fi
  # like the official image: the scripts of /docker-entrypoint-initdb.d, in order, once
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "entrypoint: running $f"; runuser -u postgres -- sh "$f" ;;
      *.sql) echo "entrypoint: running $f"; runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -f "$f" ;;
    esac
  done
  runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA"
