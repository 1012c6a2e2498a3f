/*
 * bench/recon/recon_bench.c: pb_recon_bench, the reconciliation benchmark
 * driver. It loads a settlement file and a ledger file (mmap, one thread per
 * file), reconciles them with the terms of bench_params.h, and prints one JSON
 * line: matches per rule, breaks per class, the exact-reference count and
 * fingerprint (compared with the generator's manifest and the pandas baseline
 * by bench/run.sh), the wall time split into parse and match, and the peak RSS.
 *
 *   pb_recon_bench --settlement FILE --ledger FILE [--threads 1|2]
 *                  [--report FILE.jsonl] [--explain N] [--ledger-db FILE.db]
 *
 * --ledger-db: the ledger side is read from a SQLite database instead of the
 * CSV (the "store reads" of the target): the first time, the ledger CSV is
 * imported into FILE.db (outside the timing: one table, amounts already in
 * minor units, as paybridge keeps them); then the timed load parses the
 * settlement CSV on one thread while the main thread SELECTs every ledger
 * row and adds it to the run.
 *
 * --report writes every match and break as JSON lines (outside the timing);
 * --explain N prints the first N explanations of each break class and rule to
 * stderr, for a person reading the bench output.
 *
 * What it owns: the run, destroyed before exit. Timing is CLOCK_MONOTONIC
 * around pb_recon_load_files() (parse) and pb_recon_match() (match); process
 * start-up and the report are outside. Peak RSS is getrusage()'s ru_maxrss
 * (kB), which covers the whole process, mapped input pages included.
 *
 * Rejected: timing inside the library (the bench measures what a caller sees);
 * repeating runs and reporting the best (the target is one cold-ish run, as a
 * nightly job sees it; run the bench twice to see the warm figure).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "bench_params.h"
#include "recon/recon.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the ledger in SQLite --------------------------------------------------------- */

static int sql_ok(sqlite3 *db, int rc, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "pb_recon_bench: %s: %s\n", what, sqlite3_errmsg(db));
        return 0;
    }
    return 1;
}

/* Import the ledger CSV into `path` (once; untimed). */
static int import_ledger(const struct pb_recon_config *cfg, const char *csv, const char *path)
{
    struct pb_recon_config one = *cfg;
    struct pb_recon_run *run = NULL;
    struct pb_err err = {0};
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct stat sb;
    char tmp[4200];
    int fd, ok = 0;
    void *map;
    if (access(path, R_OK) == 0)
        return 1;
    one.threads = 1;
    if ((fd = open(csv, O_RDONLY)) < 0 || fstat(fd, &sb)) {
        perror(csv);
        return 0;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED || pb_recon_create(&one, &run, &err) ||
        pb_recon_load_ledger_csv(run, map, (size_t)sb.st_size, &err)) {
        fprintf(stderr, "pb_recon_bench: import %s: %s\n", csv, err.msg);
        goto out;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp);
    if (!sql_ok(db, sqlite3_open(tmp, &db), "open") ||
        !sql_ok(db, sqlite3_exec(db, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN;"
                                     "CREATE TABLE ledger(erp TEXT, record_id TEXT, kind INTEGER,"
                                     " gateway_ref TEXT, reference TEXT, amount_minor INTEGER,"
                                     " currency TEXT, date INTEGER, source_line INTEGER)",
                                 NULL, NULL, NULL),
                "schema") ||
        !sql_ok(db, sqlite3_prepare_v2(db, "INSERT INTO ledger VALUES(?,?,?,?,?,?,?,?,?)", -1, &st, NULL),
                "prepare"))
        goto out;
    for (size_t i = 0; i < pb_recon_record_count(run); i++) {
        struct pb_recon_record_view v;
        pb_recon_record_get(run, (uint32_t)i, &v);
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, v.erp.ptr, (int)v.erp.len, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, v.record_id.ptr, (int)v.record_id.len, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, (int)v.kind);
        sqlite3_bind_text(st, 4, v.gateway_ref.ptr, (int)v.gateway_ref.len, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, v.reference.ptr, (int)v.reference.len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, v.amount_minor);
        sqlite3_bind_text(st, 7, v.currency, 3, SQLITE_STATIC);
        sqlite3_bind_int(st, 8, v.date);
        sqlite3_bind_int(st, 9, (int)v.source_line);
        if (!sql_ok(db, sqlite3_step(st), "insert"))
            goto out;
    }
    if (!sql_ok(db, sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), "commit"))
        goto out;
    ok = 1;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (ok && rename(tmp, path)) {
        perror(path);
        ok = 0;
    }
    pb_recon_destroy(run);
    if (map && map != MAP_FAILED)
        munmap(map, (size_t)sb.st_size);
    return ok;
}

struct settle_load {
    struct pb_recon_run *run;
    const char *path;
    struct pb_err err;
    enum pb_rc rc;
};

static void *settlement_thread(void *arg)
{
    struct settle_load *s = arg;
    struct stat sb;
    int fd = open(s->path, O_RDONLY);
    void *map;
    if (fd < 0 || fstat(fd, &sb)) {
        s->rc = pb_err_set(&s->err, PB_ERR_IO, "%s: cannot read", s->path);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        s->rc = pb_err_set(&s->err, PB_ERR_IO, "%s: cannot map", s->path);
        return NULL;
    }
    madvise(map, (size_t)sb.st_size, MADV_SEQUENTIAL);
    s->rc = pb_recon_load_settlement_csv(s->run, map, (size_t)sb.st_size, &s->err);
    munmap(map, (size_t)sb.st_size);
    return NULL;
}

/* Timed: the settlement CSV on a thread, the ledger rows from SQLite here. */
static enum pb_rc load_with_db(struct pb_recon_run *run, const char *settlement, const char *dbpath,
                               struct pb_err *err)
{
    struct settle_load s = {run, settlement, {0}, PB_OK};
    pthread_t tid;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    int r;
    if (pthread_create(&tid, NULL, settlement_thread, &s))
        return pb_err_set(err, PB_ERR_NOMEM, "cannot start a thread");
    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT erp, record_id, kind, gateway_ref, reference, amount_minor, currency,"
                           " date, source_line FROM ledger",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = pb_err_set(err, PB_ERR_IO, "%s: %s", dbpath, sqlite3_errmsg(db));
        goto out;
    }
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        struct pb_recon_record_in in = {
            .erp = (const char *)sqlite3_column_text(st, 0),
            .record_id = (const char *)sqlite3_column_text(st, 1),
            .kind = (enum pb_recon_record_kind)sqlite3_column_int(st, 2),
            .gateway_ref = (const char *)sqlite3_column_text(st, 3),
            .reference = (const char *)sqlite3_column_text(st, 4),
            .amount_minor = sqlite3_column_int64(st, 5),
            .currency = (const char *)sqlite3_column_text(st, 6),
            .date = sqlite3_column_int(st, 7),
            .source_line = (uint32_t)sqlite3_column_int(st, 8),
        };
        struct pb_err e = {0};
        enum pb_rc a = pb_recon_add_record(run, &in, &e);
        if (a == PB_ERR_NOMEM || a == PB_ERR_TOOBIG) {
            rc = pb_err_set(err, a, "%s", e.msg);
            break;
        }
    }
    if (!rc && r != SQLITE_DONE)
        rc = pb_err_set(err, PB_ERR_IO, "%s: %s", dbpath, sqlite3_errmsg(db));
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    pthread_join(tid, NULL);
    if (!rc && s.rc)
        rc = pb_err_set(err, s.rc, "%s", s.err.msg);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: pb_recon_bench --settlement FILE --ledger FILE [--threads 1|2] "
                    "[--report FILE.jsonl] [--explain N] [--ledger-db FILE.db]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *settlement = NULL, *ledger = NULL, *report = NULL, *ledger_db = NULL;
    struct pb_recon_currency_rule currencies[RB_CURRENCY_COUNT];
    struct pb_recon_contract contracts[RB_CURRENCY_COUNT];
    struct pb_recon_fx_rate rates[RB_RATE_COUNT];
    struct pb_recon_config cfg;
    struct pb_recon_run *run = NULL;
    struct pb_recon_summary s;
    struct pb_err err = {0};
    struct rusage ru;
    double t0, t1, t2;
    long explain = 0;
    int threads = 2;

    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--settlement") == 0)
            settlement = argv[++i];
        else if (strcmp(argv[i], "--ledger") == 0)
            ledger = argv[++i];
        else if (strcmp(argv[i], "--ledger-db") == 0)
            ledger_db = argv[++i];
        else if (strcmp(argv[i], "--report") == 0)
            report = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0)
            threads = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--explain") == 0)
            explain = strtol(argv[++i], NULL, 10);
        else
            usage();
    }
    if (!settlement || !ledger || threads < 1)
        usage();

    pb_recon_config_init(&cfg);
    for (int c = 0; c < RB_CURRENCY_COUNT; c++) {
        const struct rb_currency *rc = &rb_currencies[c];
        memcpy(currencies[c].currency, rc->code, 4);
        currencies[c].tolerance_minor = 0;
        currencies[c].auto_adjust_max_minor = rc->auto_adjust;
        contracts[c].gateway = rc->gateway;
        memcpy(contracts[c].currency, rc->code, 4);
        contracts[c].fee_basis_points = rc->fee_bp;
        contracts[c].fee_fixed_minor = rc->fee_fixed;
        contracts[c].settlement_lag_days = RB_SETTLEMENT_LAG;
    }
    for (int k = 0; k < RB_RATE_COUNT; k++) {
        memcpy(rates[k].from, rb_rates[k].from, 4);
        memcpy(rates[k].to, rb_rates[k].to, 4);
        rates[k].rate = rb_rates[k].rate;
    }
    cfg.currencies = currencies;
    cfg.currency_count = RB_CURRENCY_COUNT;
    cfg.contracts = contracts;
    cfg.contract_count = RB_CURRENCY_COUNT;
    cfg.rates = rates;
    cfg.rate_count = RB_RATE_COUNT;
    cfg.date_window_days = RB_DATE_WINDOW;
    cfg.settlement_lag_days = 3;
    cfg.threads = threads;

    if (pb_recon_create(&cfg, &run, &err)) {
        fprintf(stderr, "pb_recon_bench: %s\n", err.msg);
        return 1;
    }
    if (ledger_db && !import_ledger(&cfg, ledger, ledger_db)) {
        pb_recon_destroy(run);
        return 1;
    }
    t0 = now_s();
    if (ledger_db ? load_with_db(run, settlement, ledger_db, &err)
                  : pb_recon_load_files(run, settlement, ledger, &err)) {
        fprintf(stderr, "pb_recon_bench: %s\n", err.msg);
        pb_recon_destroy(run);
        return 1;
    }
    t1 = now_s();
    if (pb_recon_match(run, &err)) {
        fprintf(stderr, "pb_recon_bench: %s\n", err.msg);
        pb_recon_destroy(run);
        return 1;
    }
    t2 = now_s();
    getrusage(RUSAGE_SELF, &ru);
    pb_recon_summary(run, &s);

    printf("{\"ledger_from\":\"%s\",\"lines\":%" PRIu64 ",\"records\":%" PRIu64 ",\"batches\":%" PRIu64
           ",\"threads\":%d,\"parse_s\":%.3f,\"match_s\":%.3f,\"total_s\":%.3f,"
           "\"peak_rss_kb\":%ld,\"matches\":{",
           ledger_db ? "sqlite" : "csv", s.lines, s.records, s.batches, threads, t1 - t0, t2 - t1, t2 - t0, ru.ru_maxrss);
    for (unsigned r = 1; r < PB_RECON_RULE_COUNT; r++)
        printf("%s\"%s\":%" PRIu64, r > 1 ? "," : "", pb_recon_rule_name(r), s.matches_by_rule[r]);
    printf("},\"breaks\":{");
    for (unsigned c = 0; c < PB_RECON_BREAK_CLASS_COUNT; c++)
        printf("%s\"%s\":%" PRIu64, c ? "," : "", pb_recon_break_name(c), s.breaks_by_class[c]);
    printf("},\"lines_matched\":%" PRIu64 ",\"records_matched\":%" PRIu64
           ",\"auto_adjustable\":%" PRIu64 ",\"pending_records\":%" PRIu64
           ",\"problems\":{\"settlement\":%" PRIu64 ",\"ledger\":%" PRIu64 "}"
           ",\"exact_reference_matches\":%" PRIu64 ",\"exact_reference_fingerprint\":%" PRIu64
           ",\"digest\":\"%016" PRIx64 "\"}\n",
           s.lines_matched, s.records_matched, s.auto_adjustable, s.pending_records, s.problems[0],
           s.problems[1], s.exact_reference_matches, s.exact_reference_fingerprint,
           pb_recon_digest(run));
    fflush(stdout);

    if (explain > 0) {
        size_t n, shown_rule[PB_RECON_RULE_COUNT] = {0},
                  shown_class[PB_RECON_BREAK_CLASS_COUNT] = {0};
        const struct pb_recon_match *m = pb_recon_matches(run, &n);
        char text[1024];
        for (size_t i = 0; i < n; i++)
            if (m[i].rule < PB_RECON_RULE_COUNT && shown_rule[m[i].rule]++ < (size_t)explain) {
                pb_recon_explain_match(run, i, text, sizeof(text));
                fprintf(stderr, "  %s\n", text);
            }
        const struct pb_recon_break *b = pb_recon_breaks(run, &n);
        for (size_t i = 0; i < n; i++)
            if (b[i].class_ < PB_RECON_BREAK_CLASS_COUNT &&
                shown_class[b[i].class_]++ < (size_t)explain) {
                pb_recon_explain_break(run, i, text, sizeof(text));
                fprintf(stderr, "  %s\n", text);
            }
    }
    if (report) {
        FILE *f = fopen(report, "w");
        if (!f || pb_recon_write_jsonl(run, f, &err) || fclose(f)) {
            fprintf(stderr, "pb_recon_bench: writing %s failed%s%s\n", report,
                    err.msg[0] ? ": " : "", err.msg);
            pb_recon_destroy(run);
            return 1;
        }
    }
    pb_recon_destroy(run);
    return 0;
}
