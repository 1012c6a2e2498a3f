/*
 * recon/recon_internal.h: the layout of a reconciliation run, shared by the
 * files of src/recon and by nobody else.
 *
 * The main design choice is data layout. A run holds two sides, each a flat
 * array of compact fixed-size structs (72 bytes a settlement line, 56 a
 * ledger record) and one string arena; a string is an (offset, length) pair
 * into its side's arena plus a 64-bit hash kept beside it, so that building
 * and probing the reference indexes touches the hash without touching the
 * bytes, and the bytes only on a hash hit. Small repeated names (gateways,
 * ERPs) are interned to 16-bit ids; currencies are 8-bit indexes into a table
 * filled once per run from core/money.c.
 *
 * Indexes are open-addressing hash tables with linear probing (struct
 * pb__recon_table): a slot is one uint64, the high 32 bits of the key's hash
 * as a tag and the element index + 1 in the low 32 bits (0 = empty). The
 * table names only the first element of a key; the others are chained through
 * a `next` array in index order, so "first occurrence" (duplicates) and "all
 * lines with this merchant reference" (split captures, netting) are both
 * cheap. Chains are walked with a bound (PB__RECON_WALK_MAX) so that hostile
 * input (a million lines with one reference) cannot make a rule quadratic.
 *
 * Ownership: the run owns every array here; all are freed by
 * pb_recon_destroy(). Threads: during loading, the settlement loader touches
 * only `settlement` and the ledger loader only `ledger`; during matching the
 * index build runs one thread per side, then the rules run on one thread.
 *
 * Rejected designs: a generic hash map with void* keys and callbacks (an
 * indirect call and a pointer chase per probe), and std::unordered_map-style
 * chaining with a node per element (a malloc per record).
 */
#ifndef PB_RECON_RECON_INTERNAL_H
#define PB_RECON_RECON_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "recon/recon.h"

#define PB__RECON_MAGIC 0x5245434eu /* "RECN" */
#define PB__RECON_NAMES_MAX 4096    /* distinct gateway names / ERP names per side */
#define PB__RECON_WALK_MAX 256      /* most chain steps one rule takes for one key */
#define PB__RECON_GROUP_MAX 64      /* most lines in one many-to-one or netting group */
#define PB__RECON_CURRENCY_SLOTS (26 * 26 * 26)

/* Directions: which side of the cash flow an element is on. */
enum { PB__DIR_IN = 0, PB__DIR_OUT = 1, PB__DIR_OTHER = 2 };

/* Element states during matching. */
enum {
    PB__ST_FREE = 0,  /* not decided yet */
    PB__ST_MATCHED,   /* link = match index */
    PB__ST_HELD,      /* a reference pair whose amounts differ; link = the other side */
    PB__ST_DUPLICATE, /* link = first occurrence */
    PB__ST_BROKEN,    /* in a break that consumes it (amount_differs) */
};
#define PB__FLAG_LINKED 1 /* a reference of it appears on the other side */

struct pb__recon_span {
    const char *p;
    size_t n;
};

/* ---- memory -------------------------------------------------------------------- */

/* The run's big arrays (elements, strings, tables, states, results) come from
 * here: blocks of 1 MiB and more are anonymous mappings advised for
 * transparent huge pages and grown with mremap (a million-line run touches
 * about 350 MB, which in 4 KiB pages is ~90,000 page faults and costs more
 * than the matching); smaller ones are calloc'd. Memory is always zeroed,
 * growth included. A block must be freed with pb__recon_free(). */
void *pb__recon_alloc(size_t size);
void *pb__recon_realloc(void *p, size_t size); /* NULL on failure, p untouched */
void pb__recon_free(void *p);

/* ---- strings ------------------------------------------------------------------ */

struct pb__recon_strings {
    char *data;   /* grows by pb__recon_realloc (mremap, no copy) */
    uint64_t len; /* bytes used */
    uint64_t cap;
    uint64_t max; /* at most this many bytes; offsets are uint32 */
};

/* Copy n bytes, set *off. Returns 0, or -1 when the arena would pass its max
 * or memory is short. n == 0 stores nothing and sets *off = 0. */
int pb__recon_strings_add(struct pb__recon_strings *s, const char *p, size_t n, uint32_t *off);

static inline const char *pb__recon_str(const struct pb__recon_strings *s, uint32_t off)
{
    return s->data ? s->data + off : "";
}

/* wyhash-style 64-bit hash of a byte string (not cryptographic: input is the
 * operator's own files; a collision only costs a memcmp). */
uint64_t pb__recon_hash(const char *p, size_t n);

/* ---- hash table ---------------------------------------------------------------- */

struct pb__recon_table {
    uint64_t *slots; /* tag << 32 | (index + 1); 0 = empty */
    uint32_t mask;   /* capacity - 1, capacity a power of two */
    uint32_t count;
};

struct pb__recon_probe {
    uint32_t pos; /* next slot to look at; after a miss, the empty slot */
    uint32_t tag;
    uint32_t hit; /* slot of the last candidate returned */
};

/* Capacity: the next power of two >= 2 * expected (at least 16). */
int pb__recon_table_init(struct pb__recon_table *t, uint64_t expected);
void pb__recon_table_free(struct pb__recon_table *t);

static inline void pb__recon_probe_start(const struct pb__recon_table *t, uint64_t hash,
                                         struct pb__recon_probe *p)
{
    p->pos = (uint32_t)hash & t->mask;
    p->tag = (uint32_t)(hash >> 32);
    p->hit = 0;
}

/* The next element whose tag matches, or PB_RECON_NONE at the end of the run
 * of occupied slots (p->pos is then the empty slot where the key belongs). */
static inline uint32_t pb__recon_probe_next(const struct pb__recon_table *t,
                                            struct pb__recon_probe *p)
{
    for (;;) {
        uint64_t s = t->slots[p->pos];
        uint32_t at = p->pos;
        if (s == 0)
            return PB_RECON_NONE;
        p->pos = (p->pos + 1) & t->mask;
        if ((uint32_t)(s >> 32) == p->tag) {
            p->hit = at;
            return (uint32_t)s - 1;
        }
    }
}

static inline void pb__recon_table_put(struct pb__recon_table *t, uint32_t slot, uint32_t tag,
                                       uint32_t index)
{
    t->slots[slot] = ((uint64_t)tag << 32) | (uint64_t)(index + 1);
}

/* Double the capacity of a table whose elements' full hashes are given by
 * hash_of(ctx, index) (used by the growing tables of names and batches). */
int pb__recon_table_grow(struct pb__recon_table *t, uint64_t (*hash_of)(const void *, uint32_t),
                         const void *ctx);

/* Where an element's key lives: a strided array of structs, each with a
 * uint32 offset and a uint8 length into a string arena. */
struct pb__recon_keyspec {
    const char *base;
    size_t stride;
    size_t off_at;
    size_t len_at;
    const char *strings;
};

static inline void pb__recon_key_of(const struct pb__recon_keyspec *k, uint32_t i, const char **p,
                                    size_t *n)
{
    const char *e = k->base + (size_t)i * k->stride;
    uint32_t off;
    memcpy(&off, e + k->off_at, sizeof(off));
    *n = (unsigned char)e[k->len_at];
    *p = k->strings + off;
}

/* The first element whose key is p/n (hash h), or PB_RECON_NONE. */
static inline uint32_t pb__recon_lookup(const struct pb__recon_table *t,
                                        const struct pb__recon_keyspec *k, const char *p, size_t n,
                                        uint64_t h)
{
    struct pb__recon_probe probe;
    uint32_t j;
    if (!t->slots)
        return PB_RECON_NONE;
    pb__recon_probe_start(t, h, &probe);
    while ((j = pb__recon_probe_next(t, &probe)) != PB_RECON_NONE) {
        const char *q;
        size_t m;
        pb__recon_key_of(k, j, &q, &m);
        if (m == n && memcmp(p, q, n) == 0)
            return j;
    }
    return PB_RECON_NONE;
}

/* ---- the two sides --------------------------------------------------------------- */

struct pb__recon_line {
    int64_t amount;       /* minor units, signed */
    int64_t fee;          /* minor units */
    uint64_t gw_hash;     /* hash of gateway_ref (0 when empty) */
    uint64_t mref_hash;   /* hash of merchant_ref (0 when empty) */
    uint32_t gw_off;      /* gateway_ref in settlement.strings */
    uint32_t mref_off;    /* merchant_ref in settlement.strings */
    uint32_t batch;       /* index into settlement.batches */
    uint32_t line_no;     /* the gateway's line number in its batch */
    uint32_t source_line; /* line in the input file, 0 if not from a file */
    int32_t value_date;
    int32_t settled_date;
    uint16_t gateway; /* interned name in settlement.names */
    uint8_t gw_len;
    uint8_t mref_len;
    uint8_t currency; /* index into run->currencies */
    uint8_t kind;     /* enum pb_recon_line_kind */
};

struct pb__recon_record {
    int64_t amount;
    uint64_t gw_hash;
    uint64_t ref_hash;
    uint32_t id_off;
    uint32_t gw_off;
    uint32_t ref_off;
    uint32_t source_line;
    int32_t date;
    uint16_t erp; /* interned name in ledger.names */
    uint8_t id_len;
    uint8_t gw_len;
    uint8_t ref_len;
    uint8_t currency;
    uint8_t kind; /* enum pb_recon_record_kind */
};

struct pb__recon_batch {
    int64_t gross, fees, net;        /* reported by the header (0 without one) */
    int64_t lines_gross, lines_fees; /* summed from the lines by the index build */
    uint64_t key_hash;               /* hash of (gateway, batch_id) */
    uint64_t id_hash;                /* hash of batch_id alone */
    uint32_t id_off;
    uint32_t source_line; /* of the header; 0 without one */
    uint32_t line_count;
    int32_t date;
    uint16_t gateway;
    uint8_t id_len;
    uint8_t currency;
    uint8_t has_header;
    uint8_t sums_overflow; /* the line sums did not fit in int64 */
};

struct pb__recon_name {
    uint64_t hash;
    uint32_t off;
    uint8_t len;
};

struct pb__recon_names {
    struct pb__recon_table table;
    struct pb__recon_name items[PB__RECON_NAMES_MAX];
    uint32_t count;
    uint32_t last; /* the last name looked up, a one-entry cache */
};

struct pb__recon_problems {
    struct pb_recon_problem *items;
    uint32_t count, cap; /* cap grows up to config max_problems */
    uint64_t total;      /* including those not kept */
};

struct pb__recon_settlement {
    struct pb__recon_line *lines;
    uint32_t line_count, line_cap;
    struct pb__recon_batch *batches;
    uint32_t batch_count, batch_cap;
    struct pb__recon_table batch_table; /* (gateway, batch_id) -> batch */
    uint32_t last_batch;                /* a one-entry cache for consecutive lines */
    struct pb__recon_strings strings;
    struct pb__recon_names names; /* gateways */
    struct pb__recon_problems problems;
};

struct pb__recon_ledger {
    struct pb__recon_record *records;
    uint32_t record_count, record_cap;
    struct pb__recon_strings strings;
    struct pb__recon_names names; /* ERPs */
    struct pb__recon_problems problems;
};

struct pb__recon_currency {
    char code[4];
    int exponent;
    int64_t tolerance;       /* minor units */
    int64_t auto_adjust_max; /* minor units */
};

struct pb__recon_rate {
    uint8_t from, to; /* currency indexes */
    char text[48];    /* the decimal rate as given */
};

struct pb__recon_contract {
    uint32_t gateway_off; /* name in contract_names */
    uint8_t gateway_len;
    uint8_t currency;
    uint32_t fee_bp;
    int64_t fee_fixed;
    int32_t lag_days;
};

/* A growable array of plain values with a hard maximum. */
struct pb__recon_vec {
    void *data;
    uint64_t count, cap; /* in elements */
    uint32_t elem;       /* element size */
};

int pb__recon_vec_push(struct pb__recon_vec *v, const void *elem);
/* Append n uninitialised elements; returns their first index via *first. */
int pb__recon_vec_extend(struct pb__recon_vec *v, uint64_t n, uint64_t *first);
void pb__recon_vec_free(struct pb__recon_vec *v);

struct pb_recon_run {
    unsigned magic;
    struct pb_recon_config cfg;                     /* arrays inside point into the run */
    uint8_t currency_map[PB__RECON_CURRENCY_SLOTS]; /* code -> index + 1; 0 = invalid */
    struct pb__recon_currency currencies[256];
    uint32_t currency_count;
    struct pb__recon_rate *rates;
    uint32_t rate_count;
    struct pb__recon_contract *contracts;
    uint32_t contract_count;
    char *contract_names;
    struct pb_recon_fx_rate *cfg_rates; /* the copied config arrays */
    struct pb_recon_currency_rule *cfg_currencies;
    struct pb_recon_contract *cfg_contracts;

    struct pb__recon_settlement settlement;
    struct pb__recon_ledger ledger;

    int matched; /* pb_recon_match() ran */
    int32_t as_of;

    /* indexes (built by pb__recon_index_build) */
    struct pb__recon_table line_gw, line_mref, record_gw, record_ref, batch_id;
    uint32_t *line_gw_next, *line_mref_next, *record_gw_next, *record_ref_next;

    /* per-element state */
    uint8_t *line_state, *record_state, *line_flags, *record_flags;
    uint32_t *line_link, *record_link;

    /* results */
    struct pb__recon_vec matches; /* struct pb_recon_match */
    struct pb__recon_vec breaks;  /* struct pb_recon_break */
    struct pb__recon_vec members; /* uint32_t */
    struct pb__recon_vec held;    /* uint32_t pairs: line, record */
    uint64_t pending_records;
    uint64_t exact_reference_matches;
    uint64_t exact_reference_fingerprint;
    int16_t *contract_for; /* [gateway * 256 + currency] -> contract index, -1 none */
};

/* ---- shared helpers --------------------------------------------------------------- */

/* Currency index of a 3-byte code, or -1. */
static inline int pb__recon_currency_index(const struct pb_recon_run *run, const char *p, size_t n)
{
    unsigned a, b, c;
    if (n != 3)
        return -1;
    a = (unsigned char)p[0] - 'A';
    b = (unsigned char)p[1] - 'A';
    c = (unsigned char)p[2] - 'A';
    if (a > 25 || b > 25 || c > 25)
        return -1;
    return (int)run->currency_map[a * 676 + b * 26 + c] - 1;
}

static inline int pb__recon_line_dir(unsigned kind)
{
    return kind == PB_RECON_LINE_SALE                                           ? PB__DIR_IN
           : (kind == PB_RECON_LINE_REFUND || kind == PB_RECON_LINE_CHARGEBACK) ? PB__DIR_OUT
                                                                                : PB__DIR_OTHER;
}

static inline int pb__recon_record_dir(unsigned kind)
{
    return kind == PB_RECON_RECORD_PAYMENT   ? PB__DIR_IN
           : kind == PB_RECON_RECORD_JOURNAL ? PB__DIR_OTHER
                                             : PB__DIR_OUT;
}

/* Add a problem for a side (thread-safe across sides; one loader per side). */
void pb__recon_problem(struct pb_recon_run *run, enum pb_recon_side side, uint32_t line,
                       enum pb_recon_problem_code code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Internal add functions with explicit lengths (the CSV scanner's spans). */
struct pb__recon_line_fields {
    struct pb__recon_span gateway, batch_id, gateway_ref, merchant_ref;
    uint32_t line_no;
    int kind;
    int64_t amount, fee;
    int currency; /* index */
    int32_t value_date, settled_date;
    uint32_t source_line;
};
struct pb__recon_batch_fields {
    struct pb__recon_span gateway, batch_id;
    int currency;
    int64_t gross, fees, net;
    int32_t date;
    uint32_t source_line;
};
struct pb__recon_record_fields {
    struct pb__recon_span erp, record_id, gateway_ref, reference;
    int kind;
    int64_t amount;
    int currency;
    int32_t date;
    uint32_t source_line;
};

/* These check lengths, signs, limits and batch consistency. On failure they
 * return an rc with a message in err and add nothing. */
enum pb_rc pb__recon_push_line(struct pb_recon_run *run, const struct pb__recon_line_fields *f,
                               struct pb_err *err);
enum pb_rc pb__recon_push_batch(struct pb_recon_run *run, const struct pb__recon_batch_fields *f,
                                uint32_t *first_line, struct pb_err *err);
enum pb_rc pb__recon_push_record(struct pb_recon_run *run, const struct pb__recon_record_fields *f,
                                 struct pb_err *err);

/* Build the indexes and duplicate marks (one thread per side when allowed). */
enum pb_rc pb__recon_index_build(struct pb_recon_run *run, struct pb_err *err);
/* The rules and the break classification. */
enum pb_rc pb__recon_rules_run(struct pb_recon_run *run, struct pb_err *err);

/* Radix sort of the amount index (recon_sort.c). */
struct pb__recon_sort_item {
    uint64_t amount_key; /* amount with the sign bit flipped: unsigned order = signed order */
    uint32_t date_key;   /* date with the sign bit flipped */
    uint16_t group;      /* currency << 2 | kind class */
    uint16_t unused;
    uint32_t index; /* record index */
    uint32_t unused2;
};
void pb__recon_radix_sort(struct pb__recon_sort_item *items, struct pb__recon_sort_item *tmp,
                          size_t n);

static inline uint64_t pb__recon_amount_key(int64_t a)
{
    return (uint64_t)a ^ (1ull << 63);
}
static inline uint32_t pb__recon_date_key(int32_t d)
{
    return (uint32_t)d ^ (1u << 31);
}

#endif
