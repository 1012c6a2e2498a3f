/*
 * connectors/opayo/opayo_internal.h: what the three files of the Opayo
 * connector share, and nothing else may include.
 *
 *   opayo.c          the type table, settings and secrets (init/destroy).
 *   opayo_inbound.c  the signed "transaction.completed" notification: PAN
 *                    guard, HMAC check, replay window, validation, and the
 *                    canonical event. Pure: no network, no store.
 *   opayo_confirm.c  GET {api_base}/transactions/{id} before posting, to make
 *                    sure the gateway agrees with the notification.
 *   opayo_refund.c   refunds paybridge initiates (POST /transactions, Refund).
 *
 * The state is immutable after init, so every worker thread may read it
 * without a lock. Secrets are not copied into it: they stay in c->secrets,
 * which the connection owns, and are read where they are used.
 */
#ifndef PB_CONNECTORS_OPAYO_INTERNAL_H
#define PB_CONNECTORS_OPAYO_INTERNAL_H

#include <time.h>

#include "connectors/connector.h"

#define OPAYO_STATE_MAGIC 0x4f505959u          /* "OPYY" */
#define OPAYO_API_BASE_MAX 512                 /* longest accepted settings.api_base */
#define OPAYO_VENDOR_NAME_MAX 128              /* longest accepted settings.vendor_name */
#define OPAYO_TRANSACTION_ID_MAX 64            /* longest accepted transactionId */
#define OPAYO_VENDOR_TX_CODE_MAX 40            /* Opayo's own limit on vendorTxCode */
#define OPAYO_WINDOW_DEFAULT_S 300             /* settings.signature_window_s default */
#define OPAYO_WINDOW_MAX_S 86400               /* a day: anything longer is not a replay window */
#define OPAYO_SIGNATURE_HEADER "X-Opayo-Signature"

struct opayo_state {
    unsigned magic;                            /* OPAYO_STATE_MAGIC */
    int confirm;                               /* settings.confirm (default 1) */
    long window_s;                             /* settings.signature_window_s */
    char api_base[OPAYO_API_BASE_MAX];         /* without a trailing '/'; "" when confirm is off */
    char vendor_name[OPAYO_VENDOR_NAME_MAX];   /* "" = accept any vendorName */
};

/* The state of `c`, checked (NULL when init did not run or it is corrupt). */
const struct opayo_state *pb__opayo_state(const struct pb_connection *c);

enum pb_rc pb__opayo_inbound(struct pb_connection *c, const struct pb_inbound_request *req,
                             struct pb_event_list *out, struct pb_err *err);

enum pb_rc pb__opayo_confirm(struct pb_connection *c, struct pb_call_ctx *ctx, json_t *event,
                             struct pb_err *err);

/* Parse a strict UTC ISO 8601 instant "YYYY-MM-DDTHH:MM:SS[.fraction]Z" into
 * *out (the fraction is dropped). PB_ERR_INVALID for anything else. */
enum pb_rc pb__opayo_refund(struct pb_connection *c, struct pb_call_ctx *ctx, const json_t *request,
                            json_t **result, char *event_id, size_t event_id_len, struct pb_err *err);
enum pb_rc pb__opayo_parse_instant(const char *text, time_t *out);

#endif

/* ---- opayo_report.c: the Reporting & Admin API client (settlement data) ----
 * The public calls are declared in connectors/settlement/settlement_fetch.h.
 * These two are shared with its tests. */

/* Build one access.htm request: *xml_out receives
 * "<vspaccess><command>C</command><vendor>V</vendor><user>U</user>PARAMS
 * <signature>S</signature></vspaccess>" (no spaces, no newlines) where S is
 * pb_md5_hex_upper() of the inner text with "<password>P</password>" in place
 * of the signature element; vendor and user are XML-escaped, params and the
 * password are used as given. *form_out receives the form body "XML=" + the
 * percent-encoded XML. Both malloc'd, freed by the caller. */
enum pb_rc pb__opayo_report_request(const char *command, const char *vendor, const char *user,
                                    const char *password, const char *params, char **xml_out,
                                    char **form_out, struct pb_err *err);

/* "DD/MM/YYYY HH:MM:SS" of a day (days since 1970-01-01) at the start
 * (end = 0) or the last second (end = 1) of that day; buf >= 20 bytes. */
void pb__opayo_report_date(int32_t day, int end, char *buf, size_t len);
