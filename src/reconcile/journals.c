/*
 * reconcile/journals.c: posting GL journals exactly once, and undoing them.
 *
 * Exactly once, in three layers:
 *   1. the reference is a pure function of what the journal is for
 *      (connection + batch id, or connection + the break's identity), so a
 *      re-run builds the same reference;
 *   2. the reconciliation database knows the journals it posted: a "posted"
 *      row is never posted again;
 *   3. a "pending" or "failed" row (a crash or an error between the insert
 *      and the ERP's answer) is posted again, and the connector's
 *      post_journal() looks the reference up in the ERP first (connector.h),
 *      so a journal that did get through is found, not doubled.
 *
 * An undo never deletes: it posts the reversal (every line negated) under
 * "<reference>-R" and marks the original undone; both stay in the ERP's audit
 * trail and in the database.
 *
 * Touches: the reconciliation database (recon_db.c) and the ERP connection's
 * post_journal(); nothing else.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/log.h"
#include "engine/config.h"
#include "net/http_client.h"
#include "reconcile/reconcile_internal.h"

#define REF_MAX 50

void pb__journal_reference(char *out, size_t len, const char *prefix, const char *a, const char *b,
                           const char *c)
{
    char joined[512];
    int n = snprintf(joined, sizeof joined, "%s-%s%s%s%s%s", prefix, a ? a : "", b ? "-" : "",
                     b ? b : "", c ? "-" : "", c ? c : "");
    size_t max = len - 1 < REF_MAX ? len - 1 : REF_MAX;
    int printable = 1;
    for (const char *p = joined; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            printable = 0;
    if (n > 0 && (size_t)n <= max && printable) {
        snprintf(out, len, "%s", joined);
        return;
    }
    {
        unsigned char digest[32];
        char hex[65];
        pb_sha256(joined, strlen(joined), digest);
        pb_hex_encode(digest, sizeof digest, hex, sizeof hex);
        snprintf(out, len, "%s-%.20s", prefix, hex);
    }
}

enum pb_rc pb__journal_post(struct pb_recon_db *db, struct pb_connection *erp,
                            struct pb_call_ctx *ctx, int64_t run_id, const char *connection,
                            const char *kind, const char *reverses, const json_t *journal,
                            int *outcome, struct pb_err *err)
{
    const char *ref = json_string_value(json_object_get(journal, "reference"));
    json_t *row = NULL;
    char erp_id[128] = "";
    struct pb_err e = {0};
    enum pb_rc rc;

    *outcome = -1;
    if ((rc = pb__rdb_journal_get(db, ref, &row, err)))
        return rc;
    if (row) {
        const char *st = json_string_value(json_object_get(row, "status"));
        int done = st && (strcmp(st, "posted") == 0 || strcmp(st, "undone") == 0);
        json_decref(row);
        if (done) {
            *outcome = 1;
            return PB_OK;
        }
    } else if ((rc = pb__rdb_journal_add(db, run_id, connection, erp->name, kind, reverses, journal,
                                         err)))
        return rc;
    if (!erp->type->post_journal || !(erp->type->caps & PB_CAP_JOURNAL)) {
        pb_err_set(err, PB_ERR_CONFIG, "the %s connector cannot post journals", erp->type->name);
        pb__rdb_journal_set(db, ref, "failed", NULL, err->msg, &e);
        return PB_OK;
    }
    rc = erp->type->post_journal(erp, ctx, journal, erp_id, sizeof erp_id, &e);
    if (rc) {
        pb_err_set(err, rc, "%s", e.msg);
        pb_log(PB_LOG_WARN, "recon.journal", "connection", connection, "reference", ref, "erp",
               erp->name, "error", e.msg, NULL);
        pb_err_clear(&e);
        pb__rdb_journal_set(db, ref, "failed", NULL, err->msg, &e);
        return PB_OK;
    }
    if ((rc = pb__rdb_journal_set(db, ref, "posted", erp_id, NULL, err)))
        return rc;
    pb_log(PB_LOG_INFO, "recon.journal", "connection", connection, "reference", ref, "erp",
           erp->name, "erp_id", erp_id, "kind", kind, NULL);
    *outcome = 0;
    return PB_OK;
}

enum pb_rc pb_reconcile_undo(struct pb_config *cfg, struct pb_recon_db *db, const char *reference,
                             const char *who, char *reversal_ref, size_t reversal_len,
                             struct pb_err *err)
{
    json_t *row = NULL, *rev = NULL, *lines, *l;
    struct pb_conn_entry *ce;
    struct pb_http_client *http = NULL;
    struct pb_call_ctx ctx = {0};
    const char *status;
    char ref[64], narration[300];
    size_t i;
    int outcome;
    enum pb_rc rc;

    if ((rc = pb__rdb_journal_get(db, reference, &row, err)))
        return rc;
    if (!row)
        return pb_err_set(err, PB_ERR_NOTFOUND, "no journal with reference %s", reference);
    status = json_string_value(json_object_get(row, "status"));
    if (strcmp(status, "undone") == 0) {
        rc = pb_err_set(err, PB_ERR_EXISTS, "journal %s was undone already by %s", reference,
                        json_string_value(json_object_get(row, "undone_by")));
        goto out;
    }
    if (json_string_value(json_object_get(row, "reverses"))) {
        rc = pb_err_set(err, PB_ERR_INVALID, "journal %s is itself a reversal (of %s)", reference,
                        json_string_value(json_object_get(row, "reverses")));
        goto out;
    }
    if (strcmp(status, "posted") != 0) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "journal %s is %s, not posted: there is nothing to reverse", reference,
                        status);
        goto out;
    }
    if (!(ce = pb_config_connection(cfg, json_string_value(json_object_get(row, "erp"))))) {
        rc = pb_err_set(err, PB_ERR_CONFIG, "journal %s was posted to %s, which is no longer in %s",
                        reference, json_string_value(json_object_get(row, "erp")), cfg->path);
        goto out;
    }
    snprintf(ref, sizeof ref, "%.48s-R", reference);
    snprintf(narration, sizeof narration, "Reversal of %s (%s)%s%s", reference,
             json_string_value(json_object_get(row, "narration")) ?: "", who ? ", by " : "",
             who ? who : "");
    lines = json_array();
    json_array_foreach(json_object_get(row, "lines"), i, l)
    {
        json_t *c = json_deep_copy(l);
        json_object_set_new(c, "amount_minor",
                            json_integer(-json_integer_value(json_object_get(l, "amount_minor"))));
        json_array_append_new(lines, c);
    }
    rev = json_pack("{s:s,s:O,s:s,s:O,s:o}", "reference", ref, "date", json_object_get(row, "date"),
                    "narration", narration, "currency", json_object_get(row, "currency"), "lines",
                    lines);
    if ((rc = pb_http_client_new(&http, err)))
        goto out;
    ctx.http = http;
    ctx.now = time(NULL);
    ctx.retry_after_s = -1;
    if ((rc = pb__journal_post(db, &ce->conn, &ctx, json_integer_value(json_object_get(row, "run_id")),
                               json_string_value(json_object_get(row, "connection")), "reversal",
                               reference, rev, &outcome, err)))
        goto out;
    if (outcome < 0) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT, "the reversal %s was not posted: %s", ref, err->msg);
        goto out;
    }
    if ((rc = pb__rdb_journal_set(db, reference, "undone", ref, NULL, err)))
        goto out;
    pb_log(PB_LOG_INFO, "recon.undo", "reference", reference, "reversal", ref, "by",
           who ? who : "?", NULL);
    if (reversal_ref)
        snprintf(reversal_ref, reversal_len, "%s", ref);
out:
    pb_http_client_free(http);
    json_decref(rev);
    json_decref(row);
    return rc;
}
