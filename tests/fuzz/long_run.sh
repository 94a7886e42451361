#!/usr/bin/env bash
# tests/fuzz/long_run.sh: the long fuzz run (docs/fuzzing.md): each target, one at a time,
# niced, for RUNS inputs (default 10^7) or MAX_TIME seconds (default 5400), from the
# committed seeds and a corpus kept between runs.
#
#   tests/fuzz/long_run.sh [TARGET...]       default: every target
#
# Environment: BUILD (the -DPGW_FUZZ=ON build tree, default build-fuzz, relative to the
# repository or absolute; built here if the programs are missing), RUNS, MAX_TIME, OUT
# (default $BUILD/tests/fuzz/long: per target a corpus/, the worker's log fuzz-0.log and
# any crash-* / leak-* / timeout-* input).
# Appends "target rc=.. secs=.. runs=.." lines to $OUT/summary.txt and prints them; exits
# non-zero when a target failed.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
SRC=$ROOT/tests/fuzz
BUILD=${BUILD:-build-fuzz}
RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-5400}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
BIN=$BUILD/tests/fuzz
OUT=${OUT:-$BIN/long}
ALL=(startup tokenstate prepared lockcall sqlscan scram relay userlist config admin chaos)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${ALL[@]}")

if [[ ! -x $BIN/fuzz_${targets[0]} ]]; then
    CC=clang cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DPGW_FUZZ=ON \
        -DPGW_TESTS=OFF >/dev/null || exit 1
    nice cmake --build "$BUILD" --target fuzz -j 2 >/dev/null || exit 1
fi

status=0
for t in "${targets[@]}"; do
    dir=$OUT/$t
    mkdir -p "$dir/corpus"
    dict=()
    [[ -f $SRC/dict/$t.dict ]] && dict=(-dict="$SRC/dict/$t.dict")
    start=$(date +%s)
    (cd "$dir" && nice "$BIN/fuzz_$t" -runs="$RUNS" -max_total_time="$MAX_TIME" -jobs=1 -workers=1 \
        -timeout=60 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=./ "${dict[@]}" \
        corpus "$SRC/corpus/$t" >/dev/null 2>&1)
    rc=$?
    runs=$(awk '/^stat::number_of_executed_units:/ { n = $2 } END { print n }' "$dir/fuzz-0.log")
    line="$t rc=$rc secs=$(($(date +%s) - start)) runs=$runs"
    echo "$line" | tee -a "$OUT/summary.txt"
    [[ $rc -eq 0 ]] || status=1
done
exit $status
