/*
 * connectors/paytrace/paytrace_poll.c: the poller, the safety net under the
 * webhook. It reads export/by_date_range from a cursor and turns every
 * record into the same canonical event the webhook would have produced, with
 * the same event_id, so the inbox de-duplicates whatever both paths saw and
 * keeps whatever only the poller saw (a webhook that never arrived).
 *
 * THE CURSOR is text the engine stores and hands back:
 *   "2026-11-21T19:14:10Z"              the time up to which everything was seen
 *   "2026-11-21T19:14:10Z/123456789"    ... and, within that second, every
 *                                       event up to this transaction id (only
 *                                       written while more pages follow)
 * NULL or "" starts 24 hours back.
 *
 * ONE POLL
 *   1. since = the cursor's time; from = since - settings.poll_overlap_s.
 *   2. POST export_path {"start_date": MM/DD/YYYY of (from - 14 h),
 *                        "end_date":   MM/DD/YYYY of (now + 14 h)}.
 *      PayTrace filters by calendar date, and in which time zone is not
 *      documented (the account's, probably US). The 14 hours of slack on
 *      both ends cover every zone from UTC-12 to UTC+14, so no zone can hide
 *      a record; the exact filter on `created` happens here, in UTC.
 *   3. Every record is scanned for card numbers (refused, naming the
 *      transaction) and read strictly (paytrace_record.c). A record of a type
 *      paybridge does not post (AUTHORIZATION, CAPTURE, ...) is skipped.
 *   4. A record stands for its event at `created` and, when it is an
 *      approved voided record, for the void's event at `voided_at`.
 *      Events before `from` were seen by an earlier poll and are dropped.
 *      Events after the cursor are NEW; events in [from, cursor] are
 *      RE-READS, sent again because a transaction can appear in the export
 *      after a poll already passed its time (the overlap exists for them;
 *      the inbox drops the ones it has).
 *   5. New events go out first, oldest first, ordered by (time, transaction
 *      id, void last). If they do not all fit in `out`, the rest wait for
 *      the next page: *more = 1 and the cursor names the last one sent, id
 *      included, so a second with more events than a page still advances.
 *      Re-reads fill the room that is left.
 *   6. next_cursor = the newest event sent, or now - poll_overlap_s if that
 *      is later. The second term keeps the re-read window bounded over a
 *      quiet night; it relies on the same assumption as the overlap itself
 *      (a transaction appears in the export within poll_overlap_s).
 *
 * Limits. Re-reads beyond the room left in one page are not sent: a
 * transaction that shows up late while more than PB_INBOUND_MAX_EVENTS others
 * share its overlap window can be missed. New events are never dropped.
 *
 * Threading: the immutable state, the caller's HTTP client; no locks here.
 *
 * Rejected designs.
 *   - A cursor on transaction_id alone: PayTrace's export filters by date
 *     only, so the id cannot narrow the request, and ids of declined and
 *     refunded transactions interleave with sales anyway.
 *   - Remembering seen ids in the connector: the inbox already does, durably;
 *     a second memory would only disagree with it after a restart.
 *   - Failing the poll on a record of an unknown transaction_type: one
 *     authorisation in the account would stop every later transaction from
 *     being found. Unknown types are skipped; bad SALE/REFUND records fail
 *     the poll loudly instead (they are money).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pan.h"
#include "paytrace_internal.h"

#define DATE_SLACK_S (14L * 3600L) /* any time zone's calendar date */
#define FIRST_POLL_BACK_S 86400L   /* an empty cursor starts this far back */
#define CURSOR_MAX (32 + PAYTRACE_ID_MAX + sizeof PAYTRACE_VOID_SUFFIX)

struct item {
    time_t t;       /* when the event happened */
    const char *id; /* transaction id (borrowed from the record) */
    int is_void;    /* 0: the record's own event; 1: its void */
    size_t rec;     /* index into the records */
    int fresh;      /* after the cursor */
};

struct position {
    time_t t;
    char id[PAYTRACE_ID_MAX + 1]; /* "" = the whole second */
    int is_void;
};

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* Transaction ids in numeric order when both are numbers, else bytewise. */
static int id_cmp(const char *a, const char *b)
{
    if (all_digits(a) && all_digits(b)) {
        size_t la, lb;
        while (*a == '0' && a[1])
            a++;
        while (*b == '0' && b[1])
            b++;
        la = strlen(a);
        lb = strlen(b);
        if (la != lb)
            return la < lb ? -1 : 1;
    }
    return strcmp(a, b);
}

/* Compare an event with a position. An empty position id means "the end of
 * that second". */
static int cmp_position(time_t t, const char *id, int is_void, const struct position *p)
{
    int c;
    if (t != p->t)
        return t < p->t ? -1 : 1;
    if (!p->id[0])
        return -1;
    c = id_cmp(id, p->id);
    if (c)
        return c;
    return is_void - p->is_void;
}

static int item_order(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    int c;
    if (x->fresh != y->fresh)
        return x->fresh ? -1 : 1; /* new ones first */
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    c = id_cmp(x->id, y->id);
    if (c)
        return c;
    return x->is_void - y->is_void;
}

static enum pb_rc parse_cursor(const char *cursor, time_t now, struct position *p,
                               struct pb_err *err)
{
    char when[32];
    const char *slash;
    size_t n;

    memset(p, 0, sizeof *p);
    if (!cursor || !cursor[0]) {
        p->t = now - FIRST_POLL_BACK_S;
        return PB_OK;
    }
    slash = strchr(cursor, '/');
    n = slash ? (size_t)(slash - cursor) : strlen(cursor);
    if (n >= sizeof when)
        goto bad;
    memcpy(when, cursor, n);
    when[n] = '\0';
    if (pb__paytrace_parse_instant(when, &p->t))
        goto bad;
    if (slash) {
        const char *id = slash + 1, *colon = strchr(id, ':');
        size_t idn = colon ? (size_t)(colon - id) : strlen(id);
        if (idn == 0 || idn > PAYTRACE_ID_MAX)
            goto bad;
        if (colon && strcmp(colon, PAYTRACE_VOID_SUFFIX) != 0)
            goto bad;
        memcpy(p->id, id, idn);
        p->id[idn] = '\0';
        p->is_void = colon != NULL;
    }
    return PB_OK;
bad:
    return pb_err_set(err, PB_ERR_INVALID,
                      "cursor \"%.80s\" is not a PayTrace cursor (expected a UTC time such as "
                      "\"2026-11-21T19:14:10Z\", optionally followed by \"/<transaction_id>\")",
                      cursor);
}

static void us_date(time_t t, char out[16])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 16, "%m/%d/%Y", &tm);
}

static enum pb_rc write_cursor(char *buf, size_t len, time_t t, const char *id, int is_void,
                               struct pb_err *err)
{
    char when[32];
    int n;
    pb__paytrace_format_instant(t, when);
    if (id)
        n = snprintf(buf, len, "%s/%s%s", when, id, is_void ? PAYTRACE_VOID_SUFFIX : "");
    else
        n = snprintf(buf, len, "%s", when);
    if (n < 0 || (size_t)n >= len)
        return pb_err_set(err, PB_ERR_TOOBIG, "next_cursor needs %d bytes, %zu given", n + 1, len);
    return PB_OK;
}

/* 1 when the record is of a type the poller posts. */
static int postable(json_t *rec)
{
    const char *type = json_string_value(json_object_get(rec, "transaction_type"));
    return type && (strcmp(type, "SALE") == 0 || strcmp(type, "REFUND") == 0);
}

static enum pb_rc pan_check(json_t *rec, size_t index, struct pb_err *err)
{
    char *text = json_dumps(rec, JSON_COMPACT);
    size_t at = 0, found;
    json_t *id = json_object_get(rec, "transaction_id");
    char idtext[PAYTRACE_ID_MAX + 1] = "?";

    if (!text)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    found = pb_pan_scan_payload(text, strlen(text), &at);
    free(text);
    if (!found)
        return PB_OK;
    if (json_is_integer(id))
        snprintf(idtext, sizeof idtext, "%lld", (long long)json_integer_value(id));
    else if (json_is_string(id) && json_string_length(id) <= PAYTRACE_ID_MAX &&
             pb_pan_scan(json_string_value(id), json_string_length(id), NULL) == 0)
        snprintf(idtext, sizeof idtext, "%s", json_string_value(id));
    return pb_err_set(err, PB_ERR_INVALID,
                      "export record transactions.%zu (transaction %s) contains what looks like a "
                      "card number; paybridge never accepts card numbers",
                      index, idtext);
}

enum pb_rc pb__paytrace_poll(struct pb_connection *c, struct pb_call_ctx *ctx, const char *cursor,
                             struct pb_event_list *out, char *next_cursor, size_t next_len,
                             int *more, struct pb_err *err)
{
    struct paytrace_state *st = pb__paytrace_state(c);
    time_t now, from, newest;
    struct position pos;
    json_t *request = NULL, *reply = NULL, *list;
    struct paytrace_record *recs = NULL;
    struct item *items = NULL;
    size_t n_recs = 0, n_items = 0, room, sent = 0, i;
    char start[16], end[16], prefix[48];
    const struct item *last_new = NULL;
    int truncated = 0;
    enum pb_rc rc;

    if (more)
        *more = 0;
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "paytrace connection used before init");
    if (!next_cursor || next_len == 0)
        return pb_err_set(err, PB_ERR_INVALID, "no room for next_cursor");
    next_cursor[0] = '\0';
    now = ctx->now ? ctx->now : time(NULL);
    if ((rc = parse_cursor(cursor, now, &pos, err)))
        return rc;
    from = pos.t - st->overlap_s;
    us_date(from - DATE_SLACK_S, start);
    us_date(now + DATE_SLACK_S, end);
    request = json_pack("{s:s,s:s}", "start_date", start, "end_date", end);
    if (!request)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = pb__paytrace_post(c, ctx, st->export_path, "export/by_date_range", request, &reply, err);
    json_decref(request);
    if (rc)
        goto out;

    list = json_object_get(reply, "transactions");
    if (list && !json_is_null(list) && !json_is_array(list)) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "PayTrace export/by_date_range: \"transactions\" is not an array");
        goto out;
    }
    n_recs = json_array_size(list);
    recs = calloc(n_recs ? n_recs : 1, sizeof *recs);
    items = calloc(n_recs ? 2 * n_recs : 1, sizeof *items);
    if (!recs || !items) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (i = 0; i < n_recs; i++) {
        json_t *rec = json_array_get(list, i);
        struct paytrace_record *r = &recs[i];
        if (!json_is_object(rec)) {
            rc = pb_err_set(err, PB_ERR_INVALID,
                            "PayTrace export/by_date_range: transactions.%zu is not an object", i);
            goto out;
        }
        if ((rc = pan_check(rec, i, err)))
            goto out;
        if (!postable(rec))
            continue;
        snprintf(prefix, sizeof prefix, "transactions.%zu", i);
        if ((rc = pb__paytrace_record_read(rec, prefix, st->currency, r, err))) {
            pb_err_prefix(err, "PayTrace export record %zu (transaction %.64s)", i,
                          r->transaction_id[0] ? r->transaction_id : "?");
            goto out;
        }
        if (r->created >= from)
            items[n_items++] = (struct item){r->created, r->transaction_id, 0, i, 0};
        if (r->voided && r->approved && r->voided_at >= from)
            items[n_items++] = (struct item){r->voided_at, r->transaction_id, 1, i, 0};
    }
    for (i = 0; i < n_items; i++)
        items[i].fresh = cmp_position(items[i].t, items[i].id, items[i].is_void, &pos) > 0;
    qsort(items, n_items, sizeof *items, item_order);

    room = out->n < PB_INBOUND_MAX_EVENTS ? PB_INBOUND_MAX_EVENTS - out->n : 0;
    newest = pos.t;
    for (i = 0; i < n_items; i++) {
        const struct item *it = &items[i];
        char type[64], event_id[PAYTRACE_ID_MAX + sizeof PAYTRACE_VOID_SUFFIX];
        json_t *event = NULL;

        if (sent == room) {
            truncated = it->fresh; /* only new events call for another page */
            break;
        }
        rc = it->is_void
                 ? pb__paytrace_record_void_event(&recs[it->rec], &event, type, sizeof type, err)
                 : pb__paytrace_record_main_event(&recs[it->rec], &event, type, sizeof type, err);
        if (rc)
            goto out;
        snprintf(event_id, sizeof event_id, "%s%s", it->id,
                 it->is_void ? PAYTRACE_VOID_SUFFIX : "");
        if ((rc = pb__paytrace_event_append(out, event_id, type, event, err)))
            goto out;
        sent++;
        if (it->fresh) {
            last_new = it;
            if (it->t > newest)
                newest = it->t;
        }
    }
    if (truncated) {
        if (more)
            *more = 1;
        if (last_new)
            rc = write_cursor(next_cursor, next_len, last_new->t, last_new->id, last_new->is_void,
                              err);
        else /* no room at all: the same place again */
            rc = write_cursor(next_cursor, next_len, pos.t, pos.id[0] ? pos.id : NULL, pos.is_void,
                              err);
    } else {
        if (newest < now - st->overlap_s)
            newest = now - st->overlap_s;
        rc = write_cursor(next_cursor, next_len, newest, NULL, 0, err);
    }
out:
    free(recs);
    free(items);
    json_decref(reply);
    return rc;
}
