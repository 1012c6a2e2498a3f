/*
 * core/json.h: helpers on top of jansson for reading payloads and for
 * writing money as exact JSON numbers.
 *
 * Reading: pb_json_path() walks a dotted path ("amount.currency",
 * "lines.0.total") through objects and arrays; pb_json_to_minor() turns
 * whatever a gateway sent for an amount (a decimal string, an integer, or a
 * JSON number that jansson decoded to a double) into exact minor units or an
 * error, never into a rounded guess.
 *
 * Writing: jansson has no decimal type and cannot emit a raw number token, so
 * money is kept as a JSON *string* ("10.99") while a payload is built, and
 * pb_json_dumps_decimal() emits the members the caller names as numbers
 * ({"UnitAmount":10.99}) while serialising.
 *
 * Ownership: returned json_t pointers and strings from the getters are
 * borrowed from the tree (valid while it lives, never freed by the caller);
 * pb_json_dumps_decimal() returns memory the caller frees with free().
 * No function keeps state; all are thread-safe for trees not being mutated.
 */
#ifndef PB_CORE_JSON_H
#define PB_CORE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/err.h"

/* Nesting deeper than this makes pb_json_dumps_decimal() fail (jansson's
 * own decoder stops at 2048; a cyclic tree is caught by this bound too). */
#define PB_JSON_DEPTH_MAX 2048
/* Output larger than this makes pb_json_dumps_decimal() fail. */
#define PB_JSON_DUMP_MAX ((size_t)64 * 1024 * 1024)

/* The value at `dotted_path` below `root`, or NULL. Path segments are
 * separated by '.'; a segment selects an object member by exact key, or,
 * when the current value is an array, an element by decimal index ("0",
 * "12"; no sign, no leading zeros). An empty path returns root. Empty
 * segments ("a..b", ".a", "a.") never match. Keys that contain '.' cannot be
 * reached. Borrowed reference. */
json_t *pb_json_path(const json_t *root, const char *dotted_path);

/* The string at `dotted_path`, or NULL if missing or not a JSON string.
 * Borrowed; valid while the tree lives. */
const char *pb_json_str(const json_t *root, const char *dotted_path);

/* Minor units of `currency` from a JSON amount:
 *   - a string: exact decimal text, see pb_money_parse_decimal();
 *   - an integer: whole major units (12 -> 1200 for GBP), checked;
 *   - a real: accepted only when it is provably the double of a decimal with
 *     at most 15 significant digits, without exponent (see json.c).
 * Anything else (NULL, object, array, bool, null) is PB_ERR_INVALID. Errors
 * are those of pb_money_parse_decimal() (PB_ERR_INVALID, PB_ERR_RANGE,
 * PB_ERR_CURRENCY). *out is written only on success. */
enum pb_rc pb_json_to_minor(const json_t *v, const char *currency, int64_t *out,
                            struct pb_err *err);

/* Serialise `root` compactly, in object insertion order, as
 * json_dumps(root, JSON_COMPACT | JSON_ENCODE_ANY | flags) would, except that
 * an object member whose key is listed in `decimal_keys` (a NULL-terminated
 * array; NULL means none) and whose value is a string of the form
 * -?[0-9]+(\.[0-9]+)? is written as a bare JSON number: {"UnitAmount":"10.99"}
 * becomes {"UnitAmount":10.99}. Leading zeros, which JSON forbids in numbers,
 * are dropped ("007.50" -> 7.50); the fraction is kept as written. The rule
 * applies at every depth, only to direct member values (not to strings inside
 * an array under such a key). From `flags`, JSON_ENSURE_ASCII,
 * JSON_ESCAPE_SLASH and JSON_REAL_PRECISION() are honoured; indentation and
 * JSON_SORT_KEYS are ignored. Returns a NUL-terminated string the caller frees
 * with free(), or NULL when out of memory, deeper than PB_JSON_DEPTH_MAX or
 * larger than PB_JSON_DUMP_MAX. */
char *pb_json_dumps_decimal(const json_t *root, const char *const *decimal_keys, size_t flags);

/* json_loadb() with yajl as the lexer (core/json_load.c), ~3x faster for
 * the hot paths (a stored event, a request body): the same tree, and NULL
 * for the same inputs, with flags JSON_REJECT_DUPLICATES, JSON_DECODE_ANY,
 * JSON_ALLOW_NUL and JSON_DECODE_INT_AS_REAL (other flags: json_loadb()
 * itself). Differences: a lone UTF-16 surrogate escape ("\ud800") becomes
 * "?" where jansson refuses it; a NUL byte in the text is refused where
 * jansson takes it for the end of the text (and so accepts "[1\0]");
 * error texts are yajl's or say what is wrong (the position, line and column
 * are set as jansson sets them). Nesting is bounded by
 * PB_JSON_DEPTH_MAX, as jansson's is. */
json_t *pb_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *error);

#endif
