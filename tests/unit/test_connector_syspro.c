/*
 * tests/unit/test_connector_syspro.c: the SYSPRO sink connector
 * (src/connectors/syspro/) against the sandbox's SYSPRO emulator, plus a raw
 * socket server for what the emulator cannot show or be made to do.
 *
 * Emulator (sbx_syspro_type started on its own pb_httpd, port 0, a thread per
 * connection; the connector called through pb_connector_syspro directly):
 * settings validation; one logon reused and ended by Logoff on destroy; a
 * refused logon (transient, with what to check, and no second logon inside
 * logon_retry_s); an expired session answered by one new logon; SORTOI with
 * CustomerPoNumber and a held order; a StockCode not found and an invalid
 * customer on ARSTPY as PB_ERR_PERMANENT with SYSPRO's words; attempt 2 of an
 * order, a payment and a credit note finding the record and posting nothing
 * (emulator stats); an order already in SYSPRO recognised through the
 * duplicate refusal; Windows-1252 replies (declared and undeclared) arriving
 * as UTF-8; a hostile name round-tripping through Setup/Add and Query; lower-
 * case replies; mapping errors; the session id kept out of traces.
 *
 * Raw server (a thread on a loopback socket that records each request line
 * as it came off the wire and answers from a script): the session id goes
 * back as "%20%20", 500 and 503 + Retry-After are transient, a URL longer
 * than max_url_bytes is refused before anything is sent; for reconciliation,
 * the ledger query's XmlIn (date range, page size, StartAfterKey), every page
 * read, lower-case Windows-1252 replies, signs and record ids, unreadable
 * records and a page without a key refused, a 503 with Retry-After; the GL
 * journal's XmlParameters and XmlIn as sent (escaped by libxml2), a reply
 * without a Journal transient, a refused look-up permanent with nothing
 * posted. The settings of ledger and post_journal are validated.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "connectors/connector.h"
#include "connectors/syspro/syspro_internal.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "pbtest.h"
#include "syspro.h"

extern const struct pb_connector_type pb_connector_syspro;

static struct pbt_env sx;

/* ---- the emulator's admin routes ------------------------------------------------------------ */

static long admin(const char *method, const char *path, const char *body, json_t **out)
{
    return pbt_admin(sx.port, method, path, body, out);
}

static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}

static void emu_settings(const char *json)
{
    pbt_admin_post(sx.port, "/_sandbox/settings", json);
}

/* ---- connections ------------------------------------------------------------------------------
 */

static struct pb_connection *connection_at(int port, const char *op_password, json_t *extra,
                                           struct pb_err *err, enum pb_rc *rc)
{
    char base[128];
    return pbt_connection_try(
        &pb_connector_syspro, "syspro-test",
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:i}", "base_url",
                  pbt_url(base, sizeof base, port, "/SYSPROWCFService/Rest"), "company_id", "EDU1",
                  "operator", "ADMIN", "bank", "BANK1", "payment_type", "CC", "timeout_ms", 5000),
        extra, json_pack("{s:s,s:s}", "operator_password", op_password, "company_password", ""),
        err, rc);
}
static struct pb_connection *connection_with(json_t *extra)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_at(sx.port, "sandbox-op", extra, &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

static struct pb_connection *connection(void)
{
    return connection_with(NULL);
}

/* ---- running one item --------------------------------------------------------------------------
 */

struct run {
    struct pb_sink_item it;
    json_t *trace;
    enum pb_rc rc; /* execute's return */
    struct pb_err err;
};

static void run_item(struct pb_connection *c, const char *command, const char *doc_json,
                     const char *reference, uint32_t attempt, struct run *r)
{
    json_error_t jerr;
    json_t *doc = json_loads(doc_json, 0, &jerr);
    memset(r, 0, sizeof *r);
    if (!doc)
        fail_msg("test document: %s: %s", jerr.text, doc_json);
    pbt_item(&r->it, command, doc, reference, reference, attempt);
    r->trace = json_array();
    r->rc = pbt_execute1(c, sx.http, r->trace, time(NULL), &r->it, &r->err);
}
static void run_free(struct run *r)
{
    json_decref(r->it.document);
    json_decref(r->it.result);
    json_decref(r->trace);
}

static char *trace_text(struct run *r)
{
    return json_dumps(r->trace, JSON_COMPACT);
}

#define ORDER_DOC(customer, po, stock, price)                                                      \
    "{\"Customer\":\"" customer "\",\"CustomerPoNumber\":\"" po "\",\"OrderDate\":\"2026-11-21\"," \
    "\"Email\":\"ann@example.com\",\"Lines\":[{\"StockCode\":\"" stock "\",\"OrderQty\":\"1\","    \
    "\"Price\":\"" price "\"},{\"LineType\":\"FreightLine\",\"FreightValue\":\"4.95\"}]}"

/* ---- fixture ----------------------------------------------------------------------------------
 */

static int group_setup(void **state)
{
    json_t *settings = json_loads("{\"stock_codes\":[\"A100\",\"B100\",\"C100\",\"SHIP\"],"
                                  "\"customers\":[{\"Customer\":\"0000001\",\"Name\":\"Caf\\u00e9 "
                                  "\\u00a3 Ltd\"},\"0000002\"],"
                                  "\"encoding\":\"windows-1252\",\"banks\":[\"BANK1\"]}",
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
    pbt_admin_post(sx.port, "/_sandbox/reset", "{}");
    return 0;
}

/* ---- a raw server that records request lines ---------------------------------------------------
 */

#define RAW_MAX_LINES 32

struct raw_rule {
    const char *path_part; /* substring of the request line */
    int status;
    const char *extra_headers; /* "Retry-After: 7\r\n" or NULL */
    const char *body;
};

static struct {
    int fd, port;
    pthread_t thread;
    pthread_mutex_t lock;
    char lines[RAW_MAX_LINES][8192];
    int n_lines;
    const struct raw_rule *rules; /* NULL-path terminated */
    int stop;
} raw;

static void *raw_main(void *arg)
{
    (void)arg;
    for (;;) {
        char req[65536], head[512];
        size_t got = 0;
        int fd = accept(raw.fd, NULL, NULL);
        const struct raw_rule *rule = NULL;
        char *eol;
        if (fd < 0)
            return NULL;
        if (raw.stop) {
            close(fd);
            return NULL;
        }
        while (got + 1 < sizeof req) {
            ssize_t k = recv(fd, req + got, sizeof req - 1 - got, 0);
            if (k <= 0)
                break;
            got += (size_t)k;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[got] = '\0';
        eol = strstr(req, "\r\n");
        if (eol)
            *eol = '\0';
        pthread_mutex_lock(&raw.lock);
        if (raw.n_lines < RAW_MAX_LINES)
            snprintf(raw.lines[raw.n_lines++], sizeof raw.lines[0], "%s", req);
        for (const struct raw_rule *r = raw.rules; r && r->path_part; r++)
            if (strstr(req, r->path_part)) {
                rule = r;
                break;
            }
        pthread_mutex_unlock(&raw.lock);
        {
            int status = rule ? rule->status : 404;
            const char *body = rule ? rule->body : "not scripted";
            int n = snprintf(head, sizeof head,
                             "HTTP/1.1 %d X\r\nContent-Type: application/octet-stream\r\n%s"
                             "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                             status, rule && rule->extra_headers ? rule->extra_headers : "",
                             strlen(body));
            if (send(fd, head, (size_t)n, MSG_NOSIGNAL) < 0 ||
                send(fd, body, strlen(body), MSG_NOSIGNAL) < 0) {
                /* the client went away: nothing to do */
            }
        }
        close(fd);
    }
}

static void raw_start(const struct raw_rule *rules)
{
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof sa;
    int one = 1;
    memset(raw.lines, 0, sizeof raw.lines);
    raw.n_lines = 0;
    raw.rules = rules;
    raw.stop = 0;
    pthread_mutex_init(&raw.lock, NULL);
    raw.fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(raw.fd >= 0);
    setsockopt(raw.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(raw.fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(raw.fd, 16), 0);
    assert_int_equal(getsockname(raw.fd, (struct sockaddr *)&sa, &len), 0);
    raw.port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&raw.thread, NULL, raw_main, NULL), 0);
}

static void raw_stop(void)
{
    int fd;
    struct sockaddr_in sa = {0};
    raw.stop = 1;
    /* wake accept() */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)raw.port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        /* accept() will fail once the socket closes */
    }
    close(fd);
    pthread_join(raw.thread, NULL);
    close(raw.fd);
    pthread_mutex_destroy(&raw.lock);
}

static struct pb_connection *raw_connection(json_t *extra)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_at(raw.port, "sandbox-op", extra, &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

#define RAW_GUID "0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9"

/* ---- init -------------------------------------------------------------------------------------
 */

static void test_init_validates_settings(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c;

    c = connection_at(sx.port, "x", json_pack("{s:s}", "busines_objects", "x"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.busines_objects");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x",
                      json_pack("{s:{s:s}}", "business_objects", "sales_order", "SOR TOI"), &err,
                      &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.business_objects.sales_order");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:{s:s}}", "business_objects", "journal", "X"),
                      &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "business_objects.journal");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:s}", "base_url", "ftp://host"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.base_url");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:s}", "posting_period", "X"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.posting_period");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x",
                      json_pack("{s:{s:{s:s}}}", "parameters", "sales_order", "Bad Name", "Y"),
                      &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.parameters.sales_order");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:s}", "lookup_before_create", "never"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "lookup_before_create");
    pbt_connection_free(c);

    /* a missing secret key is named (an empty one is allowed) */
    c = calloc(1, sizeof *c);
    c->magic = PB_CONNECTION_MAGIC;
    c->type = &pb_connector_syspro;
    c->settings = json_pack("{s:s,s:s,s:s}", "base_url", "http://h/SYSPROWCFService/Rest",
                            "company_id", "EDU1", "operator", "ADMIN");
    c->secrets = json_pack("{s:s}", "company_password", "");
    assert_int_equal(c->type->init(c, &err), PB_ERR_CONFIG);
    assert_contains(err.msg, "secrets.operator_password");
    pbt_connection_free(c);
}

static void test_max_batch(void **state)
{
    struct pb_connection *c = connection();
    assert_int_equal(c->type->max_batch(c, "salesorder.create"), 1);
    assert_int_equal(c->type->max_batch(c, "arpayment.post"), 1);
    assert_int_equal(c->type->max_batch(c, "creditnote.create"), 1);
    assert_int_equal(c->type->max_batch(c, "customer.ensure"), 1);
    assert_int_equal(c->type->max_batch(c, "stock.check"), 1);
    assert_int_equal(c->type->max_batch(c, "invoice.create"), 0);
    pbt_connection_free(c);
}

/* ---- sessions ---------------------------------------------------------------------------------
 */

static void test_session_reused_and_logged_off(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "stock.check", "{\"StockCode\":\"A100\"}", "A100", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "A100");
    run_free(&r);
    run_item(c, "customer.ensure", "{\"Customer\":\"0000001\"}", "0000001", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    run_free(&r);
    /* one logon for both calls; every UserId was accepted, so it kept its spaces */
    assert_int_equal(stat_of("logons"), 1);
    assert_int_equal(stat_of("invalid_session_calls"), 0);
    assert_int_equal(stat_of("userid_missing_spaces"), 0);
    assert_int_equal(stat_of("sessions"), 1);
    pbt_connection_free(c);
    assert_int_equal(stat_of("logoffs"), 1);
    assert_int_equal(stat_of("sessions"), 0);
}

static void test_userid_goes_back_with_percent20_percent20(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"/Query/Query?", 200, NULL,
         "<InvQuery><StockItem><StockCode>A100</StockCode></StockItem></InvQuery>"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    struct run r;
    char *trace;

    raw_start(rules);
    c = raw_connection(NULL);
    run_item(c, "stock.check", "{\"StockCode\":\"A100\"}", "A100", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    pbt_connection_free(c); /* logs off */
    assert_int_equal(raw.n_lines, 3);
    assert_contains(raw.lines[0], "GET /SYSPROWCFService/Rest/logon?Operator=ADMIN&");
    assert_contains(raw.lines[1], "GET /SYSPROWCFService/Rest/Query/Query?UserId=" RAW_GUID
                                  "%20%20&BusinessObject=INVQRY&XmlIn=");
    assert_contains(raw.lines[2], "/Logoff?UserId=" RAW_GUID "%20%20 HTTP/1.1");
    /* the session id is a credential: never in the trace; the passwords neither */
    trace = trace_text(&r);
    assert_lacks(trace, RAW_GUID);
    assert_lacks(trace, "sandbox-op");
    assert_contains(trace, "UserId=***");
    assert_contains(trace, "<StockCode>A100</StockCode>");
    free(trace);
    run_free(&r);
    raw_stop();
}

struct worker {
    struct pb_connection *c;
    int ok;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct pb_http_client *http = NULL;
    struct pb_err err = {0};
    if (pb_http_client_new(&http, &err))
        return NULL;
    for (int i = 0; i < 5; i++) {
        struct pb_sink_item it = {0};
        struct pb_call_ctx ctx = {http, NULL, time(NULL), -1};
        it.command = "stock.check";
        it.document = json_pack("{s:s}", "StockCode", "C100");
        it.reference = "C100";
        it.attempt = 1;
        if (pb_connector_syspro.execute(w->c, &ctx, &it, 1, &err) == PB_OK && it.rc == PB_OK)
            w->ok++;
        json_decref(it.document);
        json_decref(it.result);
    }
    pb_http_client_free(http);
    return NULL;
}

static void test_threads_share_one_session(void **state)
{
    struct pb_connection *c = connection();
    struct worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){c, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].ok, 5);
    }
    assert_int_equal(stat_of("logons"), 1);
    pbt_connection_free(c);
}

static void test_refused_logon_is_transient_and_not_repeated(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_at(sx.port, "wrong", NULL, &err, &rc);
    struct run r;
    assert_int_equal(rc, PB_OK);
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "PO-L", "A100", "1.00"), "PO-L", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_TRANSIENT);
    assert_int_equal(r.rc, PB_ERR_TRANSIENT);
    assert_contains(r.it.message, "SYSPRO refused the logon of operator \"ADMIN\"");
    assert_contains(r.it.message, "Invalid operator code or password");
    assert_contains(r.it.message, "secrets.operator_password");
    assert_lacks(r.it.message, "wrong");
    run_free(&r);
    /* inside logon_retry_s no second logon is tried (operator lock-out) */
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "PO-L", "A100", "1.00"), "PO-L", 2, &r);
    assert_int_equal(r.it.rc, PB_ERR_TRANSIENT);
    assert_true(r.it.retry_after_s > 0);
    assert_contains(r.it.message, "no new logon");
    run_free(&r);
    assert_int_equal(stat_of("failed_logons"), 1);
    assert_int_equal(stat_of("sales_orders"), 0);
    pbt_connection_free(c);
}

static void test_expired_session_logs_on_again_once(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "stock.check", "{\"StockCode\":\"B100\"}", "B100", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    run_free(&r);
    assert_int_equal(admin("POST", "/_sandbox/expire_sessions", "{}", NULL), 200);
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "PO-E", "A100", "2.00"), "PO-E", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "000001");
    run_free(&r);
    assert_int_equal(stat_of("logons"), 2);
    assert_int_equal(stat_of("invalid_session_calls"), 1);
    assert_int_equal(stat_of("sales_orders"), 1);
    pbt_connection_free(c);
}

/* ---- sales orders
 * --------------------------------------------------------------------------------- */

static void test_salesorder_create(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    json_t *orders, *o, *lines;
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "ORDER-10023", "A100", "10.99"),
             "ORDER-10023", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_int_equal(r.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "000001");
    assert_false(json_is_true(json_object_get(r.it.result, "existing")));
    run_free(&r);
    assert_int_equal(admin("GET", "/_sandbox/orders", NULL, &orders), 200);
    o = json_array_get(orders, 0);
    assert_string_equal(json_string_value(json_object_get(o, "CustomerPoNumber")), "ORDER-10023");
    assert_string_equal(json_string_value(json_object_get(o, "OrderValue")), "15.94");
    assert_string_equal(json_string_value(json_object_get(o, "OrderDate")), "2026-11-21");
    assert_false(json_is_true(json_object_get(o, "OnHold")));
    lines = json_object_get(o, "Lines");
    assert_int_equal(json_array_size(lines), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 0), "StockCode")),
                        "A100");
    json_decref(orders);
    pbt_connection_free(c);
}

static void test_salesorder_po_defaults_to_reference_and_hold(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    json_t *orders, *o, *lines;
    run_item(c, "salesorder.create",
             "{\"Customer\":\"0000001\",\"Hold\":true,\"HoldReason\":\"Opayo fraud score 85\","
             "\"Lines\":[{\"StockCode\":\"B100\",\"OrderQty\":2,\"Price\":\"5.00\"}]}",
             "VTX-77", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_true(json_is_true(json_object_get(r.it.result, "held")));
    run_free(&r);
    assert_int_equal(admin("GET", "/_sandbox/orders", NULL, &orders), 200);
    o = json_array_get(orders, 0);
    assert_string_equal(json_string_value(json_object_get(o, "CustomerPoNumber")), "VTX-77");
    assert_string_equal(json_string_value(json_object_get(o, "OrderStatus")), "S");
    assert_true(json_is_true(json_object_get(o, "OnHold")));
    lines = json_object_get(o, "Lines");
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 1), "Comment")),
                        "On hold: Opayo fraud score 85");
    json_decref(orders);
    pbt_connection_free(c);
}

static void test_stock_code_not_found_is_permanent(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "PO-XYZ", "XYZ", "1.00"), "PO-XYZ", 1,
             &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "Stock code 'XYZ' not found");
    assert_contains(r.it.message, "SORTOI");
    assert_string_equal(r.it.erp_id, "");
    run_free(&r);
    assert_int_equal(stat_of("sales_orders"), 0);
    /* stock.check says the same */
    run_item(c, "stock.check", "{\"StockCode\":\"XYZ\"}", "XYZ", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "Stock code 'XYZ' not found");
    run_free(&r);
    pbt_connection_free(c);
}

static void test_retry_finds_the_order_and_posts_nothing(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "ORDER-1", "A100", "3.00"), "ORDER-1", 1,
             &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "000001");
    run_free(&r);
    /* the reply was "lost": the engine tries again */
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "ORDER-1", "A100", "3.00"), "ORDER-1", 2,
             &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "000001");
    assert_true(json_is_true(json_object_get(r.it.result, "existing")));
    assert_null(json_object_get(r.it.result, "refusal"));
    run_free(&r);
    assert_int_equal(stat_of("sales_orders"), 1);
    assert_int_equal(stat_of("duplicate_customer_po_numbers"), 0); /* looked up, not posted */
    pbt_connection_free(c);
}

static void test_order_already_in_syspro_is_not_posted_twice(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "DUP-1", "A100", "3.00"), "DUP-1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    run_free(&r);
    /* a first attempt (no look-up) of a transaction SYSPRO already has */
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "DUP-1", "A100", "3.00"), "DUP-1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "000001");
    assert_true(json_is_true(json_object_get(r.it.result, "existing")));
    assert_contains(json_string_value(json_object_get(r.it.result, "refusal")), "already exists");
    run_free(&r);
    assert_int_equal(stat_of("sales_orders"), 1);
    assert_int_equal(stat_of("duplicate_customer_po_numbers"), 1);
    pbt_connection_free(c);
}

static void test_lookup_always_when_syspro_allows_duplicates(void **state)
{
    struct pb_connection *c = connection_with(json_pack("{s:s}", "lookup_before_create", "always"));
    struct run r;
    emu_settings("{\"duplicate_po\":\"allow\"}");
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "AL-1", "A100", "3.00"), "AL-1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    run_free(&r);
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "AL-1", "A100", "3.00"), "AL-1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_true(json_is_true(json_object_get(r.it.result, "existing")));
    run_free(&r);
    assert_int_equal(stat_of("sales_orders"), 1);
    pbt_connection_free(c);
}

/* ---- AR payments and credit notes ------------------------------------------------------------ */

static void test_payment_invalid_customer_is_permanent(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "arpayment.post", "{\"Customer\":\"ZZZ\",\"PaymentValue\":\"10.99\"}", "ORDER-9", 1,
             &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "Customer 'ZZZ' is invalid");
    assert_contains(r.it.message, "ARSTPY");
    run_free(&r);
    assert_int_equal(stat_of("ar_payments"), 0);
    pbt_connection_free(c);
}

static void test_payment_applied_and_retry_finds_it(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    json_t *ledger, *p;
    char erp[128];
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "ORDER-2", "A100", "10.00"), "ORDER-2", 1,
             &r);
    assert_int_equal(r.it.rc, PB_OK);
    run_free(&r);
    run_item(c, "arpayment.post",
             "{\"Customer\":\"0000001\",\"PaymentValue\":\"14.95\",\"PaymentDate\":\"2026-11-21\","
             "\"InvoiceToPay\":[{\"Invoice\":\"000001\",\"PaymentValue\":\"14.95\"}]}",
             "ORDER-2", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_contains(r.it.erp_id, "/1/1"); /* TrnYear/TrnMonth/Journal/Entry */
    snprintf(erp, sizeof erp, "%s", r.it.erp_id);
    run_free(&r);
    assert_int_equal(admin("GET", "/_sandbox/ledger", NULL, &ledger), 200);
    p = json_array_get(json_object_get(ledger, "ar_payments"), 0);
    assert_string_equal(json_string_value(json_object_get(p, "Reference")), "ORDER-2");
    assert_string_equal(json_string_value(json_object_get(p, "Bank")), "BANK1");
    assert_string_equal(json_string_value(json_object_get(p, "PaymentType")), "CC");
    json_decref(ledger);
    run_item(c, "arpayment.post",
             "{\"Customer\":\"0000001\",\"PaymentValue\":\"14.95\","
             "\"InvoiceToPay\":[{\"Invoice\":\"000001\",\"PaymentValue\":\"14.95\"}]}",
             "ORDER-2", 2, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, erp);
    assert_true(json_is_true(json_object_get(r.it.result, "existing")));
    assert_null(json_object_get(r.it.result, "refusal")); /* looked up, not posted */
    run_free(&r);
    assert_int_equal(stat_of("business_errors"), 0);
    assert_int_equal(stat_of("ar_payments"), 1);
    pbt_connection_free(c);
}

static void test_credit_note_and_retry(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "ORDER-3", "A100", "10.00"), "ORDER-3", 1,
             &r);
    run_free(&r);
    run_item(
        c, "creditnote.create",
        "{\"Customer\":\"0000001\",\"InvoiceValue\":\"30.00\",\"OriginalDocument\":\"000001\"}",
        "RF-3", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "exceeds the uncredited value 14.95");
    run_free(&r);
    run_item(c, "creditnote.create",
             "{\"Customer\":\"0000001\",\"InvoiceValue\":\"4.95\",\"OriginalDocument\":\"000001\","
             "\"Comment\":\"Refund of ORDER-3\"}",
             "RF-3", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "CN000001");
    run_free(&r);
    run_item(c, "creditnote.create",
             "{\"Customer\":\"0000001\",\"InvoiceValue\":\"4.95\",\"OriginalDocument\":\"000001\"}",
             "RF-3", 3, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "CN000001");
    assert_true(json_is_true(json_object_get(r.it.result, "existing")));
    assert_null(json_object_get(r.it.result, "refusal")); /* looked up, not posted */
    run_free(&r);
    assert_int_equal(stat_of("credit_notes"), 1);
    pbt_connection_free(c);
}

/* ---- text: encodings and escaping ----------------------------------------------------------- */

static void test_windows_1252_reply_arrives_as_utf8(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    json_t *name;
    /* declared windows-1252 */
    run_item(c, "customer.ensure", "{\"Customer\":\"0000001\",\"Name\":\"ignored\"}", "0000001", 1,
             &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_false(json_is_true(json_object_get(r.it.result, "created")));
    name = json_object_get(
        json_object_get(json_object_get(r.it.result, "record"), "CustomerDetails"), "Name");
    assert_string_equal(json_string_value(name), "Caf\xc3\xa9 \xc2\xa3 Ltd");
    run_free(&r);
    /* no declaration at all: not valid UTF-8, so read as Windows-1252 */
    emu_settings("{\"encoding\":\"windows-1252-undeclared\"}");
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "ENC-1", "A100", "1.00"), "ENC-1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    name = json_object_get(json_object_get(json_object_get(r.it.result, "reply"), "Order"),
                           "CustomerName");
    assert_string_equal(json_string_value(name), "Caf\xc3\xa9 \xc2\xa3 Ltd");
    run_free(&r);
    pbt_connection_free(c);
}

static void test_hostile_name_round_trips(void **state)
{
    static const char hostile[] = "Ann <&> \"O'Brien\" ]]> \xc3\xa9\xc2\xa3";
    struct pb_connection *c = connection();
    struct run r;
    json_t *ledger, *cust;
    char doc[512];
    char *trace;
    snprintf(doc, sizeof doc,
             "{\"Customer\":\"WEB0042\",\"Name\":\"Ann <&> \\\"O'Brien\\\" ]]> \\u00e9\\u00a3\","
             "\"Email\":\"a&b@example.com\",\"ShortName\":\"</Name><Customer>0000001\"}");
    run_item(c, "customer.ensure", doc, "WEB0042", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "WEB0042");
    assert_true(json_is_true(json_object_get(r.it.result, "created")));
    trace = trace_text(&r);
    assert_contains(trace, "Ann &lt;&amp;&gt;");
    free(trace);
    run_free(&r);
    assert_int_equal(admin("GET", "/_sandbox/ledger", NULL, &ledger), 200);
    cust = json_object_get(json_object_get(ledger, "customers"), "WEB0042");
    assert_string_equal(json_string_value(json_object_get(cust, "Name")), hostile);
    assert_string_equal(json_string_value(json_object_get(cust, "ShortName")),
                        "</Name><Customer>0000001");
    json_decref(ledger);
    /* and back through a Windows-1252 query reply */
    run_item(c, "customer.ensure", doc, "WEB0042", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_false(json_is_true(json_object_get(r.it.result, "created")));
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(r.it.result, "record"), "CustomerDetails"), "Name")),
        hostile);
    run_free(&r);
    assert_int_equal(stat_of("customers_added"), 1);
    pbt_connection_free(c);
}

static void test_lower_case_replies(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    emu_settings("{\"lowercase_replies\":true,\"encoding\":\"utf-8\"}");
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "LC-1", "A100", "1.00"), "LC-1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_string_equal(r.it.erp_id, "000001");
    run_free(&r);
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "LC-2", "NOPE", "1.00"), "LC-2", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "Stock code 'NOPE' not found");
    run_free(&r);
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "LC-1", "A100", "1.00"), "LC-1", 2, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_true(json_is_true(json_object_get(r.it.result, "existing")));
    run_free(&r);
    assert_int_equal(stat_of("sales_orders"), 1);
    pbt_connection_free(c);
}

/* ---- mapping and configuration errors ---------------------------------------------------------
 */

static void test_mapping_errors(void **state)
{
    struct pb_connection *c = connection();
    struct run r;
    run_item(c, "salesorder.create",
             "{\"Customer\":\"0000001\",\"Lines\":[{\"StockCode\":\"A100\",\"OrderQty\":1,"
             "\"Price\":10.99}]}",
             "M-1", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    assert_contains(r.it.message, "Lines[0].Price");
    assert_contains(r.it.message, "decimals as text");
    run_free(&r);
    run_item(c, "salesorder.create", "{\"Customer\":\"0000001\"}", "M-2", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    assert_contains(r.it.message, "Lines");
    run_free(&r);
    run_item(c, "salesorder.create",
             "{\"Customer\":\"0000001\",\"Lines\":[{\"LineType\":\"Bogus\"}]}", "M-3", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    assert_contains(r.it.message, "LineType");
    run_free(&r);
    run_item(c, "salesorder.create",
             "{\"Customer\":\"0000001\",\"Bad Name\":\"x\",\"Lines\":[{\"StockCode\":\"A100\"}]}",
             "M-4", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    assert_contains(r.it.message, "XML element name");
    run_free(&r);
    run_item(c, "arpayment.post", "{\"Customer\":\"0000001\",\"PaymentValue\":\"1e3\"}", "M-5", 1,
             &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    assert_contains(r.it.message, "PaymentValue");
    run_free(&r);
    run_item(c, "customer.ensure", "[1]", "M-6", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    run_free(&r);
    run_item(c, "invoice.create", "{}", "M-7", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "no command");
    run_free(&r);
    assert_int_equal(stat_of("sales_orders"), 0);
    assert_int_equal(stat_of("ar_payments"), 0);
    pbt_connection_free(c);

    /* a payment without a bank anywhere */
    c = connection_with(json_pack("{s:s}", "bank", ""));
    run_item(c, "arpayment.post", "{\"Customer\":\"0000001\",\"PaymentValue\":\"1.00\"}", "M-8", 1,
             &r);
    assert_int_equal(r.it.rc, PB_ERR_MAPPING);
    assert_contains(r.it.message, "settings.bank");
    run_free(&r);
    pbt_connection_free(c);
}

static void test_unlicensed_object_is_permanent(void **state)
{
    struct pb_connection *c =
        connection_with(json_pack("{s:{s:s}}", "business_objects", "sales_order", "SORTOX"));
    struct run r;
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "U-1", "A100", "1.00"), "U-1", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "SORTOX");
    assert_contains(r.it.message, "not licensed");
    run_free(&r);
    pbt_connection_free(c);
}

/* ---- transport ----------------------------------------------------------------------------------
 */

static void test_5xx_is_transient(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"BusinessObject=SORTOI", 500, NULL, "Internal Server Error"},
        /* AR transactions are always looked up first: nothing there yet */
        {"BusinessObject=ARSQRY", 200, NULL,
         "<ArCustomerQuery><CustomerDetails><Customer>0000001</Customer></CustomerDetails>"
         "</ArCustomerQuery>"},
        {"BusinessObject=ARSTPY", 503, "Retry-After: 7\r\n", "busy"},
        {"BusinessObject=ARSTIN", 200, NULL, "this is not XML"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    struct run r;
    char *trace;

    raw_start(rules);
    c = raw_connection(NULL);
    run_item(c, "salesorder.create", ORDER_DOC("0000001", "T-1", "A100", "1.00"), "T-1", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_TRANSIENT);
    assert_contains(r.it.message, "HTTP 500");
    /* the URL (with the session id and the XML) is not in the message or the trace */
    assert_lacks(r.it.message, RAW_GUID);
    trace = trace_text(&r);
    assert_lacks(trace, RAW_GUID);
    assert_contains(trace, "HTTP 500");
    free(trace);
    run_free(&r);
    run_item(c, "arpayment.post", "{\"Customer\":\"0000001\",\"PaymentValue\":\"1.00\"}", "T-2", 1,
             &r);
    assert_int_equal(r.it.rc, PB_ERR_TRANSIENT);
    assert_int_equal(r.it.retry_after_s, 7);
    run_free(&r);
    run_item(c, "creditnote.create", "{\"Customer\":\"0000001\",\"InvoiceValue\":\"1.00\"}", "T-3",
             1, &r);
    assert_int_equal(r.it.rc, PB_ERR_TRANSIENT);
    assert_contains(r.it.message, "not XML");
    run_free(&r);
    pbt_connection_free(c);
    raw_stop();
}

static void test_query_reply_without_the_customer_means_not_found(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"BusinessObject=ARSQRY", 200, NULL,
         "<ArCustomerQuery><CustomerDetails><Customer>OTHER</Customer></CustomerDetails>"
         "</ArCustomerQuery>"},
        {"BusinessObject=ARSSCS", 200, NULL,
         "<SetupArCustomer><Item><Key><Customer>NEW1</Customer></Key></Item><StatusOfItems>"
         "<RecordsRead>1</RecordsRead><RecordsInvalid>0</RecordsInvalid></StatusOfItems>"
         "</SetupArCustomer>"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    struct run r;

    raw_start(rules);
    c = raw_connection(NULL);
    run_item(c, "customer.ensure", "{\"Customer\":\"NEW1\",\"Name\":\"New\"}", "NEW1", 1, &r);
    assert_int_equal(r.it.rc, PB_OK);
    assert_true(json_is_true(json_object_get(r.it.result, "created")));
    run_free(&r);
    pbt_connection_free(c);
    assert_int_equal(raw.n_lines, 4);
    assert_contains(raw.lines[2], "/Setup/Add?");
    raw_stop();
}

static void test_url_too_long_is_refused_before_sending(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    struct run r;
    char doc[4096], comment[2100];

    memset(comment, 'x', 2000);
    comment[2000] = '\0';
    snprintf(doc, sizeof doc,
             "{\"Customer\":\"0000001\",\"Lines\":[{\"LineType\":\"CommentLine\",\"Comment\":"
             "\"%s\"}]}",
             comment);
    raw_start(rules);
    c = raw_connection(json_pack("{s:i}", "max_url_bytes", 1024));
    run_item(c, "salesorder.create", doc, "LONG-1", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_PERMANENT);
    assert_contains(r.it.message, "max_url_bytes");
    run_free(&r);
    pbt_connection_free(c);
    assert_int_equal(raw.n_lines, 2); /* logon and logoff: the order never went out */
    raw_stop();
}

static void test_unreachable_is_transient(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_at(1, "sandbox-op", NULL, &err, &rc);
    struct run r;
    assert_int_equal(rc, PB_OK);
    run_item(c, "stock.check", "{\"StockCode\":\"A100\"}", "A100", 1, &r);
    assert_int_equal(r.it.rc, PB_ERR_TRANSIENT);
    assert_contains(r.it.message, "logon");
    run_free(&r);
    pbt_connection_free(c);
}

/* ---- reconciliation: settings and the wire (raw server) ---------------------------------------
 */

static void test_recon_settings(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c;
    struct syspro_state *st;

    c = connection_at(sx.port, "x", NULL, &err, &rc);
    assert_int_equal(rc, PB_OK);
    st = pb__syspro_state(c);
    assert_string_equal(st->bo.ar_payment_query, "ARSQPY");
    assert_string_equal(st->bo.gl_journal, "GENTJL");
    assert_string_equal(st->bo.gl_journal_query, "GENQJL");
    assert_int_equal(st->ledger_page_size, 500);
    assert_string_equal(st->currency, "");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x",
                      json_pack("{s:{s:s,s:s},s:{s:{s:s}},s:s,s:i}", "business_objects",
                                "gl_journal", "ZGLJNL", "ar_payment_query", "COMFND", "parameters",
                                "gl_journal", "JournalSource", "GJ", "currency", "ZAR",
                                "ledger_page_size", 50),
                      &err, &rc);
    assert_int_equal(rc, PB_OK);
    st = pb__syspro_state(c);
    assert_string_equal(st->bo.gl_journal, "ZGLJNL");
    assert_string_equal(st->bo.ar_payment_query, "COMFND");
    assert_string_equal(st->currency, "ZAR");
    assert_int_equal(st->ledger_page_size, 50);
    assert_non_null(st->params_gl_journal);
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:{s:s}}", "business_objects", "gl_journal", ""),
                      &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.business_objects.gl_journal: required");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:s}", "currency", "pounds"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.currency");
    pbt_connection_free(c);

    c = connection_at(sx.port, "x", json_pack("{s:i}", "ledger_page_size", 0), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.ledger_page_size");
    pbt_connection_free(c);
}

static enum pb_rc raw_ledger(struct pb_connection *c, int32_t from, int32_t to, json_t *records,
                             json_t *trace, struct pb_err *err)
{
    struct pb_call_ctx ctx = {0};
    ctx.http = sx.http;
    ctx.trace = trace;
    ctx.now = time(NULL);
    ctx.retry_after_s = -1;
    return c->type->ledger(c, &ctx, from, to, records, err);
}

static enum pb_rc raw_journal(struct pb_connection *c, const char *json, char *id, size_t len,
                              json_t *trace, int *retry_after, struct pb_err *err)
{
    struct pb_call_ctx ctx = {0};
    json_t *j = json_loads(json, 0, NULL);
    enum pb_rc rc;
    assert_non_null(j);
    ctx.http = sx.http;
    ctx.trace = trace;
    ctx.now = time(NULL);
    ctx.retry_after_s = -1;
    rc = c->type->post_journal(c, &ctx, j, id, len, err);
    if (retry_after)
        *retry_after = ctx.retry_after_s;
    json_decref(j);
    return rc;
}

#define DAY_2026_03_01 20513 /* days since 1970-01-01 */

static void test_ledger_pages_lower_case_1252_and_signs(void **state)
{
    /* page 2 is asked for with StartAfterKey, so its rule comes first */
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"StartAfterKey", 200, NULL,
         "<arpaymentquery><transaction><documenttype>C</documenttype><key>K3</key>"
         "<reference>RF-1</reference><invoice>CN000007</invoice><trndate>2026-03-02</trndate>"
         "<value>2.50</value><currency>GBP</currency></transaction>"
         "<querystatus><morerecords>N</morerecords><lastkey>K3</lastkey></querystatus>"
         "</arpaymentquery>"},
        {"BusinessObject=ARSQPY", 200, NULL,
         "<arpaymentquery><transaction><documenttype>P</documenttype><key>K1</key>"
         "<reference>CAF\xc9-1</reference><trndate>2026-03-01T00:00:00</trndate>"
         "<trnyear>2026</trnyear><trnmonth>3</trnmonth><journal>14</journal><entry>2</entry>"
         "<value>10.99</value></transaction>"
         "<transaction><documenttype>P</documenttype><key>K1b</key><reference>JP-1</reference>"
         "<trndate>2026-03-01</trndate><trnyear>2026</trnyear><trnmonth>3</trnmonth>"
         "<journal>14</journal><entry>3</entry><value>1000</value><currency>JPY</currency>"
         "</transaction>"
         "<transaction><documenttype>I</documenttype><key>K2</key><reference>INV-1</reference>"
         "<invoice>100</invoice><trndate>2026-03-01</trndate><value>50.00</value></transaction>"
         "<transaction><documenttype>P</documenttype><key>K2b</key><reference>LATE-1</reference>"
         "<trndate>2026-04-01</trndate><journal>15</journal><entry>1</entry><value>1.00</value>"
         "</transaction>"
         "<querystatus><morerecords>Y</morerecords><lastkey>K2b</lastkey></querystatus>"
         "</arpaymentquery>"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    json_t *records = json_array(), *trace = json_array(), *r;
    struct pb_err err = {0};

    raw_start(rules);
    c = raw_connection(json_pack("{s:s}", "currency", "GBP"));
    assert_int_equal(raw_ledger(c, DAY_2026_03_01, DAY_2026_03_01 + 2, records, trace, &err),
                     PB_OK);
    assert_int_equal(json_array_size(records), 3); /* not the invoice, not April */
    r = json_array_get(records, 0);
    assert_string_equal(json_string_value(json_object_get(r, "reference")), "CAF\xc3\x89-1");
    assert_string_equal(json_string_value(json_object_get(r, "record_id")), "2026/3/14/2");
    assert_string_equal(json_string_value(json_object_get(r, "kind")), "payment");
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), 1099);
    assert_string_equal(json_string_value(json_object_get(r, "currency")), "GBP");
    assert_string_equal(json_string_value(json_object_get(r, "date")), "2026-03-01");
    r = json_array_get(records, 1);
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), 1000);
    assert_string_equal(json_string_value(json_object_get(r, "currency")), "JPY");
    r = json_array_get(records, 2);
    assert_string_equal(json_string_value(json_object_get(r, "kind")), "refund");
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), -250);
    assert_string_equal(json_string_value(json_object_get(r, "record_id")), "CN000007");
    pbt_connection_free(c);
    /* logon, two pages, logoff; the second page asked after K2b */
    assert_int_equal(raw.n_lines, 4);
    assert_contains(raw.lines[1], "DateFrom%3E2026-03-01%3C");
    assert_contains(raw.lines[1], "DateTo%3E2026-03-03%3C");
    assert_contains(raw.lines[1], "MaxRecords%3E500%3C");
    assert_contains(raw.lines[2], "StartAfterKey%3EK2b%3C");
    raw_stop();
    json_decref(records);
    json_decref(trace);
}

static void test_ledger_unreadable_replies_are_permanent(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"BusinessObject=ARSQPY", 200, NULL,
         "<ArPaymentQuery><Transaction><DocumentType>P</DocumentType><Reference>X-1</Reference>"
         "<TrnDate>2026-03-01</TrnDate><Journal>1</Journal><Entry>1</Entry>"
         "<Value>1.234</Value><Currency>GBP</Currency></Transaction>"
         "</ArPaymentQuery>"},
        {"BusinessObject=NOKEY", 200, NULL,
         "<ArPaymentQuery><QueryStatus><MoreRecords>Y</MoreRecords></QueryStatus>"
         "</ArPaymentQuery>"},
        {"BusinessObject=NOCUR", 200, NULL,
         "<ArPaymentQuery><Transaction><DocumentType>P</DocumentType><Reference>X-2</Reference>"
         "<TrnDate>2026-03-01</TrnDate><Journal>1</Journal><Entry>1</Entry>"
         "<Value>1.00</Value></Transaction></ArPaymentQuery>"},
        {"BusinessObject=BUSY", 503, "Retry-After: 9\r\n", "busy"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    json_t *records = json_array(), *trace = json_array();
    struct pb_err err = {0};
    struct pb_call_ctx ctx = {0};

    raw_start(rules);
    c = raw_connection(NULL);
    assert_int_equal(raw_ledger(c, DAY_2026_03_01, DAY_2026_03_01, records, trace, &err),
                     PB_ERR_PERMANENT);
    assert_contains(err.msg, "Value '1.234', not an exact GBP amount");
    pbt_connection_free(c);

    c = raw_connection(json_pack("{s:{s:s}}", "business_objects", "ar_payment_query", "NOKEY"));
    assert_int_equal(raw_ledger(c, DAY_2026_03_01, DAY_2026_03_01, records, trace, &err),
                     PB_ERR_PERMANENT);
    assert_contains(err.msg, "MoreRecords Y but gives no new LastKey");
    pbt_connection_free(c);

    c = raw_connection(json_pack("{s:{s:s}}", "business_objects", "ar_payment_query", "NOCUR"));
    assert_int_equal(raw_ledger(c, DAY_2026_03_01, DAY_2026_03_01, records, trace, &err),
                     PB_ERR_PERMANENT);
    assert_contains(err.msg, "set settings.currency");
    pbt_connection_free(c);

    c = raw_connection(json_pack("{s:{s:s}}", "business_objects", "ar_payment_query", "BUSY"));
    ctx.http = sx.http;
    ctx.trace = trace;
    ctx.now = time(NULL);
    assert_int_equal(c->type->ledger(c, &ctx, DAY_2026_03_01, DAY_2026_03_01, records, &err),
                     PB_ERR_TRANSIENT);
    assert_int_equal(ctx.retry_after_s, 9);
    pbt_connection_free(c);
    raw_stop();
    json_decref(records);
    json_decref(trace);
}

#define RAW_JOURNAL                                                                                \
    "{\"reference\":\"PB-R-1\",\"date\":\"2026-03-02\",\"narration\":\"fees & <net>\","            \
    "\"currency\":\"GBP\",\"lines\":[{\"account\":\"1000\",\"amount_minor\":9700},"                \
    "{\"account\":\"6100\",\"amount_minor\":300,\"description\":\"fees\"},"                        \
    "{\"account\":\"1100\",\"amount_minor\":-10000}]}"

static void test_journal_xml_and_reply_without_a_key(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"BusinessObject=GENQJL", 200, NULL,
         "<GlJournalQuery><ErrorNumber>20123</ErrorNumber><ErrorDescription>GL journal with "
         "reference 'PB-R-1' not found</ErrorDescription></GlJournalQuery>"},
        {"BusinessObject=GENTJL", 200, NULL,
         "<PostGlJournal><Item><Key><Reference>PB-R-1</Reference></Key></Item><StatusOfItems>"
         "<RecordsRead>1</RecordsRead><RecordsInvalid>0</RecordsInvalid></StatusOfItems>"
         "</PostGlJournal>"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    json_t *trace = json_array();
    struct pb_err err = {0};
    char id[64], *text;

    raw_start(rules);
    c = raw_connection(NULL);
    assert_int_equal(raw_journal(c, RAW_JOURNAL, id, sizeof id, trace, NULL, &err),
                     PB_ERR_TRANSIENT);
    assert_contains(err.msg, "names no Journal");
    text = json_dumps(trace, JSON_COMPACT);
    assert_contains(text, "<Query><Key><Reference>PB-R-1</Reference></Key></Query>");
    assert_contains(text, "<PostGlJournal><Parameters><IgnoreWarnings>N</IgnoreWarnings>"
                          "<ApplyIfEntireDocumentValid>Y</ApplyIfEntireDocumentValid>"
                          "<ValidateOnly>N</ValidateOnly></Parameters></PostGlJournal>");
    assert_contains(text, "<PostGlJournal><Item><Header><JournalDate>2026-03-02</JournalDate>"
                          "<Reference>PB-R-1</Reference><Notation>fees &amp; &lt;net&gt;"
                          "</Notation></Header><Line><LedgerCode>1000</LedgerCode><EntryType>D"
                          "</EntryType><EntryValue>97.00</EntryValue></Line><Line><LedgerCode>"
                          "6100</LedgerCode><EntryType>D</EntryType><EntryValue>3.00"
                          "</EntryValue><Comment>fees</Comment></Line><Line><LedgerCode>1100"
                          "</LedgerCode><EntryType>C</EntryType><EntryValue>100.00</EntryValue>"
                          "</Line></Item></PostGlJournal>");
    assert_lacks(text, RAW_GUID);
    free(text);
    pbt_connection_free(c);
    raw_stop();
    json_decref(trace);
}

static void test_journal_lookup_refused_posts_nothing(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"BusinessObject=GENQJL", 200, NULL,
         "<GlJournalQuery><ErrorDescription>Operator 'ADMIN' may not use this query"
         "</ErrorDescription></GlJournalQuery>"},
        {"BusinessObject=GENTJL", 500, NULL, "should not be called"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    json_t *trace = json_array();
    struct pb_err err = {0};
    char id[64];

    raw_start(rules);
    c = raw_connection(NULL);
    assert_int_equal(raw_journal(c, RAW_JOURNAL, id, sizeof id, trace, NULL, &err),
                     PB_ERR_PERMANENT);
    assert_contains(err.msg, "may not use this query");
    assert_contains(err.msg, "could post twice");
    pbt_connection_free(c);
    for (int i = 0; i < raw.n_lines; i++)
        assert_lacks(raw.lines[i], "GENTJL");
    raw_stop();
    json_decref(trace);
}

static void test_journal_5xx_is_transient(void **state)
{
    static const struct raw_rule rules[] = {
        {"/logon?", 200, NULL, RAW_GUID "  "},
        {"BusinessObject=GENQJL", 200, NULL, "<GlJournalQuery></GlJournalQuery>"},
        {"BusinessObject=GENTJL", 503, "Retry-After: 4\r\n", "busy"},
        {"/Logoff?", 200, NULL, "0"},
        {NULL, 0, NULL, NULL},
    };
    struct pb_connection *c;
    json_t *trace = json_array();
    struct pb_err err = {0};
    char id[64];
    int retry_after = 0;

    raw_start(rules);
    c = raw_connection(NULL);
    assert_int_equal(raw_journal(c, RAW_JOURNAL, id, sizeof id, trace, &retry_after, &err),
                     PB_ERR_TRANSIENT);
    assert_contains(err.msg, "GENTJL Transaction/Post: HTTP 503");
    assert_int_equal(retry_after, 4);
    assert_string_equal(id, "");
    pbt_connection_free(c);
    raw_stop();
    json_decref(trace);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_validates_settings),
        cmocka_unit_test_setup(test_max_batch, test_setup),
        cmocka_unit_test_setup(test_session_reused_and_logged_off, test_setup),
        cmocka_unit_test_setup(test_userid_goes_back_with_percent20_percent20, test_setup),
        cmocka_unit_test_setup(test_threads_share_one_session, test_setup),
        cmocka_unit_test_setup(test_refused_logon_is_transient_and_not_repeated, test_setup),
        cmocka_unit_test_setup(test_expired_session_logs_on_again_once, test_setup),
        cmocka_unit_test_setup(test_salesorder_create, test_setup),
        cmocka_unit_test_setup(test_salesorder_po_defaults_to_reference_and_hold, test_setup),
        cmocka_unit_test_setup(test_stock_code_not_found_is_permanent, test_setup),
        cmocka_unit_test_setup(test_retry_finds_the_order_and_posts_nothing, test_setup),
        cmocka_unit_test_setup(test_order_already_in_syspro_is_not_posted_twice, test_setup),
        cmocka_unit_test_setup(test_lookup_always_when_syspro_allows_duplicates, test_setup),
        cmocka_unit_test_setup(test_payment_invalid_customer_is_permanent, test_setup),
        cmocka_unit_test_setup(test_payment_applied_and_retry_finds_it, test_setup),
        cmocka_unit_test_setup(test_credit_note_and_retry, test_setup),
        cmocka_unit_test_setup(test_windows_1252_reply_arrives_as_utf8, test_setup),
        cmocka_unit_test_setup(test_hostile_name_round_trips, test_setup),
        cmocka_unit_test_setup(test_lower_case_replies, test_setup),
        cmocka_unit_test_setup(test_mapping_errors, test_setup),
        cmocka_unit_test_setup(test_unlicensed_object_is_permanent, test_setup),
        cmocka_unit_test(test_5xx_is_transient),
        cmocka_unit_test(test_query_reply_without_the_customer_means_not_found),
        cmocka_unit_test(test_url_too_long_is_refused_before_sending),
        cmocka_unit_test(test_unreachable_is_transient),
        cmocka_unit_test(test_recon_settings),
        cmocka_unit_test(test_ledger_pages_lower_case_1252_and_signs),
        cmocka_unit_test(test_ledger_unreadable_replies_are_permanent),
        cmocka_unit_test(test_journal_xml_and_reply_without_a_key),
        cmocka_unit_test(test_journal_lookup_refused_posts_nothing),
        cmocka_unit_test(test_journal_5xx_is_transient),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
