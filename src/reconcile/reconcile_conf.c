/*
 * reconcile/reconcile_conf.c: a gateway connection's `reconcile:` block
 * (docs/configuration.md, "reconcile"). Pure parsing and checking; the
 * cross-checks against other connections (the ERP exists and can read its
 * ledger and post journals; the gateway can fetch settlement) are in
 * engine/config.c, which owns the connection table.
 *
 *   reconcile:
 *     erp: xero-demo                 # the ERP connection
 *     ledger: erp                    # erp | paybridge
 *     ledger_scope: gateway          # gateway (records tied to this connection) | all
 *     schedule: "0 6 * * *"          # UTC; omitted = by hand only
 *     date_offset_days: 1            # a scheduled run reconciles yesterday
 *     source: api                    # api | dir | sftp
 *     dir: var/settlements/opayo     # dir: where report files land; sftp: local copy
 *     url: sftp://host/reports/      # sftp
 *     known_hosts: ~/.ssh/known_hosts
 *     suffix: .csv
 *     columns: {...}                 # CSV column map (docs/settlement.md)
 *     accounts: {clearing: "1210", fees: "6100", bank: "090", adjustments: "6190"}
 *     post_journals: true
 *     report_dir: var/reports
 *     date_window_days: 3
 *     settlement_lag_days: 3
 *     currencies:
 *       GBP: {tolerance: "0.00", auto_adjust_max: "1.00", fee_rate_bp: 150, fee_fixed: "0.20"}
 *     fx_rates: {"EUR/GBP": "0.86"}
 *
 * Owns the struct and its copies; frees them in pb_reconcile_conf_free.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "reconcile/reconcile.h"

#define MAX_CURRENCIES 64
#define MAX_RATES 64

static char *resolve(const char *config_path, const char *rel)
{
    const char *slash;
    char *out;
    if (rel[0] == '/' || !config_path || !(slash = strrchr(config_path, '/')))
        return strdup(rel);
    if (asprintf(&out, "%.*s/%s", (int)(slash - config_path), config_path, rel) < 0)
        return NULL;
    return out;
}

#define BAD(node, ...)                                                                             \
    do {                                                                                           \
        *bad = (node);                                                                             \
        rc = pb_err_set(err, PB_ERR_CONFIG, __VA_ARGS__);                                          \
        goto fail;                                                                                 \
    } while (0)

static int copy_str(const json_t *v, char *dst, size_t len)
{
    const char *s = json_string_value(v);
    if (!s || !*s || strlen(s) >= len)
        return -1;
    memcpy(dst, s, strlen(s) + 1);
    return 0;
}

static int get_days(const json_t *obj, const char *key, int32_t lo, int32_t hi, int32_t *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return -1;
    *out = (int32_t)json_integer_value(v);
    return 0;
}

enum pb_rc pb_reconcile_conf_parse(const json_t *obj, const char *config_path, const char *gateway,
                                   struct pb_reconcile_conf **out, const json_t **bad,
                                   struct pb_err *err)
{
    static const char *const keys[] = {"erp", "ledger", "ledger_scope", "schedule", "date_offset_days", "source",
                                       "dir", "url", "known_hosts", "suffix", "columns",
                                       "accounts", "post_journals", "report_dir",
                                       "date_window_days", "settlement_lag_days", "currencies",
                                       "fx_rates", NULL};
    struct pb_reconcile_conf *c;
    enum pb_rc rc = PB_OK;
    const char *k, *s;
    json_t *v;
    int32_t days;

    *out = NULL;
    *bad = obj;
    if (!json_is_object(obj))
        return pb_err_set(err, PB_ERR_CONFIG,
                          "reconcile: must be a mapping with at least erp and accounts");
    if (!(c = calloc(1, sizeof *c)))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    pb_recon_config_init(&c->match);
    c->match.threads = 1; /* a day is small; keep the second core for the webhooks */
    c->ledger_from_erp = 1;
    c->date_offset_days = 1;
    c->post_journals = 1;

    json_object_foreach((json_t *)obj, k, v)
    {
        int ok = 0;
        for (const char *const *a = keys; *a; a++)
            ok |= strcmp(*a, k) == 0;
        if (!ok)
            BAD(v, "reconcile: unknown key \"%s\" (allowed: erp, ledger, ledger_scope, schedule, "
                   "date_offset_days, source, dir, url, known_hosts, suffix, columns, accounts, "
                   "post_journals, report_dir, date_window_days, settlement_lag_days, currencies, "
                   "fx_rates)",
                k);
    }
    if (copy_str(json_object_get(obj, "erp"), c->erp, sizeof c->erp))
        BAD(json_object_get(obj, "erp") ? json_object_get(obj, "erp") : obj,
            "reconcile.erp: name the ERP connection whose ledger is matched and where journals "
            "are posted, e.g. erp: xero-demo");
    if ((v = json_object_get(obj, "ledger"))) {
        s = json_string_value(v);
        if (s && strcmp(s, "erp") == 0)
            c->ledger_from_erp = 1;
        else if (s && strcmp(s, "paybridge") == 0)
            c->ledger_from_erp = 0;
        else
            BAD(v, "reconcile.ledger: \"erp\" (read the ERP's records back) or \"paybridge\" "
                   "(what paybridge posted)");
    }
    if ((v = json_object_get(obj, "ledger_scope"))) {
        s = json_string_value(v);
        if (s && strcmp(s, "gateway") == 0)
            c->ledger_all = 0;
        else if (s && strcmp(s, "all") == 0)
            c->ledger_all = 1;
        else
            BAD(v, "reconcile.ledger_scope: \"gateway\" (only the ERP records tied to this "
                   "gateway connection) or \"all\" (every receipt and refund in the ERP)");
    }
    if ((v = json_object_get(obj, "schedule"))) {
        struct pb_err e = {0};
        if (copy_str(v, c->schedule, sizeof c->schedule))
            BAD(v, "reconcile.schedule: a cron expression such as \"0 6 * * *\" (daily at 06:00 UTC)");
        if (pb_cron_parse(c->schedule, &c->cron, &e))
            BAD(v, "reconcile.schedule: %s", e.msg);
    }
    days = c->date_offset_days;
    if (get_days(obj, "date_offset_days", 0, 31, &days))
        BAD(json_object_get(obj, "date_offset_days"),
            "reconcile.date_offset_days: a whole number of days 0-31 (1 = a run reconciles yesterday)");
    c->date_offset_days = days;
    if (get_days(obj, "date_window_days", 0, 60, &c->match.date_window_days))
        BAD(json_object_get(obj, "date_window_days"), "reconcile.date_window_days: 0-60");
    if (get_days(obj, "settlement_lag_days", 0, 60, &c->match.settlement_lag_days))
        BAD(json_object_get(obj, "settlement_lag_days"), "reconcile.settlement_lag_days: 0-60");

    s = json_string_value(json_object_get(obj, "source"));
    if (json_object_get(obj, "source") && !s)
        BAD(json_object_get(obj, "source"), "reconcile.source: api, dir or sftp");
    if (!s || strcmp(s, "api") == 0)
        c->source = PB_RECONCILE_SOURCE_API;
    else if (strcmp(s, "dir") == 0)
        c->source = PB_RECONCILE_SOURCE_DIR;
    else if (strcmp(s, "sftp") == 0)
        c->source = PB_RECONCILE_SOURCE_SFTP;
    else
        BAD(json_object_get(obj, "source"),
            "reconcile.source: \"%s\" is not api (the gateway's API), dir (report files in a "
            "directory) or sftp",
            s);
    if (c->source != PB_RECONCILE_SOURCE_API) {
        v = json_object_get(obj, "dir");
        if (!json_is_string(v) || !*json_string_value(v))
            BAD(v ? v : obj, "reconcile.dir: the directory of the report files (for sftp: where "
                             "they are copied)");
        if (!(c->dir = resolve(config_path, json_string_value(v))))
            BAD(v, "out of memory");
        v = json_object_get(obj, "columns");
        if (!json_is_object(v))
            BAD(v ? v : obj, "reconcile.columns: the CSV column map of the report files "
                             "(docs/settlement.md, \"Column maps\")");
        c->columns = json_deep_copy(v);
        s = json_string_value(json_object_get(obj, "suffix"));
        c->suffix = strdup(s ? s : ".csv");
    }
    if (c->source == PB_RECONCILE_SOURCE_SFTP) {
        v = json_object_get(obj, "url");
        s = json_string_value(v);
        if (!s || strncmp(s, "sftp://", 7) != 0 || s[strlen(s) - 1] != '/')
            BAD(v ? v : obj, "reconcile.url: an sftp:// URL of the reports directory, ending in /");
        c->url = strdup(s);
        if ((v = json_object_get(obj, "known_hosts"))) {
            if (!json_is_string(v))
                BAD(v, "reconcile.known_hosts: a path");
            c->known_hosts = resolve(config_path, json_string_value(v));
        }
    }

    if ((v = json_object_get(obj, "post_journals"))) {
        if (!json_is_boolean(v))
            BAD(v, "reconcile.post_journals: true or false");
        c->post_journals = json_is_true(v);
    }
    v = json_object_get(obj, "accounts");
    if (c->post_journals || v) {
        static const char *const names[] = {"clearing", "fees", "bank", "adjustments"};
        char *dst[] = {c->clearing_account, c->fees_account, c->bank_account,
                       c->adjustments_account};
        if (!json_is_object(v))
            BAD(v ? v : obj,
                "reconcile.accounts: the GL accounts of the journals: {clearing: CODE, fees: "
                "CODE, bank: CODE, adjustments: CODE} (or post_journals: false)");
        {
            const char *key;
            json_t *a;
            json_object_foreach(v, key, a)
            {
                int known = 0;
                for (int i = 0; i < 4; i++)
                    known |= strcmp(names[i], key) == 0;
                if (!known)
                    BAD(a, "reconcile.accounts: unknown account \"%s\" (clearing, fees, bank, "
                           "adjustments)",
                        key);
            }
        }
        for (int i = 0; i < 4; i++) {
            json_t *a = json_object_get(v, names[i]);
            if (copy_str(a, dst[i], 32))
                BAD(a ? a : v, "reconcile.accounts.%s: the ERP's GL account code (a string, at "
                               "most 31 characters)",
                    names[i]);
        }
    }
    if ((v = json_object_get(obj, "report_dir"))) {
        if (!json_is_string(v))
            BAD(v, "reconcile.report_dir: a directory");
        c->report_dir = resolve(config_path, json_string_value(v));
    }

    if ((v = json_object_get(obj, "currencies"))) {
        size_t n = 0;
        json_t *r;
        if (!json_is_object(v) || json_object_size(v) > MAX_CURRENCIES)
            BAD(v, "reconcile.currencies: a mapping of ISO 4217 code to {tolerance, "
                   "auto_adjust_max, fee_rate_bp, fee_fixed} (at most %d)",
                MAX_CURRENCIES);
        c->currencies = calloc(json_object_size(v) + 1, sizeof *c->currencies);
        c->contracts = calloc(json_object_size(v) + 1, sizeof *c->contracts);
        if (!c->currencies || !c->contracts)
            BAD(v, "out of memory");
        json_object_foreach(v, k, r)
        {
            struct pb_recon_currency_rule *cr = &c->currencies[n];
            const char *t;
            int64_t minor;
            if (strlen(k) != 3 || !pb_currency_valid(k))
                BAD(r, "reconcile.currencies: \"%s\" is not an ISO 4217 currency code", k);
            if (!json_is_object(r))
                BAD(r, "reconcile.currencies.%s: a mapping {tolerance, auto_adjust_max, "
                       "fee_rate_bp, fee_fixed}",
                    k);
            memcpy(cr->currency, k, 4);
            if ((t = json_string_value(json_object_get(r, "tolerance")))) {
                if (pb_money_parse_decimal(t, k, &minor, NULL) || minor < 0)
                    BAD(json_object_get(r, "tolerance"),
                        "reconcile.currencies.%s.tolerance: a decimal amount such as \"0.01\"", k);
                cr->tolerance_minor = minor;
            } else if (json_object_get(r, "tolerance"))
                BAD(json_object_get(r, "tolerance"),
                    "reconcile.currencies.%s.tolerance: a quoted decimal such as \"0.01\"", k);
            if ((t = json_string_value(json_object_get(r, "auto_adjust_max")))) {
                if (pb_money_parse_decimal(t, k, &minor, NULL) || minor < 0)
                    BAD(json_object_get(r, "auto_adjust_max"),
                        "reconcile.currencies.%s.auto_adjust_max: a decimal amount such as "
                        "\"1.00\"",
                        k);
                cr->auto_adjust_max_minor = minor;
            } else if (json_object_get(r, "auto_adjust_max"))
                BAD(json_object_get(r, "auto_adjust_max"),
                    "reconcile.currencies.%s.auto_adjust_max: a quoted decimal such as \"1.00\"", k);
            if (json_object_get(r, "fee_rate_bp") || json_object_get(r, "fee_fixed")) {
                struct pb_recon_contract *ct = &c->contracts[c->match.contract_count++];
                json_t *bp = json_object_get(r, "fee_rate_bp");
                ct->gateway = gateway;
                memcpy(ct->currency, k, 4);
                ct->settlement_lag_days = -1;
                if (bp && (!json_is_integer(bp) || json_integer_value(bp) < 0 ||
                           json_integer_value(bp) > 10000))
                    BAD(bp, "reconcile.currencies.%s.fee_rate_bp: basis points 0-10000 (150 = "
                            "1.50%%)",
                        k);
                ct->fee_basis_points = bp ? (uint32_t)json_integer_value(bp) : 0;
                if ((t = json_string_value(json_object_get(r, "fee_fixed")))) {
                    if (pb_money_parse_decimal(t, k, &minor, NULL) || minor < 0)
                        BAD(json_object_get(r, "fee_fixed"),
                            "reconcile.currencies.%s.fee_fixed: a quoted decimal such as \"0.20\"",
                            k);
                    ct->fee_fixed_minor = minor;
                } else if (json_object_get(r, "fee_fixed"))
                    BAD(json_object_get(r, "fee_fixed"),
                        "reconcile.currencies.%s.fee_fixed: a quoted decimal such as \"0.20\"", k);
            }
            {
                const char *kk;
                json_t *vv;
                json_object_foreach(r, kk, vv) if (strcmp(kk, "tolerance") &&
                                                   strcmp(kk, "auto_adjust_max") &&
                                                   strcmp(kk, "fee_rate_bp") &&
                                                   strcmp(kk, "fee_fixed"))
                    BAD(vv,
                        "reconcile.currencies.%s: unknown key \"%s\" (tolerance, "
                        "auto_adjust_max, fee_rate_bp, fee_fixed)",
                        k, kk);
            }
            n++;
        }
        c->match.currencies = c->currencies;
        c->match.currency_count = n;
        c->match.contracts = c->contracts;
    }
    if ((v = json_object_get(obj, "fx_rates"))) {
        size_t n = 0;
        json_t *r;
        if (!json_is_object(v) || json_object_size(v) > MAX_RATES)
            BAD(v, "reconcile.fx_rates: a mapping such as {\"EUR/GBP\": \"0.86\"} (1 EUR = 0.86 "
                   "GBP)");
        c->rates = calloc(json_object_size(v) + 1, sizeof *c->rates);
        c->rate_text = calloc(json_object_size(v) + 1, sizeof *c->rate_text);
        if (!c->rates || !c->rate_text)
            BAD(v, "out of memory");
        json_object_foreach(v, k, r)
        {
            const char *t = json_string_value(r);
            if (strlen(k) != 7 || k[3] != '/')
                BAD(r, "reconcile.fx_rates: \"%s\" must be FROM/TO, e.g. \"EUR/GBP\"", k);
            if (!t || strlen(t) >= sizeof c->rate_text[0])
                BAD(r, "reconcile.fx_rates.%s: a quoted decimal rate such as \"0.86\"", k);
            memcpy(c->rates[n].from, k, 3);
            memcpy(c->rates[n].to, k + 4, 3);
            memcpy(c->rate_text[n], t, strlen(t) + 1);
            c->rates[n].rate = c->rate_text[n];
            n++;
        }
        c->match.rates = c->rates;
        c->match.rate_count = n;
    }
    /* let the matcher check codes, rates and contracts now, not at 06:00 */
    {
        struct pb_recon_run *probe = NULL;
        struct pb_err e = {0};
        if (pb_recon_create(&c->match, &probe, &e))
            BAD(obj, "reconcile: %s", e.msg);
        pb_recon_destroy(probe);
    }
    *out = c;
    *bad = NULL;
    return PB_OK;
fail:
    pb_reconcile_conf_free(c);
    return rc;
}

void pb_reconcile_conf_free(struct pb_reconcile_conf *c)
{
    if (!c)
        return;
    free(c->dir);
    free(c->url);
    free(c->known_hosts);
    free(c->suffix);
    json_decref(c->columns);
    free(c->report_dir);
    free(c->currencies);
    free(c->contracts);
    free(c->rates);
    free(c->rate_text);
    free(c);
}
