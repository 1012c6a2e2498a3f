/*
 * tests/unit/test_connector_opayo.c: the Opayo source connector
 * (src/connectors/opayo/): settings, the signed notification turned into one
 * canonical event, every rejection with its rc and a message naming the
 * problem, and confirm() against the sandbox's Opayo Pi emulator.
 *
 * Offline tests build a notification from a fixture (the canonical model's
 * example payment), serialise it, sign it with OpenSSL directly (not with
 * core/crypto.h, so the connector is not checked against its own code) and
 * call inbound() with an injected clock.
 *
 * The sandbox tests start the emulator with pb_sandbox_start (port 0, only
 * "opayo") and a notification receiver on an ephemeral port, create a real
 * transaction through the Pi API (merchant session key, card identifier,
 * transaction) with libcurl, feed the notification the emulator actually sent
 * to inbound(), then confirm the event (ok), a tampered copy (permanent), an
 * unknown transaction (permanent) and an emulator answering 500 (transient).
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
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "connectors/connector.h"
#include "core/json.h"
#include "core/pan.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "pbtest.h"
#include "sandbox.h"

extern const struct pb_connector_type pb_connector_opayo;

#define SECRET "test-notify-secret"
#define CREATED "2026-11-21T19:14:10Z"
#define TX_ID "DB79BA2D-05DA-5B85-D188-1293D16BBAC7"

/* ---- helpers ------------------------------------------------------------------------- */

static time_t t_created(void)
{
    struct tm tm = {.tm_year = 2026 - 1900, .tm_mon = 10, .tm_mday = 21, .tm_hour = 19,
                    .tm_min = 14, .tm_sec = 10};
    return timegm(&tm);
}

struct headers {
    const char *signature;          /* NULL = header absent */
};

static const char *get_header(void *ctx, const char *name)
{
    struct headers *h = ctx;
    return strcasecmp(name, "X-Opayo-Signature") == 0 ? h->signature : NULL;
}

static struct pb_connection *connection_new(json_t *settings, json_t *secrets,
                                            struct pb_err *err, enum pb_rc *rc_out)
{
    return pbt_connection_try(&pb_connector_opayo, "opayo-test", settings, NULL, secrets, err,
                              rc_out);
}
/* A connection for offline tests: confirm off. */
static struct pb_connection *offline(void)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c =
        connection_new(json_pack("{s:b,s:s}", "confirm", 0, "vendor_name", "sandbox"),
                       json_pack("{s:s}", "notify_secret", SECRET), &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

/* The canonical model's example payment as an Opayo notification. */
static json_t *fixture(void)
{
    return json_pack(
        "{s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:{s:I,s:I,s:I},s:s,"
        "s:{s:{s:s,s:s,s:s}},s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s},s:i,s:s}}",
        "notificationId", "5A1B0E0C-1111-4222-8333-944455556666", "eventType",
        "transaction.completed", "createdAt", CREATED, "vendorName", "sandbox", "transaction",
        "transactionId", TX_ID, "transactionType", "Payment", "status", "Ok", "statusCode",
        "0000", "statusDetail", "The Authorisation was Successful.", "retrievalReference",
        "9493946", "bankResponseCode", "00", "bankAuthorisationCode", "999777", "amount",
        "totalAmount", (json_int_t)1099, "saleAmount", (json_int_t)1099, "surchargeAmount",
        (json_int_t)0, "currency", "GBP", "paymentMethod", "card", "cardType", "Visa",
        "lastFourDigits", "0006", "expiryDate", "1229", "vendorTxCode", "ORDER-10023",
        "description", "Order 10023", "customerFirstName", "Ann", "customerLastName", "Smith",
        "customerEmail", "ann@example.com", "billingAddress", "address1", "88 High St", "city",
        "London", "postalCode", "412", "country", "GB", "fraudScore", 5, "createdAt", CREATED);
}

static json_t *tx_of(json_t *n) { return json_object_get(n, "transaction"); }

/* inbound() on raw text; sign = 1 signs it with SECRET, 0 sends `signature` as given. */
static enum pb_rc inbound_text(struct pb_connection *c, const char *body, int sign,
                               const char *signature, time_t now, struct pb_event_list *out,
                               struct pb_err *err)
{
    char sig[65];
    struct headers h = {signature};
    struct pb_inbound_request req = {0};
    if (sign) {
        pbt_hmac_hex(SECRET, body, strlen(body), sig);
        h.signature = sig;
    }
    req.body = body;
    req.body_len = strlen(body);
    req.content_type = "application/json";
    req.header = get_header;
    req.header_ctx = &h;
    req.now = now;
    return c->type->inbound(c, &req, out, err);
}

/* Serialise `n` (taken), sign it and run inbound() at created + 10 s. */
static enum pb_rc inbound_json(struct pb_connection *c, json_t *n, struct pb_event_list *out,
                               struct pb_err *err)
{
    char *body = json_dumps(n, JSON_COMPACT);
    enum pb_rc rc = inbound_text(c, body, 1, NULL, t_created() + 10, out, err);
    free(body);
    json_decref(n);
    return rc;
}

/* Expect inbound() of `n` to fail with `rc` and a message containing `needle`. */
static void expect_reject(json_t *n, enum pb_rc rc, const char *needle)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    assert_int_equal(inbound_json(c, n, &out, &err), rc);
    assert_int_equal(out.n, 0);
    assert_contains(err.msg, needle);
    pbt_connection_free(c);
}

/* ---- settings -------------------------------------------------------------------------- */

static void test_init_settings(void **state)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    struct pb_connection *c;

    c = connection_new(json_pack("{s:b}", "confirm", 0), json_object(), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "secrets.notify_secret");
    pbt_connection_free(c);

    c = connection_new(json_object(), json_pack("{s:s}", "notify_secret", "x"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.api_base");
    pbt_connection_free(c);

    c = connection_new(json_pack("{s:s}", "api_base", "http://127.0.0.1:1/api/v1"),
                       json_pack("{s:s}", "notify_secret", "x"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "secrets.integration_key");
    pbt_connection_free(c);

    c = connection_new(json_pack("{s:b,s:b}", "confirm", 0, "confrim", 0),
                       json_pack("{s:s}", "notify_secret", "x"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.confrim");
    pbt_connection_free(c);

    c = connection_new(json_pack("{s:b,s:i}", "confirm", 0, "signature_window_s", 0),
                       json_pack("{s:s}", "notify_secret", "x"), &err, &rc);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.signature_window_s");
    pbt_connection_free(c);

    c = connection_new(json_pack("{s:s}", "api_base", "http://127.0.0.1:1/api/v1/"),
                       json_pack("{s:s,s:s,s:s}", "notify_secret", "x", "integration_key", "k",
                                 "integration_password", "p"),
                       &err, &rc);
    assert_int_equal(rc, PB_OK);
    assert_true(pb_connector_opayo.caps & PB_CAP_INBOUND);
    assert_true(pb_connector_opayo.caps & PB_CAP_CONFIRM);
    pbt_connection_free(c);
}

/* ---- the event ---------------------------------------------------------------------------- */

static void test_payment_succeeded(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *ev;

    assert_int_equal(inbound_json(c, fixture(), &out, &err), PB_OK);
    assert_int_equal(out.n, 1);
    assert_string_equal(out.ev[0].event_id, TX_ID);
    assert_string_equal(out.ev[0].type, "payment.succeeded");
    ev = pb_event_tree(&out.ev[0]);
    assert_string_equal(pb_json_str(ev, "type"), "payment.succeeded");
    assert_string_equal(pb_json_str(ev, "occurred_at"), CREATED);
    assert_string_equal(pb_json_str(ev, "payment.gateway_id"), TX_ID);
    assert_string_equal(pb_json_str(ev, "payment.reference"), "ORDER-10023");
    assert_string_equal(pb_json_str(ev, "payment.kind"), "Payment");
    assert_string_equal(pb_json_str(ev, "payment.status"), "Ok");
    assert_string_equal(pb_json_str(ev, "payment.status_code"), "0000");
    assert_string_equal(pb_json_str(ev, "payment.status_detail"),
                        "The Authorisation was Successful.");
    assert_true(json_is_integer(pb_json_path(ev, "payment.amount.minor")));
    assert_int_equal(json_integer_value(pb_json_path(ev, "payment.amount.minor")), 1099);
    assert_string_equal(pb_json_str(ev, "payment.amount.currency"), "GBP");
    assert_string_equal(pb_json_str(ev, "payment.amount.decimal"), "10.99");
    assert_string_equal(pb_json_str(ev, "payment.description"), "Order 10023");
    assert_string_equal(pb_json_str(ev, "payment.card.brand"), "Visa");
    assert_string_equal(pb_json_str(ev, "payment.card.last4"), "0006");
    assert_string_equal(pb_json_str(ev, "payment.card.expiry"), "1229");
    assert_string_equal(pb_json_str(ev, "payment.auth_code"), "999777");
    assert_string_equal(pb_json_str(ev, "payment.retrieval_reference"), "9493946");
    assert_int_equal(json_integer_value(pb_json_path(ev, "payment.fraud_score")), 5);
    assert_string_equal(pb_json_str(ev, "customer.email"), "ann@example.com");
    assert_string_equal(pb_json_str(ev, "customer.first_name"), "Ann");
    assert_string_equal(pb_json_str(ev, "customer.last_name"), "Smith");
    assert_string_equal(pb_json_str(ev, "customer.name"), "Ann Smith");
    assert_string_equal(pb_json_str(ev, "customer.address.line1"), "88 High St");
    assert_true(json_is_null(pb_json_path(ev, "customer.address.line2")));
    assert_string_equal(pb_json_str(ev, "customer.address.city"), "London");
    assert_true(json_is_null(pb_json_path(ev, "customer.address.region")));
    assert_string_equal(pb_json_str(ev, "customer.address.postal_code"), "412");
    assert_string_equal(pb_json_str(ev, "customer.address.country"), "GB");
    assert_null(json_object_get(ev, "refund"));
    /* no card number, no raw-only fields leak into the event */
    assert_null(pb_json_path(ev, "payment.card.cardIdentifier"));
    pb_event_list_clear(&out);
    pbt_connection_free(c);
}

static void test_address_region_and_name(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *n = fixture();
    json_object_set_new(json_object_get(tx_of(n), "billingAddress"), "state", json_string("CA"));
    json_object_set_new(json_object_get(tx_of(n), "billingAddress"), "address2",
                        json_string("Flat 2"));
    json_object_del(tx_of(n), "customerLastName");
    assert_int_equal(inbound_json(c, n, &out, &err), PB_OK);
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "customer.address.region"), "CA");
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "customer.address.line2"), "Flat 2");
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "customer.name"), "Ann");
    pb_event_list_clear(&out);
    pbt_connection_free(c);
}

static const char *type_for(const char *tx_type, const char *status)
{
    static char type[64];
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *n = fixture();
    json_object_set_new(tx_of(n), "transactionType", json_string(tx_type));
    json_object_set_new(tx_of(n), "status", json_string(status));
    if (strcmp(tx_type, "Refund") == 0)
        json_object_set_new(tx_of(n), "referenceTransactionId",
                            json_string("0C3B9F54-8A9E-4D1B-9E2F-4A3C2B1D0E9F"));
    if (inbound_json(c, n, &out, &err) != PB_OK)
        fail_msg("%s/%s: %s", tx_type, status, err.msg);
    assert_int_equal(out.n, 1);
    snprintf(type, sizeof type, "%s", out.ev[0].type);
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "type"), type);
    pb_event_list_clear(&out);
    pbt_connection_free(c);
    return type;
}

static void test_type_mapping(void **state)
{
    assert_string_equal(type_for("Payment", "NotAuthed"), "payment.declined");
    assert_string_equal(type_for("Payment", "Rejected"), "payment.declined");
    assert_string_equal(type_for("Deferred", "Ok"), "payment.succeeded");
    assert_string_equal(type_for("Repeat", "Ok"), "payment.succeeded");
    assert_string_equal(type_for("Payment", "Malformed"), "payment.failed");
    assert_string_equal(type_for("Payment", "Invalid"), "payment.failed");
    assert_string_equal(type_for("Payment", "Error"), "payment.failed");
    assert_string_equal(type_for("Refund", "Ok"), "refund.succeeded");
    assert_string_equal(type_for("Refund", "NotAuthed"), "refund.declined");
}

static void test_declined_keeps_customer(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *n = fixture();
    json_object_set_new(tx_of(n), "status", json_string("NotAuthed"));
    json_object_set_new(tx_of(n), "statusCode", json_string("2000"));
    json_object_del(tx_of(n), "bankAuthorisationCode");
    assert_int_equal(inbound_json(c, n, &out, &err), PB_OK);
    assert_string_equal(out.ev[0].type, "payment.declined");
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "payment.status"), "NotAuthed");
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "payment.status_code"), "2000");
    assert_true(json_is_null(pb_json_path(pb_event_tree(&out.ev[0]), "payment.auth_code")));
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "customer.name"), "Ann Smith");
    pb_event_list_clear(&out);
    pbt_connection_free(c);
}

static void test_refund_event(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *n = fixture();
    json_object_set_new(tx_of(n), "transactionType", json_string("Refund"));
    json_object_set_new(tx_of(n), "referenceTransactionId",
                        json_string("0C3B9F54-8A9E-4D1B-9E2F-4A3C2B1D0E9F"));
    json_object_set_new(json_object_get(tx_of(n), "amount"), "totalAmount", json_integer(500));
    assert_int_equal(inbound_json(c, n, &out, &err), PB_OK);
    assert_string_equal(out.ev[0].type, "refund.succeeded");
    assert_null(json_object_get(pb_event_tree(&out.ev[0]), "payment"));
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "refund.original_gateway_id"),
                        "0C3B9F54-8A9E-4D1B-9E2F-4A3C2B1D0E9F");
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "refund.amount.decimal"), "5.00");
    assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "customer.email"), "ann@example.com");
    pb_event_list_clear(&out);
    pbt_connection_free(c);

    /* a Refund must say what it refunds */
    n = fixture();
    json_object_set_new(tx_of(n), "transactionType", json_string("Refund"));
    expect_reject(n, PB_ERR_INVALID, "referenceTransactionId");
}

static void test_currency_exponents(void **state)
{
    static const struct {
        const char *currency;
        json_int_t minor;
        const char *decimal;
    } cases[] = {{"JPY", 1000, "1000"}, {"BHD", 1234, "1.234"}, {"BHD", 5, "0.005"},
                 {"GBP", 0, "0.00"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct pb_connection *c = offline();
        struct pb_event_list out = {0};
        struct pb_err err = {0};
        json_t *n = fixture();
        json_object_set_new(tx_of(n), "currency", json_string(cases[i].currency));
        json_object_set_new(json_object_get(tx_of(n), "amount"), "totalAmount",
                            json_integer(cases[i].minor));
        assert_int_equal(inbound_json(c, n, &out, &err), PB_OK);
        assert_int_equal(json_integer_value(pb_json_path(pb_event_tree(&out.ev[0]), "payment.amount.minor")),
                         cases[i].minor);
        assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "payment.amount.currency"),
                            cases[i].currency);
        assert_string_equal(pb_json_str(pb_event_tree(&out.ev[0]), "payment.amount.decimal"),
                            cases[i].decimal);
        pb_event_list_clear(&out);
        pbt_connection_free(c);
    }
}

/* A resend of the same transaction de-duplicates: same event_id, whatever the notificationId. */
static void test_event_id_is_transaction_id(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list a = {0}, b = {0};
    struct pb_err err = {0};
    json_t *n = fixture();
    json_object_set_new(n, "notificationId", json_string("99999999-AAAA-4BBB-8CCC-DDDDDDDDDDDD"));
    assert_int_equal(inbound_json(c, fixture(), &a, &err), PB_OK);
    assert_int_equal(inbound_json(c, n, &b, &err), PB_OK);
    assert_string_equal(a.ev[0].event_id, b.ev[0].event_id);
    assert_true(json_equal(pb_event_tree(&a.ev[0]), pb_event_tree(&b.ev[0])));
    pb_event_list_clear(&a);
    pb_event_list_clear(&b);
    pbt_connection_free(c);
}

/* ---- rejections ------------------------------------------------------------------------------ */

static char *fixture_text(void)
{
    json_t *n = fixture();
    char *body = json_dumps(n, JSON_COMPACT);
    json_decref(n);
    return body;
}

static void test_signature(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    char *body = fixture_text();
    char sig[65], upper[65];

    /* missing */
    assert_int_equal(inbound_text(c, body, 0, NULL, t_created(), &out, &err), PB_ERR_AUTH);
    assert_contains(err.msg, "missing X-Opayo-Signature header");
    /* signed with another secret */
    pbt_hmac_hex("another-secret", body, strlen(body), sig);
    assert_int_equal(inbound_text(c, body, 0, sig, t_created(), &out, &err), PB_ERR_AUTH);
    assert_contains(err.msg, "signature does not match");
    /* not hex at all */
    assert_int_equal(inbound_text(c, body, 0, "not-a-signature", t_created(), &out, &err),
                     PB_ERR_AUTH);
    assert_contains(err.msg, "signature does not match");
    /* right MAC, but the body changed by one byte after signing */
    pbt_hmac_hex(SECRET, body, strlen(body), sig);
    body[strlen(body) - 3] ^= 1;
    assert_int_equal(inbound_text(c, body, 0, sig, t_created(), &out, &err), PB_ERR_AUTH);
    assert_contains(err.msg, "signature does not match");
    body[strlen(body) - 3] ^= 1;
    /* hex is case-insensitive */
    for (int i = 0; i < 65; i++)
        upper[i] = (char)((sig[i] >= 'a' && sig[i] <= 'f') ? sig[i] - 32 : sig[i]);
    assert_int_equal(inbound_text(c, body, 0, upper, t_created(), &out, &err), PB_OK);
    assert_int_equal(out.n, 1);
    pb_event_list_clear(&out);
    free(body);
    pbt_connection_free(c);
}

static void test_replay_window(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    char *body = fixture_text();

    assert_int_equal(inbound_text(c, body, 1, NULL, t_created() + 301, &out, &err), PB_ERR_AUTH);
    assert_contains(err.msg, "createdAt");
    assert_contains(err.msg, "window of +/-300 s");
    assert_int_equal(inbound_text(c, body, 1, NULL, t_created() - 301, &out, &err), PB_ERR_AUTH);
    assert_contains(err.msg, "window");
    assert_int_equal(out.n, 0);
    assert_int_equal(inbound_text(c, body, 1, NULL, t_created() + 300, &out, &err), PB_OK);
    assert_int_equal(inbound_text(c, body, 1, NULL, t_created() - 300, &out, &err), PB_OK);
    assert_int_equal(out.n, 2);
    pb_event_list_clear(&out);
    free(body);
    pbt_connection_free(c);
}

static void test_malformed_json(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};

    assert_int_equal(inbound_text(c, "{\"notificationId\":\"x\",\n\"createdAt\":}", 1, NULL,
                                  t_created(), &out, &err),
                     PB_ERR_INVALID);
    assert_contains(err.msg, "not valid JSON");
    assert_contains(err.msg, "line 2");
    assert_int_equal(inbound_text(c, "[1,2]", 1, NULL, t_created(), &out, &err), PB_ERR_INVALID);
    assert_contains(err.msg, "JSON object");
    /* duplicate keys could mean two things to two parsers */
    assert_int_equal(inbound_text(c, "{\"a\":1,\"a\":2}", 1, NULL, t_created(), &out, &err),
                     PB_ERR_INVALID);
    assert_int_equal(out.n, 0);
    pbt_connection_free(c);
}

/* Replace the first occurrence of `from` in the fixture's text with `to`, sign, run. */
static void expect_text_reject(const char *from, const char *to, enum pb_rc rc,
                               const char *needle)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    char *body = fixture_text(), *at = strstr(body, from), *edited;
    size_t len;
    assert_non_null(at);
    len = strlen(body) - strlen(from) + strlen(to);
    edited = malloc(len + 1);
    snprintf(edited, len + 1, "%.*s%s%s", (int)(at - body), body, to, at + strlen(from));
    assert_int_equal(inbound_text(c, edited, 1, NULL, t_created(), &out, &err), rc);
    assert_int_equal(out.n, 0);
    assert_contains(err.msg, needle);
    free(edited);
    free(body);
    pbt_connection_free(c);
}

static void test_amounts(void **state)
{
    json_t *n = fixture();
    json_object_set_new(json_object_get(tx_of(n), "amount"), "totalAmount", json_integer(-5));
    expect_reject(n, PB_ERR_RANGE, "amount.totalAmount must not be negative");

    expect_text_reject("\"totalAmount\":1099", "\"totalAmount\":1e20", PB_ERR_RANGE,
                       "amount.totalAmount");
    expect_text_reject("\"totalAmount\":1099", "\"totalAmount\":10.99", PB_ERR_RANGE,
                       "amount.totalAmount");
    expect_text_reject("\"totalAmount\":1099", "\"totalAmount\":99999999999999999999",
                       PB_ERR_RANGE, "does not fit in 64 bits");
    expect_text_reject("\"totalAmount\":1099", "\"totalAmount\":\"10.99\"", PB_ERR_INVALID,
                       "amount.totalAmount");
    n = fixture();
    json_object_del(tx_of(n), "amount");
    expect_reject(n, PB_ERR_INVALID, "transaction.amount is missing");
}

static void test_currency(void **state)
{
    json_t *n = fixture();
    json_object_set_new(tx_of(n), "currency", json_string("XYZ"));
    expect_reject(n, PB_ERR_CURRENCY, "unknown currency \"XYZ\"");
    n = fixture();
    json_object_set_new(tx_of(n), "currency", json_string("gbp"));
    expect_reject(n, PB_ERR_CURRENCY, "unknown currency \"gbp\"");
}

static void test_vendor_tx_code(void **state)
{
    json_t *n = fixture();
    json_object_set_new(tx_of(n), "vendorTxCode",
                        json_string("ORDER-0123456789-0123456789-0123456789-XY")); /* 41 */
    expect_reject(n, PB_ERR_INVALID, "vendorTxCode");
    n = fixture();
    json_object_set_new(tx_of(n), "vendorTxCode", json_string("ORDER 1"));
    expect_reject(n, PB_ERR_INVALID, "vendorTxCode");
    n = fixture();
    json_object_set_new(tx_of(n), "vendorTxCode", json_string("{ord.er_1-x}")); /* all allowed */
    {
        struct pb_connection *c = offline();
        struct pb_event_list out = {0};
        struct pb_err err = {0};
        assert_int_equal(inbound_json(c, n, &out, &err), PB_OK);
        pb_event_list_clear(&out);
        pbt_connection_free(c);
    }
}

static void test_field_validation(void **state)
{
    json_t *n = fixture();
    json_object_del(tx_of(n), "transactionId");
    expect_reject(n, PB_ERR_INVALID, "transaction.transactionId is missing");
    n = fixture();
    json_object_set_new(tx_of(n), "transactionId",
                        json_string("0123456789012345678901234567890123456789012345678901234567"
                                    "890123456789"));
    expect_reject(n, PB_ERR_INVALID, "transaction.transactionId is longer than 64");
    n = fixture();
    json_object_set_new(tx_of(n), "transactionType", json_string("Authorise"));
    expect_reject(n, PB_ERR_INVALID, "transaction.transactionType");
    n = fixture();
    json_object_set_new(tx_of(n), "status", json_string("OK"));
    expect_reject(n, PB_ERR_INVALID, "transaction.status");
    n = fixture();
    json_object_set_new(tx_of(n), "statusCode", json_integer(0));
    expect_reject(n, PB_ERR_INVALID, "transaction.statusCode must be a string");
    n = fixture();
    json_object_set_new(n, "eventType", json_string("transaction.voided"));
    expect_reject(n, PB_ERR_INVALID, "eventType");
    n = fixture();
    json_object_set_new(n, "vendorName", json_string("someone-else"));
    expect_reject(n, PB_ERR_INVALID, "vendorName");
    n = fixture();
    json_object_del(n, "transaction");
    expect_reject(n, PB_ERR_INVALID, "transaction is missing");
    n = fixture();
    json_object_set_new(n, "createdAt", json_string("21/11/2026 19:14"));
    expect_reject(n, PB_ERR_INVALID, "createdAt");
}

static void test_card_number_in_body(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *n = fixture();
    char *body;

    json_object_set_new(tx_of(n), "description", json_string("card 4929 0000 0000 6 thanks"));
    body = json_dumps(n, JSON_COMPACT);
    json_decref(n);
    /* refused whether or not it is signed: the guard runs first */
    assert_int_equal(inbound_text(c, body, 1, NULL, t_created(), &out, &err), PB_ERR_INVALID);
    assert_contains(err.msg, "looks like a card number");
    assert_contains(err.msg, "never accepts card numbers");
    assert_null(strstr(err.msg, "4929"));
    assert_int_equal(inbound_text(c, body, 0, NULL, t_created(), &out, &err), PB_ERR_INVALID);
    assert_contains(err.msg, "card number");
    assert_int_equal(out.n, 0);
    free(body);
    pbt_connection_free(c);
}

/* A GUID's digit groups can pass Luhn (FD7874BB-54F6-6784-7129-52688E609E38
 * holds "6784-7129-52688" windows); a transactionId must not be taken for a card. */
static void test_guid_is_not_a_card(void **state)
{
    static const char *guid = "FD7874BB-54F6-6784-7129-52688E609E38";
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *n = fixture();

    assert_true(pb_pan_scan(guid, strlen(guid), NULL) > 0); /* the raw scanner would object */
    json_object_set_new(tx_of(n), "transactionId", json_string(guid));
    assert_int_equal(inbound_json(c, n, &out, &err), PB_OK);
    assert_string_equal(out.ev[0].event_id, guid);
    pb_event_list_clear(&out);
    pbt_connection_free(c);
}

/* ---- against the sandbox's Opayo Pi emulator ------------------------------------------------- */

/* base64("sandbox-key:sandbox-password"), the emulator's default credentials */
#define BASIC_AUTH "Authorization: Basic c2FuZGJveC1rZXk6c2FuZGJveC1wYXNzd29yZA=="

static struct pbt_receiver rx;

static struct {
    struct pbt_env env;
    char base[64]; /* http://127.0.0.1:PORT of the emulator */
} sx;

static int sandbox_setup(void **state)
{
    if (pbt_receiver_start(&rx, "X-Opayo-Signature"))
        return -1;
    if (pbt_env_sandbox(&sx.env, "opayo",
                        json_pack("{s:{s:i,s:s,s:s,s:s}}", "opayo", "port", 0, "notify_url",
                                  rx.url, "notify_secret", SECRET, "vendor_name", "sandbox")))
        return -1;
    pbt_url(sx.base, sizeof sx.base, sx.env.port, NULL);
    return 0;
}

static int sandbox_teardown(void **state)
{
    pbt_env_stop(&sx.env);
    pbt_receiver_stop(&rx);
    return 0;
}

/* One request to the emulator with plain libcurl; returns the status, *out the JSON reply. */
static long pi_call(const char *method, const char *path, const char *auth, const char *body,
                    json_t **out)
{
    const char *headers[] = {"Content-Type: application/json", auth, NULL};
    return pbt_call(sx.env.port, method, path, headers, body, out);
}
/* Merchant session key -> card identifier -> Payment; returns the transactionId. */
static void pi_payment(const char *card, const char *vtc, long amount, char tx_id[64])
{
    char bearer[128], body[1024], msk[64], cid[64];
    json_t *r;

    assert_int_equal(pi_call("POST", "/api/v1/merchant-session-keys", BASIC_AUTH,
                             "{\"vendorName\":\"sandbox\"}", &r),
                     201);
    snprintf(msk, sizeof msk, "%s", pb_json_str(r, "merchantSessionKey"));
    json_decref(r);
    snprintf(bearer, sizeof bearer, "Authorization: Bearer %s", msk);
    snprintf(body, sizeof body,
             "{\"cardDetails\":{\"cardholderName\":\"ANN SMITH\",\"cardNumber\":\"%s\","
             "\"expiryDate\":\"1239\",\"securityCode\":\"123\"}}",
             card);
    assert_int_equal(pi_call("POST", "/api/v1/card-identifiers", bearer, body, &r), 201);
    snprintf(cid, sizeof cid, "%s", pb_json_str(r, "cardIdentifier"));
    json_decref(r);
    snprintf(body, sizeof body,
             "{\"transactionType\":\"Payment\",\"paymentMethod\":{\"card\":{"
             "\"merchantSessionKey\":\"%s\",\"cardIdentifier\":\"%s\"}},\"vendorTxCode\":\"%s\","
             "\"amount\":%ld,\"currency\":\"GBP\",\"description\":\"Order %s\","
             "\"customerFirstName\":\"Ann\",\"customerLastName\":\"Smith\","
             "\"customerEmail\":\"ann@example.com\",\"billingAddress\":{\"address1\":"
             "\"88 High St\",\"city\":\"London\",\"postalCode\":\"412\",\"country\":\"GB\"},"
             "\"entryMethod\":\"Ecommerce\"}",
             msk, cid, vtc, amount, vtc);
    assert_int_equal(pi_call("POST", "/api/v1/transactions", BASIC_AUTH, body, &r), 201);
    snprintf(tx_id, 64, "%s", pb_json_str(r, "transactionId"));
    json_decref(r);
}

/* Wait (at most 10 s) for the notification of tx_id; returns its index in rx. */
static int wait_notification(const char *tx_id)
{
    for (int tries = 0; tries < 1000; tries++) {
        pthread_mutex_lock(&rx.mu);
        for (int i = 0; i < rx.n; i++) {
            if (strstr(rx.body[i], tx_id)) {
                pthread_mutex_unlock(&rx.mu);
                return i;
            }
        }
        pthread_mutex_unlock(&rx.mu);
        usleep(10000);
    }
    fail_msg("no notification for %s after 10 s", tx_id);
    return -1;
}

static struct pb_connection *sandbox_connection(const char *password)
{
    struct pb_err err = {0};
    enum pb_rc rc;
    char api[96];
    struct pb_connection *c;
    snprintf(api, sizeof api, "%s/api/v1", sx.base);
    c = connection_new(json_pack("{s:s,s:s}", "api_base", api, "vendor_name", "sandbox"),
                       json_pack("{s:s,s:s,s:s}", "notify_secret", SECRET, "integration_key",
                                 "sandbox-key", "integration_password", password),
                       &err, &rc);
    if (rc)
        fail_msg("init: %s", err.msg);
    return c;
}

/* The emulator's real notification for a new transaction, through inbound(). */
static json_t *notified_event(struct pb_connection *c, const char *card, const char *vtc,
                              long amount, char tx_id[64], const char *want_type)
{
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    json_t *ev;
    int i;

    pi_payment(card, vtc, amount, tx_id);
    i = wait_notification(tx_id);
    if (inbound_text(c, rx.body[i], 0, rx.signature[i], time(NULL), &out, &err) != PB_OK)
        fail_msg("inbound of the emulator's notification: %s", err.msg);
    assert_int_equal(out.n, 1);
    assert_string_equal(out.ev[0].event_id, tx_id);
    assert_string_equal(out.ev[0].type, want_type);
    ev = json_incref(pb_event_tree(&out.ev[0]));
    pb_event_list_clear(&out);
    return ev;
}

static enum pb_rc confirm(struct pb_connection *c, json_t *event, json_t *trace,
                          struct pb_err *err)
{
    struct pb_call_ctx ctx = pbt_ctx(sx.env.http, trace, time(NULL));
    return c->type->confirm(c, &ctx, event, err);
}

static void test_sandbox_confirm(void **state)
{
    struct pb_connection *c = sandbox_connection("sandbox-password");
    struct pb_err err = {0};
    json_t *trace = json_array(), *ev, *tampered;
    char tx_id[64], *dump;

    ev = notified_event(c, "4929000000006", "PB-OK-1", 1099, tx_id, "payment.succeeded");
    assert_int_equal(json_integer_value(pb_json_path(ev, "payment.amount.minor")), 1099);
    assert_string_equal(pb_json_str(ev, "payment.amount.decimal"), "10.99");
    assert_string_equal(pb_json_str(ev, "payment.card.last4"), "0006");
    assert_string_equal(pb_json_str(ev, "customer.name"), "Ann Smith");
    assert_string_equal(pb_json_str(ev, "customer.address.postal_code"), "412");

    /* the gateway agrees */
    if (confirm(c, ev, trace, &err) != PB_OK)
        fail_msg("confirm: %s", err.msg);
    assert_int_equal(json_array_size(trace), 1);
    assert_string_equal(pb_json_str(trace, "0.method"), "GET");
    assert_int_equal(json_integer_value(pb_json_path(trace, "0.status")), 200);
    assert_contains(pb_json_str(trace, "0.url"), tx_id);
    dump = json_dumps(trace, JSON_COMPACT);
    assert_null(strstr(dump, "sandbox-password"));
    assert_null(strstr(dump, "c2FuZGJveC1rZXk6c2FuZGJveC1wYXNzd29yZA"));
    free(dump);

    /* the event says more money than Opayo has */
    tampered = json_deep_copy(ev);
    json_object_set_new(json_object_get(json_object_get(tampered, "payment"), "amount"), "minor",
                        json_integer(1100));
    assert_int_equal(confirm(c, tampered, trace, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "amount.totalAmount");
    assert_contains(err.msg, "1099");
    assert_contains(err.msg, "1100");
    json_decref(tampered);

    /* a declined payment dressed up as Ok */
    tampered = json_deep_copy(ev);
    json_object_set_new(json_object_get(tampered, "payment"), "status", json_string("NotAuthed"));
    assert_int_equal(confirm(c, tampered, trace, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "status");
    assert_contains(err.msg, "NotAuthed");
    json_decref(tampered);

    /* another currency */
    tampered = json_deep_copy(ev);
    json_object_set_new(json_object_get(json_object_get(tampered, "payment"), "amount"),
                        "currency", json_string("EUR"));
    assert_int_equal(confirm(c, tampered, trace, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "currency");
    json_decref(tampered);

    /* a transaction Opayo never saw */
    tampered = json_deep_copy(ev);
    json_object_set_new(json_object_get(tampered, "payment"), "gateway_id",
                        json_string("00000000-1111-2222-3333-444444444444"));
    assert_int_equal(confirm(c, tampered, trace, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "Opayo does not know transaction 00000000-1111-2222-3333-");
    json_decref(tampered);

    json_decref(ev);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_sandbox_declined(void **state)
{
    struct pb_connection *c = sandbox_connection("sandbox-password");
    struct pb_err err = {0};
    char tx_id[64];
    json_t *ev = notified_event(c, "4929602110085639", "PB-DECLINE-1", 250, tx_id,
                                "payment.declined");
    assert_string_equal(pb_json_str(ev, "payment.status"), "NotAuthed");
    assert_int_equal(confirm(c, ev, NULL, &err), PB_OK);
    json_decref(ev);
    pbt_connection_free(c);
}

static void test_sandbox_confirm_failures(void **state)
{
    struct pb_connection *c = sandbox_connection("sandbox-password");
    struct pb_connection *wrong = sandbox_connection("not-the-password");
    struct pb_err err = {0};
    json_t *faults, *ev;
    char tx_id[64];

    ev = notified_event(c, "4929000000006", "PB-FAULT-1", 700, tx_id, "payment.succeeded");

    /* the emulator answers 500/503: retry later */
    faults = json_pack("{s:f}", "error_rate", 1.0);
    assert_int_equal(pb_sandbox_set_faults(sx.env.sb, "opayo", faults, &err), PB_OK);
    json_decref(faults);
    assert_int_equal(confirm(c, ev, NULL, &err), PB_ERR_TRANSIENT);
    faults = json_pack("{s:b}", "reset", 1);
    assert_int_equal(pb_sandbox_set_faults(sx.env.sb, "opayo", faults, &err), PB_OK);
    json_decref(faults);

    /* wrong integration password: a configuration error, not a retry */
    assert_int_equal(confirm(wrong, ev, NULL, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "401");

    assert_int_equal(confirm(c, ev, NULL, &err), PB_OK);
    json_decref(ev);
    pbt_connection_free(wrong);
    pbt_connection_free(c);
}

/* confirm off: nothing is asked */
static void test_confirm_off(void **state)
{
    struct pb_connection *c = offline();
    struct pb_event_list out = {0};
    struct pb_err err = {0};
    struct pb_call_ctx ctx = {NULL, NULL, 0, -1};
    assert_int_equal(inbound_json(c, fixture(), &out, &err), PB_OK);
    assert_int_equal(c->type->confirm(c, &ctx, pb_event_tree(&out.ev[0]), &err), PB_OK);
    pb_event_list_clear(&out);
    pbt_connection_free(c);
}

int main(void)
{
    const struct CMUnitTest offline_tests[] = {
        cmocka_unit_test(test_init_settings),
        cmocka_unit_test(test_payment_succeeded),
        cmocka_unit_test(test_address_region_and_name),
        cmocka_unit_test(test_type_mapping),
        cmocka_unit_test(test_declined_keeps_customer),
        cmocka_unit_test(test_refund_event),
        cmocka_unit_test(test_currency_exponents),
        cmocka_unit_test(test_event_id_is_transaction_id),
        cmocka_unit_test(test_signature),
        cmocka_unit_test(test_replay_window),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_amounts),
        cmocka_unit_test(test_currency),
        cmocka_unit_test(test_vendor_tx_code),
        cmocka_unit_test(test_field_validation),
        cmocka_unit_test(test_card_number_in_body),
        cmocka_unit_test(test_guid_is_not_a_card),
        cmocka_unit_test(test_confirm_off),
    };
    const struct CMUnitTest sandbox_tests[] = {
        cmocka_unit_test(test_sandbox_confirm),
        cmocka_unit_test(test_sandbox_declined),
        cmocka_unit_test(test_sandbox_confirm_failures),
    };
    int failed = cmocka_run_group_tests_name("opayo offline", offline_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("opayo sandbox", sandbox_tests, sandbox_setup,
                                          sandbox_teardown);
    return failed;
}
