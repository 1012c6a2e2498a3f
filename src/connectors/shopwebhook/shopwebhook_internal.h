/*
 * connectors/shopwebhook/shopwebhook_internal.h: what the files of the shop
 * status webhook connector share, and nothing else may include.
 *
 *   shopwebhook.c           the type table, settings, max_batch, execute()
 *                           dispatch.
 *   shopwebhook_document.c  the order.status document: its checks and its
 *                           exact bytes on the wire.
 *   shopwebhook_send.c      the signature, the one POST, and the reply turned
 *                           into the item's outcome.
 *
 * The wire contract (docs/connectors.md, section "shopwebhook", is the
 * reference a shop's developer reads):
 *
 *   POST <settings.url>
 *   Content-Type: application/json
 *   <settings.header_name>: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
 *   Idempotency-Key: <the job's idempotency key, the same on every retry>
 *   X-Paybridge-Event: <the step's reference, else the order_reference>
 *
 *   <the document, compact JSON: exactly the bytes that were signed>
 *
 * Threading. Many worker threads call execute() on one connection at once,
 * each with its own HTTP client. `struct shop_state` is written by init()
 * only, so it needs no lock. The signing secret is not copied into it: it is
 * read from c->secrets where it is used (the connector guide's rule).
 */
#ifndef PB_CONNECTORS_SHOPWEBHOOK_INTERNAL_H
#define PB_CONNECTORS_SHOPWEBHOOK_INTERNAL_H

#include <stddef.h>
#include <time.h>

#include "connectors/connector.h"

#define SHOP_STATE_MAGIC 0x53484f50u /* "SHOP" */
#define SHOP_URL_MAX 1024            /* longest settings.url */
#define SHOP_HEADER_NAME_MAX 64      /* longest settings.header_name */
#define SHOP_HEADER_NAME_DEFAULT "X-Paybridge-Signature"
#define SHOP_TIMEOUT_DEFAULT_MS 10000L
#define SHOP_BODY_MAX ((size_t)256 * 1024)      /* largest serialised document */
#define SHOP_RESPONSE_MAX ((size_t)1024 * 1024) /* largest reply read */
#define SHOP_REFERENCE_MAX 255                  /* order_reference, X-Paybridge-Event */
#define SHOP_IDEMPOTENCY_KEY_MAX 255            /* Idempotency-Key value */
#define SHOP_COMMAND "order.status"

struct shop_state {
    unsigned magic;                         /* SHOP_STATE_MAGIC while alive */
    char url[SHOP_URL_MAX];                 /* the shop's status endpoint, http(s) */
    char header_name[SHOP_HEADER_NAME_MAX]; /* the signature header's name */
    long timeout_ms;                        /* per POST, 100..600000 */
};

/* The state of an initialised connection, or NULL (before init, after
 * destroy, or another connector's connection). */
const struct shop_state *pb__shopwebhook_state(const struct pb_connection *c);

/* ---- shopwebhook_document.c ---------------------------------------------------- */

/* The states a shop accepts, NULL-terminated, and the same as one line of
 * text for messages ("paid, processing, ..."). */
extern const char *const pb__shopwebhook_states[];
extern const char pb__shopwebhook_states_text[];

/* Check an order.status document. PB_OK, or PB_ERR_PERMANENT for a state
 * that is not in pb__shopwebhook_states (missing included), PB_ERR_MAPPING
 * for a document of the wrong shape (not an object, no order_reference, an
 * amount that is not exact minor units or whose decimal disagrees). The
 * message names the field. On PB_OK *order_reference points into `document`
 * (borrowed). */
enum pb_rc pb__shopwebhook_check(const json_t *document, const char **order_reference,
                                 struct pb_err *err);

/* The document as compact JSON in insertion order: the exact bytes that are
 * signed and sent. Returns a malloc'd NUL-terminated string the caller frees
 * (*len_out its length), or NULL with err set (PB_ERR_MAPPING above
 * SHOP_BODY_MAX, PB_ERR_NOMEM). */
char *pb__shopwebhook_body(const json_t *document, size_t *len_out, struct pb_err *err);

/* 1 when `s` may go into a header value: 1..max bytes, no control
 * character (CR and LF above all: a header must not smuggle another). */
int pb__shopwebhook_header_safe(const char *s, size_t max);

/* ---- shopwebhook_send.c -------------------------------------------------------- */

/* "t=<t>,v1=<64 lower-case hex>" for `body` under `secret` into out.
 * PB_ERR_INTERNAL only if OpenSSL fails. */
#define SHOP_SIGNATURE_MAX 96
enum pb_rc pb__shopwebhook_sign(const char *secret, long long t, const char *body, size_t len,
                                char out[SHOP_SIGNATURE_MAX]);

/* Deliver one order.status item: check, serialise, sign, POST, trace, and
 * set the item's rc, erp_id, message, retry_after_s and result. */
void pb__shopwebhook_deliver(struct pb_connection *c, struct pb_call_ctx *ctx,
                             struct pb_sink_item *it);

/* Set an item's failure (message PAN-redacted). */
void pb__shopwebhook_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
