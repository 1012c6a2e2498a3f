/*
 * engine/retry.c: exponential backoff with full jitter (see retry.h).
 *
 * What it owns. Nothing shared: the policy is a plain value owned by the
 * connection, and the only state in this file is one thread-local PRNG state
 * per thread for pb_retry_random().
 *
 * The formula. With `attempt` tries so far (attempt >= 1):
 *     ceiling = min(cap, base * 2^(attempt-1))
 *     delay   = floor(ceiling * rand32 / 2^32)          in [0, ceiling)
 *     delay   = max(delay, retry_after_ms)              when the server sent one
 * rand32 is a uniform value in [0, 2^32) read as a fraction of 1, so tests can
 * pass 0 (no delay), 1u << 31 (half the ceiling) or UINT32_MAX (just under the
 * ceiling) and get exact expected numbers.
 *
 * Invariants.
 *   - No overflow for any attempt: the shift is capped (attempt - 1 > 32 is
 *     treated as 32, and base < 2^32, so base << 32 < 2^64), and
 *     ceiling * rand32 < 2^32 * 2^32 = 2^64 fits in uint64_t.
 *   - The jittered delay never exceeds cap; only a larger Retry-After can
 *     push the result above cap (the server's word beats our cap).
 *   - A zero field in the policy means "the default" (a zero-initialised
 *     policy must not turn into a hot retry loop with base 0); cap < base
 *     simply caps every delay at cap.
 *   - attempt 0 is read as 1 (the header says attempt >= 1; a caller that
 *     passes 0 gets the first delay rather than a shift by -1).
 *
 * Threading. pb_retry_delay_ms() and pb_retry_exhausted() are pure.
 * pb_retry_random() keeps one xorshift64* state per thread (no lock), seeded
 * on first use from getrandom(2).
 *
 * Rejected designs.
 *   - rand()/random(): a hidden global lock (glibc) and a shared sequence;
 *     rand_r() has a tiny state and poor low bits.
 *   - getrandom(2) on every call: a system call per retry is cheap enough,
 *     but the kernel entropy pool buys nothing for jitter; it only seeds.
 *   - Doubles for the jitter: the header fixes rand32 as a 32-bit fraction so
 *     that the arithmetic is exact and testable with fixed values.
 *   - "Equal" or "decorrelated" jitter: full jitter spreads a thundering herd
 *     best for the same total work (the AWS article the header cites).
 */
#include "engine/retry.h"

#include <sys/random.h>
#include <time.h>

#define RETRY_DEFAULT_BASE_MS 500u
#define RETRY_DEFAULT_CAP_MS 300000u
#define RETRY_DEFAULT_MAX_ATTEMPTS 10u
#define RETRY_MAX_SHIFT 32u

void pb_retry_policy_default(struct pb_retry_policy *p)
{
    if (!p)
        return;
    p->base_ms = RETRY_DEFAULT_BASE_MS;
    p->cap_ms = RETRY_DEFAULT_CAP_MS;
    p->max_attempts = RETRY_DEFAULT_MAX_ATTEMPTS;
}

uint64_t pb_retry_delay_ms(const struct pb_retry_policy *p, uint32_t attempt, uint32_t rand32,
                           int64_t retry_after_ms)
{
    uint64_t base = p && p->base_ms ? p->base_ms : RETRY_DEFAULT_BASE_MS;
    uint64_t cap = p && p->cap_ms ? p->cap_ms : RETRY_DEFAULT_CAP_MS;
    uint32_t shift = attempt > 1 ? attempt - 1 : 0;
    uint64_t ceiling, delay;

    if (shift > RETRY_MAX_SHIFT)
        shift = RETRY_MAX_SHIFT;
    ceiling = base << shift; /* base < 2^32 and shift <= 32: no overflow */
    if (ceiling > cap)
        ceiling = cap;
    delay = (ceiling * (uint64_t)rand32) >> 32; /* < 2^64: ceiling < 2^32 */
    if (retry_after_ms >= 0 && (uint64_t)retry_after_ms > delay)
        delay = (uint64_t)retry_after_ms;
    return delay;
}

int pb_retry_exhausted(const struct pb_retry_policy *p, uint32_t attempt)
{
    uint32_t max = p && p->max_attempts ? p->max_attempts : RETRY_DEFAULT_MAX_ATTEMPTS;
    return attempt >= max;
}

/* ---- randomness ------------------------------------------------------------ */

static _Thread_local uint64_t rng_state; /* 0 = not seeded yet (xorshift never yields 0) */

static uint64_t rng_seed(void)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        /* No entropy yet (early boot) or no syscall: jitter only needs to
         * differ between threads and processes, not to be secret. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^
               (uint64_t)(uintptr_t)&rng_state;
    }
    return seed ? seed : 0x2545F4914F6CDD1Dull;
}

uint32_t pb_retry_random(void)
{
    uint64_t x = rng_state;
    if (!x)
        x = rng_seed();
    /* xorshift64* (Vigna); the high 32 bits of the product are the good ones. */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}
