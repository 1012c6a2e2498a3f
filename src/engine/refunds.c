/*
 * engine/refunds.c: refund requests and chargebacks (see refunds.h).
 *
 * Validation happens twice on purpose: here, for a clear message before
 * anything is written (the payment exists, the amount parses in its
 * currency), and again inside the store's transaction, where the ceiling is
 * checked against everything committed, so two concurrent requests can never
 * take the refunds past the payment.
 */
#include "engine/refunds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/crypto.h"
#include "core/money.h"

static void iso_now(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The payment as paybridge knows it: {event_id, amount_minor, currency, ..., event}. */
static enum pb_rc find_payment(struct pb_config *cfg, struct pb_store *store, const char *connection,
                               const char *transaction, struct pb_conn_entry **conn, json_t **pay,
                               struct pb_err *err)
{
    json_t *args;
    enum pb_rc rc;
    *conn = pb_config_connection(cfg, connection);
    if (!*conn)
        return pb_err_set(err, PB_ERR_NOTFOUND, "no connection named \"%s\" in %s", connection,
                          cfg->path);
    args = json_pack("{s:s,s:s}", "connection", connection, "gateway_id", transaction);
    rc = pb_store_query(store, "payment.find", args, pay, err);
    json_decref(args);
    return rc;
}

static json_t *money(int64_t minor, const char *currency)
{
    char dec[64];
    if (pb_money_format_decimal(minor, currency, dec, sizeof(dec), NULL))
        dec[0] = '\0';
    return json_pack("{s:I,s:s,s:s}", "minor", (json_int_t)minor, "currency", currency, "decimal", dec);
}

enum pb_rc pb_refund_request(struct pb_config *cfg, struct pb_store *store, const char *connection,
                             const char *transaction, const char *amount, const char *reason,
                             const char *reference, json_t **out, struct pb_err *err)
{
    struct pb_conn_entry *conn;
    json_t *pay = NULL, *ev;
    struct pb_store_op op;
    int64_t minor;
    char ref[48], now[32], *text = NULL;
    const char *currency;
    enum pb_rc rc;

    *out = NULL;
    rc = find_payment(cfg, store, connection, transaction, &conn, &pay, err);
    if (rc)
        return rc;
    if (!conn->conn.type->refund) {
        json_decref(pay);
        return pb_err_set(err, PB_ERR_INVALID, "connection %s (%s) cannot refund at the gateway",
                          connection, conn->conn.type->name);
    }
    currency = json_string_value(json_object_get(pay, "currency"));
    rc = pb_money_parse_decimal(amount, currency, &minor, err);
    if (rc) {
        pb_err_prefix(err, "--amount");
        json_decref(pay);
        return rc;
    }
    if (!reference) {
        unsigned char r[6];
        char hex[13];
        pb_random_bytes(r, sizeof(r));
        pb_hex_encode(r, sizeof(r), hex, sizeof(hex));
        snprintf(ref, sizeof(ref), "RF%s", hex);
        reference = ref;
    } else if (strlen(reference) > 40) {
        json_decref(pay);
        return pb_err_set(err, PB_ERR_INVALID, "--reference must be at most 40 characters");
    }
    iso_now(now);
    ev = json_object();
    json_object_set_new(ev, "type", json_string("refund.requested"));
    json_object_set_new(ev, "occurred_at", json_string(now));
    json_object_set_new(ev, "refund",
                        json_pack("{s:s,s:o,s:s?,s:s}", "original_gateway_id", transaction, "amount",
                                  money(minor, currency), "reason", reason, "reference", reference));
    json_t *orig = json_object_get(pay, "event");
    if (json_object_get(orig, "payment"))
        json_object_set(ev, "payment", json_object_get(orig, "payment"));
    if (json_object_get(orig, "customer"))
        json_object_set(ev, "customer", json_object_get(orig, "customer"));
    json_object_set_new(ev, "source", json_pack("{s:s,s:s,s:s}", "connection", connection, "connector",
                                                conn->conn.type->name, "event_id", reference));
    text = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);

    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_REFUND_REQUEST;
    op.u.refund.connection = conn->conn.name;
    op.u.refund.original_gateway_id = transaction;
    op.u.refund.amount_minor = minor;
    op.u.refund.currency = currency;
    op.u.refund.reason = reason;
    op.u.refund.reference = reference;
    op.u.refund.now_ms = pb_now_ms();
    op.u.refund.event_json = text ? text : "{}";
    op.u.refund.job.flow = "paybridge.refund";
    op.u.refund.job.step = 1;
    op.u.refund.job.step_name = "gateway_refund";
    op.u.refund.job.target = conn->conn.name;
    op.u.refund.job.command = "refund";
    op.u.refund.job.run_at_ms = op.u.refund.now_ms;
    rc = pb_store_run(store, &op);
    if (rc) {
        if (err)
            *err = op.err;
    } else {
        *out = json_pack("{s:I,s:I,s:s,s:I,s:s,s:I,s:b}", "request_id", (json_int_t)op.u.refund.request_id,
                         "event_id", (json_int_t)op.u.refund.event_id, "reference", reference,
                         "amount_minor", (json_int_t)minor, "currency", currency, "refundable_minor",
                         (json_int_t)op.u.refund.refundable_minor, "duplicate", op.u.refund.duplicate);
    }
    free(text);
    json_decref(pay);
    return rc;
}

static enum pb_rc chargeback_event(struct pb_config *cfg, struct pb_store *store,
                                   struct pb_conn_entry *conn, json_t *pay, struct pb_store_op *op,
                                   char **text, json_t **out, struct pb_err *err)
{
    char now[32], gw[256], type[64];
    json_t *ev = json_object(), *orig = json_object_get(pay, "event");
    iso_now(now);
    snprintf(type, sizeof(type), "chargeback.%s", op->u.chargeback.state);
    snprintf(gw, sizeof(gw), "chargeback:%s:%s:%s", op->u.chargeback.original_gateway_id,
             op->u.chargeback.reason_code, op->u.chargeback.state);
    json_object_set_new(ev, "type", json_string(type));
    json_object_set_new(ev, "occurred_at", json_string(now));
    json_object_set_new(ev, "chargeback",
                        json_pack("{s:s,s:o,s:s,s:s?,s:s}", "original_gateway_id",
                                  op->u.chargeback.original_gateway_id, "amount",
                                  money(op->u.chargeback.amount_minor, op->u.chargeback.currency),
                                  "reason_code", op->u.chargeback.reason_code, "deadline",
                                  op->u.chargeback.deadline, "state", op->u.chargeback.state));
    if (json_object_get(orig, "payment"))
        json_object_set(ev, "payment", json_object_get(orig, "payment"));
    if (json_object_get(orig, "customer"))
        json_object_set(ev, "customer", json_object_get(orig, "customer"));
    json_object_set_new(ev, "source", json_pack("{s:s,s:s,s:s}", "connection", conn->conn.name,
                                                "connector", conn->conn.type->name, "event_id", gw));
    *text = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    op->u.chargeback.gateway_event_id = strdup(gw);
    op->u.chargeback.event_type = strdup(type);
    op->u.chargeback.event_json = *text ? *text : "{}";
    pb_route_jobs(cfg, conn, type, op->u.chargeback.jobs, &op->u.chargeback.n_jobs, op->u.chargeback.now_ms);
    enum pb_rc rc = pb_store_run(store, op);
    if (rc) {
        if (err)
            *err = op->err;
    } else {
        *out = json_pack("{s:I,s:I,s:s,s:s}", "chargeback_id", (json_int_t)op->u.chargeback.chargeback_id,
                         "event_id", (json_int_t)op->u.chargeback.event_id, "state",
                         op->u.chargeback.state, "event_type", type);
    }
    free((char *)op->u.chargeback.gateway_event_id);
    free((char *)op->u.chargeback.event_type);
    return rc;
}

static int valid_date(const char *d)
{
    struct tm tm;
    const char *end;
    if (!d || strlen(d) != 10)
        return 0;
    memset(&tm, 0, sizeof(tm));
    end = strptime(d, "%Y-%m-%d", &tm);
    return end && *end == '\0';
}

enum pb_rc pb_chargeback_open(struct pb_config *cfg, struct pb_store *store, const char *connection,
                              const char *transaction, const char *amount, const char *reason_code,
                              const char *deadline, json_t **out, struct pb_err *err)
{
    struct pb_conn_entry *conn;
    json_t *pay = NULL;
    struct pb_store_op op;
    int64_t minor;
    char *text = NULL;
    enum pb_rc rc;
    *out = NULL;
    if (!reason_code || !reason_code[0] || strlen(reason_code) > 32)
        return pb_err_set(err, PB_ERR_INVALID, "--reason must be the scheme's reason code (1-32 characters)");
    if (!valid_date(deadline))
        return pb_err_set(err, PB_ERR_INVALID, "--deadline must be a date YYYY-MM-DD");
    rc = find_payment(cfg, store, connection, transaction, &conn, &pay, err);
    if (rc)
        return rc;
    const char *currency = json_string_value(json_object_get(pay, "currency"));
    rc = pb_money_parse_decimal(amount, currency, &minor, err);
    if (!rc && (minor <= 0 || minor > json_integer_value(json_object_get(pay, "amount_minor"))))
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "a chargeback must be more than zero and at most the payment (%lld minor units of %s)",
                        (long long)json_integer_value(json_object_get(pay, "amount_minor")), currency);
    if (rc) {
        json_decref(pay);
        return rc;
    }
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_CHARGEBACK;
    op.u.chargeback.connection = conn->conn.name;
    op.u.chargeback.original_gateway_id = transaction;
    op.u.chargeback.amount_minor = minor;
    op.u.chargeback.currency = currency;
    op.u.chargeback.reason_code = reason_code;
    op.u.chargeback.deadline = deadline;
    op.u.chargeback.state = "opened";
    op.u.chargeback.now_ms = pb_now_ms();
    rc = chargeback_event(cfg, store, conn, pay, &op, &text, out, err);
    free(text);
    json_decref(pay);
    return rc;
}

enum pb_rc pb_chargeback_update(struct pb_config *cfg, struct pb_store *store, long long id,
                                const char *state, json_t **out, struct pb_err *err)
{
    static const char *const next_of[][3] = {
        /* from                  allowed to */
        {"opened", "evidence_submitted", "won"},
        {"evidence_submitted", "won", "lost"},
    };
    json_t *cb = NULL, *args, *pay = NULL;
    struct pb_conn_entry *conn;
    struct pb_store_op op;
    char *text = NULL;
    const char *from;
    int ok = 0;
    enum pb_rc rc;
    *out = NULL;
    args = json_pack("{s:I}", "id", (json_int_t)id);
    rc = pb_store_query(store, "chargeback.get", args, &cb, err);
    json_decref(args);
    if (rc)
        return rc;
    from = json_string_value(json_object_get(cb, "state"));
    for (size_t i = 0; i < 2; i++)
        if (strcmp(from, next_of[i][0]) == 0 &&
            (strcmp(state, next_of[i][1]) == 0 || strcmp(state, next_of[i][2]) == 0))
            ok = 1;
    if (strcmp(from, "opened") == 0 && strcmp(state, "lost") == 0)
        ok = 1;
    if (!ok) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "chargeback %lld is %s; it can move to %s", id, from,
                        strcmp(from, "opened") == 0 ? "evidence_submitted, won or lost"
                        : strcmp(from, "evidence_submitted") == 0 ? "won or lost"
                                                                   : "nothing (it is closed)");
        json_decref(cb);
        return rc;
    }
    rc = find_payment(cfg, store, json_string_value(json_object_get(cb, "connection")),
                      json_string_value(json_object_get(cb, "original_gateway_id")), &conn, &pay, err);
    if (rc) {
        json_decref(cb);
        return rc;
    }
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_CHARGEBACK;
    op.u.chargeback.id = id;
    op.u.chargeback.connection = conn->conn.name;
    op.u.chargeback.original_gateway_id = json_string_value(json_object_get(cb, "original_gateway_id"));
    op.u.chargeback.amount_minor = json_integer_value(json_object_get(cb, "amount_minor"));
    op.u.chargeback.currency = json_string_value(json_object_get(cb, "currency"));
    op.u.chargeback.reason_code = json_string_value(json_object_get(cb, "reason_code"));
    op.u.chargeback.deadline = json_string_value(json_object_get(cb, "deadline"));
    op.u.chargeback.state = state;
    op.u.chargeback.now_ms = pb_now_ms();
    rc = chargeback_event(cfg, store, conn, pay, &op, &text, out, err);
    free(text);
    json_decref(pay);
    json_decref(cb);
    return rc;
}
