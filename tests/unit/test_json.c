/*
 * tests/unit/test_json.c: dotted paths, exact amounts from JSON values and
 * the decimal-preserving serialiser (core/json.c).
 *
 * The serialiser is checked two ways: exact expected strings for the
 * decimal rewriting, and byte-for-byte agreement with json_dumps() on trees
 * where no member is rewritten (so "everything else exactly as jansson").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json.h"

static json_t *load(const char *text)
{
    json_error_t error;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &error);
    if (!j)
        fail_msg("bad test JSON %s: %s", text, error.text);
    return j;
}

/* ---- paths ----------------------------------------------------------------------- */

static void test_path_and_str(void **state)
{
    (void)state;
    json_t *root = load("{\"a\":{\"b\":{\"c\":\"x\",\"n\":5}},"
                        "\"lines\":[{\"amount\":\"1.00\"},{\"amount\":\"2.50\"}],"
                        "\"empty\":\"\",\"nul\":null,\"k.dot\":\"hidden\"}");

    assert_string_equal(pb_json_str(root, "a.b.c"), "x");
    assert_string_equal(pb_json_str(root, "lines.0.amount"), "1.00");
    assert_string_equal(pb_json_str(root, "lines.1.amount"), "2.50");
    assert_string_equal(pb_json_str(root, "empty"), "");
    assert_null(pb_json_str(root, "lines.2.amount")); /* out of range */
    assert_null(pb_json_str(root, "a.b"));            /* an object, not a string */
    assert_null(pb_json_str(root, "a.b.n"));          /* an integer */
    assert_null(pb_json_str(root, "nul"));
    assert_null(pb_json_str(root, "a.b.c.d"));        /* below a string */
    assert_null(pb_json_str(root, "missing"));
    assert_null(pb_json_str(root, "a..b"));
    assert_null(pb_json_str(root, ".a"));
    assert_null(pb_json_str(root, "a.b.c."));
    assert_null(pb_json_str(root, "lines.00.amount")); /* no leading zeros */
    assert_null(pb_json_str(root, "lines.-1.amount"));
    assert_null(pb_json_str(root, "lines.+0.amount"));
    assert_null(pb_json_str(root, "lines.99999999999999999999999.amount"));
    assert_null(pb_json_str(root, "k.dot")); /* keys with dots are unreachable */
    assert_null(pb_json_str(NULL, "a"));
    assert_null(pb_json_str(root, NULL));

    assert_ptr_equal(pb_json_path(root, ""), root);
    assert_true(json_is_object(pb_json_path(root, "a.b")));
    assert_int_equal(json_integer_value(pb_json_path(root, "a.b.n")), 5);
    assert_true(json_is_null(pb_json_path(root, "nul")));
    assert_true(json_is_array(pb_json_path(root, "lines")));
    json_decref(root);
}

/* ---- amounts ------------------------------------------------------------------------- */

static void expect_minor(json_t *v, const char *currency, int64_t want)
{
    struct pb_err err = {0};
    int64_t got = 0x5a5a;
    if (pb_json_to_minor(v, currency, &got, &err) != PB_OK)
        fail_msg("to_minor %s failed: %s", currency, err.msg);
    if (got != want)
        fail_msg("to_minor %s gave %lld, want %lld", currency, (long long)got, (long long)want);
    json_decref(v);
}

static void expect_minor_error(json_t *v, const char *currency, enum pb_rc want,
                               const char *fragment)
{
    struct pb_err err = {0};
    int64_t got = 0x5a5a;
    enum pb_rc rc = pb_json_to_minor(v, currency, &got, &err);
    if (rc != want)
        fail_msg("to_minor %s: rc %d, want %d (%s)", currency, rc, want, err.msg);
    assert_int_equal(got, 0x5a5a);
    if (fragment && !strstr(err.msg, fragment))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, fragment);
    json_decref(v);
}

static void test_to_minor_real(void **state)
{
    (void)state;
    expect_minor(json_real(10.99), "GBP", 1099);
    expect_minor(json_real(-0.05), "GBP", -5);
    expect_minor(json_real(0.1), "USD", 10);
    expect_minor(json_real(1.1), "USD", 110);     /* 1.100000000000000088817... */
    expect_minor(json_real(0.29), "USD", 29);     /* 0.28999999999999998002... */
    expect_minor(json_real(1.005), "BHD", 1005);  /* 1.00499999999999989342... */
    expect_minor(json_real(100.0), "JPY", 100);
    expect_minor(json_real(-0.0), "GBP", 0);
    expect_minor(json_real(123456789012.34), "USD", 12345678901234LL); /* 14 digits */
    expect_minor(json_real(9999999999999.99), "USD", 999999999999999LL); /* 15 digits */
    /* As decoded from the wire, not built in C. */
    {
        json_t *root = load("{\"amount\":10.99,\"big\":100000000000000.0,\"q\":0.125}");
        int64_t v = 0;
        assert_int_equal(pb_json_to_minor(json_object_get(root, "amount"), "GBP", &v, NULL),
                         PB_OK);
        assert_int_equal(v, 1099);
        assert_int_equal(pb_json_to_minor(json_object_get(root, "big"), "JPY", &v, NULL), PB_OK);
        assert_true(v == 100000000000000LL);
        assert_int_equal(pb_json_to_minor(json_object_get(root, "q"), "KWD", &v, NULL), PB_OK);
        assert_int_equal(v, 125);
        assert_int_equal(pb_json_to_minor(json_object_get(root, "q"), "GBP", &v, NULL),
                         PB_ERR_INVALID); /* 3 places for GBP */
        json_decref(root);
    }
}

static void test_to_minor_real_rejected(void **state)
{
    (void)state;
    expect_minor_error(json_real(1e300), "GBP", PB_ERR_INVALID, "decimal strings");
    expect_minor_error(json_real(-1e300), "GBP", PB_ERR_INVALID, NULL);
    expect_minor_error(json_real(1e15), "JPY", PB_ERR_INVALID, NULL);    /* "%.15g" -> 1e+15 */
    expect_minor_error(json_real(1.5e-7), "GBP", PB_ERR_INVALID, NULL);  /* exponent form */
    expect_minor_error(json_real(0.30000000000000004), "USD", PB_ERR_INVALID, "15 significant");
    expect_minor_error(json_real(1.005), "GBP", PB_ERR_INVALID, "3 decimal places");
    expect_minor_error(json_real(10.5), "JPY", PB_ERR_INVALID, NULL);
    expect_minor_error(json_real(0.30000000000000004), "USD", PB_ERR_INVALID, NULL);
    {
        /* 17 significant digits on the wire. */
        json_t *root = load("[12345678.901234567]");
        int64_t v = 0;
        assert_int_equal(pb_json_to_minor(json_array_get(root, 0), "USD", &v, NULL),
                         PB_ERR_INVALID);
        json_decref(root);
    }
}

static void test_to_minor_string_and_integer(void **state)
{
    (void)state;
    expect_minor(json_string("10.99"), "GBP", 1099);
    expect_minor(json_string("-5"), "GBP", -500);
    expect_minor(json_string("0.123"), "BHD", 123);
    expect_minor(json_string("92233720368547758.07"), "GBP", INT64_MAX);
    expect_minor_error(json_string("92233720368547758.08"), "GBP", PB_ERR_RANGE, NULL);
    expect_minor_error(json_string("1.234"), "GBP", PB_ERR_INVALID,
                       "has 3 decimal places but GBP allows 2");
    expect_minor_error(json_string("10,99"), "GBP", PB_ERR_INVALID, NULL);
    expect_minor_error(json_string(""), "GBP", PB_ERR_INVALID, NULL);
    expect_minor_error(json_stringn("1\0002", 3), "GBP", PB_ERR_INVALID, "NUL");

    expect_minor(json_integer(12), "GBP", 1200);
    expect_minor(json_integer(-3), "KWD", -3000);
    expect_minor(json_integer(1000), "JPY", 1000);
    expect_minor(json_integer(INT64_MAX), "JPY", INT64_MAX);
    expect_minor_error(json_integer(INT64_MAX), "GBP", PB_ERR_RANGE, NULL);
    expect_minor_error(json_integer(92233720368547759LL), "GBP", PB_ERR_RANGE, NULL);
    expect_minor(json_integer(92233720368547758LL), "GBP", 9223372036854775800LL);
}

static void test_to_minor_bad_types_and_currency(void **state)
{
    (void)state;
    int64_t v = 0x5a5a;
    struct pb_err err = {0};
    expect_minor_error(json_null(), "GBP", PB_ERR_INVALID, "null");
    expect_minor_error(json_true(), "GBP", PB_ERR_INVALID, "boolean");
    expect_minor_error(json_object(), "GBP", PB_ERR_INVALID, "object");
    expect_minor_error(json_array(), "GBP", PB_ERR_INVALID, "array");
    assert_int_equal(pb_json_to_minor(NULL, "GBP", &v, &err), PB_ERR_INVALID);
    expect_minor_error(json_string("10.99"), "XYZ", PB_ERR_CURRENCY, "XYZ");
    expect_minor_error(json_real(10.99), "gbp", PB_ERR_CURRENCY, NULL);
    expect_minor_error(json_integer(1), NULL, PB_ERR_CURRENCY, NULL);
    assert_int_equal(v, 0x5a5a);
}

/* ---- serialiser ------------------------------------------------------------------------ */

static const char *const xero_keys[] = {"UnitAmount", "TaxAmount", "LineAmount", NULL};

static void expect_dump(const char *json_in, const char *const *keys, size_t flags,
                        const char *want)
{
    json_t *root = load(json_in);
    char *out = pb_json_dumps_decimal(root, keys, flags);
    assert_non_null(out);
    assert_string_equal(out, want);
    free(out);
    json_decref(root);
}

static void test_dumps_decimal_basic(void **state)
{
    (void)state;
    json_t *root = json_object();
    char *out;
    json_object_set_new(root, "UnitAmount", json_string("10.99"));
    out = pb_json_dumps_decimal(root, xero_keys, 0);
    assert_string_equal(out, "{\"UnitAmount\":10.99}");
    free(out);
    json_decref(root);

    expect_dump("{\"UnitAmount\":\"10.99\",\"Description\":\"10.99\"}", xero_keys, 0,
                "{\"UnitAmount\":10.99,\"Description\":\"10.99\"}");
    /* Nested objects and arrays, insertion order kept (not sorted). */
    expect_dump("{\"Type\":\"ACCREC\",\"LineItems\":[{\"Quantity\":2,\"UnitAmount\":\"5.00\","
                "\"TaxAmount\":\"-1.000\"},{\"UnitAmount\":\"0\"}],\"Total\":\"11.00\"}",
                xero_keys, 0,
                "{\"Type\":\"ACCREC\",\"LineItems\":[{\"Quantity\":2,\"UnitAmount\":5.00,"
                "\"TaxAmount\":-1.000},{\"UnitAmount\":0}],\"Total\":\"11.00\"}");
    /* Leading zeros would be invalid JSON: dropped. */
    expect_dump("{\"UnitAmount\":\"007.50\",\"TaxAmount\":\"-00\",\"LineAmount\":\"-0.05\"}",
                xero_keys, 0, "{\"UnitAmount\":7.50,\"TaxAmount\":-0,\"LineAmount\":-0.05}");
    /* A NULL key list rewrites nothing. */
    expect_dump("{\"UnitAmount\":\"10.99\"}", NULL, 0, "{\"UnitAmount\":\"10.99\"}");
}

static void test_dumps_decimal_leaves_non_decimals_quoted(void **state)
{
    (void)state;
    const char *not_decimal[] = {"",      "10.99 GBP", "1e5",  ".5",    "5.",  "+5",
                                 "--5",   " 5",        "5 ",   "1,00",  "0x1", "NaN",
                                 "1.2.3", "-",         "\xd9\xa1", "10.99\"}"};
    for (size_t i = 0; i < sizeof(not_decimal) / sizeof(not_decimal[0]); i++) {
        json_t *root = json_object();
        char *ours, *theirs;
        json_object_set_new(root, "UnitAmount", json_string(not_decimal[i]));
        ours = pb_json_dumps_decimal(root, xero_keys, 0);
        theirs = json_dumps(root, JSON_COMPACT);
        assert_non_null(ours);
        assert_string_equal(ours, theirs);
        free(ours);
        free(theirs);
        json_decref(root);
    }
    /* Strings inside an array under a decimal key stay strings; numbers stay numbers. */
    expect_dump("{\"UnitAmount\":[\"1.00\"],\"TaxAmount\":{\"v\":\"2.00\"},\"LineAmount\":3.5}",
                xero_keys, 0,
                "{\"UnitAmount\":[\"1.00\"],\"TaxAmount\":{\"v\":\"2.00\"},\"LineAmount\":3.5}");
    /* A key that merely starts like a decimal key does not match. */
    expect_dump("{\"UnitAmountX\":\"1.00\",\"Unit\":\"2.00\"}", xero_keys, 0,
                "{\"UnitAmountX\":\"1.00\",\"Unit\":\"2.00\"}");
}

static void expect_same_as_jansson(const char *json_in, size_t flags)
{
    json_t *root = load(json_in);
    char *ours = pb_json_dumps_decimal(root, xero_keys, flags);
    char *theirs = json_dumps(root, JSON_COMPACT | JSON_ENCODE_ANY | flags);
    assert_non_null(ours);
    assert_non_null(theirs);
    assert_string_equal(ours, theirs);
    free(ours);
    free(theirs);
    json_decref(root);
}

static void test_dumps_decimal_matches_jansson(void **state)
{
    (void)state;
    const char *doc =
        "{\"z\":1,\"a\":[1,-2,3.25,1e300,-0.0,true,false,null,\"s\",[],{}],"
        "\"esc\":\"quote\\\" backslash\\\\ slash/ tab\\t nl\\n ctl\\u0001 \\u00e9 \\ud83d\\ude00\","
        "\"k\\\"ey\":{\"nested\":{\"deeper\":[{\"x\":\"y\"}]}},\"\\u00e9t\\u00e9\":\"caf\\u00e9\","
        "\"big\":9223372036854775807,\"neg\":-9223372036854775808,\"r\":0.1}";
    expect_same_as_jansson(doc, 0);
    expect_same_as_jansson(doc, JSON_ENSURE_ASCII);
    expect_same_as_jansson(doc, JSON_ESCAPE_SLASH);
    expect_same_as_jansson(doc, JSON_REAL_PRECISION(5));
    expect_same_as_jansson(doc, JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH | JSON_REAL_PRECISION(17));
    expect_same_as_jansson("\"just a string\"", 0);
    expect_same_as_jansson("42", 0);
    expect_same_as_jansson("null", 0);
    expect_same_as_jansson("[]", 0);
    expect_same_as_jansson("{}", 0);
    /* Indentation is ignored: still compact. */
    {
        json_t *root = load("{\"a\":[1,2]}");
        char *ours = pb_json_dumps_decimal(root, NULL, JSON_INDENT(4) | JSON_SORT_KEYS);
        assert_string_equal(ours, "{\"a\":[1,2]}");
        free(ours);
        json_decref(root);
    }
}

static void test_dumps_decimal_escaped_keys_and_round_trip(void **state)
{
    (void)state;
    static const char *const keys[] = {"a\"b", "\xc3\xa9", NULL};
    json_t *root = json_object(), *back;
    char *out;
    json_error_t error;

    json_object_set_new(root, "a\"b", json_string("1.5"));
    json_object_set_new(root, "\xc3\xa9", json_string("-2.25"));
    json_object_set_new(root, "other", json_string("3.5"));
    out = pb_json_dumps_decimal(root, keys, JSON_ENSURE_ASCII);
    /* jansson writes \u escapes with upper-case hex. */
    assert_string_equal(out, "{\"a\\\"b\":1.5,\"\\u00E9\":-2.25,\"other\":\"3.5\"}");
    /* The output is valid JSON and the numbers read back as numbers. */
    back = json_loads(out, 0, &error);
    assert_non_null(back);
    assert_true(json_is_real(json_object_get(back, "a\"b")));
    assert_true(json_is_string(json_object_get(back, "other")));
    json_decref(back);
    free(out);
    json_decref(root);

    /* Integer-looking decimals become JSON integers; that is fine for the wire. */
    root = json_pack("{s:s}", "UnitAmount", "100");
    out = pb_json_dumps_decimal(root, xero_keys, 0);
    assert_string_equal(out, "{\"UnitAmount\":100}");
    free(out);
    json_decref(root);
}

static void test_dumps_decimal_limits(void **state)
{
    (void)state;
    json_t *root = json_array(), *cur = root;
    char *out;
    for (int i = 0; i < PB_JSON_DEPTH_MAX + 10; i++) {
        json_t *next = json_array();
        json_array_append_new(cur, next);
        cur = next;
    }
    assert_null(pb_json_dumps_decimal(root, NULL, 0));
    json_decref(root);

    root = json_array();
    cur = root;
    for (int i = 0; i < 100; i++) {
        json_t *next = json_array();
        json_array_append_new(cur, next);
        cur = next;
    }
    out = pb_json_dumps_decimal(root, NULL, 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), 202);
    free(out);
    json_decref(root);
    assert_null(pb_json_dumps_decimal(NULL, NULL, 0));

    /* A large document grows the buffer many times. */
    root = json_array();
    for (int i = 0; i < 20000; i++)
        json_array_append_new(root, json_pack("{s:s,s:s}", "UnitAmount", "12345.67", "d",
                                              "some description text"));
    out = pb_json_dumps_decimal(root, xero_keys, 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), 2 + 20000 * 52 - 1);
    assert_memory_equal(out, "[{\"UnitAmount\":12345.67,\"d\":\"some description text\"},", 53);
    free(out);
    json_decref(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_and_str),
        cmocka_unit_test(test_to_minor_real),
        cmocka_unit_test(test_to_minor_real_rejected),
        cmocka_unit_test(test_to_minor_string_and_integer),
        cmocka_unit_test(test_to_minor_bad_types_and_currency),
        cmocka_unit_test(test_dumps_decimal_basic),
        cmocka_unit_test(test_dumps_decimal_leaves_non_decimals_quoted),
        cmocka_unit_test(test_dumps_decimal_matches_jansson),
        cmocka_unit_test(test_dumps_decimal_escaped_keys_and_round_trip),
        cmocka_unit_test(test_dumps_decimal_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
