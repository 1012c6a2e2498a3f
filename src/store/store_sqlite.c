/*
 * store/store_sqlite.c: the embedded SQLite back end of store.h.
 *
 * One writer connection, owned by one writer thread. Submitters append ops to
 * a queue (mutex + condvar); the writer takes everything queued (up to
 * MAX_BATCH ops), runs it in one BEGIN IMMEDIATE ... COMMIT with a SAVEPOINT
 * per op (webhooks and job completions without one unless one of them fails:
 * apply_batch), then calls each op's `done`. With journal_mode=WAL and
 * synchronous=FULL the COMMIT is durable when it returns; a batch of 500
 * webhooks costs one fsync of the WAL.
 *
 * Readers: a small pool of read-only connections (query_only) guarded by a
 * mutex each; WAL lets them read while the writer writes.
 *
 * Schema (version 1): events, jobs, attempts, xref, meta. See SCHEMA below.
 * Times are unix milliseconds (INTEGER). Migrations run in `open`, inside a
 * transaction, keyed by meta.schema_version.
 *
 * Rejected: a mutex-guarded shared write connection that each thread uses in
 * turn. Every worker would pay its own fsync, which caps completions at the
 * disk's fsync rate (a few hundred per second here).
 */
#include "core/json.h"
#include "store/store.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

#define MAX_BATCH 1024
#define N_READERS 4
/* The WAL is restarted (written again from its first frame) once it holds
 * this many frames (~128 MiB of 4 KiB pages) and the checkpointer has copied
 * all but at most WAL_TAIL_FRAMES of them: see checkpointer_main. */
#define WAL_RESTART_FRAMES 32768
#define WAL_TAIL_FRAMES 2048

static const char *SCHEMA[] = {
    /* version 1 */
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS events("
    "  id INTEGER PRIMARY KEY,"
    "  connection TEXT NOT NULL,"
    "  gateway_event_id TEXT NOT NULL,"
    "  type TEXT NOT NULL,"
    "  received_at INTEGER NOT NULL,"
    "  body TEXT NOT NULL,"
    "  raw BLOB,"
    "  duplicates INTEGER NOT NULL DEFAULT 0,"
    "  UNIQUE(connection, gateway_event_id));"
    "CREATE TABLE IF NOT EXISTS jobs("
    "  id INTEGER PRIMARY KEY,"
    "  event_id INTEGER NOT NULL REFERENCES events(id),"
    "  flow TEXT NOT NULL, step INTEGER NOT NULL, step_name TEXT NOT NULL,"
    "  target TEXT NOT NULL, command TEXT NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  tries INTEGER NOT NULL DEFAULT 0,"
    "  next_run_at INTEGER NOT NULL,"
    "  lease_until INTEGER,"
    "  erp_id TEXT, reference TEXT, last_error TEXT, error_class TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  UNIQUE(event_id, flow, step));"
    "CREATE INDEX IF NOT EXISTS jobs_due ON jobs(next_run_at) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS jobs_due_tc ON jobs(target, command, next_run_at) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS jobs_leased ON jobs(lease_until) WHERE state = 1;"
    "CREATE INDEX IF NOT EXISTS jobs_dead ON jobs(updated_at) WHERE state = 4;"
    "CREATE TABLE IF NOT EXISTS attempts("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER NOT NULL,"
    "  attempt INTEGER NOT NULL,"
    "  started_at INTEGER NOT NULL, duration_ms INTEGER NOT NULL,"
    "  outcome TEXT NOT NULL, message TEXT, error_class TEXT,"
    "  trace TEXT, document TEXT, result TEXT, mapping_version TEXT);"
    "CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_id);"
    "CREATE TABLE IF NOT EXISTS xref("
    "  target TEXT NOT NULL, kind TEXT NOT NULL, reference TEXT NOT NULL,"
    "  erp_id TEXT NOT NULL, event_id INTEGER, created_at INTEGER NOT NULL,"
    "  PRIMARY KEY(target, kind, reference)) WITHOUT ROWID;",
    /* version 2: pollers, refunds initiated by paybridge, chargebacks */
    "ALTER TABLE events ADD COLUMN original_gateway_id TEXT;"
    "CREATE INDEX IF NOT EXISTS events_original ON events(connection, original_gateway_id)"
    "  WHERE original_gateway_id IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS cursors("
    "  connection TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS refund_requests("
    "  id INTEGER PRIMARY KEY,"
    "  connection TEXT NOT NULL, original_gateway_id TEXT NOT NULL,"
    "  amount_minor INTEGER NOT NULL, currency TEXT NOT NULL, reason TEXT,"
    "  reference TEXT NOT NULL UNIQUE,"
    "  state TEXT NOT NULL,"          /* requested | succeeded | failed */
    "  event_id INTEGER, gateway_refund_id TEXT, message TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS refund_requests_original ON refund_requests(connection, original_gateway_id);"
    "CREATE TABLE IF NOT EXISTS chargebacks("
    "  id INTEGER PRIMARY KEY,"
    "  connection TEXT NOT NULL, original_gateway_id TEXT NOT NULL,"
    "  amount_minor INTEGER NOT NULL, currency TEXT NOT NULL,"
    "  reason_code TEXT NOT NULL, deadline TEXT,"
    "  state TEXT NOT NULL,"          /* opened | evidence_submitted | won | lost */
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  UNIQUE(connection, original_gateway_id, reason_code));",
    /* version 3: skipped jobs, so that "jobs.states" (every /metrics scrape)
     * counts each state from a partial index instead of scanning the table */
    "CREATE INDEX IF NOT EXISTS jobs_skipped ON jobs(updated_at) WHERE state = 3;",
};
#define SCHEMA_VERSION ((int)(sizeof(SCHEMA) / sizeof(SCHEMA[0])))

enum stmt_id {
    ST_EVENT_INSERT,
    ST_EVENT_FIND,
    ST_EVENT_DUP,
    ST_JOB_INSERT,
    ST_JOB_INSERT_LEASED,
    ST_PICK_GROUP,
    ST_PICK_JOBS,
    ST_LEASE,
    ST_JOB_LOAD,
    ST_REFS,
    ST_NEXT_DUE,
    ST_JOB_FINISH,
    ST_ATTEMPT_INSERT,
    ST_XREF_INSERT,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_REFUND_DONE,
    ST_COUNT
};

static const char *STMT_SQL[ST_COUNT] = {
    [ST_EVENT_INSERT] = "INSERT INTO events(connection, gateway_event_id, type, received_at, body, raw,"
                        " original_gateway_id) VALUES(?,?,?,?,?,?,?)"
                        " ON CONFLICT(connection, gateway_event_id) DO NOTHING",
    [ST_EVENT_FIND] = "SELECT id FROM events WHERE connection=? AND gateway_event_id=?",
    [ST_EVENT_DUP] = "UPDATE events SET duplicates = duplicates + 1 WHERE id=?",
    [ST_JOB_INSERT] = "INSERT INTO jobs(event_id, flow, step, step_name, target, command, state,"
                      " next_run_at, created_at, updated_at) VALUES(?,?,?,?,?,?,0,?,?,?)"
                      " ON CONFLICT(event_id, flow, step) DO NOTHING",
    [ST_JOB_INSERT_LEASED] = "INSERT INTO jobs(event_id, flow, step, step_name, target, command, state,"
                             " attempts, tries, next_run_at, lease_until, created_at, updated_at)"
                             " VALUES(?,?,?,?,?,?,1,1,1,?,?,?,?)"
                             " ON CONFLICT(event_id, flow, step) DO NOTHING",
    [ST_PICK_GROUP] = "SELECT target, command FROM jobs WHERE state=0 AND next_run_at<=?"
                      " ORDER BY next_run_at LIMIT 1",
    [ST_PICK_JOBS] = "SELECT id FROM jobs WHERE state=0 AND target=? AND command=? AND next_run_at<=?"
                     " ORDER BY next_run_at LIMIT ?",
    [ST_LEASE] = "UPDATE jobs SET state=1, lease_until=?, attempts=attempts+1, tries=tries+1,"
                 " updated_at=? WHERE id=? AND state=0",
    [ST_JOB_LOAD] = "SELECT j.event_id, j.flow, j.step, j.step_name, j.target, j.command,"
                    " j.attempts, j.tries, e.body FROM jobs j JOIN events e ON e.id=j.event_id"
                    " WHERE j.id=?",
    [ST_REFS] = "SELECT step_name, erp_id FROM jobs WHERE event_id=? AND flow=? AND state=2"
                " AND erp_id IS NOT NULL",
    [ST_NEXT_DUE] = "SELECT MIN(next_run_at) FROM jobs WHERE state=0",
    [ST_JOB_FINISH] = "UPDATE jobs SET state=?, erp_id=COALESCE(?, erp_id), reference=COALESCE(?, reference),"
                      " last_error=?, error_class=?, next_run_at=?, lease_until=NULL, updated_at=?"
                      " WHERE id=? AND state=1 RETURNING event_id, target, command, flow",
    [ST_ATTEMPT_INSERT] = "INSERT INTO attempts(job_id, attempt, started_at, duration_ms, outcome,"
                          " message, error_class, trace, document, result, mapping_version)"
                          " VALUES(?,?,?,?,?,?,?,?,?,?,?)",
    [ST_XREF_INSERT] = "INSERT INTO xref(target, kind, reference, erp_id, event_id, created_at)"
                       " VALUES(?,?,?,?,?,?) ON CONFLICT DO NOTHING",
    [ST_SAVEPOINT] = "SAVEPOINT op",
    [ST_RELEASE] = "RELEASE op",
    [ST_ROLLBACK_TO] = "ROLLBACK TO op",
    [ST_REFUND_DONE] = "UPDATE refund_requests SET state=?, gateway_refund_id=?, message=?,"
                       " updated_at=? WHERE event_id=?",
};

struct reader {
    pthread_mutex_t lock;
    sqlite3 *db;
    sqlite3_stmt *xref;     /* prepared once: the workers' hot look-up */
};

struct sqlite_store {
    struct pb_store base;
    char *path;
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_cond_t ckpt_cond;
    struct pb_store_op *head, *tail;
    int stop;
    struct reader readers[N_READERS];
    pthread_t checkpointer;         /* runs WAL checkpoints off the writer's path */
    sqlite3 *ckpt_db;
    int ckpt_fd;                    /* the database file, for the checkpointer's fdatasync; -1 */
    int ckpt_started;
    atomic_int restart_wanted;      /* the checkpointer asks the writer to copy the tail */
    int wal_restart_frames;         /* WAL_RESTART_FRAMES, or the DSN's ?wal_restart_mib= */
    struct pb_store_stats stats;
    pthread_mutex_t stats_lock;
};

int64_t pb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *pb_job_state_name(int state)
{
    static const char *names[] = {"ready", "leased", "done", "skipped", "dead"};
    return state >= 0 && state <= 4 ? names[state] : "unknown";
}

static enum pb_rc db_err(sqlite3 *db, struct pb_err *err, const char *what)
{
    return pb_err_set(err, PB_ERR_STORE, "%s: %s", what, sqlite3_errmsg(db));
}

static int exec(sqlite3 *db, const char *sql, struct pb_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        pb_err_set(err, PB_ERR_STORE, "%s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int exec_retry(sqlite3 *db, const char *sql, struct pb_err *err);

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? strdup((const char *)t) : NULL;
}

/* ---- ops ------------------------------------------------------------------------ */

static enum pb_rc insert_job(struct sqlite_store *s, int64_t event_id, const struct pb_job_new *j,
                             int64_t now, struct pb_err *err)
{
    sqlite3_stmt *st = s->st[ST_JOB_INSERT];
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, event_id);
    bind_text(st, 2, j->flow);
    sqlite3_bind_int(st, 3, j->step);
    bind_text(st, 4, j->step_name ? j->step_name : "");
    bind_text(st, 5, j->target);
    bind_text(st, 6, j->command);
    sqlite3_bind_int64(st, 7, j->run_at_ms ? j->run_at_ms : now);
    sqlite3_bind_int64(st, 8, now);
    sqlite3_bind_int64(st, 9, now);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s->db, err, "insert job");
    return PB_OK;
}

static enum pb_rc op_inbox(struct sqlite_store *s, struct pb_store_op *op)
{
    sqlite3_stmt *st = s->st[ST_EVENT_INSERT];
    int64_t now = pb_now_ms();
    sqlite3_reset(st);
    bind_text(st, 1, op->u.inbox.connection);
    bind_text(st, 2, op->u.inbox.gateway_event_id);
    bind_text(st, 3, op->u.inbox.type);
    sqlite3_bind_int64(st, 4, op->u.inbox.received_ms);
    bind_text(st, 5, op->u.inbox.event_json);
    if (op->u.inbox.raw)
        sqlite3_bind_blob(st, 6, op->u.inbox.raw, (int)op->u.inbox.raw_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    bind_text(st, 7, op->u.inbox.original_gateway_id);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s->db, &op->err, "insert event");
    if (sqlite3_changes(s->db) == 0) {
        sqlite3_stmt *f = s->st[ST_EVENT_FIND];
        sqlite3_reset(f);
        bind_text(f, 1, op->u.inbox.connection);
        bind_text(f, 2, op->u.inbox.gateway_event_id);
        if (sqlite3_step(f) != SQLITE_ROW)
            return db_err(s->db, &op->err, "find duplicate event");
        op->u.inbox.event_id = sqlite3_column_int64(f, 0);
        op->u.inbox.duplicate = 1;
        if (!op->u.inbox.polled) {
            sqlite3_reset(s->st[ST_EVENT_DUP]);
            sqlite3_bind_int64(s->st[ST_EVENT_DUP], 1, op->u.inbox.event_id);
            sqlite3_step(s->st[ST_EVENT_DUP]);
        }
        return PB_OK;
    }
    op->u.inbox.event_id = sqlite3_last_insert_rowid(s->db);
    op->u.inbox.duplicate = 0;
    for (int i = 0; i < op->u.inbox.n_jobs; i++) {
        enum pb_rc rc = insert_job(s, op->u.inbox.event_id, &op->u.inbox.jobs[i], now, &op->err);
        if (rc)
            return rc;
    }
    return PB_OK;
}

static enum pb_rc load_job(struct sqlite_store *s, int64_t id, struct pb_job *j, struct pb_err *err)
{
    sqlite3_stmt *st = s->st[ST_JOB_LOAD];
    json_t *refs;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW)
        return db_err(s->db, err, "load job");
    j->id = id;
    j->event_id = sqlite3_column_int64(st, 0);
    j->flow = col_dup(st, 1);
    j->step = sqlite3_column_int(st, 2);
    j->step_name = col_dup(st, 3);
    j->target = col_dup(st, 4);
    j->command = col_dup(st, 5);
    j->attempts = (uint32_t)sqlite3_column_int(st, 6);
    j->tries = (uint32_t)sqlite3_column_int(st, 7);
    j->event_json = col_dup(st, 8);
    refs = json_object();
    st = s->st[ST_REFS];
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, j->event_id);
    bind_text(st, 2, j->flow);
    while (sqlite3_step(st) == SQLITE_ROW)
        json_object_set_new(refs, (const char *)sqlite3_column_text(st, 0),
                            json_string((const char *)sqlite3_column_text(st, 1)));
    j->refs_json = pb_json_dumps_decimal(refs, NULL, 0);
    json_decref(refs);
    if (!j->flow || !j->target || !j->command || !j->event_json || !j->refs_json)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory loading job %lld", (long long)id);
    return PB_OK;
}

static enum pb_rc op_claim(struct sqlite_store *s, struct pb_store_op *op)
{
    char *target = NULL, *command = NULL;
    int64_t ids[256];
    size_t n = 0, max = op->u.claim.max;
    enum pb_rc rc = PB_OK;
    sqlite3_stmt *st;

    op->u.claim.jobs = NULL;
    op->u.claim.n = 0;
    op->u.claim.next_due_ms = -1;
    if (max == 0 || max > 256)
        max = max == 0 ? 1 : 256;
    if (op->u.claim.target && op->u.claim.command) {
        target = strdup(op->u.claim.target);
        command = strdup(op->u.claim.command);
    } else {
        st = s->st[ST_PICK_GROUP];
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, op->u.claim.now_ms);
        if (sqlite3_step(st) == SQLITE_ROW) {
            target = col_dup(st, 0);
            command = col_dup(st, 1);
        }
        sqlite3_reset(st);
    }
    if (target && command) {
        st = s->st[ST_PICK_JOBS];
        sqlite3_reset(st);
        bind_text(st, 1, target);
        bind_text(st, 2, command);
        sqlite3_bind_int64(st, 3, op->u.claim.now_ms);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)max);
        while (n < max && sqlite3_step(st) == SQLITE_ROW)
            ids[n++] = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    free(target);
    free(command);
    if (n == 0) {
        st = s->st[ST_NEXT_DUE];
        sqlite3_reset(st);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            op->u.claim.next_due_ms = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        return PB_OK;
    }
    op->u.claim.jobs = calloc(n, sizeof(struct pb_job));
    if (!op->u.claim.jobs)
        return pb_err_set(&op->err, PB_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        st = s->st[ST_LEASE];
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, op->u.claim.now_ms + op->u.claim.lease_ms);
        sqlite3_bind_int64(st, 2, op->u.claim.now_ms);
        sqlite3_bind_int64(st, 3, ids[i]);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = db_err(s->db, &op->err, "lease job");
            break;
        }
        if (sqlite3_changes(s->db) == 0)
            continue;
        rc = load_job(s, ids[i], &op->u.claim.jobs[op->u.claim.n], &op->err);
        op->u.claim.n++;
        if (rc)
            break;
    }
    if (rc) {
        pb_store_jobs_free(op->u.claim.jobs, op->u.claim.n);
        op->u.claim.jobs = NULL;
        op->u.claim.n = 0;
    }
    return rc;
}

static const char *outcome_name(enum pb_job_outcome o)
{
    switch (o) {
    case PB_OUTCOME_DONE: return "done";
    case PB_OUTCOME_SKIPPED: return "skipped";
    case PB_OUTCOME_RETRY: return "retry";
    case PB_OUTCOME_DEAD: return "dead";
    }
    return "?";
}

static enum pb_rc op_complete(struct sqlite_store *s, struct pb_store_op *op)
{
    int64_t now = pb_now_ms();
    int state;
    sqlite3_stmt *st;
    int64_t event_id = 0;
    char target[256], command[256];
    int is_refund_job;

    op->u.complete.next_job_id = 0;
    switch (op->u.complete.outcome) {
    case PB_OUTCOME_DONE: state = PB_JOB_DONE; break;
    case PB_OUTCOME_SKIPPED: state = PB_JOB_SKIPPED; break;
    case PB_OUTCOME_RETRY: state = PB_JOB_READY; break;
    default: state = PB_JOB_DEAD; break;
    }
    st = s->st[ST_JOB_FINISH];
    sqlite3_reset(st);
    sqlite3_bind_int(st, 1, state);
    bind_text(st, 2, op->u.complete.outcome == PB_OUTCOME_DONE ? op->u.complete.erp_id : NULL);
    bind_text(st, 3, op->u.complete.reference);
    bind_text(st, 4, op->u.complete.message);
    bind_text(st, 5, op->u.complete.error_class);
    sqlite3_bind_int64(st, 6, op->u.complete.outcome == PB_OUTCOME_RETRY ? op->u.complete.next_run_ms : now);
    sqlite3_bind_int64(st, 7, now);
    sqlite3_bind_int64(st, 8, op->u.complete.job_id);
    /* RETURNING: what the rest needs of the job, without a second look-up */
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE)
        return pb_err_set(&op->err, PB_ERR_EXISTS, "job %lld is no longer leased by this worker",
                          (long long)op->u.complete.job_id);
    if (step != SQLITE_ROW)
        return db_err(s->db, &op->err, "finish job");
    event_id = sqlite3_column_int64(st, 0);
    snprintf(target, sizeof(target), "%s", (const char *)sqlite3_column_text(st, 1));
    snprintf(command, sizeof(command), "%s", (const char *)sqlite3_column_text(st, 2));
    is_refund_job = strcmp((const char *)sqlite3_column_text(st, 3), "paybridge.refund") == 0;
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s->db, &op->err, "finish job");

    st = s->st[ST_ATTEMPT_INSERT];
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, op->u.complete.job_id);
    sqlite3_bind_int(st, 2, (int)op->u.complete.attempt);
    sqlite3_bind_int64(st, 3, op->u.complete.started_ms);
    sqlite3_bind_int64(st, 4, op->u.complete.duration_ms);
    bind_text(st, 5, outcome_name(op->u.complete.outcome));
    bind_text(st, 6, op->u.complete.message);
    bind_text(st, 7, op->u.complete.error_class);
    bind_text(st, 8, op->u.complete.trace_json);
    bind_text(st, 9, op->u.complete.document_json);
    bind_text(st, 10, op->u.complete.result_json);
    bind_text(st, 11, op->u.complete.mapping_version);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s->db, &op->err, "insert attempt");

    if (op->u.complete.outcome == PB_OUTCOME_DONE || op->u.complete.next.flow) {
        if (op->u.complete.outcome == PB_OUTCOME_DONE && op->u.complete.reference &&
            op->u.complete.erp_id && op->u.complete.erp_id[0]) {
            sqlite3_stmt *x = s->st[ST_XREF_INSERT];
            sqlite3_reset(x);
            bind_text(x, 1, target);
            bind_text(x, 2, command);
            bind_text(x, 3, op->u.complete.reference);
            bind_text(x, 4, op->u.complete.erp_id);
            sqlite3_bind_int64(x, 5, event_id);
            sqlite3_bind_int64(x, 6, now);
            if (sqlite3_step(x) != SQLITE_DONE)
                return db_err(s->db, &op->err, "insert xref");
        }
        if (op->u.complete.next.flow && event_id && op->u.complete.next_lease_until > 0) {
            /* the next step, claimed by this worker in this commit */
            const struct pb_job_new *j = &op->u.complete.next;
            sqlite3_stmt *st = s->st[ST_JOB_INSERT_LEASED];
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, event_id);
            bind_text(st, 2, j->flow);
            sqlite3_bind_int(st, 3, j->step);
            bind_text(st, 4, j->step_name ? j->step_name : "");
            bind_text(st, 5, j->target);
            bind_text(st, 6, j->command);
            sqlite3_bind_int64(st, 7, now);
            sqlite3_bind_int64(st, 8, op->u.complete.next_lease_until);
            sqlite3_bind_int64(st, 9, now);
            sqlite3_bind_int64(st, 10, now);
            if (sqlite3_step(st) != SQLITE_DONE)
                return db_err(s->db, &op->err, "insert leased job");
            if (sqlite3_changes(s->db) > 0)
                op->u.complete.next_job_id = sqlite3_last_insert_rowid(s->db);
        } else if (op->u.complete.next.flow && event_id) {
            enum pb_rc rc = insert_job(s, event_id, &op->u.complete.next, now, &op->err);
            if (rc)
                return rc;
        }
    }
    if (is_refund_job &&
        (op->u.complete.outcome == PB_OUTCOME_DONE || op->u.complete.outcome == PB_OUTCOME_DEAD)) {
        /* a gateway refund paybridge asked for: the request leaves the ceiling's
         * "in flight" sum (succeeded: its refund.succeeded event counts now) */
        sqlite3_stmt *u = s->st[ST_REFUND_DONE];
        sqlite3_reset(u);
        bind_text(u, 1, op->u.complete.outcome == PB_OUTCOME_DONE ? "succeeded" : "failed");
        bind_text(u, 2, op->u.complete.outcome == PB_OUTCOME_DONE ? op->u.complete.erp_id : NULL);
        bind_text(u, 3, op->u.complete.message);
        sqlite3_bind_int64(u, 4, now);
        sqlite3_bind_int64(u, 5, event_id);
        int ok = sqlite3_step(u) == SQLITE_DONE;
        sqlite3_reset(u);
        if (!ok)
            return db_err(s->db, &op->err, "refund request");
    }
    if (op->u.complete.outcome == PB_OUTCOME_DONE && op->u.complete.emit.connection) {
        /* the event the job produced, exactly like an inbound one (de-duplicated) */
        struct pb_store_op in;
        enum pb_rc rc;
        memset(&in, 0, sizeof(in));
        in.kind = PB_OP_INBOX_PUT;
        in.u.inbox.connection = op->u.complete.emit.connection;
        in.u.inbox.gateway_event_id = op->u.complete.emit.gateway_event_id;
        in.u.inbox.type = op->u.complete.emit.type;
        in.u.inbox.event_json = op->u.complete.emit.event_json;
        in.u.inbox.original_gateway_id = op->u.complete.emit.original_gateway_id;
        in.u.inbox.received_ms = now;
        memcpy(in.u.inbox.jobs, op->u.complete.emit.jobs, sizeof(in.u.inbox.jobs));
        in.u.inbox.n_jobs = op->u.complete.emit.n_jobs;
        rc = op_inbox(s, &in);
        if (rc) {
            op->err = in.err;
            return rc;
        }
    }
    return PB_OK;
}

/* ---- pollers, refunds, chargebacks ------------------------------------------------------ */

static enum pb_rc op_cursor(struct sqlite_store *s, struct pb_store_op *op)
{
    sqlite3_stmt *st;
    enum pb_rc rc = PB_OK;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO cursors(connection, cursor, updated_at) VALUES(?,?,?)"
                           " ON CONFLICT(connection) DO UPDATE SET cursor=excluded.cursor,"
                           " updated_at=excluded.updated_at",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s->db, &op->err, "cursor");
    bind_text(st, 1, op->u.cursor.connection);
    bind_text(st, 2, op->u.cursor.cursor);
    sqlite3_bind_int64(st, 3, pb_now_ms());
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_err(s->db, &op->err, "cursor");
    sqlite3_finalize(st);
    return rc;
}

/* Amounts of a payment: its own, what refunds have taken (refund.succeeded
 * events naming it) and what paybridge has asked for and not yet seen back. */
static enum pb_rc payment_amounts(sqlite3 *db, const char *connection, const char *gateway_id,
                                  int64_t *event_id, int64_t *amount, char currency[4],
                                  int64_t *refunded, int64_t *pending, struct pb_err *err)
{
    sqlite3_stmt *st;
    enum pb_rc rc = PB_OK;
    *event_id = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, json_extract(body, '$.payment.amount.minor'),"
                           " json_extract(body, '$.payment.amount.currency') FROM events"
                           " WHERE connection=? AND gateway_event_id=? AND type='payment.succeeded'",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(db, err, "payment");
    bind_text(st, 1, connection);
    bind_text(st, 2, gateway_id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *event_id = sqlite3_column_int64(st, 0);
        *amount = sqlite3_column_int64(st, 1);
        snprintf(currency, 4, "%s", sqlite3_column_text(st, 2) ? (const char *)sqlite3_column_text(st, 2) : "");
    }
    sqlite3_finalize(st);
    if (!*event_id)
        return pb_err_set(err, PB_ERR_NOTFOUND,
                          "no successful payment %s on connection %s is known to paybridge",
                          gateway_id, connection);
    if (sqlite3_prepare_v2(db,
                           "SELECT COALESCE(SUM(json_extract(body, '$.refund.amount.minor')), 0) FROM events"
                           " WHERE connection=? AND original_gateway_id=? AND type='refund.succeeded'",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(db, err, "refunds");
    bind_text(st, 1, connection);
    bind_text(st, 2, gateway_id);
    *refunded = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db,
                           "SELECT COALESCE(SUM(amount_minor), 0) FROM refund_requests"
                           " WHERE connection=? AND original_gateway_id=? AND state='requested'",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(db, err, "refund requests");
    bind_text(st, 1, connection);
    bind_text(st, 2, gateway_id);
    *pending = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc;
}

static enum pb_rc op_refund(struct sqlite_store *s, struct pb_store_op *op)
{
    int64_t pay_event, amount = 0, refunded = 0, pending = 0, left;
    char currency[4] = "";
    sqlite3_stmt *st;
    enum pb_rc rc;
    struct pb_store_op in;

    /* the same reference again: idempotent, report the first request */
    if (sqlite3_prepare_v2(s->db, "SELECT id, event_id FROM refund_requests WHERE reference=?", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s->db, &op->err, "refund");
    bind_text(st, 1, op->u.refund.reference);
    if (sqlite3_step(st) == SQLITE_ROW) {
        op->u.refund.request_id = sqlite3_column_int64(st, 0);
        op->u.refund.event_id = sqlite3_column_int64(st, 1);
        op->u.refund.duplicate = 1;
        sqlite3_finalize(st);
        return PB_OK;
    }
    sqlite3_finalize(st);
    rc = payment_amounts(s->db, op->u.refund.connection, op->u.refund.original_gateway_id, &pay_event,
                         &amount, currency, &refunded, &pending, &op->err);
    if (rc)
        return rc;
    if (strcmp(currency, op->u.refund.currency) != 0)
        return pb_err_set(&op->err, PB_ERR_INVALID,
                          "the payment is in %s; a refund of it must be in %s too, not %s", currency,
                          currency, op->u.refund.currency);
    left = amount - refunded - pending;
    op->u.refund.refundable_minor = left;
    if (op->u.refund.amount_minor <= 0)
        return pb_err_set(&op->err, PB_ERR_INVALID, "a refund amount must be greater than zero");
    if (op->u.refund.amount_minor > left)
        return pb_err_set(&op->err, PB_ERR_PERMANENT,
                          "refund refused: it would take the refunds past the original payment "
                          "(payment %lld, refunded %lld, in flight %lld, so at most %lld minor units "
                          "of %s are left; asked %lld)",
                          (long long)amount, (long long)refunded, (long long)pending,
                          (long long)(left > 0 ? left : 0), currency,
                          (long long)op->u.refund.amount_minor);
    /* the refund.requested event and its gateway job */
    memset(&in, 0, sizeof(in));
    in.kind = PB_OP_INBOX_PUT;
    in.u.inbox.connection = op->u.refund.connection;
    {
        char gw[300];
        snprintf(gw, sizeof(gw), "refund-request:%s", op->u.refund.reference);
        in.u.inbox.gateway_event_id = gw;
        in.u.inbox.type = "refund.requested";
        in.u.inbox.event_json = op->u.refund.event_json;
        in.u.inbox.received_ms = op->u.refund.now_ms;
        in.u.inbox.jobs[0] = op->u.refund.job;
        in.u.inbox.n_jobs = 1;
        rc = op_inbox(s, &in);
    }
    if (rc) {
        op->err = in.err;
        return rc;
    }
    op->u.refund.event_id = in.u.inbox.event_id;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO refund_requests(connection, original_gateway_id, amount_minor,"
                           " currency, reason, reference, state, event_id, created_at, updated_at)"
                           " VALUES(?,?,?,?,?,?,'requested',?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s->db, &op->err, "refund");
    bind_text(st, 1, op->u.refund.connection);
    bind_text(st, 2, op->u.refund.original_gateway_id);
    sqlite3_bind_int64(st, 3, op->u.refund.amount_minor);
    bind_text(st, 4, op->u.refund.currency);
    bind_text(st, 5, op->u.refund.reason);
    bind_text(st, 6, op->u.refund.reference);
    sqlite3_bind_int64(st, 7, op->u.refund.event_id);
    sqlite3_bind_int64(st, 8, op->u.refund.now_ms);
    sqlite3_bind_int64(st, 9, op->u.refund.now_ms);
    rc = sqlite3_step(st) == SQLITE_DONE ? PB_OK : db_err(s->db, &op->err, "refund");
    op->u.refund.request_id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    return rc;
}

static enum pb_rc op_chargeback(struct sqlite_store *s, struct pb_store_op *op)
{
    sqlite3_stmt *st;
    enum pb_rc rc = PB_OK;
    struct pb_store_op in;
    if (op->u.chargeback.id == 0) {
        if (sqlite3_prepare_v2(s->db,
                               "INSERT INTO chargebacks(connection, original_gateway_id, amount_minor,"
                               " currency, reason_code, deadline, state, created_at, updated_at)"
                               " VALUES(?,?,?,?,?,?,'opened',?,?)",
                               -1, &st, NULL) != SQLITE_OK)
            return db_err(s->db, &op->err, "chargeback");
        bind_text(st, 1, op->u.chargeback.connection);
        bind_text(st, 2, op->u.chargeback.original_gateway_id);
        sqlite3_bind_int64(st, 3, op->u.chargeback.amount_minor);
        bind_text(st, 4, op->u.chargeback.currency);
        bind_text(st, 5, op->u.chargeback.reason_code);
        bind_text(st, 6, op->u.chargeback.deadline);
        sqlite3_bind_int64(st, 7, op->u.chargeback.now_ms);
        sqlite3_bind_int64(st, 8, op->u.chargeback.now_ms);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = sqlite3_extended_errcode(s->db) == SQLITE_CONSTRAINT_UNIQUE
                     ? pb_err_set(&op->err, PB_ERR_EXISTS,
                                  "a chargeback for payment %s with reason %s is already open",
                                  op->u.chargeback.original_gateway_id, op->u.chargeback.reason_code)
                     : db_err(s->db, &op->err, "chargeback");
            sqlite3_finalize(st);
            return rc;
        }
        op->u.chargeback.chargeback_id = sqlite3_last_insert_rowid(s->db);
        sqlite3_finalize(st);
    } else {
        if (sqlite3_prepare_v2(s->db, "UPDATE chargebacks SET state=?, updated_at=? WHERE id=?", -1,
                               &st, NULL) != SQLITE_OK)
            return db_err(s->db, &op->err, "chargeback");
        bind_text(st, 1, op->u.chargeback.state);
        sqlite3_bind_int64(st, 2, op->u.chargeback.now_ms);
        sqlite3_bind_int64(st, 3, op->u.chargeback.id);
        if (sqlite3_step(st) != SQLITE_DONE) {
            sqlite3_finalize(st);
            return db_err(s->db, &op->err, "chargeback");
        }
        sqlite3_finalize(st);
        if (sqlite3_changes(s->db) == 0)
            return pb_err_set(&op->err, PB_ERR_NOTFOUND, "no chargeback with id %lld",
                              (long long)op->u.chargeback.id);
        op->u.chargeback.chargeback_id = op->u.chargeback.id;
    }
    memset(&in, 0, sizeof(in));
    in.kind = PB_OP_INBOX_PUT;
    in.u.inbox.connection = op->u.chargeback.connection;
    in.u.inbox.gateway_event_id = op->u.chargeback.gateway_event_id;
    in.u.inbox.type = op->u.chargeback.event_type;
    in.u.inbox.event_json = op->u.chargeback.event_json;
    in.u.inbox.original_gateway_id = op->u.chargeback.original_gateway_id;
    in.u.inbox.received_ms = op->u.chargeback.now_ms;
    memcpy(in.u.inbox.jobs, op->u.chargeback.jobs, sizeof(in.u.inbox.jobs));
    in.u.inbox.n_jobs = op->u.chargeback.n_jobs;
    rc = op_inbox(s, &in);
    if (rc) {
        op->err = in.err;
        return rc;
    }
    op->u.chargeback.event_id = in.u.inbox.event_id;
    return PB_OK;
}

static enum pb_rc op_replay(struct sqlite_store *s, struct pb_store_op *op)
{
    char sql[256];
    if (op->u.replay.job_id)
        snprintf(sql, sizeof(sql),
                 "UPDATE jobs SET state=0, attempts=0, next_run_at=%lld, updated_at=%lld,"
                 " last_error=NULL WHERE state=4 AND id=%lld",
                 (long long)op->u.replay.now_ms, (long long)op->u.replay.now_ms,
                 (long long)op->u.replay.job_id);
    else
        snprintf(sql, sizeof(sql),
                 "UPDATE jobs SET state=0, attempts=0, next_run_at=%lld, updated_at=%lld,"
                 " last_error=NULL WHERE state=4",
                 (long long)op->u.replay.now_ms, (long long)op->u.replay.now_ms);
    if (exec(s->db, sql, &op->err))
        return PB_ERR_STORE;
    op->u.replay.count = sqlite3_changes(s->db);
    if (op->u.replay.job_id && op->u.replay.count == 0)
        return pb_err_set(&op->err, PB_ERR_NOTFOUND, "job %lld is not a dead letter",
                          (long long)op->u.replay.job_id);
    return PB_OK;
}

static enum pb_rc op_recover(struct sqlite_store *s, struct pb_store_op *op)
{
    char sql[256];
    if (op->u.recover.all)
        snprintf(sql, sizeof(sql), "UPDATE jobs SET state=0, lease_until=NULL WHERE state=1");
    else
        snprintf(sql, sizeof(sql),
                 "UPDATE jobs SET state=0, lease_until=NULL WHERE state=1 AND lease_until < %lld",
                 (long long)op->u.recover.now_ms);
    if (exec(s->db, sql, &op->err))
        return PB_ERR_STORE;
    op->u.recover.count = sqlite3_changes(s->db);
    return PB_OK;
}

static enum pb_rc apply(struct sqlite_store *s, struct pb_store_op *op)
{
    switch (op->kind) {
    case PB_OP_INBOX_PUT: return op_inbox(s, op);
    case PB_OP_CLAIM: return op_claim(s, op);
    case PB_OP_COMPLETE: return op_complete(s, op);
    case PB_OP_REPLAY: return op_replay(s, op);
    case PB_OP_RECOVER: return op_recover(s, op);
    case PB_OP_CURSOR_SET: return op_cursor(s, op);
    case PB_OP_REFUND_REQUEST: return op_refund(s, op);
    case PB_OP_CHARGEBACK: return op_chargeback(s, op);
    }
    return pb_err_set(&op->err, PB_ERR_INTERNAL, "unknown store op %d", (int)op->kind);
}

/* ---- the writer thread ------------------------------------------------------------ */

/* BEGIN IMMEDIATE and COMMIT, retried while another process (a CLI command,
 * a backup) holds the lock or recovers the WAL. The busy handler covers most
 * cases; SQLITE_BUSY_RECOVERY and a COMMIT that meets a reader's lock on the
 * WAL index are returned without it, so we wait here, up to ~10 s. */
static int exec_retry(sqlite3 *db, const char *sql, struct pb_err *err)
{
    for (int i = 0;; i++) {
        int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            return 0;
        if (((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) || i >= 2000) {
            pb_err_set(err, PB_ERR_STORE, "%s: %s", sql, sqlite3_errmsg(db));
            return -1;
        }
        usleep(5000);
    }
}

static void finish(struct pb_store_op *op)
{
    if (op->wait_lock__) {
        pthread_mutex_t *l = op->wait_lock__;
        pthread_cond_t *c = op->wait_cond__;
        pthread_mutex_lock(l);
        op->finished__ = 1;
        pthread_cond_signal(c);
        pthread_mutex_unlock(l);
    } else if (op->done) {
        op->done(op);
    }
}

/* Apply a batch inside the open transaction. Each op runs in a SAVEPOINT so
 * that a failed op leaves nothing behind and the others still commit; in
 * `fast` mode webhooks (INBOX_PUT) and job completions (COMPLETE), three of
 * the four ops of a posted payment, skip theirs: three statements and a
 * sub-journal copy of every page the op touches, 2-4 us of the writer's CPU
 * per webhook (of ~40). Such an op that fails in fast mode returns -1:
 * the caller rolls the whole transaction back and runs the batch again with a
 * savepoint per op. */
static int apply_batch(struct sqlite_store *s, struct pb_store_op **batch, size_t n, int fast)
{
    for (size_t i = 0; i < n; i++) {
        struct pb_store_op *op = batch[i];
        if (fast && (op->kind == PB_OP_INBOX_PUT || op->kind == PB_OP_COMPLETE)) {
            op->rc = apply(s, op);
            if (op->rc)
                return -1;
            continue;
        }
        sqlite3_reset(s->st[ST_SAVEPOINT]);
        sqlite3_step(s->st[ST_SAVEPOINT]);
        op->rc = apply(s, op);
        if (op->rc) {
            sqlite3_reset(s->st[ST_ROLLBACK_TO]);
            sqlite3_step(s->st[ST_ROLLBACK_TO]);
        }
        sqlite3_reset(s->st[ST_RELEASE]);
        sqlite3_step(s->st[ST_RELEASE]);
    }
    return 0;
}

/* A batch rolled back before its commit: what the ops returned is void. */
static void batch_void(struct pb_store_op **batch, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (batch[i]->kind == PB_OP_CLAIM && batch[i]->u.claim.jobs) {
            pb_store_jobs_free(batch[i]->u.claim.jobs, batch[i]->u.claim.n);
            batch[i]->u.claim.jobs = NULL;
            batch[i]->u.claim.n = 0;
        }
        batch[i]->rc = PB_OK;
        pb_err_clear(&batch[i]->err);
    }
}

/* The writer's half of a WAL restart (the other half is checkpointer_main).
 * No other connection writes, so a PASSIVE checkpoint here copies every frame
 * the checkpointer has not copied yet (a few hundred pages, a few ms), unless
 * a reader still reads an older snapshot; then the BEGIN that follows finds
 * the WAL fully copied and starts it again from its first frame. */
static void wal_tail_checkpoint(struct sqlite_store *s)
{
    int log = -1, copied = -1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_mutex_lock(&s->stats_lock);
    s->stats.wal_pause_ns += (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
    if (rc == SQLITE_OK && log == copied)
        s->stats.wal_restarts++;
    pthread_mutex_unlock(&s->stats_lock);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The writer's fsync is also its batching: while COMMIT waits for the disk,
 * the next ops queue up and share the next commit. Rejected: pipelining the
 * fsync (synchronous=NORMAL on this connection, and a thread that
 * fdatasyncs the WAL and only then finishes the committed batches, while the
 * writer goes on). Measured on the 2-core bench machine, back to back with
 * this design: ingest fell from 22,900 to 17,100 acks/s (7.6 instead of 16.1
 * acks per commit: each commit costs CPU, and the CPU is what runs out), p50
 * at 5,000/s rose from 0.44 to 0.69 ms, and end to end did not change
 * (4,400 events/s; the writer's time in COMMIT fell from 5.3 to 1.7 s of
 * 11.3, but the machine was as busy as before). */
static void *writer_main(void *arg)
{
    struct sqlite_store *s = arg;
    struct pb_store_op *batch[MAX_BATCH];
    pb_log_buffer(1); /* the callbacks' log lines go out once per commit */
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&s->lock);
        while (!s->head && !s->stop)
            pthread_cond_wait(&s->cond, &s->lock);
        if (!s->head && s->stop) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        while (s->head && n < MAX_BATCH) {
            batch[n++] = s->head;
            s->head = s->head->next__;
        }
        if (!s->head)
            s->tail = NULL;
        pthread_mutex_unlock(&s->lock);

        struct pb_err err = {0};
        uint64_t t_begin = now_ns(), t_commit;
        if (atomic_exchange(&s->restart_wanted, 0))
            wal_tail_checkpoint(s);
        int ok = exec_retry(s->db, "BEGIN IMMEDIATE", &err) == 0;
        if (ok && apply_batch(s, batch, n, 1) != 0) {
            /* a webhook failed half-way, without a savepoint: start over */
            for (int i = 0; i < ST_COUNT; i++)
                sqlite3_reset(s->st[i]);
            exec(s->db, "ROLLBACK", NULL); /* an I/O error may have rolled back already */
            batch_void(batch, n);
            ok = exec_retry(s->db, "BEGIN IMMEDIATE", &err) == 0;
            if (ok)
                apply_batch(s, batch, n, 0);
        }
        /* A statement left on a row keeps a read snapshot open after COMMIT;
         * once another process (a CLI `dlq replay`) commits, that stale
         * snapshot makes every later BEGIN IMMEDIATE fail with SQLITE_BUSY
         * (BUSY_SNAPSHOT), for good. Reset them all before committing. */
        for (int i = 0; i < ST_COUNT; i++)
            sqlite3_reset(s->st[i]);
        t_commit = now_ns();
        if (ok && exec_retry(s->db, "COMMIT", &err) != 0) {
            exec(s->db, "ROLLBACK", NULL);
            ok = 0;
        }
        if (!ok) {
            pb_log(PB_LOG_ERROR, "store.commit_failed", "error", err.msg, (char *)NULL);
            for (size_t i = 0; i < n; i++) {
                batch[i]->rc = PB_ERR_STORE;
                pb_err_set(&batch[i]->err, PB_ERR_STORE, "the store could not commit: %s", err.msg);
                if (batch[i]->kind == PB_OP_CLAIM && batch[i]->u.claim.jobs) {
                    pb_store_jobs_free(batch[i]->u.claim.jobs, batch[i]->u.claim.n);
                    batch[i]->u.claim.jobs = NULL;
                    batch[i]->u.claim.n = 0;
                }
            }
        }
        int pages = 0, hi = 0;
        sqlite3_db_status(s->db, SQLITE_DBSTATUS_CACHE_WRITE, &pages, &hi, 1);
        uint64_t t_end = now_ns();
        pthread_mutex_lock(&s->stats_lock);
        s->stats.busy_ns += t_end - t_begin;
        s->stats.commit_ns += t_end - t_commit;
        s->stats.pages_written += (uint64_t)pages;
        s->stats.commits++;
        s->stats.ops += n;
        if (n > s->stats.max_batch)
            s->stats.max_batch = n;
        pthread_mutex_unlock(&s->stats_lock);
        for (size_t i = 0; i < n; i++)
            finish(batch[i]);
        pb_log_flush();
    }
    pb_log_buffer(0);
    return NULL;
}

static void sqlite_submit(struct pb_store *base, struct pb_store_op *op)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    op->next__ = NULL;
    pb_err_clear(&op->err);
    pthread_mutex_lock(&s->lock);
    if (s->tail)
        s->tail->next__ = op;
    else
        s->head = op;
    s->tail = op;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* ---- open / close ---------------------------------------------------------------------- */

static int open_conn(const char *path, int readonly, sqlite3 **out, struct pb_err *err)
{
    sqlite3 *db = NULL;
    int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        pb_err_set(err, PB_ERR_STORE, "cannot open the store %s: %s", path,
                   db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, 10000);
    if (!readonly) {
        if (exec_retry(db, "PRAGMA journal_mode=WAL", err) || exec(db, "PRAGMA synchronous=FULL", err) ||
            exec(db, "PRAGMA foreign_keys=OFF", err) ||
            exec(db, "PRAGMA wal_autocheckpoint=0", err) ||
            /* the WAL restarts at ~128 MiB (checkpointer_main); after a stall
             * (a long reader) it shrinks back to 256 MiB when it restarts */
            exec(db, "PRAGMA journal_size_limit=268435456", err)) {
            sqlite3_close(db);
            return -1;
        }
    }
    *out = db;
    return 0;
}

static int migrate(sqlite3 *db, struct pb_err *err)
{
    int version = 0;
    sqlite3_stmt *st;
    /* a current store is only read: CLI commands that open it while the
     * daemon runs take no write lock */
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='schema_version'", -1, &st, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            version = (int)strtol((const char *)sqlite3_column_text(st, 0), NULL, 10);
        sqlite3_finalize(st);
        if (version == SCHEMA_VERSION)
            return 0;
        version = 0;
    }
    if (exec_retry(db, "BEGIN IMMEDIATE", err))
        return -1;
    if (exec(db, "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)", err))
        goto fail;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='schema_version'", -1, &st, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            version = (int)strtol((const char *)sqlite3_column_text(st, 0), NULL, 10);
        sqlite3_finalize(st);
    }
    if (version > SCHEMA_VERSION) {
        pb_err_set(err, PB_ERR_STORE,
                   "the store has schema version %d but this paybridge knows only %d; upgrade paybridge",
                   version, SCHEMA_VERSION);
        goto fail;
    }
    for (int v = version; v < SCHEMA_VERSION; v++)
        if (exec(db, SCHEMA[v], err))
            goto fail;
    {
        char sql[128];
        snprintf(sql, sizeof(sql),
                 "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', '%d')",
                 SCHEMA_VERSION);
        if (exec(db, sql, err))
            goto fail;
    }
    return exec(db, "COMMIT", err);
fail:
    exec(db, "ROLLBACK", NULL);
    return -1;
}

static void sqlite_close(struct pb_store *base);

/* WAL checkpoints. With SQLite's automatic checkpoint, the COMMIT that crosses
 * the threshold copies pages into the database and fsyncs it on the writer
 * thread, and every webhook of that batch waits (bench: p99 12 ms at 5,000/s).
 * Instead the writer never checkpoints on its own (wal_autocheckpoint=0) and
 * this thread runs PASSIVE checkpoints (they never block the writer) on its
 * own connection: every 200 ms, or every 20 ms while the WAL is long (back
 * to back, their fsyncs got in the way of the writer's).
 *
 * A passive checkpoint alone cannot keep the WAL short under a sustained load:
 * SQLite writes the WAL from its first frame again only when a write begins
 * with every frame already copied, and a writer that commits every
 * millisecond is always a few frames ahead. The WAL then grows for as long as
 * the load lasts (1.2 GB in the bench's 10 s of ingest), and appending to a
 * growing file costs far more than overwriting one: new page-cache pages
 * zeroed by the kernel, block allocation, and an fdatasync that must also
 * commit the file's new size (measured here: 256 KiB write + fdatasync, 1,437/s
 * appending vs 4,014/s overwriting). So once the WAL holds WAL_RESTART_FRAMES
 * and this thread has copied all but WAL_TAIL_FRAMES of them, it asks the
 * writer (restart_wanted) to copy the rest itself between two batches
 * (wal_tail_checkpoint), and the file is reused from its start, at a steady
 * size below journal_size_limit. The writer pauses then: a few fsyncs (the
 * tail's pages into the database, the database again once the WAL is
 * complete, the new WAL header) and SQLite's sort of the tail's frames. It
 * paused 5-25 ms until this thread also fdatasynced the database after its
 * own checkpoints (see below); since then ~2.5 ms. So the threshold is a trade between
 * how often and how long (measured with `?wal_restart_mib=`, bench/run.sh
 * scenario 3 and an open loop at 5,000/s; one pause costs ~6 ms plus ~1 ms
 * per 4,000 frames): at 16 MiB 46 pauses of 7 ms in 10 s and a p99 of
 * 13 ms; at 256 MiB 4 pauses of 22 ms and a p99 of 7-18 ms; at 128 MiB the
 * p99 was 5.7-9.7 ms over five runs. The saturated ingest rate went from
 * 12,300 to 16,200 acks/s with the restarts.
 * paybridge_store_wal_restart_pause_seconds_total counts the pauses.
 *
 * Rejected: a RESTART checkpoint from this thread (it waits for the writer
 * with the busy handler and holds it out while it copies everything: p99
 * 8-16 ms); letting the WAL grow (unbounded disk, and the slow appends). */
static void *checkpointer_main(void *arg)
{
    struct sqlite_store *s = arg;
    int hurry = 0, synced = -1;
    for (;;) {
        struct timespec ts;
        int stop, log = -1, copied = -1;
        long wait_ms = hurry ? 20 : 200;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += wait_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&s->lock);
        if (!s->stop)
            pthread_cond_timedwait(&s->ckpt_cond, &s->lock, &ts);
        stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        if (sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied) !=
            SQLITE_OK)
            log = copied = -1;
        /* SQLite fsyncs the database only after a checkpoint that copied the
         * whole WAL, which under load is only the writer's tail checkpoint:
         * its fdatasync then wrote back everything copied since the last
         * restart, and the writer (every webhook) waited 13-16 ms for it at
         * 5,000/s. Sync what was copied here, off the writer's path. */
        if (s->ckpt_fd >= 0 && copied > 0 && copied != synced) {
            fdatasync(s->ckpt_fd);
            synced = copied;
        }
        if (stop)
            break;
        hurry = log >= s->wal_restart_frames;
        if (hurry && log - copied <= WAL_TAIL_FRAMES)
            atomic_store(&s->restart_wanted, 1);
    }
    return NULL;
}

/* "PATH" or "PATH?wal_restart_mib=N" (1..4096): the path alone in *path_out
 * (malloc'ed), the WAL restart threshold in frames. */
static enum pb_rc parse_dsn(const char *dsn, char **path_out, int *frames, struct pb_err *err)
{
    const char *q = strchr(dsn, '?');
    *frames = WAL_RESTART_FRAMES;
    if (q) {
        char *end;
        long mib;
        if (strncmp(q + 1, "wal_restart_mib=", 16) != 0)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "store \"%s\": unknown option \"%s\" (the only option is "
                              "wal_restart_mib=N)",
                              dsn, q + 1);
        mib = strtol(q + 17, &end, 10);
        if (end == q + 17 || *end || mib < 1 || mib > 4096)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "store \"%s\": wal_restart_mib must be a whole number of MiB from 1 "
                              "to 4096",
                              dsn);
        *frames = (int)(mib * 1024 * 1024 / 4096);
    }
    *path_out = q ? strndup(dsn, (size_t)(q - dsn)) : strdup(dsn);
    return *path_out ? PB_OK : pb_err_set(err, PB_ERR_NOMEM, "out of memory");
}

static enum pb_rc sqlite_open(const char *dsn, struct pb_store **out, struct pb_err *err)
{
    struct sqlite_store *s;
    char *path;
    int frames;
    enum pb_rc rc = parse_dsn(dsn, &path, &frames, err);
    if (rc)
        return rc;
    if (!(s = calloc(1, sizeof(*s)))) {
        free(path);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    s->base.magic = PB_STORE_MAGIC;
    s->base.ops = &pb_store_sqlite_ops;
    s->ckpt_fd = -1;
    s->path = path;
    s->wal_restart_frames = frames;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->stats_lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_cond_init(&s->ckpt_cond, NULL);
    if (open_conn(path, 0, &s->db, err) || migrate(s->db, err))
        goto fail;
    if (open_conn(path, 0, &s->ckpt_db, err))
        goto fail;
    s->ckpt_fd = open(path, O_RDONLY | O_CLOEXEC); /* -1: no early syncs, as SQLite does */
    for (int i = 0; i < ST_COUNT; i++)
        if (sqlite3_prepare_v3(s->db, STMT_SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
            SQLITE_OK) {
            db_err(s->db, err, "prepare");
            goto fail;
        }
    for (int i = 0; i < N_READERS; i++) {
        pthread_mutex_init(&s->readers[i].lock, NULL);
        if (open_conn(path, 1, &s->readers[i].db, err))
            goto fail;
    }
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        pb_err_set(err, PB_ERR_INTERNAL, "cannot start the store writer thread");
        goto fail;
    }
    pthread_setname_np(s->thread, "pb-store-writer"); /* names for top -H, perf, bench */
    if (pthread_create(&s->checkpointer, NULL, checkpointer_main, s) == 0) {
        s->ckpt_started = 1;
        pthread_setname_np(s->checkpointer, "pb-checkpoint");
    }
    *out = &s->base;
    return PB_OK;
fail:
    s->thread = 0;
    sqlite_close(&s->base);
    return err ? err->rc : PB_ERR_STORE;
}

static void sqlite_close(struct pb_store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (!s)
        return;
    if (s->thread) {
        pthread_mutex_lock(&s->lock);
        s->stop = 1;
        pthread_cond_signal(&s->cond);
        pthread_cond_signal(&s->ckpt_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    if (s->ckpt_started)
        pthread_join(s->checkpointer, NULL);
    if (s->ckpt_db)
        sqlite3_close(s->ckpt_db);
    if (s->ckpt_fd >= 0)
        close(s->ckpt_fd);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    for (int i = 0; i < N_READERS; i++) {
        sqlite3_finalize(s->readers[i].xref);
        if (s->readers[i].db)
            sqlite3_close(s->readers[i].db);
        pthread_mutex_destroy(&s->readers[i].lock);
    }
    if (s->db)
        sqlite3_close(s->db);
    free(s->path);
    free(s);
}

/* ---- reads ----------------------------------------------------------------------------- */

static struct reader *reader_get(struct sqlite_store *s)
{
    for (;;) {
        for (int i = 0; i < N_READERS; i++)
            if (pthread_mutex_trylock(&s->readers[i].lock) == 0)
                return &s->readers[i];
        pthread_mutex_lock(&s->readers[0].lock);
        return &s->readers[0];
    }
}

static enum pb_rc sqlite_xref_get(struct pb_store *base, const char *target, const char *kind,
                                  const char *reference, char *erp_id, size_t len,
                                  struct pb_err *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    struct reader *r = reader_get(s);
    sqlite3_stmt *st;
    enum pb_rc rc = PB_ERR_NOTFOUND;
    if (!r->xref &&
        sqlite3_prepare_v3(r->db,
                           "SELECT erp_id FROM xref WHERE target=? AND kind=? AND reference=?", -1,
                           SQLITE_PREPARE_PERSISTENT, &r->xref, NULL) != SQLITE_OK) {
        rc = db_err(r->db, err, "xref");
        pthread_mutex_unlock(&r->lock);
        return rc;
    }
    st = r->xref;
    sqlite3_reset(st);
    bind_text(st, 1, target);
    bind_text(st, 2, kind);
    bind_text(st, 3, reference);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(erp_id, len, "%s", (const char *)sqlite3_column_text(st, 0));
        rc = PB_OK;
    }
    sqlite3_reset(st); /* no snapshot left open on the reader */
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Run a SELECT and return its rows as an array of objects keyed by column name.
 * Columns whose name ends in "_json" are parsed as JSON (and renamed without the suffix). */
static json_t *rows(sqlite3 *db, const char *sql, const int64_t *ints, int n_ints,
                    const char *text, struct pb_err *err)
{
    sqlite3_stmt *st;
    json_t *arr;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        db_err(db, err, "query");
        return NULL;
    }
    for (int i = 0; i < n_ints; i++)
        sqlite3_bind_int64(st, i + 1, ints[i]);
    if (text)
        sqlite3_bind_text(st, n_ints + 1, text, -1, SQLITE_STATIC);
    arr = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *o = json_object();
        for (int c = 0; c < sqlite3_column_count(st); c++) {
            const char *name = sqlite3_column_name(st, c);
            size_t nl = strlen(name);
            json_t *v;
            switch (sqlite3_column_type(st, c)) {
            case SQLITE_INTEGER: v = json_integer(sqlite3_column_int64(st, c)); break;
            case SQLITE_NULL: v = json_null(); break;
            default: {
                const char *t = (const char *)sqlite3_column_text(st, c);
                if (nl > 5 && strcmp(name + nl - 5, "_json") == 0) {
                    v = json_loads(t, 0, NULL);
                    if (!v)
                        v = json_string(t);
                    char key[64];
                    snprintf(key, sizeof(key), "%.*s", (int)(nl - 5), name);
                    json_object_set_new(o, key, v);
                    continue;
                }
                v = json_string(t);
            }
            }
            json_object_set_new(o, name, v ? v : json_null());
        }
        json_array_append_new(arr, o);
    }
    sqlite3_finalize(st);
    return arr;
}

#define JOB_STATE_SQL                                                                          \
    "CASE state WHEN 0 THEN 'ready' WHEN 1 THEN 'leased' WHEN 2 THEN 'done' WHEN 3 THEN "      \
    "'skipped' ELSE 'dead' END"

static enum pb_rc sqlite_query(struct pb_store *base, const char *what, const json_t *args,
                               json_t **out, struct pb_err *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    struct reader *r = reader_get(s);
    json_t *res = NULL;
    int64_t limit = json_integer_value(json_object_get(args, "limit"));
    int64_t id = json_integer_value(json_object_get(args, "id"));
    if (limit <= 0)
        limit = 50;
    *out = NULL;

    if (strcmp(what, "events.list") == 0) {
        res = rows(r->db,
                   "SELECT e.id, e.connection, e.gateway_event_id, e.type, e.received_at, e.duplicates,"
                   " (SELECT CASE WHEN COUNT(*)=0 THEN 'no_flow' WHEN SUM(state=4)>0 THEN 'dead'"
                   "  WHEN SUM(state IN (0,1))>0 THEN 'pending' ELSE 'done' END"
                   "  FROM jobs j WHERE j.event_id=e.id) AS state"
                   " FROM events e ORDER BY e.id DESC LIMIT ?",
                   &limit, 1, NULL, err);
    } else if (strcmp(what, "events.show") == 0) {
        json_t *ev = rows(r->db,
                          "SELECT id, connection, gateway_event_id, type, received_at, duplicates,"
                          " body AS event_json FROM events WHERE id=?",
                          &id, 1, NULL, err);
        if (ev && json_array_size(ev) == 1) {
            res = json_incref(json_array_get(ev, 0));
            json_t *jobs = rows(r->db,
                                "SELECT id, flow, step, step_name, target, command, " JOB_STATE_SQL
                                " AS state, attempts, tries, erp_id, reference, last_error,"
                                " error_class, next_run_at FROM jobs WHERE event_id=? ORDER BY flow, step",
                                &id, 1, NULL, err);
            size_t i;
            json_t *job;
            json_array_foreach(jobs, i, job)
            {
                int64_t jid = json_integer_value(json_object_get(job, "id"));
                json_object_set_new(job, "attempts_detail",
                                    rows(r->db,
                                         "SELECT attempt, started_at, duration_ms, outcome, message,"
                                         " error_class, trace AS trace_json, document AS document_json,"
                                         " result AS result_json, mapping_version FROM attempts"
                                         " WHERE job_id=? ORDER BY id",
                                         &jid, 1, NULL, err));
            }
            json_object_set_new(res, "jobs", jobs);
        } else if (ev) {
            pb_err_set(err, PB_ERR_NOTFOUND, "no event with id %lld", (long long)id);
        }
        json_decref(ev);
    } else if (strcmp(what, "dlq.list") == 0) {
        res = rows(r->db,
                   "SELECT j.id AS job_id, j.event_id, e.connection, e.gateway_event_id, j.flow,"
                   " j.step_name, j.target, j.command, j.last_error AS reason, j.error_class,"
                   " j.tries, j.updated_at AS failed_at FROM jobs j JOIN events e ON e.id=j.event_id"
                   " WHERE j.state=4 ORDER BY j.updated_at DESC LIMIT ?",
                   &limit, 1, NULL, err);
    } else if (strcmp(what, "dlq.show") == 0) {
        json_t *j = rows(r->db,
                         "SELECT j.id AS job_id, j.event_id, j.flow, j.step_name, j.target, j.command,"
                         " " JOB_STATE_SQL " AS state, j.last_error AS reason, j.error_class, j.tries,"
                         " j.updated_at AS failed_at, e.body AS event_json FROM jobs j JOIN events e"
                         " ON e.id=j.event_id WHERE j.id=?",
                         &id, 1, NULL, err);
        if (j && json_array_size(j) == 1) {
            res = json_incref(json_array_get(j, 0));
            json_object_set_new(res, "attempts",
                                rows(r->db,
                                     "SELECT attempt, started_at, duration_ms, outcome, message,"
                                     " error_class, trace AS trace_json, document AS document_json,"
                                     " result AS result_json, mapping_version FROM attempts"
                                     " WHERE job_id=? ORDER BY id",
                                     &id, 1, NULL, err));
        } else if (j) {
            pb_err_set(err, PB_ERR_NOTFOUND, "no job with id %lld", (long long)id);
        }
        json_decref(j);
    } else if (strcmp(what, "jobs.states") == 0) {
        /* every state but done from its partial index, done = all - the rest:
         * a scrape costs the count of the smallest index, not a scan and a
         * sort of every job ever run (33 ms at 150,000 jobs, 2 ms this way) */
        json_t *a = rows(r->db,
                         "SELECT (SELECT COUNT(*) FROM jobs) AS total,"
                         " (SELECT COUNT(*) FROM jobs WHERE state=0) AS ready,"
                         " (SELECT COUNT(*) FROM jobs WHERE state=1) AS leased,"
                         " (SELECT COUNT(*) FROM jobs WHERE state=3) AS skipped,"
                         " (SELECT COUNT(*) FROM jobs WHERE state=4) AS dead",
                         NULL, 0, NULL, err);
        json_t *row = json_array_get(a, 0);
        if (row) {
            json_int_t total = json_integer_value(json_object_get(row, "total"));
            json_int_t ready = json_integer_value(json_object_get(row, "ready"));
            json_int_t leased = json_integer_value(json_object_get(row, "leased"));
            json_int_t skipped = json_integer_value(json_object_get(row, "skipped"));
            json_int_t dead = json_integer_value(json_object_get(row, "dead"));
            res = json_pack("{s:I,s:I,s:I,s:I,s:I}", "ready", ready, "leased", leased, "done",
                            total - ready - leased - skipped - dead, "skipped", skipped, "dead", dead);
        }
        json_decref(a);
    } else if (strcmp(what, "demo.summary") == 0) {
        /* posted: every job done or skipped and at least one flow step done;
         * declined: every job done or skipped and no flow step done */
        json_t *a = rows(r->db,
                         "SELECT (SELECT COUNT(*) FROM events) AS accepted,"
                         " (SELECT COALESCE(SUM(duplicates),0) FROM events) AS duplicates,"
                         " (SELECT COUNT(DISTINCT event_id) FROM jobs WHERE state=4) AS dead,"
                         " (SELECT COUNT(*) FROM jobs WHERE state IN (0,1)) AS pending,"
                         " (SELECT COUNT(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM jobs j"
                         "   WHERE j.event_id=e.id AND j.state IN (0,1,4)) AND EXISTS (SELECT 1 FROM jobs j"
                         "   WHERE j.event_id=e.id AND j.state=2 AND j.step>0 AND j.flow NOT LIKE 'paybridge.%')) AS posted,"
                         " (SELECT COUNT(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM jobs j"
                         "   WHERE j.event_id=e.id AND (j.state IN (0,1,4) OR (j.state=2 AND j.step>0"
                         "   AND j.flow NOT LIKE 'paybridge.%')))) AS declined",
                         NULL, 0, NULL, err);
        if (a) {
            res = json_incref(json_array_get(a, 0));
            json_decref(a);
        }
    } else if (strcmp(what, "cursor.get") == 0) {
        const char *c = json_string_value(json_object_get(args, "connection"));
        json_t *a = rows(r->db, "SELECT cursor FROM cursors WHERE connection=?", NULL, 0, c ? c : "", err);
        if (a) {
            res = json_array_size(a) ? json_incref(json_array_get(a, 0)) : json_pack("{s:n}", "cursor");
            json_decref(a);
        }
    } else if (strcmp(what, "refunds.list") == 0) {
        res = rows(r->db,
                   "SELECT id, connection, original_gateway_id, amount_minor, currency, reason, reference,"
                   " state, event_id, gateway_refund_id, message, created_at, updated_at"
                   " FROM refund_requests ORDER BY id DESC LIMIT ?",
                   &limit, 1, NULL, err);
    } else if (strcmp(what, "chargebacks.list") == 0) {
        res = rows(r->db,
                   "SELECT id, connection, original_gateway_id, amount_minor, currency, reason_code,"
                   " deadline, state, created_at, updated_at FROM chargebacks"
                   " ORDER BY (state IN ('won','lost')), deadline, id LIMIT ?",
                   &limit, 1, NULL, err);
    } else if (strcmp(what, "chargeback.get") == 0) {
        json_t *a = rows(r->db,
                         "SELECT id, connection, original_gateway_id, amount_minor, currency, reason_code,"
                         " deadline, state FROM chargebacks WHERE id=?",
                         &id, 1, NULL, err);
        if (a && json_array_size(a) == 1)
            res = json_incref(json_array_get(a, 0));
        else if (a)
            pb_err_set(err, PB_ERR_NOTFOUND, "no chargeback with id %lld", (long long)id);
        json_decref(a);
    } else if (strcmp(what, "original.find") == 0) {
        /* for a refund or chargeback event: the payment it belongs to, the ERP
         * ids the flow's steps made for that payment, and those made for other
         * events naming the same payment (e.g. a chargeback's reversal) */
        const char *c = json_string_value(json_object_get(args, "connection"));
        const char *g = json_string_value(json_object_get(args, "gateway_id"));
        const char *fl = json_string_value(json_object_get(args, "flow"));
        int64_t self = json_integer_value(json_object_get(args, "event_id"));
        sqlite3_stmt *st;
        if (!c || !g || !fl) {
            pb_err_set(err, PB_ERR_INVALID, "original.find needs connection, gateway_id and flow");
        } else if (sqlite3_prepare_v2(r->db,
                                      "SELECT id, body FROM events WHERE connection=? AND"
                                      " gateway_event_id=? AND type='payment.succeeded'",
                                      -1, &st, NULL) == SQLITE_OK) {
            int64_t pid = 0;
            json_t *ev = NULL, *refs = json_object(), *related = json_object();
            bind_text(st, 1, c);
            bind_text(st, 2, g);
            if (sqlite3_step(st) == SQLITE_ROW) {
                pid = sqlite3_column_int64(st, 0);
                ev = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
            }
            sqlite3_finalize(st);
            if (pid && sqlite3_prepare_v2(r->db,
                                          "SELECT step_name, erp_id FROM jobs WHERE event_id=? AND flow=?"
                                          " AND state=2 AND erp_id IS NOT NULL",
                                          -1, &st, NULL) == SQLITE_OK) {
                sqlite3_bind_int64(st, 1, pid);
                bind_text(st, 2, fl);
                while (sqlite3_step(st) == SQLITE_ROW)
                    json_object_set_new(refs, (const char *)sqlite3_column_text(st, 0),
                                        json_string((const char *)sqlite3_column_text(st, 1)));
                sqlite3_finalize(st);
            }
            if (sqlite3_prepare_v2(r->db,
                                   "SELECT j.step_name, j.erp_id FROM jobs j JOIN events e ON e.id=j.event_id"
                                   " WHERE e.connection=? AND e.original_gateway_id=? AND j.flow=?"
                                   " AND j.state=2 AND j.erp_id IS NOT NULL AND e.id<>? ORDER BY e.id",
                                   -1, &st, NULL) == SQLITE_OK) {
                bind_text(st, 1, c);
                bind_text(st, 2, g);
                bind_text(st, 3, fl);
                sqlite3_bind_int64(st, 4, self);
                while (sqlite3_step(st) == SQLITE_ROW)
                    json_object_set_new(related, (const char *)sqlite3_column_text(st, 0),
                                        json_string((const char *)sqlite3_column_text(st, 1)));
                sqlite3_finalize(st);
            }
            res = json_pack("{s:o,s:o,s:o}", "event", ev ? ev : json_null(), "refs", refs,
                            "related_refs", related);
        } else {
            db_err(r->db, err, "original");
        }
    } else if (strcmp(what, "payment.find") == 0) {
        const char *c = json_string_value(json_object_get(args, "connection"));
        const char *g = json_string_value(json_object_get(args, "gateway_id"));
        int64_t ev, amount = 0, refunded = 0, pending = 0;
        char cur[4];
        if (c && g && payment_amounts(r->db, c, g, &ev, &amount, cur, &refunded, &pending, err) == PB_OK) {
            json_t *b = rows(r->db, "SELECT body AS event_json FROM events WHERE id=?", &ev, 1, NULL, err);
            res = json_pack("{s:I,s:I,s:s,s:I,s:I,s:O}", "event_id", (json_int_t)ev, "amount_minor",
                            (json_int_t)amount, "currency", cur, "refunded_minor", (json_int_t)refunded,
                            "pending_minor", (json_int_t)pending, "event",
                            json_object_get(json_array_get(b, 0), "event"));
            json_decref(b);
        } else if (!c || !g) {
            pb_err_set(err, PB_ERR_INVALID, "payment.find needs connection and gateway_id");
        }
    } else if (strcmp(what, "recon.ledger") == 0) {
        /* the ledger side of a reconciliation run (cli/reconcile.c): the
         * payments and refunds of one connection that paybridge posted, dated
         * by the gateway (occurred_at, else received_at) in [from_ms, to_ms),
         * with the ERP id of the last completed step of their flow. Read-only;
         * refunds are negative, as the matcher wants. */
        const char *c = json_string_value(json_object_get(args, "connection"));
        int64_t range[2] = {json_integer_value(json_object_get(args, "from_ms")),
                            json_integer_value(json_object_get(args, "to_ms"))};
        if (!c || !json_is_integer(json_object_get(args, "from_ms")) ||
            !json_is_integer(json_object_get(args, "to_ms")))
            pb_err_set(err, PB_ERR_INVALID, "recon.ledger needs connection, from_ms and to_ms");
        else
            res = rows(r->db,
                       "SELECT gateway_ref, reference, amount_minor, currency, date_ms, kind, erp,"
                       " record_id FROM (SELECT e.id,"
                       /* a refund event may carry its payment too: the refund's own
                        * fields first */
                       "  CASE e.type WHEN 'refund.succeeded'"
                       "   THEN COALESCE(json_extract(e.body,'$.refund.gateway_id'), e.gateway_event_id)"
                       "   ELSE COALESCE(json_extract(e.body,'$.payment.gateway_id'), e.gateway_event_id)"
                       "  END AS gateway_ref,"
                       "  COALESCE(CASE e.type WHEN 'refund.succeeded'"
                       "   THEN json_extract(e.body,'$.refund.reference')"
                       "   ELSE json_extract(e.body,'$.payment.reference') END, '') AS reference,"
                       "  CASE e.type WHEN 'refund.succeeded'"
                       "   THEN -ABS(json_extract(e.body,'$.refund.amount.minor'))"
                       "   ELSE json_extract(e.body,'$.payment.amount.minor') END AS amount_minor,"
                       "  CASE e.type WHEN 'refund.succeeded'"
                       "   THEN json_extract(e.body,'$.refund.amount.currency')"
                       "   ELSE json_extract(e.body,'$.payment.amount.currency') END AS currency,"
                       "  COALESCE(CAST(strftime('%s', json_extract(e.body,'$.occurred_at')) AS INTEGER)"
                       "   * 1000, e.received_at) AS date_ms,"
                       "  CASE e.type WHEN 'refund.succeeded' THEN 'refund' ELSE 'payment' END AS kind,"
                       "  (SELECT j.target FROM jobs j WHERE j.event_id=e.id AND j.state=2"
                       "   AND j.erp_id IS NOT NULL AND j.flow NOT LIKE 'paybridge.%'"
                       "   ORDER BY j.step DESC, j.id DESC LIMIT 1) AS erp,"
                       "  (SELECT j.erp_id FROM jobs j WHERE j.event_id=e.id AND j.state=2"
                       "   AND j.erp_id IS NOT NULL AND j.flow NOT LIKE 'paybridge.%'"
                       "   ORDER BY j.step DESC, j.id DESC LIMIT 1) AS record_id"
                       "  FROM events e WHERE e.connection=?3"
                       "  AND e.type IN ('payment.succeeded','refund.succeeded'))"
                       " WHERE record_id IS NOT NULL AND amount_minor IS NOT NULL"
                       " AND currency IS NOT NULL AND date_ms >= ?1 AND date_ms < ?2 ORDER BY id",
                       range, 2, c, err);
    } else if (strcmp(what, "events.count") == 0) {
        json_t *a = rows(r->db,
                         "SELECT COUNT(*) AS events, COALESCE(SUM(duplicates),0) AS duplicates FROM events",
                         NULL, 0, NULL, err);
        if (a) {
            res = json_incref(json_array_get(a, 0));
            json_decref(a);
        }
    } else {
        pb_err_set(err, PB_ERR_INVALID, "unknown store query \"%s\"", what);
    }
    pthread_mutex_unlock(&r->lock);
    if (!res)
        return err && err->rc ? err->rc : PB_ERR_STORE;
    *out = res;
    return PB_OK;
}

static void sqlite_stats(struct pb_store *base, struct pb_store_stats *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    pthread_mutex_lock(&s->stats_lock);
    *out = s->stats;
    pthread_mutex_unlock(&s->stats_lock);
}

const struct pb_store_ops pb_store_sqlite_ops = {
    .name = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .submit = sqlite_submit,
    .xref_get = sqlite_xref_get,
    .query = sqlite_query,
    .stats = sqlite_stats,
};

/* ---- generic front ------------------------------------------------------------------- */

enum pb_rc pb_store_open(const char *dsn, struct pb_store **out, struct pb_err *err)
{
    if (strncmp(dsn, "sqlite:", 7) == 0)
        dsn += 7;
    else if (strncmp(dsn, "postgres", 8) == 0)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "store \"%s\": the postgres back end is not built yet; use sqlite:PATH", dsn);
    return pb_store_sqlite_ops.open(dsn, out, err);
}

void pb_store_close(struct pb_store *s)
{
    if (s)
        s->ops->close(s);
}

enum pb_rc pb_store_run(struct pb_store *s, struct pb_store_op *op)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    op->wait_lock__ = &lock;
    op->wait_cond__ = &cond;
    op->finished__ = 0;
    pb_store_submit(s, op);
    pthread_mutex_lock(&lock);
    while (!op->finished__)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    op->wait_lock__ = NULL;
    op->wait_cond__ = NULL;
    return op->rc;
}

enum pb_rc pb_store_query(struct pb_store *s, const char *what, const json_t *args, json_t **out,
                          struct pb_err *err)
{
    return s->ops->query(s, what, args, out, err);
}

void pb_store_jobs_free(struct pb_job *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(jobs[i].flow);
        free(jobs[i].step_name);
        free(jobs[i].target);
        free(jobs[i].command);
        free(jobs[i].event_json);
        free(jobs[i].refs_json);
    }
    free(jobs);
}
