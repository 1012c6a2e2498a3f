/*
 * recon/recon_csv.c: the strict, resilient CSV scanner for settlement and
 * ledger files, and the loader that mmaps both files and reads them in two
 * threads.
 *
 * What it owns. Nothing that outlives a call: a 64 KiB scratch buffer for
 * unescaping quoted fields, and (in pb_recon_load_files) the mappings and
 * file descriptors, released before the call returns. Everything it reads is
 * copied into the run by the push functions of recon_run.c.
 *
 * The format. RFC 4180 with a header line that names the columns (any order;
 * unknown columns are ignored, a missing required one fails the file). LF or
 * CRLF line ends, a UTF-8 byte order mark is skipped, blank lines are
 * skipped, a quoted field may hold commas, doubled quotes and line breaks.
 * Amounts are exact decimals in the currency's minor unit (core/money.h's
 * grammar: "10.99", "-5", "1000" JPY); dates are YYYY-MM-DD.
 *
 * Strict but resilient. A line that breaks the format (wrong column count,
 * a truncated last line, a non-numeric amount, an unknown currency, a bad
 * date or kind, a second header for a batch) is not guessed at: it becomes a
 * problem with its line number, column and reason, and the scanner goes on
 * with the next line. Only a bad header, an unreadable file or a configured
 * limit stops a file.
 *
 * Speed. One pass over the bytes per line on the fast path (no quote in the
 * line): fields are spans into the mapping, found while looking for the end
 * of the line. Amounts in canonical form ("123.45" for a 2-digit currency)
 * are converted inline; anything else goes to pb_money_parse_decimal(), which
 * stays the one authority on what an amount is (it accepts "1.230" GBP and
 * refuses "1.234"; the fast path never accepts what it would refuse). Pages
 * of the mapping already read are given back (MADV_DONTNEED every 32 MiB), so
 * the file does not count twice against peak RSS once its strings are copied.
 *
 * Rejected designs. stdio/fgets (a copy per line and a lock per call); a
 * general CSV library (none is strict in the way finance needs, and each
 * allocates per field); strtoll/strtod for amounts (locale, leading blanks,
 * "+", and doubles).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/money.h"
#include "recon/recon_internal.h"

#define CSV_COLUMNS_MAX 64
#define CSV_SCRATCH 65536
#define CSV_DROP_EVERY (32u << 20)

enum settlement_col {
    S_RECORD,
    S_GATEWAY,
    S_BATCH_ID,
    S_LINE_NO,
    S_KIND,
    S_GATEWAY_REF,
    S_MERCHANT_REF,
    S_AMOUNT,
    S_FEE,
    S_NET,
    S_CURRENCY,
    S_VALUE_DATE,
    S_SETTLED_DATE,
    S_COUNT
};
static const char *const settlement_cols[S_COUNT] = {
    "record", "gateway", "batch_id", "line_no",  "kind",       "gateway_ref", "merchant_ref",
    "amount", "fee",     "net",      "currency", "value_date", "settled_date"};
static const unsigned char settlement_required[S_COUNT] = {0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1};

enum ledger_col {
    L_ERP,
    L_RECORD_ID,
    L_KIND,
    L_GATEWAY_REF,
    L_REFERENCE,
    L_AMOUNT,
    L_CURRENCY,
    L_DATE,
    L_COUNT
};
static const char *const ledger_cols[L_COUNT] = {
    "erp", "record_id", "kind", "gateway_ref", "reference", "amount", "currency", "date"};
static const unsigned char ledger_required[L_COUNT] = {0, 1, 1, 0, 0, 1, 1, 1};

struct csv {
    const char *p, *end; /* cursor, end of data */
    uint32_t line;       /* line number of the record just read (1-based) */
    uint32_t next_line;  /* line number of the next record */
    struct pb__recon_span f[CSV_COLUMNS_MAX];
    unsigned nf;
    int truncated; /* the record ended at the end of the data without a newline */
    char *scratch; /* CSV_SCRATCH bytes for unescaped quoted fields */
};

/* Skip to just after the next newline (error recovery). */
static void csv_skip_line(struct csv *c, const char *from)
{
    const char *nl = memchr(from, '\n', (size_t)(c->end - from));
    c->p = nl ? nl + 1 : c->end;
}

/* The slow path: a record with quotes, character by character. */
static int csv_quoted(struct csv *c, const char *start, char *why, size_t why_len)
{
    const char *q = start;
    char *out = c->scratch, *limit = c->scratch + CSV_SCRATCH;
    uint32_t newlines = 0;
    c->nf = 0;
    c->truncated = 0;
    for (;;) {
        char *fstart = out;
        if (c->nf >= CSV_COLUMNS_MAX) {
            snprintf(why, why_len, "more than %d columns", CSV_COLUMNS_MAX);
            goto bad;
        }
        if (q < c->end && *q == '"') {
            q++;
            for (;;) {
                if (q >= c->end) {
                    snprintf(why, why_len,
                             "a quoted field is not closed before the end of the "
                             "file");
                    c->truncated = 1;
                    goto bad;
                }
                if (*q == '"') {
                    if (q + 1 < c->end && q[1] == '"') {
                        if (out >= limit)
                            goto too_long;
                        *out++ = '"';
                        q += 2;
                        continue;
                    }
                    q++;
                    break;
                }
                if (*q == '\n')
                    newlines++;
                if (out >= limit)
                    goto too_long;
                *out++ = *q++;
            }
            if (q < c->end && *q == '\r' && q + 1 < c->end && q[1] == '\n')
                q++;
            if (q < c->end && *q != ',' && *q != '\n') {
                snprintf(why, why_len, "text after the closing quote of column %u", c->nf + 1);
                goto bad;
            }
        } else {
            while (q < c->end && *q != ',' && *q != '\n') {
                if (*q == '"') {
                    snprintf(why, why_len, "a quote inside unquoted column %u", c->nf + 1);
                    goto bad;
                }
                if (out >= limit)
                    goto too_long;
                *out++ = *q++;
            }
            if (out > fstart && out[-1] == '\r' && (q >= c->end || *q == '\n'))
                out--;
        }
        c->f[c->nf].p = fstart;
        c->f[c->nf].n = (size_t)(out - fstart);
        c->nf++;
        if (q >= c->end) {
            c->truncated = 1;
            c->p = c->end;
            break;
        }
        if (*q == ',') {
            q++;
            continue;
        }
        c->p = q + 1; /* *q == '\n' */
        break;
    }
    c->next_line = c->line + 1 + newlines;
    return 1;
too_long:
    snprintf(why, why_len, "the line is longer than %d bytes", CSV_SCRATCH);
bad:
    csv_skip_line(c, start);
    c->next_line = c->line + 1;
    return -1;
}

/* Read the next record: 1 (fields in c->f), 0 at the end, -1 malformed (why
 * says how; the scanner has moved past it). */
static int csv_next(struct csv *c, char *why, size_t why_len)
{
    for (;;) {
        const char *start = c->p, *fs, *q, *e;
        c->line = c->next_line;
        if (start >= c->end)
            return 0;
        c->nf = 0;
        fs = start;
        for (q = start; q < c->end; q++) {
            char ch = *q;
            if (ch == ',') {
                if (c->nf + 1 >= CSV_COLUMNS_MAX) {
                    snprintf(why, why_len, "more than %d columns", CSV_COLUMNS_MAX);
                    csv_skip_line(c, start);
                    c->next_line = c->line + 1;
                    return -1;
                }
                c->f[c->nf].p = fs;
                c->f[c->nf].n = (size_t)(q - fs);
                c->nf++;
                fs = q + 1;
            } else if (ch == '\n') {
                break;
            } else if (ch == '"') {
                return csv_quoted(c, start, why, why_len);
            }
        }
        c->truncated = q >= c->end;
        c->p = c->truncated ? c->end : q + 1;
        c->next_line = c->line + 1;
        e = q;
        if (e > fs && e[-1] == '\r')
            e--;
        if (c->nf == 0 && e == fs)
            continue; /* a blank line */
        c->f[c->nf].p = fs;
        c->f[c->nf].n = (size_t)(e - fs);
        c->nf++;
        return 1;
    }
}

/* ---- fields ----------------------------------------------------------------------- */

/* The value for a message: at most 40 bytes, control characters as '?'. */
static const char *show(struct pb__recon_span s, char out[48])
{
    size_t n = s.n > 40 ? 40 : s.n, i;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        out[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (s.n > 40) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

static int span_is(struct pb__recon_span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

/* Amount in minor units. Returns 0, or -1 with why set. */
static int parse_amount(const struct pb_recon_run *run, struct pb__recon_span s, int cur,
                        int64_t *out, char *why, size_t why_len)
{
    const struct pb__recon_currency *c = &run->currencies[cur];
    size_t i = 0, int_len, frac = 0;
    uint64_t v = 0;
    int neg = 0;
    char buf[64], shown[48];
    struct pb_err e;

    if (i < s.n && s.p[i] == '-') {
        neg = 1;
        i++;
    }
    while (i < s.n && (unsigned)(s.p[i] - '0') < 10) {
        v = v * 10 + (unsigned)(s.p[i] - '0');
        i++;
        if (i - (size_t)neg > 14)
            goto slow;
    }
    int_len = i - (size_t)neg;
    if (int_len == 0)
        goto slow;
    if (i < s.n) {
        if (s.p[i] != '.')
            goto slow;
        i++;
        while (i < s.n && (unsigned)(s.p[i] - '0') < 10) {
            v = v * 10 + (unsigned)(s.p[i] - '0');
            i++;
            frac++;
        }
        if (i != s.n || frac != (size_t)c->exponent || frac == 0)
            goto slow;
    } else {
        for (int k = 0; k < c->exponent; k++)
            v *= 10;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
slow:
    if (s.n == 0) {
        snprintf(why, why_len, "column amount: empty");
        return -1;
    }
    if (s.n >= sizeof(buf)) {
        snprintf(why, why_len, "column amount: \"%s\" is too long for an amount", show(s, shown));
        return -1;
    }
    memcpy(buf, s.p, s.n);
    buf[s.n] = '\0';
    if (pb_money_parse_decimal(buf, c->code, out, &e) != PB_OK) {
        snprintf(why, why_len, "%s", e.msg);
        return -1;
    }
    return 0;
}

static int parse_uint(struct pb__recon_span s, uint32_t *out)
{
    uint64_t v = 0;
    if (s.n == 0 || s.n > 9)
        return -1;
    for (size_t i = 0; i < s.n; i++) {
        unsigned d = (unsigned)(s.p[i] - '0');
        if (d > 9)
            return -1;
        v = v * 10 + d;
    }
    *out = (uint32_t)v;
    return 0;
}

static int line_kind_of(struct pb__recon_span s)
{
    for (int k = 0; k < PB_RECON_LINE_KIND_COUNT; k++)
        if (span_is(s, pb_recon_line_kind_name((unsigned)k)))
            return k;
    return -1;
}

static int record_kind_of(struct pb__recon_span s)
{
    for (int k = 0; k < PB_RECON_RECORD_KIND_COUNT; k++)
        if (span_is(s, pb_recon_record_kind_name((unsigned)k)))
            return k;
    return -1;
}

/* ---- the loaders ---------------------------------------------------------------------- */

_Static_assert((int)S_COUNT >= (int)L_COUNT, "loader.col must fit both layouts");

struct loader {
    struct pb_recon_run *run;
    enum pb_recon_side side;
    struct csv c;
    int col[S_COUNT]; /* field -> column, -1 absent (S_COUNT >= L_COUNT) */
    unsigned ncols;
    char why[PB_ERR_MSG_MAX];
};

#define FIELD(ld, k) ((ld)->col[k] >= 0 ? (ld)->c.f[(ld)->col[k]] : empty_span)
static const struct pb__recon_span empty_span = {"", 0};

static void problem(struct loader *ld, enum pb_recon_problem_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(struct loader *ld, enum pb_recon_problem_code code, const char *fmt, ...)
{
    char msg[PB_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pb__recon_problem(ld->run, ld->side, ld->c.line, code, "%s", msg);
}

static int field_currency(struct loader *ld, int k)
{
    struct pb__recon_span s = FIELD(ld, k);
    int cur = pb__recon_currency_index(ld->run, s.p, s.n);
    char shown[48];
    if (cur < 0)
        problem(ld, PB_RECON_PROBLEM_CURRENCY,
                "column currency: \"%s\" is not an ISO 4217 "
                "currency code",
                show(s, shown));
    return cur;
}

static int field_amount(struct loader *ld, int k, const char *name, int cur, int64_t *out)
{
    if (parse_amount(ld->run, FIELD(ld, k), cur, out, ld->why, sizeof(ld->why))) {
        if (strncmp(ld->why, "column amount: ", 15) == 0)
            problem(ld, PB_RECON_PROBLEM_AMOUNT, "column %s: %s", name, ld->why + 15);
        else
            problem(ld, PB_RECON_PROBLEM_AMOUNT, "column %s: %s", name, ld->why);
        return -1;
    }
    return 0;
}

static int field_date(struct loader *ld, int k, const char *name, int32_t *out)
{
    struct pb__recon_span s = FIELD(ld, k);
    char shown[48];
    if (pb_recon_date_parse(s.p, s.n, out)) {
        problem(ld, PB_RECON_PROBLEM_DATE, "column %s: \"%s\" is not a date (YYYY-MM-DD)", name,
                show(s, shown));
        return -1;
    }
    return 0;
}

/* A push failed: a problem, or (for a limit) the end of the file. */
static enum pb_rc push_failed(struct loader *ld, enum pb_rc rc, struct pb_err *e, uint32_t first,
                              struct pb_err *err)
{
    if (rc == PB_ERR_TOOBIG || rc == PB_ERR_NOMEM) {
        problem(ld, PB_RECON_PROBLEM_LIMIT, "%s; the rest of the file is not loaded", e->msg);
        return pb_err_set(err, rc, "%s file, line %u: %s", ld->side ? "ledger" : "settlement",
                          ld->c.line, e->msg);
    }
    if (rc == PB_ERR_EXISTS)
        problem(ld, PB_RECON_PROBLEM_DUPLICATE_BATCH, "%s (the first is on line %u); ignored",
                e->msg, first);
    else
        problem(ld, rc == PB_ERR_CURRENCY ? PB_RECON_PROBLEM_CURRENCY : PB_RECON_PROBLEM_FIELD,
                "%s", e->msg);
    return PB_OK;
}

static enum pb_rc settlement_row(struct loader *ld, struct pb_err *err)
{
    struct pb__recon_span rec = FIELD(ld, S_RECORD), s;
    struct pb_err e;
    enum pb_rc rc;
    char shown[48];
    int cur, is_batch = 0;
    uint32_t first = 0;

    if (ld->col[S_RECORD] >= 0 && !span_is(rec, "line")) {
        if (!span_is(rec, "batch")) {
            problem(ld, PB_RECON_PROBLEM_FIELD,
                    "column record: \"%s\" is neither \"line\" nor "
                    "\"batch\"",
                    show(rec, shown));
            return PB_OK;
        }
        is_batch = 1;
    }
    if ((cur = field_currency(ld, S_CURRENCY)) < 0)
        return PB_OK;
    if (is_batch) {
        struct pb__recon_batch_fields b;
        memset(&b, 0, sizeof(b));
        b.gateway = FIELD(ld, S_GATEWAY);
        b.batch_id = FIELD(ld, S_BATCH_ID);
        b.currency = cur;
        b.source_line = ld->c.line;
        if (ld->col[S_NET] < 0) {
            problem(ld, PB_RECON_PROBLEM_FIELD, "a batch row needs a net column");
            return PB_OK;
        }
        if (field_amount(ld, S_AMOUNT, "amount", cur, &b.gross) ||
            field_amount(ld, S_FEE, "fee", cur, &b.fees) ||
            field_amount(ld, S_NET, "net", cur, &b.net) ||
            field_date(ld, S_VALUE_DATE, "value_date", &b.date))
            return PB_OK;
        rc = pb__recon_push_batch(ld->run, &b, &first, &e);
        return rc ? push_failed(ld, rc, &e, first, err) : PB_OK;
    } else {
        struct pb__recon_line_fields l;
        memset(&l, 0, sizeof(l));
        l.gateway = FIELD(ld, S_GATEWAY);
        l.batch_id = FIELD(ld, S_BATCH_ID);
        l.gateway_ref = FIELD(ld, S_GATEWAY_REF);
        l.merchant_ref = FIELD(ld, S_MERCHANT_REF);
        l.currency = cur;
        l.source_line = ld->c.line;
        s = FIELD(ld, S_KIND);
        if ((l.kind = line_kind_of(s)) < 0) {
            problem(ld, PB_RECON_PROBLEM_FIELD,
                    "column kind: \"%s\" is not sale, refund, "
                    "chargeback, fee or adjustment",
                    show(s, shown));
            return PB_OK;
        }
        if (field_amount(ld, S_AMOUNT, "amount", cur, &l.amount))
            return PB_OK;
        if (FIELD(ld, S_FEE).n == 0)
            l.fee = 0;
        else if (field_amount(ld, S_FEE, "fee", cur, &l.fee))
            return PB_OK;
        if (field_date(ld, S_VALUE_DATE, "value_date", &l.value_date) ||
            field_date(ld, S_SETTLED_DATE, "settled_date", &l.settled_date))
            return PB_OK;
        s = FIELD(ld, S_LINE_NO);
        if (s.n && parse_uint(s, &l.line_no)) {
            problem(ld, PB_RECON_PROBLEM_FIELD, "column line_no: \"%s\" is not a number",
                    show(s, shown));
            return PB_OK;
        }
        rc = pb__recon_push_line(ld->run, &l, &e);
        return rc ? push_failed(ld, rc, &e, 0, err) : PB_OK;
    }
}

static enum pb_rc ledger_row(struct loader *ld, struct pb_err *err)
{
    struct pb__recon_record_fields r;
    struct pb__recon_span s;
    struct pb_err e;
    enum pb_rc rc;
    char shown[48];
    int cur;

    memset(&r, 0, sizeof(r));
    if ((cur = field_currency(ld, L_CURRENCY)) < 0)
        return PB_OK;
    r.currency = cur;
    r.erp = FIELD(ld, L_ERP);
    r.record_id = FIELD(ld, L_RECORD_ID);
    r.gateway_ref = FIELD(ld, L_GATEWAY_REF);
    r.reference = FIELD(ld, L_REFERENCE);
    r.source_line = ld->c.line;
    s = FIELD(ld, L_KIND);
    if ((r.kind = record_kind_of(s)) < 0) {
        problem(ld, PB_RECON_PROBLEM_FIELD,
                "column kind: \"%s\" is not payment, refund, "
                "credit_note or journal",
                show(s, shown));
        return PB_OK;
    }
    if (field_amount(ld, L_AMOUNT, "amount", cur, &r.amount) ||
        field_date(ld, L_DATE, "date", &r.date))
        return PB_OK;
    rc = pb__recon_push_record(ld->run, &r, &e);
    return rc ? push_failed(ld, rc, &e, 0, err) : PB_OK;
}

static enum pb_rc read_header(struct loader *ld, struct pb_err *err)
{
    const char *const *names = ld->side == PB_RECON_SETTLEMENT ? settlement_cols : ledger_cols;
    const unsigned char *required =
        ld->side == PB_RECON_SETTLEMENT ? settlement_required : ledger_required;
    int count = ld->side == PB_RECON_SETTLEMENT ? S_COUNT : L_COUNT;
    const char *what = ld->side == PB_RECON_SETTLEMENT ? "settlement file" : "ledger file";
    char shown[48];
    int r;

    if (ld->c.end - ld->c.p >= 3 && memcmp(ld->c.p, "\xEF\xBB\xBF", 3) == 0)
        ld->c.p += 3;
    r = csv_next(&ld->c, ld->why, sizeof(ld->why));
    if (r == 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s: empty (no header line)", what);
    if (r < 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s: the header line is malformed: %s", what,
                          ld->why);
    for (int k = 0; k < count; k++)
        ld->col[k] = -1;
    for (unsigned i = 0; i < ld->c.nf; i++) {
        for (int k = 0; k < count; k++) {
            if (!span_is(ld->c.f[i], names[k]))
                continue;
            if (ld->col[k] >= 0)
                return pb_err_set(err, PB_ERR_INVALID,
                                  "%s: the header names column \"%s\" "
                                  "twice",
                                  what, names[k]);
            ld->col[k] = (int)i;
        }
    }
    for (int k = 0; k < count; k++)
        if (required[k] && ld->col[k] < 0)
            return pb_err_set(err, PB_ERR_INVALID,
                              "%s: the header lacks column \"%s\" (it "
                              "starts \"%s\")",
                              what, names[k], show(ld->c.f[0], shown));
    ld->ncols = ld->c.nf;
    return PB_OK;
}

static enum pb_rc load_csv(struct pb_recon_run *run, enum pb_recon_side side, const char *data,
                           size_t len, int drop_pages, struct pb_err *err)
{
    struct loader *ld;
    enum pb_rc rc = PB_OK;
    size_t dropped = 0;
    long page = sysconf(_SC_PAGESIZE);

    if (!run || run->magic != PB__RECON_MAGIC)
        return pb_err_set(err, PB_ERR_INTERNAL, "not a reconciliation run");
    if (run->matched)
        return pb_err_set(err, PB_ERR_INVALID, "the run has been matched; create a new run");
    ld = calloc(1, sizeof(*ld));
    if (!ld)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    ld->c.scratch = malloc(CSV_SCRATCH);
    if (!ld->c.scratch) {
        free(ld);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    ld->run = run;
    ld->side = side;
    ld->c.p = data ? data : "";
    ld->c.end = ld->c.p + (data ? len : 0);
    ld->c.next_line = 1;
    rc = read_header(ld, err);
    while (rc == PB_OK) {
        int r = csv_next(&ld->c, ld->why, sizeof(ld->why));
        if (r == 0)
            break;
        if (r < 0) {
            problem(ld, ld->c.truncated ? PB_RECON_PROBLEM_TRUNCATED : PB_RECON_PROBLEM_FIELD, "%s",
                    ld->why);
        } else if (ld->c.nf != ld->ncols) {
            if (ld->c.truncated && ld->c.nf < ld->ncols)
                problem(ld, PB_RECON_PROBLEM_TRUNCATED,
                        "the file ends in the middle of this "
                        "line (%u of %u columns)",
                        ld->c.nf, ld->ncols);
            else
                problem(ld, PB_RECON_PROBLEM_COLUMN_COUNT, "%u columns, the header has %u",
                        ld->c.nf, ld->ncols);
        } else {
            rc = side == PB_RECON_SETTLEMENT ? settlement_row(ld, err) : ledger_row(ld, err);
        }
        if (drop_pages && (size_t)(ld->c.p - data) >= dropped + CSV_DROP_EVERY) {
            size_t upto = (size_t)(ld->c.p - data) / (size_t)page * (size_t)page;
            madvise((char *)data + dropped, upto - dropped, MADV_DONTNEED);
            dropped = upto;
        }
    }
    free(ld->c.scratch);
    free(ld);
    return rc;
}

enum pb_rc pb_recon_load_settlement_csv(struct pb_recon_run *run, const char *data, size_t len,
                                        struct pb_err *err)
{
    return load_csv(run, PB_RECON_SETTLEMENT, data, len, 0, err);
}

enum pb_rc pb_recon_load_ledger_csv(struct pb_recon_run *run, const char *data, size_t len,
                                    struct pb_err *err)
{
    return load_csv(run, PB_RECON_LEDGER, data, len, 0, err);
}

/* ---- files ---------------------------------------------------------------------------- */

struct load_job {
    struct pb_recon_run *run;
    enum pb_recon_side side;
    const char *path;
    enum pb_rc rc;
    struct pb_err err;
};

static enum pb_rc load_path(struct pb_recon_run *run, enum pb_recon_side side, const char *path,
                            struct pb_err *err)
{
    const char *what = side == PB_RECON_SETTLEMENT ? "settlement file" : "ledger file";
    struct stat st;
    void *map = NULL;
    enum pb_rc rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pb_err_set(err, PB_ERR_IO, "%s %s: %s", what, path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = pb_err_set(err, PB_ERR_IO, "%s %s: %s", what, path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pb_err_set(err, PB_ERR_IO, "%s %s: not a regular file", what, path);
    }
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            rc = pb_err_set(err, PB_ERR_IO, "%s %s: mmap: %s", what, path, strerror(errno));
            close(fd);
            return rc;
        }
        madvise(map, (size_t)st.st_size, MADV_SEQUENTIAL);
    }
    close(fd);
    rc = load_csv(run, side, map, (size_t)st.st_size, 1, err);
    if (map)
        munmap(map, (size_t)st.st_size);
    if (rc)
        pb_err_prefix(err, "%s", path);
    return rc;
}

static void *load_thread(void *arg)
{
    struct load_job *job = arg;
    job->rc = load_path(job->run, job->side, job->path, &job->err);
    return NULL;
}

enum pb_rc pb_recon_load_files(struct pb_recon_run *run, const char *settlement_path,
                               const char *ledger_path, struct pb_err *err)
{
    struct load_job s = {run, PB_RECON_SETTLEMENT, settlement_path, PB_OK, {0}};
    struct load_job l = {run, PB_RECON_LEDGER, ledger_path, PB_OK, {0}};
    pthread_t tid;
    int threaded = 0;

    if (!run || run->magic != PB__RECON_MAGIC)
        return pb_err_set(err, PB_ERR_INTERNAL, "not a reconciliation run");
    if (run->cfg.threads >= 2 && pthread_create(&tid, NULL, load_thread, &s) == 0)
        threaded = 1;
    else
        load_thread(&s);
    load_thread(&l);
    if (threaded)
        pthread_join(tid, NULL);
    if (s.rc) {
        if (err)
            *err = s.err;
        return s.rc;
    }
    if (l.rc) {
        if (err)
            *err = l.err;
        return l.rc;
    }
    return PB_OK;
}
