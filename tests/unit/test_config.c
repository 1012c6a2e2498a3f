/*
 * test_config.c: paybridge.yaml loading — every problem reported with its
 * file:line and a message that says how to fix it, sealed and env secrets,
 * and the cross-checks between flows and connections.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/crypto.h"
#include "engine/config.h"
#include "pbtest.h"

static char dir[128];

static const char *write_cfg(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    pbt_write_file(path, text);
    return path;
}
static int has_diag(const struct pb_diags *d, int line, const char *needle)
{
    for (size_t i = 0; i < d->n; i++)
        if ((line == 0 || d->v[i].line == line) && strstr(d->v[i].msg, needle))
            return 1;
    return 0;
}

static void dump(const struct pb_diags *d)
{
    pb_diags_print(d, stderr);
}

static int setup(void **st)
{
    snprintf(dir, sizeof(dir), "/tmp/pb-test-config-XXXXXX");
    pbt_tempdir(dir);
    return 0;
}

static int teardown(void **st)
{
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd);
}

static void test_every_error_with_line(void **st)
{
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    const char *p = write_cfg("bad.yaml",
                              "server:\n"                      /* 1 */
                              "  listen: \"127.0.0.1\"\n"      /* 2 */
                              "  thread: 4\n"                  /* 3 */
                              "workers: 0\n"                   /* 4 */
                              "connections:\n"                 /* 5 */
                              "  shop:\n"                      /* 6 */
                              "    connector: stripe\n"        /* 7 */
                              "  xero-a:\n"                    /* 8 */
                              "    connector: xero\n"          /* 9 */
                              "    secrets:\n"                 /* 10 */
                              "      client_id: \"env:PB_TEST_UNSET_VAR\"\n" /* 11 */
                              "    retry: {base_ms: -1}\n"     /* 12 */
                              "flows: flows/x.yaml\n");        /* 13 */
    unsetenv("PB_TEST_UNSET_VAR");
    assert_int_equal(pb_config_load(p, 0, &cfg, &d), PB_ERR_CONFIG);
    assert_null(cfg);
    dump(&d);
    assert_true(has_diag(&d, 2, "HOST:PORT"));
    assert_true(has_diag(&d, 3, "unknown key \"thread\""));
    assert_true(has_diag(&d, 4, "workers"));
    assert_true(has_diag(&d, 7, "unknown connector \"stripe\""));
    assert_true(has_diag(&d, 11, "PB_TEST_UNSET_VAR is not set"));
    assert_true(has_diag(&d, 12, "base_ms"));
    assert_true(has_diag(&d, 13, "flows: must be a list"));
    for (size_t i = 0; i < d.n; i++)
        assert_string_equal(d.v[i].file, p);
    pb_diags_free(&d);
}

static void test_sealed_secret_and_flow_crosscheck(void **st)
{
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    unsigned char key[32];
    char hex[65], *sealed = NULL, text[4096];
    struct pb_err err = {0};
    const char *kp;
    memset(key, 7, sizeof(key));
    assert_int_equal(pb_hex_encode(key, 32, hex, sizeof(hex)), PB_OK);
    kp = write_cfg("secret.key", hex);
    (void)kp;
    assert_int_equal(pb_secret_seal(key, "s3cret", &sealed, &err), PB_OK);
    write_cfg("flow.yaml",
              "flow: f\nsource: shop\nevents: [payment.succeeded]\ntarget: nowhere\n"
              "steps:\n  - name: contact\n    command: contact.upsert\n"
              "    reference: '.customer.email'\n    document:\n      Name: '.customer.name'\n");
    snprintf(text, sizeof(text),
             "secrets:\n  key_file: secret.key\n"
             "connections:\n  shop:\n    connector: opayo\n    settings: {confirm: false}\n"
             "    secrets:\n      notify_secret: \"enc:%s\"\n"
             "flows: [flow.yaml]\n",
             sealed);
    free(sealed);
    char p[256];
    snprintf(p, sizeof(p), "%s", write_cfg("good.yaml", text));
    unsetenv("PAYBRIDGE_SECRET_KEY");
    assert_int_equal(pb_config_load(p, 1, &cfg, &d), PB_ERR_CONFIG);
    dump(&d);
    assert_true(has_diag(&d, 0, "target connection \"nowhere\" is not defined"));
    pb_diags_free(&d);
    memset(&d, 0, sizeof(d));

    /* fix the flow: now it loads, and the sealed secret was opened */
    write_cfg("flow.yaml",
              "flow: f\nsource: shop\nevents: [payment.succeeded]\ntarget: shop\n"
              "steps:\n  - name: contact\n    command: contact.upsert\n"
              "    reference: '.customer.email'\n    document:\n      Name: '.customer.name'\n");
    assert_int_equal(pb_config_load(p, 1, &cfg, &d), PB_ERR_CONFIG);
    dump(&d);
    assert_true(has_diag(&d, 0, "is not an ERP sink"));
    pb_diags_free(&d);
}

static void test_tampered_secret(void **st)
{
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    unsigned char key[32];
    char hex[65], *sealed = NULL, text[4096];
    struct pb_err err = {0};
    memset(key, 9, sizeof(key));
    pb_hex_encode(key, 32, hex, sizeof(hex));
    write_cfg("secret.key", hex);
    assert_int_equal(pb_secret_seal(key, "s3cret", &sealed, &err), PB_OK);
    sealed[10] = sealed[10] == 'A' ? 'B' : 'A';
    snprintf(text, sizeof(text),
             "secrets:\n  key_file: secret.key\n"
             "connections:\n  shop:\n    connector: opayo\n    settings: {confirm: false}\n"
             "    secrets:\n      notify_secret: \"enc:%s\"\n",
             sealed);
    free(sealed);
    const char *p = write_cfg("tampered.yaml", text);
    assert_int_equal(pb_config_load(p, 1, &cfg, &d), PB_ERR_CONFIG);
    dump(&d);
    assert_true(has_diag(&d, 8, "notify_secret"));
    pb_diags_free(&d);
}

/* The reconcile: block: each mistake named at its line, and the cross-checks
 * against the other connections (the ERP exists and can do what is asked). */
static void test_reconcile_block(void **st)
{
    struct pb_diags d = {0};
    struct pb_config *cfg = NULL;
    const char *p = write_cfg("recon.yaml",
                              "connections:\n"                                  /* 1 */
                              "  gw-a:\n"                                       /* 2 */
                              "    connector: opayo\n"                          /* 3 */
                              "    reconcile:\n"                                /* 4 */
                              "      erp: gw-b\n"                               /* 5 */
                              "      schedule: \"0 25 * * *\"\n"                /* 6 */
                              "      accounts: {clearing: \"1\", fees: \"2\", bank: \"3\", adjustments: \"4\"}\n" /* 7 */
                              "  gw-b:\n"                                       /* 8 */
                              "    connector: opayo\n"                          /* 9 */
                              "    reconcile:\n"                                /* 10 */
                              "      erp: nowhere\n"                            /* 11 */
                              "      post_journals: false\n"                    /* 12 */
                              "      ledger: paybridge\n"                       /* 13 */
                              "  gw-c:\n"                                       /* 14 */
                              "    connector: opayo\n"                          /* 15 */
                              "    reconcile:\n"                                /* 16 */
                              "      erp: gw-a\n"                               /* 17 */
                              "      source: dir\n"                             /* 18 */
                              "      dir: reports\n"                            /* 19 */
                              "      columns: {columns: {amount: Amount}}\n"    /* 20 */
                              "      currencies: {GBX: {tolerance: \"0.01\"}}\n" /* 21 */
                              "      accounts: {clearing: \"1\", fees: \"2\", bank: \"3\", adjustments: \"4\"}\n"
                              "  gw-d:\n"                                       /* 23 */
                              "    connector: opayo\n"                          /* 24 */
                              "    reconcile:\n"                                /* 25 */
                              "      erp: gw-a\n"                               /* 26 */
                              "      accounts: {clearing: \"1\", fees: \"2\"}\n" /* 27 */
                              "      tolerance: 1\n");                          /* 28 */
    assert_int_equal(pb_config_load(p, 0, &cfg, &d), PB_ERR_CONFIG);
    dump(&d);
    assert_true(has_diag(&d, 6, "hour: 25 is out of range 0-23"));
    assert_true(has_diag(&d, 0, "gw-b.reconcile.erp: no connection named \"nowhere\""));
    assert_true(has_diag(&d, 21, "\"GBX\" is not an ISO 4217 currency code"));
    assert_true(has_diag(&d, 28, "unknown key \"tolerance\""));
    pb_diags_free(&d);

    /* a clean block; an opayo ERP cannot read a ledger or post journals */
    memset(&d, 0, sizeof d);
    p = write_cfg("recon2.yaml", "connections:\n"
                                 "  gw-a:\n"
                                 "    connector: opayo\n"
                                 "    reconcile:\n"
                                 "      erp: gw-b\n"
                                 "      schedule: \"@daily\"\n"
                                 "      accounts: {clearing: \"1\", fees: \"2\", bank: \"3\", adjustments: \"4\"}\n"
                                 "      currencies: {GBP: {auto_adjust_max: \"1.00\", fee_rate_bp: 150, fee_fixed: \"0.20\"}}\n"
                                 "      fx_rates: {\"EUR/GBP\": \"0.86\"}\n"
                                 "  gw-b:\n"
                                 "    connector: opayo\n");
    assert_int_equal(pb_config_load(p, 0, &cfg, &d), PB_ERR_CONFIG);
    dump(&d);
    assert_true(has_diag(&d, 0, "cannot read its ledger back"));
    assert_true(has_diag(&d, 0, "cannot post journals"));
    assert_int_equal((int)d.n, 2);
    pb_diags_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_error_with_line),
        cmocka_unit_test(test_sealed_secret_and_flow_crosscheck),
        cmocka_unit_test(test_tampered_secret),
        cmocka_unit_test(test_reconcile_block),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
