/*
 * connectors/settlement/settlement_paytrace.c: PayTrace exports read into a
 * settlement set (settlement_parse.h has the contract; docs/settlement.md
 * the member reference).
 *
 *   export/by_date_range  {"success":true,"transactions":[record, ...]}
 *   settled-batch export  {"success":true,"batches":[{"batch_number","settled_at",
 *                         "transaction_count","sales_amount","refunds_amount","fees",
 *                         "net_amount","currency"?,"transactions":[record, ...]}, ...]}
 *   record                {"transaction_id","transaction_type":"SALE"|"REFUND","amount",
 *                         "currency"?,"success","response_code","voided","created",
 *                         "invoice_id","batch_number"?,"fee"?,"settled_at"?}
 * A record is settled money when it is an approved (success, response code
 * 101/106/120 or none), unvoided SALE or REFUND; everything else is counted
 * as skipped. In export/by_date_range only records with a batch_number are
 * settled (include_unsettled loads the others outside any batch). The
 * settled-batch export's path and shape are unverified against live PayTrace
 * (WIRE-FORMATS.md); this reads what the sandbox sends.
 *
 * How. A small structural scanner walks the raw text once and finds the
 * byte span of each element of the top-level "transactions" or "batches"
 * array (and the "success" / "status_message" members). Each span is then
 * parsed on its own with jansson. This gives every bad record its physical
 * line, keeps a truncated export's complete records (the scanner knows
 * where each element ends; the cut one is reported), and parses every byte
 * once. Amounts go through pb_json_to_minor(): a decimal string exactly, a
 * JSON number only when it is provably a short decimal, never multiplied as
 * a double.
 *
 * Owns nothing between calls. Thread-safe.
 *
 * Rejected designs.
 *   - json_loadb() on the whole reply: one stray byte at the end of a month's
 *     export would lose every record, and jansson keeps no line numbers.
 *   - JSON_DECODE_INT_AS_REAL or reading amounts as doubles: never near money.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connectors/settlement/settlement_parse.h"
#include "core/json.h"
#include "core/money.h"

#define SCAN_DEPTH_MAX 64 /* nesting the scanner follows */

/* ---- the scanner ---------------------------------------------------------------------- */

struct scan {
    const char *d;
    size_t len;
    size_t line_pos;  /* line numbers are counted incrementally up to here */
    uint32_t line_at; /* the line at line_pos */
};

static uint32_t line_of(struct scan *s, size_t pos)
{
    if (pos < s->line_pos) { /* rare: restart */
        s->line_pos = 0;
        s->line_at = 1;
    }
    for (const char *p = s->d + s->line_pos, *e = s->d + pos;
         (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        s->line_at++;
    s->line_pos = pos;
    return s->line_at;
}

static size_t skip_ws(const struct scan *s, size_t pos)
{
    while (pos < s->len &&
           (s->d[pos] == ' ' || s->d[pos] == '\t' || s->d[pos] == '\n' || s->d[pos] == '\r'))
        pos++;
    return pos;
}

/* The end (one past) of the string starting at pos ('"'), or 0 at EOF. */
static size_t skip_string(const struct scan *s, size_t pos)
{
    for (pos++; pos < s->len; pos++) {
        if (s->d[pos] == '\\')
            pos++;
        else if (s->d[pos] == '"')
            return pos + 1;
    }
    return 0;
}

/* The end (one past) of the value starting at pos, or 0 when the data ends
 * first or the structure is broken. */
static size_t skip_value(const struct scan *s, size_t pos)
{
    char stack[SCAN_DEPTH_MAX];
    int depth = 0;
    if (pos >= s->len)
        return 0;
    if (s->d[pos] != '{' && s->d[pos] != '[') {
        if (s->d[pos] == '"')
            return skip_string(s, pos);
        size_t start = pos;
        while (pos < s->len && !strchr(" \t\r\n,]}:", s->d[pos]))
            pos++;
        return pos > start && pos < s->len ? pos : 0; /* a scalar must be followed by something */
    }
    while (pos < s->len) {
        char c = s->d[pos];
        if (c == '"') {
            pos = skip_string(s, pos);
            if (!pos)
                return 0;
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth == SCAN_DEPTH_MAX)
                return 0;
            stack[depth++] = c == '{' ? '}' : ']';
        } else if (c == '}' || c == ']') {
            if (!depth || stack[depth - 1] != c)
                return 0;
            if (--depth == 0)
                return pos + 1;
        }
        pos++;
    }
    return 0;
}

/* ---- records --------------------------------------------------------------------------- */

struct job {
    struct pb_settlement_set *set;
    const char *source;
    uint32_t load;
    const char *currency; /* the default */
    int include_unsettled;
    size_t skipped;
    enum pb_rc fatal;
    struct pb_err *err;
};

/* Text of an id member (integer or string); 0 on success. */
static int id_text(const json_t *v, char *buf, size_t size)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        snprintf(buf, size, "%lld", (long long)json_integer_value(v));
        return 0;
    }
    if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) < size &&
        strlen(json_string_value(v)) == json_string_length(v)) {
        memcpy(buf, json_string_value(v), json_string_length(v) + 1);
        return 0;
    }
    return -1;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* ISO 8601 "YYYY-MM-DD[T...]" or PayTrace's "MM/DD/YYYY[ HH:MM:SS]", or
 * {"at": one of those}; NULL/absent is no date. 0 on success. */
static int date_member(const json_t *v, int32_t *out)
{
    const char *s;
    int y, m, d;
    size_t len;
    *out = PB_SETTLEMENT_NO_DATE;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_object(v))
        v = json_object_get(v, "at");
    s = json_string_value(v);
    if (!s)
        return -1;
    len = strlen(s);
    if (len >= 10 && s[4] == '-' && s[7] == '-' && !digits(s, 4, &y) && !digits(s + 5, 2, &m) &&
        !digits(s + 8, 2, &d) && (len == 10 || s[10] == 'T' || s[10] == ' ')) {
    } else if (len >= 10 && s[2] == '/' && s[5] == '/' && !digits(s, 2, &m) &&
               !digits(s + 3, 2, &d) && !digits(s + 6, 4, &y) && (len == 10 || s[10] == ' ')) {
    } else {
        return -1;
    }
    if (!pb_settlement_date_valid(y, (unsigned)m, (unsigned)d))
        return -1;
    *out = pb_settlement_days_from_civil(y, (unsigned)m, (unsigned)d);
    return 0;
}

static int approved(const json_t *rec)
{
    json_t *ok = json_object_get(rec, "success"), *code = json_object_get(rec, "response_code");
    if (ok && !json_is_true(ok))
        return 0;
    if (code && !json_is_null(code)) {
        long long c = json_is_integer(code) ? (long long)json_integer_value(code) : -1;
        if (json_is_string(code))
            c = strtoll(json_string_value(code), NULL, 10);
        return c == 101 || c == 106 || c == 120;
    }
    return 1;
}

/* One record. batch: the index of its settled-export batch, or NO_BATCH (by_date_range). */
static void load_record(struct job *j, const json_t *rec, uint32_t line, const char *where,
                        uint32_t batch)
{
    char id[PB_SETTLEMENT_ID_MAX + 1], batch_id[PB_SETTLEMENT_ID_MAX + 1], what[200];
    char currency[4];
    const char *type, *invoice, *cur;
    enum pb_settlement_kind kind;
    int64_t amount, fee = 0;
    int32_t value_date, settled_date;
    struct pb_err e = {0};
    enum pb_rc rc;
    json_t *v;

    if (!json_is_object(rec)) {
        pb_settlement_bad_add(j->set, j->source, line, "%s is not an object", where);
        return;
    }
    if (id_text(json_object_get(rec, "transaction_id"), id, sizeof id)) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: transaction_id is missing or not an id",
                              where);
        return;
    }
    snprintf(what, sizeof what, "%s (transaction_id %s)", where, id);
    type = json_string_value(json_object_get(rec, "transaction_type"));
    if (!type) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: transaction_type is missing", what);
        return;
    }
    if (strcmp(type, "SALE") == 0)
        kind = PB_SETTLEMENT_SALE;
    else if (strcmp(type, "REFUND") == 0)
        kind = PB_SETTLEMENT_REFUND;
    else {
        j->skipped++; /* AUTHORIZATION, ...: no money moved */
        return;
    }
    if (!approved(rec) || json_is_true(json_object_get(rec, "voided"))) {
        j->skipped++;
        return;
    }
    cur = j->currency;
    v = json_object_get(rec, "currency");
    if (v && !json_is_null(v)) {
        cur = json_string_value(v);
        if (!cur || !pb_currency_valid(cur)) {
            pb_settlement_bad_add(j->set, j->source, line, "%s: unknown currency \"%.16s\"", what,
                                  cur ? cur : "(not a string)");
            return;
        }
    }
    memcpy(currency, cur, 4);
    rc = pb_json_to_minor(json_object_get(rec, "amount"), currency, &amount, &e);
    if (rc) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: amount: %s", what,
                              json_object_get(rec, "amount") ? e.msg : "missing");
        return;
    }
    if (amount < 0) {
        pb_settlement_bad_add(j->set, j->source, line,
                              "%s: amount must not be negative (the type gives the sign)", what);
        return;
    }
    if (kind == PB_SETTLEMENT_REFUND)
        amount = -amount;
    v = json_object_get(rec, "fee");
    if (v && !json_is_null(v) && (rc = pb_json_to_minor(v, currency, &fee, &e))) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: fee: %s", what, e.msg);
        return;
    }
    if (date_member(json_object_get(rec, "created"), &value_date)) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: created is not a date", what);
        return;
    }
    if (date_member(json_object_get(rec, "settled_at"), &settled_date)) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: settled_at is not a date", what);
        return;
    }
    invoice = json_string_value(json_object_get(rec, "invoice_id"));
    if (!invoice)
        invoice = "";
    if (strlen(invoice) > PB_SETTLEMENT_ID_MAX) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: invoice_id is longer than %d", what,
                              PB_SETTLEMENT_ID_MAX);
        return;
    }

    if (batch == PB_SETTLEMENT_NO_BATCH) {
        v = json_object_get(rec, "batch_number");
        if (v && !json_is_null(v)) {
            if (id_text(v, batch_id, sizeof batch_id)) {
                pb_settlement_bad_add(j->set, j->source, line, "%s: batch_number is not an id",
                                      what);
                return;
            }
            struct pb__settlement_batch_in in = {.gateway = "paytrace",
                                                 .batch_id = batch_id,
                                                 .id_len = strlen(batch_id),
                                                 .currency = currency,
                                                 .source = j->source,
                                                 .source_line = line,
                                                 .date = settled_date,
                                                 .declared_count = PB_SETTLEMENT_NO_COUNT};
            rc = pb__settlement_batch_get(j->set, j->load, &in, &batch, &e);
            if (rc == PB_ERR_EXISTS || rc == PB_ERR_INVALID)
                return;
            if (rc) {
                j->fatal = pb_err_set(j->err, rc, "%s line %u: %s", j->source, line, e.msg);
                return;
            }
        } else if (!j->include_unsettled) {
            j->skipped++;
            return;
        }
    } else {
        const struct pb_settlement_batch *b = pb_settlement_batch_at(j->set, batch);
        if (strcmp(b->currency, currency) != 0) {
            pb_settlement_bad_add(j->set, j->source, line,
                                  "%s: currency %s differs from batch %s's %s", what, currency,
                                  b->batch_id, b->currency);
            return;
        }
        if (settled_date == PB_SETTLEMENT_NO_DATE)
            settled_date = b->date;
    }
    struct pb__settlement_line_in in = {.line_no = line,
                                        .kind = kind,
                                        .gateway_ref = id,
                                        .gateway_ref_len = strlen(id),
                                        .merchant_ref = invoice,
                                        .merchant_ref_len = strlen(invoice),
                                        .amount_minor = amount,
                                        .fee_minor = fee,
                                        .currency = currency,
                                        .value_date = value_date,
                                        .settled_date = settled_date};
    rc = pb__settlement_line_add(j->set, batch, &in, &e);
    if (rc == PB_ERR_RANGE || rc == PB_ERR_INVALID)
        pb_settlement_bad_add(j->set, j->source, line, "%s: %s", what, e.msg);
    else if (rc)
        j->fatal = pb_err_set(j->err, rc, "%s line %u: %s", j->source, line, e.msg);
}

/* Element spans of the array at key `key` directly inside the object [begin, end). */
struct spans {
    size_t *start, *stop;
    size_t n, cap;
};

static int spans_push(struct spans *sp, size_t a, size_t b)
{
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 64;
        size_t *s1 = realloc(sp->start, cap * sizeof *s1);
        if (!s1)
            return -1;
        sp->start = s1;
        size_t *s2 = realloc(sp->stop, cap * sizeof *s2);
        if (!s2)
            return -1;
        sp->stop = s2;
        sp->cap = cap;
    }
    sp->start[sp->n] = a;
    sp->stop[sp->n++] = b;
    return 0;
}

/* One settled-export batch element, parsed. */
static void load_batch(struct job *j, struct scan *s, const json_t *b, size_t begin, size_t end,
                       uint32_t line, size_t index)
{
    char where[64], batch_id[PB_SETTLEMENT_ID_MAX + 1], currency[4];
    const char *cur = j->currency;
    json_t *txns, *v;
    int64_t sales, refunds, fees, net, gross;
    int32_t date;
    uint32_t count = PB_SETTLEMENT_NO_COUNT, bindex;
    struct pb_err e = {0};
    enum pb_rc rc;

    snprintf(where, sizeof where, "batches[%zu]", index);
    if (!json_is_object(b)) {
        pb_settlement_bad_add(j->set, j->source, line, "%s is not an object", where);
        return;
    }
    if (id_text(json_object_get(b, "batch_number"), batch_id, sizeof batch_id)) {
        pb_settlement_bad_add(j->set, j->source, line, "%s: batch_number is missing", where);
        return;
    }
    txns = json_object_get(b, "transactions");
    v = json_object_get(b, "currency");
    if (v && !json_is_null(v))
        cur = json_string_value(v);
    else if (json_array_size(txns) &&
             json_is_string(json_object_get(json_array_get(txns, 0), "currency")))
        cur = json_string_value(json_object_get(json_array_get(txns, 0), "currency"));
    if (!cur || !pb_currency_valid(cur)) {
        pb_settlement_bad_add(j->set, j->source, line, "batch %s: unknown currency \"%.16s\"",
                              batch_id, cur ? cur : "(not a string)");
        return;
    }
    memcpy(currency, cur, 4);
    if ((rc = pb_json_to_minor(json_object_get(b, "sales_amount"), currency, &sales, &e)) ||
        (rc = pb_json_to_minor(json_object_get(b, "refunds_amount"), currency, &refunds, &e)) ||
        (rc = pb_json_to_minor(json_object_get(b, "fees"), currency, &fees, &e)) ||
        (rc = pb_json_to_minor(json_object_get(b, "net_amount"), currency, &net, &e))) {
        pb_settlement_bad_add(j->set, j->source, line,
                              "batch %s: sales_amount, refunds_amount, fees and net_amount must "
                              "be amounts: %s",
                              batch_id, e.msg);
        return;
    }
    if (pb_money_sub(sales, refunds, &gross)) {
        pb_settlement_bad_add(j->set, j->source, line, "batch %s: the gross overflows", batch_id);
        return;
    }
    if (date_member(json_object_get(b, "settled_at"), &date)) {
        pb_settlement_bad_add(j->set, j->source, line, "batch %s: settled_at is not a date",
                              batch_id);
        return;
    }
    v = json_object_get(b, "transaction_count");
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (json_int_t)PB_SETTLEMENT_NO_COUNT) {
            pb_settlement_bad_add(j->set, j->source, line,
                                  "batch %s: transaction_count is not a count", batch_id);
            return;
        }
        count = (uint32_t)json_integer_value(v);
    }
    if (txns && !json_is_array(txns)) {
        pb_settlement_bad_add(j->set, j->source, line, "batch %s: transactions is not an array",
                              batch_id);
        return;
    }
    struct pb__settlement_batch_in in = {.gateway = "paytrace",
                                         .batch_id = batch_id,
                                         .id_len = strlen(batch_id),
                                         .currency = currency,
                                         .source = j->source,
                                         .source_line = line,
                                         .date = date,
                                         .declared = 1,
                                         .gross_minor = gross,
                                         .fees_minor = fees,
                                         .net_minor = net,
                                         .declared_count = count};
    rc = pb__settlement_batch_get(j->set, j->load, &in, &bindex, &e);
    if (rc == PB_ERR_EXISTS || rc == PB_ERR_INVALID)
        return;
    if (rc) {
        j->fatal = pb_err_set(j->err, rc, "%s line %u: %s", j->source, line, e.msg);
        return;
    }

    /* the lines of its transactions: their own spans give their lines */
    struct spans sp = {0};
    if (end > begin) {
        size_t pos = skip_ws(s, begin + 1);
        while (pos < end && s->d[pos] == '"') {
            size_t kend = skip_string(s, pos);
            int is_txns =
                kend && kend - pos == 14 && memcmp(s->d + pos, "\"transactions\"", 14) == 0;
            if (!kend)
                break;
            pos = skip_ws(s, kend);
            if (pos >= end || s->d[pos] != ':')
                break;
            pos = skip_ws(s, pos + 1);
            if (is_txns && pos < end && s->d[pos] == '[') {
                pos = skip_ws(s, pos + 1);
                while (pos < end && s->d[pos] != ']') {
                    size_t vend = skip_value(s, pos);
                    if (!vend || spans_push(&sp, pos, vend))
                        break;
                    pos = skip_ws(s, vend);
                    if (pos < end && s->d[pos] == ',')
                        pos = skip_ws(s, pos + 1);
                }
                break;
            }
            pos = skip_value(s, pos);
            if (!pos)
                break;
            pos = skip_ws(s, pos);
            if (pos < end && s->d[pos] == ',')
                pos = skip_ws(s, pos + 1);
        }
    }
    for (size_t i = 0; !j->fatal && i < json_array_size(txns); i++) {
        char w[96];
        snprintf(w, sizeof w, "batch %s transactions[%zu]", batch_id, i);
        load_record(j, json_array_get(txns, i),
                    sp.n == json_array_size(txns) ? line_of(s, sp.start[i]) : line, w, bindex);
    }
    free(sp.start);
    free(sp.stop);
}

enum pb_rc pb_settlement_parse_paytrace_json(struct pb_settlement_set *set,
                                             const struct pb_settlement_paytrace_options *opt,
                                             const char *source, const char *data, size_t len,
                                             size_t *skipped, struct pb_err *err)
{
    struct scan s = {.d = data, .len = len, .line_pos = 0, .line_at = 1};
    struct job j = {0};
    struct spans sp = {0};
    int records_key = 0; /* 1 = transactions, 2 = batches */
    int success = -1;    /* -1 = absent */
    char status[240] = "";
    size_t pos;
    enum pb_rc rc = PB_OK;
    int complete = 0;

    if (skipped)
        *skipped = 0;
    if (!set || (!data && len))
        return pb_err_set(err, PB_ERR_INVALID, "pb_settlement_parse_paytrace_json: bad arguments");
    if (!source)
        source = "paytrace";
    j.set = set;
    j.source = source;
    j.err = err;
    j.currency = opt && opt->currency ? opt->currency : "USD";
    j.include_unsettled = opt ? opt->include_unsettled : 0;
    if (!pb_currency_valid(j.currency))
        return pb_err_set(err, PB_ERR_CONFIG, "currency: unknown currency \"%s\"", j.currency);

    pos = skip_ws(&s, 0);
    if (pos + 3 <= len && memcmp(data + pos, "\xEF\xBB\xBF", 3) == 0)
        pos = skip_ws(&s, pos + 3);
    if (pos >= len || data[pos] != '{')
        return pb_err_set(err, PB_ERR_INVALID, "%s: not a PayTrace export (a JSON object expected)",
                          source);
    j.load = pb__settlement_load_begin(set);
    pos = skip_ws(&s, pos + 1);
    while (pos < len) {
        size_t kstart = pos, kend, vstart, vend;
        if (data[pos] == '}') {
            complete = 1;
            break;
        }
        if (data[pos] != '"' || !(kend = skip_string(&s, pos)))
            break;
        pos = skip_ws(&s, kend);
        if (pos >= len || data[pos] != ':')
            break;
        vstart = pos = skip_ws(&s, pos + 1);
        int which = 0;
        if (kend - kstart == 14 && memcmp(data + kstart, "\"transactions\"", 14) == 0)
            which = 1;
        else if (kend - kstart == 9 && memcmp(data + kstart, "\"batches\"", 9) == 0)
            which = 2;
        if (which && pos < len && data[pos] == '[') {
            records_key = which;
            pos = skip_ws(&s, pos + 1);
            int closed = 0;
            while (pos < len) {
                if (data[pos] == ']') {
                    closed = 1;
                    pos++;
                    break;
                }
                vend = skip_value(&s, pos);
                if (!vend) {
                    pb_settlement_bad_add(set, source, line_of(&s, pos),
                                          "truncated or malformed: %s[%zu] does not end; it and "
                                          "anything after it are not read",
                                          which == 1 ? "transactions" : "batches", sp.n);
                    break;
                }
                if (spans_push(&sp, pos, vend)) {
                    rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
                    goto out;
                }
                pos = skip_ws(&s, vend);
                if (pos < len && data[pos] == ',')
                    pos = skip_ws(&s, pos + 1);
                else if (pos < len && data[pos] != ']') {
                    pb_settlement_bad_add(set, source, line_of(&s, pos),
                                          "malformed: a ',' or ']' was expected after element "
                                          "%zu; nothing after it is read",
                                          sp.n - 1);
                    break;
                }
            }
            if (!closed)
                break;
            vend = pos;
        } else {
            vend = skip_value(&s, pos);
            if (!vend)
                break;
            if (kend - kstart == 9 && memcmp(data + kstart, "\"success\"", 9) == 0)
                success = vend - vstart == 4 && memcmp(data + vstart, "true", 4) == 0 ? 1 : 0;
            else if (kend - kstart == 16 && memcmp(data + kstart, "\"status_message\"", 16) == 0) {
                json_t *m = json_loadb(data + vstart, vend - vstart, JSON_DECODE_ANY, NULL);
                if (json_is_string(m))
                    snprintf(status, sizeof status, "%s", json_string_value(m));
                json_decref(m);
            }
        }
        pos = skip_ws(&s, vend);
        if (pos < len && data[pos] == ',')
            pos = skip_ws(&s, pos + 1);
        else if (pos < len && data[pos] != '}')
            break;
    }
    if (success == 0) {
        rc = pb_err_set(err, PB_ERR_PERMANENT, "%s: PayTrace answered success false: %s", source,
                        status[0] ? status : "(no status_message)");
        goto out;
    }
    if (!records_key) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "%s: not a PayTrace export (no \"transactions\" or \"batches\" array)",
                        source);
        goto out;
    }
    if (!complete)
        pb_settlement_bad_add(set, source, line_of(&s, pos < len ? pos : len),
                              "truncated or malformed: the export does not end properly here; "
                              "the %zu complete records before it were read",
                              sp.n);

    for (size_t i = 0; i < sp.n && !j.fatal; i++) {
        json_error_t jerr;
        uint32_t line = line_of(&s, sp.start[i]);
        json_t *rec =
            json_loadb(data + sp.start[i], sp.stop[i] - sp.start[i], JSON_REJECT_DUPLICATES, &jerr);
        char where[48];
        snprintf(where, sizeof where, "%s[%zu]", records_key == 1 ? "transactions" : "batches", i);
        if (!rec) {
            pb_settlement_bad_add(set, source, line + (uint32_t)(jerr.line > 1 ? jerr.line - 1 : 0),
                                  "%s is not valid JSON: %s", where, jerr.text);
            continue;
        }
        if (records_key == 1)
            load_record(&j, rec, line, where, PB_SETTLEMENT_NO_BATCH);
        else
            load_batch(&j, &s, rec, sp.start[i], sp.stop[i], line, i);
        json_decref(rec);
    }
    if (j.fatal)
        rc = j.fatal;
out:
    pb__settlement_load_end(set, j.load);
    free(sp.start);
    free(sp.stop);
    if (skipped)
        *skipped = j.skipped;
    return rc;
}

/* ---- an already-parsed reply (the paytrace connector's export calls) ------------------------ */

enum pb_rc pb__settlement_paytrace_tree(struct pb_settlement_set *set,
                                        const struct pb_settlement_paytrace_options *opt,
                                        const char *source, const json_t *reply, size_t *skipped,
                                        struct pb_err *err)
{
    struct job j = {0};
    struct scan s = {.d = "", .len = 0, .line_pos = 0, .line_at = 1};
    json_t *records, *ok;
    size_t i;
    json_t *v;

    if (skipped)
        *skipped = 0;
    if (!set || !json_is_object(reply))
        return pb_err_set(err, PB_ERR_INVALID, "%s: not a PayTrace export (not an object)",
                          source ? source : "paytrace");
    if (!source)
        source = "paytrace";
    j.set = set;
    j.source = source;
    j.err = err;
    j.currency = opt && opt->currency ? opt->currency : "USD";
    j.include_unsettled = opt ? opt->include_unsettled : 0;
    if (!pb_currency_valid(j.currency))
        return pb_err_set(err, PB_ERR_CONFIG, "currency: unknown currency \"%s\"", j.currency);
    ok = json_object_get(reply, "success");
    if (ok && !json_is_true(ok))
        return pb_err_set(err, PB_ERR_PERMANENT, "%s: PayTrace answered success false: %s", source,
                          json_string_value(json_object_get(reply, "status_message"))
                              ? json_string_value(json_object_get(reply, "status_message"))
                              : "(no status_message)");
    j.load = pb__settlement_load_begin(set);
    if ((records = json_object_get(reply, "transactions")) && json_is_array(records)) {
        json_array_foreach(records, i, v)
        {
            char where[48];
            snprintf(where, sizeof where, "transactions[%zu]", i);
            load_record(&j, v, 0, where, PB_SETTLEMENT_NO_BATCH);
            if (j.fatal)
                break;
        }
    } else if ((records = json_object_get(reply, "batches")) && json_is_array(records)) {
        json_array_foreach(records, i, v)
        {
            load_batch(&j, &s, v, 0, 0, 0, i);
            if (j.fatal)
                break;
        }
    } else {
        pb__settlement_load_end(set, j.load);
        return pb_err_set(err, PB_ERR_INVALID,
                          "%s: not a PayTrace export (no \"transactions\" or \"batches\" array)",
                          source);
    }
    pb__settlement_load_end(set, j.load);
    if (skipped)
        *skipped = j.skipped;
    return j.fatal;
}
