/*
 * reconcile/reconcile_internal.h: what the files of src/reconcile/ share:
 * the reconciliation database's calls (recon_db.c) and the journal builder
 * (journals.c). Not for use outside src/reconcile/.
 */
#ifndef PB_RECONCILE_INTERNAL_H
#define PB_RECONCILE_INTERNAL_H

#include <jansson.h>
#include <stdint.h>

#include "connectors/connector.h"
#include "reconcile/reconcile.h"

/* ---- recon_db.c ---------------------------------------------------------------------- */

/* Start (or restart) the run of (connection, date): one row per day, its
 * revision counting the re-runs. */
enum pb_rc pb__rdb_run_begin(struct pb_recon_db *db, const char *connection, const char *date,
                             const char *erp, const char *trigger, int64_t *run_id, int *revision,
                             struct pb_err *err);
/* Record the outcome: status "ok" or "failed"; `detail` (owned by the caller)
 * holds summary, inputs, breaks, problems and reports; `matched` the ledger
 * record ids this run matched (so that other days do not count them again);
 * `items` every input line and record and every match (replacing those of an
 * earlier revision); NULL leaves them as they were. */
enum pb_rc pb__rdb_run_finish(struct pb_recon_db *db, int64_t run_id, const char *status,
                              const char *error, const json_t *detail, const json_t *matched,
                              const json_t *items, struct pb_err *err);

/* Record ids matched by this connection's runs of other dates. */
enum pb_rc pb__rdb_matched_elsewhere(struct pb_recon_db *db, const char *connection,
                                     const char *date, json_t **ids, struct pb_err *err);

/* Journals, keyed by their reference. */
enum pb_rc pb__rdb_journal_get(struct pb_recon_db *db, const char *reference, json_t **row,
                               struct pb_err *err); /* *row NULL when unknown */
/* Insert as "pending" unless the reference exists (then nothing changes). */
enum pb_rc pb__rdb_journal_add(struct pb_recon_db *db, int64_t run_id, const char *connection,
                               const char *erp, const char *kind, const char *reverses,
                               const json_t *journal, struct pb_err *err);
/* status: "posted" (erp_id), "failed" (error), "undone" (by = the reversal). */
enum pb_rc pb__rdb_journal_set(struct pb_recon_db *db, const char *reference, const char *status,
                               const char *erp_id, const char *error, struct pb_err *err);
enum pb_rc pb__rdb_journals_of(struct pb_recon_db *db, const char *connection, const char *date,
                               json_t **rows, struct pb_err *err);

/* ---- journals.c ---------------------------------------------------------------------- */

/* A reference of at most 50 characters, stable for the same parts: prefix +
 * the parts when they fit, else prefix + 20 hex digits of their SHA-256. */
void pb__journal_reference(char *out, size_t len, const char *prefix, const char *a, const char *b,
                           const char *c);

/* Post `journal` through the ERP connection, recording it in the database
 * first (pending) and after (posted / failed). *outcome: 0 posted now, 1
 * already posted (db or ERP), -1 failed (err says why). */
enum pb_rc pb__journal_post(struct pb_recon_db *db, struct pb_connection *erp,
                            struct pb_call_ctx *ctx, int64_t run_id, const char *connection,
                            const char *kind, const char *reverses, const json_t *journal,
                            int *outcome, struct pb_err *err);

#endif
