# Shared by scripts/dev-up and scripts/test: find Postgres and Redis, or start private ones.
#
# Uses DATABASE_URL / REDIS_URL when they answer (defaults: the local servers on their standard
# ports); otherwise starts private instances from the installed binaries under target/dev, and
# says which Debian packages to install when the binaries are missing.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV_DIR="$ROOT/target/dev"
PRIVATE_PG_PORT="${OMNI_PRIVATE_PG_PORT:-55432}"
PRIVATE_REDIS_PORT="${OMNI_PRIVATE_REDIS_PORT:-56379}"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# host and port of a URL like scheme://user@host:port/db
url_host() { local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"; printf '%s' "${rest%%:*}"; }
url_port() { local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"; [[ "$rest" == *:* ]] && printf '%s' "${rest##*:}" || printf '%s' "$2"; }

postgres_answers() { # url
  local host port
  host="$(url_host "$1")"; port="$(url_port "$1" 5432)"
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$host" -p "$port" -t 2
  else
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
  fi
}

redis_answers() { # url
  local host port reply
  host="$(url_host "$1")"; port="$(url_port "$1" 6379)"
  # (A bare `exec ... 2>/dev/null` would silence the rest of the script.)
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || reply=""
  exec 3<&- 3>&-
  [[ "$reply" == +PONG* ]]
}

find_pg_bin() { # name
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  local candidate
  for candidate in /usr/lib/postgresql/*/bin/"$1"; do
    [[ -x "$candidate" ]] && { printf '%s' "$candidate"; return; }
  done
  return 1
}

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg_user() {
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to own a private database"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_private_postgres() {
  local initdb pg_ctl data="$DEV_DIR/postgres"
  initdb="$(find_pg_bin initdb)" && pg_ctl="$(find_pg_bin pg_ctl)" ||
    die "no Postgres at $DATABASE_URL and no postgres binaries to start one: apt-get install postgresql"
  mkdir -p "$DEV_DIR"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    say "creating a private Postgres in $data"
    mkdir -p "$data"
    [[ "$(id -u)" == 0 ]] && chown postgres "$data"
    as_pg_user "$initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  if ! postgres_answers "postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT/postgres"; then
    say "starting the private Postgres on 127.0.0.1:$PRIVATE_PG_PORT"
    as_pg_user "$pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $PRIVATE_PG_PORT -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
    STARTED_POSTGRES="$pg_ctl"
  fi
  DATABASE_URL="postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT/postgres"
}

start_private_redis() {
  command -v redis-server >/dev/null 2>&1 ||
    die "no Redis at $REDIS_URL and no redis-server to start one: apt-get install redis-server"
  mkdir -p "$DEV_DIR/redis"
  if ! redis_answers "redis://127.0.0.1:$PRIVATE_REDIS_PORT"; then
    say "starting a private Redis on 127.0.0.1:$PRIVATE_REDIS_PORT"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$PRIVATE_REDIS_PORT" --save "" \
      --appendonly no --dir "$DEV_DIR/redis" --logfile "$DEV_DIR/redis/redis.log" \
      --pidfile "$DEV_DIR/redis/redis.pid" >/dev/null
    STARTED_REDIS=1
    local i
    for i in $(seq 50); do redis_answers "redis://127.0.0.1:$PRIVATE_REDIS_PORT" && break; sleep 0.1; done
  fi
  REDIS_URL="redis://127.0.0.1:$PRIVATE_REDIS_PORT"
}

STARTED_POSTGRES=""
STARTED_REDIS=""

# Stops the private Postgres and Redis this script started (not ones that were already running).
stop_private_dependencies() {
  if [[ -n "$STARTED_POSTGRES" ]]; then
    say "stopping the private Postgres"
    as_pg_user "$STARTED_POSTGRES" -D "$DEV_DIR/postgres" -m fast stop >/dev/null || true
    STARTED_POSTGRES=""
  fi
  if [[ -n "$STARTED_REDIS" && -f "$DEV_DIR/redis/redis.pid" ]]; then
    say "stopping the private Redis"
    kill "$(cat "$DEV_DIR/redis/redis.pid")" 2>/dev/null || true
    STARTED_REDIS=""
  fi
}

# Sets DATABASE_URL (a URL of the server's `postgres` database) and REDIS_URL to servers that answer.
ensure_dependencies() {
  DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
  if postgres_answers "$DATABASE_URL"; then
    say "Postgres: $(url_host "$DATABASE_URL"):$(url_port "$DATABASE_URL" 5432)"
  else
    say "no Postgres answers at $DATABASE_URL"
    start_private_postgres
  fi
  if redis_answers "$REDIS_URL"; then
    say "Redis: $(url_host "$REDIS_URL"):$(url_port "$REDIS_URL" 6379)"
  else
    say "no Redis answers at $REDIS_URL"
    start_private_redis
  fi
  command -v psql >/dev/null 2>&1 || die "psql is needed to create databases: apt-get install postgresql-client"
  export DATABASE_URL REDIS_URL
}

# The URL of database $2 on the server of URL $1.
database_url() { printf '%s/%s' "${1%/*}" "$2"; }

create_database() { # server-url name
  local exists
  exists="$(psql "$1" -XAtqc "SELECT 1 FROM pg_database WHERE datname = '$2'")"
  [[ "$exists" == 1 ]] || psql "$1" -Xqc "CREATE DATABASE \"$2\"" >/dev/null
}

# The services that exist, with their ports (DESIGN.md).
declare -A SERVICE_PORTS=(
  [identity]=50051 [catalog]=50052 [inventory]=50053
  [order-management]=50054 [crm]=50055 [performance]=50056
)
SERVICE_ORDER=(identity catalog inventory order-management crm performance)
existing_services() {
  local s
  for s in "${SERVICE_ORDER[@]}"; do [[ -f "$ROOT/services/$s/Cargo.toml" ]] && printf '%s\n' "$s"; done
}

# buf from npm, installed once under target/tools.
BUF_VERSION=1.75.0
buf_bin() {
  local dir="$ROOT/target/tools/buf-$BUF_VERSION"
  if [[ ! -x "$dir/node_modules/.bin/buf" ]]; then
    command -v npm >/dev/null 2>&1 || die "npm is needed to install buf: apt-get install npm"
    say "installing buf $BUF_VERSION (npm @bufbuild/buf)"
    mkdir -p "$dir"
    npm install --silent --no-audit --no-fund --prefix "$dir" "@bufbuild/buf@$BUF_VERSION" >/dev/null
  fi
  printf '%s' "$dir/node_modules/.bin/buf"
}

# kubernetes-validate from PyPI, installed once under target/tools.
KUBERNETES_VALIDATE_VERSION=1.37.0
kubernetes_validate_bin() {
  local venv="$ROOT/target/tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to validate manifests: apt-get install python3-venv"
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)"
    python3 -m venv "$venv" >/dev/null
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >/dev/null
  fi
  printf '%s' "$venv/bin/kubernetes-validate"
}
