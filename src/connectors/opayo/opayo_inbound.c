/*
 * connectors/opayo/opayo_inbound.c: the receiving side of Opayo's signed
 * "transaction.completed" notification, turned into one canonical event.
 *
 * The format (defined in sandbox/opayo_notify.c, summarised in
 * docs/connectors.md): a JSON POST whose X-Opayo-Signature header is the
 * lower-case hex HMAC-SHA256 of the raw body under secrets.notify_secret, with
 * {"notificationId","eventType":"transaction.completed","createdAt",
 * "vendorName","transaction":{the Pi retrieve shape plus vendorTxCode,
 * customer fields, billingAddress, referenceTransactionId, fraudScore}}.
 *
 * The order of the checks is the contract, and each has a reason:
 *   1. PAN guard on the raw bytes, before anything else looks at them: a card
 *      number must never reach the parser, an error message or the store.
 *      GUID-shaped tokens (8-4-4-4-12 hex digits, Opayo's transactionId and
 *      notificationId) are blanked in a scratch copy first: their dash-joined
 *      digit groups pass pb_pan_scan()'s Luhn windows for about 1 GUID in 400
 *      (measured on random GUIDs), which would silently drop real payments.
 *      No card is ever written in that 32-digit shape.
 *   2. Signature over the raw bytes as received (not a re-serialisation),
 *      compared in constant time with pb_ct_equal().
 *   3. JSON parse, duplicate keys refused (two "amount" members could make the
 *      signed text mean two things to two parsers).
 *   4. Replay window: the notification's createdAt must be within
 *      ± settings.signature_window_s of req->now, so a captured, validly
 *      signed body cannot be replayed next week.
 *   5. Field validation, with messages that name the field.
 *   6. One event. Its event_id is the transactionId, not the notificationId:
 *      a resend of the same transaction (a duplicate, or a second notification
 *      for it) then de-duplicates in the inbox.
 *
 * Money. amount.totalAmount is an integer of minor units on the wire and stays
 * one: it is read with json_integer_value() (an int64) and never touches a
 * double. A real number (1e20, 10.5) is refused with PB_ERR_RANGE; an integer
 * literal too big for int64 makes jansson's parser fail with
 * json_error_numeric_overflow, which is reported as PB_ERR_RANGE too. The
 * "decimal" text comes from pb_money_format_decimal() with the currency's own
 * exponent (JPY 0, GBP 2, BHD 3).
 *
 * Threading: pure function of its inputs and the immutable state; no locks.
 *
 * Rejected designs.
 *   - De-duplicating on notificationId: a gateway that sends two notifications
 *     for one transaction (a resend with a new id) would post it twice.
 *   - Taking occurred_at from req->now: the gateway's createdAt is when the
 *     money moved; the receive time is already recorded by the inbox.
 *   - Accepting "lenient" input (lower-case currency, numeric statusCode):
 *     the sandbox and the live API send the documented types, so anything else
 *     is a bug or an attack, and guessing would hide it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/money.h"
#include "core/pan.h"
#include "opayo_internal.h"

#define SIGNATURE_HEX_MAX 128       /* a longer header is not a SHA-256 MAC */

static const char *const transaction_types[] = {"Payment", "Deferred", "Repeat", "Refund", NULL};
static const char *const statuses[] = {"Ok",      "NotAuthed", "Rejected", "Malformed",
                                       "Invalid", "Error",     NULL};

static int in_list(const char *s, const char *const *list)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(s, list[i]) == 0)
            return 1;
    return 0;
}

/* ---- time ----------------------------------------------------------------------- */

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

enum pb_rc pb__opayo_parse_instant(const char *t, time_t *out)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, s;
    struct tm tm;
    const char *p;

    if (!t || strlen(t) < 20)
        return PB_ERR_INVALID;
    if (!digits(t, 4, &y) || t[4] != '-' || !digits(t + 5, 2, &mo) || t[7] != '-' ||
        !digits(t + 8, 2, &d) || t[10] != 'T' || !digits(t + 11, 2, &h) || t[13] != ':' ||
        !digits(t + 14, 2, &mi) || t[16] != ':' || !digits(t + 17, 2, &s))
        return PB_ERR_INVALID;
    p = t + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return PB_ERR_INVALID;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (p[0] != 'Z' || p[1] != '\0')
        return PB_ERR_INVALID;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
        s > 60)
        return PB_ERR_INVALID;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return PB_ERR_INVALID;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    *out = timegm(&tm);
    return PB_OK;
}

static void format_instant(time_t t, char buf[32])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- field readers: every message names the field ---------------------------------- */

/* Read an optional (required = 0) or required string member. *out = NULL when
 * absent or null. max_len 0 = no limit. */
static enum pb_rc get_string(json_t *obj, const char *key, const char *path, int required,
                             size_t max_len, const char **out, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return pb_err_set(err, PB_ERR_INVALID, "%s is missing", path);
        return PB_OK;
    }
    if (!json_is_string(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s must be a string", path);
    if (required && json_string_length(v) == 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s must not be empty", path);
    if (max_len && json_string_length(v) > max_len)
        return pb_err_set(err, PB_ERR_INVALID, "%s is longer than %zu characters", path, max_len);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s contains a NUL character", path);
    *out = json_string_value(v);
    return PB_OK;
}

static enum pb_rc get_object(json_t *obj, const char *key, const char *path, int required,
                             json_t **out, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return pb_err_set(err, PB_ERR_INVALID, "%s is missing", path);
        return PB_OK;
    }
    if (!json_is_object(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s must be an object", path);
    *out = v;
    return PB_OK;
}

static int vendor_tx_code_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > OPAYO_VENDOR_TX_CODE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_' || ch == '{' || ch == '}'))
            return 0;
    }
    return 1;
}

/* ---- the steps ---------------------------------------------------------------------- */

static enum pb_rc check_signature(const struct pb_connection *c,
                                  const struct pb_inbound_request *req, struct pb_err *err)
{
    const char *secret = pb_connection_secret(c, "notify_secret");
    const char *hdr = req->header ? req->header(req->header_ctx, OPAYO_SIGNATURE_HEADER) : NULL;
    unsigned char want[PB_SHA256_LEN], got[PB_SHA256_LEN];
    size_t hdr_len, got_len = 0;
    enum pb_rc rc;

    if (!hdr || !hdr[0])
        return pb_err_set(err, PB_ERR_AUTH, "missing " OPAYO_SIGNATURE_HEADER " header");
    if (!secret || !secret[0])
        return pb_err_set(err, PB_ERR_CONFIG, "secrets.notify_secret: not set");
    hdr_len = strlen(hdr);
    while (hdr_len > 0 && (hdr[hdr_len - 1] == ' ' || hdr[hdr_len - 1] == '\t'))
        hdr_len--;
    while (hdr_len > 0 && (*hdr == ' ' || *hdr == '\t')) {
        hdr++;
        hdr_len--;
    }
    if (hdr_len != 2 * PB_SHA256_LEN || hdr_len > SIGNATURE_HEX_MAX ||
        pb_hex_decode(hdr, hdr_len, got, sizeof got, &got_len, NULL) != PB_OK ||
        got_len != PB_SHA256_LEN)
        return pb_err_set(err, PB_ERR_AUTH,
                          OPAYO_SIGNATURE_HEADER " signature does not match: expected 64 hex "
                                                 "digits of HMAC-SHA256");
    rc = pb_hmac_sha256(secret, strlen(secret), req->body, req->body_len, want);
    if (rc)
        return pb_err_set(err, rc, "cannot compute HMAC-SHA256");
    if (!pb_ct_equal(want, got, PB_SHA256_LEN))
        return pb_err_set(err, PB_ERR_AUTH,
                          OPAYO_SIGNATURE_HEADER " signature does not match the body (check "
                                                 "secrets.notify_secret)");
    return PB_OK;
}

static enum pb_rc parse_body(const struct pb_inbound_request *req, json_t **out,
                             struct pb_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    *out = NULL;
    if (!root) {
        if (json_error_code(&jerr) == json_error_numeric_overflow)
            return pb_err_set(err, PB_ERR_RANGE,
                              "a number in the body does not fit in 64 bits (line %d, column "
                              "%d): amounts must be integers of minor units",
                              jerr.line, jerr.column);
        return pb_err_set(err, PB_ERR_INVALID, "body is not valid JSON: %s (line %d, column %d)",
                          jerr.text, jerr.line, jerr.column);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return pb_err_set(err, PB_ERR_INVALID, "body must be a JSON object");
    }
    *out = root;
    return PB_OK;
}

static enum pb_rc check_window(const struct opayo_state *st, json_t *root, time_t now,
                               struct pb_err *err)
{
    const char *created;
    time_t t;
    long long skew;
    char now_text[32];
    enum pb_rc rc = get_string(root, "createdAt", "createdAt", 1, 64, &created, err);
    if (rc)
        return rc;
    if (pb__opayo_parse_instant(created, &t))
        return pb_err_set(err, PB_ERR_INVALID,
                          "createdAt must be a UTC ISO 8601 time such as "
                          "\"2024-05-01T10:00:00Z\", got \"%.40s\"",
                          created);
    skew = (long long)t - (long long)now;
    if (skew > st->window_s || skew < -st->window_s) {
        format_instant(now, now_text);
        return pb_err_set(err, PB_ERR_AUTH,
                          "createdAt %s is outside the replay window of +/-%ld s around now "
                          "(%s): a stale or replayed notification, or a clock out of sync",
                          created, st->window_s, now_text);
    }
    return PB_OK;
}

/* Everything read from the transaction, borrowed from the parsed body. */
struct opayo_tx {
    const char *transaction_id, *transaction_type, *status, *status_code, *status_detail;
    const char *currency, *vendor_tx_code, *description, *auth_code, *retrieval_reference;
    const char *first_name, *last_name, *email, *reference_transaction_id, *created_at;
    const char *card_type, *last4, *expiry;
    int64_t total_minor;
    json_t *fraud_score;           /* integer or NULL */
    json_t *address;               /* object or NULL */
};

static enum pb_rc read_amount(json_t *tx, struct opayo_tx *t, struct pb_err *err)
{
    json_t *amount, *total;
    enum pb_rc rc = get_object(tx, "amount", "transaction.amount", 1, &amount, err);
    if (rc)
        return rc;
    total = json_object_get(amount, "totalAmount");
    if (!total || json_is_null(total))
        return pb_err_set(err, PB_ERR_INVALID, "transaction.amount.totalAmount is missing");
    if (json_is_real(total))
        return pb_err_set(err, PB_ERR_RANGE,
                          "amount.totalAmount must be an integer number of minor units that "
                          "fits in 64 bits, got a non-integer or out-of-range number");
    if (!json_is_integer(total))
        return pb_err_set(err, PB_ERR_INVALID,
                          "amount.totalAmount must be an integer number of minor units");
    if (json_integer_value(total) < 0)
        return pb_err_set(err, PB_ERR_RANGE, "amount.totalAmount must not be negative, got %lld",
                          (long long)json_integer_value(total));
    t->total_minor = (int64_t)json_integer_value(total);
    return PB_OK;
}

static enum pb_rc read_card(json_t *tx, struct opayo_tx *t, struct pb_err *err)
{
    json_t *pm, *card;
    enum pb_rc rc = get_object(tx, "paymentMethod", "transaction.paymentMethod", 0, &pm, err);
    if (rc || !pm)
        return rc;
    rc = get_object(pm, "card", "transaction.paymentMethod.card", 0, &card, err);
    if (rc || !card)
        return rc;
    rc = get_string(card, "cardType", "transaction.paymentMethod.card.cardType", 0, 64,
                    &t->card_type, err);
    if (!rc)
        rc = get_string(card, "lastFourDigits", "transaction.paymentMethod.card.lastFourDigits",
                        0, 4, &t->last4, err);
    if (!rc)
        rc = get_string(card, "expiryDate", "transaction.paymentMethod.card.expiryDate", 0, 4,
                        &t->expiry, err);
    return rc;
}

static enum pb_rc read_address(json_t *tx, struct opayo_tx *t, struct pb_err *err)
{
    static const char *const keys[] = {"address1", "address2", "city", "postalCode", "country",
                                       "state", NULL};
    const char *s;
    char path[96];
    enum pb_rc rc = get_object(tx, "billingAddress", "transaction.billingAddress", 0, &t->address,
                               err);
    if (rc || !t->address)
        return rc;
    for (size_t i = 0; keys[i]; i++) {
        snprintf(path, sizeof path, "transaction.billingAddress.%s", keys[i]);
        rc = get_string(t->address, keys[i], path, 0, 256, &s, err);
        if (rc)
            return rc;
    }
    return PB_OK;
}

static enum pb_rc read_transaction(json_t *tx, struct opayo_tx *t, struct pb_err *err)
{
    enum pb_rc rc;
    time_t ignored;

    memset(t, 0, sizeof *t);
    rc = get_string(tx, "transactionId", "transaction.transactionId", 1,
                    OPAYO_TRANSACTION_ID_MAX, &t->transaction_id, err);
    if (rc)
        return rc;
    rc = get_string(tx, "transactionType", "transaction.transactionType", 1, 32,
                    &t->transaction_type, err);
    if (rc)
        return rc;
    if (!in_list(t->transaction_type, transaction_types))
        return pb_err_set(err, PB_ERR_INVALID,
                          "transaction.transactionType must be Payment, Deferred, Repeat or "
                          "Refund, got \"%.32s\"",
                          t->transaction_type);
    rc = get_string(tx, "status", "transaction.status", 1, 32, &t->status, err);
    if (rc)
        return rc;
    if (!in_list(t->status, statuses))
        return pb_err_set(err, PB_ERR_INVALID,
                          "transaction.status must be Ok, NotAuthed, Rejected, Malformed, "
                          "Invalid or Error, got \"%.32s\"",
                          t->status);
    rc = get_string(tx, "statusCode", "transaction.statusCode", 1, 16, &t->status_code, err);
    if (rc)
        return rc;
    rc = read_amount(tx, t, err);
    if (rc)
        return rc;
    rc = get_string(tx, "currency", "transaction.currency", 1, 16, &t->currency, err);
    if (rc)
        return rc;
    if (!pb_currency_valid(t->currency))
        return pb_err_set(err, PB_ERR_CURRENCY, "transaction.currency: unknown currency \"%.16s\"",
                          t->currency);
    rc = get_string(tx, "vendorTxCode", "transaction.vendorTxCode", 1, 0, &t->vendor_tx_code, err);
    if (rc)
        return rc;
    if (!vendor_tx_code_valid(t->vendor_tx_code))
        return pb_err_set(err, PB_ERR_INVALID,
                          "transaction.vendorTxCode must be 1 to %d characters of letters, "
                          "digits and - . _ { } (got %zu characters)",
                          OPAYO_VENDOR_TX_CODE_MAX, strlen(t->vendor_tx_code));

    if ((rc = get_string(tx, "statusDetail", "transaction.statusDetail", 0, 1024,
                         &t->status_detail, err)) ||
        (rc = get_string(tx, "description", "transaction.description", 0, 1024, &t->description,
                         err)) ||
        (rc = get_string(tx, "bankAuthorisationCode", "transaction.bankAuthorisationCode", 0, 64,
                         &t->auth_code, err)) ||
        (rc = get_string(tx, "retrievalReference", "transaction.retrievalReference", 0, 64,
                         &t->retrieval_reference, err)) ||
        (rc = get_string(tx, "customerFirstName", "transaction.customerFirstName", 0, 256,
                         &t->first_name, err)) ||
        (rc = get_string(tx, "customerLastName", "transaction.customerLastName", 0, 256,
                         &t->last_name, err)) ||
        (rc = get_string(tx, "customerEmail", "transaction.customerEmail", 0, 320, &t->email,
                         err)) ||
        (rc = get_string(tx, "referenceTransactionId", "transaction.referenceTransactionId", 0,
                         OPAYO_TRANSACTION_ID_MAX, &t->reference_transaction_id, err)) ||
        (rc = get_string(tx, "createdAt", "transaction.createdAt", 0, 64, &t->created_at, err)))
        return rc;
    if (t->created_at && pb__opayo_parse_instant(t->created_at, &ignored))
        return pb_err_set(err, PB_ERR_INVALID,
                          "transaction.createdAt must be a UTC ISO 8601 time such as "
                          "\"2024-05-01T10:00:00Z\"");
    if (strcmp(t->transaction_type, "Refund") == 0 && !t->reference_transaction_id)
        return pb_err_set(err, PB_ERR_INVALID,
                          "transaction.referenceTransactionId is missing: a Refund must name "
                          "the payment it refunds");
    t->fraud_score = json_object_get(tx, "fraudScore");
    if (json_is_null(t->fraud_score))
        t->fraud_score = NULL;
    if (t->fraud_score && !json_is_integer(t->fraud_score))
        return pb_err_set(err, PB_ERR_INVALID, "transaction.fraudScore must be an integer");
    if ((rc = read_card(tx, t, err)) || (rc = read_address(tx, t, err)))
        return rc;
    return PB_OK;
}

static const char *event_type(const struct opayo_tx *t)
{
    int refund = strcmp(t->transaction_type, "Refund") == 0;
    int ok = strcmp(t->status, "Ok") == 0;
    int declined = strcmp(t->status, "NotAuthed") == 0 || strcmp(t->status, "Rejected") == 0;
    if (refund)
        return ok ? "refund.succeeded" : "refund.declined";
    if (ok)
        return "payment.succeeded";
    return declined ? "payment.declined" : "payment.failed";
}

static const char *addr(const struct opayo_tx *t, const char *key)
{
    json_t *v = t->address ? json_object_get(t->address, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static json_t *build_customer(const struct opayo_tx *t)
{
    char name[520];
    json_t *address = json_null();

    if (t->first_name && t->first_name[0] && t->last_name && t->last_name[0])
        snprintf(name, sizeof name, "%s %s", t->first_name, t->last_name);
    else if (t->first_name && t->first_name[0])
        snprintf(name, sizeof name, "%s", t->first_name);
    else if (t->last_name && t->last_name[0])
        snprintf(name, sizeof name, "%s", t->last_name);
    else
        name[0] = '\0';
    if (t->address)
        address = json_pack("{s:s?,s:s?,s:s?,s:s?,s:s?,s:s?}", "line1", addr(t, "address1"),
                            "line2", addr(t, "address2"), "city", addr(t, "city"), "region",
                            addr(t, "state"), "postal_code", addr(t, "postalCode"), "country",
                            addr(t, "country"));
    if (!address)
        return NULL;
    return json_pack("{s:s?,s:s?,s:s?,s:s?,s:o}", "email", t->email, "first_name", t->first_name,
                     "last_name", t->last_name, "name", name[0] ? name : NULL, "address",
                     address);
}

static json_t *build_entity(const struct opayo_tx *t, const char *decimal)
{
    json_t *card = json_null(), *entity;
    if (t->card_type || t->last4 || t->expiry)
        card = json_pack("{s:s?,s:s?,s:s?}", "brand", t->card_type, "last4", t->last4, "expiry",
                         t->expiry);
    if (!card)
        return NULL;
    entity = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s?,s:{s:I,s:s,s:s},s:s?,s:o,s:s?,s:s?,s:O?}",
                       "gateway_id", t->transaction_id, "reference", t->vendor_tx_code, "kind",
                       t->transaction_type, "status", t->status, "status_code", t->status_code,
                       "status_detail", t->status_detail, "amount", "minor",
                       (json_int_t)t->total_minor, "currency", t->currency, "decimal", decimal,
                       "description", t->description, "card", card, "auth_code", t->auth_code,
                       "retrieval_reference", t->retrieval_reference, "fraud_score",
                       t->fraud_score);
    if (entity && strcmp(t->transaction_type, "Refund") == 0 &&
        json_object_set_new(entity, "original_gateway_id",
                            json_string(t->reference_transaction_id))) {
        json_decref(entity);
        return NULL;
    }
    return entity;
}

static enum pb_rc build_event(const struct opayo_tx *t, const char *occurred_at,
                              const char *type, json_t **out, struct pb_err *err)
{
    char decimal[PB_MONEY_DECIMAL_MAX];
    int refund = strcmp(t->transaction_type, "Refund") == 0;
    int with_customer = strcmp(type, "payment.failed") != 0 && strcmp(type, "refund.declined") != 0;
    json_t *ev, *entity, *customer;
    enum pb_rc rc = pb_money_format_decimal(t->total_minor, t->currency, decimal, sizeof decimal,
                                            err);
    if (rc)
        return rc;
    *out = NULL;
    ev = json_pack("{s:s,s:s}", "type", type, "occurred_at", occurred_at);
    entity = build_entity(t, decimal);
    customer = with_customer ? build_customer(t) : NULL;
    if (!ev || !entity || (with_customer && !customer) ||
        json_object_set_new(ev, refund ? "refund" : "payment", entity) ||
        (with_customer && json_object_set_new(ev, "customer", customer))) {
        json_decref(ev);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory building the event");
    }
    *out = ev;
    return PB_OK;
}

enum pb_rc pb__opayo_inbound(struct pb_connection *c, const struct pb_inbound_request *req,
                             struct pb_event_list *out, struct pb_err *err)
{
    const struct opayo_state *st = pb__opayo_state(c);
    json_t *root = NULL, *tx, *event = NULL;
    const char *event_kind, *vendor, *type;
    char occurred_at[32];
    struct opayo_tx t;
    size_t pan_at = 0;
    time_t when;
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "opayo connection used before init");
    if (!req || !req->body)
        return pb_err_set(err, PB_ERR_INVALID, "empty request body");
    if (out->n >= PB_INBOUND_MAX_EVENTS)
        return pb_err_set(err, PB_ERR_INTERNAL, "event list is full");

    /* 1. never let a card number go any further */
    if (pb_pan_scan_payload(req->body, req->body_len, &pan_at) > 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "the body contains what looks like a card number (at byte %zu); "
                          "paybridge never accepts card numbers",
                          pan_at);
    /* 2. authenticate the raw bytes */
    rc = check_signature(c, req, err);
    if (rc)
        return rc;
    /* 3. parse */
    rc = parse_body(req, &root, err);
    if (rc)
        return rc;
    /* 4. replay window */
    rc = check_window(st, root, req->now, err);
    if (rc)
        goto out;
    /* 5. validate */
    rc = get_string(root, "eventType", "eventType", 1, 64, &event_kind, err);
    if (rc)
        goto out;
    if (strcmp(event_kind, "transaction.completed") != 0) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "eventType \"%.64s\" is not supported (only transaction.completed)",
                        event_kind);
        goto out;
    }
    rc = get_string(root, "vendorName", "vendorName", 0, 256, &vendor, err);
    if (rc)
        goto out;
    if (st->vendor_name[0] && (!vendor || strcmp(vendor, st->vendor_name) != 0)) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "vendorName \"%.64s\" is not this connection's vendor \"%s\" "
                        "(settings.vendor_name)",
                        vendor ? vendor : "", st->vendor_name);
        goto out;
    }
    rc = get_object(root, "transaction", "transaction", 1, &tx, err);
    if (rc)
        goto out;
    rc = read_transaction(tx, &t, err);
    if (rc)
        goto out;
    /* 6. one canonical event (both instants were validated above) */
    when = req->now;
    pb__opayo_parse_instant(t.created_at ? t.created_at
                                         : json_string_value(json_object_get(root, "createdAt")),
                            &when);
    format_instant(when, occurred_at);
    type = event_type(&t);
    rc = build_event(&t, occurred_at, type, &event, err);
    if (rc)
        goto out;
    snprintf(out->ev[out->n].event_id, sizeof out->ev[out->n].event_id, "%s", t.transaction_id);
    snprintf(out->ev[out->n].type, sizeof out->ev[out->n].type, "%s", type);
    out->ev[out->n].event = event;
    out->n++;
out:
    json_decref(root);
    return rc;
}
