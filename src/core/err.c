/*
 * core/err.c: formatting of struct pb_err and the names of enum pb_rc.
 * Owns nothing; no allocation.
 */
#include "core/err.h"

#include <stdio.h>
#include <string.h>

enum pb_rc pb_err_setv(struct pb_err *err, enum pb_rc rc, const char *fmt, va_list ap)
{
    if (err) {
        err->rc = rc;
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    }
    return rc;
}

enum pb_rc pb_err_set(struct pb_err *err, enum pb_rc rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pb_err_setv(err, rc, fmt, ap);
    va_end(ap);
    return rc;
}

void pb_err_prefix(struct pb_err *err, const char *fmt, ...)
{
    char prefix[PB_ERR_MSG_MAX], old[PB_ERR_MSG_MAX];
    va_list ap;
    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    snprintf(err->msg, sizeof(err->msg), "%s: %s", prefix, old);
}

void pb_err_clear(struct pb_err *err)
{
    if (err) {
        err->rc = PB_OK;
        err->msg[0] = '\0';
    }
}

const char *pb_rc_name(enum pb_rc rc)
{
    switch (rc) {
    case PB_OK: return "ok";
    case PB_ERR_NOMEM: return "out_of_memory";
    case PB_ERR_INVALID: return "invalid";
    case PB_ERR_NOTFOUND: return "not_found";
    case PB_ERR_EXISTS: return "exists";
    case PB_ERR_IO: return "io";
    case PB_ERR_TRANSIENT: return "transient";
    case PB_ERR_PERMANENT: return "permanent";
    case PB_ERR_AUTH: return "unauthorized";
    case PB_ERR_TOOBIG: return "too_large";
    case PB_ERR_CONFIG: return "config";
    case PB_ERR_STORE: return "store";
    case PB_ERR_RANGE: return "out_of_range";
    case PB_ERR_MAPPING: return "mapping";
    case PB_ERR_CURRENCY: return "unknown_currency";
    case PB_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

int pb_rc_is_transient(enum pb_rc rc)
{
    return rc == PB_ERR_TRANSIENT || rc == PB_ERR_STORE;
}
