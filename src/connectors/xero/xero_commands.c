/*
 * connectors/xero/xero_commands.c: the commands the Xero sink executes, and
 * how each proves that it takes effect once.
 *
 *   contact.upsert  document: a Xero Contact. One GET /Contacts?where=
 *                   EmailAddress=="a" OR EmailAddress=="b" ... for the batch;
 *                   an item whose EmailAddress matches a contact
 *                   (case-insensitively) is done with that ContactID. An item
 *                   without EmailAddress is matched by Name instead (Xero
 *                   keeps contact names unique, so creating it again would
 *                   only fail). The rest go in one PUT
 *                   /Contacts?summarizeErrors=false, in item order; two items
 *                   of one batch with the same key create one contact, and
 *                   the second gets the first's outcome. A create refused
 *                   because the Name is taken (another worker created the
 *                   same customer between our look-up and our PUT) is
 *                   settled by a look-up by Name: the same email is ours,
 *                   another email is a permanent error that says so.
 *   invoice.create     document: a Xero Invoice, CreditNote, or Payment (on
 *   creditnote.create  an Invoice; for creditnote.refund on a CreditNote: a
 *   payment.create     cash refund of the credit). Items with attempt > 1 are
 *   creditnote.refund  first looked up by Reference (one GET /Invoices,
 *                      /CreditNotes or /Payments ?where=Reference=="r" OR
 *                      ...); a match is done, not created again. A payment
 *                      matches only when made on the same kind of document
 *                      (and the same one, when both name its id). The rest:
 *                      one PUT /Invoices (/CreditNotes, /Payments)
 *                      ?summarizeErrors=false. A document with no Reference
 *                      is sent with Reference = the item's source reference,
 *                      so that the look-up of a later attempt can find it.
 *   invoice.void       document: {"InvoiceID"} / {"CreditNoteID"}. POST
 *   creditnote.void    /Invoices/{id} {"Invoices":[{"InvoiceID","Status":
 *                      "VOIDED"}]} (/CreditNotes likewise); with attempt > 1,
 *                      GET the document first, and one already VOIDED is done.
 *   creditnote.allocate is in xero_credit.c.
 *
 * Every write carries Idempotency-Key "pb-" + SHA-256 over the command, the
 * idempotency keys of exactly the items in that write and the body
 * (xero_http.c), so an identical retried write is answered from Xero's
 * idempotency store, while a batch whose membership or documents changed (a
 * replay after a flow fix) gets a new key and relies on the look-up.
 * Bodies are serialised by pb_json_dumps_decimal() with pb__xero_decimal_keys,
 * so the exact decimal strings of the mapping ("10.99") go out as JSON numbers
 * and no double ever holds money.
 *
 * Documents are borrowed from the items and never modified; an envelope holds
 * references to them (or to a shallow copy when Reference has to be added).
 *
 * Rejected designs.
 *   - A look-up for every item on the first attempt too: it doubles the calls
 *     against a 60/minute budget to guard against something that cannot have
 *     happened yet (nothing was sent before attempt 1).
 *   - POST /Contacts (create-or-update by Name) for upserts: Xero matches on
 *     Name, not email, and would overwrite a different customer's record who
 *     shares a name.
 *   - One GET per item: 50 calls where one where-clause does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/json.h"
#include "xero_internal.h"

const char *const pb__xero_decimal_keys[] = {
    "UnitAmount", "Quantity", "LineAmount", "Amount",   "CurrencyRate",
    "DiscountRate", "TaxAmount", "SubTotal", "TotalTax", "Total",
    NULL,
};

/* What a command run shares between its steps. */
struct run {
    struct pb_connection *c;
    struct pb_call_ctx *ctx;
    const char *command;
    struct xero_failure failure;  /* the last failure that hit every item it touched */
    int failed_all;               /* `failure` was applied to a whole step's items */
};

static const char *doc_string(json_t *doc, const char *key)
{
    const char *s = json_string_value(json_object_get(doc, key));
    return s && s[0] ? s : NULL;
}

static int check_document(struct pb_sink_item *it, const char *what)
{
    if (json_is_object(it->document))
        return 1;
    pb__xero_item_fail(it, PB_ERR_MAPPING, -1, "the mapped document must be a JSON object (a "
                                               "Xero %s)", what);
    return 0;
}

static void fail_all(struct run *r, struct pb_sink_item **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pb__xero_item_fail_with(list[i], &r->failure);
    r->failed_all = 1;
}

/* PB_OK, or the whole-batch failure when every item ended with it. */
static enum pb_rc finish(struct run *r, struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    if (!r->failed_all)
        return PB_OK;
    for (size_t i = 0; i < n; i++)
        if (items[i].rc != r->failure.rc)
            return PB_OK;
    return pb_err_set(err, r->failure.rc, "%s", r->failure.message);
}

/* GET a where-clause look-up; returns the envelope array (borrowed from
 * *root) or NULL after failing every item of `list`. */
static json_t *lookup(struct run *r, const char *resource, const char *const *fields,
                      const char *const *values, size_t n_values, struct pb_sink_item **list,
                      size_t n_list, json_t **root)
{
    struct xero_request rq = {"GET", NULL, NULL, NULL};
    struct pb_http_call call;
    struct pb_err e = {0};
    char what[64];
    json_t *arr = NULL;
    enum pb_rc rc;
    char *path = pb__xero_where_path(resource, fields, values, n_values);

    *root = NULL;
    snprintf(what, sizeof what, "looking up %s by %s", resource, fields[0]);
    if (!path) {
        r->failure.rc = PB_ERR_PERMANENT;
        r->failure.retry_after_s = -1;
        snprintf(r->failure.message, sizeof r->failure.message,
                 "%s: the where-clause is too long", what);
        fail_all(r, list, n_list);
        return NULL;
    }
    rq.path = path;
    rc = pb__xero_call(r->c, r->ctx, &rq, &call, &e);
    if (rc) {
        pb__xero_describe_failure(&call, rc, &e, what, &r->failure);
        fail_all(r, list, n_list);
    } else {
        arr = pb__xero_parse_envelope(&call, resource, root, &r->failure);
        if (!arr)
            fail_all(r, list, n_list);
    }
    pb_http_call_reset(&call);
    free(path);
    return arr;
}

/* PUT/POST an envelope of `docs` for the items `sent` and apply the reply. */
static void write_envelope(struct run *r, const char *method, const char *path,
                           const char *resource, const char *id_key, json_t *docs,
                           struct pb_sink_item **sent, size_t n_sent)
{
    char key[XERO_IDEMPOTENCY_KEY_MAX];
    struct xero_request rq = {method, path, NULL, key};
    struct pb_http_call call;
    struct pb_err e = {0};
    json_t *envelope = json_object();
    char *body = NULL;
    enum pb_rc rc;

    if (envelope && json_object_set(envelope, resource, docs) == 0)
        body = pb_json_dumps_decimal(envelope, pb__xero_decimal_keys, 0);
    json_decref(envelope);
    if (!body) {
        r->failure.rc = PB_ERR_TRANSIENT;
        r->failure.retry_after_s = -1;
        snprintf(r->failure.message, sizeof r->failure.message,
                 "cannot serialise the %s request body (out of memory, or nested too deeply)",
                 resource);
        fail_all(r, sent, n_sent);
        return;
    }
    pb__xero_idempotency_key(r->command, sent, n_sent, body, key);
    rq.body = body;
    rc = pb__xero_call(r->c, r->ctx, &rq, &call, &e);
    if (pb__xero_apply_write_reply(&call, rc, &e, resource, id_key, sent, n_sent, &r->failure))
        r->failed_all = 1;
    pb_http_call_reset(&call);
    free(body);
}

/* ---- contact.upsert ---------------------------------------------------------------- */

/* What a contact is matched on: its email, else its name. */
struct contact_key {
    const char *field;            /* "EmailAddress" or "Name" */
    const char *value;            /* NULL: nothing to match on */
};

static struct contact_key contact_key(json_t *doc)
{
    struct contact_key k = {"EmailAddress", doc_string(doc, "EmailAddress")};
    if (!k.value) {
        k.field = "Name";
        k.value = doc_string(doc, "Name");
    }
    return k;
}

static int same_key(struct contact_key a, struct contact_key b)
{
    return a.value && b.value && strcmp(a.field, b.field) == 0 && strcasecmp(a.value, b.value) == 0;
}

enum pb_rc pb__xero_contact_upsert(struct pb_connection *c, struct pb_call_ctx *ctx,
                                   struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    struct run r = {c, ctx, "contact.upsert", {0, -1, ""}, 0};
    struct pb_sink_item *pending[XERO_BATCH_MAX], *leaders[XERO_BATCH_MAX];
    const char *fields[XERO_BATCH_MAX], *values[XERO_BATCH_MAX];
    size_t leader_of[XERO_BATCH_MAX];
    size_t np = 0, nv = 0, nl = 0;
    json_t *root = NULL, *found, *docs = NULL;

    for (size_t i = 0; i < n && i < XERO_BATCH_MAX; i++)
        if (check_document(&items[i], "Contact"))
            pending[np++] = &items[i];

    /* 1. one look-up by email (or name) for the batch */
    for (size_t i = 0; i < np; i++) {
        struct contact_key k = contact_key(pending[i]->document);
        int seen = 0;
        for (size_t j = 0; k.value && j < nv; j++)
            seen |= same_key(k, (struct contact_key){fields[j], values[j]});
        if (k.value && !seen) {
            fields[nv] = k.field;
            values[nv++] = k.value;
        }
    }
    if (nv > 0) {
        size_t kept = 0;
        found = lookup(&r, "Contacts", fields, values, nv, pending, np, &root);
        if (!found)
            goto out;
        for (size_t i = 0; i < np; i++) {
            struct contact_key k = contact_key(pending[i]->document);
            json_t *contact, *match = NULL;
            size_t j;
            json_array_foreach(found, j, contact) {
                struct contact_key have = {
                    k.field, json_string_value(json_object_get(contact, k.field))};
                if (same_key(k, have) && doc_string(contact, "ContactID")) {
                    match = contact;
                    break;
                }
            }
            if (match)
                pb__xero_item_ok(pending[i], doc_string(match, "ContactID"), match);
            else
                pending[kept++] = pending[i];
        }
        np = kept;
    }

    /* 2. create the rest; a repeated key in the batch follows its first item */
    docs = json_array();
    if (!docs) {
        r.failure = (struct xero_failure){PB_ERR_TRANSIENT, -1, "out of memory"};
        fail_all(&r, pending, np);
        goto out;
    }
    for (size_t i = 0; i < np; i++) {
        struct contact_key k = contact_key(pending[i]->document);
        leader_of[i] = SIZE_MAX;
        for (size_t j = 0; k.value && j < i; j++) {
            if (leader_of[j] == SIZE_MAX && same_key(k, contact_key(pending[j]->document))) {
                leader_of[i] = j;
                break;
            }
        }
        if (leader_of[i] == SIZE_MAX) {
            leaders[nl++] = pending[i];
            json_array_append(docs, pending[i]->document);
        }
    }
    if (nl > 0)
        write_envelope(&r, "PUT", "/Contacts?summarizeErrors=false", "Contacts", "ContactID",
                       docs, leaders, nl);
    /* 3. a create refused because the name is taken: another worker created
     * this customer between our look-up and our PUT (two events of one
     * customer in two batches), or a different customer has the name. Look
     * the names up: a contact with the same email is ours; otherwise say so. */
    {
        struct pb_sink_item *taken[XERO_BATCH_MAX];
        const char *names[XERO_BATCH_MAX], *nf[XERO_BATCH_MAX];
        size_t nt = 0;
        for (size_t i = 0; i < nl; i++)
            if (leaders[i]->rc == PB_ERR_PERMANENT &&
                strstr(leaders[i]->message, "is already assigned to another contact") &&
                doc_string(leaders[i]->document, "Name")) {
                taken[nt] = leaders[i];
                names[nt] = doc_string(leaders[i]->document, "Name");
                nf[nt++] = "Name";
            }
        if (nt > 0) {
            json_t *root2 = NULL, *byname;
            int failed_before = r.failed_all;
            byname = lookup(&r, "Contacts", nf, names, nt, taken, nt, &root2);
            r.failed_all = failed_before;
            for (size_t i = 0; byname && i < nt; i++) {
                const char *want = doc_string(taken[i]->document, "EmailAddress");
                json_t *contact;
                size_t j;
                json_array_foreach(byname, j, contact) {
                    const char *name = doc_string(contact, "Name");
                    const char *mail = doc_string(contact, "EmailAddress");
                    if (!name || strcasecmp(name, names[i]) != 0 || !doc_string(contact, "ContactID"))
                        continue;
                    if (!want || (mail && strcasecmp(mail, want) == 0))
                        pb__xero_item_ok(taken[i], doc_string(contact, "ContactID"), contact);
                    else
                        pb__xero_item_fail(taken[i], PB_ERR_PERMANENT, -1,
                                           "Xero already has a different contact named \"%s\" "
                                           "(email %s, not %s) and contact names must be unique: "
                                           "make the flow's contact Name unique, e.g. append the "
                                           "email", names[i], mail ? mail : "none", want);
                    break;
                }
            }
            json_decref(root2);
        }
    }
    for (size_t i = 0; i < np; i++) {
        struct pb_sink_item *it = pending[i], *lead;
        if (leader_of[i] == SIZE_MAX)
            continue;
        lead = pending[leader_of[i]];
        it->rc = lead->rc;
        memcpy(it->erp_id, lead->erp_id, sizeof it->erp_id);
        memcpy(it->message, lead->message, sizeof it->message);
        it->retry_after_s = lead->retry_after_s;
        json_decref(it->result);
        it->result = json_incref(lead->result);
        free(it->result_json);
        it->result_json = lead->result_json ? strdup(lead->result_json) : NULL;
    }
out:
    json_decref(docs);
    json_decref(root);
    return finish(&r, items, n, err);
}

/* ---- invoice.create / payment.create / creditnote.create / creditnote.refund ---------------- */

/* A command that creates records in one PUT and finds them by Reference on a
 * retry. For payments, `on` names the document paid (Invoice, or CreditNote
 * for a refund): a payment found by Reference is ours only when it is made
 * on the same kind of document (Xero's record has that member), and on the
 * same one when both name its id, so that an invoice's payment and a refund
 * that share a Reference never stand for each other. */
struct create_kind {
    const char *command;
    const char *resource;         /* envelope and path: "Invoices", "Payments", "CreditNotes" */
    const char *id_key;           /* "InvoiceID", "PaymentID", "CreditNoteID" */
    const char *what;             /* the document, for mapping errors */
    int match_type;               /* a found record must have the document's Type */
    const char *on;               /* payments: "Invoice" or "CreditNote"; else NULL */
    const char *on_id;            /* its id key */
};

static const struct create_kind CREATE_KINDS[] = {
    {"invoice.create", "Invoices", "InvoiceID", "Xero Invoice", 1, NULL, NULL},
    {"payment.create", "Payments", "PaymentID", "Xero Payment", 0, "Invoice", "InvoiceID"},
    {"creditnote.create", "CreditNotes", "CreditNoteID", "Xero CreditNote", 1, NULL, NULL},
    {"creditnote.refund", "Payments", "PaymentID", "Xero Payment with a CreditNote", 0,
     "CreditNote", "CreditNoteID"},
    {NULL, NULL, NULL, NULL, 0, NULL, NULL},
};

/* The Reference an item is known by in Xero: the document's, else the item's. */
static const char *item_reference(const struct pb_sink_item *it)
{
    const char *ref = doc_string(it->document, "Reference");
    return ref ? ref : (it->reference && it->reference[0] ? it->reference : NULL);
}

/* The id of the document a payment is made on ("Invoice.InvoiceID"), or NULL. */
static const char *paid_document_id(json_t *payment, const struct create_kind *k)
{
    return doc_string(json_object_get(payment, k->on), k->on_id);
}

/* Does a found record stand for this item? */
static int same_record(json_t *found, const struct pb_sink_item *it, const struct create_kind *k)
{
    const char *ref = json_string_value(json_object_get(found, "Reference"));
    const char *want = item_reference(it);
    const char *type = doc_string(it->document, "Type");
    if (!ref || !want || strcmp(ref, want) != 0 || !doc_string(found, k->id_key))
        return 0;
    /* an ACCPAY bill that happens to share the reference is not our ACCREC invoice */
    if (k->match_type && type && doc_string(found, "Type") &&
        strcmp(doc_string(found, "Type"), type))
        return 0;
    if (k->on) {
        const char *have = paid_document_id(found, k);
        const char *mine = paid_document_id(it->document, k);
        if (!json_is_object(json_object_get(found, k->on)))
            return 0; /* a payment on the other kind of document */
        if (have && mine && strcasecmp(have, mine) != 0)
            return 0; /* on another invoice or credit note */
    }
    return 1;
}

/* The document as sent: itself, or a shallow copy carrying Reference. */
static json_t *outgoing(struct pb_sink_item *it)
{
    json_t *copy;
    if (doc_string(it->document, "Reference") || !item_reference(it))
        return json_incref(it->document);
    copy = json_copy(it->document);
    if (copy && json_object_set_new(copy, "Reference", json_string(item_reference(it)))) {
        json_decref(copy);
        return NULL;
    }
    return copy;
}

/* The mapped document is what the command needs (else PB_ERR_MAPPING). */
static int check_create_document(struct pb_sink_item *it, const struct create_kind *k)
{
    json_t *on;
    if (!json_is_object(it->document)) {
        pb__xero_item_fail(it, PB_ERR_MAPPING, -1,
                           "the mapped document must be a JSON object (a %s)", k->what);
        return 0;
    }
    if (strcmp(k->command, "creditnote.refund") != 0)
        return 1;
    on = json_object_get(it->document, "CreditNote");
    if (json_object_get(it->document, "Invoice") ||
        !(doc_string(on, "CreditNoteID") || doc_string(on, "CreditNoteNumber"))) {
        pb__xero_item_fail(it, PB_ERR_MAPPING, -1,
                           "creditnote.refund needs a Payment with CreditNote.CreditNoteID (or "
                           "CreditNote.CreditNoteNumber) and no Invoice: a refund is paid out of "
                           "a credit note; use payment.create to pay an invoice");
        return 0;
    }
    return 1;
}

enum pb_rc pb__xero_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                           struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    const struct create_kind *k = CREATE_KINDS;
    struct run r = {c, ctx, items[0].command, {0, -1, ""}, 0};
    struct pb_sink_item *pending[XERO_BATCH_MAX], *sent[XERO_BATCH_MAX];
    const char *refs[XERO_BATCH_MAX], *ref_fields[XERO_BATCH_MAX];
    size_t np = 0, nr = 0, ns = 0;
    json_t *root = NULL, *found, *docs = NULL;

    while (k->command && strcmp(k->command, items[0].command) != 0)
        k++;
    if (!k->command)
        return pb_err_set(err, PB_ERR_INTERNAL, "no create command \"%s\"", items[0].command);
    for (size_t i = 0; i < n && i < XERO_BATCH_MAX; i++)
        if (check_create_document(&items[i], k))
            pending[np++] = &items[i];

    /* 1. a retried item may already exist: look it up by reference */
    for (size_t i = 0; i < np; i++) {
        const char *ref = item_reference(pending[i]);
        int seen = 0;
        if (pending[i]->attempt <= 1 || !ref)
            continue;
        for (size_t j = 0; j < nr; j++)
            seen |= strcmp(refs[j], ref) == 0;
        if (!seen) {
            ref_fields[nr] = "Reference";
            refs[nr++] = ref;
        }
    }
    if (nr > 0) {
        size_t kept = 0;
        found = lookup(&r, k->resource, ref_fields, refs, nr, pending, np, &root);
        if (!found)
            goto out;
        for (size_t i = 0; i < np; i++) {
            json_t *rec, *match = NULL;
            size_t j;
            if (pending[i]->attempt > 1) {
                json_array_foreach(found, j, rec) {
                    if (same_record(rec, pending[i], k)) {
                        match = rec;
                        break;
                    }
                }
            }
            if (match)
                pb__xero_item_ok(pending[i], doc_string(match, k->id_key), match);
            else
                pending[kept++] = pending[i];
        }
        np = kept;
    }

    /* 2. create the rest in one write */
    docs = json_array();
    for (size_t i = 0; docs && i < np; i++) {
        json_t *doc = outgoing(pending[i]);
        if (!doc || json_array_append_new(docs, doc)) {
            pb__xero_item_fail(pending[i], PB_ERR_TRANSIENT, -1, "out of memory");
            continue;
        }
        sent[ns++] = pending[i];
    }
    if (!docs) {
        r.failure = (struct xero_failure){PB_ERR_TRANSIENT, -1, "out of memory"};
        fail_all(&r, pending, np);
        goto out;
    }
    if (ns > 0) {
        char path[64];
        snprintf(path, sizeof path, "/%s?summarizeErrors=false", k->resource);
        write_envelope(&r, "PUT", path, k->resource, k->id_key, docs, sent, ns);
    }
out:
    json_decref(docs);
    json_decref(root);
    return finish(&r, items, n, err);
}

/* ---- invoice.void / creditnote.void ------------------------------------------------------ */

struct void_kind {
    const char *command;
    const char *resource;         /* "Invoices" | "CreditNotes" */
    const char *id_key;           /* "InvoiceID" | "CreditNoteID" */
    const char *what;             /* "invoice" | "credit note" */
    const char *document;         /* what the mapped document is, for mapping errors */
};

static const struct void_kind VOID_KINDS[] = {
    {"invoice.void", "Invoices", "InvoiceID", "invoice", "Invoice with an InvoiceID"},
    {"creditnote.void", "CreditNotes", "CreditNoteID", "credit note",
     "CreditNote with a CreditNoteID"},
    {NULL, NULL, NULL, NULL, NULL},
};

/* attempt > 1: 1 when the document is already VOIDED (item done), 0 to go
 * on, -1 when the item failed. */
static int already_voided(struct run *r, const struct void_kind *k, struct pb_sink_item *it,
                          const char *path, const char *id)
{
    struct xero_request rq = {"GET", path, NULL, NULL};
    struct pb_http_call call;
    struct pb_err e = {0};
    json_t *root = NULL, *arr, *doc;
    const char *status;
    char what[64];
    int result = 0;
    enum pb_rc rc = pb__xero_call(r->c, r->ctx, &rq, &call, &e);

    snprintf(what, sizeof what, "looking up the %s to void", k->what);
    if (call.status == 404) {
        pb__xero_item_fail(it, PB_ERR_PERMANENT, -1, "Xero has no %s %s to void", k->what, id);
        result = -1;
    } else if (rc) {
        pb__xero_describe_failure(&call, rc, &e, what, &r->failure);
        fail_all(r, &it, 1);
        result = -1;
    } else if ((arr = pb__xero_parse_envelope(&call, k->resource, &root, &r->failure)) == NULL) {
        fail_all(r, &it, 1);
        result = -1;
    } else {
        doc = json_array_get(arr, 0);
        status = json_string_value(json_object_get(doc, "Status"));
        if (status && strcmp(status, "VOIDED") == 0) {
            pb__xero_item_ok(it, id, doc);
            result = 1;
        }
    }
    json_decref(root);
    pb_http_call_reset(&call);
    return result;
}

enum pb_rc pb__xero_void(struct pb_connection *c, struct pb_call_ctx *ctx,
                         struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    const struct void_kind *k = VOID_KINDS;
    struct run r = {c, ctx, items[0].command, {0, -1, ""}, 0};

    while (k->command && strcmp(k->command, items[0].command) != 0)
        k++;
    if (!k->command)
        return pb_err_set(err, PB_ERR_INTERNAL, "no void command \"%s\"", items[0].command);
    for (size_t i = 0; i < n; i++) {
        struct pb_sink_item *it = &items[i];
        const char *id;
        struct xero_buf path;
        json_t *docs;

        if (!check_document(it, k->document))
            continue;
        id = doc_string(it->document, k->id_key);
        if (!id || strlen(id) > 64) {
            pb__xero_item_fail(it, PB_ERR_MAPPING, -1,
                               "%s needs the document's %s (a Xero %s id of at most 64 "
                               "characters)",
                               k->command, k->id_key, k->what);
            continue;
        }
        pb__xero_buf_init(&path, 512);
        pb__xero_buf_adds(&path, "/");
        pb__xero_buf_adds(&path, k->resource);
        pb__xero_buf_adds(&path, "/");
        pb__xero_buf_add_escaped(&path, id);
        if (path.failed) {
            pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
            pb__xero_buf_free(&path);
            continue;
        }
        if (it->attempt > 1 && already_voided(&r, k, it, path.data, id) != 0) {
            pb__xero_buf_free(&path);
            continue;
        }
        docs = json_pack("[{s:s,s:s}]", k->id_key, id, "Status", "VOIDED");
        if (!docs) {
            pb__xero_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        } else {
            write_envelope(&r, "POST", path.data, k->resource, k->id_key, docs, &it, 1);
            json_decref(docs);
        }
        pb__xero_buf_free(&path);
    }
    return finish(&r, items, n, err);
}
