/*
 * net/ratelimit.h: a rate limiter per connection and tenant.
 *
 * Token buckets for per-minute and per-day budgets, a concurrency cap, and a
 * "pause until" instant that the server can impose (Retry-After, or our own
 * pacing when X-MinLimit-Remaining / X-DayLimit-Remaining run low). Xero's
 * defaults are 60/minute, 5,000/day and 5 concurrent per tenant.
 *
 * acquire() blocks the calling worker until a call may be sent (or until
 * `max_wait_ms` has passed -> PB_ERR_TRANSIENT with a retry hint), then holds a
 * concurrency slot until release(). Thread-safe (one mutex + condvar).
 * The clock is injectable so that unit tests need no sleeping.
 */
#ifndef PB_NET_RATELIMIT_H
#define PB_NET_RATELIMIT_H

#include <stdint.h>

#include "core/err.h"

struct pb_ratelimit_config {
    unsigned per_minute;    /* 0 = unlimited */
    unsigned per_day;       /* 0 = unlimited */
    unsigned concurrent;    /* 0 = unlimited */
    unsigned max_wait_ms;   /* longest acquire() blocks; default 60000 */
};

struct pb_ratelimit;

enum pb_rc pb_ratelimit_new(const struct pb_ratelimit_config *cfg, struct pb_ratelimit **out,
                            struct pb_err *err);
void pb_ratelimit_free(struct pb_ratelimit *rl);

/* Wait for a token and a concurrency slot. *waited_ns gets the time spent
 * waiting. PB_ERR_TRANSIENT if it would wait longer than max_wait_ms; then
 * *retry_after_ms says when to try again. */
enum pb_rc pb_ratelimit_acquire(struct pb_ratelimit *rl, uint64_t *waited_ns,
                                uint64_t *retry_after_ms, struct pb_err *err);
void pb_ratelimit_release(struct pb_ratelimit *rl);

/* Feed back what the server said. Any argument < 0 means "not present".
 * retry_after_s pauses all callers; problem is X-Rate-Limit-Problem
 * ("minute", "day", "appminute", "concurrent"; matched by case-insensitive prefix). */
void pb_ratelimit_observe(struct pb_ratelimit *rl, long min_remaining, long day_remaining,
                          int retry_after_s, const char *problem);

/* Counters for /metrics. */
struct pb_ratelimit_stats {
    uint64_t waits;        /* acquire() calls that had to wait */
    uint64_t wait_ns;      /* total time waited */
    uint64_t throttled;    /* 429s observed */
};
void pb_ratelimit_stats(struct pb_ratelimit *rl, struct pb_ratelimit_stats *out);

/* Tests: replace the monotonic clock (ns) and the sleep function. */
void pb_ratelimit_set_clock(struct pb_ratelimit *rl, uint64_t (*now_ns)(void *), void *ctx);

/* ---- internals (pb__: not static, not for connectors), used by acquire()
 * and by the unit tests, which must observe "would wait" without sleeping. */

/* *wait_ns value meaning "only a release() can help" (all slots busy). */
#define PB_RATELIMIT_WAIT_SLOT UINT64_MAX

/* One non-blocking attempt at time now_ns (on the limiter's clock). Returns 1
 * when granted (a token of each bucket and a concurrency slot are taken; the
 * caller must release()), else 0 with *wait_ns = the time until a token could
 * be available, or PB_RATELIMIT_WAIT_SLOT. Thread-safe. */
int pb__ratelimit_try(struct pb_ratelimit *rl, uint64_t now_ns, uint64_t *wait_ns);

/* X-Rate-Limit-Problem, matched by case-insensitive prefix. */
enum pb_ratelimit_problem {
    PB_RATELIMIT_PROBLEM_NONE = 0,      /* NULL: no 429 */
    PB_RATELIMIT_PROBLEM_OTHER,         /* a 429 without a known problem (also "") */
    PB_RATELIMIT_PROBLEM_MINUTE,        /* "minute", "Minute", "MinuteLimit" */
    PB_RATELIMIT_PROBLEM_DAY,           /* "day", "DayLimit", "daily" */
    PB_RATELIMIT_PROBLEM_APPMINUTE,     /* "appminute", "AppMinuteLimit" */
    PB_RATELIMIT_PROBLEM_CONCURRENT,    /* "concurrent" */
};
enum pb_ratelimit_problem pb__ratelimit_problem_parse(const char *problem);

#endif
