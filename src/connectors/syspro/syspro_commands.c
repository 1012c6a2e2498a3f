/*
 * connectors/syspro/syspro_commands.c: the commands the SYSPRO sink
 * executes, and how each proves that it takes effect once.
 *
 * Every command takes one item (max_batch 1) whose document is a JSON object
 * a flow produced; its members are SYSPRO element names and become XML by
 * the rules of syspro_xml.c. docs/connectors.md ("syspro") lists the shapes.
 *
 *   customer.ensure    Query (customer_query, ARSQRY) by Customer; when the
 *                      customer is missing, Setup/Add (customer_setup,
 *                      ARSSCS) with the document's members. A found customer
 *                      is not updated. erp_id = the customer code.
 *   stock.check        Query (stock_query, INVQRY) by StockCode: PB_OK with
 *                      erp_id = the code, or PB_ERR_PERMANENT in SYSPRO's words.
 *   salesorder.create  Transaction/Post (sales_order, SORTOI) of one order:
 *                      OrderHeader (OrderActionType A, Customer,
 *                      CustomerPoNumber = the document's or the item's
 *                      reference, then the other members in order) and
 *                      OrderDetails (Lines, each a StockLine, NonStockedLine,
 *                      FreightLine, MiscChargeLine or CommentLine with
 *                      LineActionType A and CustomerPoLine 1..n). Hold: true
 *                      posts it with the OrderStatus parameter
 *                      settings.hold_order_status; HoldReason adds a comment
 *                      line. erp_id = the SalesOrder of the reply.
 *   arpayment.post     Transaction/Post (ar_payment, ARSTPY) of one Payment
 *                      (Customer, PaymentType, PaymentValue, Bank, Reference,
 *                      then the rest, InvoiceToPay included) with PostingPeriod
 *                      settings.posting_period, IgnoreWarnings N,
 *                      ApplyIfEntireDocumentValid Y, ValidateOnly N. erp_id =
 *                      "TrnYear/TrnMonth/Journal/Entry" of the reply.
 *   creditnote.create  Transaction/Post (credit_note, ARSTIN) of one AR
 *                      document of DocumentType settings.credit_note_document_type
 *                      ("C"), Customer, Reference, InvoiceValue and the rest
 *                      (e.g. the OriginalDocument it credits). erp_id = the
 *                      credit note's Invoice number.
 *
 * Exactly once. An item with attempt > 1 (or every item with
 * lookup_before_create "always") is looked up by its reference before
 * anything is posted, since an earlier try may have posted with its reply
 * lost:
 *   sales orders   Query sales_order_query by Customer + CustomerPoNumber
 *   payments       Query customer_query with IncludeTransactions and
 *   credit notes   TransactionReference: a transaction of the customer whose
 *                  DocumentType (P, or the credit note type) and Reference
 *                  match
 * A record found is the item's result, with "existing": true.
 * And a refusal is settled by the same look-up: when SYSPRO refuses a post
 * (a business error), the connector looks the record up before reporting
 * the refusal. If it exists, the refusal was SYSPRO's duplicate check (a
 * CustomerPoNumber already on file: the Opayo transaction is already in the
 * ERP, entered by hand or by an earlier run) and the item succeeds with the
 * existing record; "refusal" in the result keeps SYSPRO's words. This does
 * not depend on the wording of any message. customer.ensure settles a
 * refused Setup/Add (two workers creating one customer) the same way.
 *
 * Outcomes: SYSPRO's refusal is PB_ERR_PERMANENT with its words ("Stock code
 * 'XYZ' not found"); a document that cannot be turned into the business
 * object is PB_ERR_MAPPING; network, 5xx, a refused logon and a reply that
 * is not XML (or lacks the created record's key) are PB_ERR_TRANSIENT, and
 * the look-up makes the retry safe. A look-up that SYSPRO refuses for another
 * reason than "not found" (the object is not licensed, say) is permanent:
 * without the look-up a retry could post twice.
 *
 * Documents are borrowed from the items and never modified.
 *
 * Rejected designs.
 *   - Looking every order up before its first post: a query per order on the
 *     hot path, against a server that posts slowly, to guard against what
 *     SYSPRO's own duplicate check and the refusal look-up already catch.
 *     lookup_before_create "always" is there for sites whose SYSPRO is set
 *     to allow duplicate customer purchase order numbers.
 *   - Matching SYSPRO's error texts to recognise a duplicate: they differ by
 *     version and language; the look-up asks the question directly.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/pan.h"
#include "syspro_internal.h"

#define LINES_MAX 1000
#define CODE_MAX 128

/* What a command run shares between its steps. */
struct run {
    struct pb_connection *c;
    struct syspro_state *st;
    struct pb_call_ctx *ctx;
    struct pb_sink_item *it;
    struct pb_err *err;
    enum pb_rc whole; /* a failure of a call itself (logon, network), or PB_OK */
};

/* ---- item outcomes ------------------------------------------------------------------- */

void pb__syspro_item_ok(struct pb_sink_item *it, const char *erp_id, json_t *result_taken)
{
    it->rc = PB_OK;
    snprintf(it->erp_id, sizeof it->erp_id, "%s", erp_id ? erp_id : "");
    it->message[0] = '\0';
    it->retry_after_s = -1;
    json_decref(it->result);
    it->result = result_taken;
}

void pb__syspro_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                          const char *fmt, ...)
{
    va_list ap;
    it->rc = rc;
    it->erp_id[0] = '\0';
    va_start(ap, fmt);
    vsnprintf(it->message, sizeof it->message, fmt, ap);
    va_end(ap);
    pb_pan_redact(it->message, strlen(it->message));
    it->retry_after_s = retry_after_s;
}

/* ---- documents ------------------------------------------------------------------------- */

/* A member of the document, its name compared ignoring case. */
static json_t *member(json_t *doc, const char *key)
{
    const char *k;
    json_t *v;
    json_t *exact = json_object_get(doc, key);
    if (exact)
        return exact;
    json_object_foreach(doc, k, v)
    {
        if (strcasecmp(k, key) == 0)
            return v;
    }
    return NULL;
}

/* A string or integer member as text into buf; NULL when absent or empty. */
static const char *member_text(json_t *doc, const char *key, char *buf, size_t len)
{
    json_t *v = member(doc, key);
    buf[0] = '\0';
    if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return buf[0] ? buf : NULL;
}

/* Plain decimal text: -?digits(.digits)? */
static int decimal_ok(const char *s)
{
    const char *p = s;
    if (*p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return 0;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}

static int check_document(struct pb_sink_item *it, const char *what)
{
    if (json_is_object(it->document))
        return 1;
    pb__syspro_item_fail(it, PB_ERR_MAPPING, -1, "the mapped document must be a JSON object (%s)",
                         what);
    return 0;
}

/* The reference the record is known by: the document's member, else the item's. */
static const char *reference_of(struct pb_sink_item *it, const char *key, char *buf, size_t len)
{
    if (member_text(it->document, key, buf, len))
        return buf;
    if (it->reference && it->reference[0]) {
        snprintf(buf, len, "%s", it->reference);
        return buf;
    }
    return NULL;
}

/* <Root><Parameters> defaults, then the settings' overrides. */
xmlDocPtr pb__syspro_parameters_doc(const char *root_name, const char *const *defaults,
                                    json_t *overrides, xmlNodePtr *params_out)
{
    xmlNodePtr root, params;
    xmlDocPtr doc = pb__syspro_xml_new(root_name, &root);
    const char *key;
    json_t *v;

    if (!doc)
        return NULL;
    params = xmlNewChild(root, NULL, BAD_CAST "Parameters", NULL);
    for (size_t i = 0; params && defaults && defaults[i]; i += 2)
        pb__syspro_xml_set(params, defaults[i], defaults[i + 1]);
    json_object_foreach(overrides, key, v)
    {
        char text[64];
        if (json_is_string(v))
            pb__syspro_xml_set(params, key, json_string_value(v));
        else if (json_is_integer(v)) {
            snprintf(text, sizeof text, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            pb__syspro_xml_set(params, key, text);
        } else if (json_is_boolean(v))
            pb__syspro_xml_set(params, key, json_is_true(v) ? "Y" : "N");
    }
    if (!params) {
        xmlFreeDoc(doc);
        return NULL;
    }
    *params_out = params;
    return doc;
}

/* Serialise; NULL fails the item (out of memory or too large). */
static char *dump_or_fail(struct run *r, xmlDocPtr doc, const char *what)
{
    char *s = doc ? pb__syspro_xml_dump(doc) : NULL;
    if (!s)
        pb__syspro_item_fail(r->it, PB_ERR_MAPPING, -1,
                             "cannot build the %s XML (out of memory, or larger than %u bytes)",
                             what, SYSPRO_XML_MAX);
    return s;
}

/* ---- calls ------------------------------------------------------------------------------- */

/* One call; 1 when SYSPRO answered (reply filled), 0 when the item failed. */
static int call(struct run *r, enum syspro_op op, const char *business_object,
                const char *xml_parameters, const char *xml_in, struct syspro_reply *reply)
{
    struct syspro_request rq = {op, business_object, xml_parameters, xml_in};
    struct pb_err e = {0};
    enum pb_rc rc;

    r->ctx->retry_after_s = -1;
    rc = pb__syspro_call(r->c, r->ctx, &rq, reply, &e);
    if (rc == PB_OK)
        return 1;
    pb__syspro_item_fail(r->it, rc, r->ctx->retry_after_s, "%s", e.msg);
    if (rc != PB_ERR_PERMANENT) {
        r->whole = rc;
        pb_err_set(r->err, rc, "%s", r->it->message);
    }
    return 0;
}

static enum pb_rc finish(struct run *r)
{
    return r->whole;
}

int pb__syspro_says_not_found(const char *message)
{
    static const char *const signs[] = {
        "not found", "not on file", "does not exist", "no record", "is invalid", NULL,
    };
    char low[SYSPRO_MESSAGE_MAX];
    size_t i;
    for (i = 0; message[i] && i + 1 < sizeof low; i++)
        low[i] = (char)tolower((unsigned char)message[i]);
    low[i] = '\0';
    for (i = 0; signs[i]; i++)
        if (strstr(low, signs[i]))
            return 1;
    return 0;
}

enum lookup { FOUND = 1, NOT_FOUND = 0, FAILED = -1 };

/* Does element n have a child `name` whose text equals `want` (ignoring
 * case and surrounding blanks)? */
static int child_equals(xmlNodePtr n, const char *name, const char *want)
{
    char text[CODE_MAX * 2];
    xmlNodePtr ch = pb__syspro_child(n, name);
    return ch && strcasecmp(pb__syspro_text(ch, text, sizeof text), want) == 0;
}

/* First element below `from` for which match() holds (depth first). */
static xmlNodePtr find_element(xmlNodePtr from, int (*match)(xmlNodePtr, const void *),
                               const void *arg)
{
    for (xmlNodePtr n = from ? from->children : NULL; n; n = n->next) {
        xmlNodePtr hit;
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (match(n, arg))
            return n;
        if ((hit = find_element(n, match, arg)) != NULL)
            return hit;
    }
    return NULL;
}

/* The text of the first element `name` below `from` that has no element
 * children (so a container of that name is skipped). */
static const char *find_leaf_text(xmlNodePtr from, const char *name, char *buf, size_t len)
{
    buf[0] = '\0';
    for (xmlNodePtr n = from ? from->children : NULL; n; n = n->next) {
        int leaf = 1;
        if (n->type != XML_ELEMENT_NODE)
            continue;
        for (xmlNodePtr ch = n->children; ch; ch = ch->next)
            leaf &= ch->type != XML_ELEMENT_NODE;
        if (leaf && xmlStrcasecmp(n->name, BAD_CAST name) == 0) {
            pb__syspro_text(n, buf, len);
            if (buf[0])
                return buf;
        }
        if (!leaf && find_leaf_text(n, name, buf, len))
            return buf;
    }
    return NULL;
}

/* Query and decide found / not found / failed (the item failed). */
static enum lookup query(struct run *r, const char *business_object, xmlDocPtr q, const char *what,
                         struct syspro_reply *reply)
{
    char *xml_in = dump_or_fail(r, q, "query");
    int answered;
    if (!xml_in)
        return FAILED;
    answered = call(r, SYSPRO_QUERY, business_object, NULL, xml_in, reply);
    free(xml_in);
    if (!answered)
        return FAILED;
    if (reply->refused) {
        if (pb__syspro_says_not_found(reply->message))
            return NOT_FOUND;
        pb__syspro_item_fail(r->it, PB_ERR_PERMANENT, -1,
                             "SYSPRO refused the look-up of %s (%s): %s; without it a retry "
                             "could post twice, so nothing was posted",
                             what, business_object, reply->message);
        return FAILED;
    }
    return FOUND; /* the caller checks that the record is in the reply */
}

/* ---- customers ------------------------------------------------------------------------- */

struct key_match {
    const char *name;
    const char *value;
};

static int has_key(xmlNodePtr n, const void *arg)
{
    const struct key_match *k = arg;
    char text[CODE_MAX * 2];
    /* an element <Customer> holding only the code, or any element with such a child */
    if (xmlStrcasecmp(n->name, BAD_CAST k->name) == 0 && !pb__syspro_child(n, k->name)) {
        int leaf = 1;
        for (xmlNodePtr ch = n->children; ch; ch = ch->next)
            leaf &= ch->type != XML_ELEMENT_NODE;
        return leaf && strcasecmp(pb__syspro_text(n, text, sizeof text), k->value) == 0;
    }
    return 0;
}

/* Query a customer: FOUND (the reply names it), NOT_FOUND, FAILED. With
 * `reference`, its transactions of that Reference are asked for too
 * (IncludeTransactions + TransactionReference, so that a customer with years
 * of history, such as one cash-sale customer for every web order, does not
 * answer with all of it). */
static enum lookup query_customer(struct run *r, const char *code, const char *reference,
                                  struct syspro_reply *reply)
{
    xmlNodePtr root, key, opt;
    xmlDocPtr q = pb__syspro_xml_new("Query", &root);
    struct key_match k = {"Customer", code};
    char what[CODE_MAX + 32];
    enum lookup found;

    if (q) {
        key = xmlNewChild(root, NULL, BAD_CAST "Key", NULL);
        opt = xmlNewChild(root, NULL, BAD_CAST "Option", NULL);
        if (key)
            xmlNewTextChild(key, NULL, BAD_CAST "Customer", BAD_CAST code);
        if (opt)
            xmlNewTextChild(opt, NULL, BAD_CAST "IncludeTransactions",
                            BAD_CAST(reference ? "Y" : "N"));
        if (opt && reference)
            xmlNewTextChild(opt, NULL, BAD_CAST "TransactionReference", BAD_CAST reference);
    }
    snprintf(what, sizeof what, "customer '%s'", code);
    found = query(r, r->st->bo.customer_query, q, what, reply);
    if (q)
        xmlFreeDoc(q);
    if (found == FOUND && !find_element(xmlDocGetRootElement(reply->doc), has_key, &k) &&
        !has_key(xmlDocGetRootElement(reply->doc), &k))
        found = NOT_FOUND;
    return found;
}

enum pb_rc pb__syspro_customer_ensure(struct pb_connection *c, struct pb_call_ctx *ctx,
                                      struct pb_sink_item *it, struct pb_err *err)
{
    static const char *const skip[] = {"Customer", NULL};
    static const char *const defaults[] = {"ValidateOnly", "N", NULL};
    struct run r = {c, pb__syspro_state(c), ctx, it, err, PB_OK};
    struct syspro_reply reply = {0};
    char code[CODE_MAX];
    xmlNodePtr root, item, key, params;
    xmlDocPtr in = NULL, pdoc = NULL;
    char *xml_in = NULL, *xml_params = NULL;
    enum lookup found;
    struct pb_err e = {0};

    if (!check_document(it, "customer.ensure: {\"Customer\": code, \"Name\": ..., ...}"))
        return PB_OK;
    if (!member_text(it->document, "Customer", code, sizeof code)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "customer.ensure needs the document's Customer (the SYSPRO customer "
                             "code, text of at most %d characters)",
                             CODE_MAX - 1);
        return PB_OK;
    }
    found = query_customer(&r, code, NULL, &reply);
    if (found == FAILED)
        goto out;
    if (found == FOUND) {
        json_t *res = json_pack("{s:s,s:b,s:o}", "Customer", code, "created", 0, "record",
                                pb__syspro_element_json(xmlDocGetRootElement(reply.doc)));
        pb__syspro_item_ok(it, code, res);
        goto out;
    }
    pb__syspro_reply_free(&reply);

    in = pb__syspro_xml_new("SetupArCustomer", &root);
    item = in ? xmlNewChild(root, NULL, BAD_CAST "Item", NULL) : NULL;
    key = item ? xmlNewChild(item, NULL, BAD_CAST "Key", NULL) : NULL;
    if (!key || !xmlNewTextChild(key, NULL, BAD_CAST "Customer", BAD_CAST code)) {
        pb__syspro_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        goto out;
    }
    if (pb__syspro_xml_add_members(item, it->document, skip, "customer.ensure", &e)) {
        pb__syspro_item_fail(it, e.rc, -1, "%s", e.msg);
        goto out;
    }
    pdoc = pb__syspro_parameters_doc("SetupArCustomer", defaults, r.st->params_customer_setup,
                                     &params);
    if (!(xml_in = dump_or_fail(&r, in, "customer")) ||
        !(xml_params = dump_or_fail(&r, pdoc, "customer parameters")))
        goto out;
    if (!call(&r, SYSPRO_SETUP_ADD, r.st->bo.customer_setup, xml_params, xml_in, &reply))
        goto out;
    if (reply.refused) {
        char refusal[SYSPRO_MESSAGE_MAX];
        snprintf(refusal, sizeof refusal, "%s", reply.message);
        pb__syspro_reply_free(&reply);
        /* two workers creating one customer: the other one won */
        found = query_customer(&r, code, NULL, &reply);
        if (found == FOUND) {
            json_t *res =
                json_pack("{s:s,s:b,s:s,s:o}", "Customer", code, "created", 0, "refusal", refusal,
                          "record", pb__syspro_element_json(xmlDocGetRootElement(reply.doc)));
            pb__syspro_item_ok(it, code, res);
        } else if (found == NOT_FOUND) {
            pb__syspro_item_fail(it, PB_ERR_PERMANENT, -1,
                                 "SYSPRO refused to set up customer '%s' (%s): %s", code,
                                 r.st->bo.customer_setup, refusal);
        }
        goto out;
    }
    pb__syspro_item_ok(it, code,
                       json_pack("{s:s,s:b,s:o}", "Customer", code, "created", 1, "reply",
                                 pb__syspro_element_json(xmlDocGetRootElement(reply.doc))));
out:
    pb__syspro_reply_free(&reply);
    if (in)
        xmlFreeDoc(in);
    if (pdoc)
        xmlFreeDoc(pdoc);
    free(xml_in);
    free(xml_params);
    return finish(&r);
}

/* ---- stock codes ---------------------------------------------------------------------------- */

enum pb_rc pb__syspro_stock_check(struct pb_connection *c, struct pb_call_ctx *ctx,
                                  struct pb_sink_item *it, struct pb_err *err)
{
    struct run r = {c, pb__syspro_state(c), ctx, it, err, PB_OK};
    struct syspro_reply reply = {0};
    char code[CODE_MAX], what[CODE_MAX + 32];
    xmlNodePtr root, key;
    xmlDocPtr q;
    struct key_match k = {"StockCode", code};
    enum lookup found;

    if (!check_document(it, "stock.check: {\"StockCode\": code}"))
        return PB_OK;
    if (!member_text(it->document, "StockCode", code, sizeof code)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1, "stock.check needs the document's StockCode");
        return PB_OK;
    }
    q = pb__syspro_xml_new("Query", &root);
    key = q ? xmlNewChild(root, NULL, BAD_CAST "Key", NULL) : NULL;
    if (key)
        xmlNewTextChild(key, NULL, BAD_CAST "StockCode", BAD_CAST code);
    snprintf(what, sizeof what, "stock code '%s'", code);
    found = query(&r, r.st->bo.stock_query, q, what, &reply);
    if (q)
        xmlFreeDoc(q);
    if (found == FOUND && find_element(xmlDocGetRootElement(reply.doc), has_key, &k))
        pb__syspro_item_ok(it, code, pb__syspro_element_json(xmlDocGetRootElement(reply.doc)));
    else if (found != FAILED)
        pb__syspro_item_fail(it, PB_ERR_PERMANENT, -1, "%s",
                             reply.refused && reply.message[0] ? reply.message
                                                               : "SYSPRO has no such stock code");
    pb__syspro_reply_free(&reply);
    return finish(&r);
}

/* ---- sales orders -----------------------------------------------------------------------------
 */

struct order_match {
    const char *customer;
    const char *po;
};

static int is_order(xmlNodePtr n, const void *arg)
{
    const struct order_match *m = arg;
    char text[CODE_MAX];
    xmlNodePtr so = pb__syspro_child(n, "SalesOrder");
    if (!so || !pb__syspro_text(so, text, sizeof text)[0])
        return 0;
    if (!child_equals(n, "CustomerPoNumber", m->po))
        return 0;
    /* a reply that names the customer must name ours */
    return !pb__syspro_child(n, "Customer") || child_equals(n, "Customer", m->customer);
}

/* FOUND: the order, erp_id and result set on the item. */
static enum lookup find_order(struct run *r, const char *customer, const char *po,
                              const char *refusal)
{
    static const char *const options[] = {
        "IncludeStockedLines", "IncludeNonStockedLines", "IncludeFreightLines",
        "IncludeMiscLines",    "IncludeCommentLines",    NULL,
    };
    struct syspro_reply reply = {0};
    struct order_match m = {customer, po};
    xmlNodePtr root, key, opt, order;
    xmlDocPtr q = pb__syspro_xml_new("Query", &root);
    char what[2 * CODE_MAX], so[CODE_MAX];
    enum lookup found;

    if (q) {
        key = xmlNewChild(root, NULL, BAD_CAST "Key", NULL);
        opt = xmlNewChild(root, NULL, BAD_CAST "Option", NULL);
        if (key) {
            xmlNewTextChild(key, NULL, BAD_CAST "Customer", BAD_CAST customer);
            xmlNewTextChild(key, NULL, BAD_CAST "CustomerPoNumber", BAD_CAST po);
        }
        for (size_t i = 0; opt && options[i]; i++)
            xmlNewTextChild(opt, NULL, BAD_CAST options[i], BAD_CAST "N");
    }
    snprintf(what, sizeof what, "sales orders of customer '%s' by CustomerPoNumber '%s'", customer,
             po);
    found = query(r, r->st->bo.sales_order_query, q, what, &reply);
    if (q)
        xmlFreeDoc(q);
    if (found == FOUND) {
        root = xmlDocGetRootElement(reply.doc);
        order = is_order(root, &m) ? root : find_element(root, is_order, &m);
        if (!order) {
            found = NOT_FOUND;
        } else {
            json_t *res =
                json_pack("{s:s,s:s,s:s,s:b,s:o}", "SalesOrder",
                          pb__syspro_text(pb__syspro_child(order, "SalesOrder"), so, sizeof so),
                          "Customer", customer, "CustomerPoNumber", po, "existing", 1, "record",
                          pb__syspro_element_json(order));
            if (res && refusal)
                json_object_set_new(res, "refusal", json_string(refusal));
            pb__syspro_item_ok(r->it, so, res);
        }
    }
    pb__syspro_reply_free(&reply);
    return found;
}

static const char *const line_types[] = {
    "StockLine", "NonStockedLine", "FreightLine", "MiscChargeLine", "CommentLine", NULL,
};

/* OrderDetails from the document's Lines (+ a hold comment). */
static int add_lines(struct run *r, xmlNodePtr details, json_t *lines, const char *hold_reason)
{
    static const char *const skip[] = {"LineType", "LineActionType", "CustomerPoLine", NULL};
    struct pb_err e = {0};
    size_t i, n = json_array_size(lines);
    json_t *line;

    json_array_foreach(lines, i, line)
    {
        char type[32], path[64], po_line[32];
        const char *t;
        int known = 0;
        xmlNodePtr el;

        snprintf(path, sizeof path, "salesorder.create.Lines[%zu]", i);
        if (!json_is_object(line)) {
            pb__syspro_item_fail(r->it, PB_ERR_MAPPING, -1, "%s: must be an object", path);
            return 0;
        }
        t = member_text(line, "LineType", type, sizeof type);
        if (!t)
            t = "StockLine";
        for (size_t k = 0; line_types[k]; k++)
            if (strcasecmp(line_types[k], t) == 0) {
                t = line_types[k];
                known = 1;
            }
        if (!known) {
            pb__syspro_item_fail(r->it, PB_ERR_MAPPING, -1,
                                 "%s.LineType: \"%.32s\" is not StockLine, NonStockedLine, "
                                 "FreightLine, MiscChargeLine or CommentLine",
                                 path, type);
            return 0;
        }
        el = xmlNewChild(details, NULL, BAD_CAST t, NULL);
        if (!el || !member_text(line, "CustomerPoLine", po_line, sizeof po_line))
            snprintf(po_line, sizeof po_line, "%zu", i + 1);
        if (!el || !xmlNewTextChild(el, NULL, BAD_CAST "CustomerPoLine", BAD_CAST po_line) ||
            !xmlNewTextChild(el, NULL, BAD_CAST "LineActionType", BAD_CAST "A")) {
            pb__syspro_item_fail(r->it, PB_ERR_TRANSIENT, -1, "out of memory");
            return 0;
        }
        if (pb__syspro_xml_add_members(el, line, skip, path, &e)) {
            pb__syspro_item_fail(r->it, e.rc, -1, "%s", e.msg);
            return 0;
        }
    }
    if (hold_reason) {
        char text[32], comment[300];
        xmlNodePtr el = xmlNewChild(details, NULL, BAD_CAST "CommentLine", NULL);
        snprintf(text, sizeof text, "%zu", n + 1);
        snprintf(comment, sizeof comment, "On hold: %s", hold_reason);
        if (!el || !xmlNewTextChild(el, NULL, BAD_CAST "CustomerPoLine", BAD_CAST text) ||
            !xmlNewTextChild(el, NULL, BAD_CAST "LineActionType", BAD_CAST "A") ||
            !xmlNewTextChild(el, NULL, BAD_CAST "Comment", BAD_CAST comment)) {
            pb__syspro_item_fail(r->it, PB_ERR_TRANSIENT, -1, "out of memory");
            return 0;
        }
    }
    return 1;
}

enum pb_rc pb__syspro_salesorder_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        struct pb_sink_item *it, struct pb_err *err)
{
    static const char *const skip[] = {
        "Customer", "CustomerPoNumber", "OrderActionType", "Lines", "Hold", "HoldReason", NULL,
    };
    static const char *const defaults[] = {
        "Process",
        "IMPORT",
        "InBoxMsgReqd",
        "N",
        "AllowNonStockItems",
        "Y",
        "AcceptEarlierShipDate",
        "N",
        "IgnoreWarnings",
        "N",
        "AllowZeroPrice",
        "Y",
        "AlwaysUsePriceEntered",
        "Y",
        "ShipFromDefaultBin",
        "Y",
        "AllowDuplicateOrderNumbers",
        "N",
        "ValidateOnly",
        "N",
        NULL,
    };
    struct run r = {c, pb__syspro_state(c), ctx, it, err, PB_OK};
    struct syspro_reply reply = {0};
    char customer[CODE_MAX], po[CODE_MAX], reason[256], so[CODE_MAX];
    const char *hold_reason = NULL;
    json_t *lines, *hold;
    xmlNodePtr root, orders, header, details, params;
    xmlDocPtr in = NULL, pdoc = NULL;
    char *xml_in = NULL, *xml_params = NULL;
    struct pb_err e = {0};
    int held;

    if (!check_document(it, "salesorder.create: {\"Customer\", \"CustomerPoNumber\", ..., "
                            "\"Lines\": [...]}"))
        return PB_OK;
    if (!member_text(it->document, "Customer", customer, sizeof customer)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "salesorder.create needs the document's Customer (the SYSPRO "
                             "customer code)");
        return PB_OK;
    }
    if (!reference_of(it, "CustomerPoNumber", po, sizeof po)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "salesorder.create needs CustomerPoNumber (the document's, or the "
                             "step's reference): it is how a retry finds the order");
        return PB_OK;
    }
    lines = member(it->document, "Lines");
    if (!json_is_array(lines) || json_array_size(lines) == 0 ||
        json_array_size(lines) > LINES_MAX) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "salesorder.create needs Lines: an array of 1 to %d line objects",
                             LINES_MAX);
        return PB_OK;
    }
    hold = member(it->document, "Hold");
    if (hold && !json_is_boolean(hold) && !json_is_null(hold)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "salesorder.create.Hold must be true or false");
        return PB_OK;
    }
    held = json_is_true(hold);
    if (held)
        hold_reason = member_text(it->document, "HoldReason", reason, sizeof reason);

    /* 1. an earlier try may have posted it */
    if (it->attempt > 1 || r.st->lookup_always) {
        enum lookup found = find_order(&r, customer, po, NULL);
        if (found != NOT_FOUND)
            goto out;
    }

    /* 2. the order */
    in = pb__syspro_xml_new("SalesOrders", &root);
    orders = in ? xmlNewChild(root, NULL, BAD_CAST "Orders", NULL) : NULL;
    header = orders ? xmlNewChild(orders, NULL, BAD_CAST "OrderHeader", NULL) : NULL;
    if (!header || !xmlNewTextChild(header, NULL, BAD_CAST "OrderActionType", BAD_CAST "A") ||
        !xmlNewTextChild(header, NULL, BAD_CAST "Customer", BAD_CAST customer) ||
        !xmlNewTextChild(header, NULL, BAD_CAST "CustomerPoNumber", BAD_CAST po)) {
        pb__syspro_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        goto out;
    }
    if (pb__syspro_xml_add_members(header, it->document, skip, "salesorder.create", &e)) {
        pb__syspro_item_fail(it, e.rc, -1, "%s", e.msg);
        goto out;
    }
    details = xmlNewChild(orders, NULL, BAD_CAST "OrderDetails", NULL);
    if (!details) {
        pb__syspro_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        goto out;
    }
    if (!add_lines(&r, details, lines, hold_reason))
        goto out;
    pdoc = pb__syspro_parameters_doc("SalesOrders", defaults, r.st->params_sales_order, &params);
    if (pdoc && held)
        pb__syspro_xml_set(params, "OrderStatus", r.st->hold_order_status);
    if (!(xml_in = dump_or_fail(&r, in, "sales order")) ||
        !(xml_params = dump_or_fail(&r, pdoc, "sales order parameters")))
        goto out;
    if (!call(&r, SYSPRO_TRANSACTION_POST, r.st->bo.sales_order, xml_params, xml_in, &reply))
        goto out;

    /* 3. the outcome */
    if (reply.refused) {
        char refusal[SYSPRO_MESSAGE_MAX];
        enum lookup found;
        snprintf(refusal, sizeof refusal, "%s", reply.message);
        found = find_order(&r, customer, po, refusal);
        if (found == NOT_FOUND)
            pb__syspro_item_fail(it, PB_ERR_PERMANENT, -1,
                                 "SYSPRO refused sales order '%s' of customer '%s' (%s): %s", po,
                                 customer, r.st->bo.sales_order, refusal);
        goto out;
    }
    if (!find_leaf_text(xmlDocGetRootElement(reply.doc), "SalesOrder", so, sizeof so)) {
        pb__syspro_item_fail(it, PB_ERR_TRANSIENT, -1,
                             "SYSPRO's %s reply names no SalesOrder; will retry (the retry looks "
                             "the order up by CustomerPoNumber '%s' first)",
                             r.st->bo.sales_order, po);
        goto out;
    }
    pb__syspro_item_ok(it, so,
                       json_pack("{s:s,s:s,s:s,s:b,s:b,s:o}", "SalesOrder", so, "Customer",
                                 customer, "CustomerPoNumber", po, "existing", 0, "held", held,
                                 "reply",
                                 pb__syspro_element_json(xmlDocGetRootElement(reply.doc))));
out:
    pb__syspro_reply_free(&reply);
    if (in)
        xmlFreeDoc(in);
    if (pdoc)
        xmlFreeDoc(pdoc);
    free(xml_in);
    free(xml_params);
    return finish(&r);
}

/* ---- AR transactions: payments and credit notes ------------------------------------------ */

struct txn_match {
    const char *type; /* DocumentType: "P" or the credit note type */
    const char *reference;
};

static int is_txn(xmlNodePtr n, const void *arg)
{
    const struct txn_match *m = arg;
    return child_equals(n, "Reference", m->reference) && child_equals(n, "DocumentType", m->type);
}

/* "TrnYear/TrnMonth/Journal/Entry" of a posted payment, from the element. */
static const char *journal_id(xmlNodePtr n, char *out, size_t len)
{
    char year[16], month[16], journal[32], entry[32];
    if (!find_leaf_text(n, "Journal", journal, sizeof journal))
        return NULL;
    find_leaf_text(n, "TrnYear", year, sizeof year);
    find_leaf_text(n, "TrnMonth", month, sizeof month);
    find_leaf_text(n, "Entry", entry, sizeof entry);
    if (year[0] && month[0] && entry[0])
        snprintf(out, len, "%s/%s/%s/%s", year, month, journal, entry);
    else
        snprintf(out, len, "%s", journal);
    return out;
}

/* Look a payment or credit note of `customer` up by Reference. FOUND: the
 * item is done with it. */
static enum lookup find_txn(struct run *r, const char *customer, const char *type,
                            const char *reference, int credit_note, const char *refusal)
{
    struct syspro_reply reply = {0};
    struct txn_match m = {type, reference};
    enum lookup found = query_customer(r, customer, reference, &reply);
    xmlNodePtr txn;
    char id[CODE_MAX];

    if (found == FOUND) {
        txn = find_element(xmlDocGetRootElement(reply.doc), is_txn, &m);
        if (!txn || !(credit_note ? find_leaf_text(txn, "Invoice", id, sizeof id)
                                  : journal_id(txn, id, sizeof id))) {
            found = NOT_FOUND;
        } else {
            json_t *res = json_pack("{s:s,s:s,s:s,s:b,s:o}", credit_note ? "CreditNote" : "Journal",
                                    id, "Customer", customer, "Reference", reference, "existing", 1,
                                    "record", pb__syspro_element_json(txn));
            if (res && refusal)
                json_object_set_new(res, "refusal", json_string(refusal));
            pb__syspro_item_ok(r->it, id, res);
        }
    }
    pb__syspro_reply_free(&reply);
    return found;
}

/* What differs between arpayment.post and creditnote.create. */
struct ar_post {
    const char *command;   /* "arpayment.post" */
    const char *root;      /* "PostArPayment" */
    const char *element;   /* "Payment" */
    const char *value_key; /* "PaymentValue" */
    const char *business_object;
    const char *type; /* DocumentType looked up: "P" or the credit note type */
    int credit_note;
    json_t *overrides; /* settings.parameters.* */
};

static enum pb_rc ar_post(struct run *r, const struct ar_post *p)
{
    static const char *const skip[] = {
        "Customer",     "Reference",    "PaymentType",  "Bank",
        "DocumentType", "PaymentValue", "InvoiceValue", NULL,
    };
    struct pb_sink_item *it = r->it;
    struct syspro_reply reply = {0};
    char customer[CODE_MAX], reference[CODE_MAX], value[64], bank[SYSPRO_NAME_MAX],
        ptype[SYSPRO_NAME_MAX], id[CODE_MAX], path[64];
    const char *defaults[] = {
        "PostingPeriod",
        r->st->posting_period,
        "IgnoreWarnings",
        "N",
        "ApplyIfEntireDocumentValid",
        "Y",
        "ValidateOnly",
        "N",
        NULL,
    };
    xmlNodePtr root, item, el, params;
    xmlDocPtr in = NULL, pdoc = NULL;
    char *xml_in = NULL, *xml_params = NULL;
    struct pb_err e = {0};

    bank[0] = ptype[0] = '\0';
    snprintf(path, sizeof path, "%s", p->command);
    if (!check_document(it, p->command))
        return PB_OK;
    if (!member_text(it->document, "Customer", customer, sizeof customer)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1, "%s needs the document's Customer",
                             p->command);
        return PB_OK;
    }
    if (!member_text(it->document, p->value_key, value, sizeof value) || !decimal_ok(value)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "%s needs %s as decimal text (\"10.99\"), got %s", p->command,
                             p->value_key, value[0] ? value : "nothing");
        return PB_OK;
    }
    if (!reference_of(it, "Reference", reference, sizeof reference)) {
        pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                             "%s needs a Reference (the document's, or the step's reference): it "
                             "is how a retry finds the posting",
                             p->command);
        return PB_OK;
    }
    if (!p->credit_note) {
        if (!member_text(it->document, "Bank", bank, sizeof bank))
            snprintf(bank, sizeof bank, "%s", r->st->bank);
        if (!bank[0]) {
            pb__syspro_item_fail(it, PB_ERR_MAPPING, -1,
                                 "arpayment.post needs a Bank: the document's, or settings.bank");
            return PB_OK;
        }
        if (!member_text(it->document, "PaymentType", ptype, sizeof ptype))
            snprintf(ptype, sizeof ptype, "%s", r->st->payment_type);
    }

    /* 1. it may be there already: an earlier try, or an earlier paybridge
     * whose store is gone. Always looked up for AR transactions, because
     * ARSTPY and ARSTIN do not refuse a repeated Reference (SORTOI refuses a
     * repeated CustomerPoNumber, so orders are looked up on retries only) —
     * a payment posted twice is money counted twice (e2e opayo_duplicate_in_erp). */
    {
        enum lookup found = find_txn(r, customer, p->type, reference, p->credit_note, NULL);
        if (found != NOT_FOUND)
            goto out;
    }

    /* 2. the posting */
    in = pb__syspro_xml_new(p->root, &root);
    item = in ? xmlNewChild(root, NULL, BAD_CAST "Item", NULL) : NULL;
    el = item ? xmlNewChild(item, NULL, BAD_CAST p->element, NULL) : NULL;
    if (!el || !xmlNewTextChild(el, NULL, BAD_CAST "Customer", BAD_CAST customer)) {
        pb__syspro_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        goto out;
    }
    if (p->credit_note) {
        xmlNewTextChild(el, NULL, BAD_CAST "DocumentType", BAD_CAST p->type);
    } else if (ptype[0]) {
        xmlNewTextChild(el, NULL, BAD_CAST "PaymentType", BAD_CAST ptype);
    }
    xmlNewTextChild(el, NULL, BAD_CAST p->value_key, BAD_CAST value);
    if (!p->credit_note)
        xmlNewTextChild(el, NULL, BAD_CAST "Bank", BAD_CAST bank);
    xmlNewTextChild(el, NULL, BAD_CAST "Reference", BAD_CAST reference);
    if (pb__syspro_xml_add_members(el, it->document, skip, path, &e)) {
        pb__syspro_item_fail(it, e.rc, -1, "%s", e.msg);
        goto out;
    }
    pdoc = pb__syspro_parameters_doc(p->root, defaults, p->overrides, &params);
    if (!(xml_in = dump_or_fail(r, in, p->element)) ||
        !(xml_params = dump_or_fail(r, pdoc, "parameters")))
        goto out;
    if (!call(r, SYSPRO_TRANSACTION_POST, p->business_object, xml_params, xml_in, &reply))
        goto out;

    /* 3. the outcome */
    if (reply.refused) {
        char refusal[SYSPRO_MESSAGE_MAX];
        enum lookup found;
        snprintf(refusal, sizeof refusal, "%s", reply.message);
        pb__syspro_reply_free(&reply);
        found = find_txn(r, customer, p->type, reference, p->credit_note, refusal);
        if (found == NOT_FOUND)
            pb__syspro_item_fail(it, PB_ERR_PERMANENT, -1,
                                 "SYSPRO refused the %s '%s' of customer '%s' (%s): %s",
                                 p->credit_note ? "credit note" : "AR payment", reference, customer,
                                 p->business_object, refusal);
        goto out;
    }
    if (!(p->credit_note ? find_leaf_text(xmlDocGetRootElement(reply.doc), "Invoice", id, sizeof id)
                         : journal_id(xmlDocGetRootElement(reply.doc), id, sizeof id))) {
        pb__syspro_item_fail(it, PB_ERR_TRANSIENT, -1,
                             "SYSPRO's %s reply names no %s; will retry (the retry looks the "
                             "posting up by Reference '%s' first)",
                             p->business_object, p->credit_note ? "Invoice" : "Journal", reference);
        goto out;
    }
    pb__syspro_item_ok(it, id,
                       json_pack("{s:s,s:s,s:s,s:b,s:o}", p->credit_note ? "CreditNote" : "Journal",
                                 id, "Customer", customer, "Reference", reference, "existing", 0,
                                 "reply",
                                 pb__syspro_element_json(xmlDocGetRootElement(reply.doc))));
out:
    pb__syspro_reply_free(&reply);
    if (in)
        xmlFreeDoc(in);
    if (pdoc)
        xmlFreeDoc(pdoc);
    free(xml_in);
    free(xml_params);
    return finish(r);
}

enum pb_rc pb__syspro_arpayment_post(struct pb_connection *c, struct pb_call_ctx *ctx,
                                     struct pb_sink_item *it, struct pb_err *err)
{
    struct run r = {c, pb__syspro_state(c), ctx, it, err, PB_OK};
    struct ar_post p = {"arpayment.post",
                        "PostArPayment",
                        "Payment",
                        "PaymentValue",
                        r.st->bo.ar_payment,
                        "P",
                        0,
                        r.st->params_ar_payment};
    return ar_post(&r, &p);
}

enum pb_rc pb__syspro_creditnote_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        struct pb_sink_item *it, struct pb_err *err)
{
    struct run r = {c, pb__syspro_state(c), ctx, it, err, PB_OK};
    char type[8];
    struct ar_post p = {"creditnote.create",
                        "PostArInvoice",
                        "Invoice",
                        "InvoiceValue",
                        r.st->bo.credit_note,
                        NULL,
                        1,
                        r.st->params_credit_note};
    if (json_is_object(it->document) &&
        member_text(it->document, "DocumentType", type, sizeof type))
        p.type = type;
    else
        p.type = r.st->credit_note_type;
    return ar_post(&r, &p);
}
