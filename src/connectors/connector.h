/*
 * connectors/connector.h: the connector interface. A connector TYPE is a
 * constant table of function pointers (like curl's protocol handlers); a
 * CONNECTION is an instance of a type, configured in paybridge.yaml.
 *
 * Adding a gateway or an ERP = one folder src/connectors/NAME/ exporting one
 * `const struct pb_connector_type pb_connector_NAME`, plus one line in
 * connectors/registry.c. The engine has no special case for any vendor.
 *
 * Connectors never touch the store. The engine hands them what they need (the
 * request, the mapped document, a per-thread HTTP client, a trace array) and
 * records what they return. Connector code may be called from several worker
 * threads at once for the same connection: shared state in c->state must be
 * protected by the connector (e.g. the OAuth token cache).
 *
 * Canonical events are JSON (jansson); docs/canonical-model.md defines them.
 * Money inside them is {"minor": int64, "currency": "GBP", "decimal": "10.99"};
 * "decimal" is derived exactly from minor (core/money.h) for mappings.
 */
#ifndef PB_CONNECTORS_CONNECTOR_H
#define PB_CONNECTORS_CONNECTOR_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/err.h"
#include "net/http_client.h"
#include "net/ratelimit.h"

#define PB_CONNECTOR_ABI 1

enum pb_capability {
    PB_CAP_INBOUND = 1u << 0,    /* authenticate + parse webhooks */
    PB_CAP_CONFIRM = 1u << 1,    /* confirm an event with the gateway's API before posting */
    PB_CAP_POLL = 1u << 2,       /* poll for events since a cursor */
    PB_CAP_SETTLEMENT = 1u << 3, /* fetch settlement reports */
    PB_CAP_REFUND = 1u << 4,     /* refund / void at the gateway */
    PB_CAP_LEDGER = 1u << 9,     /* reads back the ERP's received/refunded money (reconciliation) */
    PB_CAP_JOURNAL = 1u << 10,   /* posts balanced GL journals (reconciliation) */
    PB_CAP_SINK = 1u << 8,       /* executes ERP commands */
};

struct pb_connector_type;
struct pb_settlement_set; /* connectors/settlement/settlement.h */

/* An instance: one `connections:` entry of the config. */
struct pb_connection {
    unsigned magic;                         /* PB_CONNECTION_MAGIC */
    const struct pb_connector_type *type;
    char name[64];                          /* the connection name, e.g. "xero-demo" */
    json_t *settings;                       /* owned: non-secret settings from config */
    json_t *secrets;                        /* owned: decrypted secrets, memory only, never logged */
    struct pb_ratelimit *limiter;           /* owned; NULL = unlimited */
    void *state;                            /* owned by the connector (init/destroy) */
};
#define PB_CONNECTION_MAGIC 0x434f4e4eu

/* Convenience accessors (settings then defaults). */
const char *pb_connection_setting(const struct pb_connection *c, const char *key, const char *def);
long long pb_connection_setting_int(const struct pb_connection *c, const char *key, long long def);
const char *pb_connection_secret(const struct pb_connection *c, const char *key);

/* ---- inbound --------------------------------------------------------------- */

struct pb_inbound_request {
    const char *body;                       /* raw bytes, NUL-terminated copy */
    size_t body_len;
    const char *content_type;
    /* header lookup, case-insensitive; NULL when absent */
    const char *(*header)(void *ctx, const char *name);
    void *header_ctx;
    time_t now;                             /* wall clock, injectable for tests */
    int pan_checked;                        /* the engine has run pb_pan_scan_payload() on body */
};

/* One canonical event produced from an inbound request, in one of two forms:
 *   - `event`, a jansson tree without "id" and "source" (the router adds
 *     them and serialises it); or
 *   - `json`, the complete canonical text already serialised by the
 *     connector, "type" and "source" included, with original_gateway_id set
 *     for a refund or chargeback. The webhook hot path of a connector uses
 *     this: building a tree only to serialise it at once cost ~10 us a
 *     webhook (opayo). pb_event_tree() parses it when a tree is wanted. */
struct pb_event_out {
    char event_id[128];                     /* gateway event id: (connection, event_id) de-duplicates */
    char type[64];                          /* e.g. "payment.succeeded" */
    json_t *event;                          /* owned: the canonical event (without "id"/"source") */
    char *json;                             /* owned (malloc): the canonical event as text, or NULL */
    char original_gateway_id[128];          /* with `json`: the payment a refund belongs to, or "" */
};

/* The event as a tree: `event`, parsed from `json` on first use (then owned
 * by ev as `event`). NULL when out of memory. */
json_t *pb_event_tree(struct pb_event_out *ev);

#define PB_INBOUND_MAX_EVENTS 64

struct pb_event_list {
    struct pb_event_out ev[PB_INBOUND_MAX_EVENTS];
    size_t n;
};
void pb_event_list_clear(struct pb_event_list *l);

/* ---- sink -------------------------------------------------------------------- */

/* One job handed to a sink. A batch is an array of items with the same command. */
struct pb_sink_item {
    /* in */
    const char *command;                    /* e.g. "contact.upsert", "invoice.create" */
    json_t *document;                       /* borrowed: the mapped ERP document */
    const char *reference;                  /* the source reference (xref key) */
    const char *idempotency_key;            /* stable across retries of this job */
    uint32_t attempt;                       /* 1 = first try; > 1 = an earlier try may have taken effect */
    /* out */
    enum pb_rc rc;                          /* PB_OK, PB_ERR_TRANSIENT, PB_ERR_PERMANENT, ... */
    char erp_id[128];                       /* the ERP's id of the created/found record */
    char message[512];                      /* why it failed, in the ERP's words when it said so */
    int retry_after_s;                      /* -1 unless the ERP asked for a delay */
    json_t *result;                         /* owned (set by the sink, freed by the engine): the ERP's record */
    char *result_json;                      /* owned (malloc), instead of result: the record as the
                                               bytes the ERP sent (no tree built to serialise it) */
};

/* The item's record as a tree: `result`, parsed from `result_json` on first
 * use (then owned by the item as `result`). NULL when there is none. */
json_t *pb_sink_item_record(struct pb_sink_item *it);

/* Everything the engine lends to a connector for one call. */
struct pb_call_ctx {
    struct pb_http_client *http;            /* the worker thread's client */
    json_t *trace;                          /* JSON array; append with pb_trace_http() */
    time_t now;
    int retry_after_s;                      /* out, -1: set with a whole-call failure when the
                                               remote asked for a delay (e.g. a 429 from a token
                                               endpoint) */
};

/* ---- the type table ------------------------------------------------------------ */

struct pb_connector_type {
    unsigned abi;                           /* MUST: PB_CONNECTOR_ABI */
    const char *name;                       /* MUST: "opayo", "xero", ... */
    unsigned caps;                          /* MUST: enum pb_capability bits */

    /* MUST: validate settings/secrets and create c->state. Errors name the
     * setting ("settings.base_url: must be an http(s) URL"). */
    enum pb_rc (*init)(struct pb_connection *c, struct pb_err *err);
    /* MUST: free c->state. */
    void (*destroy)(struct pb_connection *c);

    /* MUST with PB_CAP_INBOUND: authenticate the request (PB_ERR_AUTH), parse
     * and validate it (PB_ERR_INVALID, PB_ERR_CURRENCY, PB_ERR_RANGE, ...) and
     * append canonical events to `out`. Pure: no network, no store. */
    enum pb_rc (*inbound)(struct pb_connection *c, const struct pb_inbound_request *req,
                          struct pb_event_list *out, struct pb_err *err);

    /* MAY with PB_CAP_CONFIRM: confirm `event` against the gateway's API
     * before anything is posted (e.g. Opayo Pi GET /transactions/{id}); may
     * correct fields from the authoritative record. PB_ERR_PERMANENT when the
     * gateway contradicts the event. */
    enum pb_rc (*confirm)(struct pb_connection *c, struct pb_call_ctx *ctx, json_t *event,
                          struct pb_err *err);

    /* MUST with PB_CAP_SINK: the largest batch for a command (1 = no batching);
     * 0 = the command is unknown to this sink (a config error caught by `check`). */
    size_t (*max_batch)(const struct pb_connection *c, const char *command);

    /* MUST with PB_CAP_SINK: execute n items of the same command. Sets each
     * item's rc/erp_id/message/result. The return value is for failures of the
     * whole batch (e.g. token endpoint down): then every item is treated as
     * having that error. Proves idempotency: an item with attempt > 1 must be
     * looked up by reference before anything is created. */
    enum pb_rc (*execute)(struct pb_connection *c, struct pb_call_ctx *ctx,
                          struct pb_sink_item *items, size_t n, struct pb_err *err);

    /* MAY: the rate limits of the remote system, used when the connection's
     * config sets none (all zero = unlimited). Xero: 60/min, 5000/day, 5 concurrent. */
    struct pb_ratelimit_config default_rate_limit;

    /* MUST with PB_CAP_POLL: fetch the events after `cursor` (NULL or "" =
     * the connector's own start, e.g. "today") and append them to `out` (at
     * most PB_INBOUND_MAX_EVENTS; set *more when there are further pages).
     * Writes the cursor to resume from into next_cursor (NUL-terminated).
     * Events carry the same event_id as the webhook path would, so the inbox
     * de-duplicates a transaction seen both ways. */
    enum pb_rc (*poll)(struct pb_connection *c, struct pb_call_ctx *ctx, const char *cursor,
                       struct pb_event_list *out, char *next_cursor, size_t next_len, int *more,
                       struct pb_err *err);

    /* MUST with PB_CAP_REFUND: refund at the gateway. `request` is
     * {"original_gateway_id", "amount": {"minor", "currency"}, "reason"?,
     *  "reference"} (reference: paybridge's idempotency reference for this
     * refund, e.g. a vendorTxCode). On success *result is the canonical refund
     * event body (as an inbound refund.succeeded would carry, entity "refund")
     * and *event_id its gateway event id. PB_ERR_PERMANENT when the gateway
     * refuses (over-refund, unknown transaction), with its words. */
    enum pb_rc (*refund)(struct pb_connection *c, struct pb_call_ctx *ctx, const json_t *request,
                         json_t **result, char *event_id, size_t event_id_len, struct pb_err *err);

    /* ---- reconciliation (docs/reconciliation.md) ---------------------------------- */

    /* MUST with PB_CAP_SETTLEMENT: fetch what the gateway settled with a
     * settlement (batch) date in [from_day, to_day] (whole UTC days since
     * 1970-01-01, inclusive) into `set` (borrowed; settlement.h). Bad records
     * become bad entries of the set; rc as in settlement_fetch.h (TRANSIENT:
     * retry the run later; PERMANENT: refused; CONFIG: a setting missing). */
    enum pb_rc (*settlement)(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                             int32_t to_day, struct pb_settlement_set *set, struct pb_err *err);

    /* MUST with PB_CAP_LEDGER: read back the ERP's own records of money
     * received from and returned to customers, dated in [from_day, to_day]
     * (inclusive, days since 1970-01-01), and append one JSON object per
     * record to `records` (a borrowed array):
     *   {"record_id":   the ERP's id (Xero PaymentID, SYSPRO "<journal>/<entry>"
     *                   or payment reference, X3 PAY NUM),
     *    "kind":        "payment" | "refund",
     *    "reference":   the merchant reference on the record (the vendorTxCode /
     *                   invoice id that paybridge posted as Reference), "" if none,
     *    "gateway_ref": the gateway transaction id when the record carries it, else "",
     *    "amount_minor": int, signed: money in > 0, a refund < 0,
     *    "currency":    ISO 4217 code,
     *    "date":        "YYYY-MM-DD"}
     * Records that are not customer receipts (e.g. supplier payments, deleted
     * or voided ones) are left out. Reads every page. rc: TRANSIENT for
     * network/5xx/429, PERMANENT when refused, with err saying why. */
    enum pb_rc (*ledger)(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                         int32_t to_day, json_t *records, struct pb_err *err);

    /* MUST with PB_CAP_JOURNAL: post one balanced GL journal:
     *   {"reference": a unique key, <= 50 chars, e.g. "PB-opayo-demo-100001",
     *    "date": "YYYY-MM-DD", "narration": text for the accountant,
     *    "currency": ISO 4217 code,
     *    "lines": [{"account": the ERP's GL account code,
     *               "amount_minor": signed int, debit > 0, credit < 0,
     *               "description": text}, ...]}   (at least 2; they sum to 0)
     * Idempotent by reference: the connector first looks for a journal it
     * posted with this reference and, when found, returns its id without
     * posting (a run that is retried or re-run never posts twice). Sets
     * erp_id (NUL-terminated). An undo is a second journal with the lines
     * negated and its own reference, never a delete. rc as for ledger();
     * PERMANENT with the ERP's words for an unknown account, a closed period,
     * an unbalanced journal. */
    enum pb_rc (*post_journal)(struct pb_connection *c, struct pb_call_ctx *ctx,
                               const json_t *journal, char *erp_id, size_t erp_id_len,
                               struct pb_err *err);
};

/* connectors/registry.c */
const struct pb_connector_type *pb_connector_find(const char *name);
extern const struct pb_connector_type *const pb_connector_types[]; /* NULL-terminated */

#endif
