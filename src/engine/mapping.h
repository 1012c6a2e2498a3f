/*
 * engine/mapping.h: evaluating flows with libjq — the per-thread mapper, and
 * `paybridge map test`.
 *
 * A mapper turns (step, canonical event, refs of earlier steps) into the
 * step's decision to run, its reference (the xref key of the record it
 * creates) and its ERP document. docs/flows.md states the semantics; in
 * short: a `when` that is false or null skips the step; a step that reads
 * $refs.NAME is skipped when step NAME did not run; a document leaf that
 * evaluates to null is left out, and so is an object or array of the template
 * left empty; a leaf with no value or with several values is an error; a jq
 * runtime error is PB_ERR_MAPPING naming the flow, the step and the field.
 *
 * Threading. libjq 1.6 is not thread-safe within a jq_state, and its jv
 * values use non-atomic reference counts, so a mapper is strictly
 * single-threaded: the engine creates one per worker thread. Mappers share
 * nothing but the (immutable) flow set; each owns its jq states and its own
 * jv copies of every flow's vars.
 *
 * Cost. Compiling a jq program costs at least ~15 ms (libjq binds its
 * builtins on every compile), so a mapper compiles ONE program per flow, on
 * the flow's first evaluation on that thread (creating a mapper is free, and
 * flows a thread never sees are never compiled). The template compiles in
 * about 30 ms; the expression limits of engine/flow.h bound the worst case.
 * Each document is built by one object expression; when an evaluation fails,
 * the same program evaluates the step's expressions one by one to name the
 * exact field that failed.
 *
 * Ownership. pb_mapper_step() returns a malloc'ed reference and a new json_t
 * reference; the caller frees them (free(), json_decref()). Inputs are
 * borrowed for the duration of the call.
 */
#ifndef PB_ENGINE_MAPPING_H
#define PB_ENGINE_MAPPING_H

#include <jansson.h>
#include <stdio.h>

#include "core/diag.h"
#include "core/err.h"
#include "engine/flow.h"

struct pb_mapper;

/* A mapper for `set`, which is frozen from now on. NULL on failure
 * (PB_ERR_NOMEM). Cheap: flows are compiled on first use. Create it on any
 * thread, but use it on one thread only. */
struct pb_mapper *pb_mapper_new(const struct pb_flowset *set, struct pb_err *err);

/* Free the mapper and its jq states. NULL is allowed. */
void pb_mapper_free(struct pb_mapper *m);

/* Evaluate `step` for `event`.
 *   event     the canonical event (borrowed)
 *   refs      object step name -> ERP id (string) of the steps of this event
 *             that already ran; NULL = none
 *   event_id  paybridge's event id, reaches jq as $event_id (NULL -> null)
 *   today     "YYYY-MM-DD", reaches jq as $now (NULL -> null)
 * Out, on PB_OK: *run = 0 when the step is skipped (its when is false/null,
 * or it reads $refs.NAME of a step that did not run; *reference and *document
 * are then NULL), else 1 with *reference (malloc'ed, non-empty, at most
 * PB_FLOW_REFERENCE_MAX bytes) and *document (new reference, a JSON object).
 * Errors: PB_ERR_MAPPING with "flow F step S field P: <why>" (a jq error, a
 * leaf without a value or with several, a non-integer number in the document,
 * a missing FX rate, a reference that is not a string); PB_ERR_INVALID for a
 * step of another set; PB_ERR_NOMEM; PB_ERR_INTERNAL if the flow's program,
 * which loading compiled, fails to compile here. Outputs are NULL / 0 on
 * error. The first call for a flow compiles its program. */
enum pb_rc pb_mapper_step(struct pb_mapper *m, const struct pb_flow_step *step, const json_t *event,
                          const json_t *refs, const char *event_id, const char *today, int *run,
                          char **reference, json_t **document, struct pb_err *err);

/* pb_mapper_step that asks known(ctx, reference) (the engine: is it in the
 * xref?) once for a step that runs: when it returns 1 the result is PB_OK,
 * *run = 1, *reference set and *document NULL; otherwise exactly
 * pb_mapper_step. Where the answer is often yes (a find-or-create customer
 * step: most orders come from customers already in the ERP) the step's when
 * and reference are evaluated alone first and the document's jq, most of the
 * step's cost, is never run; where it is mostly no (an invoice: each
 * reference is new) the whole step is evaluated at once and known() asked
 * after, so a miss costs nothing more. The choice is made per step on this
 * mapper from the answers so far (should_probe in mapping.c). known may be
 * NULL (then exactly pb_mapper_step). */
enum pb_rc pb_mapper_step_unless(struct pb_mapper *m, const struct pb_flow_step *step,
                                 const json_t *event, const json_t *refs, const char *event_id,
                                 const char *today, int (*known)(void *ctx, const char *reference),
                                 void *ctx, int *run, char **reference, json_t **document,
                                 struct pb_err *err);

/* Only the step's `when` (and the $refs it needs): *run = 1 when the step
 * would run. Cheaper than pb_mapper_step (no reference, no document); the
 * engine uses it to pass over steps that do not apply to an event. */
enum pb_rc pb_mapper_when(struct pb_mapper *m, const struct pb_flow_step *step,
                          const json_t *event, const json_t *refs, const char *event_id,
                          const char *today, int *run, struct pb_err *err);

/* The first step of `flow` from index `from` on that runs for this event: its
 * `when` holds (and the $refs it reads are there), or evaluating its `when`
 * fails (no value, several, a jq error: that step's own job reports it).
 * *next = that index, or flow->n_steps when no step runs. Equivalent to
 * pb_mapper_when() on each step in turn, but the event is converted once and
 * all the whens are evaluated in one jq run; whens that only test the event's
 * type (mapping.c "type guards") are decided in C, without jq. Errors
 * (nothing evaluated):
 * PB_ERR_INVALID (not this mapper's flow, refs not an object, an event nested
 * too deeply), PB_ERR_NOMEM, PB_ERR_INTERNAL. */
/* 1 when `next`'s when is provably what `ran`'s was for the same event: both
 * have none, or both have the same expression text in the same flow, and
 * neither it nor the flow's defs can vary between two evaluations ($refs,
 * now/$now, input, $__loc__ not mentioned). The engine then knows that the
 * step after one that ran will run too (its needs aside) without evaluating
 * anything: opayo-xero's contact, invoice and payment all say `paid`.
 * `next` must be the step right after `ran`; the answer is worked out once
 * per mapper and step (a text scan of the defs). */
int pb_mapper_same_when(struct pb_mapper *m, const struct pb_flow_step *ran,
                        const struct pb_flow_step *next);

enum pb_rc pb_mapper_next(struct pb_mapper *m, const struct pb_flow *flow, size_t from,
                          const json_t *event, const json_t *refs, const char *event_id,
                          const char *today, size_t *next, struct pb_err *err);

/* Keeping events. pb_mapper_keep(m, event) promises that `event` will neither
 * change nor be freed until pb_mapper_unkeep_all(m): until then the mapper
 * converts it for jq (and computes its $fx) once, on first use, and every call
 * with this very pointer reuses that (a worker maps a job's step, then, after
 * the ERP call, looks for its next step with the same event). Optional: an
 * event not kept is converted on every call. PB_ERR_NOMEM (nothing kept) is
 * harmless. */
enum pb_rc pb_mapper_keep(struct pb_mapper *m, const json_t *event);
void pb_mapper_unkeep_all(struct pb_mapper *m);
/* Release one kept event (before it is freed), keeping the others: a worker
 * that runs an event's next step at once keeps that event's conversion. */
void pb_mapper_unkeep(struct pb_mapper *m, const json_t *event);

/* `paybridge map test FLOW.yaml SAMPLE.json`: load one flow file and one
 * sample canonical event, evaluate every step in order as the engine would
 * (refs of steps that ran are the placeholders "<NAME.id>"), and print to
 * `out` for each step whether it runs, its reference and its document as
 * pretty JSON, or the exact error. `today` is $now ("YYYY-MM-DD"; NULL = the
 * current UTC date). Returns PB_OK when every step evaluated (ran or was
 * skipped), PB_ERR_CONFIG when the flow file has problems (all printed),
 * PB_ERR_INVALID / PB_ERR_IO for an unreadable sample, or the first step's
 * error (PB_ERR_MAPPING); err holds the summary. */
enum pb_rc pb_flow_map_test(const char *flow_path, const char *sample_json_path, const char *today,
                            FILE *out, struct pb_err *err);

/* ---- internal -------------------------------------------------------------------- */

/* Compile every expression of `flow` (not yet in a set) exactly as a mapper
 * would and append each failure to `d` at the expression's line, with jq's
 * message. Returns the number of problems added. Used by the loader.
 * `one_by_one` (set when the flow already has other problems, so that its
 * template may be incomplete): compile each well-formed expression on its own
 * instead of the whole program first. */
size_t pb__mapping_check_flow(const struct pb_flow *flow, int one_by_one, struct pb_diags *d);

#endif
