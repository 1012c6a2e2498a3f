/*
 * core/json.c: dotted-path getters, exact amounts from JSON, and a
 * serialiser that writes chosen decimal strings as JSON numbers.
 *
 * What it owns. Nothing beyond the output buffer of pb_json_dumps_decimal(),
 * which grows by doubling up to PB_JSON_DUMP_MAX and is handed to the caller.
 * Trees are only read.
 *
 * Amounts that arrive as JSON numbers. jansson decodes 10.99 into the
 * nearest double, 10.9900000000000002131628...; the text is gone. We recover
 * it without doing arithmetic on the double:
 *
 *   1. Format the double with "%.15g" (15 = DBL_DIG significant digits).
 *   2. Refuse the text if it has an exponent ("1e+300", "1.5e-07"), or is
 *      "inf"/"nan".
 *   3. Parse the text back with strtod() and require the very same double
 *      (bit for bit). If it is not, the double is not the nearest double of
 *      any decimal of at most 15 significant digits (e.g. 0.1 + 0.2, or a
 *      wire value with 17 significant digits), so we refuse it.
 *   4. Hand the text to pb_money_parse_decimal(), which applies the currency's
 *      exponent exactly and refuses over-precise amounts.
 *
 * Why this is exact. DBL_DIG = 15 is the C guarantee that any decimal with at
 * most 15 significant digits survives decimal -> nearest double -> decimal
 * rounded to 15 significant digits unchanged. So if the sender wrote a
 * decimal D of at most 15 significant digits, jansson produced nearest(D) and
 * step 1 prints D again (trailing zeros dropped: 10.10 -> "10.1"), and step 3
 * passes. A value with 16 or more significant digits cannot be told apart
 * from its 15-digit neighbour once it is a double; step 3 refuses most of
 * them and the rest differ from the printed value by less than 5e-16
 * relative, far below any currency's minor unit at the magnitudes where
 * %.15g has no exponent. Senders who need more should send strings.
 *
 * Locale: "%.15g" and strtod() follow LC_NUMERIC. paybridge never calls
 * setlocale(), so it is "C". Under a locale with a decimal comma the text
 * would be "10,99", which the money parser rejects: a failure, never a wrong
 * amount.
 *
 * Rejected designs.
 *   - JSON_DECODE_INT_AS_REAL or reading reals with json_number_value() and
 *     multiplying by 100: that is floating-point money, and 1.005 * 100 is
 *     100.49999999999999.
 *   - Patching jansson or vendoring a decimal-preserving parser: a second
 *     JSON parser is a second attack surface; strings on the wire and
 *     "%.15g" on the way in are enough for every gateway we talk to.
 *   - Emitting numbers by dumping the tree and then search-and-replacing
 *     "\"10.99\"" in the text: it cannot tell a money member from an equal
 *     string elsewhere (a description "10.99"), and breaks on escaped keys.
 */
#include "core/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"

/* ---- getters ----------------------------------------------------------------- */

/* Array index from a segment: decimal, no sign, no leading zeros. */
static int segment_index(const char *s, size_t n, size_t *index)
{
    size_t v = 0;
    if (n == 0 || (n > 1 && s[0] == '0'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        if (__builtin_mul_overflow(v, (size_t)10, &v) ||
            __builtin_add_overflow(v, (size_t)(s[i] - '0'), &v))
            return 0;
    }
    *index = v;
    return 1;
}

json_t *pb_json_path(const json_t *root, const char *dotted_path)
{
    json_t *cur = (json_t *)root; /* jansson's getters are not const-correct */
    const char *seg;

    if (!root || !dotted_path)
        return NULL;
    if (*dotted_path == '\0')
        return cur;
    seg = dotted_path;
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t n = dot ? (size_t)(dot - seg) : strlen(seg);
        size_t index;

        if (n == 0)
            return NULL;
        if (json_is_object(cur))
            cur = json_object_getn(cur, seg, n);
        else if (json_is_array(cur) && segment_index(seg, n, &index))
            cur = json_array_get(cur, index);
        else
            return NULL;
        if (!cur)
            return NULL;
        if (!dot)
            return cur;
        seg = dot + 1;
    }
}

const char *pb_json_str(const json_t *root, const char *dotted_path)
{
    json_t *v = pb_json_path(root, dotted_path);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- amounts ------------------------------------------------------------------- */

enum pb_rc pb_json_to_minor(const json_t *v, const char *currency, int64_t *out,
                            struct pb_err *err)
{
    int exponent = pb_currency_exponent(currency);

    if (exponent < 0)
        /* Let the money module word the currency error. */
        return pb_money_parse_decimal("0", currency, out, err);
    if (json_is_string(v)) {
        const char *text = json_string_value(v);
        if (json_string_length(v) != strlen(text))
            return pb_err_set(err, PB_ERR_INVALID, "amount string contains a NUL byte");
        return pb_money_parse_decimal(text, currency, out, err);
    }
    if (json_is_integer(v)) {
        json_int_t major = json_integer_value(v);
        int64_t scale = 1, minor;
        for (int i = 0; i < exponent; i++)
            scale *= 10; /* exponent <= 4: no overflow */
        if (__builtin_mul_overflow((int64_t)major, scale, &minor))
            return pb_err_set(err, PB_ERR_RANGE, "amount %lld %s is out of range",
                              (long long)major, currency);
        *out = minor;
        return PB_OK;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v), back;
        char text[40];
        snprintf(text, sizeof(text), "%.15g", d);
        if (strpbrk(text, "eEnNiI"))
            return pb_err_set(err, PB_ERR_INVALID,
                              "amount %s is not a plain decimal of at most 15 significant "
                              "digits; send amounts as decimal strings",
                              text);
        back = strtod(text, NULL);
        if (memcmp(&back, &d, sizeof(d)) != 0) {
            char exact[40];
            snprintf(exact, sizeof(exact), "%.17g", d);
            return pb_err_set(err, PB_ERR_INVALID,
                              "amount %s needs more than 15 significant digits to be exact; "
                              "send amounts as decimal strings",
                              exact);
        }
        return pb_money_parse_decimal(text, currency, out, err);
    }
    return pb_err_set(err, PB_ERR_INVALID, "amount must be a decimal string or a number, got %s",
                      !v                 ? "nothing"
                      : json_is_object(v) ? "an object"
                      : json_is_array(v)  ? "an array"
                      : json_is_null(v)   ? "null"
                                          : "a boolean");
}

/* ---- serialiser ---------------------------------------------------------------- */

/* One pass over the tree into one growing buffer. Everything is formatted
 * here except reals: how jansson prints a double depends on how jansson was
 * built (printf "%.17g" plus its own clean-up, or a shortest-digits dtoa in
 * newer releases) and on LC_NUMERIC, so a real is handed to json_dumpb() to
 * stay byte-identical with json_dumps(); documents carry money as strings,
 * so reals are rare. Strings are escaped as jansson's dump.c does: '"', '\\'
 * and control characters always (\b \f \n \r \t, the rest as \u00XX with
 * upper-case hex), '/' only with JSON_ESCAPE_SLASH, non-ASCII only with
 * JSON_ENSURE_ASCII (as \uXXXX, a UTF-16 surrogate pair above the BMP), and
 * a string that is not valid UTF-8 fails the whole dump, as in jansson.
 * DEL (0x7F) is written as is. tests/unit/test_json.c checks all of this
 * byte for byte against the previous implementation (one json_dump_callback()
 * per leaf) on a few hundred generated trees. */

/* Lengths of the first DUMP_KEYS_CACHED decimal keys are computed once per
 * call; further keys (no caller has that many) are measured as they are
 * compared. */
#define DUMP_KEYS_CACHED 32

struct dump {
    char *data;     /* owned; room for a NUL is always reserved */
    size_t len;     /* bytes used, excluding the NUL */
    size_t cap;     /* bytes allocated */
    size_t flags;   /* jansson flags, used for reals */
    int ensure_ascii, escape_slash;
    const char *const *decimal_keys; /* borrowed, NULL-terminated, may be NULL */
    size_t keylen[DUMP_KEYS_CACHED]; /* strlen of decimal_keys[i], i < DUMP_KEYS_CACHED */
};

/* Room for n more bytes and a NUL; -1 past PB_JSON_DUMP_MAX or out of memory. */
static int reserve(struct dump *d, size_t n)
{
    size_t cap;
    char *p;

    if (n > PB_JSON_DUMP_MAX - d->len)
        return -1;
    if (d->len + n + 1 <= d->cap)
        return 0;
    cap = d->cap ? d->cap : 256;
    while (cap < d->len + n + 1)
        cap *= 2;
    if (cap > PB_JSON_DUMP_MAX + 1)
        cap = PB_JSON_DUMP_MAX + 1;
    p = realloc(d->data, cap);
    if (!p)
        return -1;
    d->data = p;
    d->cap = cap;
    return 0;
}

static int put(struct dump *d, const char *s, size_t n)
{
    if (reserve(d, n))
        return -1;
    memcpy(d->data + d->len, s, n);
    d->len += n;
    return 0;
}

static int put_char(struct dump *d, char c)
{
    if (d->len + 2 > d->cap && reserve(d, 1))
        return -1;
    d->data[d->len++] = c;
    return 0;
}

/* Length of the well-formed UTF-8 sequence (2 to 4 bytes) starting at p,
 * which holds n >= 1 bytes and p[0] >= 0x80, with its code point in *cp; 0
 * when it is malformed: a stray continuation byte, C0/C1/F5..FF, a truncated
 * sequence, an overlong form, a surrogate (U+D800..U+DFFF) or a code point
 * above U+10FFFF. */
static size_t utf8_sequence(const unsigned char *p, size_t n, uint32_t *cp)
{
    uint32_t c = p[0], min;
    size_t len;

    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        c &= 0x1F;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        c &= 0x0F;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        c &= 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* "\uXXXX" with upper-case hex into out (6 bytes). */
static void u_escape(char *out, uint32_t unit)
{
    static const char hex[] = "0123456789ABCDEF";
    out[0] = '\\';
    out[1] = 'u';
    out[2] = hex[(unit >> 12) & 0xF];
    out[3] = hex[(unit >> 8) & 0xF];
    out[4] = hex[(unit >> 4) & 0xF];
    out[5] = hex[unit & 0xF];
}

/* A JSON string token for the n bytes at s. */
static int put_string(struct dump *d, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n, *run = p;

    if (put_char(d, '"'))
        return -1;
    while (p < end) {
        unsigned c = *p;
        char esc[12];
        size_t esc_len = 2;

        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80 && (c != '/' || !d->escape_slash)) {
            p++;
            continue;
        }
        if (c >= 0x80) {
            uint32_t cp;
            size_t len = utf8_sequence(p, (size_t)(end - p), &cp);
            if (len == 0)
                return -1;
            if (!d->ensure_ascii) {
                p += len;
                continue;
            }
            if (cp < 0x10000) {
                u_escape(esc, cp);
                esc_len = 6;
            } else {
                cp -= 0x10000;
                u_escape(esc, 0xD800 | (cp >> 10));
                u_escape(esc + 6, 0xDC00 | (cp & 0x3FF));
                esc_len = 12;
            }
            if (put(d, (const char *)run, (size_t)(p - run)) || put(d, esc, esc_len))
                return -1;
            p += len;
            run = p;
            continue;
        }
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '/': esc[1] = '/'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            u_escape(esc, c);
            esc_len = 6;
            break;
        }
        if (put(d, (const char *)run, (size_t)(p - run)) || put(d, esc, esc_len))
            return -1;
        p++;
        run = p;
    }
    if (put(d, (const char *)run, (size_t)(p - run)))
        return -1;
    return put_char(d, '"');
}

/* As printf("%lld"), without printf. */
static int put_integer(struct dump *d, json_int_t v)
{
    char buf[24], *end = buf + sizeof(buf), *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return put(d, p, (size_t)(end - p));
}

static int put_real(struct dump *d, const json_t *v)
{
    char buf[128]; /* jansson's own limit for a real is 100 bytes */
    size_t n = json_dumpb(v, buf, sizeof(buf), d->flags);
    if (n == 0 || n > sizeof(buf))
        return -1;
    return put(d, buf, n);
}

static int is_decimal_key(const struct dump *d, const char *key, size_t keylen)
{
    const char *const *k = d->decimal_keys;
    if (!k)
        return 0;
    for (size_t i = 0; k[i]; i++) {
        size_t n = i < DUMP_KEYS_CACHED ? d->keylen[i] : strlen(k[i]);
        if (n == keylen && memcmp(k[i], key, keylen) == 0)
            return 1;
    }
    return 0;
}

/* Matches -?[0-9]+(\.[0-9]+)? on exactly n bytes. */
static int is_decimal_text(const char *s, size_t n)
{
    size_t i = 0, digits = 0;
    if (i < n && s[i] == '-')
        i++;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    if (digits == 0)
        return 0;
    if (i == n)
        return 1;
    if (s[i] != '.')
        return 0;
    i++;
    digits = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    return digits > 0 && i == n;
}

/* Write decimal text as a JSON number token: drop leading zeros of the
 * integer part ("-007.5" -> "-7.5", "00" -> "0"). */
static int put_decimal(struct dump *d, const char *s, size_t n)
{
    size_t i = 0;
    if (s[0] == '-') {
        if (put_char(d, '-'))
            return -1;
        i = 1;
    }
    while (i + 1 < n && s[i] == '0' && s[i + 1] >= '0' && s[i + 1] <= '9')
        i++;
    return put(d, s + i, n - i);
}

static int dump_value(struct dump *d, const json_t *v, int depth)
{
    if (depth > PB_JSON_DEPTH_MAX)
        return -1;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        int first = 1;
        if (put_char(d, '{'))
            return -1;
        for (void *it = json_object_iter((json_t *)v); it;
             it = json_object_iter_next((json_t *)v, it)) {
            const char *key = json_object_iter_key(it);
            size_t keylen = json_object_iter_key_len(it);
            json_t *member = json_object_iter_value(it);

            if ((!first && put_char(d, ',')) || put_string(d, key, keylen) || put_char(d, ':'))
                return -1;
            first = 0;
            if (json_is_string(member) && is_decimal_key(d, key, keylen) &&
                is_decimal_text(json_string_value(member), json_string_length(member))) {
                if (put_decimal(d, json_string_value(member), json_string_length(member)))
                    return -1;
            } else if (dump_value(d, member, depth + 1)) {
                return -1;
            }
        }
        return put_char(d, '}');
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (put_char(d, '['))
            return -1;
        for (size_t i = 0; i < n; i++)
            if ((i > 0 && put_char(d, ',')) || dump_value(d, json_array_get(v, i), depth + 1))
                return -1;
        return put_char(d, ']');
    }
    case JSON_STRING:
        return put_string(d, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return put_integer(d, json_integer_value(v));
    case JSON_REAL:
        return put_real(d, v);
    case JSON_TRUE:
        return put(d, "true", 4);
    case JSON_FALSE:
        return put(d, "false", 5);
    case JSON_NULL:
        return put(d, "null", 4);
    default:
        return -1;
    }
}

char *pb_json_dumps_decimal(const json_t *root, const char *const *decimal_keys, size_t flags)
{
    struct dump d = {
        .flags = JSON_COMPACT | JSON_ENCODE_ANY | (flags & JSON_REAL_PRECISION(31)),
        .ensure_ascii = (flags & JSON_ENSURE_ASCII) != 0,
        .escape_slash = (flags & JSON_ESCAPE_SLASH) != 0,
        .decimal_keys = decimal_keys,
    };
    for (size_t i = 0; decimal_keys && i < DUMP_KEYS_CACHED && decimal_keys[i]; i++)
        d.keylen[i] = strlen(decimal_keys[i]);
    if (!root || dump_value(&d, root, 0) || reserve(&d, 0)) {
        free(d.data);
        return NULL;
    }
    d.data[d.len] = '\0';
    return d.data;
}
