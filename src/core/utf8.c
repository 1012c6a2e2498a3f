/*
 * core/utf8.c: strict UTF-8 checks (see utf8.h). Owns nothing; touches only
 * the bytes it is given.
 */
#include "core/utf8.h"

#include <stdint.h>

size_t pb_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c;
    size_t len;
    uint32_t cp;
    if (n == 0)
        return 0;
    c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

int pb_utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i = 0;
    while (i < n) {
        size_t k;
        if (s[i] < 0x80) { /* the common case, without the call */
            i++;
            continue;
        }
        if (!(k = pb_utf8_seq(s + i, n - i)))
            return 0;
        i += k;
    }
    return 1;
}
