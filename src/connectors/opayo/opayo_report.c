/*
 * connectors/opayo/opayo_report.c: the Opayo (Sage Pay) Reporting & Admin
 * API client, which fetches settlement data (settlement_fetch.h has the
 * public calls and their contract; docs/settlement.md the operator's view).
 *
 * The protocol (WIRE-FORMATS.md). One endpoint, access.htm, one form field:
 *     POST {report_url}
 *     Content-Type: application/x-www-form-urlencoded
 *     XML=<vspaccess><command>getBatchList</command><vendor>V</vendor>
 *         <user>U</user><startdate>..</startdate><enddate>..</enddate>
 *         <signature>S</signature></vspaccess>
 * S is the upper-case hex MD5 of the same inner XML with
 * <password>P</password> where <signature> is. The signature is whitespace
 * sensitive, so the XML is built as one string with no formatting, and the
 * same bytes are hashed and sent. The reply is <vspaccess> with
 * <errorcode>0000</errorcode> on success; 0010 means the signature (so the
 * user, password or vendor) was refused. Dates are "DD/MM/YYYY HH:MM:SS".
 * getTransactionList pages with <startrow>/<endrow> and answers
 * <totalrows>; Opayo returns at most 50 rows per call.
 *
 * What it owns: nothing beyond one call. Settings and secrets are read from
 * the connection when used (the connector's state knows nothing of the
 * reporting API, so these calls need no init of their own); the password is
 * only ever in the hashed buffer, which is wiped.
 *
 * Classification (the HTTP client classifies the status first):
 *   network, timeout, 408/425/429, 5xx           PB_ERR_TRANSIENT
 *   a 2xx that is not a vspaccess reply           PB_ERR_TRANSIENT
 *   errorcode 0010                                PB_ERR_PERMANENT, says so
 *   any other errorcode != 0000, other 4xx        PB_ERR_PERMANENT
 *
 * Traces: each call is appended to ctx->trace with the <signature> element
 * masked (it is a MAC of the password) and the reply as received.
 *
 * Rejected designs.
 *   - Building the XML with libxml2's writer: it would be correct XML but
 *     the signature covers the exact bytes, and a writer is free to change
 *     them (an XML declaration, self-closing tags). A string keeps control.
 *   - Retrying inside: the engine's retry policy owns backoff.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "connectors/settlement/settlement_fetch.h"
#include "connectors/settlement/settlement_parse.h"
#include "core/crypto.h"
#include "net/trace.h"
#include "opayo_internal.h"

#define REPORT_TIMEOUT_DEFAULT_MS 60000
#define REPORT_PAGE_ROWS_DEFAULT 50
#define REPORT_PAGES_MAX 100000 /* a guard against a reply whose rows never advance */
#define REPORT_REPLY_MAX ((size_t)256 * 1024 * 1024)

/* ---- building a request ------------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 512;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_escaped(struct buf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            puts_(b, "&amp;");
            break;
        case '<':
            puts_(b, "&lt;");
            break;
        case '>':
            puts_(b, "&gt;");
            break;
        case '"':
            puts_(b, "&quot;");
            break;
        case '\'':
            puts_(b, "&apos;");
            break;
        default:
            put(b, s, 1);
        }
    }
}

static void wipe_free(struct buf *b)
{
    if (b->p) {
        volatile char *v = b->p;
        for (size_t i = 0; i < b->cap; i++)
            v[i] = 0;
    }
    free(b->p);
    b->p = NULL;
}

enum pb_rc pb__opayo_report_request(const char *command, const char *vendor, const char *user,
                                    const char *password, const char *params, char **xml_out,
                                    char **form_out, struct pb_err *err)
{
    struct buf inner = {0}, signed_text = {0}, xml = {0}, form = {0};
    char md5[33];
    enum pb_rc rc = PB_OK;

    *xml_out = NULL;
    if (form_out)
        *form_out = NULL;
    if (!command || !vendor || !user || !password)
        return pb_err_set(err, PB_ERR_INVALID,
                          "a reporting request needs a command, vendor, user "
                          "and password");
    puts_(&inner, "<command>");
    put_escaped(&inner, command);
    puts_(&inner, "</command><vendor>");
    put_escaped(&inner, vendor);
    puts_(&inner, "</vendor><user>");
    put_escaped(&inner, user);
    puts_(&inner, "</user>");
    if (params)
        puts_(&inner, params);
    if (inner.failed) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    put(&signed_text, inner.p, inner.len);
    puts_(&signed_text, "<password>");
    puts_(&signed_text, password);
    puts_(&signed_text, "</password>");
    if (signed_text.failed) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = pb_md5_hex_upper(signed_text.p, signed_text.len, md5))) {
        rc = pb_err_set(err, PB_ERR_INTERNAL,
                        "MD5 is not available (a FIPS-only OpenSSL?); the "
                        "Opayo reporting API needs it");
        goto out;
    }
    puts_(&xml, "<vspaccess>");
    put(&xml, inner.p, inner.len);
    puts_(&xml, "<signature>");
    puts_(&xml, md5);
    puts_(&xml, "</signature></vspaccess>");
    if (form_out) {
        static const char hex[] = "0123456789ABCDEF";
        puts_(&form, "XML=");
        for (size_t i = 0; i < xml.len && !form.failed; i++) {
            unsigned char c = (unsigned char)xml.p[i];
            if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
                put(&form, (const char *)&xml.p[i], 1);
            } else {
                char pct[3] = {'%', hex[c >> 4], hex[c & 15]};
                put(&form, pct, 3);
            }
        }
    }
    if (xml.failed || form.failed) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    *xml_out = xml.p;
    xml.p = NULL;
    if (form_out) {
        *form_out = form.p;
        form.p = NULL;
    }
out:
    wipe_free(&signed_text);
    free(inner.p);
    free(xml.p);
    free(form.p);
    return rc;
}

void pb__opayo_report_date(int32_t day, int end, char *buf, size_t len)
{
    char iso[16];
    pb_settlement_date_format(day, iso, sizeof iso); /* YYYY-MM-DD */
    snprintf(buf, len, "%.2s/%.2s/%.4s %s", iso + 8, iso + 5, iso, end ? "23:59:59" : "00:00:00");
}

/* ---- one call ------------------------------------------------------------------------------- */

static enum pb_rc report_settings(struct pb_connection *c, const char **url, const char **vendor,
                                  const char **user, const char **password, long *timeout_ms,
                                  struct pb_err *err)
{
    long long t;
    *url = pb_connection_setting(c, "report_url", NULL);
    if (!*url || (strncmp(*url, "http://", 7) != 0 && strncmp(*url, "https://", 8) != 0))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.report_url: required for settlement reports, an http(s) URL "
                          "such as \"https://live.opayo.eu.elavon.com/access/access.htm\"");
    *vendor = pb_connection_setting(c, "vendor_name", NULL);
    if (!*vendor || !**vendor)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.vendor_name: required for settlement reports (the Opayo "
                          "vendor the reporting user belongs to)");
    *user = pb_connection_secret(c, "report_user");
    if (!*user || !**user)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "secrets.report_user: required for settlement reports (a user of "
                          "Opayo's reporting API, set up in MySagePay)");
    *password = pb_connection_secret(c, "report_password");
    if (!*password || !**password)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "secrets.report_password: required for settlement reports");
    t = pb_connection_setting_int(c, "report_timeout_ms", REPORT_TIMEOUT_DEFAULT_MS);
    if (t < 100 || t > 600000)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.report_timeout_ms: must be an integer from 100 to 600000");
    *timeout_ms = (long)t;
    return PB_OK;
}

/* The reply's errorcode and error text, read without building a set. */
static void reply_error(const char *body, char code[8], char text[200])
{
    const char *a = strstr(body, "<errorcode>"), *b;
    code[0] = text[0] = '\0';
    if (a && (b = strstr(a + 11, "</errorcode>")) && b - (a + 11) < 8)
        snprintf(code, 8, "%.*s", (int)(b - (a + 11)), a + 11);
    a = strstr(body, "<error>");
    if (a && (b = strstr(a + 7, "</error>")))
        snprintf(text, 200, "%.*s", (int)(b - (a + 7) < 199 ? b - (a + 7) : 199), a + 7);
}

/* POST one command; on success *reply owns the body (errorcode 0000). */
static enum pb_rc call(struct pb_connection *c, struct pb_call_ctx *ctx, const char *command,
                       const char *params, char **reply, size_t *reply_len, struct pb_err *err)
{
    const char *url = NULL, *vendor = NULL, *user = NULL, *password = NULL;
    long timeout_ms = REPORT_TIMEOUT_DEFAULT_MS;
    char *xml = NULL, *form = NULL, *masked = NULL;
    struct pb_http_call hc;
    enum pb_rc rc;
    char code[8], text[200];

    *reply = NULL;
    if (reply_len)
        *reply_len = 0;
    if (!c || !ctx || !ctx->http)
        return pb_err_set(err, PB_ERR_INVALID, "opayo report: no connection or HTTP client");
    if ((rc = report_settings(c, &url, &vendor, &user, &password, &timeout_ms, err)))
        return rc;
    if ((rc = pb__opayo_report_request(command, vendor, user, password, params, &xml, &form, err)))
        return rc;
    memset(&hc, 0, sizeof hc);
    hc.method = "POST";
    hc.url = url;
    hc.headers[0] = "Content-Type: application/x-www-form-urlencoded";
    hc.headers[1] = "Accept: application/xml, text/xml";
    hc.body = form;
    hc.body_len = strlen(form);
    hc.timeout_ms = timeout_ms;
    hc.limiter = c->limiter;
    hc.max_response = REPORT_REPLY_MAX;
    rc = pb_http_perform(ctx->http, &hc, err);

    /* the trace gets the request with its signature masked */
    masked = strdup(xml);
    if (masked) {
        char *s = strstr(masked, "<signature>");
        char *e = s ? strstr(s, "</signature>") : NULL;
        if (s && e)
            memmove(s + 11 + 3, e, strlen(e) + 1), memcpy(s + 11, "***", 3);
        hc.body = masked;
        hc.body_len = strlen(masked);
    } else {
        hc.body = NULL;
        hc.body_len = 0;
    }
    if (rc == PB_OK) {
        if (!hc.response || !strstr(hc.response, "<vspaccess")) {
            rc = pb_err_set(err, PB_ERR_TRANSIENT,
                            "opayo %s: HTTP %ld but the reply is not a vspaccess document", command,
                            hc.status);
        } else {
            reply_error(hc.response, code, text);
            if (strcmp(code, "0010") == 0)
                rc = pb_err_set(err, PB_ERR_PERMANENT,
                                "opayo %s: the signature was refused (errorcode 0010: %s); check "
                                "secrets.report_user, secrets.report_password and "
                                "settings.vendor_name: retrying cannot help",
                                command, text[0] ? text : "invalid signature");
            else if (code[0] && strcmp(code, "0000") != 0)
                rc = pb_err_set(err, PB_ERR_PERMANENT, "opayo %s: errorcode %s: %s", command, code,
                                text[0] ? text : "(no <error> text)");
            else if (!code[0])
                rc = pb_err_set(err, PB_ERR_TRANSIENT, "opayo %s: the reply has no <errorcode>",
                                command);
        }
    } else {
        pb_err_prefix(err, "opayo %s", command);
    }
    pb_trace_http(ctx->trace, &hc, rc, err);
    if (ctx->retry_after_s < 0 || hc.retry_after_s >= 0)
        ctx->retry_after_s = hc.retry_after_s;
    if (rc == PB_OK) {
        *reply = hc.response;
        if (reply_len)
            *reply_len = hc.response_len;
        hc.response = NULL;
    }
    hc.body = NULL;
    pb_http_call_reset(&hc);
    free(masked);
    free(xml);
    free(form);
    return rc;
}

enum pb_rc pb_settlement_opayo_command(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       const char *command, const char *params, char **reply,
                                       size_t *reply_len, struct pb_err *err)
{
    return call(c, ctx, command, params, reply, reply_len, err);
}

/* ---- settlement fetches ------------------------------------------------------------------------
 */

static void date_params(int32_t from_day, int32_t to_day, char *buf, size_t len)
{
    char a[24], b[24];
    pb__opayo_report_date(from_day, 0, a, sizeof a);
    pb__opayo_report_date(to_day, 1, b, sizeof b);
    snprintf(buf, len, "<startdate>%s</startdate><enddate>%s</enddate>", a, b);
}

/* Parse a reply into the set; a parse error of a 0000 reply is transient (unreadable). */
static enum pb_rc parse_into(struct pb_settlement_set *set, const char *source, const char *body,
                             size_t len, struct pb_settlement_opayo_reply *rep, struct pb_err *err)
{
    enum pb_rc rc = pb_settlement_parse_opayo_xml(set, source, body, len, rep, err);
    if (rc == PB_ERR_INVALID)
        rc = pb_err_set(err, PB_ERR_TRANSIENT, "%s", err ? err->msg : "unreadable reply");
    return rc;
}

enum pb_rc pb_settlement_opayo_fetch_batches(struct pb_connection *c, struct pb_call_ctx *ctx,
                                             int32_t from_day, int32_t to_day,
                                             struct pb_settlement_set *set, struct pb_err *err)
{
    char params[128], source[160], from[16], to[16];
    char *body = NULL;
    size_t len, first_new, n_after;
    struct pb_settlement_opayo_reply rep;
    enum pb_rc rc, first_rc = PB_OK;
    struct pb_err first_err = {0};

    if (!set || from_day > to_day)
        return pb_err_set(err, PB_ERR_INVALID, "opayo batches: no set, or from is after to");
    date_params(from_day, to_day, params, sizeof params);
    pb_settlement_date_format(from_day, from, sizeof from);
    pb_settlement_date_format(to_day, to, sizeof to);
    if ((rc = call(c, ctx, "getBatchList", params, &body, &len, err)))
        return rc;
    snprintf(source, sizeof source, "opayo getBatchList %s..%s", from, to);
    first_new = pb_settlement_batch_count(set);
    rc = parse_into(set, source, body, len, &rep, err);
    free(body);
    if (rc)
        return rc;
    /* the details of the batches this list declared (new headers, in list order) */
    n_after = pb_settlement_batch_count(set);
    for (size_t i = 0; i < n_after; i++) {
        const struct pb_settlement_batch *b = pb_settlement_batch_at(set, i);
        char id[PB_SETTLEMENT_ID_MAX + 1], escaped[PB_SETTLEMENT_ID_MAX * 6 + 32];
        struct pb_err e = {0};
        size_t k = 0;
        if (i < first_new && !(b->flags & PB_SETTLEMENT_BATCH_HEADER_ONLY))
            continue;
        if (!(b->flags & PB_SETTLEMENT_BATCH_HEADER_ONLY) || strcmp(b->gateway, "opayo") != 0)
            continue;
        snprintf(id, sizeof id, "%s", b->batch_id);
        k = (size_t)snprintf(escaped, sizeof escaped, "<batchid>");
        for (const char *p = id; *p && k + 8 < sizeof escaped; p++) {
            const char *rep_s = *p == '&'   ? "&amp;"
                                : *p == '<' ? "&lt;"
                                : *p == '>' ? "&gt;"
                                            : NULL;
            if (rep_s)
                k += (size_t)snprintf(escaped + k, sizeof escaped - k, "%s", rep_s);
            else
                escaped[k++] = *p;
        }
        snprintf(escaped + k, sizeof escaped - k, "</batchid>");
        rc = call(c, ctx, "getBatchDetail", escaped, &body, &len, &e);
        if (rc == PB_OK) {
            snprintf(source, sizeof source, "opayo getBatchDetail %s", id);
            rc = parse_into(set, source, body, len, &rep, &e);
            free(body);
        }
        if (rc && !first_rc) {
            first_rc = rc;
            first_err = e;
        }
        if (rc == PB_ERR_TRANSIENT || rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG)
            break; /* the remote is down: stop here, the run is retried */
    }
    if (first_rc && err)
        *err = first_err;
    return first_rc;
}

enum pb_rc pb_settlement_opayo_fetch_transactions(struct pb_connection *c, struct pb_call_ctx *ctx,
                                                  int32_t from_day, int32_t to_day,
                                                  struct pb_settlement_set *set, struct pb_err *err)
{
    char dates[128], params[200], source[160];
    long long rows = pb_connection_setting_int(c, "report_page_rows", REPORT_PAGE_ROWS_DEFAULT);
    long start = 1;
    enum pb_rc rc;

    if (!set || from_day > to_day)
        return pb_err_set(err, PB_ERR_INVALID, "opayo transactions: no set, or from is after to");
    if (rows < 1 || rows > 1000)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.report_page_rows: must be an integer from 1 to 1000");
    date_params(from_day, to_day, dates, sizeof dates);
    for (int page = 0; page < REPORT_PAGES_MAX; page++) {
        struct pb_settlement_opayo_reply rep;
        char *body = NULL;
        size_t len;
        long end = start + (long)rows - 1;
        snprintf(params, sizeof params, "%s<startrow>%ld</startrow><endrow>%ld</endrow>", dates,
                 start, end);
        if ((rc = call(c, ctx, "getTransactionList", params, &body, &len, err)))
            return rc;
        snprintf(source, sizeof source, "opayo getTransactionList rows %ld-%ld", start, end);
        if (page > 0)
            pb_settlement_continue(set); /* the same load: batches continue across pages */
        rc = parse_into(set, source, body, len, &rep, err);
        free(body);
        if (rc)
            return rc;
        if (rep.totalrows < 0 || rep.endrow < 0 || rep.endrow >= rep.totalrows)
            return PB_OK;
        if (rep.endrow < start)
            return pb_err_set(err, PB_ERR_TRANSIENT,
                              "opayo getTransactionList: asked for rows from %ld, the reply ends "
                              "at row %ld of %ld",
                              start, rep.endrow, rep.totalrows);
        start = rep.endrow + 1;
    }
    return pb_err_set(err, PB_ERR_TOOBIG, "opayo getTransactionList: more than %d pages",
                      REPORT_PAGES_MAX);
}
