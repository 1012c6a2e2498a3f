/*
 * cli/reconcile.c: reconciliation by hand.
 *
 *   paybridge reconcile --connection C --date YYYY-MM-DD -c FILE
 *       one run of C's reconciliation for that day (reconcile/reconcile.h):
 *       fetch the settlement, read the ledger back, match, post the journals,
 *       store the run and write its reports; prints the run. Re-running a day
 *       updates it and posts nothing twice.
 *   paybridge recon list [--connection C] -c FILE
 *   paybridge recon show RUN [--matches] -c FILE   RUN: an id or C:YYYY-MM-DD;
 *       --matches also lists every match with its rule and explanation
 *   paybridge recon breaks [--connection C] [--from D] [--to D] -c FILE
 *       every break of the period's runs (each day's latest revision), with
 *       totals per class and currency: the list a month's close works from
 *   paybridge recon undo REFERENCE [--by NAME] -c FILE
 *       reverse a journal (an automatic adjustment, or a batch journal) by
 *       posting its reversal.
 *
 * Exit 0 when the run completed, whatever it found (breaks are findings, not
 * errors); 1 when it could not run; 2 on a usage error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/err.h"
#include "core/money.h"
#include "engine/config.h"
#include "reconcile/reconcile.h"
#include "store/store.h"

static struct pb_recon_db *open_db(const struct pb_config *cfg)
{
    struct pb_recon_db *db = NULL;
    struct pb_err err = {0};
    char *path = pb_recon_db_path(cfg->store_dsn);
    if (!path || pb_recon_db_open(path, &db, &err))
        fprintf(stderr, "paybridge: %s\n", path ? err.msg : "out of memory");
    free(path);
    return db;
}

int pb_reconcile_once(struct pb_config *cfg, struct pb_store *store, struct pb_recon_db *db,
                      const char *connection, const char *date, FILE *out, struct pb_err *err)
{
    struct pb_reconcile_result res;
    int32_t day;
    json_t *run = NULL;
    char id[32];
    enum pb_rc rc;
    if (!date || pb_recon_date_parse(date, strlen(date), &day))
        return pb_err_set(err, PB_ERR_INVALID, "--date must be YYYY-MM-DD, not \"%s\"",
                          date ? date : "");
    rc = pb_reconcile_day(cfg, store, db, connection, day, "cli", &res, err);
    if (rc)
        return rc;
    snprintf(id, sizeof id, "%lld", (long long)res.run_id);
    if ((rc = pb_recon_db_run(db, id, &run, err)))
        return rc;
    pb_reconcile_print(run, out);
    json_decref(run);
    return PB_OK;
}

int pb_cli_reconcile(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    const char *connection = NULL, *date = NULL;
    struct pb_config *cfg;
    struct pb_store *store = NULL;
    struct pb_recon_db *db = NULL;
    struct pb_err err = {0};
    int status = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--connection") == 0 && i + 1 < argc)
            connection = argv[++i];
        else if (strcmp(argv[i], "--date") == 0 && i + 1 < argc)
            date = argv[++i];
        else {
            connection = NULL;
            break;
        }
    }
    if (!connection || !date) {
        fprintf(stderr,
                "usage: paybridge reconcile --connection C --date YYYY-MM-DD -c FILE\n"
                "  fetches C's settlement of that date, matches it against the ERP's ledger,\n"
                "  posts the GL journals, stores the run and writes its JSON and CSV reports\n"
                "  (see `paybridge recon show C:DATE`)\n");
        return 2;
    }
    if (!(cfg = pb_cli_load_config(path, 1)))
        return 1;
    if (pb_store_open(cfg->store_dsn, &store, &err)) {
        fprintf(stderr, "paybridge reconcile: %s\n", err.msg);
        pb_config_free(cfg);
        return 1;
    }
    if (!(db = open_db(cfg)))
        status = 1;
    else if (pb_reconcile_once(cfg, store, db, connection, date, stdout, &err)) {
        fprintf(stderr, "paybridge reconcile: %s\n", err.msg);
        status = 1;
    }
    pb_recon_db_close(db);
    pb_store_close(store);
    pb_config_free(cfg);
    return status;
}

/* Every break of the period, then totals per (class, currency). */
static void print_breaks(const json_t *days, FILE *f)
{
    json_t *totals = json_object(), *day, *b;
    size_t i, k, n = 0;
    const char *key;
    json_t *v;
    json_array_foreach(days, i, day)
    {
        json_array_foreach(json_object_get(day, "breaks"), k, b)
        {
            char tk[64];
            json_t *t;
            const char *cls = json_string_value(json_object_get(b, "class"));
            const char *cur = json_string_value(json_object_get(b, "currency"));
            fprintf(f, "%s %-16s %-20s %10s %s  %s\n", json_string_value(json_object_get(day, "date")),
                    json_string_value(json_object_get(day, "connection")), cls ? cls : "?",
                    json_string_value(json_object_get(b, "amount")) ?: "?", cur ? cur : "?",
                    json_string_value(json_object_get(b, "action")) ?: "");
            snprintf(tk, sizeof tk, "%s %s", cls ? cls : "?", cur ? cur : "?");
            if (!(t = json_object_get(totals, tk))) {
                t = json_pack("{s:i,s:I}", "count", 0, "minor", (json_int_t)0);
                json_object_set_new(totals, tk, t);
            }
            json_object_set_new(t, "count", json_integer(json_integer_value(json_object_get(t, "count")) + 1));
            json_object_set_new(t, "minor",
                                json_integer(json_integer_value(json_object_get(t, "minor")) +
                                             json_integer_value(json_object_get(b, "amount_minor"))));
            json_object_set_new(t, "currency", json_string(cur ? cur : "XXX"));
            n++;
        }
    }
    fprintf(f, "%zu break(s) in %zu run(s)\n", n, json_array_size(days));
    json_object_foreach(totals, key, v)
    {
        char amount[PB_MONEY_DECIMAL_MAX] = "?";
        pb_money_format_decimal(json_integer_value(json_object_get(v, "minor")),
                                json_string_value(json_object_get(v, "currency")), amount,
                                sizeof amount, NULL);
        fprintf(f, "  %-28s %5lld  net %s\n", key, (long long)json_integer_value(json_object_get(v, "count")),
                amount);
    }
    json_decref(totals);
}

int pb_cli_recon(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    const char *sub = argc > 1 ? argv[1] : NULL;
    struct pb_config *cfg;
    struct pb_recon_db *db;
    struct pb_err err = {0};
    json_t *out = NULL;
    int status = 0;
    if (!sub || (strcmp(sub, "list") && strcmp(sub, "show") && strcmp(sub, "undo") &&
                 strcmp(sub, "breaks")) ||
        ((!strcmp(sub, "show") || !strcmp(sub, "undo")) && argc < 3)) {
        fprintf(stderr, "usage: paybridge recon list [--connection C] -c FILE\n"
                        "       paybridge recon show RUN [--matches] -c FILE   (RUN: id or CONNECTION:YYYY-MM-DD)\n"
                        "       paybridge recon breaks [--connection C] [--from YYYY-MM-DD] [--to YYYY-MM-DD] -c FILE\n"
                        "       paybridge recon undo JOURNAL_REFERENCE [--by NAME] -c FILE\n");
        return 2;
    }
    if (!(cfg = pb_cli_load_config(path, strcmp(sub, "undo") == 0)))
        return 1;
    if (!(db = open_db(cfg))) {
        pb_config_free(cfg);
        return 1;
    }
    if (strcmp(sub, "list") == 0) {
        const char *conn = argc > 3 && strcmp(argv[2], "--connection") == 0 ? argv[3] : NULL;
        size_t i;
        json_t *r;
        if (pb_recon_db_runs(db, conn, 100, &out, &err)) {
            fprintf(stderr, "paybridge recon: %s\n", err.msg);
            status = 1;
        } else {
            printf("%-6s %-24s %-10s %-3s %-24s %8s %7s %7s\n", "RUN", "CONNECTION", "DATE", "REV",
                   "STATUS", "MATCHES", "BREAKS", "PENDING");
            json_array_foreach(out, i, r)
            {
                json_t *c = json_object_get(r, "counts");
                printf("%-6lld %-24s %-10s %-3lld %-24s %8lld %7lld %7lld\n",
                       (long long)json_integer_value(json_object_get(r, "id")),
                       json_string_value(json_object_get(r, "connection")),
                       json_string_value(json_object_get(r, "date")),
                       (long long)json_integer_value(json_object_get(r, "revision")),
                       json_string_value(json_object_get(r, "status")),
                       (long long)json_integer_value(json_object_get(c, "matches")),
                       (long long)json_integer_value(json_object_get(c, "breaks")),
                       (long long)json_integer_value(json_object_get(c, "pending")));
            }
        }
    } else if (strcmp(sub, "breaks") == 0) {
        const char *conn = NULL, *from = NULL, *to = NULL;
        int32_t probe;
        for (int i = 2; i + 1 < argc; i += 2) {
            if (strcmp(argv[i], "--connection") == 0)
                conn = argv[i + 1];
            else if (strcmp(argv[i], "--from") == 0)
                from = argv[i + 1];
            else if (strcmp(argv[i], "--to") == 0)
                to = argv[i + 1];
        }
        if ((from && pb_recon_date_parse(from, strlen(from), &probe)) ||
            (to && pb_recon_date_parse(to, strlen(to), &probe))) {
            fprintf(stderr, "paybridge recon breaks: --from and --to are YYYY-MM-DD\n");
            status = 2;
        } else if (pb_recon_db_breaks(db, conn, from, to, &out, &err)) {
            fprintf(stderr, "paybridge recon breaks: %s\n", err.msg);
            status = 1;
        } else
            print_breaks(out, stdout);
    } else if (strcmp(sub, "show") == 0) {
        if (pb_recon_db_run(db, argv[2], &out, &err)) {
            fprintf(stderr, "paybridge recon show: %s\n", err.msg);
            status = 1;
        } else {
            pb_reconcile_print(out, stdout);
            if (argc > 3 && strcmp(argv[3], "--matches") == 0) {
                json_t *items = NULL, *m;
                size_t i;
                if (pb_recon_db_run_items(db, json_integer_value(json_object_get(out, "id")),
                                          "match", &items, &err) == PB_OK) {
                    printf("matches:\n");
                    json_array_foreach(items, i, m)
                        printf("  %s\n", json_string_value(json_object_get(m, "explanation")));
                }
                json_decref(items);
            }
        }
    } else {
        const char *who = argc > 4 && strcmp(argv[3], "--by") == 0 ? argv[4] : getenv("USER");
        char rev[64];
        if (pb_reconcile_undo(cfg, db, argv[2], who, rev, sizeof rev, &err)) {
            fprintf(stderr, "paybridge recon undo: %s\n", err.msg);
            status = 1;
        } else
            printf("journal %s reversed by %s\n", argv[2], rev);
    }
    json_decref(out);
    pb_recon_db_close(db);
    pb_config_free(cfg);
    return status;
}
