/*
 * connectors/syspro/syspro_session.c: the e.net session of a connection and
 * one business-object call on it.
 *
 * The wire (shared/specs/WIRE-FORMATS.md, "SYSPRO e.net Solutions"):
 *
 *   GET {base}/logon?Operator=&OperatorPassword=&CompanyId=&CompanyPassword=
 *       200, application/octet-stream: a GUID followed by TWO spaces, which
 *       are part of the session id; or 200 with "ERROR: ..." (refused).
 *   GET {base}/Transaction/Post?UserId=&BusinessObject=&XmlParameters=&XmlIn=
 *   GET {base}/Setup/Add?UserId=&BusinessObject=&XmlParameters=&XmlIn=
 *   GET {base}/Query/Query?UserId=&BusinessObject=&XmlIn=
 *   GET {base}/Logoff?UserId=
 *
 * Every value is percent-encoded (all but RFC 3986 unreserved characters),
 * so the session id goes back exactly as it came, "...%20%20"; trimming it is
 * the classic mistake and SYSPRO answers it as an unknown UserId.
 *
 * The session. One per connection, shared by every worker thread: logging
 * on costs a licence seat and a second or so. It is created on first use,
 * under session_lock (threads that need it meanwhile wait for that one
 * logon), reused until SYSPRO answers a call with "ERROR: ..." text that says
 * the UserId is not logged on or has expired (pb__syspro_is_session_error),
 * then dropped (only if it is still the generation that failed, so that N
 * threads seeing it expire cause one logon) and the call is sent once more on
 * a new session. A business object that answered "invalid UserId" did not
 * run, so that second send cannot post twice. A second session error right
 * after a fresh logon is PB_ERR_TRANSIENT with a message to act on.
 * destroy() ends the session with Logoff.
 *
 * A refused logon ("ERROR: Invalid operator password") is PB_ERR_TRANSIENT,
 * not permanent: an operator fixes the password or unlocks the operator, and
 * the queued jobs should then go through instead of all becoming dead
 * letters; the retry policy's attempt limit still ends it. For
 * settings.logon_retry_s after a refusal no new logon is tried (every call
 * fails fast with the same message and a Retry-After), because SYSPRO locks
 * an operator out after repeated bad passwords and N workers retrying would
 * get there in seconds.
 *
 * Traces. Each call is appended to ctx->trace, but not as sent: the URL is
 * recorded as "{base}/{op}?UserId=***&BusinessObject=X" and the XML that
 * went in the query string as the record's request text ("XmlParameters:
 * ...\n\nXmlIn: ..."), decoded, so a dead letter shows the document in a
 * readable form. The session id is a bearer credential for as long as the
 * session lives, so it never reaches a trace: the logon's reply body is
 * recorded as "(session id not recorded)". The logon URL's two password
 * parameters are masked by the trace itself.
 *
 * Rejected designs.
 *   - A session per worker thread: N seats of the customer's e.net licence
 *     and N logons at start-up, for no gain over the shared one.
 *   - Logging on for every call (and off after): doubles the calls, and SYSPRO
 *     logs every logon in its operator audit.
 *   - POST with the XML in a body: the REST service of the spec takes GET
 *     query parameters; the URL length is bounded by settings.max_url_bytes
 *     instead, refused permanently with a message before anything is sent.
 *   - Retrying 5xx inside the connector: the engine's retry policy owns that.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/crypto.h"
#include "core/pan.h"
#include "net/trace.h"
#include "syspro_internal.h"

#define LOGOFF_TIMEOUT_MAX_MS 5000L

/* ---- a bounded growing string ------------------------------------------------------ */

void pb__syspro_buf_init(struct syspro_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void pb__syspro_buf_add(struct syspro_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->max) {
        b->failed = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *d;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void pb__syspro_buf_adds(struct syspro_buf *b, const char *s)
{
    pb__syspro_buf_add(b, s, strlen(s));
}

void pb__syspro_buf_add_escaped(struct syspro_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            pb__syspro_buf_add(b, (const char *)p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            pb__syspro_buf_add(b, e, 3);
        }
    }
}

/* Wipe (the buffer may hold a password or a session id) and free. */
void pb__syspro_buf_free(struct syspro_buf *b)
{
    if (b->data) {
        volatile char *p = b->data;
        for (size_t i = 0; i < b->cap; i++)
            p[i] = 0;
    }
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- reading replies ------------------------------------------------------------------ */

/* Skip a UTF-8 BOM and leading blanks. */
static const char *text_start(const char *s, size_t len, size_t *rest)
{
    size_t i = 0;
    if (len >= 3 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
        (unsigned char)s[2] == 0xBF)
        i = 3;
    while (i < len && isspace((unsigned char)s[i]))
        i++;
    *rest = len - i;
    return s + i;
}

static int is_error_text(const char *body, size_t len)
{
    size_t n;
    const char *s = body ? text_start(body, len, &n) : NULL;
    return s && n >= 6 && strncasecmp(s, "ERROR:", 6) == 0;
}

/* "ERROR: ..." as one line of at most `out_len` bytes, PANs masked. */
static void error_text(const char *body, size_t len, char *out, size_t out_len)
{
    size_t n, j = 0;
    const char *s = text_start(body, len, &n);
    for (size_t i = 0; i < n && j + 1 < out_len; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[j++] = (ch == '\r' || ch == '\n' || ch == '\t' || ch == 0) ? ' ' : (char)ch;
    }
    while (j > 0 && out[j - 1] == ' ')
        j--;
    out[j] = '\0';
    pb_pan_redact(out, j);
}

int pb__syspro_is_session_error(const char *text, size_t len)
{
    static const char *const signs[] = {
        "userid", "user id", "session", "not logged on", "logged off", "logon", "log on", NULL,
    };
    char low[512];
    size_t n = 0;
    int quoted = 0;

    if (!is_error_text(text, len))
        return 0;
    for (size_t i = 0; i < len && n + 1 < sizeof low; i++) {
        char ch = text[i];
        if (ch == '\'') {
            quoted = !quoted;
            continue;
        }
        if (!quoted)
            low[n++] = (char)tolower((unsigned char)ch);
    }
    low[n] = '\0';
    for (size_t i = 0; signs[i]; i++)
        if (strstr(low, signs[i]))
            return 1;
    return 0;
}

void pb__syspro_reply_free(struct syspro_reply *r)
{
    if (r->doc)
        xmlFreeDoc(r->doc);
    r->doc = NULL;
}

/* Replace the HTTP client's message ("GET <url>: HTTP 500"): the URL of a
 * business call carries the session id, which must reach neither an item's
 * message nor a trace, and its XML would crowd out the reason. */
static void describe_failure(const struct pb_http_call *call, enum pb_rc rc, struct pb_err *e)
{
    if (rc == PB_OK)
        return;
    if (rc == PB_ERR_TOOBIG)
        snprintf(e->msg, sizeof e->msg, "the reply is larger than %zu bytes", call->max_response);
    else if (call->status && call->retry_after_s >= 0)
        snprintf(e->msg, sizeof e->msg, "HTTP %ld, retry after %d s", call->status,
                 call->retry_after_s);
    else if (call->status)
        snprintf(e->msg, sizeof e->msg, "HTTP %ld", call->status);
    else if (strstr(e->msg, ": not sent"))
        snprintf(e->msg, sizeof e->msg,
                 "not sent: the connection's rate limit or concurrency limit is saturated");
    else if (call->curl_error[0])
        snprintf(e->msg, sizeof e->msg, "%s", call->curl_error);
    else if (rc == PB_ERR_NOMEM)
        snprintf(e->msg, sizeof e->msg, "out of memory");
    else
        snprintf(e->msg, sizeof e->msg, "%s", pb_rc_name(rc));
    pb_pan_redact(e->msg, strlen(e->msg));
}

/* ---- the session ------------------------------------------------------------------------- */

/* Is this a usable session id: 1..SYSPRO_SESSION_MAX-1 printable ASCII bytes,
 * not only blanks? (Trailing spaces are part of it.) */
static int session_id_ok(const char *s, size_t n)
{
    int non_blank = 0;
    if (n == 0 || n >= SYSPRO_SESSION_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
        non_blank |= s[i] != ' ';
    }
    return non_blank;
}

/* Log on; the caller holds session_lock. */
static enum pb_rc logon_locked(struct pb_connection *c, struct syspro_state *st,
                               struct pb_call_ctx *ctx, struct pb_err *err)
{
    const char *op_pw = pb_connection_secret(c, "operator_password");
    const char *co_pw = pb_connection_secret(c, "company_password");
    struct pb_http_call call;
    struct pb_err e = {0};
    struct syspro_buf url;
    char refusal[SYSPRO_MESSAGE_MAX - 128];
    enum pb_rc rc;

    pb__syspro_buf_init(&url, 4096);
    pb__syspro_buf_adds(&url, st->base_url);
    pb__syspro_buf_adds(&url, "/logon?Operator=");
    pb__syspro_buf_add_escaped(&url, st->operator_code);
    pb__syspro_buf_adds(&url, "&OperatorPassword=");
    pb__syspro_buf_add_escaped(&url, op_pw ? op_pw : "");
    pb__syspro_buf_adds(&url, "&CompanyId=");
    pb__syspro_buf_add_escaped(&url, st->company_id);
    pb__syspro_buf_adds(&url, "&CompanyPassword=");
    pb__syspro_buf_add_escaped(&url, co_pw ? co_pw : "");
    if (url.failed) {
        pb__syspro_buf_free(&url);
        return pb_err_set(err, PB_ERR_TRANSIENT, "SYSPRO logon: out of memory");
    }

    memset(&call, 0, sizeof call);
    call.method = "GET";
    call.url = url.data;
    call.headers[0] = "Accept: application/octet-stream, text/plain, */*";
    call.timeout_ms = st->timeout_ms;
    call.max_response = 64 * 1024;
    rc = pb_http_perform(ctx->http, &call, &e);
    describe_failure(&call, rc, &e);

    if (rc == PB_OK && call.status == 200 && !is_error_text(call.response, call.response_len) &&
        session_id_ok(call.response, call.response_len)) {
        memcpy(st->session, call.response, call.response_len);
        st->session[call.response_len] = '\0';
        st->session_generation++;
        st->logons++;
        st->logon_refused_at = 0;
        st->logon_refusal[0] = '\0';
        {
            /* the session id is a credential: the trace gets a placeholder */
            char *saved = call.response;
            size_t saved_len = call.response_len;
            call.response = "(session id not recorded)";
            call.response_len = strlen(call.response);
            pb_trace_http(ctx->trace, &call, rc, &e);
            call.response = saved;
            call.response_len = saved_len;
            memset(saved, 0, saved_len);
        }
        rc = PB_OK;
        goto out;
    }

    pb_trace_http(ctx->trace, &call, rc, &e);
    if (rc == PB_OK && call.response && is_error_text(call.response, call.response_len)) {
        error_text(call.response, call.response_len, refusal, sizeof refusal);
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "SYSPRO refused the logon of operator \"%s\" to company \"%s\": %s; check "
                        "settings.operator, settings.company_id, secrets.operator_password and "
                        "secrets.company_password, that the operator is not locked out and that "
                        "an e.net licence seat is free",
                        st->operator_code, st->company_id, refusal);
        st->logon_refused_at = ctx->now ? ctx->now : time(NULL);
        snprintf(st->logon_refusal, sizeof st->logon_refusal, "%s", err ? err->msg : refusal);
    } else if (rc == PB_OK) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "SYSPRO logon at %s/logon answered HTTP %ld without a session id (%zu "
                        "bytes); check settings.base_url (it ends in /SYSPROWCFService/Rest)",
                        st->base_url, call.status, call.response_len);
    } else {
        if (call.retry_after_s > 0)
            ctx->retry_after_s = call.retry_after_s;
        rc = pb_err_set(err, PB_ERR_TRANSIENT, "SYSPRO logon at %s/logon failed: %s%s",
                        st->base_url, e.msg,
                        call.status == 404 ? " (check settings.base_url: it ends in "
                                             "/SYSPROWCFService/Rest)"
                                           : "; will retry");
    }
out:
    call.url = NULL;
    pb_http_call_reset(&call);
    pb__syspro_buf_free(&url);
    return rc;
}

/* A copy of the current session id (logging on when there is none). */
static enum pb_rc session_get(struct pb_connection *c, struct syspro_state *st,
                              struct pb_call_ctx *ctx, char out[SYSPRO_SESSION_MAX],
                              uint64_t *generation, struct pb_err *err)
{
    enum pb_rc rc = PB_OK;
    time_t now = ctx->now ? ctx->now : time(NULL);

    pthread_mutex_lock(&st->session_lock);
    if (!st->session[0]) {
        if (st->logon_refused_at && st->logon_retry_s > 0 &&
            now - st->logon_refused_at < st->logon_retry_s && now >= st->logon_refused_at) {
            long left = st->logon_retry_s - (long)(now - st->logon_refused_at);
            ctx->retry_after_s = (int)left;
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "%s (no new logon for %ld s, so that the operator is not locked out)",
                            st->logon_refusal, left);
        } else {
            rc = logon_locked(c, st, ctx, err);
        }
    }
    if (rc == PB_OK) {
        memcpy(out, st->session, SYSPRO_SESSION_MAX);
        *generation = st->session_generation;
    }
    pthread_mutex_unlock(&st->session_lock);
    return rc;
}

/* Forget the session if it is still the one of `generation`. */
static void session_drop(struct syspro_state *st, uint64_t generation)
{
    pthread_mutex_lock(&st->session_lock);
    if (st->session_generation == generation)
        memset(st->session, 0, sizeof st->session);
    pthread_mutex_unlock(&st->session_lock);
}

void pb__syspro_logoff(struct syspro_state *st)
{
    struct pb_http_client *http = NULL;
    struct pb_http_call call;
    struct pb_err e = {0};
    struct syspro_buf url;

    pthread_mutex_lock(&st->session_lock);
    if (!st->session[0] || pb_http_client_new(&http, &e) != PB_OK) {
        memset(st->session, 0, sizeof st->session);
        pthread_mutex_unlock(&st->session_lock);
        return;
    }
    pb__syspro_buf_init(&url, 4096);
    pb__syspro_buf_adds(&url, st->base_url);
    pb__syspro_buf_adds(&url, "/Logoff?UserId=");
    pb__syspro_buf_add_escaped(&url, st->session);
    memset(st->session, 0, sizeof st->session);
    pthread_mutex_unlock(&st->session_lock);
    if (!url.failed) {
        memset(&call, 0, sizeof call);
        call.method = "GET";
        call.url = url.data;
        call.timeout_ms =
            st->timeout_ms < LOGOFF_TIMEOUT_MAX_MS ? st->timeout_ms : LOGOFF_TIMEOUT_MAX_MS;
        call.max_response = 64 * 1024;
        (void)pb_http_perform(http, &call, &e); /* a session that cannot be ended times out */
        call.url = NULL;
        pb_http_call_reset(&call);
    }
    pb__syspro_buf_free(&url);
    pb_http_client_free(http);
}

/* ---- one call ---------------------------------------------------------------------------- */

static const char *op_path(enum syspro_op op)
{
    switch (op) {
    case SYSPRO_TRANSACTION_POST:
        return "Transaction/Post";
    case SYSPRO_SETUP_ADD:
        return "Setup/Add";
    case SYSPRO_QUERY:
        return "Query/Query";
    }
    return "Query/Query";
}

/* The URL as sent (session id included): caller frees with pb__syspro_buf_free. */
static void build_url(struct syspro_buf *url, const struct syspro_state *st,
                      const struct syspro_request *rq, const char *session)
{
    pb__syspro_buf_adds(url, st->base_url);
    pb__syspro_buf_adds(url, "/");
    pb__syspro_buf_adds(url, op_path(rq->op));
    pb__syspro_buf_adds(url, "?UserId=");
    pb__syspro_buf_add_escaped(url, session);
    pb__syspro_buf_adds(url, "&BusinessObject=");
    pb__syspro_buf_add_escaped(url, rq->business_object);
    if (rq->op != SYSPRO_QUERY) {
        pb__syspro_buf_adds(url, "&XmlParameters=");
        pb__syspro_buf_add_escaped(url, rq->xml_parameters ? rq->xml_parameters : "");
    }
    pb__syspro_buf_adds(url, "&XmlIn=");
    pb__syspro_buf_add_escaped(url, rq->xml_in ? rq->xml_in : "");
}

/* Append the call to the trace as described in the essay. */
static void trace_call(struct pb_call_ctx *ctx, const struct syspro_state *st,
                       const struct syspro_request *rq, struct pb_http_call *call, enum pb_rc rc,
                       const struct pb_err *e)
{
    struct syspro_buf turl, text;
    const char *url = call->url;

    if (!ctx->trace)
        return;
    pb__syspro_buf_init(&turl, 2048);
    pb__syspro_buf_adds(&turl, st->base_url);
    pb__syspro_buf_adds(&turl, "/");
    pb__syspro_buf_adds(&turl, op_path(rq->op));
    pb__syspro_buf_adds(&turl, "?UserId=***&BusinessObject=");
    pb__syspro_buf_add_escaped(&turl, rq->business_object);
    pb__syspro_buf_init(&text, 2 * SYSPRO_XML_MAX + 64);
    if (rq->op != SYSPRO_QUERY) {
        pb__syspro_buf_adds(&text, "XmlParameters:\n");
        pb__syspro_buf_adds(&text, rq->xml_parameters ? rq->xml_parameters : "");
        pb__syspro_buf_adds(&text, "\n\n");
    }
    pb__syspro_buf_adds(&text, "XmlIn:\n");
    pb__syspro_buf_adds(&text, rq->xml_in ? rq->xml_in : "");
    call->url = turl.failed ? "(url not recorded)" : turl.data;
    call->body = text.failed ? NULL : text.data;
    call->body_len = text.failed ? 0 : text.len;
    pb_trace_http(ctx->trace, call, rc, e);
    call->url = url;
    call->body = NULL;
    call->body_len = 0;
    pb__syspro_buf_free(&turl);
    pb__syspro_buf_free(&text);
}

enum pb_rc pb__syspro_call(struct pb_connection *c, struct pb_call_ctx *ctx,
                           const struct syspro_request *rq, struct syspro_reply *out,
                           struct pb_err *err)
{
    struct syspro_state *st = pb__syspro_state(c);
    const char *path;
    enum pb_rc rc = PB_OK;

    memset(out, 0, sizeof *out);
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "syspro connection used before init");
    path = op_path(rq->op);

    for (int attempt = 0; attempt < 2; attempt++) {
        char session[SYSPRO_SESSION_MAX];
        uint64_t generation = 0;
        struct pb_http_call call;
        struct pb_err e = {0};
        struct syspro_buf url;
        char why[160];

        rc = session_get(c, st, ctx, session, &generation, err);
        if (rc)
            return rc;
        pb__syspro_buf_init(&url, st->max_url_bytes + 1);
        build_url(&url, st, rq, session);
        memset(session, 0, sizeof session);
        if (url.failed) {
            pb__syspro_buf_free(&url);
            return pb_err_set(err, PB_ERR_PERMANENT,
                              "the %s %s call does not fit in settings.max_url_bytes (%zu) once "
                              "URL-encoded: the document is too large for one e.net GET (send "
                              "fewer lines, or raise max_url_bytes if SYSPRO's host accepts "
                              "longer URLs)",
                              rq->business_object, path, st->max_url_bytes);
        }
        memset(&call, 0, sizeof call);
        call.method = "GET";
        call.url = url.data;
        call.headers[0] = "Accept: application/xml, text/xml, text/plain, */*";
        call.timeout_ms = st->timeout_ms;
        call.limiter = c->limiter;
        call.max_response = SYSPRO_REPLY_MAX;
        rc = pb_http_perform(ctx->http, &call, &e);
        describe_failure(&call, rc, &e);
        trace_call(ctx, st, rq, &call, rc, &e);
        call.url = NULL;
        pb__syspro_buf_free(&url);

        if (rc != PB_OK) {
            if (call.retry_after_s > 0)
                ctx->retry_after_s = call.retry_after_s;
            if (rc == PB_ERR_PERMANENT && call.status == 414)
                rc = pb_err_set(err, PB_ERR_PERMANENT,
                                "SYSPRO %s %s: HTTP 414, the URL is too long for SYSPRO's host: "
                                "lower settings.max_url_bytes below %zu so that such documents "
                                "are refused before they are sent, or raise the host's limit",
                                rq->business_object, path, st->max_url_bytes);
            else if (rc == PB_ERR_PERMANENT)
                rc = pb_err_set(err, PB_ERR_PERMANENT, "SYSPRO %s %s: %s%s%.200s",
                                rq->business_object, path, e.msg, call.response_len ? ": " : "",
                                call.response ? call.response : "");
            else
                rc = pb_err_set(err, rc == PB_ERR_NOMEM ? rc : PB_ERR_TRANSIENT,
                                "SYSPRO %s %s: %s; will retry", rq->business_object, path, e.msg);
            pb_http_call_reset(&call);
            return rc;
        }
        if (is_error_text(call.response, call.response_len)) {
            if (pb__syspro_is_session_error(call.response, call.response_len)) {
                session_drop(st, generation);
                if (attempt == 0) {
                    pb_http_call_reset(&call);
                    continue;
                }
                error_text(call.response, call.response_len, why, sizeof why);
                pb_http_call_reset(&call);
                return pb_err_set(err, PB_ERR_TRANSIENT,
                                  "SYSPRO %s %s: the session was refused again right after a "
                                  "new logon (%s): check that operator \"%s\" may use e.net and "
                                  "business object %s; will retry",
                                  rq->business_object, path, why, st->operator_code,
                                  rq->business_object);
            }
            out->refused = 1;
            error_text(call.response, call.response_len, out->message, sizeof out->message);
            pb_http_call_reset(&call);
            return PB_OK;
        }
        out->doc =
            pb__syspro_xml_parse_reply(call.response, call.response_len,
                                       pb_http_call_header(&call, "Content-Type"), why, sizeof why);
        if (!out->doc) {
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "SYSPRO %s %s answered HTTP %ld with a body that is not XML (%s); "
                            "will retry",
                            rq->business_object, path, call.status, why);
            pb_http_call_reset(&call);
            return rc;
        }
        out->refused = pb__syspro_reply_refused(out->doc, out->message, sizeof out->message);
        pb_http_call_reset(&call);
        return PB_OK;
    }
    return rc;
}
