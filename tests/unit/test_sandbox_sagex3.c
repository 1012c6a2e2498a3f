/*
 * tests/unit/test_sandbox_sagex3.c: the Sage X3 SOAP emulator
 * (sandbox/sagex3.c) on its own, over real HTTP on loopback with libcurl,
 * with envelopes written out by hand, the way a SoapUI user would send them.
 * The connector is not involved, so these tests pin the emulator's wire
 * format and business rules independently of the code that uses them.
 *
 * The emulator is started directly (sbx_sagex3_type.create + pb_httpd on
 * port 0), because the sandbox framework's registry is not ours to edit.
 * Every test starts with POST /_sandbox/reset. Replies are parsed with
 * libxml2: status, the messages joined, and the resultXml parsed again.
 *
 * Covered: the WSDL; 401 without or with wrong Basic credentials; Client
 * Faults for a body that is not XML, not SOAP, or an unknown operation;
 * BPC save/read/duplicate/modify/query; SOH validation (item, site,
 * customer) and numbering; ALASTO allocation, its repeat and a shortage;
 * PAY validation (account, type, order) and its link to the SOH; GACC
 * balance; duplicate_references; objectXml as CDATA; a hostile value round
 * trip; the injections (Server Fault, busy pool, lost reply, "after");
 * settings refusals; reset. Reconciliation: ACCDAT (defaulted to today,
 * checked), closed periods, and queries by a date range (>=, <=), by NUM
 * after the last of a page (>), by reference, within listSize.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "net/httpd.h"
#include "pbtest.h"
#include "sbx.h"

extern const struct sbx_emulator_type sbx_sagex3_type;

#define SOAP_PATH "/soap-generic/syracuse/collaboration/syracuse/CAdxWebServiceXmlCC"

static struct pbt_env sb;

/* ---- HTTP ---------------------------------------------------------------------------------- */

struct reply {
    long status;
    char *body;
    size_t len;
    char headers[2048];
    /* parsed SOAP result */
    int x3_status; /* -1 when not a result */
    int busy;
    char messages[2048]; /* "type:message|type:message" */
    char *result;        /* resultXml text, or NULL */
    char fault[512];     /* "code: string" of a Fault */
};

static const char *lname(const xmlNode *n)
{
    return n && n->type == XML_ELEMENT_NODE ? (const char *)n->name : "";
}

static xmlNode *kid(const xmlNode *p, const char *name)
{
    for (xmlNode *k = p ? p->children : NULL; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && (!name || strcmp((const char *)k->name, name) == 0))
            return k;
    return NULL;
}

static char *content(const xmlNode *n)
{
    xmlChar *c = n ? xmlNodeGetContent(n) : NULL;
    char *s = strdup(c ? (const char *)c : "");
    if (c)
        xmlFree(c);
    return s;
}

static void parse_soap(struct reply *r)
{
    xmlDocPtr d;
    xmlNode *body, *first, *ret;
    r->x3_status = -1;
    if (!r->body)
        return;
    d = xmlReadMemory(r->body, (int)r->len, NULL, NULL, XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!d)
        return;
    body = kid(xmlDocGetRootElement(d), "Body");
    first = kid(body, NULL);
    if (strcmp(lname(first), "Fault") == 0) {
        char *code = content(kid(first, "faultcode")), *text = content(kid(first, "faultstring"));
        snprintf(r->fault, sizeof r->fault, "%s: %s", code, text);
        free(code);
        free(text);
    } else if ((ret = kid(first, NULL)) != NULL) {
        char *st = content(kid(ret, "status"));
        char *busy = content(kid(kid(ret, "technicalInfos"), "busy"));
        r->x3_status = st[0] ? (int)strtol(st, NULL, 10) : -1;
        r->busy = strcmp(busy, "true") == 0;
        free(st);
        free(busy);
        for (xmlNode *m = kid(kid(ret, "messages"), NULL); m; m = m->next) {
            char *t, *msg;
            size_t used = strlen(r->messages);
            if (m->type != XML_ELEMENT_NODE)
                continue;
            t = content(kid(m, "type"));
            msg = content(kid(m, "message"));
            snprintf(r->messages + used, sizeof r->messages - used, "%s%s:%s", used ? "|" : "", t,
                     msg);
            free(t);
            free(msg);
        }
        r->result = content(kid(ret, "resultXml"));
        if (!r->result[0]) {
            free(r->result);
            r->result = NULL;
        }
    }
    xmlFreeDoc(d);
}

static void reply_free(struct reply *r)
{
    free(r->body);
    free(r->result);
    memset(r, 0, sizeof *r);
}

static void http(struct reply *r, const char *method, const char *path, const char *userpwd,
                 const char *body)
{
    static const char *const headers[] = {"Content-Type: text/xml; charset=utf-8",
                                          "SOAPAction: \"\"", NULL};
    struct pbt_http_opts opts = {.headers = headers, .userpwd = userpwd};
    struct pbt_reply h;

    memset(r, 0, sizeof *r);
    pbt_http(sb.port, method, path, &opts, body, &h);
    r->status = h.status;
    r->body = h.body;
    r->len = h.len;
    snprintf(r->headers, sizeof r->headers, "%s", h.headers);
    h.body = NULL;
    pbt_reply_free(&h);
    parse_soap(r);
}
/* One operation. `params` is the XML after publicName (objectKeys,
 * objectXml, listSize), written out literally. */
static void soap(struct reply *r, const char *op, const char *public_name, const char *params)
{
    char body[16384];
    snprintf(body, sizeof body,
             "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" "
             "xmlns:wss=\"http://www.adonix.com/WSS\"><soapenv:Header/><soapenv:Body><wss:%s>"
             "<callContext><codeLang>ENG</codeLang><poolAlias>SEED</poolAlias><poolId/>"
             "<requestConfig>adxwss.optreturn=XML</requestConfig></callContext>"
             "<publicName>%s</publicName>%s</wss:%s></soapenv:Body></soapenv:Envelope>",
             op, public_name, params, op);
    http(r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r->status, 200);
}

static void expect_status(const struct reply *r, int status)
{
    if (r->x3_status != status)
        fail_msg("expected status %d, got %d (messages: %s; body: %.600s)", status, r->x3_status,
                 r->messages, r->body ? r->body : "");
}

static long admin(const char *method, const char *path, const char *body, json_t **out)
{
    struct reply r;
    long s;
    http(&r, method, path, NULL, body);
    s = r.status;
    if (out)
        *out = r.body ? json_loads(r.body, 0, NULL) : NULL;
    reply_free(&r);
    return s;
}

static long long stat_of(const char *key)
{
    return pbt_stat(sb.port, key);
}
/* ---- fixture ------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    return pbt_env_emulator(&sb, &sbx_sagex3_type,
                            json_pack("{s:{s:i,s:i}}", "stock", "ITM-100", 3, "ITM-200", 10),
                            8u << 20);
}
static int group_teardown(void **state)
{
    pbt_env_stop(&sb);
    return 0;
}
static int test_setup(void **state)
{
    assert_int_equal(admin("POST", "/_sandbox/reset", "{}", NULL), 200);
    return 0;
}

#define BPC_XML(num, name)                                                                         \
    "<objectXml>&lt;PARAM&gt;&lt;GRP ID=\"BPC0_1\"&gt;&lt;FLD NAME=\"BPCNUM\"&gt;" num             \
    "&lt;/FLD&gt;&lt;FLD NAME=\"BPCNAM\"&gt;" name "&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;"        \
    "</objectXml>"

/* An order (objectXml as CDATA, as SoapUI users write it). */
#define SOH_XML(site, customer, ref, item, qty)                                                    \
    "<objectXml><![CDATA[<PARAM><GRP ID=\"SOH0_1\"><FLD NAME=\"SALFCY\">" site                     \
    "</FLD><FLD NAME=\"BPCORD\">" customer "</FLD><FLD NAME=\"CUSORDREF\">" ref                    \
    "</FLD></GRP><TAB ID=\"SOH4_1\"><LIN NUM=\"1\"><FLD NAME=\"ITMREF\">" item                     \
    "</FLD><FLD NAME=\"QTY\">" qty "</FLD><FLD NAME=\"GROPRI\">10.99</FLD></LIN></TAB></PARAM>]]>" \
    "</objectXml>"

#define PAY_XML(typ, acc, order, ref)                                                              \
    "<objectXml><![CDATA[<PARAM><GRP ID=\"PAY0_1\"><FLD NAME=\"PAYTYP\">" typ                      \
    "</FLD><FLD NAME=\"BPR\">C001</FLD><FLD NAME=\"ACC\">5120000</FLD><FLD NAME=\"AMTCUR\">21.98"  \
    "</FLD><FLD NAME=\"REF\">" ref "</FLD></GRP><TAB ID=\"PAY1_1\"><LIN NUM=\"1\">"                \
    "<FLD NAME=\"ACC\">" acc "</FLD><FLD NAME=\"VCRNUM\">" order "</FLD></LIN></TAB></PARAM>]]>"   \
    "</objectXml>"

static void save_customer(void)
{
    struct reply r;
    soap(&r, "save", "BPC", BPC_XML("C001", "Ann Smith"));
    expect_status(&r, 1);
    reply_free(&r);
}

/* Save an order of `qty` ITM-100; its SOHNUM into out. */
static void save_order(const char *ref_params, char *out, size_t len)
{
    struct reply r;
    const char *p, *e;
    soap(&r, "save", "SOH", ref_params);
    expect_status(&r, 1);
    p = strstr(r.result, "<FLD NAME=\"SOHNUM\"");
    assert_non_null(p);
    p = strchr(p, '>') + 1;
    e = strchr(p, '<');
    snprintf(out, len, "%.*s", (int)(e - p), p);
    reply_free(&r);
}

/* ---- the tests ------------------------------------------------------------------------------ */

static void test_wsdl(void **state)
{
    struct reply r;
    char loc[128];
    http(&r, "GET", "/soap-wsdl/syracuse/collaboration/syracuse/CAdxWebServiceXmlCC?wsdl", NULL,
         NULL);
    assert_int_equal(r.status, 200);
    assert_contains(r.body, "targetNamespace=\"http://www.adonix.com/WSS\"");
    assert_contains(r.body, "<wsdl:operation name=\"save\">");
    snprintf(loc, sizeof loc, "location=\"http://127.0.0.1:%d" SOAP_PATH "\"", sb.port);
    assert_contains(r.body, loc);
    reply_free(&r);
}

static void test_basic_auth(void **state)
{
    struct reply r;
    http(&r, "POST", SOAP_PATH, NULL, "<x/>");
    assert_int_equal(r.status, 401);
    assert_contains(r.headers, "WWW-Authenticate: Basic realm=\"Sage X3\"");
    reply_free(&r);
    http(&r, "POST", SOAP_PATH, "admin:wrong", "<x/>");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3x", "<x/>");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    assert_int_equal(stat_of("unauthorized"), 3);
    assert_int_equal(stat_of("customers"), 0);
}

static void test_client_faults(void **state)
{
    struct reply r;
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", "this is not xml");
    assert_int_equal(r.status, 500);
    assert_contains(r.fault, "soapenv:Client: Malformed SOAP request");
    reply_free(&r);
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", "<Envelope><Body/></Envelope>");
    assert_int_equal(r.status, 500);
    assert_contains(r.fault, "Not a SOAP 1.1 envelope");
    reply_free(&r);
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3",
         "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>"
         "<w:explode xmlns:w=\"http://www.adonix.com/WSS\"/></s:Body></s:Envelope>");
    assert_int_equal(r.status, 500);
    assert_contains(r.fault, "No such operation: explode");
    reply_free(&r);
    /* a DTD is refused (no entity expansion) */
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3",
         "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><x>&a;</x>");
    assert_int_equal(r.status, 500);
    assert_contains(r.fault, "a DTD is not accepted");
    reply_free(&r);
    assert_int_equal(stat_of("soap_faults"), 4);
}

static void test_bpc_save_read_duplicate_modify_query(void **state)
{
    struct reply r;

    save_customer();
    soap(&r, "save", "BPC", BPC_XML("C001", "Ann Again"));
    expect_status(&r, 0);
    assert_contains(r.messages, "3:BPCNUM C001 : record already exists");
    reply_free(&r);
    soap(&r, "save", "BPC", BPC_XML("C0000000000000012", "Too Long"));
    expect_status(&r, 0);
    assert_contains(r.messages, "too long");
    reply_free(&r);
    soap(&r, "read", "BPC",
         "<objectKeys><item><key>BPCNUM</key><value>C001</value></item>"
         "</objectKeys>");
    expect_status(&r, 1);
    assert_contains(r.result, "<FLD NAME=\"BPCNAM\" TYPE=\"Char\">Ann Smith</FLD>");
    reply_free(&r);
    soap(&r, "read", "YBPC",
         "<objectKeys><item><key>BPCNUM</key><value>C404</value></item>"
         "</objectKeys>");
    expect_status(&r, 0);
    assert_contains(r.messages, "3:BPCNUM C404 : record does not exist");
    reply_free(&r);
    soap(&r, "modify", "BPC",
         "<objectKeys><item><key>BPCNUM</key><value>C001</value></item></objectKeys>"
         "<objectXml>&lt;PARAM&gt;&lt;GRP ID=\"BPC0_1\"&gt;&lt;FLD NAME=\"BPCNAM\"&gt;Ann "
         "Jones&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;</objectXml>");
    expect_status(&r, 1);
    assert_contains(r.result, ">Ann Jones<");
    reply_free(&r);
    /* a save without a number is numbered */
    soap(&r, "save", "BPC",
         "<objectXml>&lt;PARAM&gt;&lt;GRP ID=\"BPC0_1\"&gt;&lt;FLD NAME=\"BPCNAM\"&gt;Bob"
         "&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;</objectXml>");
    expect_status(&r, 1);
    assert_contains(r.result, ">C000001<");
    reply_free(&r);
    soap(&r, "query", "BPC",
         "<objectKeys><item><key>BPCNAM</key><value>Ann Jones</value></item>"
         "</objectKeys><listSize>10</listSize>");
    expect_status(&r, 1);
    assert_contains(r.result, "<LIN NUM=\"1\">");
    assert_contains(r.result, ">C001<");
    assert_null(strstr(r.result, "LIN NUM=\"2\""));
    reply_free(&r);
    assert_int_equal(stat_of("customers"), 2);
    assert_int_equal(stat_of("duplicate_keys_refused"), 1);
    assert_int_equal(stat_of("modifications"), 1);
}

static void test_soh_rules_and_numbering(void **state)
{
    struct reply r;
    char num[64];

    save_customer();
    soap(&r, "save", "SOH", SOH_XML("FR011", "C001", "ORD-1", "ITM-999", "1"));
    expect_status(&r, 0);
    assert_contains(r.messages, "3:ITMREF ITM-999 : record does not exist");
    reply_free(&r);
    soap(&r, "save", "SOH", SOH_XML("XX999", "C404", "ORD-1", "ITM-100", "0"));
    expect_status(&r, 0);
    assert_contains(r.messages, "SALFCY XX999 : record does not exist");
    assert_contains(r.messages, "BPCORD C404 : record does not exist");
    assert_contains(r.messages, "QTY 0 : must be greater than 0");
    reply_free(&r);
    assert_int_equal(stat_of("sales_orders"), 0);
    save_order(SOH_XML("FR011", "C001", "ORD-1", "ITM-100", "2"), num, sizeof num);
    assert_string_equal(num, "SONFR011-000001");
    soap(&r, "query", "YOSOH",
         "<objectKeys><item><key>CUSORDREF</key><value>ORD-1</value></item>"
         "</objectKeys><listSize>5</listSize>");
    expect_status(&r, 1);
    assert_contains(r.result, ">SONFR011-000001<");
    reply_free(&r);
    /* a second order with the same reference is saved (X3 does not refuse it) and counted */
    save_order(SOH_XML("US011", "C001", "ORD-1", "ITM-200", "1"), num, sizeof num);
    assert_string_equal(num, "SONUS011-000002");
    assert_int_equal(stat_of("sales_orders"), 2);
    assert_int_equal(stat_of("duplicate_references"), 1);
}

static void test_allocation(void **state)
{
    struct reply r;
    char num[64], params[512], first[64];
    json_t *recs;

    save_customer();
    save_order(SOH_XML("FR011", "C001", "ORD-1", "ITM-100", "2"), num, sizeof num);
    snprintf(params, sizeof params,
             "<inputXml>&lt;PARAM&gt;&lt;GRP ID=\"GRP1\"&gt;&lt;FLD NAME=\"SOHNUM\"&gt;%s"
             "&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;</inputXml>",
             num);
    soap(&r, "run", "ALASTO", params);
    expect_status(&r, 1);
    assert_contains(r.result, "<FLD NAME=\"ALLNUM\" TYPE=\"Char\">ALL0000001</FLD>");
    snprintf(first, sizeof first, "%s", "ALL0000001");
    reply_free(&r);
    soap(&r, "run", "ALASTO", params);
    expect_status(&r, 1);
    assert_contains(r.messages, "1:Order SONFR011-000001 : already allocated (ALL0000001)");
    assert_contains(r.result, first);
    reply_free(&r);
    assert_int_equal(stat_of("allocations"), 1);
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &recs), 200);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(recs, "stock"), "ITM-100")), "1.00");
    json_decref(recs);

    /* 2 more of ITM-100: only 1 left */
    save_order(SOH_XML("FR011", "C001", "ORD-2", "ITM-100", "2"), num, sizeof num);
    snprintf(params, sizeof params,
             "<inputXml>&lt;PARAM&gt;&lt;GRP ID=\"GRP1\"&gt;&lt;FLD NAME=\"SOHNUM\"&gt;%s"
             "&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;</inputXml>",
             num);
    soap(&r, "run", "ALASTO", params);
    expect_status(&r, 0);
    assert_contains(
        r.messages,
        "ITMREF ITM-100 : insufficient stock at FR011 (available 1.00, requested 2.00)");
    reply_free(&r);
    soap(&r, "save", "ALASTO", params);
    expect_status(&r, 0);
    assert_contains(r.messages, "ALASTO is a sub-program: call it with run");
    reply_free(&r);
    assert_int_equal(stat_of("allocations"), 1);
}

static void test_payment_rules_and_link(void **state)
{
    struct reply r;
    char num[64], params[1024];
    json_t *recs, *pay;

    save_customer();
    save_order(SOH_XML("US011", "C001", "ORD-1", "ITM-200", "2"), num, sizeof num);
    snprintf(params, sizeof params, PAY_XML("CC", "4119999", "%s", "PT-1"), num);
    soap(&r, "save", "PAY", params);
    expect_status(&r, 0);
    assert_contains(r.messages, "3:Account 4119999 : invalid");
    reply_free(&r);
    snprintf(params, sizeof params, PAY_XML("WIRE", "4110000", "%s", "PT-1"), "SON-NONE");
    soap(&r, "save", "PAY", params);
    expect_status(&r, 0);
    assert_contains(r.messages, "PAYTYP WIRE : record does not exist");
    assert_contains(r.messages, "Order SON-NONE : record does not exist");
    reply_free(&r);
    snprintf(params, sizeof params, PAY_XML("ACH", "4110000", "%s", "PT-1"), num);
    soap(&r, "save", "PAY", params);
    expect_status(&r, 1);
    assert_contains(r.result, ">PAY0000001<");
    reply_free(&r);
    assert_int_equal(stat_of("payments"), 1);
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &recs), 200);
    pay = json_array_get(json_object_get(recs, "payments"), 0);
    assert_string_equal(json_string_value(json_object_get(pay, "order")), num);
    assert_string_equal(json_string_value(json_object_get(pay, "reference")), "PT-1");
    assert_string_equal(
        json_string_value(json_array_get(
            json_object_get(json_array_get(json_object_get(recs, "sales_orders"), 0), "payments"),
            0)),
        "PAY0000001");
    json_decref(recs);
}

static void test_journal_balance(void **state)
{
    struct reply r;
    soap(&r, "save", "GACC",
         "<objectXml><![CDATA[<PARAM><GRP ID=\"GACC0_1\"><FLD NAME=\"REF\">RF-1</FLD></GRP>"
         "<TAB ID=\"GACC1_1\"><LIN NUM=\"1\"><FLD NAME=\"ACC\">7070000</FLD><FLD NAME=\"DEB\">"
         "10.5</FLD></LIN><LIN NUM=\"2\"><FLD NAME=\"ACC\">4110000</FLD><FLD NAME=\"CDT\">10.49"
         "</FLD></LIN></TAB></PARAM>]]></objectXml>");
    expect_status(&r, 0);
    assert_contains(r.messages, "Entry not balanced: debit 10.50, credit 10.49");
    reply_free(&r);
    soap(&r, "save", "GACC",
         "<objectXml><![CDATA[<PARAM><GRP ID=\"GACC0_1\"><FLD NAME=\"REF\">RF-1</FLD></GRP>"
         "<TAB ID=\"GACC1_1\"><LIN NUM=\"1\"><FLD NAME=\"ACC\">7070000</FLD><FLD NAME=\"DEB\">"
         "10.50</FLD></LIN><LIN NUM=\"2\"><FLD NAME=\"ACC\">4110000</FLD><FLD NAME=\"CDT\">10.5"
         "</FLD></LIN></TAB></PARAM>]]></objectXml>");
    expect_status(&r, 1);
    assert_contains(r.result, ">JNL0000001<");
    reply_free(&r);
    assert_int_equal(stat_of("journals"), 1);
}

static void test_hostile_round_trip(void **state)
{
    /* BPCNAM = a]]>b</FLD><FLD NAME="BPCNUM">X&amp; sent escaped; read back through CDATA */
    struct reply r;
    json_t *recs;
    soap(
        &r, "save", "BPC",
        "<objectXml>&lt;PARAM&gt;&lt;GRP ID=\"BPC0_1\"&gt;&lt;FLD NAME=\"BPCNUM\"&gt;C9&lt;/FLD&gt;"
        "&lt;FLD NAME=\"BPCNAM\"&gt;a]]&amp;gt;b&amp;lt;/FLD&amp;gt;&amp;lt;FLD "
        "NAME=\"BPCNUM\"&amp;gt;X&amp;amp;amp;&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;</objectXml>");
    expect_status(&r, 1);
    reply_free(&r);
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &recs), 200);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(
                json_object_get(json_array_get(json_object_get(recs, "customers"), 0), "record"),
                "BPC0_1"),
            "BPCNAM")),
        "a]]>b</FLD><FLD NAME=\"BPCNUM\">X&amp;");
    json_decref(recs);
    soap(&r, "read", "BPC",
         "<objectKeys><item><key>BPCNUM</key><value>C9</value></item>"
         "</objectKeys>");
    expect_status(&r, 1);
    assert_contains(r.result, "a]]&gt;b&lt;/FLD&gt;&lt;FLD NAME=\"BPCNUM\"&gt;X&amp;amp;");
    reply_free(&r);
}

/* A save of one customer, as a raw envelope. */
static void customer_envelope(char *body, size_t len, const char *num)
{
    snprintf(body, len,
             "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" "
             "xmlns:wss=\"http://www.adonix.com/WSS\"><soapenv:Body><wss:save><callContext>"
             "<codeLang>ENG</codeLang><poolAlias>SEED</poolAlias></callContext><publicName>"
             "BPC</publicName><objectXml>&lt;PARAM&gt;&lt;GRP ID=\"BPC0_1\"&gt;&lt;FLD "
             "NAME=\"BPCNUM\"&gt;%s&lt;/FLD&gt;&lt;FLD NAME=\"BPCNAM\"&gt;Name&lt;/FLD&gt;"
             "&lt;/GRP&gt;&lt;/PARAM&gt;</objectXml></wss:save></soapenv:Body></soapenv:Envelope>",
             num);
}

static void test_injections(void **state)
{
    struct reply r;
    char body[1024];

    /* a Server Fault for the next call only; nothing is saved by it */
    assert_int_equal(admin("POST", "/_sandbox/inject", "{\"soap_fault\":1}", NULL), 200);
    customer_envelope(body, sizeof body, "C001");
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r.status, 500);
    assert_contains(r.fault, "soapenv:Server: Internal error");
    reply_free(&r);
    assert_int_equal(stat_of("customers"), 0);
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r.status, 200);
    expect_status(&r, 1);
    reply_free(&r);
    assert_int_equal(stat_of("customers"), 1);

    /* a busy pool: status 0, technicalInfos busy, nothing saved */
    assert_int_equal(admin("POST", "/_sandbox/inject", "{\"pool_busy\":1}", NULL), 200);
    soap(&r, "save", "BPC", BPC_XML("C002", "Bob"));
    expect_status(&r, 0);
    assert_true(r.busy);
    assert_contains(r.messages, "No Web Service connection available in pool SEED");
    reply_free(&r);
    assert_int_equal(stat_of("customers"), 1);

    /* a lost reply: done, answered 502 without SOAP; a malformed call does not use it up */
    assert_int_equal(admin("POST", "/_sandbox/inject", "{\"drop_reply\":1}", NULL), 200);
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", "<x/>");
    assert_int_equal(r.status, 500);
    reply_free(&r);
    customer_envelope(body, sizeof body, "C003");
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r.status, 502);
    assert_int_equal(r.x3_status, -1);
    reply_free(&r);
    assert_int_equal(stat_of("customers"), 2);

    assert_int_equal(admin("POST", "/_sandbox/inject", "{\"explode\":1}", NULL), 400);
    assert_int_equal(admin("POST", "/_sandbox/inject", "[]", NULL), 400);
}

/* A GACC of 10.00 (7070000 debit, 4110000 credit); ACCDAT omitted when "". */
static void save_journal(const char *ref, const char *accdat, int status, const char *words)
{
    struct reply r;
    char params[1024], date[64] = "";
    if (accdat[0])
        snprintf(date, sizeof date, "<FLD NAME=\"ACCDAT\">%s</FLD>", accdat);
    snprintf(params, sizeof params,
             "<objectXml><![CDATA[<PARAM><GRP ID=\"GACC0_1\"><FLD NAME=\"REF\">%s</FLD>%s"
             "<FLD NAME=\"CUR\">USD</FLD></GRP><TAB ID=\"GACC1_1\"><LIN NUM=\"1\">"
             "<FLD NAME=\"ACC\">7070000</FLD><FLD NAME=\"DEB\">10.00</FLD></LIN><LIN NUM=\"2\">"
             "<FLD NAME=\"ACC\">4110000</FLD><FLD NAME=\"CDT\">10.00</FLD></LIN></TAB></PARAM>]]>"
             "</objectXml>",
             ref, date);
    soap(&r, "save", "GACC", params);
    expect_status(&r, status);
    if (words)
        assert_contains(r.messages, words);
    reply_free(&r);
}

/* A GACC query with objectKeys (key, value pairs, NULL-terminated). */
static void query_journals(struct reply *r, int list_size, ...)
{
    char params[2048];
    size_t used = 0;
    const char *k;
    va_list ap;
    used += (size_t)snprintf(params, sizeof params, "<objectKeys>");
    va_start(ap, list_size);
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        used += (size_t)snprintf(params + used, sizeof params - used,
                                 "<item><key>%s</key><value>%s</value></item>", k, v);
    }
    va_end(ap);
    snprintf(params + used, sizeof params - used, "</objectKeys><listSize>%d</listSize>",
             list_size);
    soap(r, "query", "GACC", params);
    expect_status(r, 1);
}

static int count_lines(const struct reply *r)
{
    int n = 0;
    for (const char *p = r->result; p && (p = strstr(p, "<LIN ")); p++)
        n++;
    return n;
}

static void test_accounting_dates_and_range_query(void **state)
{
    struct reply r;
    json_t *recs;
    char today[16];
    time_t now = time(NULL);
    struct tm tm;

    save_journal("RF-1", "20010301", 1, NULL);
    save_journal("RF-2", "20010305", 1, NULL);
    save_journal("RF-3", "20010401", 1, NULL);
    save_journal("RF-4", "", 1, NULL);
    save_journal("RF-5", "20010230", 0, "ACCDAT 20010230 : invalid date");
    save_journal("RF-6", "2001-03-01", 0, "ACCDAT 2001-03-01 : invalid date");
    assert_int_equal(stat_of("journals"), 4);

    /* X3 dates an entry without ACCDAT today */
    gmtime_r(&now, &tm);
    strftime(today, sizeof today, "%Y%m%d", &tm);
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &recs), 200);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(
                json_object_get(json_array_get(json_object_get(recs, "journals"), 3), "record"),
                "GACC0_1"),
            "ACCDAT")),
        today);
    json_decref(recs);

    /* a range: the two of March 2001, in the order of their numbers */
    query_journals(&r, 10, "ACCDAT", "&gt;=20010301", "ACCDAT", "&lt;=20010331", NULL);
    assert_int_equal(count_lines(&r), 2);
    assert_contains(r.result, ">JNL0000001<");
    assert_contains(r.result, ">JNL0000002<");
    assert_true(strstr(r.result, ">JNL0000001<") < strstr(r.result, ">JNL0000002<"));
    assert_null(strstr(r.result, ">JNL0000003<"));
    assert_contains(r.result, "<FLD NAME=\"ACCDAT\" TYPE=\"Char\">20010305</FLD>");
    reply_free(&r);
    /* listSize bounds a page; the next page starts after its last number */
    query_journals(&r, 1, "ACCDAT", "&gt;=20010301", "ACCDAT", "&lt;=20010331", NULL);
    assert_int_equal(count_lines(&r), 1);
    assert_contains(r.result, ">JNL0000001<");
    reply_free(&r);
    query_journals(&r, 1, "ACCDAT", "&gt;=20010301", "ACCDAT", "&lt;=20010331", "NUM",
                   "&gt;JNL0000001", NULL);
    assert_int_equal(count_lines(&r), 1);
    assert_contains(r.result, ">JNL0000002<");
    reply_free(&r);
    query_journals(&r, 1, "ACCDAT", "&gt;=20010301", "ACCDAT", "&lt;=20010331", "NUM",
                   "&gt;JNL0000002", NULL);
    assert_int_equal(count_lines(&r), 0);
    reply_free(&r);
    /* < and an equal reference */
    query_journals(&r, 10, "ACCDAT", "&lt;20010305", NULL);
    assert_int_equal(count_lines(&r), 1);
    assert_contains(r.result, ">RF-1<");
    reply_free(&r);
    query_journals(&r, 10, "REF", "RF-3", NULL);
    assert_int_equal(count_lines(&r), 1);
    assert_contains(r.result, ">JNL0000003<");
    reply_free(&r);
}

static void test_closed_before_setting(void **state)
{
    struct pb_err err = {0};
    json_t *s = json_pack("{s:s}", "closed_before", "2026-01-01");
    assert_null(sbx_sagex3_type.create(s, &err));
    assert_contains(err.msg, "closed_before: must be a date YYYYMMDD");
    json_decref(s);
    s = json_pack("{s:s}", "closed_before", "20260101");
    {
        void *emu = sbx_sagex3_type.create(s, &err);
        assert_non_null(emu);
        sbx_sagex3_type.destroy(emu);
    }
    json_decref(s);
}

static void test_inject_after(void **state)
{
    struct reply r;
    char body[1024];

    /* one call answered as usual, then the Fault */
    assert_int_equal(admin("POST", "/_sandbox/inject", "{\"soap_fault\":1,\"after\":1}", NULL),
                     200);
    customer_envelope(body, sizeof body, "C001");
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r.status, 200);
    expect_status(&r, 1);
    reply_free(&r);
    customer_envelope(body, sizeof body, "C002");
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r.status, 500);
    assert_contains(r.fault, "soapenv:Server");
    reply_free(&r);
    customer_envelope(body, sizeof body, "C002");
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    assert_int_equal(stat_of("customers"), 2);
}

static void test_wrong_pool_and_public_name(void **state)
{
    struct reply r;
    char body[1024];
    snprintf(body, sizeof body,
             "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" "
             "xmlns:wss=\"http://www.adonix.com/WSS\"><soapenv:Body><wss:read><callContext>"
             "<codeLang>ENG</codeLang><poolAlias>PROD</poolAlias></callContext><publicName>BPC"
             "</publicName></wss:read></soapenv:Body></soapenv:Envelope>");
    http(&r, "POST", SOAP_PATH, "admin:sandbox-x3", body);
    expect_status(&r, 0);
    assert_contains(r.messages, "Pool alias PROD : does not exist");
    reply_free(&r);
    soap(&r, "save", "ZZZ", BPC_XML("C001", "Ann"));
    expect_status(&r, 0);
    assert_contains(r.messages, "Web service ZZZ : not published");
    reply_free(&r);
    soap(&r, "delete", "BPC", "");
    expect_status(&r, 0);
    assert_contains(r.messages, "delete : not emulated");
    reply_free(&r);
}

static void test_settings_refused(void **state)
{
    struct pb_err err = {0};
    json_t *s = json_pack("{s:i}", "itemz", 1);
    assert_null(sbx_sagex3_type.create(s, &err));
    assert_contains(err.msg, "itemz: unknown setting");
    json_decref(s);
    s = json_pack("{s:{s:i}}", "stock", "ITM-100", -1);
    assert_null(sbx_sagex3_type.create(s, &err));
    assert_contains(err.msg, "stock.ITM-100");
    json_decref(s);
    s = json_pack("{s:s}", "username", "a:b");
    assert_null(sbx_sagex3_type.create(s, &err));
    assert_contains(err.msg, "username");
    json_decref(s);
}

static void test_reset_restores_stock(void **state)
{
    json_t *recs;
    char num[64], params[512];
    struct reply r;
    save_customer();
    save_order(SOH_XML("FR011", "C001", "ORD-1", "ITM-200", "4"), num, sizeof num);
    snprintf(params, sizeof params,
             "<inputXml>&lt;PARAM&gt;&lt;GRP ID=\"GRP1\"&gt;&lt;FLD NAME=\"SOHNUM\"&gt;%s"
             "&lt;/FLD&gt;&lt;/GRP&gt;&lt;/PARAM&gt;</inputXml>",
             num);
    soap(&r, "run", "ALASTO", params);
    expect_status(&r, 1);
    reply_free(&r);
    assert_int_equal(admin("POST", "/_sandbox/reset", "{}", NULL), 200);
    assert_int_equal(stat_of("customers"), 0);
    assert_int_equal(stat_of("allocations"), 0);
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &recs), 200);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(recs, "stock"), "ITM-200")), "10.00");
    json_decref(recs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_wsdl, test_setup),
        cmocka_unit_test_setup(test_basic_auth, test_setup),
        cmocka_unit_test_setup(test_client_faults, test_setup),
        cmocka_unit_test_setup(test_bpc_save_read_duplicate_modify_query, test_setup),
        cmocka_unit_test_setup(test_soh_rules_and_numbering, test_setup),
        cmocka_unit_test_setup(test_allocation, test_setup),
        cmocka_unit_test_setup(test_payment_rules_and_link, test_setup),
        cmocka_unit_test_setup(test_journal_balance, test_setup),
        cmocka_unit_test_setup(test_hostile_round_trip, test_setup),
        cmocka_unit_test_setup(test_injections, test_setup),
        cmocka_unit_test_setup(test_wrong_pool_and_public_name, test_setup),
        cmocka_unit_test_setup(test_settings_refused, test_setup),
        cmocka_unit_test_setup(test_reset_restores_stock, test_setup),
        cmocka_unit_test_setup(test_accounting_dates_and_range_query, test_setup),
        cmocka_unit_test_setup(test_closed_before_setting, test_setup),
        cmocka_unit_test_setup(test_inject_after, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
