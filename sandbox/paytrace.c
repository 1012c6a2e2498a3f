/*
 * sandbox/paytrace.c: the PayTrace API v1 (JSON) emulator of the sandbox,
 * and the signed transaction webhooks it sends.
 *
 * It exports `sbx_paytrace_type` (sandbox/sbx.h, name "paytrace"). The
 * framework creates the state from a JSON settings object, serves our route
 * table on its own loopback port with fault injection around it, and
 * destroys the state at the end. The wire format follows the PayTrace
 * section of /work/shared/specs/WIRE-FORMATS.md; the webhook, which PayTrace
 * v1 does not document, is paybridge's own and is defined below (and in
 * src/connectors/paytrace/paytrace_inbound.c, its receiving side).
 *
 * SETTINGS (create; every key optional, these are the defaults)
 *   {"username":"sandbox-user", "password":"sandbox-pass", "token_ttl_s":7200,
 *    "webhook_url":null, "webhook_secret":"sandbox-paytrace-secret",
 *    "webhook_drop_rate":0.0, "webhook_max_attempts":8, "currency":"USD",
 *    "settle_fee_rate_bp":290, "settle_fee_fixed":"0.30"}
 * Unknown keys are ignored; a known key with a wrong type fails create. The
 * settle fees (2.9 % of a sale rounded half up, plus 0.30) are read at
 * create only.
 *
 * ROUTES (POST, JSON bodies, "Authorization: Bearer <access_token>" unless
 * said otherwise; amounts in requests are decimal strings "10.99", JSON
 * numbers are accepted too)
 *   /oauth/token                      form grant_type=password&username&password, no
 *                                     bearer -> {"access_token","token_type":"bearer",
 *                                     "expires_in"} | 400 {"error":"invalid_grant"|
 *                                     "unsupported_grant_type","error_description"}
 *   /v1/transactions/sale/keyed       {amount, credit_card{number, expiration_month,
 *                                     expiration_year}, csc?, billing_address?, email?,
 *                                     invoice_id?, description?, customer_id?, line_items?}
 *   /v1/transactions/sale/by_customer {amount, customer_id, invoice_id?, description?,
 *                                     line_items?}: the customer's stored card
 *   /v1/checks/sale/by_account        {amount, check{account_number, routing_number},
 *                                     billing_address?, ...}: ACH, payment_method "ACH"
 *   /v1/transactions/refund/for_transaction  {transaction_id, amount? (omitted: the
 *                                     whole unrefunded remainder), invoice_id?, description?}
 *   /v1/transactions/void             {transaction_id}
 *   /v1/customer/create               {customer_id, credit_card{...}, billing_address?, email?}
 *   /v1/transactions/export/by_date_range  {start_date, end_date: "MM/DD/YYYY",
 *                                     transaction_type?, transaction_id?, customer_id?}
 *                                     -> {"success":true,"status_message",
 *                                     "transactions":[records]}; a settled record also
 *                                     carries batch_number, fee and settled_at
 *   /v1/batches/export_settled        {start_date?, end_date?: on the settlement date,
 *                                     batch_number?} -> {"success":true,"batches":
 *                                     [{batch_number, settled_at, currency,
 *                                     transaction_count, sales_amount, refunds_amount,
 *                                     fees, net_amount, transactions}]}
 *                                     (sales - refunds - fees = net, exactly)
 * Admin (no auth, loopback peers only, else 403):
 *   GET  /_sandbox/stats         counters, see h_admin_stats
 *   GET  /_sandbox/transactions  every transaction, export shape, in creation order
 *   GET|POST /_sandbox/settings  read / JSON-merge webhook_url, webhook_secret,
 *                                webhook_drop_rate, webhook_max_attempts, token_ttl_s
 *   POST /_sandbox/reset         forget transactions, customers, tokens, queued webhooks
 *   POST /_sandbox/webhook/{id}  send that transaction's webhook again, now, for its
 *                                current state (never dropped) -> 202
 *   POST /_sandbox/settle        settle every approved, unvoided, unsettled transaction
 *                                into one batch (the emulator has one currency; fees
 *                                settle_fee_rate_bp + settle_fee_fixed per sale, refunds
 *                                netted without fee). Body, all optional:
 *                                {"date":"YYYY-MM-DD" (default today, UTC),
 *                                 "missing":[ids] | N  (left out for good: never settled),
 *                                 "wrong_fee":[ids] | N (sales charged fee_delta more),
 *                                 "fee_delta":"0.10", "seed":1 (the PRNG of the N picks:
 *                                 same traffic + request = same picks),
 *                                 "file_dir":"/abs/dir" (also write the batch as a CSV
 *                                 report file, sandbox/opayo_report.h's layout)}
 *                                -> {"settled", "batch": the export shape or null,
 *                                "batches":[{batch_number, currency, date, transactions,
 *                                gross, fees, net, file?}], "files":[...],
 *                                "anomalies":{"missing":[ids],"wrong_fee":[ids]}}.
 *                                No chargebacks: PayTrace's exports name only SALE and
 *                                REFUND records.
 *   POST /_sandbox/tokens/revoke forget every access token (a client must get a new one)
 *
 * REPLIES (PayTrace's shape)
 *   approved sale   200 {"success":true,"response_code":101,"status_message":"Your
 *                   transaction was successfully approved.","transaction_id":N,
 *                   "approval_code","approval_message","avs_response","csc_response",
 *                   "external_transaction_id","masked_card_number"}
 *   ACH sale        response_code 120 "Your check was successfully processed."
 *   declined sale   200, success false, response_code 102, "Your transaction was not
 *                   approved: insufficient funds." (or "...: the amount exceeds the
 *                   sandbox limit of 10000.00."), with its transaction_id
 *   refund          106 "Your transaction was successfully refunded."
 *   void            109 "Your transaction was successfully voided."
 *   customer        160 "The customer profile for ID/NAME was successfully created."
 *   refused         400 {"success":false,"response_code":1,"status_message":"One or
 *                   more errors has occurred.","errors":{"35":["Please provide a valid
 *                   Credit Card Number."]}}
 *   bad token       401 {"error":"invalid_token","error_description"}
 * Error codes: 35 is PayTrace's (the brief's example); the others are the
 * sandbox's own, listed in `error_texts` below. Whether PayTrace answers a
 * decline with HTTP 200 or 400 is unverified; a client must read "success".
 *
 * TEST BEHAVIOUR
 *   - 4012888888881881 declines with insufficient funds (102); every other
 *     Luhn-valid 13..19 digit number approves (4111111111111111 is the usual
 *     one). A number failing Luhn is error 35. Expired cards: error 44.
 *   - An amount above 10000.00 (in the currency's major unit) declines.
 *   - ACH: routing numbers must pass the ABA checksum (error 111), account
 *     numbers are 4..17 digits (error 110); every valid check approves below
 *     the limit.
 *   - Refunds: only an approved, unvoided SALE; the sum of its approved,
 *     unvoided refunds may not exceed its amount (error 817 names both
 *     numbers). A refund without invoice_id inherits the sale's.
 *   - Void: an approved, unvoided, unsettled SALE without live refunds, or
 *     such a REFUND (which gives its amount back to the sale). Error 815.
 *   - Refunding an unsettled sale is allowed (live PayTrace asks for a void
 *     instead). Settlement is the sandbox's: its batch export's path and
 *     shape are unverified against live PayTrace (WIRE-FORMATS.md).
 *
 * THE RECORD (export shape, also the webhook's "transaction")
 *   {"transaction_id":N, "transaction_type":"SALE"|"REFUND", "amount":10.99,
 *    "currency":"USD", "success", "response_code", "status_message",
 *    "approval_code", "approval_message", "avs_response", "csc_response",
 *    "created":"2026-11-21T19:14:10Z", "customer_id", "invoice_id", "description",
 *    "email", "billing_address":{name, street_address, street_address2, city, state,
 *    zip, country}, "masked_card_number", "payment_method":"CC"|"ACH",
 *    "line_items":[{"sku","description","quantity":2,"unit_price":10.99}],
 *    "original_transaction_id":N, "voided":bool, "voided_at"}
 * Empty optional members are omitted. Amounts (amount, unit_price, quantity,
 * fee, ...) are JSON numbers written from exact decimal text with
 * pb_json_dumps_decimal(); money is int64 minor units inside.
 *
 * THE WEBHOOK
 *   POST <webhook_url>
 *   Content-Type: application/json
 *   X-PayTrace-Signature: <lower-case hex HMAC-SHA256(webhook_secret, raw body bytes)>
 *
 *   {"event_id":"<uuid>", "event_type":"transaction.sale"|"transaction.refund"|
 *    "transaction.void"|"transaction.declined", "created_at":"<UTC ISO 8601>",
 *    "transaction":{the record}}
 * One after every sale (approved: transaction.sale; declined:
 * transaction.declined), refund (transaction.refund) and void
 * (transaction.void, the voided transaction's record with "voided": true).
 * With probability webhook_drop_rate a first webhook is never sent (counted
 * in webhooks_dropped): that is the gap the connector's poller must close.
 * The signature is computed at send time with the secret current then.
 *
 * DELIVERY: one background thread drains a bounded queue (libcurl, one easy
 * handle kept alive, 5 s per POST); a non-2xx or a network error is retried
 * after 200 ms, doubling, capped at 5 s, up to webhook_max_attempts, then
 * counted as failed. The design and its reasons are sandbox/opayo_notify.c's
 * (pb_http_client cannot abort a call in flight, and destroy must be prompt).
 *
 * CARD DATA: card and account numbers and the CSC live only in the request
 * being parsed. A transaction keeps a masked number; stored free text is
 * passed through pb_pan_redact().
 *
 * LOCKING: `mu` guards the store (tokens, customers, transactions, counters,
 * settings other than the webhook ones); the webhook queue has its own `wmu`.
 * Lock order: mu, then wmu; the sender thread takes only wmu, so there is no
 * cycle. Handlers run on a thread per connection and never do I/O under a
 * lock. Lookups are linear scans over bounded arrays: a sandbox holds
 * thousands of transactions, and the scan keeps the store obviously correct.
 *
 * Rejected: sharing opayo_notify.c's notifier. Its header name, settings and
 * counters are Opayo's; a generic notifier would be a framework change for a
 * hundred lines of queue.
 */
#include <ctype.h>
#include <limits.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/crypto.h"
#include "core/json.h"
#include "core/log.h"
#include "core/money.h"
#include "core/pan.h"
#include "net/httpd.h"
#include "connectors/settlement/settlement.h"
#include "opayo_report.h" /* the settlement helpers shared by the emulators */
#include "paytrace.h"
#include "sbx.h"
#include "sbx_notify.h"

#define PT_STATE_MAGIC 0x50545342u /* "PTSB" */
#define PT_MAX_TRANSACTIONS 100000
#define PT_MAX_BATCHES 20000
#define PT_MAX_CUSTOMERS 10000
#define PT_MAX_TOKENS 4096
#define PT_MAX_LINES 100
#define PT_TEXT_MAX 255
#define PT_TOKEN_HEX 32      /* 16 random bytes */
#define PT_LIMIT_MAJOR 10000 /* amounts above this many major units decline */
#define PT_ROUTES_MAX 20
#define PT_STATUS_SLOTS 32
#define PT_QUEUE_MAX 4096 /* webhook deliveries queued at most */
#define PT_POST_TIMEOUT_MS 5000L
#define PT_BACKOFF_FIRST_MS 200u
#define PT_BACKOFF_CAP_MS 5000u
#define PT_URL_MAX 2048
#define PT_SECRET_MAX 1024
#define PT_REPLY_MAX (64 * 1024)
#define PT_DECLINE_CARD "4012888888881881"

/* Members written as JSON numbers from decimal text. */
static const char *const decimal_keys[] = {"amount", "unit_price",   "quantity",       "fee",
                                           "fees",   "sales_amount", "refunds_amount", "net_amount",
                                           NULL};

/* ---- types ----------------------------------------------------------------- */

struct token {
    char value[PT_TOKEN_HEX + 1];
    int64_t expires_ms;
};

struct customer {
    char *id;                /* owned */
    char masked[24];         /* "xxxxxxxxxxxx1111" */
    int declines;            /* the stored card is the decline card */
    json_t *billing_address; /* owned or NULL, redacted */
    char *email;             /* owned or NULL, redacted */
};

struct txn {
    int64_t id;
    int refund; /* REFUND, else SALE */
    int success;
    int response_code;
    char *status_message;         /* owned */
    char approval_code[8];        /* "" unless approved */
    const char *approval_message; /* static */
    const char *avs;              /* static */
    const char *csc;              /* static */
    int64_t amount;               /* minor units, > 0 */
    int64_t refunded;             /* approved, unvoided refunds against this sale */
    char *invoice_id, *description, *email, *customer_id; /* owned or NULL, redacted */
    json_t *billing_address;                              /* owned or NULL */
    json_t *line_items; /* owned or NULL: normalised, decimal text */
    char masked[24];
    const char *method;  /* "CC" | "ACH" */
    int64_t original_id; /* refunds */
    int64_t created_ms;
    int voided;
    int64_t voided_ms;
    int64_t batch; /* settlement batch number, 0 = unsettled */
    int64_t fee;   /* minor units, set at settlement */
    int left_out;  /* a seeded "missing" settlement: never in any batch */
};

struct pt_batch {
    int64_t number;
    int32_t day; /* the settlement date, days since 1970-01-01 */
};

struct delivery {
    struct delivery *next;
    int64_t txn_id; /* for logs */
    char *body;     /* owned, the exact bytes */
    size_t len;
    unsigned attempts;
    uint64_t due_ns;
};

struct pt_state;

struct pt_state {
    unsigned magic;     /* PT_STATE_MAGIC while alive */
    pthread_mutex_t mu; /* guards the store, see LOCKING */
    char *username;     /* owned */
    char *password;     /* owned, never logged */
    char currency[4];
    long token_ttl_s;
    int port;
    struct token *tokens; /* owned array */
    size_t n_tokens;
    struct customer *customers; /* owned array */
    size_t n_customers;
    struct txn **txns; /* owned array of owned pointers, creation order */
    size_t n_txns, cap_txns;
    int64_t next_id; /* next transaction_id */
    int64_t next_batch;
    struct pt_batch *batches; /* owned array, PT_MAX_BATCHES, batches[i].number == i + 1 */
    size_t n_batches;
    long fee_rate_bp;   /* settlement fee: basis points of a sale ... */
    char fee_fixed[32]; /* ... plus this decimal of the currency per sale */
    uint64_t token_requests, tokens_issued, requests;
    int status_code[PT_STATUS_SLOTS];
    uint64_t status_count[PT_STATUS_SLOTS];

    /* the webhook sender */
    pthread_mutex_t wmu; /* guards everything down to the counters */
    pthread_cond_t wcv;  /* CLOCK_MONOTONIC */
    pthread_t thread;
    int thread_started;
    atomic_int stop;
    char *webhook_url;    /* owned or NULL */
    char *webhook_secret; /* owned, never NULL or empty */
    double drop_rate;     /* probability, not money */
    unsigned max_attempts;
    struct delivery *head;
    size_t n_queued;
    int in_flight;
    uint64_t generation;
    uint64_t w_sent, w_acknowledged, w_failed, w_dropped;

    struct sbx_route_slot slots[PT_ROUTES_MAX];
    struct pb_http_route routes[PT_ROUTES_MAX + 1];
};

/* ---- small helpers ------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void iso8601(int64_t when_ms, char buf[32])
{
    time_t secs = (time_t)(when_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static struct pt_state *state_of(void *arg)
{
    struct pt_state *st = arg;
    if (!st || st->magic != PT_STATE_MAGIC) {
        pb_log(PB_LOG_ERROR, "sandbox.paytrace.bad_state", NULL);
        abort(); /* the framework passed something else: a bug, not input */
    }
    return st;
}

static char *redacted_copy(const char *s)
{
    char *c;
    if (!s || !*s)
        return NULL;
    c = strdup(s);
    if (c)
        pb_pan_redact(c, strlen(c));
    return c;
}

static int all_digits(const char *s, size_t min, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n < min || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static void random_digits(char *out, size_t n)
{
    unsigned char b[16];
    if (n > sizeof b)
        n = sizeof b;
    if (pb_random_bytes(b, n))
        memset(b, 7, n);
    for (size_t i = 0; i < n; i++)
        out[i] = (char)('0' + b[i] % 10);
    out[n] = '\0';
}

/* 1 with probability `rate` (0..1), from the CSPRNG. */
static void mask_number(const char *digits, char out[24])
{
    size_t n = strlen(digits), i;
    if (n > 20)
        n = 20;
    for (i = 0; i + 4 < n; i++)
        out[i] = 'x';
    memcpy(out + i, digits + strlen(digits) - 4, 4);
    out[i + 4] = '\0';
}

static int64_t limit_minor(const char *currency)
{
    int64_t v = PT_LIMIT_MAJOR;
    for (int i = pb_currency_exponent(currency); i > 0; i--)
        v *= 10;
    return v;
}

/* ---- replies -------------------------------------------------------------------- */

static const struct {
    int code;
    const char *text;
} error_texts[] = {
    {1, "Please provide a valid request."},
    {30, "Please provide a valid Transaction Amount."},
    {35, "Please provide a valid Credit Card Number."},
    {43, "Please provide a valid Expiration Month."},
    {44, "Please provide a valid Expiration Year."},
    {46, "Please provide a valid Invoice Number."},
    {48, "Please provide a valid CSC."},
    {58, "Please provide a valid Transaction ID."},
    {59, "Please provide a valid Customer ID."},
    {110, "Please provide a valid Checking Account Number."},
    {111, "Please provide a valid Transit Routing Number."},
    {171, "Please provide a unique Customer ID."},
    {180, "Please provide a valid Start Date."},
    {181, "Please provide a valid End Date."},
    {815, "The Transaction ID that you provided could not be voided."},
    {817, "The refund amount exceeds the unrefunded remainder of the transaction."},
    {818, "The Transaction ID that you provided could not be refunded."},
    {900, "Please provide valid line items."},
};

static const char *error_text(int code)
{
    for (size_t i = 0; i < sizeof error_texts / sizeof error_texts[0]; i++)
        if (error_texts[i].code == code)
            return error_texts[i].text;
    return "One or more errors has occurred.";
}

/* Serialise o (taken), money members as numbers. */
static void reply_json(struct pb_http_response *resp, int status, json_t *o)
{
    char *text = o ? pb_json_dumps_decimal(o, decimal_keys, 0) : NULL;
    json_decref(o);
    if (!text) {
        static const char oom[] = "{\"success\":false,\"status_message\":\"out of memory\"}";
        pb_http_response_set(resp, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
    snprintf(resp->content_type, sizeof resp->content_type, "application/json");
}

/* Add errors[code] += message (the code's text when fmt is NULL). */
static void add_error(json_t *errs, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_error(json_t *errs, int code, const char *fmt, ...)
{
    char key[16], msg[300];
    json_t *list;
    snprintf(key, sizeof key, "%d", code);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
    } else {
        snprintf(msg, sizeof msg, "%s", error_text(code));
    }
    list = json_object_get(errs, key);
    if (!list) {
        list = json_array();
        json_object_set_new(errs, key, list);
    }
    json_array_append_new(list, json_string(msg));
}

/* 400 with the errors envelope (takes errs). */
static void reply_errors(struct pb_http_response *resp, json_t *errs)
{
    reply_json(resp, 400,
               json_pack("{s:b,s:i,s:s,s:o}", "success", 0, "response_code", 1, "status_message",
                         "One or more errors has occurred.", "errors", errs));
}

static void reply_one_error(struct pb_http_response *resp, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reply_one_error(struct pb_http_response *resp, int code, const char *fmt, ...)
{
    json_t *errs = json_object();
    char msg[300];
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        add_error(errs, code, "%s", msg);
    } else {
        add_error(errs, code, NULL);
    }
    reply_errors(resp, errs);
}

static json_t *parse_body(struct pb_http_request *req, struct pb_http_response *resp)
{
    json_t *o =
        req->body_len ? json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        reply_one_error(resp, 1, "The request body must be a JSON object.");
        return NULL;
    }
    return o;
}

/* ---- authentication ------------------------------------------------------------- */

static int is_loopback(const char *addr)
{
    if (!addr)
        return 0;
    return strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 ||
           strncmp(addr, "::ffff:127.", 11) == 0;
}

static int check_admin(struct pb_http_request *req, struct pb_http_response *resp)
{
    if (is_loopback(req->remote_addr))
        return 0;
    pb_http_response_error(resp, 403, "forbidden", "sandbox admin routes are loopback only");
    return -1;
}

/* 0 when the bearer token is live; else a 401 and -1. */
static int check_bearer(struct pt_state *st, struct pb_http_request *req,
                        struct pb_http_response *resp)
{
    const char *h = pb_http_header(req, "Authorization");
    int64_t now = now_ms();
    int ok = 0;

    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        h += 7;
        while (*h == ' ')
            h++;
        pthread_mutex_lock(&st->mu);
        for (size_t i = 0; i < st->n_tokens; i++) {
            if (strlen(h) == PT_TOKEN_HEX && pb_ct_equal(st->tokens[i].value, h, PT_TOKEN_HEX) &&
                st->tokens[i].expires_ms > now) {
                ok = 1;
                break;
            }
        }
        pthread_mutex_unlock(&st->mu);
    }
    if (ok)
        return 0;
    reply_json(resp, 401,
               json_pack("{s:s,s:s}", "error", "invalid_token", "error_description",
                         "The access token provided is expired, revoked, malformed, or invalid "
                         "for other reasons."));
    return -1;
}

/* Decode one application/x-www-form-urlencoded value in place. */
static void form_decode(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '+') {
            *o++ = ' ';
        } else if (*s == '%' && isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2])) {
            char hex[3] = {s[1], s[2], 0};
            *o++ = (char)strtol(hex, NULL, 16);
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

static enum pb_http_action h_token(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct pt_state *st = state_of(arg);
    char *form = malloc(req->body_len + 1), *pair, *next;
    const char *grant = NULL, *user = NULL, *pass = NULL;
    unsigned char raw[PT_TOKEN_HEX / 2];
    struct token t;
    int ok = 0, grant_ok;
    long ttl;

    if (!form) {
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    memcpy(form, req->body, req->body_len);
    form[req->body_len] = '\0';
    for (pair = form; pair; pair = next) {
        char *eq;
        next = strchr(pair, '&');
        if (next)
            *next++ = '\0';
        eq = strchr(pair, '=');
        if (!eq)
            continue;
        *eq = '\0';
        form_decode(pair);
        form_decode(eq + 1);
        if (strcmp(pair, "grant_type") == 0)
            grant = eq + 1;
        else if (strcmp(pair, "username") == 0)
            user = eq + 1;
        else if (strcmp(pair, "password") == 0)
            pass = eq + 1;
    }
    grant_ok = grant && strcmp(grant, "password") == 0;
    pthread_mutex_lock(&st->mu);
    st->token_requests++;
    ttl = st->token_ttl_s;
    if (grant_ok && user && pass) {
        size_t ul = strlen(st->username), pl = strlen(st->password);
        int u = strlen(user) == ul && pb_ct_equal(user, st->username, ul);
        int p = strlen(pass) == pl && pb_ct_equal(pass, st->password, pl);
        ok = u & p;
    }
    pthread_mutex_unlock(&st->mu);
    memset(form, 0, req->body_len); /* it held the password; grant/user/pass die here */
    free(form);
    if (!grant_ok) {
        reply_json(resp, 400,
                   json_pack("{s:s,s:s}", "error", "unsupported_grant_type", "error_description",
                             "The authorization grant type is not supported by the "
                             "authorization server."));
        return PB_HTTP_DONE;
    }
    if (!ok) {
        reply_json(resp, 400,
                   json_pack("{s:s,s:s}", "error", "invalid_grant", "error_description",
                             "The provided authorization grant is invalid, expired, revoked, "
                             "does not match the redirection URI used in the authorization "
                             "request, or was issued to another client."));
        return PB_HTTP_DONE;
    }
    if (pb_random_bytes(raw, sizeof raw) ||
        pb_hex_encode(raw, sizeof raw, t.value, sizeof t.value)) {
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    t.expires_ms = now_ms() + (int64_t)ttl * 1000;
    pthread_mutex_lock(&st->mu);
    {
        /* drop expired tokens, then the oldest when full */
        size_t w = 0;
        int64_t now = now_ms();
        for (size_t i = 0; i < st->n_tokens; i++)
            if (st->tokens[i].expires_ms > now)
                st->tokens[w++] = st->tokens[i];
        st->n_tokens = w;
        if (st->n_tokens == PT_MAX_TOKENS) {
            memmove(st->tokens, st->tokens + 1, (PT_MAX_TOKENS - 1) * sizeof *st->tokens);
            st->n_tokens--;
        }
        st->tokens[st->n_tokens++] = t;
        st->tokens_issued++;
    }
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200,
               json_pack("{s:s,s:s,s:I}", "access_token", t.value, "token_type", "bearer",
                         "expires_in", (json_int_t)ttl));
    return PB_HTTP_DONE;
}

/* ---- request fields ----------------------------------------------------------------- */

/* An optional string member of at most max bytes; NULL when absent/null/empty.
 * A wrong type or length adds `code` to errs. */
static const char *opt_string(json_t *obj, const char *key, size_t max, int code, json_t *errs)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_string(v) || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        add_error(errs, code, "%s must be a string of at most %zu characters.", key, max);
        return NULL;
    }
    return json_string_length(v) ? json_string_value(v) : NULL;
}

/* Money member > 0 (or >= 0 when zero_ok). Returns -1 and adds code 30 on error. */
static int64_t money_member(json_t *obj, const char *key, const char *currency, int zero_ok,
                            int code, json_t *errs)
{
    json_t *v = json_object_get(obj, key);
    int64_t minor;
    if (!v || json_is_null(v) || json_is_boolean(v) ||
        pb_json_to_minor(v, currency, &minor, NULL) != PB_OK || minor < 0 ||
        (!zero_ok && minor == 0)) {
        add_error(errs, code, NULL);
        return -1;
    }
    return minor;
}

/* A string or integer member as text ("12"); NULL when absent. */
static const char *text_of(json_t *v, char *buf, size_t len)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    return NULL;
}

/* Validate a credit_card object; on success fill masked/declines and return 0. */
static int read_card(json_t *body, json_t *errs, char masked[24], int *declines)
{
    json_t *cc = json_object_get(body, "credit_card");
    const char *number, *month, *year;
    char mbuf[16], ybuf[16];
    int bad = 0;

    if (!json_is_object(cc)) {
        add_error(errs, 35, NULL);
        return -1;
    }
    number = json_string_value(json_object_get(cc, "number"));
    if (!all_digits(number, 13, 19) || !pb_luhn_valid(number, strlen(number))) {
        add_error(errs, 35, NULL);
        bad = 1;
    } else {
        mask_number(number, masked);
        *declines = strcmp(number, PT_DECLINE_CARD) == 0;
    }
    month = text_of(json_object_get(cc, "expiration_month"), mbuf, sizeof mbuf);
    year = text_of(json_object_get(cc, "expiration_year"), ybuf, sizeof ybuf);
    long m = all_digits(month, 1, 2) ? strtol(month, NULL, 10) : 0;
    long y = all_digits(year, 2, 4) ? strtol(year, NULL, 10) : -1;
    if (y >= 0 && y < 100)
        y += 2000;
    if (m < 1 || m > 12) {
        add_error(errs, 43, NULL);
        bad = 1;
    }
    if (y < 2000) {
        add_error(errs, 44, NULL);
        bad = 1;
    } else {
        time_t secs = time(NULL);
        struct tm tm;
        gmtime_r(&secs, &tm);
        if (y < tm.tm_year + 1900 ||
            (y == tm.tm_year + 1900 && m >= 1 && m <= 12 && m < tm.tm_mon + 1)) {
            add_error(errs, 44, "The card has expired.");
            bad = 1;
        }
    }
    return bad ? -1 : 0;
}

/* A PAN-redacted copy of billing_address's known string fields, or NULL. */
static json_t *read_address(json_t *body, json_t *errs)
{
    static const char *const keys[] = {
        "name", "street_address", "street_address2", "city", "state", "zip", "country", NULL};
    json_t *a = json_object_get(body, "billing_address"), *copy;
    if (!a || json_is_null(a))
        return NULL;
    if (!json_is_object(a)) {
        add_error(errs, 1, "billing_address must be an object.");
        return NULL;
    }
    copy = json_object();
    for (size_t i = 0; keys[i]; i++) {
        const char *s = opt_string(a, keys[i], 100, 1, errs);
        char *r = redacted_copy(s);
        if (r)
            json_object_set_new(copy, keys[i], json_string(r));
        free(r);
    }
    if (json_object_size(copy) == 0) {
        json_decref(copy);
        return NULL;
    }
    return copy;
}

/* Quantity as exact decimal text (> 0) into out; -1 when invalid. */
static int quantity_text(json_t *v, char out[32])
{
    size_t i = 0;
    int nonzero = 0;
    if (json_is_integer(v)) {
        snprintf(out, 32, "%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        double d = json_real_value(v), back;
        snprintf(out, 32, "%.15g", d);
        back = strtod(out, NULL);
        if (memcmp(&back, &d, sizeof d) != 0)
            return -1;
    } else if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) < 32) {
        memcpy(out, json_string_value(v), json_string_length(v) + 1);
    } else {
        return -1;
    }
    for (; out[i] >= '0' && out[i] <= '9'; i++)
        nonzero |= out[i] != '0';
    if (i == 0)
        return -1;
    if (out[i] == '.') {
        size_t j = ++i;
        for (; out[i] >= '0' && out[i] <= '9'; i++)
            nonzero |= out[i] != '0';
        if (i == j)
            return -1;
    }
    return out[i] == '\0' && nonzero ? 0 : -1;
}

/* The sandbox extension line_items, normalised; NULL when absent or invalid. */
static json_t *read_lines(json_t *body, const char *currency, json_t *errs)
{
    json_t *lines = json_object_get(body, "line_items"), *line, *out;
    size_t i;
    if (!lines || json_is_null(lines))
        return NULL;
    if (!json_is_array(lines) || json_array_size(lines) > PT_MAX_LINES) {
        add_error(errs, 900, "line_items must be an array of at most %d lines.", PT_MAX_LINES);
        return NULL;
    }
    out = json_array();
    json_array_foreach(lines, i, line)
    {
        const char *sku = json_string_value(json_object_get(line, "sku"));
        json_t *desc = json_object_get(line, "description");
        char qty[32], price[PB_MONEY_DECIMAL_MAX], *d = NULL;
        int64_t minor;
        if (!sku || !sku[0] || strlen(sku) > 64) {
            add_error(errs, 900, "line_items.%zu.sku must be a string of 1 to 64 characters.", i);
            continue;
        }
        if (desc && !json_is_null(desc) &&
            (!json_is_string(desc) || json_string_length(desc) > PT_TEXT_MAX)) {
            add_error(errs, 900, "line_items.%zu.description must be a string.", i);
            continue;
        }
        if (quantity_text(json_object_get(line, "quantity"), qty)) {
            add_error(errs, 900, "line_items.%zu.quantity must be a positive decimal.", i);
            continue;
        }
        if (!json_object_get(line, "unit_price") ||
            pb_json_to_minor(json_object_get(line, "unit_price"), currency, &minor, NULL) ||
            minor < 0) {
            add_error(errs, 900, "line_items.%zu.unit_price must be a decimal amount.", i);
            continue;
        }
        pb_money_format_decimal(minor, currency, price, sizeof price, NULL);
        d = redacted_copy(json_string_value(desc));
        json_array_append_new(out, json_pack("{s:s,s:s*,s:s,s:s}", "sku", sku, "description", d,
                                             "quantity", qty, "unit_price", price));
        free(d);
    }
    return out;
}

/* ---- the store ---------------------------------------------------------------------- */

static void txn_free(struct txn *t)
{
    if (!t)
        return;
    free(t->status_message);
    free(t->invoice_id);
    free(t->description);
    free(t->email);
    free(t->customer_id);
    json_decref(t->billing_address);
    json_decref(t->line_items);
    free(t);
}

/* Caller holds mu. */
static struct txn *find_txn(struct pt_state *st, int64_t id)
{
    for (size_t i = 0; i < st->n_txns; i++)
        if (st->txns[i]->id == id)
            return st->txns[i];
    return NULL;
}

/* Caller holds mu. */
static struct customer *find_customer(struct pt_state *st, const char *id)
{
    for (size_t i = 0; i < st->n_customers; i++)
        if (strcmp(st->customers[i].id, id) == 0)
            return &st->customers[i];
    return NULL;
}

/* Caller holds mu. Takes t; assigns its id. -1 when full. */
static int store_txn(struct pt_state *st, struct txn *t)
{
    if (st->n_txns == st->cap_txns) {
        size_t cap = st->cap_txns ? st->cap_txns * 2 : 256;
        struct txn **grown;
        if (cap > PT_MAX_TRANSACTIONS)
            cap = PT_MAX_TRANSACTIONS;
        if (st->n_txns >= cap)
            return -1;
        grown = realloc(st->txns, cap * sizeof *grown);
        if (!grown)
            return -1;
        st->txns = grown;
        st->cap_txns = cap;
    }
    t->id = st->next_id++;
    st->txns[st->n_txns++] = t;
    return 0;
}

static void set_str(json_t *o, const char *key, const char *value)
{
    if (value && *value)
        json_object_set_new(o, key, json_string(value));
}

static json_t *money_text(int64_t minor, const char *currency)
{
    char text[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, text, sizeof text, NULL))
        return json_string("0");
    return json_string(text);
}

/* The export record of t. Caller holds mu; caller owns the result. */
static json_t *txn_record(const struct pt_state *st, const struct txn *t)
{
    json_t *o = json_object();
    char when[32];
    if (!o)
        return NULL;
    json_object_set_new(o, "transaction_id", json_integer((json_int_t)t->id));
    json_object_set_new(o, "transaction_type", json_string(t->refund ? "REFUND" : "SALE"));
    json_object_set_new(o, "amount", money_text(t->amount, st->currency));
    json_object_set_new(o, "currency", json_string(st->currency));
    json_object_set_new(o, "success", json_boolean(t->success));
    json_object_set_new(o, "response_code", json_integer(t->response_code));
    set_str(o, "status_message", t->status_message);
    set_str(o, "approval_code", t->approval_code);
    set_str(o, "approval_message", t->approval_message);
    set_str(o, "avs_response", t->avs);
    set_str(o, "csc_response", t->csc);
    iso8601(t->created_ms, when);
    json_object_set_new(o, "created", json_string(when));
    set_str(o, "customer_id", t->customer_id);
    set_str(o, "invoice_id", t->invoice_id);
    set_str(o, "description", t->description);
    set_str(o, "email", t->email);
    if (t->billing_address)
        json_object_set_new(o, "billing_address", json_deep_copy(t->billing_address));
    set_str(o, "masked_card_number", t->masked);
    json_object_set_new(o, "payment_method", json_string(t->method));
    if (t->line_items)
        json_object_set_new(o, "line_items", json_deep_copy(t->line_items));
    if (t->original_id)
        json_object_set_new(o, "original_transaction_id", json_integer((json_int_t)t->original_id));
    json_object_set_new(o, "voided", json_boolean(t->voided));
    if (t->voided) {
        iso8601(t->voided_ms, when);
        json_object_set_new(o, "voided_at", json_string(when));
    }
    return o;
}

/* The reply of a transaction call. Caller holds mu. */
static json_t *txn_reply(const struct txn *t)
{
    return json_pack("{s:b,s:i,s:s,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "success", t->success,
                     "response_code", t->response_code, "status_message",
                     t->status_message ? t->status_message : "", "transaction_id",
                     (json_int_t)t->id, "approval_code", t->approval_code, "approval_message",
                     t->approval_message ? t->approval_message : "", "avs_response",
                     t->avs ? t->avs : "", "csc_response", t->csc ? t->csc : "",
                     "external_transaction_id", "", "masked_card_number", t->masked);
}

/* ---- the webhook sender -------------------------------------------------------------- */

static const char *event_type_of(const struct txn *t)
{
    int approved = t->success &&
                   (t->response_code == 101 || t->response_code == 106 || t->response_code == 120);
    if (!approved)
        return "transaction.declined";
    if (t->voided)
        return "transaction.void";
    return t->refund ? "transaction.refund" : "transaction.sale";
}

/* Caller holds mu. A new webhook body for t's current state (malloc'd). */
static char *webhook_body(const struct pt_state *st, const struct txn *t, size_t *len,
                          char event_id[37])
{
    char created[32];
    json_t *root;
    char *text;

    if (pb_uuid4(event_id))
        return NULL;
    iso8601(now_ms(), created);
    root = json_pack("{s:s,s:s,s:s,s:o}", "event_id", event_id, "event_type", event_type_of(t),
                     "created_at", created, "transaction", txn_record(st, t));
    if (!root)
        return NULL;
    text = pb_json_dumps_decimal(root, decimal_keys, 0);
    json_decref(root);
    if (text)
        *len = strlen(text);
    return text;
}

/* Caller holds mu (wmu is taken here). first = 1: a new transaction's webhook,
 * which may be dropped. Returns 0 queued, 1 dropped, -1 no url, -2 full/OOM. */
static int webhook_enqueue(struct pt_state *st, const struct txn *t, int first)
{
    char event_id[37];
    struct delivery *d;
    int rc = 0;

    pthread_mutex_lock(&st->wmu);
    if (!st->webhook_url) {
        rc = -1;
        goto out;
    }
    if (first && sbx_roll(st->drop_rate)) {
        st->w_dropped++;
        rc = 1;
        goto out;
    }
    if (st->n_queued >= PT_QUEUE_MAX) {
        st->w_failed++;
        rc = -2;
        goto out;
    }
    d = calloc(1, sizeof *d);
    if (!d || !(d->body = webhook_body(st, t, &d->len, event_id))) {
        free(d);
        rc = -2;
        goto out;
    }
    d->txn_id = t->id;
    d->due_ns = pb_monotonic_ns();
    d->next = st->head;
    st->head = d;
    st->n_queued++;
    pthread_cond_broadcast(&st->wcv);
out:
    pthread_mutex_unlock(&st->wmu);
    return rc;
}

static void delivery_free(struct delivery *d)
{
    if (d) {
        free(d->body);
        free(d);
    }
}

/* Caller holds wmu. */
static void queue_clear(struct pt_state *st)
{
    while (st->head) {
        struct delivery *d = st->head;
        st->head = d->next;
        delivery_free(d);
    }
    st->n_queued = 0;
}

/* One POST; the HTTP status or 0. */
static long post_once(struct pt_state *st, CURL *curl, const char *url, const char *secret,
                      const struct delivery *d)
{
    const char *more[] = {"User-Agent: paybridge-sandbox-paytrace/1", "Expect:", NULL};
    struct sbx_post post = {url, secret, "X-PayTrace-Signature", more, d->body, d->len,
                            PT_POST_TIMEOUT_MS, PT_REPLY_MAX, 0, &st->stop};
    CURLcode cc;
    long status = sbx_notify_post(curl, &post, &cc);
    if (cc != CURLE_OK && cc != CURLE_WRITE_ERROR && !atomic_load(&st->stop))
        pb_log(PB_LOG_WARN, "sandbox.paytrace.webhook_error", "error", curl_easy_strerror(cc),
               NULL);
    return status;
}

static void *sender_main(void *arg)
{
    struct pt_state *st = arg;
    CURL *curl = curl_easy_init();

    pthread_mutex_lock(&st->wmu);
    while (!atomic_load(&st->stop)) {
        struct delivery *d = NULL, **pp, **best = NULL;
        char *url, *secret;
        uint64_t generation, now;
        long status;

        for (pp = &st->head; *pp; pp = &(*pp)->next)
            if (!best || (*pp)->due_ns < (*best)->due_ns)
                best = pp;
        if (!best) {
            pthread_cond_wait(&st->wcv, &st->wmu);
            continue;
        }
        now = pb_monotonic_ns();
        if ((*best)->due_ns > now) {
            sbx_wait_until(&st->wcv, &st->wmu, (*best)->due_ns);
            continue;
        }
        d = *best;
        *best = d->next;
        d->next = NULL;
        st->n_queued--;
        if (!st->webhook_url || !curl) {
            st->w_failed++;
            delivery_free(d);
            continue;
        }
        url = strdup(st->webhook_url);
        secret = strdup(st->webhook_secret);
        generation = st->generation;
        st->in_flight = 1;
        pthread_mutex_unlock(&st->wmu);

        status = (url && secret) ? post_once(st, curl, url, secret, d) : 0;
        free(url);
        pb_secret_free(secret);

        pthread_mutex_lock(&st->wmu);
        st->in_flight = 0;
        if (generation != st->generation || atomic_load(&st->stop)) {
            delivery_free(d);
            continue;
        }
        st->w_sent++;
        d->attempts++;
        if (status >= 200 && status < 300) {
            st->w_acknowledged++;
            delivery_free(d);
            continue;
        }
        if (d->attempts >= st->max_attempts) {
            char id[24];
            snprintf(id, sizeof id, "%lld", (long long)d->txn_id);
            st->w_failed++;
            pb_log(PB_LOG_WARN, "sandbox.paytrace.webhook_failed", "transaction_id", id, NULL);
            delivery_free(d);
            continue;
        }
        d->due_ns =
            pb_monotonic_ns() + sbx_backoff_ns(d->attempts, PT_BACKOFF_FIRST_MS, PT_BACKOFF_CAP_MS);
        d->next = st->head;
        st->head = d;
        st->n_queued++;
    }
    pthread_mutex_unlock(&st->wmu);
    if (curl)
        curl_easy_cleanup(curl);
    return NULL;
}

/* Merge the webhook_* keys of patch (and token_ttl_s) into the live settings.
 * All or nothing; PB_ERR_INVALID names the key. */
static enum pb_rc configure(struct pt_state *st, json_t *patch, struct pb_err *err)
{
    json_t *v;
    int set_url = 0, set_secret = 0, set_rate = 0, set_attempts = 0, set_ttl = 0;
    const char *url = NULL, *secret = NULL;
    char *url_copy = NULL, *secret_copy = NULL;
    double rate = 0;
    json_int_t attempts = 0, ttl = 0;

    if (!patch)
        return PB_OK;
    if (!json_is_object(patch))
        return pb_err_set(err, PB_ERR_INVALID, "settings must be a JSON object");
    if ((v = json_object_get(patch, "webhook_url"))) {
        if (json_is_null(v)) {
            url = NULL;
        } else if (json_is_string(v) && json_string_length(v) <= PT_URL_MAX &&
                   (strncasecmp(json_string_value(v), "http://", 7) == 0 ||
                    strncasecmp(json_string_value(v), "https://", 8) == 0)) {
            url = json_string_value(v);
        } else {
            return pb_err_set(err, PB_ERR_INVALID,
                              "webhook_url must be null or an http(s) URL of at most %d "
                              "characters",
                              PT_URL_MAX);
        }
        set_url = 1;
    }
    if ((v = json_object_get(patch, "webhook_secret"))) {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > PT_SECRET_MAX ||
            strlen(json_string_value(v)) != json_string_length(v))
            return pb_err_set(err, PB_ERR_INVALID,
                              "webhook_secret must be a non-empty string of at most %d bytes",
                              PT_SECRET_MAX);
        secret = json_string_value(v);
        set_secret = 1;
    }
    if ((v = json_object_get(patch, "webhook_drop_rate"))) {
        if (!json_is_number(v) || json_number_value(v) < 0.0 || json_number_value(v) > 1.0)
            return pb_err_set(err, PB_ERR_INVALID,
                              "webhook_drop_rate must be a number from 0 to 1");
        rate = json_number_value(v);
        set_rate = 1;
    }
    if ((v = json_object_get(patch, "webhook_max_attempts"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 100)
            return pb_err_set(err, PB_ERR_INVALID,
                              "webhook_max_attempts must be an integer from 1 to 100");
        attempts = json_integer_value(v);
        set_attempts = 1;
    }
    if ((v = json_object_get(patch, "token_ttl_s"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 86400)
            return pb_err_set(err, PB_ERR_INVALID,
                              "token_ttl_s must be an integer from 1 to 86400");
        ttl = json_integer_value(v);
        set_ttl = 1;
    }
    if (set_url && url && !(url_copy = strdup(url)))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    if (set_secret && !(secret_copy = strdup(secret))) {
        free(url_copy);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    if (set_ttl) {
        pthread_mutex_lock(&st->mu);
        st->token_ttl_s = (long)ttl;
        pthread_mutex_unlock(&st->mu);
    }
    pthread_mutex_lock(&st->wmu);
    if (set_url) {
        free(st->webhook_url);
        st->webhook_url = url_copy;
    }
    if (set_secret) {
        pb_secret_free(st->webhook_secret);
        st->webhook_secret = secret_copy;
    }
    if (set_rate)
        st->drop_rate = rate;
    if (set_attempts)
        st->max_attempts = (unsigned)attempts;
    pthread_cond_broadcast(&st->wcv);
    pthread_mutex_unlock(&st->wmu);
    return PB_OK;
}

/* ---- routes: transactions ------------------------------------------------------------- */

enum sale_kind { SALE_KEYED, SALE_CUSTOMER, SALE_CHECK };

/* ABA routing number checksum. */
static int routing_valid(const char *r)
{
    int sum;
    if (!all_digits(r, 9, 9))
        return 0;
    sum = 3 * ((r[0] - '0') + (r[3] - '0') + (r[6] - '0')) +
          7 * ((r[1] - '0') + (r[4] - '0') + (r[7] - '0')) +
          ((r[2] - '0') + (r[5] - '0') + (r[8] - '0'));
    return sum % 10 == 0;
}

static enum pb_http_action sale(struct pb_http_request *req, struct pb_http_response *resp,
                                struct pt_state *st, enum sale_kind kind)
{
    json_t *body, *errs, *address, *lines;
    const char *invoice, *description, *email, *customer_id, *csc;
    char masked[24] = "", currency[4];
    int declines = 0;
    int64_t amount;
    struct txn *t;
    json_t *reply;

    if (check_bearer(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    memcpy(currency, st->currency, sizeof currency);
    pthread_mutex_unlock(&st->mu);

    errs = json_object();
    amount = money_member(body, "amount", currency, 0, 30, errs);
    invoice = opt_string(body, "invoice_id", 50, 46, errs);
    description = opt_string(body, "description", PT_TEXT_MAX, 1, errs);
    email = opt_string(body, "email", 320, 1, errs);
    customer_id = opt_string(body, "customer_id", 64, 59, errs);
    csc = opt_string(body, "csc", 4, 48, errs);
    if (csc && !all_digits(csc, 3, 4))
        add_error(errs, 48, NULL);
    address = read_address(body, errs);
    lines = read_lines(body, currency, errs);
    if (kind == SALE_KEYED) {
        read_card(body, errs, masked, &declines);
    } else if (kind == SALE_CHECK) {
        json_t *check = json_object_get(body, "check");
        const char *account = json_string_value(json_object_get(check, "account_number"));
        const char *routing = json_string_value(json_object_get(check, "routing_number"));
        if (!all_digits(account, 4, 17))
            add_error(errs, 110, NULL);
        else
            mask_number(account, masked);
        if (!routing_valid(routing))
            add_error(errs, 111, NULL);
    } else if (!customer_id) {
        add_error(errs, 59, NULL);
    }
    if (json_object_size(errs)) {
        json_decref(address);
        json_decref(lines);
        json_decref(body);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);

    t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(address);
        json_decref(lines);
        json_decref(body);
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    t->amount = amount;
    t->invoice_id = redacted_copy(invoice);
    t->description = redacted_copy(description);
    t->email = redacted_copy(email);
    t->customer_id = redacted_copy(customer_id);
    t->billing_address = address;
    t->line_items = lines;
    t->method = kind == SALE_CHECK ? "ACH" : "CC";
    t->created_ms = now_ms();

    pthread_mutex_lock(&st->mu);
    if (kind == SALE_CUSTOMER) {
        struct customer *cu = find_customer(st, customer_id);
        if (!cu) {
            pthread_mutex_unlock(&st->mu);
            reply_one_error(resp, 59, "Customer ID %.64s does not exist.", customer_id);
            txn_free(t);
            json_decref(body);
            return PB_HTTP_DONE;
        }
        snprintf(masked, sizeof masked, "%s", cu->masked);
        declines = cu->declines;
        if (!t->billing_address && cu->billing_address)
            t->billing_address = json_deep_copy(cu->billing_address);
        if (!t->email && cu->email)
            t->email = strdup(cu->email);
    }
    snprintf(t->masked, sizeof t->masked, "%s", masked);
    if (declines || amount > limit_minor(st->currency)) {
        char limit[PB_MONEY_DECIMAL_MAX], msg[160];
        pb_money_format_decimal(limit_minor(st->currency), st->currency, limit, sizeof limit, NULL);
        if (declines)
            snprintf(msg, sizeof msg, "Your transaction was not approved: insufficient funds.");
        else
            snprintf(msg, sizeof msg,
                     "Your transaction was not approved: the amount exceeds the sandbox limit "
                     "of %s.",
                     limit);
        t->success = 0;
        t->response_code = 102;
        t->status_message = strdup(msg);
        t->approval_message = declines ? "  NSF - INSUFFICIENT FUNDS" : "  DECLINED - OVER LIMIT";
    } else {
        t->success = 1;
        t->response_code = kind == SALE_CHECK ? 120 : 101;
        t->status_message =
            strdup(kind == SALE_CHECK ? "Your check was successfully processed."
                                      : "Your transaction was successfully approved.");
        memcpy(t->approval_code, "TAS", 3);
        random_digits(t->approval_code + 3, 3);
        t->approval_message = "  EXACT MATCH";
    }
    if (kind != SALE_CHECK) {
        int zip = t->billing_address && json_object_get(t->billing_address, "zip");
        t->avs = zip ? "Full Exact Match" : "No Match";
        t->csc = csc ? "Match" : "";
    } else {
        t->avs = "";
        t->csc = "";
    }
    if (store_txn(st, t)) {
        pthread_mutex_unlock(&st->mu);
        txn_free(t);
        json_decref(body);
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    reply = txn_reply(t);
    webhook_enqueue(st, t, 1); /* no url or a full queue: the poller's case */
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    reply_json(resp, 200, reply);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_sale_keyed(struct pb_http_request *req, struct pb_http_response *resp,
                                        void *arg)
{
    return sale(req, resp, state_of(arg), SALE_KEYED);
}

static enum pb_http_action h_sale_customer(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *arg)
{
    return sale(req, resp, state_of(arg), SALE_CUSTOMER);
}

static enum pb_http_action h_sale_check(struct pb_http_request *req, struct pb_http_response *resp,
                                        void *arg)
{
    return sale(req, resp, state_of(arg), SALE_CHECK);
}

/* transaction_id as an integer; 0 and error 58 added when invalid. */
static int64_t txn_id_member(json_t *body, json_t *errs)
{
    json_t *v = json_object_get(body, "transaction_id");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        return (int64_t)json_integer_value(v);
    if (json_is_string(v) && all_digits(json_string_value(v), 1, 18))
        return (int64_t)strtoll(json_string_value(v), NULL, 10);
    add_error(errs, 58, NULL);
    return 0;
}

static int approved(const struct txn *t)
{
    return t->success &&
           (t->response_code == 101 || t->response_code == 106 || t->response_code == 120);
}

static enum pb_http_action h_refund(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *body, *errs, *reply;
    const char *invoice, *description;
    char currency[4];
    int64_t id, amount = 0;
    struct txn *orig, *t;

    if (check_bearer(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    memcpy(currency, st->currency, sizeof currency);
    pthread_mutex_unlock(&st->mu);
    errs = json_object();
    id = txn_id_member(body, errs);
    if (json_object_get(body, "amount") && !json_is_null(json_object_get(body, "amount")))
        amount = money_member(body, "amount", currency, 0, 30, errs);
    invoice = opt_string(body, "invoice_id", 50, 46, errs);
    description = opt_string(body, "description", PT_TEXT_MAX, 1, errs);
    if (json_object_size(errs)) {
        json_decref(body);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);

    pthread_mutex_lock(&st->mu);
    orig = find_txn(st, id);
    if (!orig) {
        pthread_mutex_unlock(&st->mu);
        json_decref(body);
        reply_one_error(resp, 58, "Transaction ID %lld does not exist.", (long long)id);
        return PB_HTTP_DONE;
    }
    if (orig->refund || !approved(orig) || orig->voided) {
        pthread_mutex_unlock(&st->mu);
        json_decref(body);
        reply_one_error(resp, 818,
                        "The Transaction ID that you provided could not be refunded: transaction "
                        "%lld is %s.",
                        (long long)id,
                        orig->refund   ? "a refund"
                        : orig->voided ? "voided"
                                       : "not an approved sale");
        return PB_HTTP_DONE;
    }
    {
        int64_t remainder = orig->amount - orig->refunded;
        if (amount == 0)
            amount = remainder;
        if (amount <= 0 || amount > remainder) {
            char want[PB_MONEY_DECIMAL_MAX], left[PB_MONEY_DECIMAL_MAX];
            pb_money_format_decimal(amount, st->currency, want, sizeof want, NULL);
            pb_money_format_decimal(remainder, st->currency, left, sizeof left, NULL);
            pthread_mutex_unlock(&st->mu);
            json_decref(body);
            reply_one_error(resp, 817,
                            "The refund amount of %s exceeds the unrefunded remainder of %s on "
                            "transaction %lld.",
                            want, left, (long long)id);
            return PB_HTTP_DONE;
        }
    }
    t = calloc(1, sizeof *t);
    if (!t) {
        pthread_mutex_unlock(&st->mu);
        json_decref(body);
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    t->refund = 1;
    t->success = 1;
    t->response_code = 106;
    t->status_message = strdup("Your transaction was successfully refunded.");
    t->amount = amount;
    t->original_id = orig->id;
    t->invoice_id = redacted_copy(invoice ? invoice : orig->invoice_id);
    t->description = redacted_copy(description);
    t->email = orig->email ? strdup(orig->email) : NULL;
    t->customer_id = orig->customer_id ? strdup(orig->customer_id) : NULL;
    t->billing_address = orig->billing_address ? json_deep_copy(orig->billing_address) : NULL;
    snprintf(t->masked, sizeof t->masked, "%s", orig->masked);
    t->method = orig->method;
    t->avs = "";
    t->csc = "";
    t->created_ms = now_ms();
    if (store_txn(st, t)) {
        pthread_mutex_unlock(&st->mu);
        txn_free(t);
        json_decref(body);
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    orig->refunded += amount; /* <= orig->amount, checked above */
    reply = txn_reply(t);
    webhook_enqueue(st, t, 1);
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    reply_json(resp, 200, reply);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_void(struct pb_http_request *req, struct pb_http_response *resp,
                                  void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *body, *errs, *reply;
    const char *why = NULL;
    int64_t id;
    struct txn *t;

    if (check_bearer(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    errs = json_object();
    id = txn_id_member(body, errs);
    json_decref(body);
    if (json_object_size(errs)) {
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);
    pthread_mutex_lock(&st->mu);
    t = find_txn(st, id);
    if (!t) {
        pthread_mutex_unlock(&st->mu);
        reply_one_error(resp, 58, "Transaction ID %lld does not exist.", (long long)id);
        return PB_HTTP_DONE;
    }
    if (!approved(t))
        why = "it was not approved";
    else if (t->voided)
        why = "it is already voided";
    else if (t->batch)
        why = "it is settled (refund it instead)";
    else if (!t->refund && t->refunded > 0)
        why = "it has refunds (void them first)";
    if (why) {
        pthread_mutex_unlock(&st->mu);
        reply_one_error(resp, 815, "The Transaction ID that you provided could not be voided: %s.",
                        why);
        return PB_HTTP_DONE;
    }
    t->voided = 1;
    t->voided_ms = now_ms();
    if (t->refund) {
        struct txn *orig = find_txn(st, t->original_id);
        if (orig)
            orig->refunded -= t->amount;
    }
    reply =
        json_pack("{s:b,s:i,s:s,s:I}", "success", 1, "response_code", 109, "status_message",
                  "Your transaction was successfully voided.", "transaction_id", (json_int_t)t->id);
    webhook_enqueue(st, t, 1);
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, reply);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_customer_create(struct pb_http_request *req,
                                             struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *body, *errs, *address, *reply;
    const char *id, *email;
    char masked[24] = "", msg[200];
    int declines = 0;
    struct customer *cu;

    if (check_bearer(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    errs = json_object();
    id = opt_string(body, "customer_id", 64, 59, errs);
    if (!id && !json_object_get(errs, "59"))
        add_error(errs, 59, NULL);
    email = opt_string(body, "email", 320, 1, errs);
    address = read_address(body, errs);
    read_card(body, errs, masked, &declines);
    if (json_object_size(errs)) {
        json_decref(address);
        json_decref(body);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);
    pthread_mutex_lock(&st->mu);
    if (find_customer(st, id)) {
        pthread_mutex_unlock(&st->mu);
        reply_one_error(resp, 171, "Customer ID %.64s already exists.", id);
        json_decref(address);
        json_decref(body);
        return PB_HTTP_DONE;
    }
    if (st->n_customers >= PT_MAX_CUSTOMERS || !(id = strdup(id))) {
        pthread_mutex_unlock(&st->mu);
        json_decref(address);
        json_decref(body);
        reply_json(resp, 500, NULL);
        return PB_HTTP_DONE;
    }
    cu = &st->customers[st->n_customers++];
    memset(cu, 0, sizeof *cu);
    cu->id = (char *)id;
    snprintf(cu->masked, sizeof cu->masked, "%s", masked);
    cu->declines = declines;
    cu->billing_address = address;
    cu->email = redacted_copy(email);
    {
        const char *name = address ? json_string_value(json_object_get(address, "name")) : NULL;
        snprintf(msg, sizeof msg, "The customer profile for %.64s/%.64s was successfully created.",
                 cu->id, name ? name : "");
    }
    reply = json_pack("{s:b,s:i,s:s,s:s,s:s}", "success", 1, "response_code", 160, "status_message",
                      msg, "customer_id", cu->id, "masked_card_number", cu->masked);
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    reply_json(resp, 200, reply);
    return PB_HTTP_DONE;
}

/* ---- routes: exports -------------------------------------------------------------------- */

/* "MM/DD/YYYY" into days since the epoch; -1 when invalid. */
static long parse_us_date(const char *s)
{
    int m, d, y;
    char tail;
    struct tm tm;
    if (!s || sscanf(s, "%2d/%2d/%4d%c", &m, &d, &y, &tail) != 3 || m < 1 || m > 12 || d < 1 ||
        d > 31 || y < 1970 || y > 9999)
        return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = m - 1;
    tm.tm_mday = d;
    tm.tm_hour = 12;
    return (long)(timegm(&tm) / 86400);
}

static long day_of(int64_t ms)
{
    return (long)(ms / 86400000);
}

/* "YYYY-MM-DDT00:00:00Z" of batch `number` (settled_at). Caller holds mu. */
static void batch_time(const struct pt_state *st, int64_t number, char when[32])
{
    int32_t day = number >= 1 && (size_t)number <= st->n_batches ? st->batches[number - 1].day : 0;
    iso8601((int64_t)day * 86400000, when);
}

/* The settlement members of a settled record: batch_number, fee, settled_at.
 * Caller holds mu. */
static void settled_members(const struct pt_state *st, const struct txn *t, json_t *rec)
{
    char when[32];
    if (!rec || t->batch <= 0)
        return;
    batch_time(st, t->batch, when);
    json_object_set_new(rec, "batch_number", json_integer((json_int_t)t->batch));
    json_object_set_new(rec, "fee", money_text(t->fee, st->currency));
    json_object_set_new(rec, "settled_at", json_string(when));
}

static enum pb_http_action h_export(struct pb_http_request *req, struct pb_http_response *resp,
                                    void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *body, *errs, *list;
    const char *type, *customer;
    long from, to;
    int64_t only_id = 0;

    if (check_bearer(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    errs = json_object();
    from = parse_us_date(json_string_value(json_object_get(body, "start_date")));
    to = parse_us_date(json_string_value(json_object_get(body, "end_date")));
    if (from < 0)
        add_error(errs, 180, NULL);
    if (to < 0)
        add_error(errs, 181, NULL);
    type = opt_string(body, "transaction_type", 16, 1, errs);
    customer = opt_string(body, "customer_id", 64, 59, errs);
    if (json_object_get(body, "transaction_id"))
        only_id = txn_id_member(body, errs);
    if (json_object_size(errs)) {
        json_decref(body);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);
    list = json_array();
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; list && i < st->n_txns; i++) {
        const struct txn *t = st->txns[i];
        long created = day_of(t->created_ms), voided = t->voided ? day_of(t->voided_ms) : -1;
        if (!((created >= from && created <= to) || (voided >= from && voided <= to)))
            continue;
        if (type && strcasecmp(type, t->refund ? "REFUND" : "SALE") != 0)
            continue;
        if (customer && (!t->customer_id || strcmp(customer, t->customer_id) != 0))
            continue;
        if (only_id && t->id != only_id)
            continue;
        json_t *rec = txn_record(st, t);
        settled_members(st, t, rec); /* settled ones carry their batch, fee and date */
        json_array_append_new(list, rec);
    }
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    reply_json(resp, 200,
               json_pack("{s:b,s:s,s:o}", "success", 1, "status_message",
                         "Your request has been successfully completed.", "transactions", list));
    return PB_HTTP_DONE;
}

/* Caller holds mu. The batch `number` as JSON: its totals agree with its
 * records (sales_amount - refunds_amount - fees = net_amount). */
static json_t *batch_json(const struct pt_state *st, int64_t number)
{
    json_t *txns = json_array();
    int64_t sales = 0, refunds = 0, fees = 0, net;
    size_t count = 0;
    char when[32];

    for (size_t i = 0; i < st->n_txns; i++) {
        const struct txn *t = st->txns[i];
        json_t *rec;
        if (t->batch != number)
            continue;
        rec = txn_record(st, t);
        settled_members(st, t, rec);
        json_array_append_new(txns, rec);
        if (t->refund)
            refunds += t->amount;
        else
            sales += t->amount;
        fees += t->fee;
        count++;
    }
    net = sales - refunds - fees;
    batch_time(st, number, when);
    return json_pack("{s:I,s:s,s:s,s:I,s:o,s:o,s:o,s:o,s:o}", "batch_number", (json_int_t)number,
                     "settled_at", when, "currency", st->currency, "transaction_count",
                     (json_int_t)count, "sales_amount", money_text(sales, st->currency),
                     "refunds_amount", money_text(refunds, st->currency), "fees",
                     money_text(fees, st->currency), "net_amount", money_text(net, st->currency),
                     "transactions", txns);
}

static enum pb_http_action h_export_settled(struct pb_http_request *req,
                                            struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *body, *batches, *only, *errs;
    long from = 0, to = LONG_MAX;

    if (check_bearer(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    errs = json_object();
    if (json_object_get(body, "start_date") &&
        (from = parse_us_date(json_string_value(json_object_get(body, "start_date")))) < 0)
        add_error(errs, 180, NULL);
    if (json_object_get(body, "end_date") &&
        (to = parse_us_date(json_string_value(json_object_get(body, "end_date")))) < 0)
        add_error(errs, 181, NULL);
    if (json_object_size(errs)) {
        json_decref(body);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);
    only = json_object_get(body, "batch_number");
    batches = json_array();
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; i < st->n_batches; i++) {
        const struct pt_batch *b = &st->batches[i];
        if ((json_is_integer(only) && json_integer_value(only) != b->number) || b->day < from ||
            b->day > to)
            continue;
        json_array_append_new(batches, batch_json(st, b->number));
    }
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    reply_json(resp, 200,
               json_pack("{s:b,s:s,s:o}", "success", 1, "status_message",
                         "Your request has been successfully completed.", "batches", batches));
    return PB_HTTP_DONE;
}

/* ---- admin routes ---------------------------------------------------------------------- */

static json_t *settings_json(struct pt_state *st)
{
    json_t *o;
    pthread_mutex_lock(&st->mu);
    o = json_pack("{s:s,s:I,s:s}", "username", st->username, "token_ttl_s",
                  (json_int_t)st->token_ttl_s, "currency", st->currency);
    pthread_mutex_unlock(&st->mu);
    if (!o)
        return NULL;
    pthread_mutex_lock(&st->wmu);
    json_object_set_new(o, "webhook_url",
                        st->webhook_url ? json_string(st->webhook_url) : json_null());
    json_object_set_new(o, "webhook_drop_rate", json_real(st->drop_rate));
    json_object_set_new(o, "webhook_max_attempts", json_integer(st->max_attempts));
    pthread_mutex_unlock(&st->wmu);
    return o;
}

static enum pb_http_action h_admin_settings_get(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    reply_json(resp, 200, settings_json(st));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_settings_set(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    struct pb_err err = {0};
    json_t *patch;

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    patch = json_loadb(req->body, req->body_len, 0, NULL);
    if (!json_is_object(patch)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object");
        return PB_HTTP_DONE;
    }
    if (configure(st, patch, &err)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "%s", err.msg);
        return PB_HTTP_DONE;
    }
    json_decref(patch);
    reply_json(resp, 200, settings_json(st));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_stats(struct pb_http_request *req, struct pb_http_response *resp,
                                         void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *o, *by_status;
    uint64_t sent, ack, failed, pending, dropped;

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    by_status = json_object();
    pthread_mutex_lock(&st->wmu);
    sent = st->w_sent;
    ack = st->w_acknowledged;
    failed = st->w_failed;
    dropped = st->w_dropped;
    pending = st->n_queued + (st->in_flight ? 1u : 0u);
    pthread_mutex_unlock(&st->wmu);
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; by_status && i < PT_STATUS_SLOTS && st->status_code[i]; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", st->status_code[i]);
        json_object_set_new(by_status, key, json_integer((json_int_t)st->status_count[i]));
    }
    o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o*}", "transactions",
                  (json_int_t)st->n_txns, "customers", (json_int_t)st->n_customers,
                  "token_requests", (json_int_t)st->token_requests, "tokens_issued",
                  (json_int_t)st->tokens_issued, "webhooks_sent", (json_int_t)sent,
                  "webhooks_acknowledged", (json_int_t)ack, "webhooks_failed", (json_int_t)failed,
                  "webhooks_pending", (json_int_t)pending, "webhooks_dropped", (json_int_t)dropped,
                  "requests", (json_int_t)st->requests, "responses", by_status);
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, o);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_transactions(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *all;
    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    all = json_array();
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; all && i < st->n_txns; i++) {
        json_t *rec = txn_record(st, st->txns[i]);
        const struct txn *t = st->txns[i];
        if (!t->refund)
            json_object_set_new(rec, "refunded_amount", money_text(t->refunded, st->currency));
        if (t->batch)
            json_object_set_new(rec, "batch_number", json_integer((json_int_t)t->batch));
        json_array_append_new(all, rec);
    }
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, all);
    return PB_HTTP_DONE;
}

/* Caller holds mu. */
static void clear_store(struct pt_state *st)
{
    for (size_t i = 0; i < st->n_txns; i++)
        txn_free(st->txns[i]);
    st->n_txns = 0;
    for (size_t i = 0; i < st->n_customers; i++) {
        free(st->customers[i].id);
        free(st->customers[i].email);
        json_decref(st->customers[i].billing_address);
    }
    st->n_customers = 0;
    st->n_tokens = 0;
    st->token_requests = st->tokens_issued = st->requests = 0;
    st->next_batch = 1;
    st->n_batches = 0;
    memset(st->status_code, 0, sizeof st->status_code);
    memset(st->status_count, 0, sizeof st->status_count);
}

static enum pb_http_action h_admin_reset(struct pb_http_request *req, struct pb_http_response *resp,
                                         void *arg)
{
    struct pt_state *st = state_of(arg);
    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    clear_store(st); /* transaction ids keep counting: a reset never reuses one */
    pthread_mutex_lock(&st->wmu);
    queue_clear(st);
    st->generation++;
    st->w_sent = st->w_acknowledged = st->w_failed = st->w_dropped = 0;
    pthread_cond_broadcast(&st->wcv);
    pthread_mutex_unlock(&st->wmu);
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, json_pack("{s:b}", "reset", 1));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_webhook(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    const char *p = req->params[0];
    struct txn *t = NULL;
    int rc = 0;

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    if (all_digits(p, 1, 18))
        t = find_txn(st, (int64_t)strtoll(p, NULL, 10));
    if (t)
        rc = webhook_enqueue(st, t, 0);
    pthread_mutex_unlock(&st->mu);
    if (!t)
        pb_http_response_error(resp, 404, "not_found", "no transaction %.40s", p);
    else if (rc == -1)
        pb_http_response_error(resp, 409, "no_webhook_url", "no webhook_url is set");
    else if (rc)
        pb_http_response_error(resp, 503, "queue_full", "the webhook queue is full");
    else
        reply_json(resp, 202, json_pack("{s:b}", "queued", 1));
    return PB_HTTP_DONE;
}

/* A fee text ("0.30") in minor units of `currency`, rounded half up. */
static int64_t fixed_minor(const char *text, const char *currency)
{
    int64_t ten_thousandths, scale = 1;
    int e = pb_currency_exponent(currency);
    if (e < 0 || !text ||
        pb_money_parse_decimal(text, "CLF", &ten_thousandths, NULL)) /* 4 places */
        return 0;
    for (int i = 0; i < e; i++)
        scale *= 10;
    return (ten_thousandths * scale + 5000) / 10000;
}

/* An anomaly spec with its ids as strings (an array may hold numbers), or the spec itself. */
static json_t *ids_as_text(json_t *spec)
{
    json_t *out, *v;
    size_t i;
    if (!json_is_array(spec))
        return json_incref(spec);
    out = json_array();
    json_array_foreach(spec, i, v)
    {
        char text[32];
        if (json_is_integer(v))
            snprintf(text, sizeof text, "%lld", (long long)json_integer_value(v));
        else if (json_is_string(v))
            snprintf(text, sizeof text, "%s", json_string_value(v));
        else
            continue;
        json_array_append_new(out, json_string(text));
    }
    return out;
}

/* The ids of `list` (strings) as PayTrace's integer transaction ids. */
static json_t *ids_as_numbers(const json_t *list)
{
    json_t *out = json_array(), *v;
    size_t i;
    json_array_foreach(list, i, v)
    {
        if (all_digits(json_string_value(v), 1, 18))
            json_array_append_new(out, json_integer(strtoll(json_string_value(v), NULL, 10)));
    }
    return out;
}

static int in_list(const json_t *list, const char *id)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
            return 1;
    }
    return 0;
}

/* Write batch `number`'s CSV report file (sbx_settlement_file_write). Caller holds mu. */
static int write_batch_file(const struct pt_state *st, int64_t number, int32_t day, const char *dir,
                            char *path, size_t path_len, struct pb_err *err)
{
    struct sbx_settlement_row *rows = calloc(st->n_txns + 1, sizeof *rows);
    char(*ids)[24] = calloc(st->n_txns + 1, sizeof *ids), batch_id[24];
    size_t n = 0;
    int rc;
    if (!rows || !ids) {
        free(rows);
        free(ids);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < st->n_txns; i++) {
        const struct txn *t = st->txns[i];
        if (t->batch != number)
            continue;
        snprintf(ids[n], sizeof ids[n], "%lld", (long long)t->id);
        rows[n] = (struct sbx_settlement_row){.transaction_id = ids[n],
                                              .merchant_ref = t->invoice_id ? t->invoice_id : "",
                                              .type = t->refund ? "REFUND" : "SALE",
                                              .amount = t->amount,
                                              .fee = t->fee,
                                              .value_day = (int32_t)day_of(t->created_ms)};
        n++;
    }
    snprintf(batch_id, sizeof batch_id, "%lld", (long long)number);
    rc = sbx_settlement_file_write(dir, "paytrace", batch_id, day, st->currency, rows, n, path,
                                   path_len, err);
    free(rows);
    free(ids);
    return rc;
}

/* POST /_sandbox/settle: close one batch (the emulator has one currency)
 * of every approved, unvoided, unsettled transaction; see the header. */
static enum pb_http_action h_admin_settle(struct pb_http_request *req,
                                          struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    json_t *body = NULL, *batch, *candidates, *sales, *missing, *wrong, *summary, *files, *v;
    int32_t day = (int32_t)(time(NULL) / 86400);
    const char *delta_text = "0.10", *file_dir = NULL;
    uint64_t seed = 1;
    int64_t number, sales_minor = 0, refunds_minor = 0, fees_minor = 0;
    size_t n = 0;
    struct pb_err err = {0};
    char path[1024] = "";

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    if (req->body_len) {
        body = json_loadb(req->body, req->body_len, 0, NULL);
        if (!json_is_object(body)) {
            json_decref(body);
            pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object");
            return PB_HTTP_DONE;
        }
    }
    if (body && (v = json_object_get(body, "date"))) {
        const char *d = json_string_value(v);
        if (!d || pb_settlement_date_parse(d, strlen(d), "%Y-%m-%d", &day, NULL)) {
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

    pthread_mutex_lock(&st->mu);
    if (st->n_batches >= PT_MAX_BATCHES) {
        pthread_mutex_unlock(&st->mu);
        json_decref(body);
        pb_http_response_error(resp, 507, "full", "the sandbox holds %d batches at most",
                               PT_MAX_BATCHES);
        return PB_HTTP_DONE;
    }
    candidates = json_array();
    sales = json_array();
    for (size_t i = 0; i < st->n_txns; i++) {
        const struct txn *t = st->txns[i];
        char id[24];
        if (t->batch || t->left_out || t->voided || !approved(t))
            continue;
        snprintf(id, sizeof id, "%lld", (long long)t->id);
        json_array_append_new(candidates, json_string(id));
        if (!t->refund)
            json_array_append_new(sales, json_string(id));
    }
    {
        json_t *spec = ids_as_text(body ? json_object_get(body, "missing") : NULL);
        missing = sbx_settlement_pick(spec, candidates, NULL, seed);
        json_decref(spec);
        spec = ids_as_text(body ? json_object_get(body, "wrong_fee") : NULL);
        wrong = sbx_settlement_pick(spec, sales, missing, seed + 1);
        json_decref(spec);
    }
    number = st->next_batch;
    for (size_t i = 0; i < st->n_txns; i++) {
        struct txn *t = st->txns[i];
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)t->id);
        if (!in_list(candidates, id))
            continue;
        if (in_list(missing, id)) {
            t->left_out = 1; /* the acquirer never pays it: the seeded "missing" */
            continue;
        }
        t->batch = number;
        t->fee = 0;
        if (!t->refund) {
            /* fee_rate_bp of the sale rounded half up, plus fee_fixed: integers only */
            __int128 pct = ((__int128)t->amount * st->fee_rate_bp + 5000) / 10000;
            t->fee = (int64_t)pct + fixed_minor(st->fee_fixed, st->currency);
            if (in_list(wrong, id))
                t->fee += fixed_minor(delta_text, st->currency);
            sales_minor += t->amount;
        } else {
            refunds_minor += t->amount;
        }
        fees_minor += t->fee;
        n++;
    }
    summary = json_array();
    files = json_array();
    batch = json_null();
    if (n) {
        char d[16], g[PB_MONEY_DECIMAL_MAX], f[PB_MONEY_DECIMAL_MAX], net[PB_MONEY_DECIMAL_MAX];
        json_t *entry;
        st->batches[st->n_batches++] = (struct pt_batch){.number = number, .day = day};
        st->next_batch++;
        json_decref(batch);
        batch = batch_json(st, number);
        pb_settlement_date_format(day, d, sizeof d);
        pb_money_format_decimal(sales_minor - refunds_minor, st->currency, g, sizeof g, NULL);
        pb_money_format_decimal(fees_minor, st->currency, f, sizeof f, NULL);
        pb_money_format_decimal(sales_minor - refunds_minor - fees_minor, st->currency, net,
                                sizeof net, NULL);
        entry = json_pack("{s:I,s:s,s:s,s:I,s:s,s:s,s:s}", "batch_number", (json_int_t)number,
                          "currency", st->currency, "date", d, "transactions", (json_int_t)n,
                          "gross", g, "fees", f, "net", net);
        if (file_dir &&
            write_batch_file(st, number, day, file_dir, path, sizeof path, &err) == PB_OK) {
            json_object_set_new(entry, "file", json_string(path));
            json_array_append_new(files, json_string(path));
        }
        json_array_append_new(summary, entry);
    }
    pthread_mutex_unlock(&st->mu);
    if (err.rc) {
        pb_http_response_error(resp, 500, "file",
                               "the batch was settled but its report file could not be "
                               "written: %s",
                               err.msg);
        json_decref(batch);
        json_decref(summary);
        json_decref(files);
    } else {
        reply_json(resp, 200,
                   json_pack("{s:I,s:o,s:o,s:o,s:{s:o,s:o}}", "settled", (json_int_t)n, "batch",
                             batch, "batches", summary, "files", files, "anomalies", "missing",
                             ids_as_numbers(missing), "wrong_fee", ids_as_numbers(wrong)));
    }
    json_decref(candidates);
    json_decref(sales);
    json_decref(missing);
    json_decref(wrong);
    json_decref(body);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_revoke(struct pb_http_request *req,
                                          struct pb_http_response *resp, void *arg)
{
    struct pt_state *st = state_of(arg);
    size_t n;
    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    n = st->n_tokens;
    st->n_tokens = 0;
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, json_pack("{s:I}", "revoked", (json_int_t)n));
    return PB_HTTP_DONE;
}

/* Every route goes through here: call the real handler, then count the reply. */
static enum pb_http_action counted(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct sbx_route_slot *slot = arg;
    struct pt_state *st = state_of(slot->state);
    enum pb_http_action act = slot->handler(req, resp, st);
    int status = resp->status ? resp->status : 500;

    pthread_mutex_lock(&st->mu);
    st->requests++;
    sbx_count_status(st->status_code, st->status_count, PT_STATUS_SLOTS, status);
    pthread_mutex_unlock(&st->mu);
    return act;
}

/* ---- the emulator type --------------------------------------------------------------- */

static void pt_destroy(void *arg);

static int setting_string(json_t *settings, const char *key, const char *def, char **out,
                          struct pb_err *err)
{
    json_t *v = settings ? json_object_get(settings, key) : NULL;
    if (v && !json_is_null(v) &&
        (!json_is_string(v) || json_string_length(v) == 0 ||
         strlen(json_string_value(v)) != json_string_length(v))) {
        pb_err_set(err, PB_ERR_CONFIG, "paytrace setting %s must be a non-empty string", key);
        return -1;
    }
    *out = strdup(v && json_is_string(v) ? json_string_value(v) : def);
    if (!*out) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return -1;
    }
    return 0;
}

/* Our route table, in order; every route goes through counted(). */
static const struct sbx_route_spec PT_ROUTES[] = {
    {"POST", "/oauth/token", h_token},
    {"POST", "/v1/transactions/sale/keyed", h_sale_keyed},
    {"POST", "/v1/transactions/sale/by_customer", h_sale_customer},
    {"POST", "/v1/checks/sale/by_account", h_sale_check},
    {"POST", "/v1/transactions/refund/for_transaction", h_refund},
    {"POST", "/v1/transactions/void", h_void},
    {"POST", "/v1/customer/create", h_customer_create},
    {"POST", "/v1/transactions/export/by_date_range", h_export},
    {"POST", "/v1/batches/export_settled", h_export_settled},
    {"GET", "/_sandbox/stats", h_admin_stats},
    {"GET", "/_sandbox/transactions", h_admin_transactions},
    {"GET", "/_sandbox/settings", h_admin_settings_get},
    {"POST", "/_sandbox/settings", h_admin_settings_set},
    {"POST", "/_sandbox/reset", h_admin_reset},
    {"POST", "/_sandbox/webhook/{}", h_admin_webhook},
    {"POST", "/_sandbox/settle", h_admin_settle},
    {"POST", "/_sandbox/tokens/revoke", h_admin_revoke},
};
#define N_PT_ROUTES (sizeof(PT_ROUTES) / sizeof(PT_ROUTES[0]))
_Static_assert(N_PT_ROUTES <= PT_ROUTES_MAX, "route table too small");

static void *pt_create(json_t *settings, struct pb_err *err)
{
    struct pt_state *st;
    pthread_condattr_t ca;
    json_t *v;

    if (settings && !json_is_object(settings)) {
        pb_err_set(err, PB_ERR_CONFIG, "paytrace settings must be a JSON object");
        return NULL;
    }
    st = calloc(1, sizeof *st);
    if (!st) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->magic = PT_STATE_MAGIC;
    atomic_init(&st->stop, 0);
    pthread_mutex_init(&st->mu, NULL);
    pthread_mutex_init(&st->wmu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->wcv, &ca);
    pthread_condattr_destroy(&ca);
    st->token_ttl_s = 7200;
    st->max_attempts = 8;
    st->next_batch = 1;
    /* nine digits, different on every start, so a restarted sandbox does not
     * reuse the ids a paybridge inbox already holds (and never PAN-long) */
    st->next_id = 100000000 + (int64_t)(time(NULL) % 40000000) * 20;
    memcpy(st->currency, "USD", 4);
    if (setting_string(settings, "username", "sandbox-user", &st->username, err) ||
        setting_string(settings, "password", "sandbox-pass", &st->password, err) ||
        setting_string(settings, "webhook_secret", "sandbox-paytrace-secret", &st->webhook_secret,
                       err))
        goto fail;
    v = settings ? json_object_get(settings, "currency") : NULL;
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !pb_currency_valid(json_string_value(v))) {
            pb_err_set(err, PB_ERR_CONFIG, "paytrace setting currency must be an ISO 4217 code");
            goto fail;
        }
        memcpy(st->currency, json_string_value(v), 4);
    }
    if (settings) {
        json_t *patch = json_object();
        const char *const keys[] = {"webhook_url", "webhook_drop_rate", "webhook_max_attempts",
                                    "token_ttl_s", NULL};
        for (size_t i = 0; patch && keys[i]; i++)
            if ((v = json_object_get(settings, keys[i])))
                json_object_set(patch, keys[i], v);
        if (!patch || configure(st, patch, err)) {
            json_decref(patch);
            pb_err_prefix(err, "paytrace settings");
            goto fail;
        }
        json_decref(patch);
    }
    st->fee_rate_bp = 290;
    snprintf(st->fee_fixed, sizeof st->fee_fixed, "0.30");
    v = settings ? json_object_get(settings, "settle_fee_rate_bp") : NULL;
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10000) {
            pb_err_set(err, PB_ERR_CONFIG,
                       "paytrace setting settle_fee_rate_bp must be an integer from 0 to 10000");
            goto fail;
        }
        st->fee_rate_bp = (long)json_integer_value(v);
    }
    v = settings ? json_object_get(settings, "settle_fee_fixed") : NULL;
    if (v && !json_is_null(v)) {
        int64_t probe;
        if (!json_is_string(v) || json_string_length(v) >= sizeof st->fee_fixed ||
            pb_money_parse_decimal(json_string_value(v), "CLF", &probe, NULL) || probe < 0) {
            pb_err_set(err, PB_ERR_CONFIG,
                       "paytrace setting settle_fee_fixed must be a decimal string such as "
                       "\"0.30\"");
            goto fail;
        }
        snprintf(st->fee_fixed, sizeof st->fee_fixed, "%s", json_string_value(v));
    }
    st->tokens = calloc(PT_MAX_TOKENS, sizeof *st->tokens);
    st->customers = calloc(PT_MAX_CUSTOMERS, sizeof *st->customers);
    st->batches = calloc(PT_MAX_BATCHES, sizeof *st->batches);
    if (!st->tokens || !st->customers || !st->batches) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        pb_err_set(err, PB_ERR_INTERNAL, "curl_global_init failed");
        goto fail;
    }
    if (pthread_create(&st->thread, NULL, sender_main, st) != 0) {
        curl_global_cleanup();
        pb_err_set(err, PB_ERR_INTERNAL, "cannot start the PayTrace webhook thread");
        goto fail;
    }
    st->thread_started = 1;

    sbx_routes_fill(PT_ROUTES, N_PT_ROUTES, st, counted, st->slots, st->routes);
    return st;
fail:
    pt_destroy(st);
    return NULL;
}

static const struct pb_http_route *pt_routes(void *arg)
{
    return state_of(arg)->routes;
}

static void pt_started(void *arg, int port)
{
    struct pt_state *st = state_of(arg);
    char text[16];
    pthread_mutex_lock(&st->mu);
    st->port = port;
    pthread_mutex_unlock(&st->mu);
    snprintf(text, sizeof text, "%d", port);
    pb_log(PB_LOG_INFO, "sandbox.paytrace.started", "port", text, NULL);
}

static void pt_destroy(void *arg)
{
    struct pt_state *st = arg;
    if (!st)
        return;
    state_of(st);
    if (st->thread_started) {
        pthread_mutex_lock(&st->wmu);
        atomic_store(&st->stop, 1);
        pthread_cond_broadcast(&st->wcv);
        pthread_mutex_unlock(&st->wmu);
        pthread_join(st->thread, NULL);
        curl_global_cleanup();
    }
    queue_clear(st);
    if (st->customers || st->txns)
        clear_store(st);
    free(st->txns);
    free(st->tokens);
    free(st->customers);
    free(st->batches);
    free(st->username);
    pb_secret_free(st->password);
    free(st->webhook_url);
    pb_secret_free(st->webhook_secret);
    pthread_cond_destroy(&st->wcv);
    pthread_mutex_destroy(&st->wmu);
    pthread_mutex_destroy(&st->mu);
    st->magic = 0;
    free(st);
}

const struct sbx_emulator_type sbx_paytrace_type = {
    .name = "paytrace",
    .create = pt_create,
    .routes = pt_routes,
    .started = pt_started,
    .destroy = pt_destroy,
};
