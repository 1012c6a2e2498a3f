/*
 * connectors/settlement/settlement.c: the settlement set (settlement.h): its
 * string arena, the batch and line arrays, the (gateway, batch id) hash, the
 * bad-line list, loads and the per-load batch checks, and the date helpers
 * every parser shares.
 *
 * What it owns. Everything a set holds: arena blocks (a singly linked list,
 * freed in one walk), the batch and line arrays (realloc'd by doubling up to
 * their maxima), the hash table (uint32 batch indexes + 1, 0 = empty, linear
 * probing, at most half full) and the bad list.
 *
 * Invariants.
 *   - Every batch is in the hash exactly once, under (gateway, batch_id).
 *   - A batch's lines_gross/lines_fees and line_count are the sums over the
 *     lines that point at it; they are updated only by
 *     pb__settlement_line_add(), which refuses a line whose addition would
 *     overflow rather than wrap.
 *   - gross - fees == net for a batch that is not DECLARED (its numbers are
 *     the line sums); a DECLARED batch may disagree, and that is reported.
 *
 * Locking: none; see settlement.h (one writer).
 *
 * Rejected designs.
 *   - A tree or sorted array for the batch index: every CSV row looks its
 *     batch up, and a hash keeps a million-row file linear.
 *   - timegm() for dates: it needs a struct tm round trip and the TZ
 *     machinery; days_from_civil() is exact arithmetic on integers.
 */
#include "connectors/settlement/settlement.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/money.h"

#define SET_MAGIC 0x53544c53u      /* "STLS" */
#define ARENA_BLOCK (256u * 1024u) /* default block size; big strings get their own */
#define REASON_MAX 400             /* longest bad-line reason */

struct arena_block {
    struct arena_block *next;
    size_t used, size;
    char data[];
};

struct pb_settlement_set {
    unsigned magic;            /* SET_MAGIC while alive */
    struct arena_block *arena; /* newest first */
    size_t arena_total;        /* bytes allocated in blocks */
    struct pb_settlement_batch *batches;
    size_t n_batches, cap_batches;
    struct pb_settlement_line *lines;
    size_t n_lines, cap_lines;
    uint32_t *hash;  /* batch index + 1, 0 = empty */
    size_t hash_cap; /* power of two */
    struct pb_settlement_bad *bad;
    size_t n_bad, cap_bad, bad_dropped;
    uint32_t load;     /* the current (last begun) load; 0 = none yet */
    int continue_next; /* pb_settlement_continue() was called */
};

static const char *const kind_names[PB_SETTLEMENT_KIND_COUNT] = {"sale", "refund", "chargeback",
                                                                 "fee", "adjustment"};

/* ---- the set ---------------------------------------------------------------- */

struct pb_settlement_set *pb_settlement_set_new(void)
{
    struct pb_settlement_set *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    set->magic = SET_MAGIC;
    return set;
}

void pb_settlement_set_free(struct pb_settlement_set *set)
{
    struct arena_block *b, *next;
    if (!set)
        return;
    if (set->magic != SET_MAGIC)
        abort(); /* a use after free or a wrong pointer: a bug, not input */
    for (b = set->arena; b; b = next) {
        next = b->next;
        free(b);
    }
    free(set->batches);
    free(set->lines);
    free(set->hash);
    free(set->bad);
    set->magic = 0;
    free(set);
}

size_t pb_settlement_batch_count(const struct pb_settlement_set *set)
{
    return set ? set->n_batches : 0;
}

size_t pb_settlement_line_count(const struct pb_settlement_set *set)
{
    return set ? set->n_lines : 0;
}

size_t pb_settlement_bad_count(const struct pb_settlement_set *set)
{
    return set ? set->n_bad : 0;
}

size_t pb_settlement_bad_dropped(const struct pb_settlement_set *set)
{
    return set ? set->bad_dropped : 0;
}

const struct pb_settlement_batch *pb_settlement_batch_at(const struct pb_settlement_set *set,
                                                         size_t i)
{
    return set && i < set->n_batches ? &set->batches[i] : NULL;
}

const struct pb_settlement_line *pb_settlement_line_at(const struct pb_settlement_set *set,
                                                       size_t i)
{
    return set && i < set->n_lines ? &set->lines[i] : NULL;
}

const struct pb_settlement_bad *pb_settlement_bad_at(const struct pb_settlement_set *set, size_t i)
{
    return set && i < set->n_bad ? &set->bad[i] : NULL;
}

void pb_settlement_continue(struct pb_settlement_set *set)
{
    if (set)
        set->continue_next = 1;
}

uint32_t pb__settlement_load_begin(struct pb_settlement_set *set)
{
    if (set->continue_next && set->load) {
        set->continue_next = 0;
        return set->load;
    }
    set->continue_next = 0;
    return ++set->load;
}

const char *pb_settlement_kind_name(enum pb_settlement_kind kind)
{
    return (unsigned)kind < PB_SETTLEMENT_KIND_COUNT ? kind_names[kind] : "unknown";
}

int pb_settlement_kind_parse(const char *text, size_t len)
{
    for (int k = 0; k < PB_SETTLEMENT_KIND_COUNT; k++)
        if (strlen(kind_names[k]) == len && strncasecmp(kind_names[k], text, len) == 0)
            return k;
    return -1;
}

/* ---- the arena -------------------------------------------------------------- */

static void *arena_alloc(struct pb_settlement_set *set, size_t n)
{
    struct arena_block *b = set->arena;
    if (!b || b->size - b->used < n) {
        size_t size = n > ARENA_BLOCK / 4 ? n : ARENA_BLOCK;
        if (set->arena_total + size > PB_SETTLEMENT_ARENA_MAX)
            return NULL;
        b = malloc(sizeof *b + size);
        if (!b)
            return NULL;
        b->size = size;
        b->used = 0;
        if (size == n && set->arena) {
            /* a big string: keep filling the current block afterwards */
            b->next = set->arena->next;
            set->arena->next = b;
        } else {
            b->next = set->arena;
            set->arena = b;
        }
        set->arena_total += size;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

const char *pb__settlement_strdup(struct pb_settlement_set *set, const char *s, size_t len)
{
    char *p;
    if (len == 0)
        return "";
    p = arena_alloc(set, len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

/* ---- the bad list ------------------------------------------------------------- */

void pb_settlement_bad_add(struct pb_settlement_set *set, const char *source, uint32_t line,
                           const char *fmt, ...)
{
    char reason[REASON_MAX];
    va_list ap;
    struct pb_settlement_bad *b;

    if (!set)
        return;
    if (set->n_bad >= PB_SETTLEMENT_MAX_BAD) {
        set->bad_dropped++;
        return;
    }
    if (set->n_bad == set->cap_bad) {
        size_t cap = set->cap_bad ? set->cap_bad * 2 : 16;
        if (cap > PB_SETTLEMENT_MAX_BAD)
            cap = PB_SETTLEMENT_MAX_BAD;
        b = realloc(set->bad, cap * sizeof *b);
        if (!b) {
            set->bad_dropped++;
            return;
        }
        set->bad = b;
        set->cap_bad = cap;
    }
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    /* a reason is one line of text: control characters from hostile input become '?' */
    for (char *p = reason; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    b = &set->bad[set->n_bad];
    b->source = pb__settlement_strdup(set, source ? source : "", source ? strlen(source) : 0);
    b->reason = pb__settlement_strdup(set, reason, strlen(reason));
    b->line = line;
    if (!b->source || !b->reason) {
        set->bad_dropped++;
        return;
    }
    set->n_bad++;
}

/* ---- batches ------------------------------------------------------------------ */

static uint64_t hash_key(const char *gateway, const char *id, size_t id_len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = gateway; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    for (size_t i = 0; i < id_len; i++)
        h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static int batch_is(const struct pb_settlement_batch *b, const char *gateway, const char *id,
                    size_t id_len)
{
    return strncmp(b->batch_id, id, id_len) == 0 && b->batch_id[id_len] == '\0' &&
           strcmp(b->gateway, gateway) == 0;
}

static long find(const struct pb_settlement_set *set, const char *gateway, const char *id,
                 size_t id_len)
{
    if (!set->hash_cap)
        return -1;
    size_t mask = set->hash_cap - 1;
    for (size_t i = hash_key(gateway, id, id_len) & mask;; i = (i + 1) & mask) {
        uint32_t slot = set->hash[i];
        if (!slot)
            return -1;
        if (batch_is(&set->batches[slot - 1], gateway, id, id_len))
            return (long)(slot - 1);
    }
}

long pb_settlement_batch_find(const struct pb_settlement_set *set, const char *gateway,
                              const char *batch_id)
{
    if (!set || !gateway || !batch_id)
        return -1;
    return find(set, gateway, batch_id, strlen(batch_id));
}

static void hash_insert(uint32_t *table, size_t cap, const struct pb_settlement_batch *b,
                        uint32_t index)
{
    size_t mask = cap - 1;
    size_t i = hash_key(b->gateway, b->batch_id, strlen(b->batch_id)) & mask;
    while (table[i])
        i = (i + 1) & mask;
    table[i] = index + 1;
}

static enum pb_rc hash_grow(struct pb_settlement_set *set, struct pb_err *err)
{
    size_t cap = set->hash_cap ? set->hash_cap * 2 : 64;
    uint32_t *table = calloc(cap, sizeof *table);
    if (!table)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory (batch index of %zu batches)",
                          set->n_batches);
    for (size_t i = 0; i < set->n_batches; i++)
        hash_insert(table, cap, &set->batches[i], (uint32_t)i);
    free(set->hash);
    set->hash = table;
    set->hash_cap = cap;
    return PB_OK;
}

enum pb_rc pb__settlement_batch_get(struct pb_settlement_set *set, uint32_t load,
                                    const struct pb__settlement_batch_in *in, uint32_t *index,
                                    struct pb_err *err)
{
    struct pb_settlement_batch *b;
    long found = find(set, in->gateway, in->batch_id, in->id_len);

    if (found >= 0) {
        b = &set->batches[found];
        if (b->load != load &&
            !((b->flags & PB_SETTLEMENT_BATCH_HEADER_ONLY) && !in->header_only)) {
            if (b->dup_reported_load != load) {
                b->dup_reported_load = load;
                pb_settlement_bad_add(set, in->source, in->source_line,
                                      "duplicate batch id %s: batch %s was already loaded from "
                                      "%s (line %u); its lines here are skipped",
                                      b->batch_id, b->batch_id, b->source, b->source_line);
            }
            return pb_err_set(err, PB_ERR_EXISTS, "duplicate batch id %s", b->batch_id);
        }
        if (strcmp(b->currency, in->currency) != 0) {
            pb_settlement_bad_add(set, in->source, in->source_line,
                                  "currency %s differs from batch %s's %s (a batch is paid out "
                                  "in one currency); the line is skipped",
                                  in->currency, b->batch_id, b->currency);
            return pb_err_set(err, PB_ERR_INVALID, "currency differs from the batch's");
        }
        if (b->load != load) {
            /* a header from a list, filled now by the load that brings its lines */
            b->load = load;
            b->flags &= ~PB_SETTLEMENT_BATCH_HEADER_ONLY;
            if (in->declared && !(b->flags & PB_SETTLEMENT_BATCH_DECLARED)) {
                b->flags |= PB_SETTLEMENT_BATCH_DECLARED;
                b->gross_minor = in->gross_minor;
                b->fees_minor = in->fees_minor;
                b->net_minor = in->net_minor;
            } else if (in->declared &&
                       (b->gross_minor != in->gross_minor || b->fees_minor != in->fees_minor ||
                        b->net_minor != in->net_minor)) {
                pb_settlement_bad_add(set, in->source, in->source_line,
                                      "batch %s: totals differ from the batch list (%s line %u)",
                                      b->batch_id, b->source, b->source_line);
            }
            if (in->declared_count != PB_SETTLEMENT_NO_COUNT)
                b->declared_count = in->declared_count;
            if (b->date == PB_SETTLEMENT_NO_DATE)
                b->date = in->date;
        } else if (b->date == PB_SETTLEMENT_NO_DATE) {
            b->date = in->date;
        }
        *index = (uint32_t)found;
        return PB_OK;
    }

    if (in->id_len == 0 || in->id_len > PB_SETTLEMENT_ID_MAX)
        return pb_err_set(err, PB_ERR_INVALID, "a batch id must be 1 to %d characters",
                          PB_SETTLEMENT_ID_MAX);
    if (set->n_batches >= PB_SETTLEMENT_MAX_BATCHES)
        return pb_err_set(err, PB_ERR_TOOBIG, "more than %u batches in one set",
                          PB_SETTLEMENT_MAX_BATCHES);
    if ((set->n_batches + 1) * 2 > set->hash_cap && hash_grow(set, err))
        return PB_ERR_NOMEM;
    if (set->n_batches == set->cap_batches) {
        size_t cap = set->cap_batches ? set->cap_batches * 2 : 16;
        if (cap > PB_SETTLEMENT_MAX_BATCHES)
            cap = PB_SETTLEMENT_MAX_BATCHES;
        b = realloc(set->batches, cap * sizeof *b);
        if (!b)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory (%zu batches)", set->n_batches);
        set->batches = b;
        set->cap_batches = cap;
    }
    b = &set->batches[set->n_batches];
    memset(b, 0, sizeof *b);
    b->gateway = pb__settlement_strdup(set, in->gateway, strlen(in->gateway));
    b->batch_id = pb__settlement_strdup(set, in->batch_id, in->id_len);
    b->source = pb__settlement_strdup(set, in->source, strlen(in->source));
    if (!b->gateway || !b->batch_id || !b->source)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory (settlement strings)");
    b->source_line = in->source_line;
    memcpy(b->currency, in->currency, 3);
    b->currency[3] = '\0';
    b->date = in->date;
    b->declared_count = in->declared_count;
    b->load = load;
    if (in->header_only)
        b->flags |= PB_SETTLEMENT_BATCH_HEADER_ONLY;
    if (in->declared) {
        b->flags |= PB_SETTLEMENT_BATCH_DECLARED;
        b->gross_minor = in->gross_minor;
        b->fees_minor = in->fees_minor;
        b->net_minor = in->net_minor;
    }
    hash_insert(set->hash, set->hash_cap, b, (uint32_t)set->n_batches);
    *index = (uint32_t)set->n_batches++;
    return PB_OK;
}

/* ---- lines -------------------------------------------------------------------- */

enum pb_rc pb__settlement_line_add(struct pb_settlement_set *set, uint32_t index,
                                   const struct pb__settlement_line_in *in, struct pb_err *err)
{
    struct pb_settlement_batch *b = NULL;
    struct pb_settlement_line *l;
    int64_t gross = 0, fees = 0, net = 0;

    if (index != PB_SETTLEMENT_NO_BATCH) {
        if (index >= set->n_batches)
            return pb_err_set(err, PB_ERR_INTERNAL, "no batch %u", index);
        b = &set->batches[index];
        gross = b->lines_gross_minor;
        fees = b->lines_fees_minor;
        if (in->kind == PB_SETTLEMENT_FEE) {
            /* a fee line's amount is negative: its size joins the fees */
            if (pb_money_sub(fees, in->amount_minor, &fees))
                return pb_err_set(err, PB_ERR_RANGE, "batch %s: the fees overflow 64 bits",
                                  b->batch_id);
        } else if (pb_money_add(gross, in->amount_minor, &gross)) {
            return pb_err_set(err, PB_ERR_RANGE, "batch %s: the gross overflows 64 bits",
                              b->batch_id);
        }
        if (pb_money_add(fees, in->fee_minor, &fees) || pb_money_sub(gross, fees, &net))
            return pb_err_set(err, PB_ERR_RANGE, "batch %s: the fees overflow 64 bits",
                              b->batch_id);
    }
    if (in->gateway_ref_len > PB_SETTLEMENT_ID_MAX || in->merchant_ref_len > PB_SETTLEMENT_ID_MAX)
        return pb_err_set(err, PB_ERR_INVALID, "a reference is longer than %d characters",
                          PB_SETTLEMENT_ID_MAX);
    if (set->n_lines >= PB_SETTLEMENT_MAX_LINES)
        return pb_err_set(err, PB_ERR_TOOBIG, "more than %u lines in one set",
                          PB_SETTLEMENT_MAX_LINES);
    if (set->n_lines == set->cap_lines) {
        size_t cap = set->cap_lines ? set->cap_lines * 2 : 256;
        if (cap > PB_SETTLEMENT_MAX_LINES)
            cap = PB_SETTLEMENT_MAX_LINES;
        l = realloc(set->lines, cap * sizeof *l);
        if (!l)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory (%zu lines)", set->n_lines);
        set->lines = l;
        set->cap_lines = cap;
    }
    l = &set->lines[set->n_lines];
    l->gateway_ref = pb__settlement_strdup(set, in->gateway_ref, in->gateway_ref_len);
    l->merchant_ref = pb__settlement_strdup(set, in->merchant_ref, in->merchant_ref_len);
    if (!l->gateway_ref || !l->merchant_ref)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory (settlement strings)");
    l->batch_id = b ? b->batch_id : "";
    l->batch = index;
    l->line_no = in->line_no;
    l->kind = (uint8_t)in->kind;
    l->amount_minor = in->amount_minor;
    l->fee_minor = in->fee_minor;
    memcpy(l->currency, in->currency, 3);
    l->currency[3] = '\0';
    l->value_date = in->value_date;
    l->settled_date = in->settled_date;
    set->n_lines++;
    if (b) {
        b->lines_gross_minor = gross;
        b->lines_fees_minor = fees;
        b->line_count++;
        if (!(b->flags & PB_SETTLEMENT_BATCH_DECLARED)) {
            b->gross_minor = gross;
            b->fees_minor = fees;
            b->net_minor = net;
        }
    }
    return PB_OK;
}

/* ---- checks at the end of a load ------------------------------------------------- */

void pb__settlement_load_end(struct pb_settlement_set *set, uint32_t load)
{
    char a[PB_MONEY_DECIMAL_MAX], b2[PB_MONEY_DECIMAL_MAX];
    for (size_t i = 0; i < set->n_batches; i++) {
        struct pb_settlement_batch *b = &set->batches[i];
        int64_t net;
        if (b->load != load || !(b->flags & PB_SETTLEMENT_BATCH_DECLARED))
            continue;
        if (pb_money_sub(b->gross_minor, b->fees_minor, &net) || net != b->net_minor) {
            pb_money_format_decimal(b->net_minor, b->currency, a, sizeof a, NULL);
            pb_settlement_bad_add(set, b->source, b->source_line,
                                  "batch %s: gross - fees is not net (net %s %s stated)",
                                  b->batch_id, a, b->currency);
        }
        if (b->flags & PB_SETTLEMENT_BATCH_HEADER_ONLY)
            continue; /* a list's entry: its lines come in a later load */
        if (b->declared_count != PB_SETTLEMENT_NO_COUNT && b->declared_count != b->line_count)
            pb_settlement_bad_add(set, b->source, b->source_line,
                                  "batch %s declares %u transactions but %u were read (a "
                                  "truncated or incomplete report?)",
                                  b->batch_id, b->declared_count, b->line_count);
        else if (b->line_count &&
                 (b->gross_minor != b->lines_gross_minor || b->fees_minor != b->lines_fees_minor)) {
            pb_money_format_decimal(b->gross_minor, b->currency, a, sizeof a, NULL);
            pb_money_format_decimal(b->lines_gross_minor, b->currency, b2, sizeof b2, NULL);
            pb_settlement_bad_add(set, b->source, b->source_line,
                                  "batch %s: the stated totals differ from its lines (gross %s "
                                  "stated, %s summed)",
                                  b->batch_id, a, b2);
        }
    }
}

/* ---- dates ---------------------------------------------------------------------- */

int32_t pb_settlement_days_from_civil(int year, unsigned month, unsigned day)
{
    /* Howard Hinnant's days_from_civil, exact for the proleptic Gregorian calendar */
    int y = year - (month <= 2);
    int era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return (int32_t)(era * 146097 + (int)doe - 719468);
}

int pb_settlement_date_valid(int year, unsigned month, unsigned day)
{
    static const unsigned char mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned max;
    if (year < 1 || year > 9999 || month < 1 || month > 12 || day < 1)
        return 0;
    max = mdays[month - 1];
    if (month == 2 && ((year % 4 == 0 && year % 100 != 0) || year % 400 == 0))
        max = 29;
    return day <= max;
}

void pb_settlement_date_format(int32_t days, char *buf, size_t len)
{
    if (!len)
        return;
    if (days == PB_SETTLEMENT_NO_DATE) {
        buf[0] = '\0';
        return;
    }
    /* civil_from_days */
    int z = days + 719468;
    int era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int y = (int)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    snprintf(buf, len, "%04d-%02u-%02u", y + (m <= 2), m, d);
}

enum pb_rc pb_settlement_date_parse(const char *text, size_t len, const char *format, int32_t *days,
                                    struct pb_err *err)
{
    char buf[64];
    struct tm tm;
    const char *end;

    if (len == 0 || len >= sizeof buf)
        return pb_err_set(err, PB_ERR_INVALID, "not a date in the format %s", format);
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (memchr(buf, '\0', len))
        return pb_err_set(err, PB_ERR_INVALID, "not a date in the format %s", format);
    memset(&tm, 0, sizeof tm);
    tm.tm_mday = 0; /* a format without %d must not pass unnoticed */
    end = strptime(buf, format, &tm);
    if (!end || *end)
        return pb_err_set(err, PB_ERR_INVALID, "not a date in the format %s", format);
    if (!pb_settlement_date_valid(tm.tm_year + 1900, (unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday))
        return pb_err_set(err, PB_ERR_INVALID, "not a real date (format %s)", format);
    *days = pb_settlement_days_from_civil(tm.tm_year + 1900, (unsigned)tm.tm_mon + 1,
                                          (unsigned)tm.tm_mday);
    return PB_OK;
}
