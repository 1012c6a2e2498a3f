/*
 * tests/unit/test_retry.c: the backoff formula of engine/retry.c with fixed
 * random values (exact expected delays), its cap, the Retry-After floor, the
 * overflow guard for huge attempt numbers, exhaustion boundaries, defaults,
 * and a sanity check of pb_retry_random().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/retry.h"

#define HALF (1u << 31)

static void test_defaults(void **state)
{
    struct pb_retry_policy p;
    (void)state;
    pb_retry_policy_default(&p);
    assert_int_equal(p.base_ms, 500);
    assert_int_equal(p.cap_ms, 300000);
    assert_int_equal(p.max_attempts, 10);
}

static void test_exact_delays(void **state)
{
    struct pb_retry_policy p;
    (void)state;
    pb_retry_policy_default(&p);
    /* attempt 1: ceiling = base = 500 */
    assert_int_equal(pb_retry_delay_ms(&p, 1, 0, -1), 0);
    assert_int_equal(pb_retry_delay_ms(&p, 1, HALF, -1), 250);
    assert_int_equal(pb_retry_delay_ms(&p, 1, UINT32_MAX, -1), 499);
    /* doubling */
    assert_int_equal(pb_retry_delay_ms(&p, 2, HALF, -1), 500);
    assert_int_equal(pb_retry_delay_ms(&p, 3, HALF, -1), 1000);
    assert_int_equal(pb_retry_delay_ms(&p, 4, 1u << 30, -1), 1000); /* a quarter of 4000 */
    /* attempt 10: 500 * 2^9 = 256000 < cap */
    assert_int_equal(pb_retry_delay_ms(&p, 10, HALF, -1), 128000);
    /* attempt 11: 512000 > cap 300000 */
    assert_int_equal(pb_retry_delay_ms(&p, 11, HALF, -1), 150000);
    assert_int_equal(pb_retry_delay_ms(&p, 11, UINT32_MAX, -1), 299999);
    /* attempt 0 is read as 1 */
    assert_int_equal(pb_retry_delay_ms(&p, 0, HALF, -1), 250);
}

static void test_cap_never_exceeded(void **state)
{
    struct pb_retry_policy p = {.base_ms = 500, .cap_ms = 300000, .max_attempts = 10};
    (void)state;
    for (uint32_t a = 1; a < 2000; a++) {
        assert_true(pb_retry_delay_ms(&p, a, UINT32_MAX, -1) < p.cap_ms);
        assert_true(pb_retry_delay_ms(&p, a, HALF, -1) <= p.cap_ms / 2);
    }
    /* huge attempts: the shift is capped, no overflow, still capped */
    assert_int_equal(pb_retry_delay_ms(&p, 33, HALF, -1), 150000);
    assert_int_equal(pb_retry_delay_ms(&p, 64, HALF, -1), 150000);
    assert_int_equal(pb_retry_delay_ms(&p, 65, HALF, -1), 150000);
    assert_int_equal(pb_retry_delay_ms(&p, UINT32_MAX, HALF, -1), 150000);

    /* the largest policy the types allow */
    struct pb_retry_policy big = {.base_ms = UINT32_MAX, .cap_ms = UINT32_MAX, .max_attempts = 1};
    assert_int_equal(pb_retry_delay_ms(&big, UINT32_MAX, UINT32_MAX, -1), UINT32_MAX - 1u);
    assert_int_equal(pb_retry_delay_ms(&big, 1, HALF, -1), UINT32_MAX / 2);

    /* cap below base: every delay is under cap */
    struct pb_retry_policy odd = {.base_ms = 1000, .cap_ms = 100, .max_attempts = 3};
    assert_int_equal(pb_retry_delay_ms(&odd, 1, HALF, -1), 50);
}

static void test_retry_after_is_a_floor(void **state)
{
    struct pb_retry_policy p;
    (void)state;
    pb_retry_policy_default(&p);
    assert_int_equal(pb_retry_delay_ms(&p, 1, 0, 2000), 2000);
    assert_int_equal(pb_retry_delay_ms(&p, 1, HALF, 0), 250);     /* smaller: no effect */
    assert_int_equal(pb_retry_delay_ms(&p, 5, HALF, 3000), 4000); /* jitter larger */
    /* the only way above cap: a larger Retry-After */
    assert_int_equal(pb_retry_delay_ms(&p, 30, UINT32_MAX, 600000), 600000);
    assert_int_equal(pb_retry_delay_ms(&p, 1, HALF, -1), 250);    /* -1 = none */
    assert_int_equal(pb_retry_delay_ms(&p, 1, HALF, INT64_MIN), 250);
}

static void test_exhausted(void **state)
{
    struct pb_retry_policy p;
    (void)state;
    pb_retry_policy_default(&p);
    assert_false(pb_retry_exhausted(&p, 0));
    assert_false(pb_retry_exhausted(&p, 1));
    assert_false(pb_retry_exhausted(&p, 9));
    assert_true(pb_retry_exhausted(&p, 10));
    assert_true(pb_retry_exhausted(&p, 11));
    assert_true(pb_retry_exhausted(&p, UINT32_MAX));
    p.max_attempts = 1; /* a single try, never retried */
    assert_false(pb_retry_exhausted(&p, 0));
    assert_true(pb_retry_exhausted(&p, 1));
}

static void test_zero_policy_means_defaults(void **state)
{
    struct pb_retry_policy zero = {0};
    (void)state;
    assert_int_equal(pb_retry_delay_ms(&zero, 1, HALF, -1), 250);
    assert_int_equal(pb_retry_delay_ms(&zero, 20, HALF, -1), 150000);
    assert_false(pb_retry_exhausted(&zero, 9));
    assert_true(pb_retry_exhausted(&zero, 10));
    assert_int_equal(pb_retry_delay_ms(NULL, 1, HALF, -1), 250);
}

static void test_random(void **state)
{
    enum { N = 20000 };
    uint64_t sum = 0;
    uint32_t first = pb_retry_random(), min = UINT32_MAX, max = 0;
    int all_same = 1;
    (void)state;
    for (int i = 0; i < N; i++) {
        uint32_t r = pb_retry_random();
        if (r != first)
            all_same = 0;
        if (r < min)
            min = r;
        if (r > max)
            max = r;
        sum += r >> 8; /* keep the sum in range */
    }
    assert_false(all_same);
    /* mean of uniform [0, 2^24) is 2^23; allow a wide margin (sigma ~ 0.2%) */
    uint64_t mean = sum / N;
    assert_true(mean > (1u << 23) * 95 / 100 && mean < (1u << 23) * 105 / 100);
    assert_true(min < (1u << 24));   /* low tail reached */
    assert_true(max > UINT32_MAX - (1u << 24)); /* high tail reached */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_exact_delays),
        cmocka_unit_test(test_cap_never_exceeded),
        cmocka_unit_test(test_retry_after_is_a_floor),
        cmocka_unit_test(test_exhausted),
        cmocka_unit_test(test_zero_policy_means_defaults),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
