/*
 * connectors/syspro/syspro_internal.h: what the files of the SYSPRO connector
 * share, and nothing else may include (tests excepted).
 *
 *   syspro.c           the type table, settings, max_batch, execute() dispatch.
 *   syspro_session.c   the e.net session (logon, reuse, logon again once when
 *                      SYSPRO says the UserId is no longer valid, logoff), one
 *                      business-object call (URL, limiter, trace), percent-
 *                      encoding. The session id is the only mutable shared
 *                      state, always under session_lock.
 *   syspro_xml.c       JSON documents turned into business-object XML with
 *                      libxml2 (escaping is libxml2's, never ours), replies
 *                      decoded (XML declaration, Content-Type charset, UTF-8,
 *                      else Windows-1252) and parsed, element look-up ignoring
 *                      case, and the classification of a 200 that carries a
 *                      business error.
 *   syspro_commands.c  customer.ensure, stock.check, salesorder.create,
 *                      arpayment.post, creditnote.create.
 *   syspro_recon.c     reconciliation: ledger() reads the AR payments and
 *                      credit notes back by date (ar_payment_query), and
 *                      post_journal() posts a GL journal (gl_journal) once per
 *                      reference (gl_journal_query looks it up first).
 *
 * Threading. Many worker threads call execute() on one connection at once,
 * each with its own HTTP client. Everything in `struct syspro_state` is
 * immutable after init except the session fields, which only
 * syspro_session.c touches, always under session_lock.
 */
#ifndef PB_CONNECTORS_SYSPRO_INTERNAL_H
#define PB_CONNECTORS_SYSPRO_INTERNAL_H

#include <libxml/tree.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "connectors/connector.h"

#define SYSPRO_STATE_MAGIC 0x53595350u /* "SYSP" */
#define SYSPRO_URL_MAX 512             /* longest base_url */
#define SYSPRO_NAME_MAX 64             /* company id, operator, bank, payment type */
#define SYSPRO_BO_MAX 33               /* business object name + NUL */
#define SYSPRO_SESSION_MAX 128         /* longest session id accepted from logon */
#define SYSPRO_TIMEOUT_DEFAULT_MS 30000L
#define SYSPRO_MAX_URL_DEFAULT 16000L /* http.sys' default request-line budget is 16 KiB */
#define SYSPRO_LOGON_RETRY_DEFAULT_S 30L
#define SYSPRO_REPLY_MAX (4u << 20) /* largest reply read */
#define SYSPRO_MESSAGE_MAX 400      /* SYSPRO's words kept for an item */
#define SYSPRO_XML_MAX (1u << 20)   /* largest XmlIn / XmlParameters built */

/* The business objects of one connection (settings.business_objects). */
struct syspro_objects {
    char sales_order[SYSPRO_BO_MAX];       /* SORTOI */
    char sales_order_query[SYSPRO_BO_MAX]; /* SORQRY */
    char ar_payment[SYSPRO_BO_MAX];        /* ARSTPY */
    char customer_setup[SYSPRO_BO_MAX];    /* ARSSCS (unverified name) */
    char customer_query[SYSPRO_BO_MAX];    /* ARSQRY */
    char stock_query[SYSPRO_BO_MAX];       /* INVQRY */
    char credit_note[SYSPRO_BO_MAX];       /* ARSTIN */
    char ar_payment_query[SYSPRO_BO_MAX];  /* ARSQPY (unverified name): ledger() */
    char gl_journal[SYSPRO_BO_MAX];        /* GENTJL (unverified): post_journal() */
    char gl_journal_query[SYSPRO_BO_MAX];  /* GENQJL (unverified): the journal look-up */
};

struct syspro_state {
    unsigned magic;                /* SYSPRO_STATE_MAGIC */
    char base_url[SYSPRO_URL_MAX]; /* ".../SYSPROWCFService/Rest", no trailing '/' */
    char company_id[SYSPRO_NAME_MAX];
    char operator_code[SYSPRO_NAME_MAX];
    struct syspro_objects bo;
    char bank[SYSPRO_NAME_MAX];         /* default Bank of arpayment.post, "" = none */
    char payment_type[SYSPRO_NAME_MAX]; /* default PaymentType, "" = none */
    char posting_period[2];             /* "C" current or "P" previous */
    char hold_order_status[8];          /* SORTOI OrderStatus parameter of a held order */
    char credit_note_type[8];           /* DocumentType of a credit note ("C") */
    int lookup_always;                  /* lookup_before_create: "always" (1) or "retry" (0) */
    long timeout_ms;                    /* every call */
    size_t max_url_bytes;               /* longest request URL sent */
    long logon_retry_s;                 /* no new logon this long after a refused one */
    char currency[4];                   /* settings.currency: the company's local currency,
                                           "" = not set (records must carry theirs) */
    long ledger_page_size;              /* MaxRecords of one ledger query page */
    json_t *params_sales_order;         /* owned: settings.parameters.* overrides, or NULL */
    json_t *params_ar_payment;
    json_t *params_credit_note;
    json_t *params_customer_setup;
    json_t *params_gl_journal;

    pthread_mutex_t session_lock;           /* guards the fields below */
    char session[SYSPRO_SESSION_MAX];       /* the UserId exactly as logon returned it; "" = none */
    uint64_t session_generation;            /* bumped by every logon; 0 = never */
    time_t logon_refused_at;                /* ctx->now of the last refused logon, 0 = none */
    char logon_refusal[SYSPRO_MESSAGE_MAX]; /* what it said */
    uint64_t logons;                        /* successful logons (tests, metrics) */
};

struct syspro_state *pb__syspro_state(const struct pb_connection *c);

/* ---- syspro_session.c --------------------------------------------------------------- */

/* The e.net REST operation of a call. */
enum syspro_op {
    SYSPRO_TRANSACTION_POST, /* .../Transaction/Post */
    SYSPRO_SETUP_ADD,        /* .../Setup/Add */
    SYSPRO_QUERY,            /* .../Query/Query (no XmlParameters) */
};

struct syspro_request {
    enum syspro_op op;
    const char *business_object; /* "SORTOI" */
    const char *xml_parameters;  /* UTF-8 XML or NULL */
    const char *xml_in;          /* UTF-8 XML */
};

/* What SYSPRO answered to a business-object call that reached it. */
struct syspro_reply {
    xmlDocPtr doc;                    /* owned: the parsed reply; NULL when refused as text */
    int refused;                      /* a business error: "ERROR: ..." text, ErrorNumber,
                                         ErrorDescription or RecordsInvalid/ItemsInvalid > 0 */
    char message[SYSPRO_MESSAGE_MAX]; /* SYSPRO's words when refused (PANs masked) */
};

/* One business-object call on the shared session, with one logon again when
 * SYSPRO says the UserId is invalid or expired. PB_OK when SYSPRO answered
 * (out->refused says whether it refused); otherwise the failure: network,
 * timeout, 5xx, 429 (PB_ERR_TRANSIENT, ctx->retry_after_s set from
 * Retry-After), a refused logon (PB_ERR_TRANSIENT), an unreadable reply
 * (PB_ERR_TRANSIENT), a URL over max_url_bytes or another 4xx
 * (PB_ERR_PERMANENT). Free out with pb__syspro_reply_free(). */
enum pb_rc pb__syspro_call(struct pb_connection *c, struct pb_call_ctx *ctx,
                           const struct syspro_request *rq, struct syspro_reply *out,
                           struct pb_err *err);
void pb__syspro_reply_free(struct syspro_reply *r);

/* GET .../Logoff for the cached session, if any, on a client of its own
 * (destroy has no call context). Never fails loudly. */
void pb__syspro_logoff(struct syspro_state *st);

/* Is this "ERROR: ..." text SYSPRO's way of saying the UserId is not (or no
 * longer) logged on? Quoted parts ('...') are ignored, so a customer code in a
 * message cannot pass for it. */
int pb__syspro_is_session_error(const char *text, size_t len);

/* A bounded growing string. */
struct syspro_buf {
    char *data; /* malloc'd, NUL-terminated */
    size_t len, cap;
    size_t max; /* refuse to grow beyond this */
    int failed; /* an append failed: data is incomplete */
};
void pb__syspro_buf_init(struct syspro_buf *b, size_t max);
void pb__syspro_buf_add(struct syspro_buf *b, const char *s, size_t n);
void pb__syspro_buf_adds(struct syspro_buf *b, const char *s);
/* Percent-encode everything but RFC 3986 unreserved characters (so the two
 * trailing spaces of a session id go out as %20%20). */
void pb__syspro_buf_add_escaped(struct syspro_buf *b, const char *s);
void pb__syspro_buf_free(struct syspro_buf *b);

/* ---- syspro_xml.c --------------------------------------------------------------------- */

/* Ensure libxml2 is initialised (idempotent; called by init). */
void pb__syspro_xml_init(void);

/* A new document whose root element is `root_name`; NULL when out of memory. */
xmlDocPtr pb__syspro_xml_new(const char *root_name, xmlNodePtr *root_out);

/* Append JSON `v` under `parent` as element(s) `name`: strings as text
 * (escaped by libxml2 on output), integers as digits, booleans as Y / N,
 * objects as nested elements, arrays as repeated elements, null left out.
 * PB_ERR_MAPPING for a real number (money and quantities travel as decimal
 * text), a name that is not an XML name, a control character, an array in an
 * array, or nesting deeper than 8; `path` names the member in the message. */
enum pb_rc pb__syspro_xml_add(xmlNodePtr parent, const char *name, json_t *v, const char *path,
                              struct pb_err *err);

/* Append every member of object `obj` except those named in `skip` (NULL-
 * terminated, compared ignoring case). */
enum pb_rc pb__syspro_xml_add_members(xmlNodePtr parent, json_t *obj, const char *const *skip,
                                      const char *path, struct pb_err *err);

/* Add a text child, or replace the text of an existing child of that name. */
xmlNodePtr pb__syspro_xml_set(xmlNodePtr parent, const char *name, const char *text);

/* The document's root element serialised as UTF-8 without a declaration
 * (malloc'd), or NULL when out of memory or larger than SYSPRO_XML_MAX. */
char *pb__syspro_xml_dump(xmlDocPtr doc);

/* Parse a reply body: the encoding is the XML declaration's, else the
 * Content-Type charset, else UTF-8 when the bytes are valid UTF-8, else
 * Windows-1252. NULL with `why` filled when it is not XML. */
xmlDocPtr pb__syspro_xml_parse_reply(const char *body, size_t len, const char *content_type,
                                     char *why, size_t why_len);

/* First element named `name` (ignoring case) below `from` (depth first,
 * `from` itself excluded), or NULL. */
xmlNodePtr pb__syspro_find(xmlNodePtr from, const char *name);
/* First child element of `parent` named `name` (ignoring case), or NULL. */
xmlNodePtr pb__syspro_child(xmlNodePtr parent, const char *name);
/* The text of an element, blanks trimmed, into buf ("" when n is NULL). */
const char *pb__syspro_text(xmlNodePtr n, char *buf, size_t len);
/* Text of the first descendant `name` of `from` into buf; NULL when absent or empty. */
const char *pb__syspro_find_text(xmlNodePtr from, const char *name, char *buf, size_t len);

/* Does the reply carry a business error? Fills `message` with SYSPRO's
 * ErrorDescription(s) (and ErrorNumber), or with the invalid count. */
int pb__syspro_reply_refused(xmlDocPtr doc, char *message, size_t len);

/* An element as JSON: text-only children become strings, children with
 * children objects, a repeated name an array. New reference, never NULL
 * unless out of memory. */
json_t *pb__syspro_element_json(xmlNodePtr n);

/* ---- syspro_commands.c ------------------------------------------------------------- */

/* Each runs one item (max_batch is 1 for every command) and sets its outcome.
 * Returns PB_OK when the item carries its own outcome, or the rc of a failure
 * of the whole call (a refused logon), also set on the item. */
enum pb_rc pb__syspro_customer_ensure(struct pb_connection *c, struct pb_call_ctx *ctx,
                                      struct pb_sink_item *it, struct pb_err *err);
enum pb_rc pb__syspro_stock_check(struct pb_connection *c, struct pb_call_ctx *ctx,
                                  struct pb_sink_item *it, struct pb_err *err);
enum pb_rc pb__syspro_salesorder_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        struct pb_sink_item *it, struct pb_err *err);
enum pb_rc pb__syspro_arpayment_post(struct pb_connection *c, struct pb_call_ctx *ctx,
                                     struct pb_sink_item *it, struct pb_err *err);
enum pb_rc pb__syspro_creditnote_create(struct pb_connection *c, struct pb_call_ctx *ctx,
                                        struct pb_sink_item *it, struct pb_err *err);

/* Does SYSPRO's refusal of a query mean "there is no such record"? */
int pb__syspro_says_not_found(const char *message);

/* <root_name><Parameters> with `defaults` (name, value pairs, NULL-terminated)
 * then the settings' `overrides` (borrowed, may be NULL); *params_out is the
 * Parameters element. NULL when out of memory. The caller frees the doc. */
xmlDocPtr pb__syspro_parameters_doc(const char *root_name, const char *const *defaults,
                                    json_t *overrides, xmlNodePtr *params_out);

void pb__syspro_item_ok(struct pb_sink_item *it, const char *erp_id, json_t *result_taken);
void pb__syspro_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- syspro_recon.c ------------------------------------------------------------------ */

/* The type table's ledger() and post_journal() (connector.h). */
enum pb_rc pb__syspro_ledger(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                             int32_t to_day, json_t *records, struct pb_err *err);
enum pb_rc pb__syspro_post_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                                   const json_t *journal, char *erp_id, size_t erp_id_len,
                                   struct pb_err *err);

#endif
