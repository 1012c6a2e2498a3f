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
 * A write's reply (the 200, one per batch of up to 50 and the hot path, and
 * a 400's Elements) is read with core/jdoc.h (yajl into an arena), and each
 * element's `result` is kept as the bytes Xero sent (result_json), sliced
 * out of the reply: no jansson tree is built for the whole reply only to
 * serialise each element again (that was ~7% of a worker's time in bench/
 * scenario 4). Amounts in the results are therefore Xero's own text.
 * Look-ups and error words are rare and use jansson.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jdoc.h"
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
    free(it->result_json);
    it->result_json = NULL;
}

/* An element of a 200 write reply, as a jdoc node: its record kept as text. */
static void keep_text(struct pb_sink_item *it, const struct pb_jnode *el, const char *text)
{
    json_decref(it->result);
    it->result = NULL;
    free(it->result_json);
    it->result_json = strndup(text + el->start, el->end - el->start);
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

/* A reply that is not {"<envelope>": [...]}: transient, the look-up by
 * reference of the retry guards against a duplicate. */
static void no_envelope(const struct pb_http_call *call, const char *envelope,
                        struct xero_failure *out)
{
    out->rc = PB_ERR_TRANSIENT;
    out->retry_after_s = -1;
    snprintf(out->message, sizeof out->message,
             "Xero answered HTTP %ld without a \"%s\" array; will retry (a look-up by "
             "reference guards against a duplicate)",
             call->status, envelope);
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
        no_envelope(call, envelope, out);
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

static const char *jstr(const struct pb_jnode *obj, const char *key)
{
    const struct pb_jnode *v = pb_jnode_get(obj, key);
    return v && v->type == PB_J_STRING && strlen(v->str) == v->len ? v->str : NULL;
}

/* pb__xero_join_validation_errors for a jdoc element */
static void join_errors(const struct pb_jnode *el, char *out, size_t len)
{
    const struct pb_jnode *errors = pb_jnode_get(el, "ValidationErrors");
    size_t used = 0;
    out[0] = '\0';
    if (!errors || errors->type != PB_J_ARRAY)
        return;
    for (const struct pb_jnode *e = errors->first; e; e = e->next) {
        const char *m = jstr(e, "Message");
        int w;
        if (!m)
            continue;
        w = snprintf(out + used, len - used, "%s%s", used ? "; " : "", m);
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
}

/* One element of a 200 reply (or of a 400's Elements) for one item; `text`
 * is the reply the nodes point into. */
static void apply_reply_element(struct pb_sink_item *it, const struct pb_jnode *el,
                                const char *text, const char *id_key, int in_400)
{
    const char *status = jstr(el, "StatusAttributeString");
    const char *id = jstr(el, id_key);
    char errors[400];

    join_errors(el, errors, sizeof errors);
    if ((status && strcmp(status, "ERROR") == 0) || errors[0]) {
        size_t n = strlen(id_key) > 2 ? strlen(id_key) - 2 : strlen(id_key);
        pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero refused the %.*s: %s", (int)n, id_key,
                           errors[0] ? errors : "StatusAttributeString ERROR without a message");
        keep_text(it, el, text);
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
    pb__xero_item_ok(it, id, NULL);
    keep_text(it, el, text);
}

/* The elements of a write's reply, read with jdoc: the 200's {"<envelope>":
 * [...]} (in_400 0, one element per item, fewer is said per item) or the
 * 400's {"Elements": [...]} (in_400 1, exactly one per item). 0 when every
 * item got its outcome, -1 when the reply is not of that shape. */
static int apply_elements(const struct pb_http_call *call, const char *key, const char *id_key,
                          int in_400, struct pb_sink_item *const *sent, size_t n_sent)
{
    struct pb_jdoc *doc = malloc(sizeof(*doc));
    const struct pb_jnode *arr, *el;
    struct pb_err ignored = {0};
    size_t i = 0;
    if (!doc || !call->response || !call->response_len ||
        pb_jdoc_parse(doc, call->response, call->response_len, &ignored) != PB_OK) {
        free(doc);
        return -1;
    }
    arr = pb_jnode_get(doc->root, key);
    if (!arr || arr->type != PB_J_ARRAY || (in_400 && (arr->n != n_sent || n_sent == 0))) {
        pb_jdoc_free(doc);
        free(doc);
        return -1;
    }
    for (el = arr->first; i < n_sent; i++, el = el ? el->next : NULL) {
        if (el && el->type == PB_J_OBJECT)
            apply_reply_element(sent[i], el, call->response, id_key, in_400);
        else
            pb__xero_item_fail(sent[i], PB_ERR_TRANSIENT, -1,
                               "Xero returned %zu %s for %zu sent, none for item %zu; will "
                               "retry (a look-up by reference guards against a duplicate)",
                               arr->n, key, n_sent, i + 1);
    }
    pb_jdoc_free(doc);
    free(doc);
    return 0;
}

int pb__xero_apply_write_reply(const struct pb_http_call *call, enum pb_rc rc,
                               const struct pb_err *err, const char *envelope,
                               const char *id_key, struct pb_sink_item *const *sent,
                               size_t n_sent, struct xero_failure *batch_failure)
{
    char what[64];

    snprintf(what, sizeof what, "writing %s", envelope);
    if (rc == PB_OK) {
        if (apply_elements(call, envelope, id_key, 0, sent, n_sent) == 0)
            return 0;
        no_envelope(call, envelope, batch_failure);
        for (size_t i = 0; i < n_sent; i++)
            pb__xero_item_fail_with(sent[i], batch_failure);
        return 1;
    }
    if (call->status == 400 && apply_elements(call, "Elements", id_key, 1, sent, n_sent) == 0)
        return 0;
    pb__xero_describe_failure(call, rc, err, what, batch_failure);
    for (size_t i = 0; i < n_sent; i++)
        pb__xero_item_fail_with(sent[i], batch_failure);
    return 1;
}
