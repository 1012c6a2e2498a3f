/*
 * tests/unit/test_cron.c: core/cron.c: parsing (fields, ranges, lists,
 * steps, names, shorthands, and the errors that name the field), and the next
 * run time across hours, days, month ends, leap years, and the Vixie
 * either-day rule.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/cron.h"

static time_t at(int y, int mo, int d, int h, int mi)
{
    struct tm t = {0};
    t.tm_year = y - 1900;
    t.tm_mon = mo - 1;
    t.tm_mday = d;
    t.tm_hour = h;
    t.tm_min = mi;
    return timegm(&t);
}

static time_t next(const char *expr, time_t after)
{
    struct pb_cron c;
    struct pb_err err = {0};
    assert_int_equal(pb_cron_parse(expr, &c, &err), PB_OK);
    return pb_cron_next(&c, after);
}

static void test_daily_at_six(void **state)
{
    (void)state;
    assert_int_equal(next("0 6 * * *", at(2026, 11, 21, 5, 59)), at(2026, 11, 21, 6, 0));
    /* strictly after: at 06:00 itself the next one is tomorrow */
    assert_int_equal(next("0 6 * * *", at(2026, 11, 21, 6, 0)), at(2026, 11, 22, 6, 0));
    assert_int_equal(next("@daily", at(2026, 12, 31, 23, 0)), at(2027, 1, 1, 0, 0));
}

static void test_steps_lists_ranges(void **state)
{
    (void)state;
    assert_int_equal(next("*/15 * * * *", at(2026, 1, 1, 10, 16)), at(2026, 1, 1, 10, 30));
    assert_int_equal(next("5,35 9-17/4 * * *", at(2026, 1, 1, 9, 36)), at(2026, 1, 1, 13, 5));
    assert_int_equal(next("10/20 * * * *", at(2026, 1, 1, 0, 11)), at(2026, 1, 1, 0, 30));
}

static void test_names_and_weekdays(void **state)
{
    (void)state;
    /* 2026-11-21 is a Saturday: next weekday 06:30 is Monday the 23rd */
    assert_int_equal(next("30 6 * * MON-FRI", at(2026, 11, 21, 7, 0)), at(2026, 11, 23, 6, 30));
    /* 7 is Sunday too */
    assert_int_equal(next("0 0 * * 7", at(2026, 11, 21, 7, 0)), at(2026, 11, 22, 0, 0));
    assert_int_equal(next("0 0 1 JAN *", at(2026, 11, 21, 0, 0)), at(2027, 1, 1, 0, 0));
}

static void test_month_end_and_leap(void **state)
{
    (void)state;
    assert_int_equal(next("0 6 31 * *", at(2026, 11, 21, 0, 0)), at(2026, 12, 31, 6, 0));
    assert_int_equal(next("0 0 29 2 *", at(2026, 3, 1, 0, 0)), at(2028, 2, 29, 0, 0));
    {
        struct pb_cron c;
        struct pb_err err = {0};
        assert_int_equal(pb_cron_parse("0 0 31 2 *", &c, &err), PB_OK);
        assert_int_equal(pb_cron_next(&c, at(2026, 1, 1, 0, 0)), (time_t)-1);
    }
}

static void test_either_day_rule(void **state)
{
    (void)state;
    /* the 1st or any Friday: from Sat 2026-11-21, Friday the 27th comes before Dec 1 */
    assert_int_equal(next("0 6 1 * 5", at(2026, 11, 21, 7, 0)), at(2026, 11, 27, 6, 0));
}

static void test_errors_name_the_field(void **state)
{
    struct pb_cron c;
    struct pb_err err = {0};
    (void)state;
    assert_int_equal(pb_cron_parse("0 24 * * *", &c, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "hour: 24 is out of range 0-23"));
    pb_err_clear(&err);
    assert_int_equal(pb_cron_parse("0 6 * *", &c, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "4 field(s)"));
    pb_err_clear(&err);
    assert_int_equal(pb_cron_parse("x 6 * * *", &c, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "minute"));
    pb_err_clear(&err);
    assert_int_equal(pb_cron_parse("0 6 * * * *", &c, &err), PB_ERR_INVALID);
    pb_err_clear(&err);
    assert_int_equal(pb_cron_parse("*/0 * * * *", &c, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "step"));
    pb_err_clear(&err);
    assert_int_equal(pb_cron_parse("0 9-5 * * *", &c, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "backwards"));
    pb_err_clear(&err);
    assert_int_equal(pb_cron_parse("@sometimes", &c, &err), PB_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daily_at_six),
        cmocka_unit_test(test_steps_lists_ranges),
        cmocka_unit_test(test_names_and_weekdays),
        cmocka_unit_test(test_month_end_and_leap),
        cmocka_unit_test(test_either_day_rule),
        cmocka_unit_test(test_errors_name_the_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
