/*
 * core/money.h: amounts of money as exact integers.
 *
 * An amount is an int64_t count of the currency's minor unit (pence, cents,
 * fils) plus an ISO 4217 alphabetic code. GBP 10.99 is {1099, "GBP"}, JPY 1000
 * is {1000, "JPY"}, BHD 1.000 is {1000, "BHD"}. The number of minor-unit
 * digits (the "exponent") comes from the ISO 4217 table in money.c and from
 * nowhere else: connectors never hard-code "divide by 100".
 *
 * Text is the only way in or out. pb_money_parse_decimal() turns an exact
 * decimal string from the wire into minor units and refuses anything it would
 * have to round; pb_money_format_decimal() is its inverse. Arithmetic is
 * checked and returns PB_ERR_RANGE instead of wrapping. pb_money_convert()
 * applies a decimal FX rate exactly (128-bit integers) and rounds once, half
 * to even, to the target's minor unit.
 *
 * No function here allocates, keeps state or touches a double; all are
 * thread-safe. Currency codes are borrowed C strings that must be exactly three
 * upper-case ASCII letters ("gbp" and "GBP " are rejected, not repaired).
 */
#ifndef PB_CORE_MONEY_H
#define PB_CORE_MONEY_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

struct pb_money {
    int64_t minor;      /* amount in minor units of `currency`; may be negative */
    char currency[4];   /* ISO 4217 alphabetic code, NUL-terminated, e.g. "GBP" */
};

/* Largest minor-unit exponent in the table (CLF and UYW have 4). */
#define PB_CURRENCY_EXPONENT_MAX 4

/* A buffer of this size always holds pb_money_format_decimal()'s output,
 * e.g. "-922337203685477.5808" (21 characters) plus the NUL. */
#define PB_MONEY_DECIMAL_MAX 32

/* Most fractional digits accepted in an FX rate string for pb_money_convert(). */
#define PB_MONEY_RATE_DECIMALS_MAX 12

/* Minor-unit exponent of an ISO 4217 code (2 for GBP, 0 for JPY, 3 for BHD,
 * 4 for CLF), or -1 when the code is malformed or not in the table. */
int pb_currency_exponent(const char *code);

/* 1 when `code` is three upper-case letters and in the table, else 0. */
int pb_currency_valid(const char *code);

/* Parse an exact decimal such as "10.99", "-5", "0.5" or "1.230" into minor
 * units of `currency`. Grammar: optional '-', one or more digits, optionally
 * '.' and one or more digits. Fractional digits beyond the currency's exponent
 * are accepted only when they are zeros ("1.230" GBP is 123). Rejected with
 * PB_ERR_INVALID: empty text, '+', spaces, exponents ("1e3"), ".5", "5.",
 * "1.234" for GBP. Values outside int64 give PB_ERR_RANGE; an unknown or
 * malformed currency gives PB_ERR_CURRENCY. *minor_out is written only on
 * success. */
enum pb_rc pb_money_parse_decimal(const char *text, const char *currency, int64_t *minor_out,
                                  struct pb_err *err);

/* Format minor units as a plain decimal with exactly the currency's exponent
 * of fractional digits: 1099 GBP -> "10.99", -5 GBP -> "-0.05", 1000 JPY ->
 * "1000", 1000 BHD -> "1.000". Every int64 value, INT64_MIN included, is
 * handled. `buf` of `len` bytes receives a NUL-terminated string; a buffer
 * smaller than needed gives PB_ERR_TOOBIG (PB_MONEY_DECIMAL_MAX always fits). */
enum pb_rc pb_money_format_decimal(int64_t minor, const char *currency, char *buf, size_t len,
                                   struct pb_err *err);

/* Checked arithmetic on minor units: *out = a + b, a - b, a * b. On overflow
 * return PB_ERR_RANGE and leave *out untouched. The caller is responsible for
 * both operands being in the same currency. */
enum pb_rc pb_money_add(int64_t a, int64_t b, int64_t *out);
enum pb_rc pb_money_sub(int64_t a, int64_t b, int64_t *out);
enum pb_rc pb_money_mul_i64(int64_t a, int64_t b, int64_t *out);

/* Convert `minor` units of currency `from` into minor units of `to` with the
 * decimal rate `rate_decimal` ("0.8571": 1 unit of `from` = 0.8571 units of
 * `to`). The rate is a positive plain decimal with at most
 * PB_MONEY_RATE_DECIMALS_MAX significant fractional digits (trailing zeros
 * beyond that are accepted). The product is computed exactly and rounded once,
 * half to even, to the minor unit of `to`. Errors: PB_ERR_CURRENCY for either
 * code, PB_ERR_INVALID for a malformed, zero or negative rate, PB_ERR_RANGE
 * when the result does not fit in int64. */
enum pb_rc pb_money_convert(int64_t minor, const char *from, const char *to,
                            const char *rate_decimal, int64_t *out, struct pb_err *err);

#endif
