/*
 * connectors/syspro/syspro_recon.c: the SYSPRO connector's side of
 * reconciliation (docs/reconciliation.md): ledger() reads back the AR
 * payments and credit notes paybridge posted, and post_journal() posts one
 * balanced GL journal, once per reference. Both go through the connection's
 * one e.net session (syspro_session.c: logon reuse, one logon again on an
 * expired UserId, "ERROR:" text and business errors inside a 200,
 * Windows-1252 replies, traces without the session id).
 *
 * ledger(). Query/Query on business_objects.ar_payment_query (ARSQPY, an
 * unverified name: a site may have to point it at a query object of its own)
 * with
 *   <Query><Option><DateFrom>YYYY-MM-DD</DateFrom><DateTo>...</DateTo>
 *     <IncludePayments>Y</IncludePayments><IncludeCreditNotes>Y</IncludeCreditNotes>
 *     <MaxRecords>settings.ledger_page_size</MaxRecords>
 *     <StartAfterKey>the previous page's LastKey</StartAfterKey></Option></Query>
 * answered by <Transaction> elements (DocumentType, Customer, Reference,
 * TrnDate, TrnYear, TrnMonth, Journal, Entry, Invoice, Value, Currency) and
 * <QueryStatus><MoreRecords>Y|N</MoreRecords><LastKey>k</LastKey>. Every
 * page is read. Each transaction becomes one record (connector.h):
 *   DocumentType P                  "payment", +Value, record_id
 *                                   "TrnYear/TrnMonth/Journal/Entry" (the
 *                                   erp_id arpayment.post returned)
 *   credit_note_document_type (C)   "refund", -|Value|, record_id = Invoice
 *                                   (the erp_id of creditnote.create)
 *   D (a debit note: a chargeback   "payment", +Value, record_id = Invoice
 *   won back, opayo-syspro.yaml)
 *   anything else                   left out (not a customer receipt)
 * "reference" is the Reference paybridge posted (Opayo's vendorTxCode for a
 * payment, the refund's reference for a credit note); "gateway_ref" is ""
 * (ARSTPY has no element that carries Opayo's transactionId, so the matcher
 * pairs by merchant reference). Money is read exactly (core/money.h) in the
 * record's Currency, else settings.currency. A record that cannot be read
 * (no date, a value that is not a decimal of its currency) fails the whole
 * read, permanently, naming the record: leaving it out would show up as a
 * false break, and a guess would be worse. Records dated outside the range
 * are dropped, in case a query object ignores DateFrom / DateTo.
 *
 * post_journal(). Idempotent by reference, on every attempt: first Query
 * business_objects.gl_journal_query (GENQJL, unverified) with
 * <Query><Key><Reference>ref</Reference></Key></Query>; a <JournalHeader>
 * with that Reference is the journal, and its "GlYear/GlPeriod/Journal" is
 * returned without posting. Otherwise Transaction/Post on
 * business_objects.gl_journal (GENTJL, unverified) with
 *   XmlParameters <PostGlJournal><Parameters><IgnoreWarnings>N</IgnoreWarnings>
 *     <ApplyIfEntireDocumentValid>Y</ApplyIfEntireDocumentValid>
 *     <ValidateOnly>N</ValidateOnly></Parameters></PostGlJournal>
 *     (+ settings.parameters.gl_journal)
 *   XmlIn <PostGlJournal><Item><Header><JournalDate/><Reference/><Notation/>
 *     </Header><Line><LedgerCode/><EntryType>D|C</EntryType>
 *     <EntryValue>10.00</EntryValue><Comment/></Line>...</Item></PostGlJournal>
 * and the reply's GlYear, GlPeriod and Journal make the id. A refusal is
 * settled by the same look-up (as the AR postings do): found means it is
 * there; not found is PB_ERR_PERMANENT with SYSPRO's words (an unknown
 * ledger code, a closed period, an unbalanced journal). The journal is
 * checked before anything is sent (2..200 lines, integer amounts other than
 * 0 that sum to 0, a reference of 1..50 characters, a real date, the
 * company's currency when settings.currency is set): such a journal is
 * PB_ERR_PERMANENT without a call. The narration (Notation) and the line
 * descriptions (Comment) are free text and are cut to 255 characters.
 *
 * Concurrency: two calls with the same reference at the same moment could
 * both miss the look-up and both post; the reconciliation run posts its
 * journals one after the other, and SYSPRO has no unique key on a journal
 * reference that could refuse the second. Documented, not hidden.
 *
 * Rejected designs.
 *   - Reading payments through ARSQRY per customer (the look-up the AR
 *     commands use): one call per customer, and the ledger must also show
 *     payments to customers paybridge does not know of.
 *   - Keeping a journal's id in the connector state for the retry: the state
 *     dies with the process; the look-up asks SYSPRO, which outlives it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connectors/settlement/settlement.h"
#include "core/money.h"
#include "syspro_internal.h"

#define LEDGER_PAGES_MAX 10000 /* a query that never ends is refused */
#define KEY_MAX 128
#define JOURNAL_REFERENCE_MAX 50
#define JOURNAL_LINES_MAX 200
#define JOURNAL_TEXT_MAX 255 /* narration and line descriptions sent, in characters */
#define ACCOUNT_MAX 35       /* a SYSPRO GL code */

/* ---- small helpers ------------------------------------------------------------------------ */

/* Text of the child `name` of n into buf ("" when absent). */
static const char *child_text(xmlNodePtr n, const char *name, char *buf, size_t len)
{
    return pb__syspro_text(pb__syspro_child(n, name), buf, len);
}

/* "YYYY-MM-DD", optionally followed by a time ("T..." or " ..."), to days. */
static int read_date(const char *text, int32_t *days)
{
    struct pb_err e = {0};
    size_t n = strlen(text);
    if (n < 10 || (n > 10 && text[10] != 'T' && text[10] != ' '))
        return 0;
    return pb_settlement_date_parse(text, 10, "%Y-%m-%d", days, &e) == PB_OK;
}

static int printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Serialise a request document (and free it); NULL sets err. */
static char *dump_doc(xmlDocPtr doc, const char *what, struct pb_err *err)
{
    char *s = doc ? pb__syspro_xml_dump(doc) : NULL;
    if (doc)
        xmlFreeDoc(doc);
    if (!s)
        pb_err_set(err, PB_ERR_NOMEM,
                   "cannot build the %s XML (out of memory, or larger than %u bytes)", what,
                   SYSPRO_XML_MAX);
    return s;
}

/* ---- ledger -------------------------------------------------------------------------------- */

/* All <Transaction> elements below n, in document order, into out[]. */
static void collect_transactions(xmlNodePtr n, xmlNodePtr **out, size_t *count, size_t *cap)
{
    for (xmlNodePtr ch = n ? n->children : NULL; ch; ch = ch->next) {
        if (ch->type != XML_ELEMENT_NODE)
            continue;
        if (xmlStrcasecmp(ch->name, BAD_CAST "Transaction") == 0) {
            if (*count == *cap) {
                size_t ncap = *cap ? *cap * 2 : 64;
                xmlNodePtr *grown = realloc(*out, ncap * sizeof *grown);
                if (!grown)
                    return;
                *out = grown;
                *cap = ncap;
            }
            (*out)[(*count)++] = ch;
            continue;
        }
        collect_transactions(ch, out, count, cap);
    }
}

/* One <Transaction> as a record appended to `records`; PB_OK also when it is
 * left out (another document type, or dated outside the range). */
static enum pb_rc add_record(const struct syspro_state *st, xmlNodePtr t, int32_t from_day,
                             int32_t to_day, json_t *records, struct pb_err *err)
{
    char type[16], reference[KEY_MAX], date[40], value[64], currency[16], id[KEY_MAX];
    char year[16], month[16], journal[32], entry[32], invoice[KEY_MAX], day[16];
    const char *kind;
    int32_t days;
    int64_t minor;
    json_t *rec;

    child_text(t, "DocumentType", type, sizeof type);
    child_text(t, "Reference", reference, sizeof reference);
    child_text(t, "Invoice", invoice, sizeof invoice);
    if (strcasecmp(type, "P") == 0)
        kind = "payment";
    else if (strcasecmp(type, st->credit_note_type) == 0)
        kind = "refund";
    else if (strcasecmp(type, "D") == 0)
        kind = "payment";
    else
        return PB_OK;

    child_text(t, "TrnYear", year, sizeof year);
    child_text(t, "TrnMonth", month, sizeof month);
    child_text(t, "Journal", journal, sizeof journal);
    child_text(t, "Entry", entry, sizeof entry);
    if (strcasecmp(type, "P") == 0 && year[0] && month[0] && journal[0] && entry[0])
        snprintf(id, sizeof id, "%s/%s/%s/%s", year, month, journal, entry);
    else if (strcasecmp(type, "P") != 0 && invoice[0])
        snprintf(id, sizeof id, "%s", invoice);
    else if (journal[0])
        snprintf(id, sizeof id, "%s%s%s", journal, entry[0] ? "/" : "", entry);
    else
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "SYSPRO %s: a %s transaction with Reference '%s' has no %s to identify "
                          "it; check the query object's reply",
                          st->bo.ar_payment_query, type, reference,
                          strcasecmp(type, "P") == 0 ? "Journal/Entry" : "Invoice");

    if (!read_date(child_text(t, "TrnDate", date, sizeof date), &days))
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "SYSPRO %s: transaction %s (Reference '%s') has TrnDate '%s', not a "
                          "YYYY-MM-DD date",
                          st->bo.ar_payment_query, id, reference, date);
    if (days < from_day || days > to_day)
        return PB_OK;
    if (!child_text(t, "Currency", currency, sizeof currency)[0])
        snprintf(currency, sizeof currency, "%s", st->currency);
    if (!currency[0])
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "SYSPRO %s: transaction %s names no Currency: set settings.currency "
                          "to the company's local currency",
                          st->bo.ar_payment_query, id);
    if (!pb_currency_valid(currency))
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "SYSPRO %s: transaction %s has Currency '%s', not an ISO 4217 code",
                          st->bo.ar_payment_query, id, currency);
    if (pb_money_parse_decimal(child_text(t, "Value", value, sizeof value), currency, &minor,
                               NULL) != PB_OK)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "SYSPRO %s: transaction %s has Value '%s', not an exact %s amount",
                          st->bo.ar_payment_query, id, value, currency);
    if (strcmp(kind, "refund") == 0 && minor > 0)
        minor = -minor;
    pb_settlement_date_format(days, day, sizeof day);
    rec = json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:s}", "record_id", id, "kind", kind, "reference",
                    reference, "gateway_ref", "", "amount_minor", (json_int_t)minor, "currency",
                    currency, "date", day);
    if (!rec || json_array_append_new(records, rec) != 0)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    return PB_OK;
}

static xmlDocPtr ledger_query_doc(const struct syspro_state *st, const char *from, const char *to,
                                  const char *start_after)
{
    xmlNodePtr root, opt;
    xmlDocPtr q = pb__syspro_xml_new("Query", &root);
    char max[32];

    if (!q)
        return NULL;
    snprintf(max, sizeof max, "%ld", st->ledger_page_size);
    opt = xmlNewChild(root, NULL, BAD_CAST "Option", NULL);
    if (!opt || !xmlNewTextChild(opt, NULL, BAD_CAST "DateFrom", BAD_CAST from) ||
        !xmlNewTextChild(opt, NULL, BAD_CAST "DateTo", BAD_CAST to) ||
        !xmlNewTextChild(opt, NULL, BAD_CAST "IncludePayments", BAD_CAST "Y") ||
        !xmlNewTextChild(opt, NULL, BAD_CAST "IncludeCreditNotes", BAD_CAST "Y") ||
        !xmlNewTextChild(opt, NULL, BAD_CAST "MaxRecords", BAD_CAST max) ||
        (start_after[0] &&
         !xmlNewTextChild(opt, NULL, BAD_CAST "StartAfterKey", BAD_CAST start_after))) {
        xmlFreeDoc(q);
        return NULL;
    }
    return q;
}

enum pb_rc pb__syspro_ledger(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                             int32_t to_day, json_t *records, struct pb_err *err)
{
    struct syspro_state *st = pb__syspro_state(c);
    char from[16], to[16], start_after[KEY_MAX] = "";
    enum pb_rc rc = PB_OK;

    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "syspro connection used before init");
    if (!ctx || !ctx->http || !json_is_array(records))
        return pb_err_set(err, PB_ERR_INTERNAL, "ledger needs an HTTP client and a records array");
    if (from_day > to_day)
        return pb_err_set(err, PB_ERR_INTERNAL, "ledger: from_day %d is after to_day %d",
                          (int)from_day, (int)to_day);
    ctx->retry_after_s = -1;
    pb_settlement_date_format(from_day, from, sizeof from);
    pb_settlement_date_format(to_day, to, sizeof to);

    for (int page = 0;; page++) {
        struct syspro_request rq = {SYSPRO_QUERY, st->bo.ar_payment_query, NULL, NULL};
        struct syspro_reply reply = {0};
        xmlNodePtr *txns = NULL, root;
        size_t n = 0, cap = 0;
        char more[8], last[KEY_MAX];
        char *xml_in;

        if (page >= LEDGER_PAGES_MAX)
            return pb_err_set(err, PB_ERR_PERMANENT,
                              "SYSPRO %s: more than %d pages for %s..%s; raise "
                              "settings.ledger_page_size or reconcile fewer days at once",
                              st->bo.ar_payment_query, LEDGER_PAGES_MAX, from, to);
        xml_in = dump_doc(ledger_query_doc(st, from, to, start_after), "ledger query", err);
        if (!xml_in)
            return PB_ERR_NOMEM;
        rq.xml_in = xml_in;
        rc = pb__syspro_call(c, ctx, &rq, &reply, err);
        free(xml_in);
        if (rc)
            return rc;
        if (reply.refused) {
            /* "no payments in the range" is an empty ledger; the same words
             * in "ERROR:" text (no XML) are about the object itself */
            int empty = reply.doc && pb__syspro_says_not_found(reply.message);
            if (!empty)
                rc = pb_err_set(err, PB_ERR_PERMANENT,
                                "SYSPRO refused the AR payment query (%s) for %s..%s: %s; check "
                                "settings.business_objects.ar_payment_query and that the "
                                "operator may use it",
                                st->bo.ar_payment_query, from, to, reply.message);
            pb__syspro_reply_free(&reply);
            return rc;
        }
        root = xmlDocGetRootElement(reply.doc);
        collect_transactions(root, &txns, &n, &cap);
        for (size_t i = 0; i < n && rc == PB_OK; i++)
            rc = add_record(st, txns[i], from_day, to_day, records, err);
        free(txns);
        pb__syspro_find_text(root, "MoreRecords", more, sizeof more);
        pb__syspro_find_text(root, "LastKey", last, sizeof last);
        pb__syspro_reply_free(&reply);
        if (rc)
            return rc;
        if (more[0] != 'Y' && more[0] != 'y')
            return PB_OK;
        if (!last[0] || strcmp(last, start_after) == 0)
            return pb_err_set(err, PB_ERR_PERMANENT,
                              "SYSPRO %s: the reply says MoreRecords Y but gives no new LastKey "
                              "(after '%s'); the query cannot be paged",
                              st->bo.ar_payment_query, start_after);
        snprintf(start_after, sizeof start_after, "%s", last);
    }
}

/* ---- post_journal ---------------------------------------------------------------------------- */

/* A checked journal line. */
struct jline {
    const char *account;
    int64_t minor; /* debit > 0, credit < 0 */
    const char *description;
};

struct journal {
    const char *reference, *date, *narration, *currency;
    struct jline lines[JOURNAL_LINES_MAX];
    size_t n;
};

static enum pb_rc check_text(json_t *v, const char *what, int required, size_t max_chars,
                             const char **out, struct pb_err *err)
{
    *out = "";
    if (!v || json_is_null(v)) {
        if (required)
            return pb_err_set(err, PB_ERR_PERMANENT, "journal.%s: required", what);
        return PB_OK;
    }
    if (!json_is_string(v))
        return pb_err_set(err, PB_ERR_PERMANENT, "journal.%s: must be a string", what);
    *out = json_string_value(v);
    if (required && !(*out)[0])
        return pb_err_set(err, PB_ERR_PERMANENT, "journal.%s: must not be empty", what);
    if (!printable(*out))
        return pb_err_set(err, PB_ERR_PERMANENT, "journal.%s: contains a control character", what);
    if (utf8_chars(*out) > max_chars)
        return pb_err_set(err, PB_ERR_PERMANENT, "journal.%s: longer than %zu characters", what,
                          max_chars);
    return PB_OK;
}

static enum pb_rc check_journal(const struct syspro_state *st, const json_t *j, struct journal *out,
                                struct pb_err *err)
{
    json_t *lines, *l;
    int64_t sum = 0, debits = 0;
    int32_t days;
    size_t i;
    enum pb_rc rc;

    if (!json_is_object(j))
        return pb_err_set(err, PB_ERR_PERMANENT, "journal: must be a JSON object");
    if ((rc = check_text(json_object_get(j, "reference"), "reference", 1, JOURNAL_REFERENCE_MAX,
                         &out->reference, err)) ||
        (rc = check_text(json_object_get(j, "date"), "date", 1, 10, &out->date, err)) ||
        (rc = check_text(json_object_get(j, "narration"), "narration", 0, (size_t)-1,
                         &out->narration, err)) ||
        (rc = check_text(json_object_get(j, "currency"), "currency", 1, 3, &out->currency, err)))
        return rc;
    if (!read_date(out->date, &days) || strlen(out->date) != 10)
        return pb_err_set(err, PB_ERR_PERMANENT, "journal.date: '%s' is not a YYYY-MM-DD date",
                          out->date);
    if (!pb_currency_valid(out->currency))
        return pb_err_set(err, PB_ERR_PERMANENT, "journal.currency: '%s' is not an ISO 4217 code",
                          out->currency);
    if (st->currency[0] && strcmp(out->currency, st->currency) != 0)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "journal '%s' is in %s, but SYSPRO's general ledger is kept in the "
                          "company's currency %s (settings.currency): convert it first",
                          out->reference, out->currency, st->currency);
    lines = json_object_get(j, "lines");
    if (!json_is_array(lines) || json_array_size(lines) < 2 ||
        json_array_size(lines) > JOURNAL_LINES_MAX)
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "journal '%s': lines must be an array of 2 to %d lines", out->reference,
                          JOURNAL_LINES_MAX);
    out->n = 0;
    json_array_foreach(lines, i, l)
    {
        struct jline *jl = &out->lines[out->n++];
        json_t *amount = json_object_get(l, "amount_minor");
        char what[64];
        snprintf(what, sizeof what, "lines[%zu].account", i);
        if (!json_is_object(l))
            return pb_err_set(err, PB_ERR_PERMANENT, "journal.lines[%zu]: must be an object", i);
        if ((rc = check_text(json_object_get(l, "account"), what, 1, ACCOUNT_MAX, &jl->account,
                             err)))
            return rc;
        snprintf(what, sizeof what, "lines[%zu].description", i);
        if ((rc = check_text(json_object_get(l, "description"), what, 0, (size_t)-1,
                             &jl->description, err)))
            return rc;
        if (!json_is_integer(amount) || json_integer_value(amount) == 0 ||
            json_integer_value(amount) == INT64_MIN)
            return pb_err_set(err, PB_ERR_PERMANENT,
                              "journal.lines[%zu].amount_minor: must be a non-zero integer (minor "
                              "units; debit > 0, credit < 0)",
                              i);
        jl->minor = (int64_t)json_integer_value(amount);
        if (pb_money_add(sum, jl->minor, &sum) != PB_OK ||
            (jl->minor > 0 && pb_money_add(debits, jl->minor, &debits) != PB_OK))
            return pb_err_set(err, PB_ERR_PERMANENT, "journal '%s': the amounts overflow",
                              out->reference);
    }
    if (sum != 0) {
        char d[PB_MONEY_DECIMAL_MAX], diff[PB_MONEY_DECIMAL_MAX];
        pb_money_format_decimal(debits, out->currency, d, sizeof d, NULL);
        pb_money_format_decimal(sum, out->currency, diff, sizeof diff, NULL);
        return pb_err_set(err, PB_ERR_PERMANENT,
                          "journal '%s' is unbalanced: debits %s %s, debits - credits = %s; "
                          "nothing was posted",
                          out->reference, d, out->currency, diff);
    }
    return PB_OK;
}

/* The <JournalHeader> below n whose Reference is `reference`, or NULL. */
static xmlNodePtr find_header(xmlNodePtr n, const char *reference)
{
    for (xmlNodePtr ch = n ? n->children : NULL; ch; ch = ch->next) {
        char text[KEY_MAX];
        xmlNodePtr hit;
        if (ch->type != XML_ELEMENT_NODE)
            continue;
        if (xmlStrcasecmp(ch->name, BAD_CAST "JournalHeader") == 0 &&
            strcmp(child_text(ch, "Reference", text, sizeof text), reference) == 0)
            return ch;
        if ((hit = find_header(ch, reference)) != NULL)
            return hit;
    }
    return NULL;
}

/* "GlYear/GlPeriod/Journal" of an element that has them (Journal alone when
 * the year or period is missing); NULL without a Journal. */
static const char *journal_key(xmlNodePtr n, char *out, size_t len)
{
    char year[16], period[16], journal[32];
    if (!pb__syspro_find_text(n, "Journal", journal, sizeof journal))
        return NULL;
    pb__syspro_find_text(n, "GlYear", year, sizeof year);
    pb__syspro_find_text(n, "GlPeriod", period, sizeof period);
    if (year[0] && period[0])
        snprintf(out, len, "%s/%s/%s", year, period, journal);
    else
        snprintf(out, len, "%s", journal);
    return out;
}

/* Look the journal up by reference: PB_OK with *found (and erp_id filled
 * when 1), or the failure of the look-up (err set). */
static enum pb_rc find_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                               const struct syspro_state *st, const char *reference, char *erp_id,
                               size_t erp_id_len, int *found, struct pb_err *err)
{
    struct syspro_request rq = {SYSPRO_QUERY, st->bo.gl_journal_query, NULL, NULL};
    struct syspro_reply reply = {0};
    xmlNodePtr root, key, header;
    xmlDocPtr q = pb__syspro_xml_new("Query", &root);
    enum pb_rc rc = PB_OK;
    char *xml_in;

    *found = 0;
    key = q ? xmlNewChild(root, NULL, BAD_CAST "Key", NULL) : NULL;
    if (key && !xmlNewTextChild(key, NULL, BAD_CAST "Reference", BAD_CAST reference))
        key = NULL;
    if (!key && q) {
        xmlFreeDoc(q);
        q = NULL;
    }
    if (!(xml_in = dump_doc(q, "journal look-up", err)))
        return PB_ERR_NOMEM;
    rq.xml_in = xml_in;
    rc = pb__syspro_call(c, ctx, &rq, &reply, err);
    free(xml_in);
    if (rc)
        return rc;
    if (reply.refused) {
        if (!reply.doc || !pb__syspro_says_not_found(reply.message))
            rc = pb_err_set(err, PB_ERR_PERMANENT,
                            "SYSPRO refused the look-up of GL journal '%s' (%s): %s; without it "
                            "a retry could post twice, so nothing was posted",
                            reference, st->bo.gl_journal_query, reply.message);
    } else if ((header = find_header(xmlDocGetRootElement(reply.doc), reference)) != NULL &&
               journal_key(header, erp_id, erp_id_len)) {
        *found = 1;
    }
    pb__syspro_reply_free(&reply);
    return rc;
}

/* A text child holding at most JOURNAL_TEXT_MAX characters of `text` (free
 * text for the accountant: cut, at a character boundary, rather than refuse
 * the journal for it). */
static xmlNodePtr add_text_cut(xmlNodePtr parent, const char *name, const char *text)
{
    size_t bytes = 0, chars = 0;
    xmlChar *cut;
    xmlNodePtr n;
    while (text[bytes] && chars < JOURNAL_TEXT_MAX) {
        bytes++;
        while (((unsigned char)text[bytes] & 0xC0) == 0x80)
            bytes++;
        chars++;
    }
    if (!(cut = xmlStrndup(BAD_CAST text, (int)bytes)))
        return NULL;
    n = xmlNewTextChild(parent, NULL, BAD_CAST name, cut);
    xmlFree(cut);
    return n;
}

static xmlDocPtr journal_doc(const struct journal *j)
{
    xmlNodePtr root, item, header;
    xmlDocPtr doc = pb__syspro_xml_new("PostGlJournal", &root);
    int ok;

    if (!doc)
        return NULL;
    item = xmlNewChild(root, NULL, BAD_CAST "Item", NULL);
    header = item ? xmlNewChild(item, NULL, BAD_CAST "Header", NULL) : NULL;
    ok = header && xmlNewTextChild(header, NULL, BAD_CAST "JournalDate", BAD_CAST j->date) &&
         xmlNewTextChild(header, NULL, BAD_CAST "Reference", BAD_CAST j->reference) &&
         (!j->narration[0] || add_text_cut(header, "Notation", j->narration));
    for (size_t i = 0; ok && i < j->n; i++) {
        const struct jline *l = &j->lines[i];
        char value[PB_MONEY_DECIMAL_MAX];
        xmlNodePtr line = xmlNewChild(item, NULL, BAD_CAST "Line", NULL);
        ok =
            line &&
            pb_money_format_decimal(l->minor > 0 ? l->minor : -l->minor, j->currency, value,
                                    sizeof value, NULL) == PB_OK &&
            xmlNewTextChild(line, NULL, BAD_CAST "LedgerCode", BAD_CAST l->account) &&
            xmlNewTextChild(line, NULL, BAD_CAST "EntryType", BAD_CAST(l->minor > 0 ? "D" : "C")) &&
            xmlNewTextChild(line, NULL, BAD_CAST "EntryValue", BAD_CAST value) &&
            (!l->description[0] || add_text_cut(line, "Comment", l->description));
    }
    if (!ok) {
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

enum pb_rc pb__syspro_post_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                                   const json_t *journal, char *erp_id, size_t erp_id_len,
                                   struct pb_err *err)
{
    static const char *const defaults[] = {
        "IgnoreWarnings", "N", "ApplyIfEntireDocumentValid", "Y", "ValidateOnly", "N", NULL,
    };
    struct syspro_state *st = pb__syspro_state(c);
    struct syspro_request rq = {SYSPRO_TRANSACTION_POST, NULL, NULL, NULL};
    struct syspro_reply reply = {0};
    struct journal *j;
    xmlNodePtr params;
    char *xml_in = NULL, *xml_params = NULL;
    char id[KEY_MAX];
    enum pb_rc rc = PB_OK;
    int found = 0;

    if (!st)
        return pb_err_set(err, PB_ERR_INTERNAL, "syspro connection used before init");
    if (!ctx || !ctx->http || !erp_id || erp_id_len == 0)
        return pb_err_set(err, PB_ERR_INTERNAL, "post_journal needs an HTTP client and erp_id");
    erp_id[0] = '\0';
    ctx->retry_after_s = -1;
    if (!(j = calloc(1, sizeof *j)))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    if ((rc = check_journal(st, journal, j, err)))
        goto out;

    /* 1. posted already (an earlier attempt whose reply was lost, or an earlier run)? */
    if ((rc = find_journal(c, ctx, st, j->reference, erp_id, erp_id_len, &found, err)) || found)
        goto out;

    /* 2. the posting */
    xml_in = dump_doc(journal_doc(j), "GL journal", err);
    xml_params = xml_in ? dump_doc(pb__syspro_parameters_doc("PostGlJournal", defaults,
                                                             st->params_gl_journal, &params),
                                   "GL journal parameters", err)
                        : NULL;
    if (!xml_in || !xml_params) {
        rc = PB_ERR_NOMEM;
        goto out;
    }
    rq.business_object = st->bo.gl_journal;
    rq.xml_parameters = xml_params;
    rq.xml_in = xml_in;
    if ((rc = pb__syspro_call(c, ctx, &rq, &reply, err)))
        goto out;

    /* 3. the outcome */
    if (reply.refused) {
        char refusal[SYSPRO_MESSAGE_MAX];
        snprintf(refusal, sizeof refusal, "%s", reply.message);
        pb__syspro_reply_free(&reply);
        rc = find_journal(c, ctx, st, j->reference, erp_id, erp_id_len, &found, err);
        if (rc == PB_OK && !found)
            rc = pb_err_set(err, PB_ERR_PERMANENT, "SYSPRO refused GL journal '%s' (%s): %s",
                            j->reference, st->bo.gl_journal, refusal);
        goto out;
    }
    if (!journal_key(xmlDocGetRootElement(reply.doc), id, sizeof id)) {
        rc = pb_err_set(err, PB_ERR_TRANSIENT,
                        "SYSPRO's %s reply names no Journal; will retry (the retry looks the "
                        "journal up by reference '%s' first)",
                        st->bo.gl_journal, j->reference);
        goto out;
    }
    snprintf(erp_id, erp_id_len, "%s", id);
out:
    pb__syspro_reply_free(&reply);
    free(xml_in);
    free(xml_params);
    free(j);
    return rc;
}
