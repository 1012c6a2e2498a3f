/*
 * connectors/paytrace/paytrace_inbound.c: the receiving side of the signed
 * PayTrace transaction webhook, turned into one canonical event.
 *
 * PayTrace's API v1 has no documented transaction webhook, so paybridge
 * defines this one (the sandbox sends it; docs/connectors.md, section
 * "paytrace", is the reference for a relay in front of a live account):
 *
 *   POST /hooks/<connection>
 *   Content-Type: application/json
 *   X-PayTrace-Signature: <lower-case hex HMAC-SHA256(secrets.webhook_secret, raw body)>
 *
 *   {"event_id":   "<unique id of this message, 1..128 chars; informative>",
 *    "event_type": "transaction.sale" | "transaction.refund" | "transaction.void"
 *                  | "transaction.declined",
 *    "created_at": "<UTC ISO 8601, e.g. 2026-11-21T19:14:10Z: when it was sent>",
 *    "transaction": { the export record, see paytrace_record.c }}
 *
 * event_type must agree with the record: transaction.sale is an approved
 * SALE, transaction.refund an approved REFUND, transaction.declined a record
 * that was not approved, transaction.void an approved record with
 * "voided": true. A disagreement is refused (PB_ERR_INVALID): it is a sender
 * bug, and guessing which half is right could post money that did not move.
 *
 * The order of the checks is the contract (docs/connectors.md):
 *   1. PAN guard on the raw bytes (pb_pan_scan_payload), before anything
 *      else, so a card number never reaches a parser, a message or the store.
 *   2. Signature over the raw bytes as received, compared in constant time.
 *   3. JSON parse, duplicate keys refused (two "amount" members could make the
 *      signed text mean two things to two parsers); a number too large for
 *      jansson is PB_ERR_RANGE.
 *   4. Replay window: created_at within +/- settings.signature_window_s of
 *      req->now (PB_ERR_AUTH), so a captured body cannot be replayed later.
 *   5. Field validation, messages naming the field (paytrace_record.c).
 *   6. One event. event_id = the record's transaction_id (the void of it:
 *      "<transaction_id>:void"), never the message's event_id, so that a
 *      resend, a second message, or the poller reading the same transaction
 *      all de-duplicate in the inbox.
 *
 * Threading: a pure function of its inputs and the immutable state.
 *
 * Rejected: de-duplicating on the message's event_id (the poller has no such
 * id, so a transaction seen by both paths would be posted twice); accepting
 * an unsigned body from a trusted network (the HMAC is the only thing that
 * ties a body to whoever holds the secret).
 */
#include <stdio.h>
#include <string.h>

#include "core/crypto.h"
#include "core/pan.h"
#include "paytrace_internal.h"

#define SIGNATURE_HEX_LEN (2 * PB_SHA256_LEN)

static const char *const event_types[] = {"transaction.sale", "transaction.refund",
                                          "transaction.void", "transaction.declined", NULL};

static enum pb_rc check_signature(const struct pb_connection *c,
                                  const struct pb_inbound_request *req, struct pb_err *err)
{
    const char *secret = pb_connection_secret(c, "webhook_secret");
    const char *hdr = req->header ? req->header(req->header_ctx, PAYTRACE_SIGNATURE_HEADER) : NULL;
    unsigned char want[PB_SHA256_LEN], got[PB_SHA256_LEN];
    size_t hdr_len, got_len = 0;
    enum pb_rc rc;

    if (!hdr || !hdr[0])
        return pb_err_set(err, PB_ERR_AUTH, "missing " PAYTRACE_SIGNATURE_HEADER " header");
    if (!secret || !secret[0])
        return pb_err_set(err, PB_ERR_CONFIG, "secrets.webhook_secret: not set");
    hdr_len = strlen(hdr);
    while (hdr_len > 0 && (hdr[hdr_len - 1] == ' ' || hdr[hdr_len - 1] == '\t'))
        hdr_len--;
    while (hdr_len > 0 && (*hdr == ' ' || *hdr == '\t')) {
        hdr++;
        hdr_len--;
    }
    if (hdr_len != SIGNATURE_HEX_LEN ||
        pb_hex_decode(hdr, hdr_len, got, sizeof got, &got_len, NULL) != PB_OK ||
        got_len != PB_SHA256_LEN)
        return pb_err_set(err, PB_ERR_AUTH,
                          PAYTRACE_SIGNATURE_HEADER " signature does not match: expected 64 hex "
                                                    "digits of HMAC-SHA256");
    rc = pb_hmac_sha256(secret, strlen(secret), req->body, req->body_len, want);
    if (rc)
        return pb_err_set(err, rc, "cannot compute HMAC-SHA256");
    if (!pb_ct_equal(want, got, PB_SHA256_LEN))
        return pb_err_set(err, PB_ERR_AUTH,
                          PAYTRACE_SIGNATURE_HEADER " signature does not match the body (check "
                                                    "secrets.webhook_secret)");
    return PB_OK;
}

static enum pb_rc parse_body(const struct pb_inbound_request *req, json_t **out, struct pb_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    *out = NULL;
    if (!root) {
        if (json_error_code(&jerr) == json_error_numeric_overflow)
            return pb_err_set(err, PB_ERR_RANGE,
                              "a number in the body is out of range (line %d, column %d)",
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

static enum pb_rc top_string(json_t *root, const char *key, size_t max, const char **out,
                             struct pb_err *err)
{
    json_t *v = json_object_get(root, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s is missing", key);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s must be a string of 1 to %zu characters", key,
                          max);
    *out = json_string_value(v);
    return PB_OK;
}

static enum pb_rc check_window(const struct paytrace_state *st, json_t *root, time_t now,
                               struct pb_err *err)
{
    const char *created;
    time_t t;
    long long skew;
    char now_text[32];
    enum pb_rc rc = top_string(root, "created_at", 64, &created, err);
    if (rc)
        return rc;
    if (pb__paytrace_parse_instant(created, &t))
        return pb_err_set(err, PB_ERR_INVALID,
                          "created_at must be a UTC ISO 8601 time such as "
                          "\"2026-11-21T19:14:10Z\", got \"%.40s\"",
                          created);
    skew = (long long)t - (long long)now;
    if (skew > st->window_s || skew < -st->window_s) {
        pb__paytrace_format_instant(now, now_text);
        return pb_err_set(err, PB_ERR_AUTH,
                          "created_at %s is outside the replay window of +/-%ld s around now "
                          "(%s): a stale or replayed webhook, or a clock out of sync",
                          created, st->window_s, now_text);
    }
    return PB_OK;
}

/* event_type must say what the record says. */
static enum pb_rc check_agreement(const char *event_type, const struct paytrace_record *r,
                                  struct pb_err *err)
{
    const char *want = NULL;
    if (strcmp(event_type, "transaction.sale") == 0 && (r->refund || !r->approved))
        want = "an approved SALE";
    else if (strcmp(event_type, "transaction.refund") == 0 && (!r->refund || !r->approved))
        want = "an approved REFUND";
    else if (strcmp(event_type, "transaction.declined") == 0 && r->approved)
        want = "a transaction that was not approved (success false or a response_code other "
               "than 101/106/120)";
    else if (strcmp(event_type, "transaction.void") == 0 && (!r->voided || !r->approved))
        want = "an approved transaction with \"voided\": true";
    if (want)
        return pb_err_set(err, PB_ERR_INVALID,
                          "event_type %s needs %s, but transaction %s is a%s %s%s", event_type,
                          want, r->transaction_id, r->approved ? "n approved" : " declined",
                          r->transaction_type, r->voided ? " (voided)" : "");
    return PB_OK;
}

enum pb_rc pb__paytrace_inbound(struct pb_connection *c, const struct pb_inbound_request *req,
                                struct pb_event_list *out, struct pb_err *err)
{
    const struct paytrace_state *st = pb__paytrace_state(c);
    json_t *root = NULL, *tx, *event = NULL;
    const char *event_type, *message_id;
    struct paytrace_record r;
    char type[64], event_id[PAYTRACE_ID_MAX + sizeof PAYTRACE_VOID_SUFFIX];
    size_t pan_at = 0, i;
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
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
    if ((rc = check_signature(c, req, err)))
        return rc;
    /* 3. parse */
    if ((rc = parse_body(req, &root, err)))
        return rc;
    /* 4. replay window */
    if ((rc = check_window(st, root, req->now, err)))
        goto out;
    /* 5. validate */
    if ((rc = top_string(root, "event_id", 128, &message_id, err)) ||
        (rc = top_string(root, "event_type", 64, &event_type, err)))
        goto out;
    for (i = 0; event_types[i] && strcmp(event_types[i], event_type) != 0; i++)
        ;
    if (!event_types[i]) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "event_type must be transaction.sale, transaction.refund, "
                        "transaction.void or transaction.declined, got \"%.64s\"",
                        event_type);
        goto out;
    }
    tx = json_object_get(root, "transaction");
    if (!tx || json_is_null(tx)) {
        rc = pb_err_set(err, PB_ERR_INVALID, "transaction is missing");
        goto out;
    }
    if ((rc = pb__paytrace_record_read(tx, "transaction", st->currency, &r, err)) ||
        (rc = check_agreement(event_type, &r, err)))
        goto out;
    /* 6. one canonical event */
    if (strcmp(event_type, "transaction.void") == 0) {
        rc = pb__paytrace_record_void_event(&r, &event, type, sizeof type, err);
        snprintf(event_id, sizeof event_id, "%s" PAYTRACE_VOID_SUFFIX, r.transaction_id);
    } else {
        rc = pb__paytrace_record_main_event(&r, &event, type, sizeof type, err);
        snprintf(event_id, sizeof event_id, "%s", r.transaction_id);
    }
    if (!rc)
        rc = pb__paytrace_event_append(out, event_id, type, event, err);
out:
    json_decref(root);
    return rc;
}
