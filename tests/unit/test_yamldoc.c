/*
 * tests/unit/test_yamldoc.c: YAML -> jansson with line numbers
 * (core/yamldoc.c), and the diagnostics list it reports into (core/diag.c).
 *
 * What is pinned down here: the scalar typing rules (no value may change type
 * by surprise: "091" stays text, 10.99 stays text, yes stays text), the line
 * of nodes and of keys, and every rejection (duplicate keys, anchors,
 * aliases, merge keys, tags, several documents, syntax errors with line and
 * column, nesting and size limits), including that several problems are
 * reported in one pass.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/diag.h"
#include "core/yamldoc.h"

/* ---- helpers ---------------------------------------------------------------------- */

static struct pb_yamldoc *load_ok(const char *text)
{
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    enum pb_rc rc = pb_yamldoc_load_string("t.yaml", text, &doc, &d);
    if (rc != PB_OK) {
        pb_diags_print(&d, stderr);
        fail_msg("load failed with rc %d", rc);
    }
    assert_int_equal(pb_diags_count(&d), 0);
    pb_diags_free(&d);
    return doc;
}

/* Expect failure with rc, and a problem at `line` whose message has `frag`. */
static void expect_problem(const char *text, enum pb_rc want_rc, int line, const char *frag)
{
    struct pb_yamldoc *doc = (struct pb_yamldoc *)0x1;
    struct pb_diags d = {0};
    enum pb_rc rc = pb_yamldoc_load_string("bad.yaml", text, &doc, &d);
    size_t i;
    if (rc != want_rc)
        fail_msg("rc %d, want %d for:\n%s", rc, want_rc, text);
    assert_null(doc);
    for (i = 0; i < d.n; i++)
        if (d.v[i].line == line && strstr(d.v[i].msg, frag) && strcmp(d.v[i].file, "bad.yaml") == 0)
            break;
    if (i == d.n) {
        pb_diags_print(&d, stderr);
        fail_msg("no problem at line %d containing \"%s\"", line, frag);
    }
    pb_diags_free(&d);
}

/* ---- scalar typing ------------------------------------------------------------------- */

static void test_scalar_typing(void **state)
{
    (void)state;
    struct pb_yamldoc *doc = load_ok("int: 42\n"
                                     "neg: -7\n"
                                     "zero: 0\n"
                                     "lead: 091\n"
                                     "dec: 10.99\n"
                                     "rate: 0.8571\n"
                                     "exp: 1e3\n"
                                     "big: 123456789012345678901234\n"
                                     "quoted: \"42\"\n"
                                     "single: '7'\n"
                                     "t: true\n"
                                     "T: True\n"
                                     "f: false\n"
                                     "yes: yes\n"
                                     "no: NO\n"
                                     "n1: null\n"
                                     "n2: ~\n"
                                     "n3:\n"
                                     "qnull: \"null\"\n"
                                     "str: !!str 12\n"
                                     "hex: 0x1F\n"
                                     "plus: +5\n"
                                     "date: 2026-11-21\n"
                                     "block: |\n"
                                     "  line one\n"
                                     "  line two\n");
    json_t *r = pb_yamldoc_root(doc);
    assert_true(json_is_object(r));
    assert_true(json_is_integer(json_object_get(r, "int")));
    assert_int_equal(json_integer_value(json_object_get(r, "int")), 42);
    assert_int_equal(json_integer_value(json_object_get(r, "neg")), -7);
    assert_true(json_is_integer(json_object_get(r, "zero")));
    assert_string_equal(json_string_value(json_object_get(r, "lead")), "091");
    assert_string_equal(json_string_value(json_object_get(r, "dec")), "10.99");
    assert_string_equal(json_string_value(json_object_get(r, "rate")), "0.8571");
    assert_string_equal(json_string_value(json_object_get(r, "exp")), "1e3");
    assert_string_equal(json_string_value(json_object_get(r, "big")), "123456789012345678901234");
    assert_string_equal(json_string_value(json_object_get(r, "quoted")), "42");
    assert_string_equal(json_string_value(json_object_get(r, "single")), "7");
    assert_true(json_is_true(json_object_get(r, "t")));
    assert_true(json_is_true(json_object_get(r, "T")));
    assert_true(json_is_false(json_object_get(r, "f")));
    assert_string_equal(json_string_value(json_object_get(r, "yes")), "yes");
    assert_string_equal(json_string_value(json_object_get(r, "no")), "NO");
    assert_true(json_is_null(json_object_get(r, "n1")));
    assert_true(json_is_null(json_object_get(r, "n2")));
    assert_true(json_is_null(json_object_get(r, "n3")));
    assert_string_equal(json_string_value(json_object_get(r, "qnull")), "null");
    assert_string_equal(json_string_value(json_object_get(r, "str")), "12");
    assert_string_equal(json_string_value(json_object_get(r, "hex")), "0x1F");
    assert_string_equal(json_string_value(json_object_get(r, "plus")), "+5");
    assert_string_equal(json_string_value(json_object_get(r, "date")), "2026-11-21");
    assert_string_equal(json_string_value(json_object_get(r, "block")), "line one\nline two\n");
    /* no double anywhere */
    {
        const char *k;
        json_t *v;
        json_object_foreach(r, k, v) assert_false(json_is_real(v));
    }
    pb_yamldoc_free(doc);
}

static void test_int64_edges(void **state)
{
    (void)state;
    struct pb_yamldoc *doc = load_ok("max: 9223372036854775807\n"
                                     "min: -9223372036854775808\n"
                                     "over: 9223372036854775808\n");
    json_t *r = pb_yamldoc_root(doc);
    assert_int_equal(json_integer_value(json_object_get(r, "max")), INT64_MAX);
    assert_int_equal(json_integer_value(json_object_get(r, "min")), INT64_MIN);
    assert_string_equal(json_string_value(json_object_get(r, "over")), "9223372036854775808");
    pb_yamldoc_free(doc);
}

static void test_empty_document(void **state)
{
    (void)state;
    struct pb_yamldoc *doc = load_ok("# only a comment\n");
    assert_true(json_is_null(pb_yamldoc_root(doc)));
    pb_yamldoc_free(doc);
    doc = load_ok("");
    assert_true(json_is_null(pb_yamldoc_root(doc)));
    pb_yamldoc_free(doc);
}

/* ---- lines -------------------------------------------------------------------------- */

static void test_lines(void **state)
{
    (void)state;
    const char *text = "# comment\n"                  /* 1 */
                       "name: flow-a\n"               /* 2 */
                       "\n"                           /* 3 */
                       "steps:\n"                     /* 4 */
                       "  - name: one\n"              /* 5 */
                       "    count: 3\n"               /* 6 */
                       "    flag: true\n"             /* 7 */
                       "  - name: two\n"              /* 8 */
                       "    doc: {a: x, b: [p, q]}\n" /* 9 */
                       "list:\n"                      /* 10 */
                       "  - 1\n"                      /* 11 */
                       "  -\n"                        /* 12 */
                       "    text\n";                  /* 13 */
    struct pb_yamldoc *doc = load_ok(text);
    json_t *r = pb_yamldoc_root(doc), *steps = json_object_get(r, "steps");
    json_t *one = json_array_get(steps, 0), *two = json_array_get(steps, 1);
    json_t *d = json_object_get(two, "doc"), *list = json_object_get(r, "list");

    assert_int_equal(pb_yamldoc_line(doc, r), 2);
    assert_int_equal(pb_yamldoc_line(doc, json_object_get(r, "name")), 2);
    assert_int_equal(pb_yamldoc_key_line(doc, r, "steps"), 4);
    assert_int_equal(pb_yamldoc_line(doc, steps), 5);
    assert_int_equal(pb_yamldoc_line(doc, one), 5);
    assert_int_equal(pb_yamldoc_line(doc, json_object_get(one, "count")), 6);
    /* true is a jansson singleton: no line of its own, but its key has one */
    assert_int_equal(pb_yamldoc_line(doc, json_object_get(one, "flag")), 0);
    assert_int_equal(pb_yamldoc_key_line(doc, one, "flag"), 7);
    assert_int_equal(pb_yamldoc_line(doc, two), 8);
    assert_int_equal(pb_yamldoc_key_line(doc, two, "name"), 8);
    assert_int_equal(pb_yamldoc_line(doc, d), 9);
    assert_int_equal(pb_yamldoc_key_line(doc, d, "b"), 9);
    assert_int_equal(pb_yamldoc_line(doc, json_array_get(json_object_get(d, "b"), 1)), 9);
    assert_int_equal(pb_yamldoc_line(doc, json_array_get(list, 0)), 11);
    assert_int_equal(pb_yamldoc_line(doc, json_array_get(list, 1)), 13);
    /* unknown nodes and keys */
    assert_int_equal(pb_yamldoc_key_line(doc, r, "nope"), 0);
    assert_int_equal(pb_yamldoc_key_line(doc, one, "steps"), 0);
    {
        json_t *other = json_string("x");
        assert_int_equal(pb_yamldoc_line(doc, other), 0);
        json_decref(other);
    }
    assert_string_equal(pb_yamldoc_file(doc), "t.yaml");
    {
        size_t len;
        assert_string_equal(pb_yamldoc_text(doc, &len), text);
        assert_int_equal(len, strlen(text));
    }
    pb_yamldoc_free(doc);
}

/* many nodes: the line table grows and keeps every entry */
static void test_lines_many(void **state)
{
    (void)state;
    size_t n = 5000, cap = n * 24 + 16, len = 0;
    char *text = malloc(cap);
    struct pb_yamldoc *doc;
    json_t *r;
    assert_non_null(text);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(text + len, cap - len, "k%zu: v%zu\n", i, i);
    doc = load_ok(text);
    r = pb_yamldoc_root(doc);
    assert_int_equal(json_object_size(r), n);
    for (size_t i = 0; i < n; i += 97) {
        char k[32];
        snprintf(k, sizeof(k), "k%zu", i);
        assert_int_equal(pb_yamldoc_key_line(doc, r, k), (int)i + 1);
        assert_int_equal(pb_yamldoc_line(doc, json_object_get(r, k)), (int)i + 1);
    }
    pb_yamldoc_free(doc);
    free(text);
}

/* ---- rejections ----------------------------------------------------------------------- */

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_problem("a: 1\nb: 2\na: 3\n", PB_ERR_CONFIG, 3,
                   "duplicate key \"a\" (first defined at line 1)");
    expect_problem("top:\n  x: 1\n  y:\n    - 1\n  x: {q: 1}\n", PB_ERR_CONFIG, 5,
                   "duplicate key \"x\"");
}

static void test_several_problems_in_one_pass(void **state)
{
    (void)state;
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    enum pb_rc rc = pb_yamldoc_load_string("m.yaml",
                                           "a: 1\n"
                                           "a: 2\n"
                                           "b: &anchor 3\n"
                                           "c: *anchor\n"
                                           "d: {x: 1, x: 2}\n",
                                           &doc, &d);
    assert_int_equal(rc, PB_ERR_CONFIG);
    assert_null(doc);
    assert_int_equal(d.n, 4);
    assert_int_equal(d.v[0].line, 2);
    assert_int_equal(d.v[1].line, 3);
    assert_non_null(strstr(d.v[1].msg, "anchors (&anchor) are not supported"));
    assert_int_equal(d.v[2].line, 4);
    assert_non_null(strstr(d.v[2].msg, "aliases (*anchor) are not supported"));
    assert_int_equal(d.v[3].line, 5);
    pb_diags_free(&d);
}

static void test_anchors_aliases_merge(void **state)
{
    (void)state;
    expect_problem("base: &b {x: 1}\n", PB_ERR_CONFIG, 1, "anchors (&b) are not supported");
    expect_problem("l: &l [1]\n", PB_ERR_CONFIG, 1, "anchors (&l)");
    expect_problem("a: x\nb:\n  - *a\n", PB_ERR_CONFIG, 3, "aliases (*a) are not supported");
    expect_problem("a:\n  <<: {x: 1}\n  y: 2\n", PB_ERR_CONFIG, 2,
                   "merge keys (<<) are not supported");
}

static void test_tags(void **state)
{
    (void)state;
    expect_problem("a: !!int 5\n", PB_ERR_CONFIG, 1,
                   "the tag tag:yaml.org,2002:int is not supported");
    expect_problem("a: !custom x\n", PB_ERR_CONFIG, 1, "is not supported");
    expect_problem("a: !!set {x: 1}\n", PB_ERR_CONFIG, 1, "is not supported");
}

static void test_multiple_documents(void **state)
{
    (void)state;
    expect_problem("a: 1\n---\nb: 2\n", PB_ERR_CONFIG, 2, "a second YAML document");
}

static void test_syntax_error_line_column(void **state)
{
    (void)state;
    expect_problem("a: 1\nb: [1, 2\nc: 3\n", PB_ERR_CONFIG, 3, "YAML syntax error (line 3, column");
    expect_problem("a: 1\n  b: 2\n", PB_ERR_CONFIG, 2, "line 2, column 4");
    expect_problem("key: \"unterminated\n", PB_ERR_CONFIG, 2, "syntax error");
    expect_problem("a:\tb\n\tc: d\n", PB_ERR_CONFIG, 2, "syntax error");
}

static void test_complex_and_nul_keys(void **state)
{
    (void)state;
    expect_problem("? [a, b]\n: 1\n", PB_ERR_CONFIG, 1, "a mapping key must be a plain value");
    expect_problem("\"a\\0b\": 1\n", PB_ERR_CONFIG, 1, "NUL");
}

static void test_depth_limit(void **state)
{
    (void)state;
    char text[1024];
    size_t len = 0;
    /* 64 levels load, 65 do not */
    for (int i = 0; i < PB_YAMLDOC_MAX_DEPTH; i++)
        text[len++] = '[';
    for (int i = 0; i < PB_YAMLDOC_MAX_DEPTH; i++)
        text[len++] = ']';
    text[len] = '\0';
    pb_yamldoc_free(load_ok(text));
    len = 0;
    for (int i = 0; i < PB_YAMLDOC_MAX_DEPTH + 1; i++)
        text[len++] = '[';
    for (int i = 0; i < PB_YAMLDOC_MAX_DEPTH + 1; i++)
        text[len++] = ']';
    text[len] = '\0';
    expect_problem(text, PB_ERR_CONFIG, 1, "nesting deeper than 64 levels");
}

static void test_size_limit(void **state)
{
    (void)state;
    size_t n = PB_YAMLDOC_MAX_BYTES + 1;
    char *big = malloc(n + 1);
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    assert_non_null(big);
    memset(big, '#', n);
    big[n] = '\0';
    assert_int_equal(pb_yamldoc_load_string("big.yaml", big, &doc, &d), PB_ERR_TOOBIG);
    assert_null(doc);
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.v[0].msg, "limit"));
    pb_diags_free(&d);
    /* exactly at the limit is fine (a comment-only document) */
    big[n - 1] = '\0';
    big[n - 2] = '\n';
    assert_int_equal(pb_yamldoc_load_string("big.yaml", big, &doc, &d), PB_OK);
    pb_yamldoc_free(doc);
    pb_diags_free(&d);
    free(big);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    assert_int_equal(pb_yamldoc_load_buffer("u.yaml", "a: \xff\xfe\n", 6, &doc, &d), PB_ERR_CONFIG);
    assert_null(doc);
    assert_true(d.n >= 1);
    pb_diags_free(&d);
}

/* ---- files ---------------------------------------------------------------------------------- */

static void test_load_file(void **state)
{
    (void)state;
    const char *src = getenv("PB_SOURCE_DIR");
    char path[1024];
    struct pb_yamldoc *doc = NULL;
    struct pb_diags d = {0};
    json_t *r;

    snprintf(path, sizeof(path), "%s/flows/opayo-xero.yaml", src ? src : ".");
    assert_int_equal(pb_yamldoc_load_file(path, &doc, &d), PB_OK);
    r = pb_yamldoc_root(doc);
    assert_string_equal(json_string_value(json_object_get(r, "flow")), "opayo-xero-payments");
    /* money-ish values stay text */
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r, "fx"), "rates"), "EUR")),
                        "0.8571");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r, "vars"), "bank_account")), "091");
    assert_true(pb_yamldoc_key_line(doc, r, "steps") > pb_yamldoc_key_line(doc, r, "flow"));
    assert_string_equal(pb_yamldoc_file(doc), path);
    pb_yamldoc_free(doc);

    snprintf(path, sizeof(path), "%s/tests/fixtures/flows/no-such-file.yaml", src ? src : ".");
    assert_int_equal(pb_yamldoc_load_file(path, &doc, &d), PB_ERR_IO);
    assert_null(doc);
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.v[0].msg, "cannot open"));
    pb_diags_free(&d);
}

/* ---- the diagnostics list ------------------------------------------------------------------- */

static void test_diags_print_and_limit(void **state)
{
    (void)state;
    struct pb_diags d = {0};
    struct pb_err err = {0};
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    pb_diags_add(&d, "a.yaml", 12, "unknown key `%s`", "taget");
    pb_diags_add(&d, "a.yaml", 0, "no line");
    pb_diags_add(&d, NULL, 0, "no file");
    pb_diags_add(NULL, "x", 1, "ignored");
    f = open_memstream(&buf, &len);
    pb_diags_print(&d, f);
    fclose(f);
    assert_string_equal(buf, "a.yaml:12: unknown key `taget`\na.yaml: no line\nno file\n");
    free(buf);
    assert_int_equal(pb_diags_to_err(&d, PB_ERR_CONFIG, &err), PB_ERR_CONFIG);
    assert_string_equal(err.msg, "a.yaml:12: unknown key `taget` (and 2 more problems)");
    pb_diags_free(&d);
    assert_int_equal(pb_diags_count(&d), 0);
    assert_int_equal(pb_diags_to_err(&d, PB_ERR_CONFIG, &err), PB_OK);

    for (int i = 0; i < PB_DIAGS_MAX + 5; i++)
        pb_diags_add(&d, "b.yaml", i + 1, "problem %d", i);
    assert_int_equal(d.n, PB_DIAGS_MAX);
    assert_int_equal(d.dropped, 5);
    assert_int_equal(pb_diags_count(&d), PB_DIAGS_MAX + 5);
    f = open_memstream(&buf, &len);
    pb_diags_print(&d, f);
    fclose(f);
    assert_non_null(strstr(buf, "... and 5 more problems\n"));
    free(buf);
    pb_diags_free(&d);

    /* a long path keeps its tail */
    {
        char longpath[600];
        memset(longpath, 'd', sizeof(longpath));
        memcpy(longpath + sizeof(longpath) - 12, "/flow-x.yaml", 12);
        longpath[sizeof(longpath) - 1] = '\0';
        pb_diags_add(&d, longpath, 3, "m");
        assert_int_equal(strncmp(d.v[0].file, "...", 3), 0);
        assert_non_null(strstr(d.v[0].file, "/flow-x.yam"));
        pb_diags_free(&d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar_typing),
        cmocka_unit_test(test_int64_edges),
        cmocka_unit_test(test_empty_document),
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_lines_many),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_several_problems_in_one_pass),
        cmocka_unit_test(test_anchors_aliases_merge),
        cmocka_unit_test(test_tags),
        cmocka_unit_test(test_multiple_documents),
        cmocka_unit_test(test_syntax_error_line_column),
        cmocka_unit_test(test_complex_and_nul_keys),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_diags_print_and_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
