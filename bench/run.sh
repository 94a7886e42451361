#!/usr/bin/env bash
# bench/run.sh: pgbench through PgBouncer and pgwarden, against PostgreSQL directly for
# reference.  See bench/README.md for what is measured and how to read the tables.
#
#   bench/run.sh                       3 rounds x 10 s per (scenario, target)
#   BENCH_SECONDS=5 BENCH_ROUNDS=2 bench/run.sh
#
# It builds pgwarden (Release, build-bench/), starts its own PostgreSQL 15 cluster with
# tests/fixture/pgcluster.sh, loads pgbench data once, and for every scenario starts
# PgBouncer and pgwarden with equivalent configurations on free 127.0.0.1 ports, runs
# pgbench against the three targets alternately, then stops both proxies.  Last, it
# measures the memory each idle client costs each proxy.  Everything it starts is stopped
# by its PID on exit; every wait is bounded.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]       length of each measured pgbench run
#   BENCH_ROUNDS [3]         rounds; each round runs every target once, in rotated order
#   BENCH_WARMUP [2]         unrecorded warm-up run per target and scenario, seconds (0: none)
#   BENCH_SCALE [10]         pgbench -i scale factor
#   BENCH_BUILTIN [select-only]  pgbench built-in script of every run (-b): select-only
#                            (pgbench -S) or tpcb-like (5 statements in BEGIN ... END)
#   BENCH_POOL_SIZE [20]     pool size of both proxies (see BENCH_SESSION_FIT)
#   BENCH_POOL_MODE [session]  pool_mode of both proxies: session | transaction
#   BENCH_SESSION_FIT [1]    session mode: raise a scenario's pool size to its client count
#                            (pgwarden completes a login only once a server is linked, so
#                            more pgbench clients than servers stall pgbench's connect phase)
#   BENCH_SERVER_TLS [disable]  server_tls_mode / server_tls_sslmode of both proxies
#   BENCH_USERLIST [plain]   the proxies' auth_file holds the plaintext password (plain) or
#                            PostgreSQL's SCRAM verifier (scram: server login by passthrough)
#   BENCH_TARGETS [direct pgbouncer pgwarden]; add pgw-batch for a second pgwarden with
#                            server_query_batch = BENCH_QUERY_BATCH (batching acts only
#                            with BENCH_POOL_MODE=transaction)
#   BENCH_QUERY_BATCH [8]    server_query_batch of the pgw-batch target, 1..8
#   BENCH_SCENARIOS          space-separated NAME:CLIENTS:JOBS:PROTOCOL:CONNECT:SSLMODE
#                            [select-16:16:2:simple:0:disable select-64:64:2:simple:0:disable
#                             connect-tls-16:16:2:simple:1:require]
#                            CONNECT 1 = pgbench -C (new connection per transaction)
#   BENCH_IDLE_CLIENTS [200] idle clients for the memory measurement (0: skip it)
#   BENCH_IDLE_SECONDS [15]  how long those clients stay connected
#   BENCH_OUT                results directory [build-bench/results-YYYYmmdd-HHMMSS]
#   PG_BINDIR [/usr/lib/postgresql/15/bin], PGBOUNCER [/usr/sbin/pgbouncer]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_BUILTIN=${BENCH_BUILTIN:-select-only}
BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-20}
BENCH_POOL_MODE=${BENCH_POOL_MODE:-session}
BENCH_SESSION_FIT=${BENCH_SESSION_FIT:-1}
BENCH_SERVER_TLS=${BENCH_SERVER_TLS:-disable}
BENCH_USERLIST=${BENCH_USERLIST:-plain}
BENCH_QUERY_BATCH=${BENCH_QUERY_BATCH:-8}
BENCH_TARGETS=${BENCH_TARGETS:-direct pgbouncer pgwarden}
BENCH_SCENARIOS=${BENCH_SCENARIOS:-select-16:16:2:simple:0:disable select-64:64:2:simple:0:disable connect-tls-16:16:2:simple:1:require}
BENCH_IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-200}
BENCH_IDLE_SECONDS=${BENCH_IDLE_SECONDS:-15}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
BUILD_DIR=${BUILD_DIR:-$root/build-bench}
BENCH_OUT=${BENCH_OUT:-$BUILD_DIR/results-$(date +%Y%m%d-%H%M%S)}

PROXY_START_TIMEOUT=20 # seconds until a proxy answers SELECT 1
PROXY_STOP_TIMEOUT=10  # seconds after SIGTERM before SIGKILL
PGBENCH_SLACK=90       # seconds a pgbench run may take beyond its -T

for v in BENCH_SECONDS BENCH_ROUNDS BENCH_WARMUP BENCH_SCALE BENCH_POOL_SIZE \
    BENCH_SESSION_FIT BENCH_IDLE_CLIENTS BENCH_IDLE_SECONDS BENCH_QUERY_BATCH; do
    [[ ${!v} =~ ^[0-9]+$ ]] || {
        echo "bench: $v must be a non-negative integer" >&2
        exit 2
    }
done
((BENCH_QUERY_BATCH >= 1 && BENCH_QUERY_BATCH <= 8)) || {
    echo "bench: BENCH_QUERY_BATCH must be 1..8 (server_query_batch)" >&2
    exit 2
}
((BENCH_SECONDS > 0 && BENCH_ROUNDS > 0 && BENCH_POOL_SIZE > 0)) || {
    echo "bench: BENCH_SECONDS, BENCH_ROUNDS and BENCH_POOL_SIZE must be positive" >&2
    exit 2
}

# Our libpq settings must not come from the caller's environment.
for v in $(compgen -e | grep -E '^PG' || true); do
    case $v in PG_BINDIR) ;; *) unset "$v" ;; esac
done

# shellcheck source=bench/lib.sh
. "$here/lib.sh"

CLUSTER_DIR=$BENCH_OUT/cluster
WORK=$BENCH_OUT/work
RAW_CSV=$BENCH_OUT/runs.csv
IDLE_CSV=$BENCH_OUT/idle_memory.csv
SUMMARY=$BENCH_OUT/summary.txt
PGBOUNCER_PID=
PGWARDEN_PID=
PGW_BATCH_PID=
CLUSTER_STARTED=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_proxies
    stop_cluster
    ((rc == 0)) || log "failed (exit $rc); logs in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- setup --------------------------------------------------------------------------------

mkdir -p "$BENCH_OUT" "$WORK"
log "results in $BENCH_OUT"

build_pgwarden
start_cluster
pgbench_init "$BENCH_SCALE"

echo "scenario,round,target,clients,jobs,protocol,connect,sslmode,pool_mode,pool_size,seconds,status,tps,latency_ms,failed,transactions,proxy_cpu_s,proxy_cpu_s_per_1k_tx,proxy_ctxsw_per_1k_tx" >"$RAW_CSV"

# ---- scenarios ------------------------------------------------------------------------------

# True when TARGET can run the scenario at all (PgBouncer 1.18 has no prepared statements
# in transaction mode).
supported() { # TARGET PROTOCOL
    [[ $1 == pgbouncer && $BENCH_POOL_MODE == transaction && $2 == prepared ]] && return 1
    return 0
}

# One pgbench run against TARGET; appends a CSV row.  Args: SCENARIO ROUND TARGET CLIENTS
# JOBS PROTOCOL CONNECT SSLMODE POOL SECONDS (ROUND "warmup": not recorded).
run_one() {
    local scen=$1 round=$2 target=$3 clients=$4 jobs=$5 proto=$6 connect=$7 ssl=$8
    local pool=$9 secs=${10} port pid out status=ok cpu0=0 cpu1=0 csw0=0 csw1=0
    local tps lat failed tx cpu per1k csw1k
    case $target in
    direct) port=$PG_PORT pid= ;;
    pgbouncer) port=$PGBOUNCER_PORT pid=$PGBOUNCER_PID ;;
    pgwarden) port=$PGWARDEN_PORT pid=$PGWARDEN_PID ;;
    pgw-batch) port=$PGW_BATCH_PORT pid=$PGW_BATCH_PID ;;
    *) die "unknown target $target" ;;
    esac
    out=$WORK/pgbench-$scen-$round-$target.log
    local args=(-b "$BENCH_BUILTIN" -M "$proto" -c "$clients" -j "$jobs" -T "$secs" -n
        -h 127.0.0.1 -p "$port" -U "$DB_USER")
    ((connect)) && args+=(-C)
    [[ -n $pid ]] && cpu0=$(proc_cpu_ns "$pid") csw0=$(proc_ctxsw "$pid")
    if ! PGPASSWORD=$DB_PASSWORD PGSSLMODE=$ssl PGCONNECT_TIMEOUT=30 \
        timeout -k 5 $((secs + PGBENCH_SLACK)) "$PG_BINDIR/pgbench" "${args[@]}" "$DB_NAME" \
        >"$out" 2>&1; then
        status=error
        log "  $target: pgbench failed (see $out):"
        tail -n 5 "$out" | sed 's/^/    /' >&2
    fi
    [[ -n $pid ]] && cpu1=$(proc_cpu_ns "$pid") csw1=$(proc_ctxsw "$pid")
    [[ $round == warmup ]] && return 0
    tps=$(pgbench_field tps "$out")
    lat=$(pgbench_field latency "$out")
    failed=$(pgbench_field failed "$out")
    tx=$(pgbench_field transactions "$out")
    if [[ -n $pid ]]; then
        cpu=$(awk -v d=$((cpu1 - cpu0)) 'BEGIN { printf "%.4f", d / 1e9 }')
        per1k=$(awk -v c="$cpu" -v t="${tx:-0}" 'BEGIN { if (t > 0) printf "%.5f", c * 1000 / t }')
        csw1k=$(awk -v c=$((csw1 - csw0)) -v t="${tx:-0}" 'BEGIN { if (t > 0) printf "%.1f", c * 1000 / t }')
    else
        cpu='' per1k='' csw1k=''
    fi
    [[ -n $tps ]] || status=error
    log "  $(printf '%-9s' "$target") tps ${tps:-?}  latency ${lat:-?} ms  failed ${failed:-?}  proxy cpu ${cpu:--} s (${per1k:--} s/1k tx)"
    echo "$scen,$round,$target,$clients,$jobs,$proto,$connect,$ssl,$BENCH_POOL_MODE,$pool,$secs,$status,$tps,$lat,$failed,$tx,$cpu,$per1k,$csw1k" >>"$RAW_CSV"
}

read -r -a targets <<<"$BENCH_TARGETS"

for spec in $BENCH_SCENARIOS; do
    IFS=: read -r scen clients jobs proto connect ssl <<<"$spec"
    [[ -n $ssl && $clients =~ ^[0-9]+$ && $jobs =~ ^[0-9]+$ && $connect =~ ^[01]$ ]] ||
        die "bad scenario \"$spec\" (NAME:CLIENTS:JOBS:PROTOCOL:CONNECT:SSLMODE)"
    pool=$BENCH_POOL_SIZE
    if [[ $BENCH_POOL_MODE == session ]] && ((BENCH_SESSION_FIT && clients > pool)); then
        pool=$clients
    fi
    log "scenario $scen: $clients clients, -j $jobs, -M $proto$( ((connect)) && echo ", -C")," \
        "sslmode=$ssl, $BENCH_POOL_MODE pool $pool"
    start_proxies "$pool" $((clients + 50)) "$scen"
    if ((BENCH_WARMUP > 0)); then
        for t in "${targets[@]}"; do
            supported "$t" "$proto" || continue
            run_one "$scen" warmup "$t" "$clients" "$jobs" "$proto" "$connect" "$ssl" \
                "$pool" "$BENCH_WARMUP"
        done
    fi
    for ((r = 1; r <= BENCH_ROUNDS; r++)); do
        log " round $r/$BENCH_ROUNDS"
        n=${#targets[@]}
        for ((i = 0; i < n; i++)); do # rotate the order each round
            t=${targets[$(((i + r - 1) % n))]}
            supported "$t" "$proto" || continue
            run_one "$scen" "$r" "$t" "$clients" "$jobs" "$proto" "$connect" "$ssl" \
                "$pool" "$BENCH_SECONDS"
        done
    done
    stop_proxies
done

# ---- idle memory ------------------------------------------------------------------------------

echo "target,clients,pool_size,rss_before_kb,rss_idle_kb,kb_per_client,servers_seen" >"$IDLE_CSV"
if ((BENCH_IDLE_CLIENTS > 0)); then
    n=$BENCH_IDLE_CLIENTS
    log "idle memory: $n clients, each logged in, one SELECT 1, then idle ${BENCH_IDLE_SECONDS}s"
    printf 'SELECT 1;\n\\sleep %s s\n' "$BENCH_IDLE_SECONDS" >"$WORK/idle.sql"
    chmod 644 "$WORK/idle.sql"
    for t in pgbouncer pgwarden; do
        [[ " $BENCH_TARGETS " == *" $t "* ]] || continue
        start_proxies "$n" $((n + 50)) idle "$t"
        case $t in
        pgbouncer) port=$PGBOUNCER_PORT pid=$PGBOUNCER_PID ;;
        pgwarden) port=$PGWARDEN_PORT pid=$PGWARDEN_PID ;;
        esac
        sleep 1
        rss0=$(proc_rss_kb "$pid")
        out=$WORK/pgbench-idle-$t.log
        PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=30 \
            timeout -k 5 $((BENCH_IDLE_SECONDS + PGBENCH_SLACK)) "$PG_BINDIR/pgbench" \
            -n -t 1 -c "$n" -j 2 -f "$WORK/idle.sql" -h 127.0.0.1 -p "$port" -U "$DB_USER" \
            "$DB_NAME" >"$out" 2>&1 &
        bpid=$!
        # Wait (bounded by the idle period) until every client holds its server.
        seen=0
        deadline=$((SECONDS + BENCH_IDLE_SECONDS))
        while ((SECONDS < deadline)); do
            seen=$(server_backends)
            ((seen >= n)) && break
            sleep 0.5
        done
        sleep 1
        rss1=$(proc_rss_kb "$pid")
        per=$(awk -v a="$rss0" -v b="$rss1" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
        ((seen >= n)) || log "  $t: only $seen of $n server connections seen (see $out)"
        log "  $(printf '%-9s' "$t") RSS $rss0 kB -> $rss1 kB: $per kB per idle client"
        echo "$t,$n,$n,$rss0,$rss1,$per,$seen" >>"$IDLE_CSV"
        wait "$bpid" || log "  $t: idle pgbench exited non-zero (see $out)"
        stop_proxies
    done
fi

# ---- report -----------------------------------------------------------------------------------

report "$RAW_CSV" "$IDLE_CSV" | tee "$SUMMARY"
log "raw results: $RAW_CSV, $IDLE_CSV; tables: $SUMMARY; pgbench and proxy logs: $WORK"
