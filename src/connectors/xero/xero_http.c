/*
 * connectors/xero/xero_http.c: one call to the Xero Accounting API, and the
 * small text builders the commands need (URL escaping, where-clauses,
 * idempotency keys).
 *
 * Every call carries, as xero_accounting.yaml requires:
 *   Authorization: Bearer <token>      (xero_token.c)
 *   xero-tenant-id: <settings.tenant_id>
 *   Accept: application/json
 *   Content-Type: application/json     (writes only)
 *   Idempotency-Key: pb-<64 hex>       (writes only; at most 128 characters)
 * and goes through c->limiter (the engine creates it from the connection's
 * config or default_rate_limit: 60/min, 5000/day, 5 concurrent). After each
 * reply, X-MinLimit-Remaining and X-DayLimit-Remaining are fed to the limiter
 * so it can pace before Xero says 429; the client itself feeds back the 429s.
 * Every attempt is appended to ctx->trace (header values never recorded).
 *
 * 401. Xero answers 401 when the access token expired early or was revoked.
 * The cached token (of the generation used) is invalidated, a new one fetched
 * and the request sent once more. A second 401 right after a fresh token is
 * reported as PB_ERR_TRANSIENT, not permanent: mid-run it almost always means
 * the connection was disconnected or lost a scope in Xero's portal, which an
 * operator repairs; treating it as permanent would turn every queued job into
 * a dead letter needing a manual replay. The message says what to check, and
 * the retry policy's attempt limit bounds the retries.
 *
 * Ownership: the call's outputs belong to the caller until it calls
 * pb_http_call_reset(). The token and the Authorization header are copies
 * wiped and freed before return.
 *
 * Rejected: retrying 5xx/429 here. The engine's retry policy owns backoff,
 * jitter and Retry-After; retrying inside the connector would multiply the
 * attempts and hold a worker and a concurrency slot while sleeping.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "net/trace.h"
#include "xero_internal.h"

#define XERO_PATH_MAX (64 * 1024)            /* where-clauses of 50 references fit easily */

/* ---- a bounded growing string ---------------------------------------------------- */

void pb__xero_buf_init(struct xero_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void pb__xero_buf_add(struct xero_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->max) {
        b->failed = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *d;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void pb__xero_buf_adds(struct xero_buf *b, const char *s) { pb__xero_buf_add(b, s, strlen(s)); }

void pb__xero_buf_add_escaped(struct xero_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            pb__xero_buf_add(b, (const char *)p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            pb__xero_buf_add(b, e, 3);
        }
    }
}

void pb__xero_buf_free(struct xero_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- builders ---------------------------------------------------------------------- */

char *pb__xero_where_path(const char *resource, const char *const *fields,
                          const char *const *values, size_t n)
{
    struct xero_buf clause, path;
    pb__xero_buf_init(&clause, XERO_PATH_MAX);
    pb__xero_buf_init(&path, XERO_PATH_MAX);
    for (size_t i = 0; i < n; i++) {
        if (i)
            pb__xero_buf_adds(&clause, " OR ");
        pb__xero_buf_adds(&clause, fields[i]);
        pb__xero_buf_adds(&clause, "==\"");
        for (const char *p = values[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                pb__xero_buf_add(&clause, "\\", 1);
            pb__xero_buf_add(&clause, p, 1);
        }
        pb__xero_buf_adds(&clause, "\"");
    }
    pb__xero_buf_adds(&path, "/");
    pb__xero_buf_adds(&path, resource);
    pb__xero_buf_adds(&path, "?where=");
    if (!clause.failed && clause.data)
        pb__xero_buf_add_escaped(&path, clause.data);
    if (clause.failed || path.failed) {
        pb__xero_buf_free(&clause);
        pb__xero_buf_free(&path);
        return NULL;
    }
    pb__xero_buf_free(&clause);
    return path.data;
}

static void add_length_prefixed(struct xero_buf *b, const char *s)
{
    char len[32];
    snprintf(len, sizeof len, "%zu:", strlen(s));
    pb__xero_buf_adds(b, len);
    pb__xero_buf_adds(b, s);
}

void pb__xero_idempotency_key(const char *command, struct pb_sink_item *const *items, size_t n,
                              const char *body, char out[XERO_IDEMPOTENCY_KEY_MAX])
{
    unsigned char digest[PB_SHA256_LEN];
    char hex[2 * PB_SHA256_LEN + 1];
    struct xero_buf b;

    pb__xero_buf_init(&b, (size_t)1 << 20);
    add_length_prefixed(&b, "paybridge-xero-v1");
    add_length_prefixed(&b, command);
    for (size_t i = 0; i < n; i++) {
        const char *k = items[i]->idempotency_key;
        if (!k || !k[0])
            k = items[i]->reference ? items[i]->reference : "";
        add_length_prefixed(&b, k);
    }
    add_length_prefixed(&b, body ? body : "");
    if (b.failed || pb_sha256(b.data, b.len, digest) != PB_OK ||
        pb_hex_encode(digest, sizeof digest, hex, sizeof hex) != PB_OK) {
        /* unreachable for n <= XERO_BATCH_MAX sane keys; a random key is still correct */
        unsigned char r[PB_SHA256_LEN];
        if (pb_random_bytes(r, sizeof r) != PB_OK)
            memset(r, 0, sizeof r);
        pb_hex_encode(r, sizeof r, hex, sizeof hex);
    }
    pb__xero_buf_free(&b);
    snprintf(out, XERO_IDEMPOTENCY_KEY_MAX, "pb-%.64s", hex);
}

/* ---- the call ---------------------------------------------------------------------- */

static long header_long(const struct pb_http_call *call, const char *name)
{
    const char *v = pb_http_call_header(call, name);
    char *end;
    long n;
    if (!v)
        return -1;
    n = strtol(v, &end, 10);
    if (end == v || n < 0 || n == LONG_MAX)
        return -1;
    return n;
}

static void observe_limits(struct pb_connection *c, const struct pb_http_call *call)
{
    long min_left, day_left;
    if (!c->limiter || call->status == 0)
        return;
    min_left = header_long(call, "X-MinLimit-Remaining");
    day_left = header_long(call, "X-DayLimit-Remaining");
    if (min_left >= 0 || day_left >= 0)
        pb_ratelimit_observe(c->limiter, min_left, day_left, -1, NULL);
}

static char *bearer_header(const char *token)
{
    static const char prefix[] = "Authorization: Bearer ";
    size_t n = strlen(token);
    char *h = malloc(sizeof prefix + n);
    if (!h)
        return NULL;
    memcpy(h, prefix, sizeof prefix - 1);
    memcpy(h + sizeof prefix - 1, token, n + 1);
    return h;
}

enum pb_rc pb__xero_call(struct pb_connection *c, struct pb_call_ctx *ctx,
                         const struct xero_request *rq, struct pb_http_call *call,
                         struct pb_err *err)
{
    struct xero_state *st = pb__xero_state(c);
    char tenant[XERO_TENANT_MAX + 32], idem[XERO_IDEMPOTENCY_KEY_MAX + 32];
    char *url = NULL;
    size_t url_len;
    enum pb_rc rc = PB_OK;

    memset(call, 0, sizeof *call);
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "xero connection used before init");
    url_len = strlen(st->api_base) + strlen(rq->path) + 1;
    url = malloc(url_len);
    if (!url)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    snprintf(url, url_len, "%s%s", st->api_base, rq->path);
    snprintf(tenant, sizeof tenant, "xero-tenant-id: %s", st->tenant_id);
    if (rq->idempotency_key)
        snprintf(idem, sizeof idem, "Idempotency-Key: %s", rq->idempotency_key);

    for (int attempt = 0; attempt < 2; attempt++) {
        char *token = NULL, *auth;
        uint64_t generation = 0;
        int h = 0;

        if (attempt) {
            pb_http_call_reset(call);
            memset(call, 0, sizeof *call);
        }
        rc = pb__xero_token_get(c, ctx, &token, &generation, err);
        if (rc)
            break;
        auth = bearer_header(token);
        pb_secret_free(token);
        if (!auth) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
            break;
        }
        call->method = rq->method;
        call->url = url;
        call->headers[h++] = auth;
        call->headers[h++] = tenant;
        call->headers[h++] = "Accept: application/json";
        if (rq->body)
            call->headers[h++] = "Content-Type: application/json";
        if (rq->idempotency_key)
            call->headers[h++] = idem;
        call->headers[h] = NULL;
        call->body = rq->body;
        call->body_len = rq->body ? strlen(rq->body) : 0;
        call->timeout_ms = st->timeout_ms;
        call->limiter = c->limiter;
        rc = pb_http_perform(ctx->http, call, err);
        pb_trace_http(ctx->trace, call, rc, err);
        observe_limits(c, call);
        pb_secret_free(auth);
        call->headers[0] = NULL; /* freed; do not leave a dangling pointer in the call */
        call->headers[1] = NULL;
        if (call->status != 401)
            break;
        pb__xero_token_invalidate(c, generation);
        if (attempt == 1)
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "%s %s: Xero answered 401 again with a freshly fetched token: the "
                            "connection may have been disconnected or lost the accounting "
                            "scopes, or settings.tenant_id (%s) is not connected to this app; "
                            "will retry",
                            rq->method, rq->path, st->tenant_id);
    }
    /* the call keeps pointing at url for the caller's trace/reporting; it is
     * only read until pb_http_call_reset(), so free it with the call's life */
    call->url = NULL;
    free(url);
    return rc;
}
