#!/usr/bin/env bash
# tests/lockmgr/mutants.sh: the mutation check of the deadlock search (lockmgr/README.md,
# note 6).  Each mutant breaks one rule of the search or of the records it trusts; the
# lockmgr tests must then fail.
#
#   tests/lockmgr/mutants.sh [BUILD_DIR]     default build-lm (a configured build tree)
#
# Run from the repository root.  Each mutant is applied to the source in place, the
# test_lockmgr target is rebuilt and run, and the file is restored (also on error or
# Ctrl-C); at the end the target is rebuilt from the clean source.  Exit status 1 if a
# mutant survives that is not listed as equivalent.
set -euo pipefail

BUILD=${1:-build-lm}
TEST=$BUILD/tests/lockmgr/test_lockmgr
[ -d "$BUILD" ] || { echo "no build tree $BUILD (cmake -S . -B $BUILD first)" >&2; exit 2; }

# name @@ file @@ text @@ replacement (literal, \n for a newline; the text must occur in
# the file)
MUTANTS=(
    "no_soft_reach @@ lockmgr/deadlock.c @@ if (!upgrade && firstx < ord) @@ if (!upgrade && 0)"
    "upgrade_soft_edges @@ lockmgr/deadlock.c @@ if (!upgrade && firstx < ord) @@ if (firstx < ord)"
    "any_exclusive_in_queue @@ lockmgr/deadlock.c @@ if (!upgrade && firstx < ord) @@ if (!upgrade && firstx != UINT64_MAX)"
    "no_start_hold @@ lockmgr/deadlock.c @@         return LM_END_HARD; @@         (void)0;"
    "start_soft_from_upgrade @@ lockmgr/deadlock.c @@     if (!jupg && (lm_conflicts[jmode] @@     if ((lm_conflicts[jmode]"
    "claims_ignored @@ lockmgr/deadlock.c @@         uint8_t fresh = r & (uint8_t)~done; @@         uint8_t fresh = r & (uint8_t)~done & (uint8_t)~r;"
    "prune_waiting_holder @@ lockmgr/deadlock.c @@ jh->jqi == LM_NO_QUEUE)) @@ jh->jqi != LM_NO_QUEUE))"
    "no_self_skip @@ lockmgr/deadlock.c @@         if (h->owner != f->owner && (f->modes & LM_BIT(m))) { @@         if ((f->modes & LM_BIT(m))) {"
    "wrong_exclusive_passed @@ lockmgr/deadlock.c @@     const struct lm_wait *x = em->lm->queues[w->qi].xhead; @@     const struct lm_wait *x = em->lm->queues[w->qi].xtail;"
    "record_not_refreshed_on_mode @@ lockmgr/locks.c @@         h->key->nheld[after]++;\n    lm_qhot_refresh(lm, h->key); @@         h->key->nheld[after]++;"
    "record_not_refreshed_on_wait @@ lockmgr/waits.c @@     lm_qhot_refresh_holds(lm, o); @@     (void)o;"
    "record_stale_firstx @@ lockmgr/waits.c @@         lm->qhot[k->qi].firstx = q->xhead ? q->xhead->ord : UINT64_MAX; @@ "
    "record_any_holder_count @@ lockmgr/table.c @@ key_nholds(k) != 1) @@ key_nholds(k) == 0)"
    "exclusive_list_order @@ lockmgr/waits.c @@         after = w->upgrade ? q->xupg_last : q->xtail; @@         after = q->xtail;"
    "start_soft_dropped @@ lockmgr/deadlock.c @@         return LM_END_SOFT; @@         (void)0;"
    "describe_nothing @@ lockmgr/deadlock.c @@     direct_edges(lm, c->described, upto - 1, c->n - 1, lm->cyc_last_hm); @@     (void)0;"
    "describe_from_zero @@ lockmgr/deadlock.c @@     direct_edges(lm, c->described, upto - 1, c->n - 1, lm->cyc_last_hm); @@     direct_edges(lm, 1, upto - 1, c->n - 2, lm->cyc_last_hm);"
    "cycle_not_forgotten @@ lockmgr/table.c @@     lm_cycle_forget(lm); /* the workspace may move */ @@     (void)0;"
)
# Survives by design: lemma 2's soft case cannot close a cycle while the graph is
# acyclic (lockmgr/README.md); the branch keeps the lemma exact.
EQUIVALENT=" start_soft_dropped "

backup=$(mktemp -d)
current=""
restore() {
    if [ -n "$current" ]; then
        cp "$backup/file" "$current"
        current=""
    fi
}
built=0
cleanup() {
    restore
    rm -rf "$backup"
    if [ "$built" -eq 1 ]; then # leave the build tree as the clean source builds it
        cmake --build "$BUILD" -j2 --target test_lockmgr >/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

survivors=0
for m in "${MUTANTS[@]}"; do
    name=${m%% @@ *}
    rest=${m#* @@ }
    file=${rest%% @@ *}
    rest=${rest#* @@ }
    old=${rest%% @@ *}
    new=${rest#* @@ }
    cp "$file" "$backup/file"
    current=$file
    OLD=$old NEW=$new perl -0pi -e \
        'BEGIN { $o = $ENV{OLD}; $o =~ s/\\n/\n/g; $n = $ENV{NEW}; $n =~ s/\\n/\n/g }
         $c = s/\Q$o\E/$n/; END { exit($c ? 0 : 3) }' "$file" ||
        { echo "$name: does not apply to $file" >&2; exit 2; }
    built=1
    if ! cmake --build "$BUILD" -j2 --target test_lockmgr >"$backup/build.log" 2>&1; then
        result="killed (does not build)"
    elif (timeout 600 "$TEST" >"$backup/test.log" 2>&1) 2>/dev/null; then
        if [[ $EQUIVALENT == *" $name "* ]]; then
            result="survived (equivalent, expected)"
        else
            result="SURVIVED"
            survivors=$((survivors + 1))
        fi
    else
        failed=$(grep -c 'FAILED' "$backup/test.log" || true)
        result="killed ($failed failing tests or a crash)"
    fi
    restore
    printf '%-32s %s\n' "$name" "$result"
done
[ "$survivors" -eq 0 ]
