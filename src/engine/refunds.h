/*
 * engine/refunds.h: refunds initiated on the ERP/CRM side, and chargebacks.
 *
 * Both write through the store (so they work from the CLI without a running
 * daemon, and from the admin API inside it) and both end as canonical events
 * in the inbox, which the flows turn into ERP documents:
 *   - a refund request is checked against the refund ceiling inside the
 *     store's transaction (the payment, minus refunds already taken, minus
 *     refunds in flight), then becomes a `refund.requested` event with one
 *     built-in job (flow "paybridge.refund") that calls the gateway's refund;
 *     the gateway's answer enters the inbox as `refund.succeeded`, which the
 *     flows map to the credit memo;
 *   - a chargeback is a record (amount, reason code, dispute deadline, state
 *     opened → evidence_submitted → won | lost); each change emits
 *     `chargeback.<state>`, so a flow posts the reversal when it opens and
 *     reverses that reversal when it is won.
 */
#ifndef PB_ENGINE_REFUNDS_H
#define PB_ENGINE_REFUNDS_H

#include <jansson.h>

#include "engine/config.h"
#include "store/store.h"

/* amount: a decimal in the payment's currency ("12.50"). reference: NULL =
 * generate one; the same reference twice is the same request (idempotent).
 * *out: {"request_id","event_id","reference","amount_minor","currency","refundable_minor","duplicate"}. */
enum pb_rc pb_refund_request(struct pb_config *cfg, struct pb_store *store, const char *connection,
                             const char *transaction, const char *amount, const char *reason,
                             const char *reference, json_t **out, struct pb_err *err);

/* Open a chargeback: amount a decimal in the payment's currency, deadline YYYY-MM-DD. */
enum pb_rc pb_chargeback_open(struct pb_config *cfg, struct pb_store *store, const char *connection,
                              const char *transaction, const char *amount, const char *reason_code,
                              const char *deadline, json_t **out, struct pb_err *err);

/* Move a chargeback to evidence_submitted, won or lost. */
enum pb_rc pb_chargeback_update(struct pb_config *cfg, struct pb_store *store, long long id,
                                const char *state, json_t **out, struct pb_err *err);

#endif
