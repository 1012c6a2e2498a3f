/*
 * engine/flow.c: loading and checking flow files, flow sets, and $fx.
 *
 * What it owns. Each struct pb_flow and everything it points to lives in the
 * flow's arena (one malloc'ed chunk list, freed in one go), except two
 * jansson trees it holds references to: `vars` (taken from the parsed YAML)
 * and `rates` (normalised copies). A flow set owns its array of flows.
 *
 * How loading works. core/yamldoc.c parses the file into a jansson tree with a
 * line for every node and key. The loader below walks that tree with tables
 * of the allowed keys (one per level, ending in a sentinel, nginx-style),
 * checks each value, and keeps going after a problem so that one run of
 * `paybridge check` reports every problem with its line. Only when the file
 * is structurally clean does engine/mapping.c compile the jq expressions
 * (a broken template would otherwise produce a cascade of jq errors).
 *
 * Static checks on expressions (scan_expr). A small lexer that knows jq's
 * strings, string interpolation "\(...)" and comments walks each expression
 * and (1) proves its brackets are balanced, which is what lets mapping.c
 * paste many expressions into one jq program without one leaking into the
 * next; (2) finds $refs.NAME (NAME must be an earlier step: steps run in
 * order), $vars.NAME (NAME must be a key of vars: a typo would silently give
 * null, and null fields are omitted, so the typo would never show), $fx (the
 * flow must have an fx: block; each $fx token is rewritten into a call of
 * __pb_fx, which makes $fx lazy, see engine/mapping.c) and $ENV / env
 * (refused: the process environment holds secrets). It is a scan, not a
 * parser: $refs reached in a roundabout way ($refs | .[$x]) is not seen, and
 * docs/flows.md says so.
 *
 * Invariants. A flow returned by the loader had zero problems. Step names are
 * jq identifiers, so "$refs.NAME" always works. `needs` lists each name once.
 *
 * Threading. Loading is single-threaded; a set is frozen by the first mapper
 * (an atomic flag), after which it is only read.
 *
 * Rejected designs.
 *   - Checking sink commands against the target connector here: the flow file
 *     does not know the connector type; `paybridge check`, which has the
 *     connections, asks the sink (max_batch() == 0 means unknown command).
 *   - Failing on unknown event types: new canonical types arrive with new
 *     connectors; only near-misses of a known type ("payment.succeded") are
 *     refused, with the suggestion.
 */
#include "engine/flow.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/money.h"
#include "core/yamldoc.h"
#include "engine/mapping.h"

#define FLOWSET_MAGIC 0x46534554u /* "FSET" */

/* ---- arena -------------------------------------------------------------------------- */

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

struct pb__arena {
    struct arena_chunk *head;
};

static void *arena_alloc(struct pb__arena *a, size_t n)
{
    struct arena_chunk *c = a->head;
    void *p;
    n = (n + 15) & ~(size_t)15;
    if (!n)
        n = 16;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        if (!(c = malloc(sizeof(*c) + cap)))
            return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

static char *arena_strndup(struct pb__arena *a, const char *s, size_t len)
{
    char *p = arena_alloc(a, len + 1);
    if (p) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

static char *arena_strdup(struct pb__arena *a, const char *s)
{
    return s ? arena_strndup(a, s, strlen(s)) : NULL;
}

static void arena_free(struct pb__arena *a)
{
    if (!a)
        return;
    while (a->head) {
        struct arena_chunk *n = a->head->next;
        free(a->head);
        a->head = n;
    }
    free(a);
}

/* ---- flow sets ------------------------------------------------------------------------ */

struct pb_flowset {
    unsigned magic;         /* FLOWSET_MAGIC */
    struct pb_flow **flows; /* owned */
    size_t n, cap;
    atomic_int frozen; /* set by the first mapper */
};

/* ---- did you mean ------------------------------------------------------------------------ */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* The candidate closest to `word` when it is a plausible typo, else NULL. */
static const char *closest(const char *word, const char *const *cands, size_t n)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX, limit = strlen(word) <= 4 ? 1 : 2;
    for (size_t i = 0; i < n; i++) {
        size_t d;
        if (!cands[i])
            continue;
        d = edit_distance(word, cands[i]);
        if (d < bestd) {
            bestd = d;
            best = cands[i];
        }
    }
    return bestd <= limit ? best : NULL;
}

/* ---- the expression scanner ------------------------------------------------------------- */

#define SCAN_NAMES_MAX 32
#define SCAN_FX_MAX 64

struct scan {
    int uses_fx;               /* $fx */
    size_t fx_at[SCAN_FX_MAX]; /* offsets of the $fx tokens in code (not in strings) */
    size_t n_fx;
    int fx_bound;      /* `as $fx` or {$fx}: $fx used as a binding, not a value */
    int uses_env;      /* $ENV or env */
    int uses_halt;     /* halt or halt_error */
    int uses_reserved; /* $__pb... */
    char refs[SCAN_NAMES_MAX][PB_FLOW_NAME_MAX + 1]; /* NAME of each $refs.NAME */
    size_t n_refs;
    char vars[SCAN_NAMES_MAX][PB_FLOW_NAME_MAX + 1]; /* NAME of each $vars.NAME */
    size_t n_vars;
    char problem[200]; /* "" when the brackets and strings are well formed */
};

static int ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int ident_char(char c)
{
    return ident_start(c) || (c >= '0' && c <= '9');
}

static int space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The member selected right after a variable: .name  ."name"  ["name"].
 * Copies it into buf and returns 1; 0 when there is no such selector. */
static int member_after(const char *s, size_t i, char *buf, size_t len)
{
    size_t start, end;
    while (space(s[i]))
        i++;
    if (s[i] == '.') {
        i++;
        while (space(s[i]))
            i++;
        if (ident_start(s[i])) {
            start = i;
            while (ident_char(s[i]))
                i++;
            end = i;
        } else if (s[i] == '"') {
            start = ++i;
            while (s[i] && s[i] != '"' && s[i] != '\\')
                i++;
            if (s[i] != '"')
                return 0;
            end = i;
        } else {
            return 0;
        }
    } else if (s[i] == '[') {
        i++;
        while (space(s[i]))
            i++;
        if (s[i] != '"')
            return 0;
        start = ++i;
        while (s[i] && s[i] != '"' && s[i] != '\\')
            i++;
        if (s[i] != '"')
            return 0;
        end = i++;
        while (space(s[i]))
            i++;
        if (s[i] != ']')
            return 0;
    } else {
        return 0;
    }
    if (end - start >= len || end == start)
        return 0;
    memcpy(buf, s + start, end - start);
    buf[end - start] = '\0';
    return 1;
}

static void add_name(char names[][PB_FLOW_NAME_MAX + 1], size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(names[i], name) == 0)
            return;
    if (*n < SCAN_NAMES_MAX) {
        memcpy(names[*n], name, strlen(name) + 1);
        (*n)++;
    }
}

static void scan_expr(const char *s, struct scan *sc)
{
    char stack[256];
    size_t depth = 0, i = 0;
    int in_string = 0;

    memset(sc, 0, sizeof(*sc));
    while (s[i]) {
        char c = s[i];
        if (in_string) {
            if (c == '\\') {
                if (s[i + 1] == '(') {
                    if (depth == sizeof(stack))
                        goto too_deep;
                    stack[depth++] = 'I';
                    in_string = 0;
                    i += 2;
                    continue;
                }
                if (!s[i + 1])
                    break;
                i += 2;
                continue;
            }
            if (c == '"')
                in_string = 0;
            i++;
            continue;
        }
        if (c == '#') {
            while (s[i] && s[i] != '\n')
                i++;
        } else if (c == '"') {
            in_string = 1;
            i++;
        } else if (c == '(' || c == '[' || c == '{') {
            if (depth == sizeof(stack))
                goto too_deep;
            stack[depth++] = c;
            i++;
        } else if (c == ')' || c == ']' || c == '}') {
            char open = c == ')' ? '(' : c == ']' ? '[' : '{';
            if (!depth) {
                snprintf(sc->problem, sizeof(sc->problem),
                         "unbalanced brackets: '%c' at offset %zu has no matching '%c'", c, i,
                         open);
                return;
            }
            if (c == ')' && stack[depth - 1] == 'I') {
                depth--;
                in_string = 1;
                i++;
                continue;
            }
            if (stack[depth - 1] != open) {
                snprintf(sc->problem, sizeof(sc->problem),
                         "unbalanced brackets: '%c' at offset %zu closes '%c'", c, i,
                         stack[depth - 1] == 'I' ? '(' : stack[depth - 1]);
                return;
            }
            depth--;
            i++;
        } else if (c == '$') {
            size_t j = i + 1;
            char name[PB_FLOW_NAME_MAX + 1], member[PB_FLOW_NAME_MAX + 1];
            while (ident_char(s[j]))
                j++;
            if (j - i - 1 < sizeof(name)) {
                memcpy(name, s + i + 1, j - i - 1);
                name[j - i - 1] = '\0';
                if (strcmp(name, "fx") == 0) {
                    size_t k = i, n = j;
                    sc->uses_fx = 1;
                    if (sc->n_fx < SCAN_FX_MAX)
                        sc->fx_at[sc->n_fx] = i;
                    sc->n_fx++;
                    while (k > 0 && space(s[k - 1]))
                        k--;
                    while (space(s[n]))
                        n++;
                    /* "... as $fx" and "{$fx}" bind or name the variable */
                    if ((k >= 2 && s[k - 2] == 'a' && s[k - 1] == 's' &&
                         (k == 2 || !ident_char(s[k - 3]))) ||
                        (k >= 1 && (s[k - 1] == '{' || s[k - 1] == ',') && depth &&
                         stack[depth - 1] == '{' && (s[n] == '}' || s[n] == ',')))
                        sc->fx_bound = 1;
                } else if (strcmp(name, "ENV") == 0)
                    sc->uses_env = 1;
                else if (strncmp(name, "__pb", 4) == 0)
                    sc->uses_reserved = 1;
                else if (strcmp(name, "refs") == 0 && member_after(s, j, member, sizeof(member)))
                    add_name(sc->refs, &sc->n_refs, member);
                else if (strcmp(name, "vars") == 0 && member_after(s, j, member, sizeof(member)))
                    add_name(sc->vars, &sc->n_vars, member);
            }
            i = j;
        } else if (ident_start(c)) {
            size_t j = i, k = i;
            while (ident_char(s[j]))
                j++;
            while (k > 0 && space(s[k - 1]))
                k--;
            if (!(k > 0 && s[k - 1] == '.')) {
                size_t n = j;
                while (space(s[n]))
                    n++;
                if (s[n] != ':') { /* {env: 1} is a key, not a call */
                    if (j - i == 3 && memcmp(s + i, "env", 3) == 0)
                        sc->uses_env = 1;
                    if ((j - i == 4 && memcmp(s + i, "halt", 4) == 0) ||
                        (j - i == 10 && memcmp(s + i, "halt_error", 10) == 0))
                        sc->uses_halt = 1;
                }
            }
            i = j;
        } else {
            i++;
        }
    }
    if (in_string)
        snprintf(sc->problem, sizeof(sc->problem), "a string is not closed (missing '\"')");
    else if (depth)
        snprintf(sc->problem, sizeof(sc->problem), "unbalanced brackets: '%c' is never closed",
                 stack[depth - 1] == 'I' ? '(' : stack[depth - 1]);
    return;
too_deep:
    snprintf(sc->problem, sizeof(sc->problem), "brackets nested more than %zu deep", sizeof(stack));
}

/* 1 when the whole expression is a jq number literal with a fraction or an
 * exponent ("10.99", "1e3"): it would be a double. */
static int is_fractional_literal(const char *s)
{
    int digits = 0, frac = 0;
    while (space(*s))
        s++;
    if (*s == '-')
        s++;
    while (*s >= '0' && *s <= '9')
        s++, digits++;
    if (*s == '.') {
        s++;
        frac = 1;
        while (*s >= '0' && *s <= '9')
            s++, digits++;
    }
    if (digits && (*s == 'e' || *s == 'E')) {
        frac = 1;
        s++;
        if (*s == '+' || *s == '-')
            s++;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    while (space(*s))
        s++;
    return digits && frac && *s == '\0';
}

/* The text to compile: `s` with each $fx token (offsets from scan_expr)
 * replaced by a call of __pb_fx, the prologue function that returns $fx or
 * raises the FX error only when it is used (engine/mapping.c). NULL when out
 * of memory. */
static char *rewrite_fx(struct pb__arena *a, const char *s, const struct scan *sc)
{
    size_t len = strlen(s), out_len = len + sc->n_fx * 8 + 1, o = 0, from = 0;
    char *out = arena_alloc(a, out_len);
    if (!out)
        return NULL;
    for (size_t i = 0; i < sc->n_fx && i < SCAN_FX_MAX; i++) {
        size_t at = sc->fx_at[i];
        memcpy(out + o, s + from, at - from);
        o += at - from;
        memcpy(out + o, "__pb_fx", 7);
        o += 7;
        from = at + 3; /* "$fx" */
    }
    memcpy(out + o, s + from, len - from);
    out[o + len - from] = '\0';
    return out;
}

/* ---- the loader ---------------------------------------------------------------------------- */

struct loader {
    struct pb_yamldoc *doc;
    const char *file; /* for diagnostics */
    struct pb_diags *d;
    size_t problems;
    int nomem;
    int defs_broken;              /* defs: failed its static checks */
    const struct pb_flowset *set; /* for duplicate flow names */
    struct pb_flow *flow;         /* being built */
    struct pb__arena *arena;      /* flow->arena */
    json_t *rates;                /* normalised fx.rates, owned until moved into the flow */
    json_t *vars;                 /* reference to the vars block, owned until moved */
    const char
        *step_names[PB_FLOW_STEPS_MAX]; /* names of the steps parsed so far (NULL = bad name) */
};

/* per-step scratch while building its leaves */
struct step_build {
    struct pb_flow_step *step;
    struct pb__leaf *leaves; /* malloc'ed, copied into the arena at the end */
    size_t n, cap;
    const char *needs[PB_FLOW_STEPS_MAX];
    size_t n_needs;
    int overflow; /* reported "too many leaves" */
};

__attribute__((format(printf, 3, 4))) static void bad(struct loader *ld, int line, const char *fmt,
                                                      ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pb_diags_add(ld->d, ld->file, line, "%s", msg);
    ld->problems++;
}

static void oom(struct loader *ld)
{
    if (!ld->nomem)
        bad(ld, 0, "out of memory while loading the flow");
    ld->nomem = 1;
}

static int node_line(struct loader *ld, const json_t *node, int fallback)
{
    int l = pb_yamldoc_line(ld->doc, node);
    return l ? l : fallback;
}

static int key_line(struct loader *ld, const json_t *obj, const char *key)
{
    int l = pb_yamldoc_key_line(ld->doc, obj, key);
    return l ? l : pb_yamldoc_line(ld->doc, obj);
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "a mapping";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "text";
    case JSON_INTEGER: return "a number";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "empty";
    }
    return "a value";
}

struct key_spec {
    const char *key;
    int required;
    const char *hint; /* what to write when it is missing */
};

static const struct key_spec flow_keys[] = {
    {"flow", 1, "the unique name of this flow, e.g. `flow: opayo-xero-payments`"},
    {"description", 0, NULL},
    {"source", 1, "the connection events come from, e.g. `source: opayo-shop`"},
    {"events", 1, "the event types it handles, e.g. `events: [payment.succeeded]`"},
    {"target", 1, "the sink connection, e.g. `target: xero-demo`"},
    {"vars", 0, NULL},
    {"fx", 0, NULL},
    {"defs", 0, NULL},
    {"steps", 1, "the list of steps, each with name, command, reference and document"},
    {NULL, 0, NULL},
};

static const struct key_spec step_keys[] = {
    {"name", 1,
     "a name for the step, e.g. `name: invoice` (it is how later steps say $refs.invoice)"},
    {"command", 1, "the sink command, e.g. `command: invoice.create`"},
    {"target", 0, NULL},
    {"description", 0, NULL},
    {"when", 0, NULL},
    {"reference", 1,
     "a jq expression for the source reference (xref key) of the record, "
     "e.g. `reference: '.payment.reference'`"},
    {"document", 1, "the document template, a mapping whose leaves are jq expressions"},
    {NULL, 0, NULL},
};

static const struct key_spec fx_keys[] = {
    {"base_currency", 1, "the ERP's base currency, e.g. `base_currency: GBP`"},
    {"rates", 0, NULL},
    {NULL, 0, NULL},
};

static const char *const known_events[] = {
    "payment.succeeded", "payment.declined", "payment.failed",
    "refund.succeeded",  "refund.declined",  NULL,
};

/* Unknown keys (with a suggestion) and missing required keys of `obj`. */
static void check_keys(struct loader *ld, const json_t *obj, const struct key_spec *spec,
                       const char *what)
{
    const char *key, *cands[16];
    json_t *v;
    size_t n = 0;
    char known[256];
    size_t klen = 0;

    known[0] = '\0';
    for (const struct key_spec *s = spec; s->key && n < 16; s++) {
        cands[n++] = s->key;
        klen += (size_t)snprintf(known + klen, klen < sizeof(known) ? sizeof(known) - klen : 0,
                                 "%s%s", klen ? ", " : "", s->key);
        if (klen >= sizeof(known))
            klen = sizeof(known) - 1;
    }
    json_object_foreach((json_t *)obj, key, v)
    {
        const struct key_spec *s;
        const char *guess;
        for (s = spec; s->key; s++)
            if (strcmp(s->key, key) == 0)
                break;
        if (s->key)
            continue;
        guess = closest(key, cands, n);
        if (guess)
            bad(ld, key_line(ld, obj, key), "unknown key `%s` in %s; did you mean `%s`?", key, what,
                guess);
        else
            bad(ld, key_line(ld, obj, key), "unknown key `%s` in %s (the keys are: %s)", key, what,
                known);
    }
    for (const struct key_spec *s = spec; s->key; s++)
        if (s->required && !json_object_get(obj, s->key))
            bad(ld, node_line(ld, obj, 1), "%s has no `%s:`; add %s", what, s->key, s->hint);
}

enum name_kind { NAME_FLOW, NAME_CONNECTION, NAME_STEP, NAME_COMMAND };

/* Check a name-like value; returns the text (borrowed from the tree) or NULL. */
static const char *get_name(struct loader *ld, const json_t *obj, const char *key,
                            enum name_kind kind, const char *what)
{
    json_t *v = json_object_get(obj, key);
    const char *s;
    size_t len;
    int line = key_line(ld, obj, key);
    if (!v)
        return NULL; /* reported by check_keys */
    if (!json_is_string(v)) {
        bad(ld, line, "%s `%s` must be text, not %s", what, key, type_name(v));
        return NULL;
    }
    s = json_string_value(v);
    len = json_string_length(v);
    if (len == 0) {
        bad(ld, line, "%s `%s` is empty", what, key);
        return NULL;
    }
    if (len > PB_FLOW_NAME_MAX || strlen(s) != len) {
        bad(ld, line, "%s `%s` is longer than %d characters", what, key, PB_FLOW_NAME_MAX);
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok;
        switch (kind) {
        case NAME_STEP:
            ok = (c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
            break;
        case NAME_COMMAND:
            ok = (c >= 'a' && c <= 'z') || c == '_' || (c == '.' && i > 0 && i + 1 < len);
            break;
        default: ok = ident_char(c) || c == '-' || c == '.'; break;
        }
        if (!ok) {
            if (kind == NAME_STEP)
                bad(ld, line,
                    "step name \"%s\" may contain only a-z, 0-9 and _ and must not start with a "
                    "digit (later steps refer to it as $refs.%s)",
                    s, s);
            else if (kind == NAME_COMMAND)
                bad(ld, line,
                    "command \"%s\" must look like noun.verb in lower case, e.g. invoice.create",
                    s);
            else
                bad(ld, line, "%s `%s` \"%s\" may contain only letters, digits, '-', '_' and '.'",
                    what, key, s);
            return NULL;
        }
    }
    if (kind == NAME_COMMAND && !strchr(s, '.')) {
        bad(ld, line, "command \"%s\" must look like noun.verb, e.g. invoice.create", s);
        return NULL;
    }
    return s;
}

static const char *get_text(struct loader *ld, const json_t *obj, const char *key, const char *what)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return NULL;
    if (!json_is_string(v)) {
        bad(ld, key_line(ld, obj, key), "%s `%s` must be text, not %s", what, key, type_name(v));
        return NULL;
    }
    return json_string_value(v);
}

static void check_events(struct loader *ld, const json_t *root)
{
    json_t *v = json_object_get(root, "events"), *e;
    const char **list;
    size_t n, i;
    int line = key_line(ld, root, "events");

    if (!v)
        return;
    if (json_is_string(v)) {
        n = 1;
    } else if (json_is_array(v)) {
        n = json_array_size(v);
        if (n == 0) {
            bad(ld, line, "`events` is empty; list at least one event type");
            return;
        }
    } else {
        bad(ld, line, "`events` must be a list of event types, not %s", type_name(v));
        return;
    }
    list = arena_alloc(ld->arena, (n + 1) * sizeof(*list));
    if (!list) {
        oom(ld);
        return;
    }
    for (i = 0; i < n; i++) {
        const char *s, *guess;
        size_t k, dots = 0, len;
        int ok = 1, eline;
        e = json_is_string(v) ? v : json_array_get(v, i);
        eline = node_line(ld, e, line);
        if (!json_is_string(e)) {
            bad(ld, eline, "event %zu must be text such as payment.succeeded, not %s", i + 1,
                type_name(e));
            continue;
        }
        s = json_string_value(e);
        len = strlen(s);
        for (k = 0; k < len; k++) {
            if (s[k] == '.')
                dots++;
            else if (!((s[k] >= 'a' && s[k] <= 'z') || s[k] == '_'))
                ok = 0;
        }
        if (!ok || dots != 1 || s[0] == '.' || s[len - 1] == '.') {
            bad(ld, eline,
                "event type \"%s\" is not of the form entity.outcome (e.g. payment.succeeded)", s);
            continue;
        }
        for (k = 0; known_events[k]; k++)
            if (strcmp(known_events[k], s) == 0)
                break;
        if (!known_events[k] &&
            (guess = closest(s, known_events, sizeof(known_events) / sizeof(*known_events) - 1))) {
            bad(ld, eline, "unknown event type \"%s\"; did you mean %s?", s, guess);
            continue;
        }
        for (k = 0; k < i; k++)
            if (list[k] && strcmp(list[k], s) == 0)
                break;
        if (k < i) {
            bad(ld, eline, "event type \"%s\" is listed twice", s);
            continue;
        }
        list[i] = arena_strdup(ld->arena, s);
        if (!list[i])
            oom(ld);
    }
    ld->flow->events = list;
    ld->flow->n_events = n;
}

static void check_fx(struct loader *ld, const json_t *root)
{
    json_t *fx = json_object_get(root, "fx"), *rates, *v;
    const char *base = NULL, *cur;
    int line = key_line(ld, root, "fx");

    if (!fx)
        return;
    if (!json_is_object(fx)) {
        bad(ld, line, "`fx` must be a mapping with base_currency and rates, not %s", type_name(fx));
        return;
    }
    check_keys(ld, fx, fx_keys, "fx");
    ld->flow->has_fx = 1;
    if ((v = json_object_get(fx, "base_currency"))) {
        int bline = key_line(ld, fx, "base_currency");
        if (!json_is_string(v))
            bad(ld, bline, "fx base_currency must be a currency code such as GBP, not %s",
                type_name(v));
        else if (!pb_currency_valid(json_string_value(v)))
            bad(ld, bline,
                "fx base_currency \"%s\" is not an ISO 4217 currency code (three upper-case "
                "letters, e.g. GBP)",
                json_string_value(v));
        else
            base = ld->flow->base_currency = arena_strdup(ld->arena, json_string_value(v));
    }
    if (!(ld->rates = json_object())) {
        oom(ld);
        return;
    }
    rates = json_object_get(fx, "rates");
    if (!rates)
        return;
    if (!json_is_object(rates)) {
        bad(ld, key_line(ld, fx, "rates"),
            "fx rates must be a mapping from currency to rate, e.g. {EUR: \"0.8571\"}, not %s",
            type_name(rates));
        return;
    }
    json_object_foreach(rates, cur, v)
    {
        int rline = key_line(ld, rates, cur);
        char text[64];
        if (!pb_currency_valid(cur)) {
            bad(ld, rline,
                "fx rate for \"%s\": not an ISO 4217 currency code (three upper-case letters, "
                "e.g. EUR)",
                cur);
            continue;
        }
        if (base && strcmp(cur, base) == 0) {
            bad(ld, rline,
                "fx rate for %s, the base currency itself; remove it (it always converts at 1)",
                cur);
            continue;
        }
        if (json_is_integer(v)) {
            snprintf(text, sizeof(text), "%lld", (long long)json_integer_value(v));
        } else if (json_is_string(v) && json_string_length(v) < sizeof(text)) {
            memcpy(text, json_string_value(v), json_string_length(v) + 1);
        } else {
            bad(ld, rline,
                "fx rate for %s must be a positive decimal such as \"0.8571\" (%s per 1 %s), "
                "not %s",
                cur, base ? base : "base units", cur, type_name(v));
            continue;
        }
        if (base) {
            struct pb_err e = {0};
            int64_t out;
            if (pb_money_convert(100, cur, base, text, &out, &e) != PB_OK) {
                bad(ld, rline,
                    "fx rate for %s \"%s\" is not usable (%s); write a positive decimal such "
                    "as \"0.8571\" (%s per 1 %s)",
                    cur, text, e.msg, base, cur);
                continue;
            }
        }
        if (json_object_set_new(ld->rates, cur, json_string(text)) != 0)
            oom(ld);
    }
}

/* "step NAME field F", "step NAME when", "step 2 reference", ... for messages. */
static void where_of(const struct step_build *sb, const char *field, char *buf, size_t len)
{
    const struct pb_flow_step *st = sb->step;
    int plain = strcmp(field, "when") == 0 || strcmp(field, "reference") == 0;
    if (st->name)
        snprintf(buf, len, "step %s %s%s", st->name, plain ? "" : "field ", field);
    else
        snprintf(buf, len, "step %zu %s%s", st->index + 1, plain ? "" : "field ", field);
}

/* Static checks of one expression; records needs and uses_fx. Returns 1 when
 * the expression is malformed (unbalanced, unterminated string). */
static int check_expr(struct loader *ld, struct step_build *sb, const char *field, const char *expr,
                      int line, const char **code)
{
    struct scan sc;
    const struct pb_flow_step *st = sb->step;
    char where[320];

    where_of(sb, field, where, sizeof(where));

    scan_expr(expr, &sc);
    if (sc.problem[0]) {
        bad(ld, line, "%s: %s", where, sc.problem);
        return 1;
    }
    if (sc.uses_env)
        bad(ld, line,
            "%s: flow expressions cannot read the process environment ($ENV, env), which holds "
            "secrets; put the value under vars: and use $vars",
            where);
    if (sc.uses_reserved)
        bad(ld, line, "%s: variables starting with $__pb are reserved for paybridge", where);
    if (sc.uses_halt)
        bad(ld, line, "%s: halt and halt_error are not available in flows; use error(\"...\")",
            where);
    *code = expr;
    if (sc.uses_fx) {
        ld->flow->uses_fx = 1;
        if (!json_object_get(pb_yamldoc_root(ld->doc), "fx"))
            bad(ld, line,
                "%s: uses $fx but the flow has no fx: block; add fx: {base_currency: GBP, rates: "
                "{...}}",
                where);
        if (sc.fx_bound)
            bad(ld, line,
                "%s: $fx is set by paybridge and cannot be bound or used as {$fx}; "
                "write {fx: $fx}",
                where);
        else if (sc.n_fx > SCAN_FX_MAX)
            bad(ld, line, "%s: more than %d uses of $fx; bind it once with `$fx as $x`", where,
                SCAN_FX_MAX);
        else if (!(*code = rewrite_fx(ld->arena, expr, &sc)))
            oom(ld);
    }
    if (sc.n_vars && json_is_object(ld->vars)) {
        for (size_t i = 0; i < sc.n_vars; i++) {
            const char *cands[64], *key, *guess;
            json_t *v;
            size_t n = 0;
            if (json_object_get(ld->vars, sc.vars[i]))
                continue;
            json_object_foreach(ld->vars, key, v)
            {
                if (n < 64)
                    cands[n++] = key;
            }
            guess = closest(sc.vars[i], cands, n);
            if (guess)
                bad(ld, line, "%s: $vars.%s is not defined in vars:; did you mean $vars.%s?", where,
                    sc.vars[i], guess);
            else
                bad(ld, line, "%s: $vars.%s is not defined in vars:; add it there", where,
                    sc.vars[i]);
        }
    } else if (sc.n_vars && !ld->vars) {
        bad(ld, line, "%s: uses $vars.%s but the flow has no vars: block", where, sc.vars[0]);
    }
    for (size_t i = 0; i < sc.n_refs; i++) {
        const char *name = sc.refs[i], *earlier[PB_FLOW_STEPS_MAX], *guess;
        size_t k, n_earlier = st->index, j;
        char list[256];
        size_t llen = 0;
        for (k = 0; k < n_earlier; k++) {
            earlier[k] = ld->step_names[k];
            if (earlier[k] && strcmp(earlier[k], name) == 0)
                break;
        }
        if (k < n_earlier) {
            for (j = 0; j < sb->n_needs; j++)
                if (strcmp(sb->needs[j], name) == 0)
                    break;
            if (j == sb->n_needs)
                sb->needs[sb->n_needs++] = ld->step_names[k];
            continue;
        }
        if (st->name && strcmp(name, st->name) == 0) {
            bad(ld, line,
                "%s: $refs.%s is this step itself; a step can only use the ids of "
                "earlier steps",
                where, name);
            continue;
        }
        for (k = st->index + 1; k < PB_FLOW_STEPS_MAX; k++)
            if (ld->step_names[k] && strcmp(ld->step_names[k], name) == 0)
                break;
        if (k < PB_FLOW_STEPS_MAX) {
            bad(ld, line,
                "%s: $refs.%s is a later step; steps run in order, so move step %s before this "
                "one",
                where, name, name);
            continue;
        }
        list[0] = '\0';
        for (k = 0; k < n_earlier; k++)
            if (earlier[k])
                llen += (size_t)snprintf(list + llen, llen < sizeof(list) ? sizeof(list) - llen : 0,
                                         "%s%s", llen ? ", " : "", earlier[k]);
        guess = closest(name, earlier, n_earlier);
        if (guess)
            bad(ld, line, "%s: $refs.%s is not an earlier step; did you mean $refs.%s?", where,
                name, guess);
        else
            bad(ld, line, "%s: $refs.%s is not an earlier step of this flow (earlier steps: %s)",
                where, name, list[0] ? list : "none");
    }
    return 0;
}

/* Turn a scalar leaf into expression text (arena); NULL after reporting. */
static const char *leaf_text(struct loader *ld, struct step_build *sb, const json_t *v,
                             const char *field, int line)
{
    char num[32], where[320];
    const char *s;
    size_t i;
    where_of(sb, field, where, sizeof(where));
    if (json_is_string(v)) {
        s = json_string_value(v);
        if (strlen(s) != json_string_length(v)) {
            bad(ld, line, "%s: the expression contains a NUL character", where);
            return NULL;
        }
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        s = num;
    } else if (json_is_true(v)) {
        s = "true";
    } else if (json_is_false(v)) {
        s = "false";
    } else {
        bad(ld, line,
            "%s: no expression (an empty value); write a jq expression, or remove the key to "
            "leave the field out",
            where);
        return NULL;
    }
    for (i = 0; s[i] && space(s[i]); i++)
        ;
    if (!s[i]) {
        bad(ld, line, "%s: the expression is empty", where);
        return NULL;
    }
    if (strlen(s) > PB_FLOW_EXPR_MAX) {
        bad(ld, line, "%s: the expression is longer than %d bytes; move logic into defs:", where,
            PB_FLOW_EXPR_MAX);
        return NULL;
    }
    if (is_fractional_literal(s)) {
        bad(ld, line,
            "%s: %s is a jq number, i.e. a double; write it as the string '\"%s\"' so that "
            "amounts stay exact",
            where, s, s);
        return NULL;
    }
    return arena_strdup(ld->arena, s);
}

static int add_leaf(struct loader *ld, struct step_build *sb, const char *expr, const char *code,
                    const char *field, int line, int malformed, size_t *index)
{
    if (sb->n == PB_FLOW_LEAVES_MAX) {
        if (!sb->overflow)
            bad(ld, line, "step %zu has more than %d expressions; split it", sb->step->index + 1,
                PB_FLOW_LEAVES_MAX);
        sb->overflow = 1;
        return -1;
    }
    if (sb->n == sb->cap) {
        size_t cap = sb->cap ? sb->cap * 2 : 16;
        struct pb__leaf *nl = realloc(sb->leaves, cap * sizeof(*nl));
        if (!nl) {
            oom(ld);
            return -1;
        }
        sb->leaves = nl;
        sb->cap = cap;
    }
    sb->leaves[sb->n].expr = expr;
    sb->leaves[sb->n].code = code ? code : expr;
    sb->leaves[sb->n].field = field;
    sb->leaves[sb->n].line = line;
    sb->leaves[sb->n].malformed = malformed;
    *index = sb->n++;
    return 0;
}

static void build_tnode(struct loader *ld, struct step_build *sb, const json_t *v, const char *path,
                        int line, struct pb__tnode *out)
{
    char *child_path;
    size_t i = 0;
    if (json_is_object(v) || json_is_array(v)) {
        size_t n = json_is_object(v) ? json_object_size(v) : json_array_size(v);
        struct pb__tnode *kids = n ? arena_alloc(ld->arena, n * sizeof(*kids)) : NULL;
        out->kind = json_is_object(v) ? PB__TNODE_OBJECT : PB__TNODE_ARRAY;
        out->kids = kids;
        out->n_kids = 0;
        if (n && !kids) {
            oom(ld);
            return;
        }
        if (json_is_object(v)) {
            const char *key;
            json_t *child;
            json_object_foreach((json_t *)v, key, child)
            {
                size_t plen = strlen(path) + strlen(key) + 2;
                if (!(child_path = arena_alloc(ld->arena, plen))) {
                    oom(ld);
                    return;
                }
                snprintf(child_path, plen, "%s%s%s", path, path[0] ? "." : "", key);
                kids[i].key = arena_strdup(ld->arena, key);
                build_tnode(ld, sb, child, child_path, key_line(ld, v, key), &kids[i]);
                i++;
            }
        } else {
            for (i = 0; i < n; i++) {
                json_t *child = json_array_get(v, i);
                size_t plen = strlen(path) + 24;
                if (!(child_path = arena_alloc(ld->arena, plen))) {
                    oom(ld);
                    return;
                }
                snprintf(child_path, plen, "%s[%zu]", path, i);
                build_tnode(ld, sb, child, child_path, node_line(ld, child, line), &kids[i]);
            }
        }
        out->n_kids = n;
        return;
    }
    out->kind = PB__TNODE_LEAF;
    {
        const char *expr = leaf_text(ld, sb, v, path, line);
        if (!expr)
            return;
        const char *code = NULL;
        int malformed = check_expr(ld, sb, path, expr, line, &code);
        if (add_leaf(ld, sb, expr, code, path, line, malformed, &out->leaf) != 0)
            return;
    }
}

static void parse_step(struct loader *ld, const json_t *obj, size_t index, int line)
{
    struct pb_flow_step *st = (struct pb_flow_step *)&ld->flow->steps[index];
    struct step_build sb;
    const char *name, *command, *desc;
    json_t *v;
    char what[96];
    size_t leaf;

    memset(&sb, 0, sizeof(sb));
    sb.step = st;
    st->magic = PB_FLOW_STEP_MAGIC;
    st->flow = ld->flow;
    st->index = index;
    st->line = line;
    st->reference_leaf = SIZE_MAX;
    st->document.kind = PB__TNODE_OBJECT;

    if (!json_is_object(obj)) {
        bad(ld, line,
            "step %zu must be a mapping with name, command, reference and document, "
            "not %s",
            index + 1, type_name(obj));
        return;
    }
    name = get_name(ld, obj, "name", NAME_STEP, "step");
    if (name) {
        for (size_t k = 0; k < index; k++)
            if (ld->step_names[k] && strcmp(ld->step_names[k], name) == 0) {
                bad(ld, key_line(ld, obj, "name"),
                    "duplicate step name \"%s\" (also step %zu at line %d); step names must be "
                    "unique in a flow",
                    name, k + 1, ld->flow->steps[k].line);
                name = NULL;
                break;
            }
    }
    if (name) {
        st->name = arena_strdup(ld->arena, name);
        ld->step_names[index] = st->name;
        snprintf(what, sizeof(what), "step %s", name);
    } else {
        snprintf(what, sizeof(what), "step %zu", index + 1);
    }
    check_keys(ld, obj, step_keys, what);
    command = get_name(ld, obj, "command", NAME_COMMAND, what);
    st->command = command ? arena_strdup(ld->arena, command) : NULL;
    {
        /* a step may run against another sink than the flow's (e.g. the
         * shop's status webhook after the ERP steps); default: the flow's */
        const char *t = json_object_get(obj, "target") ? get_name(ld, obj, "target", NAME_CONNECTION, what)
                                                       : NULL;
        st->target = t ? arena_strdup(ld->arena, t) : NULL;
    }
    desc = get_text(ld, obj, "description", what);
    st->description = desc ? arena_strdup(ld->arena, desc) : NULL;

    if ((v = json_object_get(obj, "when"))) {
        const char *expr = leaf_text(ld, &sb, v, "when", key_line(ld, obj, "when"));
        if (expr) {
            const char *code = NULL;
            int malformed = check_expr(ld, &sb, "when", expr, key_line(ld, obj, "when"), &code);
            if (add_leaf(ld, &sb, expr, code, "when", key_line(ld, obj, "when"), malformed,
                         &leaf) == 0)
                st->has_when = 1;
        }
    }
    if ((v = json_object_get(obj, "reference"))) {
        const char *expr = leaf_text(ld, &sb, v, "reference", key_line(ld, obj, "reference"));
        if (expr) {
            const char *code = NULL;
            int malformed =
                check_expr(ld, &sb, "reference", expr, key_line(ld, obj, "reference"), &code);
            if (add_leaf(ld, &sb, expr, code, "reference", key_line(ld, obj, "reference"),
                         malformed, &leaf) == 0)
                st->reference_leaf = leaf;
        }
    }
    if ((v = json_object_get(obj, "document"))) {
        if (!json_is_object(v))
            bad(ld, key_line(ld, obj, "document"),
                "%s `document` must be a mapping of field: expression, not %s", what, type_name(v));
        else
            build_tnode(ld, &sb, v, "", key_line(ld, obj, "document"), &st->document);
    }

    if (sb.n) {
        struct pb__leaf *leaves = arena_alloc(ld->arena, sb.n * sizeof(*leaves));
        if (leaves) {
            memcpy(leaves, sb.leaves, sb.n * sizeof(*leaves));
            st->leaves = leaves;
            st->n_leaves = sb.n;
        } else {
            oom(ld);
        }
    }
    free(sb.leaves);
    if (sb.n_needs) {
        const char **needs = arena_alloc(ld->arena, sb.n_needs * sizeof(*needs));
        if (needs) {
            memcpy(needs, sb.needs, sb.n_needs * sizeof(*needs));
            st->needs = needs;
            st->n_needs = sb.n_needs;
        } else {
            oom(ld);
        }
    }
}

static void check_defs(struct loader *ld, const json_t *root)
{
    json_t *v = json_object_get(root, "defs");
    int line = key_line(ld, root, "defs");
    struct scan sc;
    const char *s;

    ld->flow->defs = ld->flow->defs_code = "";
    if (!v)
        return;
    if (!json_is_string(v)) {
        bad(ld, line, "`defs` must be text holding jq definitions (def name: body;), not %s",
            type_name(v));
        ld->defs_broken = 1;
        return;
    }
    s = json_string_value(v);
    ld->flow->defs_line = line;
    if (strlen(s) > PB_FLOW_EXPR_MAX) {
        bad(ld, line, "`defs` is longer than %d bytes", PB_FLOW_EXPR_MAX);
        ld->defs_broken = 1;
        return;
    }
    scan_expr(s, &sc);
    if (sc.problem[0]) {
        bad(ld, line, "defs: %s", sc.problem);
        ld->defs_broken = 1;
        return;
    }
    if (sc.uses_env)
        bad(ld, line,
            "defs: flow expressions cannot read the process environment ($ENV, env), "
            "which holds secrets; put the value under vars:");
    if (sc.uses_halt)
        bad(ld, line, "defs: halt and halt_error are not available in flows; use error(\"...\")");
    if (sc.fx_bound) {
        bad(ld, line, "defs: $fx is set by paybridge and cannot be bound or used as {$fx}");
        ld->defs_broken = 1;
    }
    if (sc.n_fx > SCAN_FX_MAX) {
        bad(ld, line, "defs: more than %d uses of $fx", SCAN_FX_MAX);
        ld->defs_broken = 1;
    }
    if (sc.uses_fx)
        ld->flow->uses_fx = 1;
    if (sc.uses_fx && !json_object_get(root, "fx"))
        bad(ld, line,
            "defs: uses $fx but the flow has no fx: block; add fx: {base_currency: "
            "GBP, rates: {...}}");
    if (sc.n_refs)
        bad(ld, line,
            "defs: $refs.%s: defs are shared by all steps, so they cannot use $refs; "
            "pass the id as an argument from the step instead",
            sc.refs[0]);
    ld->flow->defs = arena_strdup(ld->arena, s);
    ld->flow->defs_code =
        sc.uses_fx && !ld->defs_broken ? rewrite_fx(ld->arena, s, &sc) : ld->flow->defs;
    if (!ld->flow->defs || !ld->flow->defs_code)
        oom(ld);
}

static void parse_flow(struct loader *ld)
{
    json_t *root = pb_yamldoc_root(ld->doc), *steps;
    struct pb_flow *f = ld->flow;
    const char *s;

    if (!json_is_object(root)) {
        bad(ld, 1,
            "a flow file must be a mapping with flow:, source:, events:, target: and steps:, "
            "not %s",
            type_name(root));
        return;
    }
    check_keys(ld, root, flow_keys, "the flow");
    if ((s = get_name(ld, root, "flow", NAME_FLOW, "the flow"))) {
        const struct pb_flow *other = pb_flowset_find(ld->set, s);
        if (other)
            bad(ld, key_line(ld, root, "flow"),
                "flow name \"%s\" is already used by %s; flow names must be unique", s,
                other->file);
        f->name = arena_strdup(ld->arena, s);
    }
    if ((s = get_text(ld, root, "description", "the flow")))
        f->description = arena_strdup(ld->arena, s);
    if ((s = get_name(ld, root, "source", NAME_CONNECTION, "the flow")))
        f->source = arena_strdup(ld->arena, s);
    if ((s = get_name(ld, root, "target", NAME_CONNECTION, "the flow")))
        f->target = arena_strdup(ld->arena, s);
    check_events(ld, root);
    if ((ld->vars = json_object_get(root, "vars")))
        json_incref(ld->vars);
    check_fx(ld, root);
    check_defs(ld, root);

    steps = json_object_get(root, "steps");
    if (!steps)
        return;
    if (!json_is_array(steps) || json_array_size(steps) == 0) {
        bad(ld, key_line(ld, root, "steps"), "`steps` must be a non-empty list of steps, not %s",
            json_is_array(steps) ? "an empty list" : type_name(steps));
        return;
    }
    if (json_array_size(steps) > PB_FLOW_STEPS_MAX) {
        bad(ld, key_line(ld, root, "steps"), "a flow has at most %d steps; this one has %zu",
            PB_FLOW_STEPS_MAX, json_array_size(steps));
        return;
    }
    f->n_steps = json_array_size(steps);
    f->steps = arena_alloc(ld->arena, f->n_steps * sizeof(*f->steps));
    if (!f->steps) {
        f->n_steps = 0;
        oom(ld);
        return;
    }
    /* step_names[k]: for k < i the checked name of an earlier step (NULL when
     * it was bad); for k > i the raw name of a later step, so that a $refs to
     * a later step can be told apart from a typo. */
    for (size_t i = 0; i < f->n_steps; i++) {
        json_t *st = json_array_get(steps, i);
        for (size_t k = i; k < f->n_steps; k++) {
            json_t *n = json_object_get(json_array_get(steps, k), "name");
            ld->step_names[k] = json_is_string(n) && k > i ? json_string_value(n) : NULL;
        }
        parse_step(ld, st, i, node_line(ld, st, key_line(ld, root, "steps")));
    }
    for (size_t i = 0; i < f->n_steps; i++)
        if (!f->steps[i].target)
            ((struct pb_flow_step *)&f->steps[i])->target = f->target;
    for (size_t i = 0; i < f->n_steps; i++) {
        ((struct pb_flow_step *)&f->steps[i])->leaf_base = f->n_leaves;
        f->n_leaves += f->steps[i].n_leaves;
    }
    if (f->n_leaves > PB_FLOW_EXPRS_MAX)
        bad(ld, key_line(ld, root, "steps"),
            "the flow has %zu expressions, more than the limit of %d; split it into several "
            "flows",
            f->n_leaves, PB_FLOW_EXPRS_MAX);
}

static void flow_free(struct pb_flow *f)
{
    if (!f)
        return;
    json_decref((json_t *)f->vars);
    json_decref((json_t *)f->rates);
    arena_free(f->arena);
}

/* Parse and check one document into a new flow; NULL when it has problems. */
static struct pb_flow *load_flow(const struct pb_flowset *set, struct pb_yamldoc *doc,
                                 struct pb_diags *d, enum pb_rc *rc)
{
    struct loader ld;
    struct pb__arena *arena = calloc(1, sizeof(*arena));
    struct pb_flow *f;
    const char *text;
    size_t len;
    unsigned char digest[PB_SHA256_LEN];

    memset(&ld, 0, sizeof(ld));
    if (!arena || !(f = arena_alloc(arena, sizeof(*f)))) {
        free(arena);
        pb_diags_add(d, pb_yamldoc_file(doc), 0, "out of memory while loading the flow");
        *rc = PB_ERR_NOMEM;
        return NULL;
    }
    f->magic = PB_FLOW_MAGIC;
    f->arena = arena;
    f->set = set;
    ld.doc = doc;
    ld.file = pb_yamldoc_file(doc);
    ld.d = d;
    ld.set = set;
    ld.flow = f;
    ld.arena = arena;

    text = pb_yamldoc_text(doc, &len);
    f->file = arena_strdup(arena, ld.file);
    f->text = arena_strndup(arena, text, len);
    f->text_len = len;
    if (!f->file || !f->text)
        oom(&ld);
    else if (pb_sha256(text, len, digest) != PB_OK)
        bad(&ld, 0, "cannot compute the SHA-256 of the flow text");
    else {
        memcpy(f->version, "sha256:", 7);
        for (size_t i = 0; i < PB_SHA256_LEN; i++)
            snprintf(f->version + 7 + 2 * i, 3, "%02x", digest[i]);
    }

    parse_flow(&ld);
    f->vars = ld.vars ? ld.vars : json_null();
    f->rates = ld.rates;
    ld.vars = ld.rates = NULL;
    /* compile the expressions: the whole program when the flow is otherwise
     * clean, else one by one (its template may be incomplete); skipped when
     * defs are broken, since every expression would then fail */
    if (!ld.nomem && !ld.defs_broken)
        ld.problems += pb__mapping_check_flow(f, ld.problems != 0, d);
    if (ld.problems) {
        *rc = ld.nomem ? PB_ERR_NOMEM : PB_ERR_CONFIG;
        flow_free(f);
        return NULL;
    }
    *rc = PB_OK;
    return f;
}

struct pb_flowset *pb_flowset_new(void)
{
    struct pb_flowset *set = calloc(1, sizeof(*set));
    if (set) {
        set->magic = FLOWSET_MAGIC;
        atomic_init(&set->frozen, 0);
    }
    return set;
}

static enum pb_rc add_doc(struct pb_flowset *set, struct pb_yamldoc *doc, struct pb_diags *d)
{
    struct pb_flow *f;
    enum pb_rc rc;
    if (set->n == PB_FLOWSET_FLOWS_MAX) {
        pb_diags_add(d, pb_yamldoc_file(doc), 0, "more than %d flows are loaded",
                     PB_FLOWSET_FLOWS_MAX);
        return PB_ERR_TOOBIG;
    }
    if (!(f = load_flow(set, doc, d, &rc)))
        return rc;
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 8;
        struct pb_flow **nf = realloc(set->flows, cap * sizeof(*nf));
        if (!nf) {
            flow_free(f);
            pb_diags_add(d, pb_yamldoc_file(doc), 0, "out of memory while loading the flow");
            return PB_ERR_NOMEM;
        }
        set->flows = nf;
        set->cap = cap;
    }
    f->set_index = set->n;
    set->flows[set->n++] = f;
    return PB_OK;
}

static enum pb_rc frozen_error(struct pb_flowset *set, const char *name, struct pb_diags *d)
{
    if (!set || set->magic != FLOWSET_MAGIC) {
        pb_diags_add(d, name, 0, "internal error: not a flow set");
        return PB_ERR_INVALID;
    }
    if (atomic_load(&set->frozen)) {
        pb_diags_add(d, name, 0,
                     "internal error: the flow set is in use by mappers; build a new set to "
                     "reload flows");
        return PB_ERR_INVALID;
    }
    return PB_OK;
}

enum pb_rc pb_flowset_add_file(struct pb_flowset *set, const char *path, struct pb_diags *d)
{
    struct pb_yamldoc *doc;
    enum pb_rc rc = frozen_error(set, path, d);
    if (rc)
        return rc;
    if ((rc = pb_yamldoc_load_file(path, &doc, d)) != PB_OK)
        return rc;
    rc = add_doc(set, doc, d);
    pb_yamldoc_free(doc);
    return rc;
}

enum pb_rc pb_flowset_add_string(struct pb_flowset *set, const char *name, const char *text,
                                 struct pb_diags *d)
{
    struct pb_yamldoc *doc;
    enum pb_rc rc = frozen_error(set, name, d);
    if (rc)
        return rc;
    if ((rc = pb_yamldoc_load_string(name, text, &doc, d)) != PB_OK)
        return rc;
    rc = add_doc(set, doc, d);
    pb_yamldoc_free(doc);
    return rc;
}

size_t pb_flowset_count(const struct pb_flowset *set)
{
    return set && set->magic == FLOWSET_MAGIC ? set->n : 0;
}

const struct pb_flow *pb_flowset_flow(const struct pb_flowset *set, size_t i)
{
    return set && set->magic == FLOWSET_MAGIC && i < set->n ? set->flows[i] : NULL;
}

const struct pb_flow *pb_flowset_find(const struct pb_flowset *set, const char *name)
{
    if (!set || set->magic != FLOWSET_MAGIC || !name)
        return NULL;
    for (size_t i = 0; i < set->n; i++)
        if (set->flows[i]->name && strcmp(set->flows[i]->name, name) == 0)
            return set->flows[i];
    return NULL;
}

const struct pb_flow *pb_flowset_next_match(const struct pb_flowset *set,
                                            const struct pb_flow *prev, const char *source,
                                            const char *event_type)
{
    size_t i = 0;
    if (!set || set->magic != FLOWSET_MAGIC)
        return NULL;
    if (prev) {
        while (i < set->n && set->flows[i] != prev)
            i++;
        i++;
    }
    for (; i < set->n; i++) {
        const struct pb_flow *f = set->flows[i];
        if (source && strcmp(f->source, source) != 0)
            continue;
        if (event_type && !pb_flow_handles(f, event_type))
            continue;
        return f;
    }
    return NULL;
}

void pb_flowset_free(struct pb_flowset *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++)
        flow_free(set->flows[i]);
    free(set->flows);
    set->magic = 0;
    free(set);
}

void pb__flowset_freeze(const struct pb_flowset *set)
{
    atomic_store(&((struct pb_flowset *)set)->frozen, 1);
}

/* ---- flows ------------------------------------------------------------------------------- */

const struct pb_flow_step *pb_flow_step_find(const struct pb_flow *flow, const char *name)
{
    if (!flow || flow->magic != PB_FLOW_MAGIC || !name)
        return NULL;
    for (size_t i = 0; i < flow->n_steps; i++)
        if (strcmp(flow->steps[i].name, name) == 0)
            return &flow->steps[i];
    return NULL;
}

int pb_flow_handles(const struct pb_flow *flow, const char *event_type)
{
    if (!flow || flow->magic != PB_FLOW_MAGIC || !event_type)
        return 0;
    for (size_t i = 0; i < flow->n_events; i++)
        if (strcmp(flow->events[i], event_type) == 0)
            return 1;
    return 0;
}

static json_t *money_json(int64_t minor, const char *currency, const char *decimal)
{
    return json_pack("{s:I, s:s, s:s}", "minor", (json_int_t)minor, "currency", currency, "decimal",
                     decimal);
}

enum pb_rc pb_flow_fx(const struct pb_flow *flow, const json_t *event, json_t **out,
                      struct pb_err *err)
{
    const json_t *amount, *minor_j, *cur_j, *rate_j;
    const char *cur, *rate;
    char from_dec[PB_MONEY_DECIMAL_MAX], to_dec[PB_MONEY_DECIMAL_MAX];
    int64_t minor, converted;
    struct pb_err e = {0};
    json_t *fx;

    *out = NULL;
    if (!flow || flow->magic != PB_FLOW_MAGIC)
        return pb_err_set(err, PB_ERR_INVALID, "pb_flow_fx: not a flow");
    if (!flow->has_fx || !flow->base_currency) {
        *out = json_null();
        return PB_OK;
    }
    /* the money of the event itself: a refund's or a chargeback's event also
     * carries the payment it belongs to, whose amount is not the one to post */
    {
        const char *type = json_string_value(json_object_get(event, "type"));
        const char *entity = "payment";
        if (type && strncmp(type, "refund.", 7) == 0)
            entity = "refund";
        else if (type && strncmp(type, "chargeback.", 11) == 0)
            entity = "chargeback";
        amount = json_object_get(json_object_get(event, entity), "amount");
    }
    if (!amount || json_is_null(amount))
        amount = json_object_get(json_object_get(event, "payment"), "amount");
    if (!amount || json_is_null(amount))
        amount = json_object_get(json_object_get(event, "refund"), "amount");
    if (!amount || json_is_null(amount)) {
        *out = json_null();
        return PB_OK;
    }
    minor_j = json_object_get(amount, "minor");
    cur_j = json_object_get(amount, "currency");
    if (!json_is_integer(minor_j) || !json_is_string(cur_j))
        return pb_err_set(err, PB_ERR_MAPPING,
                          "flow %s: the event's amount is not a money object {minor, currency, "
                          "decimal}",
                          flow->name);
    minor = json_integer_value(minor_j);
    cur = json_string_value(cur_j);
    if (pb_money_format_decimal(minor, cur, from_dec, sizeof(from_dec), &e) != PB_OK)
        return pb_err_set(err, PB_ERR_MAPPING, "flow %s: the event's amount: %s", flow->name,
                          e.msg);
    if (strcmp(cur, flow->base_currency) == 0) {
        rate = "1";
        converted = minor;
        memcpy(to_dec, from_dec, sizeof(to_dec));
    } else {
        rate_j = json_object_get(flow->rates, cur);
        if (!json_is_string(rate_j))
            return pb_err_set(err, PB_ERR_MAPPING,
                              "flow %s: no FX rate for %s: add %s: \"<%s per 1 %s>\" under "
                              "fx.rates in %s",
                              flow->name, cur, cur, flow->base_currency, cur, flow->file);
        rate = json_string_value(rate_j);
        if (pb_money_convert(minor, cur, flow->base_currency, rate, &converted, &e) != PB_OK)
            return pb_err_set(err, PB_ERR_MAPPING, "flow %s: %s", flow->name, e.msg);
        if (pb_money_format_decimal(converted, flow->base_currency, to_dec, sizeof(to_dec), &e) !=
            PB_OK)
            return pb_err_set(err, PB_ERR_MAPPING, "flow %s: %s", flow->name, e.msg);
    }
    fx =
        json_pack("{s:s, s:s, s:s, s:b, s:o, s:o}", "base_currency", flow->base_currency,
                  "currency", cur, "rate", rate, "converted", strcmp(cur, flow->base_currency) != 0,
                  "amount", money_json(converted, flow->base_currency, to_dec), "original",
                  money_json(minor, cur, from_dec));
    if (!fx)
        return pb_err_set(err, PB_ERR_NOMEM, "flow %s: out of memory building $fx", flow->name);
    *out = fx;
    return PB_OK;
}
