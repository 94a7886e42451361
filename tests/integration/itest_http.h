/*
 * itest_http.h: HTTP and Prometheus helpers shared by the integration-test programs that
 * read pgwarden's admin port (test_admin.c, test_locks_admin.c): raw HTTP/1.1 requests
 * over TCP, JSON answers parsed with jansson, and a strict check of the text exposition
 * format that returns every sample for lookups.
 * Header-only (static functions) because every test_*.c is its own program.
 */
#ifndef PGW_TESTS_INTEGRATION_ITEST_HTTP_H
#define PGW_TESTS_INTEGRATION_ITEST_HTTP_H

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>

#include "harness.h"

/* ---- raw HTTP ---------------------------------------------------------------------- */

struct http_reply {
    int status;  /* 0 when nothing parsable came back */
    bool closed; /* the server closed the connection */
    char *head;  /* status line and headers, NUL-terminated (owned) */
    char *body;  /* NUL-terminated (owned); chunked encoding removed */
    size_t body_len;
};

static inline void http_reply_free(struct http_reply *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Removes chunked transfer encoding in place; returns the new length. */
static inline size_t dechunk(char *b, size_t len)
{
    size_t in = 0, out = 0;
    while (in < len) {
        char *end = NULL;
        unsigned long n = strtoul(b + in, &end, 16);
        char *crlf = strstr(b + in, "\r\n");
        if (!crlf || n == 0)
            break;
        in = (size_t)(crlf - b) + 2;
        if (in + n > len)
            n = len - in;
        memmove(b + out, b + in, n);
        out += n;
        in += n + 2;
        (void)end;
    }
    b[out] = '\0';
    return out;
}

/*
 * Sends req (len bytes) to the admin port and reads the answer until the server closes
 * (requests carry "Connection: close") or 5 s without data.
 */
static inline struct http_reply http_raw(int port, const void *req, size_t len)
{
    struct http_reply r = {0};
    size_t cap = 4 << 20;
    char *buf = malloc(cap + 1);
    int fd = harness_raw_connect(port, 2000);
    if (!buf || fd < 0) {
        free(buf);
        if (fd >= 0)
            close(fd);
        return r;
    }
    (void)harness_raw_send(fd, req, len, 3000); /* may fail once the server answered */
    ssize_t n = harness_raw_recv(fd, buf, cap, 5000, &r.closed);
    close(fd);
    if (n <= 0) {
        free(buf);
        return r;
    }
    buf[n] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) != 0 || !sep) {
        free(buf);
        return r;
    }
    r.status = atoi(buf + 9);
    *sep = '\0';
    r.head = strdup(buf);
    r.body_len = (size_t)n - (size_t)(sep + 4 - buf);
    r.body = malloc(r.body_len + 1);
    if (r.body) {
        memcpy(r.body, sep + 4, r.body_len);
        r.body[r.body_len] = '\0';
        if (r.head && strcasestr(r.head, "transfer-encoding: chunked"))
            r.body_len = dechunk(r.body, r.body_len);
    }
    free(buf);
    return r;
}

/* method path with an optional Authorization header value. */
static inline struct http_reply http(int port, const char *method, const char *path,
                                     const char *auth)
{
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s\r\n", method,
                     path, auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "");
    return http_raw(port, req, (size_t)n);
}

/* The value of one series of GET /metrics, named exactly as exposed (with its labels, if
 * any: `pgwarden_clients_parked`, `pgwarden_clients{database="d",user="u",state="idle"}`);
 * -1 when the scrape fails or the series is not there. */
static inline double metric_value(int port, const char *series)
{
    struct http_reply r = http(port, "GET", "/metrics", NULL);
    double v = -1;
    size_t n = strlen(series);
    for (const char *l = r.status == 200 ? r.body : NULL; l && *l;
         l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (!strncmp(l, series, n) && l[n] == ' ') {
            v = atof(l + n + 1);
            break;
        }
    }
    http_reply_free(&r);
    return v;
}

/* GET path and parse the body as JSON; NULL (printed) unless 200 with valid JSON. */
static inline json_t *get_json(int port, const char *path, const char *auth)
{
    struct http_reply r = http(port, "GET", path, auth);
    json_t *j = NULL;
    if (r.status == 200 && r.body) {
        json_error_t err;
        j = json_loadb(r.body, r.body_len, 0, &err);
        if (!j)
            fprintf(stderr, "GET %s: bad JSON (%s): %.300s\n", path, err.text, r.body);
        if (!r.head || !strcasestr(r.head, "content-type: application/json"))
            fprintf(stderr, "GET %s: not application/json:\n%s\n", path, r.head);
    } else
        fprintf(stderr, "GET %s: status %d: %.300s\n", path, r.status, r.body ? r.body : "");
    http_reply_free(&r);
    return j;
}

/* The element of array whose key has string value want (NULL if none). */
static inline json_t *find_by(json_t *array, const char *key, const char *want)
{
    size_t i;
    json_t *e;
    json_array_foreach(array, i, e)
    {
        const char *v = json_string_value(json_object_get(e, key));
        if (v && strcmp(v, want) == 0)
            return e;
    }
    return NULL;
}

/* ---- /metrics ---------------------------------------------------------------------- */

struct family {
    char name[128];
    char type[16];
};

static inline bool name_char(int ch, bool first)
{
    return isalpha(ch) || ch == '_' || ch == ':' || (!first && isdigit(ch));
}

/* Parses a metric or label name at *p; copies it into out; false when empty. */
static inline bool parse_name(const char **p, char *out, size_t cap, bool colon_ok)
{
    size_t n = 0;
    while (name_char((unsigned char)**p, n == 0) && (colon_ok || **p != ':')) {
        if (n + 1 < cap)
            out[n++] = **p;
        (*p)++;
    }
    out[n] = '\0';
    return n > 0;
}

static inline bool parse_value(const char *s, const char **end, double *v)
{
    if (strncmp(s, "+Inf", 4) == 0 || strncmp(s, "-Inf", 4) == 0 || strncmp(s, "NaN", 3) == 0) {
        *v = s[0] == 'N' ? NAN : (s[0] == '-' ? -INFINITY : INFINITY);
        *end = s + (s[0] == 'N' ? 3 : 4);
        return true;
    }
    char *e;
    *v = strtod(s, &e);
    *end = e;
    return e != s && (isdigit((unsigned char)s[0]) || s[0] == '-' || s[0] == '.' || s[0] == '+');
}

/*
 * One sample line "name{l="v",...} value [timestamp]".  Fills name, the canonical label
 * text (without le) and le; returns false with a reason when the line is malformed.
 */
static inline bool parse_sample(const char *line, char *name, char *labels, size_t lcap, char *le,
                                double *value, const char **why)
{
    const char *p = line;
    *why = "bad metric name";
    if (!parse_name(&p, name, 128, true))
        return false;
    labels[0] = le[0] = '\0';
    size_t ln = 0;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            char lname[128], lval[512];
            size_t vn = 0;
            *why = "bad label name";
            if (!parse_name(&p, lname, sizeof(lname), false))
                return false;
            *why = "expected =\"";
            if (p[0] != '=' || p[1] != '"')
                return false;
            p += 2;
            while (*p && *p != '"') {
                if (*p == '\\') {
                    *why = "bad escape in label value";
                    if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                        return false;
                    p++;
                }
                if (vn + 1 < sizeof(lval))
                    lval[vn++] = *p;
                p++;
            }
            lval[vn] = '\0';
            *why = "unterminated label value";
            if (*p != '"')
                return false;
            p++;
            if (strcmp(lname, "le") == 0)
                snprintf(le, 64, "%.63s", lval);
            else
                ln +=
                    (size_t)snprintf(labels + ln, lcap > ln ? lcap - ln : 0, "%s=%s,", lname, lval);
            *why = "expected , or }";
            if (*p == ',')
                p++;
            else if (*p != '}')
                return false;
        }
        p++;
    }
    *why = "expected one space before the value";
    if (*p != ' ')
        return false;
    p++;
    const char *end;
    *why = "bad value";
    if (!parse_value(p, &end, value))
        return false;
    p = end;
    if (*p == ' ') { /* optional timestamp: an integer */
        p++;
        *why = "bad timestamp";
        if (*p == '-')
            p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    *why = "trailing characters";
    return *p == '\0';
}

static inline struct family *family_of(struct family *fams, int nf, const char *name)
{
    for (int i = 0; i < nf; i++)
        if (strcmp(fams[i].name, name) == 0)
            return &fams[i];
    return NULL;
}

/* The family a sample belongs to, given the TYPE lines seen so far. */
static inline struct family *sample_family(struct family *fams, int nf, const char *name,
                                           const char **suffix)
{
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    *suffix = "";
    struct family *f = family_of(fams, nf, name);
    if (f)
        return f;
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(name), s = strlen(sfx[i]);
        if (n > s && strcmp(name + n - s, sfx[i]) == 0) {
            char base[128];
            snprintf(base, sizeof(base), "%.*s", (int)(n - s), name);
            f = family_of(fams, nf, base);
            if (f && strcmp(f->type, "histogram") == 0) {
                *suffix = sfx[i];
                return f;
            }
        }
    }
    return NULL;
}

struct series {
    char key[720];
    double value;
};

/*
 * Strict check of an exposition-format body.  Returns the number of errors (each
 * printed).  Fills *out (owned, free()) with every sample as "name|labels|le" -> value.
 */
static inline int check_exposition(const char *text, struct series **out, int *nout)
{
    int errors = 0, nf = 0, ns = 0, cap = 4096;
    struct family *fams = calloc(512, sizeof(*fams));
    struct series *ser = calloc((size_t)cap, sizeof(*ser));
    char *copy = strdup(text);
    if (!fams || !ser || !copy) {
        free(fams);
        free(ser);
        free(copy);
        return 1;
    }
    size_t tl = strlen(text);
    if (tl == 0 || text[tl - 1] != '\n') {
        fprintf(stderr, "metrics: body does not end with a newline\n");
        errors++;
    }
    /* Histogram bookkeeping: last bucket value per label set, +Inf per label set. */
    int lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (line[0] == '#') {
            char kw[8], name[128], rest[64];
            if (sscanf(line, "# %7s %127s %63s", kw, name, rest) >= 2 &&
                (strcmp(kw, "HELP") == 0 || strcmp(kw, "TYPE") == 0)) {
                if (strncmp(name, "pgwarden_", 9) != 0) {
                    fprintf(stderr, "metrics:%d: name without pgwarden_: %s\n", lineno, line);
                    errors++;
                }
                if (strcmp(kw, "TYPE") == 0) {
                    if (family_of(fams, nf, name) || nf == 512) {
                        fprintf(stderr, "metrics:%d: second TYPE for %s\n", lineno, name);
                        errors++;
                    } else if (strcmp(rest, "counter") && strcmp(rest, "gauge") &&
                               strcmp(rest, "histogram") && strcmp(rest, "summary") &&
                               strcmp(rest, "untyped")) {
                        fprintf(stderr, "metrics:%d: bad type: %s\n", lineno, line);
                        errors++;
                    } else {
                        snprintf(fams[nf].name, sizeof(fams[nf].name), "%s", name);
                        snprintf(fams[nf].type, sizeof(fams[nf].type), "%.15s", rest);
                        nf++;
                    }
                }
            }
            continue;
        }
        char name[128], labels[512], le[64];
        double v;
        const char *why;
        if (!parse_sample(line, name, labels, sizeof(labels), le, &v, &why)) {
            fprintf(stderr, "metrics:%d: %s: %s\n", lineno, why, line);
            errors++;
            continue;
        }
        const char *suffix;
        struct family *f = sample_family(fams, nf, name, &suffix);
        if (!f) {
            fprintf(stderr, "metrics:%d: sample before/without TYPE: %s\n", lineno, line);
            errors++;
        } else if (strcmp(f->type, "counter") == 0 &&
                   (strlen(name) < 6 || strcmp(name + strlen(name) - 6, "_total") != 0 || v < 0)) {
            fprintf(stderr, "metrics:%d: counter not _total or negative: %s\n", lineno, line);
            errors++;
        } else if (strcmp(suffix, "_bucket") == 0 && le[0] == '\0') {
            fprintf(stderr, "metrics:%d: bucket without le: %s\n", lineno, line);
            errors++;
        }
        if (ns == cap) {
            fprintf(stderr, "metrics: too many series\n");
            errors++;
            break;
        }
        snprintf(ser[ns].key, sizeof(ser[ns].key), "%.127s|%.500s|%.63s", name, labels, le);
        for (int i = 0; i < ns; i++)
            if (strcmp(ser[i].key, ser[ns].key) == 0) {
                fprintf(stderr, "metrics:%d: duplicate series: %s\n", lineno, line);
                errors++;
                break;
            }
        /* Buckets cumulative: not below the previous bucket of the same label set. */
        if (strcmp(suffix, "_bucket") == 0 && ns > 0) {
            const char *prev = ser[ns - 1].key;
            char pref[700];
            snprintf(pref, sizeof(pref), "%s|%s|", name, labels);
            if (strncmp(prev, pref, strlen(pref)) == 0 && v < ser[ns - 1].value) {
                fprintf(stderr, "metrics:%d: bucket not cumulative: %s\n", lineno, line);
                errors++;
            }
        }
        ser[ns].value = v;
        ns++;
    }
    /* Each histogram: +Inf bucket equals _count. */
    for (int i = 0; i < ns; i++) {
        char *inf = strstr(ser[i].key, "_bucket|");
        if (!inf || strcmp(ser[i].key + strlen(ser[i].key) - 5, "|+Inf") != 0)
            continue;
        char want[700];
        snprintf(want, sizeof(want), "%.*s_count%.*s|", (int)(inf - ser[i].key), ser[i].key,
                 (int)(strlen(inf) - strlen("_bucket") - 5), inf + strlen("_bucket"));
        bool found = false;
        for (int k = 0; k < ns && !found; k++)
            if (strcmp(ser[k].key, want) == 0) {
                found = true;
                if (ser[k].value != ser[i].value) {
                    fprintf(stderr, "metrics: %s != %s\n", ser[i].key, want);
                    errors++;
                }
            }
        if (!found) {
            fprintf(stderr, "metrics: no %s for %s\n", want, ser[i].key);
            errors++;
        }
    }
    free(fams);
    free(copy);
    *out = ser;
    *nout = ns;
    return errors;
}

static inline double series_value(const struct series *s, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s[i].key, key) == 0)
            return s[i].value;
    return -1;
}

static inline bool scrape(int port, struct series **s, int *n)
{
    struct http_reply r = http(port, "GET", "/metrics", NULL);
    bool ok = r.status == 200 && r.body;
    CU_ASSERT_EQUAL(r.status, 200);
    if (ok) {
        CU_ASSERT_PTR_NOT_NULL(r.head ? strcasestr(r.head, "content-type: text/plain") : NULL);
        int errors = check_exposition(r.body, s, n);
        CU_ASSERT_EQUAL(errors, 0);
        ok = errors == 0 || *s;
    }
    http_reply_free(&r);
    return ok;
}

#endif
