/*
 * sandbox/shop.c: the sandbox's e-commerce shop, as the receiver of
 * paybridge's order status webhooks (the shopwebhook connector).
 *
 * It exports `sbx_shop_type` (sandbox/sbx.h's contract). It plays what a
 * well-behaved shop does on its side of the protocol that docs/connectors.md
 * ("shopwebhook") defines: verify the signature and its timestamp, refuse
 * what does not verify with a reason, record the status, and drop a
 * redelivery by its Idempotency-Key. Everything it received can be read back,
 * so a test or the demo can show exactly what reached the shop.
 *
 * SETTINGS (create; every key optional, these are the defaults)
 *   {"secret":"sandbox-shop-secret", "tolerance_s":300,
 *    "header_name":"X-Paybridge-Signature",
 *    "fail_next":0, "fail_status":503, "retry_after_s":30}
 * The framework's own keys (port, enabled, faults) are ignored; any other
 * key, or a known key of the wrong type or range, fails create (a typo must
 * not silently keep a default).
 *
 * ROUTES
 *   POST /status   the status endpoint. In order:
 *     1. fail_next > 0: decrement it and answer fail_status (default 503)
 *        with Retry-After: retry_after_s (none when -1). Counted as
 *        "failed_injected", not recorded, nothing verified: an overloaded
 *        shop fails before it reads anything.
 *     2. the signature header "t=<unix s>,v1=<hex>[,v1=<hex>...]" (parts in
 *        any order, unknown parts ignored): missing or malformed -> 401
 *        signature_missing / signature_malformed; no v1 equal (constant
 *        time) to HMAC-SHA256(secret, "<t>.<raw body>") -> 401
 *        signature_mismatch; |now - t| > tolerance_s -> 401
 *        timestamp_outside_tolerance. The signature is checked before the
 *        time, so a stale answer says the request was genuine but old.
 *     3. Content-Type not application/json -> 415; the body not a JSON
 *        object -> 400 invalid_json; order_reference not a non-empty string
 *        or state not one of paid, processing, refunded,
 *        partially_refunded, failed -> 422 invalid_status; no
 *        Idempotency-Key (1..255 bytes) -> 400 idempotency_key_missing.
 *        Every refusal of 2 and 3 counts as "rejected".
 *     4. an Idempotency-Key seen before -> 200 {"id":<the first one's id>,
 *        "received":true,"duplicate":true}, counted as "duplicates", not
 *        recorded again. (The body of the repeat is not compared: a shop
 *        drops a redelivery by its key.)
 *     5. otherwise the status is recorded -> 200 {"id":"<uuid>","received":true}.
 *   Errors are {"error":{"code","message"}} (pb_http_response_error).
 * Admin (loopback peers only, else 403):
 *   GET  /_sandbox/statuses[?order_reference=X]
 *        {"order_reference":X|null,"count":n,"statuses":[...]} in the order
 *        received; each {"id","order_reference","state","idempotency_key",
 *        "event" (X-Paybridge-Event or null),"content_type","signature" (the
 *        header as received),"signed_at" (its t),"received_at","raw_body"
 *        (the exact bytes, for a test to recompute the HMAC),"document"}
 *   GET  /_sandbox/stats     {"received","duplicates","rejected",
 *                             "failed_injected","statuses","fail_next",
 *                             "requests","responses":{"<status>":n}}
 *   GET|POST /_sandbox/settings  read / merge the settings above (the secret
 *                             is never echoed: "secret_set":true); a bad key
 *                             or value is a 400 and changes nothing
 *   POST /_sandbox/reset     forget statuses and counters; fail_next = 0
 *
 * LIMITS: at most SHOP_MAX_STATUSES statuses (507 beyond, until a reset).
 * The Idempotency-Key index is an open-addressing hash table (FNV-1a, linear
 * probing, at most half full), so a redelivery check is O(1) however many
 * statuses the demo or a bench has sent; the statuses route scans, it is
 * admin only.
 *
 * LOCKING: one mutex (`mu`) guards everything but the route table. Handlers
 * run on a thread per connection; each takes mu for its bookkeeping only and
 * never does I/O under it. The signature check runs on a copy of the secret
 * taken under mu, so a settings change mid-request is seen whole or not at
 * all.
 *
 * Rejected designs.
 *   - Reusing the connector's signing code to verify: a bug shared by both
 *     sides would verify itself. The check here is written from the
 *     protocol's text, and the unit test recomputes the HMAC a third time.
 *   - A body comparison on a repeated Idempotency-Key (Stripe answers 422
 *     to a key reused with another body): real shop endpoints drop repeats
 *     by key, and paybridge re-signs each retry, so the signature header
 *     differs between a request and its redelivery by design.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/crypto.h"
#include "core/log.h"
#include "net/httpd.h"
#include "sbx.h"

#define SHOP_EMU_MAGIC 0x53484f45u /* "SHOE" */
#define SHOP_MAX_STATUSES 100000   /* recorded statuses kept at most */
#define SHOP_KEY_MAX 255           /* Idempotency-Key bytes */
#define SHOP_HEADER_NAME_MAX 64
#define SHOP_MAX_V1 4 /* v1 candidates read from one header */
#define SHOP_MAX_ROUTES 8
#define SHOP_STATUS_SLOTS 32 /* distinct HTTP statuses counted */
#define SHOP_TOLERANCE_MAX (365LL * 86400)

static const char *const allowed_states[] = {
    "paid", "processing", "refunded", "partially_refunded", "failed", NULL,
};

struct status_rec {
    char id[37];           /* our uuid for it */
    char *idempotency_key; /* owned */
    char *order_reference; /* owned */
    json_t *record;        /* owned: what /_sandbox/statuses shows */
};

struct shop_emu;

struct shop_emu {
    unsigned magic;                         /* SHOP_EMU_MAGIC while alive */
    pthread_mutex_t mu;                     /* guards everything below but slots/routes */
    char *secret;                           /* owned, never logged or echoed */
    char header_name[SHOP_HEADER_NAME_MAX]; /* the signature header */
    long long tolerance_s;                  /* allowed |now - t| */
    long long fail_next;                    /* POST /status calls still to fail */
    int fail_status;                        /* their status, 400..599 */
    int retry_after_s;                      /* their Retry-After, -1 = none */
    struct status_rec *recs;                /* owned array, in order received */
    size_t n_recs, cap_recs;
    size_t *index;    /* owned: slot = record index + 1, 0 = empty */
    size_t index_cap; /* a power of two, or 0 */
    uint64_t received, duplicates, rejected, failed_injected, requests;
    int status_code[SHOP_STATUS_SLOTS]; /* HTTP statuses answered, 0 = free slot */
    uint64_t status_count[SHOP_STATUS_SLOTS];
    struct sbx_route_slot slots[SHOP_MAX_ROUTES];
    struct pb_http_route routes[SHOP_MAX_ROUTES + 1]; /* ends with {NULL} */
};

static struct shop_emu *state_of(void *arg)
{
    struct shop_emu *st = arg;
    if (!st || st->magic != SHOP_EMU_MAGIC) {
        pb_log(PB_LOG_ERROR, "sandbox.shop.bad_state", NULL);
        abort(); /* the framework passed something else: a bug, not input */
    }
    return st;
}

/* ---- replies ------------------------------------------------------------- */

/* Serialise o (taken) as the reply body. */
static void reply_json(struct pb_http_response *resp, int status, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        pb_http_response_error(resp, 500, "internal", "out of memory");
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
    snprintf(resp->content_type, sizeof(resp->content_type), "application/json");
}

static int is_loopback(const char *addr)
{
    if (!addr)
        return 0;
    return strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 ||
           strncmp(addr, "::ffff:127.", 11) == 0;
}

/* 0 for a loopback peer; else a 403 and -1. */
static int check_admin(struct pb_http_request *req, struct pb_http_response *resp)
{
    if (is_loopback(req->remote_addr))
        return 0;
    pb_http_response_error(resp, 403, "forbidden", "sandbox admin routes are loopback only");
    return -1;
}

static void iso8601_now(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);
}

/* ---- the Idempotency-Key index ------------------------------------------- */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Caller holds mu. The record with this key, or NULL. */
static struct status_rec *find_key(struct shop_emu *st, const char *key)
{
    if (!st->index_cap)
        return NULL;
    for (size_t i = (size_t)fnv1a(key) & (st->index_cap - 1);; i = (i + 1) & (st->index_cap - 1)) {
        size_t slot = st->index[i];
        if (!slot)
            return NULL;
        if (strcmp(st->recs[slot - 1].idempotency_key, key) == 0)
            return &st->recs[slot - 1];
    }
}

/* Caller holds mu. Put record `at` into an index of cap slots. */
static void index_put(size_t *index, size_t cap, const struct status_rec *recs, size_t at)
{
    size_t i = (size_t)fnv1a(recs[at].idempotency_key) & (cap - 1);
    while (index[i])
        i = (i + 1) & (cap - 1);
    index[i] = at + 1;
}

/* Caller holds mu. Room for one more record and its index entry; -1 on OOM. */
static int reserve_one(struct shop_emu *st)
{
    if (st->n_recs == st->cap_recs) {
        size_t cap = st->cap_recs ? st->cap_recs * 2 : 64;
        struct status_rec *r = realloc(st->recs, cap * sizeof(*r));
        if (!r)
            return -1;
        st->recs = r;
        st->cap_recs = cap;
    }
    if ((st->n_recs + 1) * 2 > st->index_cap) {
        size_t cap = st->index_cap ? st->index_cap * 2 : 128;
        size_t *ix = calloc(cap, sizeof(*ix));
        if (!ix)
            return -1;
        for (size_t i = 0; i < st->n_recs; i++)
            index_put(ix, cap, st->recs, i);
        free(st->index);
        st->index = ix;
        st->index_cap = cap;
    }
    return 0;
}

/* Caller holds mu. */
static void clear_store(struct shop_emu *st)
{
    for (size_t i = 0; i < st->n_recs; i++) {
        free(st->recs[i].idempotency_key);
        free(st->recs[i].order_reference);
        json_decref(st->recs[i].record);
    }
    st->n_recs = 0;
    if (st->index)
        memset(st->index, 0, st->index_cap * sizeof(*st->index));
    st->received = st->duplicates = st->rejected = st->failed_injected = st->requests = 0;
    memset(st->status_code, 0, sizeof(st->status_code));
    memset(st->status_count, 0, sizeof(st->status_count));
}

/* ---- signature ----------------------------------------------------------- */

struct parsed_signature {
    long long t;
    int has_t;
    unsigned char v1[SHOP_MAX_V1][PB_SHA256_LEN];
    int n_v1;
};

/* Parse "t=...,v1=...". 0, or -1 with a reason in why. */
static int parse_signature(const char *h, struct parsed_signature *out, char *why, size_t len)
{
    memset(out, 0, sizeof(*out));
    while (*h) {
        const char *part = h, *end = strchr(h, ','), *eq;
        size_t n = end ? (size_t)(end - h) : strlen(h);
        h = end ? end + 1 : h + n;
        while (n && (*part == ' ' || *part == '\t'))
            part++, n--;
        while (n && (part[n - 1] == ' ' || part[n - 1] == '\t'))
            n--;
        eq = memchr(part, '=', n);
        if (!eq)
            continue;
        if (eq - part == 1 && part[0] == 't') {
            char digits[20];
            size_t dn = n - 2;
            char *stop;
            if (dn == 0 || dn >= sizeof(digits)) {
                snprintf(why, len, "t must be unix seconds");
                return -1;
            }
            memcpy(digits, eq + 1, dn);
            digits[dn] = '\0';
            for (size_t i = 0; i < dn; i++)
                if (digits[i] < '0' || digits[i] > '9') {
                    snprintf(why, len, "t must be unix seconds (digits only)");
                    return -1;
                }
            errno = 0;
            out->t = strtoll(digits, &stop, 10);
            if (errno || *stop) {
                snprintf(why, len, "t is out of range");
                return -1;
            }
            out->has_t = 1;
        } else if (eq - part == 2 && part[0] == 'v' && part[1] == '1') {
            size_t got = 0;
            if (out->n_v1 == SHOP_MAX_V1)
                continue;
            if (pb_hex_decode(eq + 1, n - 3, out->v1[out->n_v1], PB_SHA256_LEN, &got, NULL) !=
                    PB_OK ||
                got != PB_SHA256_LEN) {
                snprintf(why, len, "v1 must be 64 hex digits");
                return -1;
            }
            out->n_v1++;
        }
    }
    if (!out->has_t) {
        snprintf(why, len, "no t=<unix seconds>");
        return -1;
    }
    if (!out->n_v1) {
        snprintf(why, len, "no v1=<hex HMAC-SHA256>");
        return -1;
    }
    return 0;
}

/* 1 when one of sig's v1 is HMAC-SHA256(secret, "<t>.<body>"). */
static int signature_matches(const char *secret, const struct parsed_signature *sig,
                             const char *body, size_t len)
{
    unsigned char mac[PB_SHA256_LEN];
    char prefix[32];
    int pn = snprintf(prefix, sizeof(prefix), "%lld.", sig->t);
    char *msg = malloc((size_t)pn + len + 1);
    int ok = 0;

    if (!msg)
        return 0;
    memcpy(msg, prefix, (size_t)pn);
    if (len)
        memcpy(msg + pn, body, len);
    if (pb_hmac_sha256(secret, strlen(secret), msg, (size_t)pn + len, mac) == PB_OK)
        for (int i = 0; i < sig->n_v1; i++)
            ok |= pb_ct_equal(mac, sig->v1[i], PB_SHA256_LEN);
    free(msg);
    return ok;
}

/* ---- POST /status -------------------------------------------------------- */

static void reject(struct shop_emu *st, struct pb_http_response *resp, int status, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void reject(struct shop_emu *st, struct pb_http_response *resp, int status, const char *code,
                   const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&st->mu);
    st->rejected++;
    pthread_mutex_unlock(&st->mu);
    pb_http_response_error(resp, status, code, "%s", msg);
}

static int state_allowed(const char *s)
{
    for (size_t i = 0; allowed_states[i]; i++)
        if (strcmp(s, allowed_states[i]) == 0)
            return 1;
    return 0;
}

/* 0 when the request is signed and fresh (*t_out its t, *header_out the
 * header's value, borrowed from the request); else the reply is filled. */
static int verify(struct shop_emu *st, struct pb_http_request *req, struct pb_http_response *resp,
                  long long *t_out, const char **header_out)
{
    char header_name[SHOP_HEADER_NAME_MAX], why[128];
    struct parsed_signature sig;
    long long tolerance, now = (long long)time(NULL), skew;
    const char *h;
    char *secret;
    int ok;

    pthread_mutex_lock(&st->mu);
    snprintf(header_name, sizeof(header_name), "%s", st->header_name);
    secret = strdup(st->secret);
    tolerance = st->tolerance_s;
    pthread_mutex_unlock(&st->mu);
    if (!secret) {
        pb_http_response_error(resp, 500, "internal", "out of memory");
        return -1;
    }
    h = pb_http_header(req, header_name);
    if (!h || !*h) {
        pb_secret_free(secret);
        reject(st, resp, 401, "signature_missing", "missing %s header", header_name);
        return -1;
    }
    if (parse_signature(h, &sig, why, sizeof(why))) {
        pb_secret_free(secret);
        reject(st, resp, 401, "signature_malformed",
               "%s must be t=<unix seconds>,v1=<hex HMAC-SHA256>: %s", header_name, why);
        return -1;
    }
    ok = signature_matches(secret, &sig, req->body, req->body_len);
    pb_secret_free(secret);
    if (!ok) {
        reject(st, resp, 401, "signature_mismatch",
               "%s does not match: no v1 is the HMAC-SHA256 of \"<t>.<body>\" under the shared "
               "secret",
               header_name);
        return -1;
    }
    skew = sig.t > now ? sig.t - now : now - sig.t;
    if (skew > tolerance) {
        reject(st, resp, 401, "timestamp_outside_tolerance",
               "t=%lld is %lld s %s the shop's clock, beyond the tolerance of %lld s (a "
               "replayed or delayed request)",
               sig.t, skew, sig.t > now ? "ahead of" : "behind", tolerance);
        return -1;
    }
    *t_out = sig.t;
    *header_out = h;
    return 0;
}

static enum pb_http_action h_status(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct shop_emu *st = state_of(arg);
    const char *ctype, *key, *event, *ref = NULL, *state = NULL, *signature = NULL;
    json_t *doc, *record, *raw;
    struct status_rec *dup, *rec;
    char id[37], dup_id[37], received_at[40];
    long long t = 0;
    int fail_status = 0, retry_after = -1, full = 0;

    pthread_mutex_lock(&st->mu);
    if (st->fail_next > 0) {
        st->fail_next--;
        st->failed_injected++;
        fail_status = st->fail_status;
        retry_after = st->retry_after_s;
    }
    pthread_mutex_unlock(&st->mu);
    if (fail_status) {
        pb_http_response_error(resp, fail_status, "injected",
                               "sandbox shop: failure injected by fail_next (HTTP %d)",
                               fail_status);
        if (retry_after >= 0) {
            char ra[16];
            snprintf(ra, sizeof(ra), "%d", retry_after);
            pb_http_response_header(resp, "Retry-After", ra);
        }
        return PB_HTTP_DONE;
    }

    if (verify(st, req, resp, &t, &signature))
        return PB_HTTP_DONE;
    ctype = pb_http_header(req, "Content-Type");
    if (!ctype || strncasecmp(ctype, "application/json", 16) != 0 ||
        (ctype[16] != '\0' && ctype[16] != ';' && ctype[16] != ' ')) {
        reject(st, resp, 415, "unsupported_media_type",
               "Content-Type must be application/json, got %.64s", ctype ? ctype : "none");
        return PB_HTTP_DONE;
    }
    doc = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        reject(st, resp, 400, "invalid_json", "the body must be a JSON object");
        return PB_HTTP_DONE;
    }
    ref = json_string_value(json_object_get(doc, "order_reference"));
    state = json_string_value(json_object_get(doc, "state"));
    if (!ref || !ref[0]) {
        json_decref(doc);
        reject(st, resp, 422, "invalid_status", "order_reference must be a non-empty string");
        return PB_HTTP_DONE;
    }
    if (!state || !state_allowed(state)) {
        json_decref(doc);
        reject(st, resp, 422, "invalid_status",
               "state must be one of paid, processing, refunded, partially_refunded, failed");
        return PB_HTTP_DONE;
    }
    key = pb_http_header(req, "Idempotency-Key");
    if (!key || !key[0] || strlen(key) > SHOP_KEY_MAX) {
        json_decref(doc);
        reject(st, resp, 400, "idempotency_key_missing",
               "an Idempotency-Key header of 1 to %d bytes is required (it is how a "
               "redelivered status is dropped)",
               SHOP_KEY_MAX);
        return PB_HTTP_DONE;
    }
    event = pb_http_header(req, "X-Paybridge-Event");
    if (pb_uuid4(id) != PB_OK) {
        json_decref(doc);
        pb_http_response_error(resp, 500, "internal", "no randomness for an id");
        return PB_HTTP_DONE;
    }
    iso8601_now(received_at, sizeof(received_at));
    raw = json_stringn(req->body, req->body_len);
    record = json_pack("{s:s,s:s,s:s,s:s,s:s?,s:s,s:s,s:I,s:s,s:o*,s:O}", "id", id,
                       "order_reference", ref, "state", state, "idempotency_key", key, "event",
                       event, "content_type", ctype, "signature", signature, "signed_at",
                       (json_int_t)t, "received_at", received_at, "raw_body", raw, "document", doc);

    pthread_mutex_lock(&st->mu);
    dup = find_key(st, key);
    if (dup) {
        st->duplicates++;
        memcpy(dup_id, dup->id, sizeof(dup_id));
    } else if (!record || st->n_recs >= SHOP_MAX_STATUSES) {
        full = record ? 507 : 500;
    } else if (reserve_one(st)) {
        full = 500;
    } else {
        rec = &st->recs[st->n_recs];
        rec->idempotency_key = strdup(key);
        rec->order_reference = strdup(ref);
        if (!rec->idempotency_key || !rec->order_reference) {
            free(rec->idempotency_key);
            free(rec->order_reference);
            full = 500;
        } else {
            memcpy(rec->id, id, sizeof(rec->id));
            rec->record = record;
            record = NULL;
            index_put(st->index, st->index_cap, st->recs, st->n_recs);
            st->n_recs++;
            st->received++;
        }
    }
    pthread_mutex_unlock(&st->mu);
    json_decref(record);
    json_decref(doc);

    if (dup)
        reply_json(resp, 200,
                   json_pack("{s:s,s:b,s:b}", "id", dup_id, "received", 1, "duplicate", 1));
    else if (full == 507)
        pb_http_response_error(resp, 507, "store_full",
                               "sandbox shop holds %d statuses at most; POST /_sandbox/reset",
                               SHOP_MAX_STATUSES);
    else if (full)
        pb_http_response_error(resp, 500, "internal", "out of memory");
    else
        reply_json(resp, 200, json_pack("{s:s,s:b}", "id", id, "received", 1));
    return PB_HTTP_DONE;
}

/* ---- settings ------------------------------------------------------------ */

static const char *const framework_keys[] = {"port", "enabled", "faults", NULL};

static int in_list(const char *const *list, const char *s)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

static int header_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= SHOP_HEADER_NAME_MAX)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return 0;
    return 1;
}

/* An integer setting in [min, max] into *out; -1 with err otherwise. */
static int int_setting(const char *key, json_t *v, long long min, long long max, long long *out,
                       struct pb_err *err)
{
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        pb_err_set(err, PB_ERR_CONFIG, "shop setting %s must be an integer from %lld to %lld", key,
                   min, max);
        return -1;
    }
    *out = (long long)json_integer_value(v);
    return 0;
}

/* Validate every key of `patch` first, then apply them all under mu, so a
 * bad value changes nothing. `creating`: the framework's keys are ignored. */
static int apply_settings(struct shop_emu *st, json_t *patch, int creating, struct pb_err *err)
{
    const char *key;
    json_t *v;
    char *secret = NULL, *old_secret = NULL;
    const char *header_name = NULL;
    long long tolerance = -1, fail_next = -1, fail_status = -1, retry_after = -2;

    if (!json_is_object(patch)) {
        pb_err_set(err, PB_ERR_CONFIG, "shop settings must be a JSON object");
        return -1;
    }
    json_object_foreach(patch, key, v) {
        if (creating && in_list(framework_keys, key))
            continue;
        if (strcmp(key, "secret") == 0) {
            if (!json_is_string(v) || json_string_length(v) == 0 ||
                strlen(json_string_value(v)) != json_string_length(v)) {
                pb_err_set(err, PB_ERR_CONFIG, "shop setting secret must be a non-empty string");
                goto fail;
            }
            pb_secret_free(secret);
            if (!(secret = strdup(json_string_value(v)))) {
                pb_err_set(err, PB_ERR_NOMEM, "out of memory");
                goto fail;
            }
        } else if (strcmp(key, "header_name") == 0) {
            if (!json_is_string(v) || !header_name_ok(json_string_value(v))) {
                pb_err_set(err, PB_ERR_CONFIG,
                           "shop setting header_name must be an HTTP header name of 1 to %d "
                           "characters",
                           SHOP_HEADER_NAME_MAX - 1);
                goto fail;
            }
            header_name = json_string_value(v);
        } else if (strcmp(key, "tolerance_s") == 0) {
            if (int_setting(key, v, 0, SHOP_TOLERANCE_MAX, &tolerance, err))
                goto fail;
        } else if (strcmp(key, "fail_next") == 0) {
            if (int_setting(key, v, 0, 1000000, &fail_next, err))
                goto fail;
        } else if (strcmp(key, "fail_status") == 0) {
            if (int_setting(key, v, 400, 599, &fail_status, err))
                goto fail;
        } else if (strcmp(key, "retry_after_s") == 0) {
            if (json_is_null(v))
                retry_after = -1;
            else if (int_setting(key, v, -1, 86400, &retry_after, err))
                goto fail;
        } else {
            pb_err_set(err, PB_ERR_CONFIG,
                       "unknown shop setting \"%.64s\" (known: secret, tolerance_s, header_name, "
                       "fail_next, fail_status, retry_after_s)",
                       key);
            goto fail;
        }
    }
    pthread_mutex_lock(&st->mu);
    if (secret) {
        old_secret = st->secret;
        st->secret = secret;
        secret = NULL;
    }
    if (header_name)
        snprintf(st->header_name, sizeof(st->header_name), "%s", header_name);
    if (tolerance >= 0)
        st->tolerance_s = tolerance;
    if (fail_next >= 0)
        st->fail_next = fail_next;
    if (fail_status >= 0)
        st->fail_status = (int)fail_status;
    if (retry_after >= -1)
        st->retry_after_s = (int)retry_after;
    pthread_mutex_unlock(&st->mu);
    pb_secret_free(old_secret);
    return 0;
fail:
    pb_secret_free(secret);
    return -1;
}

static json_t *settings_json(struct shop_emu *st)
{
    json_t *o;
    pthread_mutex_lock(&st->mu);
    o = json_pack("{s:b,s:s,s:I,s:I,s:i,s:i}", "secret_set", st->secret != NULL, "header_name",
                  st->header_name, "tolerance_s", (json_int_t)st->tolerance_s, "fail_next",
                  (json_int_t)st->fail_next, "fail_status", st->fail_status, "retry_after_s",
                  st->retry_after_s);
    pthread_mutex_unlock(&st->mu);
    return o;
}

/* ---- admin routes -------------------------------------------------------- */

static enum pb_http_action h_admin_statuses(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *arg)
{
    struct shop_emu *st = state_of(arg);
    const char *ref = pb_http_query(req, "order_reference");
    json_t *list = json_array();
    size_t n = 0;

    if (check_admin(req, resp)) {
        json_decref(list);
        return PB_HTTP_DONE;
    }
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; list && i < st->n_recs; i++) {
        if (ref && strcmp(st->recs[i].order_reference, ref) != 0)
            continue;
        /* a copy: records are shared with later requests' bookkeeping */
        json_array_append_new(list, json_deep_copy(st->recs[i].record));
        n++;
    }
    pthread_mutex_unlock(&st->mu);
    if (!list) {
        pb_http_response_error(resp, 500, "internal", "out of memory");
        return PB_HTTP_DONE;
    }
    reply_json(resp, 200,
               json_pack("{s:s?,s:I,s:o}", "order_reference", ref, "count", (json_int_t)n,
                         "statuses", list));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_stats(struct pb_http_request *req, struct pb_http_response *resp,
                                         void *arg)
{
    struct shop_emu *st = state_of(arg);
    json_t *o, *by_status = json_object();

    if (check_admin(req, resp)) {
        json_decref(by_status);
        return PB_HTTP_DONE;
    }
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; by_status && i < SHOP_STATUS_SLOTS && st->status_code[i]; i++) {
        char key[16];
        snprintf(key, sizeof(key), "%d", st->status_code[i]);
        json_object_set_new(by_status, key, json_integer((json_int_t)st->status_count[i]));
    }
    o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o*}", "received", (json_int_t)st->received,
                  "duplicates", (json_int_t)st->duplicates, "rejected", (json_int_t)st->rejected,
                  "failed_injected", (json_int_t)st->failed_injected, "statuses",
                  (json_int_t)st->n_recs, "fail_next", (json_int_t)st->fail_next, "requests",
                  (json_int_t)st->requests, "responses", by_status);
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, o);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_reset(struct pb_http_request *req, struct pb_http_response *resp,
                                         void *arg)
{
    struct shop_emu *st = state_of(arg);

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    clear_store(st);
    st->fail_next = 0;
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, json_pack("{s:b}", "reset", 1));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_settings_get(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct shop_emu *st = state_of(arg);
    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    reply_json(resp, 200, settings_json(st));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_settings_set(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct shop_emu *st = state_of(arg);
    struct pb_err err = {0};
    json_t *patch;

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    patch = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(patch)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object");
        return PB_HTTP_DONE;
    }
    if (apply_settings(st, patch, 0, &err)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "%s", err.msg);
        return PB_HTTP_DONE;
    }
    json_decref(patch);
    reply_json(resp, 200, settings_json(st));
    return PB_HTTP_DONE;
}

/* Every route goes through here: call the real handler, then count the reply. */
static enum pb_http_action counted(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct sbx_route_slot *slot = arg;
    struct shop_emu *st = state_of(slot->state);
    enum pb_http_action act = slot->handler(req, resp, st);
    int status = resp->status ? resp->status : 500;

    pthread_mutex_lock(&st->mu);
    st->requests++;
    sbx_count_status(st->status_code, st->status_count, SHOP_STATUS_SLOTS, status);
    pthread_mutex_unlock(&st->mu);
    return act;
}

/* ---- the emulator type --------------------------------------------------- */

static void shop_destroy(void *arg);

/* Our route table, in order; every route goes through counted(). */
static const struct sbx_route_spec SHOP_ROUTES[] = {
    {"POST", "/status", h_status},
    {"GET", "/_sandbox/statuses", h_admin_statuses},
    {"GET", "/_sandbox/stats", h_admin_stats},
    {"GET", "/_sandbox/settings", h_admin_settings_get},
    {"POST", "/_sandbox/settings", h_admin_settings_set},
    {"POST", "/_sandbox/reset", h_admin_reset},
};
#define N_SHOP_ROUTES (sizeof(SHOP_ROUTES) / sizeof(SHOP_ROUTES[0]))
_Static_assert(N_SHOP_ROUTES <= SHOP_MAX_ROUTES, "route table too small");

static void *shop_create(json_t *settings, struct pb_err *err)
{
    struct shop_emu *st;

    if (settings && !json_is_object(settings)) {
        pb_err_set(err, PB_ERR_CONFIG, "shop settings must be a JSON object");
        return NULL;
    }
    st = calloc(1, sizeof(*st));
    if (!st) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->magic = SHOP_EMU_MAGIC;
    pthread_mutex_init(&st->mu, NULL);
    st->secret = strdup("sandbox-shop-secret");
    snprintf(st->header_name, sizeof(st->header_name), "X-Paybridge-Signature");
    st->tolerance_s = 300;
    st->fail_status = 503;
    st->retry_after_s = 30;
    if (!st->secret) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (settings && apply_settings(st, settings, 1, err))
        goto fail;

    sbx_routes_fill(SHOP_ROUTES, N_SHOP_ROUTES, st, counted, st->slots, st->routes);
    return st;
fail:
    shop_destroy(st);
    return NULL;
}

static const struct pb_http_route *shop_routes(void *arg)
{
    return state_of(arg)->routes;
}

static void shop_started(void *arg, int port)
{
    char port_text[16];
    state_of(arg);
    snprintf(port_text, sizeof(port_text), "%d", port);
    pb_log(PB_LOG_INFO, "sandbox.shop.started", "port", port_text, NULL);
}

static void shop_destroy(void *arg)
{
    struct shop_emu *st = arg;
    if (!st)
        return;
    state_of(st);
    clear_store(st);
    free(st->recs);
    free(st->index);
    pb_secret_free(st->secret);
    pthread_mutex_destroy(&st->mu);
    st->magic = 0;
    free(st);
}

const struct sbx_emulator_type sbx_shop_type = {
    .name = "shop",
    .create = shop_create,
    .routes = shop_routes,
    .started = shop_started,
    .destroy = shop_destroy,
};
