/*
 * connectors/sagex3/sagex3.c: the Sage X3 sink connector's type table, its
 * settings, the ids each entity is known by, and the dispatch of an item to
 * its command.
 *
 * What it owns. `pb_connector_sagex3` and the connection state (see
 * sagex3_internal.h). Settings and secrets (docs/connectors.md, section
 * "sagex3", is the reference):
 *
 *   settings.base_url        required: "http://x3host:8124" (no trailing '/')
 *   settings.soap_path       "/soap-generic/syracuse/collaboration/syracuse/
 *                            CAdxWebServiceXmlCC" by default
 *   settings.pool_alias      required: the web service pool (callContext poolAlias)
 *   settings.code_lang       "ENG"; settings.pool_id ""; settings.request_config
 *                            "adxwss.optreturn=XML"
 *   settings.public_names    {customer, sales_order, allocation, payment, journal}
 *                            over BPC, SOH, ALASTO, PAY, GACC
 *   settings.ids             {entity: {group, key_field, reference_field, ...}}
 *   settings.default_site    SALFCY of a sales order that has none
 *   settings.customer_update "modify" (default) or "keep"
 *   settings.timeout_ms      100..600000, default 60000
 *   settings.journal_type    reconciliation: the TYP of the journals post_journal
 *                            saves (required by post_journal only), e.g. "ODJ"
 *   settings.journal_site    reconciliation: their FCY (optional)
 *   settings.refund_account  reconciliation: a GACC line crediting this account
 *                            is a customer refund for ledger() (optional: the
 *                            receivable account of the refund credit memos)
 *   settings.ledger_page_size  listSize of one ledger() query, 1..1000 (100)
 *   secrets.username, secrets.password: HTTP Basic (X3 since PU9)
 *
 * Every command takes max_batch 1: the service saves one object per call,
 * and a batch would only serialise calls inside one worker while the others
 * wait. execute() still accepts n items and runs them in order.
 *
 * Ids are resolved per item: the document's "x3" member (the flow
 * template's say), then settings, then the built-in defaults that match the
 * sandbox (and a stock X3). pb__sagex3_ids_for() does it and refuses what is
 * not an X3 identifier, so that a typo in a template is a mapping error and
 * not an X3 message about a field nobody wrote.
 *
 * Invariants: the state is written by init() only; execute() runs on many
 * threads at once without a lock. init() calls xmlInitParser() so that
 * libxml2's globals are set up before any worker uses it.
 *
 * Rejected designs.
 *   - Fixed documents in the connector (customer name, order lines, ...)
 *     mapped to XML by a table of X3 field names: group ids differ per
 *     installation and per screen, and sites add Y/Z fields. The document is
 *     the object's XML in JSON form (sagex3_internal.h), so the template
 *     decides every field, and the connector only needs the few ids it acts
 *     on (key, reference, site).
 *   - Unknown settings ignored: a typo ("pool_alais") would silently keep the
 *     default; init() names the key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

#include "sagex3_internal.h"

#define SAGEX3_SOAP_PATH_DEFAULT "/soap-generic/syracuse/collaboration/syracuse/CAdxWebServiceXmlCC"
#define SAGEX3_CODE_LANG_DEFAULT "ENG"
#define SAGEX3_REQUEST_CONFIG_DEFAULT "adxwss.optreturn=XML"

const char *const pb__sagex3_entity_names[X3_ENTITY_COUNT] = {
    "customer", "sales_order", "allocation", "payment", "journal",
};

static const char *const known_settings[] = {
    "base_url",     "soap_path",      "code_lang",        "pool_alias",
    "pool_id",      "request_config", "public_names",     "ids",
    "default_site", "timeout_ms",     "customer_update",  "journal_type",
    "journal_site", "refund_account", "ledger_page_size", NULL,
};

/* Built-in ids: a stock X3 and the sandbox agree on them. */
static const struct sagex3_ids default_ids[X3_ENTITY_COUNT] = {
    [X3_CUSTOMER] = {"BPC", "BPC0_1", "BPCNUM", "", "", "", "", "", "", ""},
    [X3_SALES_ORDER] = {"SOH", "SOH0_1", "SOHNUM", "CUSORDREF", "", "SALFCY", "", "", "", ""},
    [X3_ALLOCATION] = {"ALASTO", "GRP1", "ALLNUM", "", "", "", "SOHNUM", "", "", ""},
    [X3_PAYMENT] = {"PAY", "PAY0_1", "NUM", "REF", "", "", "", "ACCDAT", "AMTCUR", ""},
    [X3_JOURNAL] = {"GACC", "GACC0_1", "NUM", "REF", "", "", "", "ACCDAT", "", "GACC1_1"},
};

/* Which id keys an entity takes (in settings.ids.ENTITY and a document's "x3"). */
enum id_key {
    ID_GROUP = 1u << 0,
    ID_KEY = 1u << 1,
    ID_REFERENCE = 1u << 2,
    ID_MATCH = 1u << 3,
    ID_SITE = 1u << 4,
    ID_ORDER = 1u << 5,
    ID_DATE = 1u << 6,   /* reconciliation */
    ID_AMOUNT = 1u << 7, /* reconciliation */
    ID_TABLE = 1u << 8,  /* reconciliation */
};

static const unsigned entity_keys[X3_ENTITY_COUNT] = {
    [X3_CUSTOMER] = ID_GROUP | ID_KEY | ID_MATCH,
    [X3_SALES_ORDER] = ID_GROUP | ID_KEY | ID_REFERENCE | ID_SITE,
    [X3_ALLOCATION] = ID_GROUP | ID_KEY | ID_ORDER,
    [X3_PAYMENT] = ID_GROUP | ID_KEY | ID_REFERENCE | ID_DATE | ID_AMOUNT,
    [X3_JOURNAL] = ID_GROUP | ID_KEY | ID_REFERENCE | ID_DATE | ID_TABLE,
};

static const struct {
    const char *name;
    enum id_key bit;
    size_t offset;
} id_slots[] = {
    {"group", ID_GROUP, offsetof(struct sagex3_ids, group)},
    {"key_field", ID_KEY, offsetof(struct sagex3_ids, key_field)},
    {"reference_field", ID_REFERENCE, offsetof(struct sagex3_ids, reference_field)},
    {"match_field", ID_MATCH, offsetof(struct sagex3_ids, match_field)},
    {"site_field", ID_SITE, offsetof(struct sagex3_ids, site_field)},
    {"order_field", ID_ORDER, offsetof(struct sagex3_ids, order_field)},
    {"date_field", ID_DATE, offsetof(struct sagex3_ids, date_field)},
    {"amount_field", ID_AMOUNT, offsetof(struct sagex3_ids, amount_field)},
    {"table", ID_TABLE, offsetof(struct sagex3_ids, table)},
};
#define N_ID_SLOTS (sizeof id_slots / sizeof id_slots[0])

struct sagex3_state *pb__sagex3_state(const struct pb_connection *c)
{
    struct sagex3_state *st = c ? c->state : NULL;
    return st && st->magic == SAGEX3_STATE_MAGIC ? st : NULL;
}

int pb__sagex3_valid_id(const char *s)
{
    size_t n;
    if (!s || !(s[0] >= 'A' && s[0] <= 'Z'))
        return 0;
    for (n = 0; s[n]; n++)
        if (!((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
            return 0;
    return n <= SAGEX3_ID_MAX;
}

/* A list of the id keys an entity takes, for messages. */
static void describe_keys(unsigned keys, int with_public_name, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    if (with_public_name)
        used += (size_t)snprintf(out, len, "public_name");
    for (size_t i = 0; i < N_ID_SLOTS && used < len; i++)
        if (keys & id_slots[i].bit)
            used += (size_t)snprintf(out + used, len - used, "%s%s", used ? ", " : "",
                                     id_slots[i].name);
}

/* Apply an object of id overrides (settings.ids.ENTITY, or a document's
 * "x3") onto *ids. `where` prefixes messages ("settings.ids.customer"). */
static enum pb_rc apply_ids(const json_t *obj, enum sagex3_entity e, int with_public_name,
                            struct sagex3_ids *ids, const char *where, enum pb_rc bad_rc,
                            struct pb_err *err)
{
    const char *key;
    json_t *v;
    char known[200];

    if (!json_is_object(obj))
        return pb_err_set(err, bad_rc, "%s: must be an object", where);
    describe_keys(entity_keys[e], with_public_name, known, sizeof known);
    json_object_foreach((json_t *)obj, key, v)
    {
        const char *s = json_string_value(v);
        char *slot = NULL;
        if (with_public_name && strcmp(key, "public_name") == 0) {
            slot = ids->public_name;
        } else {
            for (size_t i = 0; i < N_ID_SLOTS; i++)
                if ((entity_keys[e] & id_slots[i].bit) && strcmp(key, id_slots[i].name) == 0)
                    slot = (char *)ids + id_slots[i].offset;
        }
        if (!slot)
            return pb_err_set(err, bad_rc, "%s.%s: unknown key for the %s (known: %s)", where, key,
                              pb__sagex3_entity_names[e], known);
        /* match_field alone may be "" (match on nothing) */
        if (s && s[0] == '\0' && slot == ids->match_field) {
            slot[0] = '\0';
            continue;
        }
        if (!pb__sagex3_valid_id(s))
            return pb_err_set(err, bad_rc,
                              "%s.%s: must be an X3 identifier (upper-case letter, then upper-case "
                              "letters, digits or '_', at most %d), got %s%.64s%s",
                              where, key, SAGEX3_ID_MAX, s ? "\"" : "", s ? s : "a non-string",
                              s ? "\"" : "");
        memcpy(slot, s, strlen(s) + 1);
    }
    return PB_OK;
}

enum pb_rc pb__sagex3_ids_for(const struct sagex3_state *st, const json_t *doc,
                              enum sagex3_entity e, struct sagex3_ids *out, struct pb_err *err)
{
    json_t *x3 = json_object_get(doc, "x3");
    *out = st->ids[e];
    if (!x3)
        return PB_OK;
    return apply_ids(x3, e, 1, out, "the document's x3", PB_ERR_MAPPING, err);
}

/* ---- settings ------------------------------------------------------------------- */

static int text_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static enum pb_rc read_text(const struct pb_connection *c, const char *key, const char *def,
                            int required, char *out, size_t out_len, struct pb_err *err)
{
    json_t *v = json_object_get(c->settings, key);
    const char *s = def;
    if (v && !json_is_string(v))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: must be a string", key);
    if (v)
        s = json_string_value(v);
    if (required && (!s || !s[0]))
        return PB_ERR_NOTFOUND; /* the caller names what it is */
    if (!s)
        s = "";
    if (!text_ok(s, out_len - 1) || !pb__sagex3_xml_text_ok(s, strlen(s), NULL))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.%s: must be one line of printable text of at most %zu bytes",
                          key, out_len - 1);
    memcpy(out, s, strlen(s) + 1);
    return PB_OK;
}

static enum pb_rc read_url(const struct pb_connection *c, struct sagex3_state *st,
                           struct pb_err *err)
{
    json_t *b = json_object_get(c->settings, "base_url");
    json_t *p = json_object_get(c->settings, "soap_path");
    const char *base = json_string_value(b);
    const char *path = p ? json_string_value(p) : SAGEX3_SOAP_PATH_DEFAULT;
    size_t blen;

    if (!b)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.base_url: required (the X3 web server, e.g. "
                          "\"http://x3.example.com:8124\")");
    if (!base || (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) ||
        strlen(base) <= 8 || !text_ok(base, SAGEX3_URL_MAX / 2) || strchr(base, ' ') ||
        strchr(base, '?') || strchr(base, '#'))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.base_url: must be an http(s) URL without query, got \"%.80s\"",
                          base ? base : "(not a string)");
    if (!path || path[0] != '/' || !text_ok(path, SAGEX3_URL_MAX / 2 - 1) || strchr(path, ' ') ||
        strchr(path, '?') || strchr(path, '#'))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.soap_path: must be a path starting with '/', without spaces "
                          "or query (default %s)",
                          SAGEX3_SOAP_PATH_DEFAULT);
    blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    snprintf(st->url, sizeof st->url, "%.*s%s", (int)blen, base, path);
    return PB_OK;
}

static enum pb_rc read_public_names(const struct pb_connection *c, struct sagex3_state *st,
                                    struct pb_err *err)
{
    json_t *names = json_object_get(c->settings, "public_names"), *v;
    const char *key;

    if (!names)
        return PB_OK;
    if (!json_is_object(names))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.public_names: must be an object such as {\"sales_order\": "
                          "\"YOSOH\"}");
    json_object_foreach(names, key, v)
    {
        int e = -1;
        for (int i = 0; i < X3_ENTITY_COUNT; i++)
            if (strcmp(key, pb__sagex3_entity_names[i]) == 0)
                e = i;
        if (e < 0)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.public_names.%s: unknown entity (known: customer, "
                              "sales_order, allocation, payment, journal)",
                              key);
        if (!pb__sagex3_valid_id(json_string_value(v)))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.public_names.%s: must be an X3 public name (upper-case "
                              "letter, then upper-case letters, digits or '_', at most %d)",
                              key, SAGEX3_ID_MAX);
        snprintf(st->ids[e].public_name, sizeof st->ids[e].public_name, "%s", json_string_value(v));
    }
    return PB_OK;
}

static enum pb_rc read_ids(const struct pb_connection *c, struct sagex3_state *st,
                           struct pb_err *err)
{
    json_t *ids = json_object_get(c->settings, "ids"), *v;
    const char *key;
    enum pb_rc rc;

    if (!ids)
        return PB_OK;
    if (!json_is_object(ids))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.ids: must be an object such as {\"sales_order\": "
                          "{\"group\": \"SOH0_1\"}}");
    json_object_foreach(ids, key, v)
    {
        int e = -1;
        char where[64];
        for (int i = 0; i < X3_ENTITY_COUNT; i++)
            if (strcmp(key, pb__sagex3_entity_names[i]) == 0)
                e = i;
        if (e < 0)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.ids.%s: unknown entity (known: customer, sales_order, "
                              "allocation, payment, journal)",
                              key);
        snprintf(where, sizeof where, "settings.ids.%s", key);
        if ((rc = apply_ids(v, (enum sagex3_entity)e, 0, &st->ids[e], where, PB_ERR_CONFIG, err)))
            return rc;
    }
    return PB_OK;
}

/* An X3 code (a site, a journal type, an account): upper-case letters,
 * digits, '_' or '-', 1..max characters. Absent: out stays "". */
static enum pb_rc read_code(const struct pb_connection *c, const char *key, char *out, size_t max,
                            const char *example, struct pb_err *err)
{
    json_t *v = json_object_get(c->settings, key);
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    int ok = n > 0 && n <= max;

    if (!v)
        return PB_OK;
    for (size_t i = 0; ok && i < n; i++)
        ok = (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
             s[i] == '-';
    if (!ok)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.%s: must be an X3 code (upper-case letters, digits, '_' or "
                          "'-', at most %zu), e.g. \"%s\"",
                          key, max, example);
    memcpy(out, s, n + 1);
    return PB_OK;
}

static enum pb_rc read_settings(const struct pb_connection *c, struct sagex3_state *st,
                                struct pb_err *err)
{
    const char *key, *update;
    json_t *v;
    enum pb_rc rc;

    if (!json_is_object(c->settings))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.base_url: required (settings missing)");
    json_object_foreach(c->settings, key, v)
    {
        int known = 0;
        for (size_t i = 0; known_settings[i]; i++)
            known |= strcmp(known_settings[i], key) == 0;
        if (!known)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.%s: unknown setting of a sagex3 connection (known: "
                              "base_url, soap_path, code_lang, pool_alias, pool_id, "
                              "request_config, public_names, ids, default_site, timeout_ms, "
                              "customer_update, journal_type, journal_site, refund_account, "
                              "ledger_page_size)",
                              key);
    }
    if ((rc = read_url(c, st, err)))
        return rc;
    rc = read_text(c, "pool_alias", NULL, 1, st->pool_alias, sizeof st->pool_alias, err);
    if (rc == PB_ERR_NOTFOUND)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.pool_alias: required (the X3 web service pool, e.g. "
                          "\"SEED\"; Administration > Web services > Classic SOAP pools)");
    if (rc)
        return rc;
    if ((rc = read_text(c, "code_lang", SAGEX3_CODE_LANG_DEFAULT, 1, st->code_lang,
                        sizeof st->code_lang, err)) ||
        (rc = read_text(c, "pool_id", "", 0, st->pool_id, sizeof st->pool_id, err)) ||
        (rc = read_text(c, "request_config", SAGEX3_REQUEST_CONFIG_DEFAULT, 0, st->request_config,
                        sizeof st->request_config, err)))
        return rc == PB_ERR_NOTFOUND
                   ? pb_err_set(err, PB_ERR_CONFIG, "settings.code_lang: must not be empty")
                   : rc;
    if ((rc = read_code(c, "default_site", st->default_site, SAGEX3_SITE_MAX, "FR011", err)) ||
        (rc = read_code(c, "journal_type", st->journal_type, SAGEX3_ID_MAX, "ODJ", err)) ||
        (rc = read_code(c, "journal_site", st->journal_site, SAGEX3_SITE_MAX, "FR011", err)) ||
        (rc = read_code(c, "refund_account", st->refund_account, SAGEX3_ID_MAX, "4110000", err)))
        return rc;
    v = json_object_get(c->settings, "ledger_page_size");
    st->ledger_page_size = SAGEX3_LEDGER_PAGE_DEFAULT;
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > SAGEX3_LEDGER_PAGE_MAX)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.ledger_page_size: must be an integer from 1 to %d",
                              SAGEX3_LEDGER_PAGE_MAX);
        st->ledger_page_size = (int)json_integer_value(v);
    }
    v = json_object_get(c->settings, "timeout_ms");
    st->timeout_ms = SAGEX3_TIMEOUT_DEFAULT_MS;
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 100 || json_integer_value(v) > 600000)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.timeout_ms: must be an integer from 100 to 600000");
        st->timeout_ms = (long)json_integer_value(v);
    }
    v = json_object_get(c->settings, "customer_update");
    update = v ? json_string_value(v) : "modify";
    if (!update || (strcmp(update, "modify") != 0 && strcmp(update, "keep") != 0))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.customer_update: must be \"modify\" (a found customer whose "
                          "fields differ is updated) or \"keep\" (left as it is)");
    st->customer_modify = strcmp(update, "modify") == 0;
    if ((rc = read_public_names(c, st, err)) || (rc = read_ids(c, st, err)))
        return rc;
    return PB_OK;
}

static enum pb_rc sagex3_init(struct pb_connection *c, struct pb_err *err)
{
    struct sagex3_state *st = calloc(1, sizeof *st);
    const char *user = pb_connection_secret(c, "username");
    const char *password = pb_connection_secret(c, "password");
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    memcpy(st->ids, default_ids, sizeof st->ids);
    rc = read_settings(c, st, err);
    if (rc)
        goto fail;
    if (!user || !user[0] || strchr(user, ':')) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.username: required (the X3 user of the web services, without "
                        "':')");
        goto fail;
    }
    if (!password || !password[0]) {
        rc = pb_err_set(err, PB_ERR_CONFIG, "secrets.password: required (that user's password)");
        goto fail;
    }
    xmlInitParser();
    st->magic = SAGEX3_STATE_MAGIC;
    c->state = st;
    return PB_OK;
fail:
    free(st);
    return rc;
}

static void sagex3_destroy(struct pb_connection *c)
{
    struct sagex3_state *st = pb__sagex3_state(c);
    if (!st)
        return;
    st->magic = 0;
    free(st);
    c->state = NULL;
}

/* The command table: name -> what runs it. */
enum command_kind { CMD_UPSERT, CMD_CREATE, CMD_ALLOCATE };

static const struct {
    const char *name;
    enum command_kind kind;
    enum sagex3_entity entity;
} commands[] = {
    {"customer.upsert", CMD_UPSERT, X3_CUSTOMER},
    {"salesorder.create", CMD_CREATE, X3_SALES_ORDER},
    {"stock.allocate", CMD_ALLOCATE, X3_ALLOCATION},
    {"payment.create", CMD_CREATE, X3_PAYMENT},
    {"journal.create", CMD_CREATE, X3_JOURNAL},
    {NULL, CMD_UPSERT, X3_CUSTOMER},
};

static int command_index(const char *command)
{
    for (int i = 0; command && commands[i].name; i++)
        if (strcmp(commands[i].name, command) == 0)
            return i;
    return -1;
}

static size_t sagex3_max_batch(const struct pb_connection *c, const char *command)
{
    return command_index(command) >= 0 ? 1 : 0;
}

static enum pb_rc sagex3_execute(struct pb_connection *c, struct pb_call_ctx *ctx,
                                 struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    const char *command;
    int k;
    enum pb_rc first = PB_OK;
    int all_same = 1;

    if (!pb__sagex3_state(c))
        return pb_err_set(err, PB_ERR_INTERNAL, "sagex3 connection used before init");
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
    k = command_index(command);
    for (size_t i = 0; i < n; i++) {
        struct pb_sink_item *it = &items[i];
        if (k < 0) {
            pb__sagex3_item_fail(it, PB_ERR_PERMANENT, -1,
                                 "the sagex3 connector has no command \"%.64s\" (it knows "
                                 "customer.upsert, salesorder.create, stock.allocate, "
                                 "payment.create, journal.create)",
                                 command);
        } else if (!json_is_object(it->document)) {
            pb__sagex3_item_fail(it, PB_ERR_MAPPING, -1,
                                 "the mapped document of %s must be a JSON object (X3 groups "
                                 "by id, see docs/connectors.md, sagex3)",
                                 command);
        } else if (commands[k].kind == CMD_UPSERT) {
            pb__sagex3_customer_upsert(c, ctx, it);
        } else if (commands[k].kind == CMD_ALLOCATE) {
            pb__sagex3_stock_allocate(c, ctx, it);
        } else {
            pb__sagex3_create(c, ctx, it, commands[k].entity);
        }
        if (i == 0)
            first = it->rc;
        else if (it->rc != first)
            all_same = 0;
    }
    /* one failure that hit every item alike is also the call's */
    if (first != PB_OK && all_same)
        return pb_err_set(err, first, "%s", items[0].message);
    return PB_OK;
}

const struct pb_connector_type pb_connector_sagex3 = {
    .abi = PB_CONNECTOR_ABI,
    .name = "sagex3",
    .caps = PB_CAP_SINK | PB_CAP_LEDGER | PB_CAP_JOURNAL,
    .init = sagex3_init,
    .destroy = sagex3_destroy,
    .inbound = NULL,
    .confirm = NULL,
    .max_batch = sagex3_max_batch,
    .execute = sagex3_execute,
    /* X3 publishes no rate limit; its pool size bounds concurrency, and a
     * busy pool is answered as transient. Operators set `rate_limit` in the
     * connection to the pool size (docs/connectors.md). */
    .default_rate_limit = {0, 0, 0, 0},
    .poll = NULL,
    .refund = NULL,
    .settlement = NULL,
    .ledger = pb__sagex3_ledger,
    .post_journal = pb__sagex3_post_journal,
};
