/*
 * store/store.h: the durable store behind one interface.
 *
 * All mutations are OPERATIONS submitted to the store's writer, which runs
 * them in batches: one transaction, one fsync (SQLite WAL, synchronous=FULL)
 * for everything that arrived while the previous batch was committing. This
 * is the group commit that lets concurrent webhooks, job claims and job
 * completions share fsyncs. Each op runs inside its own SAVEPOINT, so one
 * failing op (a constraint, a bug) never takes the batch down with it.
 *
 * An op's `done` callback runs on the writer thread after the COMMIT (or
 * after the failure) and must be short: it resumes an HTTP request, or wakes
 * a waiting worker. pb_store_run() wraps submit + wait for synchronous use.
 *
 * Reads (CLI, admin API, metrics, xref look-ups) use their own connections
 * and never wait for the writer (WAL readers see the last commit).
 *
 * Backends: sqlite (store_sqlite.c). The vtable is the seam for postgres;
 * every op kind below maps to a few SQL statements in each backend.
 *
 * Invariants:
 *  - an event row and the jobs of its first steps are inserted in the same
 *    transaction, so an acknowledged event always has its work queued;
 *  - a job's completion, its xref row, its attempt row and the next step's
 *    job are written in one transaction (exactly-once effects);
 *  - a claim (attempts+1, lease) is durable before the worker calls out, so
 *    after a crash `tries` tells that a call may already have taken effect
 *    (a completion may lease the next step itself: next_lease_until).
 */
#ifndef PB_STORE_STORE_H
#define PB_STORE_STORE_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "core/err.h"

struct pb_store;

enum pb_job_state { PB_JOB_READY, PB_JOB_LEASED, PB_JOB_DONE, PB_JOB_SKIPPED, PB_JOB_DEAD };
const char *pb_job_state_name(int state);

/* A job to create: one step of one flow for one event. */
struct pb_job_new {
    const char *flow;
    int step;
    const char *step_name;
    const char *target;
    const char *command;
    int64_t run_at_ms;
};

#define PB_STORE_MAX_NEW_JOBS 16

/* A claimed job, as the worker sees it. Strings are owned by the claim op. */
struct pb_job {
    int64_t id;
    int64_t event_id;
    char *flow;
    int step;
    char *step_name;
    char *target;
    char *command;
    uint32_t attempts;      /* tries since the last replay, this one included */
    uint32_t tries;         /* tries ever, this one included; > 1 => may have taken effect */
    char *event_json;       /* the canonical event */
    char *refs_json;        /* {"step": "erp id", ...} of this event's completed steps */
};

enum pb_store_op_kind {
    PB_OP_INBOX_PUT,        /* insert an event + its first jobs, or report a duplicate */
    PB_OP_CLAIM,            /* lease up to n due jobs of one (target, command) */
    PB_OP_COMPLETE,         /* record a job's outcome */
    PB_OP_REPLAY,           /* dead letters back to ready */
    PB_OP_RECOVER,          /* expired leases back to ready */
    PB_OP_CURSOR_SET,       /* a poller's position, after its events committed */
    PB_OP_REFUND_REQUEST,   /* check the refund ceiling, then queue the gateway refund */
    PB_OP_CHARGEBACK,       /* open a chargeback or move it to a new state, emitting its event */
};

enum pb_job_outcome {
    PB_OUTCOME_DONE,        /* the ERP record exists: erp_id */
    PB_OUTCOME_SKIPPED,     /* the step's `when` was false */
    PB_OUTCOME_RETRY,       /* transient failure: run again at next_run_ms */
    PB_OUTCOME_DEAD,        /* permanent failure or attempts used up */
};

struct pb_store_op {
    enum pb_store_op_kind kind;
    void (*done)(struct pb_store_op *op);   /* runs on the writer thread; may be NULL */
    void *ctx;                              /* for `done` */
    enum pb_rc rc;                          /* set by the writer */
    struct pb_err err;
    struct pb_store_op *next__;             /* queue link, internal */
    /* sync wait support (pb_store_run) */
    pthread_mutex_t *wait_lock__;
    pthread_cond_t *wait_cond__;
    int finished__;
    union {
        struct {
            const char *connection;
            const char *gateway_event_id;
            const char *type;
            const char *event_json;     /* canonical event, without id */
            const char *original_gateway_id; /* refunds/chargebacks: the payment's id, or NULL */
            int polled;                 /* from a poller's overlapping re-read: a duplicate is not a redelivery */
            const char *raw;            /* raw payload, already PAN-checked */
            size_t raw_len;
            int64_t received_ms;
            struct pb_job_new jobs[PB_STORE_MAX_NEW_JOBS];
            int n_jobs;
            /* out */
            int64_t event_id;
            int duplicate;
        } inbox;
        struct {
            int64_t now_ms;
            int64_t lease_ms;
            size_t max;
            /* optional filter; NULL = pick the (target, command) of the most overdue job */
            const char *target;
            const char *command;
            /* out */
            struct pb_job *jobs;        /* malloc'd array; free with pb_store_jobs_free */
            size_t n;
            int64_t next_due_ms;        /* when nothing is due: earliest next_run_at, or -1 */
        } claim;
        struct {
            int64_t job_id;
            uint32_t attempt;
            enum pb_job_outcome outcome;
            const char *erp_id;
            const char *reference;      /* the xref key; NULL = no xref */
            const char *message;        /* error or note */
            const char *error_class;    /* pb_rc_name of the failure */
            int64_t next_run_ms;        /* RETRY */
            int64_t started_ms;
            int64_t duration_ms;
            const char *trace_json;     /* redacted calls, may be NULL */
            const char *document_json;  /* the mapped document (redacted), may be NULL */
            const char *result_json;    /* the ERP's record for this item (redacted), may be NULL */
            const char *mapping_version;
            struct pb_job_new next;     /* next step to queue (flow == NULL: none) */
            /* > 0: insert `next` already leased until then (attempts = tries = 1),
             * for the worker to run at once: the claim is durable with this
             * commit, before any call, exactly like a PB_OP_CLAIM's lease */
            int64_t next_lease_until;
            int64_t next_job_id;        /* out: the leased next job, 0 = none (it existed) */
            /* an event the job produced (a gateway refund's refund.succeeded),
             * inserted and routed in the same transaction; connection == NULL: none */
            struct {
                const char *connection;
                const char *gateway_event_id;
                const char *type;
                const char *event_json;
                const char *original_gateway_id;
                struct pb_job_new jobs[PB_STORE_MAX_NEW_JOBS];
                int n_jobs;
            } emit;
        } complete;
        struct {
            int64_t job_id;             /* 0 = all dead letters */
            int64_t now_ms;
            /* out */
            int64_t count;
        } replay;
        struct {
            int64_t now_ms;
            int all;                    /* 1 at start-up: every lease is stale */
            int64_t count;
        } recover;
        struct {
            const char *connection;
            const char *cursor;
        } cursor;
        struct {
            const char *connection;     /* the gateway connection */
            const char *original_gateway_id;
            int64_t amount_minor;       /* > 0 */
            const char *currency;
            const char *reason;         /* may be NULL */
            const char *reference;      /* unique: repeating a request is idempotent */
            int64_t now_ms;
            const char *event_json;     /* the refund.requested event */
            struct pb_job_new job;      /* the gateway refund job */
            /* out */
            int64_t request_id;
            int64_t event_id;
            int64_t refundable_minor;   /* what was left before this request */
            int duplicate;              /* the reference was seen before */
        } refund;
        struct {
            int64_t id;                 /* 0 = open a new one */
            const char *connection;
            const char *original_gateway_id;
            int64_t amount_minor;
            const char *currency;
            const char *reason_code;
            const char *deadline;       /* YYYY-MM-DD */
            const char *state;          /* opened | evidence_submitted | won | lost */
            int64_t now_ms;
            /* the event this change emits (chargeback.opened, .won, ...), routed by the caller */
            const char *gateway_event_id;
            const char *event_type;
            const char *event_json;
            struct pb_job_new jobs[PB_STORE_MAX_NEW_JOBS];
            int n_jobs;
            /* out */
            int64_t chargeback_id;
            int64_t event_id;
        } chargeback;
    } u;
};

struct pb_store_stats {
    uint64_t commits;           /* transactions committed */
    uint64_t ops;               /* operations applied */
    uint64_t max_batch;         /* largest batch */
    uint64_t pages_written;     /* database pages the commits wrote to the WAL (SQLITE_DBSTATUS_CACHE_WRITE) */
    uint64_t wal_restarts;      /* tail checkpoints after which the WAL was written from its start again */
    uint64_t wal_pause_ns;      /* time the writer spent in those tail checkpoints */
    uint64_t busy_ns;           /* time the writer spent on batches (apply + commit), wall clock */
    uint64_t commit_ns;         /* of which in COMMIT: writing the WAL and its fsync */
};

struct pb_store_ops {
    const char *name;
    enum pb_rc (*open)(const char *dsn, struct pb_store **out, struct pb_err *err);
    void (*close)(struct pb_store *s);
    void (*submit)(struct pb_store *s, struct pb_store_op *op);
    /* Reads: JSON results, caller owns *out. */
    enum pb_rc (*xref_get)(struct pb_store *s, const char *target, const char *kind,
                           const char *reference, char *erp_id, size_t len, struct pb_err *err);
    enum pb_rc (*query)(struct pb_store *s, const char *what, const json_t *args, json_t **out,
                        struct pb_err *err);
    void (*stats)(struct pb_store *s, struct pb_store_stats *out);
};

struct pb_store {
    unsigned magic;
    const struct pb_store_ops *ops;
};
#define PB_STORE_MAGIC 0x53544f52u

extern const struct pb_store_ops pb_store_sqlite_ops;

/* Open by DSN: "sqlite:PATH" or a plain path. */
enum pb_rc pb_store_open(const char *dsn, struct pb_store **out, struct pb_err *err);
void pb_store_close(struct pb_store *s);
static inline void pb_store_submit(struct pb_store *s, struct pb_store_op *op)
{
    s->ops->submit(s, op);
}
/* Submit and wait for the commit. Returns op->rc. */
enum pb_rc pb_store_run(struct pb_store *s, struct pb_store_op *op);
void pb_store_jobs_free(struct pb_job *jobs, size_t n);

/* Named read queries (the `what` of ops->query):
 *   "events.list"   args {limit, connection?, type?}        -> [ {id, connection, gateway_event_id, type, received_at, state} ]
 *   "events.show"   args {id}                               -> {event..., jobs:[{..., attempts:[...]}]}
 *   "dlq.list"      args {limit}                            -> [ {job_id, event_id, flow, step_name, target, reason, failed_at} ]
 *   "dlq.show"      args {id}                               -> {job..., event, attempts}
 *   "jobs.states"   args {}                                 -> {"ready":n, "leased":n, ...}
 *   "xref.count"    args {}                                 -> {"count": n}
 *   "cursor.get"    args {connection}                       -> {"cursor": "..." | null}
 *   "refunds.list"  args {limit}                            -> [ refund requests ]
 *   "chargebacks.list" args {limit}                         -> [ chargebacks, deadline first ]
 *   "payment.find"  args {connection, gateway_id}           -> {event_id, amount_minor, currency, refunded_minor, pending_minor}
 */
enum pb_rc pb_store_query(struct pb_store *s, const char *what, const json_t *args, json_t **out,
                          struct pb_err *err);

int64_t pb_now_ms(void);

#endif
