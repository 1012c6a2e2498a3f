/*
 * recon/recon_match.c: the matching rules, in order, and the classification
 * of what they leave into breaks.
 *
 * Who calls it: pb_recon_match(), once per run, after the loads. It owns the
 * amount index (built after rule 1, freed before return) and writes the run's
 * matches, breaks and members arrays and the per-element states.
 *
 * The passes, each over lines or records in a fixed order (index order, or
 * settled date then index), so the output is deterministic; each decides an
 * element at most once:
 *
 *   duplicates  the marks of the index build become duplicate breaks; a
 *               duplicate takes no further part;
 *   rule 1      per line: its transactionId against the records' posted
 *               gateway references (first occurrence on each side), else its
 *               merchant reference against the references of records that
 *               have no gateway reference, when the reference names exactly
 *               one line and one record in that direction (money in or out).
 *               Equal amounts (or within the tolerance) match; two currencies
 *               go to the FX comparison (rule 7, at once: a reference pair is
 *               never split); a real difference is *held*, because rule 6 may
 *               still explain it by a refund netted in the batch;
 *   rules 2, 3  per unlinked line, in settled-date order: an unlinked record
 *               in the same currency and kind class with the closest amount
 *               (within tolerance), and of those the oldest within the date
 *               window (first in, first out, which pairs the most: see
 *               find_best); rule 2 when it is on the line's day, rule 3
 *               when it needed the window. "Unlinked" means no reference of
 *               it appears on the other side, and for records also that they
 *               carry no transactionId (such a record is identified: by it
 *               or not at all); a sale with its refund in the same batch is
 *               left to rule 6. A reference link is never overridden by an
 *               amount coincidence. The candidates are an array radix-sorted by
 *               (currency, class, amount, date); taken ones are skipped with
 *               two union-find arrays (next free, previous free), so a query
 *               costs O(log n) however many equal amounts were taken before;
 *   rule 4      per batch: the header's gross - fees = net and the lines' sums
 *               are checked (batch_unbalanced), then the payout (net) is
 *               matched to the ledger deposit that names the batch, or else to
 *               a journal of that amount near the payout date;
 *   rule 5      per record: the free lines with its reference and direction,
 *               two or more, summing exactly to it (split captures);
 *   rule 6      per refund or chargeback line: its sale(s) in the same batch
 *               and the other refunds of the order there, netting to zero (the
 *               ERP need hold nothing) or to the one record the ERP holds
 *               (which releases a held rule-1 pair);
 *   rule 7      per unlinked line, when a rate table is configured: converted
 *               at each rate from its currency and searched like rule 3, within
 *               the target currency's own tolerance (the FX basis points are
 *               for pairs that a reference vouches for);
 *   checks      fee against the gateway's contract, value date against the
 *               settlement lag (on every non-duplicate line, matched or not);
 *   leftovers   held pairs and reference-linked groups that never balanced
 *               become amount_differs; free lines missing_in_erp; free records
 *               not_settled when older than the lag (else pending, no break).
 *
 * Confidence (docs/reconciliation.md has the table): 100 for an exact
 * transactionId, 95 for an exact unique merchant reference, minus 10 when
 * only within tolerance; 85/75 same-day amount; 80 - 5 per day in the window
 * (at least 55); minus 15 whenever another candidate was as plausible.
 *
 * Rejected designs. A same-day pass before the window pass, and "nearest
 * date first": both let a line take a record that an earlier or later line
 * needed; on a month of chargeback fees they left 3% of the fee lines
 * unpaired while their journals sat unmatched at month end. Running rules 2-3
 * before the reference rules (cheap amounts would steal pairs that a reference
 * proves). Emitting amount_differs in rule 1 immediately (a sale refunded in
 * part within its batch would be reported as a break although the ERP is
 * right). Scoring all candidate pairs globally (quadratic, and "why this
 * one?" becomes hard to answer).
 */
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "recon/recon_internal.h"

#define NO_RATE UINT16_MAX

struct ctx {
    struct pb_recon_run *run;
    struct pb__recon_line *lines;
    struct pb__recon_record *recs;
    struct pb__recon_batch *batches;
    const char *ls, *rs; /* string arenas of the settlement and the ledger */
    uint32_t nl, nr, nb;
    struct pb__recon_keyspec ks_line_gw, ks_line_mref, ks_rec_gw, ks_rec_ref, ks_batch;
    struct pb__recon_sort_item *items; /* the amount index */
    uint32_t ns;
    uint32_t *nf, *pf; /* union-find: next free position, previous free + 1 */
    enum pb_rc rc;
};

static inline uint64_t mag(int64_t v)
{
    return v < 0 ? -(uint64_t)v : (uint64_t)v;
}

static inline int clamp_conf(int c)
{
    return c < 0 ? 0 : c > 100 ? 100 : c;
}

/* ---- output ----------------------------------------------------------------------- */

static uint32_t emit_match(struct ctx *x, unsigned rule, int conf, const uint32_t *lines,
                           uint32_t nlines, const uint32_t *recs, uint32_t nrecs, uint32_t batch,
                           int64_t diff, unsigned cur, uint16_t rate)
{
    struct pb_recon_run *run = x->run;
    struct pb_recon_match *m;
    uint64_t at, mi;
    uint32_t *mem;
    if (x->rc)
        return PB_RECON_NONE;
    if (pb__recon_vec_extend(&run->members, (uint64_t)nlines + nrecs, &at) ||
        pb__recon_vec_extend(&run->matches, 1, &mi)) {
        x->rc = PB_ERR_NOMEM;
        return PB_RECON_NONE;
    }
    if (nlines + nrecs) { /* no arithmetic on members.data while it may be NULL */
        mem = (uint32_t *)run->members.data + at;
        if (nlines)
            memcpy(mem, lines, nlines * sizeof(uint32_t));
        if (nrecs)
            memcpy(mem + nlines, recs, nrecs * sizeof(uint32_t));
    }
    m = (struct pb_recon_match *)run->matches.data + mi;
    memset(m, 0, sizeof(*m));
    m->members = (uint32_t)at;
    m->line_count = nlines;
    m->record_count = nrecs;
    m->batch = batch;
    m->difference_minor = diff;
    m->rate = rate;
    m->rule = (uint8_t)rule;
    m->confidence = (uint8_t)clamp_conf(conf);
    memcpy(m->currency, run->currencies[cur].code, 4);
    for (uint32_t k = 0; k < nlines; k++) {
        run->line_state[lines[k]] = PB__ST_MATCHED;
        run->line_link[lines[k]] = (uint32_t)mi;
    }
    for (uint32_t k = 0; k < nrecs; k++) {
        run->record_state[recs[k]] = PB__ST_MATCHED;
        run->record_link[recs[k]] = (uint32_t)mi;
    }
    return (uint32_t)mi;
}

static int auto_adjustable(const struct pb_recon_run *run, unsigned cur, int64_t amount)
{
    int64_t max = run->currencies[cur].auto_adjust_max;
    return max > 0 && mag(amount) <= (uint64_t)max;
}

static void emit_break(struct ctx *x, unsigned cls, unsigned action, int auto_adjust, unsigned side,
                       const uint32_t *lines, uint32_t nlines, const uint32_t *recs, uint32_t nrecs,
                       uint32_t batch, uint32_t first_seen, int64_t amount, unsigned cur)
{
    struct pb_recon_run *run = x->run;
    struct pb_recon_break *b;
    uint64_t at, bi;
    uint32_t *mem;
    if (x->rc)
        return;
    if (pb__recon_vec_extend(&run->members, (uint64_t)nlines + nrecs, &at) ||
        pb__recon_vec_extend(&run->breaks, 1, &bi)) {
        x->rc = PB_ERR_NOMEM;
        return;
    }
    if (nlines + nrecs) { /* no arithmetic on members.data while it may be NULL */
        mem = (uint32_t *)run->members.data + at;
        if (nlines)
            memcpy(mem, lines, nlines * sizeof(uint32_t));
        if (nrecs)
            memcpy(mem + nlines, recs, nrecs * sizeof(uint32_t));
    }
    b = (struct pb_recon_break *)run->breaks.data + bi;
    memset(b, 0, sizeof(*b));
    b->members = (uint32_t)at;
    b->line_count = nlines;
    b->record_count = nrecs;
    b->batch = batch;
    b->first_seen = first_seen;
    b->amount_minor = amount;
    b->class_ = (uint8_t)cls;
    b->action = (uint8_t)(auto_adjust ? PB_RECON_ACTION_POST_ADJUSTMENT_JOURNAL : action);
    b->auto_adjust = (uint8_t)(auto_adjust != 0);
    b->side = (uint8_t)side;
    memcpy(b->currency, run->currencies[cur].code, 4);
    if (cls == PB_RECON_BREAK_AMOUNT_DIFFERS) {
        for (uint32_t k = 0; k < nlines; k++)
            run->line_state[lines[k]] = PB__ST_BROKEN;
        for (uint32_t k = 0; k < nrecs; k++)
            run->record_state[recs[k]] = PB__ST_BROKEN;
    }
}

/* ---- comparisons ---------------------------------------------------------------------- */

/* tolerance + |amount| * bp / 10000, saturating. */
static uint64_t fx_tolerance(const struct pb_recon_run *run, unsigned cur, int64_t amount)
{
    unsigned __int128 t = (unsigned __int128)mag(amount) * run->cfg.fx_tolerance_bp / 10000 +
                          (uint64_t)run->currencies[cur].tolerance;
    return t > UINT64_MAX ? UINT64_MAX : (uint64_t)t;
}

/* Compare line l with record r in two currencies through the rate table: the
 * line is converted into the record's currency (a rate from -> to), or else
 * the record into the line's (a rate in the other direction). Returns 0 when
 * no rate applies or the conversion fails. */
static int fx_compare(const struct pb_recon_run *run, const struct pb__recon_line *l,
                      const struct pb__recon_record *r, int64_t *diff, unsigned *cur,
                      uint16_t *rate, uint64_t *tol)
{
    for (uint32_t k = 0; k < run->rate_count; k++) {
        const struct pb__recon_rate *x = &run->rates[k];
        int64_t conv;
        if (x->from == l->currency && x->to == r->currency) {
            if (pb_money_convert(l->amount, run->currencies[x->from].code,
                                 run->currencies[x->to].code, x->text, &conv, NULL) ||
                __builtin_sub_overflow(conv, r->amount, diff))
                return 0;
            *cur = r->currency;
            *rate = (uint16_t)k;
            *tol = fx_tolerance(run, r->currency, conv);
            return 1;
        }
    }
    for (uint32_t k = 0; k < run->rate_count; k++) {
        const struct pb__recon_rate *x = &run->rates[k];
        int64_t conv;
        if (x->from == r->currency && x->to == l->currency) {
            if (pb_money_convert(r->amount, run->currencies[x->from].code,
                                 run->currencies[x->to].code, x->text, &conv, NULL) ||
                __builtin_sub_overflow(l->amount, conv, diff))
                return 0;
            *cur = l->currency;
            *rate = (uint16_t)k;
            *tol = fx_tolerance(run, l->currency, conv);
            return 1;
        }
    }
    return 0;
}

static void hold(struct ctx *x, uint32_t i, uint32_t r)
{
    uint32_t pair[2] = {i, r};
    if (pb__recon_vec_push(&x->run->held, pair)) {
        x->rc = PB_ERR_NOMEM;
        return;
    }
    x->run->line_state[i] = PB__ST_HELD;
    x->run->line_link[i] = r;
    x->run->record_state[r] = PB__ST_HELD;
    x->run->record_link[r] = i;
}

/* Rule 1's decision for a reference pair; by_gw: via transactionId. */
static void decide_pair(struct ctx *x, uint32_t i, uint32_t r, int by_gw)
{
    struct pb_recon_run *run = x->run;
    const struct pb__recon_line *l = &x->lines[i];
    const struct pb__recon_record *rec = &x->recs[r];
    int64_t diff;
    if (l->currency == rec->currency) {
        if (!__builtin_sub_overflow(l->amount, rec->amount, &diff) &&
            mag(diff) <= (uint64_t)run->currencies[l->currency].tolerance) {
            emit_match(x, PB_RECON_RULE_REFERENCE, (by_gw ? 100 : 95) - (diff ? 10 : 0), &i, 1, &r,
                       1, PB_RECON_NONE, diff, l->currency, NO_RATE);
            if (diff == 0) {
                run->exact_reference_matches++;
                run->exact_reference_fingerprint +=
                    ((uint64_t)l->source_line << 32) + rec->source_line;
            }
            return;
        }
    } else {
        unsigned cur;
        uint16_t rate;
        uint64_t tol;
        if (fx_compare(run, l, rec, &diff, &cur, &rate, &tol) && mag(diff) <= tol) {
            emit_match(x, PB_RECON_RULE_FX, diff ? 85 : 90, &i, 1, &r, 1, PB_RECON_NONE, diff, cur,
                       rate);
            return;
        }
    }
    hold(x, i, r);
}

/* ---- rule 1 ------------------------------------------------------------------------- */

static void rule_reference(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    for (uint32_t i = 0; i < x->nl && !x->rc; i++) {
        const struct pb__recon_line *l = &x->lines[i];
        uint32_t r, head, cand = PB_RECON_NONE, count = 0, steps = 0;
        int dir;
        if (i + 16 < x->nl)
            __builtin_prefetch(
                &run->record_gw.slots[(uint32_t)x->lines[i + 16].gw_hash & run->record_gw.mask]);
        if (run->line_state[i] != PB__ST_FREE)
            continue;
        if (l->gw_len) {
            r = pb__recon_lookup(&run->record_gw, &x->ks_rec_gw, x->ls + l->gw_off, l->gw_len,
                                 l->gw_hash);
            if (r != PB_RECON_NONE) {
                run->line_flags[i] |= PB__FLAG_LINKED;
                decide_pair(x, i, r, 1);
                continue;
            }
        }
        if (!l->mref_len)
            continue;
        head = pb__recon_lookup(&run->record_ref, &x->ks_rec_ref, x->ls + l->mref_off, l->mref_len,
                                l->mref_hash);
        if (head == PB_RECON_NONE)
            continue;
        run->line_flags[i] |= PB__FLAG_LINKED;
        dir = pb__recon_line_dir(l->kind);
        if (dir == PB__DIR_OTHER)
            continue;
        /* exactly one record with this reference, this direction and no gateway reference */
        for (uint32_t j = head; j != PB_RECON_NONE; j = run->record_ref_next[j]) {
            const struct pb__recon_record *o = &x->recs[j];
            if (++steps > PB__RECON_WALK_MAX) {
                count = 2;
                break;
            }
            if (run->record_state[j] == PB__ST_DUPLICATE || o->gw_len ||
                pb__recon_record_dir(o->kind) != dir)
                continue;
            if (++count > 1)
                break;
            cand = j;
        }
        if (count != 1)
            continue;
        /* and exactly one line with this merchant reference in this direction */
        count = steps = 0;
        head = pb__recon_lookup(&run->line_mref, &x->ks_line_mref, x->ls + l->mref_off, l->mref_len,
                                l->mref_hash);
        for (uint32_t j = head; j != PB_RECON_NONE; j = run->line_mref_next[j]) {
            if (++steps > PB__RECON_WALK_MAX) {
                count = 2;
                break;
            }
            if (run->line_state[j] == PB__ST_DUPLICATE ||
                pb__recon_line_dir(x->lines[j].kind) != dir)
                continue;
            if (++count > 1)
                break;
        }
        if (count != 1)
            continue;
        if (run->record_state[cand] != PB__ST_FREE)
            continue; /* cannot happen: the pair is unique on both sides */
        decide_pair(x, i, cand, 0);
    }
}

/* ---- the amount index (rules 2, 3, 4 by amount, 7) ------------------------------------ */

static int record_linked(struct ctx *x, uint32_t r)
{
    const struct pb__recon_record *rec = &x->recs[r];
    struct pb_recon_run *run = x->run;
    if (rec->gw_len && pb__recon_lookup(&run->line_gw, &x->ks_line_gw, x->rs + rec->gw_off,
                                        rec->gw_len, rec->gw_hash) != PB_RECON_NONE)
        return 1;
    if (rec->ref_len && (pb__recon_lookup(&run->line_mref, &x->ks_line_mref, x->rs + rec->ref_off,
                                          rec->ref_len, rec->ref_hash) != PB_RECON_NONE ||
                         pb__recon_lookup(&run->batch_id, &x->ks_batch, x->rs + rec->ref_off,
                                          rec->ref_len, rec->ref_hash) != PB_RECON_NONE))
        return 1;
    return 0;
}

static enum pb_rc build_amount_index(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    struct pb__recon_sort_item *tmp;
    uint32_t n = 0;
    for (uint32_t r = 0; r < x->nr; r++) {
        if (run->record_state[r] != PB__ST_FREE)
            continue;
        /* a record that carries a transactionId is identified: by it, or not at all */
        if (x->recs[r].gw_len || record_linked(x, r))
            run->record_flags[r] |= PB__FLAG_LINKED;
        else
            n++;
    }
    x->items = pb__recon_alloc(((size_t)n + 1) * sizeof(*x->items));
    tmp = pb__recon_alloc(((size_t)n + 1) * sizeof(*tmp));
    x->nf = pb__recon_alloc(((size_t)n + 1) * sizeof(uint32_t));
    x->pf = pb__recon_alloc(((size_t)n + 1) * sizeof(uint32_t));
    if (!x->items || !tmp || !x->nf || !x->pf) {
        pb__recon_free(tmp);
        return PB_ERR_NOMEM;
    }
    for (uint32_t r = 0; r < x->nr; r++) {
        const struct pb__recon_record *rec = &x->recs[r];
        struct pb__recon_sort_item *it;
        if (run->record_state[r] != PB__ST_FREE || (run->record_flags[r] & PB__FLAG_LINKED))
            continue;
        it = &x->items[x->ns++];
        it->amount_key = pb__recon_amount_key(rec->amount);
        it->date_key = pb__recon_date_key(rec->date);
        it->group = (uint16_t)(rec->currency << 2 | (unsigned)pb__recon_record_dir(rec->kind));
        it->unused = 0;
        it->index = r;
        it->unused2 = 0;
    }
    pb__recon_radix_sort(x->items, tmp, x->ns);
    pb__recon_free(tmp);
    for (uint32_t k = 0; k <= x->ns; k++)
        x->nf[k] = x->pf[k] = k;
    return PB_OK;
}

static uint32_t uf_find(uint32_t *a, uint32_t i)
{
    uint32_t root = i;
    while (a[root] != root)
        root = a[root];
    while (a[i] != root) {
        uint32_t t = a[i];
        a[i] = root;
        i = t;
    }
    return root;
}

static void consume(struct ctx *x, uint32_t pos)
{
    x->nf[pos] = pos + 1;
    x->pf[pos + 1] = pos;
}

/* First position in [lo, hi) whose key is >= (g, a, d). */
static uint32_t lower_bound(const struct ctx *x, uint32_t lo, uint32_t hi, uint16_t g, uint64_t a,
                            uint32_t d)
{
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct pb__recon_sort_item *it = &x->items[mid];
        if (it->group < g ||
            (it->group == g && (it->amount_key < a || (it->amount_key == a && it->date_key < d))))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* First position after `pos` whose (group, amount) differs from pos's. */
static uint32_t block_end(const struct ctx *x, uint32_t pos)
{
    uint16_t g = x->items[pos].group;
    uint64_t a = x->items[pos].amount_key;
    uint32_t lo = pos + 1, hi = x->ns;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (x->items[mid].group == g && x->items[mid].amount_key == a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct cand {
    uint32_t pos;
    uint64_t adiff, ddiff;
    uint32_t index;
};

static void consider(struct cand *best, uint32_t pos, uint64_t adiff, uint64_t ddiff,
                     uint32_t index)
{
    if (best->pos == PB_RECON_NONE || adiff < best->adiff ||
        (adiff == best->adiff &&
         (ddiff < best->ddiff || (ddiff == best->ddiff && index < best->index)))) {
        best->pos = pos;
        best->adiff = adiff;
        best->ddiff = ddiff;
        best->index = index;
    }
}

/* The best free record of `group` with |amount - a| <= tol and |date - d| <=
 * window: smallest amount difference first; then, with `earliest`, the
 * earliest date in the window, else the nearest date; then the lowest index.
 * *ambiguous: another candidate was found too. Returns a position or NONE.
 *
 * Why "earliest" for the window passes: their lines are taken in date order
 * with windows of one width, and then taking the earliest free candidate is
 * the greedy that pairs the most (the interval-scheduling argument); taking
 * the nearest lets a line take a later record that a later line needed, and
 * at month end that cascades into false breaks. */
static uint32_t find_best(struct ctx *x, unsigned group, int64_t amount, uint64_t tol, int32_t date,
                          int32_t window, int earliest, int *ambiguous)
{
    __int128 lo128 = (__int128)amount - (__int128)tol, hi128 = (__int128)amount + (__int128)tol;
    int64_t lo = lo128 < INT64_MIN ? INT64_MIN : (int64_t)lo128;
    int64_t hi = hi128 > INT64_MAX ? INT64_MAX : (int64_t)hi128;
    uint64_t hik = pb__recon_amount_key(hi);
    uint32_t dk = pb__recon_date_key(date), pos;
    struct cand best = {PB_RECON_NONE, 0, 0, 0};
    int found = 0;

    *ambiguous = 0;
    if (x->ns == 0)
        return PB_RECON_NONE;
    pos = lower_bound(x, 0, x->ns, (uint16_t)group, pb__recon_amount_key(lo), 0);
    while (pos < x->ns && x->items[pos].group == group && x->items[pos].amount_key <= hik) {
        uint32_t end = block_end(x, pos), p, q, k;
        int64_t a = (int64_t)(x->items[pos].amount_key ^ (1ull << 63));
        uint64_t adiff =
            (uint64_t)((__int128)a - amount < 0 ? -((__int128)a - amount) : (__int128)a - amount);
        int taken = 0;
        if (earliest) {
            uint32_t from = lower_bound(x, pos, end, (uint16_t)group, x->items[pos].amount_key,
                                        pb__recon_date_key(date - window));
            for (q = uf_find(x->nf, from); q < end && taken < 2; q = uf_find(x->nf, q + 1)) {
                int64_t dd = (int64_t)(int32_t)(x->items[q].date_key ^ (1u << 31)) - date;
                if (dd > window)
                    break;
                if (x->run->record_state[x->items[q].index] != PB__ST_FREE) {
                    consume(x, q);
                    continue;
                }
                /* rank by position in the window: earliest first */
                consider(&best, q, adiff, (uint64_t)(dd + window), x->items[q].index);
                found++;
                taken++;
            }
            pos = end;
            continue;
        }
        p = lower_bound(x, pos, end, (uint16_t)group, x->items[pos].amount_key, dk);
        /* the nearest free ones at or after the date */
        for (q = uf_find(x->nf, p); q < end && taken < 2; q = uf_find(x->nf, q + 1)) {
            int64_t dd = (int64_t)(int32_t)(x->items[q].date_key ^ (1u << 31)) - date;
            if (dd > window)
                break;
            if (x->run->record_state[x->items[q].index] != PB__ST_FREE) {
                consume(x, q);
                continue;
            }
            consider(&best, q, adiff, (uint64_t)dd, x->items[q].index);
            found++;
            taken++;
        }
        /* and before it */
        taken = 0;
        for (k = uf_find(x->pf, p); k > pos && taken < 2; k = uf_find(x->pf, k - 1)) {
            uint32_t at = k - 1;
            int64_t dd = date - (int64_t)(int32_t)(x->items[at].date_key ^ (1u << 31));
            if (dd > window)
                break;
            if (x->run->record_state[x->items[at].index] != PB__ST_FREE) {
                consume(x, at);
                continue;
            }
            consider(&best, at, adiff, (uint64_t)dd, x->items[at].index);
            found++;
            taken++;
        }
        pos = end;
    }
    *ambiguous = found > 1;
    return best.pos;
}

/* A free line whose order has a free line of the other direction in the same
 * batch (a sale and its refund) belongs to rule 6: the amount rules skip it. */
static void reserve_netting(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    for (uint32_t i = 0; i < x->nl; i++) {
        const struct pb__recon_line *l = &x->lines[i];
        uint32_t head, steps = 0;
        int dir = pb__recon_line_dir(l->kind);
        if (run->line_state[i] != PB__ST_FREE || (run->line_flags[i] & PB__FLAG_LINKED) ||
            !l->mref_len || dir == PB__DIR_OTHER)
            continue;
        head = pb__recon_lookup(&run->line_mref, &x->ks_line_mref, x->ls + l->mref_off, l->mref_len,
                                l->mref_hash);
        for (uint32_t j = head; j != PB_RECON_NONE && steps++ < PB__RECON_WALK_MAX;
             j = run->line_mref_next[j]) {
            const struct pb__recon_line *o = &x->lines[j];
            if (o->batch == l->batch && run->line_state[j] == PB__ST_FREE &&
                pb__recon_line_dir(o->kind) == (dir == PB__DIR_IN ? PB__DIR_OUT : PB__DIR_IN)) {
                run->line_flags[i] |= PB__FLAG_LINKED;
                break;
            }
        }
    }
}

/* The free, unlinked lines in (settled date, index) order: the order of the
 * window passes. Returns an array from pb__recon_alloc (NULL, *n = 0: none). */
static uint32_t *lines_by_date(struct ctx *x, uint32_t *n)
{
    struct pb_recon_run *run = x->run;
    struct pb__recon_sort_item *items, *tmp;
    uint32_t count = 0, *out;
    *n = 0;
    for (uint32_t i = 0; i < x->nl; i++)
        count += run->line_state[i] == PB__ST_FREE && !(run->line_flags[i] & PB__FLAG_LINKED);
    if (!count)
        return NULL;
    items = pb__recon_alloc((size_t)count * sizeof(*items));
    tmp = pb__recon_alloc((size_t)count * sizeof(*tmp));
    out = pb__recon_alloc((size_t)count * sizeof(uint32_t));
    if (!items || !tmp || !out) {
        pb__recon_free(items);
        pb__recon_free(tmp);
        pb__recon_free(out);
        x->rc = PB_ERR_NOMEM;
        return NULL;
    }
    for (uint32_t i = 0, k = 0; i < x->nl; i++)
        if (run->line_state[i] == PB__ST_FREE && !(run->line_flags[i] & PB__FLAG_LINKED)) {
            items[k].date_key = pb__recon_date_key(x->lines[i].settled_date);
            items[k++].index = i;
        }
    pb__recon_radix_sort(items, tmp, count); /* stable: ties keep index order */
    for (uint32_t k = 0; k < count; k++)
        out[k] = items[k].index;
    pb__recon_free(items);
    pb__recon_free(tmp);
    *n = count;
    return out;
}

/* Rules 2 and 3 in one pass: lines in date order, each taking the oldest free
 * record of its amount within the window (first in, first out). The pair is
 * rule 2 when that record is on the line's day, else rule 3. One pass, not a
 * same-day pass then a window pass: a same-day pass takes records that the
 * lines of earlier days needed, and the breaks it causes pile up at month end. */
static void rule_amount(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    int32_t window = run->cfg.date_window_days;
    uint32_t n, *order = lines_by_date(x, &n);
    for (uint32_t k = 0; k < n && !x->rc; k++) {
        uint32_t i = order[k];
        const struct pb__recon_line *l = &x->lines[i];
        const struct pb__recon_record *rec;
        unsigned group;
        uint32_t pos, r;
        int64_t diff, dd;
        int ambiguous, conf;
        if (run->line_state[i] != PB__ST_FREE || (run->line_flags[i] & PB__FLAG_LINKED))
            continue;
        group = (unsigned)l->currency << 2 | (unsigned)pb__recon_line_dir(l->kind);
        pos = find_best(x, group, l->amount, (uint64_t)run->currencies[l->currency].tolerance,
                        l->settled_date, window, 1, &ambiguous);
        if (pos == PB_RECON_NONE)
            continue;
        r = x->items[pos].index;
        rec = &x->recs[r];
        if (__builtin_sub_overflow(l->amount, rec->amount, &diff))
            continue;
        consume(x, pos);
        dd = (int64_t)l->settled_date - rec->date;
        if (dd < 0)
            dd = -dd;
        if (dd == 0)
            conf = diff ? 75 : 85;
        else
            conf = (dd * 5 > 25 ? 55 : 80 - (int)dd * 5) - (diff ? 10 : 0);
        if (ambiguous)
            conf -= 15;
        emit_match(x, dd == 0 ? PB_RECON_RULE_AMOUNT : PB_RECON_RULE_DATE_WINDOW, conf, &i, 1, &r,
                   1, PB_RECON_NONE, diff, l->currency, NO_RATE);
    }
    pb__recon_free(order);
}

/* ---- rule 4: batches -------------------------------------------------------------------- */

static void rule_batch(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    for (uint32_t b = 0; b < x->nb && !x->rc; b++) {
        const struct pb__recon_batch *B = &x->batches[b];
        uint64_t tol = (uint64_t)run->currencies[B->currency].tolerance;
        int64_t payout, expected, header_net, diff;
        uint32_t head, deposit = PB_RECON_NONE, steps = 0;
        int lines_ok =
            !B->sums_overflow && !__builtin_sub_overflow(B->lines_gross, B->lines_fees, &expected);

        if (B->has_header) {
            int header_ok =
                !__builtin_sub_overflow(B->gross, B->fees, &header_net) && header_net == B->net;
            int sums_ok = lines_ok && B->lines_gross == B->gross && B->lines_fees == B->fees;
            if (!header_ok || !sums_ok) {
                int64_t d = 0;
                if (lines_ok && expected != B->net)
                    __builtin_sub_overflow(B->net, expected, &d);
                else if (!header_ok)
                    __builtin_sub_overflow(B->net, header_net, &d);
                else if (lines_ok)
                    __builtin_sub_overflow(B->gross, B->lines_gross, &d);
                emit_break(x, PB_RECON_BREAK_BATCH_UNBALANCED,
                           PB_RECON_ACTION_REQUEST_CORRECTED_REPORT, 0, PB_RECON_SETTLEMENT, NULL,
                           0, NULL, 0, b, PB_RECON_NONE, d, B->currency);
            }
            payout = B->net;
        } else {
            if (!lines_ok || B->line_count == 0)
                continue;
            payout = expected;
        }
        /* the deposit that names the batch */
        head = pb__recon_lookup(&run->record_ref, &x->ks_rec_ref, x->ls + B->id_off, B->id_len,
                                B->id_hash);
        for (uint32_t j = head; j != PB_RECON_NONE && steps++ < PB__RECON_WALK_MAX;
             j = run->record_ref_next[j]) {
            const struct pb__recon_record *o = &x->recs[j];
            if (run->record_state[j] == PB__ST_FREE && o->currency == B->currency &&
                (o->kind == PB_RECON_RECORD_JOURNAL || o->kind == PB_RECON_RECORD_PAYMENT)) {
                deposit = j;
                break;
            }
        }
        if (deposit != PB_RECON_NONE) {
            if (!__builtin_sub_overflow(payout, x->recs[deposit].amount, &diff) &&
                mag(diff) <= tol) {
                emit_match(x, PB_RECON_RULE_BATCH, diff ? 85 : 95, NULL, 0, &deposit, 1, b, diff,
                           B->currency, NO_RATE);
            } else {
                if (__builtin_sub_overflow(payout, x->recs[deposit].amount, &diff))
                    diff = payout < 0 ? INT64_MIN : INT64_MAX;
                emit_break(x, PB_RECON_BREAK_AMOUNT_DIFFERS, PB_RECON_ACTION_REVIEW_AMOUNT,
                           auto_adjustable(run, B->currency, diff), PB_RECON_LEDGER, NULL, 0,
                           &deposit, 1, b, PB_RECON_NONE, diff, B->currency);
            }
            continue;
        }
        if (B->date != PB_RECON_DATE_NONE) {
            int ambiguous;
            uint32_t pos = find_best(x, (unsigned)B->currency << 2 | PB__DIR_OTHER, payout, tol,
                                     B->date, run->cfg.date_window_days, 0, &ambiguous);
            if (pos != PB_RECON_NONE) {
                uint32_t r = x->items[pos].index;
                consume(x, pos);
                emit_match(x, PB_RECON_RULE_BATCH, 70 - (ambiguous ? 15 : 0), NULL, 0, &r, 1, b,
                           payout - x->recs[r].amount, B->currency, NO_RATE);
            }
        }
    }
}

/* ---- rule 5: many lines to one record ------------------------------------------------------ */

/* Collect the free lines of a reference chain with a direction and a
 * currency (and a batch unless NONE). Returns the count, or -1 when the group
 * is too big or the walk too long. */
static int collect(struct ctx *x, uint32_t head, int dir, unsigned cur, uint32_t batch,
                   uint32_t out[PB__RECON_GROUP_MAX], int64_t *sum)
{
    struct pb_recon_run *run = x->run;
    uint32_t steps = 0;
    int n = 0;
    *sum = 0;
    for (uint32_t j = head; j != PB_RECON_NONE; j = run->line_mref_next[j]) {
        const struct pb__recon_line *l = &x->lines[j];
        if (++steps > PB__RECON_WALK_MAX)
            return -1;
        if (run->line_state[j] != PB__ST_FREE || pb__recon_line_dir(l->kind) != dir ||
            l->currency != cur || (batch != PB_RECON_NONE && l->batch != batch))
            continue;
        if (n == PB__RECON_GROUP_MAX || __builtin_add_overflow(*sum, l->amount, sum))
            return -1;
        out[n++] = j;
    }
    return n;
}

static void rule_many_to_one(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    uint32_t group[PB__RECON_GROUP_MAX];
    for (uint32_t r = 0; r < x->nr && !x->rc; r++) {
        const struct pb__recon_record *rec = &x->recs[r];
        uint32_t head;
        int64_t sum;
        int dir = pb__recon_record_dir(rec->kind), n;
        if (run->record_state[r] != PB__ST_FREE || !rec->ref_len || dir == PB__DIR_OTHER)
            continue;
        head = pb__recon_lookup(&run->line_mref, &x->ks_line_mref, x->rs + rec->ref_off,
                                rec->ref_len, rec->ref_hash);
        if (head == PB_RECON_NONE)
            continue;
        n = collect(x, head, dir, rec->currency, PB_RECON_NONE, group, &sum);
        if (n >= 2 && sum == rec->amount)
            emit_match(x, PB_RECON_RULE_MANY_TO_ONE, 90, group, (uint32_t)n, &r, 1, PB_RECON_NONE,
                       0, rec->currency, NO_RATE);
    }
}

/* ---- rule 6: netting within a batch ------------------------------------------------------- */

static void rule_netting(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    uint32_t group[PB__RECON_GROUP_MAX];
    for (uint32_t i = 0; i < x->nl && !x->rc; i++) {
        const struct pb__recon_line *l = &x->lines[i];
        uint32_t head, held = PB_RECON_NONE, steps = 0, r;
        int64_t sum = 0;
        int n = 0, sales = 0, bad = 0;
        if (run->line_state[i] != PB__ST_FREE || pb__recon_line_dir(l->kind) != PB__DIR_OUT ||
            !l->mref_len)
            continue;
        head = pb__recon_lookup(&run->line_mref, &x->ks_line_mref, x->ls + l->mref_off, l->mref_len,
                                l->mref_hash);
        for (uint32_t j = head; j != PB_RECON_NONE && !bad; j = run->line_mref_next[j]) {
            const struct pb__recon_line *o = &x->lines[j];
            uint8_t st = run->line_state[j];
            int dir = pb__recon_line_dir(o->kind);
            if (++steps > PB__RECON_WALK_MAX) {
                bad = 1;
                break;
            }
            if (o->batch != l->batch || o->currency != l->currency || dir == PB__DIR_OTHER)
                continue;
            if (st == PB__ST_HELD && dir == PB__DIR_IN) {
                if (held != PB_RECON_NONE && held != run->line_link[j])
                    bad = 1;
                held = run->line_link[j];
            } else if (st != PB__ST_FREE) {
                continue;
            }
            if (n == PB__RECON_GROUP_MAX || __builtin_add_overflow(sum, o->amount, &sum)) {
                bad = 1;
                break;
            }
            group[n++] = j;
            sales += dir == PB__DIR_IN;
        }
        if (bad || sales == 0)
            continue;
        if (held != PB_RECON_NONE) {
            if (x->recs[held].currency == l->currency && x->recs[held].amount == sum)
                emit_match(x, PB_RECON_RULE_NETTING, 85, group, (uint32_t)n, &held, 1, l->batch, 0,
                           l->currency, NO_RATE);
            continue;
        }
        if (sum == 0) {
            emit_match(x, PB_RECON_RULE_NETTING, 80, group, (uint32_t)n, NULL, 0, l->batch, 0,
                       l->currency, NO_RATE);
            continue;
        }
        /* the one payment the ERP holds for the order, of the net amount */
        steps = 0;
        head = pb__recon_lookup(&run->record_ref, &x->ks_rec_ref, x->ls + l->mref_off, l->mref_len,
                                l->mref_hash);
        for (r = head; r != PB_RECON_NONE && steps++ < PB__RECON_WALK_MAX;
             r = run->record_ref_next[r]) {
            const struct pb__recon_record *o = &x->recs[r];
            if (run->record_state[r] == PB__ST_FREE && o->kind == PB_RECON_RECORD_PAYMENT &&
                o->currency == l->currency && o->amount == sum) {
                emit_match(x, PB_RECON_RULE_NETTING, 85, group, (uint32_t)n, &r, 1, l->batch, 0,
                           l->currency, NO_RATE);
                break;
            }
        }
    }
}

/* ---- rule 7 by amount ----------------------------------------------------------------------- */

static void rule_fx_amount(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    uint32_t n, *order;
    if (run->rate_count == 0)
        return;
    order = lines_by_date(x, &n);
    for (uint32_t k = 0; k < n && !x->rc; k++) {
        uint32_t i = order[k];
        const struct pb__recon_line *l = &x->lines[i];
        if (run->line_state[i] != PB__ST_FREE)
            continue;
        for (uint32_t q = 0; q < run->rate_count; q++) {
            const struct pb__recon_rate *rt = &run->rates[q];
            int64_t conv;
            uint32_t pos, r;
            int ambiguous;
            if (rt->from != l->currency)
                continue;
            if (pb_money_convert(l->amount, run->currencies[rt->from].code,
                                 run->currencies[rt->to].code, rt->text, &conv, NULL))
                continue;
            /* no reference vouches for the pair: the converted amount must agree within
             * the currency's own tolerance; fx_tolerance_bp is for reference pairs */
            pos = find_best(x, (unsigned)rt->to << 2 | (unsigned)pb__recon_line_dir(l->kind), conv,
                            (uint64_t)run->currencies[rt->to].tolerance, l->settled_date,
                            run->cfg.date_window_days, 1, &ambiguous);
            if (pos == PB_RECON_NONE)
                continue;
            r = x->items[pos].index;
            consume(x, pos);
            emit_match(x, PB_RECON_RULE_FX, 60 - (ambiguous ? 15 : 0), &i, 1, &r, 1, PB_RECON_NONE,
                       conv - x->recs[r].amount, rt->to, (uint16_t)q);
            break;
        }
    }
    pb__recon_free(order);
}

/* ---- checks on every line -------------------------------------------------------------------- */

static enum pb_rc build_contracts(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    const struct pb__recon_names *names = &run->settlement.names;
    size_t n = (size_t)(names->count ? names->count : 1) * 256;
    run->contract_for = pb__recon_alloc(n * sizeof(int16_t));
    if (!run->contract_for)
        return PB_ERR_NOMEM;
    for (size_t k = 0; k < n; k++)
        run->contract_for[k] = -1;
    for (uint32_t k = 0; k < run->contract_count && k < INT16_MAX; k++) {
        const struct pb__recon_contract *c = &run->contracts[k];
        for (uint32_t g = 0; g < names->count; g++) {
            if (names->items[g].len == c->gateway_len &&
                memcmp(x->ls + names->items[g].off, run->contract_names + c->gateway_off,
                       c->gateway_len) == 0 &&
                run->contract_for[(size_t)g * 256 + c->currency] < 0)
                run->contract_for[(size_t)g * 256 + c->currency] = (int16_t)k;
        }
    }
    return PB_OK;
}

static void line_checks(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    for (uint32_t i = 0; i < x->nl && !x->rc; i++) {
        const struct pb__recon_line *l = &x->lines[i];
        int k = run->contract_for[(size_t)l->gateway * 256 + l->currency];
        int32_t lag = run->cfg.settlement_lag_days;
        if (run->line_state[i] == PB__ST_DUPLICATE)
            continue;
        if (k >= 0 && l->kind == PB_RECON_LINE_SALE) {
            const struct pb__recon_contract *c = &run->contracts[k];
            unsigned __int128 exact = (unsigned __int128)mag(l->amount) * c->fee_bp;
            __int128 lo = (__int128)(exact / 10000) + c->fee_fixed;
            __int128 hi = (__int128)((exact + 9999) / 10000) + c->fee_fixed;
            if ((__int128)l->fee < lo || (__int128)l->fee > hi) {
                __int128 expected = (__int128)((exact + 5000) / 10000) + c->fee_fixed;
                __int128 d = (__int128)l->fee - expected;
                int64_t amount = d > INT64_MAX ? INT64_MAX : d < INT64_MIN ? INT64_MIN : (int64_t)d;
                emit_break(x, PB_RECON_BREAK_FEE_OUT_OF_CONTRACT, PB_RECON_ACTION_DISPUTE_FEE,
                           auto_adjustable(run, l->currency, amount), PB_RECON_SETTLEMENT, &i, 1,
                           NULL, 0, l->batch, PB_RECON_NONE, amount, l->currency);
            }
        }
        if (k >= 0 && run->contracts[k].lag_days >= 0)
            lag = run->contracts[k].lag_days;
        if ((int64_t)l->value_date - l->settled_date > lag)
            emit_break(x, PB_RECON_BREAK_SETTLEMENT_LATE, PB_RECON_ACTION_CHASE_LATE_SETTLEMENT, 0,
                       PB_RECON_SETTLEMENT, &i, 1, NULL, 0, l->batch, PB_RECON_NONE, l->amount,
                       l->currency);
    }
}

/* ---- leftovers ------------------------------------------------------------------------------ */

static void duplicates(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    for (uint32_t i = 0; i < x->nl; i++)
        if (run->line_state[i] == PB__ST_DUPLICATE)
            emit_break(x, PB_RECON_BREAK_DUPLICATE, PB_RECON_ACTION_RAISE_DUPLICATE_WITH_GATEWAY, 0,
                       PB_RECON_SETTLEMENT, &i, 1, NULL, 0, x->lines[i].batch, run->line_link[i],
                       x->lines[i].amount, x->lines[i].currency);
    for (uint32_t r = 0; r < x->nr; r++)
        if (run->record_state[r] == PB__ST_DUPLICATE)
            emit_break(x, PB_RECON_BREAK_DUPLICATE, PB_RECON_ACTION_VOID_DUPLICATE_RECORD, 0,
                       PB_RECON_LEDGER, NULL, 0, &r, 1, PB_RECON_NONE, run->record_link[r],
                       x->recs[r].amount == INT64_MIN ? INT64_MAX : -x->recs[r].amount,
                       x->recs[r].currency);
}

static void leftovers(struct ctx *x)
{
    struct pb_recon_run *run = x->run;
    const uint32_t *held = run->held.data;
    uint32_t group[PB__RECON_GROUP_MAX];
    int64_t as_of_limit = (int64_t)run->as_of - run->cfg.settlement_lag_days;

    for (uint64_t k = 0; k < run->held.count && !x->rc; k++) {
        uint32_t i = held[2 * k], r = held[2 * k + 1];
        const struct pb__recon_line *l = &x->lines[i];
        const struct pb__recon_record *rec = &x->recs[r];
        int64_t diff = 0;
        unsigned cur = rec->currency;
        int comparable = 1;
        if (run->line_state[i] != PB__ST_HELD || run->record_state[r] != PB__ST_HELD)
            continue;
        if (l->currency == rec->currency) {
            if (__builtin_sub_overflow(l->amount, rec->amount, &diff))
                diff = l->amount < 0 ? INT64_MIN : INT64_MAX;
        } else {
            uint16_t rate;
            uint64_t tol;
            comparable = fx_compare(run, l, rec, &diff, &cur, &rate, &tol);
            if (!comparable)
                diff = 0; /* no rate: the amounts cannot be compared */
        }
        emit_break(x, PB_RECON_BREAK_AMOUNT_DIFFERS, PB_RECON_ACTION_REVIEW_AMOUNT,
                   comparable && auto_adjustable(run, cur, diff), PB_RECON_SETTLEMENT, &i, 1, &r, 1,
                   l->batch, PB_RECON_NONE, diff, cur);
    }
    /* records linked by reference to lines that never balanced with them */
    for (uint32_t r = 0; r < x->nr && !x->rc; r++) {
        const struct pb__recon_record *rec = &x->recs[r];
        int dir = pb__recon_record_dir(rec->kind), n;
        uint32_t head;
        int64_t sum, diff;
        if (run->record_state[r] != PB__ST_FREE || !rec->ref_len || dir == PB__DIR_OTHER)
            continue;
        head = pb__recon_lookup(&run->line_mref, &x->ks_line_mref, x->rs + rec->ref_off,
                                rec->ref_len, rec->ref_hash);
        if (head == PB_RECON_NONE)
            continue;
        n = collect(x, head, dir, rec->currency, PB_RECON_NONE, group, &sum);
        if (n <= 0)
            continue;
        if (__builtin_sub_overflow(sum, rec->amount, &diff))
            diff = sum < 0 ? INT64_MIN : INT64_MAX;
        emit_break(x, PB_RECON_BREAK_AMOUNT_DIFFERS, PB_RECON_ACTION_REVIEW_AMOUNT,
                   auto_adjustable(run, rec->currency, diff), PB_RECON_LEDGER, group, (uint32_t)n,
                   &r, 1, PB_RECON_NONE, PB_RECON_NONE, diff, rec->currency);
    }
    for (uint32_t i = 0; i < x->nl && !x->rc; i++) {
        const struct pb__recon_line *l = &x->lines[i];
        int journal = l->kind == PB_RECON_LINE_FEE || l->kind == PB_RECON_LINE_ADJUSTMENT;
        if (run->line_state[i] != PB__ST_FREE)
            continue;
        emit_break(x, PB_RECON_BREAK_MISSING_IN_ERP, PB_RECON_ACTION_POST_TO_ERP,
                   journal && auto_adjustable(run, l->currency, l->amount), PB_RECON_SETTLEMENT, &i,
                   1, NULL, 0, l->batch, PB_RECON_NONE, l->amount, l->currency);
    }
    for (uint32_t r = 0; r < x->nr && !x->rc; r++) {
        const struct pb__recon_record *rec = &x->recs[r];
        if (run->record_state[r] != PB__ST_FREE)
            continue;
        if ((int64_t)rec->date > as_of_limit) {
            run->pending_records++;
            continue;
        }
        emit_break(x, PB_RECON_BREAK_NOT_SETTLED, PB_RECON_ACTION_ASK_GATEWAY_STATUS, 0,
                   PB_RECON_LEDGER, NULL, 0, &r, 1, PB_RECON_NONE, PB_RECON_NONE,
                   rec->amount == INT64_MIN ? INT64_MAX : -rec->amount, rec->currency);
    }
}

/* ---- the run ----------------------------------------------------------------------------------
 */

enum pb_rc pb__recon_rules_run(struct pb_recon_run *run, struct pb_err *err)
{
    struct ctx x;
    struct pb__recon_settlement *s = &run->settlement;
    struct pb__recon_ledger *g = &run->ledger;
    enum pb_rc rc;

    memset(&x, 0, sizeof(x));
    x.run = run;
    x.lines = s->lines;
    x.recs = g->records;
    x.batches = s->batches;
    x.ls = s->strings.data ? s->strings.data : "";
    x.rs = g->strings.data ? g->strings.data : "";
    x.nl = s->line_count;
    x.nr = g->record_count;
    x.nb = s->batch_count;
    x.ks_line_gw = (struct pb__recon_keyspec){(const char *)s->lines, sizeof(*s->lines),
                                              offsetof(struct pb__recon_line, gw_off),
                                              offsetof(struct pb__recon_line, gw_len), x.ls};
    x.ks_line_mref = (struct pb__recon_keyspec){(const char *)s->lines, sizeof(*s->lines),
                                                offsetof(struct pb__recon_line, mref_off),
                                                offsetof(struct pb__recon_line, mref_len), x.ls};
    x.ks_rec_gw = (struct pb__recon_keyspec){(const char *)g->records, sizeof(*g->records),
                                             offsetof(struct pb__recon_record, gw_off),
                                             offsetof(struct pb__recon_record, gw_len), x.rs};
    x.ks_rec_ref = (struct pb__recon_keyspec){(const char *)g->records, sizeof(*g->records),
                                              offsetof(struct pb__recon_record, ref_off),
                                              offsetof(struct pb__recon_record, ref_len), x.rs};
    x.ks_batch = (struct pb__recon_keyspec){(const char *)s->batches, sizeof(*s->batches),
                                            offsetof(struct pb__recon_batch, id_off),
                                            offsetof(struct pb__recon_batch, id_len), x.ls};

    duplicates(&x);
    rule_reference(&x);
    if (!x.rc && (rc = build_amount_index(&x)))
        x.rc = rc;
    if (!x.rc) {
        reserve_netting(&x);
        rule_amount(&x);
        rule_batch(&x);
        rule_many_to_one(&x);
        rule_netting(&x);
        rule_fx_amount(&x);
    }
    if (!x.rc && (rc = build_contracts(&x)))
        x.rc = rc;
    if (!x.rc) {
        line_checks(&x);
        leftovers(&x);
    }
    pb__recon_free(x.items);
    pb__recon_free(x.nf);
    pb__recon_free(x.pf);
    if (x.rc)
        return pb_err_set(err, x.rc, "reconciliation ran out of memory (%u lines, %u records)",
                          x.nl, x.nr);
    return PB_OK;
}

enum pb_rc pb_recon_match(struct pb_recon_run *run, struct pb_err *err)
{
    enum pb_rc rc;
    if (!run || run->magic != PB__RECON_MAGIC)
        return pb_err_set(err, PB_ERR_INTERNAL, "not a reconciliation run");
    if (run->matched)
        return pb_err_set(err, PB_ERR_INVALID, "the run has been matched already");
    run->matched = 1;
    rc = pb__recon_index_build(run, err);
    if (rc)
        return rc;
    return pb__recon_rules_run(run, err);
}
