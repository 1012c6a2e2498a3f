/*
 * core/utf8.h: strict UTF-8 checks (RFC 3629), the one place that knows the
 * rules: no overlong forms, no UTF-16 surrogates (ED A0 80 ..), nothing above
 * U+10FFFF. jansson refuses exactly what these refuse, so text that passes
 * can go into a json_t unchecked (json_stringn_nocheck).
 *
 * Used by the JSON loader (core/json_load.c), the trace redaction
 * (net/trace.c) and the SYSPRO reply reader (connectors/syspro). Pure
 * functions, no state.
 */
#ifndef PB_CORE_UTF8_H
#define PB_CORE_UTF8_H

#include <stddef.h>

/* Length (1-4) of the valid UTF-8 sequence that starts s[0..n), or 0 when
 * the bytes there are not one (n == 0 included). NUL is a valid 1-byte
 * sequence; callers that refuse it check for it themselves. */
size_t pb_utf8_seq(const unsigned char *s, size_t n);

/* 1 when s[0..n) is valid UTF-8 throughout (NULs allowed), else 0. */
int pb_utf8_valid(const void *s, size_t n);

#endif
