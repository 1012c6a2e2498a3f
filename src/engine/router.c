/*
 * engine/router.c: which jobs an event starts.
 *
 * Every event that enters the inbox (a webhook, a poll, a refund the gateway
 * confirmed, a chargeback opened by an operator) goes through here, so the
 * rule is in one place: each flow whose source is the event's connection and
 * which handles the event's type gets its first job; that is step 0 (the
 * source's confirmation, when its connector can confirm and the connection
 * does not set confirm: false) or step 1. Used by the engine and by CLI
 * commands that write to the store without a running engine.
 */
#include <string.h>

#include "core/json.h"
#include "engine/config.h"
#include "store/store.h"

int pb_route_confirms(const struct pb_conn_entry *src)
{
    json_t *v;
    if (!(src->conn.type->caps & PB_CAP_CONFIRM) || !src->conn.type->confirm)
        return 0;
    v = json_object_get(src->conn.settings, "confirm");
    return !json_is_false(v);
}

void pb_route_jobs(const struct pb_config *cfg, const struct pb_conn_entry *conn, const char *type,
                   struct pb_job_new *jobs, int *n_jobs, int64_t now)
{
    for (size_t f = 0; f < pb_flowset_count(cfg->flows) && *n_jobs < PB_STORE_MAX_NEW_JOBS; f++) {
        const struct pb_flow *fl = pb_flowset_flow(cfg->flows, f);
        if (strcmp(fl->source, conn->conn.name) != 0 || !pb_flow_handles(fl, type))
            continue;
        struct pb_job_new *j = &jobs[(*n_jobs)++];
        memset(j, 0, sizeof(*j));
        j->flow = fl->name;
        /* paybridge's own events (refund.requested, chargeback.*) are not
         * the gateway's to confirm */
        if (pb_route_confirms(conn) &&
            (strncmp(type, "payment.", 8) == 0 ||
             (strncmp(type, "refund.", 7) == 0 && strcmp(type, "refund.requested") != 0))) {
            j->step = 0;
            j->step_name = "confirm";
            j->target = conn->conn.name;
            j->command = "confirm";
        } else {
            j->step = 1;
            j->step_name = fl->steps[0].name;
            j->target = fl->steps[0].target;
            j->command = fl->steps[0].command;
        }
        j->run_at_ms = now;
    }
    /* the shop hears of the order's state: a built-in job on the connection's
     * status webhook (see engine.c, status_document) */
    if (conn->status_webhook[0] && *n_jobs < PB_STORE_MAX_NEW_JOBS &&
        (strcmp(type, "payment.succeeded") == 0 || strcmp(type, "payment.declined") == 0 ||
         strcmp(type, "payment.failed") == 0 || strcmp(type, "refund.succeeded") == 0)) {
        struct pb_job_new *j = &jobs[(*n_jobs)++];
        memset(j, 0, sizeof(*j));
        j->flow = "paybridge.status";
        j->step = 1;
        j->step_name = "status";
        j->target = conn->status_webhook;
        j->command = "order.status";
        j->run_at_ms = now;
    }
}

char *pb_route_event(const struct pb_config *cfg, const struct pb_conn_entry *conn,
                     struct pb_event_out *ev, struct pb_store_op *op, int64_t now)
{
    char *json;
    const char *orig;
    if (ev->json) { /* serialised by the connector, "type" and "source" included */
        json = ev->json;
        ev->json = NULL;
        orig = ev->original_gateway_id[0] ? ev->original_gateway_id : NULL;
    } else {
        json_object_set_new(ev->event, "type", json_string(ev->type));
        json_object_set_new(ev->event, "source",
                            json_pack("{s:s,s:s,s:s}", "connection", conn->conn.name, "connector",
                                      conn->conn.type->name, "event_id", ev->event_id));
        json = pb_json_dumps_decimal(ev->event, NULL, 0);
        /* refunds and chargebacks name the payment they belong to */
        orig = pb_json_str(ev->event, "refund.original_gateway_id");
        if (!orig)
            orig = pb_json_str(ev->event, "chargeback.original_gateway_id");
    }
    memset(op, 0, sizeof(*op));
    op->kind = PB_OP_INBOX_PUT;
    op->u.inbox.connection = conn->conn.name;
    op->u.inbox.gateway_event_id = ev->event_id;
    op->u.inbox.type = ev->type;
    op->u.inbox.event_json = json ? json : "{}";
    op->u.inbox.received_ms = now;
    op->u.inbox.original_gateway_id = orig;
    pb_route_jobs(cfg, conn, ev->type, op->u.inbox.jobs, &op->u.inbox.n_jobs, now);
    return json;
}
