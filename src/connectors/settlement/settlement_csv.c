/*
 * connectors/settlement/settlement_csv.c: CSV settlement reports, any
 * gateway's, through a per-source column map (settlement_parse.h documents
 * the map and the contract).
 *
 * How it reads. One pass over the bytes. A small RFC 4180 tokenizer
 * (next_record) yields one record at a time as field slices: an unquoted
 * field points into the input, a quoted one is unescaped into a scratch
 * buffer (kept as offsets, since the buffer may grow). The record's
 * physical start line is what every bad entry names, so an operator can open
 * the file at that line even when quoted fields span several. Then
 * load_record() applies the map: batch, references, currency, kind, amount,
 * fee, dates, each converted exactly or refused with the column's header
 * name in the reason.
 *
 * What it owns: the map (strings copied from the config) and, during one
 * call, the scratch buffer. Nothing is kept between calls.
 *
 * Invariants: the tokenizer never reads past data + len; a field never
 * exceeds PB_SETTLEMENT_CSV_MAX_RECORD bytes nor a record
 * PB_SETTLEMENT_CSV_MAX_COLUMNS fields (both are bad lines, not errors).
 *
 * Leniency, on purpose: a quote inside an unquoted field is taken as a
 * character (RFC 4180 forbids it, but unmapped description columns carry
 * 12" pipes in real reports, and refusing the row would hide its money);
 * header names are compared after trimming spaces. Everything about the
 * mapped values stays strict.
 *
 * Rejected designs.
 *   - strtok/sscanf splitting: no quoting, and banned here anyway.
 *   - Reading the header by position only: gateways reorder columns between
 *     report versions; names survive that, numbers are the fallback.
 *   - A "skip bad rows silently" option: a skipped row is money that does
 *     not reconcile; it is always reported.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connectors/settlement/settlement_parse.h"
#include "core/money.h"

#define MAP_MAGIC 0x43535650u /* "CSVP" */
#define NAME_MAX_LEN 128      /* a header name or kind_map key */
#define KIND_MAP_MAX 64

enum role {
    ROLE_BATCH_ID,
    ROLE_GATEWAY_REF,
    ROLE_MERCHANT_REF,
    ROLE_AMOUNT,
    ROLE_FEE,
    ROLE_CURRENCY,
    ROLE_KIND,
    ROLE_VALUE_DATE,
    ROLE_SETTLED_DATE,
    ROLE_COUNT
};
static const char *const role_names[ROLE_COUNT] = {"batch_id", "gateway_ref", "merchant_ref",
                                                   "amount",   "fee",         "currency",
                                                   "kind",     "value_date",  "settled_date"};

struct kind_entry {
    char *from; /* owned: the source's value */
    enum pb_settlement_kind to;
};

struct pb_settlement_csv_map {
    unsigned magic; /* MAP_MAGIC */
    char gateway[64];
    char delimiter;
    int header;
    int skip_lines;
    char *column_name[ROLE_COUNT]; /* owned header name, or NULL */
    int column_number[ROLE_COUNT]; /* 1-based, 0 = by name or unmapped */
    struct kind_entry kinds[KIND_MAP_MAX];
    int n_kinds;
    char date_format[64];
    char settled_date_format[64];
    char currency[4]; /* "" = from the column */
    char *batch_id;   /* owned or NULL */
    int signs_as_is;
    char decimal_separator;
    char thousands_separator; /* 0 = none */
};

/* ---- the map --------------------------------------------------------------------- */

void pb_settlement_csv_map_free(struct pb_settlement_csv_map *map)
{
    if (!map)
        return;
    for (int r = 0; r < ROLE_COUNT; r++)
        free(map->column_name[r]);
    for (int i = 0; i < map->n_kinds; i++)
        free(map->kinds[i].from);
    free(map->batch_id);
    map->magic = 0;
    free(map);
}

static enum pb_rc one_char(const json_t *v, const char *key, const char *allowed, char *out,
                           struct pb_err *err)
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) != 1 || !strchr(allowed, s[0]))
        return pb_err_set(err, PB_ERR_CONFIG, "%s: must be one of the characters \"%s\"", key,
                          allowed);
    *out = s[0];
    return PB_OK;
}

static enum pb_rc copy_format(const json_t *v, const char *key, char *out, size_t size,
                              struct pb_err *err)
{
    const char *s = json_string_value(v);
    if (!s || !*s || strlen(s) >= size)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "%s: must be a strptime format such as \"%%Y-%%m-%%d\"", key);
    memcpy(out, s, strlen(s) + 1);
    return PB_OK;
}

static enum pb_rc read_columns(struct pb_settlement_csv_map *map, const json_t *cols,
                               struct pb_err *err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(cols))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "columns: required, an object of role -> header name");
    json_object_foreach((json_t *)cols, key, v)
    {
        int r;
        for (r = 0; r < ROLE_COUNT && strcmp(role_names[r], key) != 0; r++)
            ;
        if (r == ROLE_COUNT)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "columns.%s: unknown role (known: batch_id, gateway_ref, "
                              "merchant_ref, amount, fee, currency, kind, value_date, "
                              "settled_date)",
                              key);
        if (json_is_integer(v)) {
            if (json_integer_value(v) < 1 || json_integer_value(v) > PB_SETTLEMENT_CSV_MAX_COLUMNS)
                return pb_err_set(err, PB_ERR_CONFIG, "columns.%s: a column number is 1 to %d", key,
                                  PB_SETTLEMENT_CSV_MAX_COLUMNS);
            map->column_number[r] = (int)json_integer_value(v);
        } else if (json_is_string(v) && json_string_length(v) > 0 &&
                   json_string_length(v) < NAME_MAX_LEN) {
            if (!map->header)
                return pb_err_set(err, PB_ERR_CONFIG,
                                  "columns.%s: a header name needs \"header\": true (use a "
                                  "1-based column number)",
                                  key);
            map->column_name[r] = strdup(json_string_value(v));
            if (!map->column_name[r])
                return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        } else {
            return pb_err_set(err, PB_ERR_CONFIG,
                              "columns.%s: must be a header name (1..%d characters) or a "
                              "1-based column number",
                              key, NAME_MAX_LEN - 1);
        }
    }
    return PB_OK;
}

static int mapped(const struct pb_settlement_csv_map *map, enum role r)
{
    return map->column_name[r] || map->column_number[r];
}

enum pb_rc pb_settlement_csv_map_new(const json_t *config, struct pb_settlement_csv_map **out,
                                     struct pb_err *err)
{
    static const char *const known[] = {"gateway",
                                        "delimiter",
                                        "header",
                                        "skip_lines",
                                        "columns",
                                        "kind_map",
                                        "date_format",
                                        "settled_date_format",
                                        "currency",
                                        "batch_id",
                                        "signs",
                                        "decimal_separator",
                                        "thousands_separator",
                                        NULL};
    struct pb_settlement_csv_map *map;
    const char *key;
    json_t *v;
    enum pb_rc rc = PB_OK;

    *out = NULL;
    if (!json_is_object(config))
        return pb_err_set(err, PB_ERR_CONFIG, "a CSV map must be a JSON object");
    json_object_foreach((json_t *)config, key, v)
    {
        size_t i;
        for (i = 0; known[i] && strcmp(known[i], key) != 0; i++)
            ;
        if (!known[i])
            return pb_err_set(err, PB_ERR_CONFIG,
                              "%s: unknown key of a CSV map (known: gateway, delimiter, header, "
                              "skip_lines, columns, kind_map, date_format, settled_date_format, "
                              "currency, batch_id, signs, decimal_separator, "
                              "thousands_separator)",
                              key);
    }
    map = calloc(1, sizeof *map);
    if (!map)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    map->magic = MAP_MAGIC;
    snprintf(map->gateway, sizeof map->gateway, "csv");
    map->delimiter = ',';
    map->header = 1;
    map->decimal_separator = '.';
    snprintf(map->date_format, sizeof map->date_format, "%%Y-%%m-%%d");

    if ((v = json_object_get(config, "gateway"))) {
        const char *s = json_string_value(v);
        if (!s || !*s || strlen(s) >= sizeof map->gateway) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "gateway: must be a name of 1 to %zu characters",
                            sizeof map->gateway - 1);
            goto fail;
        }
        memcpy(map->gateway, s, strlen(s) + 1);
    }
    if ((v = json_object_get(config, "delimiter"))) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "\\t") == 0)
            map->delimiter = '\t';
        else if (!s || strlen(s) != 1 || s[0] == '"' || s[0] == '\r' || s[0] == '\n') {
            rc = pb_err_set(err, PB_ERR_CONFIG,
                            "delimiter: must be one character other than a quote, CR or LF");
            goto fail;
        } else
            map->delimiter = s[0];
    }
    if ((v = json_object_get(config, "header"))) {
        if (!json_is_boolean(v)) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "header: must be true or false");
            goto fail;
        }
        map->header = json_is_true(v);
    }
    if ((v = json_object_get(config, "skip_lines"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "skip_lines: must be an integer from 0 to 100");
            goto fail;
        }
        map->skip_lines = (int)json_integer_value(v);
    }
    if ((rc = read_columns(map, json_object_get(config, "columns"), err)))
        goto fail;
    if (!mapped(map, ROLE_AMOUNT)) {
        rc = pb_err_set(err, PB_ERR_CONFIG, "columns.amount: required");
        goto fail;
    }
    if (!mapped(map, ROLE_GATEWAY_REF) && !mapped(map, ROLE_MERCHANT_REF)) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "columns.gateway_ref: required (or columns.merchant_ref): a line needs "
                        "a reference to be matched");
        goto fail;
    }
    if ((v = json_object_get(config, "kind_map"))) {
        json_t *to;
        if (!json_is_object(v) || json_object_size(v) == 0 || json_object_size(v) > KIND_MAP_MAX) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "kind_map: must be an object of 1 to %d entries",
                            KIND_MAP_MAX);
            goto fail;
        }
        json_object_foreach(v, key, to)
        {
            int k = json_is_string(to)
                        ? pb_settlement_kind_parse(json_string_value(to), json_string_length(to))
                        : -1;
            if (k < 0) {
                rc = pb_err_set(err, PB_ERR_CONFIG,
                                "kind_map.%s: must be one of sale, refund, chargeback, fee, "
                                "adjustment",
                                key);
                goto fail;
            }
            if (!*key || strlen(key) >= NAME_MAX_LEN) {
                rc = pb_err_set(err, PB_ERR_CONFIG, "kind_map: keys are 1 to %d characters",
                                NAME_MAX_LEN - 1);
                goto fail;
            }
            map->kinds[map->n_kinds].from = strdup(key);
            if (!map->kinds[map->n_kinds].from) {
                rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
                goto fail;
            }
            map->kinds[map->n_kinds++].to = (enum pb_settlement_kind)k;
        }
    }
    if ((v = json_object_get(config, "date_format")) &&
        (rc = copy_format(v, "date_format", map->date_format, sizeof map->date_format, err)))
        goto fail;
    memcpy(map->settled_date_format, map->date_format, sizeof map->date_format);
    if ((v = json_object_get(config, "settled_date_format")) &&
        (rc = copy_format(v, "settled_date_format", map->settled_date_format,
                          sizeof map->settled_date_format, err)))
        goto fail;
    if ((v = json_object_get(config, "currency"))) {
        const char *s = json_string_value(v);
        if (!s || !pb_currency_valid(s)) {
            rc = pb_err_set(err, PB_ERR_CONFIG,
                            "currency: must be an ISO 4217 code such as \"GBP\"");
            goto fail;
        }
        memcpy(map->currency, s, 4);
    }
    if (!mapped(map, ROLE_CURRENCY) && !map->currency[0]) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "columns.currency: required, or a fixed \"currency\" for the file");
        goto fail;
    }
    if ((v = json_object_get(config, "batch_id"))) {
        const char *s = json_string_value(v);
        if (!s || !*s || strlen(s) > PB_SETTLEMENT_ID_MAX) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "batch_id: must be 1 to %d characters",
                            PB_SETTLEMENT_ID_MAX);
            goto fail;
        }
        if (!(map->batch_id = strdup(s))) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
    if ((v = json_object_get(config, "signs"))) {
        const char *s = json_string_value(v);
        if (!s || (strcmp(s, "by_kind") != 0 && strcmp(s, "as_is") != 0)) {
            rc = pb_err_set(err, PB_ERR_CONFIG, "signs: must be \"by_kind\" or \"as_is\"");
            goto fail;
        }
        map->signs_as_is = strcmp(s, "as_is") == 0;
    }
    if ((v = json_object_get(config, "decimal_separator")) &&
        (rc = one_char(v, "decimal_separator", ".,", &map->decimal_separator, err)))
        goto fail;
    if ((v = json_object_get(config, "thousands_separator"))) {
        const char *s = json_string_value(v);
        if (s && !*s)
            map->thousands_separator = 0;
        else if ((rc = one_char(v, "thousands_separator", ",. '", &map->thousands_separator, err)))
            goto fail;
    }
    if (map->thousands_separator && map->thousands_separator == map->decimal_separator) {
        rc = pb_err_set(err, PB_ERR_CONFIG,
                        "thousands_separator: must differ from decimal_separator");
        goto fail;
    }
    if (map->decimal_separator == map->delimiter || map->thousands_separator == map->delimiter) {
        /* allowed: such an amount must then be quoted; nothing to refuse */
    }
    *out = map;
    return PB_OK;
fail:
    pb_settlement_csv_map_free(map);
    return rc;
}

/* ---- the tokenizer ------------------------------------------------------------------- */

struct field {
    size_t off; /* into the input, or into scratch when in_scratch */
    size_t len;
    int in_scratch;
};

struct reader {
    const char *data;
    size_t len, pos;
    uint32_t line; /* physical line at pos (1-based) */
    char delim;
    char *scratch; /* owned: unescaped quoted fields of the current record */
    size_t scratch_len, scratch_cap;
    struct field fields[PB_SETTLEMENT_CSV_MAX_COLUMNS];
    int n_fields;
    uint32_t record_line;      /* where the current record starts */
    int ended_without_newline; /* the current record ran into the end of the data */
};

enum record_status { REC_OK, REC_EOF, REC_BAD, REC_TRUNCATED, REC_NOMEM };

static int scratch_put(struct reader *r, const char *s, size_t n)
{
    if (r->scratch_len + n > PB_SETTLEMENT_CSV_MAX_RECORD)
        return -1;
    if (r->scratch_len + n > r->scratch_cap) {
        size_t cap = r->scratch_cap ? r->scratch_cap * 2 : 4096;
        while (cap < r->scratch_len + n)
            cap *= 2;
        char *p = realloc(r->scratch, cap);
        if (!p)
            return -2;
        r->scratch = p;
        r->scratch_cap = cap;
    }
    memcpy(r->scratch + r->scratch_len, s, n);
    r->scratch_len += n;
    return 0;
}

/* Skip to just after the end of the current physical line. */
static void skip_line(struct reader *r)
{
    const char *nl = memchr(r->data + r->pos, '\n', r->len - r->pos);
    if (!nl) {
        r->pos = r->len;
        return;
    }
    r->pos = (size_t)(nl - r->data) + 1;
    r->line++;
}

static const char *field_ptr(const struct reader *r, const struct field *f)
{
    return f->in_scratch ? r->scratch + f->off : r->data + f->off;
}

/* Read one record. REC_BAD / REC_TRUNCATED leave a reason in why. */
static enum record_status next_record(struct reader *r, char *why, size_t why_len)
{
    const char *d = r->data;
    r->n_fields = 0;
    r->scratch_len = 0;
    r->ended_without_newline = 0;
    if (r->pos >= r->len)
        return REC_EOF;
    r->record_line = r->line;
    for (;;) {
        struct field *f;
        if (r->n_fields == PB_SETTLEMENT_CSV_MAX_COLUMNS) {
            snprintf(why, why_len, "more than %d columns", PB_SETTLEMENT_CSV_MAX_COLUMNS);
            skip_line(r);
            return REC_BAD;
        }
        f = &r->fields[r->n_fields++];
        if (r->pos < r->len && d[r->pos] == '"') {
            uint32_t open_line = r->line;
            r->pos++;
            f->in_scratch = 1;
            f->off = r->scratch_len;
            for (;;) {
                const char *q = memchr(d + r->pos, '"', r->len - r->pos);
                size_t n = q ? (size_t)(q - (d + r->pos)) : r->len - r->pos;
                int rc;
                for (size_t i = 0; i < n; i++)
                    if (d[r->pos + i] == '\n')
                        r->line++;
                rc = scratch_put(r, d + r->pos, n);
                if (rc == -2)
                    return REC_NOMEM;
                if (rc) {
                    snprintf(why, why_len, "a field longer than %u bytes",
                             PB_SETTLEMENT_CSV_MAX_RECORD);
                    r->pos = q ? (size_t)(q - d) + 1 : r->len;
                    skip_line(r);
                    return REC_BAD;
                }
                if (!q) {
                    snprintf(why, why_len,
                             "truncated: the data ends inside the quoted field of column %d "
                             "opened on line %u",
                             r->n_fields, open_line);
                    r->pos = r->len;
                    return REC_TRUNCATED;
                }
                r->pos = (size_t)(q - d) + 1;
                if (r->pos < r->len && d[r->pos] == '"') { /* "" is a quote */
                    if (scratch_put(r, "\"", 1))
                        return REC_NOMEM;
                    r->pos++;
                    continue;
                }
                break;
            }
            f->len = r->scratch_len - f->off;
            if (r->pos < r->len && d[r->pos] == '\r' && r->pos + 1 < r->len &&
                d[r->pos + 1] == '\n')
                r->pos++;
            if (r->pos >= r->len) {
                r->ended_without_newline = 1;
                return REC_OK;
            }
            if (d[r->pos] == '\n') {
                r->pos++;
                r->line++;
                return REC_OK;
            }
            if (d[r->pos] == r->delim) {
                r->pos++;
                if (r->pos >= r->len) { /* a trailing delimiter: one more, empty field */
                    f = &r->fields[r->n_fields++];
                    f->in_scratch = 0;
                    f->off = r->pos;
                    f->len = 0;
                    r->ended_without_newline = 1;
                    return REC_OK;
                }
                continue;
            }
            snprintf(why, why_len, "text after the closing quote of column %d", r->n_fields);
            skip_line(r);
            return REC_BAD;
        }
        /* unquoted: up to the delimiter or the end of the line */
        f->in_scratch = 0;
        f->off = r->pos;
        while (r->pos < r->len && d[r->pos] != r->delim && d[r->pos] != '\n')
            r->pos++;
        f->len = r->pos - f->off;
        if (r->pos >= r->len) {
            r->ended_without_newline = 1;
            if (f->len && d[f->off + f->len - 1] == '\r')
                f->len--;
            return REC_OK;
        }
        if (d[r->pos] == '\n') {
            if (f->len && d[f->off + f->len - 1] == '\r')
                f->len--;
            r->pos++;
            r->line++;
            return REC_OK;
        }
        r->pos++; /* the delimiter */
        if (r->pos >= r->len) {
            f = &r->fields[r->n_fields++];
            f->in_scratch = 0;
            f->off = r->pos;
            f->len = 0;
            r->ended_without_newline = 1;
            return REC_OK;
        }
    }
}

/* ---- applying the map ------------------------------------------------------------------ */

struct slice {
    const char *p;
    size_t len;
};

static struct slice trimmed(const char *p, size_t len)
{
    while (len && (*p == ' ' || *p == '\t'))
        p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    return (struct slice){p, len};
}

/* Printable excerpt of hostile text for a reason: at most 40 bytes. */
static const char *excerpt(struct slice s, char *buf, size_t size)
{
    size_t n = s.len < 40 ? s.len : 40;
    if (n >= size)
        n = size - 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)s.p[i] < 0x20 || s.p[i] == '"' ? '?' : s.p[i];
    buf[n] = '\0';
    if (s.len > n && n >= 3)
        memcpy(buf + n - 3, "...", 3);
    return buf;
}

struct job {
    struct pb_settlement_set *set;
    const struct pb_settlement_csv_map *map;
    const char *source;
    const char *default_batch; /* batch id when unmapped */
    uint32_t load;
    int col[ROLE_COUNT];                  /* 0-based column index, -1 = unmapped */
    char label[ROLE_COUNT][NAME_MAX_LEN]; /* the column as the user knows it */
    int expected;                         /* columns per record */
    uint32_t lines;
};

static struct slice get(const struct reader *r, const struct job *j, enum role role)
{
    if (j->col[role] < 0 || j->col[role] >= r->n_fields)
        return (struct slice){"", 0};
    const struct field *f = &r->fields[j->col[role]];
    return trimmed(field_ptr(r, f), f->len);
}

/* Amount text -> minor units; 0 on success, else a reason in why. */
static int amount_of(const struct job *j, enum role role, struct slice s, const char *currency,
                     int64_t *out, char *why, size_t why_len)
{
    char text[64], ex[48];
    size_t n = 0;
    struct pb_err err = {0};
    enum pb_rc rc;

    /* thousands separators only between groups of exactly three digits ("1.234,56"),
     * so that "12.34" in a decimal-comma file is refused, never read as 1234 */
    int group = -1; /* digits since the last separator; -1 = none seen yet */
    size_t i;
    for (i = 0; i < s.len; i++) {
        char c = s.p[i];
        if (j->map->thousands_separator && c == j->map->thousands_separator) {
            if (group == -2 || (group >= 0 && group != 3) || n == 0 ||
                !isdigit((unsigned char)text[n - 1]) || (group < 0 && n > 3 + (text[0] == '-'))) {
                n = 0;
                break;
            }
            group = 0;
            continue;
        }
        if (c == j->map->decimal_separator) {
            if (group >= 0 && group != 3) {
                n = 0;
                break;
            }
            group = -2; /* in the fraction: no more separators */
            c = '.';
        } else if (c == '.' && j->map->decimal_separator != '.')
            c = 'x'; /* a '.' where ',' is the decimal mark is not a number */
        else if (isdigit((unsigned char)c) && group >= 0)
            group++;
        if (n + 1 >= sizeof text) {
            n = 0;
            break;
        }
        text[n++] = c;
    }
    if (n && group >= 0 && group != 3)
        n = 0;
    text[n] = '\0';
    if (n == 0) {
        snprintf(why, why_len, "%s \"%s\" is not a number", j->label[role],
                 excerpt(s, ex, sizeof ex));
        return -1;
    }
    rc = pb_money_parse_decimal(text, currency, out, &err);
    if (rc == PB_OK)
        return 0;
    if (rc == PB_ERR_RANGE)
        snprintf(why, why_len, "%s \"%s\" is out of range", j->label[role],
                 excerpt(s, ex, sizeof ex));
    else {
        /* a decimal with too many places is a number, but not an exact amount */
        const char *dot = strchr(text, '.');
        int numeric = 1;
        for (size_t i = text[0] == '-'; i < n; i++)
            if (!isdigit((unsigned char)text[i]) && text + i != dot)
                numeric = 0;
        if (numeric && dot && dot[1] && dot != text)
            snprintf(why, why_len, "%s \"%s\" has more decimals than %s has (%d)", j->label[role],
                     excerpt(s, ex, sizeof ex), currency, pb_currency_exponent(currency));
        else
            snprintf(why, why_len, "%s \"%s\" is not a number", j->label[role],
                     excerpt(s, ex, sizeof ex));
    }
    return -1;
}

static int date_of(const struct job *j, enum role role, struct slice s, const char *format,
                   int32_t *out, char *why, size_t why_len)
{
    char ex[48];
    *out = PB_SETTLEMENT_NO_DATE;
    if (!s.len)
        return 0;
    if (pb_settlement_date_parse(s.p, s.len, format, out, NULL) == PB_OK)
        return 0;
    snprintf(why, why_len, "%s \"%s\" is not a date in the format %s", j->label[role],
             excerpt(s, ex, sizeof ex), format);
    return -1;
}

static int64_t magnitude(int64_t v)
{
    return v < 0 && v != INT64_MIN ? -v : v;
}

/* One data record. Bad ones are reported; returns an error only at the limits. */
static enum pb_rc load_record(struct job *j, const struct reader *r, struct pb_err *err)
{
    const struct pb_settlement_csv_map *map = j->map;
    char why[320], ex[48];
    struct slice batch, gref, mref, cur, kind_s;
    char currency[4];
    int kind;
    int64_t amount, fee = 0;
    int32_t value_date, settled_date;
    uint32_t index;
    enum pb_rc rc;
    struct pb_err e2 = {0};

    if (r->n_fields != j->expected) {
        if (r->ended_without_newline && r->n_fields < j->expected)
            pb_settlement_bad_add(j->set, j->source, r->record_line,
                                  "truncated: the data ends in this record (%d of %d columns)",
                                  r->n_fields, j->expected);
        else
            pb_settlement_bad_add(j->set, j->source, r->record_line,
                                  "expected %d columns%s, found %d", j->expected,
                                  map->header ? " (as the header has)" : "", r->n_fields);
        return PB_OK;
    }
    /* currency first: amounts are read in it */
    memcpy(currency, map->currency, 4);
    if (j->col[ROLE_CURRENCY] >= 0) {
        cur = get(r, j, ROLE_CURRENCY);
        if (cur.len) {
            memset(currency, 0, sizeof currency);
            if (cur.len == 3)
                memcpy(currency, cur.p, 3);
            if (!pb_currency_valid(currency)) {
                pb_settlement_bad_add(j->set, j->source, r->record_line,
                                      "%s: unknown currency \"%s\"", j->label[ROLE_CURRENCY],
                                      excerpt(cur, ex, sizeof ex));
                return PB_OK;
            }
        } else if (!map->currency[0]) {
            pb_settlement_bad_add(j->set, j->source, r->record_line,
                                  "%s is empty (a currency is required)", j->label[ROLE_CURRENCY]);
            return PB_OK;
        }
    }

    if (j->col[ROLE_BATCH_ID] >= 0) {
        batch = get(r, j, ROLE_BATCH_ID);
        if (!batch.len) {
            pb_settlement_bad_add(j->set, j->source, r->record_line,
                                  "%s is empty (a batch id is required)", j->label[ROLE_BATCH_ID]);
            return PB_OK;
        }
        if (batch.len > PB_SETTLEMENT_ID_MAX) {
            pb_settlement_bad_add(j->set, j->source, r->record_line,
                                  "%s is longer than %d characters", j->label[ROLE_BATCH_ID],
                                  PB_SETTLEMENT_ID_MAX);
            return PB_OK;
        }
    } else {
        batch = (struct slice){j->default_batch, strlen(j->default_batch)};
    }

    gref = get(r, j, ROLE_GATEWAY_REF);
    mref = get(r, j, ROLE_MERCHANT_REF);
    if (!gref.len && !mref.len) {
        pb_settlement_bad_add(j->set, j->source, r->record_line, "no reference: %s is empty",
                              j->col[ROLE_GATEWAY_REF] >= 0 ? j->label[ROLE_GATEWAY_REF]
                                                            : j->label[ROLE_MERCHANT_REF]);
        return PB_OK;
    }
    if (gref.len > PB_SETTLEMENT_ID_MAX || mref.len > PB_SETTLEMENT_ID_MAX) {
        pb_settlement_bad_add(j->set, j->source, r->record_line, "%s is longer than %d characters",
                              gref.len > PB_SETTLEMENT_ID_MAX ? j->label[ROLE_GATEWAY_REF]
                                                              : j->label[ROLE_MERCHANT_REF],
                              PB_SETTLEMENT_ID_MAX);
        return PB_OK;
    }

    if (amount_of(j, ROLE_AMOUNT, get(r, j, ROLE_AMOUNT), currency, &amount, why, sizeof why)) {
        pb_settlement_bad_add(j->set, j->source, r->record_line, "%s", why);
        return PB_OK;
    }
    if (j->col[ROLE_FEE] >= 0) {
        struct slice fs = get(r, j, ROLE_FEE);
        if (fs.len && amount_of(j, ROLE_FEE, fs, currency, &fee, why, sizeof why)) {
            pb_settlement_bad_add(j->set, j->source, r->record_line, "%s", why);
            return PB_OK;
        }
    }

    if (j->col[ROLE_KIND] >= 0) {
        kind_s = get(r, j, ROLE_KIND);
        kind = -1;
        if (map->n_kinds) {
            for (int i = 0; i < map->n_kinds; i++)
                if (strlen(map->kinds[i].from) == kind_s.len &&
                    memcmp(map->kinds[i].from, kind_s.p, kind_s.len) == 0)
                    kind = (int)map->kinds[i].to;
        } else {
            kind = pb_settlement_kind_parse(kind_s.p, kind_s.len);
        }
        if (kind < 0) {
            char known[200] = "";
            size_t used = 0;
            for (int i = 0; i < map->n_kinds && used + 4 < sizeof known; i++)
                used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "",
                                         map->kinds[i].from);
            pb_settlement_bad_add(
                j->set, j->source, r->record_line, "%s \"%s\" is not a known kind (%s%s)",
                j->label[ROLE_KIND], excerpt(kind_s, ex, sizeof ex),
                map->n_kinds ? "kind_map has: " : "",
                map->n_kinds ? known : "sale, refund, chargeback, fee, adjustment");
            return PB_OK;
        }
    } else {
        kind = amount < 0 ? PB_SETTLEMENT_REFUND : PB_SETTLEMENT_SALE;
    }
    if (!map->signs_as_is) {
        if (kind == PB_SETTLEMENT_REFUND || kind == PB_SETTLEMENT_CHARGEBACK ||
            kind == PB_SETTLEMENT_FEE)
            amount = -magnitude(amount);
        fee = magnitude(fee);
        if (amount == INT64_MIN || fee == INT64_MIN) {
            pb_settlement_bad_add(j->set, j->source, r->record_line, "%s is out of range",
                                  j->label[ROLE_AMOUNT]);
            return PB_OK;
        }
    }

    if (date_of(j, ROLE_VALUE_DATE, get(r, j, ROLE_VALUE_DATE), map->date_format, &value_date, why,
                sizeof why) ||
        date_of(j, ROLE_SETTLED_DATE, get(r, j, ROLE_SETTLED_DATE), map->settled_date_format,
                &settled_date, why, sizeof why)) {
        pb_settlement_bad_add(j->set, j->source, r->record_line, "%s", why);
        return PB_OK;
    }

    struct pb__settlement_batch_in bin = {.gateway = map->gateway,
                                          .batch_id = batch.p,
                                          .id_len = batch.len,
                                          .currency = currency,
                                          .source = j->source,
                                          .source_line = r->record_line,
                                          .date = settled_date,
                                          .declared_count = PB_SETTLEMENT_NO_COUNT};
    rc = pb__settlement_batch_get(j->set, j->load, &bin, &index, &e2);
    if (rc == PB_ERR_EXISTS || rc == PB_ERR_INVALID)
        return PB_OK; /* reported by the set */
    if (rc)
        return pb_err_set(err, rc, "%s line %u: %s", j->source, r->record_line, e2.msg);

    struct pb__settlement_line_in lin = {.line_no = r->record_line,
                                         .kind = (enum pb_settlement_kind)kind,
                                         .gateway_ref = gref.p,
                                         .gateway_ref_len = gref.len,
                                         .merchant_ref = mref.p,
                                         .merchant_ref_len = mref.len,
                                         .amount_minor = amount,
                                         .fee_minor = fee,
                                         .currency = currency,
                                         .value_date = value_date,
                                         .settled_date = settled_date};
    rc = pb__settlement_line_add(j->set, index, &lin, &e2);
    if (rc == PB_ERR_RANGE || rc == PB_ERR_INVALID) {
        pb_settlement_bad_add(j->set, j->source, r->record_line, "%s", e2.msg);
        return PB_OK;
    }
    if (rc)
        return pb_err_set(err, rc, "%s line %u: %s", j->source, r->record_line, e2.msg);
    j->lines++;
    return PB_OK;
}

/* Resolve the mapped columns against the header record. */
static enum pb_rc resolve_header(struct job *j, const struct reader *r, struct pb_err *err)
{
    const struct pb_settlement_csv_map *map = j->map;
    for (int role = 0; role < ROLE_COUNT; role++) {
        if (map->column_number[role] || !map->column_name[role])
            continue;
        for (int c = 0; c < r->n_fields; c++) {
            struct slice h = trimmed(field_ptr(r, &r->fields[c]), r->fields[c].len);
            if (h.len == strlen(map->column_name[role]) &&
                memcmp(h.p, map->column_name[role], h.len) == 0) {
                j->col[role] = c;
                break;
            }
        }
        if (j->col[role] < 0) {
            char found[240] = "";
            size_t used = 0;
            char ex[48];
            for (int c = 0; c < r->n_fields && used + 8 < sizeof found; c++) {
                struct slice h = trimmed(field_ptr(r, &r->fields[c]), r->fields[c].len);
                used += (size_t)snprintf(found + used, sizeof found - used, "%s\"%s\"",
                                         c ? ", " : "", excerpt(h, ex, sizeof ex));
            }
            return pb_err_set(err, PB_ERR_INVALID,
                              "%s line %u: the header has no column \"%s\" (columns.%s); it "
                              "has %s",
                              j->source, r->record_line, map->column_name[role], role_names[role],
                              found);
        }
    }
    return PB_OK;
}

enum pb_rc pb_settlement_parse_csv(struct pb_settlement_set *set,
                                   const struct pb_settlement_csv_map *map, const char *source,
                                   const char *data, size_t len, struct pb_err *err)
{
    struct reader *r;
    struct job j;
    enum record_status st;
    char why[320];
    enum pb_rc rc = PB_OK;
    int skip;

    if (!set || !map || map->magic != MAP_MAGIC || (!data && len))
        return pb_err_set(err, PB_ERR_INVALID, "pb_settlement_parse_csv: bad arguments");
    if (!source)
        source = "csv";
    r = calloc(1, sizeof *r);
    if (!r)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    r->data = data;
    r->len = len;
    r->line = 1;
    r->delim = map->delimiter;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
        r->pos = 3;

    memset(&j, 0, sizeof j);
    j.set = set;
    j.map = map;
    j.source = source;
    j.default_batch = map->batch_id ? map->batch_id : source;
    if (strlen(j.default_batch) > PB_SETTLEMENT_ID_MAX)
        j.default_batch += strlen(j.default_batch) - PB_SETTLEMENT_ID_MAX;
    j.load = pb__settlement_load_begin(set);
    for (int role = 0; role < ROLE_COUNT; role++) {
        j.col[role] = map->column_number[role] ? map->column_number[role] - 1 : -1;
        if (map->column_name[role])
            snprintf(j.label[role], sizeof j.label[role], "%s", map->column_name[role]);
        else
            snprintf(j.label[role], sizeof j.label[role], "column %d", map->column_number[role]);
    }

    /* the records before the data: skipped lines, then the header */
    skip = map->skip_lines + (map->header ? 1 : 0);
    while (skip > 0) {
        st = next_record(r, why, sizeof why);
        if (st == REC_NOMEM) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (st == REC_EOF) {
            rc = pb_err_set(err, PB_ERR_INVALID, "%s: the file is empty%s", source,
                            map->header ? " (no header)" : "");
            goto out;
        }
        if (st == REC_OK && r->n_fields == 1 && r->fields[0].len == 0)
            continue; /* blank line */
        skip--;
        if (skip == 0 && map->header) {
            if (st != REC_OK) {
                rc = pb_err_set(err, PB_ERR_INVALID, "%s line %u: the header cannot be read: %s",
                                source, r->record_line, why);
                goto out;
            }
            if ((rc = resolve_header(&j, r, err)))
                goto out;
            j.expected = r->n_fields;
        }
    }
    for (int role = 0; role < ROLE_COUNT; role++)
        if (j.col[role] >= 0 && j.expected && j.col[role] >= j.expected) {
            rc = pb_err_set(err, PB_ERR_INVALID,
                            "%s: columns.%s is column %d, but the header has %d", source,
                            role_names[role], j.col[role] + 1, j.expected);
            goto out;
        }

    while ((st = next_record(r, why, sizeof why)) != REC_EOF) {
        if (st == REC_NOMEM) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
            break;
        }
        if (st != REC_OK) {
            pb_settlement_bad_add(set, source, r->record_line, "%s", why);
            continue;
        }
        if (r->n_fields == 1 && r->fields[0].len == 0)
            continue; /* blank line */
        if (!j.expected) {
            /* no header: the first record sets the width; it must reach every mapped column */
            int need = 0;
            for (int role = 0; role < ROLE_COUNT; role++)
                if (j.col[role] + 1 > need)
                    need = j.col[role] + 1;
            if (r->n_fields < need) {
                pb_settlement_bad_add(set, source, r->record_line,
                                      "expected at least %d columns (the map uses column %d), "
                                      "found %d",
                                      need, need, r->n_fields);
                continue;
            }
            j.expected = r->n_fields;
        }
        if ((rc = load_record(&j, r, err)))
            break;
    }
out:
    pb__settlement_load_end(set, j.load);
    free(r->scratch);
    free(r);
    return rc;
}
