#!/usr/bin/env bash
# test_run_embedded.sh: scripts/run-embedded.sh when its port is taken (Debian's pgbouncer
# service holds 6432): it must say so, move to a free port, and print a DATABASE_URL only
# once its own pgwarden listens there.  Also: --help prints the whole help text.
#
# Another program holds the port configured as listen_port (a perl listener, perl-base is
# on every Debian).  Run by ctest as script_run_embedded with PGWARDEN_BIN set (no build,
# no apt-get).  Every wait is bounded; everything started here is stopped by its PID.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
TMP=$(mktemp -d /tmp/pgwarden-test-embedded-XXXXXX)
HOLDER=""
RUN=""
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
    [[ -n $RUN ]] && kill -TERM "$RUN" 2>/dev/null && wait "$RUN" 2>/dev/null
    [[ -n $HOLDER ]] && kill "$HOLDER" 2>/dev/null && wait "$HOLDER" 2>/dev/null
    rm -rf -- "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck disable=SC2317 # called by pick_port
die() {
    echo "test_run_embedded: $*" >&2
    exit 1
}
# shellcheck disable=SC1091 # pick_port
. tests/fixture/ports.sh

[[ -n ${PGWARDEN_BIN:-} && -x $PGWARDEN_BIN ]] || die "PGWARDEN_BIN must name the pgwarden binary"

# ---- --help: the whole header, exit 0 --------------------------------------------------
help=$(scripts/run-embedded.sh --help)
rc=$?
[[ $rc -eq 0 ]] || fail "--help exited $rc"
grep -q -- "--cluster-only" <<<"$help" || fail "--help lacks --cluster-only"
grep -q "PGW_SOURCE_INI" <<<"$help" || fail "--help is cut short (no PGW_SOURCE_INI): $help"

# ---- the configured port is taken ------------------------------------------------------
PORT=$(pick_port)
ADMIN=$(pick_port "$PORT")
perl -MIO::Socket::INET -e '
    my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],
                                  Listen => 16, ReuseAddr => 1) or die "listen: $!\n";
    sleep 120;' "$PORT" &
HOLDER=$!
for ((i = 0; i < 50; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
sed -e "s/^listen_port = .*/listen_port = $PORT/" -e "s/^admin_port = .*/admin_port = $ADMIN/" \
    conf/pgwarden.ini >"$TMP/source.ini"

PGW_SKIP_DEPS=1 PGW_SOURCE_INI="$TMP/source.ini" scripts/run-embedded.sh >"$TMP/out" 2>&1 &
RUN=$!
for ((i = 0; i < 600; i++)); do # up to 60 s: a cluster starts, then pgwarden
    grep -q '^DATABASE_URL=' "$TMP/out" && break
    kill -0 "$RUN" 2>/dev/null || break
    sleep 0.1
done
URL=$(sed -n 's/^DATABASE_URL=//p' "$TMP/out")
if [[ -z $URL ]]; then
    fail "no DATABASE_URL printed"
    cat "$TMP/out" >&2
    exit 1
fi
grep -q "port $PORT is taken by perl" "$TMP/out" || fail "the clash on $PORT is not reported"
[[ $URL == *":$PORT/"* ]] && fail "DATABASE_URL points at the port another program holds: $URL"
value=$(PGCONNECT_TIMEOUT=10 timeout 30 "$PGBIN/psql" "$URL" -XAtc "SELECT 'through ' || 'pgwarden'" 2>&1)
[[ $value == "through pgwarden" ]] || fail "DATABASE_URL does not work: $value"
kill -0 "$HOLDER" 2>/dev/null || fail "the other program's listener is gone"

# ---- stop: everything it started goes ---------------------------------------------------
kill -TERM "$RUN"
for ((i = 0; i < 600; i++)); do
    kill -0 "$RUN" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$RUN" 2>/dev/null; then
    fail "run-embedded.sh did not stop within 60 s of SIGTERM"
else
    wait "$RUN"
    RUN=""
fi
rundir=$(sed -n 's|.*Config: \(/tmp/pgwarden-embedded-[A-Za-z0-9]*\)/.*|\1|p' "$TMP/out")
[[ -n $rundir && ! -e $rundir ]] || fail "its directory ${rundir:-?} is left behind"

if [[ $failures -ne 0 ]]; then
    echo "---- run-embedded.sh output ----" >&2
    cat "$TMP/out" >&2
    exit 1
fi
echo "run-embedded.sh: clash on $PORT reported, served on ${URL##*@}, stopped cleanly"
