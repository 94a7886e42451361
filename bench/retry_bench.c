/*
 * retry_bench.c: costs of the retry library on this machine, and the amplification
 * figures of the retry-budget simulation (tests/retry/budget_sim.c).
 *
 *   retry_bench [scale]      scale multiplies the iteration counts (default 1)
 *
 * Prints one line per figure: name, value, unit.  See retry/README.md, "Benchmarks".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget_sim.h"
#include "retry/retry.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static struct retry_config bench_cfg(void)
{
    struct retry_config cfg;
    retry_config_defaults(&cfg);
    return cfg;
}

/* Records transactions of 100 messages of msg_len bytes, each followed by resp_len
 * response bytes; returns ns per message (response digest included). */
static double bench_record(long txns, size_t msg_len, size_t resp_len)
{
    struct retry_config cfg = bench_cfg();
    struct replay_rec *rec = replay_rec_new(&cfg);
    unsigned char msg[256], resp[256];
    int bad = 0;

    if (!rec)
        return -1;
    memset(msg, 'B', sizeof(msg));
    memset(resp, 'D', sizeof(resp));
    double t0 = now_ns();
    for (long t = 0; t < txns; t++) {
        replay_rec_reset(rec);
        for (int i = 0; i < 100; i++) {
            bad |= replay_rec_message(rec, msg, msg_len) != RETRY_OK;
            if (resp_len)
                bad |= replay_rec_response(rec, resp, resp_len) != RETRY_OK;
        }
    }
    double ns = (now_ns() - t0) / ((double)txns * 100);
    replay_rec_free(rec);
    return bad ? -1 : ns;
}

/* Digests total bytes of responses in chunk-byte pieces, then verifies them; returns ns
 * per byte for recording (*rec_ns) and verifying (*ver_ns). */
static int bench_digest(size_t total, size_t chunk, double *rec_ns, double *ver_ns)
{
    struct retry_config cfg = bench_cfg();
    cfg.retry_buffer_bytes = (size_t)1 << 30;
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    unsigned char *buf = malloc(chunk);
    int bad = !rec || !v || !buf;
    size_t consumed;

    if (!bad) {
        memset(buf, 'x', chunk);
        double t0 = now_ns();
        for (size_t off = 0; off < total; off += chunk)
            bad |= replay_rec_response(rec, buf, chunk) != RETRY_OK;
        *rec_ns = (now_ns() - t0) / (double)total;
        bad |= replay_verify_begin(v, rec) != RETRY_OK;
        enum replay_verdict vd = REPLAY_MORE;
        t0 = now_ns();
        for (size_t off = 0; off < total && !bad; off += chunk)
            vd = replay_verify_feed(v, buf, chunk, &consumed);
        *ver_ns = (now_ns() - t0) / (double)total;
        bad |= vd != REPLAY_MATCH;
    }
    free(buf);
    replay_verifier_free(v);
    replay_rec_free(rec);
    return bad ? -1 : 0;
}

/* ns per call of the per-attempt decisions: backoff_next, budget, breaker_record. */
static void bench_decisions(long n)
{
    struct retry_config cfg = bench_cfg();
    struct breaker_config bcfg;
    struct retry_rng rng;
    struct backoff b;
    uint64_t d, sink = 0;

    breaker_config_defaults(&bcfg);
    cfg.max_attempts = 100;
    retry_rng_seed(&rng, 1);
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (i % 50 == 0)
            backoff_init(&b, &cfg);
        sink += backoff_next(&b, &rng, &d) == RETRY_OK ? d : 0;
    }
    printf("backoff_next                 %10.1f ns/call\n", (now_ns() - t0) / (double)n);

    struct budget *bu = budget_new(&cfg);
    struct breaker *br = breaker_new(&bcfg, NULL, NULL);
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        budget_record_first(bu, (uint64_t)i * 100);
        sink += budget_try_retry(bu, br, (uint64_t)i * 100) == RETRY_OK;
    }
    printf("budget first+try_retry       %10.1f ns/pair\n", (now_ns() - t0) / (double)n);
    t0 = now_ns();
    for (long i = 0; i < n; i++)
        breaker_record(br, false, (uint64_t)i * 100);
    printf("breaker_record               %10.1f ns/call\n", (now_ns() - t0) / (double)n);
    t0 = now_ns();
    for (long i = 0; i < n; i++)
        sink += retry_classify(&cfg.retryable_sqlstates, i & 1 ? "40001" : "23505");
    printf("retry_classify               %10.1f ns/call\n", (now_ns() - t0) / (double)n);
    budget_free(bu);
    breaker_free(br);
    if (sink == 42)
        printf("\n");
}

static void print_sim(const char *name, double fail, const char *sqlstate, bool budget)
{
    struct budget_sim sim = {.rate_per_s = 100,
                             .seconds = 60,
                             .fail_prob = fail,
                             .sqlstate = sqlstate,
                             .use_budget = budget,
                             .max_attempts = 5,
                             .seed = 1234};
    if (budget_sim_run(&sim) != 0) {
        printf("%-28s out of memory\n", name);
        return;
    }
    printf("%-28s amplification %.3f (worst second %.3f), client errors %.2f%% "
           "(%.2f%% refused by the breaker), breaker transitions %u\n",
           name, sim.amplification_after, sim.worst_second_after,
           100.0 * (double)sim.client_errors / (double)sim.txns,
           100.0 * (double)sim.rejected / (double)sim.txns, sim.breaker_transitions);
}

int main(int argc, char **argv)
{
    long scale = argc > 1 ? atol(argv[1]) : 1;
    double rec_ns, ver_ns;

    if (scale < 1)
        scale = 1;
    printf("record message 64 B          %10.1f ns/message\n", bench_record(20000 * scale, 64, 0));
    printf("record message 64 B + 100 B  %10.1f ns/message (response + checkpoint)\n",
           bench_record(20000 * scale, 64, 100));
    if (bench_digest((size_t)256 << 20, 16384, &rec_ns, &ver_ns) == 0) {
        printf("digest responses (16 KiB)    %10.3f ns/byte\n", rec_ns);
        printf("verify replay    (16 KiB)    %10.3f ns/byte\n", ver_ns);
    }
    bench_decisions(2000000 * scale);
    printf("budget simulation: 100 txn/s, 60 s, max_attempts 5, defaults; "
           "amplification = attempts per transaction started after 1 s\n");
    print_sim("0% 40001, budget", 0.0, "40001", true);
    print_sim("10% 40001, budget", 0.10, "40001", true);
    print_sim("100% 40001, budget", 1.0, "40001", true);
    print_sim("100% 40001, no budget", 1.0, "40001", false);
    print_sim("100% 08006, budget+breaker", 1.0, "08006", true);
    return 0;
}
