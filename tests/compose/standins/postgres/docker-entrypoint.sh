#!/usr/bin/env bash
# Entry point of the postgres:15 stand-in, like the official image's for what the compose file
# uses: POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default the user), each
# also as *_FILE, POSTGRES_INITDB_ARGS and POSTGRES_HOST_AUTH_METHOD (default scram-sha-256).
# On first start (empty PGDATA): initdb, listen on '*', password auth for every remote host, and
# /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh run once against POSTGRES_DB as
# POSTGRES_USER. Then the command (default postgres) runs as the postgres user, in the foreground.
set -Eeuo pipefail

# file_env VAR [DEFAULT]: VAR from VAR or from the file VAR_FILE names.
file_env() {
  local var=$1 file_var="${1}_FILE" value=${2:-}
  if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
    echo "error: both $var and $file_var are set" >&2
    exit 1
  fi
  if [ -n "${!var:-}" ]; then value=${!var}; elif [ -n "${!file_var:-}" ]; then value=$(<"${!file_var}"); fi
  export "$var=$value"
  unset "$file_var"
}

init_database() {
  local auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256} socket pwfile f
  local -a initdb_args psql
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  read -ra initdb_args <<<"${POSTGRES_INITDB_ARGS:-}"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  [ -z "$POSTGRES_PASSWORD" ] || initdb_args+=("--pwfile=$pwfile")
  initdb --username="$POSTGRES_USER" "${initdb_args[@]}"
  rm -f "$pwfile"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

  # The temporary server listens only on a private socket, so that pg_isready (the health check)
  # fails until the init scripts have run and the real server is up.
  socket=$(mktemp -d)
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k $socket" -w start
  export PGHOST=$socket PGUSER=$POSTGRES_USER PGPASSWORD=$POSTGRES_PASSWORD
  psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password)
  if [ "$POSTGRES_DB" != postgres ]; then
    "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  export PGDATABASE=$POSTGRES_DB
  for f in /docker-entrypoint-initdb.d/*; do
    [ -e "$f" ] || continue
    case $f in
      *.sh)
        echo "running $f"
        # shellcheck source=/dev/null
        if [ -x "$f" ]; then "$f"; else . "$f"; fi
        ;;
      *.sql) echo "running $f"; "${psql[@]}" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | "${psql[@]}" ;;
      *) echo "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGHOST PGUSER PGPASSWORD PGDATABASE
  rmdir "$socket"
  echo "PostgreSQL init process complete; ready for start up."
}

if [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ "$1" = postgres ]; then
  if [ -s "$PGDATA/PG_VERSION" ]; then
    echo "PostgreSQL database directory appears to contain a database; skipping initialization"
  else
    init_database
  fi
fi
exec "$@"
