/*
 * tests/unit/support/pbtest.c: the shared scaffolding of the unit tests; see
 * pbtest.h for what it owns. Touches only loopback sockets it opens and the
 * files and directories its callers name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "net/ratelimit.h"
#include "pbtest.h"

/* ---- assertions ---------------------------------------------------------------------------- */

void assert_contains(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("expected \"%s\" in: %s", needle, hay ? hay : "(null)");
}

void assert_lacks(const char *hay, const char *needle)
{
    if (hay && strstr(hay, needle))
        fail_msg("did not expect \"%s\" in: %s", needle, hay);
}

/* ---- HTTP with plain libcurl --------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct pbt_reply *r = arg;
    char *grown = realloc(r->body, r->len + size * n + 1);
    if (!grown)
        return 0;
    r->body = grown;
    memcpy(r->body + r->len, p, size * n);
    r->len += size * n;
    r->body[r->len] = '\0';
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct pbt_reply *r = arg;
    size_t used = strlen(r->headers);
    snprintf(r->headers + used, sizeof r->headers - used, "%.*s", (int)(size * n), p);
    return size * n;
}

long pbt_http_try(int port, const char *method, const char *path, const struct pbt_http_opts *opts,
                  const char *body, struct pbt_reply *r)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    char *url, *ct = NULL;
    size_t url_len = strlen(path) + 64;
    CURLcode rc;

    memset(r, 0, sizeof *r);
    assert_non_null(c);
    url = malloc(url_len);
    assert_non_null(url);
    snprintf(url, url_len, "http://127.0.0.1:%d%s", port, path);
    for (size_t i = 0; opts && opts->headers && opts->headers[i]; i++)
        h = curl_slist_append(h, opts->headers[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (h)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, opts && opts->timeout_ms ? opts->timeout_ms : 10000L);
    if (opts && opts->userpwd) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERPWD, opts->userpwd);
    }
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(r->content_type, sizeof r->content_type, "%s", ct ? ct : "");
    } else {
        r->status = -1;
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    free(url);
    if (!r->body)
        r->body = calloc(1, 1);
    else
        r->json = json_loadb(r->body, r->len, JSON_DECODE_ANY, NULL);
    return r->status;
}

long pbt_http(int port, const char *method, const char *path, const struct pbt_http_opts *opts,
              const char *body, struct pbt_reply *r)
{
    if (pbt_http_try(port, method, path, opts, body, r) < 0)
        fail_msg("%s %s on port %d: the transfer failed", method, path, port);
    return r->status;
}

void pbt_reply_free(struct pbt_reply *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

const char *pbt_reply_header(const struct pbt_reply *r, const char *name, char *buf, size_t len)
{
    const char *p = r->headers;
    size_t n = strlen(name);
    while (p && *p) {
        if (!strncasecmp(p, name, n) && p[n] == ':') {
            const char *v = p + n + 1, *e;
            while (*v == ' ')
                v++;
            e = strpbrk(v, "\r\n");
            snprintf(buf, len, "%.*s", (int)(e ? e - v : (long)strlen(v)), v);
            return buf;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return NULL;
}

long pbt_call(int port, const char *method, const char *path, const char *const *headers,
              const char *body, json_t **out)
{
    struct pbt_http_opts opts = {.headers = headers};
    struct pbt_reply r;
    long status = pbt_http(port, method, path, &opts, body, &r);
    if (out)
        *out = r.len ? json_loads(r.body, 0, NULL) : NULL;
    pbt_reply_free(&r);
    return status;
}

long pbt_admin(int port, const char *method, const char *path, const char *body, json_t **out)
{
    static const char *const json_header[] = {"Content-Type: application/json", NULL};
    return pbt_call(port, method, path, json_header, body, out);
}

void pbt_admin_post(int port, const char *path, const char *body)
{
    assert_int_equal(pbt_admin(port, "POST", path, body, NULL), 200);
}

json_t *pbt_stats(int port)
{
    json_t *s;
    assert_int_equal(pbt_admin(port, "GET", "/_sandbox/stats", NULL, &s), 200);
    assert_non_null(s);
    return s;
}

long long pbt_stat(int port, const char *key)
{
    json_t *s = pbt_stats(port);
    long long v;
    if (!json_is_integer(json_object_get(s, key)))
        fail_msg("stats has no integer \"%s\"", key);
    v = json_integer_value(json_object_get(s, key));
    json_decref(s);
    return v;
}

void pbt_wait_stat_zero(int port, const char *key, int seconds, const char *what)
{
    for (int i = 0; i < seconds * 100; i++) {
        json_t *s = pbt_stats(port);
        long long v = json_integer_value(json_object_get(s, key));
        json_decref(s);
        if (v == 0)
            return;
        usleep(10000);
    }
    fail_msg("%s still pending after %d s", what, seconds);
}

void pbt_faults(struct pb_sandbox *sb, const char *system, const char *json)
{
    struct pb_err err = {0};
    json_t *f = json_loads(json, 0, NULL);
    assert_non_null(f);
    if (pb_sandbox_set_faults(sb, system, f, &err) != PB_OK)
        fail_msg("faults: %s", err.msg);
    json_decref(f);
}

/* ---- an emulator or the sandbox ------------------------------------------------------------ */

static int env_client(struct pbt_env *e)
{
    struct pb_err err = {0};
    if (pb_http_client_new(&e->http, &err)) {
        fprintf(stderr, "client: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int pbt_env_emulator(struct pbt_env *e, const struct sbx_emulator_type *type, json_t *settings,
                     size_t max_body)
{
    struct pb_err err = {0};
    struct pb_httpd_config hc = {0};

    memset(e, 0, sizeof *e);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    e->type = type;
    e->emu = type->create(settings, &err);
    json_decref(settings);
    if (!e->emu) {
        fprintf(stderr, "emulator %s: %s\n", type->name, err.msg);
        return -1;
    }
    hc.port = 0;
    hc.threads = 0;
    hc.max_body = max_body;
    hc.routes = type->routes(e->emu);
    if (pb_httpd_start(&hc, &e->httpd, &err)) {
        fprintf(stderr, "httpd: %s\n", err.msg);
        return -1;
    }
    e->port = pb_httpd_port(e->httpd);
    if (type->started)
        type->started(e->emu, e->port);
    return env_client(e);
}

int pbt_env_sandbox(struct pbt_env *e, const char *system, json_t *settings)
{
    struct pb_err err = {0};
    enum pb_rc rc;

    memset(e, 0, sizeof *e);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = pb_sandbox_start(settings, &e->sb, &err);
    json_decref(settings);
    if (rc != PB_OK) {
        fprintf(stderr, "sandbox: %s\n", err.msg);
        return -1;
    }
    e->port = pb_sandbox_port(e->sb, system);
    return env_client(e);
}

void pbt_env_stop(struct pbt_env *e)
{
    pb_http_client_free(e->http);
    if (e->sb)
        pb_sandbox_stop(e->sb);
    if (e->httpd)
        pb_httpd_stop(e->httpd);
    if (e->emu)
        e->type->destroy(e->emu);
    memset(e, 0, sizeof *e);
    curl_global_cleanup();
}

struct pb_http_client *pbt_http_client(void)
{
    struct pb_http_client *http = NULL;
    struct pb_err err = {0};
    if (pb_http_client_new(&http, &err))
        fail_msg("client: %s", err.msg);
    return http;
}

/* ---- connections and calls ----------------------------------------------------------------- */

struct pb_connection *pbt_connection_try(const struct pb_connector_type *type, const char *name,
                                         json_t *settings, json_t *extra, json_t *secrets,
                                         struct pb_err *err, enum pb_rc *rc)
{
    struct pb_connection *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->magic = PB_CONNECTION_MAGIC;
    c->type = type;
    snprintf(c->name, sizeof c->name, "%s", name);
    c->settings = settings ? settings : json_object();
    if (extra) {
        json_object_update(c->settings, extra);
        json_decref(extra);
    }
    c->secrets = secrets;
    *rc = c->type->init(c, err);
    return c;
}

struct pb_connection *pbt_connection(const struct pb_connector_type *type, const char *name,
                                     json_t *settings, json_t *extra, json_t *secrets)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = pbt_connection_try(type, name, settings, extra, secrets, &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

void pbt_connection_free(struct pb_connection *c)
{
    if (c->state)
        c->type->destroy(c);
    pb_ratelimit_free(c->limiter);
    json_decref(c->settings);
    json_decref(c->secrets);
    free(c);
}

const char *pbt_url(char *buf, size_t len, int port, const char *suffix)
{
    snprintf(buf, len, "http://127.0.0.1:%d%s", port, suffix ? suffix : "");
    return buf;
}

struct pb_call_ctx pbt_ctx(struct pb_http_client *http, json_t *trace, time_t now)
{
    struct pb_call_ctx ctx = {.http = http, .trace = trace, .now = now, .retry_after_s = -1};
    return ctx;
}

void pbt_item(struct pb_sink_item *it, const char *command, json_t *document,
              const char *reference, const char *key, uint32_t attempt)
{
    memset(it, 0, sizeof *it);
    it->command = command;
    it->document = document;
    it->reference = reference;
    it->idempotency_key = key;
    it->attempt = attempt;
}

enum pb_rc pbt_execute1(struct pb_connection *c, struct pb_http_client *http, json_t *trace,
                        time_t now, struct pb_sink_item *it, struct pb_err *err)
{
    struct pb_call_ctx ctx = pbt_ctx(http, trace, now);
    return c->type->execute(c, &ctx, it, 1, err);
}

/* ---- a webhook receiver -------------------------------------------------------------------- */

static enum pb_http_action on_hook(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct pbt_receiver *rx = arg;
    const char *sig = rx->signature_header ? pb_http_header(req, rx->signature_header) : NULL;
    int status = 200;

    pthread_mutex_lock(&rx->mu);
    if (rx->fail_next > 0) {
        rx->fail_next--;
        status = 500;
    }
    if (rx->n < PBT_RECEIVED_MAX) {
        rx->body[rx->n] = malloc(req->body_len + 1);
        if (req->body_len)
            memcpy(rx->body[rx->n], req->body, req->body_len);
        rx->body[rx->n][req->body_len] = '\0';
        rx->len[rx->n] = req->body_len;
        snprintf(rx->signature[rx->n], sizeof rx->signature[0], "%s", sig ? sig : "");
        rx->answered[rx->n] = status;
        rx->n++;
    }
    pthread_mutex_unlock(&rx->mu);
    pb_http_response_set(resp, status, "text/plain", "ok", 2);
    return PB_HTTP_DONE;
}

int pbt_receiver_start(struct pbt_receiver *rx, const char *signature_header)
{
    struct pb_err err = {0};
    struct pb_httpd_config cfg = {0};

    memset(rx, 0, sizeof *rx);
    pthread_mutex_init(&rx->mu, NULL);
    rx->signature_header = signature_header;
    rx->routes[0] = (struct pb_http_route){"POST", "/hook", on_hook, rx};
    cfg.routes = rx->routes;
    if (pb_httpd_start(&cfg, &rx->httpd, &err)) {
        fprintf(stderr, "receiver: %s\n", err.msg);
        return -1;
    }
    snprintf(rx->url, sizeof rx->url, "http://127.0.0.1:%d/hook", pb_httpd_port(rx->httpd));
    return 0;
}

void pbt_receiver_clear(struct pbt_receiver *rx)
{
    pthread_mutex_lock(&rx->mu);
    for (int i = 0; i < rx->n; i++) {
        free(rx->body[i]);
        rx->body[i] = NULL;
    }
    rx->n = 0;
    rx->fail_next = 0;
    pthread_mutex_unlock(&rx->mu);
}

int pbt_receiver_count(struct pbt_receiver *rx)
{
    int n;
    pthread_mutex_lock(&rx->mu);
    n = rx->n;
    pthread_mutex_unlock(&rx->mu);
    return n;
}

void pbt_receiver_stop(struct pbt_receiver *rx)
{
    if (rx->httpd)
        pb_httpd_stop(rx->httpd);
    rx->httpd = NULL;
    pbt_receiver_clear(rx);
    pthread_mutex_destroy(&rx->mu);
}

/* ---- a server that answers from a script --------------------------------------------------- */

static enum pb_http_action scripted(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct pbt_script *s = arg;
    pthread_mutex_lock(&s->lock);
    snprintf(s->last_request, sizeof s->last_request, "%s", req->body ? req->body : "");
    if (s->next < s->n) {
        const char *b = s->body[s->next];
        pb_http_response_set(resp, s->status[s->next], s->content_type, b, strlen(b));
        s->next++;
    } else {
        pb_http_response_set(resp, 500, "text/plain", "script exhausted", 16);
    }
    pthread_mutex_unlock(&s->lock);
    return PB_HTTP_DONE;
}

void pbt_script_start(struct pbt_script *s, const char *content_type)
{
    struct pb_err err = {0};
    struct pb_httpd_config cfg = {0};

    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->content_type = content_type;
    s->routes[0] = (struct pb_http_route){"*", "*", scripted, s};
    cfg.routes = s->routes;
    if (pb_httpd_start(&cfg, &s->httpd, &err))
        fail_msg("scripted server: %s", err.msg);
    s->port = pb_httpd_port(s->httpd);
}

void pbt_script_add(struct pbt_script *s, int status, const char *body)
{
    pthread_mutex_lock(&s->lock);
    assert_true(s->n < PBT_SCRIPT_MAX);
    s->status[s->n] = status;
    s->body[s->n++] = strdup(body);
    pthread_mutex_unlock(&s->lock);
}

void pbt_script_reset(struct pbt_script *s)
{
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->n; i++)
        free(s->body[i]);
    s->n = s->next = 0;
    pthread_mutex_unlock(&s->lock);
}

void pbt_script_stop(struct pbt_script *s)
{
    if (s->httpd)
        pb_httpd_stop(s->httpd);
    s->httpd = NULL;
    pbt_script_reset(s);
    pthread_mutex_destroy(&s->lock);
}

/* ---- files --------------------------------------------------------------------------------- */

void pbt_tempdir(char *dir)
{
    if (!mkdtemp(dir))
        fail_msg("mkdtemp %s failed", dir);
}

void pbt_remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

void pbt_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

void pbt_write_file_in(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    pbt_write_file(path, text);
}

char *pbt_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

void pbt_hmac_hex(const char *secret, const char *body, size_t len, char out[65])
{
    unsigned char mac[32];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, mac,
         &mac_len);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
}
