#!/usr/bin/env bash
# PgBouncer in transaction mode in front of the local PostgreSQL, for the
# `pooler` nox session (and by hand):
#
#   scripts/pgbouncer.sh up|down|status
#
# Its config, pid file and log live in a directory of its own
# (PGBOUNCER_DIR, default /tmp/sqlsaver-pgbouncer). It listens on
# 127.0.0.1:$PGBOUNCER_PORT (6439; not 6432, where the service Debian's
# package may start listens) and serves every database of $PGBOUNCER_SERVER
# (127.0.0.1:5432) to $PGBOUNCER_USER (postgres), with no password of its
# own (the server's pg_hba.conf decides: trust, locally).
#
# What makes it a test of sqlsaver rather than of luck:
# - pool_mode = transaction: a client holds a server connection only for a
#   transaction (or a single statement in autocommit), as in production;
# - a default_pool_size (10) below the clients' connections, so that
#   clients share server connections (and big enough for the suite's
#   tests that hold transactions open while others run);
# - server_round_robin = 1, so that consecutive transactions of one client
#   land on different server connections. With the default (LIFO) a lone
#   client keeps getting the connection it just gave back, and a prepared
#   statement "works" by chance.
set -euo pipefail

DIR=${PGBOUNCER_DIR:-/tmp/sqlsaver-pgbouncer}
PORT=${PGBOUNCER_PORT:-6439}
SERVER=${PGBOUNCER_SERVER:-127.0.0.1:5432}
POOL_SIZE=${PGBOUNCER_POOL_SIZE:-10}
USER_NAME=${PGBOUNCER_USER:-postgres}
PIDFILE=$DIR/pgbouncer.pid

listening() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

up() {
  if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    echo "pgbouncer is not installed: apt-get install -y pgbouncer" >&2
    exit 1
  fi
  local bin
  bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  if running; then
    echo "pgbouncer already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    return
  fi
  if listening "$PORT"; then
    echo "port $PORT is taken by another process: set PGBOUNCER_PORT" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  # auth_type = trust still wants each user named in the auth file.
  printf '"%s" ""\n' "${USER_NAME}" >"$DIR/userlist.txt"
  cat >"$DIR/pgbouncer.ini" <<EOF
[databases]
* = host=${SERVER%:*} port=${SERVER#*:}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
pidfile = $PIDFILE
logfile = $DIR/pgbouncer.log
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
server_round_robin = 1
default_pool_size = $POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
; what the drivers send at startup that PgBouncer would otherwise refuse
; (psycopg and asyncpg send none by default; these are the usual ones)
ignore_startup_parameters = extra_float_digits,options,search_path,statement_timeout
server_reset_query =
EOF
  # PgBouncer refuses to run as root.
  local as=()
  if [ "$(id -u)" = 0 ]; then
    as=(-u postgres)
    chown -R postgres "$DIR"
  fi
  "$bin" -d "${as[@]}" "$DIR/pgbouncer.ini"
  for _ in $(seq 50); do
    if listening "$PORT"; then
      echo "pgbouncer up (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT, transaction mode"
      return
    fi
    sleep 0.1
  done
  echo "pgbouncer did not start listening on $PORT; its log:" >&2
  tail -n 20 "$DIR/pgbouncer.log" >&2 || true
  exit 1
}

down() {
  if running; then
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "pgbouncer stopped"
  else
    echo "pgbouncer not running"
  fi
  rm -f "$PIDFILE"
}

status() {
  if running; then
    echo "pgbouncer running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
  else
    echo "pgbouncer not running"
    return 3
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
