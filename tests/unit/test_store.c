/*
 * test_store.c: the SQLite store — inbox de-duplication, the event and its
 * first job in one transaction, claims (tries survive replays), completions
 * (xref + next step atomically), retries, dead letters, lease recovery, and
 * the group commit sharing one transaction between concurrent submitters, a
 * webhook failing half-way inside a batch (no savepoint on the fast path: the
 * batch is redone) and the pages each commit writes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include "store/store.h"

static char dir[256];

static struct pb_store *open_fresh(void)
{
    struct pb_store *s = NULL;
    struct pb_err err = {0};
    char path[300];
    snprintf(dir, sizeof(dir), "/tmp/pb-test-store-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.db", dir);
    assert_int_equal(pb_store_open(path, &s, &err), PB_OK);
    return s;
}

static void close_and_remove(struct pb_store *s)
{
    char cmd[300];
    pb_store_close(s);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void inbox(struct pb_store *s, const char *gw_id, int n_jobs, struct pb_store_op *op)
{
    memset(op, 0, sizeof(*op));
    op->kind = PB_OP_INBOX_PUT;
    op->u.inbox.connection = "opayo-shop";
    op->u.inbox.gateway_event_id = gw_id;
    op->u.inbox.type = "payment.succeeded";
    op->u.inbox.event_json = "{\"type\":\"payment.succeeded\"}";
    op->u.inbox.raw = "{}";
    op->u.inbox.raw_len = 2;
    op->u.inbox.received_ms = pb_now_ms();
    for (int i = 0; i < n_jobs; i++) {
        op->u.inbox.jobs[i].flow = i == 0 ? "f1" : "f2";
        op->u.inbox.jobs[i].step = 1;
        op->u.inbox.jobs[i].step_name = "contact";
        op->u.inbox.jobs[i].target = "xero";
        op->u.inbox.jobs[i].command = "contact.upsert";
    }
    op->u.inbox.n_jobs = n_jobs;
    assert_int_equal(pb_store_run(s, op), PB_OK);
}

static size_t claim(struct pb_store *s, struct pb_job **jobs, int64_t now)
{
    struct pb_store_op op;
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_CLAIM;
    op.u.claim.now_ms = now;
    op.u.claim.lease_ms = 60000;
    op.u.claim.max = 50;
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    *jobs = op.u.claim.jobs;
    return op.u.claim.n;
}

static long long state_count(struct pb_store *s, const char *state)
{
    json_t *out = NULL;
    struct pb_err err = {0};
    assert_int_equal(pb_store_query(s, "jobs.states", NULL, &out, &err), PB_OK);
    long long n = json_integer_value(json_object_get(out, state));
    json_decref(out);
    return n;
}

static void test_inbox_dedup(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op a, b;
    inbox(s, "TX-1", 1, &a);
    assert_false(a.u.inbox.duplicate);
    assert_true(a.u.inbox.event_id > 0);
    inbox(s, "TX-1", 1, &b);
    assert_true(b.u.inbox.duplicate);
    assert_int_equal(b.u.inbox.event_id, a.u.inbox.event_id);
    /* the duplicate queued nothing */
    assert_int_equal(state_count(s, "ready"), 1);
    json_t *c = NULL;
    struct pb_err err = {0};
    assert_int_equal(pb_store_query(s, "events.count", NULL, &c, &err), PB_OK);
    assert_int_equal(json_integer_value(json_object_get(c, "events")), 1);
    assert_int_equal(json_integer_value(json_object_get(c, "duplicates")), 1);
    json_decref(c);
    close_and_remove(s);
}

static void test_claim_complete_xref_next(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op a, op;
    struct pb_job *jobs;
    char erp[128];
    struct pb_err err = {0};
    inbox(s, "TX-2", 1, &a);
    assert_int_equal(claim(s, &jobs, pb_now_ms()), 1);
    assert_int_equal(jobs[0].tries, 1);
    assert_int_equal(jobs[0].attempts, 1);
    assert_string_equal(jobs[0].command, "contact.upsert");
    assert_string_equal(jobs[0].refs_json, "{}");
    /* nothing else is due while it is leased */
    struct pb_job *none;
    assert_int_equal(claim(s, &none, pb_now_ms()), 0);

    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_COMPLETE;
    op.u.complete.job_id = jobs[0].id;
    op.u.complete.attempt = 1;
    op.u.complete.outcome = PB_OUTCOME_DONE;
    op.u.complete.erp_id = "C-1";
    op.u.complete.reference = "email:ann@example.com";
    op.u.complete.next.flow = "f1";
    op.u.complete.next.step = 2;
    op.u.complete.next.step_name = "invoice";
    op.u.complete.next.target = "xero";
    op.u.complete.next.command = "invoice.create";
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    pb_store_jobs_free(jobs, 1);

    assert_int_equal(s->ops->xref_get(s, "xero", "contact.upsert", "email:ann@example.com", erp,
                                      sizeof(erp), &err), PB_OK);
    assert_string_equal(erp, "C-1");
    assert_int_equal(s->ops->xref_get(s, "xero", "contact.upsert", "email:bob@example.com", erp,
                                      sizeof(erp), &err), PB_ERR_NOTFOUND);
    /* the next step is due and sees the first step's ERP id in its refs */
    assert_int_equal(claim(s, &jobs, pb_now_ms()), 1);
    assert_string_equal(jobs[0].command, "invoice.create");
    assert_string_equal(jobs[0].refs_json, "{\"contact\":\"C-1\"}");
    /* a second completion of an already finished job is refused */
    op.u.complete.next.flow = NULL;
    assert_int_equal(pb_store_run(s, &op), PB_ERR_EXISTS);
    pb_store_jobs_free(jobs, 1);
    close_and_remove(s);
}

/* A completion may lease the next step itself (the engine then runs it at
 * once): the new job is leased with tries 1, not claimable by others, and
 * after its lease runs out it is recovered and claimable again with tries 2,
 * as any lost lease. */
static void test_complete_leases_next(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op a, op;
    struct pb_job *jobs, *none;
    int64_t now;
    inbox(s, "TX-9", 1, &a);
    now = pb_now_ms(); /* not before the inbox: its job is due from then */
    assert_int_equal(claim(s, &jobs, now), 1);
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_COMPLETE;
    op.u.complete.job_id = jobs[0].id;
    op.u.complete.attempt = 1;
    op.u.complete.outcome = PB_OUTCOME_DONE;
    op.u.complete.erp_id = "C-9";
    op.u.complete.next.flow = "f1";
    op.u.complete.next.step = 2;
    op.u.complete.next.step_name = "invoice";
    op.u.complete.next.target = "xero";
    op.u.complete.next.command = "invoice.create";
    op.u.complete.next_lease_until = now + 60000;
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    assert_true(op.u.complete.next_job_id > 0);
    pb_store_jobs_free(jobs, 1);
    /* leased: nobody else can claim it now */
    assert_int_equal(claim(s, &none, now + 1000), 0);
    assert_int_equal(state_count(s, "leased"), 1);
    /* the lease lapses (the worker died): the maintainer returns it, then it is
     * claimable again with tries 2 */
    memset(&a, 0, sizeof(a));
    a.kind = PB_OP_RECOVER;
    a.u.recover.now_ms = now + 61000;
    assert_int_equal(pb_store_run(s, &a), PB_OK);
    assert_int_equal(a.u.recover.count, 1);
    assert_int_equal(claim(s, &jobs, now + 61000), 1);
    assert_int_equal(jobs[0].id, op.u.complete.next_job_id);
    assert_string_equal(jobs[0].command, "invoice.create");
    assert_int_equal(jobs[0].tries, 2);
    assert_string_equal(jobs[0].refs_json, "{\"contact\":\"C-9\"}");
    pb_store_jobs_free(jobs, 1);
    close_and_remove(s);
}

static void test_retry_dead_replay_keeps_tries(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op a, op;
    struct pb_job *jobs;
    int64_t now = pb_now_ms();
    inbox(s, "TX-3", 1, &a);
    now = pb_now_ms(); /* the job is due from its insertion, which is after the first `now` */
    assert_int_equal(claim(s, &jobs, now), 1);
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_COMPLETE;
    op.u.complete.job_id = jobs[0].id;
    op.u.complete.outcome = PB_OUTCOME_RETRY;
    op.u.complete.message = "HTTP 503";
    op.u.complete.error_class = "transient";
    op.u.complete.next_run_ms = now + 5000;
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    int64_t id = jobs[0].id;
    pb_store_jobs_free(jobs, 1);
    /* not due before next_run_ms, due after */
    assert_int_equal(claim(s, &jobs, now + 1000), 0);
    assert_int_equal(claim(s, &jobs, now + 6000), 1);
    assert_int_equal(jobs[0].tries, 2);
    assert_int_equal(jobs[0].attempts, 2);
    op.u.complete.outcome = PB_OUTCOME_DEAD;
    op.u.complete.message = "Account code '999' is not a valid code";
    op.u.complete.error_class = "permanent";
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    pb_store_jobs_free(jobs, 1);
    assert_int_equal(state_count(s, "dead"), 1);

    json_t *dl = NULL;
    struct pb_err err = {0};
    assert_int_equal(pb_store_query(s, "dlq.list", NULL, &dl, &err), PB_OK);
    assert_int_equal(json_array_size(dl), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(dl, 0), "reason")),
                        "Account code '999' is not a valid code");
    json_decref(dl);

    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_REPLAY;
    op.u.replay.job_id = id;
    op.u.replay.now_ms = now;
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    assert_int_equal(op.u.replay.count, 1);
    /* replaying a job that is not dead says so */
    assert_int_equal(pb_store_run(s, &op), PB_ERR_NOTFOUND);
    assert_int_equal(claim(s, &jobs, now + 7000), 1);
    assert_int_equal(jobs[0].attempts, 1); /* the retry budget starts again */
    assert_int_equal(jobs[0].tries, 3);    /* but the sink still knows it may exist */
    pb_store_jobs_free(jobs, 1);
    close_and_remove(s);
}

static void test_recover_leases(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op a, op;
    struct pb_job *jobs;
    inbox(s, "TX-4", 2, &a);
    assert_int_equal(claim(s, &jobs, pb_now_ms()), 2);
    pb_store_jobs_free(jobs, 2);
    assert_int_equal(state_count(s, "leased"), 2);
    memset(&op, 0, sizeof(op));
    op.kind = PB_OP_RECOVER;
    op.u.recover.now_ms = pb_now_ms(); /* leases not expired yet */
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    assert_int_equal(op.u.recover.count, 0);
    op.u.recover.now_ms = pb_now_ms() + 120000;
    assert_int_equal(pb_store_run(s, &op), PB_OK);
    assert_int_equal(op.u.recover.count, 2);
    assert_int_equal(state_count(s, "ready"), 2);
    close_and_remove(s);
}

/* Many threads submit at once: all are stored, in fewer commits than ops. */
struct submitter {
    struct pb_store *s;
    int base;
};

static void *submit_many(void *arg)
{
    struct submitter *sb = arg;
    for (int i = 0; i < 200; i++) {
        char id[32];
        struct pb_store_op op;
        snprintf(id, sizeof(id), "T%d-%d", sb->base, i);
        inbox(sb->s, id, 1, &op);
    }
    return NULL;
}

static void test_group_commit(void **st)
{
    struct pb_store *s = open_fresh();
    pthread_t t[8];
    struct submitter sb[8];
    struct pb_store_stats stats;
    for (int i = 0; i < 8; i++) {
        sb[i].s = s;
        sb[i].base = i;
        pthread_create(&t[i], NULL, submit_many, &sb[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    s->ops->stats(s, &stats);
    assert_int_equal(stats.ops, 1600);
    assert_true(stats.commits < stats.ops);
    assert_true(stats.max_batch > 1);
    assert_int_equal(state_count(s, "ready"), 1600);
    close_and_remove(s);
}

/* Under a sustained load the WAL is written from its start again, so its file
 * stays bounded (before the checkpointer asked the writer to copy the tail,
 * it grew for as long as the load lasted: the whole ~75 MiB here). */
struct big_submitter {
    struct pb_store *s;
    int base;
    const char *body;
};

static void *submit_big(void *arg)
{
    struct big_submitter *sb = arg;
    for (int i = 0; i < 1500; i++) {
        char id[32];
        struct pb_store_op op;
        snprintf(id, sizeof(id), "W%d-%d", sb->base, i);
        memset(&op, 0, sizeof(op));
        op.kind = PB_OP_INBOX_PUT;
        op.u.inbox.connection = "opayo-shop";
        op.u.inbox.gateway_event_id = id;
        op.u.inbox.type = "payment.succeeded";
        op.u.inbox.event_json = sb->body;
        op.u.inbox.raw = sb->body;
        op.u.inbox.raw_len = strlen(sb->body);
        op.u.inbox.received_ms = pb_now_ms();
        assert_int_equal(pb_store_run(sb->s, &op), PB_OK);
    }
    return NULL;
}

static void test_wal_restarts_under_load(void **st)
{
    struct pb_store *s = NULL;
    struct pb_err err = {0};
    struct pb_store_stats stats;
    struct big_submitter sb[4];
    pthread_t t[4];
    char path[320], body[4200];
    struct stat wal;
    snprintf(dir, sizeof(dir), "/tmp/pb-test-store-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.db?wal_restart_mib=1", dir);
    assert_int_equal(pb_store_open(path, &s, &err), PB_OK);
    snprintf(body, sizeof(body), "{\"type\":\"payment.succeeded\",\"pad\":\"%04000d\"}", 7);
    for (int i = 0; i < 4; i++) {
        sb[i].s = s;
        sb[i].base = i;
        sb[i].body = body;
        pthread_create(&t[i], NULL, submit_big, &sb[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    s->ops->stats(s, &stats);
    assert_int_equal(stats.ops, 6000);
    assert_true(stats.pages_written > 18000); /* ~75 MiB went through the WAL */
    assert_true(stats.wal_restarts >= 2);
    assert_true(stats.wal_pause_ns > 0);
    snprintf(path, sizeof(path), "%s/t.db-wal", dir);
    assert_int_equal(stat(path, &wal), 0);
    /* the first lap is the longest (the checkpointer's first pass comes
     * after 200 ms); the file never has to hold half of what went through */
    assert_true((uint64_t)wal.st_size < stats.pages_written * 4120 / 2);
    close_and_remove(s);
}

static void test_reopen_is_durable(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op a;
    struct pb_err err = {0};
    char path[300];
    inbox(s, "TX-5", 1, &a);
    s->ops->close(s);
    snprintf(path, sizeof(path), "%s/t.db", dir);
    assert_int_equal(pb_store_open(path, &s, &err), PB_OK);
    assert_int_equal(state_count(s, "ready"), 1);
    inbox(s, "TX-5", 1, &a);
    assert_true(a.u.inbox.duplicate);
    close_and_remove(s);
}

/* Regression (e2e dlq_replay_live): a statement left on a row kept a stale
 * read snapshot on the writer connection; after another process committed,
 * every BEGIN IMMEDIATE failed with "database is locked" for good. */
static void test_second_process_commits(void **st)
{
    struct pb_store *a = open_fresh(), *b = NULL;
    struct pb_store_op op, x;
    struct pb_job *jobs;
    struct pb_err err = {0};
    char path[300];
    inbox(a, "TX-6", 1, &op);
    inbox(a, "TX-6", 1, &op);                  /* duplicate path: EVENT_FIND stops on a row */
    assert_int_equal(claim(a, &jobs, pb_now_ms()), 1); /* JOB_LOAD stops on a row */
    pb_store_jobs_free(jobs, 1);
    snprintf(path, sizeof(path), "%s/t.db", dir);
    assert_int_equal(pb_store_open(path, &b, &err), PB_OK); /* "the CLI" */
    inbox(b, "TX-7", 1, &x);
    pb_store_close(b);
    inbox(a, "TX-8", 1, &op);                  /* asserts PB_OK */
    assert_false(op.u.inbox.duplicate);
    close_and_remove(a);
}

/* A webhook that fails half-way (its event row written, its job refused) in
 * the middle of a batch: the writer applies webhooks without a savepoint, so
 * it must roll the batch back and run it again with one per op. The others
 * commit, the failed one leaves no event behind (a retry is not a duplicate). */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int open, finished;
};

static void gate_done(struct pb_store_op *op)
{
    struct gate *g = op->ctx;
    pthread_mutex_lock(&g->lock);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock); /* holds the writer: the next ops queue up */
    pthread_mutex_unlock(&g->lock);
}

static void count_done(struct pb_store_op *op)
{
    struct gate *g = op->ctx;
    pthread_mutex_lock(&g->lock);
    g->finished++;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static void inbox_async(struct pb_store_op *op, const char *gw_id, struct gate *g,
                        void (*done)(struct pb_store_op *))
{
    memset(op, 0, sizeof(*op));
    op->kind = PB_OP_INBOX_PUT;
    op->u.inbox.connection = "opayo-shop";
    op->u.inbox.gateway_event_id = gw_id;
    op->u.inbox.type = "payment.succeeded";
    op->u.inbox.event_json = "{\"type\":\"payment.succeeded\"}";
    op->u.inbox.received_ms = pb_now_ms();
    op->u.inbox.jobs[0].flow = "f1";
    op->u.inbox.jobs[0].step = 1;
    op->u.inbox.jobs[0].step_name = "contact";
    op->u.inbox.jobs[0].target = "xero";
    op->u.inbox.jobs[0].command = "contact.upsert";
    op->u.inbox.n_jobs = 1;
    op->done = done;
    op->ctx = g;
}

static void test_failed_webhook_in_batch(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op hold, ops[4], again;
    struct pb_store_stats before, after;
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    const char *ids[4] = {"TX-B1", "TX-B2", "TX-BAD", "TX-B3"};
    json_t *out = NULL;
    struct pb_err err = {0};

    inbox_async(&hold, "TX-HOLD", &g, gate_done);
    pb_store_submit(s, &hold);
    /* the writer is in hold's done until the gate opens (or has not taken it
     * yet): either way the four below are queued together behind it */
    for (int i = 0; i < 4; i++) {
        inbox_async(&ops[i], ids[i], &g, count_done);
        if (i == 2)
            ops[i].u.inbox.jobs[0].target = NULL; /* NOT NULL: the job insert fails */
    }
    s->ops->stats(s, &before);
    for (int i = 0; i < 4; i++)
        pb_store_submit(s, &ops[i]);
    pthread_mutex_lock(&g.lock);
    g.open = 1;
    pthread_cond_broadcast(&g.cond);
    while (g.finished < 4)
        pthread_cond_wait(&g.cond, &g.lock);
    pthread_mutex_unlock(&g.lock);
    s->ops->stats(s, &after);

    assert_int_equal(ops[0].rc, PB_OK);
    assert_int_equal(ops[1].rc, PB_OK);
    assert_int_equal(ops[2].rc, PB_ERR_STORE);
    assert_non_null(strstr(ops[2].err.msg, "insert job"));
    assert_int_equal(ops[3].rc, PB_OK);
    assert_false(ops[0].u.inbox.duplicate);
    assert_false(ops[3].u.inbox.duplicate);
    assert_true(ops[0].u.inbox.event_id > hold.u.inbox.event_id);
    assert_int_equal(ops[1].u.inbox.event_id, ops[0].u.inbox.event_id + 1);
    assert_true(after.max_batch >= 4);                 /* they did share a batch */
    /* the batch wrote pages (events, jobs, both unique keys); the rolled-back
     * first attempt did not add to them */
    assert_true(after.pages_written > before.pages_written);
    assert_true(after.pages_written - before.pages_written < 100);
    assert_int_equal(pb_store_query(s, "events.count", NULL, &out, &err), PB_OK);
    assert_int_equal(json_integer_value(json_object_get(out, "events")), 4); /* hold + 3 */
    json_decref(out);
    assert_int_equal(state_count(s, "ready"), 4);
    inbox(s, "TX-BAD", 1, &again);                     /* the retry is a new event */
    assert_false(again.u.inbox.duplicate);
    inbox(s, "TX-B2", 1, &again);
    assert_true(again.u.inbox.duplicate);
    assert_int_equal(again.u.inbox.event_id, ops[1].u.inbox.event_id);
    close_and_remove(s);
}

/* Completions skip their savepoint too (apply_batch's fast mode): one that
 * fails after its first statements (here: its next job cannot be inserted)
 * must leave nothing behind, and the completions batched with it commit. */
static void test_failed_completion_in_batch(void **st)
{
    struct pb_store *s = open_fresh();
    struct pb_store_op hold, ops[3], a;
    struct pb_store_stats after;
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    struct pb_job *jobs;
    char erp[64], ref[3][32];
    struct pb_err err = {0};
    (void)st;

    inbox(s, "TX-C1", 1, &a);
    inbox(s, "TX-C2", 1, &a);
    inbox(s, "TX-C3", 1, &a);
    assert_int_equal(claim(s, &jobs, pb_now_ms()), 3);
    inbox_async(&hold, "TX-HOLD", &g, gate_done);
    pb_store_submit(s, &hold);
    for (int i = 0; i < 3; i++) {
        memset(&ops[i], 0, sizeof(ops[i]));
        snprintf(ref[i], sizeof(ref[i]), "email:c%d@example.com", i);
        ops[i].kind = PB_OP_COMPLETE;
        ops[i].u.complete.job_id = jobs[i].id;
        ops[i].u.complete.attempt = 1;
        ops[i].u.complete.outcome = PB_OUTCOME_DONE;
        ops[i].u.complete.erp_id = "C-X";
        ops[i].u.complete.reference = ref[i];
        ops[i].u.complete.next.flow = "f1";
        ops[i].u.complete.next.step = 2;
        ops[i].u.complete.next.step_name = "invoice";
        ops[i].u.complete.next.target = i == 1 ? NULL : "xero"; /* NOT NULL: the insert fails */
        ops[i].u.complete.next.command = "invoice.create";
        ops[i].done = count_done;
        ops[i].ctx = &g;
    }
    for (int i = 0; i < 3; i++)
        pb_store_submit(s, &ops[i]);
    pthread_mutex_lock(&g.lock);
    g.open = 1;
    pthread_cond_broadcast(&g.cond);
    while (g.finished < 3)
        pthread_cond_wait(&g.cond, &g.lock);
    pthread_mutex_unlock(&g.lock);
    s->ops->stats(s, &after);

    assert_true(after.max_batch >= 3);
    assert_int_equal(ops[0].rc, PB_OK);
    assert_int_equal(ops[1].rc, PB_ERR_STORE);
    assert_non_null(strstr(ops[1].err.msg, "job"));
    assert_int_equal(ops[2].rc, PB_OK);
    /* the failed one: still leased, no xref; the others done, each with its next step */
    assert_int_equal(state_count(s, "done"), 2);
    assert_int_equal(state_count(s, "leased"), 1);
    assert_int_equal(state_count(s, "ready"), 3); /* two invoice steps and TX-HOLD's job */
    assert_int_equal(s->ops->xref_get(s, "xero", "contact.upsert", ref[1], erp, sizeof(erp), &err),
                     PB_ERR_NOTFOUND);
    assert_int_equal(s->ops->xref_get(s, "xero", "contact.upsert", ref[2], erp, sizeof(erp), &err),
                     PB_OK);
    pb_store_jobs_free(jobs, 3);
    close_and_remove(s);
}

static void test_bad_dsn(void **st)
{
    struct pb_store *s = NULL;
    struct pb_err err = {0};
    assert_int_equal(pb_store_open("postgres://x", &s, &err), PB_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "postgres"));
    assert_int_equal(pb_store_open("/tmp/x.db?wal_restart_mib=0", &s, &err), PB_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "wal_restart_mib must be"));
    assert_int_equal(pb_store_open("/tmp/x.db?cache=big", &s, &err), PB_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown option"));
    assert_int_equal(pb_store_open("/nonexistent-dir/x/y.db", &s, &err), PB_ERR_STORE);
    assert_non_null(strstr(err.msg, "cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inbox_dedup),
        cmocka_unit_test(test_claim_complete_xref_next),
        cmocka_unit_test(test_complete_leases_next),
        cmocka_unit_test(test_retry_dead_replay_keeps_tries),
        cmocka_unit_test(test_recover_leases),
        cmocka_unit_test(test_group_commit),
        cmocka_unit_test(test_wal_restarts_under_load),
        cmocka_unit_test(test_reopen_is_durable),
        cmocka_unit_test(test_second_process_commits),
        cmocka_unit_test(test_failed_webhook_in_batch),
        cmocka_unit_test(test_failed_completion_in_batch),
        cmocka_unit_test(test_bad_dsn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
