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
 * Parsing. The body is read with core/jdoc.h (yajl into an arena), not
 * jansson: this is the webhook hot path, and the canonical event is written
 * straight out as text with yajl_gen (pb_event_out.json), in the order and
 * with the nulls that the jansson tree it replaced was serialised with.
 *
 * Money. amount.totalAmount is an integer of minor units on the wire and stays
 * one: jdoc keeps an integer literal as an int64 (`is_int`, `i`) and never
 * makes a double of it. A real number (1e20, 10.5) is refused with
 * PB_ERR_RANGE; an integer literal too big for int64 makes the parse fail
 * with PB_ERR_RANGE too. The "decimal" text comes from
 * pb_money_format_decimal() with the currency's own exponent (JPY 0, GBP 2,
 * BHD 3).
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

#include <yajl/yajl_gen.h>

#include "core/crypto.h"
#include "core/jdoc.h"
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
static enum pb_rc get_string(const struct pb_jnode *obj, const char *key, const char *path,
                             int required, size_t max_len, const char **out, struct pb_err *err)
{
    const struct pb_jnode *v = pb_jnode_get(obj, key);
    *out = NULL;
    if (!v || v->type == PB_J_NULL) {
        if (required)
            return pb_err_set(err, PB_ERR_INVALID, "%s is missing", path);
        return PB_OK;
    }
    if (v->type != PB_J_STRING)
        return pb_err_set(err, PB_ERR_INVALID, "%s must be a string", path);
    if (required && v->len == 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s must not be empty", path);
    if (max_len && v->len > max_len)
        return pb_err_set(err, PB_ERR_INVALID, "%s is longer than %zu characters", path, max_len);
    if (strlen(v->str) != v->len)
        return pb_err_set(err, PB_ERR_INVALID, "%s contains a NUL character", path);
    *out = v->str;
    return PB_OK;
}

static enum pb_rc get_object(const struct pb_jnode *obj, const char *key, const char *path,
                             int required, const struct pb_jnode **out, struct pb_err *err)
{
    const struct pb_jnode *v = pb_jnode_get(obj, key);
    *out = NULL;
    if (!v || v->type == PB_J_NULL) {
        if (required)
            return pb_err_set(err, PB_ERR_INVALID, "%s is missing", path);
        return PB_OK;
    }
    if (v->type != PB_J_OBJECT)
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

/* yajl into a jdoc (core/jdoc.h: what jansson with JSON_REJECT_DUPLICATES
 * accepted, in a fifth of the time) */
static enum pb_rc parse_body(const struct pb_inbound_request *req, struct pb_jdoc *doc,
                             struct pb_err *err)
{
    enum pb_rc rc = pb_jdoc_parse(doc, req->body, req->body_len, err);
    if (rc)
        return rc;
    if (doc->root->type != PB_J_OBJECT) {
        pb_jdoc_free(doc);
        return pb_err_set(err, PB_ERR_INVALID, "body must be a JSON object");
    }
    return PB_OK;
}

static enum pb_rc check_window(const struct opayo_state *st, const struct pb_jnode *root,
                               time_t now, struct pb_err *err)
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
    int has_fraud_score;
    int64_t fraud_score;
    const struct pb_jnode *address; /* object or NULL */
};

static enum pb_rc read_amount(const struct pb_jnode *tx, struct opayo_tx *t, struct pb_err *err)
{
    const struct pb_jnode *amount, *total;
    enum pb_rc rc = get_object(tx, "amount", "transaction.amount", 1, &amount, err);
    if (rc)
        return rc;
    total = pb_jnode_get(amount, "totalAmount");
    if (!total || total->type == PB_J_NULL)
        return pb_err_set(err, PB_ERR_INVALID, "transaction.amount.totalAmount is missing");
    if (total->type == PB_J_NUMBER && !total->is_int)
        return pb_err_set(err, PB_ERR_RANGE,
                          "amount.totalAmount must be an integer number of minor units that "
                          "fits in 64 bits, got a non-integer or out-of-range number");
    if (total->type != PB_J_NUMBER)
        return pb_err_set(err, PB_ERR_INVALID,
                          "amount.totalAmount must be an integer number of minor units");
    if (total->i < 0)
        return pb_err_set(err, PB_ERR_RANGE, "amount.totalAmount must not be negative, got %lld",
                          (long long)total->i);
    t->total_minor = total->i;
    return PB_OK;
}

static enum pb_rc read_card(const struct pb_jnode *tx, struct opayo_tx *t, struct pb_err *err)
{
    const struct pb_jnode *pm, *card;
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

static enum pb_rc read_address(const struct pb_jnode *tx, struct opayo_tx *t,
                               struct pb_err *err)
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

static enum pb_rc read_transaction(const struct pb_jnode *tx, struct opayo_tx *t,
                                   struct pb_err *err)
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
    {
        const struct pb_jnode *fraud = pb_jnode_get(tx, "fraudScore");
        if (fraud && fraud->type != PB_J_NULL) {
            if (fraud->type != PB_J_NUMBER || !fraud->is_int)
                return pb_err_set(err, PB_ERR_INVALID, "transaction.fraudScore must be an integer");
            t->has_fraud_score = 1;
            t->fraud_score = fraud->i;
        }
    }
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
    const struct pb_jnode *v = pb_jnode_get(t->address, key);
    return v && v->type == PB_J_STRING ? v->str : NULL;
}

/* ---- the canonical event, written as text ------------------------------------------ */

static void put_key(yajl_gen g, const char *key)
{
    yajl_gen_string(g, (const unsigned char *)key, strlen(key));
}

/* "key": "value", or "key": null */
static void put_str(yajl_gen g, const char *key, const char *value)
{
    put_key(g, key);
    if (value)
        yajl_gen_string(g, (const unsigned char *)value, strlen(value));
    else
        yajl_gen_null(g);
}

static void put_customer(yajl_gen g, const struct opayo_tx *t)
{
    char name[520];
    if (t->first_name && t->first_name[0] && t->last_name && t->last_name[0])
        snprintf(name, sizeof name, "%s %s", t->first_name, t->last_name);
    else if (t->first_name && t->first_name[0])
        snprintf(name, sizeof name, "%s", t->first_name);
    else if (t->last_name && t->last_name[0])
        snprintf(name, sizeof name, "%s", t->last_name);
    else
        name[0] = '\0';
    put_key(g, "customer");
    yajl_gen_map_open(g);
    put_str(g, "email", t->email);
    put_str(g, "first_name", t->first_name);
    put_str(g, "last_name", t->last_name);
    put_str(g, "name", name[0] ? name : NULL);
    put_key(g, "address");
    if (t->address) {
        yajl_gen_map_open(g);
        put_str(g, "line1", addr(t, "address1"));
        put_str(g, "line2", addr(t, "address2"));
        put_str(g, "city", addr(t, "city"));
        put_str(g, "region", addr(t, "state"));
        put_str(g, "postal_code", addr(t, "postalCode"));
        put_str(g, "country", addr(t, "country"));
        yajl_gen_map_close(g);
    } else {
        yajl_gen_null(g);
    }
    yajl_gen_map_close(g);
}

static void put_entity(yajl_gen g, const struct opayo_tx *t, const char *decimal, int refund)
{
    put_key(g, refund ? "refund" : "payment");
    yajl_gen_map_open(g);
    put_str(g, "gateway_id", t->transaction_id);
    put_str(g, "reference", t->vendor_tx_code);
    put_str(g, "kind", t->transaction_type);
    put_str(g, "status", t->status);
    put_str(g, "status_code", t->status_code);
    put_str(g, "status_detail", t->status_detail);
    put_key(g, "amount");
    yajl_gen_map_open(g);
    put_key(g, "minor");
    yajl_gen_integer(g, (long long)t->total_minor);
    put_str(g, "currency", t->currency);
    put_str(g, "decimal", decimal);
    yajl_gen_map_close(g);
    put_str(g, "description", t->description);
    put_key(g, "card");
    if (t->card_type || t->last4 || t->expiry) {
        yajl_gen_map_open(g);
        put_str(g, "brand", t->card_type);
        put_str(g, "last4", t->last4);
        put_str(g, "expiry", t->expiry);
        yajl_gen_map_close(g);
    } else {
        yajl_gen_null(g);
    }
    put_str(g, "auth_code", t->auth_code);
    put_str(g, "retrieval_reference", t->retrieval_reference);
    put_key(g, "fraud_score");
    if (t->has_fraud_score)
        yajl_gen_integer(g, (long long)t->fraud_score);
    else
        yajl_gen_null(g);
    if (refund)
        put_str(g, "original_gateway_id", t->reference_transaction_id);
    yajl_gen_map_close(g);
}

/* The canonical event (docs/canonical-model.md) as compact JSON text, with
 * "type" first and "source" last, in the order the jansson tree of the
 * other connectors is serialised in. yajl_gen escapes the strings (they were
 * checked as UTF-8 by the parser). */
static enum pb_rc write_event(const struct pb_connection *c, const struct opayo_tx *t,
                              const char *occurred_at, const char *type, char **out,
                              struct pb_err *err)
{
    char decimal[PB_MONEY_DECIMAL_MAX];
    int refund = strcmp(t->transaction_type, "Refund") == 0;
    int with_customer = strcmp(type, "payment.failed") != 0 && strcmp(type, "refund.declined") != 0;
    const unsigned char *text;
    size_t len;
    yajl_gen g;
    enum pb_rc rc = pb_money_format_decimal(t->total_minor, t->currency, decimal, sizeof decimal,
                                            err);
    *out = NULL;
    if (rc)
        return rc;
    if (!(g = yajl_gen_alloc(NULL)))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory building the event");
    yajl_gen_map_open(g);
    put_str(g, "type", type);
    put_str(g, "occurred_at", occurred_at);
    put_entity(g, t, decimal, refund);
    if (with_customer)
        put_customer(g, t);
    put_key(g, "source");
    yajl_gen_map_open(g);
    put_str(g, "connection", c->name);
    put_str(g, "connector", c->type->name);
    put_str(g, "event_id", t->transaction_id);
    yajl_gen_map_close(g);
    if (yajl_gen_map_close(g) == yajl_gen_status_ok &&
        yajl_gen_get_buf(g, &text, &len) == yajl_gen_status_ok)
        *out = strndup((const char *)text, len);
    yajl_gen_free(g);
    return *out ? PB_OK : pb_err_set(err, PB_ERR_NOMEM, "out of memory building the event");
}

enum pb_rc pb__opayo_inbound(struct pb_connection *c, const struct pb_inbound_request *req,
                             struct pb_event_list *out, struct pb_err *err)
{
    const struct opayo_state *st = pb__opayo_state(c);
    const struct pb_jnode *root, *tx;
    const char *event_kind, *vendor, *type, *created;
    char occurred_at[32], *text = NULL;
    struct pb_jdoc doc;
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

    /* 1. never let a card number go any further (the engine has looked
     * already when it says so: the same scan, not a second opinion) */
    if (!req->pan_checked && pb_pan_scan_payload(req->body, req->body_len, &pan_at) > 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "the body contains what looks like a card number (at byte %zu); "
                          "paybridge never accepts card numbers",
                          pan_at);
    /* 2. authenticate the raw bytes */
    rc = check_signature(c, req, err);
    if (rc)
        return rc;
    /* 3. parse */
    rc = parse_body(req, &doc, err);
    if (rc)
        return rc;
    root = doc.root;
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
    get_string(root, "createdAt", "createdAt", 0, 64, &created, err);
    pb__opayo_parse_instant(t.created_at ? t.created_at : created, &when);
    format_instant(when, occurred_at);
    type = event_type(&t);
    rc = write_event(c, &t, occurred_at, type, &text, err);
    if (rc)
        goto out;
    memset(&out->ev[out->n], 0, sizeof(out->ev[out->n]));
    snprintf(out->ev[out->n].event_id, sizeof out->ev[out->n].event_id, "%s", t.transaction_id);
    snprintf(out->ev[out->n].type, sizeof out->ev[out->n].type, "%s", type);
    if (strcmp(t.transaction_type, "Refund") == 0)
        snprintf(out->ev[out->n].original_gateway_id, sizeof out->ev[out->n].original_gateway_id,
                 "%s", t.reference_transaction_id);
    out->ev[out->n].json = text;
    out->n++;
out:
    pb_jdoc_free(&doc);
    return rc;
}
