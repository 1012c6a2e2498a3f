/*
 * connectors/syspro/syspro.c: the SYSPRO e.net Solutions (REST) sink
 * connector's type table, its settings, and the dispatch of an item to its
 * command.
 *
 * What it owns. `pb_connector_syspro` and the connection state (see
 * syspro_internal.h). Settings and secrets (docs/connectors.md, section
 * "syspro", is the reference):
 *
 *   settings.base_url            required: ".../SYSPROWCFService/Rest"
 *   settings.company_id          required: the SYSPRO company
 *   settings.operator            required: the e.net operator
 *   settings.business_objects    {sales_order SORTOI, sales_order_query SORQRY,
 *                                 ar_payment ARSTPY, customer_setup ARSSCS,
 *                                 customer_query ARSQRY, stock_query INVQRY,
 *                                 credit_note ARSTIN, ar_payment_query ARSQPY,
 *                                 gl_journal GENTJL, gl_journal_query GENQJL}
 *   settings.parameters          {sales_order, ar_payment, credit_note,
 *                                 customer_setup, gl_journal}: XmlParameters
 *                                 elements that override or add to the defaults
 *   settings.bank, payment_type  defaults of arpayment.post
 *   settings.posting_period      "C" (default) or "P"
 *   settings.hold_order_status   SORTOI OrderStatus of a held order, "S"
 *   settings.credit_note_document_type  "C"
 *   settings.lookup_before_create "retry" (default) or "always"
 *   settings.timeout_ms          100..600000, default 30000
 *   settings.max_url_bytes       1024..1048576, default 16000
 *   settings.logon_retry_s       0..3600, default 30
 *   settings.currency            the company's local currency (ISO 4217): of
 *                                 ledger records that name none, and the only
 *                                 currency post_journal accepts; unset = any
 *   settings.ledger_page_size    1..10000, default 500: MaxRecords per page
 *   secrets.company_password, secrets.operator_password: required keys
 *                                 (may be "" when SYSPRO has none)
 *
 * Commands: customer.ensure, stock.check, salesorder.create, arpayment.post,
 * creditnote.create, each with max_batch 1; anything else 0. Reconciliation
 * (PB_CAP_LEDGER, PB_CAP_JOURNAL): ledger() and post_journal(), in
 * syspro_recon.c.
 *
 * Invariants: the state is written by init() only, except the session cache
 * (syspro_session.c, under its mutex), so execute() is safe on many threads.
 *
 * Rejected designs.
 *   - Batching several orders into one SORTOI post: the XML travels in the
 *     query string of a GET, whose length SYSPRO's host caps (http.sys: 16
 *     KiB by default), and a refusal of one order in a multi-order post is
 *     reported in ways we could not verify per item. One item per call keeps
 *     every outcome attributable; SYSPRO itself posts orders one at a time.
 *   - Unknown settings keys ignored: a typo ("busines_objects") would
 *     silently keep the defaults, so init() names the unknown key.
 *   - Secrets copied into the state: they are read where the logon uses them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "syspro_internal.h"

static const char *const known_settings[] = {
    "base_url",
    "company_id",
    "operator",
    "business_objects",
    "parameters",
    "bank",
    "payment_type",
    "posting_period",
    "hold_order_status",
    "credit_note_document_type",
    "lookup_before_create",
    "timeout_ms",
    "max_url_bytes",
    "logon_retry_s",
    "currency",
    "ledger_page_size",
    NULL,
};

static const char *const known_parameter_sets[] = {
    "sales_order", "ar_payment", "credit_note", "customer_setup", "gl_journal", NULL,
};

struct syspro_state *pb__syspro_state(const struct pb_connection *c)
{
    struct syspro_state *st = c ? c->state : NULL;
    return st && st->magic == SYSPRO_STATE_MAGIC ? st : NULL;
}

static int in_list(const char *const *list, const char *key)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], key) == 0)
            return 1;
    return 0;
}

/* One line of printable text of 1..max-1 bytes (no control characters). */
static enum pb_rc read_text(json_t *obj, const char *key, const char *where, const char *def,
                            int required, char *out, size_t max, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    const char *s = def;
    size_t n;

    if (v && !json_is_string(v))
        return pb_err_set(err, PB_ERR_CONFIG, "%s%s: must be a string", where, key);
    if (v)
        s = json_string_value(v);
    if (!s || (required && !s[0]))
        return pb_err_set(err, PB_ERR_CONFIG, "%s%s: required", where, key);
    n = strlen(s);
    if (n >= max)
        return pb_err_set(err, PB_ERR_CONFIG, "%s%s: longer than %zu characters", where, key,
                          max - 1);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return pb_err_set(err, PB_ERR_CONFIG, "%s%s: must not contain control characters",
                              where, key);
    memcpy(out, s, n + 1);
    return PB_OK;
}

static enum pb_rc read_int(json_t *obj, const char *key, long long def, long long min,
                           long long max, long long *out, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (!v)
        return PB_OK;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: must be an integer from %lld to %lld",
                          key, min, max);
    *out = json_integer_value(v);
    return PB_OK;
}

/* A business object name: 1..32 letters, digits or '_'. */
static enum pb_rc read_object(json_t *objs, const char *key, const char *def, char *out,
                              struct pb_err *err)
{
    char where[64];
    enum pb_rc rc;
    snprintf(where, sizeof where, "settings.business_objects.");
    rc = read_text(objs, key, where, def, 1, out, SYSPRO_BO_MAX, err);
    if (rc)
        return rc;
    for (const char *p = out; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.business_objects.%s: \"%s\" is not a business object "
                              "name (letters, digits and '_', e.g. SORTOI)",
                              key, out);
    return PB_OK;
}

static enum pb_rc read_objects(const struct pb_connection *c, struct syspro_state *st,
                               struct pb_err *err)
{
    static const char *const known[] = {
        "sales_order",    "sales_order_query", "ar_payment",  "customer_setup",
        "customer_query", "stock_query",       "credit_note", "ar_payment_query",
        "gl_journal",     "gl_journal_query",  NULL,
    };
    json_t *objs = json_object_get(c->settings, "business_objects"), *v;
    const char *key;
    enum pb_rc rc;

    if (objs && !json_is_object(objs))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.business_objects: must be an object (e.g. {\"sales_order\": "
                          "\"SORTOI\"})");
    json_object_foreach(objs, key, v)
    {
        if (!in_list(known, key))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.business_objects.%s: unknown (known: sales_order, "
                              "sales_order_query, ar_payment, customer_setup, customer_query, "
                              "stock_query, credit_note, ar_payment_query, gl_journal, "
                              "gl_journal_query)",
                              key);
    }
    if ((rc = read_object(objs, "sales_order", "SORTOI", st->bo.sales_order, err)) ||
        (rc = read_object(objs, "sales_order_query", "SORQRY", st->bo.sales_order_query, err)) ||
        (rc = read_object(objs, "ar_payment", "ARSTPY", st->bo.ar_payment, err)) ||
        (rc = read_object(objs, "customer_setup", "ARSSCS", st->bo.customer_setup, err)) ||
        (rc = read_object(objs, "customer_query", "ARSQRY", st->bo.customer_query, err)) ||
        (rc = read_object(objs, "stock_query", "INVQRY", st->bo.stock_query, err)) ||
        (rc = read_object(objs, "credit_note", "ARSTIN", st->bo.credit_note, err)) ||
        (rc = read_object(objs, "ar_payment_query", "ARSQPY", st->bo.ar_payment_query, err)) ||
        (rc = read_object(objs, "gl_journal", "GENTJL", st->bo.gl_journal, err)) ||
        (rc = read_object(objs, "gl_journal_query", "GENQJL", st->bo.gl_journal_query, err)))
        return rc;
    return PB_OK;
}

/* settings.parameters.NAME: an object of XML element name -> string,
 * integer or boolean. Checked now by building it once into a scratch
 * document, so that a bad name fails at start-up, not on the first order. */
static enum pb_rc read_parameters(const struct pb_connection *c, struct syspro_state *st,
                                  struct pb_err *err)
{
    json_t *sets = json_object_get(c->settings, "parameters"), *v;
    const char *key;

    if (!sets)
        return PB_OK;
    if (!json_is_object(sets))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.parameters: must be an object (e.g. {\"sales_order\": "
                          "{\"AllowZeroPrice\": \"N\"}})");
    json_object_foreach(sets, key, v)
    {
        char path[96];
        const char *name;
        json_t *value, **slot;
        xmlNodePtr root;
        xmlDocPtr doc;
        enum pb_rc rc = PB_OK;

        if (!in_list(known_parameter_sets, key))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.parameters.%s: unknown (known: sales_order, ar_payment, "
                              "credit_note, customer_setup, gl_journal)",
                              key);
        if (!json_is_object(v))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.parameters.%s: must be an object of element: value", key);
        json_object_foreach(v, name, value)
        {
            if (!json_is_string(value) && !json_is_integer(value) && !json_is_boolean(value))
                return pb_err_set(err, PB_ERR_CONFIG,
                                  "settings.parameters.%s.%s: must be a string, an integer or "
                                  "a boolean",
                                  key, name);
        }
        doc = pb__syspro_xml_new("Parameters", &root);
        if (!doc)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        snprintf(path, sizeof path, "settings.parameters.%s", key);
        {
            struct pb_err e = {0};
            rc = pb__syspro_xml_add_members(root, v, NULL, path, &e);
            xmlFreeDoc(doc);
            if (rc)
                return pb_err_set(err, PB_ERR_CONFIG, "%s", e.msg);
        }
        slot = strcmp(key, "sales_order") == 0   ? &st->params_sales_order
               : strcmp(key, "ar_payment") == 0  ? &st->params_ar_payment
               : strcmp(key, "credit_note") == 0 ? &st->params_credit_note
               : strcmp(key, "gl_journal") == 0  ? &st->params_gl_journal
                                                 : &st->params_customer_setup;
        *slot = json_deep_copy(v);
        if (!*slot)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    return PB_OK;
}

static enum pb_rc read_settings(const struct pb_connection *c, struct syspro_state *st,
                                struct pb_err *err)
{
    const char *key, *s;
    json_t *v, *set = c->settings;
    long long n;
    size_t len;
    char mode[16];
    enum pb_rc rc;

    if (!json_is_object(set))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.base_url: required (settings missing)");
    json_object_foreach(set, key, v)
    {
        if (!in_list(known_settings, key))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.%s: unknown setting of a syspro connection (known: "
                              "base_url, company_id, operator, business_objects, parameters, "
                              "bank, payment_type, posting_period, hold_order_status, "
                              "credit_note_document_type, lookup_before_create, timeout_ms, "
                              "max_url_bytes, logon_retry_s, currency, ledger_page_size)",
                              key);
    }
    v = json_object_get(set, "base_url");
    s = json_string_value(v);
    if (!s)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.base_url: required, the e.net REST service, e.g. "
                          "\"http://sysprohost:20000/SYSPROWCFService/Rest\"");
    len = strlen(s);
    if ((strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) || len <= 8 ||
        strpbrk(s, "?# \r\n"))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.base_url: must be an http(s) URL without query, got \"%.80s\"",
                          s);
    while (len > 0 && s[len - 1] == '/')
        len--;
    if (len >= sizeof st->base_url)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.base_url: longer than %zu characters",
                          sizeof st->base_url - 1);
    memcpy(st->base_url, s, len);
    st->base_url[len] = '\0';

    if ((rc = read_text(set, "company_id", "settings.", NULL, 1, st->company_id,
                        sizeof st->company_id, err)) ||
        (rc = read_text(set, "operator", "settings.", NULL, 1, st->operator_code,
                        sizeof st->operator_code, err)) ||
        (rc = read_text(set, "bank", "settings.", "", 0, st->bank, sizeof st->bank, err)) ||
        (rc = read_text(set, "payment_type", "settings.", "", 0, st->payment_type,
                        sizeof st->payment_type, err)) ||
        (rc = read_text(set, "posting_period", "settings.", "C", 1, st->posting_period,
                        sizeof st->posting_period, err)) ||
        (rc = read_text(set, "hold_order_status", "settings.", "S", 1, st->hold_order_status,
                        sizeof st->hold_order_status, err)) ||
        (rc = read_text(set, "credit_note_document_type", "settings.", "C", 1, st->credit_note_type,
                        sizeof st->credit_note_type, err)) ||
        (rc = read_text(set, "lookup_before_create", "settings.", "retry", 1, mode, sizeof mode,
                        err)) ||
        (rc = read_text(set, "currency", "settings.", "", 0, st->currency, sizeof st->currency,
                        err)))
        return rc;
    if (st->currency[0] && !pb_currency_valid(st->currency))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.currency: \"%s\" is not an ISO 4217 code SYSPRO's ledger "
                          "could be in (e.g. \"GBP\")",
                          st->currency);
    if (strcmp(st->posting_period, "C") != 0 && strcmp(st->posting_period, "P") != 0)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.posting_period: must be \"C\" (current) or \"P\" (previous)");
    if (strcmp(mode, "retry") != 0 && strcmp(mode, "always") != 0)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.lookup_before_create: must be \"retry\" (look an order, "
                          "payment or credit note up before creating it on a retry) or "
                          "\"always\"");
    st->lookup_always = strcmp(mode, "always") == 0;
    if ((rc = read_objects(c, st, err)) || (rc = read_parameters(c, st, err)))
        return rc;
    if ((rc = read_int(set, "timeout_ms", SYSPRO_TIMEOUT_DEFAULT_MS, 100, 600000, &n, err)))
        return rc;
    st->timeout_ms = (long)n;
    if ((rc = read_int(set, "max_url_bytes", SYSPRO_MAX_URL_DEFAULT, 1024, 1048576, &n, err)))
        return rc;
    st->max_url_bytes = (size_t)n;
    if ((rc = read_int(set, "logon_retry_s", SYSPRO_LOGON_RETRY_DEFAULT_S, 0, 3600, &n, err)))
        return rc;
    st->logon_retry_s = (long)n;
    if ((rc = read_int(set, "ledger_page_size", 500, 1, 10000, &n, err)))
        return rc;
    st->ledger_page_size = (long)n;
    return PB_OK;
}

static void free_state(struct syspro_state *st)
{
    json_decref(st->params_sales_order);
    json_decref(st->params_ar_payment);
    json_decref(st->params_credit_note);
    json_decref(st->params_customer_setup);
    json_decref(st->params_gl_journal);
    free(st);
}

static enum pb_rc syspro_init(struct pb_connection *c, struct pb_err *err)
{
    struct syspro_state *st = calloc(1, sizeof *st);
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    pb__syspro_xml_init();
    rc = read_settings(c, st, err);
    if (rc)
        goto fail;
    if (!pb_connection_secret(c, "operator_password")) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.operator_password: required (the e.net operator's password; "
                        "write \"\" when the operator has none)");
        goto fail;
    }
    if (!pb_connection_secret(c, "company_password")) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.company_password: required (the company's password; write \"\" "
                        "when the company has none)");
        goto fail;
    }
    if (pthread_mutex_init(&st->session_lock, NULL) != 0) {
        rc = pb_err_set(err, PB_ERR_INTERNAL, "cannot create the session mutex");
        goto fail;
    }
    st->magic = SYSPRO_STATE_MAGIC;
    c->state = st;
    return PB_OK;
fail:
    free_state(st);
    return rc;
}

static void syspro_destroy(struct pb_connection *c)
{
    struct syspro_state *st = pb__syspro_state(c);
    if (!st)
        return;
    pb__syspro_logoff(st);
    pthread_mutex_destroy(&st->session_lock);
    st->magic = 0;
    c->state = NULL;
    free_state(st);
}

static const char *const commands[] = {
    "customer.ensure", "stock.check",       "salesorder.create",
    "arpayment.post",  "creditnote.create", NULL,
};

static size_t syspro_max_batch(const struct pb_connection *c, const char *command)
{
    return command && in_list(commands, command) ? 1 : 0;
}

static enum pb_rc syspro_execute(struct pb_connection *c, struct pb_call_ctx *ctx,
                                 struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    const char *command;
    enum pb_rc rc = PB_OK;

    if (!pb__syspro_state(c))
        return pb_err_set(err, PB_ERR_INTERNAL, "syspro connection used before init");
    if (n == 0)
        return PB_OK;
    if (!ctx || !ctx->http || !items)
        return pb_err_set(err, PB_ERR_INTERNAL, "execute needs items and an HTTP client");
    command = items[0].command ? items[0].command : "";
    for (size_t i = 0; i < n; i++) {
        items[i].rc = PB_ERR_INTERNAL;
        items[i].erp_id[0] = '\0';
        snprintf(items[i].message, sizeof items[i].message, "not processed");
        items[i].retry_after_s = -1;
        if (!items[i].command || strcmp(items[i].command, command) != 0)
            return pb_err_set(err, PB_ERR_INTERNAL, "a batch mixes commands \"%s\" and \"%s\"",
                              command, items[i].command ? items[i].command : "(null)");
    }
    if (!in_list(commands, command)) {
        for (size_t i = 0; i < n; i++)
            pb__syspro_item_fail(&items[i], PB_ERR_PERMANENT, -1,
                                 "the syspro connector has no command \"%.64s\" (it knows "
                                 "customer.ensure, stock.check, salesorder.create, "
                                 "arpayment.post, creditnote.create)",
                                 command);
        return pb_err_set(err, PB_ERR_PERMANENT, "%s", items[0].message);
    }
    if (n > 1)
        return pb_err_set(err, PB_ERR_INTERNAL, "%zu items exceed max_batch 1 for %s", n, command);
    if (strcmp(command, "customer.ensure") == 0)
        rc = pb__syspro_customer_ensure(c, ctx, &items[0], err);
    else if (strcmp(command, "stock.check") == 0)
        rc = pb__syspro_stock_check(c, ctx, &items[0], err);
    else if (strcmp(command, "salesorder.create") == 0)
        rc = pb__syspro_salesorder_create(c, ctx, &items[0], err);
    else if (strcmp(command, "arpayment.post") == 0)
        rc = pb__syspro_arpayment_post(c, ctx, &items[0], err);
    else
        rc = pb__syspro_creditnote_create(c, ctx, &items[0], err);
    return rc;
}

const struct pb_connector_type pb_connector_syspro = {
    .abi = PB_CONNECTOR_ABI,
    .name = "syspro",
    .caps = PB_CAP_SINK | PB_CAP_LEDGER | PB_CAP_JOURNAL,
    .init = syspro_init,
    .destroy = syspro_destroy,
    .inbound = NULL,
    .confirm = NULL,
    .max_batch = syspro_max_batch,
    .execute = syspro_execute,
    /* an on-premises server: no published rate; two calls at a time share the
     * one e.net session, which occupies two of the app server's e.net
     * instances (unverified sizing; a connection's rate_limit overrides it) */
    .default_rate_limit = {0, 0, 2, 60000},
    .settlement = NULL,
    .ledger = pb__syspro_ledger,
    .post_journal = pb__syspro_post_journal,
};
