#!/usr/bin/env bash
# run.sh: the drivers_node test (tests/drivers/README.md).  Installs node-postgres, at the
# version package-lock.json pins, into the build tree (DRIVERS_NODE_DIR) with `npm ci`
# from the npm registry, once per change of the lock file, then runs test_node.js through
# drivers_launch (DRIVERS_LAUNCH).
#
# The npm registry is needed the first time.  When the install fails the test FAILS, with
# the reason: it is never skipped silently.  Only when PGW_NO_NETWORK=1 says that this
# machine cannot reach the registry, and node-postgres is not installed yet, does it skip
# (exit 77: ctest reports "Skipped" and prints why).  Node.js and npm themselves come from
# scripts/deps.sh; without them the test fails.
set -uo pipefail

SRC=$(cd "$(dirname "$0")" && pwd)
: "${DRIVERS_LAUNCH:?set by ctest: the drivers_launch program}"
: "${DRIVERS_NODE_DIR:?set by ctest: where node-postgres is installed}"

fail() {
    echo "drivers_node: FAIL: $*" >&2
    exit 1
}

command -v node >/dev/null || fail "node not found: install Node.js (scripts/deps.sh: nodejs)"
mkdir -p "$DRIVERS_NODE_DIR" || fail "cannot create $DRIVERS_NODE_DIR"

installed=$DRIVERS_NODE_DIR/node_modules/.package-lock.json
if ! cmp -s "$SRC/package-lock.json" "$DRIVERS_NODE_DIR/package-lock.json" ||
    [[ ! -f $installed || ! -d $DRIVERS_NODE_DIR/node_modules/pg ]]; then
    if [[ ${PGW_NO_NETWORK:-0} == 1 ]]; then
        echo "drivers_node: SKIPPED: PGW_NO_NETWORK=1 and node-postgres is not installed in" \
            "$DRIVERS_NODE_DIR (npm ci needs the npm registry)" >&2
        exit 77
    fi
    command -v npm >/dev/null || fail "npm not found: install npm (scripts/deps.sh: npm)"
    cp "$SRC/package.json" "$SRC/package-lock.json" "$DRIVERS_NODE_DIR/" || fail "copy"
    echo "drivers_node: npm ci (node-postgres from the npm registry) into $DRIVERS_NODE_DIR"
    if ! (cd "$DRIVERS_NODE_DIR" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund \
        --cache "$DRIVERS_NODE_DIR/npm-cache" --loglevel=warn); then
        rm -f "$DRIVERS_NODE_DIR/package-lock.json" # try again next time
        fail "npm ci failed: node-postgres could not be installed from the npm registry." \
            "Offline? Set PGW_NO_NETWORK=1 to skip this test (it is then reported as skipped)."
    fi
fi

export NODE_PATH=$DRIVERS_NODE_DIR/node_modules
exec "$DRIVERS_LAUNCH" node "$SRC/test_node.js" "$@"
