/*
 * test_config_docs.c: the configuration is documented next to the code.  Every key of the
 * tables (px_config_foreach_key) must appear in docs/configuration.md (as `key`) and in
 * conf/pgwarden.ini (as "key =" or "key=", possibly commented out); the example files must
 * load cleanly, and conf/pgwarden.ini's values must be the defaults (except auth_file).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "base/config.h"

#ifndef PGW_SOURCE_DIR
#error "PGW_SOURCE_DIR must name the repository root"
#endif

#define DOCS_MD     PGW_SOURCE_DIR "/docs/configuration.md"
#define EXAMPLE_INI PGW_SOURCE_DIR "/conf/pgwarden.ini"
#define MINIMAL_INI PGW_SOURCE_DIR "/conf/minimal.ini"

/* Returns the whole file as a string (free it), or NULL. */
static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (len + n + 1 > cap) {
            cap = 2 * (len + n + 1);
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = grown;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

static bool is_ident(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* True when text has key as a whole word followed by optional blanks and '='. */
static bool has_assignment(const char *text, const char *key)
{
    size_t n = strlen(key);
    for (const char *s = strstr(text, key); s; s = strstr(s + 1, key)) {
        if (s > text && is_ident(s[-1]))
            continue;
        const char *e = s + n;
        while (*e == ' ' || *e == '\t')
            e++;
        if (*e == '=')
            return true;
    }
    return false;
}

struct doc_check {
    const char *docs, *ini;
    int keys, missing;
};

static void check_key(const char *section, const char *key, const char *help, void *arg)
{
    struct doc_check *d = arg;
    char quoted[128];
    d->keys++;
    snprintf(quoted, sizeof(quoted), "`%s`", key);
    if (!strstr(d->docs, quoted)) {
        fprintf(stderr, "\n  [%s] %s is missing from docs/configuration.md", section, key);
        d->missing++;
    }
    if (!has_assignment(d->ini, key)) {
        fprintf(stderr, "\n  [%s] %s is missing from conf/pgwarden.ini", section, key);
        d->missing++;
    }
}

static void test_every_key_documented(void)
{
    struct doc_check d = {.docs = read_all(DOCS_MD), .ini = read_all(EXAMPLE_INI)};
    CU_ASSERT_PTR_NOT_NULL(d.docs);
    CU_ASSERT_PTR_NOT_NULL(d.ini);
    if (d.docs && d.ini) {
        px_config_foreach_key(check_key, &d);
        CU_ASSERT(d.keys > 30);
        CU_ASSERT_EQUAL(d.missing, 0);
        /* the checker itself: a key that is nowhere must be found missing */
        CU_ASSERT_FALSE(has_assignment(d.ini, "no_such_key"));
        CU_ASSERT_FALSE(has_assignment(d.ini, "port_mode"));
    }
    free((char *)d.docs);
    free((char *)d.ini);
}

/* Documentation for the reader: the reload section and the [databases] syntax exist. */
static void test_docs_sections(void)
{
    char *docs = read_all(DOCS_MD);
    CU_ASSERT_PTR_NOT_NULL_FATAL(docs);
    CU_ASSERT_PTR_NOT_NULL(strstr(docs, "SIGHUP"));
    CU_ASSERT_PTR_NOT_NULL(strstr(docs, "[databases]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(docs, "FILE:LINE"));
    free(docs);
}

static void count_change(const char *section, const char *key, bool reloadable, void *arg)
{
    if (strcmp(key, "auth_file") != 0) {
        fprintf(stderr, "\n  conf/pgwarden.ini: [%s] %s is not at its default", section, key);
        (*(int *)arg)++;
    }
}

static struct px_config *load_or_report(const char *path)
{
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(path, &cfg, &err) < 0)
        fprintf(stderr, "\n  %s\n", err ? err : "(null)");
    free(err);
    return cfg;
}

static void test_example_loads(void)
{
    struct px_config *ex = load_or_report(EXAMPLE_INI);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ex);
    const struct px_db_config *db = px_config_find_db(ex, "postgres");
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    CU_ASSERT_STRING_EQUAL(db->name, "postgres");
    CU_ASSERT_STRING_EQUAL(db->host, "127.0.0.1");
    CU_ASSERT_EQUAL(db->port, 5432);
    CU_ASSERT_STRING_EQUAL(db->dbname, "postgres");
    db = px_config_find_db(ex, "anything_else");
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    CU_ASSERT_STRING_EQUAL(db->name, "*");

    /* Its [pgwarden] values are the documented defaults (minimal.ini + trust -> defaults). */
    char defaults_only[64];
    snprintf(defaults_only, sizeof(defaults_only), "/tmp/pgw_config_defaults_%d.ini",
             (int)getpid());
    FILE *f = fopen(defaults_only, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("[pgwarden]\nauth_file = x\n", f);
    fclose(f);
    struct px_config *def = load_or_report(defaults_only);
    remove(defaults_only);
    CU_ASSERT_PTR_NOT_NULL(def);
    if (def) {
        int others = 0;
        px_config_diff(def, ex, count_change, &others);
        CU_ASSERT_EQUAL(others, 0);
    }
    px_config_free(def);
    px_config_free(ex);
}

static void test_minimal_loads(void)
{
    struct px_config *c = load_or_report(MINIMAL_INI);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_PTR_NOT_NULL(px_config_find_db(c, "postgres"));
    px_config_free(c);
}

void test_config_docs_register(void);
void test_config_docs_register(void)
{
    static const CU_TestInfo tests[] = {
        {"every_key_documented", test_every_key_documented},
        {"docs_sections", test_docs_sections},
        {"example_loads", test_example_loads},
        {"minimal_loads", test_minimal_loads},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("config_docs", NULL, NULL, tests);
}
