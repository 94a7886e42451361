/*
 * admin_chaos.c: the fault-injection endpoints (SPEC section 7; the rule engine is
 * chaos/chaos.h; answers are documented with examples in docs/admin-api.md):
 *
 *   GET    /chaos        [rule, ...]: every rule with its id and counters
 *   POST   /chaos        adds the rule in the body (a JSON object): 201 with the rule and
 *                        its id; 400 {"error"} naming the field on any problem
 *   DELETE /chaos        removes every rule: {"removed": n}
 *   GET    /chaos/<id>   one rule; 404 when there is none
 *   DELETE /chaos/<id>   removes one rule: {"removed": 1, "id": id}; 404 when there is none
 *
 * Mutating requests need the admin token: admin.c answers 401 or 403 before a handler
 * here runs.  The engine writes the JSON text itself (probabilities as written: 0.3, not
 * 0.29999999999999999), so answers go out as that text rather than through jansson again.
 *
 * Interface: px_admin_register_chaos (admin.h).  Event loop thread only.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "admin/admin.h"
#include "chaos/chaos.h"

/* Replies with JSON text (owned, freed here); NULL: 500 out of memory. */
static void reply_text(struct px_admin_req *req, int status, char *text)
{
    struct evbuffer *b = text ? evbuffer_new() : NULL;
    if (!b || evbuffer_add(b, text, strlen(text)) < 0 || evbuffer_add(b, "\n", 1) < 0) {
        if (b)
            evbuffer_free(b);
        free(text);
        px_admin_reply_error(req, 500, "out of memory");
        return;
    }
    free(text);
    px_admin_reply_buffer(req, status, "application/json", b);
    evbuffer_free(b);
}

/* GET, POST, DELETE /chaos */
static void h_chaos(struct px_admin_req *req, void *arg)
{
    (void)arg;
    unsigned m = px_admin_req_method(req);
    if (m == PX_ADMIN_GET) {
        reply_text(req, 200, px_chaos_list_json());
    } else if (m == PX_ADMIN_DELETE) {
        size_t n = px_chaos_clear();
        px_admin_reply_json(req, 200, json_pack("{s:I}", "removed", (json_int_t)n));
    } else {
        size_t len;
        const char *body = px_admin_req_body(req, &len);
        if (!body) {
            px_admin_reply_error(req, 400,
                                 "a JSON request body is required: the rule, like "
                                 "{\"inject\": \"error\", \"sqlstate\": \"40001\"}");
            return;
        }
        char *why = NULL;
        char *rule = px_chaos_add_json(body, len, &why);
        if (!rule) {
            bool nomem = why && strncmp(why, "out of memory", 13) == 0;
            px_admin_reply_error(req, nomem ? 500 : 400, "%s", why ? why : "out of memory");
            free(why);
            return;
        }
        reply_text(req, 201, rule);
    }
}

/* The id in the subpath: decimal digits only.  0 when it is not one. */
static uint64_t parse_id(const char *s)
{
    if (*s < '0' || *s > '9' || strlen(s) > 20)
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    return *end == '\0' && errno == 0 ? (uint64_t)v : 0;
}

/* The rule with this id as JSON text (owned), from the list; NULL with *found. */
static char *rule_text(uint64_t id, bool *found)
{
    *found = false;
    char *list = px_chaos_list_json();
    json_t *root = list ? json_loads(list, 0, NULL) : NULL;
    free(list);
    size_t i;
    json_t *r, *hit = NULL;
    json_array_foreach(root, i, r)
    {
        if ((uint64_t)json_integer_value(json_object_get(r, "id")) == id)
            hit = r;
    }
    *found = hit != NULL || !root; /* out of memory: let the caller answer 500 */
    char *text = hit ? json_dumps(hit, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(root);
    return text;
}

/* GET, DELETE /chaos/<id> */
static void h_chaos_rule(struct px_admin_req *req, void *arg)
{
    (void)arg;
    const char *sub = px_admin_req_subpath(req);
    uint64_t id = parse_id(sub);
    if (id == 0) {
        px_admin_reply_error(req, 400, "a rule id is a positive integer (got \"%.40s\")", sub);
        return;
    }
    if (px_admin_req_method(req) == PX_ADMIN_GET) {
        bool found;
        char *text = rule_text(id, &found);
        if (!found)
            px_admin_reply_error(req, 404, "no chaos rule %" PRIu64, id);
        else
            reply_text(req, 200, text);
        return;
    }
    if (!px_chaos_remove(id)) {
        px_admin_reply_error(req, 404, "no chaos rule %" PRIu64, id);
        return;
    }
    px_admin_reply_json(req, 200,
                        json_pack("{s:I, s:I}", "removed", (json_int_t)1, "id", (json_int_t)id));
}

int px_admin_register_chaos(struct px_admin *a)
{
    if (px_admin_route_add(a, PX_ADMIN_GET | PX_ADMIN_POST | PX_ADMIN_DELETE, "/chaos", false,
                           h_chaos, NULL) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET | PX_ADMIN_DELETE, "/chaos/", true, h_chaos_rule, NULL) <
            0)
        return -1;
    return 0;
}
