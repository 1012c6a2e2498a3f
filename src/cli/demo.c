/*
 * cli/demo.c: `paybridge demo` — the embedded demo.
 *
 * It starts, in one process: the sandbox (Opayo Pi and Xero emulators on
 * loopback), the engine on SQLite in DIR (default ./var/demo), and a traffic
 * generator that plays an e-commerce store: it tokenises cards through the
 * Opayo emulator (merchant session key + card identifier, as a shop's page
 * would), registers transactions, and the emulator sends signed notifications
 * to paybridge. The mix: mostly successful payments, some bank declines, some
 * AVS rejections, some re-sent (duplicate) notifications, and some orders in
 * EUR and USD that the flow converts into the GBP ledger.
 *
 * The demo writes its own config (DIR/paybridge.yaml), a secret key, the
 * flow template (embedded in the binary at build time) and seals every secret
 * with AES-256-GCM. Rerunning it reuses DIR; `--fresh` wipes it first.
 *
 * Output: where the metrics and admin API live, then one status line a second,
 * then, with --duration N, a drain and the final line
 *   demo: accepted=A posted=P dead=D duplicates=U
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "reconcile/reconcile.h"
#include "cli/cli.h"
#include "core/crypto.h"
#include "core/log.h"
#include "core/money.h"
#include "engine/engine.h"
#include "net/http_client.h"
#include "sandbox.h"

struct pb_embedded_file {
    const char *name;
    const char *data;
    size_t len;
};
extern const struct pb_embedded_file pb_embedded_files[];

#define DEMO_TENANT "6f1d8a0e-5b2c-4c3e-9a7d-2b1f0e9c8d7a"

static volatile sig_atomic_t demo_stop;
static void on_sig(int s) { demo_stop = s; }

struct traffic {
    int opayo_port;
    int paytrace_port;
    char paytrace_token[256];   /* OAuth2 password-grant token of the shop */
    int paytrace_sales;
    double rate;                /* orders per second (not money) */
    int orders;                 /* sent */
    int declined_sent;
    int resent;
    volatile int stop;
    unsigned seed;
};

static const struct {
    const char *first, *last, *city, *postcode, *country;
} customers[] = {
    {"Ann", "Smith", "London", "412", "GB"},     {"Bob", "Jones", "Leeds", "412", "GB"},
    {"Chloe", "Martin", "Paris", "412", "FR"},   {"Dieter", "Braun", "Berlin", "412", "DE"},
    {"Eve", "Clark", "Boston", "412", "US"},     {"Farah", "Khan", "Manchester", "412", "GB"},
    {"Gus", "Moreau", "Lyon", "412", "FR"},      {"Hana", "Sato", "York", "412", "GB"},
    {"Ivan", "Petrov", "Bristol", "412", "GB"},  {"Jo", "Walker", "Austin", "412", "US"},
    {"Kim", "Lee", "Glasgow", "412", "GB"},      {"Luca", "Rossi", "Dublin", "412", "IE"},
};
#define N_CUSTOMERS (sizeof(customers) / sizeof(customers[0]))

static int post_json(struct pb_http_client *http, const char *url, const char *auth_user,
                     const char *auth_pass, const char *bearer, const char *body, json_t **out)
{
    struct pb_http_call call;
    struct pb_err err = {0};
    char authz[256];
    int status;
    memset(&call, 0, sizeof(call));
    call.method = "POST";
    call.url = url;
    call.headers[0] = "Content-Type: application/json";
    if (bearer) {
        snprintf(authz, sizeof(authz), "Authorization: Bearer %s", bearer);
        call.headers[1] = authz;
    }
    call.body = body;
    call.body_len = strlen(body);
    call.basic_user = auth_user;
    call.basic_password = auth_pass;
    call.timeout_ms = 10000;
    pb_http_perform(http, &call, &err);
    status = (int)call.status;
    if (out)
        *out = call.response ? json_loads(call.response, 0, NULL) : NULL;
    pb_http_call_reset(&call);
    return status;
}

static void one_order(struct pb_http_client *http, struct traffic *t, int n)
{
    char url[256], body[2048];
    json_t *r = NULL;
    unsigned roll = (unsigned)rand_r(&t->seed) % 100;
    const char *card = "4929000000006";
    const char *currency = "GBP";
    const char *addr1 = "88 High Street";
    long long amount;
    const char *msk, *cid;
    char mskbuf[64], cidbuf[64];
    size_t ci = (size_t)rand_r(&t->seed) % N_CUSTOMERS;

    if (roll < 6) {
        card = "4929602110085639"; /* declined by the bank */
        t->declined_sent++;
    } else if (roll < 9) {
        addr1 = "1 Wrong Road"; /* fails the AVS rule -> Rejected */
        t->declined_sent++;
    }
    roll = (unsigned)rand_r(&t->seed) % 100;
    if (roll < 10)
        currency = "EUR";
    else if (roll < 18)
        currency = "USD";
    amount = 500 + (long long)(rand_r(&t->seed) % 24500); /* 5.00 .. 249.99 minor units */

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/v1/merchant-session-keys", t->opayo_port);
    if (post_json(http, url, "sandbox-key", "sandbox-password", NULL, "{\"vendorName\":\"sandbox\"}", &r) != 201 || !r)
        goto out;
    msk = json_string_value(json_object_get(r, "merchantSessionKey"));
    snprintf(mskbuf, sizeof(mskbuf), "%s", msk ? msk : "");
    json_decref(r);
    r = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/v1/card-identifiers", t->opayo_port);
    snprintf(body, sizeof(body),
             "{\"cardDetails\":{\"cardholderName\":\"%s %s\",\"cardNumber\":\"%s\",\"expiryDate\":\"1230\",\"securityCode\":\"123\"}}",
             customers[ci].first, customers[ci].last, card);
    if (post_json(http, url, NULL, NULL, mskbuf, body, &r) != 201 || !r)
        goto out;
    cid = json_string_value(json_object_get(r, "cardIdentifier"));
    snprintf(cidbuf, sizeof(cidbuf), "%s", cid ? cid : "");
    json_decref(r);
    r = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/v1/transactions", t->opayo_port);
    snprintf(body, sizeof(body),
             "{\"transactionType\":\"Payment\",\"paymentMethod\":{\"card\":{\"merchantSessionKey\":\"%s\","
             "\"cardIdentifier\":\"%s\"}},\"vendorTxCode\":\"DEMO-%ld-%06d\",\"amount\":%lld,\"currency\":\"%s\","
             "\"description\":\"Demo order %d\",\"customerFirstName\":\"%s\",\"customerLastName\":\"%s\","
             "\"customerEmail\":\"%s.%s@example.com\",\"billingAddress\":{\"address1\":\"%s\",\"city\":\"%s\","
             "\"postalCode\":\"%s\",\"country\":\"%s\"},\"entryMethod\":\"Ecommerce\"}",
             mskbuf, cidbuf, (long)time(NULL) % 100000, n, amount, currency, n, customers[ci].first,
             customers[ci].last, customers[ci].first, customers[ci].last, addr1, customers[ci].city,
             customers[ci].postcode, customers[ci].country);
    if (post_json(http, url, "sandbox-key", "sandbox-password", NULL, body, &r) != 201 || !r)
        goto out;
    t->orders++;
    /* ~5% of notifications are delivered twice, as gateways do */
    if ((unsigned)rand_r(&t->seed) % 100 < 5) {
        const char *id = json_string_value(json_object_get(r, "transactionId"));
        if (id) {
            snprintf(url, sizeof(url), "http://127.0.0.1:%d/_sandbox/notify/%s", t->opayo_port, id);
            usleep(50 * 1000);
            if (post_json(http, url, NULL, NULL, NULL, "{}", NULL) / 100 == 2)
                t->resent++;
        }
    }
out:
    json_decref(r);
}

/* A PayTrace checkout of the X3 shop: sale/keyed with line items; the
 * emulator then sends the signed webhook to paybridge (and the poller would
 * catch it if it did not). */
static void one_paytrace_sale(struct pb_http_client *http, struct traffic *t, int n)
{
    static const struct {
        const char *sku;
        long long price; /* minor units (USD) */
    } items[] = {{"ITM-100", 5000}, {"ITM-200", 2500}, {"ITM-300", 1299}};
    char url[256], body[4096], lines[1024], amount[32];
    size_t ci = (size_t)rand_r(&t->seed) % N_CUSTOMERS, off = 0;
    int n_lines = 1 + rand_r(&t->seed) % 3;
    long long total = 0;
    int declined = rand_r(&t->seed) % 100 < 5;
    struct pb_http_call call;
    struct pb_err err = {0};

    if (!t->paytrace_token[0]) {
        json_t *r = NULL;
        memset(&call, 0, sizeof(call));
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/token", t->paytrace_port);
        call.method = "POST";
        call.url = url;
        call.headers[0] = "Content-Type: application/x-www-form-urlencoded";
        call.body = "grant_type=password&username=sandbox-user&password=sandbox-pass";
        call.body_len = strlen(call.body);
        call.timeout_ms = 10000;
        pb_http_perform(http, &call, &err);
        if (call.response)
            r = json_loads(call.response, 0, NULL);
        const char *tok = json_string_value(json_object_get(r, "access_token"));
        if (tok)
            snprintf(t->paytrace_token, sizeof(t->paytrace_token), "%s", tok);
        json_decref(r);
        pb_http_call_reset(&call);
        if (!t->paytrace_token[0])
            return;
    }
    for (int i = 0; i < n_lines; i++) {
        int k = (i + n) % 3, qty = 1 + rand_r(&t->seed) % 3;
        char price[32];
        total += items[k].price * qty;
        pb_money_format_decimal(items[k].price, "USD", price, sizeof(price), NULL);
        off += (size_t)snprintf(lines + off, sizeof(lines) - off,
                                "%s{\"sku\":\"%s\",\"description\":\"%s\",\"quantity\":%d,"
                                "\"unit_price\":%s}",
                                i ? "," : "", items[k].sku, items[k].sku, qty, price);
    }
    pb_money_format_decimal(total, "USD", amount, sizeof(amount), NULL);
    snprintf(body, sizeof(body),
             "{\"amount\":\"%s\",\"credit_card\":{\"number\":\"%s\",\"expiration_month\":\"12\","
             "\"expiration_year\":\"2030\"},\"csc\":\"999\",\"invoice_id\":\"X3-%ld-%05d\","
             "\"customer_id\":\"C%zu\",\"email\":\"%s.%s@example.com\",\"billing_address\":{"
             "\"name\":\"%s %s\",\"street_address\":\"1 Main St\",\"city\":\"%s\",\"zip\":\"%s\","
             "\"country\":\"US\"},\"line_items\":[%s]}",
             amount, declined ? "4012888888881881" : "4111111111111111", (long)time(NULL) % 100000, n,
             ci, customers[ci].first, customers[ci].last, customers[ci].first, customers[ci].last,
             customers[ci].city, customers[ci].postcode, lines);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/transactions/sale/keyed", t->paytrace_port);
    if (post_json(http, url, NULL, NULL, t->paytrace_token, body, NULL) / 100 == 2 || declined)
        t->paytrace_sales++;
}

static void *traffic_main(void *arg)
{
    struct traffic *t = arg;
    struct pb_http_client *http = NULL;
    struct pb_err err = {0};
    int n = 0;
    if (pb_http_client_new(&http, &err))
        return NULL;
    while (!t->stop) {
        uint64_t t0 = pb_monotonic_ns();
        if (t->paytrace_port && rand_r(&t->seed) % 100 < 30)
            one_paytrace_sale(http, t, ++n);
        else
            one_order(http, t, ++n);
        uint64_t spent_us = (pb_monotonic_ns() - t0) / 1000;
        uint64_t period_us = (uint64_t)(1000000.0 / t->rate);
        if (spent_us < period_us)
            usleep((useconds_t)(period_us - spent_us));
    }
    pb_http_client_free(http);
    return NULL;
}

static int write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    char tmp[1024];
    FILE *f;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    if (fwrite(data, 1, len, f) != len) {
        fclose(f);
        return -1;
    }
    fclose(f);
    chmod(tmp, mode);
    return rename(tmp, path);
}

static char *seal(const unsigned char key[32], const char *v)
{
    char *s = NULL, *out = NULL;
    struct pb_err err = {0};
    if (pb_secret_seal(key, v, &s, &err) == PB_OK && asprintf(&out, "enc:%s", s) < 0)
        out = NULL;
    free(s);
    return out;
}

/* 7. the day's close: each gateway settles what it processed (one payment left
 * out and one fee wrong, so that there is something to find), then paybridge
 * reconciles the day and posts the journals (docs/reconciliation.md). */
static void reconcile_today(struct pb_engine *e, struct pb_config *cfg, struct pb_sandbox *sb,
                            const char *dir)
{
    static const struct {
        const char *gateway, *connection;
    } days[] = {{"opayo", "opayo-shop"}, {"paytrace", "paytrace-shop"}};
    struct pb_http_client *http = NULL;
    struct pb_recon_db *db = NULL;
    struct pb_err err = {0};
    char path[1100];
    int32_t today = (int32_t)(time(NULL) / 86400);
    snprintf(path, sizeof path, "%s/recon.db", dir);
    if (pb_http_client_new(&http, &err) || pb_recon_db_open(path, &db, &err)) {
        printf("demo: reconciliation skipped: %s\n", err.msg);
        pb_http_client_free(http);
        return;
    }
    for (size_t i = 0; i < sizeof days / sizeof days[0]; i++) {
        struct pb_reconcile_result res;
        char url[128];
        int st;
        snprintf(url, sizeof url, "http://127.0.0.1:%d/_sandbox/settle",
                 pb_sandbox_port(sb, days[i].gateway));
        st = post_json(http, url, NULL, NULL, NULL, "{\"missing\":1,\"wrong_fee\":1,\"fee_delta\":\"0.10\"}",
                       NULL);
        if (st / 100 != 2) {
            printf("demo: %s could not settle (HTTP %d)\n", days[i].gateway, st);
            continue;
        }
        pb_err_clear(&err);
        if (pb_reconcile_day(cfg, pb_engine_store(e), db, days[i].connection, today, "demo", &res,
                             &err)) {
            printf("demo: reconcile %s: %s\n", days[i].connection, err.msg);
            continue;
        }
        {
            uint64_t matches = 0;
            for (unsigned r = 1; r < PB_RECON_RULE_COUNT; r++)
                matches += res.summary.matches_by_rule[r];
            printf("demo: reconcile %-13s %llu line(s) settled, %llu matched, %zu break(s) "
                   "(not_settled=%llu fee_out_of_contract=%llu), journals posted=%zu failed=%zu\n",
                   days[i].connection, (unsigned long long)res.summary.lines,
                   (unsigned long long)matches, res.breaks,
                   (unsigned long long)res.summary.breaks_by_class[PB_RECON_BREAK_NOT_SETTLED],
                   (unsigned long long)res.summary.breaks_by_class[PB_RECON_BREAK_FEE_OUT_OF_CONTRACT],
                   res.journals_posted, res.journals_failed);
            printf("demo:           report %s\n", res.report_csv);
        }
    }
    pb_recon_db_close(db);
    pb_http_client_free(http);
}

struct summary {
    long long accepted, posted, declined, dead, duplicates, pending;
};

static void summarise(struct pb_engine *e, struct summary *s)
{
    json_t *out = NULL;
    struct pb_err err = {0};
    memset(s, 0, sizeof(*s));
    if (pb_store_query(pb_engine_store(e), "demo.summary", NULL, &out, &err) == PB_OK) {
        s->accepted = json_integer_value(json_object_get(out, "accepted"));
        s->posted = json_integer_value(json_object_get(out, "posted"));
        s->declined = json_integer_value(json_object_get(out, "declined"));
        s->dead = json_integer_value(json_object_get(out, "dead"));
        s->duplicates = json_integer_value(json_object_get(out, "duplicates"));
        s->pending = json_integer_value(json_object_get(out, "pending"));
    }
    json_decref(out);
}

int pb_cli_demo(int argc, char **argv)
{
    long duration = 0;
    double rate = 3;
    int port = 8080, fresh = 0, xero_limits = 1;
    const char *dir = "var/demo";
    char path[1024], cfgpath[1024], keypath[1024], flowpath[1024];
    unsigned char key[32];
    char keyhex[65], admin_key[65], admin_hash[65];
    unsigned char rnd[32], dg[32];
    struct pb_sandbox *sb = NULL;
    struct pb_engine *e = NULL;
    struct pb_config *cfg = NULL;
    struct pb_err err = {0};
    struct pb_diags d = {0};
    struct traffic t;
    pthread_t tt;
    int rc = 1;
    /* sealed secrets of the demo's config (freed at `out`) */
    char *s_notify = NULL, *s_ik = NULL, *s_ip = NULL, *s_cid = NULL, *s_cs = NULL, *s_sop = NULL,
         *s_scp = NULL, *s_x3u = NULL, *s_x3p = NULL, *s_ptu = NULL, *s_ptp = NULL, *s_ptw = NULL,
         *s_shop = NULL, *s_rpu = NULL, *s_rpp = NULL;
    char *yaml = NULL;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--duration") == 0 && i + 1 < argc)
            duration = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--rate") == 0 && i + 1 < argc)
            rate = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--fresh") == 0)
            fresh = 1;
        else if (strcmp(argv[i], "--no-xero-limits") == 0)
            xero_limits = 0;
        else {
            fprintf(stderr, "usage: paybridge demo [--duration SECONDS] [--rate ORDERS_PER_SECOND] "
                            "[--port PORT] [--dir DIR] [--fresh] [--no-xero-limits]\n");
            return 2;
        }
    }
    if (rate <= 0 || rate > 1000 || duration < 0 || port < 0 || port > 65535) {
        fprintf(stderr, "paybridge demo: --rate must be in (0, 1000], --duration >= 0, --port 0-65535\n");
        return 2;
    }

    /* 1. the directory, key, flow template */
    if (fresh) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "paybridge demo: could not wipe %s\n", dir);
    }
    snprintf(path, sizeof(path), "%s", dir);
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0755);
            *p = '/';
        }
    mkdir(path, 0755);
    snprintf(flowpath, sizeof(flowpath), "%s/flows", dir);
    mkdir(flowpath, 0755);
    snprintf(keypath, sizeof(keypath), "%s/secret.key", dir);
    if (access(keypath, R_OK) != 0) {
        if (pb_random_bytes(key, 32) || pb_hex_encode(key, 32, keyhex, sizeof(keyhex)) ||
            write_file(keypath, keyhex, 64, 0600)) {
            fprintf(stderr, "paybridge demo: cannot write %s: %s\n", keypath, strerror(errno));
            return 1;
        }
    }
    if (pb_secret_key_load(keypath, key, &err)) {
        fprintf(stderr, "paybridge demo: %s\n", err.msg);
        return 1;
    }
    for (const struct pb_embedded_file *f = pb_embedded_files; f->name; f++) {
        char fp[1200];
        snprintf(fp, sizeof(fp), "%s/flows/%s", dir, f->name);
        if (access(fp, R_OK) != 0 && write_file(fp, f->data, f->len, 0644)) {
            fprintf(stderr, "paybridge demo: cannot write %s\n", fp);
            return 1;
        }
    }
    pb_random_bytes(rnd, sizeof(rnd));
    pb_hex_encode(rnd, 16, admin_key, sizeof(admin_key));
    pb_sha256(admin_key, strlen(admin_key), dg);
    pb_hex_encode(dg, 32, admin_hash, sizeof(admin_hash));

    /* 2. the sandbox */
    json_t *sbs = json_pack("{s:s,s:{s:i,s:s,s:o},s:{s:i},s:{s:i},s:{s:i},s:{s:i},s:{s:i}}", "bind",
                            "127.0.0.1", "xero", "port", 0, "tenant_id", DEMO_TENANT, "limits",
                            xero_limits ? json_pack("{s:i,s:i,s:i}", "per_minute", 60, "per_day", 5000,
                                                    "concurrent", 5)
                                        : json_false(),
                            "opayo", "port", 0, "syspro", "port", 0, "sagex3", "port", 0, "paytrace",
                            "port", 0, "shop", "port", 0);
    /* the X3 chart also needs a bank and an adjustments account for the settlement journals */
    json_object_set_new(json_object_get(sbs, "sagex3"), "accounts",
                        json_pack("[s,s,s,s,s,s]", "5120000", "5121000", "4110000", "7070000",
                                  "6270000", "6580000"));
    if (pb_sandbox_start(sbs, &sb, &err)) {
        fprintf(stderr, "paybridge demo: sandbox: %s\n", err.msg);
        json_decref(sbs);
        return 1;
    }
    json_decref(sbs);
    int xport = pb_sandbox_port(sb, "xero"), oport = pb_sandbox_port(sb, "opayo");
    int sport = pb_sandbox_port(sb, "syspro"), x3port = pb_sandbox_port(sb, "sagex3"),
        pport = pb_sandbox_port(sb, "paytrace"), shport = pb_sandbox_port(sb, "shop");

    /* 3. the config */
    s_notify = seal(key, "sandbox-notify-secret");
    s_ik = seal(key, "sandbox-key");
    s_ip = seal(key, "sandbox-password");
    s_cid = seal(key, "sandbox-client");
    s_cs = seal(key, "sandbox-secret");
    s_sop = seal(key, "sandbox-op");
    s_scp = seal(key, "");
    s_x3u = seal(key, "admin");
    s_x3p = seal(key, "sandbox-x3");
    s_ptu = seal(key, "sandbox-user");
    s_ptp = seal(key, "sandbox-pass");
    s_ptw = seal(key, "sandbox-paytrace-secret");
    s_shop = seal(key, "sandbox-shop-secret");
    s_rpu = seal(key, "sandbox-report");
    s_rpp = seal(key, "sandbox-report-password");
    if (!s_notify || !s_ik || !s_ip || !s_cid || !s_cs || !s_sop || !s_scp || !s_x3u || !s_x3p ||
        !s_ptu || !s_ptp || !s_ptw || !s_shop || !s_rpu || !s_rpp ||
        asprintf(&yaml,
                 "# Written by `paybridge demo`. Every secret is sealed with AES-256-GCM under secret.key.\n"
                 "server:\n  listen: \"127.0.0.1:%d\"\n  threads: 2\n"
                 "store: \"sqlite:paybridge.db\"\n"
                 "workers: 4\n"
                 "log_level: warn\n"
                 "secrets:\n  key_file: secret.key\n"
                 "admin:\n  api_keys: [\"sha256:%s\"]\n  metrics_public: true\n"
                 "connections:\n"
                 "  opayo-shop:\n    connector: opayo\n    status_webhook: shop-status\n    settings:\n"
                 "      api_base: \"http://127.0.0.1:%d/api/v1\"\n      vendor_name: sandbox\n"
                 "      report_url: \"http://127.0.0.1:%d/access/access.htm\"\n"
                 "    secrets:\n      notify_secret: \"%s\"\n      integration_key: \"%s\"\n"
                 "      integration_password: \"%s\"\n"
                 "      report_user: \"%s\"\n      report_password: \"%s\"\n"
                 "    reconcile:\n      erp: xero-demo\n      schedule: \"0 6 * * *\"\n"
                 "      settlement_lag_days: 0\n"
                 "      accounts: {clearing: \"091\", fees: \"404\", bank: \"090\", adjustments: \"260\"}\n"
                 "      currencies: {GBP: {fee_rate_bp: 150, fee_fixed: \"0.20\", auto_adjust_max: \"0.05\"}}\n"
                 "  xero-demo:\n    connector: xero\n    settings:\n"
                 "      api_base: \"http://127.0.0.1:%d/api.xro/2.0\"\n"
                 "      token_url: \"http://127.0.0.1:%d/connect/token\"\n"
                 "      tenant_id: \"%s\"\n"
                 "    secrets:\n      client_id: \"%s\"\n      client_secret: \"%s\"\n"
                 "    retry: {base_ms: 200, cap_ms: 5000, max_attempts: 8}\n"
                 "  syspro-erp:\n    connector: syspro\n    settings:\n"
                 "      base_url: \"http://127.0.0.1:%d/SYSPROWCFService/Rest\"\n"
                 "      company_id: EDU1\n      operator: ADMIN\n      bank: BANK1\n"
                 "    secrets:\n      operator_password: \"%s\"\n      company_password: \"%s\"\n"
                 "    retry: {base_ms: 200, cap_ms: 5000, max_attempts: 8}\n"
                 "  paytrace-shop:\n    connector: paytrace\n    status_webhook: shop-status\n    settings:\n"
                 "      api_base: \"http://127.0.0.1:%d\"\n"
                 "    poll_interval_s: 20\n"
                 "    reconcile:\n      erp: sagex3-erp\n      schedule: \"0 6 * * *\"\n"
                 "      settlement_lag_days: 0\n"
                 "      accounts: {clearing: \"5120000\", fees: \"6270000\", bank: \"5121000\", "
                 "adjustments: \"6580000\"}\n"
                 "      currencies: {USD: {fee_rate_bp: 290, fee_fixed: \"0.30\"}}\n"
                 "    secrets:\n      username: \"%s\"\n      password: \"%s\"\n"
                 "      webhook_secret: \"%s\"\n"
                 "  sagex3-erp:\n    connector: sagex3\n    settings:\n"
                 "      base_url: \"http://127.0.0.1:%d\"\n      pool_alias: SEED\n"
                 "      default_site: US011\n      journal_type: ODT\n      journal_site: US011\n"
                 "    secrets:\n      username: \"%s\"\n      password: \"%s\"\n"
                 "    retry: {base_ms: 200, cap_ms: 5000, max_attempts: 8}\n"
                 "  shop-status:\n    connector: shopwebhook\n    settings:\n"
                 "      url: \"http://127.0.0.1:%d/status\"\n"
                 "    secrets:\n      signing_secret: \"%s\"\n"
                 "flows:\n  - flows/opayo-xero.yaml\n  - flows/opayo-syspro.yaml\n"
                 "  - flows/paytrace-sagex3.yaml\n",
                 port, admin_hash, oport, oport, s_notify, s_ik, s_ip, s_rpu, s_rpp, xport, xport,
                 DEMO_TENANT, s_cid, s_cs, sport, s_sop, s_scp, pport, s_ptu, s_ptp, s_ptw, x3port,
                 s_x3u, s_x3p, shport, s_shop) < 0) {
        fprintf(stderr, "paybridge demo: out of memory\n");
        goto out;
    }
    snprintf(cfgpath, sizeof(cfgpath), "%s/paybridge.yaml", dir);
    if (write_file(cfgpath, yaml, strlen(yaml), 0600)) {
        fprintf(stderr, "paybridge demo: cannot write %s\n", cfgpath);
        goto out;
    }
    if (pb_config_load(cfgpath, 1, &cfg, &d)) {
        pb_diags_print(&d, stderr);
        goto out;
    }
    /* the JSON log goes to a file so that the status line stays readable */
    {
        char logpath[1100];
        snprintf(logpath, sizeof(logpath), "%s/paybridge.log", dir);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            pb_log_set_fd(fd);
        pb_log_set_level(PB_LOG_INFO);
    }

    /* 4. the engine, then point the gateway's notifications at it */
    struct pb_engine_options opt = {.port_override = -1};
    if (pb_engine_start(cfg, &opt, &e, &err)) {
        fprintf(stderr, "paybridge demo: %s\n", err.msg);
        goto out;
    }
    {
        struct pb_http_client *http = NULL;
        char url[256], body[512];
        pb_http_client_new(&http, &err);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/_sandbox/settings", oport);
        snprintf(body, sizeof(body),
                 "{\"notify_url\":\"http://127.0.0.1:%d/hooks/opayo-shop\",\"notify_secret\":\"sandbox-notify-secret\"}",
                 pb_engine_port(e));
        int st = post_json(http, url, NULL, NULL, NULL, body, NULL);
        int st2;
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/_sandbox/settings", pport);
        snprintf(body, sizeof(body), "{\"webhook_url\":\"http://127.0.0.1:%d/hooks/paytrace-shop\"}",
                 pb_engine_port(e));
        st2 = post_json(http, url, NULL, NULL, NULL, body, NULL);
        pb_http_client_free(http);
        if (st / 100 != 2 || st2 / 100 != 2) {
            fprintf(stderr, "paybridge demo: could not configure the sandbox (Opayo HTTP %d, PayTrace HTTP %d)\n",
                    st, st2);
            goto out;
        }
    }
    int ep = pb_engine_port(e);
    printf("paybridge demo\n");
    printf("  config        %s (secrets sealed with %s)\n", cfgpath, keypath);
    printf("  log           %s/paybridge.log (JSON lines)\n", dir);
    printf("  webhooks      POST http://127.0.0.1:%d/hooks/opayo-shop\n", ep);
    printf("  metrics       http://127.0.0.1:%d/metrics\n", ep);
    printf("  admin API     http://127.0.0.1:%d/admin/events   (Authorization: Bearer %s)\n", ep, admin_key);
    printf("  dead letters  http://127.0.0.1:%d/admin/dlq       or: build/paybridge dlq list -c %s\n", ep, cfgpath);
    printf("  pairs         Opayo -> Xero, Opayo -> SYSPRO, PayTrace -> Sage X3; order states -> the shop\n");
    printf("  sandbox       Opayo Pi :%d  Xero :%d  SYSPRO :%d  PayTrace :%d  Sage X3 :%d (127.0.0.1)\n",
           oport, xport, sport, pport, x3port);
    printf("  traffic       %.1f orders/s%s%s\n", rate, duration ? ", stopping after " : " until Ctrl-C",
           duration ? "" : "");
    if (duration)
        printf("                (%ld s)\n", duration);
    fflush(stdout);

    /* 5. traffic and status */
    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    signal(SIGPIPE, SIG_IGN);
    memset(&t, 0, sizeof(t));
    t.opayo_port = oport;
    t.paytrace_port = pport;
    t.rate = rate;
    t.seed = (unsigned)time(NULL);
    pthread_create(&tt, NULL, traffic_main, &t);
    int tty = isatty(1);
    time_t start = time(NULL);
    struct summary s;
    while (!demo_stop && (!duration || time(NULL) - start < duration)) {
        sleep(1);
        summarise(e, &s);
        printf("%sdemo: t=%lds orders=%d accepted=%lld posted=%lld declined=%lld dead=%lld duplicates=%lld pending=%lld%s",
               tty ? "\r" : "", (long)(time(NULL) - start), t.orders, s.accepted, s.posted, s.declined,
               s.dead, s.duplicates, s.pending, tty ? "   " : "\n");
        fflush(stdout);
    }
    t.stop = 1;
    pthread_join(tt, NULL);
    if (tty)
        printf("\n");
    /* 6. drain: notifications still in flight, then the job queue */
    printf("demo: traffic stopped after %d orders; draining...\n", t.orders);
    fflush(stdout);
    time_t drain_start = time(NULL);
    long long last_accepted = -1;
    for (;;) {
        summarise(e, &s);
        if (s.pending == 0 && s.accepted == last_accepted)
            break;
        last_accepted = s.accepted;
        if (time(NULL) - drain_start > 180 || demo_stop > 1) {
            printf("demo: drain timed out with %lld jobs pending (they stay queued in %s)\n", s.pending, dir);
            break;
        }
        sleep(1);
    }
    summarise(e, &s);
    {
        /* what each ERP emulator holds now, read from its own stats */
        struct pb_http_client *http = NULL;
        static const struct {
            const char *system, *label, *keys[4];
        } erps[] = {
            {"xero", "Xero", {"contacts", "invoices", "payments", NULL}},
            {"syspro", "SYSPRO", {"customers", "sales_orders", "ar_payments", NULL}},
            {"sagex3", "Sage X3", {"customers", "sales_orders", "allocations", "payments"}},
            {"shop", "shop", {"received", "duplicates", "rejected", NULL}},
        };
        if (pb_http_client_new(&http, &err) == PB_OK) {
            for (size_t i = 0; i < sizeof(erps) / sizeof(erps[0]); i++) {
                struct pb_http_call call;
                char url[128];
                json_t *st = NULL;
                memset(&call, 0, sizeof(call));
                snprintf(url, sizeof(url), "http://127.0.0.1:%d/_sandbox/stats",
                         pb_sandbox_port(sb, erps[i].system));
                call.method = "GET";
                call.url = url;
                call.timeout_ms = 5000;
                if (pb_http_perform(http, &call, &err) == PB_OK && call.response)
                    st = json_loads(call.response, 0, NULL);
                printf("demo: %-8s", erps[i].label);
                for (int k = 0; k < 4 && erps[i].keys[k]; k++)
                    printf(" %s=%lld", erps[i].keys[k],
                           (long long)json_integer_value(json_object_get(st, erps[i].keys[k])));
                printf("\n");
                json_decref(st);
                pb_http_call_reset(&call);
            }
            pb_http_client_free(http);
        }
    }
    reconcile_today(e, cfg, sb, dir);
    printf("demo: %d Opayo orders and %d PayTrace sales played\n", t.orders, t.paytrace_sales);
    printf("demo: declined=%lld (never posted, by design)\n", s.declined);
    printf("demo: accepted=%lld posted=%lld dead=%lld duplicates=%lld\n", s.accepted, s.posted, s.dead,
           s.duplicates);
    fflush(stdout);
    rc = 0;
out:
    if (e)
        pb_engine_stop(e);
    pb_config_free(cfg);
    if (sb)
        pb_sandbox_stop(sb);
    pb_diags_free(&d);
    free(yaml);
    free(s_notify);
    free(s_ik);
    free(s_ip);
    free(s_cid);
    free(s_cs);
    free(s_sop);
    free(s_scp);
    free(s_x3u);
    free(s_x3p);
    free(s_ptu);
    free(s_ptp);
    free(s_ptw);
    free(s_shop);
    free(s_rpu);
    free(s_rpp);
    memset(key, 0, sizeof(key));
    return rc;
}
