/*
 * core/yamldoc.c: libyaml events -> jansson tree + line table (see yamldoc.h
 * for the typing rules, the rejected input and the ownership of documents).
 *
 * How it works. The event API of libyaml (yaml_parser_parse) is driven in a
 * loop; an explicit stack of open mappings and sequences (at most
 * PB_YAMLDOC_MAX_DEPTH frames, so hostile nesting cannot exhaust the C stack)
 * receives each finished node. A mapping frame alternates between "expecting
 * a key" and "holding a key, expecting its value".
 *
 * The line table. An open-addressing hash table keyed by
 *   (node address, no key)       -> line where the node starts, and
 *   (mapping address, key text)  -> line of that key.
 * Key texts are copied into one growing byte buffer and referred to by
 * offset, so that lookups do not depend on jansson's internal key storage.
 * The table is only ever read after loading finished, so it needs no lock.
 * Nodes of a document that failed to load are never looked up (the document
 * is freed), so a discarded subtree leaving stale addresses is harmless.
 *
 * Invariants.
 *   - A returned document had zero problems: callers never see a partial tree.
 *   - Every container node and every non-singleton scalar has a line entry;
 *     every member of every mapping has a key line entry.
 *   - The raw text kept in the document is exactly the bytes parsed.
 *
 * Rejected designs.
 *   - Recursion over libyaml's document tree: depth would be bounded only by
 *     the C stack, and aliases would already be expanded.
 *   - A sorted array of (address, line) built at the end: it cannot hold the
 *     key lines without a second structure, and the hash is no more code.
 */
#include "core/yamldoc.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAMLDOC_MAGIC 0x59414d4cu /* "YAML" */
#define NO_KEY SIZE_MAX

struct line_entry {
    const void *node; /* node address, or the mapping's address for a key entry; NULL = free slot */
    size_t key;       /* offset of the key text in keybuf, or NO_KEY for a node entry */
    int line;         /* 1-based */
};

struct line_table {
    struct line_entry *slots; /* owned; capacity is a power of two */
    size_t cap, used;
    char *keybuf; /* owned: NUL-terminated key texts, back to back */
    size_t keylen, keycap;
};

struct pb_yamldoc {
    unsigned magic;          /* YAMLDOC_MAGIC */
    char *name;              /* owned: file path or given name */
    char *text;              /* owned: the raw text, NUL-terminated */
    size_t len;              /* bytes in text */
    json_t *root;            /* owned (one reference) */
    struct line_table lines; /* owned */
};

/* ---- the line table --------------------------------------------------------- */

static size_t hash_ptr(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static size_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return (size_t)h;
}

static size_t entry_hash(const void *node, const char *key)
{
    return hash_ptr(node) ^ (key ? hash_str(key) * 31 : 0);
}

static int table_grow(struct line_table *t)
{
    size_t ncap = t->cap ? t->cap * 2 : 256;
    struct line_entry *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        const struct line_entry *e = &t->slots[i];
        size_t j;
        if (!e->node)
            continue;
        j = entry_hash(e->node, e->key == NO_KEY ? NULL : t->keybuf + e->key) & (ncap - 1);
        while (ns[j].node)
            j = (j + 1) & (ncap - 1);
        ns[j] = *e;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 0;
}

/* Find the slot of (node, key) (key NULL = node entry): an occupied match, or
 * the free slot where it would go. The table must have a free slot. */
static struct line_entry *table_slot(const struct line_table *t, const void *node, const char *key)
{
    size_t j = entry_hash(node, key) & (t->cap - 1);
    for (;;) {
        struct line_entry *e = &t->slots[j];
        if (!e->node)
            return e;
        if (e->node == node) {
            if (!key && e->key == NO_KEY)
                return e;
            if (key && e->key != NO_KEY && strcmp(t->keybuf + e->key, key) == 0)
                return e;
        }
        j = (j + 1) & (t->cap - 1);
    }
}

static int table_put(struct line_table *t, const void *node, const char *key, int line)
{
    struct line_entry *e;
    if ((t->used + 1) * 2 > t->cap && table_grow(t) != 0)
        return -1;
    e = table_slot(t, node, key);
    if (e->node) {
        e->line = line;
        return 0;
    }
    if (key) {
        size_t klen = strlen(key) + 1;
        if (t->keylen + klen > t->keycap) {
            size_t ncap = t->keycap ? t->keycap : 4096;
            char *nb;
            while (ncap < t->keylen + klen)
                ncap *= 2;
            if (!(nb = realloc(t->keybuf, ncap)))
                return -1;
            t->keybuf = nb;
            t->keycap = ncap;
        }
        memcpy(t->keybuf + t->keylen, key, klen);
        e->key = t->keylen;
        t->keylen += klen;
    } else {
        e->key = NO_KEY;
    }
    e->node = node;
    e->line = line;
    t->used++;
    return 0;
}

static int table_get(const struct line_table *t, const void *node, const char *key)
{
    const struct line_entry *e;
    if (!t->cap || !node)
        return 0;
    e = table_slot(t, node, key);
    return e->node ? e->line : 0;
}

static void table_free(struct line_table *t)
{
    free(t->slots);
    free(t->keybuf);
    memset(t, 0, sizeof(*t));
}

/* ---- the loader --------------------------------------------------------------- */

struct frame {
    json_t *node; /* the open mapping or sequence (owned until attached to its parent) */
    int is_map;   /* 1: mapping, 0: sequence */
    char *key;    /* mapping: the key waiting for its value (owned), NULL = expecting a key */
    int discard;  /* mapping: the waiting key is a duplicate; drop its value */
};

struct loader {
    struct pb_yamldoc *doc;
    struct pb_diags *d;
    struct frame stack[PB_YAMLDOC_MAX_DEPTH];
    int depth;    /* frames in use */
    json_t *root; /* owned until moved into doc */
    int have_root;
    int documents;   /* DOCUMENT-START events seen */
    size_t problems; /* problems reported */
    enum pb_rc rc;   /* first non-config failure (NOMEM), else PB_OK */
};

#define LINE(mark) ((int)(mark).line + 1)
#define COLUMN(mark) ((int)(mark).column + 1)

__attribute__((format(printf, 3, 4))) static void problem(struct loader *L, int line,
                                                          const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pb_diags_add(L->d, L->doc->name, line, "%s", msg);
    L->problems++;
}

static void nomem(struct loader *L)
{
    if (L->rc == PB_OK) {
        L->rc = PB_ERR_NOMEM;
        pb_diags_add(L->d, L->doc->name, 0, "out of memory while loading");
    }
}

static int is_int_text(const char *s, size_t len)
{
    size_t i = 0;
    if (len && s[0] == '-')
        i = 1;
    if (i == len)
        return 0;
    if (s[i] == '0' && len - i > 1)
        return 0; /* leading zero: "091" is an account code, not 91 */
    for (; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int text_is(const char *s, size_t len, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == len && memcmp(*words, s, len) == 0)
            return 1;
    return 0;
}

static const char *const null_words[] = {"null", "Null", "NULL", "~", "", NULL};
static const char *const true_words[] = {"true", "True", "TRUE", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", NULL};

#define TAG_STR "tag:yaml.org,2002:str"
#define TAG_MAP "tag:yaml.org,2002:map"
#define TAG_SEQ "tag:yaml.org,2002:seq"

/* The JSON value of a scalar event (new reference), or NULL after reporting. */
static json_t *scalar_value(struct loader *L, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    json_t *v;

    if (tag && strcmp(tag, TAG_STR) != 0 && strcmp(tag, "!") != 0) {
        problem(L, LINE(ev->start_mark),
                "the tag %s is not supported; remove it (only !!str is accepted)", tag);
        return NULL;
    }
    if (tag)
        plain = 0;
    if (plain && text_is(s, len, null_words))
        return json_null();
    if (plain && text_is(s, len, true_words))
        return json_true();
    if (plain && text_is(s, len, false_words))
        return json_false();
    if (plain && is_int_text(s, len) && len < 21) {
        char buf[24], *end;
        long long n;
        memcpy(buf, s, len);
        buf[len] = '\0';
        errno = 0;
        n = strtoll(buf, &end, 10);
        if (errno == 0 && *end == '\0') {
            v = json_integer((json_int_t)n);
            goto record;
        }
        /* out of int64 range: stays a string (a long card-free account number) */
    }
    v = json_stringn(s, len);
    if (!v) {
        problem(L, LINE(ev->start_mark), "the value is not valid UTF-8");
        return NULL;
    }
record:
    if (!v) {
        nomem(L);
        return NULL;
    }
    if (table_put(&L->doc->lines, v, NULL, LINE(ev->start_mark)) != 0) {
        json_decref(v);
        nomem(L);
        return NULL;
    }
    return v;
}

/* Put a finished node (a new reference, stolen; NULL = a value that failed)
 * into the open container, or make it the root. */
static void attach(struct loader *L, json_t *v)
{
    struct frame *f;
    if (L->depth == 0) {
        if (v) {
            L->root = v;
            L->have_root = 1;
        }
        return;
    }
    f = &L->stack[L->depth - 1];
    if (!f->is_map) {
        if (v && json_array_append_new(f->node, v) != 0)
            nomem(L);
        return;
    }
    if (v && !f->discard && json_object_set_new(f->node, f->key, v) != 0)
        nomem(L);
    else if (v && f->discard)
        json_decref(v);
    free(f->key);
    f->key = NULL;
    f->discard = 0;
}

/* A scalar where a mapping key is expected. */
static void take_key(struct loader *L, struct frame *f, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    int line = LINE(ev->start_mark);

    if (memchr(s, '\0', len)) {
        problem(L, line, "a mapping key contains a NUL character");
        f->discard = 1;
    } else if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && len == 2 &&
               memcmp(s, "<<", 2) == 0) {
        problem(L, line, "merge keys (<<) are not supported; write the keys out in full");
        f->discard = 1;
    } else if (json_object_get(f->node, s)) {
        problem(L, line, "duplicate key \"%s\" (first defined at line %d); remove one of them", s,
                table_get(&L->doc->lines, f->node, s));
        f->discard = 1;
    } else if (table_put(&L->doc->lines, f->node, s, line) != 0) {
        nomem(L);
        f->discard = 1;
    }
    if (ev->data.scalar.anchor)
        problem(L, line, "anchors (&%s) are not supported; repeat the value instead",
                (const char *)ev->data.scalar.anchor);
    f->key = strndup(s, len);
    if (!f->key) {
        nomem(L);
        f->discard = 1;
        f->key = NULL;
    }
}

/* Returns 0 to continue, -1 to stop parsing. */
static int on_event(struct loader *L, const yaml_event_t *ev)
{
    struct frame *top = L->depth ? &L->stack[L->depth - 1] : NULL;
    int expecting_key = top && top->is_map && !top->key && !top->discard;
    int line = LINE(ev->start_mark);

    /* a mapping whose key failed (discard set, key NULL) still needs its value consumed */
    if (top && top->is_map && !top->key && top->discard)
        expecting_key = 0;

    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_STREAM_END_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT: return 0;
    case YAML_DOCUMENT_START_EVENT:
        if (++L->documents > 1) {
            problem(L, line,
                    "a second YAML document (---) starts here; a file holds exactly one document");
            return -1;
        }
        return 0;
    case YAML_ALIAS_EVENT:
        problem(L, line, "aliases (*%s) are not supported; repeat the value instead",
                (const char *)ev->data.alias.anchor);
        if (expecting_key)
            return -1; /* an alias as a key: nothing sensible to continue with */
        attach(L, json_null());
        return 0;
    case YAML_SCALAR_EVENT:
        if (expecting_key) {
            take_key(L, top, ev);
            return 0;
        }
        if (ev->data.scalar.anchor)
            problem(L, line, "anchors (&%s) are not supported; repeat the value instead",
                    (const char *)ev->data.scalar.anchor);
        attach(L, scalar_value(L, ev));
        return 0;
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        const char *anchor =
            (const char *)(is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor);
        const char *tag =
            (const char *)(is_map ? ev->data.mapping_start.tag : ev->data.sequence_start.tag);
        json_t *node;
        if (expecting_key) {
            problem(L, line, "a mapping key must be a plain value, not a %s",
                    is_map ? "mapping" : "sequence");
            return -1;
        }
        if (anchor)
            problem(L, line, "anchors (&%s) are not supported; repeat the value instead", anchor);
        if (tag && strcmp(tag, is_map ? TAG_MAP : TAG_SEQ) != 0 && strcmp(tag, "!") != 0)
            problem(L, line, "the tag %s is not supported; remove it", tag);
        if (L->depth == PB_YAMLDOC_MAX_DEPTH) {
            problem(L, line, "nesting deeper than %d levels; flatten the structure",
                    PB_YAMLDOC_MAX_DEPTH);
            return -1;
        }
        node = is_map ? json_object() : json_array();
        if (!node || table_put(&L->doc->lines, node, NULL, line) != 0) {
            json_decref(node);
            nomem(L);
            return -1;
        }
        L->stack[L->depth].node = node;
        L->stack[L->depth].is_map = is_map;
        L->stack[L->depth].key = NULL;
        L->stack[L->depth].discard = 0;
        L->depth++;
        return 0;
    }
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT: {
        json_t *node;
        if (!L->depth)
            return -1; /* libyaml never does this */
        node = top->node;
        free(top->key);
        L->depth--;
        attach(L, node);
        return 0;
    }
    }
    return 0;
}

static void report_syntax(struct loader *L, const yaml_parser_t *p)
{
    const char *what = p->problem ? p->problem : "unknown problem";
    if (p->error == YAML_READER_ERROR) {
        problem(L, 0, "cannot read the text at byte offset %zu: %s", p->problem_offset, what);
    } else if (p->error == YAML_MEMORY_ERROR) {
        nomem(L);
    } else if (p->context) {
        problem(L, LINE(p->problem_mark),
                "YAML syntax error (line %d, column %d): %s %s (line %d, column %d)",
                LINE(p->problem_mark), COLUMN(p->problem_mark), what, p->context,
                LINE(p->context_mark), COLUMN(p->context_mark));
    } else {
        problem(L, LINE(p->problem_mark), "YAML syntax error (line %d, column %d): %s",
                LINE(p->problem_mark), COLUMN(p->problem_mark), what);
    }
}

static void loader_cleanup(struct loader *L)
{
    while (L->depth) {
        struct frame *f = &L->stack[--L->depth];
        free(f->key);
        json_decref(f->node);
    }
    json_decref(L->root);
    L->root = NULL;
}

static enum pb_rc parse(struct pb_yamldoc *doc, struct pb_diags *d)
{
    struct loader L;
    yaml_parser_t p;
    yaml_event_t ev;
    int done = 0;

    memset(&L, 0, sizeof(L));
    L.doc = doc;
    L.d = d;
    if (!yaml_parser_initialize(&p)) {
        nomem(&L);
        return PB_ERR_NOMEM;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)doc->text, doc->len);
    while (!done) {
        if (!yaml_parser_parse(&p, &ev)) {
            report_syntax(&L, &p);
            break;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        if (on_event(&L, &ev) != 0)
            done = 1;
        yaml_event_delete(&ev);
        if (L.rc != PB_OK)
            break;
    }
    yaml_parser_delete(&p);

    if (L.rc == PB_OK && L.problems == 0 && L.depth == 0) {
        doc->root = L.have_root ? L.root : json_null();
        L.root = NULL;
        return PB_OK;
    }
    loader_cleanup(&L);
    if (L.rc != PB_OK)
        return L.rc;
    return PB_ERR_CONFIG;
}

/* ---- public ------------------------------------------------------------------ */

static enum pb_rc load_owned(char *name, char *text, size_t len, struct pb_yamldoc **out,
                             struct pb_diags *d)
{
    struct pb_yamldoc *doc = calloc(1, sizeof(*doc));
    enum pb_rc rc;
    if (!doc) {
        free(name);
        free(text);
        pb_diags_add(d, NULL, 0, "out of memory while loading YAML");
        return PB_ERR_NOMEM;
    }
    doc->magic = YAMLDOC_MAGIC;
    doc->name = name;
    doc->text = text;
    doc->len = len;
    rc = parse(doc, d);
    if (rc != PB_OK) {
        pb_yamldoc_free(doc);
        return rc;
    }
    *out = doc;
    return PB_OK;
}

enum pb_rc pb_yamldoc_load_buffer(const char *name, const char *data, size_t len,
                                  struct pb_yamldoc **out, struct pb_diags *d)
{
    char *n, *t;
    *out = NULL;
    if (!name)
        name = "<string>";
    if (len > PB_YAMLDOC_MAX_BYTES) {
        pb_diags_add(d, name, 0, "the text is %zu bytes, more than the limit of %zu bytes", len,
                     PB_YAMLDOC_MAX_BYTES);
        return PB_ERR_TOOBIG;
    }
    n = strdup(name);
    t = malloc(len + 1);
    if (!n || !t) {
        free(n);
        free(t);
        pb_diags_add(d, name, 0, "out of memory while loading");
        return PB_ERR_NOMEM;
    }
    if (len)
        memcpy(t, data, len);
    t[len] = '\0';
    return load_owned(n, t, len, out, d);
}

enum pb_rc pb_yamldoc_load_string(const char *name, const char *text, struct pb_yamldoc **out,
                                  struct pb_diags *d)
{
    return pb_yamldoc_load_buffer(name, text ? text : "", text ? strlen(text) : 0, out, d);
}

enum pb_rc pb_yamldoc_load_file(const char *path, struct pb_yamldoc **out, struct pb_diags *d)
{
    FILE *f;
    char *text = NULL, *name = NULL;
    size_t len = 0, cap = 0, got;
    enum pb_rc rc;

    *out = NULL;
    f = fopen(path, "rb");
    if (!f) {
        pb_diags_add(d, path, 0, "cannot open: %s", strerror(errno));
        return PB_ERR_IO;
    }
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16384;
            char *nt;
            if (ncap > PB_YAMLDOC_MAX_BYTES + 1)
                ncap = PB_YAMLDOC_MAX_BYTES + 1;
            if (ncap <= len) {
                rc = PB_ERR_TOOBIG;
                pb_diags_add(d, path, 0, "the file is larger than the limit of %zu bytes",
                             PB_YAMLDOC_MAX_BYTES);
                goto fail;
            }
            if (!(nt = realloc(text, ncap + 1))) {
                rc = PB_ERR_NOMEM;
                pb_diags_add(d, path, 0, "out of memory while reading");
                goto fail;
            }
            text = nt;
            cap = ncap;
        }
        got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        rc = PB_ERR_IO;
        pb_diags_add(d, path, 0, "cannot read: %s", strerror(errno));
        goto fail;
    }
    if (len > PB_YAMLDOC_MAX_BYTES) {
        rc = PB_ERR_TOOBIG;
        pb_diags_add(d, path, 0, "the file is larger than the limit of %zu bytes",
                     PB_YAMLDOC_MAX_BYTES);
        goto fail;
    }
    fclose(f);
    f = NULL;
    if (!text && !(text = malloc(1))) {
        pb_diags_add(d, path, 0, "out of memory while reading");
        return PB_ERR_NOMEM;
    }
    text[len] = '\0';
    if (!(name = strdup(path))) {
        free(text);
        pb_diags_add(d, path, 0, "out of memory while reading");
        return PB_ERR_NOMEM;
    }
    return load_owned(name, text, len, out, d);

fail:
    if (f)
        fclose(f);
    free(text);
    return rc;
}

json_t *pb_yamldoc_root(const struct pb_yamldoc *doc)
{
    return doc && doc->magic == YAMLDOC_MAGIC ? doc->root : NULL;
}

int pb_yamldoc_line(const struct pb_yamldoc *doc, const json_t *node)
{
    if (!doc || doc->magic != YAMLDOC_MAGIC || !node)
        return 0;
    return table_get(&doc->lines, node, NULL);
}

int pb_yamldoc_key_line(const struct pb_yamldoc *doc, const json_t *object, const char *key)
{
    if (!doc || doc->magic != YAMLDOC_MAGIC || !object || !key)
        return 0;
    return table_get(&doc->lines, object, key);
}

const char *pb_yamldoc_file(const struct pb_yamldoc *doc)
{
    return doc && doc->magic == YAMLDOC_MAGIC ? doc->name : NULL;
}

const char *pb_yamldoc_text(const struct pb_yamldoc *doc, size_t *len)
{
    if (!doc || doc->magic != YAMLDOC_MAGIC)
        return NULL;
    if (len)
        *len = doc->len;
    return doc->text;
}

void pb_yamldoc_free(struct pb_yamldoc *doc)
{
    if (!doc)
        return;
    doc->magic = 0;
    json_decref(doc->root);
    table_free(&doc->lines);
    free(doc->name);
    free(doc->text);
    free(doc);
}
