/*
 * schedule.c: runs lock schedules in the style of PostgreSQL's isolation specs.
 *
 * A spec file (tests/lockmgr/specs/NAME.spec) is one step per line; `#` starts a comment.
 * Sessions are named by their first appearance (ids 1, 2, ... in that order).
 *
 *   SESSION lock KEY MODE [xact] [timeout=MS] => RESULT [cycle=S1,S2,...] EVENTS...
 *   SESSION try KEY MODE [xact]               => RESULT EVENTS...
 *   SESSION unlock KEY [xact]                 => RESULT EVENTS...
 *   SESSION unlock_all [xact]                 => COUNT EVENTS...
 *   SESSION disconnect                        => COUNT EVENTS...
 *   SESSION cancel                            => RESULT EVENTS...
 *   @ advance MS                              => COUNT EVENTS...   (time += MS; expire)
 *
 * RESULT is a status: ok waiting would_block timeout deadlock canceled not_held
 * not_waiting busy limit.  cycle= lists the waiters of the reported cycle from the
 * requester on.  EVENTS are the callbacks the step caused, in delivery order, each
 * SESSION:STATUS (granted, timeout, deadlock, canceled); a step expects exactly those.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmtest.h"

#define MAX_SESSIONS 64
#define MAX_TOKENS   80

struct sched {
    struct lockmgr *lm;
    char names[MAX_SESSIONS][24];
    struct lockmgr_owner *own[MAX_SESSIONS];
    int nsess;
    uint64_t now_us;
    char *err;
    size_t errlen;
    int line;
};

static const char *const status_names[] = {
    [LOCKMGR_OK] = "ok",
    [LOCKMGR_WAITING] = "waiting",
    [LOCKMGR_WOULD_BLOCK] = "would_block",
    [LOCKMGR_TIMEOUT] = "timeout",
    [LOCKMGR_DEADLOCK] = "deadlock",
    [LOCKMGR_CANCELED] = "canceled",
    [LOCKMGR_NOT_HELD] = "not_held",
    [LOCKMGR_NOT_WAITING] = "not_waiting",
    [LOCKMGR_BUSY] = "busy",
    [LOCKMGR_LIMIT] = "limit",
    [LOCKMGR_TOKENS_EXHAUSTED] = "tokens_exhausted",
    [LOCKMGR_INVALID] = "invalid",
    [LOCKMGR_NOMEM] = "nomem",
};

static int fail(struct sched *s, const char *fmt, ...)
{
    int n = snprintf(s->err, s->errlen, "line %d: ", s->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < s->errlen)
        vsnprintf(s->err + n, s->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int session(struct sched *s, const char *name)
{
    for (int i = 0; i < s->nsess; i++)
        if (strcmp(s->names[i], name) == 0)
            return i;
    if (s->nsess == MAX_SESSIONS || strlen(name) >= sizeof(s->names[0]))
        return -1;
    int i = s->nsess++;
    snprintf(s->names[i], sizeof(s->names[i]), "%s", name);
    s->own[i] = lockmgr_owner_new(s->lm, (uint64_t)i + 1, lmt_record, NULL);
    return s->own[i] ? i : -1;
}

/* Parses the optional [xact] [timeout=MS] words at tok[from..n). */
static void options(char **tok, int from, int n, enum lockmgr_scope *scope, uint64_t *ms)
{
    for (int i = from; i < n; i++) {
        if (strcmp(tok[i], "xact") == 0)
            *scope = LOCKMGR_XACT;
        else if (strncmp(tok[i], "timeout=", 8) == 0)
            *ms = strtoull(tok[i] + 8, NULL, 10);
    }
}

/* Runs the step tok[0..n) (left of "=>"), writing its result word into out. */
static int run_step(struct sched *s, char **tok, int n, char *out, size_t outlen)
{
    if (strcmp(tok[0], "@") == 0) {
        if (n != 3 || strcmp(tok[1], "advance") != 0)
            return fail(s, "bad @ step");
        s->now_us += strtoull(tok[2], NULL, 10) * 1000;
        snprintf(out, outlen, "%zu", lockmgr_expire(s->lm, s->now_us));
        return 0;
    }
    int si = session(s, tok[0]);
    if (si < 0 || n < 2)
        return fail(s, "bad session or step");
    struct lockmgr_owner *o = s->own[si];
    enum lockmgr_scope scope = LOCKMGR_SESSION;
    uint64_t ms = 0, token;
    enum lockmgr_mode mode;
    enum lockmgr_status st;
    const char *op = tok[1];
    if ((strcmp(op, "lock") == 0 || strcmp(op, "try") == 0) && n >= 4) {
        if (!lockmgr_mode_parse(tok[3], strlen(tok[3]), &mode))
            return fail(s, "bad mode %s", tok[3]);
        options(tok, 4, n, &scope, &ms);
        uint64_t deadline = ms ? s->now_us + ms * 1000 : 0;
        if (op[0] == 'l')
            st = lockmgr_acquire(s->lm, o, LMT_KEY(tok[2]), mode, scope, deadline, s->now_us,
                                 &token);
        else
            st = lockmgr_try_acquire(s->lm, o, LMT_KEY(tok[2]), mode, scope, s->now_us, &token);
    } else if (strcmp(op, "unlock") == 0 && n >= 3) {
        options(tok, 3, n, &scope, &ms);
        st = lockmgr_release(s->lm, o, LMT_KEY(tok[2]), scope, s->now_us);
    } else if (strcmp(op, "cancel") == 0) {
        st = lockmgr_cancel_wait(s->lm, o, s->now_us);
    } else if (strcmp(op, "unlock_all") == 0) {
        options(tok, 2, n, &scope, &ms);
        snprintf(out, outlen, "%zu", lockmgr_release_scope(s->lm, o, scope, s->now_us));
        return 0;
    } else if (strcmp(op, "disconnect") == 0) {
        snprintf(out, outlen, "%zu", lockmgr_release_owner(s->lm, o, s->now_us));
        return 0;
    } else {
        return fail(s, "unknown step %s", op);
    }
    snprintf(out, outlen, "%s", status_names[st]);
    return 0;
}

static int check_cycle(struct sched *s, const char *want)
{
    const struct lockmgr_cycle *c = lockmgr_last_cycle(s->lm);
    char got[512] = "";
    size_t len = 0;
    for (size_t i = 0; i < c->n && len < sizeof(got) - 32; i++) {
        int n = snprintf(got + len, sizeof(got) - len, "%s%s", i ? "," : "",
                         s->names[c->edges[i].waiter_id - 1]);
        len += (size_t)n;
        uint64_t next = c->edges[(i + 1) % c->n].waiter_id;
        if (c->edges[i].blocker_id != next)
            return fail(s, "cycle edge %zu does not chain", i);
    }
    if (strcmp(got, want) != 0)
        return fail(s, "cycle: expected %s got %s", want, got);
    return 0;
}

static int check_events(struct sched *s, char **tok, int n)
{
    size_t ei = 0;
    for (int i = 0; i < n; i++) {
        if (strncmp(tok[i], "cycle=", 6) == 0) {
            if (check_cycle(s, tok[i] + 6) < 0)
                return -1;
            continue;
        }
        char *colon = strchr(tok[i], ':');
        if (!colon)
            return fail(s, "bad event %s", tok[i]);
        *colon = '\0';
        const char *want = strcmp(colon + 1, "granted") == 0 ? "ok" : colon + 1;
        if (ei >= lmt_nevents)
            return fail(s, "missing event %s:%s", tok[i], colon + 1);
        const struct lmt_event *e = &lmt_events[ei++];
        const char *who = s->names[e->owner_id - 1];
        if (strcmp(who, tok[i]) != 0 || strcmp(status_names[e->status], want) != 0)
            return fail(s, "event %zu: expected %s:%s got %s:%s", ei, tok[i], want, who,
                        status_names[e->status]);
    }
    if (ei != lmt_nevents)
        return fail(s, "unexpected event %s:%s", s->names[lmt_events[ei].owner_id - 1],
                    status_names[lmt_events[ei].status]);
    return 0;
}

static int run_line(struct sched *s, char *line)
{
    char *tok[MAX_TOKENS];
    int n = 0, arrow = -1;
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    for (char *save, *t = strtok_r(line, " \t\r\n", &save); t && n < MAX_TOKENS;
         t = strtok_r(NULL, " \t\r\n", &save)) {
        if (strcmp(t, "=>") == 0)
            arrow = n;
        tok[n++] = t;
    }
    if (n == 0)
        return 0;
    if (arrow < 1 || arrow + 1 >= n)
        return fail(s, "step needs '=> RESULT'");
    lmt_reset();
    char got[64];
    if (run_step(s, tok, arrow, got, sizeof(got)) < 0)
        return -1;
    if (strcmp(got, tok[arrow + 1]) != 0)
        return fail(s, "expected %s got %s", tok[arrow + 1], got);
    return check_events(s, tok + arrow + 2, n - arrow - 2);
}

int lmt_schedule_run(const char *path, char *err, size_t errlen)
{
    struct sched s = {.err = err, .errlen = errlen, .now_us = 1000000};
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    s.lm = lockmgr_new(NULL);
    int rc = s.lm ? 0 : -1;
    char line[1024];
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        s.line++;
        rc = run_line(&s, line);
    }
    fclose(f);
    lockmgr_free(s.lm);
    return rc;
}
