/*
 * core/diag.h: a list of diagnostics ("file:line: message") for checking
 * configuration and flow files.
 *
 * Why it exists. A config checker that stops at the first problem makes the
 * operator fix one line, rerun, fix the next line, rerun... The loaders of
 * YAML documents (core/yamldoc.h) and flows (engine/flow.h) therefore keep
 * going after a problem and append every problem they find here, each with
 * the file and line it is about, and return one error code at the end.
 *
 * Ownership. A `struct pb_diags` owns its array; zero-initialise it
 * (`struct pb_diags d = {0};`) and release it with pb_diags_free(). Messages
 * are copied into fixed buffers and truncated when longer (the `file` field
 * keeps the END of a long path, which is the informative part).
 *
 * Limits. At most PB_DIAGS_MAX entries are kept: a file with ten thousand
 * problems is one big problem, and a list that could grow without bound is
 * banned by the house style. Entries beyond the limit (or that could not be
 * allocated) are counted in `dropped` and summarised by pb_diags_print().
 *
 * Threading. None: a list belongs to one load or check on one thread.
 *
 * Rejected designs.
 *   - A callback per problem: every caller would write the same collecting
 *     callback, and tests want to look at the list afterwards anyway.
 *   - Severity levels (warning / error): every entry here makes the file
 *     invalid. A checker that warns and loads anyway trains people to ignore
 *     its output.
 */
#ifndef PB_CORE_DIAG_H
#define PB_CORE_DIAG_H

#include <stddef.h>
#include <stdio.h>

#include "core/err.h"

/* Most entries kept by one list; further problems only count in `dropped`. */
#define PB_DIAGS_MAX 1000

struct pb_diag {
    char file[256]; /* file (or name) the problem is in; "" when none */
    int line;       /* 1-based line; 0 when unknown (printed without a line) */
    char msg[512];  /* what is wrong and how to fix it */
};

struct pb_diags {
    struct pb_diag *v; /* owned: the entries, in the order they were added */
    size_t n, cap;     /* entries used and allocated */
    size_t dropped;    /* problems not kept (over PB_DIAGS_MAX, or out of memory) */
};

/* Append a problem. `d` may be NULL (the problem is then ignored); `file`
 * may be NULL or ""; `line` 0 means unknown. Never fails: when the entry
 * cannot be stored it is counted in d->dropped. */
void pb_diags_add(struct pb_diags *d, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Number of problems seen, kept or dropped. */
size_t pb_diags_count(const struct pb_diags *d);

/* Print one problem per line: "file:line: message", "file: message" when
 * the line is unknown, or just "message" without a file; then, when some
 * were dropped, "... and N more problems". */
void pb_diags_print(const struct pb_diags *d, FILE *out);

/* Summarise the list into `err`: rc plus the first problem and how many
 * more there are ("flows/a.yaml:12: unknown key ... (and 3 more problems)").
 * Returns rc (PB_OK, and err untouched, when the list is empty). */
enum pb_rc pb_diags_to_err(const struct pb_diags *d, enum pb_rc rc, struct pb_err *err);

/* Free the entries and reset the list to empty; it can be used again. */
void pb_diags_free(struct pb_diags *d);

#endif
