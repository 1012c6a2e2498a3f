/*
 * tests/unit/test_money.c: the ISO 4217 table, exact decimal parsing and
 * formatting, checked arithmetic and FX conversion (core/money.c).
 *
 * The currency table is checked against an independent copy written out
 * below; because lookup is a binary search, a row out of order in money.c
 * makes some lookup here fail. Expected conversion results were computed
 * with Python's decimal module (ROUND_HALF_EVEN, 100 digits of precision).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/money.h"

/* ---- helpers ------------------------------------------------------------------ */

static void expect_parse(const char *text, const char *currency, int64_t want)
{
    struct pb_err err = {0};
    int64_t got = 0x5a5a;
    enum pb_rc rc = pb_money_parse_decimal(text, currency, &got, &err);
    if (rc != PB_OK)
        fail_msg("parse \"%s\" %s failed: %s", text, currency, err.msg);
    if (got != want)
        fail_msg("parse \"%s\" %s gave %lld, want %lld", text, currency, (long long)got,
                 (long long)want);
}

/* Expect `rc`, and *out left alone, and (when non-NULL) `fragment` in the message. */
static void expect_parse_error(const char *text, const char *currency, enum pb_rc want_rc,
                               const char *fragment)
{
    struct pb_err err = {0};
    int64_t got = 0x5a5a;
    enum pb_rc rc = pb_money_parse_decimal(text, currency, &got, &err);
    if (rc != want_rc)
        fail_msg("parse \"%s\" %s: rc %d, want %d (%s)", text ? text : "(null)", currency, rc,
                 want_rc, err.msg);
    assert_int_equal(err.rc, want_rc);
    assert_int_equal(got, 0x5a5a);
    assert_true(err.msg[0] != '\0');
    if (fragment && !strstr(err.msg, fragment))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, fragment);
}

static void expect_format(int64_t minor, const char *currency, const char *want)
{
    char buf[PB_MONEY_DECIMAL_MAX];
    struct pb_err err = {0};
    if (pb_money_format_decimal(minor, currency, buf, sizeof(buf), &err) != PB_OK)
        fail_msg("format %lld %s failed: %s", (long long)minor, currency, err.msg);
    assert_string_equal(buf, want);
}

static void expect_convert(int64_t minor, const char *from, const char *to, const char *rate,
                           int64_t want)
{
    struct pb_err err = {0};
    int64_t got = 0x5a5a;
    if (pb_money_convert(minor, from, to, rate, &got, &err) != PB_OK)
        fail_msg("convert %lld %s->%s @%s failed: %s", (long long)minor, from, to, rate, err.msg);
    if (got != want)
        fail_msg("convert %lld %s->%s @%s gave %lld, want %lld", (long long)minor, from, to, rate,
                 (long long)got, (long long)want);
}

static void expect_convert_error(int64_t minor, const char *from, const char *to,
                                 const char *rate, enum pb_rc want_rc)
{
    struct pb_err err = {0};
    int64_t got = 0x5a5a;
    enum pb_rc rc = pb_money_convert(minor, from, to, rate, &got, &err);
    if (rc != want_rc)
        fail_msg("convert %lld %s->%s @%s: rc %d, want %d (%s)", (long long)minor, from, to,
                 rate ? rate : "(null)", rc, want_rc, err.msg);
    assert_int_equal(got, 0x5a5a);
    assert_true(err.msg[0] != '\0');
}

/* ---- the table ------------------------------------------------------------------ */

/* Independent copy: code and exponent, in no particular order. */
static const char *const expected_table =
    "AED2 AFN2 ALL2 AMD2 ANG2 AOA2 ARS2 AUD2 AWG2 AZN2 BAM2 BBD2 BDT2 BGN2 BHD3 BIF0 BMD2 "
    "BND2 BOB2 BOV2 BRL2 BSD2 BTN2 BWP2 BYN2 BZD2 CAD2 CDF2 CHE2 CHF2 CHW2 CLF4 CLP0 CNY2 "
    "COP2 COU2 CRC2 CUC2 CUP2 CVE2 CZK2 DJF0 DKK2 DOP2 DZD2 EGP2 ERN2 ETB2 EUR2 FJD2 FKP2 "
    "GBP2 GEL2 GHS2 GIP2 GMD2 GNF0 GTQ2 GYD2 HKD2 HNL2 HRK2 HTG2 HUF2 IDR2 ILS2 INR2 IQD3 "
    "IRR2 ISK0 JMD2 JOD3 JPY0 KES2 KGS2 KHR2 KMF0 KPW2 KRW0 KWD3 KYD2 KZT2 LAK2 LBP2 LKR2 "
    "LRD2 LSL2 LYD3 MAD2 MDL2 MGA2 MKD2 MMK2 MNT2 MOP2 MRU2 MUR2 MVR2 MWK2 MXN2 MXV2 MYR2 "
    "MZN2 NAD2 NGN2 NIO2 NOK2 NPR2 NZD2 OMR3 PAB2 PEN2 PGK2 PHP2 PKR2 PLN2 PYG0 QAR2 RON2 "
    "RSD2 RUB2 RWF0 SAR2 SBD2 SCR2 SDG2 SEK2 SGD2 SHP2 SLE2 SLL2 SOS2 SRD2 SSP2 STN2 SVC2 "
    "SYP2 SZL2 THB2 TJS2 TMT2 TND3 TOP2 TRY2 TTD2 TWD2 TZS2 UAH2 UGX0 USD2 USN2 UYI0 UYU2 "
    "UYW4 UZS2 VED2 VES2 VND0 VUV0 WST2 XAF0 XCD2 XCG2 XOF0 XPF0 YER2 ZAR2 ZMW2 ZWG2 ZWL2";

static void test_table_matches_independent_copy(void **state)
{
    (void)state;
    size_t n = 0;
    for (const char *p = expected_table; *p; p += 5) {
        char code[4] = {p[0], p[1], p[2], '\0'};
        int want = p[3] - '0';
        if (pb_currency_exponent(code) != want)
            fail_msg("%s: exponent %d, want %d", code, pb_currency_exponent(code), want);
        assert_true(pb_currency_valid(code));
        n++;
        if (p[4] == '\0')
            break;
    }
    assert_int_equal(n, 170);
}

static void test_exponents_by_class(void **state)
{
    (void)state;
    const char *zero[] = {"JPY", "KRW", "ISK", "CLP", "VND", "XAF", "XOF", "XPF", "PYG", "UGX"};
    const char *three[] = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"};
    for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++)
        assert_int_equal(pb_currency_exponent(zero[i]), 0);
    for (size_t i = 0; i < sizeof(three) / sizeof(three[0]); i++)
        assert_int_equal(pb_currency_exponent(three[i]), 3);
    assert_int_equal(pb_currency_exponent("CLF"), 4);
    assert_int_equal(pb_currency_exponent("UYW"), 4);
    assert_int_equal(pb_currency_exponent("GBP"), 2);
    assert_int_equal(pb_currency_exponent("USD"), 2);
    assert_int_equal(pb_currency_exponent("EUR"), 2);
}

static void test_invalid_codes(void **state)
{
    (void)state;
    const char *bad[] = {"gbp", "Gbp", "GB", "GBPX", "", "G1P", "GB ", " GB", "XAU", "XXX",
                         "XTS", "XDR", "ABC", "ZZZ", "AAA", "ZZZZ", "\xc3\x84UR"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (pb_currency_exponent(bad[i]) != -1)
            fail_msg("\"%s\" should be unknown", bad[i]);
        assert_false(pb_currency_valid(bad[i]));
    }
    assert_int_equal(pb_currency_exponent(NULL), -1);
    assert_false(pb_currency_valid(NULL));
}

/* ---- parsing --------------------------------------------------------------------- */

static void test_parse_two_decimals(void **state)
{
    (void)state;
    expect_parse("10.99", "GBP", 1099);
    expect_parse("-5", "GBP", -500);
    expect_parse("1.5", "GBP", 150);
    expect_parse("0", "GBP", 0);
    expect_parse("-0", "GBP", 0);
    expect_parse("0.01", "EUR", 1);
    expect_parse("-0.05", "USD", -5);
    expect_parse("1.230", "GBP", 123);       /* trailing zero beyond the exponent */
    expect_parse("1.2300000000", "GBP", 123);
    expect_parse("007.50", "GBP", 750);       /* leading zeros are harmless */
    expect_parse("000000000000000000000000000001.00", "USD", 100);
    expect_parse("123456789.12", "USD", 12345678912);
}

static void test_parse_zero_three_four_decimals(void **state)
{
    (void)state;
    expect_parse("1000", "JPY", 1000);
    expect_parse("1000.0", "JPY", 1000);
    expect_parse("-7", "KRW", -7);
    expect_parse("0.123", "BHD", 123);
    expect_parse("1", "KWD", 1000);
    expect_parse("1.5", "OMR", 1500);
    expect_parse("-2.001", "TND", -2001);
    expect_parse("0.0001", "CLF", 1);
    expect_parse("12.3456", "UYW", 123456);
    expect_parse_error("1.5", "JPY", PB_ERR_INVALID, "JPY has no minor unit");
    expect_parse_error("0.1234", "BHD", PB_ERR_INVALID, "BHD allows 3");
    expect_parse_error("0.00001", "CLF", PB_ERR_INVALID, "CLF allows 4");
}

static void test_parse_too_many_places_message(void **state)
{
    (void)state;
    struct pb_err err = {0};
    int64_t v;
    assert_int_equal(pb_money_parse_decimal("1.234", "GBP", &v, &err), PB_ERR_INVALID);
    assert_string_equal(err.msg, "amount \"1.234\" has 3 decimal places but GBP allows 2");
    assert_int_equal(pb_money_parse_decimal("1.2340", "GBP", &v, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "3 significant decimal places"));
    assert_int_equal(pb_money_parse_decimal("1.001", "GBP", &v, &err), PB_ERR_INVALID);
}

static void test_parse_malformed(void **state)
{
    (void)state;
    expect_parse_error("", "GBP", PB_ERR_INVALID, "empty");
    expect_parse_error(NULL, "GBP", PB_ERR_INVALID, "missing");
    expect_parse_error("1e3", "GBP", PB_ERR_INVALID, "exponent");
    expect_parse_error("1.5E2", "GBP", PB_ERR_INVALID, "exponent");
    expect_parse_error("+5", "GBP", PB_ERR_INVALID, "'+'");
    expect_parse_error(".5", "GBP", PB_ERR_INVALID, "before the decimal point");
    expect_parse_error("-.5", "GBP", PB_ERR_INVALID, "before the decimal point");
    expect_parse_error("5.", "GBP", PB_ERR_INVALID, "after the decimal point");
    expect_parse_error("-", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("--5", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error(" 5", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("5 ", "GBP", PB_ERR_INVALID, "offset 1");
    expect_parse_error("1.2.3", "GBP", PB_ERR_INVALID, "offset 3");
    expect_parse_error("abc", "GBP", PB_ERR_INVALID, "'a'");
    expect_parse_error("1,000.00", "GBP", PB_ERR_INVALID, "','");
    expect_parse_error("0x10", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("NaN", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("Infinity", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("10.99 GBP", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("5.x", "GBP", PB_ERR_INVALID, NULL);
    expect_parse_error("1\n", "GBP", PB_ERR_INVALID, "0x0a");
    expect_parse_error("\xd9\xa1", "GBP", PB_ERR_INVALID, NULL); /* ARABIC-INDIC DIGIT ONE */
}

static void test_parse_hostile_text_is_not_echoed_raw(void **state)
{
    (void)state;
    struct pb_err err = {0};
    int64_t v;
    char long_text[400];
    memset(long_text, '9', sizeof(long_text) - 2);
    long_text[sizeof(long_text) - 2] = 'x';
    long_text[sizeof(long_text) - 1] = '\0';
    assert_int_equal(pb_money_parse_decimal(long_text, "GBP", &v, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "...")); /* truncated quote */
    assert_int_equal(pb_money_parse_decimal("1\"}\x01", "GBP", &v, &err), PB_ERR_INVALID);
    assert_null(strchr(err.msg, '\x01'));
    assert_null(strstr(err.msg, "\"}"));
}

static void test_parse_overflow(void **state)
{
    (void)state;
    expect_parse("92233720368547758.07", "GBP", INT64_MAX);
    expect_parse_error("92233720368547758.08", "GBP", PB_ERR_RANGE, "out of range");
    expect_parse("-92233720368547758.08", "GBP", INT64_MIN);
    expect_parse_error("-92233720368547758.09", "GBP", PB_ERR_RANGE, NULL);
    expect_parse("9223372036854775807", "JPY", INT64_MAX);
    expect_parse_error("9223372036854775808", "JPY", PB_ERR_RANGE, "9223372036854775807");
    expect_parse("-9223372036854775808", "JPY", INT64_MIN);
    expect_parse_error("-9223372036854775809", "JPY", PB_ERR_RANGE, NULL);
    expect_parse_error("18446744073709551616", "JPY", PB_ERR_RANGE, NULL); /* 2^64 */
    expect_parse_error("99999999999999999999999999999", "USD", PB_ERR_RANGE, NULL);
    expect_parse_error("922337203685477.5808", "CLF", PB_ERR_RANGE, NULL);
    expect_parse("922337203685477.5807", "CLF", INT64_MAX);
    /* A value that fits as major units but not after scaling. */
    expect_parse_error("922337203685477581", "GBP", PB_ERR_RANGE, NULL);
}

static void test_parse_unknown_currency(void **state)
{
    (void)state;
    expect_parse_error("1.00", "ABC", PB_ERR_CURRENCY, "unknown currency code \"ABC\"");
    expect_parse_error("1.00", "usd", PB_ERR_CURRENCY, "three upper-case letters");
    expect_parse_error("1.00", "XAU", PB_ERR_CURRENCY, NULL);
    expect_parse_error("1.00", NULL, PB_ERR_CURRENCY, NULL);
    expect_parse_error("1.00", "", PB_ERR_CURRENCY, NULL);
}

/* ---- formatting ------------------------------------------------------------------ */

static void test_format(void **state)
{
    (void)state;
    expect_format(1099, "GBP", "10.99");
    expect_format(-5, "GBP", "-0.05");
    expect_format(0, "GBP", "0.00");
    expect_format(100, "USD", "1.00");
    expect_format(-100, "USD", "-1.00");
    expect_format(1000, "JPY", "1000");
    expect_format(-1000, "JPY", "-1000");
    expect_format(0, "JPY", "0");
    expect_format(1000, "BHD", "1.000");
    expect_format(-1, "BHD", "-0.001");
    expect_format(1, "CLF", "0.0001");
    expect_format(INT64_MAX, "GBP", "92233720368547758.07");
    expect_format(INT64_MIN, "GBP", "-92233720368547758.08");
    expect_format(INT64_MIN, "JPY", "-9223372036854775808");
    expect_format(INT64_MIN, "CLF", "-922337203685477.5808");
    expect_format(INT64_MIN + 1, "KWD", "-9223372036854775.807");
}

static void test_format_buffer_and_currency_errors(void **state)
{
    (void)state;
    char buf[PB_MONEY_DECIMAL_MAX];
    struct pb_err err = {0};
    assert_int_equal(pb_money_format_decimal(1099, "GBP", buf, 5, &err), PB_ERR_TOOBIG);
    assert_int_equal(pb_money_format_decimal(1099, "GBP", buf, 6, &err), PB_OK); /* exact fit */
    assert_string_equal(buf, "10.99");
    assert_int_equal(pb_money_format_decimal(1099, "GBP", NULL, 0, &err), PB_ERR_TOOBIG);
    assert_int_equal(pb_money_format_decimal(1099, "QQQ", buf, sizeof(buf), &err),
                     PB_ERR_CURRENCY);
    assert_int_equal(pb_money_format_decimal(1, "gbp", buf, sizeof(buf), NULL), PB_ERR_CURRENCY);
}

static void test_format_parse_round_trip(void **state)
{
    (void)state;
    const char *codes[] = {"JPY", "GBP", "BHD", "CLF"};
    const int64_t values[] = {0,         1,          -1,        9,         10,
                              99,        100,        101,       -101,      123456789,
                              -98765432, INT64_MAX,  INT64_MIN, INT64_MAX - 1,
                              INT64_MIN + 1, 1000000000000000000LL, -999999999999999999LL};
    for (size_t c = 0; c < 4; c++)
        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
            char buf[PB_MONEY_DECIMAL_MAX];
            int64_t back = 0;
            assert_int_equal(pb_money_format_decimal(values[i], codes[c], buf, sizeof(buf), NULL),
                             PB_OK);
            assert_int_equal(pb_money_parse_decimal(buf, codes[c], &back, NULL), PB_OK);
            if (back != values[i])
                fail_msg("%s %lld -> \"%s\" -> %lld", codes[c], (long long)values[i], buf,
                         (long long)back);
        }
}

/* ---- arithmetic -------------------------------------------------------------------- */

static void test_checked_arithmetic(void **state)
{
    (void)state;
    int64_t out = 42;
    assert_int_equal(pb_money_add(1099, 1, &out), PB_OK);
    assert_int_equal(out, 1100);
    assert_int_equal(pb_money_add(INT64_MAX - 1, 1, &out), PB_OK);
    assert_true(out == INT64_MAX);

    out = 42;
    assert_int_equal(pb_money_add(INT64_MAX, 1, &out), PB_ERR_RANGE); /* INT64_MAX + 1 */
    assert_int_equal(out, 42);
    assert_int_equal(pb_money_add(INT64_MIN, -1, &out), PB_ERR_RANGE);
    assert_int_equal(out, 42);
    assert_int_equal(pb_money_sub(INT64_MIN, 1, &out), PB_ERR_RANGE);
    assert_int_equal(pb_money_sub(0, INT64_MIN, &out), PB_ERR_RANGE);
    assert_int_equal(pb_money_sub(INT64_MAX, -1, &out), PB_ERR_RANGE);
    assert_int_equal(out, 42);
    assert_int_equal(pb_money_sub(-5, 10, &out), PB_OK);
    assert_int_equal(out, -15);

    assert_int_equal(pb_money_mul_i64(1099, 3, &out), PB_OK);
    assert_int_equal(out, 3297);
    assert_int_equal(pb_money_mul_i64(-1099, 3, &out), PB_OK);
    assert_int_equal(out, -3297);
    out = 42;
    assert_int_equal(pb_money_mul_i64(INT64_MAX, 2, &out), PB_ERR_RANGE);
    assert_int_equal(pb_money_mul_i64(INT64_MIN, -1, &out), PB_ERR_RANGE);
    assert_int_equal(pb_money_mul_i64(4611686018427387904LL, 2, &out), PB_ERR_RANGE); /* 2^62*2 */
    assert_int_equal(out, 42);
    assert_int_equal(pb_money_mul_i64(-4611686018427387904LL, 2, &out), PB_OK);
    assert_true(out == INT64_MIN);
}

/* ---- conversion ----------------------------------------------------------------------- */

static void test_convert_basic(void **state)
{
    (void)state;
    expect_convert(10000, "GBP", "EUR", "0.8571", 8571);
    expect_convert(1000, "GBP", "EUR", "1.17", 1170);
    expect_convert(1099, "USD", "JPY", "150.25", 1651);        /* 1651.2475 */
    expect_convert(151, "JPY", "USD", "0.0067", 101);          /* 101.17 */
    expect_convert(1000, "BHD", "KWD", "0.8", 800);
    expect_convert(10000000, "USD", "CLF", "0.0258", 25800000);
    expect_convert(5, "JPY", "CLF", "2", 100000);              /* result scaled up, no rounding */
    expect_convert(987654321, "KWD", "USD", "3.261234567891", 322097241);
    expect_convert(-12345, "EUR", "JPY", "0.01", -1);          /* -1.2345 */
    expect_convert(1099, "GBP", "GBP", "1", 1099);
    expect_convert(1099, "GBP", "GBP", "1.000000000000000000", 1099); /* trailing zeros */
    expect_convert(INT64_MIN, "GBP", "EUR", "1", INT64_MIN);
    expect_convert(INT64_MAX, "GBP", "EUR", "1", INT64_MAX);
}

static void test_convert_needs_128_bits(void **state)
{
    (void)state;
    /* 12345678901234 * 1000000000001 does not fit in 64 bits. */
    expect_convert(12345678901234LL, "USD", "USD", "1.000000000001", 12345678901246LL);
    /* Above 2^53: a double would already have lost the last digit. */
    expect_convert(9007199254740993LL, "USD", "EUR", "1", 9007199254740993LL);
    expect_convert(9007199254740993LL, "USD", "EUR", "0.000000000001", 9007);
    expect_convert(INT64_MAX, "USD", "USD", "0.5", 4611686018427387904LL); /* ...903.5 -> even */
}

static void test_convert_half_even(void **state)
{
    (void)state;
    /* rate 0.5 on 1, 3, 5, 7 cents gives 0.5, 1.5, 2.5, 3.5 cents. */
    expect_convert(1, "USD", "EUR", "0.5", 0);
    expect_convert(3, "USD", "EUR", "0.5", 2);
    expect_convert(5, "USD", "EUR", "0.5", 2);
    expect_convert(7, "USD", "EUR", "0.5", 4);
    expect_convert(-1, "USD", "EUR", "0.5", 0);
    expect_convert(-3, "USD", "EUR", "0.5", -2);
    expect_convert(-5, "USD", "EUR", "0.5", -2);
    expect_convert(-7, "USD", "EUR", "0.5", -4);
    /* Just above and below one half. */
    expect_convert(1, "USD", "EUR", "0.500000000001", 1);
    expect_convert(1, "USD", "EUR", "0.499999999999", 0);
    expect_convert(-1, "USD", "EUR", "0.500000000001", -1);
    /* 150 JPY at 0.0067 is 100.5 cents: even is 100. */
    expect_convert(150, "JPY", "USD", "0.0067", 100);
    expect_convert(-150, "JPY", "USD", "0.0067", -100);
    /* 1.5 JPY from 1 USD cent... 0.01 USD * 150 = 1.5 JPY -> 2; 0.01 * 250 = 2.5 -> 2 */
    expect_convert(1, "USD", "JPY", "150", 2);
    expect_convert(1, "USD", "JPY", "250", 2);
    expect_convert(1, "USD", "JPY", "350", 4);
}

static void test_convert_rate_validation(void **state)
{
    (void)state;
    expect_convert_error(100, "GBP", "EUR", "0", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "0.000", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "-1.2", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "-0", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", NULL, PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "abc", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "1e3", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "1.", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", ".85", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "0.85 ", PB_ERR_INVALID);
    expect_convert_error(100, "GBP", "EUR", "0.1234567890123", PB_ERR_INVALID); /* 13 places */
    expect_convert(100, "GBP", "EUR", "0.1234567890120", 12); /* 13th is a trailing zero */
    expect_convert(100000000, "GBP", "EUR", "0.123456789012", 12345679); /* 12345678.9012 */
    expect_convert_error(100, "GBP", "EUR", "1000000000000000000000000000000000000000",
                         PB_ERR_RANGE);
}

static void test_convert_errors(void **state)
{
    (void)state;
    struct pb_err err = {0};
    int64_t out = 7;
    expect_convert_error(100, "GBX", "EUR", "1", PB_ERR_CURRENCY);
    expect_convert_error(100, "GBP", "eur", "1", PB_ERR_CURRENCY);
    expect_convert_error(INT64_MAX, "GBP", "EUR", "2", PB_ERR_RANGE);
    expect_convert_error(INT64_MAX, "USD", "JPY", "1000", PB_ERR_RANGE);
    expect_convert_error(INT64_MIN, "GBP", "EUR", "1.000000000001", PB_ERR_RANGE);
    expect_convert_error(INT64_MAX, "JPY", "CLF", "999999999999", PB_ERR_RANGE);
    expect_convert_error(INT64_MIN, "JPY", "CLF", "999999999999.999999999999", PB_ERR_RANGE);
    assert_int_equal(pb_money_convert(INT64_MAX, "GBP", "EUR", "2", &out, &err), PB_ERR_RANGE);
    assert_non_null(strstr(err.msg, "92233720368547758.07 GBP"));
    assert_int_equal(pb_money_convert(1, "GBP", "EUR", "0.1234567890123", &out, &err),
                     PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "at most 12"));
    assert_int_equal(out, 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches_independent_copy),
        cmocka_unit_test(test_exponents_by_class),
        cmocka_unit_test(test_invalid_codes),
        cmocka_unit_test(test_parse_two_decimals),
        cmocka_unit_test(test_parse_zero_three_four_decimals),
        cmocka_unit_test(test_parse_too_many_places_message),
        cmocka_unit_test(test_parse_malformed),
        cmocka_unit_test(test_parse_hostile_text_is_not_echoed_raw),
        cmocka_unit_test(test_parse_overflow),
        cmocka_unit_test(test_parse_unknown_currency),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_buffer_and_currency_errors),
        cmocka_unit_test(test_format_parse_round_trip),
        cmocka_unit_test(test_checked_arithmetic),
        cmocka_unit_test(test_convert_basic),
        cmocka_unit_test(test_convert_needs_128_bits),
        cmocka_unit_test(test_convert_half_even),
        cmocka_unit_test(test_convert_rate_validation),
        cmocka_unit_test(test_convert_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
