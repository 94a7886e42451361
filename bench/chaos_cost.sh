#!/usr/bin/env bash
# bench/chaos_cost.sh: what chaos rules that match nothing cost (docs/chaos.md, "Cost").
#
#   bench/chaos_cost.sh                          3 rounds x 10 s per workload and rule set
#   BENCH_SECONDS=15 BENCH_ROUNDS=5 bench/chaos_cost.sh     (bench/README.md's figures)
#   BENCH_SECONDS=5 BENCH_ROUNDS=5 bench/chaos_cost.sh
#
# One PostgreSQL 15 cluster (tests/fixture/pgcluster.sh) and one pgwarden in transaction
# pooling (bench/lib.sh's start_pgwarden), driven by pgbench.  The same pgwarden process
# runs every measurement; between runs a reload (SIGHUP) installs the [chaos] section of
# its config file: none, or BENCH_RULES rules that match no client (application_name,
# user or database that pgbench does not have; error, latency and disconnect rules, at
# statement and at commit).  For each workload the two rule sets alternate, round after
# round, the order swapped every round, so that drift hits both.  Per run: tps, and
# pgwarden's CPU time (/proc/PID/task/*/schedstat, proc_cpu_ns in lib.sh) per transaction.  The report
# gives per workload the mean of each, min..max over the rounds, and the ratio
# rules / no rules of the means and of each round's pair.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]    length of each measured pgbench run
#   BENCH_ROUNDS [3]      rounds; each runs both rule sets once
#   BENCH_WARMUP [3]      unrecorded warm-up per workload and rule set, seconds (0: none)
#   BENCH_SCALE [10]      pgbench -i scale factor
#   BENCH_CLIENTS [8], BENCH_JOBS [2] (-M prepared: one per client), BENCH_POOL_SIZE [4]
#   BENCH_RULES [10]      rules in the "rules" set
#   BENCH_WORKLOADS       space-separated NAME:SCRIPT:PROTOCOL, SCRIPT a pgbench builtin
#                         [select:select-only:simple tpcb:tpcb-like:simple
#                          select-prepared:select-only:prepared tpcb-prepared:tpcb-like:prepared]
#   WARDEN_BINARY         a pgwarden to measure; default: built (Release) in BUILD_DIR
#   BUILD_DIR [build-bench], BENCH_OUT [BUILD_DIR/chaos-cost-YYYYmmdd-HHMMSS]
#   PG_BINDIR [/usr/lib/postgresql/15/bin]
# Everything it starts is stopped by its PID on exit; every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-8}
BENCH_JOBS=${BENCH_JOBS:-2}
BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-4}
BENCH_RULES=${BENCH_RULES:-10}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-select:select-only:simple tpcb:tpcb-like:simple select-prepared:select-only:prepared tpcb-prepared:tpcb-like:prepared}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
BUILD_DIR=${BUILD_DIR:-$root/build-bench}
BENCH_OUT=${BENCH_OUT:-$BUILD_DIR/chaos-cost-$(date +%Y%m%d-%H%M%S)}

# What bench/lib.sh's start_pgwarden reads.
BENCH_POOL_MODE=transaction
BENCH_SERVER_TLS=disable
PROXY_START_TIMEOUT=20
PROXY_STOP_TIMEOUT=10
BENCH_SLACK=${BENCH_SLACK:-90}
RELOAD_TIMEOUT=10

for v in BENCH_SECONDS BENCH_ROUNDS BENCH_WARMUP BENCH_SCALE BENCH_CLIENTS BENCH_JOBS \
    BENCH_POOL_SIZE BENCH_RULES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || {
        echo "bench: $v must be a non-negative integer" >&2
        exit 2
    }
done
((BENCH_SECONDS > 0 && BENCH_ROUNDS > 0 && BENCH_CLIENTS > 0 && BENCH_RULES > 0)) || {
    echo "bench: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS and BENCH_RULES must be positive" >&2
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
SUMMARY=$BENCH_OUT/summary.txt
PGWARDEN_PID=
CLUSTER_STARTED=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PGWARDEN_PID ]]; then
        stop_pid "$PGWARDEN_PID" pgwarden
    fi
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

# ---- setup ----------------------------------------------------------------------------------

mkdir -p "$BENCH_OUT" "$WORK"
log "results in $BENCH_OUT"
if [[ -z ${WARDEN_BINARY:-} ]]; then
    log "building pgwarden (Release) in $BUILD_DIR"
    timeout 600 cmake -S "$root" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >"$WORK/cmake.log" 2>&1 ||
        die "cmake configure failed: see $WORK/cmake.log"
    timeout 900 cmake --build "$BUILD_DIR" --target pgwarden -j "$(nproc)" >>"$WORK/cmake.log" 2>&1 ||
        die "build failed: see $WORK/cmake.log"
    WARDEN_BINARY=$BUILD_DIR/proxy/pgwarden
fi
[[ -x $WARDEN_BINARY ]] || die "$WARDEN_BINARY not built"
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
[[ -n $PG_PORT && -n $DB_USER && -n $DB_NAME ]] || die "cannot read $CLUSTER_DIR/env"
mkdir -p "$WORK/tls"
cp "$CLUSTER_DIR/tls/server.crt" "$CLUSTER_DIR/tls/server.key" "$WORK/tls/"
chmod 600 "$WORK/tls/server.key"
printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" >"$WORK/userlist.txt"
chmod 600 "$WORK/userlist.txt"

log "pgbench -i -s $BENCH_SCALE"
PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable timeout 600 "$PG_BINDIR/pgbench" -i -q \
    -s "$BENCH_SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB_NAME" \
    >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: see $WORK/pgbench-init.log"

start_pgwarden "$BENCH_POOL_SIZE" $((BENCH_CLIENTS + 50)) chaos pgwarden 1
PGWARDEN_PORT=$STARTED_PORT PGWARDEN_PID=$STARTED_PID
INI=$WORK/pgwarden-chaos/pgwarden.ini
PLOG=$WORK/pgwarden-chaos/pgwarden.log
sed -i 's/^log_level = warning$/log_level = info/' "$INI" # reloads and rule changes are logged
cp "$INI" "$WORK/pgwarden-base.ini"

# BENCH_RULES rules no pgbench client matches, in the [chaos] syntax.
no_match_rules() {
    local i kinds=("inject=error sqlstate=40001" "inject=error sqlstate=40P01 probability=0.5 seed=7"
        "inject=latency latency_ms=100" "inject=disconnect when=commit"
        "inject=error sqlstate=57P01 every_n=3 when=commit")
    local filters=("application_name=chaos_nobody_%d" "user=chaos_nobody_%d"
        "database=chaos_nobody_%d")
    for ((i = 1; i <= BENCH_RULES; i++)); do
        # shellcheck disable=SC2059
        printf 'nomatch_%d = %s %s\n' "$i" "${kinds[$((i % ${#kinds[@]}))]}" \
            "$(printf "${filters[$((i % ${#filters[@]}))]}" "$i")"
    done
}

RELOADS=0
# Installs a rule set (none | rules) by rewriting the config and reloading pgwarden; waits
# until the log says the reload is done and how many rules it installed.
set_rules() { # none|rules
    local want=0 deadline
    cp "$WORK/pgwarden-base.ini" "$INI.new"
    if [[ $1 == rules ]]; then
        printf '\n[chaos]\n' >>"$INI.new"
        no_match_rules >>"$INI.new"
        want=$BENCH_RULES
    fi
    mv "$INI.new" "$INI"
    kill -HUP "$PGWARDEN_PID"
    RELOADS=$((RELOADS + 1))
    deadline=$((SECONDS + RELOAD_TIMEOUT))
    while (($(grep -c 'configuration reloaded from' "$PLOG" || true) < RELOADS)); do
        ((SECONDS < deadline)) || die "pgwarden did not reload within ${RELOAD_TIMEOUT}s (log: $PLOG)"
        kill -0 "$PGWARDEN_PID" 2>/dev/null || die "pgwarden exited (log: $PLOG)"
        sleep 0.1
    done
    RULES_NOW=$want
}

# One pgbench run; appends a CSV row (ROUND "warmup": not recorded).
run_one() { # WORKLOAD SCRIPT PROTOCOL JOBS RULESET ROUND SECONDS
    local name=$1 script=$2 proto=$3 jobs=$4 set=$5 round=$6 secs=$7 out status=ok cpu0 cpu1
    local tps tx cpu_us
    out=$WORK/pgbench-$name-$set-$round.log
    cpu0=$(proc_cpu_ns "$PGWARDEN_PID")
    if ! PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=30 \
        timeout -k 5 $((secs + BENCH_SLACK)) "$PG_BINDIR/pgbench" -n -b "$script" \
        -M "$proto" -c "$BENCH_CLIENTS" -j "$jobs" -T "$secs" -h 127.0.0.1 \
        -p "$PGWARDEN_PORT" -U "$DB_USER" "$DB_NAME" >"$out" 2>&1; then
        status=error
        log "  pgbench failed (see $out):"
        tail -n 5 "$out" | sed 's/^/    /' >&2
    fi
    cpu1=$(proc_cpu_ns "$PGWARDEN_PID")
    [[ $round == warmup ]] && return 0
    tps=$(pgbench_field tps "$out")
    tx=$(pgbench_field transactions "$out")
    [[ -n $tps && -n $tx && $tx -gt 0 ]] || status=error
    cpu_us=$(awk -v d=$((cpu1 - cpu0)) -v t="${tx:-0}" \
        'BEGIN { if (t > 0) printf "%.2f", d / 1e3 / t }')
    log "  $(printf '%-14s %-5s' "$name" "$set") tps ${tps:-?}  pgwarden cpu ${cpu_us:-?} us/tx"
    echo "$name,$script,$proto,$jobs,$set,$RULES_NOW,$round,$secs,$status,$tps,$tx,$((cpu1 - cpu0)),$cpu_us" >>"$RAW_CSV"
}

echo "workload,script,protocol,jobs,ruleset,rules,round,seconds,status,tps,transactions,cpu_ns,cpu_us_per_tx" >"$RAW_CSV"

# ---- runs -----------------------------------------------------------------------------------

for spec in $BENCH_WORKLOADS; do
    IFS=: read -r name script proto <<<"$spec"
    [[ -n $name && -n $script && -n $proto ]] || die "bad workload \"$spec\" (NAME:SCRIPT:PROTOCOL)"
    # pgbench prepares a statement with a blocking PQprepare at its first use: a thread
    # whose client waits for a server there stops its other clients, whose transactions
    # hold the servers.  So with -M prepared every client gets its own thread.
    jobs=$BENCH_JOBS
    [[ $proto == prepared ]] && jobs=$BENCH_CLIENTS
    log "workload $name: pgbench -b $script -M $proto -c $BENCH_CLIENTS -j $jobs, pool $BENCH_POOL_SIZE"
    if ((BENCH_WARMUP > 0)); then
        for set in none rules; do
            set_rules "$set"
            run_one "$name" "$script" "$proto" "$jobs" "$set" warmup "$BENCH_WARMUP"
        done
    fi
    for ((r = 1; r <= BENCH_ROUNDS; r++)); do
        order=(none rules)
        ((r % 2 == 0)) && order=(rules none)
        for set in "${order[@]}"; do
            set_rules "$set"
            run_one "$name" "$script" "$proto" "$jobs" "$set" "$r" "$BENCH_SECONDS"
        done
    done
done
set_rules none
grep -q 'chaos C-' "$PLOG" && die "a rule matched a pgbench client (log: $PLOG)"

# ---- report ---------------------------------------------------------------------------------

awk -F, -v rules="$BENCH_RULES" -v secs="$BENCH_SECONDS" -v rounds="$BENCH_ROUNDS" \
    -v setup="$BENCH_CLIENTS clients, transaction pool $BENCH_POOL_SIZE" '
NR == 1 { next }
$9 != "ok" { bad[$1]++; next }
{
    w = $1; s = $5; r = $7
    if (!(w in seen)) { seen[w] = 1; order[++nw] = w; desc[w] = "-b " $2 " -M " $3 " -j " $4 }
    k = w SUBSEP s
    n[k]++; tps[k] += $10; cpu[k] += $13
    if (!(k in tmin) || $10 < tmin[k]) tmin[k] = $10
    if (!(k in tmax) || $10 > tmax[k]) tmax[k] = $10
    if (!(k in cmin) || $13 < cmin[k]) cmin[k] = $13
    if (!(k in cmax) || $13 > cmax[k]) cmax[k] = $13
    rt[w, s, r] = $10; rc[w, s, r] = $13
}
END {
    printf "chaos rules that match nothing: %d rules vs none, pgwarden transaction pooling, %s;\n", rules, setup
    printf "%d rounds x %d s per rule set, alternated; means over rounds\n", rounds, secs
    for (i = 1; i <= nw; i++) {
        w = order[i]; a = w SUBSEP "none"; b = w SUBSEP "rules"
        printf "\n== %s (%s)%s\n", w, desc[w], (w in bad ? "  (" bad[w] " failed runs left out)" : "")
        printf "%-8s %10s %17s %12s %15s\n", "rules", "tps", "tps min..max", "cpu us/tx", "cpu min..max"
        for (j = 0; j < 2; j++) {
            s = j ? "rules" : "none"; k = w SUBSEP s
            if (!n[k]) { printf "%-8s %10s\n", s, "-"; continue }
            printf "%-8s %10.0f %17s %12.2f %15s\n", (j ? rules : 0), tps[k] / n[k],
                   sprintf("%.0f..%.0f", tmin[k], tmax[k]), cpu[k] / n[k],
                   sprintf("%.2f..%.2f", cmin[k], cmax[k])
        }
        if (!n[a] || !n[b]) continue
        pr = ""; pc = ""
        for (r = 1; r <= rounds; r++)
            if ((w, "none", r) in rt && (w, "rules", r) in rt) {
                pr = pr sprintf(" %.3f", rt[w, "rules", r] / rt[w, "none", r])
                pc = pc sprintf(" %.3f", rc[w, "rules", r] / rc[w, "none", r])
            }
        printf "rules/none: tps %.3f (per round:%s), cpu per tx %.3f (per round:%s)\n",
               (tps[b] / n[b]) / (tps[a] / n[a]), pr, (cpu[b] / n[b]) / (cpu[a] / n[a]), pc
        printf "spread without rules: tps %.1f%%, cpu %.1f%% ((max - min) / mean)\n",
               100 * (tmax[a] - tmin[a]) / (tps[a] / n[a]), 100 * (cmax[a] - cmin[a]) / (cpu[a] / n[a])
    }
}' "$RAW_CSV" | tee "$SUMMARY"
log "raw results: $RAW_CSV; table: $SUMMARY; pgbench and pgwarden logs: $WORK"
