/*
 * reconcile/print.c: a stored run (pb_recon_db_run) as text for a person: the
 * counts, the breaks with their suggested action, the journals, the problems
 * of the input. Read-only.
 */
#include <stdio.h>
#include <string.h>

#include "core/money.h"
#include "reconcile/reconcile.h"

static long long iv(const json_t *o, const char *k) { return (long long)json_integer_value(json_object_get(o, k)); }
static const char *sv(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

void pb_reconcile_print(const json_t *run, FILE *out)
{
    const json_t *d = json_object_get(run, "detail"), *c = json_object_get(d, "counts"), *v;
    const char *k;
    size_t i, shown = 0;
    fprintf(out, "run %lld: %s %s (revision %lld, %s, by %s)\n", iv(run, "id"), sv(run, "connection"),
            sv(run, "date"), iv(run, "revision"), sv(run, "status"), sv(run, "trigger"));
    if (json_is_string(json_object_get(run, "error")))
        fprintf(out, "error: %s\n", sv(run, "error"));
    if (!json_is_object(d))
        return;
    fprintf(out, "settlement: %lld batch(es), %lld line(s) from %s; ledger: %lld record(s) of %s\n",
            iv(c, "batches"), iv(c, "lines"), sv(json_object_get(d, "inputs"), "source"),
            iv(c, "records"), sv(d, "erp"));
    fprintf(out, "matches: %lld (%lld line(s), %lld record(s))\n", iv(c, "matches"),
            iv(c, "lines_matched"), iv(c, "records_matched"));
    json_object_foreach((json_t *)json_object_get(c, "matches_by_rule"), k, v)
        fprintf(out, "  rule %-12s %lld\n", k, (long long)json_integer_value(v));
    fprintf(out, "breaks: %lld (%lld auto-adjustable)\n", iv(c, "breaks"), iv(c, "auto_adjustable"));
    json_object_foreach((json_t *)json_object_get(c, "breaks_by_class"), k, v)
        fprintf(out, "  %-20s %lld\n", k, (long long)json_integer_value(v));
    if (iv(c, "pending"))
        fprintf(out, "pending: %lld posted record(s) not settled yet, within the lag\n", iv(c, "pending"));
    json_array_foreach(json_object_get(d, "breaks"), i, v)
    {
        if (shown++ == 50) {
            fprintf(out, "  ... and %zu more in the report\n", json_array_size(json_object_get(d, "breaks")) - 50);
            break;
        }
        fprintf(out, "  - [%s] %s -> %s\n", sv(v, "class"), sv(v, "explanation"), sv(v, "action"));
    }
    fprintf(out, "journals:\n");
    json_array_foreach(json_object_get(run, "journals"), i, v)
    {
        char amount[PB_MONEY_DECIMAL_MAX] = "?";
        pb_money_format_decimal(iv(v, "amount_minor"), sv(v, "currency"), amount, sizeof amount, NULL);
        fprintf(out, "  %-32s %-10s %-8s %12s %s %s%s%s\n", sv(v, "reference"), sv(v, "kind"),
                sv(v, "status"), amount, sv(v, "currency"), sv(v, "erp_id"),
                json_is_string(json_object_get(v, "error")) ? " error: " : "", sv(v, "error"));
    }
    json_array_foreach(json_object_get(d, "journals"), i, v)
        if (strcmp(sv(v, "outcome"), "held") == 0)
            fprintf(out, "  %-32s %-10s held: %s\n", sv(v, "reference"), sv(v, "kind"), sv(v, "error"));
    if (json_array_size(json_object_get(d, "problems"))) {
        fprintf(out, "problems in the input: %zu\n", json_array_size(json_object_get(d, "problems")));
        json_array_foreach(json_object_get(d, "problems"), i, v)
            fprintf(out, "  %s %s line %lld: %s\n", sv(v, "side"), sv(v, "source"), iv(v, "line"),
                    sv(v, "reason"));
    }
    if (json_is_object(json_object_get(d, "reports")))
        fprintf(out, "reports: %s %s\n", sv(json_object_get(d, "reports"), "json"),
                sv(json_object_get(d, "reports"), "csv"));
}
