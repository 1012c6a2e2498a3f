/*
 * core/money.c: the ISO 4217 table, exact decimal parsing and formatting,
 * checked arithmetic and exact FX conversion.
 *
 * What it owns. A constant, sorted table of currency codes and their minor
 * unit exponents. Nothing else: no allocation, no global mutable state, no
 * locale (isdigit() and strtoll() are avoided because they are locale- or
 * errno-dependent and accept things we must refuse, such as leading spaces,
 * '+' and "0x").
 *
 * The table. It is ISO 4217 List One as of 2026: every code with a numeric
 * minor unit. It is kept sorted by code so that lookup is a binary search;
 * tests/unit/test_money.c checks every entry against an independent copy,
 * which also catches a mis-sorted row (binary search would miss it). Codes
 * whose minor unit ISO gives as "N.A." (XAU, XAG, XPD, XPT, XBA..XBD, XDR,
 * XSU, XUA, XTS, XXX) are deliberately absent: they have no minor unit, so an
 * amount in them cannot be an int64 of minor units, and no payment gateway
 * settles in them. A few codes withdrawn in recent years (ANG, BGN, CUC, HRK,
 * SLL, ZWL) are kept and marked `withdrawn`, because refunds, chargebacks and
 * reconciliation reports for payments taken before a changeover still carry
 * them; rejecting them would strand those records in dead letters.
 *
 * Invariants.
 *   - Every accepted amount is exact: the parser never rounds. A decimal with
 *     more significant fractional digits than the currency allows is an
 *     error, not 1.234 -> 1.23.
 *   - Overflow is always detected with __builtin_*_overflow, never by
 *     checking after the fact (signed overflow is undefined behaviour).
 *   - INT64_MIN is a legal amount: magnitudes are computed in uint64_t so that
 *     -INT64_MIN never has to exist as an int64_t.
 *   - pb_money_convert() rounds exactly once, at the end, half to even
 *     (banker's rounding), so chains of conversions have no systematic bias.
 *
 * Rejected designs.
 *   - double or long double anywhere: 0.1 is not representable, and money that
 *     is almost right is wrong. Even the FX rate stays a decimal string until
 *     it becomes an exact integer numerator over a power of ten.
 *   - A decimal library (mpdecimal, GMP): an int64 amount times a rate of at
 *     most ~10^26 fits in __int128, so a dependency buys nothing here.
 *   - Silently rounding over-precise input ("1.234" GBP -> 1.23): it hides a
 *     mapping bug in a flow (usually the wrong currency) and loses money.
 *   - Accepting lower-case codes: codes are compared as bytes everywhere
 *     else (store keys, ERP payloads), so normalising here would only move the
 *     bug. Callers that read lenient input upper-case it explicitly.
 */
#include "core/money.h"

#include <stdio.h>
#include <string.h>

struct currency {
    char code[4];           /* ISO 4217 alphabetic code */
    unsigned char exponent; /* number of minor-unit digits, 0..PB_CURRENCY_EXPONENT_MAX */
    unsigned char withdrawn; /* 1: no longer in List One, still accepted (see header) */
};

/* Sorted by code (memcmp order). Keep it sorted: lookup is a binary search. */
static const struct currency currencies[] = {
    {"AED", 2, 0}, {"AFN", 2, 0}, {"ALL", 2, 0}, {"AMD", 2, 0}, {"ANG", 2, 1},
    {"AOA", 2, 0}, {"ARS", 2, 0}, {"AUD", 2, 0}, {"AWG", 2, 0}, {"AZN", 2, 0},
    {"BAM", 2, 0}, {"BBD", 2, 0}, {"BDT", 2, 0}, {"BGN", 2, 1}, {"BHD", 3, 0},
    {"BIF", 0, 0}, {"BMD", 2, 0}, {"BND", 2, 0}, {"BOB", 2, 0}, {"BOV", 2, 0},
    {"BRL", 2, 0}, {"BSD", 2, 0}, {"BTN", 2, 0}, {"BWP", 2, 0}, {"BYN", 2, 0},
    {"BZD", 2, 0}, {"CAD", 2, 0}, {"CDF", 2, 0}, {"CHE", 2, 0}, {"CHF", 2, 0},
    {"CHW", 2, 0}, {"CLF", 4, 0}, {"CLP", 0, 0}, {"CNY", 2, 0}, {"COP", 2, 0},
    {"COU", 2, 0}, {"CRC", 2, 0}, {"CUC", 2, 1}, {"CUP", 2, 0}, {"CVE", 2, 0},
    {"CZK", 2, 0}, {"DJF", 0, 0}, {"DKK", 2, 0}, {"DOP", 2, 0}, {"DZD", 2, 0},
    {"EGP", 2, 0}, {"ERN", 2, 0}, {"ETB", 2, 0}, {"EUR", 2, 0}, {"FJD", 2, 0},
    {"FKP", 2, 0}, {"GBP", 2, 0}, {"GEL", 2, 0}, {"GHS", 2, 0}, {"GIP", 2, 0},
    {"GMD", 2, 0}, {"GNF", 0, 0}, {"GTQ", 2, 0}, {"GYD", 2, 0}, {"HKD", 2, 0},
    {"HNL", 2, 0}, {"HRK", 2, 1}, {"HTG", 2, 0}, {"HUF", 2, 0}, {"IDR", 2, 0},
    {"ILS", 2, 0}, {"INR", 2, 0}, {"IQD", 3, 0}, {"IRR", 2, 0}, {"ISK", 0, 0},
    {"JMD", 2, 0}, {"JOD", 3, 0}, {"JPY", 0, 0}, {"KES", 2, 0}, {"KGS", 2, 0},
    {"KHR", 2, 0}, {"KMF", 0, 0}, {"KPW", 2, 0}, {"KRW", 0, 0}, {"KWD", 3, 0},
    {"KYD", 2, 0}, {"KZT", 2, 0}, {"LAK", 2, 0}, {"LBP", 2, 0}, {"LKR", 2, 0},
    {"LRD", 2, 0}, {"LSL", 2, 0}, {"LYD", 3, 0}, {"MAD", 2, 0}, {"MDL", 2, 0},
    {"MGA", 2, 0}, {"MKD", 2, 0}, {"MMK", 2, 0}, {"MNT", 2, 0}, {"MOP", 2, 0},
    {"MRU", 2, 0}, {"MUR", 2, 0}, {"MVR", 2, 0}, {"MWK", 2, 0}, {"MXN", 2, 0},
    {"MXV", 2, 0}, {"MYR", 2, 0}, {"MZN", 2, 0}, {"NAD", 2, 0}, {"NGN", 2, 0},
    {"NIO", 2, 0}, {"NOK", 2, 0}, {"NPR", 2, 0}, {"NZD", 2, 0}, {"OMR", 3, 0},
    {"PAB", 2, 0}, {"PEN", 2, 0}, {"PGK", 2, 0}, {"PHP", 2, 0}, {"PKR", 2, 0},
    {"PLN", 2, 0}, {"PYG", 0, 0}, {"QAR", 2, 0}, {"RON", 2, 0}, {"RSD", 2, 0},
    {"RUB", 2, 0}, {"RWF", 0, 0}, {"SAR", 2, 0}, {"SBD", 2, 0}, {"SCR", 2, 0},
    {"SDG", 2, 0}, {"SEK", 2, 0}, {"SGD", 2, 0}, {"SHP", 2, 0}, {"SLE", 2, 0},
    {"SLL", 2, 1}, {"SOS", 2, 0}, {"SRD", 2, 0}, {"SSP", 2, 0}, {"STN", 2, 0},
    {"SVC", 2, 0}, {"SYP", 2, 0}, {"SZL", 2, 0}, {"THB", 2, 0}, {"TJS", 2, 0},
    {"TMT", 2, 0}, {"TND", 3, 0}, {"TOP", 2, 0}, {"TRY", 2, 0}, {"TTD", 2, 0},
    {"TWD", 2, 0}, {"TZS", 2, 0}, {"UAH", 2, 0}, {"UGX", 0, 0}, {"USD", 2, 0},
    {"USN", 2, 0}, {"UYI", 0, 0}, {"UYU", 2, 0}, {"UYW", 4, 0}, {"UZS", 2, 0},
    {"VED", 2, 0}, {"VES", 2, 0}, {"VND", 0, 0}, {"VUV", 0, 0}, {"WST", 2, 0},
    {"XAF", 0, 0}, {"XCD", 2, 0}, {"XCG", 2, 0}, {"XOF", 0, 0}, {"XPF", 0, 0},
    {"YER", 2, 0}, {"ZAR", 2, 0}, {"ZMW", 2, 0}, {"ZWG", 2, 0}, {"ZWL", 2, 1},
};

#define CURRENCY_COUNT (sizeof(currencies) / sizeof(currencies[0]))

/* 10^0 .. 10^18: every power of ten that fits in int64_t. */
static const int64_t pow10_i64[19] = {
    1LL,
    10LL,
    100LL,
    1000LL,
    10000LL,
    100000LL,
    1000000LL,
    10000000LL,
    100000000LL,
    1000000000LL,
    10000000000LL,
    100000000000LL,
    1000000000000LL,
    10000000000000LL,
    100000000000000LL,
    1000000000000000LL,
    10000000000000000LL,
    100000000000000000LL,
    1000000000000000000LL,
};

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int code_well_formed(const char *code)
{
    return code && code[0] >= 'A' && code[0] <= 'Z' && code[1] >= 'A' && code[1] <= 'Z' &&
           code[2] >= 'A' && code[2] <= 'Z' && code[3] == '\0';
}

static const struct currency *currency_find(const char *code)
{
    size_t lo = 0, hi = CURRENCY_COUNT;
    if (!code_well_formed(code))
        return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(code, currencies[mid].code, 3);
        if (c == 0)
            return &currencies[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

int pb_currency_exponent(const char *code)
{
    const struct currency *c = currency_find(code);
    return c ? (int)c->exponent : -1;
}

int pb_currency_valid(const char *code) { return currency_find(code) != NULL; }

/* Copy at most 48 bytes of untrusted text into `out` for an error message,
 * replacing bytes that are not printable ASCII (or are '"' / '\\') with '?'
 * and marking truncation with "...". */
static const char *quote_text(const char *text, char out[56])
{
    size_t i = 0, o = 0;
    for (; text[i] && i < 48; i++) {
        unsigned char c = (unsigned char)text[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    if (text[i]) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* Same for a currency code, which may itself be hostile. */
static const char *quote_code(const char *code, char out[56])
{
    return code ? quote_text(code, out) : "(null)";
}

static enum pb_rc currency_error(struct pb_err *err, const char *code)
{
    char q[56];
    if (!code_well_formed(code))
        return pb_err_set(err, PB_ERR_CURRENCY,
                          "currency code \"%s\" is not three upper-case letters (ISO 4217)",
                          quote_code(code, q));
    return pb_err_set(err, PB_ERR_CURRENCY, "unknown currency code \"%s\" (not in ISO 4217)",
                      code);
}

/* The pieces of a plain decimal "-123.4500". */
struct decimal {
    int negative;          /* a leading '-' was present */
    const char *int_digits; /* first digit of the integer part */
    size_t int_len;        /* >= 1 */
    const char *frac_digits; /* first fractional digit (meaningless when frac_len == 0) */
    size_t frac_len;       /* fractional digits without trailing zeros */
    size_t frac_written;   /* fractional digits as written, trailing zeros included */
};

/* Split `text` by the grammar -?[0-9]+(\.[0-9]+)? . On failure return a
 * description of the problem that completes the sentence "<what> \"x\" ...". */
static const char *decimal_split(const char *text, struct decimal *d, char detail[64])
{
    const char *p = text;
    memset(d, 0, sizeof(*d));
    if (*p == '\0')
        return "is empty";
    if (*p == '+')
        return "has a '+' sign; only '-' is allowed";
    if (*p == '-') {
        d->negative = 1;
        p++;
    }
    if (*p == '.')
        return "needs a digit before the decimal point";
    d->int_digits = p;
    while (is_digit(*p))
        p++;
    d->int_len = (size_t)(p - d->int_digits);
    if (*p == '.') {
        p++;
        d->frac_digits = p;
        while (is_digit(*p))
            p++;
        d->frac_written = (size_t)(p - d->frac_digits);
        if (d->frac_written == 0 && *p == '\0')
            return "needs a digit after the decimal point";
        d->frac_len = d->frac_written;
        while (d->frac_len > 0 && d->frac_digits[d->frac_len - 1] == '0')
            d->frac_len--;
    }
    if (*p == '\0' && d->int_len > 0)
        return NULL;
    if ((*p == 'e' || *p == 'E') && (d->int_len > 0))
        return "uses exponent notation; send a plain decimal such as \"1000.00\"";
    if (d->int_len == 0 && *p == '\0')
        return "has no digits";
    {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x21 && c < 0x7f && c != '"' && c != '\\')
            snprintf(detail, 64, "is not a plain decimal number: unexpected '%c' at offset %zu",
                     (char)c, (size_t)(p - text));
        else
            snprintf(detail, 64,
                     "is not a plain decimal number: unexpected byte 0x%02x at offset %zu",
                     (unsigned)c, (size_t)(p - text));
    }
    return detail;
}

/* magnitude = magnitude * 10 + digit, checked. Returns 0 on overflow. */
static int u64_push_digit(uint64_t *magnitude, char digit)
{
    uint64_t m;
    if (__builtin_mul_overflow(*magnitude, 10u, &m))
        return 0;
    if (__builtin_add_overflow(m, (uint64_t)(digit - '0'), &m))
        return 0;
    *magnitude = m;
    return 1;
}

/* Signed value of a magnitude, or 0 when it does not fit in int64_t. */
static int u64_to_i64(uint64_t magnitude, int negative, int64_t *out)
{
    if (negative) {
        if (magnitude > (uint64_t)INT64_MAX + 1u)
            return 0;
        /* -(INT64_MAX + 1) computed without ever forming it as a positive int64. */
        *out = magnitude == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)magnitude;
        return 1;
    }
    if (magnitude > (uint64_t)INT64_MAX)
        return 0;
    *out = (int64_t)magnitude;
    return 1;
}

static void format_digits(uint64_t magnitude, int negative, int exponent, char *out)
{
    char rev[24];
    size_t n = 0, o = 0;
    do {
        rev[n++] = (char)('0' + magnitude % 10u);
        magnitude /= 10u;
    } while (magnitude);
    while (n < (size_t)exponent + 1u)
        rev[n++] = '0';
    if (negative)
        out[o++] = '-';
    while (n > (size_t)exponent)
        out[o++] = rev[--n];
    if (exponent > 0) {
        out[o++] = '.';
        while (n > 0)
            out[o++] = rev[--n];
    }
    out[o] = '\0';
}

enum pb_rc pb_money_parse_decimal(const char *text, const char *currency, int64_t *minor_out,
                                  struct pb_err *err)
{
    struct decimal d;
    char q[56], detail[64], limit[PB_MONEY_DECIMAL_MAX];
    const char *problem;
    uint64_t magnitude = 0;
    int64_t value;
    int exponent = pb_currency_exponent(currency);

    if (exponent < 0)
        return currency_error(err, currency);
    if (!text)
        return pb_err_set(err, PB_ERR_INVALID, "amount is missing");
    problem = decimal_split(text, &d, detail);
    if (problem)
        return pb_err_set(err, PB_ERR_INVALID, "amount \"%s\" %s", quote_text(text, q), problem);
    if (d.frac_len > (size_t)exponent) {
        /* "1.234" has 3 decimal places; "1.2340" has 3 significant ones. */
        const char *kind = d.frac_len == d.frac_written ? "" : "significant ";
        const char *plural = d.frac_len == 1 ? "" : "s";
        if (exponent == 0)
            return pb_err_set(err, PB_ERR_INVALID,
                              "amount \"%s\" has %zu %sdecimal place%s but %s has no minor unit",
                              quote_text(text, q), d.frac_len, kind, plural, currency);
        return pb_err_set(err, PB_ERR_INVALID,
                          "amount \"%s\" has %zu %sdecimal place%s but %s allows %d",
                          quote_text(text, q), d.frac_len, kind, plural, currency, exponent);
    }
    for (size_t i = 0; i < d.int_len; i++)
        if (!u64_push_digit(&magnitude, d.int_digits[i]))
            goto range;
    for (int i = 0; i < exponent; i++)
        if (!u64_push_digit(&magnitude, (size_t)i < d.frac_len ? d.frac_digits[i] : '0'))
            goto range;
    if (!u64_to_i64(magnitude, d.negative, &value))
        goto range;
    *minor_out = value;
    return PB_OK;

range:
    format_digits((uint64_t)INT64_MAX, 0, exponent, limit);
    return pb_err_set(err, PB_ERR_RANGE, "amount \"%s\" is out of range for %s (limit %s)",
                      quote_text(text, q), currency, limit);
}

enum pb_rc pb_money_format_decimal(int64_t minor, const char *currency, char *buf, size_t len,
                                   struct pb_err *err)
{
    char tmp[PB_MONEY_DECIMAL_MAX];
    size_t n;
    int exponent = pb_currency_exponent(currency);
    /* Unsigned negation is defined for every value, INT64_MIN included. */
    uint64_t magnitude = minor < 0 ? 0u - (uint64_t)minor : (uint64_t)minor;

    if (exponent < 0)
        return currency_error(err, currency);
    format_digits(magnitude, minor < 0, exponent, tmp);
    n = strlen(tmp);
    if (!buf || len < n + 1)
        return pb_err_set(err, PB_ERR_TOOBIG,
                          "formatting %s amount needs %zu bytes, buffer has %zu", currency, n + 1,
                          buf ? len : 0);
    memcpy(buf, tmp, n + 1);
    return PB_OK;
}

enum pb_rc pb_money_add(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return PB_ERR_RANGE;
    *out = r;
    return PB_OK;
}

enum pb_rc pb_money_sub(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r))
        return PB_ERR_RANGE;
    *out = r;
    return PB_OK;
}

enum pb_rc pb_money_mul_i64(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return PB_ERR_RANGE;
    *out = r;
    return PB_OK;
}

/*
 * Conversion arithmetic. With the rate written as R / 10^k (R an integer, k
 * its significant fractional digits), ef and et the exponents of `from` and
 * `to`, the exact result in minor units of `to` is
 *
 *     minor * R * 10^et / 10^(ef + k)  =  minor * R * 10^s,  s = et - ef - k.
 *
 * When s >= 0 it is an integer (no rounding). When s < 0 it is N / D with
 * N = minor * R and D = 10^-s <= 10^(4 + 12), rounded half to even.
 *
 * Why __int128 is enough: |minor| <= 2^63 and R is capped below 2^127, so
 * minor * R may overflow int128 only when |N| >= 2^127 ~ 1.7e38; then
 * |N / D| >= 1.7e38 / 1e16 > INT64_MAX, so the true result overflows int64
 * anyway and PB_ERR_RANGE is the right answer whichever check fires first.
 */
enum pb_rc pb_money_convert(int64_t minor, const char *from, const char *to,
                            const char *rate_decimal, int64_t *out, struct pb_err *err)
{
    struct decimal d;
    char q[56], detail[64], amount[PB_MONEY_DECIMAL_MAX];
    const char *problem;
    __int128 rate = 0, n, result;
    int ef = pb_currency_exponent(from), et = pb_currency_exponent(to), s;

    if (ef < 0)
        return currency_error(err, from);
    if (et < 0)
        return currency_error(err, to);
    if (!rate_decimal)
        return pb_err_set(err, PB_ERR_INVALID, "converting %s to %s: the FX rate is missing", from,
                          to);
    problem = decimal_split(rate_decimal, &d, detail);
    if (problem)
        return pb_err_set(err, PB_ERR_INVALID, "converting %s to %s: rate \"%s\" %s", from, to,
                          quote_text(rate_decimal, q), problem);
    if (d.negative)
        return pb_err_set(err, PB_ERR_INVALID, "converting %s to %s: rate \"%s\" is negative",
                          from, to, quote_text(rate_decimal, q));
    if (d.frac_len > PB_MONEY_RATE_DECIMALS_MAX)
        return pb_err_set(err, PB_ERR_INVALID,
                          "converting %s to %s: rate \"%s\" has %zu decimal places, at most %d "
                          "are supported",
                          from, to, quote_text(rate_decimal, q), d.frac_len,
                          PB_MONEY_RATE_DECIMALS_MAX);
    for (size_t i = 0; i < d.int_len + d.frac_len; i++) {
        char c = i < d.int_len ? d.int_digits[i] : d.frac_digits[i - d.int_len];
        if (__builtin_mul_overflow(rate, (__int128)10, &rate) ||
            __builtin_add_overflow(rate, (__int128)(c - '0'), &rate))
            return pb_err_set(err, PB_ERR_RANGE, "converting %s to %s: rate \"%s\" is too large",
                              from, to, quote_text(rate_decimal, q));
    }
    if (rate == 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "converting %s to %s: rate \"%s\" is zero; a rate must be positive", from,
                          to, quote_text(rate_decimal, q));

    s = et - ef - (int)d.frac_len;
    if (__builtin_mul_overflow((__int128)minor, rate, &n))
        goto range;
    if (s >= 0) {
        if (__builtin_mul_overflow(n, (__int128)pow10_i64[s], &result))
            goto range;
    } else {
        __int128 den = pow10_i64[-s]; /* -s <= PB_CURRENCY_EXPONENT_MAX + 12 = 16 */
        __int128 quot = n / den, rem = n % den; /* C truncates toward zero */
        __int128 twice = rem < 0 ? -2 * rem : 2 * rem;
        if (twice > den || (twice == den && (quot & 1) != 0))
            quot += n < 0 ? -1 : 1;
        result = quot;
    }
    if (result > INT64_MAX || result < INT64_MIN)
        goto range;
    *out = (int64_t)result;
    return PB_OK;

range:
    pb_money_format_decimal(minor, from, amount, sizeof(amount), NULL);
    return pb_err_set(err, PB_ERR_RANGE,
                      "converting %s %s to %s at rate \"%s\" gives an amount out of range", amount,
                      from, to, quote_text(rate_decimal, q));
}
