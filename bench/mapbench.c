/*
 * bench/mapbench.c: pb_mapbench, a micro-benchmark of the flow mapper (engine/
 * mapping.c) as the engine's workers use it for one event: for every step that
 * runs, pb_mapper_step_unless(), then the next step: pb_mapper_when() over the
 * following steps until one runs, or with MAPBENCH_NEXT=1 as engine.c
 * next_runnable does it (pb_mapper_same_when, else pb_mapper_next).
 * MAPBENCH_KNOWN=contact,... makes those steps' references xref hits (no
 * document). With MAPBENCH_NEXT the steps of one event share one kept tree,
 * as the engine's chained jobs do (converted for jq once per event). It prints the CPU time per event. Owns nothing but itself; used
 * by hand while profiling (`perf record` on it).
 *
 *   pb_mapbench FLOW.yaml EVENT.json [ITERATIONS]
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "engine/flow.h"
#include "engine/mapping.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* MAPBENCH_KNOWN=contact,...: the xref knows these steps' references (in
 * the e2e bench almost every contact is already in Xero) */
static int known(void *ctx, const char *reference)
{
    const char *list = getenv("MAPBENCH_KNOWN"), *name = ctx;
    size_t n = strlen(name);
    (void)reference;
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p = end ? end + 1 : p + len;
    }
    return 0;
}

static int needs_met(const struct pb_flow_step *st, const json_t *refs)
{
    for (size_t k = 0; k < st->n_needs; k++)
        if (!json_is_string(json_object_get(refs, st->needs[k])))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    struct pb_flowset *set = pb_flowset_new();
    struct pb_diags d = {0};
    struct pb_err err = {0};
    json_error_t je;
    long iters = argc > 3 ? strtol(argv[3], NULL, 10) : 2000;
    if (argc < 3 || !set || pb_flowset_add_file(set, argv[1], &d) != PB_OK) {
        fprintf(stderr, "usage: pb_mapbench FLOW.yaml EVENT.json [ITERATIONS] (the flow must load)\n");
        return 2;
    }
    json_t *event = json_load_file(argv[2], 0, &je);
    if (!event) {
        fprintf(stderr, "%s: %s\n", argv[2], je.text);
        return 2;
    }
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_mapper *m = pb_mapper_new(set, &err);
    size_t runs = 0, whens = 0;
    double t0 = 0, t_step[64] = {0}, t_when[64] = {0};
    for (long it = -1; it < iters; it++) {
        if (it == 0)
            t0 = now_s(); /* iteration -1 compiles */
        json_t *refs = json_object();
        size_t s = 0;
        /* engine.c: the first job of an event loads it (prepare); the steps
         * after it get the same tree through run_batch's chain, still kept
         * by the mapper, until the chain ends (pb_mapper_unkeep_all) */
        json_t *chained = getenv("MAPBENCH_NEXT") ? json_deep_copy(event) : NULL;
        while (s < f->n_steps) {
            int run = 0;
            char *ref = NULL;
            json_t *doc = NULL;
            /* without MAPBENCH_NEXT each step loads its own copy */
            json_t *ev = chained ? json_incref(chained) : json_deep_copy(event);
            if (chained)
                pb_mapper_keep(m, ev);
            double c0 = now_s();
            enum pb_rc src = pb_mapper_step_unless(m, &f->steps[s], ev, refs, "42", "2026-11-21",
                                                   known, (void *)f->steps[s].name, &run, &ref,
                                                   &doc, &err);
            if (it >= 0)
                t_step[s] += now_s() - c0;
            if (src != PB_OK) {
                fprintf(stderr, "step %s: %s\n", f->steps[s].name, err.msg);
                return 1;
            }
            runs++;
            if (run)
                json_object_set_new(refs, f->steps[s].name, json_string("00000000-erp-id"));
            free(ref);
            json_decref(doc);
            if (getenv("MAPBENCH_NEXT")) {
                size_t nx = s + 1;
                double c1 = now_s();
                /* engine.c next_runnable: the same when, else one jq walk */
                if (s + 1 < f->n_steps && run &&
                    pb_mapper_same_when(m, &f->steps[s], &f->steps[s + 1]) &&
                    needs_met(&f->steps[s + 1], refs))
                    ;
                else if (pb_mapper_next(m, f, s + 1, ev, refs, "42", "2026-11-21", &nx, &err)) {
                    fprintf(stderr, "next: %s\n", err.msg);
                    return 1;
                }
                if (it >= 0)
                    t_when[s] += now_s() - c1;
                s = nx;
                json_decref(ev);
                continue;
            }
            for (s = s + 1; s < f->n_steps; s++) {
                double c1 = now_s();
                enum pb_rc wrc =
                    pb_mapper_when(m, &f->steps[s], ev, refs, "42", "2026-11-21", &run, &err);
                if (it >= 0)
                    t_when[s] += now_s() - c1;
                if (wrc != PB_OK || run)
                    break;
                whens++;
            }
            json_decref(ev);
        }
        if (chained) {
            pb_mapper_unkeep_all(m);
            json_decref(chained);
        }
        json_decref(refs);
    }
    double dt = now_s() - t0;
    printf("{\"iterations\":%ld,\"us_per_event\":%.1f,\"steps_per_event\":%.2f,\"whens_per_event\":%.2f}\n",
           iters, dt * 1e6 / (double)iters, (double)runs / (double)(iters + 1),
           (double)whens / (double)(iters + 1));
    for (size_t k = 0; k < f->n_steps && k < 64; k++)
        fprintf(stderr, "  step %-20s step %6.1f us  when %6.1f us per event\n", f->steps[k].name,
                t_step[k] * 1e6 / (double)iters, t_when[k] * 1e6 / (double)iters);
    pb_mapper_free(m);
    json_decref(event);
    pb_flowset_free(set);
    return 0;
}
