/*
 * engine/retry.h: the retry policy of a connection.
 *
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential
 * Backoff And Jitter"): delay = random(0, min(cap, base * 2^(attempt-1))).
 * A Retry-After from the server is a floor: the delay is never shorter.
 * After max_attempts the job becomes a dead letter.
 */
#ifndef PB_ENGINE_RETRY_H
#define PB_ENGINE_RETRY_H

#include <stdint.h>

struct pb_retry_policy {
    uint32_t base_ms;       /* default 500 */
    uint32_t cap_ms;        /* default 300000 (5 minutes) */
    uint32_t max_attempts;  /* default 10; attempts include the first try */
};

void pb_retry_policy_default(struct pb_retry_policy *p);

/* Delay before attempt number `attempt + 1`, given `attempt` tries so far
 * (attempt >= 1). `rand01` is a uniform random value in [0, 1) scaled by
 * 2^32: pass pb_retry_random() in production, a fixed value in tests.
 * retry_after_ms < 0 means none. */
uint64_t pb_retry_delay_ms(const struct pb_retry_policy *p, uint32_t attempt, uint32_t rand32,
                           int64_t retry_after_ms);

/* True when `attempt` tries have used up the policy. */
int pb_retry_exhausted(const struct pb_retry_policy *p, uint32_t attempt);

uint32_t pb_retry_random(void);

#endif
