# shellcheck shell=bash
# bench/lib.sh: helpers of bench/run.sh and bench/retry.sh (sourced; uses their variables:
# root, BUILD_DIR, CLUSTER_DIR, WORK, PG_BINDIR, PGBOUNCER, BENCH_POOL_MODE, BENCH_SERVER_TLS,
# BENCH_USERLIST, BENCH_TARGETS, PROXY_START_TIMEOUT, PROXY_STOP_TIMEOUT; optional:
# BENCH_AUTH_TYPE [scram-sha-256], BENCH_QUERY_WAIT_S [120]).

log() { echo "bench: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# shellcheck source=../tests/fixture/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/fixture/ports.sh"

# utime + stime of a process (all its threads), in clock ticks; with "user", utime alone.
proc_cpu_ticks() { # PID [user]
    local stat rest
    stat=$(<"/proc/$1/stat") || die "process $1 is gone"
    rest=${stat##*) } # fields from 3 on; the command name may contain spaces
    awk -v u="${2:-}" '{ print u == "user" ? $12 : $12 + $13 }' <<<"$rest"
}

# CPU time of a process (all its threads) in nanoseconds, from the scheduler's own
# account (/proc/PID/task/*/schedstat: time on a CPU, to the nanosecond).  utime + stime
# are sampled at each clock tick (10 ms): a proxy runs in bursts of tens of microseconds,
# and two proxies of the same CPU can be charged differently by that sampling (session 11
# saw 1.16x by ticks where schedstat and perf's task-clock gave 0.93-1.0x).  Falls back to
# the ticks without schedstat.
proc_cpu_ns() { # PID
    local sum=0 t f
    for t in /proc/"$1"/task/*/schedstat; do
        read -r f _ <"$t" 2>/dev/null || continue
        sum=$((sum + f))
    done
    if ((sum == 0)); then
        sum=$(($(proc_cpu_ticks "$1") * 1000000000 / $(getconf CLK_TCK)))
    fi
    echo "$sum"
}

# Context switches of a process, all its threads (voluntary + involuntary): each sleep in
# epoll_wait is one, so their count per transaction shows wake-ups, which decide much of a
# proxy's kernel CPU and vary far less from round to round than the CPU does.
proc_ctxsw() { # PID
    local sum=0 t k v
    for t in /proc/"$1"/task/*/status; do
        while read -r k v _; do
            [[ $k == voluntary_ctxt_switches: || $k == nonvoluntary_ctxt_switches: ]] &&
                sum=$((sum + v))
        done <"$t" 2>/dev/null || continue
    done
    echo "$sum"
}

# CPU of a PostgreSQL cluster in clock ticks: the postmaster's utime + stime, its reaped
# children's (cutime + cstime: backends that exited) and its live children's utime + stime.
# The difference of two readings is exact, whichever backends started or ended in between.
# (cat fails when a process ends between the glob and its read: that one is left out.)
pg_cpu_ticks() { # POSTMASTER_PID
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$1" '
        { pid = $1; r = $0; sub(/.*\) /, "", r); split(r, f, " ") }
        pid == pm { s += f[12] + f[13] + f[14] + f[15]; seen = 1; next }
        f[2] == pm { s += f[12] + f[13] }
        END { if (seen) print s + 0 }'
}

proc_rss_kb() { # PID
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

# One figure from a pgbench (15) report: tps, latency, failed, transactions; with
# --failures-detailed / --max-tries: serialization, deadlock, retried, retries.
pgbench_field() { # FIELD FILE
    case $1 in
    tps) awk '$1 == "tps" && $2 == "=" { print $3; exit }' "$2" ;;
    latency) awk '/^latency average = / { print $4; exit }' "$2" ;;
    failed) awk '/^number of failed transactions: / { print $5; exit }' "$2" ;;
    transactions) awk -F': ' '/^number of transactions actually processed: / {
        split($2, a, "/"); print a[1]; exit }' "$2" ;;
    serialization) awk '/^number of serialization failures: / { print $5; exit }' "$2" ;;
    deadlock) awk '/^number of deadlock failures: / { print $5; exit }' "$2" ;;
    retried) awk '/^number of transactions retried: / { print $5; exit }' "$2" ;;
    retries) awk '/^total number of retries: / { print $5; exit }' "$2" ;;
    esac
}

# Runs one query as the cluster's superuser over its Unix socket, in DATABASE (postgres);
# prints the result.
superuser_sql() { # QUERY [DATABASE]
    local psql=(timeout 10 "$PG_BINDIR/psql" -X -At -h "$DB_SOCKET_DIR" -p "$PG_PORT"
        -U "$DB_SUPERUSER" -d "${2:-postgres}" -c "$1")
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "${psql[@]}")
    else
        "${psql[@]}"
    fi
}

# Client backends of the benchmark user now connected to PostgreSQL.
server_backends() {
    superuser_sql "SELECT count(*) FROM pg_stat_activity WHERE usename = '$DB_USER' AND backend_type = 'client backend'" 2>/dev/null || echo 0
}

# Waits until SELECT 1 through PORT succeeds, while PID lives.
wait_ready() { # NAME PORT PID LOG
    local deadline=$((SECONDS + PROXY_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$3" 2>/dev/null || {
            tail -n 20 "$4" >&2 || true
            die "$1 exited at start (log: $4)"
        }
        if PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=5 timeout 10 \
            "$PG_BINDIR/psql" -X -At -h 127.0.0.1 -p "$2" -U "$DB_USER" -d "$DB_NAME" \
            -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$4" >&2 || true
    die "$1 did not answer on port $2 within ${PROXY_START_TIMEOUT}s (log: $4)"
}

# Starts PgBouncer and pgwarden (or only the one named) with pool POOL, files in
# $WORK/{pgbouncer,pgwarden}-TAG.  Both: session or
# transaction mode, SCRAM (or $BENCH_AUTH_TYPE) for clients from the same userlist, TLS
# towards clients allowed with the cluster's certificate, server TLS $BENCH_SERVER_TLS.
start_proxies() { # POOL MAX_CLIENTS TAG [pgbouncer|pgwarden]
    local pool=$1 maxc=$2 tag=$3 only=${4:-} d
    stop_proxies
    if [[ -z $only && " $BENCH_TARGETS " == *" pgbouncer "* ]] || [[ $only == pgbouncer ]]; then
        d=$WORK/pgbouncer-$tag
        mkdir -p "$d"
        PGBOUNCER_PORT=$(pick_port "$PG_PORT")
        cat >"$d/pgbouncer.ini" <<EOF
; written by bench/
[databases]
$DB_NAME = host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME pool_size=$pool

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = ${BENCH_AUTH_TYPE:-scram-sha-256}
auth_file = $WORK/userlist.txt
pool_mode = $BENCH_POOL_MODE
default_pool_size = $pool
max_client_conn = $maxc
max_db_connections = 0
client_tls_sslmode = allow
client_tls_cert_file = $WORK/tls/server.crt
client_tls_key_file = $WORK/tls/server.key
server_tls_sslmode = $BENCH_SERVER_TLS
server_reset_query = DISCARD ALL
query_wait_timeout = ${BENCH_QUERY_WAIT_S:-120}
logfile = $d/pgbouncer.log
log_connections = 0
log_disconnections = 0
log_stats = 0
EOF
        : >"$d/pgbouncer.log"
        if [[ $(id -u) -eq 0 ]]; then
            chown -R "$PGBOUNCER_USER": "$d"
            # setpriv execs PgBouncer in place, so $! is PgBouncer's PID.
            (cd / && exec setpriv --reuid="$PGBOUNCER_USER" --regid="$PGBOUNCER_USER" \
                --init-groups "$PGBOUNCER" "$d/pgbouncer.ini") >>"$d/stderr.log" 2>&1 &
        else
            "$PGBOUNCER" "$d/pgbouncer.ini" >>"$d/stderr.log" 2>&1 &
        fi
        PGBOUNCER_PID=$!
        wait_ready pgbouncer "$PGBOUNCER_PORT" "$PGBOUNCER_PID" "$d/pgbouncer.log"
    fi
    if [[ -z $only && " $BENCH_TARGETS " == *" pgwarden "* ]] || [[ $only == pgwarden ]]; then
        start_pgwarden "$pool" "$maxc" "$tag" pgwarden 1
        PGWARDEN_PORT=$STARTED_PORT PGWARDEN_PID=$STARTED_PID
    fi
    if [[ -z $only && " $BENCH_TARGETS " == *" pgw-batch "* ]] || [[ $only == pgw-batch ]]; then
        start_pgwarden "$pool" "$maxc" "$tag" pgw-batch "$BENCH_QUERY_BATCH"
        # shellcheck disable=SC2034 # PGW_BATCH_PORT: read by run.sh
        PGW_BATCH_PORT=$STARTED_PORT PGW_BATCH_PID=$STARTED_PID
    fi
}

# Starts one pgwarden (files in $WORK/NAME-TAG) with server_query_batch BATCH; EXTRA is
# appended to its configuration (e.g. a [retry] section); ADMIN 1 opens its admin port on a
# free port.  Sets STARTED_PORT, STARTED_ADMIN_PORT (0: none) and STARTED_PID.  Waits
# PROXY_START_TIMEOUT for it to answer.
start_pgwarden() { # POOL MAX_CLIENTS TAG NAME BATCH [EXTRA [ADMIN]]
    local pool=$1 maxc=$2 tag=$3 name=$4 batch=$5 extra=${6:-} admin=${7:-0} d
    d=$WORK/$name-$tag
    mkdir -p "$d"
    STARTED_PORT=$(pick_port "$PG_PORT" "${PGBOUNCER_PORT:-}" "${PGWARDEN_PORT:-}")
    STARTED_ADMIN_PORT=0
    ((admin)) && STARTED_ADMIN_PORT=$(pick_port "$PG_PORT" "${PGBOUNCER_PORT:-}" \
        "${PGWARDEN_PORT:-}" "$STARTED_PORT")
    cat >"$d/pgwarden.ini" <<EOF
; written by bench/
[pgwarden]
listen_addr = 127.0.0.1
listen_port = $STARTED_PORT
admin_port = $STARTED_ADMIN_PORT
auth_type = ${BENCH_AUTH_TYPE:-scram-sha-256}
auth_file = $WORK/userlist.txt
pool_mode = $BENCH_POOL_MODE
default_pool_size = $pool
max_client_conn = $maxc
client_tls_mode = allow
client_tls_cert_file = $WORK/tls/server.crt
client_tls_key_file = $WORK/tls/server.key
server_tls_mode = $BENCH_SERVER_TLS
server_reset_query = DISCARD ALL
server_query_batch = $batch
query_wait_timeout_ms = $((${BENCH_QUERY_WAIT_S:-120} * 1000))
shutdown_timeout_ms = 0
log_level = warning

[databases]
$DB_NAME = host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME pool_size=$pool
$extra
EOF
    # WARDEN_WRAP: an optional command in front of pgwarden (retry.sh: valgrind), which
    # must exec it in the same process, so that $! is its PID.
    ${WARDEN_WRAP[@]+"${WARDEN_WRAP[@]}"} "$WARDEN_BINARY" -c "$d/pgwarden.ini" >>"$d/pgwarden.log" 2>&1 &
    STARTED_PID=$!
    wait_ready "$name" "$STARTED_PORT" "$STARTED_PID" "$d/pgwarden.log"
}

stop_pid() { # PID NAME
    local i
    kill -0 "$1" 2>/dev/null || return 0
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < PROXY_STOP_TIMEOUT * 10; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$1" 2>/dev/null; then
        log "$2 (pid $1) ignored SIGTERM for ${PROXY_STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}

stop_proxies() {
    if [[ -n ${PGBOUNCER_PID:-} ]]; then
        stop_pid "$PGBOUNCER_PID" pgbouncer
        PGBOUNCER_PID=
    fi
    if [[ -n ${PGWARDEN_PID:-} ]]; then
        stop_pid "$PGWARDEN_PID" pgwarden
        PGWARDEN_PID=
    fi
    if [[ -n ${PGW_BATCH_PID:-} ]]; then
        stop_pid "$PGW_BATCH_PID" pgw-batch
        PGW_BATCH_PID=
    fi
}

# ---- setup shared by run.sh and retry.sh ----------------------------------------------------

# Builds pgwarden (Release) in $BUILD_DIR and checks the other tools; sets WARDEN_BINARY.
build_pgwarden() {
    : "${root:?}" # the repository (set by the calling script)
    log "building pgwarden (Release) in $BUILD_DIR"
    timeout 600 cmake -S "$root" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >"$WORK/cmake.log" 2>&1 ||
        die "cmake configure failed: see $WORK/cmake.log"
    timeout 900 cmake --build "$BUILD_DIR" --target pgwarden -j "$(nproc)" >>"$WORK/cmake.log" 2>&1 ||
        die "build failed: see $WORK/cmake.log"
    WARDEN_BINARY=$BUILD_DIR/proxy/pgwarden
    [[ -x $WARDEN_BINARY ]] || die "$WARDEN_BINARY not built"
    [[ -x $PGBOUNCER ]] || die "$PGBOUNCER not found: apt-get install pgbouncer"
    [[ -x $PG_BINDIR/pgbench ]] || die "$PG_BINDIR/pgbench not found"
}

cluster_env() { # KEY -> its value in the cluster's env file
    awk -v k="$1" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); exit }' \
        "$CLUSTER_DIR/env"
}

# Starts the benchmark's own cluster in $CLUSTER_DIR (tests/fixture/pgcluster.sh: 127.0.0.1,
# free port) and reads PG_PORT, DB_USER, DB_PASSWORD, DB_NAME, DB_SOCKET_DIR, DB_SUPERUSER,
# PG_PID (the postmaster).
# Then writes the proxies' files: copies of the cluster's certificate and key (readable by
# the PgBouncer user) and the userlist ($BENCH_USERLIST: plain or scram).
start_cluster() {
    local secret
    log "starting PostgreSQL"
    CLUSTER_STARTED=1
    PG_BINDIR=$PG_BINDIR "$root/tests/fixture/pgcluster.sh" start "$CLUSTER_DIR" >/dev/null
    PG_PORT=$(cluster_env PGPORT)
    DB_USER=$(cluster_env PGCLUSTER_USER)
    DB_PASSWORD=$(cluster_env PGCLUSTER_PASSWORD)
    DB_NAME=$(cluster_env PGCLUSTER_DB)
    DB_SOCKET_DIR=$(cluster_env PGCLUSTER_SOCKET_DIR)
    DB_SUPERUSER=$(cluster_env PGCLUSTER_SUPERUSER)
    # shellcheck disable=SC2034 # read by retry.sh
    PG_PID=$(cluster_env PGCLUSTER_PID)
    [[ -n $PG_PORT && -n $DB_USER && -n $DB_NAME ]] || die "cannot read $CLUSTER_DIR/env"

    mkdir -p "$WORK/tls"
    cp "$CLUSTER_DIR/tls/server.crt" "$CLUSTER_DIR/tls/server.key" "$WORK/tls/"
    chmod 600 "$WORK/tls/server.key"
    case $BENCH_USERLIST in
    plain) secret=$DB_PASSWORD ;;
    scram) secret=$(superuser_sql "SELECT rolpassword FROM pg_authid WHERE rolname = '$DB_USER'") ;;
    *) die "BENCH_USERLIST must be plain or scram" ;;
    esac
    [[ -n $secret ]] || die "no password for $DB_USER"
    printf '"%s" "%s"\n' "$DB_USER" "$secret" >"$WORK/userlist.txt"
    chmod 600 "$WORK/userlist.txt"
    if [[ $(id -u) -eq 0 ]]; then
        PGBOUNCER_USER=postgres
        chown -R "$PGBOUNCER_USER": "$WORK/tls" "$WORK/userlist.txt"
        chmod 755 "$WORK" "$BENCH_OUT" # traversable by $PGBOUNCER_USER
    fi
}

stop_cluster() {
    if ((CLUSTER_STARTED)); then
        CLUSTER_STARTED=0
        "$root/tests/fixture/pgcluster.sh" stop "$CLUSTER_DIR" >/dev/null 2>&1 ||
            log "stopping the cluster failed (see $CLUSTER_DIR/postgres.log)"
    fi
}

pgbench_init() { # SCALE
    log "pgbench -i -s $1"
    PGPASSWORD=$DB_PASSWORD PGSSLMODE=disable timeout 600 "$PG_BINDIR/pgbench" -i -q \
        -s "$1" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB_NAME" \
        >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: see $WORK/pgbench-init.log"
}

# ---- run.sh's report ------------------------------------------------------------------------

# Tables from the CSV files: per scenario, the mean over rounds of each target and the
# ratios pgwarden / PgBouncer.
report() { # RUNS_CSV IDLE_CSV
    awk -F, -v rounds="$BENCH_ROUNDS" -v secs="$BENCH_SECONDS" \
        -v builtin="${BENCH_BUILTIN:-select-only}" -v setup="userlist $BENCH_USERLIST, server TLS $BENCH_SERVER_TLS" '
    NR == 1 { next }
    {
        s = $1; t = $3
        if (!(s in seen)) { seen[s] = 1; order[++ns] = s
            desc[s] = sprintf("%s clients, -j %s, -M %s%s, sslmode=%s, %s pool %s", $4, $5, $6,
                              ($7 == 1 ? ", -C (tps includes connecting)" : ""), $8, $9, $10) }
        k = s SUBSEP t
        if (!(k in runs)) { tord[s, ++nt[s]] = t }
        runs[k]++
        if ($12 != "ok") { bad[k]++; next }
        ok[k]++; tps[k] += $13; lat[k] += $14; fail[k] += $15
        if (!(k in tmin) || $13 < tmin[k]) tmin[k] = $13
        if (!(k in tmax) || $13 > tmax[k]) tmax[k] = $13
        if ($18 != "") { cpu[k] += $18; ncpu[k]++ }
        if ($19 != "") { csw[k] += $19; ncsw[k]++ }
    }
    function mean(a, k, n) { return n > 0 ? a[k] / n : "" }
    function ratio(x, y) { return (x != "" && y != "" && y > 0) ? sprintf("%.2fx", x / y) : "n/a" }
    END {
        printf "pgbench -b %s, %d round(s) x %d s, means over rounds; proxies: %s\n", builtin, rounds, secs, setup
        for (i = 1; i <= ns; i++) {
            s = order[i]
            printf "\n== %s: %s\n", s, desc[s]
            printf "%-10s %11s %21s %11s %7s %12s %11s %5s\n", "target", "tps", "tps min..max",
                   "latency ms", "failed", "cpu s/1k tx", "csw/1k tx", "runs"
            for (j = 1; j <= nt[s]; j++) {
                t = tord[s, j]; k = s SUBSEP t; n = ok[k]
                mt[t] = mean(tps, k, n); ml[t] = mean(lat, k, n); mc[t] = mean(cpu, k, ncpu[k])
                mw[t] = mean(csw, k, ncsw[k])
                printf "%-10s %11s %21s %11s %7s %12s %11s %5s\n", t,
                       n ? sprintf("%.0f", mt[t]) : "-",
                       n ? sprintf("%.0f..%.0f", tmin[k], tmax[k]) : "-",
                       n ? sprintf("%.3f", ml[t]) : "-", n ? fail[k] + 0 : "-",
                       mc[t] != "" ? sprintf("%.5f", mc[t]) : "-",
                       mw[t] != "" ? sprintf("%.0f", mw[t]) : "-",
                       (n + 0) "/" runs[k] (bad[k] ? " ERR" : "")
            }
            printf "pgwarden/pgbouncer: tps %s, latency %s, cpu per 1k tx %s, context switches %s",
                   ratio(mt["pgwarden"], mt["pgbouncer"]), ratio(ml["pgwarden"], ml["pgbouncer"]),
                   ratio(mc["pgwarden"], mc["pgbouncer"]), ratio(mw["pgwarden"], mw["pgbouncer"])
            printf "   (pgwarden/direct tps %s, pgbouncer/direct tps %s)\n",
                   ratio(mt["pgwarden"], mt["direct"]), ratio(mt["pgbouncer"], mt["direct"])
            if ("pgw-batch" in mt)
                printf "pgw-batch/pgbouncer: tps %s, latency %s, cpu per 1k tx %s   (pgw-batch/pgwarden tps %s)\n",
                       ratio(mt["pgw-batch"], mt["pgbouncer"]), ratio(ml["pgw-batch"], ml["pgbouncer"]),
                       ratio(mc["pgw-batch"], mc["pgbouncer"]), ratio(mt["pgw-batch"], mt["pgwarden"])
            delete mt; delete ml; delete mc; delete mw
        }
    }' "$1"
    awk -F, '
    NR == 1 { next }
    { if (!hdr++) { printf "\n== idle memory: %s clients logged in, one SELECT 1 each, then idle (session: one server each)\n", $2
                    printf "%-10s %14s %14s %14s %8s\n", "target", "RSS before kB", "RSS idle kB", "kB per client", "servers" }
      printf "%-10s %14s %14s %14s %8s%s\n", $1, $4, $5, $6, $7, ($7 < $2 ? " INCOMPLETE (not every client logged in)" : "")
      if ($7 >= $2) per[$1] = $6 }
    END { if (hdr && per["pgbouncer"] > 0 && per["pgwarden"] != "")
              printf "pgwarden/pgbouncer: memory per idle client %.2fx\n", per["pgwarden"] / per["pgbouncer"] }' "$2"
}
