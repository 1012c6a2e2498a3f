/*
 * connectors/xero/xero_recon.c: reconciliation support of the Xero
 * connector: ledger() reads back the money Xero holds as received from and
 * returned to customers, and post_journal() posts a balanced journal once
 * per reference: a manual journal, or, when a line is on a bank account,
 * bank transfers and bank transactions. connector.h states the contract; docs/connectors.md
 * (Xero) the operator's view.
 *
 * ledger(from_day, to_day). Two resources, each read page by page
 * (`page`=1, 2, ... of 100 until a short page, at most XERO_LEDGER_PAGES_MAX)
 * with one filter on the record date:
 *   where=Date >= DateTime(2026,11,20) && Date <= DateTime(2026,11,22)
 *   GET /Payments          ACCRECPAYMENT (a receipt on a sales invoice) ->
 *                          "payment", amount > 0; ARCREDITPAYMENT (a cash
 *                          refund of a sales credit note) -> "refund",
 *                          amount < 0; anything else (ACCPAYPAYMENT,
 *                          APCREDITPAYMENT: suppliers) is not a customer's
 *                          money and is left out.
 *   GET /BankTransactions  RECEIVE -> "payment" (+Total), SPEND -> "refund"
 *                          (-Total); transfers, over- and prepayments are
 *                          left out, and so is anything carrying paybridge's
 *                          journal mark "[paybridge " in its Reference or a
 *                          line Description (paybridge's own postings).
 * DELETED and VOIDED records are left out; a record dated outside the range
 * (a server that ignored the filter) too. reference = the record's Reference
 * (what flows/opayo-xero.yaml posts: the vendorTxCode for a payment, the
 * refund's reference for a refund); gateway_ref = the id in "(Opayo txn
 * <id>)" when a line Description of the record carries one (a Payment
 * carries no lines, so for payments it is "" and the engine's xref supplies
 * the transactionId). currency = Invoice.CurrencyCode (CreditNote's for a
 * refund), else the record's CurrencyCode; amounts are exact minor units
 * (pb_json_to_minor). Xero dates "/Date(1763596800000+0000)/" (or
 * "2026-11-20T00:00:00") become "YYYY-MM-DD". A record that cannot be read
 * (no id, no amount, a bad date) fails the call PB_ERR_PERMANENT naming it:
 * leaving it out would show as a break nobody can explain.
 *
 * post_journal(journal). Xero keeps bank accounts (Type BANK) out of manual
 * journals: money in and out of a bank account is a BankTransaction
 * (RECEIVE / SPEND) or a BankTransfer. So the journal is first checked
 * against the chart of accounts (GET /Accounts, read once per connection,
 * cached under org_lock, read again when a line's code is not in it; a code
 * still missing refuses the journal before anything is posted), then:
 *
 *   No line on a BANK account: one manual journal. Xero's ManualJournal has
 *   no Reference, so the reference goes into the Narration in a fixed form,
 *   "<narration> [paybridge <reference>]", and every attempt first looks:
 *     GET /ManualJournals?where=Narration.Contains("[paybridge <reference>]")
 *   (every page); a journal whose Narration holds the mark is the one: its
 *   ManualJournalID is returned and nothing is posted. The mark ends in ']',
 *   so "PB-1" never finds "PB-10". Otherwise PUT /ManualJournals
 *   ?summarizeErrors=false {"ManualJournals":[{"Narration", "Date", "Status":
 *   "POSTED", "LineAmountTypes": "NoTax", "JournalLines": [{"LineAmount"
 *   (debit > 0, credit < 0, an exact decimal sent as a JSON number),
 *   "AccountCode", "Description"}]}]}.
 *
 *   Lines on BANK accounts: the journal must balance (checked here: Xero
 *   sees only its parts, so it cannot refuse an unbalanced whole). Bank lines
 *   are summed per account; the anchor A is the bank account with the largest
 *   credit (the most negative sum; ties: the first). The journal becomes:
 *     - for every other bank account b with sum x != 0, a BankTransfer A -> b
 *       of x (x > 0) or b -> A of -x (x < 0): PUT /BankTransfers
 *       {"BankTransfers":[{"FromBankAccount":{"Code"}, "ToBankAccount":
 *       {"Code"}, "Amount", "Date", "Reference"}]};
 *     - the non-bank debits as one SPEND on A and the non-bank credits as
 *       one RECEIVE on A (LineAmount = |amount|): PUT /BankTransactions
 *       ?summarizeErrors=false {"BankTransactions":[{"Type", "Contact":
 *       {"Name": settings.journal_contact}, "BankAccount": {"Code": A},
 *       "Date", "Reference", "LineAmountTypes": "NoTax", "LineItems":
 *       [{"LineAmount", "AccountCode", "Description" (the line's, else the
 *       narration)}]}]}.
 *   A's own lines are implied: the journal balances, so what the parts move
 *   in and out of A is A's sum. The settlement journal (Dr bank net, Dr fees,
 *   Cr clearing gross, clearing and bank both BANK) is a transfer clearing ->
 *   bank of the net and a SPEND of the fees out of clearing; an adjustment
 *   (Dr clearing d, Cr revenue d) one RECEIVE into clearing.
 *   Every part carries the mark as its Reference: "[paybridge <reference>]",
 *   the second and later transfers "[paybridge <reference>] #2", ...; the
 *   SPEND and the RECEIVE share the mark and differ by Type. Before posting,
 *     GET /BankTransfers?where=Reference.StartsWith("[paybridge <ref>]")
 *     (one reply: the spec gives BankTransfers no paging) and
 *     GET /BankTransactions?where=Reference.StartsWith(...)&page=n
 *   find the parts already there (exact Reference, and Type for bank
 *   transactions: a transfer's SPEND-TRANSFER / RECEIVE-TRANSFER legs carry
 *   its Reference too, whatever their Status), and only the missing ones are
 *   posted, in order: a retry after a partial failure posts the rest. erp_id
 *   is the parts' ids joined by ',' (transfers first), or "<first id> +<n>
 *   more" when that does not fit. The narration is not carried (bank records
 *   have no narration field) except as the description of lines without one.
 *
 * Each write has its own Idempotency-Key: "pb-" + SHA-256 over the command
 * ("journal.post", "journal.transfer", "journal.banktransaction"), the
 * part's reference and the body. Journals are posted in the organisation's
 * base currency only: a journal in another currency is refused
 * (PB_ERR_PERMANENT) before any call; the base currency is
 * settings.base_currency, else GET /Organisation's BaseCurrency, read once
 * per connection and cached under org_lock.
 *
 * Errors: 429, 5xx, network and token failures are PB_ERR_TRANSIENT (with
 * ctx->retry_after_s from a 429's Retry-After); Xero's refusals (an unknown
 * account, unbalanced lines, a closed period) PB_ERR_PERMANENT in Xero's
 * words; a journal that is not the contract's shape PB_ERR_PERMANENT saying
 * which member is wrong (retrying cannot fix it).
 *
 * Threading: nothing here is shared but the cached base currency and chart
 * of accounts (org_lock; a refresh swaps the whole array under it).
 *
 * Rejected designs.
 *   - One BankTransaction per bank line with the other lines split across
 *     them: the split is arbitrary and a fee line would have to be cut in
 *     two; transfers between the bank accounts plus one SPEND / RECEIVE on
 *     one anchor keep every non-bank line whole.
 *   - Letting Xero refuse an unknown account code: with several parts, the
 *     first could be posted before the second is refused.
 *   - Looking the journal up only on a retry (as the sink's commands do): a
 *     re-run of a reconciliation is a first attempt of a new call with the
 *     same reference, so only a look-up every time makes "never posts twice"
 *     hold.
 *   - Fetching each payment's invoice to read "(Opayo txn <id>)" from its
 *     line: one more call per 100 payments against a 60/minute budget, for
 *     what paybridge's xref already knows.
 *   - Filtering Status in the where-clause: the client-side check is needed
 *     anyway (VOIDED, types), and one filter keeps the query simple.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/json.h"
#include "core/money.h"
#include "xero_internal.h"

#define XERO_PAGE_SIZE 100         /* Xero's page of Payments / BankTransactions */
#define XERO_LEDGER_PAGES_MAX 1000 /* 100,000 records of a resource per call */
#define XERO_JOURNAL_PAGES_MAX 20  /* journals found by one reference's mark */
#define XERO_JOURNAL_REF_MAX 50    /* the contract's longest reference */
#define XERO_JOURNAL_LINES_MAX 500 /* lines of one journal */
#define XERO_JOURNAL_MARK "[paybridge "

/* ---- dates ------------------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void day_text(int64_t z, char out[16])
{
    int64_t era, doe, yoe, y, doy, mp;
    unsigned d, m;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    y = yoe + era * 400;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    y += m <= 2;
    snprintf(out, 16, "%04" PRId64 "-%02u-%02u", y, m, d);
}

static void day_parts(int64_t z, int *y, unsigned *m, unsigned *d)
{
    char t[16];
    day_text(z, t);
    *y = (int)strtol(t, NULL, 10);
    *m = (unsigned)strtol(t + 5, NULL, 10);
    *d = (unsigned)strtol(t + 8, NULL, 10);
}

/* "/Date(1763596800000+0000)/" or "2026-11-20[T...]" -> days; 0 or -1. */
static int xero_day(const char *s, int64_t *days)
{
    if (!s)
        return -1;
    if (strncmp(s, "/Date(", 6) == 0) {
        char *end;
        long long ms = strtoll(s + 6, &end, 10);
        if (end == s + 6 || (*end != '+' && *end != '-' && *end != ')'))
            return -1;
        *days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
        return 0;
    }
    if (strlen(s) >= 10 && s[4] == '-' && s[7] == '-' && (s[10] == '\0' || s[10] == 'T')) {
        char *e1, *e2, *e3;
        long y = strtol(s, &e1, 10), m = strtol(s + 5, &e2, 10), d = strtol(s + 8, &e3, 10);
        if (e1 != s + 4 || e2 != s + 7 || e3 != s + 10 || y < 1900 || y > 9999 || m < 1 || m > 12 ||
            d < 1 || d > 31)
            return -1;
        *days = days_from_civil(y, (unsigned)m, (unsigned)d);
        return 0;
    }
    return -1;
}

/* ---- reading pages ----------------------------------------------------------------- */

static enum pb_rc fail_with(struct pb_call_ctx *ctx, const struct xero_failure *f,
                            struct pb_err *err)
{
    if (f->retry_after_s >= 0 && ctx)
        ctx->retry_after_s = f->retry_after_s;
    return pb_err_set(err, f->rc, "%s", f->message);
}

/* GET /<resource>?where=<where>&page=<page> (no page when 0); *arr borrowed
 * from *root. */
static enum pb_rc get_page(struct pb_connection *c, struct pb_call_ctx *ctx, const char *resource,
                           const char *where, int page, json_t **root, json_t **arr,
                           struct pb_err *err)
{
    struct xero_request rq = {"GET", NULL, NULL, NULL};
    struct xero_failure f = {PB_OK, -1, ""};
    struct pb_http_call call;
    struct pb_err e = {0};
    struct xero_buf path;
    char num[32], what[96];
    enum pb_rc rc;

    *root = NULL;
    *arr = NULL;
    pb__xero_buf_init(&path, 8192);
    pb__xero_buf_adds(&path, "/");
    pb__xero_buf_adds(&path, resource);
    pb__xero_buf_adds(&path, "?where=");
    pb__xero_buf_add_escaped(&path, where);
    if (page > 0) { /* 0: a resource without paging (BankTransfers) */
        snprintf(num, sizeof num, "&page=%d", page);
        pb__xero_buf_adds(&path, num);
    }
    if (path.failed) {
        pb__xero_buf_free(&path);
        return pb_err_set(err, PB_ERR_NOMEM, "reading %s: the request could not be built",
                          resource);
    }
    if (page > 0)
        snprintf(what, sizeof what, "reading %s (page %d)", resource, page);
    else
        snprintf(what, sizeof what, "reading %s", resource);
    rq.path = path.data;
    rc = pb__xero_call(c, ctx, &rq, &call, &e);
    if (rc) {
        pb__xero_describe_failure(&call, rc, &e, what, &f);
    } else if ((*arr = pb__xero_parse_envelope(&call, resource, root, &f)) == NULL) {
        snprintf(f.message, sizeof f.message,
                 "%s: Xero answered HTTP %ld without a \"%s\" array; will retry", what, call.status,
                 resource);
    }
    pb_http_call_reset(&call);
    pb__xero_buf_free(&path);
    return *arr ? PB_OK : fail_with(ctx, &f, err);
}

/* 1 when this page was the last: shorter than a page, or pagination says so. */
static int last_page(json_t *root, json_t *arr, int page)
{
    json_t *count = json_object_get(json_object_get(root, "pagination"), "pageCount");
    if (json_is_integer(count))
        return page >= json_integer_value(count);
    return json_array_size(arr) < XERO_PAGE_SIZE;
}

/* ---- ledger ------------------------------------------------------------------------ */

static const char *str_of(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

/* The id in "(Opayo txn <id>)" of the first line Description that has one. */
static void gateway_ref_of(json_t *lines, char *out, size_t len)
{
    static const char mark[] = "(Opayo txn ";
    size_t i;
    json_t *li;
    out[0] = '\0';
    json_array_foreach(lines, i, li)
    {
        const char *d = strstr(str_of(li, "Description"), mark), *end;
        if (!d)
            continue;
        d += sizeof mark - 1;
        end = strchr(d, ')');
        if (end && end > d && (size_t)(end - d) < len) {
            memcpy(out, d, (size_t)(end - d));
            out[end - d] = '\0';
            return;
        }
    }
}

static int has_journal_mark(json_t *bt)
{
    size_t i;
    json_t *li;
    if (strstr(str_of(bt, "Reference"), XERO_JOURNAL_MARK))
        return 1;
    json_array_foreach(json_object_get(bt, "LineItems"), i, li)
    {
        if (strstr(str_of(li, "Description"), XERO_JOURNAL_MARK))
            return 1;
    }
    return 0;
}

/* Append one record; PB_ERR_PERMANENT naming the record when it is unreadable. */
static enum pb_rc add_record(json_t *records, const char *resource, const char *id_key, json_t *el,
                             const char *kind, json_t *amount, const char *currency, json_t *lines,
                             int32_t from_day, int32_t to_day, struct pb_err *err)
{
    const char *id = str_of(el, id_key), *date = str_of(el, "Date");
    int64_t minor, day;
    char day_s[16], gw[128];
    struct pb_err e = {0};
    json_t *rec;

    if (!id[0])
        return pb_err_set(err, PB_ERR_PERMANENT, "Xero returned one of the %s without a %s",
                          resource, id_key);
    if (xero_day(date, &day))
        return pb_err_set(err, PB_ERR_PERMANENT, "Xero's %s %s has no readable Date (\"%.40s\")",
                          resource, id, date);
    if (day < from_day || day > to_day)
        return PB_OK; /* outside the range: the server did not filter */
    if (!pb_currency_valid(currency))
        return pb_err_set(err, PB_ERR_PERMANENT, "Xero's %s %s has no valid currency (\"%.8s\")",
                          resource, id, currency);
    if (pb_json_to_minor(amount, currency, &minor, &e) != PB_OK || minor < 0)
        return pb_err_set(err, PB_ERR_PERMANENT, "Xero's %s %s: the amount is unreadable: %s",
                          resource, id, e.msg[0] ? e.msg : "negative");
    if (strcmp(kind, "refund") == 0)
        minor = -minor;
    day_text(day, day_s);
    gateway_ref_of(lines, gw, sizeof gw);
    rec = json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:s}", "record_id", id, "kind", kind, "reference",
                    str_of(el, "Reference"), "gateway_ref", gw, "amount_minor", (json_int_t)minor,
                    "currency", currency, "date", day_s);
    if (!rec || json_array_append_new(records, rec))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    return PB_OK;
}

static enum pb_rc payment_record(json_t *records, json_t *p, int32_t from_day, int32_t to_day,
                                 struct pb_err *err)
{
    const char *type = str_of(p, "PaymentType"), *status = str_of(p, "Status"), *kind, *cur;
    json_t *doc;

    if (!strcasecmp(status, "DELETED") || !strcasecmp(status, "VOIDED"))
        return PB_OK;
    if (!strcmp(type, "ACCRECPAYMENT")) {
        kind = "payment";
        doc = json_object_get(p, "Invoice");
    } else if (!strcmp(type, "ARCREDITPAYMENT")) {
        kind = "refund";
        doc = json_object_get(p, "CreditNote");
    } else {
        return PB_OK; /* a supplier's payment or refund */
    }
    cur = str_of(doc, "CurrencyCode");
    if (!cur[0])
        cur = str_of(p, "CurrencyCode");
    return add_record(records, "Payments", "PaymentID", p, kind, json_object_get(p, "Amount"), cur,
                      NULL, from_day, to_day, err);
}

static enum pb_rc bank_record(json_t *records, json_t *bt, int32_t from_day, int32_t to_day,
                              struct pb_err *err)
{
    const char *type = str_of(bt, "Type"), *status = str_of(bt, "Status");
    const char *kind = !strcmp(type, "RECEIVE") ? "payment"
                       : !strcmp(type, "SPEND") ? "refund"
                                                : NULL;
    if (!kind || !strcasecmp(status, "DELETED") || !strcasecmp(status, "VOIDED") ||
        has_journal_mark(bt))
        return PB_OK;
    return add_record(records, "BankTransactions", "BankTransactionID", bt, kind,
                      json_object_get(bt, "Total"), str_of(bt, "CurrencyCode"),
                      json_object_get(bt, "LineItems"), from_day, to_day, err);
}

enum pb_rc pb__xero_ledger(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                           int32_t to_day, json_t *records, struct pb_err *err)
{
    static const char *const resources[] = {"Payments", "BankTransactions"};
    char where[160];
    int y1, y2;
    unsigned m1, d1, m2, d2;

    if (!pb__xero_state(c))
        return pb_err_set(err, PB_ERR_INTERNAL, "xero connection used before init");
    if (!ctx || !ctx->http || !json_is_array(records))
        return pb_err_set(err, PB_ERR_INTERNAL, "ledger needs an HTTP client and a records array");
    if (from_day > to_day)
        return pb_err_set(err, PB_ERR_INVALID,
                          "ledger: from_day %" PRId32 " is after to_day %" PRId32, from_day,
                          to_day);
    day_parts(from_day, &y1, &m1, &d1);
    day_parts(to_day, &y2, &m2, &d2);
    snprintf(where, sizeof where,
             "Date >= DateTime(%d,%02u,%02u) && Date <= DateTime(%d,%02u,%02u)", y1, m1, d1, y2, m2,
             d2);
    for (size_t r = 0; r < sizeof resources / sizeof resources[0]; r++) {
        for (int page = 1;; page++) {
            json_t *root, *arr, *el;
            enum pb_rc rc;
            size_t i;
            int last;

            if (page > XERO_LEDGER_PAGES_MAX)
                return pb_err_set(err, PB_ERR_TOOBIG,
                                  "reading %s: more than %d pages of %d for one range; ask for "
                                  "fewer days at a time",
                                  resources[r], XERO_LEDGER_PAGES_MAX, XERO_PAGE_SIZE);
            rc = get_page(c, ctx, resources[r], where, page, &root, &arr, err);
            if (rc)
                return rc;
            json_array_foreach(arr, i, el)
            {
                rc = r == 0 ? payment_record(records, el, from_day, to_day, err)
                            : bank_record(records, el, from_day, to_day, err);
                if (rc)
                    break;
            }
            last = last_page(root, arr, page);
            json_decref(root);
            if (rc)
                return rc;
            if (last)
                break;
        }
    }
    return PB_OK;
}

/* ---- post_journal ------------------------------------------------------------------ */

/* The organisation's base currency: the setting, or GET /Organisation once. */
static enum pb_rc base_currency(struct pb_connection *c, struct pb_call_ctx *ctx, char out[4],
                                struct pb_err *err)
{
    struct xero_state *st = pb__xero_state(c);
    struct xero_request rq = {"GET", "/Organisation", NULL, NULL};
    struct xero_failure f = {PB_OK, -1, ""};
    struct pb_http_call call;
    struct pb_err e = {0};
    json_t *root = NULL, *arr;
    const char *cur;
    enum pb_rc rc;

    if (st->base_currency[0]) {
        memcpy(out, st->base_currency, 4);
        return PB_OK;
    }
    pthread_mutex_lock(&st->org_lock);
    memcpy(out, st->org_currency, 4);
    pthread_mutex_unlock(&st->org_lock);
    if (out[0])
        return PB_OK;
    rc = pb__xero_call(c, ctx, &rq, &call, &e);
    if (rc) {
        pb__xero_describe_failure(&call, rc, &e, "reading the organisation's base currency", &f);
    } else if ((arr = pb__xero_parse_envelope(&call, "Organisations", &root, &f)) != NULL) {
        cur = str_of(json_array_get(arr, 0), "BaseCurrency");
        if (pb_currency_valid(cur)) {
            snprintf(out, 4, "%s", cur);
            pthread_mutex_lock(&st->org_lock);
            memcpy(st->org_currency, out, 4);
            pthread_mutex_unlock(&st->org_lock);
        } else {
            f.rc = PB_ERR_PERMANENT;
            snprintf(f.message, sizeof f.message,
                     "GET /Organisation has no BaseCurrency; set settings.base_currency");
        }
    }
    json_decref(root);
    pb_http_call_reset(&call);
    return out[0] ? PB_OK : fail_with(ctx, &f, err);
}

/* One line of the journal, checked. */
struct jline {
    const char *account, *description; /* borrowed from the journal */
    int64_t amount;                     /* minor units, debit > 0 */
    int bank;                           /* the account is of Type BANK */
};

/* The journal checked against the contract. */
struct journal_doc {
    const char *reference, *date, *narration, *currency;
    char mark[sizeof XERO_JOURNAL_MARK + XERO_JOURNAL_REF_MAX + 2]; /* "[paybridge REF]" */
    struct jline *lines;                                            /* malloc'd */
    size_t n;
};

static enum pb_rc bad_journal(struct pb_err *err, const char *what)
{
    return pb_err_set(err, PB_ERR_PERMANENT,
                      "the journal is not valid: %s (it needs reference, date YYYY-MM-DD, "
                      "narration, currency and at least 2 lines {account, amount_minor, "
                      "description})",
                      what);
}

static enum pb_rc read_journal(const json_t *j, struct journal_doc *jd, struct pb_err *err)
{
    json_t *lines = json_object_get(j, "lines"), *line;
    const char *p;
    int64_t day;
    size_t i;

    memset(jd, 0, sizeof *jd);
    jd->reference = json_string_value(json_object_get(j, "reference"));
    jd->date = json_string_value(json_object_get(j, "date"));
    jd->narration = json_string_value(json_object_get(j, "narration"));
    jd->currency = json_string_value(json_object_get(j, "currency"));
    if (!json_is_object(j))
        return bad_journal(err, "not a JSON object");
    if (!jd->reference || !jd->reference[0] || strlen(jd->reference) > XERO_JOURNAL_REF_MAX)
        return bad_journal(err, "reference must be 1 to 50 characters");
    for (p = jd->reference; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\' || *p == ']')
            return bad_journal(err, "reference may not hold control characters, '\"', '\\' or "
                                    "']'");
    if (!jd->date || strlen(jd->date) != 10 || xero_day(jd->date, &day))
        return bad_journal(err, "date must be YYYY-MM-DD");
    if (!jd->narration)
        jd->narration = "";
    if (strlen(jd->narration) > 1000)
        return bad_journal(err, "narration is longer than 1000 characters");
    if (!jd->currency || !pb_currency_valid(jd->currency))
        return bad_journal(err, "currency must be an ISO 4217 code");
    if (!json_is_array(lines) || json_array_size(lines) > XERO_JOURNAL_LINES_MAX)
        return bad_journal(err, "lines must be a list of at most 500 lines");
    snprintf(jd->mark, sizeof jd->mark, XERO_JOURNAL_MARK "%s]", jd->reference);
    jd->lines = calloc(json_array_size(lines) + 1, sizeof *jd->lines);
    if (!jd->lines)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    json_array_foreach(lines, i, line)
    {
        struct jline *l = &jd->lines[i];
        json_t *amount = json_object_get(line, "amount_minor");
        char dec[PB_MONEY_DECIMAL_MAX];
        l->account = json_string_value(json_object_get(line, "account"));
        l->description = json_string_value(json_object_get(line, "description"));
        if (!l->account || !l->account[0] || strlen(l->account) >= XERO_ACCOUNT_CODE_MAX ||
            !json_is_integer(amount) ||
            pb_money_format_decimal(json_integer_value(amount), jd->currency, dec, sizeof dec,
                                    NULL) != PB_OK) {
            char what[112];
            snprintf(what, sizeof what,
                     "lines[%zu] needs account (text, at most %d characters) and amount_minor "
                     "(an integer)",
                     i, XERO_ACCOUNT_CODE_MAX - 1);
            return bad_journal(err, what);
        }
        l->amount = json_integer_value(amount);
        if (!l->description)
            l->description = "";
    }
    jd->n = json_array_size(lines);
    return PB_OK;
}

/* An exact decimal of `minor` in the journal's currency, as a JSON string
 * that pb_json_dumps_decimal() writes as a number. */
static json_t *decimal(const struct journal_doc *jd, int64_t minor)
{
    char dec[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, jd->currency, dec, sizeof dec, NULL) != PB_OK)
        return NULL;
    return json_string(dec);
}

/* ---- the chart of accounts ----------------------------------------------------------- */

/* Mark each line bank or not from the cache (org_lock held); 0 when a code is
 * not in it (*unknown names it), 1 when all are. */
static int classify(const struct xero_state *st, struct journal_doc *jd, const char **unknown)
{
    if (!st->accounts)
        return 0;
    for (size_t i = 0; i < jd->n; i++) {
        size_t k;
        for (k = 0; k < st->n_accounts; k++)
            if (!strcasecmp(st->accounts[k].code, jd->lines[i].account))
                break;
        if (k == st->n_accounts) {
            *unknown = jd->lines[i].account;
            return 0;
        }
        jd->lines[i].bank = st->accounts[k].bank;
    }
    return 1;
}

/* GET /Accounts into the cache (replacing what it held). */
static enum pb_rc load_accounts(struct pb_connection *c, struct pb_call_ctx *ctx,
                                struct pb_err *err)
{
    struct xero_state *st = pb__xero_state(c);
    struct xero_request rq = {"GET", "/Accounts", NULL, NULL};
    struct xero_failure f = {PB_OK, -1, ""};
    struct xero_account *acc = NULL;
    struct pb_http_call call;
    struct pb_err e = {0};
    json_t *root = NULL, *arr = NULL, *el;
    size_t i, n = 0;
    enum pb_rc rc;

    rc = pb__xero_call(c, ctx, &rq, &call, &e);
    if (rc)
        pb__xero_describe_failure(&call, rc, &e, "reading the chart of accounts", &f);
    else if ((arr = pb__xero_parse_envelope(&call, "Accounts", &root, &f)) != NULL &&
             !(acc = calloc(json_array_size(arr) + 1, sizeof *acc))) {
        f.rc = PB_ERR_NOMEM;
        snprintf(f.message, sizeof f.message, "out of memory for the chart of accounts");
    }
    pb_http_call_reset(&call);
    if (!acc) {
        json_decref(root);
        return fail_with(ctx, &f, err);
    }
    json_array_foreach(arr, i, el)
    {
        const char *code = str_of(el, "Code");
        if (!code[0] || strlen(code) >= XERO_ACCOUNT_CODE_MAX)
            continue; /* an account without a code cannot be on a journal line */
        snprintf(acc[n].code, sizeof acc[n].code, "%s", code);
        acc[n++].bank = strcmp(str_of(el, "Type"), "BANK") == 0;
    }
    json_decref(root);
    pthread_mutex_lock(&st->org_lock);
    free(st->accounts);
    st->accounts = acc;
    st->n_accounts = n;
    pthread_mutex_unlock(&st->org_lock);
    return PB_OK;
}

/* Which lines are on bank accounts: from the cache, read once per
 * connection and again when a code is not in it (an account added since). A
 * code Xero does not have refuses the journal before anything is posted. */
static enum pb_rc account_types(struct pb_connection *c, struct pb_call_ctx *ctx,
                                struct journal_doc *jd, struct pb_err *err)
{
    struct xero_state *st = pb__xero_state(c);
    const char *unknown = NULL;
    char code[XERO_ACCOUNT_CODE_MAX];
    enum pb_rc rc;
    int known;

    pthread_mutex_lock(&st->org_lock);
    known = classify(st, jd, &unknown);
    pthread_mutex_unlock(&st->org_lock);
    if (known)
        return PB_OK;
    if ((rc = load_accounts(c, ctx, err)))
        return rc;
    unknown = NULL;
    pthread_mutex_lock(&st->org_lock);
    known = classify(st, jd, &unknown);
    pthread_mutex_unlock(&st->org_lock);
    if (known)
        return PB_OK;
    snprintf(code, sizeof code, "%s", unknown ? unknown : "?");
    return pb_err_set(err, PB_ERR_PERMANENT,
                      "journal %s: account code '%s' is not in Xero's chart of accounts (GET "
                      "/Accounts has no such Code): add it in Xero or correct the account in "
                      "the reconcile block; nothing was posted",
                      jd->reference, code);
}

/* ---- one write ---------------------------------------------------------------------- */

/* PUT `path` with {envelope: [element]} (element taken) under an
 * Idempotency-Key over `command`, `key_ref` and the body; the new record's
 * `id_key` into id. PB_OK or the failure in err, with `what` in front. */
static enum pb_rc put_one(struct pb_connection *c, struct pb_call_ctx *ctx, const char *path,
                          const char *envelope, const char *id_key, const char *command,
                          const char *key_ref, json_t *element, const char *what, char *id,
                          size_t id_len, struct pb_err *err)
{
    struct pb_sink_item item, *itp = &item;
    struct xero_failure whole = {PB_OK, -1, ""};
    struct xero_request rq = {"PUT", path, NULL, NULL};
    struct pb_http_call call;
    struct pb_err e = {0};
    char key[XERO_IDEMPOTENCY_KEY_MAX];
    json_t *doc = element ? json_pack("{s:[o]}", envelope, element) : NULL;
    char *body = doc ? pb_json_dumps_decimal(doc, pb__xero_decimal_keys, 0) : NULL;
    enum pb_rc rc;

    json_decref(doc);
    if (!body)
        return pb_err_set(err, PB_ERR_NOMEM, "%s: cannot build the %s body", what, envelope);
    memset(&item, 0, sizeof item);
    item.command = command;
    item.reference = key_ref;
    item.idempotency_key = key_ref;
    item.retry_after_s = -1;
    item.rc = PB_ERR_INTERNAL;
    snprintf(item.message, sizeof item.message, "Xero's reply was not applied");
    pb__xero_idempotency_key(item.command, &itp, 1, body, key);
    rq.body = body;
    rq.idempotency_key = key;
    rc = pb__xero_call(c, ctx, &rq, &call, &e);
    pb__xero_apply_write_reply(&call, rc, &e, envelope, id_key, &itp, 1, &whole);
    pb_http_call_reset(&call);
    json_decref(item.result);
    free(item.result_json);
    free(body);
    rc = item.rc;
    if (rc == PB_OK) {
        snprintf(id, id_len, "%s", item.erp_id);
        return PB_OK;
    }
    if (item.retry_after_s >= 0)
        ctx->retry_after_s = item.retry_after_s;
    return pb_err_set(err, rc, "%s: %s", what, item.message);
}

/* ---- a journal without bank lines: one manual journal ----------------------------- */

/* Look for a journal whose Narration holds jd->mark: PB_OK with erp_id set
 * ("" when none). */
static enum pb_rc find_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                               const struct journal_doc *jd, char *erp_id, size_t erp_id_len,
                               struct pb_err *err)
{
    char where[sizeof jd->mark + 40];
    erp_id[0] = '\0';
    snprintf(where, sizeof where, "Narration.Contains(\"%s\")", jd->mark);
    for (int page = 1; page <= XERO_JOURNAL_PAGES_MAX; page++) {
        json_t *root, *arr, *el;
        size_t i;
        int last;
        enum pb_rc rc = get_page(c, ctx, "ManualJournals", where, page, &root, &arr, err);
        if (rc)
            return rc;
        json_array_foreach(arr, i, el)
        {
            const char *id = str_of(el, "ManualJournalID");
            if (id[0] && strstr(str_of(el, "Narration"), jd->mark)) {
                snprintf(erp_id, erp_id_len, "%s", id);
                break;
            }
        }
        last = last_page(root, arr, page);
        json_decref(root);
        if (erp_id[0] || last)
            return PB_OK;
    }
    return pb_err_set(err, PB_ERR_PERMANENT,
                      "more than %d pages of manual journals match \"%s\": the look-up cannot "
                      "prove the journal was not posted",
                      XERO_JOURNAL_PAGES_MAX, jd->mark);
}

static enum pb_rc post_manual(struct pb_connection *c, struct pb_call_ctx *ctx,
                              const struct journal_doc *jd, char *erp_id, size_t erp_id_len,
                              struct pb_err *err)
{
    char narration[1200], what[96];
    json_t *out, *mj;
    enum pb_rc rc;

    if ((rc = find_journal(c, ctx, jd, erp_id, erp_id_len, err)) || erp_id[0])
        return rc;
    out = json_array();
    snprintf(narration, sizeof narration, "%s%s%s", jd->narration, jd->narration[0] ? " " : "",
             jd->mark);
    for (size_t i = 0; out && i < jd->n; i++) {
        json_t *l = json_pack("{s:o,s:s,s:s}", "LineAmount", decimal(jd, jd->lines[i].amount),
                              "AccountCode", jd->lines[i].account, "Description",
                              jd->lines[i].description);
        if (!l || json_array_append_new(out, l)) {
            json_decref(out);
            out = NULL;
        }
    }
    mj = out ? json_pack("{s:s,s:s,s:s,s:s,s:o}", "Narration", narration, "Date", jd->date,
                         "Status", "POSTED", "LineAmountTypes", "NoTax", "JournalLines", out)
             : NULL;
    if (!mj)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    snprintf(what, sizeof what, "journal %s", jd->reference);
    return put_one(c, ctx, "/ManualJournals?summarizeErrors=false", "ManualJournals",
                   "ManualJournalID", "journal.post", jd->reference, mj, what, erp_id, erp_id_len,
                   err);
}

/* ---- a journal with bank lines: transfers and bank transactions -------------------- */

enum part_kind { PART_TRANSFER, PART_SPEND, PART_RECEIVE };

/* One record the journal becomes. */
struct part {
    enum part_kind kind;
    char ref[sizeof XERO_JOURNAL_MARK + XERO_JOURNAL_REF_MAX + 16]; /* its Reference */
    const char *from, *to;  /* a transfer's account codes (borrowed from the journal) */
    int64_t amount;         /* a transfer's amount, > 0 */
    char id[64];            /* BankTransferID / BankTransactionID, "" until found or posted */
};

struct plan {
    const char *anchor;     /* A: the bank account the bank transactions are on */
    struct part *parts;     /* malloc'd: transfers first, then SPEND, then RECEIVE */
    size_t n, n_transfers;
};

static const char *part_word(enum part_kind k)
{
    return k == PART_TRANSFER ? "bank transfer" : k == PART_SPEND ? "SPEND" : "RECEIVE";
}

/* The parts of a balanced journal with bank lines (see the file comment). */
static enum pb_rc make_plan(const struct journal_doc *jd, struct plan *pl, struct pb_err *err)
{
    struct bank_net {
        const char *code;
        int64_t net;
    } *nets = calloc(jd->n + 1, sizeof *nets);
    int64_t debits = 0, credits = 0;
    size_t n_nets = 0, a = 0, i, k;
    int spend = 0, receive = 0;

    memset(pl, 0, sizeof *pl);
    pl->parts = calloc(jd->n + 2, sizeof *pl->parts);
    if (!nets || !pl->parts) {
        free(nets);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    for (i = 0; i < jd->n; i++) {
        const struct jline *l = &jd->lines[i];
        if (l->amount > 0 ? pb_money_add(debits, l->amount, &debits)
                          : pb_money_add(credits, l->amount, &credits)) {
            free(nets);
            return pb_err_set(err, PB_ERR_PERMANENT, "journal %s: the amounts are too large",
                              jd->reference);
        }
        if (!l->bank) {
            spend |= l->amount > 0;
            receive |= l->amount < 0;
            continue;
        }
        for (k = 0; k < n_nets && strcasecmp(nets[k].code, l->account); k++)
            ;
        if (k == n_nets)
            nets[n_nets++].code = l->account;
        nets[k].net += l->amount; /* cannot overflow: |sum| <= debits or -credits */
    }
    if (debits + credits != 0) {
        char d[PB_MONEY_DECIMAL_MAX] = "", cr[PB_MONEY_DECIMAL_MAX] = "";
        free(nets);
        pb_money_format_decimal(debits, jd->currency, d, sizeof d, NULL);
        pb_money_format_decimal(credits, jd->currency, cr, sizeof cr, NULL);
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "journal %s: the lines do not balance: the total debits (%s) must "
                          "equal total credits (%s); nothing was posted",
                          jd->reference, d, cr);
    }
    for (k = 1; k < n_nets; k++) /* the largest credit; ties: the first */
        if (nets[k].net < nets[a].net)
            a = k;
    pl->anchor = nets[a].code;
    for (k = 0; k < n_nets; k++) {
        struct part *p = &pl->parts[pl->n];
        if (k == a || nets[k].net == 0)
            continue;
        p->kind = PART_TRANSFER;
        p->from = nets[k].net > 0 ? pl->anchor : nets[k].code;
        p->to = nets[k].net > 0 ? nets[k].code : pl->anchor;
        p->amount = nets[k].net > 0 ? nets[k].net : -nets[k].net;
        if (pl->n == 0)
            snprintf(p->ref, sizeof p->ref, "%s", jd->mark);
        else
            snprintf(p->ref, sizeof p->ref, "%s #%zu", jd->mark, pl->n + 1);
        pl->n++;
    }
    pl->n_transfers = pl->n;
    if (spend) {
        pl->parts[pl->n].kind = PART_SPEND;
        snprintf(pl->parts[pl->n++].ref, sizeof pl->parts[0].ref, "%s", jd->mark);
    }
    if (receive) {
        pl->parts[pl->n].kind = PART_RECEIVE;
        snprintf(pl->parts[pl->n++].ref, sizeof pl->parts[0].ref, "%s", jd->mark);
    }
    free(nets);
    if (pl->n == 0)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "journal %s moves no money (every amount is 0): nothing to post",
                          jd->reference);
    return PB_OK;
}

/* Find the parts already in Xero: their Reference starts with the mark. */
static enum pb_rc find_parts(struct pb_connection *c, struct pb_call_ctx *ctx,
                             const struct journal_doc *jd, struct plan *pl, struct pb_err *err)
{
    char where[sizeof jd->mark + 40];
    int want_txn = pl->n > pl->n_transfers;

    snprintf(where, sizeof where, "Reference.StartsWith(\"%s\")", jd->mark);
    if (pl->n_transfers) {
        /* GET /BankTransfers has no paging: one reply holds every match */
        json_t *root, *arr, *el;
        size_t i;
        enum pb_rc rc = get_page(c, ctx, "BankTransfers", where, 0, &root, &arr, err);
        if (rc)
            return rc;
        json_array_foreach(arr, i, el)
        {
            const char *id = str_of(el, "BankTransferID"), *ref = str_of(el, "Reference");
            for (size_t k = 0; id[0] && k < pl->n_transfers; k++)
                if (!pl->parts[k].id[0] && !strcmp(ref, pl->parts[k].ref))
                    snprintf(pl->parts[k].id, sizeof pl->parts[k].id, "%s", id);
        }
        json_decref(root);
    }
    for (int page = 1; want_txn; page++) {
        json_t *root, *arr, *el;
        size_t i;
        int last;
        enum pb_rc rc;
        if (page > XERO_JOURNAL_PAGES_MAX)
            return pb_err_set(err, PB_ERR_PERMANENT,
                              "more than %d pages of bank transactions match \"%s\": the "
                              "look-up cannot prove the journal was not posted",
                              XERO_JOURNAL_PAGES_MAX, jd->mark);
        rc = get_page(c, ctx, "BankTransactions", where, page, &root, &arr, err);
        if (rc)
            return rc;
        json_array_foreach(arr, i, el)
        {
            const char *id = str_of(el, "BankTransactionID"), *type = str_of(el, "Type");
            for (size_t k = pl->n_transfers; id[0] && k < pl->n; k++)
                if (!pl->parts[k].id[0] && !strcmp(str_of(el, "Reference"), pl->parts[k].ref) &&
                    !strcmp(type, part_word(pl->parts[k].kind)))
                    snprintf(pl->parts[k].id, sizeof pl->parts[k].id, "%s", id);
        }
        last = last_page(root, arr, page);
        json_decref(root);
        if (last)
            break;
    }
    return PB_OK;
}

/* The body element of part k. */
static json_t *part_element(struct pb_connection *c, const struct journal_doc *jd,
                            const struct plan *pl, const struct part *p)
{
    json_t *items;
    if (p->kind == PART_TRANSFER)
        return json_pack("{s:{s:s},s:{s:s},s:o,s:s,s:s}", "FromBankAccount", "Code", p->from,
                         "ToBankAccount", "Code", p->to, "Amount", decimal(jd, p->amount),
                         "Date", jd->date, "Reference", p->ref);
    items = json_array();
    for (size_t i = 0; items && i < jd->n; i++) {
        const struct jline *l = &jd->lines[i];
        const char *desc = l->description[0] ? l->description : jd->narration;
        json_t *li;
        if (l->bank || l->amount == 0 || (l->amount > 0) != (p->kind == PART_SPEND))
            continue;
        li = json_pack("{s:o,s:s}", "LineAmount", decimal(jd, l->amount > 0 ? l->amount
                                                                            : -l->amount),
                       "AccountCode", l->account);
        if (li && desc[0])
            json_object_set_new(li, "Description", json_string(desc));
        if (!li || json_array_append_new(items, li)) {
            json_decref(items);
            items = NULL;
        }
    }
    return items ? json_pack("{s:s,s:{s:s},s:{s:s},s:s,s:s,s:s,s:o}", "Type",
                             part_word(p->kind), "Contact", "Name",
                             pb__xero_state(c)->journal_contact, "BankAccount", "Code",
                             pl->anchor, "Date", jd->date, "Reference", p->ref,
                             "LineAmountTypes", "NoTax", "LineItems", items)
                 : NULL;
}

/* erp_id: the parts' ids joined by ',', or the first and how many more. */
static void parts_id(const struct plan *pl, char *erp_id, size_t len)
{
    size_t used = 0;
    for (size_t k = 0; k < pl->n; k++) {
        int w = snprintf(erp_id + used, len - used, "%s%s", k ? "," : "", pl->parts[k].id);
        if (w < 0 || (size_t)w >= len - used) {
            snprintf(erp_id, len, "%s +%zu more", pl->parts[0].id, pl->n - 1);
            return;
        }
        used += (size_t)w;
    }
}

static enum pb_rc post_bank(struct pb_connection *c, struct pb_call_ctx *ctx,
                            const struct journal_doc *jd, char *erp_id, size_t erp_id_len,
                            struct pb_err *err)
{
    struct plan pl;
    enum pb_rc rc;

    if ((rc = make_plan(jd, &pl, err)) || (rc = find_parts(c, ctx, jd, &pl, err)))
        goto out;
    for (size_t k = 0; k < pl.n; k++) {
        struct part *p = &pl.parts[k];
        char what[256], key_ref[sizeof p->ref + 16];
        size_t posted = 0;
        if (p->id[0])
            continue;
        for (size_t j = 0; j < k; j++)
            posted += pl.parts[j].id[0] != '\0';
        snprintf(what, sizeof what, "journal %s, part %zu of %zu (%s%s%s%s%s)%s", jd->reference,
                 k + 1, pl.n, part_word(p->kind), p->kind == PART_TRANSFER ? " " : " on ",
                 p->kind == PART_TRANSFER ? p->from : pl.anchor,
                 p->kind == PART_TRANSFER ? " -> " : "", p->kind == PART_TRANSFER ? p->to : "",
                 posted ? "; the parts before it are posted and a retry posts only the rest"
                        : "");
        snprintf(key_ref, sizeof key_ref, "%s %s", part_word(p->kind), p->ref);
        if (p->kind == PART_TRANSFER)
            rc = put_one(c, ctx, "/BankTransfers", "BankTransfers", "BankTransferID",
                         "journal.transfer", key_ref, part_element(c, jd, &pl, p), what, p->id,
                         sizeof p->id, err);
        else
            rc = put_one(c, ctx, "/BankTransactions?summarizeErrors=false", "BankTransactions",
                         "BankTransactionID", "journal.banktransaction", key_ref,
                         part_element(c, jd, &pl, p), what, p->id, sizeof p->id, err);
        if (rc)
            goto out;
    }
    parts_id(&pl, erp_id, erp_id_len);
out:
    free(pl.parts);
    return rc;
}

enum pb_rc pb__xero_post_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                                 const json_t *journal, char *erp_id, size_t erp_id_len,
                                 struct pb_err *err)
{
    struct journal_doc jd;
    char base[4];
    enum pb_rc rc;
    int bank = 0;

    if (erp_id && erp_id_len)
        erp_id[0] = '\0';
    if (!pb__xero_state(c))
        return pb_err_set(err, PB_ERR_INTERNAL, "xero connection used before init");
    if (!ctx || !ctx->http || !erp_id || erp_id_len == 0)
        return pb_err_set(err, PB_ERR_INTERNAL, "post_journal needs an HTTP client and erp_id");
    if ((rc = read_journal(journal, &jd, err)))
        goto out;
    if ((rc = base_currency(c, ctx, base, err)))
        goto out;
    if (strcmp(base, jd.currency) != 0) {
        rc = pb_err_set(err, PB_ERR_PERMANENT,
                        "journal %s is in %s but Xero journals are posted in the organisation's "
                        "base currency %s (settings.base_currency or GET /Organisation): post "
                        "it converted to %s",
                        jd.reference, jd.currency, base, base);
        goto out;
    }
    if ((rc = account_types(c, ctx, &jd, err)))
        goto out;
    for (size_t i = 0; i < jd.n; i++)
        bank |= jd.lines[i].bank;
    rc = bank ? post_bank(c, ctx, &jd, erp_id, erp_id_len, err)
              : post_manual(c, ctx, &jd, erp_id, erp_id_len, err);
    if (rc)
        erp_id[0] = '\0';
out:
    free(jd.lines);
    return rc;
}
