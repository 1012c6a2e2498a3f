/*
 * connectors/sagex3/sagex3_recon.c: the Sage X3 side of reconciliation
 * (docs/reconciliation.md): ledger() reads X3's own records of money
 * received from customers back, and post_journal() saves one GL journal
 * (GACC) exactly once per reference. Both use the connector's SOAP call
 * (sagex3_soap.c), so the callContext, HTTP Basic, the trace and the
 * classification of faults are the same as for the sink's commands.
 *
 * ledger(from_day, to_day)
 *   1. PAY receipts. `query` on the payment public name (PAY) with three
 *      objectKeys criteria: the date field (ids.payment.date_field, ACCDAT)
 *      ">=YYYYMMDD" and "<=YYYYMMDD", and, from the second page on, the key
 *      (NUM) ">" the last number of the previous page; listSize is
 *      settings.ledger_page_size (100). A page shorter than listSize is the
 *      last. Each line gives NUM, the date, the amount (ids.payment.
 *      amount_field, AMTCUR), CUR and REF; a line that lacks the date, the
 *      amount or CUR (a query publication that lists fewer fields) is
 *      completed by a `read` of that NUM. Dates are checked again here, so an
 *      X3 that ignored the range criteria still yields only the range.
 *      Record: record_id NUM, kind "payment" (a negative AMTCUR, which X3
 *      does not let paybridge post, would be a "refund"), gateway_ref REF
 *      (paybridge posts the PayTrace transaction id there: flows/
 *      paytrace-sagex3.yaml, step payment), reference "" (the merchant's
 *      order reference lives on the SOH, CUSORDREF, not on the PAY).
 *   2. Refunds. paybridge posts a refund as a GACC credit memo (sales
 *      debited, the customer's receivable credited, REF = the refund's
 *      transaction id), not as a PAY. When settings.refund_account is set
 *      (the receivable account of those credit memos), the GACC journals of
 *      the range are queried the same way and each is `read` for its lines
 *      (a query returns header fields only): the net credit to
 *      refund_account, when positive, is a "refund" record of minus that
 *      amount with gateway_ref REF. Journals that do not credit it
 *      (chargebacks, paybridge's own reconciliation journals) are left out.
 *
 * post_journal(journal)
 *   The journal is checked (reference 1..50 characters, a date, a known
 *   currency, at least two lines with an account and a non-zero amount,
 *   summing to zero) and becomes a GACC document in mirror form:
 *     {ids.journal.group (GACC0_1): {TYP: settings.journal_type,
 *        ACCDAT: YYYYMMDD, CUR, REF: the reference, DES: the narration,
 *        FCY: settings.journal_site when set},
 *      ids.journal.table (GACC1_1): [{ACC, DEB | CDT: decimal, DES}, ...]}
 *   and runs through the sink's journal.create path (pb__sagex3_create)
 *   as a retry (attempt 2): that path always queries GACC by REF first and
 *   returns the NUM it finds, and saves only when none exists. So a run that
 *   is retried or re-run never posts twice, and the reference is findable by
 *   an accountant in X3 (the journal's Reference field). X3's refusals
 *   (an unknown account, an unbalanced entry, a closed period) are
 *   PB_ERR_PERMANENT with X3's words; faults, 5xx and a busy pool are
 *   PB_ERR_TRANSIENT.
 *
 * Limits. A reference may not start with '<', '>' or '=' (it would read as
 * a criterion in a query). Paging stops with PB_ERR_PERMANENT when X3 returns
 * a page whose numbers do not advance (a publication not sorted by NUM),
 * rather than loop.
 *
 * Not verified against a live X3: how a site's query publication takes
 * range criteria in objectKeys. The sandbox emulator (sandbox/sagex3.c)
 * reads a value starting with >=, <=, > or < as a comparison; a site whose
 * publication does not will return every record, which the date check here
 * still filters (at the cost of reading them all).
 *
 * Threading: no state; called on a worker's thread with its HTTP client.
 * Rejected: a GACC `read` by the reference (REF is not the key: only a
 * query finds it), and a separate save path for reconciliation journals
 * (one path for every GACC keeps one look-up rule).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "recon/recon.h"
#include "sagex3_internal.h"

#define JOURNAL_REFERENCE_MAX 50 /* connector.h: "a unique key, <= 50 chars" */
#define CODE_MAX 32              /* an account code */
#define TEXT_FIELD_MAX 250       /* narration, line descriptions */
#define NUM_MAX 128              /* a record number kept between pages */

/* ---- small helpers ------------------------------------------------------------------- */

/* days -> "YYYYMMDD" (X3's date form in object XML). */
static void x3_date(int32_t day, char out[9])
{
    char iso[11];
    pb_recon_date_format(day, iso);
    memcpy(out, iso, 4);
    memcpy(out + 4, iso + 5, 2);
    memcpy(out + 6, iso + 8, 2);
    out[8] = '\0';
}

/* "YYYYMMDD" or "YYYY-MM-DD" -> days; 0 ok, -1 malformed. */
static int parse_x3_date(const char *s, int32_t *day)
{
    char iso[11];
    size_t n = s ? strlen(s) : 0;
    if (n == 10)
        return pb_recon_date_parse(s, n, day);
    if (n != 8)
        return -1;
    for (size_t i = 0; i < 8; i++)
        if (s[i] < '0' || s[i] > '9')
            return -1;
    snprintf(iso, sizeof iso, "%.4s-%.2s-%.2s", s, s + 4, s + 6);
    return pb_recon_date_parse(iso, 10, day);
}

/* One SOAP call; PB_OK when X3 answered with a result (any status). */
static enum pb_rc soap(struct pb_connection *c, struct pb_call_ctx *ctx,
                       const struct sagex3_request *rq, struct sagex3_result *res,
                       struct pb_err *err)
{
    struct sagex3_failure f;
    if (pb__sagex3_call(c, ctx, rq, res, &f) == PB_OK)
        return PB_OK;
    ctx->retry_after_s = f.retry_after_s;
    return pb_err_set(err, f.rc, "%s", f.message);
}

/* A status-0 answer as the error it is (transient when X3 is busy). */
static enum pb_rc refusal(const struct sagex3_request *rq, const struct sagex3_result *res,
                          struct pb_err *err)
{
    struct sagex3_failure f;
    char what[96];
    snprintf(what, sizeof what, "%s %s", rq->operation, rq->public_name);
    pb__sagex3_refusal(res, what, &f);
    return pb_err_set(err, f.rc, "%s", f.message);
}

/* ---- ledger ------------------------------------------------------------------------ */

struct ledger_run {
    struct pb_connection *c;
    struct pb_call_ctx *ctx;
    int32_t from_day, to_day;
    json_t *records; /* borrowed: the caller's array */
};

/* Called for each query line: PB_OK to go on. */
typedef enum pb_rc (*line_fn)(struct ledger_run *run, const struct sagex3_ids *ids, const char *num,
                              json_t *line, struct pb_err *err);

/* The whole record `num` in mirror form (a `read`). New reference. */
static enum pb_rc read_record(struct ledger_run *run, const struct sagex3_ids *ids, const char *num,
                              json_t **out, struct pb_err *err)
{
    struct sagex3_key k = {ids->key_field, num};
    struct sagex3_request rq = {"read", ids->public_name, &k, 1, NULL, 0};
    struct sagex3_result res;
    enum pb_rc rc;

    *out = NULL;
    if ((rc = soap(run->c, run->ctx, &rq, &res, err)))
        return rc;
    if (res.status != 1)
        rc = refusal(&rq, &res, err);
    else if (!(*out = res.result ? pb__sagex3_result_json(xmlDocGetRootElement(res.result))
                                 : json_object()))
        rc =
            pb_err_set(err, PB_ERR_TRANSIENT, "out of memory reading %s %s", ids->public_name, num);
    pb__sagex3_result_free(&res);
    return rc;
}

/* Query `ids`' public name for the date range, page by page, and hand every
 * line to fn. */
static enum pb_rc query_range(struct ledger_run *run, const struct sagex3_ids *ids, line_fn fn,
                              struct pb_err *err)
{
    const struct sagex3_state *st = pb__sagex3_state(run->c);
    char lo[16], hi[16], d[9], after[NUM_MAX + 2] = "";
    enum pb_rc rc = PB_OK;

    x3_date(run->from_day, d);
    snprintf(lo, sizeof lo, ">=%s", d);
    x3_date(run->to_day, d);
    snprintf(hi, sizeof hi, "<=%s", d);
    for (;;) {
        struct sagex3_key keys[3] = {
            {ids->date_field, lo}, {ids->date_field, hi}, {ids->key_field, after}};
        struct sagex3_request rq = {"query", ids->public_name,    keys, after[0] ? 3u : 2u,
                                    NULL,    st->ledger_page_size};
        struct sagex3_result res;
        json_t *lines, *line;
        size_t i, n;
        char last[NUM_MAX + 1] = "";

        if ((rc = soap(run->c, run->ctx, &rq, &res, err)))
            return rc;
        if (res.status != 1) {
            rc = refusal(&rq, &res, err);
            pb__sagex3_result_free(&res);
            return rc;
        }
        lines = pb__sagex3_query_lines(res.result ? xmlDocGetRootElement(res.result) : NULL);
        pb__sagex3_result_free(&res);
        if (!lines)
            return pb_err_set(err, PB_ERR_TRANSIENT, "out of memory reading a %s query",
                              ids->public_name);
        n = json_array_size(lines);
        json_array_foreach(lines, i, line)
        {
            const char *num = json_string_value(json_object_get(line, ids->key_field));
            if (!num || !num[0] || strlen(num) > NUM_MAX) {
                rc = pb_err_set(err, PB_ERR_PERMANENT,
                                "Sage X3's query of %s returned a line without its %s (or one "
                                "longer than %d): add %s to the publication's query fields, or "
                                "set settings.ids.%s.key_field",
                                ids->public_name, ids->key_field, NUM_MAX, ids->key_field,
                                ids == &st->ids[X3_PAYMENT] ? "payment" : "journal");
                break;
            }
            if (after[0] && strcmp(num, after + 1) <= 0) {
                rc = pb_err_set(err, PB_ERR_PERMANENT,
                                "Sage X3's query of %s after %s %s returned %s: the pages do "
                                "not advance (the query must be sorted by %s); stopped instead "
                                "of reading the same records again",
                                ids->public_name, ids->key_field, after + 1, num, ids->key_field);
                break;
            }
            if ((rc = fn(run, ids, num, line, err)))
                break;
            snprintf(last, sizeof last, "%s", num);
        }
        json_decref(lines);
        if (rc || n < (size_t)st->ledger_page_size || !last[0])
            return rc;
        snprintf(after, sizeof after, ">%s", last);
    }
}

/* The date of a record; 1 in range, 0 outside, -1 error set. */
static int in_range(struct ledger_run *run, const struct sagex3_ids *ids, const char *num,
                    const char *date, int32_t *day, struct pb_err *err)
{
    if (parse_x3_date(date, day) != 0) {
        pb_err_set(err, PB_ERR_PERMANENT,
                   "Sage X3 %s %s: %s \"%.20s\" is not a date (YYYYMMDD); check "
                   "settings.ids.%s.date_field",
                   ids->public_name, num, ids->date_field, date ? date : "",
                   strcmp(ids->amount_field, "") != 0 ? "payment" : "journal");
        return -1;
    }
    return *day >= run->from_day && *day <= run->to_day;
}

static enum pb_rc add_record(struct ledger_run *run, const char *num, const char *kind,
                             const char *gateway_ref, int64_t minor, const char *currency,
                             int32_t day, struct pb_err *err)
{
    char iso[11];
    json_t *r;
    pb_recon_date_format(day, iso);
    r = json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:s}", "record_id", num, "kind", kind, "reference", "",
                  "gateway_ref", gateway_ref ? gateway_ref : "", "amount_minor", (json_int_t)minor,
                  "currency", currency, "date", iso);
    if (!r || json_array_append_new(run->records, r))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory adding ledger record %s", num);
    return PB_OK;
}

static enum pb_rc currency_of(const struct sagex3_ids *ids, const char *num, const char *cur,
                              struct pb_err *err)
{
    if (cur && pb_currency_valid(cur))
        return PB_OK;
    return pb_err_set(err, PB_ERR_PERMANENT,
                      "Sage X3 %s %s: CUR \"%.8s\" is not an ISO 4217 currency code",
                      ids->public_name, num, cur ? cur : "");
}

static enum pb_rc payment_line(struct ledger_run *run, const struct sagex3_ids *ids,
                               const char *num, json_t *line, struct pb_err *err)
{
    char b1[32], b2[32], b3[32], b4[32];
    const char *date = pb__sagex3_field(line, ids->date_field, b1, sizeof b1);
    const char *amount = pb__sagex3_field(line, ids->amount_field, b2, sizeof b2);
    const char *cur = pb__sagex3_field(line, "CUR", b3, sizeof b3);
    const char *ref = pb__sagex3_field(line, ids->reference_field, b4, sizeof b4);
    json_t *full = NULL;
    struct pb_err e = {0};
    int64_t minor = 0;
    int32_t day = 0;
    enum pb_rc rc;
    int r;

    if (!date || !amount || !cur) {
        /* the publication's query lists fewer fields: read the record */
        if ((rc = read_record(run, ids, num, &full, err)))
            return rc;
        date = pb__sagex3_field(full, ids->date_field, b1, sizeof b1);
        amount = pb__sagex3_field(full, ids->amount_field, b2, sizeof b2);
        cur = pb__sagex3_field(full, "CUR", b3, sizeof b3);
        ref = pb__sagex3_field(full, ids->reference_field, b4, sizeof b4);
    }
    if ((r = in_range(run, ids, num, date, &day, err)) <= 0) {
        rc = r < 0 ? err->rc : PB_OK;
        goto out;
    }
    if ((rc = currency_of(ids, num, cur, err)))
        goto out;
    if (!amount || pb_money_parse_decimal(amount, cur, &minor, &e) != PB_OK) {
        rc = pb_err_set(err, PB_ERR_PERMANENT,
                        "Sage X3 %s %s: %s \"%.32s\" is not an amount in %s%s%s", ids->public_name,
                        num, ids->amount_field, amount ? amount : "", cur, amount ? ": " : "",
                        amount ? e.msg : "");
        goto out;
    }
    rc = add_record(run, num, minor < 0 ? "refund" : "payment", ref, minor, cur, day, err);
out:
    json_decref(full);
    return rc;
}

/* The net credit (credits - debits) of a journal's lines on `account`. */
static enum pb_rc net_credit(const struct sagex3_ids *ids, const char *num, const json_t *record,
                             const char *account, const char *cur, int64_t *net, struct pb_err *err)
{
    const char *gid;
    json_t *table = json_object_get(record, ids->table), *g;
    size_t i;
    json_t *line;

    if (!json_is_array(table))
        json_object_foreach((json_t *)record, gid,
                            g) if (json_is_array(g) && json_object_get(json_array_get(g, 0), "ACC"))
        {
            table = g;
            break;
        }
    *net = 0;
    json_array_foreach(table, i, line)
    {
        const char *acc = json_string_value(json_object_get(line, "ACC"));
        static const char *const sides[2] = {"CDT", "DEB"};
        if (!acc || strcmp(acc, account) != 0)
            continue;
        for (int s = 0; s < 2; s++) {
            const char *v = json_string_value(json_object_get(line, sides[s]));
            struct pb_err e = {0};
            int64_t m = 0;
            if (!v || !v[0])
                continue;
            if (pb_money_parse_decimal(v, cur, &m, &e) != PB_OK ||
                (s == 0 ? pb_money_add(*net, m, net) : pb_money_sub(*net, m, net)) != PB_OK)
                return pb_err_set(err, PB_ERR_PERMANENT,
                                  "Sage X3 %s %s line %zu: %s \"%.32s\" is not an amount in %s",
                                  ids->public_name, num, i + 1, sides[s], v, cur);
        }
    }
    return PB_OK;
}

static enum pb_rc journal_line(struct ledger_run *run, const struct sagex3_ids *ids,
                               const char *num, json_t *line, struct pb_err *err)
{
    const struct sagex3_state *st = pb__sagex3_state(run->c);
    char b1[32], b2[32], b3[64];
    const char *date = pb__sagex3_field(line, ids->date_field, b1, sizeof b1);
    json_t *full = NULL;
    const char *cur, *ref;
    int64_t net = 0;
    int32_t day = 0;
    enum pb_rc rc;
    int r;

    /* a date outside the range (an X3 that ignored the criteria) costs no read */
    if (date && (r = in_range(run, ids, num, date, &day, err)) <= 0)
        return r < 0 ? err->rc : PB_OK;
    if ((rc = read_record(run, ids, num, &full, err)))
        return rc;
    date = pb__sagex3_field(full, ids->date_field, b1, sizeof b1);
    cur = pb__sagex3_field(full, "CUR", b2, sizeof b2);
    ref = pb__sagex3_field(full, ids->reference_field, b3, sizeof b3);
    if ((r = in_range(run, ids, num, date, &day, err)) <= 0) {
        rc = r < 0 ? err->rc : PB_OK;
        goto out;
    }
    if ((rc = currency_of(ids, num, cur, err)) ||
        (rc = net_credit(ids, num, full, st->refund_account, cur, &net, err)))
        goto out;
    if (net > 0)
        rc = add_record(run, num, "refund", ref, -net, cur, day, err);
out:
    json_decref(full);
    return rc;
}

enum pb_rc pb__sagex3_ledger(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                             int32_t to_day, json_t *records, struct pb_err *err)
{
    const struct sagex3_state *st = pb__sagex3_state(c);
    struct ledger_run run = {c, ctx, from_day, to_day, records};
    enum pb_rc rc;

    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "sagex3 connection used before init");
    if (!ctx || !ctx->http || !json_is_array(records))
        return pb_err_set(err, PB_ERR_INTERNAL, "ledger needs an HTTP client and an array");
    if (from_day > to_day || from_day < -25567 || to_day > 2932896)
        return pb_err_set(err, PB_ERR_INVALID,
                          "ledger: the range of days %ld..%ld is empty or outside 1900..9999",
                          (long)from_day, (long)to_day);
    ctx->retry_after_s = -1;
    rc = query_range(&run, &st->ids[X3_PAYMENT], payment_line, err);
    if (!rc && st->refund_account[0])
        rc = query_range(&run, &st->ids[X3_JOURNAL], journal_line, err);
    return rc;
}

/* ---- post_journal ------------------------------------------------------------------- */

static int xml_text(const char *s, size_t max)
{
    size_t n = strlen(s);
    return n <= max && pb__sagex3_xml_text_ok(s, n, NULL);
}

/* An account code: upper-case letters, digits, '_', '-' or '.'. */
static int account_code(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > CODE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '-' || s[i] == '.'))
            return 0;
    return 1;
}

/* Check the journal and build its GACC document (new reference in *doc). */
static enum pb_rc journal_doc(const struct sagex3_state *st, const json_t *journal, json_t **doc,
                              const char **reference, struct pb_err *err)
{
    const struct sagex3_ids *ids = &st->ids[X3_JOURNAL];
    const char *ref = json_string_value(json_object_get(journal, "reference"));
    const char *date = json_string_value(json_object_get(journal, "date"));
    const char *narration = json_string_value(json_object_get(journal, "narration"));
    const char *cur = json_string_value(json_object_get(journal, "currency"));
    json_t *lines = json_object_get(journal, "lines"), *line, *header, *table;
    int64_t sum = 0, debits = 0;
    char x3d[9], amount[PB_MONEY_DECIMAL_MAX];
    int32_t day;
    size_t i;

    *doc = NULL;
    if (!json_is_object(journal))
        return pb_err_set(err, PB_ERR_INVALID, "the journal must be a JSON object");
    if (!ref || !ref[0] || strlen(ref) > JOURNAL_REFERENCE_MAX || !xml_text(ref, 50) ||
        strchr("<>=", ref[0]))
        return pb_err_set(err, PB_ERR_INVALID,
                          "journal.reference: must be text of 1 to %d characters, not starting "
                          "with '<', '>' or '=' (it is looked up in X3's %s)",
                          JOURNAL_REFERENCE_MAX, ids->reference_field);
    *reference = ref;
    if (!date || pb_recon_date_parse(date, strlen(date), &day) != 0)
        return pb_err_set(err, PB_ERR_INVALID, "journal %s: date must be YYYY-MM-DD", ref);
    if (!cur || !pb_currency_valid(cur))
        return pb_err_set(err, PB_ERR_CURRENCY,
                          "journal %s: currency must be an ISO 4217 code such as \"USD\"", ref);
    if (narration && !xml_text(narration, TEXT_FIELD_MAX))
        return pb_err_set(err, PB_ERR_INVALID,
                          "journal %s: narration must be text XML can carry, at most %d bytes", ref,
                          TEXT_FIELD_MAX);
    if (!json_is_array(lines) || json_array_size(lines) < 2)
        return pb_err_set(err, PB_ERR_INVALID, "journal %s: needs at least 2 lines", ref);
    x3_date(day, x3d);
    header = json_pack("{s:s,s:s,s:s,s:s}", "TYP", st->journal_type, "ACCDAT", x3d, "CUR", cur,
                       ids->reference_field, ref);
    table = json_array();
    *doc = json_object();
    if (!header || !table || !*doc || json_object_set_new(*doc, ids->group, header) ||
        json_object_set_new(*doc, ids->table, table)) {
        json_decref(*doc);
        *doc = NULL;
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    if ((narration && narration[0] && json_object_set_new(header, "DES", json_string(narration))) ||
        (st->journal_site[0] && json_object_set_new(header, "FCY", json_string(st->journal_site))))
        goto oom;
    json_array_foreach(lines, i, line)
    {
        const char *acc = json_string_value(json_object_get(line, "account"));
        const char *des = json_string_value(json_object_get(line, "description"));
        json_t *am = json_object_get(line, "amount_minor"), *out;
        int64_t m = json_integer_value(am);
        struct pb_err e = {0};

        if (!account_code(acc))
            return pb_err_set(err, PB_ERR_INVALID,
                              "journal %s line %zu: account must be an X3 account code (upper-case "
                              "letters, digits, '_', '-' or '.', at most %d)",
                              ref, i + 1, CODE_MAX);
        if (!json_is_integer(am) || m == 0 || m == INT64_MIN)
            return pb_err_set(err, PB_ERR_INVALID,
                              "journal %s line %zu: amount_minor must be a non-zero integer "
                              "(debit > 0, credit < 0)",
                              ref, i + 1);
        if (des && !xml_text(des, TEXT_FIELD_MAX))
            return pb_err_set(err, PB_ERR_INVALID,
                              "journal %s line %zu: description must be text XML can carry, at "
                              "most %d bytes",
                              ref, i + 1, TEXT_FIELD_MAX);
        if (pb_money_add(sum, m, &sum) != PB_OK ||
            (m > 0 && pb_money_add(debits, m, &debits) != PB_OK))
            return pb_err_set(err, PB_ERR_RANGE, "journal %s: the amounts overflow", ref);
        if (pb_money_format_decimal(m > 0 ? m : -m, cur, amount, sizeof amount, &e) != PB_OK)
            return pb_err_set(err, e.rc, "journal %s line %zu: %s", ref, i + 1, e.msg);
        out = json_pack("{s:s,s:s}", "ACC", acc, m > 0 ? "DEB" : "CDT", amount);
        if (!out || (des && des[0] && json_object_set_new(out, "DES", json_string(des))) ||
            json_array_append_new(table, out))
            goto oom;
    }
    if (sum != 0) {
        char d[PB_MONEY_DECIMAL_MAX], k[PB_MONEY_DECIMAL_MAX];
        int64_t credits = debits - sum;
        pb_money_format_decimal(debits, cur, d, sizeof d, NULL);
        pb_money_format_decimal(credits, cur, k, sizeof k, NULL);
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "journal %s is not balanced: debits %s, credits %s %s; nothing was "
                          "posted",
                          ref, d, k, cur);
    }
    return PB_OK;
oom:
    return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
}

enum pb_rc pb__sagex3_post_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                                   const json_t *journal, char *erp_id, size_t erp_id_len,
                                   struct pb_err *err)
{
    const struct sagex3_state *st = pb__sagex3_state(c);
    struct pb_sink_item it;
    const char *ref = "";
    json_t *doc = NULL;
    enum pb_rc rc;

    if (erp_id && erp_id_len)
        erp_id[0] = '\0';
    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "sagex3 connection used before init");
    if (!ctx || !ctx->http || !erp_id || erp_id_len == 0)
        return pb_err_set(err, PB_ERR_INTERNAL, "post_journal needs an HTTP client and a buffer");
    ctx->retry_after_s = -1;
    if (!st->journal_type[0])
        return pb_err_set(err, PB_ERR_CONFIG,
                          "settings.journal_type: required to post reconciliation journals (the "
                          "X3 journal type, e.g. \"ODJ\")");
    rc = journal_doc(st, journal, &doc, &ref, err);
    if (rc) {
        json_decref(doc);
        return rc;
    }
    memset(&it, 0, sizeof it);
    it.command = "journal.create";
    it.document = doc;
    it.reference = ref;
    it.idempotency_key = ref;
    it.attempt = 2; /* always look the reference up before saving */
    it.retry_after_s = -1;
    pb__sagex3_create(c, ctx, &it, X3_JOURNAL);
    if (it.rc == PB_OK) {
        if (strlen(it.erp_id) >= erp_id_len)
            rc = pb_err_set(err, PB_ERR_TOOBIG,
                            "journal %s was posted as %s, longer than the caller's buffer", ref,
                            it.erp_id);
        else
            memcpy(erp_id, it.erp_id, strlen(it.erp_id) + 1);
    } else {
        ctx->retry_after_s = it.retry_after_s;
        rc = pb_err_set(err, it.rc, "journal %s: %s", ref, it.message);
    }
    json_decref(it.result);
    json_decref(doc);
    return rc;
}
