/*
 * tests/unit/test_json.c: dotted paths, exact amounts from JSON values and
 * the decimal-preserving serialiser (core/json.c).
 *
 * The serialiser is checked three ways: exact expected strings for the
 * decimal rewriting and the escapes; byte-for-byte agreement with
 * json_dumps() on trees where no member is rewritten (so "everything else
 * exactly as jansson"); and byte-for-byte agreement (or the same refusal)
 * with the previous implementation, kept here as ref_dumps_decimal(), on 400
 * generated trees under every key list and flag combination, plus the depth
 * and size limits at their edges.
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

/* ---- the single-pass writer against the previous implementation ------------------ */

/* The previous pb_json_dumps_decimal() (one json_dump_callback() per leaf
 * and per key), copied verbatim from core/json.c as it was before the
 * single-pass writer, renamed ref_*. The writer must produce exactly its
 * bytes (or, like it, NULL) for every tree, key list and flag set. */

struct ref_dump {
    char *data;     /* owned; NUL-terminated when len > 0 */
    size_t len;     /* bytes used, excluding the NUL */
    size_t cap;     /* bytes allocated */
    size_t flags;   /* jansson flags used for scalars */
    const char *const *decimal_keys; /* borrowed, NULL-terminated, may be NULL */
};

static int ref_put(struct ref_dump *d, const char *s, size_t n)
{
    if (n > PB_JSON_DUMP_MAX - d->len)
        return -1;
    if (d->len + n + 1 > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        char *p;
        while (cap < d->len + n + 1)
            cap *= 2;
        if (cap > PB_JSON_DUMP_MAX + 1)
            cap = PB_JSON_DUMP_MAX + 1;
        p = realloc(d->data, cap);
        if (!p)
            return -1;
        d->data = p;
        d->cap = cap;
    }
    memcpy(d->data + d->len, s, n);
    d->len += n;
    d->data[d->len] = '\0';
    return 0;
}

static int ref_dump_callback(const char *buffer, size_t size, void *data)
{
    return ref_put(data, buffer, size);
}

static int ref_is_decimal_key(const struct ref_dump *d, const char *key, size_t keylen)
{
    if (!d->decimal_keys)
        return 0;
    for (const char *const *k = d->decimal_keys; *k; k++)
        if (strlen(*k) == keylen && memcmp(*k, key, keylen) == 0)
            return 1;
    return 0;
}

/* Matches -?[0-9]+(\.[0-9]+)? on exactly n bytes. */
static int ref_is_decimal_text(const char *s, size_t n)
{
    size_t i = 0, digits = 0;
    if (i < n && s[i] == '-')
        i++;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    if (digits == 0)
        return 0;
    if (i == n)
        return 1;
    if (s[i] != '.')
        return 0;
    i++;
    digits = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    return digits > 0 && i == n;
}

/* Write decimal text as a JSON number token: drop leading zeros of the
 * integer part ("-007.5" -> "-7.5", "00" -> "0"). */
static int ref_put_decimal(struct ref_dump *d, const char *s, size_t n)
{
    size_t i = 0;
    if (s[0] == '-') {
        if (ref_put(d, "-", 1))
            return -1;
        i = 1;
    }
    while (i + 1 < n && s[i] == '0' && s[i + 1] >= '0' && s[i + 1] <= '9')
        i++;
    return ref_put(d, s + i, n - i);
}

static int ref_dump_value(struct ref_dump *d, const json_t *v, int depth)
{
    if (depth > PB_JSON_DEPTH_MAX)
        return -1;
    if (json_is_object(v)) {
        int first = 1;
        void *it;
        if (ref_put(d, "{", 1))
            return -1;
        for (it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
            const char *key = json_object_iter_key(it);
            size_t keylen = json_object_iter_key_len(it);
            json_t *member = json_object_iter_value(it);
            json_t *key_json = json_stringn_nocheck(key, keylen);
            int rc;

            if (!key_json)
                return -1;
            rc = (!first && ref_put(d, ",", 1)) ||
                 json_dump_callback(key_json, ref_dump_callback, d, d->flags) || ref_put(d, ":", 1);
            json_decref(key_json);
            if (rc)
                return -1;
            first = 0;
            if (json_is_string(member) && ref_is_decimal_key(d, key, keylen) &&
                ref_is_decimal_text(json_string_value(member), json_string_length(member))) {
                if (ref_put_decimal(d, json_string_value(member), json_string_length(member)))
                    return -1;
            } else if (ref_dump_value(d, member, depth + 1)) {
                return -1;
            }
        }
        return ref_put(d, "}", 1);
    }
    if (json_is_array(v)) {
        if (ref_put(d, "[", 1))
            return -1;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i > 0 && ref_put(d, ",", 1)) || ref_dump_value(d, json_array_get(v, i), depth + 1))
                return -1;
        return ref_put(d, "]", 1);
    }
    return json_dump_callback(v, ref_dump_callback, d, d->flags) ? -1 : 0;
}

static char *ref_dumps_decimal(const json_t *root, const char *const *decimal_keys, size_t flags)
{
    struct ref_dump d = {
        .flags = JSON_COMPACT | JSON_ENCODE_ANY |
                 (flags & (JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH | JSON_REAL_PRECISION(31))),
        .decimal_keys = decimal_keys,
    };
    if (!root || ref_dump_value(&d, root, 0) || ref_put(&d, "", 0)) {
        free(d.data);
        return NULL;
    }
    return d.data;
}

/* Deterministic xorshift64*: the same trees on every run and machine. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng() % n);
}

/* Pieces strings are made of: plain ASCII, everything JSON escapes, '/',
 * DEL, and UTF-8 of 2, 3 and 4 bytes up to the edges of each range. */
static const char *const pieces[] = {
    "a", "Z", "0", " ", "Invoice INV-0042", "10.99", "-", ".", "e", "~",
    "\"", "\\", "/", "//", "\x7f", "\x01", "\x1f", "\b", "\f", "\n", "\r", "\t", "\x0b",
    "\xc2\x80",         /* U+0080 */
    "\xc3\xa9",         /* é */
    "\xdf\xbf",         /* U+07FF */
    "\xe0\xa0\x80",     /* U+0800 */
    "\xe2\x82\xac",     /* € */
    "\xe2\x80\xa8",     /* U+2028 line separator */
    "\xed\x9f\xbf",     /* U+D7FF */
    "\xee\x80\x80",     /* U+E000 */
    "\xef\xbf\xbf",     /* U+FFFF */
    "\xf0\x90\x80\x80", /* U+10000 */
    "\xf0\x9f\x98\x80", /* 😀 */
    "\xf4\x8f\xbf\xbf", /* U+10FFFF */
};

/* Malformed UTF-8: both writers must refuse a tree holding any of these. */
static const char *const bad_utf8[] = {
    "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xc2", "\xc3\x28", "\xe0\x80\x80",
    "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf", "\xe2\x82", "\xf0\x80\x80\x80",
    "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80",
    "\xfe", "\xff", "\xf0\x9f\x98",
};

static const char *const decimal_texts[] = {
    "10.99", "0", "-0", "007.50", "-00", "00", "-0.05", "100", "123456789012345678901234.5678",
    "1e5", ".5", "5.", "+5", "--5", " 5", "1,00", "", "-", "1.2.3", "0x10", "NaN", "12345.67",
};

/* Keys: the decimal keys themselves, near misses, escapes, non-ASCII. */
static const char *const key_pool[] = {
    "UnitAmount", "TaxAmount", "LineAmount", "Quantity", "Total", "UnitAmountX", "Unit",
    "Description", "", "a\"b", "back\\slash", "sl/ash", "tab\tkey", "\xc3\xa9t\xc3\xa9",
    "\xf0\x9f\x98\x80", "ctl\x01", "Contact", "LineItems", "k39", "x",
};

static json_t *random_string(int allow_bad)
{
    char buf[256];
    size_t len = 0, parts;

    if (rng_below(4) == 0) {
        const char *t = decimal_texts[rng_below(sizeof(decimal_texts) / sizeof(*decimal_texts))];
        return json_string(t);
    }
    parts = rng_below(9);
    for (size_t i = 0; i < parts; i++) {
        const char *p = pieces[rng_below(sizeof(pieces) / sizeof(*pieces))];
        size_t n = strlen(p);
        if (len + n >= sizeof(buf))
            break;
        memcpy(buf + len, p, n);
        len += n;
    }
    if (rng_below(10) == 0 && len + 1 < sizeof(buf))
        buf[len++] = '\0'; /* an embedded NUL: \u0000 */
    if (allow_bad && rng_below(40) == 0) {
        const char *b = bad_utf8[rng_below(sizeof(bad_utf8) / sizeof(*bad_utf8))];
        size_t n = strlen(b), at = len ? rng_below(len + 1) : 0;
        if (len + n < sizeof(buf)) {
            /* Insert at a piece boundary or not: either way it stays invalid
             * or becomes another invalid sequence, never valid by accident
             * for the pieces above (checked by the reference, which agrees). */
            memmove(buf + at + n, buf + at, len - at);
            memcpy(buf + at, b, n);
            len += n;
        }
    }
    return json_stringn_nocheck(buf, len);
}

static json_t *random_scalar(int allow_bad)
{
    static const json_int_t ints[] = {0, 1, -1, 42, INT64_MAX, INT64_MIN, INT64_MIN + 1,
                                      1000000000000LL, -987654321LL};
    static const double reals[] = {0.1, -0.0, 0.0, 1e300, -1e300, 5e-324, 100.0, 3.25,
                                   123456789.125, 1e21, 1e-7, 2.5e-5, 0.30000000000000004};
    switch (rng_below(8)) {
    case 0:
        return json_integer(ints[rng_below(sizeof(ints) / sizeof(*ints))]);
    case 1:
        return json_integer((json_int_t)rng());
    case 2: {
        if (rng_below(2))
            return json_real(reals[rng_below(sizeof(reals) / sizeof(*reals))]);
        uint64_t bits = rng();
        double d;
        memcpy(&d, &bits, sizeof(d));
        return json_real(d == d && d - d == 0 ? d : 1.5); /* finite only */
    }
    case 3:
        return rng_below(2) ? json_true() : json_false();
    case 4:
        return json_null();
    default:
        return random_string(allow_bad);
    }
}

static json_t *random_tree(int depth, int allow_bad)
{
    size_t kind = depth >= 6 ? 2 : rng_below(depth == 0 ? 2 : 4);

    if (kind == 0) {
        json_t *o = json_object();
        size_t n = rng_below(7);
        for (size_t i = 0; i < n; i++) {
            const char *key = key_pool[rng_below(sizeof(key_pool) / sizeof(*key_pool))];
            json_t *v;
            /* Decimal keys mostly get decimal texts, so rewriting is exercised. */
            if (strstr(key, "Amount") || !strcmp(key, "Quantity") || !strcmp(key, "Total"))
                v = rng_below(3) ? json_string(decimal_texts[rng_below(
                                       sizeof(decimal_texts) / sizeof(*decimal_texts))])
                                 : random_tree(depth + 1, allow_bad);
            else
                v = random_tree(depth + 1, allow_bad);
            if (rng_below(8) == 0) { /* a key with an embedded NUL */
                char k[32];
                size_t kl = strlen(key);
                memcpy(k, key, kl);
                k[kl] = '\0';
                k[kl + 1] = 'z';
                json_object_setn_new_nocheck(o, k, kl + 2, v);
            } else {
                json_object_set_new_nocheck(o, key, v);
            }
        }
        return o;
    }
    if (kind == 1) {
        json_t *a = json_array();
        size_t n = rng_below(6);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, random_tree(depth + 1, allow_bad));
        return a;
    }
    return random_scalar(allow_bad);
}

/* Compares both writers on one tree, key list and flag set; returns 1 when
 * they produced a document, 0 when both refused. */
static int compare_writers(const json_t *root, const char *const *keys, size_t flags)
{
    char *want = ref_dumps_decimal(root, keys, flags);
    char *got = pb_json_dumps_decimal(root, keys, flags);
    int produced = want != NULL;

    if (!want != !got) {
        char *plain = json_dumps(root, JSON_ENCODE_ANY | JSON_COMPACT);
        fail_msg("flags %#zx: reference %s, writer %s on %s", flags, want ? want : "NULL",
                 got ? got : "NULL", plain ? plain : "(undumpable)");
    }
    if (want && strcmp(want, got) != 0)
        fail_msg("flags %#zx:\n want %s\n got  %s", flags, want, got);
    free(want);
    free(got);
    return produced;
}

/* Every flag the function is given: the honoured ones, the ignored ones,
 * and a few real precisions. */
static size_t flag_set(size_t combo, size_t precision_index)
{
    static const size_t bits[] = {JSON_ENSURE_ASCII, JSON_ESCAPE_SLASH, JSON_SORT_KEYS,
                                  JSON_INDENT(3),    JSON_PRESERVE_ORDER, JSON_EMBED};
    static const int precisions[] = {0, 1, 5, 15, 17, 31};
    size_t flags = JSON_REAL_PRECISION(precisions[precision_index % 6]);
    for (size_t b = 0; b < sizeof(bits) / sizeof(*bits); b++)
        if (combo & ((size_t)1 << b))
            flags |= bits[b];
    return flags;
}

static void test_dumps_decimal_same_as_reference(void **state)
{
    (void)state;
    static const char *const no_keys[] = {NULL};
    static const char *const odd_keys[] = {"a\"b", "\xc3\xa9t\xc3\xa9", "", "sl/ash",
                                           "tab\tkey", "x", NULL};
    /* More keys than the writer caches lengths for, the real ones last. */
    static const char *const many_keys[] = {
        "k0",  "k1",  "k2",  "k3",  "k4",  "k5",  "k6",  "k7",  "k8",  "k9",  "k10",
        "k11", "k12", "k13", "k14", "k15", "k16", "k17", "k18", "k19", "k20", "k21",
        "k22", "k23", "k24", "k25", "k26", "k27", "k28", "k29", "k30", "k31", "k32",
        "k33", "Unit", "UnitAmount", "Total", "k37", "k38", "k39", NULL};
    const char *const *key_lists[] = {NULL, no_keys, xero_keys, odd_keys, many_keys};
    size_t produced = 0, refused = 0;

    rng_state = 0x9E3779B97F4A7C15ULL;
    for (size_t t = 0; t < 400; t++) {
        json_t *root = random_tree(0, t % 2);
        for (size_t k = 0; k < sizeof(key_lists) / sizeof(*key_lists); k++)
            for (size_t combo = 0; combo < 64; combo += (k == 2 ? 1 : 5)) {
                if (compare_writers(root, key_lists[k], flag_set(combo, t + combo)))
                    produced++;
                else
                    refused++;
            }
        json_decref(root);
    }
    /* Both paths must really have been taken. */
    assert_true(produced > 20000);
    assert_true(refused > 100);

    /* Scalars at the root, every string piece alone, every bad sequence alone. */
    for (size_t i = 0; i < 200; i++) {
        json_t *v = random_scalar(0);
        compare_writers(v, xero_keys, flag_set(i % 64, i));
        json_decref(v);
    }
    for (size_t i = 0; i < sizeof(pieces) / sizeof(*pieces); i++)
        for (size_t combo = 0; combo < 4; combo++) {
            json_t *v = json_pack("{s:s,s:[s]}", pieces[i], pieces[i], "UnitAmount", pieces[i]);
            assert_non_null(v);
            assert_int_equal(compare_writers(v, xero_keys, flag_set(combo, 0)), 1);
            json_decref(v);
        }
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(*bad_utf8); i++) {
        json_t *v = json_stringn_nocheck(bad_utf8[i], strlen(bad_utf8[i]));
        json_t *o = json_object();
        json_object_set_new_nocheck(o, bad_utf8[i], json_integer(1));
        assert_int_equal(compare_writers(v, NULL, 0), 0);
        assert_int_equal(compare_writers(o, NULL, JSON_ENSURE_ASCII), 0);
        assert_null(pb_json_dumps_decimal(v, NULL, JSON_ENSURE_ASCII));
        json_decref(v);
        json_decref(o);
    }
}

static void test_dumps_decimal_escapes_exact(void **state)
{
    (void)state;
    /* Pinned bytes, independent of any implementation: '/' is left alone
     * unless JSON_ESCAPE_SLASH, non-ASCII is passed through as UTF-8 unless
     * JSON_ENSURE_ASCII, DEL is not escaped, \u escapes use upper-case hex. */
    json_t *v = json_stringn("a/b\x01\x1f\x7f\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\0\"\\\b\f\n\r\t",
                             23);
    char *out = pb_json_dumps_decimal(v, NULL, 0);
    assert_string_equal(out, "\"a/b\\u0001\\u001F\x7f\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
                             "\\u0000\\\"\\\\\\b\\f\\n\\r\\t\"");
    free(out);
    out = pb_json_dumps_decimal(v, NULL, JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH);
    assert_string_equal(out, "\"a\\/b\\u0001\\u001F\x7f\\u00E9\\u20AC\\uD83D\\uDE00"
                             "\\u0000\\\"\\\\\\b\\f\\n\\r\\t\"");
    free(out);
    json_decref(v);

    v = json_pack("[I,I,I]", (json_int_t)INT64_MIN, (json_int_t)INT64_MAX, (json_int_t)0);
    out = pb_json_dumps_decimal(v, NULL, 0);
    assert_string_equal(out, "[-9223372036854775808,9223372036854775807,0]");
    free(out);
    json_decref(v);
}

/* Nesting right at PB_JSON_DEPTH_MAX: a leaf one level too deep fails, a
 * decimal member there does not (it is written without descending), as
 * before. */
static void test_dumps_decimal_depth_edges(void **state)
{
    (void)state;
    for (int extra = -2; extra <= 1; extra++) {
        for (int leaf = 0; leaf < 3; leaf++) {
            json_t *root = json_array(), *cur = root;
            for (int i = 0; i < PB_JSON_DEPTH_MAX + extra - 1; i++) {
                json_t *next = (i % 2) ? json_array() : json_object();
                if (json_is_array(cur))
                    json_array_append_new(cur, next);
                else
                    json_object_set_new(cur, "UnitAmount", next);
                cur = next;
            }
            json_t *last = leaf == 0 ? json_integer(7) : json_string("1.50");
            if (json_is_array(cur))
                json_array_append_new(cur, last);
            else
                json_object_set_new(cur, leaf == 2 ? "x" : "UnitAmount", last);
            compare_writers(root, xero_keys, 0);
            json_decref(root);
        }
    }
}

/* Output of exactly PB_JSON_DUMP_MAX bytes is written; one more is refused. */
static void test_dumps_decimal_size_limit(void **state)
{
    (void)state;
    size_t n = PB_JSON_DUMP_MAX - 2; /* plus the two quotes */
    char *big = malloc(n + 1);
    json_t *v;
    char *out;

    assert_non_null(big);
    memset(big, 'x', n + 1);
    v = json_stringn(big, n);
    out = pb_json_dumps_decimal(v, NULL, 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), PB_JSON_DUMP_MAX);
    free(out);
    json_decref(v);
    v = json_stringn(big, n + 1);
    assert_null(pb_json_dumps_decimal(v, NULL, 0));
    json_decref(v);
    free(big);
}

/* ---- pb_json_loadb: the same tree as json_loadb, or NULL for the same inputs ---- */

/* Parse `text` both ways under `flags`: both refuse, or both give trees that
 * serialise to the same bytes (key order, integer vs real and all). */
static void compare_loaders(const char *text, size_t len, size_t flags)
{
    json_error_t je, pe;
    json_t *want = json_loadb(text, len, flags, &je);
    json_t *got = pb_json_loadb(text, len, flags, &pe);
    if (!want != !got)
        fail_msg("flags %zx, %zu bytes \"%.*s\": jansson %s, pb_json_loadb %s", flags, len,
                 (int)(len > 200 ? 200 : len), text, want ? "parses" : je.text,
                 got ? "parses" : pe.text);
    if (want) {
        char *a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        char *b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        assert_non_null(a);
        assert_non_null(b);
        if (strcmp(a, b) != 0 || !json_equal(want, got))
            fail_msg("flags %zx, \"%.*s\": jansson %s, pb_json_loadb %s", flags,
                     (int)(len > 200 ? 200 : len), text, a, b);
        free(a);
        free(b);
    } else {
        assert_true(pe.text[0] != '\0');
        assert_true(pe.line >= 1 && pe.position >= 0 && (size_t)pe.position <= len);
    }
    json_decref(want);
    json_decref(got);
}

static const size_t load_flags[] = {0, JSON_REJECT_DUPLICATES, JSON_DECODE_ANY, JSON_ALLOW_NUL,
                                    JSON_DECODE_INT_AS_REAL,
                                    JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL};

static void test_loadb_cases(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "{}", "[]", " {\"a\":1} \n", "{\"a\":1,\"a\":2}", "{\"a\":{\"b\":1},\"a\":[]}",
        "[1,2.5,-0,1e3,-1E-2,0.0,1.5e+3]", "[9223372036854775807]", "[9223372036854775808]",
        "[-9223372036854775808]", "[-9223372036854775809]", "[1e400]", "[-1e400]", "[1e-400]",
        "\"str\"", "5", "null", "true", "false", "", "   ", "{", "[1,]", "{\"a\"}", "{\"a\":}",
        "[1] x", "[1][2]", "[\"\\u0000\"]", "{\"\\u0000\":1}", "{\"a\\u0000b\":1}",
        "[\"\\ud83d\\ude00\"]", "[\"\xff\"]", "[\"\xc3\xa9\"]", "[\"\xc3\"]", "[\"\xed\xa0\x80\"]",
        "[01]", "[.5]", "[+1]", "[1.]", "[1e]", "[-]", "[tru]", "[nul]", "/* c */ []", "[] // c",
        "{\"a\":[{\"b\":{\"c\":[]}}]}", "[\"a\\tb\\n\\\"\\\\\\/\\b\\f\\r\"]", "[\"\\x\"]",
        "[\"\\u12\"]", "[\"tab\there\"]", "{\"\":\"\"}", "[[[[[]]]]]", "{\"a\":1,}", "[,1]",
        "{1:2}", "{\"a\" 1}", "\xef\xbb\xbf[]", "[\"\\u00e9\"]", "[1,\n2,\n  x]",
        "[123456789012345678901234567890.5]", "[1E+2]", "[-0.0]", "[0e0]",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
        for (size_t f = 0; f < sizeof(load_flags) / sizeof(*load_flags); f++)
            compare_loaders(cases[i], strlen(cases[i]), load_flags[f]);
    /* the depth limit at its edge, both ways */
    for (size_t depth = PB_JSON_DEPTH_MAX - 1; depth <= PB_JSON_DEPTH_MAX + 1; depth++) {
        char *t = malloc(2 * depth + 1);
        assert_non_null(t);
        memset(t, '[', depth);
        memset(t + depth, ']', depth);
        t[2 * depth] = '\0';
        compare_loaders(t, 2 * depth, 0);
        free(t);
    }
    /* the documented difference: a lone surrogate escape */
    {
        json_t *j = pb_json_loadb("[\"a\\ud800b\"]", 12, 0, NULL);
        assert_null(json_loadb("[\"a\\ud800b\"]", 12, 0, NULL));
        assert_non_null(j);
        assert_string_equal(json_string_value(json_array_get(j, 0)), "a?b");
        json_decref(j);
    }
    /* the other documented difference: a NUL byte outside a string */
    {
        json_t *quirk = json_loadb("[1\0]", 4, 0, NULL);
        assert_non_null(quirk);
        json_decref(quirk);
    }
    assert_null(pb_json_loadb("[1\0]", 4, 0, NULL));
    assert_null(pb_json_loadb("[\"a\0\"]", 6, JSON_ALLOW_NUL, NULL));
    /* error position, line and column as jansson counts them */
    {
        json_error_t e;
        assert_null(pb_json_loadb("{\"a\":1,\n \"b\":x}", 15, 0, &e));
        assert_int_equal(e.line, 2);
        assert_true(e.column >= 5 && e.position >= 13);
    }
}

/* Random trees (test_dumps_decimal's generator: NULs in keys and strings,
 * invalid UTF-8, extreme numbers), written by jansson in three layouts, then
 * parsed whole, cut short and with one byte changed. */
static void test_loadb_same_as_jansson(void **state)
{
    static const char mutations[] = "{}[]\",:0123456789eE.-+ tfnu\\\x01\xc3\xff\xed\xa0";
    (void)state;
    rng_state = 0x2545F4914F6CDD1DULL;
    for (int t = 0; t < 600; t++) {
        json_t *root = random_tree(0, t % 3 == 0);
        size_t dump_flags = t % 3 == 0 ? JSON_COMPACT : t % 3 == 1 ? JSON_INDENT(2) : 0;
        char *text = json_dumps(root, dump_flags | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        size_t len;
        json_decref(root);
        if (!text)
            continue; /* a tree jansson will not write (bad UTF-8 in a key) */
        len = strlen(text);
        for (size_t f = 0; f < sizeof(load_flags) / sizeof(*load_flags); f++)
            compare_loaders(text, len, load_flags[f]);
        for (int k = 0; k < 6 && len > 0; k++) {
            size_t at = rng_below(len);
            char saved = text[at];
            compare_loaders(text, at, load_flags[k % 6]);
            text[at] = mutations[rng_below(sizeof(mutations) - 1)];
            compare_loaders(text, len, load_flags[(k + 1) % 6]);
            text[at] = saved;
        }
        free(text);
    }
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
        cmocka_unit_test(test_dumps_decimal_same_as_reference),
        cmocka_unit_test(test_dumps_decimal_escapes_exact),
        cmocka_unit_test(test_dumps_decimal_depth_edges),
        cmocka_unit_test(test_dumps_decimal_size_limit),
        cmocka_unit_test(test_loadb_cases),
        cmocka_unit_test(test_loadb_same_as_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
