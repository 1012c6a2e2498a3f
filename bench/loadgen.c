/*
 * bench/loadgen.c: pb_loadgen, the webhook load generator of the benchmarks.
 *
 * What it does. It plays an Opayo gateway that pushes signed
 * "transaction.completed" notifications (the format of sandbox/opayo_notify.c)
 * to POST /hooks/NAME of a running `paybridge serve`, over C keep-alive
 * HTTP/1.1 connections to 127.0.0.1, each with at most one request in flight,
 * and measures how many durable acknowledgements (HTTP 200) come back and how
 * long each took. Two modes:
 *
 *   closed loop  --connections C --requests N [--max-seconds T]
 *                every connection sends its next request as soon as the
 *                previous reply arrived; it measures capacity (acks/s).
 *   open loop    --rate R --duration S [--connections C]
 *                request i is due at t0 + i/R whatever happened before; it is
 *                sent on an idle connection at that time, or as soon as one
 *                frees up. Latency runs from the *scheduled* time, not the
 *                send time, so a stalled server is charged for the requests
 *                it kept waiting (no coordinated omission).
 *
 * Output: one JSON line on stdout (the machine-readable result) and one
 * human-readable line on stderr. Exit status 0 when every request got a 200,
 * 1 when any got another status, an I/O error or no reply in time, 2 for a
 * usage error or when the server cannot be reached at all.
 *
 * `--get PATH` is a tiny blocking HTTP GET that prints the reply body (used by
 * bench/run.sh to read /metrics and /_sandbox/stats without curl).
 *
 * Why this shape.
 *   - Raw sockets and one epoll loop on one thread: on a 2-core machine the
 *     generator shares the CPU with the server, so it must cost as little as
 *     possible per request. Everything expensive (JSON text, HMAC-SHA256, the
 *     whole HTTP request) is built before the timed phase into one arena;
 *     sending is a write() of pre-built bytes and a reply is parsed in place.
 *   - Every request is distinct (transactionId, notificationId, vendorTxCode),
 *     so the inbox de-duplicates nothing and every 200 is a fresh commit.
 *     createdAt is the build time, well inside the connector's replay window.
 *   - Identifiers are shaped for the PAN guard: every run of digits is at
 *     most 11 long and never joined to another run by a space or a dash, so
 *     no identifier can look like a card number (13-19 Luhn-valid digits) to
 *     pb_pan_scan(), which the engine runs on the raw body.
 *   - Latencies are kept exactly (one uint64 per reply) and sorted at the
 *     end: no histogram error in p99.9 or max.
 *
 * Rejected: libcurl multi (several times the CPU per request of a pre-built
 * write(), and it would share the server's cores); one thread per connection
 * (64 threads contending with the server's on 2 cores); pipelining (a webhook
 * sender never pipelines, and it would hide the per-request latency).
 *
 * Owns: the arena of requests, the connections, the latency array; all freed
 * before exit. Not thread-safe: one thread does everything.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define LG_CONNECTIONS_MAX 4096        /* --connections upper bound */
#define LG_REQUESTS_MAX 5000000u       /* pre-built requests upper bound (~6 GB) */
#define LG_HEADER_MAX 16384            /* a reply header larger than this is an error */
#define LG_BODY_MAX 4096               /* one notification body */
#define LG_REQUEST_MAX (LG_BODY_MAX + 1024)
#define LG_EVENTS 256                  /* epoll_wait batch */
#define LG_TIMER_TAG UINT64_MAX        /* epoll tag of the open-loop timerfd */
#define LG_TICK_MIN_NS 50000u          /* open loop: shortest timer period (50 us) */
#define NS 1000000000ull

/* ---- options ------------------------------------------------------------------------- */

struct options {
    const char *host;                  /* IPv4 address, default 127.0.0.1 */
    int port;                          /* required */
    const char *path;                  /* default /hooks/opayo-shop */
    const char *secret;                /* notify_secret, default sandbox-notify-secret */
    const char *vendor;                /* vendorName, default sandbox */
    unsigned connections;              /* default 64 */
    unsigned long requests;            /* closed loop: total requests */
    double max_seconds;                /* closed loop: stop sending after this (0 = none) */
    double rate;                       /* open loop: requests per second (0 = closed loop) */
    double duration;                   /* open loop: seconds */
    double timeout;                    /* seconds to wait for replies in flight at the end */
    const char *get;                   /* --get PATH mode */
    const char *until_key;             /* --until KEY=N: poll --get until reply.KEY >= N */
    long long until_value;
    double interval_ms;                /* --until: between polls (default 20) */
    const char *label;                 /* copied into the JSON line */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pb_loadgen --port N [options]\n"
            "  closed loop: --connections C --requests N [--max-seconds T]\n"
            "  open loop:   --rate R --duration S [--connections C]\n"
            "  --host ADDR        IPv4 address (default 127.0.0.1)\n"
            "  --path PATH        webhook path (default /hooks/opayo-shop)\n"
            "  --secret S         Opayo notify_secret (default sandbox-notify-secret)\n"
            "  --vendor NAME      vendorName (default sandbox)\n"
            "  --timeout S        wait this long for replies in flight at the end (default 30)\n"
            "  --label TEXT       copied into the JSON result\n"
            "  --get PATH         GET PATH, print the reply body, exit 0 on 200\n"
            "  --until KEY=N      with --get: GET every --interval-ms (20) until the reply's\n"
            "                     top-level integer KEY is >= N or --timeout S passes; print\n"
            "                     {\"reached\":B,\"value\":V,\"t_unix_ms\":T}, exit 0 when reached\n"
            "output: one JSON line on stdout, one human-readable line on stderr\n");
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->path = "/hooks/opayo-shop";
    o->secret = "sandbox-notify-secret";
    o->vendor = "sandbox";
    o->connections = 64;
    o->timeout = 30;
    o->label = "";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "pb_loadgen: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--host"))
            o->host = v;
        else if (!strcmp(a, "--port") && !parse_double(v, 1, 65535, &d))
            o->port = (int)d;
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--secret"))
            o->secret = v;
        else if (!strcmp(a, "--vendor"))
            o->vendor = v;
        else if (!strcmp(a, "--connections") && !parse_double(v, 1, LG_CONNECTIONS_MAX, &d))
            o->connections = (unsigned)d;
        else if (!strcmp(a, "--requests") && !parse_double(v, 1, LG_REQUESTS_MAX, &d))
            o->requests = (unsigned long)d;
        else if (!strcmp(a, "--max-seconds") && !parse_double(v, 0, 86400, &d))
            o->max_seconds = d;
        else if (!strcmp(a, "--rate") && !parse_double(v, 0.001, 10000000, &d))
            o->rate = d;
        else if (!strcmp(a, "--duration") && !parse_double(v, 0.001, 86400, &d))
            o->duration = d;
        else if (!strcmp(a, "--timeout") && !parse_double(v, 0.001, 3600, &d))
            o->timeout = d;
        else if (!strcmp(a, "--get"))
            o->get = v;
        else if (!strcmp(a, "--until") && strchr(v, '=') && strchr(v, '=') > v) {
            char *end;
            o->until_key = strndup(v, (size_t)(strchr(v, '=') - v));
            o->until_value = strtoll(strchr(v, '=') + 1, &end, 10);
            if (*end || !o->until_key) {
                fprintf(stderr, "pb_loadgen: --until wants KEY=INTEGER, got %s\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--interval-ms") && !parse_double(v, 1, 60000, &d))
            o->interval_ms = d;
        else if (!strcmp(a, "--label"))
            o->label = v;
        else {
            fprintf(stderr, "pb_loadgen: bad option or value: %s %s\n", a, v);
            return -1;
        }
    }
    if (!o->port) {
        fprintf(stderr, "pb_loadgen: --port is required\n");
        return -1;
    }
    if (o->get)
        return 0;
    if (o->rate > 0) {
        double n = o->rate * o->duration;
        if (o->duration <= 0 || o->requests) {
            fprintf(stderr, "pb_loadgen: open loop takes --rate and --duration, not --requests\n");
            return -1;
        }
        if (n < 1 || n > LG_REQUESTS_MAX) {
            fprintf(stderr, "pb_loadgen: rate x duration must be 1..%u requests\n", LG_REQUESTS_MAX);
            return -1;
        }
        o->requests = (unsigned long)(n + 0.5);
    } else if (!o->requests) {
        fprintf(stderr, "pb_loadgen: give --requests N (closed loop) or --rate R --duration S\n");
        return -1;
    }
    if (o->connections > o->requests)
        o->connections = (unsigned)o->requests;
    return 0;
}

/* ---- clocks ---------------------------------------------------------------------------- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the pre-built requests ------------------------------------------------------------ */

struct request_set {
    char *arena;                       /* owned: every request back to back */
    size_t *offset;                    /* owned: n + 1 offsets into arena */
    size_t n;
    size_t body_bytes;                 /* average body length, for the report */
};

static const char *const first_names[] = {"Ann", "Bob", "Chloe", "Dieter", "Eve", "Farah",
                                          "Gus", "Hana", "Ivan", "Jo", "Kim", "Luca"};
static const char *const last_names[] = {"Smith", "Jones", "Martin", "Braun", "Clark", "Khan",
                                         "Moreau", "Sato", "Petrov", "Walker", "Lee", "Rossi"};
static const char *const cities[] = {"London", "Leeds", "Paris", "Berlin", "Boston", "York"};

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A GUID-shaped, upper-case identifier, unique per (run, kind, n): the last
 * group holds n. The first groups are a hash, so identifiers arrive in random
 * order as real GUIDs do (an index on them takes random inserts, not appends).
 * Every group starts with a hex letter, so the longest digit run is 11 (see
 * the essay). */
static void make_guid(char out[37], uint32_t run, unsigned kind, uint64_t n)
{
    uint64_t h = mix64(((uint64_t)run << 32) ^ ((uint64_t)kind << 56) ^ n);
    snprintf(out, 37, "A%07" PRIX64 "-B%03X-4C%02X-D%03X-E%011" PRIX64,
             (uint64_t)(h & 0xfffffffu), (unsigned)((h >> 28) & 0xfffu), kind & 0xffu,
             (unsigned)(run & 0xfffu), (uint64_t)(n & 0xfffffffffffull));
}

static int hmac_hex(const char *secret, const char *body, size_t len, char hex[65])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    static const char digits[] = "0123456789abcdef";
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, mac,
              &mac_len) ||
        mac_len != 32)
        return -1;
    for (unsigned i = 0; i < 32; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 15];
    }
    hex[64] = '\0';
    return 0;
}

static int build_requests(const struct options *o, struct request_set *rs)
{
    char body[LG_BODY_MAX], created[32], notification_id[37], transaction_id[37], card_id[37];
    char sig[65];
    size_t cap, used = 0, body_total = 0;
    uint32_t run;
    struct tm tm;
    time_t now = time(NULL);
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    run = (uint32_t)ts.tv_nsec ^ ((uint32_t)getpid() << 16) ^ (uint32_t)ts.tv_sec;
    gmtime_r(&now, &tm);
    strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
    memset(rs, 0, sizeof(*rs));
    rs->n = o->requests;
    cap = rs->n * 1400 + LG_REQUEST_MAX;
    rs->arena = malloc(cap);
    rs->offset = malloc((rs->n + 1) * sizeof(*rs->offset));
    if (!rs->arena || !rs->offset)
        return -1;
    for (size_t i = 0; i < rs->n; i++) {
        const char *first = first_names[i % 12], *last = last_names[(i / 12) % 12];
        long long amount = 500 + (long long)((i * 7919u) % 24500u);
        int blen, hlen;
        make_guid(notification_id, run, 1, i);
        make_guid(transaction_id, run, 2, i);
        make_guid(card_id, run, 3, i);
        blen = snprintf(
            body, sizeof(body),
            "{\"notificationId\":\"%s\",\"eventType\":\"transaction.completed\","
            "\"createdAt\":\"%s\",\"vendorName\":\"%s\",\"transaction\":{"
            "\"transactionId\":\"%s\",\"transactionType\":\"Payment\",\"status\":\"Ok\","
            "\"statusCode\":\"0000\",\"statusDetail\":\"The Authorisation was Successful.\","
            "\"retrievalReference\":\"R%07zu\",\"bankAuthorisationCode\":\"999777\","
            "\"bankResponseCode\":\"00\","
            "\"amount\":{\"totalAmount\":%lld,\"saleAmount\":%lld,\"surchargeAmount\":0},"
            "\"currency\":\"GBP\",\"avsCvcCheck\":{\"status\":\"AllMatched\",\"address\":"
            "\"Matched\",\"postalCode\":\"Matched\",\"securityCode\":\"Matched\"},"
            "\"paymentMethod\":{\"card\":{\"cardType\":\"Visa\",\"lastFourDigits\":\"0006\","
            "\"expiryDate\":\"1230\",\"cardIdentifier\":\"%s\",\"reusable\":false}},"
            "\"3DSecure\":{\"status\":\"Authenticated\"},"
            "\"vendorTxCode\":\"BENCH-F%06" PRIX32 "-T%zu\",\"description\":\"Bench order T%zu\","
            "\"customerFirstName\":\"%s\",\"customerLastName\":\"%s\","
            "\"customerEmail\":\"%s.%s@example.com\",\"billingAddress\":{\"address1\":"
            "\"88 High Street\",\"city\":\"%s\",\"postalCode\":\"412\",\"country\":\"GB\"},"
            "\"createdAt\":\"%s\"}}",
            notification_id, created, o->vendor, transaction_id, i % 10000000u, amount, amount,
            card_id, run & 0xffffffu, i, i, first, last, first, last, cities[i % 6], created);
        if (blen < 0 || (size_t)blen >= sizeof(body))
            return -1;
        if (hmac_hex(o->secret, body, (size_t)blen, sig))
            return -1;
        if (used + LG_REQUEST_MAX > cap) {
            char *grown;
            cap *= 2;
            if (!(grown = realloc(rs->arena, cap)))
                return -1;
            rs->arena = grown;
        }
        rs->offset[i] = used;
        hlen = snprintf(rs->arena + used, cap - used,
                        "POST %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: pb_loadgen\r\n"
                        "Content-Type: application/json\r\nX-Opayo-Signature: %s\r\n"
                        "X-Opayo-Notification-Id: %s\r\nContent-Length: %d\r\n\r\n",
                        o->path, o->host, o->port, sig, notification_id, blen);
        if (hlen < 0 || (size_t)hlen + (size_t)blen >= cap - used)
            return -1;
        memcpy(rs->arena + used + (size_t)hlen, body, (size_t)blen);
        used += (size_t)hlen + (size_t)blen;
        body_total += (size_t)blen;
    }
    rs->offset[rs->n] = used;
    rs->body_bytes = rs->n ? body_total / rs->n : 0;
    return 0;
}

static void free_requests(struct request_set *rs)
{
    free(rs->arena);
    free(rs->offset);
    memset(rs, 0, sizeof(*rs));
}

/* ---- reply parsing ------------------------------------------------------------------- */

enum parse_result { PARSE_MORE, PARSE_DONE, PARSE_ERROR };

struct reply {
    char head[LG_HEADER_MAX];          /* bytes of the header block (and what followed it) */
    size_t head_len;
    int in_body;                       /* header block complete */
    int status;                        /* HTTP status of the reply */
    int close_after;                   /* the server said Connection: close */
    int chunked;                       /* Transfer-Encoding: chunked */
    long long body_left;               /* Content-Length bytes still to come */
    int chunk_state;                   /* chunked: 0 size line, 1 data, 2 CRLF, 3 trailer */
    long long chunk_left;
    char line[64];                     /* chunked: the size or trailer line so far */
    size_t line_len;
};

static void reply_reset(struct reply *r)
{
    r->head_len = 0;
    r->in_body = 0;
    r->status = 0;
    r->close_after = 0;
    r->chunked = 0;
    r->body_left = 0;
    r->chunk_state = 0;
    r->chunk_left = 0;
    r->line_len = 0;
}

static const char *header_value(const char *head, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    const char *p = memchr(head, '\n', len), *end = head + len;
    while (p && p + 1 < end) {
        p++;
        if ((size_t)(end - p) > nlen && !strncasecmp(p, name, nlen) && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            return v;
        }
        p = memchr(p, '\n', (size_t)(end - p));
    }
    return NULL;
}

/* Chunked body bytes; returns PARSE_DONE at the end of the trailer. */
static enum parse_result feed_chunked(struct reply *r, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    while (i < n) {
        if (r->chunk_state == 1) {
            size_t take = (size_t)r->chunk_left < n - i ? (size_t)r->chunk_left : n - i;
            r->chunk_left -= (long long)take;
            i += take;
            if (!r->chunk_left)
                r->chunk_state = 2;
            continue;
        }
        char ch = p[i++];
        if (ch != '\n') {
            if (r->line_len + 1 >= sizeof(r->line))
                return PARSE_ERROR;
            if (ch != '\r')
                r->line[r->line_len++] = ch;
            continue;
        }
        r->line[r->line_len] = '\0';
        if (r->chunk_state == 2) {
            r->chunk_state = 0;
        } else if (r->chunk_state == 0) {
            char *end;
            errno = 0;
            r->chunk_left = strtoll(r->line, &end, 16);
            if (errno || end == r->line || r->chunk_left < 0)
                return PARSE_ERROR;
            r->chunk_state = r->chunk_left ? 1 : 3;
        } else if (r->line_len == 0) { /* empty line ends the trailer */
            *used = i;
            return PARSE_DONE;
        }
        r->line_len = 0;
    }
    *used = i;
    return PARSE_MORE;
}

/* Feed bytes of a reply; *used says how many belonged to it. */
static enum parse_result reply_feed(struct reply *r, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    *used = 0;
    if (!r->in_body) {
        const char *eoh;
        size_t take = n < sizeof(r->head) - r->head_len ? n : sizeof(r->head) - r->head_len;
        size_t old = r->head_len, hdr_len;
        const char *v;
        memcpy(r->head + r->head_len, p, take);
        r->head_len += take;
        eoh = memmem(r->head, r->head_len, "\r\n\r\n", 4);
        if (!eoh)
            return r->head_len == sizeof(r->head) ? PARSE_ERROR : (*used = take, PARSE_MORE);
        hdr_len = (size_t)(eoh - r->head) + 4;
        i = hdr_len - old; /* bytes of p that belonged to the header block */
        if (r->head_len < 12 || strncmp(r->head, "HTTP/1.", 7) != 0)
            return PARSE_ERROR;
        r->status = (int)strtol(r->head + 9, NULL, 10);
        r->in_body = 1;
        if ((v = header_value(r->head, hdr_len, "Connection")) && !strncasecmp(v, "close", 5))
            r->close_after = 1;
        if ((v = header_value(r->head, hdr_len, "Transfer-Encoding")) &&
            !strncasecmp(v, "chunked", 7))
            r->chunked = 1;
        else if ((v = header_value(r->head, hdr_len, "Content-Length")))
            r->body_left = strtoll(v, NULL, 10);
        else if (r->status != 204 && r->status != 304)
            return PARSE_ERROR; /* read-until-close replies are not used by our servers */
        if (r->body_left < 0)
            return PARSE_ERROR;
    }
    if (r->chunked) {
        size_t u = 0;
        enum parse_result pr = feed_chunked(r, p + i, n - i, &u);
        *used = i + u;
        return pr;
    }
    {
        size_t take = (size_t)r->body_left < n - i ? (size_t)r->body_left : n - i;
        r->body_left -= (long long)take;
        *used = i + take;
    }
    return r->body_left ? PARSE_MORE : PARSE_DONE;
}

/* ---- connections --------------------------------------------------------------------- */

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_IDLE, CONN_BUSY };

struct conn {
    int fd;                            /* -1 when down */
    enum conn_state state;
    size_t req;                        /* index of the request in flight */
    size_t written;                    /* bytes of it written so far */
    int want_out;                      /* EPOLLOUT is registered */
    uint64_t t_start;                  /* latency origin: scheduled (open) or send (closed) time */
    struct reply reply;                /* the reply being parsed */
};

struct run {
    const struct options *o;
    struct request_set rs;
    struct conn *conns;
    int ep;                            /* epoll fd */
    int timer;                         /* open loop timerfd, -1 in closed loop */
    struct sockaddr_in addr;
    size_t next;                       /* next request to send */
    size_t in_flight;
    uint64_t t0;                       /* monotonic ns of the first send */
    uint64_t t0_wall_ms;
    uint64_t t_last_reply;             /* monotonic ns of the last reply */
    uint64_t send_deadline;            /* closed loop with --max-seconds: stop sending after */
    uint64_t interval_ns;              /* open loop: 1e9 / rate */
    uint64_t *lat;                     /* owned: latency of each 200, ns */
    size_t n_ok;
    size_t n_replies;
    size_t n_non200;
    size_t n_io_errors;                /* connection lost or bad reply while a request was in flight */
    size_t n_timeouts;
    size_t n_reconnects;
    size_t max_backlog;                /* open loop: most requests due but not yet sent */
    size_t n_connect_failures;         /* connects refused or failed after the start */
    int stop_sending;                  /* the server is gone: send nothing more */
    unsigned status_count[600];        /* replies by status code */
};

static int set_events(struct run *r, struct conn *c, int want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.u64 = (uint64_t)(c - r->conns)};
    if (c->want_out == want_out)
        return 0;
    c->want_out = want_out;
    return epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct run *r, struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = CONN_DOWN;
    c->want_out = 0;
}

static int conn_open(struct run *r, struct conn *c)
{
    int one = 1, fd;
    struct epoll_event ev;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->want_out = 1;
    c->state = CONN_CONNECTING;
    reply_reset(&c->reply);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u64 = (uint64_t)(c - r->conns);
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev)) {
        close(fd);
        c->fd = -1;
        c->state = CONN_DOWN;
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&r->addr, sizeof(r->addr)) && errno != EINPROGRESS) {
        conn_close(r, c);
        return -1;
    }
    return 0;
}

/* Write what is left of the request in flight. */
static void conn_write(struct run *r, struct conn *c)
{
    const char *req = r->rs.arena + r->rs.offset[c->req];
    size_t len = r->rs.offset[c->req + 1] - r->rs.offset[c->req];
    while (c->written < len) {
        ssize_t w = write(c->fd, req + c->written, len - c->written);
        if (w > 0) {
            c->written += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(r, c, 1);
            return;
        }
        /* the reply (or its absence) will tell; a write error surfaces as EPOLLERR/HUP */
        return;
    }
    set_events(r, c, 0);
}

static void conn_send(struct run *r, struct conn *c, size_t req, uint64_t t_start)
{
    c->req = req;
    c->written = 0;
    c->t_start = t_start;
    c->state = CONN_BUSY;
    reply_reset(&c->reply);
    r->in_flight++;
    conn_write(r, c);
}

/* A request in flight failed at the transport level. */
static void conn_fail(struct run *r, struct conn *c)
{
    if (c->state == CONN_BUSY) {
        r->n_io_errors++;
        r->in_flight--;
    }
    conn_close(r, c);
}

/* ---- scheduling ---------------------------------------------------------------------- */

static int sending_allowed(struct run *r, uint64_t now)
{
    if (r->next >= r->rs.n || r->stop_sending)
        return 0;
    return !r->send_deadline || now < r->send_deadline;
}

static uint64_t scheduled_at(struct run *r, size_t i)
{
    return r->t0 + (uint64_t)i * r->interval_ns;
}

/* Open loop: one periodic timer for the whole run (no re-arming syscall per
 * request). Its period is the send interval, but at least LG_TICK_MIN_NS: at
 * high rates each tick sends every request that fell due since the last one,
 * and the few microseconds of lateness are charged to the latency. */
static int arm_timer(struct run *r, int on)
{
    struct itimerspec its;
    uint64_t period = r->interval_ns > LG_TICK_MIN_NS ? r->interval_ns : LG_TICK_MIN_NS;
    memset(&its, 0, sizeof(its));
    if (on) {
        its.it_value.tv_sec = (time_t)(r->t0 / NS);
        its.it_value.tv_nsec = (long)(r->t0 % NS);
        its.it_interval.tv_sec = (time_t)(period / NS);
        its.it_interval.tv_nsec = (long)(period % NS);
    }
    return timerfd_settime(r->timer, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Open loop: send every due request on an idle connection, oldest first. */
static void dispatch_due(struct run *r)
{
    uint64_t now = mono_ns();
    size_t backlog;
    if (r->stop_sending)
        return;
    for (unsigned i = 0; i < r->o->connections && r->next < r->rs.n; i++) {
        struct conn *c = &r->conns[i];
        if (scheduled_at(r, r->next) > now)
            break;
        if (c->state == CONN_DOWN && conn_open(r, c) == 0)
            r->n_reconnects++;
        if (c->state != CONN_IDLE)
            continue;
        conn_send(r, c, r->next, scheduled_at(r, r->next));
        r->next++;
    }
    backlog = 0;
    if (r->next < r->rs.n && scheduled_at(r, r->next) <= now)
        backlog = (size_t)((now - scheduled_at(r, r->next)) / r->interval_ns) + 1;
    if (backlog > r->max_backlog)
        r->max_backlog = backlog;
    if (r->next >= r->rs.n)
        arm_timer(r, 0);
}

static void on_reply(struct run *r, struct conn *c)
{
    uint64_t now = mono_ns();
    int st = c->reply.status;
    r->in_flight--;
    r->n_replies++;
    r->t_last_reply = now;
    if (st >= 0 && st < 600)
        r->status_count[st]++;
    if (st == 200)
        r->lat[r->n_ok++] = now - c->t_start;
    else
        r->n_non200++;
    c->state = CONN_IDLE;
    if (c->reply.close_after) {
        conn_close(r, c);
        if (r->timer < 0 && sending_allowed(r, now) && conn_open(r, c) == 0)
            r->n_reconnects++;
        return;
    }
    if (r->timer < 0) {
        if (sending_allowed(r, now)) {
            conn_send(r, c, r->next, mono_ns());
            r->next++;
        }
    } else {
        dispatch_due(r);
    }
}

static void on_readable(struct run *r, struct conn *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        size_t off = 0;
        if (n == 0) { /* the server closed: fine when idle, a failure when busy */
            conn_fail(r, c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_fail(r, c);
            return;
        }
        while (off < (size_t)n) {
            size_t used;
            enum parse_result pr;
            if (c->state != CONN_BUSY) { /* bytes nobody asked for */
                conn_fail(r, c);
                return;
            }
            pr = reply_feed(&c->reply, buf + off, (size_t)n - off, &used);
            off += used;
            if (pr == PARSE_ERROR) {
                conn_fail(r, c);
                return;
            }
            if (pr == PARSE_MORE)
                break;
            on_reply(r, c);
            if (c->fd < 0)
                return;
        }
        if ((size_t)n < sizeof(buf))
            return;
    }
}

static void on_event(struct run *r, struct conn *c, uint32_t events)
{
    if (c->fd < 0)
        return;
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if ((events & (EPOLLERR | EPOLLHUP)) ||
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
            conn_close(r, c);
            if (r->t0 && ++r->n_connect_failures > 10u * r->o->connections &&
                !r->stop_sending) {
                fprintf(stderr, "pb_loadgen: the server stopped accepting connections; "
                                "sending stops\n");
                r->stop_sending = 1;
            }
            return;
        }
        if (events & EPOLLOUT) {
            c->state = CONN_IDLE;
            set_events(r, c, 0);
            if (r->timer < 0 && r->t0 && sending_allowed(r, mono_ns())) {
                conn_send(r, c, r->next, mono_ns());
                r->next++;
            }
        }
        return;
    }
    if (events & EPOLLIN) {
        on_readable(r, c);
        if (c->fd < 0)
            return;
    }
    if (events & (EPOLLERR | EPOLLHUP)) {
        conn_fail(r, c);
        return;
    }
    if ((events & EPOLLOUT) && c->state == CONN_BUSY)
        conn_write(r, c);
}

/* ---- results ------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const uint64_t *v, size_t n, double p)
{
    size_t k;
    if (!n)
        return 0;
    k = (size_t)(p * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)v[k - 1] / 1e6;
}

static void report(struct run *r)
{
    const struct options *o = r->o;
    double elapsed = r->t0 && r->t_last_reply > r->t0 ? (double)(r->t_last_reply - r->t0) / 1e9 : 0;
    double mean = 0;
    size_t failed = r->n_non200 + r->n_io_errors + r->n_timeouts;
    char statuses[1024];
    size_t sl = 0;
    int first = 1;

    qsort(r->lat, r->n_ok, sizeof(*r->lat), cmp_u64);
    for (size_t i = 0; i < r->n_ok; i++)
        mean += (double)r->lat[i];
    mean = r->n_ok ? mean / (double)r->n_ok / 1e6 : 0;
    statuses[0] = '\0';
    for (int s = 0; s < 600; s++) {
        if (!r->status_count[s])
            continue;
        sl += (size_t)snprintf(statuses + sl, sizeof(statuses) - sl, "%s\"%d\":%u",
                               first ? "" : ",", s, r->status_count[s]);
        if (sl >= sizeof(statuses))
            sl = sizeof(statuses) - 1;
        first = 0;
    }
    printf("{\"tool\":\"pb_loadgen\",\"label\":\"%s\",\"mode\":\"%s\",\"connections\":%u,"
           "\"requests_planned\":%zu,\"requests_sent\":%zu,\"ok\":%zu,\"non_200\":%zu,"
           "\"io_errors\":%zu,\"timeouts\":%zu,\"failed\":%zu,\"reconnects\":%zu,"
           "\"statuses\":{%s},\"body_bytes\":%zu,\"elapsed_s\":%.3f,\"acks_per_s\":%.1f,"
           "\"offered_rate\":%.1f,\"achieved_rate\":%.1f,\"max_backlog\":%zu,"
           "\"t_first_send_unix_ms\":%" PRIu64 ",\"t_last_reply_unix_ms\":%" PRIu64 ","
           "\"latency_ms\":{\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
           "\"p999\":%.3f,\"max\":%.3f}}\n",
           o->label, o->rate > 0 ? "open" : "closed", o->connections, r->rs.n, r->next, r->n_ok,
           r->n_non200, r->n_io_errors, r->n_timeouts, failed, r->n_reconnects, statuses,
           r->rs.body_bytes, elapsed, elapsed > 0 ? (double)r->n_ok / elapsed : 0, o->rate,
           elapsed > 0 ? (double)r->n_ok / elapsed : 0, r->max_backlog, r->t0_wall_ms,
           r->t0_wall_ms + (r->t_last_reply > r->t0 ? (r->t_last_reply - r->t0) / 1000000u : 0),
           mean, pct_ms(r->lat, r->n_ok, 0.50), pct_ms(r->lat, r->n_ok, 0.90),
           pct_ms(r->lat, r->n_ok, 0.99), pct_ms(r->lat, r->n_ok, 0.999),
           pct_ms(r->lat, r->n_ok, 1.0));
    fflush(stdout);
    fprintf(stderr,
            "pb_loadgen%s%s%s: %s loop, %u conns, sent %zu, ok %zu, failed %zu (non-200 %zu, io %zu, "
            "timeout %zu) in %.2f s = %.0f acks/s%s; latency ms p50 %.2f p90 %.2f p99 %.2f "
            "p99.9 %.2f max %.2f\n",
            o->label[0] ? " [" : "", o->label, o->label[0] ? "]" : "", o->rate > 0 ? "open" : "closed",
            o->connections, r->next, r->n_ok, failed, r->n_non200, r->n_io_errors, r->n_timeouts,
            elapsed, elapsed > 0 ? (double)r->n_ok / elapsed : 0,
            o->rate > 0 ? " (offered rate shown in JSON)" : "", pct_ms(r->lat, r->n_ok, 0.50),
            pct_ms(r->lat, r->n_ok, 0.90), pct_ms(r->lat, r->n_ok, 0.99),
            pct_ms(r->lat, r->n_ok, 0.999), pct_ms(r->lat, r->n_ok, 1.0));
}

/* ---- the run ------------------------------------------------------------------------- */

static int run_load(const struct options *o)
{
    struct run r;
    struct epoll_event evs[LG_EVENTS];
    uint64_t deadline, t_build;
    size_t failed;
    int connected = 0;

    memset(&r, 0, sizeof(r));
    r.o = o;
    r.timer = -1;
    r.addr.sin_family = AF_INET;
    r.addr.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &r.addr.sin_addr) != 1) {
        fprintf(stderr, "pb_loadgen: --host must be an IPv4 address\n");
        return 2;
    }
    t_build = mono_ns();
    if (build_requests(o, &r.rs) || !(r.lat = malloc(r.rs.n * sizeof(*r.lat))) ||
        !(r.conns = calloc(o->connections, sizeof(*r.conns)))) {
        fprintf(stderr, "pb_loadgen: out of memory building %lu requests\n", o->requests);
        free_requests(&r.rs);
        free(r.lat);
        return 2;
    }
    fprintf(stderr, "pb_loadgen: built %zu signed requests (%zu-byte bodies) in %.2f s\n", r.rs.n,
            r.rs.body_bytes, (double)(mono_ns() - t_build) / 1e9);
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    for (unsigned i = 0; i < o->connections; i++) {
        r.conns[i].fd = -1;
        if (conn_open(&r, &r.conns[i])) {
            fprintf(stderr, "pb_loadgen: cannot connect to %s:%d: %s\n", o->host, o->port,
                    strerror(errno));
            return 2;
        }
    }
    /* establish every connection before the clock starts */
    deadline = mono_ns() + 5 * NS;
    while (connected < (int)o->connections && mono_ns() < deadline) {
        int n = epoll_wait(r.ep, evs, LG_EVENTS, 100);
        for (int i = 0; i < n; i++)
            on_event(&r, &r.conns[evs[i].data.u64], evs[i].events);
        connected = 0;
        for (unsigned i = 0; i < o->connections; i++)
            connected += r.conns[i].state == CONN_IDLE;
        for (unsigned i = 0; i < o->connections; i++)
            if (r.conns[i].state == CONN_DOWN) {
                fprintf(stderr, "pb_loadgen: cannot connect to %s:%d\n", o->host, o->port);
                return 2;
            }
    }
    if (connected < (int)o->connections) {
        fprintf(stderr, "pb_loadgen: only %d of %u connections came up\n", connected,
                o->connections);
        return 2;
    }

    r.t0 = mono_ns();
    r.t0_wall_ms = wall_ms();
    if (o->rate > 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LG_TIMER_TAG};
        r.interval_ns = (uint64_t)(1e9 / o->rate);
        if (!r.interval_ns)
            r.interval_ns = 1;
        r.timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (r.timer < 0 || epoll_ctl(r.ep, EPOLL_CTL_ADD, r.timer, &ev) || arm_timer(&r, 1)) {
            fprintf(stderr, "pb_loadgen: timerfd: %s\n", strerror(errno));
            return 2;
        }
        dispatch_due(&r);
    } else {
        if (o->max_seconds > 0)
            r.send_deadline = r.t0 + (uint64_t)(o->max_seconds * 1e9);
        for (unsigned i = 0; i < o->connections && r.next < r.rs.n; i++) {
            conn_send(&r, &r.conns[i], r.next, mono_ns());
            r.next++;
        }
    }

    /* run until everything was sent and answered, or the final timeout */
    deadline = 0;
    for (;;) {
        uint64_t now = mono_ns();
        int n, wait_ms = 100;
        if (!sending_allowed(&r, now) && r.timer < 0 && !deadline)
            deadline = now + (uint64_t)(o->timeout * 1e9);
        if (r.timer >= 0 && r.next >= r.rs.n && !deadline)
            deadline = now + (uint64_t)(o->timeout * 1e9);
        if (r.timer >= 0 && r.stop_sending && !deadline)
            deadline = now + (uint64_t)(o->timeout * 1e9);
        if ((r.next >= r.rs.n || !sending_allowed(&r, now)) && r.in_flight == 0)
            break;
        if (deadline && now >= deadline)
            break;
        n = epoll_wait(r.ep, evs, LG_EVENTS, wait_ms);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == LG_TIMER_TAG) {
                uint64_t expirations;
                if (read(r.timer, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
                    break;
                dispatch_due(&r);
                continue;
            }
            on_event(&r, &r.conns[evs[i].data.u64], evs[i].events);
        }
        if (r.timer >= 0) {
            /* a connection that dropped while idle is reopened on the next dispatch */
            if (r.next < r.rs.n && scheduled_at(&r, r.next) <= mono_ns())
                dispatch_due(&r);
        } else if (sending_allowed(&r, mono_ns())) {
            for (unsigned i = 0; i < o->connections && sending_allowed(&r, mono_ns()); i++) {
                struct conn *c = &r.conns[i];
                if (c->state == CONN_DOWN && conn_open(&r, c) == 0)
                    r.n_reconnects++;
            }
        }
    }
    r.n_timeouts = r.in_flight;
    report(&r);
    failed = r.n_non200 + r.n_io_errors + r.n_timeouts;
    for (unsigned i = 0; i < o->connections; i++)
        conn_close(&r, &r.conns[i]);
    if (r.timer >= 0)
        close(r.timer);
    close(r.ep);
    free(r.conns);
    free(r.lat);
    free_requests(&r.rs);
    return failed || r.n_ok == 0 ? 1 : 0;
}

/* ---- --get ---------------------------------------------------------------------------- */

/* GET o->get; *body_out (malloc'ed, de-chunked) is the reply body or NULL.
 * Returns the HTTP status, 0 when there was no reply, -1 on a local error. */
static int fetch(const struct options *o, char **buf_out, char **body_out)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    char req[1024], *buf = NULL, *body;
    size_t len = 0, cap = 0;
    int fd, n, status;
    struct timeval tv = {.tv_sec = 10};

    *buf_out = NULL;
    *body_out = NULL;

    if (inet_pton(AF_INET, o->host, &addr.sin_addr) != 1)
        return -1;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
        close(fd);
        return -1;
    }
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                 o->get, o->host, o->port);
    if (n < 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t got;
        if (len + 4096 + 1 > cap) {
            char *grown = realloc(buf, cap = cap ? cap * 2 : 65536);
            if (!grown) {
                free(buf);
                close(fd);
                return -1;
            }
            buf = grown;
        }
        got = read(fd, buf + len, cap - len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    if (!buf)
        return -1;
    buf[len] = '\0';
    body = strstr(buf, "\r\n\r\n");
    status = len > 12 && !strncmp(buf, "HTTP/1.", 7) ? (int)strtol(buf + 9, NULL, 10) : 0;
    if (body) {
        /* a chunked reply is de-chunked in place */
        const char *te = header_value(buf, (size_t)(body - buf) + 2, "Transfer-Encoding");
        body += 4;
        if (te && !strncasecmp(te, "chunked", 7)) {
            char *in = body, *out = body;
            for (;;) {
                char *end;
                long long sz = strtoll(in, &end, 16);
                char *nl = strstr(end, "\r\n");
                if (sz <= 0 || !nl)
                    break;
                memmove(out, nl + 2, (size_t)sz);
                out += sz;
                in = nl + 2 + sz + 2;
                if (in > buf + len)
                    break;
            }
            *out = '\0';
        }
    }
    *buf_out = buf;
    *body_out = body;
    return status;
}

static long long now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --until: the reply's top-level "KEY": integer, polled in this one process
 * (a shell loop of curl/date/awk per poll cost the machine a few % of CPU
 * during scenario 4 and measured the end only to 100 ms) */
static int run_until(const struct options *o)
{
    char pat[256];
    long long value = -1, deadline = now_unix_ms() + (long long)(o->timeout * 1000);
    double interval = o->interval_ms > 0 ? o->interval_ms : 20;
    snprintf(pat, sizeof(pat), "\"%s\":", o->until_key);
    for (;;) {
        char *buf = NULL, *body = NULL, *at;
        int status = fetch(o, &buf, &body);
        long long t = now_unix_ms();
        if (status == 200 && body && (at = strstr(body, pat)) != NULL)
            value = strtoll(at + strlen(pat), NULL, 10);
        free(buf);
        if (value >= o->until_value || t >= deadline) {
            printf("{\"reached\":%s,\"value\":%lld,\"t_unix_ms\":%lld}\n",
                   value >= o->until_value ? "true" : "false", value, t);
            return value >= o->until_value ? 0 : 1;
        }
        usleep((useconds_t)(interval * 1000));
    }
}

static int run_get(const struct options *o)
{
    char *buf = NULL, *body = NULL;
    int status;
    if (o->until_key)
        return run_until(o);
    status = fetch(o, &buf, &body);
    if (status < 0)
        return 2;
    if (body)
        fputs(body, stdout);
    free(buf);
    return status == 200 ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct options o;
    signal(SIGPIPE, SIG_IGN);
    if (parse_options(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    return o.get ? run_get(&o) : run_load(&o);
}
