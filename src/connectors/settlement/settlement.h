/*
 * connectors/settlement/settlement.h: the settlement data model. A
 * settlement SET holds what gateways say they paid out: BATCHES (one payout
 * in one currency) and their LINES (a sale, refund, chargeback, fee or
 * adjustment inside a batch), plus the BAD-LINE list of everything a parser
 * refused, with where it came from and why.
 *
 * Who calls it. The parsers (settlement_csv.c, settlement_opayo.c,
 * settlement_paytrace.c) fill a set; the Opayo reporting client, the
 * watched-directory and SFTP readers hand them bytes; the reconciliation
 * matcher reads the set. Only parsers write (through the pb__settlement_*
 * calls at the end of this file); everyone else reads.
 *
 * Money. Every amount is an int64 count of minor units of the line's or
 * batch's ISO 4217 currency (core/money.h). Report text ("5.67") becomes
 * minor units through pb_money_parse_decimal() or pb_json_to_minor(); no
 * double ever holds an amount. Signs are the merchant's view of the money:
 *   amount_minor  sale > 0; refund, chargeback < 0; adjustment either; a
 *                 fee line carries the fee as a negative amount;
 *   fee_minor     what the gateway kept for this line, >= 0 when charged
 *                 (a rebate is negative);
 *   batch         gross = sum of the amounts of its non-fee lines,
 *                 fees  = sum of fee_minor + the (positive) size of its fee
 *                         lines,
 *                 net   = gross - fees = what reached the bank.
 * When a source states a batch's totals (Opayo's batch list, PayTrace's
 * settled export) those are kept as the batch's gross/fees/net and the line
 * sums are kept beside them; pb__settlement_load_end() reports a batch
 * whose own numbers disagree (gross - fees != net, a line count or a sum
 * that differs from its lines) as a bad line of the batch, so that a
 * truncated detail or a gateway's arithmetic slip is visible at once.
 *
 * Dates are whole UTC days since 1970-01-01 in an int32
 * (PB_SETTLEMENT_NO_DATE when the source gave none): compact, totally
 * ordered, and what a date-window rule wants.
 *
 * Storage. A set owns one arena for its strings (ids, references, sources,
 * reasons) and two growable arrays for batches and lines, each with a hard
 * maximum (PB_SETTLEMENT_MAX_*). A line is 64 bytes plus its two reference
 * strings, so a million lines fit in well under 200 MB. Batch ids are
 * interned: every line of a batch points at the batch's own string, and an
 * open-addressing hash finds a batch by (gateway, id) in O(1). Pointers
 * returned by the accessors are valid until pb_settlement_set_free(); the
 * arrays may move while a parser adds to them, so never keep a line or
 * batch pointer across a parse call (keep its index).
 *
 * Loads and duplicates. Every parse call is one LOAD (a file, an API reply).
 * Rows of one load that name the same batch belong to that batch. A batch
 * id that a previous load already filled with lines is a DUPLICATE: the
 * first row that names it is reported ("batch 1001 was already loaded from
 * X line N") and the rows are skipped, so the same report dropped twice
 * under two names never doubles the money. Two exceptions: a batch that a
 * list declared without lines (a header) is filled by the next load that
 * brings its lines (Opayo's getBatchList then getBatchDetail), and
 * pb_settlement_continue() makes the next parse call part of the previous
 * load (page 2 of a paged reply).
 *
 * Bad lines. Each entry is {source, line, reason}; the line is the physical
 * line of the source where the refused record starts (1-based; 0 = the
 * whole source). The list keeps the first PB_SETTLEMENT_MAX_BAD entries and
 * counts the rest, so a garbage file cannot exhaust memory.
 *
 * Threading: a set is not thread-safe; one thread fills it, then any number
 * may read it while nobody writes.
 *
 * Rejected designs.
 *   - One malloc per string: a million lines meant three million mallocs and
 *     frees, and the set could not be dropped in one call.
 *   - Storing amounts as text and converting in the matcher: every consumer
 *     would redo (and could get wrong) the exact conversion.
 *   - Dropping a whole file on its first bad line: one typo in a day's
 *     report would hide every other payout of the day.
 */
#ifndef PB_CONNECTORS_SETTLEMENT_SETTLEMENT_H
#define PB_CONNECTORS_SETTLEMENT_SETTLEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define PB_SETTLEMENT_NO_DATE INT32_MIN
#define PB_SETTLEMENT_MAX_LINES (50u * 1000u * 1000u)            /* lines in one set */
#define PB_SETTLEMENT_MAX_BATCHES (5u * 1000u * 1000u)           /* batches in one set */
#define PB_SETTLEMENT_MAX_BAD 10000u                             /* bad-line entries kept */
#define PB_SETTLEMENT_ARENA_MAX ((size_t)2 * 1024 * 1024 * 1024) /* string bytes */
#define PB_SETTLEMENT_ID_MAX 128          /* longest batch id, gateway or merchant reference */
#define PB_SETTLEMENT_NO_COUNT UINT32_MAX /* a batch whose source declared no line count */
#define PB_SETTLEMENT_NO_BATCH UINT32_MAX /* line.batch of a line outside any batch */

enum pb_settlement_kind {
    PB_SETTLEMENT_SALE = 0,
    PB_SETTLEMENT_REFUND = 1,
    PB_SETTLEMENT_CHARGEBACK = 2,
    PB_SETTLEMENT_FEE = 3,
    PB_SETTLEMENT_ADJUSTMENT = 4,
};
#define PB_SETTLEMENT_KIND_COUNT 5

/* A batch's gross/fees/net were stated by its source (not summed from lines). */
#define PB_SETTLEMENT_BATCH_DECLARED 0x1u
/* A list declared the batch; no load has brought its lines yet. */
#define PB_SETTLEMENT_BATCH_HEADER_ONLY 0x2u

struct pb_settlement_batch {
    const char *gateway;        /* arena: "opayo", "paytrace", a CSV source's gateway */
    const char *batch_id;       /* arena, interned: lines point at this same string */
    const char *source;         /* arena: the source that first named it */
    uint32_t source_line;       /* where in `source` (0 = unknown) */
    char currency[4];           /* ISO 4217; every line of the batch has it */
    int32_t date;               /* settlement (payout) date, days since epoch, or NO_DATE */
    uint32_t line_count;        /* lines of this batch in the set */
    uint32_t declared_count;    /* lines the source said it has, or PB_SETTLEMENT_NO_COUNT */
    unsigned flags;             /* PB_SETTLEMENT_BATCH_* */
    uint32_t load;              /* the load that created or filled it */
    uint32_t dup_reported_load; /* the last load whose duplicate was reported (0 = none) */
    int64_t gross_minor;        /* declared, or the line sums (see the header essay) */
    int64_t fees_minor;
    int64_t net_minor;         /* gross - fees */
    int64_t lines_gross_minor; /* sums over its lines, always */
    int64_t lines_fees_minor;
};

struct pb_settlement_line {
    const char *batch_id;     /* the batch's interned string ("" outside any batch) */
    const char *gateway_ref;  /* arena: the gateway's transaction id ("" when absent) */
    const char *merchant_ref; /* arena: the merchant's reference, e.g. vendorTxCode ("") */
    int64_t amount_minor;     /* signed, see the header essay */
    int64_t fee_minor;        /* what the gateway kept */
    uint32_t batch;           /* index of its batch, or PB_SETTLEMENT_NO_BATCH (an
                                 unsettled transaction of a transaction list) */
    uint32_t line_no;         /* physical line in its source where the record starts */
    int32_t value_date;       /* the transaction's date, days since epoch, or NO_DATE */
    int32_t settled_date;     /* the payout date, or NO_DATE */
    char currency[4];
    uint8_t kind; /* enum pb_settlement_kind */
};

struct pb_settlement_bad {
    const char *source; /* arena: file name, "opayo getBatchDetail 1001", ... */
    uint32_t line;      /* 1-based physical line; 0 = the whole source */
    const char *reason; /* arena: what is wrong, naming the column or element */
};

struct pb_settlement_set;

/* A new empty set. NULL when out of memory. The caller frees it. */
struct pb_settlement_set *pb_settlement_set_new(void);
/* Free the set and everything it holds (every pointer it handed out). NULL is a no-op. */
void pb_settlement_set_free(struct pb_settlement_set *set);

size_t pb_settlement_batch_count(const struct pb_settlement_set *set);
size_t pb_settlement_line_count(const struct pb_settlement_set *set);
size_t pb_settlement_bad_count(const struct pb_settlement_set *set);
/* Bad lines refused beyond the PB_SETTLEMENT_MAX_BAD kept. */
size_t pb_settlement_bad_dropped(const struct pb_settlement_set *set);

/* Borrowed views, valid until the next parse call or the set's free; NULL
 * when i is out of range. */
const struct pb_settlement_batch *pb_settlement_batch_at(const struct pb_settlement_set *set,
                                                         size_t i);
const struct pb_settlement_line *pb_settlement_line_at(const struct pb_settlement_set *set,
                                                       size_t i);
const struct pb_settlement_bad *pb_settlement_bad_at(const struct pb_settlement_set *set, size_t i);

/* The index of batch `batch_id` of `gateway`, or -1. */
long pb_settlement_batch_find(const struct pb_settlement_set *set, const char *gateway,
                              const char *batch_id);

/* Make the next parse call part of the previous load (its next page), so
 * that a batch continued there is not a duplicate. */
void pb_settlement_continue(struct pb_settlement_set *set);

/* Append a bad entry (formatted reason). Used by parsers and by callers
 * that refuse a whole source (a file too big, a failed fetch). */
void pb_settlement_bad_add(struct pb_settlement_set *set, const char *source, uint32_t line,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* "sale", "refund", "chargeback", "fee", "adjustment". */
const char *pb_settlement_kind_name(enum pb_settlement_kind kind);
/* The kind named (case-insensitively) by text, or -1. */
int pb_settlement_kind_parse(const char *text, size_t len);

/* ---- dates --------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date; the caller checks the
 * ranges (month 1..12, day valid for the month). */
int32_t pb_settlement_days_from_civil(int year, unsigned month, unsigned day);
/* 1 when year/month/day is a real date (year 1..9999). */
int pb_settlement_date_valid(int year, unsigned month, unsigned day);
/* "YYYY-MM-DD" into buf (at least 11 bytes); "" for PB_SETTLEMENT_NO_DATE. */
void pb_settlement_date_format(int32_t days, char *buf, size_t len);
/* Parse exactly `len` bytes of text with a strptime(3) format ("%Y-%m-%d",
 * "%d/%m/%Y %H:%M:%S"); the time of day is read and dropped. The whole text
 * must be consumed. PB_ERR_INVALID otherwise (err says what was expected). */
enum pb_rc pb_settlement_date_parse(const char *text, size_t len, const char *format, int32_t *days,
                                    struct pb_err *err);

/* ---- for parsers only ------------------------------------------------------ */

/* Start a load (a parse call): returns its id. Honours pb_settlement_continue(). */
uint32_t pb__settlement_load_begin(struct pb_settlement_set *set);
/* End a load: check the batches it declared or filled (see the header
 * essay) and report disagreements as bad entries of `source`. */
void pb__settlement_load_end(struct pb_settlement_set *set, uint32_t load);

/* Copy len bytes of s into the arena as a NUL-terminated string; NULL when
 * out of memory or above PB_SETTLEMENT_ARENA_MAX. */
const char *pb__settlement_strdup(struct pb_settlement_set *set, const char *s, size_t len);

/* What a parser knows about a batch when it first meets it. */
struct pb__settlement_batch_in {
    const char *gateway;  /* borrowed, NUL-terminated */
    const char *batch_id; /* borrowed bytes, id_len of them (1..PB_SETTLEMENT_ID_MAX) */
    size_t id_len;
    const char *currency; /* borrowed, a valid ISO 4217 code */
    const char *source;   /* borrowed */
    uint32_t source_line;
    int32_t date;    /* or PB_SETTLEMENT_NO_DATE */
    int header_only; /* 1: a list's entry, lines come later */
    int declared;    /* 1: gross/fees/net below are the source's */
    int64_t gross_minor, fees_minor, net_minor;
    uint32_t declared_count; /* or PB_SETTLEMENT_NO_COUNT */
};

/* Find or create the batch for `in` within `load`: PB_OK with *index (new,
 * already seen in this load, or a header this load fills), PB_ERR_EXISTS for
 * a duplicate of an earlier load (reported once per load and batch as a bad
 * entry of in->source at in->source_line), PB_ERR_INVALID when an existing
 * batch of this load has another currency (reported), PB_ERR_TOOBIG /
 * PB_ERR_NOMEM at the limits (err set). */
enum pb_rc pb__settlement_batch_get(struct pb_settlement_set *set, uint32_t load,
                                    const struct pb__settlement_batch_in *in, uint32_t *index,
                                    struct pb_err *err);

/* What a parser knows about one line. Strings are borrowed bytes. */
struct pb__settlement_line_in {
    uint32_t line_no;
    enum pb_settlement_kind kind;
    const char *gateway_ref;
    size_t gateway_ref_len;
    const char *merchant_ref;
    size_t merchant_ref_len;
    int64_t amount_minor;
    int64_t fee_minor;
    const char *currency; /* must equal the batch's (the caller checked) */
    int32_t value_date, settled_date;
};

/* Append a line to batch `index` (or PB_SETTLEMENT_NO_BATCH), updating its sums. PB_ERR_RANGE when
 * a sum would overflow (nothing is added), PB_ERR_TOOBIG / PB_ERR_NOMEM at the limits. err is set;
 * the caller reports the line. */
enum pb_rc pb__settlement_line_add(struct pb_settlement_set *set, uint32_t index,
                                   const struct pb__settlement_line_in *in, struct pb_err *err);

#endif
