/*
 * tests/unit/test_http_client.c: net/http_client.c against local servers.
 *
 * Most cases talk to a route-table server (net/httpd.h) on 127.0.0.1 with a
 * thread per connection, so that one handler may block (the timeout case).
 * A second, raw one-shot server writes canned bytes that libmicrohttpd would
 * never send: a body without Content-Length (the write-callback cap) and 40
 * response headers (the 32-header cap). Connection refused uses a socket that
 * is bound but never listens. The limiter cases check that a refused acquire
 * sends nothing, and that 429 / X-MinLimit-Remaining answers reach the
 * limiter. Nothing here sleeps for more than ~0.6 s.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/http_client.h"
#include "net/httpd.h"
#include "net/ratelimit.h"

/* ---- the route-table server ---------------------------------------------------- */

static int request_count; /* /count hits; atomics: handlers run on server threads */

static enum pb_http_action h_ok(struct pb_http_request *req, struct pb_http_response *resp,
                                void *arg)
{
    pb_http_response_header(resp, "X-Custom", "custom-value");
    pb_http_response_set(resp, 200, "text/plain", "hello", 5);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_busy(struct pb_http_request *req, struct pb_http_response *resp,
                                  void *arg)
{
    pb_http_response_header(resp, "Retry-After", "7");
    pb_http_response_error(resp, 503, "unavailable", "try later");
    return PB_HTTP_DONE;
}

static enum pb_http_action h_busy_date(struct pb_http_request *req,
                                       struct pb_http_response *resp, void *arg)
{
    char date[64];
    struct tm tm;
    time_t when = time(NULL) + 120;
    gmtime_r(&when, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    pb_http_response_header(resp, "Retry-After", date);
    pb_http_response_error(resp, 503, "unavailable", "try later");
    return PB_HTTP_DONE;
}

static enum pb_http_action h_bad(struct pb_http_request *req, struct pb_http_response *resp,
                                 void *arg)
{
    pb_http_response_error(resp, 400, "invalid", "amount must be positive");
    return PB_HTTP_DONE;
}

static enum pb_http_action h_slow(struct pb_http_request *req, struct pb_http_response *resp,
                                  void *arg)
{
    usleep(600 * 1000);
    pb_http_response_set(resp, 200, "text/plain", "late", 4);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_big(struct pb_http_request *req, struct pb_http_response *resp,
                                 void *arg)
{
    size_t n = 64 * 1024;
    char *body = malloc(n);
    memset(body, 'x', n);
    pb_http_response_body_take(resp, 200, body, n);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_echo(struct pb_http_request *req, struct pb_http_response *resp,
                                  void *arg)
{
    char out[1024];
    const char *ct = pb_http_header(req, "Content-Type");
    const char *xt = pb_http_header(req, "X-Test");
    int n = snprintf(out, sizeof(out), "%s|%.*s|%s|%s", req->method, (int)req->body_len,
                     req->body, ct ? ct : "-", xt ? xt : "-");
    if (n < 0 || (size_t)n >= sizeof(out))
        n = (int)sizeof(out) - 1; /* snprintf says what it would have written */
    pb_http_response_set(resp, 200, "text/plain", out, (size_t)n);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_auth(struct pb_http_request *req, struct pb_http_response *resp,
                                  void *arg)
{
    const char *a = pb_http_header(req, "Authorization");
    if (a && strcmp(a, "Basic dXNlcjpwYXNz") == 0) /* user:pass */
        pb_http_response_set(resp, 200, "text/plain", "welcome", 7);
    else
        pb_http_response_error(resp, 401, "unauthorized", "bad credentials");
    return PB_HTTP_DONE;
}

static enum pb_http_action h_throttle(struct pb_http_request *req,
                                      struct pb_http_response *resp, void *arg)
{
    pb_http_response_header(resp, "Retry-After", "3");
    pb_http_response_header(resp, "X-Rate-Limit-Problem", "minute");
    pb_http_response_header(resp, "X-MinLimit-Remaining", "0");
    pb_http_response_error(resp, 429, "rate_limited", "slow down");
    return PB_HTTP_DONE;
}

static enum pb_http_action h_count(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    __atomic_add_fetch(&request_count, 1, __ATOMIC_SEQ_CST);
    pb_http_response_set(resp, 200, "text/plain", "counted", 7);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_last_call(struct pb_http_request *req,
                                       struct pb_http_response *resp, void *arg)
{
    pb_http_response_header(resp, "X-MinLimit-Remaining", "0");
    pb_http_response_header(resp, "X-DayLimit-Remaining", "100");
    pb_http_response_set(resp, 200, "application/json", "{}", 2);
    return PB_HTTP_DONE;
}

static const struct pb_http_route routes[] = {
    {"GET", "/ok", h_ok, NULL},
    {"GET", "/busy", h_busy, NULL},
    {"GET", "/busy-date", h_busy_date, NULL},
    {"*", "/bad", h_bad, NULL},
    {"GET", "/slow", h_slow, NULL},
    {"GET", "/big", h_big, NULL},
    {"*", "/echo", h_echo, NULL},
    {"GET", "/auth", h_auth, NULL},
    {"GET", "/throttle", h_throttle, NULL},
    {"GET", "/count", h_count, NULL},
    {"GET", "/last-call", h_last_call, NULL},
    {NULL, NULL, NULL, NULL},
};

struct fixture {
    struct pb_httpd *server;
    struct pb_http_client *client;
    struct pb_http_call call;
    char base[64];
    char url[256];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct pb_httpd_config cfg = {0};
    struct pb_err err;
    cfg.routes = routes;
    cfg.threads = 0;
    if (pb_httpd_start(&cfg, &f->server, &err) != PB_OK) {
        fprintf(stderr, "httpd: %s\n", err.msg);
        return -1;
    }
    if (pb_http_client_new(&f->client, &err) != PB_OK)
        return -1;
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", pb_httpd_port(f->server));
    pb_http_call_reset(&f->call);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    pb_http_call_reset(&f->call);
    pb_http_client_free(f->client);
    pb_httpd_stop(f->server);
    free(f);
    return 0;
}

static const char *url(struct fixture *f, const char *path)
{
    snprintf(f->url, sizeof(f->url), "%s%s", f->base, path);
    return f->url;
}

static enum pb_rc get(struct fixture *f, const char *path, struct pb_err *err)
{
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, path);
    return pb_http_perform(f->client, &f->call, err);
}

/* ---- a raw one-shot server ------------------------------------------------------- */

struct raw_server {
    int fd;
    int port;
    const char *reply;
    size_t reply_len;
    pthread_t thread;
};

static void *raw_main(void *arg)
{
    struct raw_server *s = arg;
    char buf[4096];
    size_t got = 0;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    while (got < sizeof(buf) - 1) {
        ssize_t n = read(c, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    for (size_t off = 0; off < s->reply_len;) {
        ssize_t n = write(c, s->reply + off, s->reply_len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(c);
    return NULL;
}

static int bound_socket(int *port, int do_listen)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    if (do_listen)
        assert_int_equal(listen(fd, 4), 0);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    return fd;
}

static void raw_start(struct raw_server *s, const char *reply, size_t len)
{
    s->fd = bound_socket(&s->port, 1);
    s->reply = reply;
    s->reply_len = len;
    assert_int_equal(pthread_create(&s->thread, NULL, raw_main, s), 0);
}

static void raw_stop(struct raw_server *s)
{
    pthread_join(s->thread, NULL);
    close(s->fd);
}

/* ---- cases -------------------------------------------------------------------------- */

static void test_get_ok_and_headers(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    assert_int_equal(get(f, "/ok", &err), PB_OK);
    assert_int_equal(f->call.status, 200);
    assert_string_equal(f->call.response, "hello");
    assert_int_equal(f->call.response_len, 5);
    assert_int_equal(f->call.retry_after_s, -1);
    assert_true(f->call.duration_ns > 0);
    assert_string_equal(pb_http_call_header(&f->call, "x-custom"), "custom-value");
    assert_string_equal(pb_http_call_header(&f->call, "X-CUSTOM"), "custom-value");
    assert_string_equal(pb_http_call_header(&f->call, "content-type"), "text/plain");
    assert_null(pb_http_call_header(&f->call, "X-Absent"));
    assert_true(f->call.n_resp_headers >= 2);
    /* a second perform on the same call frees the first outputs (ASan checks) */
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_string_equal(f->call.response, "hello");
}

static void test_503_retry_after(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    assert_int_equal(get(f, "/busy", &err), PB_ERR_TRANSIENT);
    assert_int_equal(f->call.status, 503);
    assert_int_equal(f->call.retry_after_s, 7);
    assert_non_null(strstr(err.msg, "GET http://127.0.0.1:"));
    assert_non_null(strstr(err.msg, "/busy: HTTP 503, retry after 7 s"));
    assert_non_null(strstr(f->call.response, "try later")); /* the body is kept */

    assert_int_equal(get(f, "/busy-date", &err), PB_ERR_TRANSIENT);
    assert_true(f->call.retry_after_s >= 110 && f->call.retry_after_s <= 121);
}

static void test_400_permanent_and_redacted_message(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    pb_http_call_reset(&f->call);
    f->call.method = "POST";
    f->call.url = url(f, "/bad?CompanyPassword=supersecret&x=1");
    f->call.headers[0] = "Authorization: Bearer HEADERSECRET";
    f->call.body = "{\"amount\":-5}";
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_PERMANENT);
    assert_int_equal(f->call.status, 400);
    assert_non_null(strstr(err.msg, "POST "));
    assert_non_null(strstr(err.msg, "CompanyPassword=***&x=1: HTTP 400"));
    assert_null(strstr(err.msg, "supersecret"));
    assert_null(strstr(err.msg, "HEADERSECRET"));
}

static void test_connection_refused(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    char u[64];
    int port, fd = bound_socket(&port, 0); /* bound, not listening: RST */
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/x", port);
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = u;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_TRANSIENT);
    assert_int_equal(f->call.status, 0);
    assert_true(f->call.curl_error[0] != '\0');
    assert_non_null(strstr(err.msg, u));
    assert_non_null(f->call.response);
    close(fd);
}

static void test_timeout(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/slow");
    f->call.timeout_ms = 150;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_TRANSIENT);
    assert_non_null(strstr(err.msg, "timed out (limits: 150 ms in all, 150 ms to connect)"));
    assert_true(f->call.duration_ns < 550ull * 1000000);
}

static void test_too_big(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/big");
    f->call.max_response = 1024;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_TOOBIG);
    assert_non_null(strstr(err.msg, "larger than the limit of 1024 bytes"));
    assert_int_equal(f->call.response_len, 0);
    /* the default limit takes it */
    assert_int_equal(get(f, "/big", &err), PB_OK);
    assert_int_equal(f->call.response_len, 64 * 1024);
    /* exactly at the limit is fine */
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/big");
    f->call.max_response = 64 * 1024;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
}

static void test_too_big_without_content_length(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    struct raw_server s;
    const char *head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    size_t n = strlen(head) + 100000;
    char *reply = malloc(n), u[64];
    memcpy(reply, head, strlen(head));
    memset(reply + strlen(head), 'y', 100000);
    raw_start(&s, reply, n);
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/", s.port);
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = u;
    f->call.max_response = 4096;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_TOOBIG);
    raw_stop(&s);
    free(reply);
}

static void test_header_cap(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    struct raw_server s;
    char reply[4096], u[64];
    size_t o = 0;
    o += (size_t)snprintf(reply + o, sizeof(reply) - o, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(reply + o, sizeof(reply) - o, "X-H%d:   v%d  \r\n", i, i);
    o += (size_t)snprintf(reply + o, sizeof(reply) - o,
                          "Content-Length: 2\r\nConnection: close\r\n\r\nok");
    raw_start(&s, reply, o);
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/", s.port);
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = u;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_int_equal(f->call.n_resp_headers, PB_HTTP_RESP_MAX_HEADERS);
    assert_string_equal(pb_http_call_header(&f->call, "x-h0"), "v0"); /* trimmed */
    assert_string_equal(pb_http_call_header(&f->call, "X-H31"), "v31");
    assert_null(pb_http_call_header(&f->call, "X-H32"));
    assert_string_equal(f->call.response, "ok");
    raw_stop(&s);
}

static void test_keep_alive(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    assert_int_equal(get(f, "/ok", &err), PB_OK);
    long first = pb_http_client_new_connections(f->client);
    assert_int_equal(get(f, "/ok", &err), PB_OK);
    assert_int_equal(pb_http_client_new_connections(f->client), 0);
    /* a 4xx does not close the connection either */
    assert_int_equal(get(f, "/bad", &err), PB_ERR_PERMANENT);
    assert_int_equal(get(f, "/ok", &err), PB_OK);
    assert_int_equal(pb_http_client_new_connections(f->client), 0);
    assert_int_equal(first, 1);
}

static void test_methods_and_bodies(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    pb_http_call_reset(&f->call);
    f->call.method = "POST";
    f->call.url = url(f, "/echo");
    f->call.headers[0] = "Content-Type: application/json";
    f->call.headers[1] = "X-Test: one";
    f->call.body = "{\"a\":1}"; /* body_len 0: strlen */
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_string_equal(f->call.response, "POST|{\"a\":1}|application/json|one");

    pb_http_call_reset(&f->call);
    f->call.method = "PUT";
    f->call.url = url(f, "/echo");
    f->call.body = "abcdef";
    f->call.body_len = 3;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_string_equal(f->call.response, "PUT|abc|application/x-www-form-urlencoded|-");

    pb_http_call_reset(&f->call);
    f->call.method = "DELETE";
    f->call.url = url(f, "/echo");
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_string_equal(f->call.response, "DELETE||-|-");

    /* options of the previous call do not leak into the next (reset) */
    assert_int_equal(get(f, "/echo", &err), PB_OK);
    assert_string_equal(f->call.response, "GET||-|-");

    /* a body larger than curl's 1 KiB Expect threshold goes in one round trip */
    static char big[200 * 1024];
    memset(big, 'z', sizeof(big) - 1);
    pb_http_call_reset(&f->call);
    f->call.method = "POST";
    f->call.url = url(f, "/echo");
    f->call.body = big;
    f->call.timeout_ms = 5000;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_true(f->call.duration_ns < 900ull * 1000000);
}

static void test_basic_auth(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/auth");
    f->call.basic_user = "user";
    f->call.basic_password = "pass";
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_string_equal(f->call.response, "welcome");
    f->call.basic_password = "wrong";
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_PERMANENT);
    assert_int_equal(f->call.status, 401);
    assert_null(strstr(err.msg, "wrong"));
    /* no credentials on the next call */
    assert_int_equal(get(f, "/auth", &err), PB_ERR_PERMANENT);
}

static void test_bad_inputs(void **state)
{
    struct fixture *f = *state;
    struct pb_err err = {0};
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/ok");
    f->call.headers[0] = "X-Evil: a\r\nX-Injected: b";
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_INVALID);
    f->call.headers[0] = NULL;
    f->call.method = "GE T";
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_INVALID);
    f->call.method = "GET";
    f->call.url = NULL;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_INVALID);
    f->call.url = "ftp://127.0.0.1/file";
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_INVALID);
    assert_int_equal(pb_http_perform(NULL, &f->call, &err), PB_ERR_INVALID);
}

static void test_limiter_refusal_sends_nothing(void **state)
{
    struct fixture *f = *state;
    struct pb_ratelimit_config cfg = {.per_minute = 1, .max_wait_ms = 50};
    struct pb_ratelimit *rl;
    struct pb_err err = {0};
    assert_int_equal(pb_ratelimit_new(&cfg, &rl, &err), PB_OK);
    __atomic_store_n(&request_count, 0, __ATOMIC_SEQ_CST);
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/count");
    f->call.limiter = rl;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_TRANSIENT);
    assert_int_equal(f->call.status, 0);
    assert_int_equal(f->call.retry_after_s, 60);
    assert_non_null(strstr(err.msg, "/count: not sent: rate limit"));
    assert_int_equal(__atomic_load_n(&request_count, __ATOMIC_SEQ_CST), 1);
    pb_http_call_reset(&f->call);
    pb_ratelimit_free(rl);

    /* every call gives its concurrency slot back, failed ones too */
    struct pb_ratelimit_config one = {.concurrent = 1, .max_wait_ms = 50};
    assert_int_equal(pb_ratelimit_new(&one, &rl, &err), PB_OK);
    for (int i = 0; i < 3; i++) {
        pb_http_call_reset(&f->call);
        f->call.method = "GET";
        f->call.url = url(f, i == 1 ? "/bad" : "/count");
        f->call.limiter = rl;
        assert_int_equal(pb_http_perform(f->client, &f->call, &err),
                         i == 1 ? PB_ERR_PERMANENT : PB_OK);
        assert_int_equal(f->call.ratelimit_wait_ns, 0);
    }
    pb_http_call_reset(&f->call);
    pb_ratelimit_free(rl);
}

static void test_limiter_feedback(void **state)
{
    struct fixture *f = *state;
    struct pb_ratelimit_config cfg = {.per_minute = 60, .concurrent = 5};
    struct pb_ratelimit_stats st;
    struct pb_ratelimit *rl;
    struct pb_err err = {0};
    uint64_t wait;
    assert_int_equal(pb_ratelimit_new(&cfg, &rl, &err), PB_OK);

    /* 429 + Retry-After + X-Rate-Limit-Problem */
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/throttle");
    f->call.limiter = rl;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_ERR_TRANSIENT);
    assert_int_equal(f->call.status, 429);
    assert_int_equal(f->call.retry_after_s, 3);
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.throttled, 1);
    assert_false(pb__ratelimit_try(rl, pb_monotonic_ns(), &wait));
    assert_true(wait > 2ull * 1000000000 && wait <= 60ull * 1000000000);
    pb_ratelimit_free(rl);

    /* X-MinLimit-Remaining: 0 on a 200: pause until the minute rolls */
    assert_int_equal(pb_ratelimit_new(&cfg, &rl, &err), PB_OK);
    pb_http_call_reset(&f->call);
    f->call.method = "GET";
    f->call.url = url(f, "/last-call");
    f->call.limiter = rl;
    assert_int_equal(pb_http_perform(f->client, &f->call, &err), PB_OK);
    assert_false(pb__ratelimit_try(rl, pb_monotonic_ns(), &wait));
    assert_true(wait > 50ull * 1000000000 && wait <= 60ull * 1000000000);
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.throttled, 0);
    pb_http_call_reset(&f->call);
    pb_ratelimit_free(rl);
}

static void test_parse_retry_after(void **state)
{
    (void)state;
    assert_int_equal(pb_http_parse_retry_after("120", 0), 120);
    assert_int_equal(pb_http_parse_retry_after(" 5 ", 0), 5);
    assert_int_equal(pb_http_parse_retry_after("0", 0), 0);
    assert_int_equal(pb_http_parse_retry_after("99999999999999", 0), 2147483647);
    assert_int_equal(pb_http_parse_retry_after("1.5", 0), -1);
    assert_int_equal(pb_http_parse_retry_after("5s", 0), -1);
    assert_int_equal(pb_http_parse_retry_after("-5", 0), -1);
    assert_int_equal(pb_http_parse_retry_after("", 0), -1);
    assert_int_equal(pb_http_parse_retry_after(NULL, 0), -1);
    assert_int_equal(pb_http_parse_retry_after("soon", 0), -1);
    /* 1445412480 = Wed, 21 Oct 2015 07:28:00 GMT */
    assert_int_equal(pb_http_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412450), 30);
    assert_int_equal(pb_http_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490), 0);
}

static void test_classify_status(void **state)
{
    (void)state;
    assert_int_equal(pb_http_classify_status(200), PB_OK);
    assert_int_equal(pb_http_classify_status(201), PB_OK);
    assert_int_equal(pb_http_classify_status(204), PB_OK);
    assert_int_equal(pb_http_classify_status(302), PB_OK);
    assert_int_equal(pb_http_classify_status(400), PB_ERR_PERMANENT);
    assert_int_equal(pb_http_classify_status(401), PB_ERR_PERMANENT);
    assert_int_equal(pb_http_classify_status(404), PB_ERR_PERMANENT);
    assert_int_equal(pb_http_classify_status(409), PB_ERR_PERMANENT);
    assert_int_equal(pb_http_classify_status(422), PB_ERR_PERMANENT);
    assert_int_equal(pb_http_classify_status(408), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(425), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(429), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(500), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(502), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(503), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(599), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(0), PB_ERR_TRANSIENT);
    assert_int_equal(pb_http_classify_status(600), PB_ERR_PERMANENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_ok_and_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_503_retry_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_400_permanent_and_redacted_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_big_without_content_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_methods_and_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_basic_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limiter_refusal_sends_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limiter_feedback, setup, teardown),
        cmocka_unit_test(test_parse_retry_after),
        cmocka_unit_test(test_classify_status),
    };
    /* localhost must not go through a proxy from the environment */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("https_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
