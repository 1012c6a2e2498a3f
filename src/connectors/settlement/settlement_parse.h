/*
 * connectors/settlement/settlement_parse.h: the settlement report parsers
 * and the places reports come from.
 *
 *   pb_settlement_parse_csv           a CSV report file, any gateway's, read
 *                                     through a per-source column map
 *   pb_settlement_parse_opayo_xml     an Opayo Reporting & Admin API reply
 *                                     (getBatchList, getBatchDetail,
 *                                     getTransactionList)
 *   pb_settlement_parse_paytrace_json a PayTrace export (export/by_date_range
 *                                     or the settled-batch export)
 *   pb_settlement_dir_read_new        the new files of a watched directory
 *   pb_settlement_sftp_fetch_new      the new files of an SFTP directory
 *
 * The contract every parser keeps.
 *   - Input is borrowed bytes (`data`, `len`), never NUL-terminated by
 *     assumption, never modified, never kept. `source` names it in every bad
 *     entry (a file name, "opayo getBatchDetail 1001"); it is copied.
 *   - Strict but resilient: a record that cannot be read exactly (a
 *     non-numeric or over-precise amount, an unknown currency or kind, a bad
 *     date, a wrong column count, a record cut off by the end of a
 *     truncated file, a duplicate batch) is appended to the set's bad list
 *     with its physical line number and the reason, and the parser goes on
 *     with the next record. Nothing is ever rounded or guessed.
 *   - The return value is PB_OK whenever the source could be read at all,
 *     bad lines or not (count them with pb_settlement_bad_count()). An error
 *     means nothing of the source was used: PB_ERR_INVALID for a source
 *     that does not have the expected shape (a CSV header without a mapped
 *     column, XML that is not a vspaccess reply), PB_ERR_PERMANENT for a
 *     reply that is an error (Opayo errorcode != 0000, PayTrace success
 *     false: err carries the gateway's words), PB_ERR_TOOBIG / PB_ERR_NOMEM
 *     at the limits. err says why, naming the column, element or member.
 *   - Every parser is a libFuzzer target (tests/fuzz/): hostile bytes give a
 *     bad entry or an error, never a crash, a leak or a hang.
 *
 * Threading: parsers keep no global state; one set is filled by one thread
 * at a time. A CSV map is immutable after pb_settlement_csv_map_new() and
 * may be shared by threads.
 */
#ifndef PB_CONNECTORS_SETTLEMENT_SETTLEMENT_PARSE_H
#define PB_CONNECTORS_SETTLEMENT_SETTLEMENT_PARSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "connectors/settlement/settlement.h"
#include "core/err.h"

/* ---- CSV ------------------------------------------------------------------- */

#define PB_SETTLEMENT_CSV_MAX_COLUMNS 256
#define PB_SETTLEMENT_CSV_MAX_RECORD (1024u * 1024u) /* bytes of one record */

struct pb_settlement_csv_map;

/* Build a column map from its JSON config (borrowed):
 *   {"gateway": "acme",                      name of the source's gateway (default "csv")
 *    "delimiter": ",",                       one character, not '"', CR or LF (default ",")
 *    "header": true,                         the first record names the columns (default true)
 *    "skip_lines": 0,                        records to skip before the header (0..100)
 *    "columns": {"batch_id": "Batch",        role -> header name, or 1-based column number
 *                "gateway_ref": "Transaction ID", "merchant_ref": "Order",
 *                "amount": "Amount", "fee": "Fee", "currency": "Currency",
 *                "kind": "Type", "value_date": "Date", "settled_date": "Paid"},
 *    "kind_map": {"SALE": "sale", "REFUND": "refund"},  source value -> kind
 *    "date_format": "%Y-%m-%d",              strptime(3) format (default "%Y-%m-%d")
 *    "settled_date_format": "...",           default: date_format
 *    "currency": "GBP",                      when there is no currency column
 *    "batch_id": "...",                      when there is no batch_id column (default:
 *                                            the source's name)
 *    "signs": "by_kind",                     by_kind: refunds, chargebacks and fee lines are
 *                                            stored negative and fees positive whatever sign
 *                                            the file used; as_is: the file's signs
 *    "decimal_separator": ".",               "." or ","
 *    "thousands_separator": ""}              "", ",", ".", " " or "'"
 * Required: columns.amount, one of columns.gateway_ref / merchant_ref, and
 * columns.currency or currency. Without columns.kind, a negative amount is a
 * refund and anything else a sale; without kind_map, the kind names
 * themselves are accepted (case-insensitively). Unknown keys are refused.
 * PB_ERR_CONFIG with a message naming the key. The caller frees *out. */
enum pb_rc pb_settlement_csv_map_new(const json_t *config, struct pb_settlement_csv_map **out,
                                     struct pb_err *err);
void pb_settlement_csv_map_free(struct pb_settlement_csv_map *map);

/* Parse one CSV report (RFC 4180: fields in double quotes may hold the
 * delimiter, CR, LF and "" for a quote; CRLF or LF line ends; a UTF-8 BOM is
 * skipped; blank lines are skipped) into `set` as one load. A record whose
 * column count differs from the header's, or that the end of the data cuts
 * off (an open quote, or a short last record without a final newline), is a
 * bad line. PB_ERR_INVALID when the header lacks a mapped column (nothing is
 * read). */
enum pb_rc pb_settlement_parse_csv(struct pb_settlement_set *set,
                                   const struct pb_settlement_csv_map *map, const char *source,
                                   const char *data, size_t len, struct pb_err *err);

/* ---- Opayo Reporting & Admin API ---------------------------------------------------- */

/* What one reply said besides its batches and lines. */
struct pb_settlement_opayo_reply {
    char errorcode[8]; /* "0000" on success; "" when the reply had none */
    char error[256];   /* the <error> text of a failed reply */
    long totalrows;    /* getTransactionList paging, -1 when absent */
    long startrow, endrow;
    uint32_t batches; /* batches declared or filled by this reply */
    uint32_t lines;   /* lines added */
    uint32_t skipped; /* transactions not settled money (declined, ...): not lines */
};

/* Parse one vspaccess reply with libxml2 (streaming; no DTD, no entities, no
 * network) as one load. The element names read are in docs/settlement.md.
 * A batch list entry becomes a header-only batch with its stated totals; a
 * batch detail fills it with lines; a transaction list adds lines (inside
 * their <batchid>'s batch, or outside any batch when they have none). A
 * record is used only once its end tag has been read, so a truncated reply
 * yields its complete records and a bad entry at the line where it stops.
 * A reply whose errorcode is not 0000 returns PB_ERR_PERMANENT with the
 * code and <error> in err (and in *reply). `reply` may be NULL. */
enum pb_rc pb_settlement_parse_opayo_xml(struct pb_settlement_set *set, const char *source,
                                         const char *data, size_t len,
                                         struct pb_settlement_opayo_reply *reply,
                                         struct pb_err *err);

/* ---- PayTrace exports ----------------------------------------------------------------- */

struct pb_settlement_paytrace_options {
    const char *currency;  /* records without "currency"; NULL = "USD" */
    int include_unsettled; /* export/by_date_range: 1 = also records without a batch
                              (as lines outside any batch); default 0 = skip them */
};

/* Parse a PayTrace export reply as one load: {"transactions":[...]}
 * (export/by_date_range: approved, unvoided SALE and REFUND records with a
 * batch_number become lines of that batch) or {"batches":[...]} (the
 * settled-batch export: each batch with its stated totals and its
 * transactions). Amounts are JSON numbers or decimal strings, converted
 * exactly by pb_json_to_minor(). Records are located in the raw text so that
 * each bad one is reported with its line, and a truncated export still
 * yields its complete records. "success": false is PB_ERR_PERMANENT with
 * PayTrace's status_message. `opt` may be NULL. `skipped` (may be NULL)
 * receives the records that are not settled money (declined, voided,
 * unsettled, other types). */
enum pb_rc pb_settlement_parse_paytrace_json(struct pb_settlement_set *set,
                                             const struct pb_settlement_paytrace_options *opt,
                                             const char *source, const char *data, size_t len,
                                             size_t *skipped, struct pb_err *err);

/* The same for a reply already parsed by jansson (what the paytrace
 * connector's export calls return): records are named by their index, the
 * line is 0. For settlement_fetch.c; `reply` is borrowed. */
enum pb_rc pb__settlement_paytrace_tree(struct pb_settlement_set *set,
                                        const struct pb_settlement_paytrace_options *opt,
                                        const char *source, const json_t *reply, size_t *skipped,
                                        struct pb_err *err);

/* ---- watched directory and SFTP --------------------------------------------------------- */

#define PB_SETTLEMENT_FILE_MAX (256u * 1024u * 1024u) /* largest report file read */

/* Called once per new file with its whole content (borrowed, valid during
 * the call). Return PB_OK to have the file remembered as read; an error
 * leaves it unread, so that it is offered again next time. */
typedef enum pb_rc (*pb_settlement_file_fn)(void *ctx, const char *name, const char *data,
                                            size_t len, struct pb_err *err);

struct pb_settlement_dir_options {
    const char *suffix;     /* only names ending so, e.g. ".csv"; NULL = every file */
    const char *state_path; /* the state file; NULL = "<dir>/.paybridge-read" */
    long min_age_s;         /* skip files modified less than this long ago (still being
                               written); 0 = none */
};

/* Read the regular files of `dir` that are new: whose (name, size, mtime)
 * is not in the state file. Names are offered in byte order; dot files are
 * never read. After each successful callback the file is added to the
 * state, which is rewritten atomically (a temporary file renamed over it)
 * at the end. *files_read (may be NULL) counts the callbacks that returned
 * PB_OK. Returns the first callback error after offering every file, or
 * PB_ERR_IO when the directory or the state cannot be read or written. */
enum pb_rc pb_settlement_dir_read_new(const char *dir, const struct pb_settlement_dir_options *opt,
                                      pb_settlement_file_fn fn, void *ctx, size_t *files_read,
                                      struct pb_err *err);

struct pb_settlement_sftp_options {
    const char *user;        /* SSH user; NULL = in the URL */
    const char *password;    /* or NULL for key authentication */
    const char *private_key; /* path of a private key file, or NULL */
    const char *public_key;  /* its public key file, or NULL */
    const char *known_hosts; /* path of a known_hosts file: the server's key must be in it;
                                NULL = do not check the host key (tests only) */
    const char *suffix;      /* as for the directory */
    const char *state_path;  /* required: the state file of what was fetched */
    long timeout_ms;         /* per transfer; 0 = 60000 */
};

/* Fetch the new files of the SFTP directory `url` ("sftp://host/path/",
 * ending in '/') with libcurl, and hand each to fn as the directory reader
 * does; a file is new when its (name, size, mtime) is not in the state. When
 * the installed libcurl was built without SFTP, PB_ERR_CONFIG says so
 * (checked at run time with curl_version_info()). Network failures are
 * PB_ERR_TRANSIENT, a refused login PB_ERR_AUTH. */
enum pb_rc pb_settlement_sftp_fetch_new(const char *url,
                                        const struct pb_settlement_sftp_options *opt,
                                        pb_settlement_file_fn fn, void *ctx, size_t *files_read,
                                        struct pb_err *err);

/* 1 when the libcurl in use speaks sftp://. */
int pb_settlement_sftp_available(void);

#endif
