/*
 * sandbox/sandbox.c: the sandbox framework. It starts one pb_httpd per
 * emulated system and puts fault injection between the server and the
 * emulator's handlers (see sandbox.h for the admin routes and settings).
 *
 * Owns: the `struct pb_sandbox` and, per running system, a `struct system`
 * with the emulator's state (created and destroyed through its type), the
 * fault settings, the route table handed to pb_httpd and one `struct wrap`
 * per emulator route. Everything is freed by pb_sandbox_stop().
 *
 * How routes are wrapped. The table given to pb_httpd is, in order:
 *   1. the framework's admin routes (/_sandbox/health, /_sandbox/faults);
 *   2. every route of the emulator, in its order, each pointing at one of our
 *      handlers with a `struct wrap` as arg. The wrap remembers the
 *      emulator's handler and arg and what to do around it:
 *        WRAP_FAULTS  ordinary routes: ask faults.c, maybe sleep, maybe answer
 *                     429/500/503 or drop the connection instead of calling
 *                     the emulator, maybe slow the reply body;
 *        WRAP_STATS   GET /_sandbox/stats: call the emulator, then add the
 *                     fault counters to its JSON;
 *        WRAP_RESET   POST /_sandbox/reset: call it, then zero the counters;
 *        WRAP_PLAIN   any other /_sandbox/ route: call it unchanged.
 * The admin routes come first so that an emulator cannot shadow them.
 *
 * Invariants: a `struct system` exists only with a live state and an
 * initialised `faults`; `wraps` and `routes` are never reallocated while the
 * server runs (pb_httpd borrows the table).
 *
 * Locking: none here beyond faults.c's mutex. Injected replies are counted
 * there; an emulator's own state has its own lock.
 *
 * Also here, owning nothing: sbx_routes_fill() and sbx_count_status(), the
 * counted route tables that several emulators share (see sbx.h).
 *
 * Emulators are found in a constant table (EMULATORS). Adding a system is
 * one file exporting a `struct sbx_emulator_type`, its extern in sbx.h and
 * one line in that table. References must stay strong: a weak one would not
 * pull the emulator's object out of the static library.
 */
#include "sandbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "faults.h"
#include "net/httpd.h"
#include "sbx.h"

#define SANDBOX_MAGIC 0x53424f58u
#define SYSTEM_MAGIC 0x53595354u
#define MAX_SYSTEMS 8
#define N_ADMIN_ROUTES 3

enum wrap_kind { WRAP_FAULTS, WRAP_STATS, WRAP_RESET, WRAP_PLAIN };

struct system;

struct wrap {
    struct system *sys;             /* back pointer, borrowed */
    enum wrap_kind kind;
    pb_http_handler handler;        /* the emulator's */
    void *arg;                      /* the emulator's */
};

struct system {
    unsigned magic;                 /* SYSTEM_MAGIC while alive */
    const struct sbx_emulator_type *type;
    void *state;                    /* owned through type->create/destroy */
    struct sbx_faults faults;       /* this system's faults */
    struct pb_http_route *routes;   /* owned; admin + wrapped + {NULL} */
    struct wrap *wraps;             /* owned; one per emulator route */
    struct pb_httpd *httpd;         /* owned */
    int port;
    uint64_t started_ns;
};

struct pb_sandbox {
    unsigned magic;                 /* SANDBOX_MAGIC while alive */
    struct system *sys[MAX_SYSTEMS];
    int n;
};

/* ---- the emulator table ------------------------------------------------------ */

static const struct sbx_emulator_type *const EMULATORS[] = {&sbx_xero_type, &sbx_opayo_type,
                                                             &sbx_shop_type, &sbx_sagex3_type,
                                                             &sbx_syspro_type, &sbx_paytrace_type};

static const struct sbx_emulator_type *type_at(size_t i)
{
    return i < sizeof(EMULATORS) / sizeof(EMULATORS[0]) ? EMULATORS[i] : NULL;
}

const char *pb_sandbox_system_name(size_t i)
{
    const struct sbx_emulator_type *t = type_at(i);
    return t ? t->name : NULL;
}

static const struct sbx_emulator_type *type_by_name(const char *name)
{
    const struct sbx_emulator_type *t;
    for (size_t i = 0; (t = type_at(i)); i++)
        if (!strcmp(t->name, name))
            return t;
    return NULL;
}

/* ---- replies ------------------------------------------------------------------- */

static void reply_json(struct pb_http_response *resp, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        pb_http_response_error(resp, 500, "internal", "out of memory");
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
}

static void reply_injected(struct pb_http_response *resp, const struct sbx_fault_plan *plan,
                           const char *system)
{
    char buf[16];
    switch (plan->kind) {
    case SBX_FAULT_429:
        snprintf(buf, sizeof(buf), "%u", plan->retry_after_s);
        pb_http_response_header(resp, "Retry-After", buf);
        pb_http_response_header(resp, "X-Rate-Limit-Problem", "minute");
        reply_json(resp, 429,
                   json_pack("{s:n,s:s,s:i,s:s}", "Type", "Title", "Too Many Requests", "Status",
                             429, "Detail", "sandbox fault injection: burst_429"));
        break;
    case SBX_FAULT_500:
        /* A problem-details body, as Xero's API gateway sends. */
        reply_json(resp, 500,
                   json_pack("{s:n,s:s,s:i,s:s}", "Type", "Title", "An error occurred", "Status",
                             500, "Detail", "sandbox fault injection: error_rate"));
        break;
    default:
        /* A plain JSON error body, as a load balancer in front might send. */
        pb_http_response_error(resp, 503, "service_unavailable",
                               "%s sandbox fault injection: error_rate", system);
        break;
    }
}

/* ---- wrapped handlers -------------------------------------------------------------- */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Add `n` to the integer member `key` of `obj` (creating it). */
static void add_count(json_t *obj, const char *key, uint64_t n)
{
    json_t *v = json_object_get(obj, key);
    json_int_t have = json_is_integer(v) ? json_integer_value(v) : 0;
    if (n)
        json_object_set_new(obj, key, json_integer(have + (json_int_t)n));
}

/* Add the framework's numbers to an emulator's stats reply. */
static void decorate_stats(struct system *sys, struct pb_http_response *resp)
{
    json_t *stats, *counters, *responses;
    uint64_t total = 0;
    char *text;
    if (resp->status != 200 || !resp->body)
        return;
    stats = json_loadb(resp->body, resp->body_len, 0, NULL);
    if (!json_is_object(stats)) {
        json_decref(stats);
        return;
    }
    counters = sbx_faults_counters_json(&sys->faults, &total);
    if (counters) {
        uint64_t n429 = (uint64_t)json_integer_value(json_object_get(counters, "burst_429"));
        uint64_t n500 = (uint64_t)json_integer_value(json_object_get(counters, "error_500"));
        uint64_t n503 = (uint64_t)json_integer_value(json_object_get(counters, "error_503"));
        uint64_t nrst = (uint64_t)json_integer_value(json_object_get(counters, "reset"));
        /* Injected replies never reached the emulator: count them here. */
        add_count(stats, "requests", n429 + n500 + n503 + nrst);
        responses = json_object_get(stats, "responses");
        if (!json_is_object(responses)) {
            responses = json_object();
            json_object_set_new(stats, "responses", responses);
        }
        if (responses) {
            add_count(responses, "429", n429);
            add_count(responses, "500", n500);
            add_count(responses, "503", n503);
        }
        json_object_set_new(stats, "faults", counters);
        json_object_set_new(stats, "faults_injected", json_integer((json_int_t)total));
    }
    text = json_dumps(stats, JSON_COMPACT);
    json_decref(stats);
    if (text)
        pb_http_response_body_take(resp, 200, text, strlen(text));
}

static enum pb_http_action wrapped(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct wrap *w = arg;
    struct system *sys = w->sys;
    struct sbx_fault_plan plan;
    enum pb_http_action act;

    switch (w->kind) {
    case WRAP_PLAIN:
        return w->handler(req, resp, w->arg);
    case WRAP_STATS:
        act = w->handler(req, resp, w->arg);
        if (act == PB_HTTP_DONE)
            decorate_stats(sys, resp);
        return act;
    case WRAP_RESET:
        act = w->handler(req, resp, w->arg);
        if (act == PB_HTTP_DONE && resp->status >= 200 && resp->status < 300)
            sbx_faults_reset_counters(&sys->faults);
        return act;
    case WRAP_FAULTS:
        break;
    }

    sbx_faults_decide(&sys->faults, &plan);
    if (plan.delay_ms)
        sleep_ms(plan.delay_ms);
    if (plan.kind == SBX_FAULT_RESET) {
        sbx_faults_count_applied(&sys->faults, &plan);
        return PB_HTTP_RESET;
    }
    if (plan.kind != SBX_FAULT_NONE) {
        sbx_faults_count_applied(&sys->faults, &plan);
        reply_injected(resp, &plan, sys->type->name);
        return PB_HTTP_DONE;
    }
    act = w->handler(req, resp, w->arg);
    if (act == PB_HTTP_DONE && plan.slow_body_ms && resp->body_len > 0)
        resp->slow_body_ms = plan.slow_body_ms;
    else
        plan.slow_body_ms = 0;
    sbx_faults_count_applied(&sys->faults, &plan);
    return act;
}

/* ---- admin routes ------------------------------------------------------------------ */

static enum pb_http_action admin_health(struct pb_http_request *req,
                                        struct pb_http_response *resp, void *arg)
{
    struct system *sys = arg;
    uint64_t up = (pb_monotonic_ns() - sys->started_ns) / 1000000000ull;
    reply_json(resp, 200,
               json_pack("{s:s,s:s,s:i,s:I}", "status", "ok", "system", sys->type->name, "port",
                         sys->port, "uptime_s", (json_int_t)up));
    return PB_HTTP_DONE;
}

static enum pb_http_action admin_faults_get(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *arg)
{
    struct system *sys = arg;
    json_t *j = sbx_faults_to_json(&sys->faults);
    if (j)
        json_object_set_new(j, "system", json_string(sys->type->name));
    reply_json(resp, 200, j);
    return PB_HTTP_DONE;
}

static enum pb_http_action admin_faults_post(struct pb_http_request *req,
                                             struct pb_http_response *resp, void *arg)
{
    struct system *sys = arg;
    struct pb_err err = {0};
    json_error_t jerr;
    json_t *patch;
    if (req->body_len == 0) {
        pb_http_response_error(resp, 400, "invalid", "POST /_sandbox/faults needs a JSON object");
        return PB_HTTP_DONE;
    }
    patch = json_loadb(req->body, req->body_len, 0, &jerr);
    if (!patch) {
        pb_http_response_error(resp, 400, "invalid", "faults body is not JSON: %s (line %d)",
                               jerr.text, jerr.line);
        return PB_HTTP_DONE;
    }
    if (sbx_faults_merge(&sys->faults, patch, &err)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "%s", err.msg);
        return PB_HTTP_DONE;
    }
    json_decref(patch);
    return admin_faults_get(req, resp, arg);
}

/* ---- one system ------------------------------------------------------------------ */

static void system_free(struct system *sys)
{
    if (!sys)
        return;
    if (sys->httpd)
        pb_httpd_stop(sys->httpd);
    if (sys->state)
        sys->type->destroy(sys->state);
    sbx_faults_destroy(&sys->faults);
    free(sys->routes);
    free(sys->wraps);
    sys->magic = 0;
    free(sys);
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static enum pb_rc build_routes(struct system *sys, struct pb_err *err)
{
    const struct pb_http_route *er = sys->type->routes(sys->state);
    size_t n = 0, i;
    while (er && er[n].pattern)
        n++;
    sys->wraps = calloc(n ? n : 1, sizeof(*sys->wraps));
    sys->routes = calloc(N_ADMIN_ROUTES + n + 1, sizeof(*sys->routes));
    if (!sys->wraps || !sys->routes)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    sys->routes[0] = (struct pb_http_route){"GET", "/_sandbox/health", admin_health, sys};
    sys->routes[1] = (struct pb_http_route){"GET", "/_sandbox/faults", admin_faults_get, sys};
    sys->routes[2] = (struct pb_http_route){"POST", "/_sandbox/faults", admin_faults_post, sys};
    for (i = 0; i < n; i++) {
        struct wrap *w = &sys->wraps[i];
        w->sys = sys;
        w->handler = er[i].handler;
        w->arg = er[i].arg;
        if (!starts_with(er[i].pattern, "/_sandbox/"))
            w->kind = WRAP_FAULTS;
        else if (!strcmp(er[i].pattern, "/_sandbox/stats") && !strcmp(er[i].method, "GET"))
            w->kind = WRAP_STATS;
        else if (!strcmp(er[i].pattern, "/_sandbox/reset") && !strcmp(er[i].method, "POST"))
            w->kind = WRAP_RESET;
        else
            w->kind = WRAP_PLAIN;
        sys->routes[N_ADMIN_ROUTES + i] =
            (struct pb_http_route){er[i].method, er[i].pattern, wrapped, w};
    }
    return PB_OK;
}

static enum pb_rc system_start(const struct sbx_emulator_type *type, const char *bind,
                               json_t *conf, struct system **out, struct pb_err *err)
{
    struct system *sys;
    struct pb_httpd_config hc;
    json_t *port = json_object_get(conf, "port");
    json_t *faults = json_object_get(conf, "faults");
    enum pb_rc rc;

    if (port && (!json_is_integer(port) || json_integer_value(port) < 0 ||
                 json_integer_value(port) > 65535))
        return pb_err_set(err, PB_ERR_CONFIG, "%s.port must be an integer from 0 to 65535",
                          type->name);
    if (faults && (rc = sbx_faults_check(faults, err))) {
        pb_err_prefix(err, "%s.faults", type->name);
        return PB_ERR_CONFIG;
    }
    sys = calloc(1, sizeof(*sys));
    if (!sys)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    sys->magic = SYSTEM_MAGIC;
    sys->type = type;
    if ((rc = sbx_faults_init(&sys->faults, err))) {
        free(sys);
        return rc;
    }
    if (faults)
        sbx_faults_merge(&sys->faults, faults, NULL);
    sys->state = type->create(conf, err);
    if (!sys->state) {
        if (err && err->rc == PB_OK)
            pb_err_set(err, PB_ERR_CONFIG, "cannot create the emulator");
        pb_err_prefix(err, "%s", type->name);
        system_free(sys);
        return err ? err->rc : PB_ERR_CONFIG;
    }
    if ((rc = build_routes(sys, err)))
        goto fail;
    memset(&hc, 0, sizeof(hc));
    hc.bind_addr = bind;
    hc.port = port ? (int)json_integer_value(port) : 0;
    hc.max_body = PB_SANDBOX_MAX_BODY;
    hc.threads = 0;
    hc.routes = sys->routes;
    if ((rc = pb_httpd_start(&hc, &sys->httpd, err))) {
        pb_err_prefix(err, "%s: cannot listen on %s:%d", type->name, bind, hc.port);
        goto fail;
    }
    sys->port = pb_httpd_port(sys->httpd);
    sys->started_ns = pb_monotonic_ns();
    if (type->started)
        type->started(sys->state, sys->port);
    *out = sys;
    return PB_OK;
fail:
    system_free(sys);
    return rc;
}

/* ---- public ------------------------------------------------------------------------ */

static int system_enabled(json_t *conf)
{
    json_t *en;
    if (!conf || json_is_false(conf) || json_is_null(conf))
        return 0;
    en = json_object_get(conf, "enabled");
    return !en || json_is_true(en);
}

enum pb_rc pb_sandbox_start(json_t *settings, struct pb_sandbox **out, struct pb_err *err)
{
    struct pb_sandbox *sb;
    const char *bind = "127.0.0.1";
    const char *key;
    json_t *v;
    enum pb_rc rc = PB_OK;

    *out = NULL;
    if (settings && !json_is_object(settings))
        return pb_err_set(err, PB_ERR_CONFIG, "sandbox settings must be a JSON object");
    json_object_foreach(settings, key, v)
    {
        const struct sbx_emulator_type *t;
        if (!strcmp(key, "bind")) {
            if (!json_is_string(v) || !json_string_length(v))
                return pb_err_set(err, PB_ERR_CONFIG, "bind must be an address string");
            bind = json_string_value(v);
            continue;
        }
        t = type_by_name(key);
        if (!t && system_enabled(v)) {
            return pb_err_set(err, PB_ERR_CONFIG,
                              "unknown sandbox system \"%s\" (this build has: %s%s%s)", key,
                              pb_sandbox_system_name(0) ? pb_sandbox_system_name(0) : "none",
                              pb_sandbox_system_name(1) ? ", " : "",
                              pb_sandbox_system_name(1) ? pb_sandbox_system_name(1) : "");
        }
        if (system_enabled(v) && !json_is_object(v))
            return pb_err_set(err, PB_ERR_CONFIG, "%s must be an object, false or absent", key);
        if (json_is_object(v) && json_object_get(v, "enabled") &&
            !json_is_boolean(json_object_get(v, "enabled")))
            return pb_err_set(err, PB_ERR_CONFIG, "%s.enabled must be true or false", key);
    }

    sb = calloc(1, sizeof(*sb));
    if (!sb)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    sb->magic = SANDBOX_MAGIC;
    json_object_foreach(settings, key, v)
    {
        const struct sbx_emulator_type *t = type_by_name(key);
        if (!t || !system_enabled(v))
            continue;
        if (sb->n >= MAX_SYSTEMS) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "too many sandbox systems");
            break;
        }
        if ((rc = system_start(t, bind, v, &sb->sys[sb->n], err)))
            break;
        sb->n++;
    }
    if (rc) {
        pb_sandbox_stop(sb);
        return rc;
    }
    *out = sb;
    return PB_OK;
}

static struct system *find_system(const struct pb_sandbox *sb, const char *name)
{
    if (!sb || sb->magic != SANDBOX_MAGIC || !name)
        return NULL;
    for (int i = 0; i < sb->n; i++)
        if (!strcmp(sb->sys[i]->type->name, name))
            return sb->sys[i];
    return NULL;
}

int pb_sandbox_port(const struct pb_sandbox *sb, const char *system)
{
    struct system *sys = find_system(sb, system);
    return sys ? sys->port : -1;
}

enum pb_rc pb_sandbox_set_faults(struct pb_sandbox *sb, const char *system, json_t *faults,
                                 struct pb_err *err)
{
    struct system *sys = find_system(sb, system);
    if (!sys)
        return pb_err_set(err, PB_ERR_NOTFOUND, "sandbox system \"%s\" is not running",
                          system ? system : "(null)");
    return sbx_faults_merge(&sys->faults, faults, err);
}

json_t *pb_sandbox_ports_json(const struct pb_sandbox *sb)
{
    json_t *j = json_object();
    if (!j || !sb || sb->magic != SANDBOX_MAGIC)
        return j;
    for (int i = 0; i < sb->n; i++)
        json_object_set_new(j, sb->sys[i]->type->name, json_integer(sb->sys[i]->port));
    return j;
}

void pb_sandbox_stop(struct pb_sandbox *sb)
{
    if (!sb || sb->magic != SANDBOX_MAGIC)
        return;
    /* Stop every server first, so that no request is in flight anywhere
     * while states are destroyed. */
    for (int i = 0; i < sb->n; i++) {
        pb_httpd_stop(sb->sys[i]->httpd);
        sb->sys[i]->httpd = NULL;
    }
    for (int i = 0; i < sb->n; i++)
        system_free(sb->sys[i]);
    sb->magic = 0;
    free(sb);
}

/* ---- counted route tables (sbx.h) ---------------------------------------- */

void sbx_routes_fill(const struct sbx_route_spec *spec, size_t n, void *state,
                     pb_http_handler through, struct sbx_route_slot *slots,
                     struct pb_http_route *routes)
{
    for (size_t i = 0; i < n; i++) {
        slots[i] = (struct sbx_route_slot){state, spec[i].handler};
        routes[i] = (struct pb_http_route){spec[i].method, spec[i].pattern, through, &slots[i]};
    }
    routes[n] = (struct pb_http_route){NULL, NULL, NULL, NULL};
}

void sbx_count_status(int *codes, uint64_t *counts, size_t n, int status)
{
    for (size_t i = 0; i < n; i++) {
        if (codes[i] == 0)
            codes[i] = status;
        if (codes[i] == status) {
            counts[i]++;
            return;
        }
    }
}
