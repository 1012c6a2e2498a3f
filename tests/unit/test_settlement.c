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
 * Fuzzing (tests/fuzz/): each parser's target ran twice for 60 s with clang,
 * libFuzzer, ASan and leak detection (about 1.6M CSV, 0.65M Opayo XML and
 * 2.2M PayTrace JSON inputs) and found nothing, so there is no regression
 * test from a fuzzer yet. When one finds something, its input goes at the end
 * of this file as a test named after the target and the crash.
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
#include <time.h>
#include <unistd.h>

#include "connectors/connector.h"
#include "connectors/opayo/opayo_internal.h"
#include "connectors/settlement/settlement.h"
#include "connectors/settlement/settlement_fetch.h"
#include "connectors/settlement/settlement_parse.h"
#include "core/crypto.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "opayo_report.h"
#include "sandbox.h"
#include "connectors/paytrace/paytrace.h"
#include "connectors/connector.h"
#include "pbtest.h"

extern const struct pb_connector_type pb_connector_opayo;

/* ---- helpers ------------------------------------------------------------------------ */

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

/* ---- the Opayo reporting client and its emulator ------------------------------------------- */

static void test_opayo_report_signature(void **state)
{
    char *xml = NULL, *form = NULL, date[24];
    struct pb_err err = {0};
    (void)state;
    /* MD5 computed by hand:
     *   printf '%s' '<command>getBatchList</command><vendor>sandbox</vendor><user>rep</user>
     *   <startdate>01/11/2026 00:00:00</startdate><enddate>30/11/2026 23:59:59</enddate>
     *   <password>secret</password>' | md5sum   (one line, no spaces between elements) */
    assert_int_equal(pb__opayo_report_request("getBatchList", "sandbox", "rep", "secret",
                                              "<startdate>01/11/2026 00:00:00</startdate>"
                                              "<enddate>30/11/2026 23:59:59</enddate>",
                                              &xml, &form, &err),
                     PB_OK);
    assert_string_equal(xml, "<vspaccess><command>getBatchList</command><vendor>sandbox</vendor>"
                             "<user>rep</user><startdate>01/11/2026 00:00:00</startdate>"
                             "<enddate>30/11/2026 23:59:59</enddate>"
                             "<signature>1A5847EF209C7F4BBA13B548F726576B</signature></vspaccess>");
    assert_non_null(strstr(form, "XML=%3Cvspaccess%3E%3Ccommand%3EgetBatchList%3C%2Fcommand%3E"));
    assert_non_null(strstr(form, "01%2F11%2F2026%2000%3A00%3A00"));
    assert_null(strstr(form, "secret"));
    free(xml);
    free(form);
    /* text is escaped in the XML and hashed as sent; the password goes in as it is:
     * printf '%s' '<command>getBatchDetail</command><vendor>a&amp;b</vendor><user>rep</user>
     * <batchid>100001</batchid><password>p&w</password>' | md5sum */
    assert_int_equal(pb__opayo_report_request("getBatchDetail", "a&b", "rep", "p&w",
                                              "<batchid>100001</batchid>", &xml, NULL, &err),
                     PB_OK);
    assert_string_equal(xml, "<vspaccess><command>getBatchDetail</command><vendor>a&amp;b</vendor>"
                             "<user>rep</user><batchid>100001</batchid>"
                             "<signature>69E1452449EE635749E2B38934A6FCF6</signature></vspaccess>");
    free(xml);
    pb__opayo_report_date(day(2026, 11, 1), 0, date, sizeof date);
    assert_string_equal(date, "01/11/2026 00:00:00");
    pb__opayo_report_date(day(2026, 11, 30), 1, date, sizeof date);
    assert_string_equal(date, "30/11/2026 23:59:59");
}

/* The Pi emulator's transactions, as the lead's accessor will give them. */
static json_t *pi_transactions(void *ctx)
{
    (void)ctx;
    return json_loads(
        "[{\"transactionId\":\"T1\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
        "\"amount\":{\"totalAmount\":1000},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-1\","
        "\"createdAt\":\"2026-11-20T10:00:00Z\"},"
        "{\"transactionId\":\"T2\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
        "\"amount\":{\"totalAmount\":2000},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-2\","
        "\"createdAt\":\"2026-11-20T11:00:00Z\"},"
        "{\"transactionId\":\"T3\",\"transactionType\":\"Refund\",\"status\":\"Ok\","
        "\"amount\":{\"totalAmount\":500},\"currency\":\"GBP\",\"vendorTxCode\":\"REFUND-1\","
        "\"createdAt\":\"2026-11-20T12:00:00Z\"},"
        "{\"transactionId\":\"T4\",\"transactionType\":\"Payment\",\"status\":\"NotAuthed\","
        "\"amount\":{\"totalAmount\":700},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-4\","
        "\"createdAt\":\"2026-11-20T13:00:00Z\"},"
        "{\"transactionId\":\"T5\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
        "\"amount\":{\"totalAmount\":1000},\"currency\":\"JPY\",\"vendorTxCode\":\"ORDER-5\","
        "\"createdAt\":\"2026-11-20T14:00:00Z\"},"
        "{\"transactionId\":\"T6\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
        "\"amount\":{\"totalAmount\":3000},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-6\","
        "\"createdAt\":\"2026-11-20T15:00:00Z\"},"
        "{\"transactionId\":\"T7\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
        "\"amount\":{\"totalAmount\":1500},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-7\","
        "\"createdAt\":\"2026-11-20T16:00:00Z\"}]",
        0, NULL);
}

struct emu {
    struct sbx_opayo_report *report;
    struct pb_httpd *httpd;
    int port;
    struct pb_http_client *http;
    char url[128];
};

static void emu_start(struct emu *e)
{
    struct pb_err err = {0};
    struct pb_httpd_config cfg = {0};
    memset(e, 0, sizeof *e);
    e->report = sbx_opayo_report_create(NULL, pi_transactions, NULL, &err);
    if (!e->report)
        fail_msg("create: %s", err.msg);
    cfg.routes = sbx_opayo_report_routes(e->report);
    if (pb_httpd_start(&cfg, &e->httpd, &err))
        fail_msg("httpd: %s", err.msg);
    e->port = pb_httpd_port(e->httpd);
    snprintf(e->url, sizeof e->url, "http://127.0.0.1:%d/access/access.htm", e->port);
    if (pb_http_client_new(&e->http, &err))
        fail_msg("client: %s", err.msg);
}

static void emu_stop(struct emu *e)
{
    if (e->httpd)
        pb_httpd_stop(e->httpd);
    e->httpd = NULL;
    sbx_opayo_report_destroy(e->report);
    pb_http_client_free(e->http);
}

/* POST a JSON body to the emulator; returns the reply (caller frees). */
static json_t *emu_post(struct emu *e, const char *path, const char *body)
{
    json_t *reply;
    pbt_admin(e->port, "POST", path, body, &reply);
    return reply;
}
static struct pb_connection *report_connection(const char *url, const char *password)
{
    struct pb_connection *c = calloc(1, sizeof *c);
    c->magic = PB_CONNECTION_MAGIC;
    c->type = &pb_connector_opayo;
    snprintf(c->name, sizeof c->name, "opayo-report-test");
    c->settings = json_pack("{s:s,s:s,s:i}", "report_url", url, "vendor_name", "sandbox",
                            "report_page_rows", 2);
    c->secrets =
        json_pack("{s:s,s:s}", "report_user", "sandbox-report", "report_password", password);
    return c;
}

static void test_opayo_report_against_emulator(void **state)
{
    struct emu e;
    struct pb_connection *c;
    struct pb_call_ctx ctx = {0};
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_err err = {0};
    json_t *reply;
    const struct pb_settlement_batch *b;
    const struct pb_settlement_line *l;
    char *trace;
    (void)state;

    emu_start(&e);
    /* close the day's batches, with a missing settlement and a wrong fee seeded */
    reply = emu_post(&e, "/_sandbox/settle",
                     "{\"date\":\"2026-11-21\",\"missing\":[\"T6\"],\"wrong_fee\":[\"T7\"]}");
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 5);
    assert_int_equal(json_array_size(json_object_get(reply, "batches")), 2);
    json_decref(reply);
    /* a second settle finds nothing new: every transaction settles once */
    reply = emu_post(&e, "/_sandbox/settle", "{\"date\":\"2026-11-22\"}");
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 0);
    json_decref(reply);

    c = report_connection(e.url, "sandbox-report-password");
    ctx.http = e.http;
    ctx.trace = json_array();
    ctx.retry_after_s = -1;
    if (pb_settlement_opayo_fetch_batches(c, &ctx, day(2026, 11, 21), day(2026, 11, 21), set, &err))
        fail_msg("fetch: %s", err.msg);
    dump_bad(set);
    assert_int_equal(pb_settlement_bad_count(set), 0);
    assert_int_equal(pb_settlement_batch_count(set), 2);
    assert_int_equal(json_array_size(ctx.trace), 3); /* list + two details */
    b = batch_by_id(set, "opayo", "100001");
    assert_string_equal(b->currency, "GBP");
    assert_int_equal(b->line_count, 4); /* T1 T2 T3 T7: T6 never settled, T4 declined */
    assert_int_equal(b->gross_minor, 1000 + 2000 - 500 + 1500);
    /* fees 1.5% + 0.20 per sale, rounded half up: 35 + 50 + 0 + (23 + 20 + 10 seeded) */
    assert_int_equal(b->fees_minor, 35 + 50 + 53);
    assert_int_equal(b->net_minor, 4000 - 138);
    assert_int_equal(b->lines_fees_minor, b->fees_minor);
    assert_int_equal(b->date, day(2026, 11, 21));
    l = line_by_ref(set, "T1");
    assert_string_equal(l->merchant_ref, "ORDER-1");
    assert_int_equal(l->fee_minor, 35);
    assert_int_equal(l->value_date, day(2026, 11, 20));
    assert_int_equal(l->settled_date, day(2026, 11, 21));
    assert_int_equal(line_by_ref(set, "T3")->amount_minor, -500);
    assert_int_equal(line_by_ref(set, "T7")->fee_minor, 53);
    b = batch_by_id(set, "opayo", "100002");
    assert_string_equal(b->currency, "JPY");
    assert_int_equal(b->gross_minor, 1000);
    assert_int_equal(b->fees_minor, 15); /* 0.20 JPY rounds to nothing */
    /* the trace masks the signature and never holds the password */
    trace = json_dumps(ctx.trace, 0);
    assert_contains(trace, "<signature>***</signature>");
    assert_null(strstr(trace, "sandbox-report-password"));
    free(trace);
    pb_settlement_set_free(set);

    /* the transaction list, two rows per page: every page read, T6 there but unsettled */
    set = pb_settlement_set_new();
    json_array_clear(ctx.trace);
    if (pb_settlement_opayo_fetch_transactions(c, &ctx, day(2026, 11, 20), day(2026, 11, 21), set,
                                               &err))
        fail_msg("list: %s", err.msg);
    dump_bad(set);
    assert_int_equal(pb_settlement_bad_count(set), 0);
    assert_int_equal(json_array_size(ctx.trace), 4);    /* 7 rows, 2 per page */
    assert_int_equal(pb_settlement_line_count(set), 6); /* T4 declined is not money */
    assert_int_equal(line_by_ref(set, "T6")->batch, PB_SETTLEMENT_NO_BATCH);
    assert_int_equal(batch_by_id(set, "opayo", "100001")->line_count, 4); /* across pages */
    pb_settlement_set_free(set);
    pbt_connection_free(c);

    /* a wrong password: 0010, permanent, and the message says what to check */
    c = report_connection(e.url, "wrong");
    set = pb_settlement_set_new();
    assert_int_equal(
        pb_settlement_opayo_fetch_batches(c, &ctx, day(2026, 11, 21), day(2026, 11, 21), set, &err),
        PB_ERR_PERMANENT);
    assert_contains(err.msg, "errorcode 0010");
    assert_contains(err.msg, "secrets.report_password");
    assert_contains(err.msg, "retrying cannot help");
    assert_int_equal(pb_settlement_batch_count(set), 0);
    pbt_connection_free(c);

    /* no report_url: a config error naming the key */
    c = report_connection(e.url, "x");
    json_object_del(c->settings, "report_url");
    assert_int_equal(
        pb_settlement_opayo_fetch_batches(c, &ctx, day(2026, 11, 21), day(2026, 11, 21), set, &err),
        PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.report_url");
    pbt_connection_free(c);

    /* the server gone: transient */
    pb_httpd_stop(e.httpd);
    e.httpd = NULL;
    c = report_connection(e.url, "sandbox-report-password");
    assert_int_equal(
        pb_settlement_opayo_fetch_batches(c, &ctx, day(2026, 11, 21), day(2026, 11, 21), set, &err),
        PB_ERR_TRANSIENT);
    pbt_connection_free(c);
    pb_settlement_set_free(set);
    json_decref(ctx.trace);
    emu_stop(&e);
}

static void test_opayo_report_emulator_refusals(void **state)
{
    struct emu e;
    struct pb_http_call call = {0};
    struct pb_err err = {0};
    char *xml = NULL, *form = NULL;
    (void)state;
    emu_start(&e);
    /* a tampered request: the signature no longer matches the text */
    assert_int_equal(pb__opayo_report_request("getBatchList", "sandbox", "sandbox-report",
                                              "sandbox-report-password",
                                              "<startdate>01/11/2026 00:00:00</startdate>"
                                              "<enddate>30/11/2026 23:59:59</enddate>",
                                              &xml, &form, &err),
                     PB_OK);
    char *p = strstr(form, "01%2F11");
    assert_non_null(p);
    p[1] = '2'; /* 02/11: the text changed after signing */
    call.method = "POST";
    call.url = e.url;
    call.body = form;
    call.body_len = strlen(form);
    assert_int_equal(pb_http_perform(e.http, &call, &err), PB_OK);
    assert_contains(call.response, "<errorcode>0010</errorcode>");
    pb_http_call_reset(&call);
    free(xml);
    free(form);
    /* an unknown command, correctly signed */
    assert_int_equal(pb__opayo_report_request("getEverything", "sandbox", "sandbox-report",
                                              "sandbox-report-password", NULL, &xml, &form, &err),
                     PB_OK);
    call.method = "POST";
    call.url = e.url;
    call.body = form;
    call.body_len = strlen(form);
    assert_int_equal(pb_http_perform(e.http, &call, &err), PB_OK);
    assert_contains(call.response, "<errorcode>0020</errorcode>");
    pb_http_call_reset(&call);
    free(xml);
    free(form);
    /* random anomalies: a count picks that many */
    json_t *reply = emu_post(&e, "/_sandbox/settle", "{\"missing\":1,\"wrong_fee\":2}");
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(reply, "anomalies"), "missing")), 1);
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(reply, "anomalies"), "wrong_fee")), 2);
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 5); /* 6 - 1 missing */
    json_decref(reply);
    emu_stop(&e);
}

/* ---- the watched directory ----------------------------------------------------------------- */

struct dir_ctx {
    struct pb_settlement_set *set;
    struct pb_settlement_csv_map *map;
    int calls;
};

static enum pb_rc read_one(void *arg, const char *name, const char *data, size_t len,
                           struct pb_err *err)
{
    struct dir_ctx *d = arg;
    d->calls++;
    return pb_settlement_parse_csv(d->set, d->map, name, data, len, err);
}

static void test_dir_reads_new_files_once(void **state)
{
    char dir[] = "/tmp/pb-settlement-dir-XXXXXX";
    struct dir_ctx d = {0};
    struct pb_settlement_dir_options opt = {.suffix = ".csv"};
    struct pb_err err = {0};
    size_t n = 0;
    char cmd[600];
    (void)state;

    pbt_tempdir(dir);
    d.set = pb_settlement_set_new();
    d.map = csv_map(CSV_MAP);
    pbt_write_file_in(dir, "a.csv",
               "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
               "B1,T1,O1,1.00,0,GBP,SALE,2026-11-20\n");
    pbt_write_file_in(dir, "b.csv",
               "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
               "B2,T2,O2,2.00,0,GBP,SALE,2026-11-20\n");
    pbt_write_file_in(dir, "notes.txt", "not a report");
    pbt_write_file_in(dir, "broken.csv", "Batch,Nope\nB9,1\n"); /* a header without the columns */

    assert_int_equal(pb_settlement_dir_read_new(dir, &opt, read_one, &d, &n, &err),
                     PB_ERR_INVALID); /* broken.csv's error, after the others were read */
    assert_contains(err.msg, "broken.csv");
    assert_int_equal(n, 2);
    assert_int_equal(d.calls, 3);
    assert_int_equal(pb_settlement_line_count(d.set), 2);

    /* again: nothing new but the broken file, which is offered until it is fixed */
    d.calls = 0;
    assert_int_equal(pb_settlement_dir_read_new(dir, &opt, read_one, &d, &n, &err), PB_ERR_INVALID);
    assert_int_equal(d.calls, 1);
    assert_int_equal(n, 0);

    /* a new file and a fixed one are read; a.csv rewritten (new size) is read again, and its
     * batch, already loaded, is a duplicate rather than double money */
    pbt_write_file_in(dir, "broken.csv", "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n");
    pbt_write_file_in(dir, "c.csv",
               "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
               "B3,T3,O3,3.00,0,GBP,SALE,2026-11-21\n");
    pbt_write_file_in(dir, "a.csv",
               "Batch,Transaction ID,Order,Amount,Fee,Currency,Type,Date\n"
               "B1,T1,O1,1.00,0,GBP,SALE,2026-11-20\n\n");
    d.calls = 0;
    assert_int_equal(pb_settlement_dir_read_new(dir, &opt, read_one, &d, &n, &err), PB_OK);
    assert_int_equal(n, 3);
    assert_int_equal(pb_settlement_line_count(d.set), 3);
    expect_bad(d.set, "a.csv", 2, "duplicate batch id B1");
    assert_int_equal(pb_settlement_dir_read_new(dir, &opt, read_one, &d, &n, &err), PB_OK);
    assert_int_equal(n, 0);

    pb_settlement_csv_map_free(d.map);
    pb_settlement_set_free(d.set);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_sftp_errors(void **state)
{
    struct pb_settlement_sftp_options opt = {.state_path = "/tmp/pb-sftp-test-state",
                                             .timeout_ms = 2000};
    struct pb_err err = {0};
    enum pb_rc rc;
    (void)state;
    assert_int_equal(
        pb_settlement_sftp_fetch_new("ftp://example/x/", &opt, read_one, NULL, NULL, &err),
        PB_ERR_CONFIG);
    assert_contains(err.msg, "sftp://host/path/");
    rc = pb_settlement_sftp_fetch_new("sftp://127.0.0.1:1/reports/", &opt, read_one, NULL, NULL,
                                      &err);
    if (pb_settlement_sftp_available())
        assert_int_equal(rc, PB_ERR_TRANSIENT); /* nothing listens on port 1 */
    else {
        assert_int_equal(rc, PB_ERR_CONFIG);
        assert_contains(err.msg, "no SFTP support");
    }
}

/* ---- PayTrace settlement through the connector and its emulator ------------------------------ */

static void paytrace_sale(struct pb_connection *c, struct pb_call_ctx *ctx, int64_t minor,
                          const char *invoice, char id[32])
{
    struct pb_err err = {0};
    json_t *reply = NULL;
    json_t *req =
        json_pack("{s:{s:I,s:s},s:{s:s,s:s,s:s},s:s}", "amount", "minor", (json_int_t)minor,
                  "currency", "USD", "credit_card", "number", "4111111111111111",
                  "expiration_month", "12", "expiration_year", "2039", "invoice_id", invoice);
    if (pb_paytrace_sale_keyed(c, ctx, req, &reply, &err))
        fail_msg("sale: %s", err.msg);
    snprintf(id, 32, "%lld",
             (long long)json_integer_value(json_object_get(reply, "transaction_id")));
    json_decref(req);
    json_decref(reply);
}

static void test_paytrace_fetch_against_emulator(void **state)
{
    struct pb_sandbox *sb = NULL;
    struct pb_err err = {0};
    struct pb_connection *c = calloc(1, sizeof *c);
    struct pb_http_client *http = NULL;
    struct pb_call_ctx ctx = {0};
    struct pb_settlement_set *set = pb_settlement_set_new();
    json_t *cfg = json_pack("{s:{s:i}}", "paytrace", "port", 0), *req, *reply = NULL;
    char base[64], id1[32], id2[32], url[128];
    int32_t today = (int32_t)(time(NULL) / 86400);
    const struct pb_settlement_batch *b;
    struct pb_http_call call = {0};
    (void)state;

    if (pb_sandbox_start(cfg, &sb, &err))
        fail_msg("sandbox: %s", err.msg);
    json_decref(cfg);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", pb_sandbox_port(sb, "paytrace"));
    c->magic = PB_CONNECTION_MAGIC;
    c->type = &pb_connector_paytrace;
    snprintf(c->name, sizeof c->name, "paytrace-settlement");
    c->settings = json_pack("{s:s}", "api_base", base);
    c->secrets = json_pack("{s:s,s:s,s:s}", "username", "sandbox-user", "password", "sandbox-pass",
                           "webhook_secret", "w");
    if (c->type->init(c, &err))
        fail_msg("init: %s", err.msg);
    assert_int_equal(pb_http_client_new(&http, &err), PB_OK);
    ctx.http = http;
    ctx.trace = json_array();
    ctx.retry_after_s = -1;

    paytrace_sale(c, &ctx, 1099, "ORDER-1", id1);
    paytrace_sale(c, &ctx, 2000, "ORDER-2", id2);
    req = json_pack("{s:s,s:s}", "transaction_id", id1, "amount", "5.00");
    assert_int_equal(pb_paytrace_refund(c, &ctx, req, &reply, &err), PB_OK);
    json_decref(req);
    json_decref(reply);
    snprintf(url, sizeof url, "%s/_sandbox/settle", base);
    call.method = "POST";
    call.url = url;
    assert_int_equal(pb_http_perform(http, &call, &err), PB_OK);
    pb_http_call_reset(&call);

    if (pb_settlement_paytrace_fetch(c, &ctx, 1, today - 1, today + 1, set, &err))
        fail_msg("fetch: %s", err.msg);
    dump_bad(set);
    assert_int_equal(pb_settlement_bad_count(set), 0);
    assert_int_equal(pb_settlement_batch_count(set), 1);
    b = batch_by_id(set, "paytrace", "1");
    assert_int_equal(b->line_count, 3);
    /* fees 2.9% + 0.30 per sale (the emulator's contract): 32 + 30 and 58 + 30 */
    assert_int_equal(b->gross_minor, 1099 + 2000 - 500);
    assert_int_equal(b->fees_minor, 62 + 88);
    assert_int_equal(b->net_minor, 2599 - 150);
    assert_int_equal(b->lines_gross_minor, b->gross_minor);
    assert_int_equal(line_by_ref(set, id1)->fee_minor, 62);
    assert_string_equal(line_by_ref(set, id2)->merchant_ref, "ORDER-2");

    json_decref(ctx.trace);
    pb_http_client_free(http);
    c->type->destroy(c);
    json_decref(c->settings);
    json_decref(c->secrets);
    free(c);
    pb_settlement_set_free(set);
    pb_sandbox_stop(sb);
}

/* ---- the connector slots, the emulators' report files, seeded anomalies -----------------------
 */

/* Every batch and line of `api` is in `file` (by batch id, and by gateway_ref and kind), with
 * the same currency, dates, amounts, fees and references, and nothing more. */
static void assert_same_settlement(const struct pb_settlement_set *api,
                                   const struct pb_settlement_set *file)
{
    dump_bad(file);
    assert_int_equal(pb_settlement_bad_count(file), 0);
    assert_int_equal(pb_settlement_batch_count(file), pb_settlement_batch_count(api));
    assert_int_equal(pb_settlement_line_count(file), pb_settlement_line_count(api));
    for (size_t i = 0; i < pb_settlement_batch_count(api); i++) {
        const struct pb_settlement_batch *a = pb_settlement_batch_at(api, i);
        const struct pb_settlement_batch *f = batch_by_id(file, a->gateway, a->batch_id);
        assert_string_equal(f->currency, a->currency);
        assert_int_equal(f->date, a->date);
        assert_int_equal(f->line_count, a->line_count);
        assert_int_equal(f->lines_gross_minor, a->lines_gross_minor);
        assert_int_equal(f->lines_fees_minor, a->lines_fees_minor);
        assert_int_equal(f->gross_minor, a->gross_minor); /* the API's stated totals */
        assert_int_equal(f->fees_minor, a->fees_minor);
        assert_int_equal(f->net_minor, a->net_minor);
    }
    for (size_t i = 0; i < pb_settlement_line_count(api); i++) {
        const struct pb_settlement_line *a = pb_settlement_line_at(api, i), *f = NULL;
        for (size_t k = 0; k < pb_settlement_line_count(file); k++) {
            const struct pb_settlement_line *c = pb_settlement_line_at(file, k);
            if (strcmp(c->gateway_ref, a->gateway_ref) == 0 && c->kind == a->kind &&
                strcmp(c->batch_id, a->batch_id) == 0)
                f = c;
        }
        if (!f)
            fail_msg("line %s (%s) of batch %s is not in the file", a->gateway_ref,
                     pb_settlement_kind_name((enum pb_settlement_kind)a->kind), a->batch_id);
        assert_int_equal(f->amount_minor, a->amount_minor);
        assert_int_equal(f->fee_minor, a->fee_minor);
        assert_string_equal(f->merchant_ref, a->merchant_ref);
        assert_string_equal(f->currency, a->currency);
        assert_int_equal(f->value_date, a->value_date);
        assert_int_equal(f->settled_date, a->settled_date);
    }
}

/* Read the new report files of `dir` with the emulators' column map for `gateway`. */
static void read_report_files(const char *dir, const char *gateway, struct pb_settlement_set *set,
                              size_t expect_files)
{
    struct dir_ctx d = {.set = set};
    struct pb_settlement_dir_options opt = {.suffix = ".csv"};
    struct pb_err err = {0};
    json_t *cfg = sbx_settlement_csv_map(gateway);
    size_t n = 0;
    if (pb_settlement_csv_map_new(cfg, &d.map, &err))
        fail_msg("map: %s", err.msg);
    json_decref(cfg);
    if (pb_settlement_dir_read_new(dir, &opt, read_one, &d, &n, &err))
        fail_msg("read %s: %s", dir, err.msg);
    assert_int_equal(n, expect_files);
    pb_settlement_csv_map_free(d.map);
}

/* Pi retrieve shapes with the sandbox extensions a settle reads: a Deferred released for less
 * than authorised (a partial capture), one never released, a voided Payment. */
static const char OPAYO_TRAFFIC[] =
    "[{\"transactionId\":\"T1\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":1000},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-1\","
    "\"createdAt\":\"2026-11-20T10:00:00Z\"},"
    "{\"transactionId\":\"T2\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":2000},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-2\","
    "\"createdAt\":\"2026-11-20T11:00:00Z\"},"
    "{\"transactionId\":\"T3\",\"transactionType\":\"Refund\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":500},\"currency\":\"GBP\",\"vendorTxCode\":\"REFUND-1\","
    "\"createdAt\":\"2026-11-20T12:00:00Z\"},"
    "{\"transactionId\":\"T5\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":1000},\"currency\":\"JPY\",\"vendorTxCode\":\"ORDER-5\","
    "\"createdAt\":\"2026-11-20T14:00:00Z\"},"
    "{\"transactionId\":\"T6\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":3000},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-6\","
    "\"createdAt\":\"2026-11-20T15:00:00Z\"},"
    "{\"transactionId\":\"T7\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":1500},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-7\","
    "\"createdAt\":\"2026-11-20T16:00:00Z\"},"
    "{\"transactionId\":\"D1\",\"transactionType\":\"Deferred\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":1000},\"releasedAmount\":800,\"currency\":\"GBP\","
    "\"vendorTxCode\":\"ORDER-D1\",\"createdAt\":\"2026-11-20T17:00:00Z\"},"
    "{\"transactionId\":\"D2\",\"transactionType\":\"Deferred\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":900},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-D2\","
    "\"createdAt\":\"2026-11-20T17:30:00Z\"},"
    "{\"transactionId\":\"V1\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
    "\"amount\":{\"totalAmount\":700},\"currency\":\"GBP\",\"vendorTxCode\":\"ORDER-V1\","
    "\"voided\":true,\"createdAt\":\"2026-11-20T18:00:00Z\"}]";

static void test_opayo_slot_files_chargebacks_partial_captures(void **state)
{
    char dir[] = "/tmp/pb-settlement-opayo-XXXXXX", body[4096];
    struct emu e;
    struct pb_connection *c;
    struct pb_call_ctx ctx = {.retry_after_s = -1};
    struct pb_settlement_set *api = pb_settlement_set_new(), *files = pb_settlement_set_new();
    struct pb_err err = {0};
    json_t *reply, *anomalies;
    const struct pb_settlement_batch *b;
    const struct pb_settlement_line *l;
    (void)state;

    pbt_tempdir(dir);
    assert_true(pb_connector_opayo.caps & PB_CAP_SETTLEMENT);
    assert_non_null(pb_connector_opayo.settlement);
    emu_start(&e);
    ctx.http = e.http;
    c = report_connection(e.url, "sandbox-report-password");

    /* day 1: T6 never paid, T7 charged 0.10 too much, D1 captured 8.00 of 10.00 */
    snprintf(body, sizeof body,
             "{\"date\":\"2026-11-21\",\"missing\":[\"T6\"],\"wrong_fee\":[\"T7\"],"
             "\"file_dir\":\"%s\",\"transactions\":%s}",
             dir, OPAYO_TRAFFIC);
    reply = emu_post(&e, "/_sandbox/settle", body);
    assert_non_null(reply);
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 6);
    assert_int_equal(json_array_size(json_object_get(reply, "files")), 2);
    anomalies = json_object_get(reply, "anomalies");
    assert_string_equal(json_string_value(json_array_get(json_object_get(anomalies, "missing"), 0)),
                        "T6");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(anomalies, "partial_captures"), 0)), "D1");
    assert_int_equal(json_array_size(json_object_get(anomalies, "chargebacks")), 0);
    /* the reply's totals: gross - fees = net */
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(reply, "batches"), 0), "net")),
                        "46.30");
    json_decref(reply);

    /* through the connector table, as the reconciliation run calls it */
    if (c->type->settlement(c, &ctx, day(2026, 11, 21), day(2026, 11, 21), api, &err))
        fail_msg("settlement: %s", err.msg);
    dump_bad(api);
    assert_int_equal(pb_settlement_bad_count(api), 0);
    assert_int_equal(pb_settlement_batch_count(api), 2);
    b = batch_by_id(api, "opayo", "100001");
    assert_int_equal(b->line_count, 5); /* T1 T2 T3 T7 D1; T6 missing, D2 unreleased, V1 voided */
    assert_int_equal(b->gross_minor, 1000 + 2000 - 500 + 1500 + 800);
    /* 1.5% + 0.20 per sale: T1 35, T2 50, T7 23 + 20 + 10 (wrong_fee), D1 12 + 20 on 8.00 */
    assert_int_equal(b->fees_minor, 35 + 50 + 53 + 32);
    assert_int_equal(b->net_minor, 4800 - 170);
    l = line_by_ref(api, "D1");
    assert_int_equal(l->kind, PB_SETTLEMENT_SALE);
    assert_int_equal(l->amount_minor, 800); /* the capture, not the 10.00 authorised */
    assert_int_equal(l->fee_minor, 32);
    /* wrong_fee: 1.5% of 15.00 + 0.20 = 0.43 by contract, 0.53 charged: 0.10 more */
    assert_int_equal(line_by_ref(api, "T7")->fee_minor - ((1500 * 150 + 5000) / 10000 + 20), 10);
    for (size_t i = 0; i < pb_settlement_line_count(api); i++) {
        const char *ref = pb_settlement_line_at(api, i)->gateway_ref;
        assert_true(strcmp(ref, "T6") && strcmp(ref, "D2") && strcmp(ref, "V1"));
    }
    assert_int_equal(batch_by_id(api, "opayo", "100002")->fees_minor, 15);

    /* the report files read into the same batches and lines */
    read_report_files(dir, "opayo", files, 2);
    assert_same_settlement(api, files);
    pb_settlement_set_free(api);
    pb_settlement_set_free(files);

    /* day 2: a chargeback of T1 (settled yesterday): the whole sale back, plus 15.00 */
    snprintf(body, sizeof body,
             "{\"date\":\"2026-11-22\",\"chargebacks\":[\"T1\",\"T6\",\"T1\"],\"file_dir\":\"%s\","
             "\"transactions\":%s}",
             dir, OPAYO_TRAFFIC);
    reply = emu_post(&e, "/_sandbox/settle", body);
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 0);
    anomalies = json_object_get(reply, "anomalies");
    /* T6 was never settled, and T1 is charged back once */
    assert_int_equal(json_array_size(json_object_get(anomalies, "chargebacks")), 1);
    json_decref(reply);
    api = pb_settlement_set_new();
    files = pb_settlement_set_new();
    if (c->type->settlement(c, &ctx, day(2026, 11, 22), day(2026, 11, 22), api, &err))
        fail_msg("settlement: %s", err.msg);
    assert_int_equal(pb_settlement_bad_count(api), 0);
    b = batch_by_id(api, "opayo", "100003");
    assert_int_equal(b->line_count, 1);
    assert_int_equal(b->gross_minor, -1000);
    assert_int_equal(b->fees_minor, 1500);
    assert_int_equal(b->net_minor, -2500);
    l = line_by_ref(api, "T1");
    assert_int_equal(l->kind, PB_SETTLEMENT_CHARGEBACK);
    assert_string_equal(l->merchant_ref, "ORDER-1");
    read_report_files(dir, "opayo", files, 1); /* only the new file */
    assert_same_settlement(api, files);

    /* a file_dir that is not a directory is refused before anything settles */
    {
        static const char bad[] = "{\"file_dir\":\"relative/dir\"}";
        struct pb_http_call call = {0};
        char url[160];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/_sandbox/settle", e.port);
        call.method = "POST";
        call.url = url;
        call.body = bad;
        call.body_len = strlen(bad);
        pb_http_perform(e.http, &call, &err); /* a 400 is an error to the client */
        assert_int_equal(call.status, 400);
        assert_contains(call.response, "file_dir must be an absolute directory path");
        pb_http_call_reset(&call);
    }

    pb_settlement_set_free(api);
    pb_settlement_set_free(files);
    pbt_connection_free(c);
    emu_stop(&e);
    pbt_remove_tree(dir);
}

/* The same traffic and the same settle request seed the same anomalies. */
static void test_opayo_anomalies_deterministic(void **state)
{
    static const char req[] = "{\"date\":\"2026-11-21\",\"missing\":2,\"wrong_fee\":2,"
                              "\"chargebacks\":1,\"seed\":42}";
    struct emu a, b;
    json_t *ra, *rb, *wrong;
    char *ta, *tb;
    size_t i;
    json_t *v;
    (void)state;

    emu_start(&a);
    emu_start(&b);
    ra = emu_post(&a, "/_sandbox/settle", req);
    rb = emu_post(&b, "/_sandbox/settle", req);
    ta = json_dumps(ra, JSON_SORT_KEYS | JSON_COMPACT);
    tb = json_dumps(rb, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(ta, tb);
    assert_int_equal(json_array_size(json_object_get(json_object_get(ra, "anomalies"), "missing")),
                     2);
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(ra, "anomalies"), "chargebacks")), 1);
    /* a wrong fee is only ever seeded on a sale (never the refund T3), never on a missing one */
    wrong = json_object_get(json_object_get(ra, "anomalies"), "wrong_fee");
    assert_int_equal(json_array_size(wrong), 2);
    json_array_foreach(wrong, i, v)
    {
        assert_string_not_equal(json_string_value(v), "T3");
        json_t *m = json_object_get(json_object_get(ra, "anomalies"), "missing");
        for (size_t k = 0; k < json_array_size(m); k++)
            assert_string_not_equal(json_string_value(v), json_string_value(json_array_get(m, k)));
    }
    free(ta);
    free(tb);
    json_decref(ra);
    json_decref(rb);
    emu_stop(&a);
    emu_stop(&b);
}

static void test_paytrace_slot_anomalies_and_files(void **state)
{
    char dir[] = "/tmp/pb-settlement-paytrace-XXXXXX", base[64], url[128], body[512], id1[32],
         id2[32], id3[32], id4[32], id5[32], iso[16];
    struct pb_sandbox *sb = NULL;
    struct pb_err err = {0};
    struct pb_connection *c = calloc(1, sizeof *c);
    struct pb_http_client *http = NULL;
    struct pb_call_ctx ctx = {.retry_after_s = -1};
    struct pb_settlement_set *exported = pb_settlement_set_new(),
                             *by_range = pb_settlement_set_new(), *files = pb_settlement_set_new();
    json_t *cfg = json_pack("{s:{s:i}}", "paytrace", "port", 0), *req, *reply = NULL;
    int32_t today = (int32_t)(time(NULL) / 86400);
    const struct pb_settlement_batch *b;
    struct pb_http_call call = {0};
    (void)state;

    pbt_tempdir(dir);
    assert_true(pb_connector_paytrace.caps & PB_CAP_SETTLEMENT);
    if (pb_sandbox_start(cfg, &sb, &err))
        fail_msg("sandbox: %s", err.msg);
    json_decref(cfg);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", pb_sandbox_port(sb, "paytrace"));
    c->magic = PB_CONNECTION_MAGIC;
    c->type = &pb_connector_paytrace;
    snprintf(c->name, sizeof c->name, "paytrace-settlement");
    c->settings = json_pack("{s:s,s:s}", "api_base", base, "settlement_source", "settled_export");
    c->secrets = json_pack("{s:s,s:s,s:s}", "username", "sandbox-user", "password", "sandbox-pass",
                           "webhook_secret", "w");
    if (c->type->init(c, &err)) /* settlement_source is a known setting */
        fail_msg("init: %s", err.msg);
    assert_int_equal(pb_http_client_new(&http, &err), PB_OK);
    ctx.http = http;

    paytrace_sale(c, &ctx, 1099, "ORDER-1", id1);
    paytrace_sale(c, &ctx, 2000, "ORDER-2", id2);
    paytrace_sale(c, &ctx, 3000, "ORDER-3", id3);
    paytrace_sale(c, &ctx, 500, "ORDER-4", id4);
    paytrace_sale(c, &ctx, 700, "ORDER-5", id5);
    req = json_pack("{s:s,s:s}", "transaction_id", id1, "amount", "5.00");
    assert_int_equal(pb_paytrace_refund(c, &ctx, req, &reply, &err), PB_OK);
    json_decref(req);
    json_decref(reply);
    req = json_pack("{s:s}", "transaction_id", id5);
    assert_int_equal(pb_paytrace_void(c, &ctx, req, &reply, &err), PB_OK);
    json_decref(req);
    json_decref(reply);

    /* settle today: id3 never paid, id2 charged 0.25 too much, a report file written */
    pb_settlement_date_format(today, iso, sizeof iso);
    snprintf(url, sizeof url, "%s/_sandbox/settle", base);
    snprintf(body, sizeof body,
             "{\"date\":\"%s\",\"missing\":[%s],\"wrong_fee\":[\"%s\"],\"fee_delta\":\"0.25\","
             "\"file_dir\":\"%s\"}",
             iso, id3, id2, dir);
    call.method = "POST";
    call.url = url;
    call.body = body;
    call.body_len = strlen(body);
    call.headers[0] = "Content-Type: application/json";
    assert_int_equal(pb_http_perform(http, &call, &err), PB_OK);
    assert_int_equal(call.status, 200);
    reply = json_loads(call.response, 0, NULL);
    pb_http_call_reset(&call);
    assert_int_equal(json_integer_value(json_object_get(reply, "settled")), 4);
    assert_int_equal(json_integer_value(json_array_get(
                         json_object_get(json_object_get(reply, "anomalies"), "missing"), 0)),
                     strtoll(id3, NULL, 10));
    assert_int_equal(json_array_size(json_object_get(reply, "files")), 1);
    json_decref(reply);

    /* the settled export, through the connector table: stated totals, and lines that agree */
    if (c->type->settlement(c, &ctx, today, today, exported, &err))
        fail_msg("settled export: %s", err.msg);
    dump_bad(exported);
    assert_int_equal(pb_settlement_bad_count(exported), 0);
    assert_int_equal(pb_settlement_batch_count(exported), 1);
    b = batch_by_id(exported, "paytrace", "1");
    assert_true(b->flags & PB_SETTLEMENT_BATCH_DECLARED);
    assert_int_equal(b->line_count, 4); /* id1, id2, id4 and the refund; id3 missing, id5 void */
    assert_int_equal(b->gross_minor, 1099 + 2000 + 500 - 500);
    /* 2.9% + 0.30: id1 32 + 30, id2 58 + 30 + 25 (wrong_fee), id4 15 + 30, the refund none */
    assert_int_equal(b->fees_minor, 62 + 113 + 45);
    assert_int_equal(b->net_minor, 3099 - 220);
    assert_int_equal(b->lines_fees_minor, b->fees_minor);
    assert_int_equal(b->date, today);
    assert_int_equal(line_by_ref(exported, id2)->fee_minor, 113);
    for (size_t i = 0; i < pb_settlement_line_count(exported); i++) {
        const char *ref = pb_settlement_line_at(exported, i)->gateway_ref;
        assert_true(strcmp(ref, id3) != 0 && strcmp(ref, id5) != 0);
    }

    /* export/by_date_range: the same lines, batches summed from them */
    json_object_set_new(c->settings, "settlement_source", json_string("by_date_range"));
    if (c->type->settlement(c, &ctx, today, today, by_range, &err))
        fail_msg("by_date_range: %s", err.msg);
    dump_bad(by_range);
    assert_int_equal(pb_settlement_bad_count(by_range), 0);
    b = batch_by_id(by_range, "paytrace", "1");
    assert_false(b->flags & PB_SETTLEMENT_BATCH_DECLARED);
    assert_int_equal(b->line_count, 4);
    assert_int_equal(b->gross_minor, 3099);
    assert_int_equal(b->fees_minor, 220);
    assert_int_equal(line_by_ref(by_range, id4)->settled_date, today);
    /* nothing settled on another day */
    pb_settlement_set_free(by_range);
    by_range = pb_settlement_set_new();
    assert_int_equal(c->type->settlement(c, &ctx, today + 2, today + 3, by_range, &err), PB_OK);
    assert_int_equal(pb_settlement_line_count(by_range), 0);

    /* the report file reads into the same batch and lines as the settled export */
    read_report_files(dir, "paytrace", files, 1);
    assert_same_settlement(exported, files);

    /* an unknown source is a config error naming the setting */
    json_object_set_new(c->settings, "settlement_source", json_string("batches"));
    assert_int_equal(c->type->settlement(c, &ctx, today, today, by_range, &err), PB_ERR_CONFIG);
    assert_contains(err.msg, "settings.settlement_source");

    pb_http_client_free(http);
    c->type->destroy(c);
    json_decref(c->settings);
    json_decref(c->secrets);
    free(c);
    pb_settlement_set_free(exported);
    pb_settlement_set_free(by_range);
    pb_settlement_set_free(files);
    pb_sandbox_stop(sb);
    pbt_remove_tree(dir);
}

/* Bad data in the emulators' report layout: each class reported with its line and reason,
 * every good line around it still loaded. */
static void test_report_file_bad_data(void **state)
{
    static const char day1[] =
        "Batch,Batch Date,Transaction ID,Merchant Ref,Type,Amount,Fee,Currency,Transaction Date\r\n"
        "100001,2026-11-21,G1,ORDER-1,SALE,10.00,0.35,GBP,2026-11-20\r\n"   /* 2 ok */
        "100001,2026-11-21,G2,ORDER-2,SALE,ten,0.35,GBP,2026-11-20\r\n"     /* 3 not a number */
        "100001,2026-11-21,G3,ORDER-3,SALE,1.00,0.20,GBX,2026-11-20\r\n"    /* 4 currency */
        "100001,2026-11-21,G4,ORDER-4,SALE,1.00,0.20,GBP\r\n"               /* 5 8 columns */
        "100001,2026-11-21,G5,\"ORDER,5\",REFUND,2.00,0,GBP,2026-11-20\r\n" /* 6 ok */
        "100002,2026-11-21,G6,ORDER-6,SALE,1000,15,JPY,2026-11-20\r\n"      /* 7 ok */
        "100001,2026-11-21,G7,\"ORDER-7,1.00,0.20,GBP,2026-11-20\r\n";      /* 8 truncated */
    static const char day2[] =
        "Batch,Batch Date,Transaction ID,Merchant Ref,Type,Amount,Fee,Currency,Transaction Date\r\n"
        "100003,2026-11-22,G8,ORDER-8,SALE,3.00,0.25,GBP,2026-11-21\r\n"         /* 2 ok */
        "100002,2026-11-21,G6,ORDER-6,SALE,1000,15,JPY,2026-11-20\r\n"           /* 3 duplicate */
        "100003,2026-11-22,G9,ORDER-9,CHARGEBACK,3.00,15.00,GBP,2026-11-22\r\n"; /* 4 ok */
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_csv_map *map = NULL;
    struct pb_err err = {0};
    json_t *cfg = sbx_settlement_csv_map("opayo");
    const struct pb_settlement_batch *b;
    (void)state;

    assert_int_equal(pb_settlement_csv_map_new(cfg, &map, &err), PB_OK);
    json_decref(cfg);
    parse_csv_ok(set, map, "day1.csv", day1);
    parse_csv_ok(set, map, "day2.csv", day2);
    expect_bad(set, "day1.csv", 3, "Amount \"ten\" is not a number");
    expect_bad(set, "day1.csv", 4, "unknown currency \"GBX\"");
    expect_bad(set, "day1.csv", 5, "expected 9 columns (as the header has), found 8");
    expect_bad(set, "day1.csv", 8, "truncated: the data ends inside the quoted field of column 4");
    expect_bad(set, "day2.csv", 3, "duplicate batch id 100002");
    assert_int_equal(pb_settlement_bad_count(set), 5);
    assert_int_equal(pb_settlement_line_count(set), 5); /* G1 G5 G6 G8 G9 */
    b = batch_by_id(set, "opayo", "100001");
    assert_int_equal(b->line_count, 2);
    assert_int_equal(b->gross_minor, 1000 - 200);
    assert_int_equal(b->fees_minor, 35);
    assert_int_equal(b->date, day(2026, 11, 21));
    assert_string_equal(line_by_ref(set, "G5")->merchant_ref, "ORDER,5");
    b = batch_by_id(set, "opayo", "100002");
    assert_int_equal(b->line_count, 1); /* not doubled by day2 */
    assert_int_equal(b->gross_minor, 1000);
    b = batch_by_id(set, "opayo", "100003");
    assert_int_equal(b->gross_minor, 300 - 300);
    assert_int_equal(b->fees_minor, 25 + 1500);
    assert_int_equal(b->net_minor, -1525);
    assert_int_equal(line_by_ref(set, "G9")->kind, PB_SETTLEMENT_CHARGEBACK);
    pb_settlement_csv_map_free(map);
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
        cmocka_unit_test(test_paytrace_fetch_against_emulator),
        cmocka_unit_test(test_dir_reads_new_files_once),
        cmocka_unit_test(test_sftp_errors),
        cmocka_unit_test(test_opayo_report_signature),
        cmocka_unit_test(test_opayo_report_against_emulator),
        cmocka_unit_test(test_opayo_report_emulator_refusals),
        cmocka_unit_test(test_opayo_slot_files_chargebacks_partial_captures),
        cmocka_unit_test(test_opayo_anomalies_deterministic),
        cmocka_unit_test(test_paytrace_slot_anomalies_and_files),
        cmocka_unit_test(test_report_file_bad_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
