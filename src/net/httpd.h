/*
 * net/httpd.h: the HTTP server of paybridge and of its sandbox, on libmicrohttpd.
 *
 * A server is a route table (ending in a {NULL} sentinel, like nginx's
 * directive tables) plus limits. The server collects the whole request body
 * (up to `max_body` bytes; above that it answers 413 with a JSON error and
 * never calls a handler), then calls the handler of the first matching route.
 *
 * Patterns: literal segments, "{}" matches exactly one non-empty path segment
 * (captured into req->params[], at most PB_HTTP_MAX_PARAMS), and a trailing
 * "*" matches any rest (captured as the last param, may be empty). The method
 * "*" matches any method. No match: 404 JSON. Path matched but not the
 * method: 405 JSON.
 *
 * Handlers fill `resp` and return:
 *   PB_HTTP_DONE     send resp now;
 *   PB_HTTP_SUSPEND  the handler keeps `req` and will call pb_http_resume(req)
 *                    from any thread once resp is filled. This is how the
 *                    inbox acknowledges a webhook only after its group commit,
 *                    without holding a server thread per waiting request;
 *   PB_HTTP_RESET    close the connection without any reply (fault injection).
 *
 * Ownership: req and resp belong to the server and live until the response
 * has been queued. resp->body is owned by resp once set with
 * pb_http_response_body_take() (freed by the server); pb_http_response_*
 * copy their arguments.
 *
 * Threading: with `threads` > 0 a pool of that many threads serves all
 * connections (handlers must not block); with 0, one thread per connection
 * (handlers may block, e.g. the sandbox's injected latency).
 */
#ifndef PB_NET_HTTPD_H
#define PB_NET_HTTPD_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define PB_HTTP_MAX_PARAMS 4
#define PB_HTTP_MAX_HEADERS 16

struct pb_httpd;
struct pb_http_request;

struct pb_http_response {
    int status;                     /* HTTP status; 0 means 500 */
    char *body;                     /* owned; NULL for an empty body */
    size_t body_len;
    char content_type[64];          /* default application/json */
    int n_headers;
    char *header_name[PB_HTTP_MAX_HEADERS];  /* owned copies */
    char *header_value[PB_HTTP_MAX_HEADERS];
    unsigned slow_body_ms;          /* >0: send the body in small chunks over this long (fault injection) */
};

struct pb_http_request {
    unsigned magic;                 /* PB_HTTP_REQUEST_MAGIC while alive */
    const char *method;             /* borrowed from the server */
    const char *path;               /* path without the query string */
    const char *body;               /* NUL-terminated copy of the body (may contain NULs) */
    size_t body_len;
    const char *params[PB_HTTP_MAX_PARAMS];  /* captures of "{}" and "*" */
    int n_params;
    const char *remote_addr;        /* textual peer address */
    uint64_t received_ns;           /* monotonic time the request line arrived */
    void *user;                     /* free for the handler's use across a suspend */
    void (*on_complete)(void *user);/* optional: called on a server thread once the
                                       request is finished (sent or aborted) */
    struct pb_http_response resp;   /* the response to be sent */
    struct pb_httpd__conn *conn__;  /* internal */
};
#define PB_HTTP_REQUEST_MAGIC 0x48545451u

enum pb_http_action { PB_HTTP_DONE = 0, PB_HTTP_SUSPEND = 1, PB_HTTP_RESET = 2 };

typedef enum pb_http_action (*pb_http_handler)(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg);

struct pb_http_route {
    const char *method;             /* "GET", "POST", ..., or "*" */
    const char *pattern;            /* e.g. "/hooks/{}", "/api.xro/2.0/Invoices/{}", "/_sandbox/..." */
    pb_http_handler handler;
    void *arg;
};

struct pb_httpd_config {
    const char *bind_addr;          /* default "127.0.0.1" */
    int port;                       /* 0 = pick a free port (see pb_httpd_port) */
    size_t max_body;                /* default 1 MiB */
    unsigned threads;               /* 0 = thread per connection; else a pool */
    unsigned connection_timeout_s;  /* idle keep-alive timeout, default 30 */
    const struct pb_http_route *routes;  /* borrowed, must outlive the server; ends with {NULL} */
};

enum pb_rc pb_httpd_start(const struct pb_httpd_config *cfg, struct pb_httpd **out,
                          struct pb_err *err);
int pb_httpd_port(const struct pb_httpd *h);
/* Stops accepting, waits for handlers to finish; suspended requests must be resumed first. */
void pb_httpd_stop(struct pb_httpd *h);

/* Request accessors (case-insensitive header names). NULL when absent. */
const char *pb_http_header(const struct pb_http_request *req, const char *name);
const char *pb_http_query(const struct pb_http_request *req, const char *name);

/* Resume a request that the handler suspended; resp must be filled. Thread-safe. */
void pb_http_resume(struct pb_http_request *req);

/* Response helpers. They copy their arguments. */
void pb_http_response_header(struct pb_http_response *resp, const char *name, const char *value);
void pb_http_response_set(struct pb_http_response *resp, int status, const char *content_type,
                          const char *body, size_t len);
/* Take ownership of a malloc'd body. */
void pb_http_response_body_take(struct pb_http_response *resp, int status, char *body, size_t len);
/* {"error":{"code":code,"message":message}} with the given status. */
void pb_http_response_error(struct pb_http_response *resp, int status, const char *code,
                            const char *fmt, ...) __attribute__((format(printf, 4, 5)));

uint64_t pb_monotonic_ns(void);

#endif
