/*
 * auth_bench.c: microseconds per SCRAM login for each side of pgwarden (not built by CMake;
 * a measurement, not a test).
 *
 *   gcc -O2 -D_GNU_SOURCE -Iproxy bench/auth_bench.c proxy/scram.c proxy/userlist.c \
 *       $(pkg-config --cflags --libs openssl) -o /tmp/auth_bench && /tmp/auth_bench
 *
 * server: px_scram_server_new + server_first + server_final (+ free) for a right proof,
 *         i.e. what pgwarden spends verifying one client (nonces fixed so that the client
 *         messages can be computed once, outside the loop);
 * client: px_scram_client_new + client_first + client_final + client_verify (+ free) with
 *         the SaltedPassword cache warm, i.e. what pgwarden spends logging in to PostgreSQL;
 * pbkdf2: one derivation at 4096 iterations, for comparison.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/scram.h"
#include "auth/scram_int.h"

#define N 20000

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void die(const char *what)
{
    fprintf(stderr, "auth_bench: %s failed\n", what);
    exit(1);
}

int main(void)
{
    struct px_scram_secret sec;
    char *cf, *sf, *cfin, *sfin;
    bool ok;
    double t0 = now_us();
    if (px_scram_secret_from_password("bench-password", PX_SCRAM_DEFAULT_ITER, &sec) < 0)
        die("secret");
    double pbkdf2 = now_us() - t0;

    /* one reference exchange with fixed nonces gives messages valid in every iteration */
    px_scram_test_set_nonce("CLIENTNONCE");
    struct px_scram_client *c = px_scram_client_new("bench-password");
    if (!c || px_scram_client_first(c, &cf) < 0)
        die("client_first");
    px_scram_test_set_nonce("SERVERNONCE");
    struct px_scram_server *s = px_scram_server_new(&sec);
    if (!s || px_scram_server_first(s, cf, strlen(cf), &sf) < 0 ||
        px_scram_client_final(c, sf, strlen(sf), &cfin) < 0 ||
        px_scram_server_final(s, cfin, strlen(cfin), &ok, &sfin) < 0 || !ok ||
        px_scram_client_verify(c, sfin, strlen(sfin)) < 0)
        die("reference exchange");
    px_scram_server_free(s);
    px_scram_client_free(c);

    t0 = now_us();
    for (int i = 0; i < N; i++) {
        char *out1, *out2;
        s = px_scram_server_new(&sec);
        if (!s || px_scram_server_first(s, cf, strlen(cf), &out1) < 0 ||
            px_scram_server_final(s, cfin, strlen(cfin), &ok, &out2) < 0 || !ok)
            die("server loop");
        free(out1);
        free(out2);
        px_scram_server_free(s);
    }
    double server = (now_us() - t0) / N;

    px_scram_test_set_nonce("CLIENTNONCE");
    unsigned long runs = px_scram_pbkdf2_runs();
    t0 = now_us();
    for (int i = 0; i < N; i++) {
        char *out1, *out2;
        c = px_scram_client_new("bench-password");
        if (!c || px_scram_client_first(c, &out1) < 0 ||
            px_scram_client_final(c, sf, strlen(sf), &out2) < 0 ||
            px_scram_client_verify(c, sfin, strlen(sfin)) < 0)
            die("client loop");
        free(out1);
        free(out2);
        px_scram_client_free(c);
    }
    double client = (now_us() - t0) / N;
    px_scram_test_set_nonce(NULL);

    printf("pbkdf2 (4096 iterations, once per user/salt): %8.1f us\n", pbkdf2);
    printf("server-side verification per login:          %8.2f us\n", server);
    printf("client-side login, cache warm:                %8.2f us  (%lu PBKDF2 runs in %d)\n",
           client, px_scram_pbkdf2_runs() - runs, N);
    free(cf);
    free(sf);
    free(cfin);
    free(sfin);
    return 0;
}
