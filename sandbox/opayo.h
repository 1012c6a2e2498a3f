/*
 * sandbox/opayo.h: the internal interface between the two files of the Opayo
 * Pi emulator. Nothing outside sandbox/opayo.c and sandbox/opayo_notify.c may
 * include it; the rest of the world sees only `sbx_opayo_type` (sbx.h).
 *
 *   opayo.c         owns the Pi REST API (merchant session keys, card
 *                   identifiers, transactions, instructions), the in-memory
 *                   store of transactions and the /_sandbox/ admin routes.
 *   opayo_notify.c  owns the signed "transaction.completed" notifications:
 *                   building their body, and the notifier, a bounded queue
 *                   drained by one background thread that POSTs each body to
 *                   notify_url with libcurl and retries with backoff.
 *
 * The split follows the locking: opayo.c has one mutex for its store, the
 * notifier has its own for its queue and settings. Lock order is store, then
 * notifier; the notifier never calls back into opayo.c, so it can never take
 * the store lock and there is no cycle.
 *
 * Ownership is written on every function below. The notification format
 * itself is documented in the header essay of opayo_notify.c.
 */
#ifndef PB_SANDBOX_OPAYO_H
#define PB_SANDBOX_OPAYO_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* Length of a textual GUID without its NUL ("DB79BA2D-05DA-5B85-D188-1293D16BBAC7"). */
#define OPAYO_GUID_LEN 36

/* Counters of the notifier, as reported by GET /_sandbox/stats. */
struct pb__opayo_notify_stats {
    uint64_t sent;           /* POST attempts made (first sends, retries, duplicates) */
    uint64_t acknowledged;   /* attempts answered with a 2xx */
    uint64_t failed;         /* deliveries given up: attempts exhausted or queue full */
    uint64_t pending;        /* deliveries queued or in flight */
};

struct pb__opayo_notifier;

/* Create the notifier with the defaults (no notify_url, secret
 * "sandbox-notify-secret", duplicate rate 0, delay 0 ms, 8 attempts), apply
 * the notify_* keys of `settings` (borrowed, may be NULL) as in
 * pb__opayo_notifier_configure(), and start its thread. */
enum pb_rc pb__opayo_notifier_create(json_t *settings, struct pb__opayo_notifier **out,
                                     struct pb_err *err);

/* Stop the thread promptly (an in-flight POST is aborted, pending retries are
 * dropped) and free everything. NULL is a no-op. */
void pb__opayo_notifier_destroy(struct pb__opayo_notifier *n);

/* Merge the keys notify_url (string or null), notify_secret (non-empty
 * string), notify_duplicate_rate (number 0..1), notify_delay_ms (integer
 * 0..600000) and notify_max_attempts (integer 1..100) of `patch` (borrowed)
 * into the live settings; other keys are ignored. All-or-nothing: on a bad
 * value nothing changes and PB_ERR_INVALID says which key. */
enum pb_rc pb__opayo_notifier_configure(struct pb__opayo_notifier *n, json_t *patch,
                                        struct pb_err *err);

/* The live settings as a new JSON object (caller owns it). The secret is
 * never included. */
json_t *pb__opayo_notifier_settings_json(struct pb__opayo_notifier *n);

/* 1 when a notify_url is set, i.e. notifications are being sent. */
int pb__opayo_notifier_enabled(struct pb__opayo_notifier *n);

/* Queue one delivery of `body` (borrowed; copied) whose notificationId is
 * `id` (borrowed; only used in logs). `first` = 1 for the
 * notification of a newly created transaction: notify_delay_ms applies and,
 * with probability notify_duplicate_rate, a second identical delivery is
 * queued. `first` = 0 (an admin resend) sends once, now. Never blocks on the
 * network. PB_ERR_TOOBIG when the queue is full (counted as failed),
 * PB_ERR_CONFIG when no notify_url is set. */
enum pb_rc pb__opayo_notifier_enqueue(struct pb__opayo_notifier *n, const char *id,
                                      const char *body, size_t len, int first,
                                      struct pb_err *err);

void pb__opayo_notifier_stats(struct pb__opayo_notifier *n, struct pb__opayo_notify_stats *out);

/* Drop every queued delivery and zero the counters; a POST in flight finishes
 * but is not counted. Settings are kept. */
void pb__opayo_notifier_reset(struct pb__opayo_notifier *n);

/* Build the body of a notification for `transaction` (the retrieve shape,
 * borrowed) with a fresh notificationId, which is written upper-case into
 * `id_out`. Returns a malloc'd compact JSON text (caller owns it) and its
 * length in *len_out, or NULL on allocation failure. */
char *pb__opayo_notification_build(const char *vendor_name, json_t *transaction,
                                   char id_out[OPAYO_GUID_LEN + 1], size_t *len_out,
                                   struct pb_err *err);

/* Current UTC time as ISO 8601: "2024-05-01T10:00:00Z" when with_ms is 0,
 * "2024-05-01T10:00:00.123Z" otherwise. `when_ms` is milliseconds since the
 * epoch. buf must hold at least 32 bytes. */
void pb__opayo_iso8601(int64_t when_ms, int with_ms, char *buf, size_t len);

/* Milliseconds since the epoch (CLOCK_REALTIME). */
int64_t pb__opayo_now_ms(void);

/* A new upper-case GUID into out. */
enum pb_rc pb__opayo_guid(char out[OPAYO_GUID_LEN + 1], struct pb_err *err);

#endif
