/*
 * connectors/sagex3/sagex3_internal.h: what the files of the Sage X3
 * connector share, and nothing else may include (the unit tests excepted).
 *
 *   sagex3.c           the type table, settings and ids, max_batch, execute()
 *                      dispatch.
 *   sagex3_xml.c       JSON documents to X3 object XML (<PARAM><GRP><FLD>) and
 *                      X3's <RESULT> back to JSON, with libxml2; the text rules
 *                      (what XML 1.0 can carry).
 *   sagex3_soap.c      one call of the CAdxWebServiceXmlCC SOAP service: the
 *                      envelope, HTTP Basic, the trace, the reply (status,
 *                      messages, resultXml, technicalInfos, or a Fault) and its
 *                      classification.
 *   sagex3_commands.c  customer.upsert, salesorder.create, stock.allocate,
 *                      payment.create, journal.create.
 *   sagex3_recon.c     reconciliation: ledger() reads the PAY receipts (and
 *                      the GACC credit memos) of a date range back;
 *                      post_journal() saves a GACC once per reference.
 *
 * The JSON form of an X3 object ("mirror" form) is used both ways: an object
 * whose members are group ids. A member holding an object is a <GRP ID=...>
 * of fields; one holding an array of objects is a <TAB ID=...> of <LIN>es.
 * Field values are text (decimals stay exact strings), integers, or arrays
 * of those (<LST><ITM>). The lower-case member "x3" of a document is not a
 * group: it carries per-document overrides of the ids (public_name, group,
 * key_field, ...). Group ids and field names are upper-case, so they cannot
 * collide with it.
 *
 * Threading. Many worker threads call execute() on one connection at once,
 * each with its own HTTP client. `struct sagex3_state` is written by init()
 * only; nothing is shared that changes, so there is no lock. libxml2 is used
 * per call on private documents (thread-safe once xmlInitParser() has run,
 * which init() does on the configuring thread).
 */
#ifndef PB_CONNECTORS_SAGEX3_INTERNAL_H
#define PB_CONNECTORS_SAGEX3_INTERNAL_H

#include <jansson.h>
#include <libxml/tree.h>
#include <stddef.h>

#include "connectors/connector.h"

#define SAGEX3_STATE_MAGIC 0x58335833u /* "X3X3" */
#define SAGEX3_URL_MAX 1024            /* base_url + soap_path */
#define SAGEX3_ID_MAX 32               /* public names, group ids, field names */
#define SAGEX3_TEXT_MAX 256            /* code_lang, pool_alias, pool_id, request_config */
#define SAGEX3_SITE_MAX 32             /* default_site */
#define SAGEX3_TIMEOUT_DEFAULT_MS 60000L
#define SAGEX3_OBJECT_XML_MAX ((size_t)1 << 20) /* the largest objectXml sent */
#define SAGEX3_REPLY_MAX ((size_t)8 << 20)      /* the largest SOAP reply read */
#define SAGEX3_QUERY_LIST_SIZE 5                /* listSize of a look-up by reference */
#define SAGEX3_LEDGER_PAGE_DEFAULT 100          /* listSize of one page of ledger() */
#define SAGEX3_LEDGER_PAGE_MAX 1000             /* settings.ledger_page_size at most */

enum sagex3_entity {
    X3_CUSTOMER,
    X3_SALES_ORDER,
    X3_ALLOCATION,
    X3_PAYMENT,
    X3_JOURNAL,
    X3_ENTITY_COUNT
};

/* The ids one entity is known by at an installation. "" = not used. */
struct sagex3_ids {
    char public_name[SAGEX3_ID_MAX + 1];     /* BPC, SOH, ALASTO, PAY, GACC, or a site's YOSOH */
    char group[SAGEX3_ID_MAX + 1];           /* the header group the connector adds fields to */
    char key_field[SAGEX3_ID_MAX + 1];       /* the record's number: BPCNUM, SOHNUM, NUM, ALLNUM */
    char reference_field[SAGEX3_ID_MAX + 1]; /* looked up on a retry: CUSORDREF, REF */
    char match_field[SAGEX3_ID_MAX + 1];     /* customer: matched on when the doc has no key */
    char site_field[SAGEX3_ID_MAX + 1];      /* sales order: SALFCY */
    char order_field[SAGEX3_ID_MAX + 1];     /* allocation: SOHNUM */
    char date_field[SAGEX3_ID_MAX + 1];      /* payment, journal: ACCDAT (YYYYMMDD) */
    char amount_field[SAGEX3_ID_MAX + 1];    /* payment: AMTCUR */
    char table[SAGEX3_ID_MAX + 1];           /* journal: the table of lines, GACC1_1 */
};

struct sagex3_state {
    unsigned magic;                         /* SAGEX3_STATE_MAGIC */
    char url[SAGEX3_URL_MAX];               /* base_url + soap_path */
    char code_lang[SAGEX3_TEXT_MAX];        /* callContext codeLang, e.g. ENG */
    char pool_alias[SAGEX3_TEXT_MAX];       /* callContext poolAlias */
    char pool_id[SAGEX3_TEXT_MAX];          /* callContext poolId (usually empty) */
    char request_config[SAGEX3_TEXT_MAX];   /* callContext requestConfig */
    char default_site[SAGEX3_SITE_MAX + 1]; /* SALFCY when a sales order has none; "" = none */
    long timeout_ms;                        /* every SOAP call */
    int customer_modify;                    /* 1: a found customer that differs is modified */
    /* reconciliation (sagex3_recon.c) */
    char journal_type[SAGEX3_ID_MAX + 1];   /* TYP of posted journals; "" = post_journal refused */
    char journal_site[SAGEX3_SITE_MAX + 1]; /* FCY of posted journals; "" = not sent */
    char refund_account[SAGEX3_ID_MAX + 1]; /* GACC credits to it are refunds; "" = none read */
    int ledger_page_size;                   /* listSize of one ledger() query page */
    struct sagex3_ids ids[X3_ENTITY_COUNT]; /* settings over built-in defaults */
};

struct sagex3_state *pb__sagex3_state(const struct pb_connection *c);

/* The ids of entity `e` for one document: its "x3" member (public_name,
 * group, key_field, ...) over the connection's. PB_ERR_MAPPING naming the
 * key when "x3" holds an unknown key or a value that is not an X3 id. */
enum pb_rc pb__sagex3_ids_for(const struct sagex3_state *st, const json_t *doc,
                              enum sagex3_entity e, struct sagex3_ids *out, struct pb_err *err);

/* "customer", "sales_order", ... (the settings keys). */
extern const char *const pb__sagex3_entity_names[X3_ENTITY_COUNT];

/* 1 when `s` is an X3 identifier: an upper-case letter, then upper-case
 * letters, digits or '_', at most SAGEX3_ID_MAX in all. */
int pb__sagex3_valid_id(const char *s);

/* ---- sagex3_xml.c -------------------------------------------------------------- */

/* 1 when the n bytes of UTF-8 at s are all XML 1.0 characters (no NUL, no
 * C0 control but TAB, LF, CR, no U+FFFE/U+FFFF). Otherwise 0 and, when
 * bad_cp is set, the offending code point. */
int pb__sagex3_xml_text_ok(const char *s, size_t n, unsigned long *bad_cp);

/* Serialise a mirror-form document as <PARAM>...</PARAM> (libxml2 escapes
 * every value and attribute). Members named "x3" are skipped. On success
 * *xml_out is malloc'd text the caller frees. PB_ERR_MAPPING with a message
 * naming the member for anything that is not a group, a table of lines,
 * an id, text, an integer or a list of those (a JSON real is refused: a
 * decimal must be text); PB_ERR_TOOBIG above SAGEX3_OBJECT_XML_MAX. */
enum pb_rc pb__sagex3_param_xml(const json_t *doc, char **xml_out, struct pb_err *err);

/* Parse XML text from X3 (no network, no DTD accepted). NULL and `why` set
 * when it is not well-formed. The caller frees the result with xmlFreeDoc. */
xmlDocPtr pb__sagex3_xml_parse(const char *text, size_t len, char *why, size_t why_len);

/* The local name of an element ("Body" for <soapenv:Body>), "" for others. */
const char *pb__sagex3_local_name(const xmlNode *n);
/* The first element child of `parent` with local name `name` (NULL = any). */
xmlNode *pb__sagex3_child(const xmlNode *parent, const char *name);
/* An element's text, whitespace-trimmed, as a malloc'd string ("" if none). */
char *pb__sagex3_text(const xmlNode *n);

/* The mirror form of a <RESULT> (or <PARAM>): groups as objects of fields,
 * tables as arrays of lines; lines directly under the root (a query's list)
 * go under "lines". All values are strings. New reference, or NULL. */
json_t *pb__sagex3_result_json(const xmlNode *root);

/* The lines of a query's result (LIN under the root or under a TAB), each an
 * object of fields. New reference (an empty array when none), NULL on OOM. */
json_t *pb__sagex3_query_lines(const xmlNode *root);

/* The value of field `name` in a mirror-form object, searching its groups in
 * order (then, for a flat line object, its own members). Strings are
 * returned as they are, integers written into buf. NULL when absent or "". */
const char *pb__sagex3_field(const json_t *mirror, const char *name, char *buf, size_t len);

/* ---- sagex3_soap.c ------------------------------------------------------------- */

struct sagex3_key {
    const char *key; /* a field name, e.g. BPCNUM */
    const char *value;
};

struct sagex3_request {
    const char *operation; /* "save", "read", "query", "run", "modify" */
    const char *public_name;
    const struct sagex3_key *keys; /* objectKeys (read, query, modify) */
    size_t n_keys;
    const char *xml; /* objectXml (save, modify) or inputXml (run) */
    int list_size;   /* query: listSize */
};

/* X3's answer to one operation (the CAdxResultXml). */
struct sagex3_result {
    int status;       /* 1 = done, 0 = refused */
    int busy;         /* technicalInfos/busy was true */
    json_t *messages; /* [{"type":1|2|3,"message":"..."}] */
    xmlDocPtr result; /* the parsed resultXml, or NULL */
};

/* How a call or an item ended when it did not succeed. */
struct sagex3_failure {
    enum pb_rc rc;     /* PB_ERR_TRANSIENT / PERMANENT / AUTH / ... */
    int retry_after_s; /* -1 unless X3 (or a proxy) asked for a delay */
    char message[512];
};

/* One SOAP call. PB_OK when X3 answered with a result, whatever its status
 * (then *res is filled; free it with pb__sagex3_result_free). Otherwise the
 * rc of the failure, described in *f: transport, HTTP status, SOAP Fault,
 * unreadable reply. Appends the call to ctx->trace. */
enum pb_rc pb__sagex3_call(struct pb_connection *c, struct pb_call_ctx *ctx,
                           const struct sagex3_request *rq, struct sagex3_result *res,
                           struct sagex3_failure *f);

void pb__sagex3_result_free(struct sagex3_result *res);

/* Describe a status-0 result: transient when X3 says the pool is busy (or
 * no connection is available, or a record is locked), else permanent with
 * X3's error messages joined by "; ". `what` names the operation. */
void pb__sagex3_refusal(const struct sagex3_result *res, const char *what,
                        struct sagex3_failure *f);

/* 1 when every error message of a status-0 result says the record does
 * not exist (a read of an absent key); 1 likewise for "already exists". */
int pb__sagex3_says_not_found(const struct sagex3_result *res);
int pb__sagex3_says_exists(const struct sagex3_result *res);

/* The SOAP Fault rule: PB_ERR_PERMANENT when faultcode is a Client fault or
 * faultstring names a business error, else PB_ERR_TRANSIENT. */
enum pb_rc pb__sagex3_classify_fault(const char *faultcode, const char *faultstring);

/* ---- sagex3_commands.c --------------------------------------------------------- */

/* Each runs one item (X3 saves one object per call) and sets its outcome. */
void pb__sagex3_customer_upsert(struct pb_connection *c, struct pb_call_ctx *ctx,
                                struct pb_sink_item *it);
void pb__sagex3_create(struct pb_connection *c, struct pb_call_ctx *ctx, struct pb_sink_item *it,
                       enum sagex3_entity entity);
void pb__sagex3_stock_allocate(struct pb_connection *c, struct pb_call_ctx *ctx,
                               struct pb_sink_item *it);

void pb__sagex3_item_ok(struct pb_sink_item *it, const char *erp_id, json_t *record);
void pb__sagex3_item_fail(struct pb_sink_item *it, enum pb_rc rc, int retry_after_s,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- sagex3_recon.c ------------------------------------------------------------ */

/* The ledger and post_journal slots of the type table (connector.h). */
enum pb_rc pb__sagex3_ledger(struct pb_connection *c, struct pb_call_ctx *ctx, int32_t from_day,
                             int32_t to_day, json_t *records, struct pb_err *err);
enum pb_rc pb__sagex3_post_journal(struct pb_connection *c, struct pb_call_ctx *ctx,
                                   const json_t *journal, char *erp_id, size_t erp_id_len,
                                   struct pb_err *err);

#endif
