/*
 * engine/flow.h: flows, the YAML files that say which canonical events go to
 * which ERP, and how each ERP document is built from the event.
 *
 * A flow (docs/flows.md is the reference of the file format) names a source
 * connection and event types, a target connection, and an ordered list of
 * steps. Each step is one sink command (e.g. "invoice.create") whose
 * document is a YAML template in which every scalar leaf is a jq expression
 * over the canonical event. This module owns the model and its loading:
 * parsing (core/yamldoc.h), checking every key, every expression and every
 * cross-reference, and reporting all problems with file:line through
 * core/diag.h. Evaluating flows is engine/mapping.h's job.
 *
 * Lifetimes (nginx-style pools). A flow owns one arena that holds all its
 * strings, arrays and templates; a flow set owns its flows. Everything a
 * caller reads through these structs is borrowed from the set and lives until
 * pb_flowset_free().
 *
 * Threading. A flow set is built on one thread (pb_flowset_new + add_*) and is
 * then immutable: the first pb_mapper_new() freezes it, after which add_*
 * fails with PB_ERR_INVALID, and any number of threads may read it and
 * create their own mappers. Reloading configuration means building a new set
 * and moving workers over to it (a replay then uses the current version);
 * the old set is freed once no mapper of it remains.
 *
 * Versions. Each flow keeps the exact YAML text it was loaded from and its
 * SHA-256 ("sha256:<hex>") so that the engine can record which mapping
 * version produced a document, and the dashboard can show or diff it.
 *
 * Invariants after a successful add: names are unique in the set; step names
 * are unique in their flow and are jq identifiers; every expression compiled
 * with libjq (inside the same wrapper the mapper uses); every $refs.NAME
 * names an earlier step; every fx rate converts. A flow with any problem is
 * not added at all.
 *
 * Rejected designs.
 *   - One flow file holding several flows: line-numbered diagnostics, versions
 *     and the dashboard's "edit this flow" all become per-file anyway.
 *   - Letting expressions default when the flow file is wrong (unknown keys
 *     ignored, missing references treated as null): a typo in a mapping would
 *     then post a wrong document to a ledger instead of failing `check`.
 *   - Public opaque handles with getter functions for every field: the model
 *     is read-only data; const structs with documented fields are simpler and
 *     are what the CLI, the engine and the dashboard serialiser all want.
 */
#ifndef PB_ENGINE_FLOW_H
#define PB_ENGINE_FLOW_H

#include <jansson.h>
#include <stddef.h>

#include "core/diag.h"
#include "core/err.h"

#define PB_FLOW_NAME_MAX 64       /* flow, step and connection names, bytes without NUL */
#define PB_FLOW_STEPS_MAX 64      /* steps in one flow */
#define PB_FLOW_LEAVES_MAX 512    /* jq expressions in one step (when + reference + document) */
#define PB_FLOW_EXPRS_MAX 1024    /* jq expressions in one flow (bounds compile time, ~2 s) */
#define PB_FLOW_EXPR_MAX 8192     /* bytes in one jq expression (and in defs) */
#define PB_FLOW_REFERENCE_MAX 512 /* bytes in an evaluated reference */
#define PB_FLOWSET_FLOWS_MAX 1024 /* flows in one set */

struct pb_flowset;
struct pb_flow;
struct pb__arena;

/* ---- internal: the compiled shape of a step (read by engine/mapping.c) ---------- */

/* One jq expression of a step. */
struct pb__leaf {
    const char *expr;  /* the expression text as written in the file */
    const char *code;  /* what is compiled: expr with each $fx made a call to __pb_fx */
    const char *field; /* "when", "reference", or the document path ("LineItems[0].AccountCode") */
    int line;          /* line in the flow file */
    int malformed;     /* loading only: failed the bracket/string scan, not compiled */
};

enum pb__tnode_kind { PB__TNODE_LEAF, PB__TNODE_OBJECT, PB__TNODE_ARRAY };

/* A node of a document template. */
struct pb__tnode {
    enum pb__tnode_kind kind;
    const char *key; /* member name in the parent object; NULL in an array and at the root */
    size_t leaf;     /* LEAF: index into the step's leaves */
    const struct pb__tnode *kids; /* OBJECT / ARRAY: the members or elements, in file order */
    size_t n_kids;
};

/* ---- the model ---------------------------------------------------------------------- */

struct pb_flow_step {
    unsigned magic;             /* PB_FLOW_STEP_MAGIC */
    const char *name;           /* "contact": unique in the flow, a jq identifier */
    const char *command;        /* sink command, e.g. "contact.upsert" */
    const char *target;         /* sink connection of this step: its `target:`, else the flow's */
    const char *description;    /* free text, or NULL */
    const struct pb_flow *flow; /* the flow it belongs to */
    size_t index;               /* position in flow->steps */
    int line;                   /* line of the step in the flow file */

    /* internal (engine/mapping.c) */
    const struct pb__leaf *leaves; /* [when], reference, then the document's leaves in file order */
    size_t n_leaves;
    int has_when;              /* leaves[0] is the when clause */
    size_t reference_leaf;     /* index of the reference expression */
    struct pb__tnode document; /* the document template (root is an OBJECT) */
    const char *const
        *needs; /* earlier steps this one reads as $refs.NAME: it is skipped when any did not run */
    size_t n_needs;
    size_t leaf_base; /* position of leaves[0] among all leaves of the flow */
};
#define PB_FLOW_STEP_MAGIC 0x53544550u /* "STEP" */

struct pb_flow {
    unsigned magic;            /* PB_FLOW_MAGIC */
    const char *name;          /* unique in the set, e.g. "opayo-xero-payments" */
    const char *description;   /* free text, or NULL */
    const char *source;        /* connection events come from */
    const char *target;        /* sink connection the steps run against */
    const char *const *events; /* canonical event types this flow handles */
    size_t n_events;
    const struct pb_flow_step *steps; /* run in this order */
    size_t n_steps;
    const char *file; /* path (or name) the flow was loaded from */
    const char *text; /* the exact YAML text */
    size_t text_len;
    char version[80];             /* "sha256:" + 64 hex digits of text */
    const struct pb_flowset *set; /* the set that owns it */

    /* internal (engine/mapping.c) */
    const json_t *vars;        /* the vars block (json null when absent); reaches jq as $vars */
    const char *defs;          /* jq definitions put before every expression; "" when none */
    const char *defs_code;     /* defs as compiled ($fx rewritten like pb__leaf.code) */
    int defs_line;             /* line of defs: in the file */
    int has_fx;                /* an fx: block is present */
    const char *base_currency; /* fx.base_currency, or NULL */
    const json_t *rates;       /* fx.rates: object currency -> positive decimal string */
    int uses_fx;               /* some expression mentions $fx */
    size_t n_leaves;           /* expressions over all steps */
    size_t set_index;          /* position in the set (pb_flowset_flow) */
    struct pb__arena *arena;   /* owns everything above */
};
#define PB_FLOW_MAGIC 0x464c4f57u /* "FLOW" */

/* ---- flow sets ---------------------------------------------------------------------- */

/* A new, empty set; NULL when out of memory. */
struct pb_flowset *pb_flowset_new(void);

/* Load one flow file and add it to the set. Every problem found is appended
 * to `d` (may be NULL) with file:line; then nothing is added and the return
 * is PB_ERR_CONFIG (or PB_ERR_IO / PB_ERR_TOOBIG / PB_ERR_NOMEM). A flow whose
 * name is already in the set is a problem. PB_ERR_INVALID when the set is
 * frozen (a mapper exists). Loading compiles every jq expression, so it takes
 * some milliseconds per flow. */
enum pb_rc pb_flowset_add_file(struct pb_flowset *set, const char *path, struct pb_diags *d);

/* As pb_flowset_add_file() from YAML text in memory; `name` stands for the
 * file in diagnostics and in flow->file (e.g. "<dashboard>"). */
enum pb_rc pb_flowset_add_string(struct pb_flowset *set, const char *name, const char *text,
                                 struct pb_diags *d);

size_t pb_flowset_count(const struct pb_flowset *set);
/* The i-th flow in load order (borrowed), NULL when out of range. */
const struct pb_flow *pb_flowset_flow(const struct pb_flowset *set, size_t i);
/* The flow called `name`, or NULL. */
const struct pb_flow *pb_flowset_find(const struct pb_flowset *set, const char *name);

/* Iterate the flows that handle `event_type` from connection `source`, in load
 * order: start with prev = NULL, pass the last result to get the next; NULL
 * when there are no more. Either filter may be NULL to match any. */
const struct pb_flow *pb_flowset_next_match(const struct pb_flowset *set,
                                            const struct pb_flow *prev, const char *source,
                                            const char *event_type);

/* Free the set and its flows. No mapper of the set may remain. NULL is allowed. */
void pb_flowset_free(struct pb_flowset *set);

/* ---- flows ----------------------------------------------------------------------------- */

/* The step called `name`, or NULL. */
const struct pb_flow_step *pb_flow_step_find(const struct pb_flow *flow, const char *name);

/* 1 when the flow lists `event_type` in events:. */
int pb_flow_handles(const struct pb_flow *flow, const char *event_type);

/* The $fx value for `event` under this flow's fx: block, as a new reference in
 * *out: json null when the flow has no fx: block or the event has no
 * .payment.amount / .refund.amount; otherwise
 *   {"base_currency": "GBP", "currency": "EUR", "rate": "0.8571",
 *    "converted": true,
 *    "amount":   {"minor": 1071, "currency": "GBP", "decimal": "10.71"},
 *    "original": {"minor": 1250, "currency": "EUR", "decimal": "12.50"}}
 * with rate "1" and converted false when the currencies are equal. The
 * conversion is exact (core/money.h, half-even). PB_ERR_MAPPING (message names
 * the flow and the currency) when there is no rate for the event's currency,
 * the amount is malformed, or the result is out of range. */
enum pb_rc pb_flow_fx(const struct pb_flow *flow, const json_t *event, json_t **out,
                      struct pb_err *err);

/* ---- internal ----------------------------------------------------------------------------- */

/* Mark the set immutable (called by pb_mapper_new). Thread-safe. */
void pb__flowset_freeze(const struct pb_flowset *set);

#endif
