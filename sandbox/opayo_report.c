/*
 * sandbox/opayo_report.c: the Opayo Reporting & Admin API (access.htm) and
 * settlement, emulated for tests and the demo (opayo_report.h has the
 * interface and the wiring).
 *
 * SETTLEMENT. POST /_sandbox/settle closes one batch per currency with the
 * Pi transactions that are settled money and were not settled before:
 * status Ok, not voided or aborted; Payment and Repeat as sales, Refund as
 * refunds, a Deferred only once released, as a "Release" sale of its
 * released amount (a partial capture when less than authorised). The
 * "voided", "aborted" and "releasedAmount" members are sandbox extensions of
 * the retrieve shape (the Pi emulator's source callback adds them). Fees:
 * report_fee_rate_bp basis points of a sale, rounded half up, plus
 * report_fee_fixed (0.20 of the currency, rounded to its minor unit: 0 for
 * JPY); refunds carry none. Anomalies are seeded on request: a "missing"
 * transaction never reaches any batch (a payment the ERP has and the
 * acquirer never paid), a "wrong_fee" sale is charged fee_delta more than
 * the contract, a "chargebacks" sale (settled now or earlier) comes back as
 * a Chargeback line of the whole sale plus report_chargeback_fee in this
 * call's batch of its currency. A count N instead of a list picks N with a
 * PRNG seeded by "seed" (default 1), so the same traffic and request always
 * seed the same anomalies. Batch totals always agree with their lines.
 * With "file_dir", every batch closed is also written as a CSV report file
 * (sbx_settlement_file_write, the layout in opayo_report.h), the helper
 * PayTrace's emulator shares.
 *
 * ACCESS.HTM. The form field XML is a <vspaccess> document. The signature
 * is checked first: the MD5 of the inner text exactly as received, with
 * <password>report_password</password> in place of the <signature> element,
 * compared as hex without regard to case. A wrong vendor, user or signature
 * is errorcode 0010. Then:
 *   getBatchList        <startdate>,<enddate> (DD/MM/YYYY[ HH:MM:SS]) on the
 *                       batch date -> <batches><batch>header</batch>...</batches>
 *   getBatchDetail      <batchid> -> <batch>header<transactions>...</transactions></batch>
 *                       (0013 when unknown)
 *   getTransactionList  <startdate>,<enddate> on the transaction's date,
 *                       <startrow>/<endrow> (at most report_page_rows rows)
 *                       -> <transactions><totalrows>,<startrow>,<endrow>,
 *                       <transaction>...</transactions>; every Pi transaction
 *                       of the source (settled ones carry <batchid>), or only
 *                       the settled ones when there is no source
 * other commands 0020, missing parameters 0021, unreadable XML 0003. The
 * element names are those src/connectors/settlement/settlement_opayo.c reads
 * (docs/settlement.md); the codes other than 0000 and 0010 are the sandbox's
 * own. Replies are HTTP 200 text/xml, as Opayo's.
 *
 * OWNS: the batches and their lines (arrays, at most REPORT_MAX_LINES lines;
 * a chargeback is a line of its own with the sale's id and type Chargeback),
 * the set of settled transaction ids, a copy of the settings. LOCKING: one
 * mutex `mu` for all of it; the source callback runs without it. Admin
 * routes answer loopback peers only (403 otherwise).
 *
 * Rejected: reading the Pi store directly (it is static in opayo.c and has
 * its own lock); a callback keeps the two emulators separate.
 */
#include "opayo_report.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "connectors/settlement/settlement.h"
#include "core/crypto.h"
#include "core/money.h"

#define REPORT_MAGIC 0x52505254u /* "RPRT" */
#define REPORT_MAX_LINES 200000
#define REPORT_MAX_BATCHES 20000
#define REPORT_ID_MAX 64

struct line {
    char id[REPORT_ID_MAX]; /* transactionId */
    char vendor_tx_code[48];
    char type[16];  /* Payment, Repeat, Refund */
    int64_t amount; /* minor units, > 0 */
    int64_t fee;
    int32_t day;      /* its createdAt date */
    char started[24]; /* DD/MM/YYYY HH:MM:SS */
    size_t batch;     /* index into batches */
};

struct batch {
    long id;
    char currency[4];
    int32_t day;
    int64_t gross, fees;
    size_t count;
};

struct sbx_opayo_report {
    unsigned magic;
    pthread_mutex_t mu;
    sbx_opayo_report_source source;
    void *source_ctx;
    char vendor[128], user[128], password[128];
    long fee_rate_bp;
    char fee_fixed[32];
    char chargeback_fee[32]; /* per chargeback, decimal text in the currency */
    long page_rows;
    long next_batch;
    struct batch *batches;
    size_t n_batches;
    struct line *lines;
    size_t n_lines;
    char (*consumed)[REPORT_ID_MAX]; /* ids settled or left out for good */
    size_t n_consumed;
    struct pb_http_route routes[4];
};

/* ---- helpers ------------------------------------------------------------------------------- */

static struct sbx_opayo_report *state_of(void *arg)
{
    struct sbx_opayo_report *r = arg;
    if (!r || r->magic != REPORT_MAGIC)
        abort(); /* wiring bug, not input */
    return r;
}

static int loopback(const struct pb_http_request *req)
{
    const char *a = req->remote_addr ? req->remote_addr : "";
    return strncmp(a, "127.", 4) == 0 || strcmp(a, "::1") == 0 ||
           strncmp(a, "::ffff:127.", 11) == 0;
}

struct out {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->failed)
        return;
    if (n > SIZE_MAX / 4 || o->len > SIZE_MAX / 4) { /* never: bounds for the compiler's sake */
        o->failed = 1;
        return;
    }
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->failed = 1;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

/* A string literal, its length counted by the compiler. */
#define PUTS(o, lit) put((o), (lit), sizeof(lit) - 1)

static void putf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct out *o, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void put_elem(struct out *o, const char *name, const char *text)
{
    putf(o, "<%s>", name);
    for (const char *s = text; *s; s++) {
        if (*s == '&')
            PUTS(o, "&amp;");
        else if (*s == '<')
            PUTS(o, "&lt;");
        else if (*s == '>')
            PUTS(o, "&gt;");
        else
            put(o, s, 1);
    }
    putf(o, "</%s>", name);
}

static void put_money(struct out *o, const char *name, int64_t minor, const char *currency)
{
    char text[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, text, sizeof text, NULL))
        snprintf(text, sizeof text, "0");
    put_elem(o, name, text);
}

static void day_text(int32_t day, char *buf, size_t len)
{
    char iso[16];
    pb_settlement_date_format(day, iso, sizeof iso);
    snprintf(buf, len, "%.2s/%.2s/%.4s", iso + 8, iso + 5, iso);
}

static int32_t today(void)
{
    return (int32_t)(time(NULL) / 86400);
}

static void reply_xml(struct pb_http_response *resp, struct out *o)
{
    if (o->failed) {
        free(o->p);
        pb_http_response_error(resp, 500, "nomem", "out of memory");
        return;
    }
    pb_http_response_body_take(resp, 200, o->p, o->len);
    snprintf(resp->content_type, sizeof resp->content_type, "text/xml; charset=utf-8");
}

static void reply_code(struct pb_http_response *resp, const char *code, const char *text)
{
    struct out o = {0};
    PUTS(&o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><vspaccess>");
    put_elem(&o, "errorcode", code);
    put_elem(&o, "error", text);
    PUTS(&o, "</vspaccess>");
    reply_xml(resp, &o);
}

/* Fixed fee text ("0.20") in minor units of `currency`, rounded half up. */
static int64_t fixed_fee(const char *text, const char *currency)
{
    int64_t ten_thousandths;
    int e = pb_currency_exponent(currency);
    int64_t scale = 1;
    if (e < 0 || pb_money_parse_decimal(text, "CLF", &ten_thousandths, NULL)) /* CLF: 4 places */
        return 0;
    for (int i = 0; i < e; i++)
        scale *= 10;
    return (ten_thousandths * scale + 5000) / 10000;
}

/* "DD/MM/YYYY[ HH:MM:SS]" -> day; -1 when malformed. */
static int parse_day(const char *s, int32_t *out)
{
    int d, m, y;
    if (!s || strlen(s) < 10 || s[2] != '/' || s[5] != '/')
        return -1;
    for (int i = 0; i < 10; i++)
        if (i != 2 && i != 5 && !isdigit((unsigned char)s[i]))
            return -1;
    d = (s[0] - '0') * 10 + (s[1] - '0');
    m = (s[3] - '0') * 10 + (s[4] - '0');
    y = (s[6] - '0') * 1000 + (s[7] - '0') * 100 + (s[8] - '0') * 10 + (s[9] - '0');
    if (!pb_settlement_date_valid(y, (unsigned)m, (unsigned)d))
        return -1;
    *out = pb_settlement_days_from_civil(y, (unsigned)m, (unsigned)d);
    return 0;
}

/* ISO "YYYY-MM-DDTHH:MM:SS..." -> day and "DD/MM/YYYY HH:MM:SS"; -1 when malformed. */
static int iso_day(const char *s, int32_t *day, char *started, size_t len)
{
    int v[6] = {0};
    static const int at[6] = {0, 5, 8, 11, 14, 17}, width[6] = {4, 2, 2, 2, 2, 2};
    if (!s || strlen(s) < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':')
        return -1;
    for (int f = 0; f < 6; f++)
        for (int i = 0; i < width[f]; i++) {
            char c = s[at[f] + i];
            if (!isdigit((unsigned char)c))
                return -1;
            v[f] = v[f] * 10 + (c - '0');
        }
    if (!pb_settlement_date_valid(v[0], (unsigned)v[1], (unsigned)v[2]))
        return -1;
    *day = pb_settlement_days_from_civil(v[0], (unsigned)v[1], (unsigned)v[2]);
    snprintf(started, len, "%02d/%02d/%04d %02d:%02d:%02d", v[2], v[1], v[0], v[3], v[4], v[5]);
    return 0;
}

static int consumed(const struct sbx_opayo_report *r, const char *id)
{
    for (size_t i = 0; i < r->n_consumed; i++)
        if (strcmp(r->consumed[i], id) == 0)
            return 1;
    return 0;
}

/* 1 when `id` is a line of some batch. */
static int settled_line(const struct sbx_opayo_report *r, const char *id)
{
    for (size_t i = 0; i < r->n_lines; i++)
        if (strcmp(r->lines[i].id, id) == 0)
            return 1;
    return 0;
}

/* ---- create / destroy ---------------------------------------------------------------------- */

static int setting_str(json_t *settings, const char *key, const char *def, char *out, size_t size,
                       struct pb_err *err)
{
    json_t *v = settings ? json_object_get(settings, key) : NULL;
    const char *s = def;
    if (v && !json_is_null(v)) {
        s = json_string_value(v);
        if (!s || !*s || strlen(s) >= size) {
            pb_err_set(err, PB_ERR_CONFIG,
                       "opayo setting %s must be a string of 1 to %zu characters", key, size - 1);
            return -1;
        }
    }
    snprintf(out, size, "%s", s);
    return 0;
}

static int setting_int(json_t *settings, const char *key, long def, long lo, long hi, long *out,
                       struct pb_err *err)
{
    json_t *v = settings ? json_object_get(settings, key) : NULL;
    *out = def;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        pb_err_set(err, PB_ERR_CONFIG, "opayo setting %s must be an integer from %ld to %ld", key,
                   lo, hi);
        return -1;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

struct sbx_opayo_report *sbx_opayo_report_create(json_t *settings, sbx_opayo_report_source source,
                                                 void *source_ctx, struct pb_err *err)
{
    struct sbx_opayo_report *r = calloc(1, sizeof *r);
    int64_t probe;
    if (!r) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    r->magic = REPORT_MAGIC;
    pthread_mutex_init(&r->mu, NULL);
    r->source = source;
    r->source_ctx = source_ctx;
    if (setting_str(settings, "vendor_name", "sandbox", r->vendor, sizeof r->vendor, err) ||
        setting_str(settings, "report_user", "sandbox-report", r->user, sizeof r->user, err) ||
        setting_str(settings, "report_password", "sandbox-report-password", r->password,
                    sizeof r->password, err) ||
        setting_str(settings, "report_fee_fixed", "0.20", r->fee_fixed, sizeof r->fee_fixed, err) ||
        setting_str(settings, "report_chargeback_fee", "15.00", r->chargeback_fee,
                    sizeof r->chargeback_fee, err) ||
        setting_int(settings, "report_fee_rate_bp", 150, 0, 10000, &r->fee_rate_bp, err) ||
        setting_int(settings, "report_page_rows", 50, 1, 1000, &r->page_rows, err) ||
        setting_int(settings, "report_first_batch", 100001, 1, 1000000000L, &r->next_batch, err))
        goto fail;
    if (pb_money_parse_decimal(r->fee_fixed, "CLF", &probe, NULL) || probe < 0) {
        pb_err_set(err, PB_ERR_CONFIG,
                   "opayo setting report_fee_fixed must be a decimal such as \"0.20\"");
        goto fail;
    }
    if (pb_money_parse_decimal(r->chargeback_fee, "CLF", &probe, NULL) || probe < 0) {
        pb_err_set(err, PB_ERR_CONFIG,
                   "opayo setting report_chargeback_fee must be a decimal such as \"15.00\"");
        goto fail;
    }
    r->batches = calloc(REPORT_MAX_BATCHES, sizeof *r->batches);
    r->lines = calloc(REPORT_MAX_LINES, sizeof *r->lines);
    r->consumed = calloc(REPORT_MAX_LINES, sizeof *r->consumed);
    if (!r->batches || !r->lines || !r->consumed) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto fail;
    }
    r->routes[0] = (struct pb_http_route){"POST", "/access/access.htm", sbx_opayo_report_access, r};
    r->routes[1] = (struct pb_http_route){"POST", "/_sandbox/settle", sbx_opayo_report_settle, r};
    r->routes[2] =
        (struct pb_http_route){"GET", "/_sandbox/settlements", sbx_opayo_report_settlements, r};
    r->routes[3] = (struct pb_http_route){NULL, NULL, NULL, NULL};
    return r;
fail:
    sbx_opayo_report_destroy(r);
    return NULL;
}

void sbx_opayo_report_destroy(struct sbx_opayo_report *r)
{
    if (!r)
        return;
    state_of(r);
    free(r->batches);
    free(r->lines);
    free(r->consumed);
    memset(r->password, 0, sizeof r->password);
    pthread_mutex_destroy(&r->mu);
    r->magic = 0;
    free(r);
}

void sbx_opayo_report_reset(struct sbx_opayo_report *r)
{
    state_of(r);
    pthread_mutex_lock(&r->mu);
    r->n_batches = r->n_lines = r->n_consumed = 0;
    pthread_mutex_unlock(&r->mu);
}

const struct pb_http_route *sbx_opayo_report_routes(struct sbx_opayo_report *r)
{
    return state_of(r)->routes;
}

/* ---- settlement ------------------------------------------------------------------------------ */

/* Is `id` in the anomaly list `spec` (an array of ids)? */
static int listed(const json_t *spec, const char *id)
{
    size_t i;
    json_t *v;
    json_array_foreach(spec, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
            return 1;
    }
    return 0;
}

/* splitmix64: the anomaly picks are a function of the seed and the
 * candidates' order only, so the same traffic and the same settle request
 * seed the same anomalies (tests and demo runs can be replayed). */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The ids `spec` names: an array is taken as it is; a count N picks N of
 * `candidates` (an array of strings, in order) not in `exclude`, by a
 * partial Fisher-Yates shuffle from `seed`, returned in candidate order. */
json_t *sbx_settlement_pick(const json_t *spec, const json_t *candidates, const json_t *exclude,
                            uint64_t seed)
{
    json_t *out = json_array();
    size_t n = 0, want, *idx;
    uint64_t state = seed;
    if (json_is_array(spec)) {
        json_decref(out);
        return json_deep_copy(spec);
    }
    want = json_is_integer(spec) && json_integer_value(spec) > 0 ? (size_t)json_integer_value(spec)
                                                                 : 0;
    idx = calloc(json_array_size(candidates) + 1, sizeof *idx);
    if (!out || !idx) {
        free(idx);
        return out;
    }
    for (size_t i = 0; i < json_array_size(candidates); i++) {
        const char *id = json_string_value(json_array_get(candidates, i));
        if (id && !listed(exclude, id))
            idx[n++] = i;
    }
    if (want > n)
        want = n;
    for (size_t k = 0; k < want; k++) {
        size_t j = k + (size_t)(next_random(&state) % (n - k)), t = idx[k];
        idx[k] = idx[j];
        idx[j] = t;
    }
    for (size_t a = 1; a < want; a++) /* candidate order: insertion sort of the picked few */
        for (size_t b = a; b > 0 && idx[b - 1] > idx[b]; b--) {
            size_t t = idx[b];
            idx[b] = idx[b - 1];
            idx[b - 1] = t;
        }
    for (size_t k = 0; k < want; k++)
        json_array_append(out, json_array_get(candidates, idx[k]));
    free(idx);
    return out;
}

/* The settled amount of a source transaction, or 0 when it is not settled
 * money: status Ok, not voided or aborted (sandbox extensions "voided",
 * "aborted"), a Payment, Repeat or Refund for its totalAmount, or a Deferred
 * that was released (extension "releasedAmount", at most the authorised
 * amount: less is a partial capture). */
static int64_t settled_amount(const json_t *v, const char **type)
{
    const char *status = json_string_value(json_object_get(v, "status"));
    json_t *amount = json_object_get(json_object_get(v, "amount"), "totalAmount");
    json_t *released = json_object_get(v, "releasedAmount");
    *type = json_string_value(json_object_get(v, "transactionType"));
    if (!status || strcmp(status, "Ok") != 0 || !*type || !json_is_integer(amount) ||
        json_integer_value(amount) <= 0 || json_is_true(json_object_get(v, "voided")) ||
        json_is_true(json_object_get(v, "aborted")))
        return 0;
    if (strcmp(*type, "Payment") == 0 || strcmp(*type, "Repeat") == 0 ||
        strcmp(*type, "Refund") == 0)
        return json_integer_value(amount);
    if (strcmp(*type, "Deferred") == 0 && json_is_integer(released) &&
        json_integer_value(released) > 0 &&
        json_integer_value(released) <= json_integer_value(amount)) {
        *type = "Release";
        return json_integer_value(released);
    }
    return 0;
}

static int is_sale_type(const char *type)
{
    return strcmp(type, "Payment") == 0 || strcmp(type, "Repeat") == 0 ||
           strcmp(type, "Release") == 0;
}

/* 1 when the sale `id` already has a chargeback line. */
static int charged_back(const struct sbx_opayo_report *r, const char *id)
{
    for (size_t i = 0; i < r->n_lines; i++)
        if (strcmp(r->lines[i].type, "Chargeback") == 0 && strcmp(r->lines[i].id, id) == 0)
            return 1;
    return 0;
}

/* The batch of `currency` opened by this settle call (at most 8 currencies
 * per call), opening it when needed; SIZE_MAX when full. Caller holds mu. */
struct open_batches {
    char currency[8][4];
    size_t index[8];
    size_t n;
};

static size_t batch_for(struct sbx_opayo_report *r, struct open_batches *ob, const char *currency,
                        int32_t day)
{
    size_t c;
    for (c = 0; c < ob->n && strcmp(ob->currency[c], currency) != 0; c++)
        ;
    if (c < ob->n)
        return ob->index[c];
    if (ob->n == 8 || r->n_batches >= REPORT_MAX_BATCHES)
        return SIZE_MAX;
    memcpy(ob->currency[c], currency, 4);
    ob->index[c] = r->n_batches;
    r->batches[r->n_batches] = (struct batch){.id = r->next_batch++, .day = day};
    memcpy(r->batches[r->n_batches].currency, currency, 4);
    ob->n++;
    return r->n_batches++;
}

/* Append a line to batch b and its totals. Caller holds mu and checked room. */
static void add_line(struct sbx_opayo_report *r, size_t b, const char *id, const char *code,
                     const char *type, int64_t amount, int64_t fee, int32_t tday,
                     const char *started)
{
    struct line *l = &r->lines[r->n_lines++];
    memset(l, 0, sizeof *l);
    snprintf(l->id, sizeof l->id, "%s", id);
    snprintf(l->vendor_tx_code, sizeof l->vendor_tx_code, "%s", code ? code : "");
    snprintf(l->type, sizeof l->type, "%s", type);
    snprintf(l->started, sizeof l->started, "%s", started);
    l->amount = amount;
    l->fee = fee;
    l->day = tday;
    l->batch = b;
    r->batches[b].gross += is_sale_type(type) ? amount : -amount;
    r->batches[b].fees += fee;
    r->batches[b].count++;
}

/* The CSV report file of batch b (sbx_settlement_file_write). Caller holds mu. */
static int write_batch_file(const struct sbx_opayo_report *r, size_t b, const char *dir, char *path,
                            size_t path_len, struct pb_err *err)
{
    const struct batch *bt = &r->batches[b];
    struct sbx_settlement_row *rows = calloc(bt->count + 1, sizeof *rows);
    char idtext[24];
    size_t n = 0;
    int rc;
    if (!rows)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < r->n_lines; i++) {
        const struct line *l = &r->lines[i];
        if (l->batch != b || n == bt->count)
            continue;
        rows[n++] =
            (struct sbx_settlement_row){.transaction_id = l->id,
                                        .merchant_ref = l->vendor_tx_code,
                                        .type = strcmp(l->type, "Refund") == 0       ? "REFUND"
                                                : strcmp(l->type, "Chargeback") == 0 ? "CHARGEBACK"
                                                                                     : "SALE",
                                        .amount = l->amount,
                                        .fee = l->fee,
                                        .value_day = l->day};
    }
    snprintf(idtext, sizeof idtext, "%ld", bt->id);
    rc = sbx_settlement_file_write(dir, "opayo", idtext, bt->day, bt->currency, rows, n, path,
                                   path_len, err);
    free(rows);
    return rc;
}

enum pb_http_action sbx_opayo_report_settle(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *arg)
{
    struct sbx_opayo_report *r = state_of(arg);
    json_t *body = NULL, *txns = NULL, *missing = NULL, *wrong = NULL, *chargebacks = NULL,
           *cb_done, *partial, *candidates, *sales, *cb_candidates, *reply_batches, *files, *v;
    int32_t day = today();
    const char *delta_text = "0.10", *file_dir = NULL;
    uint64_t seed = 1;
    size_t settled = 0, i, first_batch;
    struct open_batches ob = {0};
    struct pb_err err = {0};

    if (!loopback(req)) {
        pb_http_response_error(resp, 403, "forbidden", "sandbox admin routes answer loopback only");
        return PB_HTTP_DONE;
    }
    if (req->body_len) {
        json_error_t jerr;
        body = json_loadb(req->body, req->body_len, 0, &jerr);
        if (!json_is_object(body)) {
            json_decref(body);
            pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object");
            return PB_HTTP_DONE;
        }
    }
    if (body && (v = json_object_get(body, "date"))) {
        const char *s = json_string_value(v);
        if (!s || pb_settlement_date_parse(s, strlen(s), "%Y-%m-%d", &day, NULL)) {
            json_decref(body);
            pb_http_response_error(resp, 400, "invalid", "date must be YYYY-MM-DD");
            return PB_HTTP_DONE;
        }
    }
    if (body && (v = json_object_get(body, "seed"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            json_decref(body);
            pb_http_response_error(resp, 400, "invalid", "seed must be an integer >= 0");
            return PB_HTTP_DONE;
        }
        seed = (uint64_t)json_integer_value(v);
    }
    if (body && (v = json_object_get(body, "fee_delta"))) {
        int64_t probe;
        delta_text = json_string_value(v);
        if (!delta_text || pb_money_parse_decimal(delta_text, "CLF", &probe, NULL)) {
            json_decref(body);
            pb_http_response_error(resp, 400, "invalid",
                                   "fee_delta must be a decimal string such as \"0.10\"");
            return PB_HTTP_DONE;
        }
    }
    if (body && (v = json_object_get(body, "file_dir"))) {
        file_dir = json_string_value(v);
        if (sbx_settlement_file_dir_check(file_dir, &err)) {
            json_decref(body);
            pb_http_response_error(resp, 400, "invalid", "%s", err.msg);
            return PB_HTTP_DONE;
        }
    }
    txns = body ? json_incref(json_object_get(body, "transactions")) : NULL;
    if (!txns && r->source)
        txns = r->source(r->source_ctx);
    if (!json_is_array(txns)) {
        json_decref(txns);
        json_decref(body);
        pb_http_response_error(resp, 400, "invalid",
                               "no transactions: give \"transactions\" (an array of Pi retrieve "
                               "shapes), or wire the Pi emulator as the source");
        return PB_HTTP_DONE;
    }

    pthread_mutex_lock(&r->mu);
    first_batch = r->n_batches;
    /* candidates: settled money not yet consumed (sales: those a fee applies to) */
    candidates = json_array();
    sales = json_array();
    partial = json_array();
    json_array_foreach(txns, i, v)
    {
        const char *id = json_string_value(json_object_get(v, "transactionId")), *type;
        if (!id || strlen(id) >= REPORT_ID_MAX || !settled_amount(v, &type) || consumed(r, id))
            continue;
        json_array_append_new(candidates, json_string(id));
        if (strcmp(type, "Refund") != 0)
            json_array_append_new(sales, json_string(id));
    }
    missing =
        sbx_settlement_pick(body ? json_object_get(body, "missing") : NULL, candidates, NULL, seed);
    wrong = sbx_settlement_pick(body ? json_object_get(body, "wrong_fee") : NULL, sales, missing,
                                seed + 1);
    reply_batches = json_array();
    files = json_array();

    json_array_foreach(txns, i, v)
    {
        const char *id = json_string_value(json_object_get(v, "transactionId"));
        const char *currency = json_string_value(json_object_get(v, "currency"));
        const char *code = json_string_value(json_object_get(v, "vendorTxCode"));
        const char *type;
        int64_t amount = settled_amount(v, &type), fee = 0;
        size_t b;
        int32_t tday = day;
        char started[24] = "";

        if (!id || !amount || !listed(candidates, id) || !currency || !pb_currency_valid(currency))
            continue;
        if (r->n_consumed >= REPORT_MAX_LINES || r->n_lines >= REPORT_MAX_LINES)
            break;
        snprintf(r->consumed[r->n_consumed++], REPORT_ID_MAX, "%s", id);
        if (listed(missing, id))
            continue; /* never settled: the seeded "missing settlement" */
        if (iso_day(json_string_value(json_object_get(v, "createdAt")), &tday, started,
                    sizeof started)) {
            tday = day;
            day_text(day, started, sizeof started);
            strncat(started, " 00:00:00", sizeof started - strlen(started) - 1);
        }
        if ((b = batch_for(r, &ob, currency, day)) == SIZE_MAX)
            continue;
        if (strcmp(type, "Refund") != 0) {
            __int128 pct = ((__int128)amount * r->fee_rate_bp + 5000) / 10000;
            fee = (int64_t)pct + fixed_fee(r->fee_fixed, currency);
            if (listed(wrong, id))
                fee += fixed_fee(delta_text, currency); /* rounded to the currency, as fees */
        }
        if (strcmp(type, "Release") == 0 &&
            amount <
                json_integer_value(json_object_get(json_object_get(v, "amount"), "totalAmount")))
            json_array_append_new(partial, json_string(id));
        add_line(r, b, id, code, type, amount, fee, tday, started);
        settled++;
    }

    /* chargebacks: of sales settled now or before, each once, in this call's batch of
     * their currency, for the whole sale plus report_chargeback_fee */
    cb_candidates = json_array();
    for (size_t k = 0; k < r->n_lines; k++)
        if (is_sale_type(r->lines[k].type) && !charged_back(r, r->lines[k].id))
            json_array_append_new(cb_candidates, json_string(r->lines[k].id));
    chargebacks = sbx_settlement_pick(body ? json_object_get(body, "chargebacks") : NULL,
                                      cb_candidates, NULL, seed + 2);
    cb_done = json_array();
    json_array_foreach(chargebacks, i, v)
    {
        const char *id = json_string_value(v);
        size_t k, b;
        char started[24];
        if (!id || !listed(cb_candidates, id) || listed(cb_done, id) ||
            r->n_lines >= REPORT_MAX_LINES)
            continue;
        for (k = 0; k < r->n_lines; k++)
            if (is_sale_type(r->lines[k].type) && strcmp(r->lines[k].id, id) == 0)
                break;
        const struct line sale = r->lines[k]; /* a copy: add_line may write beside it */
        const char *currency = r->batches[sale.batch].currency;
        if ((b = batch_for(r, &ob, currency, day)) == SIZE_MAX)
            continue;
        day_text(day, started, sizeof started);
        strncat(started, " 00:00:00", sizeof started - strlen(started) - 1);
        add_line(r, b, sale.id, sale.vendor_tx_code, "Chargeback", sale.amount,
                 fixed_fee(r->chargeback_fee, currency), day, started);
        json_array_append_new(cb_done, json_string(id));
    }

    for (size_t b = first_batch; b < r->n_batches; b++) {
        const struct batch *bt = &r->batches[b];
        char g[PB_MONEY_DECIMAL_MAX], f[PB_MONEY_DECIMAL_MAX], n[PB_MONEY_DECIMAL_MAX], d[16];
        char idtext[24], path[1024] = "";
        json_t *entry;
        pb_money_format_decimal(bt->gross, bt->currency, g, sizeof g, NULL);
        pb_money_format_decimal(bt->fees, bt->currency, f, sizeof f, NULL);
        pb_money_format_decimal(bt->gross - bt->fees, bt->currency, n, sizeof n, NULL);
        pb_settlement_date_format(bt->day, d, sizeof d);
        snprintf(idtext, sizeof idtext, "%ld", bt->id);
        entry = json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s}", "batchid", idtext, "currency",
                          bt->currency, "date", d, "transactions", (json_int_t)bt->count, "gross",
                          g, "fees", f, "net", n);
        if (file_dir && !err.rc) {
            if (write_batch_file(r, b, file_dir, path, sizeof path, &err) == PB_OK) {
                json_object_set_new(entry, "file", json_string(path));
                json_array_append_new(files, json_string(path));
            }
        }
        json_array_append_new(reply_batches, entry);
    }
    pthread_mutex_unlock(&r->mu);
    if (err.rc) { /* the batches are closed; only their files failed */
        pb_http_response_error(resp, 500, "file",
                               "the batches were settled but a report file "
                               "could not be written: %s",
                               err.msg);
        json_decref(reply_batches);
        json_decref(files);
    } else {
        json_t *o =
            json_pack("{s:I,s:o,s:o,s:{s:O,s:O,s:O,s:O}}", "settled", (json_int_t)settled,
                      "batches", reply_batches, "files", files, "anomalies", "missing", missing,
                      "wrong_fee", wrong, "chargebacks", cb_done, "partial_captures", partial);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text)
            pb_http_response_body_take(resp, 200, text, strlen(text));
        else
            pb_http_response_error(resp, 500, "nomem", "out of memory");
        json_decref(o);
    }
    json_decref(missing);
    json_decref(wrong);
    json_decref(chargebacks);
    json_decref(cb_done);
    json_decref(cb_candidates);
    json_decref(partial);
    json_decref(candidates);
    json_decref(sales);
    json_decref(txns);
    json_decref(body);
    return PB_HTTP_DONE;
}

enum pb_http_action sbx_opayo_report_settlements(struct pb_http_request *req,
                                                 struct pb_http_response *resp, void *arg)
{
    struct sbx_opayo_report *r = state_of(arg);
    json_t *all = json_array();
    char *text;
    if (!loopback(req)) {
        json_decref(all);
        pb_http_response_error(resp, 403, "forbidden", "sandbox admin routes answer loopback only");
        return PB_HTTP_DONE;
    }
    pthread_mutex_lock(&r->mu);
    for (size_t b = 0; b < r->n_batches; b++) {
        const struct batch *bt = &r->batches[b];
        json_t *lines = json_array();
        char idtext[24], d[16];
        for (size_t i = 0; i < r->n_lines; i++) {
            const struct line *l = &r->lines[i];
            if (l->batch == b)
                json_array_append_new(
                    lines, json_pack("{s:s,s:s,s:s,s:I,s:I}", "transactionId", l->id,
                                     "vendorTxCode", l->vendor_tx_code, "type", l->type, "amount",
                                     (json_int_t)l->amount, "fee", (json_int_t)l->fee));
        }
        snprintf(idtext, sizeof idtext, "%ld", bt->id);
        pb_settlement_date_format(bt->day, d, sizeof d);
        json_array_append_new(all,
                              json_pack("{s:s,s:s,s:s,s:I,s:I,s:o}", "batchid", idtext, "currency",
                                        bt->currency, "date", d, "gross", (json_int_t)bt->gross,
                                        "fees", (json_int_t)bt->fees, "lines", lines));
    }
    pthread_mutex_unlock(&r->mu);
    text = json_dumps(all, JSON_COMPACT);
    json_decref(all);
    if (text)
        pb_http_response_body_take(resp, 200, text, strlen(text));
    else
        pb_http_response_error(resp, 500, "nomem", "out of memory");
    return PB_HTTP_DONE;
}

/* ---- access.htm -------------------------------------------------------------------------------
 */

/* The decoded value of form field `name` (malloc'd), or NULL. */
static char *form_field(const char *body, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < len;) {
        size_t end = i;
        while (end < len && body[end] != '&')
            end++;
        if (end - i > nlen && memcmp(body + i, name, nlen) == 0 && body[i + nlen] == '=') {
            char *out = malloc(end - i + 1), *w = out;
            if (!out)
                return NULL;
            for (size_t k = i + nlen + 1; k < end; k++) {
                char c = body[k];
                if (c == '+')
                    c = ' ';
                else if (c == '%' && k + 2 < end && isxdigit((unsigned char)body[k + 1]) &&
                         isxdigit((unsigned char)body[k + 2])) {
                    char hex[3] = {body[k + 1], body[k + 2], 0};
                    c = (char)strtol(hex, NULL, 16);
                    k += 2;
                }
                *w++ = c;
            }
            *w = '\0';
            return out;
        }
        i = end + 1;
    }
    return NULL;
}

/* Text of the first child element `name` of root, or "" (caller frees). */
static char *child_text(xmlNodePtr root, const char *name)
{
    for (xmlNodePtr n = root->children; n; n = n->next)
        if (n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0) {
            xmlChar *t = xmlNodeGetContent(n);
            char *s = strdup(t ? (const char *)t : "");
            xmlFree(t);
            return s;
        }
    return strdup("");
}

/* The signature check on the raw document text. 1 = valid. */
static int signature_ok(const struct sbx_opayo_report *r, const char *xml)
{
    const char *open = strstr(xml, "<vspaccess>"), *sig = strstr(xml, "<signature>"), *sig_end,
               *close;
    char md5[33], given[33];
    size_t n;
    struct out text = {0};
    int ok;
    if (!open || !sig || sig < open || !(sig_end = strstr(sig, "</signature>")) ||
        !(close = strstr(sig_end, "</vspaccess>")))
        return 0;
    n = (size_t)(sig_end - (sig + 11));
    if (n != 32)
        return 0;
    for (size_t i = 0; i < 32; i++)
        given[i] = (char)toupper((unsigned char)sig[11 + i]);
    given[32] = '\0';
    put(&text, open + 11, (size_t)(sig - (open + 11)));
    PUTS(&text, "<password>");
    put(&text, r->password, strlen(r->password));
    PUTS(&text, "</password>");
    put(&text, sig_end + 12, (size_t)(close - (sig_end + 12)));
    ok = !text.failed && pb_md5_hex_upper(text.p, text.len, md5) == PB_OK &&
         pb_ct_equal(md5, given, 32);
    if (text.p)
        memset(text.p, 0, text.cap);
    free(text.p);
    return ok;
}

static void batch_header(struct out *o, const struct batch *bt)
{
    char d[16], idtext[24];
    snprintf(idtext, sizeof idtext, "%ld", bt->id);
    day_text(bt->day, d, sizeof d);
    put_elem(o, "batchid", idtext);
    put_elem(o, "batchdate", d);
    put_elem(o, "currency", bt->currency);
    putf(o, "<transactioncount>%zu</transactioncount>", bt->count);
    put_money(o, "grossamount", bt->gross, bt->currency);
    put_money(o, "feeamount", bt->fees, bt->currency);
    put_money(o, "netamount", bt->gross - bt->fees, bt->currency);
}

static void line_xml(struct out *o, const struct line *l, const char *currency, long batch_id,
                     int with_fee)
{
    char id[REPORT_ID_MAX + 3];
    snprintf(id, sizeof id, "{%s}", l->id);
    PUTS(o, "<transaction>");
    put_elem(o, "vpstxid", id);
    put_elem(o, "vendortxcode", l->vendor_tx_code);
    put_elem(o, "transactiontype", l->type);
    put_elem(o, "status", "OK");
    put_money(o, "amount", l->amount, currency);
    if (with_fee)
        put_money(o, "fee", l->fee, currency);
    put_elem(o, "currency", currency);
    put_elem(o, "started", l->started);
    if (batch_id > 0)
        putf(o, "<batchid>%ld</batchid>", batch_id);
    PUTS(o, "</transaction>");
}

static void cmd_batch_list(struct sbx_opayo_report *r, int32_t from, int32_t to, struct out *o)
{
    PUTS(o, "<batches>");
    for (size_t b = 0; b < r->n_batches; b++) {
        if (r->batches[b].day < from || r->batches[b].day > to)
            continue;
        PUTS(o, "<batch>");
        batch_header(o, &r->batches[b]);
        PUTS(o, "</batch>");
    }
    PUTS(o, "</batches>");
}

static int cmd_batch_detail(struct sbx_opayo_report *r, const char *id, struct out *o)
{
    char *end;
    long want = strtol(id, &end, 10);
    for (size_t b = 0; *id && !*end && b < r->n_batches; b++) {
        if (r->batches[b].id != want)
            continue;
        PUTS(o, "<batch>");
        batch_header(o, &r->batches[b]);
        PUTS(o, "<transactions>");
        for (size_t i = 0; i < r->n_lines; i++)
            if (r->lines[i].batch == b)
                line_xml(o, &r->lines[i], r->batches[b].currency, 0, 1);
        PUTS(o, "</transactions></batch>");
        return 0;
    }
    return -1;
}

enum pb_http_action sbx_opayo_report_access(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *arg)
{
    struct sbx_opayo_report *r = state_of(arg);
    char *xml = form_field(req->body ? req->body : "", req->body_len, "XML");
    char *command = NULL, *vendor = NULL, *user = NULL, *p1 = NULL, *p2 = NULL, *p3 = NULL,
         *p4 = NULL;
    xmlDocPtr doc = NULL;
    xmlNodePtr root;
    json_t *source_txns = NULL;
    struct out o = {0};

    if (!xml || !*xml) {
        reply_code(resp, "0003", "The request has no XML form field.");
        goto out;
    }
    doc = xmlReadMemory(xml, (int)strlen(xml), NULL, NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!root || strcmp((const char *)root->name, "vspaccess") != 0 || doc->intSubset) {
        reply_code(resp, "0003", "The XML could not be read.");
        goto out;
    }
    command = child_text(root, "command");
    vendor = child_text(root, "vendor");
    user = child_text(root, "user");
    if (!command || !vendor || !user || strcmp(vendor, r->vendor) != 0 ||
        strcmp(user, r->user) != 0 || !signature_ok(r, xml)) {
        reply_code(resp, "0010", "The signature is not valid.");
        goto out;
    }
    if (strcmp(command, "getTransactionList") == 0 && r->source)
        source_txns = r->source(r->source_ctx); /* before our lock: see the header */

    PUTS(&o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><vspaccess><errorcode>0000</errorcode>");
    {
        char ts[32];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(ts, sizeof ts, "%d/%m/%Y %H:%M:%S", &tm);
        put_elem(&o, "timestamp", ts);
    }
    pthread_mutex_lock(&r->mu);
    if (strcmp(command, "getBatchList") == 0 || strcmp(command, "getTransactionList") == 0) {
        int32_t from, to;
        p1 = child_text(root, "startdate");
        p2 = child_text(root, "enddate");
        if (parse_day(p1, &from) || parse_day(p2, &to)) {
            pthread_mutex_unlock(&r->mu);
            free(o.p);
            o.p = NULL;
            reply_code(resp, "0021", "startdate and enddate (DD/MM/YYYY HH:MM:SS) are required.");
            goto out;
        }
        if (command[3] == 'B') {
            cmd_batch_list(r, from, to, &o);
        } else {
            char *e1, *e2;
            long start, end, total = 0, row = 0;
            p3 = child_text(root, "startrow");
            p4 = child_text(root, "endrow");
            start = *p3 ? strtol(p3, &e1, 10) : 1;
            end = *p4 ? strtol(p4, &e2, 10) : start + r->page_rows - 1;
            if (start < 1 || (*p3 && *e1) || (*p4 && *e2) || end < start) {
                pthread_mutex_unlock(&r->mu);
                free(o.p);
                o.p = NULL;
                reply_code(resp, "0021", "startrow and endrow must be row numbers, start <= end.");
                goto out;
            }
            if (end - start + 1 > r->page_rows)
                end = start + r->page_rows - 1;
            /* rows: the settled lines (with their batch), then the source's unsettled ones */
            struct out rows = {0};
            for (size_t i = 0; i < r->n_lines; i++) {
                const struct line *l = &r->lines[i];
                if (l->day < from || l->day > to)
                    continue;
                total++;
                if (total >= start && total <= end) {
                    row = total;
                    line_xml(&rows, l, r->batches[l->batch].currency, r->batches[l->batch].id, 0);
                }
            }
            size_t k;
            json_t *t;
            json_array_foreach(source_txns, k, t)
            {
                const char *id = json_string_value(json_object_get(t, "transactionId"));
                const char *cur = json_string_value(json_object_get(t, "currency"));
                json_t *amount = json_object_get(json_object_get(t, "amount"), "totalAmount");
                struct line l;
                int32_t tday;
                if (!id || strlen(id) >= REPORT_ID_MAX || settled_line(r, id) || !cur ||
                    !pb_currency_valid(cur) || !json_is_integer(amount) ||
                    iso_day(json_string_value(json_object_get(t, "createdAt")), &tday, l.started,
                            sizeof l.started) ||
                    tday < from || tday > to)
                    continue;
                total++;
                if (total < start || total > end)
                    continue;
                row = total;
                memset(&l.id, 0, sizeof l.id);
                snprintf(l.id, sizeof l.id, "%s", id);
                snprintf(l.vendor_tx_code, sizeof l.vendor_tx_code, "%s",
                         json_string_value(json_object_get(t, "vendorTxCode"))
                             ? json_string_value(json_object_get(t, "vendorTxCode"))
                             : "");
                snprintf(l.type, sizeof l.type, "%s",
                         json_string_value(json_object_get(t, "transactionType"))
                             ? json_string_value(json_object_get(t, "transactionType"))
                             : "Payment");
                l.amount = json_integer_value(amount);
                l.fee = 0;
                PUTS(&rows, "<transaction>");
                {
                    char idb[REPORT_ID_MAX + 3];
                    snprintf(idb, sizeof idb, "{%s}", l.id);
                    put_elem(&rows, "vpstxid", idb);
                }
                put_elem(&rows, "vendortxcode", l.vendor_tx_code);
                put_elem(&rows, "transactiontype", l.type);
                {
                    const char *st = json_string_value(json_object_get(t, "status"));
                    put_elem(&rows, "status", st && strcmp(st, "Ok") == 0 ? "OK" : st ? st : "");
                }
                put_money(&rows, "amount", l.amount, cur);
                put_elem(&rows, "currency", cur);
                put_elem(&rows, "started", l.started);
                PUTS(&rows, "</transaction>");
            }
            putf(&o,
                 "<transactions><totalrows>%ld</totalrows><startrow>%ld</startrow>"
                 "<endrow>%ld</endrow>",
                 total, row ? start : 0, row);
            if (rows.p)
                put(&o, rows.p, rows.len);
            o.failed |= rows.failed;
            free(rows.p);
            PUTS(&o, "</transactions>");
        }
    } else if (strcmp(command, "getBatchDetail") == 0) {
        p1 = child_text(root, "batchid");
        if (!p1 || !*p1 || cmd_batch_detail(r, p1, &o)) {
            pthread_mutex_unlock(&r->mu);
            free(o.p);
            o.p = NULL;
            reply_code(resp, "0013", "The batch was not found.");
            goto out;
        }
    } else {
        pthread_mutex_unlock(&r->mu);
        free(o.p);
        o.p = NULL;
        reply_code(resp, "0020", "The command is not supported.");
        goto out;
    }
    pthread_mutex_unlock(&r->mu);
    PUTS(&o, "</vspaccess>");
    reply_xml(resp, &o);
    o.p = NULL;
out:
    free(o.p);
    json_decref(source_txns);
    if (doc)
        xmlFreeDoc(doc);
    free(xml);
    free(command);
    free(vendor);
    free(user);
    free(p1);
    free(p2);
    free(p3);
    free(p4);
    return PB_HTTP_DONE;
}

/* ---- report files (shared with sandbox/paytrace.c) --------------------------------------------
 */

const char *const SBX_SETTLEMENT_CSV_HEADER = "Batch,Batch Date,Transaction ID,Merchant Ref,Type,"
                                              "Amount,Fee,Currency,Transaction Date";

json_t *sbx_settlement_csv_map(const char *gateway)
{
    return json_pack("{s:s,s:s,s:b,s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s},s:{s:s,s:s,s:s},s:s}",
                     "gateway", gateway, "delimiter", ",", "header", 1, "columns", "batch_id",
                     "Batch", "settled_date", "Batch Date", "gateway_ref", "Transaction ID",
                     "merchant_ref", "Merchant Ref", "kind", "Type", "amount", "Amount", "fee",
                     "Fee", "currency", "Currency", "value_date", "Transaction Date", "kind_map",
                     "SALE", "sale", "REFUND", "refund", "CHARGEBACK", "chargeback", "date_format",
                     "%Y-%m-%d");
}

int sbx_settlement_file_dir_check(const char *dir, struct pb_err *err)
{
    struct stat sb;
    if (!dir || dir[0] != '/' || strlen(dir) > 900 || strstr(dir, "/../") ||
        (strlen(dir) >= 3 && strcmp(dir + strlen(dir) - 3, "/..") == 0))
        return pb_err_set(err, PB_ERR_INVALID,
                          "file_dir must be an absolute directory path (at most 900 characters, "
                          "no \"..\")");
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return pb_err_set(err, PB_ERR_INVALID, "file_dir %s is not a directory: create it first",
                          dir);
    if (access(dir, W_OK) != 0)
        return pb_err_set(err, PB_ERR_INVALID, "file_dir %s is not writable by the sandbox", dir);
    return PB_OK;
}

/* One CSV field: quoted (with "" for ") when it holds the delimiter, a quote or a line end. */
static void csv_field(struct out *o, const char *text)
{
    if (!strpbrk(text, ",\"\r\n")) {
        put(o, text, strlen(text));
        return;
    }
    PUTS(o, "\"");
    for (const char *p = text; *p; p++) {
        if (*p == '"')
            PUTS(o, "\"");
        put(o, p, 1);
    }
    PUTS(o, "\"");
}

int sbx_settlement_file_write(const char *dir, const char *gateway, const char *batch_id,
                              int32_t batch_day, const char *currency,
                              const struct sbx_settlement_row *rows, size_t n, char *path,
                              size_t path_len, struct pb_err *err)
{
    struct out o = {0};
    char tmp[1100], final[1100], bday[16];
    FILE *f;
    int written;

    pb_settlement_date_format(batch_day, bday, sizeof bday);
    put(&o, SBX_SETTLEMENT_CSV_HEADER, strlen(SBX_SETTLEMENT_CSV_HEADER));
    PUTS(&o, "\r\n");
    for (size_t i = 0; i < n; i++) {
        char amount[PB_MONEY_DECIMAL_MAX], fee[PB_MONEY_DECIMAL_MAX], vday[16];
        if (pb_money_format_decimal(rows[i].amount, currency, amount, sizeof amount, NULL) ||
            pb_money_format_decimal(rows[i].fee, currency, fee, sizeof fee, NULL))
            return pb_err_set(err, PB_ERR_INTERNAL, "batch %s: an amount cannot be formatted",
                              batch_id);
        pb_settlement_date_format(rows[i].value_day, vday, sizeof vday);
        csv_field(&o, batch_id);
        putf(&o, ",%s,", bday);
        csv_field(&o, rows[i].transaction_id);
        PUTS(&o, ",");
        csv_field(&o, rows[i].merchant_ref ? rows[i].merchant_ref : "");
        putf(&o, ",%s,%s,%s,%s,%s\r\n", rows[i].type, amount, fee, currency, vday);
    }
    if (o.failed) {
        free(o.p);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    /* a dot file first (a watched-directory reader never offers one), then renamed */
    snprintf(final, sizeof final, "%s/%s-settlement-%s-%s.csv", dir, gateway, bday, batch_id);
    snprintf(tmp, sizeof tmp, "%s/.%s-settlement-%s-%s.csv.tmp", dir, gateway, bday, batch_id);
    f = fopen(tmp, "wb");
    if (!f) {
        free(o.p);
        return pb_err_set(err, PB_ERR_TRANSIENT, "cannot create %s: %s", tmp, strerror(errno));
    }
    written = o.len == 0 || fwrite(o.p, 1, o.len, f) == o.len;
    free(o.p);
    if (fclose(f) != 0 || !written || rename(tmp, final) != 0) {
        int e = errno;
        unlink(tmp);
        return pb_err_set(err, PB_ERR_TRANSIENT, "cannot write %s: %s", final, strerror(e));
    }
    snprintf(path, path_len, "%s", final);
    return PB_OK;
}
