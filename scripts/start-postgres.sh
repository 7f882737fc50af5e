#!/usr/bin/env bash
# Start a local PostgreSQL server for the tuning tests, as root on Debian; safe to run again.
# Installs Debian's postgresql package when missing, starts its cluster, creates the test role and
# database, and prints one line on stdout for the caller to eval:
#   eval "$(bash scripts/start-postgres.sh)"
# Everything else goes to stderr.
set -euo pipefail

role=fusedbn_test
password=fusedbn_test
database=fusedbn_test

log() { echo "start-postgres: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs and starts the server)"
    exit 1
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing Debian's postgresql package"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi

# The newest installed major version, e.g. 15.
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters --no-header | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
    log "creating cluster $version/main"
    pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters --no-header | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    log "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi

psql_admin() { su postgres -c "psql --quiet --no-psqlrc --tuples-only --no-align $*"; }
for _ in $(seq 30); do
    psql_admin "-c 'SELECT 1'" >/dev/null 2>&1 && break
    sleep 1
done

if [ -z "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$role'\"")" ]; then
    log "creating role $role"
    psql_admin "-c \"CREATE ROLE $role LOGIN PASSWORD '$password'\"" >&2
fi
if [ -z "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$database'\"")" ]; then
    log "creating database $database"
    psql_admin "-c \"CREATE DATABASE $database OWNER $role\"" >&2
fi

log "ready: database $database on 127.0.0.1:5432"
echo "export FUSEDBN_TEST_POSTGRES_URL=postgresql+psycopg2://$role:$password@127.0.0.1/$database"
