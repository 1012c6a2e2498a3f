/*
 * engine/config.h: the daemon's configuration (paybridge.yaml).
 *
 * Loading never stops at the first problem: every error is collected with
 * its file:line into a pb_diags list, so that `paybridge check` can report
 * them all at once. A loaded config owns its connections (connector
 * instances, initialised, with their secrets decrypted in memory) and the
 * flow set.
 *
 * Secrets in the file are one of:
 *   "enc:<base64>"  sealed with AES-256-GCM under the secret key
 *                   (PAYBRIDGE_SECRET_KEY or secrets.key_file); `paybridge secret seal`
 *   "env:NAME"      read from the environment at load time
 *   plain text      accepted with a warning from `check`
 * Decrypted secrets live only in memory and never reach logs or traces.
 */
#ifndef PB_ENGINE_CONFIG_H
#define PB_ENGINE_CONFIG_H

#include <jansson.h>

#include "connectors/connector.h"
#include "core/diag.h"
#include "engine/flow.h"
#include "engine/mapping.h"
#include "engine/retry.h"

struct pb_reconcile_conf;

struct pb_conn_entry {
    struct pb_connection conn;          /* the instance (settings, secrets, limiter, state) */
    struct pb_retry_policy retry;
    long poll_interval_s;               /* > 0: poll this source that often (PB_CAP_POLL) */
    char status_webhook[64];            /* "" or the sink connection that receives order states */
    struct pb_reconcile_conf *reconcile; /* owned; NULL = no `reconcile:` block (reconcile/reconcile.h) */
    int initialised;
};

struct pb_config {
    char *path;                         /* the config file */
    char *listen_addr;                  /* "127.0.0.1" */
    int listen_port;                    /* 8080 */
    unsigned http_threads;              /* server thread pool, default 2 */
    size_t max_body;                    /* default 256 KiB */
    char *store_dsn;                    /* "sqlite:var/paybridge.db" */
    unsigned workers;                   /* default 4 */
    unsigned claim_batch;               /* jobs per claim, default 50 */
    int log_level;
    json_t *admin_keys;                 /* array of "sha256:<hex>" */
    int metrics_public;
    struct pb_conn_entry *conns;
    size_t n_conns;
    struct pb_flowset *flows;
};

/* Load and validate. Returns PB_OK when there is no error (warnings may be in diags).
 * With init_connections, connectors are initialised (secrets decrypted). */
enum pb_rc pb_config_load(const char *path, int init_connections, struct pb_config **out,
                          struct pb_diags *diags);
void pb_config_free(struct pb_config *cfg);

struct pb_conn_entry *pb_config_connection(struct pb_config *cfg, const char *name);

/* Resolve one secret value ("enc:", "env:", plain). *plain is set when it was plain text. */
enum pb_rc pb_config_secret_resolve(const char *value, const unsigned char *key, int have_key,
                                    char **out, int *plain, struct pb_err *err);

/* Load the secret key: PAYBRIDGE_SECRET_KEY, else key_file (relative to the config). */
enum pb_rc pb_config_secret_key(const char *key_file, unsigned char key[32], struct pb_err *err);

/* engine/router.c: the jobs an event starts (see the file's essay). */
struct pb_store_op;
struct pb_job_new;
int pb_route_confirms(const struct pb_conn_entry *src);
void pb_route_jobs(const struct pb_config *cfg, const struct pb_conn_entry *conn, const char *type,
                   struct pb_job_new *jobs, int *n_jobs, int64_t now);
/* Stamp ev's envelope, fill `op` (an inbox put with its first jobs); returns
 * the event's JSON text (malloc'd; op points into it). */
char *pb_route_event(const struct pb_config *cfg, const struct pb_conn_entry *conn,
                     struct pb_event_out *ev, struct pb_store_op *op, int64_t now);

#endif
