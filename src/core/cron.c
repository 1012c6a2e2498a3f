/*
 * core/cron.c: cron expressions (see cron.h). The parser fills bit sets; the
 * next-run search walks forward by month, day, hour and minute, skipping
 * whole units that cannot match, so it is a few hundred steps at most.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cron.h"

struct field {
    const char *name;
    int lo, hi;
    const char *const *names; /* index 0 = lo */
};

static const char *const MONTHS[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                     "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", NULL};
static const char *const DAYS[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", NULL};

static const struct field FIELDS[5] = {
    {"minute", 0, 59, NULL},     {"hour", 0, 23, NULL},   {"day-of-month", 1, 31, NULL},
    {"month", 1, 12, MONTHS},    {"day-of-week", 0, 7, DAYS},
};

static int value(const struct field *f, const char **p, int *out)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s) && v < 1000)
            v = v * 10 + (*s++ - '0');
        *out = (int)v;
        *p = s;
        return 0;
    }
    if (f->names) {
        for (int i = 0; f->names[i]; i++)
            if (strncasecmp(s, f->names[i], 3) == 0) {
                *out = f->lo + i;
                *p = s + 3;
                return 0;
            }
    }
    return -1;
}

/* One field "a-b/n,c" into bits; `any` set when it is a bare "*". */
static enum pb_rc field_parse(const struct field *f, const char *text, size_t len, uint64_t *bits,
                              int *any, struct pb_err *err)
{
    char buf[128];
    char *save = NULL, *part;
    if (len >= sizeof buf)
        return pb_err_set(err, PB_ERR_INVALID, "%s: too long", f->name);
    memcpy(buf, text, len);
    buf[len] = '\0';
    *bits = 0;
    *any = strcmp(buf, "*") == 0;
    for (part = strtok_r(buf, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        const char *p = part;
        int a, b, step = 1;
        if (*p == '*') {
            a = f->lo;
            b = f->hi;
            p++;
        } else {
            if (value(f, &p, &a))
                return pb_err_set(err, PB_ERR_INVALID, "%s: \"%s\" is not a number%s", f->name,
                                  part, f->names ? " or a name" : "");
            b = a;
            if (*p == '-') {
                p++;
                if (value(f, &p, &b))
                    return pb_err_set(err, PB_ERR_INVALID, "%s: \"%s\" has a bad range end",
                                      f->name, part);
            }
        }
        if (*p == '/') {
            char *end;
            long s;
            p++;
            s = strtol(p, &end, 10);
            if (end == p || s < 1 || s > f->hi)
                return pb_err_set(err, PB_ERR_INVALID, "%s: \"%s\" has a bad step", f->name, part);
            step = (int)s;
            p = end;
            if (b == a && part[0] != '*')
                b = f->hi; /* "5/15" = from 5 to the end */
        }
        if (*p)
            return pb_err_set(err, PB_ERR_INVALID, "%s: unexpected \"%s\" in \"%s\"", f->name, p,
                              part);
        if (a < f->lo || a > f->hi || b < f->lo || b > f->hi)
            return pb_err_set(err, PB_ERR_INVALID, "%s: %d is out of range %d-%d", f->name,
                              a < f->lo || a > f->hi ? a : b, f->lo, f->hi);
        if (a > b)
            return pb_err_set(err, PB_ERR_INVALID, "%s: range %d-%d runs backwards", f->name, a,
                              b);
        for (int v = a; v <= b; v += step)
            *bits |= 1ull << v;
    }
    if (!*bits)
        return pb_err_set(err, PB_ERR_INVALID, "%s: empty", f->name);
    return PB_OK;
}

enum pb_rc pb_cron_parse(const char *expr, struct pb_cron *out, struct pb_err *err)
{
    static const struct {
        const char *name, *expr;
    } MACROS[] = {{"@hourly", "0 * * * *"},  {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
                  {"@weekly", "0 0 * * 0"},  {"@monthly", "0 0 1 * *"}, {"@yearly", "0 0 1 1 *"},
                  {"@annually", "0 0 1 1 *"}};
    const char *p;
    uint64_t bits[5];
    int any[5], n = 0;
    if (!expr)
        return pb_err_set(err, PB_ERR_INVALID, "empty cron expression");
    while (isspace((unsigned char)*expr))
        expr++;
    if (*expr == '@') {
        for (size_t i = 0; i < sizeof MACROS / sizeof MACROS[0]; i++)
            if (strcmp(expr, MACROS[i].name) == 0)
                return pb_cron_parse(MACROS[i].expr, out, err);
        return pb_err_set(err, PB_ERR_INVALID,
                          "unknown \"%s\" (use @hourly, @daily, @weekly, @monthly, @yearly or five "
                          "fields)",
                          expr);
    }
    for (p = expr; *p;) {
        const char *start;
        enum pb_rc rc;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        if (n == 5)
            return pb_err_set(err, PB_ERR_INVALID,
                              "\"%s\": more than five fields (minute hour day-of-month month "
                              "day-of-week)",
                              expr);
        start = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if ((rc = field_parse(&FIELDS[n], start, (size_t)(p - start), &bits[n], &any[n], err)))
            return rc;
        n++;
    }
    if (n != 5)
        return pb_err_set(err, PB_ERR_INVALID,
                          "\"%s\": %d field(s); a cron expression has five: minute hour "
                          "day-of-month month day-of-week, e.g. \"0 6 * * *\"",
                          expr, n);
    memset(out, 0, sizeof *out);
    out->minute = bits[0];
    out->hour = (uint32_t)bits[1];
    out->mday = (uint32_t)bits[2];
    out->month = (uint16_t)bits[3];
    out->wday = (uint8_t)((bits[4] | (bits[4] >> 7)) & 0x7f); /* 7 = Sunday = 0 */
    out->mday_any = (uint8_t)any[2];
    out->wday_any = (uint8_t)any[4];
    return PB_OK;
}

static int day_matches(const struct pb_cron *c, const struct tm *t)
{
    int dom = (c->mday >> t->tm_mday) & 1, dow = (c->wday >> t->tm_wday) & 1;
    if (c->mday_any && c->wday_any)
        return 1;
    if (c->mday_any)
        return dow;
    if (c->wday_any)
        return dom;
    return dom || dow;
}

time_t pb_cron_next(const struct pb_cron *c, time_t after)
{
    struct tm t;
    time_t cur = after - (after % 60) + 60, limit = after + 5LL * 366 * 86400;
    while (cur <= limit) {
        gmtime_r(&cur, &t);
        if (!((c->month >> (t.tm_mon + 1)) & 1)) {
            /* to the first minute of next month */
            t.tm_mon++;
            t.tm_mday = 1;
            t.tm_hour = t.tm_min = t.tm_sec = 0;
            cur = timegm(&t);
            continue;
        }
        if (!day_matches(c, &t)) {
            cur += 86400 - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec);
            continue;
        }
        if (!((c->hour >> t.tm_hour) & 1)) {
            cur += 3600 - (t.tm_min * 60 + t.tm_sec);
            continue;
        }
        if (!((c->minute >> t.tm_min) & 1)) {
            cur += 60;
            continue;
        }
        return cur;
    }
    return (time_t)-1;
}
