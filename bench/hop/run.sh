#!/usr/bin/env bash
# bench/hop/run.sh: build hop_bench (no CMake: one cc line) and run it, nice'd, in a few
# seconds.  See hop_bench.c for what it measures and docs/design/multicore.md for the use
# of the figures.
#
#   bench/hop/run.sh                 window 1 and 64 for every mode but spin, then pool,
#                                    migrate and syscall
#   bench/hop/run.sh -n 5000 spsc    any hop_bench arguments: one run with them
#
# Environment: CC [cc], HOP_OUT (build directory) [build-hop/ at the repository root],
# HOP_ROUNDS [3] rounds of the default set.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${HOP_OUT:-$root/build-hop}
CC=${CC:-cc}
HOP_ROUNDS=${HOP_ROUNDS:-3}

mkdir -p "$out"
# shellcheck disable=SC2046 # pkg-config prints several words on purpose
"$CC" -std=c17 -O2 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
    -Wmissing-prototypes -o "$out/hop_bench" "$here/hop_bench.c" \
    $(pkg-config --cflags --libs libevent_core libevent_pthreads) -lpthread

echo "# $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
if (($# > 0)); then
    exec nice -n 10 "$out/hop_bench" "$@"
fi
for ((i = 1; i <= HOP_ROUNDS; i++)); do
    echo "# round $i"
    nice -n 10 "$out/hop_bench" -n 10000 -w 1 local evactive eventfd pipe spsc
    nice -n 10 "$out/hop_bench" -n 50000 -w 64 local evactive eventfd pipe spsc | tail -n +2
done
nice -n 10 "$out/hop_bench" -p 1000000 pool
nice -n 10 "$out/hop_bench" -n 100000 migrate syscall
