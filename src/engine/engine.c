/*
 * engine/engine.c: inbox, router and workers (see engine.h for the data path).
 *
 * Threads:
 *   - the HTTP pool (libmicrohttpd): parses and authenticates webhooks, then
 *     suspends the request until the store's writer has committed it;
 *   - the store writer (store_sqlite.c): group commits, runs op callbacks;
 *   - N workers: claim -> map -> execute -> complete; each owns an HTTP client
 *     and a mapper (jq states are per thread);
 *   - the maintainer: returns expired leases to the queue every few seconds.
 *
 * Step numbering of a job: 0 is the source's confirm step (when the source
 * connector can confirm and the connection does not set confirm: false),
 * 1..n are the flow's steps. Completing step k queues step k+1 in the same
 * transaction; when k+1 has the batch's next (target, command), that
 * transaction leases it to the worker too (tries 1, durable before the call),
 * which runs it at once with the event it already parsed (struct chain).
 *
 * Exactly-once: before a step calls the ERP, the xref is consulted with the
 * step's reference; the sink is told `tries`, and a try after the first makes
 * the sink look the record up by reference before creating it. The xref row
 * and the job's completion commit together.
 */
#include "engine/engine.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/json.h"
#include "core/log.h"
#include "core/pan.h"
#include "net/trace.h"

#define LEASE_MS (5 * 60 * 1000)

struct pb_engine {
    unsigned magic;
    struct pb_config *cfg;
    struct pb_store *store;
    struct pb_httpd *httpd;
    struct pb_metrics metrics;
    pthread_t *workers;
    unsigned n_workers;
    pthread_t maintainer;
    pthread_t poller;
    const struct pb_http_route *routes; /* owned: built by pb_admin_routes() */
    int running;
    int accepting;
    pthread_mutex_t lock;
    pthread_cond_t work;
    uint64_t work_seq;
};
#define ENGINE_MAGIC 0x454e4731u

static int conn_index(struct pb_engine *e, const struct pb_conn_entry *c)
{
    long i = c - e->cfg->conns;
    return i >= 0 && i < PB_METRICS_MAX_CONNS ? (int)i : PB_METRICS_MAX_CONNS - 1;
}

void pb_engine_wake(struct pb_engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->work_seq++;
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->lock);
}

/* ---- inbound ---------------------------------------------------------------------------- */

struct inbound {
    struct pb_engine *e;
    struct pb_http_request *req;
    struct pb_conn_entry *conn;
    char **json;                    /* [events.n] canonical JSON text, owned */
    struct pb_store_op *op;         /* [events.n], owned */
    _Atomic int pending;
    struct pb_event_list events;    /* last: not zeroed beyond what is used (13 KB) */
};

static const char *header_cb(void *ctx, const char *name)
{
    return pb_http_header(ctx, name);
}

static int status_for(enum pb_rc rc)
{
    switch (rc) {
    case PB_ERR_AUTH: return 401;
    case PB_ERR_TOOBIG: return 413;
    case PB_ERR_NOTFOUND: return 404;
    case PB_ERR_STORE: return 503;
    case PB_ERR_NOMEM:
    case PB_ERR_INTERNAL: return 500;
    default: return 400;
    }
}

static void inbound_free(struct inbound *in)
{
    for (size_t i = 0; in->json && i < in->events.n; i++)
        free(in->json[i]);
    free(in->json);
    free(in->op);
    pb_event_list_clear(&in->events);
    free(in);
}

static void inbound_free_cb(void *in) { inbound_free(in); }

/* Append `str` JSON-escaped (without quotes) to buf at *len; stops at cap. */
static void put_escaped(char *buf, size_t cap, size_t *len, const char *str)
{
    for (; *str && *len + 7 < cap; str++) {
        unsigned char c = (unsigned char)*str;
        if (c == '"' || c == '\\') {
            buf[(*len)++] = '\\';
            buf[(*len)++] = (char)c;
        } else if (c < 0x20) {
            *len += (size_t)snprintf(buf + *len, cap - *len, "\\u%04x", c);
        } else {
            buf[(*len)++] = (char)c;
        }
    }
    buf[*len] = '\0';
}

/* Runs on the store's writer thread once every op of the request has
 * committed (or failed): it must stay short, every webhook of the next batch
 * waits for it. The reply is formatted with snprintf, not built as a tree. */
static void inbound_done(struct pb_store_op *op)
{
    struct inbound *in = op->ctx;
    struct pb_engine *e = in->e;
    if (atomic_fetch_sub(&in->pending, 1) != 1)
        return;
    /* the last op of this request has committed (or failed) */
    struct pb_conn_metrics *m = &e->metrics.conn[conn_index(e, in->conn)];
    int failed = 0, fresh = 0;
    size_t cap = 64 + in->events.n * 400, len = 0;
    char *body = malloc(cap);
    for (size_t i = 0; i < in->events.n; i++)
        if (in->op[i].rc)
            failed = 1;
    if (failed || !body) {
        for (size_t i = 0; i < in->events.n; i++)
            if (in->op[i].rc)
                pb_log(PB_LOG_ERROR, "event.store_failed", "connection", in->conn->conn.name,
                       "gateway_event_id", in->events.ev[i].event_id, "error", in->op[i].err.msg,
                       (char *)NULL);
        free(body);
        atomic_fetch_add_explicit(&m->unavailable, 1, memory_order_relaxed);
        pb_http_response_error(&in->req->resp, 503, "store_unavailable",
                               "the event could not be stored durably; retry later");
        pb_http_response_header(&in->req->resp, "Retry-After", "5");
    } else {
        len = (size_t)snprintf(body, cap, "{\"accepted\":true,\"events\":[");
        for (size_t i = 0; i < in->events.n; i++) {
            struct pb_store_op *o = &in->op[i];
            char idbuf[32];
            snprintf(idbuf, sizeof(idbuf), "%lld", (long long)o->u.inbox.event_id);
            len += (size_t)snprintf(body + len, cap - len, "%s{\"id\":%s,\"gateway_event_id\":\"",
                                    i ? "," : "", idbuf);
            put_escaped(body, cap, &len, in->events.ev[i].event_id);
            len += (size_t)snprintf(body + len, cap - len, "\",\"type\":\"");
            put_escaped(body, cap, &len, in->events.ev[i].type);
            len += (size_t)snprintf(body + len, cap - len, "\",\"duplicate\":%s}",
                                    o->u.inbox.duplicate ? "true" : "false");
            if (o->u.inbox.duplicate) {
                atomic_fetch_add_explicit(&m->duplicate, 1, memory_order_relaxed);
                pb_log(PB_LOG_INFO, "event.duplicate", "connection", in->conn->conn.name,
                       "event_id", idbuf, "gateway_event_id", in->events.ev[i].event_id,
                       (char *)NULL);
            } else {
                fresh++;
                atomic_fetch_add_explicit(&m->accepted, 1, memory_order_relaxed);
                pb_log(PB_LOG_INFO, "event.accepted", "connection", in->conn->conn.name,
                       "event_id", idbuf, "gateway_event_id", in->events.ev[i].event_id, "type",
                       in->events.ev[i].type, (char *)NULL);
            }
        }
        len += (size_t)snprintf(body + len, cap - len, "]}");
        pb_http_response_body_take(&in->req->resp, 200, body, len);
    }
    pb_histogram_observe(&e->metrics.ack_latency, pb_monotonic_ns() - in->req->received_ns);
    struct pb_http_request *req = in->req;
    /* freeing the events is left to the server thread that finishes the
     * request: this callback runs on the store's writer, which everyone waits for */
    req->user = in;
    req->on_complete = inbound_free_cb;
    if (fresh)
        pb_engine_wake(e);
    pb_http_resume(req);
}

enum pb_http_action pb_engine_http_inbound(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *arg)
{
    struct pb_engine *e = arg;
    const char *name = req->params[0];
    struct pb_conn_entry *conn = pb_config_connection(e->cfg, name);
    struct pb_inbound_request ir;
    struct pb_err err = {0};
    struct inbound *in;
    struct pb_conn_metrics *m;
    enum pb_rc rc;
    size_t pan_at;

    if (!conn || !(conn->conn.type->caps & PB_CAP_INBOUND)) {
        pb_http_response_error(resp, 404, "unknown_connection",
                               "no connection named \"%s\" receives webhooks here", name);
        pb_log(PB_LOG_WARN, "event.rejected", "connection", name, "reason", "unknown connection",
               (char *)NULL);
        return PB_HTTP_DONE;
    }
    m = &e->metrics.conn[conn_index(e, conn)];
    atomic_fetch_add_explicit(&m->received, 1, memory_order_relaxed);
    if (!e->accepting) {
        pb_http_response_error(resp, 503, "shutting_down", "paybridge is shutting down; retry later");
        return PB_HTTP_DONE;
    }
    if (pb_pan_scan_payload(req->body, req->body_len, &pan_at) > 0) {
        atomic_fetch_add_explicit(&m->rejected, 1, memory_order_relaxed);
        pb_http_response_error(resp, 400, "card_number",
                               "the body contains what looks like a card number (at byte %zu); "
                               "paybridge never accepts card numbers", pan_at);
        pb_log(PB_LOG_WARN, "event.rejected", "connection", name, "reason", "card number in body",
               (char *)NULL);
        return PB_HTTP_DONE;
    }
    in = malloc(sizeof(*in)); /* the event array is filled by the connector, not zeroed */
    if (in) {
        memset(in, 0, offsetof(struct inbound, events));
        in->events.n = 0;
    }
    if (!in) {
        pb_http_response_error(resp, 503, "out_of_memory", "out of memory; retry later");
        return PB_HTTP_DONE;
    }
    in->e = e;
    in->req = req;
    in->conn = conn;
    memset(&ir, 0, sizeof(ir));
    ir.body = req->body;
    ir.body_len = req->body_len;
    ir.content_type = pb_http_header(req, "Content-Type");
    ir.header = header_cb;
    ir.header_ctx = req;
    ir.now = time(NULL);
    ir.pan_checked = 1; /* scanned above, before the connector saw a byte */
    rc = conn->conn.type->inbound(&conn->conn, &ir, &in->events, &err);
    if (rc == PB_OK && in->events.n == 0) {
        /* e.g. a verification ping: authenticated, nothing to store */
        inbound_free(in);
        pb_http_response_set(resp, 200, "application/json", "{\"accepted\":true,\"events\":[]}", 30);
        return PB_HTTP_DONE;
    }
    if (rc) {
        atomic_fetch_add_explicit(&m->rejected, 1, memory_order_relaxed);
        pb_http_response_error(resp, status_for(rc), pb_rc_name(rc), "%s", err.msg);
        pb_log(PB_LOG_WARN, "event.rejected", "connection", name, "reason", err.msg, "class",
               pb_rc_name(rc), (char *)NULL);
        inbound_free(in);
        return PB_HTTP_DONE;
    }

    /* route and build one store op per event */
    int64_t now = pb_now_ms();
    in->op = calloc(in->events.n, sizeof(*in->op));
    in->json = calloc(in->events.n, sizeof(*in->json));
    if (!in->op || !in->json) {
        inbound_free(in);
        pb_http_response_error(resp, 503, "out_of_memory", "out of memory; retry later");
        return PB_HTTP_DONE;
    }
    in->pending = (int)in->events.n;
    for (size_t i = 0; i < in->events.n; i++) {
        struct pb_store_op *op = &in->op[i];
        in->json[i] = pb_route_event(e->cfg, conn, &in->events.ev[i], op, now);
        op->done = inbound_done;
        op->ctx = in;
        op->u.inbox.raw = req->body;
        op->u.inbox.raw_len = req->body_len;
    }
    /* after the last submit the writer may already have committed and freed
     * `in` (inbound_done): read nothing from it once the first op is out */
    size_t n_events = in->events.n;
    struct pb_store_op *ops = in->op;
    for (size_t i = 0; i < n_events; i++)
        pb_store_submit(e->store, &ops[i]);
    return PB_HTTP_SUSPEND;
}

/* ---- workers ---------------------------------------------------------------------------- */

struct latch {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int left;
};

static void latch_done(struct pb_store_op *op)
{
    struct latch *l = op->ctx;
    pthread_mutex_lock(&l->lock);
    if (--l->left == 0)
        pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

struct work_item {
    struct pb_job *job;
    const struct pb_flow *flow;
    json_t *event;
    json_t *refs;
    json_t *document;
    char *reference;
    struct pb_sink_item sink;
    /* outcome */
    enum pb_job_outcome outcome;
    enum pb_rc rc;
    char message[512];
    char erp_id[128];
    int retry_after_s;
    int decided;            /* outcome known before the call (skip, mapping error, xref hit) */
    json_t *emit;           /* an event the job produced (a refund.succeeded body), owned */
    struct pb_event_out emit_ev;
    char *emit_json;
};

struct worker {
    struct pb_engine *e;
    unsigned index;
    struct pb_http_client *http;
    struct pb_mapper *mapper;
};

static void decide(struct work_item *w, enum pb_job_outcome o, enum pb_rc rc, const char *msg)
{
    w->decided = 1;
    w->outcome = o;
    w->rc = rc;
    snprintf(w->message, sizeof(w->message), "%s", msg ? msg : "");
}

/* Enrichment: a refund or a chargeback sees the payment it belongs to and the
 * ERP ids this job's flow made for it, as .original {event, refs, related_refs}. */
static void enrich_original(struct pb_engine *e, struct work_item *w)
{
    struct pb_err err = {0};
    const char *orig = pb_json_str(w->event, "refund.original_gateway_id");
    if (!orig)
        orig = pb_json_str(w->event, "chargeback.original_gateway_id");
    const char *src = pb_json_str(w->event, "source.connection");
    if (orig && src) {
        json_t *args = json_pack("{s:s,s:s,s:s,s:I}", "connection", src, "gateway_id", orig, "flow",
                                 w->job->flow, "event_id", (json_int_t)w->job->event_id);
        json_t *found = NULL;
        if (pb_store_query(e->store, "original.find", args, &found, &err) == PB_OK)
            json_object_set_new(w->event, "original", found);
        json_decref(args);
    }
}

/* The document of a status webhook (built-in job "paybridge.status"): the
 * order's state as the shop understands it, from the canonical event. The
 * reference "<order>:<state>[:<refund>]" keeps each state change its own job,
 * so the xref never swallows a later state of the same order. */
static void status_document(struct pb_engine *e, struct work_item *w)
{
    const char *type = pb_json_str(w->event, "type");
    json_t *entity = json_object_get(w->event, "payment");
    const char *state = "failed";
    char ref[300];
    if (type && strcmp(type, "payment.succeeded") == 0)
        state = strcmp(w->job->step_name, "processing") == 0 ? "processing" : "paid";
    else if (type && strcmp(type, "refund.succeeded") == 0) {
        entity = json_object_get(w->event, "refund");
        state = "refunded";
        /* all refunds of the payment so far (this one is committed) against it */
        const char *orig_id = pb_json_str(entity, "original_gateway_id");
        const char *src = pb_json_str(w->event, "source.connection");
        json_t *args = orig_id && src ? json_pack("{s:s,s:s}", "connection", src, "gateway_id", orig_id)
                                      : NULL, *pay = NULL;
        struct pb_err err = {0};
        if (args && pb_store_query(e->store, "payment.find", args, &pay, &err) == PB_OK) {
            json_int_t paid = json_integer_value(json_object_get(pay, "amount_minor"));
            json_int_t back = json_integer_value(json_object_get(pay, "refunded_minor"));
            if (paid > 0 && back < paid)
                state = "partially_refunded";
        }
        json_decref(pay);
        json_decref(args);
    }
    const char *order = pb_json_str(w->event, "payment.reference");
    if (!order)
        order = pb_json_str(w->event, "original.event.payment.reference");
    if (!order)
        order = pb_json_str(w->event, "order.reference");
    if (!order || !entity) {
        decide(w, PB_OUTCOME_DEAD, PB_ERR_MAPPING, "the event names no order reference for the shop");
        return;
    }
    {
        int per_refund = strcmp(state, "refunded") == 0 || strcmp(state, "partially_refunded") == 0;
        const char *gid = pb_json_str(entity, "gateway_id");
        snprintf(ref, sizeof(ref), "%s:%s%s%s", order, state, per_refund ? ":" : "",
                 per_refund && gid ? gid : "");
    }
    w->reference = strdup(ref);
    w->document = json_pack("{s:s,s:s,s:O?,s:s?,s:s?,s:s?}", "order_reference", order, "state", state,
                            "amount", json_object_get(entity, "amount"), "gateway",
                            pb_json_str(w->event, "source.connector"), "gateway_transaction_id",
                            pb_json_str(entity, "gateway_id"), "occurred_at",
                            pb_json_str(w->event, "occurred_at"));
    if (!w->reference || !w->document)
        decide(w, PB_OUTCOME_DEAD, PB_ERR_NOMEM, "out of memory");
}

static void today(char out[11])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 11, "%Y-%m-%d", &tm);
}

/* The xref lookup before anything is created, as pb_mapper_step_unless's
 * `known`: on a hit the step's document is not even built. */
struct xref_probe {
    struct pb_engine *e;
    struct work_item *w;
    int asked, hit;
};

static int xref_known(void *ctx, const char *reference)
{
    struct xref_probe *p = ctx;
    struct pb_err err = {0};
    char erp[128];
    p->asked = 1;
    p->hit = p->e->store->ops->xref_get(p->e->store, p->w->job->target, p->w->job->command,
                                        reference, erp, sizeof(erp), &err) == PB_OK;
    if (p->hit)
        snprintf(p->w->erp_id, sizeof(p->w->erp_id), "%s", erp);
    return p->hit;
}

static void prepare(struct worker *wk, struct work_item *w, int is_confirm)
{
    struct pb_engine *e = wk->e;
    struct pb_err err = {0};
    json_error_t jerr;
    char day[11];

    if (!w->event) { /* else handed over by the job before it (run_batch's chain) */
        const char *ev = w->job->event_json, *refs = w->job->refs_json;
        w->event = ev ? pb_json_loadb(ev, strlen(ev), 0, &jerr) : NULL;
        w->refs = refs ? pb_json_loadb(refs, strlen(refs), 0, &jerr) : NULL;
    }
    if (!w->event || !w->refs) {
        decide(w, PB_OUTCOME_DEAD, PB_ERR_INTERNAL, "stored event is not valid JSON");
        return;
    }
    json_object_set_new(w->event, "id", json_integer(w->job->event_id));
    if (strcmp(w->job->flow, "paybridge.status") == 0) {
        enrich_original(e, w);
        status_document(e, w);
        return;
    }
    if (strncmp(w->job->flow, "paybridge.", 10) == 0)
        return; /* a built-in job (a gateway refund): no flow, no mapping */
    w->flow = pb_flowset_find(e->cfg->flows, w->job->flow);
    if (!w->flow) {
        decide(w, PB_OUTCOME_DEAD, PB_ERR_CONFIG, "the flow of this job is no longer configured");
        return;
    }
    if (is_confirm)
        return;
    enrich_original(e, w);
    if (w->job->step < 1 || (size_t)w->job->step > w->flow->n_steps) {
        decide(w, PB_OUTCOME_DEAD, PB_ERR_CONFIG, "the flow no longer has this step");
        return;
    }
    const struct pb_flow_step *st = &w->flow->steps[(size_t)w->job->step - 1];
    int run = 0;
    char idbuf[32];
    snprintf(idbuf, sizeof(idbuf), "%lld", (long long)w->job->event_id);
    today(day);
    /* the event is not changed from here on (until run_batch frees it): the
     * mapper converts it for jq once, for this step and next_runnable() */
    pb_mapper_keep(wk->mapper, w->event);
    struct xref_probe probe = {.e = e, .w = w};
    enum pb_rc rc = pb_mapper_step_unless(wk->mapper, st, w->event, w->refs, idbuf, day,
                                          xref_known, &probe, &run, &w->reference, &w->document,
                                          &err);
    if (rc == PB_ERR_MAPPING && strstr(err.msg, "retry later:")) {
        /* the flow says the data it needs is not there yet (e.g. a refund
         * whose payment is still being posted): a transient wait, retried
         * with the connection's backoff, dead-lettered when it never comes */
        decide(w, PB_OUTCOME_RETRY, PB_ERR_TRANSIENT, err.msg);
        return;
    }
    if (rc) {
        decide(w, PB_OUTCOME_DEAD, rc, err.msg);
        return;
    }
    if (!run) {
        decide(w, PB_OUTCOME_SKIPPED, PB_OK, "the step's `when` is false for this event");
        return;
    }
    if (!probe.asked && w->reference && w->reference[0])
        xref_known(&probe, w->reference);
    if (probe.hit) {
        decide(w, PB_OUTCOME_DONE, PB_OK, "already in the ERP (xref)");
        atomic_fetch_add_explicit(&e->metrics.xref_hits, 1, memory_order_relaxed);
    }
}

static char *dump_or_null(json_t *j)
{
    return j ? pb_json_dumps_decimal(j, NULL, 0) : NULL; /* json_dumps(JSON_COMPACT), 3.5x faster */
}

/* The index of the first step from `from` on that runs for this event
 * (n_steps: none). Steps whose `when` is false are passed over here, in the
 * job that precedes them, instead of each becoming a job that is claimed,
 * mapped and completed only to be skipped (a flow that also handles refunds
 * and chargebacks has several such steps for every payment). A step whose
 * mapping fails is returned: its own job reports the error. */
static size_t next_runnable(struct worker *wk, struct work_item *x, size_t from)
{
    const struct pb_flow *fl = x->flow;
    json_t *refs = x->refs ? json_deep_copy(x->refs) : json_object();
    char idbuf[32], day[11];
    size_t i = fl->n_steps;
    struct pb_err err = {0};
    if (x->outcome == PB_OUTCOME_DONE && x->erp_id[0] && x->job->step >= 1 && refs)
        json_object_set_new(refs, x->job->step_name, json_string(x->erp_id));
    /* the step after one that ran, with the same when: it runs too, unless
     * it reads the id of a step that did not run (then the jq walk decides) */
    if (x->outcome == PB_OUTCOME_DONE && x->job->step >= 1 && from == (size_t)x->job->step &&
        from < fl->n_steps && refs &&
        pb_mapper_same_when(wk->mapper, &fl->steps[from - 1], &fl->steps[from])) {
        size_t k = 0;
        while (k < fl->steps[from].n_needs &&
               json_is_string(json_object_get(refs, fl->steps[from].needs[k])))
            k++;
        if (k == fl->steps[from].n_needs) {
            json_decref(refs);
            return from;
        }
    }
    snprintf(idbuf, sizeof(idbuf), "%lld", (long long)x->job->event_id);
    today(day);
    /* all the whens in one jq evaluation; when that fails, the next step's
     * own job maps it again and reports the error */
    if (pb_mapper_next(wk->mapper, fl, from, x->event, refs, idbuf, day, &i, &err) != PB_OK)
        i = from < fl->n_steps ? from : fl->n_steps;
    json_decref(refs);
    return i;
}

/* The next steps a batch leased for itself in its completion commit (the
 * jobs a claim would have returned next), with their events and refs already
 * parsed: the worker runs them at once, and the mapper keeps the events' jq
 * conversion. Saves per job the claim's lease + load (a join, a refs query),
 * the event's parse and its conversion for jq. */
struct chain {
    struct pb_job *jobs;    /* [n], freed with pb_store_jobs_free */
    json_t **events;        /* [n], owned until handed to run_batch */
    json_t **refs;          /* [n], likewise */
    size_t n;
};

/* Run n claimed (or chained) jobs of one (target, command). `events` and
 * `refs` (NULL, or [n] parsed for each job) become run_batch's. With `chain`
 * non-NULL, a completion whose next step is of the same flow and the same
 * (target, command) as the first such leases that step, which comes back in
 * *chain. */
static void run_batch(struct worker *wk, struct pb_job *jobs, size_t n, json_t **events,
                      json_t **refs, struct chain *chain)
{
    struct pb_engine *e = wk->e;
    struct work_item *w = calloc(n, sizeof(*w));
    struct pb_sink_item *items = calloc(n, sizeof(*items));
    struct work_item **item_owner = calloc(n, sizeof(*item_owner));
    struct pb_conn_entry *conn = pb_config_connection(e->cfg, jobs[0].target);
    int is_confirm = strcmp(jobs[0].command, "confirm") == 0;
    int is_refund = strcmp(jobs[0].command, "refund") == 0 &&
                    strncmp(jobs[0].flow, "paybridge.", 10) == 0;
    json_t *trace = json_array();
    uint64_t t0 = pb_monotonic_ns();
    int64_t started_ms = pb_now_ms();
    size_t n_items = 0;
    struct pb_conn_metrics *m = conn ? &e->metrics.conn[conn_index(e, conn)] : NULL;

    if (!w || !items || !item_owner || !trace) {
        /* leases expire and the jobs come back */
        for (size_t i = 0; events && i < n; i++) {
            pb_mapper_unkeep(wk->mapper, events[i]);
            json_decref(events[i]);
            json_decref(refs ? refs[i] : NULL);
        }
        free(w);
        free(items);
        free(item_owner);
        json_decref(trace);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        w[i].job = &jobs[i];
        w[i].retry_after_s = -1;
        if (events && refs) {
            w[i].event = events[i];
            w[i].refs = refs[i];
        }
        if (!conn) {
            decide(&w[i], PB_OUTCOME_DEAD, PB_ERR_CONFIG, "the target connection is no longer configured");
            continue;
        }
        prepare(wk, &w[i], is_confirm || is_refund);
    }

    if (conn && is_confirm) {
        for (size_t i = 0; i < n; i++) {
            struct pb_err err = {0};
            struct pb_call_ctx ctx = {.http = wk->http, .trace = trace, .now = time(NULL),
                                      .retry_after_s = -1};
            if (w[i].decided)
                continue;
            enum pb_rc rc = conn->conn.type->confirm(&conn->conn, &ctx, w[i].event, &err);
            w[i].rc = rc;
            w[i].retry_after_s = ctx.retry_after_s;
            w[i].outcome = rc == PB_OK ? PB_OUTCOME_DONE : pb_rc_is_transient(rc) ? PB_OUTCOME_RETRY : PB_OUTCOME_DEAD;
            snprintf(w[i].message, sizeof(w[i].message), "%s", rc ? err.msg : "confirmed by the gateway");
        }
    } else if (conn && is_refund) {
        for (size_t i = 0; i < n; i++) {
            struct pb_err err = {0};
            struct pb_call_ctx ctx = {.http = wk->http, .trace = trace, .now = time(NULL),
                                      .retry_after_s = -1};
            json_t *result = NULL;
            char gw_event[128] = "";
            enum pb_rc rc;
            if (w[i].decided)
                continue;
            if (!conn->conn.type->refund) {
                decide(&w[i], PB_OUTCOME_DEAD, PB_ERR_CONFIG, "this connector cannot refund");
                continue;
            }
            rc = conn->conn.type->refund(&conn->conn, &ctx, json_object_get(w[i].event, "refund"),
                                         &result, gw_event, sizeof(gw_event), &err);
            w[i].rc = rc;
            w[i].retry_after_s = ctx.retry_after_s;
            w[i].outcome = rc == PB_OK ? PB_OUTCOME_DONE
                           : pb_rc_is_transient(rc) ? PB_OUTCOME_RETRY : PB_OUTCOME_DEAD;
            if (rc == PB_OK && result && gw_event[0]) {
                snprintf(w[i].erp_id, sizeof(w[i].erp_id), "%s", gw_event);
                snprintf(w[i].message, sizeof(w[i].message), "refunded at the gateway");
                /* the flows of the refund need the payment and the customer */
                if (!json_object_get(result, "payment") && json_object_get(w[i].event, "payment"))
                    json_object_set(result, "payment", json_object_get(w[i].event, "payment"));
                {
                    /* fill what the gateway's answer left empty from the request
                     * (PayTrace answers a refund with an empty customer) */
                    json_t *want = json_object_get(w[i].event, "customer");
                    json_t *have = json_object_get(result, "customer");
                    if (json_is_object(want) && !json_is_object(have))
                        json_object_set(result, "customer", want);
                    else if (json_is_object(want)) {
                        const char *k;
                        json_t *v;
                        json_object_foreach(want, k, v)
                        {
                            json_t *h = json_object_get(have, k);
                            if (!h || json_is_null(h))
                                json_object_set(have, k, v);
                        }
                    }
                }
                w[i].emit = result;
            } else if (rc == PB_OK && !result) {
                /* the gateway already had it (a retry after a lost reply); its
                 * own notification brings the refund event */
                snprintf(w[i].erp_id, sizeof(w[i].erp_id), "%s", "already-refunded");
                snprintf(w[i].message, sizeof(w[i].message),
                         "the gateway already has this refund; its notification carries the event");
            } else {
                json_decref(result);
                snprintf(w[i].message, sizeof(w[i].message), "%s",
                         rc ? err.msg : "the connector refunded without a refund event");
                if (rc == PB_OK) {
                    w[i].rc = PB_ERR_INTERNAL;
                    w[i].outcome = PB_OUTCOME_DEAD;
                }
            }
        }
    } else if (conn) {
        size_t max = conn->conn.type->max_batch(&conn->conn, jobs[0].command);
        for (size_t i = 0; i < n; i++) {
            if (w[i].decided)
                continue;
            struct pb_sink_item *it = &items[n_items];
            char key[160];
            snprintf(key, sizeof(key), "pb-%s-%lld-%s-%d", conn->conn.name, (long long)w[i].job->event_id,
                     w[i].job->flow, w[i].job->step);
            it->command = w[i].job->command;
            it->document = w[i].document;
            it->reference = w[i].reference;
            it->idempotency_key = strdup(key);
            it->attempt = w[i].job->tries;
            it->retry_after_s = -1;
            item_owner[n_items++] = &w[i];
        }
        if (max == 0)
            max = 1;
        for (size_t off = 0; off < n_items; off += max) {
            size_t k = n_items - off < max ? n_items - off : max;
            struct pb_err err = {0};
            struct pb_call_ctx ctx = {.http = wk->http, .trace = trace, .now = time(NULL),
                                      .retry_after_s = -1};
            uint64_t c0 = pb_monotonic_ns();
            enum pb_rc rc = conn->conn.type->execute(&conn->conn, &ctx, &items[off], k, &err);
            pb_histogram_observe(&m->call_latency, pb_monotonic_ns() - c0);
            for (size_t j = off; j < off + k; j++) {
                struct work_item *o = item_owner[j];
                struct pb_sink_item *it = &items[j];
                if (rc) {
                    /* a whole-batch failure: every item has it (the contract),
                     * keeping the item's own words and delay when it has them */
                    if (it->rc == PB_OK || !it->message[0])
                        snprintf(it->message, sizeof(it->message), "%s", err.msg);
                    it->rc = rc;
                    if (ctx.retry_after_s > it->retry_after_s)
                        it->retry_after_s = ctx.retry_after_s;
                }
                o->rc = it->rc;
                o->retry_after_s = it->retry_after_s;
                snprintf(o->message, sizeof(o->message), "%s", it->message);
                snprintf(o->erp_id, sizeof(o->erp_id), "%s", it->erp_id);
                if (it->rc == PB_OK && !it->erp_id[0]) {
                    o->rc = PB_ERR_PERMANENT;
                    snprintf(o->message, sizeof(o->message), "the connector reported success without an ERP id");
                }
                o->outcome = o->rc == PB_OK ? PB_OUTCOME_DONE
                             : pb_rc_is_transient(o->rc) ? PB_OUTCOME_RETRY : PB_OUTCOME_DEAD;
            }
        }
    }

    /* completions, all submitted at once so they share a commit */
    struct latch latch = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, (int)n};
    struct pb_store_op *ops = calloc(n, sizeof(*ops));
    char **strs = calloc(n * 4, sizeof(char *));
    int failed_any = 0;
    for (size_t i = 0; i < n; i++)
        if (w[i].outcome == PB_OUTCOME_RETRY || w[i].outcome == PB_OUTCOME_DEAD)
            failed_any = 1;
    /* bodies are kept (redacted) only when something failed: that is what a
     * dead letter or a retry needs; a successful batch keeps timings only */
    pb_trace_finish(trace, failed_any);
    char *trace_s = dump_or_null(trace);
    int64_t now = pb_now_ms();
    const char *chain_target = NULL, *chain_command = NULL;
    int64_t dur = (int64_t)((pb_monotonic_ns() - t0) / 1000000u);
    for (size_t i = 0; i < n; i++) {
        struct work_item *x = &w[i];
        struct pb_store_op *op = &ops[i];
        op->kind = PB_OP_COMPLETE;
        op->done = latch_done;
        op->ctx = &latch;
        op->u.complete.job_id = x->job->id;
        op->u.complete.attempt = x->job->attempts;
        op->u.complete.started_ms = started_ms;
        op->u.complete.duration_ms = dur;
        op->u.complete.trace_json = trace_s;
        /* The document is built by our mapping from a canonical event, which
         * never holds a card number or a credential (refused at the inbox),
         * so a successful job stores it as is; failures are redacted like
         * traces, since they may echo what the ERP answered. */
        int failed = x->outcome == PB_OUTCOME_RETRY || x->outcome == PB_OUTCOME_DEAD;
        if (x->document) {
            char *d = dump_or_null(x->document);
            strs[i * 4] = d && failed ? pb_trace_redact_body(d, strlen(d)) : d;
            if (strs[i * 4] != d)
                free(d);
            op->u.complete.document_json = strs[i * 4];
        }
        for (size_t j = 0; j < n_items; j++)
            if (item_owner[j] == x && (items[j].result || items[j].result_json)) {
                char *r = items[j].result_json ? strdup(items[j].result_json)
                                               : dump_or_null(items[j].result);
                strs[i * 4 + 1] = r && failed ? pb_trace_redact_body(r, strlen(r)) : r;
                if (strs[i * 4 + 1] != r)
                    free(r);
                op->u.complete.result_json = strs[i * 4 + 1];
            }
        op->u.complete.mapping_version = x->flow ? x->flow->version : NULL;
        op->u.complete.reference = x->reference;
        op->u.complete.message = x->message[0] ? x->message : NULL;
        if (x->outcome == PB_OUTCOME_RETRY) {
            if (pb_retry_exhausted(&conn->retry, x->job->attempts)) {
                char msg[600];
                snprintf(msg, sizeof(msg), "gave up after %u attempts: %s", x->job->attempts, x->message);
                snprintf(x->message, sizeof(x->message), "%s", msg);
                x->outcome = PB_OUTCOME_DEAD;
            } else {
                int64_t ra = x->retry_after_s >= 0 ? (int64_t)x->retry_after_s * 1000 : -1;
                op->u.complete.next_run_ms =
                    now + (int64_t)pb_retry_delay_ms(&conn->retry, x->job->attempts, pb_retry_random(), ra);
            }
        }
        op->u.complete.outcome = x->outcome;
        if (x->outcome == PB_OUTCOME_DONE && x->emit) {
            struct pb_store_op tmp;
            snprintf(x->emit_ev.event_id, sizeof(x->emit_ev.event_id), "%s", x->erp_id);
            snprintf(x->emit_ev.type, sizeof(x->emit_ev.type), "%s",
                     pb_json_str(x->emit, "type") ? pb_json_str(x->emit, "type") : "refund.succeeded");
            x->emit_ev.event = x->emit;
            x->emit_ev.json = NULL;
            x->emit_json = pb_route_event(e->cfg, conn, &x->emit_ev, &tmp, now);
            op->u.complete.emit.connection = conn->conn.name;
            op->u.complete.emit.gateway_event_id = x->emit_ev.event_id;
            op->u.complete.emit.type = x->emit_ev.type;
            op->u.complete.emit.event_json = x->emit_json;
            op->u.complete.emit.original_gateway_id = tmp.u.inbox.original_gateway_id;
            memcpy(op->u.complete.emit.jobs, tmp.u.inbox.jobs, sizeof(tmp.u.inbox.jobs));
            op->u.complete.emit.n_jobs = tmp.u.inbox.n_jobs;
        }
        if (x->outcome == PB_OUTCOME_RETRY || x->outcome == PB_OUTCOME_DEAD)
            op->u.complete.error_class = pb_rc_name(x->rc);
        if (x->outcome == PB_OUTCOME_DONE) {
            op->u.complete.erp_id = x->erp_id[0] ? x->erp_id : NULL;
        }
        size_t nxt = x->flow ? x->flow->n_steps : 0;
        if ((x->outcome == PB_OUTCOME_DONE || x->outcome == PB_OUTCOME_SKIPPED) && x->flow)
            nxt = next_runnable(wk, x, (size_t)x->job->step);
        if ((x->outcome == PB_OUTCOME_DONE || x->outcome == PB_OUTCOME_SKIPPED) && x->flow &&
            nxt < x->flow->n_steps) {
            const struct pb_flow_step *nx = &x->flow->steps[nxt];
            op->u.complete.next.flow = x->job->flow;
            op->u.complete.next.step = (int)nxt + 1;
            op->u.complete.next.step_name = nx->name;
            op->u.complete.next.target = nx->target;
            op->u.complete.next.command = nx->command;
            op->u.complete.next.run_at_ms = now;
            /* chained: the first next step's (target, command) and the events
             * the engine did not enrich (a refund's .original is looked up
             * afresh by each of its jobs) */
            if (chain && !chain_target && !json_object_get(x->event, "original")) {
                chain_target = nx->target;
                chain_command = nx->command;
            }
            if (chain_target && strcmp(chain_target, nx->target) == 0 &&
                strcmp(chain_command, nx->command) == 0 && !json_object_get(x->event, "original"))
                op->u.complete.next_lease_until = now + LEASE_MS;
        } else if ((x->outcome == PB_OUTCOME_DONE || x->outcome == PB_OUTCOME_SKIPPED) && x->flow) {
            /* the flow is through: a paid order is now "processing" in the
             * ERP; tell the shop once per event (the status job's (event,
             * flow, step) is unique, so a second flow finishing adds nothing) */
            const char *type = pb_json_str(x->event, "type");
            struct pb_conn_entry *src = pb_config_connection(e->cfg, pb_json_str(x->event, "source.connection"));
            /* something was posted: this step, or an earlier one of the flow */
            int posted = (x->outcome == PB_OUTCOME_DONE && x->job->step >= 1) ||
                         json_object_size(x->refs) > 0;
            if (src && src->status_webhook[0] && type && strcmp(type, "payment.succeeded") == 0 && posted) {
                op->u.complete.next.flow = "paybridge.status";
                op->u.complete.next.step = 2;
                op->u.complete.next.step_name = "processing";
                op->u.complete.next.target = src->status_webhook;
                op->u.complete.next.command = "order.status";
                op->u.complete.next.run_at_ms = now;
            }
        }
        switch (x->outcome) {
        case PB_OUTCOME_DONE:
            atomic_fetch_add_explicit(&e->metrics.jobs_done, 1, memory_order_relaxed);
            if (m) atomic_fetch_add_explicit(&m->calls_done, 1, memory_order_relaxed);
            break;
        case PB_OUTCOME_SKIPPED:
            atomic_fetch_add_explicit(&e->metrics.jobs_skipped, 1, memory_order_relaxed);
            break;
        case PB_OUTCOME_RETRY:
            atomic_fetch_add_explicit(&e->metrics.jobs_retried, 1, memory_order_relaxed);
            if (m) atomic_fetch_add_explicit(&m->calls_retry, 1, memory_order_relaxed);
            break;
        case PB_OUTCOME_DEAD:
            atomic_fetch_add_explicit(&e->metrics.jobs_dead, 1, memory_order_relaxed);
            if (m) atomic_fetch_add_explicit(&m->calls_dead, 1, memory_order_relaxed);
            break;
        }
        atomic_fetch_add_explicit(&e->metrics.attempts, 1, memory_order_relaxed);
        {
            char jid[32], eid[32], att[16];
            snprintf(jid, sizeof(jid), "%lld", (long long)x->job->id);
            snprintf(eid, sizeof(eid), "%lld", (long long)x->job->event_id);
            snprintf(att, sizeof(att), "%u", x->job->attempts);
            static const char *names[] = {"job.done", "job.skipped", "job.retry", "job.dead"};
            pb_log(x->outcome == PB_OUTCOME_DEAD ? PB_LOG_WARN : PB_LOG_INFO, names[x->outcome],
                   "job_id", jid, "event_id", eid, "flow", x->job->flow, "step", x->job->step_name,
                   "target", x->job->target, "attempt", att, "erp_id",
                   x->outcome == PB_OUTCOME_DONE ? x->erp_id : NULL, "message",
                   x->outcome == PB_OUTCOME_DONE ? NULL : x->message, (char *)NULL);
        }
    }
    for (size_t i = 0; i < n; i++)
        pb_store_submit(e->store, &ops[i]);
    pthread_mutex_lock(&latch.lock);
    while (latch.left > 0)
        pthread_cond_wait(&latch.cond, &latch.lock);
    pthread_mutex_unlock(&latch.lock);
    for (size_t i = 0; i < n; i++) {
        pb_histogram_observe(&e->metrics.job_latency, pb_monotonic_ns() - t0);
        if (ops[i].rc && ops[i].rc != PB_ERR_EXISTS)
            pb_log(PB_LOG_ERROR, "job.complete_failed", "error", ops[i].err.msg, (char *)NULL);
    }
    if (chain) {
        size_t cn = 0;
        for (size_t i = 0; i < n; i++)
            if (ops[i].rc == PB_OK && ops[i].u.complete.next_job_id > 0 && w[i].event)
                cn++;
        chain->n = 0;
        chain->jobs = cn ? calloc(cn, sizeof(*chain->jobs)) : NULL;
        chain->events = cn ? calloc(cn, sizeof(json_t *)) : NULL;
        chain->refs = cn ? calloc(cn, sizeof(json_t *)) : NULL;
        /* out of memory: the leased jobs come back when their leases expire */
        for (size_t i = 0; cn && chain->jobs && chain->events && chain->refs && i < n; i++) {
            struct work_item *x = &w[i];
            const struct pb_job_new *nj = &ops[i].u.complete.next;
            struct pb_job *cj = &chain->jobs[chain->n];
            json_t *r;
            if (ops[i].rc != PB_OK || ops[i].u.complete.next_job_id <= 0 || !x->event)
                continue;
            /* the refs a claim would load: the flow's done steps with an ERP id */
            r = x->refs ? json_deep_copy(x->refs) : json_object();
            if (r && x->outcome == PB_OUTCOME_DONE && x->erp_id[0])
                json_object_set_new(r, x->job->step_name, json_string(x->erp_id));
            cj->id = ops[i].u.complete.next_job_id;
            cj->event_id = x->job->event_id;
            cj->flow = strdup(x->job->flow);
            cj->step = nj->step;
            cj->step_name = strdup(nj->step_name);
            cj->target = strdup(nj->target);
            cj->command = strdup(nj->command);
            cj->attempts = 1;
            cj->tries = 1;
            if (!r || !cj->flow || !cj->step_name || !cj->target || !cj->command) {
                /* out of memory: the job comes back when its lease expires */
                json_decref(r);
                free(cj->flow);
                free(cj->step_name);
                free(cj->target);
                free(cj->command);
                memset(cj, 0, sizeof(*cj));
                continue;
            }
            chain->events[chain->n] = x->event;
            chain->refs[chain->n] = r;
            chain->n++;
            x->event = NULL; /* the next step's now, still kept by the mapper */
        }
    }
    free(trace_s);
    for (size_t i = 0; i < n * 4; i++)
        free(strs[i]);
    free(strs);
    free(ops);
    for (size_t j = 0; j < n_items; j++) {
        free((char *)items[j].idempotency_key);
        json_decref(items[j].result);
        free(items[j].result_json);
    }
    for (size_t i = 0; i < n; i++) {
        pb_mapper_unkeep(wk->mapper, w[i].event); /* before the event goes */
        json_decref(w[i].emit);
        free(w[i].emit_json);
        json_decref(w[i].event);
        json_decref(w[i].refs);
        json_decref(w[i].document);
        free(w[i].reference);
    }
    json_decref(trace);
    free(items);
    free(item_owner);
    free(w);
    pb_engine_wake(e); /* next steps were queued */
}

static void *worker_main(void *arg)
{
    struct worker *wk = arg;
    struct pb_engine *e = wk->e;
    pb_trace_defer(1); /* run_batch redacts only what it keeps (pb_trace_finish) */
    for (;;) {
        uint64_t seq;
        pthread_mutex_lock(&e->lock);
        int running = e->running;
        seq = e->work_seq;
        pthread_mutex_unlock(&e->lock);
        if (!running)
            break;
        struct pb_store_op op;
        memset(&op, 0, sizeof(op));
        op.kind = PB_OP_CLAIM;
        op.u.claim.now_ms = pb_now_ms();
        op.u.claim.lease_ms = LEASE_MS;
        op.u.claim.max = e->cfg->claim_batch;
        if (pb_store_run(e->store, &op) == PB_OK && op.u.claim.n > 0) {
            struct chain ch = {0};
            run_batch(wk, op.u.claim.jobs, op.u.claim.n, NULL, NULL, &ch);
            pb_store_jobs_free(op.u.claim.jobs, op.u.claim.n);
            while (ch.n > 0) {
                /* the next steps of the same events, leased by that commit */
                struct chain cur = ch;
                memset(&ch, 0, sizeof(ch));
                run_batch(wk, cur.jobs, cur.n, cur.events, cur.refs, &ch);
                pb_store_jobs_free(cur.jobs, cur.n);
                free(cur.events);
                free(cur.refs);
            }
            free(ch.jobs);
            free(ch.events);
            free(ch.refs);
            pb_mapper_unkeep_all(wk->mapper); /* nothing is kept past here */
            continue;
        }
        /* nothing due: sleep until woken, the next due time, or 250 ms */
        int64_t wait_ms = 250;
        if (op.rc == PB_OK && op.u.claim.next_due_ms > 0) {
            int64_t d = op.u.claim.next_due_ms - pb_now_ms();
            if (d < wait_ms)
                wait_ms = d < 1 ? 1 : d;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        ts.tv_sec += wait_ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&e->lock);
        while (e->running && e->work_seq == seq) {
            if (pthread_cond_timedwait(&e->work, &e->lock, &ts) == ETIMEDOUT)
                break;
        }
        pthread_mutex_unlock(&e->lock);
    }
    pb_mapper_free(wk->mapper);
    pb_http_client_free(wk->http);
    free(wk);
    return NULL;
}

static void *maintainer_main(void *arg)
{
    struct pb_engine *e = arg;
    int ticks = 0;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        int running = e->running;
        pthread_mutex_unlock(&e->lock);
        if (!running)
            break;
        usleep(200 * 1000);
        if (++ticks % 25)
            continue;
        struct pb_store_op op;
        memset(&op, 0, sizeof(op));
        op.kind = PB_OP_RECOVER;
        op.u.recover.now_ms = pb_now_ms();
        if (pb_store_run(e->store, &op) == PB_OK && op.u.recover.count > 0) {
            char n[32];
            snprintf(n, sizeof(n), "%lld", (long long)op.u.recover.count);
            pb_log(PB_LOG_WARN, "jobs.lease_expired", "count", n, (char *)NULL);
            pb_engine_wake(e);
        }
    }
    return NULL;
}

/* ---- pollers ------------------------------------------------------------------------------ */

/* One thread polls every connection whose connector can poll and whose
 * settings give poll_interval_s > 0. Each round: read the cursor, ask the
 * connector for the events after it (page by page), commit them through the
 * inbox exactly like webhooks (same event ids, so a transaction seen both ways
 * is stored once), and only then move the cursor. A crash between the two
 * re-reads a page, which the inbox de-duplicates. */
static void poll_connection(struct pb_engine *e, struct pb_conn_entry *conn,
                            struct pb_http_client *http)
{
    json_t *cur = NULL, *args = json_pack("{s:s}", "connection", conn->conn.name);
    struct pb_err err = {0};
    char cursor[256] = "", next[256] = "";
    int more = 1, pages = 0;
    if (pb_store_query(e->store, "cursor.get", args, &cur, &err) == PB_OK &&
        json_is_string(json_object_get(cur, "cursor")))
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(json_object_get(cur, "cursor")));
    json_decref(cur);
    json_decref(args);
    while (more && pages++ < 20) {
        struct pb_event_list *list = calloc(1, sizeof(*list));
        json_t *trace = json_array();
        struct pb_call_ctx ctx = {.http = http, .trace = trace, .now = time(NULL), .retry_after_s = -1};
        enum pb_rc rc;
        int failed = 0, fresh = 0;
        more = 0;
        next[0] = '\0';
        if (!list) {
            json_decref(trace);
            return;
        }
        rc = conn->conn.type->poll(&conn->conn, &ctx, cursor[0] ? cursor : NULL, list, next,
                                   sizeof(next), &more, &err);
        json_decref(trace);
        if (rc) {
            pb_log(PB_LOG_WARN, "poll.failed", "connection", conn->conn.name, "error", err.msg,
                   (char *)NULL);
            pb_event_list_clear(list);
            free(list);
            return;
        }
        int64_t now = pb_now_ms();
        for (size_t i = 0; i < list->n; i++) {
            struct pb_store_op op;
            char *json = pb_route_event(e->cfg, conn, &list->ev[i], &op, now);
            op.u.inbox.polled = 1;
            if (pb_store_run(e->store, &op)) {
                failed = 1;
                pb_log(PB_LOG_ERROR, "poll.store_failed", "connection", conn->conn.name, "error",
                       op.err.msg, (char *)NULL);
            } else if (!op.u.inbox.duplicate) {
                char idbuf[32];
                fresh++;
                snprintf(idbuf, sizeof(idbuf), "%lld", (long long)op.u.inbox.event_id);
                atomic_fetch_add_explicit(&e->metrics.conn[conn_index(e, conn)].accepted, 1,
                                          memory_order_relaxed);
                pb_log(PB_LOG_INFO, "event.accepted", "connection", conn->conn.name, "event_id",
                       idbuf, "gateway_event_id", list->ev[i].event_id, "type", list->ev[i].type,
                       "via", "poll", (char *)NULL);
            }
            free(json);
        }
        pb_event_list_clear(list);
        free(list);
        if (fresh)
            pb_engine_wake(e);
        if (failed || !next[0])
            return;
        {
            struct pb_store_op op;
            memset(&op, 0, sizeof(op));
            op.kind = PB_OP_CURSOR_SET;
            op.u.cursor.connection = conn->conn.name;
            op.u.cursor.cursor = next;
            if (pb_store_run(e->store, &op))
                return;
        }
        snprintf(cursor, sizeof(cursor), "%s", next);
    }
}

static void *poller_main(void *arg)
{
    struct pb_engine *e = arg;
    struct pb_http_client *http = NULL;
    struct pb_err err = {0};
    int64_t *due = calloc(e->cfg->n_conns + 1, sizeof(int64_t));
    if (pb_http_client_new(&http, &err) || !due) {
        free(due);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&e->lock);
        int running = e->running;
        pthread_mutex_unlock(&e->lock);
        if (!running)
            break;
        for (size_t i = 0; i < e->cfg->n_conns; i++) {
            struct pb_conn_entry *c = &e->cfg->conns[i];
            long long every = c->poll_interval_s;
            int64_t now = pb_now_ms();
            if (!(c->conn.type->caps & PB_CAP_POLL) || !c->conn.type->poll || every <= 0 ||
                now < due[i])
                continue;
            due[i] = now + every * 1000;
            poll_connection(e, c, http);
        }
        usleep(200 * 1000);
    }
    pb_http_client_free(http);
    free(due);
    return NULL;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

enum pb_rc pb_engine_start(struct pb_config *cfg, const struct pb_engine_options *opt,
                           struct pb_engine **out, struct pb_err *err)
{
    struct pb_engine *e;
    enum pb_rc rc;
    struct pb_httpd_config hc;
    /* glibc gives freed memory back to the kernel (madvise) as soon as 128 KiB
     * are free at the top of a thread's heap, and the next batch faults the
     * pages in again: 3% of the machine in bench/ scenario 4 (every batch
     * allocates and frees a ~75 KB Xero reply, documents, jq values). A
     * daemon that will need the memory again keeps up to 64 MiB per heap
     * instead; idle RSS is not affected (nothing has been freed yet). */
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    e = calloc(1, sizeof(*e));
    if (!e)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    e->magic = ENGINE_MAGIC;
    e->cfg = cfg;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->work, NULL);
    rc = pb_store_open(cfg->store_dsn, &e->store, err);
    if (rc) {
        free(e);
        return rc;
    }
    /* every lease at start-up belongs to a process that is gone */
    {
        struct pb_store_op op;
        memset(&op, 0, sizeof(op));
        op.kind = PB_OP_RECOVER;
        op.u.recover.all = 1;
        if (pb_store_run(e->store, &op) == PB_OK && op.u.recover.count > 0) {
            char n[32];
            snprintf(n, sizeof(n), "%lld", (long long)op.u.recover.count);
            pb_log(PB_LOG_WARN, "jobs.recovered", "count", n, "msg",
                   "jobs leased by a previous process are queued again", (char *)NULL);
        }
    }
    e->running = 1;
    e->accepting = 1;
    if (!opt || !opt->no_workers) {
        e->workers = calloc(cfg->workers, sizeof(pthread_t));
        for (unsigned i = 0; i < cfg->workers; i++) {
            struct worker *wk = calloc(1, sizeof(*wk));
            wk->e = e;
            wk->index = i;
            if (pb_http_client_new(&wk->http, err) || !(wk->mapper = pb_mapper_new(cfg->flows, err))) {
                free(wk);
                break;
            }
            if (pthread_create(&e->workers[e->n_workers], NULL, worker_main, wk) == 0)
                pthread_setname_np(e->workers[e->n_workers], "pb-worker");
            e->n_workers++;
        }
        if (pthread_create(&e->maintainer, NULL, maintainer_main, e) == 0)
            pthread_setname_np(e->maintainer, "pb-maintainer");
        if (pthread_create(&e->poller, NULL, poller_main, e) == 0)
            pthread_setname_np(e->poller, "pb-poller");
    }
    memset(&hc, 0, sizeof(hc));
    hc.bind_addr = cfg->listen_addr;
    hc.port = opt && opt->port_override >= 0 ? opt->port_override : cfg->listen_port;
    hc.max_body = cfg->max_body;
    hc.threads = cfg->http_threads;
    e->routes = pb_admin_routes(e);
    hc.routes = e->routes;
    rc = pb_httpd_start(&hc, &e->httpd, err);
    if (rc) {
        pb_engine_stop(e);
        return rc;
    }
    {
        char port[16], workers[16];
        snprintf(port, sizeof(port), "%d", pb_httpd_port(e->httpd));
        snprintf(workers, sizeof(workers), "%u", e->n_workers);
        pb_log(PB_LOG_INFO, "engine.started", "listen", cfg->listen_addr, "port", port, "workers",
               workers, "store", cfg->store_dsn, (char *)NULL);
    }
    *out = e;
    return PB_OK;
}

void pb_engine_stop(struct pb_engine *e)
{
    if (!e)
        return;
    e->accepting = 0;
    if (e->httpd) {
        usleep(100 * 1000); /* let in-flight commits resume their requests */
        pb_httpd_stop(e->httpd);
        e->httpd = NULL;
    }
    pthread_mutex_lock(&e->lock);
    e->running = 0;
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->lock);
    for (unsigned i = 0; i < e->n_workers; i++)
        pthread_join(e->workers[i], NULL);
    if (e->workers) {
        pthread_join(e->maintainer, NULL);
        pthread_join(e->poller, NULL);
    }
    free(e->workers);
    free((void *)e->routes);
    pb_store_close(e->store);
    pb_log(PB_LOG_INFO, "engine.stopped", (char *)NULL);
    e->magic = 0;
    free(e);
}

int pb_engine_port(const struct pb_engine *e) { return e->httpd ? pb_httpd_port(e->httpd) : -1; }
struct pb_store *pb_engine_store(struct pb_engine *e) { return e->store; }
struct pb_config *pb_engine_config(struct pb_engine *e) { return e->cfg; }
struct pb_metrics *pb_engine_metrics(struct pb_engine *e) { return &e->metrics; }

long long pb_engine_pending(struct pb_engine *e)
{
    json_t *st = NULL;
    struct pb_err err = {0};
    long long n;
    if (pb_store_query(e->store, "jobs.states", NULL, &st, &err))
        return -1;
    n = json_integer_value(json_object_get(st, "ready")) + json_integer_value(json_object_get(st, "leased"));
    json_decref(st);
    return n;
}
