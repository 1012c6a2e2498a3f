/*
 * tests/unit/test_recon.c: the reconciliation engine (src/recon):
 * one test per matching rule and per break class on small hand-made data,
 * the tolerance boundaries, FX into a 0-decimal currency, batches that do
 * not add up, duplicates on each side, deterministic output, and bad CSV
 * lines reported by line number while the rest is processed.
 *
 * Built by tests/CMakeLists.txt like every unit test (src/recon is in pb).
 *
 * Conventions: D(n) is day n of a fixed month (days since 1970); amounts are
 * minor units; every run is destroyed at the end of its test, so the ASan
 * build's leak check covers the whole module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "recon/recon.h"
#include "recon/recon_internal.h"
#include "pbtest.h"

#define D(n) (20500 + (n))

/* ---- helpers ------------------------------------------------------------------------ */

static struct pb_recon_config base_config(void)
{
    struct pb_recon_config cfg;
    pb_recon_config_init(&cfg);
    cfg.as_of_date = D(30);
    cfg.max_problems = 100;
    return cfg;
}

static struct pb_recon_run *new_run(const struct pb_recon_config *cfg)
{
    struct pb_recon_run *run = NULL;
    struct pb_err err = {0};
    struct pb_recon_config def = base_config();
    if (pb_recon_create(cfg ? cfg : &def, &run, &err) != PB_OK)
        fail_msg("pb_recon_create: %s", err.msg);
    return run;
}

/* A settlement line in batch B1 of gateway "opayo", value date = settled + 1. */
static void add_line_full(struct pb_recon_run *run, const char *gateway, const char *batch,
                          enum pb_recon_line_kind kind, const char *gw, const char *mref,
                          int64_t amount, int64_t fee, const char *cur, int32_t settled,
                          int32_t value)
{
    struct pb_recon_line_in in;
    struct pb_err err = {0};
    memset(&in, 0, sizeof(in));
    in.gateway = gateway;
    in.batch_id = batch;
    in.line_no = (uint32_t)pb_recon_line_count(run) + 1;
    in.kind = kind;
    in.gateway_ref = gw;
    in.merchant_ref = mref;
    in.amount_minor = amount;
    in.fee_minor = fee;
    in.currency = cur;
    in.settled_date = settled;
    in.value_date = value;
    if (pb_recon_add_line(run, &in, &err) != PB_OK)
        fail_msg("add line %s: %s", gw ? gw : "-", err.msg);
}

static void add_line(struct pb_recon_run *run, enum pb_recon_line_kind kind, const char *gw,
                     const char *mref, int64_t amount, const char *cur, int32_t settled)
{
    add_line_full(run, "opayo", "B1", kind, gw, mref, amount, 0, cur, settled, settled + 1);
}

static void add_record(struct pb_recon_run *run, const char *id, enum pb_recon_record_kind kind,
                       const char *gw, const char *ref, int64_t amount, const char *cur,
                       int32_t date)
{
    struct pb_recon_record_in in;
    struct pb_err err = {0};
    memset(&in, 0, sizeof(in));
    in.erp = "xero-demo";
    in.record_id = id;
    in.kind = kind;
    in.gateway_ref = gw;
    in.reference = ref;
    in.amount_minor = amount;
    in.currency = cur;
    in.date = date;
    if (pb_recon_add_record(run, &in, &err) != PB_OK)
        fail_msg("add record %s: %s", id, err.msg);
}

static void add_batch(struct pb_recon_run *run, const char *id, int64_t gross, int64_t fees,
                      int64_t net, const char *cur, int32_t date)
{
    struct pb_recon_batch_in in;
    struct pb_err err = {0};
    memset(&in, 0, sizeof(in));
    in.gateway = "opayo";
    in.batch_id = id;
    in.currency = cur;
    in.gross_minor = gross;
    in.fees_minor = fees;
    in.net_minor = net;
    in.date = date;
    if (pb_recon_add_batch(run, &in, &err) != PB_OK)
        fail_msg("add batch %s: %s", id, err.msg);
}

static void run_match(struct pb_recon_run *run)
{
    struct pb_err err = {0};
    if (pb_recon_match(run, &err) != PB_OK)
        fail_msg("pb_recon_match: %s", err.msg);
}

/* The match that holds line i (or NULL). */
static const struct pb_recon_match *match_of_line(const struct pb_recon_run *run, uint32_t i)
{
    size_t n;
    const struct pb_recon_match *m = pb_recon_matches(run, &n);
    const uint32_t *mem = pb_recon_members(run);
    for (size_t k = 0; k < n; k++)
        for (uint32_t j = 0; j < m[k].line_count; j++)
            if (mem[m[k].members + j] == i)
                return &m[k];
    return NULL;
}

static const struct pb_recon_match *match_of_record(const struct pb_recon_run *run, uint32_t r)
{
    size_t n;
    const struct pb_recon_match *m = pb_recon_matches(run, &n);
    const uint32_t *mem = pb_recon_members(run);
    for (size_t k = 0; k < n; k++)
        for (uint32_t j = 0; j < m[k].record_count; j++)
            if (mem[m[k].members + m[k].line_count + j] == r)
                return &m[k];
    return NULL;
}

static size_t count_breaks(const struct pb_recon_run *run, enum pb_recon_break_class cls)
{
    size_t n, c = 0;
    const struct pb_recon_break *b = pb_recon_breaks(run, &n);
    for (size_t k = 0; k < n; k++)
        c += b[k].class_ == cls;
    return c;
}

/* The nth break of a class (0-based), failing the test when absent. */
static const struct pb_recon_break *nth_break(const struct pb_recon_run *run,
                                              enum pb_recon_break_class cls, size_t nth)
{
    size_t n;
    const struct pb_recon_break *b = pb_recon_breaks(run, &n);
    for (size_t k = 0; k < n; k++)
        if (b[k].class_ == cls && nth-- == 0)
            return &b[k];
    fail_msg("no break %s number %zu", pb_recon_break_name(cls), nth);
    return NULL;
}

/* Does break b name line i / record r? */
static int break_has_line(const struct pb_recon_run *run, const struct pb_recon_break *b,
                          uint32_t i)
{
    const uint32_t *mem = pb_recon_members(run);
    for (uint32_t j = 0; j < b->line_count; j++)
        if (mem[b->members + j] == i)
            return 1;
    return 0;
}

static int break_has_record(const struct pb_recon_run *run, const struct pb_recon_break *b,
                            uint32_t r)
{
    const uint32_t *mem = pb_recon_members(run);
    for (uint32_t j = 0; j < b->record_count; j++)
        if (mem[b->members + b->line_count + j] == r)
            return 1;
    return 0;
}

static void expect_pair(const struct pb_recon_run *run, uint32_t line, uint32_t record,
                        enum pb_recon_rule rule, int confidence)
{
    const struct pb_recon_match *m = match_of_line(run, line);
    if (!m)
        fail_msg("line %u is not matched", line);
    if (m != match_of_record(run, record))
        fail_msg("line %u and record %u are not in the same match", line, record);
    if (m->rule != rule)
        fail_msg("line %u: rule %s, want %s", line, pb_recon_rule_name(m->rule),
                 pb_recon_rule_name(rule));
    if (confidence >= 0 && m->confidence != confidence)
        fail_msg("line %u: confidence %u, want %d", line, m->confidence, confidence);
}

/* ---- rule 1: reference --------------------------------------------------------------- */

static void test_rule1_transaction_id(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    struct pb_recon_summary s;
    char text[512];
    (void)state;
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 1099, "GBP", D(1));
    add_line(run, PB_RECON_LINE_REFUND, "T2", "V1", -500, "GBP", D(2));
    add_record(run, "PAY-2", PB_RECON_RECORD_CREDIT_NOTE, "T2", "V1", -500, "GBP", D(2));
    add_record(run, "PAY-1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 1099, "GBP", D(1));
    run_match(run);
    expect_pair(run, 0, 1, PB_RECON_RULE_REFERENCE, 100);
    expect_pair(run, 1, 0, PB_RECON_RULE_REFERENCE, 100);
    pb_recon_summary(run, &s);
    assert_int_equal(s.exact_reference_matches, 2);
    assert_int_equal(s.matches_by_rule[PB_RECON_RULE_REFERENCE], 2);
    assert_int_equal(s.breaks_by_class[PB_RECON_BREAK_MISSING_IN_ERP], 0);
    pb_recon_explain_match(run, 0, text, sizeof(text));
    assert_non_null(strstr(text, "rule 1 reference"));
    assert_non_null(strstr(text, "tx T1"));
    assert_non_null(strstr(text, "10.99 GBP"));
    assert_non_null(strstr(text, "PAY-1"));
    pb_recon_destroy(run);
}

static void test_rule1_vendor_tx_code(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    (void)state;
    /* the ERP record has no gateway reference (posted before paybridge's xref) */
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 2500, "GBP", D(1));
    add_record(run, "INV-1", PB_RECON_RECORD_PAYMENT, "", "V1", 2500, "GBP", D(1));
    /* a record whose gateway reference differs is another transaction: never by reference */
    add_line(run, PB_RECON_LINE_SALE, "T2", "V2", 700, "GBP", D(1));
    add_record(run, "INV-2", PB_RECON_RECORD_PAYMENT, "T-OTHER", "V2", 700, "GBP", D(1));
    run_match(run);
    expect_pair(run, 0, 0, PB_RECON_RULE_REFERENCE, 95);
    assert_null(match_of_line(run, 1));
    assert_null(match_of_record(run, 1));
    pb_recon_destroy(run);
}

/* ---- rules 2 and 3: amount, date window ------------------------------------------------ */

static void test_rule2_amount_same_day(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    (void)state;
    add_line(run, PB_RECON_LINE_FEE, "", "", -1500, "GBP", D(3));
    add_record(run, "J-1", PB_RECON_RECORD_JOURNAL, "", "", -1500, "GBP", D(7)); /* outside */
    add_record(run, "J-2", PB_RECON_RECORD_JOURNAL, "", "", -1500, "GBP", D(3));
    /* two candidates on the same day: the first by index, with less confidence */
    add_line(run, PB_RECON_LINE_FEE, "", "", -4000, "GBP", D(3));
    add_record(run, "J-3", PB_RECON_RECORD_JOURNAL, "", "", -4000, "GBP", D(3));
    add_record(run, "J-4", PB_RECON_RECORD_JOURNAL, "", "", -4000, "GBP", D(3));
    run_match(run);
    expect_pair(run, 0, 1, PB_RECON_RULE_AMOUNT, 85); /* the oldest in the window is today's */
    expect_pair(run, 1, 2, PB_RECON_RULE_AMOUNT, 70);
    pb_recon_destroy(run);
}

static void test_rule3_date_window(void **state)
{
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    (void)state;
    cfg.date_window_days = 3;
    run = new_run(&cfg);
    add_line(run, PB_RECON_LINE_FEE, "", "", -2000, "GBP", D(10));
    add_record(run, "J-1", PB_RECON_RECORD_JOURNAL, "", "", -2000, "GBP", D(12));
    add_line(run, PB_RECON_LINE_FEE, "", "", -3000, "GBP", D(10));
    add_record(run, "J-2", PB_RECON_RECORD_JOURNAL, "", "", -3000, "GBP", D(14)); /* 4 days */
    /* lines in date order each take the earliest record of their window, so
     * that a later line keeps the later record (nearest-first would give J-3
     * to the first line and leave the second with nothing in its window) */
    add_line(run, PB_RECON_LINE_FEE, "", "", -5000, "GBP", D(10));
    add_record(run, "J-3", PB_RECON_RECORD_JOURNAL, "", "", -5000, "GBP", D(11));
    add_record(run, "J-4", PB_RECON_RECORD_JOURNAL, "", "", -5000, "GBP", D(8));
    add_line(run, PB_RECON_LINE_FEE, "", "", -5000, "GBP", D(13));
    /* kinds must agree: a sale never matches a journal of its amount */
    add_line(run, PB_RECON_LINE_SALE, "", "", 6000, "GBP", D(10));
    add_record(run, "J-5", PB_RECON_RECORD_JOURNAL, "", "", 6000, "GBP", D(10));
    run_match(run);
    expect_pair(run, 0, 0, PB_RECON_RULE_DATE_WINDOW, 70);
    assert_null(match_of_line(run, 1));
    assert_null(match_of_record(run, 1));
    expect_pair(run, 2, 3, PB_RECON_RULE_DATE_WINDOW, 55); /* 2 days: 70, minus 15: ambiguous */
    expect_pair(run, 3, 2, PB_RECON_RULE_DATE_WINDOW, 70);
    assert_null(match_of_line(run, 4));
    assert_true(break_has_line(run, nth_break(run, PB_RECON_BREAK_MISSING_IN_ERP, 0), 1));
    pb_recon_destroy(run);
}

static void test_amount_first_in_first_out(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    (void)state;
    /* two fee lines, two journals; the first line could take today's journal,
     * but then the second line (its window D(4)..D(10)) would find nothing:
     * the oldest journal in the window goes first */
    add_line(run, PB_RECON_LINE_FEE, "", "", -1500, "GBP", D(5));
    add_line(run, PB_RECON_LINE_FEE, "", "", -1500, "GBP", D(7));
    add_record(run, "J-OLD", PB_RECON_RECORD_JOURNAL, "", "", -1500, "GBP", D(3));
    add_record(run, "J-NEW", PB_RECON_RECORD_JOURNAL, "", "", -1500, "GBP", D(5));
    run_match(run);
    expect_pair(run, 0, 0, PB_RECON_RULE_DATE_WINDOW, 55); /* 2 days, ambiguous */
    expect_pair(run, 1, 1, PB_RECON_RULE_DATE_WINDOW, 70);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_MISSING_IN_ERP), 0);
    pb_recon_destroy(run);
}

static void test_identified_record_not_matched_by_amount(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    (void)state;
    /* the record carries a transactionId the gateway never settled: it is
     * another transaction, whatever its amount */
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 4999, "GBP", D(1));
    add_record(run, "OTHER", PB_RECON_RECORD_PAYMENT, "T-UNSETTLED", "", 4999, "GBP", D(1));
    run_match(run);
    assert_null(match_of_line(run, 0));
    assert_true(break_has_line(run, nth_break(run, PB_RECON_BREAK_MISSING_IN_ERP, 0), 0));
    assert_true(break_has_record(run, nth_break(run, PB_RECON_BREAK_NOT_SETTLED, 0), 0));
    pb_recon_destroy(run);
}

static void test_reference_link_not_overridden_by_amount(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_break *b;
    (void)state;
    add_line(run, PB_RECON_LINE_SALE, "T9", "V9", 10000, "GBP", D(1));
    add_record(run, "PAY-9", PB_RECON_RECORD_PAYMENT, "T9", "V9", 9000, "GBP", D(1));
    add_record(run, "STRANGER", PB_RECON_RECORD_PAYMENT, "", "", 10000, "GBP", D(1));
    run_match(run);
    assert_null(match_of_line(run, 0));
    assert_null(match_of_record(run, 1));
    b = nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 0);
    assert_true(break_has_line(run, b, 0) && break_has_record(run, b, 0));
    assert_int_equal(b->amount_minor, 1000);
    assert_true(break_has_record(run, nth_break(run, PB_RECON_BREAK_NOT_SETTLED, 0), 1));
    pb_recon_destroy(run);
}

/* ---- tolerance boundaries --------------------------------------------------------------- */

static void test_tolerance_boundary(void **state)
{
    struct pb_recon_currency_rule gbp = {"GBP", 5, 0};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    const struct pb_recon_match *m;
    (void)state;
    cfg.currencies = &gbp;
    cfg.currency_count = 1;
    run = new_run(&cfg);
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 1000, "GBP", D(1));
    add_record(run, "R1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 1005, "GBP", D(1)); /* at */
    add_line(run, PB_RECON_LINE_SALE, "T2", "V2", 1000, "GBP", D(1));
    add_record(run, "R2", PB_RECON_RECORD_PAYMENT, "T2", "V2", 1006, "GBP", D(1)); /* over */
    add_line(run, PB_RECON_LINE_SALE, "", "", 2000, "GBP", D(1));
    add_record(run, "R3", PB_RECON_RECORD_PAYMENT, "", "", 1995, "GBP", D(1)); /* at */
    add_line(run, PB_RECON_LINE_SALE, "", "", 3000, "GBP", D(1));
    add_record(run, "R4", PB_RECON_RECORD_PAYMENT, "", "", 3006, "GBP", D(1)); /* over */
    run_match(run);
    expect_pair(run, 0, 0, PB_RECON_RULE_REFERENCE, 90);
    m = match_of_line(run, 0);
    assert_int_equal(m->difference_minor, -5);
    assert_null(match_of_line(run, 1));
    assert_int_equal(nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 0)->amount_minor, -6);
    expect_pair(run, 2, 2, PB_RECON_RULE_AMOUNT, 75);
    assert_int_equal(match_of_line(run, 2)->difference_minor, 5);
    assert_null(match_of_line(run, 3));
    assert_null(match_of_record(run, 3));
    pb_recon_destroy(run);
}

static void test_auto_adjust_threshold(void **state)
{
    struct pb_recon_currency_rule gbp = {"GBP", 0, 100};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    const struct pb_recon_break *b;
    (void)state;
    cfg.currencies = &gbp;
    cfg.currency_count = 1;
    run = new_run(&cfg);
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 5000, "GBP", D(1));
    add_record(run, "R1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 4900, "GBP", D(1)); /* 1.00 */
    add_line(run, PB_RECON_LINE_SALE, "T2", "V2", 5000, "GBP", D(1));
    add_record(run, "R2", PB_RECON_RECORD_PAYMENT, "T2", "V2", 4899, "GBP", D(1)); /* 1.01 */
    run_match(run);
    b = nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 0);
    assert_int_equal(b->amount_minor, 100);
    assert_int_equal(b->auto_adjust, 1);
    assert_int_equal(b->action, PB_RECON_ACTION_POST_ADJUSTMENT_JOURNAL);
    b = nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 1);
    assert_int_equal(b->amount_minor, 101);
    assert_int_equal(b->auto_adjust, 0);
    assert_int_equal(b->action, PB_RECON_ACTION_REVIEW_AMOUNT);
    pb_recon_destroy(run);
}

/* ---- rule 4: batches ------------------------------------------------------------------------ */

static void test_rule4_batch_deposit(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_match *m;
    size_t n;
    (void)state;
    add_batch(run, "B1", 10000, 300, 9700, "GBP", D(3));
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T1", "V1", 6000, 180, "GBP", D(2), D(3));
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T2", "V2", 4000, 120, "GBP", D(2), D(3));
    add_record(run, "P1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 6000, "GBP", D(2));
    add_record(run, "P2", PB_RECON_RECORD_PAYMENT, "T2", "V2", 4000, "GBP", D(2));
    add_record(run, "DEP-1", PB_RECON_RECORD_JOURNAL, "", "B1", 9700, "GBP", D(3));
    /* a batch without a header: its payout is computed from its lines, and the
     * deposit names no batch, so it is found by amount near the payout date */
    add_line_full(run, "opayo", "B3", PB_RECON_LINE_SALE, "T3", "V3", 2000, 50, "GBP", D(2), D(4));
    add_record(run, "P3", PB_RECON_RECORD_PAYMENT, "T3", "V3", 2000, "GBP", D(2));
    add_record(run, "DEP-3", PB_RECON_RECORD_JOURNAL, "", "", 1950, "GBP", D(5));
    run_match(run);
    m = match_of_record(run, 2);
    assert_non_null(m);
    assert_int_equal(m->rule, PB_RECON_RULE_BATCH);
    assert_int_equal(m->confidence, 95);
    assert_int_equal(m->batch, 0);
    m = match_of_record(run, 4);
    assert_non_null(m);
    assert_int_equal(m->rule, PB_RECON_RULE_BATCH);
    assert_int_equal(m->confidence, 70);
    assert_int_equal(m->batch, 1);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_BATCH_UNBALANCED), 0);
    pb_recon_breaks(run, &n);
    assert_int_equal(n, 0);
    pb_recon_destroy(run);
}

static void test_batch_gross_minus_fees_not_net(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_break *b;
    char text[512];
    (void)state;
    /* the header itself is wrong: 50.00 - 1.00 is 49.00, not 48.00 */
    add_batch(run, "B2", 5000, 100, 4800, "GBP", D(3));
    add_line_full(run, "opayo", "B2", PB_RECON_LINE_SALE, "T1", "V1", 5000, 100, "GBP", D(2), D(3));
    /* the header adds up, but the lines do not agree with it */
    add_batch(run, "B4", 3000, 0, 3000, "GBP", D(3));
    add_line_full(run, "opayo", "B4", PB_RECON_LINE_SALE, "T4", "V4", 2500, 0, "GBP", D(2), D(3));
    run_match(run);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_BATCH_UNBALANCED), 2);
    b = nth_break(run, PB_RECON_BREAK_BATCH_UNBALANCED, 0);
    assert_int_equal(b->batch, 0);
    assert_int_equal(b->amount_minor, -100);
    assert_int_equal(b->action, PB_RECON_ACTION_REQUEST_CORRECTED_REPORT);
    assert_int_equal(b->auto_adjust, 0);
    b = nth_break(run, PB_RECON_BREAK_BATCH_UNBALANCED, 1);
    assert_int_equal(b->batch, 1);
    assert_int_equal(b->amount_minor, 500);
    pb_recon_explain_break(run, (size_t)(b - pb_recon_breaks(run, &(size_t){0})), text,
                           sizeof(text));
    assert_non_null(strstr(text, "batch_unbalanced"));
    assert_non_null(strstr(text, "reported gross 30.00"));
    pb_recon_destroy(run);
}

/* Found by bench/recon/fuzz_recon.c (clang UBSan, "applying zero offset to
 * null pointer" in emit_break): a run whose first result is a break without
 * members (a batch header alone, nothing matched before it) did pointer
 * arithmetic on the still-NULL member array. gcc's UBSan does not check that,
 * so this test fails only under clang -fsanitize=undefined; it also pins the
 * output of such a run. */
static void test_fuzz_first_result_has_no_members(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_break *b;
    char text[256];
    size_t n;
    (void)state;
    add_batch(run, "B9", 100, 0, 99, "GBP", D(1));
    run_match(run);
    pb_recon_breaks(run, &n);
    assert_int_equal(n, 1);
    b = nth_break(run, PB_RECON_BREAK_BATCH_UNBALANCED, 0);
    assert_int_equal(b->line_count + b->record_count, 0);
    pb_recon_explain_break(run, 0, text, sizeof(text));
    assert_non_null(strstr(text, "batch_unbalanced"));
    pb_recon_explain_match(run, 0, text, sizeof(text)); /* out of range: empty, no crash */
    assert_string_equal(text, "");
    pb_recon_destroy(run);
}

/* ---- rule 5: many to one ------------------------------------------------------------------- */

static void test_rule5_split_captures(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_match *m;
    const struct pb_recon_break *b;
    (void)state;
    add_line(run, PB_RECON_LINE_SALE, "T1", "ORDER-1", 6000, "GBP", D(1));
    add_line(run, PB_RECON_LINE_SALE, "T2", "ORDER-1", 4000, "GBP", D(2));
    add_record(run, "INV-1", PB_RECON_RECORD_PAYMENT, "", "ORDER-1", 10000, "GBP", D(1));
    /* parts that do not sum to the record: one amount_differs over the group */
    add_line(run, PB_RECON_LINE_SALE, "T3", "ORDER-2", 600, "GBP", D(1));
    add_line(run, PB_RECON_LINE_SALE, "T4", "ORDER-2", 400, "GBP", D(1));
    add_record(run, "INV-2", PB_RECON_RECORD_PAYMENT, "", "ORDER-2", 1100, "GBP", D(1));
    run_match(run);
    m = match_of_record(run, 0);
    assert_non_null(m);
    assert_int_equal(m->rule, PB_RECON_RULE_MANY_TO_ONE);
    assert_int_equal(m->line_count, 2);
    assert_int_equal(m->confidence, 90);
    assert_ptr_equal(match_of_line(run, 1), m);
    assert_null(match_of_record(run, 1));
    b = nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 0);
    assert_int_equal(b->line_count, 2);
    assert_true(break_has_record(run, b, 1));
    assert_int_equal(b->amount_minor, -100);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_MISSING_IN_ERP), 0);
    pb_recon_destroy(run);
}

/* ---- rule 6: netting ------------------------------------------------------------------------- */

static void test_rule6_netting(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_match *m;
    (void)state;
    /* refunded in full the same day: nets to zero, the ERP needs nothing */
    add_line(run, PB_RECON_LINE_SALE, "T1", "ORDER-1", 3000, "GBP", D(1));
    add_line(run, PB_RECON_LINE_REFUND, "T2", "ORDER-1", -3000, "GBP", D(1));
    /* refunded in part: the ERP holds one payment of the net (by transactionId) */
    add_line(run, PB_RECON_LINE_SALE, "T3", "ORDER-2", 10000, "GBP", D(1));
    add_line(run, PB_RECON_LINE_CHARGEBACK, "T4", "ORDER-2", -2500, "GBP", D(1));
    add_record(run, "INV-2", PB_RECON_RECORD_PAYMENT, "T3", "ORDER-2", 7500, "GBP", D(1));
    /* in different batches nothing nets */
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T5", "ORDER-3", 5000, 0, "GBP", D(1),
                  D(2));
    add_line_full(run, "opayo", "B2", PB_RECON_LINE_REFUND, "T6", "ORDER-3", -5000, 0, "GBP", D(2),
                  D(3));
    run_match(run);
    m = match_of_line(run, 0);
    assert_non_null(m);
    assert_int_equal(m->rule, PB_RECON_RULE_NETTING);
    assert_int_equal(m->line_count, 2);
    assert_int_equal(m->record_count, 0);
    assert_int_equal(m->confidence, 80);
    m = match_of_line(run, 3);
    assert_non_null(m);
    assert_int_equal(m->rule, PB_RECON_RULE_NETTING);
    assert_int_equal(m->line_count, 2);
    assert_ptr_equal(match_of_record(run, 0), m);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_AMOUNT_DIFFERS), 0);
    assert_null(match_of_line(run, 4));
    assert_null(match_of_line(run, 5));
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_MISSING_IN_ERP), 2);
    pb_recon_destroy(run);
}

static void test_rule6_not_stolen_by_amount(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_match *m;
    (void)state;
    /* the sale nets with its refund in the batch; an unrelated manual posting
     * of the same amount on the same day must not take it first (rule 2) */
    add_line(run, PB_RECON_LINE_SALE, "T1", "ORDER-1", 4200, "GBP", D(1));
    add_line(run, PB_RECON_LINE_REFUND, "T2", "ORDER-1", -4200, "GBP", D(1));
    add_record(run, "MANUAL", PB_RECON_RECORD_PAYMENT, "", "", 4200, "GBP", D(1));
    run_match(run);
    m = match_of_line(run, 0);
    assert_non_null(m);
    assert_int_equal(m->rule, PB_RECON_RULE_NETTING);
    assert_null(match_of_record(run, 0));
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_NOT_SETTLED), 1);
    pb_recon_destroy(run);
}

/* ---- rule 7: FX --------------------------------------------------------------------------------
 */

static void test_rule7_fx_zero_decimal_currency(void **state)
{
    struct pb_recon_fx_rate rate = {"EUR", "JPY", "162.37"};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    const struct pb_recon_match *m;
    const struct pb_recon_break *b;
    (void)state;
    cfg.rates = &rate;
    cfg.rate_count = 1;
    cfg.fx_tolerance_bp = 50;
    run = new_run(&cfg);
    /* 10.00 EUR * 162.37 = 1623.7 JPY, rounded half to even: 1624 */
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 1000, "EUR", D(1));
    add_record(run, "R1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 1624, "JPY", D(1));
    /* within 50 bp (8 JPY of 1624) */
    add_line(run, PB_RECON_LINE_SALE, "T2", "V2", 1000, "EUR", D(1));
    add_record(run, "R2", PB_RECON_RECORD_PAYMENT, "T2", "V2", 1620, "JPY", D(1));
    /* beyond it */
    add_line(run, PB_RECON_LINE_SALE, "T3", "V3", 1000, "EUR", D(1));
    add_record(run, "R3", PB_RECON_RECORD_PAYMENT, "T3", "V3", 1600, "JPY", D(1));
    /* the other direction: the record (EUR) is converted into the line's JPY */
    add_line(run, PB_RECON_LINE_SALE, "T4", "V4", 3248, "JPY", D(1));
    add_record(run, "R4", PB_RECON_RECORD_PAYMENT, "T4", "V4", 2000, "EUR", D(1));
    /* no reference: found by the converted amount */
    add_line(run, PB_RECON_LINE_SALE, "", "", 2000, "EUR", D(1));
    add_record(run, "R5", PB_RECON_RECORD_PAYMENT, "", "", 3247, "JPY", D(1));
    /* without a reference the conversion must be exact: 50 bp would accept
     * 1620 for 1624, but nothing vouches for the pair */
    add_line(run, PB_RECON_LINE_SALE, "", "", 1000, "EUR", D(1));
    add_record(run, "R6", PB_RECON_RECORD_PAYMENT, "", "", 1620, "JPY", D(1));
    run_match(run);
    m = match_of_line(run, 0);
    expect_pair(run, 0, 0, PB_RECON_RULE_FX, 90);
    assert_int_equal(m->difference_minor, 0);
    assert_string_equal(m->currency, "JPY");
    assert_int_equal(m->rate, 0);
    expect_pair(run, 1, 1, PB_RECON_RULE_FX, 85);
    assert_int_equal(match_of_line(run, 1)->difference_minor, 4);
    assert_null(match_of_line(run, 2));
    b = nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 0);
    assert_true(break_has_line(run, b, 2));
    assert_int_equal(b->amount_minor, 24);
    assert_string_equal(b->currency, "JPY");
    expect_pair(run, 3, 3, PB_RECON_RULE_FX, 85);
    assert_int_equal(match_of_line(run, 3)->difference_minor, 1); /* 3248 - 3247 JPY */
    assert_string_equal(match_of_line(run, 3)->currency, "JPY");
    expect_pair(run, 4, 4, PB_RECON_RULE_FX, 60);
    assert_null(match_of_line(run, 5));
    assert_null(match_of_record(run, 5));
    pb_recon_destroy(run);
}

static void test_fx_without_rate_is_a_break(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_break *b;
    (void)state;
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 1000, "USD", D(1));
    add_record(run, "R1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 800, "GBP", D(1));
    run_match(run);
    b = nth_break(run, PB_RECON_BREAK_AMOUNT_DIFFERS, 0);
    assert_true(break_has_line(run, b, 0) && break_has_record(run, b, 0));
    assert_int_equal(b->auto_adjust, 0);
    pb_recon_destroy(run);
}

/* ---- breaks -------------------------------------------------------------------------------------
 */

static void test_break_missing_in_erp(void **state)
{
    struct pb_recon_currency_rule gbp = {"GBP", 0, 500};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    const struct pb_recon_break *b;
    (void)state;
    cfg.currencies = &gbp;
    cfg.currency_count = 1;
    run = new_run(&cfg);
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 1234, "GBP", D(1));
    add_line(run, PB_RECON_LINE_ADJUSTMENT, "", "", 200, "GBP", D(1));
    run_match(run);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_MISSING_IN_ERP), 2);
    b = nth_break(run, PB_RECON_BREAK_MISSING_IN_ERP, 0);
    assert_true(break_has_line(run, b, 0));
    assert_int_equal(b->amount_minor, 1234);
    assert_int_equal(b->action, PB_RECON_ACTION_POST_TO_ERP);
    assert_int_equal(b->auto_adjust, 0); /* a sale is replayed, never journalled away */
    b = nth_break(run, PB_RECON_BREAK_MISSING_IN_ERP, 1);
    assert_int_equal(b->auto_adjust, 1); /* a small adjustment is */
    pb_recon_destroy(run);
}

static void test_break_not_settled_after_lag(void **state)
{
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    struct pb_recon_summary s;
    const struct pb_recon_break *b;
    (void)state;
    cfg.as_of_date = D(10);
    cfg.settlement_lag_days = 3;
    run = new_run(&cfg);
    add_record(run, "OLD", PB_RECON_RECORD_PAYMENT, "T1", "V1", 1000, "GBP", D(7)); /* lag */
    add_record(run, "NEW", PB_RECON_RECORD_PAYMENT, "T2", "V2", 1000, "GBP", D(8)); /* young */
    run_match(run);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_NOT_SETTLED), 1);
    b = nth_break(run, PB_RECON_BREAK_NOT_SETTLED, 0);
    assert_true(break_has_record(run, b, 0));
    assert_int_equal(b->amount_minor, -1000);
    assert_int_equal(b->action, PB_RECON_ACTION_ASK_GATEWAY_STATUS);
    pb_recon_summary(run, &s);
    assert_int_equal(s.pending_records, 1);
    pb_recon_destroy(run);
}

static void test_break_duplicate_each_side(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_break *b;
    (void)state;
    add_line(run, PB_RECON_LINE_SALE, "T1", "V1", 1000, "GBP", D(1));
    add_line_full(run, "opayo", "B2", PB_RECON_LINE_SALE, "T1", "V1", 1000, 0, "GBP", D(2), D(3));
    add_line(run, PB_RECON_LINE_SALE, "T2", "V2", 2000, "GBP", D(1));
    add_record(run, "R1", PB_RECON_RECORD_PAYMENT, "T1", "V1", 1000, "GBP", D(1));
    add_record(run, "R2", PB_RECON_RECORD_PAYMENT, "T2", "V2", 2000, "GBP", D(1));
    add_record(run, "R2-AGAIN", PB_RECON_RECORD_PAYMENT, "T2", "V2", 2000, "GBP", D(1));
    /* without gateway references: same reference, direction and amount */
    add_line(run, PB_RECON_LINE_SALE, "T3", "V3", 3000, "GBP", D(1));
    add_record(run, "R3", PB_RECON_RECORD_PAYMENT, "", "V3", 3000, "GBP", D(1));
    add_record(run, "R3-AGAIN", PB_RECON_RECORD_PAYMENT, "", "V3", 3000, "GBP", D(1));
    run_match(run);
    expect_pair(run, 0, 0, PB_RECON_RULE_REFERENCE, 100);
    expect_pair(run, 2, 1, PB_RECON_RULE_REFERENCE, 100);
    expect_pair(run, 3, 3, PB_RECON_RULE_REFERENCE, 95);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_DUPLICATE), 3);
    b = nth_break(run, PB_RECON_BREAK_DUPLICATE, 0);
    assert_int_equal(b->side, PB_RECON_SETTLEMENT);
    assert_true(break_has_line(run, b, 1));
    assert_int_equal(b->first_seen, 0);
    assert_int_equal(b->action, PB_RECON_ACTION_RAISE_DUPLICATE_WITH_GATEWAY);
    b = nth_break(run, PB_RECON_BREAK_DUPLICATE, 1);
    assert_int_equal(b->side, PB_RECON_LEDGER);
    assert_true(break_has_record(run, b, 2));
    assert_int_equal(b->first_seen, 1);
    assert_int_equal(b->action, PB_RECON_ACTION_VOID_DUPLICATE_RECORD);
    b = nth_break(run, PB_RECON_BREAK_DUPLICATE, 2);
    assert_true(break_has_record(run, b, 4));
    assert_int_equal(b->first_seen, 3);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_MISSING_IN_ERP), 0);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_NOT_SETTLED), 0);
    pb_recon_destroy(run);
}

static void test_break_fee_out_of_contract(void **state)
{
    struct pb_recon_contract contract = {"opayo", "GBP", 175, 20, 2};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    const struct pb_recon_break *b;
    (void)state;
    cfg.contracts = &contract;
    cfg.contract_count = 1;
    run = new_run(&cfg);
    /* 1.75% of 100.00 + 0.20 = 1.95 */
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T1", "", 10000, 195, "GBP", D(1), D(2));
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T2", "", 10000, 196, "GBP", D(1), D(2));
    /* 1.75% of 10.01 = 0.175175: 0.37 and 0.38 both honour the contract */
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T3", "", 1001, 37, "GBP", D(1), D(2));
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T4", "", 1001, 38, "GBP", D(1), D(2));
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T5", "", 1001, 39, "GBP", D(1), D(2));
    /* another gateway has no contract: not checked */
    add_line_full(run, "paytrace", "P1", PB_RECON_LINE_SALE, "T6", "", 1001, 99, "GBP", D(1), D(2));
    run_match(run);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_FEE_OUT_OF_CONTRACT), 2);
    b = nth_break(run, PB_RECON_BREAK_FEE_OUT_OF_CONTRACT, 0);
    assert_true(break_has_line(run, b, 1));
    assert_int_equal(b->amount_minor, 1);
    assert_int_equal(b->action, PB_RECON_ACTION_DISPUTE_FEE);
    b = nth_break(run, PB_RECON_BREAK_FEE_OUT_OF_CONTRACT, 1);
    assert_true(break_has_line(run, b, 4));
    assert_int_equal(b->amount_minor, 1);
    pb_recon_destroy(run);
}

static void test_break_settlement_late(void **state)
{
    struct pb_recon_contract contract = {"opayo", "GBP", 0, 0, 2};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    const struct pb_recon_break *b;
    (void)state;
    cfg.contracts = &contract;
    cfg.contract_count = 1;
    cfg.settlement_lag_days = 5;
    run = new_run(&cfg);
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T1", "", 1000, 0, "GBP", D(1), D(3));
    add_line_full(run, "opayo", "B1", PB_RECON_LINE_SALE, "T2", "", 1000, 0, "GBP", D(1), D(4));
    /* without a contract the default lag (5) applies */
    add_line_full(run, "other", "X1", PB_RECON_LINE_SALE, "T3", "", 1000, 0, "GBP", D(1), D(6));
    add_line_full(run, "other", "X1", PB_RECON_LINE_SALE, "T4", "", 1000, 0, "GBP", D(1), D(7));
    run_match(run);
    assert_int_equal(count_breaks(run, PB_RECON_BREAK_SETTLEMENT_LATE), 2);
    b = nth_break(run, PB_RECON_BREAK_SETTLEMENT_LATE, 0);
    assert_true(break_has_line(run, b, 1));
    assert_int_equal(b->action, PB_RECON_ACTION_CHASE_LATE_SETTLEMENT);
    assert_true(break_has_line(run, nth_break(run, PB_RECON_BREAK_SETTLEMENT_LATE, 1), 3));
    pb_recon_destroy(run);
}

/* ---- determinism
 * --------------------------------------------------------------------------------- */

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* A few thousand lines and records of every shape, with noise. */
static struct pb_recon_run *random_run(int threads, uint64_t seed)
{
    struct pb_recon_fx_rate rate = {"EUR", "GBP", "0.8571"};
    struct pb_recon_contract contract = {"opayo", "GBP", 150, 20, 2};
    struct pb_recon_currency_rule gbp = {"GBP", 1, 50};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    static const char *const cur[] = {"GBP", "EUR", "JPY"};
    cfg.threads = threads;
    cfg.rates = &rate;
    cfg.rate_count = 1;
    cfg.contracts = &contract;
    cfg.contract_count = 1;
    cfg.currencies = &gbp;
    cfg.currency_count = 1;
    run = new_run(&cfg);
    for (int i = 0; i < 3000; i++) {
        char gw[16], ref[16], id[16], batch[8];
        const char *c = cur[lcg(&seed) % 3];
        int64_t amount = (int64_t)(lcg(&seed) % 20000) + 1;
        unsigned shape = (unsigned)(lcg(&seed) % 10);
        int32_t day = D((int)(lcg(&seed) % 20));
        snprintf(gw, sizeof(gw), "T%d", shape == 9 ? i - 1 : i);
        snprintf(ref, sizeof(ref), "V%d", shape == 8 ? i / 2 : i);
        snprintf(id, sizeof(id), "R%d", i);
        snprintf(batch, sizeof(batch), "B%d", i / 100);
        add_line_full(run, "opayo", batch, shape == 7 ? PB_RECON_LINE_FEE : PB_RECON_LINE_SALE,
                      shape == 6 || shape == 7 ? "" : gw, shape == 7 ? "" : ref,
                      shape == 7 ? -amount : amount, (int64_t)(lcg(&seed) % 300), c, day,
                      day + (int)(lcg(&seed) % 5));
        if (shape < 5)
            add_record(run, id, PB_RECON_RECORD_PAYMENT, shape == 4 ? "" : gw, ref,
                       amount + (shape == 3 ? (int64_t)(lcg(&seed) % 3) : 0), c, day);
        else if (shape == 6 || shape == 7)
            add_record(run, id, shape == 7 ? PB_RECON_RECORD_JOURNAL : PB_RECON_RECORD_PAYMENT, "",
                       "", shape == 7 ? -amount : amount, c, day + (int)(lcg(&seed) % 7) - 3);
    }
    run_match(run);
    return run;
}

static char *jsonl_of(const struct pb_recon_run *run, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    struct pb_err err = {0};
    assert_non_null(f);
    assert_int_equal(pb_recon_write_jsonl(run, f, &err), PB_OK);
    fclose(f);
    return buf;
}

static void test_deterministic_output(void **state)
{
    struct pb_recon_run *a = random_run(1, 42), *b = random_run(2, 42), *c = random_run(2, 43);
    struct pb_recon_summary sa;
    size_t la, lb;
    char *ja, *jb;
    (void)state;
    assert_true(pb_recon_digest(a) != 0);
    assert_true(pb_recon_digest(a) == pb_recon_digest(b));
    assert_true(pb_recon_digest(a) != pb_recon_digest(c));
    ja = jsonl_of(a, &la);
    jb = jsonl_of(b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(ja, jb, la);
    pb_recon_summary(a, &sa);
    /* every rule that this data can exercise did something */
    assert_true(sa.matches_by_rule[PB_RECON_RULE_REFERENCE] > 1000);
    assert_true(sa.matches_by_rule[PB_RECON_RULE_AMOUNT] + sa.matches_by_rule[3] > 10);
    assert_true(sa.breaks_by_class[PB_RECON_BREAK_DUPLICATE] > 10);
    free(ja);
    free(jb);
    pb_recon_destroy(a);
    pb_recon_destroy(b);
    pb_recon_destroy(c);
}

/* ---- CSV
 * ------------------------------------------------------------------------------------------ */

static const char settlement_csv[] =
    "record,gateway,batch_id,line_no,kind,gateway_ref,merchant_ref,amount,fee,net,currency,"
    "value_date,settled_date\n"
    "batch,opayo,B1,,,,,30.00,0.60,29.40,GBP,2026-03-03,2026-03-02\n"    /* 2 */
    "line,opayo,B1,1,sale,T1,V1,10.00,0.20,,GBP,2026-03-03,2026-03-02\n" /* 3 */
    "line,opayo,B1,2,sale,T2,V2,10.x0,0.20,,GBP,2026-03-03,2026-03-02\n" /* 4 amount */
    "line,opayo,B1,3,sale,T3,V3,10.00,0.20,GBP,2026-03-03,2026-03-02\n"  /* 5 columns */
    "line,opayo,B1,4,sale,T4,V4,10.00,0.20,,GBX,2026-03-03,2026-03-02\n" /* 6 currency */
    "line,opayo,B1,5,sale,T5,V5,10.00,0.20,,GBP,2026-02-30,2026-03-02\n" /* 7 date */
    "batch,opayo,B1,,,,,1.00,0.00,1.00,GBP,2026-03-03,2026-03-02\n"      /* 8 dup batch */
    "line,opayo,B1,6,sale,\"T6\",\"V6, \"\"quoted\"\"\",10.00,0.20,,GBP,2026-03-03,"
    "2026-03-02\n"                                                                   /* 9 */
    "\n"                                                                             /* 10 blank */
    "line,opayo,B1,7,sale,T7,\"two\nlines\",10.00,0.20,,GBP,2026-03-03,2026-03-02\n" /* 11-12 */
    "line,opayo,B1,8,refund,T8,V1,5.00,0,,GBP,2026-03-03,2026-03-02\n"               /* 13 sign */
    "line,opayo,B1,9,bonus,T9,V9,1.00,0,,GBP,2026-03-03,2026-03-02\n"                /* 14 kind */
    "line,opayo,B1,10,sale,T10,V10,1.234,0,,GBP,2026-03-03,2026-03-02\n" /* 15 precision */
    "line,opayo,B1,11,sale,T11,V11,10.0";                                /* 16 truncated */

static void expect_problem(const struct pb_recon_problem *p, size_t n, uint32_t line,
                           enum pb_recon_problem_code code, const char *fragment)
{
    for (size_t k = 0; k < n; k++) {
        if (p[k].line != line)
            continue;
        if (p[k].code != code)
            fail_msg("line %u: problem %s (%s), want %s", line, pb_recon_problem_name(p[k].code),
                     p[k].message, pb_recon_problem_name(code));
        if (fragment && !strstr(p[k].message, fragment))
            fail_msg("line %u: \"%s\" lacks \"%s\"", line, p[k].message, fragment);
        return;
    }
    fail_msg("no problem reported on line %u", line);
}

static void test_csv_bad_lines_reported_rest_processed(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_problem *p;
    struct pb_recon_line_view v;
    struct pb_recon_batch_view bv;
    struct pb_recon_summary s;
    struct pb_err err = {0};
    size_t n;
    (void)state;
    assert_int_equal(
        pb_recon_load_settlement_csv(run, settlement_csv, strlen(settlement_csv), &err), PB_OK);
    p = pb_recon_problems(run, PB_RECON_SETTLEMENT, &n);
    expect_problem(p, n, 4, PB_RECON_PROBLEM_AMOUNT, "10.x0");
    expect_problem(p, n, 5, PB_RECON_PROBLEM_COLUMN_COUNT, "12 columns, the header has 13");
    expect_problem(p, n, 6, PB_RECON_PROBLEM_CURRENCY, "GBX");
    expect_problem(p, n, 7, PB_RECON_PROBLEM_DATE, "2026-02-30");
    expect_problem(p, n, 8, PB_RECON_PROBLEM_DUPLICATE_BATCH, "line 2");
    expect_problem(p, n, 13, PB_RECON_PROBLEM_FIELD, "refund must not be positive");
    expect_problem(p, n, 14, PB_RECON_PROBLEM_FIELD, "bonus");
    expect_problem(p, n, 15, PB_RECON_PROBLEM_AMOUNT, "1.234");
    expect_problem(p, n, 16, PB_RECON_PROBLEM_TRUNCATED, "8 of 13 columns");
    assert_int_equal(n, 9);
    /* the good lines, the quoted ones included, were all loaded */
    assert_int_equal(pb_recon_line_count(run), 3);
    pb_recon_line_get(run, 1, &v);
    assert_int_equal(v.source_line, 9);
    assert_int_equal(v.merchant_ref.len, strlen("V6, \"quoted\""));
    assert_memory_equal(v.merchant_ref.ptr, "V6, \"quoted\"", v.merchant_ref.len);
    pb_recon_line_get(run, 2, &v);
    assert_int_equal(v.source_line, 11);
    assert_memory_equal(v.merchant_ref.ptr, "two\nlines", v.merchant_ref.len);
    assert_int_equal(v.amount_minor, 1000);
    assert_int_equal(pb_recon_batch_count(run), 1);
    pb_recon_batch_get(run, 0, &bv);
    assert_int_equal(bv.net_minor, 2940);
    assert_int_equal(bv.source_line, 2);
    run_match(run);
    pb_recon_summary(run, &s);
    assert_int_equal(s.problems[PB_RECON_SETTLEMENT], 9);
    assert_int_equal(s.breaks_by_class[PB_RECON_BREAK_MISSING_IN_ERP], 3);
    pb_recon_destroy(run);
}

static const char ledger_csv[] = "\xEF\xBB\xBF"
                                 "erp,record_id,kind,gateway_ref,reference,amount,currency,date\r\n"
                                 "xero,INV-1,payment,T1,V1,10.00,GBP,2026-03-02\r\n"    /* 2 */
                                 "xero,INV-2,payment,T2,V2,abc,GBP,2026-03-02\r\n"      /* 3 */
                                 "xero,INV-3,payment,T3,V3,1000,JPY,2026-03-02\r\n"     /* 4 */
                                 "xero,INV-4,invoice,T4,V4,10.00,GBP,2026-03-02\r\n"    /* 5 */
                                 "xero,INV-5,payment,T5,V5,10.00,gbp,2026-03-02\r\n"    /* 6 */
                                 "xero,INV-6,payment,T6,V6,10.00,GBP,2026-03-02,x\r\n"; /* 7 */

static void test_csv_ledger_crlf_bom(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    const struct pb_recon_problem *p;
    struct pb_recon_record_view v;
    struct pb_err err = {0};
    size_t n;
    (void)state;
    assert_int_equal(pb_recon_load_ledger_csv(run, ledger_csv, strlen(ledger_csv), &err), PB_OK);
    p = pb_recon_problems(run, PB_RECON_LEDGER, &n);
    assert_int_equal(n, 4);
    expect_problem(p, n, 3, PB_RECON_PROBLEM_AMOUNT, "abc");
    expect_problem(p, n, 5, PB_RECON_PROBLEM_FIELD, "invoice");
    expect_problem(p, n, 6, PB_RECON_PROBLEM_CURRENCY, "gbp");
    expect_problem(p, n, 7, PB_RECON_PROBLEM_COLUMN_COUNT, "9 columns");
    assert_int_equal(pb_recon_record_count(run), 2);
    pb_recon_record_get(run, 0, &v);
    assert_int_equal(v.amount_minor, 1000);
    {
        int32_t want;
        assert_int_equal(pb_recon_date_parse("2026-03-02", 10, &want), 0);
        assert_int_equal(v.date, want);
    }
    assert_int_equal(v.record_id.len, 5);
    pb_recon_record_get(run, 1, &v);
    assert_string_equal(v.currency, "JPY");
    assert_int_equal(v.amount_minor, 1000);
    assert_int_equal(v.gateway_ref.len, 2); /* no '\r' left in the last column's neighbour */
    pb_recon_destroy(run);
}

static void test_csv_header_errors(void **state)
{
    struct pb_recon_run *run = new_run(NULL);
    struct pb_err err = {0};
    static const char no_amount[] = "erp,record_id,kind,gateway_ref,reference,currency,date\n";
    static const char twice[] = "erp,record_id,kind,amount,amount,currency,date\n";
    (void)state;
    assert_int_equal(pb_recon_load_ledger_csv(run, no_amount, strlen(no_amount), &err),
                     PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "\"amount\""));
    assert_int_equal(pb_recon_load_ledger_csv(run, twice, strlen(twice), &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "twice"));
    assert_int_equal(pb_recon_load_settlement_csv(run, "", 0, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "empty"));
    pb_recon_destroy(run);
}

static void test_load_files_threads_agree(void **state)
{
    char sdir[] = "/tmp/recon-test-XXXXXX", spath[64], lpath[64];
    static const char ledger[] = "erp,record_id,kind,gateway_ref,reference,amount,currency,date\n"
                                 "xero,INV-1,payment,T1,V1,10.00,GBP,2026-03-02\n"
                                 "xero,INV-7,payment,,two\nlines,10.00,GBP,2026-03-02\n"
                                 "xero,INV-6,payment,T6,\"V6, \"\"quoted\"\"\",10.00,GBP,"
                                 "2026-03-02\n";
    uint64_t digest[2];
    struct pb_err err = {0};
    (void)state;
    pbt_tempdir(sdir);
    snprintf(spath, sizeof(spath), "%s/settlement.csv", sdir);
    snprintf(lpath, sizeof(lpath), "%s/ledger.csv", sdir);
    pbt_write_file(spath, settlement_csv);
    pbt_write_file(lpath, ledger);
    for (int t = 1; t <= 2; t++) {
        struct pb_recon_config cfg = base_config();
        struct pb_recon_run *run;
        size_t n;
        cfg.threads = t;
        run = new_run(&cfg);
        if (pb_recon_load_files(run, spath, lpath, &err) != PB_OK)
            fail_msg("load files: %s", err.msg);
        pb_recon_problems(run, PB_RECON_SETTLEMENT, &n);
        assert_int_equal(n, 9);
        pb_recon_problems(run, PB_RECON_LEDGER, &n);
        assert_int_equal(n, 2); /* "two\nlines" unquoted: a short line and a stray one */
        run_match(run);
        expect_pair(run, 0, 0, PB_RECON_RULE_REFERENCE, 100);
        expect_pair(run, 1, 1, PB_RECON_RULE_REFERENCE, 100);
        digest[t - 1] = pb_recon_digest(run);
        pb_recon_destroy(run);
    }
    assert_true(digest[0] == digest[1]);
    {
        struct pb_recon_run *run = new_run(NULL);
        assert_int_equal(pb_recon_load_files(run, "/nonexistent/s.csv", lpath, &err), PB_ERR_IO);
        assert_non_null(strstr(err.msg, "/nonexistent/s.csv"));
        pb_recon_destroy(run);
    }
    unlink(spath);
    unlink(lpath);
    rmdir(sdir);
}

/* ---- input checks and limits -------------------------------------------------------------------
 */

static void test_add_rejects_bad_input(void **state)
{
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run;
    struct pb_recon_line_in in;
    struct pb_err err = {0};
    char long_ref[300];
    static const char big[] =
        "erp,record_id,kind,gateway_ref,reference,amount,currency,date\n"
        "x,A,payment,,,1.00,GBP,2026-03-02\nx,B,payment,,,1.00,GBP,2026-03-02\n"
        "x,C,payment,,,1.00,GBP,2026-03-02\nx,D,payment,,,1.00,GBP,2026-03-02\n";
    (void)state;
    cfg.max_lines = 1;
    cfg.max_records = 2;
    run = new_run(&cfg);
    memset(&in, 0, sizeof(in));
    in.gateway = "opayo";
    in.batch_id = "B1";
    in.kind = PB_RECON_LINE_SALE;
    in.amount_minor = -1;
    in.currency = "GBP";
    in.value_date = in.settled_date = D(1);
    assert_int_equal(pb_recon_add_line(run, &in, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "sale must not be negative"));
    in.amount_minor = 1;
    in.currency = "gbp";
    assert_int_equal(pb_recon_add_line(run, &in, &err), PB_ERR_CURRENCY);
    in.currency = "GBP";
    memset(long_ref, 'x', sizeof(long_ref) - 1);
    long_ref[sizeof(long_ref) - 1] = '\0';
    in.gateway_ref = long_ref;
    assert_int_equal(pb_recon_add_line(run, &in, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "gateway_ref"));
    in.gateway_ref = "T1";
    assert_int_equal(pb_recon_add_line(run, &in, &err), PB_OK);
    assert_int_equal(pb_recon_add_line(run, &in, &err), PB_ERR_TOOBIG);
    assert_int_equal(pb_recon_load_ledger_csv(run, big, strlen(big), &err), PB_ERR_TOOBIG);
    assert_int_equal(pb_recon_record_count(run), 2);
    run_match(run);
    assert_int_equal(pb_recon_add_line(run, &in, &err), PB_ERR_INVALID); /* after match */
    assert_int_equal(pb_recon_match(run, &err), PB_ERR_INVALID);
    pb_recon_destroy(run);
}

static void test_config_rejected(void **state)
{
    struct pb_recon_fx_rate bad_rate = {"EUR", "GBP", "0"};
    struct pb_recon_currency_rule bad_cur = {"XYZ", 0, 0};
    struct pb_recon_config cfg = base_config();
    struct pb_recon_run *run = NULL;
    struct pb_err err = {0};
    (void)state;
    cfg.rates = &bad_rate;
    cfg.rate_count = 1;
    assert_int_equal(pb_recon_create(&cfg, &run, &err), PB_ERR_CONFIG);
    assert_null(run);
    assert_non_null(strstr(err.msg, "rate"));
    cfg = base_config();
    cfg.currencies = &bad_cur;
    cfg.currency_count = 1;
    assert_int_equal(pb_recon_create(&cfg, &run, &err), PB_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "XYZ"));
}

static void test_dates(void **state)
{
    int32_t d = 0;
    char buf[11];
    (void)state;
    assert_int_equal(pb_recon_date_parse("1970-01-01", 10, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(pb_recon_date_parse("2024-02-29", 10, &d), 0);
    pb_recon_date_format(d, buf);
    assert_string_equal(buf, "2024-02-29");
    assert_int_equal(pb_recon_date_parse("2023-02-29", 10, &d), -1);
    assert_int_equal(pb_recon_date_parse("2023-13-01", 10, &d), -1);
    assert_int_equal(pb_recon_date_parse("2023-1-01", 9, &d), -1);
    assert_int_equal(pb_recon_date_parse("2023/01/01", 10, &d), -1);
    for (int32_t k = -1000; k < 40000; k += 37) {
        int32_t back;
        pb_recon_date_format(k, buf);
        assert_int_equal(pb_recon_date_parse(buf, 10, &back), 0);
        assert_int_equal(back, k);
    }
}

/* ---- internals ----------------------------------------------------------------------------------
 */

static int item_cmp(const void *a, const void *b)
{
    const struct pb__recon_sort_item *x = a, *y = b;
    if (x->group != y->group)
        return x->group < y->group ? -1 : 1;
    if (x->amount_key != y->amount_key)
        return x->amount_key < y->amount_key ? -1 : 1;
    if (x->date_key != y->date_key)
        return x->date_key < y->date_key ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void test_radix_sort_matches_qsort(void **state)
{
    enum { N = 5000 };
    struct pb__recon_sort_item *a = calloc(N, sizeof(*a)), *b = calloc(N, sizeof(*b)),
                               *tmp = calloc(N, sizeof(*tmp));
    uint64_t seed = 7;
    (void)state;
    for (uint32_t i = 0; i < N; i++) {
        int64_t amount = (int64_t)(lcg(&seed) % 2000) - 1000;
        if (i % 97 == 0)
            amount = i % 2 ? INT64_MAX : INT64_MIN;
        a[i].amount_key = pb__recon_amount_key(amount);
        a[i].date_key = pb__recon_date_key((int32_t)(lcg(&seed) % 50) - 25);
        a[i].group = (uint16_t)(lcg(&seed) % 5);
        a[i].index = i;
    }
    memcpy(b, a, N * sizeof(*a));
    pb__recon_radix_sort(a, tmp, N);
    qsort(b, N, sizeof(*b), item_cmp);
    assert_memory_equal(a, b, N * sizeof(*a));
    free(a);
    free(b);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule1_transaction_id),
        cmocka_unit_test(test_rule1_vendor_tx_code),
        cmocka_unit_test(test_rule2_amount_same_day),
        cmocka_unit_test(test_rule3_date_window),
        cmocka_unit_test(test_amount_first_in_first_out),
        cmocka_unit_test(test_identified_record_not_matched_by_amount),
        cmocka_unit_test(test_reference_link_not_overridden_by_amount),
        cmocka_unit_test(test_tolerance_boundary),
        cmocka_unit_test(test_auto_adjust_threshold),
        cmocka_unit_test(test_rule4_batch_deposit),
        cmocka_unit_test(test_batch_gross_minus_fees_not_net),
        cmocka_unit_test(test_fuzz_first_result_has_no_members),
        cmocka_unit_test(test_rule5_split_captures),
        cmocka_unit_test(test_rule6_netting),
        cmocka_unit_test(test_rule6_not_stolen_by_amount),
        cmocka_unit_test(test_rule7_fx_zero_decimal_currency),
        cmocka_unit_test(test_fx_without_rate_is_a_break),
        cmocka_unit_test(test_break_missing_in_erp),
        cmocka_unit_test(test_break_not_settled_after_lag),
        cmocka_unit_test(test_break_duplicate_each_side),
        cmocka_unit_test(test_break_fee_out_of_contract),
        cmocka_unit_test(test_break_settlement_late),
        cmocka_unit_test(test_deterministic_output),
        cmocka_unit_test(test_csv_bad_lines_reported_rest_processed),
        cmocka_unit_test(test_csv_ledger_crlf_bom),
        cmocka_unit_test(test_csv_header_errors),
        cmocka_unit_test(test_load_files_threads_agree),
        cmocka_unit_test(test_add_rejects_bad_input),
        cmocka_unit_test(test_config_rejected),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_radix_sort_matches_qsort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
