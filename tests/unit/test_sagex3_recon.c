/*
 * tests/unit/test_sagex3_recon.c: the reconciliation slots of the Sage X3
 * connector (src/connectors/sagex3/sagex3_recon.c: ledger, post_journal)
 * against the sandbox's X3 emulator (sandbox/sagex3.c).
 *
 * The emulator is started directly (sbx_sagex3_type.create, pb_httpd on port
 * 0) with closed_before 20200101, as test_connector_sagex3.c does; every test
 * starts with POST /_sandbox/reset. Records are made through the sink's own
 * commands (customer.upsert, salesorder.create, payment.create,
 * journal.create), so the ledger reads what paybridge itself posts.
 *
 * Covered: ledger reads only the PAY records dated in the range, page by
 * page (ledger_page_size 2: the query count is asserted), with NUM,
 * REF as gateway_ref, exact amounts (USD and JPY) and dates; the refund
 * credit memo (a GACC crediting refund_account) as a negative refund, and
 * neither the chargeback journal nor paybridge's own journals; without
 * refund_account no GACC is read. post_journal posts once: a second call with
 * the same reference returns the same NUM and the emulator holds one journal;
 * the reversal is a second journal with its own reference; the GACC fields on
 * the wire (TYP, ACCDAT, FCY, REF, DES, DEB/CDT decimals). X3's refusals
 * (unknown account, closed period) are PB_ERR_PERMANENT with X3's words; an
 * unbalanced journal and bad input are refused before any call; no
 * journal_type is PB_ERR_CONFIG. A Server Fault (HTTP 500), a busy pool, a
 * lost reply, a timeout and an unreachable X3 are PB_ERR_TRANSIENT, and the
 * retry after a lost reply finds the journal instead of posting it twice.
 *
 * Scripted server (replies the emulator does not give): a query that lists
 * only NUM and REF (each record is read, and one X3 dated outside the range
 * is left out), the paging criteria on the wire, pages that do not advance,
 * an amount the currency cannot hold and a line without NUM (permanent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "connectors/connector.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "recon/recon.h"
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

static json_t *stats(void)
{
    return pbt_stats(sx.port);
}
static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}
/* How many SOAP operations of one kind ("query", "read", "save") so far. */
static long long ops_of(const char *op)
{
    json_t *s = stats();
    long long v = json_integer_value(json_object_get(json_object_get(s, "operations"), op));
    json_decref(s);
    return v;
}

static void inject(const char *body)
{
    assert_int_equal(admin("POST", "/_sandbox/inject", body, NULL), 200);
}

/* The emulator's journals (array, new reference). */
static json_t *journals(void)
{
    json_t *r, *j;
    assert_int_equal(admin("GET", "/_sandbox/records", NULL, &r), 200);
    j = json_incref(json_object_get(r, "journals"));
    json_decref(r);
    assert_true(json_is_array(j));
    return j;
}

/* ---- fixture ------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    return pbt_env_emulator(&sx, &sbx_sagex3_type,
                            json_pack("{s:s,s:[s,s,s,s,s,s]}", "closed_before", "20200101",
                                      "accounts", "5120000", "4110000", "7070000", "6270000",
                                      "5115000", "6278000"),
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

/* A connection to `port`: journal_type ODJ, journal_site US011,
 * refund_account 4110000, page size 2; `extra` (taken) overrides, and its
 * nulls remove a setting. */
static struct pb_connection *connection_at(int port, json_t *extra)
{
    char base[96];
    json_t *settings =
        json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:s,s:i}", "base_url",
                  pbt_url(base, sizeof base, port, NULL), "pool_alias", "SEED", "default_site",
                  "FR011", "timeout_ms", 10000, "journal_type", "ODJ", "journal_site", "US011",
                  "refund_account", "4110000", "ledger_page_size", 2);
    if (extra) {
        const char *key;
        json_t *v;
        json_object_foreach(extra, key, v)
        {
            if (json_is_null(v)) /* null removes a default */
                json_object_del(settings, key);
            else
                json_object_set(settings, key, v);
        }
        json_decref(extra);
    }
    return pbt_connection(&pb_connector_sagex3, "x3-recon", settings, NULL,
                          json_pack("{s:s,s:s}", "username", "admin", "password", "sandbox-x3"));
}
static struct pb_connection *connection(void)
{
    return connection_at(sx.port, NULL);
}

/* ---- posting through the sink --------------------------------------------------------------- */

/* Run one sink item (takes `doc`); erp_id copied to out when set. */
static void post(struct pb_connection *c, const char *command, json_t *doc, const char *reference,
                 char *out, size_t out_len)
{
    struct pb_err err = {0};
    struct pb_sink_item it;
    json_t *trace = json_array();

    assert_non_null(doc);
    pbt_item(&it, command, doc, reference, reference, 1);
    pbt_execute1(c, sx.http, trace, time(NULL), &it, &err);
    if (it.rc != PB_OK)
        fail_msg("%s %s: rc %d: %s", command, reference, it.rc, it.message);
    if (out)
        snprintf(out, out_len, "%s", it.erp_id);
    json_decref(it.result);
    json_decref(doc);
    json_decref(trace);
}

static void make_customer(struct pb_connection *c)
{
    post(c, "customer.upsert",
         json_pack("{s:{s:s,s:s}}", "BPC0_1", "BPCNUM", "C001", "BPCNAM", "Ann Smith"), "cust",
         NULL, 0);
}

/* An order, then its payment dated `accdat`; the PAY's NUM into num. */
static void make_payment(struct pb_connection *c, const char *txn, const char *amount,
                         const char *cur, const char *accdat, char *num, size_t num_len)
{
    char order[64];
    post(c, "salesorder.create",
         json_pack("{s:{s:s,s:s},s:[{s:s,s:s,s:s}]}", "SOH0_1", "BPCORD", "C001", "CUSORDREF", txn,
                   "SOH4_1", "ITMREF", "ITM-100", "QTY", "1", "GROPRI", amount),
         txn, order, sizeof order);
    post(c, "payment.create",
         json_pack("{s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}}", "PAY0_1", "PAYTYP", "CC", "BPR", "C001",
                   "ACC", "5120000", "CUR", cur, "AMTCUR", amount, "REF", txn, "SOHNUM", order,
                   "ACCDAT", accdat),
         txn, num, num_len);
}

/* A GACC as the flow posts it (journal.create): lines debit `debit_acc`,
 * credit `credit_acc` (with the customer). */
static void make_flow_journal(struct pb_connection *c, const char *ref, const char *accdat,
                              const char *debit_acc, const char *credit_acc, const char *amount,
                              char *num, size_t num_len)
{
    post(c, "journal.create",
         json_pack("{s:{s:s,s:s,s:s,s:s},s:[{s:s,s:s},{s:s,s:s,s:s}]}", "GACC0_1", "TYP", "ODSAL",
                   "ACCDAT", accdat, "CUR", "USD", "REF", ref, "GACC1_1", "ACC", debit_acc, "DEB",
                   amount, "ACC", credit_acc, "BPR", "C001", "CDT", amount),
         ref, num, num_len);
}

static int32_t day_of(const char *iso)
{
    int32_t d = 0;
    assert_int_equal(pb_recon_date_parse(iso, strlen(iso), &d), 0);
    return d;
}

/* ledger() over [from, to]; returns rc, records into *out (new reference). */
static enum pb_rc ledger(struct pb_connection *c, const char *from, const char *to, json_t **out,
                         struct pb_err *err)
{
    json_t *trace = json_array();
    struct pb_call_ctx ctx = {sx.http, trace, time(NULL), -1};
    enum pb_rc rc;
    *out = json_array();
    rc = c->type->ledger(c, &ctx, day_of(from), day_of(to), *out, err);
    json_decref(trace);
    return rc;
}

static const json_t *record_with_id(const json_t *records, const char *id)
{
    size_t i;
    json_t *r;
    json_array_foreach(records, i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "record_id")), id) == 0)
            return r;
    }
    fail_msg("no ledger record %s", id);
    return NULL;
}

static void expect_record(const json_t *records, const char *id, const char *kind,
                          const char *gateway_ref, long long minor, const char *cur,
                          const char *date)
{
    const json_t *r = record_with_id(records, id);
    assert_string_equal(json_string_value(json_object_get(r, "kind")), kind);
    assert_string_equal(json_string_value(json_object_get(r, "gateway_ref")), gateway_ref);
    assert_string_equal(json_string_value(json_object_get(r, "reference")), "");
    assert_true(json_is_integer(json_object_get(r, "amount_minor")));
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), minor);
    assert_string_equal(json_string_value(json_object_get(r, "currency")), cur);
    assert_string_equal(json_string_value(json_object_get(r, "date")), date);
}

/* ---- ledger ---------------------------------------------------------------------------------- */

static void test_ledger_reads_the_range_only(void **state)
{
    struct pb_connection *c = connection();
    struct pb_err err = {0};
    char before[32], p1[32], p2[32], p3[32], yen[32], after[32], memo[32], cb[32], jn[32];
    long long queries, reads;
    json_t *recs;

    make_customer(c);
    make_payment(c, "PT-100", "26.98", "USD", "20260228", before, sizeof before);
    make_payment(c, "PT-101", "10.00", "USD", "20260301", p1, sizeof p1);
    make_payment(c, "PT-102", "1234.56", "USD", "20260302", p2, sizeof p2);
    make_payment(c, "PT-103", "0.01", "USD", "20260303", after, sizeof after);
    make_payment(c, "PT-104", "1500", "JPY", "20260302", yen, sizeof yen);
    make_payment(c, "PT-105", "99.99", "USD", "20260301", p3, sizeof p3);
    /* the refund credit memo and a chargeback, as flows/paytrace-sagex3.yaml posts them */
    make_flow_journal(c, "PT-RF-1", "20260302", "7070000", "4110000", "4.50", memo, sizeof memo);
    make_flow_journal(c, "CB-PT-101-4837", "20260302", "6270000", "5120000", "10.00", cb,
                      sizeof cb);
    make_flow_journal(c, "PT-RF-2", "20260304", "7070000", "4110000", "1.00", jn, sizeof jn);

    queries = ops_of("query");
    reads = ops_of("read");
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_OK);
    if (json_array_size(recs) != 5) {
        char *t = json_dumps(recs, JSON_INDENT(1));
        fail_msg("expected 5 records, got %s", t);
    }
    expect_record(recs, p1, "payment", "PT-101", 1000, "USD", "2026-03-01");
    expect_record(recs, p2, "payment", "PT-102", 123456, "USD", "2026-03-02");
    expect_record(recs, yen, "payment", "PT-104", 1500, "JPY", "2026-03-02");
    expect_record(recs, p3, "payment", "PT-105", 9999, "USD", "2026-03-01");
    expect_record(recs, memo, "refund", "PT-RF-1", -450, "USD", "2026-03-02");
    /* PAY: 4 in range, pages of 2: 2, 2, then an empty page; GACC: 2 in range
     * (the memo and the chargeback), one full page then an empty one; each
     * GACC read once for its lines */
    assert_int_equal(ops_of("query") - queries, 5);
    assert_int_equal(ops_of("read") - reads, 2);
    json_decref(recs);

    /* a single day; and a range with nothing in it */
    assert_int_equal(ledger(c, "2026-03-03", "2026-03-03", &recs, &err), PB_OK);
    assert_int_equal(json_array_size(recs), 1);
    expect_record(recs, after, "payment", "PT-103", 1, "USD", "2026-03-03");
    json_decref(recs);
    assert_int_equal(ledger(c, "2025-01-01", "2025-12-31", &recs, &err), PB_OK);
    assert_int_equal(json_array_size(recs), 0);
    json_decref(recs);
    /* a range backwards is refused before any call */
    queries = ops_of("query");
    {
        json_t *r = json_array();
        json_t *trace = json_array();
        struct pb_call_ctx ctx = {sx.http, trace, time(NULL), -1};
        assert_int_equal(
            c->type->ledger(c, &ctx, day_of("2026-03-02"), day_of("2026-03-01"), r, &err),
            PB_ERR_INVALID);
        json_decref(r);
        json_decref(trace);
    }
    assert_int_equal(ops_of("query"), queries);
    pbt_connection_free(c);
}

static void test_ledger_without_refund_account_reads_no_journal(void **state)
{
    struct pb_connection *c = connection_at(sx.port, json_pack("{s:i}", "ledger_page_size", 100));
    struct pb_connection *plain;
    struct pb_err err = {0};
    char pay[32], memo[32];
    long long queries;
    json_t *recs;

    make_customer(c);
    make_payment(c, "PT-1", "5.00", "USD", "20260310", pay, sizeof pay);
    make_flow_journal(c, "PT-RF-9", "20260310", "7070000", "4110000", "5.00", memo, sizeof memo);
    /* the same connection settings without refund_account */
    plain = calloc(1, sizeof *plain);
    plain->magic = PB_CONNECTION_MAGIC;
    plain->type = c->type;
    plain->settings = json_deep_copy(c->settings);
    json_object_del(plain->settings, "refund_account");
    plain->secrets = json_deep_copy(c->secrets);
    assert_int_equal(plain->type->init(plain, &err), PB_OK);

    queries = ops_of("query");
    assert_int_equal(ledger(plain, "2026-03-10", "2026-03-10", &recs, &err), PB_OK);
    assert_int_equal(json_array_size(recs), 1);
    expect_record(recs, pay, "payment", "PT-1", 500, "USD", "2026-03-10");
    assert_int_equal(ops_of("query") - queries, 1); /* one short page of PAY, no GACC */
    json_decref(recs);

    assert_int_equal(ledger(c, "2026-03-10", "2026-03-10", &recs, &err), PB_OK);
    assert_int_equal(json_array_size(recs), 2);
    expect_record(recs, memo, "refund", "PT-RF-9", -500, "USD", "2026-03-10");
    json_decref(recs);
    pbt_connection_free(plain);
    pbt_connection_free(c);
}

/* ---- post_journal ---------------------------------------------------------------------------- */

/* The settlement journal of one batch: gross 100.00 to clearing (5115000,
 * credit), fees 3.00 to fee expense (6278000), net 97.00 to bank (5120000). */
static json_t *batch_journal(const char *reference, const char *date, int sign)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:[{s:s,s:I,s:s},{s:s,s:I,s:s},{s:s,s:I,s:s}]}", "reference",
                     reference, "date", date, "narration", "Opayo batch 100001 settled", "currency",
                     "USD", "lines", "account", "5115000", "amount_minor",
                     (json_int_t)(-10000 * sign), "description", "gross", "account", "6278000",
                     "amount_minor", (json_int_t)(300 * sign), "description", "fees", "account",
                     "5120000", "amount_minor", (json_int_t)(9700 * sign), "description", "net");
}

static enum pb_rc post_journal(struct pb_connection *c, json_t *journal, char *erp_id,
                               size_t erp_id_len, struct pb_err *err, int *retry_after_s)
{
    json_t *trace = json_array();
    struct pb_call_ctx ctx = {sx.http, trace, time(NULL), -1};
    enum pb_rc rc;
    assert_non_null(journal);
    rc = c->type->post_journal(c, &ctx, journal, erp_id, erp_id_len, err);
    if (retry_after_s)
        *retry_after_s = ctx.retry_after_s;
    json_decref(journal);
    json_decref(trace);
    return rc;
}

static const char *field(const json_t *obj, const char *group, const char *name)
{
    return json_string_value(json_object_get(json_object_get(obj, group), name));
}

static void test_post_journal_once_and_reversal(void **state)
{
    struct pb_connection *c = connection();
    struct pb_err err = {0};
    char a[64], b[64], rev[64];
    json_t *js, *rec, *lines;

    assert_int_equal(post_journal(c, batch_journal("PB-opayo-demo-100001", "2026-03-02", 1), a,
                                  sizeof a, &err, NULL),
                     PB_OK);
    assert_string_equal(a, "JNL0000001");
    /* the same reference again (a retried or re-run reconciliation) */
    assert_int_equal(post_journal(c, batch_journal("PB-opayo-demo-100001", "2026-03-02", 1), b,
                                  sizeof b, &err, NULL),
                     PB_OK);
    assert_string_equal(b, a);
    assert_int_equal(stat_of("journals"), 1);
    assert_int_equal(stat_of("duplicate_references"), 0);

    js = journals();
    assert_int_equal(json_array_size(js), 1);
    rec = json_object_get(json_array_get(js, 0), "record");
    assert_string_equal(field(rec, "GACC0_1", "REF"), "PB-opayo-demo-100001");
    assert_string_equal(field(rec, "GACC0_1", "TYP"), "ODJ");
    assert_string_equal(field(rec, "GACC0_1", "ACCDAT"), "20260302");
    assert_string_equal(field(rec, "GACC0_1", "CUR"), "USD");
    assert_string_equal(field(rec, "GACC0_1", "FCY"), "US011");
    assert_string_equal(field(rec, "GACC0_1", "DES"), "Opayo batch 100001 settled");
    lines = json_object_get(rec, "GACC1_1");
    assert_int_equal(json_array_size(lines), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 0), "ACC")),
                        "5115000");
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 0), "CDT")),
                        "100.00");
    assert_null(json_object_get(json_array_get(lines, 0), "DEB"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 1), "DEB")),
                        "3.00");
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 2), "DEB")),
                        "97.00");
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 2), "DES")), "net");
    json_decref(js);

    /* the undo: the lines negated, its own reference; a second journal */
    assert_int_equal(post_journal(c, batch_journal("PB-opayo-demo-100001-R", "2026-03-03", -1), rev,
                                  sizeof rev, &err, NULL),
                     PB_OK);
    assert_string_equal(rev, "JNL0000002");
    assert_int_equal(stat_of("journals"), 2);
    js = journals();
    rec = json_object_get(json_array_get(js, 1), "record");
    lines = json_object_get(rec, "GACC1_1");
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 0), "DEB")),
                        "100.00");
    assert_string_equal(json_string_value(json_object_get(json_array_get(lines, 2), "CDT")),
                        "97.00");
    json_decref(js);

    /* paybridge's own journals are not customer refunds in the ledger */
    {
        json_t *recs;
        assert_int_equal(ledger(c, "2026-03-01", "2026-03-31", &recs, &err), PB_OK);
        assert_int_equal(json_array_size(recs), 0);
        json_decref(recs);
    }
    pbt_connection_free(c);
}

static void test_post_journal_refusals(void **state)
{
    struct pb_connection *c = connection();
    struct pb_connection *untyped;
    struct pb_err err = {0};
    char id[64];
    long long calls;
    json_t *j;

    /* an account X3 does not know: X3's words, permanent */
    j = batch_journal("PB-x3-1", "2026-03-02", 1);
    json_object_set_new(json_array_get(json_object_get(j, "lines"), 1), "account",
                        json_string("6999999"));
    assert_int_equal(post_journal(c, j, id, sizeof id, &err, NULL), PB_ERR_PERMANENT);
    assert_contains(err.msg, "Account 6999999 : invalid");
    assert_string_equal(id, "");

    /* a closed period: X3's words, permanent */
    assert_int_equal(
        post_journal(c, batch_journal("PB-x3-2", "2019-12-31", 1), id, sizeof id, &err, NULL),
        PB_ERR_PERMANENT);
    assert_contains(err.msg, "Accounting date 20191231 : period closed");
    assert_int_equal(stat_of("journals"), 0);

    /* refused before any call: unbalanced, bad input */
    calls = stat_of("requests");
    j = batch_journal("PB-x3-3", "2026-03-02", 1);
    json_object_set_new(json_array_get(json_object_get(j, "lines"), 1), "amount_minor",
                        json_integer(301));
    assert_int_equal(post_journal(c, j, id, sizeof id, &err, NULL), PB_ERR_PERMANENT);
    assert_contains(err.msg, "not balanced: debits 100.01, credits 100.00 USD");
    j = batch_journal("PB-x3-4", "2026-03-02", 1);
    json_object_set_new(j, "currency", json_string("XXY"));
    assert_int_equal(post_journal(c, j, id, sizeof id, &err, NULL), PB_ERR_CURRENCY);
    j = batch_journal(">PB-x3-5", "2026-03-02", 1);
    assert_int_equal(post_journal(c, j, id, sizeof id, &err, NULL), PB_ERR_INVALID);
    j = batch_journal("PB-x3-6", "2026-02-30", 1);
    assert_int_equal(post_journal(c, j, id, sizeof id, &err, NULL), PB_ERR_INVALID);
    assert_contains(err.msg, "date must be YYYY-MM-DD");
    j = json_pack("{s:s,s:s,s:s,s:[{s:s,s:i}]}", "reference", "PB-x3-7", "date", "2026-03-02",
                  "currency", "USD", "lines", "account", "5120000", "amount_minor", 1);
    assert_int_equal(post_journal(c, j, id, sizeof id, &err, NULL), PB_ERR_INVALID);
    assert_contains(err.msg, "at least 2 lines");
    assert_int_equal(stat_of("requests"), calls);

    /* no journal_type: a configuration error naming the setting */
    untyped = calloc(1, sizeof *untyped);
    untyped->magic = PB_CONNECTION_MAGIC;
    untyped->type = c->type;
    untyped->settings = json_deep_copy(c->settings);
    json_object_del(untyped->settings, "journal_type");
    untyped->secrets = json_deep_copy(c->secrets);
    assert_int_equal(untyped->type->init(untyped, &err), PB_OK);
    assert_int_equal(
        post_journal(untyped, batch_journal("PB-x3-8", "2026-03-02", 1), id, sizeof id, &err, NULL),
        PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.journal_type");
    pbt_connection_free(untyped);
    assert_int_equal(stat_of("journals"), 0);
    pbt_connection_free(c);
}

/* ---- transient failures ------------------------------------------------------------------------
 */

static void test_faults_are_transient(void **state)
{
    struct pb_connection *c = connection();
    struct pb_err err = {0};
    char id[64], again[64];
    json_t *recs;

    /* a Server Fault (HTTP 500) on the ledger's query, and on the journal's look-up */
    inject("{\"soap_fault\":1}");
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "SOAP Fault (soapenv:Server)");
    json_decref(recs);
    inject("{\"soap_fault\":1}");
    assert_int_equal(
        post_journal(c, batch_journal("PB-t-1", "2026-03-02", 1), id, sizeof id, &err, NULL),
        PB_ERR_TRANSIENT);
    assert_contains(err.msg, "will retry");

    /* a busy pool */
    inject("{\"pool_busy\":1}");
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "No Web Service connection available");
    json_decref(recs);
    assert_int_equal(stat_of("journals"), 0);

    /* the look-up's reply is lost (502): nothing is saved blind after it */
    inject("{\"drop_reply\":1}");
    assert_int_equal(
        post_journal(c, batch_journal("PB-t-2", "2026-03-02", 1), id, sizeof id, &err, NULL),
        PB_ERR_TRANSIENT);
    assert_contains(err.msg, "HTTP 502");
    assert_int_equal(stat_of("journals"), 0);
    assert_int_equal(
        post_journal(c, batch_journal("PB-t-2", "2026-03-02", 1), id, sizeof id, &err, NULL),
        PB_OK);
    assert_int_equal(
        post_journal(c, batch_journal("PB-t-2", "2026-03-02", 1), again, sizeof again, &err, NULL),
        PB_OK);
    assert_string_equal(again, id);
    assert_int_equal(stat_of("journals"), 1);
    pbt_connection_free(c);
}

static void test_lost_save_reply_then_retry_posts_once(void **state)
{
    struct pb_connection *c = connection();
    struct pb_err err = {0};
    char id[64], again[64];
    json_t *js;

    /* the look-up goes through ("after": 1), X3 executes the save and its
     * reply is lost: transient, though the journal exists */
    inject("{\"drop_reply\":1,\"after\":1}");
    assert_int_equal(
        post_journal(c, batch_journal("PB-l-1", "2026-03-02", 1), id, sizeof id, &err, NULL),
        PB_ERR_TRANSIENT);
    assert_contains(err.msg, "answered save GACC with HTTP 502");
    assert_int_equal(stat_of("journals"), 1);
    /* the retry finds it by its reference and posts nothing */
    assert_int_equal(
        post_journal(c, batch_journal("PB-l-1", "2026-03-02", 1), again, sizeof again, &err, NULL),
        PB_OK);
    assert_string_equal(again, "JNL0000001");
    js = journals();
    assert_int_equal(json_array_size(js), 1);
    assert_string_equal(field(json_object_get(json_array_get(js, 0), "record"), "GACC0_1", "REF"),
                        "PB-l-1");
    json_decref(js);
    assert_int_equal(stat_of("duplicate_references"), 0);
    pbt_connection_free(c);
}

/* A listening socket that never answers: curl connects and waits. */
static void test_timeout_and_unreachable_are_transient(void **state)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct pb_connection *c;
    struct pb_err err = {0};
    char id[64];
    json_t *recs;

    assert_true(fd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);

    c = connection_at(ntohs(a.sin_port), json_pack("{s:i}", "timeout_ms", 300));
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "did not answer query PAY");
    json_decref(recs);
    assert_int_equal(
        post_journal(c, batch_journal("PB-to-1", "2026-03-02", 1), id, sizeof id, &err, NULL),
        PB_ERR_TRANSIENT);
    assert_contains(err.msg, "did not answer query GACC");
    pbt_connection_free(c);
    close(fd);

    c = connection_at(1, NULL);
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_TRANSIENT);
    json_decref(recs);
    pbt_connection_free(c);
}

/* ---- a scripted server: the replies the emulator does not give ------------------------------ */

static struct pbt_script script;

/* A status-1 reply whose resultXml is `result` (escaped XML text). */
static void script_result(const char *op, const char *result)
{
    char body[4096];
    snprintf(body, sizeof body,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
             "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">"
             "<soapenv:Body><ns1:%sResponse xmlns:ns1=\"http://www.adonix.com/WSS\"><%sReturn>"
             "<messages/><resultXml>%s</resultXml><status>1</status>"
             "<technicalInfos><busy>false</busy></technicalInfos></%sReturn></ns1:%sResponse>"
             "</soapenv:Body></soapenv:Envelope>",
             op, op, result, op, op);
    pbt_script_add(&script, 200, body);
}

#define LIN(num, extra)                                                                            \
    "&lt;LIN NUM=\"1\"&gt;&lt;FLD NAME=\"NUM\"&gt;" num "&lt;/FLD&gt;" extra "&lt;/LIN&gt;"
#define FLD(name, value) "&lt;FLD NAME=\"" name "\"&gt;" value "&lt;/FLD&gt;"
#define RESULT(x) "&lt;RESULT&gt;" x "&lt;/RESULT&gt;"

static void test_scripted_ledger_replies(void **state)
{
    struct pb_err err = {0};
    struct pb_connection *c;
    json_t *recs;

    pbt_script_start(&script, "text/xml");
    c = connection_at(script.port, json_pack("{s:n}", "refund_account"));

    /* a publication whose query lists NUM and REF only: each record is read;
     * a record X3 returned outside the range is left out */
    pbt_script_reset(&script);
    script_result("query", RESULT(LIN("PAY7", FLD("REF", "PT-7")) LIN("PAY8", FLD("REF", "PT-8"))));
    script_result("read", RESULT("&lt;GRP ID=\"PAY0_1\"&gt;" FLD("NUM", "PAY7") FLD("REF", "PT-7")
                                     FLD("ACCDAT", "20260301") FLD("AMTCUR", "12.30")
                                         FLD("CUR", "GBP") "&lt;/GRP&gt;"));
    script_result("read",
                  RESULT("&lt;GRP ID=\"PAY0_1\"&gt;" FLD("NUM", "PAY8") FLD("ACCDAT", "20260401")
                             FLD("AMTCUR", "1.00") FLD("CUR", "GBP") "&lt;/GRP&gt;"));
    script_result("query", RESULT(""));
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_OK);
    assert_int_equal(json_array_size(recs), 1);
    expect_record(recs, "PAY7", "payment", "PT-7", 1230, "GBP", "2026-03-01");
    json_decref(recs);
    assert_int_equal(script.next, 4);
    /* the second page asked for the numbers after the first page's last */
    assert_contains(script.last_request, "<key>NUM</key><value>&gt;PAY8</value>");
    assert_contains(script.last_request, "<key>ACCDAT</key><value>&gt;=20260301</value>");
    assert_contains(script.last_request, "<key>ACCDAT</key><value>&lt;=20260302</value>");
    assert_contains(script.last_request, "<listSize>2</listSize>");

    /* pages that do not advance stop the read */
    pbt_script_reset(&script);
    script_result(
        "query",
        RESULT(LIN("PAY2", FLD("ACCDAT", "20260301") FLD("AMTCUR", "1.00") FLD("CUR", "GBP"))
                   LIN("PAY3", FLD("ACCDAT", "20260301") FLD("AMTCUR", "1.00") FLD("CUR", "GBP"))));
    script_result("query", RESULT(LIN("PAY1", FLD("ACCDAT", "20260301") FLD("AMTCUR", "1.00")
                                                  FLD("CUR", "GBP"))));
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "the pages do not advance");
    json_decref(recs);

    /* an amount the currency cannot hold, a line without its number */
    pbt_script_reset(&script);
    script_result("query", RESULT(LIN("PAY4", FLD("ACCDAT", "20260301") FLD("AMTCUR", "1.005")
                                                  FLD("CUR", "GBP"))));
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "Sage X3 PAY PAY4: AMTCUR \"1.005\" is not an amount in GBP");
    json_decref(recs);
    pbt_script_reset(&script);
    script_result("query", RESULT("&lt;LIN NUM=\"1\"&gt;" FLD("REF", "PT-1") "&lt;/LIN&gt;"));
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-02", &recs, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "returned a line without its NUM");
    json_decref(recs);

    pbt_connection_free(c);
    pbt_script_stop(&script);
}

static void test_type_table(void **state)
{
    assert_true(pb_connector_sagex3.caps & PB_CAP_LEDGER);
    assert_true(pb_connector_sagex3.caps & PB_CAP_JOURNAL);
    assert_true(pb_connector_sagex3.caps & PB_CAP_SINK);
    assert_false(pb_connector_sagex3.caps & PB_CAP_SETTLEMENT);
    assert_non_null(pb_connector_sagex3.ledger);
    assert_non_null(pb_connector_sagex3.post_journal);
    assert_null(pb_connector_sagex3.settlement);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test_setup(test_ledger_reads_the_range_only, test_setup),
        cmocka_unit_test_setup(test_ledger_without_refund_account_reads_no_journal, test_setup),
        cmocka_unit_test_setup(test_post_journal_once_and_reversal, test_setup),
        cmocka_unit_test_setup(test_post_journal_refusals, test_setup),
        cmocka_unit_test_setup(test_faults_are_transient, test_setup),
        cmocka_unit_test_setup(test_lost_save_reply_then_retry_posts_once, test_setup),
        cmocka_unit_test_setup(test_timeout_and_unreachable_are_transient, test_setup),
        cmocka_unit_test(test_scripted_ledger_replies),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
