/*
 * reconcile/scheduler.c: the thread that runs reconciliations inside
 * `paybridge serve`: each connection's reconcile.schedule (cron, UTC), and
 * the runs the admin API asks for.
 *
 * One thread, one run at a time: a run is a few seconds of I/O against the
 * gateway and the ERP, and two at once would only compete for the same rate
 * limits. Requests queue (at most QUEUE_MAX; more is PB_ERR_TOOBIG).
 *
 * Missed runs. At start, for each schedule, the latest due time in the past
 * week is found; when the run of the date it stands for is not stored with a
 * status starting "ok", it runs once now (paybridge was down at 06:00, or the
 * run failed). A scheduled run that fails is retried every RETRY_S seconds,
 * at most RETRY_MAX times, then waits for its next due time; each failure is
 * stored with its error (`paybridge recon list`).
 *
 * Owns: the thread, the queue, the reconciliation database handle. Borrows
 * the config and the store, which outlive it (serve stops it first).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "engine/config.h"
#include "reconcile/reconcile_internal.h"

#define QUEUE_MAX 64
#define RETRY_S 300
#define RETRY_MAX 6

struct slot {
    struct pb_conn_entry *conn;
    time_t next;    /* next due time, or (time_t)-1 */
    int32_t retry_day;
    int retries;
};

struct request {
    char connection[64];
    int32_t day;
};

struct pb_reconcile_scheduler {
    struct pb_config *cfg;
    struct pb_store *store;
    struct pb_recon_db *db;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop;
    struct slot *slots;
    size_t n_slots;
    struct request queue[QUEUE_MAX];
    size_t q_head, q_len;
};

static int32_t day_of(time_t t) { return (int32_t)(t >= 0 ? t / 86400 : (t - 86399) / 86400); }

static void run_one(struct pb_reconcile_scheduler *s, const char *connection, int32_t day,
                    const char *trigger, int *ok)
{
    struct pb_reconcile_result res;
    struct pb_err err = {0};
    char date[11];
    pb_recon_date_format(day, date);
    *ok = pb_reconcile_day(s->cfg, s->store, s->db, connection, day, trigger, &res, &err) == PB_OK;
    if (!*ok)
        pb_log(PB_LOG_WARN, "recon.scheduled", "connection", connection, "date", date, "trigger",
               trigger, "error", err.msg, NULL);
}

/* Was the run of (connection, day) stored as completed? */
static int done_ok(struct pb_reconcile_scheduler *s, const char *connection, int32_t day)
{
    char key[96], date[11];
    json_t *run = NULL;
    struct pb_err err = {0};
    const char *st;
    int ok;
    pb_recon_date_format(day, date);
    snprintf(key, sizeof key, "%s:%s", connection, date);
    if (pb_recon_db_run(s->db, key, &run, &err))
        return 0;
    st = json_string_value(json_object_get(run, "status"));
    ok = st && strncmp(st, "ok", 2) == 0;
    json_decref(run);
    return ok;
}

static void *scheduler_main(void *arg)
{
    struct pb_reconcile_scheduler *s = arg;
    time_t now = time(NULL);

    /* catch up a missed run, once per schedule */
    for (size_t i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        const struct pb_reconcile_conf *c = sl->conn->reconcile;
        time_t t = now - 7 * 86400, last = (time_t)-1;
        while ((t = pb_cron_next(&c->cron, t)) != (time_t)-1 && t <= now)
            last = t;
        if (last != (time_t)-1) {
            int32_t day = day_of(last) - c->date_offset_days;
            if (!done_ok(s, sl->conn->conn.name, day)) {
                sl->retry_day = day;
                sl->retries = 0;
                sl->next = now; /* at once */
                continue;
            }
        }
        sl->retry_day = INT32_MIN;
        sl->next = pb_cron_next(&c->cron, now);
    }

    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        time_t wake = (time_t)-1;
        now = time(NULL);
        if (s->q_len) {
            struct request r = s->queue[s->q_head];
            int ok;
            s->q_head = (s->q_head + 1) % QUEUE_MAX;
            s->q_len--;
            pthread_mutex_unlock(&s->mu);
            run_one(s, r.connection, r.day, "admin", &ok);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        for (size_t i = 0; i < s->n_slots; i++) {
            struct slot *sl = &s->slots[i];
            const struct pb_reconcile_conf *c = sl->conn->reconcile;
            if (sl->next != (time_t)-1 && sl->next <= now) {
                int32_t day = sl->retry_day != INT32_MIN ? sl->retry_day
                                                         : day_of(sl->next) - c->date_offset_days;
                int ok;
                pthread_mutex_unlock(&s->mu);
                run_one(s, sl->conn->conn.name, day, "schedule", &ok);
                pthread_mutex_lock(&s->mu);
                now = time(NULL);
                if (!ok && sl->retries < RETRY_MAX) {
                    sl->retry_day = day;
                    sl->retries++;
                    sl->next = now + RETRY_S;
                } else {
                    sl->retry_day = INT32_MIN;
                    sl->retries = 0;
                    sl->next = pb_cron_next(&c->cron, now);
                }
            }
            if (sl->next != (time_t)-1 && (wake == (time_t)-1 || sl->next < wake))
                wake = sl->next;
        }
        if (s->stop || s->q_len)
            continue;
        {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            /* at most a minute: the wall clock may jump */
            ts.tv_sec = wake == (time_t)-1 || wake > now + 60 ? now + 60 : wake;
            ts.tv_nsec = 0;
            pthread_cond_timedwait(&s->cond, &s->mu, &ts);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

enum pb_rc pb_reconcile_scheduler_start(struct pb_config *cfg, struct pb_store *store,
                                        struct pb_reconcile_scheduler **out, struct pb_err *err)
{
    struct pb_reconcile_scheduler *s;
    size_t with_block = 0;
    char *path;
    enum pb_rc rc;
    *out = NULL;
    for (size_t i = 0; i < cfg->n_conns; i++)
        with_block += cfg->conns[i].reconcile != NULL;
    if (!with_block)
        return PB_OK;
    if (!(s = calloc(1, sizeof *s)) || !(s->slots = calloc(with_block, sizeof *s->slots))) {
        free(s);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    s->cfg = cfg;
    s->store = store;
    for (size_t i = 0; i < cfg->n_conns; i++)
        if (cfg->conns[i].reconcile && cfg->conns[i].reconcile->schedule[0])
            s->slots[s->n_slots++].conn = &cfg->conns[i];
    if (!(path = pb_recon_db_path(cfg->store_dsn))) {
        free(s->slots);
        free(s);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }
    rc = pb_recon_db_open(path, &s->db, err);
    free(path);
    if (rc) {
        free(s->slots);
        free(s);
        return rc;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->thread, NULL, scheduler_main, s)) {
        pb_recon_db_close(s->db);
        free(s->slots);
        free(s);
        return pb_err_set(err, PB_ERR_NOMEM, "cannot start the reconciliation thread");
    }
    *out = s;
    return PB_OK;
}

enum pb_rc pb_reconcile_scheduler_request(struct pb_reconcile_scheduler *s, const char *connection,
                                          int32_t day, struct pb_err *err)
{
    struct pb_conn_entry *ce = pb_config_connection(s->cfg, connection);
    struct request *r;
    if (!ce || !ce->reconcile)
        return pb_err_set(err, PB_ERR_NOTFOUND, "no connection \"%s\" with a reconcile: block",
                          connection);
    pthread_mutex_lock(&s->mu);
    if (s->q_len == QUEUE_MAX) {
        pthread_mutex_unlock(&s->mu);
        return pb_err_set(err, PB_ERR_TOOBIG, "%d reconciliation runs are queued already; try later",
                          QUEUE_MAX);
    }
    r = &s->queue[(s->q_head + s->q_len) % QUEUE_MAX];
    snprintf(r->connection, sizeof r->connection, "%s", connection);
    r->day = day;
    s->q_len++;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    return PB_OK;
}

struct pb_recon_db *pb_reconcile_scheduler_db(struct pb_reconcile_scheduler *s) { return s->db; }

void pb_reconcile_scheduler_stop(struct pb_reconcile_scheduler *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    pb_recon_db_close(s->db);
    free(s->slots);
    free(s);
}
