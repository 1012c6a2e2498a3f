/*
 * bench/recon/gen.c: pb_recon_gen, realistic reconciliation data of any size.
 *
 *   pb_recon_gen --lines N [--records M] [--seed S] --out DIR
 *
 * writes DIR/settlement.csv (batch header rows and their lines), DIR/ledger.csv
 * (the ERP side) and DIR/manifest.json (what was planted, and the exact answer
 * the reference rule must find). N settlement lines exactly; M ledger records
 * (default N): the ERP export is padded with payments too recent to have
 * settled, which is what a real export holds at month end.
 *
 * What it plants. Orders are drawn one after another, each with a currency
 * (GBP EUR USD JPY, see bench_params.h), a day in a 28-day month, an amount
 * and a fate: mostly a sale posted by paybridge with its transactionId, and at
 * about 1% each the cases every rule and break class exists for: amounts that
 * differ, sales missing in the ERP, payments never settled, duplicates on each
 * side, fees off contract, late value dates, unbalanced batches; plus split
 * captures (rule 5), refunds netted in their batch (rule 6), payments booked in
 * GBP at the rate table's rate (rule 7), manual postings without references
 * and chargeback fee journals (rules 2, 3), payout deposits (rule 4), refunds
 * and chargebacks settled days later (rule 1). Lines are grouped into batches
 * per gateway, currency and day (at most 5000 lines a batch), each with a
 * header row whose gross, fees and net add up, except the unbalanced ones.
 *
 * The exact answer. Every pair that the reference rule must find with equal
 * amounts is counted, and the generator remembers the file line of both sides,
 * so the manifest holds both the count and a fingerprint (the sum over pairs
 * of settlement line << 32 + ledger line, mod 2^64) that the engine and the
 * pandas baseline must reproduce. Other counts in the manifest are "planted":
 * what was seeded, which the engine should find give or take a coincidence
 * (two unrelated postings of the same amount in the same week).
 *
 * Determinism: the same arguments give byte-identical files (a fixed PRNG,
 * no clock, no locale). Money is int64 minor units end to end and is written
 * by pb_money_format_decimal(); FX amounts come from pb_money_convert(), the
 * same code the engine uses.
 *
 * Memory: all lines and records are held in arrays (about 100 bytes per line)
 * and written in order; it is a bench tool, not a streaming one.
 *
 * Rejected: Python for the generator (minutes for a million rows, and a second
 * implementation of the money rules); random data without a planted answer
 * (then "both tools agree" would prove only that they share a bug).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_params.h"
#include "core/money.h"

#define NONE UINT32_MAX

enum fate {
    F_NORMAL,
    F_AMOUNT_DIFFERS,
    F_MISSING,
    F_DUP_SETTLEMENT,
    F_DUP_LEDGER,
    F_FEE_OUT,
    F_LATE,
    F_SPLIT,
    F_NET_ZERO,
    F_NET_PARTIAL,
    F_FX_REF,
    F_FX_MANUAL,
    F_MANUAL,
    F_REF_ONLY,
    F_REFUND_LATER,
    F_CHARGEBACK,
    F_ADJUSTMENT,
    F_COUNT
};

static const struct {
    const char *name;
    uint32_t bp; /* probability in basis points; F_NORMAL takes the rest */
} fates[F_COUNT] = {
    {"normal", 0},
    {"amount_differs", 100},
    {"missing_in_erp", 100},
    {"duplicate_settlement", 50},
    {"duplicate_ledger", 50},
    {"fee_out_of_contract", 100},
    {"settlement_late", 100},
    {"split_capture", 150},
    {"net_zero", 30},
    {"net_partial", 30},
    {"fx_reference", 50},
    {"fx_manual", 20},
    {"manual_posting", 200},
    {"reference_only", 300},
    {"refund_later", 400},
    {"chargeback", 100},
    {"adjustment", 10},
};

enum { K_SALE, K_REFUND, K_CHARGEBACK, K_FEE, K_ADJUSTMENT };
static const char *const line_kinds[] = {"sale", "refund", "chargeback", "fee", "adjustment"};
enum { R_PAYMENT, R_REFUND, R_CREDIT_NOTE, R_JOURNAL };
static const char *const record_kinds[] = {"payment", "refund", "credit_note", "journal"};

struct gline {
    int64_t amount, fee;
    uint32_t txn;   /* transaction number (0: no gateway reference) */
    uint32_t order; /* order number (0: no merchant reference) */
    uint32_t pair;  /* exact pair id, or NONE */
    int16_t settled, value;
    uint8_t kind, cur, txtype;
};

#define RF_GW 1    /* has the gateway reference */
#define RF_REF 2   /* has the merchant reference */
#define RF_BATCH 4 /* the reference is a batch id (deposits) */
#define RF_STRAY 8 /* a reference of its own (never settled, pending) */

struct grec {
    int64_t amount;
    uint32_t txn, order, pair, id, batch;
    int16_t date;
    uint8_t kind, cur, txtype, flags;
    uint8_t style; /* currency whose gateway's style the references are written in */
};

struct gbatch {
    int64_t gross, fees, net;
    uint32_t first, count; /* in the sorted line order */
    int16_t day;
    uint8_t cur, seq;
};

struct gen {
    uint64_t rng;
    struct gline *lines;
    uint32_t nlines, cap_lines;
    struct grec *recs;
    uint32_t nrecs, cap_recs;
    struct gbatch *batches;
    uint32_t nbatches;
    uint32_t order, txn, stray, pairs, rec_id;
    uint64_t planted[F_COUNT];
    uint64_t not_settled, pending, unbalanced, deposits_by_ref, deposits_by_amount;
    uint64_t chargeback_fee_lines;
};

/* ---- utilities ------------------------------------------------------------------------- */

static uint64_t next(struct gen *g)
{
    uint64_t z = (g->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t below(struct gen *g, uint64_t n)
{
    return n ? next(g) % n : 0;
}

static void die(const char *what)
{
    fprintf(stderr, "pb_recon_gen: %s\n", what);
    exit(1);
}

static struct gline *new_line(struct gen *g)
{
    if (g->nlines == g->cap_lines) {
        g->cap_lines = g->cap_lines ? g->cap_lines * 2 : 1 << 16;
        g->lines = realloc(g->lines, (size_t)g->cap_lines * sizeof(*g->lines));
        if (!g->lines)
            die("out of memory");
    }
    memset(&g->lines[g->nlines], 0, sizeof(*g->lines));
    g->lines[g->nlines].pair = NONE;
    return &g->lines[g->nlines++];
}

static struct grec *new_rec(struct gen *g)
{
    struct grec *r;
    if (g->nrecs == g->cap_recs) {
        g->cap_recs = g->cap_recs ? g->cap_recs * 2 : 1 << 16;
        g->recs = realloc(g->recs, (size_t)g->cap_recs * sizeof(*g->recs));
        if (!g->recs)
            die("out of memory");
    }
    r = &g->recs[g->nrecs++];
    memset(r, 0, sizeof(*r));
    r->pair = NONE;
    r->batch = NONE;
    r->id = ++g->rec_id;
    return r;
}

static int64_t contract_fee(int cur, int64_t amount)
{
    const struct rb_currency *c = &rb_currencies[cur];
    int64_t a = amount < 0 ? -amount : amount;
    return (a * (int64_t)c->fee_bp + 5000) / 10000 + c->fee_fixed;
}

static int64_t contract_fee_ceil(int cur, int64_t amount)
{
    const struct rb_currency *c = &rb_currencies[cur];
    int64_t a = amount < 0 ? -amount : amount;
    return (a * (int64_t)c->fee_bp + 9999) / 10000 + c->fee_fixed;
}

static int64_t draw_amount(struct gen *g, int cur)
{
    const struct rb_currency *c = &rb_currencies[cur];
    /* roughly log-uniform: a decade first, then uniform within it */
    int64_t lo = c->min_amount, hi;
    int decades = 0;
    for (int64_t v = lo; v * 10 <= c->max_amount; v *= 10)
        decades++;
    for (int d = (int)below(g, (uint64_t)decades); d > 0; d--)
        lo *= 10;
    hi = lo * 10 > c->max_amount ? c->max_amount : lo * 10;
    return lo + (int64_t)below(g, (uint64_t)(hi - lo));
}

static int pick_currency(struct gen *g)
{
    uint64_t r = below(g, 10000);
    for (int c = 0; c < RB_CURRENCY_COUNT; c++) {
        if (r < rb_currencies[c].share_bp)
            return c;
        r -= rb_currencies[c].share_bp;
    }
    return 0;
}

static int currency_index(const char *code)
{
    for (int c = 0; c < RB_CURRENCY_COUNT; c++)
        if (strcmp(rb_currencies[c].code, code) == 0)
            return c;
    return -1;
}

static int64_t to_gbp(int cur, int64_t amount)
{
    struct pb_err err;
    int64_t out;
    for (int k = 0; k < RB_RATE_COUNT; k++)
        if (strcmp(rb_rates[k].from, rb_currencies[cur].code) == 0 &&
            strcmp(rb_rates[k].to, "GBP") == 0) {
            if (pb_money_convert(amount, rb_rates[k].from, "GBP", rb_rates[k].rate, &out, &err))
                die(err.msg);
            return out;
        }
    die("no rate to GBP");
    return 0;
}

static int16_t clamp_day(int d)
{
    return (int16_t)(d < 0 ? 0 : d > RB_DAYS - 1 ? RB_DAYS - 1 : d);
}

/* ---- orders ------------------------------------------------------------------------------- */

static struct gline *sale(struct gen *g, int cur, int day, int64_t amount, uint32_t order)
{
    struct gline *l = new_line(g);
    l->kind = K_SALE;
    l->cur = (uint8_t)cur;
    l->txn = ++g->txn;
    l->txtype = 'T';
    l->order = order;
    l->amount = amount;
    l->fee = contract_fee(cur, amount);
    l->settled = (int16_t)day;
    l->value = (int16_t)(day + RB_SETTLEMENT_LAG);
    return l;
}

static struct grec *payment(struct gen *g, const struct gline *l, int flags)
{
    struct grec *r = new_rec(g);
    r->kind = R_PAYMENT;
    r->cur = l->cur;
    r->amount = l->amount;
    r->txn = l->txn;
    r->txtype = l->txtype;
    r->order = l->order;
    r->date = l->settled;
    r->flags = (uint8_t)flags;
    r->style = l->cur;
    return r;
}

static void pair(struct gen *g, struct gline *l, struct grec *r)
{
    l->pair = r->pair = g->pairs++;
}

static void one_order(struct gen *g, uint32_t remaining)
{
    int cur = pick_currency(g), day = (int)below(g, RB_DAYS);
    int64_t amount = draw_amount(g, cur);
    uint32_t order = ++g->order;
    enum fate f = F_NORMAL;
    struct gline *l = NULL, *x;
    struct grec *r;
    uint64_t roll = below(g, 10000);

    if (remaining >= 4) {
        for (int k = 1; k < F_COUNT; k++) {
            if (roll < fates[k].bp) {
                f = (enum fate)k;
                break;
            }
            roll -= fates[k].bp;
        }
    }
    if ((f == F_FX_REF || f == F_FX_MANUAL) && cur != 1 && cur != 2)
        f = f == F_FX_REF ? F_NORMAL : F_MANUAL;
    g->planted[f]++;

    switch (f) {
    case F_NORMAL:
    case F_FEE_OUT:
    case F_LATE:
        l = sale(g, cur, day, amount, order);
        if (f == F_FEE_OUT) /* beyond the ceiling: either rounding of the contract passes */
            l->fee = contract_fee_ceil(cur, amount) + 1 + (int64_t)below(g, 50);
        if (f == F_LATE)
            l->value = (int16_t)(l->settled + RB_SETTLEMENT_LAG + 3 + (int)below(g, 6));
        pair(g, l, payment(g, l, RF_GW | RF_REF));
        break;
    case F_AMOUNT_DIFFERS: {
        int64_t delta = below(g, 2) ? 1 + (int64_t)below(g, 100) : 500 + (int64_t)below(g, 4500);
        l = sale(g, cur, day, amount, order);
        r = payment(g, l, RF_GW | RF_REF);
        r->amount = below(g, 2) && amount > delta ? amount - delta : amount + delta;
        break;
    }
    case F_MISSING:
        sale(g, cur, day, amount, order);
        break;
    case F_DUP_SETTLEMENT: {
        struct gline copy;
        l = sale(g, cur, day, amount, order);
        pair(g, l, payment(g, l, RF_GW | RF_REF));
        copy = *l;
        copy.pair = NONE;
        copy.settled = clamp_day(day + 1);
        copy.value = (int16_t)(copy.settled + RB_SETTLEMENT_LAG);
        *new_line(g) = copy; /* new_line may move the array: l is not used after it */
        break;
    }
    case F_DUP_LEDGER:
        l = sale(g, cur, day, amount, order);
        pair(g, l, payment(g, l, RF_GW | RF_REF));
        payment(g, l, RF_GW | RF_REF);
        break;
    case F_SPLIT: {
        int parts = 2 + (int)below(g, 2);
        int64_t left = amount; /* amount >= min_amount >= 100 > parts */
        for (int k = 0; k < parts; k++) {
            int rest = parts - k - 1;
            int64_t part = rest ? 1 + (int64_t)below(g, (uint64_t)(left - rest)) : left;
            l = sale(g, cur, day, part, order);
            left -= part;
        }
        r = payment(g, l, RF_REF);
        r->amount = amount;
        r->txn = 0;
        break;
    }
    case F_NET_ZERO:
    case F_NET_PARTIAL: {
        struct gline refund;
        l = sale(g, cur, day, amount < 2 ? 2 : amount, order);
        memset(&refund, 0, sizeof(refund));
        refund.kind = K_REFUND;
        refund.cur = (uint8_t)cur;
        refund.txn = ++g->txn;
        refund.txtype = 'R';
        refund.order = order;
        refund.pair = NONE;
        refund.amount =
            f == F_NET_ZERO ? -l->amount : -(1 + (int64_t)below(g, (uint64_t)(l->amount - 1)));
        refund.settled = l->settled;
        refund.value = l->value;
        if (f == F_NET_PARTIAL) {
            r = payment(g, l, RF_GW | RF_REF);
            r->amount = l->amount + refund.amount;
        }
        *new_line(g) = refund;
        break;
    }
    case F_FX_REF:
    case F_FX_MANUAL:
        l = sale(g, cur, day, amount, order);
        r = payment(g, l, f == F_FX_REF ? RF_GW | RF_REF : 0);
        r->cur = 0; /* GBP */
        r->amount = to_gbp(cur, amount);
        break;
    case F_MANUAL:
        l = sale(g, cur, day, amount, order);
        r = payment(g, l, 0);
        r->date = clamp_day(day - 1 + (int)below(g, 4));
        break;
    case F_REF_ONLY:
        l = sale(g, cur, day, amount, order);
        pair(g, l, payment(g, l, RF_REF));
        break;
    case F_REFUND_LATER:
    case F_CHARGEBACK: {
        int16_t settled =
            clamp_day(day + (f == F_CHARGEBACK ? 3 + (int)below(g, 8) : 1 + (int)below(g, 5)));
        l = sale(g, cur, day, amount, order);
        pair(g, l, payment(g, l, RF_GW | RF_REF));
        x = new_line(g);
        x->kind = f == F_CHARGEBACK ? K_CHARGEBACK : K_REFUND;
        x->cur = (uint8_t)cur;
        x->txn = ++g->txn;
        x->txtype = f == F_CHARGEBACK ? 'C' : 'R';
        x->order = order;
        x->amount =
            f == F_CHARGEBACK || below(g, 2) ? -amount : -(1 + (int64_t)below(g, (uint64_t)amount));
        x->settled = settled;
        x->value = (int16_t)(settled + RB_SETTLEMENT_LAG);
        r = new_rec(g);
        r->kind = f == F_CHARGEBACK || below(g, 2) ? R_CREDIT_NOTE : R_REFUND;
        r->cur = r->style = (uint8_t)cur;
        r->amount = x->amount;
        r->txn = x->txn;
        r->txtype = x->txtype;
        r->order = order;
        r->date = settled;
        r->flags = RF_GW | RF_REF;
        pair(g, x, r);
        if (f == F_CHARGEBACK) {
            x = new_line(g);
            x->kind = K_FEE;
            x->cur = (uint8_t)cur;
            x->amount = -rb_currencies[cur].chargeback_fee;
            x->settled = settled;
            x->value = (int16_t)(settled + RB_SETTLEMENT_LAG);
            r = new_rec(g);
            r->kind = R_JOURNAL;
            r->cur = r->style = (uint8_t)cur;
            r->amount = -rb_currencies[cur].chargeback_fee;
            r->date = (int16_t)(settled + (int)below(g, 3));
            g->chargeback_fee_lines++;
        }
        break;
    }
    case F_ADJUSTMENT:
        l = new_line(g);
        l->kind = K_ADJUSTMENT;
        l->cur = (uint8_t)cur;
        l->amount = below(g, 2) ? 1 + (int64_t)below(g, 99) : -(1 + (int64_t)below(g, 99));
        l->settled = (int16_t)day;
        l->value = (int16_t)(day + RB_SETTLEMENT_LAG);
        break;
    case F_COUNT:
        break;
    }
    if (below(g, 10000) < 100) {
        /* posted in the ERP, never settled: voided at the gateway, or a stray */
        r = new_rec(g);
        r->kind = R_PAYMENT;
        r->cur = r->style = (uint8_t)pick_currency(g);
        r->amount = draw_amount(g, r->cur);
        r->txn = ++g->txn;
        r->txtype = 'X';
        r->order = ++g->stray;
        r->date = (int16_t)below(g, RB_DAYS - 5);
        r->flags = RF_GW | RF_REF | RF_STRAY;
        g->not_settled++;
    }
}

/* ---- batches ------------------------------------------------------------------------------- */

static uint32_t *sort_lines(struct gen *g)
{
    uint32_t keys = RB_DAYS * RB_CURRENCY_COUNT, *count = calloc(keys + 1, sizeof(uint32_t));
    uint32_t *order = malloc((size_t)g->nlines * sizeof(uint32_t));
    if (!count || !order)
        die("out of memory");
    for (uint32_t i = 0; i < g->nlines; i++)
        count[g->lines[i].settled * RB_CURRENCY_COUNT + g->lines[i].cur + 1]++;
    for (uint32_t k = 0; k < keys; k++)
        count[k + 1] += count[k];
    for (uint32_t i = 0; i < g->nlines; i++)
        order[count[g->lines[i].settled * RB_CURRENCY_COUNT + g->lines[i].cur]++] = i;
    free(count);
    return order;
}

static void make_batches(struct gen *g, const uint32_t *order)
{
    uint32_t i = 0;
    g->batches = calloc((size_t)g->nlines / 1 + 1, sizeof(*g->batches));
    if (!g->batches)
        die("out of memory");
    while (i < g->nlines) {
        const struct gline *first = &g->lines[order[i]];
        struct gbatch *b = &g->batches[g->nbatches];
        uint8_t seq = 1;
        if (g->nbatches > 0) {
            const struct gbatch *p = &g->batches[g->nbatches - 1];
            if (p->day == first->settled && p->cur == first->cur)
                seq = (uint8_t)(p->seq + 1);
        }
        b->first = i;
        b->day = first->settled;
        b->cur = first->cur;
        b->seq = seq;
        while (i < g->nlines && b->count < RB_BATCH_MAX && g->lines[order[i]].settled == b->day &&
               g->lines[order[i]].cur == b->cur) {
            const struct gline *l = &g->lines[order[i]];
            if (l->kind == K_FEE)
                b->fees += -l->amount;
            else
                b->gross += l->amount;
            b->fees += l->fee;
            b->count++;
            i++;
        }
        b->net = b->gross - b->fees;
        if (below(g, 10000) < 100) {
            b->net += below(g, 2) ? 1 + (int64_t)below(g, 999) : -(1 + (int64_t)below(g, 999));
            g->unbalanced++;
        }
        g->nbatches++;
    }
    for (uint32_t k = 0; k < g->nbatches; k++) {
        const struct gbatch *b = &g->batches[k];
        struct grec *r = new_rec(g);
        r->kind = R_JOURNAL;
        r->cur = r->style = b->cur;
        r->amount = b->net;
        r->date = (int16_t)(b->day + RB_SETTLEMENT_LAG);
        r->batch = k;
        if (below(g, 100) < 95) {
            r->flags = RF_REF | RF_BATCH;
            g->deposits_by_ref++;
        } else {
            g->deposits_by_amount++;
        }
    }
}

/* ---- writing ----------------------------------------------------------------------------------
 */

struct w {
    FILE *f;
    char buf[1 << 16];
    size_t len;
};

static void w_flush(struct w *w)
{
    if (w->len && fwrite(w->buf, 1, w->len, w->f) != w->len)
        die("write failed");
    w->len = 0;
}

static void w_bytes(struct w *w, const char *p, size_t n)
{
    if (w->len + n > sizeof(w->buf))
        w_flush(w);
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void w_str(struct w *w, const char *s)
{
    w_bytes(w, s, strlen(s));
}
static void w_ch(struct w *w, char c)
{
    w_bytes(w, &c, 1);
}

static void w_u64(struct w *w, uint64_t v, int width)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v || n < width);
    while (n)
        w_ch(w, tmp[--n]);
}

static void w_amount(struct w *w, int64_t minor, int cur)
{
    char tmp[PB_MONEY_DECIMAL_MAX];
    struct pb_err err;
    if (pb_money_format_decimal(minor, rb_currencies[cur].code, tmp, sizeof(tmp), &err))
        die(err.msg);
    w_str(w, tmp);
}

static char dates[RB_DAYS + 40][11];

static void make_dates(void)
{
    /* days in the month of the start and after; RB_DAYS + 39 days from 2026-03-01 */
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y = RB_START_Y, m = RB_START_M, d = RB_START_D;
    for (int k = 0; k < RB_DAYS + 40; k++) {
        snprintf(dates[k], sizeof(dates[k]), "%04d-%02d-%02d", y, m, d);
        if (++d > mdays[m - 1] + (m == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))) {
            d = 1;
            if (++m > 12) {
                m = 1;
                y++;
            }
        }
    }
}

static const char *date_of(int day)
{
    return dates[day < 0 ? 0 : day >= RB_DAYS + 40 ? RB_DAYS + 39 : day];
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* An Opayo transactionId looks like a GUID; PayTrace's is a number. Both are a
 * bijection of (type, number), so distinct transactions never collide. */
static void w_txn(struct w *w, int cur, char type, uint32_t txn)
{
    static const char hex[] = "0123456789ABCDEF";
    if (strcmp(rb_currencies[cur].gateway, "opayo") == 0) {
        uint64_t a = mix64(((uint64_t)(unsigned char)type << 40) | txn),
                 b = mix64(a ^ 0x5851f42d4c957f2dull);
        char out[36];
        int k = 0;
        for (int i = 0; i < 32; i++) {
            if (i == 8 || i == 12 || i == 16 || i == 20)
                out[k++] = '-';
            out[k++] = hex[((i < 16 ? a : b) >> (4 * (15 - i % 16))) & 15];
        }
        w_bytes(w, out, 36);
    } else {
        w_ch(w, type == 'T' ? '1' : type == 'R' ? '2' : type == 'C' ? '3' : '4');
        w_u64(w, txn, 9);
    }
}

static void w_order(struct w *w, int cur, uint32_t order, int stray)
{
    if (strcmp(rb_currencies[cur].gateway, "opayo") == 0)
        w_str(w, stray ? "ORX-" : "ORD-");
    else
        w_str(w, stray ? "INX" : "INV");
    w_u64(w, order, 8);
}

static void w_batch_id(struct w *w, const struct gbatch *b)
{
    const char *d = date_of(b->day);
    w_str(w, rb_currencies[b->cur].batch_tag);
    w_ch(w, '-');
    w_str(w, rb_currencies[b->cur].code);
    w_ch(w, '-');
    w_bytes(w, d, 4);
    w_bytes(w, d + 5, 2);
    w_bytes(w, d + 8, 2);
    w_ch(w, '-');
    w_u64(w, b->seq, 1);
}

static FILE *open_out(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "pb_recon_gen: %s: %s\n", path, strerror(errno));
        exit(1);
    }
    return f;
}

int main(int argc, char **argv)
{
    uint64_t want_lines = 0, want_records = 0, seed = 20260301;
    const char *out = NULL;
    struct gen *g = calloc(1, sizeof(*g));
    struct w *w = malloc(sizeof(*w));
    uint32_t *order, *rorder, *rcount, row, *pair_line, *pair_rec;
    uint64_t fingerprint = 0;
    FILE *f;

    if (!g || !w)
        die("out of memory");
    for (int i = 1; i < argc; i++) {
        char *end;
        if (i + 1 < argc && strcmp(argv[i], "--lines") == 0)
            want_lines = strtoull(argv[++i], &end, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--records") == 0)
            want_records = strtoull(argv[++i], &end, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--seed") == 0)
            seed = strtoull(argv[++i], &end, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--out") == 0)
            out = argv[++i];
        else {
            fprintf(stderr, "usage: pb_recon_gen --lines N [--records M] [--seed S] --out DIR\n");
            return 2;
        }
    }
    if (!out || want_lines < 10 || want_lines > 100000000) {
        fprintf(stderr, "usage: pb_recon_gen --lines N (10..1e8) [--records M] [--seed S] "
                        "--out DIR\n");
        return 2;
    }
    if (!want_records)
        want_records = want_lines;
    if (mkdir(out, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "pb_recon_gen: %s: %s\n", out, strerror(errno));
        return 1;
    }
    if (currency_index("GBP") != 0)
        die("bench_params.h: GBP must be the first currency");
    make_dates();
    g->rng = seed;
    while (g->nlines < want_lines)
        one_order(g, (uint32_t)(want_lines - g->nlines));
    order = sort_lines(g);
    make_batches(g, order);
    while (g->nrecs < want_records) {
        /* posted in the last days: not settled yet, and not a break */
        struct grec *r = new_rec(g);
        r->kind = R_PAYMENT;
        r->cur = r->style = (uint8_t)pick_currency(g);
        r->amount = draw_amount(g, r->cur);
        r->txn = ++g->txn;
        r->txtype = 'X';
        r->order = ++g->stray;
        r->date = (int16_t)(RB_DAYS - 1 - (int)below(g, 2));
        r->flags = RF_GW | RF_REF | RF_STRAY;
        g->pending++;
    }

    pair_line = calloc((size_t)g->pairs + 1, sizeof(uint32_t));
    pair_rec = calloc((size_t)g->pairs + 1, sizeof(uint32_t));
    if (!pair_line || !pair_rec)
        die("out of memory");

    /* settlement.csv: per batch, its header row and its lines */
    w->f = open_out(out, "settlement.csv");
    w->len = 0;
    w_str(w, "record,gateway,batch_id,line_no,kind,gateway_ref,merchant_ref,amount,fee,net,"
             "currency,value_date,settled_date\n");
    row = 1;
    for (uint32_t k = 0; k < g->nbatches; k++) {
        const struct gbatch *b = &g->batches[k];
        const struct rb_currency *c = &rb_currencies[b->cur];
        w_str(w, "batch,");
        w_str(w, c->gateway);
        w_ch(w, ',');
        w_batch_id(w, b);
        w_str(w, ",,,,,");
        w_amount(w, b->gross, b->cur);
        w_ch(w, ',');
        w_amount(w, b->fees, b->cur);
        w_ch(w, ',');
        w_amount(w, b->net, b->cur);
        w_ch(w, ',');
        w_str(w, c->code);
        w_ch(w, ',');
        w_str(w, date_of(b->day + RB_SETTLEMENT_LAG));
        w_ch(w, ',');
        w_str(w, date_of(b->day));
        w_ch(w, '\n');
        row++;
        for (uint32_t j = 0; j < b->count; j++) {
            const struct gline *l = &g->lines[order[b->first + j]];
            w_str(w, "line,");
            w_str(w, c->gateway);
            w_ch(w, ',');
            w_batch_id(w, b);
            w_ch(w, ',');
            w_u64(w, j + 1, 1);
            w_ch(w, ',');
            w_str(w, line_kinds[l->kind]);
            w_ch(w, ',');
            if (l->txn)
                w_txn(w, l->cur, (char)l->txtype, l->txn);
            w_ch(w, ',');
            if (l->order)
                w_order(w, l->cur, l->order, 0);
            w_ch(w, ',');
            w_amount(w, l->amount, l->cur);
            w_ch(w, ',');
            w_amount(w, l->fee, l->cur);
            w_str(w, ",,");
            w_str(w, c->code);
            w_ch(w, ',');
            w_str(w, date_of(l->value));
            w_ch(w, ',');
            w_str(w, date_of(l->settled));
            w_ch(w, '\n');
            row++;
            if (l->pair != NONE)
                pair_line[l->pair] = row;
        }
    }
    w_flush(w);
    if (fclose(w->f))
        die("closing settlement.csv failed");

    /* ledger.csv: by date, as an ERP exports it */
    rcount = calloc(RB_DAYS + 42, sizeof(uint32_t));
    rorder = malloc((size_t)g->nrecs * sizeof(uint32_t));
    if (!rcount || !rorder)
        die("out of memory");
    for (uint32_t i = 0; i < g->nrecs; i++)
        rcount[g->recs[i].date + 2]++;
    for (int k = 0; k < RB_DAYS + 41; k++)
        rcount[k + 1] += rcount[k];
    for (uint32_t i = 0; i < g->nrecs; i++)
        rorder[rcount[g->recs[i].date + 1]++] = i;
    w->f = open_out(out, "ledger.csv");
    w_str(w, "erp,record_id,kind,gateway_ref,reference,amount,currency,date\n");
    row = 1;
    for (uint32_t k = 0; k < g->nrecs; k++) {
        const struct grec *r = &g->recs[rorder[k]];
        /* references in the style of the gateway that settled the transaction */
        int style = r->style;
        w_str(w, r->cur == 0 || r->cur == 1 ? "xero-demo" : "sagex3-demo");
        w_ch(w, ',');
        w_str(w, r->kind == R_JOURNAL ? "JNL-" : r->kind == R_PAYMENT ? "PAY-" : "CN-");
        w_u64(w, r->id, 7);
        w_ch(w, ',');
        w_str(w, record_kinds[r->kind]);
        w_ch(w, ',');
        if (r->flags & RF_GW)
            w_txn(w, style, (char)r->txtype, r->txn);
        w_ch(w, ',');
        if (r->flags & RF_BATCH)
            w_batch_id(w, &g->batches[r->batch]);
        else if (r->flags & RF_REF)
            w_order(w, style, r->order, (r->flags & RF_STRAY) != 0);
        w_ch(w, ',');
        w_amount(w, r->amount, r->cur);
        w_ch(w, ',');
        w_str(w, rb_currencies[r->cur].code);
        w_ch(w, ',');
        w_str(w, date_of(r->date));
        w_ch(w, '\n');
        row++;
        if (r->pair != NONE)
            pair_rec[r->pair] = row;
    }
    w_flush(w);
    if (fclose(w->f))
        die("closing ledger.csv failed");

    for (uint32_t p = 0; p < g->pairs; p++)
        fingerprint += ((uint64_t)pair_line[p] << 32) + pair_rec[p];

    f = open_out(out, "manifest.json");
    fprintf(f,
            "{\"generator\":\"pb_recon_gen 1\",\"seed\":%" PRIu64 ",\"lines\":%u,"
            "\"records\":%u,\"batches\":%u,\"as_of\":\"%s\",\n",
            seed, g->nlines, g->nrecs, g->nbatches, date_of(RB_DAYS - 1));
    fprintf(f,
            " \"expected\":{\"exact_reference_matches\":%u,"
            "\"exact_reference_fingerprint\":%" PRIu64 "},\n",
            g->pairs, fingerprint);
    fprintf(f,
            " \"planted_matches\":{\"reference\":%u,\"amount_or_date_window\":%" PRIu64
            ",\"batch\":%u,\"many_to_one\":%" PRIu64 ",\"netting\":%" PRIu64 ",\"fx\":%" PRIu64
            "},\n",
            g->pairs, g->planted[F_MANUAL] + g->chargeback_fee_lines, g->nbatches,
            g->planted[F_SPLIT], g->planted[F_NET_ZERO] + g->planted[F_NET_PARTIAL],
            g->planted[F_FX_REF] + g->planted[F_FX_MANUAL]);
    fprintf(f,
            " \"planted_breaks\":{\"amount_differs\":%" PRIu64 ",\"missing_in_erp\":%" PRIu64
            ",\"not_settled\":%" PRIu64 ",\"duplicate\":%" PRIu64
            ",\"fee_out_of_contract\":%" PRIu64 ",\"settlement_late\":%" PRIu64
            ",\"batch_unbalanced\":%" PRIu64 "},\n",
            g->planted[F_AMOUNT_DIFFERS], g->planted[F_MISSING] + g->planted[F_ADJUSTMENT],
            g->not_settled, g->planted[F_DUP_SETTLEMENT] + g->planted[F_DUP_LEDGER],
            g->planted[F_FEE_OUT], g->planted[F_LATE], g->unbalanced);
    fprintf(f,
            " \"pending_records\":%" PRIu64 ",\"deposits_by_reference\":%" PRIu64
            ",\"deposits_by_amount\":%" PRIu64 ",\n \"fates\":{",
            g->pending, g->deposits_by_ref, g->deposits_by_amount);
    for (int k = 0; k < F_COUNT; k++)
        fprintf(f, "%s\"%s\":%" PRIu64, k ? "," : "", fates[k].name, g->planted[k]);
    fprintf(f, "}}\n");
    if (fclose(f))
        die("closing manifest.json failed");
    fprintf(stderr,
            "pb_recon_gen: %u lines in %u batches, %u records, %u exact reference pairs "
            "-> %s\n",
            g->nlines, g->nbatches, g->nrecs, g->pairs, out);
    free(pair_line);
    free(pair_rec);
    free(rcount);
    free(rorder);
    free(order);
    free(g->lines);
    free(g->recs);
    free(g->batches);
    free(g);
    free(w);
    return 0;
}
