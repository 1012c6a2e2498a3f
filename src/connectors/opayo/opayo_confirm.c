/*
 * connectors/opayo/opayo_confirm.c: ask Opayo whether a notification tells
 * the truth before anything is posted to an ERP.
 *
 * A notification is authenticated by an HMAC, but the HMAC only proves that
 * whoever sent it knew notify_secret. Confirmation closes the remaining gap
 * (a leaked secret, or a sender bug) with the gateway's authoritative record:
 * GET {api_base}/transactions/{transactionId}, HTTP Basic with
 * integration_key:integration_password. The outcome:
 *
 *   2xx, status/amount.totalAmount/currency all equal to the event -> PB_OK
 *   2xx that disagrees on one of them -> PB_ERR_PERMANENT naming the field
 *       and both values (the event must not be posted; a human looks at it)
 *   404 -> PB_ERR_PERMANENT "Opayo does not know transaction X"
 *   network, timeout, 429, 5xx -> PB_ERR_TRANSIENT, as classified by the
 *       HTTP client (the engine retries with backoff)
 *   other 4xx (401: wrong integration key) -> PB_ERR_PERMANENT
 *   2xx whose body is not the retrieve shape -> PB_ERR_TRANSIENT: a proxy or
 *       an outage page is far more likely than Opayo changing its API, and a
 *       retry costs nothing.
 *
 * Every call is appended to ctx->trace with pb_trace_http(), which keeps
 * header values (the Basic credentials) out of the record.
 *
 * With settings.confirm false this is a no-op that returns PB_OK: the type
 * table is constant, so the capability bit stays and the slot decides.
 *
 * Threading: uses only the caller's per-thread HTTP client and the immutable
 * state; no locks.
 *
 * Rejected: correcting the event from the record instead of refusing it. A
 * notification that disagrees with the gateway on money or outcome is a
 * symptom (tampering, or a sender bug) that must be seen, not papered over.
 */
#include <stdio.h>
#include <string.h>

#include "net/trace.h"
#include "opayo_internal.h"

#define CONFIRM_TIMEOUT_MS 15000L

/* Percent-encode everything but RFC 3986 unreserved characters. */
static int url_escape(const char *in, char *out, size_t out_size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        if (o + (plain ? 1 : 3) >= out_size)
            return -1;
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

/* The payment or refund entity of a canonical event. */
static json_t *event_entity(json_t *event)
{
    json_t *e = json_object_get(event, "payment");
    return json_is_object(e) ? e : json_object_get(event, "refund");
}

static enum pb_rc compare(json_t *record, const char *id, const char *status, json_int_t minor,
                          const char *currency, struct pb_err *err)
{
    json_t *amount = json_object_get(record, "amount");
    json_t *total = json_object_get(amount, "totalAmount");
    const char *r_status = json_string_value(json_object_get(record, "status"));
    const char *r_currency = json_string_value(json_object_get(record, "currency"));

    if (!r_status || !r_currency || !json_is_integer(total))
        return pb_err_set(err, PB_ERR_TRANSIENT,
                          "Opayo's record of transaction %s lacks status, currency or an "
                          "integer amount.totalAmount; will retry",
                          id);
    if (strcmp(r_status, status) != 0)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "Opayo disagrees with the notification for transaction %s: status is "
                          "\"%.32s\" at Opayo but \"%.32s\" in the event",
                          id, r_status, status);
    if (json_integer_value(total) != minor)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "Opayo disagrees with the notification for transaction %s: "
                          "amount.totalAmount is %lld at Opayo but %lld in the event",
                          id, (long long)json_integer_value(total), (long long)minor);
    if (strcmp(r_currency, currency) != 0)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "Opayo disagrees with the notification for transaction %s: currency "
                          "is \"%.8s\" at Opayo but \"%.8s\" in the event",
                          id, r_currency, currency);
    return PB_OK;
}

enum pb_rc pb__opayo_confirm(struct pb_connection *c, struct pb_call_ctx *ctx, json_t *event,
                             struct pb_err *err)
{
    const struct opayo_state *st = pb__opayo_state(c);
    json_t *entity, *amount, *record = NULL;
    const char *id, *status, *currency;
    char escaped[3 * OPAYO_TRANSACTION_ID_MAX + 1];
    char url[OPAYO_API_BASE_MAX + sizeof escaped + 32];
    struct pb_http_call call;
    json_int_t minor;
    json_error_t jerr;
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "opayo connection used before init");
    if (!st->confirm)
        return PB_OK;
    if (!ctx || !ctx->http)
        return pb_err_set(err, PB_ERR_INTERNAL, "confirm needs an HTTP client");

    entity = event_entity(event);
    amount = json_object_get(entity, "amount");
    id = json_string_value(json_object_get(entity, "gateway_id"));
    status = json_string_value(json_object_get(entity, "status"));
    currency = json_string_value(json_object_get(amount, "currency"));
    if (!id || !status || !currency || !json_is_integer(json_object_get(amount, "minor")))
        return pb_err_set(err, PB_ERR_INVALID,
                          "event is not an opayo payment or refund event (needs gateway_id, "
                          "status and amount)");
    minor = json_integer_value(json_object_get(amount, "minor"));
    if (strlen(id) > OPAYO_TRANSACTION_ID_MAX || url_escape(id, escaped, sizeof escaped))
        return pb_err_set(err, PB_ERR_INVALID, "gateway_id is longer than %d characters",
                          OPAYO_TRANSACTION_ID_MAX);
    snprintf(url, sizeof url, "%s/transactions/%s", st->api_base, escaped);

    memset(&call, 0, sizeof call);
    call.method = "GET";
    call.url = url;
    call.headers[0] = "Accept: application/json";
    call.timeout_ms = CONFIRM_TIMEOUT_MS;
    call.basic_user = pb_connection_secret(c, "integration_key");
    call.basic_password = pb_connection_secret(c, "integration_password");
    rc = pb_http_perform(ctx->http, &call, err);
    pb_trace_http(ctx->trace, &call, rc, err);
    if (rc && call.retry_after_s >= 0)
        ctx->retry_after_s = call.retry_after_s;

    if (call.status == 404) {
        rc = pb_err_set(err, PB_ERR_PERMANENT, "Opayo does not know transaction %s (GET %s: 404)",
                        id, url);
        goto out;
    }
    if (rc) {
        pb_err_prefix(err, "confirming transaction %s with Opayo", id);
        goto out;
    }
    record = json_loadb(call.response ? call.response : "", call.response_len, 0, &jerr);
    if (!json_is_object(record)) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "confirming transaction %s: Opayo's reply (HTTP %ld) is not a JSON "
                        "object; will retry",
                        id, call.status);
        goto out;
    }
    rc = compare(record, id, status, minor, currency, err);
out:
    json_decref(record);
    pb_http_call_reset(&call);
    return rc;
}
