/*
 * core/jdoc.h: a read-only JSON document for the webhook hot path: yajl's
 * event parser builds a small tree of nodes in one arena.
 *
 * Why not jansson, which everything else uses: a 1 KB gateway notification
 * takes jansson ~14 us to parse (character by character, a malloc per value
 * and per key, a hash table per object) and more to free; yajl plus this tree
 * take ~2-3 us, without a malloc for bodies of a few KB (the arena starts
 * inside the document). At 20,000 webhooks a second on two cores that is a
 * quarter of the budget. Jansson stays for everything that is built,
 * changed or kept; this is for "parse, validate, copy out, forget".
 *
 * What it accepts is what jansson accepted with JSON_REJECT_DUPLICATES:
 * strict RFC 8259 JSON (no comments, no trailing garbage), UTF-8 checked by
 * yajl, a duplicate key in an object refused (two "amount" members could make
 * the signed text mean two things to two parsers), an integer literal that
 * does not fit in int64 refused with PB_ERR_RANGE. Also refused, to bound
 * the work a hostile body can cause: nesting deeper than PB_JDOC_DEPTH_MAX
 * and objects of more than PB_JDOC_MEMBERS_MAX members. Messages name the
 * line and column, as jansson's did.
 *
 * Numbers are kept as their literal text (never converted to a double); an
 * integer literal also as int64 (`is_int`). Objects and arrays know where
 * their text is in the parsed buffer (`start`, `end`), so that a caller can
 * keep one element of a reply as the bytes received, without serialising.
 *
 * Ownership: every pointer into the tree lives until pb_jdoc_free(). Strings
 * are NUL-terminated copies; `len` is the real length (a string with \u0000
 * has strlen() < len). Not thread-safe per document; no global state.
 */
#ifndef PB_CORE_JDOC_H
#define PB_CORE_JDOC_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define PB_JDOC_DEPTH_MAX 64
#define PB_JDOC_MEMBERS_MAX 1024

enum pb_jtype { PB_J_NULL, PB_J_FALSE, PB_J_TRUE, PB_J_NUMBER, PB_J_STRING, PB_J_OBJECT, PB_J_ARRAY };

struct pb_jnode {
    enum pb_jtype type;
    int is_int;                 /* PB_J_NUMBER: an integer literal; its value is in i */
    int64_t i;
    const char *key;            /* member name (NUL-terminated) when the parent is an object */
    size_t key_len;
    const char *str;            /* PB_J_STRING: the value; PB_J_NUMBER: the literal */
    size_t len;
    size_t n;                   /* PB_J_OBJECT / PB_J_ARRAY: members or elements */
    size_t start, end;          /* PB_J_OBJECT / PB_J_ARRAY: its text is buf[start, end) */
    struct pb_jnode *parent, *first, *last, *next;
};

struct pb_jchunk;

struct pb_jdoc {
    struct pb_jnode *root;
    /* arena: inline first, then malloc'ed chunks */
    char *cur;
    size_t left;
    struct pb_jchunk *chunks;
    _Alignas(16) char inline_buf[8192];
};

/* Parse `len` bytes into `d` (any previous content is not freed: pass a
 * fresh or freed document). PB_OK, or PB_ERR_INVALID ("body is not valid
 * JSON: <why> (line L, column C)"), PB_ERR_RANGE (an integer that does not fit
 * in 64 bits), PB_ERR_NOMEM. On error the document is freed already. */
enum pb_rc pb_jdoc_parse(struct pb_jdoc *d, const char *buf, size_t len, struct pb_err *err);

void pb_jdoc_free(struct pb_jdoc *d);

/* The member `key` of object `obj`, or NULL (also when obj is NULL or not an
 * object). Linear: objects here are small, and bounded. */
const struct pb_jnode *pb_jnode_get(const struct pb_jnode *obj, const char *key);

#endif
