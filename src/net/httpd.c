/*
 * net/httpd.c: route-table HTTP server on libmicrohttpd (see httpd.h).
 *
 * Life of a request (one `struct conn` per request, owned by the server):
 *   1. first access callback: allocate conn, reject early when Content-Length
 *      is above max_body (we still drain the upload, then answer 413);
 *   2. upload callbacks: append to a growing buffer capped at max_body;
 *   3. final callback: match the route, call the handler;
 *      DONE -> queue resp; RESET -> return MHD_NO (MHD closes the socket);
 *      SUSPEND -> MHD_suspend_connection, unless pb_http_resume() already ran;
 *   4. after pb_http_resume(): MHD calls us again; we queue resp;
 *   5. MHD_OPTION_NOTIFY_COMPLETED frees conn and everything it owns.
 *
 * Suspend/resume race: the handler hands req to another thread (the inbox
 * committer) which may call pb_http_resume() before we have called
 * MHD_suspend_connection(). conn->lock and the two flags `suspended` and
 * `resume_pending` order that: whoever comes second performs the resume.
 *
 * Rejected design: a blocking wait on a condition variable inside the handler
 * (thread per waiting request). It ties one thread to each in-flight webhook
 * for the whole group-commit interval and caps throughput at the pool size.
 */
#include "net/httpd.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define PATH_MAX_LEN 2048

struct pb_httpd {
    struct MHD_Daemon *daemon;
    struct pb_httpd_config cfg;
    int port;
};

struct pb_httpd__conn {
    struct pb_http_request req;
    struct MHD_Connection *mhd;
    struct pb_httpd *server;
    char *body;
    size_t len, cap;
    int too_big;
    int dispatched;
    int suspended;
    int resume_pending;
    int resumed;
    pthread_mutex_t lock;
    char path[PATH_MAX_LEN];
    char scratch[PATH_MAX_LEN];
    char addr[64];
    /* slow body streaming */
    size_t slow_pos;
};

uint64_t pb_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- response helpers ---------------------------------------------------- */

void pb_http_response_header(struct pb_http_response *resp, const char *name, const char *value)
{
    if (resp->n_headers >= PB_HTTP_MAX_HEADERS)
        return;
    resp->header_name[resp->n_headers] = strdup(name);
    resp->header_value[resp->n_headers] = strdup(value);
    resp->n_headers++;
}

void pb_http_response_body_take(struct pb_http_response *resp, int status, char *body, size_t len)
{
    free(resp->body);
    resp->status = status;
    resp->body = body;
    resp->body_len = len;
}

void pb_http_response_set(struct pb_http_response *resp, int status, const char *content_type,
                          const char *body, size_t len)
{
    char *copy = NULL;
    if (body) {
        copy = malloc(len + 1);
        if (copy) {
            memcpy(copy, body, len);
            copy[len] = '\0';
        } else {
            len = 0;
        }
    } else {
        len = 0;
    }
    pb_http_response_body_take(resp, status, copy, len);
    if (content_type)
        snprintf(resp->content_type, sizeof(resp->content_type), "%s", content_type);
}

static void json_escape(char *out, size_t cap, const char *in)
{
    size_t o = 0;
    for (; *in && o + 7 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

void pb_http_response_error(struct pb_http_response *resp, int status, const char *code,
                            const char *fmt, ...)
{
    char msg[1024], esc[2200], body[2400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_escape(esc, sizeof(esc), msg);
    int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, esc);
    pb_http_response_set(resp, status, "application/json", body, (size_t)n);
}

static void response_clear(struct pb_http_response *resp)
{
    free(resp->body);
    resp->body = NULL;
    for (int i = 0; i < resp->n_headers; i++) {
        free(resp->header_name[i]);
        free(resp->header_value[i]);
    }
    resp->n_headers = 0;
}

/* ---- request accessors --------------------------------------------------- */

const char *pb_http_header(const struct pb_http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn__->mhd, MHD_HEADER_KIND, name);
}

const char *pb_http_query(const struct pb_http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn__->mhd, MHD_GET_ARGUMENT_KIND, name);
}

/* ---- routing ------------------------------------------------------------- */

/* Match `path` against `pattern`; captures point into conn->scratch. */
static int route_match(struct pb_httpd__conn *c, const char *pattern)
{
    const char *p = pattern;
    char *s;
    snprintf(c->scratch, sizeof(c->scratch), "%s", c->path);
    s = c->scratch;
    c->req.n_params = 0;
    for (;;) {
        if (*p == '*' && p[1] == '\0') {
            if (c->req.n_params >= PB_HTTP_MAX_PARAMS)
                return 0;
            c->req.params[c->req.n_params++] = s;
            return 1;
        }
        if (*p == '{' && p[1] == '}') {
            char *end = strchr(s, '/');
            size_t n = end ? (size_t)(end - s) : strlen(s);
            if (n == 0 || c->req.n_params >= PB_HTTP_MAX_PARAMS)
                return 0;
            c->req.params[c->req.n_params++] = s;
            p += 2;
            if (end) {
                if (*p != '/')
                    return 0;
                *end = '\0';
                s = end + 1;
                p++;
                continue;
            }
            return *p == '\0';
        }
        if (*p == '\0' || *s == '\0')
            return *p == *s;
        if (*p != *s)
            return 0;
        p++;
        s++;
    }
}

static enum pb_http_action dispatch(struct pb_httpd__conn *c)
{
    const struct pb_http_route *r;
    int path_matched = 0;
    struct pb_http_response *resp = &c->req.resp;

    if (c->too_big) {
        pb_http_response_error(resp, 413, "too_large",
                               "request body is larger than the limit of %zu bytes",
                               c->server->cfg.max_body);
        return PB_HTTP_DONE;
    }
    for (r = c->server->cfg.routes; r && r->pattern; r++) {
        if (!route_match(c, r->pattern))
            continue;
        path_matched = 1;
        if (strcmp(r->method, "*") != 0 && strcmp(r->method, c->req.method) != 0)
            continue;
        return r->handler(&c->req, resp, r->arg);
    }
    c->req.n_params = 0;
    if (path_matched)
        pb_http_response_error(resp, 405, "method_not_allowed", "%s is not allowed on %s",
                               c->req.method, c->path);
    else
        pb_http_response_error(resp, 404, "not_found", "no route for %s %s", c->req.method,
                               c->path);
    return PB_HTTP_DONE;
}

/* ---- sending --------------------------------------------------------------- */

static ssize_t slow_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct pb_httpd__conn *c = cls;
    struct pb_http_response *resp = &c->req.resp;
    size_t chunks, chunk, left;
    if (pos >= resp->body_len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    chunks = 8;
    chunk = resp->body_len / chunks + 1;
    left = resp->body_len - (size_t)pos;
    if (chunk > left)
        chunk = left;
    if (chunk > max)
        chunk = max;
    usleep((useconds_t)resp->slow_body_ms * 1000u / (useconds_t)chunks);
    memcpy(buf, resp->body + pos, chunk);
    return (ssize_t)chunk;
}

static enum MHD_Result send_response(struct pb_httpd__conn *c)
{
    struct pb_http_response *resp = &c->req.resp;
    struct MHD_Response *m;
    enum MHD_Result ret;
    int status = resp->status ? resp->status : 500;

    if (resp->slow_body_ms && resp->body_len > 0)
        m = MHD_create_response_from_callback(resp->body_len, 1024, slow_reader, c, NULL);
    else
        m = MHD_create_response_from_buffer(resp->body_len, resp->body ? resp->body : (char *)"",
                                            MHD_RESPMEM_MUST_COPY);
    if (!m)
        return MHD_NO;
    if (resp->body_len > 0 || resp->content_type[0])
        MHD_add_response_header(m, "Content-Type",
                                resp->content_type[0] ? resp->content_type : "application/json");
    for (int i = 0; i < resp->n_headers; i++)
        MHD_add_response_header(m, resp->header_name[i], resp->header_value[i]);
    ret = MHD_queue_response(c->mhd, (unsigned)status, m);
    MHD_destroy_response(m);
    return ret;
}

/* ---- the MHD callbacks ----------------------------------------------------- */

static enum MHD_Result on_access(void *cls, struct MHD_Connection *mhd, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    struct pb_httpd *server = cls;
    struct pb_httpd__conn *c = *con_cls;

    if (!c) {
        const char *cl;
        const union MHD_ConnectionInfo *ci;
        c = calloc(1, sizeof(*c));
        if (!c)
            return MHD_NO;
        pthread_mutex_init(&c->lock, NULL);
        c->mhd = mhd;
        c->server = server;
        c->req.magic = PB_HTTP_REQUEST_MAGIC;
        c->req.method = method;
        c->req.conn__ = c;
        c->req.received_ns = pb_monotonic_ns();
        snprintf(c->path, sizeof(c->path), "%s", url);
        c->req.path = c->path;
        ci = MHD_get_connection_info(mhd, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, c->addr,
                      sizeof(c->addr));
        c->req.remote_addr = c->addr;
        cl = MHD_lookup_connection_value(mhd, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            unsigned long long n = strtoull(cl, &end, 10);
            if (*end != '\0' || n > server->cfg.max_body)
                c->too_big = 1;
        }
        *con_cls = c;
        return MHD_YES;
    }

    if (*upload_size > 0) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (c->too_big)
            return MHD_YES;
        if (c->len + n > server->cfg.max_body) {
            c->too_big = 1;
            free(c->body);
            c->body = NULL;
            c->len = c->cap = 0;
            return MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n + 1)
                cap *= 2;
            char *nb = realloc(c->body, cap);
            if (!nb)
                return MHD_NO;
            c->body = nb;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload, n);
        c->len += n;
        c->body[c->len] = '\0';
        return MHD_YES;
    }

    if (c->dispatched) {
        /* called again after pb_http_resume() */
        return send_response(c);
    }
    c->dispatched = 1;
    c->req.body = c->body ? c->body : "";
    c->req.body_len = c->len;

    switch (dispatch(c)) {
    case PB_HTTP_RESET:
        return MHD_NO;
    case PB_HTTP_SUSPEND:
        pthread_mutex_lock(&c->lock);
        if (c->resume_pending) {
            pthread_mutex_unlock(&c->lock);
            return send_response(c);
        }
        MHD_suspend_connection(mhd);
        c->suspended = 1;
        pthread_mutex_unlock(&c->lock);
        return MHD_YES;
    case PB_HTTP_DONE:
    default:
        return send_response(c);
    }
}

void pb_http_resume(struct pb_http_request *req)
{
    struct pb_httpd__conn *c = req->conn__;
    struct MHD_Connection *mhd = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->suspended) {
        c->suspended = 0;
        mhd = c->mhd;
    } else {
        c->resume_pending = 1;
    }
    pthread_mutex_unlock(&c->lock);
    /* outside the lock: once resumed, the server thread may finish the
     * request and free `c` (and its lock) at any moment */
    if (mhd)
        MHD_resume_connection(mhd);
}

static void on_completed(void *cls, struct MHD_Connection *mhd, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct pb_httpd__conn *c = *con_cls;
    if (!c)
        return;
    if (c->req.on_complete)
        c->req.on_complete(c->req.user);
    response_clear(&c->req.resp);
    free(c->body);
    pthread_mutex_destroy(&c->lock);
    c->req.magic = 0;
    free(c);
    *con_cls = NULL;
}

/* ---- lifecycle ------------------------------------------------------------- */

enum pb_rc pb_httpd_start(const struct pb_httpd_config *cfg, struct pb_httpd **out,
                          struct pb_err *err)
{
    struct pb_httpd *h;
    struct sockaddr_in sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    const union MHD_DaemonInfo *di;

    h = calloc(1, sizeof(*h));
    if (!h)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    h->cfg = *cfg;
    if (!h->cfg.max_body)
        h->cfg.max_body = 1024 * 1024;
    if (!h->cfg.connection_timeout_s)
        h->cfg.connection_timeout_s = 30;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->bind_addr ? cfg->bind_addr : "127.0.0.1", &sa.sin_addr) != 1) {
        free(h);
        return pb_err_set(err, PB_ERR_CONFIG, "bind address \"%s\" is not an IPv4 address",
                          cfg->bind_addr);
    }
    if (cfg->threads == 0)
        flags |= MHD_USE_THREAD_PER_CONNECTION;
    else
        flags |= MHD_USE_EPOLL | MHD_USE_TURBO;
    if (cfg->threads > 1)
        h->daemon = MHD_start_daemon(
            flags, (uint16_t)cfg->port, NULL, NULL, on_access, h, MHD_OPTION_SOCK_ADDR, &sa,
            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads, MHD_OPTION_CONNECTION_TIMEOUT,
            h->cfg.connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
            MHD_OPTION_CONNECTION_LIMIT, 4096u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
            MHD_OPTION_END);
    else
        h->daemon = MHD_start_daemon(
            flags, (uint16_t)cfg->port, NULL, NULL, on_access, h, MHD_OPTION_SOCK_ADDR, &sa,
            MHD_OPTION_CONNECTION_TIMEOUT, h->cfg.connection_timeout_s,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_CONNECTION_LIMIT, 4096u,
            MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
    if (!h->daemon) {
        free(h);
        return pb_err_set(err, PB_ERR_IO, "cannot listen on %s:%d (port in use?)",
                          cfg->bind_addr ? cfg->bind_addr : "127.0.0.1", cfg->port);
    }
    di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : cfg->port;
    *out = h;
    return PB_OK;
}

int pb_httpd_port(const struct pb_httpd *h) { return h->port; }

void pb_httpd_stop(struct pb_httpd *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon);
    free(h);
}
