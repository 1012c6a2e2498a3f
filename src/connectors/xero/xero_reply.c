/*
 * connectors/xero/xero_reply.c: Xero's replies turned into per-item outcomes.
 *
 * A write is sent with summarizeErrors=false, so Xero answers 200 with one
 * element per element sent, in order, each with StatusAttributeString "OK"
 * (or "WARNING", still saved) or "ERROR" with ValidationErrors:[{Message}].
 * The rules, for element i of the reply and item sent[i]:
 *
 *   "ERROR" (or ValidationErrors without a status) -> PB_ERR_PERMANENT, the
 *       messages joined with "; ", result = the element
 *   "OK"/"WARNING"/absent, with a non-zero ID      -> PB_OK, erp_id = the ID,
 *       result = the element
 *   no element i (Xero returned fewer)              -> PB_ERR_TRANSIENT, saying
 *       so; the retry's look-up by reference keeps it from being created twice
 *
 * Whole-request answers:
 *   400 ValidationException with one Elements entry per item -> per element:
 *       with errors PB_ERR_PERMANENT; without, PB_ERR_TRANSIENT ("not saved
 *       because another element failed": Xero saves nothing on a 400)
 *   429 -> PB_ERR_TRANSIENT with Retry-After and X-Rate-Limit-Problem
 *   5xx, 408, 425, network, token, repeated 401 -> PB_ERR_TRANSIENT
 *   other 4xx -> PB_ERR_PERMANENT with Xero's Message / Detail / Title
 *
 * Everything here is a pure function of its arguments (no state, no lock).
 * Text copied out of a reply into an item message is passed through
 * pb_pan_redact(), because messages end up in dead letters and logs.
 *
 * Known limit: reply elements are parsed by jansson, so amounts inside the
 * `result` records are JSON reals. They are kept only as the ERP's record for
 * display and are never used for arithmetic; the amounts paybridge acts on
 * stay int64 minor units in the canonical event.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/pan.h"
#include "xero_internal.h"

static void redact(char *s) { pb_pan_redact(s, strlen(s)); }

void pb__xero_item_ok(struct pb_sink_item *it, const char *erp_id, json_t *record)
{
    it->rc = PB_OK;
    snprintf(it->erp_id, sizeof it->erp_id, "%s", erp_id ? erp_id : "");
    it->message[0] = '\0';
    it->retry_after_s = -1;
    json_decref(it->result);
    it->result = json_incref(record);
}

static void item_failv(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                       const char *fmt, va_list ap)
{
    it->rc = rc;
    it->erp_id[0] = '\0';
    vsnprintf(it->message, sizeof it->message, fmt, ap);
    redact(it->message);
    it->retry_after_s = retry_after_s;
}

void pb__xero_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    item_failv(it, rc, retry_after_s, fmt, ap);
    va_end(ap);
}

void pb__xero_item_fail_with(struct pb_sink_item *it, const struct xero_failure *f)
{
    pb__xero_item_fail(it, f->rc, f->retry_after_s, "%s", f->message);
}

void pb__xero_join_validation_errors(json_t *element, char *out, size_t len)
{
    json_t *errors = json_object_get(element, "ValidationErrors");
    size_t i, used = 0;
    json_t *e;

    out[0] = '\0';
    if (!json_is_array(errors))
        return;
    json_array_foreach(errors, i, e) {
        const char *m = json_string_value(json_object_get(e, "Message"));
        int w;
        if (!m)
            continue;
        w = snprintf(out + used, len - used, "%s%s", used ? "; " : "", m);
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
}

/* Xero's own words about a failed request: Message, Detail or Title, and the
 * validation errors of the first element that has some. */
static void xero_words(const struct pb_http_call *call, char *out, size_t len)
{
    json_t *root = NULL, *elements, *el;
    const char *msg = NULL, *detail = NULL;
    char verrs[384] = "";
    size_t i;

    out[0] = '\0';
    if (call->response && call->response_len)
        root = json_loadb(call->response, call->response_len, 0, NULL);
    if (json_is_object(root)) {
        msg = json_string_value(json_object_get(root, "Message"));
        detail = json_string_value(json_object_get(root, "Detail"));
        if (!msg)
            msg = json_string_value(json_object_get(root, "Title"));
        elements = json_object_get(root, "Elements");
        json_array_foreach(elements, i, el) {
            pb__xero_join_validation_errors(el, verrs, sizeof verrs);
            if (verrs[0])
                break;
        }
        snprintf(out, len, "%s%s%s%s%s", msg ? msg : "", msg && detail ? ": " : "",
                 detail ? detail : "", (msg || detail) && verrs[0] ? ": " : "", verrs);
    } else if (call->response && call->response_len) {
        snprintf(out, len, "%.200s", call->response);
    }
    json_decref(root);
    redact(out);
}

void pb__xero_describe_failure(const struct pb_http_call *call, enum pb_rc rc,
                               const struct pb_err *err, const char *what,
                               struct xero_failure *out)
{
    char words[384];
    const char *problem;

    out->retry_after_s = -1;
    out->rc = rc ? rc : PB_ERR_INTERNAL;
    if (call->status == 0 || call->status == 401) {
        /* network, token, or the second 401 (xero_http.c wrote the message) */
        if (out->rc != PB_ERR_NOMEM && out->rc != PB_ERR_INTERNAL)
            out->rc = PB_ERR_TRANSIENT;
        snprintf(out->message, sizeof out->message, "%s: %s", what,
                 err && err->msg[0] ? err->msg : "no reply from Xero");
        return;
    }
    xero_words(call, words, sizeof words);
    if (call->status == 429) {
        problem = pb_http_call_header(call, "X-Rate-Limit-Problem");
        out->rc = PB_ERR_TRANSIENT;
        out->retry_after_s = call->retry_after_s;
        snprintf(out->message, sizeof out->message,
                 "%s: Xero rate limit hit (HTTP 429, X-Rate-Limit-Problem: %.32s); retry after "
                 "%d s",
                 what, problem ? problem : "not given", call->retry_after_s);
        return;
    }
    if (call->status >= 500 || call->status == 408 || call->status == 425 ||
        rc == PB_ERR_TRANSIENT) {
        out->rc = PB_ERR_TRANSIENT;
        out->retry_after_s = call->retry_after_s;
        snprintf(out->message, sizeof out->message, "%s: Xero answered HTTP %ld%s%s; will retry",
                 what, call->status, words[0] ? ": " : "", words);
        return;
    }
    out->rc = PB_ERR_PERMANENT;
    snprintf(out->message, sizeof out->message, "%s: Xero answered HTTP %ld: %s", what,
             call->status, words[0] ? words : "(no message)");
}

json_t *pb__xero_parse_envelope(const struct pb_http_call *call, const char *envelope,
                                json_t **root_out, struct xero_failure *out)
{
    json_t *root = NULL, *arr;
    *root_out = NULL;
    if (call->response && call->response_len)
        root = json_loadb(call->response, call->response_len, 0, NULL);
    arr = json_object_get(root, envelope);
    if (!json_is_array(arr)) {
        json_decref(root);
        out->rc = PB_ERR_TRANSIENT;
        out->retry_after_s = -1;
        snprintf(out->message, sizeof out->message,
                 "Xero answered HTTP %ld without a \"%s\" array; will retry (a look-up by "
                 "reference guards against a duplicate)",
                 call->status, envelope);
        return NULL;
    }
    *root_out = root;
    return arr;
}

static int id_usable(const char *id)
{
    if (!id || !id[0])
        return 0;
    for (const char *p = id; *p; p++)
        if (*p != '0' && *p != '-')
            return 1;
    return 0; /* Xero's 00000000-0000-0000-0000-000000000000 means "not saved" */
}

/* One element of a 200 reply (or of a 400's Elements) for one item. */
static void apply_element(struct pb_sink_item *it, json_t *el, const char *id_key, int in_400)
{
    const char *status = json_string_value(json_object_get(el, "StatusAttributeString"));
    const char *id = json_string_value(json_object_get(el, id_key));
    char errors[400];

    pb__xero_join_validation_errors(el, errors, sizeof errors);
    if ((status && strcmp(status, "ERROR") == 0) || errors[0]) {
        /* name what it refused: "ContactID" -> "Contact" */
        size_t n = strlen(id_key) > 2 ? strlen(id_key) - 2 : strlen(id_key);
        pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero refused the %.*s: %s", (int)n, id_key,
                           errors[0] ? errors : "StatusAttributeString ERROR without a message");
        json_decref(it->result);
        it->result = json_incref(el);
        return;
    }
    if (in_400) {
        pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1,
                           "not saved: Xero refused the whole request because another element "
                           "of the batch failed validation; will retry");
        return;
    }
    if (!id_usable(id)) {
        pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1,
                           "Xero's reply element has neither a %s nor an error; will retry (a "
                           "look-up by reference guards against a duplicate)",
                           id_key);
        return;
    }
    pb__xero_item_ok(it, id, el);
}

int pb__xero_apply_write_reply(const struct pb_http_call *call, enum pb_rc rc,
                               const struct pb_err *err, const char *envelope,
                               const char *id_key, struct pb_sink_item *const *sent,
                               size_t n_sent, struct xero_failure *batch_failure)
{
    json_t *root = NULL, *arr, *elements;
    char what[64];

    snprintf(what, sizeof what, "writing %s", envelope);
    if (rc == PB_OK) {
        arr = pb__xero_parse_envelope(call, envelope, &root, batch_failure);
        if (!arr) {
            for (size_t i = 0; i < n_sent; i++)
                pb__xero_item_fail_with(sent[i], batch_failure);
            return 1;
        }
        for (size_t i = 0; i < n_sent; i++) {
            json_t *el = json_array_get(arr, i);
            if (json_is_object(el))
                apply_element(sent[i], el, id_key, 0);
            else
                pb__xero_item_fail(sent[i], PB_ERR_TRANSIENT, -1,
                                   "Xero returned %zu %s for %zu sent, none for item %zu; will "
                                   "retry (a look-up by reference guards against a duplicate)",
                                   json_array_size(arr), envelope, n_sent, i + 1);
        }
        json_decref(root);
        return 0;
    }
    if (call->status == 400 && call->response) {
        root = json_loadb(call->response, call->response_len, 0, NULL);
        elements = json_object_get(root, "Elements");
        if (json_is_array(elements) && json_array_size(elements) == n_sent && n_sent > 0) {
            for (size_t i = 0; i < n_sent; i++)
                apply_element(sent[i], json_array_get(elements, i), id_key, 1);
            json_decref(root);
            return 0;
        }
        json_decref(root);
    }
    pb__xero_describe_failure(call, rc, err, what, batch_failure);
    for (size_t i = 0; i < n_sent; i++)
        pb__xero_item_fail_with(sent[i], batch_failure);
    return 1;
}
