/*
 * tests/unit/test_sandbox_syspro.c: the SYSPRO e.net REST emulator
 * (sandbox/syspro.c) over real HTTP on loopback, with plain libcurl, so that
 * what is checked is the wire and not the connector's reading of it.
 *
 * The emulator is started on its own (sbx_syspro_type.create, pb_httpd on
 * port 0, a thread per connection), not through pb_sandbox_start(), so the
 * test does not depend on the framework's table. Every test starts with
 * POST /_sandbox/reset. Covered: the logon reply (GUID + two spaces,
 * octet-stream), a refused logon, a UserId without its two spaces refused and
 * counted, SORTOI create / unknown stock code / duplicate CustomerPoNumber,
 * ARSTPY with an invalid customer (lower-case reply) and applied to an order
 * (over-applying refused), ARSSCS + ARSQRY with a hostile name, ARSTIN
 * credit notes (over-crediting refused), SORQRY by CustomerPoNumber, the
 * Windows-1252 bytes of "£", the undeclared and UTF-8 encodings, expired
 * sessions, logoff, unknown business objects, settings validation and reset;
 * for reconciliation, AR payments and credit notes read back by date through
 * ARSQPY, two at a time, and GL journals through GENTJL (balanced, at least
 * two lines, codes of the configured chart, open periods), stored, numbered
 * and found by Reference through GENQJL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "net/httpd.h"
#include "pbtest.h"
#include "syspro.h"

static struct pbt_env sx;

/* method + raw path (already escaped) */
static void http(const char *method, const char *path, const char *body, struct pbt_reply *r)
{
    pbt_http(sx.port, method, path, NULL, body, r);
}
static char *esc(const char *s)
{
    char *e = curl_easy_escape(NULL, s, 0);
    char *copy = strdup(e);
    curl_free(e);
    return copy;
}

static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}
/* Log on; the session id (with its two spaces) into out. */
static void logon(char *out, size_t len)
{
    struct pbt_reply r;
    http("GET",
         "/SYSPROWCFService/Rest/logon?Operator=ADMIN&OperatorPassword=sandbox-op&CompanyId=EDU1"
         "&CompanyPassword=",
         NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 38);
    assert_true(r.len < len);
    memcpy(out, r.body, r.len + 1);
    pbt_reply_free(&r);
}

/* One business call; raw XML in, reply out. */
static void bo(const char *op, const char *session, const char *object, const char *params,
               const char *xml_in, struct pbt_reply *r)
{
    char *u = esc(session), *p = esc(params ? params : ""), *x = esc(xml_in);
    char *path = malloc(strlen(u) + strlen(p) + strlen(x) + 256);
    snprintf(path, strlen(u) + strlen(p) + strlen(x) + 256,
             "/SYSPROWCFService/Rest/%s?UserId=%s&BusinessObject=%s&XmlParameters=%s&XmlIn=%s", op,
             u, object, p, x);
    http("GET", path, NULL, r);
    free(path);
    free(u);
    free(p);
    free(x);
}

#define ORDER(customer, po, stock, qty, price)                                                     \
    "<SalesOrders><Orders><OrderHeader><OrderActionType>A</OrderActionType><Customer>" customer    \
    "</Customer><CustomerPoNumber>" po "</CustomerPoNumber><OrderDate>2026-11-21</OrderDate>"      \
    "</OrderHeader><OrderDetails><StockLine><CustomerPoLine>1</CustomerPoLine><LineActionType>A"   \
    "</LineActionType><StockCode>" stock "</StockCode><OrderQty>" qty "</OrderQty><Price>" price   \
    "</Price></StockLine></OrderDetails></Orders></SalesOrders>"

/* ---- fixture ------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    json_t *settings = json_loads(
        "{\"company_id\":\"EDU1\",\"company_password\":\"\",\"operator\":\"ADMIN\","
        "\"operator_password\":\"sandbox-op\",\"session_ttl_s\":3600,"
        "\"stock_codes\":[\"A100\",{\"StockCode\":\"B100\",\"Description\":\"Widget\","
        "\"Price\":\"4.50\"},\"C100\",\"SHIP\"],"
        "\"customers\":[{\"Customer\":\"0000001\",\"Name\":\"Caf\\u00e9 \\u00a3 "
        "Ltd\"},\"0000002\"],"
        "\"encoding\":\"windows-1252\",\"banks\":[\"BANK1\"],"
        "\"invoices\":[{\"Invoice\":\"INV900\",\"Customer\":\"0000002\",\"Balance\":\"20.00\"}]}",
        0, NULL);
    return pbt_env_emulator(&sx, &sbx_syspro_type, settings, 1u << 20);
}
static int group_teardown(void **state)
{
    pbt_env_stop(&sx);
    return 0;
}
static int test_setup(void **state)
{
    struct pbt_reply r;
    http("POST", "/_sandbox/reset", "{}", &r);
    assert_int_equal(r.status, 200);
    pbt_reply_free(&r);
    return 0;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_settings_are_checked(void **state)
{
    struct pb_err err = {0};
    json_t *bad = json_pack("{s:s}", "encodng", "utf-8");
    struct pbt_reply r;
    assert_null(sbx_syspro_type.create(bad, &err));
    assert_contains(err.msg, "encodng");
    json_decref(bad);
    bad = json_pack("{s:s}", "duplicate_po", "sometimes");
    assert_null(sbx_syspro_type.create(bad, &err));
    assert_contains(err.msg, "duplicate_po");
    json_decref(bad);
    http("POST", "/_sandbox/settings", "{\"currency\":\"XXQ\"}", &r);
    assert_int_equal(r.status, 400);
    pbt_reply_free(&r);
}

static void test_logon_reply_has_two_trailing_spaces(void **state)
{
    struct pbt_reply r;
    http("GET",
         "/SYSPROWCFService/Rest/logon?Operator=ADMIN&OperatorPassword=sandbox-op&CompanyId=EDU1"
         "&CompanyPassword=",
         NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 38);
    assert_string_equal(r.body + 36, "  ");
    assert_int_equal(r.body[8], '-');
    assert_contains(r.content_type, "application/octet-stream");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("sessions"), 1);
    assert_int_equal(stat_of("logons"), 1);
}

static void test_bad_password_is_error_in_200(void **state)
{
    struct pbt_reply r;
    http("GET",
         "/SYSPROWCFService/Rest/logon?Operator=ADMIN&OperatorPassword=wrong&CompanyId=EDU1"
         "&CompanyPassword=",
         NULL, &r);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(r.body, "ERROR:", 6) == 0);
    pbt_reply_free(&r);
    http("GET",
         "/SYSPROWCFService/Rest/logon?Operator=ADMIN&OperatorPassword=sandbox-op&CompanyId=NOPE"
         "&CompanyPassword=",
         NULL, &r);
    assert_true(strncmp(r.body, "ERROR:", 6) == 0);
    pbt_reply_free(&r);
    assert_int_equal(stat_of("failed_logons"), 2);
    assert_int_equal(stat_of("sessions"), 0);
}

static void test_trimmed_userid_is_refused(void **state)
{
    char session[64], trimmed[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    memcpy(trimmed, session, 36);
    trimmed[36] = '\0';
    bo("Transaction/Post", trimmed, "SORTOI", NULL, ORDER("0000001", "PO-1", "A100", "1", "1.00"),
       &r);
    assert_int_equal(r.status, 200);
    assert_contains(r.body, "ERROR: Invalid UserId");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("userid_missing_spaces"), 1);
    assert_int_equal(stat_of("sales_orders"), 0);
    /* with the spaces, as %20%20 */
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-1", "A100", "1", "1.00"),
       &r);
    assert_contains(r.body, "<SalesOrder>000001</SalesOrder>");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("sales_orders"), 1);
}

static void test_sortoi_creates_and_reports_in_1252(void **state)
{
    char session[64];
    struct pbt_reply r;
    json_t *orders, *o;
    logon(session, sizeof session);
    bo("Transaction/Post", session, "SORTOI",
       "<SalesOrders><Parameters><Process>IMPORT</Process>"
       "</Parameters></SalesOrders>",
       ORDER("0000001", "ORDER-10023", "A100", "2", "10.99"), &r);
    assert_contains(r.body, "encoding=\"windows-1252\"");
    assert_contains(r.body, "<SalesOrder>000001</SalesOrder>");
    assert_contains(r.body, "<CustomerPoNumber>ORDER-10023</CustomerPoNumber>");
    assert_contains(r.body, "<OrderValue>21.98</OrderValue>");
    assert_contains(r.body, "<RecordsInvalid>0</RecordsInvalid>");
    /* "Café £ Ltd": é is 0xE9 and £ is 0xA3 in Windows-1252, and never UTF-8's C2 A3 */
    assert_contains(r.body, "Caf\xe9 \xa3 Ltd");
    assert_lacks(r.body, "\xc2\xa3");
    pbt_reply_free(&r);
    http("GET", "/_sandbox/orders", NULL, &r);
    orders = json_loads(r.body, 0, NULL);
    o = json_array_get(orders, 0);
    assert_string_equal(json_string_value(json_object_get(o, "CustomerPoNumber")), "ORDER-10023");
    assert_string_equal(json_string_value(json_object_get(o, "OrderValue")), "21.98");
    assert_string_equal(json_string_value(json_object_get(o, "CustomerName")),
                        "Caf\xc3\xa9 \xc2\xa3 Ltd");
    json_decref(orders);
    pbt_reply_free(&r);
}

static void test_sortoi_business_errors(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-X", "XYZ", "1", "1.00"),
       &r);
    assert_int_equal(r.status, 200);
    assert_contains(r.body, "<ErrorDescription>Stock code 'XYZ' not found</ErrorDescription>");
    assert_contains(r.body, "<ErrorNumber>");
    assert_contains(r.body, "<RecordsInvalid>1</RecordsInvalid>");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("ZZZ", "PO-X", "A100", "1", "1.00"), &r);
    assert_contains(r.body, "Customer 'ZZZ' not found");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-X", "A100", "1.5", "2.00"),
       &r);
    assert_contains(r.body, "<OrderValue>3.00</OrderValue>");
    pbt_reply_free(&r);
    /* the same CustomerPoNumber again is refused and counted */
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-X", "A100", "1", "2.00"),
       &r);
    assert_contains(r.body, "Customer purchase order number 'PO-X' already exists");
    assert_contains(r.body, "sales order '000001'");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("sales_orders"), 1);
    assert_int_equal(stat_of("duplicate_customer_po_numbers"), 1);
    assert_int_equal(stat_of("business_errors"), 3);
    /* SORQRY finds it by CustomerPoNumber */
    bo("Query/Query", session, "SORQRY", NULL,
       "<Query><Key><Customer>0000001</Customer><CustomerPoNumber>PO-X</CustomerPoNumber></Key>"
       "</Query>",
       &r);
    assert_contains(r.body, "<SalesOrder>000001</SalesOrder>");
    pbt_reply_free(&r);
    bo("Query/Query", session, "SORQRY", NULL,
       "<Query><Key><Customer>0000001</Customer><CustomerPoNumber>PO-NONE</CustomerPoNumber>"
       "</Key></Query>",
       &r);
    assert_contains(r.body, "not found");
    pbt_reply_free(&r);
}

static void test_arstpy_lower_case_and_applied(void **state)
{
    char session[64];
    struct pbt_reply r;
    const char *params = "<PostArPayment><Parameters><PostingPeriod>C</PostingPeriod>"
                         "<IgnoreWarnings>N</IgnoreWarnings><ApplyIfEntireDocumentValid>Y"
                         "</ApplyIfEntireDocumentValid><ValidateOnly>N</ValidateOnly></Parameters>"
                         "</PostArPayment>";
    logon(session, sizeof session);
    bo("Transaction/Post", session, "ARSTPY", params,
       "<PostArPayment><Item><Payment><Customer>ZZZ</Customer><PaymentValue>10.00</PaymentValue>"
       "<Bank>BANK1</Bank><Reference>R1</Reference></Payment></Item></PostArPayment>",
       &r);
    assert_contains(r.body, "<errordescription>Customer 'ZZZ' is invalid</errordescription>");
    assert_contains(r.body, "<recordsinvalid>1</recordsinvalid>");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("ar_payments"), 0);

    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-P", "A100", "1", "10.99"),
       &r);
    pbt_reply_free(&r);
    /* over-applying the order's 10.99 is refused */
    bo("Transaction/Post", session, "ARSTPY", params,
       "<PostArPayment><Item><Payment><Customer>0000001</Customer><PaymentValue>11.00"
       "</PaymentValue><Bank>BANK1</Bank><Reference>R2</Reference><InvoiceToPay><Invoice>000001"
       "</Invoice><PaymentValue>11.00</PaymentValue></InvoiceToPay></Payment></Item>"
       "</PostArPayment>",
       &r);
    assert_contains(r.body, "exceeds the balance 10.99 of invoice '000001'");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTPY", params,
       "<PostArPayment><Item><Payment><Customer>0000001</Customer><PaymentValue>10.99"
       "</PaymentValue><Bank>BANK1</Bank><Reference>R2</Reference><InvoiceToPay><Invoice>000001"
       "</Invoice><PaymentValue>10.99</PaymentValue></InvoiceToPay></Payment></Item>"
       "</PostArPayment>",
       &r);
    assert_contains(r.body, "<journal>1</journal>");
    assert_contains(r.body, "<entry>1</entry>");
    pbt_reply_free(&r);
    /* a bad bank */
    bo("Transaction/Post", session, "ARSTPY", params,
       "<PostArPayment><Item><Payment><Customer>0000001</Customer><PaymentValue>1.00"
       "</PaymentValue><Bank>NOPE</Bank><Reference>R3</Reference></Payment></Item>"
       "</PostArPayment>",
       &r);
    assert_contains(r.body, "Bank 'NOPE' is invalid");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("ar_payments"), 1);
    /* the payment is listed with the customer's transactions */
    bo("Query/Query", session, "ARSQRY", NULL,
       "<Query><Key><Customer>0000001</Customer></Key><Option><IncludeTransactions>Y"
       "</IncludeTransactions></Option></Query>",
       &r);
    assert_contains(r.body, "<Reference>R2</Reference>");
    assert_contains(r.body, "<Balance>0.00</Balance>");
    pbt_reply_free(&r);
    /* only the transactions of one reference */
    bo("Query/Query", session, "ARSQRY", NULL,
       "<Query><Key><Customer>0000001</Customer></Key><Option><IncludeTransactions>Y"
       "</IncludeTransactions><TransactionReference>OTHER</TransactionReference></Option></Query>",
       &r);
    assert_contains(r.body, "<Transactions/>");
    assert_lacks(r.body, "<Reference>R2</Reference>");
    pbt_reply_free(&r);
}

static void test_customer_setup_escapes_and_queries(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    bo("Setup/Add", session, "ARSSCS", NULL,
       "<SetupArCustomer><Item><Key><Customer>WEB0001</Customer></Key><Name>Ann &lt;&amp;&gt; "
       "\xc3\xa9\xc2\xa3</Name><Email>ann@example.com</Email></Item></SetupArCustomer>",
       &r);
    assert_contains(r.body, "<RecordsInvalid>0</RecordsInvalid>");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("customers_added"), 1);
    bo("Setup/Add", session, "ARSSCS", NULL,
       "<SetupArCustomer><Item><Key><Customer>WEB0001</Customer></Key><Name>Again</Name></Item>"
       "</SetupArCustomer>",
       &r);
    assert_contains(r.body, "Customer 'WEB0001' already exists");
    pbt_reply_free(&r);
    bo("Query/Query", session, "ARSQRY", NULL,
       "<Query><Key><Customer>WEB0001</Customer></Key></Query>", &r);
    assert_contains(r.body, "<Name>Ann &lt;&amp;&gt; \xe9\xa3</Name>");
    pbt_reply_free(&r);
    bo("Query/Query", session, "ARSQRY", NULL,
       "<Query><Key><Customer>NOBODY</Customer></Key></Query>", &r);
    assert_contains(r.body, "Customer 'NOBODY' not found");
    pbt_reply_free(&r);
    bo("Query/Query", session, "INVQRY", NULL,
       "<Query><Key><StockCode>B100</StockCode></Key></Query>", &r);
    assert_contains(r.body, "<Price>4.50</Price>");
    pbt_reply_free(&r);
}

static void test_credit_notes(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-C", "A100", "1", "10.00"),
       &r);
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTIN", NULL,
       "<PostArInvoice><Item><Invoice><Customer>0000001</Customer><DocumentType>C</DocumentType>"
       "<InvoiceValue>12.00</InvoiceValue><Reference>RF-1</Reference><OriginalDocument>000001"
       "</OriginalDocument></Invoice></Item></PostArInvoice>",
       &r);
    assert_contains(r.body, "exceeds the uncredited value 10.00 of document '000001'");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTIN", NULL,
       "<PostArInvoice><Item><Invoice><Customer>0000001</Customer><DocumentType>C</DocumentType>"
       "<InvoiceValue>4.00</InvoiceValue><Reference>RF-1</Reference><OriginalDocument>000001"
       "</OriginalDocument></Invoice></Item></PostArInvoice>",
       &r);
    assert_contains(r.body, "<Invoice>CN000001</Invoice>");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("credit_notes"), 1);
}

static void test_encodings(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    http("POST", "/_sandbox/settings", "{\"encoding\":\"windows-1252-undeclared\"}", &r);
    assert_int_equal(r.status, 200);
    pbt_reply_free(&r);
    bo("Query/Query", session, "ARSQRY", NULL,
       "<Query><Key><Customer>0000001</Customer></Key></Query>", &r);
    assert_lacks(r.body, "<?xml");
    assert_contains(r.body, "Caf\xe9 \xa3 Ltd");
    pbt_reply_free(&r);
    http("POST", "/_sandbox/settings", "{\"encoding\":\"utf-8\",\"lowercase_replies\":true}", &r);
    pbt_reply_free(&r);
    bo("Query/Query", session, "ARSQRY", NULL,
       "<Query><Key><Customer>0000001</Customer></Key></Query>", &r);
    assert_contains(r.body, "encoding=\"UTF-8\"");
    assert_contains(r.body, "<name>Caf\xc3\xa9 \xc2\xa3 Ltd</name>");
    pbt_reply_free(&r);
}

static void test_sessions_expire_and_log_off(void **state)
{
    char session[64], path[256];
    struct pbt_reply r;
    char *u;
    logon(session, sizeof session);
    http("POST", "/_sandbox/expire_sessions", "{}", &r);
    pbt_reply_free(&r);
    bo("Query/Query", session, "INVQRY", NULL,
       "<Query><Key><StockCode>A100</StockCode></Key></Query>", &r);
    assert_contains(r.body, "ERROR: Invalid UserId");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("invalid_session_calls"), 1);
    logon(session, sizeof session);
    u = esc(session);
    snprintf(path, sizeof path, "/SYSPROWCFService/Rest/Logoff?UserId=%s", u);
    free(u);
    http("GET", path, NULL, &r);
    assert_string_equal(r.body, "0");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("logoffs"), 1);
    assert_int_equal(stat_of("sessions"), 0);
}

static void test_malformed_requests_get_error_text(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    bo("Transaction/Post", session, "SORTOX", NULL, "<x/>", &r);
    assert_true(strncmp(r.body, "ERROR:", 6) == 0);
    assert_contains(r.body, "SORTOX");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "SORTOI", NULL, "<SalesOrders><unclosed>", &r);
    assert_contains(r.body, "ERROR: XmlIn");
    pbt_reply_free(&r);
}

static void test_reset_forgets(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    bo("Transaction/Post", session, "SORTOI", NULL, ORDER("0000001", "PO-R", "A100", "1", "1.00"),
       &r);
    pbt_reply_free(&r);
    http("POST", "/_sandbox/settings", "{\"customers\":[\"0000009\"]}", &r);
    pbt_reply_free(&r);
    assert_int_equal(stat_of("customers"), 1);
    http("POST", "/_sandbox/reset", "{}", &r);
    pbt_reply_free(&r);
    assert_int_equal(stat_of("sales_orders"), 0);
    assert_int_equal(stat_of("sessions"), 0);
    assert_int_equal(stat_of("customers"), 2);
}

/* ---- reconciliation: ARSQPY, GENTJL, GENQJL ------------------------------------------------ */

#define PAYMENT(customer, value, ref, date)                                                        \
    "<PostArPayment><Item><Payment><Customer>" customer "</Customer><PaymentValue>" value          \
    "</PaymentValue><Bank>BANK1</Bank><Reference>" ref "</Reference><PaymentDate>" date            \
    "</PaymentDate></Payment></Item></PostArPayment>"

#define JOURNAL(ref, date, lines)                                                                  \
    "<PostGlJournal><Item><Header><JournalDate>" date "</JournalDate><Reference>" ref              \
    "</Reference><Notation>batch 1</Notation></Header>" lines "</Item></PostGlJournal>"

#define LINE(code, type, value)                                                                    \
    "<Line><LedgerCode>" code "</LedgerCode><EntryType>" type "</EntryType><EntryValue>" value     \
    "</EntryValue><Comment>c</Comment></Line>"

static void test_payments_queryable_by_date_and_paged(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);
    bo("Transaction/Post", session, "ARSTPY", NULL,
       PAYMENT("0000001", "10.00", "D-1", "2026-03-01"), &r);
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTPY", NULL,
       PAYMENT("0000002", "20.00", "D-2", "2026-03-02"), &r);
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTPY", NULL,
       PAYMENT("0000001", "30.00", "D-3", "2026-03-09"), &r);
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTIN", NULL,
       "<PostArInvoice><Item><Invoice><Customer>0000001</Customer><DocumentType>C</DocumentType>"
       "<InvoiceValue>4.00</InvoiceValue><Reference>RF-D</Reference><InvoiceDate>2026-03-02"
       "</InvoiceDate></Invoice></Item></PostArInvoice>",
       &r);
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "ARSTPY", NULL, PAYMENT("0000001", "1.00", "D-X", "2026-02-30"),
       &r);
    assert_contains(r.body, "<errordescription>Payment date '2026-02-30' is invalid");
    pbt_reply_free(&r);

    /* the first week, two at a time */
    bo("Query/Query", session, "ARSQPY", NULL,
       "<Query><Option><DateFrom>2026-03-01</DateFrom><DateTo>2026-03-07</DateTo>"
       "<MaxRecords>2</MaxRecords></Option></Query>",
       &r);
    assert_int_equal(r.status, 200);
    assert_contains(r.body, "<Reference>D-1</Reference>");
    assert_contains(r.body, "<TrnDate>2026-03-01</TrnDate>");
    assert_contains(r.body, "<Value>10.00</Value>");
    assert_contains(r.body, "<Currency>GBP</Currency>");
    assert_contains(r.body, "<Reference>D-2</Reference>");
    assert_lacks(r.body, "RF-D");
    assert_contains(r.body, "<MoreRecords>Y</MoreRecords>");
    assert_contains(r.body, "<LastKey>00000002</LastKey>");
    pbt_reply_free(&r);
    bo("Query/Query", session, "ARSQPY", NULL,
       "<Query><Option><DateFrom>2026-03-01</DateFrom><DateTo>2026-03-07</DateTo>"
       "<MaxRecords>2</MaxRecords><StartAfterKey>00000002</StartAfterKey></Option></Query>",
       &r);
    assert_contains(r.body, "<DocumentType>C</DocumentType>");
    assert_contains(r.body, "<Invoice>CN000001</Invoice>");
    assert_contains(r.body, "<Value>4.00</Value>");
    assert_lacks(r.body, "D-3"); /* 9 March */
    assert_lacks(r.body, "D-1");
    assert_contains(r.body, "<RecordsReturned>1</RecordsReturned>");
    assert_contains(r.body, "<MoreRecords>N</MoreRecords>");
    pbt_reply_free(&r);
    /* payments only */
    bo("Query/Query", session, "ARSQPY", NULL,
       "<Query><Option><IncludeCreditNotes>N</IncludeCreditNotes></Option></Query>", &r);
    assert_contains(r.body, "<RecordsReturned>3</RecordsReturned>");
    assert_lacks(r.body, "RF-D");
    pbt_reply_free(&r);
    bo("Query/Query", session, "ARSQPY", NULL,
       "<Query><Option><DateFrom>March</DateFrom></Option></Query>", &r);
    assert_contains(r.body, "DateFrom 'March' is invalid");
    pbt_reply_free(&r);
}

static void test_gl_journals_validated_stored_and_queried(void **state)
{
    char session[64];
    struct pbt_reply r;
    logon(session, sizeof session);

    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-1", "2026-03-02",
               LINE("1000", "D", "97.00") LINE("6100", "D", "3.00") LINE("1100", "C", "100.00")),
       &r);
    assert_int_equal(r.status, 200);
    assert_contains(r.body, "<GlYear>2026</GlYear>");
    assert_contains(r.body, "<GlPeriod>3</GlPeriod>");
    assert_contains(r.body, "<Journal>1</Journal>");
    assert_contains(r.body, "<RecordsInvalid>0</RecordsInvalid>");
    pbt_reply_free(&r);

    /* refusals, in SYSPRO's style */
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-2", "2026-03-02", LINE("1000", "D", "97.00") LINE("1100", "C", "100.00")), &r);
    assert_contains(r.body, "Journal is out of balance: debits 97.00, credits 100.00");
    assert_contains(r.body, "<RecordsInvalid>1</RecordsInvalid>");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-3", "2026-03-02", LINE("1000", "D", "1.00")), &r);
    assert_contains(r.body, "A journal needs at least 2 lines, it has 1");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-4", "2026-03-02", LINE("4999", "D", "1.00") LINE("1100", "C", "1.00")), &r);
    assert_contains(r.body, "Ledger code '4999' not found in the general ledger");
    assert_contains(r.body, "<ErrorNumber>20120</ErrorNumber>");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-5", "2026-03-02", LINE("1000", "X", "1.00") LINE("1100", "C", "1.00")), &r);
    assert_contains(r.body, "Entry type 'X' for ledger code '1000' is invalid");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-6", "2026-03-02", LINE("1000", "D", "1.001") LINE("1100", "C", "1.001")), &r);
    assert_contains(r.body, "Entry value '1.001' for ledger code '1000' is invalid");
    pbt_reply_free(&r);

    /* the chart and the closed periods are settings */
    http("POST", "/_sandbox/settings",
         "{\"gl_accounts\":[\"1000\",{\"Account\":\"4999\",\"Description\":\"Suspense\"}],"
         "\"gl_closed_periods\":[\"2026-03\"]}",
         &r);
    assert_int_equal(r.status, 200);
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-7", "2026-03-31", LINE("1000", "D", "1.00") LINE("4999", "C", "1.00")), &r);
    assert_contains(r.body, "GL period 2026/03 is closed for posting");
    pbt_reply_free(&r);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-8", "2026-04-01", LINE("1000", "D", "1.00") LINE("4999", "C", "1.00")), &r);
    assert_contains(r.body, "<Journal>2</Journal>");
    pbt_reply_free(&r);
    /* a repeated Reference is not refused: a second journal */
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-8", "2026-04-01", LINE("1000", "D", "1.00") LINE("4999", "C", "1.00")), &r);
    assert_contains(r.body, "<Journal>3</Journal>");
    pbt_reply_free(&r);
    assert_int_equal(stat_of("gl_journals"), 3);

    bo("Query/Query", session, "GENQJL", NULL,
       "<Query><Key><Reference>J-1</Reference></Key></Query>", &r);
    assert_contains(r.body, "<JournalHeader>");
    assert_contains(r.body, "<Journal>1</Journal>");
    assert_contains(r.body, "<LedgerCode>6100</LedgerCode>");
    assert_contains(r.body, "<EntryValue>97.00</EntryValue>");
    assert_lacks(r.body, "ErrorDescription");
    pbt_reply_free(&r);
    bo("Query/Query", session, "GENQJL", NULL,
       "<Query><Key><Reference>J-8</Reference></Key></Query>", &r);
    assert_contains(r.body, "<Journal>2</Journal>");
    assert_contains(r.body, "<Journal>3</Journal>");
    pbt_reply_free(&r);
    bo("Query/Query", session, "GENQJL", NULL,
       "<Query><Key><Reference>J-2</Reference></Key></Query>", &r);
    assert_contains(r.body, "GL journal with reference 'J-2' not found");
    pbt_reply_free(&r);

    /* bad settings change nothing */
    http("POST", "/_sandbox/settings", "{\"gl_closed_periods\":[\"2026-13\"]}", &r);
    assert_int_equal(r.status, 400);
    assert_contains(r.body, "gl_closed_periods[0]");
    pbt_reply_free(&r);
    http("POST", "/_sandbox/settings", "{\"gl_accounts\":[\"\"]}", &r);
    assert_int_equal(r.status, 400);
    pbt_reply_free(&r);

    /* reset forgets journals, the chart change and the closed period */
    http("POST", "/_sandbox/reset", "{}", &r);
    pbt_reply_free(&r);
    assert_int_equal(stat_of("gl_journals"), 0);
    logon(session, sizeof session);
    bo("Transaction/Post", session, "GENTJL", NULL,
       JOURNAL("J-9", "2026-03-31", LINE("6900", "D", "0.02") LINE("1100", "C", "0.02")), &r);
    assert_contains(r.body, "<Journal>1</Journal>");
    pbt_reply_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_settings_are_checked, test_setup),
        cmocka_unit_test_setup(test_logon_reply_has_two_trailing_spaces, test_setup),
        cmocka_unit_test_setup(test_bad_password_is_error_in_200, test_setup),
        cmocka_unit_test_setup(test_trimmed_userid_is_refused, test_setup),
        cmocka_unit_test_setup(test_sortoi_creates_and_reports_in_1252, test_setup),
        cmocka_unit_test_setup(test_sortoi_business_errors, test_setup),
        cmocka_unit_test_setup(test_arstpy_lower_case_and_applied, test_setup),
        cmocka_unit_test_setup(test_customer_setup_escapes_and_queries, test_setup),
        cmocka_unit_test_setup(test_credit_notes, test_setup),
        cmocka_unit_test_setup(test_encodings, test_setup),
        cmocka_unit_test_setup(test_sessions_expire_and_log_off, test_setup),
        cmocka_unit_test_setup(test_malformed_requests_get_error_text, test_setup),
        cmocka_unit_test_setup(test_reset_forgets, test_setup),
        cmocka_unit_test_setup(test_payments_queryable_by_date_and_paged, test_setup),
        cmocka_unit_test_setup(test_gl_journals_validated_stored_and_queried, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
