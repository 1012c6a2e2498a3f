/*
 * sandbox/sbx_notify.h: the pieces of a signed-notification sender that the
 * emulators which push notifications (opayo_notify.c, paytrace.c) share: one
 * HMAC-SHA256-signed POST with libcurl that a stop flag aborts at once, the
 * retry backoff, a timed wait on a monotonic condition variable, and the
 * random roll behind drop and duplicate rates.
 *
 * Owns: nothing with a lifetime. Each emulator keeps its own queue, thread,
 * settings, counters, header names and log events; these functions take
 * what they need as arguments and touch nothing else.
 */
#ifndef PB_SANDBOX_SBX_NOTIFY_H
#define PB_SANDBOX_SBX_NOTIFY_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* One signed POST of a notification body. */
struct sbx_post {
    const char *url;
    const char *secret;             /* the HMAC key; never logged */
    const char *sig_header;         /* "X-Opayo-Signature": lower-case hex HMAC-SHA256 of body */
    const char *const *more_headers;/* header lines sent after the signature, NULL-terminated */
    const char *body;               /* the exact bytes to POST */
    size_t len;
    long timeout_ms;                /* whole POST, and connect */
    size_t reply_max;               /* reply bytes read (and ignored) at most */
    int tcp_keepalive;              /* 1: CURLOPT_TCP_KEEPALIVE */
    atomic_int *stop;               /* nonzero aborts the POST in flight */
};

/* POSTs p with `curl` (reset first; live connections are kept). The headers
 * are Content-Type: application/json, the signature, then more_headers.
 * Returns the HTTP status, or 0 when there was no reply; *cc is curl's
 * result (CURLE_OK when the POST was not attempted: signing or header
 * lists failed), for the caller's log. */
long sbx_notify_post(CURL *curl, const struct sbx_post *p, CURLcode *cc);

/* The delay before the retry that follows `attempts_made` attempts: first_ms,
 * doubling, capped at cap_ms; in nanoseconds. */
uint64_t sbx_backoff_ns(unsigned attempts_made, unsigned first_ms, unsigned cap_ms);

/* Waits on cv (a CLOCK_MONOTONIC condition variable; mu held) until the
 * monotonic time due_ns at the latest. */
void sbx_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t due_ns);

/* 1 with probability `rate` (0..1), from the CSPRNG. */
int sbx_roll(double rate);

#endif
