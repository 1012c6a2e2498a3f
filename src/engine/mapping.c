/*
 * engine/mapping.c: evaluating flows with libjq (see mapping.h for the
 * semantics and the threading rule: one mapper per thread).
 *
 * The program. A mapper compiles ONE jq program for the whole flow set,
 * because each jq_compile() costs ~15 ms (libjq re-binds its builtins every
 * time) while the size of the program hardly matters. Its input is an
 * envelope array built in C for each evaluation:
 *
 *   [sel, mode, event, vars, refs, fx value, fx error, event_id, now]
 *
 * and it starts (the "prologue") by shadowing the environment and binding the
 * flow variables:
 *
 *   def env: error(...); {} as $ENV
 *   | . as [$__pb_sel, $__pb_mode, $__pb_event, $vars, $refs, $__pb_fxval,
 *           $__pb_fxerr, $event_id, $now]
 *   | def __pb_fx: if $__pb_fxerr != null then error($__pb_fxerr) else $__pb_fxval end;
 *     $__pb_event
 *   | if $__pb_mode == 2 then <leaf dispatch> else <step dispatch> end
 *
 * $fx is lazy: engine/flow.c rewrote every $fx token of the flow's code into
 * a call of __pb_fx, so when $fx cannot be computed (no rate for the
 * currency) the error is raised exactly where an expression uses it, and a
 * `when` that does not need it can still skip the step. A step that runs in a
 * flow that uses $fx anywhere fails with the FX error even if the step itself
 * does not use it, so that nothing is created in the ERP for an event whose
 * documents cannot all be built.
 *
 * A dispatch is a balanced tree of `if $__pb_sel < k then .. else .. end`
 * (depth log2 n) over the steps (mode 0) or over every single expression
 * (mode 2). A step item is
 *
 *   (DEFS
 *    (WHEN) as $__pb_run
 *    | if $__pb_run then [true, (REFERENCE), DOCUMENT] else [false] end)
 *
 * where DOCUMENT is one object construction mirroring the template:
 * {"Type": (e1), "Contact": {"ContactID": (e2)}, "LineItems": {"0": {...}}}.
 * Arrays of the template are built as objects keyed "0", "1", ... and turned
 * back into arrays in C: jq's [...] would silently swallow a leaf that yields
 * no value and flatten one that yields several, while an object construction
 * multiplies (or drops) the whole result, which the count checks below see.
 *
 * Every user expression is pasted inside "(\n" ... "\n)": the newline ends
 * any trailing # comment, and engine/flow.c has proven the brackets of each
 * expression balanced, so no expression can reach into its neighbour.
 * `import`/`include` are impossible inside parentheses, so no module is ever
 * loaded from disk.
 *
 * Evaluation (pb_mapper_step) runs mode 0 once and expects exactly one output:
 * [false] (skip) or [true, reference, document]. Anything else, or a jq error,
 * sends it to diagnose(), which re-runs the step's expressions one by one in
 * mode 2 to name the exact field that failed and why. The document is then
 * rebuilt as a jansson tree by walking the template: null leaves are dropped,
 * then objects and arrays of the template that ended up empty.
 *
 * Leaves of a step with the same text (Date and DueDate: `event_date`) are
 * evaluated once and bound to a variable; see "Common leaves" below.
 *
 * Mode 5 (pb_mapper_step_unless) is mode 0 without the document: [false] or
 * [true, reference], so that an xref hit costs no document.
 *
 * Mode 4 (pb_mapper_next) walks the steps from $__pb_sel on in one run
 * (__pb_n<k> -> __pb_s<k> in mode 4 = that step's when as a status: 0 skip,
 * 1 run, 2 no value / several / an error, inside `try`) and returns [k, status]
 * of the first step that is not skipped, or [n_steps, 0]: the engine's "which
 * step is next" costs one evaluation instead of one per step (the payment job
 * of opayo-xero checked four refund/chargeback whens one by one).
 *
 * jv and jansson. Events come in as jansson trees and are converted to jv for
 * every call (jv values are not thread-safe to share, so nothing jv-typed is
 * kept in the flow set; each mapper owns jv copies of the flows' vars),
 * except for events the caller keeps (pb_mapper_keep): their jv and $fx are
 * made once and reused until pb_mapper_unkeep_all().
 * Results are converted back; a non-integer number (a double) in a document
 * is an error, because it means money or a rate went through jq arithmetic.
 *
 * Rejected designs.
 *   - jq_compile_args() to bind $vars: it binds at compile time (so $refs and
 *     $fx, which vary per event, need the envelope anyway), and the libjq 1.6
 *     shipped by Debian double-frees when given an array of arguments.
 *   - One jq_state per leaf: hundreds of compiles per thread (seconds) and
 *     hundreds of states in memory for what one program does.
 *   - Dropping nulls with jq (del(..|nulls)): it would also reach into values
 *     that a leaf produced on purpose, and cannot tell template arrays apart.
 *   - Interrupting runaway expressions: libjq 1.6 has no hook for it. Flow
 *     files are trusted configuration; docs/flows.md warns about it.
 */
#include "engine/mapping.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jq.h>

#define MAPPER_MAGIC 0x4d415050u /* "MAPP" */
#define PROGRAM_MAX ((size_t)64 * 1024 * 1024)
#define JSON_DEPTH_MAX 128
#define MODE_STEP 0 /* evaluate a step: [false] or [true, reference, document] */
#define MODE_LEAF 2 /* evaluate one expression alone (diagnosis) */
#define MODE_NEXT 4 /* [k, r]: the first step k >= sel whose when holds (r 1) or fails (r 2) */
#define MODE_REF 5  /* a step without its document: [false] or [true, reference] */

/* ---- a bounded string builder ---------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
    int failed; /* out of memory or over PROGRAM_MAX */
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *np;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > PROGRAM_MAX || !(np = realloc(b->p, cap))) {
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

static void sb_puts(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        b->failed = 1;
    else
        sb_add(b, tmp, (size_t)n);
}

/* A jq string literal for `s` (JSON escaping; jq reads it the same way). */
static void sb_quote(struct sbuf *b, const char *s)
{
    sb_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_add(b, e, 2);
        } else if (c < 0x20) {
            sb_printf(b, "\\u%04x", c);
        } else {
            sb_add(b, (const char *)&c, 1);
        }
    }
    sb_puts(b, "\"");
}

/* ---- program generation ------------------------------------------------------------------ */

/* env: the environment holds secrets. halt, halt_error: libjq 1.6 corrupts a
 * jq_state that halted (jq_reset frees the exit code without clearing it, so
 * the next jq_start frees it again). stderr: keep the log clean. */
static const char prologue[] =
    "def env: error(\"env is not available in flow expressions\");\n"
    "def halt: error(\"halt is not available in flow expressions; use error(...)\");\n"
    "def halt_error: error(\"halt_error is not available in flow expressions; use error(...)\");\n"
    "def halt_error($code): halt_error;\n"
    "def stderr: .;\n"
    /* C builtins through debug and input (see "Native builtins"), then debug
     * shadowed for the flows' own code */
    "def __pb_native($f): [\"__pb_native\", $f, .] | debug | input;\n"
    "def ascii_downcase: __pb_native(\"ascii_downcase\");\n"
    "def ascii_upcase: __pb_native(\"ascii_upcase\");\n"
    "def trim: __pb_native(\"trim\");\n"
    "def ltrim: __pb_native(\"ltrim\");\n"
    "def rtrim: __pb_native(\"rtrim\");\n"
    "def utc_date: __pb_native(\"utc_date\");\n"
    "def debug: .;\n"
    "{} as $ENV\n"
    "| . as [$__pb_step, $__pb_sel, $__pb_mode, $__pb_event, $vars, $refs, $__pb_fxval,\n"
    "        $__pb_fxerr, $event_id, $now]\n"
    "| def __pb_fx: if $__pb_fxerr != null then error($__pb_fxerr) else $__pb_fxval end;\n"
    "  $__pb_event\n"
    "| ";

static void emit_expr(struct sbuf *b, const char *code)
{
    sb_puts(b, "(\n");
    sb_puts(b, code);
    sb_puts(b, "\n)");
}

static void emit_defs(struct sbuf *b, const struct pb_flow *f)
{
    if (f->defs_code && f->defs_code[0]) {
        sb_puts(b, f->defs_code);
        sb_puts(b, "\n");
    }
}

/* Common leaves. A step's reference and document leaves with the same text
 * (Date and DueDate both `event_date`, the reference and Reference both
 * `.payment.reference`) are evaluated once per evaluation and bound to
 * $__pb_c<first leaf>: `(__pb_l<first>) as $__pb_c<first> | ...`. That is
 * the same result: within one evaluation the input, $refs, $now and the vars
 * are fixed, and a leaf that yields no value or several still multiplies the
 * whole result, which the count checks see. Left out are leaves that read the
 * clock (now), more input or their own position ($__loc__), or that print
 * (debug, stderr), directly or through the defs they call (cse_safe()). The
 * when (leaf 0) is evaluated alone, before anything else. */
#define CSE_NONE SIZE_MAX

static int cse_safe(const char *text, const char *defs);

/* The first leaf of the step with the same text as leaf i, when there is
 * one that is not i itself and it is safe to share; else CSE_NONE. */
static size_t cse_leader(const struct pb_flow_step *st, size_t i)
{
    size_t first = st->has_when ? 1 : 0, count = 0, leader = CSE_NONE;
    if (i < first || !st->leaves[i].code)
        return CSE_NONE;
    for (size_t j = first; j < st->n_leaves; j++)
        if (st->leaves[j].code && strcmp(st->leaves[j].code, st->leaves[i].code) == 0) {
            if (leader == CSE_NONE)
                leader = j;
            count++;
        }
    if (count < 2 || !cse_safe(st->leaves[i].code, st->flow->defs_code))
        return CSE_NONE;
    return leader;
}

/* Leaf i of the flow is the function __pb_l<i>. `shared` (in a step's
 * document and reference) uses the common value instead, when it has one. */
static void emit_leaf(struct sbuf *b, const struct pb_flow_step *st, size_t leaf, int shared)
{
    size_t leader = shared ? cse_leader(st, leaf) : CSE_NONE;
    if (leader != CSE_NONE)
        sb_printf(b, "$__pb_c%zu", st->leaf_base + leader);
    else
        sb_printf(b, "(__pb_l%zu)", st->leaf_base + leaf);
}

static void emit_call(struct sbuf *b, const struct pb_flow_step *st, size_t leaf)
{
    emit_leaf(b, st, leaf, 0);
}

/* `(__pb_l<k>) as $__pb_c<k> | ` for each group of common leaves: with
 * `with_ref`, only the reference's group; else every group but that one. */
static void emit_cse_bindings(struct sbuf *b, const struct pb_flow_step *st, int with_ref)
{
    size_t ref_leader = cse_leader(st, st->reference_leaf);
    for (size_t i = 0; i < st->n_leaves; i++) {
        if (cse_leader(st, i) != i || (i == ref_leader) != (with_ref != 0))
            continue;
        sb_printf(b, "(__pb_l%zu) as $__pb_c%zu | ", st->leaf_base + i, st->leaf_base + i);
    }
}

static void emit_tnode(struct sbuf *b, const struct pb_flow_step *st, const struct pb__tnode *t)
{
    if (t->kind == PB__TNODE_LEAF) {
        emit_leaf(b, st, t->leaf, 1);
        return;
    }
    sb_puts(b, "{");
    for (size_t i = 0; i < t->n_kids; i++) {
        if (i)
            sb_puts(b, ", ");
        if (t->kind == PB__TNODE_OBJECT)
            sb_quote(b, t->kids[i].key);
        else
            sb_printf(b, "\"%zu\"", i);
        sb_puts(b, ": ");
        emit_tnode(b, st, &t->kids[i]);
    }
    sb_puts(b, "}");
}

/* Balanced `if $<var> < k` tree over lo..hi-1 calling <prefix><base + i>. */
static void emit_dispatch(struct sbuf *b, const char *var, const char *prefix, size_t base,
                          size_t lo, size_t hi)
{
    size_t mid;
    if (hi - lo == 1) {
        sb_printf(b, "%s%zu", prefix, base + lo);
        return;
    }
    mid = lo + (hi - lo) / 2;
    sb_printf(b, "(if $%s < %zu then ", var, mid);
    emit_dispatch(b, var, prefix, base, lo, mid);
    sb_puts(b, " else ");
    emit_dispatch(b, var, prefix, base, mid, hi);
    sb_puts(b, " end)");
}

static void emit_leaf_def(struct sbuf *b, const struct pb_flow_step *st, size_t i)
{
    sb_printf(b, "def __pb_l%zu: ", st->leaf_base + i);
    emit_expr(b, st->leaves[i].code);
    sb_puts(b, ";\n");
}

/* Step k of the flow is the function __pb_s<k>, holding one function per
 * expression of the step: in mode 2 it evaluates expression $__pb_sel alone,
 * else the whole step. */
static void emit_step_def(struct sbuf *b, const struct pb_flow_step *st)
{
    sb_printf(b, "def __pb_s%zu:\n", st->index);
    for (size_t i = 0; i < st->n_leaves; i++)
        emit_leaf_def(b, st, i);
    sb_puts(b, "if $__pb_mode == 2 then ");
    if (st->n_leaves)
        emit_dispatch(b, "__pb_sel", "__pb_l", st->leaf_base, 0, st->n_leaves);
    else
        sb_puts(b, "error(\"no expressions\")");
    sb_puts(b, "\n  elif $__pb_mode == 4 then ");
    /* the step's when as a status: 0 skip, 1 run, 2 no value / several / an
     * error (its own job reports it); skipped when a $refs.NAME it reads is
     * missing, as pb_mapper_when() does in C */
    if (st->n_needs) {
        sb_puts(b, "if ");
        for (size_t i = 0; i < st->n_needs; i++) {
            sb_puts(b, i ? " and $refs[" : "$refs[");
            sb_quote(b, st->needs[i]);
            sb_puts(b, "] != null");
        }
        sb_puts(b, " then ");
    }
    if (st->has_when) {
        sb_puts(b, "(try ([");
        emit_call(b, st, 0);
        sb_puts(b, "] | if length == 1 then (if .[0] then 1 else 0 end) else 2 end) catch 2)");
    } else {
        sb_puts(b, "1");
    }
    if (st->n_needs)
        sb_puts(b, " else 0 end");
    sb_puts(b, "\n  else ");
    if (st->has_when)
        emit_call(b, st, 0);
    else
        sb_puts(b, "true");
    sb_puts(b, " as $__pb_run | if $__pb_run then ");
    emit_cse_bindings(b, st, 1);
    sb_puts(b, "[true, ");
    emit_leaf(b, st, st->reference_leaf, 1);
    /* mode 5: the reference alone (pb_mapper_step_unless) */
    sb_puts(b, "] + (if $__pb_mode == 5 then [] else [");
    emit_cse_bindings(b, st, 0);
    emit_tnode(b, st, &st->document);
    sb_puts(b, "] end) else [false] end end;\n");
}

/* The program of one flow (malloc'ed), or NULL when out of memory:
 *
 *   PROLOGUE (DEFS
 *     def __pb_s0: def __pb_l0: (expression 0); ...  <step 0>;
 *     def __pb_s1: ...;                  one function per step, holding
 *                                        one function per expression
 *     if $__pb_mode == 3 then .          the defs probe (loading only)
 *     else <dispatch on $__pb_step to __pb_s<k>> end)
 *
 * The nesting matters twice: libjq refuses any bytecode function above
 * 64 KiB, and binding n definitions in one scope costs O(n^2) at compile
 * time; here the biggest function and scope is one step (at most
 * PB_FLOW_LEAVES_MAX expressions). */
static char *program_build(const struct pb_flow *f)
{
    struct sbuf b = {0};
    sb_puts(&b, prologue);
    sb_puts(&b, "(");
    emit_defs(&b, f);
    for (size_t k = 0; k < f->n_steps; k++)
        emit_step_def(&b, &f->steps[k]);
    /* mode 4: __pb_n<k> walks the steps from k on (defined last to first:
     * jq sees only earlier definitions) */
    sb_printf(&b, "def __pb_n%zu: [%zu, 0];\n", f->n_steps, f->n_steps);
    for (size_t k = f->n_steps; k-- > 0;)
        sb_printf(&b,
                  "def __pb_n%zu: if $__pb_sel > %zu then __pb_n%zu else (__pb_s%zu as $__pb_r "
                  "| if $__pb_r == 0 then __pb_n%zu else [%zu, $__pb_r] end) end;\n",
                  k, k, k + 1, k, k + 1, k);
    sb_puts(&b, "if $__pb_mode == 3 then . elif $__pb_mode == 4 then __pb_n0 else ");
    if (f->n_steps)
        emit_dispatch(&b, "__pb_step", "__pb_s", 0, 0, f->n_steps);
    else
        sb_puts(&b, "error(\"no steps\")");
    sb_puts(&b, " end)\n");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- running jq ---------------------------------------------------------------------------- */

struct jqmsg {
    char text[1024]; /* messages of the last compile, "; "-separated */
};

/* Replace the first `from` in buf (NUL-terminated, size len) by `to`. */
static void replace_once(char *buf, size_t len, const char *from, const char *to)
{
    char tmp[512];
    char *p = strstr(buf, from);
    if (!p)
        return;
    snprintf(tmp, sizeof(tmp), "%.*s%s%s", (int)(p - buf), buf, to, p + strlen(from));
    snprintf(buf, len, "%s", tmp);
}

/* "jq: error: syntax error, unexpected $end (Unix shell quoting issues?) at
 * <top-level>, line 3:\n..." -> "syntax error, unexpected end of the expression". */
static void clean_jq_message(const char *in, char *out, size_t len)
{
    const char *s = in, *end, *at;
    if (strncmp(s, "jq: error: ", 11) == 0)
        s += 11;
    else if (strncmp(s, "jq: error", 9) == 0)
        s += 9;
    end = strchr(s, '\n');
    if (!end)
        end = s + strlen(s);
    at = strstr(s, " at <top-level>");
    if (at && at < end)
        end = at;
    snprintf(out, len, "%.*s", (int)(end - s), s);
    replace_once(out, len, " (Unix shell quoting issues?)", "");
    replace_once(out, len, "unexpected $end", "unexpected end of the expression");
}

static void on_jq_error(void *data, jv msg)
{
    struct jqmsg *m = data;
    char clean[512];
    size_t used;
    if (jv_get_kind(msg) != JV_KIND_STRING)
        msg = jq_format_error(msg);
    if (jv_get_kind(msg) == JV_KIND_STRING) {
        const char *s = jv_string_value(msg);
        /* the trailing "jq: 1 compile error" adds nothing */
        if (!(strncmp(s, "jq: ", 4) == 0 && strstr(s, "compile error") && !strstr(s, "error:"))) {
            clean_jq_message(s, clean, sizeof(clean));
            used = strlen(m->text);
            if (used + 3 < sizeof(m->text))
                snprintf(m->text + used, sizeof(m->text) - used, "%s%s", used ? "; " : "", clean);
        }
    }
    jv_free(msg);
}

/* ---- native builtins ----------------------------------------------------------------
 *
 * libjq 1.6 defines ascii_downcase and ascii_upcase in jq, one character at a
 * time: ~100,000 instructions for an e-mail address, more than everything
 * else in a contact's reference. It has no trim (jq 1.7.1 has). libjq has no
 * API to add a C function, but a program reaches two callbacks: `debug`
 * hands its input to the debug callback and `input` returns what the input
 * callback returns. So the prologue defines
 *
 *   def __pb_native($f): ["__pb_native", $f, .] | debug | input;
 *   def ascii_downcase: __pb_native("ascii_downcase");   (and the others)
 *
 * and then shadows debug (a no-op, as it was) for the flows' own code, so
 * that only __pb_native fills the slot of the thread that on_jq_debug
 * computes the result into; on_jq_input hands it back (between the two calls
 * nothing else runs on the thread). An `input` of a flow finds the slot empty
 * and gets what it got before there was an input callback: the error
 * "break", which `inputs` turns into no values. Results and errors are jq 1.6's own
 * (ascii_*: "explode input must be a string") and jq 1.7.1's (trim, ltrim,
 * rtrim: Unicode White_Space at either end). utc_date is paybridge's own: a
 * jq definition of even the date part of a timestamp (slices and explode)
 * cost ~97,000 instructions per call, 17% of mapping an Opayo payment into
 * Xero. */

static _Thread_local struct {
    int armed;
    jv result; /* owned while armed */
} native_slot;

static int white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* The code point starting at s[i] (jq strings are valid UTF-8) and its length. */
static uint32_t utf8_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    unsigned char c = s[i];
    size_t k = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    uint32_t cp = k == 1 ? c : k == 2 ? (c & 0x1fu) : k == 3 ? (c & 0x0fu) : (c & 0x07u);
    if (i + k > n)
        k = 1;
    for (size_t j = 1; j < k; j++)
        cp = (cp << 6) | (s[i + j] & 0x3fu);
    *len = k;
    return cp;
}

static jv native_trim(jv in, int left, int right)
{
    const unsigned char *s = (const unsigned char *)jv_string_value(in);
    size_t n = (size_t)jv_string_length_bytes(jv_copy(in)), a = 0, b = n, len;
    while (left && a < b && white_space(utf8_at(s, n, a, &len)))
        a += len;
    while (right && b > a) {
        size_t p = b - 1;
        while (p > a && (s[p] & 0xc0) == 0x80)
            p--;
        if (!white_space(utf8_at(s, n, p, &len)))
            break;
        b = p;
    }
    if (a == 0 && b == n)
        return in;
    jv out = jv_string_sized((const char *)s + a, (int)(b - a));
    jv_free(in);
    return out;
}

static jv native_case(jv in, int upper)
{
    int n = jv_string_length_bytes(jv_copy(in));
    const char *s = jv_string_value(in);
    char *buf = malloc((size_t)n + 1);
    jv out;
    if (!buf) {
        jv_free(in);
        return jv_invalid_with_msg(jv_string("out of memory"));
    }
    for (int i = 0; i < n; i++) {
        char c = s[i];
        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 32);
        else if (!upper && c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        buf[i] = c;
    }
    out = jv_string_sized(buf, n);
    free(buf);
    jv_free(in);
    return out;
}

/* utc_date: the UTC calendar date of an RFC 3339 / ISO 8601 timestamp.
 * Accepted: "YYYY-MM-DD", or that followed by T (t or a space), HH:MM,
 * optionally :SS and a fraction, and a zone: Z (z), +HH:MM, +HHMM or +HH (or
 * -). No zone means UTC (the canonical model's times are UTC). Every field is
 * checked (months, days of the month with leap years, 00-23 hours, 00-59
 * minutes, seconds up to 60 for a leap second); anything else, or a date
 * that falls outside the years 0000-9999 once in UTC, gives null, so that
 * `utc_date // $now` falls back. */
static int fixed_digits(const char *s, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

static int month_days(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/* days since 1970-01-01 of a proleptic Gregorian date, and back (the
 * era-based algorithms of H. Hinnant's "chrono-Compatible Low-Level Date
 * Algorithms") */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static jv native_utc_date(jv in)
{
    const char *s;
    size_t n, i;
    int y, mo, d, hh = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
    char out[11];
    if (jv_get_kind(in) != JV_KIND_STRING) {
        jv_free(in);
        return jv_null();
    }
    s = jv_string_value(in);
    n = (size_t)jv_string_length_bytes(jv_copy(in));
    if (n < 10 || !fixed_digits(s, 4, &y) || s[4] != '-' || !fixed_digits(s + 5, 2, &mo) ||
        s[7] != '-' || !fixed_digits(s + 8, 2, &d) || mo < 1 || mo > 12 || d < 1 ||
        d > month_days(y, mo))
        goto bad;
    i = 10;
    if (n > 10) {
        if ((s[10] != 'T' && s[10] != 't' && s[10] != ' ') || n < 16 ||
            !fixed_digits(s + 11, 2, &hh) || s[13] != ':' || !fixed_digits(s + 14, 2, &mi) ||
            hh > 23 || mi > 59)
            goto bad;
        i = 16;
        if (i < n && s[i] == ':') {
            if (i + 3 > n || !fixed_digits(s + i + 1, 2, &sec) || sec > 60)
                goto bad;
            i += 3;
            if (i < n && s[i] == '.') {
                size_t j = ++i;
                while (i < n && s[i] >= '0' && s[i] <= '9')
                    i++;
                if (i == j)
                    goto bad;
            }
        }
        if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
            i++;
        } else if (i < n && (s[i] == '+' || s[i] == '-')) {
            sign = s[i] == '+' ? 1 : -1;
            if (i + 3 > n || !fixed_digits(s + i + 1, 2, &oh) || oh > 23)
                goto bad;
            i += 3;
            if (i < n && s[i] == ':')
                i++;
            if (i < n) {
                if (i + 2 > n || !fixed_digits(s + i, 2, &om) || om > 59)
                    goto bad;
                i += 2;
            }
        }
        if (i != n)
            goto bad;
    }
    {
        int64_t minutes = (int64_t)hh * 60 + mi - (int64_t)sign * (oh * 60 + om);
        int64_t days = days_from_civil(y, mo, d) + (minutes < 0 ? -1 : minutes >= 1440 ? 1 : 0);
        int64_t yy;
        int mm, dd;
        civil_from_days(days, &yy, &mm, &dd);
        if (yy < 0 || yy > 9999)
            goto bad;
        snprintf(out, sizeof out, "%04d-%02d-%02d", (int)yy, mm, dd);
    }
    jv_free(in);
    return jv_string_sized(out, 10);
bad:
    jv_free(in);
    return jv_null();
}

static jv native_call(const char *f, jv in)
{
    if (strcmp(f, "utc_date") == 0)
        return native_utc_date(in);
    int is_string = jv_get_kind(in) == JV_KIND_STRING;
    if (strcmp(f, "ascii_downcase") == 0 || strcmp(f, "ascii_upcase") == 0) {
        if (!is_string) {
            jv_free(in);
            return jv_invalid_with_msg(jv_string("explode input must be a string"));
        }
        return native_case(in, f[6] == 'u');
    }
    if (strcmp(f, "trim") == 0 || strcmp(f, "ltrim") == 0 || strcmp(f, "rtrim") == 0) {
        if (!is_string) {
            jv msg = jv_string_fmt("%s input must be a string", f);
            jv_free(in);
            return jv_invalid_with_msg(msg);
        }
        return native_trim(in, f[0] != 'r', f[0] != 'l');
    }
    jv_free(in);
    return jv_invalid_with_msg(jv_string_fmt("no native builtin %s", f));
}

static void on_jq_debug(void *data, jv msg)
{
    jv tag, name;
    (void)data;
    if (jv_get_kind(msg) != JV_KIND_ARRAY || jv_array_length(jv_copy(msg)) != 3) {
        jv_free(msg);
        return;
    }
    tag = jv_array_get(jv_copy(msg), 0);
    name = jv_array_get(jv_copy(msg), 1);
    if (jv_get_kind(tag) == JV_KIND_STRING && strcmp(jv_string_value(tag), "__pb_native") == 0 &&
        jv_get_kind(name) == JV_KIND_STRING) {
        if (native_slot.armed)
            jv_free(native_slot.result);
        native_slot.result = native_call(jv_string_value(name), jv_array_get(jv_copy(msg), 2));
        native_slot.armed = 1;
    }
    jv_free(tag);
    jv_free(name);
    jv_free(msg);
}

static jv on_jq_input(jq_state *jq, void *data)
{
    (void)jq;
    (void)data;
    if (!native_slot.armed)
        return jv_invalid(); /* libjq: the error "break" */
    native_slot.armed = 0;
    return native_slot.result;
}

/* Compile `program` into a new jq_state; NULL with m->text set on failure. */
static jq_state *compile(const char *program, struct jqmsg *m)
{
    jq_state *jq = jq_init();
    m->text[0] = '\0';
    if (!jq) {
        snprintf(m->text, sizeof(m->text), "out of memory");
        return NULL;
    }
    jq_set_error_cb(jq, on_jq_error, m);
    jq_set_debug_cb(jq, on_jq_debug, NULL);
    jq_set_input_cb(jq, on_jq_input, NULL);
    if (!jq_compile(jq, program)) {
        if (!m->text[0])
            snprintf(m->text, sizeof(m->text), "the expression does not compile");
        jq_teardown(&jq);
        return NULL;
    }
    return jq;
}

static void error_text(jv invalid, char *buf, size_t len)
{
    jv m = jv_invalid_get_msg(invalid);
    if (jv_get_kind(m) == JV_KIND_STRING) {
        snprintf(buf, len, "%s", jv_string_value(m));
    } else {
        jv s = jv_dump_string(jv_copy(m), 0);
        snprintf(buf, len, "error(%s)", jv_string_value(s));
        jv_free(s);
    }
    jv_free(m);
}

enum run_result { RUN_ONE = 0, RUN_NONE = 1, RUN_MANY = 2, RUN_ERROR = -1, RUN_HALTED = -2 };

/* Run `jq` on `input` (consumed). RUN_ONE: *out holds the only output. */
static enum run_result run_jq(jq_state *jq, jv input, jv *out, char *msg, size_t msglen)
{
    jv r, r2;
    jq_start(jq, input, 0);
    r = jq_next(jq);
    if (!jv_is_valid(r)) {
        if (jv_invalid_has_msg(jv_copy(r))) {
            error_text(r, msg, msglen);
            return RUN_ERROR;
        }
        jv_free(r);
        if (jq_halted(jq)) {
            /* cannot happen (the prologue shadows halt); if it does, the caller
             * must tear the state down before any other jq_start() */
            snprintf(msg, msglen,
                     "the expression halted jq, which flows may not do; use "
                     "error(\"...\") instead");
            return RUN_HALTED;
        }
        return RUN_NONE;
    }
    r2 = jq_next(jq);
    if (jv_is_valid(r2)) {
        jv_free(r2);
        jv_free(r);
        return RUN_MANY;
    }
    if (jv_invalid_has_msg(jv_copy(r2))) {
        error_text(r2, msg, msglen);
        jv_free(r);
        return RUN_ERROR;
    }
    jv_free(r2);
    *out = r;
    return RUN_ONE;
}

static int truthy(jv v /* borrowed */)
{
    jv_kind k = jv_get_kind(v);
    return k != JV_KIND_NULL && k != JV_KIND_FALSE && k != JV_KIND_INVALID;
}

/* ---- jansson <-> jv ----------------------------------------------------------------------- */

static jv to_jv(const json_t *j, int depth)
{
    if (!j)
        return jv_null();
    if (depth > JSON_DEPTH_MAX)
        return jv_invalid_with_msg(jv_string("the event is nested too deeply"));
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jv o = jv_object();
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)j, key, v)
        {
            jv c = to_jv(v, depth + 1);
            if (!jv_is_valid(c)) {
                jv_free(o);
                return c;
            }
            o = jv_object_set(o, jv_string(key), c);
        }
        return o;
    }
    case JSON_ARRAY: {
        jv a = jv_array();
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v)
        {
            jv c = to_jv(v, depth + 1);
            if (!jv_is_valid(c)) {
                jv_free(a);
                return c;
            }
            a = jv_array_append(a, c);
        }
        return a;
    }
    case JSON_STRING:
        if (json_string_length(j) > INT32_MAX)
            return jv_invalid_with_msg(jv_string("a string in the event is too long"));
        return jv_string_sized(json_string_value(j), (int)json_string_length(j));
    case JSON_INTEGER: return jv_number((double)json_integer_value(j));
    case JSON_REAL: return jv_number(json_real_value(j));
    case JSON_TRUE: return jv_true();
    case JSON_FALSE: return jv_false();
    case JSON_NULL: return jv_null();
    }
    return jv_null();
}

struct eval {
    struct pb_mapper *m;
    const struct pb_flow_step *step;
    struct pb_err *err;
};

/* "when", "reference" or "field X" for leaf i of a step. */
static void leaf_label(const struct pb_flow_step *st, size_t i, char *buf, size_t len)
{
    if (st->has_when && i == 0)
        snprintf(buf, len, "when");
    else if (i == st->reference_leaf)
        snprintf(buf, len, "reference");
    else
        snprintf(buf, len, "field %s", st->leaves[i].field);
}

__attribute__((format(printf, 4, 5))) static enum pb_rc
map_error(const struct pb_flow_step *st, size_t leaf, struct pb_err *err, const char *fmt, ...)
{
    char what[320], msg[PB_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (leaf == SIZE_MAX)
        return pb_err_set(err, PB_ERR_MAPPING, "flow %s step %s: %s", st->flow->name, st->name,
                          msg);
    leaf_label(st, leaf, what, sizeof(what));
    return pb_err_set(err, PB_ERR_MAPPING, "flow %s step %s %s: %s", st->flow->name, st->name, what,
                      msg);
}

/* Convert a jq value produced by leaf `leaf` into jansson (*out new reference). */
static enum pb_rc to_json(struct eval *ev, size_t leaf, jv v, int depth, json_t **out)
{
    *out = NULL;
    if (depth > JSON_DEPTH_MAX)
        return map_error(ev->step, leaf, ev->err, "the value is nested more than %d levels deep",
                         JSON_DEPTH_MAX);
    switch (jv_get_kind(v)) {
    case JV_KIND_NULL: *out = json_null(); return PB_OK;
    case JV_KIND_TRUE: *out = json_true(); return PB_OK;
    case JV_KIND_FALSE: *out = json_false(); return PB_OK;
    case JV_KIND_NUMBER: {
        double d = jv_number_value(v);
        if (d != d || d > 9007199254740992.0 || d < -9007199254740992.0 ||
            d != (double)(int64_t)d) {
            char txt[64];
            jv s = jv_dump_string(jv_copy(v), 0);
            snprintf(txt, sizeof(txt), "%s", jv_string_value(s));
            jv_free(s);
            return map_error(ev->step, leaf, ev->err,
                             "evaluated to the number %s, which is not an exact integer; jq "
                             "numbers are doubles, so amounts and rates must be decimal strings "
                             "(e.g. $fx.amount.decimal or .payment.amount.decimal)",
                             txt);
        }
        *out = json_integer((json_int_t)d);
        break;
    }
    case JV_KIND_STRING:
        *out = json_stringn(jv_string_value(v), (size_t)jv_string_length_bytes(jv_copy(v)));
        break;
    case JV_KIND_ARRAY: {
        int n = jv_array_length(jv_copy(v));
        *out = json_array();
        for (int i = 0; *out && i < n; i++) {
            json_t *c;
            jv e = jv_array_get(jv_copy(v), i);
            enum pb_rc rc = to_json(ev, leaf, e, depth + 1, &c);
            jv_free(e);
            if (rc) {
                json_decref(*out);
                *out = NULL;
                return rc;
            }
            if (json_array_append_new(*out, c) != 0) {
                json_decref(*out);
                *out = NULL;
            }
        }
        break;
    }
    case JV_KIND_OBJECT: {
        int it;
        *out = json_object();
        for (it = jv_object_iter(v); *out && jv_object_iter_valid(v, it);
             it = jv_object_iter_next(v, it)) {
            jv k = jv_object_iter_key(v, it), e = jv_object_iter_value(v, it);
            json_t *c;
            enum pb_rc rc = to_json(ev, leaf, e, depth + 1, &c);
            jv_free(e);
            if (rc) {
                jv_free(k);
                json_decref(*out);
                *out = NULL;
                return rc;
            }
            if (json_object_set_new(*out, jv_string_value(k), c) != 0) {
                json_decref(*out);
                *out = NULL;
            }
            jv_free(k);
        }
        break;
    }
    default: return map_error(ev->step, leaf, ev->err, "evaluated to an invalid value");
    }
    if (!*out)
        return pb_err_set(ev->err, PB_ERR_NOMEM, "out of memory building a document");
    return PB_OK;
}

/* Rebuild the document from jq's object `v` (borrowed) along template `t`.
 * *out = NULL means "leave it out" (a null leaf, an empty object or array). */
static enum pb_rc build_doc(struct eval *ev, const struct pb__tnode *t, jv v, int top, json_t **out)
{
    json_t *res;
    *out = NULL;
    if (t->kind == PB__TNODE_LEAF) {
        if (jv_get_kind(v) == JV_KIND_NULL)
            return PB_OK;
        return to_json(ev, t->leaf, v, 0, out);
    }
    if (jv_get_kind(v) != JV_KIND_OBJECT)
        return pb_err_set(ev->err, PB_ERR_INTERNAL,
                          "flow %s step %s: the document program "
                          "returned a %s",
                          ev->step->flow->name, ev->step->name, jv_kind_name(jv_get_kind(v)));
    res = t->kind == PB__TNODE_OBJECT ? json_object() : json_array();
    if (!res)
        return pb_err_set(ev->err, PB_ERR_NOMEM, "out of memory building a document");
    for (size_t i = 0; i < t->n_kids; i++) {
        char idx[24];
        const char *key = t->kids[i].key;
        json_t *c;
        enum pb_rc rc;
        jv child;
        if (t->kind == PB__TNODE_ARRAY) {
            snprintf(idx, sizeof(idx), "%zu", i);
            key = idx;
        }
        child = jv_object_get(jv_copy(v), jv_string(key));
        if (!jv_is_valid(child)) {
            jv_free(child);
            json_decref(res);
            return pb_err_set(ev->err, PB_ERR_INTERNAL,
                              "flow %s step %s: member %s missing from the document program's "
                              "result",
                              ev->step->flow->name, ev->step->name, key);
        }
        rc = build_doc(ev, &t->kids[i], child, 0, &c);
        jv_free(child);
        if (rc) {
            json_decref(res);
            return rc;
        }
        if (!c)
            continue;
        if ((t->kind == PB__TNODE_OBJECT ? json_object_set_new(res, t->kids[i].key, c)
                                         : json_array_append_new(res, c)) != 0) {
            json_decref(res);
            return pb_err_set(ev->err, PB_ERR_NOMEM, "out of memory building a document");
        }
    }
    if (!top && (json_is_object(res) ? json_object_size(res) : json_array_size(res)) == 0) {
        json_decref(res);
        return PB_OK;
    }
    *out = res;
    return PB_OK;
}

/* ---- the mapper ---------------------------------------------------------------------------- */

/* What a mapper keeps per flow; filled on the flow's first evaluation. */
/* How often pb_mapper_step_unless's `known` said yes for one step. */
struct probe_stat {
    uint32_t asked, hits, passed;
};

struct mapper_flow {
    jq_state *jq; /* owned: the flow's program; NULL until first use */
    jv vars;      /* owned: the flow's vars as jv (this thread's copy) */
    int ready;    /* jq and vars are set */
    struct probe_stat *probe; /* owned: [n_steps], NULL until first asked; kept over discards */
    unsigned char *same_when; /* owned: [n_steps], step k vs k-1: 0 unknown, 1 same, 2 not */
    struct type_guard *guards; /* owned: [n_steps], NULL until first asked */
};

/* What a step's when says about the event's type (type_guard()): analysed
 * once; `types` lists the only types for which the when can be true. */
#define GUARD_TYPES_MAX 16
struct type_guard {
    unsigned char state; /* 0 not analysed, 1 a guard, 2 anything else */
    size_t n;
    char *types[GUARD_TYPES_MAX]; /* owned */
};
static int guard_excludes(struct pb_mapper *m, const struct pb_flow *flow, size_t k,
                          const char *type);
static void guards_free(struct type_guard *g, size_t n);

struct pb_mapper {
    unsigned magic;               /* MAPPER_MAGIC */
    const struct pb_flowset *set; /* borrowed; frozen */
    struct mapper_flow *flows;    /* owned: one per flow of the set, by set_index */
    size_t n_flows;
    struct jqmsg msg; /* compile messages */
    /* events the caller keeps unchanged (pb_mapper_keep): their jv conversion
     * and $fx (for `fx_flow`) are made on first use and reused */
    struct kept {
        const json_t *event;
        int converted;
        jv event_jv;
        const struct pb_flow *fx_flow; /* NULL: $fx not computed yet */
        enum pb_rc fxrc;
        jv fxval, fxerr;
    } *kept;
    size_t n_kept, cap_kept;
};

struct pb_mapper *pb_mapper_new(const struct pb_flowset *set, struct pb_err *err)
{
    struct pb_mapper *m;
    size_t n = pb_flowset_count(set);

    if (!set) {
        pb_err_set(err, PB_ERR_INVALID, "pb_mapper_new: no flow set");
        return NULL;
    }
    pb__flowset_freeze(set);
    if (!(m = calloc(1, sizeof(*m))) || !(m->flows = calloc(n ? n : 1, sizeof(*m->flows)))) {
        free(m);
        pb_err_set(err, PB_ERR_NOMEM, "out of memory creating a mapper");
        return NULL;
    }
    m->magic = MAPPER_MAGIC;
    m->set = set;
    m->n_flows = n;
    return m;
}

void pb_mapper_unkeep_all(struct pb_mapper *m)
{
    if (!m || m->magic != MAPPER_MAGIC)
        return;
    for (size_t i = 0; i < m->n_kept; i++) {
        if (m->kept[i].converted)
            jv_free(m->kept[i].event_jv);
        if (m->kept[i].fx_flow) {
            jv_free(m->kept[i].fxval);
            jv_free(m->kept[i].fxerr);
        }
    }
    m->n_kept = 0;
}

void pb_mapper_unkeep(struct pb_mapper *m, const json_t *event)
{
    if (!m || m->magic != MAPPER_MAGIC || !event)
        return;
    for (size_t i = 0; i < m->n_kept; i++) {
        struct kept *k = &m->kept[i];
        if (k->event != event)
            continue;
        if (k->converted)
            jv_free(k->event_jv);
        if (k->fx_flow) {
            jv_free(k->fxval);
            jv_free(k->fxerr);
        }
        m->kept[i] = m->kept[--m->n_kept];
        return;
    }
}

enum pb_rc pb_mapper_keep(struct pb_mapper *m, const json_t *event)
{
    if (!m || m->magic != MAPPER_MAGIC || !event)
        return PB_ERR_INVALID;
    for (size_t i = 0; i < m->n_kept; i++)
        if (m->kept[i].event == event)
            return PB_OK;
    if (m->n_kept == m->cap_kept) {
        size_t cap = m->cap_kept ? m->cap_kept * 2 : 16;
        struct kept *k = realloc(m->kept, cap * sizeof(*k));
        if (!k)
            return PB_ERR_NOMEM; /* not kept: converted on every call, as before */
        m->kept = k;
        m->cap_kept = cap;
    }
    memset(&m->kept[m->n_kept], 0, sizeof(m->kept[0]));
    m->kept[m->n_kept++].event = event;
    return PB_OK;
}

void pb_mapper_free(struct pb_mapper *m)
{
    if (!m)
        return;
    pb_mapper_unkeep_all(m);
    free(m->kept);
    for (size_t i = 0; i < m->n_flows; i++) {
        if (m->flows[i].jq)
            jq_teardown(&m->flows[i].jq);
        if (m->flows[i].ready)
            jv_free(m->flows[i].vars);
        free(m->flows[i].probe);
        free(m->flows[i].same_when);
        if (m->flows[i].guards)
            guards_free(m->flows[i].guards, pb_flowset_flow(m->set, i)->n_steps);
    }
    free(m->flows);
    m->magic = 0;
    free(m);
}

/* Forget the flow's compiled state (it is compiled again on next use). */
static void mapper_flow_discard(struct mapper_flow *mf)
{
    if (mf->jq)
        jq_teardown(&mf->jq);
    if (mf->ready)
        jv_free(mf->vars);
    mf->ready = 0;
}

/* The flow's compiled program and vars, compiled on first use (~15 ms). */
static struct mapper_flow *mapper_flow(struct pb_mapper *m, const struct pb_flow *f,
                                       struct pb_err *err)
{
    struct mapper_flow *mf = &m->flows[f->set_index];
    char *program;
    if (mf->ready)
        return mf;
    if (!(program = program_build(f))) {
        pb_err_set(err, PB_ERR_NOMEM, "flow %s: out of memory building its jq program", f->name);
        return NULL;
    }
    mf->jq = compile(program, &m->msg);
    free(program);
    if (!mf->jq) {
        /* loading compiled this very program, so this is a bug (or no memory) */
        pb_err_set(err, PB_ERR_INTERNAL, "flow %s: its jq program does not compile: %s", f->name,
                   m->msg.text);
        return NULL;
    }
    mf->vars = to_jv(f->vars, 0);
    if (!jv_is_valid(mf->vars)) {
        jv_free(mf->vars);
        jq_teardown(&mf->jq);
        pb_err_set(err, PB_ERR_INVALID, "flow %s: vars: nested too deeply", f->name);
        return NULL;
    }
    mf->ready = 1;
    return mf;
}

/* The per-call inputs, converted to jv once. */
struct inputs {
    jv event, refs, fxval, fxerr, event_id, now;
};

static void inputs_free(struct inputs *in)
{
    jv_free(in->event);
    jv_free(in->refs);
    jv_free(in->fxval);
    jv_free(in->fxerr);
    jv_free(in->event_id);
    jv_free(in->now);
}

/* pb_flow_fx() says "flow F: why"; the why. */
static const char *fx_why(const struct pb_flow *f, const struct pb_err *fxerr);

/* Convert the per-call inputs once (*fxrc / *fxerr: $fx could not be computed).
 * PB_ERR_INVALID (in `err`, naming `what`) for an event nested too deeply. */
static enum pb_rc inputs_make(struct pb_mapper *m, struct inputs *in, const struct pb_flow *f,
                              const char *what, const json_t *event, const json_t *refs,
                              const char *event_id, const char *today, enum pb_rc *fxrc,
                              struct pb_err *fxerr, struct pb_err *err)
{
    json_t *fx = NULL;
    struct kept *k = NULL;
    for (size_t i = 0; i < m->n_kept; i++)
        if (m->kept[i].event == event) {
            k = &m->kept[i];
            break;
        }
    *fxrc = PB_OK;
    if (k && k->fx_flow == f) {
        *fxrc = k->fxrc;
        if (*fxrc != PB_OK)
            pb_err_set(fxerr, *fxrc, "flow %s: %s", f->name, jv_string_value(k->fxerr));
    } else if (f->uses_fx) {
        *fxrc = pb_flow_fx(f, event, &fx, fxerr);
    }
    if (k && k->converted) {
        in->event = jv_copy(k->event_jv);
    } else {
        in->event = to_jv(event, 0);
        if (!jv_is_valid(in->event)) {
            json_decref(fx);
            jv_free(in->event);
            return pb_err_set(err, PB_ERR_INVALID, "flow %s %s: the event is nested too deeply",
                              f->name, what);
        }
        if (k) {
            k->event_jv = jv_copy(in->event);
            k->converted = 1;
        }
    }
    in->refs = refs ? to_jv(refs, 0) : jv_object();
    if (k && k->fx_flow == f) {
        in->fxval = jv_copy(k->fxval);
        in->fxerr = jv_copy(k->fxerr);
        json_decref(fx);
    } else {
        in->fxval = fx ? to_jv(fx, 0) : jv_null();
        in->fxerr = *fxrc != PB_OK ? jv_string(fx_why(f, fxerr)) : jv_null();
        if (k && !k->fx_flow) {
            k->fx_flow = f;
            k->fxrc = *fxrc;
            k->fxval = jv_copy(in->fxval);
            k->fxerr = jv_copy(in->fxerr);
        }
    }
    in->event_id = event_id ? jv_string(event_id) : jv_null();
    in->now = today ? jv_string(today) : jv_null();
    json_decref(fx);
    return PB_OK;
}

static jv envelope(const struct mapper_flow *mf, size_t step, size_t sel, int mode,
                   const struct inputs *in)
{
    jv a = jv_array();
    a = jv_array_append(a, jv_number((double)step));
    a = jv_array_append(a, jv_number((double)sel));
    a = jv_array_append(a, jv_number(mode));
    a = jv_array_append(a, jv_copy(in->event));
    a = jv_array_append(a, jv_copy(mf->vars));
    a = jv_array_append(a, jv_copy(in->refs));
    a = jv_array_append(a, jv_copy(in->fxval));
    a = jv_array_append(a, jv_copy(in->fxerr));
    a = jv_array_append(a, jv_copy(in->event_id));
    a = jv_array_append(a, jv_copy(in->now));
    return a;
}

/* Evaluate the step's expressions one by one to name the one that fails. */
static enum pb_rc diagnose(struct mapper_flow *mf, const struct pb_flow_step *st,
                           const struct inputs *in, const char *whole, struct pb_err *err)
{
    char msg[PB_ERR_MSG_MAX];
    for (size_t i = 0; i < st->n_leaves; i++) {
        jv out;
        enum run_result r =
            run_jq(mf->jq, envelope(mf, st->index, i, MODE_LEAF, in), &out, msg, sizeof(msg));
        if (r == RUN_HALTED) {
            mapper_flow_discard(mf);
            return map_error(st, i, err, "%s", msg);
        }
        if (r == RUN_ERROR)
            return map_error(st, i, err, "%s", msg);
        if (r == RUN_NONE)
            return map_error(st, i, err,
                             "the expression produced no value (it ran into `empty`, select() "
                             "or a failed `?`); add `// null` to leave the field out instead");
        if (r == RUN_MANY)
            return map_error(st, i, err,
                             "the expression produced more than one value; use first(...) or "
                             "collect them into a list with [...]");
        if (st->has_when && i == 0 && !truthy(out)) {
            jv_free(out);
            break; /* nothing after a false when is evaluated */
        }
        jv_free(out);
    }
    return map_error(st, SIZE_MAX, err, "%s", whole);
}

/* pb_flow_fx() says "flow F: why"; the why. */
static const char *fx_why(const struct pb_flow *f, const struct pb_err *fxerr)
{
    const char *why = fxerr->msg;
    size_t n = strlen(f->name);
    if (strncmp(why, "flow ", 5) == 0 && strncmp(why + 5, f->name, n) == 0 &&
        strncmp(why + 5 + n, ": ", 2) == 0)
        why += 5 + n + 2;
    return why;
}

enum pb_rc pb_mapper_when(struct pb_mapper *m, const struct pb_flow_step *step, const json_t *event,
                          const json_t *refs, const char *event_id, const char *today, int *run,
                          struct pb_err *err)
{
    struct inputs in;
    struct pb_err fxerr = {0};
    enum pb_rc rc = PB_OK, fxrc = PB_OK;
    struct mapper_flow *mf;
    char msg[PB_ERR_MSG_MAX];
    jv out;
    enum run_result r;

    *run = 0;
    if (!m || m->magic != MAPPER_MAGIC)
        return pb_err_set(err, PB_ERR_INVALID, "pb_mapper_when: not a mapper");
    if (!step || step->magic != PB_FLOW_STEP_MAGIC || step->flow->set != m->set)
        return pb_err_set(err, PB_ERR_INVALID,
                          "pb_mapper_when: the step does not belong to this mapper's flow set");
    for (size_t i = 0; i < step->n_needs; i++) {
        json_t *id = refs ? json_object_get(refs, step->needs[i]) : NULL;
        if (!id || json_is_null(id))
            return PB_OK;
    }
    if (!step->has_when) {
        *run = 1;
        return PB_OK;
    }
    if (!(mf = mapper_flow(m, step->flow, err)))
        return err ? err->rc : PB_ERR_INTERNAL;
    {
        char what[160];
        snprintf(what, sizeof(what), "step %s", step->name);
        if ((rc = inputs_make(m, &in, step->flow, what, event, refs, event_id, today, &fxrc, &fxerr,
                              err)))
            return rc;
    }
    r = run_jq(mf->jq, envelope(mf, step->index, 0, MODE_LEAF, &in), &out, msg, sizeof(msg));
    if (r == RUN_HALTED) {
        mapper_flow_discard(mf);
        rc = map_error(step, 0, err, "%s", msg);
    } else if (r == RUN_ONE) {
        *run = truthy(out);
        jv_free(out);
    } else {
        rc = map_error(step, 0, err, "%s",
                       r == RUN_NONE ? "produced no value" : r == RUN_MANY ? "produced more than one value" : msg);
    }
    inputs_free(&in);
    return rc;
}

enum pb_rc pb_mapper_next(struct pb_mapper *m, const struct pb_flow *flow, size_t from,
                          const json_t *event, const json_t *refs, const char *event_id,
                          const char *today, size_t *next, struct pb_err *err)
{
    struct inputs in;
    struct pb_err fxerr = {0};
    enum pb_rc rc, fxrc = PB_OK;
    struct mapper_flow *mf;
    char msg[PB_ERR_MSG_MAX];
    size_t first = from;
    jv out;
    enum run_result r;
    const char *type;

    *next = flow ? flow->n_steps : 0;
    if (!m || m->magic != MAPPER_MAGIC)
        return pb_err_set(err, PB_ERR_INVALID, "pb_mapper_next: not a mapper");
    if (!flow || flow->set != m->set)
        return pb_err_set(err, PB_ERR_INVALID,
                          "pb_mapper_next: the flow does not belong to this mapper's flow set");
    if (refs && !json_is_object(refs))
        return pb_err_set(err, PB_ERR_INVALID, "pb_mapper_next: refs must be an object");
    type = json_is_object(event) ? json_string_value(json_object_get(event, "type")) : NULL;
    /* what C decides alone: steps whose $refs are missing, whens that test
     * the event's type for another type, a step without a when */
    for (; first < flow->n_steps; first++) {
        const struct pb_flow_step *st = &flow->steps[first];
        int missing = 0;
        for (size_t i = 0; i < st->n_needs && !missing; i++) {
            json_t *id = refs ? json_object_get(refs, st->needs[i]) : NULL;
            missing = !id || json_is_null(id);
        }
        if (missing || (type && guard_excludes(m, flow, first, type)))
            continue;
        if (!st->has_when) {
            *next = first;
            return PB_OK;
        }
        break;
    }
    if (first >= flow->n_steps)
        return PB_OK;
    if (!(mf = mapper_flow(m, flow, err)))
        return err ? err->rc : PB_ERR_INTERNAL;
    if ((rc = inputs_make(m, &in, flow, "when", event, refs, event_id, today, &fxrc, &fxerr, err)))
        return rc;
    /* one evaluation for all the whens from `first` on */
    r = run_jq(mf->jq, envelope(mf, 0, first, MODE_NEXT, &in), &out, msg, sizeof(msg));
    if (r == RUN_ONE && jv_get_kind(out) == JV_KIND_ARRAY && jv_array_length(jv_copy(out)) == 2) {
        jv k = jv_array_get(jv_copy(out), 0);
        if (jv_get_kind(k) == JV_KIND_NUMBER && jv_number_value(k) >= (double)first &&
            jv_number_value(k) <= (double)flow->n_steps) {
            *next = (size_t)jv_number_value(k);
            jv_free(k);
            jv_free(out);
            inputs_free(&in);
            return PB_OK;
        }
        jv_free(k);
    }
    if (r == RUN_ONE)
        jv_free(out);
    if (r == RUN_HALTED)
        mapper_flow_discard(mf);
    inputs_free(&in);
    /* cannot happen (every when is inside try); step by step, as before */
    for (size_t i = first; i < flow->n_steps; i++) {
        int run = 0;
        struct pb_err e2 = {0};
        if (pb_mapper_when(m, &flow->steps[i], event, refs, event_id, today, &run, &e2) || run) {
            *next = i;
            return PB_OK;
        }
    }
    *next = flow->n_steps;
    return PB_OK;
}

/* A step's reference (borrowed) is non-empty text without NUL, at most
 * PB_FLOW_REFERENCE_MAX bytes; else PB_ERR_MAPPING naming the field. */
static enum pb_rc check_reference(const struct pb_flow_step *step, jv ref, struct pb_err *err)
{
    int len = jv_get_kind(ref) == JV_KIND_STRING ? jv_string_length_bytes(jv_copy(ref)) : -1;
    if (len > 0 && strlen(jv_string_value(ref)) == (size_t)len) {
        if ((size_t)len <= PB_FLOW_REFERENCE_MAX)
            return PB_OK;
        return map_error(step, step->reference_leaf, err, "the reference is longer than %d bytes",
                         PB_FLOW_REFERENCE_MAX);
    }
    if (len >= 0)
        return map_error(step, step->reference_leaf, err,
                         "the reference is empty (or contains NUL); it must be non-empty text");
    return map_error(step, step->reference_leaf, err,
                     "evaluated to %s; a reference must be non-empty text (use tostring for "
                     "numbers)",
                     jv_kind_name(jv_get_kind(ref)));
}

/* Whether to evaluate the reference alone first. That pays where `known`
 * often says yes (a customer step: most orders come from customers who are
 * in the ERP already) and costs a short evaluation more where it never does
 * (an invoice step: every reference is new). So: during the step's first 16
 * answers on this mapper, while at least one answer in four was yes, and
 * once in 64 calls otherwise, so that a step whose answers change is seen.
 * Counts are halved at 1024, so that recent answers weigh more. */
static int should_probe(struct probe_stat *p)
{
    if (!p || p->asked < 16 || p->hits * 4 >= p->asked)
        return 1;
    return ++p->passed % 64 == 0;
}

static void note_answer(struct probe_stat *p, int yes)
{
    if (!p)
        return;
    p->asked++;
    p->hits += yes ? 1u : 0u;
    if (p->asked >= 1024) {
        p->asked /= 2;
        p->hits /= 2;
    }
}

static struct probe_stat *probe_stat(struct mapper_flow *mf, const struct pb_flow_step *step)
{
    if (!mf->probe)
        mf->probe = calloc(step->flow->n_steps, sizeof(*mf->probe));
    return mf->probe ? &mf->probe[step->index] : NULL; /* NULL (no memory): always ask */
}

/* Mode 5 for pb_mapper_step_unless: 1 when the step runs and known() says
 * its reference is done (*reference set), else 0: the caller evaluates the
 * whole step, which also reports any error of this shorter evaluation.
 * *asked: known() was called. */
static int reference_known(struct mapper_flow *mf, const struct pb_flow_step *step,
                           const struct inputs *in, int (*known)(void *, const char *),
                           void *ctx, char **reference, int *asked)
{
    char msg[PB_ERR_MSG_MAX];
    struct pb_err ignored = {0};
    jv out, ref;
    int hit = 0;
    enum run_result r = run_jq(mf->jq, envelope(mf, step->index, 0, MODE_REF, in), &out, msg,
                               sizeof(msg));
    if (r == RUN_HALTED) {
        mapper_flow_discard(mf);
        return 0;
    }
    if (r != RUN_ONE)
        return 0;
    if (jv_get_kind(out) != JV_KIND_ARRAY || jv_array_length(jv_copy(out)) != 2) {
        jv_free(out);
        return 0; /* [false] (skipped) is the whole evaluation's to say, too */
    }
    ref = jv_array_get(out, 1);
    if (check_reference(step, ref, &ignored) == PB_OK) {
        *asked = 1;
        if (known(ctx, jv_string_value(ref)) == 1) {
            *reference = strdup(jv_string_value(ref));
            hit = *reference != NULL;
        }
    }
    jv_free(ref);
    return hit;
}

/* Can `text` (n bytes) give a different answer for the same event at another
 * time? Conservatively yes when it mentions $refs (the ids of the steps that
 * ran), now / $now (the clock), input (more input) or $__loc__. */
static int may_vary(const char *text, size_t n)
{
    static const char *const words[] = {"$refs", "now", "input", "$__loc__", NULL};
    for (size_t i = 0; words[i]; i++) {
        size_t w = strlen(words[i]);
        for (size_t j = 0; j + w <= n; j++)
            if (memcmp(text + j, words[i], w) == 0)
                return 1;
    }
    return 0;
}

static int ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Does `name` (len bytes) occur in text[0..n) as a call: not part of a longer
 * identifier, not a field (.name) or a variable ($name)? */
static int calls(const char *text, size_t n, const char *name, size_t len)
{
    for (size_t j = 0; len && j + len <= n; j++)
        if (memcmp(text + j, name, len) == 0 &&
            (j == 0 || (!ident_char(text[j - 1]) && text[j - 1] != '.' && text[j - 1] != '$')) &&
            (j + len == n || !ident_char(text[j + len])))
            return 1;
    return 0;
}

#define DEFS_MAX 256

/* The flow's defs cut at each line that starts a definition at the defs'
 * own indentation: [start, end) of each, and its name. 0 when the text does
 * not have that shape (then nothing is proven). */
static size_t split_defs(const char *d, size_t *start, size_t *end, const char **name,
                         size_t *name_len)
{
    size_t n = 0, indent = SIZE_MAX, len = strlen(d);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < len;) {
            size_t sp = i;
            while (sp < len && (d[sp] == ' ' || d[sp] == '\t'))
                sp++;
            if (len - sp > 4 && memcmp(d + sp, "def ", 4) == 0) {
                if (pass == 0 && sp - i < indent)
                    indent = sp - i;
                if (pass == 1 && sp - i == indent) {
                    size_t a = sp + 4, b;
                    while (a < len && d[a] == ' ')
                        a++;
                    b = a;
                    while (b < len && ident_char(d[b]))
                        b++;
                    if (n == DEFS_MAX || b == a)
                        return 0;
                    if (n)
                        end[n - 1] = i;
                    start[n] = i;
                    name[n] = d + a;
                    name_len[n] = b - a;
                    n++;
                }
            }
            while (i < len && d[i] != '\n')
                i++;
            i++;
        }
    }
    if (n)
        end[n - 1] = len;
    return n;
}

/* pred over `text` and every definition it calls, transitively */
static int with_defs(const char *text, const char *defs, int (*pred)(const char *, size_t))
{
    size_t start[DEFS_MAX], end[DEFS_MAX], name_len[DEFS_MAX], n;
    const char *name[DEFS_MAX];
    unsigned char used[DEFS_MAX] = {0};
    int grew = 1;
    if (pred(text, strlen(text)))
        return 1;
    if (!defs || !defs[0])
        return 0;
    if (!(n = split_defs(defs, start, end, name, name_len)))
        return pred(defs, strlen(defs)); /* not understood: all of it counts */
    for (size_t i = 0; i < n; i++)
        used[i] = (unsigned char)calls(text, strlen(text), name[i], name_len[i]);
    while (grew) {
        grew = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; !used[i] && j < n; j++)
                if (used[j] && calls(defs + start[j], end[j] - start[j], name[i], name_len[i]))
                    used[i] = 1, grew = 1;
    }
    for (size_t i = 0; i < n; i++)
        if (used[i] && pred(defs + start[i], end[i] - start[i]))
            return 1;
    return 0;
}

/* Can `text` (n bytes) give two different answers within one evaluation, or
 * do something besides computing a value? It calls now (the clock), input or
 * inputs, debug or stderr, or reads $__loc__ (its position in the program). */
static int not_pure(const char *text, size_t n)
{
    static const char *const words[] = {"now", "input", "inputs", "debug", "stderr", NULL};
    for (size_t i = 0; words[i]; i++)
        if (calls(text, n, words[i], strlen(words[i])))
            return 1;
    for (size_t j = 0; j + 8 <= n; j++)
        if (memcmp(text + j, "$__loc__", 8) == 0)
            return 1;
    return 0;
}

static int cse_safe(const char *text, const char *defs)
{
    return !with_defs(text, defs, not_pure);
}

static int same_when(const struct pb_flow_step *ran, const struct pb_flow_step *next)
{
    const char *a, *b;
    if (!ran->has_when || !next->has_when)
        return !ran->has_when && !next->has_when;
    a = ran->leaves[0].code;
    b = next->leaves[0].code;
    return a && b && strcmp(a, b) == 0 && !with_defs(a, next->flow->defs_code, may_vary);
}

/* ---- type guards ------------------------------------------------------------------- */

/* Most whens after a flow's main path route on the event's type:
 * `.type == "chargeback.won"`, or a def such as `def refunded: .type ==
 * "refund.succeeded";`, or an `or` of such. For those, C knows that the when
 * is false for any other type, and pb_mapper_next passes the step over
 * without jq (after a payment, the whens of the refund and chargeback steps
 * cost a jq evaluation for every payment). The grammar understood, over the
 * when and the defs it names (each defined once, without parameters):
 *
 *   guard := term { "or" term }
 *   term  := "(" guard ")" | ".type" "==" STRING | STRING "==" ".type" | DEFNAME
 *
 * STRING without escapes; anything else (another operator, a builtin, a def
 * defined twice) is not a guard and goes to jq as before. The answer is
 * exact: the canonical event is an object, so `.type == "x"` is a boolean
 * and never an error, and `or` of booleans is their disjunction. */

struct gtok {
    const char *p, *end; /* the text being read */
    const char *defs;    /* the flow's defs (for DEFNAME) */
    int depth;           /* def nesting, bounded */
};

static void g_space(struct gtok *t)
{
    while (t->p < t->end) {
        if (*t->p == ' ' || *t->p == '\t' || *t->p == '\n' || *t->p == '\r') {
            t->p++;
        } else if (*t->p == '#') {
            while (t->p < t->end && *t->p != '\n')
                t->p++;
        } else {
            break;
        }
    }
}

/* Accept the literal token `word` (an identifier must not continue). */
static int g_accept(struct gtok *t, const char *word)
{
    size_t n = strlen(word);
    g_space(t);
    if ((size_t)(t->end - t->p) < n || memcmp(t->p, word, n) != 0)
        return 0;
    if (ident_char(word[n - 1]) && t->p + n < t->end && ident_char(t->p[n]))
        return 0;
    t->p += n;
    return 1;
}

/* A string without escapes: [*s, *s + *n). */
static int g_string(struct gtok *t, const char **s, size_t *n)
{
    const char *q;
    g_space(t);
    if (t->p >= t->end || *t->p != '"')
        return 0;
    for (q = t->p + 1; q < t->end && *q != '"'; q++)
        if (*q == '\\' || (unsigned char)*q < 0x20)
            return 0;
    if (q >= t->end)
        return 0;
    *s = t->p + 1;
    *n = (size_t)(q - t->p - 1);
    t->p = q + 1;
    return 1;
}

static int g_add(struct type_guard *g, const char *s, size_t n)
{
    if (g->n == GUARD_TYPES_MAX || !(g->types[g->n] = strndup(s, n)))
        return 0;
    g->n++;
    return 1;
}

static int g_guard(struct gtok *t, struct type_guard *g);

static int g_def(struct gtok *t, struct type_guard *g, const char *name, size_t len)
{
    size_t start[DEFS_MAX], end[DEFS_MAX], name_len[DEFS_MAX], n, found = SIZE_MAX;
    const char *dname[DEFS_MAX];
    struct gtok body;
    if (!t->defs || t->depth >= 8 || !(n = split_defs(t->defs, start, end, dname, name_len)))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (name_len[i] == len && memcmp(dname[i], name, len) == 0) {
            if (found != SIZE_MAX)
                return 0; /* defined twice: which one applies depends on position */
            found = i;
        }
    if (found == SIZE_MAX)
        return 0; /* a builtin, or not a def of this flow */
    body = (struct gtok){t->defs + start[found], t->defs + end[found], t->defs, t->depth + 1};
    if (!g_accept(&body, "def"))
        return 0;
    g_space(&body);
    if ((size_t)(body.end - body.p) < len || memcmp(body.p, name, len) != 0)
        return 0;
    body.p += len;
    if (!g_accept(&body, ":"))
        return 0;
    if (!g_guard(&body, g) || !g_accept(&body, ";"))
        return 0;
    g_space(&body);
    return body.p == body.end;
}

static int g_term(struct gtok *t, struct type_guard *g)
{
    const char *s, *id;
    size_t n;
    if (g_accept(t, "("))
        return g_guard(t, g) && g_accept(t, ")");
    if (g_accept(t, ".type"))
        return g_accept(t, "==") && g_string(t, &s, &n) && g_add(g, s, n);
    if (g_string(t, &s, &n))
        return g_accept(t, "==") && g_accept(t, ".type") && g_add(g, s, n);
    g_space(t);
    id = t->p;
    while (t->p < t->end && ident_char(*t->p))
        t->p++;
    if (t->p == id || (*id >= '0' && *id <= '9'))
        return 0;
    n = (size_t)(t->p - id);
    if ((n == 2 && memcmp(id, "or", 2) == 0) || (n == 3 && memcmp(id, "and", 3) == 0))
        return 0;
    return g_def(t, g, id, n);
}

static int g_guard(struct gtok *t, struct type_guard *g)
{
    if (!g_term(t, g))
        return 0;
    while (g_accept(t, "or"))
        if (!g_term(t, g))
            return 0;
    return 1;
}

/* Analyse step k's when into *g (state 1 or 2). */
static void type_guard(const struct pb_flow_step *st, struct type_guard *g)
{
    struct gtok t;
    const char *w = st->has_when ? st->leaves[0].code : NULL;
    g->state = 2;
    if (!w)
        return;
    t = (struct gtok){w, w + strlen(w), st->flow->defs_code, 0};
    if (g_guard(&t, g) && (g_space(&t), t.p == t.end)) {
        g->state = 1;
        return;
    }
    for (size_t i = 0; i < g->n; i++)
        free(g->types[i]);
    g->n = 0;
}

static void guards_free(struct type_guard *g, size_t n)
{
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < g[k].n; i++)
            free(g[k].types[i]);
    free(g);
}

/* 1 when step k's when is a type guard that is false for `type`. */
static int guard_excludes(struct pb_mapper *m, const struct pb_flow *flow, size_t k,
                          const char *type)
{
    struct mapper_flow *mf = &m->flows[flow->set_index];
    struct type_guard *g;
    if (!mf->guards && !(mf->guards = calloc(flow->n_steps, sizeof(*mf->guards))))
        return 0;
    g = &mf->guards[k];
    if (!g->state)
        type_guard(&flow->steps[k], g);
    if (g->state != 1)
        return 0;
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->types[i], type) == 0)
            return 0;
    return 1;
}

int pb_mapper_same_when(struct pb_mapper *m, const struct pb_flow_step *ran,
                        const struct pb_flow_step *next)
{
    struct mapper_flow *mf;
    if (!m || m->magic != MAPPER_MAGIC || !ran || !next || ran->flow != next->flow ||
        next->index != ran->index + 1 || ran->flow->set != m->set)
        return 0;
    /* the text scan is done once per step and mapper, not per job */
    mf = &m->flows[ran->flow->set_index];
    if (!mf->same_when && !(mf->same_when = calloc(ran->flow->n_steps, 1)))
        return same_when(ran, next);
    if (!mf->same_when[next->index])
        mf->same_when[next->index] = same_when(ran, next) ? 1 : 2;
    return mf->same_when[next->index] == 1;
}

enum pb_rc pb_mapper_step(struct pb_mapper *m, const struct pb_flow_step *step, const json_t *event,
                          const json_t *refs, const char *event_id, const char *today, int *run,
                          char **reference, json_t **document, struct pb_err *err)
{
    return pb_mapper_step_unless(m, step, event, refs, event_id, today, NULL, NULL, run,
                                 reference, document, err);
}

enum pb_rc pb_mapper_step_unless(struct pb_mapper *m, const struct pb_flow_step *step,
                                 const json_t *event, const json_t *refs, const char *event_id,
                                 const char *today, int (*known)(void *ctx, const char *reference),
                                 void *ctx, int *run, char **reference, json_t **document,
                                 struct pb_err *err)
{
    struct probe_stat *ps = NULL;
    int asked = 0;
    struct inputs in;
    struct pb_err fxerr = {0};
    enum pb_rc rc = PB_OK, fxrc = PB_OK;
    struct mapper_flow *mf;
    struct eval ev;
    char msg[PB_ERR_MSG_MAX];
    jv out, ref = jv_invalid(), doc = jv_invalid();
    enum run_result r;

    *run = 0;
    *reference = NULL;
    *document = NULL;
    if (!m || m->magic != MAPPER_MAGIC)
        return pb_err_set(err, PB_ERR_INVALID, "pb_mapper_step: not a mapper");
    if (!step || step->magic != PB_FLOW_STEP_MAGIC || step->flow->set != m->set)
        return pb_err_set(err, PB_ERR_INVALID,
                          "pb_mapper_step: the step does not belong to this mapper's flow set");
    if (refs && !json_is_object(refs))
        return pb_err_set(err, PB_ERR_INVALID, "pb_mapper_step: refs must be an object");

    /* a step that uses the id of a step that did not run is skipped too */
    for (size_t i = 0; i < step->n_needs; i++) {
        json_t *id = json_object_get(refs, step->needs[i]);
        if (!id || json_is_null(id))
            return PB_OK;
    }

    if (!(mf = mapper_flow(m, step->flow, err)))
        return err ? err->rc : PB_ERR_INTERNAL;

    /* $fx: computed in C; when it cannot be, __pb_fx raises the error where
     * (and only if) an expression uses it */
    {
        char what[160];
        snprintf(what, sizeof(what), "step %s", step->name);
        if ((rc = inputs_make(m, &in, step->flow, what, event, refs, event_id, today, &fxrc, &fxerr,
                              err)))
            return rc;
    }
    ev.m = m;
    ev.step = step;
    ev.err = err;

    if (known) {
        ps = probe_stat(mf, step);
        if (should_probe(ps)) {
            int hit = reference_known(mf, step, &in, known, ctx, reference, &asked);
            if (asked)
                note_answer(ps, hit);
            if (hit) {
                *run = 1; /* already done: no document to build */
                inputs_free(&in);
                return PB_OK;
            }
        }
    }
    if (!mf->ready && !(mf = mapper_flow(m, step->flow, err))) { /* halted above */
        inputs_free(&in);
        return err ? err->rc : PB_ERR_INTERNAL;
    }
    r = run_jq(mf->jq, envelope(mf, step->index, 0, MODE_STEP, &in), &out, msg, sizeof(msg));
    if (r == RUN_HALTED) {
        mapper_flow_discard(mf); /* a halted libjq 1.6 state must not be started again */
        rc = map_error(step, SIZE_MAX, err, "%s", msg);
        goto done;
    }
    if (r != RUN_ONE) {
        if (r == RUN_NONE)
            snprintf(msg, sizeof(msg), "an expression produced no value");
        else if (r == RUN_MANY)
            snprintf(msg, sizeof(msg), "an expression produced more than one value");
        rc = diagnose(mf, step, &in, msg, err);
        goto done;
    }
    {
        int len = jv_get_kind(out) == JV_KIND_ARRAY ? jv_array_length(jv_copy(out)) : -1;
        jv first = len > 0 ? jv_array_get(jv_copy(out), 0) : jv_invalid();
        jv_kind fk = jv_get_kind(first);
        jv_free(first);
        if (fk == JV_KIND_FALSE && len == 1) {
            jv_free(out);
            goto done; /* skipped by when */
        }
        if (fk != JV_KIND_TRUE || len != 3) {
            jv_free(out);
            rc = diagnose(mf, step, &in, "an expression produced no value or several values", err);
            goto done;
        }
        ref = jv_array_get(jv_copy(out), 1);
        doc = jv_array_get(out, 2);
    }
    if ((rc = check_reference(step, ref, err)))
        goto done;
    if (fxrc != PB_OK) {
        /* the step runs but the flow needs $fx: stop before anything is created */
        rc = pb_err_set(err, fxrc, "flow %s step %s: %s", step->flow->name, step->name,
                        fx_why(step->flow, &fxerr));
        goto done;
    }
    rc = build_doc(&ev, &step->document, doc, 1, document);
    if (rc)
        goto done;
    if (!(*reference = strdup(jv_string_value(ref)))) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto done;
    }
    *run = 1;
    if (known && !asked) { /* not asked first: ask now, the answer is the same */
        int hit = known(ctx, *reference) == 1;
        note_answer(ps, hit);
        if (hit) {
            json_decref(*document);
            *document = NULL;
        }
    }

done:
    if (rc != PB_OK) {
        json_decref(*document);
        *document = NULL;
        free(*reference);
        *reference = NULL;
        *run = 0;
    }
    jv_free(ref);
    jv_free(doc);
    inputs_free(&in);
    return rc;
}

/* ---- load-time check ----------------------------------------------------------------------- */

/* Does the defs text start with `def` (after blanks and comments)? */
static int starts_with_def(const char *s)
{
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        if (*s != '#')
            break;
        while (*s && *s != '\n')
            s++;
    }
    return strncmp(s, "def", 3) == 0 &&
           !(s[3] == '_' || (s[3] >= 'a' && s[3] <= 'z') || (s[3] >= 'A' && s[3] <= 'Z') ||
             (s[3] >= '0' && s[3] <= '9'));
}

/* Compile `code` on its own, bare (not in parentheses), after the prologue
 * and the flow's defs: for checking defs (code ".") and for a jq message
 * that talks about the user's text only. NULL with msg set on failure. */
static jq_state *compile_piece(const struct pb_flow *f, const char *code, struct jqmsg *msg)
{
    struct sbuf b = {0};
    jq_state *jq;
    sb_puts(&b, prologue);
    sb_puts(&b, "(");
    emit_defs(&b, f);
    sb_puts(&b, code);
    sb_puts(&b, "\n)");
    if (b.failed) {
        free(b.p);
        snprintf(msg->text, sizeof(msg->text), "out of memory");
        return NULL;
    }
    jq = compile(b.p, msg);
    free(b.p);
    return jq;
}

/* Mode 3 of a flow program (or of "(DEFS .)") must return its input: the
 * defs must not be followed by something like "2 |". */
static int defs_leave_input_alone(jq_state *jq)
{
    jv probe = jv_object_set(jv_object(), jv_string("__pb_probe"), jv_true()), input, out;
    char err[PB_ERR_MSG_MAX];
    int ok;
    input = jv_array();
    input = jv_array_append(input, jv_number(0));
    input = jv_array_append(input, jv_number(0));
    input = jv_array_append(input, jv_number(3));
    input = jv_array_append(input, jv_copy(probe));
    for (int i = 0; i < 6; i++)
        input = jv_array_append(input, jv_null());
    ok = run_jq(jq, input, &out, err, sizeof(err)) == RUN_ONE && jv_equal(out, jv_copy(probe));
    jv_free(probe);
    return ok;
}

static void defs_alter_input(const struct pb_flow *f, struct pb_diags *d)
{
    pb_diags_add(d, f->file, f->defs_line,
                 "defs: must hold only jq function definitions (def name: body;); something "
                 "after the last definition changes the input");
}

struct leaf_at {
    const struct pb_flow_step *step;
    size_t leaf;
};

/* Compile the n expressions as functions of one program; NULL + msg on failure. */
static jq_state *compile_leaves(const struct pb_flow *f, const struct leaf_at *list, size_t n,
                                struct jqmsg *msg)
{
    struct sbuf b = {0};
    jq_state *jq;
    sb_puts(&b, prologue);
    sb_puts(&b, "(");
    emit_defs(&b, f);
    for (size_t i = 0; i < n; i++)
        emit_leaf_def(&b, list[i].step, list[i].leaf);
    /* libjq drops (and so never checks) functions nobody calls */
    sb_puts(&b, "if false then (");
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_puts(&b, ", ");
        emit_call(&b, list[i].step, list[i].leaf);
    }
    sb_puts(&b, ") else . end)");
    if (b.failed) {
        free(b.p);
        snprintf(msg->text, sizeof(msg->text), "out of memory");
        return NULL;
    }
    jq = compile(b.p, msg);
    free(b.p);
    return jq;
}

/* Report every expression of list[0..n) that does not compile, by halving:
 * about (failures x log2 n) compiles instead of n. Returns the count. */
static size_t bisect(const struct pb_flow *f, const struct leaf_at *list, size_t n,
                     struct pb_diags *d)
{
    struct jqmsg msg;
    jq_state *jq = compile_leaves(f, list, n, &msg);
    const struct pb_flow_step *st;
    char what[320];
    if (jq) {
        jq_teardown(&jq);
        return 0;
    }
    if (n > 1)
        return bisect(f, list, n / 2, d) + bisect(f, list + n / 2, n - n / 2, d);
    st = list[0].step;
    if (strstr(msg.text, "unexpected ')'")) {
        /* that ')' is ours: ask again without it, for a message about the user's text */
        struct jqmsg bare;
        if (!(jq = compile_piece(f, st->leaves[list[0].leaf].code, &bare)))
            memcpy(msg.text, bare.text, sizeof(msg.text));
        else
            jq_teardown(&jq);
    }
    leaf_label(st, list[0].leaf, what, sizeof(what));
    if (st->name)
        pb_diags_add(d, f->file, st->leaves[list[0].leaf].line, "step %s %s: jq: %s", st->name,
                     what, msg.text);
    else
        pb_diags_add(d, f->file, st->leaves[list[0].leaf].line, "step %zu %s: jq: %s",
                     st->index + 1, what, msg.text);
    return 1;
}

size_t pb__mapping_check_flow(const struct pb_flow *flow, int one_by_one, struct pb_diags *d)
{
    struct jqmsg msg, whole;
    jq_state *jq;
    size_t problems = 0;
    int has_defs = flow->defs && flow->defs[0];

    whole.text[0] = '\0';
    if (has_defs && !starts_with_def(flow->defs)) {
        pb_diags_add(d, flow->file, flow->defs_line,
                     "defs: must hold only jq function definitions, each `def name: body;`");
        return 1;
    }
    /* a clean flow: its whole program compiles (one ~15 ms compile) */
    if (!one_by_one) {
        char *program = program_build(flow);
        if (!program) {
            pb_diags_add(d, flow->file, 0, "out of memory compiling the flow");
            return 1;
        }
        jq = compile(program, &whole);
        free(program);
        if (jq) {
            int ok = defs_leave_input_alone(jq);
            jq_teardown(&jq);
            if (ok)
                return 0;
            defs_alter_input(flow, d);
            return 1;
        }
    }
    /* find the culprits, one piece at a time (slow, errors only) */
    if (has_defs) {
        if (!(jq = compile_piece(flow, ".", &msg))) {
            pb_diags_add(d, flow->file, flow->defs_line, "defs: jq: %s", msg.text);
            return 1; /* every expression would fail */
        }
        if (!defs_leave_input_alone(jq)) {
            jq_teardown(&jq);
            defs_alter_input(flow, d);
            return 1;
        }
        jq_teardown(&jq);
    }
    {
        struct leaf_at *list = calloc(flow->n_leaves ? flow->n_leaves : 1, sizeof(*list));
        size_t n = 0;
        if (!list) {
            pb_diags_add(d, flow->file, 0, "out of memory compiling the flow");
            return problems + 1;
        }
        /* step by step: one scope of at most PB_FLOW_LEAVES_MAX definitions */
        for (size_t k = 0; k < flow->n_steps; k++) {
            n = 0;
            for (size_t i = 0; i < flow->steps[k].n_leaves; i++)
                if (!flow->steps[k].leaves[i].malformed) { /* those were reported by the scan */
                    list[n].step = &flow->steps[k];
                    list[n++].leaf = i;
                }
            if (n)
                problems += bisect(flow, list, n, d);
        }
        free(list);
    }
    if (!problems && !one_by_one) {
        pb_diags_add(d, flow->file, 0,
                     "the flow's expressions compile one by one but not together: %s%s", whole.text,
                     strstr(whole.text, "too long") ? " (split the largest step or expression)"
                                                    : "");
        problems = 1;
    }
    return problems;
}

/* ---- paybridge map test ------------------------------------------------------------------- */

static void print_indented(FILE *out, const char *text, const char *indent)
{
    const char *s = text;
    while (*s) {
        const char *nl = strchr(s, '\n');
        size_t n = nl ? (size_t)(nl - s) : strlen(s);
        fprintf(out, "%s%.*s\n", indent, (int)n, s);
        s += n + (nl ? 1 : 0);
    }
}

enum pb_rc pb_flow_map_test(const char *flow_path, const char *sample_json_path, const char *today,
                            FILE *out, struct pb_err *err)
{
    struct pb_flowset *set = pb_flowset_new();
    struct pb_diags d = {0};
    struct pb_mapper *m = NULL;
    const struct pb_flow *f;
    json_t *event = NULL, *refs = NULL;
    json_error_t je;
    enum pb_rc rc, first = PB_OK;
    struct pb_err first_err = {0};
    const char *event_id, *type, *conn;
    char date[16];
    size_t ran = 0, skipped = 0, failed = 0;

    if (!set)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    rc = pb_flowset_add_file(set, flow_path, &d);
    if (rc != PB_OK) {
        pb_diags_print(&d, out);
        pb_diags_to_err(&d, rc, err);
        goto out;
    }
    event = json_load_file(sample_json_path, JSON_REJECT_DUPLICATES, &je);
    if (!event) {
        rc = pb_err_set(err, PB_ERR_INVALID, "%s:%d: not a JSON file: %s", sample_json_path,
                        je.line, je.text);
        fprintf(out, "%s\n", err->msg);
        goto out;
    }
    if (!json_is_object(event)) {
        rc = pb_err_set(err, PB_ERR_INVALID, "%s: a canonical event is a JSON object",
                        sample_json_path);
        fprintf(out, "%s\n", err->msg);
        goto out;
    }
    if (!today) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d", &tm);
        today = date;
    }
    f = pb_flowset_flow(set, 0);
    event_id = json_string_value(json_object_get(event, "id"));
    if (!event_id)
        event_id = "evt_sample";
    type = json_string_value(json_object_get(event, "type"));
    conn = json_string_value(json_object_get(json_object_get(event, "source"), "connection"));

    fprintf(out, "flow %s (%s, %s)\n", f->name, f->file, f->version);
    fprintf(out, "event %s: %s from %s, $now = %s\n", event_id, type ? type : "(no type)",
            conn ? conn : "(no source.connection)", today);
    if (!type || !pb_flow_handles(f, type))
        fprintf(out,
                "note: the flow does not list %s in events:, so the engine would not run it "
                "for this event; evaluating anyway\n",
                type ? type : "(no type)");
    if (conn && strcmp(conn, f->source) != 0)
        fprintf(out, "note: the event comes from %s but the flow's source is %s\n", conn,
                f->source);

    if (!(m = pb_mapper_new(set, err)) || !(refs = json_object())) {
        rc = m ? pb_err_set(err, PB_ERR_NOMEM, "out of memory") : err->rc;
        goto out;
    }
    for (size_t i = 0; i < f->n_steps; i++) {
        const struct pb_flow_step *st = &f->steps[i];
        struct pb_err e = {0};
        char *ref = NULL, placeholder[PB_FLOW_NAME_MAX + 8];
        json_t *doc = NULL;
        int run = 0;

        fprintf(out, "\nstep %zu/%zu %s: %s -> %s\n", i + 1, f->n_steps, st->name, st->command,
                f->target);
        rc = pb_mapper_step(m, st, event, refs, event_id, today, &run, &ref, &doc, &e);
        if (rc != PB_OK) {
            fprintf(out, "  error (%s): %s\n", pb_rc_name(rc), e.msg);
            if (first == PB_OK) {
                first = rc;
                first_err = e;
            }
            failed++;
            continue;
        }
        if (!run) {
            const char *missing = NULL;
            for (size_t k = 0; k < st->n_needs && !missing; k++)
                if (!json_object_get(refs, st->needs[k]))
                    missing = st->needs[k];
            if (missing)
                fprintf(out, "  skipped: it uses $refs.%s and step %s did not run\n", missing,
                        missing);
            else
                fprintf(out, "  skipped: `when` is false or null\n");
            skipped++;
            continue;
        }
        {
            char *text = json_dumps(doc, JSON_INDENT(2));
            fprintf(out, "  reference: %s\n  document:\n", ref);
            if (text)
                print_indented(out, text, "    ");
            free(text);
        }
        snprintf(placeholder, sizeof(placeholder), "<%s.id>", st->name);
        json_object_set_new(refs, st->name, json_string(placeholder));
        ran++;
        free(ref);
        json_decref(doc);
    }
    fprintf(out, "\n%zu step%s would run, %zu skipped, %zu failed\n", ran, ran == 1 ? "" : "s",
            skipped, failed);
    rc = first;
    if (first != PB_OK)
        pb_err_set(err, first, "%s", first_err.msg);
    else
        pb_err_clear(err);

out:
    pb_mapper_free(m);
    json_decref(refs);
    json_decref(event);
    pb_flowset_free(set);
    pb_diags_free(&d);
    return rc;
}
