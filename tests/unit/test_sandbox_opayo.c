/*
 * tests/unit/test_sandbox_opayo.c: the Opayo Pi emulator (sandbox/opayo.c)
 * and its signed notifications (sandbox/opayo_notify.c), over real HTTP.
 *
 * The fixture starts the emulator directly (create, pb_httpd_start with its
 * routes, started), not through pb_sandbox_start, so that these tests see
 * the emulator without fault injection. A second pb_httpd on an ephemeral
 * port is the notification receiver: it records every body and its
 * X-Opayo-Signature header, and can be told to answer 500 to the next N
 * deliveries. Each test starts from POST /_sandbox/reset and an empty
 * receiver; waiting for notifications polls GET /_sandbox/stats until
 * notifications_pending is 0 (no sleeps that assume timing).
 *
 * The HMAC is recomputed with OpenSSL directly, not with core/crypto.h, so
 * that the test does not verify the emulator with its own code.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <ctype.h>
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

#include "net/httpd.h"
#include "pbtest.h"
#include "sbx.h"

/* base64("sandbox-key:sandbox-password") */
#define BASIC_AUTH "Authorization: Basic c2FuZGJveC1rZXk6c2FuZGJveC1wYXNzd29yZA=="
#define SECRET "sandbox-notify-secret"

/* ---- the notification receiver ------------------------------------------- */

static struct pbt_receiver rx;

static void receiver_clear(void)
{
    pbt_receiver_clear(&rx);
}

/* ---- fixture ------------------------------------------------------------- */

struct fixture {
    struct pbt_env env; /* the emulator */
    char hook_url[64];
};

static struct fixture fx;

static int group_setup(void **unused)
{
    if (pbt_receiver_start(&rx, "X-Opayo-Signature"))
        return -1;
    snprintf(fx.hook_url, sizeof(fx.hook_url), "%s", rx.url);
    if (pbt_env_emulator(&fx.env, &sbx_opayo_type, json_pack("{s:s}", "notify_url", fx.hook_url),
                         0))
        return -1;
    return 0;
}

static int group_teardown(void **unused)
{
    pbt_env_stop(&fx.env);
    pbt_receiver_stop(&rx);
    return 0;
}

/* ---- HTTP client --------------------------------------------------------- */

/* One request to the emulator; returns the status and the parsed JSON reply
 * (or NULL) in *out. auth is a full header line or NULL. */
static long call(const char *method, const char *path, const char *auth, const char *body,
                 json_t **out)
{
    const char *headers[] = {"Content-Type: application/json", auth, NULL};
    return pbt_call(fx.env.port, method, path, headers, body, out);
}
static const char *sget(json_t *o, const char *path)
{
    /* dotted path lookup of a string, e.g. "paymentMethod.card.lastFourDigits" */
    char key[64];
    const char *dot;
    while ((dot = strchr(path, '.'))) {
        snprintf(key, sizeof(key), "%.*s", (int)(dot - path), path);
        o = json_object_get(o, key);
        path = dot + 1;
    }
    return json_string_value(json_object_get(o, path));
}

/* ---- Pi helpers ---------------------------------------------------------- */

/* merchant session key -> card identifier for `number`; returns the two in msk/cid. */
static void tokenise(const char *number, char msk[64], char cid[64])
{
    json_t *r;
    char bearer[128], body[256];

    assert_int_equal(call("POST", "/api/v1/merchant-session-keys", BASIC_AUTH,
                          "{\"vendorName\":\"sandbox\"}", &r),
                     201);
    snprintf(msk, 64, "%s", sget(r, "merchantSessionKey"));
    assert_int_equal(strlen(msk), 36);
    assert_non_null(sget(r, "expiry"));
    json_decref(r);

    snprintf(bearer, sizeof(bearer), "Authorization: Bearer %s", msk);
    snprintf(body, sizeof(body),
             "{\"cardDetails\":{\"cardholderName\":\"SAM JONES\",\"cardNumber\":\"%s\","
             "\"expiryDate\":\"1239\",\"securityCode\":\"123\"}}",
             number);
    assert_int_equal(call("POST", "/api/v1/card-identifiers", bearer, body, &r), 201);
    snprintf(cid, 64, "%s", sget(r, "cardIdentifier"));
    assert_non_null(sget(r, "cardType"));
    json_decref(r);
}

/* A Payment (or Deferred) with the test card `number`; returns the status code and reply. */
static long pay(const char *type, const char *number, const char *vtc, long amount,
                const char *address1, const char *postcode, const char *email, json_t **out)
{
    char msk[64], cid[64], body[1024];
    tokenise(number, msk, cid);
    snprintf(body, sizeof(body),
             "{\"transactionType\":\"%s\",\"paymentMethod\":{\"card\":{\"merchantSessionKey\":"
             "\"%s\",\"cardIdentifier\":\"%s\"}},\"vendorTxCode\":\"%s\",\"amount\":%ld,"
             "\"currency\":\"GBP\",\"description\":\"Demo\",\"customerFirstName\":\"Sam\","
             "\"customerLastName\":\"Jones\",\"customerEmail\":\"%s\",\"billingAddress\":{"
             "\"address1\":\"%s\",\"city\":\"London\",\"postalCode\":\"%s\",\"country\":\"GB\"},"
             "\"entryMethod\":\"Ecommerce\",\"apply3DSecure\":\"UseMSPSetting\"}",
             type, msk, cid, vtc, amount, email, address1, postcode);
    return call("POST", "/api/v1/transactions", BASIC_AUTH, body, out);
}

static long refund(const char *ref, const char *vtc, long amount, json_t **out)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"transactionType\":\"Refund\",\"referenceTransactionId\":\"%s\","
             "\"vendorTxCode\":\"%s\",\"amount\":%ld,\"description\":\"Refund\"}",
             ref, vtc, amount);
    return call("POST", "/api/v1/transactions", BASIC_AUTH, body, out);
}

static json_t *stats(void)
{
    json_t *s;
    assert_int_equal(call("GET", "/_sandbox/stats", NULL, NULL, &s), 200);
    return s;
}

static long stat_of(const char *key)
{
    json_t *s = stats();
    long v = (long)json_integer_value(json_object_get(s, key));
    json_decref(s);
    return v;
}

/* Poll until the notifier has nothing pending (at most 15 s). */
static void wait_notifications(void)
{
    pbt_wait_stat_zero(fx.env.port, "notifications_pending", 15, "notifications");
}
static int test_setup(void **unused)
{
    json_t *r;
    char settings[256];
    assert_int_equal(call("POST", "/_sandbox/reset", NULL, "{}", &r), 200);
    json_decref(r);
    snprintf(settings, sizeof(settings),
             "{\"notify_url\":\"%s\",\"notify_secret\":\"" SECRET "\","
             "\"notify_duplicate_rate\":0,\"notify_delay_ms\":0,\"avs_rule\":true}",
             fx.hook_url);
    assert_int_equal(call("POST", "/_sandbox/settings", NULL, settings, &r), 200);
    json_decref(r);
    receiver_clear();
    return 0;
}

static int is_upper_guid(const char *s)
{
    if (!s || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'A' && s[i] <= 'F')) {
            return 0;
        }
    }
    return 1;
}

static int all_digits(const char *s, size_t len)
{
    if (!s || strlen(s) != len)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

/* ---- tests --------------------------------------------------------------- */

static void test_payment_ok(void **unused)
{
    json_t *r, *all;
    char *dump;

    assert_int_equal(
        pay("Payment", "4929000000006", "order-1", 1000, "88", "412", "sam@example.com", &r), 201);
    assert_string_equal(sget(r, "status"), "Ok");
    assert_true(json_is_string(json_object_get(r, "statusCode")));
    assert_string_equal(sget(r, "statusCode"), "0000");
    assert_string_equal(sget(r, "statusDetail"), "The Authorisation was Successful.");
    assert_string_equal(sget(r, "bankResponseCode"), "00");
    assert_true(all_digits(sget(r, "bankAuthorisationCode"), 6));
    assert_non_null(sget(r, "retrievalReference"));
    assert_true(is_upper_guid(sget(r, "transactionId")));
    assert_string_equal(sget(r, "transactionType"), "Payment");
    assert_string_equal(sget(r, "paymentMethod.card.cardType"), "Visa");
    assert_string_equal(sget(r, "paymentMethod.card.lastFourDigits"), "0006");
    assert_string_equal(sget(r, "paymentMethod.card.expiryDate"), "1239");
    assert_true(json_is_false(
        json_object_get(json_object_get(json_object_get(r, "paymentMethod"), "card"), "reusable")));
    assert_string_equal(sget(r, "3DSecure.status"), "Authenticated");
    assert_string_equal(sget(r, "avsCvcCheck.status"), "AllMatched");
    json_decref(r);

    /* the card number is nowhere in what the emulator kept */
    assert_int_equal(call("GET", "/_sandbox/transactions", NULL, NULL, &all), 200);
    assert_int_equal(json_array_size(all), 1);
    dump = json_dumps(all, 0);
    assert_null(strstr(dump, "4929000000006"));
    free(dump);
    json_decref(all);
}

static void test_declined_card(void **unused)
{
    json_t *r;
    assert_int_equal(pay("Payment", "4929602110085639", "order-declined", 1000, "88", "412",
                         "sam@example.com", &r),
                     201);
    assert_string_equal(sget(r, "status"), "NotAuthed");
    assert_string_equal(sget(r, "statusCode"), "2000");
    assert_string_equal(sget(r, "statusDetail"), "The Authorisation was Declined by the bank.");
    assert_string_equal(sget(r, "bankResponseCode"), "05");
    assert_null(sget(r, "bankAuthorisationCode"));
    json_decref(r);
}

static void test_avs_rule(void **unused)
{
    json_t *r;
    assert_int_equal(pay("Payment", "5404000000000001", "order-avs", 1000, "407 St. John Street",
                         "EC1V 4AB", "sam@example.com", &r),
                     201);
    assert_string_equal(sget(r, "status"), "Rejected");
    assert_string_equal(sget(r, "statusCode"), "2001");
    assert_string_equal(sget(r, "statusDetail"),
                        "The Authorisation was Rejected by the vendor rule-base.");
    assert_string_equal(sget(r, "avsCvcCheck.address"), "NotMatched");
    json_decref(r);

    /* avs_rule false: the same address is authorised */
    assert_int_equal(call("POST", "/_sandbox/settings", NULL, "{\"avs_rule\":false}", &r), 200);
    json_decref(r);
    assert_int_equal(pay("Payment", "5404000000000001", "order-avs-off", 1000,
                         "407 St. John Street", "EC1V 4AB", "sam@example.com", &r),
                     201);
    assert_string_equal(sget(r, "status"), "Ok");
    json_decref(r);
}

static void test_get_transaction(void **unused)
{
    json_t *r;
    char path[128], id[64];

    assert_int_equal(pay("Payment", "4929000000006", "order-get", 1234, "88 High St", "412",
                         "risky+fraud@example.com", &r),
                     201);
    snprintf(id, sizeof(id), "%s", sget(r, "transactionId"));
    json_decref(r);
    snprintf(path, sizeof(path), "/api/v1/transactions/%s", id);
    assert_int_equal(call("GET", path, BASIC_AUTH, NULL, &r), 200);
    assert_string_equal(sget(r, "transactionId"), id);
    assert_string_equal(sget(r, "vendorTxCode"), "order-get");
    assert_string_equal(sget(r, "currency"), "GBP");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(r, "amount"), "totalAmount")), 1234);
    assert_int_equal(json_integer_value(json_object_get(r, "fraudScore")), 95);
    assert_string_equal(sget(r, "billingAddress.postalCode"), "412");
    assert_string_equal(sget(r, "customerLastName"), "Jones");
    assert_non_null(sget(r, "createdAt"));
    json_decref(r);

    assert_int_equal(call("GET", "/api/v1/transactions/00000000-0000-0000-0000-000000000000",
                          BASIC_AUTH, NULL, &r),
                     404);
    assert_int_equal(json_integer_value(json_object_get(r, "code")), 1012);
    json_decref(r);
}

static void test_refunds(void **unused)
{
    json_t *r, *e;
    char id[64];

    assert_int_equal(
        pay("Payment", "4929000000006", "order-refund", 1000, "88", "412", "sam@example.com", &r),
        201);
    snprintf(id, sizeof(id), "%s", sget(r, "transactionId"));
    json_decref(r);

    assert_int_equal(refund(id, "refund-1", 600, &r), 201);
    assert_string_equal(sget(r, "status"), "Ok");
    assert_string_equal(sget(r, "statusCode"), "0000");
    assert_string_equal(sget(r, "transactionType"), "Refund");
    json_decref(r);

    assert_int_equal(refund(id, "refund-2", 500, &r), 422);
    e = json_array_get(json_object_get(r, "errors"), 0);
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 1018);
    assert_string_equal(json_string_value(json_object_get(e, "property")), "amount");
    assert_non_null(json_string_value(json_object_get(e, "clientMessage")));
    json_decref(r);

    assert_int_equal(refund(id, "refund-3", 400, &r), 201); /* exactly the rest */
    json_decref(r);
    assert_int_equal(refund(id, "refund-4", 1, &r), 422);
    json_decref(r);
}

static void test_duplicate_vendor_tx_code(void **unused)
{
    json_t *r, *e;
    assert_int_equal(
        pay("Payment", "4929000000006", "order-dup", 1000, "88", "412", "sam@example.com", &r),
        201);
    json_decref(r);
    assert_int_equal(
        pay("Payment", "4929000000006", "order-dup", 1000, "88", "412", "sam@example.com", &r),
        422);
    e = json_array_get(json_object_get(r, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "property")), "vendorTxCode");
    json_decref(r);
}

static void test_validation(void **unused)
{
    json_t *r, *e;
    char bearer[128];

    /* a number that fails Luhn */
    assert_int_equal(call("POST", "/api/v1/merchant-session-keys", BASIC_AUTH,
                          "{\"vendorName\":\"sandbox\"}", &r),
                     201);
    snprintf(bearer, sizeof(bearer), "Authorization: Bearer %s", sget(r, "merchantSessionKey"));
    json_decref(r);
    assert_int_equal(call("POST", "/api/v1/card-identifiers", bearer,
                          "{\"cardDetails\":{\"cardholderName\":\"A\",\"cardNumber\":"
                          "\"4929000000007\",\"expiryDate\":\"1239\"}}",
                          &r),
                     422);
    e = json_array_get(json_object_get(r, "errors"), 0);
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 1007);
    json_decref(r);

    /* a card identifier pays for one transaction only */
    {
        char msk[64], cid[64], body[1024];
        tokenise("4929000000006", msk, cid);
        snprintf(body, sizeof(body),
                 "{\"transactionType\":\"Payment\",\"paymentMethod\":{\"card\":{"
                 "\"merchantSessionKey\":\"%s\",\"cardIdentifier\":\"%s\"}},"
                 "\"vendorTxCode\":\"%s\",\"amount\":100,\"currency\":\"GBP\","
                 "\"description\":\"d\",\"customerFirstName\":\"S\",\"customerLastName\":"
                 "\"J\",\"billingAddress\":{\"address1\":\"88\",\"city\":\"L\","
                 "\"postalCode\":\"412\",\"country\":\"GB\"}}",
                 msk, cid, "order-once");
        assert_int_equal(call("POST", "/api/v1/transactions", BASIC_AUTH, body, &r), 201);
        json_decref(r);
        snprintf(body, sizeof(body),
                 "{\"transactionType\":\"Payment\",\"paymentMethod\":{\"card\":{"
                 "\"merchantSessionKey\":\"%s\",\"cardIdentifier\":\"%s\"}},"
                 "\"vendorTxCode\":\"%s\",\"amount\":100,\"currency\":\"GBP\","
                 "\"description\":\"d\",\"customerFirstName\":\"S\",\"customerLastName\":"
                 "\"J\",\"billingAddress\":{\"address1\":\"88\",\"city\":\"L\","
                 "\"postalCode\":\"412\",\"country\":\"GB\"}}",
                 msk, cid, "order-twice-card");
        assert_int_equal(call("POST", "/api/v1/transactions", BASIC_AUTH, body, &r), 422);
        e = json_array_get(json_object_get(r, "errors"), 0);
        assert_int_equal(json_integer_value(json_object_get(e, "code")), 1011);
        json_decref(r);
    }

    /* malformed JSON */
    assert_int_equal(call("POST", "/api/v1/transactions", BASIC_AUTH, "{not json", &r), 400);
    assert_int_equal(json_integer_value(json_object_get(r, "code")), 1000);
    json_decref(r);

    /* a float amount, an unknown currency and a bad vendorTxCode, all reported */
    assert_int_equal(call("POST", "/api/v1/transactions", BASIC_AUTH,
                          "{\"transactionType\":\"Repeat\",\"referenceTransactionId\":\"x\","
                          "\"vendorTxCode\":\"bad code!\",\"amount\":10.5,\"currency\":\"XXY\","
                          "\"description\":\"d\"}",
                          &r),
                     422);
    assert_true(json_array_size(json_object_get(r, "errors")) >= 3);
    json_decref(r);
}

static void test_bad_auth(void **unused)
{
    json_t *r;
    assert_int_equal(call("POST", "/api/v1/merchant-session-keys",
                          "Authorization: Basic c2FuZGJveC1rZXk6d3Jvbmc=", /* sandbox-key:wrong */
                          "{\"vendorName\":\"sandbox\"}", &r),
                     401);
    assert_int_equal(json_integer_value(json_object_get(r, "code")), 1002);
    json_decref(r);
    assert_int_equal(call("POST", "/api/v1/transactions", NULL, "{}", &r), 401);
    assert_int_equal(json_integer_value(json_object_get(r, "code")), 1001);
    json_decref(r);
    assert_int_equal(call("POST", "/api/v1/card-identifiers",
                          "Authorization: Bearer 00000000-0000-0000-0000-000000000000", "{}", &r),
                     401);
    json_decref(r);
}

static void test_instructions(void **unused)
{
    json_t *r;
    char id[64], path[160];

    /* void a payment of today */
    assert_int_equal(
        pay("Payment", "4929000000006", "order-void", 1000, "88", "412", "sam@example.com", &r),
        201);
    snprintf(path, sizeof(path), "/api/v1/transactions/%s/instructions", sget(r, "transactionId"));
    json_decref(r);
    assert_int_equal(call("POST", path, BASIC_AUTH, "{\"instructionType\":\"void\"}", &r), 201);
    assert_string_equal(sget(r, "instructionType"), "void");
    assert_non_null(sget(r, "date"));
    json_decref(r);
    assert_int_equal(call("POST", path, BASIC_AUTH, "{\"instructionType\":\"void\"}", &r), 403);
    json_decref(r);

    /* deferred: refund refused until released, release above the amount refused */
    assert_int_equal(pay("Deferred", "4929000000006", "order-deferred", 1000, "88", "412",
                         "sam@example.com", &r),
                     201);
    snprintf(id, sizeof(id), "%s", sget(r, "transactionId"));
    json_decref(r);
    assert_int_equal(refund(id, "refund-deferred-1", 100, &r), 422);
    json_decref(r);
    snprintf(path, sizeof(path), "/api/v1/transactions/%s/instructions", id);
    assert_int_equal(
        call("POST", path, BASIC_AUTH, "{\"instructionType\":\"release\",\"amount\":1001}", &r),
        403);
    json_decref(r);
    assert_int_equal(
        call("POST", path, BASIC_AUTH, "{\"instructionType\":\"release\",\"amount\":800}", &r),
        201);
    json_decref(r);
    assert_int_equal(refund(id, "refund-deferred-2", 801, &r), 422);
    json_decref(r);
    assert_int_equal(refund(id, "refund-deferred-3", 800, &r), 201);
    json_decref(r);
}

/* Recompute the HMAC of delivery i with OpenSSL and compare with its header. */
static void assert_signed_with(int i, const char *secret)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];

    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)rx.body[i], rx.len[i],
         mac, &mac_len);
    assert_int_equal(mac_len, 32);
    for (unsigned j = 0; j < mac_len; j++)
        snprintf(hex + 2 * j, 3, "%02x", mac[j]);
    assert_string_equal(rx.signature[i], hex);
}

static void assert_signed(int i)
{
    assert_signed_with(i, SECRET);
}

static void test_notification_signed(void **unused)
{
    json_t *r, *n;
    char id[64];

    assert_int_equal(
        pay("Payment", "4929000000006", "order-notify", 2500, "88", "412", "sam@example.com", &r),
        201);
    snprintf(id, sizeof(id), "%s", sget(r, "transactionId"));
    json_decref(r);
    wait_notifications();

    pthread_mutex_lock(&rx.mu);
    assert_int_equal(rx.n, 1);
    assert_signed(0);
    n = json_loads(rx.body[0], 0, NULL);
    pthread_mutex_unlock(&rx.mu);
    assert_non_null(n);
    assert_true(is_upper_guid(sget(n, "notificationId")));
    assert_string_equal(sget(n, "eventType"), "transaction.completed");
    assert_string_equal(sget(n, "vendorName"), "sandbox");
    assert_int_equal(strlen(sget(n, "createdAt")), 20); /* 2024-05-01T10:00:00Z */
    assert_string_equal(sget(n, "transaction.transactionId"), id);
    assert_string_equal(sget(n, "transaction.vendorTxCode"), "order-notify");
    assert_string_equal(sget(n, "transaction.status"), "Ok");
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(n, "transaction"), "amount"), "totalAmount")),
        2500);
    json_decref(n);
    assert_int_equal(stat_of("notifications_acknowledged"), 1);

    /* a tampered body would not verify: the signature covers the exact bytes */
    pthread_mutex_lock(&rx.mu);
    rx.body[0][10] ^= 1;
    unsigned char mac[32];
    unsigned int mac_len = 0;
    char hex[65];
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)rx.body[0], rx.len[0],
         mac, &mac_len);
    for (unsigned j = 0; j < mac_len; j++)
        snprintf(hex + 2 * j, 3, "%02x", mac[j]);
    assert_string_not_equal(rx.signature[0], hex);
    pthread_mutex_unlock(&rx.mu);
}

static void test_notification_retry(void **unused)
{
    json_t *r;

    pthread_mutex_lock(&rx.mu);
    rx.fail_next = 1; /* 500 first, then 200 */
    pthread_mutex_unlock(&rx.mu);
    assert_int_equal(
        pay("Payment", "4929602110085639", "order-retry", 700, "88", "412", "sam@example.com", &r),
        201);
    json_decref(r);
    wait_notifications();

    pthread_mutex_lock(&rx.mu);
    assert_int_equal(rx.n, 2);
    assert_int_equal(rx.answered[0], 500);
    assert_int_equal(rx.answered[1], 200);
    assert_int_equal(rx.len[0], rx.len[1]);
    assert_memory_equal(rx.body[0], rx.body[1], rx.len[0]); /* same notification, same bytes */
    assert_signed(1);
    pthread_mutex_unlock(&rx.mu);
    assert_int_equal(stat_of("notifications_sent"), 2);
    assert_int_equal(stat_of("notifications_acknowledged"), 1);
    assert_int_equal(stat_of("notifications_failed"), 0);
}

static void test_notification_resend(void **unused)
{
    json_t *r, *a, *b;
    char path[128];

    assert_int_equal(
        pay("Payment", "4929000000006", "order-resend", 100, "88", "412", "sam@example.com", &r),
        201);
    snprintf(path, sizeof(path), "/_sandbox/notify/%s", sget(r, "transactionId"));
    json_decref(r);
    wait_notifications();
    assert_int_equal(call("POST", path, NULL, "", &r), 202);
    json_decref(r);
    wait_notifications();

    pthread_mutex_lock(&rx.mu);
    assert_int_equal(rx.n, 2);
    a = json_loads(rx.body[0], 0, NULL);
    b = json_loads(rx.body[1], 0, NULL);
    assert_signed(1);
    pthread_mutex_unlock(&rx.mu);
    assert_string_equal(sget(a, "notificationId"), sget(b, "notificationId"));
    json_decref(a);
    json_decref(b);

    assert_int_equal(call("POST", "/_sandbox/notify/NOPE", NULL, "", &r), 404);
    json_decref(r);
}

static void test_notification_duplicates_and_secret(void **unused)
{
    json_t *r, *a, *b;

    assert_int_equal(call("POST", "/_sandbox/settings", NULL,
                          "{\"notify_duplicate_rate\":1.0,\"notify_delay_ms\":50}", &r),
                     200);
    json_decref(r);
    assert_int_equal(
        pay("Payment", "4929000000006", "order-twice", 100, "88", "412", "sam@example.com", &r),
        201);
    json_decref(r);
    wait_notifications();
    pthread_mutex_lock(&rx.mu);
    assert_int_equal(rx.n, 2);
    a = json_loads(rx.body[0], 0, NULL);
    b = json_loads(rx.body[1], 0, NULL);
    pthread_mutex_unlock(&rx.mu);
    assert_string_equal(sget(a, "notificationId"), sget(b, "notificationId"));
    json_decref(a);
    json_decref(b);

    /* a rotated secret signs the next notification */
    assert_int_equal(call("POST", "/_sandbox/settings", NULL,
                          "{\"notify_secret\":\"rotated\",\"notify_duplicate_rate\":0}", &r),
                     200);
    json_decref(r);
    assert_int_equal(
        pay("Payment", "4929000000006", "order-rotated", 100, "88", "412", "sam@example.com", &r),
        201);
    json_decref(r);
    wait_notifications();
    pthread_mutex_lock(&rx.mu);
    assert_int_equal(rx.n, 3);
    assert_signed_with(2, "rotated");
    pthread_mutex_unlock(&rx.mu);

    /* a bad setting is refused and changes nothing */
    assert_int_equal(call("POST", "/_sandbox/settings", NULL,
                          "{\"notify_duplicate_rate\":2,\"notify_delay_ms\":0}", &r),
                     400);
    json_decref(r);
    assert_int_equal(call("GET", "/_sandbox/settings", NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "notify_delay_ms")), 50);
    assert_null(json_object_get(r, "notify_secret"));
    json_decref(r);
}

static void test_repeat(void **unused)
{
    json_t *r;
    char body[512], id[64];

    assert_int_equal(
        pay("Payment", "5404000000000001", "order-base", 1000, "88", "412", "sam@example.com", &r),
        201);
    snprintf(id, sizeof(id), "%s", sget(r, "transactionId"));
    json_decref(r);
    snprintf(body, sizeof(body),
             "{\"transactionType\":\"Repeat\",\"referenceTransactionId\":\"%s\","
             "\"vendorTxCode\":\"order-repeat\",\"amount\":1500,\"currency\":\"GBP\","
             "\"description\":\"again\"}",
             id);
    assert_int_equal(call("POST", "/api/v1/transactions", BASIC_AUTH, body, &r), 201);
    assert_string_equal(sget(r, "status"), "Ok");
    assert_string_equal(sget(r, "paymentMethod.card.lastFourDigits"), "0001");
    json_decref(r);
}

/* Destroy returns promptly with a delivery retrying against a dead port. */
static void test_destroy_prompt(void **unused)
{
    struct pb_err err = {0};
    json_t *settings =
        json_pack("{s:s,s:i}", "notify_url", "http://127.0.0.1:1/hook", "notify_max_attempts", 50);
    void *st = sbx_opayo_type.create(settings, &err);
    struct pb_httpd *h;
    struct pb_httpd_config cfg = {0};
    int saved;
    json_t *r;
    struct timespec t0, t1;

    json_decref(settings);
    assert_non_null(st);
    cfg.routes = sbx_opayo_type.routes(st);
    assert_int_equal(pb_httpd_start(&cfg, &h, &err), 0);
    saved = fx.env.port; /* call() talks to this emulator for a while */
    fx.env.port = pb_httpd_port(h);
    assert_int_equal(
        pay("Payment", "4929000000006", "order-dead", 100, "88", "412", "sam@example.com", &r),
        201);
    json_decref(r);
    usleep(300000); /* let it fail and back off at least once */
    assert_true(stat_of("notifications_pending") >= 1);
    fx.env.port = saved;
    pb_httpd_stop(h);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sbx_opayo_type.destroy(st);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 1000);
}

static void test_bad_settings(void **unused)
{
    struct pb_err err = {0};
    json_t *settings = json_pack("{s:s}", "notify_url", "ftp://example.com/");
    assert_null(sbx_opayo_type.create(settings, &err));
    assert_true(strstr(err.msg, "notify_url") != NULL);
    json_decref(settings);
    settings = json_pack("{s:i}", "integration_key", 5);
    assert_null(sbx_opayo_type.create(settings, &err));
    json_decref(settings);
}

/* Settlement through the emulator's own routes and store (sandbox/opayo_report.c fed by the Pi
 * store): fees 1.5% + 0.20 per sale, the refund netted, an unreleased Deferred not settled, a
 * wrong fee seeded by count, every transaction settled once. */
static void test_settle_from_pi_store(void **unused)
{
    json_t *r, *batch, *lines, *wrong;
    char id1[64], wrong_id[64];
    int64_t fees = 0, over = 0;
    size_t i;
    json_t *l;

    assert_int_equal(
        pay("Payment", "4929000000006", "settle-1", 1000, "88", "412", "sam@example.com", &r), 201);
    snprintf(id1, sizeof(id1), "%s", sget(r, "transactionId"));
    json_decref(r);
    assert_int_equal(
        pay("Payment", "4929000000006", "settle-2", 2000, "88", "412", "sam@example.com", &r), 201);
    json_decref(r);
    assert_int_equal(
        pay("Payment", "4929000000006", "settle-3", 500, "88", "412", "sam@example.com", &r), 201);
    json_decref(r);
    assert_int_equal(
        pay("Deferred", "4929000000006", "settle-4", 700, "88", "412", "sam@example.com", &r), 201);
    json_decref(r);
    assert_int_equal(refund(id1, "settle-refund", 600, &r), 201);
    json_decref(r);

    assert_int_equal(call("POST", "/_sandbox/settle", NULL,
                          "{\"date\":\"2026-11-21\",\"wrong_fee\":1,\"seed\":3}", &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r, "settled")), 4);
    batch = json_array_get(json_object_get(r, "batches"), 0);
    assert_string_equal(sget(batch, "currency"), "GBP");
    assert_string_equal(sget(batch, "gross"), "29.00"); /* 10 + 20 + 5 - 6 */
    /* 35 + 50 + 28 by contract, and 0.10 more on the one wrong fee */
    assert_string_equal(sget(batch, "fees"), "1.23");
    assert_string_equal(sget(batch, "net"), "27.77");
    wrong = json_object_get(json_object_get(r, "anomalies"), "wrong_fee");
    assert_int_equal(json_array_size(wrong), 1);
    snprintf(wrong_id, sizeof(wrong_id), "%s", json_string_value(json_array_get(wrong, 0)));
    json_decref(r);

    assert_int_equal(call("GET", "/_sandbox/settlements", NULL, NULL, &r), 200);
    lines = json_object_get(json_array_get(r, 0), "lines");
    assert_int_equal(json_array_size(lines), 4); /* not the unreleased Deferred */
    json_array_foreach(lines, i, l)
    {
        const char *type = sget(l, "type");
        int64_t amount = json_integer_value(json_object_get(l, "amount"));
        int64_t fee = json_integer_value(json_object_get(l, "fee"));
        int64_t contract = strcmp(type, "Refund") == 0 ? 0 : (amount * 150 + 5000) / 10000 + 20;
        assert_string_not_equal(type, "Deferred");
        fees += fee;
        if (fee != contract) {
            assert_int_equal(fee - contract, 10);
            assert_string_equal(sget(l, "transactionId"), wrong_id);
            over++;
        }
    }
    assert_int_equal(fees, 123);
    assert_int_equal(over, 1);
    json_decref(r);

    /* settled once: a second settle finds nothing new */
    assert_int_equal(call("POST", "/_sandbox/settle", NULL, "{\"date\":\"2026-11-22\"}", &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "settled")), 0);
    json_decref(r);
    (void)unused;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_payment_ok, test_setup),
        cmocka_unit_test_setup(test_declined_card, test_setup),
        cmocka_unit_test_setup(test_avs_rule, test_setup),
        cmocka_unit_test_setup(test_get_transaction, test_setup),
        cmocka_unit_test_setup(test_refunds, test_setup),
        cmocka_unit_test_setup(test_duplicate_vendor_tx_code, test_setup),
        cmocka_unit_test_setup(test_validation, test_setup),
        cmocka_unit_test_setup(test_bad_auth, test_setup),
        cmocka_unit_test_setup(test_instructions, test_setup),
        cmocka_unit_test_setup(test_repeat, test_setup),
        cmocka_unit_test_setup(test_notification_signed, test_setup),
        cmocka_unit_test_setup(test_notification_retry, test_setup),
        cmocka_unit_test_setup(test_notification_resend, test_setup),
        cmocka_unit_test_setup(test_notification_duplicates_and_secret, test_setup),
        cmocka_unit_test_setup(test_settle_from_pi_store, test_setup),
        cmocka_unit_test(test_destroy_prompt),
        cmocka_unit_test(test_bad_settings),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
