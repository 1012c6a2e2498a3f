/*
 * connectors/xero/xero_internal.h: what the files of the Xero connector
 * share, and nothing else may include.
 *
 *   xero.c           the type table, settings, max_batch, execute() dispatch.
 *   xero_token.c     the OAuth2 client_credentials token cache (the only
 *                    mutable shared state, behind a mutex).
 *   xero_http.c      one Accounting API request: bearer, tenant, JSON
 *                    headers, limiter, trace, one retry after a 401; plus
 *                    URL escaping, where-clauses and idempotency keys.
 *   xero_reply.c     turning Xero's replies into per-item outcomes.
 *   xero_commands.c  contact.upsert; the creates (invoice.create,
 *                    payment.create, creditnote.create, creditnote.refund);
 *                    the voids (invoice.void, creditnote.void).
 *   xero_credit.c    creditnote.allocate.
 *   xero_recon.c     reconciliation: ledger() (payments and bank
 *                    transactions read back) and post_journal() (a manual
 *                    journal, or bank transfers and bank transactions when a
 *                    line is on a bank account; once per reference).
 *
 * Threading. Many worker threads call execute() on one connection at once,
 * each with its own HTTP client. Everything in `struct xero_state` is
 * immutable after init except the token fields, which only xero_token.c
 * touches, always under token_lock, and org_currency and the account
 * cache, which only xero_recon.c touches, under org_lock.
 */
#ifndef PB_CONNECTORS_XERO_INTERNAL_H
#define PB_CONNECTORS_XERO_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "connectors/connector.h"

#define XERO_STATE_MAGIC 0x5845524fu         /* "XERO" */
#define XERO_URL_MAX 512                     /* longest api_base / token_url */
#define XERO_TENANT_MAX 128                  /* longest tenant_id */
#define XERO_BATCH_MAX 50                    /* per PUT (Xero advises 50); bounds where-clauses */
#define XERO_BATCH_DEFAULT 50
#define XERO_TIMEOUT_DEFAULT_MS 30000L
#define XERO_REFRESH_MARGIN_DEFAULT_S 120L
#define XERO_TOKEN_MAX (16 * 1024)           /* longest access token accepted */
#define XERO_TOKEN_LIFETIME_DEFAULT_S 1800L  /* when the reply has no expires_in */
#define XERO_IDEMPOTENCY_KEY_MAX 68          /* "pb-" + 64 hex + NUL */
#define XERO_ACCOUNT_CODE_MAX 32             /* longest account Code kept (Xero: 10) */
#define XERO_JOURNAL_CONTACT_DEFAULT "paybridge reconciliation"

/* One account of the chart (GET /Accounts), as post_journal needs it. */
struct xero_account {
    char code[XERO_ACCOUNT_CODE_MAX];
    int bank;                                /* Type BANK */
};

struct xero_state {
    unsigned magic;                          /* XERO_STATE_MAGIC */
    char api_base[XERO_URL_MAX];             /* ".../api.xro/2.0", no trailing '/' */
    char token_url[XERO_URL_MAX];            /* ".../connect/token" */
    char tenant_id[XERO_TENANT_MAX];         /* the xero-tenant-id header value */
    size_t batch_size;                       /* 1..XERO_BATCH_MAX */
    long timeout_ms;                         /* every API and token call */
    long refresh_margin_s;                   /* refresh this long before expiry */
    char base_currency[4];                   /* settings.base_currency, "" = ask Xero */
    char journal_contact[256];               /* settings.journal_contact */

    pthread_mutex_t org_lock;                /* guards the three fields below */
    char org_currency[4];                    /* GET /Organisation's BaseCurrency, "" until read */
    struct xero_account *accounts;           /* malloc'd GET /Accounts, NULL until read */
    size_t n_accounts;

    pthread_mutex_t token_lock;              /* guards the four fields below */
    char *token;                             /* malloc'd access token, or NULL */
    time_t token_expires_at;                 /* wall clock (ctx->now's clock) */
    long token_lifetime_s;                   /* expires_in of the cached token */
    uint64_t token_generation;               /* bumped by every fetch; 0 = never fetched */
};

struct xero_state *pb__xero_state(const struct pb_connection *c);

/* ---- xero_token.c ---------------------------------------------------------------- */

/* A valid access token: the cached one, or a new one fetched now (under the
 * lock, so concurrent callers wait for one fetch instead of each fetching).
 * *token_out is a malloc'd copy the caller releases with pb_secret_free();
 * *generation_out identifies it for pb__xero_token_invalidate(). */
enum pb_rc pb__xero_token_get(struct pb_connection *c, struct pb_call_ctx *ctx, char **token_out,
                              uint64_t *generation_out, struct pb_err *err);

/* Forget the cached token if it is still the one of `generation` (so that
 * when several threads see the same 401, only one new token is fetched). */
void pb__xero_token_invalidate(struct pb_connection *c, uint64_t generation);

/* Free the cache (destroy). */
void pb__xero_token_clear(struct xero_state *st);

/* ---- xero_http.c ----------------------------------------------------------------- */

struct xero_request {
    const char *method;                      /* "GET", "PUT", "POST" */
    const char *path;                        /* below api_base, "/Contacts?where=...", escaped */
    const char *body;                        /* JSON text, or NULL for a GET */
    const char *idempotency_key;             /* NULL for a GET */
};

/* One Accounting API call with a bearer token, retried once with a fresh
 * token after a 401. The rc is the client's classification, except that a
 * second 401 is PB_ERR_TRANSIENT (see xero_http.c). When the token could not
 * be had, call->status is 0 and err says why. The call's outputs are valid
 * until pb_http_call_reset(call), which the caller must call. */
enum pb_rc pb__xero_call(struct pb_connection *c, struct pb_call_ctx *ctx,
                         const struct xero_request *rq, struct pb_http_call *call,
                         struct pb_err *err);

/* Percent-encode `in` (all but RFC 3986 unreserved) onto a growing string. */
struct xero_buf {
    char *data;                              /* malloc'd, NUL-terminated */
    size_t len, cap;
    size_t max;                              /* refuse to grow beyond this */
    int failed;                              /* an append failed: data is incomplete */
};
void pb__xero_buf_init(struct xero_buf *b, size_t max);
void pb__xero_buf_add(struct xero_buf *b, const char *s, size_t n);
void pb__xero_buf_adds(struct xero_buf *b, const char *s);
void pb__xero_buf_add_escaped(struct xero_buf *b, const char *s);
void pb__xero_buf_free(struct xero_buf *b);

/* "/Contacts?where=" + URL-encoded `F1=="v1" OR F2=="v2"`, with '"' and '\'
 * in values escaped by a backslash. Returns a malloc'd path or NULL. */
char *pb__xero_where_path(const char *resource, const char *const *fields,
                          const char *const *values, size_t n);

/* "pb-" + the first 64 hex digits of SHA-256 over the command, the
 * idempotency keys of `items` in order and the request body (length-prefixed,
 * so no two different inputs hash the same). The body is part of it because a
 * key promises "the same request": after a flow is fixed, a replayed dead
 * letter sends a different document and must not get the stored answer to
 * the refused one (found by e2e replay_same_batch). */
void pb__xero_idempotency_key(const char *command, struct pb_sink_item *const *items, size_t n,
                              const char *body, char out[XERO_IDEMPOTENCY_KEY_MAX]);

/* ---- xero_reply.c ---------------------------------------------------------------- */

/* The outcome of a call that did not produce per-element results. */
struct xero_failure {
    enum pb_rc rc;                           /* PB_ERR_TRANSIENT / PB_ERR_PERMANENT / ... */
    int retry_after_s;                       /* -1 unless Xero asked for a delay */
    char message[512];
};

void pb__xero_item_ok(struct pb_sink_item *it, const char *erp_id, json_t *record);
void pb__xero_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void pb__xero_item_fail_with(struct pb_sink_item *it, const struct xero_failure *f);

/* Describe a failed call (rc != PB_OK): 429 with Retry-After and
 * X-Rate-Limit-Problem, 5xx, network, token, other 4xx with Xero's words. */
void pb__xero_describe_failure(const struct pb_http_call *call, enum pb_rc rc,
                               const struct pb_err *err, const char *what,
                               struct xero_failure *out);

/* Apply the reply of a write (PUT/POST with an envelope) to the items sent,
 * in order: element i belongs to sent[i]. `envelope` is "Contacts",
 * "Invoices", "Payments" or "CreditNotes"; `id_key` is "ContactID",
 * "InvoiceID", "PaymentID" or "CreditNoteID". Returns 1 when the failure
 * was one for the whole request (*batch_failure filled; every sent item got
 * it), else 0. */
int pb__xero_apply_write_reply(const struct pb_http_call *call, enum pb_rc rc,
                               const struct pb_err *err, const char *envelope,
                               const char *id_key, struct pb_sink_item *const *sent,
                               size_t n_sent, struct xero_failure *batch_failure);

/* "; "-joined ValidationErrors[].Message of a reply element into out (""
 * when it has none); cut at len. */
void pb__xero_join_validation_errors(json_t *element, char *out, size_t len);

/* Parse a 2xx reply body and return its `envelope` array (borrowed from
 * *root_out, which the caller json_decref()s). NULL with *root_out = NULL and
 * `out` filled as PB_ERR_TRANSIENT when the body is not such an object. */
json_t *pb__xero_parse_envelope(const struct pb_http_call *call, const char *envelope,
                                json_t **root_out, struct xero_failure *out);

/* ---- xero_commands.c ------------------------------------------------------------- */

/* Each returns PB_OK when every item got its own outcome, or the rc of a
 * failure that hit every item alike (copied into err). All items of a call
 * have the same command. */
enum pb_rc pb__xero_contact_upsert(struct pb_connection *c, struct pb_call_ctx *ctx,
                                   struct pb_sink_item *items, size_t n, struct pb_err *err);
/* invoice.create, payment.create, creditnote.create, creditnote.refund */
enum pb_rc pb__xero_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                           struct pb_sink_item *items, size_t n, struct pb_err *err);
/* invoice.void, creditnote.void */
enum pb_rc pb__xero_void(struct pb_connection *c, struct pb_call_ctx *ctx,
                         struct pb_sink_item *items, size_t n, struct pb_err *err);

/* ---- xero_credit.c --------------------------------------------------------------- */

/* creditnote.allocate (one item per call is the design; more are run in turn). */
enum pb_rc pb__xero_creditnote_allocate(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        struct pb_sink_item *items, size_t n,
                                        struct pb_err *err);

/* ---- xero_recon.c ---------------------------------------------------------------- */

/* The connector's ledger() and post_journal() (connector.h has the contract). */
enum pb_rc pb__xero_ledger(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                           int32_t to_day, json_t *records, struct pb_err *err);
enum pb_rc pb__xero_post_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                                 const json_t *journal, char *erp_id, size_t erp_id_len,
                                 struct pb_err *err);

/* The members that go out as JSON numbers (pb_json_dumps_decimal). */
extern const char *const pb__xero_decimal_keys[];

#endif
