/*
 * connectors/paytrace/paytrace_token.c: the OAuth2 access token of a
 * PayTrace connection (resource owner password grant), cached per
 * connection.
 *
 * The exchange (WIRE-FORMATS.md, PayTrace API v1):
 *   POST {api_base}{token_path}
 *   Content-Type: application/x-www-form-urlencoded
 *   grant_type=password&username=<secrets.username>&password=<secrets.password>
 * answered by {"access_token","token_type":"bearer","expires_in":7200}. Each
 * exchange is appended to the caller's trace; pb_trace_http() masks form
 * fields named like "password" and JSON members named like "token", so
 * neither the password nor the access token reaches it.
 *
 * The cache. One token per connection, in struct paytrace_state, guarded by
 * token_lock. It is used while now + margin < expires_at, where the margin is
 * settings.token_refresh_margin_s but never more than half the lifetime
 * PayTrace granted, so a token is replaced before it runs out instead of
 * being discovered dead by a 401. "now" is ctx->now (the engine's clock,
 * injectable in tests) or time(NULL) when 0. Each fetch bumps
 * token_generation; a caller that got a 401 invalidates only the generation
 * it used, so N threads that see one revoked token cause one fetch, not N.
 *
 * Locking: the lock is held across the token call on purpose, so that
 * callers arriving meanwhile wait for that token instead of each fetching
 * their own. The token call does not go through the rate limiter (it is not
 * the transaction API), so it cannot deadlock on it while holding the lock.
 *
 * Errors. A token endpoint that refuses the credentials (400/401,
 * invalid_grant) is PB_ERR_TRANSIENT with a message naming the secrets to
 * check: an operator fixes a rotated password, and the jobs waiting meanwhile
 * should then go through rather than all be dead letters. The retry policy's
 * attempt limit still bounds it (the same choice as the Xero connector).
 *
 * Rejected: refresh tokens. PayTrace's password grant hands none out in the
 * documented reply; repeating the grant is the refresh. Rejected: a
 * background refresher thread; a lazy refresh under the lock costs one call
 * per ~2 hours and needs no thread to stop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "net/trace.h"
#include "paytrace_internal.h"

#define TOKEN_FORM_MAX 4096 /* grant_type + escaped username and password */

static char *dup_secret(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

void pb__paytrace_token_clear(struct paytrace_state *st)
{
    pb_secret_free(st->token);
    st->token = NULL;
    st->token_expires_at = 0;
    st->token_lifetime_s = 0;
}

/* Append `in` percent-encoded (application/x-www-form-urlencoded: all but
 * RFC 3986 unreserved characters) at out[*o]. -1 when it does not fit. */
static int form_escape(const char *in, char *out, size_t size, size_t *o)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        if (*o + (plain ? 1 : 3) >= size)
            return -1;
        if (plain) {
            out[(*o)++] = (char)*p;
        } else {
            out[(*o)++] = '%';
            out[(*o)++] = hex[*p >> 4];
            out[(*o)++] = hex[*p & 15];
        }
    }
    out[*o] = '\0';
    return 0;
}

static int form_add(const char *text, char *out, size_t size, size_t *o)
{
    size_t n = strlen(text);
    if (*o + n >= size)
        return -1;
    memcpy(out + *o, text, n + 1);
    *o += n;
    return 0;
}

/* The error words of an OAuth error reply ({"error":"invalid_grant",...}). */
static void oauth_error(const struct pb_http_call *call, char *out, size_t len)
{
    json_t *root = call->response ? json_loadb(call->response, call->response_len, 0, NULL) : NULL;
    const char *e = json_string_value(json_object_get(root, "error"));
    const char *d = json_string_value(json_object_get(root, "error_description"));
    snprintf(out, len, "%s%s%.200s", e ? e : "no OAuth error in the reply", d ? ": " : "",
             d ? d : "");
    json_decref(root);
}

/* Fetch a token; called with token_lock held. */
static enum pb_rc fetch(struct pb_connection *c, struct paytrace_state *st, struct pb_call_ctx *ctx,
                        time_t now, struct pb_err *err)
{
    const char *user = pb_connection_secret(c, "username");
    const char *password = pb_connection_secret(c, "password");
    char url[PAYTRACE_URL_MAX + PAYTRACE_PATH_MAX];
    char form[TOKEN_FORM_MAX];
    struct pb_http_call call;
    json_t *root = NULL, *expires;
    const char *token;
    long long lifetime = PAYTRACE_TOKEN_LIFETIME_DEFAULT_S;
    char why[320];
    size_t o = 0;
    enum pb_rc rc;

    if (!user || !user[0] || !password || !password[0])
        return pb_err_set(err, PB_ERR_CONFIG, "secrets.username and secrets.password: required");
    if (form_add("grant_type=password&username=", form, sizeof form, &o) ||
        form_escape(user, form, sizeof form, &o) || form_add("&password=", form, sizeof form, &o) ||
        form_escape(password, form, sizeof form, &o)) {
        memset(form, 0, sizeof form);
        return pb_err_set(err, PB_ERR_CONFIG,
                          "secrets.username and secrets.password: too long for a token request");
    }
    snprintf(url, sizeof url, "%s%s", st->api_base, st->token_path);

    memset(&call, 0, sizeof call);
    call.method = "POST";
    call.url = url;
    call.headers[0] = "Content-Type: application/x-www-form-urlencoded";
    call.headers[1] = "Accept: application/json";
    call.body = form;
    call.body_len = o;
    call.timeout_ms = st->timeout_ms;
    call.max_response = 1024 * 1024;
    rc = pb_http_perform(ctx->http, &call, err);
    pb_trace_http(ctx->trace, &call, rc, err);
    memset(form, 0, sizeof form);
    if (rc && call.retry_after_s >= 0)
        ctx->retry_after_s = call.retry_after_s;
    if (rc) {
        if (call.status == 400 || call.status == 401 || call.status == 403) {
            oauth_error(&call, why, sizeof why);
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "PayTrace's token endpoint refused the password grant (HTTP %ld, %s): "
                            "check secrets.username and secrets.password of connection %s",
                            call.status, why, c->name);
        } else if (rc != PB_ERR_NOMEM) {
            pb_err_prefix(err, "fetching a PayTrace access token");
            rc = PB_ERR_TRANSIENT;
            if (err)
                err->rc = rc;
        }
        goto out;
    }
    root = json_loadb(call.response ? call.response : "", call.response_len, 0, NULL);
    token = json_string_value(json_object_get(root, "access_token"));
    expires = json_object_get(root, "expires_in");
    if (!token || !token[0] || strlen(token) > PAYTRACE_TOKEN_MAX || strpbrk(token, "\r\n")) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "PayTrace's token endpoint answered HTTP %ld without a usable "
                        "access_token",
                        call.status);
        goto out;
    }
    if (json_is_integer(expires) && json_integer_value(expires) > 0)
        lifetime = json_integer_value(expires) < 86400 ? json_integer_value(expires) : 86400;
    pb__paytrace_token_clear(st);
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

enum pb_rc pb__paytrace_token_get(struct pb_connection *c, struct pb_call_ctx *ctx,
                                  char **token_out, uint64_t *generation_out, struct pb_err *err)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    time_t now = ctx->now ? ctx->now : time(NULL);
    enum pb_rc rc = PB_OK;

    *token_out = NULL;
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
    pthread_mutex_lock(&st->token_lock);
    if (st->token) {
        long margin = st->refresh_margin_s;
        if (margin > st->token_lifetime_s / 2)
            margin = st->token_lifetime_s / 2;
        if ((long long)st->token_expires_at - (long long)now <= margin)
            pb__paytrace_token_clear(st);
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

void pb__paytrace_token_invalidate(struct pb_connection *c, uint64_t generation)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    if (!st)
        return;
    pthread_mutex_lock(&st->token_lock);
    if (st->token_generation == generation)
        pb__paytrace_token_clear(st);
    pthread_mutex_unlock(&st->token_lock);
}
