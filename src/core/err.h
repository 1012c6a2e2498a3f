/*
 * core/err.h: the one error type of paybridge.
 *
 * Every function that can fail returns an `enum pb_rc` (0 = ok, negative =
 * error) and, when the caller passes one, fills a `struct pb_err` with a
 * message a user can act on ("amount.totalAmount must be a non-negative
 * integer, got -5"). Callers write `rc = f(..., err); if(rc) goto out;`.
 *
 * The rc says *what kind* of failure it is; the engine's retry policy reads it:
 * PB_ERR_TRANSIENT is retried, PB_ERR_PERMANENT / PB_ERR_INVALID / PB_ERR_MAPPING
 * go to dead letters. Outside input never aborts the process: it returns
 * PB_ERR_INVALID (or a more specific code) with a message.
 *
 * This file owns nothing but the error struct; it touches no other module.
 */
#ifndef PB_CORE_ERR_H
#define PB_CORE_ERR_H

#include <stdarg.h>
#include <stddef.h>

enum pb_rc {
    PB_OK = 0,
    PB_ERR_NOMEM = -1,      /* allocation failed */
    PB_ERR_INVALID = -2,    /* bad input: malformed, missing field, wrong type */
    PB_ERR_NOTFOUND = -3,   /* no such record / connection / route */
    PB_ERR_EXISTS = -4,     /* already there (duplicate) */
    PB_ERR_IO = -5,         /* file or socket I/O failed */
    PB_ERR_TRANSIENT = -6,  /* may succeed if retried: network, timeout, 5xx, 429 */
    PB_ERR_PERMANENT = -7,  /* will not succeed if retried: validation 4xx, business rule */
    PB_ERR_AUTH = -8,       /* authentication failed (signature, credentials) */
    PB_ERR_TOOBIG = -9,     /* input above a configured limit */
    PB_ERR_CONFIG = -10,    /* configuration error */
    PB_ERR_STORE = -11,     /* the durable store failed; the caller must not ack */
    PB_ERR_RANGE = -12,     /* arithmetic overflow or value out of range */
    PB_ERR_MAPPING = -13,   /* a flow mapping failed to evaluate */
    PB_ERR_CURRENCY = -14,  /* unknown or unsupported ISO 4217 code */
    PB_ERR_INTERNAL = -15,  /* a bug: an invariant did not hold */
};

#define PB_ERR_MSG_MAX 512

struct pb_err {
    enum pb_rc rc;              /* the code, mirrors the return value */
    char msg[PB_ERR_MSG_MAX];   /* human-readable, actionable; never holds secrets */
};

/* Set `err` (which may be NULL) to rc and a printf-style message.
 * Returns rc so that callers can `return pb_err_set(err, PB_ERR_INVALID, ...)`. */
enum pb_rc pb_err_set(struct pb_err *err, enum pb_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
enum pb_rc pb_err_setv(struct pb_err *err, enum pb_rc rc, const char *fmt, va_list ap);

/* Prefix the message already in err with "prefix: ". */
void pb_err_prefix(struct pb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void pb_err_clear(struct pb_err *err);

/* Stable lower-case name, e.g. "transient", for logs and JSON errors. */
const char *pb_rc_name(enum pb_rc rc);

/* True when the error class should be retried (only PB_ERR_TRANSIENT and PB_ERR_STORE). */
int pb_rc_is_transient(enum pb_rc rc);

#endif
