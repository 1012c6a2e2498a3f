/*
 * tests/fuzz/fuzz_paytrace_json.c: libFuzzer target for the PayTrace export
 * parser (pb_settlement_parse_paytrace_json,
 * src/connectors/settlement/settlement_paytrace.c).
 *
 * The first byte chooses the options (default currency USD or JPY; unsettled
 * records kept or skipped), the rest is the export. Every input must return
 * without a crash, a leak or a sanitizer report. Build and run:
 * docs/settlement.md ("Fuzzing").
 */
#include <stddef.h>
#include <stdint.h>

#include "connectors/settlement/settlement_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pb_settlement_set *set;
    struct pb_settlement_paytrace_options opt = {0};
    struct pb_err err;
    size_t skipped;
    if (size < 1)
        return 0;
    opt.currency = data[0] & 1 ? "JPY" : "USD";
    opt.include_unsettled = (data[0] >> 1) & 1;
    set = pb_settlement_set_new();
    if (!set)
        return 0;
    pb_settlement_parse_paytrace_json(set, &opt, "fuzz", (const char *)data + 1, size - 1, &skipped,
                                      &err);
    pb_settlement_parse_paytrace_json(set, &opt, "again", (const char *)data + 1, size - 1,
                                      &skipped, &err);
    pb_settlement_set_free(set);
    return 0;
}
