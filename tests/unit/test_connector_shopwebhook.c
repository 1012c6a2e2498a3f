/*
 * tests/unit/test_connector_shopwebhook.c: the shop status webhook sink
 * (src/connectors/shopwebhook/) against the sandbox's shop receiver
 * (sandbox/shop.c), over real HTTP.
 *
 * The fixture starts the receiver directly (sbx_shop_type.create,
 * pb_httpd_start with its routes on port 0, a thread per connection), not
 * through pb_sandbox_start, so that it needs no wiring in sandbox.c and sees
 * no fault injection but its own fail_next. Each test starts from POST
 * /_sandbox/reset and the default settings. The connector is called through
 * `pb_connector_shopwebhook` with a hand-made struct pb_connection, as the
 * engine would call it.
 *
 * Covered:
 *   - init: every required key and range named in its message; max_batch;
 *   - a status arrives signed: the test recomputes the HMAC with OpenSSL
 *     directly (not core/crypto.h, so neither side verifies itself), checks
 *     the exact body bytes, the Idempotency-Key and X-Paybridge-Event
 *     headers, erp_id = the shop's id, and that the trace has the call but
 *     not the MAC;
 *   - the receiver refuses a wrong secret, a missing or malformed header, a
 *     stale and a future timestamp (raw requests signed by the test, with a
 *     fresh control request that passes), and the connector classifies its
 *     401 as permanent with what to check;
 *   - a redelivery with the same Idempotency-Key is recorded once (attempt 2
 *     re-signed with a later t), a new state for the order is recorded after;
 *   - an invalid state is permanent and nothing is sent; shape errors are
 *     mapping errors; an unknown command is permanent;
 *   - fail_next: 503 with Retry-After is transient with retry_after_s, then
 *     it goes through; 429 likewise; a 422 is permanent with the shop's words;
 *   - no listener at all is transient;
 *   - a scripted pb_httpd for what the receiver never does: a 2xx without an
 *     id (erp_id = the idempotency key) and a redirect (permanent).
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connectors/connector.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "pbtest.h"
#include "sbx.h"

extern const struct pb_connector_type pb_connector_shopwebhook;
extern const struct sbx_emulator_type sbx_shop_type;

#define SECRET "sandbox-shop-secret"
#define KEY1 "pb-shop-test-101-order-status-2"

static struct pbt_env sx; /* emu: the receiver's state */

/* ---- plain libcurl to the receiver ----------------------------------------------------------- */

/* One request; `headers` NULL-terminated "Name: value" lines. */
static long request(const char *method, const char *path, const char *const *headers,
                    const char *body, json_t **out)
{
    return pbt_call(sx.port, method, path, headers, body, out);
}

static long admin(const char *method, const char *path, const char *body, json_t **out)
{
    return pbt_admin(sx.port, method, path, body, out);
}

static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}

/* The recorded statuses of an order (a new reference). */
static json_t *statuses_of(const char *order_reference)
{
    char path[256];
    json_t *o, *list;
    snprintf(path, sizeof path, "/_sandbox/statuses?order_reference=%s", order_reference);
    assert_int_equal(admin("GET", path, NULL, &o), 200);
    list = json_incref(json_object_get(o, "statuses"));
    assert_true(json_is_array(list));
    assert_int_equal(json_integer_value(json_object_get(o, "count")), json_array_size(list));
    json_decref(o);
    return list;
}

/* "t=<t>,v1=<hex>" computed here with OpenSSL, independently of the code under test. */
static void sign(const char *secret, long long t, const char *body, char *out, size_t len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char prefix[32], hex[2 * EVP_MAX_MD_SIZE + 1];
    size_t pn = (size_t)snprintf(prefix, sizeof prefix, "%lld.", t);
    size_t bn = strlen(body);
    unsigned char *msg = malloc(pn + bn);

    assert_non_null(msg);
    memcpy(msg, prefix, pn);
    memcpy(msg + pn, body, bn);
    assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, pn + bn, mac, &mac_len));
    free(msg);
    assert_int_equal(mac_len, 32);
    for (unsigned i = 0; i < mac_len; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    snprintf(out, len, "t=%lld,v1=%s", t, hex);
}

/* POST /status as a sender would, signed with `secret` at `t` (no signature
 * header when secret is NULL, `raw_signature` when given). */
static long post_status(const char *body, const char *secret, long long t,
                        const char *raw_signature, const char *key, json_t **out)
{
    char sig[160], sig_header[200], key_header[300];
    const char *headers[5] = {"Content-Type: application/json", NULL, NULL, NULL, NULL};
    int h = 1;
    if (secret) {
        sign(secret, t, body, sig, sizeof sig);
        raw_signature = sig;
    }
    if (raw_signature) {
        snprintf(sig_header, sizeof sig_header, "X-Paybridge-Signature: %s", raw_signature);
        headers[h++] = sig_header;
    }
    if (key) {
        snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", key);
        headers[h++] = key_header;
    }
    return request("POST", "/status", headers, body, out);
}

static const char *error_code(json_t *reply)
{
    return json_string_value(json_object_get(json_object_get(reply, "error"), "code"));
}

/* ---- fixture --------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    return pbt_env_emulator(&sx, &sbx_shop_type,
                            json_pack("{s:s,s:i}", "secret", SECRET, "tolerance_s", 300), 0);
}
static int group_teardown(void **state)
{
    pbt_env_stop(&sx);
    return 0;
}
static int test_setup(void **state)
{
    assert_int_equal(admin("POST", "/_sandbox/reset", "{}", NULL), 200);
    assert_int_equal(admin("POST", "/_sandbox/settings",
                           "{\"secret\":\"" SECRET "\",\"tolerance_s\":300,\"fail_next\":0,"
                           "\"fail_status\":503,\"retry_after_s\":30}",
                           NULL),
                     200);
    return 0;
}

/* A connection to `url` (NULL: the receiver) with this secret; init must pass. */
static struct pb_connection *connection_to(const char *url, const char *secret)
{
    char own[128];
    return pbt_connection(&pb_connector_shopwebhook, "shop-test",
                          json_pack("{s:s,s:i}", "url",
                                    url ? url : pbt_url(own, sizeof own, sx.port, "/status"),
                                    "timeout_ms", 5000),
                          NULL, json_pack("{s:s}", "signing_secret", secret));
}
static void connection_free(struct pb_connection *c)
{
    c->type->destroy(c);
    assert_null(c->state);
    pbt_connection_free(c);
}
static json_t *status_doc(const char *order, const char *state)
{
    return json_pack("{s:s,s:s,s:{s:I,s:s,s:s},s:s,s:s,s:{s:s,s:s},s:s}", "order_reference", order,
                     "state", state, "amount", "minor", (json_int_t)1099, "currency", "GBP",
                     "decimal", "10.99", "gateway", "opayo", "gateway_transaction_id",
                     "DB79BA2D-05DA-5B85-D188-1293D16BBAC7", "erp", "system", "xero", "document_id",
                     "inv-7f3a", "occurred_at", "2026-11-21T19:14:10Z");
}

struct run {
    struct pb_sink_item item;
    json_t *trace;
    enum pb_rc rc;
    struct pb_err err;
};

/* Execute one order.status item; `now` 0 = the clock. */
static void execute(struct pb_connection *c, json_t *doc, const char *reference, const char *key,
                    uint32_t attempt, time_t now, struct run *r)
{
    memset(r, 0, sizeof *r);
    r->trace = json_array();
    pbt_item(&r->item, "order.status", doc, reference, key, attempt);
    r->item.rc = PB_ERR_INTERNAL;
    r->rc = pbt_execute1(c, sx.http, r->trace, now ? now : time(NULL), &r->item, &r->err);
}

static void run_free(struct run *r)
{
    json_decref(r->item.result);
    json_decref(r->trace);
}

/* ---- init ------------------------------------------------------------------------------------ */

static void expect_init_error(json_t *settings, json_t *secrets, const char *needle)
{
    struct pb_connection c = {.magic = PB_CONNECTION_MAGIC, .type = &pb_connector_shopwebhook};
    struct pb_err err = {0};
    c.settings = settings;
    c.secrets = secrets;
    assert_int_equal(c.type->init(&c, &err), PB_ERR_CONFIG);
    assert_null(c.state);
    assert_contains(err.msg, needle);
    json_decref(settings);
    json_decref(secrets);
}

static void test_init_settings(void **state)
{
    struct pb_connection *c;

    expect_init_error(json_pack("{}"), json_pack("{s:s}", "signing_secret", "s"), "settings.url");
    expect_init_error(json_pack("{s:s}", "url", "ftp://shop.example/status"),
                      json_pack("{s:s}", "signing_secret", "s"), "settings.url: must be an http");
    expect_init_error(json_pack("{s:s}", "url", "https://shop.example/a b"),
                      json_pack("{s:s}", "signing_secret", "s"), "settings.url");
    expect_init_error(json_pack("{s:s,s:i}", "url", "https://shop.example/s", "timeout", 5),
                      json_pack("{s:s}", "signing_secret", "s"), "settings.timeout: unknown");
    expect_init_error(json_pack("{s:s,s:i}", "url", "https://shop.example/s", "timeout_ms", 5),
                      json_pack("{s:s}", "signing_secret", "s"), "settings.timeout_ms");
    expect_init_error(
        json_pack("{s:s,s:s}", "url", "https://shop.example/s", "header_name", "X-Sig: injected"),
        json_pack("{s:s}", "signing_secret", "s"), "settings.header_name");
    expect_init_error(
        json_pack("{s:s,s:s}", "url", "https://shop.example/s", "header_name", "Idempotency-Key"),
        json_pack("{s:s}", "signing_secret", "s"), "already sends");
    expect_init_error(json_pack("{s:s}", "url", "https://shop.example/s"), json_pack("{}"),
                      "secrets.signing_secret: required");
    expect_init_error(json_pack("{s:s}", "url", "https://shop.example/s"),
                      json_pack("{s:s}", "signing_secret", ""), "secrets.signing_secret");

    c = connection_to("https://shop.example/status", "s");
    assert_int_equal(c->type->caps, PB_CAP_SINK);
    assert_string_equal(c->type->name, "shopwebhook");
    assert_int_equal(c->type->max_batch(c, "order.status"), 1);
    assert_int_equal(c->type->max_batch(c, "invoice.create"), 0);
    assert_int_equal(c->type->max_batch(c, NULL), 0);
    connection_free(c);
}

/* ---- a signed status arrives and verifies -----------------------------------------------------
 */

static void test_signed_status_arrives(void **state)
{
    struct pb_connection *c = connection_to(NULL, SECRET);
    json_t *doc = status_doc("ORDER-10023", "paid"), *list, *rec;
    char *expected_body = json_dumps(doc, JSON_COMPACT);
    char expected_sig[160], *trace_text;
    time_t now = time(NULL);
    struct run r;

    execute(c, doc, "ORDER-10023:paid", KEY1, 1, now, &r);
    assert_int_equal(r.rc, PB_OK);
    if (r.item.rc != PB_OK)
        fail_msg("item: %s", r.item.message);
    assert_int_equal(r.item.retry_after_s, -1);
    assert_true(json_is_true(json_object_get(r.item.result, "received")));

    list = statuses_of("ORDER-10023");
    assert_int_equal(json_array_size(list), 1);
    rec = json_array_get(list, 0);
    /* erp_id is the shop's id for the status */
    assert_string_equal(r.item.erp_id, json_string_value(json_object_get(rec, "id")));
    assert_int_equal(strlen(r.item.erp_id), 36);
    /* the exact bytes: compact JSON of the document, nothing added */
    assert_string_equal(json_string_value(json_object_get(rec, "raw_body")), expected_body);
    /* the signature, recomputed here: t is the call's clock, v1 the HMAC of "<t>.<body>" */
    assert_int_equal(json_integer_value(json_object_get(rec, "signed_at")), (json_int_t)now);
    sign(SECRET, (long long)now, expected_body, expected_sig, sizeof expected_sig);
    assert_string_equal(json_string_value(json_object_get(rec, "signature")), expected_sig);
    assert_string_equal(json_string_value(json_object_get(rec, "idempotency_key")), KEY1);
    assert_string_equal(json_string_value(json_object_get(rec, "event")), "ORDER-10023:paid");
    assert_string_equal(json_string_value(json_object_get(rec, "content_type")),
                        "application/json");
    assert_string_equal(json_string_value(json_object_get(rec, "state")), "paid");
    assert_true(json_equal(json_object_get(rec, "document"), doc));
    assert_int_equal(stat_of("received"), 1);
    assert_int_equal(stat_of("rejected"), 0);

    /* the call is in the trace, without the MAC */
    assert_int_equal(json_array_size(r.trace), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(r.trace, 0), "status")),
                     200);
    trace_text = json_dumps(r.trace, JSON_COMPACT);
    assert_null(strstr(trace_text, strstr(expected_sig, "v1=") + 3));
    free(trace_text);

    free(expected_body);
    json_decref(list);
    json_decref(doc);
    run_free(&r);
    connection_free(c);
}

/* Without a step reference the event header carries the order reference. */
static void test_event_header_falls_back(void **state)
{
    struct pb_connection *c = connection_to(NULL, SECRET);
    json_t *doc = status_doc("ORDER-7", "processing"), *list;
    struct run r;

    execute(c, doc, NULL, "pb-shop-test-7", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_OK);
    list = statuses_of("ORDER-7");
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "event")),
                        "ORDER-7");
    json_decref(list);
    json_decref(doc);
    run_free(&r);
    connection_free(c);
}

/* ---- the receiver refuses what does not verify ------------------------------------------------
 */

static void test_receiver_rejects_wrong_signature(void **state)
{
    const char *body = "{\"order_reference\":\"ORDER-1\",\"state\":\"paid\"}";
    long long now = (long long)time(NULL);
    json_t *reply = NULL;
    struct pb_connection *c;
    json_t *doc;
    struct run r;

    /* control: the right secret passes, so the refusals below are for their reason */
    assert_int_equal(post_status(body, SECRET, now, NULL, "k-ok", &reply), 200);
    json_decref(reply);

    assert_int_equal(post_status(body, "not-the-secret", now, NULL, "k-1", &reply), 401);
    assert_string_equal(error_code(reply), "signature_mismatch");
    json_decref(reply);
    assert_int_equal(post_status(body, NULL, 0, NULL, "k-2", &reply), 401);
    assert_string_equal(error_code(reply), "signature_missing");
    json_decref(reply);
    assert_int_equal(post_status(body, NULL, 0, "v1=abcd", "k-3", &reply), 401);
    assert_string_equal(error_code(reply), "signature_malformed");
    json_decref(reply);
    /* a valid MAC over another body (tampered in transit) */
    {
        char sig[160];
        sign(SECRET, now, "{\"order_reference\":\"ORDER-1\",\"state\":\"refunded\"}", sig,
             sizeof sig);
        assert_int_equal(post_status(body, NULL, 0, sig, "k-4", &reply), 401);
        assert_string_equal(error_code(reply), "signature_mismatch");
        json_decref(reply);
    }
    assert_int_equal(stat_of("rejected"), 4);
    assert_int_equal(stat_of("received"), 1);

    /* the connector with the wrong secret: a permanent refusal that says what to check */
    c = connection_to(NULL, "rotated-secret");
    doc = status_doc("ORDER-2", "paid");
    execute(c, doc, "ORDER-2:paid", "pb-shop-test-2", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_PERMANENT);
    assert_int_equal(r.item.retry_after_s, -1);
    assert_contains(r.item.message, "HTTP 401");
    assert_contains(r.item.message, "signature_mismatch");
    assert_contains(r.item.message, "secrets.signing_secret");
    {
        json_t *list = statuses_of("ORDER-2");
        assert_int_equal(json_array_size(list), 0);
        json_decref(list);
    }
    json_decref(doc);
    run_free(&r);
    connection_free(c);
}

static void test_receiver_rejects_stale_timestamp(void **state)
{
    const char *body = "{\"order_reference\":\"ORDER-3\",\"state\":\"paid\"}";
    long long now = (long long)time(NULL);
    json_t *reply = NULL, *doc, *list;
    struct pb_connection *c;
    struct run r;

    /* genuinely signed, but 1000 s old, and 1000 s in the future */
    assert_int_equal(post_status(body, SECRET, now - 1000, NULL, "k-old", &reply), 401);
    assert_string_equal(error_code(reply), "timestamp_outside_tolerance");
    json_decref(reply);
    assert_int_equal(post_status(body, SECRET, now + 1000, NULL, "k-future", &reply), 401);
    assert_string_equal(error_code(reply), "timestamp_outside_tolerance");
    json_decref(reply);
    /* within the tolerance passes */
    assert_int_equal(post_status(body, SECRET, now - 200, NULL, "k-recent", &reply), 200);
    json_decref(reply);
    assert_int_equal(stat_of("rejected"), 2);
    assert_int_equal(stat_of("received"), 1);

    /* the connector on a clock 1000 s slow: refused as stale, permanent, says so */
    c = connection_to(NULL, SECRET);
    doc = status_doc("ORDER-4", "paid");
    execute(c, doc, "ORDER-4:paid", "pb-shop-test-4", 1, time(NULL) - 1000, &r);
    assert_int_equal(r.item.rc, PB_ERR_PERMANENT);
    assert_contains(r.item.message, "HTTP 401");
    assert_contains(r.item.message, "tolerance");
    list = statuses_of("ORDER-4");
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    json_decref(doc);
    run_free(&r);
    connection_free(c);
}

/* ---- a redelivery is recorded once ------------------------------------------------------------
 */

static void test_redelivery_recorded_once(void **state)
{
    struct pb_connection *c = connection_to(NULL, SECRET);
    json_t *paid = status_doc("ORDER-5", "paid"), *refunded = status_doc("ORDER-5", "refunded");
    json_t *list;
    time_t now = time(NULL);
    struct run first, again, next;
    char first_id[128];

    execute(c, paid, "ORDER-5:paid", "pb-shop-test-5-paid", 1, now, &first);
    assert_int_equal(first.item.rc, PB_OK);
    snprintf(first_id, sizeof first_id, "%s", first.item.erp_id);
    assert_string_equal(first.item.message, "");

    /* the reply was "lost": the engine tries again later, same key, new signature */
    execute(c, paid, "ORDER-5:paid", "pb-shop-test-5-paid", 2, now + 60, &again);
    assert_int_equal(again.item.rc, PB_OK);
    assert_string_equal(again.item.erp_id, first_id);
    assert_true(json_is_true(json_object_get(again.item.result, "duplicate")));
    assert_contains(again.item.message, "redelivery");

    /* a new state of the same order is a new status */
    execute(c, refunded, "ORDER-5:refunded", "pb-shop-test-5-refunded", 1, now + 61, &next);
    assert_int_equal(next.item.rc, PB_OK);
    assert_string_not_equal(next.item.erp_id, first_id);

    list = statuses_of("ORDER-5");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "state")),
                        "paid");
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "state")),
                        "refunded");
    assert_int_equal(stat_of("received"), 2);
    assert_int_equal(stat_of("duplicates"), 1);

    json_decref(list);
    json_decref(paid);
    json_decref(refunded);
    run_free(&first);
    run_free(&again);
    run_free(&next);
    connection_free(c);
}

/* ---- documents refused before anything is sent ------------------------------------------------
 */

static void expect_refused(struct pb_connection *c, json_t *doc, enum pb_rc rc, const char *needle)
{
    struct run r;
    execute(c, doc, "ref", "pb-shop-test-refused", 1, 0, &r);
    assert_int_equal(r.rc, PB_OK); /* the item carries it */
    if (r.item.rc != rc)
        fail_msg("rc %d (%s), expected %d", r.item.rc, r.item.message, rc);
    assert_contains(r.item.message, needle);
    assert_int_equal(r.item.retry_after_s, -1);
    assert_int_equal(json_array_size(r.trace), 0); /* nothing was sent */
    run_free(&r);
    json_decref(doc);
}

static void test_invalid_state_permanent(void **state)
{
    struct pb_connection *c = connection_to(NULL, SECRET);

    expect_refused(c, status_doc("ORDER-6", "shipped"), PB_ERR_PERMANENT,
                   "state: \"shipped\" is not a state the shop accepts");
    expect_refused(c, status_doc("ORDER-6", "Paid"), PB_ERR_PERMANENT, "lower case");
    expect_refused(c, json_pack("{s:s}", "order_reference", "ORDER-6"), PB_ERR_PERMANENT,
                   "state: missing");
    expect_refused(c, json_pack("{s:s,s:i}", "order_reference", "ORDER-6", "state", 1),
                   PB_ERR_PERMANENT, "state: must be a string");
    /* shape errors are the mapping's */
    expect_refused(c, json_pack("{s:s}", "state", "paid"), PB_ERR_MAPPING, "order_reference");
    expect_refused(c, json_pack("{s:s,s:s}", "order_reference", "A\r\nX-Evil: 1", "state", "paid"),
                   PB_ERR_MAPPING, "order_reference");
    expect_refused(c, json_pack("[]"), PB_ERR_MAPPING, "must be a JSON object");
    expect_refused(c,
                   json_pack("{s:s,s:s,s:{s:I,s:s,s:s}}", "order_reference", "ORDER-6", "state",
                             "paid", "amount", "minor", (json_int_t)1099, "currency", "GBP",
                             "decimal", "10.90"),
                   PB_ERR_MAPPING, "amount.decimal: \"10.90\" disagrees");
    expect_refused(c,
                   json_pack("{s:s,s:s,s:{s:f,s:s}}", "order_reference", "ORDER-6", "state", "paid",
                             "amount", "minor", 10.99, "currency", "GBP"),
                   PB_ERR_MAPPING, "amount.minor");
    expect_refused(c,
                   json_pack("{s:s,s:s,s:{s:I,s:s}}", "order_reference", "ORDER-6", "state", "paid",
                             "amount", "minor", (json_int_t)5, "currency", "XYZ"),
                   PB_ERR_MAPPING, "unknown currency");
    assert_int_equal(stat_of("received") + stat_of("rejected") + stat_of("failed_injected"), 0);

    /* an unknown command */
    {
        json_t *doc = status_doc("ORDER-6", "paid");
        struct pb_call_ctx ctx = {.http = sx.http, .now = time(NULL), .retry_after_s = -1};
        struct pb_sink_item it = {
            .command = "order.cancel", .document = doc, .idempotency_key = "k"};
        struct pb_err err = {0};
        assert_int_equal(c->type->execute(c, &ctx, &it, 1, &err), PB_OK);
        assert_int_equal(it.rc, PB_ERR_PERMANENT);
        assert_contains(it.message, "no command \"order.cancel\"");
        json_decref(doc);
    }
    connection_free(c);
}

/* ---- the shop fails: transient with Retry-After, or permanent with its words ----------------- */

static void test_503_transient_with_retry_after(void **state)
{
    struct pb_connection *c = connection_to(NULL, SECRET);
    json_t *doc = status_doc("ORDER-8", "paid"), *list;
    struct run r;

    assert_int_equal(admin("POST", "/_sandbox/settings",
                           "{\"fail_next\":2,\"fail_status\":503,\"retry_after_s\":17}", NULL),
                     200);
    execute(c, doc, "ORDER-8:paid", "pb-shop-test-8", 1, 0, &r);
    assert_int_equal(r.rc, PB_OK);
    assert_int_equal(r.item.rc, PB_ERR_TRANSIENT);
    assert_int_equal(r.item.retry_after_s, 17);
    assert_contains(r.item.message, "HTTP 503");
    assert_contains(r.item.message, "will retry");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(r.trace, 0), "status")),
                     503);
    run_free(&r);

    execute(c, doc, "ORDER-8:paid", "pb-shop-test-8", 2, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_TRANSIENT);
    assert_int_equal(r.item.retry_after_s, 17);
    run_free(&r);

    /* the shop is back: the third try goes through, once */
    execute(c, doc, "ORDER-8:paid", "pb-shop-test-8", 3, 0, &r);
    assert_int_equal(r.item.rc, PB_OK);
    run_free(&r);
    list = statuses_of("ORDER-8");
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    assert_int_equal(stat_of("failed_injected"), 2);
    assert_int_equal(stat_of("received"), 1);

    /* 429 without Retry-After: transient, no delay asked */
    assert_int_equal(admin("POST", "/_sandbox/settings",
                           "{\"fail_next\":1,\"fail_status\":429,\"retry_after_s\":-1}", NULL),
                     200);
    execute(c, doc, "ORDER-8:paid", "pb-shop-test-8b", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_TRANSIENT);
    assert_int_equal(r.item.retry_after_s, -1);
    assert_contains(r.item.message, "HTTP 429");
    run_free(&r);

    json_decref(doc);
    connection_free(c);
}

static void test_4xx_permanent_with_shop_words(void **state)
{
    struct pb_connection *c = connection_to(NULL, SECRET);
    json_t *doc = status_doc("ORDER-9", "paid");
    struct run r;

    assert_int_equal(
        admin("POST", "/_sandbox/settings", "{\"fail_next\":1,\"fail_status\":422}", NULL), 200);
    execute(c, doc, "ORDER-9:paid", "pb-shop-test-9", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_PERMANENT);
    assert_int_equal(r.item.retry_after_s, -1);
    assert_contains(r.item.message, "the shop refused the status (HTTP 422)");
    assert_contains(r.item.message, "failure injected by fail_next");
    assert_null(strstr(r.item.message, "signing_secret")); /* the hint is for 401/403 only */
    run_free(&r);
    json_decref(doc);
    connection_free(c);
}

static void test_network_error_transient(void **state)
{
    struct pb_connection *c = connection_to("http://127.0.0.1:1/status", SECRET);
    json_t *doc = status_doc("ORDER-10", "paid");
    struct run r;

    execute(c, doc, "ORDER-10:paid", "pb-shop-test-10", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_TRANSIENT);
    assert_int_equal(r.item.retry_after_s, -1);
    assert_contains(r.item.message, "will retry");
    assert_int_equal(json_array_size(r.trace), 1);
    run_free(&r);
    json_decref(doc);
    connection_free(c);
}

/* ---- a scripted server for what the receiver never does -------------------------------------- */

static struct {
    int status;
    const char *body;
    const char *location;
} script;

static enum pb_http_action scripted(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    pb_http_response_set(resp, script.status, "text/plain", script.body, strlen(script.body));
    if (script.location)
        pb_http_response_header(resp, "Location", script.location);
    return PB_HTTP_DONE;
}

static const struct pb_http_route scripted_routes[] = {
    {"POST", "/status", scripted, NULL},
    {NULL, NULL, NULL, NULL},
};

static void test_scripted_replies(void **state)
{
    struct pb_httpd_config cfg = {.routes = scripted_routes};
    struct pb_httpd *server;
    struct pb_err err = {0};
    struct pb_connection *c;
    json_t *doc = status_doc("ORDER-11", "failed");
    char url[96];
    struct run r;

    if (pb_httpd_start(&cfg, &server, &err))
        fail_msg("scripted: %s", err.msg);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/status", pb_httpd_port(server));
    c = connection_to(url, SECRET);

    /* a 2xx that is not JSON: done, erp_id = the idempotency key */
    script.status = 202;
    script.body = "accepted";
    script.location = NULL;
    execute(c, doc, "ORDER-11:failed", "pb-shop-test-11", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_OK);
    assert_string_equal(r.item.erp_id, "pb-shop-test-11");
    assert_null(r.item.result);
    run_free(&r);

    /* a redirect is not followed: permanent, names the fix */
    script.status = 302;
    script.body = "";
    script.location = "https://elsewhere.example/status";
    execute(c, doc, "ORDER-11:failed", "pb-shop-test-11", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_PERMANENT);
    assert_contains(r.item.message, "HTTP 302");
    assert_contains(r.item.message, "elsewhere.example");
    assert_contains(r.item.message, "settings.url");
    run_free(&r);

    /* a 400 in plain text: the shop's words, one line */
    script.status = 400;
    script.body = "order ORDER-11\nis unknown here";
    script.location = NULL;
    execute(c, doc, "ORDER-11:failed", "pb-shop-test-11", 1, 0, &r);
    assert_int_equal(r.item.rc, PB_ERR_PERMANENT);
    assert_contains(r.item.message, "HTTP 400): order ORDER-11 is unknown here");
    run_free(&r);

    pb_httpd_stop(server);
    json_decref(doc);
    connection_free(c);
}

/* ---- the receiver's own settings ------------------------------------------------------------- */

static void test_receiver_settings(void **state)
{
    struct pb_err err = {0};
    json_t *bad = json_pack("{s:i}", "tolerance", 5), *o;
    void *st = sbx_shop_type.create(bad, &err);

    assert_null(st);
    assert_contains(err.msg, "tolerance");
    json_decref(bad);
    /* the framework's keys are not the emulator's business */
    bad = json_pack("{s:i,s:b,s:{}}", "port", 0, "enabled", 1, "faults");
    st = sbx_shop_type.create(bad, &err);
    assert_non_null(st);
    sbx_shop_type.destroy(st);
    json_decref(bad);

    assert_int_equal(admin("POST", "/_sandbox/settings", "{\"fail_status\":200}", NULL), 400);
    assert_int_equal(admin("POST", "/_sandbox/settings", "{\"secret\":\"\"}", NULL), 400);
    assert_int_equal(admin("GET", "/_sandbox/settings", NULL, &o), 200);
    assert_true(json_is_true(json_object_get(o, "secret_set")));
    assert_null(json_object_get(o, "secret")); /* never echoed */
    assert_int_equal(json_integer_value(json_object_get(o, "tolerance_s")), 300);
    json_decref(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_settings),
        cmocka_unit_test_setup(test_signed_status_arrives, test_setup),
        cmocka_unit_test_setup(test_event_header_falls_back, test_setup),
        cmocka_unit_test_setup(test_receiver_rejects_wrong_signature, test_setup),
        cmocka_unit_test_setup(test_receiver_rejects_stale_timestamp, test_setup),
        cmocka_unit_test_setup(test_redelivery_recorded_once, test_setup),
        cmocka_unit_test_setup(test_invalid_state_permanent, test_setup),
        cmocka_unit_test_setup(test_503_transient_with_retry_after, test_setup),
        cmocka_unit_test_setup(test_4xx_permanent_with_shop_words, test_setup),
        cmocka_unit_test_setup(test_network_error_transient, test_setup),
        cmocka_unit_test_setup(test_scripted_replies, test_setup),
        cmocka_unit_test_setup(test_receiver_settings, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
