/*
 * net/trace.c: redacted records of outbound HTTP calls (see trace.h).
 *
 * What it owns. Nothing long-lived: every function builds a new string or
 * JSON object and hands it over (the caller frees strings with free(); the
 * record appended to a trace belongs to the trace array).
 *
 * The pipeline for a body (pb_trace_redact_body):
 *   1. copy, and make it valid UTF-8: every byte that is not part of a valid
 *      sequence, and every NUL, becomes '?' (jansson refuses invalid UTF-8,
 *      and the result is a C string). The length does not change;
 *   2. when the first non-blank byte is '{' or '[', parse it with jansson;
 *      if that works, replace the value of every object member whose key
 *      contains a body secret word (below) by "***", at any depth and
 *      whatever the value's type (an object under "password" goes whole),
 *      and serialise it again, compactly;
 *   3. otherwise (not JSON, or invalid JSON such as a truncated body) apply
 *      the text rules, which cover form bodies field by field:
 *        - `name=value`, `name: value`, `"name": "value"`, `name='value'`:
 *          when `name` (percent-decoded, so client%5Fsecret counts) contains
 *          a secret word, the value becomes ***. An unquoted value ends at
 *          '&', ';', ',', a bracket, a quote or a blank after '=' (form), and
 *          at the end of the line after ':' (so "Authorization: Bearer x"
 *          loses "Bearer x", not just "Bearer");
 *        - `<Password>value</Password>` (SYSPRO and other XML APIs): the
 *          element text becomes ***; attributes are `name="value"` above;
 *   4. mask every PAN (core/pan.h) in the resulting text;
 *   5. truncate to PB_TRACE_BODY_MAX bytes, backing up to a UTF-8 character
 *      boundary, and append "...(truncated N bytes)" where N counts the bytes
 *      of the redacted text that were dropped.
 * Redaction comes before truncation so that it sees whole members, and the
 * PAN pass comes last so that it also catches card numbers under innocent
 * keys, inside free text, and in JSON numbers (a masked number makes that
 * JSON text invalid; the trace stores it as a string, so nothing breaks).
 *
 * Secret words (case-insensitive substrings of a name):
 *   bodies: password, secret, token, authorization, cvv, securitycode,
 *           cardnumber (so client_secret, access_token, CompanyPassword,
 *           card.cardNumber all count);
 *   URL query parameters: password, secret, token, key.
 * URLs: every query parameter (and fragment parameter: OAuth implicit flows
 * put access_token there) with a secret name keeps its name and gets ***
 * as value; a password in the userinfo (https://user:pw@host) is masked too,
 * which the header does not list but is the same kind of secret. Header
 * values never enter a record at all.
 *
 * Invariants. Every string this file stores in JSON is valid UTF-8, so
 * json_string() never fails on content; only allocation failure drops a
 * field. Outputs are bounded by a constant factor of the input (+3 bytes per
 * redacted value at most), and a trace keeps at most TRACE_MAX_CALLS records
 * (the oldest are dropped: the last calls are the ones that explain a dead
 * letter).
 *
 * Threading. Pure functions; a trace array must not be shared between
 * threads without the caller's lock (jansson objects are not thread-safe).
 *
 * Rejected designs.
 *   - Regular expressions (POSIX regex): no case-insensitive substring on
 *     decoded names, no JSON depth, and a redaction bug hiding in a pattern
 *     is harder to see than in twenty lines of C.
 *   - Redacting JSON as text only: nested members, escaped quotes and keys
 *     split across lines are where text rules fail; jansson already parses
 *     every API response we handle.
 *   - Truncating before redacting (cheaper for 16 MiB bodies): a secret at
 *     the cut would lose its key and escape the rules.
 *   - Recording header names with "***" values: names leak nothing useful
 *     for debugging that the method and URL do not, and one wrong branch
 *     would record a token.
 */
#include "core/json.h"
#include "net/trace.h"

#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/pan.h"
#include "core/utf8.h"

#define TRACE_MAX_CALLS 64
#define REDACTED "***"
#define NAME_DECODE_MAX 256 /* longer names are matched on their first 256 decoded bytes */

static const char *const body_words[] = {"password",     "secret",     "token", "authorization",
                                         "cvv",          "securitycode", "cardnumber", NULL};
static const char *const url_words[] = {"password", "secret", "token", "key", NULL};

/* ---- a growing string with a failure flag ---------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
    int oom; /* an append failed; the content is incomplete */
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (n > SIZE_MAX / 4 || b->len > SIZE_MAX / 4) { /* never in practice; bounds for the compiler */
        b->oom = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* The string, or NULL after a failure (then nothing leaks). */
static char *sb_finish(struct sbuf *b)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    if (!b->p)
        return strdup("");
    return b->p;
}

/* ---- helpers ------------------------------------------------------------------------- */

static int contains_ci(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* True when the name (percent- and '+'-decoded) contains one of words. */
static int name_is_secret(const char *name, size_t n, const char *const *words)
{
    char dec[NAME_DECODE_MAX];
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof(dec); i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '%' && i + 2 < n && hexval((unsigned char)name[i + 1]) >= 0 &&
            hexval((unsigned char)name[i + 2]) >= 0) {
            c = (unsigned char)(hexval((unsigned char)name[i + 1]) * 16 +
                                hexval((unsigned char)name[i + 2]));
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        dec[o++] = (char)(c ? c : '?');
    }
    for (const char *const *w = words; *w; w++)
        if (contains_ci(dec, o, *w))
            return 1;
    return 0;
}

/* Copy with every invalid UTF-8 byte and every NUL replaced by '?'. */
static char *utf8_sanitize(const char *in, size_t n)
{
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t k = in[i] ? pb_utf8_seq((const unsigned char *)in + i, n - i) : 0;
        if (!k) {
            out[i++] = '?';
            continue;
        }
        memcpy(out + i, in + i, k);
        i += k;
    }
    out[n] = '\0';
    return out;
}

/* ---- URLs ------------------------------------------------------------------------------ */

/* Redact "a=b&c=d" parameters in s[0..n) into b. */
static void redact_params(struct sbuf *b, const char *s, size_t n, const char *const *words)
{
    size_t i = 0;
    while (i <= n) {
        size_t end = i;
        while (end < n && s[end] != '&')
            end++;
        const char *eq = memchr(s + i, '=', end - i);
        if (eq && name_is_secret(s + i, (size_t)(eq - (s + i)), words)) {
            sb_put(b, s + i, (size_t)(eq - (s + i)) + 1);
            sb_str(b, REDACTED);
        } else {
            sb_put(b, s + i, end - i);
        }
        if (end < n)
            sb_put(b, "&", 1);
        i = end + 1;
    }
}

char *pb_trace_redact_url(const char *url)
{
    struct sbuf b = {0};
    char *clean;
    size_t n, i = 0;
    const char *q, *frag, *scheme;

    if (!url)
        return strdup("");
    n = strlen(url);
    clean = utf8_sanitize(url, n);
    if (!clean)
        return NULL;

    /* userinfo password: scheme://user:pw@host */
    scheme = strstr(clean, "://");
    if (scheme && strspn(clean, "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-") !=
                      (size_t)(scheme - clean))
        scheme = NULL; /* "://" inside a path or query, not after a scheme */
    if (scheme) {
        size_t a = (size_t)(scheme - clean) + 3, e = a, at = 0, colon = 0;
        while (e < n && clean[e] != '/' && clean[e] != '?' && clean[e] != '#')
            e++;
        for (size_t k = a; k < e; k++)
            if (clean[k] == '@')
                at = k;
        for (size_t k = a; at && k < at; k++)
            if (clean[k] == ':') {
                colon = k;
                break;
            }
        if (at && colon) {
            sb_put(&b, clean, colon + 1);
            sb_str(&b, REDACTED);
            i = at;
        }
    }

    q = strchr(clean + i, '?');
    frag = strchr(clean + i, '#');
    if (q && frag && frag < q)
        q = NULL; /* a '?' inside the fragment is not a query */
    size_t qpos = q ? (size_t)(q - clean) : n;
    size_t fpos = frag ? (size_t)(frag - clean) : n;
    sb_put(&b, clean + i, (q ? qpos + 1 : fpos) - i);
    if (q)
        redact_params(&b, clean + qpos + 1, fpos - qpos - 1, url_words);
    if (frag) {
        sb_put(&b, "#", 1);
        redact_params(&b, clean + fpos + 1, n - fpos - 1, url_words);
    }
    free(clean);
    return sb_finish(&b);
}

/* ---- bodies: JSON --------------------------------------------------------------------- */

static void redact_json(json_t *v)
{
    if (json_is_object(v)) {
        for (void *it = json_object_iter(v); it; it = json_object_iter_next(v, it)) {
            const char *key = json_object_iter_key(it);
            size_t klen = json_object_iter_key_len(it);
            if (name_is_secret(key, klen, body_words))
                json_object_iter_set_new(v, it, json_string(REDACTED));
            else
                redact_json(json_object_iter_value(it));
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            redact_json(json_array_get(v, i));
    }
}

/* Redacted re-serialisation, or NULL when `text` is not JSON. */
static char *redact_json_text(const char *text, size_t n)
{
    json_error_t jerr;
    json_t *root;
    char *out;
    size_t i = 0;
    while (i < n && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    if (i == n || (text[i] != '{' && text[i] != '['))
        return NULL;
    root = json_loadb(text, n, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return NULL;
    redact_json(root);
    /* 15 significant digits print 1.1 as 1.1 (17 would print 1.1000000000000001);
     * the trace is for reading, and API decimals have fewer digits. */
    out = pb_json_dumps_decimal(root, NULL, JSON_REAL_PRECISION(15));
    json_decref(root);
    return out;
}

/* ---- bodies: text rules ----------------------------------------------------------------- */

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.' || c == '%' || c == '[' || c == ']' || c == '+';
}

static int is_blank(unsigned char c) { return c == ' ' || c == '\t'; }

/* End of an unquoted value starting at p; `sep` is '=' or ':'. */
static size_t unquoted_end(const char *t, size_t n, size_t p, char sep)
{
    size_t e = p;
    while (e < n) {
        unsigned char c = (unsigned char)t[e];
        if (c == '&' || c == ';' || c == ',' || c == '}' || c == ']' || c == '<' || c == '"' ||
            c == '\'' || c == '\r' || c == '\n')
            break;
        if (sep == '=' && is_blank(c))
            break;
        e++;
    }
    while (e > p && is_blank((unsigned char)t[e - 1]))
        e--;
    return e;
}

/* Index of the closing quote q after an opening one at p - 1, or n. */
static size_t quoted_end(const char *t, size_t n, size_t p, char q)
{
    while (p < n && t[p] != q) {
        if (t[p] == '\\' && p + 1 < n)
            p++;
        p++;
    }
    return p;
}

/* <Name ...>text</Name> with a secret Name: returns the index where the text
 * starts and sets *text_end, or 0 when this '<' does not open such an element. */
static size_t xml_secret_element(const char *t, size_t n, size_t i, size_t *text_end)
{
    size_t j = i + 1, gt;
    if (j >= n || !((t[j] >= 'a' && t[j] <= 'z') || (t[j] >= 'A' && t[j] <= 'Z') || t[j] == '_'))
        return 0;
    while (j < n && (is_name_char((unsigned char)t[j]) || t[j] == ':'))
        j++;
    if (!name_is_secret(t + i + 1, j - i - 1, body_words))
        return 0;
    gt = j;
    while (gt < n && t[gt] != '>' && t[gt] != '<')
        gt++;
    if (gt >= n || t[gt] != '>' || t[gt - 1] == '/')
        return 0;
    *text_end = gt + 1;
    while (*text_end < n && t[*text_end] != '<')
        (*text_end)++;
    return gt + 1;
}

static void redact_text_rules(struct sbuf *b, const char *t, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)t[i];
        if (c == '<') {
            size_t text_end, text = xml_secret_element(t, n, i, &text_end);
            if (text) {
                sb_put(b, t + i, text - i);
                if (text_end > text)
                    sb_str(b, REDACTED);
                i = text_end;
                continue;
            }
        }
        if (is_name_char(c) && (i == 0 || !is_name_char((unsigned char)t[i - 1]))) {
            size_t j = i, p;
            while (j < n && is_name_char((unsigned char)t[j]))
                j++;
            if (name_is_secret(t + i, j - i, body_words)) {
                p = j;
                if (p < n && (t[p] == '"' || t[p] == '\''))
                    p++;
                while (p < n && is_blank((unsigned char)t[p]))
                    p++;
                if (p < n && (t[p] == '=' || t[p] == ':')) {
                    char sep = t[p++];
                    while (p < n && is_blank((unsigned char)t[p]))
                        p++;
                    if (p < n && (t[p] == '"' || t[p] == '\'')) {
                        size_t e = quoted_end(t, n, p + 1, t[p]);
                        sb_put(b, t + i, p + 1 - i);
                        sb_str(b, REDACTED);
                        i = e; /* the closing quote is copied as it is */
                        continue;
                    }
                    if (p < n && t[p] != '{' && t[p] != '[') {
                        size_t e = unquoted_end(t, n, p, sep);
                        if (e > p) {
                            sb_put(b, t + i, p - i);
                            sb_str(b, REDACTED);
                            i = e;
                            continue;
                        }
                    }
                }
            }
            sb_put(b, t + i, j - i);
            i = j;
            continue;
        }
        sb_put(b, t + i, 1);
        i++;
    }
}

/* ---- bodies ------------------------------------------------------------------------------- */

char *pb_trace_redact_body(const char *body, size_t len)
{
    char *clean, *red;
    size_t n, cut;

    if (!body)
        return strdup("");
    clean = utf8_sanitize(body, len);
    if (!clean)
        return NULL;
    red = redact_json_text(clean, len);
    if (!red) {
        struct sbuf b = {0};
        redact_text_rules(&b, clean, len);
        red = sb_finish(&b);
    }
    free(clean);
    if (!red)
        return NULL;
    n = strlen(red);
    pb_pan_redact(red, n);
    if (n <= PB_TRACE_BODY_MAX)
        return red;

    cut = PB_TRACE_BODY_MAX;
    while (cut > 0 && ((unsigned char)red[cut] & 0xC0) == 0x80)
        cut--; /* never split a UTF-8 character */
    struct sbuf b = {0};
    char note[64];
    snprintf(note, sizeof(note), "...(truncated %zu bytes)", n - cut);
    sb_put(&b, red, cut);
    sb_str(&b, note);
    free(red);
    return sb_finish(&b);
}

/* ---- records ------------------------------------------------------------------------------- */

static json_t *string_or_null(char *owned)
{
    json_t *j = owned ? json_string(owned) : json_null();
    free(owned);
    return j ? j : json_null();
}

/* Deferred redaction (see trace.h): per thread, so connectors need not know. */
static _Thread_local int deferred;
#define RAW_REQUEST "\x01request"
#define RAW_RESPONSE "\x01response"

void pb_trace_defer(int on) { deferred = on; }

void pb_trace_finish(json_t *trace, int keep_bodies)
{
    size_t i;
    json_t *rec;
    json_array_foreach(trace, i, rec)
    {
        json_t *rq = json_object_get(rec, RAW_REQUEST), *rs = json_object_get(rec, RAW_RESPONSE);
        if (keep_bodies) {
            if (rq)
                json_object_set_new(rec, "request",
                                    string_or_null(pb_trace_redact_body(json_string_value(rq),
                                                                        json_string_length(rq))));
            if (rs)
                json_object_set_new(rec, "response",
                                    string_or_null(pb_trace_redact_body(json_string_value(rs),
                                                                        json_string_length(rs))));
        } else {
            json_object_del(rec, "request");
            json_object_del(rec, "response");
        }
        json_object_del(rec, RAW_REQUEST);
        json_object_del(rec, RAW_RESPONSE);
    }
}

void pb_trace_http(json_t *trace, const struct pb_http_call *call, enum pb_rc rc,
                   const struct pb_err *err)
{
    json_t *rec;

    if (!trace || !json_is_array(trace) || !call)
        return;
    rec = json_object();
    if (!rec)
        return;

    json_object_set_new(rec, "method",
                        call->method ? string_or_null(utf8_sanitize(call->method,
                                                                    strlen(call->method)))
                                     : json_null());
    json_object_set_new(rec, "url",
                        call->url ? string_or_null(pb_trace_redact_url(call->url)) : json_null());
    json_object_set_new(rec, "status", call->status ? json_integer(call->status) : json_null());
    json_object_set_new(rec, "duration_ms",
                        json_integer((json_int_t)(call->duration_ns / 1000000)));

    if (rc == PB_OK) {
        json_object_set_new(rec, "error", json_null());
    } else {
        const char *msg = err && err->msg[0] ? err->msg : pb_rc_name(rc);
        char *m = utf8_sanitize(msg, strlen(msg));
        if (m)
            pb_pan_redact(m, strlen(m));
        json_object_set_new(rec, "error", string_or_null(m));
    }

    if (deferred) {
        /* raw bytes, never dumped: pb_trace_finish() redacts or drops them */
        if (call->body) {
            size_t blen = call->body_len ? call->body_len : strlen(call->body);
            json_object_set_new(rec, RAW_REQUEST, json_stringn_nocheck(call->body, blen));
        }
        if (call->response)
            json_object_set_new(rec, RAW_RESPONSE,
                                json_stringn_nocheck(call->response, call->response_len));
        json_object_set_new(rec, "request", json_null());
        json_object_set_new(rec, "response", json_null());
    } else if (call->body) {
        size_t blen = call->body_len ? call->body_len : strlen(call->body);
        json_object_set_new(rec, "request", string_or_null(pb_trace_redact_body(call->body, blen)));
    } else {
        json_object_set_new(rec, "request", json_null());
    }
    if (!deferred) {
        if (call->response)
            json_object_set_new(
                rec, "response",
                string_or_null(pb_trace_redact_body(call->response, call->response_len)));
        else
            json_object_set_new(rec, "response", json_null());
    }

    while (json_array_size(trace) >= TRACE_MAX_CALLS)
        json_array_remove(trace, 0);
    json_array_append_new(trace, rec);
}
