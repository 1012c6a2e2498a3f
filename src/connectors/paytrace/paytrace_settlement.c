/*
 * connectors/paytrace/paytrace_settlement.c: the paytrace connector's
 * `settlement` slot (connector.h, PB_CAP_SETTLEMENT), declared in
 * connectors/settlement/settlement_fetch.h as pb_settlement_paytrace_days.
 *
 * One setting picks the source:
 *   settings.settlement_source  "settled_export" (default): POST
 *                               settings.settled_export_path, batches with
 *                               their stated totals (sales, refunds, fees,
 *                               net), so a gateway's own arithmetic is
 *                               checked against its lines;
 *                               "by_date_range": POST settings.export_path,
 *                               the records that carry a batch_number,
 *                               batches summed from them (for accounts whose
 *                               settled-batch export is not enabled: the
 *                               path is unverified, WIRE-FORMATS.md).
 * The value is read at the moment of use, like the Opayo report settings, so
 * the connector's init only has to know the key (paytrace.c lists it).
 *
 * Owns nothing; thread-safe as the connector is. The HTTP side (token,
 * classification, trace) is the connector's; the reading is
 * settlement_paytrace.c's.
 */
#include <string.h>

#include "connectors/settlement/settlement_fetch.h"

enum pb_rc pb_settlement_paytrace_days(struct pb_connection *c, struct pb_call_ctx *ctx,
                                       int32_t from_day, int32_t to_day,
                                       struct pb_settlement_set *set, struct pb_err *err)
{
    json_t *v =
        c && json_is_object(c->settings) ? json_object_get(c->settings, "settlement_source") : NULL;
    const char *source = v ? json_string_value(v) : "settled_export";

    if (source && strcmp(source, "settled_export") == 0)
        return pb_settlement_paytrace_fetch(c, ctx, 1, from_day, to_day, set, err);
    if (source && strcmp(source, "by_date_range") == 0)
        return pb_settlement_paytrace_fetch(c, ctx, 0, from_day, to_day, set, err);
    return pb_err_set(err, PB_ERR_CONFIG,
                      "settings.settlement_source: must be \"settled_export\" (the settled-batch "
                      "export, the default) or \"by_date_range\" (export/by_date_range)");
}
