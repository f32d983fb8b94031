# A throwaway PostgreSQL cluster for the tests, from the machine's PostgreSQL binaries.
# Source it, then: start_postgres (exports RUNTA_TEST_DATABASE_URL) and stop_postgres.
# initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.

pg_bin() {
  local name=$1 found
  found=$(command -v "$name" 2>/dev/null) && { echo "$found"; return 0; }
  for found in /usr/lib/postgresql/*/bin/"$name"; do
    [ -x "$found" ] && { echo "$found"; return 0; }
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local initdb pg_ctl
  if ! initdb=$(pg_bin initdb) || ! pg_ctl=$(pg_bin pg_ctl); then
    if [ "${CI:-}" = true ]; then
      echo "error: PostgreSQL binaries (initdb, pg_ctl) not found; CI needs them" >&2
      return 1
    fi
    echo "warning: PostgreSQL binaries not found: the PostgreSQL half of the tests will be skipped" >&2
    return 0
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "error: running as root needs a 'postgres' user to own the test cluster" >&2
    return 1
  fi
  PG_TEST_DIR=$(mktemp -d /tmp/runta-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_TEST_DIR"
  PG_TEST_PORT=$(free_port)
  as_owner "$initdb" -D "$PG_TEST_DIR/data" -U postgres --auth=trust --encoding=UTF8 --no-sync >"$PG_TEST_DIR/initdb.log" 2>&1 \
    || { cat "$PG_TEST_DIR/initdb.log" >&2; return 1; }
  as_owner "$pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_TEST_PORT -k $PG_TEST_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start >/dev/null || { cat "$PG_TEST_DIR/server.log" >&2; return 1; }
  PG_CTL_BIN=$pg_ctl
  export RUNTA_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_TEST_PORT/postgres"
  echo "PostgreSQL test cluster on 127.0.0.1:$PG_TEST_PORT ($PG_TEST_DIR)" >&2
}

stop_postgres() {
  [ -n "${PG_TEST_DIR:-}" ] || return 0
  as_owner "$PG_CTL_BIN" -D "$PG_TEST_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TEST_DIR"
  PG_TEST_DIR=
}
