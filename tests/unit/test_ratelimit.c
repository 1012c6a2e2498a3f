/*
 * tests/unit/test_ratelimit.c: net/ratelimit.c with an injected clock.
 *
 * Most cases drive pb__ratelimit_try() at chosen instants, so "would wait
 * 1 s" is checked exactly and nothing sleeps. Two cases use real time on
 * purpose, with waits of tens of milliseconds: a blocked acquire() woken by
 * release() from another thread, and a slot wait that runs into max_wait_ms.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "net/ratelimit.h"

#define MS 1000000ull
#define S 1000000000ull
#define T0 (1000 * S) /* the fake clock never starts at 0 */

struct fake_clock {
    uint64_t now;
};

static uint64_t fake_now(void *ctx) { return ((struct fake_clock *)ctx)->now; }

static struct pb_ratelimit *make(unsigned per_minute, unsigned per_day, unsigned concurrent,
                                 unsigned max_wait_ms, struct fake_clock *clk)
{
    struct pb_ratelimit_config cfg = {per_minute, per_day, concurrent, max_wait_ms};
    struct pb_ratelimit *rl = NULL;
    struct pb_err err;
    assert_int_equal(pb_ratelimit_new(&cfg, &rl, &err), PB_OK);
    if (clk) {
        clk->now = T0;
        pb_ratelimit_set_clock(rl, fake_now, clk);
    }
    return rl;
}

/* try + release at once: only the buckets matter */
static int take(struct pb_ratelimit *rl, uint64_t now, uint64_t *wait)
{
    int ok = pb__ratelimit_try(rl, now, wait);
    if (ok)
        pb_ratelimit_release(rl);
    return ok;
}

static void test_sixty_per_minute(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(60, 0, 0, 0, &clk);
    uint64_t wait = 12345;
    (void)state;
    for (int i = 0; i < 60; i++) {
        assert_true(take(rl, T0, &wait));
        assert_int_equal(wait, 0);
    }
    assert_false(take(rl, T0, &wait));
    assert_int_equal(wait, 1 * S); /* exactly one token's refill time */
    assert_false(take(rl, T0 + 999 * MS, &wait));
    assert_int_equal(wait, 1 * MS);
    assert_true(take(rl, T0 + 1 * S, &wait));
    assert_false(take(rl, T0 + 1 * S, &wait));
    assert_int_equal(wait, 1 * S);
    pb_ratelimit_free(rl);
}

static void test_refill_over_time(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(60, 0, 0, 0, &clk);
    uint64_t wait;
    int n;
    (void)state;
    for (n = 0; take(rl, T0, &wait); n++)
        ;
    assert_int_equal(n, 60);
    /* 30 s later: 30 tokens */
    for (n = 0; take(rl, T0 + 30 * S, &wait); n++)
        ;
    assert_int_equal(n, 30);
    /* 10 minutes later: full, but never above capacity */
    for (n = 0; take(rl, T0 + 630 * S, &wait); n++)
        ;
    assert_int_equal(n, 60);
    /* half a token of refill is not a token */
    assert_false(take(rl, T0 + 630 * S + 500 * MS, &wait));
    assert_int_equal(wait, 500 * MS);
    pb_ratelimit_free(rl);
}

static void test_day_bucket(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(0, 5000, 0, 0, &clk);
    uint64_t wait;
    int n;
    (void)state;
    for (n = 0; take(rl, T0, &wait); n++)
        ;
    assert_int_equal(n, 5000);
    assert_int_equal(wait, 17280 * MS); /* 86400 s / 5000 */
    assert_true(take(rl, T0 + 17280 * MS, &wait));
    pb_ratelimit_free(rl);
}

static void test_both_buckets(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(60, 100, 0, 0, &clk);
    uint64_t wait;
    int n = 0;
    (void)state;
    /* 60 now, 40 more over the next 40 s, then the day budget is the limit */
    for (uint64_t t = T0; t <= T0 + 120 * S; t += 100 * MS)
        while (take(rl, t, &wait))
            n++;
    assert_int_equal(n, 100);
    assert_false(take(rl, T0 + 120 * S, &wait));
    assert_int_equal(wait, (864 - 120) * S); /* 864 s per token, 120 s already banked */
    pb_ratelimit_free(rl);
}

static void test_concurrency_cap(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(0, 0, 5, 0, &clk);
    uint64_t wait;
    (void)state;
    for (int i = 0; i < 5; i++)
        assert_true(pb__ratelimit_try(rl, T0, &wait));
    assert_false(pb__ratelimit_try(rl, T0, &wait));
    assert_int_equal(wait, PB_RATELIMIT_WAIT_SLOT);
    pb_ratelimit_release(rl);
    assert_true(pb__ratelimit_try(rl, T0, &wait));
    assert_false(pb__ratelimit_try(rl, T0, &wait));
    for (int i = 0; i < 5; i++)
        pb_ratelimit_release(rl);
    pb_ratelimit_release(rl); /* an extra release does not create a slot */
    for (int i = 0; i < 5; i++)
        assert_true(pb__ratelimit_try(rl, T0, &wait));
    assert_false(pb__ratelimit_try(rl, T0, &wait));
    pb_ratelimit_free(rl);
}

static void test_unlimited(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(0, 0, 0, 0, &clk);
    uint64_t wait;
    (void)state;
    for (int i = 0; i < 100000; i++)
        assert_true(pb__ratelimit_try(rl, T0, &wait));
    pb_ratelimit_free(rl);
}

static void test_retry_after_pause(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(60, 0, 0, 0, &clk);
    struct pb_ratelimit_stats st;
    uint64_t wait;
    (void)state;
    assert_true(take(rl, T0, &wait));
    pb_ratelimit_observe(rl, -1, -1, 30, NULL);
    assert_false(take(rl, T0, &wait));
    assert_int_equal(wait, 30 * S);
    assert_false(take(rl, T0 + 29 * S, &wait));
    assert_int_equal(wait, 1 * S);
    assert_true(take(rl, T0 + 30 * S, &wait));
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.throttled, 1);
    /* a shorter Retry-After does not shorten a longer pause */
    clk.now = T0 + 30 * S;
    pb_ratelimit_observe(rl, -1, -1, 100, NULL);
    pb_ratelimit_observe(rl, -1, -1, 5, NULL);
    assert_false(take(rl, clk.now, &wait));
    assert_int_equal(wait, 100 * S);
    /* a hostile Retry-After is capped at a day */
    pb_ratelimit_observe(rl, -1, -1, 2000000000, NULL);
    assert_false(take(rl, clk.now, &wait));
    assert_int_equal(wait, 86400 * S);
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.throttled, 4);
    pb_ratelimit_free(rl);
}

static void test_problem_prefixes(void **state)
{
    (void)state;
    assert_int_equal(pb__ratelimit_problem_parse(NULL), PB_RATELIMIT_PROBLEM_NONE);
    assert_int_equal(pb__ratelimit_problem_parse(""), PB_RATELIMIT_PROBLEM_OTHER);
    assert_int_equal(pb__ratelimit_problem_parse("Minute"), PB_RATELIMIT_PROBLEM_MINUTE);
    assert_int_equal(pb__ratelimit_problem_parse("minute"), PB_RATELIMIT_PROBLEM_MINUTE);
    assert_int_equal(pb__ratelimit_problem_parse("MinuteLimit"), PB_RATELIMIT_PROBLEM_MINUTE);
    assert_int_equal(pb__ratelimit_problem_parse("DayLimit"), PB_RATELIMIT_PROBLEM_DAY);
    assert_int_equal(pb__ratelimit_problem_parse("day"), PB_RATELIMIT_PROBLEM_DAY);
    assert_int_equal(pb__ratelimit_problem_parse("appminute"), PB_RATELIMIT_PROBLEM_APPMINUTE);
    assert_int_equal(pb__ratelimit_problem_parse("AppMinuteLimit"),
                     PB_RATELIMIT_PROBLEM_APPMINUTE);
    assert_int_equal(pb__ratelimit_problem_parse(" Concurrent"), PB_RATELIMIT_PROBLEM_CONCURRENT);
    assert_int_equal(pb__ratelimit_problem_parse("hourly"), PB_RATELIMIT_PROBLEM_OTHER);
    assert_int_equal(pb__ratelimit_problem_parse("min"), PB_RATELIMIT_PROBLEM_OTHER);
}

static void test_problem_effects(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl;
    uint64_t wait;
    (void)state;

    /* "Minute" without Retry-After: until the window (opened at T0) rolls */
    rl = make(60, 5000, 0, 0, &clk);
    assert_true(take(rl, T0, &wait));
    clk.now = T0 + 10 * S;
    pb_ratelimit_observe(rl, -1, -1, -1, "Minute");
    assert_false(take(rl, clk.now, &wait));
    assert_int_equal(wait, 50 * S);
    pb_ratelimit_free(rl);

    /* "DayLimit": 1 h */
    rl = make(60, 5000, 0, 0, &clk);
    pb_ratelimit_observe(rl, -1, -1, -1, "DayLimit");
    assert_false(take(rl, T0, &wait));
    assert_int_equal(wait, 3600 * S);
    assert_true(take(rl, T0 + 3600 * S, &wait));
    pb_ratelimit_free(rl);

    /* "appminute": 60 s, our own minute bucket untouched */
    rl = make(60, 5000, 0, 0, &clk);
    pb_ratelimit_observe(rl, -1, -1, -1, "appminute");
    assert_false(take(rl, T0, &wait));
    assert_int_equal(wait, 60 * S);
    int n = 0;
    while (take(rl, T0 + 60 * S, &wait))
        n++;
    assert_int_equal(n, 60);
    pb_ratelimit_free(rl);

    /* unknown problem: a short pause; counted as throttled */
    rl = make(60, 5000, 0, 0, &clk);
    pb_ratelimit_observe(rl, -1, -1, -1, "");
    assert_false(take(rl, T0, &wait));
    assert_int_equal(wait, 1 * S);
    struct pb_ratelimit_stats st;
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.throttled, 1);
    /* a plain reply is not a 429 */
    pb_ratelimit_observe(rl, 50, 4000, -1, NULL);
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.throttled, 1);
    pb_ratelimit_free(rl);
}

static void test_pacing(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl;
    uint64_t wait;
    (void)state;

    /* minute remaining 0: pause until the window rolls */
    rl = make(60, 0, 0, 0, &clk);
    assert_true(take(rl, T0, &wait));
    clk.now = T0 + 10 * S;
    pb_ratelimit_observe(rl, 0, -1, -1, NULL);
    assert_false(take(rl, clk.now, &wait));
    assert_int_equal(wait, 50 * S);
    assert_true(take(rl, T0 + 60 * S, &wait));
    pb_ratelimit_free(rl);

    /* low (<= 10%): 5 remaining with 30 s of window left -> one per 6 s */
    rl = make(60, 0, 0, 0, &clk);
    assert_true(take(rl, T0, &wait));
    clk.now = T0 + 30 * S;
    pb_ratelimit_observe(rl, 5, -1, -1, NULL);
    assert_false(take(rl, clk.now, &wait));
    assert_int_equal(wait, 6 * S);
    assert_true(take(rl, T0 + 36 * S, &wait));
    assert_false(take(rl, T0 + 36 * S, &wait));
    assert_int_equal(wait, 6 * S);
    assert_true(take(rl, T0 + 42 * S, &wait));
    /* the window rolls: pacing ends */
    assert_true(take(rl, T0 + 60 * S, &wait));
    assert_true(take(rl, T0 + 60 * S, &wait));
    pb_ratelimit_free(rl);

    /* plenty remaining: no pacing, but the bucket follows the server down */
    rl = make(60, 0, 0, 0, &clk);
    pb_ratelimit_observe(rl, 30, -1, -1, NULL);
    int n = 0;
    while (take(rl, T0, &wait))
        n++;
    assert_int_equal(n, 30);
    pb_ratelimit_free(rl);

    /* day remaining 0: pause 1 h */
    rl = make(60, 5000, 0, 0, &clk);
    pb_ratelimit_observe(rl, 59, 0, -1, NULL);
    assert_false(take(rl, T0, &wait));
    assert_int_equal(wait, 3600 * S);
    pb_ratelimit_free(rl);
}

static void test_acquire_injected_clock(void **state)
{
    struct fake_clock clk;
    struct pb_ratelimit *rl = make(1, 0, 0, 1000, &clk);
    struct pb_ratelimit_stats st;
    struct pb_err err = {0};
    uint64_t waited = 99, retry = 99;
    (void)state;
    assert_int_equal(pb_ratelimit_acquire(rl, &waited, &retry, &err), PB_OK);
    assert_int_equal(waited, 0);
    pb_ratelimit_release(rl);
    /* the next token is 60 s away, max_wait is 1 s: fail at once with a hint */
    assert_int_equal(pb_ratelimit_acquire(rl, &waited, &retry, &err), PB_ERR_TRANSIENT);
    assert_int_equal(err.rc, PB_ERR_TRANSIENT);
    assert_int_equal(retry, 60000);
    assert_non_null(strstr(err.msg, "rate limit"));
    assert_non_null(strstr(err.msg, "60000 ms"));
    /* a pause says why */
    pb_ratelimit_observe(rl, -1, 0, -1, NULL);
    assert_int_equal(pb_ratelimit_acquire(rl, &waited, &retry, &err), PB_ERR_TRANSIENT);
    assert_int_equal(retry, 3600000);
    assert_non_null(strstr(err.msg, "X-DayLimit-Remaining is 0"));
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.waits, 2);
    clk.now = T0 + 3600 * S;
    assert_int_equal(pb_ratelimit_acquire(rl, &waited, &retry, &err), PB_OK);
    pb_ratelimit_release(rl);
    pb_ratelimit_free(rl);
}

/* ---- real time, briefly --------------------------------------------------------- */

struct waiter {
    struct pb_ratelimit *rl;
    enum pb_rc rc;
    uint64_t waited;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    uint64_t retry;
    w->rc = pb_ratelimit_acquire(w->rl, &w->waited, &retry, NULL);
    return NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_acquire_blocks_until_release(void **state)
{
    struct pb_ratelimit *rl = make(0, 0, 2, 5000, NULL);
    struct waiter w = {rl, PB_ERR_INTERNAL, 0};
    struct pb_ratelimit_stats st;
    pthread_t t;
    (void)state;
    assert_int_equal(pb_ratelimit_acquire(rl, NULL, NULL, NULL), PB_OK);
    assert_int_equal(pb_ratelimit_acquire(rl, NULL, NULL, NULL), PB_OK);
    assert_int_equal(pthread_create(&t, NULL, waiter_main, &w), 0);
    sleep_ms(50);
    pb_ratelimit_release(rl);
    pthread_join(t, NULL);
    assert_int_equal(w.rc, PB_OK);
    assert_true(w.waited >= 30 * MS);
    assert_true(w.waited < 4 * S);
    pb_ratelimit_stats(rl, &st);
    assert_int_equal(st.waits, 1);
    assert_true(st.wait_ns >= w.waited);
    pb_ratelimit_release(rl);
    pb_ratelimit_release(rl);
    pb_ratelimit_free(rl);
}

static void test_acquire_slot_timeout(void **state)
{
    struct pb_ratelimit *rl = make(0, 0, 1, 40, NULL);
    struct pb_err err = {0};
    uint64_t waited = 0, retry = 0;
    (void)state;
    assert_int_equal(pb_ratelimit_acquire(rl, NULL, NULL, NULL), PB_OK);
    assert_int_equal(pb_ratelimit_acquire(rl, &waited, &retry, &err), PB_ERR_TRANSIENT);
    assert_true(waited >= 40 * MS);
    assert_true(retry > 0);
    assert_non_null(strstr(err.msg, "concurrent"));
    pb_ratelimit_release(rl);
    pb_ratelimit_free(rl);
}

static void test_acquire_waits_for_token(void **state)
{
    /* 600/minute: a token every 100 ms; drain on the real clock, then wait */
    struct pb_ratelimit *rl = make(600, 0, 0, 5000, NULL);
    uint64_t wait, waited = 0;
    struct timespec ts;
    (void)state;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (!pb__ratelimit_try(rl, (uint64_t)ts.tv_sec * S + (uint64_t)ts.tv_nsec, &wait))
            break;
        pb_ratelimit_release(rl);
    }
    assert_true(wait > 0 && wait <= 100 * MS);
    assert_int_equal(pb_ratelimit_acquire(rl, &waited, NULL, NULL), PB_OK);
    assert_true(waited > 0);
    assert_true(waited < 1 * S);
    pb_ratelimit_release(rl);
    pb_ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sixty_per_minute),
        cmocka_unit_test(test_refill_over_time),
        cmocka_unit_test(test_day_bucket),
        cmocka_unit_test(test_both_buckets),
        cmocka_unit_test(test_concurrency_cap),
        cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_retry_after_pause),
        cmocka_unit_test(test_problem_prefixes),
        cmocka_unit_test(test_problem_effects),
        cmocka_unit_test(test_pacing),
        cmocka_unit_test(test_acquire_injected_clock),
        cmocka_unit_test(test_acquire_blocks_until_release),
        cmocka_unit_test(test_acquire_slot_timeout),
        cmocka_unit_test(test_acquire_waits_for_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
