/*
 * tests/unit/test_connector_sagex3.c: the Sage X3 sink connector
 * (src/connectors/sagex3/) against the sandbox's X3 emulator
 * (sandbox/sagex3.c), plus a small scripted SOAP server for the replies the
 * emulator cannot be made to give.
 *
 * The emulator is started directly (sbx_sagex3_type.create, pb_httpd_start
 * on port 0, one thread per connection), not through pb_sandbox_start, so
 * that this file does not depend on the emulator being registered; its own
 * POST /_sandbox/inject gives the SOAP Fault, the busy pool and the lost
 * reply. Every test starts with POST /_sandbox/reset.
 *
 * Emulator: init's refusals; customer.upsert twice is one BPC (stats), a
 * changed customer is modified (or kept with customer_update "keep"), a
 * customer matched by a field when it has no number; salesorder.create with
 * lines and SALFCY defaulted (and the reference added), an invalid ITMREF as
 * PB_ERR_PERMANENT naming the item; stock.allocate and its repeat;
 * payment.create with a wrong account (X3's message), linked to the SOH with
 * the transaction id; a lost reply then attempt 2 finds the SOH / PAY /
 * GACC and creates nothing twice; journal.create balanced and not; SOAP
 * Fault and busy pool transient, a business Fault permanent; bad
 * credentials PB_ERR_AUTH; hostile values escaped (round trip exact, no
 * injected group); control characters and JSON reals refused as mapping
 * errors; public names from settings and from the document; the
 * reconciliation settings (journal_type, journal_site, refund_account,
 * ledger_page_size, ids date_field) refused when malformed.
 *
 * Scripted server: the duplicate-BPC race (read: not found, save: already
 * exists, read: found), a status-1 save without the key, a 200 that is not
 * SOAP, an HTTP 404 and a 503 without a Fault.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connectors/connector.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "pbtest.h"
#include "sbx.h"

extern const struct pb_connector_type pb_connector_sagex3;
extern const struct sbx_emulator_type sbx_sagex3_type;

static struct pbt_env sx;

/* ---- the emulator's admin routes ----------------------------------------------------------- */

static long admin(const char *method, const char *path, const char *body, json_t **out)
{
    return pbt_admin(sx.port, method, path, body, out);
}

static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}

static json_t *records(void)
{
    json_t *r;
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &r), 200);
    assert_non_null(r);
    return r;
}

static void inject(const char *body)
{
    assert_int_equal(admin("POST", "/_sandbox/inject", body, NULL), 200);
}

/* ---- fixture ------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    return pbt_env_emulator(&sx, &sbx_sagex3_type,
                            json_pack("{s:{s:i,s:i,s:i}}", "stock", "ITM-100", 10, "ITM-200", 5,
                                      "ITM-300", 0),
                            8u << 20);
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

/* A connection to `port`; `extra` (taken) is merged into the settings. */
static struct pb_connection *connection_full(int port, const char *password, json_t *extra,
                                             struct pb_err *err, enum pb_rc *rc)
{
    char base[96];
    return pbt_connection_try(
        &pb_connector_sagex3, "x3-test",
        json_pack("{s:s,s:s,s:s,s:i}", "base_url", pbt_url(base, sizeof base, port, NULL),
                  "pool_alias", "SEED", "default_site", "FR011", "timeout_ms", 10000),
        extra, json_pack("{s:s,s:s}", "username", "admin", "password", password), err, rc);
}
static struct pb_connection *connection_with(json_t *extra)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_full(sx.port, "sandbox-x3", extra, &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}
static struct pb_connection *connection(void)
{
    return connection_with(NULL);
}

/* ---- items --------------------------------------------------------------------------------- */

struct item {
    struct pb_sink_item it;
    json_t *doc;
    json_t *trace;
};

/* Run one item; takes `doc`. */
static enum pb_rc run(struct pb_connection *c, struct item *x, const char *command, json_t *doc,
                      const char *reference, uint32_t attempt)
{
    struct pb_err err = {0};
    if (!doc)
        fail_msg("document did not pack");
    memset(x, 0, sizeof *x);
    x->doc = doc;
    x->trace = json_array();
    pbt_item(&x->it, command, doc, reference, reference, attempt);
    pbt_execute1(c, sx.http, x->trace, time(NULL), &x->it, &err);
    return x->it.rc;
}
static void item_free(struct item *x)
{
    json_decref(x->doc);
    json_decref(x->it.result);
    json_decref(x->trace);
    memset(x, 0, sizeof *x);
}

static void expect_ok(struct item *x)
{
    if (x->it.rc != PB_OK)
        fail_msg("rc %d: %s", x->it.rc, x->it.message);
    assert_true(x->it.erp_id[0] != '\0');
    assert_non_null(x->it.result);
}

static void expect_fail(struct item *x, enum pb_rc rc, const char *words)
{
    if (x->it.rc != rc)
        fail_msg("expected rc %d, got %d: %s", rc, x->it.rc, x->it.message);
    assert_string_equal(x->it.erp_id, "");
    assert_contains(x->it.message, words);
}

/* Documents ----------------------------------------------------------------------------------- */

static json_t *customer_doc(const char *num, const char *name)
{
    return json_pack("{s:{s:s,s:s},s:{s:s,s:s}}", "BPC0_1", "BPCNUM", num, "BPCNAM", name, "BPC1_1",
                     "CUR", "USD", "CRY", "US");
}

/* An order of two lines, without SALFCY and without a reference. */
static json_t *order_doc(const char *customer, const char *item2)
{
    return json_pack("{s:{s:s,s:s},s:[{s:s,s:s,s:s},{s:s,s:i,s:s}]}", "SOH0_1", "SOHTYP", "SON",
                     "BPCORD", customer, "SOH4_1", "ITMREF", "ITM-100", "QTY", "2", "GROPRI",
                     "10.99", "ITMREF", item2, "QTY", 1, "GROPRI", "5.00");
}

static json_t *payment_doc(const char *order, const char *account, const char *txn)
{
    return json_pack("{s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s},s:[{s:s,s:s,s:s}]}", "PAY0_1", "PAYTYP",
                     "CC", "BPR", "C001", "ACC", "5120000", "CUR", "USD", "AMTCUR", "26.98", "REF",
                     txn, "SOHNUM", order, "PAY1_1", "ACC", account, "VCRNUM", order, "AMTLIN",
                     "26.98");
}

static void make_customer(struct pb_connection *c)
{
    struct item x;
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann Smith"), "cust-1", 1);
    expect_ok(&x);
    item_free(&x);
}

/* Save an order; copies its SOHNUM into `out`. */
static void make_order(struct pb_connection *c, const char *ref, char *out, size_t len)
{
    struct item x;
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-200"), ref, 1);
    expect_ok(&x);
    snprintf(out, len, "%s", x.it.erp_id);
    item_free(&x);
}

/* ---- init ---------------------------------------------------------------------------------- */

static void expect_init_error(json_t *extra, const char *password, const char *words)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_full(sx.port, password, extra, &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, words);
    assert_null(c->state);
    pbt_connection_free(c);
}

static void test_init_refusals(void **state)
{
    struct pb_err err = {0};
    struct pb_connection *c = calloc(1, sizeof *c);

    expect_init_error(json_pack("{s:i}", "pool_alais", 1), "x", "settings.pool_alais: unknown");
    expect_init_error(json_pack("{s:s}", "base_url", "ftp://x3"), "x", "settings.base_url");
    expect_init_error(json_pack("{s:s}", "pool_alias", ""), "x", "settings.pool_alias: required");
    expect_init_error(json_pack("{s:{s:s}}", "public_names", "sales_order", "yosoh"), "x",
                      "settings.public_names.sales_order");
    expect_init_error(json_pack("{s:{s:s}}", "public_names", "invoice", "SIH"), "x",
                      "settings.public_names.invoice: unknown entity");
    expect_init_error(json_pack("{s:{s:{s:s}}}", "ids", "customer", "reference_field", "REF"), "x",
                      "settings.ids.customer.reference_field: unknown key");
    expect_init_error(json_pack("{s:{s:{s:s}}}", "ids", "sales_order", "group", "SOH0 1"), "x",
                      "settings.ids.sales_order.group");
    expect_init_error(json_pack("{s:s}", "customer_update", "merge"), "x",
                      "settings.customer_update");
    expect_init_error(json_pack("{s:i}", "timeout_ms", 5), "x", "settings.timeout_ms");
    expect_init_error(json_pack("{s:s}", "default_site", "fr 011"), "x", "settings.default_site");
    /* reconciliation settings */
    expect_init_error(json_pack("{s:s}", "journal_type", "od j"), "x", "settings.journal_type");
    expect_init_error(json_pack("{s:i}", "journal_site", 11), "x", "settings.journal_site");
    expect_init_error(json_pack("{s:s}", "refund_account", ""), "x", "settings.refund_account");
    expect_init_error(json_pack("{s:i}", "ledger_page_size", 0), "x",
                      "settings.ledger_page_size: must be an integer from 1 to 1000");
    expect_init_error(json_pack("{s:i}", "ledger_page_size", 1001), "x",
                      "settings.ledger_page_size");
    expect_init_error(json_pack("{s:{s:{s:s}}}", "ids", "customer", "date_field", "ACCDAT"), "x",
                      "settings.ids.customer.date_field: unknown key");
    expect_init_error(json_pack("{s:{s:{s:s}}}", "ids", "payment", "date_field", "acc dat"), "x",
                      "settings.ids.payment.date_field");
    expect_init_error(NULL, "", "secrets.password: required");

    /* base_url missing */
    c->magic = PB_CONNECTION_MAGIC;
    c->type = &pb_connector_sagex3;
    c->settings = json_pack("{s:s}", "pool_alias", "SEED");
    c->secrets = json_pack("{s:s,s:s}", "username", "admin", "password", "p");
    assert_int_equal(c->type->init(c, &err), PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.base_url: required");
    pbt_connection_free(c);
}

static void test_max_batch_and_unknown_command(void **state)
{
    struct pb_connection *c = connection();
    struct item x;
    assert_int_equal(c->type->max_batch(c, "salesorder.create"), 1);
    assert_int_equal(c->type->max_batch(c, "customer.upsert"), 1);
    assert_int_equal(c->type->max_batch(c, "stock.allocate"), 1);
    assert_int_equal(c->type->max_batch(c, "payment.create"), 1);
    assert_int_equal(c->type->max_batch(c, "journal.create"), 1);
    assert_int_equal(c->type->max_batch(c, "invoice.create"), 0);
    run(c, &x, "invoice.create", json_object(), "r", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "no command \"invoice.create\"");
    item_free(&x);
    assert_int_equal(stat_of("requests"), 0);
    pbt_connection_free(c);
}

/* ---- customer.upsert ----------------------------------------------------------------------- */

static void test_customer_upsert_twice_is_one_customer(void **state)
{
    struct pb_connection *c = connection();
    struct item a, b;

    run(c, &a, "customer.upsert", customer_doc("C001", "Ann Smith"), "cust-1", 1);
    expect_ok(&a);
    assert_string_equal(a.it.erp_id, "C001");
    run(c, &b, "customer.upsert", customer_doc("C001", "Ann Smith"), "cust-1b", 1);
    expect_ok(&b);
    assert_string_equal(b.it.erp_id, "C001");
    assert_int_equal(stat_of("customers"), 1);
    assert_int_equal(stat_of("modifications"), 0); /* nothing differed: left as it is */
    assert_int_equal(stat_of("duplicate_keys_refused"), 0);
    /* the second upsert only read the customer */
    assert_int_equal(json_array_size(b.trace), 1);
    assert_contains(json_string_value(json_object_get(json_array_get(b.trace, 0), "request")),
                    "<wss:read>");
    item_free(&a);
    item_free(&b);
    pbt_connection_free(c);
}

static void test_customer_upsert_modifies_or_keeps(void **state)
{
    struct pb_connection *c = connection();
    struct pb_connection *keep = connection_with(json_pack("{s:s}", "customer_update", "keep"));
    struct item x;
    json_t *r;

    make_customer(c);
    run(keep, &x, "customer.upsert", customer_doc("C001", "Ann Smith-Jones"), "cust-1", 1);
    expect_ok(&x);
    item_free(&x);
    assert_int_equal(stat_of("modifications"), 0);

    run(c, &x, "customer.upsert", customer_doc("C001", "Ann Smith-Jones"), "cust-1", 1);
    expect_ok(&x);
    assert_string_equal(x.it.erp_id, "C001");
    item_free(&x);
    assert_int_equal(stat_of("modifications"), 1);
    assert_int_equal(stat_of("customers"), 1);
    r = records();
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(
                json_object_get(json_array_get(json_object_get(r, "customers"), 0), "record"),
                "BPC0_1"),
            "BPCNAM")),
        "Ann Smith-Jones");
    json_decref(r);
    pbt_connection_free(keep);
    pbt_connection_free(c);
}

static void test_customer_matched_without_number(void **state)
{
    struct pb_connection *c =
        connection_with(json_pack("{s:{s:{s:s}}}", "ids", "customer", "match_field", "WEB"));
    struct item a, b, none;

    run(c, &a, "customer.upsert",
        json_pack("{s:{s:s},s:{s:s}}", "BPC0_1", "BPCNAM", "Bob", "BPC2_1", "WEB",
                  "bob@example.com"),
        "cust-bob", 1);
    expect_ok(&a);
    run(c, &b, "customer.upsert",
        json_pack("{s:{s:s},s:{s:s}}", "BPC0_1", "BPCNAM", "Bob", "BPC2_1", "WEB",
                  "bob@example.com"),
        "cust-bob", 1);
    expect_ok(&b);
    assert_string_equal(a.it.erp_id, b.it.erp_id);
    assert_int_equal(stat_of("customers"), 1);
    item_free(&a);
    item_free(&b);
    pbt_connection_free(c);

    /* without a match field and without a number: a mapping error, nothing sent */
    c = connection();
    run(c, &none, "customer.upsert", json_pack("{s:{s:s}}", "BPC0_1", "BPCNAM", "Bob"), "x", 1);
    expect_fail(&none, PB_ERR_MAPPING, "needs the customer's number (field BPCNUM");
    item_free(&none);
    pbt_connection_free(c);
}

/* ---- salesorder.create --------------------------------------------------------------------- */

static void test_salesorder_lines_site_defaulted(void **state)
{
    struct pb_connection *c = connection();
    struct item x;
    json_t *r, *soh;

    make_customer(c);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-200"), "ORDER-10023", 1);
    expect_ok(&x);
    assert_contains(x.it.erp_id, "SONFR011-");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(x.it.result, "SOH0_1"), "SOHNUM")),
        x.it.erp_id);
    item_free(&x);
    assert_int_equal(stat_of("sales_orders"), 1);
    r = records();
    soh = json_object_get(json_array_get(json_object_get(r, "sales_orders"), 0), "record");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(soh, "SOH0_1"), "SALFCY")), "FR011");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(soh, "SOH0_1"), "CUSORDREF")),
        "ORDER-10023");
    assert_int_equal(json_array_size(json_object_get(soh, "SOH4_1")), 2);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(soh, "SOH4_1"), 0), "GROPRI")),
                        "10.99");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(soh, "SOH4_1"), 1), "QTY")),
                        "1");
    json_decref(r);
    pbt_connection_free(c);

    /* a site in the document wins; no default and no site: mapping error */
    c = connection_with(json_pack("{s:s}", "default_site", "US011"));
    run(c, &x, "salesorder.create",
        json_pack("{s:{s:s,s:s},s:[{s:s,s:s}]}", "SOH0_1", "BPCORD", "C001", "SALFCY", "FR011",
                  "SOH4_1", "ITMREF", "ITM-100", "QTY", "1"),
        "ORDER-2", 1);
    expect_ok(&x);
    assert_contains(x.it.erp_id, "FR011");
    item_free(&x);
    pbt_connection_free(c);
    c = connection();
    json_object_del(c->settings, "default_site");
    c->type->destroy(c);
    {
        struct pb_err err = {0};
        assert_int_equal(c->type->init(c, &err), PB_OK);
    }
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-200"), "ORDER-3", 1);
    expect_fail(&x, PB_ERR_MAPPING, "settings.default_site is not set");
    item_free(&x);
    pbt_connection_free(c);
}

static void test_salesorder_invalid_item_is_permanent(void **state)
{
    struct pb_connection *c = connection();
    struct item x;
    make_customer(c);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-999"), "ORDER-BAD", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "ITMREF ITM-999 : record does not exist");
    assert_contains(x.it.message, "Sage X3 refused save SOH");
    item_free(&x);
    assert_int_equal(stat_of("sales_orders"), 0);
    pbt_connection_free(c);
}

static void test_salesorder_retry_finds_the_saved_order(void **state)
{
    struct pb_connection *c = connection();
    struct item first, retry, fresh;

    make_customer(c);
    /* the save happens, its reply is lost */
    inject("{\"drop_reply\":1}");
    run(c, &first, "salesorder.create", order_doc("C001", "ITM-200"), "ORDER-LOST", 1);
    expect_fail(&first, PB_ERR_TRANSIENT, "HTTP 502");
    assert_int_equal(stat_of("sales_orders"), 1);
    /* attempt 2 looks it up by CUSORDREF and returns it */
    run(c, &retry, "salesorder.create", order_doc("C001", "ITM-200"), "ORDER-LOST", 2);
    expect_ok(&retry);
    assert_contains(retry.it.erp_id, "SONFR011-");
    assert_int_equal(json_array_size(retry.trace), 1); /* the query only */
    assert_contains(json_string_value(json_object_get(json_array_get(retry.trace, 0), "request")),
                    "<wss:query>");
    assert_int_equal(stat_of("sales_orders"), 1);
    assert_int_equal(stat_of("duplicate_references"), 0);
    /* attempt 2 of an order that was never saved: looked up, then saved once */
    run(c, &fresh, "salesorder.create", order_doc("C001", "ITM-200"), "ORDER-NEW", 2);
    expect_ok(&fresh);
    assert_int_equal(json_array_size(fresh.trace), 2);
    assert_int_equal(stat_of("sales_orders"), 2);
    assert_int_equal(stat_of("duplicate_references"), 0);
    item_free(&first);
    item_free(&retry);
    item_free(&fresh);
    pbt_connection_free(c);
}

/* ---- stock.allocate ------------------------------------------------------------------------ */

static void test_allocation_and_repeat(void **state)
{
    struct pb_connection *c = connection();
    struct item a, b, short_;
    char order[64], order2[64];
    json_t *r;

    make_customer(c);
    make_order(c, "ORDER-A", order, sizeof order);
    run(c, &a, "stock.allocate", json_pack("{s:{s:s}}", "GRP1", "SOHNUM", order), "alloc-A", 1);
    expect_ok(&a);
    assert_contains(a.it.erp_id, "ALL");
    run(c, &b, "stock.allocate", json_pack("{s:{s:s}}", "GRP1", "SOHNUM", order), "alloc-A", 2);
    expect_ok(&b);
    assert_string_equal(a.it.erp_id, b.it.erp_id);
    assert_int_equal(stat_of("allocations"), 1);
    r = records();
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "stock"), "ITM-100")),
                        "8.00");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "stock"), "ITM-200")),
                        "4.00");
    json_decref(r);

    /* ITM-300 has no stock: X3's refusal is permanent and names the item */
    make_order(c, "ORDER-B", order2, sizeof order2);
    {
        struct item o;
        run(c, &o, "salesorder.create", order_doc("C001", "ITM-300"), "ORDER-C", 1);
        expect_ok(&o);
        run(c, &short_, "stock.allocate", json_pack("{s:{s:s}}", "GRP1", "SOHNUM", o.it.erp_id),
            "alloc-C", 1);
        expect_fail(&short_, PB_ERR_PERMANENT, "ITMREF ITM-300 : insufficient stock");
        item_free(&o);
    }
    assert_int_equal(stat_of("allocations"), 1);
    item_free(&a);
    item_free(&b);
    item_free(&short_);

    run(c, &a, "stock.allocate", json_pack("{s:{s:s}}", "GRP1", "ORDER", "x"), "alloc-x", 1);
    expect_fail(&a, PB_ERR_MAPPING, "needs the order number (field SOHNUM");
    item_free(&a);
    pbt_connection_free(c);
}

/* ---- payment.create ------------------------------------------------------------------------ */

static void test_payment_wrong_account_is_permanent(void **state)
{
    struct pb_connection *c = connection();
    struct item x;
    char order[64];

    make_customer(c);
    make_order(c, "ORDER-P", order, sizeof order);
    run(c, &x, "payment.create", payment_doc(order, "4119999", "TXN-1"), "TXN-1", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "Account 4119999 : invalid");
    item_free(&x);
    assert_int_equal(stat_of("payments"), 0);
    pbt_connection_free(c);
}

static void test_payment_linked_with_transaction_id(void **state)
{
    struct pb_connection *c = connection();
    struct item x;
    char order[64];
    json_t *r, *pay, *soh;

    make_customer(c);
    make_order(c, "ORDER-P", order, sizeof order);
    run(c, &x, "payment.create", payment_doc(order, "4110000", "PT-118237422"), "PT-118237422", 1);
    expect_ok(&x);
    assert_contains(x.it.erp_id, "PAY");
    r = records();
    pay = json_array_get(json_object_get(r, "payments"), 0);
    soh = json_array_get(json_object_get(r, "sales_orders"), 0);
    assert_string_equal(json_string_value(json_object_get(pay, "order")), order);
    assert_string_equal(json_string_value(json_object_get(pay, "reference")), "PT-118237422");
    assert_string_equal(json_string_value(json_array_get(json_object_get(soh, "payments"), 0)),
                        x.it.erp_id);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(pay, "record"), "PAY0_1"), "AMTCUR")),
                        "26.98");
    json_decref(r);
    item_free(&x);

    /* a payment for an order X3 does not have */
    run(c, &x, "payment.create", payment_doc("SONFR011-999999", "4110000", "PT-2"), "PT-2", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "Order SONFR011-999999 : record does not exist");
    item_free(&x);
    pbt_connection_free(c);
}

static void test_payment_retry_finds_the_saved_payment(void **state)
{
    struct pb_connection *c = connection();
    struct item first, retry;
    char order[64];

    make_customer(c);
    make_order(c, "ORDER-R", order, sizeof order);
    inject("{\"drop_reply\":1}");
    run(c, &first, "payment.create", payment_doc(order, "4110000", "PT-77"), "PT-77", 1);
    expect_fail(&first, PB_ERR_TRANSIENT, "will retry");
    run(c, &retry, "payment.create", payment_doc(order, "4110000", "PT-77"), "PT-77", 2);
    expect_ok(&retry);
    assert_string_equal(retry.it.erp_id, "PAY0000001");
    assert_int_equal(stat_of("payments"), 1);
    assert_int_equal(stat_of("duplicate_references"), 0);
    item_free(&first);
    item_free(&retry);
    pbt_connection_free(c);
}

/* ---- journal.create ------------------------------------------------------------------------ */

static json_t *journal_doc(const char *ref, const char *debit, const char *credit)
{
    return json_pack("{s:{s:s,s:s,s:s,s:s},s:[{s:s,s:s},{s:s,s:s}]}", "GACC0_1", "TYP", "ODJ",
                     "FCY", "US011", "CUR", "USD", "REF", ref, "GACC1_1", "ACC", "7070000", "DEB",
                     debit, "ACC", "4110000", "CDT", credit);
}

static void test_journal_balanced_retry_and_unbalanced(void **state)
{
    struct pb_connection *c = connection();
    struct item a, b, bad;

    run(c, &a, "journal.create", journal_doc("RF-1", "10.00", "10.00"), "RF-1", 1);
    expect_ok(&a);
    run(c, &b, "journal.create", journal_doc("RF-1", "10.00", "10.00"), "RF-1", 2);
    expect_ok(&b);
    assert_string_equal(a.it.erp_id, b.it.erp_id);
    assert_int_equal(stat_of("journals"), 1);
    run(c, &bad, "journal.create", journal_doc("RF-2", "10.00", "9.99"), "RF-2", 1);
    expect_fail(&bad, PB_ERR_PERMANENT, "Entry not balanced: debit 10.00, credit 9.99");
    assert_int_equal(stat_of("journals"), 1);
    item_free(&a);
    item_free(&b);
    item_free(&bad);
    pbt_connection_free(c);
}

/* ---- faults -------------------------------------------------------------------------------- */

static void test_soap_fault_and_busy_are_transient(void **state)
{
    struct pb_connection *c = connection();
    struct item x;

    inject("{\"soap_fault\":1}");
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "SOAP Fault (soapenv:Server)");
    item_free(&x);

    inject("{\"pool_busy\":1}");
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "No Web Service connection available in pool SEED");
    item_free(&x);

    inject("{\"soap_fault\":1,\"fault_string\":\"ITMREF ITM-9 : record does not exist\"}");
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "ITMREF ITM-9 : record does not exist");
    item_free(&x);

    /* and after the faults, the same item goes through once */
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 2);
    expect_ok(&x);
    item_free(&x);
    assert_int_equal(stat_of("customers"), 1);
    pbt_connection_free(c);
}

static void test_bad_credentials(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_full(sx.port, "wrong-password", NULL, &err, &rc);
    struct item x;
    assert_int_equal(rc, PB_OK);
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 1);
    expect_fail(&x, PB_ERR_AUTH, "refused the credentials (HTTP 401)");
    assert_contains(x.it.message, "secrets.username and secrets.password");
    assert_null(strstr(x.it.message, "wrong-password"));
    {
        char *t = json_dumps(x.trace, 0);
        assert_null(strstr(t, "wrong-password"));
        assert_null(strstr(t, "Basic "));
        free(t);
    }
    item_free(&x);
    assert_int_equal(stat_of("unauthorized"), 1);
    assert_int_equal(stat_of("customers"), 0);
    pbt_connection_free(c);
}

static void test_unreachable_is_transient(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_full(1, "p", NULL, &err, &rc);
    struct item x;
    assert_int_equal(rc, PB_OK);
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "did not answer read BPC");
    item_free(&x);
    pbt_connection_free(c);
}

/* ---- escaping ------------------------------------------------------------------------------ */

static void test_hostile_values_are_escaped(void **state)
{
    static const char hostile[] =
        "Ann</FLD></GRP><GRP ID=\"BPC0_1\"><FLD NAME=\"BPCNUM\">HACK</FLD>]]>&amp;<![CDATA[x "
        "\"q\" 'a' <!-- c --> \xc3\xa9\xe2\x82\xac\r\n\ttab";
    struct pb_connection *c = connection();
    struct item x;
    json_t *r, *cust;
    const char *req;

    run(c, &x, "customer.upsert", customer_doc("C001", hostile), "c", 1);
    expect_ok(&x);
    assert_string_equal(x.it.erp_id, "C001");
    /* the save on the wire: escaped twice (the value inside objectXml inside SOAP) */
    req = json_string_value(json_object_get(json_array_get(x.trace, 1), "request"));
    assert_contains(req, "&amp;lt;/FLD&amp;gt;&amp;lt;/GRP&amp;gt;");
    assert_null(strstr(req, "<FLD NAME=\"BPCNUM\">HACK"));
    item_free(&x);
    assert_int_equal(stat_of("customers"), 1);
    r = records();
    cust = json_object_get(json_array_get(json_object_get(r, "customers"), 0), "record");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(cust, "BPC0_1"), "BPCNAM")), hostile);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(cust, "BPC0_1"), "BPCNUM")), "C001");
    json_decref(r);

    /* read back through the connector (the reply's CDATA holds "]]>"): same text, no change */
    run(c, &x, "customer.upsert", customer_doc("C001", hostile), "c", 1);
    expect_ok(&x);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(x.it.result, "BPC0_1"), "BPCNAM")),
        hostile);
    item_free(&x);
    assert_int_equal(stat_of("modifications"), 0);

    /* hostile keys */
    run(c, &x, "customer.upsert", customer_doc("C<1>&\"C<1>&\"C<1>&\"xx", "Ann"), "c", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "too long");
    item_free(&x);
    run(c, &x, "customer.upsert", customer_doc("C&<2>", "Ann"), "c", 1);
    expect_ok(&x);
    assert_string_equal(x.it.erp_id, "C&<2>");
    item_free(&x);

    /* a hostile reference in a look-up's objectKeys: found again, not injected */
    {
        static const char ref[] = "R</value></item><item><key>SOHNUM</key><value>X";
        struct item a, b;
        run(c, &a, "salesorder.create", order_doc("C001", "ITM-200"), ref, 2);
        expect_ok(&a);
        run(c, &b, "salesorder.create", order_doc("C001", "ITM-200"), ref, 2);
        expect_ok(&b);
        assert_string_equal(a.it.erp_id, b.it.erp_id);
        assert_contains(json_string_value(json_object_get(json_array_get(b.trace, 0), "request")),
                        "<value>R&lt;/value&gt;&lt;/item&gt;&lt;item&gt;");
        item_free(&a);
        item_free(&b);
        assert_int_equal(stat_of("sales_orders"), 1);
    }
    pbt_connection_free(c);
}

static void test_mapping_errors_before_any_call(void **state)
{
    struct pb_connection *c = connection();
    struct item x;

    run(c, &x, "customer.upsert", customer_doc("C001", "Ann\x01Smith"), "c", 1);
    expect_fail(&x, PB_ERR_MAPPING, "field BPC0_1.BPCNAM contains the character U+0001");
    item_free(&x);
    run(c, &x, "salesorder.create",
        json_pack("{s:{s:s},s:[{s:s,s:s,s:f}]}", "SOH0_1", "BPCORD", "C001", "SOH4_1", "ITMREF",
                  "ITM-100", "QTY", "1", "GROPRI", 10.99),
        "o", 1);
    expect_fail(&x, PB_ERR_MAPPING, "field SOH4_1[0].GROPRI is a JSON number with a fraction");
    item_free(&x);
    run(c, &x, "salesorder.create",
        json_pack("{s:{s:s},s:s}", "SOH0_1", "BPCORD", "C001", "soh", "x"), "o", 1);
    expect_fail(&x, PB_ERR_MAPPING, "document member \"soh\": not an X3 group");
    item_free(&x);
    run(c, &x, "salesorder.create",
        json_pack("{s:{s:s},s:{s:s}}", "SOH0_1", "BPCORD", "C001", "x3", "site_field", "salfcy"),
        "o", 1);
    expect_fail(&x, PB_ERR_MAPPING, "the document's x3.site_field");
    item_free(&x);
    run(c, &x, "customer.upsert", json_pack("{s:{s:s,s:b}}", "BPC0_1", "BPCNUM", "C9", "BPCNAM", 1),
        "c", 1);
    expect_fail(&x, PB_ERR_MAPPING, "is a boolean");
    item_free(&x);
    run(c, &x, "customer.upsert", json_pack("[]"), "c", 1);
    expect_fail(&x, PB_ERR_MAPPING, "must be a JSON object");
    item_free(&x);
    assert_int_equal(stat_of("requests"), 0);
    pbt_connection_free(c);
}

/* ---- public names ------------------------------------------------------------------------- */

static void test_public_names_from_settings_and_document(void **state)
{
    struct pb_connection *c = connection_with(
        json_pack("{s:{s:s,s:s}}", "public_names", "sales_order", "YOSOH", "customer", "YBPC"));
    struct item x;
    json_t *doc;

    make_customer(c);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-200"), "ORDER-Y", 1);
    expect_ok(&x);
    assert_contains(json_string_value(json_object_get(json_array_get(x.trace, 0), "request")),
                    "<publicName>YOSOH</publicName>");
    item_free(&x);
    /* the document's x3 wins, and a reference field of the template's choice */
    doc = order_doc("C001", "ITM-200");
    json_object_set_new(doc, "x3",
                        json_pack("{s:s,s:s}", "public_name", "ZSOH", "reference_field", "REFLOT"));
    run(c, &x, "salesorder.create", doc, "ORDER-Z", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "Web service ZSOH : not published");
    assert_contains(json_string_value(json_object_get(json_array_get(x.trace, 0), "request")),
                    "&lt;FLD NAME=\"REFLOT\"&gt;ORDER-Z&lt;/FLD&gt;");
    item_free(&x);
    assert_int_equal(stat_of("sales_orders"), 1);
    pbt_connection_free(c);
}

/* ---- a scripted server ---------------------------------------------------------------------- */

static struct pbt_script script;

static void script_add(int status, const char *body)
{
    pbt_script_add(&script, status, body);
}

/* A CAdxResultXml reply; `result` is escaped XML text for resultXml. */
static void script_result_busy(const char *op, int status, const char *message, const char *result,
                               int busy);
static void script_result(const char *op, int status, const char *message, const char *result)
{
    script_result_busy(op, status, message, result, 0);
}

static void script_result_busy(const char *op, int status, const char *message, const char *result,
                               int busy)
{
    char body[4096];
    snprintf(body, sizeof body,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
             "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">"
             "<soapenv:Body><ns1:%sResponse xmlns:ns1=\"http://www.adonix.com/WSS\"><%sReturn>"
             "<messages>%s%s%s</messages><resultXml>%s</resultXml><status>%d</status>"
             "<technicalInfos><busy>%s</busy></technicalInfos></%sReturn></ns1:%sResponse>"
             "</soapenv:Body></soapenv:Envelope>",
             op, op, message ? "<messages><message>" : "", message ? message : "",
             message ? "</message><type>3</type></messages>" : "", result ? result : "", status,
             busy ? "true" : "false", op, op);
    script_add(200, body);
}

static void test_scripted_replies(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c;
    struct item x;

    pbt_script_start(&script, "text/xml");
    c = connection_full(script.port, "p", NULL, &err, &rc);
    assert_int_equal(rc, PB_OK);

    /* the duplicate-BPC race: not found, then "already exists" on save, then found */
    pbt_script_reset(&script);
    script_result("read", 0, "BPCNUM C001 : record does not exist", NULL);
    script_result("save", 0, "BPCNUM C001 : record already exists", NULL);
    script_result(
        "read", 1, NULL,
        "&lt;RESULT&gt;&lt;GRP ID=\"BPC0_1\"&gt;&lt;FLD NAME=\"BPCNUM\"&gt;C001&lt;/FLD&gt;"
        "&lt;FLD NAME=\"BPCNAM\"&gt;Ann&lt;/FLD&gt;&lt;/GRP&gt;&lt;GRP ID=\"BPC1_1\"&gt;"
        "&lt;FLD NAME=\"CUR\"&gt;USD&lt;/FLD&gt;&lt;FLD NAME=\"CRY\"&gt;US&lt;/FLD&gt;"
        "&lt;/GRP&gt;&lt;/RESULT&gt;");
    run(c, &x, "customer.upsert", customer_doc("C001", "Ann"), "c", 1);
    expect_ok(&x);
    assert_string_equal(x.it.erp_id, "C001");
    assert_int_equal(script.next, 3); /* no modify: nothing differed */
    item_free(&x);

    /* status 1 without the key: transient (the retry looks it up) */
    pbt_script_reset(&script);
    script_result("save", 1, NULL, "&lt;RESULT/&gt;");
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "saved the SOH but its reply has no SOHNUM");
    item_free(&x);

    /* a 200 that is not SOAP; a 404; a 503 without a Fault; a Client Fault */
    pbt_script_reset(&script);
    script_add(200, "<html>login</html>");
    script_add(404, "not here");
    script_add(503, "busy");
    script_add(500, "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">"
                    "<soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode>"
                    "<faultstring>Unmarshalling error</faultstring></soapenv:Fault></soapenv:Body>"
                    "</soapenv:Envelope>");
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "is not a SOAP result");
    item_free(&x);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "HTTP 404: check settings.base_url and settings.soap_path");
    item_free(&x);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "HTTP 503 and no SOAP Fault");
    item_free(&x);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "SOAP Fault (soapenv:Client): Unmarshalling error");
    item_free(&x);

    /* status 0: busy by technicalInfos alone, or by X3's words; else permanent */
    pbt_script_reset(&script);
    script_result_busy("save", 0, "Request aborted", NULL, 1);
    script_result("save", 0, "Timeout: no connection available in pool SEED", NULL);
    script_result("save", 0, "Order SONFR011-000001 : record locked by ADMIN", NULL);
    script_result("save", 0, "Request aborted", NULL);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "could not run save SOH now: Request aborted");
    item_free(&x);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "no connection available");
    item_free(&x);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_TRANSIENT, "record locked by ADMIN");
    item_free(&x);
    run(c, &x, "salesorder.create", order_doc("C001", "ITM-100"), "O-1", 1);
    expect_fail(&x, PB_ERR_PERMANENT, "Sage X3 refused save SOH: Request aborted");
    item_free(&x);

    /* the envelope on the wire */
    assert_contains(script.last_request, "<wss:save>");
    assert_contains(script.last_request, "<callContext><codeLang>ENG</codeLang>"
                                         "<poolAlias>SEED</poolAlias><poolId/>"
                                         "<requestConfig>adxwss.optreturn=XML</requestConfig>"
                                         "</callContext><publicName>SOH</publicName>");
    assert_contains(script.last_request, "xmlns:wss=\"http://www.adonix.com/WSS\"");

    pbt_connection_free(c);
    pbt_script_stop(&script);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_init_refusals, test_setup),
        cmocka_unit_test_setup(test_max_batch_and_unknown_command, test_setup),
        cmocka_unit_test_setup(test_customer_upsert_twice_is_one_customer, test_setup),
        cmocka_unit_test_setup(test_customer_upsert_modifies_or_keeps, test_setup),
        cmocka_unit_test_setup(test_customer_matched_without_number, test_setup),
        cmocka_unit_test_setup(test_salesorder_lines_site_defaulted, test_setup),
        cmocka_unit_test_setup(test_salesorder_invalid_item_is_permanent, test_setup),
        cmocka_unit_test_setup(test_salesorder_retry_finds_the_saved_order, test_setup),
        cmocka_unit_test_setup(test_allocation_and_repeat, test_setup),
        cmocka_unit_test_setup(test_payment_wrong_account_is_permanent, test_setup),
        cmocka_unit_test_setup(test_payment_linked_with_transaction_id, test_setup),
        cmocka_unit_test_setup(test_payment_retry_finds_the_saved_payment, test_setup),
        cmocka_unit_test_setup(test_journal_balanced_retry_and_unbalanced, test_setup),
        cmocka_unit_test_setup(test_soap_fault_and_busy_are_transient, test_setup),
        cmocka_unit_test_setup(test_bad_credentials, test_setup),
        cmocka_unit_test_setup(test_unreachable_is_transient, test_setup),
        cmocka_unit_test_setup(test_hostile_values_are_escaped, test_setup),
        cmocka_unit_test_setup(test_mapping_errors_before_any_call, test_setup),
        cmocka_unit_test_setup(test_public_names_from_settings_and_document, test_setup),
        cmocka_unit_test_setup(test_scripted_replies, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
