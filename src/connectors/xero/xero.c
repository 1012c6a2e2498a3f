/*
 * connectors/xero/xero.c: the Xero Accounting API sink connector's type
 * table, its settings, and the dispatch of a batch to its command.
 *
 * What it owns. `pb_connector_xero` and the connection state (see
 * xero_internal.h). Settings and secrets (docs/connectors.md has the
 * reference):
 *
 *   settings.api_base               ".../api.xro/2.0" (default Xero's live URL)
 *   settings.token_url              ".../connect/token" (default Xero identity)
 *   settings.tenant_id              required: the xero-tenant-id of the organisation
 *   settings.batch_size             1..50, default 50: items per PUT
 *   settings.timeout_ms             100..600000, default 30000: per HTTP call
 *   settings.token_refresh_margin_s 0..1500, default 120
 *   settings.base_currency          the organisation's base currency (ISO 4217),
 *                                   used to refuse a journal in another one; absent:
 *                                   read once from GET /Organisation when needed
 *   settings.journal_contact        the Contact Name on the bank transactions a
 *                                   journal becomes (xero_recon.c), default
 *                                   "paybridge reconciliation" (Xero creates it by name)
 *   secrets.client_id, secrets.client_secret: the custom connection's credentials
 *
 * Commands are a table (COMMANDS): the name, whether it is batched, and the
 * function that runs it (xero_commands.c, xero_credit.c). Batch sizes:
 *   contact.upsert, invoice.create, payment.create, creditnote.create,
 *   creditnote.refund -> settings.batch_size (one PUT for the batch)
 *   invoice.void, creditnote.void, creditnote.allocate -> 1 (Xero takes one
 *   document per POST /Invoices/{id}, /CreditNotes/{id}, PUT
 *   /CreditNotes/{id}/Allocations)
 *   anything else -> 0 (unknown: `paybridge check` reports the flow)
 *
 * execute() initialises every item's outputs, hands the batch to the command
 * (xero_commands.c) and returns what it returns: PB_OK when each item carries
 * its own outcome, or the rc of one failure that hit every item alike (token
 * endpoint down, 429, 5xx), in which case the items carry it too, so an engine
 * that reads either gets the same answer.
 *
 * Invariants: the state is written by init() only, except the token cache
 * (xero_token.c, under its mutex), so execute() is safe on many threads.
 *
 * Rejected designs.
 *   - A token per worker thread: N threads would fetch N tokens and each
 *     401 would be seen N times; one cache per connection is what Xero expects.
 *   - Unknown settings keys ignored: a typo ("batchsize") would silently keep
 *     the default, so init() names the unknown key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "xero_internal.h"

#define XERO_API_BASE_DEFAULT "https://api.xero.com/api.xro/2.0"
#define XERO_TOKEN_URL_DEFAULT "https://identity.xero.com/connect/token"

static const char *const known_settings[] = {
    "api_base", "token_url", "tenant_id", "batch_size", "timeout_ms", "token_refresh_margin_s",
    "base_currency", "journal_contact", NULL,
};

struct xero_state *pb__xero_state(const struct pb_connection *c)
{
    struct xero_state *st = c ? c->state : NULL;
    return st && st->magic == XERO_STATE_MAGIC ? st : NULL;
}

static enum pb_rc read_url(const struct pb_connection *c, const char *key, const char *def,
                           char out[XERO_URL_MAX], struct pb_err *err)
{
    json_t *v = json_object_get(c->settings, key);
    const char *s = def;
    size_t len;

    if (v && !json_is_string(v))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: must be a string (an http(s) URL)",
                          key);
    if (v)
        s = json_string_value(v);
    len = strlen(s);
    if ((strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) || len <= 8)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: must be an http(s) URL, got \"%.80s\"",
                          key, s);
    while (len > 0 && s[len - 1] == '/')
        len--;
    if (len >= XERO_URL_MAX)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: longer than %d characters", key,
                          XERO_URL_MAX - 1);
    memcpy(out, s, len);
    out[len] = '\0';
    return PB_OK;
}

static enum pb_rc read_int(const struct pb_connection *c, const char *key, long long def,
                           long long min, long long max, long long *out, struct pb_err *err)
{
    json_t *v = json_object_get(c->settings, key);
    *out = def;
    if (!v)
        return PB_OK;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: must be an integer from %lld to %lld",
                          key, min, max);
    *out = json_integer_value(v);
    return PB_OK;
}

static enum pb_rc read_settings(const struct pb_connection *c, struct xero_state *st,
                                struct pb_err *err)
{
    const char *key, *tenant;
    json_t *v;
    long long n;
    enum pb_rc rc;

    if (!json_is_object(c->settings))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.tenant_id: required (settings missing)");
    json_object_foreach(c->settings, key, v) {
        int known = 0;
        for (size_t i = 0; known_settings[i]; i++)
            known |= strcmp(known_settings[i], key) == 0;
        if (!known)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.%s: unknown setting of a xero connection (known: "
                              "api_base, token_url, tenant_id, batch_size, timeout_ms, "
                              "token_refresh_margin_s, base_currency, journal_contact)",
                              key);
    }
    if ((rc = read_url(c, "api_base", XERO_API_BASE_DEFAULT, st->api_base, err)) ||
        (rc = read_url(c, "token_url", XERO_TOKEN_URL_DEFAULT, st->token_url, err)))
        return rc;
    tenant = json_string_value(json_object_get(c->settings, "tenant_id"));
    if (!tenant || !tenant[0])
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.tenant_id: required (the organisation's tenant id, listed "
                          "by GET https://api.xero.com/connections)");
    if (strlen(tenant) >= sizeof st->tenant_id || strpbrk(tenant, "\r\n"))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.tenant_id: must be one line of at most %zu characters",
                          sizeof st->tenant_id - 1);
    memcpy(st->tenant_id, tenant, strlen(tenant) + 1);
    if ((rc = read_int(c, "batch_size", XERO_BATCH_DEFAULT, 1, XERO_BATCH_MAX, &n, err)))
        return rc;
    st->batch_size = (size_t)n;
    if ((rc = read_int(c, "timeout_ms", XERO_TIMEOUT_DEFAULT_MS, 100, 600000, &n, err)))
        return rc;
    st->timeout_ms = (long)n;
    if ((rc = read_int(c, "token_refresh_margin_s", XERO_REFRESH_MARGIN_DEFAULT_S, 0, 1500, &n,
                       err)))
        return rc;
    st->refresh_margin_s = (long)n;
    v = json_object_get(c->settings, "base_currency");
    if (v) {
        const char *cur = json_string_value(v);
        if (!cur || !pb_currency_valid(cur))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.base_currency: must be an ISO 4217 code such as \"GBP\" "
                              "(the Xero organisation's base currency)");
        snprintf(st->base_currency, sizeof st->base_currency, "%s", cur);
    }
    v = json_object_get(c->settings, "journal_contact");
    snprintf(st->journal_contact, sizeof st->journal_contact, "%s", XERO_JOURNAL_CONTACT_DEFAULT);
    if (v) {
        const char *name = json_string_value(v);
        if (!name || !name[0] || strlen(name) >= sizeof st->journal_contact ||
            strpbrk(name, "\r\n"))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.journal_contact: must be one line of 1 to %zu "
                              "characters (a Xero contact name)",
                              sizeof st->journal_contact - 1);
        snprintf(st->journal_contact, sizeof st->journal_contact, "%s", name);
    }
    return PB_OK;
}

static enum pb_rc xero_init(struct pb_connection *c, struct pb_err *err)
{
    struct xero_state *st = calloc(1, sizeof *st);
    const char *id = pb_connection_secret(c, "client_id");
    const char *secret = pb_connection_secret(c, "client_secret");
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = read_settings(c, st, err);
    if (rc)
        goto fail;
    if (!id || !id[0]) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.client_id: required (the custom connection's client id)");
        goto fail;
    }
    if (!secret || !secret[0]) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.client_secret: required (the custom connection's secret)");
        goto fail;
    }
    if (pthread_mutex_init(&st->token_lock, NULL) != 0) {
        rc = pb_err_set(err, PB_ERR_INTERNAL, "cannot create the token mutex");
        goto fail;
    }
    if (pthread_mutex_init(&st->org_lock, NULL) != 0) {
        pthread_mutex_destroy(&st->token_lock);
        rc = pb_err_set(err, PB_ERR_INTERNAL, "cannot create the organisation mutex");
        goto fail;
    }
    st->magic = XERO_STATE_MAGIC;
    c->state = st;
    return PB_OK;
fail:
    free(st);
    return rc;
}

static void xero_destroy(struct pb_connection *c)
{
    struct xero_state *st = pb__xero_state(c);
    if (!st)
        return;
    pb__xero_token_clear(st);
    pthread_mutex_destroy(&st->token_lock);
    pthread_mutex_destroy(&st->org_lock);
    free(st->accounts);
    st->magic = 0;
    free(st);
    c->state = NULL;
}

typedef enum pb_rc (*xero_command_fn)(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       struct pb_sink_item *items, size_t n, struct pb_err *err);

static const struct xero_command {
    const char *name;
    int batched;                  /* 1: up to settings.batch_size items per call; 0: one */
    xero_command_fn run;
} COMMANDS[] = {
    {"contact.upsert", 1, pb__xero_contact_upsert},
    {"invoice.create", 1, pb__xero_create},
    {"payment.create", 1, pb__xero_create},
    {"invoice.void", 0, pb__xero_void},
    {"creditnote.create", 1, pb__xero_create},
    {"creditnote.allocate", 0, pb__xero_creditnote_allocate},
    {"creditnote.refund", 1, pb__xero_create},
    {"creditnote.void", 0, pb__xero_void},
    {NULL, 0, NULL},
};

static const struct xero_command *find_command(const char *name)
{
    for (const struct xero_command *cmd = COMMANDS; name && cmd->name; cmd++)
        if (strcmp(cmd->name, name) == 0)
            return cmd;
    return NULL;
}

static size_t xero_max_batch(const struct pb_connection *c, const char *command)
{
    const struct xero_state *st = pb__xero_state(c);
    const struct xero_command *cmd = find_command(command);
    if (!cmd)
        return 0;
    return cmd->batched ? (st ? st->batch_size : XERO_BATCH_DEFAULT) : 1;
}

static enum pb_rc xero_execute(struct pb_connection *c, struct pb_call_ctx *ctx,
                               struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    const char *command;

    if (!pb__xero_state(c))
        return pb_err_set(err, PB_ERR_INTERNAL, "xero connection used before init");
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
    if (n > xero_max_batch(c, command) && xero_max_batch(c, command) > 0)
        return pb_err_set(err, PB_ERR_INTERNAL, "%zu items exceed max_batch %zu for %s", n,
                          xero_max_batch(c, command), command);
    if (find_command(command))
        return find_command(command)->run(c, ctx, items, n, err);
    for (size_t i = 0; i < n; i++) {
        char known[256];
        size_t used = 0;
        known[0] = '\0';
        for (const struct xero_command *cmd = COMMANDS; cmd->name && used < sizeof known; cmd++)
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s",
                                     used ? ", " : "", cmd->name);
        pb__xero_item_fail(&items[i], PB_ERR_PERMANENT, -1,
                           "the xero connector has no command \"%.64s\" (it knows %s)", command,
                           known);
    }
    return pb_err_set(err, PB_ERR_PERMANENT, "%s", items[0].message);
}

const struct pb_connector_type pb_connector_xero = {
    .abi = PB_CONNECTOR_ABI,
    .name = "xero",
    .caps = PB_CAP_SINK | PB_CAP_LEDGER | PB_CAP_JOURNAL,
    .init = xero_init,
    .destroy = xero_destroy,
    .inbound = NULL,
    .confirm = NULL,
    .max_batch = xero_max_batch,
    .execute = xero_execute,
    .default_rate_limit = {60, 5000, 5, 60000},
    .ledger = pb__xero_ledger,
    .post_journal = pb__xero_post_journal,
};
