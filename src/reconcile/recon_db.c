/*
 * reconcile/recon_db.c: the reconciliation database, a SQLite file of its own
 * beside the event store (var/recon.db). It owns three tables:
 *
 *   runs          one row per (connection, date): revision (re-runs), status,
 *                 trigger, times, the error of a failed run, and `detail`, a
 *                 JSON document with the summary, the inputs (batches, counts,
 *                 source), every break with its explanation, the problems of
 *                 the input and the report paths. A re-run replaces detail.
 *   run_records   the ledger record ids a run matched, so that the run of
 *                 another day never counts them as unsettled.
 *   run_items     the run's inputs and matches, one row each: every
 *                 settlement line and ledger record it matched on (as given
 *                 to the matcher) and every match with its rule, confidence
 *                 and explanation. Replaced by a re-run.
 *   journals      every journal paybridge posted or tried to: reference
 *                 (unique; the idempotency key), kind (batch, adjustment,
 *                 reversal), the lines, status (pending, posted, failed,
 *                 undone), the ERP id, the error, and for a reversal the
 *                 reference it reverses. A journal is inserted "pending"
 *                 BEFORE the ERP call and updated after, so a crash in between
 *                 leaves a pending row; the next run posts it again and the
 *                 connector's look-up by reference finds it if it got through.
 *
 * Why its own file: a run writes a whole day at once; in the event store that
 * would hold the writer lock while webhooks wait for their group commit.
 *
 * One run per day at a time: starting a run of (connection, date) whose row
 * is "running" is refused (PB_ERR_EXISTS) unless that run started more than
 * 30 minutes ago (its process died), so a run by hand and a scheduled one
 * never post the same journals at the same moment.
 *
 * Threading: one connection, every call under the mutex (the scheduler thread
 * and the admin API share it). WAL, synchronous=FULL: a posted journal's row
 * is durable before the run reports it.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reconcile/reconcile_internal.h"

/* A run still "running" after this long died with its process: the day may
 * be run again. (A live run of one day takes seconds.) */
#define PB_RECON_RUN_STALE_MS (30LL * 60 * 1000)

struct pb_recon_db {
    sqlite3 *db;
    pthread_mutex_t mu;
};

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS runs("
    " id INTEGER PRIMARY KEY, connection TEXT NOT NULL, date TEXT NOT NULL, erp TEXT,"
    " revision INTEGER NOT NULL DEFAULT 1, status TEXT NOT NULL, trigger TEXT,"
    " started_ms INTEGER, finished_ms INTEGER, error TEXT, detail TEXT,"
    " UNIQUE(connection, date));"
    "CREATE TABLE IF NOT EXISTS run_records("
    " run_id INTEGER NOT NULL, connection TEXT NOT NULL, date TEXT NOT NULL,"
    " record_id TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS run_records_conn ON run_records(connection, date);"
    "CREATE TABLE IF NOT EXISTS run_items("
    " run_id INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL,"
    " PRIMARY KEY(run_id, seq));"
    "CREATE TABLE IF NOT EXISTS journals("
    " reference TEXT PRIMARY KEY, run_id INTEGER, connection TEXT NOT NULL, erp TEXT NOT NULL,"
    " kind TEXT NOT NULL, date TEXT, currency TEXT, amount_minor INTEGER, narration TEXT,"
    " lines TEXT NOT NULL, status TEXT NOT NULL, erp_id TEXT, error TEXT, reverses TEXT,"
    " undone_by TEXT, created_ms INTEGER, posted_ms INTEGER);"
    "CREATE INDEX IF NOT EXISTS journals_run ON journals(connection, date);";

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static enum pb_rc sqlerr(struct pb_recon_db *db, struct pb_err *err, const char *what)
{
    return pb_err_set(err, PB_ERR_STORE, "reconciliation database: %s: %s", what,
                      sqlite3_errmsg(db->db));
}

char *pb_recon_db_path(const char *dsn)
{
    const char *path = dsn && strncmp(dsn, "sqlite:", 7) == 0 ? dsn + 7 : "var/paybridge.db";
    const char *slash = strrchr(path, '/');
    char *out;
    if (!slash)
        return strdup("recon.db");
    if (asprintf(&out, "%.*s/recon.db", (int)(slash - path), path) < 0)
        return NULL;
    return out;
}

enum pb_rc pb_recon_db_open(const char *path, struct pb_recon_db **out, struct pb_err *err)
{
    struct pb_recon_db *db = calloc(1, sizeof *db);
    char *msg = NULL;
    *out = NULL;
    if (!db)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    if (sqlite3_open_v2(path, &db->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        pb_err_set(err, PB_ERR_STORE, "cannot open the reconciliation database %s: %s", path,
                   db->db ? sqlite3_errmsg(db->db) : "out of memory");
        sqlite3_close(db->db);
        free(db);
        return PB_ERR_STORE;
    }
    sqlite3_busy_timeout(db->db, 10000);
    if (sqlite3_exec(db->db, SCHEMA, NULL, NULL, &msg) != SQLITE_OK) {
        pb_err_set(err, PB_ERR_STORE, "reconciliation database %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sqlite3_close(db->db);
        free(db);
        return PB_ERR_STORE;
    }
    pthread_mutex_init(&db->mu, NULL);
    *out = db;
    return PB_OK;
}

void pb_recon_db_close(struct pb_recon_db *db)
{
    if (!db)
        return;
    sqlite3_close(db->db);
    pthread_mutex_destroy(&db->mu);
    free(db);
}

/* Bind text or NULL. */
static void bt(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

/* Every row of a prepared statement as JSON objects (column names as keys;
 * a column named "detail", "lines", "counts" or "breaks" holds JSON text and
 * is parsed). */
static json_t *all_rows(sqlite3_stmt *st)
{
    json_t *arr = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            const char *name = sqlite3_column_name(st, i);
            json_t *v;
            switch (sqlite3_column_type(st, i)) {
            case SQLITE_INTEGER:
                v = json_integer(sqlite3_column_int64(st, i));
                break;
            case SQLITE_NULL:
                v = json_null();
                break;
            default: {
                const char *t = (const char *)sqlite3_column_text(st, i);
                v = NULL;
                if (strcmp(name, "detail") == 0 || strcmp(name, "lines") == 0 ||
                    strcmp(name, "counts") == 0 || strcmp(name, "breaks") == 0)
                    v = json_loads(t, 0, NULL);
                if (!v)
                    v = json_string(t ? t : "");
            }
            }
            json_object_set_new(o, name, v);
        }
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* Run a read under the lock: `sql` with ?1..?n bound to args (text; NULL
 * binds NULL), every row into *out (all_rows). `what` names it in errors. */
static enum pb_rc select_rows(struct pb_recon_db *db, const char *sql, const char *const *args,
                              int n_args, const char *what, json_t **out, struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    *out = NULL;
    pthread_mutex_lock(&db->mu);
    if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK)
        rc = sqlerr(db, err, what);
    else {
        for (int k = 0; k < n_args; k++)
            bt(st, k + 1, args[k]);
        if (!(*out = all_rows(st)))
            rc = sqlerr(db, err, what);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

enum pb_rc pb__rdb_run_begin(struct pb_recon_db *db, const char *connection, const char *date,
                             const char *erp, const char *trigger, int64_t *run_id, int *revision,
                             struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    pthread_mutex_lock(&db->mu);
    if (sqlite3_prepare_v2(db->db,
                           "INSERT INTO runs(connection,date,erp,status,trigger,started_ms)"
                           " VALUES(?1,?2,?3,'running',?4,?5)"
                           " ON CONFLICT(connection,date) DO UPDATE SET revision=revision+1,"
                           " status='running', trigger=?4, started_ms=?5, finished_ms=NULL,"
                           " error=NULL, erp=?3"
                           " WHERE status<>'running' OR started_ms < ?5 - ?6"
                           " RETURNING id, revision",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = sqlerr(db, err, "starting a run");
        goto out;
    }
    bt(st, 1, connection);
    bt(st, 2, date);
    bt(st, 3, erp);
    bt(st, 4, trigger);
    sqlite3_bind_int64(st, 5, now_ms());
    sqlite3_bind_int64(st, 6, PB_RECON_RUN_STALE_MS);
    switch (sqlite3_step(st)) {
    case SQLITE_ROW:
        break;
    case SQLITE_DONE: /* the WHERE refused: another run of the day holds it */
        rc = pb_err_set(err, PB_ERR_EXISTS,
                        "a reconciliation run of %s for %s is in progress (another process or the "
                        "scheduler); try again when it is done",
                        connection, date);
        goto out;
    default:
        rc = sqlerr(db, err, "starting a run");
        goto out;
    }
    *run_id = sqlite3_column_int64(st, 0);
    *revision = sqlite3_column_int(st, 1);
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

enum pb_rc pb__rdb_run_finish(struct pb_recon_db *db, int64_t run_id, const char *status,
                              const char *error, const json_t *detail, const json_t *matched,
                              const json_t *items, struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
    pthread_mutex_lock(&db->mu);
    if (sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = sqlerr(db, err, "saving a run");
        goto out;
    }
    if (sqlite3_prepare_v2(db->db,
                           "UPDATE runs SET status=?2, error=?3, detail=COALESCE(?4, detail),"
                           " finished_ms=?5 WHERE id=?1",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, run_id);
    bt(st, 2, status);
    bt(st, 3, error);
    bt(st, 4, text);
    sqlite3_bind_int64(st, 5, now_ms());
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    if (matched) {
        size_t i;
        json_t *id;
        char sql[] = "DELETE FROM run_records WHERE run_id=?1";
        if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_int64(st, 1, run_id);
        if (sqlite3_step(st) != SQLITE_DONE)
            goto fail;
        sqlite3_finalize(st);
        st = NULL;
        if (sqlite3_prepare_v2(db->db,
                               "INSERT INTO run_records(run_id,connection,date,record_id)"
                               " SELECT id, connection, date, ?2 FROM runs WHERE id=?1",
                               -1, &st, NULL) != SQLITE_OK)
            goto fail;
        json_array_foreach(matched, i, id)
        {
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, run_id);
            bt(st, 2, json_string_value(id));
            if (sqlite3_step(st) != SQLITE_DONE)
                goto fail;
        }
    }
    if (items) {
        size_t i;
        json_t *it;
        sqlite3_finalize(st);
        st = NULL;
        if (sqlite3_prepare_v2(db->db, "DELETE FROM run_items WHERE run_id=?1", -1, &st, NULL) !=
            SQLITE_OK)
            goto fail;
        sqlite3_bind_int64(st, 1, run_id);
        if (sqlite3_step(st) != SQLITE_DONE)
            goto fail;
        sqlite3_finalize(st);
        st = NULL;
        if (sqlite3_prepare_v2(db->db, "INSERT INTO run_items(run_id,seq,kind,data) VALUES(?1,?2,?3,?4)",
                               -1, &st, NULL) != SQLITE_OK)
            goto fail;
        json_array_foreach(items, i, it)
        {
            char *t = json_dumps(it, JSON_COMPACT);
            int ok;
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, run_id);
            sqlite3_bind_int64(st, 2, (sqlite3_int64)i + 1);
            bt(st, 3, json_string_value(json_object_get(it, "kind")));
            bt(st, 4, t ? t : "{}");
            ok = sqlite3_step(st) == SQLITE_DONE;
            free(t);
            if (!ok)
                goto fail;
        }
    }
    if (sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    goto out;
fail:
    rc = sqlerr(db, err, "saving a run");
    sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    free(text);
    return rc;
}

enum pb_rc pb_recon_db_run_items(struct pb_recon_db *db, int64_t run_id, const char *kind,
                             json_t **out, struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    *out = NULL;
    pthread_mutex_lock(&db->mu);
    if (sqlite3_prepare_v2(db->db,
                           "SELECT data FROM run_items WHERE run_id=?1 AND (?2 IS NULL OR kind=?2)"
                           " ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = sqlerr(db, err, "reading a run's items");
        goto out;
    }
    sqlite3_bind_int64(st, 1, run_id);
    bt(st, 2, kind);
    *out = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *v = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
        if (v)
            json_array_append_new(*out, v);
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

enum pb_rc pb__rdb_matched_elsewhere(struct pb_recon_db *db, const char *connection,
                                     const char *date, json_t **ids, struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    *ids = NULL;
    pthread_mutex_lock(&db->mu);
    if (sqlite3_prepare_v2(db->db,
                           "SELECT DISTINCT record_id FROM run_records WHERE connection=?1 AND date<>?2",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = sqlerr(db, err, "reading matched records");
        goto out;
    }
    bt(st, 1, connection);
    bt(st, 2, date);
    *ids = json_object();
    while (sqlite3_step(st) == SQLITE_ROW)
        json_object_set_new(*ids, (const char *)sqlite3_column_text(st, 0), json_true());
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

enum pb_rc pb__rdb_journal_get(struct pb_recon_db *db, const char *reference, json_t **row,
                               struct pb_err *err)
{
    json_t *rows;
    enum pb_rc rc = select_rows(db, "SELECT * FROM journals WHERE reference=?1", &reference, 1,
                                "reading a journal", &rows, err);
    *row = NULL;
    if (rc)
        return rc;
    if (json_array_size(rows))
        *row = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return PB_OK;
}

enum pb_rc pb__rdb_journal_add(struct pb_recon_db *db, int64_t run_id, const char *connection,
                               const char *erp, const char *kind, const char *reverses,
                               const json_t *journal, struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    char *lines = json_dumps(json_object_get(journal, "lines"), JSON_COMPACT);
    int64_t debit = 0;
    size_t i;
    json_t *l;
    json_array_foreach(json_object_get(journal, "lines"), i, l)
    {
        json_int_t a = json_integer_value(json_object_get(l, "amount_minor"));
        if (a > 0)
            debit += a;
    }
    pthread_mutex_lock(&db->mu);
    if (sqlite3_prepare_v2(db->db,
                           "INSERT INTO journals(reference,run_id,connection,erp,kind,date,currency,"
                           "amount_minor,narration,lines,status,reverses,created_ms)"
                           " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,'pending',?11,?12)"
                           " ON CONFLICT(reference) DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = sqlerr(db, err, "recording a journal");
        goto out;
    }
    bt(st, 1, json_string_value(json_object_get(journal, "reference")));
    sqlite3_bind_int64(st, 2, run_id);
    bt(st, 3, connection);
    bt(st, 4, erp);
    bt(st, 5, kind);
    bt(st, 6, json_string_value(json_object_get(journal, "date")));
    bt(st, 7, json_string_value(json_object_get(journal, "currency")));
    sqlite3_bind_int64(st, 8, debit);
    bt(st, 9, json_string_value(json_object_get(journal, "narration")));
    bt(st, 10, lines ? lines : "[]");
    bt(st, 11, reverses);
    sqlite3_bind_int64(st, 12, now_ms());
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = sqlerr(db, err, "recording a journal");
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    free(lines);
    return rc;
}

enum pb_rc pb__rdb_journal_set(struct pb_recon_db *db, const char *reference, const char *status,
                               const char *erp_id, const char *error, struct pb_err *err)
{
    sqlite3_stmt *st = NULL;
    enum pb_rc rc = PB_OK;
    int undone = strcmp(status, "undone") == 0;
    pthread_mutex_lock(&db->mu);
    if (sqlite3_prepare_v2(db->db,
                           undone ? "UPDATE journals SET status='undone', undone_by=?3 WHERE reference=?1"
                                  : "UPDATE journals SET status=?2, erp_id=COALESCE(?3, erp_id),"
                                    " error=?4, posted_ms=CASE ?2 WHEN 'posted' THEN ?5 ELSE posted_ms END"
                                    " WHERE reference=?1",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = sqlerr(db, err, "updating a journal");
        goto out;
    }
    bt(st, 1, reference);
    if (!undone) {
        bt(st, 2, status);
        bt(st, 4, error);
        sqlite3_bind_int64(st, 5, now_ms());
    }
    bt(st, 3, erp_id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = sqlerr(db, err, "updating a journal");
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

enum pb_rc pb__rdb_journals_of(struct pb_recon_db *db, const char *connection, const char *date,
                               json_t **rows, struct pb_err *err)
{
    const char *args[] = {connection, date};
    return select_rows(db,
                       "SELECT reference, kind, status, date, currency, amount_minor, narration,"
                       " erp, erp_id, error, reverses, undone_by, lines FROM journals"
                       " WHERE connection=?1 AND (date=?2 OR run_id IN (SELECT id FROM runs"
                       "  WHERE connection=?1 AND date=?2)) ORDER BY created_ms, reference",
                       args, 2, "reading journals", rows, err);
}

enum pb_rc pb_recon_db_run(struct pb_recon_db *db, const char *run, json_t **out, struct pb_err *err)
{
    json_t *rows = NULL, *r, *journals = NULL;
    enum pb_rc rc;
    const char *colon = run ? strrchr(run, ':') : NULL;
    char *end, conn[128];
    long long id = run ? strtoll(run, &end, 10) : 0;
    *out = NULL;
    if (!run || !*run)
        return pb_err_set(err, PB_ERR_INVALID, "name a run: its id or CONNECTION:YYYY-MM-DD");
    if (colon) {
        const char *args[] = {conn, colon + 1};
        snprintf(conn, sizeof conn, "%.*s", (int)(colon - run), run);
        rc = select_rows(db, "SELECT * FROM runs WHERE connection=?1 AND date=?2", args, 2,
                         "reading a run", &rows, err);
    } else {
        if (*end || id <= 0)
            return pb_err_set(err, PB_ERR_INVALID,
                              "\"%s\" is not a run: give its id or CONNECTION:YYYY-MM-DD", run);
        rc = select_rows(db, "SELECT * FROM runs WHERE id=CAST(?1 AS INTEGER)", &run, 1,
                         "reading a run", &rows, err);
    }
    if (rc)
        return rc;
    if (!(r = json_array_get(rows, 0))) {
        json_decref(rows);
        return pb_err_set(err, PB_ERR_NOTFOUND, "no reconciliation run %s", run);
    }
    r = json_incref(r);
    json_decref(rows);
    if ((rc = pb__rdb_journals_of(db, json_string_value(json_object_get(r, "connection")),
                                  json_string_value(json_object_get(r, "date")), &journals, err))) {
        json_decref(r);
        return rc;
    }
    json_object_set_new(r, "journals", journals);
    *out = r;
    return PB_OK;
}

enum pb_rc pb_recon_db_runs(struct pb_recon_db *db, const char *connection, int limit, json_t **out,
                            struct pb_err *err)
{
    char n[16];
    const char *args[] = {connection, n};
    snprintf(n, sizeof n, "%d", limit > 0 ? limit : 100);
    return select_rows(db,
                       "SELECT id, connection, date, erp, revision, status, trigger, started_ms,"
                       " finished_ms, error, json_extract(detail,'$.counts') AS counts"
                       " FROM runs WHERE ?1 IS NULL OR connection=?1"
                       " ORDER BY date DESC, connection LIMIT CAST(?2 AS INTEGER)",
                       args, 2, "listing runs", out, err);
}

enum pb_rc pb_recon_db_breaks(struct pb_recon_db *db, const char *connection, const char *from,
                              const char *to, json_t **out, struct pb_err *err)
{
    const char *args[] = {connection, from, to};
    return select_rows(db,
                       "SELECT connection, date, revision, status,"
                       " COALESCE(json_extract(detail,'$.breaks'), '[]') AS breaks FROM runs"
                       " WHERE (?1 IS NULL OR connection=?1) AND (?2 IS NULL OR date>=?2)"
                       " AND (?3 IS NULL OR date<=?3) ORDER BY date, connection",
                       args, 3, "reading breaks", out, err);
}
