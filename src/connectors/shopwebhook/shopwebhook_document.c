/*
 * connectors/shopwebhook/shopwebhook_document.c: the order.status document,
 * checked before anything is sent, and its exact bytes on the wire.
 *
 * The document is the flow's mapping output, passed to the shop as is, e.g.
 *
 *   {"order_reference":"ORDER-10023","state":"paid",
 *    "amount":{"minor":1099,"currency":"GBP","decimal":"10.99"},
 *    "gateway":"opayo","gateway_transaction_id":"DB79BA2D-...",
 *    "erp":{"system":"xero","document_id":"..."},"occurred_at":"2026-11-21T19:14:10Z"}
 *
 * What is checked, and how each failure is classified (dead letter at once
 * either way; the class tells the operator where to look):
 *
 *   not a JSON object                      PB_ERR_MAPPING
 *   order_reference: a string of 1..255
 *     bytes without control characters     PB_ERR_MAPPING
 *   state: one of paid, processing,
 *     refunded, partially_refunded, failed PB_ERR_PERMANENT (the shop's
 *                                          protocol has no other state; the
 *                                          message names the value)
 *   amount (optional, null = absent):
 *     {"minor": integer, "currency": ISO
 *     4217, "decimal"?: exactly minor}     PB_ERR_MAPPING
 *
 * The amount rule is there because a shop shows the decimal to its customer
 * and books the minor units: a "decimal" that disagrees with "minor" (a
 * mapping that did arithmetic in jq, in doubles) must not reach it. Other
 * members are the flow's business and go through untouched.
 *
 * The bytes. The body is json_dumps(document, JSON_COMPACT): insertion
 * order, no spaces, UTF-8 as is. These exact bytes are signed and sent, and
 * the shop verifies the signature over the raw bytes it received, so no
 * canonical form has to be agreed: the serialiser is ours alone. The body is
 * capped at SHOP_BODY_MAX (a status is a few hundred bytes; a mapping that
 * copies a whole event into it is a mistake worth a message).
 *
 * Everything here is a pure function of its arguments (no state, no lock).
 *
 * Rejected: serialising with pb_json_dumps_decimal() to turn "decimal" into
 * a JSON number. A shop's JSON parser would then read the amount into a
 * double; the decimal string is exact and minor is an integer, so both stay
 * as the canonical model has them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/money.h"
#include "shopwebhook_internal.h"

const char *const pb__shopwebhook_states[] = {
    "paid", "processing", "refunded", "partially_refunded", "failed", NULL,
};
const char pb__shopwebhook_states_text[] = "paid, processing, refunded, partially_refunded, failed";

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

int pb__shopwebhook_header_safe(const char *s, size_t max)
{
    size_t n = 0;
    if (!s || !*s)
        return 0;
    for (; *s; s++, n++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f || n >= max)
            return 0;
    return 1;
}

static enum pb_rc check_state(const json_t *document, struct pb_err *err)
{
    json_t *v = json_object_get(document, "state");
    const char *s;

    if (!v || json_is_null(v))
        return pb_err_set(err, PB_ERR_PERMANENT, "state: missing (one of %s)",
                          pb__shopwebhook_states_text);
    if (!json_is_string(v))
        return pb_err_set(err, PB_ERR_PERMANENT, "state: must be a string (one of %s), got %s",
                          pb__shopwebhook_states_text, type_name(v));
    s = json_string_value(v);
    for (size_t i = 0; pb__shopwebhook_states[i]; i++)
        if (strcmp(s, pb__shopwebhook_states[i]) == 0 && strlen(s) == json_string_length(v))
            return PB_OK;
    for (size_t i = 0; pb__shopwebhook_states[i]; i++)
        if (strcasecmp(s, pb__shopwebhook_states[i]) == 0)
            return pb_err_set(err, PB_ERR_PERMANENT,
                              "state: \"%.64s\" is not a state the shop accepts (one of %s; "
                              "states are lower case)",
                              s, pb__shopwebhook_states_text);
    return pb_err_set(err, PB_ERR_PERMANENT,
                      "state: \"%.64s\" is not a state the shop accepts (one of %s)", s,
                      pb__shopwebhook_states_text);
}

static enum pb_rc check_amount(const json_t *document, struct pb_err *err)
{
    json_t *amount = json_object_get(document, "amount");
    json_t *minor, *currency, *decimal;
    char expected[PB_MONEY_DECIMAL_MAX];
    const char *code;

    if (!amount || json_is_null(amount))
        return PB_OK;
    if (!json_is_object(amount))
        return pb_err_set(err, PB_ERR_MAPPING,
                          "amount: must be an object {\"minor\",\"currency\",\"decimal\"} "
                          "(the canonical money shape), got %s",
                          type_name(amount));
    minor = json_object_get(amount, "minor");
    currency = json_object_get(amount, "currency");
    decimal = json_object_get(amount, "decimal");
    if (!json_is_integer(minor))
        return pb_err_set(err, PB_ERR_MAPPING,
                          "amount.minor: must be an integer number of minor units, got %s",
                          minor ? type_name(minor) : "nothing");
    if (!json_is_string(currency))
        return pb_err_set(err, PB_ERR_MAPPING, "amount.currency: must be an ISO 4217 code, got %s",
                          currency ? type_name(currency) : "nothing");
    code = json_string_value(currency);
    if (json_string_length(currency) != 3 || !pb_currency_valid(code))
        return pb_err_set(err, PB_ERR_MAPPING, "amount.currency: unknown currency \"%.16s\"", code);
    if (pb_money_format_decimal((int64_t)json_integer_value(minor), code, expected, sizeof expected,
                                NULL) != PB_OK)
        return pb_err_set(err, PB_ERR_MAPPING, "amount.minor: cannot be written in %s", code);
    if (!decimal || json_is_null(decimal))
        return PB_OK;
    if (!json_is_string(decimal))
        return pb_err_set(err, PB_ERR_MAPPING,
                          "amount.decimal: must be a string (\"%s\"), got %s; money never goes "
                          "through a double",
                          expected, type_name(decimal));
    if (strcmp(json_string_value(decimal), expected) != 0)
        return pb_err_set(err, PB_ERR_MAPPING,
                          "amount.decimal: \"%.32s\" disagrees with amount.minor %lld %s, which "
                          "is \"%s\"",
                          json_string_value(decimal), (long long)json_integer_value(minor), code,
                          expected);
    return PB_OK;
}

enum pb_rc pb__shopwebhook_check(const json_t *document, const char **order_reference,
                                 struct pb_err *err)
{
    json_t *ref;
    enum pb_rc rc;

    *order_reference = NULL;
    if (!json_is_object(document))
        return pb_err_set(err, PB_ERR_MAPPING, "the %s document must be a JSON object, got %s",
                          SHOP_COMMAND, document ? type_name(document) : "nothing");
    ref = json_object_get(document, "order_reference");
    if (!json_is_string(ref) || json_string_length(ref) == 0)
        return pb_err_set(err, PB_ERR_MAPPING,
                          "order_reference: required, a non-empty string (the shop's order "
                          "number, e.g. Opayo's vendorTxCode)%s%s",
                          ref ? ", got " : "", ref ? type_name(ref) : "");
    if (strlen(json_string_value(ref)) != json_string_length(ref) ||
        !pb__shopwebhook_header_safe(json_string_value(ref), SHOP_REFERENCE_MAX))
        return pb_err_set(err, PB_ERR_MAPPING,
                          "order_reference: must be at most %d bytes without control "
                          "characters",
                          SHOP_REFERENCE_MAX);
    if ((rc = check_state(document, err)) || (rc = check_amount(document, err)))
        return rc;
    *order_reference = json_string_value(ref);
    return PB_OK;
}

char *pb__shopwebhook_body(const json_t *document, size_t *len_out, struct pb_err *err)
{
    char *body = json_dumps(document, JSON_COMPACT);
    size_t len;

    *len_out = 0;
    if (!body) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory serialising the %s document", SHOP_COMMAND);
        return NULL;
    }
    len = strlen(body);
    if (len > SHOP_BODY_MAX) {
        free(body);
        pb_err_set(err, PB_ERR_MAPPING,
                   "the %s document is %zu bytes as JSON, above the limit of %zu: map only "
                   "the fields the shop needs",
                   SHOP_COMMAND, len, SHOP_BODY_MAX);
        return NULL;
    }
    *len_out = len;
    return body;
}
