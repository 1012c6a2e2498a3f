/*
 * recon/recon.h: settlement reconciliation, the matching engine.
 *
 * What it does. One reconciliation run takes the two sides of a day (or any
 * period) and pairs them up, explaining every pair and every leftover:
 *
 *   settlement side   what the gateways say they paid: batches (payouts) and
 *                     their lines (sales, refunds, chargebacks, fees,
 *                     adjustments), each with its own fee and dates;
 *   ledger side       what the ERPs hold: payments, refunds, credit notes and
 *                     journals, with the gateway reference paybridge posted
 *                     (from its xref) when there is one.
 *
 * The rules run in this order, and each pair or group records the rule that
 * made it and a confidence from 0 to 100 (docs/reconciliation.md has the table):
 *
 *   1 reference      the same gateway transactionId, or else the same merchant
 *                    reference (vendorTxCode, invoice_id) when it is unique on
 *                    both sides;
 *   2 amount         amount within the currency's tolerance, same day;
 *   3 date window    amount within the tolerance, within +-date_window_days;
 *   4 batch          a payout batch against the ledger's deposit of its net,
 *                    with gross - fees = net checked;
 *   5 many-to-one    several lines with one merchant reference (split
 *                    captures) against one record, when they sum exactly;
 *   6 netting        refunds and chargebacks netted against their sale within
 *                    one batch (to zero, or to the one record the ERP holds);
 *   7 FX             different currencies, converted exactly at the rate of
 *                    the run's rate table, within the FX tolerance.
 *
 * Rules 2, 3 and the amount half of 7 only see what no reference links: a line
 * whose references appear on the ledger side (or a record whose references
 * appear on the settlement side) is decided by the reference rules or becomes
 * a break, never paired with a stranger of the same amount.
 *
 * What is left becomes a break, each with a class and a suggested action:
 * amount_differs, missing_in_erp, not_settled, duplicate, fee_out_of_contract,
 * settlement_late and batch_unbalanced. A break whose amount is at most the
 * currency's auto_adjust_max_minor is marked auto-adjustable (the action is an
 * adjusting journal); above it, it waits for review.
 *
 * Who may call it, and threads. A run is owned by one caller. The two sides
 * may be loaded concurrently from two threads (pb_recon_load_settlement_csv()
 * in one, pb_recon_load_ledger_csv() in the other; never two loads of the same
 * side at once); pb_recon_load_files() does exactly that. pb_recon_match()
 * uses up to config.threads threads internally and runs once per run. After
 * it, the run is read-only and may be read from any number of threads.
 *
 * What it owns. Everything: the run copies the configuration, every string
 * and every record into its own arenas; the caller's strings and buffers are
 * borrowed only for the duration of a call. pb_recon_destroy() frees it all.
 * Pointers returned by the accessors stay valid until then.
 *
 * Invariants.
 *   - Money is int64 minor units and an ISO 4217 code (core/money.h). There is
 *     no floating point anywhere in this module; FX goes through
 *     pb_money_convert() and fees through integer basis points.
 *   - Signs: money in is positive, money out negative, on both sides (a refund
 *     line and a credit note are both negative). Loaders enforce it.
 *   - Output is deterministic: the same inputs added in the same order give
 *     the same matches and breaks, in the same order, whatever the number of
 *     threads (pb_recon_digest() is a fingerprint of it).
 *   - Outside input never aborts: a bad CSV line becomes a problem (line
 *     number, reason) and the rest is processed.
 *
 * Rejected designs.
 *   - One struct per record with malloc'd strings: at a million records a
 *     side, per-record malloc and pointer chasing cost more than the matching.
 *     Records are compact structs in arrays, strings are offsets into one
 *     arena per side, references are looked up by 64-bit hash in open
 *     addressing tables and verified byte for byte on a hit.
 *   - Sorting both sides by reference and merging: O(n log n) with string
 *     compares, against O(n) hash probes.
 *   - Global greedy or optimal assignment (Hungarian) for the amount rules:
 *     cubic, and its answers are harder to explain to a controller than
 *     "closest date first, in line order".
 *   - SQL over the store: the store is the system of record for runs, not a
 *     matching engine; 1M x 1M in 2 s needs data laid out for this job.
 */
#ifndef PB_RECON_RECON_H
#define PB_RECON_RECON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/err.h"

/* "No such index": a match without a batch, a break without a first sighting. */
#define PB_RECON_NONE UINT32_MAX

/* A date is a count of days since 1970-01-01 (negative before). */
#define PB_RECON_DATE_NONE INT32_MIN

/* Longest reference, record id, batch id or gateway name accepted, in bytes. */
#define PB_RECON_STRING_MAX 255

enum pb_recon_side {
    PB_RECON_SETTLEMENT = 0,
    PB_RECON_LEDGER = 1,
};

enum pb_recon_line_kind {
    PB_RECON_LINE_SALE = 0,   /* a capture; amount >= 0 */
    PB_RECON_LINE_REFUND,     /* amount <= 0 */
    PB_RECON_LINE_CHARGEBACK, /* amount <= 0 */
    PB_RECON_LINE_FEE,        /* a fee charged as its own line (e.g. a chargeback fee) */
    PB_RECON_LINE_ADJUSTMENT, /* a gateway correction; either sign */
    PB_RECON_LINE_KIND_COUNT
};

enum pb_recon_record_kind {
    PB_RECON_RECORD_PAYMENT = 0, /* amount >= 0 */
    PB_RECON_RECORD_REFUND,      /* amount <= 0 */
    PB_RECON_RECORD_CREDIT_NOTE, /* amount <= 0 (refunds and chargebacks) */
    PB_RECON_RECORD_JOURNAL,     /* either sign: fee journals, payout deposits */
    PB_RECON_RECORD_KIND_COUNT
};

enum pb_recon_rule {
    PB_RECON_RULE_REFERENCE = 1,
    PB_RECON_RULE_AMOUNT = 2,
    PB_RECON_RULE_DATE_WINDOW = 3,
    PB_RECON_RULE_BATCH = 4,
    PB_RECON_RULE_MANY_TO_ONE = 5,
    PB_RECON_RULE_NETTING = 6,
    PB_RECON_RULE_FX = 7,
};
#define PB_RECON_RULE_COUNT 8 /* rules are 1..7; index 0 is unused */

enum pb_recon_break_class {
    PB_RECON_BREAK_AMOUNT_DIFFERS = 0,  /* linked by reference, amounts differ */
    PB_RECON_BREAK_MISSING_IN_ERP,      /* settled, never posted */
    PB_RECON_BREAK_NOT_SETTLED,         /* posted, never settled, older than the lag */
    PB_RECON_BREAK_DUPLICATE,           /* the same reference twice on one side */
    PB_RECON_BREAK_FEE_OUT_OF_CONTRACT, /* fee != basis points + fixed fee of the contract */
    PB_RECON_BREAK_SETTLEMENT_LATE,     /* value date later than settled date + lag */
    PB_RECON_BREAK_BATCH_UNBALANCED,    /* gross - fees != net, or lines != header */
    PB_RECON_BREAK_CLASS_COUNT
};

enum pb_recon_action {
    PB_RECON_ACTION_POST_ADJUSTMENT_JOURNAL = 0, /* auto-adjustable: a journal for the difference */
    PB_RECON_ACTION_REVIEW_AMOUNT,               /* a person compares both documents */
    PB_RECON_ACTION_POST_TO_ERP,                 /* replay the event, or post the fee/adjustment */
    PB_RECON_ACTION_ASK_GATEWAY_STATUS,    /* posted but not settled: voided? still pending? */
    PB_RECON_ACTION_VOID_DUPLICATE_RECORD, /* the ERP holds it twice */
    PB_RECON_ACTION_RAISE_DUPLICATE_WITH_GATEWAY, /* the gateway settled it twice */
    PB_RECON_ACTION_DISPUTE_FEE,                  /* claim the difference from the gateway */
    PB_RECON_ACTION_CHASE_LATE_SETTLEMENT,        /* ask why the funds came late */
    PB_RECON_ACTION_REQUEST_CORRECTED_REPORT,     /* the batch does not add up */
    PB_RECON_ACTION_COUNT
};

/* ---- configuration -------------------------------------------------------------- */

/* Per-currency knobs. A currency without an entry uses the config defaults. */
struct pb_recon_currency_rule {
    char currency[4];              /* ISO 4217 code */
    int64_t tolerance_minor;       /* |difference| <= this still matches (0 = exact) */
    int64_t auto_adjust_max_minor; /* breaks with |amount| <= this are auto-adjustable */
};

/* One FX rate: 1 unit of `from` = `rate` units of `to` (a decimal string, see
 * pb_money_convert()). The inverse direction is derived by converting the
 * other side, never by dividing. */
struct pb_recon_fx_rate {
    char from[4];
    char to[4];
    const char *rate; /* borrowed during pb_recon_create(), copied */
};

/* The fee contract of one gateway in one currency. */
struct pb_recon_contract {
    const char *gateway; /* gateway name as in the settlement data; copied */
    char currency[4];
    uint32_t fee_basis_points;   /* 175 = 1.75% of |amount| */
    int64_t fee_fixed_minor;     /* plus this per sale */
    int32_t settlement_lag_days; /* value date at most settled date + this; < 0 = default */
};

struct pb_recon_config {
    int32_t date_window_days;        /* rule 3: +- days between settled date and ledger date */
    int32_t settlement_lag_days;     /* default lag: settlement_late, and not_settled age */
    int32_t as_of_date;              /* the run's date; PB_RECON_DATE_NONE = latest settled date */
    uint32_t fx_tolerance_bp;        /* rule 7: extra tolerance in basis points of the amount */
    int64_t default_tolerance_minor; /* for currencies without a currency rule */
    int64_t default_auto_adjust_max_minor;
    const struct pb_recon_currency_rule *currencies; /* borrowed during create, copied */
    size_t currency_count;
    const struct pb_recon_fx_rate *rates;
    size_t rate_count;
    const struct pb_recon_contract *contracts;
    size_t contract_count;
    uint32_t max_lines; /* limits: more is PB_ERR_TOOBIG (a problem in a CSV) */
    uint32_t max_records;
    uint32_t max_batches;
    uint32_t max_problems;     /* problems kept per side; more are only counted */
    uint64_t max_string_bytes; /* per side */
    int threads;               /* 1 or 2 */
};

/* Defaults: window 3 days, lag 3 days, as_of none, FX 50 bp, tolerance 0,
 * auto-adjust 0 (nothing automatic), limits 16M lines and records, 1M
 * batches, 1000 problems, 2 GiB of strings per side, 2 threads. */
void pb_recon_config_init(struct pb_recon_config *cfg);

/* ---- input ---------------------------------------------------------------------- */

/* Every string is borrowed for the call and copied; NULL means empty. */
struct pb_recon_batch_in {
    const char *gateway;
    const char *batch_id;
    const char *currency;
    int64_t gross_minor;  /* sales + refunds + chargebacks + adjustments (signed) */
    int64_t fees_minor;   /* per-line fees + fee lines, as a positive cost */
    int64_t net_minor;    /* the payout: gross - fees */
    int32_t date;         /* payout (value) date */
    uint32_t source_line; /* line in the input file, 0 when not from a file */
};

struct pb_recon_line_in {
    const char *gateway;
    const char *batch_id; /* a batch without a header is created from its lines */
    uint32_t line_no;     /* the gateway's line number within the batch */
    enum pb_recon_line_kind kind;
    const char *gateway_ref;  /* transactionId */
    const char *merchant_ref; /* vendorTxCode / invoice_id; for refunds, the order's */
    int64_t amount_minor;     /* signed: money in > 0 */
    int64_t fee_minor;        /* the gateway's fee on this line (a cost, >= 0 normally) */
    const char *currency;
    int32_t value_date;   /* day the funds are value-dated */
    int32_t settled_date; /* day the gateway settled the transaction */
    uint32_t source_line;
};

struct pb_recon_record_in {
    const char *erp;       /* the ERP connection, e.g. "xero-demo" */
    const char *record_id; /* the ERP's id of the record */
    enum pb_recon_record_kind kind;
    const char *gateway_ref; /* what paybridge posted (its xref); may be empty */
    const char *reference;   /* the merchant reference on the document */
    int64_t amount_minor;    /* signed like the settlement: a refund is negative */
    const char *currency;
    int32_t date;
    uint32_t source_line;
};

/* ---- output --------------------------------------------------------------------- */

/* A pair or group. Its members are line_count settlement line indices then
 * record_count ledger record indices, at pb_recon_members(run) + members. A
 * batch match (rule 4) names the batch and lists no lines: its lines are the
 * batch's. */
struct pb_recon_match {
    uint32_t members; /* offset into the member array */
    uint32_t line_count;
    uint32_t record_count;
    uint32_t batch;           /* rules 4 and 6: the batch; else PB_RECON_NONE */
    int64_t difference_minor; /* settlement - ledger, in `currency` (after FX); 0 = exact */
    uint16_t rate;            /* rule 7: index into config.rates; else UINT16_MAX */
    uint8_t rule;             /* enum pb_recon_rule */
    uint8_t confidence;       /* 0..100 */
    char currency[4];         /* currency of difference_minor (the ledger's) */
};

struct pb_recon_break {
    uint32_t members; /* as in a match: lines, then records */
    uint32_t line_count;
    uint32_t record_count;
    uint32_t batch;       /* the batch concerned, or PB_RECON_NONE */
    uint32_t first_seen;  /* duplicate: index of the first occurrence on the same side */
    int64_t amount_minor; /* the discrepancy in `currency` (sign: settlement - ledger) */
    uint8_t class_;       /* enum pb_recon_break_class */
    uint8_t action;       /* enum pb_recon_action */
    uint8_t auto_adjust;  /* 1: |amount| <= the currency's auto_adjust_max_minor */
    uint8_t side;         /* enum pb_recon_side of the members that caused it */
    char currency[4];
};

enum pb_recon_problem_code {
    PB_RECON_PROBLEM_COLUMN_COUNT = 0, /* a line with more or fewer columns than the header */
    PB_RECON_PROBLEM_TRUNCATED,        /* the file ends in the middle of a line */
    PB_RECON_PROBLEM_AMOUNT,           /* not an exact decimal for the currency */
    PB_RECON_PROBLEM_CURRENCY,         /* not an ISO 4217 code */
    PB_RECON_PROBLEM_DATE,             /* not YYYY-MM-DD */
    PB_RECON_PROBLEM_FIELD,            /* any other malformed or missing field */
    PB_RECON_PROBLEM_DUPLICATE_BATCH,  /* a batch header seen twice */
    PB_RECON_PROBLEM_LIMIT,            /* a configured maximum was reached */
    PB_RECON_PROBLEM_CODE_COUNT
};

struct pb_recon_problem {
    uint32_t line;     /* 1-based line number in the file */
    uint8_t side;      /* enum pb_recon_side */
    uint8_t code;      /* enum pb_recon_problem_code */
    char message[150]; /* e.g. "column amount: \"12.x\" is not a decimal" */
};

struct pb_recon_summary {
    uint64_t lines, records, batches;
    uint64_t matches_by_rule[PB_RECON_RULE_COUNT];
    uint64_t lines_matched, records_matched;
    uint64_t exact_reference_matches;     /* rule 1 pairs, same currency, difference 0 */
    uint64_t exact_reference_fingerprint; /* sum of line source_line * 2^32 + record source_line */
    uint64_t breaks_by_class[PB_RECON_BREAK_CLASS_COUNT];
    uint64_t auto_adjustable; /* breaks marked auto-adjustable */
    uint64_t pending_records; /* unsettled but younger than the lag: not a break */
    uint64_t problems[2];     /* bad input lines per side (all, not only those kept) */
};

/* A read-only view of one line or record; strings point into the run. */
struct pb_recon_text {
    const char *ptr; /* not NUL-terminated */
    uint32_t len;
};

struct pb_recon_line_view {
    struct pb_recon_text gateway, batch_id, gateway_ref, merchant_ref;
    enum pb_recon_line_kind kind;
    uint32_t line_no, source_line, batch;
    int64_t amount_minor, fee_minor;
    char currency[4];
    int32_t value_date, settled_date;
};

struct pb_recon_record_view {
    struct pb_recon_text erp, record_id, gateway_ref, reference;
    enum pb_recon_record_kind kind;
    uint32_t source_line;
    int64_t amount_minor;
    char currency[4];
    int32_t date;
};

struct pb_recon_batch_view {
    struct pb_recon_text gateway, batch_id;
    char currency[4];
    int has_header;                              /* 0: created from its lines, no reported totals */
    int64_t gross_minor, fees_minor, net_minor;  /* as reported (header) */
    int64_t lines_gross_minor, lines_fees_minor; /* as summed from the lines */
    uint32_t line_count, source_line;
    int32_t date;
};

/* ---- the run -------------------------------------------------------------------- */

struct pb_recon_run;

/* Create an empty run. The config is copied; *out is owned by the caller and
 * freed with pb_recon_destroy(). Errors: PB_ERR_CONFIG for a bad currency
 * code, rate or contract; PB_ERR_NOMEM. */
enum pb_rc pb_recon_create(const struct pb_recon_config *cfg, struct pb_recon_run **out,
                           struct pb_err *err);
void pb_recon_destroy(struct pb_recon_run *run);

/* Add one batch header, line or record (copied). Bad input gives
 * PB_ERR_INVALID / PB_ERR_CURRENCY and adds nothing; a full run gives
 * PB_ERR_TOOBIG. A second header for the same (gateway, batch_id) is
 * PB_ERR_EXISTS. Not after pb_recon_match(). */
enum pb_rc pb_recon_add_batch(struct pb_recon_run *run, const struct pb_recon_batch_in *in,
                              struct pb_err *err);
enum pb_rc pb_recon_add_line(struct pb_recon_run *run, const struct pb_recon_line_in *in,
                             struct pb_err *err);
enum pb_rc pb_recon_add_record(struct pb_recon_run *run, const struct pb_recon_record_in *in,
                               struct pb_err *err);

/* Load a CSV file held in memory (borrowed for the call). The first line is
 * the header and names the columns, in any order (docs/reconciliation.md):
 *
 *   settlement: record,gateway,batch_id,line_no,kind,gateway_ref,merchant_ref,
 *               amount,fee,net,currency,value_date,settled_date
 *               (record is "batch" or "line"; record, line_no and net optional)
 *   ledger:     erp,record_id,kind,gateway_ref,reference,amount,currency,date
 *               (erp, gateway_ref and reference optional)
 *
 * Fields may be quoted ("a,b", "say ""hi"""). A bad line becomes a problem
 * and is skipped; the call still returns PB_OK. Only a missing or malformed
 * header, or an I/O error, fails the whole file. */
enum pb_rc pb_recon_load_settlement_csv(struct pb_recon_run *run, const char *data, size_t len,
                                        struct pb_err *err);
enum pb_rc pb_recon_load_ledger_csv(struct pb_recon_run *run, const char *data, size_t len,
                                    struct pb_err *err);

/* mmap both files and load them, in two threads when config.threads >= 2. */
enum pb_rc pb_recon_load_files(struct pb_recon_run *run, const char *settlement_path,
                               const char *ledger_path, struct pb_err *err);

/* Run the rules and classify the breaks. Once per run. */
enum pb_rc pb_recon_match(struct pb_recon_run *run, struct pb_err *err);

/* ---- results (valid after pb_recon_match, until pb_recon_destroy) ------------------ */

const struct pb_recon_match *pb_recon_matches(const struct pb_recon_run *run, size_t *count);
const struct pb_recon_break *pb_recon_breaks(const struct pb_recon_run *run, size_t *count);
const uint32_t *pb_recon_members(const struct pb_recon_run *run);
/* The bad input lines of one side, in line order (at most config.max_problems
 * kept; pb_recon_summary() counts them all). Valid whenever no load of that
 * side is running. */
const struct pb_recon_problem *pb_recon_problems(const struct pb_recon_run *run,
                                                 enum pb_recon_side side, size_t *count);
void pb_recon_summary(const struct pb_recon_run *run, struct pb_recon_summary *out);
/* A 64-bit fingerprint of every match and break, in order. */
uint64_t pb_recon_digest(const struct pb_recon_run *run);

size_t pb_recon_line_count(const struct pb_recon_run *run);
size_t pb_recon_record_count(const struct pb_recon_run *run);
size_t pb_recon_batch_count(const struct pb_recon_run *run);
void pb_recon_line_get(const struct pb_recon_run *run, uint32_t index,
                       struct pb_recon_line_view *out);
void pb_recon_record_get(const struct pb_recon_run *run, uint32_t index,
                         struct pb_recon_record_view *out);
void pb_recon_batch_get(const struct pb_recon_run *run, uint32_t index,
                        struct pb_recon_batch_view *out);

/* One line of explanation for a person, e.g. "rule 1 reference (transactionId
 * T123), confidence 100: line 12 opayo B7/3 sale 10.99 GBP = record INV-9
 * payment 10.99 GBP". Always NUL-terminated; truncated to len. */
void pb_recon_explain_match(const struct pb_recon_run *run, size_t index, char *buf, size_t len);
void pb_recon_explain_break(const struct pb_recon_run *run, size_t index, char *buf, size_t len);

/* Write every match and break as JSON lines ({"match":...} / {"break":...}). */
enum pb_rc pb_recon_write_jsonl(const struct pb_recon_run *run, FILE *out, struct pb_err *err);

/* ---- names and dates ----------------------------------------------------------- */

const char *pb_recon_rule_name(unsigned rule);        /* "reference", ..., "?" */
const char *pb_recon_break_name(unsigned class_);     /* "amount_differs", ... */
const char *pb_recon_action_name(unsigned action);    /* "post_adjustment_journal", ... */
const char *pb_recon_action_text(unsigned action);    /* a sentence for a person */
const char *pb_recon_line_kind_name(unsigned kind);   /* "sale", ... */
const char *pb_recon_record_kind_name(unsigned kind); /* "payment", ... */
const char *pb_recon_problem_name(unsigned code);     /* "column_count", ... */

/* Strict YYYY-MM-DD (years 1900..9999) <-> days since 1970-01-01.
 * pb_recon_date_parse returns 0 on success, -1 when malformed (out untouched). */
int pb_recon_date_parse(const char *text, size_t len, int32_t *out);
void pb_recon_date_format(int32_t days, char buf[11]);

#endif
