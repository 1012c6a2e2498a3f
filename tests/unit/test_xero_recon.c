/*
 * tests/unit/test_xero_recon.c: the Xero connector's reconciliation members
 * (src/connectors/xero/xero_recon.c) against the sandbox's Xero emulator.
 *
 * ledger(): 125 sales payments over three days (two pages of Payments), one
 * in EUR, one deleted, one outside the range, a supplier payment, a cash
 * refund of a credit note, and bank transactions (RECEIVE, SPEND, a deleted
 * one, one carrying paybridge's journal mark, one outside the range): the
 * records, their signs, dates, currencies and references, and that page 2
 * was read. post_journal(): a balanced journal posted once (a second call
 * with the same reference returns the same ManualJournalID and the emulator
 * holds exactly one), its reversal with its own reference, an unknown
 * account refused in Xero's words, unbalanced lines, a journal in another
 * currency than the base one (from GET /Organisation, or from
 * settings.base_currency without any call), a malformed journal, and 429 /
 * 500 on the look-up (PB_ERR_TRANSIENT, Retry-After passed on, nothing
 * posted); a 500 on a ledger page.
 *
 * Test data is written through the connector's own HTTP path
 * (pb__xero_call), so it carries the same token and tenant as the calls
 * under test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connectors/connector.h"
#include "connectors/xero/xero_internal.h"
#include "core/json.h"
#include "net/http_client.h"
#include "net/ratelimit.h"
#include "pbtest.h"
#include "sandbox.h"

extern const struct pb_connector_type pb_connector_xero;

#define TENANT "2f9b7d4c-8a1e-4c3b-9f5d-6e0a1b2c3d4e" /* the emulator's default tenant */
#define DAY_2026_11_20 20777                          /* days since 1970-01-01 */

static struct pbt_env sx;

/* ---- fixture --------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    return pbt_env_sandbox(&sx, "xero", json_pack("{s:{s:i,s:b}}", "xero", "port", 0, "limits", 0));
}

static int group_teardown(void **state)
{
    pbt_env_stop(&sx);
    return 0;
}

static void set_faults(const char *json)
{
    pbt_faults(sx.sb, "xero", json);
}

static struct pb_connection *connection_with(json_t *extra)
{
    char api[96], token[96];
    return pbt_connection(
        &pb_connector_xero, "xero-recon",
        json_pack("{s:s,s:s,s:s}", "api_base", pbt_url(api, sizeof api, sx.port, "/api.xro/2.0"),
                  "token_url", pbt_url(token, sizeof token, sx.port, "/connect/token"),
                  "tenant_id", TENANT),
        extra,
        json_pack("{s:s,s:s}", "client_id", "sandbox-client", "client_secret", "sandbox-secret"));
}
static int test_setup(void **state)
{
    set_faults("{\"reset\":true}");
    return pbt_admin(sx.port, "POST", "/_sandbox/reset", "{}", NULL) == 200 ? 0 : -1;
}
/* ---- API access through the connector ----------------------------------------------------------
 */

static json_t *api(struct pb_connection *c, const char *method, const char *path, const char *body,
                   long expect)
{
    struct pb_call_ctx ctx = pbt_ctx(sx.http, NULL, time(NULL));
    struct xero_request rq = {method, path, body, NULL};
    struct pb_http_call call;
    struct pb_err err = {0};
    json_t *reply;
    pb__xero_call(c, &ctx, &rq, &call, &err);
    if (call.status != expect)
        fail_msg("%s %s: HTTP %ld (expected %ld): %.400s", method, path, call.status, expect,
                 call.response ? call.response : err.msg);
    reply = call.response ? json_loadb(call.response, call.response_len, 0, NULL) : NULL;
    pb_http_call_reset(&call);
    return reply;
}

static long long stat_of(struct pb_connection *c, const char *key)
{
    return pbt_stat(sx.port, key);
}
/* A JSON text builder for the bulk bodies. */
struct text {
    char *p;
    size_t len, cap;
};

static void add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = (t->len + (size_t)n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        assert_non_null(t->p);
    }
    va_start(ap, fmt);
    vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static const char *id_at(json_t *reply, const char *envelope, size_t i, const char *key)
{
    const char *s = json_string_value(
        json_object_get(json_array_get(json_object_get(reply, envelope), i), key));
    if (!s)
        fail_msg("no %s[%zu].%s", envelope, i, key);
    return s;
}

/* The record of `records` with this reference (and kind), or NULL. */
static json_t *record_by_ref(json_t *records, const char *kind, const char *reference)
{
    size_t i;
    json_t *r;
    json_array_foreach(records, i, r)
    {
        if (!strcmp(json_string_value(json_object_get(r, "reference")), reference) &&
            !strcmp(json_string_value(json_object_get(r, "kind")), kind))
            return r;
    }
    return NULL;
}

static void expect_record(json_t *records, const char *kind, const char *reference, long long minor,
                          const char *currency, const char *date, const char *gateway_ref)
{
    json_t *r = record_by_ref(records, kind, reference);
    if (!r)
        fail_msg("no %s record with reference %s", kind, reference);
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), minor);
    assert_string_equal(json_string_value(json_object_get(r, "currency")), currency);
    assert_string_equal(json_string_value(json_object_get(r, "date")), date);
    assert_string_equal(json_string_value(json_object_get(r, "gateway_ref")), gateway_ref);
    assert_true(json_string_length(json_object_get(r, "record_id")) == 36);
}

/* ---- ledger -------------------------------------------------------------------------------------
 */

static void test_ledger_payments_refunds_pages(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = {sx.http, json_array(), time(NULL), -1};
    struct text t = {0};
    json_t *reply, *records = json_array(), *call;
    char cn_id[64], bill_id[64], deleted_id[64], path[128];
    struct pb_err err = {0};
    static const char *const dates[] = {"2026-11-20", "2026-11-21", "2026-11-22"};
    size_t i, page2 = 0;
    (void)state;

    /* 124 GBP invoices and one EUR invoice, each paid in full */
    add(&t, "{\"Invoices\":[");
    for (int k = 0; k < 125; k++)
        add(&t,
            "%s{\"Type\":\"ACCREC\",\"Contact\":{\"Name\":\"Shop customer\"},\"Date\":"
            "\"2026-11-19\",\"DueDate\":\"2026-11-19\",\"Status\":\"AUTHORISED\","
            "\"CurrencyCode\":\"%s\",\"Reference\":\"VTX-%03d\",\"LineAmountTypes\":\"NoTax\","
            "\"LineItems\":[{\"Description\":\"Opayo payment VTX-%03d (Opayo txn T%03d)\","
            "\"Quantity\":1,\"UnitAmount\":%d.%02d,\"AccountCode\":\"200\"}]}",
            k ? "," : "", k == 7 ? "EUR" : "GBP", k, k, k, 10 + k, k % 100);
    add(&t, "]}");
    reply = api(c, "PUT", "/Invoices", t.p, 200);
    t.len = 0;
    add(&t, "{\"Payments\":[");
    for (int k = 0; k < 125; k++)
        add(&t,
            "%s{\"Invoice\":{\"InvoiceID\":\"%s\"},\"Account\":{\"Code\":\"091\"},"
            "\"Date\":\"%s\",\"Amount\":%d.%02d,\"Reference\":\"VTX-%03d\"}",
            k ? "," : "", id_at(reply, "Invoices", (size_t)k, "InvoiceID"),
            k == 124 ? "2026-11-23" : dates[k % 3], 10 + k, k % 100, k);
    add(&t, "]}");
    json_decref(reply);
    reply = api(c, "PUT", "/Payments", t.p, 200);
    /* VTX-005's payment is deleted */
    snprintf(deleted_id, sizeof deleted_id, "%s", id_at(reply, "Payments", 5, "PaymentID"));
    json_decref(reply);
    snprintf(path, sizeof path, "/Payments/%s", deleted_id);
    json_decref(api(c, "POST", path, "{\"Status\":\"DELETED\"}", 200));

    /* a refund: credit note + cash refund of it (ARCREDITPAYMENT) */
    reply = api(c, "PUT", "/CreditNotes",
                "{\"CreditNotes\":[{\"Type\":\"ACCRECCREDIT\",\"Contact\":{\"Name\":\"Shop "
                "customer\"},\"Date\":\"2026-11-21\",\"Status\":\"AUTHORISED\",\"Reference\":"
                "\"RF-1\",\"LineAmountTypes\":\"NoTax\",\"LineItems\":[{\"Description\":\"Refund "
                "of VTX-001\",\"Quantity\":1,\"UnitAmount\":4.50,\"AccountCode\":\"200\"}]}]}",
                200);
    snprintf(cn_id, sizeof cn_id, "%s", id_at(reply, "CreditNotes", 0, "CreditNoteID"));
    json_decref(reply);
    t.len = 0;
    add(&t,
        "{\"Payments\":[{\"CreditNote\":{\"CreditNoteID\":\"%s\"},\"Account\":{\"Code\":"
        "\"091\"},\"Date\":\"2026-11-22\",\"Amount\":4.50,\"Reference\":\"RF-1\"}]}",
        cn_id);
    json_decref(api(c, "PUT", "/Payments", t.p, 200));

    /* a supplier bill, paid: not a customer's money */
    reply = api(c, "PUT", "/Invoices",
                "{\"Invoices\":[{\"Type\":\"ACCPAY\",\"Contact\":{\"Name\":\"Supplier\"},"
                "\"Date\":\"2026-11-20\",\"DueDate\":\"2026-11-20\",\"Status\":\"AUTHORISED\","
                "\"InvoiceNumber\":\"BILL-1\",\"LineAmountTypes\":\"NoTax\",\"LineItems\":[{"
                "\"Description\":\"paper\",\"Quantity\":1,\"UnitAmount\":30,\"AccountCode\":"
                "\"404\"}]}]}",
                200);
    snprintf(bill_id, sizeof bill_id, "%s", id_at(reply, "Invoices", 0, "InvoiceID"));
    json_decref(reply);
    t.len = 0;
    add(&t,
        "{\"Payments\":[{\"Invoice\":{\"InvoiceID\":\"%s\"},\"Account\":{\"Code\":\"090\"},"
        "\"Date\":\"2026-11-21\",\"Amount\":30,\"Reference\":\"BILL-1\"}]}",
        bill_id);
    json_decref(api(c, "PUT", "/Payments", t.p, 200));

    /* bank transactions: RECEIVE, SPEND, deleted, paybridge's own, outside the range */
    reply =
        api(c, "PUT", "/BankTransactions",
            "{\"BankTransactions\":["
            "{\"Type\":\"RECEIVE\",\"Contact\":{\"Name\":\"Walk-in\"},\"BankAccount\":{"
            "\"Code\":\"091\"},\"Date\":\"2026-11-21\",\"Reference\":\"BT-IN\",\"LineItems\":"
            "[{\"Description\":\"phone order (Opayo txn TX-77)\",\"UnitAmount\":12.34,"
            "\"AccountCode\":\"200\"}]},"
            "{\"Type\":\"SPEND\",\"Contact\":{\"Name\":\"Walk-in\"},\"BankAccount\":{"
            "\"Code\":\"091\"},\"Date\":\"2026-11-22\",\"Reference\":\"BT-OUT\",\"CurrencyCode\":"
            "\"EUR\",\"LineItems\":[{\"Description\":\"goodwill\",\"UnitAmount\":3.21,"
            "\"AccountCode\":\"200\"}]},"
            "{\"Type\":\"RECEIVE\",\"Contact\":{\"Name\":\"Walk-in\"},\"BankAccount\":{"
            "\"Code\":\"091\"},\"Date\":\"2026-11-21\",\"Reference\":\"BT-DEL\",\"LineItems\":"
            "[{\"UnitAmount\":1,\"AccountCode\":\"200\"}]},"
            "{\"Type\":\"RECEIVE\",\"Contact\":{\"Name\":\"Walk-in\"},\"BankAccount\":{"
            "\"Code\":\"091\"},\"Date\":\"2026-11-21\",\"Reference\":\"[paybridge PB-x-1]\","
            "\"LineItems\":[{\"UnitAmount\":2,\"AccountCode\":\"200\"}]},"
            "{\"Type\":\"RECEIVE\",\"Contact\":{\"Name\":\"Walk-in\"},\"BankAccount\":{"
            "\"Code\":\"091\"},\"Date\":\"2026-11-19\",\"Reference\":\"BT-EARLY\","
            "\"LineItems\":[{\"UnitAmount\":3,\"AccountCode\":\"200\"}]}]}",
            200);
    snprintf(path, sizeof path, "/BankTransactions/%s",
             id_at(reply, "BankTransactions", 2, "BankTransactionID"));
    json_decref(reply);
    json_decref(api(c, "POST", path, "{\"BankTransactions\":[{\"Status\":\"DELETED\"}]}", 200));
    free(t.p);

    assert_int_equal(c->type->ledger(c, &ctx, DAY_2026_11_20, DAY_2026_11_20 + 2, records, &err),
                     PB_OK);
    /* 125 payments - 1 deleted - 1 dated 11-23, + 1 refund, + 2 bank transactions */
    assert_int_equal(json_array_size(records), 123 + 1 + 2);
    expect_record(records, "payment", "VTX-000", 1000, "GBP", "2026-11-20", "");
    expect_record(records, "payment", "VTX-001", 1101, "GBP", "2026-11-21", "");
    expect_record(records, "payment", "VTX-007", 1707, "EUR", "2026-11-21", "");
    expect_record(records, "payment", "VTX-101", 11101, "GBP", "2026-11-22", "");
    expect_record(records, "refund", "RF-1", -450, "GBP", "2026-11-22", "");
    expect_record(records, "payment", "BT-IN", 1234, "GBP", "2026-11-21", "TX-77");
    expect_record(records, "refund", "BT-OUT", -321, "EUR", "2026-11-22", "");
    assert_null(record_by_ref(records, "payment", "VTX-005")); /* deleted */
    assert_null(record_by_ref(records, "payment", "VTX-124")); /* 2026-11-23 */
    assert_null(record_by_ref(records, "payment", "BILL-1"));  /* a supplier's */
    assert_null(record_by_ref(records, "refund", "BILL-1"));
    assert_null(record_by_ref(records, "payment", "BT-DEL"));
    assert_null(record_by_ref(records, "payment", "BT-EARLY"));
    assert_null(record_by_ref(records, "payment", "[paybridge PB-x-1]"));
    /* the deleted payment's record id is not among the records */
    json_array_foreach(records, i, call)
    {
        assert_string_not_equal(json_string_value(json_object_get(call, "record_id")), deleted_id);
    }
    /* both pages of Payments were read, with the Date filter */
    json_array_foreach(ctx.trace, i, call)
    {
        const char *url = pb_json_str(call, "url");
        if (url && strstr(url, "/Payments?") && strstr(url, "page=2")) {
            page2++;
            assert_contains(url, "where=Date%20%3E%3D%20DateTime%282026%2C11%2C20%29");
        }
    }
    assert_int_equal(page2, 1);
    json_decref(records);
    json_decref(ctx.trace);
    pbt_connection_free(c);
}

static void test_ledger_server_error_is_transient(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = pbt_ctx(sx.http, NULL, time(NULL));
    json_t *records = json_array();
    struct pb_err err = {0};
    (void)state;
    set_faults("{\"error_rate\":1.0}");
    assert_int_equal(c->type->ledger(c, &ctx, DAY_2026_11_20, DAY_2026_11_20, records, &err),
                     PB_ERR_TRANSIENT);
    assert_contains(err.msg, "reading Payments");
    assert_int_equal(json_array_size(records), 0);
    set_faults("{\"reset\":true}");
    json_decref(records);
    pbt_connection_free(c);
}

/* ---- post_journal
 * -------------------------------------------------------------------------------- */

/* A settled batch: gross 102.35 out of clearing, fees 2.35, net 100.00 to bank. */
static json_t *batch_journal(const char *reference, const char *currency, const char *fee_account,
                             long long net, long long fee)
{
    return json_pack(
        "{s:s,s:s,s:s,s:s,s:[{s:s,s:I,s:s},{s:s,s:I,s:s},{s:s,s:I,s:s}]}", "reference", reference,
        "date", "2026-11-21", "narration", "Opayo settlement batch 7", "currency", currency,
        "lines", "account", "090", "amount_minor", (json_int_t)net, "description", "net to bank",
        "account", fee_account, "amount_minor", (json_int_t)fee, "description", "fees", "account",
        "091", "amount_minor", (json_int_t) - (net + fee), "description", "gross from clearing");
}

/* A two-line journal: `debit` on dr, credited to cr. */
static json_t *two_line_journal(const char *reference, const char *dr, const char *cr,
                                long long debit)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:[{s:s,s:I,s:s},{s:s,s:I,s:s}]}", "reference",
                     reference, "date", "2026-11-21", "narration", "auto-adjustment", "currency",
                     "GBP", "lines", "account", dr, "amount_minor", (json_int_t)debit,
                     "description", "settled amount differs", "account", cr, "amount_minor",
                     (json_int_t)-debit, "description", "");
}

/* The records of `resource` in the emulator whose Reference starts with `ref`. */
static json_t *records_in_emulator(struct pb_connection *c, const char *resource,
                                   const char *ref)
{
    char path[256];
    CURL *e = curl_easy_init();
    char where[160], *esc;
    json_t *reply, *list;
    snprintf(where, sizeof where, "Reference.StartsWith(\"%s\")", ref);
    esc = curl_easy_escape(e, where, 0);
    snprintf(path, sizeof path, "/%s?where=%s", resource, esc);
    curl_free(esc);
    curl_easy_cleanup(e);
    reply = api(c, "GET", path, NULL, 200);
    list = json_incref(json_object_get(reply, resource));
    json_decref(reply);
    return list;
}

static json_t *journals_in_emulator(struct pb_connection *c)
{
    json_t *reply = api(c, "GET", "/ManualJournals", NULL, 200), *list;
    list = json_incref(json_object_get(reply, "ManualJournals"));
    json_decref(reply);
    return list;
}

static int64_t minor(json_t *obj, const char *key)
{
    int64_t m = 0;
    struct pb_err e = {0};
    if (pb_json_to_minor(json_object_get(obj, key), "GBP", &m, &e) != PB_OK)
        fail_msg("%s is not an amount: %s", key, e.msg);
    return m;
}

/* Calls in the trace with this method whose URL holds `part`. */
static size_t traced(json_t *trace, const char *method, const char *part)
{
    size_t i, n = 0;
    json_t *call;
    json_array_foreach(trace, i, call)
    {
        const char *url = pb_json_str(call, "url"), *m = pb_json_str(call, "method");
        n += url && m && !strcmp(m, method) && strstr(url, part);
    }
    return n;
}

/* POST /_sandbox/fail_next: the next call of method + path fails. */
static void fail_next(const char *method, const char *path, int status, int after_commit)
{
    struct pb_http_call call = {0};
    struct pb_err err = {0};
    char url[96], body[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/_sandbox/fail_next", sx.port);
    snprintf(body, sizeof body,
             "{\"method\":\"%s\",\"path\":\"/api.xro/2.0%s\",\"status\":%d,\"after_commit\":%s}",
             method, path, status, after_commit ? "true" : "false");
    call.method = "POST";
    call.url = url;
    call.body = body;
    call.body_len = strlen(body);
    call.timeout_ms = 10000;
    assert_int_equal(pb_http_perform(sx.http, &call, &err), PB_OK);
    assert_int_equal(call.status, 200);
    pb_http_call_reset(&call);
}

/* The settlement journal (Dr bank 090 net, Dr fees 404, Cr clearing 091
 * gross; both 090 and 091 BANK) becomes a transfer 091 -> 090 of the net and
 * a SPEND of the fees out of 091, once across calls; its undo (lines
 * negated) a transfer back and a RECEIVE; neither is read back by ledger(). */
static void test_post_journal_settlement_once(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = {sx.http, json_array(), time(NULL), -1};
    json_t *j = batch_journal("PB-opayo-demo-100007", "GBP", "404", 10000, 235), *list, *el;
    json_t *rev, *records = json_array();
    char id1[128], id2[128], id3[128], expect[128];
    struct pb_err err = {0};
    (void)state;
    assert_int_equal(c->type->post_journal(c, &ctx, j, id1, sizeof id1, &err), PB_OK);
    assert_int_equal(stat_of(c, "bank_transfers"), 1);
    assert_int_equal(stat_of(c, "bank_transactions"), 1);
    assert_int_equal(stat_of(c, "manual_journals"), 0);
    /* the transfer: net from clearing to the bank */
    list = records_in_emulator(c, "BankTransfers", "[paybridge PB-opayo-demo-100007]");
    assert_int_equal(json_array_size(list), 1);
    el = json_array_get(list, 0);
    assert_string_equal(pb_json_str(el, "FromBankAccount.Code"), "091");
    assert_string_equal(pb_json_str(el, "ToBankAccount.Code"), "090");
    assert_int_equal(minor(el, "Amount"), 10000);
    assert_string_equal(pb_json_str(el, "Reference"), "[paybridge PB-opayo-demo-100007]");
    assert_string_equal(pb_json_str(el, "Date"), "/Date(1795219200000+0000)/");
    snprintf(expect, sizeof expect, "%s,", pb_json_str(el, "BankTransferID"));
    json_decref(list);
    /* the fees: a SPEND out of clearing (the transfer's two legs are not it) */
    list = records_in_emulator(c, "BankTransactions", "[paybridge PB-opayo-demo-100007]");
    assert_int_equal(json_array_size(list), 3);
    el = NULL;
    for (size_t i = 0; i < json_array_size(list); i++)
        if (!strcmp(pb_json_str(json_array_get(list, i), "Type"), "SPEND"))
            el = json_array_get(list, i);
    assert_non_null(el);
    assert_string_equal(pb_json_str(el, "BankAccount.Code"), "091");
    assert_string_equal(pb_json_str(el, "Contact.Name"), "paybridge reconciliation");
    assert_int_equal(minor(el, "Total"), 235);
    assert_int_equal(json_array_size(json_object_get(el, "LineItems")), 1);
    assert_string_equal(pb_json_str(json_array_get(json_object_get(el, "LineItems"), 0),
                                    "AccountCode"),
                        "404");
    assert_string_equal(pb_json_str(json_array_get(json_object_get(el, "LineItems"), 0),
                                    "Description"),
                        "fees");
    strncat(expect, pb_json_str(el, "BankTransactionID"), sizeof expect - strlen(expect) - 1);
    assert_string_equal(id1, expect); /* the parts' ids, transfer first */
    json_decref(list);
    assert_int_equal(traced(ctx.trace, "PUT", "/ManualJournals"), 0);

    /* the same reference again: the same ids, nothing posted, accounts not re-read */
    assert_int_equal(c->type->post_journal(c, &ctx, j, id2, sizeof id2, &err), PB_OK);
    assert_string_equal(id2, id1);
    assert_int_equal(traced(ctx.trace, "PUT", "/BankTransfers"), 1);
    assert_int_equal(traced(ctx.trace, "PUT", "/BankTransactions"), 1);
    assert_int_equal(traced(ctx.trace, "GET", "/BankTransfers?where="), 2);
    assert_int_equal(traced(ctx.trace, "GET", "/Accounts"), 1);
    assert_int_equal(stat_of(c, "bank_transfers"), 1);
    assert_int_equal(stat_of(c, "bank_transactions"), 1);

    /* the undo: lines negated, its own reference: 090 -> 091 and a RECEIVE into 090 */
    rev = batch_journal("PB-opayo-demo-100007-rev", "GBP", "404", -10000, -235);
    assert_int_equal(c->type->post_journal(c, &ctx, rev, id3, sizeof id3, &err), PB_OK);
    assert_int_equal(strlen(id3), 73);
    assert_string_not_equal(id3, id1);
    list = records_in_emulator(c, "BankTransfers", "[paybridge PB-opayo-demo-100007-rev]");
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(pb_json_str(json_array_get(list, 0), "FromBankAccount.Code"), "090");
    assert_string_equal(pb_json_str(json_array_get(list, 0), "ToBankAccount.Code"), "091");
    assert_int_equal(minor(json_array_get(list, 0), "Amount"), 10235);
    json_decref(list);
    assert_int_equal(stat_of(c, "bank_transfers"), 2);
    assert_int_equal(stat_of(c, "bank_transactions"), 2);
    /* "PB-...-100007" does not find "PB-...-100007-rev" nor the other way round */
    assert_int_equal(c->type->post_journal(c, &ctx, rev, id2, sizeof id2, &err), PB_OK);
    assert_string_equal(id2, id3);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id2, sizeof id2, &err), PB_OK);
    assert_string_equal(id2, id1);
    assert_int_equal(stat_of(c, "bank_transfers"), 2);
    assert_int_equal(stat_of(c, "bank_transactions"), 2);
    /* paybridge's own postings are not customers' money */
    assert_int_equal(c->type->ledger(c, &ctx, DAY_2026_11_20, DAY_2026_11_20 + 2, records, &err),
                     PB_OK);
    assert_int_equal(json_array_size(records), 0);
    json_decref(records);
    json_decref(rev);
    json_decref(j);
    json_decref(ctx.trace);
    pbt_connection_free(c);
}

/* The second part fails: the first stays posted and a retry posts only the
 * second; a part whose reply was lost (posted, then 500) is found, not
 * posted again. */
static void test_post_journal_retry_after_part_failed(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = {sx.http, json_array(), time(NULL), -1};
    json_t *j = batch_journal("PB-part-1", "GBP", "404", 10000, 235);
    char id[128], id2[128];
    struct pb_err err = {0};
    (void)state;
    fail_next("PUT", "/BankTransactions", 503, 0);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_TRANSIENT);
    assert_string_equal(id, "");
    assert_contains(err.msg, "journal PB-part-1, part 2 of 2 (SPEND on 091)");
    assert_contains(err.msg, "a retry posts only the rest");
    assert_int_equal(stat_of(c, "bank_transfers"), 1);
    assert_int_equal(stat_of(c, "bank_transactions"), 0);
    json_array_clear(ctx.trace);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_OK);
    assert_int_equal(strlen(id), 73);
    assert_int_equal(traced(ctx.trace, "PUT", "/BankTransfers"), 0);
    assert_int_equal(traced(ctx.trace, "PUT", "/BankTransactions"), 1);
    assert_int_equal(stat_of(c, "bank_transfers"), 1);
    assert_int_equal(stat_of(c, "bank_transactions"), 1);
    /* a lost reply: the transfer is made, the connector hears 500 */
    json_decref(j);
    j = batch_journal("PB-part-2", "GBP", "404", 5000, 100);
    fail_next("PUT", "/BankTransfers", 500, 1);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "part 1 of 2 (bank transfer 091 -> 090)");
    assert_int_equal(stat_of(c, "bank_transfers"), 2);
    assert_int_equal(stat_of(c, "bank_transactions"), 1);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_OK);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id2, sizeof id2, &err), PB_OK);
    assert_string_equal(id, id2);
    assert_int_equal(stat_of(c, "bank_transfers"), 2);
    assert_int_equal(stat_of(c, "bank_transactions"), 2);
    assert_int_equal(stat_of(c, "manual_journals"), 0);
    json_decref(j);
    json_decref(ctx.trace);
    pbt_connection_free(c);
}

/* An auto-adjustment (Dr clearing d, Cr Other Revenue d) is one RECEIVE into
 * clearing; the other way round one SPEND; a journal with no bank line stays
 * a manual journal, once. */
static void test_post_journal_adjustment_and_manual(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = pbt_ctx(sx.http, NULL, time(NULL));
    json_t *j = two_line_journal("PB-adj-1", "091", "260", 1), *list, *el;
    char id[128], id2[128];
    struct pb_err err = {0};
    (void)state;
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_OK);
    assert_int_equal(strlen(id), 36);
    list = records_in_emulator(c, "BankTransactions", "[paybridge PB-adj-1]");
    assert_int_equal(json_array_size(list), 1);
    el = json_array_get(list, 0);
    assert_string_equal(pb_json_str(el, "BankTransactionID"), id);
    assert_string_equal(pb_json_str(el, "Type"), "RECEIVE");
    assert_string_equal(pb_json_str(el, "BankAccount.Code"), "091");
    assert_int_equal(minor(el, "Total"), 1);
    assert_string_equal(pb_json_str(json_array_get(json_object_get(el, "LineItems"), 0),
                                    "AccountCode"),
                        "260");
    /* a line without a description carries the narration */
    assert_string_equal(pb_json_str(json_array_get(json_object_get(el, "LineItems"), 0),
                                    "Description"),
                        "auto-adjustment");
    json_decref(list);
    json_decref(j);
    j = two_line_journal("PB-adj-2", "260", "091", 4);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_OK);
    list = records_in_emulator(c, "BankTransactions", "[paybridge PB-adj-2]");
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(pb_json_str(json_array_get(list, 0), "Type"), "SPEND");
    assert_int_equal(minor(json_array_get(list, 0), "Total"), 4);
    json_decref(list);
    assert_int_equal(stat_of(c, "bank_transactions"), 2);
    assert_int_equal(stat_of(c, "bank_transfers"), 0);
    assert_int_equal(stat_of(c, "manual_journals"), 0);
    json_decref(j);

    /* no bank line: a manual journal, once */
    j = two_line_journal("PB-manual-1", "404", "260", 235);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_OK);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id2, sizeof id2, &err), PB_OK);
    assert_string_equal(id2, id);
    list = journals_in_emulator(c);
    assert_int_equal(json_array_size(list), 1);
    el = json_array_get(list, 0);
    assert_string_equal(pb_json_str(el, "ManualJournalID"), id);
    assert_string_equal(pb_json_str(el, "Narration"), "auto-adjustment [paybridge PB-manual-1]");
    assert_string_equal(pb_json_str(el, "Status"), "POSTED");
    assert_int_equal(minor(json_array_get(json_object_get(el, "JournalLines"), 1), "LineAmount"),
                     -235);
    json_decref(list);
    assert_int_equal(stat_of(c, "manual_journals"), 1);
    assert_int_equal(stat_of(c, "bank_transactions"), 2);
    json_decref(j);
    pbt_connection_free(c);
}

static void test_post_journal_refused(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = pbt_ctx(sx.http, NULL, time(NULL));
    json_t *j = batch_journal("PB-bad-account", "GBP", "999", 10000, 235);
    char id[128] = "x";
    struct pb_err err = {0};
    (void)state;
    /* an account Xero does not have: refused before any part is posted */
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "journal PB-bad-account: account code '999' is not in Xero's chart");
    assert_string_equal(id, "");
    json_decref(j);
    /* unbalanced with a bank line: nothing posted (100.00 + 2.35 against -102.34) */
    j = batch_journal("PB-unbalanced", "GBP", "404", 10000, 235);
    json_object_set_new(json_array_get(json_object_get(j, "lines"), 2), "amount_minor",
                        json_integer(-10234));
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "the total debits (102.35) must equal total credits (-102.34)");
    json_decref(j);
    /* unbalanced without one: Xero refuses the manual journal in its words */
    j = two_line_journal("PB-unbalanced-2", "404", "260", 235);
    json_object_set_new(json_array_get(json_object_get(j, "lines"), 1), "amount_minor",
                        json_integer(-234));
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "The total debits (2.35) must equal total credits (-2.34)");
    json_decref(j);
    /* not the contract's shape: refused before any call */
    j = json_pack("{s:s,s:s,s:s,s:[{s:s,s:s}]}", "reference", "PB-shape", "date", "21/11/2026",
                  "currency", "GBP", "lines", "account", "090", "amount_minor", "1.00");
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "date must be YYYY-MM-DD");
    json_decref(j);
    assert_int_equal(stat_of(c, "manual_journals"), 0);
    assert_int_equal(stat_of(c, "bank_transfers"), 0);
    assert_int_equal(stat_of(c, "bank_transactions"), 0);
    pbt_connection_free(c);
}

static void test_post_journal_base_currency(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_call_ctx ctx = {sx.http, json_array(), time(NULL), -1};
    json_t *j = batch_journal("PB-eur-1", "EUR", "404", 10000, 235);
    char id[128];
    struct pb_err err = {0};
    (void)state;
    /* the base currency read from GET /Organisation (the emulator's GBP) */
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "is in EUR");
    assert_contains(err.msg, "base currency GBP");
    json_decref(j);
    pbt_connection_free(c);
    json_decref(ctx.trace);

    /* settings.base_currency: refused without a single call */
    c = connection_with(json_pack("{s:s}", "base_currency", "EUR"));
    ctx.trace = json_array();
    j = batch_journal("PB-gbp-1", "GBP", "404", 10000, 235);
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "base currency EUR");
    assert_int_equal(json_array_size(ctx.trace), 0);
    json_decref(j);
    json_decref(ctx.trace);
    assert_int_equal(stat_of(c, "manual_journals"), 0);
    pbt_connection_free(c);

    /* a bad setting is named */
    {
        struct pb_connection *bad = calloc(1, sizeof *bad);
        assert_non_null(bad);
        bad->magic = PB_CONNECTION_MAGIC;
        bad->type = &pb_connector_xero;
        bad->settings = json_pack("{s:s,s:s}", "tenant_id", TENANT, "base_currency", "pounds");
        bad->secrets = json_pack("{s:s,s:s}", "client_id", "a", "client_secret", "b");
        assert_int_equal(bad->type->init(bad, &err), PB_ERR_CONFIG);
        assert_contains(err.msg, "settings.base_currency");
        json_decref(bad->settings);
        json_decref(bad->secrets);
        free(bad);
    }
}

static void test_post_journal_lookup_transient(void **state)
{
    struct pb_connection *c = connection_with(json_pack("{s:s}", "base_currency", "GBP"));
    struct pb_call_ctx ctx = pbt_ctx(sx.http, NULL, time(NULL));
    json_t *j = batch_journal("PB-retry-1", "GBP", "404", 10000, 235);
    char id[128];
    struct pb_err err = {0};
    (void)state;
    /* the token first, so that the burst hits the chart of accounts */
    json_decref(api(c, "GET", "/Organisation", NULL, 200));
    set_faults("{\"burst_429\":1,\"retry_after_s\":2}");
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "reading the chart of accounts");
    assert_contains(err.msg, "429");
    assert_int_equal(ctx.retry_after_s, 2);
    set_faults("{\"reset\":true}");
    set_faults("{\"error_rate\":1.0}");
    ctx.retry_after_s = -1;
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "HTTP 50");
    set_faults("{\"reset\":true}");
    assert_int_equal(stat_of(c, "bank_transfers"), 0);
    /* and once Xero answers again, it is posted, once */
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_OK);
    assert_int_equal(stat_of(c, "bank_transfers"), 1);
    assert_int_equal(stat_of(c, "bank_transactions"), 1);
    json_decref(j);
    /* the accounts now cached, a 429 hits the look-up: nothing is posted */
    j = batch_journal("PB-retry-2", "GBP", "404", 10000, 235);
    set_faults("{\"burst_429\":1,\"retry_after_s\":3}");
    ctx.retry_after_s = -1;
    assert_int_equal(c->type->post_journal(c, &ctx, j, id, sizeof id, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "reading BankTransfers");
    assert_int_equal(ctx.retry_after_s, 3);
    set_faults("{\"reset\":true}");
    assert_int_equal(stat_of(c, "bank_transfers"), 1);
    json_decref(j);
    pbt_connection_free(c);
}

static void test_caps(void **state)
{
    (void)state;
    assert_true(pb_connector_xero.caps & PB_CAP_LEDGER);
    assert_true(pb_connector_xero.caps & PB_CAP_JOURNAL);
    assert_true(pb_connector_xero.caps & PB_CAP_SINK);
    assert_non_null(pb_connector_xero.ledger);
    assert_non_null(pb_connector_xero.post_journal);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_caps),
        cmocka_unit_test_setup(test_ledger_payments_refunds_pages, test_setup),
        cmocka_unit_test_setup(test_ledger_server_error_is_transient, test_setup),
        cmocka_unit_test_setup(test_post_journal_settlement_once, test_setup),
        cmocka_unit_test_setup(test_post_journal_retry_after_part_failed, test_setup),
        cmocka_unit_test_setup(test_post_journal_adjustment_and_manual, test_setup),
        cmocka_unit_test_setup(test_post_journal_refused, test_setup),
        cmocka_unit_test_setup(test_post_journal_base_currency, test_setup),
        cmocka_unit_test_setup(test_post_journal_lookup_transient, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
