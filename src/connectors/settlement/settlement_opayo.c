/*
 * connectors/settlement/settlement_opayo.c: replies of the Opayo (Sage Pay)
 * Reporting & Admin API read into a settlement set (settlement_parse.h has
 * the contract; docs/settlement.md the element reference).
 *
 * The replies read (element names are matched case-insensitively):
 *
 *   <vspaccess><errorcode>0000</errorcode><timestamp>..</timestamp>
 *     getBatchList:   <batches><batch> header fields </batch>...</batches>
 *     getBatchDetail: <batch> header fields
 *                       <transactions><transaction> line fields </transaction>...
 *                       </transactions></batch>
 *     getTransactionList: <transactions><totalrows>N</totalrows><startrow>1</startrow>
 *                       <endrow>50</endrow><transaction> line fields </transaction>...
 *                     </transactions>
 *   </vspaccess>
 *   header fields: batchid, batchdate, settlementdate, currency, transactioncount,
 *                  grossamount, feeamount, netamount
 *   line fields:   vpstxid ("{GUID}", braces dropped), vendortxcode, transactiontype,
 *                  status, amount, fee, currency, started, batchid
 * A failed reply: <vspaccess><errorcode>0010</errorcode><error>..</error></vspaccess>.
 * The WIRE-FORMATS spec gives the envelope, the signature and the command
 * names; the element names inside the batch and transaction records are
 * paybridge's reading of Opayo's reporting guide and are not verified against
 * a live account (the sandbox speaks exactly this). Amounts are decimal text
 * in major units ("5.67"), dates "DD/MM/YYYY[ HH:MM:SS[.mmm]]" (ISO 8601 is
 * accepted too).
 *
 * How. libxml2's xmlTextReader walks the reply node by node; a record's
 * fields are collected as its child elements close, and the record is
 * committed only when its own end tag is read. So a truncated reply (a
 * dropped connection, a cut file) yields every complete record, none of the
 * partial one (whose "10.9" could be the start of "10.99"), and a bad entry
 * at the line where the XML stops. Streaming also keeps memory flat for a
 * getTransactionList of a busy month.
 *
 * Hostile input. No network (XML_PARSE_NONET), no DTD loading, no entity
 * substitution: a DOCTYPE or an entity reference stops the parse with a bad
 * entry, so neither XXE nor entity expansion can happen. Field text is capped
 * (FIELD_MAX); longer text is a bad record, not a buffer overrun.
 *
 * Owns nothing between calls. Thread-safe: libxml2 2.9 is thread-safe once
 * xmlInitParser() ran (called here, idempotent).
 *
 * Rejected designs.
 *   - xmlReadMemory with XML_PARSE_RECOVER: a recovered tree cannot tell a
 *     complete <amount>10.99</amount> from a cut <amount>10.9, and money
 *     must not be guessed.
 *   - XPath over a DOM: simpler to write, but a month's transaction list
 *     would sit in memory as a tree, and truncation has the same problem.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/parser.h>
#include <libxml/xmlreader.h>

#include "connectors/settlement/settlement_parse.h"
#include "core/money.h"

#define FIELD_MAX 160 /* bytes of one field's text */
#define DEPTH_MAX 16  /* elements nested deeper are ignored */

enum field_id {
    F_BATCHID,
    F_BATCHDATE,
    F_SETTLEMENTDATE,
    F_CURRENCY,
    F_TXCOUNT,
    F_GROSS,
    F_FEES,
    F_NET,
    F_VPSTXID,
    F_VENDORTXCODE,
    F_TXTYPE,
    F_STATUS,
    F_AMOUNT,
    F_FEE,
    F_STARTED,
    F_COUNT
};
static const char *const field_names[F_COUNT] = {
    "batchid",         "batchdate", "settlementdate", "currency", "transactioncount",
    "grossamount",     "feeamount", "netamount",      "vpstxid",  "vendortxcode",
    "transactiontype", "status",    "amount",         "fee",      "started"};

struct record {
    char v[F_COUNT][FIELD_MAX + 1];
    unsigned char set[F_COUNT];
    int too_long;  /* a field exceeded FIELD_MAX */
    uint32_t line; /* where its start tag is */
};

enum context { C_NONE, C_LIST_BATCH, C_DETAIL_BATCH, C_TXN };

struct parse {
    struct pb_settlement_set *set;
    const char *source;
    uint32_t load;
    struct pb_settlement_opayo_reply *reply;
    struct record batch, txn; /* the open records */
    int in_batch, in_txn;     /* which are open */
    int batch_is_detail;      /* the open batch is a getBatchDetail batch */
    int batch_committed;      /* its header became a set batch */
    int batch_skip;           /* its header was refused: skip its transactions */
    uint32_t batch_index;
    char field[FIELD_MAX + 1]; /* the text of the open field element */
    size_t field_len;
    int field_id;    /* -1 = not in a field */
    int field_owner; /* 1 = batch, 2 = txn, 3 = envelope (errorcode, error, paging) */
    char env_name[16];
    const char *names[DEPTH_MAX];
    int depth;
    char xml_error[200]; /* the first libxml2 error */
    uint32_t xml_error_line;
    int saw_vspaccess;
    int saw_errorcode;
    enum pb_rc fatal; /* a limit hit: stop */
    struct pb_err *err;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static int name_is(const char *a, const char *b)
{
    return a && strcasecmp(a, b) == 0;
}

static void on_xml_error(void *arg, xmlErrorPtr e)
{
    struct parse *p = arg;
    if (!e || p->xml_error[0])
        return;
    snprintf(p->xml_error, sizeof p->xml_error, "%s", e->message ? e->message : "XML error");
    size_t n = strlen(p->xml_error);
    while (n && (p->xml_error[n - 1] == '\n' || p->xml_error[n - 1] == ' '))
        p->xml_error[--n] = '\0';
    p->xml_error_line = e->line > 0 ? (uint32_t)e->line : 0;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* "DD/MM/YYYY", optionally followed by " HH:MM:SS[.fff]", or ISO 8601 "YYYY-MM-DD[T...]". */
static int opayo_date(const char *s, int32_t *out)
{
    int d, m, y, hh, mm, ss;
    size_t len = strlen(s);
    if (len >= 10 && s[2] == '/' && s[5] == '/' && !digits(s, 2, &d) && !digits(s + 3, 2, &m) &&
        !digits(s + 6, 4, &y)) {
        if (len > 10) {
            if (len < 19 || s[10] != ' ' || s[13] != ':' || s[16] != ':' ||
                digits(s + 11, 2, &hh) || digits(s + 14, 2, &mm) || digits(s + 17, 2, &ss) ||
                hh > 23 || mm > 59 || ss > 60)
                return -1;
            if (len > 19) {
                if (s[19] != '.' || len == 20)
                    return -1;
                for (size_t i = 20; i < len; i++)
                    if (!isdigit((unsigned char)s[i]))
                        return -1;
            }
        }
    } else if (len >= 10 && s[4] == '-' && s[7] == '-' && !digits(s, 4, &y) &&
               !digits(s + 5, 2, &m) && !digits(s + 8, 2, &d)) {
        if (len > 10 && s[10] != 'T')
            return -1;
    } else {
        return -1;
    }
    if (!pb_settlement_date_valid(y, (unsigned)m, (unsigned)d))
        return -1;
    *out = pb_settlement_days_from_civil(y, (unsigned)m, (unsigned)d);
    return 0;
}

static int field_of(const char *name)
{
    for (int f = 0; f < F_COUNT; f++)
        if (strcasecmp(field_names[f], name) == 0)
            return f;
    return -1;
}

/* Decimal text of a field -> minor units; 0, or -1 with a bad entry added. */
static int money_of(struct parse *p, const struct record *r, int f, const char *currency,
                    const char *what, int64_t *out)
{
    struct pb_err e = {0};
    enum pb_rc rc = pb_money_parse_decimal(r->v[f], currency, out, &e);
    if (rc == PB_OK)
        return 0;
    pb_settlement_bad_add(p->set, p->source, r->line, "%s <%s> \"%.40s\": %s", what, field_names[f],
                          r->v[f], e.msg);
    return -1;
}

static int currency_of(struct parse *p, const struct record *r, const char *fallback,
                       const char *what, char out[4])
{
    const char *c = r->set[F_CURRENCY] ? r->v[F_CURRENCY] : fallback;
    if (!c || !*c) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s has no <currency>", what);
        return -1;
    }
    if (!pb_currency_valid(c)) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s: unknown currency \"%.16s\"", what,
                              c);
        return -1;
    }
    memcpy(out, c, 4);
    return 0;
}

/* ---- committing records --------------------------------------------------------------------- */

/* The open batch's header -> a set batch. header_only for a batch list entry. */
static void commit_batch(struct parse *p, int header_only)
{
    struct record *r = &p->batch;
    char currency[4], what[200];
    int64_t gross = 0, fees = 0, net = 0;
    int declared = 0;
    uint32_t count = PB_SETTLEMENT_NO_COUNT;
    int32_t date = PB_SETTLEMENT_NO_DATE;
    struct pb_err e = {0};
    enum pb_rc rc;

    p->batch_committed = 1;
    p->batch_skip = 1;
    if (r->too_long) {
        pb_settlement_bad_add(p->set, p->source, r->line,
                              "batch: a field is longer than %d characters", FIELD_MAX);
        return;
    }
    if (!r->set[F_BATCHID] || !r->v[F_BATCHID][0]) {
        pb_settlement_bad_add(p->set, p->source, r->line, "batch without <batchid>");
        return;
    }
    if (strlen(r->v[F_BATCHID]) > PB_SETTLEMENT_ID_MAX) {
        pb_settlement_bad_add(p->set, p->source, r->line, "<batchid> is longer than %d characters",
                              PB_SETTLEMENT_ID_MAX);
        return;
    }
    snprintf(what, sizeof what, "batch %s", r->v[F_BATCHID]);
    if (currency_of(p, r, NULL, what, currency))
        return;
    if (r->set[F_GROSS] || r->set[F_FEES] || r->set[F_NET]) {
        if (!r->set[F_GROSS] || !r->set[F_FEES] || !r->set[F_NET]) {
            pb_settlement_bad_add(p->set, p->source, r->line,
                                  "%s: <grossamount>, <feeamount> and <netamount> go together",
                                  what);
            return;
        }
        if (money_of(p, r, F_GROSS, currency, what, &gross) ||
            money_of(p, r, F_FEES, currency, what, &fees) ||
            money_of(p, r, F_NET, currency, what, &net))
            return;
        declared = 1;
    }
    if (r->set[F_TXCOUNT]) {
        char *end;
        unsigned long long n;
        if (!isdigit((unsigned char)r->v[F_TXCOUNT][0]) ||
            (n = strtoull(r->v[F_TXCOUNT], &end, 10), *end) || n >= PB_SETTLEMENT_NO_COUNT) {
            pb_settlement_bad_add(p->set, p->source, r->line,
                                  "%s: <transactioncount> \"%.24s\" is not a count", what,
                                  r->v[F_TXCOUNT]);
            return;
        }
        count = (uint32_t)n;
    }
    {
        int f = r->set[F_SETTLEMENTDATE] ? F_SETTLEMENTDATE : F_BATCHDATE;
        if (r->set[f] && opayo_date(r->v[f], &date)) {
            pb_settlement_bad_add(p->set, p->source, r->line,
                                  "%s: <%s> \"%.40s\" is not a date (DD/MM/YYYY)", what,
                                  field_names[f], r->v[f]);
            return;
        }
    }
    struct pb__settlement_batch_in in = {.gateway = "opayo",
                                         .batch_id = r->v[F_BATCHID],
                                         .id_len = strlen(r->v[F_BATCHID]),
                                         .currency = currency,
                                         .source = p->source,
                                         .source_line = r->line,
                                         .date = date,
                                         .header_only = header_only,
                                         .declared = declared,
                                         .gross_minor = gross,
                                         .fees_minor = fees,
                                         .net_minor = net,
                                         .declared_count = count};
    rc = pb__settlement_batch_get(p->set, p->load, &in, &p->batch_index, &e);
    if (rc == PB_ERR_EXISTS || rc == PB_ERR_INVALID)
        return; /* reported by the set */
    if (rc) {
        p->fatal = pb_err_set(p->err, rc, "%s line %u: %s", p->source, r->line, e.msg);
        return;
    }
    p->batch_skip = 0;
    if (p->reply)
        p->reply->batches++;
}

static int kind_of(const char *type, enum pb_settlement_kind *kind)
{
    static const struct {
        const char *name;
        int kind; /* -1 = not money (skipped) */
    } types[] = {
        {"Payment", PB_SETTLEMENT_SALE},
        {"Repeat", PB_SETTLEMENT_SALE},
        {"Release", PB_SETTLEMENT_SALE},
        {"Authorise", PB_SETTLEMENT_SALE},
        {"Deferred", PB_SETTLEMENT_SALE},
        {"Refund", PB_SETTLEMENT_REFUND},
        {"Chargeback", PB_SETTLEMENT_CHARGEBACK},
        {"Fee", PB_SETTLEMENT_FEE},
        {"Adjustment", PB_SETTLEMENT_ADJUSTMENT},
        {"Void", -1},
        {"Abort", -1},
        {"Cancel", -1},
        {"Authenticate", -1},
        {"Token", -1},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(types[i].name, type) == 0) {
            if (types[i].kind < 0)
                return 0;
            *kind = (enum pb_settlement_kind)types[i].kind;
            return 1;
        }
    return -1;
}

static int settled_status(const char *status)
{
    static const char *const ok[] = {"OK",         "Success",  "Successful", "Settled",
                                     "Authorised", "Released", NULL};
    for (size_t i = 0; ok[i]; i++)
        if (strcasecmp(ok[i], status) == 0)
            return 1;
    return 0;
}

static void commit_txn(struct parse *p)
{
    struct record *r = &p->txn;
    char currency[4], what[200];
    const char *ref;
    size_t ref_len;
    enum pb_settlement_kind kind = PB_SETTLEMENT_SALE;
    int64_t amount, fee = 0;
    int32_t value_date = PB_SETTLEMENT_NO_DATE, settled_date = PB_SETTLEMENT_NO_DATE;
    uint32_t index = PB_SETTLEMENT_NO_BATCH;
    struct pb_err e = {0};
    enum pb_rc rc;
    int k;

    if (r->too_long) {
        pb_settlement_bad_add(p->set, p->source, r->line,
                              "transaction: a field is longer than %d characters", FIELD_MAX);
        return;
    }
    ref = r->v[F_VPSTXID];
    ref_len = strlen(ref);
    if (ref_len >= 2 && ref[0] == '{' && ref[ref_len - 1] == '}')
        ref++, ref_len -= 2;
    if (!ref_len && !r->v[F_VENDORTXCODE][0]) {
        pb_settlement_bad_add(p->set, p->source, r->line,
                              "transaction without <vpstxid> and <vendortxcode>");
        return;
    }
    snprintf(what, sizeof what, "transaction %.*s", (int)(ref_len ? ref_len : 40),
             ref_len ? ref : r->v[F_VENDORTXCODE]);
    if (ref_len > PB_SETTLEMENT_ID_MAX || strlen(r->v[F_VENDORTXCODE]) > PB_SETTLEMENT_ID_MAX) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s: a reference is longer than %d", what,
                              PB_SETTLEMENT_ID_MAX);
        return;
    }
    if (!r->set[F_TXTYPE]) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s has no <transactiontype>", what);
        return;
    }
    k = kind_of(r->v[F_TXTYPE], &kind);
    if (k < 0) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s: unknown <transactiontype> \"%.32s\"",
                              what, r->v[F_TXTYPE]);
        return;
    }
    if (k == 0 || (r->set[F_STATUS] && !settled_status(r->v[F_STATUS]))) {
        if (p->reply)
            p->reply->skipped++;
        return; /* not settled money: a void, a decline, ... */
    }
    if (currency_of(p, r,
                    p->in_batch && !p->batch_skip
                        ? pb_settlement_batch_at(p->set, p->batch_index)->currency
                        : NULL,
                    what, currency))
        return;
    if (!r->set[F_AMOUNT]) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s has no <amount>", what);
        return;
    }
    if (money_of(p, r, F_AMOUNT, currency, what, &amount))
        return;
    if (amount < 0) {
        pb_settlement_bad_add(p->set, p->source, r->line,
                              "%s: <amount> must not be negative (the type gives the sign)", what);
        return;
    }
    if (kind == PB_SETTLEMENT_REFUND || kind == PB_SETTLEMENT_CHARGEBACK ||
        kind == PB_SETTLEMENT_FEE)
        amount = -amount;
    if (r->set[F_FEE] && r->v[F_FEE][0] && money_of(p, r, F_FEE, currency, what, &fee))
        return;
    if (r->set[F_STARTED] && opayo_date(r->v[F_STARTED], &value_date)) {
        pb_settlement_bad_add(p->set, p->source, r->line,
                              "%s: <started> \"%.40s\" is not a date (DD/MM/YYYY HH:MM:SS)", what,
                              r->v[F_STARTED]);
        return;
    }

    if (p->in_batch) {
        if (p->batch_skip)
            return; /* its batch was refused (reported) */
        index = p->batch_index;
        if (r->set[F_BATCHID] &&
            strcmp(r->v[F_BATCHID], pb_settlement_batch_at(p->set, index)->batch_id) != 0) {
            pb_settlement_bad_add(p->set, p->source, r->line,
                                  "%s names batch %.40s inside batch %s", what, r->v[F_BATCHID],
                                  pb_settlement_batch_at(p->set, index)->batch_id);
            return;
        }
    } else if (r->set[F_BATCHID] && r->v[F_BATCHID][0]) {
        struct pb__settlement_batch_in in = {.gateway = "opayo",
                                             .batch_id = r->v[F_BATCHID],
                                             .id_len = strlen(r->v[F_BATCHID]),
                                             .currency = currency,
                                             .source = p->source,
                                             .source_line = r->line,
                                             .date = PB_SETTLEMENT_NO_DATE,
                                             .declared_count = PB_SETTLEMENT_NO_COUNT};
        if (in.id_len > PB_SETTLEMENT_ID_MAX) {
            pb_settlement_bad_add(p->set, p->source, r->line, "%s: <batchid> is too long", what);
            return;
        }
        rc = pb__settlement_batch_get(p->set, p->load, &in, &index, &e);
        if (rc == PB_ERR_EXISTS || rc == PB_ERR_INVALID)
            return;
        if (rc) {
            p->fatal = pb_err_set(p->err, rc, "%s line %u: %s", p->source, r->line, e.msg);
            return;
        }
    }
    if (index != PB_SETTLEMENT_NO_BATCH) {
        const struct pb_settlement_batch *b = pb_settlement_batch_at(p->set, index);
        settled_date = b->date;
        if (strcmp(b->currency, currency) != 0) {
            pb_settlement_bad_add(p->set, p->source, r->line,
                                  "%s: currency %s differs from batch %s's %s", what, currency,
                                  b->batch_id, b->currency);
            return;
        }
    }
    struct pb__settlement_line_in in = {.line_no = r->line,
                                        .kind = kind,
                                        .gateway_ref = ref,
                                        .gateway_ref_len = ref_len,
                                        .merchant_ref = r->v[F_VENDORTXCODE],
                                        .merchant_ref_len = strlen(r->v[F_VENDORTXCODE]),
                                        .amount_minor = amount,
                                        .fee_minor = fee,
                                        .currency = currency,
                                        .value_date = value_date,
                                        .settled_date = settled_date};
    rc = pb__settlement_line_add(p->set, index, &in, &e);
    if (rc == PB_ERR_RANGE || rc == PB_ERR_INVALID) {
        pb_settlement_bad_add(p->set, p->source, r->line, "%s: %s", what, e.msg);
        return;
    }
    if (rc) {
        p->fatal = pb_err_set(p->err, rc, "%s line %u: %s", p->source, r->line, e.msg);
        return;
    }
    if (p->reply)
        p->reply->lines++;
}

/* The line of the reader's current node, or the parser's line when the node has none. */
static uint32_t node_line(xmlTextReaderPtr reader)
{
    xmlNodePtr n = xmlTextReaderCurrentNode(reader);
    long line = n ? xmlGetLineNo(n) : -1;
    if (line <= 0)
        line = xmlTextReaderGetParserLineNumber(reader);
    return line > 0 ? (uint32_t)line : 0;
}

/* ---- the walk ------------------------------------------------------------------------------- */

static long paging_number(const char *s)
{
    char *end;
    long v;
    if (!isdigit((unsigned char)s[0]))
        return -1;
    v = strtol(s, &end, 10);
    return *end || v < 0 ? -1 : v;
}

static void end_field(struct parse *p)
{
    struct record *r;
    if (p->field_id < 0)
        return;
    if (p->field_owner == 3) {
        struct pb_settlement_opayo_reply *rep = p->reply;
        if (name_is(p->env_name, "errorcode")) {
            p->saw_errorcode = 1;
            if (rep)
                snprintf(rep->errorcode, sizeof rep->errorcode, "%.7s", p->field);
        } else if (name_is(p->env_name, "error")) {
            if (rep)
                snprintf(rep->error, sizeof rep->error, "%s", p->field);
        } else if (rep && name_is(p->env_name, "totalrows")) {
            rep->totalrows = paging_number(p->field);
        } else if (rep && name_is(p->env_name, "startrow")) {
            rep->startrow = paging_number(p->field);
        } else if (rep && name_is(p->env_name, "endrow")) {
            rep->endrow = paging_number(p->field);
        }
    } else {
        r = p->field_owner == 1 ? &p->batch : &p->txn;
        if (p->field_len > FIELD_MAX)
            r->too_long = 1;
        else {
            /* trim surrounding whitespace */
            char *s = p->field;
            size_t n = p->field_len;
            while (n && isspace((unsigned char)*s))
                s++, n--;
            while (n && isspace((unsigned char)s[n - 1]))
                n--;
            memcpy(r->v[p->field_id], s, n);
            r->v[p->field_id][n] = '\0';
            if (memchr(s, '\0', n))
                r->too_long = 1; /* a NUL in text: refuse the record */
            r->set[p->field_id] = 1;
        }
    }
    p->field_id = -1;
}

static void start_element(struct parse *p, const char *name, uint32_t line, int empty)
{
    const char *parent = p->depth > 0 && p->depth <= DEPTH_MAX ? p->names[p->depth - 1] : NULL;
    int d = p->depth; /* depth of this element: 0 = root */

    if (d == 0) {
        if (name_is(name, "vspaccess"))
            p->saw_vspaccess = 1;
        return;
    }
    if (!p->saw_vspaccess)
        return;
    if (p->in_txn) {
        int f = field_of(name);
        if (f >= 0 && p->field_id < 0 && !empty) {
            p->field_id = f;
            p->field_owner = 2;
            p->field_len = 0;
        } else if (f >= 0 && empty) {
            p->txn.set[f] = 1;
            p->txn.v[f][0] = '\0';
        }
        return;
    }
    if (name_is(name, "transaction") && name_is(parent, "transactions")) {
        if (p->in_batch && !p->batch_committed)
            commit_batch(p, 0);
        memset(&p->txn, 0, sizeof p->txn);
        p->txn.line = line;
        p->in_txn = 1;
        if (empty) {
            p->in_txn = 0;
            commit_txn(p);
        }
        return;
    }
    if (name_is(name, "transactions") && p->in_batch && !p->batch_committed) {
        commit_batch(p, 0);
        return;
    }
    if (name_is(name, "batch") && !p->in_batch &&
        (name_is(parent, "batches") || name_is(parent, "vspaccess"))) {
        memset(&p->batch, 0, sizeof p->batch);
        p->batch.line = line;
        p->in_batch = 1;
        p->batch_is_detail = name_is(parent, "vspaccess");
        p->batch_committed = 0;
        p->batch_skip = 0;
        if (empty) {
            p->in_batch = 0;
            commit_batch(p, !p->batch_is_detail);
        }
        return;
    }
    if (p->in_batch) {
        int f = field_of(name);
        if (f >= 0 && name_is(parent, "batch") && !empty) {
            p->field_id = f;
            p->field_owner = 1;
            p->field_len = 0;
        }
        return;
    }
    if (!empty &&
        ((d == 1 && (name_is(name, "errorcode") || name_is(name, "error"))) ||
         (name_is(parent, "transactions") &&
          (name_is(name, "totalrows") || name_is(name, "startrow") || name_is(name, "endrow"))))) {
        p->field_id = 0;
        p->field_owner = 3;
        p->field_len = 0;
        snprintf(p->env_name, sizeof p->env_name, "%s", name);
    }
}

static void end_element(struct parse *p, const char *name)
{
    if (p->field_id >= 0) {
        end_field(p);
        return;
    }
    if (p->in_txn && name_is(name, "transaction")) {
        p->in_txn = 0;
        commit_txn(p);
        return;
    }
    if (p->in_batch && !p->in_txn && name_is(name, "batch")) {
        p->in_batch = 0;
        if (!p->batch_committed)
            commit_batch(p, !p->batch_is_detail);
    }
}

enum pb_rc pb_settlement_parse_opayo_xml(struct pb_settlement_set *set, const char *source,
                                         const char *data, size_t len,
                                         struct pb_settlement_opayo_reply *reply,
                                         struct pb_err *err)
{
    struct parse *p;
    xmlTextReaderPtr reader;
    struct pb_settlement_opayo_reply local;
    enum pb_rc rc = PB_OK;
    int ret, stopped = 0;

    if (!reply)
        reply = &local;
    memset(reply, 0, sizeof *reply);
    reply->totalrows = reply->startrow = reply->endrow = -1;
    if (!set || (!data && len))
        return pb_err_set(err, PB_ERR_INVALID, "pb_settlement_parse_opayo_xml: bad arguments");
    if (!source)
        source = "opayo";
    if (len > (size_t)INT32_MAX)
        return pb_err_set(err, PB_ERR_TOOBIG, "%s: a reply larger than 2 GiB", source);
    p = calloc(1, sizeof *p);
    if (!p)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    p->set = set;
    p->source = source;
    p->reply = reply;
    p->err = err;
    p->field_id = -1;
    xmlInitParser();
    reader = xmlReaderForMemory(len ? data : "", (int)len, NULL, NULL,
                                XML_PARSE_NONET | XML_PARSE_BIG_LINES | XML_PARSE_NOWARNING);
    if (!reader) {
        free(p);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory (XML reader)");
    }
    xmlTextReaderSetStructuredErrorHandler(reader, on_xml_error, p);
    p->load = pb__settlement_load_begin(set);

    while (!p->fatal && (ret = xmlTextReaderRead(reader)) == 1) {
        int type = xmlTextReaderNodeType(reader);
        const char *name = (const char *)xmlTextReaderConstLocalName(reader);
        if (type == XML_READER_TYPE_DOCUMENT_TYPE || type == XML_READER_TYPE_ENTITY_REFERENCE ||
            type == XML_READER_TYPE_ENTITY) {
            pb_settlement_bad_add(set, source, node_line(reader),
                                  "a DOCTYPE or entity reference is not accepted in a reply; "
                                  "nothing after it is read");
            stopped = 1;
            break;
        }
        if (type == XML_READER_TYPE_ELEMENT) {
            uint32_t line = node_line(reader);
            int empty = xmlTextReaderIsEmptyElement(reader) == 1;
            if (p->field_id >= 0) {
                /* markup inside a field: the field is not plain text */
                if (p->field_owner == 1)
                    p->batch.too_long = 1;
                else if (p->field_owner == 2)
                    p->txn.too_long = 1;
                p->field_id = -1;
            }
            start_element(p, name ? name : "", line, empty);
            if (!empty) {
                /* local names live in the reader's dictionary until it is freed */
                if (p->depth < DEPTH_MAX)
                    p->names[p->depth] = name;
                p->depth++;
            }
        } else if (type == XML_READER_TYPE_END_ELEMENT) {
            if (p->depth > 0)
                p->depth--;
            end_element(p, name ? name : "");
        } else if (type == XML_READER_TYPE_TEXT || type == XML_READER_TYPE_CDATA ||
                   type == XML_READER_TYPE_SIGNIFICANT_WHITESPACE ||
                   type == XML_READER_TYPE_WHITESPACE) {
            if (p->field_id >= 0) {
                const char *v = (const char *)xmlTextReaderConstValue(reader);
                size_t n = v ? strlen(v) : 0;
                if (p->field_len + n > FIELD_MAX)
                    p->field_len = FIELD_MAX + 1; /* marks too long */
                else {
                    memcpy(p->field + p->field_len, v, n);
                    p->field_len += n;
                    p->field[p->field_len] = '\0';
                }
            }
        }
    }
    if (!p->fatal && !stopped && ret < 0) {
        pb_settlement_bad_add(set, source, p->xml_error_line,
                              "the reply is not well-formed XML (truncated?): %s; the records "
                              "before this point were read, nothing after it",
                              p->xml_error[0] ? p->xml_error : "parse error");
        if (p->in_txn || (p->in_batch && !p->batch_committed))
            pb_settlement_bad_add(set, source, p->in_txn ? p->txn.line : p->batch.line,
                                  "truncated: this %s was not complete and is not read",
                                  p->in_txn ? "transaction" : "batch");
    }
    xmlFreeTextReader(reader);
    pb__settlement_load_end(set, p->load);

    if (p->fatal)
        rc = p->fatal;
    else if (!p->saw_vspaccess)
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "%s: not an Opayo reporting reply (no <vspaccess> element)%s%s", source,
                        p->xml_error[0] ? ": " : "", p->xml_error);
    else if (!p->saw_errorcode) {
        if (!reply->batches && !reply->lines)
            rc = pb_err_set(err, PB_ERR_INVALID, "%s: the reply has no <errorcode>", source);
        else
            pb_settlement_bad_add(set, source, 0, "the reply has no <errorcode>");
    } else if (strcmp(reply->errorcode, "0000") != 0) {
        rc = pb_err_set(err, PB_ERR_PERMANENT, "%s: Opayo answered errorcode %s: %s", source,
                        reply->errorcode, reply->error[0] ? reply->error : "(no <error> text)");
    }
    free(p);
    return rc;
}
