#!/usr/bin/env bash
# bench/locks_pg.sh: pgwarden's locks beyond one process, [locks] backend = postgresql
# (issue 18's closing benchmark).  See bench/README.md, "Locks across instances".
#
#   bench/locks_pg.sh                       all three parts with the defaults (about 6 minutes)
#   LOCKSPG_SECONDS=5 LOCKSPG_ROUNDS=2 LOCKSPG_PARTS="pair hot" bench/locks_pg.sh
#
# Every instance is a fresh pgwarden (transaction pooling, auth trust, admin port) in front
# of the script's own PostgreSQL cluster; backend=postgresql instances share the lock space
# of that cluster's database (the benchmark user, who owns it, creates the token sequence).
#
# Part "pair", the grant round trip, uncontended: pgbench -n -r -M simple -f with
#   SELECT pgwarden_lock('k-N', 'exclusive'); SELECT pgwarden_unlock('k-N')   (N random in
#   1..1,000,000) through one instance with backend=local and one with backend=postgresql,
#   LOCKSPG_PAIR_CLIENTS clients; per round both targets in alternating order.  Per run:
#   tps, latency, pgbench's per-statement latency of the lock and the unlock call, the
#   instance's CPU and PostgreSQL's CPU (all its processes) per pair.
# Part "hot", one key handed over: two pgbench processes ("groups"), C clients each, every
#   transaction takes the key 'hot' exclusive, does the work, unlocks.  Targets:
#     two-pg     group a on instance pg1, group b on pg2 (backend=postgresql, one lock space)
#     one-pg     both groups on pg1                        (backend=postgresql)
#     one-local  both groups on one backend=local instance
#   Work (LOCKSPG_HOT_WORK): none (lock; unlock) or log (lock with \gset of the token;
#   INSERT (token, group, clock_timestamp()) into a table; unlock), which gives how many
#   grants went to the other group than the previous one (for two-pg: crossed instances)
#   and checks that the tokens increase in the order the critical sections ran.  Per run:
#   grants per second (sum of both groups' tps), the lock call's mean latency (pgbench -r),
#   the transaction latency's median and p99 (pgbench --log, both groups), CPU per grant.
# Part "waiters": LOCKSPG_WAITERS clients wait on one key, half through pg1 and half
#   through pg2 (bench/lock_waiters.c, one copy per instance; the key's holder is a client
#   of pg1), exclusive, each unlocks as soon as granted.  While all wait: PostgreSQL
#   connections whose application_name starts with 'pgwarden-locks', all client backends,
#   each instance's servers; then the time from the holder's unlock to the last grant, how
#   many grants crossed instances, and the tokens in grant order (all must increase) and in
#   each instance's request order (FIFO within an instance).
#
# Environment (defaults in brackets):
#   LOCKSPG_PARTS ["pair hot waiters"]
#   LOCKSPG_SECONDS [6] LOCKSPG_ROUNDS [3] LOCKSPG_WARMUP [2]   pgbench run length, rounds
#   LOCKSPG_PAIR_CLIENTS ["1 16"]  part pair's client counts (-j 1 for 1 client, 2 otherwise)
#   LOCKSPG_HOT_CLIENTS ["1 4"]    part hot's clients per group (-j 1 each)
#   LOCKSPG_HOT_WORK ["none log"]  part hot's work inside the lock
#   LOCKSPG_WAITERS [1000]         part waiters' clients (split over the two instances)
#   LOCKSPG_CONNECTIONS [2]        [locks] backend_connections of backend=postgresql
#   LOCKSPG_POOL_SIZE [20]         pool size of every instance
#   BUILD_DIR [build-bench]    LOCKSPG_OUT [BUILD_DIR/locks-pg-YYYYmmdd-HHMMSS]
#   PG_BINDIR [/usr/lib/postgresql/15/bin]
# Everything it starts is stopped by its PID on exit; every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

LOCKSPG_PARTS=${LOCKSPG_PARTS-pair hot waiters}
LOCKSPG_SECONDS=${LOCKSPG_SECONDS:-6}
LOCKSPG_ROUNDS=${LOCKSPG_ROUNDS:-3}
LOCKSPG_WARMUP=${LOCKSPG_WARMUP:-2}
LOCKSPG_PAIR_CLIENTS=${LOCKSPG_PAIR_CLIENTS:-1 16}
LOCKSPG_HOT_CLIENTS=${LOCKSPG_HOT_CLIENTS:-1 4}
LOCKSPG_HOT_WORK=${LOCKSPG_HOT_WORK:-none log}
LOCKSPG_WAITERS=${LOCKSPG_WAITERS:-1000}
LOCKSPG_CONNECTIONS=${LOCKSPG_CONNECTIONS:-2}
LOCKSPG_POOL_SIZE=${LOCKSPG_POOL_SIZE:-20}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
BUILD_DIR=${BUILD_DIR:-$root/build-bench}
LOCKSPG_OUT=${LOCKSPG_OUT:-$BUILD_DIR/locks-pg-$(date +%Y%m%d-%H%M%S)}

PROXY_START_TIMEOUT=20 # seconds until an instance answers SELECT 1 (used by lib.sh)
PROXY_STOP_TIMEOUT=10  # seconds after SIGTERM before SIGKILL (used by lib.sh)
PGBENCH_SLACK=60       # seconds a pgbench run may take beyond its -T
WAITERS_TIMEOUT=300    # seconds one lock_waiters copy may take
LOCK_TIMEOUT_MS=600000 # [locks] lock_timeout_ms: no lock call of the benchmark should time out

for v in LOCKSPG_SECONDS LOCKSPG_ROUNDS LOCKSPG_WARMUP LOCKSPG_WAITERS LOCKSPG_CONNECTIONS \
    LOCKSPG_POOL_SIZE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || {
        echo "bench: $v must be a non-negative integer" >&2
        exit 2
    }
done
((LOCKSPG_SECONDS > 0 && LOCKSPG_ROUNDS > 0 && LOCKSPG_POOL_SIZE > 0 && LOCKSPG_CONNECTIONS > 0)) || {
    echo "bench: LOCKSPG_SECONDS, LOCKSPG_ROUNDS, LOCKSPG_POOL_SIZE, LOCKSPG_CONNECTIONS must be positive" >&2
    exit 2
}
for p in $LOCKSPG_PARTS; do
    case $p in pair | hot | waiters) ;; *)
        echo "bench: unknown part $p (pair, hot, waiters)" >&2
        exit 2
        ;;
    esac
done
for w in $LOCKSPG_HOT_WORK; do
    [[ $w == none || $w == log ]] || {
        echo "bench: LOCKSPG_HOT_WORK: unknown work $w (none, log)" >&2
        exit 2
    }
done

# Our libpq settings must not come from the caller's environment.
for v in $(compgen -e | grep -E '^PG' || true); do
    case $v in PG_BINDIR) ;; *) unset "$v" ;; esac
done

# lib.sh's start_cluster reads these two.
BENCH_USERLIST=plain
BENCH_OUT=$LOCKSPG_OUT
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

CLUSTER_DIR=$LOCKSPG_OUT/cluster
WORK=$LOCKSPG_OUT/work
PAIR_CSV=$LOCKSPG_OUT/pair_runs.csv
HOT_CSV=$LOCKSPG_OUT/hot_runs.csv
WAIT_CSV=$LOCKSPG_OUT/waiters.csv
SUMMARY=$LOCKSPG_OUT/summary.txt
CLUSTER_STARTED=0
declare -A INST_PID=() INST_PORT=() INST_ADMIN=()
BG_PIDS=() # pgbench and lock_waiters running in the background

part_on() { [[ " $LOCKSPG_PARTS " == *" $1 "* ]]; }

stop_instances() {
    local n
    for n in "${!INST_PID[@]}"; do
        stop_pid "${INST_PID[$n]}" "pgwarden $n"
        unset "INST_PID[$n]" "INST_PORT[$n]" "INST_ADMIN[$n]"
    done
}

stop_background() {
    local p
    for p in ${BG_PIDS[@]+"${BG_PIDS[@]}"}; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in ${BG_PIDS[@]+"${BG_PIDS[@]}"}; do
        wait "$p" 2>/dev/null || true
    done
    BG_PIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_background
    stop_instances
    stop_cluster
    ((rc == 0)) || log "failed (exit $rc); logs in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

load1() { awk '{ print $1 }' /proc/loadavg; }

# ---- setup --------------------------------------------------------------------------------

mkdir -p "$LOCKSPG_OUT" "$WORK"
log "results in $LOCKSPG_OUT"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log "building pgwarden and lock_waiters (Release) in $BUILD_DIR"
timeout 600 cmake -S "$root" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >"$WORK/cmake.log" 2>&1 ||
    die "cmake configure failed: see $WORK/cmake.log"
timeout 900 cmake --build "$BUILD_DIR" --target pgwarden lock_waiters -j "$(nproc)" \
    >>"$WORK/cmake.log" 2>&1 || die "build failed: see $WORK/cmake.log"
WARDEN_BINARY=$BUILD_DIR/proxy/pgwarden
WAITERS_BINARY=$BUILD_DIR/bench/lock_waiters
[[ -x $WARDEN_BINARY && -x $WAITERS_BINARY ]] || die "$WARDEN_BINARY or $WAITERS_BINARY not built"
[[ -x $PG_BINDIR/pgbench ]] || die "$PG_BINDIR/pgbench not found"

start_cluster
CLK_TCK=$(getconf CLK_TCK)
DIRECT="host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME user=$DB_USER password=$DB_PASSWORD sslmode=disable"

# psql as the benchmark user, straight to PostgreSQL.
direct_sql() { # SQL
    PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=10 timeout 30 \
        "$PG_BINDIR/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" \
        -d "$DB_NAME" -c "$1"
}
# Transactions committed in the benchmark's database: with the log work's INSERTs aside,
# the statements of the lock connections (autocommit, one transaction each).
xact_commits() {
    direct_sql "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
}
direct_sql "CREATE TABLE bench_handover (token bigint NOT NULL, grp text NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp())" >/dev/null

# One pgwarden instance NAME with [locks] backend BACKEND (local or postgresql), files in
# $WORK/pgw-NAME-TAG; sets INST_PID, INST_PORT, INST_ADMIN of NAME.
start_instance() { # NAME BACKEND MAX_CLIENTS TAG
    local name=$1 backend=$2 maxc=$3 d=$WORK/pgw-$1-$4 port admin locks
    mkdir -p "$d"
    port=$(pick_port "$PG_PORT" ${INST_PORT[@]+"${INST_PORT[@]}"} ${INST_ADMIN[@]+"${INST_ADMIN[@]}"})
    admin=$(pick_port "$PG_PORT" "$port" ${INST_PORT[@]+"${INST_PORT[@]}"} \
        ${INST_ADMIN[@]+"${INST_ADMIN[@]}"})
    locks="backend = $backend"
    [[ $backend == postgresql ]] && locks+="
backend_conninfo = $DIRECT
backend_connections = $LOCKSPG_CONNECTIONS"
    cat >"$d/pgwarden.ini" <<EOF
; written by bench/locks_pg.sh
[pgwarden]
listen_addr = 127.0.0.1
listen_port = $port
admin_addr = 127.0.0.1
admin_port = $admin
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $LOCKSPG_POOL_SIZE
max_client_conn = $maxc
server_tls_mode = disable
server_reset_query = DISCARD ALL
query_wait_timeout_ms = 120000
shutdown_timeout_ms = 0
log_level = warning

[databases]
$DB_NAME = host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME pool_size=$LOCKSPG_POOL_SIZE

[locks]
$locks
lock_timeout_ms = $LOCK_TIMEOUT_MS
EOF
    "$WARDEN_BINARY" -c "$d/pgwarden.ini" >>"$d/pgwarden.log" 2>&1 &
    INST_PID[$name]=$!
    INST_PORT[$name]=$port
    INST_ADMIN[$name]=$admin
    wait_ready "pgwarden $name" "$port" "${INST_PID[$name]}" "$d/pgwarden.log"
}

inst_cpu() { # NAME... -> summed CPU ticks of those instances
    local n s=0
    for n in "$@"; do s=$((s + $(proc_cpu_ticks "${INST_PID[$n]}"))); done
    echo "$s"
}

# Per-statement latencies of pgbench -r: "lock,unlock" in ms ("" if absent).
statement_ms() { # FILE
    awk 'BEGIN { l = u = "" }
         /^statement latencies/ { on = 1; next }
         on && $1 ~ /^[0-9.]+$/ {
             if ($0 ~ /pgwarden_unlock\(/) u = $1
             else if ($0 ~ /pgwarden_lock\(/) l = $1
         }
         END { printf "%s,%s\n", l, u }' "$1"
}

# pgbench, bounded; 0 if it succeeded.
pgbench_run() { # PORT OUT ARGS...
    local port=$1 out=$2
    shift 2
    PGSSLMODE=disable PGCONNECT_TIMEOUT=30 \
        timeout -k 5 $((LOCKSPG_SECONDS + LOCKSPG_WARMUP + PGBENCH_SLACK)) "$PG_BINDIR/pgbench" \
        -n -r -M simple "$@" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME" >"$out" 2>&1
}

ratio_fmt() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "") printf "%.2f", a * 1e6 / b }'; }

# ---- part pair: the grant round trip, uncontended -----------------------------------------

cat >"$WORK/pair.sql" <<'EOF'
\set n random(1, 1000000)
SELECT pgwarden_lock('k-:n', 'exclusive');
SELECT pgwarden_unlock('k-:n');
EOF

echo "clients,round,target,status,load1,tps,latency_ms,lock_ms,unlock_ms,transactions,failed,pgw_cpu_us_per_tx,pg_cpu_us_per_tx" >"$PAIR_CSV"

run_pair() { # CLIENTS ROUND TARGET SECONDS
    local clients=$1 round=$2 target=$3 secs=$4 jobs=2 out status=ok c0 c1 p0 p1 ld
    local tps lat tx failed stm
    ((clients == 1)) && jobs=1
    out=$WORK/pair-$clients-$round-$target.log
    ld=$(load1)
    c0=$(inst_cpu "$target") p0=$(pg_cpu_ticks "$PG_PID")
    if ! pgbench_run "${INST_PORT[$target]}" "$out" -f "$WORK/pair.sql" -c "$clients" \
        -j "$jobs" -T "$secs"; then
        status=error
        log "  $target: pgbench failed (see $out):"
        tail -n 5 "$out" | sed 's/^/    /' >&2
    fi
    c1=$(inst_cpu "$target") p1=$(pg_cpu_ticks "$PG_PID")
    [[ $round == warmup ]] && return 0
    tps=$(pgbench_field tps "$out")
    lat=$(pgbench_field latency "$out")
    failed=$(pgbench_field failed "$out")
    tx=$(pgbench_field transactions "$out")
    stm=$(statement_ms "$out")
    [[ -n $tps ]] || status=error
    local cpu pgc
    cpu=$(ratio_fmt "$((c1 - c0))" "$((${tx:-0} * CLK_TCK))")
    pgc=$(ratio_fmt "$((p1 - p0))" "$((${tx:-0} * CLK_TCK))")
    log "  $(printf '%-6s' "$target") tps ${tps:-?}  latency ${lat:-?} ms  lock,unlock ms $stm" \
        " pgwarden ${cpu:-?} us/pair  PostgreSQL ${pgc:-?} us/pair  (load $ld)"
    echo "$clients,$round,$target,$status,$ld,$tps,$lat,$stm,$tx,$failed,$cpu,$pgc" >>"$PAIR_CSV"
}

if part_on pair; then
    pair_targets=(local pg)
    for clients in $LOCKSPG_PAIR_CLIENTS; do
        log "pair, $clients client(s): backend=local vs backend=postgresql" \
            "(backend_connections $LOCKSPG_CONNECTIONS), transaction pool $LOCKSPG_POOL_SIZE"
        stop_instances
        start_instance local local $((clients + 50)) "pair-$clients"
        start_instance pg postgresql $((clients + 50)) "pair-$clients"
        if ((LOCKSPG_WARMUP > 0)); then
            for t in "${pair_targets[@]}"; do run_pair "$clients" warmup "$t" "$LOCKSPG_WARMUP"; done
        fi
        for ((r = 1; r <= LOCKSPG_ROUNDS; r++)); do
            log " round $r/$LOCKSPG_ROUNDS"
            for ((i = 0; i < 2; i++)); do # alternate the order each round
                run_pair "$clients" "$r" "${pair_targets[$(((i + r - 1) % 2))]}" "$LOCKSPG_SECONDS"
            done
        done
        stop_instances
    done
fi

# ---- part hot: one key handed over ---------------------------------------------------------

cat >"$WORK/hot-none.sql" <<'EOF'
SELECT pgwarden_lock('hot', 'exclusive');
SELECT pgwarden_unlock('hot');
EOF
cat >"$WORK/hot-log.sql" <<'EOF'
SELECT pgwarden_lock('hot', 'exclusive') AS tok \gset
INSERT INTO bench_handover (token, grp) VALUES (:tok, ':grp');
SELECT pgwarden_unlock('hot');
EOF

echo "work,clients,round,target,status,load1,grants_per_s,tps_a,tps_b,grants,failed,lock_ms,unlock_ms,tx_p50_ms,tx_p99_ms,tx_max_ms,pgw_cpu_us_per_grant,pg_cpu_us_per_grant,logged,switches,order_violations,pg_statements_per_grant" >"$HOT_CSV"

# Percentiles of the transaction latency (us) in pgbench --log files: "p50,p99,max" in ms.
log_percentiles() { # FILES...
    cat "$@" 2>/dev/null | awk '{ print $3 }' | sort -n | awk '
        { v[NR] = $1 }
        function q(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; return v[i] / 1000 }
        END { if (NR) printf "%.3f,%.3f,%.3f", q(0.5), q(0.99), v[NR] / 1000; else printf ",," }'
}

run_hot() { # WORK CLIENTS ROUND TARGET SECONDS
    local work=$1 clients=$2 round=$3 target=$4 secs=$5 status=ok ia ib insts ld
    local base=$WORK/hot-$1-$2-$3-$4 c0 c1 p0 p1 pa pb extra=()
    case $target in
    two-pg) ia=pg1 ib=pg2 insts=(pg1 pg2) ;;
    one-pg) ia=pg1 ib=pg1 insts=(pg1) ;;
    one-local) ia=local ib=local insts=(local) ;;
    *) die "unknown target $target" ;;
    esac
    [[ $round == warmup ]] || extra=(--log --log-prefix="$base")
    [[ $work == log ]] && direct_sql "TRUNCATE bench_handover" >/dev/null
    ld=$(load1)
    local x0 x1 stmts=''
    x0=$(xact_commits) || true
    c0=$(inst_cpu "${insts[@]}") p0=$(pg_cpu_ticks "$PG_PID")
    pgbench_run "${INST_PORT[$ia]}" "$base-a.out" -f "$WORK/hot-$work.sql" -D grp=a \
        -c "$clients" -j 1 -T "$secs" ${extra[@]+"${extra[@]}"} &
    pa=$!
    pgbench_run "${INST_PORT[$ib]}" "$base-b.out" -f "$WORK/hot-$work.sql" -D grp=b \
        -c "$clients" -j 1 -T "$secs" ${extra[@]+"${extra[@]}"} &
    pb=$!
    BG_PIDS=("$pa" "$pb")
    wait "$pa" || status=error
    wait "$pb" || status=error
    BG_PIDS=()
    c1=$(inst_cpu "${insts[@]}") p1=$(pg_cpu_ticks "$PG_PID")
    if [[ $round != warmup && $target != one-local ]]; then
        # statements of the lock connections (each one a transaction of the database); an
        # idle backend reports its counts within a second
        sleep 1.5
        x1=$(xact_commits) || true
    fi
    if [[ $status != ok ]]; then
        log "  $target: a pgbench failed (see $base-a.out, $base-b.out):"
        tail -n 3 "$base-a.out" "$base-b.out" | sed 's/^/    /' >&2
    fi
    [[ $round == warmup ]] && return 0
    local ta tb xa xb fa fb sa sb g gps lock unlock pct cpu pgc logged='' sw='' viol=''
    ta=$(pgbench_field tps "$base-a.out") tb=$(pgbench_field tps "$base-b.out")
    xa=$(pgbench_field transactions "$base-a.out") xb=$(pgbench_field transactions "$base-b.out")
    fa=$(pgbench_field failed "$base-a.out") fb=$(pgbench_field failed "$base-b.out")
    sa=$(statement_ms "$base-a.out") sb=$(statement_ms "$base-b.out")
    [[ -n $ta && -n $tb ]] || status=error
    g=$((${xa:-0} + ${xb:-0}))
    gps=$(awk -v a="${ta:-0}" -v b="${tb:-0}" 'BEGIN { printf "%.0f", a + b }')
    # the lock and unlock calls' mean latency over both groups, weighted by transactions
    read -r lock unlock < <(awk -v sa="$sa" -v sb="$sb" -v xa="${xa:-0}" -v xb="${xb:-0}" 'BEGIN {
        split(sa, a, ","); split(sb, b, ","); t = xa + xb
        if (t > 0 && a[1] != "" && b[1] != "")
            printf "%.3f %.3f\n", (a[1] * xa + b[1] * xb) / t, (a[2] * xa + b[2] * xb) / t
        else print "- -" }') || true
    pct=$(log_percentiles "$base".*)
    rm -f "$base".* # the per-transaction logs are large; the percentiles are kept
    cpu=$(ratio_fmt "$((c1 - c0))" "$((g * CLK_TCK))")
    pgc=$(ratio_fmt "$((p1 - p0))" "$((g * CLK_TCK))")
    if [[ -n ${x0:-} && -n ${x1:-} && $g -gt 0 ]]; then
        # minus the TRUNCATE of log work and the query that read x1
        stmts=$(awk -v d="$((x1 - x0))" -v g="$g" -v w="$work" 'BEGIN {
            printf "%.2f", (d - 1 - (w == "log")) / g }')
    fi
    if [[ $work == log ]]; then
        # In token order: rows, changes of group from one grant to the next, and rows
        # written no later than the row of the previous token (the critical sections ran in
        # another order than the tokens say; must be 0).
        IFS='|' read -r logged sw viol < <(direct_sql "SELECT count(*),
                count(*) FILTER (WHERE prev_grp IS NOT NULL AND grp <> prev_grp),
                count(*) FILTER (WHERE at <= prev_at OR token = prev_token)
              FROM (SELECT grp, at, token, lag(grp) OVER w AS prev_grp, lag(at) OVER w AS prev_at,
                           lag(token) OVER w AS prev_token
                      FROM bench_handover WINDOW w AS (ORDER BY token)) s") || true
    fi
    log "  $(printf '%-9s' "$target") ${gps} grants/s (a ${ta:-?}, b ${tb:-?})  lock ${lock} ms" \
        " tx p50,p99,max ms $pct  pgwarden ${cpu:-?} us/grant  PostgreSQL ${pgc:-?} us/grant" \
        "${logged:+ logged $logged, switches $sw, order violations $viol} (load $ld)"
    echo "$work,$clients,$round,$target,$status,$ld,$gps,$ta,$tb,$g,$((${fa:-0} + ${fb:-0})),$lock,$unlock,$pct,$cpu,$pgc,$logged,$sw,$viol,$stmts" >>"$HOT_CSV"
}

if part_on hot; then
    hot_targets=(two-pg one-pg one-local)
    for work in $LOCKSPG_HOT_WORK; do
        for clients in $LOCKSPG_HOT_CLIENTS; do
            log "hot, work $work, $clients client(s) per group, two groups"
            stop_instances
            start_instance local local $((2 * clients + 50)) "hot-$work-$clients"
            start_instance pg1 postgresql $((2 * clients + 50)) "hot-$work-$clients"
            start_instance pg2 postgresql $((2 * clients + 50)) "hot-$work-$clients"
            if ((LOCKSPG_WARMUP > 0)); then
                for t in "${hot_targets[@]}"; do
                    run_hot "$work" "$clients" warmup "$t" "$LOCKSPG_WARMUP"
                done
            fi
            for ((r = 1; r <= LOCKSPG_ROUNDS; r++)); do
                log " round $r/$LOCKSPG_ROUNDS"
                for ((i = 0; i < 3; i++)); do # rotate the order each round
                    run_hot "$work" "$clients" "$r" "${hot_targets[$(((i + r - 1) % 3))]}" \
                        "$LOCKSPG_SECONDS"
                done
            done
            stop_instances
        done
    done
fi

# ---- part waiters: many waiters on one key across two instances ------------------------------

wait_file() { # FILE PID SECONDS: waits until FILE exists while PID runs
    local deadline=$((SECONDS + $3))
    while [[ ! -e $1 ]]; do
        kill -0 "$2" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

metrics_sum() { # NAME ADMIN_PORT [LABEL_FILTER]: sum of a metric's samples on /metrics
    timeout 10 curl -s "http://127.0.0.1:$2/metrics" |
        awk -v n="$1" -v f="${3:-}" 'index($0, n) == 1 && (substr($0, length(n) + 1, 1) ~ /[ {]/) &&
            index($0, f) { s += $NF } END { print s + 0 }'
}

wait_cols="status waiters per_instance load1 lock_conns lock_conns_pg1 lock_conns_pg2 client_backends servers_before_pg1 servers_before_pg2 servers_pg1 servers_pg2 servers_active_pg1 servers_active_pg2 queued_pg1 queued_pg2 granted failures grant_all_ms crossings tokens_in_grant_order_violations fifo_violations_pg1 fifo_violations_pg2 pgw_cpu_s lock_conns_max_during lock_conns_at_end"
echo "${wait_cols// /,}" >"$WAIT_CSV"

if part_on waiters && ((LOCKSPG_WAITERS >= 2)); then
    half_a=$((LOCKSPG_WAITERS / 2))
    half_b=$((LOCKSPG_WAITERS - half_a))
    need=$((LOCKSPG_WAITERS + 300))
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < need)); then
        die "open files hard limit $hard < $need: lower LOCKSPG_WAITERS"
    fi
    ulimit -n "$hard" # pgwarden and lock_waiters inherit it
    log "waiters: $LOCKSPG_WAITERS clients wait for one key (exclusive), $half_a through pg1" \
        "(which also has the holder), $half_b through pg2; backend_connections $LOCKSPG_CONNECTIONS"
    stop_instances
    start_instance pg1 postgresql $((half_a + 100)) waiters
    start_instance pg2 postgresql $((half_b + 100)) waiters
    wdir=$WORK/waiters
    mkdir -p "$wdir"
    rm -f "$wdir"/*
    wstatus=ok
    ld=$(load1)
    # servers the instances hold before the clients connect (wait_ready's SELECT 1 opened one)
    sb1=$(metrics_sum pgwarden_servers "${INST_ADMIN[pg1]}")
    sb2=$(metrics_sum pgwarden_servers "${INST_ADMIN[pg2]}")
    common=(-m exclusive -s session -k bench:pg-waiters -b 1 -t "$((WAITERS_TIMEOUT - 30))"
        -g "$wdir/go")
    timeout -k 5 "$WAITERS_TIMEOUT" "$WAITERS_BINARY" "${common[@]}" -n "$half_a" \
        -d "host=127.0.0.1 port=${INST_PORT[pg1]} dbname=$DB_NAME user=$DB_USER sslmode=disable" \
        -p "${INST_PID[pg1]}" -a "${INST_ADMIN[pg1]}" -r "$wdir/ready-pg1" \
        -o "$wdir/tokens-pg1" >"$wdir/pg1.out" 2>"$wdir/pg1.err" &
    wa=$!
    BG_PIDS=("$wa")
    wait_file "$wdir/ready-pg1" "$wa" 120 || die "lock_waiters on pg1 did not queue (see $wdir/pg1.err)"
    timeout -k 5 "$WAITERS_TIMEOUT" "$WAITERS_BINARY" "${common[@]}" -n "$half_b" -H \
        -d "host=127.0.0.1 port=${INST_PORT[pg2]} dbname=$DB_NAME user=$DB_USER sslmode=disable" \
        -p "${INST_PID[pg2]}" -a "${INST_ADMIN[pg2]}" -r "$wdir/ready-pg2" \
        -o "$wdir/tokens-pg2" >"$wdir/pg2.out" 2>"$wdir/pg2.err" &
    wb=$!
    BG_PIDS=("$wa" "$wb")
    wait_file "$wdir/ready-pg2" "$wb" 120 || die "lock_waiters on pg2 did not queue (see $wdir/pg2.err)"

    # Everyone waits: what PostgreSQL and the instances hold now.
    lock_conns_sql="SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgwarden-locks%'"
    lc=$(superuser_sql "$lock_conns_sql")
    lc1=$(superuser_sql "$lock_conns_sql AND application_name LIKE '%:${INST_PID[pg1]}'")
    lc2=$(superuser_sql "$lock_conns_sql AND application_name LIKE '%:${INST_PID[pg2]}'")
    cb=$(server_backends)
    s1=$(metrics_sum pgwarden_servers "${INST_ADMIN[pg1]}")
    s2=$(metrics_sum pgwarden_servers "${INST_ADMIN[pg2]}")
    sa1=$(metrics_sum pgwarden_servers "${INST_ADMIN[pg1]}" 'state="active"')
    sa2=$(metrics_sum pgwarden_servers "${INST_ADMIN[pg2]}" 'state="active"')
    superuser_sql "SELECT application_name, state, backend_type FROM pg_stat_activity
                   WHERE usename = '$DB_USER' ORDER BY 1" >"$wdir/pg_stat_activity.txt" 2>&1 || true
    log "  all queued: $lc lock connections (pg1 $lc1, pg2 $lc2), $cb client backends of the" \
        "benchmark user; pgwarden servers pg1 $s1 (active $sa1, $sb1 before the clients)," \
        "pg2 $s2 (active $sa2, $sb2 before)"
    c0=$(inst_cpu pg1 pg2)
    : >"$wdir/go" # the holder (on pg1) releases
    # sample the lock connections while the grants run
    lc_during=$lc
    while kill -0 "$wa" 2>/dev/null || kill -0 "$wb" 2>/dev/null; do
        n=$(superuser_sql "$lock_conns_sql" 2>/dev/null || echo 0)
        ((n > lc_during)) && lc_during=$n
        sleep 0.3
    done
    wait "$wa" || wstatus=error
    wait "$wb" || wstatus=error
    BG_PIDS=()
    c1=$(inst_cpu pg1 pg2)
    lc_end=$(superuser_sql "$lock_conns_sql")
    for i in pg1 pg2; do
        log "  lock_waiters on $i:"
        sed 's/^/    /' "$wdir/$i.out" >&2
        [[ -s $wdir/$i.err ]] && sed 's/^/    stderr: /' "$wdir/$i.err" >&2
    done
    kv() { awk -F= -v k="$2" '$1 == k { print $2; exit }' "$wdir/$1.out"; }
    # All grants of both instances in the order they were seen (CLOCK_MONOTONIC): each
    # waiter unlocks only after it saw its grant, so this is the grant order; the tokens
    # must increase along it.  crossings: grants on another instance than the one before.
    release_ns=$(kv pg1 release_mono_ns)
    read -r granted crossings inversions last_ns < <(
        { awk '$2 >= 0 { print $3, $2, "pg1" }' "$wdir/tokens-pg1"
          awk '$2 >= 0 { print $3, $2, "pg2" }' "$wdir/tokens-pg2"; } | sort -n -k1,1 |
            awk '# tokens (about 1.8e18) exceed a double'"'"'s 53 bits: compared as digit strings
                 function gt(a, b) { return length(a) != length(b) ? length(a) > length(b) : (a "") > (b "") }
                 { n++; if (n > 1) { if ($3 != pi) c++; if (!gt($2, pt)) v++ }
                   pi = $3; pt = $2; last = $1 }
                 END { printf "%d %d %d %s\n", n, c, v, (n ? last : 0) }') || true
    grant_ms=$(awk -v a="$release_ns" -v b="$last_ns" 'BEGIN { if (a > 0 && b > a) printf "%.1f", (b - a) / 1e6 }')
    f1=$(kv pg1 failures) f2=$(kv pg2 failures)
    failures=$((${f1:-0} + ${f2:-0}))
    cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')
    ((granted == LOCKSPG_WAITERS && failures == 0 && inversions == 0)) || wstatus=error
    log "  all $granted granted ${grant_ms:-?} ms after the holder's unlock; $crossings grants" \
        "crossed instances; token order violations $inversions; FIFO violations pg1" \
        "$(kv pg1 fifo_violations), pg2 $(kv pg2 fifo_violations); pgwarden cpu $cpu s (both);" \
        "lock connections at most $lc_during during the grants, $lc_end after (load $ld)"
    echo "$wstatus,$LOCKSPG_WAITERS,$half_a/$half_b,$ld,$lc,$lc1,$lc2,$cb,$sb1,$sb2,$s1,$s2,$sa1,$sa2,$(kv pg1 queued_seen_by_pgwarden),$(kv pg2 queued_seen_by_pgwarden),$granted,$failures,$grant_ms,$crossings,$inversions,$(kv pg1 fifo_violations),$(kv pg2 fifo_violations),$cpu,$lc_during,$lc_end" >>"$WAIT_CSV"
    stop_instances
fi

# ---- report -------------------------------------------------------------------------------

report_pg() {
    local awklib='
    function sort(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
    function stats(s,   a, n, x) { n = split(s, a, " "); if (n == 0) return 0
        for (x = 1; x <= n; x++) a[x] += 0
        sort(a, n)
        med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        lo = a[1]; hi = a[n]; return n }
    function cell(s, fmt) { if (stats(s) == 0) return "-"
        return sprintf(fmt " (" fmt ".." fmt ")", med, lo, hi) }
    function m(s) { return stats(s) == 0 ? "" : med }
    function ratio(x, y) { return (x != "" && y != "" && y > 0) ? sprintf("%.2fx", x / y) : "n/a" }'
    awk -F, -v rounds="$LOCKSPG_ROUNDS" -v secs="$LOCKSPG_SECONDS" "$awklib"'
    NR == 1 { next }
    $4 != "ok" { bad[$1, $3]++; next }
    {
        g = $1; k = g SUBSEP $3
        if (!(g in seen)) { seen[g] = 1; order[++ng] = g }
        if (!((g, $3) in ts)) { ts[g, $3] = 1; tord[g, ++nt[g]] = $3 }
        ld[k] = ld[k] " " $5; tps[k] = tps[k] " " $6; lat[k] = lat[k] " " $7
        if ($8 != "") lck[k] = lck[k] " " $8
        if ($9 != "") unl[k] = unl[k] " " $9
        if ($12 != "") cpu[k] = cpu[k] " " $12
        if ($13 != "") pgc[k] = pgc[k] " " $13
        fail[k] += $11
    }
    END {
        if (ng) printf "== pair: lock + unlock of a random key (uncontended), pgbench -M simple -r, %d round(s) x %d s; median (min..max) over rounds\n", rounds, secs
        for (i = 1; i <= ng; i++) {
            g = order[i]
            printf "\n-- %s client(s)\n%-7s %-22s %-22s %-22s %-22s %-18s %-18s %-14s %s\n", g, "backend",
                   "tps", "latency ms", "lock call ms", "unlock call ms", "pgwarden us/pair",
                   "PostgreSQL us/pair", "load", "failed"
            for (j = 1; j <= nt[g]; j++) {
                t = tord[g, j]; k = g SUBSEP t
                printf "%-7s %-22s %-22s %-22s %-22s %-18s %-18s %-14s %d%s\n", t, cell(tps[k], "%.0f"),
                       cell(lat[k], "%.3f"), cell(lck[k], "%.3f"), cell(unl[k], "%.3f"),
                       cell(cpu[k], "%.0f"), cell(pgc[k], "%.0f"), cell(ld[k], "%.1f"), fail[k],
                       (bad[g, t] ? "  (" bad[g, t] " failed runs)" : "")
            }
            a = g SUBSEP "pg"; b = g SUBSEP "local"
            printf "postgresql/local (of medians): lock call %s, tps %s, pgwarden cpu per pair %s\n",
                   ratio(m(lck[a]), m(lck[b])), ratio(m(tps[a]), m(tps[b])), ratio(m(cpu[a]), m(cpu[b]))
        }
    }' "$PAIR_CSV"
    awk -F, -v rounds="$LOCKSPG_ROUNDS" -v secs="$LOCKSPG_SECONDS" "$awklib"'
    NR == 1 { next }
    $5 != "ok" { bad[$1, $2, $4]++; next }
    {
        g = $1 SUBSEP $2; k = g SUBSEP $4
        if (!(g in seen)) { seen[g] = 1; order[++ng] = g }
        if (!((g, $4) in ts)) { ts[g, $4] = 1; tord[g, ++nt[g]] = $4 }
        ld[k] = ld[k] " " $6; gps[k] = gps[k] " " $7; fail[k] += $11
        if ($12 != "-" && $12 != "") lck[k] = lck[k] " " $12
        if ($14 != "") p50[k] = p50[k] " " $14
        if ($15 != "") p99[k] = p99[k] " " $15
        if ($17 != "") cpu[k] = cpu[k] " " $17
        if ($18 != "") pgc[k] = pgc[k] " " $18
        if ($19 != "" && $19 > 0) { sw[k] = sw[k] " " ($20 * 100 / $19); viol[k] += $21 }
        if ($22 != "") st[k] = st[k] " " $22
    }
    END {
        if (ng) printf "\n== hot: two client groups take one key exclusive in turn, %d round(s) x %d s; median (min..max) over rounds\n", rounds, secs
        for (i = 1; i <= ng; i++) {
            g = order[i]; split(g, p, SUBSEP)
            printf "\n-- work %s, %s client(s) per group\n%-9s %-20s %-22s %-22s %-22s %-18s %-18s %-20s %-20s %-14s %s\n",
                   p[1], p[2], "target", "grants/s", "lock call ms (mean)", "tx p50 ms", "tx p99 ms",
                   "pgwarden us/grant", "PostgreSQL us/grant", "PG statements/grant", "group switches %", "load", "failed"
            for (j = 1; j <= nt[g]; j++) {
                t = tord[g, j]; k = g SUBSEP t
                printf "%-9s %-20s %-22s %-22s %-22s %-18s %-18s %-20s %-20s %-14s %d%s%s\n", t,
                       cell(gps[k], "%.0f"), cell(lck[k], "%.3f"), cell(p50[k], "%.3f"),
                       cell(p99[k], "%.3f"), cell(cpu[k], "%.0f"), cell(pgc[k], "%.0f"),
                       cell(st[k], "%.2f"), cell(sw[k], "%.1f"), cell(ld[k], "%.1f"), fail[k],
                       (p[1] == "log" ? "  order violations " viol[k] + 0 : ""),
                       (bad[p[1], p[2], t] ? "  (" bad[p[1], p[2], t] " failed runs)" : "")
            }
        }
    }' "$HOT_CSV"
    awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { printf "\n== waiters: %s clients (%s over pg1/pg2) wait for one key held by a client of pg1 (%s, load %s)\n",
             $col["waiters"], $col["per_instance"], $col["status"], $col["load1"]
      printf "  while waiting: %s lock connections (pg1 %s, pg2 %s; at most %s during the grants, %s after), %s client backends of the user; pgwarden servers pg1 %s (active %s; %s before the clients connected), pg2 %s (active %s; %s before)\n",
             $col["lock_conns"], $col["lock_conns_pg1"], $col["lock_conns_pg2"], $col["lock_conns_max_during"],
             $col["lock_conns_at_end"], $col["client_backends"], $col["servers_pg1"], $col["servers_active_pg1"],
             $col["servers_before_pg1"], $col["servers_pg2"], $col["servers_active_pg2"], $col["servers_before_pg2"]
      printf "  all %s granted %s ms after the holder unlocked (%s failures); %s grants crossed instances; tokens out of grant order: %s; FIFO violations pg1 %s, pg2 %s; pgwarden cpu %s s (both)\n",
             $col["granted"], $col["grant_all_ms"], $col["failures"], $col["crossings"],
             $col["tokens_in_grant_order_violations"], $col["fifo_violations_pg1"],
             $col["fifo_violations_pg2"], $col["pgw_cpu_s"] }' "$WAIT_CSV"
}

{
    echo "bench/locks_pg.sh $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs; load average (1, 5, 15 min)" \
        "at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    report_pg
} | tee "$SUMMARY"
log "raw results: $PAIR_CSV, $HOT_CSV, $WAIT_CSV; tables: $SUMMARY; logs: $WORK"
