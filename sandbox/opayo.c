/*
 * sandbox/opayo.c: the Opayo (Sage Pay) Pi REST API emulator of the sandbox.
 *
 * It exports `sbx_opayo_type` (sandbox/sbx.h). The framework creates the
 * state from a JSON settings object, serves our route table on its own
 * loopback port, wraps every route with fault injection and destroys the
 * state at the end. The wire format follows the 2019 Pi OpenAPI capture in
 * /work/shared/specs/opayo-pi/ and WIRE-FORMATS.md; notifications, which Pi
 * does not have, are paybridge's own and are defined in opayo_notify.c.
 *
 * SETTINGS (create; every key optional, these are the defaults)
 *   {"integration_key":"sandbox-key", "integration_password":"sandbox-password",
 *    "vendor_name":"sandbox", "avs_rule":true, "notify_url":null,
 *    "notify_secret":"sandbox-notify-secret", "notify_duplicate_rate":0.0,
 *    "notify_delay_ms":0, "notify_max_attempts":8}
 * Unknown keys are ignored; a known key with a wrong type fails create.
 *
 * ROUTES (Pi v1; HTTP Basic base64(integration_key:integration_password)
 * unless said otherwise)
 *   POST /api/v1/merchant-session-keys   {"vendorName"}
 *                                        -> 201 {merchantSessionKey, expiry}
 *   GET  /api/v1/merchant-session-keys/{key}
 *                                        -> 200 {merchantSessionKey, expiry} | 404 1006
 *   POST /api/v1/card-identifiers        Bearer <merchantSessionKey>; {"cardDetails":{...}}
 *                                        -> 201 {cardIdentifier, expiry, cardType}
 *   POST /api/v1/transactions            Payment | Deferred | Repeat | Refund -> 201
 *   GET  /api/v1/transactions/{id}       -> 200 the retrieve shape | 404 1012
 *   POST /api/v1/transactions/{id}/instructions
 *                                        void | abort | release -> 201 {instructionType, date}
 *   GET  /api/v1/transactions/{id}/instructions
 *                                        -> 200 {"instructions":[...]} | 404 1019
 * Admin (no auth, loopback peers only, else 403):
 *   POST /_sandbox/notify/{id}   re-send that transaction's notification (same
 *                                notificationId and body: a duplicate) -> 202
 *   GET|POST /_sandbox/settings  read / JSON-merge notify_url, notify_secret,
 *                                notify_duplicate_rate, notify_delay_ms,
 *                                notify_max_attempts, avs_rule
 *   GET  /_sandbox/stats         {"transactions","notifications_sent",
 *                                "notifications_acknowledged","notifications_failed",
 *                                "notifications_pending","requests",
 *                                "responses":{"<status>":n}} (see opayo_notify.c)
 *   GET  /_sandbox/transactions  every transaction, retrieve shape, in creation order
 *   POST /_sandbox/reset         forget transactions, keys, cards, queued notifications
 *
 * TEST OUTCOMES (test-card-details.md)
 *   - The cards of the success table are authorised: status Ok, statusCode
 *     "0000", "The Authorisation was Successful.", bankResponseCode "00", a
 *     random 6-digit bankAuthorisationCode and numeric retrievalReference.
 *   - The two "declined by the bank" cards (4929602110085639,
 *     5403814948608092): NotAuthed, "2000", "The Authorisation was Declined
 *     by the bank.", bankResponseCode "05".
 *   - Any other number that passes Luhn and has a recognised brand prefix is
 *     accepted as a card identifier and then declined like the two above:
 *     the test server only authorises its listed cards.
 *   - AVS RULE: for Payment and Deferred, unless the setting avs_rule is
 *     false or the request says "applyAvsCvcCheck":"Disable", an authorised
 *     card is Rejected ("2001", "The Authorisation was Rejected by the vendor
 *     rule-base.", bankResponseCode "00", no authorisation code) when
 *     billingAddress.address1 does not start with "88" or
 *     billingAddress.postalCode is not exactly "412". The bank decline is
 *     checked first. The security code never rejects; it is only reported in
 *     avsCvcCheck.securityCode ("123" matches, as on the test server).
 *   - 3-D Secure is not emulated: no 202 is ever returned. 3DSecure.status
 *     is "Authenticated" for Payment and Deferred ("NotChecked" when
 *     apply3DSecure is "Disable") and "NotChecked" for Repeat and Refund.
 *   - Sandbox extension "fraudScore" (0..100): 95 when customerEmail
 *     contains "+fraud", else a random 0..20. Repeat and Refund inherit the
 *     customer fields (names, email, billing address) of the referenced
 *     transaction and score on them.
 *
 * BUSINESS RULES
 *   - vendorTxCode: required, 1..40 of letters digits - . _ { }, unique among
 *     all transactions (422, code 4042; the code is from Sage Pay's error
 *     list, unverified for Pi).
 *   - amount: a JSON integer > 0 in minor units (int64); currency: an ISO
 *     4217 code in core/money.c's table. Money never touches a double.
 *   - A merchant session key lives 400 s, makes one card identifier and
 *     dies after 3 failed attempts. A card identifier lives 400 s and pays
 *     for one transaction, with the key that created it.
 *   - Repeat: the reference must be an Ok Payment, Repeat or released
 *     Deferred that is not voided. Refund: the same, in the same currency
 *     (currency may be omitted), and the sum of its Ok, unvoided refunds may
 *     not exceed its amount (its released amount for a Deferred). Every such
 *     failure is a 422 {"errors":[...]} with property referenceTransactionId,
 *     currency or amount (1012 not found, 1013 type, 1014 status, 1009
 *     currency, 1018 over-refund). NOTE: the Pi error table lists 1018 with
 *     HTTP 403; paybridge's brief asked for 422 and we follow the brief.
 *   - void: Ok Payment, Repeat or Refund without refunds, same UTC day as its
 *     creation, once. abort: an Ok Deferred neither released nor aborted.
 *     release: the same, once, with an integer amount <= the original (403
 *     1021 above). Wrong type 403 1013, wrong status 403 1014, otherwise not
 *     allowed 403 1017. Instructions change no status; they are listed by
 *     GET .../instructions.
 *
 * ERRORS (description.md's table): 400 {"code":1000,...} for a body that is
 * not a JSON object; 401 {"code":1001|1002,"description"}; 404 1006 / 1012
 * / 1019; 422 {"errors":[{"code","description","property","clientMessage"}]}.
 * Codes are JSON integers here (the spec's one example shows strings; a
 * client should accept both).
 *
 * CARD DATA: the card number and security code live only in the request
 * being parsed. A card identifier keeps the card type, last 4 digits, expiry
 * MMYY, the outcome class of the number and whether the CVC matched; free
 * text that is stored (description, names, email, address) is passed through
 * pb_pan_redact() so that a card number pasted there is masked too.
 *
 * LOCKING: one mutex (`mu`) guards the whole store (keys, cards,
 * transactions, settings other than notify_*). Handlers run on a thread per
 * connection, take it for the duration of one request's logic and never do
 * I/O under it. The notifier has its own lock, taken after `mu` (never the
 * other way round, see opayo.h). Lookups are linear scans over bounded
 * arrays (OPAYO_MAX_*): a sandbox holds thousands of transactions, not
 * millions, and the scan keeps the store trivially correct.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/crypto.h"
#include "core/log.h"
#include "core/money.h"
#include "core/pan.h"
#include "net/httpd.h"
#include "opayo.h"
#include "opayo_report.h"
#include "sbx.h"

#define OPAYO_STATE_MAGIC 0x4F504159u         /* "OPAY" */
#define OPAYO_SESSION_TTL_MS 400000           /* merchant session key and card identifier life */
#define OPAYO_SESSION_MAX_FAILURES 3          /* failed card identifiers that kill a key */
#define OPAYO_MAX_SESSION_KEYS 10000          /* live keys at most */
#define OPAYO_MAX_CARD_IDS 10000              /* live card identifiers at most */
#define OPAYO_MAX_TRANSACTIONS 100000         /* transactions kept at most */
#define OPAYO_VENDOR_TX_CODE_MAX 40
#define OPAYO_CARD_TYPE_MAX 24

/* ---- types --------------------------------------------------------------- */

enum card_outcome { CARD_AUTHORISED = 0, CARD_DECLINED = 1 };
enum check_result { CHECK_NOT_PROVIDED = 0, CHECK_MATCHED = 1, CHECK_NOT_MATCHED = 2 };

struct session_key {
    char key[OPAYO_GUID_LEN + 1];   /* upper-case GUID */
    int64_t expiry_ms;              /* epoch ms */
    int used;                       /* made its one card identifier */
    int failures;                   /* failed card identifier attempts */
};

struct card_ref {
    char id[OPAYO_GUID_LEN + 1];    /* the cardIdentifier */
    char session_key[OPAYO_GUID_LEN + 1]; /* the key that created it */
    int64_t expiry_ms;
    int used;                       /* paid for a transaction */
    char card_type[OPAYO_CARD_TYPE_MAX]; /* "Visa", "MasterCard", ... */
    char last4[5];
    char expiry[5];                 /* MMYY */
    enum card_outcome outcome;      /* what the bank will answer */
    enum check_result security_code; /* CVC check, the code itself is not kept */
};

enum txn_type { TXN_PAYMENT = 0, TXN_DEFERRED, TXN_REPEAT, TXN_REFUND };
enum txn_status { TXN_OK = 0, TXN_NOTAUTHED, TXN_REJECTED };

static const char *const txn_type_names[] = {"Payment", "Deferred", "Repeat", "Refund"};
static const char *const txn_status_names[] = {"Ok", "NotAuthed", "Rejected"};

struct txn {
    char id[OPAYO_GUID_LEN + 1];    /* transactionId, upper-case GUID */
    enum txn_type type;
    enum txn_status status;
    const char *status_code;        /* static: "0000", "2000", "2001" */
    const char *status_detail;      /* static */
    const char *bank_response_code; /* static: "00", "05" */
    char retrieval_reference[12];   /* digits; "" unless Ok */
    char bank_auth_code[8];         /* 6 digits; "" unless Ok */
    int64_t amount;                 /* minor units, > 0 */
    char currency[4];
    char *vendor_tx_code;           /* owned */
    char *description;              /* owned, PAN-redacted */
    char *first_name, *last_name, *email; /* owned or NULL, PAN-redacted */
    json_t *billing_address;        /* owned object or NULL, PAN-redacted copy */
    char reference_id[OPAYO_GUID_LEN + 1]; /* Repeat/Refund; "" otherwise */
    int fraud_score;                /* 0..100 */
    int64_t created_ms;             /* epoch ms */
    /* payment method (copied from the reference for Repeat/Refund) */
    char card_type[OPAYO_CARD_TYPE_MAX];
    char last4[5];
    char card_expiry[5];
    char card_identifier[OPAYO_GUID_LEN + 1];
    /* checks: Payment and Deferred only */
    int has_avs;
    const char *avs_status, *avs_address, *avs_postal, *avs_security; /* static */
    const char *three_ds;           /* static 3DSecure.status */
    /* later life */
    int64_t refunded;               /* sum of Ok, unvoided refunds against this one */
    int released, aborted, voided;
    int64_t released_amount;        /* Deferred, once released */
    json_t *instructions;           /* owned array of {instructionType, date} */
    /* its notification, kept for /_sandbox/notify */
    char notification_id[OPAYO_GUID_LEN + 1]; /* "" until built */
    char *notification_body;        /* owned, exact bytes, or NULL */
    size_t notification_len;
};

struct opayo_state;

#define OPAYO_MAX_ROUTES 20
#define OPAYO_STATUS_SLOTS 32                 /* distinct HTTP statuses counted */

struct opayo_state {
    unsigned magic;                 /* OPAYO_STATE_MAGIC while alive */
    pthread_mutex_t mu;             /* guards everything below but `notifier` and `routes` */
    char *integration_key;          /* owned */
    char *integration_password;     /* owned, never logged */
    char *vendor_name;              /* owned */
    int avs_rule;                   /* 1: apply the 88/412 AVS rule */
    int port;                       /* our listening port, once started */
    struct session_key *keys;       /* owned array, n_keys live entries */
    size_t n_keys;
    struct card_ref *cards;         /* owned array */
    size_t n_cards;
    struct txn **txns;              /* owned array of owned pointers, creation order */
    size_t n_txns, cap_txns;
    struct pb__opayo_notifier *notifier; /* owned; has its own lock */
    struct sbx_opayo_report *report; /* owned: the Reporting API (settlements); its own lock */
    uint64_t requests;              /* requests answered by our handlers */
    int status_code[OPAYO_STATUS_SLOTS];  /* HTTP statuses seen, 0 = free slot */
    uint64_t status_count[OPAYO_STATUS_SLOTS];
    struct sbx_route_slot slots[OPAYO_MAX_ROUTES];      /* arg of each route */
    struct pb_http_route routes[OPAYO_MAX_ROUTES + 1]; /* our table; ends with {NULL} */
};

/* ---- small helpers ------------------------------------------------------- */

int64_t pb__opayo_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pb__opayo_iso8601(int64_t when_ms, int with_ms, char *buf, size_t len)
{
    time_t secs = (time_t)(when_ms / 1000);
    struct tm tm;
    char base[24];

    gmtime_r(&secs, &tm);
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    if (with_ms)
        snprintf(buf, len, "%s.%03dZ", base, (int)(when_ms % 1000));
    else
        snprintf(buf, len, "%sZ", base);
}

enum pb_rc pb__opayo_guid(char out[OPAYO_GUID_LEN + 1], struct pb_err *err)
{
    if (pb_uuid4(out))
        return pb_err_set(err, PB_ERR_INTERNAL, "cannot generate a GUID (no randomness)");
    for (char *p = out; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    return PB_OK;
}

/* n random decimal digits into out (n + 1 bytes), the first one non-zero. */
static void random_digits(char *out, size_t n)
{
    unsigned char bytes[16];
    if (n > sizeof(bytes))
        n = sizeof(bytes);
    if (pb_random_bytes(bytes, n))
        memset(bytes, 7, n); /* the CSPRNG cannot fail after start; stay well-formed anyway */
    for (size_t i = 0; i < n; i++)
        out[i] = (char)('0' + bytes[i] % 10);
    if (n && out[0] == '0')
        out[0] = '1';
    out[n] = '\0';
}

static int random_below(int bound)
{
    unsigned char b;
    if (pb_random_bytes(&b, 1))
        return 0;
    return b % bound;
}

static char *redacted_copy(const char *s)
{
    char *c;
    if (!s)
        return NULL;
    c = strdup(s);
    if (c)
        pb_pan_redact(c, strlen(c));
    return c;
}

static struct opayo_state *state_of(void *arg)
{
    struct opayo_state *st = arg;
    if (!st || st->magic != OPAYO_STATE_MAGIC) {
        pb_log(PB_LOG_ERROR, "sandbox.opayo.bad_state", NULL);
        abort(); /* the framework passed something else: a bug, not input */
    }
    return st;
}

/* ---- replies ------------------------------------------------------------- */

static const struct {
    int code;
    const char *description;
} pi_codes[] = {
    {1000, "Incorrect request format"},
    {1001, "Authentication values are missing"},
    {1002, "Authentication failed"},
    {1003, "Missing mandatory field"},
    {1004, "Invalid length"},
    {1005, "Contains invalid characters"},
    {1006, "Merchant Session Keys not found"},
    {1007, "The card number has failed our validity checks and is invalid"},
    {1008, "The card is not supported"},
    {1009, "Contains invalid value"},
    {1010, "Currency does not exist"},
    {1011, "Merchant Session Keys or card identifier invalid"},
    {1012, "Transaction not found"},
    {1013, "Transaction type not supported"},
    {1014, "Transaction status not applicable"},
    {1015, "The request entity was empty"},
    {1016, "This parameter requires an integer"},
    {1017, "Operation not allowed for this transaction"},
    {1018, "This refund amount will exceed the amount of the original transaction"},
    {1019, "Transaction instructions not found"},
    {1021, "This release amount will exceed the amount of the original transaction"},
    {4042, "The VendorTxCode has been used before. All VendorTxCodes must be unique"},
    {9999, "An internal error occurred at Sage Pay"},
};

static const char *pi_description(int code)
{
    for (size_t i = 0; i < sizeof(pi_codes) / sizeof(pi_codes[0]); i++)
        if (pi_codes[i].code == code)
            return pi_codes[i].description;
    return "Error";
}

/* Serialise o (taken) as the reply body. */
static void reply_json(struct pb_http_response *resp, int status, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        static const char oom[] = "{\"code\":9999,\"description\":\"out of memory\"}";
        pb_http_response_set(resp, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
    snprintf(resp->content_type, sizeof(resp->content_type), "application/json");
}

/* {"code":code,"description":...}, the Pi shape of a non-422 error. */
static void reply_pi(struct pb_http_response *resp, int status, int code)
{
    reply_json(resp, status,
               json_pack("{s:i,s:s}", "code", code, "description", pi_description(code)));
}

/* Append one 422 error to errs. */
static void add_error(json_t *errs, int code, const char *property, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_error(json_t *errs, int code, const char *property, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_array_append_new(errs, json_pack("{s:i,s:s,s:s,s:s}", "code", code, "description",
                                          pi_description(code), "property", property,
                                          "clientMessage", msg));
}

/* 422 {"errors":errs} (takes errs). */
static void reply_errors(struct pb_http_response *resp, json_t *errs)
{
    reply_json(resp, 422, json_pack("{s:o}", "errors", errs));
}

/* Parse the body as a JSON object. On failure the reply is filled and NULL returned. */
static json_t *parse_body(struct pb_http_request *req, struct pb_http_response *resp)
{
    json_error_t jerr;
    json_t *o;

    if (req->body_len == 0) {
        json_t *errs = json_array();
        add_error(errs, 1015, "body", "The request body is empty");
        reply_errors(resp, errs);
        return NULL;
    }
    o = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        reply_pi(resp, 400, 1000);
        return NULL;
    }
    return o;
}

/* ---- authentication ------------------------------------------------------ */

/* 0 when the request carries our Basic credentials; else fills a 401 and returns -1. */
static int check_basic(struct opayo_state *st, struct pb_http_request *req,
                       struct pb_http_response *resp)
{
    const char *h = pb_http_header(req, "Authorization");
    unsigned char *decoded = NULL;
    size_t decoded_len = 0, key_len, pw_len;
    int ok = 0;

    if (!h || strncasecmp(h, "Basic ", 6) != 0) {
        reply_pi(resp, 401, 1001);
        return -1;
    }
    h += 6;
    while (*h == ' ')
        h++;
    if (pb_base64_decode(h, strlen(h), &decoded, &decoded_len, NULL) == PB_OK) {
        key_len = strlen(st->integration_key);
        pw_len = strlen(st->integration_password);
        if (decoded_len == key_len + 1 + pw_len && decoded[key_len] == ':') {
            /* both halves compared in constant time, both always evaluated */
            int k = pb_ct_equal(decoded, st->integration_key, key_len);
            int p = pb_ct_equal(decoded + key_len + 1, st->integration_password, pw_len);
            ok = k & p;
        }
        pb_secret_free((char *)decoded);
    }
    if (!ok) {
        reply_pi(resp, 401, 1002);
        return -1;
    }
    return 0;
}

static int is_loopback(const char *addr)
{
    if (!addr)
        return 0;
    return strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 ||
           strncmp(addr, "::ffff:127.", 11) == 0;
}

/* 0 for a loopback peer; else a 403 and -1. */
static int check_admin(struct pb_http_request *req, struct pb_http_response *resp)
{
    if (is_loopback(req->remote_addr))
        return 0;
    pb_http_response_error(resp, 403, "forbidden", "sandbox admin routes are loopback only");
    return -1;
}

/* ---- field validation ---------------------------------------------------- */

/* The string at obj[key], or NULL when absent or null. Adds an error (and
 * returns NULL) when it is required and missing, not a string, contains NUL,
 * or is longer than max bytes. `label` words the clientMessage. */
static const char *get_string(json_t *obj, const char *key, const char *property, int required,
                              size_t max, const char *label, json_t *errs)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    const char *s;

    if (!v || json_is_null(v)) {
        if (required)
            add_error(errs, 1003, property, "The %s is required", label);
        return NULL;
    }
    if (!json_is_string(v)) {
        add_error(errs, 1009, property, "The %s must be a string", label);
        return NULL;
    }
    s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        add_error(errs, 1005, property, "The %s contains invalid characters", label);
        return NULL;
    }
    if (required && *s == '\0') {
        add_error(errs, 1003, property, "The %s is required", label);
        return NULL;
    }
    if (strlen(s) > max) {
        add_error(errs, 1004, property, "The %s is too long (at most %zu characters)", label,
                  max);
        return NULL;
    }
    return s;
}

/* A required positive integer amount; 0 and an error when invalid. */
static int64_t get_amount(json_t *obj, const char *property, json_t *errs)
{
    json_t *v = json_object_get(obj, "amount");
    if (!v || json_is_null(v)) {
        add_error(errs, 1003, property, "The amount is required");
        return 0;
    }
    if (!json_is_integer(v)) {
        add_error(errs, 1016, property, "The amount must be an integer in minor units");
        return 0;
    }
    if (json_integer_value(v) <= 0) {
        add_error(errs, 1009, property, "The amount must be greater than zero");
        return 0;
    }
    return (int64_t)json_integer_value(v);
}

static const char *get_currency(json_t *obj, int required, json_t *errs)
{
    const char *c = get_string(obj, "currency", "currency", required, 3, "currency", errs);
    if (c && !pb_currency_valid(c)) {
        add_error(errs, 1010, "currency", "The currency %s does not exist", c);
        return NULL;
    }
    return c;
}

/* Optional string that must be one of the NULL-terminated `allowed`. */
static const char *get_enum(json_t *obj, const char *key, const char *const *allowed,
                            json_t *errs)
{
    const char *s = get_string(obj, key, key, 0, 32, key, errs);
    if (!s)
        return NULL;
    for (size_t i = 0; allowed[i]; i++)
        if (strcmp(s, allowed[i]) == 0)
            return s;
    add_error(errs, 1009, key, "The %s value is not valid", key);
    return NULL;
}

static int vendor_tx_code_chars_ok(const char *s)
{
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-._{}", *s))
            return 0;
    return 1;
}

static int country_ok(const char *s)
{
    return strlen(s) == 2 && isupper((unsigned char)s[0]) && isupper((unsigned char)s[1]);
}

/* Validate the billingAddress object; returns a PAN-redacted copy of its known
 * fields (caller owns) or NULL with errors added. */
static json_t *get_billing_address(json_t *root, json_t *errs)
{
    json_t *ba = json_object_get(root, "billingAddress");
    size_t before = json_array_size(errs);
    const char *a1, *a2, *city, *pc, *country, *state;
    json_t *copy;

    if (!ba || json_is_null(ba)) {
        add_error(errs, 1003, "billingAddress", "The billing address is required");
        return NULL;
    }
    if (!json_is_object(ba)) {
        add_error(errs, 1009, "billingAddress", "The billing address must be an object");
        return NULL;
    }
    a1 = get_string(ba, "address1", "billingAddress.address1", 1, 100, "billing address line 1",
                    errs);
    a2 = get_string(ba, "address2", "billingAddress.address2", 0, 100, "billing address line 2",
                    errs);
    city = get_string(ba, "city", "billingAddress.city", 1, 40, "billing city", errs);
    country = get_string(ba, "country", "billingAddress.country", 1, 2, "billing country", errs);
    if (country && !country_ok(country)) {
        add_error(errs, 1009, "billingAddress.country",
                  "The billing country must be an ISO 3166-1 alpha-2 code");
        country = NULL;
    }
    pc = get_string(ba, "postalCode", "billingAddress.postalCode",
                    country && strcmp(country, "IE") != 0, 10, "billing postal code", errs);
    state = get_string(ba, "state", "billingAddress.state", country && strcmp(country, "US") == 0,
                       2, "billing state", errs);
    if (json_array_size(errs) != before)
        return NULL;
    copy = json_object();
    const char *keys[] = {"address1", "address2", "city", "postalCode", "country", "state"};
    const char *vals[] = {a1, a2, city, pc, country, state};
    for (size_t i = 0; i < 6; i++) {
        if (vals[i]) {
            char *r = redacted_copy(vals[i]);
            json_object_set_new(copy, keys[i], json_string(r ? r : ""));
            free(r);
        }
    }
    return copy;
}

/* ---- cards --------------------------------------------------------------- */

static const struct {
    const char *number;
    const char *type;
    enum card_outcome outcome;
} test_cards[] = {
    /* success table of test-card-details.md */
    {"4929000000006", "Visa", CARD_AUTHORISED},
    {"4929000005559", "Visa", CARD_AUTHORISED},
    {"4929000000014", "Visa", CARD_AUTHORISED},
    {"4929000000022", "Visa", CARD_AUTHORISED},
    {"4484000000002", "Visa", CARD_AUTHORISED},
    {"4462000000000003", "VisaDebit", CARD_AUTHORISED},
    {"4917300000000008", "VisaElectron", CARD_AUTHORISED},
    {"5404000000000001", "MasterCard", CARD_AUTHORISED},
    {"5404000000000043", "MasterCard", CARD_AUTHORISED},
    {"5404000000000084", "MasterCard", CARD_AUTHORISED},
    {"5404000000000068", "MasterCard", CARD_AUTHORISED},
    {"5573470000000001", "DebitMasterCard", CARD_AUTHORISED},
    {"6759000000005", "Maestro", CARD_AUTHORISED},
    {"6705000000008", "Maestro", CARD_AUTHORISED},
    {"6777000000007", "Maestro", CARD_AUTHORISED},
    {"6766000000000", "Maestro", CARD_AUTHORISED},
    {"374200000000004", "AmericanExpress", CARD_AUTHORISED},
    {"36000000000008", "Discover", CARD_AUTHORISED},
    {"3569990000000009", "JCB", CARD_AUTHORISED},
    /* "declined by the bank" table */
    {"4929602110085639", "Visa", CARD_DECLINED},
    {"5403814948608092", "MasterCard", CARD_DECLINED},
};

static int prefix_between(const char *num, size_t digits, long lo, long hi)
{
    long v = 0;
    if (strlen(num) < digits)
        return 0;
    for (size_t i = 0; i < digits; i++)
        v = v * 10 + (num[i] - '0');
    return v >= lo && v <= hi;
}

/* The Pi cardType of a number that is not in the test table, or NULL. */
static const char *brand_of(const char *num)
{
    if (num[0] == '4')
        return "Visa";
    if (prefix_between(num, 2, 51, 55) || prefix_between(num, 4, 2221, 2720))
        return "MasterCard";
    if (prefix_between(num, 2, 34, 34) || prefix_between(num, 2, 37, 37))
        return "AmericanExpress";
    if (prefix_between(num, 4, 3528, 3589))
        return "JCB";
    if (prefix_between(num, 2, 36, 36) || prefix_between(num, 2, 38, 39) ||
        prefix_between(num, 3, 300, 305) || prefix_between(num, 4, 6011, 6011) ||
        prefix_between(num, 2, 65, 65) || prefix_between(num, 3, 644, 649))
        return "Discover";
    if (prefix_between(num, 2, 50, 50) || prefix_between(num, 2, 56, 69))
        return "Maestro";
    return NULL;
}

/* Caller holds mu. Drop expired keys and cards (and dead keys). */
static void purge_expired(struct opayo_state *st, int64_t now)
{
    size_t w = 0;
    for (size_t i = 0; i < st->n_keys; i++)
        if (st->keys[i].expiry_ms > now && st->keys[i].failures < OPAYO_SESSION_MAX_FAILURES)
            st->keys[w++] = st->keys[i];
    st->n_keys = w;
    w = 0;
    for (size_t i = 0; i < st->n_cards; i++)
        if (st->cards[i].expiry_ms > now)
            st->cards[w++] = st->cards[i];
    st->n_cards = w;
}

/* Caller holds mu. A live key, or NULL. */
static struct session_key *find_key(struct opayo_state *st, const char *key, int64_t now)
{
    for (size_t i = 0; i < st->n_keys; i++) {
        struct session_key *k = &st->keys[i];
        if (strcmp(k->key, key) == 0)
            return (k->expiry_ms > now && k->failures < OPAYO_SESSION_MAX_FAILURES) ? k : NULL;
    }
    return NULL;
}

static struct card_ref *find_card(struct opayo_state *st, const char *id, int64_t now)
{
    for (size_t i = 0; i < st->n_cards; i++)
        if (strcmp(st->cards[i].id, id) == 0)
            return st->cards[i].expiry_ms > now ? &st->cards[i] : NULL;
    return NULL;
}

static struct txn *find_txn(struct opayo_state *st, const char *id)
{
    for (size_t i = 0; i < st->n_txns; i++)
        if (strcasecmp(st->txns[i]->id, id) == 0)
            return st->txns[i];
    return NULL;
}

static int vendor_tx_code_used(struct opayo_state *st, const char *code)
{
    for (size_t i = 0; i < st->n_txns; i++)
        if (strcmp(st->txns[i]->vendor_tx_code, code) == 0)
            return 1;
    return 0;
}

/* ---- transactions as JSON ------------------------------------------------ */

static void set_str(json_t *o, const char *key, const char *value)
{
    if (value && *value)
        json_object_set_new(o, key, json_string(value));
}

/* The create shape (retrieve = 0) or the retrieve shape with the sandbox
 * extensions (retrieve = 1). Caller holds mu; caller owns the result. */
static json_t *txn_json(const struct txn *t, int retrieve)
{
    json_t *o = json_object(), *card, *pm, *amount;
    char when[32];

    if (!o)
        return NULL;
    set_str(o, "transactionId", t->id);
    set_str(o, "transactionType", txn_type_names[t->type]);
    set_str(o, "status", txn_status_names[t->status]);
    set_str(o, "statusCode", t->status_code);
    set_str(o, "statusDetail", t->status_detail);
    set_str(o, "retrievalReference", t->retrieval_reference);
    set_str(o, "bankResponseCode", t->bank_response_code);
    set_str(o, "bankAuthorisationCode", t->bank_auth_code);
    if (t->has_avs)
        json_object_set_new(o, "avsCvcCheck",
                            json_pack("{s:s,s:s,s:s,s:s}", "status", t->avs_status, "address",
                                      t->avs_address, "postalCode", t->avs_postal,
                                      "securityCode", t->avs_security));
    card = json_pack("{s:s,s:s,s:s,s:s,s:b}", "cardType", t->card_type, "lastFourDigits",
                     t->last4, "expiryDate", t->card_expiry, "cardIdentifier",
                     t->card_identifier, "reusable", 0);
    pm = json_object();
    json_object_set_new(pm, "card", card);
    json_object_set_new(o, "paymentMethod", pm);
    amount = json_pack("{s:I,s:I,s:I}", "totalAmount", (json_int_t)t->amount, "saleAmount",
                       (json_int_t)t->amount, "surchargeAmount", (json_int_t)0);
    json_object_set_new(o, "amount", amount);
    set_str(o, "currency", t->currency);
    json_object_set_new(o, "3DSecure", json_pack("{s:s}", "status", t->three_ds));
    if (!retrieve)
        return o;
    set_str(o, "vendorTxCode", t->vendor_tx_code);
    set_str(o, "description", t->description);
    set_str(o, "customerFirstName", t->first_name);
    set_str(o, "customerLastName", t->last_name);
    set_str(o, "customerEmail", t->email);
    if (t->billing_address)
        json_object_set_new(o, "billingAddress", json_deep_copy(t->billing_address));
    set_str(o, "referenceTransactionId", t->reference_id);
    json_object_set_new(o, "fraudScore", json_integer(t->fraud_score));
    pb__opayo_iso8601(t->created_ms, 0, when, sizeof(when));
    set_str(o, "createdAt", when);
    return o;
}

static void txn_free(struct txn *t)
{
    if (!t)
        return;
    free(t->vendor_tx_code);
    free(t->description);
    free(t->first_name);
    free(t->last_name);
    free(t->email);
    json_decref(t->billing_address);
    json_decref(t->instructions);
    free(t->notification_body);
    free(t);
}

/* Caller holds mu. Build t's notification if it has none yet (its first
 * notification, or one asked for by /_sandbox/notify after notify_url was
 * set late) and queue a delivery. */
static enum pb_rc notify_txn(struct opayo_state *st, struct txn *t, int first, struct pb_err *err)
{
    if (!t->notification_body) {
        json_t *shape = txn_json(t, 1);
        if (!shape)
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        t->notification_body = pb__opayo_notification_build(
            st->vendor_name, shape, t->notification_id, &t->notification_len, err);
        json_decref(shape);
        if (!t->notification_body)
            return err ? err->rc : PB_ERR_NOMEM;
    }
    return pb__opayo_notifier_enqueue(st->notifier, t->notification_id, t->notification_body,
                                      t->notification_len, first, err);
}

/* ---- route: merchant session keys ---------------------------------------- */

static enum pb_http_action h_msk_create(struct pb_http_request *req,
                                        struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    json_t *body, *errs;
    const char *vendor;
    struct session_key k = {0};
    char expiry[32];
    int64_t now = pb__opayo_now_ms();

    if (check_basic(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    errs = json_array();
    vendor = get_string(body, "vendorName", "vendorName", 1, 64, "vendor name", errs);
    if (vendor && strcasecmp(vendor, st->vendor_name) != 0)
        add_error(errs, 1009, "vendorName", "The vendor name does not match the credentials");
    if (json_array_size(errs)) {
        json_decref(body);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);
    json_decref(body);
    if (pb__opayo_guid(k.key, NULL)) {
        reply_pi(resp, 500, 9999);
        return PB_HTTP_DONE;
    }
    k.expiry_ms = now + OPAYO_SESSION_TTL_MS;
    pthread_mutex_lock(&st->mu);
    purge_expired(st, now);
    if (st->n_keys >= OPAYO_MAX_SESSION_KEYS) {
        pthread_mutex_unlock(&st->mu);
        reply_pi(resp, 500, 9999);
        return PB_HTTP_DONE;
    }
    st->keys[st->n_keys++] = k;
    pthread_mutex_unlock(&st->mu);
    pb__opayo_iso8601(k.expiry_ms, 1, expiry, sizeof(expiry));
    reply_json(resp, 201,
               json_pack("{s:s,s:s}", "merchantSessionKey", k.key, "expiry", expiry));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_msk_get(struct pb_http_request *req, struct pb_http_response *resp,
                                     void *arg)
{
    struct opayo_state *st = state_of(arg);
    struct session_key *k;
    char key[OPAYO_GUID_LEN + 1], expiry[32];
    int64_t expiry_ms = 0;

    if (check_basic(st, req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    k = find_key(st, req->params[0], pb__opayo_now_ms());
    if (k) {
        snprintf(key, sizeof(key), "%s", k->key);
        expiry_ms = k->expiry_ms;
    }
    pthread_mutex_unlock(&st->mu);
    if (!k) {
        reply_pi(resp, 404, 1006);
        return PB_HTTP_DONE;
    }
    pb__opayo_iso8601(expiry_ms, 1, expiry, sizeof(expiry));
    reply_json(resp, 200, json_pack("{s:s,s:s}", "merchantSessionKey", key, "expiry", expiry));
    return PB_HTTP_DONE;
}

/* ---- route: card identifiers --------------------------------------------- */

/* Validate cardDetails into c (everything but ids); errors added to errs. */
static void parse_card_details(json_t *body, struct card_ref *c, json_t *errs, int64_t now_ms)
{
    json_t *cd = json_object_get(body, "cardDetails");
    const char *name, *number, *expiry, *cvc;
    size_t len;

    if (!json_is_object(cd)) {
        add_error(errs, 1003, "cardDetails", "The card details are required");
        return;
    }
    name = get_string(cd, "cardholderName", "cardDetails.cardholderName", 1, 45,
                      "cardholder name", errs);
    (void)name; /* validated, never stored */
    number = get_string(cd, "cardNumber", "cardDetails.cardNumber", 1, 32, "card number", errs);
    if (number) {
        len = strlen(number);
        int digits = 1;
        for (size_t i = 0; i < len; i++)
            if (number[i] < '0' || number[i] > '9')
                digits = 0;
        if (!digits) {
            add_error(errs, 1005, "cardDetails.cardNumber",
                      "The card number contains invalid characters");
        } else if (len < 12 || len > 19) {
            add_error(errs, 1004, "cardDetails.cardNumber", "The card number length is invalid");
        } else if (!pb_luhn_valid(number, len)) {
            add_error(errs, 1007, "cardDetails.cardNumber", "The card number is invalid");
        } else {
            const char *type = NULL;
            c->outcome = CARD_DECLINED; /* unlisted numbers are declined, see the header */
            for (size_t i = 0; i < sizeof(test_cards) / sizeof(test_cards[0]); i++) {
                if (strcmp(test_cards[i].number, number) == 0) {
                    type = test_cards[i].type;
                    c->outcome = test_cards[i].outcome;
                    break;
                }
            }
            if (!type)
                type = brand_of(number);
            if (!type)
                add_error(errs, 1008, "cardDetails.cardNumber", "The card type is not supported");
            else
                snprintf(c->card_type, sizeof(c->card_type), "%s", type);
            memcpy(c->last4, number + len - 4, 4);
            c->last4[4] = '\0';
        }
    }
    expiry = get_string(cd, "expiryDate", "cardDetails.expiryDate", 1, 4, "expiry date", errs);
    if (expiry) {
        int mm, yy;
        if (strlen(expiry) != 4 || !isdigit((unsigned char)expiry[0]) ||
            !isdigit((unsigned char)expiry[1]) || !isdigit((unsigned char)expiry[2]) ||
            !isdigit((unsigned char)expiry[3]) ||
            (mm = (expiry[0] - '0') * 10 + (expiry[1] - '0')) < 1 || mm > 12) {
            add_error(errs, 1005, "cardDetails.expiryDate",
                      "The expiry date has to be in MMYY format");
        } else {
            time_t secs = (time_t)(now_ms / 1000);
            struct tm tm;
            gmtime_r(&secs, &tm);
            yy = 2000 + (expiry[2] - '0') * 10 + (expiry[3] - '0');
            if (yy < tm.tm_year + 1900 || (yy == tm.tm_year + 1900 && mm < tm.tm_mon + 1))
                add_error(errs, 1009, "cardDetails.expiryDate", "The card has expired");
            else
                snprintf(c->expiry, sizeof(c->expiry), "%s", expiry);
        }
    }
    cvc = get_string(cd, "securityCode", "cardDetails.securityCode", 0, 4, "security code", errs);
    c->security_code = CHECK_NOT_PROVIDED;
    if (cvc && *cvc) {
        int digits = strlen(cvc) >= 3;
        for (const char *p = cvc; *p; p++)
            if (!isdigit((unsigned char)*p))
                digits = 0;
        if (!digits)
            add_error(errs, 1005, "cardDetails.securityCode",
                      "The security code has to be 3 or 4 digits");
        else
            c->security_code = strcmp(cvc, "123") == 0 ? CHECK_MATCHED : CHECK_NOT_MATCHED;
    }
}

static enum pb_http_action h_card_create(struct pb_http_request *req,
                                         struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    const char *h = pb_http_header(req, "Authorization");
    char key[OPAYO_GUID_LEN + 1], expiry[32];
    struct session_key *k;
    struct card_ref c;
    json_t *body, *errs;
    int64_t now = pb__opayo_now_ms();

    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        reply_pi(resp, 401, 1001);
        return PB_HTTP_DONE;
    }
    h += 7;
    while (*h == ' ')
        h++;
    if (strlen(h) != OPAYO_GUID_LEN) {
        reply_pi(resp, 401, 1002);
        return PB_HTTP_DONE;
    }
    snprintf(key, sizeof(key), "%s", h);
    for (char *p = key; *p; p++)
        *p = (char)toupper((unsigned char)*p);

    pthread_mutex_lock(&st->mu);
    k = find_key(st, key, now);
    if (!k || k->used) {
        pthread_mutex_unlock(&st->mu);
        reply_pi(resp, 401, 1002);
        return PB_HTTP_DONE;
    }
    pthread_mutex_unlock(&st->mu);

    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    memset(&c, 0, sizeof(c));
    errs = json_array();
    parse_card_details(body, &c, errs, now);
    json_decref(body); /* the card number and CVC go away with the parsed body */

    pthread_mutex_lock(&st->mu);
    k = find_key(st, key, now); /* re-find: the array may have moved */
    if (!k || k->used) {
        pthread_mutex_unlock(&st->mu);
        json_decref(errs);
        reply_pi(resp, 401, 1002);
        return PB_HTTP_DONE;
    }
    if (json_array_size(errs)) {
        k->failures++; /* the third failure kills the key (find_key stops seeing it) */
        pthread_mutex_unlock(&st->mu);
        reply_errors(resp, errs);
        return PB_HTTP_DONE;
    }
    json_decref(errs);
    purge_expired(st, now);
    k = find_key(st, key, now);
    if (!k || st->n_cards >= OPAYO_MAX_CARD_IDS || pb__opayo_guid(c.id, NULL)) {
        pthread_mutex_unlock(&st->mu);
        reply_pi(resp, 500, 9999);
        return PB_HTTP_DONE;
    }
    k->used = 1;
    snprintf(c.session_key, sizeof(c.session_key), "%s", key);
    c.expiry_ms = now + OPAYO_SESSION_TTL_MS;
    st->cards[st->n_cards++] = c;
    pthread_mutex_unlock(&st->mu);
    pb__opayo_iso8601(c.expiry_ms, 1, expiry, sizeof(expiry));
    reply_json(resp, 201,
               json_pack("{s:s,s:s,s:s}", "cardIdentifier", c.id, "expiry", expiry, "cardType",
                         c.card_type));
    return PB_HTTP_DONE;
}

/* ---- route: transactions ------------------------------------------------- */

static const char *const entry_methods[] = {"Ecommerce", "MailOrder", "TelephoneOrder", NULL};
static const char *const apply_modes[] = {"UseMSPSetting", "Force", "Disable",
                                          "ForceIgnoringRules", NULL};

/* Caller holds mu. Validate the reference of a Repeat or Refund; NULL with an error added. */
static struct txn *check_reference(struct opayo_state *st, const char *ref_id, json_t *errs)
{
    struct txn *r = find_txn(st, ref_id);
    if (!r) {
        add_error(errs, 1012, "referenceTransactionId", "The referenced transaction was not found");
        return NULL;
    }
    if (r->type == TXN_REFUND) {
        add_error(errs, 1013, "referenceTransactionId",
                  "The referenced transaction must be a Payment, Deferred or Repeat");
        return NULL;
    }
    if (r->status != TXN_OK || r->voided || r->aborted ||
        (r->type == TXN_DEFERRED && !r->released)) {
        add_error(errs, 1014, "referenceTransactionId",
                  "The referenced transaction is not an authorised, released and unvoided "
                  "transaction");
        return NULL;
    }
    return r;
}

static void fill_outcome_ok(struct txn *t)
{
    t->status = TXN_OK;
    t->status_code = "0000";
    t->status_detail = "The Authorisation was Successful.";
    t->bank_response_code = "00";
    random_digits(t->bank_auth_code, 6);
    random_digits(t->retrieval_reference, 8);
}

static const char *check_name(enum check_result r)
{
    return r == CHECK_MATCHED ? "Matched" : r == CHECK_NOT_MATCHED ? "NotMatched" : "NotProvided";
}

/* AVS/CVC results and the outcome of a Payment or Deferred. */
static void decide_card_payment(struct opayo_state *st, struct txn *t, const struct card_ref *c,
                                const char *avs_mode, const char *three_ds_mode)
{
    const char *a1 = json_string_value(json_object_get(t->billing_address, "address1"));
    const char *pc = json_string_value(json_object_get(t->billing_address, "postalCode"));
    enum check_result addr = (a1 && strncmp(a1, "88", 2) == 0) ? CHECK_MATCHED : CHECK_NOT_MATCHED;
    enum check_result post =
        !pc ? CHECK_NOT_PROVIDED : strcmp(pc, "412") == 0 ? CHECK_MATCHED : CHECK_NOT_MATCHED;
    int avs_on = st->avs_rule && !(avs_mode && strcmp(avs_mode, "Disable") == 0);

    t->has_avs = 1;
    if (avs_mode && strcmp(avs_mode, "Disable") == 0) {
        t->avs_status = t->avs_address = t->avs_postal = t->avs_security = "NotChecked";
    } else {
        int address_ok = addr == CHECK_MATCHED && post == CHECK_MATCHED;
        int cvc_ok = c->security_code == CHECK_MATCHED;
        t->avs_address = check_name(addr);
        t->avs_postal = check_name(post);
        t->avs_security = check_name(c->security_code);
        t->avs_status = address_ok && cvc_ok ? "AllMatched"
                        : cvc_ok             ? "SecurityCodeMatchOnly"
                        : address_ok         ? "AddressMatchOnly"
                                             : "NoMatches";
    }
    t->three_ds = (three_ds_mode && strcmp(three_ds_mode, "Disable") == 0) ? "NotChecked"
                                                                          : "Authenticated";
    if (c->outcome == CARD_DECLINED) {
        t->status = TXN_NOTAUTHED;
        t->status_code = "2000";
        t->status_detail = "The Authorisation was Declined by the bank.";
        t->bank_response_code = "05";
    } else if (avs_on && !(addr == CHECK_MATCHED && post == CHECK_MATCHED)) {
        t->status = TXN_REJECTED;
        t->status_code = "2001";
        t->status_detail = "The Authorisation was Rejected by the vendor rule-base.";
        t->bank_response_code = "00";
    } else {
        fill_outcome_ok(t);
    }
}

static int fraud_score_for(const char *email)
{
    if (email && strstr(email, "+fraud"))
        return 95;
    return random_below(21);
}

static void copy_customer(struct txn *t, const struct txn *r)
{
    t->first_name = r->first_name ? strdup(r->first_name) : NULL;
    t->last_name = r->last_name ? strdup(r->last_name) : NULL;
    t->email = r->email ? strdup(r->email) : NULL;
    t->billing_address = r->billing_address ? json_deep_copy(r->billing_address) : NULL;
    snprintf(t->card_type, sizeof(t->card_type), "%s", r->card_type);
    snprintf(t->last4, sizeof(t->last4), "%s", r->last4);
    snprintf(t->card_expiry, sizeof(t->card_expiry), "%s", r->card_expiry);
    snprintf(t->card_identifier, sizeof(t->card_identifier), "%s", r->card_identifier);
}

/* Caller holds mu; body parsed. Fills resp. */
static void create_transaction(struct opayo_state *st, json_t *body,
                               struct pb_http_response *resp)
{
    json_t *errs = json_array();
    const char *type_s, *vtc, *currency, *description, *ref_id = NULL;
    const char *first = NULL, *last = NULL, *email = NULL, *avs_mode = NULL, *tds_mode = NULL;
    const char *msk = NULL, *card_id = NULL;
    json_t *billing = NULL, *reply;
    enum txn_type type = TXN_PAYMENT;
    struct card_ref *card = NULL;
    struct txn *t = NULL, *ref = NULL;
    int64_t amount, now = pb__opayo_now_ms();
    struct pb_err err = {0};

    type_s = get_string(body, "transactionType", "transactionType", 1, 16, "transaction type",
                        errs);
    if (type_s) {
        size_t i;
        for (i = 0; i < 4 && strcmp(type_s, txn_type_names[i]) != 0; i++)
            ;
        if (i == 4) {
            add_error(errs, 1009, "transactionType",
                      "The transaction type must be Payment, Deferred, Repeat or Refund");
            type_s = NULL;
        } else {
            type = (enum txn_type)i;
        }
    }
    if (!type_s) {
        reply_errors(resp, errs);
        return;
    }

    vtc = get_string(body, "vendorTxCode", "vendorTxCode", 1, OPAYO_VENDOR_TX_CODE_MAX,
                     "vendorTxCode", errs);
    if (vtc && !vendor_tx_code_chars_ok(vtc)) {
        add_error(errs, 1005, "vendorTxCode",
                  "The vendorTxCode may only contain letters, digits and - . _ { }");
        vtc = NULL;
    }
    if (vtc && vendor_tx_code_used(st, vtc)) {
        add_error(errs, 4042, "vendorTxCode", "The vendorTxCode %s has been used before", vtc);
        vtc = NULL;
    }
    amount = get_amount(body, "amount", errs);
    currency = get_currency(body, type != TXN_REFUND, errs);
    description = get_string(body, "description", "description", 1, 100, "description", errs);

    if (type == TXN_PAYMENT || type == TXN_DEFERRED) {
        json_t *pm = json_object_get(body, "paymentMethod");
        json_t *cj = json_is_object(pm) ? json_object_get(pm, "card") : NULL;
        if (!json_is_object(cj)) {
            add_error(errs, 1003, "paymentMethod.card", "The card payment method is required");
        } else {
            msk = get_string(cj, "merchantSessionKey", "paymentMethod.card.merchantSessionKey", 1,
                             64, "merchant session key", errs);
            card_id = get_string(cj, "cardIdentifier", "paymentMethod.card.cardIdentifier", 1,
                                 64, "card identifier", errs);
            if (msk && card_id) {
                card = find_card(st, card_id, now);
                if (!card || card->used || strcasecmp(card->session_key, msk) != 0) {
                    add_error(errs, 1011, "paymentMethod.card.cardIdentifier",
                              "The card identifier is invalid, used, expired or was not "
                              "created with this merchant session key");
                    card = NULL;
                }
            }
        }
        first = get_string(body, "customerFirstName", "customerFirstName", 1, 20,
                           "customer first name", errs);
        last = get_string(body, "customerLastName", "customerLastName", 1, 20,
                          "customer last name", errs);
        email = get_string(body, "customerEmail", "customerEmail", 0, 255, "customer email",
                           errs);
        billing = get_billing_address(body, errs);
        get_enum(body, "entryMethod", entry_methods, errs);
        tds_mode = get_enum(body, "apply3DSecure", apply_modes, errs);
        avs_mode = get_enum(body, "applyAvsCvcCheck", apply_modes, errs);
    } else {
        ref_id = get_string(body, "referenceTransactionId", "referenceTransactionId", 1,
                            OPAYO_GUID_LEN, "reference transaction id", errs);
        if (ref_id)
            ref = check_reference(st, ref_id, errs);
    }
    if (json_array_size(errs))
        goto reject;

    /* business rules that need valid fields */
    if (type == TXN_REFUND) {
        int64_t limit = ref->type == TXN_DEFERRED ? ref->released_amount : ref->amount;
        int64_t total;
        if (currency && strcmp(currency, ref->currency) != 0)
            add_error(errs, 1009, "currency",
                      "The refund currency %s differs from the original transaction's %s",
                      currency, ref->currency);
        else if (pb_money_add(ref->refunded, amount, &total) || total > limit)
            add_error(errs, 1018, "amount",
                      "The refund amount %lld would bring the refunds to more than the "
                      "original amount of %lld (already refunded %lld)",
                      (long long)amount, (long long)limit, (long long)ref->refunded);
        currency = ref->currency;
    }
    if (json_array_size(errs))
        goto reject;
    if (st->n_txns >= OPAYO_MAX_TRANSACTIONS) {
        json_decref(errs);
        json_decref(billing);
        reply_pi(resp, 500, 9999);
        return;
    }
    json_decref(errs);
    errs = NULL;

    /* build the transaction */
    t = calloc(1, sizeof(*t));
    if (!t || pb__opayo_guid(t->id, NULL))
        goto internal;
    t->type = type;
    t->amount = amount;
    snprintf(t->currency, sizeof(t->currency), "%s", currency);
    t->vendor_tx_code = strdup(vtc);
    t->description = redacted_copy(description);
    t->created_ms = now;
    t->instructions = json_array();
    if (!t->vendor_tx_code || !t->description || !t->instructions)
        goto internal;
    if (card) {
        t->first_name = redacted_copy(first);
        t->last_name = redacted_copy(last);
        t->email = redacted_copy(email);
        t->billing_address = billing;
        billing = NULL;
        snprintf(t->card_type, sizeof(t->card_type), "%s", card->card_type);
        snprintf(t->last4, sizeof(t->last4), "%s", card->last4);
        snprintf(t->card_expiry, sizeof(t->card_expiry), "%s", card->expiry);
        snprintf(t->card_identifier, sizeof(t->card_identifier), "%s", card->id);
        decide_card_payment(st, t, card, avs_mode, tds_mode);
        card->used = 1;
    } else {
        copy_customer(t, ref);
        snprintf(t->reference_id, sizeof(t->reference_id), "%s", ref->id);
        t->three_ds = "NotChecked";
        fill_outcome_ok(t);
        if (type == TXN_REFUND)
            ref->refunded += amount; /* checked against the limit above */
    }
    t->fraud_score = fraud_score_for(t->email);

    if (st->n_txns == st->cap_txns) {
        size_t cap = st->cap_txns ? st->cap_txns * 2 : 64;
        struct txn **grown = realloc(st->txns, cap * sizeof(*grown));
        if (!grown) {
            if (type == TXN_REFUND)
                ref->refunded -= amount;
            goto internal;
        }
        st->txns = grown;
        st->cap_txns = cap;
    }
    st->txns[st->n_txns++] = t;

    if (pb__opayo_notifier_enabled(st->notifier) && notify_txn(st, t, 1, &err))
        pb_log(PB_LOG_WARN, "sandbox.opayo.notify_not_queued", "transaction_id", t->id, "error",
               err.msg, NULL);
    pb_log(PB_LOG_DEBUG, "sandbox.opayo.transaction", "transaction_id", t->id, "type",
           txn_type_names[t->type], "status", txn_status_names[t->status], NULL);
    reply = txn_json(t, 0);
    if (!reply) {
        reply_pi(resp, 500, 9999);
        return;
    }
    reply_json(resp, 201, reply);
    return;

reject:
    json_decref(billing);
    reply_errors(resp, errs);
    return;
internal:
    json_decref(billing);
    txn_free(t);
    reply_pi(resp, 500, 9999);
}

static enum pb_http_action h_txn_create(struct pb_http_request *req,
                                        struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    json_t *body;

    if (check_basic(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    create_transaction(st, body, resp);
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_txn_get(struct pb_http_request *req, struct pb_http_response *resp,
                                     void *arg)
{
    struct opayo_state *st = state_of(arg);
    struct txn *t;
    json_t *o = NULL;

    if (check_basic(st, req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    t = find_txn(st, req->params[0]);
    if (t)
        o = txn_json(t, 1);
    pthread_mutex_unlock(&st->mu);
    if (!t)
        reply_pi(resp, 404, 1012);
    else if (!o)
        reply_pi(resp, 500, 9999);
    else
        reply_json(resp, 200, o);
    return PB_HTTP_DONE;
}

/* ---- route: instructions ------------------------------------------------- */

/* Caller holds mu. 0 and fills nothing when allowed; else fills resp. */
static int apply_instruction(struct opayo_state *st, struct txn *t, const char *kind,
                             json_t *body, struct pb_http_response *resp, int64_t now)
{
    if (strcmp(kind, "void") == 0) {
        if (t->type == TXN_DEFERRED) {
            reply_pi(resp, 403, 1013);
            return -1;
        }
        if (t->status != TXN_OK) {
            reply_pi(resp, 403, 1014);
            return -1;
        }
        if (t->voided || t->refunded > 0 || t->created_ms / 86400000 != now / 86400000) {
            reply_pi(resp, 403, 1017);
            return -1;
        }
        t->voided = 1;
        if (t->type == TXN_REFUND) {
            struct txn *r = find_txn(st, t->reference_id);
            if (r)
                r->refunded -= t->amount;
        }
        return 0;
    }
    if (t->type != TXN_DEFERRED) {
        reply_pi(resp, 403, 1013);
        return -1;
    }
    if (t->status != TXN_OK) {
        reply_pi(resp, 403, 1014);
        return -1;
    }
    if (t->released || t->aborted) {
        reply_pi(resp, 403, 1017);
        return -1;
    }
    if (strcmp(kind, "abort") == 0) {
        t->aborted = 1;
        return 0;
    }
    /* release */
    json_t *errs = json_array();
    int64_t amount = get_amount(body, "amount", errs);
    if (json_array_size(errs)) {
        reply_errors(resp, errs);
        return -1;
    }
    json_decref(errs);
    if (amount > t->amount) {
        reply_pi(resp, 403, 1021);
        return -1;
    }
    t->released = 1;
    t->released_amount = amount;
    return 0;
}

static enum pb_http_action h_instruction_create(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    static const char *const kinds[] = {"void", "abort", "release", NULL};
    struct opayo_state *st = state_of(arg);
    json_t *body, *errs;
    const char *kind;
    struct txn *t;
    char date[32];
    int64_t now = pb__opayo_now_ms();

    if (check_basic(st, req, resp))
        return PB_HTTP_DONE;
    if (!(body = parse_body(req, resp)))
        return PB_HTTP_DONE;
    errs = json_array();
    kind = get_string(body, "instructionType", "instructionType", 1, 16, "instruction type",
                      errs);
    if (kind) {
        size_t i;
        for (i = 0; kinds[i] && strcmp(kinds[i], kind) != 0; i++)
            ;
        if (!kinds[i])
            add_error(errs, 1009, "instructionType",
                      "The instruction type must be void, abort or release");
    }
    pthread_mutex_lock(&st->mu);
    t = find_txn(st, req->params[0]);
    if (!t) {
        reply_pi(resp, 404, 1012);
        json_decref(errs);
    } else if (json_array_size(errs)) {
        reply_errors(resp, errs);
    } else {
        json_decref(errs);
        if (apply_instruction(st, t, kind, body, resp, now) == 0) {
            pb__opayo_iso8601(now, 1, date, sizeof(date));
            json_array_append_new(t->instructions, json_pack("{s:s,s:s}", "instructionType",
                                                             kind, "date", date));
            reply_json(resp, 201,
                       json_pack("{s:s,s:s}", "instructionType", kind, "date", date));
        }
    }
    pthread_mutex_unlock(&st->mu);
    json_decref(body);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_instruction_list(struct pb_http_request *req,
                                              struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    struct txn *t;
    json_t *list = NULL;

    if (check_basic(st, req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    t = find_txn(st, req->params[0]);
    if (t && json_array_size(t->instructions))
        list = json_deep_copy(t->instructions);
    pthread_mutex_unlock(&st->mu);
    if (!t)
        reply_pi(resp, 404, 1012);
    else if (!list)
        reply_pi(resp, 404, 1019);
    else
        reply_json(resp, 200, json_pack("{s:o}", "instructions", list));
    return PB_HTTP_DONE;
}

/* ---- admin routes -------------------------------------------------------- */

static enum pb_http_action h_admin_notify(struct pb_http_request *req,
                                          struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    struct pb_err err = {0};
    struct txn *t;
    enum pb_rc rc = PB_OK;
    char id[OPAYO_GUID_LEN + 1] = "";

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    t = find_txn(st, req->params[0]);
    if (t) {
        rc = notify_txn(st, t, 0, &err);
        snprintf(id, sizeof(id), "%s", t->notification_id);
    }
    pthread_mutex_unlock(&st->mu);
    if (!t)
        reply_pi(resp, 404, 1012);
    else if (rc == PB_ERR_CONFIG)
        pb_http_response_error(resp, 409, "no_notify_url", "%s", err.msg);
    else if (rc)
        pb_http_response_error(resp, 503, pb_rc_name(rc), "%s", err.msg);
    else
        reply_json(resp, 202, json_pack("{s:s,s:b}", "notificationId", id, "queued", 1));
    return PB_HTTP_DONE;
}

static json_t *settings_json(struct opayo_state *st)
{
    json_t *o = pb__opayo_notifier_settings_json(st->notifier);
    if (o) {
        pthread_mutex_lock(&st->mu);
        json_object_set_new(o, "avs_rule", json_boolean(st->avs_rule));
        json_object_set_new(o, "vendor_name", json_string(st->vendor_name));
        pthread_mutex_unlock(&st->mu);
    }
    return o;
}

static enum pb_http_action h_admin_settings_get(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    reply_json(resp, 200, settings_json(st));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_settings_set(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    struct pb_err err = {0};
    json_error_t jerr;
    json_t *patch, *avs;

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    patch = json_loadb(req->body, req->body_len, 0, &jerr);
    if (!json_is_object(patch)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "the body must be a JSON object");
        return PB_HTTP_DONE;
    }
    avs = json_object_get(patch, "avs_rule");
    if (avs && !json_is_boolean(avs)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "avs_rule must be true or false");
        return PB_HTTP_DONE;
    }
    if (pb__opayo_notifier_configure(st->notifier, patch, &err)) {
        json_decref(patch);
        pb_http_response_error(resp, 400, "invalid", "%s", err.msg);
        return PB_HTTP_DONE;
    }
    if (avs) {
        pthread_mutex_lock(&st->mu);
        st->avs_rule = json_is_true(avs);
        pthread_mutex_unlock(&st->mu);
    }
    json_decref(patch);
    reply_json(resp, 200, settings_json(st));
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_stats(struct pb_http_request *req,
                                         struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    struct pb__opayo_notify_stats ns;
    size_t n;

    json_t *o, *by_status = json_object();
    uint64_t requests;

    if (check_admin(req, resp)) {
        json_decref(by_status);
        return PB_HTTP_DONE;
    }
    pthread_mutex_lock(&st->mu);
    n = st->n_txns;
    requests = st->requests;
    for (size_t i = 0; by_status && i < OPAYO_STATUS_SLOTS && st->status_code[i]; i++) {
        char key[16];
        snprintf(key, sizeof(key), "%d", st->status_code[i]);
        json_object_set_new(by_status, key, json_integer((json_int_t)st->status_count[i]));
    }
    pthread_mutex_unlock(&st->mu);
    pb__opayo_notifier_stats(st->notifier, &ns);
    o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o*}", "transactions", (json_int_t)n,
                  "notifications_sent", (json_int_t)ns.sent, "notifications_acknowledged",
                  (json_int_t)ns.acknowledged, "notifications_failed", (json_int_t)ns.failed,
                  "notifications_pending", (json_int_t)ns.pending, "requests",
                  (json_int_t)requests, "responses", by_status);
    reply_json(resp, 200, o);
    return PB_HTTP_DONE;
}

static enum pb_http_action h_admin_transactions(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);
    json_t *all = json_array();

    if (check_admin(req, resp)) {
        json_decref(all);
        return PB_HTTP_DONE;
    }
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; all && i < st->n_txns; i++) {
        /* what settlement needs beyond the retrieve shape: voided and aborted
         * transactions never settle; a released Deferred settles its release */
        const struct txn *t = st->txns[i];
        json_t *o = txn_json(t, 1);
        if (o && t->voided)
            json_object_set_new(o, "voided", json_true());
        if (o && t->aborted)
            json_object_set_new(o, "aborted", json_true());
        if (o && t->type == TXN_DEFERRED && t->released)
            json_object_set_new(o, "releasedAmount", json_integer((json_int_t)t->released_amount));
        json_array_append_new(all, o);
    }
    pthread_mutex_unlock(&st->mu);
    reply_json(resp, 200, all);
    return PB_HTTP_DONE;
}

/* Caller holds mu. */
static void clear_store(struct opayo_state *st)
{
    for (size_t i = 0; i < st->n_txns; i++)
        txn_free(st->txns[i]);
    st->n_txns = 0;
    st->n_keys = 0;
    st->n_cards = 0;
    st->requests = 0;
    memset(st->status_code, 0, sizeof(st->status_code));
    memset(st->status_count, 0, sizeof(st->status_count));
}

static enum pb_http_action h_admin_reset(struct pb_http_request *req,
                                         struct pb_http_response *resp, void *arg)
{
    struct opayo_state *st = state_of(arg);

    if (check_admin(req, resp))
        return PB_HTTP_DONE;
    pthread_mutex_lock(&st->mu);
    clear_store(st);
    pb__opayo_notifier_reset(st->notifier);
    pthread_mutex_unlock(&st->mu);
    sbx_opayo_report_reset(st->report); /* its own lock, never nested in ours */
    reply_json(resp, 200, json_pack("{s:b}", "reset", 1));
    return PB_HTTP_DONE;
}

/* Every route goes through here: call the real handler, then count the reply. */
static enum pb_http_action counted(struct pb_http_request *req, struct pb_http_response *resp,
                                   void *arg)
{
    struct sbx_route_slot *slot = arg;
    struct opayo_state *st = state_of(slot->state);
    enum pb_http_action act = slot->handler(req, resp, st);
    int status = resp->status ? resp->status : 500;

    pthread_mutex_lock(&st->mu);
    st->requests++;
    sbx_count_status(st->status_code, st->status_count, OPAYO_STATUS_SLOTS, status);
    pthread_mutex_unlock(&st->mu);
    return act;
}

/* ---- the emulator type --------------------------------------------------- */

/* The Reporting API emulator (opayo_report.c) reads our transactions through
 * this: our lock only, never nested in the report's. */
static json_t *report_source(void *arg)
{
    struct opayo_state *st = arg;
    json_t *all = json_array();
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; all && i < st->n_txns; i++) {
        /* what settlement needs beyond the retrieve shape: voided and aborted
         * transactions never settle; a released Deferred settles its release */
        const struct txn *t = st->txns[i];
        json_t *o = txn_json(t, 1);
        if (o && t->voided)
            json_object_set_new(o, "voided", json_true());
        if (o && t->aborted)
            json_object_set_new(o, "aborted", json_true());
        if (o && t->type == TXN_DEFERRED && t->released)
            json_object_set_new(o, "releasedAmount", json_integer((json_int_t)t->released_amount));
        json_array_append_new(all, o);
    }
    pthread_mutex_unlock(&st->mu);
    return all;
}

static enum pb_http_action h_report_access(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *arg)
{
    return sbx_opayo_report_access(req, resp, state_of(arg)->report);
}

static enum pb_http_action h_report_settle(struct pb_http_request *req,
                                           struct pb_http_response *resp, void *arg)
{
    return sbx_opayo_report_settle(req, resp, state_of(arg)->report);
}

static enum pb_http_action h_report_settlements(struct pb_http_request *req,
                                                struct pb_http_response *resp, void *arg)
{
    return sbx_opayo_report_settlements(req, resp, state_of(arg)->report);
}

static void opayo_destroy(void *arg);

/* Copy settings[key] (a string) into *out, or the default. -1 on a wrong type. */
static int setting_string(json_t *settings, const char *key, const char *def, char **out,
                          struct pb_err *err)
{
    json_t *v = settings ? json_object_get(settings, key) : NULL;
    if (v && !json_is_null(v) && (!json_is_string(v) || json_string_length(v) == 0 ||
                                  strlen(json_string_value(v)) != json_string_length(v))) {
        pb_err_set(err, PB_ERR_CONFIG, "opayo setting %s must be a non-empty string", key);
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
static const struct sbx_route_spec OPAYO_ROUTES[] = {
    {"POST", "/api/v1/merchant-session-keys", h_msk_create},
    {"GET", "/api/v1/merchant-session-keys/{}", h_msk_get},
    {"POST", "/api/v1/card-identifiers", h_card_create},
    {"POST", "/api/v1/transactions", h_txn_create},
    {"GET", "/api/v1/transactions/{}", h_txn_get},
    {"POST", "/api/v1/transactions/{}/instructions", h_instruction_create},
    {"GET", "/api/v1/transactions/{}/instructions", h_instruction_list},
    {"POST", "/_sandbox/notify/{}", h_admin_notify},
    {"GET", "/_sandbox/settings", h_admin_settings_get},
    {"POST", "/_sandbox/settings", h_admin_settings_set},
    {"GET", "/_sandbox/stats", h_admin_stats},
    {"GET", "/_sandbox/transactions", h_admin_transactions},
    {"POST", "/_sandbox/reset", h_admin_reset},
    {"POST", "/access/access.htm", h_report_access},
    {"POST", "/_sandbox/settle", h_report_settle},
    {"GET", "/_sandbox/settlements", h_report_settlements},
};
#define N_OPAYO_ROUTES (sizeof(OPAYO_ROUTES) / sizeof(OPAYO_ROUTES[0]))
_Static_assert(N_OPAYO_ROUTES <= OPAYO_MAX_ROUTES, "route table too small");

static void *opayo_create(json_t *settings, struct pb_err *err)
{
    struct opayo_state *st;
    json_t *avs;

    if (settings && !json_is_object(settings)) {
        pb_err_set(err, PB_ERR_CONFIG, "opayo settings must be a JSON object");
        return NULL;
    }
    st = calloc(1, sizeof(*st));
    if (!st) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->magic = OPAYO_STATE_MAGIC;
    pthread_mutex_init(&st->mu, NULL);
    st->avs_rule = 1;
    if (setting_string(settings, "integration_key", "sandbox-key", &st->integration_key, err) ||
        setting_string(settings, "integration_password", "sandbox-password",
                       &st->integration_password, err) ||
        setting_string(settings, "vendor_name", "sandbox", &st->vendor_name, err))
        goto fail;
    avs = settings ? json_object_get(settings, "avs_rule") : NULL;
    if (avs && !json_is_boolean(avs)) {
        pb_err_set(err, PB_ERR_CONFIG, "opayo setting avs_rule must be true or false");
        goto fail;
    }
    if (avs)
        st->avs_rule = json_is_true(avs);
    st->keys = calloc(OPAYO_MAX_SESSION_KEYS, sizeof(*st->keys));
    st->cards = calloc(OPAYO_MAX_CARD_IDS, sizeof(*st->cards));
    if (!st->keys || !st->cards) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (pb__opayo_notifier_create(settings, &st->notifier, err)) {
        pb_err_prefix(err, "opayo settings");
        goto fail;
    }
    st->report = sbx_opayo_report_create(settings, report_source, st, err);
    if (!st->report)
        goto fail;

    sbx_routes_fill(OPAYO_ROUTES, N_OPAYO_ROUTES, st, counted, st->slots, st->routes);
    return st;
fail:
    opayo_destroy(st);
    return NULL;
}

static const struct pb_http_route *opayo_routes(void *arg)
{
    return state_of(arg)->routes;
}

static void opayo_started(void *arg, int port)
{
    struct opayo_state *st = state_of(arg);
    char port_text[16];
    pthread_mutex_lock(&st->mu);
    st->port = port;
    pthread_mutex_unlock(&st->mu);
    snprintf(port_text, sizeof(port_text), "%d", port);
    pb_log(PB_LOG_INFO, "sandbox.opayo.started", "port", port_text, NULL);
}

static void opayo_destroy(void *arg)
{
    struct opayo_state *st = arg;
    if (!st)
        return;
    state_of(st);
    /* the notifier first: its thread holds no pointer into the store */
    pb__opayo_notifier_destroy(st->notifier);
    st->notifier = NULL;
    sbx_opayo_report_destroy(st->report);
    st->report = NULL;
    clear_store(st);
    free(st->txns);
    free(st->keys);
    free(st->cards);
    free(st->integration_key);
    pb_secret_free(st->integration_password);
    free(st->vendor_name);
    pthread_mutex_destroy(&st->mu);
    st->magic = 0;
    free(st);
}

const struct sbx_emulator_type sbx_opayo_type = {
    .name = "opayo",
    .create = opayo_create,
    .routes = opayo_routes,
    .started = opayo_started,
    .destroy = opayo_destroy,
};
