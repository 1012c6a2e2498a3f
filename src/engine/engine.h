/*
 * engine/engine.h: the running daemon — inbox, router, workers.
 *
 * Owns: the store, the HTTP server, the worker threads, the metrics. Borrows:
 * the config (connections and flows), which must outlive the engine.
 *
 * Data path:
 *   POST /hooks/{connection} -> connector->inbound (authenticate, parse,
 *   normalise) -> route to matching flows -> one store op per event (event row
 *   + first job) -> group commit -> HTTP 200 only now (503 if the commit failed).
 *   workers: claim a batch of due jobs of one (target, command) -> map each
 *   through its flow step -> skip what the xref already has -> connector
 *   execute (batched) -> complete: done + xref + next step | retry | dead.
 */
#ifndef PB_ENGINE_ENGINE_H
#define PB_ENGINE_ENGINE_H

#include "engine/config.h"
#include "engine/metrics.h"
#include "net/httpd.h"
#include "store/store.h"

struct pb_engine;

struct pb_engine_options {
    int port_override;          /* >= 0: listen on this port instead of the config's (-1 none) */
    int no_workers;             /* accept only; used by the ingest benchmark */
};

enum pb_rc pb_engine_start(struct pb_config *cfg, const struct pb_engine_options *opt,
                           struct pb_engine **out, struct pb_err *err);
/* Graceful: stop accepting, finish in-flight batches, close the store. */
void pb_engine_stop(struct pb_engine *e);

int pb_engine_port(const struct pb_engine *e);
struct pb_store *pb_engine_store(struct pb_engine *e);
struct pb_config *pb_engine_config(struct pb_engine *e);
struct pb_metrics *pb_engine_metrics(struct pb_engine *e);
/* Jobs that are ready or leased (0 = drained). -1 on a store error. */
long long pb_engine_pending(struct pb_engine *e);
/* Wake the workers (new jobs, replays). */
void pb_engine_wake(struct pb_engine *e);

/* The inbound webhook handler (route "/hooks/{}"). */
enum pb_http_action pb_engine_http_inbound(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *engine);

/* admin/api.c: the full route table of the daemon. */
const struct pb_http_route *pb_admin_routes(struct pb_engine *e);

#endif
