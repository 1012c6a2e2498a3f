/*
 * core/diag.c: the diagnostics list (see diag.h for the design).
 *
 * Owns the array of entries of each list. The array grows by doubling up to
 * PB_DIAGS_MAX entries; allocation failure is not an error for the caller
 * (the problem is counted as dropped), because a checker that runs out of
 * memory while reporting should still report that something was wrong.
 */
#include "core/diag.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void pb_diags_add(struct pb_diags *d, const char *file, int line, const char *fmt, ...)
{
    struct pb_diag *e;
    va_list ap;
    size_t flen;

    if (!d)
        return;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        struct pb_diag *v;
        if (cap > PB_DIAGS_MAX)
            cap = PB_DIAGS_MAX;
        if (cap <= d->n || !(v = realloc(d->v, cap * sizeof(*v)))) {
            d->dropped++;
            return;
        }
        d->v = v;
        d->cap = cap;
    }
    e = &d->v[d->n++];
    e->line = line > 0 ? line : 0;
    e->file[0] = '\0';
    if (file) {
        /* keep the tail of a long path: "...flows/opayo-xero.yaml" */
        flen = strlen(file);
        if (flen >= sizeof(e->file)) {
            memcpy(e->file, "...", 3);
            memcpy(e->file + 3, file + flen - (sizeof(e->file) - 4), sizeof(e->file) - 4);
            e->file[sizeof(e->file) - 1] = '\0';
        } else {
            memcpy(e->file, file, flen + 1);
        }
    }
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

size_t pb_diags_count(const struct pb_diags *d)
{
    return d ? d->n + d->dropped : 0;
}

static void format_one(const struct pb_diag *e, char *buf, size_t len)
{
    if (e->file[0] && e->line > 0)
        snprintf(buf, len, "%s:%d: %s", e->file, e->line, e->msg);
    else if (e->file[0])
        snprintf(buf, len, "%s: %s", e->file, e->msg);
    else
        snprintf(buf, len, "%s", e->msg);
}

void pb_diags_print(const struct pb_diags *d, FILE *out)
{
    char line[sizeof(d->v->file) + sizeof(d->v->msg) + 32];
    if (!d || !out)
        return;
    for (size_t i = 0; i < d->n; i++) {
        format_one(&d->v[i], line, sizeof(line));
        fprintf(out, "%s\n", line);
    }
    if (d->dropped)
        fprintf(out, "... and %zu more problem%s\n", d->dropped, d->dropped == 1 ? "" : "s");
}

enum pb_rc pb_diags_to_err(const struct pb_diags *d, enum pb_rc rc, struct pb_err *err)
{
    char first[sizeof(d->v->file) + sizeof(d->v->msg) + 32];
    size_t more;
    if (!d || pb_diags_count(d) == 0)
        return PB_OK;
    if (d->n == 0)
        return pb_err_set(err, rc, "%zu problems (not kept: out of memory)", d->dropped);
    format_one(&d->v[0], first, sizeof(first));
    more = pb_diags_count(d) - 1;
    if (more)
        return pb_err_set(err, rc, "%s (and %zu more problem%s)", first, more,
                          more == 1 ? "" : "s");
    return pb_err_set(err, rc, "%s", first);
}

void pb_diags_free(struct pb_diags *d)
{
    if (!d)
        return;
    free(d->v);
    d->v = NULL;
    d->n = d->cap = d->dropped = 0;
}
