/*
 * connectors/paytrace/paytrace_internal.h: what the files of the PayTrace
 * connector share, and nothing else may include.
 *
 *   paytrace.c          the type table, settings and secrets (init/destroy).
 *   paytrace_token.c    the OAuth2 password-grant token cache (the only
 *                       mutable shared state, behind token_lock).
 *   paytrace_http.c     one API call: bearer, JSON, trace with card data
 *                       removed, one retry after a 401, PayTrace's reply
 *                       classified; and the public calls of paytrace.h.
 *   paytrace_record.c   one transaction record (the export shape, which the
 *                       webhook carries too) read strictly and turned into
 *                       canonical events. Shared by the webhook and the poller
 *                       so that both produce the same event for one
 *                       transaction.
 *   paytrace_inbound.c  the signed webhook.
 *   paytrace_poll.c     export/by_date_range from a cursor.
 *   paytrace_refund.c   the refund slot (refund/for_transaction).
 *
 * Threading. Many worker threads use one connection at once, each with its
 * own HTTP client. Everything in `struct paytrace_state` is immutable after
 * init except the token fields, which only paytrace_token.c touches, always
 * under token_lock.
 */
#ifndef PB_CONNECTORS_PAYTRACE_INTERNAL_H
#define PB_CONNECTORS_PAYTRACE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "connectors/connector.h"

#define PAYTRACE_STATE_MAGIC 0x50545243u /* "PTRC" */
#define PAYTRACE_URL_MAX 512             /* longest settings.api_base */
#define PAYTRACE_PATH_MAX 256            /* longest *_path setting */
#define PAYTRACE_WINDOW_DEFAULT_S 300L   /* settings.signature_window_s */
#define PAYTRACE_WINDOW_MAX_S 86400L
#define PAYTRACE_TIMEOUT_DEFAULT_MS 30000L /* settings.timeout_ms */
#define PAYTRACE_OVERLAP_DEFAULT_S 300L    /* settings.poll_overlap_s */
#define PAYTRACE_OVERLAP_MAX_S 86400L
#define PAYTRACE_REFRESH_MARGIN_DEFAULT_S 300L /* settings.token_refresh_margin_s */
#define PAYTRACE_REFRESH_MARGIN_MAX_S 3600L
#define PAYTRACE_TOKEN_MAX (16 * 1024)          /* longest access token accepted */
#define PAYTRACE_TOKEN_LIFETIME_DEFAULT_S 7200L /* when the reply has no expires_in */
#define PAYTRACE_ID_MAX 64                      /* longest transaction_id as text */
#define PAYTRACE_SIGNATURE_HEADER "X-PayTrace-Signature"
#define PAYTRACE_VOID_SUFFIX ":void" /* event_id of a void = "<id>:void" */

struct paytrace_state {
    unsigned magic;                              /* PAYTRACE_STATE_MAGIC */
    char api_base[PAYTRACE_URL_MAX];             /* no trailing '/' */
    char token_path[PAYTRACE_PATH_MAX];          /* "/oauth/token" */
    char export_path[PAYTRACE_PATH_MAX];         /* "/v1/transactions/export/by_date_range" */
    char settled_export_path[PAYTRACE_PATH_MAX]; /* "/v1/batches/export_settled" (unverified) */
    char currency[4];                            /* settings.currency, default "USD" */
    long window_s;                               /* replay window on created_at */
    long timeout_ms;                             /* every HTTP call */
    long overlap_s;                              /* poller re-reads this far before its cursor */
    long refresh_margin_s;                       /* fetch a new token this long before expiry */

    pthread_mutex_t token_lock; /* guards the fields below */
    char *token;                /* malloc'd access token, or NULL */
    time_t token_expires_at;    /* wall clock (ctx->now's clock) */
    long token_lifetime_s;      /* expires_in of the cached token */
    uint64_t token_generation;  /* bumped by every fetch; 0 = never */
};

/* The state of `c`, checked (NULL before init, after destroy, or corrupt). */
struct paytrace_state *pb__paytrace_state(const struct pb_connection *c);

/* ---- paytrace_token.c ------------------------------------------------------------ */

/* A valid access token: the cached one, or one fetched now under the lock.
 * *token_out is a malloc'd copy the caller releases with pb_secret_free();
 * *generation_out names it for pb__paytrace_token_invalidate(). */
enum pb_rc pb__paytrace_token_get(struct pb_connection *c, struct pb_call_ctx *ctx,
                                  char **token_out, uint64_t *generation_out, struct pb_err *err);

/* Forget the cached token if it is still the one of `generation`. */
void pb__paytrace_token_invalidate(struct pb_connection *c, uint64_t generation);

/* Free the cache (destroy). Caller holds token_lock or is the only user. */
void pb__paytrace_token_clear(struct paytrace_state *st);

/* ---- paytrace_http.c ------------------------------------------------------------- */

/* POST `body` (borrowed JSON object; secrets.integrator_id is added to a
 * copy when configured and absent) as JSON to api_base + path with the
 * bearer token; after a 401, invalidate the token, fetch a new one and send
 * once more. The reply is classified:
 *   2xx and "success": true                      PB_OK
 *   2xx or 4xx with "success": false             PB_ERR_PERMANENT, PayTrace's words
 *   network, timeout, 408/425/429/5xx            PB_ERR_TRANSIENT (ctx->retry_after_s)
 *   401 again with a fresh token                 PB_ERR_TRANSIENT
 *   2xx that is not a JSON object with success   PB_ERR_TRANSIENT
 *   other 4xx                                    PB_ERR_PERMANENT
 * *reply_out receives the parsed reply (a new reference the caller frees)
 * whenever the body was a JSON object, whatever the rc; else NULL.
 * `what` names the call in messages ("refund/for_transaction"). */
enum pb_rc pb__paytrace_post(struct pb_connection *c, struct pb_call_ctx *ctx, const char *path,
                             const char *what, const json_t *body, json_t **reply_out,
                             struct pb_err *err);

/* PayTrace's words from a reply: status_message, then every message of the
 * `errors` map as "code: message", joined with "; ". Never empty. */
void pb__paytrace_reply_words(const json_t *reply, char *out, size_t len);

/* ---- paytrace_record.c ----------------------------------------------------------- */

/* One transaction record, read and checked. Strings are borrowed from the
 * JSON tree the record came from and live as long as it does. */
struct paytrace_record {
    char transaction_id[PAYTRACE_ID_MAX + 1]; /* integer or string on the wire, as text */
    char original_id[PAYTRACE_ID_MAX + 1];    /* original_transaction_id; "" when absent */
    int refund;                               /* transaction_type REFUND (else SALE) */
    const char *transaction_type;             /* "SALE" | "REFUND" */
    int approved;                             /* success true and an approval response_code */
    long long response_code;                  /* -1 when absent */
    int64_t amount_minor;                     /* >= 0 */
    char currency[4];
    const char *status_message, *approval_code, *approval_message;
    const char *avs_response, *csc_response, *external_transaction_id;
    const char *customer_id, *invoice_id, *description, *email, *masked_card_number;
    const char *payment_method; /* "CC" | "ACH" */
    time_t created;             /* when the transaction happened */
    int voided;                 /* "voided": true */
    time_t voided_at;           /* voided_at, else created */
    json_t *billing_address;    /* object or NULL (borrowed) */
    json_t *line_items;         /* array or NULL (borrowed) */
};

/* Read the record `rec`. Errors name the field as `prefix` + "." + key
 * ("transaction.amount"). `default_currency` applies when the record has no
 * currency. PB_ERR_INVALID, PB_ERR_RANGE (negative or oversized amount),
 * PB_ERR_CURRENCY. */
enum pb_rc pb__paytrace_record_read(json_t *rec, const char *prefix, const char *default_currency,
                                    struct paytrace_record *r, struct pb_err *err);

/* main_event: the event that a record stands for (payment.succeeded,
 * payment.declined, refund.succeeded, refund.declined); its event_id is the
 * transaction_id. void_event: the event of the void of an approved, voided
 * record (a voided SALE is refund.succeeded of the whole amount, kind VOID;
 * a voided REFUND is refund.declined, status VOIDED); its event_id is
 * transaction_id + ":void". PB_ERR_INVALID when the record is not voided or
 * was not approved. *event_out is a new reference; type_out gets the type. */
enum pb_rc pb__paytrace_record_main_event(const struct paytrace_record *r, json_t **event_out,
                                          char *type_out, size_t type_len, struct pb_err *err);
enum pb_rc pb__paytrace_record_void_event(const struct paytrace_record *r, json_t **event_out,
                                          char *type_out, size_t type_len, struct pb_err *err);

/* Append one event (taken, also on failure) to `out`; PB_ERR_TOOBIG when
 * out is full. */
enum pb_rc pb__paytrace_event_append(struct pb_event_list *out, const char *event_id,
                                     const char *type, json_t *event, struct pb_err *err);

/* Strict UTC ISO 8601 "YYYY-MM-DDTHH:MM:SS[.fraction]Z" into *out.
 * PB_ERR_INVALID for anything else. */
enum pb_rc pb__paytrace_parse_instant(const char *text, time_t *out);
/* "YYYY-MM-DDTHH:MM:SSZ" */
void pb__paytrace_format_instant(time_t t, char buf[32]);

/* ---- the slots ------------------------------------------------------------------- */

enum pb_rc pb__paytrace_inbound(struct pb_connection *c, const struct pb_inbound_request *req,
                                struct pb_event_list *out, struct pb_err *err);

enum pb_rc pb__paytrace_poll(struct pb_connection *c, struct pb_call_ctx *ctx, const char *cursor,
                             struct pb_event_list *out, char *next_cursor, size_t next_len,
                             int *more, struct pb_err *err);

enum pb_rc pb__paytrace_refund(struct pb_connection *c, struct pb_call_ctx *ctx,
                               const json_t *request, json_t **result, char *event_id,
                               size_t event_id_len, struct pb_err *err);

#endif
