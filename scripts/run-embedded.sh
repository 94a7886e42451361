#!/usr/bin/env bash
# scripts/run-embedded.sh: pgwarden in front of a throwaway PostgreSQL 15, in the foreground.
#
#   scripts/run-embedded.sh                 install what is missing, build Release (build/),
#                                           start a cluster (TLS + SCRAM), start pgwarden
#                                           with conf/pgwarden.ini pointed at it, print
#                                           DATABASE_URL; Ctrl-C stops both and cleans up
#   scripts/run-embedded.sh --cluster-only  the same without pgwarden: DATABASE_URL points
#                                           at PostgreSQL directly
#   scripts/run-embedded.sh --help          this text
#
# The runtime config is conf/pgwarden.ini with these changes: its [databases] entries are
# replaced by one entry for the cluster, auth_file is a generated file holding the test
# users, client TLS is `allow` with the cluster's certificate, server TLS is `require`,
# and logfile/pidfile are dropped (logs go to this terminal).  Everything lives in
# /tmp/pgwarden-embedded-XXXXXX, removed on exit.
#
# Ports: when listen_port (6432) or admin_port (6480) is already taken by another program
# (Debian's pgbouncer package starts a service on 6432), a free port is used instead and
# the script says so.  "Ready" is reported only once the pgwarden it started owns the
# listening socket of the printed port (checked in /proc), never because some other
# program answers there.
#
# Environment: JOBS (build jobs, default 2), PGW_SKIP_DEPS=1, PGW_SKIP_BUILD=1,
# PGWARDEN_BIN (use this binary instead of building build/proxy/pgwarden), PGW_SOURCE_INI
# (another ini file to derive the runtime config from).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-2}
CLUSTER_ONLY=0
# The comment block at the top of this file, without the "#" (every line of it).
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
case ${1:-} in
--cluster-only) CLUSTER_ONLY=1 ;;
-h | --help)
    usage
    exit 0
    ;;
"") ;;
*)
    echo "run-embedded: unknown argument: $1" >&2
    usage >&2
    exit 2
    ;;
esac

RUNDIR=""
PGW_PID=""
SLEEP_PID=""

# shellcheck disable=SC2317 # reached through the traps
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    [[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null
    if [[ -n $PGW_PID ]] && kill -0 "$PGW_PID" 2>/dev/null; then
        echo "run-embedded: stopping pgwarden (pid $PGW_PID)" >&2
        kill -TERM "$PGW_PID" 2>/dev/null || true
        for ((i = 0; i < 400; i++)); do # up to 40 s (shutdown_timeout_ms is 30 s)
            kill -0 "$PGW_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$PGW_PID" 2>/dev/null; then
            echo "run-embedded: pgwarden did not stop: SIGKILL" >&2
            kill -KILL "$PGW_PID" 2>/dev/null || true
        fi
        wait "$PGW_PID" 2>/dev/null || true
    fi
    if [[ -n $RUNDIR && -d $RUNDIR ]]; then
        echo "run-embedded: stopping PostgreSQL and removing $RUNDIR" >&2
        tests/fixture/pgcluster.sh stop "$RUNDIR/pg" || true
        rm -rf -- "$RUNDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ ${PGW_SKIP_DEPS:-0} == 1 ]] || scripts/deps.sh

PGWARDEN=${PGWARDEN_BIN:-$ROOT/build/proxy/pgwarden}
if [[ $CLUSTER_ONLY -eq 0 && ${PGW_SKIP_BUILD:-0} != 1 && -z ${PGWARDEN_BIN:-} ]]; then
    cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$ROOT/build" -j "$JOBS" --target pgwarden
fi
if [[ $CLUSTER_ONLY -eq 0 && ! -x $PGWARDEN ]]; then
    echo "run-embedded: $PGWARDEN was not built (try --cluster-only meanwhile)" >&2
    exit 1
fi

# Under /tmp and searchable, so that the postgres user reaches the cluster as root.
RUNDIR=$(mktemp -d /tmp/pgwarden-embedded-XXXXXX)
chmod 711 "$RUNDIR"
tests/fixture/pgcluster.sh start "$RUNDIR/pg" >/dev/null
# shellcheck source=/dev/null
. "$RUNDIR/pg/env"

if [[ $CLUSTER_ONLY -eq 1 ]]; then
    echo
    echo "PostgreSQL 15 is running (no pgwarden). Ctrl-C stops it."
    echo "DATABASE_URL=postgresql://$PGCLUSTER_USER:$PGCLUSTER_PASSWORD@127.0.0.1:$PGPORT/$PGCLUSTER_DB"
    echo "  verified TLS: ...?sslmode=verify-full&sslrootcert=$PGCLUSTER_CA_FILE"
    while :; do
        sleep 3600 &
        SLEEP_PID=$!
        wait "$SLEEP_PID" || true
    done
fi

# ---- ports -------------------------------------------------------------------------------

# shellcheck disable=SC2317 # called by pick_port
die() {
    echo "run-embedded: $*" >&2
    exit 1
}
# shellcheck disable=SC1091 # tests/fixture/ports.sh: pick_port
. tests/fixture/ports.sh

# Inodes of the sockets listening on TCP port $1 (any address), from /proc (one awk: the
# tables can have thousands of lines on a busy machine).
listen_inodes() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v hex="$hex" 'FNR > 1 && $4 == "0A" && $2 ~ (":" hex "$") { print $10 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# The /proc/PID/fd entries (under the directories given after the port) that are a socket
# listening on TCP port $1.
listener_fds() { # PORT DIR...
    local port=$1 inode
    shift
    for inode in $(listen_inodes "$port"); do
        find "$@" -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null
    done
}

# True when process $1 holds one of the sockets listening on port $2.
owns_listener() {
    [[ -n $(listener_fds "$2" "/proc/$1/fd") ]]
}

# "pgbouncer (pid 812)" for the process listening on port $1, or "another program" when
# /proc does not tell (another user's process, seen without privileges).
listener_name() {
    local fd pid
    fd=$(listener_fds "$1" /proc/[0-9]*/fd | head -n 1)
    if [[ -n $fd ]]; then
        pid=${fd#/proc/}
        pid=${pid%%/*}
        echo "$(cat "/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid)"
    else
        echo "another program"
    fi
}

# Sections and keys may appear in any order: the effective value of a [pgwarden] key.
ini_value() { # FILE KEY DEFAULT
    awk -v key="$2" -v def="$3" '
        /^[ \t]*\[/ { section = $0; gsub(/[ \t\[\]]/, "", section); next }
        section == "pgwarden" && $0 ~ "^[ \t]*" key "[ \t]*=" {
            v = $0; sub(/^[^=]*=[ \t]*/, "", v); sub(/[ \t]*$/, "", v); val = v
        }
        END { print (val == "" ? def : val) }' "$1"
}

SOURCE_INI=${PGW_SOURCE_INI:-$ROOT/conf/pgwarden.ini}
if [[ ! -f $SOURCE_INI ]]; then
    echo "run-embedded: $SOURCE_INI missing: using pgwarden's defaults" >&2
    SOURCE_INI=/dev/null
fi
LISTEN_PORT=$(ini_value "$SOURCE_INI" listen_port 6432)
ADMIN_PORT=$(ini_value "$SOURCE_INI" admin_port 6480)
# A port someone else listens on: take a free one instead (and say so), never share it.
# The next ports after it first (6433, ...), then any free one.
free_instead() { # PORT WHAT OTHER-PORT
    local port=$1 p
    [[ -z $(listen_inodes "$port") ]] && echo "$port" && return 0
    for ((p = $1 + 1; p <= $1 + 16 && p <= 65535; p++)); do
        if [[ $p != "$3" && -z $(listen_inodes "$p") ]]; then
            port=$p
            break
        fi
    done
    [[ $port == "$1" ]] && { port=$(pick_port "$3") || return 1; }
    echo "run-embedded: $2 port $1 is taken by $(listener_name "$1"): using port $port" >&2
    echo "$port"
}
LISTEN_PORT=$(free_instead "$LISTEN_PORT" pgwarden "$ADMIN_PORT")
[[ $ADMIN_PORT == 0 ]] || ADMIN_PORT=$(free_instead "$ADMIN_PORT" admin "$LISTEN_PORT")

# ---- the runtime config ----------------------------------------------------------------
printf '"%s" "%s"\n"%s" "%s"\n' "$PGCLUSTER_USER" "$PGCLUSTER_PASSWORD" \
    "$PGCLUSTER_MD5_USER" "$PGCLUSTER_MD5_PASSWORD" >"$RUNDIR/userlist.txt"
chmod 600 "$RUNDIR/userlist.txt"

OVERRIDES="auth_file|client_tls_mode|client_tls_cert_file|client_tls_key_file|client_tls_ca_file"
OVERRIDES+="|server_tls_mode|server_tls_ca_file|logfile|pidfile|listen_port|admin_port"
awk -v over="^[ \t]*($OVERRIDES)[ \t]*=" \
    -v pgw="auth_file = $RUNDIR/userlist.txt
client_tls_mode = allow
client_tls_cert_file = $PGCLUSTER_CERT_FILE
client_tls_key_file = $PGCLUSTER_KEY_FILE
server_tls_mode = require
listen_port = $LISTEN_PORT
admin_port = $ADMIN_PORT" \
    -v dbs="$PGCLUSTER_DB = host=127.0.0.1 port=$PGPORT dbname=$PGCLUSTER_DB" '
    function header(line) { return line ~ /^[ \t]*\[[^]]*\][ \t]*$/ }
    header($0) {
        section = $0; gsub(/[ \t\[\]]/, "", section)
        print
        if (section == "pgwarden") { print pgw; seen_pgw = 1 }
        if (section == "databases") { print dbs; seen_dbs = 1 }
        next
    }
    section == "pgwarden" && $0 ~ over { next }
    section == "databases" && $0 !~ /^[ \t]*([;#]|$)/ { next }
    { print }
    END {
        if (!seen_pgw) print "\n[pgwarden]\n" pgw
        if (!seen_dbs) print "\n[databases]\n" dbs
    }' "$SOURCE_INI" >"$RUNDIR/pgwarden.ini"

# The address to print: the first of listen_addr; a wildcard means this machine.
LISTEN_ADDR=$(ini_value "$RUNDIR/pgwarden.ini" listen_addr 127.0.0.1)
LISTEN_ADDR=${LISTEN_ADDR%%,*}
LISTEN_ADDR=${LISTEN_ADDR//[[:space:][\]]/}
case $LISTEN_ADDR in
"*" | 0.0.0.0) LISTEN_ADDR=127.0.0.1 ;;
::) LISTEN_ADDR=::1 ;;
esac
URL_HOST=$LISTEN_ADDR
[[ $URL_HOST == *:* ]] && URL_HOST="[$URL_HOST]"

if ! "$PGWARDEN" -c "$RUNDIR/pgwarden.ini" --check; then
    echo "run-embedded: pgwarden refused $RUNDIR/pgwarden.ini:" >&2
    cat "$RUNDIR/pgwarden.ini" >&2
    exit 1
fi

"$PGWARDEN" -c "$RUNDIR/pgwarden.ini" &
PGW_PID=$!
# Ready when the pgwarden started here owns the listening socket of LISTEN_PORT: a
# connection that succeeds proves nothing when another program could hold the port.
ready=0
for ((i = 0; i < 300; i++)); do # up to 30 s
    kill -0 "$PGW_PID" 2>/dev/null || break
    if owns_listener "$PGW_PID" "$LISTEN_PORT"; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ $ready -ne 1 ]]; then
    if kill -0 "$PGW_PID" 2>/dev/null; then
        echo "run-embedded: pgwarden (pid $PGW_PID) does not listen on port $LISTEN_PORT" >&2
    else
        wait "$PGW_PID" 2>/dev/null || true
        PGW_PID=""
        echo "run-embedded: pgwarden exited before listening on port $LISTEN_PORT" >&2
    fi
    exit 1
fi
ADMIN_LINE=""
[[ $ADMIN_PORT == 0 ]] || ADMIN_LINE="
  admin port:    http://127.0.0.1:$ADMIN_PORT/health  (/pools, /clients, /metrics)"

URL="postgresql://$PGCLUSTER_USER:$PGCLUSTER_PASSWORD@$URL_HOST:$LISTEN_PORT/$PGCLUSTER_DB"
cat <<EOF

pgwarden (pid $PGW_PID) is listening on $URL_HOST:$LISTEN_PORT, in front of PostgreSQL 15
on 127.0.0.1:$PGPORT.  Config: $RUNDIR/pgwarden.ini.  Ctrl-C stops both.

DATABASE_URL=$URL
  try:           psql "$URL"
  verified TLS:  psql "$URL?sslmode=verify-full&sslrootcert=$PGCLUSTER_CA_FILE"$ADMIN_LINE

EOF
set +e
wait "$PGW_PID"
rc=$?
PGW_PID=""
echo "run-embedded: pgwarden exited with status $rc" >&2
exit "$rc"
