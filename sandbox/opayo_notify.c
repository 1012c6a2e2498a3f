/*
 * sandbox/opayo_notify.c: the signed payment notifications of the Opayo Pi
 * emulator, and the notifier that delivers them.
 *
 * Opayo Pi (the 2019 REST API) has no webhooks: a merchant learns the outcome
 * from the synchronous reply or by polling GET /transactions/{id}. paybridge
 * wants a push, so it defines the notification below; the sandbox sends it
 * and the opayo connector (src/connectors/opayo/) implements the receiving
 * side. This comment is the definition of that format.
 *
 * THE NOTIFICATION
 *
 *   POST <notify_url>
 *   Content-Type: application/json
 *   X-Opayo-Signature: <lower-case hex of HMAC-SHA256(notify_secret, raw body bytes)>
 *   X-Opayo-Notification-Id: <notificationId>   (informative; the body is authoritative)
 *
 *   {"notificationId":"<GUID, upper case>",
 *    "eventType":"transaction.completed",
 *    "createdAt":"<UTC ISO 8601 to the second, e.g. 2024-05-01T10:00:00Z>",
 *    "vendorName":"<vendor_name>",
 *    "transaction":{ the retrieve shape of GET /api/v1/transactions/{id} }}
 *
 * The transaction object is exactly what GET /api/v1/transactions/{id}
 * returned at the moment the transaction was created: transactionId,
 * transactionType, status, statusCode (a string, "0000" = authorised),
 * statusDetail, retrievalReference and bankAuthorisationCode (only when
 * status is Ok), bankResponseCode, amount {totalAmount, saleAmount,
 * surchargeAmount} in minor units, currency, avsCvcCheck (Payment and
 * Deferred only), paymentMethod.card {cardType, lastFourDigits, expiryDate,
 * cardIdentifier, reusable}, 3DSecure {status}, and the sandbox extensions
 * vendorTxCode, description, customerFirstName, customerLastName,
 * customerEmail, billingAddress, referenceTransactionId (Repeat, Refund),
 * fraudScore (integer 0..100) and createdAt. Optional fields are omitted, not
 * null.
 *
 * The signature covers the raw bytes as sent; a receiver must verify it over
 * the bytes it received, before parsing, and compare in constant time. It is
 * computed at send time with the notify_secret current then, so a secret
 * changed through POST /_sandbox/settings applies to retries too.
 *
 * One notification is sent for every transaction created (every status,
 * every type) while notify_url is set. Instructions (void, abort, release)
 * send none. A notification is delivered at least once: a receiver must
 * de-duplicate on notificationId. A duplicate (notify_duplicate_rate, or
 * POST /_sandbox/notify/{transactionId}) carries the same notificationId and
 * the same body bytes.
 *
 * DELIVERY
 *
 * One background thread drains a bounded queue (OPAYO_NOTIFY_QUEUE_MAX
 * deliveries). Enqueueing only takes the notifier mutex and copies the body,
 * so the API thread never waits for the network; when the queue is full the
 * delivery is dropped and counted as failed. Each delivery has a due time:
 * now + notify_delay_ms for a first send, now for a resend. The thread sends
 * the earliest due delivery with libcurl (one easy handle kept for the
 * thread's life, so connections are kept alive; 5 s total timeout). A 2xx
 * acknowledges it. Anything else (non-2xx, refused, reset, timeout) is
 * retried after 200 ms, doubling, capped at 5 s, until notify_max_attempts
 * attempts were made; then it is counted as failed. Deliveries are not
 * ordered: a retrying one does not hold back the others, like a real gateway.
 *
 * Counters (GET /_sandbox/stats): sent = POST attempts made; acknowledged =
 * attempts answered 2xx; failed = deliveries given up; pending = deliveries
 * queued or in flight. A test waits for pending to reach 0.
 *
 * LOCKING AND LIFETIME
 *
 * `mu` guards the queue, the settings and the counters; `cv` (monotonic
 * clock) wakes the thread on enqueue, reset and stop. The thread holds `mu`
 * only to pick and to account, never across the POST; it copies url and
 * secret before unlocking. `stop` is atomic because curl's progress callback
 * reads it without the lock: that is how destroy aborts an in-flight POST at
 * once instead of waiting out the 5 s timeout. A reset bumps `generation`;
 * a POST that was in flight across a reset is then forgotten, not counted.
 *
 * Rejected: net/http_client.h's pb_http_client. It would classify statuses
 * for us, but it has no way to abort a call in flight, and prompt shutdown
 * with pending retries is a requirement. Rejected: one thread per delivery;
 * unbounded under a slow receiver and it reorders nothing useful.
 *
 * The signed POST itself, the backoff, the timed wait and the duplicate roll
 * are sbx_notify.c's, shared with the PayTrace webhook sender.
 */
#include "opayo.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/crypto.h"
#include "core/log.h"
#include "net/httpd.h"
#include "sbx_notify.h"

#define OPAYO_NOTIFIER_MAGIC 0x4F4E5446u      /* "ONTF" */
#define OPAYO_NOTIFY_QUEUE_MAX 4096           /* deliveries queued at most */
#define OPAYO_NOTIFY_TIMEOUT_MS 5000L         /* whole POST, connect included */
#define OPAYO_NOTIFY_BACKOFF_FIRST_MS 200u    /* first retry delay, then doubling */
#define OPAYO_NOTIFY_BACKOFF_CAP_MS 5000u     /* retry delay cap */
#define OPAYO_NOTIFY_URL_MAX 2048             /* longest accepted notify_url */
#define OPAYO_NOTIFY_SECRET_MAX 1024          /* longest accepted notify_secret */
#define OPAYO_NOTIFY_DELAY_MAX_MS 600000      /* notify_delay_ms upper bound */
#define OPAYO_NOTIFY_ATTEMPTS_MAX 100         /* notify_max_attempts upper bound */
#define OPAYO_NOTIFY_REPLY_MAX (64 * 1024)    /* reply bytes read then ignored */

struct delivery {
    struct delivery *next;      /* queue link */
    char id[OPAYO_GUID_LEN + 1]; /* notificationId, for logs */
    char *body;                 /* owned, the exact bytes to POST */
    size_t len;
    unsigned attempts;          /* POST attempts made so far */
    uint64_t due_ns;            /* monotonic time of the next attempt */
};

struct pb__opayo_notifier {
    unsigned magic;             /* OPAYO_NOTIFIER_MAGIC while alive */
    pthread_mutex_t mu;         /* guards everything below except `stop` */
    pthread_cond_t cv;          /* signalled on enqueue, reset, stop (CLOCK_MONOTONIC) */
    pthread_t thread;
    int thread_started;
    atomic_int stop;            /* set once by destroy; read by the curl callback */
    /* settings */
    char *url;                  /* owned; NULL: notifications off */
    char *secret;               /* owned, never NULL or empty; never logged */
    double duplicate_rate;      /* probability 0..1 of a second identical delivery (a
                                   probability, not money: the one double here) */
    unsigned delay_ms;          /* delay of every first send */
    unsigned max_attempts;      /* attempts per delivery, >= 1 */
    /* queue */
    struct delivery *head;      /* unordered singly linked list */
    size_t n_queued;            /* <= OPAYO_NOTIFY_QUEUE_MAX */
    int in_flight;              /* 1 while the thread is POSTing one delivery */
    uint64_t generation;        /* bumped by reset */
    /* counters */
    uint64_t sent, acknowledged, failed;
};

static void check_magic(const struct pb__opayo_notifier *n)
{
    if (!n || n->magic != OPAYO_NOTIFIER_MAGIC) {
        pb_log(PB_LOG_ERROR, "sandbox.opayo.bad_notifier", NULL);
        abort(); /* a use-after-free or a wrong pointer: proven bug, not input */
    }
}

/* ---- the notification body ----------------------------------------------- */

char *pb__opayo_notification_build(const char *vendor_name, json_t *transaction,
                                   char id_out[OPAYO_GUID_LEN + 1], size_t *len_out,
                                   struct pb_err *err)
{
    char created[32];
    json_t *root;
    char *text;

    if (pb__opayo_guid(id_out, err))
        return NULL;
    pb__opayo_iso8601(pb__opayo_now_ms(), 0, created, sizeof(created));
    root = json_object();
    if (!root)
        goto nomem;
    if (json_object_set_new(root, "notificationId", json_string(id_out)) ||
        json_object_set_new(root, "eventType", json_string("transaction.completed")) ||
        json_object_set_new(root, "createdAt", json_string(created)) ||
        json_object_set_new(root, "vendorName", json_string(vendor_name)) ||
        json_object_set(root, "transaction", transaction)) {
        json_decref(root);
        goto nomem;
    }
    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        goto nomem;
    *len_out = strlen(text);
    return text;
nomem:
    pb_err_set(err, PB_ERR_NOMEM, "out of memory building an Opayo notification");
    return NULL;
}

/* ---- settings ------------------------------------------------------------ */

static int url_acceptable(const char *url)
{
    size_t len = strlen(url);
    if (len == 0 || len > OPAYO_NOTIFY_URL_MAX)
        return 0;
    return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0;
}

enum pb_rc pb__opayo_notifier_configure(struct pb__opayo_notifier *n, json_t *patch,
                                        struct pb_err *err)
{
    json_t *v;
    int set_url = 0, set_secret = 0, set_rate = 0, set_delay = 0, set_attempts = 0;
    const char *url = NULL, *secret = NULL;
    double rate = 0;
    json_int_t delay = 0, attempts = 0;
    char *url_copy = NULL, *secret_copy = NULL;

    check_magic(n);
    if (!patch)
        return PB_OK;
    if (!json_is_object(patch))
        return pb_err_set(err, PB_ERR_INVALID, "settings must be a JSON object");

    /* Validate everything first, so that a bad key changes nothing. */
    if ((v = json_object_get(patch, "notify_url"))) {
        if (json_is_null(v)) {
            url = NULL;
        } else if (json_is_string(v) && url_acceptable(json_string_value(v))) {
            url = json_string_value(v);
        } else {
            return pb_err_set(err, PB_ERR_INVALID,
                              "notify_url must be null or an http:// or https:// URL of at "
                              "most %d characters",
                              OPAYO_NOTIFY_URL_MAX);
        }
        set_url = 1;
    }
    if ((v = json_object_get(patch, "notify_secret"))) {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > OPAYO_NOTIFY_SECRET_MAX ||
            strlen(json_string_value(v)) != json_string_length(v))
            return pb_err_set(err, PB_ERR_INVALID,
                              "notify_secret must be a non-empty string of at most %d bytes "
                              "without NUL",
                              OPAYO_NOTIFY_SECRET_MAX);
        secret = json_string_value(v);
        set_secret = 1;
    }
    if ((v = json_object_get(patch, "notify_duplicate_rate"))) {
        if (!json_is_number(v) || json_number_value(v) < 0.0 || json_number_value(v) > 1.0)
            return pb_err_set(err, PB_ERR_INVALID,
                              "notify_duplicate_rate must be a number from 0 to 1");
        rate = json_number_value(v);
        set_rate = 1;
    }
    if ((v = json_object_get(patch, "notify_delay_ms"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > OPAYO_NOTIFY_DELAY_MAX_MS)
            return pb_err_set(err, PB_ERR_INVALID,
                              "notify_delay_ms must be an integer from 0 to %d",
                              OPAYO_NOTIFY_DELAY_MAX_MS);
        delay = json_integer_value(v);
        set_delay = 1;
    }
    if ((v = json_object_get(patch, "notify_max_attempts"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > OPAYO_NOTIFY_ATTEMPTS_MAX)
            return pb_err_set(err, PB_ERR_INVALID,
                              "notify_max_attempts must be an integer from 1 to %d",
                              OPAYO_NOTIFY_ATTEMPTS_MAX);
        attempts = json_integer_value(v);
        set_attempts = 1;
    }
    if (set_url && url && !(url_copy = strdup(url)))
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    if (set_secret && !(secret_copy = strdup(secret))) {
        free(url_copy);
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    }

    pthread_mutex_lock(&n->mu);
    if (set_url) {
        free(n->url);
        n->url = url_copy;
    }
    if (set_secret) {
        pb_secret_free(n->secret);
        n->secret = secret_copy;
    }
    if (set_rate)
        n->duplicate_rate = rate;
    if (set_delay)
        n->delay_ms = (unsigned)delay;
    if (set_attempts)
        n->max_attempts = (unsigned)attempts;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    return PB_OK;
}

json_t *pb__opayo_notifier_settings_json(struct pb__opayo_notifier *n)
{
    json_t *o;

    check_magic(n);
    pthread_mutex_lock(&n->mu);
    o = json_pack("{s:o,s:f,s:I,s:I}", "notify_url", n->url ? json_string(n->url) : json_null(),
                  "notify_duplicate_rate", n->duplicate_rate, "notify_delay_ms",
                  (json_int_t)n->delay_ms, "notify_max_attempts", (json_int_t)n->max_attempts);
    pthread_mutex_unlock(&n->mu);
    return o;
}

int pb__opayo_notifier_enabled(struct pb__opayo_notifier *n)
{
    int on;

    check_magic(n);
    pthread_mutex_lock(&n->mu);
    on = n->url != NULL;
    pthread_mutex_unlock(&n->mu);
    return on;
}

/* ---- the queue ----------------------------------------------------------- */

static void delivery_free(struct delivery *d)
{
    if (d) {
        free(d->body);
        free(d);
    }
}

static struct delivery *delivery_new(const char *id, const char *body, size_t len,
                                     uint64_t due_ns)
{
    struct delivery *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->body = malloc(len + 1);
    if (!d->body) {
        free(d);
        return NULL;
    }
    memcpy(d->body, body, len);
    d->body[len] = '\0';
    d->len = len;
    snprintf(d->id, sizeof(d->id), "%s", id ? id : "");
    d->due_ns = due_ns;
    return d;
}

/* Caller holds mu. Takes d. */
static void queue_push(struct pb__opayo_notifier *n, struct delivery *d)
{
    d->next = n->head;
    n->head = d;
    n->n_queued++;
}

/* Caller holds mu. The delivery with the earliest due time, or NULL. */
static struct delivery *queue_earliest(struct pb__opayo_notifier *n)
{
    struct delivery *best = NULL;
    for (struct delivery *d = n->head; d; d = d->next)
        if (!best || d->due_ns < best->due_ns)
            best = d;
    return best;
}

/* Caller holds mu. Unlinks d (which is in the queue); the caller then owns it. */
static void queue_unlink(struct pb__opayo_notifier *n, struct delivery *d)
{
    for (struct delivery **pp = &n->head; *pp; pp = &(*pp)->next) {
        if (*pp == d) {
            *pp = d->next;
            d->next = NULL;
            n->n_queued--;
            return;
        }
    }
}

/* Caller holds mu. */
static void queue_clear(struct pb__opayo_notifier *n)
{
    while (n->head) {
        struct delivery *d = n->head;
        n->head = d->next;
        delivery_free(d);
    }
    n->n_queued = 0;
}

enum pb_rc pb__opayo_notifier_enqueue(struct pb__opayo_notifier *n, const char *id,
                                      const char *body, size_t len, int first,
                                      struct pb_err *err)
{
    struct delivery *d[2] = {NULL, NULL};
    int copies = 1;
    uint64_t due;
    enum pb_rc rc = PB_OK;

    check_magic(n);
    pthread_mutex_lock(&n->mu);
    if (!n->url) {
        rc = pb_err_set(err, PB_ERR_CONFIG, "no notify_url is set");
        goto out;
    }
    due = pb_monotonic_ns() + (first ? (uint64_t)n->delay_ms * 1000000u : 0);
    if (first && sbx_roll(n->duplicate_rate))
        copies = 2;
    for (int i = 0; i < copies; i++) {
        if (n->n_queued >= OPAYO_NOTIFY_QUEUE_MAX) {
            n->failed++;
            pb_log(PB_LOG_WARN, "sandbox.opayo.notify_dropped", "notification_id", id, "reason",
                   "queue full", NULL);
            rc = pb_err_set(err, PB_ERR_TOOBIG, "the notification queue is full (%d)",
                            OPAYO_NOTIFY_QUEUE_MAX);
            goto out;
        }
        d[i] = delivery_new(id, body, len, due);
        if (!d[i]) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory queueing a notification");
            goto out;
        }
        queue_push(n, d[i]);
    }
    pthread_cond_broadcast(&n->cv);
out:
    pthread_mutex_unlock(&n->mu);
    return rc;
}

void pb__opayo_notifier_stats(struct pb__opayo_notifier *n, struct pb__opayo_notify_stats *out)
{
    check_magic(n);
    pthread_mutex_lock(&n->mu);
    out->sent = n->sent;
    out->acknowledged = n->acknowledged;
    out->failed = n->failed;
    out->pending = n->n_queued + (n->in_flight ? 1u : 0u);
    pthread_mutex_unlock(&n->mu);
}

void pb__opayo_notifier_reset(struct pb__opayo_notifier *n)
{
    check_magic(n);
    pthread_mutex_lock(&n->mu);
    queue_clear(n);
    n->generation++;
    n->sent = n->acknowledged = n->failed = 0;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* ---- the sender thread --------------------------------------------------- */

/* One POST attempt. Returns the HTTP status, or 0 when there was no reply. */
static long post_once(struct pb__opayo_notifier *n, CURL *curl, const char *url,
                      const char *secret, const struct delivery *d)
{
    char id_header[64 + OPAYO_GUID_LEN];
    const char *more[] = {id_header, "User-Agent: paybridge-sandbox-opayo/1", "Expect:", NULL};
    struct sbx_post post = {url, secret, "X-Opayo-Signature", more, d->body, d->len,
                            OPAYO_NOTIFY_TIMEOUT_MS, OPAYO_NOTIFY_REPLY_MAX, 1, &n->stop};
    CURLcode cc;
    long status;

    snprintf(id_header, sizeof(id_header), "X-Opayo-Notification-Id: %s", d->id);
    status = sbx_notify_post(curl, &post, &cc);
    if (cc != CURLE_OK && cc != CURLE_WRITE_ERROR && !atomic_load(&n->stop))
        pb_log(PB_LOG_WARN, "sandbox.opayo.notify_error", "notification_id", d->id, "error",
               curl_easy_strerror(cc), NULL);
    return status;
}

static void *sender_main(void *arg)
{
    struct pb__opayo_notifier *n = arg;
    CURL *curl = curl_easy_init();

    pthread_mutex_lock(&n->mu);
    while (!atomic_load(&n->stop)) {
        struct delivery *d = queue_earliest(n);
        char *url, *secret;
        uint64_t generation, now;
        long status;
        char status_text[16];

        if (!d) {
            pthread_cond_wait(&n->cv, &n->mu);
            continue;
        }
        now = pb_monotonic_ns();
        if (d->due_ns > now) {
            sbx_wait_until(&n->cv, &n->mu, d->due_ns);
            continue;
        }
        queue_unlink(n, d);
        if (!n->url || !curl) {
            /* notify_url was cleared after queueing (or curl failed to start) */
            n->failed++;
            pb_log(PB_LOG_WARN, "sandbox.opayo.notify_dropped", "notification_id", d->id,
                   "reason", curl ? "notify_url cleared" : "curl_easy_init failed", NULL);
            delivery_free(d);
            continue;
        }
        url = strdup(n->url);
        secret = strdup(n->secret);
        generation = n->generation;
        n->in_flight = 1;
        pthread_mutex_unlock(&n->mu);

        status = (url && secret) ? post_once(n, curl, url, secret, d) : 0;
        free(url);
        pb_secret_free(secret);

        pthread_mutex_lock(&n->mu);
        n->in_flight = 0;
        if (generation != n->generation || atomic_load(&n->stop)) {
            delivery_free(d); /* reset or stopping while in flight: forget it */
            continue;
        }
        n->sent++;
        d->attempts++;
        if (status >= 200 && status < 300) {
            n->acknowledged++;
            delivery_free(d);
            continue;
        }
        snprintf(status_text, sizeof(status_text), "%ld", status);
        if (d->attempts >= n->max_attempts) {
            n->failed++;
            pb_log(PB_LOG_WARN, "sandbox.opayo.notify_failed", "notification_id", d->id,
                   "status", status_text, "reason", "attempts exhausted", NULL);
            delivery_free(d);
            continue;
        }
        pb_log(PB_LOG_DEBUG, "sandbox.opayo.notify_retry", "notification_id", d->id, "status",
               status_text, NULL);
        d->due_ns = pb_monotonic_ns() + sbx_backoff_ns(d->attempts, OPAYO_NOTIFY_BACKOFF_FIRST_MS,
                                                  OPAYO_NOTIFY_BACKOFF_CAP_MS);
        queue_push(n, d);
    }
    pthread_mutex_unlock(&n->mu);
    if (curl)
        curl_easy_cleanup(curl);
    return NULL;
}

/* ---- life cycle ---------------------------------------------------------- */

enum pb_rc pb__opayo_notifier_create(json_t *settings, struct pb__opayo_notifier **out,
                                     struct pb_err *err)
{
    struct pb__opayo_notifier *n;
    pthread_condattr_t ca;
    enum pb_rc rc;

    *out = NULL;
    n = calloc(1, sizeof(*n));
    if (!n)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory");
    n->magic = OPAYO_NOTIFIER_MAGIC;
    atomic_init(&n->stop, 0);
    pthread_mutex_init(&n->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&n->cv, &ca);
    pthread_condattr_destroy(&ca);
    n->secret = strdup("sandbox-notify-secret");
    n->max_attempts = 8;
    if (!n->secret) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto fail;
    }
    rc = pb__opayo_notifier_configure(n, settings, err);
    if (rc)
        goto fail;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        rc = pb_err_set(err, PB_ERR_INTERNAL, "curl_global_init failed");
        goto fail;
    }
    if (pthread_create(&n->thread, NULL, sender_main, n) != 0) {
        curl_global_cleanup();
        rc = pb_err_set(err, PB_ERR_INTERNAL, "cannot start the Opayo notifier thread");
        goto fail;
    }
    n->thread_started = 1;
    *out = n;
    return PB_OK;
fail:
    pb__opayo_notifier_destroy(n);
    return rc;
}

void pb__opayo_notifier_destroy(struct pb__opayo_notifier *n)
{
    if (!n)
        return;
    check_magic(n);
    if (n->thread_started) {
        pthread_mutex_lock(&n->mu);
        atomic_store(&n->stop, 1);
        pthread_cond_broadcast(&n->cv);
        pthread_mutex_unlock(&n->mu);
        pthread_join(n->thread, NULL);
        curl_global_cleanup();
    }
    queue_clear(n);
    free(n->url);
    pb_secret_free(n->secret);
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->mu);
    n->magic = 0;
    free(n);
}
