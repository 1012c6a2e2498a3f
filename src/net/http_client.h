/*
 * net/http_client.h: the outbound HTTP client (libcurl easy handles).
 *
 * One `struct pb_http_client` per worker thread: it keeps one CURL easy handle
 * so connections are reused (keep-alive) across calls to the same host. Not
 * thread-safe; never share a client between threads.
 *
 * Every call is classified, so that callers never look at curl codes:
 *   - network errors (connect refused, reset, DNS, TLS, timeout) -> PB_ERR_TRANSIENT
 *   - 408, 425, 429, 5xx                                         -> PB_ERR_TRANSIENT
 *   - other 4xx                                                  -> PB_ERR_PERMANENT
 *   - 2xx, 3xx                                                   -> PB_OK
 * Connectors may reclassify (e.g. a SYSPRO "ERROR:" inside a 200).
 * Retry-After (delta seconds or an HTTP date) is parsed into retry_after_s.
 *
 * If `limiter` is set, the call first waits for the rate limiter (and adds the
 * time waited to call->ratelimit_wait_ns), holds a concurrency slot for the
 * duration of the call, and feeds 429 answers back to the limiter.
 *
 * Each call can be appended to a `struct pb_trace` (see net/trace.h) by
 * the caller; the client itself never logs bodies or headers, so credentials
 * in headers never reach a log.
 */
#ifndef PB_NET_HTTP_CLIENT_H
#define PB_NET_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

struct pb_ratelimit;
struct pb_http_client;

#define PB_HTTP_CALL_MAX_HEADERS 16
#define PB_HTTP_RESP_MAX_HEADERS 32

struct pb_http_call {
    /* in */
    const char *method;                 /* "GET", "POST", "PUT" */
    const char *url;
    const char *headers[PB_HTTP_CALL_MAX_HEADERS + 1]; /* "Name: value", NULL-terminated */
    const char *body;                   /* may be NULL */
    size_t body_len;
    long timeout_ms;                    /* total; default 15000 */
    const char *basic_user;             /* optional HTTP Basic credentials */
    const char *basic_password;
    struct pb_ratelimit *limiter;       /* optional */
    size_t max_response;                /* default 16 MiB; larger -> PB_ERR_TOOBIG */
    /* out */
    long status;                        /* 0 when no HTTP reply */
    char *response;                     /* owned by the call, NUL-terminated */
    size_t response_len;
    int retry_after_s;                  /* -1 when absent */
    uint64_t duration_ns;
    uint64_t ratelimit_wait_ns;
    char curl_error[256];
    int n_resp_headers;
    char *resp_header_name[PB_HTTP_RESP_MAX_HEADERS];   /* owned */
    char *resp_header_value[PB_HTTP_RESP_MAX_HEADERS];  /* owned */
};

enum pb_rc pb_http_client_new(struct pb_http_client **out, struct pb_err *err);
void pb_http_client_free(struct pb_http_client *c);

/* Perform the call. Returns the classification above; err says what happened
 * ("POST https://host/path: HTTP 503" or "connect to host:port: Connection refused").
 * The call's outputs are valid until pb_http_call_reset(). */
enum pb_rc pb_http_perform(struct pb_http_client *c, struct pb_http_call *call, struct pb_err *err);

/* Case-insensitive response header lookup; NULL when absent. */
const char *pb_http_call_header(const struct pb_http_call *call, const char *name);

/* Free outputs and clear the call so it can be reused. */
void pb_http_call_reset(struct pb_http_call *call);

/* Classification of an HTTP status alone (used by tests and connectors). */
enum pb_rc pb_http_classify_status(long status);

/* Parse a Retry-After value (delta seconds or IMF-fixdate); -1 if unparsable. */
int pb_http_parse_retry_after(const char *value, long long now_unix);

/* New connections the client's last pb_http_perform() opened (curl's
 * CURLINFO_NUM_CONNECTS): 0 means a kept-alive connection was reused. */
long pb_http_client_new_connections(const struct pb_http_client *c);

#endif
