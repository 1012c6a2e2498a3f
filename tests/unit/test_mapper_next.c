/*
 * tests/unit/test_mapper_next.c: pb_mapper_next() and pb_mapper_keep() of
 * engine/mapping.c (the engine's fast path for "which step runs next"): for
 * every shipped flow, every sample event, every starting step and several
 * sets of refs, pb_mapper_next() must name the same step as calling
 * pb_mapper_when() on each step in turn, and a kept event must map to the
 * same reference and document as one converted on every call, and
 * pb_mapper_step_unless() must equal pb_mapper_step() unless the reference
 * is known (then no document). Also: a when
 * that fails (a jq error, no value) is returned as the next step, so that its
 * own job reports the error. Fixtures via PB_SOURCE_DIR (set by ctest).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/diag.h"
#include "engine/flow.h"
#include "engine/mapping.h"

#define TODAY "2026-11-30"

static void source_path(char *buf, size_t len, const char *rel)
{
    const char *src = getenv("PB_SOURCE_DIR");
    snprintf(buf, len, "%s/%s", src && *src ? src : ".", rel);
}

static json_t *event(const char *name)
{
    char path[1024], rel[256];
    json_error_t je;
    json_t *e;
    snprintf(rel, sizeof(rel), "tests/fixtures/events/%s", name);
    source_path(path, sizeof(path), rel);
    e = json_load_file(path, 0, &je);
    if (!e)
        fail_msg("%s:%d: %s", path, je.line, je.text);
    return e;
}

static struct pb_flowset *set_from_file(const char *rel)
{
    char path[1024];
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    assert_non_null(set);
    source_path(path, sizeof(path), rel);
    if (pb_flowset_add_file(set, path, &d) != PB_OK)
        fail_msg("%s does not load", path);
    return set;
}

/* A flow set of one probe flow given as YAML text. */
static struct pb_flowset *set_from_yaml(const char *yaml)
{
    char path[] = "/tmp/pb-probe-flow-XXXXXX";
    struct pb_diags d = {0};
    struct pb_flowset *set = pb_flowset_new();
    size_t len = strlen(yaml);
    int fd = mkstemp(path);
    assert_non_null(set);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, yaml, len), (ssize_t)len);
    close(fd);
    if (pb_flowset_add_file(set, path, &d) != PB_OK)
        fail_msg("the probe flow does not load");
    unlink(path);
    return set;
}

static const char *const flows[] = {"flows/opayo-xero.yaml", "flows/opayo-syspro.yaml",
                                    "flows/paytrace-sagex3.yaml"};
static const char *const events[] = {
    "opayo-payment-ok-gbp.json",   "opayo-payment-eur.json",      "opayo-payment-jpy.json",
    "opayo-payment-chf.json",      "opayo-payment-minimal.json",  "opayo-payment-declined.json",
    "opayo-payment-rejected.json", "opayo-payment-odd-status.json", "opayo-refund-enriched.json",
    "opayo-chargeback-won.json",   "paytrace-sale-lines.json"};

/* the reference answer: pb_mapper_when on each step in turn (engine.c before) */
static size_t next_by_when(struct pb_mapper *m, const struct pb_flow *f, size_t from,
                           const json_t *ev, const json_t *refs)
{
    for (size_t i = from; i < f->n_steps; i++) {
        int run = 0;
        struct pb_err err = {0};
        if (pb_mapper_when(m, &f->steps[i], ev, refs, "7", TODAY, &run, &err) != PB_OK || run)
            return i;
    }
    return f->n_steps;
}

static void test_next_equals_when_loop(void **state)
{
    (void)state;
    size_t compared = 0, found_runnable = 0;
    for (size_t fi = 0; fi < sizeof(flows) / sizeof(flows[0]); fi++) {
        struct pb_flowset *set = set_from_file(flows[fi]);
        const struct pb_flow *f = pb_flowset_flow(set, 0);
        struct pb_err err = {0};
        struct pb_mapper *m = pb_mapper_new(set, &err);
        assert_non_null(m);
        for (size_t ei = 0; ei < sizeof(events) / sizeof(events[0]); ei++) {
            json_t *ev = event(events[ei]);
            /* refs: none, then the steps before k as if they had run */
            for (size_t k = 0; k <= f->n_steps; k++) {
                json_t *refs = json_object();
                for (size_t j = 0; j < k; j++)
                    json_object_set_new(refs, f->steps[j].name, json_string("erp-id-1"));
                for (size_t from = 0; from <= f->n_steps; from++) {
                    size_t want = next_by_when(m, f, from, ev, refs), got = 999;
                    for (int keep = 0; keep < 2; keep++) {
                        if (keep)
                            assert_int_equal(pb_mapper_keep(m, ev), PB_OK);
                        assert_int_equal(
                            pb_mapper_next(m, f, from, ev, refs, "7", TODAY, &got, &err), PB_OK);
                        if (got != want)
                            fail_msg("%s %s refs of %zu steps from %zu (kept %d): next %zu, "
                                     "pb_mapper_when says %zu",
                                     flows[fi], events[ei], k, from, keep, got, want);
                        pb_mapper_unkeep_all(m);
                    }
                    compared++;
                    found_runnable += want < f->n_steps;
                }
                json_decref(refs);
            }
            json_decref(ev);
        }
        pb_mapper_free(m);
        pb_flowset_free(set);
    }
    assert_true(compared > 100);
    assert_true(found_runnable > 10); /* not only "none" */
}

/* the payment: contact runs first; after the payment step nothing runs */
static void test_next_opayo_xero_payment(void **state)
{
    (void)state;
    struct pb_flowset *set = set_from_file("flows/opayo-xero.yaml");
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    json_t *ev = event("opayo-payment-ok-gbp.json");
    json_t *refs = json_object();
    size_t next = 999;
    assert_int_equal(pb_mapper_next(m, f, 0, ev, refs, "7", TODAY, &next, &err), PB_OK);
    assert_string_equal(f->steps[next].name, "contact");
    json_object_set_new(refs, "contact", json_string("c-1"));
    assert_int_equal(pb_mapper_next(m, f, next + 1, ev, refs, "7", TODAY, &next, &err), PB_OK);
    assert_string_equal(f->steps[next].name, "invoice");
    json_object_set_new(refs, "invoice", json_string("i-1"));
    assert_int_equal(pb_mapper_next(m, f, next + 1, ev, refs, "7", TODAY, &next, &err), PB_OK);
    assert_string_equal(f->steps[next].name, "payment");
    json_object_set_new(refs, "payment", json_string("p-1"));
    assert_int_equal(pb_mapper_next(m, f, next + 1, ev, refs, "7", TODAY, &next, &err), PB_OK);
    assert_int_equal(next, f->n_steps);
    json_decref(refs);
    json_decref(ev);
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* a when that errors or yields nothing: that step is next (its job reports it) */
static void test_next_stops_at_failing_when(void **state)
{
    (void)state;
    static const char text[] =
        "flow: f\nsource: s\nevents: [payment.succeeded]\ntarget: t\nsteps:\n"
        "  - name: a\n    command: x.create\n    when: 'false'\n    reference: '\"a\"'\n"
        "    document: {A: '1'}\n"
        "  - name: b\n    command: x.create\n    when: '.payment.amount.minor | error(\"boom\")'\n"
        "    reference: '\"b\"'\n    document: {B: '1'}\n"
        "  - name: c\n    command: x.create\n    when: 'empty'\n    reference: '\"c\"'\n"
        "    document: {C: '1'}\n"
        "  - name: d\n    command: x.create\n    reference: '\"d\"'\n    document: {D: '1'}\n";
    struct pb_flowset *set = pb_flowset_new();
    struct pb_diags d = {0};
    struct pb_err err = {0};
    assert_int_equal(pb_flowset_add_string(set, "f.yaml", text, &d), PB_OK);
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_mapper *m = pb_mapper_new(set, &err);
    json_t *ev = event("opayo-payment-ok-gbp.json");
    size_t next = 999;
    assert_int_equal(pb_mapper_next(m, f, 0, ev, NULL, "7", TODAY, &next, &err), PB_OK);
    assert_int_equal(next, 1); /* b's when raises an error */
    assert_int_equal(pb_mapper_next(m, f, 2, ev, NULL, "7", TODAY, &next, &err), PB_OK);
    assert_int_equal(next, 2); /* c's when yields no value */
    assert_int_equal(pb_mapper_next(m, f, 3, ev, NULL, "7", TODAY, &next, &err), PB_OK);
    assert_int_equal(next, 3); /* d has no when */
    assert_int_equal(pb_mapper_next(m, f, 4, ev, NULL, "7", TODAY, &next, &err), PB_OK);
    assert_int_equal(next, 4);
    json_decref(ev);
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* a kept event maps exactly as one converted on every call */
static void test_keep_same_documents(void **state)
{
    (void)state;
    struct pb_flowset *set = set_from_file("flows/opayo-xero.yaml");
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    for (size_t ei = 0; ei < sizeof(events) / sizeof(events[0]); ei++) {
        json_t *ev = event(events[ei]);
        json_t *refs = json_object();
        for (size_t s = 0; s < f->n_steps; s++)
            json_object_set_new(refs, f->steps[s].name, json_string("erp-id-1"));
        for (size_t s = 0; s < f->n_steps; s++) {
            int run[2] = {0, 0};
            char *ref[2] = {NULL, NULL};
            json_t *doc[2] = {NULL, NULL};
            enum pb_rc rc[2];
            struct pb_err e[2] = {{0}, {0}};
            for (int keep = 0; keep < 2; keep++) {
                if (keep)
                    pb_mapper_keep(m, ev);
                rc[keep] = pb_mapper_step(m, &f->steps[s], ev, refs, "7", TODAY, &run[keep],
                                          &ref[keep], &doc[keep], &e[keep]);
            }
            pb_mapper_unkeep_all(m);
            assert_int_equal(rc[0], rc[1]);
            assert_int_equal(run[0], run[1]);
            assert_string_equal(e[0].msg, e[1].msg);
            if (ref[0])
                assert_string_equal(ref[0], ref[1]);
            assert_true(doc[0] ? json_equal(doc[0], doc[1]) : doc[1] == NULL);
            for (int k = 0; k < 2; k++) {
                free(ref[k]);
                json_decref(doc[k]);
            }
        }
        json_decref(refs);
        json_decref(ev);
    }
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* pb_mapper_step_unless: with an unknown reference it is pb_mapper_step,
 * field for field and error for error (every shipped flow, event and step);
 * with a known one the reference is the same and no document is built; a
 * step that does not run never asks. */
struct asked {
    int calls, answer;
    char last[256];
};

static int known_cb(void *ctx, const char *reference)
{
    struct asked *a = ctx;
    a->calls++;
    snprintf(a->last, sizeof(a->last), "%s", reference);
    return a->answer;
}

static void test_step_unless(void **state)
{
    (void)state;
    for (size_t fi = 0; fi < sizeof(flows) / sizeof(flows[0]); fi++) {
        struct pb_flowset *set = set_from_file(flows[fi]);
        const struct pb_flow *f = pb_flowset_flow(set, 0);
        struct pb_err err = {0};
        struct pb_mapper *m = pb_mapper_new(set, &err);
        size_t hits = 0;
        for (size_t ei = 0; ei < sizeof(events) / sizeof(events[0]); ei++) {
            json_t *ev = event(events[ei]);
            json_t *refs = json_object();
            for (size_t s = 0; s < f->n_steps; s++)
                json_object_set_new(refs, f->steps[s].name, json_string("erp-id-1"));
            for (size_t s = 0; s < f->n_steps; s++) {
                int run[3] = {0, 0, 0};
                char *ref[3] = {NULL, NULL, NULL};
                json_t *doc[3] = {NULL, NULL, NULL};
                enum pb_rc rc[3];
                struct pb_err e[3] = {{0}, {0}, {0}};
                struct asked miss = {0, 0, ""}, hit = {0, 1, ""};
                rc[0] = pb_mapper_step(m, &f->steps[s], ev, refs, "7", TODAY, &run[0], &ref[0],
                                       &doc[0], &e[0]);
                rc[1] = pb_mapper_step_unless(m, &f->steps[s], ev, refs, "7", TODAY, known_cb,
                                              &miss, &run[1], &ref[1], &doc[1], &e[1]);
                rc[2] = pb_mapper_step_unless(m, &f->steps[s], ev, refs, "7", TODAY, known_cb,
                                              &hit, &run[2], &ref[2], &doc[2], &e[2]);
                /* unknown: exactly pb_mapper_step */
                assert_int_equal(rc[0], rc[1]);
                assert_int_equal(run[0], run[1]);
                assert_string_equal(e[0].msg, e[1].msg);
                assert_true(ref[0] ? ref[1] && strcmp(ref[0], ref[1]) == 0 : ref[1] == NULL);
                assert_true(doc[0] ? json_equal(doc[0], doc[1]) : doc[1] == NULL);
                if (rc[0] == PB_OK && run[0]) {
                    /* it ran: asked once, with the step's reference */
                    assert_int_equal(miss.calls, 1);
                    assert_string_equal(miss.last, ref[0]);
                    assert_int_equal(rc[2], PB_OK);
                    assert_int_equal(run[2], 1);
                    assert_string_equal(ref[2], ref[0]);
                    assert_null(doc[2]);
                    hits++;
                } else if (rc[0] == PB_OK) {
                    /* skipped: never asked */
                    assert_int_equal(miss.calls, 0);
                    assert_int_equal(hit.calls, 0);
                    assert_int_equal(run[2], 0);
                }
                for (int k = 0; k < 3; k++) {
                    free(ref[k]);
                    json_decref(doc[k]);
                }
            }
            json_decref(refs);
            json_decref(ev);
        }
        assert_true(hits > 0);
        pb_mapper_free(m);
        pb_flowset_free(set);
    }
}

/* A step whose answers are always "no" stops being evaluated in two parts
 * (should_probe), and a step whose answers turn to "yes" starts again; either
 * way each call asks exactly once and returns what pb_mapper_step returns. */
static void test_step_unless_adapts(void **state)
{
    (void)state;
    struct pb_flowset *set = set_from_file("flows/opayo-xero.yaml");
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    const struct pb_flow_step *inv = &f->steps[1];
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    json_t *ev = event("opayo-payment-ok-gbp.json");
    json_t *refs = json_pack("{s:s}", "contact", "c-1");
    int run0 = 0;
    char *ref0 = NULL;
    json_t *doc0 = NULL;
    assert_string_equal(inv->name, "invoice");
    assert_int_equal(pb_mapper_step(m, inv, ev, refs, "7", TODAY, &run0, &ref0, &doc0, &err),
                     PB_OK);
    assert_non_null(doc0);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 300; i++) {
            struct asked a = {0, round, ""};
            int run = 0;
            char *ref = NULL;
            json_t *doc = NULL;
            assert_int_equal(pb_mapper_step_unless(m, inv, ev, refs, "7", TODAY, known_cb, &a,
                                                   &run, &ref, &doc, &err),
                             PB_OK);
            assert_int_equal(run, 1);
            assert_int_equal(a.calls, 1);
            assert_string_equal(ref, ref0);
            if (round == 0)
                assert_true(json_equal(doc, doc0));
            else
                assert_null(doc);
            free(ref);
            json_decref(doc);
        }
    }
    free(ref0);
    json_decref(doc0);
    json_decref(refs);
    json_decref(ev);
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* pb_mapper_same_when: where it says the step after one that ran runs too
 * (its needs met), pb_mapper_next agrees, for every shipped flow and sample
 * event; and it does say so for opayo-xero's contact -> invoice -> payment. */
static void test_same_when(void **state)
{
    (void)state;
    size_t claimed = 0;
    struct pb_err err0 = {0};
    for (size_t fi = 0; fi < sizeof(flows) / sizeof(flows[0]); fi++) {
        struct pb_flowset *set = set_from_file(flows[fi]);
        const struct pb_flow *f = pb_flowset_flow(set, 0);
        struct pb_err err = {0};
        struct pb_mapper *m = pb_mapper_new(set, &err);
        for (size_t ei = 0; ei < sizeof(events) / sizeof(events[0]); ei++) {
            json_t *ev = event(events[ei]);
            json_t *refs = json_object();
            for (size_t s = 0; s < f->n_steps; s++)
                json_object_set_new(refs, f->steps[s].name, json_string("erp-id-1"));
            for (size_t k = 0; k + 1 < f->n_steps; k++) {
                int run = 0;
                size_t next = 99;
                if (pb_mapper_when(m, &f->steps[k], ev, refs, "7", TODAY, &run, &err) != PB_OK ||
                    !run || !pb_mapper_same_when(m, &f->steps[k], &f->steps[k + 1]))
                    continue;
                assert_int_equal(
                    pb_mapper_next(m, f, k + 1, ev, refs, "7", TODAY, &next, &err), PB_OK);
                assert_int_equal(next, k + 1);
                claimed++;
            }
            json_decref(refs);
            json_decref(ev);
        }
        pb_mapper_free(m);
        pb_flowset_free(set);
    }
    assert_true(claimed > 0);
    {
        /* whens that read $refs, or call a def that reads the clock, can change */
        static const char yaml[] =
            "flow: probe\nsource: s\ntarget: t\nevents: [payment.succeeded]\n"
            "defs: |\n"
            "  def fresh: .occurred_at // $now;\n"
            "  def paid: .type == \"payment.succeeded\";\n"
            "  def late: fresh > \"2026\";\n"
            "steps:\n"
            "  - {name: a, command: x.create, reference: '\"a\"', document: {A: '1'}}\n"
            "  - {name: b, command: x.create, when: '$refs.a == null', reference: '\"b\"', document: {B: '1'}}\n"
            "  - {name: c, command: x.create, when: '$refs.a == null', reference: '\"c\"', document: {C: '1'}}\n"
            "  - {name: d, command: x.create, when: 'late', reference: '\"d\"', document: {D: '1'}}\n"
            "  - {name: e, command: x.create, when: 'late', reference: '\"e\"', document: {E: '1'}}\n"
            "  - {name: f, command: x.create, when: 'paid', reference: '\"f\"', document: {F: '1'}}\n"
            "  - {name: g, command: x.create, when: 'paid', reference: '\"g\"', document: {G: '1'}}\n";
        struct pb_flowset *set = set_from_yaml(yaml);
        const struct pb_flow *f = pb_flowset_flow(set, 0);
        struct pb_mapper *pm = pb_mapper_new(set, &err0);
        for (int twice = 0; twice < 2; twice++) { /* worked out, then remembered */
            assert_false(pb_mapper_same_when(pm, &f->steps[0], &f->steps[1])); /* no when, a when */
            assert_false(pb_mapper_same_when(pm, &f->steps[1], &f->steps[2])); /* $refs */
            assert_false(pb_mapper_same_when(pm, &f->steps[3], &f->steps[4])); /* late -> fresh -> $now */
            assert_true(pb_mapper_same_when(pm, &f->steps[5], &f->steps[6]));  /* paid alone */
            assert_false(pb_mapper_same_when(pm, &f->steps[4], &f->steps[5])); /* different whens */
            assert_false(pb_mapper_same_when(pm, &f->steps[4], &f->steps[6])); /* not adjacent */
        }
        pb_mapper_free(pm);
        pb_flowset_free(set);
    }
    {
        struct pb_flowset *set = set_from_file("flows/opayo-xero.yaml");
        const struct pb_flow *f = pb_flowset_flow(set, 0);
        struct pb_mapper *pm = pb_mapper_new(set, &err0);
        assert_true(pb_mapper_same_when(pm, &f->steps[0], &f->steps[1]));  /* contact, invoice */
        assert_true(pb_mapper_same_when(pm, &f->steps[1], &f->steps[2]));  /* invoice, payment */
        assert_false(pb_mapper_same_when(pm, &f->steps[2], &f->steps[3])); /* payment, credit */
        pb_mapper_free(pm);
        pb_flowset_free(set);
    }
}

/* The step fails to map, with no document, and the message has both texts. */
static void expect_mapping_error(struct pb_mapper *m, const struct pb_flow_step *st,
                                 const json_t *ev, const char *where, const char *what)
{
    struct pb_err err = {0};
    json_t *refs = json_object(), *doc = NULL;
    char *ref = NULL;
    int run = 0;
    assert_int_equal(pb_mapper_step(m, st, ev, refs, "7", TODAY, &run, &ref, &doc, &err),
                     PB_ERR_MAPPING);
    assert_null(doc);
    if (!strstr(err.msg, where) || !strstr(err.msg, what))
        fail_msg("step %s: %s (want \"%s\" and \"%s\")", st->name, err.msg, where, what);
    free(ref);
    json_decref(refs);
}

/* A probe flow given as YAML text, a mapper for it and the sample payment. */
struct probe {
    struct pb_flowset *set;
    const struct pb_flow *f;
    struct pb_mapper *m;
    json_t *ev, *refs;
};

static void probe_open(struct probe *p, const char *yaml)
{
    struct pb_err err = {0};
    p->set = set_from_yaml(yaml);
    p->f = pb_flowset_flow(p->set, 0);
    p->m = pb_mapper_new(p->set, &err);
    p->ev = event("opayo-payment-ok-gbp.json");
    p->refs = json_object();
    assert_non_null(p->m);
}

static void probe_close(struct probe *p)
{
    json_decref(p->refs);
    json_decref(p->ev);
    pb_mapper_free(p->m);
    pb_flowset_free(p->set);
}

/* Step k of the probe maps (else the test fails with the message): its
 * document, its reference in *ref and whether it runs in *run (the
 * caller's to free; run may be NULL). */
static json_t *probe_step(struct probe *p, size_t k, char **ref, int *run)
{
    struct pb_err err = {0};
    json_t *doc = NULL;
    int r = 0;
    *ref = NULL;
    if (pb_mapper_step(p->m, &p->f->steps[k], p->ev, p->refs, "7", TODAY, &r, ref, &doc, &err) !=
        PB_OK)
        fail_msg("step %s: %s", p->f->steps[k].name, err.msg);
    if (run)
        *run = r;
    return doc;
}

/* Leaves of a step with the same text are evaluated once (mapping.c "Common
 * leaves"): the document is the same, a shared leaf that fails still fails
 * the step with its message, and leaves that must not be shared are not. */
static void test_common_leaves(void **state)
{
    (void)state;
    static const char yaml[] =
        "flow: probe\nsource: s\ntarget: t\nevents: [payment.succeeded]\n"
        "defs: |\n"
        "  def day: (.occurred_at // \"\")[0:10] | if length == 10 then . else $now end;\n"
        "  def where: $__loc__.line;\n"
        "steps:\n"
        "  - {name: a, command: x.create, reference: '.payment.reference',\n"
        "     document: {R: '.payment.reference', D: 'day', E: 'day', N: '.nothing', M: '.nothing',\n"
        "                L: [{X: '.payment.reference'}, {X: 'day'}]}}\n"
        "  - {name: b, command: x.create, reference: '\"b\"', document: {A: '$__loc__.line', B: '$__loc__.line', C: 'where', D: 'where'}}\n"
        "  - {name: c, command: x.create, reference: '\"c\"', document: {A: '(1, 2)', B: '(1, 2)'}}\n"
        "  - {name: d, command: x.create, reference: '\"d\"', document: {A: 'error(\"boom\")', B: 'error(\"boom\")'}}\n"
        "  - {name: e, command: x.create, reference: '\"e\"', document: {A: 'empty', B: 'empty'}}\n";
    struct probe p;
    json_t *doc;
    char *ref;
    int run = 0;
    probe_open(&p, yaml);

    doc = probe_step(&p, 0, &ref, &run);
    assert_true(run);
    assert_string_equal(ref, "ORDER-10023");
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"D\":\"2026-11-21\",\"E\":\"2026-11-21\",\"L\":[{\"X\":\"ORDER-10023\"},"
                              "{\"X\":\"2026-11-21\"}],\"R\":\"ORDER-10023\"}");
    free(text);
    free(ref);
    json_decref(doc);

    /* $__loc__ is where the text is: the two leaves differ, shared or not */
    doc = probe_step(&p, 1, &ref, NULL);
    assert_true(json_is_integer(json_object_get(doc, "A")));
    assert_true(json_integer_value(json_object_get(doc, "A")) !=
                json_integer_value(json_object_get(doc, "B")));
    assert_true(json_integer_value(json_object_get(doc, "C")) ==
                json_integer_value(json_object_get(doc, "D"))); /* the same def */
    free(ref);
    json_decref(doc);

    /* several values, an error, no value: the step fails and names the field */
    static const char *const want[] = {"more than one value", "boom", "no value"};
    for (size_t k = 2; k <= 4; k++)
        expect_mapping_error(p.m, &p.f->steps[k], p.ev, "field A", want[k - 2]);
    probe_close(&p);
}

/* Whens that test the event's type are decided in C by pb_mapper_next
 * (mapping.c "type guards"); what is not exactly such a test goes to jq. For
 * every step of a probe flow and two events, pb_mapper_next from that step
 * must agree with the step's own when. Each when below is true or false for
 * a payment in a way a careless reading of it would get wrong. */
static void test_type_guards(void **state)
{
    (void)state;
    static const char yaml[] =
        "flow: probe\nsource: s\ntarget: t\nevents: [payment.succeeded, refund.succeeded]\n"
        "defs: |\n"
        "  def refunded: .type == \"refund.succeeded\";\n"
        "  def twice: .type == \"refund.succeeded\";\n"
        "  # the later definition is the one jq uses\n"
        "  def twice: .type == \"payment.succeeded\";\n"
        "  def either: (refunded) or \"payment.succeeded\" == .type; # a comment\n"
        "  def takes($t): .type == $t;\n"
        "steps:\n"
        "  - {name: a, command: x.create, when: 'refunded', reference: '\"a\"', document: {A: '1'}}\n"
        "  - {name: b, command: x.create, when: 'twice', reference: '\"b\"', document: {A: '1'}}\n"
        "  - {name: c, command: x.create, when: '.type == \"refund.succeeded\" | not', reference: '\"c\"', document: {A: '1'}}\n"
        "  - {name: d, command: x.create, when: '.type == \"refund.succeeded\" or true', reference: '\"d\"', document: {A: '1'}}\n"
        "  - {name: e, command: x.create, when: 'either', reference: '\"e\"', document: {A: '1'}}\n"
        "  - {name: f, command: x.create, when: 'takes(\"payment.succeeded\")', reference: '\"f\"', document: {A: '1'}}\n"
        "  - {name: g, command: x.create, when: '.type == \"refund\\u002esucceeded\"', reference: '\"g\"', document: {A: '1'}}\n"
        "  - {name: h, command: x.create, when: '(.type == \"chargeback.won\") # only chargebacks', reference: '\"h\"', document: {A: '1'}}\n";
    static const int payment_runs[] = {0, 1, 1, 1, 1, 1, 0, 0};
    struct pb_flowset *set = set_from_yaml(yaml);
    const struct pb_flow *f = pb_flowset_flow(set, 0);
    struct pb_err err = {0};
    struct pb_mapper *m = pb_mapper_new(set, &err);
    static const char *const evs[] = {"opayo-payment-ok-gbp.json", "opayo-refund-enriched.json"};
    assert_int_equal(f->n_steps, sizeof(payment_runs) / sizeof(payment_runs[0]));
    for (size_t ei = 0; ei < 2; ei++) {
        json_t *ev = event(evs[ei]), *refs = json_object();
        for (size_t k = 0; k < f->n_steps; k++) {
            size_t next = 99;
            int run = -1;
            assert_int_equal(pb_mapper_when(m, &f->steps[k], ev, refs, "7", TODAY, &run, &err), PB_OK);
            if (ei == 0 && run != payment_runs[k])
                fail_msg("step %s: the when is %d for a payment", f->steps[k].name, run);
            assert_int_equal(pb_mapper_next(m, f, k, ev, refs, "7", TODAY, &next, &err), PB_OK);
            assert_int_equal(next, next_by_when(m, f, k, ev, refs));
        }
        json_decref(refs);
        json_decref(ev);
    }
    pb_mapper_free(m);
    pb_flowset_free(set);
}

/* ascii_downcase, ascii_upcase, trim, ltrim and rtrim run in C (mapping.c
 * "Native builtins"): the same results as jq 1.6's own definitions (kept
 * here as the reference) and jq 1.7.1's trim, the same errors, and debug and
 * input behave for flows as they did before. */
static void test_native_builtins(void **state)
{
    (void)state;
    static const char yaml[] =
        "flow: probe\nsource: s\ntarget: t\nevents: [payment.succeeded]\n"
        "defs: |\n"
        "  def words: [\"Ann@Example.COM\", \"\", \"\\u00c0B\\u00c7 xY [Z]@`{\", \"abc\", \"\\u0000Z\\u00e9\"];\n"
        "  def down16: explode | map(if 65 <= . and . <= 90 then . + 32 else . end) | implode;\n"
        "  def up16: explode | map(if 97 <= . and . <= 122 then . - 32 else . end) | implode;\n"
        "  def spaced: [\"  a b \\t\", \"\\u00a0x\\u3000\", \"\\u2028\\r\\n\", \"x\", \"\", \"\\u00e9 \\u00e9\", \"\\u200b\"];\n"
        "steps:\n"
        "  - name: a\n"
        "    command: x.create\n"
        "    reference: '.customer.email | ascii_downcase'\n"
        "    document:\n"
        "      D: 'words | map(ascii_downcase)'\n"
        "      DR: 'words | map(down16)'\n"
        "      U: 'words | map(ascii_upcase)'\n"
        "      UR: 'words | map(up16)'\n"
        "      T: 'spaced | map(trim)'\n"
        "      L: 'spaced | map(ltrim)'\n"
        "      R: 'spaced | map(rtrim)'\n"
        "      G: '[\"x\" | debug, ([inputs] | length), (try input catch .)]'\n"
        "  - {name: b, command: x.create, reference: '\"b\"', document: {A: '5 | ascii_downcase'}}\n"
        "  - {name: c, command: x.create, reference: '\"c\"', document: {A: '{} | trim'}}\n";
    struct probe p;
    json_t *doc;
    char *ref, *text;
    probe_open(&p, yaml);
    doc = probe_step(&p, 0, &ref, NULL);
    assert_string_equal(ref, "ann@example.com");
    assert_true(json_equal(json_object_get(doc, "D"), json_object_get(doc, "DR")));
    assert_true(json_equal(json_object_get(doc, "U"), json_object_get(doc, "UR")));
    assert_string_equal(json_string_value(json_array_get(json_object_get(doc, "D"), 2)),
                        "\xc3\x80" "b\xc3\x87 xy [z]@`{");
    text = json_dumps(json_object_get(doc, "T"), JSON_COMPACT);
    assert_string_equal(text, "[\"a b\",\"x\",\"\",\"x\",\"\",\"\xc3\xa9 \xc3\xa9\",\"\xe2\x80\x8b\"]");
    free(text);
    text = json_dumps(json_object_get(doc, "L"), JSON_COMPACT);
    assert_string_equal(text, "[\"a b \\t\",\"x\xe3\x80\x80\",\"\",\"x\",\"\",\"\xc3\xa9 \xc3\xa9\",\"\xe2\x80\x8b\"]");
    free(text);
    text = json_dumps(json_object_get(doc, "R"), JSON_COMPACT);
    assert_string_equal(text, "[\"  a b\",\"\xc2\xa0x\",\"\",\"x\",\"\",\"\xc3\xa9 \xc3\xa9\",\"\xe2\x80\x8b\"]");
    free(text);
    text = json_dumps(json_object_get(doc, "G"), JSON_COMPACT);
    assert_string_equal(text, "[\"x\",0,\"break\"]");
    free(text);
    free(ref);
    json_decref(doc);
    static const char *const want[] = {"explode input must be a string",
                                       "trim input must be a string"};
    for (size_t k = 1; k <= 2; k++)
        expect_mapping_error(p.m, &p.f->steps[k], p.ev, "field A", want[k - 1]);
    probe_close(&p);
}

/* utc_date (mapping.c "Native builtins"): the UTC date of an RFC 3339 / ISO
 * 8601 timestamp, null for anything that is not one. The expected dates with
 * an offset were checked with Python's datetime.fromisoformat(). */
static void test_utc_date(void **state)
{
    (void)state;
    static const char yaml[] =
        "flow: probe\nsource: s\ntarget: t\nevents: [payment.succeeded]\n"
        "steps:\n"
        "  - name: a\n"
        "    command: x.create\n"
        "    reference: '.occurred_at | utc_date'\n"
        "    document:\n"
        "      OK: '[\"2026-11-21\", \"2026-11-21T23:30:00-05:00\", \"2026-11-21T00:30:00+01:00\",\n"
        "            \"2024-03-01T00:15:00+0100\", \"2023-03-01T00:15:00+01\", \"2026-12-31T20:00:00-04:00\",\n"
        "            \"2026-12-31T23:59:60.123456Z\", \"2026-11-21 19:14:10z\", \"2026-11-21T19:14\",\n"
        "            \"2000-02-29T12:00:00Z\", \"0000-01-01T00:00:00Z\", \"9999-12-31T23:59:59-00:00\"]\n"
        "            | map(utc_date)'\n"
        "      BAD: '[\"2026-02-29\", \"1900-02-29\", \"2026-13-01\", \"2026-00-10\", \"2026-11-31\",\n"
        "             \"2026-11-21T24:00:00Z\", \"2026-11-21T19:60:00Z\", \"2026-11-21T19:14:61Z\",\n"
        "             \"2026-11-21T19:14:10+24:00\", \"2026-11-21T19:14:10+01:60\", \"2026-11-21T19:14:10+1\",\n"
        "             \"2026-11-21X19:14:10Z\", \"2026-11-21T19:14:10Zjunk\", \"2026-11-21T19:14:10.Z\",\n"
        "             \"2026-11-2\", \"2026/11/21\", \"\", \"0000-01-01T00:00:00+01:00\",\n"
        "             \"9999-12-31T23:00:00-02:00\", null, 20261121, {}]\n"
        "            | map(utc_date)'\n"
        "      FALLBACK: '(.nothing | utc_date) // $now'\n";
    struct probe p;
    json_t *doc, *v;
    char *ref, *text;
    size_t i;
    probe_open(&p, yaml);
    doc = probe_step(&p, 0, &ref, NULL);
    assert_string_equal(ref, "2026-11-21");
    text = json_dumps(json_object_get(doc, "OK"), JSON_COMPACT);
    assert_string_equal(text, "[\"2026-11-21\",\"2026-11-22\",\"2026-11-20\",\"2024-02-29\","
                              "\"2023-02-28\",\"2027-01-01\",\"2026-12-31\",\"2026-11-21\","
                              "\"2026-11-21\",\"2000-02-29\",\"0000-01-01\",\"9999-12-31\"]");
    free(text);
    assert_int_equal(json_array_size(json_object_get(doc, "BAD")), 22);
    json_array_foreach(json_object_get(doc, "BAD"), i, v)
        if (!json_is_null(v))
            fail_msg("BAD[%zu] gave %s, want null", i, json_string_value(v));
    assert_string_equal(json_string_value(json_object_get(doc, "FALLBACK")), TODAY);
    free(ref);
    json_decref(doc);
    probe_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_equals_when_loop),
        cmocka_unit_test(test_next_opayo_xero_payment),
        cmocka_unit_test(test_next_stops_at_failing_when),
        cmocka_unit_test(test_keep_same_documents),
        cmocka_unit_test(test_step_unless),
        cmocka_unit_test(test_step_unless_adapts),
        cmocka_unit_test(test_same_when),
        cmocka_unit_test(test_common_leaves),
        cmocka_unit_test(test_type_guards),
        cmocka_unit_test(test_native_builtins),
        cmocka_unit_test(test_utc_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
