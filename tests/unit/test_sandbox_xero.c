/*
 * tests/unit/test_sandbox_xero.c: the sandbox framework (sandbox.c,
 * faults.c) and the Xero Accounting API emulator (xero.c), over real HTTP
 * on loopback with libcurl.
 *
 * Two sandboxes run for the whole file, each with only Xero: `open` without
 * rate limits for the functional tests, and `tight` with per_minute = 3 for
 * the rate-limit test. Every test on `open` starts with POST /_sandbox/reset
 * and POST /_sandbox/faults {"reset":true}, so tests do not depend on order.
 * Amounts are read back exactly: from the raw reply text, or through
 * pb_json_to_minor(), never as doubles. Bank transfers (test_bank_transfers:
 * legs, filters, Xero's refusals, a bank account kept out of manual journals
 * and bank transaction lines) and POST /_sandbox/fail_next (test_fail_next).
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

#include "core/json.h"
#include "pbtest.h"
#include "sandbox.h"

#define TENANT "2f9b7d4c-8a1e-4c3b-9f5d-6e0a1b2c3d4e"

static struct pb_sandbox *open_sb, *tight_sb;
static int open_port, tight_port;
static char token[128], tight_token[128];

/* ---- HTTP helpers -------------------------------------------------------- */

/* Value of a reply header (case-insensitive) into buf, or NULL. */
/* One request. `auth`: a bearer token, "" for none; extra: one more header or NULL. */
static long http(int port, const char *method, const char *path, const char *auth,
                 const char *extra, const char *body, struct pbt_reply *r)
{
    char line[512];
    const char *headers[5] = {NULL};
    struct pbt_http_opts opts = {.headers = headers, .timeout_ms = 20000};
    int n = 0;
    if (auth && *auth) {
        snprintf(line, sizeof(line), "Authorization: Bearer %s", auth);
        headers[n++] = line;
        headers[n++] = "xero-tenant-id: " TENANT;
    }
    if (extra)
        headers[n++] = extra;
    if (body)
        headers[n++] = "Content-Type: application/json";
    return pbt_http_try(port, method, path, &opts, body, r);
}
static long api(const char *method, const char *path, const char *body, struct pbt_reply *r)
{
    return http(open_port, method, path, token, NULL, body, r);
}

static void get_token(int port, char *out, size_t len)
{
    struct pbt_http_opts opts = {.userpwd = "sandbox-client:sandbox-secret"};
    struct pbt_reply r;
    pbt_http(port, "POST", "/connect/token", &opts,
             "grant_type=client_credentials&scope=accounting.transactions", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(r.json);
    assert_string_equal(json_string_value(json_object_get(r.json, "token_type")), "Bearer");
    assert_int_equal(json_integer_value(json_object_get(r.json, "expires_in")), 1800);
    snprintf(out, len, "%s", json_string_value(json_object_get(r.json, "access_token")));
    pbt_reply_free(&r);
}
/* Minor units of an amount member, read exactly. */
static int64_t minor_of(json_t *obj, const char *key)
{
    int64_t v = 0;
    struct pb_err err = {0};
    json_t *j = json_object_get(obj, key);
    if (pb_json_to_minor(j, "GBP", &v, &err) != PB_OK)
        fail_msg("%s: %s", key, err.msg);
    return v;
}

static json_t *first(const struct pbt_reply *r, const char *key)
{
    return json_array_get(json_object_get(r->json, key), 0);
}

static json_int_t stat_of(int port, const char *key)
{
    struct pbt_reply r;
    json_int_t v;
    assert_int_equal(http(port, "GET", "/_sandbox/stats", NULL, NULL, NULL, &r), 200);
    v = json_integer_value(json_object_get(r.json, key));
    pbt_reply_free(&r);
    return v;
}

/* Create a contact and an AUTHORISED invoice of one line; returns the invoice number. */
static void make_invoice(const char *reference, const char *qty, const char *unit,
                         char *number, size_t len)
{
    struct pbt_reply r;
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Customer %s\"},"
             "\"Date\":\"2024-05-01\",\"DueDate\":\"2024-05-31\",\"Status\":\"AUTHORISED\","
             "\"Reference\":\"%s\",\"LineItems\":[{\"Description\":\"Order %s\","
             "\"Quantity\":%s,\"UnitAmount\":%s,\"AccountCode\":\"200\"}]}]}",
             reference, reference, reference, qty, unit);
    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices?unitdp=4", body, &r), 200);
    snprintf(number, len, "%s",
             json_string_value(json_object_get(first(&r, "Invoices"), "InvoiceNumber")));
    pbt_reply_free(&r);
}

/* ---- fixtures ------------------------------------------------------------ */

static int group_setup(void **state)
{
    struct pb_err err = {0};
    json_t *s;
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    s = json_pack("{s:s,s:{s:i,s:b}}", "bind", "127.0.0.1", "xero", "port", 0, "limits", 0);
    if (pb_sandbox_start(s, &open_sb, &err)) {
        fprintf(stderr, "sandbox: %s\n", err.msg);
        return -1;
    }
    json_decref(s);
    s = json_pack("{s:{s:i,s:{s:i}}}", "xero", "port", 0, "limits", "per_minute", 3);
    if (pb_sandbox_start(s, &tight_sb, &err)) {
        fprintf(stderr, "sandbox: %s\n", err.msg);
        return -1;
    }
    json_decref(s);
    open_port = pb_sandbox_port(open_sb, "xero");
    tight_port = pb_sandbox_port(tight_sb, "xero");
    if (open_port <= 0 || tight_port <= 0 || pb_sandbox_port(open_sb, "opayo") != -1)
        return -1;
    get_token(open_port, token, sizeof(token));
    get_token(tight_port, tight_token, sizeof(tight_token));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pb_sandbox_stop(open_sb);
    pb_sandbox_stop(tight_sb);
    curl_global_cleanup();
    return 0;
}

static int reset(void **state)
{
    struct pbt_reply r;
    (void)state;
    if (http(open_port, "POST", "/_sandbox/reset", NULL, NULL, "{}", &r) != 200)
        return -1;
    pbt_reply_free(&r);
    if (http(open_port, "POST", "/_sandbox/faults", NULL, NULL, "{\"reset\":true}", &r) != 200)
        return -1;
    pbt_reply_free(&r);
    return 0;
}

/* ---- tests --------------------------------------------------------------- */

/* Contact, invoice, two payments; AmountDue and PAID through a where filter. */
static void test_invoice_payment_flow(void **state)
{
    struct pbt_reply r;
    json_t *inv, *line;
    char contact_id[64], invoice_id[64], body[1024];
    (void)state;

    assert_int_equal(http(open_port, "GET", "/connections", token, NULL, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.json, 0), "tenantId")),
                        TENANT);
    pbt_reply_free(&r);

    assert_int_equal(api("PUT", "/api.xro/2.0/Contacts",
                         "{\"Contacts\":[{\"Name\":\"Acme Ltd\",\"EmailAddress\":\"ap@acme.test\","
                         "\"FirstName\":\"Ada\",\"Addresses\":[{\"AddressType\":\"STREET\","
                         "\"AddressLine1\":\"1 High St\",\"City\":\"Leeds\",\"PostalCode\":"
                         "\"LS1 1AA\",\"Country\":\"GB\"}]}]}",
                         &r),
                     200);
    assert_string_equal(json_string_value(json_object_get(r.json, "Status")), "OK");
    snprintf(contact_id, sizeof(contact_id), "%s",
             json_string_value(json_object_get(first(&r, "Contacts"), "ContactID")));
    assert_string_equal(json_string_value(json_object_get(first(&r, "Contacts"), "ContactStatus")),
                        "ACTIVE");
    assert_non_null(strstr(json_string_value(json_object_get(first(&r, "Contacts"),
                                                             "UpdatedDateUTC")),
                           "/Date("));
    pbt_reply_free(&r);

    /* Quantity 3 x 10.995 = 32.985 -> 32.98 (half to even); 1 x 0.125 -> 0.12. */
    snprintf(body, sizeof(body),
             "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"ContactID\":\"%s\"},"
             "\"Date\":\"2024-05-01\",\"DueDate\":\"2024-05-31\",\"Status\":\"AUTHORISED\","
             "\"LineAmountTypes\":\"Exclusive\",\"Reference\":\"ORDER-1001\",\"LineItems\":["
             "{\"Description\":\"Widgets\",\"Quantity\":3,\"UnitAmount\":10.995,"
             "\"AccountCode\":\"200\"},"
             "{\"Description\":\"Tiny\",\"Quantity\":\"1\",\"UnitAmount\":\"0.125\","
             "\"AccountCode\":\"260\"}]}]}",
             contact_id);
    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices?unitdp=4", body, &r), 200);
    inv = first(&r, "Invoices");
    assert_string_equal(json_string_value(json_object_get(inv, "InvoiceNumber")), "INV-0001");
    assert_string_equal(json_string_value(json_object_get(inv, "Status")), "AUTHORISED");
    line = json_array_get(json_object_get(inv, "LineItems"), 0);
    assert_int_equal(minor_of(line, "LineAmount"), 3298);
    line = json_array_get(json_object_get(inv, "LineItems"), 1);
    assert_int_equal(minor_of(line, "LineAmount"), 12);
    assert_int_equal(minor_of(inv, "SubTotal"), 3310);
    assert_int_equal(minor_of(inv, "TotalTax"), 0);
    assert_int_equal(minor_of(inv, "Total"), 3310);
    assert_int_equal(minor_of(inv, "AmountDue"), 3310);
    /* exact decimals on the wire, as numbers */
    assert_non_null(strstr(r.body, "\"Total\":33.10"));
    assert_non_null(strstr(r.body, "\"UnitAmount\":10.995"));
    snprintf(invoice_id, sizeof(invoice_id), "%s",
             json_string_value(json_object_get(inv, "InvoiceID")));
    pbt_reply_free(&r);

    /* A part payment (POST, a single payment) by InvoiceID. */
    snprintf(body, sizeof(body),
             "{\"Invoice\":{\"InvoiceID\":\"%s\"},\"Account\":{\"Code\":\"091\"},"
             "\"Amount\":10.10,\"Date\":\"2024-05-02\",\"Reference\":\"PAY-1\"}",
             invoice_id);
    assert_int_equal(api("POST", "/api.xro/2.0/Payments", body, &r), 200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "Payments"), "PaymentType")),
                        "ACCRECPAYMENT");
    assert_int_equal(minor_of(first(&r, "Payments"), "Amount"), 1010);
    pbt_reply_free(&r);

    /* More than is due is refused, by its Xero message. */
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments",
                         "{\"Payments\":[{\"Invoice\":{\"InvoiceNumber\":\"INV-0001\"},"
                         "\"Account\":{\"Code\":\"090\"},\"Amount\":23.01}]}",
                         &r),
                     400);
    if (!strstr(r.body, "Payment amount exceeds the amount outstanding"))
        fail_msg("%s", r.body);
    pbt_reply_free(&r);

    /* To a revenue account: refused. */
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments",
                         "{\"Payments\":[{\"Invoice\":{\"InvoiceNumber\":\"INV-0001\"},"
                         "\"Account\":{\"Code\":\"200\"},\"Amount\":1}]}",
                         &r),
                     400);
    assert_non_null(strstr(r.body, "Payments can only be made to bank accounts"));
    pbt_reply_free(&r);

    assert_int_equal(api("GET", "/api.xro/2.0/Invoices?where=Reference%3D%3D%22ORDER-1001%22",
                         NULL, &r),
                     200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Invoices")), 1);
    assert_int_equal(minor_of(first(&r, "Invoices"), "AmountDue"), 2300);
    assert_int_equal(minor_of(first(&r, "Invoices"), "AmountPaid"), 1010);
    pbt_reply_free(&r);

    /* The rest (PUT, a batch) pays it off. */
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments",
                         "{\"Payments\":[{\"Invoice\":{\"InvoiceNumber\":\"INV-0001\"},"
                         "\"Account\":{\"Code\":\"090\"},\"Amount\":\"23.00\","
                         "\"Reference\":\"PAY-2\"}]}",
                         &r),
                     200);
    pbt_reply_free(&r);
    assert_int_equal(api("GET",
                         "/api.xro/2.0/Invoices?where=Reference%3D%3D%22ORDER-1001%22%20AND%20"
                         "Status%3D%3D%22PAID%22",
                         NULL, &r),
                     200);
    inv = first(&r, "Invoices");
    assert_non_null(inv);
    assert_int_equal(minor_of(inv, "AmountDue"), 0);
    assert_int_equal(json_array_size(json_object_get(inv, "Payments")), 2);
    assert_non_null(json_object_get(inv, "FullyPaidOnDate"));
    pbt_reply_free(&r);

    /* Payments by invoice; an unknown where field is a clear 400. */
    snprintf(body, sizeof(body),
             "/api.xro/2.0/Payments?where=Invoice.InvoiceID%%3D%%3Dguid(%%22%s%%22)", invoice_id);
    assert_int_equal(api("GET", body, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Payments")), 2);
    pbt_reply_free(&r);
    assert_int_equal(api("GET", "/api.xro/2.0/Invoices?where=Colour%3D%3D%22red%22", NULL, &r),
                     400);
    assert_non_null(strstr(r.body, "Colour"));
    pbt_reply_free(&r);

    snprintf(body, sizeof(body), "/api.xro/2.0/Contacts/%s", contact_id);
    assert_int_equal(api("GET", body, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "Contacts"), "Name")),
                        "Acme Ltd");
    pbt_reply_free(&r);

    assert_int_equal(stat_of(open_port, "invoices"), 1);
    assert_int_equal(stat_of(open_port, "payments"), 2);
    assert_int_equal(stat_of(open_port, "contacts"), 1);
}

/* summarizeErrors=false: one element saved, the other reported. */
static void test_summarize_errors_false(void **state)
{
    struct pbt_reply r;
    json_t *bad, *good;
    (void)state;
    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices?summarizeErrors=false",
                         "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Bob\"},"
                         "\"Reference\":\"OK-1\",\"LineItems\":[{\"Description\":\"a\","
                         "\"Quantity\":1,\"UnitAmount\":5,\"AccountCode\":\"200\"}]},"
                         "{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Bob\"},\"Reference\":"
                         "\"BAD-1\",\"LineItems\":[{\"Description\":\"b\",\"Quantity\":1,"
                         "\"UnitAmount\":5,\"AccountCode\":\"999\"}]}]}",
                         &r),
                     200);
    good = json_array_get(json_object_get(r.json, "Invoices"), 0);
    bad = json_array_get(json_object_get(r.json, "Invoices"), 1);
    assert_string_equal(json_string_value(json_object_get(good, "StatusAttributeString")), "OK");
    assert_string_equal(json_string_value(json_object_get(bad, "StatusAttributeString")), "ERROR");
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(bad, "ValidationErrors"), 0), "Message")),
        "Account code '999' is not a valid code for this document.");
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "invoices"), 1);
    assert_int_equal(stat_of(open_port, "contacts"), 1);  /* Bob, created once by name */
}

/* Without the flag one bad element fails the batch and nothing is saved. */
static void test_validation_envelope(void **state)
{
    struct pbt_reply r;
    (void)state;
    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices",
                         "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Bob\"},"
                         "\"LineItems\":[{\"Description\":\"a\",\"Quantity\":1,\"UnitAmount\":5,"
                         "\"AccountCode\":\"200\"}]},"
                         "{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Bob\"},\"CurrencyCode\":"
                         "\"CHF\",\"LineItems\":[]}]}",
                         &r),
                     400);
    assert_int_equal(json_integer_value(json_object_get(r.json, "ErrorNumber")), 10);
    assert_string_equal(json_string_value(json_object_get(r.json, "Type")), "ValidationException");
    assert_string_equal(json_string_value(json_object_get(r.json, "Message")),
                        "A validation exception occurred");
    assert_int_equal(json_array_size(json_object_get(r.json, "Elements")), 1);
    assert_non_null(strstr(r.body, "The currency 'CHF' is not enabled"));
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "invoices"), 0);
    assert_int_equal(stat_of(open_port, "contacts"), 0);

    /* Malformed JSON */
    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices", "{\"Invoices\":[", &r), 400);
    assert_int_equal(json_integer_value(json_object_get(r.json, "ErrorNumber")), 14);
    assert_string_equal(json_string_value(json_object_get(r.json, "Type")),
                        "PostDataInvalidException");
    pbt_reply_free(&r);

    /* Contact names are unique among active contacts */
    assert_int_equal(api("PUT", "/api.xro/2.0/Contacts", "{\"Contacts\":[{\"Name\":\"Zed\"}]}",
                         &r),
                     200);
    pbt_reply_free(&r);
    assert_int_equal(api("PUT", "/api.xro/2.0/Contacts", "{\"Contacts\":[{\"Name\":\"Zed\"}]}",
                         &r),
                     400);
    assert_non_null(strstr(r.body, "The contact name Zed is already assigned to another contact."));
    pbt_reply_free(&r);
}

/* A repeated Idempotency-Key replays the first reply and creates nothing. */
static void test_idempotency_replay(void **state)
{
    struct pbt_reply a, b;
    char hdr[256], key[200];
    const char *body = "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Idem\"},"
                       "\"Reference\":\"IDEM-1\",\"LineItems\":[{\"Description\":\"x\","
                       "\"Quantity\":2,\"UnitAmount\":1.5,\"AccountCode\":\"200\"}]}]}";
    (void)state;
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/Invoices", token,
                          "Idempotency-Key: evt-123", body, &a),
                     200);
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/Invoices", token,
                          "Idempotency-Key: evt-123", body, &b),
                     200);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.body, b.body, a.len);
    pbt_reply_free(&a);
    pbt_reply_free(&b);
    assert_int_equal(stat_of(open_port, "invoices"), 1);
    assert_int_equal(stat_of(open_port, "idempotent_replays"), 1);
    assert_int_equal(stat_of(open_port, "duplicate_invoice_references"), 0);

    /* Without a key the same body is a second invoice, and the stats say so. */
    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices", body, &a), 200);
    pbt_reply_free(&a);
    assert_int_equal(stat_of(open_port, "duplicate_invoice_references"), 1);

    /* A refused write saved nothing and is not stored: the corrected request
     * with the same key is processed. */
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/Invoices", token,
                          "Idempotency-Key: evt-456",
                          "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Idem\"},"
                          "\"Reference\":\"IDEM-2\",\"LineItems\":[{\"Description\":\"x\","
                          "\"Quantity\":1,\"UnitAmount\":1,\"AccountCode\":\"999\"}]}]}",
                          &a),
                     400);
    pbt_reply_free(&a);
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/Invoices", token,
                          "Idempotency-Key: evt-456",
                          "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Idem\"},"
                          "\"Reference\":\"IDEM-2\",\"LineItems\":[{\"Description\":\"x\","
                          "\"Quantity\":1,\"UnitAmount\":1,\"AccountCode\":\"200\"}]}]}",
                          &a),
                     200);
    pbt_reply_free(&a);
    assert_int_equal(stat_of(open_port, "invoices"), 3);
    assert_int_equal(stat_of(open_port, "idempotent_replays"), 1);

    memset(key, 'k', 129);
    key[129] = '\0';
    snprintf(hdr, sizeof(hdr), "Idempotency-Key: %s", key);
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/Invoices", token, hdr, body, &a), 400);
    pbt_reply_free(&a);
    assert_int_equal(stat_of(open_port, "invoices"), 3);
}

/* The per-minute limit answers 429 with Retry-After and the problem. */
static void test_rate_limit_minute(void **state)
{
    struct pbt_reply r;
    char buf[64];
    long retry;
    (void)state;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(http(tight_port, "GET", "/api.xro/2.0/Contacts", tight_token, NULL, NULL,
                              &r),
                         200);
        assert_non_null(pbt_reply_header(&r, "X-MinLimit-Remaining", buf, sizeof(buf)));
        assert_int_equal(strtol(buf, NULL, 10), 2 - i);
        assert_non_null(pbt_reply_header(&r, "X-DayLimit-Remaining", buf, sizeof(buf)));
        assert_non_null(pbt_reply_header(&r, "X-AppMinLimit-Remaining", buf, sizeof(buf)));
        pbt_reply_free(&r);
    }
    assert_int_equal(http(tight_port, "GET", "/api.xro/2.0/Contacts", tight_token, NULL, NULL, &r),
                     429);
    assert_non_null(pbt_reply_header(&r, "Retry-After", buf, sizeof(buf)));
    retry = strtol(buf, NULL, 10);
    assert_true(retry >= 1 && retry <= 60);
    assert_string_equal(pbt_reply_header(&r, "X-Rate-Limit-Problem", buf, sizeof(buf)), "minute");
    assert_string_equal(pbt_reply_header(&r, "X-MinLimit-Remaining", buf, sizeof(buf)), "0");
    pbt_reply_free(&r);
    assert_int_equal(stat_of(tight_port, "requests") >= 4, 1);
}

/* Faults set at run time: a 429 burst, then every request failing. */
static void test_faults_runtime(void **state)
{
    struct pbt_reply r;
    char buf[64];
    struct pb_err err = {0};
    json_t *f;
    (void)state;
    assert_int_equal(http(open_port, "POST", "/_sandbox/faults", NULL, NULL,
                          "{\"burst_429\":2,\"retry_after_s\":7}", &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "burst_429")), 2);
    pbt_reply_free(&r);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(api("GET", "/api.xro/2.0/Invoices", NULL, &r), 429);
        assert_string_equal(pbt_reply_header(&r, "Retry-After", buf, sizeof(buf)), "7");
        assert_string_equal(pbt_reply_header(&r, "X-Rate-Limit-Problem", buf, sizeof(buf)), "minute");
        pbt_reply_free(&r);
    }
    assert_int_equal(api("GET", "/api.xro/2.0/Invoices", NULL, &r), 200);
    pbt_reply_free(&r);
    /* Admin routes are never faulted. */
    assert_int_equal(http(open_port, "POST", "/_sandbox/faults", NULL, NULL,
                          "{\"error_rate\":1}", &r),
                     200);
    pbt_reply_free(&r);
    assert_int_equal(http(open_port, "GET", "/_sandbox/health", NULL, NULL, NULL, &r), 200);
    pbt_reply_free(&r);
    assert_int_equal(api("GET", "/api.xro/2.0/Invoices", NULL, &r), 500);
    pbt_reply_free(&r);
    assert_int_equal(api("GET", "/api.xro/2.0/Invoices", NULL, &r), 503);
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "faults_injected"), 4);
    /* A bad fault is refused and changes nothing. */
    assert_int_equal(http(open_port, "POST", "/_sandbox/faults", NULL, NULL,
                          "{\"error_rate\":2}", &r),
                     400);
    pbt_reply_free(&r);
    assert_int_equal(http(open_port, "GET", "/_sandbox/faults", NULL, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "faults_injected")), 4);
    pbt_reply_free(&r);
    /* Through the C API: clear them. */
    f = json_pack("{s:b}", "reset", 1);
    assert_int_equal(pb_sandbox_set_faults(open_sb, "xero", f, &err), PB_OK);
    assert_int_equal(pb_sandbox_set_faults(open_sb, "opayo", f, &err), PB_ERR_NOTFOUND);
    json_decref(f);
    assert_int_equal(api("GET", "/api.xro/2.0/Invoices", NULL, &r), 200);
    pbt_reply_free(&r);
}

/* No token, a bad token, a wrong tenant, bad client credentials. */
static void test_auth(void **state)
{
    struct pbt_reply r;
    (void)state;
    assert_int_equal(http(open_port, "GET", "/api.xro/2.0/Invoices", "not-a-token", NULL, NULL,
                          &r),
                     401);
    assert_string_equal(json_string_value(json_object_get(r.json, "Detail")),
                        "AuthenticationUnsuccessful");
    assert_int_equal(json_integer_value(json_object_get(r.json, "Status")), 401);
    pbt_reply_free(&r);
    assert_int_equal(http(open_port, "GET", "/api.xro/2.0/Invoices", NULL, NULL, NULL, &r), 401);
    pbt_reply_free(&r);
    {
        char hdr[200];
        snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", token);
        assert_int_equal(http(open_port, "GET", "/api.xro/2.0/Invoices", NULL, hdr, NULL, &r),
                         403);
        pbt_reply_free(&r);
    }
    pbt_http(open_port, "POST", "/connect/token", NULL,
             "grant_type=client_credentials&client_id=sandbox-client&client_secret=no", &r);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "invalid_client"));
    pbt_reply_free(&r);
}

/* Paging: 100 per page, 1-based; without page, everything. */
static void test_paging(void **state)
{
    struct pbt_reply r;
    char *body = malloc(64 * 1024);
    size_t o = 0;
    (void)state;
    assert_non_null(body);
    o += (size_t)snprintf(body + o, 64 * 1024 - o, "{\"Contacts\":[");
    for (int i = 0; i < 150; i++)
        o += (size_t)snprintf(body + o, 64 * 1024 - o, "%s{\"Name\":\"P%03d\",\"EmailAddress\":"
                              "\"p%d@x.test\"}", i ? "," : "", i, i);
    snprintf(body + o, 64 * 1024 - o, "]}");
    assert_int_equal(api("PUT", "/api.xro/2.0/Contacts", body, &r), 200);
    pbt_reply_free(&r);
    free(body);
    assert_int_equal(api("GET", "/api.xro/2.0/Contacts?page=2", NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Contacts")), 50);
    assert_string_equal(json_string_value(json_object_get(first(&r, "Contacts"), "Name")), "P100");
    pbt_reply_free(&r);
    assert_int_equal(api("GET", "/api.xro/2.0/Contacts", NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Contacts")), 150);
    pbt_reply_free(&r);
    assert_int_equal(api("GET", "/api.xro/2.0/Contacts?where=EmailAddress%3D%3D%22P7%40X.test%22"
                         "%20OR%20Name%3D%3D%22P009%22",
                         NULL, &r),
                     200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Contacts")), 2);
    pbt_reply_free(&r);
}

/* Voiding through POST /Invoices/{id}; a voided invoice takes no payment. */
static void test_void_invoice(void **state)
{
    struct pbt_reply r;
    char number[32], path[128];
    (void)state;
    make_invoice("VOID-1", "1", "12.50", number, sizeof(number));
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", number);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s",
             json_string_value(json_object_get(first(&r, "Invoices"), "InvoiceID")));
    pbt_reply_free(&r);
    assert_int_equal(api("POST", path, "{\"Invoices\":[{\"Status\":\"VOIDED\"}]}", &r), 200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "Invoices"), "Status")),
                        "VOIDED");
    assert_int_equal(minor_of(first(&r, "Invoices"), "Total"), 1250);
    pbt_reply_free(&r);
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments",
                         "{\"Payments\":[{\"Invoice\":{\"InvoiceNumber\":\"INV-0001\"},"
                         "\"Account\":{\"Code\":\"090\"},\"Amount\":1}]}",
                         &r),
                     400);
    assert_non_null(strstr(r.body, "not of valid status"));
    pbt_reply_free(&r);
}

/* Two payments in one batch share the amount due; escaped names round-trip. */
static void test_batch_claims_and_escaping(void **state)
{
    struct pbt_reply r;
    char number[32], body[512];
    json_t *pays;
    (void)state;
    make_invoice("CLAIM-1", "4", "2.50", number, sizeof(number));
    snprintf(body, sizeof(body),
             "{\"Payments\":[{\"Invoice\":{\"InvoiceNumber\":\"%s\"},\"Account\":{\"Code\":"
             "\"090\"},\"Amount\":6},{\"Invoice\":{\"InvoiceNumber\":\"%s\"},\"Account\":"
             "{\"Code\":\"090\"},\"Amount\":6}]}",
             number, number);
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments?summarizeErrors=false", body, &r), 200);
    pays = json_object_get(r.json, "Payments");
    assert_string_equal(json_string_value(json_object_get(json_array_get(pays, 0),
                                                          "StatusAttributeString")), "OK");
    assert_string_equal(json_string_value(json_object_get(json_array_get(pays, 1),
                                                          "StatusAttributeString")), "ERROR");
    pbt_reply_free(&r);
    snprintf(body, sizeof(body), "/api.xro/2.0/Invoices/%s", number);
    assert_int_equal(api("GET", body, NULL, &r), 200);
    assert_int_equal(minor_of(first(&r, "Invoices"), "AmountDue"), 400);
    assert_string_equal(json_string_value(json_object_get(first(&r, "Invoices"), "Status")),
                        "AUTHORISED");
    pbt_reply_free(&r);

    assert_int_equal(api("PUT", "/api.xro/2.0/Invoices",
                         "{\"Invoices\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":"
                         "\"Caf\u00e9 \\\"Quote\\\" \\\\ Ltd\"},\"Reference\":\"tab\\there\","
                         "\"LineItems\":[]}]}",
                         &r),
                     200);
    assert_string_equal(json_string_value(json_object_get(json_object_get(first(&r, "Invoices"),
                                                                           "Contact"), "Name")),
                        "Caf\xc3\xa9 \"Quote\" \\ Ltd");
    assert_string_equal(json_string_value(json_object_get(first(&r, "Invoices"), "Reference")),
                        "tab\there");
    pbt_reply_free(&r);
}

/* ---- credit notes ---------------------------------------------------------- */

/* GET `path` and copy member `key` of the first element of `env` into out. */
static void get_member(const char *path, const char *env, const char *key, char *out, size_t len)
{
    struct pbt_reply r;
    assert_int_equal(api("GET", path, NULL, &r), 200);
    snprintf(out, len, "%s", json_string_value(json_object_get(first(&r, env), key)));
    pbt_reply_free(&r);
}

/* An AUTHORISED ACCRECCREDIT of one line for the invoice's contact; its id into id. */
static void make_credit_note(const char *contact_id, const char *reference, const char *amount,
                             const char *status, char *id, size_t len)
{
    struct pbt_reply r;
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"CreditNotes\":[{\"Type\":\"ACCRECCREDIT\",\"Contact\":{\"ContactID\":\"%s\"},"
             "\"Date\":\"2024-05-03\",%s%s%s\"LineAmountTypes\":\"NoTax\",\"Reference\":\"%s\","
             "\"LineItems\":[{\"Description\":\"Refund %s\",\"Quantity\":1,\"UnitAmount\":%s,"
             "\"AccountCode\":\"200\"}]}]}",
             contact_id, status ? "\"Status\":\"" : "", status ? status : "",
             status ? "\"," : "", reference, reference, amount);
    if (api("PUT", "/api.xro/2.0/CreditNotes", body, &r) != 200)
        fail_msg("%s", r.body);
    snprintf(id, len, "%s",
             json_string_value(json_object_get(first(&r, "CreditNotes"), "CreditNoteID")));
    pbt_reply_free(&r);
}

/* PUT /CreditNotes/{id}/Allocations of one allocation; returns the status. */
static long allocate(const char *cn_id, const char *invoice_id, const char *amount,
                     struct pbt_reply *r)
{
    char path[128], body[512];
    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s/Allocations", cn_id);
    snprintf(body, sizeof(body),
             "{\"Allocations\":[{\"Invoice\":{\"InvoiceID\":\"%s\"},\"Amount\":%s,"
             "\"Date\":\"2024-05-04\"}]}",
             invoice_id, amount);
    return api("PUT", path, body, r);
}

/* A credit note applied to an unpaid invoice: both balances move, exactly;
 * over-allocation refused with Xero's words; batch claims; no void once
 * allocated. */
static void test_credit_note_allocation(void **state)
{
    struct pbt_reply r;
    char number[32], path[256], inv_id[64], contact_id[64], cn[64], cn2[64], body[1024];
    json_t *el, *list;
    (void)state;
    make_invoice("ORDER-CN", "1", "30.00", number, sizeof(number));
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", number);
    get_member(path, "Invoices", "InvoiceID", inv_id, sizeof(inv_id));
    assert_int_equal(api("GET", path, NULL, &r), 200);
    snprintf(contact_id, sizeof(contact_id), "%s",
             json_string_value(json_object_get(json_object_get(first(&r, "Invoices"), "Contact"),
                                               "ContactID")));
    assert_int_equal(minor_of(first(&r, "Invoices"), "AmountCredited"), 0);
    assert_int_equal(json_array_size(json_object_get(first(&r, "Invoices"), "CreditNotes")), 0);
    pbt_reply_free(&r);

    /* created AUTHORISED, numbered CN-0001, exact totals, RemainingCredit = Total */
    snprintf(body, sizeof(body),
             "{\"CreditNotes\":[{\"Type\":\"ACCRECCREDIT\",\"Contact\":{\"ContactID\":\"%s\"},"
             "\"Date\":\"2024-05-03\",\"Status\":\"AUTHORISED\",\"LineAmountTypes\":\"NoTax\","
             "\"CurrencyCode\":\"GBP\",\"Reference\":\"REFUND-1\",\"LineItems\":["
             "{\"Description\":\"Part refund\",\"Quantity\":3,\"UnitAmount\":3.335,"
             "\"AccountCode\":\"200\"}]}]}",
             contact_id);
    assert_int_equal(api("PUT", "/api.xro/2.0/CreditNotes?unitdp=4", body, &r), 200);
    el = first(&r, "CreditNotes");
    assert_string_equal(json_string_value(json_object_get(el, "CreditNoteNumber")), "CN-0001");
    assert_string_equal(json_string_value(json_object_get(el, "Type")), "ACCRECCREDIT");
    assert_string_equal(json_string_value(json_object_get(el, "Status")), "AUTHORISED");
    assert_int_equal(minor_of(el, "Total"), 1000);  /* 3 x 3.335 = 10.005 -> 10.00 */
    assert_int_equal(minor_of(el, "RemainingCredit"), 1000);
    assert_non_null(strstr(r.body, "\"RemainingCredit\":10.00"));
    snprintf(cn, sizeof(cn), "%s", json_string_value(json_object_get(el, "CreditNoteID")));
    assert_string_equal(json_string_value(json_object_get(el, "ID")), cn);
    pbt_reply_free(&r);

    /* more than the remaining credit: refused by Xero's message, nothing moves */
    assert_int_equal(allocate(cn, inv_id, "10.01", &r), 400);
    assert_int_equal(json_integer_value(json_object_get(r.json, "ErrorNumber")), 10);
    if (!strstr(r.body, "Credit Note cannot be allocated as amount is greater than amount "
                        "outstanding"))
        fail_msg("%s", r.body);
    pbt_reply_free(&r);

    /* 4.00 applied: the invoice owes 26.00, the note has 6.00 left */
    assert_int_equal(allocate(cn, inv_id, "\"4.00\"", &r), 200);
    el = first(&r, "Allocations");
    assert_int_equal(minor_of(el, "Amount"), 400);
    assert_string_equal(pb_json_str(el, "Invoice.InvoiceID"), inv_id);
    assert_string_equal(pb_json_str(el, "CreditNote.CreditNoteID"), cn);
    assert_int_equal(strlen(pb_json_str(el, "AllocationID")), 36);
    pbt_reply_free(&r);

    /* two in one batch share the remaining credit: 4 + 4 > 6 */
    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s/Allocations?summarizeErrors=false",
             cn);
    snprintf(body, sizeof(body),
             "{\"Allocations\":[{\"Invoice\":{\"InvoiceID\":\"%s\"},\"Amount\":4,\"Date\":"
             "\"2024-05-04\"},{\"Invoice\":{\"InvoiceNumber\":\"%s\"},\"Amount\":4,\"Date\":"
             "\"2024-05-04\"}]}",
             inv_id, number);
    assert_int_equal(api("PUT", path, body, &r), 200);
    list = json_object_get(r.json, "Allocations");
    assert_string_equal(pb_json_str(json_array_get(list, 0), "StatusAttributeString"), "OK");
    assert_string_equal(pb_json_str(json_array_get(list, 1), "StatusAttributeString"), "ERROR");
    pbt_reply_free(&r);

    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s", cn);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    el = first(&r, "CreditNotes");
    assert_int_equal(minor_of(el, "RemainingCredit"), 200);
    assert_int_equal(json_array_size(json_object_get(el, "Allocations")), 2);
    assert_string_equal(json_string_value(json_object_get(el, "Status")), "AUTHORISED");
    pbt_reply_free(&r);
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", inv_id);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    el = first(&r, "Invoices");
    assert_int_equal(minor_of(el, "AmountDue"), 2200);
    assert_int_equal(minor_of(el, "AmountCredited"), 800);
    assert_int_equal(minor_of(el, "AmountPaid"), 0);
    assert_int_equal(json_array_size(json_object_get(el, "CreditNotes")), 2);
    assert_string_equal(pb_json_str(el, "CreditNotes.0.CreditNoteID"), cn);
    assert_int_equal(minor_of(json_array_get(json_object_get(el, "CreditNotes"), 0),
                              "AppliedAmount"), 400);
    pbt_reply_free(&r);

    /* an invoice with credit applied, and the note itself, cannot be voided */
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", inv_id);
    assert_int_equal(api("POST", path, "{\"Invoices\":[{\"Status\":\"VOIDED\"}]}", &r), 400);
    assert_non_null(strstr(r.body, "cannot be voided as it has a credit note allocated"));
    pbt_reply_free(&r);
    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s", cn);
    assert_int_equal(api("POST", path, "{\"CreditNotes\":[{\"Status\":\"VOIDED\"}]}", &r), 400);
    assert_non_null(strstr(r.body, "cannot be voided as it has been allocated"));
    pbt_reply_free(&r);

    /* by Reference, Status and Contact.ContactID */
    snprintf(path, sizeof(path),
             "/api.xro/2.0/CreditNotes?where=Reference%%3D%%3D%%22REFUND-1%%22%%20AND%%20"
             "Status%%3D%%3D%%22AUTHORISED%%22%%20AND%%20Contact.ContactID%%3D%%3Dguid(%%22%s"
             "%%22)",
             contact_id);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "CreditNotes")), 1);
    pbt_reply_free(&r);
    assert_int_equal(api("GET", "/api.xro/2.0/CreditNotes?where=Reference%3D%3D%22nope%22", NULL,
                         &r),
                     200);
    assert_int_equal(json_array_size(json_object_get(r.json, "CreditNotes")), 0);
    pbt_reply_free(&r);

    /* refusals: unknown note (404), no Date, another contact, the wrong type */
    assert_int_equal(allocate("00000000-0000-4000-8000-000000000000", inv_id, "1", &r), 404);
    pbt_reply_free(&r);
    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s/Allocations", cn);
    snprintf(body, sizeof(body), "{\"Allocations\":[{\"Invoice\":{\"InvoiceID\":\"%s\"},"
             "\"Amount\":1}]}", inv_id);
    assert_int_equal(api("PUT", path, body, &r), 400);
    assert_non_null(strstr(r.body, "Allocation Date must be specified"));
    pbt_reply_free(&r);
    make_invoice("ORDER-OTHER", "1", "5.00", number, sizeof(number));
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", number);
    get_member(path, "Invoices", "InvoiceID", body, sizeof(body));
    assert_int_equal(allocate(cn, body, "1", &r), 400);
    assert_non_null(strstr(r.body, "same contact"));
    pbt_reply_free(&r);
    snprintf(body, sizeof(body),
             "{\"CreditNotes\":[{\"Type\":\"ACCPAYCREDIT\",\"Contact\":{\"ContactID\":\"%s\"},"
             "\"Status\":\"AUTHORISED\",\"LineItems\":[{\"Description\":\"x\",\"Quantity\":1,"
             "\"UnitAmount\":1,\"AccountCode\":\"404\"}]}]}",
             contact_id);
    assert_int_equal(api("PUT", "/api.xro/2.0/CreditNotes", body, &r), 200);
    el = first(&r, "CreditNotes");
    assert_string_equal(json_string_value(json_object_get(el, "CreditNoteNumber")), "");
    snprintf(cn2, sizeof(cn2), "%s", json_string_value(json_object_get(el, "CreditNoteID")));
    pbt_reply_free(&r);
    assert_int_equal(allocate(cn2, inv_id, "1", &r), 400);
    assert_non_null(strstr(r.body, "Credit Note cannot be allocated to an incorrect invoice type"));
    pbt_reply_free(&r);

    assert_int_equal(stat_of(open_port, "credit_notes"), 2);
    assert_int_equal(stat_of(open_port, "allocations"), 2);
    assert_int_equal(stat_of(open_port, "invoices"), 2);
}

/* A PAID invoice takes no allocation; its partial refund is a credit note
 * plus a cash refund: a payment on the credit note. */
static void test_credit_note_refund_of_paid_invoice(void **state)
{
    struct pbt_reply r;
    char number[32], path[256], inv_id[64], contact_id[64], cn[64], body[1024];
    json_t *el;
    (void)state;
    make_invoice("ORDER-PAID", "2", "10.00", number, sizeof(number));
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", number);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    snprintf(inv_id, sizeof(inv_id), "%s", pb_json_str(first(&r, "Invoices"), "InvoiceID"));
    snprintf(contact_id, sizeof(contact_id), "%s",
             pb_json_str(first(&r, "Invoices"), "Contact.ContactID"));
    pbt_reply_free(&r);
    snprintf(body, sizeof(body),
             "{\"Payments\":[{\"Invoice\":{\"InvoiceID\":\"%s\"},\"Account\":{\"Code\":\"091\"},"
             "\"Amount\":20.00,\"Date\":\"2024-05-02\",\"Reference\":\"PAY-P\"}]}",
             inv_id);
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments", body, &r), 200);
    pbt_reply_free(&r);

    make_credit_note(contact_id, "REFUND-P", "7.50", "AUTHORISED", cn, sizeof(cn));
    assert_int_equal(allocate(cn, inv_id, "7.50", &r), 400);
    if (!strstr(r.body, "The invoice you are trying to allocate to has already been paid off"))
        fail_msg("%s", r.body);
    pbt_reply_free(&r);

    /* a refund larger than the credit: Xero's payment message */
    snprintf(body, sizeof(body),
             "{\"Payments\":[{\"CreditNote\":{\"CreditNoteID\":\"%s\"},\"Account\":{\"Code\":"
             "\"091\"},\"Amount\":7.51,\"Date\":\"2024-05-05\",\"Reference\":\"RF-1\"}]}",
             cn);
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments", body, &r), 400);
    assert_non_null(strstr(r.body, "Payment amount exceeds the amount outstanding"));
    pbt_reply_free(&r);
    /* not both an invoice and a credit note */
    snprintf(body, sizeof(body),
             "{\"Payments\":[{\"CreditNote\":{\"CreditNoteID\":\"%s\"},\"Invoice\":{\"InvoiceID\""
             ":\"%s\"},\"Account\":{\"Code\":\"091\"},\"Amount\":1}]}",
             cn, inv_id);
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments", body, &r), 400);
    assert_non_null(strstr(r.body, "not both"));
    pbt_reply_free(&r);

    snprintf(body, sizeof(body),
             "{\"Payments\":[{\"CreditNote\":{\"CreditNoteID\":\"%s\"},\"Account\":{\"Code\":"
             "\"091\"},\"Amount\":\"7.50\",\"Date\":\"2024-05-05\",\"Reference\":\"RF-1\"}]}",
             cn);
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments", body, &r), 200);
    el = first(&r, "Payments");
    assert_string_equal(pb_json_str(el, "PaymentType"), "ARCREDITPAYMENT");
    assert_string_equal(pb_json_str(el, "CreditNote.CreditNoteID"), cn);
    assert_null(json_object_get(el, "Invoice"));
    assert_int_equal(minor_of(el, "Amount"), 750);
    assert_int_equal(minor_of(json_object_get(el, "CreditNote"), "RemainingCredit"), 0);
    pbt_reply_free(&r);

    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s", cn);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    el = first(&r, "CreditNotes");
    assert_string_equal(pb_json_str(el, "Status"), "PAID");
    assert_int_equal(minor_of(el, "RemainingCredit"), 0);
    assert_int_equal(json_array_size(json_object_get(el, "Payments")), 1);
    assert_non_null(json_object_get(el, "FullyPaidOnDate"));
    pbt_reply_free(&r);
    /* the invoice stays PAID and untouched */
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", inv_id);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    assert_string_equal(pb_json_str(first(&r, "Invoices"), "Status"), "PAID");
    assert_int_equal(minor_of(first(&r, "Invoices"), "AmountPaid"), 2000);
    pbt_reply_free(&r);

    /* found by Reference and by credit note; the invoice's payment is not */
    assert_int_equal(api("GET", "/api.xro/2.0/Payments?where=Reference%3D%3D%22RF-1%22", NULL,
                         &r),
                     200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Payments")), 1);
    pbt_reply_free(&r);
    snprintf(path, sizeof(path),
             "/api.xro/2.0/Payments?where=CreditNote.CreditNoteID%%3D%%3Dguid(%%22%s%%22)", cn);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "Payments")), 1);
    pbt_reply_free(&r);

    /* a paid-off credit note takes no more refunds and cannot be voided */
    snprintf(body, sizeof(body),
             "{\"CreditNote\":{\"CreditNoteID\":\"%s\"},\"Account\":{\"Code\":\"091\"},"
             "\"Amount\":1}",
             cn);
    assert_int_equal(api("POST", "/api.xro/2.0/Payments", body, &r), 400);
    assert_non_null(strstr(r.body, "Credit Note not of valid status for creation of a payment"));
    pbt_reply_free(&r);
    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s", cn);
    assert_int_equal(api("POST", path,
                         "{\"CreditNotes\":[{\"CreditNoteID\":\"ignored-by-path\",\"Status\":"
                         "\"VOIDED\"}]}",
                         &r),
                     400);
    assert_non_null(strstr(r.body, "Credit Note status cannot be changed from PAID to VOIDED"));
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "payments"), 2);
    assert_int_equal(stat_of(open_port, "allocations"), 0);
}

/* DRAFT to AUTHORISED to VOIDED; Idempotency-Key; duplicate references;
 * type and account checks; paging. */
static void test_credit_note_lifecycle(void **state)
{
    struct pbt_reply a, b;
    char path[256], cn[64], contact_id[64], number[32], inv_id[64];
    const char *body = "{\"CreditNotes\":[{\"Type\":\"ACCRECCREDIT\",\"Contact\":{\"Name\":"
                       "\"Refunded Ltd\"},\"Reference\":\"CB-1\",\"LineItems\":[{\"Description\""
                       ":\"Chargeback\",\"Quantity\":1,\"UnitAmount\":12.34,\"AccountCode\":"
                       "\"200\"}]}]}";
    (void)state;
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/CreditNotes", token,
                          "Idempotency-Key: cn-1", body, &a),
                     200);
    assert_int_equal(http(open_port, "PUT", "/api.xro/2.0/CreditNotes", token,
                          "Idempotency-Key: cn-1", body, &b),
                     200);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.body, b.body, a.len);
    assert_string_equal(pb_json_str(first(&a, "CreditNotes"), "Status"), "DRAFT");
    snprintf(cn, sizeof(cn), "%s", pb_json_str(first(&a, "CreditNotes"), "CreditNoteID"));
    snprintf(contact_id, sizeof(contact_id), "%s",
             pb_json_str(first(&a, "CreditNotes"), "Contact.ContactID"));
    pbt_reply_free(&a);
    pbt_reply_free(&b);
    assert_int_equal(stat_of(open_port, "credit_notes"), 1);
    assert_int_equal(stat_of(open_port, "idempotent_replays"), 1);
    assert_int_equal(stat_of(open_port, "duplicate_credit_note_references"), 0);

    /* a DRAFT note is not allocated */
    make_invoice("ORDER-LC", "1", "20", number, sizeof(number));
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", number);
    get_member(path, "Invoices", "InvoiceID", inv_id, sizeof(inv_id));
    assert_int_equal(allocate(cn, inv_id, "1", &a), 400);
    assert_non_null(strstr(a.body, "AUTHORISED"));
    pbt_reply_free(&a);

    snprintf(path, sizeof(path), "/api.xro/2.0/CreditNotes/%s", cn);
    assert_int_equal(api("POST", path, "{\"CreditNotes\":[{\"Status\":\"AUTHORISED\"}]}", &a),
                     200);
    assert_string_equal(pb_json_str(first(&a, "CreditNotes"), "Status"), "AUTHORISED");
    assert_int_equal(minor_of(first(&a, "CreditNotes"), "RemainingCredit"), 1234);
    pbt_reply_free(&a);
    /* VOIDED, as when a chargeback is won; found by status; takes no refund */
    assert_int_equal(api("POST", path,
                         "{\"CreditNotes\":[{\"CreditNoteID\":\"x\",\"Status\":\"VOIDED\"}]}", &a),
                     200);
    assert_string_equal(pb_json_str(first(&a, "CreditNotes"), "Status"), "VOIDED");
    assert_int_equal(minor_of(first(&a, "CreditNotes"), "Total"), 1234);
    pbt_reply_free(&a);
    assert_int_equal(api("GET", "/api.xro/2.0/CreditNotes?where=Status%3D%3D%22VOIDED%22&page=1",
                         NULL, &a),
                     200);
    assert_int_equal(json_array_size(json_object_get(a.json, "CreditNotes")), 1);
    assert_int_equal(json_integer_value(pb_json_path(a.json, "pagination.itemCount")), 1);
    pbt_reply_free(&a);
    snprintf(path, sizeof(path),
             "{\"CreditNote\":{\"CreditNoteID\":\"%s\"},\"Account\":{\"Code\":\"090\"},"
             "\"Amount\":1}",
             cn);
    assert_int_equal(api("POST", "/api.xro/2.0/Payments", path, &a), 400);
    assert_non_null(strstr(a.body, "not of valid status"));
    pbt_reply_free(&a);

    /* without the key the same body is a second note, and the stats say so */
    assert_int_equal(api("PUT", "/api.xro/2.0/CreditNotes", body, &a), 200);
    pbt_reply_free(&a);
    assert_int_equal(stat_of(open_port, "duplicate_credit_note_references"), 1);

    /* an invoice type, a bad account, an unknown id: refused */
    assert_int_equal(api("PUT", "/api.xro/2.0/CreditNotes?summarizeErrors=false",
                         "{\"CreditNotes\":[{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"X\"}},"
                         "{\"Type\":\"ACCRECCREDIT\",\"Contact\":{\"Name\":\"X\"},\"LineItems\":"
                         "[{\"Description\":\"a\",\"Quantity\":1,\"UnitAmount\":1,"
                         "\"AccountCode\":\"999\"}]},"
                         "{\"CreditNoteID\":\"11111111-1111-4111-8111-111111111111\","
                         "\"Status\":\"VOIDED\"}]}",
                         &a),
                     200);
    assert_non_null(strstr(a.body, "Credit Note Type 'ACCREC' is not supported"));
    assert_non_null(strstr(a.body, "Account code '999' is not a valid code for this document."));
    assert_non_null(strstr(a.body, "Credit Note with CreditNoteID 11111111-1111-4111-8111-"
                                   "111111111111 could not be found."));
    pbt_reply_free(&a);
    assert_int_equal(stat_of(open_port, "credit_notes"), 2);
    /* credit notes are not invoices */
    assert_int_equal(api("GET", "/api.xro/2.0/Invoices", NULL, &a), 200);
    assert_int_equal(json_array_size(json_object_get(a.json, "Invoices")), 1);
    pbt_reply_free(&a);
    snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", cn);
    assert_int_equal(api("GET", path, NULL, &a), 404);
    pbt_reply_free(&a);
    assert_int_equal(api("GET", "/api.xro/2.0/CreditNotes/CN-0002", NULL, &a), 200);
    assert_string_equal(pb_json_str(first(&a, "CreditNotes"), "Reference"), "CB-1");
    pbt_reply_free(&a);
    (void)contact_id;
}

/* ---- reconciliation: dates in where, deleted payments, bank transactions, journals ---- */

/* GET `resource` with `where` (escaped here) and an optional page. */
static long get_where(const char *resource, const char *where, int page, struct pbt_reply *r)
{
    CURL *c = curl_easy_init();
    char *esc = curl_easy_escape(c, where, 0), path[1024];
    long st;
    snprintf(path, sizeof(path), "/api.xro/2.0/%s?where=%s%s", resource, esc, "");
    if (page)
        snprintf(path + strlen(path), sizeof(path) - strlen(path), "&page=%d", page);
    curl_free(esc);
    curl_easy_cleanup(c);
    st = api("GET", path, NULL, r);
    return st;
}

static size_t count_of(const struct pbt_reply *r, const char *key)
{
    return json_array_size(json_object_get(r->json, key));
}

/* 130 payments of 1.00 over 2026-11-19..23; a Date range reads 110 of them
 * in two pages; a deleted payment stays listed, and its invoice owes again. */
static void test_payments_where_date_and_paging(void **state)
{
    struct pbt_reply r;
    char number[32], *body = malloc(64 * 1024), pid[64];
    size_t o = 0;
    static const char *const days[] = {"2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22",
                                       "2026-11-23"};
    static const int per_day[] = {10, 40, 40, 30, 10};
    int k = 0;
    (void)state;
    assert_non_null(body);
    make_invoice("DATES-1", "1", "1000.00", number, sizeof(number));
    o += (size_t)snprintf(body + o, 64 * 1024 - o, "{\"Payments\":[");
    for (int d = 0; d < 5; d++)
        for (int i = 0; i < per_day[d]; i++) {
            o += (size_t)snprintf(body + o, 64 * 1024 - o,
                                  "%s{\"Invoice\":{\"InvoiceNumber\":\"%s\"},\"Account\":{\"Code\":"
                                  "\"090\"},\"Date\":\"%s\",\"Amount\":1.00,"
                                  "\"Reference\":\"P-%d\"}",
                                  k ? "," : "", number, days[d], k + 1);
            k++;
        }
    snprintf(body + o, 64 * 1024 - o, "]}");
    assert_int_equal(api("PUT", "/api.xro/2.0/Payments", body, &r), 200);
    assert_int_equal(count_of(&r, "Payments"), 130);
    pbt_reply_free(&r);
    free(body);

    assert_int_equal(get_where("Payments",
                               "Date >= DateTime(2026,11,20) && Date <= DateTime(2026,11,22)", 1,
                               &r),
                     200);
    assert_int_equal(count_of(&r, "Payments"), 100);
    assert_int_equal(json_integer_value(pb_json_path(r.json, "pagination.itemCount")), 110);
    assert_int_equal(json_integer_value(pb_json_path(r.json, "pagination.pageCount")), 2);
    assert_string_equal(json_string_value(json_object_get(first(&r, "Payments"), "Date")),
                        "/Date(1795132800000+0000)/"); /* 2026-11-20 */
    pbt_reply_free(&r);
    assert_int_equal(get_where("Payments",
                               "Date >= DateTime(2026,11,20) && Date <= DateTime(2026,11,22)", 2,
                               &r),
                     200);
    assert_int_equal(count_of(&r, "Payments"), 10);
    pbt_reply_free(&r);
    assert_int_equal(get_where("Payments", "Date < DateTime(2026, 11, 20, 0, 0, 0)", 0, &r), 200);
    assert_int_equal(count_of(&r, "Payments"), 10);
    pbt_reply_free(&r);
    assert_int_equal(get_where("Payments", "Date > \"2026-11-22\" AND Reference==\"P-130\"", 0,
                               &r),
                     200);
    assert_int_equal(count_of(&r, "Payments"), 1);
    snprintf(pid, sizeof(pid), "%s",
             json_string_value(json_object_get(first(&r, "Payments"), "PaymentID")));
    pbt_reply_free(&r);

    /* delete it: listed as DELETED, the invoice owes 1.00 more */
    {
        char path[128];
        snprintf(path, sizeof(path), "/api.xro/2.0/Payments/%s", pid);
        assert_int_equal(api("POST", path, "{\"Status\":\"DELETED\"}", &r), 200);
        assert_string_equal(json_string_value(json_object_get(first(&r, "Payments"), "Status")),
                            "DELETED");
        pbt_reply_free(&r);
        assert_int_equal(api("POST", path, "{\"Status\":\"DELETED\"}", &r), 400);
        assert_non_null(strstr(r.body, "already been deleted"));
        pbt_reply_free(&r);
    }
    assert_int_equal(get_where("Payments", "Date >= DateTime(2026,11,23) && Status==\"DELETED\"",
                               0, &r),
                     200);
    assert_int_equal(count_of(&r, "Payments"), 1);
    pbt_reply_free(&r);
    {
        char path[96];
        snprintf(path, sizeof(path), "/api.xro/2.0/Invoices/%s", number);
        assert_int_equal(api("GET", path, NULL, &r), 200);
        assert_int_equal(minor_of(first(&r, "Invoices"), "AmountDue"), 100000 - 12900);
        assert_int_equal(json_array_size(json_object_get(first(&r, "Invoices"), "Payments")), 129);
        pbt_reply_free(&r);
    }
    /* a date compared with text, text with a date: 400 in Xero's exception */
    assert_int_equal(get_where("Payments", "Date >= \"soon\"", 0, &r), 400);
    assert_non_null(strstr(r.body, "QueryParseException"));
    pbt_reply_free(&r);
    assert_int_equal(get_where("Payments", "Reference > DateTime(2026,11,20)", 0, &r), 400);
    pbt_reply_free(&r);
    assert_int_equal(get_where("Payments", "Date >= DateTime(2026,13,1)", 0, &r), 400);
    pbt_reply_free(&r);
}

static const char JOURNAL_OK[] =
    "{\"ManualJournals\":[{\"Narration\":\"Opayo batch 7 [paybridge PB-opayo-7]\","
    "\"Date\":\"2026-11-21\",\"Status\":\"POSTED\",\"JournalLines\":["
    "{\"LineAmount\":100.00,\"AccountCode\":\"200\",\"Description\":\"sales\"},"
    "{\"LineAmount\":2.35,\"AccountCode\":\"404\",\"Description\":\"fees\"},"
    "{\"LineAmount\":-102.35,\"AccountCode\":\"260\",\"Description\":\"other revenue\"}]}]}";

/* Xero's words for a refused journal, from a 400 ValidationException. */
static void expect_journal_refused(const char *body, const char *words)
{
    struct pbt_reply r;
    json_t *errs;
    assert_int_equal(api("PUT", "/api.xro/2.0/ManualJournals", body, &r), 400);
    assert_string_equal(json_string_value(json_object_get(r.json, "Type")),
                        "ValidationException");
    errs = pb_json_path(r.json, "Elements.0.ValidationErrors");
    assert_true(json_array_size(errs) >= 1);
    if (!strstr(r.body, words))
        fail_msg("expected \"%s\" in %s", words, r.body);
    pbt_reply_free(&r);
}

static void test_manual_journals(void **state)
{
    struct pbt_reply r;
    json_t *mj, *lines;
    char id[64], path[128];
    (void)state;
    assert_int_equal(api("PUT", "/api.xro/2.0/ManualJournals", JOURNAL_OK, &r), 200);
    mj = first(&r, "ManualJournals");
    assert_string_equal(json_string_value(json_object_get(mj, "Status")), "POSTED");
    assert_string_equal(json_string_value(json_object_get(mj, "Date")),
                        "/Date(1795219200000+0000)/");
    lines = json_object_get(mj, "JournalLines");
    assert_int_equal(json_array_size(lines), 3);
    assert_int_equal(minor_of(json_array_get(lines, 1), "LineAmount"), 235);
    assert_int_equal(minor_of(json_array_get(lines, 2), "LineAmount"), -10235);
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 2),
                                                          "AccountCode")),
                        "260");
    assert_non_null(strstr(r.body, "\"LineAmount\":-102.35")); /* exact on the wire */
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(mj, "ManualJournalID")));
    pbt_reply_free(&r);

    expect_journal_refused(
        "{\"ManualJournals\":[{\"Narration\":\"x\",\"JournalLines\":["
        "{\"LineAmount\":1,\"AccountCode\":\"999\"},"
        "{\"LineAmount\":-1,\"AccountCode\":\"200\"}]}]}",
        "Account code '999' is not a valid code for this document.");
    expect_journal_refused(
        "{\"ManualJournals\":[{\"Narration\":\"x\",\"JournalLines\":["
        "{\"LineAmount\":100.00,\"AccountCode\":\"200\"},{\"LineAmount\":-90,\"AccountCode\":"
        "\"260\"}]}]}",
        "The total debits (100.00) must equal total credits (-90.00)");
    expect_journal_refused("{\"ManualJournals\":[{\"Narration\":\"x\",\"JournalLines\":["
                           "{\"LineAmount\":0,\"AccountCode\":\"200\"}]}]}",
                           "At least two journal lines are required.");
    expect_journal_refused("{\"ManualJournals\":[{\"JournalLines\":["
                           "{\"LineAmount\":1,\"AccountCode\":\"200\"},{\"LineAmount\":-1,"
                           "\"AccountCode\":\"260\"}]}]}",
                           "Narration cannot be empty.");
    /* a bank account on a line: Xero keeps bank accounts out of manual journals */
    expect_journal_refused("{\"ManualJournals\":[{\"Narration\":\"x\",\"JournalLines\":["
                           "{\"LineAmount\":1,\"AccountCode\":\"090\"},{\"LineAmount\":-1,"
                           "\"AccountCode\":\"260\"}]}]}",
                           "Account code '090' is a bank account. Bank accounts cannot be used in "
                           "manual journals");
    /* summarizeErrors=false: 200 with the element marked ERROR */
    assert_int_equal(api("PUT", "/api.xro/2.0/ManualJournals?summarizeErrors=false",
                         "{\"ManualJournals\":[{\"Narration\":\"x\",\"JournalLines\":["
                         "{\"LineAmount\":1,\"AccountCode\":\"999\"},{\"LineAmount\":-1,"
                         "\"AccountCode\":\"200\"}]}]}",
                         &r),
                     200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "ManualJournals"),
                                                          "StatusAttributeString")),
                        "ERROR");
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "manual_journals"), 1);

    assert_int_equal(get_where("ManualJournals", "Narration.Contains(\"[paybridge PB-opayo-7]\")",
                               1, &r),
                     200);
    assert_int_equal(count_of(&r, "ManualJournals"), 1);
    assert_string_equal(json_string_value(json_object_get(first(&r, "ManualJournals"),
                                                          "ManualJournalID")),
                        id);
    pbt_reply_free(&r);
    assert_int_equal(get_where("ManualJournals", "Narration.Contains(\"[paybridge PB-opayo-70]\")",
                               1, &r),
                     200);
    assert_int_equal(count_of(&r, "ManualJournals"), 0);
    pbt_reply_free(&r);
    assert_int_equal(get_where("ManualJournals", "Narration.StartsWith(\"opayo batch\") && "
                               "Date == DateTime(2026,11,21)", 0, &r),
                     200);
    assert_int_equal(count_of(&r, "ManualJournals"), 1);
    pbt_reply_free(&r);
    snprintf(path, sizeof(path), "/api.xro/2.0/ManualJournals/%s", id);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "ManualJournals"),
                                                          "Narration")),
                        "Opayo batch 7 [paybridge PB-opayo-7]");
    pbt_reply_free(&r);
}

static void test_bank_transactions(void **state)
{
    struct pbt_reply r;
    json_t *bt;
    char id[64], path[128];
    (void)state;
    assert_int_equal(api("PUT", "/api.xro/2.0/BankTransactions",
                         "{\"BankTransactions\":[{\"Type\":\"RECEIVE\",\"Contact\":{\"Name\":"
                         "\"Walk-in\"},\"BankAccount\":{\"Code\":\"090\"},\"Date\":\"2026-11-21\","
                         "\"Reference\":\"ORD-9\",\"CurrencyCode\":\"EUR\",\"LineItems\":["
                         "{\"Description\":\"card (Opayo txn T-9)\",\"Quantity\":2,"
                         "\"UnitAmount\":10.05,\"AccountCode\":\"200\"},{\"Description\":\"p&p\","
                         "\"UnitAmount\":0.01,\"AccountCode\":\"200\"}]},"
                         "{\"Type\":\"SPEND\",\"Contact\":{\"Name\":\"Walk-in\"},\"BankAccount\":"
                         "{\"Code\":\"090\"},\"Date\":\"2026-11-22\",\"LineItems\":[{"
                         "\"Description\":\"refund\",\"UnitAmount\":\"5.00\",\"AccountCode\":"
                         "\"200\"}]}]}",
                         &r),
                     200);
    bt = first(&r, "BankTransactions");
    assert_string_equal(json_string_value(json_object_get(bt, "Status")), "AUTHORISED");
    assert_string_equal(json_string_value(json_object_get(bt, "CurrencyCode")), "EUR");
    assert_int_equal(minor_of(bt, "Total"), 2011);
    assert_string_equal(json_string_value(pb_json_path(bt, "Contact.Name")), "Walk-in");
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(bt, "BankTransactionID")));
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "contacts"), 1); /* Walk-in created once */

    /* not a bank account; an unknown line account */
    assert_int_equal(api("PUT", "/api.xro/2.0/BankTransactions",
                         "{\"BankTransactions\":[{\"Type\":\"RECEIVE\",\"Contact\":"
                         "{\"Name\":\"A\"},"
                         "\"BankAccount\":{\"Code\":\"200\"},\"LineItems\":[{\"UnitAmount\":1,"
                         "\"AccountCode\":\"777\"}]}]}",
                         &r),
                     400);
    assert_non_null(strstr(r.body, "Account code '200' is not a bank account"));
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "bank_transactions"), 2);

    assert_int_equal(get_where("BankTransactions",
                               "Date >= DateTime(2026,11,22) && Type==\"SPEND\"", 1, &r),
                     200);
    assert_int_equal(count_of(&r, "BankTransactions"), 1);
    assert_int_equal(minor_of(first(&r, "BankTransactions"), "Total"), 500);
    pbt_reply_free(&r);

    snprintf(path, sizeof(path), "/api.xro/2.0/BankTransactions/%s", id);
    assert_int_equal(api("POST", path, "{\"BankTransactions\":[{\"Status\":\"DELETED\"}]}", &r),
                     200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "BankTransactions"),
                                                          "Status")),
                        "DELETED");
    pbt_reply_free(&r);
    assert_int_equal(api("POST", path, "{\"Reference\":\"changed\",\"Status\":\"DELETED\"}", &r),
                     400);
    pbt_reply_free(&r);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "BankTransactions"),
                                                          "Status")),
                        "DELETED");
    pbt_reply_free(&r);
    assert_int_equal(get_where("BankTransactions", "Status==\"AUTHORISED\"", 0, &r), 200);
    assert_int_equal(count_of(&r, "BankTransactions"), 1);
    pbt_reply_free(&r);
}

static const char TRANSFER_OK[] =
    "{\"BankTransfers\":[{\"FromBankAccount\":{\"Code\":\"091\"},\"ToBankAccount\":{\"Code\":"
    "\"090\"},\"Amount\":100.00,\"Date\":\"2026-11-21\",\"Reference\":\"[paybridge PB-7]\"}]}";

/* One element of a 400 ValidationException carries `words`. */
static void expect_refused(const char *path, const char *body, const char *words)
{
    struct pbt_reply r;
    assert_int_equal(api("PUT", path, body, &r), 400);
    assert_string_equal(json_string_value(json_object_get(r.json, "Type")),
                        "ValidationException");
    if (!strstr(r.body, words))
        fail_msg("expected \"%s\" in %s", words, r.body);
    pbt_reply_free(&r);
}

/* A transfer between two BANK accounts, its two legs listed as bank
 * transactions (not counted as such), the where filters on Reference, and
 * what Xero refuses: a non-bank account, the same account twice, no amount,
 * a bank account on a bank transaction's line. */
static void test_bank_transfers(void **state)
{
    struct pbt_reply r;
    json_t *tr, *leg;
    char id[64], from_txn[64], path[128];
    (void)state;
    assert_int_equal(api("PUT", "/api.xro/2.0/BankTransfers", TRANSFER_OK, &r), 200);
    tr = first(&r, "BankTransfers");
    assert_string_equal(json_string_value(pb_json_path(tr, "FromBankAccount.Code")), "091");
    assert_string_equal(json_string_value(pb_json_path(tr, "ToBankAccount.Code")), "090");
    assert_string_equal(json_string_value(json_object_get(tr, "Status")), "AUTHORISED");
    assert_string_equal(json_string_value(json_object_get(tr, "Date")),
                        "/Date(1795219200000+0000)/");
    assert_int_equal(minor_of(tr, "Amount"), 10000);
    assert_non_null(strstr(r.body, "\"Amount\":100.00"));
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(tr, "BankTransferID")));
    snprintf(from_txn, sizeof(from_txn), "%s",
             json_string_value(json_object_get(tr, "FromBankTransactionID")));
    assert_int_equal(strlen(id), 36);
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "bank_transfers"), 1);
    assert_int_equal(stat_of(open_port, "bank_transactions"), 0); /* legs are not counted */

    /* the legs: SPEND-TRANSFER out of 091, RECEIVE-TRANSFER into 090 */
    assert_int_equal(get_where("BankTransactions", "Type==\"SPEND-TRANSFER\"", 0, &r), 200);
    assert_int_equal(count_of(&r, "BankTransactions"), 1);
    leg = first(&r, "BankTransactions");
    assert_string_equal(json_string_value(json_object_get(leg, "BankTransactionID")), from_txn);
    assert_string_equal(json_string_value(pb_json_path(leg, "BankAccount.Code")), "091");
    assert_string_equal(json_string_value(json_object_get(leg, "Reference")),
                        "[paybridge PB-7]");
    assert_int_equal(minor_of(leg, "Total"), 10000);
    assert_null(json_object_get(leg, "Contact"));
    pbt_reply_free(&r);
    assert_int_equal(get_where("BankTransactions", "Type==\"RECEIVE-TRANSFER\"", 0, &r), 200);
    assert_int_equal(count_of(&r, "BankTransactions"), 1);
    assert_string_equal(json_string_value(pb_json_path(first(&r, "BankTransactions"),
                                                       "BankAccount.Code")),
                        "090");
    pbt_reply_free(&r);

    /* found by its Reference; "PB-70" finds nothing; by id */
    assert_int_equal(get_where("BankTransfers", "Reference.StartsWith(\"[paybridge PB-7]\")", 0,
                               &r),
                     200);
    assert_int_equal(count_of(&r, "BankTransfers"), 1);
    pbt_reply_free(&r);
    assert_int_equal(get_where("BankTransfers", "Reference==\"[paybridge PB-70]\"", 1, &r), 200);
    assert_int_equal(count_of(&r, "BankTransfers"), 0);
    assert_non_null(json_object_get(r.json, "pagination"));
    pbt_reply_free(&r);
    assert_int_equal(get_where("BankTransfers", "Date == DateTime(2026,11,21) && "
                               "FromBankAccount.Code==\"091\"", 0, &r),
                     200);
    assert_int_equal(count_of(&r, "BankTransfers"), 1);
    pbt_reply_free(&r);
    snprintf(path, sizeof(path), "/api.xro/2.0/BankTransfers/%s", id);
    assert_int_equal(api("GET", path, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(first(&r, "BankTransfers"),
                                                          "BankTransferID")),
                        id);
    pbt_reply_free(&r);

    /* refusals */
    expect_refused("/api.xro/2.0/BankTransfers",
                   "{\"BankTransfers\":[{\"FromBankAccount\":{\"Code\":\"091\"},"
                   "\"ToBankAccount\":{\"Code\":\"200\"},\"Amount\":1}]}",
                   "Account code '200' is not a bank account");
    expect_refused("/api.xro/2.0/BankTransfers",
                   "{\"BankTransfers\":[{\"FromBankAccount\":{\"Code\":\"090\"},"
                   "\"ToBankAccount\":{\"Code\":\"090\"},\"Amount\":1}]}",
                   "FromBankAccount and ToBankAccount must be different bank accounts");
    expect_refused("/api.xro/2.0/BankTransfers",
                   "{\"BankTransfers\":[{\"FromBankAccount\":{\"Code\":\"091\"},"
                   "\"ToBankAccount\":{\"Code\":\"090\"},\"Amount\":0}]}",
                   "Amount must be greater than zero");
    expect_refused("/api.xro/2.0/BankTransfers",
                   "{\"BankTransfers\":[{\"FromBankAccount\":{\"Code\":\"091\"},"
                   "\"Amount\":5}]}",
                   "ToBankAccount must be specified by Code or AccountID");
    expect_refused("/api.xro/2.0/BankTransactions",
                   "{\"BankTransactions\":[{\"Type\":\"SPEND\",\"Contact\":{\"Name\":\"A\"},"
                   "\"BankAccount\":{\"Code\":\"090\"},\"LineItems\":[{\"LineAmount\":1,"
                   "\"AccountCode\":\"091\"}]}]}",
                   "Account code '091' is a bank account and cannot be used on a line item");
    assert_int_equal(stat_of(open_port, "bank_transfers"), 1);
    assert_int_equal(stat_of(open_port, "bank_transactions"), 0);
}

/* POST /_sandbox/fail_next: one call of one method and path fails, before
 * it commits or (after_commit) after; other calls and later ones go through. */
static void test_fail_next(void **state)
{
    struct pbt_reply r;
    (void)state;
    assert_int_equal(http(open_port, "POST", "/_sandbox/fail_next", NULL, NULL,
                          "{\"method\":\"PUT\",\"path\":\"/api.xro/2.0/BankTransfers\"}", &r),
                     200);
    pbt_reply_free(&r);
    assert_int_equal(get_where("BankTransfers", "Reference==\"x\"", 0, &r), 200); /* a GET */
    pbt_reply_free(&r);
    assert_int_equal(api("PUT", "/api.xro/2.0/BankTransfers", TRANSFER_OK, &r), 503);
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "bank_transfers"), 0);
    assert_int_equal(api("PUT", "/api.xro/2.0/BankTransfers", TRANSFER_OK, &r), 200);
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "bank_transfers"), 1);
    /* after_commit: the transfer is made, the reply lost */
    assert_int_equal(http(open_port, "POST", "/_sandbox/fail_next", NULL, NULL,
                          "{\"method\":\"PUT\",\"path\":\"/api.xro/2.0/BankTransfers\","
                          "\"status\":500,\"after_commit\":true}",
                          &r),
                     200);
    pbt_reply_free(&r);
    assert_int_equal(api("PUT", "/api.xro/2.0/BankTransfers", TRANSFER_OK, &r), 500);
    pbt_reply_free(&r);
    assert_int_equal(stat_of(open_port, "bank_transfers"), 2);
    assert_int_equal(http(open_port, "POST", "/_sandbox/fail_next", NULL, NULL,
                          "{\"method\":\"PUT\",\"status\":200}", &r),
                     400);
    pbt_reply_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_invoice_payment_flow, reset),
        cmocka_unit_test_setup(test_summarize_errors_false, reset),
        cmocka_unit_test_setup(test_validation_envelope, reset),
        cmocka_unit_test_setup(test_idempotency_replay, reset),
        cmocka_unit_test(test_rate_limit_minute),
        cmocka_unit_test_setup(test_faults_runtime, reset),
        cmocka_unit_test_setup(test_auth, reset),
        cmocka_unit_test_setup(test_paging, reset),
        cmocka_unit_test_setup(test_void_invoice, reset),
        cmocka_unit_test_setup(test_batch_claims_and_escaping, reset),
        cmocka_unit_test_setup(test_credit_note_allocation, reset),
        cmocka_unit_test_setup(test_credit_note_refund_of_paid_invoice, reset),
        cmocka_unit_test_setup(test_credit_note_lifecycle, reset),
        cmocka_unit_test_setup(test_payments_where_date_and_paging, reset),
        cmocka_unit_test_setup(test_manual_journals, reset),
        cmocka_unit_test_setup(test_bank_transactions, reset),
        cmocka_unit_test_setup(test_bank_transfers, reset),
        cmocka_unit_test_setup(test_fail_next, reset),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
