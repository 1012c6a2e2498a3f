/*
 * bench/recon/recon_bench.c: pb_recon_bench, the reconciliation benchmark
 * driver. It loads a settlement file and a ledger file (mmap, one thread per
 * file), reconciles them with the terms of bench_params.h, and prints one JSON
 * line: matches per rule, breaks per class, the exact-reference count and
 * fingerprint (compared with the generator's manifest and the pandas baseline
 * by bench/run.sh), the wall time split into parse and match, and the peak RSS.
 *
 *   pb_recon_bench --settlement FILE --ledger FILE [--threads 1|2]
 *                  [--report FILE.jsonl] [--explain N]
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
#include <time.h>

#include "bench_params.h"
#include "recon/recon.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: pb_recon_bench --settlement FILE --ledger FILE [--threads 1|2] "
                    "[--report FILE.jsonl] [--explain N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *settlement = NULL, *ledger = NULL, *report = NULL;
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
    t0 = now_s();
    if (pb_recon_load_files(run, settlement, ledger, &err)) {
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

    printf("{\"lines\":%" PRIu64 ",\"records\":%" PRIu64 ",\"batches\":%" PRIu64
           ",\"threads\":%d,\"parse_s\":%.3f,\"match_s\":%.3f,\"total_s\":%.3f,"
           "\"peak_rss_kb\":%ld,\"matches\":{",
           s.lines, s.records, s.batches, threads, t1 - t0, t2 - t1, t2 - t0, ru.ru_maxrss);
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
