/*
 * connectors/xero/xero_token.c: the OAuth2 access token of a Xero custom
 * connection (client_credentials grant), cached per connection.
 *
 * The exchange: POST settings.token_url with the form body
 * "grant_type=client_credentials", HTTP Basic secrets.client_id:client_secret,
 * and the reply {"access_token","expires_in":1800,"token_type":"Bearer"}.
 * Every exchange is appended to the caller's trace; pb_trace_http() never
 * records header values (Basic auth) and replaces JSON members whose key
 * contains "token" (access_token) by "***", so the token stays out of it.
 *
 * The cache. One token per connection in struct xero_state, guarded by
 * token_lock. A token is used while now + margin < expires_at, where margin is
 * settings.token_refresh_margin_s but never more than half the lifetime Xero
 * granted (so a short-lived token is not refetched on every call). "now" is
 * ctx->now (the engine's clock, injectable in tests), or time(NULL) when 0.
 * Each fetch bumps token_generation; a caller that got a 401 invalidates
 * only the generation it used, so N threads that all see one revoked token
 * cause one new fetch, not N.
 *
 * Locking: the lock is held across the token HTTP call. That is deliberate:
 * the callers waiting on it would otherwise all fetch a token of their own.
 * The token endpoint is not the Accounting API, so the call does not go
 * through the connection's rate limiter (and cannot deadlock on it while
 * holding the lock). No other lock is taken inside it.
 *
 * Errors. The token endpoint refusing the credentials (400/401,
 * invalid_client) is reported as PB_ERR_TRANSIENT, not permanent: it is a
 * configuration problem an operator fixes by rotating the secret, and the
 * jobs waiting meanwhile should go through once it is fixed instead of all
 * becoming dead letters. The retry policy's attempt limit still bounds it.
 *
 * Rejected: refresh tokens. A custom connection has none; client_credentials
 * is simply repeated. Rejected: a background refresher thread; the lazy
 * refresh under the lock costs one call per 28 minutes and needs no thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "net/trace.h"
#include "xero_internal.h"

#define TOKEN_FORM_BODY "grant_type=client_credentials"

static char *dup_secret(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

void pb__xero_token_clear(struct xero_state *st)
{
    pb_secret_free(st->token);
    st->token = NULL;
    st->token_expires_at = 0;
    st->token_lifetime_s = 0;
}

/* The error text of an OAuth error reply ({"error":"invalid_client"}). */
static void oauth_error(const struct pb_http_call *call, char *out, size_t len)
{
    json_t *root = call->response ? json_loadb(call->response, call->response_len, 0, NULL) : NULL;
    const char *e = json_string_value(json_object_get(root, "error"));
    const char *d = json_string_value(json_object_get(root, "error_description"));
    snprintf(out, len, "%s%s%s", e ? e : "no OAuth error in the reply", d ? ": " : "",
             d ? d : "");
    json_decref(root);
}

/* Fetch a token; called with token_lock held. */
static enum pb_rc fetch(struct pb_connection *c, struct xero_state *st, struct pb_call_ctx *ctx,
                        time_t now, struct pb_err *err)
{
    struct pb_http_call call;
    json_t *root = NULL, *expires;
    const char *token;
    long long lifetime = XERO_TOKEN_LIFETIME_DEFAULT_S;
    char why[256];
    enum pb_rc rc;

    memset(&call, 0, sizeof call);
    call.method = "POST";
    call.url = st->token_url;
    call.headers[0] = "Content-Type: application/x-www-form-urlencoded";
    call.headers[1] = "Accept: application/json";
    call.body = TOKEN_FORM_BODY;
    call.body_len = strlen(TOKEN_FORM_BODY);
    call.timeout_ms = st->timeout_ms;
    call.basic_user = pb_connection_secret(c, "client_id");
    call.basic_password = pb_connection_secret(c, "client_secret");
    call.max_response = 1024 * 1024;
    rc = pb_http_perform(ctx->http, &call, err);
    pb_trace_http(ctx->trace, &call, rc, err);
    if (rc && call.retry_after_s >= 0)
        ctx->retry_after_s = call.retry_after_s;
    if (rc) {
        if (call.status == 400 || call.status == 401 || call.status == 403) {
            oauth_error(&call, why, sizeof why);
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "Xero's token endpoint refused the client credentials (HTTP %ld, "
                            "%s): check secrets.client_id and secrets.client_secret of "
                            "connection %s",
                            call.status, why, c->name);
        } else if (rc != PB_ERR_NOMEM) {
            /* never the item's fault: keep the jobs waiting, not dead */
            pb_err_prefix(err, "fetching a Xero access token");
            rc = PB_ERR_TRANSIENT;
            if (err)
                err->rc = rc;
        }
        goto out;
    }
    root = json_loadb(call.response ? call.response : "", call.response_len, 0, NULL);
    token = json_string_value(json_object_get(root, "access_token"));
    expires = json_object_get(root, "expires_in");
    if (!token || !token[0] || strlen(token) > XERO_TOKEN_MAX || strpbrk(token, "\r\n")) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "Xero's token endpoint answered HTTP %ld without a usable access_token",
                        call.status);
        goto out;
    }
    if (json_is_integer(expires) && json_integer_value(expires) > 0)
        lifetime = json_integer_value(expires) < 86400 ? json_integer_value(expires) : 86400;
    pb__xero_token_clear(st);
    st->token = dup_secret(token);
    if (!st->token) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    st->token_expires_at = now + (time_t)lifetime;
    st->token_lifetime_s = (long)lifetime;
    st->token_generation++;
out:
    json_decref(root);
    if (call.response) /* it held the token */
        memset(call.response, 0, call.response_len);
    pb_http_call_reset(&call);
    return rc;
}

enum pb_rc pb__xero_token_get(struct pb_connection *c, struct pb_call_ctx *ctx, char **token_out,
                              uint64_t *generation_out, struct pb_err *err)
{
    struct xero_state *st = pb__xero_state(c);
    time_t now = ctx->now ? ctx->now : time(NULL);
    enum pb_rc rc = PB_OK;

    *token_out = NULL;
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "xero connection used before init");
    pthread_mutex_lock(&st->token_lock);
    if (st->token) {
        /* the margin, but never more than half the lifetime Xero granted */
        long margin = st->refresh_margin_s;
        if (margin > st->token_lifetime_s / 2)
            margin = st->token_lifetime_s / 2;
        if ((long long)st->token_expires_at - (long long)now <= margin)
            pb__xero_token_clear(st);
    }
    if (!st->token)
        rc = fetch(c, st, ctx, now, err);
    if (!rc) {
        *token_out = dup_secret(st->token);
        *generation_out = st->token_generation;
        if (!*token_out)
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_unlock(&st->token_lock);
    return rc;
}

void pb__xero_token_invalidate(struct pb_connection *c, uint64_t generation)
{
    struct xero_state *st = pb__xero_state(c);
    if (!st)
        return;
    pthread_mutex_lock(&st->token_lock);
    if (st->token_generation == generation)
        pb__xero_token_clear(st);
    pthread_mutex_unlock(&st->token_lock);
}
