/*
 * tests/unit/test_syspro_recon.c: the SYSPRO connector's reconciliation
 * members (src/connectors/syspro/syspro_recon.c: ledger() and
 * post_journal()) against the SYSPRO emulator started the way paybridge
 * starts it, through pb_sandbox_start(), so that the framework's fault
 * injection wraps its routes.
 *
 * Covered: the capabilities and table slots; ledger() returning the AR
 * payments and credit notes posted with arpayment.post / creditnote.create
 * dated in the range only, with their signs, exact amounts, references and
 * the record ids the commands returned; every page read (ledger_page_size 2,
 * counted in the trace); post_journal() posting once, and a second call with
 * the same reference returning the same journal with still one journal in
 * the emulator; a reversing journal being a second journal; an unknown GL
 * account and a closed period as PB_ERR_PERMANENT in SYSPRO's words; an
 * unbalanced journal refused before anything is sent; an unlicensed query
 * object as permanent; injected 500/503s, dropped connections and a timeout
 * as PB_ERR_TRANSIENT without a journal posted; one logon for all of it.
 *
 * May touch: only the sandbox it starts on loopback (port 0).
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
#include "connectors/settlement/settlement.h"
#include "connectors/syspro/syspro_internal.h"
#include "net/http_client.h"
#include "pbtest.h"
#include "sandbox.h"

extern const struct pb_connector_type pb_connector_syspro;

static struct pbt_env sx;

/* ---- the emulator's admin routes ------------------------------------------------------- */

static long admin(const char *method, const char *path, const char *body, json_t **out)
{
    return pbt_admin(sx.port, method, path, body, out);
}

static long long stat_of(const char *key)
{
    return pbt_stat(sx.port, key);
}

static void faults(const char *json)
{
    pbt_faults(sx.sb, "syspro", json);
}

/* ---- connections and calls ----------------------------------------------------------------- */

static struct pb_connection *connection_with(json_t *extra)
{
    char base[128];
    return pbt_connection(
        &pb_connector_syspro, "syspro-recon",
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:i}", "base_url",
                  pbt_url(base, sizeof base, sx.port, "/SYSPROWCFService/Rest"), "company_id",
                  "EDU1", "operator", "ADMIN", "bank", "BANK1", "currency", "GBP", "timeout_ms",
                  5000),
        extra, json_pack("{s:s,s:s}", "operator_password", "sandbox-op", "company_password", ""));
}
static void ctx_init(struct pb_call_ctx *ctx, json_t *trace)
{
    *ctx = pbt_ctx(sx.http, trace, time(NULL));
}
/* Post one document with execute(); returns its erp_id (static buffer). */
static const char *post(struct pb_connection *c, const char *command, const char *doc,
                        const char *reference)
{
    static char id[128];
    struct pb_sink_item it = {0};
    struct pb_call_ctx ctx;
    struct pb_err err = {0};
    json_t *trace = json_array();
    ctx_init(&ctx, trace);
    it.command = command;
    it.document = json_loads(doc, 0, NULL);
    assert_non_null(it.document);
    it.reference = reference;
    it.idempotency_key = reference;
    it.attempt = 1;
    assert_int_equal(c->type->execute(c, &ctx, &it, 1, &err), PB_OK);
    if (it.rc != PB_OK)
        fail_msg("%s %s: %s", command, reference, it.message);
    snprintf(id, sizeof id, "%s", it.erp_id);
    json_decref(it.document);
    json_decref(it.result);
    json_decref(trace);
    return id;
}

static int32_t day_of(const char *ymd)
{
    struct pb_err err = {0};
    int32_t d = 0;
    assert_int_equal(pb_settlement_date_parse(ymd, strlen(ymd), "%Y-%m-%d", &d, &err), PB_OK);
    return d;
}

static enum pb_rc ledger(struct pb_connection *c, const char *from, const char *to, json_t *records,
                         json_t *trace, struct pb_err *err)
{
    struct pb_call_ctx ctx;
    ctx_init(&ctx, trace);
    return c->type->ledger(c, &ctx, day_of(from), day_of(to), records, err);
}

static enum pb_rc journal(struct pb_connection *c, const char *json, char *erp_id, size_t len,
                          json_t *trace, struct pb_err *err)
{
    struct pb_call_ctx ctx;
    json_t *j = json_loads(json, 0, NULL);
    enum pb_rc rc;
    assert_non_null(j);
    ctx_init(&ctx, trace);
    rc = c->type->post_journal(c, &ctx, j, erp_id, len, err);
    json_decref(j);
    return rc;
}

/* How many calls of the trace went to business object `bo`. */
static int calls_to(json_t *trace, const char *bo)
{
    char needle[64];
    size_t i;
    json_t *t;
    int n = 0;
    snprintf(needle, sizeof needle, "BusinessObject=%s", bo);
    json_array_foreach(trace, i, t)
    {
        char *text = json_dumps(t, JSON_COMPACT);
        n += text && strstr(text, needle) != NULL;
        free(text);
    }
    return n;
}

/* The record of `records` with this reference, or NULL. */
static json_t *record_of(json_t *records, const char *reference)
{
    size_t i;
    json_t *r;
    json_array_foreach(records, i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "reference")), reference) == 0)
            return r;
    }
    return NULL;
}

static const char *s_of(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s)
        fail_msg("no string \"%s\"", key);
    return s;
}

#define SETTLEMENT_JOURNAL(ref, date, fee_account)                                                 \
    "{\"reference\":\"" ref "\",\"date\":\"" date "\",\"narration\":\"Opayo batch 100001 "         \
    "settled\",\"currency\":\"GBP\",\"lines\":["                                                   \
    "{\"account\":\"1000\",\"amount_minor\":9700,\"description\":\"net to bank\"},"                \
    "{\"account\":\"" fee_account "\",\"amount_minor\":300,\"description\":\"fees\"},"             \
    "{\"account\":\"1100\",\"amount_minor\":-10000,\"description\":\"gross from clearing\"}]}"

/* ---- fixture -----------------------------------------------------------------------------------
 */

static int group_setup(void **state)
{
    json_t *settings = json_loads("{\"syspro\":{\"port\":0,\"customers\":[\"0000001\","
                                  "\"0000002\"],\"gl_closed_periods\":[\"2026-01\"]}}",
                                  0, NULL);
    return pbt_env_sandbox(&sx, "syspro", settings);
}

static int group_teardown(void **state)
{
    pbt_env_stop(&sx);
    return 0;
}

static int test_setup(void **state)
{
    faults("{\"reset\":true}");
    assert_int_equal(admin("POST", "/_sandbox/reset", "{}", NULL), 200);
    return 0;
}

/* ---- tests
 * --------------------------------------------------------------------------------------- */

static void test_capabilities(void **state)
{
    assert_true(pb_connector_syspro.caps & PB_CAP_SINK);
    assert_true(pb_connector_syspro.caps & PB_CAP_LEDGER);
    assert_true(pb_connector_syspro.caps & PB_CAP_JOURNAL);
    assert_false(pb_connector_syspro.caps & PB_CAP_SETTLEMENT);
    assert_non_null(pb_connector_syspro.ledger);
    assert_non_null(pb_connector_syspro.post_journal);
}

static void test_ledger_reads_the_range_with_signs_and_ids(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *records = json_array(), *trace = json_array(), *r;
    struct pb_err err = {0};
    char pay1[128], pay2[128], credit[128];

    snprintf(pay1, sizeof pay1, "%s",
             post(c, "arpayment.post",
                  "{\"Customer\":\"0000001\",\"PaymentValue\":\"10.99\",\"Reference\":"
                  "\"VTX-1001\",\"PaymentDate\":\"2026-03-01\"}",
                  "VTX-1001"));
    snprintf(pay2, sizeof pay2, "%s",
             post(c, "arpayment.post",
                  "{\"Customer\":\"0000002\",\"PaymentValue\":\"1234.50\",\"Reference\":"
                  "\"VTX-1002\",\"PaymentDate\":\"2026-03-03\"}",
                  "VTX-1002"));
    post(c, "arpayment.post",
         "{\"Customer\":\"0000001\",\"PaymentValue\":\"7.00\",\"Reference\":\"VTX-0999\","
         "\"PaymentDate\":\"2026-02-28\"}",
         "VTX-0999");
    post(c, "arpayment.post",
         "{\"Customer\":\"0000001\",\"PaymentValue\":\"8.00\",\"Reference\":\"VTX-1004\","
         "\"PaymentDate\":\"2026-03-04\"}",
         "VTX-1004");
    snprintf(credit, sizeof credit, "%s",
             post(c, "creditnote.create",
                  "{\"Customer\":\"0000001\",\"InvoiceValue\":\"5.00\",\"Reference\":\"RF-1001\","
                  "\"InvoiceDate\":\"2026-03-02\"}",
                  "RF-1001"));
    assert_int_equal(stat_of("ar_payments"), 4);

    assert_int_equal(ledger(c, "2026-03-01", "2026-03-03", records, trace, &err), PB_OK);
    assert_int_equal(json_array_size(records), 3);
    assert_null(record_of(records, "VTX-0999")); /* the day before */
    assert_null(record_of(records, "VTX-1004")); /* the day after */

    r = record_of(records, "VTX-1001");
    assert_non_null(r);
    assert_string_equal(s_of(r, "kind"), "payment");
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), 1099);
    assert_string_equal(s_of(r, "currency"), "GBP");
    assert_string_equal(s_of(r, "date"), "2026-03-01");
    assert_string_equal(s_of(r, "gateway_ref"), "");
    assert_string_equal(s_of(r, "record_id"), pay1); /* the erp_id arpayment.post returned */

    r = record_of(records, "VTX-1002");
    assert_non_null(r);
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), 123450);
    assert_string_equal(s_of(r, "record_id"), pay2);
    assert_string_equal(s_of(r, "date"), "2026-03-03");

    r = record_of(records, "RF-1001");
    assert_non_null(r);
    assert_string_equal(s_of(r, "kind"), "refund");
    assert_int_equal(json_integer_value(json_object_get(r, "amount_minor")), -500);
    assert_string_equal(s_of(r, "record_id"), credit);
    assert_string_equal(s_of(r, "date"), "2026-03-02");

    /* one query page, on the session the postings used */
    assert_int_equal(calls_to(trace, "ARSQPY"), 1);
    assert_int_equal(stat_of("logons"), 1);
    json_decref(records);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_ledger_reads_every_page(void **state)
{
    struct pb_connection *c = connection_with(json_pack("{s:i}", "ledger_page_size", 2));
    json_t *records = json_array(), *trace = json_array();
    struct pb_err err = {0};
    int64_t total = 0;
    size_t i;
    json_t *r;

    for (int k = 1; k <= 5; k++) {
        char doc[256], ref[32];
        snprintf(ref, sizeof ref, "PAGE-%d", k);
        snprintf(doc, sizeof doc,
                 "{\"Customer\":\"0000001\",\"PaymentValue\":\"%d.01\",\"Reference\":\"%s\","
                 "\"PaymentDate\":\"2026-04-1%d\"}",
                 k, ref, k);
        post(c, "arpayment.post", doc, ref);
    }
    assert_int_equal(ledger(c, "2026-04-11", "2026-04-15", records, trace, &err), PB_OK);
    assert_int_equal(json_array_size(records), 5);
    json_array_foreach(records, i, r)
    {
        total += json_integer_value(json_object_get(r, "amount_minor"));
    }
    assert_int_equal(total, 101 + 201 + 301 + 401 + 501);
    assert_non_null(record_of(records, "PAGE-5"));
    assert_int_equal(calls_to(trace, "ARSQPY"), 3); /* 2 + 2 + 1 */
    json_decref(records);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_ledger_of_an_empty_range(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *records = json_array(), *trace = json_array();
    struct pb_err err = {0};
    assert_int_equal(ledger(c, "2020-01-01", "2020-01-31", records, trace, &err), PB_OK);
    assert_int_equal(json_array_size(records), 0);
    json_decref(records);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_post_journal_once(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *trace = json_array(), *ledger_json, *j, *lines;
    struct pb_err err = {0};
    char first[64], second[64];

    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-opayo-demo-100001", "2026-03-02", "6100"),
                             first, sizeof first, trace, &err),
                     PB_OK);
    assert_string_equal(first, "2026/3/1");
    assert_int_equal(stat_of("gl_journals"), 1);
    /* looked up first, then posted */
    assert_int_equal(calls_to(trace, "GENQJL"), 1);
    assert_int_equal(calls_to(trace, "GENTJL"), 1);

    /* what SYSPRO holds */
    assert_int_equal(admin("GET", "/_sandbox/ledger", NULL, &ledger_json), 200);
    j = json_array_get(json_object_get(ledger_json, "gl_journals"), 0);
    assert_string_equal(s_of(j, "Reference"), "PB-opayo-demo-100001");
    assert_string_equal(s_of(j, "Notation"), "Opayo batch 100001 settled");
    assert_string_equal(s_of(j, "JournalDate"), "2026-03-02");
    lines = json_object_get(j, "Lines");
    assert_int_equal(json_array_size(lines), 3);
    assert_string_equal(s_of(json_array_get(lines, 0), "LedgerCode"), "1000");
    assert_string_equal(s_of(json_array_get(lines, 0), "EntryType"), "D");
    assert_string_equal(s_of(json_array_get(lines, 0), "EntryValue"), "97.00");
    assert_string_equal(s_of(json_array_get(lines, 1), "EntryValue"), "3.00");
    assert_string_equal(s_of(json_array_get(lines, 2), "LedgerCode"), "1100");
    assert_string_equal(s_of(json_array_get(lines, 2), "EntryType"), "C");
    assert_string_equal(s_of(json_array_get(lines, 2), "EntryValue"), "100.00");
    assert_string_equal(s_of(json_array_get(lines, 2), "Comment"), "gross from clearing");
    json_decref(ledger_json);

    /* the same reference again (a retried or re-run reconciliation): the same
     * journal, and nothing posted */
    json_array_clear(trace);
    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-opayo-demo-100001", "2026-03-02", "6100"),
                             second, sizeof second, trace, &err),
                     PB_OK);
    assert_string_equal(second, first);
    assert_int_equal(stat_of("gl_journals"), 1);
    assert_int_equal(calls_to(trace, "GENTJL"), 0);

    /* a new connection (a new process) finds it too */
    pbt_connection_free(c);
    c = connection_with(NULL);
    second[0] = '\0';
    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-opayo-demo-100001", "2026-03-02", "6100"),
                             second, sizeof second, trace, &err),
                     PB_OK);
    assert_string_equal(second, first);
    assert_int_equal(stat_of("gl_journals"), 1);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_reversal_is_a_second_journal(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *trace = json_array(), *ledger_json, *lines;
    struct pb_err err = {0};
    char adjust[64], undo[64];

    assert_int_equal(journal(c,
                             "{\"reference\":\"PB-ADJ-7\",\"date\":\"2026-03-05\",\"narration\":"
                             "\"difference 0.02\",\"currency\":\"GBP\",\"lines\":[{\"account\":"
                             "\"6900\",\"amount_minor\":2},{\"account\":\"1100\",\"amount_minor\":"
                             "-2}]}",
                             adjust, sizeof adjust, trace, &err),
                     PB_OK);
    assert_int_equal(journal(c,
                             "{\"reference\":\"PB-ADJ-7-REV\",\"date\":\"2026-03-06\","
                             "\"narration\":\"undo PB-ADJ-7\",\"currency\":\"GBP\",\"lines\":[{"
                             "\"account\":\"6900\",\"amount_minor\":-2},{\"account\":\"1100\","
                             "\"amount_minor\":2}]}",
                             undo, sizeof undo, trace, &err),
                     PB_OK);
    assert_string_not_equal(adjust, undo);
    assert_int_equal(stat_of("gl_journals"), 2);
    assert_int_equal(admin("GET", "/_sandbox/ledger", NULL, &ledger_json), 200);
    lines =
        json_object_get(json_array_get(json_object_get(ledger_json, "gl_journals"), 1), "Lines");
    assert_string_equal(s_of(json_array_get(lines, 0), "EntryType"), "C");
    assert_string_equal(s_of(json_array_get(lines, 0), "EntryValue"), "0.02");
    assert_string_equal(s_of(json_array_get(lines, 1), "EntryType"), "D");
    json_decref(ledger_json);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_long_narration_is_cut_not_refused(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *trace = json_array(), *ledger_json, *j;
    struct pb_err err = {0};
    char id[64], text[700], doc[1200];
    const char *notation;
    size_t chars = 0;

    for (int i = 0; i < 300; i++)
        memcpy(text + 2 * i, "\xc3\xa9", 2); /* 300 x "é" */
    text[600] = '\0';
    snprintf(doc, sizeof doc,
             "{\"reference\":\"PB-LONG\",\"date\":\"2026-03-02\",\"narration\":\"%s\","
             "\"currency\":\"GBP\",\"lines\":[{\"account\":\"6900\",\"amount_minor\":1},"
             "{\"account\":\"1100\",\"amount_minor\":-1}]}",
             text);
    assert_int_equal(journal(c, doc, id, sizeof id, trace, &err), PB_OK);
    assert_int_equal(admin("GET", "/_sandbox/ledger", NULL, &ledger_json), 200);
    j = json_array_get(json_object_get(ledger_json, "gl_journals"), 0);
    notation = s_of(j, "Notation");
    for (const char *p = notation; *p; p++)
        chars += ((unsigned char)*p & 0xC0) != 0x80;
    assert_int_equal(chars, 255);
    assert_int_equal(strlen(notation), 510); /* cut between characters */
    json_decref(ledger_json);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_unknown_gl_account_is_permanent(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *trace = json_array();
    struct pb_err err = {0};
    char id[64] = "x";

    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-BAD-GL", "2026-03-02", "9999"), id,
                             sizeof id, trace, &err),
                     PB_ERR_PERMANENT);
    assert_int_equal(err.rc, PB_ERR_PERMANENT);
    assert_contains(err.msg, "SYSPRO refused GL journal 'PB-BAD-GL' (GENTJL)");
    assert_contains(err.msg, "Ledger code '9999' not found");
    assert_string_equal(id, "");
    assert_int_equal(stat_of("gl_journals"), 0);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_closed_period_is_permanent(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *trace = json_array();
    struct pb_err err = {0};
    char id[64];

    assert_int_equal(
        journal(c, SETTLEMENT_JOURNAL("PB-JAN", "2026-01-31", "6100"), id, sizeof id, trace, &err),
        PB_ERR_PERMANENT);
    assert_contains(err.msg, "GL period 2026/01 is closed");
    assert_int_equal(stat_of("gl_journals"), 0);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_bad_journals_are_refused_before_sending(void **state)
{
    static const struct {
        const char *json, *words;
    } cases[] = {
        {"{\"reference\":\"U1\",\"date\":\"2026-03-02\",\"currency\":\"GBP\",\"lines\":[{"
         "\"account\":\"1000\",\"amount_minor\":100},{\"account\":\"1100\",\"amount_minor\":-99}]}",
         "unbalanced: debits 1.00 GBP, debits - credits = 0.01"},
        {"{\"reference\":\"U2\",\"date\":\"2026-03-02\",\"currency\":\"GBP\",\"lines\":[{"
         "\"account\":\"1000\",\"amount_minor\":0},{\"account\":\"1100\",\"amount_minor\":0}]}",
         "lines[0].amount_minor: must be a non-zero integer"},
        {"{\"reference\":\"U3\",\"date\":\"2026-03-02\",\"currency\":\"GBP\",\"lines\":[{"
         "\"account\":\"1000\",\"amount_minor\":1}]}",
         "2 to 200 lines"},
        {"{\"reference\":\"U4\",\"date\":\"2026-02-30\",\"currency\":\"GBP\",\"lines\":[]}",
         "not a YYYY-MM-DD date"},
        {"{\"reference\":\"U5\",\"date\":\"2026-03-02\",\"currency\":\"EUR\",\"lines\":[{"
         "\"account\":\"1000\",\"amount_minor\":1},{\"account\":\"1100\",\"amount_minor\":-1}]}",
         "company's currency GBP"},
        {"{\"reference\":\"123456789012345678901234567890123456789012345678901\",\"date\":"
         "\"2026-03-02\",\"currency\":\"GBP\",\"lines\":[]}",
         "journal.reference: longer than 50"},
    };
    struct pb_connection *c = connection_with(NULL);
    json_t *trace = json_array();

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct pb_err err = {0};
        char id[64];
        assert_int_equal(journal(c, cases[i].json, id, sizeof id, trace, &err), PB_ERR_PERMANENT);
        assert_contains(err.msg, cases[i].words);
    }
    assert_int_equal(json_array_size(trace), 0); /* nothing went out, not even a logon */
    assert_int_equal(stat_of("gl_journals"), 0);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_unlicensed_query_object_is_permanent(void **state)
{
    struct pb_connection *c =
        connection_with(json_pack("{s:{s:s}}", "business_objects", "ar_payment_query", "ARSNOT"));
    json_t *records = json_array(), *trace = json_array();
    struct pb_err err = {0};
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-31", records, trace, &err), PB_ERR_PERMANENT);
    assert_contains(err.msg, "ARSNOT");
    assert_contains(err.msg, "not licensed");
    json_decref(records);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_faults_are_transient_and_post_nothing(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    struct pb_connection *quick;
    json_t *records = json_array(), *trace = json_array();
    struct pb_err err = {0};
    char id[64];

    /* logged on and working first */
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-31", records, trace, &err), PB_OK);

    faults("{\"error_rate\":1}"); /* 500 and 503 */
    assert_int_equal(ledger(c, "2026-03-01", "2026-03-31", records, trace, &err), PB_ERR_TRANSIENT);
    assert_contains(err.msg, "ARSQPY Query/Query: HTTP 50");
    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-FAULT-1", "2026-03-02", "6100"), id,
                             sizeof id, trace, &err),
                     PB_ERR_TRANSIENT);
    assert_contains(err.msg, "will retry");

    faults("{\"reset\":true,\"reset_rate\":1}"); /* the connection dropped */
    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-FAULT-1", "2026-03-02", "6100"), id,
                             sizeof id, trace, &err),
                     PB_ERR_TRANSIENT);

    /* a timeout: the emulator answers after 2 s, the connection waits 300 ms */
    faults("{\"reset\":true}");
    quick = connection_with(json_pack("{s:i}", "timeout_ms", 300));
    assert_int_equal(ledger(quick, "2026-03-01", "2026-03-31", records, trace, &err), PB_OK);
    faults("{\"latency_ms\":2000}");
    assert_int_equal(ledger(quick, "2026-03-01", "2026-03-31", records, trace, &err),
                     PB_ERR_TRANSIENT);
    faults("{\"reset\":true}");
    pbt_connection_free(quick);

    assert_int_equal(stat_of("gl_journals"), 0);
    /* and once the faults are gone, the same journal goes through once */
    assert_int_equal(journal(c, SETTLEMENT_JOURNAL("PB-FAULT-1", "2026-03-02", "6100"), id,
                             sizeof id, trace, &err),
                     PB_OK);
    assert_int_equal(stat_of("gl_journals"), 1);
    json_decref(records);
    json_decref(trace);
    pbt_connection_free(c);
}

static void test_one_session_for_everything(void **state)
{
    struct pb_connection *c = connection_with(NULL);
    json_t *records = json_array(), *trace = json_array();
    struct pb_err err = {0};
    char id[64];

    post(c, "arpayment.post",
         "{\"Customer\":\"0000001\",\"PaymentValue\":\"1.00\",\"Reference\":\"S-1\","
         "\"PaymentDate\":\"2026-05-01\"}",
         "S-1");
    assert_int_equal(ledger(c, "2026-05-01", "2026-05-01", records, trace, &err), PB_OK);
    assert_int_equal(
        journal(c, SETTLEMENT_JOURNAL("PB-S-1", "2026-05-01", "6100"), id, sizeof id, trace, &err),
        PB_OK);
    assert_int_equal(
        journal(c, SETTLEMENT_JOURNAL("PB-S-1", "2026-05-01", "6100"), id, sizeof id, trace, &err),
        PB_OK);
    assert_int_equal(ledger(c, "2026-05-01", "2026-05-01", records, trace, &err), PB_OK);
    assert_int_equal(json_array_size(records), 2);
    assert_int_equal(pb__syspro_state(c)->logons, 1);
    assert_int_equal(stat_of("logons"), 1);
    assert_int_equal(stat_of("invalid_session_calls"), 0);

    /* SYSPRO ends the session: one new logon, and the read still works */
    assert_int_equal(admin("POST", "/_sandbox/expire_sessions", "{}", NULL), 200);
    json_array_clear(records);
    assert_int_equal(ledger(c, "2026-05-01", "2026-05-01", records, trace, &err), PB_OK);
    assert_int_equal(json_array_size(records), 1);
    assert_int_equal(pb__syspro_state(c)->logons, 2);
    json_decref(records);
    json_decref(trace);
    pbt_connection_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capabilities),
        cmocka_unit_test_setup(test_ledger_reads_the_range_with_signs_and_ids, test_setup),
        cmocka_unit_test_setup(test_ledger_reads_every_page, test_setup),
        cmocka_unit_test_setup(test_ledger_of_an_empty_range, test_setup),
        cmocka_unit_test_setup(test_post_journal_once, test_setup),
        cmocka_unit_test_setup(test_reversal_is_a_second_journal, test_setup),
        cmocka_unit_test_setup(test_long_narration_is_cut_not_refused, test_setup),
        cmocka_unit_test_setup(test_unknown_gl_account_is_permanent, test_setup),
        cmocka_unit_test_setup(test_closed_period_is_permanent, test_setup),
        cmocka_unit_test_setup(test_bad_journals_are_refused_before_sending, test_setup),
        cmocka_unit_test_setup(test_unlicensed_query_object_is_permanent, test_setup),
        cmocka_unit_test_setup(test_faults_are_transient_and_post_nothing, test_setup),
        cmocka_unit_test_setup(test_one_session_for_everything, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
