#!/usr/bin/env bash
# scripts/run-embedded.sh: pgwarden in front of a throwaway PostgreSQL 15, in the foreground.
#
#   scripts/run-embedded.sh                 install what is missing, build Release (build/),
#                                           start a cluster (TLS + SCRAM), start pgwarden
#                                           with conf/pgwarden.ini pointed at it, print
#                                           DATABASE_URL; Ctrl-C stops both and cleans up
#   scripts/run-embedded.sh --cluster-only  the same without pgwarden: DATABASE_URL points
#                                           at PostgreSQL directly
#
# The runtime config is conf/pgwarden.ini with these changes: its [databases] entries are
# replaced by one entry for the cluster, auth_file is a generated file holding the test
# users, client TLS is `allow` with the cluster's certificate, server TLS is `require`,
# and logfile/pidfile are dropped (logs go to this terminal).  Everything lives in
# /tmp/pgwarden-embedded-XXXXXX, removed on exit.
# Environment: JOBS (build jobs, default 2), PGW_SKIP_DEPS=1, PGW_SKIP_BUILD=1,
# PGWARDEN_BIN (use this binary instead of building build/proxy/pgwarden), PGW_SOURCE_INI
# (another ini file to derive the runtime config from).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-2}
CLUSTER_ONLY=0
case ${1:-} in
--cluster-only) CLUSTER_ONLY=1 ;;
"") ;;
*)
    sed -n '2,12p' "$0" >&2
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

# ---- the runtime config ----------------------------------------------------------------
printf '"%s" "%s"\n"%s" "%s"\n' "$PGCLUSTER_USER" "$PGCLUSTER_PASSWORD" \
    "$PGCLUSTER_MD5_USER" "$PGCLUSTER_MD5_PASSWORD" >"$RUNDIR/userlist.txt"
chmod 600 "$RUNDIR/userlist.txt"

OVERRIDES="auth_file|client_tls_mode|client_tls_cert_file|client_tls_key_file|client_tls_ca_file"
OVERRIDES+="|server_tls_mode|server_tls_ca_file|logfile|pidfile"
SOURCE_INI=${PGW_SOURCE_INI:-$ROOT/conf/pgwarden.ini}
if [[ ! -f $SOURCE_INI ]]; then
    echo "run-embedded: $SOURCE_INI missing: using pgwarden's defaults" >&2
    SOURCE_INI=/dev/null
fi
awk -v over="^[ \t]*($OVERRIDES)[ \t]*=" \
    -v pgw="auth_file = $RUNDIR/userlist.txt
client_tls_mode = allow
client_tls_cert_file = $PGCLUSTER_CERT_FILE
client_tls_key_file = $PGCLUSTER_KEY_FILE
server_tls_mode = require" \
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

# Sections and keys may appear in any order: read the effective listen address and port.
ini_value() { # KEY DEFAULT
    awk -v key="$1" -v def="$2" '
        /^[ \t]*\[/ { section = $0; gsub(/[ \t\[\]]/, "", section); next }
        section == "pgwarden" && $0 ~ "^[ \t]*" key "[ \t]*=" {
            v = $0; sub(/^[^=]*=[ \t]*/, "", v); sub(/[ \t]*$/, "", v); val = v
        }
        END { print (val == "" ? def : val) }' "$RUNDIR/pgwarden.ini"
}
LISTEN_ADDR=$(ini_value listen_addr 127.0.0.1)
LISTEN_PORT=$(ini_value listen_port 6432)
[[ $LISTEN_ADDR == "*" || $LISTEN_ADDR == 0.0.0.0 ]] && LISTEN_ADDR=127.0.0.1

if ! "$PGWARDEN" -c "$RUNDIR/pgwarden.ini" --check; then
    echo "run-embedded: pgwarden refused $RUNDIR/pgwarden.ini:" >&2
    cat "$RUNDIR/pgwarden.ini" >&2
    exit 1
fi

"$PGWARDEN" -c "$RUNDIR/pgwarden.ini" &
PGW_PID=$!
for ((i = 0; i < 300; i++)); do # up to 30 s
    kill -0 "$PGW_PID" 2>/dev/null || { echo "run-embedded: pgwarden exited" >&2; exit 1; }
    (exec 3<>"/dev/tcp/$LISTEN_ADDR/$LISTEN_PORT") 2>/dev/null && break
    sleep 0.1
done

URL="postgresql://$PGCLUSTER_USER:$PGCLUSTER_PASSWORD@$LISTEN_ADDR:$LISTEN_PORT/$PGCLUSTER_DB"
cat <<EOF

pgwarden (pid $PGW_PID) is listening on $LISTEN_ADDR:$LISTEN_PORT, in front of PostgreSQL 15
on 127.0.0.1:$PGPORT.  Config: $RUNDIR/pgwarden.ini.  Ctrl-C stops both.

DATABASE_URL=$URL
  try:           psql "$URL"
  verified TLS:  psql "$URL?sslmode=verify-full&sslrootcert=$PGCLUSTER_CA_FILE"

EOF
set +e
wait "$PGW_PID"
rc=$?
PGW_PID=""
echo "run-embedded: pgwarden exited with status $rc" >&2
exit "$rc"
