#!/usr/bin/env bash
# bench/syscalls.sh: pgwarden's system calls per transaction (strace -c -f on the proxy),
# pgbench tpcb-like, transaction pooling, for one or two pgwarden binaries side by side.
# See bench/README.md, "The held BEGIN in the first extended-protocol group".
#
#   SYSCALLS_BINARIES="/path/to/old/pgwarden /path/to/new/pgwarden" bench/syscalls.sh
#
# Starts its own PostgreSQL 15 cluster (tests/fixture/pgcluster.sh, free 127.0.0.1 port),
# runs pgbench -i, then for each binary and protocol: a warm-up (every client logged in,
# statements prepared), then strace -c -f attached to pgwarden during pgbench -t TX, and
# prints the calls per transaction (total and the main ones).  Everything it started is
# stopped by PID on exit.
#
# Environment (defaults in brackets):
#   SYSCALLS_BINARIES [BUILD_DIR/proxy/pgwarden]  pgwarden binaries to compare
#   SYSCALLS_PROTOCOLS [extended prepared simple]  pgbench -M
#   SYSCALLS_TX [300]            transactions per client (-t) of each counted run
#   BENCH_CLIENTS [16], BENCH_JOBS [2], BENCH_POOL_SIZE [20], BENCH_SCALE [10]
#   BENCH_OUT [build-bench/syscalls-YYYYmmdd-HHMMSS], BUILD_DIR [build-bench], PG_BINDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$root/build-bench}
SYSCALLS_BINARIES=${SYSCALLS_BINARIES:-$BUILD_DIR/proxy/pgwarden}
SYSCALLS_PROTOCOLS=${SYSCALLS_PROTOCOLS:-extended prepared simple}
SYSCALLS_TX=${SYSCALLS_TX:-300}
BENCH_CLIENTS=${BENCH_CLIENTS:-16}
BENCH_JOBS=${BENCH_JOBS:-2}
BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-20}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_OUT=${BENCH_OUT:-$BUILD_DIR/syscalls-$(date +%Y%m%d-%H%M%S)}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
# lib.sh's settings
BENCH_POOL_MODE=transaction BENCH_SERVER_TLS=disable BENCH_USERLIST=plain
BENCH_TARGETS=pgwarden PROXY_START_TIMEOUT=20 PROXY_STOP_TIMEOUT=10 CLUSTER_STARTED=0
WORK=$BENCH_OUT/work
CLUSTER_DIR=$BENCH_OUT/cluster
# shellcheck source=lib.sh
source "$here/lib.sh"

command -v strace >/dev/null || die "strace not found"
mkdir -p "$WORK"
PID='' STRACE_PID=''
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $STRACE_PID ]] && kill -INT "$STRACE_PID" 2>/dev/null
    [[ -n $PID ]] && stop_pid "$PID" pgwarden
    stop_cluster
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_pgbench() { # PORT PROTOCOL TX OUT
    PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable timeout 600 "$PG_BINDIR/pgbench" -n -M "$2" \
        -c "$BENCH_CLIENTS" -j "$BENCH_JOBS" -t "$3" -h 127.0.0.1 -p "$1" -U "$DB_USER" \
        "$DB_NAME" >"$4" 2>&1 || die "pgbench failed: see $4"
}

start_cluster
pgbench_init "$BENCH_SCALE"
tx=$((BENCH_CLIENTS * SYSCALLS_TX))
n=0
for bin in $SYSCALLS_BINARIES; do
    n=$((n + 1))
    [[ -x $bin ]] || die "$bin is not an executable"
    WARDEN_BINARY=$bin
    start_pgwarden "$BENCH_POOL_SIZE" 200 s "pgw$n" 1 $'[retry]\nmax_attempts = 1'
    PID=$STARTED_PID
    for proto in $SYSCALLS_PROTOCOLS; do
        out=$BENCH_OUT/pgw$n-$proto
        run_pgbench "$STARTED_PORT" "$proto" 20 "$out-warmup.txt"
        strace -c -f -p "$PID" -o "$out-strace.txt" 2>/dev/null &
        STRACE_PID=$!
        sleep 1 # attached
        run_pgbench "$STARTED_PORT" "$proto" "$SYSCALLS_TX" "$out-pgbench.txt"
        sleep 0.5
        kill -INT "$STRACE_PID"
        wait "$STRACE_PID" || true
        STRACE_PID=
        # strace -c: % time, seconds, usecs/call, calls, [errors,] syscall
        awk -v n="$tx" -v b="pgw$n ($bin)" -v p="$proto" '
            $NF == "total" { total = $(NF - 2) }
            $1 ~ /^[0-9.]+$/ && $NF != "total" { c[$NF] = $4 }
            END {
                printf "%s -M %s: %.1f calls per transaction:", b, p, total / n
                for (s in c) if (c[s] / n >= 0.05) printf " %s %.2f", s, c[s] / n
                printf "\n"
            }' "$out-strace.txt" | tee -a "$BENCH_OUT/summary.txt"
    done
    stop_pid "$PID" pgwarden
    PID=
done
log "results: $BENCH_OUT/summary.txt"
