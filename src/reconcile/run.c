/*
 * reconcile/run.c: one day's reconciliation of one gateway connection
 * (pb_reconcile_day; the steps are listed in reconcile.h).
 *
 * Which data a day takes.
 *   Settlement: the batches whose settlement (payout) date is the day, from
 *   the API or from every report file in the source directory (files are
 *   re-read on each run, so a re-run sees the same input; a file dropped
 *   later is seen by the re-run).
 *   Ledger: the ERP's records dated from (day - window - lag - 1) to the day,
 *   minus those that the runs of other days already matched. A payment the
 *   gateway settles within the lag is "pending", not a break; one older than
 *   the lag and still unmatched is "not_settled".
 *
 * Journals. Per settled batch: Dr bank (net), Dr fees (fees), Cr clearing
 * (gross); held when the batch does not add up (a batch_unbalanced break).
 * Per auto-adjustable break (|amount| <= the currency's auto_adjust_max):
 * Dr clearing d, Cr adjustments d, where d = settlement - ledger, which
 * leaves the clearing account at zero for that item. Anything else waits for
 * a person. journals.c posts them exactly once.
 *
 * Owns, for one call: the settlement set, the matcher's run, the HTTP client
 * and the JSON it builds. Touches the event store only through the read-only
 * query recon.ledger.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "connectors/settlement/settlement.h"
#include "connectors/settlement/settlement_parse.h"
#include "core/log.h"
#include "core/money.h"
#include "engine/config.h"
#include "net/http_client.h"
#include "reconcile/reconcile_internal.h"
#include "store/store.h"

#define DAY_MS 86400000LL

struct day {
    struct pb_config *cfg;
    struct pb_store *store;
    struct pb_recon_db *db;
    struct pb_conn_entry *gw;
    struct pb_reconcile_conf *conf;
    struct pb_conn_entry *erp;
    int32_t day;
    char date[11];
    struct pb_call_ctx ctx;
    struct pb_settlement_set *set;
    struct pb_recon_run *run;
    json_t *records;   /* the ledger side, as added */
    size_t other_records; /* ERP records of other sources, left out (ledger_scope: gateway) */
    json_t *problems;  /* [{side, source, line, reason}] */
    json_t *detail;
    int64_t run_id;
    struct pb_reconcile_result *res;
};

static void problem(struct day *d, const char *side, const char *source, unsigned line,
                    const char *reason)
{
    if (json_array_size(d->problems) < 1000)
        json_array_append_new(d->problems, json_pack("{s:s,s:s,s:i,s:s}", "side", side, "source",
                                                     source ? source : "", "line", (int)line,
                                                     "reason", reason ? reason : ""));
    d->res->problems++;
}

/* ---- 1. settlement ------------------------------------------------------------------- */

struct file_ctx {
    struct day *d;
    struct pb_settlement_csv_map *map;
};

static enum pb_rc parse_file(void *arg, const char *name, const char *data, size_t len,
                             struct pb_err *err)
{
    struct file_ctx *f = arg;
    struct pb_err e = {0};
    if (pb_settlement_parse_csv(f->d->set, f->map, name, data, len, &e))
        problem(f->d, "settlement", name, 0, e.msg); /* a bad header: the file is skipped */
    (void)err;
    return PB_OK;
}

/* Read every report file of the directory (sorted by name, for a stable order). */
static enum pb_rc read_dir(struct day *d, struct pb_settlement_csv_map *map, struct pb_err *err)
{
    struct dirent **names = NULL;
    int n = scandir(d->conf->dir, &names, NULL, alphasort);
    struct file_ctx f = {d, map};
    size_t suffix = strlen(d->conf->suffix);
    if (n < 0)
        return pb_err_set(err, PB_ERR_CONFIG, "reconcile.dir %s: %s", d->conf->dir,
                          strerror(errno));
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        size_t len = strlen(nm);
        char path[4096];
        struct stat sb;
        int fd;
        char *buf;
        if (nm[0] == '.' || len < suffix || strcmp(nm + len - suffix, d->conf->suffix) != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", d->conf->dir, nm);
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
            problem(d, "settlement", nm, 0, "cannot be read");
            if (fd >= 0)
                close(fd);
            continue;
        }
        if ((uint64_t)sb.st_size > PB_SETTLEMENT_FILE_MAX) {
            problem(d, "settlement", nm, 0, "larger than the 256 MiB a report file may be");
            close(fd);
            continue;
        }
        buf = malloc((size_t)sb.st_size + 1);
        if (buf) {
            size_t got = 0;
            ssize_t r = 0;
            while (got < (size_t)sb.st_size &&
                   (r = read(fd, buf + got, (size_t)sb.st_size - got)) > 0)
                got += (size_t)r;
            buf[got] = '\0';
            if (r < 0)
                problem(d, "settlement", nm, 0, strerror(errno));
            else
                parse_file(&f, nm, buf, got, err);
            free(buf);
        }
        close(fd);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return PB_OK;
}

/* SFTP: copy the new files into the local directory, then read it. */
static enum pb_rc save_file(void *arg, const char *name, const char *data, size_t len,
                            struct pb_err *err)
{
    struct day *d = arg;
    char path[4096], tmp[4200];
    FILE *f;
    if (strchr(name, '/') || name[0] == '.')
        return PB_OK;
    snprintf(path, sizeof path, "%s/%s", d->conf->dir, name);
    snprintf(tmp, sizeof tmp, "%s.part", path);
    if (!(f = fopen(tmp, "wb")))
        return pb_err_set(err, PB_ERR_IO, "%s: %s", tmp, strerror(errno));
    if (fwrite(data, 1, len, f) != len || fflush(f) || fsync(fileno(f))) {
        fclose(f);
        return pb_err_set(err, PB_ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    fclose(f);
    if (rename(tmp, path))
        return pb_err_set(err, PB_ERR_IO, "%s: %s", path, strerror(errno));
    return PB_OK;
}

static enum pb_rc fetch_settlement(struct day *d, struct pb_err *err)
{
    struct pb_connection *c = &d->gw->conn;
    enum pb_rc rc;
    if (d->conf->source == PB_RECONCILE_SOURCE_API) {
        if (!c->type->settlement || !(c->type->caps & PB_CAP_SETTLEMENT))
            return pb_err_set(err, PB_ERR_CONFIG,
                              "the %s connector cannot fetch settlement from an API: set "
                              "reconcile.source to dir or sftp",
                              c->type->name);
        rc = c->type->settlement(c, &d->ctx, d->day, d->day, d->set, err);
        if (rc)
            pb_err_prefix(err, "fetching the settlement of %s from %s", d->date, c->type->name);
        return rc;
    } else {
        struct pb_settlement_csv_map *map = NULL;
        if (mkdir(d->conf->dir, 0777) != 0 && errno != EEXIST)
            return pb_err_set(err, PB_ERR_IO, "cannot create %s: %s", d->conf->dir,
                              strerror(errno));
        if (d->conf->source == PB_RECONCILE_SOURCE_SFTP) {
            char state[4200];
            struct pb_settlement_sftp_options o = {0};
            size_t n = 0;
            snprintf(state, sizeof state, "%s/.paybridge-sftp", d->conf->dir);
            o.user = pb_connection_secret(c, "sftp_user");
            o.password = pb_connection_secret(c, "sftp_password");
            /* the key files' paths: secrets first, because every gateway connector
             * refuses settings it does not know (`paybridge check` fails on
             * settings.sftp_private_key); settings still count where accepted */
            o.private_key = pb_connection_secret(c, "sftp_private_key");
            if (!o.private_key || !o.private_key[0])
                o.private_key = pb_connection_setting(c, "sftp_private_key", NULL);
            o.public_key = pb_connection_secret(c, "sftp_public_key");
            if (!o.public_key || !o.public_key[0])
                o.public_key = pb_connection_setting(c, "sftp_public_key", NULL);
            o.known_hosts = d->conf->known_hosts;
            o.suffix = d->conf->suffix;
            o.state_path = state;
            if ((rc = pb_settlement_sftp_fetch_new(d->conf->url, &o, save_file, d, &n, err))) {
                pb_err_prefix(err, "fetching report files from %s", d->conf->url);
                return rc;
            }
        }
        if ((rc = pb_settlement_csv_map_new(d->conf->columns, &map, err))) {
            pb_err_prefix(err, "reconcile.columns");
            return rc;
        }
        rc = read_dir(d, map, err);
        pb_settlement_csv_map_free(map);
        return rc;
    }
}

/* The day's batches and their lines into the matcher. */
static enum pb_rc add_settlement(struct day *d, json_t *batches, struct pb_err *err)
{
    const struct pb_settlement_set *set = d->set;
    size_t nb = pb_settlement_batch_count(set);
    char *today = calloc(nb ? nb : 1, 1);
    if (!today)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < nb; i++) {
        const struct pb_settlement_batch *b = pb_settlement_batch_at(set, i);
        struct pb_recon_batch_in in;
        struct pb_err e = {0};
        enum pb_rc rc;
        if (b->date != d->day)
            continue;
        today[i] = 1;
        in = (struct pb_recon_batch_in){
            .gateway = b->gateway,
            .batch_id = b->batch_id,
            .currency = b->currency,
            .gross_minor = b->gross_minor,
            .fees_minor = b->fees_minor,
            .net_minor = b->net_minor,
            .date = b->date,
            .source_line = b->source_line,
        };
        if (b->flags & PB_SETTLEMENT_BATCH_DECLARED)
            rc = pb_recon_add_batch(d->run, &in, &e);
        else
            rc = PB_OK; /* no stated totals: the matcher sums its lines */
        if (rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG) {
            free(today);
            return pb_err_set(err, rc, "settlement batch %s: %s", b->batch_id, e.msg);
        }
        if (rc)
            problem(d, "settlement", b->source, b->source_line, e.msg);
        json_array_append_new(batches,
                              json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:i,s:s}", "gateway", b->gateway,
                                        "batch_id", b->batch_id, "currency", b->currency, "gross_minor",
                                        (json_int_t)b->gross_minor, "fees_minor",
                                        (json_int_t)b->fees_minor, "net_minor",
                                        (json_int_t)b->net_minor, "lines", (int)b->line_count,
                                        "source", b->source ? b->source : ""));
    }
    for (size_t i = 0; i < pb_settlement_line_count(set); i++) {
        const struct pb_settlement_line *l = pb_settlement_line_at(set, i);
        const struct pb_settlement_batch *b =
            l->batch == PB_SETTLEMENT_NO_BATCH ? NULL : pb_settlement_batch_at(set, l->batch);
        struct pb_recon_line_in in;
        struct pb_err e = {0};
        enum pb_rc rc;
        if (b ? !today[l->batch] : l->settled_date != d->day)
            continue;
        in = (struct pb_recon_line_in){
            .gateway = b ? b->gateway : d->gw->conn.type->name,
            .batch_id = l->batch_id,
            .line_no = (uint32_t)(i + 1),
            .kind = (enum pb_recon_line_kind)l->kind,
            .gateway_ref = l->gateway_ref,
            .merchant_ref = l->merchant_ref,
            .amount_minor = l->amount_minor,
            .fee_minor = l->fee_minor,
            .currency = l->currency,
            .value_date = l->value_date == PB_SETTLEMENT_NO_DATE ? PB_RECON_DATE_NONE : l->value_date,
            .settled_date = l->settled_date == PB_SETTLEMENT_NO_DATE ? d->day : l->settled_date,
            .source_line = l->line_no,
        };
        rc = pb_recon_add_line(d->run, &in, &e);
        if (rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG) {
            free(today);
            return pb_err_set(err, rc, "settlement line %s: %s", l->gateway_ref, e.msg);
        }
        if (rc)
            problem(d, "settlement", b ? b->source : "", l->line_no, e.msg);
    }
    free(today);
    for (size_t i = 0; i < pb_settlement_bad_count(set); i++) {
        const struct pb_settlement_bad *b = pb_settlement_bad_at(set, i);
        problem(d, "settlement", b->source, b->line, b->reason);
    }
    return PB_OK;
}

/* ---- 2. ledger ---------------------------------------------------------------------------- */

static int32_t day_of_ms(int64_t ms)
{
    int64_t q = ms / DAY_MS;
    if (ms < 0 && q * DAY_MS != ms)
        q--;
    return (int32_t)q;
}

/* paybridge's own rows (store query recon.ledger) into the ledger's shape. */
static json_t *posted_records(struct day *d, int32_t from, struct pb_err *err)
{
    json_t *args = json_pack("{s:s,s:I,s:I}", "connection", d->gw->conn.name, "from_ms",
                             (json_int_t)((int64_t)from * DAY_MS), "to_ms",
                             (json_int_t)((int64_t)(d->day + 1) * DAY_MS));
    json_t *rows = NULL, *out, *r;
    size_t i;
    if (pb_store_query(d->store, "recon.ledger", args, &rows, err)) {
        json_decref(args);
        pb_err_prefix(err, "reading what paybridge posted");
        return NULL;
    }
    json_decref(args);
    out = json_array();
    json_array_foreach(rows, i, r)
    {
        char date[11];
        pb_recon_date_format(day_of_ms(json_integer_value(json_object_get(r, "date_ms"))), date);
        json_array_append_new(
            out, json_pack("{s:O,s:O,s:O,s:O,s:O,s:O,s:s,s:O}", "record_id",
                           json_object_get(r, "record_id"), "kind", json_object_get(r, "kind"),
                           "reference", json_object_get(r, "reference"), "gateway_ref",
                           json_object_get(r, "gateway_ref"), "amount_minor",
                           json_object_get(r, "amount_minor"), "currency",
                           json_object_get(r, "currency"), "date", date, "erp",
                           json_object_get(r, "erp")));
    }
    json_decref(rows);
    return out;
}

static enum pb_rc read_ledger(struct day *d, struct pb_err *err)
{
    int32_t from = d->day - d->conf->match.date_window_days - d->conf->match.settlement_lag_days - 1;
    json_t *posted = posted_records(d, from, err), *elsewhere = NULL, *all;
    size_t i;
    json_t *r;
    enum pb_rc rc;
    if (!posted)
        return err->rc ? err->rc : PB_ERR_STORE;
    if (!d->conf->ledger_from_erp) {
        all = posted;
    } else {
        struct pb_connection *e = &d->erp->conn;
        json_t *by_id = json_object(), *by_ref = json_object(), *by_gw = json_object();
        if (!e->type->ledger || !(e->type->caps & PB_CAP_LEDGER)) {
            json_decref(posted);
            json_decref(by_id);
            json_decref(by_ref);
            json_decref(by_gw);
            return pb_err_set(err, PB_ERR_CONFIG,
                              "the %s connector cannot read its ledger back: set "
                              "reconcile.ledger: paybridge",
                              e->type->name);
        }
        all = json_array();
        if ((rc = e->type->ledger(e, &d->ctx, from, d->day, all, err))) {
            pb_err_prefix(err, "reading the ledger of %s", e->name);
            json_decref(all);
            json_decref(posted);
            json_decref(by_id);
            json_decref(by_ref);
            json_decref(by_gw);
            return rc;
        }
        /* paybridge's xref names the gateway transaction behind an ERP record */
        json_array_foreach(posted, i, r)
        {
            const char *id = json_string_value(json_object_get(r, "record_id"));
            const char *ref = json_string_value(json_object_get(r, "reference"));
            const char *g = json_string_value(json_object_get(r, "gateway_ref"));
            if (id && *id)
                json_object_set(by_id, id, r);
            if (ref && *ref)
                json_object_set(by_ref, ref, r);
            if (g && *g)
                json_object_set(by_gw, g, r);
        }
        {
            json_t *kept = json_array();
            json_array_foreach(all, i, r)
            {
                const char *g = json_string_value(json_object_get(r, "gateway_ref"));
                const char *id = json_string_value(json_object_get(r, "record_id"));
                const char *ref = json_string_value(json_object_get(r, "reference"));
                json_t *p = id && *id ? json_object_get(by_id, id) : NULL;
                int by_record = p != NULL;
                if (!p && ref && *ref)
                    p = json_object_get(by_ref, ref);
                if (!p && g && *g)
                    p = json_object_get(by_gw, g);
                /* another source's money (a wire, another gateway) is not this
                 * gateway's to settle: left out unless ledger_scope is all */
                if (!p && !d->conf->ledger_all) {
                    d->other_records++;
                    continue;
                }
                json_object_set_new(r, "erp", json_string(e->name));
                /* the xref row of this very record names its gateway transaction
                 * best (an ERP refund may carry the original payment's id) */
                if (p && (by_record || !g || !*g))
                    json_object_set(r, "gateway_ref", json_object_get(p, "gateway_ref"));
                json_object_set_new(r, "posted_by_paybridge", json_boolean(p != NULL));
                json_array_append(kept, r);
            }
            json_decref(all);
            all = kept;
        }
        json_decref(by_id);
        json_decref(by_ref);
        json_decref(by_gw);
        json_decref(posted);
    }
    if ((rc = pb__rdb_matched_elsewhere(d->db, d->gw->conn.name, d->date, &elsewhere, err))) {
        json_decref(all);
        return rc;
    }
    d->records = json_array();
    json_array_foreach(all, i, r)
    {
        const char *id = json_string_value(json_object_get(r, "record_id"));
        const char *date = json_string_value(json_object_get(r, "date"));
        const char *kind = json_string_value(json_object_get(r, "kind"));
        struct pb_recon_record_in in;
        struct pb_err e = {0};
        int32_t day;
        if (id && json_object_get(elsewhere, id))
            continue;
        if (!date || pb_recon_date_parse(date, strlen(date), &day)) {
            problem(d, "ledger", id, (unsigned)(i + 1), "the record has no YYYY-MM-DD date");
            continue;
        }
        in = (struct pb_recon_record_in){
            .erp = json_string_value(json_object_get(r, "erp")),
            .record_id = id,
            .kind = kind && strcmp(kind, "refund") == 0 ? PB_RECON_RECORD_REFUND
                                                        : PB_RECON_RECORD_PAYMENT,
            .gateway_ref = json_string_value(json_object_get(r, "gateway_ref")),
            .reference = json_string_value(json_object_get(r, "reference")),
            .amount_minor = json_integer_value(json_object_get(r, "amount_minor")),
            .currency = json_string_value(json_object_get(r, "currency")),
            .date = day,
            .source_line = (uint32_t)json_array_size(d->records) + 1,
        };
        rc = pb_recon_add_record(d->run, &in, &e);
        if (rc == PB_ERR_NOMEM || rc == PB_ERR_TOOBIG) {
            json_decref(all);
            json_decref(elsewhere);
            return pb_err_set(err, rc, "ledger record %s: %s", id ? id : "?", e.msg);
        }
        if (rc) {
            problem(d, "ledger", id, (unsigned)(i + 1), e.msg);
            continue;
        }
        json_array_append(d->records, r);
    }
    json_decref(all);
    json_decref(elsewhere);
    return PB_OK;
}

/* ---- 3. results as JSON ----------------------------------------------------------------- */

static json_t *text(struct pb_recon_text t) { return json_stringn(t.ptr ? t.ptr : "", t.len); }

static json_t *break_json(struct day *d, size_t i)
{
    size_t n;
    const struct pb_recon_break *b = &pb_recon_breaks(d->run, &n)[i];
    const uint32_t *m = pb_recon_members(d->run);
    json_t *o;
    char explain[512], amount[PB_MONEY_DECIMAL_MAX];
    pb_recon_explain_break(d->run, i, explain, sizeof explain);
    if (pb_money_format_decimal(b->amount_minor, b->currency, amount, sizeof amount, NULL))
        snprintf(amount, sizeof amount, "%lld", (long long)b->amount_minor);
    o = json_pack("{s:s,s:s,s:s,s:b,s:I,s:s,s:s,s:s,s:s}", "class", pb_recon_break_name(b->class_),
                  "action", pb_recon_action_name(b->action), "suggestion",
                  pb_recon_action_text(b->action), "auto_adjust", b->auto_adjust, "amount_minor",
                  (json_int_t)b->amount_minor, "amount", amount, "currency", b->currency, "side",
                  b->side == PB_RECON_SETTLEMENT ? "settlement" : "ledger", "explanation", explain);
    if (b->batch != PB_RECON_NONE) {
        struct pb_recon_batch_view bv;
        pb_recon_batch_get(d->run, b->batch, &bv);
        json_object_set_new(o, "batch_id", text(bv.batch_id));
    }
    if (b->line_count) {
        struct pb_recon_line_view lv;
        pb_recon_line_get(d->run, m[b->members], &lv);
        json_object_set_new(o, "gateway_ref", text(lv.gateway_ref));
        json_object_set_new(o, "merchant_ref", text(lv.merchant_ref));
        if (!json_object_get(o, "batch_id"))
            json_object_set_new(o, "batch_id", text(lv.batch_id));
    }
    if (b->record_count) {
        struct pb_recon_record_view rv;
        pb_recon_record_get(d->run, m[b->members + b->line_count], &rv);
        json_object_set_new(o, "erp", text(rv.erp));
        json_object_set_new(o, "record_id", text(rv.record_id));
        if (!json_object_get(o, "gateway_ref"))
            json_object_set_new(o, "gateway_ref", text(rv.gateway_ref));
        if (!json_object_get(o, "merchant_ref"))
            json_object_set_new(o, "merchant_ref", text(rv.reference));
    }
    return o;
}

static json_t *counts_json(const struct pb_recon_summary *s, size_t n_breaks)
{
    json_t *rules = json_object(), *classes = json_object();
    uint64_t matches = 0;
    for (unsigned r = 1; r < PB_RECON_RULE_COUNT; r++) {
        matches += s->matches_by_rule[r];
        if (s->matches_by_rule[r])
            json_object_set_new(rules, pb_recon_rule_name(r),
                                json_integer((json_int_t)s->matches_by_rule[r]));
    }
    for (unsigned c = 0; c < PB_RECON_BREAK_CLASS_COUNT; c++)
        if (s->breaks_by_class[c])
            json_object_set_new(classes, pb_recon_break_name(c),
                                json_integer((json_int_t)s->breaks_by_class[c]));
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:I,s:o,s:I,s:I}", "batches",
                     (json_int_t)s->batches, "lines", (json_int_t)s->lines, "records",
                     (json_int_t)s->records, "matches", (json_int_t)matches, "lines_matched",
                     (json_int_t)s->lines_matched, "records_matched",
                     (json_int_t)s->records_matched, "matches_by_rule", rules, "breaks",
                     (json_int_t)n_breaks, "breaks_by_class", classes, "auto_adjustable",
                     (json_int_t)s->auto_adjustable, "pending", (json_int_t)s->pending_records);
}

/* Every input line and record, and every match, for run_items. */
static json_t *run_items(struct day *d)
{
    json_t *items = json_array();
    size_t n;
    const struct pb_recon_match *m = pb_recon_matches(d->run, &n);
    const uint32_t *mem = pb_recon_members(d->run);
    for (size_t i = 0; i < pb_recon_line_count(d->run); i++) {
        struct pb_recon_line_view v;
        char vd[11] = "", sd[11] = "";
        pb_recon_line_get(d->run, (uint32_t)i, &v);
        if (v.value_date != PB_RECON_DATE_NONE)
            pb_recon_date_format(v.value_date, vd);
        if (v.settled_date != PB_RECON_DATE_NONE)
            pb_recon_date_format(v.settled_date, sd);
        json_array_append_new(
            items, json_pack("{s:s,s:i,s:o,s:o,s:s,s:o,s:o,s:I,s:I,s:s,s:s,s:s}", "kind", "line",
                             "index", (int)i, "batch_id", text(v.batch_id), "gateway", text(v.gateway),
                             "line_kind", pb_recon_line_kind_name(v.kind), "gateway_ref",
                             text(v.gateway_ref), "merchant_ref", text(v.merchant_ref),
                             "amount_minor", (json_int_t)v.amount_minor, "fee_minor",
                             (json_int_t)v.fee_minor, "currency", v.currency, "value_date", vd,
                             "settled_date", sd));
    }
    for (size_t i = 0; i < pb_recon_record_count(d->run); i++) {
        struct pb_recon_record_view v;
        char dt[11] = "";
        pb_recon_record_get(d->run, (uint32_t)i, &v);
        if (v.date != PB_RECON_DATE_NONE)
            pb_recon_date_format(v.date, dt);
        json_array_append_new(
            items, json_pack("{s:s,s:i,s:o,s:o,s:s,s:o,s:o,s:I,s:s,s:s}", "kind", "record", "index",
                             (int)i, "erp", text(v.erp), "record_id", text(v.record_id),
                             "record_kind", pb_recon_record_kind_name(v.kind), "gateway_ref",
                             text(v.gateway_ref), "reference", text(v.reference), "amount_minor",
                             (json_int_t)v.amount_minor, "currency", v.currency, "date", dt));
    }
    for (size_t i = 0; i < n; i++) {
        char line[512];
        json_t *lines = json_array(), *recs = json_array();
        pb_recon_explain_match(d->run, i, line, sizeof line);
        for (uint32_t k = 0; k < m[i].line_count; k++)
            json_array_append_new(lines, json_integer(mem[m[i].members + k]));
        for (uint32_t k = 0; k < m[i].record_count; k++)
            json_array_append_new(recs, json_integer(mem[m[i].members + m[i].line_count + k]));
        json_array_append_new(
            items, json_pack("{s:s,s:s,s:i,s:I,s:s,s:o,s:o,s:s}", "kind", "match", "rule",
                             pb_recon_rule_name(m[i].rule), "confidence", (int)m[i].confidence,
                             "difference_minor", (json_int_t)m[i].difference_minor, "currency",
                             m[i].currency, "lines", lines, "records", recs, "explanation", line));
    }
    return items;
}

/* The ids of the ledger records this run matched. */
static json_t *matched_ids(struct day *d)
{
    size_t n;
    const struct pb_recon_match *m = pb_recon_matches(d->run, &n);
    const uint32_t *mem = pb_recon_members(d->run);
    json_t *ids = json_array();
    for (size_t i = 0; i < n; i++)
        for (uint32_t k = 0; k < m[i].record_count; k++) {
            struct pb_recon_record_view rv;
            pb_recon_record_get(d->run, mem[m[i].members + m[i].line_count + k], &rv);
            json_array_append_new(ids, text(rv.record_id));
        }
    return ids;
}

/* ---- 4. journals ---------------------------------------------------------------------- */

static void add_line(json_t *lines, const char *account, int64_t amount, const char *what)
{
    if (amount)
        json_array_append_new(lines, json_pack("{s:s,s:I,s:s}", "account", account, "amount_minor",
                                               (json_int_t)amount, "description", what));
}

static void post_one(struct day *d, const char *kind, json_t *journal, json_t *out)
{
    struct pb_err e = {0};
    int outcome = -1;
    enum pb_rc rc = pb__journal_post(d->db, &d->erp->conn, &d->ctx, d->run_id, d->gw->conn.name,
                                     kind, NULL, journal, &outcome, &e);
    if (rc || outcome < 0)
        d->res->journals_failed++;
    else if (outcome == 0)
        d->res->journals_posted++;
    else
        d->res->journals_existing++;
    json_object_set_new(journal, "kind", json_string(kind));
    json_object_set_new(journal, "outcome",
                        json_string(rc || outcome < 0 ? "failed" : outcome ? "existing" : "posted"));
    if (rc || outcome < 0)
        json_object_set_new(journal, "error", json_string(e.msg));
    json_array_append(out, journal);
}

static void post_journals(struct day *d, json_t *out)
{
    size_t nb = pb_recon_batch_count(d->run), n_breaks;
    const struct pb_recon_break *br = pb_recon_breaks(d->run, &n_breaks);
    const struct pb_reconcile_conf *c = d->conf;
    char *unbalanced = calloc(nb ? nb : 1, 1);
    if (!unbalanced)
        return;
    for (size_t i = 0; i < n_breaks; i++)
        if (br[i].class_ == PB_RECON_BREAK_BATCH_UNBALANCED && br[i].batch != PB_RECON_NONE)
            unbalanced[br[i].batch] = 1;

    for (uint32_t i = 0; i < nb; i++) {
        struct pb_recon_batch_view bv;
        char bid[128], ref[64], narration[256], date[11];
        int64_t gross, fees, net;
        json_t *lines, *j;
        pb_recon_batch_get(d->run, i, &bv);
        snprintf(bid, sizeof bid, "%.*s", (int)bv.batch_id.len, bv.batch_id.ptr);
        gross = bv.has_header ? bv.gross_minor : bv.lines_gross_minor;
        fees = bv.has_header ? bv.fees_minor : bv.lines_fees_minor;
        net = bv.has_header ? bv.net_minor : gross - fees;
        pb__journal_reference(ref, sizeof ref, "PB", d->gw->conn.name, bid, NULL);
        if (unbalanced[i] || gross - fees != net) {
            d->res->journals_held++;
            json_array_append_new(out, json_pack("{s:s,s:s,s:s,s:s}", "reference", ref, "kind",
                                                 "batch", "outcome", "held", "error",
                                                 "the batch does not add up (gross - fees != net, "
                                                 "or its lines differ from its totals): a person "
                                                 "must look at it first"));
            continue;
        }
        lines = json_array();
        add_line(lines, c->bank_account, net, "net payout");
        add_line(lines, c->fees_account, fees, "gateway fees");
        add_line(lines, c->clearing_account, -gross, "gross settled out of clearing");
        if (json_array_size(lines) < 2) {
            json_decref(lines);
            continue; /* an empty batch: nothing to post */
        }
        pb_recon_date_format(bv.date != PB_RECON_DATE_NONE ? bv.date : d->day, date);
        snprintf(narration, sizeof narration, "%s settlement batch %s (%u lines) for %s",
                 d->gw->conn.type->name, bid, bv.line_count, d->gw->conn.name);
        j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:o}", "reference", ref, "date", date, "narration",
                      narration, "currency", bv.currency, "batch_id", bid, "lines", lines);
        post_one(d, "batch", j, out);
        json_decref(j);
    }
    free(unbalanced);

    for (size_t i = 0; i < n_breaks; i++) {
        json_t *bj, *lines, *j;
        char ref[64], narration[600];
        const char *a, *b;
        if (!br[i].auto_adjust || !br[i].amount_minor)
            continue;
        bj = break_json(d, i);
        a = json_string_value(json_object_get(bj, "gateway_ref"));
        if (!a || !*a)
            a = json_string_value(json_object_get(bj, "record_id"));
        b = json_string_value(json_object_get(bj, "batch_id"));
        pb__journal_reference(ref, sizeof ref, "PBA", d->gw->conn.name,
                              pb_recon_break_name(br[i].class_), a && *a ? a : b);
        lines = json_array();
        add_line(lines, c->clearing_account, br[i].amount_minor, "clear the difference");
        add_line(lines, c->adjustments_account, -br[i].amount_minor, "reconciliation adjustment");
        snprintf(narration, sizeof narration, "paybridge auto-adjustment: %.500s",
                 json_string_value(json_object_get(bj, "explanation")));
        j = json_pack("{s:s,s:s,s:s,s:s,s:o}", "reference", ref, "date", d->date, "narration",
                      narration, "currency", br[i].currency, "lines", lines);
        post_one(d, "adjustment", j, out);
        json_decref(j);
        json_decref(bj);
    }
}

/* ---- 5. reports ------------------------------------------------------------------------- */

static void csv_cell(FILE *f, const char *s, int last)
{
    int quote = s && strpbrk(s, ",\"\r\n") != NULL;
    if (quote)
        fputc('"', f);
    for (; s && *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    if (quote)
        fputc('"', f);
    fputc(last ? '\n' : ',', f);
}

static enum pb_rc write_reports(struct day *d, struct pb_err *err)
{
    const char *dir = d->conf->report_dir;
    char *def = NULL, tmp[600];
    FILE *f;
    json_t *breaks = json_object_get(d->detail, "breaks"), *b;
    size_t i;
    static const char *const cols[] = {"class", "action", "auto_adjust", "amount", "currency", "side",
                                       "batch_id", "gateway_ref", "merchant_ref", "erp",
                                       "record_id", "explanation", NULL};
    if (!dir) {
        char *p = pb_recon_db_path(d->cfg->store_dsn);
        char *slash = p ? strrchr(p, '/') : NULL;
        if (slash)
            *slash = '\0';
        if (!p || asprintf(&def, "%s/reports", slash ? p : ".") < 0)
            def = NULL;
        free(p);
        if (!def)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        dir = def;
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        pb_err_set(err, PB_ERR_IO, "cannot create the report directory %s: %s", dir,
                   strerror(errno));
        free(def);
        return PB_ERR_IO;
    }
    snprintf(d->res->report_json, sizeof d->res->report_json, "%s/recon-%s-%s.json", dir,
             d->gw->conn.name, d->date);
    snprintf(d->res->report_csv, sizeof d->res->report_csv, "%s/recon-%s-%s-breaks.csv", dir,
             d->gw->conn.name, d->date);
    free(def);
    json_object_set_new(d->detail, "reports",
                        json_pack("{s:s,s:s}", "json", d->res->report_json, "csv",
                                  d->res->report_csv));
    /* JSON: the whole detail plus every match, written to a temporary then renamed */
    snprintf(tmp, sizeof tmp, "%s.tmp", d->res->report_json);
    if (!(f = fopen(tmp, "w")))
        return pb_err_set(err, PB_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    {
        json_t *full = json_deep_copy(d->detail), *matches = json_array();
        size_t n;
        pb_recon_matches(d->run, &n);
        for (size_t k = 0; k < n; k++) {
            char line[512];
            pb_recon_explain_match(d->run, k, line, sizeof line);
            json_array_append_new(matches, json_string(line));
        }
        json_object_set_new(full, "matches", matches);
        json_dumpf(full, f, JSON_INDENT(1) | JSON_SORT_KEYS);
        fputc('\n', f);
        json_decref(full);
    }
    if (fclose(f) || rename(tmp, d->res->report_json))
        return pb_err_set(err, PB_ERR_IO, "cannot write %s: %s", d->res->report_json,
                          strerror(errno));
    snprintf(tmp, sizeof tmp, "%s.tmp", d->res->report_csv);
    if (!(f = fopen(tmp, "w")))
        return pb_err_set(err, PB_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    for (const char *const *c = cols; *c; c++)
        csv_cell(f, *c, !c[1]);
    json_array_foreach(breaks, i, b) for (const char *const *c = cols; *c; c++)
    {
        json_t *v = json_object_get(b, *c);
        csv_cell(f, json_is_boolean(v) ? (json_is_true(v) ? "yes" : "no") : json_string_value(v),
                 !c[1]);
    }
    if (fclose(f) || rename(tmp, d->res->report_csv))
        return pb_err_set(err, PB_ERR_IO, "cannot write %s: %s", d->res->report_csv,
                          strerror(errno));
    return PB_OK;
}

/* ---- the run ------------------------------------------------------------------------------ */

enum pb_rc pb_reconcile_day(struct pb_config *cfg, struct pb_store *store, struct pb_recon_db *db,
                            const char *connection, int32_t day, const char *trigger,
                            struct pb_reconcile_result *res, struct pb_err *err)
{
    struct day d = {0};
    struct pb_http_client *http = NULL;
    struct pb_recon_config mc;
    json_t *batches = NULL, *breaks = NULL, *journals = NULL, *matched = NULL, *items = NULL;
    struct pb_err e2 = {0};
    size_t n_breaks;
    enum pb_rc rc;

    memset(res, 0, sizeof *res);
    d.cfg = cfg;
    d.store = store;
    d.db = db;
    d.day = day;
    d.res = res;
    pb_recon_date_format(day, d.date);
    if (!(d.gw = pb_config_connection(cfg, connection)))
        return pb_err_set(err, PB_ERR_NOTFOUND, "no connection named \"%s\" in %s", connection,
                          cfg->path);
    if (!(d.conf = d.gw->reconcile))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "connection %s has no reconcile: block (docs/configuration.md, "
                          "\"reconcile\")",
                          connection);
    if (!(d.erp = pb_config_connection(cfg, d.conf->erp)))
        return pb_err_set(err, PB_ERR_CONFIG, "connections.%s.reconcile.erp: no connection \"%s\"",
                          connection, d.conf->erp);
    if ((rc = pb__rdb_run_begin(db, connection, d.date, d.conf->erp, trigger, &d.run_id,
                                &res->revision, err)))
        return rc;
    res->run_id = d.run_id;
    d.problems = json_array();
    batches = json_array();
    journals = json_array();
    if (!(d.set = pb_settlement_set_new()) || !d.problems || !batches || !journals) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto failed;
    }
    if ((rc = pb_http_client_new(&http, err)))
        goto failed;
    d.ctx.http = http;
    d.ctx.now = time(NULL);
    d.ctx.retry_after_s = -1;

    if ((rc = fetch_settlement(&d, err)))
        goto failed;
    mc = d.conf->match;
    mc.as_of_date = day;
    if ((rc = pb_recon_create(&mc, &d.run, err)) || (rc = add_settlement(&d, batches, err)) ||
        (rc = read_ledger(&d, err)) || (rc = pb_recon_match(d.run, err)))
        goto failed;
    {
        const struct pb_recon_problem *p;
        size_t n;
        for (int side = 0; side < 2; side++) {
            p = pb_recon_problems(d.run, (enum pb_recon_side)side, &n);
            for (size_t i = 0; i < n; i++)
                problem(&d, side ? "ledger" : "settlement", "", p[i].line, p[i].message);
        }
    }
    pb_recon_summary(d.run, &res->summary);
    pb_recon_breaks(d.run, &n_breaks);
    res->breaks = n_breaks;
    breaks = json_array();
    for (size_t i = 0; i < n_breaks; i++)
        json_array_append_new(breaks, break_json(&d, i));
    if (d.conf->post_journals)
        post_journals(&d, journals);
    d.detail = json_pack(
        "{s:s,s:s,s:s,s:i,s:o,s:{s:s,s:o,s:I,s:I},s:O,s:O,s:O,s:{s:I,s:I,s:I,s:I}}", "connection",
        connection, "date", d.date, "erp", d.conf->erp, "revision", res->revision, "counts",
        counts_json(&res->summary, n_breaks), "inputs", "source",
        d.conf->source == PB_RECONCILE_SOURCE_API    ? "api"
        : d.conf->source == PB_RECONCILE_SOURCE_DIR ? "dir"
                                                     : "sftp",
        "batches", batches, "ledger_records", (json_int_t)json_array_size(d.records),
        "ledger_records_of_other_sources", (json_int_t)d.other_records, "breaks",
        breaks, "problems", d.problems, "journals", journals, "journal_counts", "posted",
        (json_int_t)res->journals_posted, "existing", (json_int_t)res->journals_existing, "held",
        (json_int_t)res->journals_held, "failed", (json_int_t)res->journals_failed);
    batches = NULL;
    if (!d.detail) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto failed;
    }
    if ((rc = write_reports(&d, err)))
        goto failed;
    matched = matched_ids(&d);
    items = run_items(&d);
    if ((rc = pb__rdb_run_finish(db, d.run_id,
                                 res->journals_failed ? "ok_with_failed_journals" : "ok", NULL,
                                 d.detail, matched, items, err)))
        goto done;
    pb_log(PB_LOG_INFO, "recon.run", "connection", connection, "date", d.date, "trigger", trigger,
           NULL);
    goto done;
failed:
    pb__rdb_run_finish(db, d.run_id, "failed", err->msg, NULL, NULL, NULL, &e2);
    pb_log(PB_LOG_WARN, "recon.run", "connection", connection, "date", d.date, "error", err->msg,
           NULL);
done:
    json_decref(matched);
    json_decref(items);
    json_decref(breaks);
    json_decref(journals);
    json_decref(batches);
    json_decref(d.detail);
    json_decref(d.records);
    json_decref(d.problems);
    pb_recon_destroy(d.run);
    pb_settlement_set_free(d.set);
    pb_http_client_free(http);
    return rc;
}
