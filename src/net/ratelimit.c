/*
 * net/ratelimit.c: per-connection, per-tenant rate limiter (see ratelimit.h).
 *
 * What it owns. One `struct pb_ratelimit`: a mutex, a condition variable on
 * CLOCK_MONOTONIC, two token buckets, a concurrency count, a "pause until"
 * instant with the reason for it, a pacing gate, and counters. Nothing else;
 * no thread of its own.
 *
 * The gates. A call may go when, at the same instant,
 *   1. now >= pause_until   (server's Retry-After, or our own pacing below);
 *   2. now >= pace_next     (only while pacing: see "Pacing");
 *   3. the minute bucket and the day bucket each hold a token;
 *   4. fewer than `concurrent` calls are in flight.
 * pb__ratelimit_try() checks all four at a given instant and either takes
 * (token, token, slot) or says how long to wait; acquire() is a loop around
 * it that sleeps on the condition variable. Tests call the try function with
 * an injected clock, so "would wait 1 s" is observable without sleeping.
 *
 * Buckets, in integer nanoseconds. A bucket of capacity C per period P keeps
 * `credit_ns`, the refill time it has banked: one token costs
 * cost_ns = P / C nanoseconds of credit, credit grows by one per nanosecond
 * elapsed and is capped at C * cost_ns (= P when C divides P). So capacity is
 * exactly C and the refill is continuous at C per P, as a token bucket should
 * be, with no doubles and no overflow: credit never exceeds P (86400 s =
 * 8.64e13 ns, far below 2^64). The wait for the next token is simply
 * cost_ns - credit_ns. Per minute P = 60 s, per day P = 86400 s; a capacity
 * of 0 disables the bucket. Buckets start full and start refilling on the
 * first look at them (so that swapping in a test clock after creation works).
 *
 * The minute window. Xero counts per fixed minute, not per sliding 60 s,
 * and does not tell us when its minute starts. We take "60 s from the first
 * call granted in the window" as the window (window_start_ns); a grant after
 * the window has ended opens the next one. That can be off by up to the
 * latency of the first call, which is good enough: when it is wrong, the
 * server answers 429 with Retry-After and we pause exactly as told.
 *
 * Pacing (observe() with X-MinLimit-Remaining / X-DayLimit-Remaining):
 *   - minute remaining == 0: pause until the window ends (now + 60 s when no
 *     window is open);
 *   - minute remaining r with 0 < r <= 10% of per_minute: spread the r calls
 *     evenly over what is left of the window: pace_interval = left / r, and
 *     each grant pushes pace_next one interval ahead. Pacing ends when the
 *     window rolls or when a reply reports more than 10% remaining;
 *   - day remaining == 0: pause 1 h, and log a warning saying so (and the
 *     acquire error says so: the pause carries a reason);
 *   - any remaining count also lowers our bucket to at most that many tokens
 *     (never raises it: replies of calls still in flight lag behind).
 * A 429 (observe() with retry_after_s >= 0 or a non-NULL problem, which is
 * how we tell a 429 from a plain reply; "" is an unknown problem) counts in
 * `throttled` and pauses everyone: for Retry-After seconds (capped at 24 h,
 * so a hostile header cannot park a connection for years), or when the
 * server sent none, by problem: minute -> until the window ends, day -> 1 h,
 * appminute -> 60 s (the app-wide budget of all tenants, which our per-tenant
 * bucket cannot see), concurrent or unknown -> 1 s.
 *
 * Threading. Every field below `mu` is guarded by it. acquire() waits with
 * pthread_cond_timedwait() on a CLOCK_MONOTONIC condattr (wall-clock steps
 * must not shorten or stretch a wait). release() and observe() broadcast:
 * release frees a slot; observe may have changed a pause. Waiters are not
 * served in FIFO order; max_wait_ms bounds how long any of them can lose.
 * The injected clock is read under the lock; pb_ratelimit_set_clock() must be
 * called before the limiter is shared. With an injected clock, a real wait
 * still sleeps for the real duration of the computed wait: tests use
 * pb__ratelimit_try() or waits longer than max_wait_ms (which fail at once).
 *
 * Rejected designs.
 *   - Doubles for fractional tokens: rounding drift, and "exactly 60 per
 *     minute" becomes "60 or 59 depending on the instant".
 *   - Tokens scaled by P ("token * 60e9 units, C units per ns"): C * 86400e9
 *     overflows 64 bits for large C; banking time instead of tokens cannot.
 *   - A sliding log of the last N send times: exact, but memory grows with
 *     the limit (5,000 timestamps per tenant for the day budget).
 *   - A background refill thread: a timer per tenant for what one subtraction
 *     at acquire time computes.
 *   - Waiting out a known wait longer than max_wait_ms and then failing: the
 *     worker would sit idle for max_wait_ms to learn what it knew at once.
 *     acquire() fails immediately with the retry hint instead.
 *   - sleep() in acquire(): a sleeping worker misses release() and a pause
 *     that was lifted; the condition variable hears both.
 */
#include "net/ratelimit.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/log.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define MINUTE_NS (60ull * NS_PER_S)
#define DAY_NS (86400ull * NS_PER_S)
#define DAY_PAUSE_NS (3600ull * NS_PER_S)         /* day remaining 0: pause 1 h */
#define APPMINUTE_PAUSE_NS MINUTE_NS
#define SHORT_PAUSE_NS NS_PER_S                   /* 429 with nothing else to go on */
#define RETRY_AFTER_MAX_S 86400                   /* cap on a server-imposed pause */
#define DEFAULT_MAX_WAIT_MS 60000u
#define SLOT_RETRY_HINT_MS 1000u                  /* hint when all slots stayed busy */
#define RATELIMIT_MAGIC 0x524c494du               /* "RLIM" */

struct bucket {
    uint64_t cost_ns;       /* credit one token costs; 0 = bucket disabled */
    uint64_t max_credit_ns; /* capacity * cost_ns */
    uint64_t credit_ns;     /* banked refill time, <= max_credit_ns */
    uint64_t last_ns;       /* clock value credit was computed at */
    int primed;             /* last_ns is valid */
};

struct pb_ratelimit {
    unsigned magic;                 /* RATELIMIT_MAGIC while alive */
    struct pb_ratelimit_config cfg; /* copy, max_wait_ms defaulted */
    uint64_t (*now_ns)(void *);     /* the clock; default CLOCK_MONOTONIC */
    void *clock_ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;              /* on CLOCK_MONOTONIC; signalled by release/observe */
    /* guarded by mu: */
    struct bucket minute;           /* per_minute per 60 s */
    struct bucket day;              /* per_day per 86400 s */
    unsigned in_flight;             /* granted and not yet released */
    uint64_t pause_until_ns;        /* 0 = no pause */
    char pause_reason[128];         /* why pause_until is set, for errors */
    uint64_t window_start_ns;       /* first grant of the current minute window; 0 = none */
    uint64_t pace_interval_ns;      /* 0 = not pacing */
    uint64_t pace_next_ns;          /* while pacing: earliest next grant */
    struct pb_ratelimit_stats stats;
};

static uint64_t monotonic_now(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* ---- buckets ----------------------------------------------------------------- */

static void bucket_init(struct bucket *b, unsigned capacity, uint64_t period_ns)
{
    memset(b, 0, sizeof(*b));
    if (!capacity)
        return;
    b->cost_ns = period_ns / capacity; /* capacity <= UINT_MAX < period: >= 1 */
    b->max_credit_ns = b->cost_ns * capacity;
    b->credit_ns = b->max_credit_ns;
}

static void bucket_refill(struct bucket *b, uint64_t now)
{
    if (!b->cost_ns)
        return;
    if (!b->primed) {
        b->primed = 1;
        b->last_ns = now;
        return;
    }
    if (now <= b->last_ns)
        return; /* a test clock that went back: no refill, no debt */
    uint64_t elapsed = now - b->last_ns;
    b->last_ns = now;
    if (elapsed >= b->max_credit_ns - b->credit_ns)
        b->credit_ns = b->max_credit_ns;
    else
        b->credit_ns += elapsed;
}

/* Time until one token is available; 0 = now. */
static uint64_t bucket_wait(const struct bucket *b)
{
    if (!b->cost_ns || b->credit_ns >= b->cost_ns)
        return 0;
    return b->cost_ns - b->credit_ns;
}

static void bucket_take(struct bucket *b)
{
    if (b->cost_ns)
        b->credit_ns -= b->cost_ns;
}

/* Lower the bucket to at most `tokens` tokens (server-reported remaining). */
static void bucket_clamp(struct bucket *b, uint64_t tokens)
{
    if (!b->cost_ns)
        return;
    if (tokens < b->max_credit_ns / b->cost_ns && b->credit_ns > tokens * b->cost_ns)
        b->credit_ns = tokens * b->cost_ns;
}

/* ---- lifecycle ----------------------------------------------------------------- */

enum pb_rc pb_ratelimit_new(const struct pb_ratelimit_config *cfg, struct pb_ratelimit **out,
                            struct pb_err *err)
{
    struct pb_ratelimit *rl;
    pthread_condattr_t ca;

    if (!out)
        return pb_err_set(err, PB_ERR_INVALID, "rate limiter: no output pointer");
    *out = NULL;
    rl = calloc(1, sizeof(*rl));
    if (!rl)
        return pb_err_set(err, PB_ERR_NOMEM, "rate limiter: out of memory");
    if (cfg)
        rl->cfg = *cfg;
    if (!rl->cfg.max_wait_ms)
        rl->cfg.max_wait_ms = DEFAULT_MAX_WAIT_MS;
    rl->now_ns = monotonic_now;
    bucket_init(&rl->minute, rl->cfg.per_minute, MINUTE_NS);
    bucket_init(&rl->day, rl->cfg.per_day, DAY_NS);

    if (pthread_mutex_init(&rl->mu, NULL) != 0) {
        free(rl);
        return pb_err_set(err, PB_ERR_INTERNAL, "rate limiter: pthread_mutex_init failed");
    }
    if (pthread_condattr_init(&ca) != 0 ||
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&rl->cv, &ca) != 0) {
        pthread_mutex_destroy(&rl->mu);
        free(rl);
        return pb_err_set(err, PB_ERR_INTERNAL, "rate limiter: cannot create a monotonic condvar");
    }
    pthread_condattr_destroy(&ca);
    rl->magic = RATELIMIT_MAGIC;
    *out = rl;
    return PB_OK;
}

void pb_ratelimit_free(struct pb_ratelimit *rl)
{
    if (!rl)
        return;
    assert(rl->magic == RATELIMIT_MAGIC);
    rl->magic = 0;
    pthread_cond_destroy(&rl->cv);
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

void pb_ratelimit_set_clock(struct pb_ratelimit *rl, uint64_t (*now_ns)(void *), void *ctx)
{
    assert(rl && rl->magic == RATELIMIT_MAGIC);
    pthread_mutex_lock(&rl->mu);
    rl->now_ns = now_ns ? now_ns : monotonic_now;
    rl->clock_ctx = now_ns ? ctx : NULL;
    /* Instants taken on the old clock mean nothing on the new one. */
    rl->minute.primed = rl->day.primed = 0;
    rl->pause_until_ns = rl->window_start_ns = rl->pace_interval_ns = rl->pace_next_ns = 0;
    pthread_mutex_unlock(&rl->mu);
}

/* ---- the gate ---------------------------------------------------------------------- */

static int try_locked(struct pb_ratelimit *rl, uint64_t now, uint64_t *wait_ns)
{
    uint64_t wait = 0;

    bucket_refill(&rl->minute, now);
    bucket_refill(&rl->day, now);
    if (rl->pace_interval_ns && now >= rl->window_start_ns + MINUTE_NS)
        rl->pace_interval_ns = rl->pace_next_ns = 0; /* the window rolled: budget is back */

    if (rl->pause_until_ns > now)
        wait = rl->pause_until_ns - now;
    if (rl->pace_interval_ns && rl->pace_next_ns > now)
        wait = max_u64(wait, rl->pace_next_ns - now);
    wait = max_u64(wait, bucket_wait(&rl->minute));
    wait = max_u64(wait, bucket_wait(&rl->day));
    if (wait) {
        *wait_ns = wait;
        return 0;
    }
    if (rl->cfg.concurrent && rl->in_flight >= rl->cfg.concurrent) {
        *wait_ns = PB_RATELIMIT_WAIT_SLOT;
        return 0;
    }

    bucket_take(&rl->minute);
    bucket_take(&rl->day);
    rl->in_flight++;
    if (!rl->window_start_ns || now >= rl->window_start_ns + MINUTE_NS)
        rl->window_start_ns = now;
    if (rl->pace_interval_ns)
        rl->pace_next_ns = now + rl->pace_interval_ns;
    *wait_ns = 0;
    return 1;
}

int pb__ratelimit_try(struct pb_ratelimit *rl, uint64_t now_ns, uint64_t *wait_ns)
{
    int granted;
    uint64_t dummy;
    assert(rl && rl->magic == RATELIMIT_MAGIC);
    pthread_mutex_lock(&rl->mu);
    granted = try_locked(rl, now_ns, wait_ns ? wait_ns : &dummy);
    pthread_mutex_unlock(&rl->mu);
    return granted;
}

/* Absolute CLOCK_MONOTONIC time `delta_ns` from now, for pthread_cond_timedwait. */
static struct timespec real_deadline(uint64_t delta_ns)
{
    struct timespec ts;
    uint64_t t;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t = (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
    t = delta_ns > UINT64_MAX - t ? UINT64_MAX : t + delta_ns;
    ts.tv_sec = (time_t)(t / NS_PER_S);
    ts.tv_nsec = (long)(t % NS_PER_S);
    return ts;
}

enum pb_rc pb_ratelimit_acquire(struct pb_ratelimit *rl, uint64_t *waited_ns,
                                uint64_t *retry_after_ms, struct pb_err *err)
{
    uint64_t start, now, deadline, wait = 0;
    int counted = 0;
    enum pb_rc rc = PB_OK;

    if (waited_ns)
        *waited_ns = 0;
    if (retry_after_ms)
        *retry_after_ms = 0;
    if (!rl)
        return PB_OK; /* no limiter: unlimited */
    assert(rl->magic == RATELIMIT_MAGIC);

    pthread_mutex_lock(&rl->mu);
    start = now = rl->now_ns(rl->clock_ctx);
    deadline = start + (uint64_t)rl->cfg.max_wait_ms * NS_PER_MS;
    for (;;) {
        uint64_t wake;
        struct timespec ts;

        if (try_locked(rl, now, &wait))
            break;
        if (!counted) {
            counted = 1;
            rl->stats.waits++;
        }
        if (wait == PB_RATELIMIT_WAIT_SLOT) {
            if (now >= deadline) {
                if (retry_after_ms)
                    *retry_after_ms = SLOT_RETRY_HINT_MS;
                rc = pb_err_set(err, PB_ERR_TRANSIENT,
                                "rate limit: all %u concurrent slots stayed busy for %u ms",
                                rl->cfg.concurrent, rl->cfg.max_wait_ms);
                break;
            }
            wake = deadline;
        } else {
            if (now >= deadline || wait > deadline - now) {
                uint64_t ms = (wait + NS_PER_MS - 1) / NS_PER_MS;
                if (retry_after_ms)
                    *retry_after_ms = ms;
                if (rl->pause_until_ns > now && rl->pause_reason[0])
                    rc = pb_err_set(err, PB_ERR_TRANSIENT,
                                    "rate limit: next call allowed in %llu ms (%s), more than "
                                    "max_wait_ms %u",
                                    (unsigned long long)ms, rl->pause_reason, rl->cfg.max_wait_ms);
                else
                    rc = pb_err_set(err, PB_ERR_TRANSIENT,
                                    "rate limit: next call allowed in %llu ms (limits %u/minute, "
                                    "%u/day), more than max_wait_ms %u",
                                    (unsigned long long)ms, rl->cfg.per_minute, rl->cfg.per_day,
                                    rl->cfg.max_wait_ms);
                break;
            }
            wake = now + wait;
        }
        ts = real_deadline(wake - now);
        pthread_cond_timedwait(&rl->cv, &rl->mu, &ts);
        now = rl->now_ns(rl->clock_ctx);
    }
    if (now > start) {
        rl->stats.wait_ns += now - start;
        if (waited_ns)
            *waited_ns = now - start;
    }
    pthread_mutex_unlock(&rl->mu);
    return rc;
}

void pb_ratelimit_release(struct pb_ratelimit *rl)
{
    if (!rl)
        return;
    assert(rl->magic == RATELIMIT_MAGIC);
    pthread_mutex_lock(&rl->mu);
    if (rl->in_flight > 0)
        rl->in_flight--;
    pthread_cond_broadcast(&rl->cv);
    pthread_mutex_unlock(&rl->mu);
}

/* ---- feedback from the server ------------------------------------------------------- */

static int has_prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

enum pb_ratelimit_problem pb__ratelimit_problem_parse(const char *problem)
{
    if (!problem)
        return PB_RATELIMIT_PROBLEM_NONE;
    while (*problem == ' ' || *problem == '\t')
        problem++;
    if (has_prefix_ci(problem, "appminute"))
        return PB_RATELIMIT_PROBLEM_APPMINUTE;
    if (has_prefix_ci(problem, "minute"))
        return PB_RATELIMIT_PROBLEM_MINUTE;
    if (has_prefix_ci(problem, "day"))
        return PB_RATELIMIT_PROBLEM_DAY;
    if (has_prefix_ci(problem, "concurrent"))
        return PB_RATELIMIT_PROBLEM_CONCURRENT;
    return PB_RATELIMIT_PROBLEM_OTHER;
}

static void pause_locked(struct pb_ratelimit *rl, uint64_t until, const char *reason)
{
    if (until <= rl->pause_until_ns)
        return; /* an existing, longer pause wins */
    rl->pause_until_ns = until;
    snprintf(rl->pause_reason, sizeof(rl->pause_reason), "%s", reason);
}

/* End of the current minute window, or now + 60 s when none is open. */
static uint64_t window_end_locked(const struct pb_ratelimit *rl, uint64_t now)
{
    if (rl->window_start_ns && now < rl->window_start_ns + MINUTE_NS)
        return rl->window_start_ns + MINUTE_NS;
    return now + MINUTE_NS;
}

void pb_ratelimit_observe(struct pb_ratelimit *rl, long min_remaining, long day_remaining,
                          int retry_after_s, const char *problem)
{
    enum pb_ratelimit_problem kind = pb__ratelimit_problem_parse(problem);
    int day_exhausted = 0, throttled_day = 0;
    uint64_t now;

    if (!rl)
        return;
    assert(rl->magic == RATELIMIT_MAGIC);
    pthread_mutex_lock(&rl->mu);
    now = rl->now_ns(rl->clock_ctx);
    bucket_refill(&rl->minute, now);
    bucket_refill(&rl->day, now);

    /* A 429: the server has spoken, everyone pauses. */
    if (retry_after_s >= 0 || kind != PB_RATELIMIT_PROBLEM_NONE) {
        rl->stats.throttled++;
        if (retry_after_s >= 0) {
            int s = retry_after_s > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : retry_after_s;
            pause_locked(rl, now + (uint64_t)s * NS_PER_S,
                         "the server answered 429 with Retry-After");
        } else {
            switch (kind) {
            case PB_RATELIMIT_PROBLEM_MINUTE:
                pause_locked(rl, window_end_locked(rl, now),
                             "the server answered 429: minute limit reached");
                break;
            case PB_RATELIMIT_PROBLEM_DAY:
                throttled_day = 1;
                pause_locked(rl, now + DAY_PAUSE_NS,
                             "the server answered 429: daily limit reached, pausing 1 h");
                break;
            case PB_RATELIMIT_PROBLEM_APPMINUTE:
                pause_locked(rl, now + APPMINUTE_PAUSE_NS,
                             "the server answered 429: app-wide minute limit reached");
                break;
            default:
                pause_locked(rl, now + SHORT_PAUSE_NS, "the server answered 429");
                break;
            }
        }
        if (kind == PB_RATELIMIT_PROBLEM_MINUTE)
            bucket_clamp(&rl->minute, 0);
        if (kind == PB_RATELIMIT_PROBLEM_DAY)
            bucket_clamp(&rl->day, 0);
    }

    /* Pacing by the remaining minute budget. */
    if (min_remaining >= 0) {
        uint64_t end = window_end_locked(rl, now);
        bucket_clamp(&rl->minute, (uint64_t)min_remaining);
        if (min_remaining == 0) {
            pause_locked(rl, end, "X-MinLimit-Remaining is 0: waiting for the next minute");
            rl->pace_interval_ns = rl->pace_next_ns = 0;
        } else if (rl->cfg.per_minute &&
                   (uint64_t)min_remaining * 10 <= (uint64_t)rl->cfg.per_minute) {
            if (!rl->window_start_ns || now >= rl->window_start_ns + MINUTE_NS)
                rl->window_start_ns = now; /* pacing needs an open window to end */
            rl->pace_interval_ns = (end - now) / (uint64_t)min_remaining;
            rl->pace_next_ns = max_u64(rl->pace_next_ns, now + rl->pace_interval_ns);
        } else {
            rl->pace_interval_ns = rl->pace_next_ns = 0;
        }
    }

    /* The day budget. */
    if (day_remaining >= 0) {
        bucket_clamp(&rl->day, (uint64_t)day_remaining);
        if (day_remaining == 0) {
            /* log once per pause, not on every late reply of calls in flight */
            day_exhausted = rl->pause_until_ns + MINUTE_NS < now + DAY_PAUSE_NS;
            pause_locked(rl, now + DAY_PAUSE_NS,
                         "X-DayLimit-Remaining is 0: daily limit used up, pausing 1 h");
        }
    }
    pthread_cond_broadcast(&rl->cv);
    pthread_mutex_unlock(&rl->mu);

    /* Log outside the lock. Operators need to know why a connection stalls. */
    if (day_exhausted)
        pb_logf(PB_LOG_WARN, "ratelimit.paused",
                "X-DayLimit-Remaining is 0: the daily API limit is used up; "
                "pausing all calls of this connection for 1 h");
    else if (throttled_day)
        pb_logf(PB_LOG_WARN, "ratelimit.paused",
                "429 with X-Rate-Limit-Problem day: pausing all calls of this connection for 1 h");
}

void pb_ratelimit_stats(struct pb_ratelimit *rl, struct pb_ratelimit_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!rl)
        return;
    assert(rl->magic == RATELIMIT_MAGIC);
    pthread_mutex_lock(&rl->mu);
    *out = rl->stats;
    pthread_mutex_unlock(&rl->mu);
}
