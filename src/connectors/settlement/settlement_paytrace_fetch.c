/*
 * connectors/settlement/settlement_paytrace_fetch.c: PayTrace settlement data
 * fetched through the paytrace connector's public export calls
 * (connectors/paytrace/paytrace.h) and read into a set
 * (pb_settlement_paytrace_fetch, settlement_fetch.h).
 *
 * The connector owns the HTTP side (OAuth token, the configurable
 * settled_export_path, classification, the trace); this file only builds the
 * date range, picks the export and hands the reply to the PayTrace parser.
 * The default currency of records without one is the connection's
 * settings.currency (the connector's own default, USD).
 *
 * PayTrace filters exports by calendar date in a time zone it does not
 * document (see the poller in paytrace_poll.c), so the request is widened by
 * a day on each side; batches and records outside [from, to] by their
 * settlement date (or, without one, their creation date) are left out of
 * the set. export/by_date_range filters on the creation date, so with it a
 * transaction created more than a day before the first settlement day asked
 * for is not seen (the settled export has no such limit).
 *
 * Owns nothing. Thread-safe as the connector is.
 */
#include <stdio.h>
#include <string.h>

#include "connectors/paytrace/paytrace.h"
#include "connectors/settlement/settlement_fetch.h"
#include "connectors/settlement/settlement_parse.h"

static void us_date(int32_t day, char *buf, size_t len)
{
    char iso[16];
    pb_settlement_date_format(day, iso, sizeof iso);
    snprintf(buf, len, "%.2s/%.2s/%.4s", iso + 5, iso + 8, iso);
}

/* The day of member `key` ("YYYY-MM-DD..."), or 0 when it has none. */
static int day_of(json_t *o, const char *key, int32_t *day)
{
    const char *at = json_string_value(json_object_get(o, key));
    return at && strlen(at) >= 10 &&
           pb_settlement_date_parse(at, 10, "%Y-%m-%d", day, NULL) == PB_OK;
}

/* Drop the batches (settled export) or records (by_date_range) of this
 * fetch that settled outside [from, to]: they are simply not returned (the
 * set keeps only what was asked for). A record's day is its settled_at, or
 * without one its created. Something undated is kept (the parser judges it). */
static json_t *in_range(json_t *reply, int32_t from, int32_t to)
{
    const char *key = json_is_array(json_object_get(reply, "batches")) ? "batches" : "transactions";
    json_t *items = json_object_get(reply, key), *kept, *copy;
    size_t i;
    json_t *b;
    if (!json_is_array(items))
        return json_incref(reply);
    kept = json_array();
    json_array_foreach(items, i, b)
    {
        int32_t day;
        if ((day_of(b, "settled_at", &day) || (key[0] == 't' && day_of(b, "created", &day))) &&
            (day < from || day > to))
            continue;
        json_array_append(kept, b);
    }
    copy = json_copy(reply);
    json_object_set_new(copy, key, kept);
    return copy;
}

enum pb_rc pb_settlement_paytrace_fetch(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        int settled, int32_t from_day, int32_t to_day,
                                        struct pb_settlement_set *set, struct pb_err *err)
{
    char start[16], end[16], source[96], from_iso[16], to_iso[16];
    struct pb_settlement_paytrace_options opt = {0};
    json_t *request, *reply = NULL, *filtered;
    enum pb_rc rc;

    if (!set || from_day > to_day)
        return pb_err_set(err, PB_ERR_INVALID, "paytrace settlement: no set, or from is after to");
    us_date(from_day - 1, start, sizeof start);
    us_date(to_day + 1, end, sizeof end);
    request = json_pack("{s:s,s:s}", "start_date", start, "end_date", end);
    if (!request)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = settled ? pb_paytrace_export_settled(c, ctx, request, &reply, err)
                 : pb_paytrace_export_by_date_range(c, ctx, request, &reply, err);
    json_decref(request);
    if (rc) {
        json_decref(reply);
        return rc;
    }
    pb_settlement_date_format(from_day, from_iso, sizeof from_iso);
    pb_settlement_date_format(to_day, to_iso, sizeof to_iso);
    snprintf(source, sizeof source, "paytrace %s %s..%s",
             settled ? "export_settled" : "export/by_date_range", from_iso, to_iso);
    opt.currency = pb_connection_setting(c, "currency", "USD");
    filtered = in_range(reply, from_day, to_day);
    rc = pb__settlement_paytrace_tree(set, &opt, source, filtered, NULL, err);
    json_decref(filtered);
    json_decref(reply);
    if (rc == PB_ERR_INVALID) /* a 2xx that is not an export */
        rc = pb_err_set(err, PB_ERR_TRANSIENT, "%s", err ? err->msg : "unreadable export");
    return rc;
}
