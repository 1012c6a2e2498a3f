/*
 * net/trace.h: redacted records of outbound calls, for dead letters and
 * `paybridge events show`.
 *
 * A trace is a jansson array; each call appends one object:
 *   {"method","url","status","duration_ms","error","request","response"}
 * Redaction rules (applied to every string stored):
 *   - header values are never recorded (they carry tokens and Basic auth);
 *   - URL query parameters whose name contains "password", "secret", "token",
 *     "key" (case-insensitive) have their value replaced by "***";
 *   - bodies: JSON members whose key contains password, secret, token,
 *     authorization, cvv, securityCode, cardNumber are replaced by "***";
 *     form bodies get the same rule per field; then every PAN-like digit run
 *     (Luhn-valid, 13-19 digits) is masked (core/pan.h);
 *   - bodies are truncated to PB_TRACE_BODY_MAX bytes with a "...(truncated N bytes)" suffix.
 */
#ifndef PB_NET_TRACE_H
#define PB_NET_TRACE_H

#include <jansson.h>

#include "net/http_client.h"

#define PB_TRACE_BODY_MAX 8192

/* Append a redacted record of `call` (after pb_http_perform) to `trace`
 * (a JSON array; no-op when NULL). `rc`/`err` are the call's outcome. */
void pb_trace_http(json_t *trace, const struct pb_http_call *call, enum pb_rc rc,
                   const struct pb_err *err);

/* Redact a body in the way described above; returns a malloc'd string. */
char *pb_trace_redact_body(const char *body, size_t len);

/* Redact a URL's secret-looking query parameters; returns a malloc'd string. */
char *pb_trace_redact_url(const char *url);

/* Deferred redaction, for the engine's hot path. After pb_trace_defer(1) on a
 * thread, pb_trace_http() on that thread keeps the raw bodies in hidden members
 * instead of redacting them at once; pb_trace_finish() must then run before the
 * trace is stored or printed: it redacts the bodies (keep_bodies, e.g. for a
 * dead letter) or drops them (a successful batch, where only timings are kept).
 * Redacting every body of every successful call cost a quarter of the CPU per
 * event (bench/). */
void pb_trace_defer(int on);
void pb_trace_finish(json_t *trace, int keep_bodies);

#endif
