/*
 * tests/unit/test_flow.c: flow loading and checking (engine/flow.c), the
 * per-thread jq mapper (engine/mapping.c), and the shipped template
 * flows/opayo-xero.yaml with one test per seed rule (R1..R6, see the
 * template's header comment and docs/flows.md).
 *
 * Sample events are the JSON files in tests/fixtures/events/, in the shape of
 * docs/canonical-model.md; the deliberately broken flow is
 * tests/fixtures/flows/broken.yaml, whose problems must be reported at the
 * lines listed in test_broken_fixture_lines. Fixtures are found through
 * PB_SOURCE_DIR (set by ctest to the source root).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/diag.h"
#include "core/yamldoc.h"
#include "engine/flow.h"
#include "engine/mapping.h"

#define TODAY "2026-11-30"

/* ---- helpers -------------------------------------------------------------------------- */

static void source_path(char *buf, size_t len, const char *rel)
{
    const char *src = getenv("PB_SOURCE_DIR");
    snprintf(buf, len, "%s/%s", src && *src ? src : ".", rel);
}

static char *read_text(const char *rel)
{
    char path[1024];
    FILE *f;
    long n;
    char *text;
    source_path(path, sizeof(path), rel);
    f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s (is PB_SOURCE_DIR set?)", path);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc((size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    return text;
}

static json_t *event(const char *name)
{
    char path[1024], rel[256];
    json_error_t je;
    json_t *e;
    snprintf(rel, sizeof(rel), "tests/fixtures/events/%s", name);
    source_path(path, sizeof(path), rel);
    e = json_load_file(path, 0, &je);
    if (!e)
        fail_msg("%s:%d: %s", path, je.line, je.text);
    return e;
}

static struct pb_flowset *set_from_file(const char *rel)
{
    char path[1024];
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    assert_non_null(set);
    source_path(path, sizeof(path), rel);
    if (pb_flowset_add_file(set, path, &d) != PB_OK) {
        pb_diags_print(&d, stderr);
        fail_msg("%s does not load", path);
    }
    assert_int_equal(pb_diags_count(&d), 0);
    pb_diags_free(&d);
    return set;
}

static struct pb_flowset *set_from_text(const char *text)
{
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    assert_non_null(set);
    if (pb_flowset_add_string(set, "test.yaml", text, &d) != PB_OK) {
        pb_diags_print(&d, stderr);
        fail_msg("flow text does not load:\n%s", text);
    }
    pb_diags_free(&d);
    return set;
}

/* Load `text`, expect failure, and return the problems (caller frees). */
static struct pb_diags load_problems(const char *text)
{
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    enum pb_rc rc = pb_flowset_add_string(set, "bad.yaml", text, &d);
    if (rc == PB_OK)
        fail_msg("expected problems, but the flow loaded:\n%s", text);
    assert_int_equal(pb_flowset_count(set), 0);
    pb_flowset_free(set);
    return d;
}

static int has_problem(const struct pb_diags *d, int line, const char *frag)
{
    for (size_t i = 0; i < d->n; i++)
        if ((line < 0 || d->v[i].line == line) && strstr(d->v[i].msg, frag))
            return 1;
    return 0;
}

static void expect_load_problem(const char *text, int line, const char *frag)
{
    struct pb_diags d = load_problems(text);
    if (!has_problem(&d, line, frag)) {
        pb_diags_print(&d, stderr);
        fail_msg("no problem at line %d containing \"%s\"", line, frag);
    }
    pb_diags_free(&d);
}

struct result {
    enum pb_rc rc;
    int run;
    char *ref;
    json_t *doc;
    struct pb_err err;
};

static void result_free(struct result *r)
{
    free(r->ref);
    json_decref(r->doc);
    memset(r, 0, sizeof(*r));
}

static void map_step(struct pb_mapper *m, const struct pb_flow *f, const char *step,
                     const json_t *ev, const json_t *refs, struct result *r)
{
    const struct pb_flow_step *st = pb_flow_step_find(f, step);
    memset(r, 0, sizeof(*r));
    if (!st)
        fail_msg("flow %s has no step %s", f->name, step);
    r->rc = pb_mapper_step(m, st, ev, refs, "evt_test", TODAY, &r->run, &r->ref, &r->doc, &r->err);
    if (r->rc != PB_OK) {
        assert_int_equal(r->run, 0);
        assert_null(r->ref);
        assert_null(r->doc);
        assert_int_equal(r->err.rc, r->rc);
    }
}

/* Run every step in order as the engine would; refs get "ID-<step>". */
static void run_flow(struct pb_mapper *m, const struct pb_flow *f, const json_t *ev,
                     struct result *out /* [f->n_steps] */)
{
    json_t *refs = json_object();
    for (size_t i = 0; i < f->n_steps; i++) {
        char id[96];
        map_step(m, f, f->steps[i].name, ev, refs, &out[i]);
        if (out[i].rc == PB_OK && out[i].run) {
            snprintf(id, sizeof(id), "ID-%s", f->steps[i].name);
            json_object_set_new(refs, f->steps[i].name, json_string(id));
        }
    }
    json_decref(refs);
}

static const char *str_at(const json_t *doc, const char *path)
{
    /* path: "a.b.0.c"; a segment selects an array index when the value is an array */
    const json_t *v = doc;
    const char *p = path;
    while (v && *p) {
        char seg[128];
        size_t n = strcspn(p, ".");
        snprintf(seg, sizeof(seg), "%.*s", (int)n, p);
        v = json_is_array(v) ? json_array_get(v, strtoul(seg, NULL, 10)) : json_object_get(v, seg);
        p += n + (p[n] == '.');
    }
    if (!json_is_string(v)) {
        char *text = json_dumps(doc, JSON_COMPACT);
        fprintf(stderr, "document: %s\n", text ? text : "(null)");
        free(text);
        fail_msg("%s is not a string", path);
    }
    return json_string_value(v);
}

static void assert_json(const json_t *got, const char *want_text)
{
    json_error_t je;
    json_t *want = json_loads(want_text, 0, &je);
    if (!want)
        fail_msg("bad expected JSON: %s", je.text);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_COMPACT), *w = json_dumps(want, JSON_COMPACT);
        fprintf(stderr, "got:  %s\nwant: %s\n", g ? g : "(null)", w);
        free(g);
        free(w);
        json_decref(want);
        fail_msg("JSON differs");
    }
    json_decref(want);
}

/* The shipped template, loaded once for the group. */
static struct pb_flowset *seed;
static struct pb_mapper *seed_mapper;
static const struct pb_flow *seed_flow;

static int setup_seed(void **state)
{
    struct pb_err err = {0};
    (void)state;
    seed = set_from_file("flows/opayo-xero.yaml");
    seed_flow = pb_flowset_find(seed, "opayo-xero-payments");
    seed_mapper = pb_mapper_new(seed, &err);
    if (!seed_flow || !seed_mapper) {
        fprintf(stderr, "seed setup failed: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown_seed(void **state)
{
    (void)state;
    pb_mapper_free(seed_mapper);
    pb_flowset_free(seed);
    return 0;
}

/* The seed template: contact, invoice, payment; credit, cash_refund;
 * chargeback_reversal, chargeback_won. */
#define SEED_STEPS 7

/* Run the seed flow on a sample; every step's result. */
static void seed_run(const char *sample, struct result r[SEED_STEPS])
{
    json_t *ev = event(sample);
    assert_int_equal(seed_flow->n_steps, SEED_STEPS);
    run_flow(seed_mapper, seed_flow, ev, r);
    json_decref(ev);
}

static void seed_results_free(struct result r[SEED_STEPS])
{
    for (int i = 0; i < SEED_STEPS; i++)
        result_free(&r[i]);
}

/* ---- the template ----------------------------------------------------------------------- */

/* Refunds: a credit note on the original invoice's contact, then a cash
 * refund of it; the ids of the original come from the engine's enrichment. */
static void test_refund_credit_note_and_cash_refund(void **state)
{
    struct result r[SEED_STEPS];
    (void)state;
    seed_run("opayo-refund-enriched.json", r);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].run, 0);
    assert_int_equal(r[3].rc, PB_OK);
    assert_int_equal(r[3].run, 1);
    assert_string_equal(r[3].ref, "RF-ORDER-10023-1");
    assert_string_equal(str_at(r[3].doc, "Type"), "ACCRECCREDIT");
    assert_string_equal(str_at(r[3].doc, "Contact.ContactID"), "C-1");
    assert_string_equal(str_at(r[3].doc, "LineItems.0.UnitAmount"), "2.50");
    assert_string_equal(str_at(r[3].doc, "Reference"), "RF-ORDER-10023-1");
    assert_int_equal(r[4].run, 1);
    assert_string_equal(str_at(r[4].doc, "CreditNote.CreditNoteID"), "ID-credit");
    assert_string_equal(str_at(r[4].doc, "Amount"), "2.50");
    assert_string_equal(str_at(r[4].doc, "Account.Code"), "091");
    assert_int_equal(r[5].run, 0);
    assert_int_equal(r[6].run, 0);
    seed_results_free(r);
}

/* A refund of a payment this flow never posted is an error that says so. */
static void test_refund_without_original_is_an_error(void **state)
{
    json_t *ev = event("opayo-refund-enriched.json");
    struct result res;
    (void)state;
    json_object_del(json_object_get(ev, "original"), "refs");
    map_step(seed_mapper, seed_flow, "credit", ev, NULL, &res);
    assert_int_equal(res.rc, PB_ERR_MAPPING);
    assert_non_null(strstr(res.err.msg, "retry later: the original payment"));
    result_free(&res);
    json_decref(ev);
}

/* Chargebacks: won voids the reversal posted when it opened. */
static void test_chargeback_won_voids_the_reversal(void **state)
{
    struct result r[SEED_STEPS];
    (void)state;
    seed_run("opayo-chargeback-won.json", r);
    for (int i = 0; i < 6; i++)
        assert_int_equal(r[i].run, 0);
    assert_int_equal(r[6].rc, PB_OK);
    assert_int_equal(r[6].run, 1);
    assert_string_equal(str_at(r[6].doc, "CreditNoteID"), "CN-9");
    seed_results_free(r);
}

/* pb_mapper_when: only the when clause and the $refs a step needs. */
static void test_mapper_when_only(void **state)
{
    json_t *ok = event("opayo-payment-ok-gbp.json"), *declined = event("opayo-payment-declined.json");
    json_t *refs = json_pack("{s:s}", "contact", "C-1");
    struct pb_err err = {0};
    int run = -1;
    (void)state;
    assert_int_equal(pb_mapper_when(seed_mapper, pb_flow_step_find(seed_flow, "contact"), ok, NULL,
                                    "1", "2026-11-21", &run, &err), PB_OK);
    assert_int_equal(run, 1);
    assert_int_equal(pb_mapper_when(seed_mapper, pb_flow_step_find(seed_flow, "contact"), declined,
                                    NULL, "1", "2026-11-21", &run, &err), PB_OK);
    assert_int_equal(run, 0);
    /* the invoice needs $refs.contact: without it, it does not run */
    assert_int_equal(pb_mapper_when(seed_mapper, pb_flow_step_find(seed_flow, "invoice"), ok, NULL,
                                    "1", "2026-11-21", &run, &err), PB_OK);
    assert_int_equal(run, 0);
    assert_int_equal(pb_mapper_when(seed_mapper, pb_flow_step_find(seed_flow, "invoice"), ok, refs,
                                    "1", "2026-11-21", &run, &err), PB_OK);
    assert_int_equal(run, 1);
    /* a refund step's when is false for a payment */
    assert_int_equal(pb_mapper_when(seed_mapper, pb_flow_step_find(seed_flow, "credit"), ok, refs,
                                    "1", "2026-11-21", &run, &err), PB_OK);
    assert_int_equal(run, 0);
    json_decref(refs);
    json_decref(ok);
    json_decref(declined);
}

static void test_seed_template_loads(void **state)
{
    (void)state;
    char *text = read_text("flows/opayo-xero.yaml");
    const struct pb_flow *f = seed_flow;

    assert_int_equal(pb_flowset_count(seed), 1);
    assert_ptr_equal(pb_flowset_flow(seed, 0), f);
    assert_string_equal(f->source, "opayo-shop");
    assert_string_equal(f->target, "xero-demo");
    assert_int_equal(f->n_events, 7);
    assert_true(pb_flow_handles(f, "payment.succeeded"));
    assert_true(pb_flow_handles(f, "payment.declined"));
    assert_true(pb_flow_handles(f, "refund.succeeded"));
    assert_true(pb_flow_handles(f, "chargeback.opened"));
    assert_true(pb_flow_handles(f, "chargeback.won"));
    assert_true(pb_flow_handles(f, "chargeback.lost")); /* listed, so it is recorded as handled */
    assert_false(pb_flow_handles(f, "settlement.batch"));
    assert_string_equal(f->steps[3].command, "creditnote.create");
    assert_string_equal(f->steps[4].command, "creditnote.refund");
    assert_string_equal(f->steps[5].command, "creditnote.create");
    assert_string_equal(f->steps[6].command, "creditnote.void");
    assert_string_equal(f->steps[0].name, "contact");
    assert_string_equal(f->steps[0].command, "contact.upsert");
    assert_string_equal(f->steps[1].command, "invoice.create");
    assert_string_equal(f->steps[2].command, "payment.create");
    assert_ptr_equal(f->steps[1].flow, f);
    assert_int_equal(f->steps[2].index, 2);
    assert_true(f->steps[0].line > 0 && f->steps[0].line < f->steps[1].line);
    /* the exact text and its version */
    assert_int_equal(f->text_len, strlen(text));
    assert_memory_equal(f->text, text, f->text_len);
    assert_int_equal(strlen(f->version), 7 + 64);
    assert_int_equal(strncmp(f->version, "sha256:", 7), 0);
    /* iteration by (source, type) */
    assert_ptr_equal(pb_flowset_next_match(seed, NULL, "opayo-shop", "payment.succeeded"), f);
    assert_null(pb_flowset_next_match(seed, f, "opayo-shop", "payment.succeeded"));
    assert_ptr_equal(pb_flowset_next_match(seed, NULL, "opayo-shop", "refund.succeeded"), f);
    assert_null(pb_flowset_next_match(seed, NULL, "opayo-shop", "settlement.batch"));
    assert_null(pb_flowset_next_match(seed, NULL, "other-shop", "payment.succeeded"));
    assert_ptr_equal(pb_flowset_next_match(seed, NULL, NULL, NULL), f);
    assert_null(pb_flow_step_find(f, "nope"));
    free(text);
}

/* Two loads of the same text have the same version; one changed byte does not. */
static void test_version_follows_text(void **state)
{
    (void)state;
    char *text = read_text("flows/opayo-xero.yaml"), *p;
    struct pb_flowset *a = set_from_text(text), *b;
    char va[80];
    snprintf(va, sizeof(va), "%s", pb_flowset_flow(a, 0)->version);
    assert_string_equal(va, seed_flow->version);
    p = strstr(text, "\"0.8571\"");
    assert_non_null(p);
    p[6] = '2';
    b = set_from_text(text);
    assert_string_not_equal(pb_flowset_flow(b, 0)->version, va);
    pb_flowset_free(a);
    pb_flowset_free(b);
    free(text);
}

/* ---- the seed rules ---------------------------------------------------------------------- */

/* R1: vendorTxCode becomes Invoice.Reference and Payment.Reference. */
static void test_rule1_vendortxcode_is_reference(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];
    seed_run("opayo-payment-ok-gbp.json", r);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].rc, PB_OK);
    assert_string_equal(r[1].ref, "ORDER-10023");
    assert_string_equal(str_at(r[1].doc, "Reference"), "ORDER-10023");
    assert_string_equal(r[2].ref, "ORDER-10023");
    assert_string_equal(str_at(r[2].doc, "Reference"), "ORDER-10023");
    seed_results_free(r);
}

/* R2: Ok -> contact, AUTHORISED invoice, payment against it. */
static void test_rule2_ok_is_paid(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];
    seed_run("opayo-payment-ok-gbp.json", r);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].rc, PB_OK);
        assert_int_equal(r[i].run, 1);
    }
    assert_string_equal(r[0].ref, "email:ann@example.com");
    assert_json(r[1].doc, "{\"Type\": \"ACCREC\", \"Contact\": {\"ContactID\": \"ID-contact\"},"
                          " \"Date\": \"2026-11-21\", \"DueDate\": \"2026-11-21\","
                          " \"LineAmountTypes\": \"NoTax\", \"Status\": \"AUTHORISED\","
                          " \"CurrencyCode\": \"GBP\", \"Reference\": \"ORDER-10023\","
                          " \"LineItems\": [{\"Description\": \"Order 10023 (Opayo txn "
                          "DB79BA2D-05DA-5B85-D188-1293D16BBAC7)\", \"Quantity\": \"1\","
                          " \"UnitAmount\": \"10.99\", \"AccountCode\": \"200\"}]}");
    assert_json(r[2].doc, "{\"Invoice\": {\"InvoiceID\": \"ID-invoice\"},"
                          " \"Account\": {\"Code\": \"091\"}, \"Date\": \"2026-11-21\","
                          " \"Amount\": \"10.99\", \"Reference\": \"ORDER-10023\"}");
    seed_results_free(r);
}

/* R2: NotAuthed / Rejected -> no step runs, not even with refs supplied. */
static void test_rule2_declined_creates_nothing(void **state)
{
    (void)state;
    const char *samples[] = {"opayo-payment-declined.json", "opayo-payment-rejected.json"};
    for (size_t s = 0; s < 2; s++) {
        json_t *ev = event(samples[s]);
        json_t *refs = json_pack("{s:s, s:s}", "contact", "C1", "invoice", "I1");
        struct result r[SEED_STEPS];
        run_flow(seed_mapper, seed_flow, ev, r);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(r[i].rc, PB_OK);
            assert_int_equal(r[i].run, 0);
            assert_null(r[i].doc);
            assert_null(r[i].ref);
        }
        /* the `when`, not only the missing refs, keeps invoice and payment out */
        for (int i = 1; i < 3; i++) {
            struct result x;
            map_step(seed_mapper, seed_flow, seed_flow->steps[i].name, ev, refs, &x);
            assert_int_equal(x.rc, PB_OK);
            assert_int_equal(x.run, 0);
            result_free(&x);
        }
        seed_results_free(r);
        json_decref(refs);
        json_decref(ev);
    }
}

/* R2: a "succeeded" event whose Opayo status is not Ok is an error, not a skip. */
static void test_rule2_succeeded_without_ok_is_an_error(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];
    seed_run("opayo-payment-odd-status.json", r);
    assert_int_equal(r[0].rc, PB_ERR_MAPPING);
    assert_non_null(strstr(r[0].err.msg, "flow opayo-xero-payments step contact when: "));
    assert_non_null(strstr(r[0].err.msg, "\"Registered\""));
    assert_int_equal(r[1].rc, PB_OK); /* skipped: contact did not run */
    assert_int_equal(r[1].run, 0);
    seed_results_free(r);
}

/* R3: the Opayo transactionId is in the invoice line, the payment Reference is untouched. */
static void test_rule3_transaction_id_traceable(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];
    char *pay;
    seed_run("opayo-payment-ok-gbp.json", r);
    assert_string_equal(str_at(r[1].doc, "LineItems.0.Description"),
                        "Order 10023 (Opayo txn DB79BA2D-05DA-5B85-D188-1293D16BBAC7)");
    assert_string_equal(str_at(r[2].doc, "Reference"), "ORDER-10023");
    /* only real Xero Payment fields: no invented "Details"/suffix */
    assert_null(json_object_get(r[2].doc, "Details"));
    pay = json_dumps(r[2].doc, JSON_COMPACT);
    assert_null(strstr(pay, "DB79BA2D"));
    free(pay);
    result_free(&r[0]);
    result_free(&r[1]);
    result_free(&r[2]);

    /* without a description the line still names the payment and the txn */
    seed_run("opayo-payment-minimal.json", r);
    assert_string_equal(
        str_at(r[1].doc, "LineItems.0.Description"),
        "Opayo payment ORDER-10030 (Opayo txn 99990000-AAAA-BBBB-CCCC-DDDDEEEEFFFF)");
    seed_results_free(r);
}

/* R4: AccountCode by transaction type, with a default. */
static void test_rule4_account_code_by_kind(void **state)
{
    (void)state;
    struct {
        const char *sample, *code;
    } cases[] = {
        {"opayo-payment-ok-gbp.json", "200"},  /* Payment */
        {"opayo-payment-eur.json", "200"},     /* Repeat */
        {"opayo-payment-jpy.json", "260"},     /* Deferred */
        {"opayo-payment-minimal.json", "200"}, /* Authenticate: not in the table -> default */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct result r[SEED_STEPS];
        seed_run(cases[i].sample, r);
        assert_int_equal(r[1].rc, PB_OK);
        assert_string_equal(str_at(r[1].doc, "LineItems.0.AccountCode"), cases[i].code);
        seed_results_free(r);
    }

    /* the default really is the default: change it and the unknown kind follows */
    {
        char *text = read_text("flows/opayo-xero.yaml"), *p;
        struct pb_flowset *set;
        struct pb_mapper *m;
        struct pb_err err = {0};
        struct result r[SEED_STEPS];
        json_t *ev;
        p = strstr(text, "default_sales_account: \"200\"");
        assert_non_null(p);
        memcpy(p + strlen("default_sales_account: \""), "497", 3);
        set = set_from_text(text);
        m = pb_mapper_new(set, &err);
        assert_non_null(m);
        ev = event("opayo-payment-minimal.json");
        run_flow(m, pb_flowset_flow(set, 0), ev, r);
        assert_string_equal(str_at(r[1].doc, "LineItems.0.AccountCode"), "497");
        seed_results_free(r);
        json_decref(ev);
        ev = event("opayo-payment-ok-gbp.json");
        run_flow(m, pb_flowset_flow(set, 0), ev, r);
        assert_string_equal(str_at(r[1].doc, "LineItems.0.AccountCode"), "200");
        seed_results_free(r);
        json_decref(ev);
        pb_mapper_free(m);
        pb_flowset_free(set);
        free(text);
    }
}

/* R5: other currencies are converted at the configured rate and noted. */
static void test_rule5_fx_conversion(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];

    seed_run("opayo-payment-eur.json", r); /* EUR 12.50 * 0.8571 = 10.71375 -> 10.71 */
    assert_string_equal(str_at(r[1].doc, "CurrencyCode"), "GBP");
    assert_string_equal(str_at(r[1].doc, "LineItems.0.UnitAmount"), "10.71");
    assert_string_equal(str_at(r[1].doc, "LineItems.0.Description"),
                        "Opayo payment WEB-EU-5001 (EUR 12.50 at 0.8571 GBP/EUR) "
                        "(Opayo txn A1B2C3D4-E5F6-4711-8899-AABBCCDDEEFF)");
    assert_string_equal(str_at(r[2].doc, "Amount"), "10.71");
    seed_results_free(r);

    seed_run("opayo-payment-jpy.json", r); /* JPY 1234 * 0.0053 = 6.5402 -> 6.54 */
    assert_string_equal(str_at(r[1].doc, "LineItems.0.UnitAmount"), "6.54");
    assert_non_null(
        strstr(str_at(r[1].doc, "LineItems.0.Description"), "(JPY 1234 at 0.0053 GBP/JPY)"));
    assert_string_equal(str_at(r[2].doc, "Amount"), "6.54");
    seed_results_free(r);

    seed_run("opayo-payment-ok-gbp.json", r); /* same currency: no note, same amount */
    assert_null(strstr(str_at(r[1].doc, "LineItems.0.Description"), " at "));
    assert_string_equal(str_at(r[1].doc, "LineItems.0.UnitAmount"), "10.99");
    seed_results_free(r);

    /* $fx itself */
    {
        json_t *ev = event("opayo-payment-eur.json"), *fx = NULL;
        struct pb_err err = {0};
        assert_int_equal(pb_flow_fx(seed_flow, ev, &fx, &err), PB_OK);
        assert_json(
            fx, "{\"base_currency\": \"GBP\", \"currency\": \"EUR\", \"rate\": \"0.8571\","
                " \"converted\": true,"
                " \"amount\": {\"minor\": 1071, \"currency\": \"GBP\", \"decimal\": \"10.71\"},"
                " \"original\": {\"minor\": 1250, \"currency\": \"EUR\", \"decimal\": \"12.50\"}}");
        json_decref(fx);
        json_decref(ev);
        ev = event("opayo-payment-ok-gbp.json");
        assert_int_equal(pb_flow_fx(seed_flow, ev, &fx, &err), PB_OK);
        assert_string_equal(json_string_value(json_object_get(fx, "rate")), "1");
        assert_true(json_is_false(json_object_get(fx, "converted")));
        assert_int_equal(
            json_integer_value(json_object_get(json_object_get(fx, "amount"), "minor")), 1099);
        json_decref(fx);
        json_decref(ev);
    }
}

/* R5 with a 0-decimal base currency, half-even rounding, and a missing rate. */
static void test_fx_jpy_base_and_missing_rate(void **state)
{
    (void)state;
    static const char flow[] = "flow: jp-books\n"
                               "source: opayo-jp\n"
                               "events: [payment.succeeded]\n"
                               "target: erp\n"
                               "fx: {base_currency: JPY, rates: {GBP: \"190.5\", USD: \"0.5\"}}\n"
                               "steps:\n"
                               "  - name: sale\n"
                               "    command: invoice.create\n"
                               "    reference: '.payment.reference'\n"
                               "    document: {Amount: '$fx.amount.decimal', Minor: "
                               "'$fx.amount.minor', Cur: '$fx.amount.currency'}\n";
    struct pb_flowset *set = set_from_text(flow);
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    struct {
        const char *amount; /* JSON money */
        const char *want;
    } cases[] = {
        {"{\"minor\": 1099, \"currency\": \"GBP\", \"decimal\": \"10.99\"}", "2094"}, /* 2093.595 */
        {"{\"minor\": 300, \"currency\": \"USD\", \"decimal\": \"3.00\"}", "2"},      /* 1.5 -> 2 */
        {"{\"minor\": 500, \"currency\": \"USD\", \"decimal\": \"5.00\"}",
         "2"}, /* 2.5 -> 2 (even) */
        {"{\"minor\": 700, \"currency\": \"USD\", \"decimal\": \"7.00\"}", "4"}, /* 3.5 -> 4 */
        {"{\"minor\": 5000, \"currency\": \"JPY\", \"decimal\": \"5000\"}",
         "5000"}, /* base itself */
    };
    assert_non_null(m);
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        json_error_t je;
        json_t *ev = json_pack("{s:s, s:{s:s, s:o}}", "type", "payment.succeeded", "payment",
                               "reference", "R-1", "amount", json_loads(cases[i].amount, 0, &je));
        struct result r;
        map_step(m, f, "sale", ev, NULL, &r);
        if (r.rc)
            fail_msg("%s", r.err.msg);
        assert_string_equal(str_at(r.doc, "Amount"), cases[i].want);
        assert_int_equal(json_integer_value(json_object_get(r.doc, "Minor")),
                         strtoll(cases[i].want, NULL, 10));
        assert_string_equal(str_at(r.doc, "Cur"), "JPY");
        result_free(&r);
        json_decref(ev);
    }
    /* no rate for EUR: a mapping error naming the currency */
    {
        json_t *ev = json_pack("{s:s, s:{s:s, s:{s:i, s:s, s:s}}}", "type", "payment.succeeded",
                               "payment", "reference", "R-2", "amount", "minor", 1000, "currency",
                               "EUR", "decimal", "10.00"),
               *fx = NULL;
        struct result r;
        map_step(m, f, "sale", ev, NULL, &r);
        assert_int_equal(r.rc, PB_ERR_MAPPING);
        assert_non_null(
            strstr(r.err.msg, "flow jp-books step sale field Amount: no FX rate for EUR"));
        assert_non_null(strstr(r.err.msg, "fx.rates"));
        assert_int_equal(pb_flow_fx(f, ev, &fx, &err), PB_ERR_MAPPING);
        assert_null(fx);
        assert_non_null(strstr(err.msg, "EUR"));
        result_free(&r);
        json_decref(ev);
    }
    pb_mapper_free(m);
    pb_flowset_free(set);

    /* $fx is lazy: a `when` that reaches it through defs fails with the FX
     * error, while one that does not use it can still skip the step */
    {
        static const char lazy[] =
            "flow: lazy\n"
            "source: s\n"
            "events: [payment.succeeded]\n"
            "target: t\n"
            "fx: {base_currency: GBP}\n"
            "defs: 'def big: $fx.amount.minor > 100;'\n"
            "steps:\n"
            "  - {name: a, command: x.y, when: 'big', reference: '\"r\"', document: {}}\n"
            "  - {name: b, command: x.y, when: '.go', reference: '\"r\"', document: {}}\n";
        json_t *ev =
            json_pack("{s:s, s:b, s:{s:{s:i, s:s, s:s}}}", "type", "payment.succeeded", "go", 0,
                      "payment", "amount", "minor", 1000, "currency", "EUR", "decimal", "10.00");
        struct result r;
        set = set_from_text(lazy);
        f = pb_flowset_flow(set, 0);
        m = pb_mapper_new(set, &err);
        assert_non_null(m);
        map_step(m, f, "a", ev, NULL, &r);
        assert_int_equal(r.rc, PB_ERR_MAPPING);
        assert_non_null(strstr(r.err.msg, "flow lazy step a when: no FX rate for EUR"));
        result_free(&r);
        map_step(m, f, "b", ev, NULL, &r);
        assert_int_equal(r.rc, PB_OK);
        assert_int_equal(r.run, 0);
        result_free(&r);
        /* ... but a step that runs, in a flow that uses $fx, stops */
        json_object_set_new(ev, "go", json_true());
        map_step(m, f, "b", ev, NULL, &r);
        assert_int_equal(r.rc, PB_ERR_MAPPING);
        assert_non_null(strstr(r.err.msg, "flow lazy step b: no FX rate for EUR"));
        result_free(&r);
        json_decref(ev);
        pb_mapper_free(m);
        pb_flowset_free(set);
    }
}

/* R5 on the template: CHF has no rate, so nothing is created (the first step fails). */
static void test_fx_missing_rate_stops_the_first_step(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];
    seed_run("opayo-payment-chf.json", r);
    assert_int_equal(r[0].rc, PB_ERR_MAPPING);
    assert_non_null(strstr(r[0].err.msg, "step contact"));
    assert_non_null(strstr(r[0].err.msg, "no FX rate for CHF"));
    assert_int_equal(r[1].run, 0);
    assert_int_equal(r[2].run, 0);
    seed_results_free(r);

    /* a declined CHF payment is still just skipped (its when is false) */
    {
        json_t *ev = event("opayo-payment-declined.json");
        json_object_set_new(json_object_get(json_object_get(ev, "payment"), "amount"), "currency",
                            json_string("CHF"));
        run_flow(seed_mapper, seed_flow, ev, r);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(r[i].rc, PB_OK);
            assert_int_equal(r[i].run, 0);
        }
        seed_results_free(r);
        json_decref(ev);
    }
}

/* R6: the billing address, normalised into one STREET address. */
static void test_rule6_address_normalised(void **state)
{
    (void)state;
    struct result r[SEED_STEPS];
    seed_run("opayo-payment-eur.json", r);
    assert_string_equal(r[0].ref, "email:claire.dupont@example.fr");
    assert_json(r[0].doc,
                "{\"Name\": \"Claire Dupont\", \"FirstName\": \"Claire\","
                " \"LastName\": \"Dupont\", \"EmailAddress\": \"Claire.Dupont@Example.FR\","
                " \"Addresses\": [{\"AddressType\": \"STREET\","
                " \"AddressLine1\": \"12 Rue de Rivoli\", \"City\": \"Paris\","
                " \"PostalCode\": \"75001\", \"Country\": \"FR\"}]}");
    seed_results_free(r);

    seed_run("opayo-payment-ok-gbp.json", r);
    assert_json(json_object_get(r[0].doc, "Addresses"),
                "[{\"AddressType\": \"STREET\", \"AddressLine1\": \"88 High St\","
                " \"City\": \"London\", \"PostalCode\": \"W1A 1AA\", \"Country\": \"GB\"}]");
    assert_string_equal(str_at(r[0].doc, "Name"), "Ann Smith");
    seed_results_free(r);

    /* no address, no name: no Addresses at all, and the Name falls back to the e-mail */
    seed_run("opayo-payment-minimal.json", r);
    assert_json(r[0].doc,
                "{\"Name\": \"guest@example.com\", \"EmailAddress\": \"guest@example.com\"}");
    seed_results_free(r);
}

/* ---- conformance to Xero's Accounting API spec ------------------------------------------ */

/* Follow "$ref": "#/components/schemas/X" links. */
static const json_t *resolve(const json_t *schemas, const json_t *schema)
{
    for (int i = 0; i < 8 && schema; i++) {
        const char *ref = json_string_value(json_object_get(schema, "$ref"));
        if (!ref)
            return schema;
        if (strncmp(ref, "#/components/schemas/", 21) != 0)
            return NULL;
        schema = json_object_get(schemas, ref + 21);
    }
    return NULL;
}

static int is_decimal_text(const char *s)
{
    int digits = 0;
    if (*s == '-')
        s++;
    for (; *s >= '0' && *s <= '9'; s++)
        digits++;
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9'))
            return 0;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return digits && !*s;
}

/* 1 when `v` conforms to `schema`: every member is a property of the schema
 * (and not read-only), enums hold, strings are strings, numbers are decimal
 * text (the sink writes them as JSON numbers) or integers. */
static int conform(const json_t *schemas, const json_t *schema, const json_t *v, const char *path,
                   char *why, size_t len)
{
    const json_t *props, *en;
    const char *type;
    schema = resolve(schemas, schema);
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
            const json_t *p = resolve(schemas, json_object_get(props, key));
            char sub[256];
            snprintf(sub, sizeof(sub), "%s.%s", path, key);
            if (!json_object_get(props, key)) {
                snprintf(why, len, "%s: no such field in the schema", sub);
                return 0;
            }
            if (json_is_true(json_object_get(json_object_get(props, key), "readOnly"))) {
                snprintf(why, len, "%s: the field is read-only", sub);
                return 0;
            }
            if (!conform(schemas, p, member, sub, why, len))
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
            snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
            if (!conform(schemas, json_object_get(schema, "items"), item, sub, why, len))
                return 0;
        }
        return 1;
    }
    if (json_is_array(en)) {
        size_t i;
        json_t *e;
        json_array_foreach(en, i, e) if (json_equal(e, v)) return 1;
        snprintf(why, len, "%s: \"%s\" is not one of the enum values", path,
                 json_is_string(v) ? json_string_value(v) : "(not text)");
        return 0;
    }
    if (type && strcmp(type, "string") == 0 && !json_is_string(v)) {
        snprintf(why, len, "%s: must be text", path);
        return 0;
    }
    if (type && strcmp(type, "number") == 0 &&
        !(json_is_integer(v) || (json_is_string(v) && is_decimal_text(json_string_value(v))))) {
        snprintf(why, len, "%s: must be decimal text or an integer", path);
        return 0;
    }
    if (type && strcmp(type, "boolean") == 0 && !json_is_boolean(v)) {
        snprintf(why, len, "%s: must be a boolean", path);
        return 0;
    }
    return 1;
}

static void test_documents_conform_to_xero_spec(void **state)
{
    (void)state;
    const char *spec = getenv("PB_XERO_SPEC");
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    const json_t *schemas;
    const char *samples[] = {"opayo-payment-ok-gbp.json", "opayo-payment-eur.json",
                             "opayo-payment-jpy.json", "opayo-payment-minimal.json"};
    const char *schema_of[] = {"Contact", "Invoice", "Payment"};

    if (!spec)
        spec = "/work/shared/specs/xero/xero_accounting.yaml";
    if (access(spec, R_OK) != 0) {
        fprintf(stderr, "skipped: Xero spec not found at %s (set PB_XERO_SPEC)\n", spec);
        skip();
    }
    if (pb_yamldoc_load_file(spec, &doc, &d) != PB_OK) {
        pb_diags_print(&d, stderr);
        fail_msg("cannot load %s", spec);
    }
    schemas = json_object_get(json_object_get(pb_yamldoc_root(doc), "components"), "schemas");
    assert_non_null(json_object_get(schemas, "Invoice"));
    for (size_t s = 0; s < sizeof(samples) / sizeof(*samples); s++) {
        struct result r[SEED_STEPS];
        seed_run(samples[s], r);
        for (int i = 0; i < 3; i++) {
            char why[512];
            assert_int_equal(r[i].rc, PB_OK);
            assert_int_equal(r[i].run, 1);
            if (!conform(schemas, json_object_get(schemas, schema_of[i]), r[i].doc,
                         schema_of[i], why, sizeof(why)))
                fail_msg("%s: %s", samples[s], why);
        }
        seed_results_free(r);
    }
    /* the checker itself catches a wrong field and a wrong enum value */
    {
        char why[512];
        json_t *bad = json_pack("{s:s, s:s}", "Type", "ACCREC", "Refrence", "x");
        assert_false(conform(schemas, json_object_get(schemas, "Invoice"), bad, "Invoice", why,
                             sizeof(why)));
        assert_non_null(strstr(why, "Invoice.Refrence: no such field"));
        json_decref(bad);
        bad = json_pack("{s:s}", "Status", "PAID_IN_FULL");
        assert_false(conform(schemas, json_object_get(schemas, "Invoice"), bad, "Invoice", why,
                             sizeof(why)));
        json_decref(bad);
        bad = json_pack("{s:f}", "Amount", 10.5);
        assert_false(conform(schemas, json_object_get(schemas, "Payment"), bad, "Payment", why,
                             sizeof(why)));
        json_decref(bad);
    }
    pb_yamldoc_free(doc);
}

/* ---- evaluation semantics ----------------------------------------------------------------- */

static const char semantics_flow[] =
    "flow: semantics\n"
    "source: src\n"
    "events: [payment.succeeded]\n"
    "target: sink\n"
    "vars: {codes: {a: \"A1\"}}\n"
    "steps:\n"
    "  - name: first\n"
    "    command: thing.create\n"
    "    reference: '\"r-\" + $event_id'\n"
    "    document:\n"
    "      Keep: '\"k\"'\n"
    "      Gone: 'null'\n"
    "      Missing: '.nope.nothing'\n"
    "      Empty: {A: 'null', B: {C: '.x'}}\n"
    "      Partly: {A: 'null', B: '\"b\"'}\n"
    "      List: [{A: 'null'}, '\"x\"', 'null', {B: '1'}]\n"
    "      AllGone: [{A: 'null'}]\n"
    "      Own: '{a: null, b: []}'\n"
    "      Zero: '0'\n"
    "      Flag: false\n"
    "      Int: 42\n"
    "      EmptyText: '\"\"'\n"
    "      Now: '$now'\n"
    "      Code: '$vars.codes.a # a comment at the end'\n"
    "      Literal: '\"$fx, $ENV and $refs.nope are only text here: \\(1 + 1)\"'\n"
    "  - name: second\n"
    "    command: thing.update\n"
    "    when: '.go'\n"
    "    reference: '$refs.first'\n"
    "    document: {Nothing: 'null'}\n";

static void test_null_omission_and_variables(void **state)
{
    (void)state;
    struct pb_flowset *set = set_from_text(semantics_flow);
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    json_t *ev = json_pack("{s:s, s:b}", "type", "payment.succeeded", "go", 1);
    json_t *refs = json_pack("{s:s}", "first", "F-1");
    struct result r;

    assert_non_null(m);
    map_step(m, f, "first", ev, NULL, &r);
    if (r.rc)
        fail_msg("%s", r.err.msg);
    assert_int_equal(r.run, 1);
    assert_string_equal(r.ref, "r-evt_test");
    assert_json(r.doc,
                "{\"Keep\": \"k\", \"Partly\": {\"B\": \"b\"}, \"List\": [\"x\", {\"B\": 1}],"
                " \"Own\": {\"a\": null, \"b\": []}, \"Zero\": 0, \"Flag\": false, \"Int\": 42,"
                " \"EmptyText\": \"\", \"Now\": \"" TODAY "\", \"Code\": \"A1\","
                " \"Literal\": \"$fx, $ENV and $refs.nope are only text here: 2\"}");
    result_free(&r);

    /* the whole document may end up empty: it is then {} */
    map_step(m, f, "second", ev, refs, &r);
    assert_int_equal(r.rc, PB_OK);
    assert_int_equal(r.run, 1);
    assert_string_equal(r.ref, "F-1");
    assert_json(r.doc, "{}");
    result_free(&r);

    /* when: false and null skip */
    json_object_set_new(ev, "go", json_false());
    map_step(m, f, "second", ev, refs, &r);
    assert_int_equal(r.rc, PB_OK);
    assert_int_equal(r.run, 0);
    result_free(&r);
    json_object_del(ev, "go");
    map_step(m, f, "second", ev, refs, &r);
    assert_int_equal(r.run, 0);
    result_free(&r);

    /* a step that needs $refs.first is skipped when first did not run */
    json_object_set_new(ev, "go", json_true());
    map_step(m, f, "second", ev, NULL, &r);
    assert_int_equal(r.rc, PB_OK);
    assert_int_equal(r.run, 0);
    result_free(&r);
    json_object_set_new(refs, "first", json_null());
    map_step(m, f, "second", ev, refs, &r);
    assert_int_equal(r.run, 0);
    result_free(&r);

    /* a step of another set is refused */
    {
        const struct pb_flow_step *other = &seed_flow->steps[0];
        int run = 7;
        char *ref = (char *)"x";
        json_t *doc = (json_t *)ev;
        assert_int_equal(pb_mapper_step(m, other, ev, NULL, "e", TODAY, &run, &ref, &doc, &err),
                         PB_ERR_INVALID);
        assert_int_equal(run, 0);
        assert_null(ref);
        assert_null(doc);
    }
    json_decref(refs);
    json_decref(ev);
    pb_mapper_free(m);
    pb_flowset_free(set);
}

static const char error_flow[] =
    "flow: t-err\n"
    "source: src\n"
    "events: [payment.succeeded]\n"
    "target: sink\n"
    "steps:\n"
    "  - name: s\n"
    "    command: thing.create\n"
    "    when: '.when_mode | if . == \"boom\" then error(\"when exploded\") else true end'\n"
    "    reference: 'if .ref_mode == \"number\" then 42 elif .ref_mode == \"empty\" then \"\" else "
    "\"ok\" end'\n"
    "    document:\n"
    "      Name: '\"n\"'\n"
    "      LineItems:\n"
    "        - Description: '\"d\"'\n"
    "          AccountCode: 'if .mode == \"add\" then .payment.kind + 1 else \"200\" end'\n"
    "          Count: 'if .mode == \"none\" then empty elif .mode == \"many\" then (1, 2) else 1 "
    "end'\n"
    "          Amount: 'if .mode == \"double\" then .payment.amount.minor / 100 else \"10.99\" "
    "end'\n"
    "          Custom: 'if .mode == \"obj\" then error({code: 7}) else null end'\n";

static void expect_error(struct pb_mapper *m, const struct pb_flow *f, const char *mode_key,
                         const char *mode, const char *prefix, const char *frag)
{
    json_t *ev = json_pack("{s:s, s:{s:s, s:{s:i}}}", "type", "payment.succeeded", "payment",
                           "kind", "Payment", "amount", "minor", 1099);
    struct result r;
    json_object_set_new(ev, mode_key, json_string(mode));
    map_step(m, f, "s", ev, NULL, &r);
    if (r.rc != PB_ERR_MAPPING)
        fail_msg("mode %s=%s: rc %d (%s), want a mapping error", mode_key, mode, r.rc, r.err.msg);
    if (strncmp(r.err.msg, prefix, strlen(prefix)) != 0 || !strstr(r.err.msg, frag))
        fail_msg("mode %s=%s: message \"%s\" lacks \"%s\" ... \"%s\"", mode_key, mode, r.err.msg,
                 prefix, frag);
    result_free(&r);
    json_decref(ev);
}

static void test_runtime_errors_name_the_field(void **state)
{
    (void)state;
    struct pb_flowset *set = set_from_text(error_flow);
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    assert_non_null(m);

    expect_error(m, f, "mode", "add",
                 "flow t-err step s field LineItems[0].AccountCode: ", "cannot be added");
    expect_error(m, f, "mode", "none",
                 "flow t-err step s field LineItems[0].Count: ", "produced no value");
    expect_error(m, f, "mode", "many",
                 "flow t-err step s field LineItems[0].Count: ", "more than one value");
    expect_error(m, f, "mode", "double", "flow t-err step s field LineItems[0].Amount: ",
                 "10.99, which is not an exact integer");
    expect_error(m, f, "mode", "obj",
                 "flow t-err step s field LineItems[0].Custom: ", "{\"code\":7}");
    expect_error(m, f, "when_mode", "boom", "flow t-err step s when: ", "when exploded");
    expect_error(m, f, "ref_mode", "number",
                 "flow t-err step s reference: ", "must be non-empty text");
    expect_error(m, f, "ref_mode", "empty", "flow t-err step s reference: ", "empty");

    /* and the good path of the same flow works */
    {
        json_t *ev = json_pack("{s:s}", "type", "payment.succeeded");
        struct result r;
        map_step(m, f, "s", ev, NULL, &r);
        assert_int_equal(r.rc, PB_OK);
        assert_json(r.doc, "{\"Name\": \"n\", \"LineItems\": [{\"Description\": \"d\","
                           " \"AccountCode\": \"200\", \"Count\": 1, \"Amount\": \"10.99\"}]}");
        result_free(&r);
        json_decref(ev);
    }
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* ---- load-time checking ----------------------------------------------------------------- */

static void test_broken_fixture_lines(void **state)
{
    (void)state;
    char path[1024];
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    static const struct {
        int line;
        const char *frag;
    } want[] = {
        {5, "unknown event type \"payment.succeded\"; did you mean payment.succeeded?"},
        {6, "unknown key `taget` in the flow; did you mean `target`?"},
        {3, "the flow has no `target:`"},
        {11, "fx rate for EUR \"-1\" is not usable"},
        {11, "fx rate for \"EURO\": not an ISO 4217 currency code"},
        {15, "unknown key `refrence` in step contact; did you mean `reference`?"},
        {13, "step contact has no `reference:`"},
        {17, "step contact field Name: jq: syntax error"},
        {18, "duplicate step name \"contact\" (also step 1 at line 13)"},
        {21, "step 2 field Name: flow expressions cannot read the process environment"},
        {26, "step invoice field Contact.ContactID: $refs.contatc is not an earlier step; did you "
             "mean $refs.contact?"},
        {28, "step invoice field LineItems[0].UnitAmount: 10.99 is a jq number"},
        {29, "$vars.default_sales_acount is not defined in vars:; did you mean "
             "$vars.default_sales_account?"},
        {30, "$refs.payment is a later step"},
        {32, "command \"payment\" must look like noun.verb"},
        {33, "step payment reference: unbalanced brackets"},
    };
    source_path(path, sizeof(path), "tests/fixtures/flows/broken.yaml");
    assert_int_equal(pb_flowset_add_file(set, path, &d), PB_ERR_CONFIG);
    assert_int_equal(pb_flowset_count(set), 0);
    for (size_t i = 0; i < sizeof(want) / sizeof(*want); i++) {
        if (!has_problem(&d, want[i].line, want[i].frag)) {
            pb_diags_print(&d, stderr);
            fail_msg("missing problem at line %d: %s", want[i].line, want[i].frag);
        }
    }
    /* every problem once, nothing else, and every entry names the file */
    if (d.n != sizeof(want) / sizeof(*want)) {
        pb_diags_print(&d, stderr);
        fail_msg("%zu problems reported, want %zu", d.n, sizeof(want) / sizeof(*want));
    }
    for (size_t i = 0; i < d.n; i++)
        assert_non_null(strstr(d.v[i].file, "broken.yaml"));
    pb_diags_free(&d);
    pb_flowset_free(set);
}

#define GOOD_HEAD                                                                                  \
    "flow: f1\n"                                                                                   \
    "source: src\n"                                                                                \
    "events: [payment.succeeded]\n"                                                                \
    "target: sink\n"

static void test_load_problems(void **state)
{
    (void)state;
    expect_load_problem("- just\n- a list\n", 1, "a flow file must be a mapping");
    expect_load_problem("flow: x\n", 1, "has no `steps:`");
    expect_load_problem(GOOD_HEAD "steps: []\n", 5, "`steps` must be a non-empty list");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    comand: x.y\n    reference: '1'\n"
                                  "    document: {}\n",
                        7, "unknown key `comand` in step a; did you mean `command`?");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: Bad-Name\n    command: x.y\n"
                                  "    reference: '\"r\"'\n    document: {}\n",
                        6, "step name \"Bad-Name\" may contain only");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '$fx.amount.decimal'}\n",
                        9, "uses $fx but the flow has no fx: block");
    expect_load_problem(GOOD_HEAD "fx: {base_currency: GBP}\nsteps:\n  - name: a\n"
                                  "    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '. as $fx | 1'}\n",
                        10, "$fx is set by paybridge and cannot be bound");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: 'env.HOME'}\n",
                        9, "cannot read the process environment");
    /* libjq 1.6 corrupts a jq_state that halted: refused at load, shadowed at run time */
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '\"x\" | halt_error(1)'}\n",
                        9, "halt and halt_error are not available");
    expect_load_problem(GOOD_HEAD "defs: 'def stop: halt;'\nsteps:\n  - name: a\n    command: x.y\n"
                                  "    reference: '\"r\"'\n    document: {}\n",
                        5, "halt and halt_error are not available");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '$__pb_event'}\n",
                        9, "reserved");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '$nope'}\n",
                        9, "jq: $nope is not defined");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '\"unterminated'}\n",
                        9, "a string is not closed");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: }\n",
                        9, "no expression");
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                                  "    document: {A: '$vars.x'}\n",
                        9, "the flow has no vars: block");
    /* defs must be definitions only */
    expect_load_problem(GOOD_HEAD "defs: '1 | '\nsteps:\n  - name: a\n    command: x.y\n"
                                  "    reference: '\"r\"'\n    document: {}\n",
                        5, "defs: must hold only jq function definitions");
    expect_load_problem(GOOD_HEAD "defs: 'def f: 1; 2 |'\nsteps:\n  - name: a\n    command: x.y\n"
                                  "    reference: '\"r\"'\n    document: {}\n",
                        5, "changes the input");
    expect_load_problem(GOOD_HEAD "defs: 'def f: 1 +;'\nsteps:\n  - name: a\n    command: x.y\n"
                                  "    reference: '\"r\"'\n    document: {}\n",
                        5, "defs: jq: syntax error");
    /* fx checks */
    expect_load_problem(GOOD_HEAD
                        "fx: {base_currency: gbp}\nsteps:\n  - name: a\n    command: x.y\n"
                        "    reference: '\"r\"'\n    document: {}\n",
                        5, "fx base_currency \"gbp\" is not an ISO 4217 currency code");
    expect_load_problem(GOOD_HEAD "fx: {base_currency: GBP, rates: {EUR: \"0\", USD: \"abc\", "
                                  "GBP: \"1\", JPY: 0.5}}\nsteps:\n  - name: a\n    command: x.y\n"
                                  "    reference: '\"r\"'\n    document: {}\n",
                        5, "fx rate for EUR \"0\" is not usable");
    {
        struct pb_diags d = load_problems(
            GOOD_HEAD "fx: {base_currency: GBP, rates: {EUR: \"0\", USD: \"abc\", GBP: \"1\"}}\n"
                      "steps:\n  - name: a\n    command: x.y\n    reference: '\"r\"'\n"
                      "    document: {}\n");
        assert_true(has_problem(&d, 5, "fx rate for USD \"abc\" is not usable"));
        assert_true(has_problem(&d, 5, "fx rate for GBP, the base currency itself"));
        pb_diags_free(&d);
    }
    /* YAML problems come through with their lines */
    expect_load_problem(GOOD_HEAD "steps:\n  - name: a\n    name: b\n", 7,
                        "duplicate key \"name\"");
    expect_load_problem(GOOD_HEAD "steps: [\n", 6, "YAML syntax error");
}

static void test_duplicate_flow_names_and_frozen_set(void **state)
{
    (void)state;
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    struct pb_err err = {0};
    struct pb_mapper *m;
    const char *text = GOOD_HEAD "steps:\n  - {name: a, command: x.y, reference: '\"r\"', "
                                 "document: {}}\n";
    assert_int_equal(pb_flowset_add_string(set, "one.yaml", text, &d), PB_OK);
    assert_int_equal(pb_flowset_add_string(set, "two.yaml", text, &d), PB_ERR_CONFIG);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.v[0].file, "two.yaml");
    assert_int_equal(d.v[0].line, 1);
    assert_non_null(strstr(d.v[0].msg, "flow name \"f1\" is already used by one.yaml"));
    assert_int_equal(pb_flowset_count(set), 1);
    pb_diags_free(&d);

    m = pb_mapper_new(set, &err);
    assert_non_null(m);
    assert_int_equal(pb_flowset_add_string(set, "three.yaml", "flow: other\n", &d), PB_ERR_INVALID);
    pb_diags_free(&d);
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* ---- threads ------------------------------------------------------------------------------- */

static const char *const thread_samples[] = {
    "opayo-payment-ok-gbp.json",  "opayo-payment-eur.json",      "opayo-payment-jpy.json",
    "opayo-payment-minimal.json", "opayo-payment-declined.json", "opayo-payment-chf.json",
};
#define N_SAMPLES (sizeof(thread_samples) / sizeof(*thread_samples))
#define ROUNDS 150

struct thread_job {
    json_t *events[N_SAMPLES];
    char *expected[N_SAMPLES][3]; /* "rc|run|ref|doc" per step */
    int failures;
    char first_failure[512];
};

static char *describe(const struct result *r)
{
    char *doc = r->doc ? json_dumps(r->doc, JSON_COMPACT) : NULL, *out;
    if (asprintf(&out, "%d|%d|%s|%s|%s", r->rc, r->run, r->ref ? r->ref : "-", doc ? doc : "-",
                 r->rc ? r->err.msg : "") < 0)
        out = NULL;
    free(doc);
    return out;
}

static void *thread_main(void *arg)
{
    struct thread_job *job = arg;
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(seed, &err); /* its own mapper */
    if (!m) {
        job->failures++;
        snprintf(job->first_failure, sizeof(job->first_failure), "mapper: %s", err.msg);
        return NULL;
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (size_t s = 0; s < N_SAMPLES; s++) {
            json_t *refs = json_object();
            for (size_t i = 0; i < 3; i++) {
                const struct pb_flow_step *st = &seed_flow->steps[i];
                struct result r = {0};
                char *got;
                r.rc = pb_mapper_step(m, st, job->events[s], refs, "evt_test", TODAY, &r.run,
                                      &r.ref, &r.doc, &r.err);
                got = describe(&r);
                if (!got || strcmp(got, job->expected[s][i]) != 0) {
                    if (!job->failures++)
                        snprintf(job->first_failure, sizeof(job->first_failure),
                                 "%s step %s: got %s", thread_samples[s], st->name,
                                 got ? got : "(oom)");
                }
                if (r.rc == PB_OK && r.run) {
                    char id[64];
                    snprintf(id, sizeof(id), "ID-%s", st->name);
                    json_object_set_new(refs, st->name, json_string(id));
                }
                free(got);
                result_free(&r);
            }
            json_decref(refs);
        }
    }
    pb_mapper_free(m);
    return NULL;
}

static void test_two_threads_each_with_a_mapper(void **state)
{
    (void)state;
    struct thread_job jobs[2];
    pthread_t t[2];
    memset(jobs, 0, sizeof(jobs));
    /* expected results, computed on this thread with the group's mapper */
    for (size_t s = 0; s < N_SAMPLES; s++) {
        json_t *ev = event(thread_samples[s]);
        struct result r[SEED_STEPS];
        run_flow(seed_mapper, seed_flow, ev, r);
        for (int j = 0; j < 2; j++) {
            jobs[j].events[s] = json_deep_copy(ev); /* each thread reads its own events */
            for (int i = 0; i < 3; i++)
                jobs[j].expected[s][i] = describe(&r[i]);
        }
        seed_results_free(r);
        json_decref(ev);
    }
    for (int j = 0; j < 2; j++)
        assert_int_equal(pthread_create(&t[j], NULL, thread_main, &jobs[j]), 0);
    for (int j = 0; j < 2; j++)
        assert_int_equal(pthread_join(t[j], NULL), 0);
    for (int j = 0; j < 2; j++) {
        if (jobs[j].failures)
            fail_msg("thread %d: %d wrong results; first: %s", j, jobs[j].failures,
                     jobs[j].first_failure);
        for (size_t s = 0; s < N_SAMPLES; s++) {
            json_decref(jobs[j].events[s]);
            for (int i = 0; i < 3; i++)
                free(jobs[j].expected[s][i]);
        }
    }
}

/* ---- paybridge map test -------------------------------------------------------------------- */

static char *map_test(const char *flow_rel, const char *sample, enum pb_rc *rc, struct pb_err *err)
{
    char flow_path[1024], sample_path[1024], rel[256], *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    source_path(flow_path, sizeof(flow_path), flow_rel);
    snprintf(rel, sizeof(rel), "tests/fixtures/events/%s", sample);
    source_path(sample_path, sizeof(sample_path), rel);
    *rc = pb_flow_map_test(flow_path, sample_path, TODAY, out, err);
    fclose(out);
    return buf;
}

static void test_map_test_command(void **state)
{
    (void)state;
    struct pb_err err = {0};
    enum pb_rc rc;
    char *out = map_test("flows/opayo-xero.yaml", "opayo-payment-eur.json", &rc, &err);
    assert_int_equal(rc, PB_OK);
    assert_non_null(strstr(out, "flow opayo-xero-payments ("));
    assert_non_null(strstr(out, "step 1/7 contact: contact.upsert -> xero-demo\n"
                                "  reference: email:claire.dupont@example.fr\n"));
    assert_non_null(strstr(out, "\"ContactID\": \"<contact.id>\""));
    assert_non_null(strstr(out, "\"InvoiceID\": \"<invoice.id>\""));
    assert_non_null(strstr(out, "\"UnitAmount\": \"10.71\""));
    assert_non_null(strstr(out, "3 steps would run, 4 skipped, 0 failed"));
    free(out);

    out = map_test("flows/opayo-xero.yaml", "opayo-payment-declined.json", &rc, &err);
    assert_int_equal(rc, PB_OK);
    assert_non_null(strstr(out, "step 1/7 contact: contact.upsert -> xero-demo\n"
                                "  skipped: `when` is false or null"));
    assert_non_null(strstr(out, "skipped: it uses $refs.contact and step contact did not run"));
    assert_non_null(strstr(out, "0 steps would run, 7 skipped, 0 failed"));
    free(out);

    out = map_test("flows/opayo-xero.yaml", "opayo-payment-chf.json", &rc, &err);
    assert_int_equal(rc, PB_ERR_MAPPING);
    assert_non_null(strstr(err.msg, "no FX rate for CHF"));
    assert_non_null(strstr(out, "  error (mapping): flow opayo-xero-payments step contact: no FX"));
    free(out);

    out = map_test("tests/fixtures/flows/broken.yaml", "opayo-payment-ok-gbp.json", &rc, &err);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_non_null(strstr(out, "broken.yaml:6: unknown key `taget`"));
    assert_non_null(strstr(err.msg, "(and 15 more problems)"));
    free(out);

    out = map_test("flows/opayo-xero.yaml", "no-such-sample.json", &rc, &err);
    assert_int_equal(rc, PB_ERR_INVALID);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mapper_when_only),
        cmocka_unit_test(test_refund_credit_note_and_cash_refund),
        cmocka_unit_test(test_refund_without_original_is_an_error),
        cmocka_unit_test(test_chargeback_won_voids_the_reversal),
        cmocka_unit_test(test_seed_template_loads),
        cmocka_unit_test(test_version_follows_text),
        cmocka_unit_test(test_rule1_vendortxcode_is_reference),
        cmocka_unit_test(test_rule2_ok_is_paid),
        cmocka_unit_test(test_rule2_declined_creates_nothing),
        cmocka_unit_test(test_rule2_succeeded_without_ok_is_an_error),
        cmocka_unit_test(test_rule3_transaction_id_traceable),
        cmocka_unit_test(test_rule4_account_code_by_kind),
        cmocka_unit_test(test_rule5_fx_conversion),
        cmocka_unit_test(test_fx_jpy_base_and_missing_rate),
        cmocka_unit_test(test_fx_missing_rate_stops_the_first_step),
        cmocka_unit_test(test_rule6_address_normalised),
        cmocka_unit_test(test_documents_conform_to_xero_spec),
        cmocka_unit_test(test_null_omission_and_variables),
        cmocka_unit_test(test_runtime_errors_name_the_field),
        cmocka_unit_test(test_broken_fixture_lines),
        cmocka_unit_test(test_load_problems),
        cmocka_unit_test(test_duplicate_flow_names_and_frozen_set),
        cmocka_unit_test(test_two_threads_each_with_a_mapper),
        cmocka_unit_test(test_map_test_command),
    };
    return cmocka_run_group_tests(tests, setup_seed, teardown_seed);
}
