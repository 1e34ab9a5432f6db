#!/bin/sh
# Start PostgreSQL on $PGDATA; on first start, create the cluster with the official image's
# variables: POSTGRES_USER (superuser, default postgres), POSTGRES_PASSWORD (required: every
# connection from the network authenticates with it, scram-sha-256), POSTGRES_DB (default: the
# user's name). Listens on every address of the container on 5432; its socket is in /tmp.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
case "$user$database" in
    *[!A-Za-z0-9_]*) echo "POSTGRES_USER and POSTGRES_DB: letters, digits and _ only" >&2; exit 2 ;;
esac
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --pgdata="$PGDATA" --username="$user" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >/dev/null
    rm -f "$password_file"
    {
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/tmp'"
    } >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        echo "CREATE DATABASE \"$database\" OWNER \"$user\";" \
            | postgres --single -D "$PGDATA" -c unix_socket_directories=/tmp postgres >/dev/null
    fi
    echo "postgres-entrypoint: created the cluster in $PGDATA (user $user, database $database)"
fi
exec postgres -D "$PGDATA"
