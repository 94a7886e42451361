#!/usr/bin/env bash
# bench/locks.sh: pgwarden's named locks against PostgreSQL advisory locks through PgBouncer
# (issue 14's closing benchmark).  See bench/README.md, "Locks".
#
#   bench/locks.sh                           both parts with the defaults (about 10-12 minutes)
#   LOCKS_SECONDS=5 LOCKS_ROUNDS=3 LOCKS_WAITERS=2000 bench/locks.sh
#
# Part 1, round trips (pgbench -f custom scripts, -M simple, -n, -r):
#   xact  BEGIN; lock; UPDATE pgbench_accounts (one row); COMMIT
#         pgwarden (transaction pooling): SELECT pgwarden_xact_lock('acct-N', 'exclusive')
#         PgBouncer (transaction pooling) and PostgreSQL directly: SELECT pg_advisory_xact_lock(N)
#   pair  a bare lock/unlock pair, no transaction block
#         pgwarden (transaction pooling): pgwarden_lock('acct-N', 'exclusive'); pgwarden_unlock
#         PgBouncer (session pooling: a session advisory lock taken on one server and released
#         on another would leak in transaction pooling) and directly: pg_advisory_lock(N);
#         pg_advisory_unlock(N)
#   N is random in 1..100000*scale, so the locks are uncontended.  Every (scenario, clients)
#   gets fresh proxies, an unrecorded warm-up per target, then LOCKS_ROUNDS rounds that run
#   every target once in rotated order.  Per run: tps, average latency, pgbench's
#   per-statement latency of the lock call (its round trip), the proxy's CPU per transaction.
# Part 2, waiters: bench/lock_waiters.c with LOCKS_WAITERS clients queued on one key through
#   a fresh pgwarden (transaction pooling) per mode: pgwarden's RSS per waiter, the server
#   connections used while they wait, the time to grant them all after the holder leaves,
#   and FIFO order by fencing token.
#
# Environment (defaults in brackets):
#   LOCKS_SECONDS [10] LOCKS_ROUNDS [3] LOCKS_WARMUP [2]   pgbench run length, rounds, warm-up
#   LOCKS_CLIENTS ["1 16"]     pgbench client counts (-j 1 for 1 client, 2 otherwise)
#   LOCKS_SCENARIOS ["xact pair"]   set but empty: skip part 1
#   LOCKS_TARGETS ["direct pgbouncer pgwarden"]; add pgw-advisory for pgwarden running the
#                              advisory-lock script (the proxy hop without pgwarden's locks)
#   LOCKS_POOL_SIZE [20]       pool size of both proxies
#   LOCKS_SCALE [10]           pgbench -i scale
#   LOCKS_WAITERS [10000]      waiters of part 2 (0: skip part 2)
#   LOCKS_WAITER_MODES ["exclusive read"]  mode the waiters ask for (the holder: exclusive)
#   LOCKS_WAITER_SCOPE [session]  session (pgwarden_lock/unlock) or xact (BEGIN,
#                              pgwarden_xact_lock, COMMIT)
#   LOCKS_WAITER_BATCH [1]     requests sent before waiting until pgwarden counts them queued
#   LOCKS_WAITER_AUTH [trust]  pgwarden's auth_type for part 2 (scram-sha-256: libpq then
#                              spends ~2 ms of CPU per login on PBKDF2)
#   BUILD_DIR [build-bench]    LOCKS_OUT [BUILD_DIR/locks-YYYYmmdd-HHMMSS]
#   PG_BINDIR [/usr/lib/postgresql/15/bin]  PGBOUNCER [/usr/sbin/pgbouncer]
# Everything it starts is stopped by its PID on exit; every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

LOCKS_SECONDS=${LOCKS_SECONDS:-10}
LOCKS_ROUNDS=${LOCKS_ROUNDS:-3}
LOCKS_WARMUP=${LOCKS_WARMUP:-2}
LOCKS_CLIENTS=${LOCKS_CLIENTS:-1 16}
LOCKS_SCENARIOS=${LOCKS_SCENARIOS-xact pair}
LOCKS_TARGETS=${LOCKS_TARGETS:-direct pgbouncer pgwarden}
LOCKS_POOL_SIZE=${LOCKS_POOL_SIZE:-20}
LOCKS_SCALE=${LOCKS_SCALE:-10}
LOCKS_WAITERS=${LOCKS_WAITERS:-10000}
LOCKS_WAITER_MODES=${LOCKS_WAITER_MODES-exclusive read}
LOCKS_WAITER_SCOPE=${LOCKS_WAITER_SCOPE:-session}
LOCKS_WAITER_BATCH=${LOCKS_WAITER_BATCH:-1}
LOCKS_WAITER_AUTH=${LOCKS_WAITER_AUTH:-trust}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
BUILD_DIR=${BUILD_DIR:-$root/build-bench}
LOCKS_OUT=${LOCKS_OUT:-$BUILD_DIR/locks-$(date +%Y%m%d-%H%M%S)}

PROXY_START_TIMEOUT=20 # seconds until a proxy answers SELECT 1 (used by lib.sh)
PROXY_STOP_TIMEOUT=10  # seconds after SIGTERM before SIGKILL (used by lib.sh)
PGBENCH_SLACK=90       # seconds a pgbench run may take beyond its -T
WAITERS_TIMEOUT=900    # seconds one lock_waiters run may take

for v in LOCKS_SECONDS LOCKS_ROUNDS LOCKS_WARMUP LOCKS_POOL_SIZE LOCKS_SCALE LOCKS_WAITERS \
    LOCKS_WAITER_BATCH; do
    [[ ${!v} =~ ^[0-9]+$ ]] || {
        echo "bench: $v must be a non-negative integer" >&2
        exit 2
    }
done
((LOCKS_SECONDS > 0 && LOCKS_ROUNDS > 0 && LOCKS_POOL_SIZE > 0 && LOCKS_WAITER_BATCH > 0)) || {
    echo "bench: LOCKS_SECONDS, LOCKS_ROUNDS, LOCKS_POOL_SIZE, LOCKS_WAITER_BATCH must be positive" >&2
    exit 2
}
[[ $LOCKS_WAITER_SCOPE == session || $LOCKS_WAITER_SCOPE == xact ]] || {
    echo "bench: LOCKS_WAITER_SCOPE must be session or xact" >&2
    exit 2
}

# Our libpq settings must not come from the caller's environment.
for v in $(compgen -e | grep -E '^PG' || true); do
    case $v in PG_BINDIR) ;; *) unset "$v" ;; esac
done

# shellcheck source=bench/lib.sh
. "$here/lib.sh"

CLUSTER_DIR=$LOCKS_OUT/cluster
WORK=$LOCKS_OUT/work
RAW_CSV=$LOCKS_OUT/locks_runs.csv
WAIT_CSV=$LOCKS_OUT/locks_waiters.csv
SUMMARY=$LOCKS_OUT/summary.txt
PGBOUNCER_PID=
PGWARDEN_PID=
PGW_BATCH_PID=
CLUSTER_STARTED=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_proxies
    if ((CLUSTER_STARTED)); then
        "$root/tests/fixture/pgcluster.sh" stop "$CLUSTER_DIR" >/dev/null 2>&1 ||
            log "stopping the cluster failed (see $CLUSTER_DIR/postgres.log)"
    fi
    ((rc == 0)) || log "failed (exit $rc); logs in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- setup --------------------------------------------------------------------------------

mkdir -p "$LOCKS_OUT" "$WORK"
log "results in $LOCKS_OUT"

log "building pgwarden and lock_waiters (Release) in $BUILD_DIR"
timeout 600 cmake -S "$root" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >"$WORK/cmake.log" 2>&1 ||
    die "cmake configure failed: see $WORK/cmake.log"
timeout 900 cmake --build "$BUILD_DIR" --target pgwarden lock_waiters -j "$(nproc)" \
    >>"$WORK/cmake.log" 2>&1 || die "build failed: see $WORK/cmake.log"
WARDEN_BINARY=$BUILD_DIR/proxy/pgwarden
WAITERS_BINARY=$BUILD_DIR/bench/lock_waiters
[[ -x $WARDEN_BINARY && -x $WAITERS_BINARY ]] || die "$WARDEN_BINARY or $WAITERS_BINARY not built"
[[ -x $PGBOUNCER ]] || die "$PGBOUNCER not found: apt-get install pgbouncer"
[[ -x $PG_BINDIR/pgbench ]] || die "$PG_BINDIR/pgbench not found"

log "starting PostgreSQL"
CLUSTER_STARTED=1
PG_BINDIR=$PG_BINDIR "$root/tests/fixture/pgcluster.sh" start "$CLUSTER_DIR" >/dev/null
cluster_env() { # KEY -> its value in the cluster's env file
    awk -v k="$1" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); exit }' \
        "$CLUSTER_DIR/env"
}
PG_PORT=$(cluster_env PGPORT)
DB_USER=$(cluster_env PGCLUSTER_USER)
DB_PASSWORD=$(cluster_env PGCLUSTER_PASSWORD)
DB_NAME=$(cluster_env PGCLUSTER_DB)
DB_SOCKET_DIR=$(cluster_env PGCLUSTER_SOCKET_DIR)
DB_SUPERUSER=$(cluster_env PGCLUSTER_SUPERUSER)
[[ -n $PG_PORT && -n $DB_USER && -n $DB_NAME ]] || die "cannot read $CLUSTER_DIR/env"

printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" >"$WORK/userlist.txt"
chmod 600 "$WORK/userlist.txt"
if [[ $(id -u) -eq 0 ]]; then
    PGBOUNCER_USER=postgres
    chown "$PGBOUNCER_USER": "$WORK/userlist.txt"
    chmod 755 "$WORK" "$LOCKS_OUT" # traversable by $PGBOUNCER_USER
fi

log "pgbench -i -s $LOCKS_SCALE"
PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable timeout 600 "$PG_BINDIR/pgbench" -i -q \
    -s "$LOCKS_SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB_NAME" \
    >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: see $WORK/pgbench-init.log"

# ---- the two proxies (lib.sh's start_proxies gives both the same pool mode; here they differ)

# PgBouncer as lib.sh configures it (SCRAM from the plaintext userlist, DISCARD ALL), without
# client TLS; sets PGBOUNCER_PORT and PGBOUNCER_PID.
start_pgbouncer() { # POOL_MODE POOL MAX_CLIENTS TAG
    local d=$WORK/pgbouncer-$4
    mkdir -p "$d"
    PGBOUNCER_PORT=$(pick_port "$PG_PORT" "${PGWARDEN_PORT:-}" "${PGWARDEN_ADMIN_PORT:-}")
    cat >"$d/pgbouncer.ini" <<EOF
; written by bench/locks.sh
[databases]
$DB_NAME = host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME pool_size=$2

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = $1
default_pool_size = $2
max_client_conn = $3
max_db_connections = 0
server_tls_sslmode = disable
server_reset_query = DISCARD ALL
query_wait_timeout = 120
logfile = $d/pgbouncer.log
log_connections = 0
log_disconnections = 0
log_stats = 0
EOF
    : >"$d/pgbouncer.log"
    if [[ $(id -u) -eq 0 ]]; then
        chown -R "$PGBOUNCER_USER": "$d"
        (cd / && exec setpriv --reuid="$PGBOUNCER_USER" --regid="$PGBOUNCER_USER" \
            --init-groups "$PGBOUNCER" "$d/pgbouncer.ini") >>"$d/stderr.log" 2>&1 &
    else
        "$PGBOUNCER" "$d/pgbouncer.ini" >>"$d/stderr.log" 2>&1 &
    fi
    PGBOUNCER_PID=$!
    wait_ready pgbouncer "$PGBOUNCER_PORT" "$PGBOUNCER_PID" "$d/pgbouncer.log"
}

# pgwarden as lib.sh's start_pgwarden configures it, with an admin port and a chosen
# auth_type, without client TLS; sets PGWARDEN_PORT, PGWARDEN_ADMIN_PORT, PGWARDEN_PID.
start_pgwarden_locks() { # POOL_MODE POOL MAX_CLIENTS TAG AUTH_TYPE
    local d=$WORK/pgwarden-$4
    mkdir -p "$d"
    PGWARDEN_PORT=$(pick_port "$PG_PORT" "${PGBOUNCER_PORT:-}")
    PGWARDEN_ADMIN_PORT=$(pick_port "$PG_PORT" "${PGBOUNCER_PORT:-}" "$PGWARDEN_PORT")
    cat >"$d/pgwarden.ini" <<EOF
; written by bench/locks.sh
[pgwarden]
listen_addr = 127.0.0.1
listen_port = $PGWARDEN_PORT
admin_addr = 127.0.0.1
admin_port = $PGWARDEN_ADMIN_PORT
auth_type = $5
auth_file = $WORK/userlist.txt
pool_mode = $1
default_pool_size = $2
max_client_conn = $3
server_tls_mode = disable
server_reset_query = DISCARD ALL
query_wait_timeout_ms = 120000
shutdown_timeout_ms = 0
log_level = warning

[databases]
$DB_NAME = host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME pool_size=$2
EOF
    "$WARDEN_BINARY" -c "$d/pgwarden.ini" >>"$d/pgwarden.log" 2>&1 &
    PGWARDEN_PID=$!
    wait_ready pgwarden "$PGWARDEN_PORT" "$PGWARDEN_PID" "$d/pgwarden.log"
}

# ---- part 1: round trips ------------------------------------------------------------------

rows=$((100000 * LOCKS_SCALE))
cat >"$WORK/xact-pgwarden.sql" <<EOF
\\set aid random(1, $rows)
\\set delta random(-5000, 5000)
BEGIN;
SELECT pgwarden_xact_lock('acct-:aid', 'exclusive');
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
COMMIT;
EOF
cat >"$WORK/xact-advisory.sql" <<EOF
\\set aid random(1, $rows)
\\set delta random(-5000, 5000)
BEGIN;
SELECT pg_advisory_xact_lock(:aid);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
COMMIT;
EOF
cat >"$WORK/pair-pgwarden.sql" <<EOF
\\set aid random(1, $rows)
SELECT pgwarden_lock('acct-:aid', 'exclusive');
SELECT pgwarden_unlock('acct-:aid');
EOF
cat >"$WORK/pair-advisory.sql" <<EOF
\\set aid random(1, $rows)
SELECT pg_advisory_lock(:aid);
SELECT pg_advisory_unlock(:aid);
EOF
chmod 644 "$WORK"/*.sql

echo "scenario,clients,round,target,status,tps,latency_ms,lock_ms,unlock_ms,update_ms,commit_ms,transactions,failed,proxy_cpu_s,proxy_cpu_us_per_tx" >"$RAW_CSV"

# Per-statement latencies of pgbench -r: "lock unlock update commit" in ms ("" if absent).
statement_ms() { # FILE
    awk 'BEGIN { l = u = up = c = "" }
         /^statement latencies/ { on = 1; next }
         on && $1 ~ /^[0-9.]+$/ {
             cmd = $0
             if (cmd ~ /unlock\(/) u = $1
             else if (cmd ~ /lock\(/) l = $1
             else if (cmd ~ /UPDATE /) up = $1
             else if (cmd ~ /COMMIT/) c = $1
         }
         END { printf "%s,%s,%s,%s\n", l, u, up, c }' "$1"
}

run_one() { # SCENARIO CLIENTS ROUND TARGET SECONDS
    local scen=$1 clients=$2 round=$3 target=$4 secs=$5 port pid script out status=ok
    local cpu0=0 cpu1=0 tps lat tx failed cpu per stm jobs=2
    ((clients == 1)) && jobs=1
    case $target in
    direct) port=$PG_PORT pid='' script=$scen-advisory.sql ;;
    pgbouncer) port=$PGBOUNCER_PORT pid=$PGBOUNCER_PID script=$scen-advisory.sql ;;
    pgwarden) port=$PGWARDEN_PORT pid=$PGWARDEN_PID script=$scen-pgwarden.sql ;;
    pgw-advisory) port=$PGWARDEN_PORT pid=$PGWARDEN_PID script=$scen-advisory.sql ;;
    *) die "unknown target $target" ;;
    esac
    out=$WORK/pgbench-$scen-$clients-$round-$target.log
    [[ -n $pid ]] && cpu0=$(proc_cpu_ns "$pid")
    if ! PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=30 \
        timeout -k 5 $((secs + PGBENCH_SLACK)) "$PG_BINDIR/pgbench" -n -r -M simple \
        -f "$WORK/$script" -c "$clients" -j "$jobs" -T "$secs" -h 127.0.0.1 -p "$port" \
        -U "$DB_USER" "$DB_NAME" >"$out" 2>&1; then
        status=error
        log "  $target: pgbench failed (see $out):"
        tail -n 5 "$out" | sed 's/^/    /' >&2
    fi
    [[ -n $pid ]] && cpu1=$(proc_cpu_ns "$pid")
    [[ $round == warmup ]] && return 0
    tps=$(pgbench_field tps "$out")
    lat=$(pgbench_field latency "$out")
    failed=$(pgbench_field failed "$out")
    tx=$(pgbench_field transactions "$out")
    stm=$(statement_ms "$out")
    [[ -n $tps ]] || status=error
    if [[ -n $pid ]]; then
        cpu=$(awk -v d=$((cpu1 - cpu0)) 'BEGIN { printf "%.4f", d / 1e9 }')
        per=$(awk -v c="$cpu" -v t="${tx:-0}" 'BEGIN { if (t > 0) printf "%.2f", c * 1e6 / t }')
    else
        cpu='' per=''
    fi
    log "  $(printf '%-12s' "$target") tps ${tps:-?}  latency ${lat:-?} ms  lock,unlock,update,commit ms $stm  proxy cpu ${per:--} us/tx"
    echo "$scen,$clients,$round,$target,$status,$tps,$lat,$stm,$tx,$failed,$cpu,$per" >>"$RAW_CSV"
}

read -r -a targets <<<"$LOCKS_TARGETS"
for scen in $LOCKS_SCENARIOS; do
    [[ $scen == xact || $scen == pair ]] || die "unknown scenario $scen (xact, pair)"
    bouncer_mode=transaction
    [[ $scen == pair ]] && bouncer_mode=session
    for clients in $LOCKS_CLIENTS; do
        log "scenario $scen, $clients client(s): pgwarden transaction pool $LOCKS_POOL_SIZE," \
            "PgBouncer $bouncer_mode pool $LOCKS_POOL_SIZE"
        stop_proxies
        if [[ " $LOCKS_TARGETS " == *" pgbouncer "* ]]; then
            start_pgbouncer "$bouncer_mode" "$LOCKS_POOL_SIZE" $((clients + 50)) "$scen-$clients"
        fi
        if [[ " $LOCKS_TARGETS " == *" pgw"* ]]; then
            start_pgwarden_locks transaction "$LOCKS_POOL_SIZE" $((clients + 50)) \
                "$scen-$clients" scram-sha-256
        fi
        if ((LOCKS_WARMUP > 0)); then
            for t in "${targets[@]}"; do
                run_one "$scen" "$clients" warmup "$t" "$LOCKS_WARMUP"
            done
        fi
        for ((r = 1; r <= LOCKS_ROUNDS; r++)); do
            log " round $r/$LOCKS_ROUNDS"
            n=${#targets[@]}
            for ((i = 0; i < n; i++)); do # rotate the order each round
                run_one "$scen" "$clients" "$r" "${targets[$(((i + r - 1) % n))]}" "$LOCKS_SECONDS"
            done
        done
        stop_proxies
    done
done

# ---- part 2: waiters ----------------------------------------------------------------------

wait_cols="mode scope waiters clients_connected connect_s queue_s queued_seen_by_pgwarden rss_kb_before rss_kb_connected rss_kb_waiting kb_per_client_connected kb_per_waiter_lock kb_per_waiter_total server_backends_while_waiting pgwarden_servers_active_while_waiting granted failures grant_all_ms grant_per_waiter_us own_cpu_s_until_all_granted proxy_cpu_s_until_all_granted proxy_cpu_us_per_waiter fifo_violations token_order_inversions"
echo "status,${wait_cols// /,}" >"$WAIT_CSV"
if ((LOCKS_WAITERS > 0)); then
    need=$((LOCKS_WAITERS + LOCKS_POOL_SIZE + 200))
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < need)); then
        log "open files hard limit $hard < $need: waiters lowered to $((hard - LOCKS_POOL_SIZE - 200))"
        LOCKS_WAITERS=$((hard - LOCKS_POOL_SIZE - 200))
    fi
    ulimit -n "$hard" # pgwarden and lock_waiters inherit it
    for mode in $LOCKS_WAITER_MODES; do
        tag=waiters-$mode
        log "waiters: $LOCKS_WAITERS clients wait for $mode ($LOCKS_WAITER_SCOPE scope) on one key" \
            "held exclusive; pgwarden transaction pool $LOCKS_POOL_SIZE, auth $LOCKS_WAITER_AUTH"
        stop_proxies
        start_pgwarden_locks transaction "$LOCKS_POOL_SIZE" $((LOCKS_WAITERS + 100)) "$tag" \
            "$LOCKS_WAITER_AUTH"
        sleep 1
        out=$WORK/$tag.out
        auth_pw=""
        [[ $LOCKS_WAITER_AUTH == trust ]] || auth_pw=" password=$DB_PASSWORD"
        status=ok
        timeout -k 5 "$WAITERS_TIMEOUT" "$WAITERS_BINARY" \
            -d "host=127.0.0.1 port=$PGWARDEN_PORT dbname=$DB_NAME user=$DB_USER sslmode=disable$auth_pw" \
            -D "host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME user=$DB_USER sslmode=disable password=$DB_PASSWORD" \
            -n "$LOCKS_WAITERS" -m "$mode" -s "$LOCKS_WAITER_SCOPE" -k "bench:waiters" \
            -p "$PGWARDEN_PID" -a "$PGWARDEN_ADMIN_PORT" -b "$LOCKS_WAITER_BATCH" \
            -t "$((WAITERS_TIMEOUT - 30))" >"$out" 2>"$WORK/$tag.err" || {
            status=error
            log "  lock_waiters failed (exit $?):"
            tail -n 5 "$WORK/$tag.err" | sed 's/^/    /' >&2
        }
        kill -0 "$PGWARDEN_PID" 2>/dev/null || {
            status=error
            log "  pgwarden (pid $PGWARDEN_PID) is gone: see $WORK/pgwarden-$tag/pgwarden.log"
        }
        row=$status
        for c in $wait_cols; do
            row+=",$(awk -F= -v k="$c" '$1 == k { print $2; exit }' "$out")"
        done
        echo "$row" >>"$WAIT_CSV"
        sed 's/^/    /' "$out" >&2
        stop_proxies
    done
fi

# ---- report -------------------------------------------------------------------------------

report() {
    awk -F, -v rounds="$LOCKS_ROUNDS" -v secs="$LOCKS_SECONDS" '
    function sort(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
    # sets med, lo, hi from the numbers in s (separated by spaces); returns how many
    function stats(s,   a, n, x) { n = split(s, a, " "); if (n == 0) return 0
        for (x = 1; x <= n; x++) a[x] += 0
        sort(a, n)
        med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        lo = a[1]; hi = a[n]; return n }
    function cell(s, fmt) { if (stats(s) == 0) return "-"
        return sprintf(fmt " (" fmt ".." fmt ")", med, lo, hi) }
    function m(s) { return stats(s) == 0 ? "" : med }
    function ratio(x, y) { return (x != "" && y != "" && y > 0) ? sprintf("%.2fx", x / y) : "n/a" }
    NR == 1 { next }
    $5 != "ok" { bad[$1, $2, $4]++; next }
    {
        g = $1 SUBSEP $2; k = g SUBSEP $4
        if (!(g in seen)) { seen[g] = 1; order[++ng] = g }
        if (!((g, $4) in tseen)) { tseen[g, $4] = 1; tord[g, ++nt[g]] = $4 }
        tps[k] = tps[k] " " $6; lat[k] = lat[k] " " $7
        if ($8 != "") lck[k] = lck[k] " " $8
        if ($9 != "") unl[k] = unl[k] " " $9
        if ($15 != "") cpu[k] = cpu[k] " " $15
        fail[k] += $13
        rl[g, $3, $4] = $8; rt[g, $3, $4] = $7; rounds_of[g] = rounds_of[g] " " $3
    }
    END {
        if (ng) printf "pgbench -M simple -r, %d round(s) x %d s; median (min..max) over rounds\n", rounds, secs
        for (i = 1; i <= ng; i++) {
            g = order[i]; split(g, p, SUBSEP)
            what = "lock; unlock (pgwarden: transaction pooling; PgBouncer: session pooling)"
            if (p[1] == "xact") what = "BEGIN; lock; UPDATE one row; COMMIT (both proxies: transaction pooling)"
            printf "\n== %s, %s client(s): %s\n", p[1], p[2], what
            printf "%-12s %-24s %-24s %-24s %-24s %-20s %s\n", "target", "tps", "latency ms",
                   "lock call ms", (p[1] == "pair" ? "unlock call ms" : ""), "proxy cpu us/tx", "failed"
            for (j = 1; j <= nt[g]; j++) {
                t = tord[g, j]; k = g SUBSEP t
                printf "%-12s %-24s %-24s %-24s %-24s %-20s %d%s\n", t, cell(tps[k], "%.0f"),
                       cell(lat[k], "%.3f"), cell(lck[k], "%.3f"),
                       (p[1] == "pair" ? cell(unl[k], "%.3f") : ""), cell(cpu[k], "%.1f"),
                       fail[k], (bad[p[1], p[2], t] ? "  (" bad[p[1], p[2], t] " failed runs)" : "")
            }
            w = g SUBSEP "pgwarden"; b = g SUBSEP "pgbouncer"
            printf "pgwarden/PgBouncer (of medians): lock call %s, transaction latency %s, tps %s, proxy cpu per tx %s\n",
                   ratio(m(lck[w]), m(lck[b])), ratio(m(lat[w]), m(lat[b])), ratio(m(tps[w]), m(tps[b])),
                   ratio(m(cpu[w]), m(cpu[b]))
            # the ratio within each round
            s1 = s2 = ""
            for (r = 1; r <= rounds; r++) {
                if ((g, r, "pgwarden") in rl && (g, r, "pgbouncer") in rl && rl[g, r, "pgbouncer"] > 0) {
                    s1 = s1 " " sprintf("%.3f", rl[g, r, "pgwarden"] / rl[g, r, "pgbouncer"])
                    s2 = s2 " " sprintf("%.3f", rt[g, r, "pgwarden"] / rt[g, r, "pgbouncer"])
                }
            }
            printf "  per round: lock call ratio %s, transaction latency ratio %s\n", cell(s1, "%.2f"), cell(s2, "%.2f")
            goal = "n/a"
            if (m(lck[w]) != "" && m(lck[b]) != "") goal = (m(lck[w]) <= 0.5 * m(lck[b])) ? "met" : "NOT met"
            printf "  goal (lock call <= 0.5x PgBouncer advisory lock): %s\n", goal
        }
    }' "$RAW_CSV"
    awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { if (!hdr++) printf "\n== waiters: one key held exclusive, N clients queued, then released (pgwarden, transaction pooling)\n"
      printf "%s, %s scope, %s waiters (%s%s): RSS %s -> %s (connected) -> %s kB (waiting): %.2f kB per connected client, %.2f kB per wait, %.2f kB per waiting client in all\n",
             $col["mode"], $col["scope"], $col["waiters"], $col["status"],
             ($col["failures"] > 0 ? ", " $col["failures"] " failures" : ""),
             $col["rss_kb_before"], $col["rss_kb_connected"], $col["rss_kb_waiting"],
             $col["kb_per_client_connected"], $col["kb_per_waiter_lock"], $col["kb_per_waiter_total"]
      printf "  connect %s s, queue (one at a time, each seen queued) %s s; while waiting: %s servers in use (of %s PostgreSQL backends open)\n",
             $col["connect_s"], $col["queue_s"], $col["pgwarden_servers_active_while_waiting"],
             $col["server_backends_while_waiting"]
      printf "  all %s granted %s ms after the holder released (%s us per waiter); pgwarden cpu %s us per waiter (grant and release)%s; lock_waiters cpu %s s until all granted\n",
             $col["granted"], $col["grant_all_ms"], $col["grant_per_waiter_us"],
             $col["proxy_cpu_us_per_waiter"],
             ($col["proxy_cpu_s_until_all_granted"] != "" ? ", " $col["proxy_cpu_s_until_all_granted"] " s until all granted" : ""),
             $col["own_cpu_s_until_all_granted"]
      printf "  FIFO: %s violations (fencing tokens in request order)\n", $col["fifo_violations"] }' "$WAIT_CSV"
}

# shellcheck disable=SC2119
report | tee "$SUMMARY"
log "raw results: $RAW_CSV, $WAIT_CSV; tables: $SUMMARY; pgbench and proxy logs: $WORK"
