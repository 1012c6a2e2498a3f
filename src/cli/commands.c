/*
 * cli/commands.c: serve, check, map, events, dlq, secret, admin.
 *
 * Commands that read the store (events, dlq) open it directly from the
 * config's DSN; this is safe while the daemon runs (SQLite WAL, busy
 * timeout), and `dlq replay` from here is picked up by the daemon's workers
 * on their next poll.
 */
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reconcile/reconcile.h"
#include "cli/cli.h"
#include "core/crypto.h"
#include "core/json.h"
#include "core/log.h"
#include "core/money.h"
#include "engine/refunds.h"
#include "core/yamldoc.h"
#include "engine/engine.h"

const char *pb_cli_config_arg(int *argc, char **argv)
{
    const char *path = "paybridge.yaml";
    int out = 0;
    for (int i = 0; i < *argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < *argc) {
            path = argv[++i];
            continue;
        }
        argv[out++] = argv[i];
    }
    *argc = out;
    return path;
}

struct pb_config *pb_cli_load_config(const char *path, int init)
{
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    if (pb_config_load(path, init, &cfg, &d)) {
        pb_diags_print(&d, stderr);
        fprintf(stderr, "paybridge: %s has errors\n", path);
        pb_diags_free(&d);
        return NULL;
    }
    pb_diags_free(&d);
    return cfg;
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static struct pb_reconcile_scheduler *recon_scheduler;

int pb_cli_serve(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    struct pb_config *cfg;
    struct pb_engine *e;
    struct pb_err err = {0};
    struct pb_engine_options opt = {.port_override = -1};
    const char *port_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-workers") == 0)
            opt.no_workers = 1;
        else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
            port_file = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            opt.port_override = (int)strtol(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: paybridge serve -c FILE [--port N] [--port-file PATH] [--no-workers]\n");
            return 2;
        }
    }
    if (!(cfg = pb_cli_load_config(path, 1)))
        return 1;
    pb_log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (pb_engine_start(cfg, &opt, &e, &err)) {
        fprintf(stderr, "paybridge: %s\n", err.msg);
        pb_config_free(cfg);
        return 1;
    }
    {
        struct pb_reconcile_scheduler *rs = NULL;
        if (pb_reconcile_scheduler_start(cfg, pb_engine_store(e), &rs, &err))
            fprintf(stderr, "paybridge: reconciliation is off: %s\n", err.msg);
        pb_admin_set_reconcile(rs);
        recon_scheduler = rs;
    }
    if (port_file) {
        /* written atomically once listening, for scripts that start us on port 0 */
        char tmp[1024];
        FILE *f;
        snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
        if ((f = fopen(tmp, "w"))) {
            fprintf(f, "%d\n", pb_engine_port(e));
            fclose(f);
            rename(tmp, port_file);
        }
    }
    while (!stop_signal)
        pause();
    pb_admin_set_reconcile(NULL);
    pb_reconcile_scheduler_stop(recon_scheduler);
    pb_engine_stop(e);
    pb_config_free(cfg);
    return 0;
}

int pb_cli_check(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    int rc = pb_config_load(path, 1, &cfg, &d) ? 1 : 0;
    pb_diags_print(&d, stderr);
    if (rc == 0)
        printf("%s: ok (%zu connections, %zu flows)\n", path, cfg->n_conns, pb_flowset_count(cfg->flows));
    else
        fprintf(stderr, "%s: %zu problem(s)\n", path, d.n);
    pb_diags_free(&d);
    pb_config_free(cfg);
    return rc;
}

int pb_cli_map(int argc, char **argv)
{
    struct pb_err err = {0};
    if (argc != 4 || strcmp(argv[1], "test") != 0) {
        fprintf(stderr, "usage: paybridge map test FLOW.yaml SAMPLE.json\n");
        return 2;
    }
    if (pb_flow_map_test(argv[2], argv[3], NULL, stdout, &err)) {
        fprintf(stderr, "paybridge map test: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static struct pb_store *open_store(const char *path, struct pb_config **cfg_out)
{
    struct pb_config *cfg = pb_cli_load_config(path, 0);
    struct pb_store *s = NULL;
    struct pb_err err = {0};
    if (!cfg)
        return NULL;
    if (pb_store_open(cfg->store_dsn, &s, &err)) {
        fprintf(stderr, "paybridge: %s\n", err.msg);
        pb_config_free(cfg);
        return NULL;
    }
    *cfg_out = cfg;
    return s;
}

static void ts(long long ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int print_query(struct pb_store *s, const char *what, json_t *args, int pretty)
{
    json_t *out = NULL;
    struct pb_err err = {0};
    int rc = pb_store_query(s, what, args, &out, &err);
    json_decref(args);
    if (rc) {
        fprintf(stderr, "paybridge: %s\n", err.msg);
        return 1;
    }
    if (pretty) {
        json_dumpf(out, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
    } else if (strcmp(what, "events.list") == 0) {
        size_t i;
        json_t *r;
        printf("%-8s %-20s %-22s %-38s %-8s %s\n", "ID", "RECEIVED", "TYPE", "GATEWAY EVENT", "STATE", "CONNECTION");
        json_array_foreach(out, i, r)
        {
            char t[32];
            ts(json_integer_value(json_object_get(r, "received_at")), t);
            printf("%-8lld %-20s %-22s %-38s %-8s %s\n", (long long)json_integer_value(json_object_get(r, "id")), t,
                   json_string_value(json_object_get(r, "type")),
                   json_string_value(json_object_get(r, "gateway_event_id")),
                   json_string_value(json_object_get(r, "state")),
                   json_string_value(json_object_get(r, "connection")));
        }
    } else if (strcmp(what, "dlq.list") == 0) {
        size_t i;
        json_t *r;
        printf("%-8s %-8s %-20s %-26s %-6s %s\n", "JOB", "EVENT", "FAILED", "FLOW/STEP", "TRIES", "REASON");
        json_array_foreach(out, i, r)
        {
            char t[32], fs[128];
            ts(json_integer_value(json_object_get(r, "failed_at")), t);
            snprintf(fs, sizeof(fs), "%s/%s", json_string_value(json_object_get(r, "flow")),
                     json_string_value(json_object_get(r, "step_name")));
            printf("%-8lld %-8lld %-20s %-26s %-6lld %s\n", (long long)json_integer_value(json_object_get(r, "job_id")),
                   (long long)json_integer_value(json_object_get(r, "event_id")), t, fs,
                   (long long)json_integer_value(json_object_get(r, "tries")),
                   json_string_value(json_object_get(r, "reason")));
        }
    }
    json_decref(out);
    return 0;
}

static long long parse_id(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    return (*end || v <= 0) ? -1 : v;
}

int pb_cli_events(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    struct pb_config *cfg = NULL;
    struct pb_store *s;
    int rc;
    if (argc < 2 || (strcmp(argv[1], "list") == 0 && argc > 3) ||
        (strcmp(argv[1], "show") == 0 && (argc != 3 || parse_id(argv[2]) < 0)) ||
        (strcmp(argv[1], "list") != 0 && strcmp(argv[1], "show") != 0)) {
        fprintf(stderr, "usage: paybridge events list [LIMIT] -c FILE | paybridge events show ID -c FILE\n");
        return 2;
    }
    if (!(s = open_store(path, &cfg)))
        return 1;
    if (strcmp(argv[1], "list") == 0)
        rc = print_query(s, "events.list", json_pack("{s:I}", "limit", (json_int_t)(argc == 3 ? parse_id(argv[2]) : 50)), 0);
    else
        rc = print_query(s, "events.show", json_pack("{s:I}", "id", (json_int_t)parse_id(argv[2])), 1);
    pb_store_close(s);
    pb_config_free(cfg);
    return rc;
}

int pb_cli_dlq(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    struct pb_config *cfg = NULL;
    struct pb_store *s;
    int rc = 0;
    int ok = argc >= 2 && ((strcmp(argv[1], "list") == 0 && argc == 2) ||
                           (strcmp(argv[1], "show") == 0 && argc == 3 && parse_id(argv[2]) > 0) ||
                           (strcmp(argv[1], "replay") == 0 && argc == 3 &&
                            (strcmp(argv[2], "--all") == 0 || parse_id(argv[2]) > 0)));
    if (!ok) {
        fprintf(stderr, "usage: paybridge dlq list|show JOB|replay JOB|replay --all -c FILE\n");
        return 2;
    }
    if (!(s = open_store(path, &cfg)))
        return 1;
    if (strcmp(argv[1], "list") == 0) {
        rc = print_query(s, "dlq.list", json_pack("{s:i}", "limit", 1000), 0);
    } else if (strcmp(argv[1], "show") == 0) {
        rc = print_query(s, "dlq.show", json_pack("{s:I}", "id", (json_int_t)parse_id(argv[2])), 1);
    } else {
        struct pb_store_op op;
        memset(&op, 0, sizeof(op));
        op.kind = PB_OP_REPLAY;
        op.u.replay.job_id = strcmp(argv[2], "--all") == 0 ? 0 : parse_id(argv[2]);
        op.u.replay.now_ms = pb_now_ms();
        if (pb_store_run(s, &op)) {
            fprintf(stderr, "paybridge: %s\n", op.err.msg);
            rc = 1;
        } else {
            printf("replayed %lld dead letter(s); the daemon's workers pick them up within a second\n",
                   (long long)op.u.replay.count);
        }
    }
    pb_store_close(s);
    pb_config_free(cfg);
    return rc;
}

int pb_cli_secret(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "keygen") == 0) {
        unsigned char key[32];
        char hex[65];
        if (pb_random_bytes(key, sizeof(key)) || pb_hex_encode(key, 32, hex, sizeof(hex)))
            return 1;
        printf("%s\n", hex);
        return 0;
    }
    const char *path = pb_cli_config_arg(&argc, argv);
    if (argc == 3 && strcmp(argv[1], "seal") == 0) {
        unsigned char key[32];
        char *sealed = NULL;
        struct pb_err err = {0};
        const char *kf = getenv("PAYBRIDGE_SECRET_KEY") ? NULL : "var/secret.key";
        /* the key file named by the config, if the config exists */
        struct pb_diags d = {0};
        struct pb_yamldoc *doc = NULL;
        if (access(path, R_OK) == 0 && pb_yamldoc_load_file(path, &doc, &d) == PB_OK) {
            const char *k = pb_json_str(pb_yamldoc_root(doc), "secrets.key_file");
            if (k)
                kf = k;
        }
        if (pb_secret_key_load(kf, key, &err) || pb_secret_seal(key, argv[2], &sealed, &err)) {
            fprintf(stderr, "paybridge secret seal: %s\n", err.msg);
            pb_yamldoc_free(doc);
            pb_diags_free(&d);
            return 1;
        }
        printf("enc:%s\n", sealed);
        free(sealed);
        pb_yamldoc_free(doc);
        pb_diags_free(&d);
        return 0;
    }
    fprintf(stderr, "usage: paybridge secret keygen | paybridge secret seal VALUE [-c FILE]\n");
    return 2;
}

int pb_cli_admin(int argc, char **argv)
{
    unsigned char d[32];
    char hex[65];
    if (argc != 3 || strcmp(argv[1], "hash-key") != 0) {
        fprintf(stderr, "usage: paybridge admin hash-key KEY\n");
        return 2;
    }
    if (pb_sha256(argv[2], strlen(argv[2]), d) || pb_hex_encode(d, 32, hex, sizeof(hex)))
        return 1;
    printf("sha256:%s\n", hex);
    return 0;
}

/* ---- refunds and chargebacks ---------------------------------------------------------- */

static const char *opt(int argc, char **argv, const char *name)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return NULL;
}

static int print_result(enum pb_rc rc, json_t *out, const struct pb_err *err, const char *what)
{
    if (rc) {
        fprintf(stderr, "paybridge %s: %s\n", what, err->msg);
        return 1;
    }
    json_dumpf(out, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(out);
    return 0;
}

int pb_cli_refund(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    const char *conn = opt(argc, argv, "--connection"), *tx = opt(argc, argv, "--transaction"),
               *amount = opt(argc, argv, "--amount");
    struct pb_config *cfg = NULL;
    struct pb_store *s;
    json_t *out = NULL;
    struct pb_err err = {0};
    int rc;
    if (!conn || !tx || !amount) {
        fprintf(stderr, "usage: paybridge refund --connection C --transaction T --amount A "
                        "[--reason R] [--reference REF] -c FILE\n"
                        "  A is a decimal in the payment's currency; REF (at most 40 characters)\n"
                        "  makes the request idempotent: the same REF twice is one refund\n");
        return 2;
    }
    if (!(s = open_store(path, &cfg)))
        return 1;
    {
        enum pb_rc r = pb_refund_request(cfg, s, conn, tx, amount, opt(argc, argv, "--reason"),
                                         opt(argc, argv, "--reference"), &out, &err);
        rc = print_result(r, out, &err, "refund");
    }
    pb_store_close(s);
    pb_config_free(cfg);
    return rc;
}

int pb_cli_chargebacks(int argc, char **argv)
{
    const char *path = pb_cli_config_arg(&argc, argv);
    struct pb_config *cfg = NULL;
    struct pb_store *s;
    json_t *out = NULL;
    struct pb_err err = {0};
    int rc = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: paybridge chargebacks list -c FILE\n"
                        "       paybridge chargebacks open --connection C --transaction T --amount A"
                        " --reason CODE --deadline YYYY-MM-DD -c FILE\n"
                        "       paybridge chargebacks update ID --state evidence_submitted|won|lost -c FILE\n");
        return 2;
    }
    if (!(s = open_store(path, &cfg)))
        return 1;
    if (strcmp(argv[1], "list") == 0) {
        json_t *args = json_pack("{s:i}", "limit", 1000);
        if (pb_store_query(s, "chargebacks.list", args, &out, &err)) {
            fprintf(stderr, "paybridge chargebacks: %s\n", err.msg);
            rc = 1;
        } else {
            size_t i;
            json_t *r;
            printf("%-6s %-12s %-20s %-40s %-12s %-8s %s\n", "ID", "DEADLINE", "STATE", "PAYMENT",
                   "AMOUNT", "REASON", "CONNECTION");
            json_array_foreach(out, i, r)
            {
                char dec[64];
                const char *cur = json_string_value(json_object_get(r, "currency"));
                pb_money_format_decimal(json_integer_value(json_object_get(r, "amount_minor")), cur, dec,
                                        sizeof(dec), NULL);
                printf("%-6lld %-12s %-20s %-40s %-8s %-3s %-8s %s\n",
                       (long long)json_integer_value(json_object_get(r, "id")),
                       json_string_value(json_object_get(r, "deadline")),
                       json_string_value(json_object_get(r, "state")),
                       json_string_value(json_object_get(r, "original_gateway_id")), dec, cur,
                       json_string_value(json_object_get(r, "reason_code")),
                       json_string_value(json_object_get(r, "connection")));
            }
            json_decref(out);
        }
        json_decref(args);
    } else if (strcmp(argv[1], "open") == 0) {
        const char *conn = opt(argc, argv, "--connection"), *tx = opt(argc, argv, "--transaction"),
                   *amount = opt(argc, argv, "--amount"), *reason = opt(argc, argv, "--reason"),
                   *deadline = opt(argc, argv, "--deadline");
        if (!conn || !tx || !amount || !reason || !deadline) {
            fprintf(stderr, "paybridge chargebacks open: --connection, --transaction, --amount, --reason"
                            " and --deadline are all required\n");
            rc = 2;
        } else {
            enum pb_rc r = pb_chargeback_open(cfg, s, conn, tx, amount, reason, deadline, &out, &err);
            rc = print_result(r, out, &err, "chargebacks open");
        }
    } else if (strcmp(argv[1], "update") == 0 && argc >= 3 && parse_id(argv[2]) > 0 &&
               opt(argc, argv, "--state")) {
        enum pb_rc r = pb_chargeback_update(cfg, s, parse_id(argv[2]), opt(argc, argv, "--state"), &out,
                                            &err);
        rc = print_result(r, out, &err, "chargebacks update");
    } else {
        fprintf(stderr, "paybridge chargebacks: unknown or incomplete subcommand\n");
        rc = 2;
    }
    pb_store_close(s);
    pb_config_free(cfg);
    return rc;
}
