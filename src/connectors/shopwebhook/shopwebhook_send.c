/*
 * connectors/shopwebhook/shopwebhook_send.c: one order.status POST to the
 * shop, signed, and the shop's reply turned into the item's outcome.
 *
 * The signature. The header (settings.header_name, default
 * X-Paybridge-Signature) is
 *
 *     t=<unix seconds>,v1=<lower-case hex HMAC-SHA256(signing_secret, "<t>.<body>")>
 *
 * where <body> is the exact bytes sent. The MAC covers the timestamp, so the
 * shop can refuse a request whose t is further than its tolerance (300 s is
 * usual) from its clock: a captured request replayed later fails, and one
 * replayed within the window is the same status with the same
 * Idempotency-Key, which the shop drops. Only the HMAC would not stop a
 * replay; only the timestamp (unsigned) could be rewritten. The "v1" label
 * lets a later scheme be added beside it, and a shop should accept the
 * request when any v1 in the header matches (so that a secret can be rotated
 * by sending two).
 *
 * Each attempt signs anew with its own t (ctx->now). A retry after backoff,
 * minutes or hours later, must not arrive stale; the Idempotency-Key, not the
 * timestamp, is what says "the same status again". It is the item's
 * idempotency_key, the same on every try of the job, so the shop can drop a
 * redelivery after a lost reply. Shops have no standard query API, so there
 * is no look-up by reference on attempt > 1 (the connector guide's rule for
 * ERPs): the key is the whole of the exactly-once promise, and a receiving
 * shop MUST de-duplicate on it (docs/connectors.md says so to its authors).
 *
 * Outcomes:
 *   2xx                        PB_OK; erp_id = the reply's "id" when it gives
 *                              a usable one, else the idempotency key;
 *                              result = the reply when it is a JSON object
 *   3xx                        PB_ERR_PERMANENT: redirects are not followed,
 *                              a signed status goes only to settings.url
 *   408, 425, 429, 5xx,
 *   network, timeout           PB_ERR_TRANSIENT, retry_after_s from Retry-After
 *   a reply above 1 MiB        PB_ERR_TRANSIENT (unreadable after a write; the
 *                              key makes the retry safe)
 *   other 4xx                  PB_ERR_PERMANENT with the shop's words (401 and
 *                              403 add what to check: secret and clock)
 *
 * Every POST is appended to ctx->trace with pb_trace_http(): header values
 * (the signature among them) are never recorded there, and the body holds no
 * secret. Text from the shop that ends up in a message is PAN-redacted.
 *
 * Ownership: the body is malloc'd here and freed before return; the call's
 * outputs are freed with pb_http_call_reset(). The secret is borrowed from
 * c->secrets for the HMAC only.
 *
 * Rejected: retrying inside the connector (the engine's retry policy owns
 * backoff and Retry-After), and treating 401 as transient as the Xero
 * connector does for OAuth: here a 401 is the shop refusing our signature,
 * which no retry with the same secret repairs; the dead letter says what to
 * check, and its replay signs again with the corrected secret and a fresh t.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/crypto.h"
#include "core/pan.h"
#include "net/trace.h"
#include "shopwebhook_internal.h"

void pb__shopwebhook_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                               const char *fmt, ...)
{
    va_list ap;
    it->rc = rc;
    it->erp_id[0] = '\0';
    va_start(ap, fmt);
    vsnprintf(it->message, sizeof it->message, fmt, ap);
    va_end(ap);
    pb_pan_redact(it->message, strlen(it->message));
    it->retry_after_s = retry_after_s;
}

enum pb_rc pb__shopwebhook_sign(const char *secret, long long t, const char *body, size_t len,
                                char out[SHOP_SIGNATURE_MAX])
{
    unsigned char mac[PB_SHA256_LEN];
    char hex[2 * PB_SHA256_LEN + 1], prefix[32];
    int prefix_len = snprintf(prefix, sizeof prefix, "%lld.", t);
    char *msg;
    enum pb_rc rc;

    out[0] = '\0';
    if (prefix_len <= 0 || (size_t)prefix_len >= sizeof prefix)
        return PB_ERR_INTERNAL;
    msg = malloc((size_t)prefix_len + len + 1);
    if (!msg)
        return PB_ERR_NOMEM;
    memcpy(msg, prefix, (size_t)prefix_len);
    if (len)
        memcpy(msg + prefix_len, body, len);
    rc = pb_hmac_sha256(secret, strlen(secret), msg, (size_t)prefix_len + len, mac);
    free(msg);
    if (rc == PB_OK)
        rc = pb_hex_encode(mac, sizeof mac, hex, sizeof hex);
    if (rc == PB_OK)
        snprintf(out, SHOP_SIGNATURE_MAX, "t=%lld,v1=%s", t, hex);
    return rc;
}

/* Copy at most len-1 bytes of s into out with control characters as spaces
 * and surrounding blanks trimmed. */
static void one_line(const char *s, size_t n, char *out, size_t len)
{
    size_t w = 0;
    while (n && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
        s++, n--;
    for (size_t i = 0; i < n && w + 1 < len; i++)
        out[w++] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? ' ' : s[i];
    while (w && out[w - 1] == ' ')
        w--;
    out[w] = '\0';
}

/* The shop's own words about a refusal: a JSON error's message (the common
 * shapes {"error":{"code","message"}}, {"error":"..."}, {"message"},
 * {"detail"}, {"title"}, {"reason"}), else the start of a text body. */
static void shop_words(const struct pb_http_call *call, char *out, size_t len)
{
    json_t *root = NULL, *error;
    const char *code = NULL, *msg = NULL;
    static const char *const keys[] = {"message", "detail", "title", "reason", "description", NULL};

    out[0] = '\0';
    if (!call->response || !call->response_len)
        return;
    root = json_loadb(call->response, call->response_len, 0, NULL);
    if (json_is_object(root)) {
        error = json_object_get(root, "error");
        if (json_is_object(error)) {
            code = json_string_value(json_object_get(error, "code"));
            msg = json_string_value(json_object_get(error, "message"));
        } else if (json_is_string(error)) {
            msg = json_string_value(error);
        }
        for (size_t i = 0; !msg && keys[i]; i++)
            msg = json_string_value(json_object_get(root, keys[i]));
    }
    if (msg) {
        char line[400];
        one_line(msg, strlen(msg), line, sizeof line);
        snprintf(out, len, "%s%s%s", code ? code : "", code ? ": " : "", line);
    } else if (!json_is_object(root)) {
        one_line(call->response, call->response_len < 200 ? call->response_len : 200, out, len);
    }
    json_decref(root);
    pb_pan_redact(out, strlen(out));
}

static void apply_success(struct pb_sink_item *it, struct pb_http_call *call)
{
    json_t *reply = NULL, *id, *duplicate;

    if (call->response && call->response_len)
        reply = json_loadb(call->response, call->response_len, 0, NULL);
    if (!json_is_object(reply)) {
        json_decref(reply);
        reply = NULL;
    }
    id = json_object_get(reply, "id");
    it->rc = PB_OK;
    it->retry_after_s = -1;
    it->message[0] = '\0';
    if (json_is_string(id) && strlen(json_string_value(id)) == json_string_length(id) &&
        pb__shopwebhook_header_safe(json_string_value(id), sizeof it->erp_id - 1))
        snprintf(it->erp_id, sizeof it->erp_id, "%s", json_string_value(id));
    else /* cut to 127 bytes in the rare case the engine's key is longer */
        snprintf(it->erp_id, sizeof it->erp_id, "%s", it->idempotency_key);
    duplicate = json_object_get(reply, "duplicate");
    if (json_is_true(duplicate))
        snprintf(it->message, sizeof it->message,
                 "the shop already had this status (a redelivery of Idempotency-Key %.200s); "
                 "it was not recorded twice",
                 it->idempotency_key);
    json_decref(it->result);
    it->result = reply;
}

static void apply_reply(struct pb_sink_item *it, struct pb_http_call *call, enum pb_rc rc,
                        const struct pb_err *err, const struct shop_state *st)
{
    char words[420];

    if (rc == PB_OK && call->status >= 200 && call->status < 300) {
        apply_success(it, call);
        return;
    }
    if (rc == PB_OK && call->status >= 300 && call->status < 400) {
        const char *location = pb_http_call_header(call, "Location");
        pb__shopwebhook_item_fail(it, PB_ERR_PERMANENT, -1,
                                  "the shop answered HTTP %ld (Location: %.200s): redirects are "
                                  "not followed, a signed status goes only to settings.url; set "
                                  "it to the final URL",
                                  call->status, location ? location : "not given");
        return;
    }
    if (rc == PB_OK) {
        pb__shopwebhook_item_fail(it, PB_ERR_TRANSIENT, call->retry_after_s,
                                  "the shop answered HTTP %ld, which is not an answer to a POST; "
                                  "will retry",
                                  call->status);
        return;
    }
    if (rc == PB_ERR_TOOBIG) {
        pb__shopwebhook_item_fail(it, PB_ERR_TRANSIENT, -1,
                                  "%s; the status may have been received, will retry (the "
                                  "Idempotency-Key lets the shop drop the repeat)",
                                  err->msg);
        return;
    }
    if (rc == PB_ERR_TRANSIENT) {
        if (call->status == 0) {
            pb__shopwebhook_item_fail(it, PB_ERR_TRANSIENT, call->retry_after_s,
                                      "delivering the status to the shop failed: %s; will retry",
                                      err->msg);
            return;
        }
        shop_words(call, words, sizeof words);
        pb__shopwebhook_item_fail(it, PB_ERR_TRANSIENT, call->retry_after_s,
                                  "the shop answered HTTP %ld%s%s%s; will retry%s", call->status,
                                  words[0] ? " (" : "", words, words[0] ? ")" : "",
                                  call->retry_after_s >= 0 ? " after its Retry-After" : "");
        return;
    }
    if (rc == PB_ERR_PERMANENT && call->status >= 400 && call->status < 500) {
        shop_words(call, words, sizeof words);
        pb__shopwebhook_item_fail(
            it, PB_ERR_PERMANENT, -1, "the shop refused the status (HTTP %ld): %s%s%s",
            call->status, words[0] ? words : "(no message)",
            call->status == 401 || call->status == 403
                ? "; check that secrets.signing_secret is the shop's secret and that this "
                  "host's clock is right (the signature's t must be within the shop's "
                  "tolerance), header "
                : "",
            call->status == 401 || call->status == 403 ? st->header_name : "");
        return;
    }
    /* a status outside HTTP, a malformed URL, out of memory: the client's words */
    pb__shopwebhook_item_fail(it, rc, -1, "%s", err->msg[0] ? err->msg : pb_rc_name(rc));
}

void pb__shopwebhook_deliver(struct pb_connection *c, struct pb_call_ctx *ctx,
                             struct pb_sink_item *it)
{
    const struct shop_state *st = pb__shopwebhook_state(c);
    const char *secret = pb_connection_secret(c, "signing_secret");
    const char *order_reference = NULL, *event_reference;
    struct pb_err err = {0};
    struct pb_http_call call;
    char signature[SHOP_SIGNATURE_MAX];
    char signature_header[SHOP_HEADER_NAME_MAX + 2 + SHOP_SIGNATURE_MAX];
    char idempotency_header[sizeof "Idempotency-Key: " + SHOP_IDEMPOTENCY_KEY_MAX];
    char event_header[sizeof "X-Paybridge-Event: " + SHOP_REFERENCE_MAX];
    long long t = ctx->now > 0 ? (long long)ctx->now : (long long)time(NULL);
    char *body;
    size_t body_len;
    enum pb_rc rc;
    int h = 0;

    if (!st || !secret || !secret[0]) {
        pb__shopwebhook_item_fail(it, PB_ERR_CONFIG, -1,
                                  "secrets.signing_secret: required (the connection has none)");
        return;
    }
    if ((rc = pb__shopwebhook_check(it->document, &order_reference, &err))) {
        pb__shopwebhook_item_fail(it, rc, -1, "%s", err.msg);
        return;
    }
    if (!pb__shopwebhook_header_safe(it->idempotency_key, SHOP_IDEMPOTENCY_KEY_MAX)) {
        pb__shopwebhook_item_fail(it, PB_ERR_INTERNAL, -1,
                                  "the job has no usable idempotency key (1 to %d bytes without "
                                  "control characters): the shop could not drop a redelivery, "
                                  "so nothing was sent",
                                  SHOP_IDEMPOTENCY_KEY_MAX);
        return;
    }
    event_reference = it->reference && it->reference[0] ? it->reference : order_reference;
    if (!pb__shopwebhook_header_safe(event_reference, SHOP_REFERENCE_MAX)) {
        pb__shopwebhook_item_fail(it, PB_ERR_MAPPING, -1,
                                  "reference: the step's reference must be at most %d bytes "
                                  "without control characters (it is sent as "
                                  "X-Paybridge-Event)",
                                  SHOP_REFERENCE_MAX);
        return;
    }
    if (!(body = pb__shopwebhook_body(it->document, &body_len, &err))) {
        pb__shopwebhook_item_fail(it, err.rc ? err.rc : PB_ERR_NOMEM, -1, "%s", err.msg);
        return;
    }
    if ((rc = pb__shopwebhook_sign(secret, t, body, body_len, signature))) {
        free(body);
        pb__shopwebhook_item_fail(it, rc, -1, "cannot compute the HMAC-SHA256 signature");
        return;
    }
    snprintf(signature_header, sizeof signature_header, "%s: %s", st->header_name, signature);
    snprintf(idempotency_header, sizeof idempotency_header, "Idempotency-Key: %s",
             it->idempotency_key);
    snprintf(event_header, sizeof event_header, "X-Paybridge-Event: %s", event_reference);

    memset(&call, 0, sizeof call);
    call.method = "POST";
    call.url = st->url;
    call.headers[h++] = "Content-Type: application/json";
    call.headers[h++] = "Accept: application/json";
    call.headers[h++] = signature_header;
    call.headers[h++] = idempotency_header;
    call.headers[h++] = event_header;
    call.headers[h] = NULL;
    call.body = body;
    call.body_len = body_len;
    call.timeout_ms = st->timeout_ms;
    call.limiter = c->limiter;
    call.max_response = SHOP_RESPONSE_MAX;
    rc = pb_http_perform(ctx->http, &call, &err);
    pb_trace_http(ctx->trace, &call, rc, &err);
    apply_reply(it, &call, rc, &err, st);
    pb_http_call_reset(&call);
    free(body);
}
