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

#endif
