/*
 * sandbox/sagex3.c: an emulator of Sage X3's classic SOAP web service
 * CAdxWebServiceXmlCC (namespace http://www.adonix.com/WSS), enough of it
 * for paybridge's sagex3 connector to be tested end to end: customers (BPC),
 * sales orders (SOH), stock allocation (the ALASTO sub-program), payments
 * (PAY) and journal entries (GACC), with X3's way of saying no.
 *
 * Routes (the framework adds fault injection and /_sandbox/health|faults):
 *   POST /soap-generic/syracuse/collaboration/syracuse/CAdxWebServiceXmlCC
 *        the SOAP 1.1 endpoint: save, read, query (listSize), modify, run
 *   GET  the same path, or /soap-wsdl/.../CAdxWebServiceXmlCC?wsdl: a small WSDL
 *   GET  /_sandbox/stats    {"customers","sales_orders","allocations","payments",
 *                            "journals","duplicate_references",...}
 *   GET  /_sandbox/records  every record, the allocations and the stock (JSON)
 *   POST /_sandbox/reset    forget everything, restore the stock
 *   POST /_sandbox/inject   {"soap_fault":n,"fault_string":"..","pool_busy":n,
 *                            "drop_reply":n,"after":m}: after m calls answered
 *                            as usual (0 by default), the next n SOAP calls
 *                            answer a Server Fault (HTTP 500), a busy pool
 *                            (status 0, technicalInfos busy), or are executed
 *                            and then answered 502 with no SOAP body (a lost
 *                            reply; "after":1 loses a save's reply after the
 *                            look-up that precedes it)
 *
 * Settings (all optional; defaults in brackets): username ["admin"],
 * password ["sandbox-x3"], pool_alias ["SEED"], items [ITM-100 ITM-200
 * ITM-300], sites [FR011 US011], accounts [5120000 4110000 7070000
 * 6270000], payment_types [CC ACH], stock [{"ITM-100":1000,"ITM-200":1000,
 * "ITM-300":1000}: whole units; an item without stock has none],
 * currency ["USD": the currency of amounts without CUR], aliases
 * [{"YOSOH":"SOH","YBPC":"BPC"}: site public names], closed_before [none:
 * YYYYMMDD, PAY and GACC dated before it are refused]. Unknown keys are a
 * config error.
 *
 * The wire. A request is a SOAP 1.1 envelope whose Body holds one
 * wss:OPERATION with callContext {codeLang, poolAlias, poolId,
 * requestConfig}, publicName, objectKeys (<item><key/><value/></item>...),
 * objectXml or inputXml (<PARAM>, escaped text or CDATA) and listSize. The
 * answer is <wss:OPERATIONResponse><OPERATIONReturn> with messages
 * (<messages><messages><message/><type/></messages></messages>, types 1
 * info, 2 warning, 3 error), resultXml (<RESULT> in a CDATA section),
 * status (1 done, 0 refused) and technicalInfos (busy, durations). A read,
 * save or modify returns the object (<GRP ID><FLD NAME>, <TAB ID><LIN NUM>);
 * a query returns <LIN NUM> lines of the header fields. An envelope that is
 * not well-formed SOAP 1.1 gets a Client Fault (HTTP 500); bad credentials
 * a 401 with WWW-Authenticate: Basic.
 *
 * Objects are kept in the mirror form paybridge uses (group id -> {field:
 * text}, table id -> [{field: text}]), so any group ids a template chooses
 * are stored and returned as sent. Fields are found by NAME across groups:
 *
 *   BPC  BPCNUM (15 chars at most; numbered C000001.. when absent; a
 *        second save of one number: "BPCNUM X : record already exists"),
 *        BPCNAM mandatory.
 *   SOH  SALFCY (a known site), BPCORD (a known customer), SOHTYP (SON
 *        when absent), lines: a table whose lines carry ITMREF (a known item),
 *        QTY (> 0) and GROPRI (a decimal). The reference is CUSORDREF, else
 *        REFLOT. Numbered SOHTYP+SALFCY+"-"+6 digits.
 *   ALASTO run with SOHNUM: allocates every line from stock, all or
 *        nothing ("ITMREF X : insufficient stock ..."); an allocated order
 *        answers its allocation again (status 1, an information message).
 *   PAY  PAYTYP (a known payment type), every ACC field (a known account:
 *        "Account X : invalid"), BPR and FCY when present, the order
 *        (SOHNUM or VCRNUM, anywhere) must exist, AMTCUR > 0; reference REF.
 *   GACC lines with ACC (known), DEB/CDT decimals, debits = credits;
 *        reference REF.
 *   PAY and GACC carry the accounting date ACCDAT (YYYYMMDD, a real date):
 *        X3 sets today's (UTC) when it is absent, as X3 does; one before the
 *        setting closed_before is refused ("Accounting date X : period
 *        closed (...)"), as a closed fiscal period is.
 *
 * Queries. Every objectKeys criterion must hold. A value starting with
 * ">=", "<=", ">" or "<" compares the field's text with the rest (X3 dates
 * are YYYYMMDD and numbers are zero-padded, so the text order is theirs);
 * any other value must be equal. Lines come in the order the records were
 * saved (the order of their numbers), at most listSize: paybridge reads a
 * date range page by page with ACCDAT >=from, ACCDAT <=to and NUM >last.
 * Records whose reference another record of the same kind already has are
 * saved (X3 does not refuse them) and counted as duplicate_references: the
 * exactly-once checks of the tests read that number.
 *
 * Money: decimals are parsed exactly to int64 at 4 decimal places (amounts,
 * quantities) and never touch a double; values are stored as the text sent.
 *
 * Locking: one mutex guards all state (records, indexes, stock, counters,
 * injections); handlers run on a thread per connection and take it for the
 * operation. XML is parsed and built outside the lock, on private libxml2
 * documents.
 *
 * Not emulated: delete, getDescription, getDataXmlSchema, actionObject,
 * insertLines/deleteLines (status 0, "not emulated"), prices from price
 * lists, taxes, order totals, partial allocation, sessions (poolId).
 *
 * Rejected: real X3's per-object screen dictionaries (which group a field
 * belongs to): installations differ, and checking them here would only test
 * the sandbox's own table; fields are validated by name instead.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlsave.h>

#include "core/crypto.h"
#include "net/httpd.h"
#include "sbx.h"

#define SX3_MAGIC 0x58335342u /* "X3SB" */
#define SOAP_PATH "/soap-generic/syracuse/collaboration/syracuse/CAdxWebServiceXmlCC"
#define WSDL_PATH "/soap-wsdl/syracuse/collaboration/syracuse/CAdxWebServiceXmlCC"
#define SOAP_ENV_NS "http://schemas.xmlsoap.org/soap/envelope/"
#define WSS_NS "http://www.adonix.com/WSS"
#define DEC_SCALE 4 /* decimals kept for amounts and quantities */
#define BPCNUM_MAX 15
#define LIST_SIZE_MAX 1000
#define TEXT_MAX 256
#define DATE_LEN 8 /* YYYYMMDD */

enum entity { E_BPC, E_SOH, E_PAY, E_GACC, E_COUNT };

static const struct {
    const char *public_name; /* the standard public name */
    const char *key_field;   /* the record number */
    const char *group;       /* where a generated number is put */
    const char *stat;        /* the stats / records key */
} ENT[E_COUNT] = {
    [E_BPC] = {"BPC", "BPCNUM", "BPC0_1", "customers"},
    [E_SOH] = {"SOH", "SOHNUM", "SOH0_1", "sales_orders"},
    [E_PAY] = {"PAY", "NUM", "PAY0_1", "payments"},
    [E_GACC] = {"GACC", "NUM", "GACC0_1", "journals"},
};

enum op { OP_SAVE, OP_READ, OP_QUERY, OP_MODIFY, OP_RUN, OP_OTHER, OP_COUNT };
static const char *const OP_NAME[OP_COUNT] = {"save", "read", "query", "modify", "run", "other"};

struct sagex3 {
    unsigned magic;       /* SX3_MAGIC */
    pthread_mutex_t lock; /* guards everything below the settings */
    /* settings (immutable after create) */
    char username[TEXT_MAX], password[TEXT_MAX], pool_alias[TEXT_MAX], currency[4];
    json_t *items, *sites, *accounts, *payment_types; /* arrays of strings */
    json_t *stock_initial;                            /* item -> whole units */
    json_t *aliases;                                  /* site public name -> standard one */
    char closed_before[DATE_LEN + 1];                 /* YYYYMMDD; "" = every period open */
    int port;
    /* data */
    json_t *records[E_COUNT]; /* arrays of {"number","reference","record",..} */
    json_t *by_key[E_COUNT];  /* number -> record (borrowed from records) */
    json_t *by_ref[E_COUNT];  /* reference -> first record's number */
    json_t *allocations;      /* [{"ALLNUM","SOHNUM","lines"}] */
    json_t *stock;            /* item -> integer at DEC_SCALE */
    unsigned seq[E_COUNT], alloc_seq;
    /* counters */
    unsigned long requests, faults, refusals, duplicate_references, duplicate_keys, modifications,
        unauthorized;
    unsigned long ops[OP_COUNT];
    unsigned long responses[600];
    /* injections: the next n SOAP calls */
    unsigned inject_fault, inject_busy, inject_drop, inject_after;
    char fault_string[TEXT_MAX];
    struct pb_http_route routes[8];
};

/* One SOAP call being answered. */
struct call {
    struct sagex3 *x;
    enum op op;
    char op_name[32]; /* as sent: save, read, ... */
    char public_name[64];
    json_t *keys;   /* [[key, value], ...] */
    json_t *object; /* objectXml / inputXml in mirror form, or NULL */
    long list_size;
    /* answer */
    int status; /* 1 or 0 */
    int busy;
    json_t *messages;     /* [{"type","message"}] */
    json_t *result;       /* mirror form, or NULL */
    json_t *result_lines; /* query: array of flat lines, or NULL */
};

/* ==== small helpers ======================================================= */

static int in_list(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return 1;
    }
    return 0;
}

static void msg(struct call *c, int type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void msg(struct call *c, int type, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    json_array_append_new(c->messages, json_pack("{s:i,s:s}", "type", type, "message", text));
    if (type == 3)
        c->status = 0;
}

/* The value of field `name` anywhere in a mirror object: groups first, then
 * table lines (first line that has it). NULL when absent or empty. */
static const char *field_any(const json_t *obj, const char *name)
{
    const char *gid;
    json_t *g;
    json_object_foreach((json_t *)obj, gid, g)
    {
        const char *s = json_is_object(g) ? json_string_value(json_object_get(g, name)) : NULL;
        if (s && s[0])
            return s;
    }
    json_object_foreach((json_t *)obj, gid, g)
    {
        size_t i;
        json_t *line;
        if (!json_is_array(g))
            continue;
        json_array_foreach(g, i, line)
        {
            const char *s = json_string_value(json_object_get(line, name));
            if (s && s[0])
                return s;
        }
    }
    return NULL;
}

/* Set a field in the group that already has it, else in `group`. */
static void field_set(json_t *obj, const char *group, const char *name, const char *value)
{
    const char *gid;
    json_t *g;
    json_object_foreach(obj, gid, g)
    {
        if (json_is_object(g) && json_object_get(g, name)) {
            json_object_set_new(g, name, json_string(value));
            return;
        }
    }
    g = json_object_get(obj, group);
    if (!json_is_object(g)) {
        g = json_object();
        json_object_set_new(obj, group, g);
    }
    json_object_set_new(g, name, json_string(value));
}

/* Exact decimal -> int64 at DEC_SCALE. 0 ok, -1 not a decimal (or too many
 * decimals), -2 out of range. */
static int dec_parse(const char *s, int64_t *out)
{
    int neg = 0, frac = -1;
    int64_t v = 0;
    if (!s || !*s)
        return -1;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    if (!(*s >= '0' && *s <= '9'))
        return -1;
    for (; *s; s++) {
        if (*s == '.' && frac < 0) {
            frac = 0;
            if (!(s[1] >= '0' && s[1] <= '9'))
                return -1;
            continue;
        }
        if (!(*s >= '0' && *s <= '9'))
            return -1;
        if (frac >= 0 && ++frac > DEC_SCALE) {
            if (*s != '0')
                return -1;
            frac = DEC_SCALE;
            continue;
        }
        if (v > (INT64_MAX - 9) / 10)
            return -2;
        v = v * 10 + (*s - '0');
    }
    for (int i = frac < 0 ? 0 : frac; i < DEC_SCALE; i++) {
        if (v > INT64_MAX / 10)
            return -2;
        v *= 10;
    }
    *out = neg ? -v : v;
    return 0;
}

static void dec_format(int64_t v, char *buf, size_t len)
{
    uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    uint64_t p = 1;
    int keep = DEC_SCALE;
    for (int i = 0; i < DEC_SCALE; i++)
        p *= 10;
    while (keep > 2 && (a % p) % 10 == 0 && a % 10 == 0) {
        a /= 10;
        p /= 10;
        keep--;
    }
    snprintf(buf, len, "%s%" PRIu64 ".%0*" PRIu64, v < 0 ? "-" : "", a / p, keep, a % p);
}

/* ==== XML: mirror <-> PARAM/RESULT ========================================= */

static xmlDocPtr parse_xml(const char *text, size_t len, char *why, size_t why_len)
{
    xmlParserCtxtPtr p = xmlNewParserCtxt();
    xmlDocPtr d;
    why[0] = '\0';
    if (!p || len > (size_t)INT32_MAX) {
        snprintf(why, why_len, "cannot parse");
        if (p)
            xmlFreeParserCtxt(p);
        return NULL;
    }
    d = xmlCtxtReadMemory(p, text, (int)len, NULL, NULL,
                          XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING |
                              XML_PARSE_NOCDATA);
    if (!d) {
        xmlErrorPtr e = xmlCtxtGetLastError(p);
        size_t n;
        snprintf(why, why_len, "line %d: %s", e ? e->line : 0,
                 e && e->message ? e->message : "not well-formed");
        n = strlen(why);
        while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == ' '))
            why[--n] = '\0';
    } else if (d->intSubset || !xmlDocGetRootElement(d)) {
        snprintf(why, why_len, d->intSubset ? "a DTD is not accepted" : "no root element");
        xmlFreeDoc(d);
        d = NULL;
    }
    xmlFreeParserCtxt(p);
    return d;
}

static const char *lname(const xmlNode *n)
{
    return n && n->type == XML_ELEMENT_NODE ? (const char *)n->name : "";
}

static xmlNode *child(const xmlNode *parent, const char *name)
{
    for (xmlNode *k = parent ? parent->children : NULL; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && (!name || strcmp((const char *)k->name, name) == 0))
            return k;
    return NULL;
}

/* Text content, trimmed when `trim`; malloc'd. */
static char *text_of(const xmlNode *n, int trim)
{
    xmlChar *raw = n ? xmlNodeGetContent(n) : NULL;
    const char *s = raw ? (const char *)raw : "";
    size_t len;
    char *out;
    if (trim)
        while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')
            s++;
    len = strlen(s);
    if (trim)
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\n' || s[len - 1] == '\r' ||
                       s[len - 1] == '\t'))
            len--;
    out = strndup(s, len);
    if (raw)
        xmlFree(raw);
    return out;
}

static char *attr_of(const xmlNode *n, const char *name)
{
    xmlChar *v = xmlGetProp(n, BAD_CAST name);
    char *out = v ? strdup((const char *)v) : NULL;
    if (v)
        xmlFree(v);
    return out;
}

static json_t *fields_of(const xmlNode *parent)
{
    json_t *o = json_object();
    for (xmlNode *k = parent->children; o && k; k = k->next) {
        char *name;
        if (strcmp(lname(k), "FLD") != 0 && strcmp(lname(k), "LST") != 0)
            continue;
        if (!(name = attr_of(k, "NAME")))
            continue;
        if (lname(k)[0] == 'F') {
            char *t = text_of(k, 0);
            json_object_set_new(o, name, json_string(t ? t : ""));
            free(t);
        } else {
            json_t *arr = json_array();
            for (xmlNode *i = k->children; i; i = i->next)
                if (strcmp(lname(i), "ITM") == 0) {
                    char *t = text_of(i, 0);
                    json_array_append_new(arr, json_string(t ? t : ""));
                    free(t);
                }
            json_object_set_new(o, name, arr);
        }
        free(name);
    }
    return o;
}

/* <PARAM> -> mirror form. */
static json_t *param_to_json(const xmlNode *root)
{
    json_t *o = json_object();
    for (xmlNode *k = root->children; o && k; k = k->next) {
        char *id;
        if (strcmp(lname(k), "GRP") != 0 && strcmp(lname(k), "TAB") != 0)
            continue;
        if (!(id = attr_of(k, "ID")))
            continue;
        if (lname(k)[0] == 'G') {
            json_t *f = fields_of(k), *have = json_object_get(o, id);
            if (json_is_object(have))
                json_object_update(have, f), json_decref(f);
            else
                json_object_set_new(o, id, f);
        } else {
            json_t *lines = json_array();
            for (xmlNode *l = k->children; l; l = l->next)
                if (strcmp(lname(l), "LIN") == 0)
                    json_array_append_new(lines, fields_of(l));
            json_object_set_new(o, id, lines);
        }
        free(id);
    }
    return o;
}

static void add_fld(xmlNodePtr parent, const char *name, json_t *v)
{
    if (json_is_array(v)) {
        char n[24];
        size_t i;
        json_t *it;
        xmlNodePtr lst = xmlNewChild(parent, NULL, BAD_CAST "LST", NULL);
        xmlNewProp(lst, BAD_CAST "NAME", BAD_CAST name);
        snprintf(n, sizeof n, "%zu", json_array_size(v));
        xmlNewProp(lst, BAD_CAST "SIZE", BAD_CAST n);
        xmlNewProp(lst, BAD_CAST "TYPE", BAD_CAST "Char");
        json_array_foreach(v, i, it) xmlNewTextChild(
            lst, NULL, BAD_CAST "ITM", BAD_CAST(json_is_string(it) ? json_string_value(it) : ""));
    } else if (json_is_string(v)) {
        xmlNodePtr f = xmlNewTextChild(parent, NULL, BAD_CAST "FLD", BAD_CAST json_string_value(v));
        xmlNewProp(f, BAD_CAST "NAME", BAD_CAST name);
        xmlNewProp(f, BAD_CAST "TYPE", BAD_CAST "Char");
    }
}

/* Serialise a libxml2 node (no declaration); malloc'd. */
static char *dump(xmlNodePtr node, int decl)
{
    xmlBufferPtr buf = xmlBufferCreate();
    xmlSaveCtxtPtr s = buf ? xmlSaveToBuffer(buf, "UTF-8", decl ? 0 : XML_SAVE_NO_DECL) : NULL;
    char *out = NULL;
    if (s) {
        if (decl)
            xmlSaveDoc(s, node->doc);
        else
            xmlSaveTree(s, node);
        if (xmlSaveClose(s) >= 0 && xmlBufferContent(buf))
            out = strdup((const char *)xmlBufferContent(buf));
    }
    if (buf)
        xmlBufferFree(buf);
    return out;
}

/* mirror form (or query lines) -> "<RESULT>...</RESULT>" text; malloc'd. */
static char *result_xml(const json_t *mirror, const json_t *lines)
{
    xmlDocPtr d = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr root = xmlNewNode(NULL, BAD_CAST "RESULT");
    const char *gid, *name;
    json_t *g, *v;
    char *out;
    char n[24];

    xmlDocSetRootElement(d, root);
    json_object_foreach((json_t *)mirror, gid, g)
    {
        if (json_is_object(g)) {
            xmlNodePtr grp = xmlNewChild(root, NULL, BAD_CAST "GRP", NULL);
            xmlNewProp(grp, BAD_CAST "ID", BAD_CAST gid);
            json_object_foreach(g, name, v) add_fld(grp, name, v);
        } else if (json_is_array(g)) {
            size_t i;
            json_t *line;
            xmlNodePtr tab = xmlNewChild(root, NULL, BAD_CAST "TAB", NULL);
            xmlNewProp(tab, BAD_CAST "ID", BAD_CAST gid);
            snprintf(n, sizeof n, "%zu", json_array_size(g));
            xmlNewProp(tab, BAD_CAST "SIZE", BAD_CAST n);
            json_array_foreach(g, i, line)
            {
                xmlNodePtr lin = xmlNewChild(tab, NULL, BAD_CAST "LIN", NULL);
                snprintf(n, sizeof n, "%zu", i + 1);
                xmlNewProp(lin, BAD_CAST "NUM", BAD_CAST n);
                json_object_foreach(line, name, v) add_fld(lin, name, v);
            }
        }
    }
    if (lines) {
        size_t i;
        json_t *line;
        json_array_foreach((json_t *)lines, i, line)
        {
            xmlNodePtr lin = xmlNewChild(root, NULL, BAD_CAST "LIN", NULL);
            snprintf(n, sizeof n, "%zu", i + 1);
            xmlNewProp(lin, BAD_CAST "NUM", BAD_CAST n);
            json_object_foreach(line, name, v) add_fld(lin, name, v);
        }
    }
    out = dump(root, 0);
    xmlFreeDoc(d);
    return out;
}

/* ==== replies ============================================================= */

static void reply_xml(struct pb_http_response *resp, int status, char *text)
{
    if (!text) {
        pb_http_response_set(resp, 500, "text/plain", "out of memory", 13);
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
    snprintf(resp->content_type, sizeof resp->content_type, "text/xml; charset=utf-8");
}

static xmlNodePtr envelope(xmlDocPtr d, xmlNsPtr *wss)
{
    xmlNodePtr env = xmlNewNode(NULL, BAD_CAST "Envelope");
    xmlNsPtr soap = xmlNewNs(env, BAD_CAST SOAP_ENV_NS, BAD_CAST "soapenv");
    xmlSetNs(env, soap);
    xmlNewNs(env, BAD_CAST "http://www.w3.org/2001/XMLSchema", BAD_CAST "xsd");
    xmlNewNs(env, BAD_CAST "http://www.w3.org/2001/XMLSchema-instance", BAD_CAST "xsi");
    if (wss)
        *wss = xmlNewNs(env, BAD_CAST WSS_NS, BAD_CAST "wss");
    xmlDocSetRootElement(d, env);
    return xmlNewChild(env, soap, BAD_CAST "Body", NULL);
}

/* A child element in no namespace (xmlNewChild would inherit the parent's),
 * with `text` as an escaped text node. */
static xmlNodePtr plain(xmlNodePtr parent, const char *name, const char *text)
{
    xmlNodePtr n = xmlNewDocNode(parent->doc, NULL, BAD_CAST name, NULL);
    if (text && text[0])
        xmlAddChild(n, xmlNewDocText(parent->doc, BAD_CAST text));
    xmlAddChild(parent, n);
    return n;
}

static void reply_fault(struct pb_http_response *resp, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reply_fault(struct pb_http_response *resp, const char *code, const char *fmt, ...)
{
    xmlDocPtr d = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr body = envelope(d, NULL);
    xmlNodePtr fault = xmlNewChild(body, body->ns, BAD_CAST "Fault", NULL);
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    plain(fault, "faultcode", code);
    plain(fault, "faultstring", text);
    reply_xml(resp, 500, dump(xmlDocGetRootElement(d), 1));
    xmlFreeDoc(d);
}

static void reply_result(struct pb_http_response *resp, struct call *c)
{
    xmlDocPtr d = xmlNewDoc(BAD_CAST "1.0");
    xmlNsPtr wss;
    xmlNodePtr body = envelope(d, &wss), op, ret, msgs, ti;
    char name[64], *rx = NULL;
    size_t i;
    json_t *m;

    snprintf(name, sizeof name, "%sResponse", c->op_name);
    op = xmlNewChild(body, wss, BAD_CAST name, NULL);
    snprintf(name, sizeof name, "%sReturn", c->op_name);
    ret = plain(op, name, NULL);
    msgs = plain(ret, "messages", NULL);
    json_array_foreach(c->messages, i, m)
    {
        char type[8];
        xmlNodePtr one = plain(msgs, "messages", NULL);
        snprintf(type, sizeof type, "%d", (int)json_integer_value(json_object_get(m, "type")));
        plain(one, "message", json_string_value(json_object_get(m, "message")));
        plain(one, "type", type);
    }
    if (c->status == 1 && (c->result || c->result_lines))
        rx = result_xml(c->result, c->result_lines);
    if (rx) {
        /* CDATA as X3 sends it; libxml2 splits a "]]>" inside into two sections */
        xmlNodePtr r = plain(ret, "resultXml", NULL);
        xmlAddChild(r, xmlNewCDataBlock(d, BAD_CAST rx, (int)strlen(rx)));
        free(rx);
    } else {
        plain(ret, "resultXml", NULL);
    }
    plain(ret, "status", c->status ? "1" : "0");
    ti = plain(ret, "technicalInfos", NULL);
    plain(ti, "busy", c->busy ? "true" : "false");
    plain(ti, "changeLanguage", "false");
    plain(ti, "changeUserId", "false");
    plain(ti, "flushAdx", "false");
    plain(ti, "poolEntryIdx", "0");
    plain(ti, "totalDuration", "1");
    reply_xml(resp, 200, dump(xmlDocGetRootElement(d), 1));
    xmlFreeDoc(d);
}

static void reply_json(struct pb_http_response *resp, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        pb_http_response_error(resp, 500, "internal", "out of memory");
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
}

/* ==== records ============================================================== */

static json_t *record_by_key(struct sagex3 *x, enum entity e, const char *key)
{
    return key ? json_object_get(x->by_key[e], key) : NULL;
}

static const char *record_ref(enum entity e, const json_t *obj)
{
    if (e == E_SOH) {
        const char *r = field_any(obj, "CUSORDREF");
        return r ? r : field_any(obj, "REFLOT");
    }
    if (e == E_PAY || e == E_GACC)
        return field_any(obj, "REF");
    return NULL;
}

/* Store a new record (under the lock). Takes `obj`; `number_in` may point
 * into obj (it is copied before obj changes). */
static json_t *record_add(struct sagex3 *x, enum entity e, const char *number_in, json_t *obj)
{
    char number[TEXT_MAX];
    const char *ref;
    json_t *rec;
    snprintf(number, sizeof number, "%s", number_in);
    field_set(obj, ENT[e].group, ENT[e].key_field, number);
    ref = record_ref(e, obj);
    rec = json_pack("{s:s,s:s?,s:o}", "number", number, "reference", ref, "record", obj);
    if (!rec)
        return NULL;
    if (ref && ref[0]) {
        if (json_object_get(x->by_ref[e], ref))
            x->duplicate_references++;
        else
            json_object_set_new(x->by_ref[e], ref, json_string(number));
    }
    json_array_append_new(x->records[e], rec);
    json_object_set(x->by_key[e], number, rec);
    return rec;
}

/* Flat line of a record's header fields, for a query. */
static json_t *header_line(const json_t *obj)
{
    json_t *line = json_object(), *g, *v;
    const char *gid, *name;
    json_object_foreach((json_t *)obj, gid, g)
    {
        if (!json_is_object(g))
            continue;
        json_object_foreach(g, name, v) if (json_is_string(v) && !json_object_get(line, name))
            json_object_set(line, name, v);
    }
    return line;
}

/* ==== the operations ======================================================= */

static const char *key_value(const struct call *c, const char *key)
{
    size_t i;
    json_t *kv;
    json_array_foreach(c->keys, i, kv)
    {
        if (strcmp(json_string_value(json_array_get(kv, 0)), key) == 0)
            return json_string_value(json_array_get(kv, 1));
    }
    return NULL;
}

static int check_decimal(struct call *c, const char *name, const char *text, int positive,
                         int64_t *out)
{
    int64_t v = 0;
    int r = dec_parse(text, &v);
    if (r == -2) {
        msg(c, 3, "%s %s : out of range", name, text);
        return 0;
    }
    if (r) {
        msg(c, 3, "%s %s : not a decimal number (at most %d decimals)", name, text, DEC_SCALE);
        return 0;
    }
    if ((positive && v <= 0) || v < 0) {
        msg(c, 3, "%s %s : must be greater than %s", name, text, positive ? "0" : "or equal to 0");
        return 0;
    }
    if (out)
        *out = v;
    return 1;
}

/* The table of an object whose lines carry `field`. */
static json_t *table_with(const json_t *obj, const char *field)
{
    const char *gid;
    json_t *g;
    json_object_foreach((json_t *)obj, gid, g)
    {
        if (json_is_array(g) && json_array_size(g) > 0 &&
            json_object_get(json_array_get(g, 0), field))
            return g;
    }
    return NULL;
}

/* Every field named `name` in groups and lines (an ACC anywhere). */
static int each_field(const json_t *obj, const char *name, int (*fn)(struct call *, const char *),
                      struct call *c)
{
    const char *gid;
    json_t *g;
    json_object_foreach((json_t *)obj, gid, g)
    {
        if (json_is_object(g)) {
            const char *s = json_string_value(json_object_get(g, name));
            if (s && s[0] && !fn(c, s))
                return 0;
        } else if (json_is_array(g)) {
            size_t i;
            json_t *line;
            json_array_foreach(g, i, line)
            {
                const char *s = json_string_value(json_object_get(line, name));
                if (s && s[0] && !fn(c, s))
                    return 0;
            }
        }
    }
    return 1;
}

static int account_ok(struct call *c, const char *acc)
{
    if (in_list(c->x->accounts, acc))
        return 1;
    msg(c, 3, "Account %s : invalid", acc);
    return 0;
}

static void save_bpc(struct call *c, json_t *obj)
{
    struct sagex3 *x = c->x;
    const char *num = field_any(obj, "BPCNUM");
    char gen[32];
    json_t *rec;

    if (!field_any(obj, "BPCNAM")) {
        msg(c, 3, "BPCNAM : mandatory field");
        return;
    }
    if (num && strlen(num) > BPCNUM_MAX) {
        msg(c, 3, "BPCNUM %s : too long (%d characters at most)", num, BPCNUM_MAX);
        return;
    }
    if (num && record_by_key(x, E_BPC, num)) {
        x->duplicate_keys++;
        msg(c, 3, "BPCNUM %s : record already exists", num);
        return;
    }
    if (!num) {
        do
            snprintf(gen, sizeof gen, "C%06u", ++x->seq[E_BPC]);
        while (record_by_key(x, E_BPC, gen));
        num = gen;
    }
    rec = record_add(x, E_BPC, num, json_incref(obj));
    c->result = json_deep_copy(json_object_get(rec, "record"));
}

static void save_soh(struct call *c, json_t *obj)
{
    struct sagex3 *x = c->x;
    const char *site = field_any(obj, "SALFCY"), *cust = field_any(obj, "BPCORD");
    const char *typ = field_any(obj, "SOHTYP"), *num = field_any(obj, "SOHNUM");
    json_t *lines = table_with(obj, "ITMREF"), *line, *rec;
    char gen[64];
    size_t i;

    if (!site)
        msg(c, 3, "SALFCY : mandatory field");
    else if (!in_list(x->sites, site))
        msg(c, 3, "SALFCY %s : record does not exist", site);
    if (!cust)
        msg(c, 3, "BPCORD : mandatory field");
    else if (!record_by_key(x, E_BPC, cust))
        msg(c, 3, "BPCORD %s : record does not exist", cust);
    if (!lines)
        msg(c, 3, "The order has no lines (a table of ITMREF, QTY, GROPRI)");
    json_array_foreach(lines, i, line)
    {
        const char *itm = json_string_value(json_object_get(line, "ITMREF"));
        const char *qty = json_string_value(json_object_get(line, "QTY"));
        const char *pri = json_string_value(json_object_get(line, "GROPRI"));
        if (!itm || !itm[0])
            msg(c, 3, "Line %zu: ITMREF : mandatory field", i + 1);
        else if (!in_list(x->items, itm))
            msg(c, 3, "ITMREF %s : record does not exist", itm);
        if (!qty)
            msg(c, 3, "Line %zu: QTY : mandatory field", i + 1);
        else
            check_decimal(c, "QTY", qty, 1, NULL);
        if (pri)
            check_decimal(c, "GROPRI", pri, 0, NULL);
    }
    if (num && record_by_key(x, E_SOH, num))
        msg(c, 3, "SOHNUM %s : record already exists", num);
    if (c->status == 0)
        return;
    if (!typ) {
        typ = "SON";
        field_set(obj, ENT[E_SOH].group, "SOHTYP", typ);
    }
    if (!num) {
        do
            snprintf(gen, sizeof gen, "%.5s%.16s-%06u", typ, site, ++x->seq[E_SOH]);
        while (record_by_key(x, E_SOH, gen));
        num = gen;
    }
    rec = record_add(x, E_SOH, num, json_incref(obj));
    json_object_set_new(rec, "payments", json_array());
    c->result = json_deep_copy(json_object_get(rec, "record"));
}

static int bpc_exists(struct call *c, const char *bpc)
{
    if (record_by_key(c->x, E_BPC, bpc))
        return 1;
    msg(c, 3, "BPR %s : record does not exist", bpc);
    return 0;
}

/* 1 when `s` is YYYYMMDD and a real date (1900..9999). */
static int valid_date(const char *s)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, m, d;
    if (strlen(s) != DATE_LEN)
        return 0;
    for (int i = 0; i < DATE_LEN; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    m = (s[4] - '0') * 10 + (s[5] - '0');
    d = (s[6] - '0') * 10 + (s[7] - '0');
    if (y < 1900 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return 0;
    return !(m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
}

/* The accounting date of a PAY or GACC: checked, or today's when absent. */
static void accounting_date(struct call *c, json_t *obj, const char *group)
{
    const char *d = field_any(obj, "ACCDAT");
    char today[16];
    if (!d) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(today, sizeof today, "%Y%m%d", &tm);
        field_set(obj, group, "ACCDAT", today);
        d = today;
    } else if (!valid_date(d)) {
        msg(c, 3, "ACCDAT %.32s : invalid date (YYYYMMDD)", d);
        return;
    }
    if (c->x->closed_before[0] && strcmp(d, c->x->closed_before) < 0)
        msg(c, 3, "Accounting date %s : period closed (the periods before %s are closed)", d,
            c->x->closed_before);
}

static void save_pay(struct call *c, json_t *obj)
{
    struct sagex3 *x = c->x;
    const char *typ = field_any(obj, "PAYTYP"), *amt = field_any(obj, "AMTCUR");
    const char *order = field_any(obj, "SOHNUM"), *site = field_any(obj, "FCY");
    json_t *soh = NULL, *rec;
    char gen[32];

    if (!order)
        order = field_any(obj, "VCRNUM");
    if (!typ)
        msg(c, 3, "PAYTYP : mandatory field");
    else if (!in_list(x->payment_types, typ))
        msg(c, 3, "PAYTYP %s : record does not exist", typ);
    each_field(obj, "ACC", account_ok, c);
    each_field(obj, "BPR", bpc_exists, c);
    if (site && !in_list(x->sites, site))
        msg(c, 3, "FCY %s : record does not exist", site);
    if (order && !(soh = record_by_key(x, E_SOH, order)))
        msg(c, 3, "Order %s : record does not exist", order);
    if (!amt)
        msg(c, 3, "AMTCUR : mandatory field");
    else
        check_decimal(c, "AMTCUR", amt, 1, NULL);
    accounting_date(c, obj, ENT[E_PAY].group);
    if (c->status == 0)
        return;
    do
        snprintf(gen, sizeof gen, "PAY%07u", ++x->seq[E_PAY]);
    while (record_by_key(x, E_PAY, gen));
    rec = record_add(x, E_PAY, gen, json_incref(obj));
    if (soh) {
        json_object_set_new(rec, "order", json_string(order));
        json_array_append_new(json_object_get(soh, "payments"), json_string(gen));
    }
    c->result = json_deep_copy(json_object_get(rec, "record"));
}

static void save_gacc(struct call *c, json_t *obj)
{
    struct sagex3 *x = c->x;
    json_t *lines = table_with(obj, "ACC"), *line, *rec;
    int64_t deb = 0, cdt = 0, v;
    char gen[32], a[48], b[48];
    size_t i;

    if (!lines) {
        msg(c, 3, "The entry has no lines (a table of ACC, DEB, CDT)");
        return;
    }
    json_array_foreach(lines, i, line)
    {
        const char *acc = json_string_value(json_object_get(line, "ACC"));
        const char *d = json_string_value(json_object_get(line, "DEB"));
        const char *k = json_string_value(json_object_get(line, "CDT"));
        if (!acc || !acc[0])
            msg(c, 3, "Line %zu: ACC : mandatory field", i + 1);
        else
            account_ok(c, acc);
        if (!d && !k)
            msg(c, 3, "Line %zu: DEB or CDT : mandatory field", i + 1);
        if (d && d[0] && check_decimal(c, "DEB", d, 0, &v))
            deb += v;
        if (k && k[0] && check_decimal(c, "CDT", k, 0, &v))
            cdt += v;
    }
    if (c->status && deb != cdt) {
        dec_format(deb, a, sizeof a);
        dec_format(cdt, b, sizeof b);
        msg(c, 3, "Entry not balanced: debit %s, credit %s", a, b);
    }
    accounting_date(c, obj, ENT[E_GACC].group);
    if (c->status == 0)
        return;
    do
        snprintf(gen, sizeof gen, "JNL%07u", ++x->seq[E_GACC]);
    while (record_by_key(x, E_GACC, gen));
    rec = record_add(x, E_GACC, gen, json_incref(obj));
    c->result = json_deep_copy(json_object_get(rec, "record"));
}

static void op_read(struct call *c, enum entity e)
{
    const char *key = key_value(c, ENT[e].key_field);
    json_t *rec;
    if (!key) {
        msg(c, 3, "objectKeys: %s : mandatory key", ENT[e].key_field);
        return;
    }
    rec = record_by_key(c->x, e, key);
    if (!rec) {
        msg(c, 3, "%s %s : record does not exist", ENT[e].key_field, key);
        return;
    }
    c->result = json_deep_copy(json_object_get(rec, "record"));
}

/* One objectKeys criterion: ">=v", "<=v", ">v", "<v" compare as text,
 * anything else must be equal. */
static int criterion_holds(const char *have, const char *want)
{
    if (strncmp(want, ">=", 2) == 0)
        return strcmp(have, want + 2) >= 0;
    if (strncmp(want, "<=", 2) == 0)
        return strcmp(have, want + 2) <= 0;
    if (want[0] == '>')
        return strcmp(have, want + 1) > 0;
    if (want[0] == '<')
        return strcmp(have, want + 1) < 0;
    return strcmp(have, want) == 0;
}

static void op_query(struct call *c, enum entity e)
{
    size_t i;
    json_t *rec;
    c->result_lines = json_array();
    json_array_foreach(c->x->records[e], i, rec)
    {
        json_t *obj = json_object_get(rec, "record"), *kv;
        size_t k;
        int ok = 1;
        if ((long)json_array_size(c->result_lines) >= c->list_size)
            break;
        json_array_foreach(c->keys, k, kv)
        {
            const char *have = field_any(obj, json_string_value(json_array_get(kv, 0)));
            if (!have || !criterion_holds(have, json_string_value(json_array_get(kv, 1))))
                ok = 0;
        }
        if (ok)
            json_array_append_new(c->result_lines, header_line(obj));
    }
}

static void op_modify(struct call *c, enum entity e)
{
    const char *key = key_value(c, ENT[e].key_field), *gid;
    json_t *rec, *obj, *g;
    if (!key) {
        msg(c, 3, "objectKeys: %s : mandatory key", ENT[e].key_field);
        return;
    }
    if (!(rec = record_by_key(c->x, e, key))) {
        msg(c, 3, "%s %s : record does not exist", ENT[e].key_field, key);
        return;
    }
    if (!c->object) {
        msg(c, 3, "objectXml : mandatory");
        return;
    }
    if (e == E_BPC && json_object_get(json_object_get(c->object, "BPC0_1"), "BPCNAM") &&
        !field_any(c->object, "BPCNAM")) {
        msg(c, 3, "BPCNAM : mandatory field");
        return;
    }
    {
        const char *nk = field_any(c->object, ENT[e].key_field);
        if (nk && strcmp(nk, key) != 0) {
            msg(c, 3, "%s : cannot be modified", ENT[e].key_field);
            return;
        }
    }
    obj = json_object_get(rec, "record");
    json_object_foreach(c->object, gid, g)
    {
        json_t *have = json_object_get(obj, gid);
        if (json_is_object(g) && json_is_object(have))
            json_object_update(have, g);
        else
            json_object_set(obj, gid, g);
    }
    c->x->modifications++;
    c->result = json_deep_copy(obj);
}

static void op_allocate(struct call *c)
{
    struct sagex3 *x = c->x;
    const char *order = c->object ? field_any(c->object, "SOHNUM") : NULL;
    json_t *soh, *lines, *line, *alloc, *alines;
    const char *done;
    char num[32];
    size_t i;

    if (!order) {
        msg(c, 3, "SOHNUM : mandatory field");
        return;
    }
    if (!(soh = record_by_key(x, E_SOH, order))) {
        msg(c, 3, "SOHNUM %s : record does not exist", order);
        return;
    }
    done = json_string_value(json_object_get(soh, "allocation"));
    if (done) {
        msg(c, 1, "Order %s : already allocated (%s)", order, done);
        c->result =
            json_pack("{s:{s:s,s:s,s:s}}", "GRP2", "SOHNUM", order, "ALLNUM", done, "ALLSTA", "2");
        return;
    }
    lines = table_with(json_object_get(soh, "record"), "ITMREF");
    /* all or nothing: check every line first */
    json_array_foreach(lines, i, line)
    {
        const char *itm = json_string_value(json_object_get(line, "ITMREF"));
        int64_t need = 0, have = json_integer_value(json_object_get(x->stock, itm));
        dec_parse(json_string_value(json_object_get(line, "QTY")), &need);
        if (need > have) {
            char a[48], b[48];
            dec_format(have, a, sizeof a);
            dec_format(need, b, sizeof b);
            msg(c, 3, "ITMREF %s : insufficient stock at %s (available %s, requested %s)", itm,
                field_any(json_object_get(soh, "record"), "SALFCY"), a, b);
        }
    }
    if (c->status == 0)
        return;
    alines = json_array();
    json_array_foreach(lines, i, line)
    {
        const char *itm = json_string_value(json_object_get(line, "ITMREF"));
        int64_t need = 0, have = json_integer_value(json_object_get(x->stock, itm));
        dec_parse(json_string_value(json_object_get(line, "QTY")), &need);
        json_object_set_new(x->stock, itm, json_integer(have - need));
        json_array_append_new(
            alines, json_pack("{s:s,s:O}", "ITMREF", itm, "QTY", json_object_get(line, "QTY")));
    }
    snprintf(num, sizeof num, "ALL%07u", ++x->alloc_seq);
    alloc = json_pack("{s:s,s:s,s:o}", "ALLNUM", num, "SOHNUM", order, "lines", alines);
    json_array_append_new(x->allocations, alloc);
    json_object_set_new(soh, "allocation", json_string(num));
    c->result =
        json_pack("{s:{s:s,s:s,s:s}}", "GRP2", "SOHNUM", order, "ALLNUM", num, "ALLSTA", "2");
}

/* Resolve a public name: an entity, "ALASTO" (-2), or unknown (-1). */
static int resolve(const struct sagex3 *x, const char *public_name)
{
    const char *std = json_string_value(json_object_get(x->aliases, public_name));
    if (!std)
        std = public_name;
    if (strcmp(std, "ALASTO") == 0)
        return -2;
    for (int e = 0; e < E_COUNT; e++)
        if (strcmp(std, ENT[e].public_name) == 0)
            return e;
    return -1;
}

/* Run the operation under the lock. */
static void execute(struct call *c)
{
    struct sagex3 *x = c->x;
    int e = resolve(x, c->public_name);

    if (e == -1) {
        msg(c, 3, "Web service %s : not published", c->public_name);
        return;
    }
    if (c->op == OP_OTHER) {
        msg(c, 3, "%s : not emulated by the paybridge sandbox", c->op_name);
        return;
    }
    if (e == -2) {
        if (c->op != OP_RUN) {
            msg(c, 3, "%s is a sub-program: call it with run", c->public_name);
            return;
        }
        op_allocate(c);
        return;
    }
    switch (c->op) {
    case OP_SAVE:
        if (!c->object) {
            msg(c, 3, "objectXml : mandatory");
            return;
        }
        if (e == E_BPC)
            save_bpc(c, c->object);
        else if (e == E_SOH)
            save_soh(c, c->object);
        else if (e == E_PAY)
            save_pay(c, c->object);
        else
            save_gacc(c, c->object);
        break;
    case OP_READ:
        op_read(c, (enum entity)e);
        break;
    case OP_QUERY:
        op_query(c, (enum entity)e);
        break;
    case OP_MODIFY:
        op_modify(c, (enum entity)e);
        break;
    case OP_RUN:
        msg(c, 3, "%s is an object: run takes a sub-program", c->public_name);
        break;
    default:
        break;
    }
}

/* ==== the SOAP endpoint ===================================================== */

static int authorized(const struct sagex3 *x, const struct pb_http_request *req)
{
    const char *h = pb_http_header(req, "Authorization");
    unsigned char *dec = NULL;
    size_t len = 0, ulen = strlen(x->username), plen = strlen(x->password);
    int ok;
    if (!h || strncasecmp(h, "Basic ", 6) != 0)
        return 0;
    h += 6;
    while (*h == ' ')
        h++;
    if (pb_base64_decode(h, strlen(h), &dec, &len, NULL) != PB_OK)
        return 0;
    ok = len == ulen + 1 + plen && memcmp(dec, x->username, ulen) == 0 && dec[ulen] == ':' &&
         pb_ct_equal(dec + ulen + 1, x->password, plen);
    free(dec);
    return ok;
}

static void reply_wsdl(struct sagex3 *x, struct pb_http_response *resp)
{
    static const char *const ops[] = {"save", "read", "query", "modify", "run", "delete", NULL};
    char buf[8192];
    size_t used = 0;
    used += (size_t)snprintf(buf + used, sizeof buf - used,
                             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                             "<wsdl:definitions targetNamespace=\"" WSS_NS "\" xmlns:wss=\"" WSS_NS
                             "\"\n"
                             " xmlns:wsdl=\"http://schemas.xmlsoap.org/wsdl/\""
                             " xmlns:wsdlsoap=\"http://schemas.xmlsoap.org/wsdl/soap/\"\n"
                             " xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n"
                             " <wsdl:portType name=\"CAdxWebServiceXmlCC\">\n");
    for (int i = 0; ops[i]; i++)
        used +=
            (size_t)snprintf(buf + used, sizeof buf - used,
                             "  <wsdl:operation name=\"%s\"><wsdl:input message=\"wss:%sRequest\"/>"
                             "<wsdl:output message=\"wss:%sResponse\"/></wsdl:operation>\n",
                             ops[i], ops[i], ops[i]);
    used += (size_t)snprintf(
        buf + used, sizeof buf - used,
        " </wsdl:portType>\n"
        " <wsdl:binding name=\"CAdxWebServiceXmlCCSoapBinding\" type=\"wss:CAdxWebServiceXmlCC\">\n"
        "  <wsdlsoap:binding style=\"rpc\" transport=\"http://schemas.xmlsoap.org/soap/http\"/>\n"
        " </wsdl:binding>\n"
        " <wsdl:service name=\"CAdxWebServiceXmlCCService\">\n"
        "  <wsdl:port binding=\"wss:CAdxWebServiceXmlCCSoapBinding\" "
        "name=\"CAdxWebServiceXmlCC\">\n"
        "   <wsdlsoap:address location=\"http://127.0.0.1:%d" SOAP_PATH "\"/>\n"
        "  </wsdl:port>\n"
        " </wsdl:service>\n"
        "</wsdl:definitions>\n",
        x->port);
    if (used >= sizeof buf)
        used = sizeof buf - 1;
    pb_http_response_set(resp, 200, "text/xml; charset=utf-8", buf, used);
}

static void count(struct sagex3 *x, int status)
{
    pthread_mutex_lock(&x->lock);
    x->requests++;
    if (status >= 100 && status < 600)
        x->responses[status]++;
    pthread_mutex_unlock(&x->lock);
}

/* Parse the envelope into *c; on failure answer a Client Fault and return 0. */
static int read_envelope(struct call *c, const struct pb_http_request *req,
                         struct pb_http_response *resp)
{
    static const struct {
        const char *name;
        enum op op;
    } ops[] = {
        {"save", OP_SAVE},
        {"read", OP_READ},
        {"query", OP_QUERY},
        {"modify", OP_MODIFY},
        {"run", OP_RUN},
        {"delete", OP_OTHER},
        {"getDescription", OP_OTHER},
        {"getDataXmlSchema", OP_OTHER},
        {"actionObject", OP_OTHER},
        {"insertLines", OP_OTHER},
        {"deleteLines", OP_OTHER},
    };
    char why[256];
    xmlDocPtr d = parse_xml(req->body ? req->body : "", req->body_len, why, sizeof why);
    xmlNode *root, *body, *op, *cc, *keys, *objxml;
    char *pool = NULL, *lang = NULL, *pub = NULL, *text = NULL;
    int ok = 0, known = 0;

    if (!d) {
        reply_fault(resp, "soapenv:Client", "Malformed SOAP request: %s", why);
        return 0;
    }
    root = xmlDocGetRootElement(d);
    body = child(root, "Body");
    op = child(body, NULL);
    if (strcmp(lname(root), "Envelope") != 0 || !root->ns ||
        strcmp((const char *)root->ns->href, SOAP_ENV_NS) != 0 || !body) {
        reply_fault(resp, "soapenv:Client",
                    "Not a SOAP 1.1 envelope (expected {" SOAP_ENV_NS "}Envelope with a Body)");
        goto out;
    }
    if (!op || !op->ns || strcmp((const char *)op->ns->href, WSS_NS) != 0) {
        reply_fault(resp, "soapenv:Client",
                    "The Body must hold one operation in the namespace " WSS_NS);
        goto out;
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(lname(op), ops[i].name) == 0) {
            c->op = ops[i].op;
            known = 1;
        }
    if (!known) {
        reply_fault(resp, "soapenv:Client", "No such operation: %.64s", lname(op));
        goto out;
    }
    snprintf(c->op_name, sizeof c->op_name, "%s", lname(op));
    cc = child(op, "callContext");
    pub = text_of(child(op, "publicName"), 1);
    if (!cc || !pub || !pub[0]) {
        reply_fault(resp, "soapenv:Client", "%s: callContext and publicName are mandatory",
                    c->op_name);
        goto out;
    }
    snprintf(c->public_name, sizeof c->public_name, "%s", pub);
    pool = text_of(child(cc, "poolAlias"), 1);
    lang = text_of(child(cc, "codeLang"), 1);
    if (!lang || !lang[0])
        msg(c, 3, "codeLang : mandatory");
    else if (!pool || strcmp(pool, c->x->pool_alias) != 0)
        msg(c, 3, "Pool alias %s : does not exist", pool ? pool : "");
    keys = child(op, "objectKeys");
    for (xmlNode *it = keys ? keys->children : NULL; it; it = it->next) {
        char *k, *v;
        if (it->type != XML_ELEMENT_NODE)
            continue;
        k = text_of(child(it, "key"), 1);
        v = text_of(child(it, "value"), 0);
        if (k && v && k[0])
            json_array_append_new(c->keys, json_pack("[s,s]", k, v));
        free(k);
        free(v);
    }
    {
        char *ls = text_of(child(op, "listSize"), 1);
        c->list_size = ls && ls[0] ? strtol(ls, NULL, 10) : 1;
        if (c->list_size < 1)
            c->list_size = 1;
        if (c->list_size > LIST_SIZE_MAX)
            c->list_size = LIST_SIZE_MAX;
        free(ls);
    }
    objxml = child(op, c->op == OP_RUN ? "inputXml" : "objectXml");
    text = objxml ? text_of(objxml, 1) : NULL;
    if (text && text[0]) {
        xmlDocPtr p = parse_xml(text, strlen(text), why, sizeof why);
        if (!p)
            msg(c, 3, "%s : not well-formed XML (%s)", c->op == OP_RUN ? "inputXml" : "objectXml",
                why);
        else if (strcmp(lname(xmlDocGetRootElement(p)), "PARAM") != 0)
            msg(c, 3, "%s : the root element must be PARAM",
                c->op == OP_RUN ? "inputXml" : "objectXml");
        else
            c->object = param_to_json(xmlDocGetRootElement(p));
        if (p)
            xmlFreeDoc(p);
    }
    ok = 1;
out:
    free(pool);
    free(lang);
    free(pub);
    free(text);
    xmlFreeDoc(d);
    return ok;
}

static enum pb_http_action soap_handler(struct pb_http_request *req, struct pb_http_response *resp,
                                        void *arg)
{
    struct sagex3 *x = arg;
    struct call c;
    unsigned fault = 0, busy = 0, drop = 0;
    char fault_string[TEXT_MAX];

    if (strcmp(req->method, "GET") == 0) {
        reply_wsdl(x, resp);
        count(x, resp->status);
        return PB_HTTP_DONE;
    }
    if (!authorized(x, req)) {
        pthread_mutex_lock(&x->lock);
        x->unauthorized++;
        pthread_mutex_unlock(&x->lock);
        pb_http_response_set(resp, 401, "text/html", "<html><body>401 Unauthorized</body></html>",
                             41);
        pb_http_response_header(resp, "WWW-Authenticate", "Basic realm=\"Sage X3\"");
        count(x, 401);
        return PB_HTTP_DONE;
    }
    memset(&c, 0, sizeof c);
    c.x = x;
    c.status = 1;
    c.messages = json_array();
    c.keys = json_array();
    if (!read_envelope(&c, req, resp)) {
        pthread_mutex_lock(&x->lock);
        x->faults++;
        pthread_mutex_unlock(&x->lock);
        goto done;
    }
    pthread_mutex_lock(&x->lock);
    if (x->inject_after && c.status == 1) {
        x->inject_after--;
        x->ops[c.op]++;
        execute(&c);
    } else if (x->inject_fault) {
        x->inject_fault--;
        fault = 1;
        snprintf(fault_string, sizeof fault_string, "%s", x->fault_string);
        x->faults++;
    } else if (x->inject_busy) {
        x->inject_busy--;
        busy = 1;
    } else if (c.status == 1) {
        if (x->inject_drop) {
            x->inject_drop--;
            drop = 1;
        }
        x->ops[c.op]++;
        execute(&c);
    }
    if (!fault && (busy || c.status == 0))
        x->refusals++;
    pthread_mutex_unlock(&x->lock);
    if (fault) {
        reply_fault(resp, "soapenv:Server", "%s", fault_string);
    } else if (drop) {
        pb_http_response_set(resp, 502, "text/plain", "Bad Gateway", 11);
    } else {
        if (busy) {
            c.busy = 1;
            msg(&c, 3, "No Web Service connection available in pool %s (timeout)", x->pool_alias);
        }
        reply_result(resp, &c);
    }
done:
    json_decref(c.messages);
    json_decref(c.keys);
    json_decref(c.object);
    json_decref(c.result);
    json_decref(c.result_lines);
    count(x, resp->status);
    return PB_HTTP_DONE;
}

/* ==== admin ================================================================= */

static enum pb_http_action stats_handler(struct pb_http_request *req, struct pb_http_response *resp,
                                         void *arg)
{
    struct sagex3 *x = arg;
    json_t *s, *responses = json_object(), *ops = json_object();
    pthread_mutex_lock(&x->lock);
    for (int i = 0; i < 600; i++)
        if (x->responses[i]) {
            char k[8];
            snprintf(k, sizeof k, "%d", i);
            json_object_set_new(responses, k, json_integer((json_int_t)x->responses[i]));
        }
    for (int i = 0; i < OP_COUNT; i++)
        json_object_set_new(ops, OP_NAME[i], json_integer((json_int_t)x->ops[i]));
    s = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:o}", "customers",
                  (json_int_t)json_array_size(x->records[E_BPC]), "sales_orders",
                  (json_int_t)json_array_size(x->records[E_SOH]), "allocations",
                  (json_int_t)json_array_size(x->allocations), "payments",
                  (json_int_t)json_array_size(x->records[E_PAY]), "journals",
                  (json_int_t)json_array_size(x->records[E_GACC]), "duplicate_references",
                  (json_int_t)x->duplicate_references, "duplicate_keys_refused",
                  (json_int_t)x->duplicate_keys, "modifications", (json_int_t)x->modifications,
                  "refusals", (json_int_t)x->refusals, "soap_faults", (json_int_t)x->faults,
                  "unauthorized", (json_int_t)x->unauthorized, "requests", (json_int_t)x->requests,
                  "responses", responses, "operations", ops);
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, s);
    return PB_HTTP_DONE;
}

static enum pb_http_action records_handler(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *arg)
{
    struct sagex3 *x = arg;
    json_t *out = json_object(), *stock = json_object(), *v;
    const char *item;
    pthread_mutex_lock(&x->lock);
    for (int e = 0; e < E_COUNT; e++)
        json_object_set_new(out, ENT[e].stat, json_deep_copy(x->records[e]));
    json_object_set_new(out, "allocations", json_deep_copy(x->allocations));
    json_object_foreach(x->stock, item, v)
    {
        char buf[48];
        dec_format(json_integer_value(v), buf, sizeof buf);
        json_object_set_new(stock, item, json_string(buf));
    }
    json_object_set_new(out, "stock", stock);
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, out);
    return PB_HTTP_DONE;
}

/* Under the lock (or before the server starts). */
static void clear_data(struct sagex3 *x)
{
    const char *item;
    json_t *v;
    for (int e = 0; e < E_COUNT; e++) {
        json_array_clear(x->records[e]);
        json_object_clear(x->by_key[e]);
        json_object_clear(x->by_ref[e]);
        x->seq[e] = 0;
    }
    json_array_clear(x->allocations);
    json_object_clear(x->stock);
    json_object_foreach(x->stock_initial, item, v)
        json_object_set_new(x->stock, item, json_integer(json_integer_value(v) * 10000));
    x->alloc_seq = 0;
    x->requests = x->faults = x->refusals = x->duplicate_references = x->duplicate_keys = 0;
    x->modifications = x->unauthorized = 0;
    memset(x->ops, 0, sizeof x->ops);
    memset(x->responses, 0, sizeof x->responses);
    x->inject_fault = x->inject_busy = x->inject_drop = x->inject_after = 0;
}

static enum pb_http_action reset_handler(struct pb_http_request *req, struct pb_http_response *resp,
                                         void *arg)
{
    struct sagex3 *x = arg;
    pthread_mutex_lock(&x->lock);
    clear_data(x);
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, json_pack("{s:s}", "status", "reset"));
    return PB_HTTP_DONE;
}

static enum pb_http_action inject_handler(struct pb_http_request *req,
                                          struct pb_http_response *resp, void *arg)
{
    struct sagex3 *x = arg;
    json_error_t je;
    json_t *b = json_loadb(req->body ? req->body : "", req->body_len, 0, &je), *v;
    const char *key;
    unsigned n[4] = {0, 0, 0, 0};
    const char *fs = NULL;

    if (!json_is_object(b)) {
        json_decref(b);
        pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object");
        return PB_HTTP_DONE;
    }
    json_object_foreach(b, key, v)
    {
        int slot = strcmp(key, "soap_fault") == 0   ? 0
                   : strcmp(key, "pool_busy") == 0  ? 1
                   : strcmp(key, "drop_reply") == 0 ? 2
                   : strcmp(key, "after") == 0      ? 3
                                                    : -1;
        if (strcmp(key, "fault_string") == 0 && json_is_string(v) &&
            json_string_length(v) < TEXT_MAX) {
            fs = json_string_value(v);
            continue;
        }
        if (slot < 0 || !json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > 1000000) {
            pb_http_response_error(resp, 400, "invalid",
                                   "%s: known keys are soap_fault, pool_busy, drop_reply, after "
                                   "(counts 0..1000000) and fault_string (text)",
                                   key);
            json_decref(b);
            return PB_HTTP_DONE;
        }
        n[slot] = (unsigned)json_integer_value(v);
    }
    pthread_mutex_lock(&x->lock);
    x->inject_fault = n[0];
    x->inject_busy = n[1];
    x->inject_drop = n[2];
    x->inject_after = n[3];
    snprintf(x->fault_string, sizeof x->fault_string, "%s",
             fs ? fs : "Internal error: the X3 process server did not answer");
    pthread_mutex_unlock(&x->lock);
    json_decref(b);
    reply_json(resp, 200,
               json_pack("{s:i,s:i,s:i,s:i}", "soap_fault", n[0], "pool_busy", n[1], "drop_reply",
                         n[2], "after", n[3]));
    return PB_HTTP_DONE;
}

/* ==== life ================================================================== */

static void sagex3_destroy(void *state)
{
    struct sagex3 *x = state;
    if (!x || x->magic != SX3_MAGIC)
        return;
    for (int e = 0; e < E_COUNT; e++) {
        json_decref(x->records[e]);
        json_decref(x->by_key[e]);
        json_decref(x->by_ref[e]);
    }
    json_decref(x->allocations);
    json_decref(x->stock);
    json_decref(x->stock_initial);
    json_decref(x->items);
    json_decref(x->sites);
    json_decref(x->accounts);
    json_decref(x->payment_types);
    json_decref(x->aliases);
    pthread_mutex_destroy(&x->lock);
    x->magic = 0;
    free(x);
}

static enum pb_rc conf_text(json_t *s, const char *key, const char *def, char *out, size_t len,
                            struct pb_err *err)
{
    json_t *v = json_object_get(s, key);
    const char *t = v ? json_string_value(v) : def;
    if (!t || !t[0] || strlen(t) >= len)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "%s: must be non-empty text of at most %zu "
                          "bytes",
                          key, len - 1);
    memcpy(out, t, strlen(t) + 1);
    return PB_OK;
}

static enum pb_rc conf_list(json_t *s, const char *key, const char *const *def, json_t **out,
                            struct pb_err *err)
{
    json_t *v = json_object_get(s, key), *e;
    size_t i;
    if (!v) {
        *out = json_array();
        for (i = 0; def[i]; i++)
            json_array_append_new(*out, json_string(def[i]));
        return PB_OK;
    }
    if (!json_is_array(v))
        return pb_err_set(err, PB_ERR_CONFIG, "%s: must be a list of codes", key);
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || !json_string_value(e)[0])
            return pb_err_set(err, PB_ERR_CONFIG, "%s[%zu]: must be a non-empty string", key, i);
    }
    *out = json_incref(v);
    return PB_OK;
}

static void *sagex3_create(json_t *s, struct pb_err *err)
{
    static const char *const known[] = {
        "username", "password",      "pool_alias", "items",         "sites",
        "accounts", "payment_types", "stock",      "currency",      "aliases",
        "port",     "enabled",       "faults",     "closed_before", NULL};
    static const char *const def_items[] = {"ITM-100", "ITM-200", "ITM-300", NULL};
    static const char *const def_sites[] = {"FR011", "US011", NULL};
    static const char *const def_accounts[] = {"5120000", "4110000", "7070000", "6270000", NULL};
    static const char *const def_types[] = {"CC", "ACH", NULL};
    struct sagex3 *x = calloc(1, sizeof *x);
    const char *key;
    json_t *v;

    if (!x) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    x->magic = SX3_MAGIC;
    pthread_mutex_init(&x->lock, NULL);
    if (s && !json_is_object(s)) {
        pb_err_set(err, PB_ERR_CONFIG, "settings must be an object");
        goto fail;
    }
    json_object_foreach(s, key, v)
    {
        int ok = 0;
        for (int i = 0; known[i]; i++)
            ok |= strcmp(known[i], key) == 0;
        if (!ok) {
            pb_err_set(err, PB_ERR_CONFIG,
                       "%s: unknown setting (known: username, password, pool_alias, "
                       "items, sites, accounts, payment_types, stock, currency, aliases, "
                       "closed_before)",
                       key);
            goto fail;
        }
    }
    if (conf_text(s, "username", "admin", x->username, sizeof x->username, err) ||
        conf_text(s, "password", "sandbox-x3", x->password, sizeof x->password, err) ||
        conf_text(s, "pool_alias", "SEED", x->pool_alias, sizeof x->pool_alias, err) ||
        conf_text(s, "currency", "USD", x->currency, sizeof x->currency, err) ||
        conf_list(s, "items", def_items, &x->items, err) ||
        conf_list(s, "sites", def_sites, &x->sites, err) ||
        conf_list(s, "accounts", def_accounts, &x->accounts, err) ||
        conf_list(s, "payment_types", def_types, &x->payment_types, err))
        goto fail;
    if (strchr(x->username, ':')) {
        pb_err_set(err, PB_ERR_CONFIG, "username: must not contain ':'");
        goto fail;
    }
    v = json_object_get(s, "stock");
    if (v) {
        const char *item;
        json_t *q;
        if (!json_is_object(v)) {
            pb_err_set(err, PB_ERR_CONFIG, "stock: must be an object {item: units}");
            goto fail;
        }
        json_object_foreach(v, item, q)
        {
            if (!json_is_integer(q) || json_integer_value(q) < 0 ||
                json_integer_value(q) > 100000000000LL) {
                pb_err_set(err, PB_ERR_CONFIG,
                           "stock.%s: must be a whole number of units from 0 to 1e11", item);
                goto fail;
            }
        }
        x->stock_initial = json_deep_copy(v);
    } else {
        x->stock_initial = json_object();
        for (size_t i = 0; i < json_array_size(x->items); i++)
            json_object_set_new(x->stock_initial, json_string_value(json_array_get(x->items, i)),
                                json_integer(1000));
    }
    v = json_object_get(s, "closed_before");
    if (v) {
        if (!json_is_string(v) || !valid_date(json_string_value(v))) {
            pb_err_set(err, PB_ERR_CONFIG,
                       "closed_before: must be a date YYYYMMDD (periods before it are closed)");
            goto fail;
        }
        snprintf(x->closed_before, sizeof x->closed_before, "%s", json_string_value(v));
    }
    v = json_object_get(s, "aliases");
    if (v && !json_is_object(v)) {
        pb_err_set(err, PB_ERR_CONFIG, "aliases: must be an object {\"YOSOH\": \"SOH\"}");
        goto fail;
    }
    x->aliases = v ? json_deep_copy(v) : json_pack("{s:s,s:s}", "YOSOH", "SOH", "YBPC", "BPC");
    for (int e = 0; e < E_COUNT; e++) {
        x->records[e] = json_array();
        x->by_key[e] = json_object();
        x->by_ref[e] = json_object();
    }
    x->allocations = json_array();
    x->stock = json_object();
    xmlInitParser();
    clear_data(x);
    {
        struct pb_http_route r[] = {
            {"POST", SOAP_PATH, soap_handler, x},
            {"GET", SOAP_PATH, soap_handler, x},
            {"GET", WSDL_PATH, soap_handler, x},
            {"GET", "/_sandbox/stats", stats_handler, x},
            {"GET", "/_sandbox/records", records_handler, x},
            {"POST", "/_sandbox/reset", reset_handler, x},
            {"POST", "/_sandbox/inject", inject_handler, x},
            {NULL, NULL, NULL, NULL},
        };
        memcpy(x->routes, r, sizeof r);
    }
    return x;
fail:
    sagex3_destroy(x);
    return NULL;
}

static const struct pb_http_route *sagex3_routes(void *state)
{
    struct sagex3 *x = state;
    return x->routes;
}

static void sagex3_started(void *state, int port)
{
    struct sagex3 *x = state;
    pthread_mutex_lock(&x->lock);
    x->port = port;
    pthread_mutex_unlock(&x->lock);
}

const struct sbx_emulator_type sbx_sagex3_type = {
    .name = "sagex3",
    .create = sagex3_create,
    .routes = sagex3_routes,
    .started = sagex3_started,
    .destroy = sagex3_destroy,
};
