/*
 * test_reconcile_day.c: a day's reconciliation (reconcile/run.c through
 * cli/reconcile.c's pb_reconcile_once) without the daemon, with the ledger
 * taken from what paybridge posted (ledger: paybridge) and no journals. A temp store holds what paybridge "posted" for an Opayo
 * connection (events with completed jobs, written with the store's own ops);
 * the sandbox's Opayo emulator settles an explicit list of transactions for
 * the day (those payments, a refund, and one sale paybridge never saw);
 * the run fetches, matches, stores the run and writes its reports. Asserted:
 * the posted ones match by rule 1 (reference), the stranger is
 * missing_in_erp, a posted payment that did not settle yet is pending (not a
 * break), both reports exist, the stored run reads back, a re-run is revision
 * 2 with the same result, and a connection without the Reporting API
 * settings is a clear config error naming what is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/err.h"
#include "engine/config.h"
#include "net/http_client.h"
#include "reconcile/reconcile.h"
#include "sandbox.h"
#include "store/store.h"
#include "pbtest.h"

static char dir[256];

#define CONN "opayo-shop"

static void run_op(struct pb_store *s, struct pb_store_op *op)
{
    if (pb_store_run(s, op) != PB_OK)
        fail_msg("store op %d: %s", (int)op->kind, op->err.msg);
}

/* An event of CONN with one flow step; posted = its job completes with erp_id. */
static void put_event(struct pb_store *s, const char *type, const char *gw_id, const char *body,
                      const char *original)
{
    struct pb_store_op op;
    memset(&op, 0, sizeof op);
    op.kind = PB_OP_INBOX_PUT;
    op.u.inbox.connection = CONN;
    op.u.inbox.gateway_event_id = gw_id;
    op.u.inbox.type = type;
    op.u.inbox.event_json = body;
    op.u.inbox.original_gateway_id = original;
    op.u.inbox.raw = "{}";
    op.u.inbox.raw_len = 2;
    op.u.inbox.received_ms = pb_now_ms();
    op.u.inbox.jobs[0].flow = "opayo-to-xero";
    op.u.inbox.jobs[0].step = 1;
    op.u.inbox.jobs[0].step_name = "payment";
    op.u.inbox.jobs[0].target = "xero-demo";
    op.u.inbox.jobs[0].command = "payment.create";
    op.u.inbox.n_jobs = 1;
    run_op(s, &op);
    assert_false(op.u.inbox.duplicate);
}

/* Claim every ready job and complete those whose event is in `posted`
 * (gateway id -> ERP id pairs, NULL-terminated); the others stay leased. */
static void complete_jobs(struct pb_store *s, const char *const *posted)
{
    struct pb_store_op op;
    struct pb_job *jobs;
    size_t n;
    memset(&op, 0, sizeof op);
    op.kind = PB_OP_CLAIM;
    op.u.claim.now_ms = pb_now_ms() + 1000;
    op.u.claim.lease_ms = 600000;
    op.u.claim.max = 50;
    run_op(s, &op);
    jobs = op.u.claim.jobs;
    n = op.u.claim.n;
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        json_t *ev = NULL, *args = json_pack("{s:I}", "id", (json_int_t)jobs[i].event_id);
        struct pb_err err = {0};
        const char *gw;
        assert_int_equal(pb_store_query(s, "events.show", args, &ev, &err), PB_OK);
        gw = json_string_value(json_object_get(ev, "gateway_event_id"));
        for (const char *const *p = posted; *p; p += 2) {
            if (strcmp(*p, gw) != 0)
                continue;
            memset(&op, 0, sizeof op);
            op.kind = PB_OP_COMPLETE;
            op.u.complete.job_id = jobs[i].id;
            op.u.complete.attempt = 1;
            op.u.complete.outcome = PB_OUTCOME_DONE;
            op.u.complete.erp_id = p[1];
            run_op(s, &op);
        }
        json_decref(ev);
        json_decref(args);
    }
    pb_store_jobs_free(jobs, n);
}

static json_t *post_json(int port, const char *path, const char *body)
{
    json_t *reply;
    assert_int_equal(pbt_admin(port, "POST", path, body, &reply), 200);
    return reply;
}
#define TX(id, type, minor, ref, at)                                                          \
    "{\"transactionId\":\"" id "\",\"transactionType\":\"" type "\",\"status\":\"Ok\","      \
    "\"amount\":{\"totalAmount\":" #minor "},\"currency\":\"GBP\",\"vendorTxCode\":\"" ref   \
    "\",\"createdAt\":\"" at "\"}"

#define PAYMENT(id, minor, ref, at)                                                           \
    "{\"type\":\"payment.succeeded\",\"occurred_at\":\"" at "\",\"payment\":{\"gateway_id\":\"" id \
    "\",\"reference\":\"" ref "\",\"kind\":\"Payment\",\"status\":\"Ok\",\"amount\":{\"minor\":" \
    #minor ",\"currency\":\"GBP\"}}}"

static void test_reconcile_day(void **state)
{
    struct pb_sandbox *sb = NULL;
    struct pb_store *s = NULL;
    struct pb_config *cfg = NULL;
    struct pb_diags d = {0};
    struct pb_err err = {0};
    json_t *settings = json_pack("{s:{s:i}}", "opayo", "port", 0), *reply;
    char path[300], yaml[2048], outdir[300], *text = NULL, *report_text, *csv;
    size_t text_len = 0;
    FILE *out, *f;
    int port, rc;
    struct pb_recon_db *db = NULL;
    json_t *report;
    const char *const posted[] = {"T1", "PAY-1", "T2", "PAY-2", "T3", "CN-1", "T5", "PAY-5", NULL};
    (void)state;

    snprintf(dir, sizeof dir, "/tmp/pb-test-reconcile-XXXXXX");
    pbt_tempdir(dir);
    if (pb_sandbox_start(settings, &sb, &err))
        fail_msg("sandbox: %s", err.msg);
    json_decref(settings);
    port = pb_sandbox_port(sb, "opayo");
    assert_true(port > 0);

    /* what paybridge posted: two payments and a refund settled on the 21st, a
     * payment of the 21st that settles later (pending), and an event whose
     * flow never completed (not posted, so not on the ledger side) */
    snprintf(path, sizeof path, "sqlite:%s/t.db", dir);
    assert_int_equal(pb_store_open(path, &s, &err), PB_OK);
    put_event(s, "payment.succeeded", "T1", PAYMENT("T1", 1000, "ORDER-1", "2026-11-20T10:00:00Z"),
              NULL);
    put_event(s, "payment.succeeded", "T2", PAYMENT("T2", 2500, "ORDER-2", "2026-11-20T11:00:00Z"),
              NULL);
    put_event(s, "refund.succeeded", "T3",
              "{\"type\":\"refund.succeeded\",\"occurred_at\":\"2026-11-20T12:00:00Z\","
              "\"refund\":{\"gateway_id\":\"T3\",\"original_gateway_id\":\"T1\",\"reference\":"
              "\"ORDER-1-R\",\"kind\":\"Refund\",\"amount\":{\"minor\":500,\"currency\":\"GBP\"}}}",
              "T1");
    put_event(s, "payment.succeeded", "T5", PAYMENT("T5", 4200, "ORDER-5", "2026-11-21T09:00:00Z"),
              NULL);
    put_event(s, "payment.succeeded", "T6", PAYMENT("T6", 800, "ORDER-6", "2026-11-20T13:00:00Z"),
              NULL);
    complete_jobs(s, posted);

    /* the gateway settles T1, T2, T3 and T9 (a sale paybridge never saw) */
    reply = post_json(port, "/_sandbox/settle",
                      "{\"date\":\"2026-11-21\",\"transactions\":["
                      TX("T1", "Payment", 1000, "ORDER-1", "2026-11-20T10:00:00Z") ","
                      TX("T2", "Payment", 2500, "ORDER-2", "2026-11-20T11:00:00Z") ","
                      TX("T3", "Refund", 500, "ORDER-1-R", "2026-11-20T12:00:00Z") ","
                      TX("T9", "Payment", 700, "ORDER-9", "2026-11-20T14:00:00Z") "]}");
    assert_non_null(reply);
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 4);
    json_decref(reply);

    snprintf(outdir, sizeof outdir, "%s/out", dir);
    snprintf(path, sizeof path, "%s/paybridge.yaml", dir);
    snprintf(yaml, sizeof yaml,
             "store: sqlite:%s/t.db\n"
             "connections:\n"
             "  " CONN ":\n"
             "    connector: opayo\n"
             "    settings:\n"
             "      report_url: http://127.0.0.1:%d/access/access.htm\n"
             "      vendor_name: sandbox\n"
             "    secrets:\n"
             "      report_user: sandbox-report\n"
             "      report_password: sandbox-report-password\n"
             "    reconcile:\n"
             "      erp: opayo-bare\n"
             "      ledger: paybridge\n"
             "      post_journals: false\n"
             "      report_dir: %s\n"
             "  opayo-bare:\n"
             "    connector: opayo\n"
             "    reconcile: {erp: " CONN ", ledger: paybridge, post_journals: false}\n",
             dir, port, outdir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(yaml, f);
    fclose(f);
    if (pb_config_load(path, 0, &cfg, &d)) {
        pb_diags_print(&d, stderr);
        fail_msg("config did not load");
    }
    pb_diags_free(&d);
    snprintf(path, sizeof path, "%s/recon.db", dir);
    assert_int_equal(pb_recon_db_open(path, &db, &err), PB_OK);

    out = open_memstream(&text, &text_len);
    rc = pb_reconcile_once(cfg, s, db, CONN, "2026-11-21", out, &err);
    fclose(out);
    printf("%s", text);
    if (rc)
        fail_msg("reconcile: %s", err.msg);
    assert_non_null(strstr(text, "revision 1, ok,"));
    assert_non_null(strstr(text, "rule reference    3"));
    assert_non_null(strstr(text, "missing_in_erp       1"));
    assert_non_null(strstr(text, "breaks: 1 "));
    assert_non_null(strstr(text, "pending: 1 "));
    free(text);

    /* the JSON report: T1, T2, T3 by reference, T9 missing in the ERP */
    snprintf(path, sizeof path, "%s/recon-" CONN "-2026-11-21.json", outdir);
    report_text = pbt_slurp(path);
    assert_non_null(report_text);
    report = json_loads(report_text, 0, NULL);
    free(report_text);
    assert_non_null(report);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(report, "counts"), "matches_by_rule"),
                         "reference")),
                     3);
    assert_int_equal(json_array_size(json_object_get(report, "matches")), 3);
    {
        json_t *b = json_array_get(json_object_get(report, "breaks"), 0);
        assert_int_equal(json_array_size(json_object_get(report, "breaks")), 1);
        assert_string_equal(json_string_value(json_object_get(b, "class")), "missing_in_erp");
        assert_string_equal(json_string_value(json_object_get(b, "gateway_ref")), "T9");
        assert_string_equal(json_string_value(json_object_get(b, "merchant_ref")), "ORDER-9");
        assert_int_equal(json_integer_value(json_object_get(b, "amount_minor")), 700);
    }
    {
        /* every match names the rule and both sides */
        size_t i;
        json_t *m;
        int seen[3] = {0, 0, 0};
        json_array_foreach(json_object_get(report, "matches"), i, m)
        {
            const char *t = json_string_value(m);
            assert_non_null(strstr(t, "rule 1 reference"));
            seen[0] += strstr(t, "PAY-1") != NULL;
            seen[1] += strstr(t, "PAY-2") != NULL;
            seen[2] += strstr(t, "CN-1") != NULL;
        }
        assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    }
    json_decref(report);

    /* the CSV: a header and the one break */
    snprintf(path, sizeof path, "%s/recon-" CONN "-2026-11-21-breaks.csv", outdir);
    csv = pbt_slurp(path);
    assert_non_null(csv);
    assert_true(strncmp(csv, "class,action,", 13) == 0);
    assert_non_null(strstr(csv, "\nmissing_in_erp,post_to_erp,no,7.00,GBP,settlement,"));
    assert_non_null(strstr(csv, ",T9,ORDER-9,"));
    free(csv);

    /* the stored run */
    {
        json_t *run = NULL, *runs = NULL;
        assert_int_equal(pb_recon_db_run(db, CONN ":2026-11-21", &run, &err), PB_OK);
        assert_string_equal(json_string_value(json_object_get(run, "status")), "ok");
        assert_int_equal(json_integer_value(json_object_get(json_object_get(
                             json_object_get(run, "detail"), "counts"), "breaks")),
                         1);
        {
            /* its inputs and matches are stored too */
            json_t *items = NULL, *it;
            size_t i;
            int lines = 0, records = 0, matches = 0;
            assert_int_equal(pb_recon_db_run_items(db, json_integer_value(json_object_get(run, "id")),
                                                   NULL, &items, &err),
                             PB_OK);
            json_array_foreach(items, i, it)
            {
                const char *k = json_string_value(json_object_get(it, "kind"));
                lines += strcmp(k, "line") == 0;
                records += strcmp(k, "record") == 0;
                if (strcmp(k, "match") == 0) {
                    matches++;
                    assert_string_equal(json_string_value(json_object_get(it, "rule")), "reference");
                    assert_int_equal(json_integer_value(json_object_get(it, "confidence")), 100);
                }
            }
            assert_int_equal(lines, 4);   /* T1, T2, T3, T9 */
            assert_int_equal(records, 4); /* T1, T2, T3 and T5 (pending); T6 was never posted */
            assert_int_equal(matches, 3);
            json_decref(items);
        }
        json_decref(run);
        /* a re-run: revision 2, the same result, still one row for the day */
        out = open_memstream(&text, &text_len);
        assert_int_equal(pb_reconcile_once(cfg, s, db, CONN, "2026-11-21", out, &err), PB_OK);
        fclose(out);
        assert_non_null(strstr(text, "revision 2, ok,"));
        assert_non_null(strstr(text, "breaks: 1 "));
        free(text);
        assert_int_equal(pb_recon_db_runs(db, CONN, 10, &runs, &err), PB_OK);
        assert_int_equal(json_array_size(runs), 1);
        json_decref(runs);
        assert_int_equal(pb_recon_db_run(db, "999", &run, &err), PB_ERR_NOTFOUND);
    }

    /* no Reporting API settings: a config error naming what is missing, stored as a failed run */
    out = open_memstream(&text, &text_len);
    assert_int_equal(pb_reconcile_once(cfg, s, db, "opayo-bare", "2026-11-21", out, &err),
                     PB_ERR_CONFIG);
    fclose(out);
    free(text);
    assert_non_null(strstr(err.msg, "report_url"));
    {
        json_t *run = NULL;
        assert_int_equal(pb_recon_db_run(db, "opayo-bare:2026-11-21", &run, &err), PB_OK);
        assert_string_equal(json_string_value(json_object_get(run, "status")), "failed");
        assert_non_null(strstr(json_string_value(json_object_get(run, "error")), "report_url"));
        json_decref(run);
    }
    /* the period's breaks: the day's one break; the failed run has none */
    {
        json_t *days = NULL;
        assert_int_equal(pb_recon_db_breaks(db, NULL, "2026-11-01", "2026-11-30", &days, &err), PB_OK);
        assert_int_equal(json_array_size(days), 2);
        {
            size_t i, total = 0;
            json_t *d;
            json_array_foreach(days, i, d)
                total += json_array_size(json_object_get(d, "breaks"));
            assert_int_equal(total, 1);
        }
        json_decref(days);
        assert_int_equal(pb_recon_db_breaks(db, CONN, "2026-11-22", NULL, &days, &err), PB_OK);
        assert_int_equal(json_array_size(days), 0);
        json_decref(days);
    }
    /* a bad date and an unknown connection */
    out = open_memstream(&text, &text_len);
    assert_int_equal(pb_reconcile_once(cfg, s, db, CONN, "2026-13-01", out, &err), PB_ERR_INVALID);
    assert_int_equal(pb_reconcile_once(cfg, s, db, "nope", "2026-11-21", out, &err),
                     PB_ERR_NOTFOUND);
    fclose(out);
    free(text);

    pb_recon_db_close(db);
    pb_config_free(cfg);
    pb_store_close(s);
    pb_sandbox_stop(sb);
    snprintf(path, sizeof path, "rm -rf %s", dir);
    assert_int_equal(system(path), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reconcile_day),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
