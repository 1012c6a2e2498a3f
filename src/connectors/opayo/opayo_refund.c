/*
 * connectors/opayo/opayo_refund.c: refunds initiated by paybridge, through the
 * Pi API: POST {api_base}/transactions {"transactionType":"Refund",
 * "referenceTransactionId", "vendorTxCode", "amount", "description"}.
 *
 * The engine has already checked the refund ceiling in its store; Opayo checks
 * it again (an over-refund is a 422), and its words are kept.
 *
 * Idempotency: the request's `reference` is the refund's vendorTxCode, which
 * Opayo keeps unique. A retry after a lost reply meets "vendorTxCode already
 * used": the refund exists, so this is success without an event of its own
 * (Opayo's notification of that refund transaction brings the
 * refund.succeeded event, with the same id the reply would have given).
 *
 * The result is the canonical refund.succeeded body (the "refund" entity as
 * opayo_inbound.c builds it for a Refund transaction), and the event id is the
 * refund's transactionId, so the webhook for the same refund de-duplicates.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connectors/opayo/opayo_internal.h"
#include "core/money.h"
#include "net/trace.h"

#define REFUND_TIMEOUT_MS 30000

static void iso_now(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Opayo's error words: {"errors":[{"description","property"}]} or {"description"}. */
static void error_words(const json_t *reply, char *out, size_t len)
{
    json_t *errs = json_object_get(reply, "errors"), *e0 = json_array_get(errs, 0);
    const char *d = json_string_value(json_object_get(e0 ? e0 : reply, "description"));
    const char *p = json_string_value(json_object_get(e0, "property"));
    const char *sd = json_string_value(json_object_get(reply, "statusDetail"));
    snprintf(out, len, "%s%s%s%s", d ? d : (sd ? sd : "no error text"), p ? " (" : "", p ? p : "",
             p ? ")" : "");
}

enum pb_rc pb__opayo_refund(struct pb_connection *c, struct pb_call_ctx *ctx, const json_t *request,
                            json_t **result, char *event_id, size_t event_id_len, struct pb_err *err)
{
    const struct opayo_state *st = pb__opayo_state(c);
    const char *orig = json_string_value(json_object_get(request, "original_gateway_id"));
    const char *reference = json_string_value(json_object_get(request, "reference"));
    const char *reason = json_string_value(json_object_get(request, "reason"));
    json_t *amount = json_object_get(request, "amount");
    const char *currency = json_string_value(json_object_get(amount, "currency"));
    json_int_t minor = json_integer_value(json_object_get(amount, "minor"));
    json_t *body = NULL, *reply = NULL;
    char url[OPAYO_API_BASE_MAX + 32], words[512], decimal[PB_MONEY_DECIMAL_MAX], now[32];
    char *text = NULL;
    struct pb_http_call call;
    enum pb_rc rc;

    *result = NULL;
    event_id[0] = '\0';
    if (!st || !st->api_base[0])
        return pb_err_set(err, PB_ERR_CONFIG,
                          "refunds need settings.api_base and the integration key (Pi API)");
    if (!orig || !reference || !currency || !json_is_integer(json_object_get(amount, "minor")) ||
        minor <= 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "a refund needs original_gateway_id, reference and a positive amount");
    if (strlen(reference) > OPAYO_VENDOR_TX_CODE_MAX)
        return pb_err_set(err, PB_ERR_INVALID, "the refund reference is longer than %d characters",
                          OPAYO_VENDOR_TX_CODE_MAX);
    body = json_pack("{s:s,s:s,s:s,s:I,s:s}", "transactionType", "Refund", "referenceTransactionId",
                     orig, "vendorTxCode", reference, "amount", minor, "description",
                     reason && reason[0] ? reason : "Refund");
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    snprintf(url, sizeof url, "%s/transactions", st->api_base);
    memset(&call, 0, sizeof call);
    call.method = "POST";
    call.url = url;
    call.headers[0] = "Content-Type: application/json";
    call.headers[1] = "Accept: application/json";
    call.body = text;
    call.body_len = strlen(text);
    call.timeout_ms = REFUND_TIMEOUT_MS;
    call.basic_user = pb_connection_secret(c, "integration_key");
    call.basic_password = pb_connection_secret(c, "integration_password");
    rc = pb_http_perform(ctx->http, &call, err);
    pb_trace_http(ctx->trace, &call, rc, err);
    if (rc && call.retry_after_s >= 0)
        ctx->retry_after_s = call.retry_after_s;
    reply = call.response ? json_loadb(call.response, call.response_len, 0, NULL) : NULL;
    if (call.status == 422 || call.status == 400 || call.status == 403) {
        error_words(reply, words, sizeof words);
        if (strstr(words, "vendorTxCode") &&
            (strstr(words, "already") || strstr(words, "unique") || strstr(words, "duplicate"))) {
            rc = PB_OK; /* the refund exists: its notification carries the event */
            goto out;
        }
        rc = pb_err_set(err, PB_ERR_PERMANENT, "Opayo refused the refund of %s: %s", orig, words);
        goto out;
    }
    if (rc) {
        pb_err_prefix(err, "refunding %s with Opayo", orig);
        goto out;
    }
    const char *status = json_string_value(json_object_get(reply, "status"));
    const char *id = json_string_value(json_object_get(reply, "transactionId"));
    if (!status || !id) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "Opayo's refund reply (HTTP %ld) has no status or transactionId; will retry",
                        call.status);
        goto out;
    }
    if (strcmp(status, "Ok") != 0) {
        error_words(reply, words, sizeof words);
        rc = pb_err_set(err, PB_ERR_PERMANENT, "Opayo did not refund %s: %s (%s)", orig, status, words);
        goto out;
    }
    if (pb_money_format_decimal(minor, currency, decimal, sizeof decimal, err)) {
        rc = PB_ERR_INVALID;
        goto out;
    }
    iso_now(now);
    *result = json_pack("{s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s,s:s?,s:s?,s:{s:I,s:s,s:s},s:s?}}", "type",
                        "refund.succeeded", "occurred_at", now, "refund", "gateway_id", id,
                        "original_gateway_id", orig, "reference", reference, "kind", "Refund",
                        "status", status, "status_code",
                        json_string_value(json_object_get(reply, "statusCode")), "status_detail",
                        json_string_value(json_object_get(reply, "statusDetail")), "amount", "minor",
                        minor, "currency", currency, "decimal", decimal, "reason", reason);
    if (!*result) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    snprintf(event_id, event_id_len, "%s", id);
out:
    json_decref(reply);
    pb_http_call_reset(&call);
    free(text);
    return rc;
}
