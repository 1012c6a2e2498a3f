/*
 * recon/recon_run.c: a reconciliation run's life: configuration, memory,
 * adding batches, lines and records, reading them back, names and dates.
 *
 * What it owns. The run struct and every array in it (see
 * recon_internal.h): two string arenas, the line, batch and record arrays,
 * the interned gateway and ERP names, the problem lists, and the copy of the
 * configuration. pb_recon_destroy() frees all of it; there is no other free.
 *
 * Memory. Nothing is allocated per record. Arrays grow by doubling, each up
 * to a configured maximum (passing it is PB_ERR_TOOBIG, never an abort), in
 * blocks from pb__recon_alloc(): from 1 MiB up these are anonymous mappings
 * advised for transparent huge pages and grown with mremap, so growth never
 * copies and a million-line run takes a few hundred page faults instead of
 * ~90,000 (measured: system time 0.9 s -> see docs/reconciliation.md). Strings are copied once into
 * their side's arena and named by a 32-bit offset, so an arena may hold at most 4 GiB.
 *
 * Currencies. Once per process, every AAA..ZZZ code is asked of
 * core/money.c and the valid ones get an 8-bit index (each run copies the
 * 17 KB table); after that a code is checked and indexed with one array read
 * and no lock, which is what lets the two loader threads share the table.
 * Per-currency tolerances ride on the same entry.
 *
 * Invariants checked on the way in (so the rules never have to): references
 * are at most PB_RECON_STRING_MAX bytes; sales and payments are >= 0, refunds,
 * chargebacks, refund records and credit notes are <= 0; every line belongs to
 * a batch keyed by (gateway, batch_id, currency), created on first sight; a
 * batch has at most one header.
 *
 * Rejected designs. Interning every string (references are nearly all
 * distinct, so a table would cost more than the bytes it saves). A lock on
 * the currency table (two loaders would contend on every line).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/money.h"
#include "recon/recon_internal.h"

/* ---- hashing ------------------------------------------------------------------ */

static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t read64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t read32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

uint64_t pb__recon_hash(const char *p, size_t n)
{
    const uint64_t s0 = 0xa0761d6478bd642full, s1 = 0xe7037ed1a0b428dbull,
                   s2 = 0x8ebc6af09c88c6e3ull;
    uint64_t seed = 0x243f6a8885a308d3ull ^ mum(0x243f6a8885a308d3ull ^ s0, s1);
    uint64_t a, b;
    if (n <= 16) {
        if (n >= 4) {
            size_t q = (n >> 3) << 2;
            a = (read32(p) << 32) | read32(p + q);
            b = (read32(p + n - 4) << 32) | read32(p + n - 4 - q);
        } else if (n > 0) {
            a = ((uint64_t)(unsigned char)p[0] << 16) | ((uint64_t)(unsigned char)p[n >> 1] << 8) |
                (uint64_t)(unsigned char)p[n - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        size_t i = n;
        while (i > 16) {
            seed = mum(read64(p) ^ s1, read64(p + 8) ^ seed);
            p += 16;
            i -= 16;
        }
        a = read64(p + i - 16);
        b = read64(p + i - 8);
    }
    a ^= s1;
    b ^= seed;
    {
        __uint128_t r = (__uint128_t)a * b;
        a = (uint64_t)r;
        b = (uint64_t)(r >> 64);
    }
    return mum(a ^ s0 ^ (uint64_t)n, b ^ s2);
}

/* ---- memory primitives -------------------------------------------------------------- */

/* Under AddressSanitizer every block comes from calloc: mmap'd blocks have no
 * redzones and are invisible to the leak checker, and the ASan build is where
 * leaks and overflows must show. */
#if defined(__SANITIZE_ADDRESS__)
#define PLAIN_BLOCKS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PLAIN_BLOCKS 1
#endif
#endif
#ifdef PLAIN_BLOCKS
#define BIG_BLOCK SIZE_MAX
#else
#define BIG_BLOCK (1u << 20)
#endif
#define HUGE_PAGE (2u << 20)

struct block {
    uint64_t size;      /* bytes of the whole block, this header included */
    uint64_t mapped;    /* 1: an mmap'd region; 0: from calloc */
    uint64_t unused[6]; /* 64 bytes: keeps the payload cache-line aligned */
};

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

static struct block *map_block(size_t total)
{
    void *base;
    total = round_up(total, HUGE_PAGE);
    base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    madvise(base, total, MADV_HUGEPAGE);
    ((struct block *)base)->size = total;
    ((struct block *)base)->mapped = 1;
    return base;
}

void *pb__recon_alloc(size_t size)
{
    size_t total = size + sizeof(struct block);
    struct block *b;
    if (total < size)
        return NULL;
    if (total < BIG_BLOCK) {
        b = calloc(1, total);
        if (!b)
            return NULL;
        b->size = total;
        b->mapped = 0;
    } else if (!(b = map_block(total))) {
        return NULL;
    }
    return b + 1;
}

void *pb__recon_realloc(void *p, size_t size)
{
    struct block *b, *nb;
    size_t total = size + sizeof(struct block);
    void *base;
    if (!p)
        return pb__recon_alloc(size);
    b = (struct block *)p - 1;
    if (total < size)
        return NULL;
    if (total <= b->size)
        return p;
    if (!b->mapped) {
        if (total < BIG_BLOCK) {
            uint64_t old = b->size;
            nb = realloc(b, total);
            if (!nb)
                return NULL;
            memset((char *)nb + old, 0, total - old);
            nb->size = total;
            return nb + 1;
        }
        if (!(nb = map_block(total)))
            return NULL;
        memcpy(nb + 1, p, b->size - sizeof(struct block));
        free(b);
        return nb + 1;
    }
    total = round_up(total, HUGE_PAGE);
    base = mremap(b, b->size, total, MREMAP_MAYMOVE);
    if (base == MAP_FAILED)
        return NULL;
    madvise(base, total, MADV_HUGEPAGE);
    ((struct block *)base)->size = total;
    return (struct block *)base + 1;
}

void pb__recon_free(void *p)
{
    struct block *b;
    if (!p)
        return;
    b = (struct block *)p - 1;
    if (b->mapped)
        munmap(b, b->size);
    else
        free(b);
}

int pb__recon_strings_add(struct pb__recon_strings *s, const char *p, size_t n, uint32_t *off)
{
    if (n == 0) {
        *off = 0;
        return 0;
    }
    if (s->len + n > s->max)
        return -1;
    if (s->len + n > s->cap) {
        uint64_t cap = s->cap ? s->cap * 2 : (1u << 20);
        char *data;
        while (cap < s->len + n)
            cap *= 2;
        if (cap > s->max)
            cap = s->max;
        data = pb__recon_realloc(s->data, cap);
        if (!data)
            return -1;
        s->data = data;
        s->cap = cap;
    }
    memcpy(s->data + s->len, p, n);
    *off = (uint32_t)s->len;
    s->len += n;
    return 0;
}

int pb__recon_table_init(struct pb__recon_table *t, uint64_t expected)
{
    uint64_t cap = 16;
    while (cap < 2 * expected)
        cap <<= 1;
    if (cap > (1ull << 31))
        return -1;
    t->slots = pb__recon_alloc(cap * sizeof(uint64_t));
    if (!t->slots)
        return -1;
    t->mask = (uint32_t)(cap - 1);
    t->count = 0;
    return 0;
}

void pb__recon_table_free(struct pb__recon_table *t)
{
    pb__recon_free(t->slots);
    t->slots = NULL;
    t->mask = 0;
    t->count = 0;
}

int pb__recon_table_grow(struct pb__recon_table *t, uint64_t (*hash_of)(const void *, uint32_t),
                         const void *ctx)
{
    uint64_t old_cap = (uint64_t)t->mask + 1, cap = old_cap * 2;
    uint64_t *slots;
    if (cap > (1ull << 31))
        return -1;
    slots = pb__recon_alloc(cap * sizeof(uint64_t));
    if (!slots)
        return -1;
    for (uint64_t i = 0; i < old_cap; i++) {
        uint64_t s = t->slots[i], h;
        uint32_t pos;
        if (!s)
            continue;
        h = hash_of(ctx, (uint32_t)s - 1);
        pos = (uint32_t)h & (uint32_t)(cap - 1);
        while (slots[pos])
            pos = (pos + 1) & (uint32_t)(cap - 1);
        slots[pos] = s;
    }
    pb__recon_free(t->slots);
    t->slots = slots;
    t->mask = (uint32_t)(cap - 1);
    return 0;
}

int pb__recon_vec_extend(struct pb__recon_vec *v, uint64_t n, uint64_t *first)
{
    if (v->count + n > v->cap) {
        uint64_t cap = v->cap ? v->cap * 2 : 1024;
        void *data;
        while (cap < v->count + n)
            cap *= 2;
        data = pb__recon_realloc(v->data, cap * v->elem);
        if (!data)
            return -1;
        v->data = data;
        v->cap = cap;
    }
    if (first)
        *first = v->count;
    v->count += n;
    return 0;
}

int pb__recon_vec_push(struct pb__recon_vec *v, const void *elem)
{
    uint64_t at;
    if (pb__recon_vec_extend(v, 1, &at))
        return -1;
    memcpy((char *)v->data + at * v->elem, elem, v->elem);
    return 0;
}

void pb__recon_vec_free(struct pb__recon_vec *v)
{
    pb__recon_free(v->data);
    v->data = NULL;
    v->count = v->cap = 0;
}

/* Grow an array of `elem`-byte items to hold one more, up to `max` items. */
static int array_reserve(void **data, uint32_t *cap, uint32_t count, uint32_t max, size_t elem)
{
    uint64_t want;
    void *p;
    if (count < *cap)
        return 0;
    if (count >= max)
        return -1;
    want = *cap ? (uint64_t)*cap * 2 : 4096;
    if (want > max)
        want = max;
    p = pb__recon_realloc(*data, want * elem);
    if (!p)
        return -1;
    *data = p;
    *cap = (uint32_t)want;
    return 0;
}

/* ---- names ------------------------------------------------------------------------ */

static uint64_t name_hash_of(const void *ctx, uint32_t index)
{
    return ((const struct pb__recon_names *)ctx)->items[index].hash;
}

/* Intern a gateway or ERP name. Returns 0 and *out, or -1 when the side
 * already has PB__RECON_NAMES_MAX names or memory is short. */
static int names_intern(struct pb__recon_names *names, struct pb__recon_strings *strings,
                        struct pb__recon_span s, uint16_t *out)
{
    struct pb__recon_probe probe;
    uint64_t h;
    uint32_t i, off;
    if (names->count) {
        const struct pb__recon_name *last = &names->items[names->last];
        if (last->len == s.n && memcmp(pb__recon_str(strings, last->off), s.p, s.n) == 0) {
            *out = (uint16_t)names->last;
            return 0;
        }
    }
    h = pb__recon_hash(s.p, s.n);
    pb__recon_probe_start(&names->table, h, &probe);
    while ((i = pb__recon_probe_next(&names->table, &probe)) != PB_RECON_NONE) {
        const struct pb__recon_name *it = &names->items[i];
        if (it->len == s.n && memcmp(pb__recon_str(strings, it->off), s.p, s.n) == 0) {
            names->last = i;
            *out = (uint16_t)i;
            return 0;
        }
    }
    if (names->count >= PB__RECON_NAMES_MAX)
        return -1;
    if (pb__recon_strings_add(strings, s.p, s.n, &off))
        return -1;
    if ((uint64_t)(names->count + 1) * 2 > (uint64_t)names->table.mask + 1) {
        if (pb__recon_table_grow(&names->table, name_hash_of, names))
            return -1;
        pb__recon_probe_start(&names->table, h, &probe);
        while (pb__recon_probe_next(&names->table, &probe) != PB_RECON_NONE) {
        }
    }
    i = names->count++;
    names->items[i].hash = h;
    names->items[i].off = off;
    names->items[i].len = (uint8_t)s.n;
    pb__recon_table_put(&names->table, probe.pos, probe.tag, i);
    names->table.count++;
    names->last = i;
    *out = (uint16_t)i;
    return 0;
}

/* ---- problems ------------------------------------------------------------------------ */

void pb__recon_problem(struct pb_recon_run *run, enum pb_recon_side side, uint32_t line,
                       enum pb_recon_problem_code code, const char *fmt, ...)
{
    struct pb__recon_problems *ps =
        side == PB_RECON_SETTLEMENT ? &run->settlement.problems : &run->ledger.problems;
    struct pb_recon_problem *p;
    va_list ap;
    ps->total++;
    if (ps->count >= ps->cap) {
        if (array_reserve((void **)&ps->items, &ps->cap, ps->count, run->cfg.max_problems,
                          sizeof(*ps->items)))
            return;
    }
    p = &ps->items[ps->count++];
    p->line = line;
    p->side = (uint8_t)side;
    p->code = (uint8_t)code;
    va_start(ap, fmt);
    vsnprintf(p->message, sizeof(p->message), fmt, ap);
    va_end(ap);
}

const struct pb_recon_problem *pb_recon_problems(const struct pb_recon_run *run,
                                                 enum pb_recon_side side, size_t *count)
{
    const struct pb__recon_problems *ps =
        side == PB_RECON_SETTLEMENT ? &run->settlement.problems : &run->ledger.problems;
    *count = ps->count;
    return ps->items;
}

/* ---- configuration --------------------------------------------------------------------- */

void pb_recon_config_init(struct pb_recon_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->date_window_days = 3;
    cfg->settlement_lag_days = 3;
    cfg->as_of_date = PB_RECON_DATE_NONE;
    cfg->fx_tolerance_bp = 50;
    cfg->max_lines = 16u << 20;
    cfg->max_records = 16u << 20;
    cfg->max_batches = 1u << 20;
    cfg->max_problems = 1000;
    cfg->max_string_bytes = 2ull << 30;
    cfg->threads = 2;
}

static struct pb__recon_currency *currency_of_code(struct pb_recon_run *run, const char *code)
{
    int i = pb__recon_currency_index(run, code, strnlen(code, 4));
    return i < 0 ? NULL : &run->currencies[i];
}

static enum pb_rc copy_config(struct pb_recon_run *run, const struct pb_recon_config *cfg,
                              struct pb_err *err)
{
    size_t names_len = 0, at = 0;
    run->cfg = *cfg;
    if (cfg->date_window_days < 0 || cfg->date_window_days > 366)
        return pb_err_set(err, PB_ERR_CONFIG, "date_window_days must be 0..366, got %d",
                          cfg->date_window_days);
    if (cfg->settlement_lag_days < 0 || cfg->settlement_lag_days > 366)
        return pb_err_set(err, PB_ERR_CONFIG, "settlement_lag_days must be 0..366, got %d",
                          cfg->settlement_lag_days);
    if (cfg->fx_tolerance_bp > 10000)
        return pb_err_set(err, PB_ERR_CONFIG, "fx_tolerance_bp must be 0..10000, got %u",
                          cfg->fx_tolerance_bp);
    if (cfg->default_tolerance_minor < 0 || cfg->default_auto_adjust_max_minor < 0)
        return pb_err_set(err, PB_ERR_CONFIG, "default tolerances must not be negative");
    if (cfg->max_lines == 0 || cfg->max_lines > (1u << 30) || cfg->max_records == 0 ||
        cfg->max_records > (1u << 30) || cfg->max_batches == 0 || cfg->max_batches > (1u << 30))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "max_lines, max_records and max_batches must be 1..2^30");
    if (cfg->max_string_bytes == 0 || cfg->max_string_bytes > UINT32_MAX)
        run->cfg.max_string_bytes = UINT32_MAX;
    if (run->cfg.threads < 1)
        run->cfg.threads = 1;
    if (run->cfg.threads > 2)
        run->cfg.threads = 2;
    run->cfg.currencies = NULL;
    run->cfg.rates = NULL;
    run->cfg.contracts = NULL;

    for (size_t i = 0; i < cfg->currency_count; i++) {
        const struct pb_recon_currency_rule *r = &cfg->currencies[i];
        struct pb__recon_currency *c = currency_of_code(run, r->currency);
        if (!c)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "currency rule %zu: \"%.3s\" is not an ISO 4217 "
                              "code",
                              i, r->currency);
        if (r->tolerance_minor < 0 || r->auto_adjust_max_minor < 0)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "currency rule %s: tolerances must not be "
                              "negative",
                              c->code);
        c->tolerance = r->tolerance_minor;
        c->auto_adjust_max = r->auto_adjust_max_minor;
    }
    if (cfg->currency_count) {
        run->cfg_currencies = calloc(cfg->currency_count, sizeof(*run->cfg_currencies));
        if (!run->cfg_currencies)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        memcpy(run->cfg_currencies, cfg->currencies,
               cfg->currency_count * sizeof(*run->cfg_currencies));
        run->cfg.currencies = run->cfg_currencies;
    }

    if (cfg->rate_count > UINT16_MAX - 1)
        return pb_err_set(err, PB_ERR_CONFIG, "at most %d FX rates", UINT16_MAX - 1);
    if (cfg->rate_count) {
        run->rates = calloc(cfg->rate_count, sizeof(*run->rates));
        run->cfg_rates = calloc(cfg->rate_count, sizeof(*run->cfg_rates));
        if (!run->rates || !run->cfg_rates)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < cfg->rate_count; i++) {
        const struct pb_recon_fx_rate *r = &cfg->rates[i];
        struct pb__recon_currency *from = currency_of_code(run, r->from);
        struct pb__recon_currency *to = currency_of_code(run, r->to);
        int64_t probe;
        enum pb_rc rc;
        if (!from || !to)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "FX rate %zu: \"%.3s\" -> \"%.3s\": not ISO 4217 "
                              "codes",
                              i, r->from, r->to);
        if (from == to)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "FX rate %zu: %s -> %s converts a currency to "
                              "itself",
                              i, from->code, to->code);
        if (!r->rate || strlen(r->rate) >= sizeof(run->rates[i].text))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "FX rate %s -> %s: the rate is missing or longer "
                              "than %zu characters",
                              from->code, to->code, sizeof(run->rates[i].text) - 1);
        rc = pb_money_convert(1, from->code, to->code, r->rate, &probe, err);
        if (rc) {
            pb_err_prefix(err, "FX rate %zu", i);
            err->rc = PB_ERR_CONFIG;
            return PB_ERR_CONFIG;
        }
        run->rates[i].from = (uint8_t)(from - run->currencies);
        run->rates[i].to = (uint8_t)(to - run->currencies);
        memcpy(run->rates[i].text, r->rate, strlen(r->rate) + 1);
        memcpy(run->cfg_rates[i].from, from->code, 4);
        memcpy(run->cfg_rates[i].to, to->code, 4);
        run->cfg_rates[i].rate = run->rates[i].text;
    }
    run->rate_count = (uint32_t)cfg->rate_count;
    run->cfg.rates = run->cfg_rates;

    for (size_t i = 0; i < cfg->contract_count; i++) {
        const struct pb_recon_contract *c = &cfg->contracts[i];
        size_t n = c->gateway ? strlen(c->gateway) : 0;
        if (n == 0 || n > PB_RECON_STRING_MAX)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "contract %zu: gateway must be 1..%d "
                              "characters",
                              i, PB_RECON_STRING_MAX);
        if (!currency_of_code(run, c->currency))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "contract %zu (%s): \"%.3s\" is not an ISO 4217 "
                              "code",
                              i, c->gateway, c->currency);
        if (c->fee_basis_points > 10000 || c->fee_fixed_minor < 0)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "contract %zu (%s): fee_basis_points must be "
                              "0..10000 and fee_fixed_minor >= 0",
                              i, c->gateway);
        names_len += n;
    }
    if (cfg->contract_count) {
        run->contracts = calloc(cfg->contract_count, sizeof(*run->contracts));
        run->cfg_contracts = calloc(cfg->contract_count, sizeof(*run->cfg_contracts));
        run->contract_names = malloc(names_len + cfg->contract_count);
        if (!run->contracts || !run->cfg_contracts || !run->contract_names)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < cfg->contract_count; i++) {
        const struct pb_recon_contract *c = &cfg->contracts[i];
        size_t n = strlen(c->gateway);
        memcpy(run->contract_names + at, c->gateway, n + 1);
        run->contracts[i].gateway_off = (uint32_t)at;
        run->contracts[i].gateway_len = (uint8_t)n;
        run->contracts[i].currency =
            (uint8_t)(currency_of_code(run, c->currency) - run->currencies);
        run->contracts[i].fee_bp = c->fee_basis_points;
        run->contracts[i].fee_fixed = c->fee_fixed_minor;
        run->contracts[i].lag_days = c->settlement_lag_days;
        run->cfg_contracts[i] = *c;
        run->cfg_contracts[i].gateway = run->contract_names + at;
        at += n + 1;
    }
    run->contract_count = (uint32_t)cfg->contract_count;
    run->cfg.contracts = run->cfg_contracts;
    return PB_OK;
}

/* The ISO 4217 codes and exponents as an index, asked of core/money.c once
 * per process (17,576 look-ups) and copied into each run. */
static uint8_t iso_map[PB__RECON_CURRENCY_SLOTS];
static struct pb__recon_currency iso_currencies[256];
static uint32_t iso_count;
static pthread_once_t iso_once = PTHREAD_ONCE_INIT;

static void iso_build(void)
{
    char code[4] = {0};
    for (int a = 0; a < 26; a++)
        for (int b = 0; b < 26; b++)
            for (int c = 0; c < 26; c++) {
                int e;
                code[0] = (char)('A' + a);
                code[1] = (char)('A' + b);
                code[2] = (char)('A' + c);
                e = pb_currency_exponent(code);
                if (e < 0 || iso_count >= 255)
                    continue;
                memcpy(iso_currencies[iso_count].code, code, 4);
                iso_currencies[iso_count].exponent = e;
                iso_map[a * 676 + b * 26 + c] = (uint8_t)++iso_count;
            }
}

enum pb_rc pb_recon_create(const struct pb_recon_config *cfg, struct pb_recon_run **out,
                           struct pb_err *err)
{
    struct pb_recon_config defaults;
    struct pb_recon_run *run;
    enum pb_rc rc;

    *out = NULL;
    if (!cfg) {
        pb_recon_config_init(&defaults);
        cfg = &defaults;
    }
    run = calloc(1, sizeof(*run));
    if (!run)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory for a reconciliation run");
    run->magic = PB__RECON_MAGIC;
    pthread_once(&iso_once, iso_build);
    memcpy(run->currency_map, iso_map, sizeof(iso_map));
    memcpy(run->currencies, iso_currencies, sizeof(iso_currencies));
    run->currency_count = iso_count;
    for (uint32_t k = 0; k < iso_count; k++) {
        run->currencies[k].tolerance = cfg->default_tolerance_minor;
        run->currencies[k].auto_adjust_max = cfg->default_auto_adjust_max_minor;
    }
    rc = copy_config(run, cfg, err);
    if (rc)
        goto fail;
    run->settlement.strings.max = run->cfg.max_string_bytes;
    run->ledger.strings.max = run->cfg.max_string_bytes;
    run->settlement.last_batch = PB_RECON_NONE;
    if (pb__recon_table_init(&run->settlement.names.table, 8) ||
        pb__recon_table_init(&run->ledger.names.table, 8) ||
        pb__recon_table_init(&run->settlement.batch_table, 1024)) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory for a reconciliation run");
        goto fail;
    }
    run->matches.elem = sizeof(struct pb_recon_match);
    run->breaks.elem = sizeof(struct pb_recon_break);
    run->members.elem = sizeof(uint32_t);
    run->held.elem = 2 * sizeof(uint32_t);
    *out = run;
    return PB_OK;
fail:
    pb_recon_destroy(run);
    return rc;
}

void pb_recon_destroy(struct pb_recon_run *run)
{
    if (!run)
        return;
    if (run->magic != PB__RECON_MAGIC)
        abort(); /* not a run, or destroyed twice: a bug in the caller */
    run->magic = 0;
    pb__recon_free(run->settlement.lines);
    pb__recon_free(run->settlement.batches);
    pb__recon_table_free(&run->settlement.batch_table);
    pb__recon_free(run->settlement.strings.data);
    pb__recon_table_free(&run->settlement.names.table);
    pb__recon_free(run->settlement.problems.items);
    pb__recon_free(run->ledger.records);
    pb__recon_free(run->ledger.strings.data);
    pb__recon_table_free(&run->ledger.names.table);
    pb__recon_free(run->ledger.problems.items);
    free(run->rates);
    free(run->contracts);
    free(run->contract_names);
    free(run->cfg_rates);
    free(run->cfg_currencies);
    free(run->cfg_contracts);
    pb__recon_table_free(&run->line_gw);
    pb__recon_table_free(&run->line_mref);
    pb__recon_table_free(&run->record_gw);
    pb__recon_table_free(&run->record_ref);
    pb__recon_table_free(&run->batch_id);
    pb__recon_free(run->line_gw_next);
    pb__recon_free(run->line_mref_next);
    pb__recon_free(run->record_gw_next);
    pb__recon_free(run->record_ref_next);
    pb__recon_free(run->line_state);
    pb__recon_free(run->record_state);
    pb__recon_free(run->line_flags);
    pb__recon_free(run->record_flags);
    pb__recon_free(run->line_link);
    pb__recon_free(run->record_link);
    pb__recon_free(run->contract_for);
    pb__recon_vec_free(&run->matches);
    pb__recon_vec_free(&run->breaks);
    pb__recon_vec_free(&run->members);
    pb__recon_vec_free(&run->held);
    free(run);
}

/* ---- adding ---------------------------------------------------------------------------- */

static enum pb_rc check_span(struct pb__recon_span s, const char *what, int required,
                             struct pb_err *err)
{
    if (s.n > PB_RECON_STRING_MAX)
        return pb_err_set(err, PB_ERR_INVALID, "%s is %zu bytes long; at most %d are accepted",
                          what, s.n, PB_RECON_STRING_MAX);
    if (required && s.n == 0)
        return pb_err_set(err, PB_ERR_INVALID, "%s is empty", what);
    return PB_OK;
}

static uint64_t batch_key_hash(uint64_t id_hash, uint16_t gateway, uint8_t currency)
{
    return id_hash ^
           mum(((uint64_t)gateway << 8 | currency) + 0x9e3779b97f4a7c15ull, 0xe7037ed1a0b428dbull);
}

static uint64_t batch_hash_of(const void *ctx, uint32_t index)
{
    return ((const struct pb__recon_settlement *)ctx)->batches[index].key_hash;
}

/* Find or create the batch (gateway, id, currency). *created says which. */
static enum pb_rc batch_find(struct pb_recon_run *run, uint16_t gateway, struct pb__recon_span id,
                             uint8_t currency, uint32_t *out, int *created, struct pb_err *err)
{
    struct pb__recon_settlement *s = &run->settlement;
    struct pb__recon_probe probe;
    struct pb__recon_batch *b;
    uint64_t id_hash, key;
    uint32_t i, off;

    if (s->last_batch != PB_RECON_NONE) {
        b = &s->batches[s->last_batch];
        if (b->gateway == gateway && b->currency == currency && b->id_len == id.n &&
            memcmp(pb__recon_str(&s->strings, b->id_off), id.p, id.n) == 0) {
            *out = s->last_batch;
            *created = 0;
            return PB_OK;
        }
    }
    id_hash = pb__recon_hash(id.p, id.n);
    key = batch_key_hash(id_hash, gateway, currency);
    pb__recon_probe_start(&s->batch_table, key, &probe);
    while ((i = pb__recon_probe_next(&s->batch_table, &probe)) != PB_RECON_NONE) {
        b = &s->batches[i];
        if (b->gateway == gateway && b->currency == currency && b->id_len == id.n &&
            memcmp(pb__recon_str(&s->strings, b->id_off), id.p, id.n) == 0) {
            s->last_batch = i;
            *out = i;
            *created = 0;
            return PB_OK;
        }
    }
    if (array_reserve((void **)&s->batches, &s->batch_cap, s->batch_count, run->cfg.max_batches,
                      sizeof(*s->batches)))
        return pb_err_set(err, PB_ERR_TOOBIG, "more than %u batches (max_batches)",
                          run->cfg.max_batches);
    if (pb__recon_strings_add(&s->strings, id.p, id.n, &off))
        return pb_err_set(err, PB_ERR_TOOBIG,
                          "the settlement string arena is full "
                          "(max_string_bytes %llu)",
                          (unsigned long long)s->strings.max);
    if ((uint64_t)(s->batch_table.count + 1) * 2 > (uint64_t)s->batch_table.mask + 1) {
        if (pb__recon_table_grow(&s->batch_table, batch_hash_of, s))
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory for the batch index");
        pb__recon_probe_start(&s->batch_table, key, &probe);
        while (pb__recon_probe_next(&s->batch_table, &probe) != PB_RECON_NONE) {
        }
    }
    i = s->batch_count++;
    b = &s->batches[i];
    memset(b, 0, sizeof(*b));
    b->key_hash = key;
    b->id_hash = id_hash;
    b->id_off = off;
    b->id_len = (uint8_t)id.n;
    b->gateway = gateway;
    b->currency = currency;
    b->date = PB_RECON_DATE_NONE;
    pb__recon_table_put(&s->batch_table, probe.pos, probe.tag, i);
    s->batch_table.count++;
    s->last_batch = i;
    *out = i;
    *created = 1;
    return PB_OK;
}

enum pb_rc pb__recon_push_batch(struct pb_recon_run *run, const struct pb__recon_batch_fields *f,
                                uint32_t *first_line, struct pb_err *err)
{
    struct pb__recon_settlement *s = &run->settlement;
    struct pb__recon_batch *b;
    enum pb_rc rc;
    uint16_t gateway;
    uint32_t i;
    int created;

    if ((rc = check_span(f->gateway, "gateway", 1, err)) ||
        (rc = check_span(f->batch_id, "batch_id", 1, err)))
        return rc;
    if (f->currency < 0 || (uint32_t)f->currency >= run->currency_count)
        return pb_err_set(err, PB_ERR_CURRENCY, "batch %.*s: unknown currency", (int)f->batch_id.n,
                          f->batch_id.p);
    if (f->date == PB_RECON_DATE_NONE)
        return pb_err_set(err, PB_ERR_INVALID, "batch %.*s: the date is missing",
                          (int)f->batch_id.n, f->batch_id.p);
    if (names_intern(&s->names, &s->strings, f->gateway, &gateway))
        return pb_err_set(err, PB_ERR_TOOBIG, "more than %d gateway names, or out of memory",
                          PB__RECON_NAMES_MAX);
    rc = batch_find(run, gateway, f->batch_id, (uint8_t)f->currency, &i, &created, err);
    if (rc)
        return rc;
    b = &s->batches[i];
    if (b->has_header) {
        if (first_line)
            *first_line = b->source_line;
        return pb_err_set(err, PB_ERR_EXISTS, "batch %.*s (%.*s, %s) has a second header",
                          (int)f->batch_id.n, f->batch_id.p, (int)f->gateway.n, f->gateway.p,
                          run->currencies[f->currency].code);
    }
    b->has_header = 1;
    b->gross = f->gross;
    b->fees = f->fees;
    b->net = f->net;
    b->date = f->date;
    b->source_line = f->source_line;
    return PB_OK;
}

enum pb_rc pb__recon_push_line(struct pb_recon_run *run, const struct pb__recon_line_fields *f,
                               struct pb_err *err)
{
    struct pb__recon_settlement *s = &run->settlement;
    struct pb__recon_line *l;
    enum pb_rc rc;
    uint16_t gateway;
    uint32_t batch, gw_off, mref_off;
    int created;

    if ((rc = check_span(f->gateway, "gateway", 1, err)) ||
        (rc = check_span(f->batch_id, "batch_id", 0, err)) ||
        (rc = check_span(f->gateway_ref, "gateway_ref", 0, err)) ||
        (rc = check_span(f->merchant_ref, "merchant_ref", 0, err)))
        return rc;
    if (f->kind < 0 || f->kind >= PB_RECON_LINE_KIND_COUNT)
        return pb_err_set(err, PB_ERR_INVALID, "unknown line kind %d", f->kind);
    if (f->currency < 0 || (uint32_t)f->currency >= run->currency_count)
        return pb_err_set(err, PB_ERR_CURRENCY, "unknown currency");
    if (f->kind == PB_RECON_LINE_SALE && f->amount < 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "a sale must not be negative (money in is "
                          "positive)");
    if ((f->kind == PB_RECON_LINE_REFUND || f->kind == PB_RECON_LINE_CHARGEBACK) && f->amount > 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "a %s must not be positive (money out is "
                          "negative)",
                          pb_recon_line_kind_name((unsigned)f->kind));
    if (f->value_date == PB_RECON_DATE_NONE || f->settled_date == PB_RECON_DATE_NONE)
        return pb_err_set(err, PB_ERR_INVALID, "value_date and settled_date are required");
    if (array_reserve((void **)&s->lines, &s->line_cap, s->line_count, run->cfg.max_lines,
                      sizeof(*s->lines)))
        return pb_err_set(err, PB_ERR_TOOBIG,
                          "more than %u settlement lines (max_lines), or out "
                          "of memory",
                          run->cfg.max_lines);
    if (names_intern(&s->names, &s->strings, f->gateway, &gateway))
        return pb_err_set(err, PB_ERR_TOOBIG, "more than %d gateway names, or out of memory",
                          PB__RECON_NAMES_MAX);
    if (pb__recon_strings_add(&s->strings, f->gateway_ref.p, f->gateway_ref.n, &gw_off) ||
        pb__recon_strings_add(&s->strings, f->merchant_ref.p, f->merchant_ref.n, &mref_off))
        return pb_err_set(err, PB_ERR_TOOBIG,
                          "the settlement string arena is full "
                          "(max_string_bytes %llu)",
                          (unsigned long long)s->strings.max);
    rc = batch_find(run, gateway, f->batch_id, (uint8_t)f->currency, &batch, &created, err);
    if (rc)
        return rc;
    s->batches[batch].line_count++;
    l = &s->lines[s->line_count++];
    l->amount = f->amount;
    l->fee = f->fee;
    l->gw_hash = f->gateway_ref.n ? pb__recon_hash(f->gateway_ref.p, f->gateway_ref.n) : 0;
    l->mref_hash = f->merchant_ref.n ? pb__recon_hash(f->merchant_ref.p, f->merchant_ref.n) : 0;
    l->gw_off = gw_off;
    l->mref_off = mref_off;
    l->batch = batch;
    l->line_no = f->line_no;
    l->source_line = f->source_line;
    l->value_date = f->value_date;
    l->settled_date = f->settled_date;
    l->gateway = gateway;
    l->gw_len = (uint8_t)f->gateway_ref.n;
    l->mref_len = (uint8_t)f->merchant_ref.n;
    l->currency = (uint8_t)f->currency;
    l->kind = (uint8_t)f->kind;
    return PB_OK;
}

enum pb_rc pb__recon_push_record(struct pb_recon_run *run, const struct pb__recon_record_fields *f,
                                 struct pb_err *err)
{
    struct pb__recon_ledger *g = &run->ledger;
    struct pb__recon_record *r;
    enum pb_rc rc;
    uint16_t erp;
    uint32_t id_off, gw_off, ref_off;

    if ((rc = check_span(f->erp, "erp", 0, err)) ||
        (rc = check_span(f->record_id, "record_id", 1, err)) ||
        (rc = check_span(f->gateway_ref, "gateway_ref", 0, err)) ||
        (rc = check_span(f->reference, "reference", 0, err)))
        return rc;
    if (f->kind < 0 || f->kind >= PB_RECON_RECORD_KIND_COUNT)
        return pb_err_set(err, PB_ERR_INVALID, "unknown record kind %d", f->kind);
    if (f->currency < 0 || (uint32_t)f->currency >= run->currency_count)
        return pb_err_set(err, PB_ERR_CURRENCY, "unknown currency");
    if (f->kind == PB_RECON_RECORD_PAYMENT && f->amount < 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "a payment must not be negative (money in is "
                          "positive)");
    if ((f->kind == PB_RECON_RECORD_REFUND || f->kind == PB_RECON_RECORD_CREDIT_NOTE) &&
        f->amount > 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "a %s must not be positive (money out is "
                          "negative)",
                          pb_recon_record_kind_name((unsigned)f->kind));
    if (f->date == PB_RECON_DATE_NONE)
        return pb_err_set(err, PB_ERR_INVALID, "the date is required");
    if (array_reserve((void **)&g->records, &g->record_cap, g->record_count, run->cfg.max_records,
                      sizeof(*g->records)))
        return pb_err_set(err, PB_ERR_TOOBIG,
                          "more than %u ledger records (max_records), or out "
                          "of memory",
                          run->cfg.max_records);
    if (names_intern(&g->names, &g->strings, f->erp, &erp))
        return pb_err_set(err, PB_ERR_TOOBIG, "more than %d ERP names, or out of memory",
                          PB__RECON_NAMES_MAX);
    if (pb__recon_strings_add(&g->strings, f->record_id.p, f->record_id.n, &id_off) ||
        pb__recon_strings_add(&g->strings, f->gateway_ref.p, f->gateway_ref.n, &gw_off) ||
        pb__recon_strings_add(&g->strings, f->reference.p, f->reference.n, &ref_off))
        return pb_err_set(err, PB_ERR_TOOBIG,
                          "the ledger string arena is full "
                          "(max_string_bytes %llu)",
                          (unsigned long long)g->strings.max);
    r = &g->records[g->record_count++];
    r->amount = f->amount;
    r->gw_hash = f->gateway_ref.n ? pb__recon_hash(f->gateway_ref.p, f->gateway_ref.n) : 0;
    r->ref_hash = f->reference.n ? pb__recon_hash(f->reference.p, f->reference.n) : 0;
    r->id_off = id_off;
    r->gw_off = gw_off;
    r->ref_off = ref_off;
    r->source_line = f->source_line;
    r->date = f->date;
    r->erp = erp;
    r->id_len = (uint8_t)f->record_id.n;
    r->gw_len = (uint8_t)f->gateway_ref.n;
    r->ref_len = (uint8_t)f->reference.n;
    r->currency = (uint8_t)f->currency;
    r->kind = (uint8_t)f->kind;
    return PB_OK;
}

static struct pb__recon_span span_of(const char *s)
{
    struct pb__recon_span r = {s ? s : "", s ? strlen(s) : 0};
    return r;
}

static enum pb_rc currency_arg(const struct pb_recon_run *run, const char *code, int *out,
                               struct pb_err *err)
{
    *out = code ? pb__recon_currency_index(run, code, strlen(code)) : -1;
    if (*out < 0)
        return pb_err_set(err, PB_ERR_CURRENCY, "\"%.8s\" is not an ISO 4217 currency code",
                          code ? code : "");
    return PB_OK;
}

static enum pb_rc check_open(struct pb_recon_run *run, struct pb_err *err)
{
    if (!run || run->magic != PB__RECON_MAGIC)
        return pb_err_set(err, PB_ERR_INTERNAL, "not a reconciliation run");
    if (run->matched)
        return pb_err_set(err, PB_ERR_INVALID, "the run has been matched; create a new run");
    return PB_OK;
}

enum pb_rc pb_recon_add_batch(struct pb_recon_run *run, const struct pb_recon_batch_in *in,
                              struct pb_err *err)
{
    struct pb__recon_batch_fields f;
    enum pb_rc rc;
    if ((rc = check_open(run, err)))
        return rc;
    memset(&f, 0, sizeof(f));
    f.gateway = span_of(in->gateway);
    f.batch_id = span_of(in->batch_id);
    if ((rc = currency_arg(run, in->currency, &f.currency, err)))
        return rc;
    f.gross = in->gross_minor;
    f.fees = in->fees_minor;
    f.net = in->net_minor;
    f.date = in->date;
    f.source_line = in->source_line;
    return pb__recon_push_batch(run, &f, NULL, err);
}

enum pb_rc pb_recon_add_line(struct pb_recon_run *run, const struct pb_recon_line_in *in,
                             struct pb_err *err)
{
    struct pb__recon_line_fields f;
    enum pb_rc rc;
    if ((rc = check_open(run, err)))
        return rc;
    memset(&f, 0, sizeof(f));
    f.gateway = span_of(in->gateway);
    f.batch_id = span_of(in->batch_id);
    f.gateway_ref = span_of(in->gateway_ref);
    f.merchant_ref = span_of(in->merchant_ref);
    f.line_no = in->line_no;
    f.kind = (int)in->kind;
    f.amount = in->amount_minor;
    f.fee = in->fee_minor;
    if ((rc = currency_arg(run, in->currency, &f.currency, err)))
        return rc;
    f.value_date = in->value_date;
    f.settled_date = in->settled_date;
    f.source_line = in->source_line;
    return pb__recon_push_line(run, &f, err);
}

enum pb_rc pb_recon_add_record(struct pb_recon_run *run, const struct pb_recon_record_in *in,
                               struct pb_err *err)
{
    struct pb__recon_record_fields f;
    enum pb_rc rc;
    if ((rc = check_open(run, err)))
        return rc;
    memset(&f, 0, sizeof(f));
    f.erp = span_of(in->erp);
    f.record_id = span_of(in->record_id);
    f.gateway_ref = span_of(in->gateway_ref);
    f.reference = span_of(in->reference);
    f.kind = (int)in->kind;
    f.amount = in->amount_minor;
    if ((rc = currency_arg(run, in->currency, &f.currency, err)))
        return rc;
    f.date = in->date;
    f.source_line = in->source_line;
    return pb__recon_push_record(run, &f, err);
}

/* ---- reading back ---------------------------------------------------------------------- */

size_t pb_recon_line_count(const struct pb_recon_run *run)
{
    return run->settlement.line_count;
}
size_t pb_recon_record_count(const struct pb_recon_run *run)
{
    return run->ledger.record_count;
}
size_t pb_recon_batch_count(const struct pb_recon_run *run)
{
    return run->settlement.batch_count;
}

static struct pb_recon_text text_of(const struct pb__recon_strings *s, uint32_t off, uint32_t len)
{
    struct pb_recon_text t = {len ? s->data + off : "", len};
    return t;
}

void pb_recon_line_get(const struct pb_recon_run *run, uint32_t index,
                       struct pb_recon_line_view *out)
{
    const struct pb__recon_settlement *s = &run->settlement;
    const struct pb__recon_line *l = &s->lines[index];
    const struct pb__recon_batch *b = &s->batches[l->batch];
    const struct pb__recon_name *g = &s->names.items[l->gateway];
    out->gateway = text_of(&s->strings, g->off, g->len);
    out->batch_id = text_of(&s->strings, b->id_off, b->id_len);
    out->gateway_ref = text_of(&s->strings, l->gw_off, l->gw_len);
    out->merchant_ref = text_of(&s->strings, l->mref_off, l->mref_len);
    out->kind = (enum pb_recon_line_kind)l->kind;
    out->line_no = l->line_no;
    out->source_line = l->source_line;
    out->batch = l->batch;
    out->amount_minor = l->amount;
    out->fee_minor = l->fee;
    memcpy(out->currency, run->currencies[l->currency].code, 4);
    out->value_date = l->value_date;
    out->settled_date = l->settled_date;
}

void pb_recon_record_get(const struct pb_recon_run *run, uint32_t index,
                         struct pb_recon_record_view *out)
{
    const struct pb__recon_ledger *g = &run->ledger;
    const struct pb__recon_record *r = &g->records[index];
    const struct pb__recon_name *e = &g->names.items[r->erp];
    out->erp = text_of(&g->strings, e->off, e->len);
    out->record_id = text_of(&g->strings, r->id_off, r->id_len);
    out->gateway_ref = text_of(&g->strings, r->gw_off, r->gw_len);
    out->reference = text_of(&g->strings, r->ref_off, r->ref_len);
    out->kind = (enum pb_recon_record_kind)r->kind;
    out->source_line = r->source_line;
    out->amount_minor = r->amount;
    memcpy(out->currency, run->currencies[r->currency].code, 4);
    out->date = r->date;
}

void pb_recon_batch_get(const struct pb_recon_run *run, uint32_t index,
                        struct pb_recon_batch_view *out)
{
    const struct pb__recon_settlement *s = &run->settlement;
    const struct pb__recon_batch *b = &s->batches[index];
    const struct pb__recon_name *g = &s->names.items[b->gateway];
    out->gateway = text_of(&s->strings, g->off, g->len);
    out->batch_id = text_of(&s->strings, b->id_off, b->id_len);
    memcpy(out->currency, run->currencies[b->currency].code, 4);
    out->has_header = b->has_header;
    out->gross_minor = b->gross;
    out->fees_minor = b->fees;
    out->net_minor = b->net;
    out->lines_gross_minor = b->lines_gross;
    out->lines_fees_minor = b->lines_fees;
    out->line_count = b->line_count;
    out->source_line = b->source_line;
    out->date = b->date;
}

/* ---- names and dates -------------------------------------------------------------------- */

static const char *const rule_names[PB_RECON_RULE_COUNT] = {
    "?", "reference", "amount", "date_window", "batch", "many_to_one", "netting", "fx"};
static const char *const break_names[PB_RECON_BREAK_CLASS_COUNT] = {
    "amount_differs",      "missing_in_erp",  "not_settled",     "duplicate",
    "fee_out_of_contract", "settlement_late", "batch_unbalanced"};
static const char *const action_names[PB_RECON_ACTION_COUNT] = {"post_adjustment_journal",
                                                                "review_amount",
                                                                "post_to_erp",
                                                                "ask_gateway_status",
                                                                "void_duplicate_record",
                                                                "raise_duplicate_with_gateway",
                                                                "dispute_fee",
                                                                "chase_late_settlement",
                                                                "request_corrected_report"};
static const char *const action_texts[PB_RECON_ACTION_COUNT] = {
    "post an adjusting journal for the difference (below the auto-adjust threshold)",
    "compare the settlement line with the ERP record and correct the wrong one",
    "post it to the ERP: replay the payment event, or journal the fee or adjustment",
    ("ask the gateway whether it was voided, declined or is still pending; reverse the ERP "
     "record if it will never settle"),
    "void the duplicate record in the ERP",
    "raise the duplicate settlement with the gateway and claim the overpayment back",
    "dispute the fee with the gateway: it differs from the contracted rate",
    "ask the gateway why the funds were value-dated later than the contract allows",
    "ask the gateway for a corrected settlement report: the batch does not add up"};
static const char *const line_kind_names[PB_RECON_LINE_KIND_COUNT] = {
    "sale", "refund", "chargeback", "fee", "adjustment"};
static const char *const record_kind_names[PB_RECON_RECORD_KIND_COUNT] = {"payment", "refund",
                                                                          "credit_note", "journal"};
static const char *const problem_names[PB_RECON_PROBLEM_CODE_COUNT] = {
    "column_count", "truncated", "amount", "currency", "date", "field", "duplicate_batch", "limit"};

const char *pb_recon_rule_name(unsigned rule)
{
    return rule < PB_RECON_RULE_COUNT ? rule_names[rule] : "?";
}
const char *pb_recon_break_name(unsigned c)
{
    return c < PB_RECON_BREAK_CLASS_COUNT ? break_names[c] : "?";
}
const char *pb_recon_action_name(unsigned a)
{
    return a < PB_RECON_ACTION_COUNT ? action_names[a] : "?";
}
const char *pb_recon_action_text(unsigned a)
{
    return a < PB_RECON_ACTION_COUNT ? action_texts[a] : "?";
}
const char *pb_recon_line_kind_name(unsigned k)
{
    return k < PB_RECON_LINE_KIND_COUNT ? line_kind_names[k] : "?";
}
const char *pb_recon_record_kind_name(unsigned k)
{
    return k < PB_RECON_RECORD_KIND_COUNT ? record_kind_names[k] : "?";
}
const char *pb_recon_problem_name(unsigned c)
{
    return c < PB_RECON_PROBLEM_CODE_COUNT ? problem_names[c] : "?";
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's algorithm). */
static int32_t days_from_civil(int y, unsigned m, unsigned d)
{
    int era;
    unsigned yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return (int32_t)(era * 146097 + (int)doe - 719468);
}

int pb_recon_date_parse(const char *p, size_t n, int32_t *out)
{
    static const unsigned char mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned v[8];
    int y;
    unsigned m, d;
    if (n != 10 || p[4] != '-' || p[7] != '-')
        return -1;
    for (int i = 0, k = 0; i < 10; i++) {
        if (i == 4 || i == 7)
            continue;
        v[k] = (unsigned)(unsigned char)p[i] - '0';
        if (v[k] > 9)
            return -1;
        k++;
    }
    y = (int)(v[0] * 1000 + v[1] * 100 + v[2] * 10 + v[3]);
    m = v[4] * 10 + v[5];
    d = v[6] * 10 + v[7];
    if (y < 1900 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return -1;
    if (m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return -1;
    *out = days_from_civil(y, m, d);
    return 0;
}

void pb_recon_date_format(int32_t days, char buf[11])
{
    int z = days + 719468, era, y;
    unsigned doe, yoe, doy, mp, d, m;
    if (days == PB_RECON_DATE_NONE) {
        memcpy(buf, "----------", 11);
        return;
    }
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    y = (int)yoe + era * 400;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    if (y < 0 || y > 9999) {
        memcpy(buf, "??????????", 11);
        return;
    }
    buf[0] = (char)('0' + y / 1000);
    buf[1] = (char)('0' + y / 100 % 10);
    buf[2] = (char)('0' + y / 10 % 10);
    buf[3] = (char)('0' + y % 10);
    buf[4] = '-';
    buf[5] = (char)('0' + m / 10);
    buf[6] = (char)('0' + m % 10);
    buf[7] = '-';
    buf[8] = (char)('0' + d / 10);
    buf[9] = (char)('0' + d % 10);
    buf[10] = '\0';
}
