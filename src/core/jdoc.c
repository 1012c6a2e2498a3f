/*
 * core/jdoc.c: yajl's event parser filling the arena tree of core/jdoc.h.
 *
 * The callbacks keep one cursor (the innermost open container) and the key
 * of the member being read; every value becomes a node appended to the
 * cursor's children. Nothing recurses, so the depth bound is ours to choose.
 * A callback that refuses (duplicate key, too deep, too many members,
 * integer overflow, out of memory) records why and returns 0; yajl then stops
 * with yajl_status_client_canceled and the recorded reason is reported.
 */
#include "core/jdoc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

struct pb_jchunk {
    struct pb_jchunk *next;
    _Alignas(16) char mem[];
};

#define CHUNK_MIN 16384

static void *arena_alloc(struct pb_jdoc *d, size_t n)
{
    void *p;
    n = (n + 15) & ~(size_t)15;
    if (n > d->left) {
        size_t size = n > CHUNK_MIN ? n : CHUNK_MIN;
        struct pb_jchunk *c = malloc(sizeof(*c) + size);
        if (!c)
            return NULL;
        c->next = d->chunks;
        d->chunks = c;
        d->cur = c->mem;
        d->left = size;
    }
    p = d->cur;
    d->cur += n;
    d->left -= n;
    return p;
}

static char *arena_str(struct pb_jdoc *d, const char *s, size_t n)
{
    char *p = arena_alloc(d, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

struct builder {
    struct pb_jdoc *d;
    yajl_handle h;              /* for the offsets of containers */
    struct pb_jnode *cur;       /* innermost open container, NULL before the root */
    const char *key;            /* pending member name (cur is an object) */
    size_t key_len;
    int depth;
    enum pb_rc rc;              /* why a callback refused */
    char why[160];
};

static int refuse(struct builder *b, enum pb_rc rc, const char *fmt, ...)
{
    va_list ap;
    b->rc = rc;
    va_start(ap, fmt);
    vsnprintf(b->why, sizeof(b->why), fmt, ap);
    va_end(ap);
    return 0;
}

static struct pb_jnode *add(struct builder *b, enum pb_jtype type)
{
    struct pb_jnode *n = arena_alloc(b->d, sizeof(*n));
    if (!n) {
        refuse(b, PB_ERR_NOMEM, "out of memory");
        return NULL;
    }
    memset(n, 0, sizeof(*n));
    n->type = type;
    n->parent = b->cur;
    if (!b->cur) {
        b->d->root = n;
        return n;
    }
    if (b->cur->type == PB_J_OBJECT) {
        n->key = b->key;
        n->key_len = b->key_len;
    }
    if (b->cur->last)
        b->cur->last->next = n;
    else
        b->cur->first = n;
    b->cur->last = n;
    b->cur->n++;
    return n;
}

static int on_null(void *ctx)
{
    return add(ctx, PB_J_NULL) != NULL;
}

static int on_boolean(void *ctx, int v)
{
    return add(ctx, v ? PB_J_TRUE : PB_J_FALSE) != NULL;
}

/* yajl has checked the number's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int on_number(void *ctx, const char *s, size_t len)
{
    struct builder *b = ctx;
    struct pb_jnode *n = add(b, PB_J_NUMBER);
    int integer = 1;
    if (!n || !(n->str = arena_str(b->d, s, len)))
        return n ? refuse(b, PB_ERR_NOMEM, "out of memory") : 0;
    n->len = len;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '.' || s[i] == 'e' || s[i] == 'E')
            integer = 0;
    if (integer) {
        int neg = s[0] == '-';
        uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (size_t i = (size_t)neg; i < len; i++) {
            unsigned digit = (unsigned)(s[i] - '0');
            if (v > (limit - digit) / 10)
                return refuse(b, PB_ERR_RANGE, "integer overflow");
            v = v * 10 + digit;
        }
        n->is_int = 1;
        n->i = neg ? (int64_t)(0 - v) : (int64_t)v;
    }
    return 1;
}

static int on_string(void *ctx, const unsigned char *s, size_t len)
{
    struct builder *b = ctx;
    struct pb_jnode *n = add(b, PB_J_STRING);
    if (!n || !(n->str = arena_str(b->d, (const char *)s, len)))
        return n ? refuse(b, PB_ERR_NOMEM, "out of memory") : 0;
    n->len = len;
    return 1;
}

static int open_container(struct builder *b, enum pb_jtype type)
{
    struct pb_jnode *n;
    if (b->depth >= PB_JDOC_DEPTH_MAX)
        return refuse(b, PB_ERR_INVALID, "nested deeper than %d levels", PB_JDOC_DEPTH_MAX);
    if (!(n = add(b, type)))
        return 0;
    /* the parse is one chunk: bytes consumed so far end just after the '{' */
    n->start = yajl_get_bytes_consumed(b->h) - 1;
    b->cur = n;
    b->depth++;
    return 1;
}

static int close_container(void *ctx)
{
    struct builder *b = ctx;
    b->cur->end = yajl_get_bytes_consumed(b->h);
    b->cur = b->cur->parent;
    b->depth--;
    return 1;
}

static int on_start_map(void *ctx)
{
    return open_container(ctx, PB_J_OBJECT);
}

static int on_start_array(void *ctx)
{
    return open_container(ctx, PB_J_ARRAY);
}

static int on_map_key(void *ctx, const unsigned char *key, size_t len)
{
    struct builder *b = ctx;
    if (b->cur->n >= PB_JDOC_MEMBERS_MAX)
        return refuse(b, PB_ERR_INVALID, "an object has more than %d members", PB_JDOC_MEMBERS_MAX);
    for (const struct pb_jnode *m = b->cur->first; m; m = m->next)
        if (m->key_len == len && memcmp(m->key, key, len) == 0)
            return refuse(b, PB_ERR_INVALID, "duplicate object key \"%.64s\"", m->key);
    if (!(b->key = arena_str(b->d, (const char *)key, len)))
        return refuse(b, PB_ERR_NOMEM, "out of memory");
    b->key_len = len;
    return 1;
}

static const yajl_callbacks callbacks = {
    on_null,      on_boolean,  NULL,           NULL,           on_number,     on_string,
    on_start_map, on_map_key,  close_container, on_start_array, close_container,
};

/* 1-based line and column of byte `at` */
static void position(const char *buf, size_t len, size_t at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at && i < len; i++) {
        if (buf[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

enum pb_rc pb_jdoc_parse(struct pb_jdoc *d, const char *buf, size_t len, struct pb_err *err)
{
    struct builder b;
    yajl_handle h;
    yajl_status st;
    enum pb_rc rc = PB_OK;
    int line, col;

    d->root = NULL;
    d->chunks = NULL;
    d->cur = d->inline_buf;
    d->left = sizeof(d->inline_buf);
    memset(&b, 0, sizeof(b));
    b.d = d;
    if (!(h = yajl_alloc(&callbacks, NULL, &b)))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    b.h = h;
    st = yajl_parse(h, (const unsigned char *)buf, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st != yajl_status_ok) {
        position(buf, len, yajl_get_bytes_consumed(h), &line, &col);
        if (st == yajl_status_client_canceled && b.rc == PB_ERR_RANGE) {
            rc = pb_err_set(err, PB_ERR_RANGE,
                            "a number in the body does not fit in 64 bits (line %d, column %d): "
                            "amounts must be integers of minor units",
                            line, col);
        } else if (st == yajl_status_client_canceled && b.rc == PB_ERR_NOMEM) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory parsing the body");
        } else if (st == yajl_status_client_canceled) {
            rc = pb_err_set(err, PB_ERR_INVALID, "body is not valid JSON: %s (line %d, column %d)",
                            b.why, line, col);
        } else {
            unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
            char why[128];
            size_t n;
            snprintf(why, sizeof(why), "%s", msg ? (const char *)msg : "parse error");
            n = strcspn(why, "\n");
            why[n] = '\0';
            if (msg)
                yajl_free_error(h, msg);
            rc = pb_err_set(err, PB_ERR_INVALID, "body is not valid JSON: %s (line %d, column %d)",
                            why, line, col);
        }
    }
    yajl_free(h);
    if (rc == PB_OK && !d->root)
        rc = pb_err_set(err, PB_ERR_INVALID, "body is not valid JSON: it is empty");
    if (rc)
        pb_jdoc_free(d);
    return rc;
}

void pb_jdoc_free(struct pb_jdoc *d)
{
    while (d->chunks) {
        struct pb_jchunk *next = d->chunks->next;
        free(d->chunks);
        d->chunks = next;
    }
    d->root = NULL;
    d->cur = d->inline_buf;
    d->left = sizeof(d->inline_buf);
}

const struct pb_jnode *pb_jnode_get(const struct pb_jnode *obj, const char *key)
{
    size_t len;
    if (!obj || obj->type != PB_J_OBJECT)
        return NULL;
    len = strlen(key);
    for (const struct pb_jnode *m = obj->first; m; m = m->next)
        if (m->key_len == len && memcmp(m->key, key, len) == 0)
            return m;
    return NULL;
}
