/*
 * connectors/xero/xero_credit.c: creditnote.allocate, which applies a credit
 * note's credit to invoices, and how it proves that it takes effect once.
 *
 * Document (the flow's mapping output): Xero's Allocations body plus the
 * credit note it belongs to,
 *
 *   {"CreditNoteID": "<id>",
 *    "Allocations": [{"Invoice": {"InvoiceID": "<id>"},
 *                     "Amount": "10.00", "Date": "2026-11-21"}, ...]}
 *
 * Invoice.InvoiceNumber may stand for Invoice.InvoiceID; Amount is a decimal
 * string (the mapping's) or a number; Date (YYYY-MM-DD) is required by Xero.
 * At most XERO_ALLOCATIONS_MAX allocations per document.
 *
 * Request: PUT /CreditNotes/{CreditNoteID}/Allocations?summarizeErrors=true
 * {"Allocations":[...]}, with the Idempotency-Key of every write (over the
 * command, the item's key and the body). summarizeErrors=true makes an item
 * all or nothing: Xero saves all of its allocations or none.
 *
 * Outcome: PB_OK with erp_id = the CreditNoteID and result =
 * {"CreditNoteID", "Allocations": [the allocations as Xero holds them]}.
 * Xero's refusal (more than the note's remaining credit or the invoice's
 * amount due, an invoice already paid off, another contact, a DRAFT note)
 * is PB_ERR_PERMANENT in Xero's words; an unknown credit note (404) is
 * PB_ERR_PERMANENT; a document that is not the shape above is
 * PB_ERR_MAPPING; 429, 5xx and network failures are PB_ERR_TRANSIENT.
 *
 * Retries. An allocation has no Reference to look up. With attempt > 1 the
 * credit note is read first (GET /CreditNotes/{CreditNoteID}) and each wanted
 * allocation is matched against the allocations the note already has: the
 * same invoice (by InvoiceID, or by InvoiceNumber when the document names it
 * so) and the same amount, compared exactly in minor units of the note's
 * currency; an existing allocation matches at most one wanted. All matched:
 * the item is done and nothing is sent. Some matched: only the rest are sent.
 *
 * Known limit: two genuine allocations of one amount from one credit note to
 * one invoice, posted as two jobs, cannot be told from a retry of the first.
 * A refund allocates its own credit note once, so flows do not meet this; a
 * flow that needs it puts both in one document.
 *
 * Rejected designs.
 *   - summarizeErrors=false: one refused allocation would leave the others of
 *     the item saved and the item failed. The retry's matching would cope,
 *     but a dead letter that changed half of what it says is harder for an
 *     operator to reason about than one that changed nothing.
 *   - A look-up on the first attempt too: nothing can have been saved before
 *     it, and it would double the calls against the 60/minute budget.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/json.h"
#include "xero_internal.h"

#define XERO_ALLOCATIONS_MAX 50       /* allocations in one document */
#define XERO_CREDIT_ID_MAX 64         /* longest CreditNoteID accepted */

/* One allocation the document asks for. */
struct wanted {
    json_t *doc;                      /* borrowed element of the document's Allocations */
    const char *invoice_id;           /* borrowed; NULL when named by number */
    const char *invoice_number;       /* borrowed; used when invoice_id is NULL */
    json_t *found;                    /* borrowed from the GET: the allocation that is it */
};

static const char *str_member(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s && s[0] ? s : NULL;
}

/* Check the document and fill `w`; 0 with the item failed (PB_ERR_MAPPING). */
static int read_document(struct pb_sink_item *it, const char **cn_id, struct wanted *w,
                         size_t *n_wanted)
{
    json_t *list, *el;
    size_t i;

    *n_wanted = 0;
    *cn_id = str_member(it->document, "CreditNoteID");
    list = json_object_get(it->document, "Allocations");
    if (!json_is_object(it->document) || !*cn_id || strlen(*cn_id) > XERO_CREDIT_ID_MAX) {
        pb__xero_item_fail(it, PB_ERR_MAPPING, -1,
                           "creditnote.allocate needs {\"CreditNoteID\": \"<id>\", "
                           "\"Allocations\": [{\"Invoice\": {\"InvoiceID\": \"<id>\"}, "
                           "\"Amount\": \"10.00\", \"Date\": \"YYYY-MM-DD\"}]}: the "
                           "CreditNoteID (at most %d characters) is missing",
                           XERO_CREDIT_ID_MAX);
        return 0;
    }
    if (!json_is_array(list) || json_array_size(list) == 0 ||
        json_array_size(list) > XERO_ALLOCATIONS_MAX) {
        pb__xero_item_fail(it, PB_ERR_MAPPING, -1,
                           "creditnote.allocate needs \"Allocations\": a list of 1 to %d "
                           "allocations ({\"Invoice\": {\"InvoiceID\"}, \"Amount\", \"Date\"})",
                           XERO_ALLOCATIONS_MAX);
        return 0;
    }
    json_array_foreach(list, i, el) {
        json_t *inv = json_object_get(el, "Invoice");
        struct wanted *x = &w[i];
        x->doc = el;
        x->invoice_id = str_member(inv, "InvoiceID");
        x->invoice_number = str_member(inv, "InvoiceNumber");
        x->found = NULL;
        if (!json_is_object(el) || (!x->invoice_id && !x->invoice_number) ||
            !json_object_get(el, "Amount") || !str_member(el, "Date")) {
            pb__xero_item_fail(it, PB_ERR_MAPPING, -1,
                               "creditnote.allocate: Allocations[%zu] needs Invoice.InvoiceID "
                               "(or Invoice.InvoiceNumber), Amount and Date",
                               i);
            return 0;
        }
    }
    *n_wanted = json_array_size(list);
    return 1;
}

/* Is the existing allocation `have` the wanted one `w`? */
static int same_allocation(const struct wanted *w, json_t *have, const char *currency)
{
    json_t *inv = json_object_get(have, "Invoice");
    int64_t a, b;
    struct pb_err e = {0};

    if (w->invoice_id) {
        const char *id = str_member(inv, "InvoiceID");
        if (!id || strcasecmp(id, w->invoice_id) != 0)
            return 0;
    } else {
        const char *number = str_member(inv, "InvoiceNumber");
        if (!number || strcmp(number, w->invoice_number) != 0)
            return 0;
    }
    return currency && pb_json_to_minor(json_object_get(w->doc, "Amount"), currency, &a, &e) ==
                           PB_OK &&
           pb_json_to_minor(json_object_get(have, "Amount"), currency, &b, &e) == PB_OK && a == b;
}

/* attempt > 1: match the wanted allocations against those the credit note
 * has (w[i].found). Returns 0, or 1 when the item failed (*whole set when the
 * failure was the call's: 429, 5xx, network). *root keeps the GET's reply. */
static int match_existing(struct pb_connection *c, struct pb_call_ctx *ctx,
                          struct pb_sink_item *it, const char *path, const char *cn_id,
                          struct wanted *w, size_t n_wanted, json_t **root,
                          struct xero_failure *whole, int *is_whole)
{
    struct xero_request rq = {"GET", path, NULL, NULL};
    struct pb_http_call call;
    struct pb_err e = {0};
    json_t *arr, *note, *existing, *have;
    const char *currency;
    int result = 0;
    enum pb_rc rc = pb__xero_call(c, ctx, &rq, &call, &e);

    *root = NULL;
    if (call.status == 404) {
        pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero has no credit note %s to allocate",
                           cn_id);
        result = 1;
    } else if (rc) {
        pb__xero_describe_failure(&call, rc, &e, "reading the credit note's allocations", whole);
        pb__xero_item_fail_with(it, whole);
        *is_whole = 1;
        result = 1;
    } else if ((arr = pb__xero_parse_envelope(&call, "CreditNotes", root, whole)) == NULL) {
        pb__xero_item_fail_with(it, whole);
        *is_whole = 1;
        result = 1;
    } else {
        note = json_array_get(arr, 0);
        currency = str_member(note, "CurrencyCode");
        existing = json_object_get(note, "Allocations");
        for (size_t i = 0; i < n_wanted; i++) {
            size_t j;
            json_array_foreach(existing, j, have) {
                int taken = 0;
                for (size_t k = 0; k < i; k++)
                    taken |= w[k].found == have;
                if (!taken && same_allocation(&w[i], have, currency)) {
                    w[i].found = have;
                    break;
                }
            }
        }
    }
    pb_http_call_reset(&call);
    return result;
}

/* The item's result: {"CreditNoteID", "Allocations": [found..., created...]}.
 * Borrows the elements (increfs them). */
static json_t *result_of(const char *cn_id, const struct wanted *w, size_t n_wanted,
                         json_t *created)
{
    json_t *list = json_array(), *el;
    size_t i;
    for (i = 0; list && i < n_wanted; i++)
        if (w[i].found)
            json_array_append(list, w[i].found);
    json_array_foreach(created, i, el) json_array_append(list, el);
    return json_pack("{s:s,s:o}", "CreditNoteID", cn_id, "Allocations",
                     list ? list : json_array());
}

/* "; "-joined messages of every element of a refusal. */
static void refusal_words(json_t *elements, char *out, size_t len)
{
    size_t i, used = 0;
    json_t *el;
    out[0] = '\0';
    json_array_foreach(elements, i, el) {
        char one[400];
        int wrote;
        pb__xero_join_validation_errors(el, one, sizeof one);
        if (!one[0])
            continue;
        wrote = snprintf(out + used, len - used, "%s%s", used ? "; " : "", one);
        if (wrote < 0 || (size_t)wrote >= len - used)
            break;
        used += (size_t)wrote;
    }
}

/* Send the allocations not found and set the item's outcome. Returns 1 when
 * the failure was the call's (*whole filled). */
static int send_allocations(struct pb_connection *c, struct pb_call_ctx *ctx,
                            struct pb_sink_item *it, const char *path, const char *cn_id,
                            const struct wanted *w, size_t n_wanted, struct xero_failure *whole)
{
    struct xero_request rq = {"PUT", NULL, NULL, NULL};
    struct pb_http_call call;
    struct pb_err e = {0};
    char key[XERO_IDEMPOTENCY_KEY_MAX], words[480], what[128];
    json_t *send = json_array(), *body_doc, *root = NULL, *arr, *el;
    struct xero_buf url;
    char *body = NULL;
    size_t n_send = 0, i;
    int is_whole = 0;
    enum pb_rc rc;

    for (i = 0; send && i < n_wanted; i++)
        if (!w[i].found && json_array_append(send, w[i].doc) == 0)
            n_send++;
    body_doc = send ? json_pack("{s:O}", "Allocations", send) : NULL;
    if (body_doc)
        body = pb_json_dumps_decimal(body_doc, pb__xero_decimal_keys, 0);
    json_decref(body_doc);
    json_decref(send);
    pb__xero_buf_init(&url, 1024);
    pb__xero_buf_adds(&url, path);
    pb__xero_buf_adds(&url, "/Allocations?summarizeErrors=true");
    if (!body || url.failed) {
        pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1,
                           "cannot build the Allocations request (out of memory)");
        free(body);
        pb__xero_buf_free(&url);
        return 0;
    }
    pb__xero_idempotency_key(it->command, &it, 1, body, key);
    rq.path = url.data;
    rq.body = body;
    rq.idempotency_key = key;
    rc = pb__xero_call(c, ctx, &rq, &call, &e);
    snprintf(what, sizeof what, "allocating credit note %s", cn_id);

    if (rc == PB_OK) {
        arr = pb__xero_parse_envelope(&call, "Allocations", &root, whole);
        if (!arr) {
            pb__xero_item_fail_with(it, whole);
            is_whole = 1;
        } else {
            refusal_words(arr, words, sizeof words);
            if (words[0]) {
                pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero refused the Allocation: %s",
                                   words);
                json_decref(it->result);
                it->result = json_incref(arr);
            } else if (json_array_size(arr) < n_send) {
                pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1,
                                   "Xero returned %zu Allocations for %zu sent; will retry (the "
                                   "retry reads the credit note's allocations first)",
                                   json_array_size(arr), n_send);
            } else {
                json_t *result = result_of(cn_id, w, n_wanted, arr);
                pb__xero_item_ok(it, cn_id, result);
                json_decref(result);
            }
        }
    } else if (call.status == 404) {
        pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero has no credit note %s to allocate",
                           cn_id);
    } else if (call.status == 400 && call.response &&
               (root = json_loadb(call.response, call.response_len, 0, NULL)) != NULL &&
               json_is_array(json_object_get(root, "Elements"))) {
        refusal_words(json_object_get(root, "Elements"), words, sizeof words);
        pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero refused the Allocation: %s",
                           words[0] ? words : "ValidationException without a message");
        json_array_foreach(json_object_get(root, "Elements"), i, el) {
            json_decref(it->result);
            it->result = json_incref(el);
            break;
        }
    } else {
        pb__xero_describe_failure(&call, rc, &e, what, whole);
        pb__xero_item_fail_with(it, whole);
        is_whole = 1;
    }
    json_decref(root);
    pb_http_call_reset(&call);
    pb__xero_buf_free(&url);
    free(body);
    return is_whole;
}

enum pb_rc pb__xero_creditnote_allocate(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    struct xero_failure whole = {PB_OK, -1, ""};
    size_t n_whole = 0;

    for (size_t i = 0; i < n; i++) {
        struct pb_sink_item *it = &items[i];
        struct wanted w[XERO_ALLOCATIONS_MAX];
        size_t n_wanted = 0, n_found = 0;
        const char *cn_id;
        json_t *root = NULL;
        struct xero_buf path;
        int is_whole = 0;

        if (!read_document(it, &cn_id, w, &n_wanted))
            continue;
        pb__xero_buf_init(&path, 512);
        pb__xero_buf_adds(&path, "/CreditNotes/");
        pb__xero_buf_add_escaped(&path, cn_id);
        if (path.failed) {
            pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
            pb__xero_buf_free(&path);
            continue;
        }
        if (it->attempt > 1 && match_existing(c, ctx, it, path.data, cn_id, w, n_wanted, &root,
                                              &whole, &is_whole)) {
            n_whole += is_whole;
            json_decref(root);
            pb__xero_buf_free(&path);
            continue;
        }
        for (size_t k = 0; k < n_wanted; k++)
            n_found += w[k].found != NULL;
        if (n_found == n_wanted) {
            /* an earlier attempt took effect: done, nothing sent */
            json_t *result = result_of(cn_id, w, n_wanted, NULL);
            pb__xero_item_ok(it, cn_id, result);
            json_decref(result);
        } else {
            n_whole += send_allocations(c, ctx, it, path.data, cn_id, w, n_wanted, &whole);
        }
        json_decref(root);
        pb__xero_buf_free(&path);
    }
    if (n > 0 && n_whole == n)
        return pb_err_set(err, whole.rc, "%s", whole.message);
    return PB_OK;
}
