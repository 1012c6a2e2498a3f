/*
 * reconcile/reconcile.h: the daily reconciliation run of one gateway
 * connection, end to end (docs/reconciliation.md, "Runs"):
 *
 *   settlement   the gateway's settled batches of the day: its API (the
 *                connector's `settlement` member), or CSV report files from a
 *                directory or an SFTP drop (connectors/settlement/);
 *   ledger       the ERP's own records read back (the ERP connector's
 *                `ledger` member), joined with what paybridge posted (the
 *                store's recon.ledger: gateway references by ERP id); or
 *                paybridge's record alone (`ledger: paybridge`);
 *   match        recon/recon.h, with this connection's tolerances, fee
 *                contracts and FX rates;
 *   journals     one GL journal per settled batch (gross out of clearing,
 *                fees to expense, net to bank) and one per auto-adjustable
 *                break, posted through the ERP connector's `post_journal`,
 *                idempotent by reference; an undo is a reversing journal;
 *   store        the run, its inputs, matches, breaks, problems and journals
 *                in the reconciliation database (reconcile/recon_db.c);
 *   reports      <report_dir>/recon-<connection>-<date>.json and -breaks.csv.
 *
 * The layer sits above the engine's config and store and the connectors; the
 * matcher below it is pure. It never touches the event store's tables except
 * through the read-only named query recon.ledger.
 */
#ifndef PB_RECONCILE_RECONCILE_H
#define PB_RECONCILE_RECONCILE_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "core/cron.h"
#include "core/err.h"
#include "recon/recon.h"

struct pb_config;
struct pb_store;

/* ---- configuration: a gateway connection's `reconcile:` block --------------------- */

enum pb_reconcile_source { PB_RECONCILE_SOURCE_API = 0, PB_RECONCILE_SOURCE_DIR, PB_RECONCILE_SOURCE_SFTP };

struct pb_reconcile_conf {
    char erp[64];           /* the ERP connection: ledger read back, journals posted */
    int ledger_from_erp;    /* 1: the ERP's records (default); 0: paybridge's own record */
    int ledger_all;         /* ledger_scope: 0 "gateway" (default): only the ERP records that
                               can be tied to this gateway connection (paybridge's xref, or a
                               gateway reference of their own); 1 "all": every customer receipt
                               and refund the ERP holds in the window */
    char schedule[64];      /* cron expression, "" = by hand only */
    struct pb_cron cron;
    int date_offset_days;   /* a scheduled run reconciles (today - this), default 1 */
    enum pb_reconcile_source source;
    char *dir;              /* dir: the report files' directory (resolved); sftp: local cache */
    char *url;              /* sftp: sftp://host/path/ */
    char *known_hosts;      /* sftp: host keys (resolved path) or NULL */
    char *suffix;           /* report files' suffix, default ".csv" */
    json_t *columns;        /* CSV column map (connectors/settlement/settlement_parse.h) */
    char clearing_account[32], fees_account[32], bank_account[32], adjustments_account[32];
    int post_journals;      /* default 1 */
    char *report_dir;       /* resolved; default <store dir>/reports */
    struct pb_recon_config match; /* windows, tolerances, limits; arrays below */
    struct pb_recon_currency_rule *currencies;
    struct pb_recon_contract *contracts;
    struct pb_recon_fx_rate *rates;
    char (*rate_text)[32];
};

/* Parse and check `obj` (the block). `config_path` resolves relative paths;
 * `gateway` is the connector name (the fee contracts' gateway). On error *bad
 * names the offending node (for its line) and err says what to write. */
enum pb_rc pb_reconcile_conf_parse(const json_t *obj, const char *config_path, const char *gateway,
                                   struct pb_reconcile_conf **out, const json_t **bad,
                                   struct pb_err *err);
void pb_reconcile_conf_free(struct pb_reconcile_conf *conf);

/* ---- the reconciliation database --------------------------------------------------- */

struct pb_recon_db;

/* "sqlite:var/paybridge.db" -> "var/recon.db" (malloc'd). Runs live in their
 * own SQLite file so that a large run's writes never hold the event store's
 * write lock while webhooks wait for their group commit. */
char *pb_recon_db_path(const char *store_dsn);
enum pb_rc pb_recon_db_open(const char *path, struct pb_recon_db **out, struct pb_err *err);
void pb_recon_db_close(struct pb_recon_db *db);

/* ---- runs ---------------------------------------------------------------------------- */

struct pb_reconcile_result {
    int64_t run_id;
    int revision;                   /* 1 on the first run of the day, +1 on each re-run */
    struct pb_recon_summary summary;
    size_t breaks;
    size_t journals_posted;         /* posted by this run */
    size_t journals_existing;       /* already posted (an earlier run, or found in the ERP) */
    size_t journals_held;           /* not posted: a batch that does not add up, no accounts */
    size_t journals_failed;         /* the ERP refused or could not be reached: see the run */
    size_t problems;                /* bad input lines */
    char report_json[512], report_csv[512];
};

/* Reconcile `connection` (a gateway connection with a reconcile block) for
 * `day` (days since 1970-01-01). Idempotent: a re-run replaces the day's
 * matches and breaks and never posts a journal twice. `trigger` is stored
 * ("cli", "schedule", "admin"). The config must be loaded with its
 * connections initialised. PB_OK when the run completed, whatever it found;
 * an error when it could not run (the failure is stored too). */
enum pb_rc pb_reconcile_day(struct pb_config *cfg, struct pb_store *store, struct pb_recon_db *db,
                            const char *connection, int32_t day, const char *trigger,
                            struct pb_reconcile_result *res, struct pb_err *err);

/* Undo an automatic (or any) journal by posting its reversal: same lines
 * negated, reference <ref>-R. The journal is marked undone. PB_ERR_EXISTS
 * when it was undone already; PB_ERR_NOTFOUND for an unknown reference. */
enum pb_rc pb_reconcile_undo(struct pb_config *cfg, struct pb_recon_db *db, const char *reference,
                             const char *who, char *reversal_ref, size_t reversal_len,
                             struct pb_err *err);

/* Read back. `run` is a run id or "CONNECTION:YYYY-MM-DD". JSON objects the
 * caller frees: a run with "summary", "breaks", "journals", "problems",
 * "inputs"; the list is an array of runs without their details. */
enum pb_rc pb_recon_db_run(struct pb_recon_db *db, const char *run, json_t **out, struct pb_err *err);
enum pb_rc pb_recon_db_runs(struct pb_recon_db *db, const char *connection, int limit, json_t **out,
                            struct pb_err *err);

/* The breaks of the stored runs of a period, for the month's close: an array
 * of {"connection", "date", "revision", "status", "breaks": [...]} for each
 * day's latest revision, oldest first. connection NULL = all; from/to
 * "YYYY-MM-DD" inclusive, NULL = open-ended. */
enum pb_rc pb_recon_db_breaks(struct pb_recon_db *db, const char *connection, const char *from,
                              const char *to, json_t **out, struct pb_err *err);

/* The stored inputs and matches of a run (by id), of one kind ("line",
 * "record", "match") or all (NULL), in order. */
enum pb_rc pb_recon_db_run_items(struct pb_recon_db *db, int64_t run_id, const char *kind,
                                 json_t **out, struct pb_err *err);

/* Print a run (as pb_recon_db_run returns it) for a person. */
void pb_reconcile_print(const json_t *run, FILE *out);

/* ---- the schedule ---------------------------------------------------------------------- */

struct pb_reconcile_scheduler;

/* Start a thread that runs each connection's reconcile.schedule (UTC). A run
 * missed while paybridge was down is run once at start. Requests from the
 * admin API are queued to the same thread (pb_reconcile_scheduler_request).
 * NULL *out and PB_OK when no connection has a reconcile block. */
enum pb_rc pb_reconcile_scheduler_start(struct pb_config *cfg, struct pb_store *store,
                                        struct pb_reconcile_scheduler **out, struct pb_err *err);
/* Queue a run; returns at once. PB_ERR_NOTFOUND: no such reconcile connection. */
enum pb_rc pb_reconcile_scheduler_request(struct pb_reconcile_scheduler *s, const char *connection,
                                          int32_t day, struct pb_err *err);
struct pb_recon_db *pb_reconcile_scheduler_db(struct pb_reconcile_scheduler *s);
void pb_reconcile_scheduler_stop(struct pb_reconcile_scheduler *s);

/* admin/api.c: hand the running scheduler to the admin API (NULL = off). */
void pb_admin_set_reconcile(struct pb_reconcile_scheduler *s);

#endif
