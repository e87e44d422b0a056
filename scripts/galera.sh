#!/usr/bin/env bash
# A throwaway 3-node MariaDB Galera cluster on loopback, for sqlsaver's
# cluster tests (tests/cluster/) and benchmarks/galera.py.
#
#   scripts/galera.sh up        fresh data dirs, 3 nodes, database `test`
#   scripts/galera.sh down      stop every node, remove the directory
#   scripts/galera.sh kill N    kill -9 node N (1-3)
#   scripts/galera.sh status    each node's wsrep state
#   scripts/galera.sh urls      the nodes as SQLSAVER_TEST_GALERA wants them
#
# Needs Debian's galera-4, rsync and a MariaDB server (10.4+: Debian's
# mariadb-server depends on all the SST script uses); everything
# lives under ${SQLSAVER_GALERA_DIR:-/tmp/sqlsaver-galera}. Ports sit below
# Linux's ephemeral range (32768-60999), where an outgoing connection could
# take a node's gcomm, IST or SST port: SQL 13306-13308, gcomm 14567/14577/
# 14587, IST +1 and rsync SST +2 of each. When run as root (as CI is), the
# nodes run as `mysql`: the rsync SST refuses to run as root.
set -euo pipefail

DIR=${SQLSAVER_GALERA_DIR:-/tmp/sqlsaver-galera}
TIMEOUT=${SQLSAVER_GALERA_TIMEOUT:-90}  # seconds for the cluster to form
PROVIDER=${SQLSAVER_GALERA_PROVIDER:-/usr/lib/galera/libgalera_smm.so}
NODES=(1 2 3)
sql_port() { echo $((13305 + $1)); }
gcomm_port() { echo $((14557 + 10 * $1)); }
CLUSTER="gcomm://127.0.0.1:$(gcomm_port 1),127.0.0.1:$(gcomm_port 2),127.0.0.1:$(gcomm_port 3)"

die() { echo "galera.sh: $*" >&2; exit 1; }

need() {
  local missing=()
  [ -f "$PROVIDER" ] || missing+=(galera-4)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing ${missing[*]}: install with: apt-get install -y ${missing[*]}"
  fi
}

mariadbd_bin() { command -v mariadbd || echo /usr/sbin/mariadbd; }

client() {  # client N SQL...
  mariadb --no-defaults -uroot -h127.0.0.1 -P"$(sql_port "$1")" -N -B -e "$2"
}

wsrep() {  # wsrep N variable: the node's status value, or nothing
  client "$1" "SHOW GLOBAL STATUS LIKE '$2'" 2>/dev/null | cut -f2
}

# Each node runs in a process group of its own (setsid), whose id is kept in
# group.pid: killing the group also ends an SST under way (its script and
# rsync daemon are the node's children).
pid_of() { cat "$DIR/node$1/group.pid" 2>/dev/null || true; }

# Whether a process runs: a killed node stays a zombie until whoever
# inherited it (PID 1) reaps it: 1-2 s here, and one benchmark's kill
# waited 23 s for it with `kill -0`.
alive() {
  local _pid _comm state
  { read -r _pid _comm state _ <"/proc/$1/stat"; } 2>/dev/null || return 1
  [ "$state" != Z ]
}

start_node() {  # start_node N [extra mariadbd options...]
  local n=$1 gcomm; shift
  gcomm=$(gcomm_port "$n")
  local d="$DIR/node$n"
  local user=()
  [ "$(id -u)" = 0 ] && user=(--user=mysql)
  # --no-defaults: nothing from /etc/mysql, which configures the main server.
  setsid "$(mariadbd_bin)" --no-defaults "${user[@]}" \
    --datadir="$d/data" --socket="$d/mysqld.sock" --pid-file="$d/mysqld.pid" \
    --log-error="$d/error.log" --tmpdir="$d/tmp" \
    --port="$(sql_port "$n")" --bind-address=127.0.0.1 --skip-name-resolve \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=32M \
    --innodb-flush-log-at-trx-commit=2 --innodb-autoinc-lock-mode=2 \
    --max-allowed-packet=64M --max-connections=300 \
    --binlog-format=ROW --default-storage-engine=InnoDB \
    --wsrep-on=ON --wsrep-provider="$PROVIDER" \
    --wsrep-cluster-name=sqlsaver --wsrep-cluster-address="$CLUSTER" \
    --wsrep-node-name="node$n" --wsrep-node-address=127.0.0.1 \
    --wsrep-node-incoming-address="127.0.0.1:$(sql_port "$n")" \
    --wsrep-sst-method=rsync --wsrep-sst-receive-address="127.0.0.1:$((gcomm + 2))" \
    --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$gcomm;ist.recv_addr=127.0.0.1:$((gcomm + 1));gcache.size=32M" \
    "$@" >>"$d/error.log" 2>&1 &
  echo $! >"$d/group.pid"
}

tail_logs() {
  for n in "${NODES[@]}"; do
    echo "--- node$n: $DIR/node$n/error.log (last 25 lines)" >&2
    tail -n 25 "$DIR/node$n/error.log" >&2 2>/dev/null || true
  done
}

wait_for() {  # wait_for N: until node N is synced in a cluster of 3
  local n=$1 deadline=$((SECONDS + TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(wsrep "$n" wsrep_ready)" = ON ] && [ "$(wsrep "$n" wsrep_cluster_size)" = 3 ] \
      && [ "$(wsrep "$n" wsrep_local_state_comment)" = Synced ]; then
      return 0
    fi
    sleep 0.5
  done
  tail_logs
  die "node$n did not join a synced 3-node cluster within ${TIMEOUT}s (logs above)"
}

listening() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

up() {
  need
  down quiet
  local started=$SECONDS port
  for n in "${NODES[@]}"; do
    for port in "$(sql_port "$n")" "$(gcomm_port "$n")"; do
      ! listening "$port" || die "port $port is taken (a cluster of another SQLSAVER_GALERA_DIR?)"
    done
  done
  mkdir -p "$DIR"
  for n in "${NODES[@]}"; do mkdir -p "$DIR/node$n/data" "$DIR/node$n/tmp"; done
  # Only the first node gets system tables; the others receive its data by
  # rsync SST when they join (an empty data directory is what SST expects).
  mariadb-install-db --no-defaults --datadir="$DIR/node1/data" \
    --auth-root-authentication-method=normal --skip-test-db \
    >"$DIR/node1/install.log" 2>&1 || { cat "$DIR/node1/install.log" >&2; die "install-db failed"; }
  [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$DIR"
  chmod 755 "$DIR"
  start_node 1 --wsrep-new-cluster
  local deadline=$((SECONDS + TIMEOUT))
  until [ "$(wsrep 1 wsrep_ready)" = ON ]; do
    [ $SECONDS -lt $deadline ] || { tail_logs; die "node1 did not start within ${TIMEOUT}s"; }
    sleep 0.3
  done
  # One joiner at a time: a donor serves one rsync SST at a time anyway.
  start_node 2
  until [ "$(wsrep 2 wsrep_ready)" = ON ]; do
    [ $SECONDS -lt $deadline ] || { tail_logs; die "node2 did not join within ${TIMEOUT}s"; }
    sleep 0.3
  done
  start_node 3
  for n in "${NODES[@]}"; do wait_for "$n"; done
  client 1 "CREATE DATABASE IF NOT EXISTS test"
  echo "galera cluster up in $((SECONDS - started))s: $(urls)"
}

down() {
  local pids=() pid
  for n in "${NODES[@]}"; do
    pid=$(pid_of "$n")
    if [ -n "$pid" ] && alive "$pid"; then pids+=("$pid"); fi
  done
  # A test cluster: no clean shutdown to wait for, its data is thrown away.
  for pid in "${pids[@]}"; do
    kill -9 -- "-$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    while alive "$pid"; do sleep 0.1; done
  done
  rm -rf "$DIR"
  [ "${1:-}" = quiet ] || echo "galera cluster down"
}

kill_node() {
  local n=${1:?node number} pid
  pid=$(pid_of "$n")
  [ -n "$pid" ] || die "node$n is not running"
  kill -9 -- "-$pid"
  while alive "$pid"; do sleep 0.05; done
  echo "node$n killed"
}

status() {
  for n in "${NODES[@]}"; do
    printf 'node%s 127.0.0.1:%s ready=%s size=%s state=%s\n' "$n" "$(sql_port "$n")" \
      "$(wsrep "$n" wsrep_ready)" "$(wsrep "$n" wsrep_cluster_size)" \
      "$(wsrep "$n" wsrep_local_state_comment)"
  done
}

urls() {
  local out=()
  for n in "${NODES[@]}"; do out+=("root@127.0.0.1:$(sql_port "$n")/test"); done
  (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kill) kill_node "${2:-}" ;;
  status) status ;;
  urls) urls ;;
  *) die "usage: $0 up|down|kill N|status|urls" ;;
esac
