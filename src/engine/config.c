/*
 * engine/config.c: load paybridge.yaml (see config.h and docs/configuration.md).
 *
 * The file is read into a jansson tree with line numbers (core/yamldoc.h);
 * each section is checked by a small table-driven walker that reports unknown
 * keys and wrong types at their line, and carries on. Connections are then
 * created from the connector registry and initialised (which validates their
 * settings); flows are loaded last, because they name connections.
 */
#include "engine/config.h"
#include "reconcile/reconcile.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/log.h"
#include "core/yamldoc.h"

struct ctx {
    struct pb_yamldoc *doc;
    struct pb_diags *d;
    const char *file;
    int errors;
};

static int line_of(struct ctx *c, const json_t *node)
{
    return node ? pb_yamldoc_line(c->doc, node) : 0;
}

#define ERR(c, node, ...)                                                                          \
    do {                                                                                           \
        pb_diags_add((c)->d, (c)->file, line_of((c), (node)), __VA_ARGS__);                        \
        (c)->errors++;                                                                             \
    } while (0)

static int check_keys(struct ctx *c, json_t *obj, const char *section, const char *const *allowed)
{
    const char *k;
    json_t *v;
    int bad = 0;
    json_object_foreach(obj, k, v)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                ok = 1;
        if (!ok) {
            char list[512] = "";
            size_t n = 0;
            for (const char *const *a = allowed; *a; a++)
                n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", n ? ", " : "", *a);
            ERR(c, v, "%s: unknown key \"%s\" (allowed: %s)", section, k, list);
            bad++;
        }
    }
    return bad;
}

static long long get_int(struct ctx *c, json_t *obj, const char *key, const char *section,
                         long long def, long long min, long long max)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return def;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        ERR(c, v, "%s.%s: must be an integer between %lld and %lld", section, key, min, max);
        return def;
    }
    return json_integer_value(v);
}

static const char *get_str(struct ctx *c, json_t *obj, const char *key, const char *section,
                           const char *def)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return def;
    if (!json_is_string(v)) {
        ERR(c, v, "%s.%s: must be a string", section, key);
        return def;
    }
    return json_string_value(v);
}

enum pb_rc pb_config_secret_key(const char *key_file, unsigned char key[32], struct pb_err *err)
{
    return pb_secret_key_load(key_file, key, err);
}

enum pb_rc pb_config_secret_resolve(const char *value, const unsigned char *key, int have_key,
                                    char **out, int *plain, struct pb_err *err)
{
    *plain = 0;
    *out = NULL;
    if (strncmp(value, "enc:", 4) == 0) {
        if (!have_key)
            return pb_err_set(err, PB_ERR_CONFIG,
                              "a sealed secret needs the secret key: set PAYBRIDGE_SECRET_KEY or "
                              "secrets.key_file");
        return pb_secret_open(key, value + 4, out, err);
    }
    if (strncmp(value, "env:", 4) == 0) {
        const char *v = getenv(value + 4);
        if (!v)
            return pb_err_set(err, PB_ERR_CONFIG, "environment variable %s is not set", value + 4);
        *out = strdup(v);
        return *out ? PB_OK : PB_ERR_NOMEM;
    }
    *plain = 1;
    *out = strdup(value);
    return *out ? PB_OK : PB_ERR_NOMEM;
}

static void parse_listen(struct ctx *c, struct pb_config *cfg, json_t *v)
{
    const char *s = json_string_value(v);
    const char *colon = s ? strrchr(s, ':') : NULL;
    char *end;
    long port;
    if (!colon) {
        ERR(c, v, "server.listen: expected \"HOST:PORT\", e.g. \"127.0.0.1:8080\"");
        return;
    }
    port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        ERR(c, v, "server.listen: port must be 0-65535");
        return;
    }
    free(cfg->listen_addr);
    cfg->listen_addr = strndup(s, (size_t)(colon - s));
    cfg->listen_port = (int)port;
}

static char *resolve_path(const char *config_path, const char *rel)
{
    char *out;
    const char *slash;
    if (rel[0] == '/' || !(slash = strrchr(config_path, '/')))
        return strdup(rel);
    if (asprintf(&out, "%.*s/%s", (int)(slash - config_path), config_path, rel) < 0)
        return NULL;
    return out;
}

static void load_connection(struct ctx *c, struct pb_config *cfg, const char *name, json_t *obj,
                            const unsigned char *key, int have_key, int init)
{
    static const char *const keys[] = {"connector", "settings", "secrets", "retry", "rate_limit",
                                       "poll_interval_s", "status_webhook", "reconcile", NULL};
    static const char *const retry_keys[] = {"base_ms", "cap_ms", "max_attempts", NULL};
    static const char *const rl_keys[] = {"per_minute", "per_day", "concurrent", "max_wait_ms", NULL};
    struct pb_conn_entry *e = &cfg->conns[cfg->n_conns];
    char section[128];
    const struct pb_connector_type *type;
    const char *cname;
    json_t *v;
    struct pb_err err = {0};

    snprintf(section, sizeof(section), "connections.%s", name);
    if (!json_is_object(obj)) {
        ERR(c, obj, "%s: must be a mapping with connector, settings, secrets", section);
        return;
    }
    check_keys(c, obj, section, keys);
    if (strlen(name) >= sizeof(e->conn.name) || strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-_") != strlen(name)) {
        ERR(c, obj, "%s: connection names use a-z, 0-9, - and _ (at most 63 characters)", section);
        return;
    }
    cname = get_str(c, obj, "connector", section, NULL);
    if (!cname) {
        ERR(c, obj, "%s: missing \"connector\" (one of: opayo, xero)", section);
        return;
    }
    type = pb_connector_find(cname);
    if (!type) {
        ERR(c, json_object_get(obj, "connector"), "%s.connector: unknown connector \"%s\"", section, cname);
        return;
    }
    memset(e, 0, sizeof(*e));
    e->conn.magic = PB_CONNECTION_MAGIC;
    e->conn.type = type;
    snprintf(e->conn.name, sizeof(e->conn.name), "%s", name);
    v = json_object_get(obj, "settings");
    if (v && !json_is_object(v))
        ERR(c, v, "%s.settings: must be a mapping", section);
    e->conn.settings = json_is_object(v) ? json_deep_copy(v) : json_object();
    e->conn.secrets = json_object();
    v = json_object_get(obj, "secrets");
    if (v && !json_is_object(v))
        ERR(c, v, "%s.secrets: must be a mapping", section);
    if (json_is_object(v)) {
        const char *k;
        json_t *sv;
        json_object_foreach(v, k, sv)
        {
            char *plain = NULL;
            int is_plain;
            if (!json_is_string(sv)) {
                ERR(c, sv, "%s.secrets.%s: must be a string (\"enc:...\", \"env:NAME\" or text)", section, k);
                continue;
            }
            if (pb_config_secret_resolve(json_string_value(sv), key, have_key, &plain, &is_plain, &err)) {
                ERR(c, sv, "%s.secrets.%s: %s", section, k, err.msg);
                continue;
            }
            if (is_plain)
                pb_diags_add(c->d, c->file, line_of(c, sv),
                             "warning: %s.secrets.%s is plain text; seal it with `paybridge secret seal`",
                             section, k);
            json_object_set_new(e->conn.secrets, k, json_string(plain));
            pb_secret_free(plain);
        }
    }
    pb_retry_policy_default(&e->retry);
    v = json_object_get(obj, "retry");
    if (json_is_object(v)) {
        check_keys(c, v, "retry", retry_keys);
        e->retry.base_ms = (uint32_t)get_int(c, v, "base_ms", section, e->retry.base_ms, 1, 3600000);
        e->retry.cap_ms = (uint32_t)get_int(c, v, "cap_ms", section, e->retry.cap_ms, 1, 86400000);
        e->retry.max_attempts = (uint32_t)get_int(c, v, "max_attempts", section, e->retry.max_attempts, 1, 1000);
    } else if (v) {
        ERR(c, v, "%s.retry: must be a mapping with base_ms, cap_ms, max_attempts", section);
    }
    {
        struct pb_ratelimit_config rl = type->default_rate_limit;
        v = json_object_get(obj, "rate_limit");
        if (json_is_object(v)) {
            check_keys(c, v, "rate_limit", rl_keys);
            rl.per_minute = (unsigned)get_int(c, v, "per_minute", section, rl.per_minute, 0, 1000000000);
            rl.per_day = (unsigned)get_int(c, v, "per_day", section, rl.per_day, 0, 1000000000);
            rl.concurrent = (unsigned)get_int(c, v, "concurrent", section, rl.concurrent, 0, 100000);
            rl.max_wait_ms = (unsigned)get_int(c, v, "max_wait_ms", section, rl.max_wait_ms, 0, 3600000);
        } else if (v == json_false() || json_is_null(v)) {
            memset(&rl, 0, sizeof(rl));
        } else if (v) {
            ERR(c, v, "%s.rate_limit: must be a mapping (or false for none)", section);
        }
        if (rl.per_minute || rl.per_day || rl.concurrent) {
            if (pb_ratelimit_new(&rl, &e->conn.limiter, &err))
                ERR(c, obj, "%s.rate_limit: %s", section, err.msg);
        }
    }
    e->poll_interval_s = (long)get_int(c, obj, "poll_interval_s", section, 0, 0, 86400);
    {
        const char *sw = get_str(c, obj, "status_webhook", section, NULL);
        if (sw && strlen(sw) >= sizeof(e->status_webhook))
            ERR(c, json_object_get(obj, "status_webhook"), "%s.status_webhook: name too long", section);
        else if (sw)
            snprintf(e->status_webhook, sizeof(e->status_webhook), "%s", sw);
    }
    if ((v = json_object_get(obj, "reconcile"))) {
        const json_t *bad = NULL;
        pb_err_clear(&err);
        if (pb_reconcile_conf_parse(v, c->file, type->name, &e->reconcile, &bad, &err))
            ERR(c, bad ? bad : v, "%s.%s", section, err.msg);
    }
    if (e->poll_interval_s > 0 && !(type->caps & PB_CAP_POLL))
        ERR(c, json_object_get(obj, "poll_interval_s"),
            "%s.poll_interval_s: the %s connector cannot poll", section, cname);
    cfg->n_conns++;
    if (init) {
        pb_err_clear(&err);
        if (type->init(&e->conn, &err))
            ERR(c, obj, "%s (%s): %s", section, cname, err.msg);
        else
            e->initialised = 1;
    }
}

enum pb_rc pb_config_load(const char *path, int init, struct pb_config **out,
                          struct pb_diags *diags)
{
    static const char *const top_keys[] = {"server", "store", "workers", "claim_batch", "log_level",
                                           "secrets", "admin", "connections", "flows", NULL};
    static const char *const server_keys[] = {"listen", "threads", "max_body", NULL};
    static const char *const admin_keys[] = {"api_keys", "metrics_public", NULL};
    static const char *const secrets_keys[] = {"key_file", NULL};
    struct ctx c = {.d = diags, .file = path};
    struct pb_config *cfg;
    json_t *root, *v;
    unsigned char key[32];
    int have_key = 0;
    struct pb_err err = {0};

    *out = NULL;
    if (pb_yamldoc_load_file(path, &c.doc, diags))
        return PB_ERR_CONFIG;
    root = pb_yamldoc_root(c.doc);
    if (!json_is_object(root)) {
        pb_diags_add(diags, path, 1, "the config must be a YAML mapping (server, store, connections, flows, ...)");
        pb_yamldoc_free(c.doc);
        return PB_ERR_CONFIG;
    }
    cfg = calloc(1, sizeof(*cfg));
    cfg->path = strdup(path);
    cfg->listen_addr = strdup("127.0.0.1");
    cfg->listen_port = 8080;
    cfg->http_threads = 2;
    cfg->max_body = 256 * 1024;
    cfg->workers = 4;
    cfg->claim_batch = 50;
    cfg->log_level = PB_LOG_INFO;
    cfg->admin_keys = json_array();
    check_keys(&c, root, "top level", top_keys);

    v = json_object_get(root, "server");
    if (json_is_object(v)) {
        check_keys(&c, v, "server", server_keys);
        if (json_object_get(v, "listen"))
            parse_listen(&c, cfg, json_object_get(v, "listen"));
        cfg->http_threads = (unsigned)get_int(&c, v, "threads", "server", 2, 1, 64);
        cfg->max_body = (size_t)get_int(&c, v, "max_body", "server", 256 * 1024, 1024, 64 * 1024 * 1024);
    } else if (v) {
        ERR(&c, v, "server: must be a mapping with listen, threads, max_body");
    }
    {
        const char *store = get_str(&c, root, "store", "top level", "sqlite:var/paybridge.db");
        const char *p = strncmp(store, "sqlite:", 7) == 0 ? store + 7 : store;
        char *abs = resolve_path(path, p);
        if (asprintf(&cfg->store_dsn, "sqlite:%s", abs) < 0)
            cfg->store_dsn = NULL;
        free(abs);
    }
    cfg->workers = (unsigned)get_int(&c, root, "workers", "top level", 4, 1, 256);
    cfg->claim_batch = (unsigned)get_int(&c, root, "claim_batch", "top level", 50, 1, 256);
    {
        const char *lvl = get_str(&c, root, "log_level", "top level", "info");
        int l = pb_log_level_parse(lvl);
        if (l < 0)
            ERR(&c, json_object_get(root, "log_level"), "log_level: one of debug, info, warn, error");
        else
            cfg->log_level = l;
    }
    v = json_object_get(root, "secrets");
    if (v && !json_is_object(v))
        ERR(&c, v, "secrets: must be a mapping with key_file");
    {
        const char *kf = json_is_object(v) ? get_str(&c, v, "key_file", "secrets", NULL) : NULL;
        char *kpath = kf && strncmp(kf, "env:", 4) != 0 ? resolve_path(path, kf) : (kf ? strdup(kf) : NULL);
        if (json_is_object(v))
            check_keys(&c, v, "secrets", secrets_keys);
        if (getenv("PAYBRIDGE_SECRET_KEY") || kpath) {
            if (pb_config_secret_key(kpath, key, &err))
                ERR(&c, v, "secrets: %s", err.msg);
            else
                have_key = 1;
        }
        free(kpath);
    }
    v = json_object_get(root, "admin");
    if (json_is_object(v)) {
        json_t *keys = json_object_get(v, "api_keys");
        check_keys(&c, v, "admin", admin_keys);
        if (keys && !json_is_array(keys))
            ERR(&c, keys, "admin.api_keys: must be a list of \"sha256:<64 hex>\" (see `paybridge admin hash-key`)");
        if (json_is_array(keys)) {
            size_t i;
            json_t *k;
            json_array_foreach(keys, i, k)
            {
                const char *s = json_string_value(k);
                if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 71)
                    ERR(&c, k, "admin.api_keys[%zu]: must be \"sha256:<64 hex>\"; hash a key with `paybridge admin hash-key KEY`", i);
                else
                    json_array_append(cfg->admin_keys, k);
            }
        }
        json_t *mp = json_object_get(v, "metrics_public");
        if (mp && !json_is_boolean(mp))
            ERR(&c, mp, "admin.metrics_public: must be true or false");
        cfg->metrics_public = json_is_true(mp);
    } else if (v) {
        ERR(&c, v, "admin: must be a mapping with api_keys, metrics_public");
    }

    v = json_object_get(root, "connections");
    if (!json_is_object(v)) {
        ERR(&c, v ? v : root, "connections: must be a mapping of connection name to {connector, settings, secrets}");
    } else {
        const char *name;
        json_t *obj;
        cfg->conns = calloc(json_object_size(v) + 1, sizeof(*cfg->conns));
        json_object_foreach(v, name, obj)
            load_connection(&c, cfg, name, obj, key, have_key, init);
    }

    cfg->flows = pb_flowset_new();
    v = json_object_get(root, "flows");
    if (v && !json_is_array(v)) {
        ERR(&c, v, "flows: must be a list of flow file paths");
    } else if (json_is_array(v)) {
        size_t i;
        json_t *f;
        json_array_foreach(v, i, f)
        {
            if (!json_is_string(f)) {
                ERR(&c, f, "flows[%zu]: must be a path to a flow YAML file", i);
                continue;
            }
            char *fp = resolve_path(path, json_string_value(f));
            size_t before = diags->n;
            if (pb_flowset_add_file(cfg->flows, fp, diags))
                c.errors += (int)(diags->n - before) ? (int)(diags->n - before) : 1;
            free(fp);
        }
    }
    /* status webhooks name a sink that takes order.status */
    for (size_t i = 0; i < cfg->n_conns; i++) {
        struct pb_conn_entry *src = &cfg->conns[i], *dst;
        if (!src->status_webhook[0])
            continue;
        dst = pb_config_connection(cfg, src->status_webhook);
        if (!dst || !(dst->conn.type->caps & PB_CAP_SINK) ||
            dst->conn.type->max_batch(&dst->conn, "order.status") == 0) {
            pb_diags_add(diags, path, 0,
                         "connections.%s.status_webhook: \"%s\" must be a connection whose connector "
                         "takes order.status (e.g. connector: shopwebhook)",
                         src->conn.name, src->status_webhook);
            c.errors++;
        }
    }
    /* reconcile blocks name an ERP that can read its ledger and post journals */
    for (size_t i = 0; i < cfg->n_conns; i++) {
        struct pb_conn_entry *src = &cfg->conns[i], *erp;
        const struct pb_reconcile_conf *rc = src->reconcile;
        if (!rc)
            continue;
        erp = pb_config_connection(cfg, rc->erp);
        if (!erp) {
            pb_diags_add(diags, path, 0, "connections.%s.reconcile.erp: no connection named \"%s\"",
                         src->conn.name, rc->erp);
            c.errors++;
            continue;
        }
        if (rc->ledger_from_erp && !(erp->conn.type->caps & PB_CAP_LEDGER)) {
            pb_diags_add(diags, path, 0,
                         "connections.%s.reconcile: the %s connector of %s cannot read its ledger "
                         "back; set ledger: paybridge",
                         src->conn.name, erp->conn.type->name, rc->erp);
            c.errors++;
        }
        if (rc->post_journals && !(erp->conn.type->caps & PB_CAP_JOURNAL)) {
            pb_diags_add(diags, path, 0,
                         "connections.%s.reconcile: the %s connector of %s cannot post journals; "
                         "set post_journals: false",
                         src->conn.name, erp->conn.type->name, rc->erp);
            c.errors++;
        }
        if (rc->source == PB_RECONCILE_SOURCE_API && !(src->conn.type->caps & PB_CAP_SETTLEMENT)) {
            pb_diags_add(diags, path, 0,
                         "connections.%s.reconcile.source: the %s connector cannot fetch settlement "
                         "from an API; use source: dir or sftp with a column map",
                         src->conn.name, src->conn.type->name);
            c.errors++;
        }
    }
    /* cross-check flows against connections */
    for (size_t i = 0; i < pb_flowset_count(cfg->flows); i++) {
        const struct pb_flow *fl = pb_flowset_flow(cfg->flows, i);
        struct pb_conn_entry *src = pb_config_connection(cfg, fl->source);
        if (!src) {
            pb_diags_add(diags, fl->file, 1, "flow %s: source connection \"%s\" is not defined in %s",
                         fl->name, fl->source, path);
            c.errors++;
        } else if (!(src->conn.type->caps & PB_CAP_INBOUND) && !(src->conn.type->caps & PB_CAP_POLL)) {
            pb_diags_add(diags, fl->file, 1, "flow %s: source connection \"%s\" (%s) cannot receive events",
                         fl->name, fl->source, src->conn.type->name);
            c.errors++;
        }
        for (size_t s = 0; s < fl->n_steps; s++) {
            const struct pb_flow_step *st = &fl->steps[s];
            struct pb_conn_entry *dst = pb_config_connection(cfg, st->target);
            if (!dst) {
                pb_diags_add(diags, fl->file, st->line,
                             "flow %s step %s: target connection \"%s\" is not defined in %s",
                             fl->name, st->name, st->target, path);
                c.errors++;
            } else if (!(dst->conn.type->caps & PB_CAP_SINK)) {
                pb_diags_add(diags, fl->file, st->line,
                             "flow %s step %s: target connection \"%s\" (%s) is not an ERP sink",
                             fl->name, st->name, st->target, dst->conn.type->name);
                c.errors++;
            } else if (dst->conn.type->max_batch(&dst->conn, st->command) == 0) {
                pb_diags_add(diags, fl->file, st->line,
                             "flow %s step %s: the %s connector has no command \"%s\"",
                             fl->name, st->name, dst->conn.type->name, st->command);
                c.errors++;
            }
        }
    }
    memset(key, 0, sizeof(key));
    pb_yamldoc_free(c.doc);
    if (c.errors) {
        pb_config_free(cfg);
        return PB_ERR_CONFIG;
    }
    *out = cfg;
    return PB_OK;
}

struct pb_conn_entry *pb_config_connection(struct pb_config *cfg, const char *name)
{
    for (size_t i = 0; name && i < cfg->n_conns; i++)
        if (strcmp(cfg->conns[i].conn.name, name) == 0)
            return &cfg->conns[i];
    return NULL;
}

void pb_config_free(struct pb_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n_conns; i++) {
        struct pb_conn_entry *e = &cfg->conns[i];
        if (e->initialised && e->conn.type->destroy)
            e->conn.type->destroy(&e->conn);
        pb_reconcile_conf_free(e->reconcile);
        json_decref(e->conn.settings);
        json_decref(e->conn.secrets);
        pb_ratelimit_free(e->conn.limiter);
    }
    free(cfg->conns);
    pb_flowset_free(cfg->flows);
    json_decref(cfg->admin_keys);
    free(cfg->listen_addr);
    free(cfg->store_dsn);
    free(cfg->path);
    free(cfg);
}
