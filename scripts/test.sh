#!/usr/bin/env bash
# scripts/test.sh: the whole test run, as CI does it (.ci/run calls this).
#
#   1. installs what is missing (scripts/deps.sh)
#   2. builds Release into build/ and ASan+UBSan into build-san/ (-DPGW_SANITIZE=ON)
#   3. runs `ctest --output-on-failure` in both (unit and integration test programs; the
#      integration tests start their own throwaway PostgreSQL 15; the driver tests of
#      tests/drivers/ run in the sanitizer tree only)
#   4. builds the libFuzzer targets with clang into build-fuzz/ (-DPGW_FUZZ=ON) and runs
#      each for PGW_FUZZ_TIME seconds from its committed seed corpus (tests/fuzz/, one
#      ctest test per target: a crash, leak, timeout or failed check fails it)
#   5. checks clang-format on every tracked *.c / *.h
# and ends with "N passed, N failed" (ctest tests of the three trees).  Exits non-zero when
# anything failed.  Environment: JOBS (parallel build jobs, default 2), PGW_REQUIRE_LSAN=1
# (fail instead of warning when LeakSanitizer cannot run here), PGW_SKIP_DEPS=1,
# PGW_BUILD_DIR / PGW_SAN_BUILD_DIR / PGW_FUZZ_BUILD_DIR (default build / build-san /
# build-fuzz), PGW_FUZZ_TIME (seconds per fuzz target, default 10; 0 skips step 4).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
JOBS=${JOBS:-2}
BUILD_DIR=${PGW_BUILD_DIR:-build}
SAN_BUILD_DIR=${PGW_SAN_BUILD_DIR:-build-san}
FUZZ_BUILD_DIR=${PGW_FUZZ_BUILD_DIR:-build-fuzz}
FUZZ_TIME=${PGW_FUZZ_TIME:-10}
failed_steps=()
passed=0
failed=0
lsan_note=""

step() { printf '\n==== %s ====\n' "$*"; }

if [[ ${PGW_SKIP_DEPS:-0} != 1 ]]; then
    step "dependencies"
    scripts/deps.sh || {
        echo "test.sh: dependencies missing: cannot build" >&2
        echo "0 passed, 0 failed (dependencies missing)"
        exit 1
    }
fi

export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# LeakSanitizer stops the world with ptrace; some sandboxes forbid that and LSan then dies
# instead of reporting.  Find out with a program that leaks on purpose, and say so loudly.
check_lsan() {
    local tmp out
    tmp=$(mktemp -d)
    cat >"$tmp/leak.c" <<'EOF'
#include <stdlib.h>
void *volatile keep;
int main(void) { keep = malloc(33); keep = 0; return 0; }
EOF
    if ! gcc -fsanitize=address -g -O0 "$tmp/leak.c" -o "$tmp/leak" 2>"$tmp/cc.log"; then
        cat "$tmp/cc.log" >&2
        lsan_note="AddressSanitizer cannot link here"
        rm -rf "$tmp"
        return 1
    fi
    out=$(timeout 60 "$tmp/leak" 2>&1)
    rm -rf "$tmp"
    if grep -q "LeakSanitizer: detected memory leaks" <<<"$out"; then
        echo "LeakSanitizer works"
        return 0
    fi
    echo "$out" | head -n 5 >&2
    lsan_note="LeakSanitizer does NOT work on this machine (ptrace restricted?): leaks NOT checked"
    return 1
}

step "LeakSanitizer self-check"
if ! check_lsan; then
    echo "WARNING: $lsan_note" >&2
    if [[ ${PGW_REQUIRE_LSAN:-0} == 1 ]]; then
        failed_steps+=("LeakSanitizer unavailable")
    else
        # Keep ASan's other checks: a broken LSan would fail every program at exit.
        export ASAN_OPTIONS=detect_leaks=0
    fi
fi

# ctest's summary "NN% tests passed, F tests failed out of T" -> adds to the counters.
count_ctest() {
    local log=$1 line total nfail
    line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
    if [[ -z $line ]]; then
        grep -q "No tests were found" "$log" && return 0
        return 1
    fi
    nfail=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
    passed=$((passed + total - nfail))
    failed=$((failed + nfail))
}

build_and_test() { # NAME DIR CMAKE-ARGS...
    local name=$1 dir=$2
    shift 2
    step "configure $name ($dir)"
    if ! cmake -S "$ROOT" -B "$dir" "$@"; then
        failed_steps+=("configure $name")
        return
    fi
    step "build $name"
    # -k: build every target that can be built, so that the tests of the modules that do
    # compile still run (ctest reports the others as failed).
    if ! cmake --build "$dir" -j "$JOBS" -- -k; then
        failed_steps+=("build $name")
    fi
    step "ctest $name"
    local log="$dir/ctest-summary.log"
    (cd "$dir" && ctest --output-on-failure) 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    if ! count_ctest "$log"; then
        failed_steps+=("ctest $name (no summary)")
    elif [[ $rc -ne 0 ]] && ! grep -qE '[1-9][0-9]* tests? failed' "$log"; then
        failed_steps+=("ctest $name (exit $rc)")
    fi
}

# The driver tests (tests/drivers/: psycopg, asyncpg, pgJDBC, node-postgres) run once, in
# the sanitizer tree, where they also check pgwarden's memory.
build_and_test Release "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DPGW_DRIVER_TESTS=OFF
build_and_test sanitizer "$SAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DPGW_SANITIZE=ON \
    -DPGW_DRIVER_TESTS=ON

# The fuzz targets: only they are built in this tree (clang, libFuzzer, ASan + UBSan), and
# run in parallel, each for FUZZ_TIME seconds (ctest label "fuzz").
fuzz_step() {
    local log="$FUZZ_BUILD_DIR/ctest-summary.log"
    step "configure fuzz ($FUZZ_BUILD_DIR, clang)"
    if ! cmake -S "$ROOT" -B "$FUZZ_BUILD_DIR" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
        -DPGW_FUZZ=ON -DPGW_TESTS=OFF -DPGW_FUZZ_TIME="$FUZZ_TIME"; then
        failed_steps+=("configure fuzz")
        return
    fi
    step "build fuzz targets"
    if ! cmake --build "$FUZZ_BUILD_DIR" -j "$JOBS" --target fuzz -- -k; then
        failed_steps+=("build fuzz")
    fi
    step "fuzz: each target ${FUZZ_TIME}s from tests/fuzz/corpus"
    (cd "$FUZZ_BUILD_DIR" && ctest --output-on-failure -L fuzz -j "$JOBS") 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    # One line per target: how many inputs it ran (libFuzzer's final stats).
    awk '/^[0-9]+\/[0-9]+ Test: / { name = $3 }
         /^stat::number_of_executed_units:/ { printf "  %-16s %12d inputs\n", name, $2 }' \
        "$FUZZ_BUILD_DIR/Testing/Temporary/LastTest.log" 2>/dev/null | sort
    if ! count_ctest "$log"; then
        failed_steps+=("ctest fuzz (no summary)")
    elif [[ $rc -ne 0 ]] && ! grep -qE '[1-9][0-9]* tests? failed' "$log"; then
        failed_steps+=("ctest fuzz (exit $rc)")
    fi
}
if [[ $FUZZ_TIME != 0 ]]; then
    fuzz_step
fi

step "clang-format"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t sources < <(git -C "$ROOT" ls-files '*.c' '*.h')
else
    mapfile -t sources < <(find . \( -path './build*' -o -path './.git' \) -prune -o \
        -type f \( -name '*.c' -o -name '*.h' \) -print | sed 's|^\./||')
fi
existing=()
for f in "${sources[@]}"; do
    [[ -f $f ]] && existing+=("$f")
done
sources=("${existing[@]}")
if [[ ${#sources[@]} -eq 0 ]]; then
    echo "no C sources"
elif clang-format --dry-run --Werror "${sources[@]}"; then
    echo "clang-format: ${#sources[@]} files clean"
else
    failed_steps+=("clang-format")
fi

echo
for s in "${failed_steps[@]}"; do
    echo "FAILED: $s"
done
[[ -n $lsan_note ]] && echo "NOTE: $lsan_note"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 && ${#failed_steps[@]} -eq 0 ]]
