/*
 * tests/unit/test_sandbox_paytrace.c: the PayTrace API v1 emulator
 * (sandbox/paytrace.c) and its signed webhooks, over real HTTP.
 *
 * The fixture starts the emulator directly (create, pb_httpd_start with its
 * routes on port 0, started), not through pb_sandbox_start, so these tests
 * see it without fault injection and without the framework knowing about it.
 * A second pb_httpd is the webhook receiver: it records every body with its
 * X-PayTrace-Signature and can answer 500 to the next N deliveries. Each test
 * starts from POST /_sandbox/reset and an empty receiver; waiting for
 * webhooks polls GET /_sandbox/stats until webhooks_pending is 0.
 *
 * Signatures are recomputed with OpenSSL directly, not core/crypto.h, so the
 * emulator is not checked with its own code. Amounts are checked as the
 * exact text on the wire ("amount":10.99), not through a double.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/json.h"
#include "net/httpd.h"
#include "paytrace.h"
#include "pbtest.h"
#include "sbx.h"

#define SECRET "sandbox-paytrace-secret"
#define GOOD_CARD "4111111111111111"
#define DECLINE_CARD "4012888888881881"

/* ---- the webhook receiver ------------------------------------------------------ */

static struct pbt_receiver rx;

static void receiver_clear(void)
{
    pbt_receiver_clear(&rx);
}

static int received(void)
{
    return pbt_receiver_count(&rx);
}

/* ---- fixture --------------------------------------------------------------------- */

struct fixture {
    struct pbt_env env; /* the emulator */
    char hook_url[64];
    char token[128];
};

static struct fixture fx;

static int group_setup(void **unused)
{
    if (pbt_receiver_start(&rx, "X-PayTrace-Signature"))
        return -1;
    snprintf(fx.hook_url, sizeof fx.hook_url, "%s", rx.url);
    if (pbt_env_emulator(&fx.env, &sbx_paytrace_type,
                         json_pack("{s:s}", "webhook_url", fx.hook_url), 0))
        return -1;
    return 0;
}

static int group_teardown(void **unused)
{
    pbt_env_stop(&fx.env);
    pbt_receiver_stop(&rx);
    return 0;
}

/* ---- HTTP client --------------------------------------------------------------------- */

/* One request; the status, the parsed reply in *out and the raw text in *raw
 * (either may be NULL). content_type NULL = JSON; auth = 1 sends fx.token. */
static long request(const char *method, const char *path, int auth, const char *content_type,
                    const char *body, json_t **out, char **raw)
{
    char type[256], bearer[256];
    const char *headers[] = {type, auth ? bearer : NULL, NULL};
    struct pbt_http_opts opts = {.headers = headers};
    struct pbt_reply r;
    long status;

    snprintf(type, sizeof type, "Content-Type: %s",
             content_type ? content_type : "application/json");
    snprintf(bearer, sizeof bearer, "Authorization: Bearer %s", fx.token);
    status = pbt_http(fx.env.port, method, path, &opts, body, &r);
    if (out)
        *out = r.len ? json_loads(r.body, 0, NULL) : NULL;
    if (raw) {
        *raw = r.body;
        r.body = NULL;
    }
    pbt_reply_free(&r);
    return status;
}
static long api(const char *path, const char *body, json_t **out)
{
    return request("POST", path, 1, NULL, body, out, NULL);
}

static long long ival(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}
static const char *sval(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The first message of errors[code], or NULL. */
static const char *error_of(json_t *reply, const char *code)
{
    return json_string_value(
        json_array_get(json_object_get(json_object_get(reply, "errors"), code), 0));
}

static json_t *stats(void)
{
    json_t *s;
    assert_int_equal(request("GET", "/_sandbox/stats", 0, NULL, NULL, &s, NULL), 200);
    return s;
}

static long long stat_of(const char *key)
{
    json_t *s = stats();
    long long v = ival(s, key);
    json_decref(s);
    return v;
}

static void wait_webhooks(void)
{
    pbt_wait_stat_zero(fx.env.port, "webhooks_pending", 15, "webhooks");
}
static void get_token(void)
{
    json_t *r;
    assert_int_equal(request("POST", "/oauth/token", 0, "application/x-www-form-urlencoded",
                             "grant_type=password&username=sandbox-user&password=sandbox-pass", &r,
                             NULL),
                     200);
    snprintf(fx.token, sizeof fx.token, "%s", sval(r, "access_token"));
    json_decref(r);
}

static int test_setup(void **unused)
{
    json_t *r;
    char settings[256];
    assert_int_equal(request("POST", "/_sandbox/reset", 0, NULL, "{}", &r, NULL), 200);
    json_decref(r);
    snprintf(settings, sizeof settings,
             "{\"webhook_url\":\"%s\",\"webhook_secret\":\"" SECRET "\",\"webhook_drop_rate\":0,"
             "\"token_ttl_s\":7200}",
             fx.hook_url);
    assert_int_equal(request("POST", "/_sandbox/settings", 0, NULL, settings, &r, NULL), 200);
    json_decref(r);
    receiver_clear();
    get_token();
    return 0;
}

/* A keyed sale; the reply in *out. */
static long sale(const char *card, const char *amount, const char *invoice, json_t **out)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"amount\":\"%s\",\"credit_card\":{\"number\":\"%s\",\"expiration_month\":\"12\","
             "\"expiration_year\":\"2039\"},\"csc\":\"999\",\"invoice_id\":\"%s\","
             "\"email\":\"ann@example.com\",\"billing_address\":{\"name\":\"Ann Smith\","
             "\"street_address\":\"8320 E. West St.\",\"city\":\"Spokane\",\"state\":\"WA\","
             "\"zip\":\"85284\"}}",
             amount, card, invoice);
    return api("/v1/transactions/sale/keyed", body, out);
}

/* Webhook i: signed with `secret`, parsed (caller frees). */
static json_t *webhook(int i, const char *secret)
{
    char want[65];
    json_t *o;
    pthread_mutex_lock(&rx.mu);
    assert_true(i < rx.n);
    pbt_hmac_hex(secret, rx.body[i], rx.len[i], want);
    assert_string_equal(rx.signature[i], want);
    o = json_loadb(rx.body[i], rx.len[i], 0, NULL);
    pthread_mutex_unlock(&rx.mu);
    assert_non_null(o);
    return o;
}

static const char *webhook_text(int i)
{
    const char *t;
    pthread_mutex_lock(&rx.mu);
    t = i < rx.n ? rx.body[i] : NULL;
    pthread_mutex_unlock(&rx.mu);
    return t;
}

static void us_today(char out[16], long offset_days)
{
    time_t t = time(NULL) + offset_days * 86400;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 16, "%m/%d/%Y", &tm);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_token(void **unused)
{
    json_t *r;
    char saved[128];

    assert_int_equal(request("POST", "/oauth/token", 0, "application/x-www-form-urlencoded",
                             "grant_type=password&username=sandbox-user&password=wrong", &r, NULL),
                     400);
    assert_string_equal(sval(r, "error"), "invalid_grant");
    json_decref(r);
    assert_int_equal(request("POST", "/oauth/token", 0, "application/x-www-form-urlencoded",
                             "grant_type=client_credentials", &r, NULL),
                     400);
    assert_string_equal(sval(r, "error"), "unsupported_grant_type");
    json_decref(r);
    /* percent-encoded form values are decoded */
    assert_int_equal(request("POST", "/oauth/token", 0, "application/x-www-form-urlencoded",
                             "grant_type=password&username=sandbox%2Duser&password=sandbox-pass",
                             &r, NULL),
                     200);
    assert_string_equal(sval(r, "token_type"), "bearer");
    assert_int_equal(ival(r, "expires_in"), 7200);
    assert_int_equal(strlen(sval(r, "access_token")), 32);
    json_decref(r);

    /* no or a wrong token: 401 invalid_token */
    assert_int_equal(request("POST", "/v1/transactions/void", 0, NULL, "{}", &r, NULL), 401);
    assert_string_equal(sval(r, "error"), "invalid_token");
    json_decref(r);
    snprintf(saved, sizeof saved, "%s", fx.token);
    snprintf(fx.token, sizeof fx.token, "00000000000000000000000000000000");
    assert_int_equal(api("/v1/transactions/void", "{}", &r), 401);
    json_decref(r);
    snprintf(fx.token, sizeof fx.token, "%s", saved);

    /* revoked: the old token stops working */
    assert_int_equal(request("POST", "/_sandbox/tokens/revoke", 0, NULL, "{}", &r, NULL), 200);
    json_decref(r);
    assert_int_equal(api("/v1/transactions/void", "{\"transaction_id\":1}", &r), 401);
    json_decref(r);
    assert_int_equal(stat_of("token_requests"), 4);
    assert_int_equal(stat_of("tokens_issued"), 2);
}

static void test_sale_approved_and_webhook(void **unused)
{
    json_t *r, *w, *tx;
    long long id;
    char want[64];

    assert_int_equal(sale(GOOD_CARD, "10.99", "ORDER-1", &r), 200);
    assert_true(json_is_true(json_object_get(r, "success")));
    assert_int_equal(ival(r, "response_code"), 101);
    assert_string_equal(sval(r, "status_message"), "Your transaction was successfully approved.");
    assert_string_equal(sval(r, "masked_card_number"), "xxxxxxxxxxxx1111");
    assert_int_equal(strlen(sval(r, "approval_code")), 6);
    assert_string_equal(sval(r, "csc_response"), "Match");
    assert_string_equal(sval(r, "avs_response"), "Full Exact Match");
    id = ival(r, "transaction_id");
    assert_true(id >= 100000000 && id < 1000000000);
    json_decref(r);

    wait_webhooks();
    assert_int_equal(received(), 1);
    w = webhook(0, SECRET);
    assert_string_equal(sval(w, "event_type"), "transaction.sale");
    assert_int_equal(strlen(sval(w, "event_id")), 36);
    assert_non_null(sval(w, "created_at"));
    tx = json_object_get(w, "transaction");
    assert_int_equal(ival(tx, "transaction_id"), id);
    assert_string_equal(sval(tx, "transaction_type"), "SALE");
    assert_string_equal(sval(tx, "invoice_id"), "ORDER-1");
    assert_string_equal(sval(tx, "payment_method"), "CC");
    assert_string_equal(sval(tx, "currency"), "USD");
    assert_string_equal(sval(json_object_get(tx, "billing_address"), "name"), "Ann Smith");
    assert_true(json_is_false(json_object_get(tx, "voided")));
    /* the amount is a JSON number written from exact text */
    assert_contains(webhook_text(0), "\"amount\":10.99");
    /* no card number or CSC anywhere */
    assert_null(strstr(webhook_text(0), GOOD_CARD));
    assert_null(strstr(webhook_text(0), "\"csc\":"));
    snprintf(want, sizeof want, "\"transaction_id\":%lld", id);
    assert_contains(webhook_text(0), want);
    json_decref(w);
    assert_int_equal(stat_of("webhooks_acknowledged"), 1);
}

static void test_declines(void **unused)
{
    json_t *r, *w;

    assert_int_equal(sale(DECLINE_CARD, "25.00", "ORDER-2", &r), 200);
    assert_true(json_is_false(json_object_get(r, "success")));
    assert_int_equal(ival(r, "response_code"), 102);
    assert_contains(sval(r, "status_message"), "insufficient funds");
    assert_true(ival(r, "transaction_id") > 0);
    assert_string_equal(sval(r, "approval_code"), "");
    json_decref(r);

    /* over the limit declines; the limit itself approves */
    assert_int_equal(sale(GOOD_CARD, "10000.01", "ORDER-3", &r), 200);
    assert_int_equal(ival(r, "response_code"), 102);
    assert_contains(sval(r, "status_message"), "10000.00");
    json_decref(r);
    assert_int_equal(sale(GOOD_CARD, "10000.00", "ORDER-4", &r), 200);
    assert_int_equal(ival(r, "response_code"), 101);
    json_decref(r);

    wait_webhooks();
    assert_int_equal(received(), 3);
    w = webhook(0, SECRET);
    assert_string_equal(sval(w, "event_type"), "transaction.declined");
    assert_true(json_is_false(json_object_get(json_object_get(w, "transaction"), "success")));
    assert_contains(sval(json_object_get(w, "transaction"), "status_message"),
                    "insufficient funds");
    json_decref(w);
}

static void test_validation(void **unused)
{
    json_t *r;

    /* Luhn failure: PayTrace's error 35 */
    assert_int_equal(sale("4111111111111112", "1.00", "V1", &r), 400);
    assert_true(json_is_false(json_object_get(r, "success")));
    assert_int_equal(ival(r, "response_code"), 1);
    assert_string_equal(sval(r, "status_message"), "One or more errors has occurred.");
    assert_string_equal(error_of(r, "35"), "Please provide a valid Credit Card Number.");
    json_decref(r);
    /* amounts that are not exact money */
    assert_int_equal(sale(GOOD_CARD, "abc", "V2", &r), 400);
    assert_non_null(error_of(r, "30"));
    json_decref(r);
    assert_int_equal(sale(GOOD_CARD, "1.999", "V3", &r), 400);
    assert_non_null(error_of(r, "30"));
    json_decref(r);
    assert_int_equal(sale(GOOD_CARD, "0.00", "V4", &r), 400);
    assert_non_null(error_of(r, "30"));
    json_decref(r);
    /* expired card, bad month */
    assert_int_equal(api("/v1/transactions/sale/keyed",
                         "{\"amount\":\"1.00\",\"credit_card\":{\"number\":\"" GOOD_CARD
                         "\",\"expiration_month\":\"13\",\"expiration_year\":\"2010\"}}",
                         &r),
                     400);
    assert_non_null(error_of(r, "43"));
    assert_non_null(error_of(r, "44"));
    json_decref(r);
    /* not a JSON object */
    assert_int_equal(api("/v1/transactions/sale/keyed", "[1]", &r), 400);
    json_decref(r);
    /* bad line items (sandbox extension) */
    assert_int_equal(api("/v1/transactions/sale/keyed",
                         "{\"amount\":\"1.00\",\"credit_card\":{\"number\":\"" GOOD_CARD
                         "\",\"expiration_month\":\"12\",\"expiration_year\":\"2039\"},"
                         "\"line_items\":[{\"sku\":\"A\",\"quantity\":0,\"unit_price\":\"1.00\"}]}",
                         &r),
                     400);
    assert_contains(error_of(r, "900"), "line_items.0.quantity");
    json_decref(r);
    assert_int_equal(stat_of("transactions"), 0);
    assert_int_equal(received(), 0);
}

static void test_refunds(void **unused)
{
    json_t *r, *w;
    long long sale_id, refund_id;
    char body[256];

    assert_int_equal(sale(GOOD_CARD, "10.99", "ORDER-R", &r), 200);
    sale_id = ival(r, "transaction_id");
    json_decref(r);

    snprintf(body, sizeof body, "{\"transaction_id\":%lld,\"amount\":\"4.00\"}", sale_id);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 200);
    assert_int_equal(ival(r, "response_code"), 106);
    assert_string_equal(sval(r, "status_message"), "Your transaction was successfully refunded.");
    refund_id = ival(r, "transaction_id");
    assert_true(refund_id > sale_id);
    json_decref(r);

    /* more than the remainder (6.99): refused, naming both */
    snprintf(body, sizeof body, "{\"transaction_id\":\"%lld\",\"amount\":\"7.00\"}", sale_id);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 400);
    assert_true(json_is_false(json_object_get(r, "success")));
    assert_contains(error_of(r, "817"), "7.00 exceeds the unrefunded remainder of 6.99");
    json_decref(r);

    /* no amount: the whole remainder */
    snprintf(body, sizeof body, "{\"transaction_id\":%lld}", sale_id);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 200);
    json_decref(r);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 400);
    assert_contains(error_of(r, "817"), "remainder of 0.00");
    json_decref(r);

    /* a refund cannot be refunded; an unknown id is 58 */
    snprintf(body, sizeof body, "{\"transaction_id\":%lld,\"amount\":\"1.00\"}", refund_id);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 400);
    assert_non_null(error_of(r, "818"));
    json_decref(r);
    assert_int_equal(api("/v1/transactions/refund/for_transaction",
                         "{\"transaction_id\":1,\"amount\":\"1.00\"}", &r),
                     400);
    assert_non_null(error_of(r, "58"));
    json_decref(r);

    wait_webhooks();
    assert_int_equal(received(), 3);
    w = webhook(1, SECRET);
    assert_string_equal(sval(w, "event_type"), "transaction.refund");
    assert_string_equal(sval(json_object_get(w, "transaction"), "transaction_type"), "REFUND");
    assert_int_equal(ival(json_object_get(w, "transaction"), "original_transaction_id"), sale_id);
    /* a refund without invoice_id inherits the sale's */
    assert_string_equal(sval(json_object_get(w, "transaction"), "invoice_id"), "ORDER-R");
    assert_contains(webhook_text(1), "\"amount\":4.00");
    json_decref(w);
}

static void test_void(void **unused)
{
    json_t *r, *w, *all;
    long long a, b, refund_id;
    char body[128];

    assert_int_equal(sale(GOOD_CARD, "5.00", "ORDER-V1", &r), 200);
    a = ival(r, "transaction_id");
    json_decref(r);
    assert_int_equal(sale(GOOD_CARD, "6.00", "ORDER-V2", &r), 200);
    b = ival(r, "transaction_id");
    json_decref(r);

    snprintf(body, sizeof body, "{\"transaction_id\":%lld}", a);
    assert_int_equal(api("/v1/transactions/void", body, &r), 200);
    assert_int_equal(ival(r, "response_code"), 109);
    assert_int_equal(ival(r, "transaction_id"), a);
    json_decref(r);
    assert_int_equal(api("/v1/transactions/void", body, &r), 400);
    assert_contains(error_of(r, "815"), "already voided");
    json_decref(r);
    /* a voided sale cannot be refunded */
    snprintf(body, sizeof body, "{\"transaction_id\":%lld,\"amount\":\"1.00\"}", a);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 400);
    assert_non_null(error_of(r, "818"));
    json_decref(r);

    /* a sale with a refund cannot be voided; voiding the refund gives the money back */
    snprintf(body, sizeof body, "{\"transaction_id\":%lld,\"amount\":\"6.00\"}", b);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 200);
    refund_id = ival(r, "transaction_id");
    json_decref(r);
    snprintf(body, sizeof body, "{\"transaction_id\":%lld}", b);
    assert_int_equal(api("/v1/transactions/void", body, &r), 400);
    assert_contains(error_of(r, "815"), "has refunds");
    json_decref(r);
    snprintf(body, sizeof body, "{\"transaction_id\":%lld}", refund_id);
    assert_int_equal(api("/v1/transactions/void", body, &r), 200);
    json_decref(r);
    snprintf(body, sizeof body, "{\"transaction_id\":%lld,\"amount\":\"6.00\"}", b);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 200);
    json_decref(r);

    wait_webhooks();
    assert_int_equal(received(), 6);
    w = webhook(2, SECRET);
    assert_string_equal(sval(w, "event_type"), "transaction.void");
    assert_int_equal(ival(json_object_get(w, "transaction"), "transaction_id"), a);
    assert_true(json_is_true(json_object_get(json_object_get(w, "transaction"), "voided")));
    assert_non_null(sval(json_object_get(w, "transaction"), "voided_at"));
    json_decref(w);

    assert_int_equal(request("GET", "/_sandbox/transactions", 0, NULL, NULL, &all, NULL), 200);
    assert_int_equal(json_array_size(all), 4);
    assert_string_equal(sval(json_array_get(all, 1), "refunded_amount"), "6.00");
    json_decref(all);
}

static void test_customers_and_ach(void **unused)
{
    json_t *r, *all, *rec;

    assert_int_equal(api("/v1/customer/create",
                         "{\"customer_id\":\"CUST-1\",\"credit_card\":{\"number\":\"" GOOD_CARD
                         "\",\"expiration_month\":12,\"expiration_year\":2039},"
                         "\"billing_address\":{\"name\":\"Bo Lee\",\"zip\":\"99201\"},"
                         "\"email\":\"bo@example.com\"}",
                         &r),
                     200);
    assert_int_equal(ival(r, "response_code"), 160);
    assert_contains(sval(r, "status_message"), "CUST-1/Bo Lee");
    json_decref(r);
    assert_int_equal(api("/v1/customer/create",
                         "{\"customer_id\":\"CUST-1\",\"credit_card\":{\"number\":\"" GOOD_CARD
                         "\",\"expiration_month\":12,\"expiration_year\":2039}}",
                         &r),
                     400);
    assert_contains(error_of(r, "171"), "CUST-1 already exists");
    json_decref(r);
    assert_int_equal(api("/v1/customer/create",
                         "{\"customer_id\":\"CUST-NSF\",\"credit_card\":{\"number\":\"" DECLINE_CARD
                         "\",\"expiration_month\":12,\"expiration_year\":2039}}",
                         &r),
                     200);
    json_decref(r);

    assert_int_equal(api("/v1/transactions/sale/by_customer",
                         "{\"amount\":\"3.50\",\"customer_id\":\"CUST-1\",\"invoice_id\":\"C1\"}",
                         &r),
                     200);
    assert_int_equal(ival(r, "response_code"), 101);
    assert_string_equal(sval(r, "masked_card_number"), "xxxxxxxxxxxx1111");
    json_decref(r);
    assert_int_equal(api("/v1/transactions/sale/by_customer",
                         "{\"amount\":\"3.50\",\"customer_id\":\"CUST-NSF\"}", &r),
                     200);
    assert_int_equal(ival(r, "response_code"), 102);
    json_decref(r);
    assert_int_equal(api("/v1/transactions/sale/by_customer",
                         "{\"amount\":\"3.50\",\"customer_id\":\"NOPE\"}", &r),
                     400);
    assert_contains(error_of(r, "59"), "NOPE does not exist");
    json_decref(r);

    /* ACH: ABA checksum on the routing number */
    assert_int_equal(api("/v1/checks/sale/by_account",
                         "{\"amount\":\"20.00\",\"check\":{\"account_number\":\"123456789\","
                         "\"routing_number\":\"021000021\"},\"invoice_id\":\"ACH-1\"}",
                         &r),
                     200);
    assert_int_equal(ival(r, "response_code"), 120);
    json_decref(r);
    assert_int_equal(api("/v1/checks/sale/by_account",
                         "{\"amount\":\"20.00\",\"check\":{\"account_number\":\"123456789\","
                         "\"routing_number\":\"021000022\"}}",
                         &r),
                     400);
    assert_non_null(error_of(r, "111"));
    json_decref(r);

    assert_int_equal(request("GET", "/_sandbox/transactions", 0, NULL, NULL, &all, NULL), 200);
    assert_int_equal(json_array_size(all), 3);
    rec = json_array_get(all, 0);
    assert_string_equal(sval(rec, "customer_id"), "CUST-1");
    assert_string_equal(sval(rec, "email"), "bo@example.com");
    rec = json_array_get(all, 2);
    assert_string_equal(sval(rec, "payment_method"), "ACH");
    assert_string_equal(sval(rec, "masked_card_number"), "xxxxx6789");
    json_decref(all);
    assert_int_equal(stat_of("customers"), 2);
}

static void test_export(void **unused)
{
    json_t *r, *list;
    char body[256], today[16], tomorrow[16], long_ago[16];
    char *raw = NULL;

    assert_int_equal(sale(GOOD_CARD, "10.99", "E1", &r), 200);
    json_decref(r);
    assert_int_equal(
        api("/v1/transactions/sale/keyed",
            "{\"amount\":\"2.00\",\"credit_card\":{\"number\":\"" GOOD_CARD
            "\",\"expiration_month\":\"12\",\"expiration_year\":\"2039\"},"
            "\"invoice_id\":\"E2\",\"line_items\":[{\"sku\":\"WID-1\",\"description\":"
            "\"Widget\",\"quantity\":\"2\",\"unit_price\":\"0.29\"},{\"sku\":\"GAD-9\","
            "\"quantity\":1.5,\"unit_price\":0.71}]}",
            &r),
        200);
    json_decref(r);

    us_today(today, 0);
    us_today(tomorrow, 1);
    us_today(long_ago, -400);
    snprintf(body, sizeof body, "{\"start_date\":\"%s\",\"end_date\":\"%s\"}", today, tomorrow);
    assert_int_equal(
        request("POST", "/v1/transactions/export/by_date_range", 1, NULL, body, &r, &raw), 200);
    assert_true(json_is_true(json_object_get(r, "success")));
    list = json_object_get(r, "transactions");
    assert_int_equal(json_array_size(list), 2);
    /* numbers on the wire, written from exact decimal text */
    assert_contains(raw, "\"amount\":10.99");
    assert_contains(raw, "\"quantity\":2,\"unit_price\":0.29");
    assert_contains(raw, "\"quantity\":1.5,\"unit_price\":0.71");
    assert_string_equal(
        sval(json_array_get(json_object_get(json_array_get(list, 1), "line_items"), 0),
             "description"),
        "Widget");
    free(raw);
    json_decref(r);

    snprintf(body, sizeof body,
             "{\"start_date\":\"%s\",\"end_date\":\"%s\",\"transaction_type\":\"REFUND\"}", today,
             tomorrow);
    assert_int_equal(api("/v1/transactions/export/by_date_range", body, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r, "transactions")), 0);
    json_decref(r);
    snprintf(body, sizeof body, "{\"start_date\":\"%s\",\"end_date\":\"%s\"}", long_ago, long_ago);
    assert_int_equal(api("/v1/transactions/export/by_date_range", body, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r, "transactions")), 0);
    json_decref(r);
    assert_int_equal(api("/v1/transactions/export/by_date_range",
                         "{\"start_date\":\"2026-01-01\",\"end_date\":\"13/01/2026\"}", &r),
                     400);
    assert_non_null(error_of(r, "180"));
    assert_non_null(error_of(r, "181"));
    json_decref(r);
}

static void test_drop_and_resend(void **unused)
{
    json_t *r, *w;
    long long id;
    char path[64];

    assert_int_equal(
        request("POST", "/_sandbox/settings", 0, NULL, "{\"webhook_drop_rate\":1}", &r, NULL), 200);
    json_decref(r);
    assert_int_equal(sale(GOOD_CARD, "1.00", "D1", &r), 200);
    id = ival(r, "transaction_id");
    json_decref(r);
    wait_webhooks();
    assert_int_equal(received(), 0);
    assert_int_equal(stat_of("webhooks_dropped"), 1);

    /* a resend is never dropped, and carries a fresh event_id */
    snprintf(path, sizeof path, "/_sandbox/webhook/%lld", id);
    assert_int_equal(request("POST", path, 0, NULL, "{}", &r, NULL), 202);
    json_decref(r);
    wait_webhooks();
    assert_int_equal(received(), 1);
    w = webhook(0, SECRET);
    assert_int_equal(ival(json_object_get(w, "transaction"), "transaction_id"), id);
    json_decref(w);
    assert_int_equal(request("POST", "/_sandbox/webhook/12", 0, NULL, "{}", &r, NULL), 404);
    json_decref(r);

    /* bad settings change nothing */
    assert_int_equal(
        request("POST", "/_sandbox/settings", 0, NULL, "{\"webhook_drop_rate\":2}", &r, NULL), 400);
    json_decref(r);
    assert_int_equal(request("GET", "/_sandbox/settings", 0, NULL, NULL, &r, NULL), 200);
    assert_true(json_real_value(json_object_get(r, "webhook_drop_rate")) == 1.0);
    assert_null(json_object_get(r, "webhook_secret"));
    assert_null(json_object_get(r, "password"));
    json_decref(r);
}

static void test_webhook_retry_and_secret(void **unused)
{
    json_t *r, *w;

    pthread_mutex_lock(&rx.mu);
    rx.fail_next = 2;
    pthread_mutex_unlock(&rx.mu);
    assert_int_equal(request("POST", "/_sandbox/settings", 0, NULL,
                             "{\"webhook_secret\":\"rotated\"}", &r, NULL),
                     200);
    json_decref(r);
    assert_int_equal(sale(GOOD_CARD, "1.00", "RT", &r), 200);
    json_decref(r);
    wait_webhooks();
    assert_int_equal(received(), 3);
    assert_int_equal(stat_of("webhooks_sent"), 3);
    assert_int_equal(stat_of("webhooks_acknowledged"), 1);
    assert_int_equal(stat_of("webhooks_failed"), 0);
    w = webhook(2, "rotated");
    json_decref(w);
    /* the three attempts carry the same bytes */
    assert_string_equal(webhook_text(0), webhook_text(2));
}

static void test_settlement(void **unused)
{
    json_t *r, *batch;
    char *raw = NULL;

    assert_int_equal(sale(GOOD_CARD, "10.99", "S1", &r), 200);
    json_decref(r);
    assert_int_equal(sale(DECLINE_CARD, "5.00", "S2", &r), 200);
    json_decref(r);
    assert_int_equal(request("POST", "/_sandbox/settle", 0, NULL, "{}", &r, NULL), 200);
    assert_int_equal(ival(r, "settled"), 1);
    json_decref(r);
    assert_int_equal(request("POST", "/v1/batches/export_settled", 1, NULL, "{}", &r, &raw), 200);
    batch = json_array_get(json_object_get(r, "batches"), 0);
    assert_int_equal(ival(batch, "transaction_count"), 1);
    /* 2.9% of 10.99 = 0.3187 -> 0.32, + 0.30 */
    assert_contains(raw, "\"fee\":0.62");
    assert_contains(raw, "\"fees\":0.62");
    assert_contains(raw, "\"net_amount\":10.37");
    free(raw);
    json_decref(r);
    /* a settled sale cannot be voided */
    {
        json_t *all;
        char body[64];
        assert_int_equal(request("GET", "/_sandbox/transactions", 0, NULL, NULL, &all, NULL), 200);
        snprintf(body, sizeof body, "{\"transaction_id\":%lld}",
                 ival(json_array_get(all, 0), "transaction_id"));
        json_decref(all);
        assert_int_equal(api("/v1/transactions/void", body, &r), 400);
        assert_contains(error_of(r, "815"), "settled");
        json_decref(r);
    }
}

static void test_reset(void **unused)
{
    json_t *r;
    assert_int_equal(sale(GOOD_CARD, "1.00", "X", &r), 200);
    json_decref(r);
    wait_webhooks();
    assert_int_equal(request("POST", "/_sandbox/reset", 0, NULL, "{}", &r, NULL), 200);
    json_decref(r);
    assert_int_equal(stat_of("transactions"), 0);
    assert_int_equal(stat_of("webhooks_sent"), 0);
    /* tokens are forgotten too */
    assert_int_equal(sale(GOOD_CARD, "1.00", "X", &r), 401);
    json_decref(r);
}

/* Six sales and a refund, then a settle that picks 2 missing and 2 wrong fees by count; the
 * positions (in creation order) of what was picked, and the batch's totals. */
struct settle_outcome {
    int missing[2], wrong[2];
    long long settled;
    char totals[128];
};

static int position_of(const long long ids[7], long long id)
{
    for (int i = 0; i < 7; i++)
        if (ids[i] == id)
            return i;
    return -1;
}

static void settle_by_count(struct settle_outcome *out, long long ids[7])
{
    static const char *const amounts[] = {"10.00", "20.00", "30.00", "40.00", "50.00", "60.00"};
    json_t *r, *a, *b;
    char body[128];
    for (int i = 0; i < 6; i++) {
        assert_int_equal(sale(GOOD_CARD, amounts[i], "INV", &r), 200);
        ids[i] = ival(r, "transaction_id");
        json_decref(r);
    }
    snprintf(body, sizeof body, "{\"transaction_id\":%lld,\"amount\":\"2.00\"}", ids[0]);
    assert_int_equal(api("/v1/transactions/refund/for_transaction", body, &r), 200);
    ids[6] = ival(r, "transaction_id");
    json_decref(r);
    assert_int_equal(request("POST", "/_sandbox/settle", 0, NULL,
                             "{\"date\":\"2026-11-21\",\"missing\":2,\"wrong_fee\":2,\"seed\":9}",
                             &r, NULL),
                     200);
    out->settled = ival(r, "settled");
    a = json_object_get(r, "anomalies");
    assert_int_equal(json_array_size(json_object_get(a, "missing")), 2);
    assert_int_equal(json_array_size(json_object_get(a, "wrong_fee")), 2);
    for (int i = 0; i < 2; i++) {
        out->missing[i] =
            position_of(ids, json_integer_value(json_array_get(json_object_get(a, "missing"), i)));
        out->wrong[i] = position_of(
            ids, json_integer_value(json_array_get(json_object_get(a, "wrong_fee"), i)));
        assert_true(out->missing[i] >= 0 && out->wrong[i] >= 0);
        assert_true(out->wrong[i] != 6); /* never the refund: a fee is charged on sales */
        assert_true(out->wrong[i] != out->missing[0] && out->wrong[i] != out->missing[1]);
    }
    b = json_array_get(json_object_get(r, "batches"), 0);
    snprintf(out->totals, sizeof out->totals, "%s %s %s",
             json_string_value(json_object_get(b, "gross")),
             json_string_value(json_object_get(b, "fees")),
             json_string_value(json_object_get(b, "net")));
    json_decref(r);
}

static void test_settlement_anomalies_deterministic(void **unused)
{
    struct settle_outcome one, two;
    long long ids[7], ids2[7];
    json_t *r, *rec, *batch;
    char *raw = NULL, body[160];
    int64_t sales = 0, refunds = 0, fees = 0, net = 0;

    settle_by_count(&one, ids);
    assert_int_equal(one.settled, 5); /* 7 - 2 missing */

    /* export/by_date_range: settled records carry their batch, fee and settlement date; a
     * missing one stays unsettled */
    {
        time_t now = time(NULL);
        struct tm tm;
        char us[16];
        gmtime_r(&now, &tm);
        strftime(us, sizeof us, "%m/%d/%Y", &tm);
        snprintf(body, sizeof body, "{\"start_date\":\"%s\",\"end_date\":\"%s\"}", us, us);
    }
    assert_int_equal(api("/v1/transactions/export/by_date_range", body, &r), 200);
    for (size_t i = 0; i < json_array_size(json_object_get(r, "transactions")); i++) {
        int pos;
        rec = json_array_get(json_object_get(r, "transactions"), i);
        pos = position_of(ids, ival(rec, "transaction_id"));
        if (pos == one.missing[0] || pos == one.missing[1]) {
            assert_null(json_object_get(rec, "batch_number"));
            assert_null(json_object_get(rec, "fee"));
        } else {
            assert_int_equal(ival(rec, "batch_number"), 1);
            assert_string_equal(json_string_value(json_object_get(rec, "settled_at")),
                                "2026-11-21T00:00:00Z");
            assert_non_null(json_object_get(rec, "fee"));
        }
    }
    json_decref(r);

    /* the settled export: filtered on the settlement date; totals agree with the records */
    assert_int_equal(api("/v1/batches/export_settled",
                         "{\"start_date\":\"11/22/2026\",\"end_date\":\"11/30/2026\"}", &r),
                     200);
    assert_int_equal(json_array_size(json_object_get(r, "batches")), 0);
    json_decref(r);
    assert_int_equal(request("POST", "/v1/batches/export_settled", 1, NULL,
                             "{\"start_date\":\"11/21/2026\",\"end_date\":\"11/21/2026\"}", &r,
                             &raw),
                     200);
    batch = json_array_get(json_object_get(r, "batches"), 0);
    assert_int_equal(ival(batch, "transaction_count"), 5);
    assert_string_equal(json_string_value(json_object_get(batch, "settled_at")),
                        "2026-11-21T00:00:00Z");
    free(raw);
    json_decref(r);
    /* the same through the exact-money reader: sales - refunds - fees = net */
    {
        struct pb_err err = {0};
        char *text = NULL;
        assert_int_equal(request("POST", "/v1/batches/export_settled", 1, NULL, "{}", &r, &text),
                         200);
        json_decref(r);
        r = json_loads(text, JSON_DECODE_ANY, NULL); /* numbers: read below as decimal text */
        free(text);
        batch = json_array_get(json_object_get(r, "batches"), 0);
        assert_int_equal(
            pb_json_to_minor(json_object_get(batch, "sales_amount"), "USD", &sales, &err), PB_OK);
        assert_int_equal(
            pb_json_to_minor(json_object_get(batch, "refunds_amount"), "USD", &refunds, &err),
            PB_OK);
        assert_int_equal(pb_json_to_minor(json_object_get(batch, "fees"), "USD", &fees, &err),
                         PB_OK);
        assert_int_equal(pb_json_to_minor(json_object_get(batch, "net_amount"), "USD", &net, &err),
                         PB_OK);
        assert_int_equal(sales - refunds - fees, net);
        json_decref(r);
    }

    /* the same traffic again, after a reset (new transaction ids): the same picks */
    test_setup(NULL);
    settle_by_count(&two, ids2);
    assert_int_equal(two.settled, one.settled);
    assert_memory_equal(one.missing, two.missing, sizeof one.missing);
    assert_memory_equal(one.wrong, two.wrong, sizeof one.wrong);
    assert_string_equal(one.totals, two.totals);
    (void)unused;
}

static void test_bad_settings(void **unused)
{
    struct pb_err err = {0};
    json_t *s = json_pack("{s:f}", "webhook_drop_rate", 1.5);
    assert_null(sbx_paytrace_type.create(s, &err));
    assert_contains(err.msg, "webhook_drop_rate");
    json_decref(s);
    s = json_pack("{s:s}", "currency", "usd");
    assert_null(sbx_paytrace_type.create(s, &err));
    assert_contains(err.msg, "currency");
    json_decref(s);
    s = json_pack("{s:i}", "settle_fee_rate_bp", 20000);
    assert_null(sbx_paytrace_type.create(s, &err));
    assert_contains(err.msg, "settle_fee_rate_bp");
    json_decref(s);
    s = json_pack("{s:s}", "settle_fee_fixed", "thirty cents");
    assert_null(sbx_paytrace_type.create(s, &err));
    assert_contains(err.msg, "settle_fee_fixed");
    json_decref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_token, test_setup),
        cmocka_unit_test_setup(test_sale_approved_and_webhook, test_setup),
        cmocka_unit_test_setup(test_declines, test_setup),
        cmocka_unit_test_setup(test_validation, test_setup),
        cmocka_unit_test_setup(test_refunds, test_setup),
        cmocka_unit_test_setup(test_void, test_setup),
        cmocka_unit_test_setup(test_customers_and_ach, test_setup),
        cmocka_unit_test_setup(test_export, test_setup),
        cmocka_unit_test_setup(test_drop_and_resend, test_setup),
        cmocka_unit_test_setup(test_webhook_retry_and_secret, test_setup),
        cmocka_unit_test_setup(test_settlement, test_setup),
        cmocka_unit_test_setup(test_settlement_anomalies_deterministic, test_setup),
        cmocka_unit_test_setup(test_reset, test_setup),
        cmocka_unit_test(test_bad_settings),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
