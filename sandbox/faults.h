/*
 * sandbox/faults.h: fault injection for one emulated system.
 *
 * A `struct sbx_faults` holds the live fault settings of one system and the
 * counters of what it injected. The framework (sandbox.c) owns one per
 * system and asks it, for every request to an emulator route (never for
 * /_sandbox/...), what to do:
 *
 *   latency_ms, latency_jitter_ms  sleep latency_ms + uniform[0, jitter] first;
 *   burst_429, retry_after_s       the next burst_429 requests get 429 with
 *                                  Retry-After: retry_after_s (default 1) and
 *                                  X-Rate-Limit-Problem: minute;
 *   reset_rate  (0..1)             drop the connection with no reply;
 *   error_rate  (0..1)             answer 500 and 503 alternately;
 *   slow_body_ms                   send the emulator's reply body in chunks
 *                                  spread over this many milliseconds.
 *
 * The checks run in that order, so a burst stays deterministic whatever the
 * random rates are. Rates are kept in parts per million: they are
 * probabilities, not money, but an integer keeps comparisons exact and the
 * JSON echo stable.
 *
 * Settings are merged from JSON objects (config, the CLI's --fault flags,
 * POST /_sandbox/faults, pb_sandbox_set_faults()). A merge is all-or-nothing:
 * a bad value changes nothing and the error names the key. {"reset":true}
 * first clears every setting (counters stay).
 *
 * Locking: one mutex per struct guards settings, counters and the random
 * generator; no call holds it while sleeping or calling out. Every function
 * is thread-safe once sbx_faults_init() has returned.
 */
#ifndef PB_SANDBOX_FAULTS_H
#define PB_SANDBOX_FAULTS_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "core/err.h"

#define SBX_FAULTS_MAGIC 0x464c5453u

/* Upper bounds that keep a typo from wedging a test run for hours. */
#define SBX_FAULT_MS_MAX 600000u      /* latency, jitter, slow body: 10 minutes */
#define SBX_FAULT_BURST_MAX 100000000u
#define SBX_FAULT_RETRY_AFTER_MAX 86400u

struct sbx_fault_settings {
    unsigned latency_ms;            /* fixed delay before each request */
    unsigned latency_jitter_ms;     /* plus a uniform random delay up to this */
    uint32_t error_ppm;             /* probability of a 500/503, parts per million */
    unsigned burst_429;             /* number of upcoming requests that get 429 */
    unsigned retry_after_s;         /* Retry-After of injected 429s; 0 means 1 */
    uint32_t reset_ppm;             /* probability of a dropped connection, ppm */
    unsigned slow_body_ms;          /* spread the body over this long */
};

struct sbx_fault_counters {
    uint64_t latency;               /* requests delayed */
    uint64_t burst_429;             /* injected 429 replies */
    uint64_t error_500;             /* injected 500 replies */
    uint64_t error_503;             /* injected 503 replies */
    uint64_t reset;                 /* connections dropped */
    uint64_t slow_body;             /* replies slowed down */
};

struct sbx_faults {
    unsigned magic;                 /* SBX_FAULTS_MAGIC while initialised */
    pthread_mutex_t lock;           /* guards everything below */
    struct sbx_fault_settings set;  /* live settings */
    struct sbx_fault_counters count;/* what was injected */
    uint64_t rng;                   /* xorshift64* state, never 0 */
    unsigned error_toggle;          /* alternates 500 and 503 */
};

/* What to do with one request, decided by sbx_faults_decide(). */
enum sbx_fault_kind {
    SBX_FAULT_NONE = 0,             /* call the emulator */
    SBX_FAULT_429,                  /* answer 429 (retry_after_s filled) */
    SBX_FAULT_500,
    SBX_FAULT_503,
    SBX_FAULT_RESET,                /* drop the connection */
};

struct sbx_fault_plan {
    unsigned delay_ms;              /* sleep this long before anything else */
    enum sbx_fault_kind kind;
    unsigned retry_after_s;         /* for SBX_FAULT_429 */
    unsigned slow_body_ms;          /* for SBX_FAULT_NONE: slow the reply body */
};

enum pb_rc sbx_faults_init(struct sbx_faults *f, struct pb_err *err);
void sbx_faults_destroy(struct sbx_faults *f);

/* Merge `patch` (borrowed JSON object) into the settings; see the essay. */
enum pb_rc sbx_faults_merge(struct sbx_faults *f, json_t *patch, struct pb_err *err);

/* Decide the fate of the next request (consumes one unit of burst_429). */
void sbx_faults_decide(struct sbx_faults *f, struct sbx_fault_plan *plan);

/* Record that a delay or a slow body was actually applied. */
void sbx_faults_count_applied(struct sbx_faults *f, const struct sbx_fault_plan *plan);

/* {"latency_ms":..,...,"counters":{...},"faults_injected":n}: a new object
 * the caller owns (NULL when out of memory). */
json_t *sbx_faults_to_json(struct sbx_faults *f);

/* Counters as a new JSON object and their total (either may be NULL). */
json_t *sbx_faults_counters_json(struct sbx_faults *f, uint64_t *total_out);

/* Zero the counters, keep the settings. */
void sbx_faults_reset_counters(struct sbx_faults *f);

/* Validate a patch without applying it (used before a system starts). */
enum pb_rc sbx_faults_check(json_t *patch, struct pb_err *err);

#endif
