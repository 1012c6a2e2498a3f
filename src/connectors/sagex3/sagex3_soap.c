/*
 * connectors/sagex3/sagex3_soap.c: one call of Sage X3's classic SOAP web
 * service CAdxWebServiceXmlCC (namespace http://www.adonix.com/WSS), and
 * what its answer means.
 *
 * The request, built with libxml2's tree API (every value escaped):
 *
 *   POST {base_url}{soap_path}        HTTP Basic username:password
 *   Content-Type: text/xml; charset=utf-8
 *   SOAPAction: ""
 *   <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 *                     xmlns:wss="http://www.adonix.com/WSS">
 *    <soapenv:Header/><soapenv:Body>
 *     <wss:save>                                   (read | query | run | modify)
 *      <callContext><codeLang>ENG</codeLang><poolAlias>SEED</poolAlias>
 *       <poolId/><requestConfig>adxwss.optreturn=XML</requestConfig></callContext>
 *      <publicName>SOH</publicName>
 *      <objectKeys><item><key>SOHNUM</key><value>..</value></item></objectKeys>
 *                                                  (read, query, modify)
 *      <objectXml>&lt;PARAM&gt;...</objectXml>     (save, modify; run: inputXml)
 *      <listSize>5</listSize>                      (query)
 *     </wss:save></soapenv:Body></soapenv:Envelope>
 *
 * The parameters follow the WSDL's order for each operation. objectXml is
 * sent as escaped text rather than CDATA (see sagex3_xml.c).
 *
 * The answer is a <saveResponse><saveReturn> (a CAdxResultXml) with status
 * (1 done, 0 refused), messages (each {message, type: 1 info, 2 warning,
 * 3 error}, nested one level as X3's SOAP arrays are), resultXml (the record
 * as <RESULT> XML, escaped or CDATA) and technicalInfos (busy = the pool had
 * no free connection); or a SOAP Fault. Element names are matched by local
 * name, so any namespace prefix X3 or a proxy chooses is accepted.
 *
 * Classification (the table in docs/connectors.md, section sagex3):
 *   no HTTP reply (network, timeout)           -> PB_ERR_TRANSIENT
 *   401                                        -> PB_ERR_AUTH, not retried:
 *       repeated failed logins can lock the X3 user, which would stop every
 *       other integration that shares it
 *   a SOAP Fault (any HTTP status)             -> PB_ERR_TRANSIENT, except a
 *       Client fault (X3 could not read what we sent; sending it again
 *       changes nothing) or a faultstring that names a business error
 *       ("does not exist", "invalid", "mandatory", ...) -> PB_ERR_PERMANENT
 *   5xx, 408, 425, 429 without a Fault          -> PB_ERR_TRANSIENT (+ Retry-After)
 *   3xx (Syracuse redirects to its login page), other 4xx -> PB_ERR_PERMANENT
 *       naming settings.base_url / soap_path
 *   2xx that is not a CAdxResultXml            -> PB_ERR_TRANSIENT
 *   status 1                                   -> done
 *   status 0: busy, "no connection available", a record lock -> PB_ERR_TRANSIENT
 *   status 0 otherwise                         -> PB_ERR_PERMANENT with X3's
 *       error messages ("ITMREF ITM-999 : record does not exist")
 * A write whose reply cannot be read is transient: the retry looks the
 * record up by reference before it saves anything.
 *
 * Every call is appended to ctx->trace (pb_trace_http: header values, and
 * so the Basic credentials, are never recorded). Text taken from X3 into a
 * message passes pb_pan_redact().
 *
 * Threading: no state; the HTTP client is the calling worker's.
 * Rejected: retrying a busy pool here (the engine's backoff owns retries; a
 * sleeping connector holds a worker), and parsing with a SAX or regex
 * scanner (libxml2's tree is small for these replies and handles every
 * encoding and escape X3 may use).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/xmlsave.h>

#include "core/pan.h"
#include "net/trace.h"
#include "sagex3_internal.h"

#define SOAP_ENV_NS "http://schemas.xmlsoap.org/soap/envelope/"
#define WSS_NS "http://www.adonix.com/WSS"

static void set_failure(struct sagex3_failure *f, enum pb_rc rc, int retry_after_s, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));
static void set_failure(struct sagex3_failure *f, enum pb_rc rc, int retry_after_s, const char *fmt,
                        ...)
{
    va_list ap;
    f->rc = rc;
    f->retry_after_s = retry_after_s;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
    pb_pan_redact(f->message, strlen(f->message));
}

/* Case-insensitive: does `s` contain any of `needles`? */
static int mentions(const char *s, const char *const *needles)
{
    for (size_t i = 0; s && needles[i]; i++)
        if (strcasestr(s, needles[i]))
            return 1;
    return 0;
}

static const char *const transient_words[] = {
    "no connection available",
    "no web service connection",
    "no free connection",
    "pool is busy",
    "pool busy",
    "all connections",
    "timeout",
    "timed out",
    "locked by",
    "record locked",
    "is locked",
    "try again later",
    NULL,
};

static const char *const business_words[] = {
    "does not exist",      "doesn't exist",  "invalid",     "mandatory",    "not published",
    "unknown public name", "already exists", "not allowed", "n'existe pas", NULL,
};

static const char *const not_found_words[] = {
    "does not exist", "doesn't exist", "not found", "n'existe pas", "inexistant", NULL,
};

static const char *const exists_words[] = {
    "already exists", "already exist",  "existe d\xc3\xa9j\xc3\xa0",
    "duplicate key",  "record already", NULL,
};

enum pb_rc pb__sagex3_classify_fault(const char *faultcode, const char *faultstring)
{
    const char *local = faultcode ? strrchr(faultcode, ':') : NULL;
    local = local ? local + 1 : faultcode;
    if (local && strncmp(local, "Client", 6) == 0)
        return PB_ERR_PERMANENT;
    if (mentions(faultstring, business_words))
        return PB_ERR_PERMANENT;
    return PB_ERR_TRANSIENT;
}

/* A child element in no namespace (xmlNewChild would inherit the parent's,
 * and X3's rpc operations take unqualified parameters), holding `text` as a
 * text node (escaped when serialised; NULL or "" = empty element). */
static xmlNodePtr plain(xmlNodePtr parent, const char *name, const char *text)
{
    xmlNodePtr n = parent ? xmlNewDocNode(parent->doc, NULL, BAD_CAST name, NULL) : NULL;
    if (!n)
        return NULL;
    if (text && text[0]) {
        xmlNodePtr t = xmlNewDocText(parent->doc, BAD_CAST text);
        if (!t || !xmlAddChild(n, t)) {
            xmlFreeNode(t);
            xmlFreeNode(n);
            return NULL;
        }
    }
    if (!xmlAddChild(parent, n)) {
        xmlFreeNode(n);
        return NULL;
    }
    return n;
}

/* ---- the envelope ------------------------------------------------------------------ */

static enum pb_rc build_envelope(const struct sagex3_state *st, const struct sagex3_request *rq,
                                 char **out, struct pb_err *err)
{
    xmlDocPtr d = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr env = NULL, body, op, cc;
    xmlNsPtr soap, wss;
    xmlBufferPtr buf = NULL;
    xmlSaveCtxtPtr save;
    enum pb_rc rc = PB_OK;
    int ok = 1;

    *out = NULL;
    for (size_t i = 0; i < rq->n_keys; i++)
        if (!pb__sagex3_valid_id(rq->keys[i].key) || !rq->keys[i].value ||
            !pb__sagex3_xml_text_ok(rq->keys[i].value, strlen(rq->keys[i].value), NULL)) {
            rc = pb_err_set(err, PB_ERR_MAPPING,
                            "the key %s of the %s look-up is not text XML can carry",
                            rq->keys[i].key ? rq->keys[i].key : "(null)", rq->public_name);
            goto out;
        }
    env = d ? xmlNewNode(NULL, BAD_CAST "Envelope") : NULL;
    if (!env)
        goto oom;
    xmlDocSetRootElement(d, env);
    soap = xmlNewNs(env, BAD_CAST SOAP_ENV_NS, BAD_CAST "soapenv");
    wss = xmlNewNs(env, BAD_CAST WSS_NS, BAD_CAST "wss");
    if (!soap || !wss)
        goto oom;
    xmlSetNs(env, soap);
    ok &= xmlNewChild(env, soap, BAD_CAST "Header", NULL) != NULL;
    body = xmlNewChild(env, soap, BAD_CAST "Body", NULL);
    op = body ? xmlNewChild(body, wss, BAD_CAST rq->operation, NULL) : NULL;
    cc = plain(op, "callContext", NULL);
    if (!cc)
        goto oom;
    ok &= plain(cc, "codeLang", st->code_lang) != NULL;
    ok &= plain(cc, "poolAlias", st->pool_alias) != NULL;
    ok &= plain(cc, "poolId", st->pool_id) != NULL;
    ok &= plain(cc, "requestConfig", st->request_config) != NULL;
    ok &= plain(op, "publicName", rq->public_name) != NULL;
    if (rq->n_keys > 0) {
        xmlNodePtr keys = plain(op, "objectKeys", NULL);
        for (size_t i = 0; keys && i < rq->n_keys; i++) {
            xmlNodePtr item = plain(keys, "item", NULL);
            ok &= item && plain(item, "key", rq->keys[i].key);
            ok &= item && plain(item, "value", rq->keys[i].value);
        }
        ok &= keys != NULL;
    }
    if (rq->xml)
        ok &= plain(op, strcmp(rq->operation, "run") == 0 ? "inputXml" : "objectXml", rq->xml) !=
              NULL;
    if (strcmp(rq->operation, "query") == 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", rq->list_size > 0 ? rq->list_size : 1);
        ok &= plain(op, "listSize", n) != NULL;
    }
    if (!ok)
        goto oom;
    buf = xmlBufferCreate();
    save = buf ? xmlSaveToBuffer(buf, "UTF-8", 0) : NULL;
    if (!save)
        goto oom;
    xmlSaveDoc(save, d);
    if (xmlSaveClose(save) < 0 || !xmlBufferContent(buf))
        goto oom;
    *out = strdup((const char *)xmlBufferContent(buf));
    if (!*out)
        goto oom;
    goto out;
oom:
    rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory building the SOAP envelope");
out:
    if (buf)
        xmlBufferFree(buf);
    if (d)
        xmlFreeDoc(d);
    return rc;
}

/* ---- the answer -------------------------------------------------------------------- */

void pb__sagex3_result_free(struct sagex3_result *res)
{
    json_decref(res->messages);
    if (res->result)
        xmlFreeDoc(res->result);
    memset(res, 0, sizeof *res);
}

static void add_message(json_t *arr, const xmlNode *m)
{
    char *text = pb__sagex3_text(pb__sagex3_child(m, "message"));
    char *type = pb__sagex3_text(pb__sagex3_child(m, "type"));
    long t = type ? strtol(type, NULL, 10) : 0;
    if (text && text[0]) {
        pb_pan_redact(text, strlen(text));
        json_array_append_new(
            arr, json_pack("{s:i,s:s}", "type", (t >= 1 && t <= 3) ? (int)t : 3, "message", text));
    }
    free(text);
    free(type);
}

/* Fill *res from a ...Return element. PB_OK, or the failure in *f. */
static enum pb_rc read_return(const xmlNode *ret, const char *what, struct sagex3_result *res,
                              struct sagex3_failure *f)
{
    char *status = pb__sagex3_text(pb__sagex3_child(ret, "status"));
    char *busy = pb__sagex3_text(pb__sagex3_child(pb__sagex3_child(ret, "technicalInfos"), "busy"));
    char *result_xml = NULL, why[256];
    enum pb_rc rc = PB_OK;

    res->messages = json_array();
    if (!status || !res->messages || !busy) {
        set_failure(f, PB_ERR_TRANSIENT, -1, "out of memory reading X3's reply to %s", what);
        rc = f->rc;
        goto out;
    }
    if (strcmp(status, "1") != 0 && strcmp(status, "0") != 0) {
        set_failure(f, PB_ERR_TRANSIENT, -1,
                    "Sage X3's reply to %s has no status 0 or 1 (got \"%.20s\"): cannot tell "
                    "whether it was done; will retry (a retry looks the record up first)",
                    what, status);
        rc = f->rc;
        goto out;
    }
    res->status = status[0] - '0';
    res->busy = strcasecmp(busy, "true") == 0;
    for (xmlNode *k = ret->children; k; k = k->next) {
        if (strcmp(pb__sagex3_local_name(k), "messages") != 0)
            continue;
        if (pb__sagex3_child(k, "message")) {
            add_message(res->messages, k);
        } else {
            for (xmlNode *m = k->children; m; m = m->next)
                if (m->type == XML_ELEMENT_NODE)
                    add_message(res->messages, m);
        }
    }
    result_xml = pb__sagex3_text(pb__sagex3_child(ret, "resultXml"));
    if (result_xml && result_xml[0]) {
        res->result = pb__sagex3_xml_parse(result_xml, strlen(result_xml), why, sizeof why);
        if (!res->result && res->status == 1) {
            set_failure(f, PB_ERR_TRANSIENT, -1,
                        "Sage X3 answered %s with status 1 but its resultXml is not XML (%s): "
                        "will retry (a retry looks the record up first)",
                        what, why);
            rc = f->rc;
        }
    }
out:
    free(status);
    free(busy);
    free(result_xml);
    return rc;
}

static void describe_fault(const xmlNode *fault, const char *what, struct sagex3_failure *f)
{
    char *code = pb__sagex3_text(pb__sagex3_child(fault, "faultcode"));
    char *text = pb__sagex3_text(pb__sagex3_child(fault, "faultstring"));
    enum pb_rc rc = pb__sagex3_classify_fault(code, text);
    set_failure(f, rc, -1, "Sage X3 answered %s with a SOAP Fault (%s): %s%s", what,
                code && code[0] ? code : "no faultcode", text && text[0] ? text : "no faultstring",
                rc == PB_ERR_TRANSIENT ? "; will retry" : "");
    free(code);
    free(text);
}

static void describe_http(const struct pb_http_call *call, enum pb_rc rc, const char *what,
                          struct sagex3_failure *f)
{
    long s = call->status;
    if (rc == PB_ERR_TOOBIG) {
        set_failure(f, PB_ERR_TRANSIENT, -1,
                    "Sage X3's reply to %s is larger than %zu bytes; will retry", what,
                    (size_t)SAGEX3_REPLY_MAX);
    } else if (s >= 500 || s == 408 || s == 425 || s == 429) {
        set_failure(f, PB_ERR_TRANSIENT, call->retry_after_s,
                    "Sage X3 answered %s with HTTP %ld and no SOAP Fault; will retry", what, s);
    } else if (s >= 300 && s < 400) {
        const char *loc = pb_http_call_header(call, "Location");
        set_failure(f, PB_ERR_PERMANENT, -1,
                    "Sage X3 redirected %s (HTTP %ld to %.120s): settings.base_url and "
                    "settings.soap_path must name the SOAP endpoint itself",
                    what, s, loc ? loc : "nowhere");
    } else if (s == 404) {
        set_failure(f, PB_ERR_PERMANENT, -1,
                    "Sage X3 answered %s with HTTP 404: check settings.base_url and "
                    "settings.soap_path (the CAdxWebServiceXmlCC endpoint)",
                    what);
    } else if (s >= 400) {
        set_failure(f, PB_ERR_PERMANENT, -1, "Sage X3 answered %s with HTTP %ld", what, s);
    } else {
        set_failure(f, PB_ERR_TRANSIENT, -1,
                    "Sage X3 answered %s with HTTP %ld but no SOAP result; will retry (a retry "
                    "looks the record up first)",
                    what, s);
    }
}

enum pb_rc pb__sagex3_call(struct pb_connection *c, struct pb_call_ctx *ctx,
                           const struct sagex3_request *rq, struct sagex3_result *res,
                           struct sagex3_failure *f)
{
    struct sagex3_state *st = pb__sagex3_state(c);
    struct pb_http_call call;
    struct pb_err e = {0};
    char what[96], why[256];
    char *body = NULL;
    xmlDocPtr env = NULL;
    enum pb_rc rc;

    memset(res, 0, sizeof *res);
    memset(&call, 0, sizeof call);
    f->rc = PB_OK;
    f->retry_after_s = -1;
    f->message[0] = '\0';
    snprintf(what, sizeof what, "%s %s", rq->operation, rq->public_name);
    if (!st) {
        set_failure(f, PB_ERR_INTERNAL, -1, "sagex3 connection used before init");
        return f->rc;
    }
    rc = build_envelope(st, rq, &body, &e);
    if (rc) {
        set_failure(f, rc == PB_ERR_NOMEM ? PB_ERR_TRANSIENT : rc, -1, "%s", e.msg);
        return f->rc;
    }
    call.method = "POST";
    call.url = st->url;
    call.headers[0] = "Content-Type: text/xml; charset=utf-8";
    call.headers[1] = "SOAPAction: \"\"";
    call.headers[2] = "Accept: text/xml";
    call.headers[3] = NULL;
    call.body = body;
    call.body_len = strlen(body);
    call.timeout_ms = st->timeout_ms;
    call.basic_user = pb_connection_secret(c, "username");
    call.basic_password = pb_connection_secret(c, "password");
    call.limiter = c->limiter;
    call.max_response = SAGEX3_REPLY_MAX;
    rc = pb_http_perform(ctx->http, &call, &e);
    pb_trace_http(ctx->trace, &call, rc, &e);

    if (call.status == 0) {
        set_failure(f, PB_ERR_TRANSIENT, call.retry_after_s,
                    "Sage X3 did not answer %s: %s; will retry", what, e.msg);
        goto out;
    }
    if (call.status == 401) {
        set_failure(f, PB_ERR_AUTH, -1,
                    "Sage X3 refused the credentials (HTTP 401) for %s: check secrets.username "
                    "and secrets.password (HTTP Basic; the user needs web service rights). Not "
                    "retried: repeated failed logins can lock the X3 user",
                    what);
        goto out;
    }
    if (rc != PB_ERR_TOOBIG && call.response && call.response_len > 0)
        env = pb__sagex3_xml_parse(call.response, call.response_len, why, sizeof why);
    {
        xmlNode *root = env ? xmlDocGetRootElement(env) : NULL;
        xmlNode *soap_body = strcmp(pb__sagex3_local_name(root), "Envelope") == 0
                                 ? pb__sagex3_child(root, "Body")
                                 : NULL;
        xmlNode *first = pb__sagex3_child(soap_body, NULL);
        xmlNode *ret = NULL;

        if (first && strcmp(pb__sagex3_local_name(first), "Fault") == 0) {
            describe_fault(first, what, f);
            goto out;
        }
        if (call.status < 200 || call.status >= 300 || rc) {
            describe_http(&call, rc, what, f);
            goto out;
        }
        /* <saveResponse><saveReturn>...; tolerate a flattened reply */
        if (first)
            ret = pb__sagex3_child(first, "status") ? first : pb__sagex3_child(first, NULL);
        if (!ret || !pb__sagex3_child(ret, "status")) {
            set_failure(f, PB_ERR_TRANSIENT, -1,
                        "Sage X3's reply to %s is not a SOAP result (%s); will retry (a retry "
                        "looks the record up first)",
                        what, env ? "no Body/...Return/status" : why);
            goto out;
        }
        if (read_return(ret, what, res, f) != PB_OK)
            pb__sagex3_result_free(res);
    }
out:
    if (env)
        xmlFreeDoc(env);
    pb_http_call_reset(&call);
    free(body);
    return f->rc;
}

/* ---- status 0 ---------------------------------------------------------------------- */

/* X3's messages of the given type (0 = any) joined by "; ". */
static void join_messages(const json_t *messages, int type, char *out, size_t len)
{
    size_t used = 0, i;
    json_t *m;
    out[0] = '\0';
    json_array_foreach(messages, i, m)
    {
        int w;
        if (type && json_integer_value(json_object_get(m, "type")) != type)
            continue;
        w = snprintf(out + used, len - used, "%s%s", used ? "; " : "",
                     json_string_value(json_object_get(m, "message")));
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
}

void pb__sagex3_refusal(const struct sagex3_result *res, const char *what, struct sagex3_failure *f)
{
    char text[400];
    int transient = res->busy;

    join_messages(res->messages, 3, text, sizeof text);
    if (!text[0])
        join_messages(res->messages, 0, text, sizeof text);
    transient |= mentions(text, transient_words);
    if (transient)
        set_failure(f, PB_ERR_TRANSIENT, -1, "Sage X3 could not run %s now: %s; will retry", what,
                    text[0] ? text : "the web service pool is busy");
    else
        set_failure(f, PB_ERR_PERMANENT, -1, "Sage X3 refused %s: %s", what,
                    text[0] ? text : "status 0 without a message");
}

static int all_errors_say(const struct sagex3_result *res, const char *const *words)
{
    size_t i;
    json_t *m;
    int seen = 0;
    if (res->status != 0)
        return 0;
    json_array_foreach(res->messages, i, m)
    {
        if (json_integer_value(json_object_get(m, "type")) != 3)
            continue;
        if (!mentions(json_string_value(json_object_get(m, "message")), words))
            return 0;
        seen = 1;
    }
    return seen;
}

int pb__sagex3_says_not_found(const struct sagex3_result *res)
{
    return all_errors_say(res, not_found_words);
}

int pb__sagex3_says_exists(const struct sagex3_result *res)
{
    return all_errors_say(res, exists_words);
}
