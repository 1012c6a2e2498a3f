/*
 * bench/recon/bench_params.h: the contract terms, FX rates and tolerances that
 * the generator (gen.c) plants and the bench driver (recon_bench.c) configures,
 * in one place so that the two cannot drift apart.
 *
 * What it owns: constant tables only. The numbers are plausible card-processing
 * terms, not any real merchant's: a UK merchant on Opayo (GBP, EUR) and a US
 * one on PayTrace (USD, JPY), settling two days after the transaction, with an
 * ERP kept in each settlement currency except for a few EUR and USD payments
 * posted in GBP (the FX rule's work).
 */
#ifndef PB_BENCH_RECON_PARAMS_H
#define PB_BENCH_RECON_PARAMS_H

#include <stdint.h>

struct rb_currency {
    const char *code;
    const char *gateway;    /* which gateway settles it */
    const char *batch_tag;  /* batch id prefix */
    uint32_t share_bp;      /* share of the orders, in basis points */
    uint32_t fee_bp;        /* contract: percentage in basis points */
    int64_t fee_fixed;      /* contract: fixed fee per sale, minor units */
    int64_t chargeback_fee; /* a chargeback's fee line, minor units (positive) */
    int64_t min_amount;     /* sale amounts are drawn from [min, max) minor units */
    int64_t max_amount;
    int64_t auto_adjust; /* auto-adjust threshold, minor units */
};

static const struct rb_currency rb_currencies[] = {
    {"GBP", "opayo", "OPY", 5500, 120, 20, 1500, 100, 200000, 100},
    {"EUR", "opayo", "OPY", 1500, 140, 25, 1500, 100, 200000, 100},
    {"USD", "paytrace", "PTR", 2500, 290, 30, 1500, 100, 200000, 100},
    {"JPY", "paytrace", "PTR", 500, 360, 0, 2000, 100, 300000, 100},
};
#define RB_CURRENCY_COUNT 4

#define RB_SETTLEMENT_LAG 2 /* value date = settled date + 2 (contract) */
#define RB_DATE_WINDOW 3    /* rule 3 */
#define RB_DAYS 28          /* the period: 2026-03-01 .. 2026-03-28 */
#define RB_START_Y 2026
#define RB_START_M 3
#define RB_START_D 1
#define RB_BATCH_MAX 5000 /* lines per batch before a new one starts */

/* FX: the ERP books some EUR and USD payments in GBP at these rates. */
struct rb_rate {
    const char *from, *to, *rate;
};
static const struct rb_rate rb_rates[] = {
    {"EUR", "GBP", "0.8571"},
    {"USD", "GBP", "0.7912"},
};
#define RB_RATE_COUNT 2

#endif
