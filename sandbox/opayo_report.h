/*
 * sandbox/opayo_report.h: the emulator of Opayo's Reporting & Admin API
 * (access.htm) and of settlement, for the Opayo emulator to serve beside Pi.
 *
 * It keeps its own state (settled batches, the reporting user) behind its
 * own mutex and knows the Pi emulator's transactions only through a SOURCE
 * callback, so that sandbox/opayo.c needs three lines to serve it (see
 * docs/settlement.md, "Sandbox"):
 *
 *     st->report = sbx_opayo_report_create(settings, opayo_transactions, st, err);
 *     ROUTE("POST", "/access/access.htm", <a handler calling sbx_opayo_report_access>);
 *     ROUTE("POST", "/_sandbox/settle",   <a handler calling sbx_opayo_report_settle>);
 *     ... sbx_opayo_report_destroy(st->report) in destroy, _reset in reset.
 *
 * The handlers take the report state as `arg`, so sbx_opayo_report_routes()
 * can also be served on a pb_httpd of its own (the unit tests do).
 *
 * Lock order: the source callback is called with no report lock held (it
 * takes the Pi store's lock), so the two locks are never nested.
 */
#ifndef PB_SANDBOX_OPAYO_REPORT_H
#define PB_SANDBOX_OPAYO_REPORT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "net/httpd.h"

struct sbx_opayo_report;

/* The Pi emulator's transactions now: a new JSON array of its retrieve
 * shape (transactionId, transactionType, status, amount.totalAmount,
 * currency, vendorTxCode, createdAt), owned by the caller; NULL on failure. */
typedef json_t *(*sbx_opayo_report_source)(void *ctx);

/* Create the state from `settings` (borrowed; the Opayo emulator's own
 * settings object, or NULL), reading these keys (defaults shown):
 *   {"vendor_name":"sandbox", "report_user":"sandbox-report",
 *    "report_password":"sandbox-report-password", "report_fee_rate_bp":150,
 *    "report_fee_fixed":"0.20", "report_page_rows":50, "report_first_batch":100001,
 *    "report_chargeback_fee":"15.00"}
 * (fees: 1.5% + 0.20 per sale; refunds carry no fee; a chargeback 15.00). `source` may be NULL:
 * then POST /_sandbox/settle must carry the transactions. NULL with err set
 * on a bad setting. */
struct sbx_opayo_report *sbx_opayo_report_create(json_t *settings, sbx_opayo_report_source source,
                                                 void *source_ctx, struct pb_err *err);
void sbx_opayo_report_destroy(struct sbx_opayo_report *r);
/* Forget every batch and settled transaction (POST /_sandbox/reset). */
void sbx_opayo_report_reset(struct sbx_opayo_report *r);

/* POST /access/access.htm: form field XML=<vspaccess>...; verifies the MD5
 * signature and answers getBatchList, getBatchDetail, getTransactionList. */
enum pb_http_action sbx_opayo_report_access(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *report);
/* POST /_sandbox/settle: close a batch per currency of the transactions not
 * yet settled (body, all optional):
 *   {"transactions":[retrieve shapes]     default: the source's; extensions read:
 *                                         "voided"/"aborted": true (not settled),
 *                                         "releasedAmount": N on a Deferred (settled
 *                                         as a Release of N; N < amount: a partial capture)
 *    "date":"YYYY-MM-DD",                 the batch date, default today (UTC)
 *    "missing":["<transactionId>"] | N,   left out of settlement for good
 *    "wrong_fee":["<transactionId>"] | N, sales charged fee_delta too much
 *    "fee_delta":"0.10",
 *    "chargebacks":["<transactionId>"] | N, settled sales charged back (once each)
 *    "seed": 1,                           the PRNG of the N picks (deterministic)
 *    "file_dir":"/abs/dir"}               also write each batch as a CSV report file
 * -> 200 {"settled", "batches":[{"batchid","currency","date","transactions","gross",
 * "fees","net","file"?}], "files":[paths], "anomalies":{"missing":[ids],
 * "wrong_fee":[ids],"chargebacks":[ids],"partial_captures":[ids]}}; 400 for a bad
 * date, seed, fee_delta or file_dir (nothing settled); 500 when a file could not
 * be written (the batches are settled). */
enum pb_http_action sbx_opayo_report_settle(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *report);
/* GET /_sandbox/settlements: every batch with its lines, as JSON. */
enum pb_http_action sbx_opayo_report_settlements(struct pb_http_request *req,
                                                 struct pb_http_response *resp, void *report);

/* The three routes above with `r` as arg, ending in {NULL}. */
const struct pb_http_route *sbx_opayo_report_routes(struct sbx_opayo_report *r);

/* ---- settlement helpers shared by the emulators (sandbox/paytrace.c too) ---- */

/* The anomaly picks: `spec` an array of ids (returned as it is) or a count
 * N (N ids of `candidates`, an array of strings, that are not in `exclude`,
 * chosen by a PRNG seeded with `seed`, in candidate order). Deterministic:
 * the same candidates and seed give the same ids. A new array. */
json_t *sbx_settlement_pick(const json_t *spec, const json_t *candidates, const json_t *exclude,
                            uint64_t seed);

/* REPORT FILES. POST /_sandbox/settle {"file_dir":"/abs/dir"} writes each
 * batch it closes as one CSV file DIR/<gateway>-settlement-<YYYY-MM-DD>-<batch>.csv
 * (written as a dot file, then renamed), CRLF line ends, a header, one row
 * per line of the batch:
 *   Batch,Batch Date,Transaction ID,Merchant Ref,Type,Amount,Fee,Currency,Transaction Date
 * Type SALE | REFUND | CHARGEBACK; Amount and Fee positive decimals in major
 * units (the type gives the sign); dates YYYY-MM-DD; fields quoted (RFC
 * 4180) only when they hold a comma, a quote or a line end. Transaction ID
 * is the gateway's id as its API reports it (Opayo's VPSTxId without braces,
 * PayTrace's transaction_id), so the file reads into the same lines as the
 * API with the column map sbx_settlement_csv_map() returns
 * (docs/settlement.md). */
extern const char *const SBX_SETTLEMENT_CSV_HEADER;

struct sbx_settlement_row {
    const char *transaction_id;
    const char *merchant_ref;
    const char *type;  /* "SALE", "REFUND", "CHARGEBACK" */
    int64_t amount;    /* minor units, > 0 */
    int64_t fee;       /* minor units */
    int32_t value_day; /* days since 1970-01-01 */
};

/* The column map (a new JSON object for pb_settlement_csv_map_new) of the
 * layout above, with `gateway` as the batches' gateway name. */
json_t *sbx_settlement_csv_map(const char *gateway);
/* PB_OK when `dir` is an absolute, existing, writable directory without "..";
 * else PB_ERR_INVALID saying which. */
int sbx_settlement_file_dir_check(const char *dir, struct pb_err *err);
/* Write one batch's file; its path into `path`. PB_ERR_TRANSIENT when the
 * file cannot be written (err says why). */
int sbx_settlement_file_write(const char *dir, const char *gateway, const char *batch_id,
                              int32_t batch_day, const char *currency,
                              const struct sbx_settlement_row *rows, size_t n, char *path,
                              size_t path_len, struct pb_err *err);

#endif
