#!/usr/bin/env bash
# scripts/deps.sh: installs the Debian 12 packages pgwarden needs to build, test, run its
# demo and its benchmark, and nothing else.  The one list of packages for every script.
#
#   scripts/deps.sh            install what is missing (apt-get; as root, or through sudo)
#   scripts/deps.sh --list     print the package list
#   scripts/deps.sh --check    exit 1 and name what is missing, installing nothing
#
# As root it runs apt-get directly; as another user it uses `sudo -n` when that works
# without a password, and otherwise prints the apt-get command to run and fails.
set -euo pipefail

PACKAGES=(
    # build
    gcc make cmake pkg-config
    libevent-dev libssl-dev libpq-dev libcunit1-dev libjansson-dev
    # style check
    clang-format
    # fuzz targets (tests/fuzz/): clang, and compiler-rt for libFuzzer and the sanitizers,
    # which clang-14 only recommends (apt-get below installs no recommended packages)
    clang libclang-rt-dev
    # tests and demo: a throwaway PostgreSQL 15, its certificates, runuser (util-linux)
    postgresql-15 postgresql-client-15 openssl util-linux procps
    # benchmark
    pgbouncer
    # driver tests (tests/drivers/): psycopg 3, asyncpg, SQLAlchemy, pgJDBC and a JDK,
    # Node.js and npm (npm installs node-postgres from the npm registry at test time)
    python3-psycopg python3-asyncpg python3-sqlalchemy
    libpostgresql-jdbc-java openjdk-17-jdk-headless
    nodejs npm
)

# A package that another one already provides under the same command counts as present:
# Node.js from NodeSource ships npm inside its nodejs package and conflicts with Debian's
# npm, and another JDK than Debian's 17 serves as well.
declare -A SATISFIED_BY_COMMAND=(
    [nodejs]=node
    [npm]=npm
    [openjdk-17-jdk-headless]=javac
)

missing_packages() {
    local p status
    for p in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] && continue
        [[ -n ${SATISFIED_BY_COMMAND[$p]:-} ]] && command -v "${SATISFIED_BY_COMMAND[$p]}" \
            >/dev/null && continue
        echo "$p"
    done
}

main() {
    case ${1:-} in
    --list)
        printf '%s\n' "${PACKAGES[@]}"
        return 0
        ;;
    --check | "") ;;
    *)
        echo "usage: $0 [--list|--check]" >&2
        return 2
        ;;
    esac
    command -v dpkg-query >/dev/null || {
        echo "deps: not a Debian system; install the equivalents of: ${PACKAGES[*]}" >&2
        return 1
    }
    local missing
    missing=$(missing_packages | tr '\n' ' ')
    missing=${missing% }
    if [[ -z $missing ]]; then
        echo "deps: all packages present"
        return 0
    fi
    if [[ ${1:-} == --check ]]; then
        echo "deps: missing: $missing" >&2
        return 1
    fi

    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "deps: missing packages: $missing" >&2
            echo "deps: run as root:  apt-get update && apt-get install -y $missing" >&2
            return 1
        fi
    fi
    echo "deps: installing $missing"
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y
        -o DPkg::Lock::Timeout=300)
    # Bounded: a stuck mirror must not eat CI's whole time limit.
    timeout 900 "${apt[@]}" update
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    timeout 1800 "${apt[@]}" install --no-install-recommends $missing </dev/null
    missing=$(missing_packages | tr '\n' ' ')
    if [[ -n ${missing// /} ]]; then
        echo "deps: still missing after apt-get: $missing" >&2
        return 1
    fi
    echo "deps: installed"
}

main "$@"
