/*
 * tests/fuzz/fuzz_csv.c: libFuzzer target for the CSV settlement parser
 * (pb_settlement_parse_csv, src/connectors/settlement/settlement_csv.c).
 *
 * The first byte picks one of four column maps (header names with a
 * kind_map, 1-based numbers without a header, decimal commas with
 * semicolons, tabs with as_is signs), the rest is the report. Every input
 * must return without a crash, a leak or a sanitizer report; a bad record
 * becomes a bad entry. The set is parsed into twice, so the duplicate-batch
 * path runs too. Build and run: docs/settlement.md ("Fuzzing").
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "connectors/settlement/settlement_parse.h"

static const char *const maps[] = {
    "{\"gateway\":\"acme\",\"columns\":{\"batch_id\":\"Batch\",\"gateway_ref\":\"Transaction ID\","
    "\"merchant_ref\":\"Order\",\"amount\":\"Amount\",\"fee\":\"Fee\",\"currency\":\"Currency\","
    "\"kind\":\"Type\",\"value_date\":\"Date\"},\"kind_map\":{\"SALE\":\"sale\",\"REFUND\":"
    "\"refund\"},\"date_format\":\"%Y-%m-%d\"}",
    "{\"header\":false,\"columns\":{\"batch_id\":1,\"gateway_ref\":2,\"amount\":3,\"currency\":4,"
    "\"kind\":5,\"settled_date\":6},\"settled_date_format\":\"%d/%m/%Y %H:%M:%S\"}",
    "{\"delimiter\":\";\",\"header\":false,\"columns\":{\"gateway_ref\":1,\"merchant_ref\":2,"
    "\"amount\":3,\"fee\":4,\"value_date\":5},\"currency\":\"EUR\",\"date_format\":\"%d.%m.%Y\","
    "\"decimal_separator\":\",\",\"thousands_separator\":\".\"}",
    "{\"delimiter\":\"\\t\",\"skip_lines\":1,\"signs\":\"as_is\",\"columns\":{\"gateway_ref\":"
    "\"id\",\"amount\":\"amt\",\"currency\":\"ccy\",\"kind\":\"k\"},\"currency\":\"JPY\"}",
};
static struct pb_settlement_csv_map *compiled[4];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pb_settlement_set *set;
    struct pb_err err;
    unsigned which;

    if (size < 1)
        return 0;
    which = data[0] % 4;
    if (!compiled[which]) {
        json_t *cfg = json_loads(maps[which], 0, NULL);
        if (pb_settlement_csv_map_new(cfg, &compiled[which], &err))
            abort(); /* the maps above are valid */
        json_decref(cfg);
    }
    set = pb_settlement_set_new();
    if (!set)
        return 0;
    pb_settlement_parse_csv(set, compiled[which], "fuzz.csv", (const char *)data + 1, size - 1,
                            &err);
    pb_settlement_parse_csv(set, compiled[which], "again.csv", (const char *)data + 1, size - 1,
                            &err);
    for (size_t i = 0; i < pb_settlement_line_count(set); i++)
        if (!pb_settlement_line_at(set, i)->gateway_ref)
            abort();
    pb_settlement_set_free(set);
    return 0;
}
