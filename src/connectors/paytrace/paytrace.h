/*
 * connectors/paytrace/paytrace.h: the public calls of the PayTrace
 * connector, for callers other than the engine (the demo's traffic
 * generator, later features such as charging a customer from an ERP).
 *
 * The engine needs only the type table (`pb_connector_paytrace`: inbound,
 * poll, refund). These functions are the rest of the PayTrace API v1 that
 * paybridge uses, each one POST with the connection's OAuth token:
 *
 *   pb_paytrace_sale_keyed          /v1/transactions/sale/keyed
 *   pb_paytrace_sale_by_customer    /v1/transactions/sale/by_customer
 *   pb_paytrace_refund              /v1/transactions/refund/for_transaction
 *   pb_paytrace_void                /v1/transactions/void
 *   pb_paytrace_customer_create     /v1/customer/create
 *   pb_paytrace_export_by_date_range  settings.export_path
 *   pb_paytrace_export_settled      settings.settled_export_path (unverified path)
 *
 * Contract common to all of them.
 *   - `c` is an initialised paytrace connection; `ctx` lends the calling
 *     thread's HTTP client and a trace array (may be NULL); never kept.
 *   - `request` is borrowed and never modified. It is PayTrace's request
 *     object; secrets.integrator_id is added when configured and absent.
 *   - Money on the wire is a decimal string ("10.99"). The members `amount`
 *     (top level) and `unit_price` (in `line_items`) may be given as a
 *     decimal string, which is checked against settings.currency, or as a
 *     money object {"minor":1099,"currency":"USD"}, which is formatted
 *     exactly. A JSON number there is refused (PB_ERR_INVALID): a double
 *     never carries money out of paybridge.
 *   - *reply receives PayTrace's reply object (a new reference the caller
 *     frees with json_decref) whenever one was read, also on PB_ERR_PERMANENT
 *     (a declined sale still has its transaction_id); NULL otherwise.
 *   - rc: PB_OK when PayTrace answered "success": true; PB_ERR_PERMANENT when
 *     it answered "success": false (a decline, a validation error, a refused
 *     refund), err carrying status_message and every `errors` message;
 *     PB_ERR_TRANSIENT for network errors, timeouts, 429 and 5xx (then
 *     ctx->retry_after_s holds Retry-After when sent).
 *   - Card data (credit_card.number, csc, check.account_number) is removed
 *     from the request body recorded in ctx->trace.
 *
 * Thread-safe for one connection from many threads (each with its own ctx).
 */
#ifndef PB_CONNECTORS_PAYTRACE_PAYTRACE_H
#define PB_CONNECTORS_PAYTRACE_PAYTRACE_H

#include <jansson.h>

#include "connectors/connector.h"

extern const struct pb_connector_type pb_connector_paytrace;

enum pb_rc pb_paytrace_sale_keyed(struct pb_connection *c, struct pb_call_ctx *ctx,
                                  const json_t *request, json_t **reply, struct pb_err *err);
enum pb_rc pb_paytrace_sale_by_customer(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        const json_t *request, json_t **reply, struct pb_err *err);
enum pb_rc pb_paytrace_refund(struct pb_connection *c, struct pb_call_ctx *ctx,
                              const json_t *request, json_t **reply, struct pb_err *err);
enum pb_rc pb_paytrace_void(struct pb_connection *c, struct pb_call_ctx *ctx, const json_t *request,
                            json_t **reply, struct pb_err *err);
enum pb_rc pb_paytrace_customer_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       const json_t *request, json_t **reply, struct pb_err *err);
enum pb_rc pb_paytrace_export_by_date_range(struct pb_connection *c, struct pb_call_ctx *ctx,
                                            const json_t *request, json_t **reply,
                                            struct pb_err *err);
enum pb_rc pb_paytrace_export_settled(struct pb_connection *c, struct pb_call_ctx *ctx,
                                      const json_t *request, json_t **reply, struct pb_err *err);

#endif
