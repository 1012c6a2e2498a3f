/*
 * connectors/opayo/opayo.c: the Opayo (Sage Pay / Elavon) Pi source
 * connector's type table, and its settings.
 *
 * What it owns. `pb_connector_opayo`, the constant table the registry lists,
 * and the connection state built by init() from settings (see
 * docs/connectors.md for the reference):
 *
 *   settings.api_base            Pi base URL, ".../api/v1" (required when confirm is on)
 *   settings.confirm             bool, default true: GET the transaction before posting
 *   settings.signature_window_s  integer 1..86400, default 300: replay window on createdAt
 *   settings.vendor_name         optional: when set, notifications for another vendor are refused
 *   secrets.notify_secret        required: HMAC-SHA256 key of X-Opayo-Signature
 *   secrets.integration_key      required when confirm is on (HTTP Basic user)
 *   secrets.integration_password required when confirm is on (HTTP Basic password)
 *
 * Invariants. After a successful init, c->state is a `struct opayo_state`
 * carrying OPAYO_STATE_MAGIC and is never written again, so inbound() and
 * confirm() may run on any number of threads with no lock. Secrets are read
 * from c->secrets at the moment of use and never copied, logged or put into
 * an error message.
 *
 * Rejected designs.
 *   - Ignoring unknown settings keys: a typo ("confrim": false) would silently
 *     keep the default. init() names the unknown key instead.
 *   - Copying secrets into the state: two copies of a secret to wipe, and no
 *     benefit, since the connection outlives every call.
 *   - A separate connector for the Server protocol's VPSSignature form POST:
 *     Pi is the API this project targets; the Server protocol can become a
 *     second inbound format of this connector when a user needs it.
 */
#include <stdlib.h>
#include <string.h>

#include "connectors/settlement/settlement_fetch.h" /* settlement: the Reporting API */
#include "opayo_internal.h"

static const char *const known_settings[] = {
    "api_base", "confirm", "signature_window_s", "vendor_name",
    /* the Reporting & Admin API (opayo_report.c: settlements) */
    "report_url", "report_timeout_ms", "report_page_rows", NULL,
};

const struct opayo_state *pb__opayo_state(const struct pb_connection *c)
{
    const struct opayo_state *st = c ? c->state : NULL;
    return st && st->magic == OPAYO_STATE_MAGIC ? st : NULL;
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

static enum pb_rc read_settings(const struct pb_connection *c, struct opayo_state *st,
                                struct pb_err *err)
{
    json_t *s = c->settings;
    const char *key;
    json_t *v;

    if (s && !json_is_object(s))
        return pb_err_set(err, PB_ERR_CONFIG, "settings: must be an object");
    if (s) {
        json_object_foreach(s, key, v) {
            if (!known_setting(key))
                return pb_err_set(err, PB_ERR_CONFIG,
                                  "settings.%s: unknown setting of an opayo connection "
                                  "(known: api_base, confirm, signature_window_s, vendor_name)",
                                  key);
        }
    }

    st->confirm = 1;
    v = s ? json_object_get(s, "confirm") : NULL;
    if (v) {
        if (!json_is_boolean(v))
            return pb_err_set(err, PB_ERR_CONFIG, "settings.confirm: must be true or false");
        st->confirm = json_is_true(v);
    }

    st->window_s = OPAYO_WINDOW_DEFAULT_S;
    v = s ? json_object_get(s, "signature_window_s") : NULL;
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > OPAYO_WINDOW_MAX_S)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.signature_window_s: must be an integer from 1 to %d "
                              "(seconds)",
                              OPAYO_WINDOW_MAX_S);
        st->window_s = (long)json_integer_value(v);
    }

    v = s ? json_object_get(s, "vendor_name") : NULL;
    if (v) {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) >= sizeof st->vendor_name)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.vendor_name: must be a non-empty string of at most %zu "
                              "characters",
                              sizeof st->vendor_name - 1);
        memcpy(st->vendor_name, json_string_value(v), json_string_length(v) + 1);
    }

    v = s ? json_object_get(s, "api_base") : NULL;
    if (v) {
        const char *base = json_string_value(v);
        size_t len = base ? strlen(base) : 0;
        if (!base || (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) ||
            len <= 8)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "settings.api_base: must be an http(s) URL such as "
                              "\"https://sandbox.opayo.eu.elavon.com/api/v1\"");
        while (len > 0 && base[len - 1] == '/')
            len--;
        if (len >= sizeof st->api_base)
            return pb_err_set(err, PB_ERR_CONFIG, "settings.api_base: longer than %zu characters",
                              sizeof st->api_base - 1);
        memcpy(st->api_base, base, len);
        st->api_base[len] = '\0';
    } else if (st->confirm) {
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.api_base: required while settings.confirm is true (the Pi "
                          "base URL, e.g. \"https://sandbox.opayo.eu.elavon.com/api/v1\")");
    }
    return PB_OK;
}

static enum pb_rc opayo_init(struct pb_connection *c, struct pb_err *err)
{
    struct opayo_state *st;
    enum pb_rc rc;

    if (c->secrets && !json_is_object(c->secrets))
        return pb_err_set(err, PB_ERR_CONFIG, "secrets: must be an object");
    st = calloc(1, sizeof *st);
    if (!st)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = read_settings(c, st, err);
    if (rc)
        goto fail;
    if (!secret_present(c, "notify_secret")) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.notify_secret: required (the key of the X-Opayo-Signature "
                        "HMAC)");
        goto fail;
    }
    if (st->confirm && !secret_present(c, "integration_key")) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.integration_key: required while settings.confirm is true");
        goto fail;
    }
    if (st->confirm && !secret_present(c, "integration_password")) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "secrets.integration_password: required while settings.confirm is true");
        goto fail;
    }
    st->magic = OPAYO_STATE_MAGIC;
    c->state = st;
    return PB_OK;
fail:
    free(st);
    return rc;
}

static void opayo_destroy(struct pb_connection *c)
{
    struct opayo_state *st = c->state;
    if (!st)
        return;
    st->magic = 0;
    free(st);
    c->state = NULL;
}

const struct pb_connector_type pb_connector_opayo = {
    .abi = PB_CONNECTOR_ABI,
    .name = "opayo",
    .caps = PB_CAP_INBOUND | PB_CAP_CONFIRM | PB_CAP_REFUND | PB_CAP_SETTLEMENT,
    .init = opayo_init,
    .destroy = opayo_destroy,
    .inbound = pb__opayo_inbound,
    .confirm = pb__opayo_confirm,
    .refund = pb__opayo_refund,
    .max_batch = NULL,
    .execute = NULL,
    .default_rate_limit = {0, 0, 0, 0},
    /* getBatchList, then getBatchDetail of each batch (opayo_report.c) */
    .settlement = pb_settlement_opayo_fetch_batches,
};
