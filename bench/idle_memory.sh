#!/usr/bin/env bash
# bench/idle_memory.sh: memory per idle client, pgwarden against PgBouncer (issue 19).
#
#   bench/idle_memory.sh                          3 rounds, 1,000 and 10,000 clients
#   IDLE_ROUNDS=1 IDLE_COUNTS=1000 bench/idle_memory.sh
#
# Starts its own PostgreSQL 15 cluster (tests/fixture/pgcluster.sh), then for every round,
# pool mode (transaction, session) and client TLS (plain, tls) starts a fresh PgBouncer and
# a fresh pgwarden (lib.sh's configurations: pool 20, the same userlist and certificate),
# one after the other in rotated order, and against each one:
#
#   1. warms it up: IDLE_WARMUP clients log in and leave (the pool, its first server, the
#      welcome and the TLS library's lazily built tables exist from then on);
#   2. reads the proxy's VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup);
#   3. bench/idle_clients opens the clients of IDLE_COUNTS one step after the other (each
#      logged in, then idle: no query), and at each step the two figures are read again.
#
# Reported per (mode, TLS, clients, target): bytes per client = (figure at the step -
# figure after warm-up) / clients, median (min..max) over rounds, and pgwarden /
# PgBouncer of the medians.  In session pooling 20 of the clients hold a server in pgwarden
# (the rest wait for one, idle: they sent nothing); PgBouncer links a server only at a
# client's first query.  Raw figures in idle_memory.csv, the table in summary.txt (in
# IDLE_OUT).  Every process it starts is stopped by its PID on exit; every wait is bounded.
#
# Environment (defaults in brackets):
#   IDLE_ROUNDS [3]          rounds (fresh proxies for every round, mode and TLS setting)
#   IDLE_COUNTS [1000,10000] client counts, ascending, measured in one run of the clients
#   IDLE_MODES [transaction session]  pool modes
#   IDLE_TLS [plain tls]     client connections without and with TLS (sslmode=require)
#   IDLE_TARGETS [pgbouncer pgwarden]; add pgw-base for a second pgwarden, the binary
#                            IDLE_BASE_BINARY (e.g. a build of main: before and after in one run)
#   IDLE_WARMUP [10]         clients that log in and leave before the baseline
#   IDLE_AUTH [trust]        auth_type of both proxies (scram-sha-256: libpq then pays
#                            PBKDF2 for every login)
#   IDLE_EXTRA               lines appended to pgwarden's configuration, e.g.
#                            $'[retry]\nmax_attempts = 1'
#   IDLE_OUT                 results directory [build-bench/idle-YYYYmmdd-HHMMSS]
#   BUILD_DIR [build-bench], PG_BINDIR [/usr/lib/postgresql/15/bin], PGBOUNCER [/usr/sbin/pgbouncer]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

IDLE_ROUNDS=${IDLE_ROUNDS:-3}
IDLE_COUNTS=${IDLE_COUNTS:-1000,10000}
IDLE_MODES=${IDLE_MODES:-transaction session}
IDLE_TLS=${IDLE_TLS:-plain tls}
IDLE_TARGETS=${IDLE_TARGETS:-pgbouncer pgwarden}
IDLE_WARMUP=${IDLE_WARMUP:-10}
IDLE_AUTH=${IDLE_AUTH:-trust}
IDLE_EXTRA=${IDLE_EXTRA:-}
IDLE_BASE_BINARY=${IDLE_BASE_BINARY:-}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
BUILD_DIR=${BUILD_DIR:-$root/build-bench}
IDLE_OUT=${IDLE_OUT:-$BUILD_DIR/idle-$(date +%Y%m%d-%H%M%S)}

PROXY_START_TIMEOUT=20 # seconds until a proxy answers SELECT 1 (used by lib.sh)
PROXY_STOP_TIMEOUT=10  # seconds after SIGTERM before SIGKILL (used by lib.sh)
STEP_TIMEOUT=300       # seconds one step of idle_clients may take
POOL_SIZE=20

[[ $IDLE_ROUNDS =~ ^[1-9][0-9]*$ ]] || {
    echo "bench: IDLE_ROUNDS must be a positive integer" >&2
    exit 2
}
[[ $IDLE_COUNTS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || {
    echo "bench: IDLE_COUNTS must be a comma-separated list of positive integers" >&2
    exit 2
}
[[ $IDLE_WARMUP =~ ^[0-9]+$ ]] || {
    echo "bench: IDLE_WARMUP must be a non-negative integer" >&2
    exit 2
}

# Our libpq settings must not come from the caller's environment.
for v in $(compgen -e | grep -E '^PG' || true); do
    case $v in PG_BINDIR) ;; *) unset "$v" ;; esac
done

# shellcheck source=bench/lib.sh
. "$here/lib.sh"

# lib.sh's settings.
BENCH_SERVER_TLS=disable
BENCH_USERLIST=plain
BENCH_QUERY_BATCH=1
BENCH_TARGETS=$IDLE_TARGETS
BENCH_AUTH_TYPE=$IDLE_AUTH
BENCH_QUERY_WAIT_S=3600 # session pooling: the clients beyond the pool wait that long
BENCH_OUT=$IDLE_OUT
CLUSTER_DIR=$IDLE_OUT/cluster
WORK=$IDLE_OUT/work
CSV=$IDLE_OUT/idle_memory.csv
SUMMARY=$IDLE_OUT/summary.txt
PGBOUNCER_PID=
PGWARDEN_PID=
PGW_BATCH_PID=
CLUSTER_STARTED=0
clients_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $clients_pid ]]; then
        kill -TERM "$clients_pid" 2>/dev/null || true
        wait "$clients_pid" 2>/dev/null || true
    fi
    stop_proxies
    stop_cluster
    ((rc == 0)) || log "failed (exit $rc); logs in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pss_kb() { # PID
    awk '$1 == "Pss:" { print $2 }' "/proc/$1/smaps_rollup"
}

# ---- setup --------------------------------------------------------------------------------

mkdir -p "$IDLE_OUT" "$WORK"
log "results in $IDLE_OUT"
build_pgwarden
timeout 900 cmake --build "$BUILD_DIR" --target idle_clients -j "$(nproc)" >>"$WORK/cmake.log" 2>&1 ||
    die "building idle_clients failed: see $WORK/cmake.log"
CLIENTS_BINARY=$BUILD_DIR/bench/idle_clients
if [[ " $IDLE_TARGETS " == *" pgw-base "* ]]; then
    [[ -x $IDLE_BASE_BINARY ]] || die "target pgw-base needs IDLE_BASE_BINARY (a pgwarden binary)"
fi

max_count=${IDLE_COUNTS##*,}
# Both proxies and the clients inherit the open-files limit: raise it to the hard limit.
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
((hard >= max_count + 200)) || die "open-files hard limit $hard is too low for $max_count clients"
ulimit -n "$hard"

start_cluster

echo "round,mode,tls,target,clients,rss_base_kb,rss_kb,pss_base_kb,pss_kb,rss_b_per_client,pss_b_per_client,seconds,failed" >"$CSV"

# Runs idle_clients against PORT with SSLMODE for COUNTS; after each step calls
# on_step CLIENTS SECONDS FAILED.  Returns non-zero if the clients failed.
run_clients() { # PORT SSLMODE COUNTS
    local pw="" line n secs failed
    [[ $IDLE_AUTH == trust ]] || pw=" password=$DB_PASSWORD"
    coproc CLIENTS { exec "$CLIENTS_BINARY" -t "$STEP_TIMEOUT" -n "$3" \
        -d "host=127.0.0.1 port=$1 dbname=$DB_NAME user=$DB_USER sslmode=$2$pw connect_timeout=60" \
        2>>"$WORK/idle_clients.err"; }
    # shellcheck disable=SC2153 # CLIENTS_PID is set by coproc (and unset when it exits)
    clients_pid=$CLIENTS_PID
    local out=${CLIENTS[0]} in=${CLIENTS[1]}
    IFS=, read -r -a steps <<<"$3"
    for n in "${steps[@]}"; do
        if ! read -r -t "$STEP_TIMEOUT" line <&"$out"; then
            log "  idle_clients gave no answer for $n clients (see $WORK/idle_clients.err)"
            break
        fi
        secs=${line##*seconds=}
        failed=${line#*failed=}
        failed=${failed%% *}
        on_step "$n" "$secs" "$failed"
        echo >&"$in"
    done
    exec {in}>&- # end of file: the clients close and exit
    wait "$clients_pid" 2>/dev/null || true
    clients_pid=
}

for ((round = 1; round <= IDLE_ROUNDS; round++)); do
    for mode in $IDLE_MODES; do
        for tls in $IDLE_TLS; do
            sslmode=disable
            [[ $tls == tls ]] && sslmode=require
            # shellcheck disable=SC2206 # target names have no spaces
            all=($IDLE_TARGETS)
            targets=() # rotated from round to round: each goes first in turn
            for ((i = 0; i < ${#all[@]}; i++)); do
                targets+=("${all[(i + round - 1) % ${#all[@]}]}")
            done
            for t in "${targets[@]}"; do
                BENCH_POOL_MODE=$mode
                tag=$mode-$tls-r$round
                if [[ $t == pgbouncer ]]; then
                    start_proxies "$POOL_SIZE" $((max_count + 100)) "$tag" pgbouncer
                    port=$PGBOUNCER_PORT pid=$PGBOUNCER_PID
                else
                    binary=$WARDEN_BINARY
                    [[ $t == pgw-base ]] && WARDEN_BINARY=$IDLE_BASE_BINARY
                    start_pgwarden "$POOL_SIZE" $((max_count + 100)) "$tag" "$t" 1 "$IDLE_EXTRA"
                    WARDEN_BINARY=$binary
                    PGWARDEN_PORT=$STARTED_PORT PGWARDEN_PID=$STARTED_PID
                    port=$PGWARDEN_PORT pid=$PGWARDEN_PID
                fi
                if ((IDLE_WARMUP > 0)); then
                    on_step() { :; }
                    run_clients "$port" "$sslmode" "$IDLE_WARMUP"
                fi
                sleep 1
                rss0=$(proc_rss_kb "$pid") pss0=$(pss_kb "$pid")
                on_step() { # CLIENTS SECONDS FAILED
                    local rss pss
                    rss=$(proc_rss_kb "$pid") pss=$(pss_kb "$pid")
                    echo "$round,$mode,$tls,$t,$1,$rss0,$rss,$pss0,$pss,$(((rss - rss0) * 1024 / $1)),$(((pss - pss0) * 1024 / $1)),$2,$3" >>"$CSV"
                    log "  round $round $mode $tls $(printf '%-9s' "$t") $1 clients (${2}s, $3 failed): RSS $rss0 -> $rss kB, $(((rss - rss0) * 1024 / $1)) B per client; PSS $(((pss - pss0) * 1024 / $1)) B"
                }
                run_clients "$port" "$sslmode" "$IDLE_COUNTS"
                stop_proxies
            done
        done
    done
done

# ---- report -------------------------------------------------------------------------------

{
    echo "== bytes per idle client (proxy RSS and PSS growth / clients), median (min..max) over $IDLE_ROUNDS rounds"
    echo "   auth_type $IDLE_AUTH, pool 20, warm-up $IDLE_WARMUP clients${IDLE_EXTRA:+, pgwarden extra: ${IDLE_EXTRA//$'\n'/; }}"
    printf "%-12s %-6s %7s %-10s %22s %22s\n" mode tls clients target "RSS B/client" "PSS B/client"
    # One line per (mode, tls, clients, target): median (min..max) of RSS and PSS.
    awk -F, 'NR > 1 && $13 == 0 { print $2, $3, $5, $4, $10, $11 }' "$CSV" | sort -k1,1 -k2,2 -k3,3n -k4,4 -k5,5n |
        awk 'function stat(v, n,   i, j, t, m) {
                 for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
                 m = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
                 return sprintf("%d (%d..%d)", m, v[1], v[n]) }
             function flush() { if (n) { printf "%-12s %-6s %7s %-10s %22s %22s\n", a, b, c, d, stat(r, n), stat(p, n)
                 split(stat(r, n), m, " "); med[a " " b " " c " " d] = m[1]; order[++no] = a " " b " " c " " d }; n = 0 }
             { if ($1 != a || $2 != b || $3 != c || $4 != d) flush(); a = $1; b = $2; c = $3; d = $4; n++; r[n] = $5 + 0; p[n] = $6 + 0 }
             END { flush()
                 for (i = 1; i <= no; i++) { split(order[i], f, " "); if (f[4] != "pgwarden") continue
                     k = f[1] " " f[2] " " f[3] " pgbouncer"
                     if (med[k] > 0) printf "pgwarden/pgbouncer RSS per client, %s %s %s clients: %.2fx\n", f[1], f[2], f[3], med[order[i]] / med[k]
                     k = f[1] " " f[2] " " f[3] " pgw-base"
                     if (med[k] > 0) printf "pgwarden/pgw-base RSS per client, %s %s %s clients: %.2fx\n", f[1], f[2], f[3], med[order[i]] / med[k] } }'
    awk -F, 'NR > 1 && $13 != 0 { printf "round %s %s %s %s %s clients: %s logins failed (left out)\n", $1, $2, $3, $4, $5, $13 }' "$CSV"
} | tee "$SUMMARY"
log "raw figures: $CSV; table: $SUMMARY; proxy logs: $WORK"
