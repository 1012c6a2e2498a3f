/*
 * net/http_client.c: outbound HTTP on one reused libcurl easy handle per
 * worker (see http_client.h).
 *
 * What it owns. A `struct pb_http_client` owns one CURL easy handle, and with
 * it curl's connection cache, DNS cache and TLS session cache. A call's
 * outputs (response body, response header copies) are owned by the
 * `struct pb_http_call` from pb_http_perform() until pb_http_call_reset()
 * (or the next pb_http_perform() on the same call, which frees them first).
 * Inputs are borrowed for the duration of pb_http_perform() only: the handle
 * is reset after every transfer so that it never keeps a pointer into the
 * caller's memory (body, header list, credentials).
 *
 * A call, step by step:
 *   1. check the inputs (method is a token; no CR/LF in header lines: a
 *      header from outside input must not smuggle a second request);
 *   2. if a limiter is set: acquire (may block up to its max_wait_ms); a
 *      refusal returns PB_ERR_TRANSIENT with retry_after_s and sends nothing;
 *   3. curl_easy_reset() and set every option afresh. Reset keeps the live
 *      connections, which is the point of keeping the handle: keep-alive;
 *   4. perform; the write callback appends to call->response up to
 *      max_response (curl's MAXFILESIZE refuses a larger Content-Length
 *      before the body is read; the callback catches chunked and
 *      unannounced bodies); the header callback keeps up to 32 headers of
 *      the final response (a 100 Continue's or a 1xx's are dropped);
 *   5. parse Retry-After; feed X-MinLimit-Remaining / X-DayLimit-Remaining
 *      (every reply) and, on a 429, Retry-After and X-Rate-Limit-Problem to
 *      the limiter (an absent problem is passed as "" so that the limiter
 *      counts the 429); then release the limiter slot;
 *   6. classify. Network errors -> TRANSIENT; 408/425/429/5xx -> TRANSIENT;
 *      other 4xx -> PERMANENT; 2xx/3xx -> OK (redirects are not followed).
 *      Cases the header does not list, decided here: a response above the
 *      cap -> PB_ERR_TOOBIG; a malformed URL or unsupported scheme ->
 *      PB_ERR_INVALID (not a network error: retrying cannot fix it); curl
 *      out of memory -> PB_ERR_NOMEM; a status outside 100-599 ->
 *      PB_ERR_PERMANENT (the server does not speak HTTP).
 *
 * Defaults: timeout_ms 15000 (total), connect timeout min(timeout, 5000),
 * max_response 16 MiB. A non-NULL body with body_len 0 is taken as a C
 * string (strlen), so string literals need no length. Without a body, POST,
 * PUT and PATCH send "Content-Length: 0"; GET, HEAD, DELETE send nothing.
 * "Expect:" is sent empty (no 100-continue round trip) unless the caller
 * sets Expect. call->ratelimit_wait_ns accumulates over the performs of one
 * call until pb_http_call_reset() (the header says "adds"); every other
 * output describes the last perform only.
 *
 * Error messages say method, URL and what happened, e.g.
 *   "POST https://api.xero.com/api.xro/2.0/Invoices: HTTP 503, retry after 7 s"
 *   "GET http://127.0.0.1:1/x: Failed to connect to 127.0.0.1 port 1 after 0 ms: ..."
 * The URL goes through pb_trace_redact_url() first (SYSPRO puts passwords in
 * query strings); header values and bodies never enter a message.
 *
 * Threading. A client is used by one thread at a time (not locked). Global
 * setup (curl_global_init) runs once, under pthread_once, on the first
 * pb_http_client_new(); CURLOPT_NOSIGNAL keeps curl away from SIGALRM in a
 * multi-threaded process (so DNS timeouts rely on curl's threaded resolver,
 * which the libcurl we build against uses).
 *
 * Rejected designs.
 *   - A new easy handle per call: a TCP + TLS handshake per ERP call, which
 *     for Xero from Europe costs more than the call.
 *   - One curl multi handle shared by all workers: it needs its own event
 *     loop thread and hands results back across threads; the workers already
 *     block on the store and the limiter, so a blocking easy call per worker
 *     is simpler and as fast for our call rates.
 *   - Following redirects: an ERP answering 3xx to a POST is a
 *     misconfiguration to surface, not to replay the body somewhere else;
 *     and curl would forward credentials to the new host.
 *   - Logging in the client: callers record calls through net/trace.c,
 *     which redacts; a client that logs would bypass that.
 */
#include "net/http_client.h"

#include <assert.h>
#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "net/ratelimit.h"
#include "net/trace.h"

#define HTTP_CLIENT_MAGIC 0x48434c49u /* "HCLI" */
#define DEFAULT_TIMEOUT_MS 15000L
#define CONNECT_TIMEOUT_MAX_MS 5000L
#define DEFAULT_MAX_RESPONSE ((size_t)16 * 1024 * 1024)
#define METHOD_MAX 16

struct pb_http_client {
    unsigned magic;              /* HTTP_CLIENT_MAGIC while alive */
    CURL *curl;                  /* owned; its connection cache is the reason this struct exists */
    long last_new_connections;   /* CURLINFO_NUM_CONNECTS of the last transfer */
    char errbuf[CURL_ERROR_SIZE]; /* curl's detail message of the last transfer */
};

/* State of one transfer, shared with the curl callbacks. */
struct transfer {
    struct pb_http_call *call;
    size_t cap;     /* bytes allocated for call->response */
    size_t max;     /* response size limit */
    int too_big;    /* the body went over max */
    int nomem;      /* an allocation failed in a callback */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;

static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- client lifecycle ------------------------------------------------------------ */

enum pb_rc pb_http_client_new(struct pb_http_client **out, struct pb_err *err)
{
    struct pb_http_client *c;
    if (!out)
        return pb_err_set(err, PB_ERR_INVALID, "http client: no output pointer");
    *out = NULL;
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return pb_err_set(err, PB_ERR_INTERNAL, "http client: curl_global_init failed: %s",
                          curl_easy_strerror(global_rc));
    c = calloc(1, sizeof(*c));
    if (!c)
        return pb_err_set(err, PB_ERR_NOMEM, "http client: out of memory");
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c);
        return pb_err_set(err, PB_ERR_NOMEM, "http client: curl_easy_init failed");
    }
    c->magic = HTTP_CLIENT_MAGIC;
    *out = c;
    return PB_OK;
}

void pb_http_client_free(struct pb_http_client *c)
{
    if (!c)
        return;
    assert(c->magic == HTTP_CLIENT_MAGIC);
    c->magic = 0;
    curl_easy_cleanup(c->curl);
    free(c);
}

long pb_http_client_new_connections(const struct pb_http_client *c)
{
    return c ? c->last_new_connections : 0;
}

/* ---- call outputs ------------------------------------------------------------------ */

static void free_headers(struct pb_http_call *call)
{
    for (int i = 0; i < call->n_resp_headers && i < PB_HTTP_RESP_MAX_HEADERS; i++) {
        free(call->resp_header_name[i]);
        free(call->resp_header_value[i]);
        call->resp_header_name[i] = call->resp_header_value[i] = NULL;
    }
    call->n_resp_headers = 0;
}

/* Free and clear the outputs of the last perform (not ratelimit_wait_ns). */
static void clear_outputs(struct pb_http_call *call)
{
    free(call->response);
    call->response = NULL;
    call->response_len = 0;
    free_headers(call);
    call->status = 0;
    call->retry_after_s = -1;
    call->duration_ns = 0;
    call->curl_error[0] = '\0';
}

void pb_http_call_reset(struct pb_http_call *call)
{
    if (!call)
        return;
    clear_outputs(call);
    memset(call, 0, sizeof(*call));
    call->retry_after_s = -1;
}

const char *pb_http_call_header(const struct pb_http_call *call, const char *name)
{
    if (!call || !name)
        return NULL;
    for (int i = 0; i < call->n_resp_headers && i < PB_HTTP_RESP_MAX_HEADERS; i++)
        if (call->resp_header_name[i] && strcasecmp(call->resp_header_name[i], name) == 0)
            return call->resp_header_value[i];
    return NULL;
}

/* ---- classification and parsing ---------------------------------------------------- */

enum pb_rc pb_http_classify_status(long status)
{
    if (status >= 200 && status < 400)
        return PB_OK;
    if (status == 408 || status == 425 || status == 429)
        return PB_ERR_TRANSIENT;
    if (status >= 400 && status < 500)
        return PB_ERR_PERMANENT;
    if (status >= 500 && status < 600)
        return PB_ERR_TRANSIENT;
    if (status == 0 || (status >= 100 && status < 200))
        return PB_ERR_TRANSIENT; /* no (final) reply: as a network error */
    return PB_ERR_PERMANENT;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

int pb_http_parse_retry_after(const char *value, long long now_unix)
{
    char buf[64];
    size_t n;
    if (!value)
        return -1;
    while (is_blank(*value))
        value++;
    n = strlen(value);
    while (n > 0 && is_blank(value[n - 1]))
        n--;
    if (n == 0 || n >= sizeof(buf))
        return -1;
    if (value[0] >= '0' && value[0] <= '9') {
        long long s = 0;
        for (size_t i = 0; i < n; i++) {
            if (value[i] < '0' || value[i] > '9')
                return -1; /* "1.5", "5s": not delta-seconds */
            if (s < INT_MAX)
                s = s * 10 + (value[i] - '0');
        }
        return s > INT_MAX ? INT_MAX : (int)s;
    }
    memcpy(buf, value, n);
    buf[n] = '\0';
    time_t t = curl_getdate(buf, NULL);
    if (t == (time_t)-1)
        return -1;
    long long d = (long long)t - now_unix;
    if (d < 0)
        return 0; /* a date in the past: retry now */
    return d > INT_MAX ? INT_MAX : (int)d;
}

/* Non-negative decimal header value, or -1 (absent or not a number). */
static long header_count(const struct pb_http_call *call, const char *name)
{
    const char *v = pb_http_call_header(call, name);
    long n = 0;
    if (!v || !*v)
        return -1;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return -1;
        if (n > (LONG_MAX - 9) / 10)
            return LONG_MAX;
        n = n * 10 + (*v - '0');
    }
    return n;
}

/* ---- curl callbacks ---------------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct transfer *t = userdata;
    struct pb_http_call *call = t->call;
    size_t n = size * nmemb;

    if (n > t->max - call->response_len) {
        t->too_big = 1;
        return 0; /* abort: CURLE_WRITE_ERROR */
    }
    if (call->response_len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 16384;
        while (cap < call->response_len + n + 1)
            cap *= 2;
        if (cap > t->max + 1)
            cap = t->max + 1;
        char *p = realloc(call->response, cap);
        if (!p) {
            t->nomem = 1;
            return 0;
        }
        call->response = p;
        t->cap = cap;
    }
    memcpy(call->response + call->response_len, ptr, n);
    call->response_len += n;
    call->response[call->response_len] = '\0';
    return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct transfer *t = userdata;
    struct pb_http_call *call = t->call;
    size_t n = size * nitems, name_end, vs, ve;
    const char *colon;

    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        free_headers(call); /* a new (final or interim) response starts */
        return n;
    }
    if (n == 0 || buf[0] == ' ' || buf[0] == '\t')
        return n; /* obsolete line folding: ignored */
    colon = memchr(buf, ':', n);
    if (!colon || call->n_resp_headers >= PB_HTTP_RESP_MAX_HEADERS)
        return n; /* blank line at the end, or over the limit: dropped */
    name_end = (size_t)(colon - buf);
    while (name_end > 0 && is_blank(buf[name_end - 1]))
        name_end--;
    vs = (size_t)(colon - buf) + 1;
    ve = n;
    while (vs < ve && is_blank(buf[vs]))
        vs++;
    while (ve > vs && is_blank(buf[ve - 1]))
        ve--;
    if (name_end == 0)
        return n;
    char *name = strndup(buf, name_end);
    char *value = strndup(buf + vs, ve - vs);
    if (!name || !value) {
        free(name);
        free(value);
        t->nomem = 1;
        return 0;
    }
    call->resp_header_name[call->n_resp_headers] = name;
    call->resp_header_value[call->n_resp_headers] = value;
    call->n_resp_headers++;
    return n;
}

/* ---- perform ------------------------------------------------------------------------------- */

static int method_is_token(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n >= METHOD_MAX)
        return 0;
    for (; *m; m++)
        if (!((*m >= 'A' && *m <= 'Z') || *m == '-' || *m == '_'))
            return 0;
    return 1;
}

static int has_header(const struct pb_http_call *call, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < PB_HTTP_CALL_MAX_HEADERS && call->headers[i]; i++)
        if (strncasecmp(call->headers[i], name, n) == 0 && call->headers[i][n] == ':')
            return 1;
    return 0;
}

/* Set the method and the body. */
static void set_method(CURL *h, const struct pb_http_call *call)
{
    const char *m = call->method;
    if (call->body) {
        size_t len = call->body_len ? call->body_len : strlen(call->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, call->body);
        if (strcmp(m, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
        return;
    }
    if (strcmp(m, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        if (strcmp(m, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    } else {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    }
}

static enum pb_rc curl_code_rc(CURLcode code)
{
    switch (code) {
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return PB_ERR_INVALID;
    case CURLE_OUT_OF_MEMORY:
        return PB_ERR_NOMEM;
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_UNKNOWN_OPTION:
    case CURLE_NOT_BUILT_IN:
        return PB_ERR_INTERNAL;
    default:
        return PB_ERR_TRANSIENT;
    }
}

enum pb_rc pb_http_perform(struct pb_http_client *c, struct pb_http_call *call, struct pb_err *err)
{
    struct transfer t;
    struct curl_slist *hdrs = NULL;
    char *url_safe = NULL;
    const char *url_msg;
    enum pb_rc rc = PB_OK;
    long timeout, connect_timeout;
    uint64_t t0;
    CURLcode code;
    CURL *h;
    int acquired = 0;

    if (!c || !call)
        return pb_err_set(err, PB_ERR_INVALID, "http call: no client or no call");
    assert(c->magic == HTTP_CLIENT_MAGIC);
    clear_outputs(call);
    if (!call->method || !call->url || !call->url[0])
        return pb_err_set(err, PB_ERR_INVALID, "http call: method and url are required");
    url_safe = pb_trace_redact_url(call->url);
    url_msg = url_safe ? url_safe : "(url)";
    if (!method_is_token(call->method)) {
        rc = pb_err_set(err, PB_ERR_INVALID, "http call to %s: method is not an HTTP token",
                        url_msg);
        goto out;
    }
    for (int i = 0; i < PB_HTTP_CALL_MAX_HEADERS && call->headers[i]; i++) {
        if (strpbrk(call->headers[i], "\r\n") || !strchr(call->headers[i], ':')) {
            rc = pb_err_set(err, PB_ERR_INVALID,
                            "%s %s: request header %d is not one \"Name: value\" line",
                            call->method, url_msg, i + 1);
            goto out;
        }
    }
    timeout = call->timeout_ms > 0 ? call->timeout_ms : DEFAULT_TIMEOUT_MS;
    connect_timeout = timeout < CONNECT_TIMEOUT_MAX_MS ? timeout : CONNECT_TIMEOUT_MAX_MS;
    memset(&t, 0, sizeof(t));
    t.call = call;
    t.max = call->max_response ? call->max_response : DEFAULT_MAX_RESPONSE;

    /* The limiter: wait for a token and a slot, or give up without sending. */
    if (call->limiter) {
        uint64_t waited = 0, retry_ms = 0;
        rc = pb_ratelimit_acquire(call->limiter, &waited, &retry_ms, err);
        call->ratelimit_wait_ns += waited;
        if (rc) {
            uint64_t s = (retry_ms + 999) / 1000;
            call->retry_after_s = s > INT_MAX ? INT_MAX : (int)s;
            pb_err_prefix(err, "%s %s: not sent", call->method, url_msg);
            goto out;
        }
        acquired = 1;
    }

    for (int i = 0; i < PB_HTTP_CALL_MAX_HEADERS && call->headers[i]; i++) {
        struct curl_slist *n = curl_slist_append(hdrs, call->headers[i]);
        if (!n) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "%s %s: out of memory", call->method, url_msg);
            goto out;
        }
        hdrs = n;
    }
    if (!has_header(call, "Expect")) {
        struct curl_slist *n = curl_slist_append(hdrs, "Expect:");
        if (!n) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "%s %s: out of memory", call->method, url_msg);
            goto out;
        }
        hdrs = n;
    }

    h = c->curl;
    curl_easy_reset(h); /* options only: live connections stay in the cache */
    c->errbuf[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, call->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "paybridge");
    /* every encoding libcurl can decode; max_response caps the decoded bytes */
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t.max);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    if (call->basic_user) {
        curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(h, CURLOPT_USERNAME, call->basic_user);
        curl_easy_setopt(h, CURLOPT_PASSWORD, call->basic_password ? call->basic_password : "");
    }
    set_method(h, call);

    t0 = now_ns();
    code = curl_easy_perform(h);
    call->duration_ns = now_ns() - t0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &call->status);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &c->last_new_connections);
    curl_easy_reset(h); /* drop pointers to the caller's body, headers and credentials */
    snprintf(call->curl_error, sizeof(call->curl_error), "%s",
             code == CURLE_OK ? "" : (c->errbuf[0] ? c->errbuf : curl_easy_strerror(code)));

    if (call->status) {
        const char *ra = pb_http_call_header(call, "Retry-After");
        call->retry_after_s = pb_http_parse_retry_after(ra, (long long)time(NULL));
    }

    /* Feedback to the limiter, before the slot is freed for the next waiter. */
    if (call->limiter && call->status) {
        long min_left = header_count(call, "X-MinLimit-Remaining");
        long day_left = header_count(call, "X-DayLimit-Remaining");
        if (call->status == 429) {
            const char *problem = pb_http_call_header(call, "X-Rate-Limit-Problem");
            pb_ratelimit_observe(call->limiter, min_left, day_left, call->retry_after_s,
                                 problem ? problem : "");
        } else if (min_left >= 0 || day_left >= 0) {
            pb_ratelimit_observe(call->limiter, min_left, day_left, -1, NULL);
        }
    }

    if (t.too_big || code == CURLE_FILESIZE_EXCEEDED) {
        rc = pb_err_set(err, PB_ERR_TOOBIG, "%s %s: response is larger than the limit of %zu bytes",
                        call->method, url_msg, t.max);
    } else if (t.nomem) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "%s %s: out of memory reading the response",
                        call->method, url_msg);
    } else if (code == CURLE_OPERATION_TIMEDOUT) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT, "%s %s: timed out (limits: %ld ms in all, %ld ms to "
                        "connect): %s", call->method, url_msg, timeout, connect_timeout,
                        call->curl_error);
    } else if (code != CURLE_OK) {
        /* curl_error: curl's detail line, or its generic text when there is none */
        rc = pb_err_set(err, curl_code_rc(code), "%s %s: %s", call->method, url_msg,
                        call->curl_error);
    } else {
        rc = pb_http_classify_status(call->status);
        if (rc && call->retry_after_s >= 0)
            pb_err_set(err, rc, "%s %s: HTTP %ld, retry after %d s", call->method, url_msg,
                       call->status, call->retry_after_s);
        else if (rc)
            pb_err_set(err, rc, "%s %s: HTTP %ld", call->method, url_msg, call->status);
    }
    if (rc == PB_ERR_TOOBIG) {
        free(call->response); /* a partial body would mislead a parser */
        call->response = NULL;
        call->response_len = 0;
    }

out:
    if (acquired)
        pb_ratelimit_release(call->limiter);
    curl_slist_free_all(hdrs);
    free(url_safe);
    if (!call->response && rc != PB_ERR_NOMEM) {
        call->response = calloc(1, 1); /* outputs promise a NUL-terminated string */
        call->response_len = 0;
    }
    return rc;
}
