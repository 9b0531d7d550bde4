#!/usr/bin/env bash
# An MLflow tracking server on PostgreSQL, on one host (a Ray head node or a workstation).
#
# It runs a PostgreSQL cluster of its own (initdb + pg_ctl, nothing system-wide is touched),
# bound to 127.0.0.1, creates the `mlflow` role and database, then starts `mlflow server`
# with artifacts proxied through the server. Everything lives under one state directory.
# Run it again to restart what is stopped; `--stop` stops both.
#
# The database password is read from $TUNE_PRUNE_MLFLOW_DB_PASSWORD, or else from
# STATE_DIR/db_password, which the first run generates (mode 0600). It is never printed,
# never put on a command line and never put in a URI: the server gets it through a
# libpq password file (PGPASSFILE, mode 0600).
#
# Run `run_server.sh -h` for the options.
set -euo pipefail

SCRIPT_NAME="${0##*/}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly SCRIPT_NAME REPO_ROOT
readonly DB_NAME="mlflow"
readonly DB_ROLE="mlflow"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [options]
       $SCRIPT_NAME --stop [-d DIR]

Start an MLflow tracking server backed by a private PostgreSQL cluster on this host.

Options:
  -d, --state-dir DIR     where the database, artifacts, logs and password live
                          (default: \$TUNE_PRUNE_MLFLOW_DIR, else
                          ~/.local/share/tune_prune/mlflow, or /var/lib/tune_prune/mlflow as root)
  -p, --port N            MLflow server port (default: 5000)
      --pg-port N         PostgreSQL port, on 127.0.0.1 only (default: 5433)
      --host ADDR         address the MLflow server binds (default: 127.0.0.1).
                          Anything else exposes an unauthenticated server: see below.
      --allowed-hosts L   comma-separated Host headers MLflow accepts; needed when
                          clients reach it by a DNS name (MLflow's default accepts
                          localhost and private IP addresses only)
      --workers N         MLflow server worker processes (default: 2)
      --stop              stop the MLflow server and PostgreSQL, then exit
  -h, --help              show this help and exit (starts nothing)

Environment:
  TUNE_PRUNE_MLFLOW_DB_PASSWORD  the mlflow role's password (default: generated
                                 once into STATE_DIR/db_password, mode 0600)
  MLFLOW_BIN                     the mlflow executable (default: mlflow on PATH,
                                 else this repository's .venv/bin/mlflow)
  PG_BIN                         directory with initdb/pg_ctl/psql (default: the
                                 one holding pg_ctl on PATH, else the newest
                                 /usr/lib/postgresql/<version>/bin)

As root, PostgreSQL runs as the 'postgres' system user (initdb refuses root).

Binding anything but 127.0.0.1 (--host 0.0.0.0) lets every machine that can reach the
port read and write all runs: MLflow has no login here. Do it only on a trusted
private network (a firewall that admits only your Ray nodes), or keep the default and
reach the server through an SSH tunnel: ssh -L 5000:127.0.0.1:5000 HEAD_NODE
EOF
}

die() { echo "$SCRIPT_NAME: error: $*" >&2; exit 1; }
say() { echo "$SCRIPT_NAME: $*"; }

# ---------------------------------------------------------------- arguments
STATE_DIR="${TUNE_PRUNE_MLFLOW_DIR:-}"
MLFLOW_PORT=5000
PG_PORT=5433
HOST=127.0.0.1
ALLOWED_HOSTS=""
WORKERS=2
ACTION=start

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see -h)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -d|--state-dir) need_value "$@"; STATE_DIR="$2"; shift 2 ;;
    -p|--port) need_value "$@"; MLFLOW_PORT="$2"; shift 2 ;;
    --pg-port) need_value "$@"; PG_PORT="$2"; shift 2 ;;
    --host) need_value "$@"; HOST="$2"; shift 2 ;;
    --allowed-hosts) need_value "$@"; ALLOWED_HOSTS="$2"; shift 2 ;;
    --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
    --stop) ACTION=stop; shift ;;
    *) die "unknown argument '$1' (see -h)" ;;
  esac
done

for pair in "--port:$MLFLOW_PORT" "--pg-port:$PG_PORT" "--workers:$WORKERS"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "${pair%%:*} must be a positive integer, got '${pair#*:}'"
done

# ---------------------------------------------------------------- who runs PostgreSQL
if [[ $EUID -eq 0 ]]; then
  PG_USER=postgres
  getent passwd "$PG_USER" >/dev/null \
    || die "running as root, but there is no '$PG_USER' user to run PostgreSQL as (initdb refuses root); install Debian's postgresql package or run this script as an ordinary user"
  : "${STATE_DIR:=/var/lib/tune_prune/mlflow}"
else
  PG_USER="$(id -un)"
  : "${STATE_DIR:=${HOME}/.local/share/tune_prune/mlflow}"
fi

# as_pg CMD...: run a PostgreSQL command as the user that owns the cluster.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

if [[ $ACTION == stop && ! -d "$STATE_DIR" ]]; then
  say "nothing to stop: $STATE_DIR does not exist"
  exit 0
fi
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
readonly PG_DIR="$STATE_DIR/pg"          # owned by PG_USER
readonly PG_DATA="$PG_DIR/data"
readonly PG_SOCKETS="$PG_DIR/run"
readonly PG_LOG="$PG_DIR/postgres.log"
readonly ARTIFACTS="$STATE_DIR/artifacts"
readonly PASSWORD_FILE="$STATE_DIR/db_password"
readonly PGPASS_FILE="$STATE_DIR/pgpass"
readonly MLFLOW_LOG="$STATE_DIR/mlflow.log"
readonly MLFLOW_PID="$STATE_DIR/mlflow.pid"

find_pg_bin() {
  if [[ -n "${PG_BIN:-}" ]]; then
    echo "$PG_BIN"
  elif command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
  else
    # Debian/Ubuntu keep the server binaries out of PATH; take the newest version.
    local newest
    newest="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$newest" ]] || return 1
    echo "$newest"
  fi
}

find_mlflow() {
  if [[ -n "${MLFLOW_BIN:-}" ]]; then
    echo "$MLFLOW_BIN"
  elif command -v mlflow >/dev/null 2>&1; then
    command -v mlflow
  elif [[ -x "$REPO_ROOT/.venv/bin/mlflow" ]]; then
    echo "$REPO_ROOT/.venv/bin/mlflow"
  else
    return 1
  fi
}

mlflow_running() {
  [[ -f "$MLFLOW_PID" ]] && kill -0 "$(cat "$MLFLOW_PID")" 2>/dev/null
}

pg_running() {
  [[ -f "$PG_DATA/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}

# URL host part: IPv6 literals need brackets.
url_host() { if [[ "$1" == *:* ]]; then echo "[$1]"; else echo "$1"; fi; }

PG_BIN="$(find_pg_bin)" || die "PostgreSQL server binaries not found (Debian/Ubuntu: apt-get install postgresql; or set PG_BIN)"
for tool in initdb pg_ctl psql; do
  [[ -x "$PG_BIN/$tool" ]] || die "$PG_BIN/$tool not found; set PG_BIN to the directory holding initdb, pg_ctl and psql"
done

# ---------------------------------------------------------------- --stop
stop_all() {
  if mlflow_running; then
    local pid
    pid="$(cat "$MLFLOW_PID")"
    say "stopping MLflow server (pid $pid)"
    # The server was started in its own session: signal the whole group (its workers too).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    say "MLflow server is not running"
  fi
  rm -f "$MLFLOW_PID"
  if pg_running; then
    say "stopping PostgreSQL ($PG_DATA)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
  else
    say "PostgreSQL is not running"
  fi
}

if [[ $ACTION == stop ]]; then
  stop_all
  exit 0
fi

# ---------------------------------------------------------------- start: checks
MLFLOW="$(find_mlflow)" || die "mlflow not found; install the project (make setup) or set MLFLOW_BIN"
[[ -x "$MLFLOW" ]] || die "$MLFLOW is not executable by $(id -un)"
MLFLOW_PYTHON="$(dirname "$MLFLOW")/python"
if [[ -x "$MLFLOW_PYTHON" ]] && ! "$MLFLOW_PYTHON" -c 'import psycopg' 2>/dev/null; then
  die "the Python behind $MLFLOW lacks psycopg (SQLAlchemy 2.1 talks to PostgreSQL through psycopg 3): $MLFLOW_PYTHON -m pip install 'psycopg[binary]==3.3.9'"
fi

if mlflow_running; then
  say "MLflow server already running (pid $(cat "$MLFLOW_PID")); stop it first with: $0 --stop -d '$STATE_DIR'"
  exit 0
fi

# ---------------------------------------------------------------- PostgreSQL
mkdir -p "$PG_DIR" "$PG_SOCKETS" "$ARTIFACTS"
if [[ $EUID -eq 0 ]]; then
  chown "$PG_USER:" "$PG_DIR" "$PG_SOCKETS"
  as_pg test -w "$PG_DIR" \
    || die "user '$PG_USER' cannot reach $PG_DIR: every parent directory must be searchable by it (chmod o+x), or pick another --state-dir"
fi
chmod 0700 "$PG_DIR"

if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
  say "creating a PostgreSQL cluster in $PG_DATA"
  # Local socket logins by the cluster owner only (peer); TCP logins need a password.
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" --encoding=UTF8 --locale=C \
    --auth-local=peer --auth-host=scram-sha-256 >"$STATE_DIR/initdb.log" 2>&1 \
    || die "initdb failed; see $STATE_DIR/initdb.log"
fi

if pg_running; then
  say "PostgreSQL already running ($PG_DATA)"
else
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k '$PG_SOCKETS'" start >/dev/null \
    || die "PostgreSQL did not start (port $PG_PORT taken? try --pg-port); last lines of $PG_LOG: $(tail -n 5 "$PG_LOG" 2>/dev/null)"
fi

# The password: from the environment, else the 0600 file (generated once).
if [[ -n "${TUNE_PRUNE_MLFLOW_DB_PASSWORD:-}" ]]; then
  DB_PASSWORD="$TUNE_PRUNE_MLFLOW_DB_PASSWORD"
  unset TUNE_PRUNE_MLFLOW_DB_PASSWORD   # keep it out of the server's environment
else
  if [[ ! -s "$PASSWORD_FILE" ]]; then
    # 24 random bytes as hex; od reads a fixed count, so no pipe is cut short.
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$PASSWORD_FILE")
    say "generated the database password into $PASSWORD_FILE (mode 0600)"
  fi
  DB_PASSWORD="$(cat "$PASSWORD_FILE")"
fi
[[ -n "$DB_PASSWORD" ]] || die "empty database password"

# Role and database, idempotently. The SQL goes through stdin, so the password never
# appears in a process list; quotes in it are doubled for the SQL literal.
sql_password="${DB_PASSWORD//\'/\'\'}"
as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKETS" -p "$PG_PORT" -d postgres >/dev/null <<SQL \
  || die "could not create the $DB_ROLE role and database; see $PG_LOG"
SET log_statement = 'none';
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_ROLE') THEN
    CREATE ROLE $DB_ROLE LOGIN;
  END IF;
END \$\$;
ALTER ROLE $DB_ROLE WITH LOGIN PASSWORD '$sql_password';
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_ROLE'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
SQL
unset sql_password

# libpq reads the password from this file; the backend URI carries no credentials.
# Format host:port:db:user:password, with ':' and '\' escaped.
pgpass_password="${DB_PASSWORD//\\/\\\\}"
pgpass_password="${pgpass_password//:/\\:}"
(umask 077 && printf '127.0.0.1:%s:%s:%s:%s\n' "$PG_PORT" "$DB_NAME" "$DB_ROLE" "$pgpass_password" >"$PGPASS_FILE")
unset pgpass_password DB_PASSWORD

# ---------------------------------------------------------------- MLflow
if [[ "$HOST" != "127.0.0.1" && "$HOST" != "localhost" && "$HOST" != "::1" ]]; then
  echo "$SCRIPT_NAME: WARNING: binding $HOST: anyone who can reach port $MLFLOW_PORT can read and write every run (no login). Keep it behind a firewall that admits only your Ray nodes." >&2
fi

mlflow_args=(server
  --backend-store-uri "postgresql+psycopg://127.0.0.1:$PG_PORT/$DB_NAME"
  --artifacts-destination "$ARTIFACTS"
  --host "$HOST" --port "$MLFLOW_PORT" --workers "$WORKERS")
[[ -z "$ALLOWED_HOSTS" ]] || mlflow_args+=(--allowed-hosts "$ALLOWED_HOSTS")

say "starting MLflow server on $HOST:$MLFLOW_PORT (log: $MLFLOW_LOG)"
# Own session (setsid), so --stop can signal the server and its workers as one group.
# The job runner is off: it would start 7 helper processes (~2 GB) that tune_prune does not use.
PGUSER="$DB_ROLE" PGPASSFILE="$PGPASS_FILE" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  setsid "$MLFLOW" "${mlflow_args[@]}" >"$MLFLOW_LOG" 2>&1 </dev/null &
echo $! >"$MLFLOW_PID"

probe_host="$HOST"
[[ "$probe_host" != "0.0.0.0" ]] || probe_host=127.0.0.1
[[ "$probe_host" != "::" ]] || probe_host=::1
health_url="http://$(url_host "$probe_host"):$MLFLOW_PORT/health"
for _ in $(seq 1 120); do
  if http_ok "$health_url"; then
    break
  fi
  if ! mlflow_running; then
    rm -f "$MLFLOW_PID"
    die "MLflow server exited during start-up (PostgreSQL is left running; '$0 --stop -d $STATE_DIR' stops it); last lines of $MLFLOW_LOG:
$(tail -n 20 "$MLFLOW_LOG")"
  fi
  sleep 0.5
done
http_ok "$health_url" || die "MLflow server did not answer $health_url within 60 s; see $MLFLOW_LOG ('$0 --stop -d $STATE_DIR' stops everything)"

uri_host="$HOST"
[[ "$uri_host" != "0.0.0.0" && "$uri_host" != "::" ]] || uri_host="$(hostname -f 2>/dev/null || hostname)"
cat <<EOF

MLflow tracking server is up (PostgreSQL on 127.0.0.1:$PG_PORT, artifacts in $ARTIFACTS).
  tracking URI:  http://$(url_host "$uri_host"):$MLFLOW_PORT
  use it:        export MLFLOW_TRACKING_URI=http://$(url_host "$uri_host"):$MLFLOW_PORT
  stop:          $0 --stop -d '$STATE_DIR'
EOF
