/*
 * admin/api.c: the daemon's route table, admin REST API, and /metrics.
 *
 * Routes (all JSON):
 *   POST /hooks/{connection}            webhook inbox (authenticated by the connector)
 *   GET  /healthz                       liveness, no auth
 *   GET  /readyz                        the store answers, no auth
 *   GET  /metrics                       Prometheus text; admin key unless admin.metrics_public
 *   GET  /admin/events?limit=N          recent events
 *   GET  /admin/events/{id}             an event's whole trace
 *   GET  /admin/dlq?limit=N             dead letters
 *   GET  /admin/dlq/{job}               one dead letter with its attempts
 *   POST /admin/dlq/{job}/replay        queue it again (current mapping)
 *   POST /admin/dlq/replay              queue all dead letters again
 *   POST /admin/refunds                 refund at the gateway (ceiling checked), then the credit memo
 *   GET  /admin/refunds                 refund requests and their state
 *   GET  /admin/chargebacks             chargebacks, nearest deadline first
 *   POST /admin/chargebacks             open one; POST /admin/chargebacks/{id} {state} moves it
 *   POST /admin/reconcile               {connection, date}: queue a reconciliation run (202)
 *   GET  /admin/recon/runs?connection=C reconciliation runs, newest day first
 *   GET  /admin/recon/runs/{run}        one run (id or C:YYYY-MM-DD): breaks, journals, problems
 *   GET  /admin/recon/runs/{run}/items?kind=match|line|record   its inputs and matches
 *   GET  /admin/recon/breaks?connection=C&from=D&to=D   every break of the period's runs
 *   POST /admin/recon/journals/{ref}/undo   reverse a journal ({"by": NAME} optional)
 *
 * Admin authentication: `Authorization: Bearer <key>`; the SHA-256 of the
 * key must be one of admin.api_keys ("sha256:<hex>"), compared in constant
 * time. Keys are never stored in clear. No key configured = admin API off.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "engine/engine.h"
#include "engine/refunds.h"
#include "reconcile/reconcile.h"

/* The reconciliation scheduler of this process, set by `serve` once it runs
 * (pb_admin_set_reconcile); NULL until then or when nothing reconciles. */
static struct pb_reconcile_scheduler *_Atomic recon_sched;

void pb_admin_set_reconcile(struct pb_reconcile_scheduler *s) { recon_sched = s; }

static int authorised(struct pb_engine *e, struct pb_http_request *req)
{
    const char *h = pb_http_header(req, "Authorization");
    struct pb_config *cfg = pb_engine_config(e);
    unsigned char digest[32];
    char hex[65];
    size_t i;
    json_t *k;
    int ok = 0;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    if (pb_sha256(h, strlen(h), digest) || pb_hex_encode(digest, 32, hex, sizeof(hex)))
        return 0;
    json_array_foreach(cfg->admin_keys, i, k)
    {
        const char *s = json_string_value(k) + 7;
        if (strlen(s) == 64)
            ok |= pb_ct_equal(s, hex, 64);
    }
    return ok;
}

#define REQUIRE_ADMIN(e, req, resp)                                                                \
    do {                                                                                           \
        if (!authorised((e), (req))) {                                                             \
            pb_http_response_error((resp), 401, "unauthorized",                                    \
                                   "send Authorization: Bearer <admin key> (admin.api_keys)");     \
            pb_http_response_header((resp), "WWW-Authenticate", "Bearer");                         \
            return PB_HTTP_DONE;                                                                   \
        }                                                                                          \
    } while (0)

static enum pb_http_action send_json(struct pb_http_response *resp, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    pb_http_response_body_take(resp, status, s, s ? strlen(s) : 0);
    return PB_HTTP_DONE;
}

static enum pb_http_action query_route(struct pb_engine *e, struct pb_http_response *resp,
                                       const char *what, json_t *args)
{
    json_t *out = NULL;
    struct pb_err err = {0};
    enum pb_rc rc = pb_store_query(pb_engine_store(e), what, args, &out, &err);
    json_decref(args);
    if (rc) {
        pb_http_response_error(resp, rc == PB_ERR_NOTFOUND ? 404 : 500, pb_rc_name(rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    return send_json(resp, 200, out);
}

static long long id_param(const char *s)
{
    char *end;
    long long v = strtoll(s ? s : "", &end, 10);
    return (*end || v <= 0) ? -1 : v;
}

static enum pb_http_action h_healthz(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    pb_http_response_set(resp, 200, "application/json", "{\"status\":\"ok\"}", 15);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_readyz(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    if (pb_engine_pending(e) < 0) {
        pb_http_response_error(resp, 503, "store", "the store does not answer");
        return PB_HTTP_DONE;
    }
    pb_http_response_set(resp, 200, "application/json", "{\"status\":\"ready\"}", 18);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_events(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    const char *l = pb_http_query(req, "limit");
    REQUIRE_ADMIN(e, req, resp);
    return query_route(e, resp, "events.list", json_pack("{s:I}", "limit", (json_int_t)(l ? id_param(l) : 50)));
}

static enum pb_http_action h_event(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    REQUIRE_ADMIN(e, req, resp);
    long long id = id_param(req->params[0]);
    if (id < 0) {
        pb_http_response_error(resp, 400, "invalid", "event id must be a positive integer");
        return PB_HTTP_DONE;
    }
    return query_route(e, resp, "events.show", json_pack("{s:I}", "id", (json_int_t)id));
}

static enum pb_http_action h_dlq(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    const char *l = pb_http_query(req, "limit");
    REQUIRE_ADMIN(e, req, resp);
    return query_route(e, resp, "dlq.list", json_pack("{s:I}", "limit", (json_int_t)(l ? id_param(l) : 50)));
}

static enum pb_http_action h_dlq_show(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    REQUIRE_ADMIN(e, req, resp);
    long long id = id_param(req->params[0]);
    if (id < 0) {
        pb_http_response_error(resp, 400, "invalid", "job id must be a positive integer");
        return PB_HTTP_DONE;
    }
    return query_route(e, resp, "dlq.show", json_pack("{s:I}", "id", (json_int_t)id));
}

static enum pb_http_action replay(struct pb_engine *e, struct pb_http_response *resp, long long id)
{
    struct pb_store_op op;
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_REPLAY;
    op.u.replay.job_id = id;
    op.u.replay.now_ms = pb_now_ms();
    if (pb_store_run(pb_engine_store(e), &op)) {
        pb_http_response_error(resp, op.rc == PB_ERR_NOTFOUND ? 404 : 500, pb_rc_name(op.rc), "%s", op.err.msg);
        return PB_HTTP_DONE;
    }
    pb_engine_wake(e);
    return send_json(resp, 200, json_pack("{s:I}", "replayed", (json_int_t)op.u.replay.count));
}

static enum pb_http_action h_replay_one(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    REQUIRE_ADMIN(e, req, resp);
    long long id = id_param(req->params[0]);
    if (id < 0) {
        pb_http_response_error(resp, 400, "invalid", "job id must be a positive integer");
        return PB_HTTP_DONE;
    }
    return replay(e, resp, id);
}

static enum pb_http_action h_replay_all(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    REQUIRE_ADMIN(e, req, resp);
    return replay(e, resp, 0);
}

/* ---- refunds and chargebacks ---------------------------------------------------------- */

static int status_of(enum pb_rc rc)
{
    switch (rc) {
    case PB_ERR_NOTFOUND: return 404;
    case PB_ERR_EXISTS: return 409;
    case PB_ERR_PERMANENT: return 422;
    case PB_ERR_STORE: return 503;
    default: return 400;
    }
}

static json_t *body_json(struct pb_http_request *req, struct pb_http_response *resp)
{
    json_error_t je;
    json_t *b = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(b)) {
        pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object (%s at line %d)",
                               b ? "not an object" : je.text, je.line);
        json_decref(b);
        return NULL;
    }
    return b;
}

static const char *field(json_t *b, const char *k) { return json_string_value(json_object_get(b, k)); }

static enum pb_http_action h_refund_create(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    json_t *b, *out = NULL;
    struct pb_err err = {0};
    enum pb_rc rc;
    REQUIRE_ADMIN(e, req, resp);
    if (!(b = body_json(req, resp)))
        return PB_HTTP_DONE;
    if (!field(b, "connection") || !field(b, "transaction") || !field(b, "amount")) {
        json_decref(b);
        pb_http_response_error(resp, 400, "invalid",
                               "connection, transaction and amount (a decimal string) are required");
        return PB_HTTP_DONE;
    }
    rc = pb_refund_request(pb_engine_config(e), pb_engine_store(e), field(b, "connection"),
                           field(b, "transaction"), field(b, "amount"), field(b, "reason"),
                           field(b, "reference"), &out, &err);
    json_decref(b);
    if (rc) {
        pb_http_response_error(resp, status_of(rc), pb_rc_name(rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    pb_engine_wake(e);
    return send_json(resp, 201, out);
}

static enum pb_http_action h_refunds(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    REQUIRE_ADMIN(e, req, resp);
    return query_route(e, resp, "refunds.list", json_pack("{s:i}", "limit", 1000));
}

static enum pb_http_action h_chargebacks(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    REQUIRE_ADMIN(e, req, resp);
    return query_route(e, resp, "chargebacks.list", json_pack("{s:i}", "limit", 1000));
}

static enum pb_http_action h_chargeback_open(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    json_t *b, *out = NULL;
    struct pb_err err = {0};
    enum pb_rc rc;
    REQUIRE_ADMIN(e, req, resp);
    if (!(b = body_json(req, resp)))
        return PB_HTTP_DONE;
    rc = pb_chargeback_open(pb_engine_config(e), pb_engine_store(e), field(b, "connection") ? field(b, "connection") : "",
                            field(b, "transaction") ? field(b, "transaction") : "",
                            field(b, "amount") ? field(b, "amount") : "", field(b, "reason_code"),
                            field(b, "deadline"), &out, &err);
    json_decref(b);
    if (rc) {
        pb_http_response_error(resp, status_of(rc), pb_rc_name(rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    pb_engine_wake(e);
    return send_json(resp, 201, out);
}

static enum pb_http_action h_chargeback_update(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    json_t *b, *out = NULL;
    struct pb_err err = {0};
    enum pb_rc rc;
    long long id = id_param(req->params[0]);
    REQUIRE_ADMIN(e, req, resp);
    if (id < 0) {
        pb_http_response_error(resp, 400, "invalid", "chargeback id must be a positive integer");
        return PB_HTTP_DONE;
    }
    if (!(b = body_json(req, resp)))
        return PB_HTTP_DONE;
    if (!field(b, "state")) {
        json_decref(b);
        pb_http_response_error(resp, 400, "invalid", "state (evidence_submitted, won or lost) is required");
        return PB_HTTP_DONE;
    }
    rc = pb_chargeback_update(pb_engine_config(e), pb_engine_store(e), id, field(b, "state"), &out, &err);
    json_decref(b);
    if (rc) {
        pb_http_response_error(resp, status_of(rc), pb_rc_name(rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    pb_engine_wake(e);
    return send_json(resp, 200, out);
}

/* ---- /metrics -------------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t n, cap;
};

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0)
            return;
        if (b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)k;
        char *np = realloc(b->p, cap);
        if (!np)
            return;
        b->p = np;
        b->cap = cap;
    }
}

#define LOAD(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))

static void hist(struct buf *b, const char *name, const char *labels, struct pb_histogram *h)
{
    unsigned long long cum = 0;
    for (int i = 0; i <= PB_HIST_BUCKETS; i++) {
        cum += LOAD(h->bucket[i]);
        if (i < PB_HIST_BUCKETS) {
            unsigned long long us = pb_hist_bounds_ns[i] / 1000;
            bprintf(b, "%s_bucket{%s%sle=\"%llu.%06llu\"} %llu\n", name, labels, labels[0] ? "," : "",
                    us / 1000000, us % 1000000, cum);
        } else {
            bprintf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, labels[0] ? "," : "", cum);
        }
    }
    unsigned long long sum = LOAD(h->sum_ns);
    bprintf(b, "%s_sum{%s} %llu.%09llu\n", name, labels, sum / 1000000000ull, sum % 1000000000ull);
    bprintf(b, "%s_count{%s} %llu\n", name, labels, LOAD(h->count));
}

static enum pb_http_action h_metrics(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_config *cfg = pb_engine_config(e);
    struct pb_metrics *m = pb_engine_metrics(e);
    struct buf b = {malloc(16384), 0, 16384};
    json_t *states = NULL;
    struct pb_err err = {0};
    struct pb_store_stats ss;
    if (!cfg->metrics_public)
        REQUIRE_ADMIN(e, req, resp);
    if (!b.p) {
        pb_http_response_error(resp, 500, "out_of_memory", "out of memory");
        return PB_HTTP_DONE;
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
        {"paybridge_events_received_total", "Webhook requests received", offsetof(struct pb_conn_metrics, received)},
        {"paybridge_events_accepted_total", "New events committed durably", offsetof(struct pb_conn_metrics, accepted)},
        {"paybridge_events_duplicate_total", "Redeliveries acknowledged and not processed again", offsetof(struct pb_conn_metrics, duplicate)},
        {"paybridge_events_rejected_total", "Webhooks refused with a 4xx", offsetof(struct pb_conn_metrics, rejected)},
        {"paybridge_events_unavailable_total", "Webhooks answered 503 because the store failed", offsetof(struct pb_conn_metrics, unavailable)},
        {"paybridge_sink_items_done_total", "Items the remote system accepted", offsetof(struct pb_conn_metrics, calls_done)},
        {"paybridge_sink_items_retry_total", "Items that failed transiently", offsetof(struct pb_conn_metrics, calls_retry)},
        {"paybridge_sink_items_dead_total", "Items dead-lettered", offsetof(struct pb_conn_metrics, calls_dead)},
    };
    for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]); c++) {
        bprintf(&b, "# HELP %s %s\n# TYPE %s counter\n", counters[c].name, counters[c].help, counters[c].name);
        for (size_t i = 0; i < cfg->n_conns && i < PB_METRICS_MAX_CONNS; i++) {
            _Atomic uint64_t *v = (_Atomic uint64_t *)((char *)&m->conn[i] + counters[c].off);
            bprintf(&b, "%s{connection=\"%s\"} %llu\n", counters[c].name, cfg->conns[i].conn.name, LOAD(*v));
        }
    }
    bprintf(&b, "# HELP paybridge_jobs Jobs by state\n# TYPE paybridge_jobs gauge\n");
    if (pb_store_query(pb_engine_store(e), "jobs.states", NULL, &states, &err) == PB_OK) {
        const char *k;
        json_t *v;
        json_object_foreach(states, k, v)
            bprintf(&b, "paybridge_jobs{state=\"%s\"} %lld\n", k, (long long)json_integer_value(v));
        bprintf(&b, "# HELP paybridge_dead_letters Jobs in the dead-letter queue\n# TYPE paybridge_dead_letters gauge\n");
        bprintf(&b, "paybridge_dead_letters %lld\n", (long long)json_integer_value(json_object_get(states, "dead")));
        json_decref(states);
    }
    bprintf(&b, "# HELP paybridge_job_attempts_total Job attempts by outcome\n# TYPE paybridge_job_attempts_total counter\n");
    bprintf(&b, "paybridge_job_attempts_total{outcome=\"done\"} %llu\n", LOAD(m->jobs_done));
    bprintf(&b, "paybridge_job_attempts_total{outcome=\"skipped\"} %llu\n", LOAD(m->jobs_skipped));
    bprintf(&b, "paybridge_job_attempts_total{outcome=\"retry\"} %llu\n", LOAD(m->jobs_retried));
    bprintf(&b, "paybridge_job_attempts_total{outcome=\"dead\"} %llu\n", LOAD(m->jobs_dead));
    bprintf(&b, "# HELP paybridge_xref_hits_total Steps satisfied from the xref without an ERP call\n# TYPE paybridge_xref_hits_total counter\n");
    bprintf(&b, "paybridge_xref_hits_total %llu\n", LOAD(m->xref_hits));
    bprintf(&b, "# HELP paybridge_ack_latency_seconds Webhook receipt to durable acknowledgement\n# TYPE paybridge_ack_latency_seconds histogram\n");
    hist(&b, "paybridge_ack_latency_seconds", "", &m->ack_latency);
    bprintf(&b, "# HELP paybridge_job_latency_seconds Claim to committed completion, per job\n# TYPE paybridge_job_latency_seconds histogram\n");
    hist(&b, "paybridge_job_latency_seconds", "", &m->job_latency);
    bprintf(&b, "# HELP paybridge_call_latency_seconds Outbound call (batch) duration\n# TYPE paybridge_call_latency_seconds histogram\n");
    for (size_t i = 0; i < cfg->n_conns && i < PB_METRICS_MAX_CONNS; i++) {
        char labels[128];
        snprintf(labels, sizeof(labels), "connection=\"%s\"", cfg->conns[i].conn.name);
        hist(&b, "paybridge_call_latency_seconds", labels, &m->conn[i].call_latency);
    }
    bprintf(&b, "# HELP paybridge_ratelimit_waits_total Calls that waited for the rate limiter\n# TYPE paybridge_ratelimit_waits_total counter\n");
    for (size_t i = 0; i < cfg->n_conns; i++) {
        struct pb_ratelimit_stats rs = {0};
        if (cfg->conns[i].conn.limiter)
            pb_ratelimit_stats(cfg->conns[i].conn.limiter, &rs);
        bprintf(&b, "paybridge_ratelimit_waits_total{connection=\"%s\"} %llu\n", cfg->conns[i].conn.name,
                (unsigned long long)rs.waits);
        bprintf(&b, "paybridge_ratelimit_wait_seconds_total{connection=\"%s\"} %llu.%09llu\n",
                cfg->conns[i].conn.name, (unsigned long long)(rs.wait_ns / 1000000000ull),
                (unsigned long long)(rs.wait_ns % 1000000000ull));
        bprintf(&b, "paybridge_ratelimit_throttled_total{connection=\"%s\"} %llu\n", cfg->conns[i].conn.name,
                (unsigned long long)rs.throttled);
    }
    pb_engine_store(e)->ops->stats(pb_engine_store(e), &ss);
    bprintf(&b, "# HELP paybridge_store_commits_total Group commits\n# TYPE paybridge_store_commits_total counter\n");
    bprintf(&b, "paybridge_store_commits_total %llu\n", (unsigned long long)ss.commits);
    bprintf(&b, "paybridge_store_ops_total %llu\n", (unsigned long long)ss.ops);
    bprintf(&b, "paybridge_store_pages_written_total %llu\n", (unsigned long long)ss.pages_written);
    bprintf(&b, "paybridge_store_wal_restarts_total %llu\n", (unsigned long long)ss.wal_restarts);
    bprintf(&b, "paybridge_store_wal_restart_pause_seconds_total %llu.%09llu\n",
            (unsigned long long)(ss.wal_pause_ns / 1000000000ull),
            (unsigned long long)(ss.wal_pause_ns % 1000000000ull));
    bprintf(&b, "# HELP paybridge_store_writer_busy_seconds_total Time the store writer spent on "
                "batches; its rate near 1 means the writer is the bottleneck\n"
                "# TYPE paybridge_store_writer_busy_seconds_total counter\n");
    bprintf(&b, "paybridge_store_writer_busy_seconds_total %llu.%09llu\n",
            (unsigned long long)(ss.busy_ns / 1000000000ull),
            (unsigned long long)(ss.busy_ns % 1000000000ull));
    bprintf(&b, "paybridge_store_commit_seconds_total %llu.%09llu\n",
            (unsigned long long)(ss.commit_ns / 1000000000ull),
            (unsigned long long)(ss.commit_ns % 1000000000ull));

    pb_http_response_body_take(resp, 200, b.p, b.n);
    snprintf(resp->content_type, sizeof(resp->content_type), "text/plain; version=0.0.4");
    return PB_HTTP_DONE;
}

/* ---- reconciliation ------------------------------------------------------------------ */

static struct pb_reconcile_scheduler *recon_or_503(struct pb_http_response *resp)
{
    struct pb_reconcile_scheduler *s = recon_sched;
    if (!s)
        pb_http_response_error(resp, 503, "unavailable",
                               "no connection has a reconcile: block, or reconciliation is starting");
    return s;
}

static enum pb_http_action h_reconcile(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_reconcile_scheduler *s;
    struct pb_err err = {0};
    json_t *b;
    int32_t day;
    REQUIRE_ADMIN(e, req, resp);
    if (!(s = recon_or_503(resp)) || !(b = body_json(req, resp)))
        return PB_HTTP_DONE;
    if (!field(b, "connection") || !field(b, "date") ||
        pb_recon_date_parse(field(b, "date"), strlen(field(b, "date")), &day)) {
        json_decref(b);
        pb_http_response_error(resp, 400, "invalid", "connection and date (YYYY-MM-DD) are required");
        return PB_HTTP_DONE;
    }
    if (pb_reconcile_scheduler_request(s, field(b, "connection"), day, &err)) {
        json_decref(b);
        pb_http_response_error(resp, status_of(err.rc), pb_rc_name(err.rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    {
        json_t *out = json_pack("{s:s,s:O,s:O,s:s+++}", "status", "queued", "connection",
                                json_object_get(b, "connection"), "date", json_object_get(b, "date"),
                                "run", "/admin/recon/runs/", field(b, "connection"), ":", field(b, "date"));
        json_decref(b);
        return send_json(resp, 202, out);
    }
}

static enum pb_http_action h_recon_runs(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_reconcile_scheduler *s;
    struct pb_err err = {0};
    json_t *out = NULL;
    REQUIRE_ADMIN(e, req, resp);
    if (!(s = recon_or_503(resp)))
        return PB_HTTP_DONE;
    if (pb_recon_db_runs(pb_reconcile_scheduler_db(s), pb_http_query(req, "connection"), 100, &out, &err)) {
        pb_http_response_error(resp, 500, pb_rc_name(err.rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    return send_json(resp, 200, out);
}

static enum pb_http_action h_recon_run(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_reconcile_scheduler *s;
    struct pb_err err = {0};
    json_t *out = NULL;
    REQUIRE_ADMIN(e, req, resp);
    if (!(s = recon_or_503(resp)))
        return PB_HTTP_DONE;
    if (pb_recon_db_run(pb_reconcile_scheduler_db(s), req->params[0], &out, &err)) {
        pb_http_response_error(resp, status_of(err.rc), pb_rc_name(err.rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    return send_json(resp, 200, out);
}

static enum pb_http_action h_recon_items(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_reconcile_scheduler *s;
    struct pb_err err = {0};
    json_t *run = NULL, *items = NULL;
    REQUIRE_ADMIN(e, req, resp);
    if (!(s = recon_or_503(resp)))
        return PB_HTTP_DONE;
    if (pb_recon_db_run(pb_reconcile_scheduler_db(s), req->params[0], &run, &err) ||
        pb_recon_db_run_items(pb_reconcile_scheduler_db(s), json_integer_value(json_object_get(run, "id")),
                              pb_http_query(req, "kind"), &items, &err)) {
        json_decref(run);
        pb_http_response_error(resp, status_of(err.rc), pb_rc_name(err.rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    json_decref(run);
    return send_json(resp, 200, items);
}

static enum pb_http_action h_recon_breaks(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_reconcile_scheduler *s;
    struct pb_err err = {0};
    json_t *out = NULL;
    const char *from = pb_http_query(req, "from"), *to = pb_http_query(req, "to");
    int32_t probe;
    REQUIRE_ADMIN(e, req, resp);
    if (!(s = recon_or_503(resp)))
        return PB_HTTP_DONE;
    if ((from && pb_recon_date_parse(from, strlen(from), &probe)) ||
        (to && pb_recon_date_parse(to, strlen(to), &probe))) {
        pb_http_response_error(resp, 400, "invalid", "from and to are YYYY-MM-DD");
        return PB_HTTP_DONE;
    }
    if (pb_recon_db_breaks(pb_reconcile_scheduler_db(s), pb_http_query(req, "connection"), from, to,
                           &out, &err)) {
        pb_http_response_error(resp, 500, pb_rc_name(err.rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    return send_json(resp, 200, out);
}

static enum pb_http_action h_recon_undo(struct pb_http_request *req, struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    struct pb_reconcile_scheduler *s;
    struct pb_err err = {0};
    json_t *b = NULL;
    char rev[64];
    enum pb_rc rc;
    REQUIRE_ADMIN(e, req, resp);
    if (!(s = recon_or_503(resp)))
        return PB_HTTP_DONE;
    if (req->body_len && !(b = body_json(req, resp)))
        return PB_HTTP_DONE;
    rc = pb_reconcile_undo(pb_engine_config(e), pb_reconcile_scheduler_db(s), req->params[0],
                           b && field(b, "by") ? field(b, "by") : "admin api", rev, sizeof rev, &err);
    json_decref(b);
    if (rc) {
        pb_http_response_error(resp, rc == PB_ERR_TRANSIENT ? 502 : status_of(rc), pb_rc_name(rc), "%s", err.msg);
        return PB_HTTP_DONE;
    }
    return send_json(resp, 200, json_pack("{s:s,s:s}", "undone", req->params[0], "reversal", rev));
}

const struct pb_http_route *pb_admin_routes(struct pb_engine *e)
{
    /* one table per engine: the handlers get the engine as arg */
    struct pb_http_route r[] = {
        {"POST", "/hooks/{}", pb_engine_http_inbound, e},
        {"GET", "/healthz", h_healthz, e},
        {"GET", "/readyz", h_readyz, e},
        {"GET", "/metrics", h_metrics, e},
        {"GET", "/admin/events", h_events, e},
        {"GET", "/admin/events/{}", h_event, e},
        {"GET", "/admin/dlq", h_dlq, e},
        {"POST", "/admin/dlq/replay", h_replay_all, e},
        {"GET", "/admin/dlq/{}", h_dlq_show, e},
        {"POST", "/admin/dlq/{}/replay", h_replay_one, e},
        {"POST", "/admin/refunds", h_refund_create, e},
        {"GET", "/admin/refunds", h_refunds, e},
        {"GET", "/admin/chargebacks", h_chargebacks, e},
        {"POST", "/admin/chargebacks", h_chargeback_open, e},
        {"POST", "/admin/chargebacks/{}", h_chargeback_update, e},
        {"POST", "/admin/reconcile", h_reconcile, e},
        {"GET", "/admin/recon/runs", h_recon_runs, e},
        {"GET", "/admin/recon/runs/{}", h_recon_run, e},
        {"GET", "/admin/recon/runs/{}/items", h_recon_items, e},
        {"GET", "/admin/recon/breaks", h_recon_breaks, e},
        {"POST", "/admin/recon/journals/{}/undo", h_recon_undo, e},
        {NULL, NULL, NULL, NULL},
    };
    struct pb_http_route *copy = malloc(sizeof(r));
    if (copy)
        memcpy(copy, r, sizeof(r));
    return copy; /* owned by the engine, freed in pb_engine_stop() */
}
