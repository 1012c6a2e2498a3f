/*
 * connectors/sagex3/sagex3_commands.c: the commands the Sage X3 sink runs,
 * and how each makes sure that it takes effect once.
 *
 * Every document is an X3 object in mirror form (sagex3_internal.h); the
 * connector reads and adds only the few fields it is told about by the ids
 * (document "x3" > settings.ids > defaults):
 *
 *   customer.upsert   BPC. The customer's number (key_field, BPCNUM) is read
 *                     with `read`; without one in the document, the
 *                     match_field (if configured, e.g. an email field) is
 *                     looked up with `query`. Found: when settings.
 *                     customer_update is "modify" and a field of the
 *                     document differs from X3's record, `modify`; else it
 *                     is left as it is. Not found: `save`. A save refused
 *                     because the number already exists (another worker
 *                     saved this customer between our read and our save) is
 *                     settled by reading it again: two events for one
 *                     customer never make two BPCs. erp_id = BPCNUM.
 *   salesorder.create SOH. The reference (reference_field, CUSORDREF) is the
 *                     document's, else the item's source reference, added to
 *                     the header group; SALFCY (site_field) missing is
 *                     defaulted to settings.default_site. With attempt > 1,
 *                     `query` by reference first and return the order found.
 *                     Then `save`. erp_id = SOHNUM.
 *   payment.create    PAY, the same rule with REF (the PayTrace
 *                     transaction_id); erp_id = NUM.
 *   journal.create    GACC, the same rule with REF; erp_id = NUM.
 *   stock.allocate    `run` of the allocation sub-program (ALASTO) with the
 *                     document as inputXml; it must carry the order number
 *                     (order_field, SOHNUM). Allocating an allocated order is
 *                     success in X3 (and "already allocated" is read as
 *                     success), so no look-up is needed. erp_id = the
 *                     allocation id (key_field, ALLNUM), else the SOHNUM.
 *
 * Why a look-up only when attempt > 1 (and not a unique reference in X3):
 * X3 does not refuse a second order with the same CUSORDREF, so nothing on
 * its side stops a duplicate; but nothing can exist before the first try, so
 * the look-up costs one call only on retries (docs/architecture.md).
 * A look-up that fails fails the item (transient); the connector never saves
 * blind after a failed look-up.
 *
 * Documents are borrowed and never modified: fields are added to a deep copy.
 * Each item ends with exactly one outcome (pb__sagex3_item_ok/_fail); a
 * result record is the mirror form of X3's <RESULT> (plus X3's "messages"
 * when it sent warnings or information).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/pan.h"
#include "sagex3_internal.h"

#define KEY_MAX 255 /* the longest key / reference sent */

void pb__sagex3_item_ok(struct pb_sink_item *it, const char *erp_id, json_t *record)
{
    it->rc = PB_OK;
    snprintf(it->erp_id, sizeof it->erp_id, "%s", erp_id ? erp_id : "");
    it->message[0] = '\0';
    it->retry_after_s = -1;
    json_decref(it->result);
    it->result = record;
}

void pb__sagex3_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
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

static void fail_with(struct pb_sink_item *it, const struct sagex3_failure *f)
{
    pb__sagex3_item_fail(it, f->rc, f->retry_after_s, "%s", f->message);
}

static void fail_err(struct pb_sink_item *it, const struct pb_err *e)
{
    pb__sagex3_item_fail(it, e->rc == PB_ERR_NOMEM ? PB_ERR_TRANSIENT : e->rc, -1, "%s", e->msg);
}

/* One call; 1 when X3 answered with a result (status 0 or 1) in *res, else
 * 0 after failing the item. */
static int call(struct pb_connection *c, struct pb_call_ctx *ctx, struct pb_sink_item *it,
                const struct sagex3_request *rq, struct sagex3_result *res)
{
    struct sagex3_failure f;
    if (pb__sagex3_call(c, ctx, rq, res, &f) != PB_OK) {
        fail_with(it, &f);
        return 0;
    }
    return 1;
}

static void refused(struct pb_sink_item *it, const struct sagex3_request *rq,
                    const struct sagex3_result *res)
{
    struct sagex3_failure f;
    char what[96];
    snprintf(what, sizeof what, "%s %s", rq->operation, rq->public_name);
    pb__sagex3_refusal(res, what, &f);
    fail_with(it, &f);
}

/* The record of a result: its <RESULT> in mirror form, plus X3's messages. */
static json_t *record_of(const struct sagex3_result *res)
{
    json_t *rec =
        res->result ? pb__sagex3_result_json(xmlDocGetRootElement(res->result)) : json_object();
    if (rec && json_array_size(res->messages) > 0)
        json_object_set(rec, "messages", res->messages);
    return rec;
}

/* Copy a key or reference, refusing one X3 could not take. */
static int copy_key(struct pb_sink_item *it, const char *what, const char *value, char *out,
                    size_t len)
{
    if (strlen(value) > KEY_MAX || strlen(value) >= len ||
        !pb__sagex3_xml_text_ok(value, strlen(value), NULL)) {
        pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                             "%s must be text XML can carry, at most %d bytes", what, KEY_MAX);
        return 0;
    }
    memcpy(out, value, strlen(value) + 1);
    return 1;
}

/* Set group.field = value in a deep copy of the document. */
static int put_field(struct pb_sink_item *it, json_t *doc, const char *group, const char *field,
                     const char *value, const char *ids_key)
{
    json_t *g = json_object_get(doc, group);
    if (!g) {
        g = json_object();
        if (!g || json_object_set_new(doc, group, g)) {
            pb__sagex3_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
            return 0;
        }
    }
    if (!json_is_object(g)) {
        pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                             "cannot add %s to the document's %s: it is not a group (%s names "
                             "the header group the connector adds fields to)",
                             field, group, ids_key);
        return 0;
    }
    if (json_object_set_new(g, field, json_string(value))) {
        pb__sagex3_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        return 0;
    }
    return 1;
}

static int object_xml(struct pb_sink_item *it, const json_t *doc, char **xml)
{
    struct pb_err e = {0};
    if (pb__sagex3_param_xml(doc, xml, &e) != PB_OK) {
        fail_err(it, &e);
        return 0;
    }
    return 1;
}

static int resolve_ids(struct pb_connection *c, struct pb_sink_item *it, enum sagex3_entity e,
                       struct sagex3_ids *ids)
{
    struct pb_err err = {0};
    if (pb__sagex3_ids_for(pb__sagex3_state(c), it->document, e, ids, &err) != PB_OK) {
        fail_err(it, &err);
        return 0;
    }
    return 1;
}

/* ---- customer.upsert ------------------------------------------------------------------ */

/* The text of a document value, for comparison; NULL when it has none. */
static const char *doc_text(const json_t *v, char *buf, size_t len)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    return NULL;
}

static int value_differs(const json_t *want, const json_t *have)
{
    char buf[32];
    if (json_is_array(want)) {
        size_t i;
        json_t *w;
        if (!json_is_array(have) || json_array_size(have) != json_array_size(want))
            return 1;
        json_array_foreach(want, i, w)
        {
            const char *a = doc_text(w, buf, sizeof buf);
            const char *b = json_string_value(json_array_get(have, i));
            if (!a || !b || strcmp(a, b) != 0)
                return 1;
        }
        return 0;
    }
    {
        const char *a = doc_text(want, buf, sizeof buf);
        const char *b = json_string_value(have);
        return !a || !b || strcmp(a, b) != 0;
    }
}

static int fields_differ(const json_t *want, const json_t *have_group, const json_t *record)
{
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)want, name, v)
    {
        json_t *have = json_object_get(have_group, name);
        if (json_is_null(v))
            continue;
        if (!have && record) {
            /* the same field may sit in another group of X3's screen */
            const char *gid;
            json_t *g;
            json_object_foreach((json_t *)record, gid,
                                g) if (json_is_object(g) &&
                                       (have = json_object_get(g, name))) break;
        }
        if (value_differs(v, have))
            return 1;
    }
    return 0;
}

/* Does X3's record lack or differ from any field of the document? */
static int record_differs(const json_t *doc, const json_t *record)
{
    const char *gid;
    json_t *v;
    json_object_foreach((json_t *)doc, gid, v)
    {
        json_t *have = json_object_get(record, gid);
        if (strcmp(gid, "x3") == 0 || json_is_null(v))
            continue;
        if (json_is_object(v) && fields_differ(v, have, record))
            return 1;
        if (json_is_array(v)) {
            size_t i;
            json_t *line;
            if (!json_is_array(have) || json_array_size(have) != json_array_size(v))
                return 1;
            json_array_foreach(
                v, i, line) if (fields_differ(line, json_array_get(have, i), NULL)) return 1;
        }
    }
    return 0;
}

/* read by key: 1 found (*record set), 0 not found, -1 the item failed. */
static int read_customer(struct pb_connection *c, struct pb_call_ctx *ctx, struct pb_sink_item *it,
                         const struct sagex3_ids *ids, const char *key, json_t **record)
{
    struct sagex3_key k = {ids->key_field, key};
    struct sagex3_request rq = {"read", ids->public_name, &k, 1, NULL, 0};
    struct sagex3_result res;
    int found = -1;

    *record = NULL;
    if (!call(c, ctx, it, &rq, &res))
        return -1;
    if (res.status == 1) {
        *record = record_of(&res);
        found = *record ? 1 : -1;
        if (!*record)
            pb__sagex3_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
    } else if (pb__sagex3_says_not_found(&res)) {
        found = 0;
    } else {
        refused(it, &rq, &res);
    }
    pb__sagex3_result_free(&res);
    return found;
}

/* query by the match field: 1 found (*key set), 0 none, -1 the item failed. */
static int match_customer(struct pb_connection *c, struct pb_call_ctx *ctx, struct pb_sink_item *it,
                          const struct sagex3_ids *ids, const char *value, char *key,
                          size_t key_len)
{
    struct sagex3_key k = {ids->match_field, value};
    struct sagex3_request rq = {"query", ids->public_name, &k, 1, NULL, 2};
    struct sagex3_result res;
    json_t *lines, *line;
    size_t i;
    int found = 0;

    if (!call(c, ctx, it, &rq, &res))
        return -1;
    if (res.status != 1) {
        refused(it, &rq, &res);
        pb__sagex3_result_free(&res);
        return -1;
    }
    lines = pb__sagex3_query_lines(res.result ? xmlDocGetRootElement(res.result) : NULL);
    json_array_foreach(lines, i, line)
    {
        const char *have = json_string_value(json_object_get(line, ids->match_field));
        const char *num = json_string_value(json_object_get(line, ids->key_field));
        if (have && strcmp(have, value) != 0)
            continue; /* X3 may match patterns; only an equal value is this customer */
        if (!num || !num[0]) {
            pb__sagex3_item_fail(it, PB_ERR_PERMANENT, -1,
                                 "Sage X3's query of %s by %s returned a line without %s: add "
                                 "it to the query's list fields, or set "
                                 "settings.ids.customer.key_field",
                                 ids->public_name, ids->match_field, ids->key_field);
            found = -1;
        } else {
            found = copy_key(it, ids->key_field, num, key, key_len) ? 1 : -1;
        }
        break;
    }
    json_decref(lines);
    pb__sagex3_result_free(&res);
    return found;
}

/* The customer exists: modify it when it differs (and modify is on). */
static void settle_found(struct pb_connection *c, struct pb_call_ctx *ctx, struct pb_sink_item *it,
                         const struct sagex3_ids *ids, const char *key, json_t *record,
                         const char *xml)
{
    struct sagex3_key k = {ids->key_field, key};
    struct sagex3_request rq = {"modify", ids->public_name, &k, 1, xml, 0};
    struct sagex3_result res;

    if (!pb__sagex3_state(c)->customer_modify || !record_differs(it->document, record)) {
        pb__sagex3_item_ok(it, key, record);
        return;
    }
    json_decref(record);
    if (call(c, ctx, it, &rq, &res)) {
        if (res.status == 1)
            pb__sagex3_item_ok(it, key, record_of(&res));
        else
            refused(it, &rq, &res);
        pb__sagex3_result_free(&res);
    }
}

void pb__sagex3_customer_upsert(struct pb_connection *c, struct pb_call_ctx *ctx,
                                struct pb_sink_item *it)
{
    struct sagex3_ids ids;
    struct sagex3_request rq;
    struct sagex3_result res;
    char buf[64], key[KEY_MAX + 1] = "";
    const char *k, *m = NULL;
    json_t *record = NULL;
    char *xml = NULL;
    int found;

    if (!resolve_ids(c, it, X3_CUSTOMER, &ids))
        return;
    /* the whole document is checked before anything is sent */
    if (!object_xml(it, it->document, &xml))
        return;
    k = pb__sagex3_field(it->document, ids.key_field, buf, sizeof buf);
    if (!k && ids.match_field[0])
        m = pb__sagex3_field(it->document, ids.match_field, buf, sizeof buf);
    if (k) {
        if (!copy_key(it, ids.key_field, k, key, sizeof key))
            goto out;
        found = read_customer(c, ctx, it, &ids, key, &record);
    } else if (m) {
        char value[KEY_MAX + 1];
        if (!copy_key(it, ids.match_field, m, value, sizeof value))
            goto out;
        found = match_customer(c, ctx, it, &ids, value, key, sizeof key);
        if (found == 1)
            found = read_customer(c, ctx, it, &ids, key, &record);
    } else {
        pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                             "customer.upsert needs the customer's number (field %s, "
                             "settings.ids.customer.key_field) in the document%s%s%s, so that "
                             "an existing customer is found instead of created twice",
                             ids.key_field, ids.match_field[0] ? ", or the field " : "",
                             ids.match_field[0] ? ids.match_field : "",
                             ids.match_field[0] ? " to match on" : "");
        goto out;
    }
    if (found < 0)
        goto out;
    if (found == 1) {
        settle_found(c, ctx, it, &ids, key, record, xml);
        goto out;
    }

    /* not found: save */
    rq = (struct sagex3_request){"save", ids.public_name, NULL, 0, xml, 0};
    if (call(c, ctx, it, &rq, &res)) {
        if (res.status == 1) {
            json_t *rec = record_of(&res);
            const char *num = rec ? pb__sagex3_field(rec, ids.key_field, buf, sizeof buf) : NULL;
            if (!num && key[0])
                num = key;
            if (num)
                pb__sagex3_item_ok(it, num, rec);
            else {
                json_decref(rec);
                pb__sagex3_item_fail(it, PB_ERR_TRANSIENT, -1,
                                     "Sage X3 saved the %s but its reply has no %s; will retry "
                                     "(the retry finds it by %s)",
                                     ids.public_name, ids.key_field,
                                     ids.match_field[0] ? ids.match_field : ids.key_field);
            }
        } else if (key[0] && pb__sagex3_says_exists(&res)) {
            /* saved meanwhile by another worker (or an earlier try): it is ours */
            found = read_customer(c, ctx, it, &ids, key, &record);
            if (found == 1)
                settle_found(c, ctx, it, &ids, key, record, xml);
            else if (found == 0)
                refused(it, &rq, &res);
        } else {
            refused(it, &rq, &res);
        }
        pb__sagex3_result_free(&res);
    }
out:
    free(xml);
}

/* ---- salesorder.create, payment.create, journal.create --------------------------------- */

/* attempt > 1: 1 when a record with this reference exists (item done), 0
 * when none does, -1 when the item failed. */
static int find_by_reference(struct pb_connection *c, struct pb_call_ctx *ctx,
                             struct pb_sink_item *it, const struct sagex3_ids *ids, const char *ref)
{
    struct sagex3_key k = {ids->reference_field, ref};
    struct sagex3_request rq = {"query", ids->public_name, &k, 1, NULL, SAGEX3_QUERY_LIST_SIZE};
    struct sagex3_result res;
    json_t *lines, *line;
    size_t i;
    int found = 0;

    if (!call(c, ctx, it, &rq, &res))
        return -1;
    if (res.status != 1) {
        refused(it, &rq, &res);
        pb__sagex3_result_free(&res);
        return -1;
    }
    lines = pb__sagex3_query_lines(res.result ? xmlDocGetRootElement(res.result) : NULL);
    json_array_foreach(lines, i, line)
    {
        const char *have = json_string_value(json_object_get(line, ids->reference_field));
        const char *num = json_string_value(json_object_get(line, ids->key_field));
        if ((have && strcmp(have, ref) != 0) || !num || !num[0])
            continue;
        pb__sagex3_item_ok(it, num, json_incref(line));
        found = 1;
        break;
    }
    json_decref(lines);
    pb__sagex3_result_free(&res);
    return found;
}

void pb__sagex3_create(struct pb_connection *c, struct pb_call_ctx *ctx, struct pb_sink_item *it,
                       enum sagex3_entity entity)
{
    const struct sagex3_state *st = pb__sagex3_state(c);
    struct sagex3_ids ids;
    struct sagex3_request rq;
    struct sagex3_result res;
    char buf[64], ref[KEY_MAX + 1];
    const char *r;
    json_t *doc = NULL;
    char *xml = NULL;
    char ids_key[64];

    if (!resolve_ids(c, it, entity, &ids))
        return;
    snprintf(ids_key, sizeof ids_key, "settings.ids.%s.group", pb__sagex3_entity_names[entity]);
    doc = json_deep_copy(it->document);
    if (!doc) {
        pb__sagex3_item_fail(it, PB_ERR_TRANSIENT, -1, "out of memory");
        return;
    }
    r = pb__sagex3_field(it->document, ids.reference_field, buf, sizeof buf);
    if (!r) {
        r = it->reference;
        if (!r || !r[0]) {
            pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                                 "the %s has no %s and the step has no reference: a retry could "
                                 "not find it",
                                 ids.public_name, ids.reference_field);
            goto out;
        }
        if (!copy_key(it, ids.reference_field, r, ref, sizeof ref) ||
            !put_field(it, doc, ids.group, ids.reference_field, ref, ids_key))
            goto out;
    } else if (!copy_key(it, ids.reference_field, r, ref, sizeof ref)) {
        goto out;
    }
    if (ids.site_field[0] && !pb__sagex3_field(it->document, ids.site_field, buf, sizeof buf)) {
        if (!st->default_site[0]) {
            pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                                 "the %s has no %s (the sales site) and settings.default_site is "
                                 "not set: map the site in the flow or set a default",
                                 ids.public_name, ids.site_field);
            goto out;
        }
        if (!put_field(it, doc, ids.group, ids.site_field, st->default_site, ids_key))
            goto out;
    }
    if (!object_xml(it, doc, &xml))
        goto out;
    if (it->attempt > 1 && find_by_reference(c, ctx, it, &ids, ref) != 0)
        goto out;
    rq = (struct sagex3_request){"save", ids.public_name, NULL, 0, xml, 0};
    if (call(c, ctx, it, &rq, &res)) {
        if (res.status == 1) {
            json_t *rec = record_of(&res);
            const char *num = rec ? pb__sagex3_field(rec, ids.key_field, buf, sizeof buf) : NULL;
            if (num) {
                pb__sagex3_item_ok(it, num, rec);
            } else {
                json_decref(rec);
                pb__sagex3_item_fail(it, PB_ERR_TRANSIENT, -1,
                                     "Sage X3 saved the %s but its reply has no %s; will retry "
                                     "(the retry finds it by %s \"%s\")",
                                     ids.public_name, ids.key_field, ids.reference_field, ref);
            }
        } else {
            refused(it, &rq, &res);
        }
        pb__sagex3_result_free(&res);
    }
out:
    free(xml);
    json_decref(doc);
}

/* ---- stock.allocate -------------------------------------------------------------------- */

static const char *const allocated_words[] = {"already allocated", "d\xc3\xa9j\xc3\xa0 allou",
                                              NULL};

static int says_allocated(const struct sagex3_result *res)
{
    size_t i;
    json_t *m;
    json_array_foreach(res->messages, i, m)
    {
        const char *s = json_string_value(json_object_get(m, "message"));
        for (size_t w = 0; s && allocated_words[w]; w++)
            if (strcasestr(s, allocated_words[w]))
                return 1;
    }
    return 0;
}

void pb__sagex3_stock_allocate(struct pb_connection *c, struct pb_call_ctx *ctx,
                               struct pb_sink_item *it)
{
    struct sagex3_ids ids;
    struct sagex3_request rq;
    struct sagex3_result res;
    char buf[64], order[KEY_MAX + 1];
    const char *o;
    char *xml = NULL;

    if (!resolve_ids(c, it, X3_ALLOCATION, &ids))
        return;
    o = pb__sagex3_field(it->document, ids.order_field, buf, sizeof buf);
    if (!o) {
        pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                             "stock.allocate needs the order number (field %s, "
                             "settings.ids.allocation.order_field) in a group of the document, "
                             "e.g. {\"%s\": {\"%s\": $refs.order}}",
                             ids.order_field, ids.group, ids.order_field);
        return;
    }
    if (!copy_key(it, ids.order_field, o, order, sizeof order) ||
        !object_xml(it, it->document, &xml))
        return;
    rq = (struct sagex3_request){"run", ids.public_name, NULL, 0, xml, 0};
    if (call(c, ctx, it, &rq, &res)) {
        if (res.status == 1 || says_allocated(&res)) {
            json_t *rec = record_of(&res);
            const char *id = rec ? pb__sagex3_field(rec, ids.key_field, buf, sizeof buf) : NULL;
            pb__sagex3_item_ok(it, id ? id : order, rec);
        } else {
            refused(it, &rq, &res);
        }
        pb__sagex3_result_free(&res);
    }
    free(xml);
}
