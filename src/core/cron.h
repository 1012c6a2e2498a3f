/*
 * core/cron.h: five-field cron expressions ("minute hour day-of-month month
 * day-of-week"), evaluated in UTC, for scheduled reconciliation runs.
 *
 * Each field takes "*", a number, a range "a-b", a list "a,b,c", and a step
 * ("*" or a range, then "/n", e.g. every 15 minutes). Day of week is 0-7 (0 and 7
 * are Sunday). As in Vixie cron, when both day-of-month and day-of-week are
 * restricted, a day matches when EITHER matches. Names (MON, JAN) and the
 * shorthands are accepted too: @hourly @daily @midnight @weekly @monthly @yearly.
 *
 * Owns nothing but the struct; pure functions, thread-safe.
 */
#ifndef PB_CORE_CRON_H
#define PB_CORE_CRON_H

#include <stdint.h>
#include <time.h>

#include "core/err.h"

struct pb_cron {
    uint64_t minute;  /* bit m: minute m (0-59) */
    uint32_t hour;    /* bit h (0-23) */
    uint32_t mday;    /* bit d (1-31) */
    uint16_t month;   /* bit m (1-12) */
    uint8_t wday;     /* bit d (0-6, Sunday = 0) */
    uint8_t mday_any; /* the day-of-month field was "*" */
    uint8_t wday_any; /* the day-of-week field was "*" */
};

/* Parse; PB_ERR_INVALID with the field and the reason, e.g. "hour: 24 is out
 * of range 0-23". */
enum pb_rc pb_cron_parse(const char *expr, struct pb_cron *out, struct pb_err *err);

/* The first minute strictly after `after` (UTC) that the expression matches;
 * (time_t)-1 when none within five years (e.g. "0 0 31 2 *"). */
time_t pb_cron_next(const struct pb_cron *c, time_t after);

#endif
