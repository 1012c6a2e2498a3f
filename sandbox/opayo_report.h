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
 *    "report_fee_fixed":"0.20", "report_page_rows":50, "report_first_batch":100001}
 * (fees: 1.5% + 0.20 per sale; refunds carry no fee). `source` may be NULL:
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
 *   {"transactions":[retrieve shapes]   default: the source's
 *    "date":"YYYY-MM-DD",               the batch date, default today (UTC)
 *    "missing":["<transactionId>"] | N, left out of settlement for good
 *    "wrong_fee":["<transactionId>"] | N, charged fee_delta too much
 *    "fee_delta":"0.10"}
 * (N picks that many at random) -> 200 {"settled","batches":[...],
 * "anomalies":{"missing":[ids],"wrong_fee":[ids]}}. */
enum pb_http_action sbx_opayo_report_settle(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *report);
/* GET /_sandbox/settlements: every batch with its lines, as JSON. */
enum pb_http_action sbx_opayo_report_settlements(struct pb_http_request *req,
                                                 struct pb_http_response *resp, void *report);

/* The three routes above with `r` as arg, ending in {NULL}. */
const struct pb_http_route *sbx_opayo_report_routes(struct sbx_opayo_report *r);

#endif
