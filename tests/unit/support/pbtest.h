/*
 * tests/unit/support/pbtest.h: the shared scaffolding of the unit tests
 * (libpbtest, built once by tests/CMakeLists.txt and linked into every
 * tests/unit/test_*.c program).
 *
 * Owns what the connector and sandbox tests used to write again each:
 *   - assert_contains / assert_lacks (cmocka style, failing with the text);
 *   - plain libcurl requests to a loopback server (pbt_http, pbt_call,
 *     pbt_admin) and the emulators' /_sandbox routes (stats, faults);
 *   - starting one emulator on its own pb_httpd, or the in-process sandbox,
 *     with an HTTP client for the connector (struct pbt_env);
 *   - building a struct pb_connection from JSON settings and secrets and
 *     calling init, a call ctx, one sink item;
 *   - a webhook receiver that records what it is sent (struct pbt_receiver)
 *     and a server that answers from a script (struct pbt_script);
 *   - temporary directories, writing and slurping files, HMAC-SHA256 hex.
 *
 * Include it after <cmocka.h>. It may touch only loopback sockets it opens
 * itself and files under the directories a test names; it keeps no state
 * but what the caller passes in.
 */
#ifndef PB_TESTS_PBTEST_H
#define PB_TESTS_PBTEST_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "connectors/connector.h"
#include "core/err.h"
#include "net/http_client.h"
#include "net/httpd.h"
#include "sandbox.h"
#include "sbx.h"

/* ---- assertions ---------------------------------------------------------------------------- */

/* Fails unless `needle` is in `hay` (a NULL hay fails). */
void assert_contains(const char *hay, const char *needle);
/* Fails when `needle` is in `hay` (a NULL hay passes). */
void assert_lacks(const char *hay, const char *needle);

/* ---- HTTP with plain libcurl --------------------------------------------------------------- */

struct pbt_reply {
    long status;            /* HTTP status; -1 when the transfer failed (pbt_http_try) */
    char *body;             /* the body, NUL-terminated; never NULL after a request */
    size_t len;
    char headers[8192];     /* the header lines as received (cut when longer) */
    char content_type[128]; /* "" when none */
    json_t *json;           /* the body parsed as any JSON value, or NULL */
};

struct pbt_http_opts {
    const char *const *headers; /* "Name: value" lines, NULL-terminated; NULL for none */
    const char *userpwd;        /* "user:password" for Basic auth, or NULL */
    long timeout_ms;            /* 0: 10 s */
};

/* One request to http://127.0.0.1:`port``path` (`opts` may be NULL; `body`
 * sent when not NULL). Returns the status, -1 when the transfer failed. */
long pbt_http_try(int port, const char *method, const char *path, const struct pbt_http_opts *opts,
                  const char *body, struct pbt_reply *r);
/* pbt_http_try that fails the test when the transfer fails. */
long pbt_http(int port, const char *method, const char *path, const struct pbt_http_opts *opts,
              const char *body, struct pbt_reply *r);
void pbt_reply_free(struct pbt_reply *r);
/* A reply header's value (name case-insensitive) copied into buf, or NULL. */
const char *pbt_reply_header(const struct pbt_reply *r, const char *name, char *buf, size_t len);

/* One request with these `headers` (NULL-terminated, may be NULL); the
 * transfer must work. Returns the status; *out (may be NULL) the reply as a
 * JSON object or array, or NULL. */
long pbt_call(int port, const char *method, const char *path, const char *const *headers,
              const char *body, json_t **out);
/* pbt_call with Content-Type: application/json: the emulators' /_sandbox routes. */
long pbt_admin(int port, const char *method, const char *path, const char *body, json_t **out);
/* POST path with `body`: must answer 200. */
void pbt_admin_post(int port, const char *path, const char *body);
/* GET /_sandbox/stats: must answer 200 with JSON (caller frees). */
json_t *pbt_stats(int port);
/* One integer of /_sandbox/stats; fails when it is not an integer. */
long long pbt_stat(int port, const char *key);
/* Poll /_sandbox/stats every 10 ms until `key` is 0; fails after `seconds`. */
void pbt_wait_stat_zero(int port, const char *key, int seconds, const char *what);
/* Merge the fault settings `json` into the sandbox's `system`; must pass. */
void pbt_faults(struct pb_sandbox *sb, const char *system, const char *json);

/* ---- an emulator or the sandbox, and a client for the connector ----------------------------- */

struct pbt_env {
    struct pb_sandbox *sb;                 /* pbt_env_sandbox */
    const struct sbx_emulator_type *type;  /* pbt_env_emulator */
    void *emu;                             /* the emulator's state */
    struct pb_httpd *httpd;                /* its server */
    int port;                              /* where the emulator listens */
    struct pb_http_client *http;           /* for the connector's calls */
};

/* curl_global_init, then `type` created from `settings` (taken) on its own
 * pb_httpd (port 0, a thread per connection, max_body 0 = the default),
 * started, and an HTTP client. Returns 0, or -1 with why on stderr. */
int pbt_env_emulator(struct pbt_env *e, const struct sbx_emulator_type *type, json_t *settings,
                     size_t max_body);
/* curl_global_init, pb_sandbox_start(settings) (taken), the port of
 * `system` and an HTTP client. Returns 0, or -1 with why on stderr. */
int pbt_env_sandbox(struct pbt_env *e, const char *system, json_t *settings);
/* Stops what pbt_env_* started, and curl_global_cleanup. */
void pbt_env_stop(struct pbt_env *e);

/* A new HTTP client; fails the test when it cannot be made. */
struct pb_http_client *pbt_http_client(void);

/* ---- connections and calls ----------------------------------------------------------------- */

/* A connection of `type` named `name` with `settings` and `secrets` (both
 * taken; settings may be NULL for an empty object); `extra` (taken, may be
 * NULL) is merged over the settings. init's result into *rc and err. */
struct pb_connection *pbt_connection_try(const struct pb_connector_type *type, const char *name,
                                         json_t *settings, json_t *extra, json_t *secrets,
                                         struct pb_err *err, enum pb_rc *rc);
/* The same; init must pass (the test fails with "init: <message>"). */
struct pb_connection *pbt_connection(const struct pb_connector_type *type, const char *name,
                                     json_t *settings, json_t *extra, json_t *secrets);
/* destroy (when init left a state), the limiter, the JSON, the connection. */
void pbt_connection_free(struct pb_connection *c);
/* "http://127.0.0.1:<port><suffix>" into buf. */
const char *pbt_url(char *buf, size_t len, int port, const char *suffix);

/* A call ctx: this client and trace, `now`, retry_after_s -1. */
struct pb_call_ctx pbt_ctx(struct pb_http_client *http, json_t *trace, time_t now);
/* Fill a sink item (zeroed first): `document` borrowed, `key` the
 * idempotency key. */
void pbt_item(struct pb_sink_item *it, const char *command, json_t *document,
              const char *reference, const char *key, uint32_t attempt);
/* execute() of one item with pbt_ctx(http, trace, now); returns execute's rc. */
enum pb_rc pbt_execute1(struct pb_connection *c, struct pb_http_client *http, json_t *trace,
                        time_t now, struct pb_sink_item *it, struct pb_err *err);

/* ---- a webhook receiver -------------------------------------------------------------------- */

#define PBT_RECEIVED_MAX 256

struct pbt_receiver {
    pthread_mutex_t mu;
    struct pb_httpd *httpd;
    char url[96];                 /* http://127.0.0.1:PORT/hook */
    const char *signature_header; /* the header recorded into signature[] */
    int fail_next;                /* answer 500 to this many more deliveries */
    int n;                        /* deliveries recorded (500s included) */
    char *body[PBT_RECEIVED_MAX]; /* owned, NUL-terminated */
    size_t len[PBT_RECEIVED_MAX];
    char signature[PBT_RECEIVED_MAX][80];
    int answered[PBT_RECEIVED_MAX]; /* the status answered */
    struct pb_http_route routes[2];
};

/* Listen for POST /hook on a loopback port; returns 0 or -1 (on stderr). */
int pbt_receiver_start(struct pbt_receiver *rx, const char *signature_header);
/* Forget what was received, and fail_next. */
void pbt_receiver_clear(struct pbt_receiver *rx);
/* How many deliveries so far. */
int pbt_receiver_count(struct pbt_receiver *rx);
void pbt_receiver_stop(struct pbt_receiver *rx);

/* ---- a server that answers from a script --------------------------------------------------- */

#define PBT_SCRIPT_MAX 8

struct pbt_script {
    pthread_mutex_t lock;
    struct pb_httpd *httpd;
    int port;
    int n, next;                /* replies scripted, replies given */
    int status[PBT_SCRIPT_MAX];
    char *body[PBT_SCRIPT_MAX];
    const char *content_type;   /* of every scripted reply */
    char last_request[8192];    /* the body of the last request */
    struct pb_http_route routes[2];
};

/* Answer every request in turn from the script ("script exhausted", 500,
 * after its end). Fails the test when it cannot listen. */
void pbt_script_start(struct pbt_script *s, const char *content_type);
/* Script one more reply. */
void pbt_script_add(struct pbt_script *s, int status, const char *body);
/* Forget the script (and the replies given). */
void pbt_script_reset(struct pbt_script *s);
void pbt_script_stop(struct pbt_script *s);

/* ---- files --------------------------------------------------------------------------------- */

/* mkdtemp(`dir`), a template ending in XXXXXX; fails the test when it cannot. */
void pbt_tempdir(char *dir);
/* rm -rf `dir`; must succeed. */
void pbt_remove_tree(const char *dir);
/* Write `text` to `path` (or `dir`/`name`); must succeed. */
void pbt_write_file(const char *path, const char *text);
void pbt_write_file_in(const char *dir, const char *name, const char *text);
/* The whole file, NUL-terminated (caller frees), or NULL when it cannot be opened. */
char *pbt_slurp(const char *path);

/* HMAC-SHA256 of `body` with `secret`, as lower-case hex. */
void pbt_hmac_hex(const char *secret, const char *body, size_t len, char out[65]);

#endif
