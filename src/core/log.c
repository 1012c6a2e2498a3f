/*
 * core/log.c: JSON-lines logger. Each line is built in a stack buffer and
 * written with a single write(2), so lines from several threads never
 * interleave. Lines longer than the buffer are truncated, never split.
 */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = 2;
static int log_min = PB_LOG_INFO;

static const char *level_name[] = {"debug", "info", "warn", "error"};

void pb_log_set_level(enum pb_log_level min) { log_min = min; }
void pb_log_set_fd(int fd) { log_fd = fd; }

int pb_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, level_name[i]) == 0)
            return i;
    return -1;
}

struct line {
    char buf[4096];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
    if (l->len + n >= sizeof(l->buf) - 2)
        n = sizeof(l->buf) - 2 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put_json_string(struct line *l, const char *s)
{
    put(l, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(l, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(l, esc, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
    put(l, "\"", 1);
}

static void begin(struct line *l, enum pb_log_level level, const char *event)
{
    struct timespec ts;
    struct tm tm;
    char head[96];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(head, sizeof(head),
                     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"event\":",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_name[level]);
    l->len = 0;
    put(l, head, (size_t)n);
    put_json_string(l, event);
}

/* Per-thread batching (pb_log_buffer): whole lines are appended to a
 * thread-local buffer and written by pb_log_flush() with one write(2). */
#define BATCH_MAX 65536
static _Thread_local int batching;
static _Thread_local char *batch;
static _Thread_local size_t batch_len;

void pb_log_flush(void)
{
    if (batch && batch_len) {
        ssize_t r = write(log_fd, batch, batch_len);
        (void)r;
    }
    batch_len = 0;
}

void pb_log_buffer(int on)
{
    if (!on) {
        pb_log_flush();
        free(batch);
        batch = NULL;
    } else if (!batch) {
        batch = malloc(BATCH_MAX);
    }
    batching = on && batch;
}

static void end(struct line *l)
{
    l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    if (batching) {
        if (batch_len + l->len > BATCH_MAX)
            pb_log_flush();
        memcpy(batch + batch_len, l->buf, l->len);
        batch_len += l->len;
        return;
    }
    ssize_t r = write(log_fd, l->buf, l->len);
    (void)r;
}

void pb_log(enum pb_log_level level, const char *event, ...)
{
    struct line l;
    va_list ap;
    if ((int)level < log_min)
        return;
    begin(&l, level, event);
    va_start(ap, event);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (!v)
            continue;
        put(&l, ",", 1);
        put_json_string(&l, k);
        put(&l, ":", 1);
        put_json_string(&l, v);
    }
    va_end(ap);
    end(&l);
}

void pb_logf(enum pb_log_level level, const char *event, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    if ((int)level < log_min)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pb_log(level, event, "msg", msg, (char *)NULL);
}
