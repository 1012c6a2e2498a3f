/*
 * connectors/settlement/settlement_fetch.h: fetching settlement data from a
 * gateway's API into a settlement set, for the reconciliation run.
 *
 *   pb_settlement_opayo_fetch_batches       Opayo Reporting & Admin API:
 *                                           getBatchList for the days, then
 *                                           getBatchDetail of each batch
 *   pb_settlement_opayo_fetch_transactions  getTransactionList for the days,
 *                                           every page
 *   pb_settlement_opayo_command             one command, its raw reply
 *   pb_settlement_paytrace_fetch            PayTrace's settled-batch export,
 *                                           or export/by_date_range
 *   pb_settlement_paytrace_days             the same, the export picked by
 *                                           settings.settlement_source
 * (The Opayo calls live in src/connectors/opayo/opayo_report.c, beside the
 * rest of that connector; the PayTrace one in settlement_paytrace_fetch.c,
 * on top of the paytrace connector's public calls.)
 *
 * Contract.
 *   - `c` is a connection of the gateway's type. The Opayo calls read, at
 *     the moment of use: settings.report_url (the access.htm URL, e.g.
 *     "https://live.opayo.eu.elavon.com/access/access.htm" or the sandbox's
 *     "http://127.0.0.1:PORT/access/access.htm"), settings.vendor_name,
 *     settings.report_timeout_ms (optional, 100..600000, default 60000),
 *     settings.report_page_rows (optional, 1..1000, default 50) and
 *     secrets.report_user / secrets.report_password (a Reporting API user,
 *     not the Pi integration key). They need no init of their own.
 *   - `ctx` lends the calling thread's HTTP client and a trace (may be
 *     NULL); every call is appended to the trace with its signature masked.
 *   - Days are whole UTC days since 1970-01-01 (settlement.h), from and to
 *     inclusive.
 *   - Data goes into `set` (borrowed); bad records become bad entries of the
 *     set, as for the parsers (settlement_parse.h).
 *   - rc: PB_OK when every reply was read (bad entries or not);
 *     PB_ERR_TRANSIENT for network errors, timeouts, 429, 5xx and a 2xx that
 *     is not a reply (retry later); PB_ERR_PERMANENT when Opayo answered an
 *     errorcode other than 0000 (0010: the signature was refused, i.e. the
 *     user, password or vendor is wrong: retrying cannot help) or another
 *     4xx; PB_ERR_CONFIG when a setting or secret is missing. err names it.
 *   - A batch whose detail fails after the list succeeded stays in the set as
 *     a header (PB_SETTLEMENT_BATCH_HEADER_ONLY) and the error is returned.
 *
 * Thread-safe for one connection from many threads (each with its own ctx
 * and set).
 */
#ifndef PB_CONNECTORS_SETTLEMENT_SETTLEMENT_FETCH_H
#define PB_CONNECTORS_SETTLEMENT_SETTLEMENT_FETCH_H

#include <stdint.h>

#include "connectors/connector.h"
#include "connectors/settlement/settlement.h"

enum pb_rc pb_settlement_opayo_fetch_batches(struct pb_connection *c, struct pb_call_ctx *ctx,
                                             int32_t from_day, int32_t to_day,
                                             struct pb_settlement_set *set, struct pb_err *err);

enum pb_rc pb_settlement_opayo_fetch_transactions(struct pb_connection *c, struct pb_call_ctx *ctx,
                                                  int32_t from_day, int32_t to_day,
                                                  struct pb_settlement_set *set,
                                                  struct pb_err *err);

/* Send `command` with `params` (borrowed XML elements placed after <user>,
 * e.g. "<batchid>100001</batchid>"; the caller escapes their text) and give
 * back the reply body in *reply (malloc'd, NUL-terminated; the caller frees
 * it) when Opayo answered errorcode 0000. rc as above. */
enum pb_rc pb_settlement_opayo_command(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       const char *command, const char *params, char **reply,
                                       size_t *reply_len, struct pb_err *err);

/* PayTrace: `settled` = 1 posts settings.settled_export_path with
 * {"start_date","end_date"} (MM/DD/YYYY) and reads batches with their totals;
 * 0 posts export_path (export/by_date_range) and reads the records that carry
 * a batch_number. `c` must be an initialised paytrace connection. */
enum pb_rc pb_settlement_paytrace_fetch(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        int settled, int32_t from_day, int32_t to_day,
                                        struct pb_settlement_set *set, struct pb_err *err);

/* The paytrace connector's `settlement` slot (connector.h), in
 * src/connectors/paytrace/paytrace_settlement.c: settings.settlement_source
 * picks the export, "settled_export" (the default: batches with their
 * stated totals) or "by_date_range" (records that carry a batch_number,
 * batches summed from them), then pb_settlement_paytrace_fetch(). Another
 * value is PB_ERR_CONFIG naming the setting. */
enum pb_rc pb_settlement_paytrace_days(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       int32_t from_day, int32_t to_day,
                                       struct pb_settlement_set *set, struct pb_err *err);

#endif
