/*
 * sandbox/xero.c: an emulator of the Xero Accounting API (OAuth2 client
 * credentials, Contacts, Invoices, Payments, CreditNotes and their
 * Allocations, BankTransactions, BankTransfers, ManualJournals) for
 * paybridge's tests and
 * benchmarks. It speaks the wire format of /work/shared/specs/xero (envelopes,
 * /Date(ms+0000)/ dates, ValidationException bodies, summarizeErrors,
 * Idempotency-Key, where filters, rate-limit headers), keeps everything in
 * memory, and exposes counters under /_sandbox/ for exactly-once checks.
 *
 * Routes (the framework adds fault injection and /_sandbox/health|faults):
 *   POST /connect/token                     client_credentials grant
 *   GET  /connections                       the one tenant
 *   GET  /api.xro/2.0/Organisation, /Accounts
 *   PUT|POST /api.xro/2.0/Contacts          create (batch) / create or update
 *   GET  /api.xro/2.0/Contacts[/{id}]
 *   PUT|POST /api.xro/2.0/Invoices, POST /Invoices/{id} (update)
 *   GET  /api.xro/2.0/Invoices[/{id or number}]
 *   PUT /api.xro/2.0/Payments (batch), POST /Payments (one); a payment names
 *        an Invoice, or a CreditNote (a cash refund of the credit)
 *   GET  /api.xro/2.0/Payments[/{id}]; POST /Payments/{id} {"Status":"DELETED"}
 *        (the payment stays listed as DELETED; its invoice owes the amount again)
 *   PUT|POST /api.xro/2.0/BankTransactions (spend / receive money on a BANK
 *        account, line items on accounts that are not BANK), POST
 *        /BankTransactions/{id} (Status DELETED or VOIDED only), GET
 *        /BankTransactions[/{id}] (also lists each transfer's two legs)
 *   PUT|POST /api.xro/2.0/BankTransfers (create only: between two different
 *        BANK accounts, Amount > 0), GET /BankTransfers[/{id}]
 *   PUT|POST /api.xro/2.0/ManualJournals (create only; Xero's checks: the
 *        chart of accounts, no BANK account on a line, debits = credits, two
 *        lines or more, a Narration), GET /ManualJournals[/{id}]
 *   PUT|POST /api.xro/2.0/CreditNotes, POST /CreditNotes/{id} (update, e.g.
 *        Status VOIDED), GET /CreditNotes[/{id or number}]
 *   PUT  /api.xro/2.0/CreditNotes/{id}/Allocations (credit applied to invoices)
 *   GET  /_sandbox/stats (counts, among them bank_transactions (made through
 *        /BankTransactions; a transfer's legs are not counted), bank_transfers,
 *        manual_journals), POST /_sandbox/reset, POST /_sandbox/fail_next (fail
 *        the next calls of one method and path, before or after they commit;
 *        see op_fail_next)
 *
 * Settings (all optional; defaults in brackets): client_id ["sandbox-client"],
 * client_secret ["sandbox-secret"], tenant_id [DEFAULT_TENANT_ID],
 * tenant_name ["Demo Company (UK)"], base_currency ["GBP"], currencies
 * [GBP EUR USD JPY], token_ttl_s [1800], accounts [090 and 091 BANK, 200 and
 * 260 REVENUE, 404 EXPENSE; objects {Code, Name, Type, AccountID?,
 * EnablePaymentsToAccount?}], limits [{per_minute 60, per_day 5000,
 * concurrent 5, app_per_minute 10000}; in a given object an absent or 0 key
 * is unlimited; false disables all], idempotency_max_entries [200000] and
 * idempotency_max_bytes [512 MiB] (oldest stored replies are evicted beyond
 * them, counted as idempotency_evictions), idempotency_store_errors [false:
 * only 2xx replies are stored for replay, see idem_end]. Unknown keys are a
 * config error.
 *
 * Queries: `where` is a small subset of Xero's Dynamic LINQ: Field==value,
 * Field=value, Field!=value, Field<>value with "string", guid("..."), or a
 * bare word; Field.Contains("x"), .StartsWith("x"), .EndsWith("x") on text;
 * Date <, <=, >, >=, == with DateTime(2026,11,20) or "2026-11-20" (Payments,
 * BankTransactions, ManualJournals, BankTransfers); AND OR && || and parentheses. Text
 * comparisons ignore case. Fields
 * are listed in FIELDS; anything else is a 400 QueryParseException that
 * names the supported ones. An equality on an indexed field (or an AND or
 * OR of them, or IDs / InvoiceNumbers / ContactIDs) reads the index; other
 * filters scan. `page` gives 100 (or pageSize, up to 1000) per page and a
 * "pagination" member; without it every match is returned.
 *
 * Life of an /api.xro call (api_handler): count it; check the Bearer token
 * (401) and xero-tenant-id (403); admit it against the per-minute, per-day,
 * per-app-minute and concurrency limits (429 with Retry-After and
 * X-Rate-Limit-Problem); for a write with Idempotency-Key, replay a stored
 * reply or register the key; run the operation; store the reply for the key;
 * add X-MinLimit-Remaining, X-DayLimit-Remaining, X-AppMinLimit-Remaining.
 *
 * Writes run in three steps so that the state mutex is held only for the part
 * that must see the state:
 *   1. outside the lock: parse the body, check each element on its own
 *      (types, enums, dates, account codes, currencies, line arithmetic) and
 *      build most of its document;
 *   2. under the data lock: resolve references (contacts, invoices, names,
 *      numbers, amounts due) against the state *and* the earlier elements of
 *      the same batch, then, unless summarizeErrors is on and something
 *      failed, commit the valid elements;
 *   3. outside the lock: serialise the reply.
 * Updates of existing records merge the stored document with the element and
 * re-run step 1 under the lock; they are rare next to creates.
 *
 * Credit notes are invoices of another kind (struct doc_kind): the same
 * record, checks, lines, totals, numbering (CN-nnnn for ACCRECCREDIT),
 * update and status rules, kept in their own store and indexes so that
 * GET /Invoices never lists them. A credit note's RemainingCredit is its
 * `due`: total minus refunds (payments on it) minus allocations. An
 * allocation lowers both the note's RemainingCredit and the invoice's
 * AmountDue (raising its AmountCredited); at zero either becomes PAID. A
 * PAID invoice takes no allocation ("has already been paid off"): its refund
 * is a payment on the credit note (PaymentType ARCREDITPAYMENT). A document
 * with payments or allocations cannot be voided; a PAID one cannot change
 * status at all.
 *
 * Money: every amount is an int64 in minor units of the document's currency
 * (pb_currency_exponent). Quantity and UnitAmount are kept at 4 decimal
 * places; LineAmount = Quantity x UnitAmount is computed exactly at 8 places
 * and rounded once, half to even, to the currency's minor unit. No double
 * touches money: reals from jansson are read as text ("%.15g", as
 * pb_json_to_minor does) and amounts go out as decimal strings that
 * pb_json_dumps_decimal() writes as exact JSON numbers.
 *
 * Documents: records keep their JSON as compact text, not as jansson trees
 * (a tree costs ~6 KB a document, the text ~1 KB; 100k+ records must fit).
 * Contacts and payments keep their whole document; an invoice keeps a
 * `head` (the members only an update changes) and render_invoice() appends
 * the members payments change (Status, AmountDue, AmountPaid, Payments, ...)
 * from typed fields. Creates build their text in step 1 with jansson and
 * pb_json_dumps_decimal(); under the lock only plain text is appended
 * (out_jstr escapes as jansson does). Reads render under the data lock
 * (a memcpy per record) into the reply buffer, so a record never needs to
 * outlive the lock. Updates parse the stored text back into a tree.
 *
 * Indexes: chained hash tables (struct hidx) from a key to records, case-
 * insensitive, several records per key: contacts by ContactID, Name,
 * EmailAddress; invoices and (apart) credit notes by ID, number, Reference,
 * ContactID; payments by PaymentID, Reference, InvoiceID, CreditNoteID. Keys
 * are borrowed from the records, so a key is removed from its index before
 * its record changes it.
 *
 * Locking: two mutexes, never held together except by reset (data, then
 * gate): `data` guards the records, indexes and their counters; `gate`
 * guards tokens, rate-limit windows, the idempotency store and the request
 * counters. Handlers may block (thread per connection); a request that finds
 * its Idempotency-Key in flight waits on `idem_cond` for the first to finish.
 *
 * Rejected: a jansson tree per record (simplest, but ~6 KB a record and a
 * re-serialisation per read); one mutex for everything (a token check or a
 * rate-limit decision would wait behind a 100k-record listing).
 *
 * Not emulated: tax rates (TotalTax is always 0), discounts, tracking,
 * overpayments, prepayments, deleting allocations, updating manual journals,
 * bank transactions in another currency than their bank account's,
 * If-Modified-Since, `order`.
 */
#include <ctype.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/crypto.h"
#include "core/json.h"
#include "core/money.h"
#include "net/httpd.h"
#include "sbx.h"

#define XERO_MAGIC 0x5845524fu
#define PROVIDER_NAME "paybridge sandbox"
#define DEFAULT_TENANT_ID "2f9b7d4c-8a1e-4c3b-9f5d-6e0a1b2c3d4e"
#define CONNECTION_ID "7c1e4b9a-3d2f-4e8b-a6c5-0f9e8d7c6b5a"
#define API "/api.xro/2.0"
#define MAX_TOKENS 4096
#define IDEM_KEY_MAX 128
#define PAGE_SIZE 100
#define PAGE_SIZE_MAX 1000
#define WHERE_NODES_MAX 128
#define NAME_MAX_LEN 255
#define QTY_SCALE 4            /* Quantity and UnitAmount decimal places */
#define NS_PER_S 1000000000ull

/* Members written as JSON numbers by pb_json_dumps_decimal(). */
static const char *const DECIMAL_KEYS[] = {
    "Quantity", "UnitAmount", "LineAmount", "TaxAmount", "SubTotal", "TotalTax",
    "Total", "AmountDue", "AmountPaid", "AmountCredited", "Amount", "BankAmount",
    "CurrencyRate", NULL};

/* ==== small containers ==================================================== */

struct vec {
    void **v;
    size_t n, cap;
};

static int vec_push(struct vec *a, void *p)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        void **nv = realloc(a->v, cap * sizeof(*nv));
        if (!nv)
            return -1;
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = p;
    return 0;
}

/* A case-insensitive multi-map from borrowed C strings to records. */
struct hent {
    uint64_t h;
    const char *key;            /* borrowed from rec */
    void *rec;
    struct hent *next;
};

struct hidx {
    struct hent **b;
    size_t nb, n;
};

static uint64_t hash_fold(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)tolower((unsigned char)*s);
        h *= 1099511628211ull;
    }
    return h;
}

static int hidx_grow(struct hidx *ix)
{
    size_t nb = ix->nb ? ix->nb * 2 : 256;
    struct hent **b = calloc(nb, sizeof(*b));
    if (!b)
        return -1;
    for (size_t i = 0; i < ix->nb; i++) {
        struct hent *e = ix->b[i], *next;
        for (; e; e = next) {
            next = e->next;
            e->next = b[e->h & (nb - 1)];
            b[e->h & (nb - 1)] = e;
        }
    }
    free(ix->b);
    ix->b = b;
    ix->nb = nb;
    return 0;
}

/* Add (key, rec); an empty key is not indexed. */
static int hidx_add(struct hidx *ix, const char *key, void *rec)
{
    struct hent *e;
    if (!key || !*key)
        return 0;
    if (ix->n >= ix->nb && hidx_grow(ix))
        return -1;
    e = malloc(sizeof(*e));
    if (!e)
        return -1;
    e->h = hash_fold(key);
    e->key = key;
    e->rec = rec;
    e->next = ix->b[e->h & (ix->nb - 1)];
    ix->b[e->h & (ix->nb - 1)] = e;
    ix->n++;
    return 0;
}

static void hidx_del(struct hidx *ix, const char *key, void *rec)
{
    struct hent **pp;
    if (!key || !*key || !ix->nb)
        return;
    for (pp = &ix->b[hash_fold(key) & (ix->nb - 1)]; *pp; pp = &(*pp)->next) {
        if ((*pp)->rec == rec && (*pp)->key == key) {
            struct hent *e = *pp;
            *pp = e->next;
            free(e);
            ix->n--;
            return;
        }
    }
}

static struct hent *hidx_scan(struct hent *e, uint64_t h, const char *key)
{
    for (; e; e = e->next)
        if (e->h == h && !strcasecmp(e->key, key))
            return e;
    return NULL;
}

static struct hent *hidx_find(const struct hidx *ix, const char *key)
{
    uint64_t h;
    if (!ix->nb || !key || !*key)
        return NULL;
    h = hash_fold(key);
    return hidx_scan(ix->b[h & (ix->nb - 1)], h, key);
}

static struct hent *hidx_next(struct hent *e, const char *key)
{
    return hidx_scan(e->next, e->h, key);
}

static void *hidx_get(const struct hidx *ix, const char *key)
{
    struct hent *e = hidx_find(ix, key);
    return e ? e->rec : NULL;
}

/* The record whose key equals `key` exactly (case-sensitive). */
static void *hidx_get_exact(const struct hidx *ix, const char *key)
{
    struct hent *e;
    for (e = hidx_find(ix, key); e; e = hidx_next(e, key))
        if (!strcmp(e->key, key))
            return e->rec;
    return NULL;
}

static void hidx_clear(struct hidx *ix)
{
    for (size_t i = 0; i < ix->nb; i++) {
        struct hent *e = ix->b[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(ix->b);
    memset(ix, 0, sizeof(*ix));
}

/* ==== records ============================================================= */

enum entity {
    E_CONTACT, E_INVOICE, E_PAYMENT, E_CREDIT_NOTE, E_BANK_TXN, E_MANUAL_JOURNAL, E_BANK_TRANSFER
};
#define N_ENTITIES 7

struct contact {
    uint64_t seq;               /* creation order, for stable listing */
    char id[37];
    char *name;                 /* owned, never NULL */
    char *email;                /* owned, "" when none */
    int archived;               /* ContactStatus ARCHIVED */
    char *text;                 /* owned: the whole document, compact JSON */
    size_t len;
};

struct payment;
struct allocation;

/* What tells an invoice from a credit note: the two are one record type
 * (struct invoice) with the same life (lines, totals, contact, number,
 * status, payments), stored apart and named apart on the wire. */
struct doc_kind {
    enum entity ent;            /* E_INVOICE | E_CREDIT_NOTE */
    int store;                  /* index into xero.docs */
    int credit;                 /* 1 for credit notes */
    const char *envelope;       /* "Invoices" | "CreditNotes" */
    const char *id_key;         /* "InvoiceID" | "CreditNoteID" */
    const char *number_key;     /* "InvoiceNumber" | "CreditNoteNumber" */
    const char *word;           /* "Invoice" | "Credit Note": starts messages */
    const char *a_word;         /* "An invoice" | "A credit note" */
    const char *lword;          /* "invoice" | "credit note" */
    const char *types[3];       /* the receivable type first: it is auto-numbered */
    const char *number_prefix;  /* "INV-" | "CN-" */
};

static const struct doc_kind KIND_INVOICE = {
    .ent = E_INVOICE,
    .store = 0,
    .credit = 0,
    .envelope = "Invoices",
    .id_key = "InvoiceID",
    .number_key = "InvoiceNumber",
    .word = "Invoice",
    .a_word = "An invoice",
    .lword = "invoice",
    .types = {"ACCREC", "ACCPAY", NULL},
    .number_prefix = "INV-",
};
static const struct doc_kind KIND_CREDIT_NOTE = {
    .ent = E_CREDIT_NOTE,
    .store = 1,
    .credit = 1,
    .envelope = "CreditNotes",
    .id_key = "CreditNoteID",
    .number_key = "CreditNoteNumber",
    .word = "Credit Note",
    .a_word = "A credit note",
    .lword = "credit note",
    .types = {"ACCRECCREDIT", "ACCPAYCREDIT", NULL},
    .number_prefix = "CN-",
};

/* An invoice or a credit note (kind). For a credit note, `due` is its
 * RemainingCredit, `paid` what was refunded by payments and `credited` what
 * was allocated to invoices; for an invoice, `credited` is the AmountCredited
 * by credit notes. Always due = total - paid - credited. */
struct invoice {
    uint64_t seq;
    const struct doc_kind *kind;
    char id[37];
    char *number;               /* owned, "" when none (ACCPAY without one) */
    char *reference;            /* owned, "" when none */
    char type[16];              /* ACCREC | ACCPAY | ACCRECCREDIT | ACCPAYCREDIT */
    char status[12];            /* DRAFT SUBMITTED AUTHORISED PAID VOIDED DELETED */
    char currency[4];
    char contact_id[37];        /* index key, = contact->id */
    struct contact *contact;    /* borrowed: contacts live until reset */
    int64_t total, paid, credited, due;  /* minor units of currency */
    int64_t updated_ms;
    int64_t fully_paid_days;    /* days since the epoch, -1 until fully paid */
    struct payment **pays;      /* owned array of borrowed payments, oldest first */
    size_t n_pays, cap_pays;
    struct allocation **allocs; /* owned array of borrowed allocations, oldest first */
    size_t n_allocs, cap_allocs;
    char *head;                 /* owned: the members only an update changes, as
                                   compact JSON without the closing brace */
    size_t head_len;
};

/* Credit applied from a credit note to an invoice (both borrowed; they live
 * until reset, as the allocation does). */
struct allocation {
    char id[37];                /* AllocationID */
    struct invoice *credit_note;
    struct invoice *invoice;
    int64_t amount;             /* minor units of both documents' currency */
    int64_t date;               /* days since the epoch */
};

struct payment {
    uint64_t seq;
    char id[37];
    char *reference;            /* owned, "" when none */
    char invoice_id[37];        /* "" for a refund of a credit note */
    char *invoice_number;       /* owned */
    char credit_note_id[37];    /* "" for a payment of an invoice */
    char status[12];            /* AUTHORISED */
    char type[16];              /* ACCRECPAYMENT | ACCPAYPAYMENT | ARCREDITPAYMENT |
                                   APCREDITPAYMENT */
    char currency[4];
    int64_t amount;             /* minor units of currency */
    int64_t date;               /* days since the epoch */
    char *text;                 /* owned: the whole document (payments never change) */
    size_t len;
};

/* A spend or receive money transaction on a bank account (BankTransactions),
 * or one leg of a bank transfer (SPEND-TRANSFER / RECEIVE-TRANSFER, no
 * contact). Only its Status changes (AUTHORISED -> DELETED | VOIDED). */
struct bank_txn {
    uint64_t seq;
    char id[37];
    char type[24];              /* RECEIVE | SPEND | RECEIVE-TRANSFER | ... */
    char status[12];            /* AUTHORISED | DELETED | VOIDED */
    char *reference;            /* owned, "" when none */
    char currency[4];
    char account_code[32];      /* BankAccount.Code */
    int64_t total;              /* minor units of currency */
    int64_t date;               /* days since the epoch */
    struct contact *contact;    /* borrowed; NULL for a transfer's leg */
    int64_t updated_ms;
    char *head;                 /* owned: the document without Contact, Status and
                                   UpdatedDateUTC, open (no closing brace) */
    size_t head_len;
};

/* A manual journal (ManualJournals): lines against accounts that sum to
 * zero, in the base currency. Stored as text; only the Status is typed. */
struct journal {
    uint64_t seq;
    char id[37];
    char status[12];            /* DRAFT | POSTED | DELETED | VOIDED */
    char *narration;            /* owned, never NULL */
    int64_t date;               /* days since the epoch */
    char *head;                 /* owned: the document without Status, open */
    size_t head_len;
};

/* Money moved between two bank accounts (BankTransfers), in the base
 * currency; never changes. Its legs are two struct bank_txn. */
struct bank_transfer {
    uint64_t seq;
    char id[37];
    char *reference;            /* owned, "" when none */
    char from_code[32], to_code[32];
    int64_t amount;             /* minor units of the base currency */
    int64_t date;               /* days since the epoch */
    char *text;                 /* owned: the whole document, compact JSON */
    size_t len;
};

struct account {
    char id[37];
    char code[32];
    char name[128];
    char type[32];
    int payments_enabled;       /* EnablePaymentsToAccount */
};

/* ==== state =============================================================== */

struct token {
    char value[65];
    uint64_t expires_ns;
};

struct idem {
    char *key;                  /* owned "METHOD path\nkey" */
    int done;                   /* 0 while the first request runs */
    int status;
    char *body;                 /* owned reply body */
    size_t len;
    struct idem *newer;         /* FIFO for eviction */
};

/* A sliding window of admission times (ns), as a ring of `cap` slots. */
struct window {
    uint64_t *t;
    size_t cap, head, n;        /* oldest at head */
};

enum op {
    OP_TOKEN, OP_CONNECTIONS, OP_ORGANISATION, OP_ACCOUNTS,
    OP_CONTACTS_GET, OP_CONTACT_GET, OP_CONTACTS_PUT, OP_CONTACTS_POST,
    OP_INVOICES_GET, OP_INVOICE_GET, OP_INVOICES_PUT, OP_INVOICES_POST, OP_INVOICE_POST,
    OP_PAYMENTS_GET, OP_PAYMENT_GET, OP_PAYMENTS_PUT, OP_PAYMENTS_POST,
    OP_CREDIT_NOTES_GET, OP_CREDIT_NOTE_GET, OP_CREDIT_NOTES_PUT, OP_CREDIT_NOTES_POST,
    OP_CREDIT_NOTE_POST, OP_ALLOCATIONS_PUT, OP_PAYMENT_POST,
    OP_BANK_TXNS_GET, OP_BANK_TXN_GET, OP_BANK_TXNS_PUT, OP_BANK_TXNS_POST, OP_BANK_TXN_POST,
    OP_JOURNALS_GET, OP_JOURNAL_GET, OP_JOURNALS_PUT, OP_JOURNALS_POST,
    OP_TRANSFERS_GET, OP_TRANSFER_GET, OP_TRANSFERS_PUT, OP_TRANSFERS_POST,
    OP_STATS, OP_RESET, OP_FAIL_NEXT, OP__COUNT
};

struct xero;

struct route_arg {
    struct xero *x;
    enum op op;
};

struct xero {
    unsigned magic;             /* XERO_MAGIC while alive */
    /* --- configuration, immutable after create --- */
    char client_id[128];
    char client_secret[128];
    char tenant_id[37];
    char tenant_name[256];
    char base_currency[4];
    char (*currencies)[4];      /* owned; enabled currency codes */
    size_t n_currencies;
    struct account *accounts;   /* owned */
    size_t n_accounts;
    unsigned token_ttl_s;
    unsigned lim_minute, lim_day, lim_concurrent, lim_app_minute;  /* 0 = unlimited */
    size_t idem_max_entries, idem_max_bytes;
    int idem_store_errors;      /* also replay 4xx replies (default: 2xx only) */
    struct route_arg args[OP__COUNT];
    struct pb_http_route routes[48];

    /* --- guarded by `data` --- */
    pthread_mutex_t data;
    struct vec contacts, payments, allocations;
    struct hidx c_id, c_name, c_email;
    struct docs {               /* [0] invoices, [1] credit notes (doc_kind.store) */
        struct vec recs;
        struct hidx id, number, ref, contact;
        unsigned counter;       /* last auto INV-nnnn / CN-nnnn */
        uint64_t dup_refs;      /* records created with a Reference already taken */
    } docs[2];
    struct hidx p_id, p_ref, p_invoice, p_credit_note;
    struct vec bank_txns, journals, transfers;
    struct hidx bt_id, mj_id, btr_id;
    uint64_t seq;               /* last record seq */
    uint64_t dup_payment_refs;

    /* --- guarded by `gate` --- */
    pthread_mutex_t gate;
    pthread_cond_t idem_cond;
    struct hidx tokens;         /* value -> struct token */
    struct token *token_ring[MAX_TOKENS];
    size_t token_head, token_n;
    struct window w_minute, w_app;
    uint64_t day_start_ns;
    unsigned day_count;
    unsigned inflight;
    struct hidx idem_ix;
    struct idem *idem_oldest, *idem_newest;
    size_t idem_n, idem_bytes;
    uint64_t requests, responses[600], replays, idem_evictions, tokens_issued;
    uint64_t limited_minute, limited_day, limited_concurrent, limited_app;
    struct fail_next {          /* POST /_sandbox/fail_next: the next `count` calls of
                                   method + path answer `status` */
        char method[8];
        char path[160];         /* "/api.xro/2.0/BankTransactions" (no query) */
        int status;
        unsigned count;
        int after_commit;       /* 1: run the operation, then answer `status` (a lost reply) */
    } fail;
};

/* One API call in progress. */
struct call {
    struct xero *x;
    struct pb_http_request *req;
    struct pb_http_response *resp;
    int summarize;              /* summarizeErrors: 1 unless "false" */
    int unitdp4;                /* unitdp=4 */
    int64_t now_ms;
};

/* ==== time and text helpers =============================================== */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *xstrdup(const char *s)
{
    return strdup(s ? s : "");
}

/* Replace *slot (owned) with a copy of s; -1 when out of memory. */
static int set_str(char **slot, const char *s)
{
    char *c = xstrdup(s);
    if (!c)
        return -1;
    free(*slot);
    *slot = c;
    return 0;
}

static void copy_str(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src ? src : "");
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    int64_t era;
    unsigned doe, yoe, doy, mp;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)((int64_t)yoe + era * 400 + (*m <= 2));
}

static int days_in_month(int y, unsigned m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 ? 28 + leap : dm[m - 1];
}

/* "YYYY-MM-DD" (optionally followed by "T..."), or "/Date(ms[+zzzz])/". */
static int parse_date(const char *s, int64_t *days)
{
    int y;
    unsigned m, d;
    int n = 0;
    if (!strncmp(s, "/Date(", 6)) {
        char *end;
        long long ms = strtoll(s + 6, &end, 10);
        if (end == s + 6)
            return -1;
        *days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
        return 0;
    }
    if (sscanf(s, "%4d-%2u-%2u%n", &y, &m, &d, &n) != 3 || n != 10)
        return -1;
    if (s[10] != '\0' && s[10] != 'T')
        return -1;
    if (y < 1900 || y > 9999 || m < 1 || m > 12 || d < 1 || (int)d > days_in_month(y, m))
        return -1;
    *days = days_from_civil(y, m, d);
    return 0;
}

static json_t *msdate(int64_t ms)
{
    char buf[48];
    snprintf(buf, sizeof(buf), "/Date(%" PRId64 "+0000)/", ms);
    return json_string(buf);
}

static json_t *date_string(int64_t days)
{
    char buf[32];
    int y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    snprintf(buf, sizeof(buf), "%04d-%02u-%02uT00:00:00", y, m, d);
    return json_string(buf);
}

static int is_uuid_like(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return i == 36;
}

/* A version-4 UUID for a new record. Xero's ids only have to be unique
 * here, not unpredictable: a per-thread splitmix64 stream seeded once from
 * the system's randomness (RAND_bytes per id was 7% of the emulator's CPU
 * in the end-to-end bench, three ids per posted payment). */
static void new_uuid(char out[37])
{
    static _Thread_local uint64_t state;
    static _Thread_local int seeded;
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    size_t o = 0;
    if (!seeded) {
        if (pb_random_bytes(&state, sizeof(state)) != PB_OK)
            state = (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)&state;
        seeded = 1;
    }
    for (int half = 0; half < 2; half++) {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        for (int i = 0; i < 8; i++)
            b[half * 8 + i] = (unsigned char)(z >> (8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 9562) */
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0x0f];
    }
    out[o] = '\0';
}

/* ==== exact decimals ====================================================== */

enum { DEC_OK = 0, DEC_SYNTAX = -1, DEC_RANGE = -2, DEC_INEXACT = -3 };

/* Parse -?digits(.digits)?([eE][+-]?digits)? into round(value * 10^scale).
 * With `round` the dropped digits round half to even; without, any non-zero
 * dropped digit is DEC_INEXACT. */
static int dec_parse(const char *s, int scale, int round, int64_t *out)
{
    char dig[48];
    int nd = 0, frac = 0, seen_point = 0, any = 0, neg = 0, exp10 = 0, k, keep, i;
    int64_t v = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    for (; *s; s++) {
        if (*s >= '0' && *s <= '9') {
            any = 1;
            if (nd == 0 && *s == '0') {
                if (seen_point)
                    frac++;
                continue;           /* leading zero */
            }
            if (nd >= (int)sizeof(dig))
                return DEC_RANGE;
            dig[nd++] = *s;
            if (seen_point)
                frac++;
        } else if (*s == '.' && !seen_point) {
            seen_point = 1;
        } else {
            break;
        }
    }
    if (!any)
        return DEC_SYNTAX;
    if (*s == 'e' || *s == 'E') {
        char *end;
        long e = strtol(s + 1, &end, 10);
        if (end == s + 1 || *end || e < -60 || e > 60)
            return DEC_SYNTAX;
        exp10 = (int)e;
    } else if (*s) {
        return DEC_SYNTAX;
    }
    /* value = dig * 10^(exp10 - frac); we want dig * 10^k */
    k = exp10 - frac + scale;
    keep = k >= 0 ? nd : nd + k;
    if (keep < 0)
        keep = 0;
    for (i = 0; i < keep; i++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, dig[i] - '0', &v))
            return DEC_RANGE;
    for (i = 0; i < k; i++)
        if (__builtin_mul_overflow(v, 10, &v))
            return DEC_RANGE;
    if (keep < nd) {
        int first = dig[keep] - '0', rest = 0, up;
        for (i = keep + 1; i < nd; i++)
            rest |= dig[i] != '0';
        /* digits dropped entirely (keep == 0 with k < -nd) are below one half */
        if (nd + k < 0)
            first = 0, rest = 1;
        if (!round && (first || rest))
            return DEC_INEXACT;
        up = first > 5 || (first == 5 && (rest || (v & 1)));
        if (up && __builtin_add_overflow(v, 1, &v))
            return DEC_RANGE;
    }
    *out = neg ? -v : v;
    return DEC_OK;
}

/* A JSON number or decimal string at `scale` places (see dec_parse). */
static int json_dec(const json_t *j, int scale, int round, int64_t *out)
{
    char buf[64];
    if (json_is_integer(j))
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(j));
    else if (json_is_real(j))
        snprintf(buf, sizeof(buf), "%.15g", json_real_value(j));
    else if (json_is_string(j) && json_string_length(j) < sizeof(buf))
        copy_str(buf, sizeof(buf), json_string_value(j));
    else
        return DEC_SYNTAX;
    return dec_parse(buf, scale, round, out);
}

/* v / 10^places rounded half to even. */
static int64_t round_div_pow10(int64_t v, int places)
{
    int64_t p = 1, q, r;
    for (int i = 0; i < places; i++)
        p *= 10;
    q = v / p;
    r = v % p;
    if (r < 0)
        r = -r;
    if (r * 2 > p || (r * 2 == p && (q & 1)))
        q += v < 0 ? -1 : 1;
    return q;
}

/* Text of v / 10^scale with at least min_frac and at most scale decimals. */
static void dec_format(int64_t v, int scale, int min_frac, char *buf, size_t len)
{
    uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, p = 1;
    char frac[24];
    int nf = scale;
    for (int i = 0; i < scale; i++)
        p *= 10;
    snprintf(frac, sizeof(frac), "%0*" PRIu64, scale, a % p);
    while (nf > min_frac && frac[nf - 1] == '0')
        nf--;
    if (nf > 0)
        snprintf(buf, len, "%s%" PRIu64 ".%.*s", v < 0 ? "-" : "", a / p, nf, frac);
    else
        snprintf(buf, len, "%s%" PRIu64, v < 0 ? "-" : "", a / p);
}

static json_t *money_json(int64_t minor, const char *currency)
{
    char buf[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, buf, sizeof(buf), NULL) != PB_OK)
        return json_null();
    return json_string(buf);
}

/* ==== replies ============================================================= */

static void reply_json(struct pb_http_response *resp, int status, json_t *body)
{
    char *text = body ? pb_json_dumps_decimal(body, DECIMAL_KEYS, JSON_REAL_PRECISION(15)) : NULL;
    json_decref(body);
    if (!text) {
        pb_http_response_error(resp, 500, "internal",
                               "could not serialise the reply (out of memory or too large)");
        return;
    }
    pb_http_response_body_take(resp, status, text, strlen(text));
}

/* {"Type":null,"Title":..,"Status":..,"Detail":..}: the API gateway's errors. */
static void reply_problem(struct pb_http_response *resp, int status, const char *title,
                          const char *detail)
{
    reply_json(resp, status,
               json_pack("{s:n,s:s,s:i,s:s}", "Type", "Title", title, "Status", status, "Detail",
                         detail));
}

/* {"ErrorNumber":n,"Type":..,"Message":..}: the API's own exceptions. */
static void reply_exception(struct pb_http_response *resp, int status, int number,
                            const char *type, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void reply_exception(struct pb_http_response *resp, int status, int number,
                            const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_json(resp, status,
               json_pack("{s:i,s:s,s:s}", "ErrorNumber", number, "Type", type, "Message", msg));
}

static void reply_not_found(struct pb_http_response *resp)
{
    reply_problem(resp, 404, "NotFound", "The resource you're looking for cannot be found");
}

static json_t *envelope(const char *key, json_t *items)
{
    char id[37];
    json_t *env;
    new_uuid(id);
    env = json_pack("{s:s,s:s,s:s,s:o}", "Id", id, "Status", "OK", "ProviderName",
                    PROVIDER_NAME, "DateTimeUTC", msdate(now_ms()));
    if (env && items)
        json_object_set_new(env, key, items);
    else
        json_decref(items);
    return env;
}

/* Largest reply built as text; a bigger one is refused (ask for pages). */
#define TEXT_REPLY_MAX ((size_t)1 << 30)

/* A growing text buffer; after a failure every append is a no-op. */
struct outbuf {
    char *p;
    size_t len, cap;
    int failed;
};

static void out_add(struct outbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n > TEXT_REPLY_MAX || b->len > TEXT_REPLY_MAX) { /* also bounds n for the compiler */
        b->failed = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *np;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > TEXT_REPLY_MAX || !(np = realloc(b->p, cap))) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void out_str(struct outbuf *b, const char *s)
{
    out_add(b, s, strlen(s));
}

/* A JSON string literal, escaped as jansson does (UTF-8 passes through). */
static void out_jstr(struct outbuf *b, const char *s)
{
    const char *run = s;
    out_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[8];
        if (ch != '"' && ch != '\\' && ch >= 0x20)
            continue;
        out_add(b, run, (size_t)(s - run));
        if (ch == '"' || ch == '\\')
            snprintf(esc, sizeof(esc), "\\%c", ch);
        else if (ch == '\n')
            snprintf(esc, sizeof(esc), "\\n");
        else if (ch == '\r')
            snprintf(esc, sizeof(esc), "\\r");
        else if (ch == '\t')
            snprintf(esc, sizeof(esc), "\\t");
        else
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
        out_str(b, esc);
        run = s + 1;
    }
    out_add(b, run, (size_t)(s - run));
    out_add(b, "\"", 1);
}

static void out_msdate(struct outbuf *b, int64_t ms)
{
    char buf[48];
    snprintf(buf, sizeof(buf), "\"/Date(%" PRId64 "+0000)/\"", ms);
    out_str(b, buf);
}

/* An amount as a bare JSON number with the currency's decimals. */
static void out_money(struct outbuf *b, int64_t minor, const char *currency)
{
    char buf[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, buf, sizeof(buf), NULL) != PB_OK)
        snprintf(buf, sizeof(buf), "null");
    out_str(b, buf);
}

/* Compact text of a doc with exact decimals; `open` drops the closing brace. */
static char *doc_text(json_t *doc, int open, size_t *len)
{
    char *t = doc ? pb_json_dumps_decimal(doc, DECIMAL_KEYS, JSON_REAL_PRECISION(15)) : NULL;
    if (!t)
        return NULL;
    *len = strlen(t);
    if (open && *len > 0)
        t[--*len] = '\0';
    return t;
}

/* {"Id":..,"Status":"OK","ProviderName":..,"DateTimeUTC":..,"key":[ */
static void envelope_open(struct outbuf *b, const char *key)
{
    char id[37];
    new_uuid(id);
    out_str(b, "{\"Id\":\"");
    out_str(b, id);
    out_str(b, "\",\"Status\":\"OK\",\"ProviderName\":\"" PROVIDER_NAME "\",\"DateTimeUTC\":");
    out_msdate(b, now_ms());
    out_str(b, ",\"");
    out_str(b, key);
    out_str(b, "\":[");
}

/* Send a finished text buffer (taken), or a 500 when it failed. */
static void reply_text(struct pb_http_response *resp, struct outbuf *b)
{
    if (b->failed || !b->p) {
        free(b->p);
        reply_problem(resp, 500, "InternalError",
                      "the reply is too large or the sandbox is out of memory; ask by page");
        return;
    }
    pb_http_response_body_take(resp, 200, b->p, b->len);
    b->p = NULL;
}

/* Append {"Message":msg} to *errs (created on first use). */
static void add_error(json_t **errs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_error(json_t **errs, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!*errs)
        *errs = json_array();
    if (*errs)
        json_array_append_new(*errs, json_pack("{s:s}", "Message", msg));
}

/* The element as sent, marked as failed. Takes a reference to `src`. */
static json_t *error_element(json_t *src, json_t *errs, const char *has_key)
{
    json_t *e = json_is_object(src) ? json_copy(src) : json_object();
    if (!e)
        return NULL;
    json_object_set_new(e, "ValidationErrors", errs ? json_incref(errs) : json_array());
    json_object_set_new(e, "StatusAttributeString", json_string("ERROR"));
    json_object_set_new(e, has_key, json_true());
    return e;
}

/* ==== configuration ======================================================= */

static const struct account DEFAULT_ACCOUNTS[] = {
    {"", "090", "Business Bank Account", "BANK", 0}, {"", "091", "Opayo Clearing", "BANK", 0},
    {"", "200", "Sales", "REVENUE", 0},             {"", "260", "Other Revenue", "REVENUE", 0},
    {"", "404", "Bank Fees", "EXPENSE", 0},
};

static const char *const SETTINGS_KEYS[] = {
    "client_id", "client_secret", "tenant_id", "tenant_name", "base_currency", "currencies",
    "token_ttl_s", "accounts", "limits", "idempotency_max_entries", "idempotency_max_bytes",
    "idempotency_store_errors",
    /* read by the framework */
    "port", "faults", "enabled", NULL};

static enum pb_rc conf_string(json_t *s, const char *key, char *dst, size_t len,
                              struct pb_err *err)
{
    json_t *v = json_object_get(s, key);
    if (!v)
        return PB_OK;
    if (!json_is_string(v) || !json_string_length(v) || json_string_length(v) >= len)
        return pb_err_set(err, PB_ERR_CONFIG, "xero.%s must be a non-empty string of at most %zu "
                          "characters", key, len - 1);
    copy_str(dst, len, json_string_value(v));
    return PB_OK;
}

static enum pb_rc conf_uint(json_t *s, const char *key, unsigned *dst, unsigned max,
                            struct pb_err *err)
{
    json_t *v = json_object_get(s, key);
    if (!v || json_is_null(v))
        return PB_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
        return pb_err_set(err, PB_ERR_CONFIG, "%s must be an integer from 0 to %u", key, max);
    *dst = (unsigned)json_integer_value(v);
    return PB_OK;
}

static int currency_enabled(const struct xero *x, const char *code)
{
    for (size_t i = 0; i < x->n_currencies; i++)
        if (!strcmp(x->currencies[i], code))
            return 1;
    return 0;
}

static const struct account *account_by_code(const struct xero *x, const char *code)
{
    for (size_t i = 0; i < x->n_accounts; i++)
        if (!strcasecmp(x->accounts[i].code, code))
            return &x->accounts[i];
    return NULL;
}

static const struct account *account_by_id(const struct xero *x, const char *id)
{
    for (size_t i = 0; i < x->n_accounts; i++)
        if (!strcasecmp(x->accounts[i].id, id))
            return &x->accounts[i];
    return NULL;
}

static enum pb_rc conf_accounts(struct xero *x, json_t *v, struct pb_err *err)
{
    size_t i, n = v ? json_array_size(v) : sizeof(DEFAULT_ACCOUNTS) / sizeof(DEFAULT_ACCOUNTS[0]);
    if (v && (!json_is_array(v) || n == 0))
        return pb_err_set(err, PB_ERR_CONFIG, "xero.accounts must be a non-empty array");
    x->accounts = calloc(n, sizeof(*x->accounts));
    if (!x->accounts)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    x->n_accounts = n;
    for (i = 0; i < n; i++) {
        struct account *a = &x->accounts[i];
        if (!v) {
            *a = DEFAULT_ACCOUNTS[i];
        } else {
            json_t *e = json_array_get(v, i);
            const char *code = json_string_value(json_object_get(e, "Code"));
            const char *name = json_string_value(json_object_get(e, "Name"));
            const char *type = json_string_value(json_object_get(e, "Type"));
            const char *id = json_string_value(json_object_get(e, "AccountID"));
            if (!code || !*code || !type || !*type)
                return pb_err_set(err, PB_ERR_CONFIG,
                                  "xero.accounts[%zu] needs string Code and Type", i);
            if (id && !is_uuid_like(id))
                return pb_err_set(err, PB_ERR_CONFIG, "xero.accounts[%zu].AccountID is not a "
                                  "GUID", i);
            copy_str(a->code, sizeof(a->code), code);
            copy_str(a->name, sizeof(a->name), name ? name : code);
            copy_str(a->type, sizeof(a->type), type);
            copy_str(a->id, sizeof(a->id), id);
            a->payments_enabled = json_is_true(json_object_get(e, "EnablePaymentsToAccount"));
        }
        if (!a->id[0])
            new_uuid(a->id);
    }
    return PB_OK;
}

static enum pb_rc conf_currencies(struct xero *x, json_t *v, struct pb_err *err)
{
    static const char *const def[] = {"GBP", "EUR", "USD", "JPY"};
    size_t n = v ? json_array_size(v) : 4;
    if (v && (!json_is_array(v) || n == 0))
        return pb_err_set(err, PB_ERR_CONFIG, "xero.currencies must be a non-empty array");
    x->currencies = calloc(n, sizeof(*x->currencies));
    if (!x->currencies)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    x->n_currencies = n;
    for (size_t i = 0; i < n; i++) {
        const char *c = v ? json_string_value(json_array_get(v, i)) : def[i];
        if (!c || !pb_currency_valid(c))
            return pb_err_set(err, PB_ERR_CONFIG, "xero.currencies[%zu] is not an ISO 4217 "
                              "code", i);
        copy_str(x->currencies[i], 4, c);
    }
    return PB_OK;
}

static enum pb_rc conf_limits(struct xero *x, json_t *v, struct pb_err *err)
{
    enum pb_rc rc;
    x->lim_minute = 60;
    x->lim_day = 5000;
    x->lim_concurrent = 5;
    x->lim_app_minute = 10000;
    if (!v)
        return PB_OK;
    if (json_is_false(v) || json_is_null(v)) {
        x->lim_minute = x->lim_day = x->lim_concurrent = x->lim_app_minute = 0;
        return PB_OK;
    }
    if (!json_is_object(v))
        return pb_err_set(err, PB_ERR_CONFIG, "xero.limits must be an object or false");
    /* A key that is absent means unlimited, as the brief of the settings says. */
    x->lim_minute = x->lim_day = x->lim_concurrent = x->lim_app_minute = 0;
    if ((rc = conf_uint(v, "per_minute", &x->lim_minute, 10000000, err)) ||
        (rc = conf_uint(v, "per_day", &x->lim_day, 1000000000, err)) ||
        (rc = conf_uint(v, "concurrent", &x->lim_concurrent, 100000, err)) ||
        (rc = conf_uint(v, "app_per_minute", &x->lim_app_minute, 10000000, err)))
        return rc;
    {
        const char *key;
        json_t *val;
        json_object_foreach(v, key, val)
        {
            if (strcmp(key, "per_minute") && strcmp(key, "per_day") &&
                strcmp(key, "concurrent") && strcmp(key, "app_per_minute"))
                return pb_err_set(err, PB_ERR_CONFIG,
                                  "unknown key xero.limits.%s (known: per_minute, per_day, "
                                  "concurrent, app_per_minute)", key);
        }
    }
    return PB_OK;
}

static int window_init(struct window *w, unsigned cap)
{
    memset(w, 0, sizeof(*w));
    if (!cap)
        return 0;
    w->t = calloc(cap, sizeof(*w->t));
    w->cap = cap;
    return w->t ? 0 : -1;
}

/* ==== state life ========================================================== */

static void clear_data(struct xero *x)
{
    size_t i;
    for (i = 0; i < x->contacts.n; i++) {
        struct contact *c = x->contacts.v[i];
        free(c->text);
        free(c->name);
        free(c->email);
        free(c);
    }
    for (int k = 0; k < 2; k++) {
        struct docs *d = &x->docs[k];
        for (i = 0; i < d->recs.n; i++) {
            struct invoice *inv = d->recs.v[i];
            free(inv->head);
            free(inv->pays);
            free(inv->allocs);
            free(inv->number);
            free(inv->reference);
            free(inv);
        }
        d->recs.n = 0;
        hidx_clear(&d->id);
        hidx_clear(&d->number);
        hidx_clear(&d->ref);
        hidx_clear(&d->contact);
        d->counter = 0;
        d->dup_refs = 0;
    }
    for (i = 0; i < x->allocations.n; i++)
        free(x->allocations.v[i]);
    for (i = 0; i < x->payments.n; i++) {
        struct payment *p = x->payments.v[i];
        free(p->text);
        free(p->reference);
        free(p->invoice_number);
        free(p);
    }
    for (i = 0; i < x->bank_txns.n; i++) {
        struct bank_txn *t = x->bank_txns.v[i];
        free(t->reference);
        free(t->head);
        free(t);
    }
    for (i = 0; i < x->journals.n; i++) {
        struct journal *j = x->journals.v[i];
        free(j->narration);
        free(j->head);
        free(j);
    }
    for (i = 0; i < x->transfers.n; i++) {
        struct bank_transfer *t = x->transfers.v[i];
        free(t->reference);
        free(t->text);
        free(t);
    }
    x->bank_txns.n = x->journals.n = x->transfers.n = 0;
    hidx_clear(&x->bt_id);
    hidx_clear(&x->mj_id);
    hidx_clear(&x->btr_id);
    x->contacts.n = x->payments.n = x->allocations.n = 0;
    hidx_clear(&x->c_id);
    hidx_clear(&x->c_name);
    hidx_clear(&x->c_email);
    hidx_clear(&x->p_id);
    hidx_clear(&x->p_ref);
    hidx_clear(&x->p_invoice);
    hidx_clear(&x->p_credit_note);
    x->dup_payment_refs = 0;
}

/* Forget every stored reply. With `all` 0, entries of requests still running
 * stay (their owner finishes them with idem_end); destroy passes 1. */
static void clear_idempotency(struct xero *x, int all)
{
    struct idem *e = x->idem_oldest, *next, *head = NULL, *tail = NULL;
    x->idem_n = x->idem_bytes = 0;
    for (; e; e = next) {
        next = e->newer;
        e->newer = NULL;
        if (!e->done && !all) {
            if (tail)
                tail->newer = e;
            else
                head = e;
            tail = e;
            x->idem_n++;
            continue;
        }
        hidx_del(&x->idem_ix, e->key, e);
        free(e->key);
        free(e->body);
        free(e);
    }
    x->idem_oldest = head;
    x->idem_newest = tail;
}

static void xero_destroy(void *state)
{
    struct xero *x = state;
    if (!x || x->magic != XERO_MAGIC)
        return;
    x->magic = 0;
    clear_data(x);
    free(x->contacts.v);
    free(x->docs[0].recs.v);
    free(x->docs[1].recs.v);
    free(x->payments.v);
    free(x->allocations.v);
    free(x->bank_txns.v);
    free(x->journals.v);
    free(x->transfers.v);
    clear_idempotency(x, 1);
    hidx_clear(&x->idem_ix);
    for (size_t i = 0; i < x->token_n; i++)
        free(x->token_ring[(x->token_head + i) % MAX_TOKENS]);
    hidx_clear(&x->tokens);
    free(x->w_minute.t);
    free(x->w_app.t);
    free(x->currencies);
    free(x->accounts);
    pthread_mutex_destroy(&x->data);
    pthread_mutex_destroy(&x->gate);
    pthread_cond_destroy(&x->idem_cond);
    free(x);
}

static void build_routes(struct xero *x);

static void *xero_create(json_t *s, struct pb_err *err)
{
    struct xero *x = calloc(1, sizeof(*x));
    const char *key;
    json_t *v;
    unsigned idem_entries = 200000, idem_mb = 512;
    enum pb_rc rc = PB_OK;

    if (!x) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&x->data, NULL);
    pthread_mutex_init(&x->gate, NULL);
    pthread_cond_init(&x->idem_cond, NULL);
    x->magic = XERO_MAGIC;
    copy_str(x->client_id, sizeof(x->client_id), "sandbox-client");
    copy_str(x->client_secret, sizeof(x->client_secret), "sandbox-secret");
    copy_str(x->tenant_id, sizeof(x->tenant_id), DEFAULT_TENANT_ID);
    copy_str(x->tenant_name, sizeof(x->tenant_name), "Demo Company (UK)");
    copy_str(x->base_currency, sizeof(x->base_currency), "GBP");
    x->token_ttl_s = 1800;

    if (s && !json_is_object(s)) {
        pb_err_set(err, PB_ERR_CONFIG, "xero settings must be an object");
        goto fail;
    }
    json_object_foreach(s, key, v)
    {
        int known = 0;
        for (size_t i = 0; SETTINGS_KEYS[i]; i++)
            known |= !strcmp(key, SETTINGS_KEYS[i]);
        if (!known) {
            pb_err_set(err, PB_ERR_CONFIG, "unknown setting xero.%s", key);
            goto fail;
        }
    }
    if ((rc = conf_string(s, "client_id", x->client_id, sizeof(x->client_id), err)) ||
        (rc = conf_string(s, "client_secret", x->client_secret, sizeof(x->client_secret), err)) ||
        (rc = conf_string(s, "tenant_id", x->tenant_id, sizeof(x->tenant_id), err)) ||
        (rc = conf_string(s, "tenant_name", x->tenant_name, sizeof(x->tenant_name), err)) ||
        (rc = conf_string(s, "base_currency", x->base_currency, sizeof(x->base_currency), err)) ||
        (rc = conf_uint(s, "token_ttl_s", &x->token_ttl_s, 31 * 86400, err)) ||
        (rc = conf_uint(s, "idempotency_max_entries", &idem_entries, 100000000, err)) ||
        (rc = conf_uint(s, "idempotency_max_bytes", &idem_mb, 0xffffffffu, err)))
        goto fail;
    /* idempotency_max_bytes is given in bytes; the default is 512 MiB. */
    x->idem_max_entries = idem_entries;
    {
        json_t *se = json_object_get(s, "idempotency_store_errors");
        if (se && !json_is_boolean(se)) {
            pb_err_set(err, PB_ERR_CONFIG, "xero.idempotency_store_errors must be true or false");
            goto fail;
        }
        x->idem_store_errors = json_is_true(se);
    }
    x->idem_max_bytes = json_object_get(s, "idempotency_max_bytes") ? (size_t)idem_mb
                                                                     : (size_t)512 << 20;
    if (!is_uuid_like(x->tenant_id)) {
        pb_err_set(err, PB_ERR_CONFIG, "xero.tenant_id must be a GUID");
        goto fail;
    }
    if ((rc = conf_currencies(x, json_object_get(s, "currencies"), err)) ||
        (rc = conf_accounts(x, json_object_get(s, "accounts"), err)) ||
        (rc = conf_limits(x, json_object_get(s, "limits"), err)))
        goto fail;
    if (!pb_currency_valid(x->base_currency) || !currency_enabled(x, x->base_currency)) {
        pb_err_set(err, PB_ERR_CONFIG, "xero.base_currency %s must be a valid code listed in "
                   "xero.currencies", x->base_currency);
        goto fail;
    }
    if (x->token_ttl_s == 0) {
        pb_err_set(err, PB_ERR_CONFIG, "xero.token_ttl_s must be at least 1");
        goto fail;
    }
    if (window_init(&x->w_minute, x->lim_minute) || window_init(&x->w_app, x->lim_app_minute)) {
        pb_err_set(err, PB_ERR_NOMEM, "out of memory for the rate-limit windows");
        goto fail;
    }
    build_routes(x);
    return x;
fail:
    xero_destroy(x);
    return NULL;
}

/* ==== tokens ============================================================== */

/* Add a token; evicts the oldest beyond MAX_TOKENS. Caller holds gate. */
static struct token *token_add(struct xero *x)
{
    struct token *t = calloc(1, sizeof(*t));
    unsigned char raw[32];
    if (!t || pb_random_bytes(raw, sizeof(raw)) ||
        pb_hex_encode(raw, sizeof(raw), t->value, sizeof(t->value))) {
        free(t);
        return NULL;
    }
    t->expires_ns = pb_monotonic_ns() + (uint64_t)x->token_ttl_s * NS_PER_S;
    if (x->token_n == MAX_TOKENS) {
        struct token *old = x->token_ring[x->token_head];
        hidx_del(&x->tokens, old->value, old);
        free(old);
        x->token_head = (x->token_head + 1) % MAX_TOKENS;
        x->token_n--;
    }
    if (hidx_add(&x->tokens, t->value, t)) {
        free(t);
        return NULL;
    }
    x->token_ring[(x->token_head + x->token_n) % MAX_TOKENS] = t;
    x->token_n++;
    x->tokens_issued++;
    return t;
}

/* 0 valid, 1 unknown, 2 expired. */
static int token_check(struct xero *x, const struct pb_http_request *req)
{
    const char *auth = pb_http_header(req, "Authorization");
    struct token *t;
    int rc;
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return 1;
    auth += 7;
    while (*auth == ' ')
        auth++;
    pthread_mutex_lock(&x->gate);
    t = hidx_get_exact(&x->tokens, auth);
    rc = !t ? 1 : (t->expires_ns <= pb_monotonic_ns() ? 2 : 0);
    pthread_mutex_unlock(&x->gate);
    return rc;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Value of `name` in an application/x-www-form-urlencoded body, decoded into
 * out. Returns 1 when found. */
static int form_get(const char *body, size_t len, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name), i = 0;
    while (i < len) {
        size_t end = i, o = 0;
        while (end < len && body[end] != '&')
            end++;
        if (end - i > nlen && !strncmp(body + i, name, nlen) && body[i + nlen] == '=') {
            for (size_t k = i + nlen + 1; k < end && o + 1 < outlen; k++) {
                int c = (unsigned char)body[k];
                if (c == '+')
                    c = ' ';
                else if (c == '%' && k + 2 < end + 1 && hexval(body[k + 1]) >= 0 &&
                         hexval(body[k + 2]) >= 0) {
                    c = hexval(body[k + 1]) * 16 + hexval(body[k + 2]);
                    k += 2;
                }
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

static int str_ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    return la == lb && pb_ct_equal(a, b, la);
}

static void op_token(struct call *c)
{
    struct xero *x = c->x;
    const struct pb_http_request *req = c->req;
    const char *auth = pb_http_header(req, "Authorization");
    char grant[64] = "", scope[512] = "", id[256] = "", secret[256] = "";
    struct token *t;
    json_t *body;
    int have_basic = 0;

    if (auth && !strncasecmp(auth, "Basic ", 6)) {
        unsigned char *dec = NULL;
        size_t dlen = 0;
        const char *b64 = auth + 6;
        while (*b64 == ' ')
            b64++;
        if (pb_base64_decode(b64, strlen(b64), &dec, &dlen, NULL) == PB_OK) {
            char *colon = memchr(dec, ':', dlen);
            if (colon) {
                *colon = '\0';
                copy_str(id, sizeof(id), (char *)dec);
                copy_str(secret, sizeof(secret), colon + 1);
                have_basic = 1;
            }
            free(dec);
        }
    }
    if (!have_basic) {
        form_get(req->body, req->body_len, "client_id", id, sizeof(id));
        form_get(req->body, req->body_len, "client_secret", secret, sizeof(secret));
    }
    form_get(req->body, req->body_len, "grant_type", grant, sizeof(grant));
    form_get(req->body, req->body_len, "scope", scope, sizeof(scope));
    if (!str_ct_equal(id, x->client_id) || !str_ct_equal(secret, x->client_secret)) {
        reply_json(c->resp, 400, json_pack("{s:s}", "error", "invalid_client"));
        return;
    }
    if (strcmp(grant, "client_credentials") != 0) {
        reply_json(c->resp, 400, json_pack("{s:s}", "error", "unsupported_grant_type"));
        return;
    }
    pthread_mutex_lock(&x->gate);
    t = token_add(x);
    body = t ? json_pack("{s:s,s:i,s:s,s:s}", "access_token", t->value, "expires_in",
                         (int)x->token_ttl_s, "token_type", "Bearer", "scope",
                         scope[0] ? scope
                                  : "accounting.transactions accounting.contacts "
                                    "accounting.settings")
             : NULL;
    pthread_mutex_unlock(&x->gate);
    if (!body) {
        reply_problem(c->resp, 500, "InternalError", "could not issue a token");
        return;
    }
    pb_http_response_header(c->resp, "Cache-Control", "no-store");
    reply_json(c->resp, 200, body);
}

static void reply_unauthorized(struct pb_http_response *resp, int why)
{
    pb_http_response_header(resp, "WWW-Authenticate",
                            why == 2 ? "Bearer error=\"invalid_token\", "
                                       "error_description=\"TokenExpired: token expired\""
                                     : "Bearer error=\"invalid_token\"");
    reply_problem(resp, 401, "Unauthorized",
                  why == 2 ? "TokenExpired" : "AuthenticationUnsuccessful");
}

static void op_connections(struct call *c)
{
    struct xero *x = c->x;
    int why = token_check(x, c->req);
    char created[48];
    time_t t = time(NULL);
    struct tm tm;
    if (why) {
        reply_unauthorized(c->resp, why);
        return;
    }
    gmtime_r(&t, &tm);
    strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%S.0000000", &tm);
    reply_json(c->resp, 200,
               json_pack("[{s:s,s:s,s:s,s:s,s:s,s:s,s:s}]", "id", CONNECTION_ID, "authEventId",
                         CONNECTION_ID, "tenantId", x->tenant_id, "tenantType", "ORGANISATION",
                         "tenantName", x->tenant_name, "createdDateUtc", created,
                         "updatedDateUtc", created));
}

/* ==== rate limits ========================================================= */

/* Drop admissions older than a minute. */
static void window_prune(struct window *w, uint64_t now)
{
    while (w->n && w->t[w->head] + 60 * NS_PER_S <= now) {
        w->head = (w->head + 1) % w->cap;
        w->n--;
    }
}

static void window_push(struct window *w, uint64_t now)
{
    w->t[(w->head + w->n) % w->cap] = now;
    w->n++;
}

static unsigned secs_until(uint64_t when, uint64_t now)
{
    uint64_t d = when > now ? when - now : 0;
    unsigned s = (unsigned)((d + NS_PER_S - 1) / NS_PER_S);
    return s ? s : 1;
}

struct admission {
    int admitted;               /* 1: counted, inflight held */
    const char *problem;        /* when refused: minute, day, concurrent, appminute */
    unsigned retry_after;
    long min_left, day_left, app_left;  /* -1 = unlimited */
};

/* Admit one call against the tenant's and the app's limits (gate held). With
 * `consume` 0 only fill the remaining counts. */
static void admit(struct xero *x, struct admission *a, int consume)
{
    uint64_t now = pb_monotonic_ns();
    memset(a, 0, sizeof(*a));
    if (x->lim_minute)
        window_prune(&x->w_minute, now);
    if (x->lim_app_minute)
        window_prune(&x->w_app, now);
    if (x->lim_day && (x->day_start_ns == 0 || now - x->day_start_ns >= 86400ull * NS_PER_S)) {
        x->day_start_ns = now;
        x->day_count = 0;
    }
    if (consume) {
        if (x->lim_concurrent && x->inflight >= x->lim_concurrent) {
            a->problem = "concurrent";
            a->retry_after = 1;
            x->limited_concurrent++;
        } else if (x->lim_day && x->day_count >= x->lim_day) {
            a->problem = "day";
            a->retry_after = secs_until(x->day_start_ns + 86400ull * NS_PER_S, now);
            x->limited_day++;
        } else if (x->lim_minute && x->w_minute.n >= x->lim_minute) {
            a->problem = "minute";
            a->retry_after = secs_until(x->w_minute.t[x->w_minute.head] + 60 * NS_PER_S, now);
            x->limited_minute++;
        } else if (x->lim_app_minute && x->w_app.n >= x->lim_app_minute) {
            a->problem = "appminute";
            a->retry_after = secs_until(x->w_app.t[x->w_app.head] + 60 * NS_PER_S, now);
            x->limited_app++;
        } else {
            a->admitted = 1;
            x->inflight++;
            if (x->lim_minute)
                window_push(&x->w_minute, now);
            if (x->lim_app_minute)
                window_push(&x->w_app, now);
            x->day_count++;
        }
    }
    a->min_left = x->lim_minute ? (long)(x->lim_minute - x->w_minute.n) : -1;
    a->app_left = x->lim_app_minute ? (long)(x->lim_app_minute - x->w_app.n) : -1;
    a->day_left = x->lim_day ? (long)(x->lim_day - x->day_count) : -1;
}

/* Every API reply carries the three headers; an unlimited window reports
 * UNLIMITED_REMAINING so that clients parsing them always find a number. */
#define UNLIMITED_REMAINING 1000000L

static void limit_headers(struct pb_http_response *resp, const struct admission *a)
{
    static const char *const names[] = {"X-MinLimit-Remaining", "X-DayLimit-Remaining",
                                        "X-AppMinLimit-Remaining"};
    long left[] = {a->min_left, a->day_left, a->app_left};
    char buf[24];
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof(buf), "%ld", left[i] >= 0 ? left[i] : UNLIMITED_REMAINING);
        pb_http_response_header(resp, names[i], buf);
    }
}

/* ==== idempotency ========================================================= */

static void idem_free(struct idem *e)
{
    free(e->key);
    free(e->body);
    free(e);
}

static void idem_unlink(struct xero *x, struct idem *e)
{
    struct idem **pp = &x->idem_oldest, *prev = NULL;
    for (; *pp && *pp != e; pp = &(*pp)->newer)
        prev = *pp;
    if (!*pp)
        return;
    *pp = e->newer;
    if (x->idem_newest == e)
        x->idem_newest = prev;
    hidx_del(&x->idem_ix, e->key, e);
    x->idem_n--;
    x->idem_bytes -= e->len;
}

/* Evict the oldest finished entries beyond the caps (gate held). */
static void idem_evict(struct xero *x)
{
    while (x->idem_oldest && x->idem_oldest->done &&
           (x->idem_n > x->idem_max_entries || x->idem_bytes > x->idem_max_bytes)) {
        struct idem *e = x->idem_oldest;
        idem_unlink(x, e);
        idem_free(e);
        x->idem_evictions++;
    }
}

/* Look the key up: returns a finished entry to replay (copied into status,
 * body), or registers a pending one owned by this call (*mine). Waits while
 * another call with the same key runs. Gate held by the caller. */
static int idem_begin(struct xero *x, const char *key, struct idem **mine, int *status,
                      char **body, size_t *len)
{
    struct idem *e;
    *mine = NULL;
    for (;;) {
        e = hidx_get_exact(&x->idem_ix, key);
        if (!e || e->done)
            break;
        pthread_cond_wait(&x->idem_cond, &x->gate);
    }
    if (e) {
        *body = malloc(e->len + 1);
        if (!*body)
            return -1;
        memcpy(*body, e->body, e->len);
        (*body)[e->len] = '\0';
        *len = e->len;
        *status = e->status;
        x->replays++;
        return 1;
    }
    e = calloc(1, sizeof(*e));
    if (!e || !(e->key = strdup(key)) || hidx_add(&x->idem_ix, e->key, e)) {
        if (e)
            free(e->key);
        free(e);
        return -1;
    }
    if (x->idem_newest)
        x->idem_newest->newer = e;
    else
        x->idem_oldest = e;
    x->idem_newest = e;
    x->idem_n++;
    *mine = e;
    return 0;
}

/* Finish the call that owns `e`: keep a reply that had effects (2xx), and
 * forget the key otherwise. A 4xx saved nothing, so a corrected request with
 * the same key (a dead letter replayed after its mapping was fixed) must be
 * processed, as APIs that store only executed requests do; whether Xero
 * itself replays its 400s is unverified, hence idempotency_store_errors.
 * 5xx, 429, 401 and 403 are never kept. Gate held. */
static void idem_end(struct xero *x, struct idem *e, const struct pb_http_response *resp)
{
    int status = resp->status ? resp->status : 500;
    int keep = (status >= 200 && status < 300) ||
               (x->idem_store_errors && status >= 400 && status < 500 && status != 429 &&
                status != 401 && status != 403);
    if (keep && resp->body_len) {
        e->body = malloc(resp->body_len);
        if (e->body) {
            memcpy(e->body, resp->body, resp->body_len);
            e->len = resp->body_len;
        } else {
            keep = 0;
        }
    }
    if (!keep) {
        idem_unlink(x, e);
        idem_free(e);
    } else {
        e->status = status;
        e->done = 1;
        x->idem_bytes += e->len;
        idem_evict(x);
    }
    pthread_cond_broadcast(&x->idem_cond);
}

/* ==== JSON bodies ========================================================= */

/* The elements of a write: `key` of the parsed body (an array), or the body
 * itself when it is a single object without that key. Replies 400 and returns
 * NULL when the body is not usable. *root owns everything. */
static json_t *body_elements(struct call *c, const char *key, json_t **root)
{
    json_error_t jerr;
    json_t *arr;
    *root = NULL;
    if (c->req->body_len == 0) {
        reply_exception(c->resp, 400, 14, "PostDataInvalidException",
                        "The request body is empty; expected {\"%s\":[...]}", key);
        return NULL;
    }
    *root = pb_json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*root) {
        reply_exception(c->resp, 400, 14, "PostDataInvalidException",
                        "JSON for post data was invalid,%s Line %d, position %d.", jerr.text,
                        jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(*root)) {
        reply_exception(c->resp, 400, 14, "PostDataInvalidException",
                        "JSON for post data was invalid, expected an object {\"%s\":[...]}",
                        key);
        goto fail;
    }
    arr = json_object_get(*root, key);
    if (!arr) {
        json_t *one = json_array();
        if (!one || json_array_append(one, *root)) {
            json_decref(one);
            goto fail;
        }
        json_decref(*root);
        *root = json_pack("{s:o}", key, one);
        if (!*root)
            goto fail;
        arr = json_object_get(*root, key);
    }
    if (!json_is_array(arr)) {
        reply_exception(c->resp, 400, 14, "PostDataInvalidException",
                        "JSON for post data was invalid, %s must be an array", key);
        goto fail;
    }
    return arr;
fail:
    if (!c->resp->body)
        reply_problem(c->resp, 500, "InternalError", "out of memory");
    json_decref(*root);
    *root = NULL;
    return NULL;
}

/* Member `key` as a string: NULL when absent or null; *bad set when present
 * but not a string. */
static const char *opt_str(json_t *obj, const char *key, int *bad)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_string(v)) {
        *bad = 1;
        return NULL;
    }
    return json_string_value(v);
}

/* ---- rendering stored records (data lock held) ---- */

/* A stored document, with "StatusAttributeString":"OK" when `ok`. */
static void render_text(struct outbuf *b, const char *text, size_t len, int ok)
{
    if (!ok || len == 0) {
        out_add(b, text, len);
        return;
    }
    out_add(b, text, len - 1);
    out_str(b, ",\"StatusAttributeString\":\"OK\"}");
}

static void render_contact_ref(struct outbuf *b, const struct contact *ct)
{
    out_str(b, "{\"ContactID\":\"");
    out_str(b, ct->id);
    out_str(b, "\",\"Name\":");
    out_jstr(b, ct->name);
    out_str(b, "}");
}

/* {"AllocationID":..,"Amount":..,"Date":..,<the other document>} */
static void render_allocation_ref(struct outbuf *b, const struct allocation *a, int from_invoice)
{
    const struct invoice *other = from_invoice ? a->credit_note : a->invoice;
    out_str(b, "{\"AllocationID\":\"");
    out_str(b, a->id);
    out_str(b, from_invoice ? "\",\"AppliedAmount\":" : "\",\"Amount\":");
    out_money(b, a->amount, other->currency);
    out_str(b, ",\"Date\":");
    out_msdate(b, a->date * 86400000);
    if (from_invoice) {
        /* an invoice lists the credit notes applied to it */
        out_str(b, ",\"CreditNoteID\":\"");
        out_str(b, other->id);
        out_str(b, "\",\"ID\":\"");
        out_str(b, other->id);
        out_str(b, "\",\"CreditNoteNumber\":");
        out_jstr(b, other->number);
        out_str(b, ",\"Reference\":");
        out_jstr(b, other->reference);
        out_str(b, ",\"Total\":");
        out_money(b, other->total, other->currency);
        out_str(b, "}");
        return;
    }
    out_str(b, ",\"Invoice\":{\"InvoiceID\":\"");
    out_str(b, other->id);
    out_str(b, "\",\"InvoiceNumber\":");
    out_jstr(b, other->number);
    out_str(b, "}}");
}

/* An invoice or a credit note: its head, then the members that payments,
 * allocations and numbering change. */
static void render_invoice(struct outbuf *b, const struct invoice *inv, int ok)
{
    int credit = inv->kind->credit;
    out_add(b, inv->head, inv->head_len);
    out_str(b, credit ? ",\"CreditNoteNumber\":" : ",\"InvoiceNumber\":");
    out_jstr(b, inv->number);
    out_str(b, ",\"Contact\":");
    render_contact_ref(b, inv->contact);
    out_str(b, ",\"Status\":\"");
    out_str(b, inv->status);
    if (credit) {
        out_str(b, "\",\"RemainingCredit\":");
        out_money(b, inv->due, inv->currency);
        out_str(b, ",\"Allocations\":[");
    } else {
        out_str(b, "\",\"AmountDue\":");
        out_money(b, inv->due, inv->currency);
        out_str(b, ",\"AmountPaid\":");
        out_money(b, inv->paid, inv->currency);
        out_str(b, ",\"AmountCredited\":");
        out_money(b, inv->credited, inv->currency);
        out_str(b, ",\"CreditNotes\":[");
    }
    for (size_t i = 0; i < inv->n_allocs; i++) {
        if (i)
            out_str(b, ",");
        render_allocation_ref(b, inv->allocs[i], !credit);
    }
    out_str(b, "],\"Payments\":[");
    for (size_t i = 0; i < inv->n_pays; i++) {
        const struct payment *p = inv->pays[i];
        out_str(b, i ? ",{\"PaymentID\":\"" : "{\"PaymentID\":\"");
        out_str(b, p->id);
        out_str(b, "\",\"Date\":");
        out_msdate(b, p->date * 86400000);
        out_str(b, ",\"Amount\":");
        out_money(b, p->amount, p->currency);
        out_str(b, ",\"CurrencyRate\":1.000000,\"Reference\":");
        out_jstr(b, p->reference);
        out_str(b, "}");
    }
    out_str(b, "],\"UpdatedDateUTC\":");
    out_msdate(b, inv->updated_ms);
    if (inv->fully_paid_days >= 0) {
        out_str(b, ",\"FullyPaidOnDate\":");
        out_msdate(b, inv->fully_paid_days * 86400000);
    }
    if (ok)
        out_str(b, ",\"StatusAttributeString\":\"OK\"");
    out_str(b, "}");
}

/* A bank transaction: its head, the contact, then what a delete changes. */
static void render_bank_txn(struct outbuf *b, const struct bank_txn *t, int ok)
{
    out_add(b, t->head, t->head_len);
    if (t->contact) {
        out_str(b, ",\"Contact\":");
        render_contact_ref(b, t->contact);
    }
    out_str(b, ",\"Status\":\"");
    out_str(b, t->status);
    out_str(b, "\",\"UpdatedDateUTC\":");
    out_msdate(b, t->updated_ms);
    if (ok)
        out_str(b, ",\"StatusAttributeString\":\"OK\"");
    out_str(b, "}");
}

static void render_journal(struct outbuf *b, const struct journal *j, int ok)
{
    out_add(b, j->head, j->head_len);
    out_str(b, ",\"Status\":\"");
    out_str(b, j->status);
    out_str(b, ok ? "\",\"StatusAttributeString\":\"OK\"}" : "\"}");
}

static void render(struct outbuf *b, enum entity ent, const void *rec, int ok)
{
    if (ent == E_BANK_TXN)
        render_bank_txn(b, rec, ok);
    else if (ent == E_MANUAL_JOURNAL)
        render_journal(b, rec, ok);
    else if (ent == E_BANK_TRANSFER)
        render_text(b, ((const struct bank_transfer *)rec)->text,
                    ((const struct bank_transfer *)rec)->len, ok);
    else if (ent == E_CONTACT)
        render_text(b, ((const struct contact *)rec)->text, ((const struct contact *)rec)->len, ok);
    else if (ent == E_PAYMENT)
        render_text(b, ((const struct payment *)rec)->text, ((const struct payment *)rec)->len, ok);
    else
        render_invoice(b, rec, ok);
}

/* One element of a write's reply: a saved record rendered under the lock,
 * or the element as sent with its ValidationErrors. */
struct out_el {
    char *text;                 /* owned, NULL when not saved */
    size_t len;
    json_t *err;                /* owned error element, or NULL */
};

static void out_el_render(struct out_el *o, enum entity ent, const void *rec, int ok)
{
    struct outbuf b = {0};
    render(&b, ent, rec, ok);
    if (b.failed) {
        free(b.p);
        return;
    }
    o->text = b.p;
    o->len = b.len;
}

/* The reply of a write: every element with summarizeErrors=false, else 200
 * with the saved ones or 400 with the failed ones. Frees the elements. */
static void reply_write(struct call *c, const char *key, struct out_el *els, size_t n,
                        int n_failed)
{
    size_t i;
    if (n_failed && c->summarize) {
        json_t *failed = json_array();
        for (i = 0; i < n; i++)
            if (els[i].err)
                json_array_append(failed, els[i].err);
        reply_json(c->resp, 400,
                   json_pack("{s:i,s:s,s:s,s:o}", "ErrorNumber", 10, "Type",
                             "ValidationException", "Message", "A validation exception occurred",
                             "Elements", failed));
    } else {
        struct outbuf b = {0};
        size_t k = 0;
        envelope_open(&b, key);
        for (i = 0; i < n; i++) {
            char *t = els[i].text;
            size_t len = els[i].len;
            if (!t && els[i].err) {
                t = doc_text(els[i].err, 0, &len);
                if (!t)
                    b.failed = 1;
            }
            if (!t)
                continue;
            if (k++)
                out_add(&b, ",", 1);
            out_add(&b, t, len);
            if (t != els[i].text)
                free(t);
        }
        out_str(&b, "]}");
        reply_text(c->resp, &b);
    }
    for (i = 0; i < n; i++) {
        free(els[i].text);
        json_decref(els[i].err);
    }
}

/* ==== updates of one record ============================================== */

/* The one element of the body of POST /{key}/{id} (an update of one record),
 * or NULL having replied: the body's own error, or a 400
 * PostDataInvalidException saying `one_msg` when it holds other than one
 * element. *root owns the body. */
static json_t *update_element(struct call *c, const char *key, const char *one_msg,
                              json_t **root)
{
    json_t *arr = body_elements(c, key, root);
    if (!arr)
        return NULL;
    if (json_array_size(arr) != 1) {
        json_decref(*root);
        reply_exception(c->resp, 400, 14, "PostDataInvalidException", "%s", one_msg);
        return NULL;
    }
    return json_array_get(arr, 0);
}

/* The reply of such an update: 404 when the record was not found, else the
 * rendered element `el`, or `errs` (consumed) against the element `e`.
 * Consumes root. */
static void reply_update(struct call *c, const char *key, int found, json_t *e, json_t *errs,
                         struct out_el *el, json_t *root)
{
    if (!found) {
        json_decref(errs);
        json_decref(root);
        reply_not_found(c->resp);
        return;
    }
    if (errs)
        el->err = error_element(e, errs, "HasValidationErrors");
    reply_write(c, key, el, 1, errs != NULL);
    json_decref(errs);
    json_decref(root);
}

/* ==== create-only batches ================================================ */

/* The start of every create-only element's check: `e` must be an object
 * ("A <what> must be a JSON object") and must not carry `id_key` (refused
 * with `refusal`). 0 when the check may go on; else the error is in *errs. */
static int create_only_element(json_t *e, const char *what, const char *id_key,
                               const char *refusal, json_t **errs)
{
    if (!json_is_object(e)) {
        add_error(errs, "A %s must be a JSON object", what);
        return -1;
    }
    if (json_object_get(e, id_key)) {
        add_error(errs, "%s", refusal);
        return -1;
    }
    return 0;
}

/* The element's Date in days since the epoch into *date: today when absent. */
static void element_date(struct call *c, json_t *e, int64_t *date, json_t **errs)
{
    int bad = 0;
    const char *s = opt_str(e, "Date", &bad);
    *date = c->now_ms / 86400000;
    if (bad || (s && parse_date(s, date)))
        add_error(errs, "Date '%s' is not a valid date (expected YYYY-MM-DD)",
                  s ? s : "(not a string)");
}

/* The element's Reference (borrowed; NULL when absent). */
static const char *element_reference(json_t *e, json_t **errs)
{
    int bad = 0;
    const char *ref = opt_str(e, "Reference", &bad);
    if (bad || (ref && strlen(ref) > NAME_MAX_LEN))
        add_error(errs, "Reference must be a string of at most 255 characters");
    return ref;
}

/* The write of a resource the sandbox only creates (BankTransactions,
 * ManualJournals, BankTransfers): every element is checked on its own
 * outside the lock, then, with the data lock held and unless summarizeErrors
 * has a failure to report, each good one is committed and rendered. The
 * resource's `_in` struct carries the borrowed element and its owned errors
 * at src_off and errs_off; check fills it, commit saves it (data held) and
 * returns the saved record or NULL (having said why in its errors, or not).
 * The char * members at owned_off[0..n_owned) are check's (commit may take
 * one, leaving NULL); batch_write frees whatever is left in them. */
struct batch_type {
    const char *key;            /* the body's and the reply's envelope key */
    enum entity ent;            /* what a saved record renders as */
    const char *has_key;        /* "HasErrors" or "HasValidationErrors" */
    size_t size;                /* of one `_in` struct */
    size_t src_off, errs_off;   /* of its json_t *src and json_t *errs */
    void (*check)(struct call *c, void *in);
    const void *(*commit)(struct call *c, void *in);
    size_t n_owned, owned_off[3];
};

/* The json_t * member at `off` in one `_in` struct. */
static json_t **batch_slot(char *in, size_t off)
{
    return (json_t **)(void *)(in + off);
}

static void batch_write(struct call *c, const struct batch_type *bt)
{
    struct xero *x = c->x;
    json_t *root, *arr = body_elements(c, bt->key, &root);
    char *in;
    struct out_el *els;
    size_t n, i;
    int n_failed = 0;
    if (!arr)
        return;
    n = json_array_size(arr);
    in = calloc(n ? n : 1, bt->size);
    els = calloc(n ? n : 1, sizeof(*els));
    if (!in || !els) {
        free(in);
        free(els);
        json_decref(root);
        reply_problem(c->resp, 500, "InternalError", "out of memory");
        return;
    }
    for (i = 0; i < n; i++) {
        char *el = in + i * bt->size;
        *batch_slot(el, bt->src_off) = json_array_get(arr, i);
        bt->check(c, el);
        n_failed += *batch_slot(el, bt->errs_off) != NULL;
    }
    pthread_mutex_lock(&x->data);
    if (!(n_failed && c->summarize)) {
        for (i = 0; i < n; i++) {
            char *el = in + i * bt->size;
            const void *saved;
            if (*batch_slot(el, bt->errs_off))
                continue;
            saved = bt->commit(c, el);
            if (saved)
                out_el_render(&els[i], bt->ent, saved, !c->summarize);
            else
                n_failed++;
        }
    }
    pthread_mutex_unlock(&x->data);
    for (i = 0; i < n; i++) {
        char *el = in + i * bt->size;
        json_t *errs = *batch_slot(el, bt->errs_off);
        if (errs)
            els[i].err = error_element(*batch_slot(el, bt->src_off), errs, bt->has_key);
        json_decref(errs);
        for (size_t k = 0; k < bt->n_owned; k++)
            free(*(char **)(void *)(el + bt->owned_off[k]));
    }
    free(in);
    reply_write(c, bt->key, els, n, n_failed);
    free(els);
    json_decref(root);
}

/* ==== Contacts ============================================================ */

struct contact_in {
    json_t *src;                /* borrowed element */
    json_t *errs;               /* owned ValidationErrors, NULL when none */
    json_t *patch;              /* owned normalised members to set */
    char id[64];                /* ContactID as sent, "" when none */
    const char *name;           /* borrowed from src, NULL when absent */
    const char *email;
    const char *status;         /* ACTIVE | ARCHIVED | NULL */
    struct contact *target;     /* resolved update target */
    char new_id[37];            /* ContactID if it is created */
    char *text;                 /* owned document if it is created (built in step 1) */
    size_t len;
    struct out_el out;          /* its reply element */
};

static const char *const CONTACT_STRINGS[] = {"FirstName", "LastName", "AccountNumber",
                                              "ContactNumber", "CompanyNumber", "TaxNumber",
                                              "BankAccountDetails", "Website", NULL};
static const char *const ADDRESS_STRINGS[] = {"AddressLine1", "AddressLine2", "AddressLine3",
                                              "AddressLine4", "City", "Region", "PostalCode",
                                              "Country", "AttentionTo", NULL};
static const char *const PHONE_STRINGS[] = {"PhoneNumber", "PhoneAreaCode", "PhoneCountryCode",
                                            NULL};

/* Copy the string members `keys` of `src` into `dst`, checking lengths. */
static void copy_strings(json_t *dst, json_t *src, const char *const *keys, size_t max,
                         const char *what, json_t **errs)
{
    for (size_t i = 0; keys[i]; i++) {
        int bad = 0;
        const char *s = opt_str(src, keys[i], &bad);
        if (bad)
            add_error(errs, "%s%s must be a string", what, keys[i]);
        else if (s && strlen(s) > max)
            add_error(errs, "%s%s must be at most %zu characters", what, keys[i], max);
        else if (s)
            json_object_set_new(dst, keys[i], json_string(s));
    }
}

/* Step 1 for one contact: checks that need no state, and the patch. */
static void contact_check(struct contact_in *ci)
{
    json_t *e = ci->src, *v;
    int bad = 0;
    const char *id;
    ci->patch = json_object();
    if (!json_is_object(e)) {
        add_error(&ci->errs, "A contact must be a JSON object");
        return;
    }
    id = opt_str(e, "ContactID", &bad);
    if (bad || (id && !is_uuid_like(id))) {
        add_error(&ci->errs, "ContactID must be a GUID");
        bad = 0;
    } else if (id) {
        copy_str(ci->id, sizeof(ci->id), id);
    }
    ci->name = opt_str(e, "Name", &bad);
    if (bad) {
        add_error(&ci->errs, "Name must be a string");
        bad = 0;
    } else if (ci->name) {
        const char *p = ci->name;
        while (*p == ' ')
            p++;
        if (!*p)
            add_error(&ci->errs, "The contact name must be provided.");
        else if (strlen(ci->name) > NAME_MAX_LEN)
            add_error(&ci->errs, "The contact name must be at most 255 characters.");
        else
            json_object_set_new(ci->patch, "Name", json_string(ci->name));
    }
    ci->email = opt_str(e, "EmailAddress", &bad);
    if (bad) {
        add_error(&ci->errs, "EmailAddress must be a string");
        bad = 0;
    } else if (ci->email) {
        const char *at = strchr(ci->email, '@');
        if (*ci->email && (!at || at == ci->email || !strchr(at, '.') || strchr(ci->email, ' ')))
            add_error(&ci->errs, "Email address must be valid.");
        else if (strlen(ci->email) > NAME_MAX_LEN)
            add_error(&ci->errs, "EmailAddress must be at most 255 characters.");
        else
            json_object_set_new(ci->patch, "EmailAddress", json_string(ci->email));
    }
    ci->status = opt_str(e, "ContactStatus", &bad);
    if (bad || (ci->status && strcmp(ci->status, "ACTIVE") && strcmp(ci->status, "ARCHIVED"))) {
        add_error(&ci->errs, "ContactStatus must be ACTIVE or ARCHIVED");
        ci->status = NULL;
        bad = 0;
    } else if (ci->status) {
        json_object_set_new(ci->patch, "ContactStatus", json_string(ci->status));
    }
    copy_strings(ci->patch, e, CONTACT_STRINGS, NAME_MAX_LEN, "", &ci->errs);
    if ((v = json_object_get(e, "Addresses")) && !json_is_null(v)) {
        json_t *out = json_array(), *a;
        size_t i;
        if (!json_is_array(v))
            add_error(&ci->errs, "Addresses must be an array");
        json_array_foreach(v, i, a)
        {
            json_t *o = json_object();
            const char *type = opt_str(a, "AddressType", &bad);
            if (!json_is_object(a) || bad || !type ||
                (strcmp(type, "STREET") && strcmp(type, "POBOX"))) {
                add_error(&ci->errs, "Addresses[%zu].AddressType must be STREET or POBOX", i);
                bad = 0;
            } else {
                json_object_set_new(o, "AddressType", json_string(type));
            }
            copy_strings(o, a, ADDRESS_STRINGS, 500, "Address ", &ci->errs);
            json_array_append_new(out, o);
        }
        json_object_set_new(ci->patch, "Addresses", out);
    }
    if ((v = json_object_get(e, "Phones")) && !json_is_null(v)) {
        json_t *out = json_array(), *p;
        size_t i;
        if (!json_is_array(v))
            add_error(&ci->errs, "Phones must be an array");
        json_array_foreach(v, i, p)
        {
            json_t *o = json_object();
            const char *type = opt_str(p, "PhoneType", &bad);
            if (!json_is_object(p) || bad || !type ||
                (strcmp(type, "DEFAULT") && strcmp(type, "DDI") && strcmp(type, "MOBILE") &&
                 strcmp(type, "FAX"))) {
                add_error(&ci->errs, "Phones[%zu].PhoneType must be DEFAULT, DDI, MOBILE or FAX",
                          i);
                bad = 0;
            } else {
                json_object_set_new(o, "PhoneType", json_string(type));
            }
            copy_strings(o, p, PHONE_STRINGS, 50, "Phone ", &ci->errs);
            json_array_append_new(out, o);
        }
        json_object_set_new(ci->patch, "Phones", out);
    }
}

/* An active contact named `name` other than `except`, or NULL (data held). */
static struct contact *active_named(struct xero *x, const char *name, const struct contact *except)
{
    struct hent *h;
    for (h = hidx_find(&x->c_name, name); h; h = hidx_next(h, name)) {
        struct contact *ct = h->rec;
        if (!ct->archived && ct != except)
            return ct;
    }
    return NULL;
}

static int contact_index(struct xero *x, struct contact *ct)
{
    return hidx_add(&x->c_id, ct->id, ct) | hidx_add(&x->c_name, ct->name, ct) |
           hidx_add(&x->c_email, ct->email, ct);
}

/* Create a contact from its document text (taken) (data held). */
static struct contact *contact_insert(struct xero *x, const char *id, const char *name,
                                      const char *email, int archived, char *text, size_t len)
{
    struct contact *ct = calloc(1, sizeof(*ct));
    if (!ct || !(ct->name = xstrdup(name)) || !(ct->email = xstrdup(email)) ||
        vec_push(&x->contacts, ct)) {
        if (ct) {
            free(ct->name);
            free(ct->email);
        }
        free(ct);
        free(text);
        return NULL;
    }
    copy_str(ct->id, sizeof(ct->id), id);
    ct->archived = archived;
    ct->text = text;
    ct->len = len;
    ct->seq = ++x->seq;
    contact_index(x, ct);
    return ct;
}

static json_t *contact_new_doc(const char *id, json_t *patch, int64_t now)
{
    json_t *doc = json_pack("{s:s,s:s,s:s,s:s,s:[],s:[],s:o,s:b,s:b,s:b}", "ContactID", id,
                            "ContactStatus", "ACTIVE", "Name", "", "EmailAddress", "",
                            "Addresses", "Phones", "UpdatedDateUTC", msdate(now), "IsSupplier",
                            0, "IsCustomer", 0, "HasValidationErrors", 0);
    if (doc && patch)
        json_object_update(doc, patch);
    return doc;
}

/* The contact an invoice creates for a new name, built as text (data held). */
static struct contact *contact_insert_named(struct xero *x, const char *name, int64_t now)
{
    struct outbuf b = {0};
    char id[37];
    new_uuid(id);
    out_str(&b, "{\"ContactID\":\"");
    out_str(&b, id);
    out_str(&b, "\",\"ContactStatus\":\"ACTIVE\",\"Name\":");
    out_jstr(&b, name);
    out_str(&b, ",\"EmailAddress\":\"\",\"Addresses\":[],\"Phones\":[],\"UpdatedDateUTC\":");
    out_msdate(&b, now);
    out_str(&b, ",\"IsSupplier\":false,\"IsCustomer\":false,\"HasValidationErrors\":false}");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return contact_insert(x, id, name, "", 0, b.p, b.len);
}

/* Apply a patch to an existing contact (data held). Re-reads its stored
 * text; updates are rarer than creates. */
static int contact_update(struct xero *x, struct contact *ct, json_t *patch, int64_t now)
{
    json_t *doc = json_loadb(ct->text, ct->len, 0, NULL);
    const char *name, *email, *status;
    char *text;
    size_t len;
    if (!doc)
        return -1;
    json_object_update(doc, patch);
    json_object_set_new(doc, "UpdatedDateUTC", msdate(now));
    text = doc_text(doc, 0, &len);
    name = json_string_value(json_object_get(doc, "Name"));
    email = json_string_value(json_object_get(doc, "EmailAddress"));
    status = json_string_value(json_object_get(doc, "ContactStatus"));
    if (!text) {
        json_decref(doc);
        return -1;
    }
    hidx_del(&x->c_name, ct->name, ct);
    hidx_del(&x->c_email, ct->email, ct);
    set_str(&ct->name, name);
    set_str(&ct->email, email);
    hidx_add(&x->c_name, ct->name, ct);
    hidx_add(&x->c_email, ct->email, ct);
    ct->archived = status && !strcmp(status, "ARCHIVED");
    free(ct->text);
    ct->text = text;
    ct->len = len;
    json_decref(doc);
    return 0;
}

static void contacts_write(struct call *c, int is_put)
{
    struct xero *x = c->x;
    json_t *root, *arr = body_elements(c, "Contacts", &root);
    struct contact_in *in;
    struct out_el *els;
    struct hidx batch_names = {0};
    size_t n, i;
    int n_failed = 0;
    if (!arr)
        return;
    n = json_array_size(arr);
    in = calloc(n ? n : 1, sizeof(*in));
    els = calloc(n ? n : 1, sizeof(*els));
    if (!in || !els) {
        free(in);
        free(els);
        json_decref(root);
        reply_problem(c->resp, 500, "InternalError", "out of memory");
        return;
    }
    /* Step 1: check each element and build its document in case it is new. */
    for (i = 0; i < n; i++) {
        struct contact_in *ci = &in[i];
        ci->src = json_array_get(arr, i);
        contact_check(ci);
        if (!ci->errs) {
            json_t *doc;
            new_uuid(ci->new_id);
            doc = contact_new_doc(ci->new_id, ci->patch, c->now_ms);
            ci->text = doc_text(doc, 0, &ci->len);
            json_decref(doc);
            if (!ci->text)
                add_error(&ci->errs, "The sandbox ran out of memory");
        }
    }

    /* Step 2: resolve against the state and the batch, then commit. */
    pthread_mutex_lock(&x->data);
    for (i = 0; i < n; i++) {
        struct contact_in *ci = &in[i];
        const char *new_name = ci->name;
        if (ci->errs)
            continue;
        if (ci->id[0]) {
            ci->target = hidx_get(&x->c_id, ci->id);
            if (!ci->target) {
                add_error(&ci->errs, "The contact with ContactID %s could not be found.", ci->id);
                continue;
            }
        } else if (!ci->name) {
            add_error(&ci->errs, "The contact name must be provided.");
            continue;
        } else if (!is_put) {
            /* POST without an ID updates the active contact of that name. */
            ci->target = active_named(x, ci->name, NULL);
        }
        if (new_name) {
            int archiving = ci->status && !strcmp(ci->status, "ARCHIVED");
            int was_archived = ci->target && ci->target->archived && !ci->status;
            if (!archiving && !was_archived &&
                (active_named(x, new_name, ci->target) || hidx_find(&batch_names, new_name))) {
                add_error(&ci->errs,
                          "The contact name %s is already assigned to another contact. The "
                          "contact name must be unique across all active contacts.",
                          new_name);
                continue;
            }
            if (!archiving)
                hidx_add(&batch_names, new_name, ci);
        }
    }
    for (i = 0; i < n; i++)
        n_failed += in[i].errs != NULL;
    if (!(n_failed && c->summarize)) {
        for (i = 0; i < n; i++) {
            struct contact_in *ci = &in[i];
            struct contact *saved = NULL;
            if (ci->errs)
                continue;
            if (ci->target) {
                if (contact_update(x, ci->target, ci->patch, c->now_ms) == 0)
                    saved = ci->target;
            } else {
                const char *status = json_string_value(json_object_get(ci->patch,
                                                                       "ContactStatus"));
                saved = contact_insert(x, ci->new_id, ci->name, ci->email ? ci->email : "",
                                       status && !strcmp(status, "ARCHIVED"), ci->text, ci->len);
                ci->text = NULL;
            }
            if (saved)
                out_el_render(&els[i], E_CONTACT, saved, !c->summarize);
            if (!els[i].text) {
                add_error(&ci->errs, "The sandbox ran out of memory saving this contact");
                n_failed++;
            }
        }
    }
    pthread_mutex_unlock(&x->data);
    hidx_clear(&batch_names);

    /* Step 3: the reply. */
    for (i = 0; i < n; i++) {
        struct contact_in *ci = &in[i];
        if (ci->errs)
            els[i].err = error_element(ci->src, ci->errs, "HasValidationErrors");
        json_decref(ci->errs);
        json_decref(ci->patch);
        free(ci->text);
    }
    free(in);
    reply_write(c, "Contacts", els, n, n_failed);
    free(els);
    json_decref(root);
}

/* ==== Invoices ============================================================ */

struct line_in {
    json_t *doc;                /* owned normalised line, LineAmount set by finalize */
    int64_t qty, unit;          /* QTY_SCALE places */
    int64_t product;            /* qty * unit, 2 * QTY_SCALE places */
    json_t *given;              /* borrowed LineAmount as sent, or NULL */
};

struct invoice_in {
    const struct doc_kind *kind;
    json_t *src;                /* borrowed element as sent */
    json_t *merged;             /* owned: stored doc + element, for updates */
    json_t *errs;               /* owned ValidationErrors */
    char id[64];                /* InvoiceID as sent */
    char type[16], status[12], currency[4], lat[12];
    int64_t date, due;          /* days since the epoch */
    const char *reference;      /* borrowed, NULL when absent */
    const char *number;         /* borrowed, NULL when absent */
    char contact_id[64];
    const char *contact_name;   /* borrowed */
    struct line_in *lines;
    size_t n_lines;
    int64_t total;              /* minor units, after finalize */
    int finalized;
    /* resolution */
    struct invoice *target;     /* update target */
    struct contact *contact;    /* resolved contact */
    struct contact_in *new_contact; /* or a contact to create (batch-shared) */
    struct invoice_in *upd;     /* owned: the checked merge of an update */
    struct contact *upd_ct;     /* its contact */
    char new_id[37];            /* InvoiceID if it is created */
    char *head;                 /* owned head text if it is created (built in step 1) */
    size_t head_len;
    struct invoice *saved;      /* the record once committed */
};

static void invoice_in_free(struct invoice_in *ii)
{
    if (ii->upd) {
        invoice_in_free(ii->upd);
        free(ii->upd);
    }
    for (size_t k = 0; k < ii->n_lines; k++)
        json_decref(ii->lines[k].doc);
    free(ii->lines);
    json_decref(ii->errs);
    json_decref(ii->merged);
    free(ii->head);
}

static int one_of(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (!strcmp(s, *set))
            return 1;
    return 0;
}

/* Step 1 for one invoice or credit note (create) or a merged update: all
 * checks that need no state. `e` is the element (or the merge); a create may
 * only ask for DRAFT, SUBMITTED or AUTHORISED. ii->kind is set. */
static void invoice_check(const struct call *c, struct invoice_in *ii, json_t *e, int is_update)
{
    const struct doc_kind *k = ii->kind;
    const char *const *types = k->types;
    static const char *const lats[] = {"Exclusive", "Inclusive", "NoTax", NULL};
    static const char *const statuses[] = {"DRAFT", "SUBMITTED", "AUTHORISED", "PAID",
                                           "VOIDED", "DELETED", NULL};
    const struct xero *x = c->x;
    const char *s;
    json_t *v, *lines;
    int bad = 0;
    size_t i;

    if (!json_is_object(e)) {
        add_error(&ii->errs, "%s must be a JSON object", k->a_word);
        return;
    }
    s = opt_str(e, k->id_key, &bad);
    if (bad || (s && !is_uuid_like(s))) {
        add_error(&ii->errs, "%s must be a GUID", k->id_key);
        bad = 0;
    } else if (s) {
        copy_str(ii->id, sizeof(ii->id), s);
    }
    s = opt_str(e, "Type", &bad);
    if (bad || !s)
        add_error(&ii->errs, "%s Type must be specified (%s or %s)", k->word, types[0],
                  types[1]);
    else if (!one_of(s, types))
        add_error(&ii->errs, "%s Type '%s' is not supported; use %s or %s", k->word, s,
                  types[0], types[1]);
    else
        copy_str(ii->type, sizeof(ii->type), s);
    bad = 0;
    s = opt_str(e, "Status", &bad);
    if (bad || (s && !one_of(s, statuses)) ||
        (s && !is_update && one_of(s, statuses + 3)))
        add_error(&ii->errs, "%s Status must be DRAFT, SUBMITTED or AUTHORISED", k->word);
    else
        copy_str(ii->status, sizeof(ii->status), s ? s : "DRAFT");
    bad = 0;
    s = opt_str(e, "LineAmountTypes", &bad);
    if (bad || (s && !one_of(s, lats)))
        add_error(&ii->errs, "LineAmountTypes must be Exclusive, Inclusive or NoTax");
    else
        copy_str(ii->lat, sizeof(ii->lat), s ? s : "Exclusive");
    bad = 0;
    s = opt_str(e, "CurrencyCode", &bad);
    if (bad)
        add_error(&ii->errs, "CurrencyCode must be a string");
    else if (s && !currency_enabled(x, s))
        add_error(&ii->errs, "The currency '%s' is not enabled for this organisation. Please "
                  "add the currency in Xero and try again.", s);
    else
        copy_str(ii->currency, sizeof(ii->currency), s ? s : x->base_currency);
    bad = 0;
    ii->date = c->now_ms / 86400000;
    s = opt_str(e, "Date", &bad);
    if (bad || (s && parse_date(s, &ii->date)))
        add_error(&ii->errs, "Date '%s' is not a valid date (expected YYYY-MM-DD)",
                  s ? s : "(not a string)");
    bad = 0;
    ii->due = ii->date;
    s = opt_str(e, "DueDate", &bad);
    if (bad || (s && parse_date(s, &ii->due)))
        add_error(&ii->errs, "DueDate '%s' is not a valid date (expected YYYY-MM-DD)",
                  s ? s : "(not a string)");
    bad = 0;
    ii->reference = opt_str(e, "Reference", &bad);
    if (bad)
        add_error(&ii->errs, "Reference must be a string");
    else if (ii->reference && strlen(ii->reference) > NAME_MAX_LEN)
        add_error(&ii->errs, "Reference must be at most 255 characters");
    bad = 0;
    ii->number = opt_str(e, k->number_key, &bad);
    if (bad)
        add_error(&ii->errs, "%s must be a string", k->number_key);
    else if (ii->number && strlen(ii->number) > NAME_MAX_LEN)
        add_error(&ii->errs, "%s must be at most 255 characters", k->number_key);
    else if (ii->number && !*ii->number)
        ii->number = NULL;
    bad = 0;
    v = json_object_get(e, "Contact");
    if (!json_is_object(v)) {
        add_error(&ii->errs, "A Contact must be specified for this type of transaction");
    } else {
        const char *cid = opt_str(v, "ContactID", &bad);
        const char *name = opt_str(v, "Name", &bad);
        if (bad || (cid && !is_uuid_like(cid)))
            add_error(&ii->errs, "Contact.ContactID must be a GUID and Contact.Name a string");
        else if (cid)
            copy_str(ii->contact_id, sizeof(ii->contact_id), cid);
        else if (name && *name && strlen(name) <= NAME_MAX_LEN)
            ii->contact_name = name;
        else
            add_error(&ii->errs, "A Contact must be specified for this type of transaction");
    }

    lines = json_object_get(e, "LineItems");
    if (lines && !json_is_null(lines) && !json_is_array(lines)) {
        add_error(&ii->errs, "LineItems must be an array");
        return;
    }
    ii->n_lines = json_array_size(lines);
    ii->lines = calloc(ii->n_lines ? ii->n_lines : 1, sizeof(*ii->lines));
    if (!ii->lines) {
        add_error(&ii->errs, "out of memory");
        ii->n_lines = 0;
        return;
    }
    for (i = 0; i < ii->n_lines; i++) {
        json_t *l = json_array_get(lines, i), *q, *u;
        struct line_in *li = &ii->lines[i];
        const char *desc, *code, *lid;
        char buf[48];
        int rc;
        li->doc = json_object();
        if (!json_is_object(l)) {
            add_error(&ii->errs, "LineItems[%zu] must be an object", i);
            continue;
        }
        lid = opt_str(l, "LineItemID", &bad);
        if (lid && is_uuid_like(lid)) {
            json_object_set_new(li->doc, "LineItemID", json_string(lid));
        } else {
            char id[37];
            new_uuid(id);
            json_object_set_new(li->doc, "LineItemID", json_string(id));
        }
        bad = 0;
        desc = opt_str(l, "Description", &bad);
        if (bad)
            add_error(&ii->errs, "LineItems[%zu].Description must be a string", i);
        else if (desc && strlen(desc) > 4000)
            add_error(&ii->errs, "Description must be at most 4000 characters");
        else if (desc)
            json_object_set_new(li->doc, "Description", json_string(desc));
        bad = 0;
        code = opt_str(l, "AccountCode", &bad);
        if (bad) {
            add_error(&ii->errs, "LineItems[%zu].AccountCode must be a string", i);
        } else if (code) {
            const struct account *a = account_by_code(x, code);
            if (!a)
                add_error(&ii->errs, "Account code '%s' is not a valid code for this document.",
                          code);
            else
                json_object_set_new(li->doc, "AccountCode", json_string(a->code));
        }
        bad = 0;
        q = json_object_get(l, "Quantity");
        u = json_object_get(l, "UnitAmount");
        li->given = json_object_get(l, "LineAmount");
        if (json_is_null(q))
            q = NULL;
        if (json_is_null(u))
            u = NULL;
        if (json_is_null(li->given))
            li->given = NULL;
        li->qty = 10000;    /* 1.0000 */
        if (q && (rc = json_dec(q, QTY_SCALE, 1, &li->qty)) != DEC_OK) {
            add_error(&ii->errs, "LineItems[%zu].Quantity must be a decimal number%s", i,
                      rc == DEC_RANGE ? " in range" : "");
            continue;
        }
        if (u) {
            if ((rc = json_dec(u, QTY_SCALE, 1, &li->unit)) != DEC_OK) {
                add_error(&ii->errs, "LineItems[%zu].UnitAmount must be a decimal number%s", i,
                          rc == DEC_RANGE ? " in range" : "");
                continue;
            }
            if (!c->unitdp4)     /* without unitdp=4 Xero keeps 2 places */
                li->unit = round_div_pow10(li->unit, QTY_SCALE - 2) * 100;
        } else if (li->given && !q) {
            /* LineAmount alone: one unit of that amount. */
            if ((rc = json_dec(li->given, QTY_SCALE, 0, &li->unit)) != DEC_OK) {
                add_error(&ii->errs, "LineItems[%zu].LineAmount must be a decimal number", i);
                continue;
            }
        } else if (!desc) {
            add_error(&ii->errs, "LineItems[%zu] needs a UnitAmount (or a LineAmount)", i);
            continue;
        } else {
            li->unit = 0;   /* a description-only line */
        }
        if (__builtin_mul_overflow(li->qty, li->unit, &li->product)) {
            add_error(&ii->errs, "LineItems[%zu]: Quantity x UnitAmount is too large", i);
            continue;
        }
        dec_format(li->qty, QTY_SCALE, QTY_SCALE, buf, sizeof(buf));
        json_object_set_new(li->doc, "Quantity", json_string(buf));
        dec_format(li->unit, QTY_SCALE, 2, buf, sizeof(buf));
        json_object_set_new(li->doc, "UnitAmount", json_string(buf));
    }
}

/* Round the lines to the currency and total them; checks LineAmounts sent.
 * Runs once the currency is known (step 1 for creates, under the lock for
 * updates). */
static void invoice_finalize(struct invoice_in *ii)
{
    int exp = pb_currency_exponent(ii->currency);
    int64_t sum = 0;
    if (ii->errs || exp < 0)
        return;
    for (size_t i = 0; i < ii->n_lines; i++) {
        struct line_in *li = &ii->lines[i];
        int64_t amount = round_div_pow10(li->product, 2 * QTY_SCALE - exp), given;
        if (li->given) {
            struct pb_err err = {0};
            if (pb_json_to_minor(li->given, ii->currency, &given, &err) != PB_OK) {
                add_error(&ii->errs, "LineItems[%zu].LineAmount: %s", i, err.msg);
                continue;
            }
            if (given != amount) {
                char g[PB_MONEY_DECIMAL_MAX], a[PB_MONEY_DECIMAL_MAX];
                pb_money_format_decimal(given, ii->currency, g, sizeof(g), NULL);
                pb_money_format_decimal(amount, ii->currency, a, sizeof(a), NULL);
                add_error(&ii->errs, "LineItems[%zu]: LineAmount %s does not equal Quantity x "
                          "UnitAmount rounded to the currency (%s)", i, g, a);
                continue;
            }
        }
        if (__builtin_add_overflow(sum, amount, &sum)) {
            add_error(&ii->errs, "The %s total is too large", ii->kind->lword);
            return;
        }
        json_object_set_new(li->doc, "TaxAmount", money_json(0, ii->currency));
        json_object_set_new(li->doc, "LineAmount", money_json(amount, ii->currency));
    }
    if (!ii->errs && sum < 0)
        add_error(&ii->errs, "The %s total cannot be negative", ii->kind->lword);
    ii->total = sum;
    ii->finalized = 1;
}

/* The head of an invoice or credit note: every member except those
 * render_invoice() adds from the record (number, contact, status, amounts
 * due, paid and credited, allocations, payments, dates of change). Returns
 * compact text without the closing brace. */
static char *invoice_head(const struct invoice_in *ii, const char *id, size_t *len)
{
    json_t *lines = json_array(), *doc;
    char *text;
    for (size_t i = 0; i < ii->n_lines; i++)
        json_array_append(lines, ii->lines[i].doc);
    if (ii->kind->credit)
        doc = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:o,s:o,s:o,s:o,s:s,s:s,s:b,s:b}", "Type",
                        ii->type, "CreditNoteID", id, "ID", id, "Reference",
                        ii->reference ? ii->reference : "", "Date", msdate(ii->date * 86400000),
                        "DateString", date_string(ii->date), "LineAmountTypes", ii->lat,
                        "LineItems", lines, "SubTotal", money_json(ii->total, ii->currency),
                        "TotalTax", money_json(0, ii->currency), "Total",
                        money_json(ii->total, ii->currency), "CurrencyCode", ii->currency,
                        "CurrencyRate", "1.000000", "HasErrors", 0, "HasAttachments", 0);
    else
        doc = json_pack("{s:s,s:s,s:s,s:o,s:o,s:o,s:o,s:s,s:o,s:o,s:o,s:o,s:s,s:s,"
                    "s:[],s:[],s:b,s:b,s:b,s:b}",
                    "Type", ii->type, "InvoiceID", id, "Reference",
                    ii->reference ? ii->reference : "", "Date", msdate(ii->date * 86400000),
                    "DateString", date_string(ii->date), "DueDate", msdate(ii->due * 86400000),
                    "DueDateString", date_string(ii->due), "LineAmountTypes", ii->lat,
                    "LineItems", lines, "SubTotal", money_json(ii->total, ii->currency),
                    "TotalTax", money_json(0, ii->currency), "Total",
                    money_json(ii->total, ii->currency), "CurrencyCode", ii->currency,
                    "CurrencyRate", "1.000000", "Prepayments", "Overpayments", "HasErrors", 0,
                    "IsDiscounted", 0, "HasAttachments", 0, "SentToContact",
                    json_is_true(json_object_get(ii->merged ? ii->merged : ii->src,
                                                 "SentToContact")));
    text = doc_text(doc, 1, len);
    json_decref(doc);
    return text;
}

static struct docs *docs_of(struct xero *x, const struct doc_kind *k)
{
    return &x->docs[k->store];
}

static int invoice_index(struct xero *x, struct invoice *inv)
{
    struct docs *d = docs_of(x, inv->kind);
    return hidx_add(&d->id, inv->id, inv) | hidx_add(&d->number, inv->number, inv) |
           hidx_add(&d->ref, inv->reference, inv) | hidx_add(&d->contact, inv->contact_id, inv);
}

/* 1 when an earlier record in `ix` has exactly `ref` (data held). */
static int ref_taken(const struct hidx *ix, const char *ref, const void *self)
{
    struct hent *h;
    if (!ref || !*ref)
        return 0;
    for (h = hidx_find(ix, ref); h; h = hidx_next(h, ref))
        if (h->rec != self && !strcmp(h->key, ref))
            return 1;
    return 0;
}

/* Numbers of the receivable type (ACCREC, ACCRECCREDIT) are unique within
 * their kind; payables carry the supplier's number, which may repeat. */
static int number_taken(struct xero *x, const struct doc_kind *k, const char *number,
                        const struct invoice *self)
{
    struct hent *h;
    for (h = hidx_find(&docs_of(x, k)->number, number); h; h = hidx_next(h, number)) {
        struct invoice *inv = h->rec;
        if (inv != self && !strcmp(inv->type, k->types[0]))
            return 1;
    }
    return 0;
}

/* Which status changes an update may make. */
static const char *transition_error(const struct invoice *old, const char *to)
{
    const char *from = old->status;
    if (!strcmp(from, to))
        return NULL;
    if (!strcmp(from, "DRAFT") || !strcmp(from, "SUBMITTED")) {
        if (!strcmp(to, "DRAFT") || !strcmp(to, "SUBMITTED") || !strcmp(to, "AUTHORISED") ||
            !strcmp(to, "DELETED"))
            return NULL;
    } else if (!strcmp(from, "AUTHORISED")) {
        if (!strcmp(to, "VOIDED")) {
            if (old->paid)
                return "This document cannot be voided as it has payments applied.";
            if (old->credited)
                return old->kind->credit ? "This document cannot be voided as it has been "
                                           "allocated to an invoice."
                                         : "This document cannot be voided as it has a credit "
                                           "note allocated to it.";
            return NULL;
        }
    }
    return "invalid";
}

/* Keys an update may carry once money has moved or the document is closed. */
static int only_light_keys(const struct doc_kind *k, json_t *e)
{
    static const char *const light[] = {"Reference", "Status", "DueDate", "SentToContact",
                                        "ExpectedPaymentDate", NULL};
    const char *key;
    json_t *v;
    json_object_foreach(e, key, v)
    {
        if (!one_of(key, light) && strcmp(key, k->id_key) && strcmp(key, k->number_key))
            return 0;
    }
    return 1;
}

/* Step 2 for one document (data held): resolve contact, number, update rules. */
static void invoice_resolve(struct call *c, struct invoice_in *ii, struct hidx *batch_numbers,
                            struct hidx *batch_contacts,
                            struct contact_in *pending_contacts, size_t *n_pending)
{
    struct xero *x = c->x;
    if (ii->errs)
        return;
    if (ii->contact_id[0]) {
        ii->contact = hidx_get(&x->c_id, ii->contact_id);
        if (!ii->contact) {
            add_error(&ii->errs, "The contact with ContactID %s could not be found.",
                      ii->contact_id);
            return;
        }
    } else if (ii->contact_name) {
        ii->contact = active_named(x, ii->contact_name, NULL);
        if (!ii->contact) {
            /* Xero creates a contact for an unknown name; share it in the batch. */
            ii->new_contact = hidx_get(batch_contacts, ii->contact_name);
            if (!ii->new_contact) {
                struct contact_in *pc = &pending_contacts[(*n_pending)++];
                pc->name = ii->contact_name;
                hidx_add(batch_contacts, pc->name, pc);
                ii->new_contact = pc;
            }
        }
    }
    if (ii->number) {
        if (!strcmp(ii->type, ii->kind->types[0]) &&
            (number_taken(x, ii->kind, ii->number, ii->target) ||
             hidx_find(batch_numbers, ii->number))) {
            add_error(&ii->errs, "%s # must be unique.", ii->kind->word);
            return;
        }
        hidx_add(batch_numbers, ii->number, ii);
    }
}

/* The next free INV-nnnn / CN-nnnn (data held). */
static void next_number(struct xero *x, const struct doc_kind *k, const struct hidx *batch,
                        char *buf, size_t len)
{
    struct docs *d = docs_of(x, k);
    do
        snprintf(buf, len, "%s%04u", k->number_prefix, ++d->counter);
    while (hidx_find(&d->number, buf) || hidx_find(batch, buf));
}

/* Step 2 commit of a new document (data held); takes ii->head. */
static void invoice_commit_new(struct call *c, struct invoice_in *ii, const struct hidx *batch)
{
    struct xero *x = c->x;
    struct docs *d = docs_of(x, ii->kind);
    struct invoice *inv = calloc(1, sizeof(*inv));
    struct contact *ct = ii->contact;
    char number[256] = "";
    if (!inv)
        goto oom;
    if (!ct && ii->new_contact) {
        struct contact_in *pc = ii->new_contact;
        if (!pc->target)    /* the first document to use it creates it */
            pc->target = contact_insert_named(x, pc->name, c->now_ms);
        ct = pc->target;
    }
    if (!ct)
        goto oom;
    if (ii->number)
        copy_str(number, sizeof(number), ii->number);
    else if (!strcmp(ii->type, ii->kind->types[0]))
        next_number(x, ii->kind, batch, number, sizeof(number));
    copy_str(inv->id, sizeof(inv->id), ii->new_id);
    inv->kind = ii->kind;
    inv->number = xstrdup(number);
    inv->reference = xstrdup(ii->reference);
    if (!inv->number || !inv->reference || vec_push(&d->recs, inv))
        goto oom;
    copy_str(inv->type, sizeof(inv->type), ii->type);
    copy_str(inv->status, sizeof(inv->status), ii->status);
    copy_str(inv->currency, sizeof(inv->currency), ii->currency);
    copy_str(inv->contact_id, sizeof(inv->contact_id), ct->id);
    inv->contact = ct;
    inv->total = inv->due = ii->total;
    inv->updated_ms = c->now_ms;
    inv->fully_paid_days = -1;
    inv->head = ii->head;
    inv->head_len = ii->head_len;
    ii->head = NULL;
    inv->seq = ++x->seq;
    if (ref_taken(&d->ref, inv->reference, inv))
        d->dup_refs++;
    invoice_index(x, inv);
    ii->saved = inv;
    return;
oom:
    if (inv) {
        free(inv->number);
        free(inv->reference);
    }
    free(inv);
    add_error(&ii->errs, "The sandbox ran out of memory saving this %s", ii->kind->lword);
}

/* The stored document as a JSON tree (data held). */
static json_t *invoice_tree(const struct invoice *inv)
{
    struct outbuf b = {0};
    json_t *j;
    render_invoice(&b, inv, 0);
    j = b.failed ? NULL : json_loadb(b.p, b.len, 0, NULL);
    free(b.p);
    return j;
}

/* Check an update of an existing document (data held): merge the stored doc
 * with the element and run the create checks on the merge, plus the rules
 * for closed and paid documents. Nothing changes until invoice_apply_update. */
static void invoice_prepare_update(const struct call *c, struct invoice_in *ii,
                                   struct hidx *batch_numbers)
{
    struct xero *x = c->x;
    struct invoice *old = ii->target;
    const struct doc_kind *k = ii->kind;
    int64_t settled = old->paid + old->credited;
    struct invoice_in *m;
    struct call cc = *c;
    const char *terr;
    if ((!strcmp(old->status, "PAID") || (!strcmp(old->status, "AUTHORISED") && settled)) &&
        !only_light_keys(k, ii->src)) {
        add_error(&ii->errs, "This document cannot be edited as it has a payment or credit note "
                  "allocated to it.");
        return;
    }
    if ((!strcmp(old->status, "VOIDED") || !strcmp(old->status, "DELETED")) &&
        !only_light_keys(k, ii->src)) {
        add_error(&ii->errs, "%s not of valid status for modification", k->word);
        return;
    }
    m = calloc(1, sizeof(*m));
    if (!m || !(m->merged = invoice_tree(old))) {
        free(m);
        add_error(&ii->errs, "out of memory");
        return;
    }
    m->kind = k;
    m->src = ii->src;
    json_object_update(m->merged, ii->src);
    /* Stored lines have at most 4 places: re-read them exactly, whatever the
     * unitdp of this request. */
    if (!json_object_get(ii->src, "LineItems"))
        cc.unitdp4 = 1;
    invoice_check(&cc, m, m->merged, 1);
    invoice_finalize(m);
    if (!m->errs && (terr = transition_error(old, m->status)) != NULL) {
        if (!strcmp(terr, "invalid"))
            add_error(&m->errs, "%s status cannot be changed from %s to %s", k->word,
                      old->status, m->status);
        else
            add_error(&m->errs, "%s", terr);
    }
    if (!m->errs && m->total < settled)
        add_error(&m->errs, "The %s total cannot be less than the amount already %s", k->lword,
                  k->credit ? "allocated or refunded" : "paid");
    if (!m->errs && m->number && strcmp(m->number, old->number)) {
        if (!strcmp(m->type, k->types[0]) &&
            (number_taken(x, k, m->number, old) || hidx_find(batch_numbers, m->number)))
            add_error(&m->errs, "%s # must be unique.", k->word);
        else
            hidx_add(batch_numbers, m->number, ii);
    }
    if (!m->errs) {
        ii->upd_ct = m->contact_id[0] ? hidx_get(&x->c_id, m->contact_id)
                                      : active_named(x, m->contact_name ? m->contact_name : "",
                                                     NULL);
        if (!ii->upd_ct)
            add_error(&m->errs, "The contact could not be found.");
    }
    if (!m->errs && !(m->head = invoice_head(m, old->id, &m->head_len)))
        add_error(&m->errs, "out of memory");
    if (m->errs) {
        ii->errs = m->errs;
        m->errs = NULL;
        invoice_in_free(m);
        free(m);
        return;
    }
    ii->upd = m;
}

/* Apply a prepared update (data held): swap the head, re-index. */
static void invoice_apply_update(const struct call *c, struct invoice_in *ii)
{
    struct xero *x = c->x;
    struct invoice *old = ii->target;
    struct docs *d = docs_of(x, old->kind);
    struct invoice_in *m = ii->upd;
    struct contact *ct = ii->upd_ct;
    int64_t due = m->total - old->paid - old->credited;
    const char *status = m->status;
    if (!strcmp(status, "AUTHORISED") && due == 0 && old->paid + old->credited > 0)
        status = "PAID";
    /* Keys leave their index before their record changes them. */
    hidx_del(&d->number, old->number, old);
    hidx_del(&d->ref, old->reference, old);
    hidx_del(&d->contact, old->contact_id, old);
    if (m->number)
        set_str(&old->number, m->number);
    if (strcmp(old->reference, m->reference ? m->reference : "") &&
        ref_taken(&d->ref, m->reference, old))
        d->dup_refs++;
    set_str(&old->reference, m->reference);
    copy_str(old->contact_id, sizeof(old->contact_id), ct->id);
    old->contact = ct;
    copy_str(old->status, sizeof(old->status), status);
    copy_str(old->type, sizeof(old->type), m->type);
    copy_str(old->currency, sizeof(old->currency), m->currency);
    old->total = m->total;
    old->due = due;
    old->updated_ms = c->now_ms;
    hidx_add(&d->number, old->number, old);
    hidx_add(&d->ref, old->reference, old);
    hidx_add(&d->contact, old->contact_id, old);
    free(old->head);
    old->head = m->head;
    old->head_len = m->head_len;
    m->head = NULL;
    ii->saved = old;
}

/* PUT (create) or POST (create or update) of invoices or credit notes;
 * `path_id`: POST /Invoices/{id} or /CreditNotes/{id}. */
static void invoices_write(struct call *c, const struct doc_kind *k, int is_put,
                           const char *path_id)
{
    struct xero *x = c->x;
    struct docs *d = docs_of(x, k);
    json_t *root, *arr = body_elements(c, k->envelope, &root);
    struct invoice_in *in;
    struct contact_in *pending;
    struct out_el *els;
    struct hidx batch_numbers = {0}, batch_contacts = {0};
    size_t n, i, n_pending = 0;
    int n_failed = 0;
    if (!arr)
        return;
    n = json_array_size(arr);
    if (path_id && n != 1) {
        json_decref(root);
        reply_exception(c->resp, 400, 14, "PostDataInvalidException",
                        "POST /%s/{%s} takes exactly one %s", k->envelope, k->id_key, k->lword);
        return;
    }
    in = calloc(n ? n : 1, sizeof(*in));
    pending = calloc(n ? n : 1, sizeof(*pending));
    els = calloc(n ? n : 1, sizeof(*els));
    if (!in || !pending || !els) {
        free(in);
        free(pending);
        free(els);
        json_decref(root);
        reply_problem(c->resp, 500, "InternalError", "out of memory");
        return;
    }
    /* Step 1: check creates and build their heads; elements that name an
     * existing document are checked in step 2, merged with it. */
    for (i = 0; i < n; i++) {
        struct invoice_in *ii = &in[i];
        json_t *e = json_array_get(arr, i);
        ii->kind = k;
        ii->src = e;
        if (path_id && json_is_object(e))
            json_object_set_new(e, k->id_key, json_string(path_id));
        if (json_is_object(e) && (json_object_get(e, k->id_key) ||
                                  (!is_put && json_is_string(json_object_get(e, k->number_key)))))
            continue;   /* maybe an update: decided under the lock */
        invoice_check(c, ii, e, 0);
        invoice_finalize(ii);
        if (!ii->errs) {
            new_uuid(ii->new_id);
            if (!(ii->head = invoice_head(ii, ii->new_id, &ii->head_len)))
                add_error(&ii->errs, "The sandbox ran out of memory");
        }
    }

    /* Step 2: resolve every element, then commit unless something failed
     * under summarizeErrors. */
    pthread_mutex_lock(&x->data);
    for (i = 0; i < n; i++) {
        struct invoice_in *ii = &in[i];
        json_t *e = ii->src;
        const char *id, *num;
        if (!ii->errs && !ii->finalized) {
            id = json_string_value(json_object_get(e, k->id_key));
            num = json_string_value(json_object_get(e, k->number_key));
            if (json_object_get(e, k->id_key)) {
                if (!id || !is_uuid_like(id))
                    add_error(&ii->errs, "%s must be a GUID", k->id_key);
                else if (!(ii->target = hidx_get(&d->id, id)))
                    add_error(&ii->errs, "%s with %s %s could not be found.", k->word,
                              k->id_key, id);
                else
                    invoice_prepare_update(c, ii, &batch_numbers);
                continue;
            }
            if (num && (ii->target = hidx_get(&d->number, num)) != NULL) {
                /* POST by number: an update */
                invoice_prepare_update(c, ii, &batch_numbers);
                continue;
            }
            /* A create after all (POST with a new number): step 1 here, rare. */
            invoice_check(c, ii, e, 0);
            invoice_finalize(ii);
            if (!ii->errs) {
                new_uuid(ii->new_id);
                if (!(ii->head = invoice_head(ii, ii->new_id, &ii->head_len)))
                    add_error(&ii->errs, "The sandbox ran out of memory");
            }
        }
        invoice_resolve(c, ii, &batch_numbers, &batch_contacts, pending, &n_pending);
    }
    for (i = 0; i < n; i++)
        n_failed += in[i].errs != NULL;
    if (!(n_failed && c->summarize)) {
        for (i = 0; i < n; i++) {
            struct invoice_in *ii = &in[i];
            if (ii->errs)
                continue;
            if (ii->upd)
                invoice_apply_update(c, ii);
            else
                invoice_commit_new(c, ii, &batch_numbers);
            if (ii->saved)
                out_el_render(&els[i], k->ent, ii->saved, !c->summarize);
            if (!els[i].text) {
                if (!ii->errs)
                    add_error(&ii->errs, "The sandbox ran out of memory");
                n_failed++;
            }
        }
    }
    pthread_mutex_unlock(&x->data);
    hidx_clear(&batch_numbers);
    hidx_clear(&batch_contacts);
    free(pending);

    /* Step 3: the reply. */
    for (i = 0; i < n; i++) {
        struct invoice_in *ii = &in[i];
        if (ii->errs)
            els[i].err = error_element(ii->src, ii->errs, "HasErrors");
        invoice_in_free(ii);
    }
    free(in);
    reply_write(c, k->envelope, els, n, n_failed);
    free(els);
    json_decref(root);
}

/* ==== Payments ============================================================ */

/* A payment is made on an invoice, or, as a refund ("cash refund" in Xero's
 * words), on a credit note: {"CreditNote":{"CreditNoteID"}} instead of
 * {"Invoice":{"InvoiceID"}}. Either way it reduces what the document has
 * left (AmountDue, RemainingCredit) and the document becomes PAID at zero. */
struct payment_in {
    json_t *src;                /* borrowed element */
    json_t *errs;               /* owned */
    const struct doc_kind *kind;/* what it is made on: KIND_INVOICE | KIND_CREDIT_NOTE */
    char doc_id[64];            /* InvoiceID / CreditNoteID, "" when given by number */
    const char *doc_number;     /* borrowed InvoiceNumber / CreditNoteNumber */
    const struct account *account;
    json_t *amount;             /* borrowed Amount as sent */
    int64_t date;
    const char *reference;      /* borrowed */
    char new_id[37];            /* PaymentID */
    char *head;                 /* owned: the members known before the lock, open text */
    size_t head_len;
    /* resolution */
    struct invoice *invoice;    /* the invoice or credit note */
    int64_t minor;
    struct payment *saved;
};

/* Read {"<Word>":{"<id_key>"|"<number_key>"}} or a top-level number of kind `k`
 * into pi; 1 when the element names a document of that kind. */
static int payment_target(struct payment_in *pi, json_t *e, const struct doc_kind *k,
                          const char *member)
{
    json_t *doc = json_object_get(e, member);
    const char *s;
    int bad = 0;
    if (json_is_object(doc)) {
        s = opt_str(doc, k->id_key, &bad);
        if (s && is_uuid_like(s))
            copy_str(pi->doc_id, sizeof(pi->doc_id), s);
        else if (s || bad)
            add_error(&pi->errs, "%s.%s must be a GUID", member, k->id_key);
        bad = 0;
        pi->doc_number = opt_str(doc, k->number_key, &bad);
    }
    if (!pi->doc_id[0] && !pi->doc_number)
        pi->doc_number = opt_str(e, k->number_key, &bad);
    if (pi->doc_id[0] || pi->doc_number || json_is_object(doc)) {
        pi->kind = k;
        return 1;
    }
    return 0;
}

static void payment_check(struct call *c, struct payment_in *pi)
{
    json_t *e = pi->src, *acc;
    const char *s;
    int bad = 0;
    if (!json_is_object(e)) {
        add_error(&pi->errs, "A payment must be a JSON object");
        return;
    }
    if (json_object_get(e, "Invoice") && json_object_get(e, "CreditNote")) {
        add_error(&pi->errs, "A payment is made on an Invoice or on a CreditNote, not both");
    } else if (!payment_target(pi, e, &KIND_INVOICE, "Invoice") &&
               !payment_target(pi, e, &KIND_CREDIT_NOTE, "CreditNote")) {
        pi->kind = &KIND_INVOICE;
    }
    if (!pi->doc_id[0] && !pi->doc_number && !pi->errs)
        add_error(&pi->errs, "Invoice must be specified by InvoiceID or InvoiceNumber (or, "
                  "for a refund, CreditNote by CreditNoteID or CreditNoteNumber)");
    acc = json_object_get(e, "Account");
    if (!json_is_object(acc)) {
        add_error(&pi->errs, "Account must be specified by Code or AccountID");
    } else {
        const char *code = opt_str(acc, "Code", &bad), *id = opt_str(acc, "AccountID", &bad);
        pi->account = id ? account_by_id(c->x, id) : code ? account_by_code(c->x, code) : NULL;
        if (!pi->account)
            add_error(&pi->errs, "Account could not be found");
        else if (strcmp(pi->account->type, "BANK") && !pi->account->payments_enabled)
            add_error(&pi->errs, "Payments can only be made to bank accounts or accounts with "
                      "EnablePaymentsToAccount set to true.");
    }
    bad = 0;
    pi->amount = json_object_get(e, "Amount");
    if (!pi->amount || json_is_null(pi->amount))
        add_error(&pi->errs, "Payment Amount must be specified");
    pi->date = c->now_ms / 86400000;
    s = opt_str(e, "Date", &bad);
    if (bad || (s && parse_date(s, &pi->date)))
        add_error(&pi->errs, "Date '%s' is not a valid date (expected YYYY-MM-DD)",
                  s ? s : "(not a string)");
    bad = 0;
    pi->reference = opt_str(e, "Reference", &bad);
    if (bad)
        add_error(&pi->errs, "Reference must be a string");
    else if (pi->reference && strlen(pi->reference) > NAME_MAX_LEN)
        add_error(&pi->errs, "Reference must be at most 255 characters");
    if (!pi->errs) {
        json_t *doc;
        new_uuid(pi->new_id);
        doc = json_pack("{s:s,s:o,s:o,s:s,s:s,s:s,s:b,s:b,s:b,s:{s:s,s:s,s:s}}", "PaymentID",
                        pi->new_id, "Date", msdate(pi->date * 86400000), "DateString",
                        date_string(pi->date), "Reference", pi->reference ? pi->reference : "",
                        "Status", "AUTHORISED", "CurrencyRate", "1.000000", "HasAccount", 1,
                        "IsReconciled", 0, "HasValidationErrors", 0, "Account", "AccountID",
                        pi->account->id, "Code", pi->account->code, "Name", pi->account->name);
        pi->head = doc_text(doc, 1, &pi->head_len);
        json_decref(doc);
        if (!pi->head)
            add_error(&pi->errs, "The sandbox ran out of memory");
    }
}

/* The payment's type from the document's: Xero's PaymentType enum. */
static const char *payment_type(const struct invoice *inv)
{
    if (!strcmp(inv->type, "ACCPAY"))
        return "ACCPAYPAYMENT";
    if (!strcmp(inv->type, "ACCRECCREDIT"))
        return "ARCREDITPAYMENT";
    if (!strcmp(inv->type, "ACCPAYCREDIT"))
        return "APCREDITPAYMENT";
    return "ACCRECPAYMENT";
}

/* Grow a document's array of borrowed pointers by one slot; -1 when out of
 * memory. */
static int grow_ptrs(void ***arr, size_t n, size_t *cap)
{
    if (n == *cap) {
        size_t nc = *cap ? *cap * 2 : 2;
        void **np = realloc(*arr, nc * sizeof(*np));
        if (!np)
            return -1;
        *arr = np;
        *cap = nc;
    }
    return 0;
}

/* Take `minor` off what a document has left (data held): PAID at zero. */
static void settle(struct invoice *inv, int64_t minor, int64_t date, int64_t now_ms)
{
    inv->due -= minor;
    inv->updated_ms = now_ms;
    if (inv->due == 0) {
        copy_str(inv->status, sizeof(inv->status), "PAID");
        inv->fully_paid_days = date;
    }
}

/* Apply a payment to its invoice or credit note and create the record (data
 * held). The document is the head from step 1 plus what only the state
 * knows, written as text: no JSON library work here. */
static void payment_commit(struct call *c, struct payment_in *pi)
{
    struct xero *x = c->x;
    struct invoice *inv = pi->invoice;
    int credit = inv->kind->credit;
    struct payment *p = calloc(1, sizeof(*p));
    const char *type = payment_type(inv);
    int64_t paid = inv->paid + pi->minor, due = inv->due - pi->minor;
    struct outbuf b = {0};

    if (!p || !(p->reference = xstrdup(pi->reference)) ||
        !(p->invoice_number = xstrdup(credit ? "" : inv->number)))
        goto oom;
    if (grow_ptrs((void ***)&inv->pays, inv->n_pays, &inv->cap_pays))
        goto oom;
    copy_str(p->id, sizeof(p->id), pi->new_id);
    copy_str(credit ? p->credit_note_id : p->invoice_id, 37, inv->id);
    copy_str(p->status, sizeof(p->status), "AUTHORISED");
    copy_str(p->type, sizeof(p->type), type);
    copy_str(p->currency, sizeof(p->currency), inv->currency);
    p->amount = pi->minor;
    p->date = pi->date;

    out_add(&b, pi->head, pi->head_len);
    out_str(&b, ",\"Amount\":");
    out_money(&b, pi->minor, inv->currency);
    out_str(&b, ",\"BankAmount\":");
    out_money(&b, pi->minor, inv->currency);
    out_str(&b, ",\"CurrencyCode\":\"");
    out_str(&b, inv->currency);
    out_str(&b, "\",\"PaymentType\":\"");
    out_str(&b, type);
    out_str(&b, "\",\"UpdatedDateUTC\":");
    out_msdate(&b, c->now_ms);
    out_str(&b, credit ? ",\"CreditNote\":{\"Type\":\"" : ",\"Invoice\":{\"Type\":\"");
    out_str(&b, inv->type);
    out_str(&b, credit ? "\",\"CreditNoteID\":\"" : "\",\"InvoiceID\":\"");
    out_str(&b, inv->id);
    out_str(&b, credit ? "\",\"CreditNoteNumber\":" : "\",\"InvoiceNumber\":");
    out_jstr(&b, inv->number);
    out_str(&b, ",\"Reference\":");
    out_jstr(&b, inv->reference);
    out_str(&b, ",\"Status\":\"");
    out_str(&b, due == 0 ? "PAID" : inv->status);
    out_str(&b, "\",\"Contact\":");
    render_contact_ref(&b, inv->contact);
    out_str(&b, ",\"Total\":");
    out_money(&b, inv->total, inv->currency);
    if (credit) {
        out_str(&b, ",\"RemainingCredit\":");
        out_money(&b, due, inv->currency);
    } else {
        out_str(&b, ",\"AmountDue\":");
        out_money(&b, due, inv->currency);
        out_str(&b, ",\"AmountPaid\":");
        out_money(&b, paid, inv->currency);
    }
    out_str(&b, ",\"CurrencyCode\":\"");
    out_str(&b, inv->currency);
    out_str(&b, "\"}}");
    if (b.failed || vec_push(&x->payments, p))
        goto oom;
    p->text = b.p;
    p->len = b.len;
    p->seq = ++x->seq;
    if (ref_taken(&x->p_ref, p->reference, p))
        x->dup_payment_refs++;
    hidx_add(&x->p_id, p->id, p);
    hidx_add(&x->p_ref, p->reference, p);
    hidx_add(&x->p_invoice, p->invoice_id, p);
    hidx_add(&x->p_credit_note, p->credit_note_id, p);
    inv->pays[inv->n_pays++] = p;
    inv->paid = paid;
    settle(inv, pi->minor, pi->date, c->now_ms);
    pi->saved = p;
    return;
oom:
    free(b.p);
    if (p) {
        free(p->reference);
        free(p->invoice_number);
        free(p);
    }
    add_error(&pi->errs, "The sandbox ran out of memory saving this payment");
}

/* Amounts already claimed on a document by earlier elements of the batch. */
struct claim {
    const char *key;            /* the document's id, borrowed */
    int64_t minor;
};

/* The claim on `inv` in `batch`, added from `claims` when new (data held). */
static struct claim *claim_of(struct hidx *batch, struct claim *claims, size_t *n_claims,
                              struct invoice *inv)
{
    struct claim *cl = hidx_get(batch, inv->id);
    if (!cl) {
        cl = &claims[(*n_claims)++];
        cl->key = inv->id;
        cl->minor = 0;
        hidx_add(batch, cl->key, cl);
    }
    return cl;
}

static void payments_write(struct call *c, int single)
{
    struct xero *x = c->x;
    json_t *root, *arr = body_elements(c, "Payments", &root);
    struct payment_in *in;
    struct out_el *els;
    struct claim *claims;
    struct hidx batch = {0};
    size_t n, i, n_claims = 0;
    int n_failed = 0;
    if (!arr)
        return;
    n = json_array_size(arr);
    if (single && n != 1) {
        json_decref(root);
        reply_exception(c->resp, 400, 14, "PostDataInvalidException",
                        "POST /Payments takes a single payment; use PUT /Payments for a batch");
        return;
    }
    in = calloc(n ? n : 1, sizeof(*in));
    claims = calloc(n ? n : 1, sizeof(*claims));
    els = calloc(n ? n : 1, sizeof(*els));
    if (!in || !claims || !els) {
        free(in);
        free(claims);
        free(els);
        json_decref(root);
        reply_problem(c->resp, 500, "InternalError", "out of memory");
        return;
    }
    for (i = 0; i < n; i++) {
        in[i].src = json_array_get(arr, i);
        payment_check(c, &in[i]);
    }

    pthread_mutex_lock(&x->data);
    for (i = 0; i < n; i++) {
        struct payment_in *pi = &in[i];
        struct docs *d;
        struct pb_err err = {0};
        struct claim *cl;
        if (pi->errs)
            continue;
        d = docs_of(x, pi->kind);
        pi->invoice = pi->doc_id[0] ? hidx_get(&d->id, pi->doc_id)
                                    : hidx_get(&d->number, pi->doc_number);
        if (!pi->invoice) {
            add_error(&pi->errs, "%s could not be found", pi->kind->word);
            continue;
        }
        if (strcmp(pi->invoice->status, "AUTHORISED") != 0) {
            add_error(&pi->errs, "%s not of valid status for creation of a payment.",
                      pi->kind->word);
            continue;
        }
        if (pb_json_to_minor(pi->amount, pi->invoice->currency, &pi->minor, &err) != PB_OK) {
            add_error(&pi->errs, "Payment Amount: %s", err.msg);
            continue;
        }
        if (pi->minor <= 0) {
            add_error(&pi->errs, "Payment amount must be greater than zero.");
            continue;
        }
        cl = claim_of(&batch, claims, &n_claims, pi->invoice);
        if (pi->minor > pi->invoice->due - cl->minor) {
            add_error(&pi->errs, "Payment amount exceeds the amount outstanding on this document.");
            continue;
        }
        cl->minor += pi->minor;
    }
    for (i = 0; i < n; i++)
        n_failed += in[i].errs != NULL;
    if (!(n_failed && c->summarize)) {
        for (i = 0; i < n; i++) {
            if (in[i].errs)
                continue;
            payment_commit(c, &in[i]);
            if (in[i].saved)
                out_el_render(&els[i], E_PAYMENT, in[i].saved, !c->summarize);
            if (!els[i].text) {
                if (!in[i].errs)
                    add_error(&in[i].errs, "The sandbox ran out of memory");
                n_failed++;
            }
        }
    }
    pthread_mutex_unlock(&x->data);
    hidx_clear(&batch);
    free(claims);

    for (i = 0; i < n; i++) {
        struct payment_in *pi = &in[i];
        if (pi->errs)
            els[i].err = error_element(pi->src, pi->errs, "HasValidationErrors");
        json_decref(pi->errs);
        free(pi->head);
    }
    free(in);
    reply_write(c, "Payments", els, n, n_failed);
    free(els);
    json_decref(root);
}

/* ==== Allocations ========================================================= */

/* PUT /CreditNotes/{CreditNoteID}/Allocations {"Allocations":[{"Invoice":
 * {"InvoiceID"},"Amount","Date"}]}: apply credit to invoices of the same
 * contact, type (ACCRECCREDIT to ACCREC) and currency. An allocation may take
 * at most what the credit note has left and what the invoice still owes;
 * both drop by it, and either becomes PAID at zero. A fully paid invoice
 * takes none ("has already been paid off"): the refund of a paid invoice is
 * a payment on the credit note instead (payments_write).
 *
 * Xero's words where known: "The invoice you are trying to allocate to has
 * already been paid off" and "Credit Note cannot be allocated as amount is
 * greater than amount outstanding" (Xero gives the latter for the invoice's
 * amount due and for the credit note's remaining credit alike); the others
 * are the sandbox's. */
struct allocation_in {
    json_t *src;                /* borrowed element */
    json_t *errs;               /* owned */
    char invoice_id[64];
    const char *invoice_number; /* borrowed */
    json_t *amount;             /* borrowed */
    int64_t date;
    /* resolution */
    struct invoice *invoice;
    int64_t minor;
    struct allocation *saved;
};

static void allocation_check(struct call *c, struct allocation_in *ai)
{
    json_t *e = ai->src, *inv;
    const char *s;
    int bad = 0;
    if (!json_is_object(e)) {
        add_error(&ai->errs, "An allocation must be a JSON object");
        return;
    }
    inv = json_object_get(e, "Invoice");
    if (json_is_object(inv)) {
        s = opt_str(inv, "InvoiceID", &bad);
        if (s && is_uuid_like(s))
            copy_str(ai->invoice_id, sizeof(ai->invoice_id), s);
        else if (s || bad)
            add_error(&ai->errs, "Invoice.InvoiceID must be a GUID");
        bad = 0;
        ai->invoice_number = opt_str(inv, "InvoiceNumber", &bad);
    }
    if (!ai->invoice_id[0] && !ai->invoice_number && !ai->errs)
        add_error(&ai->errs, "Invoice must be specified by InvoiceID or InvoiceNumber");
    ai->amount = json_object_get(e, "Amount");
    if (!ai->amount || json_is_null(ai->amount))
        add_error(&ai->errs, "Allocation Amount must be specified");
    bad = 0;
    s = opt_str(e, "Date", &bad);
    ai->date = c->now_ms / 86400000;
    if (bad || !s)
        add_error(&ai->errs, "Allocation Date must be specified (YYYY-MM-DD)");
    else if (parse_date(s, &ai->date))
        add_error(&ai->errs, "Date '%s' is not a valid date (expected YYYY-MM-DD)", s);
}

/* Step 2 for one allocation (data held). */
static void allocation_resolve(struct xero *x, struct invoice *cn, struct allocation_in *ai,
                               struct hidx *batch, struct claim *claims, size_t *n_claims)
{
    struct docs *d = docs_of(x, &KIND_INVOICE);
    struct pb_err err = {0};
    struct claim *on_cn, *on_inv;
    struct invoice *inv;
    if (ai->errs)
        return;
    inv = ai->invoice = ai->invoice_id[0] ? hidx_get(&d->id, ai->invoice_id)
                                          : hidx_get(&d->number, ai->invoice_number);
    if (!inv) {
        add_error(&ai->errs, "Invoice could not be found");
        return;
    }
    if (strcmp(cn->status, "AUTHORISED") && strcmp(cn->status, "PAID")) {
        add_error(&ai->errs, "Only an AUTHORISED credit note can be allocated (this one is %s)",
                  cn->status);
        return;
    }
    if (strcmp(inv->type, !strcmp(cn->type, "ACCRECCREDIT") ? "ACCREC" : "ACCPAY")) {
        add_error(&ai->errs, "Credit Note cannot be allocated to an incorrect invoice type");
        return;
    }
    if (strcmp(inv->contact_id, cn->contact_id)) {
        add_error(&ai->errs, "The credit note and the invoice must be for the same contact");
        return;
    }
    if (strcmp(inv->currency, cn->currency)) {
        add_error(&ai->errs, "The credit note (%s) and the invoice (%s) must be in the same "
                  "currency", cn->currency, inv->currency);
        return;
    }
    if (pb_json_to_minor(ai->amount, cn->currency, &ai->minor, &err) != PB_OK) {
        add_error(&ai->errs, "Allocation Amount: %s", err.msg);
        return;
    }
    if (ai->minor <= 0) {
        add_error(&ai->errs, "Allocation amount must be greater than zero.");
        return;
    }
    on_inv = claim_of(batch, claims, n_claims, inv);
    on_cn = claim_of(batch, claims, n_claims, cn);
    if (!strcmp(inv->status, "PAID")) {
        add_error(&ai->errs, "The invoice you are trying to allocate to has already been paid "
                  "off");
        add_error(&ai->errs, "Credit Note cannot be allocated as amount is greater than amount "
                  "outstanding");
        return;
    }
    if (strcmp(inv->status, "AUTHORISED")) {
        add_error(&ai->errs, "Invoice not of valid status for allocation (it is %s)",
                  inv->status);
        return;
    }
    if (ai->minor > inv->due - on_inv->minor || ai->minor > cn->due - on_cn->minor) {
        add_error(&ai->errs, "Credit Note cannot be allocated as amount is greater than amount "
                  "outstanding");
        return;
    }
    on_inv->minor += ai->minor;
    on_cn->minor += ai->minor;
}

/* Create the allocation and apply it to both documents (data held). */
static void allocation_commit(struct call *c, struct invoice *cn, struct allocation_in *ai)
{
    struct xero *x = c->x;
    struct invoice *inv = ai->invoice;
    struct allocation *a = calloc(1, sizeof(*a));
    if (!a || grow_ptrs((void ***)&cn->allocs, cn->n_allocs, &cn->cap_allocs) ||
        grow_ptrs((void ***)&inv->allocs, inv->n_allocs, &inv->cap_allocs) ||
        vec_push(&x->allocations, a)) {
        free(a);
        add_error(&ai->errs, "The sandbox ran out of memory saving this allocation");
        return;
    }
    new_uuid(a->id);
    a->credit_note = cn;
    a->invoice = inv;
    a->amount = ai->minor;
    a->date = ai->date;
    cn->allocs[cn->n_allocs++] = a;
    inv->allocs[inv->n_allocs++] = a;
    cn->credited += ai->minor;
    inv->credited += ai->minor;
    settle(cn, ai->minor, ai->date, c->now_ms);
    settle(inv, ai->minor, ai->date, c->now_ms);
    ai->saved = a;
}

/* An allocation as its own reply element (data held). */
static void allocation_render(struct out_el *o, const struct allocation *a, int ok)
{
    struct outbuf b = {0};
    const struct invoice *cn = a->credit_note, *inv = a->invoice;
    out_str(&b, "{\"AllocationID\":\"");
    out_str(&b, a->id);
    out_str(&b, "\",\"Amount\":");
    out_money(&b, a->amount, cn->currency);
    out_str(&b, ",\"Date\":");
    out_msdate(&b, a->date * 86400000);
    out_str(&b, ",\"Invoice\":{\"InvoiceID\":\"");
    out_str(&b, inv->id);
    out_str(&b, "\",\"InvoiceNumber\":");
    out_jstr(&b, inv->number);
    out_str(&b, ",\"Status\":\"");
    out_str(&b, inv->status);
    out_str(&b, "\",\"AmountDue\":");
    out_money(&b, inv->due, inv->currency);
    out_str(&b, ",\"AmountCredited\":");
    out_money(&b, inv->credited, inv->currency);
    out_str(&b, "},\"CreditNote\":{\"CreditNoteID\":\"");
    out_str(&b, cn->id);
    out_str(&b, "\",\"ID\":\"");
    out_str(&b, cn->id);
    out_str(&b, "\",\"CreditNoteNumber\":");
    out_jstr(&b, cn->number);
    out_str(&b, ",\"Status\":\"");
    out_str(&b, cn->status);
    out_str(&b, "\",\"RemainingCredit\":");
    out_money(&b, cn->due, cn->currency);
    out_str(&b, "}");
    if (ok)
        out_str(&b, ",\"StatusAttributeString\":\"OK\"");
    out_str(&b, "}");
    if (b.failed) {
        free(b.p);
        return;
    }
    o->text = b.p;
    o->len = b.len;
}

static void allocations_write(struct call *c, const char *cn_id)
{
    struct xero *x = c->x;
    json_t *root, *arr = body_elements(c, "Allocations", &root);
    struct allocation_in *in;
    struct out_el *els;
    struct claim *claims;
    struct hidx batch = {0};
    struct invoice *cn;
    size_t n, i, n_claims = 0;
    int n_failed = 0;
    if (!arr)
        return;
    n = json_array_size(arr);
    in = calloc(n ? n : 1, sizeof(*in));
    claims = calloc(2 * n + 1, sizeof(*claims));
    els = calloc(n ? n : 1, sizeof(*els));
    if (!in || !claims || !els) {
        free(in);
        free(claims);
        free(els);
        json_decref(root);
        reply_problem(c->resp, 500, "InternalError", "out of memory");
        return;
    }
    for (i = 0; i < n; i++) {
        in[i].src = json_array_get(arr, i);
        allocation_check(c, &in[i]);
    }

    pthread_mutex_lock(&x->data);
    cn = is_uuid_like(cn_id) ? hidx_get(&docs_of(x, &KIND_CREDIT_NOTE)->id, cn_id) : NULL;
    for (i = 0; cn && i < n; i++)
        allocation_resolve(x, cn, &in[i], &batch, claims, &n_claims);
    for (i = 0; i < n; i++)
        n_failed += in[i].errs != NULL;
    if (cn && !(n_failed && c->summarize)) {
        for (i = 0; i < n; i++) {
            if (in[i].errs)
                continue;
            allocation_commit(c, cn, &in[i]);
            if (in[i].saved)
                allocation_render(&els[i], in[i].saved, !c->summarize);
            if (!els[i].text) {
                if (!in[i].errs)
                    add_error(&in[i].errs, "The sandbox ran out of memory");
                n_failed++;
            }
        }
    }
    pthread_mutex_unlock(&x->data);
    hidx_clear(&batch);
    free(claims);

    for (i = 0; i < n; i++) {
        struct allocation_in *ai = &in[i];
        if (ai->errs)
            els[i].err = error_element(ai->src, ai->errs, "HasValidationErrors");
        json_decref(ai->errs);
    }
    free(in);
    if (!cn) {
        for (i = 0; i < n; i++) {
            free(els[i].text);
            json_decref(els[i].err);
        }
        reply_not_found(c->resp);
    } else {
        reply_write(c, "Allocations", els, n, n_failed);
    }
    free(els);
    json_decref(root);
}

/* ==== Payment delete ====================================================== */

/* Take a payment off its invoice or credit note (data held): the amount goes
 * back onto AmountDue / RemainingCredit, a PAID document is AUTHORISED
 * again, and the payment leaves the document's Payments list. */
static void payment_unapply(struct xero *x, struct payment *p, int64_t now)
{
    int credit = p->credit_note_id[0] != '\0';
    struct docs *d = docs_of(x, credit ? &KIND_CREDIT_NOTE : &KIND_INVOICE);
    struct invoice *inv = hidx_get(&d->id, credit ? p->credit_note_id : p->invoice_id);
    size_t i, k;
    if (!inv)
        return;
    inv->paid -= p->amount;
    inv->due += p->amount;
    inv->updated_ms = now;
    if (!strcmp(inv->status, "PAID")) {
        copy_str(inv->status, sizeof(inv->status), "AUTHORISED");
        inv->fully_paid_days = -1;
    }
    for (i = k = 0; i < inv->n_pays; i++)
        if (inv->pays[i] != p)
            inv->pays[k++] = inv->pays[i];
    inv->n_pays = k;
}

/* The stored payment text with its own Status (the first "Status" member:
 * the head is written before the Invoice / CreditNote it names) set to
 * `status`; 0, or -1 when out of memory (data held). */
static int payment_set_status(struct payment *p, const char *status)
{
    static const char pat[] = "\"Status\":\"AUTHORISED\"";
    char *at = strstr(p->text, pat);
    struct outbuf b = {0};
    if (!at)
        return 0;
    out_add(&b, p->text, (size_t)(at - p->text));
    out_str(&b, "\"Status\":\"");
    out_str(&b, status);
    out_str(&b, "\"");
    out_str(&b, at + sizeof(pat) - 1);
    if (b.failed) {
        free(b.p);
        return -1;
    }
    free(p->text);
    p->text = b.p;
    p->len = b.len;
    copy_str(p->status, sizeof(p->status), status);
    return 0;
}

/* POST /Payments/{PaymentID} {"Status":"DELETED"} (PaymentDelete; also in a
 * {"Payments":[...]} envelope): the only change Xero allows to a payment.
 * The payment stays listed, with Status DELETED. */
static void payment_delete(struct call *c, const char *id)
{
    struct xero *x = c->x;
    json_t *root, *e, *errs = NULL;
    struct out_el el = {0};
    struct payment *p;
    const char *status;
    int bad = 0;
    e = update_element(c, "Payments", "POST /Payments/{PaymentID} takes one {\"Status\":\"DELETED\"}",
                       &root);
    if (!e)
        return;
    status = json_is_object(e) ? opt_str(e, "Status", &bad) : NULL;
    if (!status || strcasecmp(status, "DELETED") != 0)
        add_error(&errs, "A payment can only be deleted: send {\"Status\":\"DELETED\"}");
    pthread_mutex_lock(&x->data);
    p = hidx_get(&x->p_id, id);
    if (p && !errs && !strcmp(p->status, "DELETED"))
        add_error(&errs, "Payment has already been deleted");
    if (p && !errs) {
        if (payment_set_status(p, "DELETED"))
            add_error(&errs, "The sandbox ran out of memory");
        else
            payment_unapply(x, p, c->now_ms);
    }
    if (p && !errs)
        out_el_render(&el, E_PAYMENT, p, !c->summarize);
    pthread_mutex_unlock(&x->data);
    reply_update(c, "Payments", p != NULL, e, errs, &el, root);
}

/* ==== BankTransactions ==================================================== */

/* Spend and receive money on a bank account, not tied to an invoice: what
 * a merchant books by hand (a card receipt typed in from the bank feed, a
 * refund paid out). Create with PUT (or POST) /BankTransactions; the only
 * update is POST /BankTransactions/{id} with Status DELETED or VOIDED.
 * Lines: Quantity (whole, default 1) x UnitAmount (or LineAmount), tax NONE;
 * Total = the sum, in CurrencyCode (default the base currency). */
static const char *const BANK_TYPES[] = {
    "RECEIVE", "RECEIVE-OVERPAYMENT", "RECEIVE-PREPAYMENT", "SPEND", "SPEND-OVERPAYMENT",
    "SPEND-PREPAYMENT", "RECEIVE-TRANSFER", "SPEND-TRANSFER", NULL};

struct bank_in {
    json_t *src;                /* borrowed element */
    json_t *errs;               /* owned */
    char type[24];
    char contact_id[64];        /* "" when named */
    const char *contact_name;   /* borrowed */
    const struct account *account;
    char currency[4];
    const char *reference;      /* borrowed */
    int64_t date, total;
    char new_id[37];
    char *head;                 /* owned, open */
    size_t head_len;
    struct contact *contact;    /* resolved */
};

static json_t *money_text(int64_t minor, const char *currency)
{
    char buf[PB_MONEY_DECIMAL_MAX];
    if (pb_money_format_decimal(minor, currency, buf, sizeof(buf), NULL) != PB_OK)
        return NULL;
    return json_string(buf);
}

/* The element's LineItems as stored, summing bi->total; NULL after errors. */
static json_t *bank_lines(struct call *c, struct bank_in *bi, json_t *items)
{
    json_t *out = json_array(), *li;
    size_t i;
    if (!json_is_array(items) || json_array_size(items) == 0) {
        add_error(&bi->errs, "LineItems must be specified: at least one line");
        json_decref(out);
        return NULL;
    }
    bi->total = 0;
    json_array_foreach(items, i, li) {
        const struct account *acc;
        const char *code, *desc;
        int64_t qty = 1, unit = 0, amount;
        struct pb_err err = {0};
        int bad = 0;
        char lid[37];
        if (!json_is_object(li)) {
            add_error(&bi->errs, "LineItems[%zu] must be an object", i);
            continue;
        }
        code = opt_str(li, "AccountCode", &bad);
        desc = opt_str(li, "Description", &bad);
        acc = code ? account_by_code(c->x, code) : NULL;
        if (!code)
            add_error(&bi->errs, "LineItems[%zu]: AccountCode must be specified", i);
        else if (!acc)
            add_error(&bi->errs, "Account code '%s' is not a valid code for this document.", code);
        else if (!strcmp(acc->type, "BANK"))
            add_error(&bi->errs, "Account code '%s' is a bank account and cannot be used on a "
                      "line item; money between bank accounts is a bank transfer", acc->code);
        if (json_object_get(li, "Quantity") &&
            (json_dec(json_object_get(li, "Quantity"), 0, 0, &qty) != DEC_OK || qty <= 0))
            add_error(&bi->errs, "LineItems[%zu]: the sandbox takes a whole, positive Quantity "
                      "on bank transactions", i);
        if (json_object_get(li, "UnitAmount")) {
            if (pb_json_to_minor(json_object_get(li, "UnitAmount"), bi->currency, &unit, &err))
                add_error(&bi->errs, "LineItems[%zu].UnitAmount: %s", i, err.msg);
        } else if (json_object_get(li, "LineAmount")) {
            if (pb_json_to_minor(json_object_get(li, "LineAmount"), bi->currency, &unit, &err))
                add_error(&bi->errs, "LineItems[%zu].LineAmount: %s", i, err.msg);
            qty = 1;
        } else {
            add_error(&bi->errs, "LineItems[%zu]: UnitAmount must be specified", i);
        }
        if (bi->errs)
            continue;
        if (pb_money_mul_i64(unit, qty, &amount) || pb_money_add(bi->total, amount, &bi->total)) {
            add_error(&bi->errs, "LineItems[%zu]: the amount is too large", i);
            continue;
        }
        new_uuid(lid);
        json_array_append_new(
            out, json_pack("{s:s,s:s,s:s,s:o*,s:s,s:s,s:o*,s:o*,s:o*}", "LineItemID", lid,
                           "Description", desc ? desc : "", "Quantity", qty == 1 ? "1.0000" : "",
                           "UnitAmount", money_text(unit, bi->currency), "AccountCode", acc->code,
                           "TaxType", "NONE", "TaxAmount", money_text(0, bi->currency),
                           "LineAmount", money_text(amount, bi->currency), "AccountID",
                           json_string(acc->id)));
        if (qty != 1) {
            char q[32];
            snprintf(q, sizeof(q), "%" PRId64 ".0000", qty);
            json_object_set_new(json_array_get(out, json_array_size(out) - 1), "Quantity",
                                json_string(q));
        }
    }
    if (bi->errs) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* The stored head of a bank transaction (open: no closing brace); takes
 * `lines`. NULL when out of memory. */
static char *bank_head(const char *id, const char *type, const struct account *acc, int64_t date,
                       const char *reference, const char *currency, json_t *lines, int64_t total,
                       size_t *len)
{
    json_t *doc = json_pack(
        "{s:s,s:s,s:{s:s,s:s,s:s},s:o,s:o,s:s,s:s,s:s,s:s,s:o,s:o*,s:o*,s:o*,s:b,s:b}",
        "BankTransactionID", id, "Type", type, "BankAccount", "AccountID", acc->id, "Code",
        acc->code, "Name", acc->name, "Date", msdate(date * 86400000), "DateString",
        date_string(date), "Reference", reference ? reference : "", "CurrencyCode", currency,
        "CurrencyRate", "1.000000", "LineAmountTypes", "NoTax", "LineItems", lines, "SubTotal",
        money_text(total, currency), "TotalTax", money_text(0, currency), "Total",
        money_text(total, currency), "IsReconciled", 0, "HasAttachments", 0);
    char *head = doc_text(doc, 1, len);
    json_decref(doc);
    return head;
}

static void bank_check(struct call *c, void *in)
{
    struct bank_in *bi = in;
    json_t *e = bi->src, *contact, *acc, *lines;
    const char *s;
    int bad = 0;
    if (create_only_element(e, "bank transaction", "BankTransactionID",
                            "The sandbox creates bank transactions only; change one's Status "
                            "with POST /BankTransactions/{BankTransactionID}",
                            &bi->errs))
        return;
    s = opt_str(e, "Type", &bad);
    if (!s || !one_of(s, BANK_TYPES))
        add_error(&bi->errs, "Type must be one of RECEIVE, SPEND, RECEIVE-OVERPAYMENT, "
                  "RECEIVE-PREPAYMENT, SPEND-OVERPAYMENT, SPEND-PREPAYMENT, RECEIVE-TRANSFER, "
                  "SPEND-TRANSFER");
    else
        copy_str(bi->type, sizeof(bi->type), s);
    contact = json_object_get(e, "Contact");
    bad = 0;
    if (json_is_object(contact)) {
        s = opt_str(contact, "ContactID", &bad);
        if (s && is_uuid_like(s))
            copy_str(bi->contact_id, sizeof(bi->contact_id), s);
        else if (s || bad)
            add_error(&bi->errs, "Contact.ContactID must be a GUID");
        bi->contact_name = opt_str(contact, "Name", &bad);
    }
    if (!bi->contact_id[0] && !bi->contact_name)
        add_error(&bi->errs, "A Contact must be specified for this type of transaction");
    acc = json_object_get(e, "BankAccount");
    bad = 0;
    if (!json_is_object(acc)) {
        add_error(&bi->errs, "BankAccount must be specified by Code or AccountID");
    } else {
        const char *code = opt_str(acc, "Code", &bad), *id = opt_str(acc, "AccountID", &bad);
        bi->account = id ? account_by_id(c->x, id) : code ? account_by_code(c->x, code) : NULL;
        if (!bi->account)
            add_error(&bi->errs, "BankAccount could not be found");
        else if (strcmp(bi->account->type, "BANK") != 0)
            add_error(&bi->errs, "Account code '%s' is not a bank account", bi->account->code);
    }
    bad = 0;
    s = opt_str(e, "CurrencyCode", &bad);
    copy_str(bi->currency, sizeof(bi->currency), s ? s : c->x->base_currency);
    if (bad || (s && (strlen(s) != 3 || !currency_enabled(c->x, s))))
        add_error(&bi->errs, "The currency '%s' is not enabled for this organisation",
                  s ? s : "(not text)");
    element_date(c, e, &bi->date, &bi->errs);
    bi->reference = element_reference(e, &bi->errs);
    bad = 0;
    s = opt_str(e, "Status", &bad);
    if (bad || (s && strcasecmp(s, "AUTHORISED") != 0))
        add_error(&bi->errs, "A new bank transaction can only be AUTHORISED");
    if (bi->errs)
        return;
    lines = bank_lines(c, bi, json_object_get(e, "LineItems"));
    if (!lines)
        return;
    if (bi->total <= 0) {
        json_decref(lines);
        add_error(&bi->errs, "The total of a bank transaction must be greater than zero");
        return;
    }
    new_uuid(bi->new_id);
    bi->head = bank_head(bi->new_id, bi->type, bi->account, bi->date, bi->reference, bi->currency,
                         lines, bi->total, &bi->head_len);
    if (!bi->head)
        add_error(&bi->errs, "The sandbox ran out of memory");
}

/* Resolve the contact and save (data held). */
static const void *bank_commit(struct call *c, void *in)
{
    struct bank_in *bi = in;
    struct xero *x = c->x;
    struct bank_txn *t;
    if (bi->contact_id[0]) {
        bi->contact = hidx_get(&x->c_id, bi->contact_id);
        if (!bi->contact) {
            add_error(&bi->errs, "Contact could not be found");
            return NULL;
        }
    } else if (!(bi->contact = active_named(x, bi->contact_name, NULL)) &&
               !(bi->contact = contact_insert_named(x, bi->contact_name, c->now_ms))) {
        add_error(&bi->errs, "The sandbox ran out of memory");
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (!t || !(t->reference = xstrdup(bi->reference)) || vec_push(&x->bank_txns, t)) {
        if (t)
            free(t->reference);
        free(t);
        add_error(&bi->errs, "The sandbox ran out of memory");
        return NULL;
    }
    copy_str(t->id, sizeof(t->id), bi->new_id);
    copy_str(t->type, sizeof(t->type), bi->type);
    copy_str(t->status, sizeof(t->status), "AUTHORISED");
    copy_str(t->currency, sizeof(t->currency), bi->currency);
    copy_str(t->account_code, sizeof(t->account_code), bi->account->code);
    t->total = bi->total;
    t->date = bi->date;
    t->contact = bi->contact;
    t->updated_ms = c->now_ms;
    t->head = bi->head;
    t->head_len = bi->head_len;
    bi->head = NULL;
    t->seq = ++x->seq;
    hidx_add(&x->bt_id, t->id, t);
    return t;
}

static const struct batch_type BANK_BATCH = {
    "BankTransactions", E_BANK_TXN, "HasValidationErrors", sizeof(struct bank_in),
    offsetof(struct bank_in, src), offsetof(struct bank_in, errs), bank_check, bank_commit,
    1, {offsetof(struct bank_in, head)},
};

/* POST /BankTransactions/{id} {"BankTransactions":[{"Status":"DELETED"}]}
 * (or VOIDED): the one update the sandbox makes. */
static void bank_update(struct call *c, const char *id)
{
    struct xero *x = c->x;
    json_t *root, *e, *errs = NULL;
    struct out_el el = {0};
    struct bank_txn *t;
    const char *status, *key;
    json_t *v;
    int bad = 0;
    e = update_element(c, "BankTransactions",
                       "POST /BankTransactions/{BankTransactionID} takes one bank transaction",
                       &root);
    if (!e)
        return;
    status = json_is_object(e) ? opt_str(e, "Status", &bad) : NULL;
    if (!status || (strcasecmp(status, "DELETED") && strcasecmp(status, "VOIDED")))
        add_error(&errs, "The sandbox changes only the Status of a bank transaction, to DELETED "
                  "or VOIDED");
    json_object_foreach(json_is_object(e) ? e : NULL, key, v) {
        if (strcmp(key, "Status") && strcmp(key, "BankTransactionID"))
            add_error(&errs, "The sandbox changes only the Status of a bank transaction, not %s",
                      key);
    }
    pthread_mutex_lock(&x->data);
    t = hidx_get(&x->bt_id, id);
    if (t && !errs && strcmp(t->status, "AUTHORISED") != 0)
        add_error(&errs, "This bank transaction is %s and cannot be changed", t->status);
    if (t && !errs) {
        copy_str(t->status, sizeof(t->status), !strcasecmp(status, "DELETED") ? "DELETED"
                                                                             : "VOIDED");
        t->updated_ms = c->now_ms;
        out_el_render(&el, E_BANK_TXN, t, !c->summarize);
    }
    pthread_mutex_unlock(&x->data);
    reply_update(c, "BankTransactions", t != NULL, e, errs, &el, root);
}

/* ==== ManualJournals ====================================================== */

/* Journal lines against the chart of accounts (settings `accounts`), in the
 * organisation's base currency (a manual journal has no CurrencyCode). The
 * checks, in Xero's words where known:
 *   Narration absent or blank        "Narration cannot be empty."
 *   fewer than two JournalLines      "At least two journal lines are required."
 *   a line without LineAmount        "LineAmount must be specified on every journal line."
 *   an unknown AccountCode           "Account code '999' is not a valid code for this document."
 *   lines that do not sum to zero    "The total debits (100.00) must equal total credits (-10.00)"
 *   a line on a BANK account         "Account code '090' is a bank account. Bank accounts cannot
 *                                    be used in manual journals; use a bank transaction or a
 *                                    bank transfer."  (the rule is Xero's: bank accounts are not
 *                                    selectable in manual journals; the wording is a guess,
 *                                    not verified against a live Xero)
 *   Status other than DRAFT/POSTED   "Status must be DRAFT or POSTED for a new manual journal"
 * Created with PUT or POST /ManualJournals (no updates: an element with a
 * ManualJournalID is refused). Debits are positive LineAmounts, credits
 * negative. */
struct journal_in {
    json_t *src;                /* borrowed element */
    json_t *errs;               /* owned */
    char new_id[37];
    const char *narration;      /* borrowed */
    char status[12];
    int64_t date;
    char *head;                 /* owned, open */
    size_t head_len;
};

static void journal_check(struct call *c, void *in)
{
    struct journal_in *ji = in;
    const char *cur = c->x->base_currency, *s;
    json_t *e = ji->src, *lines, *line, *out, *doc;
    int64_t debits = 0, credits = 0;
    int bad = 0;
    size_t i;
    if (create_only_element(e, "manual journal", "ManualJournalID",
                            "The sandbox creates manual journals only; it does not update them",
                            &ji->errs))
        return;
    ji->narration = opt_str(e, "Narration", &bad);
    if (bad || !ji->narration || !ji->narration[strspn(ji->narration, " \t\r\n")])
        add_error(&ji->errs, "Narration cannot be empty.");
    bad = 0;
    s = opt_str(e, "Status", &bad);
    if (bad || (s && strcasecmp(s, "DRAFT") && strcasecmp(s, "POSTED")))
        add_error(&ji->errs, "Status must be DRAFT or POSTED for a new manual journal");
    copy_str(ji->status, sizeof(ji->status), s && !strcasecmp(s, "POSTED") ? "POSTED" : "DRAFT");
    element_date(c, e, &ji->date, &ji->errs);
    bad = 0;
    s = opt_str(e, "LineAmountTypes", &bad);
    if (bad || (s && strcmp(s, "NoTax") && strcmp(s, "Exclusive") && strcmp(s, "Inclusive")))
        add_error(&ji->errs, "LineAmountTypes must be NoTax, Exclusive or Inclusive");
    lines = json_object_get(e, "JournalLines");
    if (!json_is_array(lines) || json_array_size(lines) < 2) {
        add_error(&ji->errs, "At least two journal lines are required.");
        return;
    }
    out = json_array();
    json_array_foreach(lines, i, line) {
        const struct account *acc = NULL;
        const char *code, *id, *desc;
        int64_t amount = 0;
        struct pb_err err = {0};
        if (!json_is_object(line)) {
            add_error(&ji->errs, "JournalLines[%zu] must be an object", i);
            continue;
        }
        bad = 0;
        code = opt_str(line, "AccountCode", &bad);
        id = opt_str(line, "AccountID", &bad);
        desc = opt_str(line, "Description", &bad);
        acc = id ? account_by_id(c->x, id) : code ? account_by_code(c->x, code) : NULL;
        if (!code && !id)
            add_error(&ji->errs, "AccountCode must be specified on every journal line.");
        else if (!acc)
            add_error(&ji->errs, "Account code '%s' is not a valid code for this document.",
                      code ? code : id);
        else if (!strcmp(acc->type, "BANK"))
            add_error(&ji->errs, "Account code '%s' is a bank account. Bank accounts cannot be "
                      "used in manual journals; use a bank transaction or a bank transfer.",
                      acc->code);
        if (!json_object_get(line, "LineAmount") ||
            json_is_null(json_object_get(line, "LineAmount"))) {
            add_error(&ji->errs, "LineAmount must be specified on every journal line.");
            continue;
        }
        if (pb_json_to_minor(json_object_get(line, "LineAmount"), cur, &amount, &err)) {
            add_error(&ji->errs, "JournalLines[%zu].LineAmount: %s", i, err.msg);
            continue;
        }
        if (amount >= 0 ? pb_money_add(debits, amount, &debits)
                        : pb_money_add(credits, amount, &credits)) {
            add_error(&ji->errs, "JournalLines[%zu].LineAmount is too large", i);
            continue;
        }
        if (acc)
            json_array_append_new(
                out, json_pack("{s:s,s:s,s:o*,s:s,s:s,s:[],s:o*,s:b}", "Description",
                               desc ? desc : "", "TaxType", "NONE", "LineAmount",
                               money_text(amount, cur), "AccountCode", acc->code, "AccountID",
                               acc->id, "Tracking", "TaxAmount", money_text(0, cur), "IsBlank",
                               0));
    }
    if (debits + credits != 0) {
        char d[PB_MONEY_DECIMAL_MAX], cr[PB_MONEY_DECIMAL_MAX];
        pb_money_format_decimal(debits, cur, d, sizeof(d), NULL);
        pb_money_format_decimal(credits, cur, cr, sizeof(cr), NULL);
        add_error(&ji->errs, "The total debits (%s) must equal total credits (%s)", d, cr);
    }
    if (ji->errs) {
        json_decref(out);
        return;
    }
    new_uuid(ji->new_id);
    doc = json_pack("{s:s,s:o,s:s,s:s,s:o,s:b,s:b,s:o}", "ManualJournalID", ji->new_id, "Date",
                    msdate(ji->date * 86400000), "LineAmountTypes", s ? s : "NoTax", "Narration",
                    ji->narration, "JournalLines", out, "ShowOnCashBasisReports", 1,
                    "HasAttachments", 0, "UpdatedDateUTC", msdate(c->now_ms));
    ji->head = doc_text(doc, 1, &ji->head_len);
    json_decref(doc);
    if (!ji->head)
        add_error(&ji->errs, "The sandbox ran out of memory");
}

/* Save (data held). */
static const void *journal_commit(struct call *c, void *in)
{
    struct journal_in *ji = in;
    struct xero *x = c->x;
    struct journal *j = calloc(1, sizeof(*j));
    if (!j || !(j->narration = xstrdup(ji->narration)) || vec_push(&x->journals, j)) {
        if (j)
            free(j->narration);
        free(j);
        add_error(&ji->errs, "The sandbox ran out of memory");
        return NULL;
    }
    copy_str(j->id, sizeof(j->id), ji->new_id);
    copy_str(j->status, sizeof(j->status), ji->status);
    j->date = ji->date;
    j->head = ji->head;
    j->head_len = ji->head_len;
    ji->head = NULL;
    j->seq = ++x->seq;
    hidx_add(&x->mj_id, j->id, j);
    return j;
}

static const struct batch_type JOURNAL_BATCH = {
    "ManualJournals", E_MANUAL_JOURNAL, "HasErrors", sizeof(struct journal_in),
    offsetof(struct journal_in, src), offsetof(struct journal_in, errs), journal_check,
    journal_commit, 1, {offsetof(struct journal_in, head)},
};

/* ==== BankTransfers ======================================================= */

/* Money moved between two of the organisation's bank accounts: what a
 * payout from a gateway's clearing account to the real bank is. Created with
 * PUT /BankTransfers (the spec's createBankTransfer); POST /BankTransfers
 * creates too (the spec's POST deletes transfers, which the sandbox does
 * not do: an element carrying a BankTransferID is refused). As in Xero, each
 * transfer also makes two bank transactions that GET /BankTransactions lists:
 * a SPEND-TRANSFER on the From account and a RECEIVE-TRANSFER on the To
 * account (FromBankTransactionID, ToBankTransactionID), with the transfer's
 * Amount, Date and Reference and no Contact. Amounts are in the base
 * currency (the sandbox's bank accounts have no currency of their own). The
 * checks (the rules are Xero's; the wording is a guess, not verified):
 *   From/ToBankAccount missing       "FromBankAccount must be specified by Code or AccountID"
 *   not in the chart                 "FromBankAccount could not be found"
 *   not a BANK account               "Account code '200' is not a bank account"
 *   the same account twice           "FromBankAccount and ToBankAccount must be different
 *                                     bank accounts"
 *   Amount absent, <= 0              "Amount must be specified" / "Amount must be greater
 *                                     than zero"
 *   a bad Date, a long Reference     as for bank transactions */
struct transfer_in {
    json_t *src;                /* borrowed element */
    json_t *errs;               /* owned */
    const struct account *from, *to;
    const char *reference;      /* borrowed */
    int64_t amount, date;
    char new_id[37], from_txn[37], to_txn[37];
    char *text, *from_head, *to_head;  /* owned */
    size_t len, from_len, to_len;
};

static const struct account *transfer_account(struct call *c, json_t *e, const char *key,
                                              json_t **errs)
{
    json_t *a = json_object_get(e, key);
    const struct account *acc;
    const char *code, *id;
    int bad = 0;
    if (!json_is_object(a)) {
        add_error(errs, "%s must be specified by Code or AccountID", key);
        return NULL;
    }
    code = opt_str(a, "Code", &bad);
    id = opt_str(a, "AccountID", &bad);
    acc = id ? account_by_id(c->x, id) : code ? account_by_code(c->x, code) : NULL;
    if (!acc) {
        add_error(errs, "%s could not be found", key);
        return NULL;
    }
    if (strcmp(acc->type, "BANK") != 0) {
        add_error(errs, "Account code '%s' is not a bank account", acc->code);
        return NULL;
    }
    return acc;
}

static void transfer_check(struct call *c, void *in)
{
    struct transfer_in *ti = in;
    const char *cur = c->x->base_currency;
    json_t *e = ti->src, *v, *doc;
    struct pb_err err = {0};
    if (create_only_element(e, "bank transfer", "BankTransferID",
                            "The sandbox creates bank transfers only; it does not change or "
                            "delete them",
                            &ti->errs))
        return;
    ti->from = transfer_account(c, e, "FromBankAccount", &ti->errs);
    ti->to = transfer_account(c, e, "ToBankAccount", &ti->errs);
    if (ti->from && ti->from == ti->to)
        add_error(&ti->errs, "FromBankAccount and ToBankAccount must be different bank accounts");
    v = json_object_get(e, "Amount");
    if (!v || json_is_null(v))
        add_error(&ti->errs, "Amount must be specified");
    else if (pb_json_to_minor(v, cur, &ti->amount, &err))
        add_error(&ti->errs, "Amount: %s", err.msg);
    else if (ti->amount <= 0)
        add_error(&ti->errs, "Amount must be greater than zero");
    element_date(c, e, &ti->date, &ti->errs);
    ti->reference = element_reference(e, &ti->errs);
    if (ti->errs)
        return;
    new_uuid(ti->new_id);
    new_uuid(ti->from_txn);
    new_uuid(ti->to_txn);
    doc = json_pack("{s:s,s:{s:s,s:s,s:s},s:{s:s,s:s,s:s},s:o*,s:o,s:o,s:s,s:s,s:s,s:s,s:b,s:b,"
                    "s:b,s:o,s:s}",
                    "BankTransferID", ti->new_id, "FromBankAccount", "AccountID", ti->from->id,
                    "Code", ti->from->code, "Name", ti->from->name, "ToBankAccount", "AccountID",
                    ti->to->id, "Code", ti->to->code, "Name", ti->to->name, "Amount",
                    money_text(ti->amount, cur), "Date", msdate(ti->date * 86400000),
                    "DateString", date_string(ti->date), "CurrencyRate", "1.000000",
                    "FromBankTransactionID", ti->from_txn, "ToBankTransactionID", ti->to_txn,
                    "Reference", ti->reference ? ti->reference : "", "FromIsReconciled", 0,
                    "ToIsReconciled", 0, "HasAttachments", 0, "CreatedDateUTC",
                    msdate(c->now_ms), "Status", "AUTHORISED");
    ti->text = doc_text(doc, 0, &ti->len);
    json_decref(doc);
    ti->from_head = bank_head(ti->from_txn, "SPEND-TRANSFER", ti->from, ti->date, ti->reference,
                              cur, json_array(), ti->amount, &ti->from_len);
    ti->to_head = bank_head(ti->to_txn, "RECEIVE-TRANSFER", ti->to, ti->date, ti->reference, cur,
                            json_array(), ti->amount, &ti->to_len);
    if (!ti->text || !ti->from_head || !ti->to_head)
        add_error(&ti->errs, "The sandbox ran out of memory");
}

/* A transfer's leg as a bank transaction (data held); takes *head. */
static struct bank_txn *transfer_leg(struct call *c, const char *id, const char *type,
                                     const struct account *acc, const struct transfer_in *ti,
                                     char **head, size_t len)
{
    struct xero *x = c->x;
    struct bank_txn *t = calloc(1, sizeof(*t));
    if (!t || !(t->reference = xstrdup(ti->reference)) || vec_push(&x->bank_txns, t)) {
        if (t)
            free(t->reference);
        free(t);
        return NULL;
    }
    copy_str(t->id, sizeof(t->id), id);
    copy_str(t->type, sizeof(t->type), type);
    copy_str(t->status, sizeof(t->status), "AUTHORISED");
    copy_str(t->currency, sizeof(t->currency), x->base_currency);
    copy_str(t->account_code, sizeof(t->account_code), acc->code);
    t->total = ti->amount;
    t->date = ti->date;
    t->updated_ms = c->now_ms;
    t->head = *head;
    t->head_len = len;
    *head = NULL;
    t->seq = ++x->seq;
    hidx_add(&x->bt_id, t->id, t);
    return t;
}

/* Save the transfer and its two legs (data held). */
static const void *transfer_commit(struct call *c, void *in)
{
    struct transfer_in *ti = in;
    struct xero *x = c->x;
    struct bank_transfer *t;
    if (x->transfers.n == x->transfers.cap && vec_push(&x->transfers, NULL) == 0)
        x->transfers.n--; /* grow first, so that a failure leaves no half transfer */
    if (x->bank_txns.cap - x->bank_txns.n < 2 && vec_push(&x->bank_txns, NULL) == 0 &&
        vec_push(&x->bank_txns, NULL) == 0)
        x->bank_txns.n -= 2;
    t = calloc(1, sizeof(*t));
    if (!t || !(t->reference = xstrdup(ti->reference)) ||
        x->transfers.n == x->transfers.cap || x->bank_txns.cap - x->bank_txns.n < 2) {
        if (t)
            free(t->reference);
        free(t);
        add_error(&ti->errs, "The sandbox ran out of memory");
        return NULL;
    }
    copy_str(t->id, sizeof(t->id), ti->new_id);
    copy_str(t->from_code, sizeof(t->from_code), ti->from->code);
    copy_str(t->to_code, sizeof(t->to_code), ti->to->code);
    t->amount = ti->amount;
    t->date = ti->date;
    t->text = ti->text;
    t->len = ti->len;
    ti->text = NULL;
    t->seq = ++x->seq;
    vec_push(&x->transfers, t);
    hidx_add(&x->btr_id, t->id, t);
    transfer_leg(c, ti->from_txn, "SPEND-TRANSFER", ti->from, ti, &ti->from_head, ti->from_len);
    transfer_leg(c, ti->to_txn, "RECEIVE-TRANSFER", ti->to, ti, &ti->to_head, ti->to_len);
    return t;
}

static const struct batch_type TRANSFER_BATCH = {
    "BankTransfers", E_BANK_TRANSFER, "HasValidationErrors", sizeof(struct transfer_in),
    offsetof(struct transfer_in, src), offsetof(struct transfer_in, errs), transfer_check,
    transfer_commit, 3,
    {offsetof(struct transfer_in, text), offsetof(struct transfer_in, from_head),
     offsetof(struct transfer_in, to_head)},
};

/* ==== GET: where filters and listing ====================================== */

enum field_id {
    F_CONTACT_ID, F_NAME, F_EMAIL, F_CONTACT_STATUS,
    F_INVOICE_ID, F_INVOICE_NUMBER, F_REFERENCE, F_STATUS, F_TYPE, F_CURRENCY, F_INV_CONTACT_ID,
    F_PAYMENT_ID, F_PAY_INVOICE_ID, F_PAY_INVOICE_NUMBER, F_PAYMENT_TYPE, F_PAY_CREDIT_NOTE_ID,
    F_DATE, F_BT_ID, F_BT_ACCOUNT, F_MJ_ID, F_NARRATION, F_BTR_ID, F_BTR_FROM, F_BTR_TO,
};

struct field {
    const char *name;
    enum entity ent;
    enum field_id id;
};

static const struct field FIELDS[] = {
    {"ContactID", E_CONTACT, F_CONTACT_ID},
    {"Name", E_CONTACT, F_NAME},
    {"EmailAddress", E_CONTACT, F_EMAIL},
    {"ContactStatus", E_CONTACT, F_CONTACT_STATUS},
    {"Status", E_CONTACT, F_CONTACT_STATUS},
    {"InvoiceID", E_INVOICE, F_INVOICE_ID},
    {"InvoiceNumber", E_INVOICE, F_INVOICE_NUMBER},
    {"Reference", E_INVOICE, F_REFERENCE},
    {"Status", E_INVOICE, F_STATUS},
    {"Type", E_INVOICE, F_TYPE},
    {"CurrencyCode", E_INVOICE, F_CURRENCY},
    {"Contact.ContactID", E_INVOICE, F_INV_CONTACT_ID},
    {"ContactID", E_INVOICE, F_INV_CONTACT_ID},
    {"PaymentID", E_PAYMENT, F_PAYMENT_ID},
    {"Reference", E_PAYMENT, F_REFERENCE},
    {"Status", E_PAYMENT, F_STATUS},
    {"PaymentType", E_PAYMENT, F_PAYMENT_TYPE},
    {"Invoice.InvoiceID", E_PAYMENT, F_PAY_INVOICE_ID},
    {"InvoiceID", E_PAYMENT, F_PAY_INVOICE_ID},
    {"Invoice.InvoiceNumber", E_PAYMENT, F_PAY_INVOICE_NUMBER},
    {"InvoiceNumber", E_PAYMENT, F_PAY_INVOICE_NUMBER},
    {"CreditNote.CreditNoteID", E_PAYMENT, F_PAY_CREDIT_NOTE_ID},
    {"CreditNoteID", E_PAYMENT, F_PAY_CREDIT_NOTE_ID},
    {"CreditNoteID", E_CREDIT_NOTE, F_INVOICE_ID},
    {"CreditNoteNumber", E_CREDIT_NOTE, F_INVOICE_NUMBER},
    {"Reference", E_CREDIT_NOTE, F_REFERENCE},
    {"Status", E_CREDIT_NOTE, F_STATUS},
    {"Type", E_CREDIT_NOTE, F_TYPE},
    {"CurrencyCode", E_CREDIT_NOTE, F_CURRENCY},
    {"Contact.ContactID", E_CREDIT_NOTE, F_INV_CONTACT_ID},
    {"ContactID", E_CREDIT_NOTE, F_INV_CONTACT_ID},
    {"Date", E_PAYMENT, F_DATE},
    {"CurrencyCode", E_PAYMENT, F_CURRENCY},
    {"BankTransactionID", E_BANK_TXN, F_BT_ID},
    {"Type", E_BANK_TXN, F_TYPE},
    {"Status", E_BANK_TXN, F_STATUS},
    {"Reference", E_BANK_TXN, F_REFERENCE},
    {"Date", E_BANK_TXN, F_DATE},
    {"CurrencyCode", E_BANK_TXN, F_CURRENCY},
    {"BankAccount.Code", E_BANK_TXN, F_BT_ACCOUNT},
    {"ManualJournalID", E_MANUAL_JOURNAL, F_MJ_ID},
    {"Status", E_MANUAL_JOURNAL, F_STATUS},
    {"Narration", E_MANUAL_JOURNAL, F_NARRATION},
    {"Date", E_MANUAL_JOURNAL, F_DATE},
    {"BankTransferID", E_BANK_TRANSFER, F_BTR_ID},
    {"Reference", E_BANK_TRANSFER, F_REFERENCE},
    {"Date", E_BANK_TRANSFER, F_DATE},
    {"FromBankAccount.Code", E_BANK_TRANSFER, F_BTR_FROM},
    {"ToBankAccount.Code", E_BANK_TRANSFER, F_BTR_TO},
    {NULL, E_CONTACT, F_CONTACT_ID},
};

static const char *const ENTITY_NAME[] = {"Contact",         "Invoice",       "Payment",
                                          "CreditNote",      "BankTransaction", "ManualJournal",
                                          "BankTransfer"};
static const char *const ENTITY_ENVELOPE[] = {"Contacts",         "Invoices",       "Payments",
                                              "CreditNotes",      "BankTransactions",
                                              "ManualJournals",   "BankTransfers"};

/* The date of a record with a Date field (F_DATE), days since the epoch. */
static int64_t field_date(enum entity ent, const void *rec)
{
    switch (ent) {
    case E_PAYMENT: return ((const struct payment *)rec)->date;
    case E_BANK_TXN: return ((const struct bank_txn *)rec)->date;
    case E_MANUAL_JOURNAL: return ((const struct journal *)rec)->date;
    case E_BANK_TRANSFER: return ((const struct bank_transfer *)rec)->date;
    default: return 0;
    }
}

static const char *field_value(enum entity ent, const void *rec, enum field_id f)
{
    const struct contact *ct = rec;
    const struct invoice *inv = rec;
    const struct payment *p = rec;
    const struct bank_txn *t = rec;
    const struct journal *j = rec;
    const struct bank_transfer *tr = rec;
    if (ent == E_BANK_TRANSFER) {
        switch (f) {
        case F_BTR_ID: return tr->id;
        case F_REFERENCE: return tr->reference;
        case F_BTR_FROM: return tr->from_code;
        case F_BTR_TO: return tr->to_code;
        case F_STATUS: return "AUTHORISED";
        default: return "";
        }
    }
    if (ent == E_BANK_TXN) {
        switch (f) {
        case F_BT_ID: return t->id;
        case F_TYPE: return t->type;
        case F_STATUS: return t->status;
        case F_REFERENCE: return t->reference;
        case F_CURRENCY: return t->currency;
        case F_BT_ACCOUNT: return t->account_code;
        default: return "";
        }
    }
    if (ent == E_MANUAL_JOURNAL) {
        switch (f) {
        case F_MJ_ID: return j->id;
        case F_STATUS: return j->status;
        case F_NARRATION: return j->narration;
        default: return "";
        }
    }
    switch (f) {
    case F_CONTACT_ID: return ct->id;
    case F_NAME: return ct->name;
    case F_EMAIL: return ct->email;
    case F_CONTACT_STATUS: return ct->archived ? "ARCHIVED" : "ACTIVE";
    case F_INVOICE_ID: return inv->id;
    case F_INVOICE_NUMBER: return inv->number;
    case F_REFERENCE: return ent != E_PAYMENT ? inv->reference : p->reference;
    case F_STATUS: return ent != E_PAYMENT ? inv->status : p->status;
    case F_TYPE: return inv->type;
    case F_CURRENCY: return ent == E_PAYMENT ? p->currency : inv->currency;
    case F_INV_CONTACT_ID: return inv->contact_id;
    case F_PAYMENT_ID: return p->id;
    case F_PAY_INVOICE_ID: return p->invoice_id;
    case F_PAY_INVOICE_NUMBER: return p->invoice_number;
    case F_PAYMENT_TYPE: return p->type;
    case F_PAY_CREDIT_NOTE_ID: return p->credit_note_id;
    default: return "";
    }
}

/* The index answering `field == value`, or NULL (data held by the caller). */
static const struct hidx *field_index(const struct xero *x, enum field_id f, enum entity ent)
{
    const struct docs *d = &x->docs[ent == E_CREDIT_NOTE ? KIND_CREDIT_NOTE.store
                                                         : KIND_INVOICE.store];
    if (ent == E_BANK_TXN)
        return f == F_BT_ID ? &x->bt_id : NULL;
    if (ent == E_MANUAL_JOURNAL)
        return f == F_MJ_ID ? &x->mj_id : NULL;
    if (ent == E_BANK_TRANSFER)
        return f == F_BTR_ID ? &x->btr_id : NULL;
    switch (f) {
    case F_CONTACT_ID: return &x->c_id;
    case F_NAME: return &x->c_name;
    case F_EMAIL: return &x->c_email;
    case F_INVOICE_ID: return &d->id;
    case F_INVOICE_NUMBER: return &d->number;
    case F_REFERENCE: return ent != E_PAYMENT ? &d->ref : &x->p_ref;
    case F_INV_CONTACT_ID: return &d->contact;
    case F_PAYMENT_ID: return &x->p_id;
    case F_PAY_INVOICE_ID: return &x->p_invoice;
    case F_PAY_CREDIT_NOTE_ID: return &x->p_credit_note;
    default: return NULL;
    }
}

enum node_kind { N_CMP, N_AND, N_OR };

/* How a CMP node compares (W_EQ with `ne` is != / <>). Dates compare as
 * days; text case-insensitively. */
enum wop { W_EQ, W_LT, W_LE, W_GT, W_GE, W_CONTAINS, W_STARTS, W_ENDS };

struct wnode {
    enum node_kind kind;
    int l, r;                   /* children for AND / OR */
    enum field_id field;        /* for CMP */
    int ne;                     /* != */
    char *value;                /* owned literal */
    enum wop op;                /* for CMP */
    int64_t days;               /* the literal as a date, for F_DATE */
};

struct query {
    enum entity ent;
    struct wnode nodes[WHERE_NODES_MAX];
    int n_nodes, root;          /* root -1: no where */
    char *lists[4];             /* owned comma lists: IDs, numbers, contact IDs, statuses */
    long page, page_size;
    char err[512];
};

struct lexer {
    const char *p;
    struct query *q;
};

enum tok {
    T_END, T_IDENT, T_STRING, T_EQ, T_NE, T_AND, T_OR, T_LP, T_RP, T_BAD,
    T_LT, T_LE, T_GT, T_GE,
    T_DATE,                     /* DateTime(y,m,d[,h,m,s]): text is "YYYY-MM-DD" */
    T_METHOD,                   /* Field.Contains("x"): text the field, arg the string */
};

struct token_s {
    enum tok t;
    char text[512];
    char arg[512];              /* T_METHOD: the argument */
    enum wop method;            /* T_METHOD: W_CONTAINS | W_STARTS | W_ENDS */
};

static void skip_ws(struct lexer *lx)
{
    while (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r')
        lx->p++;
}

static int lex_string(struct lexer *lx, struct token_s *tk)
{
    size_t o = 0;
    char quote = *lx->p++;
    for (; *lx->p && *lx->p != quote; lx->p++) {
        if (*lx->p == '\\' && lx->p[1])
            lx->p++;
        if (o + 1 >= sizeof(tk->text))
            return -1;
        tk->text[o++] = *lx->p;
    }
    if (*lx->p != quote)
        return -1;
    lx->p++;
    tk->text[o] = '\0';
    tk->t = T_STRING;
    return 0;
}

/* After "DateTime": (y, m, d[, h, m, s]) -> T_DATE "YYYY-MM-DD" (the time
 * of day is read and dropped: every Date the sandbox keeps is a whole day). */
static void lex_datetime(struct lexer *lx, struct token_s *tk)
{
    long part[6] = {0, 0, 0, 0, 0, 0};
    int n = 0;
    lx->p++; /* '(' */
    for (;;) {
        char *end;
        skip_ws(lx);
        part[n] = strtol(lx->p, &end, 10);
        if (end == lx->p || n == 6) {
            tk->t = T_BAD;
            snprintf(tk->text, sizeof(tk->text), "DateTime(");
            return;
        }
        n++;
        lx->p = end;
        skip_ws(lx);
        if (*lx->p == ',') {
            lx->p++;
            continue;
        }
        break;
    }
    if (*lx->p != ')' || n < 3 || part[0] < 1900 || part[0] > 9999 || part[1] < 1 ||
        part[1] > 12 || part[2] < 1 || part[2] > days_in_month((int)part[0], (unsigned)part[1])) {
        tk->t = T_BAD;
        snprintf(tk->text, sizeof(tk->text), "DateTime(%ld,%ld,%ld)", part[0], part[1], part[2]);
        return;
    }
    lx->p++;
    snprintf(tk->text, sizeof(tk->text), "%04ld-%02ld-%02ld", part[0], part[1], part[2]);
    tk->t = T_DATE;
}

/* After "Field.Method": ("text") for Contains, StartsWith, EndsWith. */
static void lex_method(struct lexer *lx, struct token_s *tk)
{
    static const struct {
        const char *name;
        enum wop op;
    } methods[] = {{".Contains", W_CONTAINS}, {".StartsWith", W_STARTS}, {".EndsWith", W_ENDS}};
    size_t len = strlen(tk->text), i;
    struct token_s arg;
    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        size_t m = strlen(methods[i].name);
        if (len > m && !strcasecmp(tk->text + len - m, methods[i].name)) {
            tk->text[len - m] = '\0';
            tk->method = methods[i].op;
            break;
        }
    }
    if (i == sizeof(methods) / sizeof(methods[0])) {
        tk->t = T_BAD;   /* another method or function: not supported */
        return;
    }
    lx->p++; /* '(' */
    skip_ws(lx);
    if ((*lx->p != '"' && *lx->p != '\'') || lex_string(lx, &arg)) {
        tk->t = T_BAD;
        return;
    }
    skip_ws(lx);
    if (*lx->p != ')') {
        tk->t = T_BAD;
        return;
    }
    lx->p++;
    memcpy(tk->arg, arg.text, sizeof(tk->arg));
    tk->t = T_METHOD;
}

static void lex(struct lexer *lx, struct token_s *tk)
{
    const char *s;
    size_t n;
    skip_ws(lx);
    s = lx->p;
    tk->text[0] = '\0';
    if (!*s) {
        tk->t = T_END;
        return;
    }
    if (s[0] == '=' && s[1] == '=') {
        lx->p += 2;
        tk->t = T_EQ;
        return;
    }
    if (s[0] == '=') {   /* Dynamic LINQ also takes a single '=' */
        lx->p += 1;
        tk->t = T_EQ;
        return;
    }
    if ((s[0] == '!' && s[1] == '=') || (s[0] == '<' && s[1] == '>')) {
        lx->p += 2;
        tk->t = T_NE;
        return;
    }
    if (s[0] == '<' || s[0] == '>') {
        int eq = s[1] == '=';
        lx->p += 1 + eq;
        tk->t = s[0] == '<' ? (eq ? T_LE : T_LT) : (eq ? T_GE : T_GT);
        return;
    }
    if (s[0] == '&' && s[1] == '&') {
        lx->p += 2;
        tk->t = T_AND;
        return;
    }
    if (s[0] == '|' && s[1] == '|') {
        lx->p += 2;
        tk->t = T_OR;
        return;
    }
    if (*s == '(' || *s == ')') {
        lx->p++;
        tk->t = *s == '(' ? T_LP : T_RP;
        return;
    }
    if (*s == '"' || *s == '\'') {
        if (lex_string(lx, tk))
            tk->t = T_BAD;
        return;
    }
    n = 0;
    while (isalnum((unsigned char)s[n]) || s[n] == '_' || s[n] == '.' || s[n] == '-')
        n++;
    if (n == 0 || n >= sizeof(tk->text)) {
        tk->t = T_BAD;
        snprintf(tk->text, sizeof(tk->text), "%.20s", s);
        return;
    }
    memcpy(tk->text, s, n);
    tk->text[n] = '\0';
    lx->p += n;
    if (!strcasecmp(tk->text, "AND")) {
        tk->t = T_AND;
        return;
    }
    if (!strcasecmp(tk->text, "OR")) {
        tk->t = T_OR;
        return;
    }
    /* guid("...") / Guid("...") is a string literal */
    skip_ws(lx);
    if (!strcasecmp(tk->text, "guid") && *lx->p == '(') {
        lx->p++;
        skip_ws(lx);
        if ((*lx->p != '"' && *lx->p != '\'') || lex_string(lx, tk)) {
            tk->t = T_BAD;
            return;
        }
        skip_ws(lx);
        if (*lx->p != ')') {
            tk->t = T_BAD;
            return;
        }
        lx->p++;
        return;
    }
    if (*lx->p == '(' && !strcasecmp(tk->text, "DateTime")) {
        lex_datetime(lx, tk);
        return;
    }
    if (*lx->p == '(') {
        lex_method(lx, tk);
        return;
    }
    tk->t = T_IDENT;
}

static int parse_or(struct lexer *lx, struct token_s *tk);

static int new_node(struct query *q)
{
    if (q->n_nodes >= WHERE_NODES_MAX) {
        snprintf(q->err, sizeof(q->err), "The where clause is too long for the sandbox (at most "
                 "%d terms)", WHERE_NODES_MAX / 2);
        return -1;
    }
    memset(&q->nodes[q->n_nodes], 0, sizeof(q->nodes[0]));
    return q->n_nodes++;
}

/* The field `name` of the query's entity, or NULL with q->err set. */
static const struct field *find_field(struct query *q, const char *name)
{
    const struct field *f;
    char known[320] = "";
    size_t o = 0;
    for (f = FIELDS; f->name; f++)
        if (f->ent == q->ent && !strcasecmp(f->name, name))
            return f;
    for (const struct field *g = FIELDS; g->name; g++)
        if (g->ent == q->ent)
            o += (size_t)snprintf(known + o, o < sizeof(known) ? sizeof(known) - o : 0, "%s%s",
                                  o ? ", " : "", g->name);
    snprintf(q->err, sizeof(q->err),
             "No property or field '%s' exists in type '%s' (the sandbox filters on: %s)", name,
             ENTITY_NAME[q->ent], known);
    return NULL;
}

/* A CMP node; -1 with q->err set. A date field takes DateTime(...) or a
 * "YYYY-MM-DD" string; text fields take strings or bare words. */
static int cmp_node(struct query *q, const struct field *f, enum wop op, int ne,
                    const struct token_s *val, const char *text)
{
    int node;
    int64_t days = 0;
    if (f->id == F_DATE) {
        if ((val->t != T_DATE && val->t != T_STRING) || parse_date(text, &days)) {
            snprintf(q->err, sizeof(q->err),
                     "%s must be compared with a date: DateTime(2026,11,20) or \"2026-11-20\"",
                     f->name);
            return -1;
        }
        if (op >= W_CONTAINS) {
            snprintf(q->err, sizeof(q->err), "%s is a date: Contains, StartsWith and EndsWith "
                     "take text fields", f->name);
            return -1;
        }
    } else if (val->t == T_DATE || (op >= W_LT && op <= W_GE)) {
        snprintf(q->err, sizeof(q->err),
                 "Operator not supported in the where clause after '%s' (the sandbox compares "
                 "text with ==, =, != and <>, or .Contains(), .StartsWith(), .EndsWith(); "
                 "<, <=, > and >= take dates)", f->name);
        return -1;
    }
    if ((node = new_node(q)) < 0)
        return -1;
    q->nodes[node].kind = N_CMP;
    q->nodes[node].field = f->id;
    q->nodes[node].ne = ne;
    q->nodes[node].op = op;
    q->nodes[node].days = days;
    q->nodes[node].value = strdup(text);
    return q->nodes[node].value ? node : -1;
}

static int parse_primary(struct lexer *lx, struct token_s *tk)
{
    struct query *q = lx->q;
    const struct field *f;
    int node, ne;
    enum wop op;
    if (tk->t == T_LP) {
        lex(lx, tk);
        node = parse_or(lx, tk);
        if (node < 0)
            return -1;
        if (tk->t != T_RP) {
            snprintf(q->err, sizeof(q->err), "Expected ')' in the where clause");
            return -1;
        }
        lex(lx, tk);
        return node;
    }
    if (tk->t == T_METHOD) {
        struct token_s val = {.t = T_STRING};
        if (!(f = find_field(q, tk->text)))
            return -1;
        node = cmp_node(q, f, tk->method, 0, &val, tk->arg);
        lex(lx, tk);
        return node;
    }
    if (tk->t != T_IDENT) {
        snprintf(q->err, sizeof(q->err),
                 "Syntax error in the where clause near '%s': expected Field==\"value\"",
                 tk->text);
        return -1;
    }
    if (!(f = find_field(q, tk->text)))
        return -1;
    lex(lx, tk);
    switch (tk->t) {
    case T_EQ: op = W_EQ; break;
    case T_NE: op = W_EQ; break;
    case T_LT: op = W_LT; break;
    case T_LE: op = W_LE; break;
    case T_GT: op = W_GT; break;
    case T_GE: op = W_GE; break;
    default:
        snprintf(q->err, sizeof(q->err),
                 "Operator not supported in the where clause after '%s' (the sandbox supports "
                 "==, =, != and <>, and <, <=, >, >= on dates)", f->name);
        return -1;
    }
    ne = tk->t == T_NE;
    lex(lx, tk);
    if (tk->t != T_STRING && tk->t != T_IDENT && tk->t != T_DATE) {
        snprintf(q->err, sizeof(q->err), "Expected a value after %s%s", f->name,
                 ne ? "!=" : "==");
        return -1;
    }
    node = cmp_node(q, f, op, ne, tk, tk->text);
    if (node >= 0)
        lex(lx, tk);
    return node;
}

static int parse_and(struct lexer *lx, struct token_s *tk)
{
    int l = parse_primary(lx, tk), node;
    while (l >= 0 && tk->t == T_AND) {
        int r;
        lex(lx, tk);
        if ((r = parse_primary(lx, tk)) < 0 || (node = new_node(lx->q)) < 0)
            return -1;
        lx->q->nodes[node] = (struct wnode){N_AND, l, r, F_CONTACT_ID, 0, NULL, W_EQ, 0};
        l = node;
    }
    return l;
}

static int parse_or(struct lexer *lx, struct token_s *tk)
{
    int l = parse_and(lx, tk), node;
    while (l >= 0 && tk->t == T_OR) {
        int r;
        lex(lx, tk);
        if ((r = parse_and(lx, tk)) < 0 || (node = new_node(lx->q)) < 0)
            return -1;
        lx->q->nodes[node] = (struct wnode){N_OR, l, r, F_CONTACT_ID, 0, NULL, W_EQ, 0};
        l = node;
    }
    return l;
}

static int parse_where(struct query *q, const char *where)
{
    struct lexer lx = {where, q};
    struct token_s tk;
    lex(&lx, &tk);
    if (tk.t == T_END) {
        q->root = -1;
        return 0;
    }
    q->root = parse_or(&lx, &tk);
    if (q->root < 0) {
        if (!q->err[0])
            snprintf(q->err, sizeof(q->err), "The where clause could not be parsed");
        return -1;
    }
    if (tk.t != T_END) {
        snprintf(q->err, sizeof(q->err), "Unexpected '%s' in the where clause",
                 tk.t == T_RP ? ")" : tk.text);
        return -1;
    }
    return 0;
}

static void query_free(struct query *q)
{
    for (int i = 0; i < q->n_nodes; i++)
        free(q->nodes[i].value);
    for (int i = 0; i < 4; i++)
        free(q->lists[i]);
}

static int eval(const struct query *q, int node, const void *rec)
{
    const struct wnode *n = &q->nodes[node];
    switch (n->kind) {
    case N_AND: return eval(q, n->l, rec) && eval(q, n->r, rec);
    case N_OR: return eval(q, n->l, rec) || eval(q, n->r, rec);
    case N_CMP: break;
    }
    if (n->field == F_DATE) {
        int64_t d = field_date(q->ent, rec);
        switch (n->op) {
        case W_LT: return d < n->days;
        case W_LE: return d <= n->days;
        case W_GT: return d > n->days;
        case W_GE: return d >= n->days;
        default: return (d == n->days) != n->ne;
        }
    }
    {
        const char *v = field_value(q->ent, rec, n->field);
        size_t vl = strlen(v), nl = strlen(n->value);
        switch (n->op) {
        case W_CONTAINS: return strcasestr(v, n->value) != NULL;
        case W_STARTS: return vl >= nl && !strncasecmp(v, n->value, nl);
        case W_ENDS: return vl >= nl && !strcasecmp(v + vl - nl, n->value);
        default: return (strcasecmp(v, n->value) == 0) != n->ne;
        }
    }
}

/* 1 when `value` is in the comma list (case-insensitive, spaces and quotes trimmed). */
static int in_list(const char *list, const char *value)
{
    const char *p = list;
    size_t vlen = strlen(value);
    while (*p) {
        const char *end = strchr(p, ','), *s = p, *e;
        if (!end)
            end = p + strlen(p);
        e = end;
        while (s < e && (*s == ' ' || *s == '"' || *s == '\''))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '"' || e[-1] == '\''))
            e--;
        if ((size_t)(e - s) == vlen && !strncasecmp(s, value, vlen))
            return 1;
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* Fields of the list filters IDs, InvoiceNumbers, ContactIDs, Statuses. */
static const enum field_id LIST_FIELD[N_ENTITIES][4] = {
    [E_CONTACT] = {F_CONTACT_ID, F_NAME, F_CONTACT_ID, F_CONTACT_STATUS},
    [E_INVOICE] = {F_INVOICE_ID, F_INVOICE_NUMBER, F_INV_CONTACT_ID, F_STATUS},
    [E_PAYMENT] = {F_PAYMENT_ID, F_PAY_INVOICE_NUMBER, F_PAY_INVOICE_ID, F_STATUS},
    [E_CREDIT_NOTE] = {F_INVOICE_ID, F_INVOICE_NUMBER, F_INV_CONTACT_ID, F_STATUS},
    [E_BANK_TXN] = {F_BT_ID, F_BT_ID, F_BT_ID, F_STATUS},
    [E_MANUAL_JOURNAL] = {F_MJ_ID, F_MJ_ID, F_MJ_ID, F_STATUS},
    [E_BANK_TRANSFER] = {F_BTR_ID, F_BTR_ID, F_BTR_ID, F_STATUS},
};

static int matches(const struct query *q, const void *rec)
{
    for (int i = 0; i < 4; i++)
        if (q->lists[i] && !in_list(q->lists[i], field_value(q->ent, rec, LIST_FIELD[q->ent][i])))
            return 0;
    return q->root < 0 || eval(q, q->root, rec);
}

/* Candidates from the indexes for `node`; 0 when a full scan is needed. */
static int candidates(const struct xero *x, const struct query *q, int node, struct vec *out)
{
    const struct wnode *n = &q->nodes[node];
    if (n->kind == N_CMP) {
        const struct hidx *ix =
            n->ne || n->op != W_EQ || n->field == F_DATE ? NULL : field_index(x, n->field, q->ent);
        struct hent *h;
        if (!ix || !n->value[0])
            return 0;   /* empty keys are not indexed */
        for (h = hidx_find(ix, n->value); h; h = hidx_next(h, n->value))
            vec_push(out, h->rec);
        return 1;
    }
    if (n->kind == N_AND) {
        size_t mark = out->n;
        if (candidates(x, q, n->l, out))
            return 1;
        out->n = mark;
        return candidates(x, q, n->r, out);
    }
    {
        size_t mark = out->n;
        if (candidates(x, q, n->l, out) && candidates(x, q, n->r, out))
            return 1;
        out->n = mark;
        return 0;
    }
}

/* Candidates from an ID or number list. */
static int list_candidates(const struct xero *x, const struct query *q, struct vec *out)
{
    for (int i = 0; i < 3; i++) {
        const struct hidx *ix = q->lists[i] ? field_index(x, LIST_FIELD[q->ent][i], q->ent) : NULL;
        const char *p;
        if (!ix)
            continue;
        for (p = q->lists[i]; *p;) {
            const char *end = strchr(p, ','), *s = p, *e;
            char key[256];
            struct hent *h;
            if (!end)
                end = p + strlen(p);
            e = end;
            while (s < e && (*s == ' ' || *s == '"' || *s == '\''))
                s++;
            while (e > s && (e[-1] == ' ' || e[-1] == '"' || e[-1] == '\''))
                e--;
            snprintf(key, sizeof(key), "%.*s", (int)(e - s), s);
            for (h = hidx_find(ix, key); h; h = hidx_next(h, key))
                vec_push(out, h->rec);
            p = *end ? end + 1 : end;
        }
        return 1;
    }
    return 0;
}

static uint64_t rec_seq(enum entity ent, const void *rec)
{
    return ent == E_CONTACT          ? ((const struct contact *)rec)->seq
         : ent == E_PAYMENT          ? ((const struct payment *)rec)->seq
         : ent == E_BANK_TXN         ? ((const struct bank_txn *)rec)->seq
         : ent == E_MANUAL_JOURNAL   ? ((const struct journal *)rec)->seq
         : ent == E_BANK_TRANSFER    ? ((const struct bank_transfer *)rec)->seq
                                     : ((const struct invoice *)rec)->seq;
}

static int cmp_seq(const void *a, const void *b, void *ent)
{
    enum entity e = *(const enum entity *)ent;
    uint64_t sa = rec_seq(e, *(void *const *)a), sb = rec_seq(e, *(void *const *)b);
    return sa < sb ? -1 : sa > sb;
}

static void list_get(struct call *c, enum entity ent)
{
    static const char *const list_param[] = {"IDs", "InvoiceNumbers", "ContactIDs", "Statuses"};
    struct xero *x = c->x;
    struct query *q = calloc(1, sizeof(*q));
    const char *where = pb_http_query(c->req, "where");
    const char *page = pb_http_query(c->req, "page");
    const char *psize = pb_http_query(c->req, "pageSize");
    const struct vec *all;
    struct vec cand = {0};
    struct outbuf b = {0};
    size_t n_out = 0, total = 0, skip = 0, i, src_n;
    void **src;
    int indexed = 0;

    if (!q) {
        reply_problem(c->resp, 500, "InternalError", "out of memory");
        return;
    }
    q->ent = ent;
    q->root = -1;
    q->page_size = PAGE_SIZE;
    if (page) {
        char *end;
        q->page = strtol(page, &end, 10);
        if (*end || q->page < 1) {
            reply_exception(c->resp, 400, 16, "QueryParseException",
                            "page must be a whole number from 1, got '%s'", page);
            goto out;
        }
    }
    if (psize) {
        char *end;
        q->page_size = strtol(psize, &end, 10);
        if (*end || q->page_size < 1 || q->page_size > PAGE_SIZE_MAX) {
            reply_exception(c->resp, 400, 16, "QueryParseException",
                            "pageSize must be from 1 to %d", PAGE_SIZE_MAX);
            goto out;
        }
    }
    for (i = 0; i < 4; i++) {
        const char *v = pb_http_query(c->req, list_param[i]);
        if ((i == 1 && ent != E_INVOICE) ||
            ((ent == E_BANK_TXN || ent == E_MANUAL_JOURNAL || ent == E_BANK_TRANSFER) &&
             (i == 1 || i == 2)) ||
            !v || !*v)
            continue;
        q->lists[i] = strdup(v);
    }
    if (where && parse_where(q, where)) {
        reply_exception(c->resp, 400, 16, "QueryParseException", "%s", q->err);
        goto out;
    }

    /* The envelope before the lock, the records under it, the end after. */
    envelope_open(&b, ENTITY_ENVELOPE[ent]);
    pthread_mutex_lock(&x->data);
    all = ent == E_CONTACT        ? &x->contacts
        : ent == E_PAYMENT        ? &x->payments
        : ent == E_BANK_TXN       ? &x->bank_txns
        : ent == E_MANUAL_JOURNAL ? &x->journals
        : ent == E_BANK_TRANSFER  ? &x->transfers
        : ent == E_CREDIT_NOTE    ? &x->docs[KIND_CREDIT_NOTE.store].recs
                                  : &x->docs[KIND_INVOICE.store].recs;
    if (list_candidates(x, q, &cand) || (q->root >= 0 && candidates(x, q, q->root, &cand))) {
        indexed = 1;
        if (cand.n > 1)
            qsort_r(cand.v, cand.n, sizeof(void *), cmp_seq, &ent);
        src = cand.v;
        src_n = cand.n;
    } else {
        src = all->v;
        src_n = all->n;
    }
    if (q->page)
        skip = (size_t)(q->page - 1) * (size_t)q->page_size;
    for (i = 0; i < src_n && !b.failed; i++) {
        if (indexed && i > 0 && src[i] == src[i - 1])
            continue;   /* OR of two index hits */
        if (!matches(q, src[i]))
            continue;
        total++;
        if (total <= skip || (q->page && n_out >= (size_t)q->page_size))
            continue;
        if (n_out++)
            out_add(&b, ",", 1);
        render(&b, ent, src[i], 0);
    }
    pthread_mutex_unlock(&x->data);
    out_str(&b, "]");
    if (q->page) {
        char pg[160];
        size_t pages = (total + (size_t)q->page_size - 1) / (size_t)q->page_size;
        snprintf(pg, sizeof(pg),
                 ",\"pagination\":{\"page\":%ld,\"pageSize\":%ld,\"pageCount\":%zu,"
                 "\"itemCount\":%zu}",
                 q->page, q->page_size, pages, total);
        out_str(&b, pg);
    }
    out_str(&b, "}");
    reply_text(c->resp, &b);
out:
    free(b.p);
    free(cand.v);
    query_free(q);
    free(q);
}

static void one_get(struct call *c, enum entity ent)
{
    struct xero *x = c->x;
    const char *id = c->req->params[0];
    const void *rec;
    struct outbuf b = {0};
    envelope_open(&b, ENTITY_ENVELOPE[ent]);
    pthread_mutex_lock(&x->data);
    if (ent == E_CONTACT) {
        rec = hidx_get(&x->c_id, id);
    } else if (ent == E_INVOICE || ent == E_CREDIT_NOTE) {
        const struct docs *d = &x->docs[ent == E_CREDIT_NOTE ? KIND_CREDIT_NOTE.store
                                                             : KIND_INVOICE.store];
        rec = is_uuid_like(id) ? hidx_get(&d->id, id) : hidx_get(&d->number, id);
    } else if (ent == E_BANK_TXN) {
        rec = hidx_get(&x->bt_id, id);
    } else if (ent == E_MANUAL_JOURNAL) {
        rec = hidx_get(&x->mj_id, id);
    } else if (ent == E_BANK_TRANSFER) {
        rec = hidx_get(&x->btr_id, id);
    } else {
        rec = hidx_get(&x->p_id, id);
    }
    if (rec)
        render(&b, ent, rec, 0);
    pthread_mutex_unlock(&x->data);
    if (!rec) {
        free(b.p);
        reply_not_found(c->resp);
        return;
    }
    out_str(&b, "]}");
    reply_text(c->resp, &b);
}

/* ==== settings reads ====================================================== */

static void op_organisation(struct call *c)
{
    struct xero *x = c->x;
    reply_json(c->resp, 200,
               envelope("Organisations",
                        json_pack("[{s:s,s:s,s:s,s:s,s:s,s:s}]", "OrganisationID", x->tenant_id,
                                  "Name", x->tenant_name, "LegalName", x->tenant_name,
                                  "BaseCurrency", x->base_currency, "CountryCode", "GB",
                                  "OrganisationStatus", "ACTIVE")));
}

static void op_accounts(struct call *c)
{
    struct xero *x = c->x;
    json_t *arr = json_array();
    for (size_t i = 0; i < x->n_accounts; i++) {
        const struct account *a = &x->accounts[i];
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:b}", "AccountID", a->id,
                                             "Code", a->code, "Name", a->name, "Type", a->type,
                                             "Status", "ACTIVE", "EnablePaymentsToAccount",
                                             a->payments_enabled));
    }
    reply_json(c->resp, 200, envelope("Accounts", arr));
}

/* ==== admin =============================================================== */

static void op_stats(struct call *c)
{
    struct xero *x = c->x;
    json_t *st, *resp = json_object(), *limited;
    size_t nc, ni, np, ncn, na, nbt, nmj, ntr;
    uint64_t dinv, dpay, dcn;
    pthread_mutex_lock(&x->data);
    nc = x->contacts.n;
    ni = x->docs[KIND_INVOICE.store].recs.n;
    ncn = x->docs[KIND_CREDIT_NOTE.store].recs.n;
    np = x->payments.n;
    na = x->allocations.n;
    ntr = x->transfers.n;
    nbt = x->bank_txns.n - 2 * ntr; /* a transfer's two legs are not counted */
    nmj = x->journals.n;
    dinv = x->docs[KIND_INVOICE.store].dup_refs;
    dcn = x->docs[KIND_CREDIT_NOTE.store].dup_refs;
    dpay = x->dup_payment_refs;
    pthread_mutex_unlock(&x->data);
    pthread_mutex_lock(&x->gate);
    for (int s = 100; s < 600; s++) {
        char key[8];
        if (!x->responses[s])
            continue;
        snprintf(key, sizeof(key), "%d", s);
        json_object_set_new(resp, key, json_integer((json_int_t)x->responses[s]));
    }
    limited = json_pack("{s:I,s:I,s:I,s:I}", "minute", (json_int_t)x->limited_minute, "day",
                        (json_int_t)x->limited_day, "concurrent",
                        (json_int_t)x->limited_concurrent, "appminute",
                        (json_int_t)x->limited_app);
    st = json_pack("{s:I,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:I}", "contacts",
                   (json_int_t)nc, "invoices", (json_int_t)ni, "payments", (json_int_t)np,
                   "requests", (json_int_t)x->requests, "responses", resp, "idempotent_replays",
                   (json_int_t)x->replays, "idempotency_keys", (json_int_t)x->idem_n,
                   "idempotency_evictions", (json_int_t)x->idem_evictions,
                   "duplicate_invoice_references", (json_int_t)dinv,
                   "duplicate_payment_references", (json_int_t)dpay, "tokens_issued",
                   (json_int_t)x->tokens_issued, "rate_limited", limited, "faults_injected",
                   (json_int_t)0);
    pthread_mutex_unlock(&x->gate);
    if (st) {
        json_object_set_new(st, "credit_notes", json_integer((json_int_t)ncn));
        json_object_set_new(st, "allocations", json_integer((json_int_t)na));
        json_object_set_new(st, "bank_transactions", json_integer((json_int_t)nbt));
        json_object_set_new(st, "manual_journals", json_integer((json_int_t)nmj));
        json_object_set_new(st, "bank_transfers", json_integer((json_int_t)ntr));
        json_object_set_new(st, "duplicate_credit_note_references", json_integer((json_int_t)dcn));
    }
    reply_json(c->resp, 200, st);
}

static void op_reset(struct call *c)
{
    struct xero *x = c->x;
    pthread_mutex_lock(&x->data);
    pthread_mutex_lock(&x->gate);
    clear_data(x);
    clear_idempotency(x, 0);
    x->requests = x->replays = x->idem_evictions = 0;
    memset(x->responses, 0, sizeof(x->responses));
    x->limited_minute = x->limited_day = x->limited_concurrent = x->limited_app = 0;
    x->w_minute.n = x->w_minute.head = 0;
    x->w_app.n = x->w_app.head = 0;
    x->day_count = 0;
    x->day_start_ns = 0;
    memset(&x->fail, 0, sizeof(x->fail));
    pthread_mutex_unlock(&x->gate);
    pthread_mutex_unlock(&x->data);
    malloc_trim(0);     /* hand the freed records back to the system */
    reply_json(c->resp, 200, json_pack("{s:s}", "status", "reset"));
}

/* POST /_sandbox/fail_next {"method": "PUT", "path": "/api.xro/2.0/BankTransactions",
 * "status": 503, "count": 1, "after_commit": false}: the next `count`
 * (default 1) admitted calls of that method and path (no query) answer
 * `status` (default 503, 400..599) with a gateway problem body instead of
 * running; with after_commit the operation runs (and its reply is kept for
 * its Idempotency-Key) but the client gets `status`: a reply lost on the
 * way. For a fault in one step of a multi-call operation, which the
 * framework's rates cannot aim at. {"count": 0} or a reset clears it. */
static void op_fail_next(struct call *c)
{
    struct xero *x = c->x;
    json_t *b = json_loadb(c->req->body ? c->req->body : "", c->req->body_len, 0, NULL);
    const char *method = json_string_value(json_object_get(b, "method"));
    const char *path = json_string_value(json_object_get(b, "path"));
    json_t *st = json_object_get(b, "status"), *n = json_object_get(b, "count");
    json_int_t status = st ? json_integer_value(st) : 503, count = n ? json_integer_value(n) : 1;
    if (!json_is_object(b) || !method || strlen(method) >= sizeof(x->fail.method) || !path ||
        strlen(path) >= sizeof(x->fail.path) || (st && !json_is_integer(st)) ||
        (n && !json_is_integer(n)) || status < 400 || status > 599 || count < 0 ||
        count > 1000000) {
        json_decref(b);
        reply_problem(c->resp, 400, "Bad Request",
                      "expected {\"method\", \"path\" (no query), \"status\" 400..599, "
                      "\"count\" >= 0, \"after_commit\"}");
        return;
    }
    pthread_mutex_lock(&x->gate);
    copy_str(x->fail.method, sizeof(x->fail.method), method);
    copy_str(x->fail.path, sizeof(x->fail.path), path);
    x->fail.status = (int)status;
    x->fail.count = (unsigned)count;
    x->fail.after_commit = json_is_true(json_object_get(b, "after_commit"));
    pthread_mutex_unlock(&x->gate);
    reply_json(c->resp, 200, json_pack("{s:s,s:s,s:I,s:I}", "method", method, "path", path,
                                       "status", status, "count", count));
    json_decref(b);
}

/* The status a fail_next asks for this request (0: none); gate held. */
static int fail_next_take(struct xero *x, const struct pb_http_request *req, int *after_commit)
{
    if (!x->fail.count || strcmp(x->fail.method, req->method) || strcmp(x->fail.path, req->path))
        return 0;
    x->fail.count--;
    *after_commit = x->fail.after_commit;
    return x->fail.status;
}

/* ==== dispatch ============================================================ */

static void count_response(struct xero *x, int status)
{
    pthread_mutex_lock(&x->gate);
    x->requests++;
    if (status >= 100 && status < 600)
        x->responses[status]++;
    pthread_mutex_unlock(&x->gate);
}

static void run_op(struct call *c, enum op op)
{
    switch (op) {
    case OP_TOKEN: op_token(c); break;
    case OP_CONNECTIONS: op_connections(c); break;
    case OP_ORGANISATION: op_organisation(c); break;
    case OP_ACCOUNTS: op_accounts(c); break;
    case OP_CONTACTS_GET: list_get(c, E_CONTACT); break;
    case OP_CONTACT_GET: one_get(c, E_CONTACT); break;
    case OP_CONTACTS_PUT: contacts_write(c, 1); break;
    case OP_CONTACTS_POST: contacts_write(c, 0); break;
    case OP_INVOICES_GET: list_get(c, E_INVOICE); break;
    case OP_INVOICE_GET: one_get(c, E_INVOICE); break;
    case OP_INVOICES_PUT: invoices_write(c, &KIND_INVOICE, 1, NULL); break;
    case OP_INVOICES_POST: invoices_write(c, &KIND_INVOICE, 0, NULL); break;
    case OP_INVOICE_POST: invoices_write(c, &KIND_INVOICE, 0, c->req->params[0]); break;
    case OP_CREDIT_NOTES_GET: list_get(c, E_CREDIT_NOTE); break;
    case OP_CREDIT_NOTE_GET: one_get(c, E_CREDIT_NOTE); break;
    case OP_CREDIT_NOTES_PUT: invoices_write(c, &KIND_CREDIT_NOTE, 1, NULL); break;
    case OP_CREDIT_NOTES_POST: invoices_write(c, &KIND_CREDIT_NOTE, 0, NULL); break;
    case OP_CREDIT_NOTE_POST: invoices_write(c, &KIND_CREDIT_NOTE, 0, c->req->params[0]); break;
    case OP_ALLOCATIONS_PUT: allocations_write(c, c->req->params[0]); break;
    case OP_PAYMENTS_GET: list_get(c, E_PAYMENT); break;
    case OP_PAYMENT_GET: one_get(c, E_PAYMENT); break;
    case OP_PAYMENTS_PUT: payments_write(c, 0); break;
    case OP_PAYMENTS_POST: payments_write(c, 1); break;
    case OP_PAYMENT_POST: payment_delete(c, c->req->params[0]); break;
    case OP_BANK_TXNS_GET: list_get(c, E_BANK_TXN); break;
    case OP_BANK_TXN_GET: one_get(c, E_BANK_TXN); break;
    case OP_BANK_TXNS_PUT:
    case OP_BANK_TXNS_POST: batch_write(c, &BANK_BATCH); break;
    case OP_BANK_TXN_POST: bank_update(c, c->req->params[0]); break;
    case OP_JOURNALS_GET: list_get(c, E_MANUAL_JOURNAL); break;
    case OP_JOURNAL_GET: one_get(c, E_MANUAL_JOURNAL); break;
    case OP_JOURNALS_PUT:
    case OP_JOURNALS_POST: batch_write(c, &JOURNAL_BATCH); break;
    case OP_TRANSFERS_GET: list_get(c, E_BANK_TRANSFER); break;
    case OP_TRANSFER_GET: one_get(c, E_BANK_TRANSFER); break;
    case OP_TRANSFERS_PUT:
    case OP_TRANSFERS_POST: batch_write(c, &TRANSFER_BATCH); break;
    case OP_FAIL_NEXT: op_fail_next(c); break;
    case OP_STATS: op_stats(c); break;
    case OP_RESET: op_reset(c); break;
    case OP__COUNT: break;
    }
}

static void call_init(struct call *c, struct xero *x, struct pb_http_request *req,
                      struct pb_http_response *resp)
{
    const char *sum = pb_http_query(req, "summarizeErrors");
    const char *udp = pb_http_query(req, "unitdp");
    memset(c, 0, sizeof(*c));
    c->x = x;
    c->req = req;
    c->resp = resp;
    c->summarize = !(sum && !strcasecmp(sum, "false"));
    c->unitdp4 = udp && !strcmp(udp, "4");
    c->now_ms = now_ms();
}

/* Routes outside /api.xro: token, connections, admin. */
static enum pb_http_action plain_handler(struct pb_http_request *req,
                                         struct pb_http_response *resp, void *arg)
{
    struct route_arg *ra = arg;
    struct call c;
    call_init(&c, ra->x, req, resp);
    run_op(&c, ra->op);
    if (ra->op != OP_STATS && ra->op != OP_RESET && ra->op != OP_FAIL_NEXT)
        count_response(ra->x, resp->status);
    return PB_HTTP_DONE;
}

static enum pb_http_action api_handler(struct pb_http_request *req, struct pb_http_response *resp,
                                       void *arg)
{
    struct route_arg *ra = arg;
    struct xero *x = ra->x;
    struct call c;
    struct admission adm;
    struct idem *mine = NULL;
    const char *tenant, *ikey;
    int why, write = strcmp(req->method, "GET") != 0, fail_status = 0, fail_after = 0;

    call_init(&c, x, req, resp);
    if ((why = token_check(x, req)) != 0) {
        pthread_mutex_lock(&x->gate);
        admit(x, &adm, 0);
        pthread_mutex_unlock(&x->gate);
        reply_unauthorized(resp, why);
        goto out;
    }
    tenant = pb_http_header(req, "xero-tenant-id");
    if (!tenant || strcasecmp(tenant, x->tenant_id) != 0) {
        pthread_mutex_lock(&x->gate);
        admit(x, &adm, 0);
        pthread_mutex_unlock(&x->gate);
        reply_problem(resp, 403, "Forbidden", "AuthorizationUnsuccessful");
        goto out;
    }
    pthread_mutex_lock(&x->gate);
    admit(x, &adm, 1);
    if (adm.admitted)
        fail_status = fail_next_take(x, req, &fail_after);
    pthread_mutex_unlock(&x->gate);
    if (!adm.admitted) {
        char buf[16];
        snprintf(buf, sizeof(buf), "%u", adm.retry_after);
        pb_http_response_header(resp, "Retry-After", buf);
        pb_http_response_header(resp, "X-Rate-Limit-Problem", adm.problem);
        reply_problem(resp, 429, "Too Many Requests", "Rate limit exceeded");
        goto out;
    }
    if (fail_status && !fail_after) {
        reply_problem(resp, fail_status, "Injected", "failed by /_sandbox/fail_next");
        goto release;
    }
    ikey = write ? pb_http_header(req, "Idempotency-Key") : NULL;
    if (ikey && strlen(ikey) > IDEM_KEY_MAX) {
        reply_exception(resp, 400, 10, "ValidationException",
                        "Idempotency-Key must be at most %d characters", IDEM_KEY_MAX);
        goto release;
    }
    if (ikey && *ikey) {
        char key[IDEM_KEY_MAX + 2200];
        char *body = NULL;
        size_t len = 0;
        int status = 0, r;
        snprintf(key, sizeof(key), "%s %s\n%s", req->method, req->path, ikey);
        pthread_mutex_lock(&x->gate);
        r = idem_begin(x, key, &mine, &status, &body, &len);
        pthread_mutex_unlock(&x->gate);
        if (r == 1) {
            pb_http_response_body_take(resp, status, body, len);
            pb_http_response_header(resp, "Idempotent-Replayed", "true");
            goto release;
        }
        if (r < 0) {
            reply_problem(resp, 500, "InternalError", "out of memory");
            goto release;
        }
    }
    run_op(&c, ra->op);
    if (mine) {
        pthread_mutex_lock(&x->gate);
        idem_end(x, mine, resp);
        pthread_mutex_unlock(&x->gate);
    }
    if (fail_status) /* after_commit: done, but the reply is lost */
        reply_problem(resp, fail_status, "Injected", "failed by /_sandbox/fail_next after commit");
release:
    pthread_mutex_lock(&x->gate);
    x->inflight--;
    pthread_mutex_unlock(&x->gate);
out:
    limit_headers(resp, &adm);
    count_response(x, resp->status);
    return PB_HTTP_DONE;
}

static void build_routes(struct xero *x)
{
    static const struct {
        const char *method, *pattern;
        enum op op;
        int api;
    } table[] = {
        {"POST", "/connect/token", OP_TOKEN, 0},
        {"GET", "/connections", OP_CONNECTIONS, 0},
        {"GET", API "/Organisation", OP_ORGANISATION, 1},
        {"GET", API "/Accounts", OP_ACCOUNTS, 1},
        {"GET", API "/Contacts", OP_CONTACTS_GET, 1},
        {"PUT", API "/Contacts", OP_CONTACTS_PUT, 1},
        {"POST", API "/Contacts", OP_CONTACTS_POST, 1},
        {"GET", API "/Contacts/{}", OP_CONTACT_GET, 1},
        {"GET", API "/Invoices", OP_INVOICES_GET, 1},
        {"PUT", API "/Invoices", OP_INVOICES_PUT, 1},
        {"POST", API "/Invoices", OP_INVOICES_POST, 1},
        {"GET", API "/Invoices/{}", OP_INVOICE_GET, 1},
        {"POST", API "/Invoices/{}", OP_INVOICE_POST, 1},
        {"GET", API "/Payments", OP_PAYMENTS_GET, 1},
        {"PUT", API "/Payments", OP_PAYMENTS_PUT, 1},
        {"POST", API "/Payments", OP_PAYMENTS_POST, 1},
        {"GET", API "/Payments/{}", OP_PAYMENT_GET, 1},
        {"POST", API "/Payments/{}", OP_PAYMENT_POST, 1},
        {"GET", API "/BankTransactions", OP_BANK_TXNS_GET, 1},
        {"PUT", API "/BankTransactions", OP_BANK_TXNS_PUT, 1},
        {"POST", API "/BankTransactions", OP_BANK_TXNS_POST, 1},
        {"GET", API "/BankTransactions/{}", OP_BANK_TXN_GET, 1},
        {"POST", API "/BankTransactions/{}", OP_BANK_TXN_POST, 1},
        {"GET", API "/ManualJournals", OP_JOURNALS_GET, 1},
        {"PUT", API "/ManualJournals", OP_JOURNALS_PUT, 1},
        {"POST", API "/ManualJournals", OP_JOURNALS_POST, 1},
        {"GET", API "/ManualJournals/{}", OP_JOURNAL_GET, 1},
        {"GET", API "/BankTransfers", OP_TRANSFERS_GET, 1},
        {"PUT", API "/BankTransfers", OP_TRANSFERS_PUT, 1},
        {"POST", API "/BankTransfers", OP_TRANSFERS_POST, 1},
        {"GET", API "/BankTransfers/{}", OP_TRANSFER_GET, 1},
        {"GET", API "/CreditNotes", OP_CREDIT_NOTES_GET, 1},
        {"PUT", API "/CreditNotes", OP_CREDIT_NOTES_PUT, 1},
        {"POST", API "/CreditNotes", OP_CREDIT_NOTES_POST, 1},
        {"GET", API "/CreditNotes/{}", OP_CREDIT_NOTE_GET, 1},
        {"POST", API "/CreditNotes/{}", OP_CREDIT_NOTE_POST, 1},
        {"PUT", API "/CreditNotes/{}/Allocations", OP_ALLOCATIONS_PUT, 1},
        {"GET", "/_sandbox/stats", OP_STATS, 0},
        {"POST", "/_sandbox/reset", OP_RESET, 0},
        {"POST", "/_sandbox/fail_next", OP_FAIL_NEXT, 0},
    };
    size_t n = sizeof(table) / sizeof(table[0]);
    _Static_assert(sizeof(table) / sizeof(table[0]) < sizeof(x->routes) / sizeof(x->routes[0]),
                   "xero.routes must hold every route and the sentinel");
    for (size_t i = 0; i < n; i++) {
        x->args[table[i].op] = (struct route_arg){x, table[i].op};
        x->routes[i] = (struct pb_http_route){table[i].method, table[i].pattern,
                                              table[i].api ? api_handler : plain_handler,
                                              &x->args[table[i].op]};
    }
    x->routes[n] = (struct pb_http_route){NULL, NULL, NULL, NULL};
}

static const struct pb_http_route *xero_routes(void *state)
{
    struct xero *x = state;
    return x->routes;
}

const struct sbx_emulator_type sbx_xero_type = {
    .name = "xero",
    .create = xero_create,
    .routes = xero_routes,
    .started = NULL,
    .destroy = xero_destroy,
};
