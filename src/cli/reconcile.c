/*
 * cli/reconcile.c: `paybridge reconcile --connection C --date YYYY-MM-DD
 * [--out DIR] -c FILE`, one reconciliation run by hand.
 *
 * What it does, in order:
 *   1. settlement side: the batches the gateway settled on that date, fetched
 *      from the Opayo Reporting API with pb_settlement_opayo_fetch_batches()
 *      (the connection's settings.report_url, secrets.report_user and
 *      secrets.report_password; a clear error names what is missing);
 *   2. ledger side: what paybridge itself posted for that connection, read
 *      from its store with the "recon.ledger" query: payment.succeeded and
 *      refund.succeeded events whose flow completed with an ERP id, dated by
 *      the gateway within [date - date_window_days, date] (the matcher's
 *      default window, 3 days);
 *   3. the matcher (recon/recon.h) with as_of_date = the date, then a summary
 *      on `out` (matches per rule, breaks per class), and two files in DIR
 *      (default "."): recon-<connection>-<date>.jsonl (pb_recon_write_jsonl)
 *      and recon-<connection>-<date>-breaks.csv (one row per break, with the
 *      matcher's own explanation).
 *   Exit 0 when the run completed, whatever it found (breaks are findings,
 *   not errors); 1 when it could not run; 2 on a usage error.
 *
 * Limits, on purpose, for this first piece of issue 4 section 3:
 *   - Opayo only (PayTrace's fetch needs an initialised connection and a
 *     different call); another connector is refused by name.
 *   - The ledger is paybridge's own record of what it posted, not the ERP's
 *     records read back; a record the ERP deleted still counts as posted.
 *   - Payments posted in the window but settled on another day are not
 *     breaks: the matcher counts them as pending while they are younger than
 *     the settlement lag (3 days by default, the same as the window).
 *   - Nothing is stored and no journal is posted: a re-run rewrites the same
 *     two files and has no other effect.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "connectors/settlement/settlement.h"
#include "connectors/settlement/settlement_fetch.h"
#include "core/money.h"
#include "engine/config.h"
#include "net/http_client.h"
#include "recon/recon.h"
#include "store/store.h"

#define DAY_MS 86400000LL

/* The settlement side: every batch and line of the set. */
static enum pb_rc add_settlement(struct pb_recon_run *run, const struct pb_settlement_set *set,
                                 size_t *skipped, struct pb_err *err)
{
    for (size_t i = 0; i < pb_settlement_batch_count(set); i++) {
        const struct pb_settlement_batch *b = pb_settlement_batch_at(set, i);
        struct pb_recon_batch_in in = {
            .gateway = b->gateway,
            .batch_id = b->batch_id,
            .currency = b->currency,
            .gross_minor = b->gross_minor,
            .fees_minor = b->fees_minor,
            .net_minor = b->net_minor,
            .date = b->date == PB_SETTLEMENT_NO_DATE ? PB_RECON_DATE_NONE : b->date,
        };
        struct pb_err e = {0};
        enum pb_rc rc = pb_recon_add_batch(run, &in, &e);
        if (rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG)
            return pb_err_set(err, rc, "settlement batch %s: %s", b->batch_id, e.msg);
        if (rc)
            (*skipped)++;
    }
    for (size_t i = 0; i < pb_settlement_line_count(set); i++) {
        const struct pb_settlement_line *l = pb_settlement_line_at(set, i);
        const struct pb_settlement_batch *b =
            l->batch == PB_SETTLEMENT_NO_BATCH ? NULL : pb_settlement_batch_at(set, l->batch);
        struct pb_recon_line_in in = {
            .gateway = b ? b->gateway : "opayo",
            .batch_id = l->batch_id,
            .line_no = (uint32_t)(i + 1),
            .kind = (enum pb_recon_line_kind)l->kind, /* the same five kinds, same order */
            .gateway_ref = l->gateway_ref,
            .merchant_ref = l->merchant_ref,
            .amount_minor = l->amount_minor,
            .fee_minor = l->fee_minor,
            .currency = l->currency,
            .value_date = l->value_date == PB_SETTLEMENT_NO_DATE ? PB_RECON_DATE_NONE : l->value_date,
            .settled_date =
                l->settled_date == PB_SETTLEMENT_NO_DATE ? PB_RECON_DATE_NONE : l->settled_date,
        };
        struct pb_err e = {0};
        enum pb_rc rc = pb_recon_add_line(run, &in, &e);
        if (rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG)
            return pb_err_set(err, rc, "settlement line %s: %s", l->gateway_ref, e.msg);
        if (rc)
            (*skipped)++;
    }
    return PB_OK;
}

static int32_t day_of_ms(int64_t ms)
{
    int64_t d = ms / DAY_MS;
    if (ms < 0 && d * DAY_MS != ms)
        d--;
    return (int32_t)d;
}

/* The ledger side: the rows of "recon.ledger". */
static enum pb_rc add_ledger(struct pb_recon_run *run, const json_t *rows, size_t *skipped,
                             FILE *out, struct pb_err *err)
{
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        const char *kind = json_string_value(json_object_get(r, "kind"));
        struct pb_recon_record_in in = {
            .erp = json_string_value(json_object_get(r, "erp")),
            .record_id = json_string_value(json_object_get(r, "record_id")),
            .kind = kind && strcmp(kind, "refund") == 0 ? PB_RECON_RECORD_REFUND
                                                        : PB_RECON_RECORD_PAYMENT,
            .gateway_ref = json_string_value(json_object_get(r, "gateway_ref")),
            .reference = json_string_value(json_object_get(r, "reference")),
            .amount_minor = json_integer_value(json_object_get(r, "amount_minor")),
            .currency = json_string_value(json_object_get(r, "currency")),
            .date = day_of_ms(json_integer_value(json_object_get(r, "date_ms"))),
            .source_line = (uint32_t)(i + 1),
        };
        struct pb_err e = {0};
        enum pb_rc rc = pb_recon_add_record(run, &in, &e);
        if (rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG)
            return pb_err_set(err, rc, "ledger record %s: %s", in.record_id, e.msg);
        if (rc) {
            fprintf(out, "warning: ledger record %s (%s) skipped: %s\n",
                    in.record_id ? in.record_id : "?", in.gateway_ref ? in.gateway_ref : "?", e.msg);
            (*skipped)++;
        }
    }
    return PB_OK;
}

static void csv_field(FILE *f, const char *s, size_t n, int last)
{
    int quote = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r')
            quote = 1;
    if (quote)
        fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"')
            fputc('"', f);
        fputc(s[i], f);
    }
    if (quote)
        fputc('"', f);
    fputc(last ? '\n' : ',', f);
}

static void csv_str(FILE *f, const char *s, int last) { csv_field(f, s ? s : "", s ? strlen(s) : 0, last); }

/* One row per break: what it is, what to do, and who is concerned. */
static enum pb_rc write_breaks_csv(const struct pb_recon_run *run, FILE *f, struct pb_err *err)
{
    size_t n;
    const struct pb_recon_break *br = pb_recon_breaks(run, &n);
    const uint32_t *members = pb_recon_members(run);
    fprintf(f, "class,action,auto_adjust,amount,currency,side,batch_id,gateway_ref,merchant_ref,"
               "erp,record_id,explanation\n");
    for (size_t i = 0; i < n; i++) {
        const struct pb_recon_break *b = &br[i];
        struct pb_recon_line_view lv;
        struct pb_recon_record_view rv;
        struct pb_recon_batch_view bv;
        char amount[PB_MONEY_DECIMAL_MAX], text[512];
        int has_line = b->line_count > 0, has_rec = b->record_count > 0;
        if (has_line)
            pb_recon_line_get(run, members[b->members], &lv);
        if (has_rec)
            pb_recon_record_get(run, members[b->members + b->line_count], &rv);
        if (b->batch != PB_RECON_NONE)
            pb_recon_batch_get(run, b->batch, &bv);
        if (pb_money_format_decimal(b->amount_minor, b->currency, amount, sizeof amount, NULL))
            snprintf(amount, sizeof amount, "%lld", (long long)b->amount_minor);
        pb_recon_explain_break(run, i, text, sizeof text);
        csv_str(f, pb_recon_break_name(b->class_), 0);
        csv_str(f, pb_recon_action_name(b->action), 0);
        csv_str(f, b->auto_adjust ? "yes" : "no", 0);
        csv_str(f, amount, 0);
        csv_str(f, b->currency, 0);
        csv_str(f, b->side == PB_RECON_SETTLEMENT ? "settlement" : "ledger", 0);
        if (b->batch != PB_RECON_NONE)
            csv_field(f, bv.batch_id.ptr, bv.batch_id.len, 0);
        else if (has_line)
            csv_field(f, lv.batch_id.ptr, lv.batch_id.len, 0);
        else
            csv_str(f, "", 0);
        if (has_line) {
            csv_field(f, lv.gateway_ref.ptr, lv.gateway_ref.len, 0);
            csv_field(f, lv.merchant_ref.ptr, lv.merchant_ref.len, 0);
        } else if (has_rec) {
            csv_field(f, rv.gateway_ref.ptr, rv.gateway_ref.len, 0);
            csv_field(f, rv.reference.ptr, rv.reference.len, 0);
        } else {
            csv_str(f, "", 0);
            csv_str(f, "", 0);
        }
        if (has_rec) {
            csv_field(f, rv.erp.ptr, rv.erp.len, 0);
            csv_field(f, rv.record_id.ptr, rv.record_id.len, 0);
        } else {
            csv_str(f, "", 0);
            csv_str(f, "", 0);
        }
        csv_str(f, text, 1);
    }
    if (ferror(f))
        return pb_err_set(err, PB_ERR_IO, "writing the breaks CSV: %s", strerror(errno));
    return PB_OK;
}

static enum pb_rc write_file(const struct pb_recon_run *run, const char *path, int csv,
                             struct pb_err *err)
{
    FILE *f = fopen(path, "w");
    enum pb_rc rc;
    if (!f)
        return pb_err_set(err, PB_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    rc = csv ? write_breaks_csv(run, f, err) : pb_recon_write_jsonl(run, f, err);
    if (fclose(f) != 0 && rc == PB_OK)
        rc = pb_err_set(err, PB_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (rc)
        pb_err_prefix(err, "%s", path);
    return rc;
}

static void print_summary(const struct pb_recon_run *run, FILE *out)
{
    struct pb_recon_summary s;
    size_t n_breaks, shown = 0;
    uint64_t matches = 0;
    char text[512];
    pb_recon_summary(run, &s);
    pb_recon_breaks(run, &n_breaks);
    for (unsigned r = 1; r < PB_RECON_RULE_COUNT; r++)
        matches += s.matches_by_rule[r];
    fprintf(out, "settlement: %llu batch(es), %llu line(s); ledger: %llu record(s)\n",
            (unsigned long long)s.batches, (unsigned long long)s.lines,
            (unsigned long long)s.records);
    fprintf(out, "matches: %llu (%llu line(s), %llu record(s) matched)\n",
            (unsigned long long)matches, (unsigned long long)s.lines_matched,
            (unsigned long long)s.records_matched);
    for (unsigned r = 1; r < PB_RECON_RULE_COUNT; r++)
        if (s.matches_by_rule[r])
            fprintf(out, "  rule %u %-12s %llu\n", r, pb_recon_rule_name(r),
                    (unsigned long long)s.matches_by_rule[r]);
    fprintf(out, "breaks: %zu (%llu auto-adjustable)\n", n_breaks,
            (unsigned long long)s.auto_adjustable);
    for (unsigned c = 0; c < PB_RECON_BREAK_CLASS_COUNT; c++)
        if (s.breaks_by_class[c])
            fprintf(out, "  %-20s %llu\n", pb_recon_break_name(c),
                    (unsigned long long)s.breaks_by_class[c]);
    if (s.pending_records)
        fprintf(out, "pending: %llu posted record(s) not settled yet, within the lag\n",
                (unsigned long long)s.pending_records);
    for (size_t i = 0; i < n_breaks && shown < 20; i++, shown++) {
        pb_recon_explain_break(run, i, text, sizeof text);
        fprintf(out, "  - %s\n", text);
    }
    if (n_breaks > shown)
        fprintf(out, "  ... and %zu more in the CSV\n", n_breaks - shown);
}

int pb_reconcile_run(struct pb_config *cfg, struct pb_store *store, const char *connection,
                     const char *date, const char *outdir, FILE *out, struct pb_err *err)
{
    struct pb_conn_entry *ce;
    struct pb_connection *c;
    struct pb_recon_config rcfg;
    struct pb_recon_run *run = NULL;
    struct pb_settlement_set *set = NULL;
    struct pb_http_client *http = NULL;
    struct pb_call_ctx ctx = {0};
    json_t *args = NULL, *ledger = NULL;
    int32_t day;
    size_t skipped = 0;
    char jsonl[1024], csv[1024];
    enum pb_rc rc;
    const char *missing[3];
    size_t n_missing = 0;

    if (!outdir || !*outdir)
        outdir = ".";
    if (!date || pb_recon_date_parse(date, strlen(date), &day))
        return pb_err_set(err, PB_ERR_INVALID, "--date must be YYYY-MM-DD, not \"%s\"",
                          date ? date : "");
    if (!(ce = pb_config_connection(cfg, connection)))
        return pb_err_set(err, PB_ERR_NOTFOUND, "no connection named \"%s\" in %s", connection,
                          cfg->path);
    c = &ce->conn;
    if (strcmp(c->type->name, "opayo") != 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "connection %s is a %s connection; reconcile fetches settlement from "
                          "Opayo only for now",
                          connection, c->type->name);
    if (!pb_connection_setting(c, "report_url", NULL))
        missing[n_missing++] = "settings.report_url";
    if (!pb_connection_secret(c, "report_user"))
        missing[n_missing++] = "secrets.report_user";
    if (!pb_connection_secret(c, "report_password"))
        missing[n_missing++] = "secrets.report_password";
    if (n_missing)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "connection %s cannot fetch its settlement: %s%s%s%s%s missing (the "
                          "Opayo Reporting API's access.htm URL and a Reporting API user, not "
                          "the Pi integration key; see docs/settlement.md)",
                          connection, missing[0], n_missing > 1 ? ", " : "",
                          n_missing > 1 ? missing[1] : "", n_missing > 2 ? ", " : "",
                          n_missing > 2 ? missing[2] : "");
    if (snprintf(jsonl, sizeof jsonl, "%s/recon-%s-%s.jsonl", outdir, connection, date) >=
            (int)sizeof jsonl ||
        snprintf(csv, sizeof csv, "%s/recon-%s-%s-breaks.csv", outdir, connection, date) >=
            (int)sizeof csv)
        return pb_err_set(err, PB_ERR_INVALID, "--out: path too long");
    if (mkdir(outdir, 0777) != 0 && errno != EEXIST)
        return pb_err_set(err, PB_ERR_IO, "cannot create %s: %s", outdir, strerror(errno));

    /* 1. settlement */
    if (!(set = pb_settlement_set_new()))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    if ((rc = pb_http_client_new(&http, err)))
        goto done;
    ctx.http = http;
    ctx.now = time(NULL);
    ctx.retry_after_s = -1;
    if ((rc = pb_settlement_opayo_fetch_batches(c, &ctx, day, day, set, err))) {
        pb_err_prefix(err, "fetching the settlement of %s from Opayo", date);
        goto done;
    }
    for (size_t i = 0; i < pb_settlement_bad_count(set); i++) {
        const struct pb_settlement_bad *b = pb_settlement_bad_at(set, i);
        fprintf(out, "warning: %s line %u: %s\n", b->source, b->line, b->reason);
    }

    /* 2. ledger */
    pb_recon_config_init(&rcfg);
    rcfg.as_of_date = day;
    rcfg.threads = 1;
    args = json_pack("{s:s,s:I,s:I}", "connection", connection, "from_ms",
                     (json_int_t)((int64_t)(day - rcfg.date_window_days) * DAY_MS), "to_ms",
                     (json_int_t)((int64_t)(day + 1) * DAY_MS));
    if (!args) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = pb_store_query(store, "recon.ledger", args, &ledger, err))) {
        pb_err_prefix(err, "reading what paybridge posted");
        goto done;
    }

    /* 3. match */
    if ((rc = pb_recon_create(&rcfg, &run, err)) || (rc = add_settlement(run, set, &skipped, err)) ||
        (rc = add_ledger(run, ledger, &skipped, out, err)) || (rc = pb_recon_match(run, err)))
        goto done;
    fprintf(out, "reconcile %s %s\n", connection, date);
    if (skipped)
        fprintf(out, "warning: %zu input item(s) skipped as malformed\n", skipped);
    print_summary(run, out);
    if ((rc = write_file(run, jsonl, 0, err)) || (rc = write_file(run, csv, 1, err)))
        goto done;
    fprintf(out, "wrote %s\nwrote %s\n", jsonl, csv);

done:
    pb_recon_destroy(run);
    json_decref(ledger);
    json_decref(args);
    pb_http_client_free(http);
    pb_settlement_set_free(set);
    return rc;
}

int pb_cli_reconcile(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    const char *connection = NULL, *date = NULL, *outdir = ".";
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    struct pb_store *store = NULL;
    struct pb_err err = {0};
    int status = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--connection") == 0 && i + 1 < argc)
            connection = argv[++i];
        else if (strcmp(argv[i], "--date") == 0 && i + 1 < argc)
            date = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            outdir = argv[++i];
        else {
            connection = NULL;
            break;
        }
    }
    if (!connection || !date) {
        fprintf(stderr, "usage: paybridge reconcile --connection C --date YYYY-MM-DD [--out DIR] -c FILE\n"
                        "  fetches C's Opayo settlement batches of that date, matches them against\n"
                        "  what paybridge posted, prints a summary and writes\n"
                        "  DIR/recon-C-DATE.jsonl and DIR/recon-C-DATE-breaks.csv (DIR default .)\n");
        return 2;
    }
    if (pb_config_load(path, 0, &cfg, &d)) {
        pb_diags_print(&d, stderr);
        fprintf(stderr, "paybridge: %s has errors\n", path);
        pb_diags_free(&d);
        return 1;
    }
    pb_diags_free(&d);
    if (pb_store_open(cfg->store_dsn, &store, &err)) {
        fprintf(stderr, "paybridge reconcile: %s\n", err.msg);
        pb_config_free(cfg);
        return 1;
    }
    if (pb_reconcile_run(cfg, store, connection, date, outdir, stdout, &err)) {
        fprintf(stderr, "paybridge reconcile: %s\n", err.msg);
        status = 1;
    }
    pb_store_close(store);
    pb_config_free(cfg);
    return status;
}
