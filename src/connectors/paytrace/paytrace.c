/*
 * connectors/paytrace/paytrace.c: the PayTrace (API v1, JSON) source
 * connector's type table, and its settings.
 *
 * What it owns. `pb_connector_paytrace`, the constant table the registry
 * lists, and the connection state built by init() (see docs/connectors.md,
 * section "paytrace", for the reference):
 *
 *   settings.api_base               required, e.g. "https://api.paytrace.com"
 *   settings.token_path             "/oauth/token"
 *   settings.export_path            "/v1/transactions/export/by_date_range"
 *   settings.settled_export_path    "/v1/batches/export_settled" (unverified path)
 *   settings.signature_window_s     1..86400, default 300: replay window on created_at
 *   settings.timeout_ms             100..600000, default 30000
 *   settings.poll_overlap_s         0..86400, default 300: the poller re-reads this far
 *                                   back from its cursor (late transactions)
 *   settings.token_refresh_margin_s 0..3600, default 300
 *   settings.currency               ISO 4217, default "USD": records without a currency
 *   secrets.username, secrets.password   required: the OAuth2 password grant
 *   secrets.webhook_secret               required: HMAC key of X-PayTrace-Signature
 *   secrets.integrator_id                optional: added to every request body
 *
 * Capabilities: INBOUND (the signed webhook), POLL (export/by_date_range from
 * a cursor, the safety net for webhooks that never arrive) and REFUND
 * (refund/for_transaction). No CONFIRM: the poller reads the same
 * authoritative records, and a webhook is only accepted with a valid HMAC.
 *
 * Invariants. After init, c->state is a `struct paytrace_state` carrying
 * PAYTRACE_STATE_MAGIC; everything in it but the token cache is never
 * written again, so every slot may run on any number of threads. Secrets are
 * read from c->secrets at the moment of use and never copied into the state,
 * a log line or an error message.
 *
 * Rejected designs.
 *   - Ignoring unknown settings keys: a typo ("poll_overlap": 600) would
 *     silently keep the default. init() names the unknown key instead.
 *   - Making api_base optional for a webhook-only connection: the poller is
 *     what makes "a webhook that never arrives" safe, so a connection without
 *     it would quietly lose transactions.
 *   - A CONFIRM step like Opayo's: it would call export/by_id for every
 *     webhook, doubling API traffic, to learn what the poller learns anyway.
 */
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/money.h"
#include "paytrace.h"
#include "paytrace_internal.h"
#include "connectors/settlement/settlement_fetch.h" /* settlement: paytrace_settlement.c */

static const char *const known_settings[] = {
    "api_base",           "token_path", "export_path",    "settled_export_path",
    "signature_window_s", "timeout_ms", "poll_overlap_s", "token_refresh_margin_s",
    "currency",           "settlement_source", NULL,
};

struct paytrace_state *pb__paytrace_state(const struct pb_connection *c)
{
    struct paytrace_state *st = c ? c->state : NULL;
    return st && st->magic == PAYTRACE_STATE_MAGIC ? st : NULL;
}

static int known_setting(const char *key)
{
    for (size_t i = 0; known_settings[i]; i++)
        if (strcmp(known_settings[i], key) == 0)
            return 1;
    return 0;
}

static int secret_present(const struct pb_connection *c, const char *key)
{
    const char *v = pb_connection_secret(c, key);
    return v && v[0];
}

static enum pb_rc read_int(json_t *s, const char *key, long lo, long hi, long def, long *out,
                           struct pb_err *err)
{
    json_t *v = s ? json_object_get(s, key) : NULL;
    *out = def;
    if (!v)
        return PB_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: must be an integer from %ld to %ld",
                          key, lo, hi);
    *out = (long)json_integer_value(v);
    return PB_OK;
}

/* A path setting: starts with '/', no spaces, no query, fits. */
static enum pb_rc read_path(json_t *s, const char *key, const char *def, char *out, size_t len,
                            struct pb_err *err)
{
    json_t *v = s ? json_object_get(s, key) : NULL;
    const char *p = def;
    if (v) {
        p = json_string_value(v);
        if (!p || p[0] != '/' || strpbrk(p, " \t\r\n?#") || strlen(p) != json_string_length(v))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.%s: must be a path starting with '/' such as \"%s\"", key,
                              def);
    }
    if (strlen(p) >= len)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.%s: longer than %zu characters", key,
                          len - 1);
    memcpy(out, p, strlen(p) + 1);
    return PB_OK;
}

static enum pb_rc read_settings(const struct pb_connection *c, struct paytrace_state *st,
                                struct pb_err *err)
{
    json_t *s = c->settings;
    const char *key, *base;
    json_t *v;
    size_t len;
    enum pb_rc rc;

    if (s && !json_is_object(s))
        return pb_err_set(err, PB_ERR_CONFIG, "settings: must be an object");
    if (s) {
        json_object_foreach(s, key, v)
        {
            if (!known_setting(key))
                return pb_err_set(err, PB_ERR_CONFIG,
                                  "settings.%s: unknown setting of a paytrace connection (known: "
                                  "api_base, token_path, export_path, settled_export_path, "
                                  "signature_window_s, timeout_ms, poll_overlap_s, "
                                  "token_refresh_margin_s, currency, settlement_source)",
                                  key);
        }
    }

    v = s ? json_object_get(s, "api_base") : NULL;
    base = json_string_value(v);
    len = base ? strlen(base) : 0;
    if (!base || (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) ||
        len <= 8 || len != json_string_length(v) || strpbrk(base, " \t\r\n?#"))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.api_base: required, an http(s) URL such as "
                          "\"https://api.paytrace.com\" or \"https://api.sandbox.paytrace.com\"");
    while (len > 0 && base[len - 1] == '/')
        len--;
    if (len >= sizeof st->api_base)
        return pb_err_set(err, PB_ERR_CONFIG, "settings.api_base: longer than %zu characters",
                          sizeof st->api_base - 1);
    memcpy(st->api_base, base, len);
    st->api_base[len] = '\0';

    if ((rc = read_path(s, "token_path", "/oauth/token", st->token_path, sizeof st->token_path,
                        err)) ||
        (rc = read_path(s, "export_path", "/v1/transactions/export/by_date_range", st->export_path,
                        sizeof st->export_path, err)) ||
        (rc = read_path(s, "settled_export_path", "/v1/batches/export_settled",
                        st->settled_export_path, sizeof st->settled_export_path, err)) ||
        (rc = read_int(s, "signature_window_s", 1, PAYTRACE_WINDOW_MAX_S, PAYTRACE_WINDOW_DEFAULT_S,
                       &st->window_s, err)) ||
        (rc = read_int(s, "timeout_ms", 100, 600000, PAYTRACE_TIMEOUT_DEFAULT_MS, &st->timeout_ms,
                       err)) ||
        (rc = read_int(s, "poll_overlap_s", 0, PAYTRACE_OVERLAP_MAX_S, PAYTRACE_OVERLAP_DEFAULT_S,
                       &st->overlap_s, err)) ||
        (rc = read_int(s, "token_refresh_margin_s", 0, PAYTRACE_REFRESH_MARGIN_MAX_S,
                       PAYTRACE_REFRESH_MARGIN_DEFAULT_S, &st->refresh_margin_s, err)))
        return rc;

    memcpy(st->currency, "USD", 4);
    v = s ? json_object_get(s, "currency") : NULL;
    if (v) {
        if (!json_is_string(v) || !pb_currency_valid(json_string_value(v)))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.currency: must be an ISO 4217 code in upper case such "
                              "as \"USD\"");
        memcpy(st->currency, json_string_value(v), 4);
    }
    return PB_OK;
}

static enum pb_rc paytrace_init(struct pb_connection *c, struct pb_err *err)
{
    static const struct {
        const char *key, *why;
    } required[] = {
        {"username", "the PayTrace API user of the OAuth2 password grant"},
        {"password", "that user's password"},
        {"webhook_secret", "the key of the X-PayTrace-Signature HMAC"},
    };
    struct paytrace_state *st;
    enum pb_rc rc;

    if (c->secrets && !json_is_object(c->secrets))
        return pb_err_set(err, PB_ERR_CONFIG, "secrets: must be an object");
    st = calloc(1, sizeof *st);
    if (!st)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = read_settings(c, st, err);
    if (rc)
        goto fail;
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (!secret_present(c, required[i].key)) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "secrets.%s: required (%s)", required[i].key,
                            required[i].why);
            goto fail;
        }
    }
    if (pthread_mutex_init(&st->token_lock, NULL) != 0) {
        rc = pb_err_set(err, PB_ERR_INTERNAL, "cannot create the token lock");
        goto fail;
    }
    st->magic = PAYTRACE_STATE_MAGIC;
    c->state = st;
    return PB_OK;
fail:
    free(st);
    return rc;
}

static void paytrace_destroy(struct pb_connection *c)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    if (!st)
        return;
    pb__paytrace_token_clear(st);
    pthread_mutex_destroy(&st->token_lock);
    st->magic = 0;
    free(st);
    c->state = NULL;
}

const struct pb_connector_type pb_connector_paytrace = {
    .abi = PB_CONNECTOR_ABI,
    .name = "paytrace",
    .caps = PB_CAP_INBOUND | PB_CAP_POLL | PB_CAP_REFUND | PB_CAP_SETTLEMENT,
    .init = paytrace_init,
    .destroy = paytrace_destroy,
    .inbound = pb__paytrace_inbound,
    .confirm = NULL,
    .max_batch = NULL,
    .execute = NULL,
    .default_rate_limit = {0, 0, 0, 0},
    .poll = pb__paytrace_poll,
    .refund = pb__paytrace_refund,
    .settlement = pb_settlement_paytrace_days, /* paytrace_settlement.c */
};
