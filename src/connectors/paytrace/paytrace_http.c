/*
 * connectors/paytrace/paytrace_http.c: one call to the PayTrace API v1, the
 * classification of its reply, and the public calls of paytrace.h.
 *
 * Every call is a POST of a JSON object to api_base + path, with
 *   Authorization: Bearer <token>      (paytrace_token.c)
 *   Content-Type: application/json, Accept: application/json
 * and goes through c->limiter. A 401 invalidates the cached token (of the
 * generation used), fetches a new one and sends the request once more; a
 * second 401 is PB_ERR_TRANSIENT with a message saying what to check (the
 * same reasoning as the Xero connector: a revoked API user is an operator's
 * fix, and jobs should wait for it rather than become dead letters).
 *
 * Reply classification. PayTrace answers a JSON object with "success" true
 * or false. A declined sale has success false and a transaction_id (HTTP 200
 * in the sandbox); a validation error has success false and an `errors` map
 * from a code to a list of messages (HTTP 400). Both are PB_ERR_PERMANENT
 * with PayTrace's words: status_message, then "code: message" for each
 * error. Network failures, timeouts, 408/425/429 and 5xx are
 * PB_ERR_TRANSIENT as the HTTP client classifies them. A 2xx that is not a
 * JSON object with a boolean "success" is PB_ERR_TRANSIENT: a proxy's page
 * is likelier than PayTrace changing its API, and for a read a retry is
 * free. (For a write, the callers that matter, refund, look the result up
 * before they try again; see paytrace_refund.c.)
 *
 * Money out. Requests carry amounts as decimal strings. The members `amount`
 * and line_items[].unit_price are normalised on a copy of the request: a
 * money object {"minor","currency"} is formatted exactly with
 * pb_money_format_decimal(), a string is checked with
 * pb_money_parse_decimal(), and a JSON number is refused, so no double ever
 * carries money onto the wire.
 *
 * Traces. Every attempt is appended to ctx->trace with pb_trace_http(),
 * which never records header values and masks secret-looking members and
 * Luhn-valid digit runs. That is not enough for card data: the CSC ("csc")
 * and a bank account number are not PANs. So the body recorded is a copy in
 * which credit_card.number, credit_card.csc, csc and check.account_number
 * are replaced by "***"; the real body is only ever in the HTTP client's
 * hands.
 *
 * Ownership: the request is borrowed and never modified; *reply_out is a new
 * reference for the caller. The bearer header holds the token and is wiped
 * and freed before return.
 *
 * Rejected: retrying 5xx/429 here. The engine's retry policy owns backoff;
 * sleeping in a connector holds a worker and a rate-limit slot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/money.h"
#include "net/trace.h"
#include "paytrace.h"
#include "paytrace_internal.h"

#define REPLY_MAX (16u * 1024u * 1024u) /* an export of a busy month fits */

/* ---- reply words -------------------------------------------------------------------- */

static void append(char *out, size_t len, size_t *o, const char *text)
{
    size_t n = strlen(text);
    if (*o >= len)
        return;
    if (n > len - 1 - *o)
        n = len - 1 - *o;
    memcpy(out + *o, text, n);
    *o += n;
    out[*o] = '\0';
}

void pb__paytrace_reply_words(const json_t *reply, char *out, size_t len)
{
    const char *status = json_string_value(json_object_get(reply, "status_message"));
    json_t *errors = json_object_get(reply, "errors");
    const char *code;
    json_t *list;
    size_t o = 0;

    if (len == 0)
        return;
    out[0] = '\0';
    if (status && status[0])
        append(out, len, &o, status);
    if (json_is_object(errors)) {
        json_object_foreach(errors, code, list)
        {
            size_t i;
            json_t *m;
            if (json_is_string(list)) {
                append(out, len, &o, o ? "; " : "");
                append(out, len, &o, code);
                append(out, len, &o, ": ");
                append(out, len, &o, json_string_value(list));
                continue;
            }
            json_array_foreach(list, i, m)
            {
                if (!json_is_string(m))
                    continue;
                append(out, len, &o, o ? "; " : "");
                append(out, len, &o, code);
                append(out, len, &o, ": ");
                append(out, len, &o, json_string_value(m));
            }
        }
    }
    if (!out[0])
        append(out, len, &o, "no status_message and no errors in the reply");
}

/* ---- request preparation -------------------------------------------------------------- */

/* Normalise the money member `key` of `obj` (in place, obj is our copy). */
static enum pb_rc normalise_money(json_t *obj, const char *key, const char *path,
                                  const char *currency, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    char text[PB_MONEY_DECIMAL_MAX];
    int64_t minor;
    enum pb_rc rc;

    if (!v || json_is_null(v))
        return PB_OK;
    if (json_is_string(v)) {
        rc = pb_money_parse_decimal(json_string_value(v), currency, &minor, err);
        if (rc) {
            pb_err_prefix(err, "%s", path);
            return rc;
        }
        if (minor < 0)
            return pb_err_set(err, PB_ERR_RANGE, "%s: must not be negative", path);
        return PB_OK;
    }
    if (json_is_object(v)) {
        json_t *m = json_object_get(v, "minor");
        const char *cur = json_string_value(json_object_get(v, "currency"));
        if (!json_is_integer(m))
            return pb_err_set(err, PB_ERR_INVALID, "%s.minor: must be an integer", path);
        if (!cur || strcmp(cur, currency) != 0)
            return pb_err_set(err, PB_ERR_CURRENCY,
                              "%s.currency: must be %s (settings.currency), got \"%.8s\"", path,
                              currency, cur ? cur : "");
        if (json_integer_value(m) < 0)
            return pb_err_set(err, PB_ERR_RANGE, "%s.minor: must not be negative", path);
        rc = pb_money_format_decimal((int64_t)json_integer_value(m), currency, text, sizeof text,
                                     err);
        if (rc)
            return rc;
        return json_object_set_new(obj, key, json_string(text))
                   ? pb_err_set(err, PB_ERR_NOMEM, "out of memory")
                   : PB_OK;
    }
    return pb_err_set(err, PB_ERR_INVALID,
                      "%s: must be a decimal string such as \"10.99\" or a money object "
                      "{\"minor\",\"currency\"}; a JSON number is never sent",
                      path);
}

/* A deep copy of `request` ready for the wire: integrator_id added, money
 * normalised. NULL with err set on failure. */
static json_t *prepare(const struct pb_connection *c, const struct paytrace_state *st,
                       const json_t *request, struct pb_err *err)
{
    const char *integrator = pb_connection_secret(c, "integrator_id");
    json_t *copy, *lines, *line;
    char path[64];
    size_t i;

    if (!json_is_object(request)) {
        pb_err_set(err, PB_ERR_INVALID, "the request must be a JSON object");
        return NULL;
    }
    copy = json_deep_copy(request);
    if (!copy) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (integrator && integrator[0] && !json_object_get(copy, "integrator_id") &&
        json_object_set_new(copy, "integrator_id", json_string(integrator)))
        goto nomem;
    if (normalise_money(copy, "amount", "amount", st->currency, err))
        goto fail;
    lines = json_object_get(copy, "line_items");
    json_array_foreach(lines, i, line)
    {
        if (!json_is_object(line))
            continue;
        snprintf(path, sizeof path, "line_items.%zu.unit_price", i);
        if (normalise_money(line, "unit_price", path, st->currency, err))
            goto fail;
    }
    return copy;
nomem:
    pb_err_set(err, PB_ERR_NOMEM, "out of memory");
fail:
    json_decref(copy);
    return NULL;
}

static void mask_member(json_t *obj, const char *key)
{
    if (json_is_object(obj) && json_object_get(obj, key))
        json_object_set_new(obj, key, json_string("***"));
}

/* The body as it may be recorded in a trace: card data replaced. */
static char *trace_text(const json_t *wire)
{
    json_t *copy = json_deep_copy(wire);
    char *text;
    if (!copy)
        return NULL;
    mask_member(json_object_get(copy, "credit_card"), "number");
    mask_member(json_object_get(copy, "credit_card"), "csc");
    mask_member(copy, "csc");
    mask_member(json_object_get(copy, "check"), "account_number");
    text = json_dumps(copy, JSON_COMPACT);
    json_decref(copy);
    return text;
}

/* ---- the call -------------------------------------------------------------------------- */

static char *bearer_header(const char *token)
{
    static const char prefix[] = "Authorization: Bearer ";
    size_t n = strlen(token);
    char *h = malloc(sizeof prefix + n);
    if (!h)
        return NULL;
    memcpy(h, prefix, sizeof prefix - 1);
    memcpy(h + sizeof prefix - 1, token, n + 1);
    return h;
}

/* Classify a completed HTTP exchange (rc from the client). */
static enum pb_rc classify(const struct pb_http_call *call, enum pb_rc rc, const char *what,
                           json_t **reply_out, struct pb_err *err)
{
    json_t *reply = NULL, *success;
    char words[400];

    if (call->response && call->response_len) {
        reply = json_loadb(call->response, call->response_len, 0, NULL);
        if (reply && !json_is_object(reply)) {
            json_decref(reply);
            reply = NULL;
        }
    }
    success = json_object_get(reply, "success");
    if (rc == PB_OK) {
        if (!json_is_boolean(success)) {
            json_decref(reply);
            return pb_err_set(err, PB_ERR_TRANSIENT,
                              "PayTrace %s: HTTP %ld with a body that is not a PayTrace reply "
                              "(no boolean \"success\")",
                              what, call->status);
        }
        *reply_out = reply;
        if (json_is_true(success))
            return PB_OK;
        pb__paytrace_reply_words(reply, words, sizeof words);
        return pb_err_set(err, PB_ERR_PERMANENT, "PayTrace refused %s: %s", what, words);
    }
    *reply_out = reply;
    if (rc == PB_ERR_PERMANENT && reply && json_is_false(success)) {
        pb__paytrace_reply_words(reply, words, sizeof words);
        return pb_err_set(err, PB_ERR_PERMANENT, "PayTrace refused %s (HTTP %ld): %s", what,
                          call->status, words);
    }
    if (reply && json_object_get(reply, "status_message")) {
        pb__paytrace_reply_words(reply, words, sizeof words);
        pb_err_prefix(err, "PayTrace %s: %s", what, words);
    } else {
        pb_err_prefix(err, "PayTrace %s", what);
    }
    return rc;
}

enum pb_rc pb__paytrace_post(struct pb_connection *c, struct pb_call_ctx *ctx, const char *path,
                             const char *what, const json_t *body, json_t **reply_out,
                             struct pb_err *err)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    char url[PAYTRACE_URL_MAX + PAYTRACE_PATH_MAX];
    struct pb_http_call call;
    json_t *wire = NULL;
    char *text = NULL, *traced = NULL;
    enum pb_rc rc = PB_OK;

    *reply_out = NULL;
    memset(&call, 0, sizeof call);
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
    wire = prepare(c, st, body, err);
    if (!wire)
        return err ? err->rc : PB_ERR_INVALID;
    text = json_dumps(wire, JSON_COMPACT);
    traced = trace_text(wire);
    json_decref(wire);
    if (!text || !traced) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    snprintf(url, sizeof url, "%s%s", st->api_base, path);

    for (int attempt = 0; attempt < 2; attempt++) {
        char *token = NULL, *auth;
        uint64_t generation = 0;

        if (attempt) {
            pb_http_call_reset(&call);
            memset(&call, 0, sizeof call);
        }
        rc = pb__paytrace_token_get(c, ctx, &token, &generation, err);
        if (rc)
            goto out;
        auth = bearer_header(token);
        pb_secret_free(token);
        if (!auth) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
            goto out;
        }
        call.method = "POST";
        call.url = url;
        call.headers[0] = auth;
        call.headers[1] = "Content-Type: application/json";
        call.headers[2] = "Accept: application/json";
        call.headers[3] = NULL;
        call.body = text;
        call.body_len = strlen(text);
        call.timeout_ms = st->timeout_ms;
        call.limiter = c->limiter;
        call.max_response = REPLY_MAX;
        rc = pb_http_perform(ctx->http, &call, err);
        /* record the card-free copy of the body, never the one sent */
        call.body = traced;
        call.body_len = strlen(traced);
        pb_trace_http(ctx->trace, &call, rc, err);
        call.body = NULL;
        pb_secret_free(auth);
        call.headers[0] = NULL;
        if (call.status != 401)
            break;
        pb__paytrace_token_invalidate(c, generation);
        if (attempt == 1) {
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "PayTrace %s: HTTP 401 again with a freshly fetched token: the API "
                            "user of connection %s may have been disabled or lost API access "
                            "(check secrets.username); will retry",
                            what, c->name);
            goto out;
        }
    }
    if (rc && call.retry_after_s >= 0)
        ctx->retry_after_s = call.retry_after_s;
    rc = classify(&call, rc, what, reply_out, err);
out:
    pb_http_call_reset(&call);
    if (text) {
        memset(text, 0, strlen(text)); /* it may hold a card number */
        free(text);
    }
    free(traced);
    return rc;
}

/* ---- the public calls ---------------------------------------------------------------------- */

static enum pb_rc public_call(struct pb_connection *c, struct pb_call_ctx *ctx, const char *path,
                              const char *what, const json_t *request, json_t **reply,
                              struct pb_err *err)
{
    json_t *ignored = NULL;
    enum pb_rc rc;
    if (!c || !ctx)
        return pb_err_set(err, PB_ERR_INVALID, "a connection and a call context are required");
    rc = pb__paytrace_post(c, ctx, path, what, request, reply ? reply : &ignored, err);
    json_decref(ignored);
    return rc;
}

enum pb_rc pb_paytrace_sale_keyed(struct pb_connection *c, struct pb_call_ctx *ctx,
                                  const json_t *request, json_t **reply, struct pb_err *err)
{
    return public_call(c, ctx, "/v1/transactions/sale/keyed", "sale/keyed", request, reply, err);
}

enum pb_rc pb_paytrace_sale_by_customer(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        const json_t *request, json_t **reply, struct pb_err *err)
{
    return public_call(c, ctx, "/v1/transactions/sale/by_customer", "sale/by_customer", request,
                       reply, err);
}

enum pb_rc pb_paytrace_refund(struct pb_connection *c, struct pb_call_ctx *ctx,
                              const json_t *request, json_t **reply, struct pb_err *err)
{
    return public_call(c, ctx, "/v1/transactions/refund/for_transaction", "refund/for_transaction",
                       request, reply, err);
}

enum pb_rc pb_paytrace_void(struct pb_connection *c, struct pb_call_ctx *ctx, const json_t *request,
                            json_t **reply, struct pb_err *err)
{
    return public_call(c, ctx, "/v1/transactions/void", "void", request, reply, err);
}

enum pb_rc pb_paytrace_customer_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       const json_t *request, json_t **reply, struct pb_err *err)
{
    return public_call(c, ctx, "/v1/customer/create", "customer/create", request, reply, err);
}

enum pb_rc pb_paytrace_export_by_date_range(struct pb_connection *c, struct pb_call_ctx *ctx,
                                            const json_t *request, json_t **reply,
                                            struct pb_err *err)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
    return public_call(c, ctx, st->export_path, "export/by_date_range", request, reply, err);
}

enum pb_rc pb_paytrace_export_settled(struct pb_connection *c, struct pb_call_ctx *ctx,
                                      const json_t *request, json_t **reply, struct pb_err *err)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
    return public_call(c, ctx, st->settled_export_path, "export_settled", request, reply, err);
}
