/*
 * core/json_load.c: pb_json_loadb(), jansson's json_loadb() with yajl as the
 * lexer (see core/json.h for the contract).
 *
 * Why: jansson reads its input one character at a time through a stream
 * callback, ~170 instructions a byte (callgrind: 172,000 for a 1 KB canonical
 * event); yajl lexes the same text in ~27,000. The tree is still jansson's,
 * built from yajl's callbacks, so callers do not change. Used where a JSON
 * text is parsed on every job or every request: the worker's load of a
 * stored event and its refs (engine/engine.c), the Xero emulator's request
 * bodies (sandbox/xero.c).
 *
 * What it owns: nothing beyond one parse. It touches only the tree it
 * builds and the caller's json_error_t. Thread-safe (no global state).
 */
#include "core/json.h"
#include "core/utf8.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

struct builder {
    size_t flags;
    yajl_handle h;
    int parsing;    /* inside yajl_parse(), not yajl_complete_parse() */
    int end_known;  /* the root was complete before yajl_complete_parse() */
    size_t end;     /* then: where its text ends */
    json_t *root;   /* owned until returned; holds everything below */
    json_t **stack; /* open containers, borrowed from root */
    size_t depth, cap;
    char *key; /* the pending member name of the innermost object */
    size_t key_len, key_cap;
    char why[JSON_ERROR_TEXT_LENGTH]; /* set when a callback refuses */
};

static int refuse(struct builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->why, sizeof b->why, fmt, ap);
    va_end(ap);
    return 0;
}

/* The root value is complete: note where its text ends, so that what
 * follows can be checked (yajl 2.1 lets an unterminated string after the
 * root pass: `[]"`). A number root completes only in yajl_complete_parse(),
 * at the end of the text. */
static void root_done(struct builder *b)
{
    if (b->parsing) {
        b->end = yajl_get_bytes_consumed(b->h);
        b->end_known = 1;
    }
}

/* Add v (a new reference) where the parser is: the root, the next element
 * of the innermost array, or the pending member of the innermost object. */
static int put(struct builder *b, json_t *v)
{
    json_t *top;
    if (!v)
        return refuse(b, "out of memory");
    if (b->depth == 0) {
        if (!json_is_object(v) && !json_is_array(v) && !(b->flags & JSON_DECODE_ANY)) {
            json_decref(v);
            return refuse(b, "'[' or '{' expected");
        }
        b->root = v;
        if (!json_is_object(v) && !json_is_array(v))
            root_done(b);
        return 1;
    }
    top = b->stack[b->depth - 1];
    if (json_is_array(top)) {
        if (json_array_append_new(top, v) != 0)
            return refuse(b, "out of memory");
        return 1;
    }
    if ((b->flags & JSON_REJECT_DUPLICATES) && json_object_getn(top, b->key, b->key_len)) {
        json_decref(v);
        return refuse(b, "duplicate object key");
    }
    if (json_object_setn_new_nocheck(top, b->key, b->key_len, v) != 0)
        return refuse(b, "out of memory");
    return 1;
}

static int open_container(struct builder *b, json_t *c)
{
    if (b->depth >= PB_JSON_DEPTH_MAX) {
        json_decref(c);
        return refuse(b, "maximum parsing depth reached");
    }
    if (b->depth == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        json_t **s = realloc(b->stack, cap * sizeof(*s));
        if (!s) {
            json_decref(c);
            return refuse(b, "out of memory");
        }
        b->stack = s;
        b->cap = cap;
    }
    if (!put(b, c))
        return 0;
    b->stack[b->depth++] = c;
    return 1;
}

static int on_null(void *ctx) { return put(ctx, json_null()); }

static int on_boolean(void *ctx, int v) { return put(ctx, json_boolean(v)); }

static int on_number(void *ctx, const char *s, size_t len)
{
    struct builder *b = ctx;
    char small[64], *text = len < sizeof small ? small : malloc(len + 1);
    int is_real = 0, ok;
    if (!text)
        return refuse(b, "out of memory");
    memcpy(text, s, len);
    text[len] = '\0';
    for (size_t i = 0; i < len; i++)
        if (s[i] == '.' || s[i] == 'e' || s[i] == 'E')
            is_real = 1;
    errno = 0;
    if (!is_real && !(b->flags & JSON_DECODE_INT_AS_REAL)) {
        long long v = strtoll(text, NULL, 10);
        ok = errno == ERANGE ? refuse(b, v < 0 ? "too big negative integer" : "too big integer")
                             : put(b, json_integer((json_int_t)v));
    } else {
        double v = strtod(text, NULL);
        ok = errno == ERANGE && (v == HUGE_VAL || v == -HUGE_VAL)
                 ? refuse(b, "real number overflow")
                 : put(b, json_real(v));
    }
    if (text != small)
        free(text);
    return ok;
}

static int on_string(void *ctx, const unsigned char *s, size_t len)
{
    struct builder *b = ctx;
    if (!(b->flags & JSON_ALLOW_NUL) && memchr(s, '\0', len))
        return refuse(b, "\\u0000 is not allowed without JSON_ALLOW_NUL");
    if (!pb_utf8_valid(s, len))
        return refuse(b, "invalid UTF-8 in a string");
    return put(b, json_stringn_nocheck((const char *)s, len));
}

static int on_key(void *ctx, const unsigned char *s, size_t len)
{
    struct builder *b = ctx;
    if (!pb_utf8_valid(s, len))
        return refuse(b, "invalid UTF-8 in an object key");
    if (memchr(s, '\0', len))
        return refuse(b, "NUL byte in object key not supported");
    if (len + 1 > b->key_cap) {
        size_t cap = len + 1 > 64 ? len + 1 : 64;
        char *k = realloc(b->key, cap);
        if (!k)
            return refuse(b, "out of memory");
        b->key = k;
        b->key_cap = cap;
    }
    memcpy(b->key, s, len);
    b->key[len] = '\0';
    b->key_len = len;
    return 1;
}

static int on_start_map(void *ctx) { return open_container(ctx, json_object()); }

static int on_start_array(void *ctx) { return open_container(ctx, json_array()); }

static int on_end(void *ctx)
{
    struct builder *b = ctx;
    if (--b->depth == 0)
        root_done(b);
    return 1;
}

static const yajl_callbacks callbacks = {
    on_null, on_boolean, NULL, NULL, on_number, on_string,
    on_start_map, on_key, on_end, on_start_array, on_end,
};

/* jansson's error fields for a failure at byte `pos` of buf */
static void set_error(json_error_t *error, const char *buf, size_t len, size_t pos,
                      const char *text)
{
    int line = 1, column = 0;
    if (!error)
        return;
    if (pos > len)
        pos = len;
    for (size_t i = 0; i < pos; i++) {
        if (buf[i] == '\n') {
            line++;
            column = 0;
        } else {
            column++;
        }
    }
    memset(error, 0, sizeof(*error));
    error->line = line;
    error->column = column;
    error->position = (int)pos;
    snprintf(error->source, sizeof error->source, "<buffer>");
    snprintf(error->text, sizeof error->text, "%s", text);
}

json_t *pb_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *error)
{
    struct builder b;
    yajl_handle h;
    yajl_status st;
    size_t garbage_at = SIZE_MAX;
    const size_t supported = JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL |
                             JSON_DECODE_INT_AS_REAL;

    if ((flags & ~supported) || !buf)
        return json_loadb(buf, len, flags, error);
    memset(&b, 0, sizeof(b));
    b.flags = flags;
    if (!(h = yajl_alloc(&callbacks, NULL, &b))) {
        set_error(error, buf, len, 0, "out of memory");
        return NULL;
    }
    yajl_config(h, yajl_dont_validate_strings, 1); /* pb_utf8_valid() checks, strictly (yajl lets ED A0 80 through) */
    b.h = h;
    b.parsing = 1;
    st = yajl_parse(h, (const unsigned char *)buf, len);
    b.parsing = 0;
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st == yajl_status_ok && !b.root)
        snprintf(b.why, sizeof b.why, "'[' or '{' expected near end of file");
    for (size_t i = b.end; st == yajl_status_ok && b.root && b.end_known && i < len; i++)
        if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\n' && buf[i] != '\r') {
            snprintf(b.why, sizeof b.why, "end of file expected");
            garbage_at = i;
            st = yajl_status_error;
        }
    if (st != yajl_status_ok || !b.root) {
        char text[JSON_ERROR_TEXT_LENGTH];
        size_t pos = yajl_get_bytes_consumed(h);
        if (b.why[0]) {
            snprintf(text, sizeof text, "%s", b.why);
        } else {
            unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
            size_t n = msg ? strcspn((const char *)msg, "\n") : 0;
            snprintf(text, sizeof text, "%.*s", (int)n, msg ? (const char *)msg : "invalid JSON");
            if (msg)
                yajl_free_error(h, msg);
        }
        set_error(error, buf, len,
                  garbage_at != SIZE_MAX ? garbage_at : st == yajl_status_ok ? len : pos, text);
        json_decref(b.root);
        b.root = NULL;
    }
    yajl_free(h);
    free(b.stack);
    free(b.key);
    return b.root;
}
