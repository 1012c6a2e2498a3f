/*
 * tests/unit/test_pan.c: Luhn, PAN scanning and in-place redaction
 * (core/pan.c).
 *
 * Besides hand-written cases, pb_pan_redact() and pb_pan_scan() are compared
 * on random byte strings with a deliberately naive reference implementation
 * below (materialise every group, try every window, mask afterwards). The
 * reference is quadratic and allocates; the real one streams in place, so
 * agreement checks the deferred masking and the window bookkeeping.
 * Test card numbers are public gateway test PANs (Opayo's 4929000000006,
 * Visa's 4111111111111111, Mastercard's 5404000000000001).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/pan.h"

/* ---- Luhn ------------------------------------------------------------------------- */

static void test_luhn(void **state)
{
    (void)state;
    assert_true(pb_luhn_valid("4929000000006", 13)); /* Opayo test Visa */
    assert_false(pb_luhn_valid("4929000000007", 13));
    assert_false(pb_luhn_valid("4929000000060", 13));
    assert_true(pb_luhn_valid("4111111111111111", 16));
    assert_true(pb_luhn_valid("5404000000000001", 16));
    assert_true(pb_luhn_valid("79927398713", 11)); /* the textbook example */
    assert_false(pb_luhn_valid("79927398710", 11));
    assert_true(pb_luhn_valid("0", 1));
    assert_false(pb_luhn_valid("", 0));
    assert_false(pb_luhn_valid(NULL, 0));
    assert_false(pb_luhn_valid("4929 000000006", 14)); /* separators are not digits */
    assert_false(pb_luhn_valid("49290000000x6", 13));
    /* Only n bytes are read: the valid 13-digit prefix of a longer string. */
    assert_true(pb_luhn_valid("49290000000061", 13));
    assert_false(pb_luhn_valid("49290000000061", 14));
}

/* ---- scan ----------------------------------------------------------------------------- */

static size_t scan_str(const char *s, size_t *first)
{
    return pb_pan_scan(s, strlen(s), first);
}

static void test_scan_finds_cards(void **state)
{
    (void)state;
    size_t first = 12345;
    assert_int_equal(scan_str("card 4929000000006 ok", &first), 1);
    assert_int_equal(first, 5);
    first = 12345;
    assert_int_equal(scan_str("4929000000006", &first), 1);
    assert_int_equal(first, 0);
    assert_int_equal(scan_str("pan=4929000000006&cv2=123", NULL), 1);
    assert_int_equal(scan_str("card4929000000006", NULL), 1); /* glued to a label */
    assert_int_equal(scan_str("4111 1111 1111 1111", NULL), 1);
    assert_int_equal(scan_str("4111-1111-1111-1111", NULL), 1);
    assert_int_equal(scan_str("4111 1111-1111 1111", NULL), 1);
    assert_int_equal(scan_str("4929 0000 0000 6", NULL), 1);
    assert_int_equal(scan_str("a 4111111111111111, b 5404000000000001.", NULL), 2);
    first = 0;
    assert_int_equal(scan_str("{\"x\":\"4111111111111111\",\"y\":\"4929000000006\"}", &first), 2);
    assert_int_equal(first, 6);
    /* Two cards separated by a single space are two cards, not one 29-digit run. */
    assert_int_equal(scan_str("4111111111111111 4929000000006", NULL), 2);
    /* A number glued in front of a card by one separator cannot hide it. */
    assert_true(scan_str("ref 12345 4929 0000 0000 6", NULL) >= 1);
    assert_true(scan_str("2024-01-15 4111 1111 1111 1111", NULL) >= 1);
}

static void test_scan_ignores_non_cards(void **state)
{
    (void)state;
    size_t first = 777;
    assert_int_equal(scan_str("card 4929000000007 ok", &first), 0); /* fails Luhn */
    assert_int_equal(first, 777);                                  /* untouched */
    assert_int_equal(scan_str("", NULL), 0);
    assert_int_equal(scan_str("no digits here", NULL), 0);
    assert_int_equal(scan_str("79927398713", NULL), 0);             /* Luhn ok, only 11 digits */
    assert_int_equal(scan_str("411111111111", NULL), 0);            /* 12 digits */
    /* 20 digits that pass Luhn: not a card, and no substring is tried. */
    assert_true(pb_luhn_valid("41111111111111110000", 20));
    assert_int_equal(scan_str("41111111111111110000", NULL), 0);
    assert_int_equal(scan_str("x41111111111111111111111111111111x", NULL), 0);
    /* Two separators break a run: "4111" and "1111 1111 1111" (12 digits). */
    assert_int_equal(scan_str("4111  1111 1111 1111", NULL), 0);
    assert_int_equal(scan_str("4111--1111-1111-1111", NULL), 0);
    assert_int_equal(scan_str("4111.1111.1111.1111", NULL), 0); /* dots are not separators */
    assert_int_equal(scan_str("4111_1111_1111_1111", NULL), 0);
    assert_int_equal(scan_str("+44 20 7946 0958", NULL), 0);     /* a phone number */
}

static void test_scan_binary_and_bounds(void **state)
{
    (void)state;
    const char bin[] = "\x00\xff\x01 4929000000006\x00 4111111111111111\xfe";
    size_t first = 0;
    char exact[13];

    assert_int_equal(pb_pan_scan(bin, sizeof(bin) - 1, &first), 2);
    assert_int_equal(first, 4);
    /* The length is honoured: the 13th digit is outside the buffer. */
    assert_int_equal(pb_pan_scan("4929000000006", 12, NULL), 0);
    assert_int_equal(pb_pan_scan("4929000000006", 0, NULL), 0);
    assert_int_equal(pb_pan_scan(NULL, 10, NULL), 0);
    /* No NUL terminator anywhere: ASan catches any read past the end. */
    memcpy(exact, "4929000000006", 13);
    assert_int_equal(pb_pan_scan(exact, sizeof(exact), NULL), 1);
    assert_int_equal(pb_pan_redact(exact, sizeof(exact)), 1);
    assert_memory_equal(exact, "*********0006", 13);
    /* A trailing separator at the very end of the buffer. */
    assert_int_equal(pb_pan_scan("4929000000006 ", 14, NULL), 1);
    assert_int_equal(pb_pan_scan("4929000000006-", 14, NULL), 1);
}

static int is_digit_char(char c) { return c >= '0' && c <= '9'; }

/* ---- redact ----------------------------------------------------------------------------- */

static void expect_redact(const char *in, const char *want, size_t want_count)
{
    char buf[256];
    size_t n = strlen(in);
    assert_true(n < sizeof(buf));
    memcpy(buf, in, n + 1);
    assert_int_equal(pb_pan_redact(buf, n), want_count);
    assert_string_equal(buf, want);
    assert_int_equal(pb_pan_scan(in, n, NULL), want_count);
    /* Redaction is idempotent: nothing left to find. */
    assert_int_equal(pb_pan_redact(buf, n), 0);
    assert_string_equal(buf, want);
}

static void test_redact_keeps_last_four(void **state)
{
    (void)state;
    expect_redact("card 4929000000006 ok", "card *********0006 ok", 1);
    expect_redact("4111 1111 1111 1111", "**** **** **** 1111", 1);
    expect_redact("4111-1111-1111-1111", "****-****-****-1111", 1);
    expect_redact("4929 0000 0000 6", "**** **** *000 6", 1);
    expect_redact("a 4111111111111111, b 5404000000000001.",
                  "a ************1111, b ************0001.", 2);
    expect_redact("4111111111111111 4929000000006", "************1111 *********0006", 2);
    expect_redact("card 4929000000007 ok", "card 4929000000007 ok", 0);
    expect_redact("order 41111111111111110000", "order 41111111111111110000", 0);
    expect_redact("no digits", "no digits", 0);
}

static void test_redact_glued_number_does_not_leak(void **state)
{
    (void)state;
    /* Whatever windows match in these runs, no more than the last four digits of
     * the real card may survive. */
    static const struct {
        const char *text; /* input */
        const char *card; /* where the real card starts in it */
        size_t card_len;  /* its digits */
    } cases[] = {
        {"ref 12345 4929 0000 0000 6", "4929", 13},
        {"2024-01-15 4111 1111 1111 1111", "4111", 16},
        {"1 2 3 4 5 6 7 8 9 4111-1111-1111-1111", "4111", 16},
        {"4111 1111 1111 1111 1 2 3", "4111", 16},
        {"9 4111111111111111 9", "4111", 16},
        {"00 5404 0000 0000 0001 00", "5404", 16},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[128];
        const char *in = cases[i].text;
        size_t n = strlen(in), card_digits = 0, start = (size_t)(strstr(in, cases[i].card) - in);
        memcpy(buf, in, n + 1);
        assert_true(pb_pan_redact(buf, n) >= 1);
        for (size_t k = start; k < n; k++)
            if (is_digit_char(in[k]))
                card_digits++;
        /* Of the card's digits, only its last four may survive. */
        for (size_t k = start, seen = 0; k < n && seen < cases[i].card_len - 4; k++) {
            if (!is_digit_char(in[k]))
                continue;
            if (buf[k] != '*')
                fail_msg("case \"%s\" -> \"%s\": digit at %zu survived", in, buf, k);
            seen++;
        }
        assert_true(card_digits >= 13);
    }
}

static void test_redact_binary(void **state)
{
    (void)state;
    char bin[] = "\x00\xff 4929000000006\x00\x80";
    const char want[] = "\x00\xff *********0006\x00\x80";
    assert_int_equal(pb_pan_redact(bin, sizeof(bin) - 1), 1);
    assert_memory_equal(bin, want, sizeof(bin));
    assert_int_equal(pb_pan_redact(NULL, 5), 0);
}

/* ---- reference implementation and random comparison ---------------------------------- */

struct group {
    size_t start, end; /* byte range of the digits */
    int run;           /* groups with the same run id are joined by one separator */
};

static size_t reference_redact(char *t, size_t len, size_t *first)
{
    struct group *g = calloc(len + 1, sizeof(*g));
    char *mask = calloc(len + 1, 1);
    size_t ng = 0, count = 0, comp_end = 0;
    int have_comp = 0, run = 0;

    for (size_t i = 0; i < len;) {
        if (!is_digit_char(t[i])) {
            i++;
            continue;
        }
        g[ng].start = i;
        while (i < len && is_digit_char(t[i]))
            i++;
        g[ng].end = i;
        if (ng > 0 && g[ng - 1].run == run && g[ng].start == g[ng - 1].end + 1 &&
            (t[g[ng - 1].end] == ' ' || t[g[ng - 1].end] == '-'))
            g[ng].run = run;
        else
            g[ng].run = ++run;
        ng++;
    }
    for (size_t a = 0; a < ng; a++) {
        for (size_t b = a; b < ng && g[b].run == g[a].run; b++) {
            char digits[64];
            size_t nd = 0, pos[64];
            for (size_t k = a; k <= b; k++)
                for (size_t x = g[k].start; x < g[k].end; x++) {
                    if (nd < sizeof(digits)) {
                        digits[nd] = t[x];
                        pos[nd] = x;
                    }
                    nd++;
                }
            if (nd > 19)
                break;
            if (nd < 13 || !pb_luhn_valid(digits, nd))
                continue;
            for (size_t k = 0; k + 4 < nd; k++)
                mask[pos[k]] = 1;
            if (have_comp && g[a].start < comp_end) {
                if (g[b].end > comp_end)
                    comp_end = g[b].end;
            } else {
                if (count == 0 && first)
                    *first = g[a].start;
                count++;
                have_comp = 1;
                comp_end = g[b].end;
            }
        }
    }
    for (size_t i = 0; i < len; i++)
        if (mask[i])
            t[i] = '*';
    free(g);
    free(mask);
    return count;
}

static void test_random_against_reference(void **state)
{
    (void)state;
    /* Digits dominate so that windows of 13..19 digits (and Luhn hits) are common. */
    static const char alphabet[] = "01234567890123456789012345678901234567894444  --x.\0\xff";
    unsigned seed = 20261121u;
    size_t total_hits = 0;

    for (int iter = 0; iter < 20000; iter++) {
        char a[160], b[160];
        size_t len, n_real, n_ref, f_ref = 999, f_scan = 999;
        seed = seed * 1103515245u + 12345u;
        len = (seed >> 16) % sizeof(a);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            a[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
        }
        memcpy(b, a, len);
        n_ref = reference_redact(b, len, &f_ref);
        n_real = pb_pan_scan(a, len, &f_scan);
        if (n_real != n_ref || (n_ref && f_scan != f_ref))
            fail_msg("iteration %d: scan %zu@%zu, reference %zu@%zu", iter, n_real, f_scan, n_ref,
                     f_ref);
        assert_int_equal(pb_pan_redact(a, len), n_ref);
        if (memcmp(a, b, len) != 0)
            fail_msg("iteration %d: redaction differs from the reference", iter);
        total_hits += n_ref;
    }
    /* The generator must actually exercise the matching paths. */
    assert_true(total_hits > 1000);
}

/* ---- size and shape stress (no timing assertions; see bench/ for speed) -------------- */

static void test_large_hostile_inputs(void **state)
{
    (void)state;
    size_t n = 4u << 20; /* 4 MiB */
    char *buf = malloc(n);

    /* One giant digit group: never a card. */
    memset(buf, '4', n);
    assert_int_equal(pb_pan_scan(buf, n, NULL), 0);
    /* "1 1 1 1 ..." : the most windows per byte. */
    for (size_t i = 0; i < n; i++)
        buf[i] = (i & 1) ? ' ' : '1';
    (void)pb_pan_scan(buf, n, NULL);
    (void)pb_pan_redact(buf, n);
    for (size_t i = 0; i < n; i++)
        assert_true(buf[i] == ' ' || buf[i] == '1' || buf[i] == '*');
    /* Repeated cards separated by ", ". */
    for (size_t i = 0; i + 18 <= n; i += 18)
        memcpy(buf + i, "4111111111111111, ", 18);
    assert_int_equal(pb_pan_redact(buf, n), n / 18);
    assert_memory_equal(buf, "************1111, ", 18);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_luhn),
        cmocka_unit_test(test_scan_finds_cards),
        cmocka_unit_test(test_scan_ignores_non_cards),
        cmocka_unit_test(test_scan_binary_and_bounds),
        cmocka_unit_test(test_redact_keeps_last_four),
        cmocka_unit_test(test_redact_glued_number_does_not_leak),
        cmocka_unit_test(test_redact_binary),
        cmocka_unit_test(test_random_against_reference),
        cmocka_unit_test(test_large_hostile_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
