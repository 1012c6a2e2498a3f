/*
 * tests/unit/test_jdoc.c: core/jdoc.c, the yajl-built tree of the webhook hot
 * path. It must accept and refuse what jansson with JSON_REJECT_DUPLICATES
 * did (the parser it replaced there), keep every value exactly (integers as
 * int64 without a double in between, other numbers as their text, strings
 * byte for byte, \u0000 included), and refuse hostile shapes with a message
 * that names the line and column.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/jdoc.h"

static enum pb_rc parse(const char *text, struct pb_jdoc *d, struct pb_err *err)
{
    memset(err, 0, sizeof(*err));
    return pb_jdoc_parse(d, text, strlen(text), err);
}

/* A jdoc node equals a jansson value: same type, same members in the same
 * order, same strings (length included), integers equal, reals as text. */
static int same(const struct pb_jnode *n, const json_t *j)
{
    switch (n->type) {
    case PB_J_NULL:
        return json_is_null(j);
    case PB_J_TRUE:
        return json_is_true(j);
    case PB_J_FALSE:
        return json_is_false(j);
    case PB_J_STRING:
        return json_is_string(j) && json_string_length(j) == n->len &&
               memcmp(json_string_value(j), n->str, n->len) == 0;
    case PB_J_NUMBER:
        if (n->is_int)
            return json_is_integer(j) && json_integer_value(j) == n->i;
        return json_is_real(j) && json_real_value(j) == strtod(n->str, NULL);
    case PB_J_ARRAY: {
        size_t i = 0;
        if (!json_is_array(j) || json_array_size(j) != n->n)
            return 0;
        for (const struct pb_jnode *c = n->first; c; c = c->next, i++)
            if (!same(c, json_array_get(j, i)))
                return 0;
        return 1;
    }
    case PB_J_OBJECT: {
        if (!json_is_object(j) || json_object_size(j) != n->n)
            return 0;
        for (const struct pb_jnode *c = n->first; c; c = c->next)
            if (!same(c, json_object_getn(j, c->key, c->key_len)))
                return 0;
        return 1;
    }
    }
    return 0;
}

static void test_same_as_jansson(void **state)
{
    static const char *const texts[] = {
        "{}",
        "[]",
        "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}",
        "{\"amount\":{\"totalAmount\":1099,\"currency\":\"GBP\"},\"x\":-0,\"y\":0.5,\"z\":1e3}",
        "{\"max\":9223372036854775807,\"min\":-9223372036854775808}",
        "{\"s\":\"caf\\u00e9 \\\"q\\\" \\\\ \\/ \\n\\t\\u20ac \\ud83d\\ude00\"}",
        "{\"nul\":\"a\\u0000b\"}",
        "  {\n \"deep\" : [[[[{\"k\":[1,2,3]}]]]] }  \n",
        "{\"\":\"empty key\",\"u\":\"\xc3\xa9\xe2\x82\xac\"}",
        "[1,\"two\",{\"three\":3},[4],null]",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct pb_jdoc d;
        struct pb_err err;
        json_error_t je;
        json_t *j = json_loads(texts[i], JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
        assert_non_null(j);
        if (parse(texts[i], &d, &err) != PB_OK)
            fail_msg("%s: %s", texts[i], err.msg);
        if (!same(d.root, j))
            fail_msg("differs from jansson: %s", texts[i]);
        pb_jdoc_free(&d);
        json_decref(j);
    }
}

static void test_values(void **state)
{
    struct pb_jdoc d;
    struct pb_err err;
    const struct pb_jnode *n;
    assert_int_equal(parse("{\"i\":-42,\"r\":10.99,\"e\":1E2,\"s\":\"a\\u0000b\",\"o\":{\"k\":null}}",
                           &d, &err),
                     PB_OK);
    n = pb_jnode_get(d.root, "i");
    assert_true(n->type == PB_J_NUMBER && n->is_int && n->i == -42);
    n = pb_jnode_get(d.root, "r");
    assert_true(n->type == PB_J_NUMBER && !n->is_int);
    assert_string_equal(n->str, "10.99"); /* the literal, never a double */
    assert_false(pb_jnode_get(d.root, "e")->is_int);
    n = pb_jnode_get(d.root, "s");
    assert_int_equal(n->len, 3);
    assert_int_equal(strlen(n->str), 1); /* callers see the NUL */
    assert_int_equal(pb_jnode_get(pb_jnode_get(d.root, "o"), "k")->type, PB_J_NULL);
    assert_null(pb_jnode_get(d.root, "missing"));
    assert_null(pb_jnode_get(n, "s")); /* not an object */
    assert_null(pb_jnode_get(NULL, "s"));
    pb_jdoc_free(&d);

    /* containers know their own text */
    {
        static const char text[] = " {\"Invoices\": [ {\"ID\":\"a\",\"L\":[1,{}]} ,{\"ID\":\"b\"}]}\n";
        const struct pb_jnode *arr, *el;
        assert_int_equal(parse(text, &d, &err), PB_OK);
        assert_int_equal(d.root->start, 1);
        assert_int_equal(d.root->end, strlen(text) - 1);
        arr = pb_jnode_get(d.root, "Invoices");
        assert_memory_equal(text + arr->start, "[ {", 3);
        el = arr->first;
        assert_int_equal(el->end - el->start, strlen("{\"ID\":\"a\",\"L\":[1,{}]}"));
        assert_memory_equal(text + el->start, "{\"ID\":\"a\",\"L\":[1,{}]}", el->end - el->start);
        assert_memory_equal(text + el->next->start, "{\"ID\":\"b\"}", el->next->end - el->next->start);
        pb_jdoc_free(&d);
    }
}

static void expect_refused(const char *text, enum pb_rc rc, const char *needle)
{
    struct pb_jdoc d;
    struct pb_err err;
    assert_int_equal(parse(text, &d, &err), rc);
    if (!strstr(err.msg, needle))
        fail_msg("\"%s\": message \"%s\" lacks \"%s\"", text, err.msg, needle);
    assert_null(d.root);
}

static void test_refused(void **state)
{
    expect_refused("", PB_ERR_INVALID, "not valid JSON");
    expect_refused("{\"a\":1,\n\"b\":}", PB_ERR_INVALID, "line 2");
    expect_refused("{\"a\":1,\"a\":2}", PB_ERR_INVALID, "duplicate object key \"a\"");
    expect_refused("{\"o\":{\"k\":1,\"j\":2,\"k\":3}}", PB_ERR_INVALID, "duplicate");
    expect_refused("{\"a\":1} x", PB_ERR_INVALID, "not valid JSON");
    expect_refused("{\"a\":1}{}", PB_ERR_INVALID, "not valid JSON");
    expect_refused("{/* c */\"a\":1}", PB_ERR_INVALID, "not valid JSON");
    expect_refused("{'a':1}", PB_ERR_INVALID, "not valid JSON");
    expect_refused("{\"a\":01}", PB_ERR_INVALID, "not valid JSON");
    expect_refused("{\"a\":\"\xff\"}", PB_ERR_INVALID, "not valid JSON");        /* not UTF-8 */
    expect_refused("{\"a\":\"\xc3\"}", PB_ERR_INVALID, "not valid JSON");        /* truncated */
    expect_refused("{\"a\":\"x\ty\"}", PB_ERR_INVALID, "not valid JSON");        /* raw control */
    expect_refused("{\"a\":9223372036854775808}", PB_ERR_RANGE, "does not fit in 64 bits");
    expect_refused("{\"a\":-9223372036854775809}", PB_ERR_RANGE, "does not fit in 64 bits");
    expect_refused("{\"a\":99999999999999999999}", PB_ERR_RANGE, "line 1");
}

static void test_hostile_shapes(void **state)
{
    char *deep = malloc(4 * 200 + 16), *wide = malloc(1100 * 16 + 16), *p;
    struct pb_jdoc d;
    struct pb_err err;
    /* 64 levels are fine, 65 are not */
    p = deep;
    for (int i = 0; i < 64; i++)
        *p++ = '[';
    for (int i = 0; i < 64; i++)
        *p++ = ']';
    *p = '\0';
    assert_int_equal(parse(deep, &d, &err), PB_OK);
    pb_jdoc_free(&d);
    p = deep;
    for (int i = 0; i < 200; i++)
        *p++ = '[';
    for (int i = 0; i < 200; i++)
        *p++ = ']';
    *p = '\0';
    expect_refused(deep, PB_ERR_INVALID, "nested deeper than 64");
    /* 1024 members are fine, 1025 are not */
    for (int n = 1024; n <= 1025; n++) {
        size_t used = 0, cap = 1100 * 16 + 16;
        wide[used++] = '{';
        for (int i = 0; i < n; i++)
            used += (size_t)snprintf(wide + used, cap - used, "%s\"k%d\":%d", i ? "," : "", i, i);
        snprintf(wide + used, cap - used, "}");
        if (n == 1024) {
            assert_int_equal(parse(wide, &d, &err), PB_OK);
            assert_int_equal(d.root->n, 1024);
            assert_int_equal(pb_jnode_get(d.root, "k1023")->i, 1023); /* past the inline arena */
            pb_jdoc_free(&d);
        } else {
            expect_refused(wide, PB_ERR_INVALID, "more than 1024 members");
        }
    }
    free(deep);
    free(wide);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_as_jansson),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_hostile_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
