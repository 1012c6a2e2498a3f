/*
 * sandbox/syspro.c: an emulator of SYSPRO e.net Solutions behind its REST
 * service (shared/specs/WIRE-FORMATS.md, "SYSPRO e.net Solutions"), for
 * paybridge's tests and demo. It keeps everything in memory, answers the
 * way SYSPRO does where the spec says how (session ids with two trailing
 * spaces, "ERROR:" text in a 200, business errors inside a 200 XML reply,
 * Windows-1252, lower-case element names) and exposes counters under
 * /_sandbox/ for exactly-once checks.
 *
 * Routes (the framework adds fault injection and /_sandbox/health|faults):
 *   GET  /SYSPROWCFService/Rest/logon (also Logon)
 *          ?Operator=&OperatorPassword=&CompanyId=&CompanyPassword=
 *          200 application/octet-stream "<GUID>  " (two spaces), or
 *          200 "ERROR: Invalid operator code or password" / "... company ..."
 *   GET  .../Rest/Logoff (also logoff) ?UserId=
 *   GET  .../Rest/Transaction/Post ?UserId=&BusinessObject=&XmlParameters=&XmlIn=
 *          SORTOI (sales orders), ARSTPY (AR payments), ARSTIN (AR credit notes),
 *          GENTJL (GL journals, below)
 *   GET  .../Rest/Setup/Add ?UserId=&BusinessObject=&XmlParameters=&XmlIn=
 *          ARSSCS (customers)
 *   GET  .../Rest/Query/Query ?UserId=&BusinessObject=&XmlIn=
 *          ARSQRY (a customer; with <Option><IncludeTransactions>Y its
 *          payments and credit notes, only those of <TransactionReference>
 *          when given), SORQRY (sales orders by SalesOrder,
 *          or by CustomerPoNumber [+ Customer]), INVQRY (a stock code),
 *          ARSQPY (AR payments and credit notes by date, paged), GENQJL
 *          (GL journals by Reference)
 *   GET  /_sandbox/stats    {"sessions","logons","failed_logons","logoffs",
 *                            "invalid_session_calls","userid_missing_spaces",
 *                            "sales_orders","ar_payments","credit_notes",
 *                            "customers","customers_added","gl_journals",
 *                            "duplicate_customer_po_numbers","business_errors",
 *                            "requests","responses":{"200":n,...}}
 *   GET  /_sandbox/orders   every sales order as JSON
 *   GET  /_sandbox/ledger   {"customers":{...},"ar_payments":[...],"credit_notes":[...],
 *                            "gl_journals":[...]}
 *   POST /_sandbox/reset    forget everything: records, sessions, counters, and
 *                           settings changed since start
 *   POST /_sandbox/settings merge settings (same keys as at start; a list given
 *                           replaces the list)
 *   POST /_sandbox/expire_sessions  every session ends now (the next call with
 *                           its UserId gets the invalid-UserId error)
 *
 * Settings (defaults in brackets; unknown keys are an error; "port",
 * "enabled" and "faults" belong to the framework): company_id ["EDU1"],
 * company_password [""], operator ["ADMIN"], operator_password
 * ["sandbox-op"], session_ttl_s [3600: idle time after which a session
 * ends], stock_codes [A100 B100 C100 SHIP; strings or {"StockCode",
 * "Description", "Price"}], customers [0000001; strings or {"Customer",
 * "Name", ...more fields, "Currency"}], banks [BANK1], invoices [none;
 * {"Invoice","Customer","Balance"}: open AR invoices payments may be applied
 * to, besides the sales orders, which are treated as invoiced at once],
 * currency ["GBP"], encoding ["windows-1252" declared; "utf-8";
 * "windows-1252-undeclared": no XML declaration], lowercase_replies [false:
 * only ARSTPY answers in lower case; true: every reply], duplicate_po
 * ["reject": a CustomerPoNumber already on an order of the customer is
 * refused, as SYSPRO does when set up to; "allow"]. max_sessions [64: logons
 * beyond it are refused, like a full e.net licence]. gl_accounts [1000 bank,
 * 1100 card clearing, 6100 bank charges, 6900 reconciliation differences;
 * strings or {"Account","Description"}: the chart GL journals may post to],
 * gl_closed_periods [none; "YYYY-MM" periods closed for posting].
 *
 * Reconciliation. AR payments keep their PaymentDate (today, UTC, when the
 * Payment has none) and credit notes their InvoiceDate, as TrnDate. ARSQPY
 * answers <Option><DateFrom/><DateTo/> (inclusive, both optional)
 * <IncludePayments/><IncludeCreditNotes/> (Y by default) <MaxRecords/>
 * (default 100, at most 10000) <StartAfterKey/> with <Transaction> elements
 * (DocumentType P or C, Key, Customer, Reference, TrnDate, TrnYear, TrnMonth,
 * Journal, Entry or Invoice, Value, Currency) in the order they were posted,
 * then <QueryStatus><RecordsReturned/><MoreRecords>Y|N</MoreRecords>
 * <LastKey/>: the next page starts after LastKey. GENTJL posts
 * <PostGlJournal><Item><Header><JournalDate/><Reference/> (at most 50)
 * <Notation/></Header><Line><LedgerCode/><EntryType>D|C</EntryType>
 * <EntryValue/><Comment/></Line>... (at least 2 lines, every code in
 * gl_accounts, debits = credits, the JournalDate's period open) in the
 * currency setting, answering <Item><Key><Reference/></Key><GlYear/>
 * <GlPeriod/><Journal/> (journals numbered 1, 2, ... across periods). Like
 * SYSPRO it does not refuse a repeated Reference: a second post is a second
 * journal, which is what /_sandbox/stats "gl_journals" lets a test see.
 * GENQJL <Query><Key><Reference/></Key> answers every <JournalHeader> with
 * that Reference (GlYear, GlPeriod, Journal, Reference, JournalDate,
 * Notation, Lines), or "GL journal with reference 'X' not found".
 *
 * Sessions. A logon creates an upper-case GUID followed by two spaces; a call
 * must send it back exactly (the framework hands handlers the decoded query,
 * so "%20%20" arrives as two spaces). A UserId that matches a session only
 * without its two spaces is counted as userid_missing_spaces and refused like
 * any unknown one, with 200 "ERROR: Invalid UserId: not logged on, or the
 * session has expired". A session idle for session_ttl_s ends.
 *
 * Business errors come back as HTTP 200 XML: per record an <ErrorNumber>
 * (this emulator's own numbers, listed in ERR_*) and an <ErrorDescription>
 * in SYSPRO's style ("Stock code 'XYZ' not found", "Customer 'ZZZ' is
 * invalid"), and a <StatusOfItems><RecordsRead/><RecordsInvalid/>. Malformed
 * requests (no XmlIn, XML that does not parse, an unknown business object)
 * get "ERROR: ..." text, as e.net exceptions do.
 *
 * Replies are built with libxml2 and serialised in the configured encoding:
 * a customer name with "é" or "£" goes out as single Windows-1252 bytes.
 * Query replies carry the customer's Name wherever a customer appears.
 *
 * Money: amounts are int64 minor units of the customer's currency, parsed
 * and printed with core/money.h. A line's value is Price x OrderQty, with
 * the quantity read exactly to 6 decimals and the product rounded once, half
 * to even. Balances (an order's value less payments applied and credit notes
 * raised against it) never go below zero: over-applying is a business error.
 *
 * Locking: one mutex guards settings, sessions, records and counters.
 * Handlers parse the request outside it, do all their reading and writing of
 * the state inside it (building the reply tree there), and serialise the
 * reply outside it. Records are jansson objects: the sandbox holds thousands,
 * not millions. Sales orders are indexed by customer + CustomerPoNumber.
 *
 * Not emulated: change or cancel actions (OrderActionType other than A),
 * warehouses and stock levels, tax, discounts, multi-currency conversion,
 * the GL postings of AR transactions (only journals posted through GENTJL
 * reach the emulated GL), document types other than C on ARSTIN.
 */
#include <ctype.h>
#include <inttypes.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlsave.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "connectors/settlement/settlement.h"
#include "core/crypto.h"
#include "core/money.h"
#include "net/httpd.h"
#include "sbx.h"
#include "syspro.h"

#define EMU_MAGIC 0x53595345u /* "SYSE" */
#define REST "/SYSPROWCFService/Rest"
#define SESSIONS_MAX 1024 /* hard cap of max_sessions */
#define SESSION_ID_LEN 38 /* GUID (36) + two spaces */
#define CUSTOMER_MAX 15   /* SYSPRO's customer code length */
#define PO_MAX 30         /* CustomerPoNumber */
#define NAME_MAX_CHARS 50 /* customer Name */
#define REFERENCE_MAX 30
#define JOURNAL_REFERENCE_MAX 50 /* a GL journal's Reference */
#define GL_CODE_MAX 35
#define QUERY_PAGE_DEFAULT 100
#define QUERY_PAGE_MAX 10000
#define TEXT_MAX 512
#define QTY_SCALE 1000000 /* quantities to 6 decimals */

/* This emulator's ErrorNumbers. */
enum {
    ERR_FIELD = 20001, /* a required element is missing or malformed */
    ERR_CUSTOMER_NOT_FOUND = 20010,
    ERR_CUSTOMER_INVALID = 20011,
    ERR_CUSTOMER_EXISTS = 20012,
    ERR_STOCK_NOT_FOUND = 20020,
    ERR_NO_LINES = 20021,
    ERR_ZERO_PRICE = 20022,
    ERR_NON_STOCK = 20023,
    ERR_DUPLICATE_PO = 20030,
    ERR_BANK_INVALID = 20040,
    ERR_VALUE_INVALID = 20050,
    ERR_INVOICE_NOT_FOUND = 20060,
    ERR_OVER_APPLIED = 20061,
    ERR_OVER_CREDITED = 20062,
    ERR_NOT_EMULATED = 20090,
    ERR_ORDER_NOT_FOUND = 20100,
    ERR_NOT_POSTED = 20110, /* ApplyIfEntireDocumentValid: another item failed */
    ERR_GL_CODE = 20120,    /* a ledger code not in gl_accounts */
    ERR_UNBALANCED = 20121,
    ERR_PERIOD_CLOSED = 20122,
    ERR_JOURNAL_NOT_FOUND = 20123,
};

enum reply_encoding { ENC_1252, ENC_1252_UNDECLARED, ENC_UTF8 };

/* Settings: replaced whole under the lock, so a handler sees one version. */
struct emu_settings {
    char company_id[64], company_password[128], operator_code[64], operator_password[128];
    long session_ttl_s;
    long max_sessions;
    json_t *stock;             /* owned: code -> {"StockCode","Description","Price"} */
    json_t *customers;         /* owned: code -> record (strings) */
    json_t *banks;             /* owned: code -> true */
    json_t *invoices;          /* owned: invoice -> {"Customer","balance_minor"} */
    json_t *gl_accounts;       /* owned: code -> description */
    json_t *gl_closed_periods; /* owned: "YYYY-MM" -> true */
    char currency[4];
    enum reply_encoding encoding;
    int lowercase;
    int duplicate_reject;
};

struct session {
    char id[SESSION_ID_LEN + 1]; /* GUID + "  " */
    time_t last_used;
};

struct counters {
    uint64_t requests, logons, failed_logons, logoffs, invalid_session, missing_spaces;
    uint64_t customers_added, duplicate_po, business_errors;
    uint64_t status_200, status_400, status_404;
};

struct emu {
    unsigned magic;         /* EMU_MAGIC */
    pthread_mutex_t lock;   /* guards everything below */
    json_t *start_settings; /* owned: the settings given at create (for reset) */
    struct emu_settings set;
    struct session *sessions; /* owned, SESSIONS_MAX */
    size_t n_sessions;
    json_t *orders;       /* owned: array of sales orders */
    json_t *po_index;     /* owned: "CUSTOMER\x1fPO" -> index in orders */
    json_t *payments;     /* owned: array */
    json_t *credit_notes; /* owned: array */
    json_t *gl_journals;  /* owned: array */
    long next_order, next_journal, next_credit, next_gl_journal;
    long next_key; /* ARSQPY's Key of the next AR payment or credit note */
    struct counters n;
    struct pb_http_route routes[24];
};

/* ==== small helpers ========================================================= */

static void settings_free(struct emu_settings *s)
{
    json_decref(s->stock);
    json_decref(s->customers);
    json_decref(s->banks);
    json_decref(s->invoices);
    json_decref(s->gl_accounts);
    json_decref(s->gl_closed_periods);
    memset(s, 0, sizeof *s);
}

static void reply_text(struct pb_http_response *resp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void reply_text(struct pb_http_response *resp, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pb_http_response_set(resp, 200, "application/octet-stream", text, strlen(text));
}

static void reply_json(struct pb_http_response *resp, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        pb_http_response_error(resp, 500, "internal", "out of memory");
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
}

static int named(xmlNodePtr n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE && xmlStrcasecmp(n->name, BAD_CAST name) == 0;
}

static xmlNodePtr kid(xmlNodePtr parent, const char *name)
{
    for (xmlNodePtr n = parent ? parent->children : NULL; n; n = n->next)
        if (named(n, name))
            return n;
    return NULL;
}

static int is_leaf(xmlNodePtr n)
{
    for (xmlNodePtr c = n->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE)
            return 0;
    return 1;
}

/* Trimmed text of an element into buf. */
static const char *node_text(xmlNodePtr n, char *buf, size_t len)
{
    xmlChar *c;
    size_t a = 0, b;
    buf[0] = '\0';
    if (!n || !(c = xmlNodeGetContent(n)))
        return buf;
    b = strlen((char *)c);
    while (a < b && isspace(c[a]))
        a++;
    while (b > a && isspace(c[b - 1]))
        b--;
    if (b - a >= len)
        b = a + len - 1;
    memcpy(buf, c + a, b - a);
    buf[b - a] = '\0';
    xmlFree(c);
    return buf;
}

/* Text of child `name`; NULL when absent or empty. */
static const char *ktext(xmlNodePtr parent, const char *name, char *buf, size_t len)
{
    node_text(kid(parent, name), buf, len);
    return buf[0] ? buf : NULL;
}

/* A Y/N parameter. */
static int yn(xmlNodePtr params, const char *name, int def)
{
    char t[8];
    if (!ktext(params, name, t, sizeof t))
        return def;
    return t[0] == 'Y' || t[0] == 'y';
}

static xmlNodePtr add(xmlNodePtr parent, const char *name, const char *text)
{
    return xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST(text ? text : ""));
}

static void add_int(xmlNodePtr parent, const char *name, long long v)
{
    char t[32];
    snprintf(t, sizeof t, "%lld", v);
    add(parent, name, t);
}

static void add_money(xmlNodePtr parent, const char *name, int64_t minor, const char *currency)
{
    char t[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, t, sizeof t, NULL) != PB_OK)
        snprintf(t, sizeof t, "%" PRId64, minor);
    add(parent, name, t);
}

static void add_error(xmlNodePtr parent, int number, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_error(xmlNodePtr parent, int number, const char *fmt, ...)
{
    char text[TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    add_int(parent, "ErrorNumber", number);
    add(parent, "ErrorDescription", text);
}

static void add_status(xmlNodePtr root, long read, long invalid)
{
    xmlNodePtr s = xmlNewChild(root, NULL, BAD_CAST "StatusOfItems", NULL);
    add_int(s, "RecordsRead", read);
    add_int(s, "RecordsInvalid", invalid);
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static int64_t jint(json_t *o, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(o, key));
}

/* Quantity text ("2", "1.5") to millionths; 0 on error or when not > 0. */
static int64_t parse_qty(const char *s)
{
    int64_t whole = 0, frac = 0, scale = QTY_SCALE;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return 0;
    for (; isdigit((unsigned char)*p); p++) {
        whole = whole * 10 + (*p - '0');
        if (whole > 1000000000)
            return 0;
    }
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return 0;
        for (; isdigit((unsigned char)*p); p++) {
            if (scale == 1)
                return 0; /* more than 6 decimals */
            scale /= 10;
            frac += (*p - '0') * scale;
        }
    }
    if (*p)
        return 0;
    return whole * QTY_SCALE + frac;
}

/* price_minor x qty / QTY_SCALE, rounded half to even; -1 on overflow. */
static int64_t line_value(int64_t price_minor, int64_t qty)
{
    __int128 p = (__int128)price_minor * qty;
    __int128 q = p / QTY_SCALE, r = p % QTY_SCALE;
    if (r * 2 > QTY_SCALE || (r * 2 == QTY_SCALE && (q & 1)))
        q++;
    if (q > INT64_MAX / 4)
        return -1;
    return (int64_t)q;
}

/* A decimal amount > 0 (or >= 0 when zero_ok) of `currency`. */
static int parse_amount(const char *text, const char *currency, int zero_ok, int64_t *out)
{
    int64_t v;
    if (!text || pb_money_parse_decimal(text, currency, &v, NULL) != PB_OK)
        return 0;
    if (v < 0 || (v == 0 && !zero_ok) || v > INT64_MAX / 4)
        return 0;
    *out = v;
    return 1;
}

static const char *customer_currency(struct emu *x, json_t *cust)
{
    const char *c = jstr(cust, "Currency");
    return pb_currency_valid(c) ? c : x->set.currency;
}

static void lower_names(xmlNodePtr n)
{
    for (; n; n = n->next) {
        if (n->type == XML_ELEMENT_NODE) {
            char low[128];
            size_t i;
            for (i = 0; n->name[i] && i + 1 < sizeof low; i++)
                low[i] = (char)tolower(n->name[i]);
            low[i] = '\0';
            xmlNodeSetName(n, BAD_CAST low);
            lower_names(n->children);
        }
    }
}

/* Serialise the reply tree in the configured encoding and send it. */
static void reply_doc(struct pb_http_response *resp, xmlDocPtr doc, enum reply_encoding enc,
                      int lower)
{
    xmlChar *out = NULL;
    int len = 0;
    const char *ct = "application/xml";

    if (lower)
        lower_names(xmlDocGetRootElement(doc));
    if (enc == ENC_UTF8) {
        xmlDocDumpMemoryEnc(doc, &out, &len, "UTF-8");
        ct = "application/xml; charset=utf-8";
    } else if (enc == ENC_1252) {
        xmlDocDumpMemoryEnc(doc, &out, &len, "windows-1252");
    } else {
        xmlBufferPtr b = xmlBufferCreate();
        xmlSaveCtxtPtr s = b ? xmlSaveToBuffer(b, "windows-1252", XML_SAVE_NO_DECL) : NULL;
        if (s) {
            xmlSaveDoc(s, doc);
            xmlSaveClose(s);
            len = xmlBufferLength(b);
            out = xmlStrndup(xmlBufferContent(b), len);
        }
        if (b)
            xmlBufferFree(b);
    }
    xmlFreeDoc(doc);
    if (!out) {
        pb_http_response_error(resp, 500, "internal", "cannot serialise the reply");
        return;
    }
    pb_http_response_set(resp, 200, ct, (const char *)out, (size_t)len);
    xmlFree(out);
}

static xmlDocPtr new_doc(const char *root_name, xmlNodePtr *root)
{
    xmlDocPtr doc = xmlNewDoc(BAD_CAST "1.0");
    *root = xmlNewNode(NULL, BAD_CAST root_name);
    xmlDocSetRootElement(doc, *root);
    return doc;
}

static void trnperiod(int previous, int *year, int *month)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    *year = tm.tm_year + 1900;
    *month = tm.tm_mon + 1;
    if (previous && --*month == 0) {
        *month = 12;
        --*year;
    }
}

/* A "YYYY-MM-DD" date: 1 with its days since 1970-01-01, else 0. */
static int date_days(const char *text, int32_t *days)
{
    struct pb_err e = {0};
    if (!text || strlen(text) != 10 || text[4] != '-' || text[7] != '-')
        return 0;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)text[i]))
            return 0;
    return pb_settlement_date_parse(text, 10, "%Y-%m-%d", days, &e) == PB_OK;
}

/* Today (UTC) as "YYYY-MM-DD". */
static void today(char *buf, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, len, "%Y-%m-%d", &tm);
}

/* The next ARSQPY Key: zero-padded, so that keys sort as text. */
static void next_key(struct emu *x, char *buf, size_t len)
{
    snprintf(buf, len, "%08ld", x->next_key++);
}

/* ==== settings ================================================================ */

static const char *const SETTINGS_KEYS[] = {
    "company_id",    "company_password", "operator",    "operator_password",
    "session_ttl_s", "stock_codes",      "customers",   "banks",
    "invoices",      "currency",         "encoding",    "lowercase_replies",
    "duplicate_po",  "max_sessions",     "gl_accounts", "gl_closed_periods",
    "port",          "enabled",          "faults",      NULL,
};

static enum pb_rc set_string(json_t *v, const char *key, char *out, size_t len, struct pb_err *err)
{
    if (!json_is_string(v) || strlen(json_string_value(v)) >= len)
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.%s: must be a string of at most %zu bytes",
                          key, len - 1);
    memcpy(out, json_string_value(v), strlen(json_string_value(v)) + 1);
    return PB_OK;
}

static enum pb_rc parse_stock(json_t *v, json_t **out, const char *currency, struct pb_err *err)
{
    json_t *stock = json_object(), *e;
    size_t i;
    if (!json_is_array(v) || !stock) {
        json_decref(stock);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.stock_codes: must be an array");
    }
    json_array_foreach(v, i, e)
    {
        const char *code = json_is_string(e) ? json_string_value(e) : jstr(e, "StockCode");
        const char *price = json_is_object(e) ? jstr(e, "Price") : "";
        int64_t minor = 0;
        if (!code[0] || strlen(code) > 30 ||
            (price[0] && !parse_amount(price, currency, 1, &minor))) {
            json_decref(stock);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "syspro.stock_codes[%zu]: a code of 1..30 characters, or "
                              "{\"StockCode\",\"Description\",\"Price\":\"10.00\"}",
                              i);
        }
        json_object_set_new(stock, code,
                            json_pack("{s:s,s:s,s:I}", "StockCode", code, "Description",
                                      json_is_object(e) && jstr(e, "Description")[0]
                                          ? jstr(e, "Description")
                                          : code,
                                      "price_minor", (json_int_t)minor));
    }
    *out = stock;
    return PB_OK;
}

static enum pb_rc parse_customers(json_t *v, json_t **out, struct pb_err *err)
{
    json_t *customers = json_object(), *e;
    size_t i;
    if (!json_is_array(v) || !customers) {
        json_decref(customers);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.customers: must be an array");
    }
    json_array_foreach(v, i, e)
    {
        const char *code = json_is_string(e) ? json_string_value(e) : jstr(e, "Customer");
        json_t *rec;
        char name[64];
        if (!code[0] || strlen(code) > CUSTOMER_MAX) {
            json_decref(customers);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "syspro.customers[%zu]: a code of 1..%d characters, or "
                              "{\"Customer\",\"Name\",...}",
                              i, CUSTOMER_MAX);
        }
        if (json_is_object(e)) {
            const char *k;
            json_t *m;
            rec = json_object();
            json_object_foreach(e, k, m)
            {
                if (!json_is_string(m)) {
                    json_decref(rec);
                    json_decref(customers);
                    return pb_err_set(err, PB_ERR_CONFIG,
                                      "syspro.customers[%zu].%s: must be a string", i, k);
                }
                json_object_set(rec, k, m);
            }
        } else {
            rec = json_object();
        }
        json_object_set_new(rec, "Customer", json_string(code));
        if (!jstr(rec, "Name")[0]) {
            snprintf(name, sizeof name, "Customer %s", code);
            json_object_set_new(rec, "Name", json_string(name));
        }
        json_object_set_new(customers, code, rec);
    }
    *out = customers;
    return PB_OK;
}

static enum pb_rc parse_banks(json_t *v, json_t **out, struct pb_err *err)
{
    json_t *banks = json_object(), *e;
    size_t i;
    if (!json_is_array(v) || !banks) {
        json_decref(banks);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.banks: must be an array of codes");
    }
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || !json_string_value(e)[0]) {
            json_decref(banks);
            return pb_err_set(err, PB_ERR_CONFIG, "syspro.banks[%zu]: must be a code", i);
        }
        json_object_set_new(banks, json_string_value(e), json_true());
    }
    *out = banks;
    return PB_OK;
}

static enum pb_rc parse_invoices(json_t *v, json_t **out, const char *currency, struct pb_err *err)
{
    json_t *invoices = json_object(), *e;
    size_t i;
    if (!json_is_array(v) || !invoices) {
        json_decref(invoices);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.invoices: must be an array");
    }
    json_array_foreach(v, i, e)
    {
        int64_t minor;
        if (!jstr(e, "Invoice")[0] || !jstr(e, "Customer")[0] ||
            !parse_amount(jstr(e, "Balance"), currency, 0, &minor)) {
            json_decref(invoices);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "syspro.invoices[%zu]: {\"Invoice\",\"Customer\",\"Balance\":"
                              "\"10.00\"}",
                              i);
        }
        json_object_set_new(invoices, jstr(e, "Invoice"),
                            json_pack("{s:s,s:I}", "Customer", jstr(e, "Customer"), "balance_minor",
                                      (json_int_t)minor));
    }
    *out = invoices;
    return PB_OK;
}

static enum pb_rc parse_gl_accounts(json_t *v, json_t **out, struct pb_err *err)
{
    json_t *chart = json_object(), *e;
    size_t i;
    if (!json_is_array(v) || !chart) {
        json_decref(chart);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.gl_accounts: must be an array");
    }
    json_array_foreach(v, i, e)
    {
        const char *code = json_is_string(e) ? json_string_value(e) : jstr(e, "Account");
        const char *desc = json_is_object(e) ? jstr(e, "Description") : "";
        if (!code[0] || strlen(code) > GL_CODE_MAX) {
            json_decref(chart);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "syspro.gl_accounts[%zu]: a code of 1..%d characters, or "
                              "{\"Account\",\"Description\"}",
                              i, GL_CODE_MAX);
        }
        json_object_set_new(chart, code, json_string(desc[0] ? desc : code));
    }
    *out = chart;
    return PB_OK;
}

static enum pb_rc parse_closed_periods(json_t *v, json_t **out, struct pb_err *err)
{
    json_t *closed = json_object(), *e;
    size_t i;
    if (!json_is_array(v) || !closed) {
        json_decref(closed);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro.gl_closed_periods: must be an array");
    }
    json_array_foreach(v, i, e)
    {
        const char *p = json_string_value(e);
        if (!p || strlen(p) != 7 || p[4] != '-' || !isdigit((unsigned char)p[0]) ||
            !isdigit((unsigned char)p[5]) || !isdigit((unsigned char)p[6]) ||
            strtol(p + 5, NULL, 10) < 1 || strtol(p + 5, NULL, 10) > 12) {
            json_decref(closed);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "syspro.gl_closed_periods[%zu]: a period \"YYYY-MM\"", i);
        }
        json_object_set_new(closed, p, json_true());
    }
    *out = closed;
    return PB_OK;
}

static void settings_defaults(struct emu_settings *s)
{
    json_t *stock = json_pack("[s,s,s,s]", "A100", "B100", "C100", "SHIP");
    json_t *customers = json_pack("[s]", "0000001");
    json_t *banks = json_pack("[s]", "BANK1");
    json_t *chart =
        json_pack("[{s:s,s:s},{s:s,s:s},{s:s,s:s},{s:s,s:s}]", "Account", "1000", "Description",
                  "Bank current account", "Account", "1100", "Description", "Card clearing",
                  "Account", "6100", "Description", "Bank charges", "Account", "6900",
                  "Description", "Reconciliation differences");
    json_t *none = json_array();
    memset(s, 0, sizeof *s);
    snprintf(s->company_id, sizeof s->company_id, "EDU1");
    snprintf(s->operator_code, sizeof s->operator_code, "ADMIN");
    snprintf(s->operator_password, sizeof s->operator_password, "sandbox-op");
    snprintf(s->currency, sizeof s->currency, "GBP");
    s->session_ttl_s = 3600;
    s->max_sessions = 64;
    s->encoding = ENC_1252;
    s->duplicate_reject = 1;
    parse_stock(stock, &s->stock, s->currency, NULL);
    parse_customers(customers, &s->customers, NULL);
    parse_banks(banks, &s->banks, NULL);
    parse_invoices(none, &s->invoices, s->currency, NULL);
    parse_gl_accounts(chart, &s->gl_accounts, NULL);
    parse_closed_periods(none, &s->gl_closed_periods, NULL);
    json_decref(chart);
    json_decref(stock);
    json_decref(customers);
    json_decref(banks);
    json_decref(none);
}

/* Merge `patch` into a copy of `base`; all or nothing. */
static enum pb_rc settings_merge(const struct emu_settings *base, json_t *patch,
                                 struct emu_settings *out, struct pb_err *err)
{
    const char *key;
    json_t *v;
    enum pb_rc rc = PB_OK;

    *out = *base;
    out->stock = json_incref(base->stock);
    out->customers = json_incref(base->customers);
    out->banks = json_incref(base->banks);
    out->invoices = json_incref(base->invoices);
    out->gl_accounts = json_incref(base->gl_accounts);
    out->gl_closed_periods = json_incref(base->gl_closed_periods);
    if (!patch)
        return PB_OK;
    if (!json_is_object(patch)) {
        settings_free(out);
        return pb_err_set(err, PB_ERR_CONFIG, "syspro settings must be an object");
    }
    json_object_foreach(patch, key, v)
    {
        int known = 0;
        for (size_t i = 0; SETTINGS_KEYS[i]; i++)
            known |= strcmp(SETTINGS_KEYS[i], key) == 0;
        if (!known) {
            settings_free(out);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "unknown setting syspro.%s (known: company_id, company_password, "
                              "operator, operator_password, session_ttl_s, stock_codes, "
                              "customers, banks, invoices, currency, encoding, "
                              "lowercase_replies, duplicate_po, max_sessions, gl_accounts, "
                              "gl_closed_periods)",
                              key);
        }
    }
    if ((v = json_object_get(patch, "currency"))) {
        if (!json_is_string(v) || !pb_currency_valid(json_string_value(v)))
            rc = pb_err_set(err, PB_ERR_CONFIG, "syspro.currency: an ISO 4217 code");
        else
            memcpy(out->currency, json_string_value(v), 4);
    }
    if (!rc && (v = json_object_get(patch, "company_id")))
        rc = set_string(v, "company_id", out->company_id, sizeof out->company_id, err);
    if (!rc && (v = json_object_get(patch, "company_password")))
        rc = set_string(v, "company_password", out->company_password, sizeof out->company_password,
                        err);
    if (!rc && (v = json_object_get(patch, "operator")))
        rc = set_string(v, "operator", out->operator_code, sizeof out->operator_code, err);
    if (!rc && (v = json_object_get(patch, "operator_password")))
        rc = set_string(v, "operator_password", out->operator_password,
                        sizeof out->operator_password, err);
    if (!rc && (v = json_object_get(patch, "session_ttl_s"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 86400)
            rc = pb_err_set(err, PB_ERR_CONFIG, "syspro.session_ttl_s: 1..86400");
        else
            out->session_ttl_s = (long)json_integer_value(v);
    }
    if (!rc && (v = json_object_get(patch, "max_sessions"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > SESSIONS_MAX)
            rc = pb_err_set(err, PB_ERR_CONFIG, "syspro.max_sessions: 1..%d", SESSIONS_MAX);
        else
            out->max_sessions = (long)json_integer_value(v);
    }
    if (!rc && (v = json_object_get(patch, "encoding"))) {
        const char *e = json_string_value(v);
        if (e && strcasecmp(e, "windows-1252") == 0)
            out->encoding = ENC_1252;
        else if (e && strcasecmp(e, "windows-1252-undeclared") == 0)
            out->encoding = ENC_1252_UNDECLARED;
        else if (e && (strcasecmp(e, "utf-8") == 0 || strcasecmp(e, "utf8") == 0))
            out->encoding = ENC_UTF8;
        else
            rc = pb_err_set(err, PB_ERR_CONFIG,
                            "syspro.encoding: \"windows-1252\", \"windows-1252-undeclared\" or "
                            "\"utf-8\"");
    }
    if (!rc && (v = json_object_get(patch, "lowercase_replies"))) {
        if (!json_is_boolean(v))
            rc = pb_err_set(err, PB_ERR_CONFIG, "syspro.lowercase_replies: true or false");
        else
            out->lowercase = json_is_true(v);
    }
    if (!rc && (v = json_object_get(patch, "duplicate_po"))) {
        const char *d = json_string_value(v);
        if (!d || (strcmp(d, "reject") != 0 && strcmp(d, "allow") != 0))
            rc = pb_err_set(err, PB_ERR_CONFIG, "syspro.duplicate_po: \"reject\" or \"allow\"");
        else
            out->duplicate_reject = strcmp(d, "reject") == 0;
    }
    if (!rc && (v = json_object_get(patch, "stock_codes"))) {
        json_t *n = NULL;
        if (!(rc = parse_stock(v, &n, out->currency, err))) {
            json_decref(out->stock);
            out->stock = n;
        }
    }
    if (!rc && (v = json_object_get(patch, "customers"))) {
        json_t *n = NULL;
        if (!(rc = parse_customers(v, &n, err))) {
            json_decref(out->customers);
            out->customers = n;
        }
    }
    if (!rc && (v = json_object_get(patch, "banks"))) {
        json_t *n = NULL;
        if (!(rc = parse_banks(v, &n, err))) {
            json_decref(out->banks);
            out->banks = n;
        }
    }
    if (!rc && (v = json_object_get(patch, "invoices"))) {
        json_t *n = NULL;
        if (!(rc = parse_invoices(v, &n, out->currency, err))) {
            json_decref(out->invoices);
            out->invoices = n;
        }
    }
    if (!rc && (v = json_object_get(patch, "gl_accounts"))) {
        json_t *n = NULL;
        if (!(rc = parse_gl_accounts(v, &n, err))) {
            json_decref(out->gl_accounts);
            out->gl_accounts = n;
        }
    }
    if (!rc && (v = json_object_get(patch, "gl_closed_periods"))) {
        json_t *n = NULL;
        if (!(rc = parse_closed_periods(v, &n, err))) {
            json_decref(out->gl_closed_periods);
            out->gl_closed_periods = n;
        }
    }
    if (rc)
        settings_free(out);
    return rc;
}

/* ==== sessions (under the lock) ================================================== */

static void expire_sessions(struct emu *x, time_t now)
{
    size_t k = 0;
    for (size_t i = 0; i < x->n_sessions; i++)
        if (now - x->sessions[i].last_used < x->set.session_ttl_s)
            x->sessions[k++] = x->sessions[i];
    x->n_sessions = k;
}

/* Check a UserId; 1 when it is a live session (and touch it). */
static int session_ok(struct emu *x, const char *user_id)
{
    time_t now = time(NULL);
    size_t n = user_id ? strlen(user_id) : 0;
    expire_sessions(x, now);
    for (size_t i = 0; user_id && i < x->n_sessions; i++) {
        if (strcmp(x->sessions[i].id, user_id) == 0) {
            x->sessions[i].last_used = now;
            return 1;
        }
        if (n == SESSION_ID_LEN - 2 && strncmp(x->sessions[i].id, user_id, n) == 0)
            x->n.missing_spaces++;
    }
    x->n.invalid_session++;
    return 0;
}

/* ==== records (under the lock) ====================================================== */

static json_t *customer(struct emu *x, const char *code)
{
    return code ? json_object_get(x->set.customers, code) : NULL;
}

static void po_key(const char *customer_code, const char *po, char *out, size_t len)
{
    snprintf(out, len, "%s\x1f%s", customer_code, po);
}

static json_t *order_by_number(struct emu *x, const char *number)
{
    size_t i;
    json_t *o;
    json_array_foreach(x->orders, i, o)
    {
        if (strcmp(jstr(o, "SalesOrder"), number) == 0)
            return o;
    }
    return NULL;
}

/* What is still open on an order (value - paid - credited). */
static int64_t order_open(json_t *o)
{
    return jint(o, "value_minor") - jint(o, "paid_minor") - jint(o, "credited_minor");
}

/* ==== the parsed request ============================================================ */

struct call {
    const char *business_object;
    xmlDocPtr params; /* owned, may be NULL */
    xmlDocPtr in;     /* owned */
    xmlNodePtr p;     /* <Parameters> of params, may be NULL */
    xmlNodePtr root;  /* root of in */
};

static void call_free(struct call *c)
{
    if (c->params)
        xmlFreeDoc(c->params);
    if (c->in)
        xmlFreeDoc(c->in);
}

static xmlDocPtr parse_xml(const char *text)
{
    return xmlReadMemory(text, (int)strlen(text), "request.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

/* Parse BusinessObject, XmlParameters, XmlIn. 0 and a text reply on error. */
static int parse_call(struct pb_http_request *req, struct pb_http_response *resp, int with_params,
                      struct call *c)
{
    const char *xp = pb_http_query(req, "XmlParameters");
    const char *xi = pb_http_query(req, "XmlIn");
    memset(c, 0, sizeof *c);
    c->business_object = pb_http_query(req, "BusinessObject");
    if (!c->business_object || !c->business_object[0]) {
        reply_text(resp, "ERROR: BusinessObject is required");
        return 0;
    }
    if (!xi || !xi[0]) {
        reply_text(resp, "ERROR: XmlIn is required for business object %.32s", c->business_object);
        return 0;
    }
    if (!(c->in = parse_xml(xi))) {
        reply_text(resp, "ERROR: XmlIn for business object %.32s is not well-formed XML",
                   c->business_object);
        return 0;
    }
    c->root = xmlDocGetRootElement(c->in);
    if (with_params && xp && xp[0]) {
        if (!(c->params = parse_xml(xp))) {
            call_free(c);
            reply_text(resp,
                       "ERROR: XmlParameters for business object %.32s is not well-formed "
                       "XML",
                       c->business_object);
            return 0;
        }
        c->p = kid(xmlDocGetRootElement(c->params), "Parameters");
    }
    return 1;
}

/* ==== items of a business object ============================================= */

/* The end of a reply made of records (<Order>s for SORTOI, <Item>s for the
 * others): a document with none at all gets one `elem` saying `none`,
 * counted as read and invalid; the invalid records count as business
 * errors; then the <StatusOfItems>. */
static void end_items(struct emu *x, xmlNodePtr out_root, const char *elem, const char *none,
                      long read, long invalid)
{
    if (read == 0) {
        xmlNodePtr item = xmlNewChild(out_root, NULL, BAD_CAST elem, NULL);
        add_error(item, ERR_FIELD, "%s", none);
        read = invalid = 1;
    }
    x->n.business_errors += (uint64_t)invalid;
    add_status(out_root, read, invalid);
}

/* The end of an all-or-nothing posting of staged items (ARSTPY, GENTJL):
 * when it did not post and some item was invalid, every valid one says it
 * was not posted; the staged records are freed; then end_items(). */
static void end_staged(struct emu *x, xmlNodePtr out_root, xmlNodePtr *items, json_t **staged,
                       size_t n, long invalid, int posted)
{
    if (!posted && invalid) {
        for (size_t i = 0; i < n; i++)
            if (staged[i])
                add_error(items[i], ERR_NOT_POSTED,
                          "Not posted: another item of the document is invalid");
    }
    for (size_t i = 0; i < n; i++)
        json_decref(staged[i]);
    end_items(x, out_root, "Item", "XmlIn has no Item", (long)n, invalid);
}

/* The PostingPeriod parameter of an AR posting into period. */
static void posting_period(struct call *c, char *period, size_t len)
{
    if (!ktext(c->p, "PostingPeriod", period, len))
        snprintf(period, len, "C"); /* the current period unless told */
}

/* The <Key><Customer/><Reference/></Key> of an AR item's reply, from the
 * Customer and Reference of `in`, and the customer it names: NULL, with
 * "Customer 'X' is invalid" on the item, when there is none. */
static json_t *keyed_customer(struct emu *x, xmlNodePtr in, xmlNodePtr item, char *code,
                              size_t code_len, char *ref, size_t ref_len)
{
    xmlNodePtr key;
    json_t *cust;
    ktext(in, "Customer", code, code_len);
    ktext(in, "Reference", ref, ref_len);
    key = xmlNewChild(item, NULL, BAD_CAST "Key", NULL);
    add(key, "Customer", code);
    add(key, "Reference", ref);
    if (!code[0] || !(cust = customer(x, code))) {
        add_error(item, ERR_CUSTOMER_INVALID, "Customer '%s' is invalid", code);
        return NULL;
    }
    return cust;
}

/* Whether a Reference of `len` characters fits in `max`; else 0 with the
 * error on item. */
static int reference_fits(xmlNodePtr item, const char *ref, size_t len, int max)
{
    if (len <= (size_t)max)
        return 1;
    add_error(item, ERR_FIELD, "Reference '%s' is longer than %d characters", ref, max);
    return 0;
}

/* An AR item's date element `name` into date (today when absent); 0, with
 * "<what> date 'X' is invalid" on item, when it is not a date. */
static int item_date(xmlNodePtr in, const char *name, const char *what, xmlNodePtr item,
                     char *date, size_t len)
{
    int32_t days;
    if (!ktext(in, name, date, len))
        today(date, len);
    else if (!date_days(date, &days)) {
        add_error(item, ERR_FIELD, "%s date '%s' is invalid", what, date);
        return 0;
    }
    return 1;
}

/* ==== SORTOI ========================================================================= */

/* One <Orders>: validate and (unless validate_only) create. Adds <Order> to out. */
static int sortoi_order(struct emu *x, struct call *c, xmlNodePtr orders, xmlNodePtr out,
                        int validate_only)
{
    char customer_code[64], po[128], text[TEXT_MAX], key[256], number[16], type[32];
    xmlNodePtr header = kid(orders, "OrderHeader"), details = kid(orders, "OrderDetails");
    xmlNodePtr order = xmlNewChild(out, NULL, BAD_CAST "Order", NULL);
    int allow_zero = yn(c->p, "AllowZeroPrice", 1),
        use_entered = yn(c->p, "AlwaysUsePriceEntered", 1);
    int allow_non_stock = yn(c->p, "AllowNonStockItems", 1);
    const char *status = ktext(c->p, "OrderStatus", text, sizeof text) ? text : "1";
    char status_copy[8];
    json_t *cust, *lines, *header_json, *existing, *rec;
    const char *currency;
    int64_t total = 0;
    size_t n_lines = 0;

    snprintf(status_copy, sizeof status_copy, "%s", status);
    ktext(header, "CustomerPoNumber", po, sizeof po);
    add(order, "CustomerPoNumber", po);
    if (!header) {
        add_error(order, ERR_FIELD, "OrderHeader is missing");
        return 0;
    }
    if (ktext(header, "OrderActionType", type, sizeof type) && strcasecmp(type, "A") != 0) {
        add_error(order, ERR_NOT_EMULATED, "OrderActionType '%s' is not emulated (only A)", type);
        return 0;
    }
    if (!ktext(header, "Customer", customer_code, sizeof customer_code)) {
        add_error(order, ERR_FIELD, "Customer is required");
        return 0;
    }
    if (!(cust = customer(x, customer_code))) {
        add_error(order, ERR_CUSTOMER_NOT_FOUND, "Customer '%s' not found", customer_code);
        return 0;
    }
    if (strlen(po) > PO_MAX) {
        add_error(order, ERR_FIELD,
                  "Customer purchase order number '%s' is longer than %d "
                  "characters",
                  po, PO_MAX);
        return 0;
    }
    if (po[0]) {
        po_key(customer_code, po, key, sizeof key);
        if ((existing = json_object_get(x->po_index, key)) != NULL) {
            x->n.duplicate_po++;
            if (x->set.duplicate_reject) {
                add_error(order, ERR_DUPLICATE_PO,
                          "Customer purchase order number '%s' already exists for customer '%s' "
                          "on sales order '%s'",
                          po, customer_code,
                          jstr(json_array_get(x->orders, (size_t)json_integer_value(existing)),
                               "SalesOrder"));
                return 0;
            }
        }
    }
    currency = customer_currency(x, cust);
    lines = json_array();
    for (xmlNodePtr l = details ? details->children : NULL; l; l = l->next) {
        char code[64], qty_text[64], price_text[64];
        json_t *line;
        int64_t qty, price = 0, value;
        if (l->type != XML_ELEMENT_NODE)
            continue;
        if (named(l, "StockLine")) {
            json_t *stock;
            if (!ktext(l, "StockCode", code, sizeof code)) {
                add_error(order, ERR_FIELD, "StockCode is required on a stock line");
                goto fail;
            }
            if (!(stock = json_object_get(x->set.stock, code))) {
                add_error(order, ERR_STOCK_NOT_FOUND, "Stock code '%s' not found", code);
                goto fail;
            }
            if (!(qty =
                      parse_qty(ktext(l, "OrderQty", qty_text, sizeof qty_text) ? qty_text : ""))) {
                add_error(order, ERR_FIELD, "Order quantity '%s' for stock code '%s' is invalid",
                          qty_text, code);
                goto fail;
            }
            if (use_entered && ktext(l, "Price", price_text, sizeof price_text)) {
                if (!parse_amount(price_text, currency, 1, &price)) {
                    add_error(order, ERR_VALUE_INVALID, "Price '%s' for stock code '%s' is invalid",
                              price_text, code);
                    goto fail;
                }
            } else {
                price = jint(stock, "price_minor");
            }
            if (price == 0 && !allow_zero) {
                add_error(order, ERR_ZERO_PRICE, "Zero price not allowed for stock code '%s'",
                          code);
                goto fail;
            }
            value = line_value(price, qty);
            line = json_pack("{s:s,s:s,s:s,s:s,s:I}", "LineType", "StockLine", "StockCode", code,
                             "OrderQty", qty_text, "Description", jstr(stock, "Description"),
                             "price_minor", (json_int_t)price);
        } else if (named(l, "NonStockedLine")) {
            if (!allow_non_stock) {
                add_error(order, ERR_NON_STOCK, "Non-stocked lines are not allowed");
                goto fail;
            }
            if (!ktext(l, "NonStockCode", code, sizeof code)) {
                add_error(order, ERR_FIELD, "NonStockCode is required on a non-stocked line");
                goto fail;
            }
            if (!(qty = parse_qty(ktext(l, "NonStockedQty", qty_text, sizeof qty_text) ? qty_text
                                                                                       : "1")))
                qty = QTY_SCALE;
            if (!parse_amount(ktext(l, "NonStockedPrice", price_text, sizeof price_text), currency,
                              1, &price)) {
                add_error(order, ERR_VALUE_INVALID,
                          "Price '%s' for non-stocked code '%s' is "
                          "invalid",
                          price_text, code);
                goto fail;
            }
            value = line_value(price, qty);
            line = json_pack("{s:s,s:s,s:s,s:I}", "LineType", "NonStockedLine", "NonStockCode",
                             code, "NonStockedQty", qty_text[0] ? qty_text : "1", "price_minor",
                             (json_int_t)price);
        } else if (named(l, "FreightLine") || named(l, "MiscChargeLine")) {
            const char *vk = named(l, "FreightLine") ? "FreightValue" : "MiscChargeValue";
            if (!parse_amount(ktext(l, vk, price_text, sizeof price_text), currency, 1, &value)) {
                add_error(order, ERR_VALUE_INVALID, "%s '%s' is invalid", vk, price_text);
                goto fail;
            }
            line = json_pack("{s:s,s:s}", "LineType", (const char *)l->name, vk, price_text);
        } else if (named(l, "CommentLine")) {
            value = 0;
            line = json_pack("{s:s,s:s}", "LineType", "CommentLine", "Comment",
                             node_text(kid(l, "Comment"), text, sizeof text));
        } else {
            continue;
        }
        if (value < 0 || pb_money_add(total, value, &total) != PB_OK) {
            json_decref(line);
            add_error(order, ERR_VALUE_INVALID, "The order value is out of range");
            goto fail;
        }
        json_array_append_new(lines, line);
        n_lines++;
    }
    if (n_lines == 0) {
        add_error(order, ERR_NO_LINES, "Sales order has no lines");
        goto fail;
    }
    if (validate_only) {
        json_decref(lines);
        add_money(order, "OrderValue", total, currency);
        return 1;
    }
    header_json = json_object();
    for (xmlNodePtr h = header->children; h; h = h->next)
        if (h->type == XML_ELEMENT_NODE && is_leaf(h))
            json_object_set_new(header_json, (const char *)h->name,
                                json_string(node_text(h, text, sizeof text)));
    snprintf(number, sizeof number, "%06ld", x->next_order++);
    {
        char value_text[PB_MONEY_DECIMAL_MAX];
        pb_money_format_decimal(total, currency, value_text, sizeof value_text, NULL);
        rec = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:b,s:s,s:s,s:I,s:I,s:I,s:o,s:o}", "SalesOrder",
                        number, "Customer", customer_code, "CustomerName", jstr(cust, "Name"),
                        "CustomerPoNumber", po, "OrderDate", jstr(header_json, "OrderDate"),
                        "OrderStatus", status_copy, "OnHold", strcasecmp(status_copy, "S") == 0,
                        "Currency", currency, "OrderValue", value_text, "value_minor",
                        (json_int_t)total, "paid_minor", (json_int_t)0, "credited_minor",
                        (json_int_t)0, "Header", header_json, "Lines", lines);
    }
    if (po[0])
        json_object_set_new(x->po_index, key, json_integer((json_int_t)json_array_size(x->orders)));
    json_array_append_new(x->orders, rec);
    add(order, "SalesOrder", number);
    add(order, "OrderActionType", "A");
    add(order, "Customer", customer_code);
    add(order, "CustomerName", jstr(cust, "Name"));
    add(order, "OrderStatus", status_copy);
    add_money(order, "OrderValue", total, currency);
    return 1;
fail:
    json_decref(lines);
    return 0;
}

static void sortoi(struct emu *x, struct call *c, xmlNodePtr out_root)
{
    long read = 0, invalid = 0;
    int validate_only = yn(c->p, "ValidateOnly", 0);
    for (xmlNodePtr o = c->root ? c->root->children : NULL; o; o = o->next) {
        if (!named(o, "Orders"))
            continue;
        read++;
        if (!sortoi_order(x, c, o, out_root, validate_only))
            invalid++;
    }
    end_items(x, out_root, "Order", "XmlIn has no Orders", read, invalid);
}

/* ==== ARSTPY ============================================================================ */

/* A payable document of the customer: an open invoice from the settings, or
 * a sales order (treated as invoiced). *open_out = what is still open. */
static json_t *payable(struct emu *x, const char *customer_code, const char *doc, int64_t *open_out,
                       int *is_order)
{
    json_t *inv = json_object_get(x->set.invoices, doc), *o;
    if (inv && strcmp(jstr(inv, "Customer"), customer_code) == 0) {
        *open_out = jint(inv, "balance_minor");
        *is_order = 0;
        return inv;
    }
    o = order_by_number(x, doc);
    if (o && strcmp(jstr(o, "Customer"), customer_code) == 0) {
        *open_out = order_open(o);
        *is_order = 1;
        return o;
    }
    return NULL;
}

/* Validate one <Payment>; on success fills the staged record. */
static int arstpy_check(struct emu *x, xmlNodePtr pay, xmlNodePtr item, json_t **staged)
{
    char code[64], bank[64], value_text[64], ref[128], ptype[64], inv[64], text[64], date[32];
    json_t *cust, *applied = json_array();
    const char *currency;
    int64_t value, sum = 0;

    if (!pay) {
        add_error(item, ERR_FIELD, "Payment is missing");
        goto fail;
    }
    if (!(cust = keyed_customer(x, pay, item, code, sizeof code, ref, sizeof ref)))
        goto fail;
    currency = customer_currency(x, cust);
    if (!ktext(pay, "Bank", bank, sizeof bank) || !json_object_get(x->set.banks, bank)) {
        add_error(item, ERR_BANK_INVALID, "Bank '%s' is invalid", bank);
        goto fail;
    }
    if (!parse_amount(ktext(pay, "PaymentValue", value_text, sizeof value_text), currency, 0,
                      &value)) {
        add_error(item, ERR_VALUE_INVALID, "Payment value '%s' is invalid", value_text);
        goto fail;
    }
    if (!reference_fits(item, ref, strlen(ref), REFERENCE_MAX))
        goto fail;
    ktext(pay, "PaymentType", ptype, sizeof ptype);
    if (!item_date(pay, "PaymentDate", "Payment", item, date, sizeof date))
        goto fail;
    for (xmlNodePtr t = pay->children; t; t = t->next) {
        int64_t open, part;
        int is_order;
        if (!named(t, "InvoiceToPay"))
            continue;
        if (!ktext(t, "Invoice", inv, sizeof inv) || !payable(x, code, inv, &open, &is_order)) {
            add_error(item, ERR_INVOICE_NOT_FOUND, "Invoice '%s' not found for customer '%s'", inv,
                      code);
            goto fail;
        }
        if (!parse_amount(ktext(t, "PaymentValue", text, sizeof text), currency, 0, &part)) {
            add_error(item, ERR_VALUE_INVALID, "Payment value '%s' for invoice '%s' is invalid",
                      text, inv);
            goto fail;
        }
        if (part > open) {
            char open_text[PB_MONEY_DECIMAL_MAX];
            pb_money_format_decimal(open, currency, open_text, sizeof open_text, NULL);
            add_error(item, ERR_OVER_APPLIED,
                      "Payment value %s exceeds the balance %s of invoice '%s'", text, open_text,
                      inv);
            goto fail;
        }
        if (pb_money_add(sum, part, &sum) != PB_OK || sum > value) {
            add_error(item, ERR_OVER_APPLIED, "The amounts applied exceed the payment value %s",
                      value_text);
            goto fail;
        }
        json_array_append_new(applied, json_pack("{s:s,s:I,s:b}", "Invoice", inv, "value_minor",
                                                 (json_int_t)part, "order", is_order));
    }
    *staged = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:s,s:s,s:o}", "DocumentType", "P",
                        "Customer", code, "Reference", ref, "Bank", bank, "PaymentType", ptype,
                        "PaymentValue", value_text, "value_minor", (json_int_t)value, "TrnDate",
                        date, "Currency", currency, "Applied", applied);
    return *staged != NULL;
fail:
    json_decref(applied);
    return 0;
}

static void arstpy(struct emu *x, struct call *c, xmlNodePtr out_root)
{
    json_t *staged[256] = {0};
    xmlNodePtr items[256];
    size_t n = 0;
    long invalid = 0;
    int whole = yn(c->p, "ApplyIfEntireDocumentValid", 1),
        validate_only = yn(c->p, "ValidateOnly", 0);
    char period[8] = "C";
    int year, month, posted;

    posting_period(c, period, sizeof period);
    for (xmlNodePtr it = c->root ? c->root->children : NULL; it && n < 256; it = it->next) {
        if (!named(it, "Item"))
            continue;
        items[n] = xmlNewChild(out_root, NULL, BAD_CAST "Item", NULL);
        if (strcasecmp(period, "C") != 0 && strcasecmp(period, "P") != 0) {
            add_error(items[n], ERR_FIELD, "Posting period '%s' is invalid (C or P)", period);
            invalid++;
        } else if (!arstpy_check(x, kid(it, "Payment"), items[n], &staged[n])) {
            invalid++;
        }
        n++;
    }
    if (n == 0)
        invalid = 1; /* end_staged() says why */
    trnperiod(strcasecmp(period, "P") == 0, &year, &month);
    posted = !validate_only && !(whole && invalid);
    if (posted) {
        long journal = x->next_journal++, entry = 0;
        for (size_t i = 0; i < n; i++) {
            size_t j;
            json_t *a;
            if (!staged[i])
                continue;
            entry++;
            json_array_foreach(json_object_get(staged[i], "Applied"), j, a)
            {
                int64_t open;
                int is_order;
                json_t *doc =
                    payable(x, jstr(staged[i], "Customer"), jstr(a, "Invoice"), &open, &is_order);
                if (doc && is_order)
                    json_object_set_new(
                        doc, "paid_minor",
                        json_integer(jint(doc, "paid_minor") + jint(a, "value_minor")));
                else if (doc)
                    json_object_set_new(
                        doc, "balance_minor",
                        json_integer(jint(doc, "balance_minor") - jint(a, "value_minor")));
            }
            json_object_set_new(staged[i], "TrnYear", json_integer(year));
            json_object_set_new(staged[i], "TrnMonth", json_integer(month));
            json_object_set_new(staged[i], "Journal", json_integer(journal));
            json_object_set_new(staged[i], "Entry", json_integer(entry));
            {
                char key[16];
                next_key(x, key, sizeof key);
                json_object_set_new(staged[i], "Key", json_string(key));
            }
            add_int(items[i], "TrnYear", year);
            add_int(items[i], "TrnMonth", month);
            add_int(items[i], "Journal", journal);
            add_int(items[i], "Entry", entry);
            json_array_append(x->payments, staged[i]);
        }
    }
    end_staged(x, out_root, items, staged, n, invalid, posted);
}

/* ==== ARSTIN (credit notes) ============================================================ */

static void arstin(struct emu *x, struct call *c, xmlNodePtr out_root)
{
    long read = 0, invalid = 0;
    int validate_only = yn(c->p, "ValidateOnly", 0);
    char period[8] = "C";
    int year, month;

    posting_period(c, period, sizeof period);
    trnperiod(strcasecmp(period, "P") == 0, &year, &month);
    for (xmlNodePtr it = c->root ? c->root->children : NULL; it; it = it->next) {
        char code[64], ref[128], value_text[64], type[16], orig[64], number[16], date[32], seq[16];
        xmlNodePtr inv, item;
        json_t *cust, *odoc = NULL;
        const char *currency;
        int64_t value, open = 0;
        int is_order = 0;

        if (!named(it, "Item"))
            continue;
        read++;
        inv = kid(it, "Invoice");
        item = xmlNewChild(out_root, NULL, BAD_CAST "Item", NULL);
        if (!(cust = keyed_customer(x, inv, item, code, sizeof code, ref, sizeof ref)))
            goto bad;
        currency = customer_currency(x, cust);
        if (!ktext(inv, "DocumentType", type, sizeof type) || strcasecmp(type, "C") != 0) {
            add_error(item, ERR_NOT_EMULATED,
                      "Document type '%s' is not emulated (only C, credit "
                      "note)",
                      type);
            goto bad;
        }
        if (!parse_amount(ktext(inv, "InvoiceValue", value_text, sizeof value_text), currency, 0,
                          &value)) {
            add_error(item, ERR_VALUE_INVALID, "Invoice value '%s' is invalid", value_text);
            goto bad;
        }
        if (!reference_fits(item, ref, strlen(ref), REFERENCE_MAX) ||
            !item_date(inv, "InvoiceDate", "Invoice", item, date, sizeof date))
            goto bad;
        if (ktext(inv, "OriginalDocument", orig, sizeof orig)) {
            odoc = payable(x, code, orig, &open, &is_order);
            if (!odoc) {
                add_error(item, ERR_INVOICE_NOT_FOUND, "Document '%s' not found for customer '%s'",
                          orig, code);
                goto bad;
            }
            if (is_order && value > jint(odoc, "value_minor") - jint(odoc, "credited_minor")) {
                char left[PB_MONEY_DECIMAL_MAX];
                pb_money_format_decimal(jint(odoc, "value_minor") - jint(odoc, "credited_minor"),
                                        currency, left, sizeof left, NULL);
                add_error(item, ERR_OVER_CREDITED,
                          "Credit value %s exceeds the uncredited value %s of document '%s'",
                          value_text, left, orig);
                goto bad;
            }
        }
        if (validate_only)
            continue;
        snprintf(number, sizeof number, "CN%06ld", x->next_credit++);
        next_key(x, seq, sizeof seq);
        if (odoc && is_order)
            json_object_set_new(odoc, "credited_minor",
                                json_integer(jint(odoc, "credited_minor") + value));
        json_array_append_new(x->credit_notes,
                              json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:i,s:i,s:I,s:s,s:s,s:s}",
                                        "DocumentType", "C", "Invoice", number, "Customer", code,
                                        "Reference", ref, "InvoiceValue", value_text,
                                        "OriginalDocument", odoc ? orig : "", "value_minor",
                                        (json_int_t)value, "TrnYear", year, "TrnMonth", month,
                                        "Journal", (json_int_t)x->next_journal, "TrnDate", date,
                                        "Currency", currency, "Key", seq));
        add(item, "Invoice", number);
        add(item, "DocumentType", "C");
        add_int(item, "TrnYear", year);
        add_int(item, "TrnMonth", month);
        add_int(item, "Journal", x->next_journal++);
        continue;
    bad:
        invalid++;
    }
    end_items(x, out_root, "Item", "XmlIn has no Item", read, invalid);
}

/* ==== ARSSCS (Setup/Add customers) ======================================================= */

static void arsscs(struct emu *x, struct call *c, xmlNodePtr out_root)
{
    long read = 0, invalid = 0;
    int validate_only = yn(c->p, "ValidateOnly", 0);
    for (xmlNodePtr it = c->root ? c->root->children : NULL; it; it = it->next) {
        char code[64], name[TEXT_MAX], text[TEXT_MAX];
        xmlNodePtr item, key;
        json_t *rec;
        if (!named(it, "Item"))
            continue;
        read++;
        item = xmlNewChild(out_root, NULL, BAD_CAST "Item", NULL);
        key = xmlNewChild(item, NULL, BAD_CAST "Key", NULL);
        ktext(kid(it, "Key"), "Customer", code, sizeof code);
        add(key, "Customer", code);
        if (!code[0] || strlen(code) > CUSTOMER_MAX) {
            add_error(item, ERR_FIELD, "Customer code '%s' must be 1 to %d characters", code,
                      CUSTOMER_MAX);
            invalid++;
            continue;
        }
        if (customer(x, code)) {
            add_error(item, ERR_CUSTOMER_EXISTS, "Customer '%s' already exists", code);
            invalid++;
            continue;
        }
        if (!ktext(it, "Name", name, sizeof name) || utf8_chars(name) > NAME_MAX_CHARS) {
            add_error(item, ERR_FIELD, "Customer name is required (at most %d characters)",
                      NAME_MAX_CHARS);
            invalid++;
            continue;
        }
        if (validate_only)
            continue;
        rec = json_object();
        for (xmlNodePtr f = it->children; f; f = f->next)
            if (f->type == XML_ELEMENT_NODE && is_leaf(f))
                json_object_set_new(rec, (const char *)f->name,
                                    json_string(node_text(f, text, sizeof text)));
        json_object_set_new(rec, "Customer", json_string(code));
        json_object_set_new(x->set.customers, code, rec);
        x->n.customers_added++;
    }
    end_items(x, out_root, "Item", "XmlIn has no Item", read, invalid);
}

/* ==== queries ===================================================================== */

static void add_order_header(xmlNodePtr parent, json_t *o)
{
    xmlNodePtr h = xmlNewChild(parent, NULL, BAD_CAST "OrderHeader", NULL);
    add(h, "SalesOrder", jstr(o, "SalesOrder"));
    add(h, "Customer", jstr(o, "Customer"));
    add(h, "CustomerName", jstr(o, "CustomerName"));
    add(h, "CustomerPoNumber", jstr(o, "CustomerPoNumber"));
    add(h, "OrderDate", jstr(o, "OrderDate"));
    add(h, "OrderStatus", jstr(o, "OrderStatus"));
    add(h, "Currency", jstr(o, "Currency"));
    add(h, "OrderValue", jstr(o, "OrderValue"));
}

static void arsqry(struct emu *x, struct call *c, xmlNodePtr root)
{
    char code[64], ref[128] = "";
    xmlNodePtr key = kid(c->root, "Key"), det, txns;
    json_t *cust, *p;
    const char *k;
    json_t *v;
    size_t i;
    int64_t balance = 0;

    ktext(key, "Customer", code, sizeof code);
    if (!(cust = customer(x, code))) {
        add_error(root, ERR_CUSTOMER_NOT_FOUND, "Customer '%s' not found", code);
        return;
    }
    det = xmlNewChild(root, NULL, BAD_CAST "CustomerDetails", NULL);
    add(det, "Customer", code);
    json_object_foreach(cust, k, v)
    {
        if (strcmp(k, "Customer") != 0 && json_is_string(v))
            add(det, k, json_string_value(v));
    }
    if (!jstr(cust, "Currency")[0])
        add(det, "Currency", customer_currency(x, cust));
    json_array_foreach(x->orders, i, p)
    {
        if (strcmp(jstr(p, "Customer"), code) == 0)
            balance += order_open(p);
    }
    add_money(det, "Balance", balance, customer_currency(x, cust));
    if (!yn(kid(c->root, "Option"), "IncludeTransactions", 0))
        return;
    ktext(kid(c->root, "Option"), "TransactionReference", ref, sizeof ref);
    txns = xmlNewChild(root, NULL, BAD_CAST "Transactions", NULL);
    json_array_foreach(x->payments, i, p)
    {
        xmlNodePtr t;
        if (strcmp(jstr(p, "Customer"), code) != 0 ||
            (ref[0] && strcmp(jstr(p, "Reference"), ref) != 0))
            continue;
        t = xmlNewChild(txns, NULL, BAD_CAST "Transaction", NULL);
        add(t, "DocumentType", "P");
        add(t, "Reference", jstr(p, "Reference"));
        add_int(t, "TrnYear", jint(p, "TrnYear"));
        add_int(t, "TrnMonth", jint(p, "TrnMonth"));
        add_int(t, "Journal", jint(p, "Journal"));
        add_int(t, "Entry", jint(p, "Entry"));
        add(t, "Value", jstr(p, "PaymentValue"));
    }
    json_array_foreach(x->credit_notes, i, p)
    {
        xmlNodePtr t;
        if (strcmp(jstr(p, "Customer"), code) != 0 ||
            (ref[0] && strcmp(jstr(p, "Reference"), ref) != 0))
            continue;
        t = xmlNewChild(txns, NULL, BAD_CAST "Transaction", NULL);
        add(t, "DocumentType", "C");
        add(t, "Invoice", jstr(p, "Invoice"));
        add(t, "Reference", jstr(p, "Reference"));
        add_int(t, "TrnYear", jint(p, "TrnYear"));
        add_int(t, "TrnMonth", jint(p, "TrnMonth"));
        add_int(t, "Journal", jint(p, "Journal"));
        add(t, "Value", jstr(p, "InvoiceValue"));
    }
}

static void sorqry(struct emu *x, struct call *c, xmlNodePtr root)
{
    char number[64], po[128], code[64];
    xmlNodePtr key = kid(c->root, "Key");
    json_t *o;
    size_t i, found = 0;

    if (ktext(key, "SalesOrder", number, sizeof number)) {
        if (!(o = order_by_number(x, number)))
            add_error(root, ERR_ORDER_NOT_FOUND, "Sales order '%s' not found", number);
        else
            add_order_header(root, o);
        return;
    }
    if (!ktext(key, "CustomerPoNumber", po, sizeof po)) {
        add_error(root, ERR_FIELD, "Key needs SalesOrder or CustomerPoNumber");
        return;
    }
    /* every match: with duplicate_po "allow" there may be several */
    ktext(key, "Customer", code, sizeof code);
    json_array_foreach(x->orders, i, o)
    {
        if ((!code[0] || strcmp(jstr(o, "Customer"), code) == 0) &&
            strcmp(jstr(o, "CustomerPoNumber"), po) == 0) {
            add_order_header(root, o);
            found++;
        }
    }
    if (!found)
        add_error(root, ERR_ORDER_NOT_FOUND,
                  "Sales order for customer purchase order number '%s' not found", po);
}

static void invqry(struct emu *x, struct call *c, xmlNodePtr root)
{
    char code[64];
    json_t *s;
    xmlNodePtr item;
    ktext(kid(c->root, "Key"), "StockCode", code, sizeof code);
    if (!(s = json_object_get(x->set.stock, code))) {
        add_error(root, ERR_STOCK_NOT_FOUND, "Stock code '%s' not found", code);
        return;
    }
    item = xmlNewChild(root, NULL, BAD_CAST "StockItem", NULL);
    add(item, "StockCode", code);
    add(item, "Description", jstr(s, "Description"));
    add_money(item, "Price", jint(s, "price_minor"), x->set.currency);
}

/* ==== reconciliation: ARSQPY, GENTJL, GENQJL ============================================= */

/* One AR payment or credit note as a <Transaction> of ARSQPY. */
static void add_transaction(xmlNodePtr parent, json_t *r, int payment)
{
    xmlNodePtr t = xmlNewChild(parent, NULL, BAD_CAST "Transaction", NULL);
    add(t, "DocumentType", payment ? "P" : "C");
    add(t, "Key", jstr(r, "Key"));
    add(t, "Customer", jstr(r, "Customer"));
    add(t, "Reference", jstr(r, "Reference"));
    if (!payment)
        add(t, "Invoice", jstr(r, "Invoice"));
    add(t, "TrnDate", jstr(r, "TrnDate"));
    add_int(t, "TrnYear", jint(r, "TrnYear"));
    add_int(t, "TrnMonth", jint(r, "TrnMonth"));
    add_int(t, "Journal", jint(r, "Journal"));
    if (payment)
        add_int(t, "Entry", jint(r, "Entry"));
    add_money(t, "Value", jint(r, "value_minor"), jstr(r, "Currency"));
    add(t, "Currency", jstr(r, "Currency"));
}

static void arsqpy(struct emu *x, struct call *c, xmlNodePtr root)
{
    xmlNodePtr opt = kid(c->root, "Option"), status;
    char from[32], to[32], after[64] = "", max_text[32];
    int32_t from_day = INT32_MIN, to_day = INT32_MAX;
    int payments = yn(opt, "IncludePayments", 1), credit_notes = yn(opt, "IncludeCreditNotes", 1);
    long max = QUERY_PAGE_DEFAULT, returned = 0;
    size_t i = 0, j = 0;
    const char *last = "";
    int more = 0;

    if (ktext(opt, "DateFrom", from, sizeof from) && !date_days(from, &from_day)) {
        add_error(root, ERR_FIELD, "DateFrom '%s' is invalid", from);
        return;
    }
    if (ktext(opt, "DateTo", to, sizeof to) && !date_days(to, &to_day)) {
        add_error(root, ERR_FIELD, "DateTo '%s' is invalid", to);
        return;
    }
    if (ktext(opt, "MaxRecords", max_text, sizeof max_text)) {
        char *end;
        max = strtol(max_text, &end, 10);
        if (*end || max < 1 || max > QUERY_PAGE_MAX) {
            add_error(root, ERR_FIELD, "MaxRecords '%s' is invalid (1 to %d)", max_text,
                      QUERY_PAGE_MAX);
            return;
        }
    }
    ktext(opt, "StartAfterKey", after, sizeof after);
    /* both arrays are in Key order: merge them */
    for (;;) {
        json_t *p = payments ? json_array_get(x->payments, i) : NULL;
        json_t *n = credit_notes ? json_array_get(x->credit_notes, j) : NULL;
        json_t *r;
        int is_payment;
        int32_t day;
        if (!p && !n)
            break;
        is_payment = p && (!n || strcmp(jstr(p, "Key"), jstr(n, "Key")) < 0);
        r = is_payment ? p : n;
        if (is_payment)
            i++;
        else
            j++;
        if (after[0] && strcmp(jstr(r, "Key"), after) <= 0)
            continue;
        if (!date_days(jstr(r, "TrnDate"), &day) || day < from_day || day > to_day)
            continue;
        if (returned == max) {
            more = 1;
            break;
        }
        add_transaction(root, r, is_payment);
        last = jstr(r, "Key");
        returned++;
    }
    status = xmlNewChild(root, NULL, BAD_CAST "QueryStatus", NULL);
    add_int(status, "RecordsReturned", returned);
    add(status, "MoreRecords", more ? "Y" : "N");
    add(status, "LastKey", last);
}

/* Validate one GENTJL <Item>; on success fills the staged journal. */
static int gentjl_check(struct emu *x, xmlNodePtr in, xmlNodePtr item, json_t **staged)
{
    char date[32], ref[128], notation[TEXT_MAX], period[8];
    xmlNodePtr header = kid(in, "Header"), key;
    json_t *lines = json_array();
    int64_t debits = 0, credits = 0;
    int32_t days;
    long n = 0;

    ktext(header, "Reference", ref, sizeof ref);
    key = xmlNewChild(item, NULL, BAD_CAST "Key", NULL);
    add(key, "Reference", ref);
    if (!header) {
        add_error(item, ERR_FIELD, "Header is missing");
        goto fail;
    }
    if (!ktext(header, "JournalDate", date, sizeof date) || !date_days(date, &days)) {
        add_error(item, ERR_FIELD, "Journal date '%s' is invalid", date);
        goto fail;
    }
    if (!reference_fits(item, ref, utf8_chars(ref), JOURNAL_REFERENCE_MAX))
        goto fail;
    snprintf(period, sizeof period, "%.7s", date);
    if (json_object_get(x->set.gl_closed_periods, period)) {
        add_error(item, ERR_PERIOD_CLOSED, "GL period %.4s/%s is closed for posting", date,
                  period + 5);
        goto fail;
    }
    ktext(header, "Notation", notation, sizeof notation);
    for (xmlNodePtr l = in->children; l; l = l->next) {
        char code[64], type[8], value_text[64], comment[TEXT_MAX];
        int64_t value;
        if (!named(l, "Line"))
            continue;
        n++;
        if (!ktext(l, "LedgerCode", code, sizeof code) ||
            !json_object_get(x->set.gl_accounts, code)) {
            add_error(item, ERR_GL_CODE, "Ledger code '%s' not found in the general ledger", code);
            goto fail;
        }
        if (!ktext(l, "EntryType", type, sizeof type) ||
            (strcmp(type, "D") != 0 && strcmp(type, "C") != 0)) {
            add_error(item, ERR_FIELD, "Entry type '%s' for ledger code '%s' is invalid (D or C)",
                      type, code);
            goto fail;
        }
        if (!parse_amount(ktext(l, "EntryValue", value_text, sizeof value_text), x->set.currency, 0,
                          &value)) {
            add_error(item, ERR_VALUE_INVALID, "Entry value '%s' for ledger code '%s' is invalid",
                      value_text, code);
            goto fail;
        }
        if (pb_money_add(type[0] == 'D' ? debits : credits, value,
                         type[0] == 'D' ? &debits : &credits) != PB_OK) {
            add_error(item, ERR_VALUE_INVALID, "The journal's value is out of range");
            goto fail;
        }
        ktext(l, "Comment", comment, sizeof comment);
        json_array_append_new(lines,
                              json_pack("{s:s,s:s,s:s,s:I,s:s}", "LedgerCode", code, "EntryType",
                                        type, "EntryValue", value_text, "value_minor",
                                        (json_int_t)value, "Comment", comment));
    }
    if (n < 2) {
        add_error(item, ERR_FIELD, "A journal needs at least 2 lines, it has %ld", n);
        goto fail;
    }
    if (debits != credits) {
        char d[PB_MONEY_DECIMAL_MAX], cr[PB_MONEY_DECIMAL_MAX];
        pb_money_format_decimal(debits, x->set.currency, d, sizeof d, NULL);
        pb_money_format_decimal(credits, x->set.currency, cr, sizeof cr, NULL);
        add_error(item, ERR_UNBALANCED, "Journal is out of balance: debits %s, credits %s", d, cr);
        goto fail;
    }
    *staged = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:o}", "Reference", ref, "JournalDate", date,
                        "Notation", notation, "Currency", x->set.currency, "GlYear",
                        (int)strtol(date, NULL, 10), "GlPeriod", (int)strtol(date + 5, NULL, 10),
                        "Lines", lines);
    return *staged != NULL;
fail:
    json_decref(lines);
    return 0;
}

static void gentjl(struct emu *x, struct call *c, xmlNodePtr out_root)
{
    json_t *staged[64] = {0};
    xmlNodePtr items[64];
    size_t n = 0;
    long invalid = 0;
    int whole = yn(c->p, "ApplyIfEntireDocumentValid", 1),
        validate_only = yn(c->p, "ValidateOnly", 0), posted;

    for (xmlNodePtr it = c->root ? c->root->children : NULL; it && n < 64; it = it->next) {
        if (!named(it, "Item"))
            continue;
        items[n] = xmlNewChild(out_root, NULL, BAD_CAST "Item", NULL);
        if (!gentjl_check(x, it, items[n], &staged[n]))
            invalid++;
        n++;
    }
    if (n == 0)
        invalid = 1; /* end_staged() says why */
    posted = !validate_only && !(whole && invalid);
    if (posted) {
        for (size_t i = 0; i < n; i++) {
            long journal;
            if (!staged[i])
                continue;
            journal = x->next_gl_journal++;
            json_object_set_new(staged[i], "Journal", json_integer(journal));
            add_int(items[i], "GlYear", jint(staged[i], "GlYear"));
            add_int(items[i], "GlPeriod", jint(staged[i], "GlPeriod"));
            add_int(items[i], "Journal", journal);
            json_array_append(x->gl_journals, staged[i]);
        }
    }
    end_staged(x, out_root, items, staged, n, invalid, posted);
}

static void genqjl(struct emu *x, struct call *c, xmlNodePtr root)
{
    char ref[128];
    json_t *j, *l;
    size_t i, k, found = 0;

    if (!ktext(kid(c->root, "Key"), "Reference", ref, sizeof ref)) {
        add_error(root, ERR_FIELD, "Key needs a Reference");
        return;
    }
    json_array_foreach(x->gl_journals, i, j)
    {
        xmlNodePtr h, lines;
        if (strcmp(jstr(j, "Reference"), ref) != 0)
            continue;
        h = xmlNewChild(root, NULL, BAD_CAST "JournalHeader", NULL);
        add_int(h, "GlYear", jint(j, "GlYear"));
        add_int(h, "GlPeriod", jint(j, "GlPeriod"));
        add_int(h, "Journal", jint(j, "Journal"));
        add(h, "Reference", jstr(j, "Reference"));
        add(h, "JournalDate", jstr(j, "JournalDate"));
        add(h, "Notation", jstr(j, "Notation"));
        add(h, "Currency", jstr(j, "Currency"));
        lines = xmlNewChild(h, NULL, BAD_CAST "Lines", NULL);
        json_array_foreach(json_object_get(j, "Lines"), k, l)
        {
            xmlNodePtr line = xmlNewChild(lines, NULL, BAD_CAST "Line", NULL);
            add(line, "LedgerCode", jstr(l, "LedgerCode"));
            add(line, "EntryType", jstr(l, "EntryType"));
            add(line, "EntryValue", jstr(l, "EntryValue"));
            add(line, "Comment", jstr(l, "Comment"));
        }
        found++;
    }
    if (!found)
        add_error(root, ERR_JOURNAL_NOT_FOUND, "GL journal with reference '%s' not found", ref);
}

/* ==== routes ========================================================================== */

static struct emu *emu_of(void *arg)
{
    struct emu *x = arg;
    return x && x->magic == EMU_MAGIC ? x : NULL;
}

static enum pb_http_action h_logon(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct emu *x = emu_of(arg);
    const char *op = pb_http_query(req, "Operator"),
               *op_pw = pb_http_query(req, "OperatorPassword");
    const char *co = pb_http_query(req, "CompanyId"),
               *co_pw = pb_http_query(req, "CompanyPassword");
    unsigned char r[16];
    char id[SESSION_ID_LEN + 1];

    pthread_mutex_lock(&x->lock);
    x->n.requests++;
    x->n.status_200++;
    if (!co || strcasecmp(co, x->set.company_id) != 0 ||
        strcmp(co_pw ? co_pw : "", x->set.company_password) != 0) {
        x->n.failed_logons++;
        pthread_mutex_unlock(&x->lock);
        reply_text(resp, "ERROR: Invalid company id or company password");
        return PB_HTTP_DONE;
    }
    if (!op || strcasecmp(op, x->set.operator_code) != 0 ||
        strcmp(op_pw ? op_pw : "", x->set.operator_password) != 0) {
        x->n.failed_logons++;
        pthread_mutex_unlock(&x->lock);
        reply_text(resp, "ERROR: Invalid operator code or password");
        return PB_HTTP_DONE;
    }
    expire_sessions(x, time(NULL));
    if ((long)x->n_sessions >= x->set.max_sessions) {
        x->n.failed_logons++;
        pthread_mutex_unlock(&x->lock);
        reply_text(resp, "ERROR: No e.net licence is available: %ld sessions are logged on",
                   x->set.max_sessions);
        return PB_HTTP_DONE;
    }
    if (pb_random_bytes(r, sizeof r) != PB_OK)
        memset(r, 0x5a, sizeof r);
    snprintf(id, sizeof id,
             "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X  ", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14],
             r[15]);
    memcpy(x->sessions[x->n_sessions].id, id, sizeof id);
    x->sessions[x->n_sessions++].last_used = time(NULL);
    x->n.logons++;
    pthread_mutex_unlock(&x->lock);
    pb_http_response_set(resp, 200, "application/octet-stream", id, strlen(id));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_logoff(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct emu *x = emu_of(arg);
    const char *user = pb_http_query(req, "UserId");
    int found = 0;

    pthread_mutex_lock(&x->lock);
    x->n.requests++;
    x->n.status_200++;
    for (size_t i = 0; user && i < x->n_sessions; i++) {
        if (strcmp(x->sessions[i].id, user) == 0) {
            x->sessions[i] = x->sessions[--x->n_sessions];
            found = 1;
            x->n.logoffs++;
            break;
        }
    }
    if (!found)
        x->n.invalid_session++;
    pthread_mutex_unlock(&x->lock);
    if (found)
        pb_http_response_set(resp, 200, "application/octet-stream", "0", 1);
    else
        reply_text(resp, "ERROR: Invalid UserId: not logged on, or the session has expired");
    return PB_HTTP_DONE;
}

enum route_kind { ROUTE_POST, ROUTE_SETUP, ROUTE_QUERY };

static enum pb_http_action business(struct pb_http_request *req, struct pb_http_response *resp,
                                    struct emu *x, enum route_kind kind)
{
    struct call c;
    const char *user = pb_http_query(req, "UserId");
    xmlNodePtr root = NULL;
    xmlDocPtr out = NULL;
    enum reply_encoding enc;
    int lower;
    const char *bo;

    pthread_mutex_lock(&x->lock);
    x->n.requests++;
    x->n.status_200++;
    if (!session_ok(x, user)) {
        pthread_mutex_unlock(&x->lock);
        reply_text(resp, "ERROR: Invalid UserId: not logged on, or the session has expired");
        return PB_HTTP_DONE;
    }
    pthread_mutex_unlock(&x->lock);

    if (!parse_call(req, resp, kind != ROUTE_QUERY, &c))
        return PB_HTTP_DONE;
    bo = c.business_object;

    pthread_mutex_lock(&x->lock);
    enc = x->set.encoding;
    lower = x->set.lowercase;
    if (kind == ROUTE_POST && strcasecmp(bo, "SORTOI") == 0) {
        out = new_doc("SalesOrders", &root);
        xmlNewProp(root, BAD_CAST "Language", BAD_CAST "05");
        xmlNewProp(root, BAD_CAST "Version", BAD_CAST "8.0.000");
        sortoi(x, &c, root);
    } else if (kind == ROUTE_POST && strcasecmp(bo, "ARSTPY") == 0) {
        out = new_doc("PostArPayment", &root);
        arstpy(x, &c, root);
        lower = 1; /* this object answers in lower case */
    } else if (kind == ROUTE_POST && strcasecmp(bo, "ARSTIN") == 0) {
        out = new_doc("PostArInvoice", &root);
        arstin(x, &c, root);
    } else if (kind == ROUTE_SETUP && strcasecmp(bo, "ARSSCS") == 0) {
        out = new_doc("SetupArCustomer", &root);
        arsscs(x, &c, root);
    } else if (kind == ROUTE_QUERY && strcasecmp(bo, "ARSQRY") == 0) {
        out = new_doc("ArCustomerQuery", &root);
        arsqry(x, &c, root);
    } else if (kind == ROUTE_QUERY && strcasecmp(bo, "SORQRY") == 0) {
        out = new_doc("SalesOrderQuery", &root);
        sorqry(x, &c, root);
    } else if (kind == ROUTE_QUERY && strcasecmp(bo, "INVQRY") == 0) {
        out = new_doc("InvQuery", &root);
        invqry(x, &c, root);
    } else if (kind == ROUTE_POST && strcasecmp(bo, "GENTJL") == 0) {
        out = new_doc("PostGlJournal", &root);
        gentjl(x, &c, root);
    } else if (kind == ROUTE_QUERY && strcasecmp(bo, "ARSQPY") == 0) {
        out = new_doc("ArPaymentQuery", &root);
        arsqpy(x, &c, root);
    } else if (kind == ROUTE_QUERY && strcasecmp(bo, "GENQJL") == 0) {
        out = new_doc("GlJournalQuery", &root);
        genqjl(x, &c, root);
    }
    pthread_mutex_unlock(&x->lock);
    if (!out) {
        reply_text(resp,
                   "ERROR: Business object '%.32s' is not licensed for %s, or does not "
                   "exist",
                   bo,
                   kind == ROUTE_POST    ? "Transaction/Post"
                   : kind == ROUTE_SETUP ? "Setup/Add"
                                         : "Query/Query");
        call_free(&c);
        return PB_HTTP_DONE;
    }
    call_free(&c);
    reply_doc(resp, out, enc, lower);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_post(struct pb_http_request *req, struct pb_http_response *resp,
                                  void *arg)
{
    return business(req, resp, emu_of(arg), ROUTE_POST);
}

static enum pb_http_action h_setup(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    return business(req, resp, emu_of(arg), ROUTE_SETUP);
}

static enum pb_http_action h_query(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    return business(req, resp, emu_of(arg), ROUTE_QUERY);
}

/* ---- admin ---------------------------------------------------------------------------- */

static enum pb_http_action h_stats(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct emu *x = emu_of(arg);
    json_t *j;
    pthread_mutex_lock(&x->lock);
    expire_sessions(x, time(NULL));
    j = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I}}", "sessions",
        (json_int_t)x->n_sessions, "logons", (json_int_t)x->n.logons, "failed_logons",
        (json_int_t)x->n.failed_logons, "logoffs", (json_int_t)x->n.logoffs,
        "invalid_session_calls", (json_int_t)x->n.invalid_session, "userid_missing_spaces",
        (json_int_t)x->n.missing_spaces, "sales_orders", (json_int_t)json_array_size(x->orders),
        "ar_payments", (json_int_t)json_array_size(x->payments), "credit_notes",
        (json_int_t)json_array_size(x->credit_notes), "customers",
        (json_int_t)json_object_size(x->set.customers), "customers_added",
        (json_int_t)x->n.customers_added, "gl_journals",
        (json_int_t)json_array_size(x->gl_journals), "duplicate_customer_po_numbers",
        (json_int_t)x->n.duplicate_po, "business_errors", (json_int_t)x->n.business_errors,
        "requests", (json_int_t)x->n.requests, "responses", "200", (json_int_t)x->n.status_200);
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, j);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_orders(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct emu *x = emu_of(arg);
    json_t *j;
    pthread_mutex_lock(&x->lock);
    j = json_deep_copy(x->orders);
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, j);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_ledger(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct emu *x = emu_of(arg);
    json_t *j;
    pthread_mutex_lock(&x->lock);
    j = json_pack("{s:O,s:O,s:O,s:O}", "customers", x->set.customers, "ar_payments", x->payments,
                  "credit_notes", x->credit_notes, "gl_journals", x->gl_journals);
    if (j) {
        json_t *copy = json_deep_copy(j);
        json_decref(j);
        j = copy;
    }
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, j);
    return PB_HTTP_DONE;
}

static void clear_records(struct emu *x)
{
    json_array_clear(x->orders);
    json_object_clear(x->po_index);
    json_array_clear(x->payments);
    json_array_clear(x->credit_notes);
    json_array_clear(x->gl_journals);
    x->n_sessions = 0;
    x->next_order = 1;
    x->next_journal = 1;
    x->next_credit = 1;
    x->next_gl_journal = 1;
    x->next_key = 1;
    memset(&x->n, 0, sizeof x->n);
}

static enum pb_http_action h_reset(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct emu *x = emu_of(arg);
    struct emu_settings defaults, fresh;
    struct pb_err err = {0};

    settings_defaults(&defaults);
    if (settings_merge(&defaults, x->start_settings, &fresh, &err) != PB_OK) {
        settings_free(&defaults);
        pb_http_response_error(resp, 500, "internal", "%s", err.msg);
        return PB_HTTP_DONE;
    }
    settings_free(&defaults);
    pthread_mutex_lock(&x->lock);
    settings_free(&x->set);
    x->set = fresh;
    clear_records(x);
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, json_pack("{s:b}", "reset", 1));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_settings(struct pb_http_request *req, struct pb_http_response *resp,
                                      void *arg)
{
    struct emu *x = emu_of(arg);
    struct emu_settings fresh;
    struct pb_err err = {0};
    json_error_t jerr;
    json_t *patch = json_loadb(req->body ? req->body : "", req->body_len, 0, &jerr);

    if (!json_is_object(patch)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "POST /_sandbox/settings needs a JSON object");
        return PB_HTTP_DONE;
    }
    pthread_mutex_lock(&x->lock);
    if (settings_merge(&x->set, patch, &fresh, &err) != PB_OK) {
        pthread_mutex_unlock(&x->lock);
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "%s", err.msg);
        return PB_HTTP_DONE;
    }
    settings_free(&x->set);
    x->set = fresh;
    pthread_mutex_unlock(&x->lock);
    json_decref(patch);
    reply_json(resp, 200, json_pack("{s:b}", "ok", 1));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_expire(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct emu *x = emu_of(arg);
    size_t n;
    pthread_mutex_lock(&x->lock);
    n = x->n_sessions;
    x->n_sessions = 0;
    pthread_mutex_unlock(&x->lock);
    reply_json(resp, 200, json_pack("{s:I}", "expired", (json_int_t)n));
    return PB_HTTP_DONE;
}

/* ==== the type ========================================================================= */

static void emu_destroy(void *state)
{
    struct emu *x = emu_of(state);
    if (!x)
        return;
    x->magic = 0;
    settings_free(&x->set);
    json_decref(x->start_settings);
    json_decref(x->orders);
    json_decref(x->po_index);
    json_decref(x->payments);
    json_decref(x->credit_notes);
    json_decref(x->gl_journals);
    free(x->sessions);
    pthread_mutex_destroy(&x->lock);
    free(x);
}

static void *emu_create(json_t *settings, struct pb_err *err)
{
    struct emu *x = calloc(1, sizeof *x);
    struct emu_settings defaults;
    static const struct {
        const char *method, *pattern;
        pb_http_handler handler;
    } table[] = {
        {"GET", REST "/logon", h_logon},
        {"GET", REST "/Logon", h_logon},
        {"GET", REST "/Logoff", h_logoff},
        {"GET", REST "/logoff", h_logoff},
        {"GET", REST "/Transaction/Post", h_post},
        {"GET", REST "/Setup/Add", h_setup},
        {"GET", REST "/Query/Query", h_query},
        {"GET", "/_sandbox/stats", h_stats},
        {"GET", "/_sandbox/orders", h_orders},
        {"GET", "/_sandbox/ledger", h_ledger},
        {"POST", "/_sandbox/reset", h_reset},
        {"POST", "/_sandbox/settings", h_settings},
        {"POST", "/_sandbox/expire_sessions", h_expire},
    };
    size_t i;

    if (!x) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    xmlInitParser();
    settings_defaults(&defaults);
    if (settings_merge(&defaults, settings, &x->set, err) != PB_OK) {
        settings_free(&defaults);
        free(x);
        return NULL;
    }
    settings_free(&defaults);
    x->start_settings = settings ? json_deep_copy(settings) : json_object();
    x->sessions = calloc(SESSIONS_MAX, sizeof *x->sessions);
    x->orders = json_array();
    x->po_index = json_object();
    x->payments = json_array();
    x->credit_notes = json_array();
    x->gl_journals = json_array();
    if (!x->start_settings || !x->sessions || !x->orders || !x->po_index || !x->payments ||
        !x->credit_notes || !x->gl_journals || pthread_mutex_init(&x->lock, NULL) != 0) {
        settings_free(&x->set);
        json_decref(x->start_settings);
        json_decref(x->orders);
        json_decref(x->po_index);
        json_decref(x->payments);
        json_decref(x->credit_notes);
        json_decref(x->gl_journals);
        free(x->sessions);
        free(x);
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    clear_records(x);
    for (i = 0; i < sizeof table / sizeof table[0]; i++)
        x->routes[i] =
            (struct pb_http_route){table[i].method, table[i].pattern, table[i].handler, x};
    x->routes[i] = (struct pb_http_route){NULL, NULL, NULL, NULL};
    x->magic = EMU_MAGIC;
    return x;
}

static const struct pb_http_route *emu_routes(void *state)
{
    struct emu *x = emu_of(state);
    return x ? x->routes : NULL;
}

const struct sbx_emulator_type sbx_syspro_type = {
    .name = "syspro",
    .create = emu_create,
    .routes = emu_routes,
    .started = NULL,
    .destroy = emu_destroy,
};
