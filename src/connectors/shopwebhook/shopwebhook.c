/*
 * connectors/shopwebhook/shopwebhook.c: the shop status webhook sink
 * connector's type table, its settings, and the dispatch of a batch.
 *
 * What it is for. A shop (the e-commerce front that took the order) wants to
 * know when paybridge has seen its order paid, refunded or failed, so that it
 * can show the customer the right state and release or hold the goods. Status
 * sync is a flow step like any other whose target is a connection of this
 * type: the engine maps the event into an order.status document, and this
 * connector POSTs it to the shop, signed. Because it is a step, the POST is a
 * durable job: retried with backoff, dead-lettered with the evidence, and
 * recorded in the xref like an ERP write. Nothing in the engine knows shops.
 *
 * What it owns. `pb_connector_shopwebhook` and the connection state (see
 * shopwebhook_internal.h). Settings and secrets (docs/connectors.md has the
 * reference):
 *
 *   settings.url          required: the shop's status endpoint, http(s)
 *   settings.timeout_ms   100..600000, default 10000: per POST
 *   settings.header_name  default "X-Paybridge-Signature": the signature header
 *   secrets.signing_secret  required: the HMAC key the shop shares
 *
 * Commands and their batch sizes: order.status -> 1 (one POST per state
 * change: a shop endpoint takes one status, and one reply per item keeps the
 * outcome of each exact); anything else -> 0 (`paybridge check` reports the
 * flow).
 *
 * execute() initialises every item's outputs and delivers each item
 * (shopwebhook_send.c). It returns PB_OK whenever each item carries its own
 * outcome, and an error only when it could not look at the items at all
 * (used before init, a mixed batch): a batch is one item, so there is no
 * failure "of the whole batch" that the item would not already describe.
 *
 * Invariants: the state is written by init() only, so execute() is safe on
 * many threads without a lock. The secret stays in c->secrets.
 *
 * Rejected designs.
 *   - Unknown settings keys ignored: a typo ("timeout") would silently keep
 *     the default, so init() names the unknown key.
 *   - A status URL per document (the flow names where to POST): the URL is
 *     where a signed body goes, so it belongs to the connection's reviewed
 *     config, not to a jq expression over webhook data.
 *   - Batching several statuses into one POST: a shop that refuses one would
 *     make the outcome of the others ambiguous, and there is no standard
 *     batch shape for shops to implement.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "shopwebhook_internal.h"

static const char *const known_settings[] = {"url", "timeout_ms", "header_name", NULL};

const struct shop_state *pb__shopwebhook_state(const struct pb_connection *c)
{
    const struct shop_state *st = c ? c->state : NULL;
    return st && st->magic == SHOP_STATE_MAGIC ? st : NULL;
}

static enum pb_rc read_url(const struct pb_connection *c, struct shop_state *st, struct pb_err *err)
{
    json_t *v = json_object_get(c->settings, "url");
    const char *s;
    size_t len;

    if (!v)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.url: required (the shop's status endpoint, e.g. "
                          "https://shop.example.com/paybridge/status)");
    if (!json_is_string(v))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.url: must be a string (an http(s) URL)");
    s = json_string_value(v);
    len = strlen(s);
    if (len != json_string_length(v) ||
        (strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) ||
        len <= (strncmp(s, "https://", 8) == 0 ? 8u : 7u))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.url: must be an http(s) URL, got \"%.80s\"",
                          s);
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.url: must not contain spaces or control characters");
    if (len >= sizeof st->url)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.url: longer than %zu characters",
                          sizeof st->url - 1);
    memcpy(st->url, s, len + 1);
    return PB_OK;
}

/* RFC 9110 token characters: what a header field name may contain. */
static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static enum pb_rc read_header_name(const struct pb_connection *c, struct shop_state *st,
                                   struct pb_err *err)
{
    json_t *v = json_object_get(c->settings, "header_name");
    const char *s = SHOP_HEADER_NAME_DEFAULT;
    size_t len;

    if (v && !json_is_string(v))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.header_name: must be a string");
    if (v)
        s = json_string_value(v);
    len = strlen(s);
    if (len == 0 || len >= sizeof st->header_name || (v && len != json_string_length(v)))
        return pb_err_set(err, PB_ERR_CONFIG, "settings.header_name: must be 1 to %zu characters",
                          sizeof st->header_name - 1);
    for (size_t i = 0; i < len; i++)
        if (!is_tchar((unsigned char)s[i]))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.header_name: \"%.64s\" is not an HTTP header name "
                              "(letters, digits and !#$%%&'*+-.^_`|~ only)",
                              s);
    /* headers paybridge sets itself must not be shadowed by the signature */
    if (strcasecmp(s, "Content-Type") == 0 || strcasecmp(s, "Idempotency-Key") == 0 ||
        strcasecmp(s, "X-Paybridge-Event") == 0 || strcasecmp(s, "Content-Length") == 0 ||
        strcasecmp(s, "Host") == 0 || strcasecmp(s, "Expect") == 0)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.header_name: \"%s\" is a header paybridge already sends", s);
    memcpy(st->header_name, s, len + 1);
    return PB_OK;
}

static enum pb_rc read_settings(const struct pb_connection *c, struct shop_state *st,
                                struct pb_err *err)
{
    const char *key;
    json_t *v;
    enum pb_rc rc;

    if (!json_is_object(c->settings))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.url: required (the shop's status endpoint; settings missing)");
    json_object_foreach(c->settings, key, v) {
        int known = 0;
        for (size_t i = 0; known_settings[i]; i++)
            known |= strcmp(known_settings[i], key) == 0;
        if (!known)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.%.64s: unknown setting of a shopwebhook connection "
                              "(known: url, timeout_ms, header_name)",
                              key);
    }
    if ((rc = read_url(c, st, err)) || (rc = read_header_name(c, st, err)))
        return rc;
    v = json_object_get(c->settings, "timeout_ms");
    st->timeout_ms = SHOP_TIMEOUT_DEFAULT_MS;
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 100 || json_integer_value(v) > 600000)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.timeout_ms: must be an integer from 100 to 600000");
        st->timeout_ms = (long)json_integer_value(v);
    }
    return PB_OK;
}

static enum pb_rc shop_init(struct pb_connection *c, struct pb_err *err)
{
    struct shop_state *st;
    json_t *secret;
    enum pb_rc rc;

    if (!c)
        return pb_err_set(err, PB_ERR_INTERNAL, "init without a connection");
    st = calloc(1, sizeof *st);
    if (!st)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    if ((rc = read_settings(c, st, err)))
        goto fail;
    secret = c->secrets ? json_object_get(c->secrets, "signing_secret") : NULL;
    if (!json_is_string(secret) || json_string_length(secret) == 0) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.signing_secret: required (the key of the HMAC-SHA256 signature "
                        "the shop verifies; share it with the shop out of band)");
        goto fail;
    }
    if (strlen(json_string_value(secret)) != json_string_length(secret)) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.signing_secret: must not contain a NUL character");
        goto fail;
    }
    st->magic = SHOP_STATE_MAGIC;
    c->state = st;
    return PB_OK;
fail:
    free(st);
    return rc;
}

static void shop_destroy(struct pb_connection *c)
{
    struct shop_state *st = c ? (struct shop_state *)pb__shopwebhook_state(c) : NULL;
    if (!st)
        return;
    st->magic = 0;
    free(st);
    c->state = NULL;
}

static size_t shop_max_batch(const struct pb_connection *c, const char *command)
{
    return command && strcmp(command, SHOP_COMMAND) == 0 ? 1 : 0;
}

static enum pb_rc shop_execute(struct pb_connection *c, struct pb_call_ctx *ctx,
                               struct pb_sink_item *items, size_t n, struct pb_err *err)
{
    if (!pb__shopwebhook_state(c))
        return pb_err_set(err, PB_ERR_INTERNAL, "shopwebhook connection used before init");
    if (n == 0)
        return PB_OK;
    if (!ctx || !ctx->http || !items)
        return pb_err_set(err, PB_ERR_INTERNAL, "execute needs items and an HTTP client");
    for (size_t i = 0; i < n; i++) {
        items[i].rc = PB_ERR_INTERNAL;
        items[i].erp_id[0] = '\0';
        snprintf(items[i].message, sizeof items[i].message, "not processed");
        items[i].retry_after_s = -1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *command = items[i].command ? items[i].command : "";
        if (strcmp(command, SHOP_COMMAND) != 0) {
            pb__shopwebhook_item_fail(&items[i], PB_ERR_PERMANENT, -1,
                                      "the shopwebhook connector has no command \"%.64s\" (it "
                                      "knows " SHOP_COMMAND ")",
                                      command);
            continue;
        }
        /* max_batch is 1, but an engine that sends more gets each delivered
         * on its own rather than a refusal: each item is independent */
        pb__shopwebhook_deliver(c, ctx, &items[i]);
    }
    return PB_OK;
}

const struct pb_connector_type pb_connector_shopwebhook = {
    .abi = PB_CONNECTOR_ABI,
    .name = "shopwebhook",
    .caps = PB_CAP_SINK,
    .init = shop_init,
    .destroy = shop_destroy,
    .inbound = NULL,
    .confirm = NULL,
    .max_batch = shop_max_batch,
    .execute = shop_execute,
    /* no default_rate_limit: a shop publishes none; set rate_limit in the config */
    .poll = NULL,
    .refund = NULL,
};
