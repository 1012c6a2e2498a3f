/*
 * tests/fuzz/fuzz_opayo_xml.c: libFuzzer target for the Opayo Reporting &
 * Admin API reply parser (pb_settlement_parse_opayo_xml,
 * src/connectors/settlement/settlement_opayo.c).
 *
 * The input is one reply; it is parsed into a set that already holds the
 * headers of a batch list (so the fill-a-header path runs), then once more
 * as a continued load. Every input must return without a crash, a leak or a
 * sanitizer report. Build and run: docs/settlement.md ("Fuzzing").
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "connectors/settlement/settlement_parse.h"

static const char list[] = "<vspaccess><errorcode>0000</errorcode><batches>"
                           "<batch><batchid>100001</batchid><currency>GBP</currency>"
                           "<transactioncount>2</transactioncount><grossamount>1.00</grossamount>"
                           "<feeamount>0.10</feeamount><netamount>0.90</netamount></batch>"
                           "</batches></vspaccess>";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pb_settlement_set *set = pb_settlement_set_new();
    struct pb_settlement_opayo_reply reply;
    struct pb_err err;
    if (!set)
        return 0;
    pb_settlement_parse_opayo_xml(set, "list", list, strlen(list), NULL, &err);
    pb_settlement_parse_opayo_xml(set, "fuzz", (const char *)data, size, &reply, &err);
    pb_settlement_continue(set);
    pb_settlement_parse_opayo_xml(set, "fuzz page 2", (const char *)data, size, &reply, &err);
    pb_settlement_set_free(set);
    return 0;
}
