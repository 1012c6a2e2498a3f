/*
 * connectors/paytrace/paytrace_record.c: one PayTrace transaction record,
 * read strictly, and the canonical events it stands for.
 *
 * Both inbound paths carry the same record: the webhook's "transaction"
 * member and each element of export/by_date_range's "transactions" array.
 * Reading and converting them here, once, is what makes the webhook and the
 * poller produce the same event with the same event_id for one transaction,
 * so that the inbox de-duplicates a transaction seen both ways.
 *
 * THE RECORD (the export shape; optional members may be absent or null)
 *   transaction_id           integer or string, required (the event_id)
 *   transaction_type         "SALE" | "REFUND", required
 *   amount                   JSON number (major units, "10.99" is 10.99), required, >= 0
 *   currency                 ISO 4217, optional, default settings.currency ("USD")
 *   success                  boolean, required
 *   response_code            integer, optional (101 sale approved, 106 refund approved,
 *                            120 check (ACH) processed)
 *   status_message           string, optional
 *   approval_code, approval_message, avs_response, csc_response,
 *   external_transaction_id, customer_id, invoice_id, description, email,
 *   masked_card_number       strings, optional
 *   payment_method           "CC" | "ACH", optional, default "CC" (PayTrace's card export)
 *   created                  required: "2026-11-21T19:14:10Z", or PayTrace's
 *                            {"at":"11/21/2026 19:14:10", ...} read as UTC (unverified zone)
 *   voided                   boolean, optional; voided_at: UTC ISO 8601, optional
 *   original_transaction_id  integer or string, optional (a refund's payment)
 *   billing_address          object of strings, optional: name, street_address,
 *                            street_address2, city, state, zip, country
 *   line_items               array, optional: {sku (string, required), description,
 *                            quantity (decimal string or number > 0, required),
 *                            unit_price (number or decimal string >= 0, required)}
 *
 * APPROVED = success is true and response_code, when present, is 101, 106 or
 * 120 (PayTrace's approval codes for a sale, a refund and a check).
 * Anything else is a decline: payment.declined / refund.declined, never a
 * payment. (103, "approved but voided for AVS/CSC", is a decline too.)
 *
 * Money. `amount` and `unit_price` are JSON numbers in exports. jansson has
 * already decoded them to doubles; pb_json_to_minor() accepts one only when it
 * is provably the double of a decimal of at most 15 significant digits and
 * then parses that decimal's text, so 10.99 becomes 1099 and 0.29 becomes 29
 * exactly, and 10.999 or 1e20 are refused instead of rounded. Nothing here
 * multiplies a double. A negative amount is PB_ERR_RANGE. Quantities are not
 * money but are kept exact the same way, as decimal text.
 *
 * Threading: pure functions of their inputs; no state, no locks.
 *
 * Rejected designs.
 *   - A separate webhook shape: two shapes would need two readers that could
 *     drift, and the poller would emit events that differ from the webhook's.
 *   - An event per void under the transaction's own id: the inbox would
 *     de-duplicate it against the sale and the void would be lost. A void
 *     gets "<transaction_id>:void".
 *   - Splitting customer names with a rule richer than "last word is the
 *     last name": PayTrace has one `name` field, and any rule is a guess; the
 *     full name stays in customer.name for flows that prefer it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/money.h"
#include "paytrace_internal.h"

#define TEXT_MAX 1024   /* longest free-text member accepted */
#define QUANTITY_MAX 32 /* longest quantity text */
#define LINES_MAX 500   /* most line_items accepted */

/* ---- time ----------------------------------------------------------------------- */

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

static int date_valid(int y, int mo, int d, int h, int mi, int s)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 ||
        mi > 59 || s > 60)
        return 0;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 0;
    return 1;
}

static time_t utc(int y, int mo, int d, int h, int mi, int s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    return timegm(&tm);
}

enum pb_rc pb__paytrace_parse_instant(const char *t, time_t *out)
{
    int y, mo, d, h, mi, s;
    const char *p;

    if (!t || strlen(t) < 20)
        return PB_ERR_INVALID;
    if (!digits(t, 4, &y) || t[4] != '-' || !digits(t + 5, 2, &mo) || t[7] != '-' ||
        !digits(t + 8, 2, &d) || t[10] != 'T' || !digits(t + 11, 2, &h) || t[13] != ':' ||
        !digits(t + 14, 2, &mi) || t[16] != ':' || !digits(t + 17, 2, &s))
        return PB_ERR_INVALID;
    p = t + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return PB_ERR_INVALID;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (p[0] != 'Z' || p[1] != '\0' || !date_valid(y, mo, d, h, mi, s))
        return PB_ERR_INVALID;
    *out = utc(y, mo, d, h, mi, s);
    return PB_OK;
}

/* PayTrace's "MM/DD/YYYY HH:MM:SS" (one-digit month/day allowed), as UTC. */
static enum pb_rc parse_us_time(const char *t, time_t *out)
{
    int mo = 0, d = 0, y, h, mi, s;
    const char *p = t;
    int n;

    for (n = 0; n < 2 && *p >= '0' && *p <= '9'; n++, p++)
        mo = mo * 10 + (*p - '0');
    if (n == 0 || *p++ != '/')
        return PB_ERR_INVALID;
    for (n = 0; n < 2 && *p >= '0' && *p <= '9'; n++, p++)
        d = d * 10 + (*p - '0');
    if (n == 0 || *p++ != '/')
        return PB_ERR_INVALID;
    if (!digits(p, 4, &y) || p[4] != ' ' || !digits(p + 5, 2, &h) || p[7] != ':' ||
        !digits(p + 8, 2, &mi) || p[10] != ':' || !digits(p + 11, 2, &s) || p[13] != '\0' ||
        !date_valid(y, mo, d, h, mi, s))
        return PB_ERR_INVALID;
    *out = utc(y, mo, d, h, mi, s);
    return PB_OK;
}

void pb__paytrace_format_instant(time_t t, char buf[32])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- field readers: every message names the field --------------------------------- */

static enum pb_rc get_string(json_t *obj, const char *key, const char *prefix, int required,
                             size_t max_len, const char **out, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return pb_err_set(err, PB_ERR_INVALID, "%s.%s is missing", prefix, key);
        return PB_OK;
    }
    if (!json_is_string(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s.%s must be a string", prefix, key);
    if (required && json_string_length(v) == 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s.%s must not be empty", prefix, key);
    if (json_string_length(v) > max_len)
        return pb_err_set(err, PB_ERR_INVALID, "%s.%s is longer than %zu characters", prefix, key,
                          max_len);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s.%s contains a NUL character", prefix, key);
    *out = json_string_value(v);
    return PB_OK;
}

static int id_chars_ok(const char *s)
{
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

/* A transaction id: a positive integer or a string of [A-Za-z0-9._-]. */
static enum pb_rc get_id(json_t *obj, const char *key, const char *prefix, int required,
                         char out[PAYTRACE_ID_MAX + 1], struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    out[0] = '\0';
    if (!v || json_is_null(v)) {
        if (required)
            return pb_err_set(err, PB_ERR_INVALID, "%s.%s is missing", prefix, key);
        return PB_OK;
    }
    if (json_is_integer(v)) {
        if (json_integer_value(v) <= 0)
            return pb_err_set(err, PB_ERR_INVALID, "%s.%s must be a positive integer, got %lld",
                              prefix, key, (long long)json_integer_value(v));
        snprintf(out, PAYTRACE_ID_MAX + 1, "%lld", (long long)json_integer_value(v));
        return PB_OK;
    }
    if (json_is_string(v) && json_string_length(v) > 0 &&
        json_string_length(v) <= PAYTRACE_ID_MAX &&
        strlen(json_string_value(v)) == json_string_length(v) &&
        id_chars_ok(json_string_value(v))) {
        memcpy(out, json_string_value(v), json_string_length(v) + 1);
        return PB_OK;
    }
    return pb_err_set(err, PB_ERR_INVALID,
                      "%s.%s must be a positive integer or 1 to %d characters of letters, digits "
                      "and . _ -",
                      prefix, key, PAYTRACE_ID_MAX);
}

/* Minor units of `currency` from an amount member; PB_ERR_RANGE when negative. */
static enum pb_rc get_money(json_t *obj, const char *key, const char *path, const char *currency,
                            int64_t *out, struct pb_err *err)
{
    json_t *v = json_object_get(obj, key);
    enum pb_rc rc;
    if (!v || json_is_null(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s is missing", path);
    if (json_is_boolean(v) || json_is_object(v) || json_is_array(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s must be a number such as 10.99", path);
    rc = pb_json_to_minor(v, currency, out, err);
    if (rc) {
        pb_err_prefix(err, "%s", path);
        return rc;
    }
    if (*out < 0)
        return pb_err_set(err, PB_ERR_RANGE, "%s must not be negative, got %lld minor units", path,
                          (long long)*out);
    return PB_OK;
}

/* A quantity as exact decimal text into out; > 0. */
static enum pb_rc get_quantity(json_t *v, const char *path, char out[QUANTITY_MAX + 1],
                               struct pb_err *err)
{
    const char *s;
    int nonzero = 0;
    size_t i;

    if (!v || json_is_null(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s is missing", path);
    if (json_is_integer(v)) {
        if (json_integer_value(v) <= 0)
            return pb_err_set(err, PB_ERR_RANGE, "%s must be greater than zero", path);
        snprintf(out, QUANTITY_MAX + 1, "%lld", (long long)json_integer_value(v));
        return PB_OK;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v), back;
        snprintf(out, QUANTITY_MAX + 1, "%.15g", d);
        back = strtod(out, NULL);
        if (strpbrk(out, "eEnNiI") || memcmp(&back, &d, sizeof d) != 0)
            return pb_err_set(err, PB_ERR_INVALID,
                              "%s must be a plain decimal of at most 15 significant digits", path);
    } else if (json_is_string(v)) {
        if (json_string_length(v) == 0 || json_string_length(v) > QUANTITY_MAX)
            return pb_err_set(err, PB_ERR_INVALID, "%s must be 1 to %d characters", path,
                              QUANTITY_MAX);
        memcpy(out, json_string_value(v), json_string_length(v) + 1);
    } else {
        return pb_err_set(err, PB_ERR_INVALID, "%s must be a number or a decimal string", path);
    }
    /* digits, optionally '.' and digits; no sign, no exponent */
    s = out;
    for (i = 0; s[i] >= '0' && s[i] <= '9'; i++)
        nonzero |= s[i] != '0';
    if (i == 0)
        goto bad;
    if (s[i] == '.') {
        size_t j = ++i;
        for (; s[i] >= '0' && s[i] <= '9'; i++)
            nonzero |= s[i] != '0';
        if (i == j)
            goto bad;
    }
    if (s[i] != '\0')
        goto bad;
    if (!nonzero)
        return pb_err_set(err, PB_ERR_RANGE, "%s must be greater than zero", path);
    return PB_OK;
bad:
    return pb_err_set(err, PB_ERR_INVALID,
                      "%s must be a plain positive decimal such as \"2\" or \"1.5\", got \"%.32s\"",
                      path, out);
}

static enum pb_rc read_created(json_t *rec, const char *prefix, time_t *out, struct pb_err *err)
{
    json_t *v = json_object_get(rec, "created");
    const char *at;
    if (json_is_string(v)) {
        if (pb__paytrace_parse_instant(json_string_value(v), out) == PB_OK)
            return PB_OK;
        return pb_err_set(err, PB_ERR_INVALID,
                          "%s.created must be a UTC ISO 8601 time such as "
                          "\"2026-11-21T19:14:10Z\", got \"%.40s\"",
                          prefix, json_string_value(v));
    }
    if (json_is_object(v)) {
        at = json_string_value(json_object_get(v, "at"));
        if (at && parse_us_time(at, out) == PB_OK)
            return PB_OK;
        return pb_err_set(err, PB_ERR_INVALID,
                          "%s.created.at must be a time such as \"11/21/2026 19:14:10\"", prefix);
    }
    return pb_err_set(err, PB_ERR_INVALID, "%s.created is missing", prefix);
}

static enum pb_rc read_address(json_t *rec, const char *prefix, struct paytrace_record *r,
                               struct pb_err *err)
{
    static const char *const keys[] = {
        "name", "street_address", "street_address2", "city", "state", "zip", "country", NULL};
    json_t *a = json_object_get(rec, "billing_address");
    char path[96];
    const char *s;
    enum pb_rc rc;

    r->billing_address = NULL;
    if (!a || json_is_null(a))
        return PB_OK;
    if (!json_is_object(a))
        return pb_err_set(err, PB_ERR_INVALID, "%s.billing_address must be an object", prefix);
    snprintf(path, sizeof path, "%s.billing_address", prefix);
    for (size_t i = 0; keys[i]; i++) {
        rc = get_string(a, keys[i], path, 0, 256, &s, err);
        if (rc)
            return rc;
    }
    r->billing_address = a;
    return PB_OK;
}

static enum pb_rc read_lines(json_t *rec, const char *prefix, const char *currency,
                             struct paytrace_record *r, struct pb_err *err)
{
    json_t *lines = json_object_get(rec, "line_items"), *line;
    char path[96], field[128], qty[QUANTITY_MAX + 1];
    const char *s;
    int64_t minor;
    size_t i;
    enum pb_rc rc;

    r->line_items = NULL;
    if (!lines || json_is_null(lines))
        return PB_OK;
    if (!json_is_array(lines))
        return pb_err_set(err, PB_ERR_INVALID, "%s.line_items must be an array", prefix);
    if (json_array_size(lines) > LINES_MAX)
        return pb_err_set(err, PB_ERR_TOOBIG, "%s.line_items has more than %d lines", prefix,
                          LINES_MAX);
    json_array_foreach(lines, i, line)
    {
        snprintf(path, sizeof path, "%s.line_items.%zu", prefix, i);
        if (!json_is_object(line))
            return pb_err_set(err, PB_ERR_INVALID, "%s must be an object", path);
        if ((rc = get_string(line, "sku", path, 1, 128, &s, err)) ||
            (rc = get_string(line, "description", path, 0, TEXT_MAX, &s, err)))
            return rc;
        snprintf(field, sizeof field, "%s.quantity", path);
        if ((rc = get_quantity(json_object_get(line, "quantity"), field, qty, err)))
            return rc;
        snprintf(field, sizeof field, "%s.unit_price", path);
        if ((rc = get_money(line, "unit_price", field, currency, &minor, err)))
            return rc;
    }
    r->line_items = lines;
    return PB_OK;
}

enum pb_rc pb__paytrace_record_read(json_t *rec, const char *prefix, const char *default_currency,
                                    struct paytrace_record *r, struct pb_err *err)
{
    const char *currency, *voided_at;
    json_t *v;
    char path[96];
    enum pb_rc rc;

    memset(r, 0, sizeof *r);
    r->response_code = -1;
    if (!json_is_object(rec))
        return pb_err_set(err, PB_ERR_INVALID, "%s must be an object", prefix);
    if ((rc = get_id(rec, "transaction_id", prefix, 1, r->transaction_id, err)))
        return rc;
    if ((rc = get_string(rec, "transaction_type", prefix, 1, 32, &r->transaction_type, err)))
        return rc;
    if (strcmp(r->transaction_type, "SALE") != 0 && strcmp(r->transaction_type, "REFUND") != 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "%s.transaction_type must be SALE or REFUND, got \"%.32s\"", prefix,
                          r->transaction_type);
    r->refund = strcmp(r->transaction_type, "REFUND") == 0;

    if ((rc = get_string(rec, "currency", prefix, 0, 16, &currency, err)))
        return rc;
    if (currency && !pb_currency_valid(currency))
        return pb_err_set(err, PB_ERR_CURRENCY, "%s.currency: unknown currency \"%.16s\"", prefix,
                          currency);
    snprintf(r->currency, sizeof r->currency, "%s", currency ? currency : default_currency);
    snprintf(path, sizeof path, "%s.amount", prefix);
    if ((rc = get_money(rec, "amount", path, r->currency, &r->amount_minor, err)))
        return rc;

    v = json_object_get(rec, "success");
    if (!json_is_boolean(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s.success %s", prefix,
                          v ? "must be true or false" : "is missing");
    v = json_object_get(rec, "response_code");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v))
            return pb_err_set(err, PB_ERR_INVALID, "%s.response_code must be an integer", prefix);
        r->response_code = (long long)json_integer_value(v);
    }
    r->approved = json_is_true(json_object_get(rec, "success")) &&
                  (r->response_code < 0 || r->response_code == 101 || r->response_code == 106 ||
                   r->response_code == 120);

    if ((rc = get_string(rec, "status_message", prefix, 0, TEXT_MAX, &r->status_message, err)) ||
        (rc = get_string(rec, "approval_code", prefix, 0, 64, &r->approval_code, err)) ||
        (rc =
             get_string(rec, "approval_message", prefix, 0, TEXT_MAX, &r->approval_message, err)) ||
        (rc = get_string(rec, "avs_response", prefix, 0, 256, &r->avs_response, err)) ||
        (rc = get_string(rec, "csc_response", prefix, 0, 256, &r->csc_response, err)) ||
        (rc = get_string(rec, "external_transaction_id", prefix, 0, 128,
                         &r->external_transaction_id, err)) ||
        (rc = get_string(rec, "customer_id", prefix, 0, 128, &r->customer_id, err)) ||
        (rc = get_string(rec, "invoice_id", prefix, 0, 128, &r->invoice_id, err)) ||
        (rc = get_string(rec, "description", prefix, 0, TEXT_MAX, &r->description, err)) ||
        (rc = get_string(rec, "email", prefix, 0, 320, &r->email, err)) ||
        (rc = get_string(rec, "masked_card_number", prefix, 0, 32, &r->masked_card_number, err)) ||
        (rc = get_string(rec, "payment_method", prefix, 0, 8, &r->payment_method, err)))
        return rc;
    if (!r->payment_method)
        r->payment_method = "CC";
    if (strcmp(r->payment_method, "CC") != 0 && strcmp(r->payment_method, "ACH") != 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s.payment_method must be CC or ACH, got \"%s\"",
                          prefix, r->payment_method);
    if ((rc = read_created(rec, prefix, &r->created, err)))
        return rc;

    v = json_object_get(rec, "voided");
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return pb_err_set(err, PB_ERR_INVALID, "%s.voided must be true or false", prefix);
    r->voided = json_is_true(v);
    r->voided_at = r->created;
    if ((rc = get_string(rec, "voided_at", prefix, 0, 64, &voided_at, err)))
        return rc;
    if (voided_at && pb__paytrace_parse_instant(voided_at, &r->voided_at))
        return pb_err_set(err, PB_ERR_INVALID,
                          "%s.voided_at must be a UTC ISO 8601 time such as "
                          "\"2026-11-21T19:14:10Z\"",
                          prefix);
    if ((rc = get_id(rec, "original_transaction_id", prefix, 0, r->original_id, err)))
        return rc;
    if ((rc = read_address(rec, prefix, r, err)) ||
        (rc = read_lines(rec, prefix, r->currency, r, err)))
        return rc;
    return PB_OK;
}

/* ---- building events ------------------------------------------------------------------ */

static json_t *money_json(int64_t minor, const char *currency)
{
    char decimal[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, decimal, sizeof decimal, NULL))
        return NULL;
    return json_pack("{s:I,s:s,s:s}", "minor", (json_int_t)minor, "currency", currency, "decimal",
                     decimal);
}

static const char *addr(const struct paytrace_record *r, const char *key)
{
    json_t *v = r->billing_address ? json_object_get(r->billing_address, key) : NULL;
    return json_is_string(v) && json_string_length(v) ? json_string_value(v) : NULL;
}

static json_t *build_customer(const struct paytrace_record *r)
{
    const char *name = addr(r, "name");
    char first[260] = "", last[260] = "";
    json_t *address = json_null();

    if (name) {
        /* trailing word = last name; the rest = first name(s) */
        size_t n = strlen(name);
        while (n > 0 && name[n - 1] == ' ')
            n--;
        size_t sp = n;
        while (sp > 0 && name[sp - 1] != ' ')
            sp--;
        snprintf(last, sizeof last, "%.*s", (int)(n - sp), name + sp);
        while (sp > 0 && name[sp - 1] == ' ')
            sp--;
        snprintf(first, sizeof first, "%.*s", (int)sp, name);
    }
    if (r->billing_address)
        address = json_pack("{s:s?,s:s?,s:s?,s:s?,s:s?,s:s?}", "line1", addr(r, "street_address"),
                            "line2", addr(r, "street_address2"), "city", addr(r, "city"), "region",
                            addr(r, "state"), "postal_code", addr(r, "zip"), "country",
                            addr(r, "country"));
    if (!address)
        return NULL;
    return json_pack("{s:s?,s:s?,s:s?,s:s?,s:s?,s:o}", "email", r->email, "first_name",
                     first[0] ? first : NULL, "last_name", last[0] ? last : NULL, "name", name,
                     "customer_id", r->customer_id, "address", address);
}

static json_t *build_lines(const struct paytrace_record *r)
{
    json_t *lines = json_array(), *line;
    size_t i;
    if (!lines)
        return NULL;
    json_array_foreach(r->line_items, i, line)
    {
        char qty[QUANTITY_MAX + 1];
        int64_t minor = 0;
        json_t *price, *out;
        /* validated by read_lines(): these cannot fail but for memory */
        if (get_quantity(json_object_get(line, "quantity"), "quantity", qty, NULL) ||
            pb_json_to_minor(json_object_get(line, "unit_price"), r->currency, &minor, NULL) ||
            !(price = money_json(minor, r->currency))) {
            json_decref(lines);
            return NULL;
        }
        out =
            json_pack("{s:s,s:s?,s:s,s:o}", "sku", json_string_value(json_object_get(line, "sku")),
                      "description", json_string_value(json_object_get(line, "description")),
                      "quantity", qty, "unit_price", price);
        if (!out || json_array_append_new(lines, out)) {
            json_decref(lines);
            return NULL;
        }
    }
    return lines;
}

static const char *last4(const struct paytrace_record *r, char buf[5])
{
    const char *m = r->masked_card_number;
    size_t n = m ? strlen(m) : 0;
    if (n < 4)
        return NULL;
    for (size_t i = n - 4; i < n; i++)
        if (m[i] < '0' || m[i] > '9')
            return NULL;
    memcpy(buf, m + n - 4, 5);
    return buf;
}

/* The payment/refund entity. status: "APPROVED" | "DECLINED" | "VOIDED". */
static json_t *build_entity(const struct paytrace_record *r, const char *kind, const char *status,
                            const char *gateway_id, const char *original_id)
{
    char code[24], four[5];
    const char *l4 = last4(r, four);
    json_t *card = json_null(), *amount, *entity;
    int declined = strcmp(status, "DECLINED") == 0;

    if (r->response_code >= 0)
        snprintf(code, sizeof code, "%lld", r->response_code);
    if (strcmp(r->payment_method, "CC") == 0 && l4)
        card = json_pack("{s:n,s:s,s:n}", "brand", "last4", l4, "expiry");
    amount = money_json(r->amount_minor, r->currency);
    if (!card || !amount) {
        json_decref(card);
        json_decref(amount);
        return NULL;
    }
    entity = json_pack("{s:s,s:s?,s:s,s:s,s:s?,s:s?,s:o,s:s?,s:s,s:o,s:s?,s:s?,s:s?,s:s?,s:s?,"
                       "s:s?}",
                       "gateway_id", gateway_id, "reference", r->invoice_id, "kind", kind, "status",
                       status, "status_code", r->response_code >= 0 ? code : NULL, "status_detail",
                       r->status_message, "amount", amount, "description", r->description, "method",
                       r->payment_method, "card", card, "auth_code", r->approval_code,
                       "approval_message", r->approval_message, "avs_response", r->avs_response,
                       "csc_response", r->csc_response, "customer_id", r->customer_id,
                       "external_transaction_id", r->external_transaction_id);
    if (!entity)
        return NULL;
    if (strcmp(status, "VOIDED") == 0 &&
        (json_object_set_new(entity, "status_code", json_null()) ||
         json_object_set_new(entity, "status_detail",
                             json_string("The transaction was voided at PayTrace."))))
        goto nomem;
    if (declined) {
        const char *reason = r->status_message && r->status_message[0] ? r->status_message
                             : r->approval_message && r->approval_message[0]
                                 ? r->approval_message
                                 : "declined (PayTrace gave no reason)";
        if (json_object_set_new(entity, "decline_reason", json_string(reason)))
            goto nomem;
    }
    if (strcmp(kind, "SALE") != 0 &&
        json_object_set_new(entity, "original_gateway_id",
                            original_id && original_id[0] ? json_string(original_id) : json_null()))
        goto nomem;
    return entity;
nomem:
    json_decref(entity);
    return NULL;
}

static json_t *build_order(const struct paytrace_record *r)
{
    json_t *lines = json_null();
    if (r->line_items && !(lines = build_lines(r)))
        return NULL;
    return json_pack("{s:s?,s:o}", "reference", r->invoice_id, "lines", lines);
}

static enum pb_rc assemble(const struct paytrace_record *r, const char *type, time_t when,
                           const char *entity_key, json_t *entity, int with_customer,
                           json_t **event_out, char *type_out, size_t type_len, struct pb_err *err)
{
    char occurred[32];
    json_t *ev, *customer = NULL, *order = NULL;

    *event_out = NULL;
    pb__paytrace_format_instant(when, occurred);
    ev = json_pack("{s:s,s:s}", "type", type, "occurred_at", occurred);
    if (with_customer)
        customer = build_customer(r);
    if (r->invoice_id || r->line_items)
        order = build_order(r);
    if (!ev || !entity || (with_customer && !customer) ||
        ((r->invoice_id || r->line_items) && !order) ||
        json_object_set_new(ev, entity_key, entity) ||
        (customer && json_object_set_new(ev, "customer", customer)) ||
        (order && json_object_set_new(ev, "order", order))) {
        json_decref(ev);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory building the event");
    }
    *event_out = ev;
    snprintf(type_out, type_len, "%s", type);
    return PB_OK;
}

enum pb_rc pb__paytrace_record_main_event(const struct paytrace_record *r, json_t **event_out,
                                          char *type_out, size_t type_len, struct pb_err *err)
{
    const char *type, *status = r->approved ? "APPROVED" : "DECLINED";
    json_t *entity;

    if (r->refund)
        type = r->approved ? "refund.succeeded" : "refund.declined";
    else
        type = r->approved ? "payment.succeeded" : "payment.declined";
    entity = build_entity(r, r->transaction_type, status, r->transaction_id, r->original_id);
    return assemble(r, type, r->created, r->refund ? "refund" : "payment", entity,
                    strcmp(type, "refund.declined") != 0, event_out, type_out, type_len, err);
}

enum pb_rc pb__paytrace_record_void_event(const struct paytrace_record *r, json_t **event_out,
                                          char *type_out, size_t type_len, struct pb_err *err)
{
    json_t *entity;

    *event_out = NULL;
    if (!r->voided || !r->approved)
        return pb_err_set(err, PB_ERR_INVALID,
                          "transaction %s: only an approved transaction with \"voided\": true "
                          "has a void",
                          r->transaction_id);
    if (!r->refund) {
        /* the sale's money goes back in full: a refund of the whole amount */
        entity = build_entity(r, "VOID", "VOIDED", r->transaction_id, r->transaction_id);
        return assemble(r, "refund.succeeded", r->voided_at, "refund", entity, 1, event_out,
                        type_out, type_len, err);
    }
    /* a voided refund never returns the money */
    entity = build_entity(r, "VOID", "VOIDED", r->transaction_id, r->original_id);
    return assemble(r, "refund.declined", r->voided_at, "refund", entity, 0, event_out, type_out,
                    type_len, err);
}

enum pb_rc pb__paytrace_event_append(struct pb_event_list *out, const char *event_id,
                                     const char *type, json_t *event, struct pb_err *err)
{
    struct pb_event_out *e;
    if (out->n >= PB_INBOUND_MAX_EVENTS) {
        json_decref(event);
        return pb_err_set(err, PB_ERR_TOOBIG, "the event list is full (%d events)",
                          PB_INBOUND_MAX_EVENTS);
    }
    e = &out->ev[out->n];
    snprintf(e->event_id, sizeof e->event_id, "%s", event_id);
    snprintf(e->type, sizeof e->type, "%s", type);
    e->event = event;
    e->json = NULL;
    e->original_gateway_id[0] = '\0';
    out->n++;
    return PB_OK;
}
