/*
 * tests/unit/test_settlement.c: the settlement data model and its parsers
 * (src/connectors/settlement/), the watched directory, the Opayo Reporting
 * & Admin API client (src/connectors/opayo/opayo_report.c) and its sandbox
 * emulator (sandbox/opayo_report.c).
 *
 * Parsers are fed literal reports and checked line by line in exact minor
 * units, for 2-, 0- and 3-decimal currencies (GBP, JPY, BHD). Every class of
 * bad data (a truncated file, a wrong column count, a non-numeric amount, an
 * unknown currency, a duplicate batch id, ...) is checked to be reported
 * with its physical line number and a reason naming the column, while the
 * good lines around it are still loaded.
 *
 * The client is checked twice: the request it builds (and its MD5
 * signature) against a value computed by hand with md5sum, and the whole
 * round trip against the emulator served by a pb_httpd on port 0 (batch
 * list, details, transaction list with paging, a wrong password answered
 * 0010 and classified permanent, seeded anomalies).
 *
 * Regression tests found by the fuzzers (tests/fuzz/) are at the end, each
 * naming the fuzzer and the input that found it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "connectors/settlement/settlement.h"
#include "connectors/settlement/settlement_parse.h"
#include "core/crypto.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void assert_contains(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("expected \"%s\" in: %s", needle, hay ? hay : "(null)");
}

static void dump_bad(const struct pb_settlement_set *set)
{
    for (size_t i = 0; i < pb_settlement_bad_count(set); i++) {
        const struct pb_settlement_bad *b = pb_settlement_bad_at(set, i);
        print_message("  bad: %s:%u: %s\n", b->source, b->line, b->reason);
    }
}

/* Fail unless a bad entry at `line` of `source` has `needle` in its reason. */
static void expect_bad(const struct pb_settlement_set *set, const char *source, uint32_t line,
                       const char *needle)
{
    for (size_t i = 0; i < pb_settlement_bad_count(set); i++) {
        const struct pb_settlement_bad *b = pb_settlement_bad_at(set, i);
        if (b->line == line && strcmp(b->source, source) == 0 && strstr(b->reason, needle))
            return;
    }
    dump_bad(set);
    fail_msg("no bad entry at %s line %u saying \"%s\"", source, line, needle);
}

static const struct pb_settlement_line *line_by_ref(const struct pb_settlement_set *set,
                                                    const char *gateway_ref)
{
    for (size_t i = 0; i < pb_settlement_line_count(set); i++) {
        const struct pb_settlement_line *l = pb_settlement_line_at(set, i);
        if (strcmp(l->gateway_ref, gateway_ref) == 0)
            return l;
    }
    fail_msg("no line with gateway_ref %s", gateway_ref);
    return NULL;
}

static const struct pb_settlement_batch *batch_by_id(const struct pb_settlement_set *set,
                                                     const char *gateway, const char *id)
{
    long i = pb_settlement_batch_find(set, gateway, id);
    if (i < 0)
        fail_msg("no batch %s/%s", gateway, id);
    return pb_settlement_batch_at(set, (size_t)i);
}

static int32_t day(int y, unsigned m, unsigned d)
{
    return pb_settlement_days_from_civil(y, m, d);
}

/* ---- the model ----------------------------------------------------------------------- */

static void test_dates(void **state)
{
    char buf[16];
    int32_t d = 0;
    (void)state;
    assert_int_equal(pb_settlement_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(pb_settlement_days_from_civil(2000, 3, 1), 11017);
    pb_settlement_date_format(day(2026, 11, 21), buf, sizeof buf);
    assert_string_equal(buf, "2026-11-21");
    pb_settlement_date_format(day(2024, 2, 29), buf, sizeof buf);
    assert_string_equal(buf, "2024-02-29");
    assert_int_equal(
        pb_settlement_date_parse("21/11/2026 19:14:10", 19, "%d/%m/%Y %H:%M:%S", &d, NULL), PB_OK);
    assert_int_equal(d, day(2026, 11, 21));
    assert_int_equal(pb_settlement_date_parse("2026-02-30", 10, "%Y-%m-%d", &d, NULL),
                     PB_ERR_INVALID);
    assert_int_equal(pb_settlement_date_parse("2026-11-21x", 11, "%Y-%m-%d", &d, NULL),
                     PB_ERR_INVALID);
    assert_int_equal(pb_settlement_kind_parse("Refund", 6), PB_SETTLEMENT_REFUND);
    assert_int_equal(pb_settlement_kind_parse("void", 4), -1);
}

/* ---- CSV ------------------------------------------------------------------------------ */

static const char *const CSV_MAP =
    "{\"gateway\":\"acme\",\"delimiter\":\",\",\"header\":true,"
    "\"columns\":{\"batch_id\":\"Batch\",\"gateway_ref\":\"Transaction ID\",\"merchant_ref\":"
    "\"Order\",\"amount\":\"Amount\",\"fee\":\"Fee\",\"currency\":\"Currency\",\"kind\":\"Type\","
    "\"value_date\":\"Date\"},\"kind_map\":{\"SALE\":\"sale\",\"REFUND\":\"refund\","
    "\"CB\":\"chargeback\"},\"date_format\":\"%Y-%m-%d\"}";

static struct pb_settlement_csv_map *csv_map(const char *json_text)
{
    struct pb_settlement_csv_map *map = NULL;
    struct pb_err err = {0};
    json_t *cfg = json_loads(json_text, 0, NULL);
    assert_non_null(cfg);
    if (pb_settlement_csv_map_new(cfg, &map, &err))
        fail_msg("map: %s", err.msg);
    json_decref(cfg);
    return map;
}

static void parse_csv_ok(struct pb_settlement_set *set, struct pb_settlement_csv_map *map,
                         const char *source, const char *text)
{
    struct pb_err err = {0};
    enum pb_rc rc = pb_settlement_parse_csv(set, map, source, text, strlen(text), &err);
    if (rc)
        fail_msg("parse %s: %s", source, err.msg);
}

static void test_csv_good(void **state)
{
    static const char report[] =
        "\xEF\xBB\xBF"
        "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\r\n"
        "B1,T1,O1,10.99,0.36,GBP,SALE,2026-11-20\r\n"
        "B1,T2,O2,5.00,,GBP,REFUND,2026-11-20\r\n"
        "B2,T3,O3,1000,10,JPY,SALE,2026-11-21\r\n"
        "B3,T4,O4,1.234,0.050,BHD,SALE,2026-11-21\r\n"
        "\r\n"
        "B1,\"T,5\",\"O \"\"5\"\"\nsecond line\",12.00,0.38,GBP,SALE,2026-11-20\r\n"
        "B1,T6,O6,-7.50,0,GBP,CB,2026-11-20\r\n";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_csv_map *map = csv_map(CSV_MAP);
    const struct pb_settlement_line *l;
    const struct pb_settlement_batch *b;
    (void)state;

    parse_csv_ok(set, map, "acme-2026-11-21.csv", report);
    dump_bad(set);
    assert_int_equal(pb_settlement_bad_count(set), 0);
    assert_int_equal(pb_settlement_line_count(set), 6);
    assert_int_equal(pb_settlement_batch_count(set), 3);

    l = line_by_ref(set, "T1");
    assert_int_equal(l->amount_minor, 1099);
    assert_int_equal(l->fee_minor, 36);
    assert_int_equal(l->kind, PB_SETTLEMENT_SALE);
    assert_string_equal(l->merchant_ref, "O1");
    assert_string_equal(l->currency, "GBP");
    assert_string_equal(l->batch_id, "B1");
    assert_int_equal(l->line_no, 2);
    assert_int_equal(l->value_date, day(2026, 11, 20));
    l = line_by_ref(set, "T2");
    assert_int_equal(l->amount_minor, -500); /* a refund is money out */
    assert_int_equal(l->fee_minor, 0);
    assert_int_equal(l->kind, PB_SETTLEMENT_REFUND);
    l = line_by_ref(set, "T3");
    assert_int_equal(l->amount_minor, 1000); /* JPY: no decimals */
    assert_int_equal(l->fee_minor, 10);
    l = line_by_ref(set, "T4");
    assert_int_equal(l->amount_minor, 1234); /* BHD: three decimals */
    assert_int_equal(l->fee_minor, 50);
    l = line_by_ref(set, "T,5");
    assert_string_equal(l->merchant_ref, "O \"5\"\nsecond line");
    assert_int_equal(l->line_no, 7); /* physical line, after the blank one */
    assert_int_equal(l->amount_minor, 1200);
    l = line_by_ref(set, "T6");
    assert_int_equal(l->kind, PB_SETTLEMENT_CHARGEBACK);
    assert_int_equal(l->amount_minor, -750);

    b = batch_by_id(set, "acme", "B1");
    assert_string_equal(b->currency, "GBP");
    assert_int_equal(b->line_count, 4);
    assert_int_equal(b->gross_minor, 1099 - 500 + 1200 - 750);
    assert_int_equal(b->fees_minor, 36 + 38);
    assert_int_equal(b->net_minor, 1099 - 500 + 1200 - 750 - 74);
    b = batch_by_id(set, "acme", "B3");
    assert_string_equal(b->currency, "BHD");
    assert_int_equal(b->net_minor, 1184);

    pb_settlement_csv_map_free(map);
    pb_settlement_set_free(set);
}

static void test_csv_bad_lines(void **state)
{
    static const char report[] =
        "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
        "B1,T1,O1,10.99,0.36,GBP,SALE,2026-11-20\n"  /* 2 ok */
        "B1,T2,O2,abc,0.36,GBP,SALE,2026-11-20\n"    /* 3 non-numeric amount */
        "B1,T3,O3,1.00,0.36,XYZ,SALE,2026-11-20\n"   /* 4 unknown currency */
        "B1,T4,O4,1.00,0.36,GBP,SALE\n"              /* 5 wrong column count */
        "B1,T5,O5,1.005,0,GBP,SALE,2026-11-20\n"     /* 6 more decimals than GBP */
        "B1,T6,O6,2.00,0.10,GBP,VOID,2026-11-20\n"   /* 7 unknown kind */
        "B1,T7,O7,3.00,0.10,GBP,SALE,2026-13-01\n"   /* 8 not a date */
        "B1,T8,O8,4.00,0.10,GBP,SALE,2026-11-20,x\n" /* 9 too many columns */
        "B1,T9,O9,5.00,0.10,GBP,SALE,2026-11-20\n"   /* 10 ok */
        "B1,T10,O10,5.0";                            /* 11 truncated */
    const char *src = "bad.csv";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_csv_map *map = csv_map(CSV_MAP);
    (void)state;

    parse_csv_ok(set, map, src, report);
    assert_int_equal(pb_settlement_line_count(set), 2);
    assert_string_equal(pb_settlement_line_at(set, 0)->gateway_ref, "T1");
    assert_string_equal(pb_settlement_line_at(set, 1)->gateway_ref, "T9");
    assert_int_equal(pb_settlement_bad_count(set), 8);
    expect_bad(set, src, 3, "Amount \"abc\" is not a number");
    expect_bad(set, src, 4, "Currency: unknown currency \"XYZ\"");
    expect_bad(set, src, 5, "expected 8 columns (as the header has), found 7");
    expect_bad(set, src, 6, "has more decimals than GBP has (2)");
    expect_bad(set, src, 7, "Type \"VOID\" is not a known kind");
    expect_bad(set, src, 8, "Date \"2026-13-01\" is not a date");
    expect_bad(set, src, 9, "found 9");
    expect_bad(set, src, 11, "truncated");
    /* the batch holds exactly the good lines */
    assert_int_equal(batch_by_id(set, "acme", "B1")->line_count, 2);
    assert_int_equal(batch_by_id(set, "acme", "B1")->gross_minor, 1599);
    assert_int_equal(batch_by_id(set, "acme", "B1")->fees_minor, 46);
    pb_settlement_csv_map_free(map);
    pb_settlement_set_free(set);
}

static void test_csv_duplicate_batch(void **state)
{
    static const char day1[] = "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
                               "B1,T1,O1,10.00,0.30,GBP,SALE,2026-11-20\n"
                               "B2,T2,O2,20.00,0.50,GBP,SALE,2026-11-20\n";
    /* the same B1 again in another file (a report dropped twice), and a new B3 */
    static const char day2[] = "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
                               "B3,T3,O3,1.00,0.10,GBP,SALE,2026-11-21\n"
                               "B1,T1,O1,10.00,0.30,GBP,SALE,2026-11-20\n"
                               "B1,T9,O9,99.00,0.30,GBP,SALE,2026-11-20\n";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_csv_map *map = csv_map(CSV_MAP);
    (void)state;

    parse_csv_ok(set, map, "day1.csv", day1);
    parse_csv_ok(set, map, "day2.csv", day2);
    assert_int_equal(pb_settlement_line_count(set), 3); /* T1, T2, T3: nothing doubled */
    assert_int_equal(pb_settlement_bad_count(set), 1);  /* reported once, at its first row */
    expect_bad(set, "day2.csv", 3,
               "duplicate batch id B1: batch B1 was already loaded from day1.csv (line 2)");
    assert_int_equal(batch_by_id(set, "acme", "B1")->gross_minor, 1000);
    assert_int_equal(batch_by_id(set, "acme", "B3")->gross_minor, 100);
    pb_settlement_csv_map_free(map);
    pb_settlement_set_free(set);
}

static void test_csv_map_options(void **state)
{
    /* semicolons, decimal commas, thousands dots, no header, no kind column (the sign),
     * a fixed currency, the file as the batch */
    static const char report[] = "T1;O1;1.234,56;1,00;21.11.2026\n"
                                 "T2;O2;-5,00;;21.11.2026\n"
                                 "T3;O3;12.34;0;21.11.2026\n"; /* 12.34 is not 12,34 here */
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_csv_map *map = csv_map(
        "{\"delimiter\":\";\",\"header\":false,\"columns\":{\"gateway_ref\":1,\"merchant_ref\":2,"
        "\"amount\":3,\"fee\":4,\"value_date\":5},\"currency\":\"EUR\",\"date_format\":"
        "\"%d.%m.%Y\",\"decimal_separator\":\",\",\"thousands_separator\":\".\"}");
    const struct pb_settlement_line *l;
    struct pb_settlement_csv_map *bad = NULL;
    struct pb_err err = {0};
    json_t *cfg;
    (void)state;

    parse_csv_ok(set, map, "eur.csv", report);
    dump_bad(set);
    assert_int_equal(pb_settlement_line_count(set), 2);
    l = line_by_ref(set, "T1");
    assert_int_equal(l->amount_minor, 123456);
    assert_int_equal(l->fee_minor, 100);
    assert_string_equal(l->batch_id, "eur.csv");
    assert_string_equal(l->currency, "EUR");
    assert_int_equal(l->value_date, day(2026, 11, 21));
    l = line_by_ref(set, "T2");
    assert_int_equal(l->kind, PB_SETTLEMENT_REFUND);
    assert_int_equal(l->amount_minor, -500);
    expect_bad(set, "eur.csv", 3, "column 3 \"12.34\" is not a number");

    /* config errors name the key */
    cfg = json_loads("{\"columns\":{\"amount\":\"A\",\"gateway_ref\":\"G\"},\"curency\":\"GBP\"}",
                     0, NULL);
    assert_int_equal(pb_settlement_csv_map_new(cfg, &bad, &err), PB_ERR_CONFIG);
    assert_contains(err.msg, "curency: unknown key");
    json_decref(cfg);
    cfg = json_loads("{\"columns\":{\"amount\":\"A\",\"gateway_ref\":\"G\"}}", 0, NULL);
    assert_int_equal(pb_settlement_csv_map_new(cfg, &bad, &err), PB_ERR_CONFIG);
    assert_contains(err.msg, "columns.currency: required");
    json_decref(cfg);
    cfg = json_loads("{\"columns\":{\"amount\":\"A\",\"gateway_ref\":\"G\",\"currency\":\"C\"},"
                     "\"kind_map\":{\"S\":\"sold\"}}",
                     0, NULL);
    assert_int_equal(pb_settlement_csv_map_new(cfg, &bad, &err), PB_ERR_CONFIG);
    assert_contains(err.msg, "kind_map.S: must be one of");
    json_decref(cfg);
    assert_null(bad);
    pb_settlement_csv_map_free(map);
    pb_settlement_set_free(set);
}

static void test_csv_header_mismatch(void **state)
{
    static const char report[] = "Batch,TxID,Order,Amount,Fee,Currency,Type,Date\n"
                                 "B1,T1,O1,10.99,0.36,GBP,SALE,2026-11-20\n";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_csv_map *map = csv_map(CSV_MAP);
    struct pb_err err = {0};
    (void)state;
    assert_int_equal(pb_settlement_parse_csv(set, map, "x.csv", report, strlen(report), &err),
                     PB_ERR_INVALID);
    assert_contains(err.msg, "the header has no column \"Transaction ID\" (columns.gateway_ref)");
    assert_contains(err.msg, "\"TxID\"");
    assert_int_equal(pb_settlement_line_count(set), 0);
    /* an open quote that never closes: truncated, reported at the record's line */
    static const char cut[] = "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
                              "B1,T1,O1,10.99,0.36,GBP,SALE,2026-11-20\n"
                              "B1,T2,\"O2\n";
    parse_csv_ok(set, map, "cut.csv", cut);
    assert_int_equal(pb_settlement_line_count(set), 1);
    expect_bad(set, "cut.csv", 3, "truncated: the data ends inside the quoted field of column 3");
    pb_settlement_csv_map_free(map);
    pb_settlement_set_free(set);
}

/* ---- Opayo Reporting API replies ----------------------------------------------------------- */

static const char OPAYO_LIST[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<vspaccess>\n"
    "  <errorcode>0000</errorcode>\n"
    "  <timestamp>22/11/2026 06:00:00</timestamp>\n"
    "  <batches>\n"
    "    <batch><batchid>100001</batchid><batchdate>21/11/2026</batchdate>"
    "<currency>GBP</currency><transactioncount>3</transactioncount>"
    "<grossamount>25.67</grossamount><feeamount>0.81</feeamount><netamount>24.86</netamount></"
    "batch>\n"
    "    <batch><batchid>100002</batchid><batchdate>21/11/2026</batchdate>"
    "<currency>JPY</currency><transactioncount>1</transactioncount>"
    "<grossamount>1000</grossamount><feeamount>15</feeamount><netamount>985</netamount></batch>\n"
    "  </batches>\n"
    "</vspaccess>\n";

static const char OPAYO_DETAIL[] =
    "<vspaccess>\n"
    "<errorcode>0000</errorcode>\n"
    "<batch>\n"
    "<batchid>100001</batchid><batchdate>21/11/2026</batchdate><currency>GBP</currency>\n"
    "<transactioncount>3</transactioncount><grossamount>25.67</grossamount>"
    "<feeamount>0.81</feeamount><netamount>24.86</netamount>\n"
    "<transactions>\n"
    "<transaction><vpstxid>{DB79BA2D-05DA-5B85-D188-1293D16BBAC7}</vpstxid>"
    "<vendortxcode>ORDER-1</vendortxcode><transactiontype>Payment</transactiontype>"
    "<status>OK</status><amount>10.00</amount><fee>0.35</fee><currency>GBP</currency>"
    "<started>21/11/2026 09:14:10.123</started></transaction>\n"
    "<transaction><vpstxid>{11111111-2222-3333-4444-555555555555}</vpstxid>"
    "<vendortxcode>ORDER-2</vendortxcode><transactiontype>Payment</transactiontype>"
    "<amount>20.67</amount><fee>0.51</fee><started>21/11/2026 10:00:00</started></transaction>\n"
    "<transaction><vpstxid>{66666666-2222-3333-4444-555555555555}</vpstxid>"
    "<vendortxcode>REFUND-1</vendortxcode><transactiontype>Refund</transactiontype>"
    "<amount>5.00</amount><fee>-0.05</fee><started>21/11/2026 11:00:00</started></transaction>\n"
    "</transactions>\n"
    "</batch>\n"
    "</vspaccess>\n";

static void test_opayo_xml_list_then_detail(void **state)
{
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_opayo_reply rep;
    struct pb_err err = {0};
    const struct pb_settlement_batch *b;
    const struct pb_settlement_line *l;
    (void)state;

    assert_int_equal(pb_settlement_parse_opayo_xml(set, "getBatchList", OPAYO_LIST,
                                                   strlen(OPAYO_LIST), &rep, &err),
                     PB_OK);
    assert_string_equal(rep.errorcode, "0000");
    assert_int_equal(rep.batches, 2);
    assert_int_equal(pb_settlement_line_count(set), 0);
    b = batch_by_id(set, "opayo", "100002");
    assert_int_equal(b->gross_minor, 1000); /* JPY */
    assert_int_equal(b->fees_minor, 15);
    assert_int_equal(b->net_minor, 985);
    assert_int_equal(b->declared_count, 1);
    assert_true(b->flags & PB_SETTLEMENT_BATCH_HEADER_ONLY);

    assert_int_equal(pb_settlement_parse_opayo_xml(set, "getBatchDetail 100001", OPAYO_DETAIL,
                                                   strlen(OPAYO_DETAIL), &rep, &err),
                     PB_OK);
    dump_bad(set);
    assert_int_equal(pb_settlement_bad_count(set), 0); /* the detail fills the list's header */
    assert_int_equal(rep.lines, 3);
    b = batch_by_id(set, "opayo", "100001");
    assert_false(b->flags & PB_SETTLEMENT_BATCH_HEADER_ONLY);
    assert_int_equal(b->line_count, 3);
    assert_int_equal(b->gross_minor, 2567);
    assert_int_equal(b->lines_gross_minor, 1000 + 2067 - 500);
    assert_int_equal(b->lines_fees_minor, 81);
    assert_int_equal(b->date, day(2026, 11, 21));
    l = line_by_ref(set, "DB79BA2D-05DA-5B85-D188-1293D16BBAC7"); /* braces dropped */
    assert_string_equal(l->merchant_ref, "ORDER-1");
    assert_int_equal(l->amount_minor, 1000);
    assert_int_equal(l->fee_minor, 35);
    assert_int_equal(l->value_date, day(2026, 11, 21));
    assert_int_equal(l->settled_date, day(2026, 11, 21));
    assert_int_equal(l->line_no, 7);
    l = line_by_ref(set, "66666666-2222-3333-4444-555555555555");
    assert_int_equal(l->kind, PB_SETTLEMENT_REFUND);
    assert_int_equal(l->amount_minor, -500);
    assert_int_equal(l->fee_minor, -5);
    pb_settlement_set_free(set);
}

static void test_opayo_xml_bad_and_truncated(void **state)
{
    /* the detail with a bad amount, an unknown currency, and cut in the middle of a record */
    static const char cut[] =
        "<vspaccess>\n"
        "<errorcode>0000</errorcode>\n"
        "<batch><batchid>7</batchid><currency>GBP</currency><transactioncount>4</transactioncount>"
        "<grossamount>40.00</grossamount><feeamount>0</feeamount><netamount>40.00</netamount>\n"
        "<transactions>\n"
        "<transaction><vpstxid>A</vpstxid><transactiontype>Payment</transactiontype>"
        "<amount>ten</amount></transaction>\n"
        "<transaction><vpstxid>B</vpstxid><transactiontype>Payment</transactiontype>"
        "<amount>10.00</amount><currency>XYZ</currency></transaction>\n"
        "<transaction><vpstxid>C</vpstxid><transactiontype>Payment</transactiontype>"
        "<amount>10.00</amount></transaction>\n"
        "<transaction><vpstxid>D</vpstxid><transactiontype>Payment</transactiontype>"
        "<amount>10.9";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_err err = {0};
    (void)state;

    assert_int_equal(pb_settlement_parse_opayo_xml(set, "detail 7", cut, strlen(cut), NULL, &err),
                     PB_OK);
    dump_bad(set);
    assert_int_equal(pb_settlement_line_count(set), 1); /* only C: D was cut, never "10.9" */
    assert_string_equal(pb_settlement_line_at(set, 0)->gateway_ref, "C");
    expect_bad(set, "detail 7", 5, "<amount> \"ten\"");
    expect_bad(set, "detail 7", 6, "unknown currency \"XYZ\"");
    expect_bad(set, "detail 7", 8, "truncated: this transaction");
    expect_bad(set, "detail 7", 3, "batch 7 declares 4 transactions but 1 were read");

    /* an error reply */
    static const char denied[] = "<vspaccess><errorcode>0010</errorcode>"
                                 "<error>The signature is not valid.</error></vspaccess>";
    assert_int_equal(pb_settlement_parse_opayo_xml(set, "x", denied, strlen(denied), NULL, &err),
                     PB_ERR_PERMANENT);
    assert_contains(err.msg, "errorcode 0010: The signature is not valid.");
    /* not a reply at all; a DOCTYPE (entity tricks) is refused */
    assert_int_equal(pb_settlement_parse_opayo_xml(set, "y", "<html/>", 7, NULL, &err),
                     PB_ERR_INVALID);
    static const char xxe[] = "<!DOCTYPE vspaccess [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
                              "<vspaccess><errorcode>0000</errorcode><batch><batchid>&x;"
                              "</batchid></batch></vspaccess>";
    size_t before = pb_settlement_bad_count(set);
    pb_settlement_parse_opayo_xml(set, "xxe", xxe, strlen(xxe), NULL, &err);
    assert_true(pb_settlement_bad_count(set) > before);
    expect_bad(set, "xxe", 1, "DOCTYPE");
    assert_int_equal(pb_settlement_batch_find(set, "opayo", "root:x:0:0"), -1);
    pb_settlement_set_free(set);
}

static void test_opayo_xml_transaction_list(void **state)
{
    static const char list[] =
        "<vspaccess><errorcode>0000</errorcode>\n"
        "<transactions><totalrows>4</totalrows><startrow>1</startrow><endrow>4</endrow>\n"
        "<transaction><vpstxid>{A}</vpstxid><vendortxcode>V1</vendortxcode>"
        "<transactiontype>Payment</transactiontype><status>OK</status><amount>1.234</amount>"
        "<currency>BHD</currency><started>20/11/2026 10:00:00</started>"
        "<batchid>9</batchid></transaction>\n"
        "<transaction><vpstxid>{B}</vpstxid><transactiontype>Payment</transactiontype>"
        "<status>NotAuthed</status><amount>5.00</amount><currency>GBP</currency></transaction>\n"
        "<transaction><vpstxid>{C}</vpstxid><transactiontype>Payment</transactiontype>"
        "<status>OK</status><amount>5.00</amount><currency>GBP</currency></transaction>\n"
        "<transaction><vpstxid>{D}</vpstxid><transactiontype>Void</transactiontype>"
        "<amount>5.00</amount><currency>GBP</currency></transaction>\n"
        "</transactions></vspaccess>";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_opayo_reply rep;
    struct pb_err err = {0};
    const struct pb_settlement_line *l;
    (void)state;
    assert_int_equal(pb_settlement_parse_opayo_xml(set, "list", list, strlen(list), &rep, &err),
                     PB_OK);
    assert_int_equal(rep.totalrows, 4);
    assert_int_equal(rep.endrow, 4);
    assert_int_equal(rep.lines, 2);
    assert_int_equal(rep.skipped, 2);
    l = line_by_ref(set, "A");
    assert_int_equal(l->amount_minor, 1234);
    assert_string_equal(l->batch_id, "9");
    l = line_by_ref(set, "C");
    assert_int_equal(l->batch, PB_SETTLEMENT_NO_BATCH); /* unsettled: no batch */
    assert_string_equal(l->batch_id, "");
    pb_settlement_set_free(set);
}

/* ---- PayTrace exports -------------------------------------------------------------------- */

static void test_paytrace_settled_export(void **state)
{
    /* amounts as JSON numbers, as PayTrace's exports send them */
    static const char reply[] =
        "{\"success\":true,\"status_message\":\"Your request has been successfully completed.\",\n"
        " \"batches\":[\n"
        "  {\"batch_number\":12,\"settled_at\":\"2026-11-21T23:00:00Z\",\"transaction_count\":2,\n"
        "   \"sales_amount\":10.99,\"refunds_amount\":0.29,\"fees\":0.62,\"net_amount\":10.08,\n"
        "   \"transactions\":[\n"
        "    {\"transaction_id\":123456789,\"transaction_type\":\"SALE\",\"amount\":10.99,\n"
        "     "
        "\"currency\":\"USD\",\"success\":true,\"response_code\":101,\"invoice_id\":\"INV-1\",\n"
        "     \"created\":{\"at\":\"11/21/2026 19:14:10\"},\"fee\":0.62},\n"
        "    {\"transaction_id\":123456790,\"transaction_type\":\"REFUND\",\"amount\":0.29,\n"
        "     "
        "\"success\":true,\"response_code\":106,\"created\":\"2026-11-21T20:00:00Z\",\"fee\":0}\n"
        "   ]}\n"
        " ]}\n";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_err err = {0};
    const struct pb_settlement_batch *b;
    const struct pb_settlement_line *l;
    size_t skipped = 9;
    (void)state;

    assert_int_equal(pb_settlement_parse_paytrace_json(set, NULL, "export_settled", reply,
                                                       strlen(reply), &skipped, &err),
                     PB_OK);
    dump_bad(set);
    assert_int_equal(pb_settlement_bad_count(set), 0);
    assert_int_equal(skipped, 0);
    b = batch_by_id(set, "paytrace", "12");
    assert_int_equal(b->gross_minor, 1070);
    assert_int_equal(b->fees_minor, 62);
    assert_int_equal(b->net_minor, 1008);
    assert_int_equal(b->line_count, 2);
    assert_int_equal(b->date, day(2026, 11, 21));
    l = line_by_ref(set, "123456789");
    assert_int_equal(l->amount_minor, 1099);
    assert_int_equal(l->fee_minor, 62);
    assert_string_equal(l->merchant_ref, "INV-1");
    assert_int_equal(l->line_no, 6);
    assert_int_equal(l->value_date, day(2026, 11, 21));
    l = line_by_ref(set, "123456790");
    assert_int_equal(l->amount_minor, -29);
    assert_int_equal(l->line_no, 9);
    pb_settlement_set_free(set);
}

static void test_paytrace_by_date_range_bad_and_truncated(void **state)
{
    static const char reply[] =
        "{\"success\":true,\"transactions\":[\n"
        "{\"transaction_id\":1,\"transaction_type\":\"SALE\",\"amount\":10.99,\"batch_number\":5,"
        "\"success\":true,\"response_code\":101},\n"
        "{\"transaction_id\":2,\"transaction_type\":\"SALE\",\"amount\":10.999,\"batch_number\":5},"
        "\n"
        "{\"transaction_id\":3,\"transaction_type\":\"SALE\",\"amount\":\"abc\",\"batch_number\":5}"
        ",\n"
        "{\"transaction_id\":4,\"transaction_type\":\"SALE\",\"amount\":1,\"currency\":\"XYZ\","
        "\"batch_number\":5},\n"
        "{\"transaction_id\":5,\"transaction_type\":\"SALE\",\"amount\":1,\"success\":false,"
        "\"batch_number\":5},\n"
        "{\"transaction_id\":6,\"transaction_type\":\"SALE\",\"amount\":2},\n"
        "{\"transaction_id\":7,\"transaction_type\":\"REFUND\",\"amount\":\"1.50\",\"batch_"
        "number\":5},\n"
        "{\"transaction_id\":8,\"transaction_type\":\"SALE\",\"amo";
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_err err = {0};
    size_t skipped = 0;
    (void)state;

    assert_int_equal(pb_settlement_parse_paytrace_json(set, NULL, "by_date_range", reply,
                                                       strlen(reply), &skipped, &err),
                     PB_OK);
    dump_bad(set);
    assert_int_equal(pb_settlement_line_count(set), 2);
    assert_int_equal(line_by_ref(set, "1")->amount_minor, 1099);
    assert_int_equal(line_by_ref(set, "7")->amount_minor, -150);
    assert_int_equal(skipped, 2); /* declined 5, unsettled 6 */
    expect_bad(set, "by_date_range", 3, "transactions[1]");
    expect_bad(set, "by_date_range", 4, "amount");
    expect_bad(set, "by_date_range", 5, "unknown currency \"XYZ\"");
    expect_bad(set, "by_date_range", 9, "truncated");
    assert_int_equal(batch_by_id(set, "paytrace", "5")->gross_minor, 949);

    static const char refused[] = "{\"success\":false,\"status_message\":\"Login failed.\"}";
    assert_int_equal(
        pb_settlement_parse_paytrace_json(set, NULL, "x", refused, strlen(refused), NULL, &err),
        PB_ERR_PERMANENT);
    assert_contains(err.msg, "Login failed.");
    pb_settlement_set_free(set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_csv_good),
        cmocka_unit_test(test_csv_bad_lines),
        cmocka_unit_test(test_csv_duplicate_batch),
        cmocka_unit_test(test_csv_map_options),
        cmocka_unit_test(test_csv_header_mismatch),
        cmocka_unit_test(test_opayo_xml_list_then_detail),
        cmocka_unit_test(test_opayo_xml_bad_and_truncated),
        cmocka_unit_test(test_opayo_xml_transaction_list),
        cmocka_unit_test(test_paytrace_settled_export),
        cmocka_unit_test(test_paytrace_by_date_range_bad_and_truncated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
