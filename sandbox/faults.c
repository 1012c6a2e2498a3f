/*
 * sandbox/faults.c: the fault settings and decisions of one emulated system
 * (see faults.h for the keys and their order of evaluation).
 *
 * Owns: nothing outside the struct; every JSON object it returns is new and
 * belongs to the caller.
 *
 * Invariants: settings always satisfy the bounds of faults.h (a merge is
 * validated on a private copy and committed only when every key is good);
 * rng is never 0 (xorshift would stick there).
 *
 * Locking: f->lock guards settings, counters, rng and the 500/503 toggle. It
 * is held only for a few arithmetic steps; the caller sleeps (latency) after
 * sbx_faults_decide() has returned.
 *
 * Rejected: an atomic per field. A merge must change several fields at once
 * (e.g. {"reset":true,"error_rate":1}), and a reader must not see half of it.
 */
#include "faults.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/crypto.h"

#define PPM 1000000u

/* ---- validation of one key ------------------------------------------------- */

/* A rate 0..1 from a JSON number into parts per million. */
static enum pb_rc rate_from_json(const char *key, json_t *v, uint32_t *out, struct pb_err *err)
{
    double d;
    if (json_is_null(v)) {
        *out = 0;
        return PB_OK;
    }
    if (!json_is_number(v))
        return pb_err_set(err, PB_ERR_INVALID, "fault %s must be a number from 0 to 1", key);
    d = json_number_value(v);
    if (!(d >= 0.0 && d <= 1.0))
        return pb_err_set(err, PB_ERR_INVALID, "fault %s must be from 0 to 1, got %g", key, d);
    *out = (uint32_t)lround(d * (double)PPM);
    return PB_OK;
}

static enum pb_rc uint_from_json(const char *key, json_t *v, unsigned max, unsigned *out,
                                 struct pb_err *err)
{
    json_int_t n;
    if (json_is_null(v)) {
        *out = 0;
        return PB_OK;
    }
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        json_real_value(v) >= 0 && json_real_value(v) <= (double)max) {
        *out = (unsigned)json_real_value(v);
        return PB_OK;
    }
    if (!json_is_integer(v))
        return pb_err_set(err, PB_ERR_INVALID, "fault %s must be a whole number", key);
    n = json_integer_value(v);
    if (n < 0 || (uint64_t)n > max)
        return pb_err_set(err, PB_ERR_INVALID, "fault %s must be from 0 to %u, got %lld", key,
                          max, (long long)n);
    *out = (unsigned)n;
    return PB_OK;
}

/* Apply one key to `s`. */
static enum pb_rc apply_key(struct sbx_fault_settings *s, const char *key, json_t *v,
                            struct pb_err *err)
{
    if (!strcmp(key, "latency_ms"))
        return uint_from_json(key, v, SBX_FAULT_MS_MAX, &s->latency_ms, err);
    if (!strcmp(key, "latency_jitter_ms"))
        return uint_from_json(key, v, SBX_FAULT_MS_MAX, &s->latency_jitter_ms, err);
    if (!strcmp(key, "slow_body_ms"))
        return uint_from_json(key, v, SBX_FAULT_MS_MAX, &s->slow_body_ms, err);
    if (!strcmp(key, "burst_429"))
        return uint_from_json(key, v, SBX_FAULT_BURST_MAX, &s->burst_429, err);
    if (!strcmp(key, "retry_after_s"))
        return uint_from_json(key, v, SBX_FAULT_RETRY_AFTER_MAX, &s->retry_after_s, err);
    if (!strcmp(key, "error_rate"))
        return rate_from_json(key, v, &s->error_ppm, err);
    if (!strcmp(key, "reset_rate"))
        return rate_from_json(key, v, &s->reset_ppm, err);
    /* Read-only members of GET /_sandbox/faults, so that its output can be
     * posted back as is. */
    if (!strcmp(key, "counters") || !strcmp(key, "faults_injected") || !strcmp(key, "reset"))
        return PB_OK;
    return pb_err_set(err, PB_ERR_INVALID,
                      "unknown fault \"%s\" (known: latency_ms, latency_jitter_ms, error_rate, "
                      "burst_429, retry_after_s, reset_rate, slow_body_ms, reset)",
                      key);
}

/* Merge `patch` into `s` (a private copy). */
static enum pb_rc merge_into(struct sbx_fault_settings *s, json_t *patch, struct pb_err *err)
{
    const char *key;
    json_t *v;
    json_t *reset;
    if (!json_is_object(patch))
        return pb_err_set(err, PB_ERR_INVALID, "faults must be a JSON object");
    reset = json_object_get(patch, "reset");
    if (reset && !json_is_boolean(reset))
        return pb_err_set(err, PB_ERR_INVALID, "fault reset must be true or false");
    if (json_is_true(reset))
        memset(s, 0, sizeof(*s));
    json_object_foreach(patch, key, v)
    {
        enum pb_rc rc = apply_key(s, key, v, err);
        if (rc)
            return rc;
    }
    return PB_OK;
}

/* ---- public ----------------------------------------------------------------- */

enum pb_rc sbx_faults_init(struct sbx_faults *f, struct pb_err *err)
{
    memset(f, 0, sizeof(*f));
    if (pthread_mutex_init(&f->lock, NULL))
        return pb_err_set(err, PB_ERR_INTERNAL, "cannot create the fault mutex");
    if (pb_random_bytes(&f->rng, sizeof(f->rng)) || f->rng == 0)
        f->rng = (uint64_t)time(NULL) * 2654435761u + 1;
    f->magic = SBX_FAULTS_MAGIC;
    return PB_OK;
}

void sbx_faults_destroy(struct sbx_faults *f)
{
    if (!f || f->magic != SBX_FAULTS_MAGIC)
        return;
    f->magic = 0;
    pthread_mutex_destroy(&f->lock);
}

enum pb_rc sbx_faults_check(json_t *patch, struct pb_err *err)
{
    struct sbx_fault_settings s;
    memset(&s, 0, sizeof(s));
    return merge_into(&s, patch, err);
}

enum pb_rc sbx_faults_merge(struct sbx_faults *f, json_t *patch, struct pb_err *err)
{
    struct sbx_fault_settings s;
    enum pb_rc rc;
    pthread_mutex_lock(&f->lock);
    s = f->set;
    rc = merge_into(&s, patch, err);
    if (rc == PB_OK)
        f->set = s;
    pthread_mutex_unlock(&f->lock);
    return rc;
}

/* xorshift64*: uniform enough for fault dice, and lock-protected. */
static uint64_t next_random(struct sbx_faults *f)
{
    uint64_t x = f->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    f->rng = x;
    return x * 2685821657736338717ull;
}

/* 1 with probability ppm / 10^6. */
static int roll(struct sbx_faults *f, uint32_t ppm)
{
    if (ppm == 0)
        return 0;
    if (ppm >= PPM)
        return 1;
    return (next_random(f) >> 11) % PPM < ppm;
}

void sbx_faults_decide(struct sbx_faults *f, struct sbx_fault_plan *plan)
{
    memset(plan, 0, sizeof(*plan));
    pthread_mutex_lock(&f->lock);
    plan->delay_ms = f->set.latency_ms;
    if (f->set.latency_jitter_ms)
        plan->delay_ms += (unsigned)(next_random(f) % ((uint64_t)f->set.latency_jitter_ms + 1));
    if (f->set.burst_429 > 0) {
        f->set.burst_429--;
        plan->kind = SBX_FAULT_429;
        plan->retry_after_s = f->set.retry_after_s ? f->set.retry_after_s : 1;
        f->count.burst_429++;
    } else if (roll(f, f->set.reset_ppm)) {
        plan->kind = SBX_FAULT_RESET;
        f->count.reset++;
    } else if (roll(f, f->set.error_ppm)) {
        plan->kind = (f->error_toggle++ & 1u) ? SBX_FAULT_503 : SBX_FAULT_500;
        if (plan->kind == SBX_FAULT_500)
            f->count.error_500++;
        else
            f->count.error_503++;
    } else {
        plan->slow_body_ms = f->set.slow_body_ms;
    }
    pthread_mutex_unlock(&f->lock);
}

void sbx_faults_count_applied(struct sbx_faults *f, const struct sbx_fault_plan *plan)
{
    pthread_mutex_lock(&f->lock);
    if (plan->delay_ms)
        f->count.latency++;
    if (plan->slow_body_ms)
        f->count.slow_body++;
    pthread_mutex_unlock(&f->lock);
}

void sbx_faults_reset_counters(struct sbx_faults *f)
{
    pthread_mutex_lock(&f->lock);
    memset(&f->count, 0, sizeof(f->count));
    pthread_mutex_unlock(&f->lock);
}

json_t *sbx_faults_counters_json(struct sbx_faults *f, uint64_t *total_out)
{
    struct sbx_fault_counters c;
    uint64_t total;
    pthread_mutex_lock(&f->lock);
    c = f->count;
    pthread_mutex_unlock(&f->lock);
    total = c.latency + c.burst_429 + c.error_500 + c.error_503 + c.reset + c.slow_body;
    if (total_out)
        *total_out = total;
    return json_pack("{sIsIsIsIsIsI}", "latency", (json_int_t)c.latency, "burst_429",
                     (json_int_t)c.burst_429, "error_500", (json_int_t)c.error_500, "error_503",
                     (json_int_t)c.error_503, "reset", (json_int_t)c.reset, "slow_body",
                     (json_int_t)c.slow_body);
}

json_t *sbx_faults_to_json(struct sbx_faults *f)
{
    struct sbx_fault_settings s;
    uint64_t total = 0;
    json_t *counters;
    pthread_mutex_lock(&f->lock);
    s = f->set;
    pthread_mutex_unlock(&f->lock);
    counters = sbx_faults_counters_json(f, &total);
    if (!counters)
        return NULL;
    return json_pack("{sIsIsfsIsIsfsIsosI}", "latency_ms", (json_int_t)s.latency_ms,
                     "latency_jitter_ms", (json_int_t)s.latency_jitter_ms, "error_rate",
                     (double)s.error_ppm / PPM, "burst_429", (json_int_t)s.burst_429,
                     "retry_after_s", (json_int_t)s.retry_after_s, "reset_rate",
                     (double)s.reset_ppm / PPM, "slow_body_ms", (json_int_t)s.slow_body_ms,
                     "counters", counters, "faults_injected", (json_int_t)total);
}
