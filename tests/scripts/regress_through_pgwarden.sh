#!/usr/bin/env bash
# regress_through_pgwarden.sh: PostgreSQL 15's own regression suite (installcheck,
# parallel_schedule) run through pgwarden, in transaction and/or session pooling mode.
# Not part of CI: a measurement (issue 17: at least 200 of 217 in transaction mode).
#
#   tests/scripts/regress_through_pgwarden.sh [transaction|session|direct|both|all]
#       both (the default): transaction, then session; all: direct, transaction, session;
#       direct: the suite straight to PostgreSQL, no pgwarden (the baseline)
#
# For each mode: a fresh throwaway cluster (initdb in /tmp, 127.0.0.1 on a free port, trust,
# log_connections on, run as postgres when root), pgwarden in front of it (auth trust,
# pool_mode = MODE, default_pool_size = POOL_SIZE), then pg_regress (the pgxs build of
# Debian's postgresql-15) through pgwarden, as the superuser postgres, creating the
# database "regression" itself (as `make installcheck-parallel` does).  Then a pin-free
# workload (pgbench, 16 clients, session SETs + transactions) counts the distinct backends
# pooling really uses.  Results (summary.txt, regression.diffs, regression.out, the logs)
# are copied to OUT_DIR/MODE; everything else is removed on exit.
#
# Prerequisites (root, Debian 12): postgresql-15 and postgresql-server-dev-15 of the same
# version (pgxs, to build regress.so), and the regression sources of the installed minor
# version: PG_SRC=<dir holding src/test/regress>, or else the script runs
# `apt-get source --download-only postgresql-15=<installed version>` (needs a deb-src
# entry in /etc/apt/sources.list.d) into SRC_CACHE and extracts src/test/regress.
#
# Environment: PGWARDEN_BIN (default: build Release in BUILD_DIR=/tmp/regress-build),
# POOL_SIZE (4), MAX_CONNECTIONS (pg_regress --max-connections, 0 = the schedule's
# parallelism, up to 20), REGRESS_TIMEOUT (seconds per suite run, 2400), OUT_DIR
# (/tmp/pgw-regress-results), SRC_CACHE (/tmp/pgw-regress-src), NICE (10).
#
# pg_regress gives each test's psql application_name "pg_regress/<test>", so pgwarden's pin
# log names the test.  Backends: summary.txt counts the sessions PostgreSQL started for the
# database "regression" (log_connections) and the most that were open at once.
#
# Everything it starts is stopped by PID (pgwarden, the postmaster via pg_ctl on its own
# data directory, pg_regress via timeout's process group); every wait is bounded.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
MODES=${1:-both}
case $MODES in
both) MODES="transaction session" ;;
all) MODES="direct transaction session" ;;
transaction | session | direct) ;;
-h | --help)
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 0
    ;;
*)
    echo "usage: $0 [transaction|session|direct|both|all]" >&2
    exit 2
    ;;
esac

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BINDIR/pg_config
POOL_SIZE=${POOL_SIZE:-4}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-0}
REGRESS_TIMEOUT=${REGRESS_TIMEOUT:-2400}
OUT_DIR=${OUT_DIR:-/tmp/pgw-regress-results}
SRC_CACHE=${SRC_CACHE:-/tmp/pgw-regress-src}
BUILD_DIR=${BUILD_DIR:-/tmp/regress-build}
NICE=${NICE:-10}

for v in $(compgen -e | grep -E '^PG' || true); do
    case $v in PG_BINDIR | PG_SRC | PGWARDEN_BIN) ;; *) unset "$v" ;; esac
done

die() {
    echo "regress: $*" >&2
    exit 1
}
say() { echo "regress: $*" >&2; }

# shellcheck disable=SC1091 # tests/fixture/ports.sh: pick_port
. "$ROOT/tests/fixture/ports.sh"

as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

WORK=""
PGW_PID=""
REG_PID=""
PGDATA_DIR=""
LPORT=""

# shellcheck disable=SC2317 # reached through the trap
stop_pgwarden() {
    local i
    [[ -n $PGW_PID ]] || return 0
    if kill -0 "$PGW_PID" 2>/dev/null; then
        kill -TERM "$PGW_PID" 2>/dev/null || true
        for ((i = 0; i < 400; i++)); do
            kill -0 "$PGW_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$PGW_PID" 2>/dev/null && kill -KILL "$PGW_PID" 2>/dev/null
    fi
    wait "$PGW_PID" 2>/dev/null || true
    PGW_PID=""
}

# shellcheck disable=SC2317
stop_cluster() {
    [[ -n $PGDATA_DIR && -f $PGDATA_DIR/postmaster.pid ]] || return 0
    as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null 2>&1 ||
        as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
        true
    PGDATA_DIR=""
}

# shellcheck disable=SC2317
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $REG_PID ]]; then # runuser passes the signal on to timeout and pg_regress
        kill -TERM "$REG_PID" 2>/dev/null || true
        wait "$REG_PID" 2>/dev/null || true
    fi
    stop_pgwarden
    stop_cluster
    [[ -n $WORK && -d $WORK ]] && rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- prerequisites -----------------------------------------------------------------------
[[ -x $PG_BINDIR/postgres ]] || die "PostgreSQL 15 missing ($PG_BINDIR)"
PG_VERSION=$("$PG_BINDIR/postgres" --version | awk '{print $3}') # e.g. 15.18
PGXS_DIR=$(cd "$(dirname "$("$PG_CONFIG" --pgxs)")/../.." && pwd)
PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress
[[ -x $PG_REGRESS ]] || die "pg_regress missing ($PG_REGRESS): install postgresql-15"
[[ -f $("$PG_CONFIG" --includedir-server)/postgres.h ]] ||
    die "server headers missing: apt-get install postgresql-server-dev-15=<installed version>"

if [[ -n ${PG_SRC:-} ]]; then
    REGRESS_SRC=$PG_SRC/src/test/regress
else
    REGRESS_SRC=$SRC_CACHE/postgresql-$PG_VERSION/src/test/regress
    if [[ ! -f $REGRESS_SRC/parallel_schedule ]]; then
        DEB_VERSION=$(dpkg-query -W -f '${Version}' postgresql-15)
        mkdir -p "$SRC_CACHE"
        say "fetching the sources of postgresql-15 $DEB_VERSION (apt-get source)"
        (cd "$SRC_CACHE" && timeout 600 apt-get source -qq --download-only \
            "postgresql-15=$DEB_VERSION") ||
            die "apt-get source failed: add a deb-src entry, or set PG_SRC"
        tar -xjf "$SRC_CACHE/postgresql-15_$PG_VERSION.orig.tar.bz2" -C "$SRC_CACHE" \
            "postgresql-$PG_VERSION/src/test/regress"
    fi
fi
[[ -f $REGRESS_SRC/parallel_schedule ]] || die "no parallel_schedule in $REGRESS_SRC"

if [[ -z ${PGWARDEN_BIN:-} ]]; then
    nice -n "$NICE" cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
    nice -n "$NICE" cmake --build "$BUILD_DIR" -j 2 --target pgwarden >/dev/null
    PGWARDEN_BIN=$BUILD_DIR/proxy/pgwarden
fi
[[ -x $PGWARDEN_BIN ]] || die "no pgwarden binary at $PGWARDEN_BIN"

WORK=$(mktemp -d /tmp/pgw-regress-XXXXXX)
chmod 711 "$WORK"
mkdir -p "$OUT_DIR"

# regress.so (test_setup and others), autoinc.so and refint.so (triggers) in one --dlpath.
mkdir -p "$WORK/lib"
cp "$REGRESS_SRC/regress.c" "$WORK/lib/"
cat >"$WORK/lib/Makefile" <<EOF
MODULES = regress
PG_CONFIG = $PG_CONFIG
PGXS := \$(shell \$(PG_CONFIG) --pgxs)
include \$(PGXS)
EOF
nice -n "$NICE" make -s -C "$WORK/lib" with_llvm=no >"$WORK/lib/build.log" 2>&1 ||
    { cat "$WORK/lib/build.log" >&2; die "building regress.so failed"; }
PKGLIB=$("$PG_CONFIG" --pkglibdir)
cp "$PKGLIB/autoinc.so" "$PKGLIB/refint.so" "$WORK/lib/"

# The input tree (sql/, expected/, data/, schedules), readable by the server.
cp -r "$REGRESS_SRC" "$WORK/input"
chmod -R a+rX "$WORK/input" "$WORK/lib"

# pgwarden in front of the cluster on port PGPORT: sets LPORT and PGW_PID.
start_pgwarden() { # MODE DIR PGPORT
    local mode=$1 dir=$2 pgport=$3 aport i
    LPORT=$(pick_port "$pgport")
    aport=$(pick_port "$pgport" "$LPORT")
    cat >"$dir/pgwarden.ini" <<EOF
[pgwarden]
listen_addr = 127.0.0.1
listen_port = $LPORT
admin_addr = 127.0.0.1
admin_port = $aport
pool_mode = $mode
default_pool_size = $POOL_SIZE
max_client_conn = 400
auth_type = trust
server_tls_mode = disable
unmovable_state = pin
query_wait_timeout_ms = $((REGRESS_TIMEOUT * 1000))
log_level = info
logfile = $dir/pgwarden.log

[databases]
* = host=127.0.0.1 port=$pgport
EOF
    "$PGWARDEN_BIN" -c "$dir/pgwarden.ini" --check || die "pgwarden refused its config"
    nice -n "$NICE" "$PGWARDEN_BIN" -c "$dir/pgwarden.ini" &
    PGW_PID=$!
    for ((i = 0; i < 300; i++)); do
        kill -0 "$PGW_PID" 2>/dev/null || die "pgwarden exited at start"
        as_pg "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$LPORT" -d postgres -U postgres &&
            break
        sleep 0.1
    done
    say "$mode: PostgreSQL on 127.0.0.1:$pgport, pgwarden (pid $PGW_PID) on 127.0.0.1:$LPORT"
}

# ---- one mode ----------------------------------------------------------------------------
run_mode() { # MODE
    local mode=$1 dir=$WORK/$1 pgport lport i out rc
    out=$OUT_DIR/$mode
    rm -rf -- "$out"
    mkdir -p "$out" "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"

    # Cluster.
    PGDATA_DIR=$dir/data
    as_pg "$PG_BINDIR/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C -N \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    for ((i = 0; i < 5; i++)); do
        pgport=$(pick_port)
        as_pg sh -c "cat >>'$PGDATA_DIR/postgresql.conf'" <<EOF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$dir'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_connections = on
log_disconnections = on
log_line_prefix = '%m [%p] %q%u@%d/%a '
EOF
        if as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$dir/postgres.log" -w -t 120 \
            start >"$dir/pg_ctl.log" 2>&1; then
            break
        fi
        grep -q "Address already in use" "$dir/postgres.log" || {
            cat "$dir/pg_ctl.log" "$dir/postgres.log" >&2
            die "PostgreSQL did not start"
        }
    done
    as_pg "$PG_BINDIR/psql" -X -q -h "$dir" -p "$pgport" -U postgres -d postgres \
        -c "CREATE DATABASE pgw_pooling" >/dev/null

    # pgwarden (none in direct mode: the suite and pgbench go to PostgreSQL itself).
    if [[ $mode == direct ]]; then
        lport=$pgport
        say "direct: PostgreSQL on 127.0.0.1:$pgport, no pgwarden"
    else
        start_pgwarden "$mode" "$dir" "$pgport"
        lport=$LPORT
    fi

    # The suite.
    mkdir -p "$dir/results-root"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/results-root"
    local t0=$SECONDS
    set +e
    as_pg timeout --kill-after=30 "$REGRESS_TIMEOUT" nice -n "$NICE" "$PG_REGRESS" \
        --inputdir="$WORK/input" --outputdir="$dir/results-root" --bindir="$PG_BINDIR" \
        --dlpath="$WORK/lib" --host=127.0.0.1 --port="$lport" --user=postgres \
        --max-connections="$MAX_CONNECTIONS" --max-concurrent-tests=20 \
        --schedule="$WORK/input/parallel_schedule" >"$out/pg_regress.stdout" 2>&1 &
    REG_PID=$!
    wait "$REG_PID"
    rc=$?
    REG_PID=""
    set -e
    local secs=$((SECONDS - t0))
    [[ $rc -eq 124 || $rc -eq 137 ]] && say "$mode: pg_regress timed out after ${REGRESS_TIMEOUT}s"

    # Sessions the suite opened on PostgreSQL vs. distinct backends that served them.
    local n_regress_backends max_open
    n_regress_backends=$(grep -c 'connection authorized: user=postgres database=regression' \
        "$dir/postgres.log" || true)
    max_open=$(awk '/connection authorized: user=postgres database=regression / { n++ }
        /disconnection: .* user=postgres database=regression / { n-- }
        n > max { max = n } END { print max + 0 }' "$dir/postgres.log")

    # Pooling check: a pin-free workload (session SET, SET LOCAL, transactions) from 16
    # clients; count the backends PostgreSQL started for it.
    cat >"$dir/pool.sql" <<'EOF'
SET work_mem = '8MB';
BEGIN;
SET LOCAL statement_timeout = '10s';
SELECT count(*) FROM pg_class WHERE relname = current_setting('work_mem');
COMMIT;
SELECT pg_backend_pid();
EOF
    chmod 644 "$dir/pool.sql"
    local pool_tps pool_backends
    pool_tps=$(as_pg timeout 300 "$PG_BINDIR/pgbench" -n -h 127.0.0.1 -p "$lport" -U postgres \
        -c 16 -j 2 -t 200 -f "$dir/pool.sql" pgw_pooling 2>&1 |
        awk '/^tps/ { print $3; exit }') || true
    pool_backends=$(grep -c 'connection authorized: user=postgres database=pgw_pooling' \
        "$dir/postgres.log" || true)

    stop_pgwarden
    stop_cluster

    # Results.
    local ok failed ignored total
    ok=$(grep -cE '\.\.\. ok ' "$out/pg_regress.stdout" || true)
    failed=$(grep -cE '\.\.\. FAILED' "$out/pg_regress.stdout" || true)
    ignored=$(grep -cE '\.\.\. failed \(ignored\)' "$out/pg_regress.stdout" || true)
    total=$(grep -E '^test:' "$WORK/input/parallel_schedule" | sed 's/^test://' | wc -w)
    cp "$dir/results-root/regression.diffs" "$out/" 2>/dev/null || true
    cp "$dir/results-root/regression.out" "$out/" 2>/dev/null || true
    cp "$dir/pgwarden.log" "$dir/postgres.log" "$dir/pgwarden.ini" "$out/" 2>/dev/null || true
    {
        echo "mode:                  $mode (pool size $POOL_SIZE, $("$PGWARDEN_BIN" -V 2>&1 | head -n 1))"
        echo "PostgreSQL:            $PG_VERSION, parallel_schedule: $total tests"
        echo "passed:                $ok"
        echo "failed:                $failed"
        echo "failed (ignored):      $ignored"
        echo "pg_regress exit:       $rc (${secs}s)"
        echo "backends for regression db (log_connections): $n_regress_backends started, at most $max_open open at once"
        echo "pin-free pgbench (16 clients x 200 tx): backends $pool_backends, tps ${pool_tps:-?}"
        if [[ $mode != direct ]]; then
            echo "pinned clients logged: $(grep -c 'which cannot move to another server' "$out/pgwarden.log" 2>/dev/null || true) (pins.txt: test and reason)"
            echo "pgwarden 'does not match': $(grep -c 'does not match' "$out/pgwarden.log" 2>/dev/null || true)"
            echo "pgwarden 'could not restore the session': $(grep -c 'could not restore the session' "$out/pgwarden.log" 2>/dev/null || true)"
            echo "pgwarden WARNING/ERROR lines: $(grep -cE ' (WARNING|ERROR) ' "$out/pgwarden.log" 2>/dev/null || true)"
        fi
        echo "failing tests:"
        awk '/\.\.\. FAILED/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "...") { print "  " $i; break } }' \
            "$out/pg_regress.stdout"
    } >"$out/summary.txt"
    if [[ -f $out/pgwarden.log ]]; then
        sed -n 's/.*(application_name "pg_regress\/\([^"]*\)") uses \(.*\), which cannot move.*/\1: \2/p' \
            "$out/pgwarden.log" | sort | uniq -c >"$out/pins.txt"
    fi
    cat "$out/summary.txt"
}

for m in $MODES; do
    run_mode "$m"
done
say "results in $OUT_DIR"
