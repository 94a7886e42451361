#!/usr/bin/env bash
# bench/tls_direct_cpu.sh OLD_PGWARDEN NEW_PGWARDEN: pgwarden's CPU per transaction (utime +
# stime from /proc over an 8 s run) for pgbench -S, 16 clients, transaction pooling, with
# the default server_tls_mode (prefer: TLS towards PostgreSQL), clients plain and with TLS,
# the two binaries alternated for 3 rounds.  A quick A/B of a change on the TLS write path
# (bench/README.md, "TLS writes past the bufferevent"); it starts its own cluster in a
# temporary directory (tests/fixture/pgcluster.sh) and stops every pgwarden it started by PID.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 OLD_PGWARDEN NEW_PGWARDEN" >&2; exit 2; }
EXP=$(mktemp -d /tmp/pgw-tlscpu-XXXXXX)
chmod 755 "$EXP" # the cluster runs as postgres when we are root
D=$EXP/cluster
PORT=$("$root/tests/fixture/pgcluster.sh" start "$D" | tail -1)
export PGPASSWORD=test-password
/usr/lib/postgresql/15/bin/pgbench -i -q -s 10 -h 127.0.0.1 -p $PORT -U pgwarden_test pgwarden_test >/dev/null 2>&1
run() { # BIN LABEL CLIENTSSL
  local W=$EXP/w; rm -rf $W; mkdir -p $W
  local PP=$((20000 + RANDOM % 10000))
  printf '"pgwarden_test" "test-password"\n' > $W/userlist.txt
  cat > $W/pgwarden.ini <<INI
[pgwarden]
listen_addr = 127.0.0.1
listen_port = $PP
auth_type = trust
auth_file = $W/userlist.txt
pool_mode = transaction
default_pool_size = 20
client_tls_mode = allow
client_tls_cert_file = $D/tls/server.crt
client_tls_key_file = $D/tls/server.key
log_level = warning
[databases]
pgwarden_test = host=127.0.0.1 port=$PORT dbname=pgwarden_test pool_size=20
INI
  $1 -c $W/pgwarden.ini > $W/log 2>&1 & local PID=$!
  sleep 1
  PGSSLMODE=$3 /usr/lib/postgresql/15/bin/pgbench -n -S -c 16 -j 2 -T 2 -h 127.0.0.1 -p $PP -U pgwarden_test pgwarden_test >/dev/null 2>&1
  local t0=$(awk '{print $14+$15}' /proc/$PID/stat)
  local out=$(PGSSLMODE=$3 /usr/lib/postgresql/15/bin/pgbench -n -S -c 16 -j 2 -T 8 -h 127.0.0.1 -p $PP -U pgwarden_test pgwarden_test 2>&1)
  local t1=$(awk '{print $14+$15}' /proc/$PID/stat)
  local n=$(echo "$out" | grep 'actually processed' | sed 's/.*: //; s/\/.*//')
  local tps=$(echo "$out" | grep '^tps' | awk '{print $3}')
  echo "$2 client-ssl=$3 tps=$tps us/tx=$(echo "scale=1; ($t1-$t0)*10000/$n" | bc)"
  kill $PID; wait $PID 2>/dev/null
}
for r in 1 2 3; do
  for ssl in disable require; do
    run $1 before $ssl; run $2 after $ssl
  done
done
"$root/tests/fixture/pgcluster.sh" stop "$D" >/dev/null
rm -rf "$EXP"
