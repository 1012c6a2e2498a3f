/*
 * connectors/paytrace/paytrace_refund.c: the refund slot, a refund at
 * PayTrace of (part of) a transaction it processed.
 *
 * The engine's request (connector.h):
 *   {"original_gateway_id": "123456789",         the SALE's transaction_id
 *    "amount": {"minor": 500, "currency": "USD"}, required here, > 0
 *    "reason": "damaged item",                    optional
 *    "reference": "pbref-..."}                    paybridge's idempotency reference
 * becomes
 *   POST /v1/transactions/refund/for_transaction
 *   {"transaction_id": 123456789, "amount": "5.00", "invoice_id": "<reference>",
 *    "description": "<reason>"}
 * The amount is formatted exactly from minor units with the currency's
 * exponent; it must be in settings.currency (PayTrace settles one currency
 * per account). A numeric original id goes out as a JSON integer, as PayTrace
 * issues them.
 *
 * Outcomes.
 *   success true, response_code 106  PB_OK; *result = the canonical refund
 *                                    event (refund.succeeded), *event_id = the
 *                                    new transaction_id, so the webhook and
 *                                    the poller de-duplicate against it
 *   success false (over-refund, unknown or voided transaction, validation)
 *                                    PB_ERR_PERMANENT with PayTrace's words
 *   success true, another code       PB_ERR_PERMANENT: not approved
 *   network, 5xx, 429, an unreadable or id-less reply
 *                                    PB_ERR_TRANSIENT (the look-up below makes
 *                                    the engine's retry safe)
 *
 * Exactly once. PayTrace has no idempotency key. A refund whose reply was
 * lost would be sent twice by a retry, so every refund first looks for
 * itself: export/by_date_range over the last REFUND_LOOKBACK_S (3 days, plus
 * the 14 h time-zone slack of paytrace_poll.c) for an approved REFUND of the
 * same original transaction whose invoice_id is the reference. Found: that
 * refund is the result and nothing is sent. The look-up costs one export
 * call per refund; refunds are rare and money is not. When the look-up
 * itself fails, the refund is not sent (the error is returned): a blind
 * second refund is worse than a delayed one.
 *
 * Unverified: that refund/for_transaction keeps invoice_id (PayTrace
 * documents it on sales). Without a reference the look-up is skipped.
 *
 * Threading: the immutable state and the caller's HTTP client; no locks.
 *
 * Rejected: a full refund without an amount. The canonical refund event
 * needs the amount, the reply does not carry it, and the engine always knows
 * what it is refunding; pb_paytrace_refund() (paytrace.h) still allows it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "paytrace_internal.h"

#define REFUND_LOOKBACK_S (3L * 86400L)
#define DATE_SLACK_S (14L * 3600L)
#define REFERENCE_MAX 50 /* PayTrace's invoice_id is short */

static void us_date(time_t t, char out[16])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 16, "%m/%d/%Y", &tm);
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* The id as PayTrace writes it: a JSON integer when it is one. */
static json_t *id_json(const char *id)
{
    if (all_digits(id) && strlen(id) <= 18)
        return json_integer((json_int_t)strtoll(id, NULL, 10));
    return json_string(id);
}

/* Build the event of `rec` (taken) into result/event_id. */
static enum pb_rc event_of(const struct paytrace_state *st, json_t *rec, const char *what,
                           json_t **result, char *event_id, size_t event_id_len, struct pb_err *err)
{
    struct paytrace_record r;
    char type[64];
    enum pb_rc rc = pb__paytrace_record_read(rec, what, st->currency, &r, err);
    if (!rc && !r.approved) {
        char words[400];
        pb__paytrace_reply_words(rec, words, sizeof words);
        rc = pb_err_set(err, PB_ERR_PERMANENT,
                        "PayTrace did not approve the refund of transaction %s (response_code "
                        "%lld): %s",
                        r.original_id, r.response_code, words);
    }
    if (!rc)
        rc = pb__paytrace_record_main_event(&r, result, type, sizeof type, err);
    if (!rc)
        snprintf(event_id, event_id_len, "%s", r.transaction_id);
    json_decref(rec);
    return rc;
}

/* Look for an approved REFUND of `original` with invoice_id `reference`.
 * PB_OK with *found (a new reference) or NULL; an error when the export failed. */
static enum pb_rc look_up(struct pb_connection *c, struct paytrace_state *st,
                          struct pb_call_ctx *ctx, const char *original, const char *reference,
                          json_t **found, struct pb_err *err)
{
    time_t now = ctx->now ? ctx->now : time(NULL);
    char start[16], end[16], idbuf[PAYTRACE_ID_MAX + 1];
    json_t *request, *reply = NULL, *rec;
    size_t i;
    enum pb_rc rc;

    *found = NULL;
    us_date(now - REFUND_LOOKBACK_S - DATE_SLACK_S, start);
    us_date(now + DATE_SLACK_S, end);
    request = json_pack("{s:s,s:s,s:s}", "start_date", start, "end_date", end, "transaction_type",
                        "REFUND");
    if (!request)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = pb__paytrace_post(c, ctx, st->export_path, "export/by_date_range", request, &reply, err);
    json_decref(request);
    if (rc) {
        pb_err_prefix(err, "looking for an earlier try of this refund before sending it");
        json_decref(reply);
        return rc;
    }
    json_array_foreach(json_object_get(reply, "transactions"), i, rec)
    {
        json_t *orig = json_object_get(rec, "original_transaction_id");
        const char *type = json_string_value(json_object_get(rec, "transaction_type"));
        const char *invoice = json_string_value(json_object_get(rec, "invoice_id"));
        const char *o = json_string_value(orig);
        if (json_is_integer(orig)) {
            snprintf(idbuf, sizeof idbuf, "%lld", (long long)json_integer_value(orig));
            o = idbuf;
        }
        if (!type || strcmp(type, "REFUND") != 0 || !invoice || strcmp(invoice, reference) != 0 ||
            !o || strcmp(o, original) != 0 || !json_is_true(json_object_get(rec, "success")))
            continue;
        if (json_is_true(json_object_get(rec, "voided")))
            continue;
        *found = json_incref(rec);
        break;
    }
    json_decref(reply);
    return PB_OK;
}

enum pb_rc pb__paytrace_refund(struct pb_connection *c, struct pb_call_ctx *ctx,
                               const json_t *request, json_t **result, char *event_id,
                               size_t event_id_len, struct pb_err *err)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    const char *original, *reference, *reason, *currency;
    json_t *amount, *minor, *body = NULL, *reply = NULL, *found = NULL, *rec, *id;
    char decimal[PB_MONEY_DECIMAL_MAX], created[32];
    time_t now;
    enum pb_rc rc;

    if (result)
        *result = NULL;
    if (event_id && event_id_len)
        event_id[0] = '\0';
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
    if (!result || !event_id || !event_id_len)
        return pb_err_set(err, PB_ERR_INTERNAL, "refund: result and event_id are required");
    now = ctx->now ? ctx->now : time(NULL);

    /* the request */
    original = json_string_value(json_object_get(request, "original_gateway_id"));
    if (!original || !original[0] || strlen(original) > PAYTRACE_ID_MAX)
        return pb_err_set(err, PB_ERR_INVALID,
                          "refund: original_gateway_id must be the PayTrace transaction_id of "
                          "the payment (1 to %d characters)",
                          PAYTRACE_ID_MAX);
    amount = json_object_get(request, "amount");
    minor = json_object_get(amount, "minor");
    currency = json_string_value(json_object_get(amount, "currency"));
    if (!json_is_integer(minor))
        return pb_err_set(err, PB_ERR_INVALID,
                          "refund: amount.minor must be an integer number of minor units");
    if (json_integer_value(minor) <= 0)
        return pb_err_set(err, PB_ERR_RANGE, "refund: amount.minor must be greater than zero");
    if (!currency || strcmp(currency, st->currency) != 0)
        return pb_err_set(err, PB_ERR_CURRENCY,
                          "refund: amount.currency must be %s (settings.currency: PayTrace "
                          "refunds in the account's currency), got \"%.8s\"",
                          st->currency, currency ? currency : "");
    if ((rc = pb_money_format_decimal((int64_t)json_integer_value(minor), currency, decimal,
                                      sizeof decimal, err)))
        return rc;
    reference = json_string_value(json_object_get(request, "reference"));
    if (reference && strlen(reference) > REFERENCE_MAX)
        return pb_err_set(err, PB_ERR_INVALID,
                          "refund: reference is longer than %d characters (it is sent as "
                          "PayTrace's invoice_id)",
                          REFERENCE_MAX);
    reason = json_string_value(json_object_get(request, "reason"));

    /* 1. an earlier try that went through? */
    if (reference && reference[0]) {
        if ((rc = look_up(c, st, ctx, original, reference, &found, err)))
            return rc;
        if (found)
            return event_of(st, found, "the earlier refund", result, event_id, event_id_len, err);
    }

    /* 2. refund */
    body = json_pack("{s:o,s:s}", "transaction_id", id_json(original), "amount", decimal);
    if (!body ||
        (reference && reference[0] &&
         json_object_set_new(body, "invoice_id", json_string(reference))) ||
        (reason && reason[0] && json_object_set_new(body, "description", json_string(reason)))) {
        json_decref(body);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    rc = pb__paytrace_post(c, ctx, "/v1/transactions/refund/for_transaction",
                           "refund/for_transaction", body, &reply, err);
    json_decref(body);
    if (rc)
        goto out;

    /* 3. the new transaction, as a record, through the same reader as a webhook */
    id = json_object_get(reply, "transaction_id");
    if (!(json_is_integer(id) && json_integer_value(id) > 0) &&
        !(json_is_string(id) && json_string_length(id) > 0)) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "PayTrace refund/for_transaction answered success without a "
                        "transaction_id; the retry will look the refund up by reference");
        goto out;
    }
    pb__paytrace_format_instant(now, created);
    rec = json_pack("{s:O,s:s,s:s,s:s,s:b,s:O?,s:O?,s:O?,s:O?,s:O?,s:O?,s:s,s:o,s:s?,s:s?}",
                    "transaction_id", id, "transaction_type", "REFUND", "amount", decimal,
                    "currency", st->currency, "success", 1, "response_code",
                    json_object_get(reply, "response_code"), "status_message",
                    json_object_get(reply, "status_message"), "approval_code",
                    json_object_get(reply, "approval_code"), "approval_message",
                    json_object_get(reply, "approval_message"), "masked_card_number",
                    json_object_get(reply, "masked_card_number"), "external_transaction_id",
                    json_object_get(reply, "external_transaction_id"), "created", created,
                    "original_transaction_id", id_json(original), "invoice_id",
                    reference && reference[0] ? reference : NULL, "description",
                    reason && reason[0] ? reason : NULL);
    if (!rec) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    rc = event_of(st, rec, "the refund reply", result, event_id, event_id_len, err);
out:
    json_decref(reply);
    return rc;
}
