/*
 * tests/unit/test_connector_xero.c: the Xero sink connector
 * (src/connectors/xero/) against the sandbox's Xero emulator, plus a small
 * scripted fake server for the replies the emulator cannot be made to give.
 *
 * Emulator (pb_sandbox_start with only "xero", port 0): OAuth2 token fetched
 * once and reused, refreshed inside the margin and after a 401; contact.upsert
 * creating and then finding by email (case-insensitively, no duplicate per
 * GET /_sandbox/stats); invoice.create of 3 with one bad AccountCode (two OK,
 * one PB_ERR_PERMANENT carrying Xero's message); payment.create against an
 * invoice; attempt = 2 finding the existing record and creating nothing; an
 * identical retried write answered from Xero's idempotency store; invoice.void
 * and its retry; 429 (fault burst_429) and 500 (error_rate) as transient with
 * retry_after_s; bad client credentials. Credit notes: creditnote.create and
 * its retry by Reference; creditnote.allocate (an over-allocation refused in
 * Xero's words, a retry that finds the allocation on the credit note and
 * sends nothing, or only the missing one); a partial refund of a PAID
 * invoice (the allocation refused, the refund paid out of the credit note by
 * creditnote.refund, a retry finding it, payments and refunds that share a
 * Reference kept apart); creditnote.void and its retry. Every request those
 * tests made (and the reconciliation calls: ledger's pages, post_journal's
 * chart of accounts, look-ups, PUT /BankTransfers, /BankTransactions and
 * /ManualJournals) is then checked against xero_accounting.yaml: the operation
 * exists, its query parameters are declared, its body conforms to the
 * schema (skipped when the spec is absent; PB_XERO_SPEC names it).
 *
 * Fake server (pb_httpd on an ephemeral port): records the last API request's
 * headers and body, and answers with a scripted status/body, to check the
 * headers every request carries, that decimal strings go out as JSON numbers,
 * a reply with fewer elements than sent, a 400 ValidationException with
 * per-element errors, a 403 with Xero's Detail, and a 401 that persists after
 * a fresh token.
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
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "connectors/connector.h"
#include "connectors/xero/xero_internal.h"
#include "core/diag.h"
#include "core/json.h"
#include "core/yamldoc.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "net/ratelimit.h"
#include "pbtest.h"
#include "sandbox.h"

extern const struct pb_connector_type pb_connector_xero;

#define TENANT "2f9b7d4c-8a1e-4c3b-9f5d-6e0a1b2c3d4e" /* the emulator's default tenant */

static struct pbt_env sx;

/* ---- the emulator's admin routes and the fixture --------------------------------------------- */

static long admin(const char *method, const char *path, const char *body, json_t **out)
{
    return pbt_admin(sx.port, method, path, body, out);
}

static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}

static int group_setup(void **state)
{
    return pbt_env_sandbox(&sx, "xero", json_pack("{s:{s:i}}", "xero", "port", 0));
}

static int group_teardown(void **state)
{
    pbt_env_stop(&sx);
    return 0;
}

static int test_setup(void **state)
{
    pbt_faults(sx.sb, "xero", "{\"reset\":true}");
    pbt_admin_post(sx.port, "/_sandbox/reset", "{}");
    return 0;
}

static struct pb_connection *connection_at(int port, const char *client_secret, json_t *extra,
                                           struct pb_err *err, enum pb_rc *rc)
{
    char api[96], token[96];
    struct pb_connection *c = pbt_connection_try(
        &pb_connector_xero, "xero-test",
        json_pack("{s:s,s:s,s:s}", "api_base", pbt_url(api, sizeof api, port, "/api.xro/2.0"),
                  "token_url", pbt_url(token, sizeof token, port, "/connect/token"), "tenant_id",
                  TENANT),
        extra, json_pack("{s:s,s:s}", "client_id", "sandbox-client", "client_secret", client_secret),
        err, rc);
    if (*rc == PB_OK &&
        pb_ratelimit_new(&pb_connector_xero.default_rate_limit, &c->limiter, err) != PB_OK)
        fail_msg("ratelimit: %s", err->msg);
    return c;
}
static struct pb_connection *connection(void)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_at(sx.port, "sandbox-secret", NULL, &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

/* ---- items ----------------------------------------------------------------------------------- */

#define MAX_ITEMS 8

struct batch {
    struct pb_sink_item it[MAX_ITEMS];
    json_t *docs[MAX_ITEMS];
    size_t n;
};

/* Add an item; takes `doc`. */
static void add(struct batch *b, const char *command, json_t *doc, const char *reference,
                const char *key, uint32_t attempt)
{
    struct pb_sink_item *it = &b->it[b->n];
    assert_true(b->n < MAX_ITEMS);
    memset(it, 0, sizeof *it);
    b->docs[b->n] = doc;
    it->command = command;
    it->document = doc;
    it->reference = reference;
    it->idempotency_key = key;
    it->attempt = attempt;
    b->n++;
}

static void batch_clear(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        json_decref(b->docs[i]);
        json_decref(b->it[i].result);
        free(b->it[i].result_json);
    }
    b->n = 0;
}

static enum pb_rc execute_at(struct pb_connection *c, struct batch *b, time_t now, json_t *trace,
                             struct pb_err *err)
{
    struct pb_call_ctx ctx = pbt_ctx(sx.http, trace, now);
    return c->type->execute(c, &ctx, b->it, b->n, err);
}

static enum pb_rc execute(struct pb_connection *c, struct batch *b, struct pb_err *err)
{
    return execute_at(c, b, time(NULL), NULL, err);
}

static void expect_ok(struct batch *b, size_t i)
{
    if (b->it[i].rc != PB_OK)
        fail_msg("item %zu: rc %d: %s", i, b->it[i].rc, b->it[i].message);
    assert_true(strlen(b->it[i].erp_id) == 36);
    assert_non_null(pb_sink_item_record(&b->it[i]));
}

static json_t *contact(const char *name, const char *email)
{
    return json_pack("{s:s,s:s}", "Name", name, "EmailAddress", email);
}

static json_t *invoice(const char *contact_id, const char *reference, const char *account,
                       const char *amount)
{
    return json_pack("{s:s,s:{s:s},s:s,s:s,s:s,s:s,s:s,s:[{s:s,s:s,s:s,s:s}]}", "Type", "ACCREC",
                     "Contact", "ContactID", contact_id, "Date", "2026-11-21", "DueDate",
                     "2026-12-21", "Status", "AUTHORISED", "LineAmountTypes", "NoTax",
                     "Reference", reference, "LineItems", "Description", "Order",
                     "Quantity", "1", "UnitAmount", amount, "AccountCode", account);
}

static json_t *payment(const char *invoice_id, const char *reference, const char *amount)
{
    return json_pack("{s:{s:s},s:{s:s},s:s,s:s,s:s}", "Invoice", "InvoiceID", invoice_id,
                     "Account", "Code", "090", "Date", "2026-11-21", "Amount", amount,
                     "Reference", reference);
}

/* One contact, created; its ContactID into id. */
static void make_contact(struct pb_connection *c, const char *email, char id[64])
{
    struct batch b = {0};
    struct pb_err err = {0};
    add(&b, "contact.upsert", contact("Ann Smith", email), email, "k-contact", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    snprintf(id, 64, "%s", b.it[0].erp_id);
    batch_clear(&b);
}

/* ---- tests against the emulator -------------------------------------------------------------- */

static void test_init_settings(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c;

    c = connection_at(1, "x", json_pack("{s:i}", "batch_size", 51), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.batch_size");
    pbt_connection_free(c);
    c = connection_at(1, "x", json_pack("{s:s}", "tenant_id", ""), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.tenant_id");
    pbt_connection_free(c);
    c = connection_at(1, "x", json_pack("{s:i}", "batchsize", 5), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.batchsize");
    pbt_connection_free(c);
    c = connection_at(1, "", NULL, &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "secrets.client_secret");
    pbt_connection_free(c);

    c = connection_at(1, "x", json_pack("{s:i}", "batch_size", 20), &err, &rc);
    assert_int_equal(rc, PB_OK);
    assert_int_equal(c->type->max_batch(c, "contact.upsert"), 20);
    assert_int_equal(c->type->max_batch(c, "invoice.create"), 20);
    assert_int_equal(c->type->max_batch(c, "payment.create"), 20);
    assert_int_equal(c->type->max_batch(c, "invoice.void"), 1);
    assert_int_equal(c->type->max_batch(c, "creditnote.create"), 20);
    assert_int_equal(c->type->max_batch(c, "creditnote.refund"), 20);
    assert_int_equal(c->type->max_batch(c, "creditnote.allocate"), 1);
    assert_int_equal(c->type->max_batch(c, "creditnote.void"), 1);
    assert_int_equal(c->type->max_batch(c, "journal.post"), 0);
    assert_int_equal(c->type->max_batch(c, "creditnote.delete"), 0);
    assert_int_equal(c->type->max_batch(c, NULL), 0);
    assert_int_equal(pb_connector_xero.caps, PB_CAP_SINK | PB_CAP_LEDGER | PB_CAP_JOURNAL);
    assert_int_equal(pb_connector_xero.default_rate_limit.per_minute, 60);
    assert_int_equal(pb_connector_xero.default_rate_limit.per_day, 5000);
    assert_int_equal(pb_connector_xero.default_rate_limit.concurrent, 5);
    pbt_connection_free(c);
}

static void test_token_fetch_and_reuse(void **state)
{
    struct pb_connection *c = connection();
    struct xero_state *st = c->state;
    struct batch b = {0};
    struct pb_err err = {0};
    json_t *trace = json_array();
    long long issued = stat_of("tokens_issued");
    time_t now = time(NULL);
    char *dump, token[256];

    add(&b, "contact.upsert", contact("Ann Smith", "ann@example.com"), "c1", "k1", 1);
    assert_int_equal(execute_at(c, &b, now, trace, &err), PB_OK);
    expect_ok(&b, 0);
    batch_clear(&b);
    assert_int_equal(stat_of("tokens_issued"), issued + 1);
    /* the token call and the API calls are in the trace, the token itself is not */
    assert_true(json_array_size(trace) >= 3);
    assert_contains(pb_json_str(trace, "0.url"), "/connect/token");
    snprintf(token, sizeof token, "%s", st->token);
    dump = json_dumps(trace, JSON_COMPACT);
    assert_null(strstr(dump, token));
    assert_null(strstr(dump, "sandbox-secret"));
    free(dump);

    /* reused while more than the margin (120 s) is left */
    add(&b, "contact.upsert", contact("Bob Jones", "bob@example.com"), "c2", "k2", 1);
    assert_int_equal(execute_at(c, &b, now + 1800 - 121, NULL, &err), PB_OK);
    expect_ok(&b, 0);
    batch_clear(&b);
    assert_int_equal(stat_of("tokens_issued"), issued + 1);

    /* refreshed inside the margin */
    add(&b, "contact.upsert", contact("Cy Brown", "cy@example.com"), "c3", "k3", 1);
    assert_int_equal(execute_at(c, &b, now + 1800 - 119, NULL, &err), PB_OK);
    expect_ok(&b, 0);
    batch_clear(&b);
    assert_int_equal(stat_of("tokens_issued"), issued + 2);

    /* a token Xero no longer accepts: 401, one new token, the request retried once */
    pthread_mutex_lock(&st->token_lock);
    st->token[0] = st->token[0] == 'x' ? 'y' : 'x';
    pthread_mutex_unlock(&st->token_lock);
    add(&b, "contact.upsert", contact("Di Green", "di@example.com"), "c4", "k4", 1);
    assert_int_equal(execute_at(c, &b, now + 1800 - 119, NULL, &err), PB_OK);
    expect_ok(&b, 0);
    batch_clear(&b);
    assert_int_equal(stat_of("tokens_issued"), issued + 3);
    json_decref(trace);
    pbt_connection_free(c);
}

/* Many workers share one connection: one token between them. */
struct worker {
    struct pb_connection *c;
    int index;
    enum pb_rc rc;
    enum pb_rc item_rc;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct pb_http_client *http = NULL;
    struct pb_err err = {0};
    struct batch b = {0};
    char email[64];
    struct pb_call_ctx ctx;

    if (pb_http_client_new(&http, &err) != PB_OK)
        return NULL;
    snprintf(email, sizeof email, "worker%d@example.com", w->index);
    add(&b, "contact.upsert", contact(email, email), email, email, 1);
    ctx = (struct pb_call_ctx){http, NULL, time(NULL), -1};
    w->rc = w->c->type->execute(w->c, &ctx, b.it, b.n, &err);
    w->item_rc = b.it[0].rc;
    batch_clear(&b);
    pb_http_client_free(http);
    return NULL;
}

static void test_token_shared_by_threads(void **state)
{
    struct pb_connection *c = connection();
    struct worker w[6];
    pthread_t t[6];
    long long issued = stat_of("tokens_issued");

    for (int i = 0; i < 6; i++) {
        w[i] = (struct worker){c, i, PB_ERR_INTERNAL, PB_ERR_INTERNAL};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].rc, PB_OK);
        assert_int_equal(w[i].item_rc, PB_OK);
    }
    assert_int_equal(stat_of("tokens_issued"), issued + 1);
    assert_int_equal(stat_of("contacts"), 6);
    pbt_connection_free(c);
}

static void test_bad_client_credentials(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c = connection_at(sx.port, "wrong-secret", NULL, &err, &rc);
    struct batch b = {0};
    assert_int_equal(rc, PB_OK);
    add(&b, "contact.upsert", contact("Ann Smith", "ann@example.com"), "c1", "k1", 1);
    add(&b, "contact.upsert", contact("Bob Jones", "bob@example.com"), "c2", "k2", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "refused the client credentials");
    assert_contains(err.msg, "invalid_client");
    for (size_t i = 0; i < b.n; i++) {
        assert_int_equal(b.it[i].rc, PB_ERR_TRANSIENT);
        assert_contains(b.it[i].message, "secrets.client_secret");
    }
    assert_int_equal(stat_of("contacts"), 0);
    batch_clear(&b);
    pbt_connection_free(c);
}

static void test_contact_upsert(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char ann[64], bob[64];

    add(&b, "contact.upsert", contact("Ann Smith", "ann@example.com"), "c1", "k1", 1);
    add(&b, "contact.upsert", contact("Bob Jones", "bob@example.com"), "c2", "k2", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    expect_ok(&b, 1);
    assert_string_not_equal(b.it[0].erp_id, b.it[1].erp_id);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "EmailAddress"), "ann@example.com");
    snprintf(ann, sizeof ann, "%s", b.it[0].erp_id);
    snprintf(bob, sizeof bob, "%s", b.it[1].erp_id);
    batch_clear(&b);
    assert_int_equal(stat_of("contacts"), 2);

    /* the same emails again (one in another case) are found, not created; a new one is */
    add(&b, "contact.upsert", contact("Ann Smith", "ANN@Example.com"), "c1", "k1b", 1);
    add(&b, "contact.upsert", contact("Cy Brown", "cy@example.com"), "c3", "k3", 1);
    add(&b, "contact.upsert", contact("Bob Jones", "bob@example.com"), "c2", "k2b", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    expect_ok(&b, 1);
    expect_ok(&b, 2);
    assert_string_equal(b.it[0].erp_id, ann);
    assert_string_equal(b.it[2].erp_id, bob);
    batch_clear(&b);
    assert_int_equal(stat_of("contacts"), 3);

    /* one email twice in a batch makes one contact */
    add(&b, "contact.upsert", contact("Di Green", "di@example.com"), "c4", "k4", 1);
    add(&b, "contact.upsert", contact("Di Green", "Di@example.com"), "c5", "k5", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    expect_ok(&b, 1);
    assert_string_equal(b.it[0].erp_id, b.it[1].erp_id);
    batch_clear(&b);
    assert_int_equal(stat_of("contacts"), 4);

    /* without an email, the name is the key: Xero keeps names unique */
    add(&b, "contact.upsert", json_pack("{s:s}", "Name", "Fay Stone"), "c9", "k9", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    snprintf(ann, sizeof ann, "%s", b.it[0].erp_id);
    batch_clear(&b);
    add(&b, "contact.upsert", json_pack("{s:s}", "Name", "fay stone"), "c9", "k9b", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, ann);
    batch_clear(&b);
    assert_int_equal(stat_of("contacts"), 5);

    /* a quote and a backslash in an email are escaped in the where-clause */
    add(&b, "contact.upsert", contact("Odd Name", "o\"dd\\x@example.com"), "c6", "k6", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    if (b.it[0].rc != PB_OK) /* the emulator may refuse the address; it must not be a 400 */
        assert_int_equal(b.it[0].rc, PB_ERR_PERMANENT);
    batch_clear(&b);

    /* a document that is not an object is a mapping error, the rest still goes */
    add(&b, "contact.upsert", json_string("not a contact"), "c7", "k7", 1);
    add(&b, "contact.upsert", contact("Ed Black", "ed@example.com"), "c8", "k8", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    assert_int_equal(b.it[0].rc, PB_ERR_MAPPING);
    expect_ok(&b, 1);
    batch_clear(&b);
    pbt_connection_free(c);
}

static void test_invoice_batch_with_bad_account(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64];

    make_contact(c, "ann@example.com", cid);
    add(&b, "invoice.create", invoice(cid, "INV-1", "200", "10.99"), "ORDER-1", "ki1", 1);
    add(&b, "invoice.create", invoice(cid, "INV-2", "999", "5.00"), "ORDER-2", "ki2", 1);
    add(&b, "invoice.create", invoice(cid, "INV-3", "200", "0.01"), "ORDER-3", "ki3", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    expect_ok(&b, 2);
    assert_int_equal(b.it[1].rc, PB_ERR_PERMANENT);
    assert_contains(b.it[1].message, "Account code '999' is not a valid code for this document.");
    assert_non_null(pb_sink_item_record(&b.it[1])); /* Xero's element, for the dead letter */
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[1]), "StatusAttributeString"), "ERROR");
    /* the decimal string went out as an exact number */
    assert_true(json_is_number(pb_json_path(pb_sink_item_record(&b.it[0]), "Total")));
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Reference"), "INV-1");
    batch_clear(&b);
    assert_int_equal(stat_of("invoices"), 2);
    pbt_connection_free(c);
}

static void test_payment_and_retry_by_reference(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], inv[64], pay[64];
    long long requests;

    make_contact(c, "ann@example.com", cid);
    add(&b, "invoice.create", invoice(cid, "INV-10", "200", "10.99"), "ORDER-10", "ki10", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    snprintf(inv, sizeof inv, "%s", b.it[0].erp_id);
    batch_clear(&b);

    add(&b, "payment.create", payment(inv, "PAY-10", "10.99"), "PAYMENT-10", "kp10", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    snprintf(pay, sizeof pay, "%s", b.it[0].erp_id);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Invoice.InvoiceID"), inv);
    batch_clear(&b);
    assert_int_equal(stat_of("payments"), 1);

    /* attempt 2 of an invoice that was created: found by reference, nothing created.
     * A different idempotency key makes sure it is the look-up that finds it. */
    requests = stat_of("requests");
    add(&b, "invoice.create", invoice(cid, "INV-10", "200", "10.99"), "ORDER-10", "ki10-b", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, inv);
    batch_clear(&b);
    assert_int_equal(stat_of("invoices"), 1);
    assert_int_equal(stat_of("requests"), requests + 1); /* the GET only: no PUT */

    /* the same for a payment */
    add(&b, "payment.create", payment(inv, "PAY-10", "10.99"), "PAYMENT-10", "kp10-b", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, pay);
    batch_clear(&b);
    assert_int_equal(stat_of("payments"), 1);

    /* a retried batch whose membership changed: the old one found, the new one created */
    add(&b, "invoice.create", invoice(cid, "INV-10", "200", "10.99"), "ORDER-10", "ki10", 2);
    add(&b, "invoice.create", invoice(cid, "INV-11", "200", "3.50"), "ORDER-11", "ki11", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    expect_ok(&b, 1);
    assert_string_equal(b.it[0].erp_id, inv);
    assert_string_not_equal(b.it[1].erp_id, inv);
    batch_clear(&b);
    assert_int_equal(stat_of("invoices"), 2);
    assert_int_equal(stat_of("duplicate_invoice_references"), 0);
    pbt_connection_free(c);
}

/* A document without Reference is sent with the item's reference, so a retry can find it. */
static void test_reference_filled_in(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], inv[64];
    json_t *doc;

    make_contact(c, "ann@example.com", cid);
    doc = invoice(cid, "x", "200", "1.00");
    json_object_del(doc, "Reference");
    add(&b, "invoice.create", doc, "ORDER-20", "ki20", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Reference"), "ORDER-20");
    assert_null(json_object_get(b.docs[0], "Reference")); /* the borrowed document is untouched */
    snprintf(inv, sizeof inv, "%s", b.it[0].erp_id);
    batch_clear(&b);

    doc = invoice(cid, "x", "200", "1.00");
    json_object_del(doc, "Reference");
    add(&b, "invoice.create", doc, "ORDER-20", "ki20-retry", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, inv);
    batch_clear(&b);
    assert_int_equal(stat_of("invoices"), 1);
    pbt_connection_free(c);
}

/* An identical write retried (its reply lost) is answered from Xero's idempotency store. */
static void test_idempotency_key_replay(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], first[2][64];

    make_contact(c, "ann@example.com", cid);
    for (int round = 0; round < 2; round++) {
        add(&b, "invoice.create", invoice(cid, "INV-30", "200", "1.00"), "ORDER-30", "ki30", 1);
        add(&b, "invoice.create", invoice(cid, "INV-31", "200", "2.00"), "ORDER-31", "ki31", 1);
        assert_int_equal(execute(c, &b, &err), PB_OK);
        expect_ok(&b, 0);
        expect_ok(&b, 1);
        if (round == 0) {
            snprintf(first[0], 64, "%s", b.it[0].erp_id);
            snprintf(first[1], 64, "%s", b.it[1].erp_id);
        } else {
            assert_string_equal(b.it[0].erp_id, first[0]);
            assert_string_equal(b.it[1].erp_id, first[1]);
        }
        batch_clear(&b);
    }
    assert_int_equal(stat_of("invoices"), 2);
    assert_int_equal(stat_of("idempotent_replays"), 1);
    pbt_connection_free(c);
}

static void test_invoice_void(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], inv[64];

    make_contact(c, "ann@example.com", cid);
    add(&b, "invoice.create", invoice(cid, "INV-40", "200", "4.00"), "ORDER-40", "ki40", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    snprintf(inv, sizeof inv, "%s", b.it[0].erp_id);
    batch_clear(&b);

    add(&b, "invoice.void", json_pack("{s:s}", "InvoiceID", inv), "VOID-40", "kv40", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, inv);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Status"), "VOIDED");
    batch_clear(&b);

    /* a retry finds it voided and sends no second void */
    add(&b, "invoice.void", json_pack("{s:s}", "InvoiceID", inv), "VOID-40", "kv40-b", 2);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    batch_clear(&b);

    /* an invoice with a payment cannot be voided: Xero's business error, permanent */
    add(&b, "invoice.create", invoice(cid, "INV-41", "200", "4.00"), "ORDER-41", "ki41", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    snprintf(inv, sizeof inv, "%s", b.it[0].erp_id);
    batch_clear(&b);
    add(&b, "payment.create", payment(inv, "PAY-41", "4.00"), "PAYMENT-41", "kp41", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    batch_clear(&b);
    add(&b, "invoice.void", json_pack("{s:s}", "InvoiceID", inv), "VOID-41", "kv41", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    assert_int_equal(b.it[0].rc, PB_ERR_PERMANENT);
    assert_contains(b.it[0].message, "Invoice status cannot be changed from PAID to VOIDED");
    batch_clear(&b);

    add(&b, "invoice.void", json_object(), "VOID-42", "kv42", 1);
    execute(c, &b, &err);
    assert_int_equal(b.it[0].rc, PB_ERR_MAPPING);
    assert_contains(b.it[0].message, "InvoiceID");
    batch_clear(&b);
    pbt_connection_free(c);
}

static void test_rate_limited(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};

    /* fetch the token first so that the burst hits the API call */
    make_contact(c, "ann@example.com", (char[64]){0});
    assert_int_equal(admin("POST", "/_sandbox/faults", "{\"burst_429\":1,\"retry_after_s\":2}",
                           NULL),
                     200);
    add(&b, "contact.upsert", contact("Bob Jones", "bob@example.com"), "c2", "k2", 1);
    add(&b, "contact.upsert", contact("Cy Brown", "cy@example.com"), "c3", "k3", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_TRANSIENT);
    for (size_t i = 0; i < b.n; i++) {
        assert_int_equal(b.it[i].rc, PB_ERR_TRANSIENT);
        assert_int_equal(b.it[i].retry_after_s, 2);
        assert_contains(b.it[i].message, "429");
        assert_contains(b.it[i].message, "X-Rate-Limit-Problem: minute");
    }
    batch_clear(&b);
    assert_int_equal(stat_of("contacts"), 1);
    pbt_connection_free(c);
}

static void test_server_error(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    json_t *faults;
    char cid[64];

    make_contact(c, "ann@example.com", cid);
    faults = json_pack("{s:f}", "error_rate", 1.0);
    assert_int_equal(pb_sandbox_set_faults(sx.sb, "xero", faults, &err), PB_OK);
    json_decref(faults);
    add(&b, "invoice.create", invoice(cid, "INV-50", "200", "1.00"), "ORDER-50", "ki50", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_TRANSIENT);
    assert_int_equal(b.it[0].rc, PB_ERR_TRANSIENT);
    assert_contains(b.it[0].message, "HTTP 50");
    batch_clear(&b);
    faults = json_pack("{s:b}", "reset", 1);
    assert_int_equal(pb_sandbox_set_faults(sx.sb, "xero", faults, &err), PB_OK);
    json_decref(faults);
    assert_int_equal(stat_of("invoices"), 0);
    pbt_connection_free(c);
}

static void test_unknown_command(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    add(&b, "journal.post", json_object(), "J1", "kj1", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_PERMANENT);
    assert_int_equal(b.it[0].rc, PB_ERR_PERMANENT);
    assert_contains(b.it[0].message, "journal.post");
    batch_clear(&b);
    pbt_connection_free(c);
}

/* ---- credit notes ---------------------------------------------------------------------------- */

/* Every write and look-up of the credit-note tests, for test_requests_conform_to_spec. */
static json_t *credit_trace;

static enum pb_rc execute_traced(struct pb_connection *c, struct batch *b, struct pb_err *err)
{
    if (!credit_trace)
        credit_trace = json_array();
    return execute_at(c, b, time(NULL), credit_trace, err);
}

static json_t *credit_note(const char *contact_id, const char *reference, const char *amount)
{
    return json_pack("{s:s,s:{s:s},s:s,s:s,s:s,s:s,s:s,s:[{s:s,s:s,s:s,s:s}]}", "Type",
                     "ACCRECCREDIT", "Contact", "ContactID", contact_id, "Date", "2026-11-22",
                     "Status", "AUTHORISED", "LineAmountTypes", "NoTax", "CurrencyCode", "GBP",
                     "Reference", reference, "LineItems", "Description", "Refund", "Quantity",
                     "1", "UnitAmount", amount, "AccountCode", "200");
}

static json_t *allocation(const char *credit_note_id, const char *invoice_id, const char *amount)
{
    return json_pack("{s:s,s:[{s:{s:s},s:s,s:s}]}", "CreditNoteID", credit_note_id,
                     "Allocations", "Invoice", "InvoiceID", invoice_id, "Amount", amount, "Date",
                     "2026-11-22");
}

static json_t *refund(const char *credit_note_id, const char *reference, const char *amount)
{
    return json_pack("{s:{s:s},s:{s:s},s:s,s:s,s:s}", "CreditNote", "CreditNoteID",
                     credit_note_id, "Account", "Code", "091", "Date", "2026-11-22", "Amount",
                     amount, "Reference", reference);
}

/* Run one item of `command`; returns its rc, erp_id into id (may be NULL). */
static enum pb_rc run_one(struct pb_connection *c, const char *command, json_t *doc,
                          const char *reference, const char *key, uint32_t attempt, char id[64],
                          char *message, size_t message_len)
{
    struct batch b = {0};
    struct pb_err err = {0};
    enum pb_rc rc;
    add(&b, command, doc, reference, key, attempt);
    execute_traced(c, &b, &err);
    rc = b.it[0].rc;
    if (id)
        snprintf(id, 64, "%s", b.it[0].erp_id);
    if (message)
        snprintf(message, message_len, "%s", b.it[0].message);
    batch_clear(&b);
    return rc;
}

/* An AUTHORISED invoice of `amount`; its id into inv. */
static void make_invoice(struct pb_connection *c, const char *cid, const char *reference,
                         const char *amount, char inv[64])
{
    char msg[512];
    if (run_one(c, "invoice.create", invoice(cid, reference, "200", amount), reference,
                reference, 1, inv, msg, sizeof msg) != PB_OK)
        fail_msg("invoice: %s", msg);
}

static void test_creditnote_create_and_retry(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], cn[64];
    long long requests;

    make_contact(c, "ann@example.com", cid);
    add(&b, "creditnote.create", credit_note(cid, "RF-1", "10.50"), "REFUND-1", "kc1", 1);
    add(&b, "creditnote.create", credit_note(cid, "RF-2", "1.00"), "REFUND-2", "kc2", 1);
    json_object_set_new(json_array_get(json_object_get(b.docs[1], "LineItems"), 0), "AccountCode",
                        json_string("999"));
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Reference"), "RF-1");
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Status"), "AUTHORISED");
    assert_true(json_is_number(pb_json_path(pb_sink_item_record(&b.it[0]), "RemainingCredit")));
    assert_int_equal(b.it[1].rc, PB_ERR_PERMANENT);
    assert_contains(b.it[1].message, "Xero refused the CreditNote: Account code '999' is not a "
                                     "valid code for this document.");
    snprintf(cn, sizeof cn, "%s", b.it[0].erp_id);
    batch_clear(&b);
    assert_int_equal(stat_of("credit_notes"), 1);

    /* attempt 2 with another key: found by Reference, nothing sent but the GET */
    requests = stat_of("requests");
    add(&b, "creditnote.create", credit_note(cid, "RF-1", "10.50"), "REFUND-1", "kc1-b", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, cn);
    batch_clear(&b);
    assert_int_equal(stat_of("requests"), requests + 1);
    assert_int_equal(stat_of("credit_notes"), 1);

    /* the identical write again (a batch whose reply was lost): Xero's
     * idempotency store answers it, nothing is created */
    add(&b, "creditnote.create", credit_note(cid, "RF-1", "10.50"), "REFUND-1", "kc1", 1);
    add(&b, "creditnote.create", credit_note(cid, "RF-2", "1.00"), "REFUND-2", "kc2", 1);
    json_object_set_new(json_array_get(json_object_get(b.docs[1], "LineItems"), 0), "AccountCode",
                        json_string("999"));
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, cn);
    assert_int_equal(b.it[1].rc, PB_ERR_PERMANENT);
    batch_clear(&b);
    assert_int_equal(stat_of("idempotent_replays"), 1);
    assert_int_equal(stat_of("credit_notes"), 1);

    /* a supplier credit that shares the Reference is not ours: created */
    add(&b, "creditnote.create", credit_note(cid, "RF-1", "2.00"), "REFUND-1", "kc3", 2);
    json_object_set_new(b.docs[0], "Type", json_string("ACCPAYCREDIT"));
    json_object_set_new(json_array_get(json_object_get(b.docs[0], "LineItems"), 0), "AccountCode",
                        json_string("404"));
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_not_equal(b.it[0].erp_id, cn);
    batch_clear(&b);
    assert_int_equal(stat_of("credit_notes"), 2);
    assert_int_equal(stat_of("duplicate_credit_note_references"), 1);
    pbt_connection_free(c);
}

/* Credit applied to an unpaid invoice; an over-allocation refused in Xero's
 * words; retries that find the allocation send nothing, or only what is
 * missing. */
static void test_creditnote_allocate(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], inv[64], cn[64], msg[512];
    long long requests;
    json_t *doc, *el;

    make_contact(c, "ann@example.com", cid);
    make_invoice(c, cid, "ORDER-60", "30.00", inv);
    assert_int_equal(run_one(c, "creditnote.create", credit_note(cid, "RF-60", "10.00"), "RF-60",
                             "kc60", 1, cn, msg, sizeof msg),
                     PB_OK);

    /* more than the credit note holds */
    assert_int_equal(run_one(c, "creditnote.allocate", allocation(cn, inv, "12.00"), "AL-60",
                             "ka60", 1, NULL, msg, sizeof msg),
                     PB_ERR_PERMANENT);
    assert_contains(msg, "Xero refused the Allocation: Credit Note cannot be allocated as amount "
                         "is greater than amount outstanding");
    assert_int_equal(stat_of("allocations"), 0);

    add(&b, "creditnote.allocate", allocation(cn, inv, "4.00"), "AL-61", "ka61", 1);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, cn);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "CreditNoteID"), cn);
    el = pb_json_path(pb_sink_item_record(&b.it[0]), "Allocations.0");
    assert_string_equal(pb_json_str(el, "Invoice.InvoiceID"), inv);
    assert_true(json_is_number(json_object_get(el, "Amount")));
    batch_clear(&b);
    assert_int_equal(stat_of("allocations"), 1);

    /* attempt 2 (its reply was lost): the credit note has it, nothing is sent */
    requests = stat_of("requests");
    add(&b, "creditnote.allocate", allocation(cn, inv, "4.00"), "AL-61", "ka61-b", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, cn);
    assert_int_equal(json_array_size(pb_json_path(pb_sink_item_record(&b.it[0]), "Allocations")), 1);
    batch_clear(&b);
    assert_int_equal(stat_of("requests"), requests + 1);
    assert_int_equal(stat_of("allocations"), 1);

    /* attempt 2 of a document of two, one of them saved: only the other goes */
    doc = allocation(cn, inv, "4");
    json_array_append_new(json_object_get(doc, "Allocations"),
                          json_pack("{s:{s:s},s:s,s:s}", "Invoice", "InvoiceID", inv, "Amount",
                                    "3.50", "Date", "2026-11-22"));
    add(&b, "creditnote.allocate", doc, "AL-62", "ka62", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_int_equal(json_array_size(pb_json_path(pb_sink_item_record(&b.it[0]), "Allocations")), 2);
    el = pb_json_path(pb_sink_item_record(&b.it[0]), "Allocations.1");
    /* the invoice owes 30.00 - 4.00 - 3.50 */
    assert_string_equal(pb_json_str(el, "Invoice.InvoiceID"), inv);
    {
        int64_t due = 0;
        assert_int_equal(pb_json_to_minor(pb_json_path(el, "Invoice.AmountDue"), "GBP", &due,
                                          &err),
                         PB_OK);
        assert_int_equal(due, 2250);
        assert_int_equal(pb_json_to_minor(pb_json_path(el, "CreditNote.RemainingCredit"), "GBP",
                                          &due, &err),
                         PB_OK);
        assert_int_equal(due, 250);
    }
    batch_clear(&b);
    assert_int_equal(stat_of("allocations"), 2);
    /* the last request carried the missing allocation only */
    assert_contains(pb_json_str(json_array_get(credit_trace, json_array_size(credit_trace) - 1),
                                "request"),
                    "{\"Allocations\":[{\"Invoice\":{\"InvoiceID\":");
    assert_null(strstr(pb_json_str(json_array_get(credit_trace, json_array_size(credit_trace) - 1),
                                   "request"),
                       "\"Amount\":4"));

    /* documents that are not the shape, an unknown credit note */
    assert_int_equal(run_one(c, "creditnote.allocate", json_pack("{s:[]}", "Allocations"),
                             "AL-63", "ka63", 1, NULL, msg, sizeof msg),
                     PB_ERR_MAPPING);
    assert_contains(msg, "CreditNoteID");
    assert_int_equal(run_one(c, "creditnote.allocate", json_pack("{s:s,s:[]}", "CreditNoteID", cn,
                                                                 "Allocations"),
                             "AL-64", "ka64", 1, NULL, msg, sizeof msg),
                     PB_ERR_MAPPING);
    assert_contains(msg, "Allocations");
    doc = allocation(cn, inv, "1.00");
    json_object_del(json_array_get(json_object_get(doc, "Allocations"), 0), "Date");
    assert_int_equal(run_one(c, "creditnote.allocate", doc, "AL-65", "ka65", 1, NULL, msg,
                             sizeof msg),
                     PB_ERR_MAPPING);
    assert_contains(msg, "Allocations[0]");
    assert_int_equal(run_one(c, "creditnote.allocate",
                             allocation("00000000-0000-4000-8000-000000000000", inv, "1.00"),
                             "AL-66", "ka66", 1, NULL, msg, sizeof msg),
                     PB_ERR_PERMANENT);
    assert_contains(msg, "Xero has no credit note 00000000-0000-4000-8000-000000000000");
    assert_int_equal(run_one(c, "creditnote.allocate",
                             allocation("00000000-0000-4000-8000-000000000000", inv, "1.00"),
                             "AL-66", "ka66", 2, NULL, msg, sizeof msg),
                     PB_ERR_PERMANENT);
    assert_contains(msg, "Xero has no credit note");

    /* a 429: transient for the call, with Retry-After */
    assert_int_equal(admin("POST", "/_sandbox/faults", "{\"burst_429\":1,\"retry_after_s\":3}",
                           NULL),
                     200);
    add(&b, "creditnote.allocate", allocation(cn, inv, "1.00"), "AL-67", "ka67", 1);
    assert_int_equal(execute_traced(c, &b, &err), PB_ERR_TRANSIENT);
    assert_int_equal(b.it[0].rc, PB_ERR_TRANSIENT);
    assert_int_equal(b.it[0].retry_after_s, 3);
    batch_clear(&b);
    assert_int_equal(stat_of("allocations"), 2);
    pbt_connection_free(c);
}

/* A partial refund of a PAID invoice: a credit note for part of it, which
 * cannot be allocated to the paid invoice, and a refund payment out of it. */
static void test_creditnote_partial_refund_of_paid_invoice(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], inv[64], inv2[64], cn[64], pay[64], refund_id[64], msg[512];
    int64_t left = -1;

    make_contact(c, "ann@example.com", cid);
    make_invoice(c, cid, "ORDER-70", "25.00", inv);
    assert_int_equal(run_one(c, "payment.create", payment(inv, "ORDER-70", "25.00"), "PAY-70",
                             "kp70", 1, pay, msg, sizeof msg),
                     PB_OK);
    assert_int_equal(run_one(c, "creditnote.create", credit_note(cid, "RF-70", "10.00"), "RF-70",
                             "kc70", 1, cn, msg, sizeof msg),
                     PB_OK);
    /* Xero takes no allocation on a paid invoice */
    assert_int_equal(run_one(c, "creditnote.allocate", allocation(cn, inv, "10.00"), "AL-70",
                             "ka70", 1, NULL, msg, sizeof msg),
                     PB_ERR_PERMANENT);
    assert_contains(msg, "The invoice you are trying to allocate to has already been paid off");

    /* so the money goes back as a refund out of the credit note */
    add(&b, "creditnote.refund", refund(cn, "RF-70", "10.00"), "REFUND-70", "kr70", 1);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "PaymentType"), "ARCREDITPAYMENT");
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "CreditNote.CreditNoteID"), cn);
    assert_int_equal(pb_json_to_minor(pb_json_path(pb_sink_item_record(&b.it[0]), "CreditNote.RemainingCredit"),
                                      "GBP", &left, &err),
                     PB_OK);
    assert_int_equal(left, 0);
    snprintf(refund_id, sizeof refund_id, "%s", b.it[0].erp_id);
    assert_string_not_equal(refund_id, pay);
    batch_clear(&b);
    assert_int_equal(stat_of("payments"), 2);

    /* a retry finds it by Reference: no second refund */
    add(&b, "creditnote.refund", refund(cn, "RF-70", "10.00"), "REFUND-70", "kr70-b", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, refund_id);
    batch_clear(&b);
    assert_int_equal(stat_of("payments"), 2);

    /* and the invoice's payment, which shares the Reference ORDER-70 with no
     * refund, is never taken for a refund, nor a refund for a payment */
    add(&b, "creditnote.refund", refund(cn, "ORDER-70", "10.00"), "REFUND-71", "kr71", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    assert_int_equal(b.it[0].rc, PB_ERR_PERMANENT); /* looked up, not found, sent: note is PAID */
    assert_contains(b.it[0].message, "Credit Note not of valid status for creation of a payment");
    batch_clear(&b);
    make_invoice(c, cid, "ORDER-71", "5.00", inv2);
    add(&b, "payment.create", payment(inv2, "RF-70", "5.00"), "PAY-71", "kp71", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_not_equal(b.it[0].erp_id, refund_id);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Invoice.InvoiceID"), inv2);
    batch_clear(&b);
    assert_int_equal(stat_of("payments"), 3);

    /* a refund out of another credit note that shares the Reference is another refund */
    assert_int_equal(run_one(c, "creditnote.create", credit_note(cid, "RF-73", "2.00"), "RF-73",
                             "kc73", 1, cn, msg, sizeof msg),
                     PB_OK);
    add(&b, "creditnote.refund", refund(cn, "RF-70", "2.00"), "REFUND-73", "kr73", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_not_equal(b.it[0].erp_id, refund_id);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "CreditNote.CreditNoteID"), cn);
    batch_clear(&b);
    assert_int_equal(stat_of("payments"), 4);

    /* a refund document must name the credit note, and no invoice */
    assert_int_equal(run_one(c, "creditnote.refund", payment(inv, "RF-72", "1.00"), "REFUND-72",
                             "kr72", 1, NULL, msg, sizeof msg),
                     PB_ERR_MAPPING);
    assert_contains(msg, "CreditNote.CreditNoteID");
    pbt_connection_free(c);
}

static void test_creditnote_void(void **state)
{
    struct pb_connection *c = connection();
    struct batch b = {0};
    struct pb_err err = {0};
    char cid[64], inv[64], cn[64], cn2[64], msg[512];
    long long requests;

    make_contact(c, "ann@example.com", cid);
    /* a chargeback opened: a credit note; won: the credit note voided */
    assert_int_equal(run_one(c, "creditnote.create", credit_note(cid, "CB-80", "19.99"), "CB-80",
                             "kc80", 1, cn, msg, sizeof msg),
                     PB_OK);
    add(&b, "creditnote.void", json_pack("{s:s}", "CreditNoteID", cn), "CB-80-WON", "kv80", 1);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, cn);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Status"), "VOIDED");
    batch_clear(&b);

    /* a retry finds it VOIDED and sends no second void */
    requests = stat_of("requests");
    add(&b, "creditnote.void", json_pack("{s:s}", "CreditNoteID", cn), "CB-80-WON", "kv80-b", 2);
    assert_int_equal(execute_traced(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(pb_json_str(pb_sink_item_record(&b.it[0]), "Status"), "VOIDED");
    batch_clear(&b);
    assert_int_equal(stat_of("requests"), requests + 1);

    /* an allocated credit note cannot be voided: Xero's refusal, permanent */
    make_invoice(c, cid, "ORDER-81", "30.00", inv);
    assert_int_equal(run_one(c, "creditnote.create", credit_note(cid, "CB-81", "5.00"), "CB-81",
                             "kc81", 1, cn2, msg, sizeof msg),
                     PB_OK);
    assert_int_equal(run_one(c, "creditnote.allocate", allocation(cn2, inv, "5.00"), "AL-81",
                             "ka81", 1, NULL, msg, sizeof msg),
                     PB_OK);
    assert_int_equal(run_one(c, "creditnote.void", json_pack("{s:s}", "CreditNoteID", cn2),
                             "CB-81-WON", "kv81", 2, NULL, msg, sizeof msg),
                     PB_ERR_PERMANENT);
    assert_contains(msg, "Xero refused the CreditNote: Credit Note status cannot be changed from "
                         "PAID to VOIDED");
    assert_int_equal(run_one(c, "creditnote.void", json_pack("{s:s}", "InvoiceID", inv),
                             "CB-82-WON", "kv82", 1, NULL, msg, sizeof msg),
                     PB_ERR_MAPPING);
    assert_contains(msg, "creditnote.void needs the document's CreditNoteID");
    assert_int_equal(run_one(c, "creditnote.void",
                             json_pack("{s:s}", "CreditNoteID",
                                       "00000000-0000-4000-8000-000000000000"),
                             "CB-83-WON", "kv83", 2, NULL, msg, sizeof msg),
                     PB_ERR_PERMANENT);
    assert_contains(msg, "Xero has no credit note");
    pbt_connection_free(c);
}

/* ---- the requests against Xero's Accounting API spec ----------------------------------------- */

static const json_t *spec_resolve(const json_t *root, const json_t *node)
{
    for (int i = 0; i < 8 && node; i++) {
        const char *ref = json_string_value(json_object_get(node, "$ref"));
        const char *p;
        if (!ref)
            return node;
        if (strncmp(ref, "#/", 2) != 0)
            return NULL;
        /* "#/components/schemas/CreditNote" */
        node = root;
        for (p = ref + 2; node && *p;) {
            const char *end = strchr(p, '/');
            char seg[128];
            size_t n = end ? (size_t)(end - p) : strlen(p);
            snprintf(seg, sizeof seg, "%.*s", (int)n, p);
            node = json_object_get(node, seg);
            p += n + (end ? 1 : 0);
        }
    }
    return NULL;
}

/* 1 when `v` conforms to `schema`: every member a non-read-only property,
 * enums hold, strings are strings, numbers numbers (or decimal text). */
static int spec_conform(const json_t *root, const json_t *schema, const json_t *v,
                        const char *path, char *why, size_t len)
{
    const json_t *props, *en;
    const char *type;
    schema = spec_resolve(root, schema);
    if (!schema) {
        snprintf(why, len, "%s: schema not found", path);
        return 0;
    }
    props = json_object_get(schema, "properties");
    type = json_string_value(json_object_get(schema, "type"));
    en = json_object_get(schema, "enum");
    if (props) {
        const char *key;
        json_t *member;
        if (!json_is_object(v)) {
            snprintf(why, len, "%s: must be an object", path);
            return 0;
        }
        json_object_foreach((json_t *)v, key, member) {
            const json_t *p = json_object_get(props, key);
            char sub[256];
            snprintf(sub, sizeof sub, "%s.%s", path, key);
            if (!p) {
                snprintf(why, len, "%s: no such field in the schema", sub);
                return 0;
            }
            if (json_is_true(json_object_get(p, "readOnly"))) {
                snprintf(why, len, "%s: the field is read-only", sub);
                return 0;
            }
            if (!spec_conform(root, p, member, sub, why, len))
                return 0;
        }
        return 1;
    }
    if (type && strcmp(type, "array") == 0) {
        size_t i;
        json_t *item;
        if (!json_is_array(v)) {
            snprintf(why, len, "%s: must be a list", path);
            return 0;
        }
        json_array_foreach(v, i, item) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s[%zu]", path, i);
            if (!spec_conform(root, json_object_get(schema, "items"), item, sub, why, len))
                return 0;
        }
        return 1;
    }
    if (json_is_array(en)) {
        size_t i;
        json_t *e;
        json_array_foreach(en, i, e) if (json_equal(e, v)) return 1;
        snprintf(why, len, "%s: %s is not one of the enum values", path,
                 json_is_string(v) ? json_string_value(v) : "(not text)");
        return 0;
    }
    if (type && strcmp(type, "string") == 0 && !json_is_string(v)) {
        snprintf(why, len, "%s: must be text", path);
        return 0;
    }
    if (type && strcmp(type, "number") == 0 && !json_is_number(v)) {
        snprintf(why, len, "%s: must be a number", path);
        return 0;
    }
    if (type && strcmp(type, "boolean") == 0 && !json_is_boolean(v)) {
        snprintf(why, len, "%s: must be a boolean", path);
        return 0;
    }
    return 1;
}

/* The spec's path template for a request path ("/CreditNotes/{CreditNoteID}"). */
static const char *spec_template(const json_t *paths, const char *path)
{
    const char *tpl;
    json_t *op;
    json_object_foreach((json_t *)paths, tpl, op) {
        const char *a = tpl, *b = path;
        while (*a && *b) {
            if (*a == '{') {
                a = strchr(a, '}');
                if (!a)
                    break;
                a++;
                while (*b && *b != '/')
                    b++;
                continue;
            }
            if (*a != *b)
                break;
            a++;
            b++;
        }
        if (a && !*a && !*b)
            return tpl;
    }
    return NULL;
}

/* 1 when the operation (or its path) declares query parameter `name`. */
static int spec_has_query(const json_t *root, const json_t *item, const json_t *op,
                          const char *name)
{
    const json_t *lists[2] = {json_object_get(item, "parameters"),
                              json_object_get(op, "parameters")};
    for (int l = 0; l < 2; l++) {
        size_t i;
        json_t *p;
        json_array_foreach((json_t *)lists[l], i, p) {
            const json_t *r = spec_resolve(root, p);
            if (r && !strcmp(pb_json_str(r, "in") ? pb_json_str(r, "in") : "", "query") &&
                !strcmp(pb_json_str(r, "name") ? pb_json_str(r, "name") : "", name))
                return 1;
        }
    }
    return 0;
}

/* The reconciliation calls (ledger's GET /Payments and /BankTransactions
 * pages; post_journal's GET /Organisation and /Accounts, its look-ups, PUT
 * /BankTransfers and /BankTransactions for a journal with bank lines and PUT
 * /ManualJournals for one without), traced for test_requests_conform_to_spec;
 * test_xero_recon.c tests what they do. */
static void test_recon_calls_traced(void **state)
{
    struct pb_connection *c = connection();
    struct pb_call_ctx ctx = {sx.http, NULL, time(NULL), -1};
    struct pb_err err = {0};
    json_t *records = json_array();
    /* bank 090 net, fees 404, clearing 091 gross: a transfer and a SPEND */
    json_t *settle = json_pack(
        "{s:s,s:s,s:s,s:s,s:[{s:s,s:i,s:s},{s:s,s:i,s:s},{s:s,s:i,s:s}]}", "reference",
        "PB-spec-1", "date", "2026-11-21", "narration", "spec check", "currency", "GBP", "lines",
        "account", "090", "amount_minor", 1000, "description", "net", "account", "404",
        "amount_minor", 99, "description", "fees", "account", "091", "amount_minor", -1099,
        "description", "gross");
    /* clearing 091 / other revenue 260: a RECEIVE */
    json_t *adjust = json_pack("{s:s,s:s,s:s,s:s,s:[{s:s,s:i,s:s},{s:s,s:i,s:s}]}", "reference",
                               "PB-spec-2", "date", "2026-11-21", "narration", "adjustment",
                               "currency", "GBP", "lines", "account", "091", "amount_minor", 1,
                               "description", "short", "account", "260", "amount_minor", -1,
                               "description", "short");
    /* no bank line: a manual journal */
    json_t *manual = json_pack("{s:s,s:s,s:s,s:s,s:[{s:s,s:i,s:s},{s:s,s:i,s:s}]}", "reference",
                               "PB-spec-3", "date", "2026-11-21", "narration", "reclass",
                               "currency", "GBP", "lines", "account", "404", "amount_minor", 5,
                               "description", "fee", "account", "260", "amount_minor", -5,
                               "description", "fee");
    char id[128];

    if (!credit_trace)
        credit_trace = json_array();
    ctx.trace = credit_trace;
    assert_int_equal(c->type->ledger(c, &ctx, 20777, 20779, records, &err), PB_OK);
    assert_int_equal(c->type->post_journal(c, &ctx, settle, id, sizeof id, &err), PB_OK);
    assert_int_equal(c->type->post_journal(c, &ctx, adjust, id, sizeof id, &err), PB_OK);
    assert_int_equal(c->type->post_journal(c, &ctx, manual, id, sizeof id, &err), PB_OK);
    assert_int_equal(stat_of("bank_transfers"), 1);
    assert_int_equal(stat_of("bank_transactions"), 2);
    assert_int_equal(stat_of("manual_journals"), 1);
    json_decref(records);
    json_decref(settle);
    json_decref(adjust);
    json_decref(manual);
    pbt_connection_free(c);
}

/* Every call the credit-note tests made: the method and path are operations
 * of xero_accounting.yaml, the query parameters are the operation's, and
 * each request body conforms to the operation's requestBody schema. */
static void test_requests_conform_to_spec(void **state)
{
    const char *spec = getenv("PB_XERO_SPEC");
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    const json_t *root, *paths;
    json_t *call;
    size_t i, writes = 0, seen_alloc = 0, seen_refund = 0, seen_transfer = 0, seen_bank = 0;

    if (!spec)
        spec = "/work/shared/specs/xero/xero_accounting.yaml";
    if (access(spec, R_OK) != 0) {
        fprintf(stderr, "skipped: Xero spec not found at %s (set PB_XERO_SPEC)\n", spec);
        skip();
    }
    assert_non_null(credit_trace); /* the credit-note tests ran first */
    if (pb_yamldoc_load_file(spec, &doc, &d) != PB_OK) {
        pb_diags_print(&d, stderr);
        fail_msg("cannot load %s", spec);
    }
    root = pb_yamldoc_root(doc);
    paths = json_object_get(root, "paths");
    json_array_foreach(credit_trace, i, call) {
        const char *url = pb_json_str(call, "url"), *method = pb_json_str(call, "method");
        const char *api = url ? strstr(url, "/api.xro/2.0") : NULL, *q;
        const char *body = pb_json_str(call, "request");
        const char *tpl;
        const json_t *item, *op, *schema;
        char path[512], lower[8], why[512];
        size_t k;

        if (!api)
            continue; /* the token endpoint: xero-identity.yaml */
        api += strlen("/api.xro/2.0");
        q = strchr(api, '?');
        snprintf(path, sizeof path, "%.*s", (int)(q ? q - api : (long)strlen(api)), api);
        tpl = spec_template(paths, path);
        if (!tpl)
            fail_msg("%s %s: no such path in the spec", method, path);
        for (k = 0; method[k] && k < sizeof lower - 1; k++)
            lower[k] = (char)(method[k] | 0x20);
        lower[k] = '\0';
        item = json_object_get(paths, tpl);
        op = json_object_get(item, lower);
        if (!op)
            fail_msg("%s %s: the spec has no %s on %s", method, path, method, tpl);
        for (const char *p = q ? q + 1 : NULL; p && *p;) {
            char name[64];
            size_t n = strcspn(p, "=&");
            snprintf(name, sizeof name, "%.*s", (int)n, p);
            if (!spec_has_query(root, item, op, name))
                fail_msg("%s %s: query parameter %s is not the operation's", method, tpl, name);
            p += strcspn(p, "&");
            if (*p)
                p++;
        }
        if (!body)
            continue;
        schema = pb_json_path(op, "requestBody.content.application/json.schema");
        if (!schema) /* the path has a '/' in a key: walk it by hand */
            schema = json_object_get(json_object_get(json_object_get(json_object_get(
                                                         op, "requestBody"),
                                                     "content"),
                                     "application/json"),
                                     "schema");
        if (!schema)
            fail_msg("%s %s: the spec takes no body", method, tpl);
        {
            json_t *sent = json_loads(body, 0, NULL);
            if (!sent)
                fail_msg("%s %s: the body is not JSON: %s", method, tpl, body);
            if (!spec_conform(root, schema, sent, tpl, why, sizeof why))
                fail_msg("%s %s: %s", method, tpl, why);
            seen_alloc += strstr(tpl, "/Allocations") != NULL;
            seen_transfer += strcmp(tpl, "/BankTransfers") == 0;
            seen_bank += strcmp(tpl, "/BankTransactions") == 0;
            seen_refund += strcmp(tpl, "/Payments") == 0 && json_object_get(json_array_get(
                                                                json_object_get(sent, "Payments"),
                                                                0),
                                                            "CreditNote") != NULL;
            json_decref(sent);
        }
        writes++;
    }
    assert_true(writes >= 10);
    assert_true(seen_alloc >= 3);
    assert_true(seen_refund >= 1);
    assert_int_equal(seen_transfer, 1);
    assert_int_equal(seen_bank, 2);
    /* the checker itself catches a wrong field and a read-only one */
    {
        char why[256];
        json_t *bad = json_pack("{s:[{s:s}]}", "CreditNotes", "Refrence", "x");
        assert_false(spec_conform(root, json_object_get(json_object_get(json_object_get(
                                                                           root, "components"),
                                                                       "schemas"),
                                                       "CreditNotes"),
                                  bad, "CreditNotes", why, sizeof why));
        assert_contains(why, "Refrence: no such field");
        json_decref(bad);
        bad = json_pack("{s:[{s:b}]}", "CreditNotes", "SentToContact", 1);
        assert_false(spec_conform(root, json_object_get(json_object_get(json_object_get(
                                                                           root, "components"),
                                                                       "schemas"),
                                                       "CreditNotes"),
                                  bad, "CreditNotes", why, sizeof why));
        assert_contains(why, "read-only");
        json_decref(bad);
    }
    pb_yamldoc_free(doc);
    json_decref(credit_trace);
    credit_trace = NULL;
}

/* ---- the scripted fake ----------------------------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    int status;                     /* reply to API calls */
    char body[4096];
    char retry_after[16];
    int tokens;                     /* token requests seen */
    int api_calls;
    char method[8], path[256], query_where[1024];
    char auth[64], tenant[64], accept[64], content_type[64], idem[160];
    char request_body[8192];
} fk = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void copy_header(char *dst, size_t len, struct pb_http_request *req, const char *name)
{
    const char *v = pb_http_header(req, name);
    snprintf(dst, len, "%s", v ? v : "");
}

static enum pb_http_action fake_token(struct pb_http_request *req,
                                      struct pb_http_response *resp, void *arg)
{
    char body[128];
    pthread_mutex_lock(&fk.mu);
    fk.tokens++;
    snprintf(body, sizeof body,
             "{\"access_token\":\"fake-token-%d\",\"expires_in\":1800,\"token_type\":\"Bearer\"}",
             fk.tokens);
    pthread_mutex_unlock(&fk.mu);
    pb_http_response_set(resp, 200, "application/json", body, strlen(body));
    return PB_HTTP_DONE;
}

static enum pb_http_action fake_api(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    const char *where = pb_http_query(req, "where");
    pthread_mutex_lock(&fk.mu);
    fk.api_calls++;
    snprintf(fk.method, sizeof fk.method, "%s", req->method);
    snprintf(fk.path, sizeof fk.path, "%s", req->path);
    snprintf(fk.query_where, sizeof fk.query_where, "%s", where ? where : "");
    copy_header(fk.auth, sizeof fk.auth, req, "Authorization");
    copy_header(fk.tenant, sizeof fk.tenant, req, "xero-tenant-id");
    copy_header(fk.accept, sizeof fk.accept, req, "Accept");
    copy_header(fk.content_type, sizeof fk.content_type, req, "Content-Type");
    copy_header(fk.idem, sizeof fk.idem, req, "Idempotency-Key");
    snprintf(fk.request_body, sizeof fk.request_body, "%s", req->body ? req->body : "");
    if (fk.retry_after[0])
        pb_http_response_header(resp, "Retry-After", fk.retry_after);
    pb_http_response_set(resp, fk.status, "application/json", fk.body, strlen(fk.body));
    pthread_mutex_unlock(&fk.mu);
    return PB_HTTP_DONE;
}

static const struct pb_http_route fake_routes[] = {
    {"POST", "/connect/token", fake_token, NULL},
    {"*", "/api.xro/2.0/*", fake_api, NULL},
    {NULL, NULL, NULL, NULL},
};

static void script(int status, const char *body)
{
    pthread_mutex_lock(&fk.mu);
    fk.status = status;
    snprintf(fk.body, sizeof fk.body, "%s", body);
    fk.retry_after[0] = '\0';
    fk.tokens = fk.api_calls = 0;
    pthread_mutex_unlock(&fk.mu);
}

static struct pb_connection *fake_connection(struct pb_httpd **server)
{
    struct pb_httpd_config cfg = {.routes = fake_routes};
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c;
    if (pb_httpd_start(&cfg, server, &err))
        fail_msg("fake: %s", err.msg);
    c = connection_at(pb_httpd_port(*server), "sandbox-secret", NULL, &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

static void test_request_shape(void **state)
{
    struct pb_httpd *server;
    struct pb_connection *c = fake_connection(&server);
    struct batch b = {0};
    struct pb_err err = {0};
    char key1[160];

    script(200, "{\"Invoices\":[{\"InvoiceID\":\"11111111-2222-4333-8444-555555555555\","
                "\"StatusAttributeString\":\"OK\"}]}");
    add(&b, "invoice.create", invoice("c0ffee00-0000-4000-8000-000000000000", "INV-1", "200",
                                      "10.99"),
        "ORDER-1", "key-1", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    expect_ok(&b, 0);
    assert_string_equal(b.it[0].erp_id, "11111111-2222-4333-8444-555555555555");
    assert_string_equal(fk.method, "PUT");
    assert_string_equal(fk.path, "/api.xro/2.0/Invoices");
    assert_string_equal(fk.auth, "Bearer fake-token-1");
    assert_string_equal(fk.tenant, TENANT);
    assert_string_equal(fk.accept, "application/json");
    assert_string_equal(fk.content_type, "application/json");
    assert_int_equal(strlen(fk.idem), 67);
    assert_memory_equal(fk.idem, "pb-", 3);
    snprintf(key1, sizeof key1, "%s", fk.idem);
    /* money went out as the exact number, never through a double */
    assert_contains(fk.request_body, "\"UnitAmount\":10.99");
    assert_contains(fk.request_body, "\"Quantity\":1");
    assert_contains(fk.request_body, "{\"Invoices\":[{");
    batch_clear(&b);

    /* the same batch gets the same key; another batch another */
    add(&b, "invoice.create", invoice("c0ffee00-0000-4000-8000-000000000000", "INV-1", "200",
                                      "10.99"),
        "ORDER-1", "key-1", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    assert_string_equal(fk.idem, key1);
    batch_clear(&b);
    add(&b, "invoice.create", invoice("c0ffee00-0000-4000-8000-000000000000", "INV-1", "200",
                                      "10.99"),
        "ORDER-1", "key-2", 1);
    execute(c, &b, &err);
    assert_string_not_equal(fk.idem, key1);
    batch_clear(&b);

    /* a look-up: GET, no body headers, the where-clause escaped */
    script(200, "{\"Contacts\":[]}");
    add(&b, "contact.upsert", contact("Q", "a\"b\\c@example.com"), "c1", "k1", 1);
    add(&b, "contact.upsert", contact("R", "r@example.com"), "c2", "k2", 1);
    execute(c, &b, &err); /* the PUT gets {"Contacts":[]}: fewer elements than sent */
    for (size_t i = 0; i < b.n; i++) {
        assert_int_equal(b.it[i].rc, PB_ERR_TRANSIENT);
        assert_contains(b.it[i].message, "returned 0 Contacts for 2 sent");
    }
    batch_clear(&b);
    assert_int_equal(fk.api_calls, 2);
    add(&b, "contact.upsert", contact("Q", "a\"b\\c@example.com"), "c1", "k1", 1);
    script(500, "{}");
    execute(c, &b, &err);
    assert_string_equal(fk.method, "GET");
    assert_string_equal(fk.path, "/api.xro/2.0/Contacts");
    assert_string_equal(fk.query_where, "EmailAddress==\"a\\\"b\\\\c@example.com\"");
    assert_string_equal(fk.content_type, "");
    assert_string_equal(fk.idem, "");
    batch_clear(&b);
    pbt_connection_free(c);
    pb_httpd_stop(server);
}

static void test_fake_error_replies(void **state)
{
    struct pb_httpd *server;
    struct pb_connection *c = fake_connection(&server);
    struct batch b = {0};
    struct pb_err err = {0};

    /* 400 ValidationException: per element; the clean one was not saved either */
    script(400, "{\"ErrorNumber\":10,\"Type\":\"ValidationException\",\"Message\":\"A validation "
                "exception occurred\",\"Elements\":[{\"ValidationErrors\":[]},"
                "{\"ValidationErrors\":[{\"Message\":\"Email address must be valid.\"},"
                "{\"Message\":\"The contact name must be provided.\"}]}]}");
    add(&b, "invoice.create", json_pack("{s:s}", "Reference", "R1"), "R1", "k1", 1);
    add(&b, "invoice.create", json_pack("{s:s}", "Reference", "R2"), "R2", "k2", 1);
    assert_int_equal(execute(c, &b, &err), PB_OK);
    assert_string_equal(fk.method, "PUT"); /* attempt 1: no look-up */
    assert_int_equal(b.it[0].rc, PB_ERR_TRANSIENT);
    assert_contains(b.it[0].message, "another element");
    assert_int_equal(b.it[1].rc, PB_ERR_PERMANENT);
    assert_contains(b.it[1].message,
                    "Email address must be valid.; The contact name must be provided.");
    batch_clear(&b);

    /* another 4xx: permanent, in Xero's words */
    script(403, "{\"Title\":\"Forbidden\",\"Detail\":\"AuthorizationUnsuccessful\"}");
    add(&b, "contact.upsert", json_pack("{s:s}", "Name", "X"), "c1", "k1", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_PERMANENT);
    assert_contains(b.it[0].message, "HTTP 403");
    assert_contains(b.it[0].message, "AuthorizationUnsuccessful");
    batch_clear(&b);

    /* 401 even with a fresh token: one refresh, one retry, then transient */
    script(401, "{\"Title\":\"Unauthorized\",\"Detail\":\"AuthenticationUnsuccessful\"}");
    add(&b, "contact.upsert", json_pack("{s:s}", "Name", "X"), "c1", "k1", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_TRANSIENT);
    assert_int_equal(b.it[0].rc, PB_ERR_TRANSIENT);
    assert_contains(b.it[0].message, "401 again");
    assert_int_equal(fk.api_calls, 2);
    assert_int_equal(fk.tokens, 1); /* the token cached from before, then one new */
    batch_clear(&b);

    /* 503 with Retry-After */
    script(503, "");
    pthread_mutex_lock(&fk.mu);
    snprintf(fk.retry_after, sizeof fk.retry_after, "7");
    pthread_mutex_unlock(&fk.mu);
    add(&b, "contact.upsert", json_pack("{s:s}", "Name", "X"), "c1", "k1", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_TRANSIENT);
    assert_int_equal(b.it[0].retry_after_s, 7);
    batch_clear(&b);

    /* a 200 that is not an envelope */
    script(200, "<html>maintenance</html>");
    add(&b, "contact.upsert", json_pack("{s:s}", "Name", "X"), "c1", "k1", 1);
    assert_int_equal(execute(c, &b, &err), PB_ERR_TRANSIENT);
    assert_contains(b.it[0].message, "without a \"Contacts\" array");
    batch_clear(&b);
    pbt_connection_free(c);
    pb_httpd_stop(server);
}

int main(void)
{
    const struct CMUnitTest emulator[] = {
        cmocka_unit_test(test_init_settings),
        cmocka_unit_test_setup(test_token_fetch_and_reuse, test_setup),
        cmocka_unit_test_setup(test_token_shared_by_threads, test_setup),
        cmocka_unit_test_setup(test_bad_client_credentials, test_setup),
        cmocka_unit_test_setup(test_contact_upsert, test_setup),
        cmocka_unit_test_setup(test_invoice_batch_with_bad_account, test_setup),
        cmocka_unit_test_setup(test_payment_and_retry_by_reference, test_setup),
        cmocka_unit_test_setup(test_reference_filled_in, test_setup),
        cmocka_unit_test_setup(test_idempotency_key_replay, test_setup),
        cmocka_unit_test_setup(test_invoice_void, test_setup),
        cmocka_unit_test_setup(test_rate_limited, test_setup),
        cmocka_unit_test_setup(test_server_error, test_setup),
        cmocka_unit_test_setup(test_unknown_command, test_setup),
        cmocka_unit_test_setup(test_creditnote_create_and_retry, test_setup),
        cmocka_unit_test_setup(test_creditnote_allocate, test_setup),
        cmocka_unit_test_setup(test_creditnote_partial_refund_of_paid_invoice, test_setup),
        cmocka_unit_test_setup(test_creditnote_void, test_setup),
        cmocka_unit_test_setup(test_recon_calls_traced, test_setup),
        cmocka_unit_test(test_requests_conform_to_spec),
        cmocka_unit_test(test_request_shape),
        cmocka_unit_test(test_fake_error_replies),
    };
    return cmocka_run_group_tests_name("xero", emulator, group_setup, group_teardown);
}
