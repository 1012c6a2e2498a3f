/*
 * bench/recon/fuzz_recon.c: libFuzzer target for the reconciliation engine's
 * CSV loader and, on whatever the loader accepts, the whole matching run.
 *
 * It lives here until the owner of tests/fuzz lists it in that folder's
 * CMakeLists.txt (it follows the same pattern: built only with clang, not a
 * ctest). Meanwhile, by hand:
 *
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *       -Isrc bench/recon/fuzz_recon.c src/recon/[a-z]*.c src/core/money.c src/core/err.c \
 *       -lpthread -o /tmp/fuzz_recon
 *   /tmp/fuzz_recon -max_total_time=120 /tmp/recon-corpus
 *
 * Input: the first byte picks the configuration (threads, tolerances, FX
 * rates and contracts on or off); the rest is split at the first 0xFF byte
 * into a settlement file and a ledger file (without one, both sides get the
 * same bytes, each under its own header). Every input must come back without
 * a crash, a leak or a sanitizer report; matching must be deterministic (the
 * same input run with 1 and 2 threads gives the same digest).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "recon/recon.h"

static const char settlement_header[] =
    "record,gateway,batch_id,line_no,kind,gateway_ref,merchant_ref,amount,fee,net,currency,"
    "value_date,settled_date\n";
static const char ledger_header[] =
    "erp,record_id,kind,gateway_ref,reference,amount,currency,date\n";

static uint64_t run_once(const uint8_t *cfg_byte, const char *s, size_t sn, const char *l,
                         size_t ln, int threads)
{
    struct pb_recon_currency_rule cur[2] = {{"GBP", 3, 100}, {"JPY", 0, 50}};
    struct pb_recon_fx_rate rates[2] = {{"EUR", "GBP", "0.8571"}, {"GBP", "JPY", "190.5"}};
    struct pb_recon_contract contract = {"opayo", "GBP", 175, 20, 2};
    struct pb_recon_config cfg;
    struct pb_recon_run *run = NULL;
    struct pb_err err;
    uint64_t digest = 0;
    char text[512];
    size_t n;

    pb_recon_config_init(&cfg);
    cfg.threads = threads;
    cfg.max_problems = 8;
    cfg.max_lines = 4096;
    cfg.max_records = 4096;
    cfg.date_window_days = *cfg_byte & 3;
    if (*cfg_byte & 4) {
        cfg.currencies = cur;
        cfg.currency_count = 2;
    }
    if (*cfg_byte & 8) {
        cfg.rates = rates;
        cfg.rate_count = 2;
    }
    if (*cfg_byte & 16) {
        cfg.contracts = &contract;
        cfg.contract_count = 1;
    }
    if (pb_recon_create(&cfg, &run, &err))
        abort();
    pb_recon_load_settlement_csv(run, s, sn, &err);
    pb_recon_load_ledger_csv(run, l, ln, &err);
    if (pb_recon_match(run, &err) == PB_OK) {
        digest = pb_recon_digest(run);
        pb_recon_matches(run, &n);
        for (size_t i = 0; i < n && i < 4; i++)
            pb_recon_explain_match(run, i, text, sizeof(text));
        pb_recon_breaks(run, &n);
        for (size_t i = 0; i < n && i < 4; i++)
            pb_recon_explain_break(run, i, text, sizeof(text));
    }
    pb_recon_destroy(run);
    return digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *cut;
    char *s, *l;
    size_t sn, ln, hs = sizeof(settlement_header) - 1, hl = sizeof(ledger_header) - 1;
    if (size < 1)
        return 0;
    cut = memchr(data + 1, 0xFF, size - 1);
    sn = cut ? (size_t)(cut - (data + 1)) : size - 1;
    ln = cut ? size - 1 - sn - 1 : size - 1;
    s = malloc(hs + sn + 1);
    l = malloc(hl + ln + 1);
    if (!s || !l)
        abort();
    /* a header of our own unless the input starts with 'H' (then its own) */
    if (sn && data[1] == 'H') {
        memcpy(s, data + 2, sn - 1);
        sn -= 1;
    } else {
        memcpy(s, settlement_header, hs);
        memcpy(s + hs, data + 1, sn);
        sn += hs;
    }
    memcpy(l, ledger_header, hl);
    memcpy(l + hl, cut ? cut + 1 : data + 1, ln);
    ln += hl;
    if (run_once(data, s, sn, l, ln, 1) != run_once(data, s, sn, l, ln, 2))
        abort(); /* the output must not depend on the number of threads */
    free(s);
    free(l);
    return 0;
}
