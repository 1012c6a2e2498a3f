/*
 * core/log.h: the structured JSON log. One line per event on stderr (or a
 * file), e.g.
 *   {"ts":"2026-11-21T19:14:10.123Z","level":"info","event":"event.accepted",
 *    "connection":"opayo-shop","event_id":"..."}
 * Values are strings, escaped as JSON. Callers must never pass secrets: the
 * log is for operators. Thread-safe: a line is written with one write(2).
 */
#ifndef PB_CORE_LOG_H
#define PB_CORE_LOG_H

enum pb_log_level { PB_LOG_DEBUG = 0, PB_LOG_INFO = 1, PB_LOG_WARN = 2, PB_LOG_ERROR = 3 };

void pb_log_set_level(enum pb_log_level min);
void pb_log_set_fd(int fd);
/* Parse "debug|info|warn|error"; returns -1 when unknown. */
int pb_log_level_parse(const char *name);

/* Key/value pairs of strings, terminated by NULL. A NULL value is skipped. */
void pb_log(enum pb_log_level level, const char *event, ...) __attribute__((sentinel));

/* A free-text message under key "msg". */
void pb_logf(enum pb_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Batch this thread's lines until pb_log_flush() (one write for many lines;
 * the store's writer thread uses it per commit). Lines stay whole. */
void pb_log_buffer(int on);
void pb_log_flush(void);

#endif
