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

struct dump {
    char *data;     /* owned; NUL-terminated when len > 0 */
    size_t len;     /* bytes used, excluding the NUL */
    size_t cap;     /* bytes allocated */
    size_t flags;   /* jansson flags used for scalars */
    const char *const *decimal_keys; /* borrowed, NULL-terminated, may be NULL */
};

static int put(struct dump *d, const char *s, size_t n)
{
    if (n > PB_JSON_DUMP_MAX - d->len)
        return -1;
    if (d->len + n + 1 > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        char *p;
        while (cap < d->len + n + 1)
            cap *= 2;
        if (cap > PB_JSON_DUMP_MAX + 1)
            cap = PB_JSON_DUMP_MAX + 1;
        p = realloc(d->data, cap);
        if (!p)
            return -1;
        d->data = p;
        d->cap = cap;
    }
    memcpy(d->data + d->len, s, n);
    d->len += n;
    d->data[d->len] = '\0';
    return 0;
}

static int dump_callback(const char *buffer, size_t size, void *data)
{
    return put(data, buffer, size);
}

static int is_decimal_key(const struct dump *d, const char *key, size_t keylen)
{
    if (!d->decimal_keys)
        return 0;
    for (const char *const *k = d->decimal_keys; *k; k++)
        if (strlen(*k) == keylen && memcmp(*k, key, keylen) == 0)
            return 1;
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
        if (put(d, "-", 1))
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
    if (json_is_object(v)) {
        int first = 1;
        void *it;
        if (put(d, "{", 1))
            return -1;
        for (it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
            const char *key = json_object_iter_key(it);
            size_t keylen = json_object_iter_key_len(it);
            json_t *member = json_object_iter_value(it);
            json_t *key_json = json_stringn_nocheck(key, keylen);
            int rc;

            if (!key_json)
                return -1;
            rc = (!first && put(d, ",", 1)) ||
                 json_dump_callback(key_json, dump_callback, d, d->flags) || put(d, ":", 1);
            json_decref(key_json);
            if (rc)
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
        return put(d, "}", 1);
    }
    if (json_is_array(v)) {
        if (put(d, "[", 1))
            return -1;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i > 0 && put(d, ",", 1)) || dump_value(d, json_array_get(v, i), depth + 1))
                return -1;
        return put(d, "]", 1);
    }
    return json_dump_callback(v, dump_callback, d, d->flags) ? -1 : 0;
}

char *pb_json_dumps_decimal(const json_t *root, const char *const *decimal_keys, size_t flags)
{
    struct dump d = {
        .flags = JSON_COMPACT | JSON_ENCODE_ANY |
                 (flags & (JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH | JSON_REAL_PRECISION(31))),
        .decimal_keys = decimal_keys,
    };
    if (!root || dump_value(&d, root, 0) || put(&d, "", 0)) {
        free(d.data);
        return NULL;
    }
    return d.data;
}
