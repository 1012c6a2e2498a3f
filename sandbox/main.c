/*
 * sandbox/main.c: the paybridge-sandbox program. It turns its command line
 * into the settings object of pb_sandbox_start() (sandbox.h), starts the
 * emulators, tells where they listen, and runs until SIGINT or SIGTERM.
 *
 * Settings are built in this order, later steps winning:
 *   1. --config FILE.json if given, else every linked emulator with defaults;
 *   2. --bind, --SYSTEM-port, --fault SYSTEM:key=value (a flag that names a
 *      system also enables it);
 *   3. --only a,b removes every other system.
 *
 * When listening it prints one JSON line on stdout,
 *   {"bind":"127.0.0.1","pid":1234,"ports":{"xero":41234,"opayo":41235}}
 * and writes the same line to --ports-file through a temporary file and
 * rename(2), so a reader polling for the file never sees half of it.
 *
 * Signals: SIGINT and SIGTERM are blocked before any server thread exists
 * (threads inherit the mask) and taken with sigwait() by the main thread, so
 * shutdown runs in ordinary code, not in a signal handler. SIGPIPE is ignored.
 *
 * Owns: the settings object and the sandbox, both freed before exit.
 * Exit status: 0 after a clean stop, 1 when the sandbox cannot start or the
 * ports file cannot be written, 2 for a usage error.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faults.h"
#include "sandbox.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: paybridge-sandbox [options]\n"
            "\n"
            "Emulates the external systems of paybridge (Xero, Opayo, ...) on loopback\n"
            "HTTP ports, with fault injection, so that paybridge can be tested with no\n"
            "network. Runs until SIGINT or SIGTERM.\n"
            "\n"
            "options:\n"
            "  --bind ADDR            address to listen on (default 127.0.0.1)\n"
            "  --SYSTEM-port N        port of one system, e.g. --xero-port 8701,\n"
            "                         --opayo-port 8702; 0 picks a free port (default)\n"
            "  --config FILE.json     settings file (see below); without it every\n"
            "                         system starts with its defaults\n"
            "  --fault SYSTEM:KEY=VALUE\n"
            "                         inject a fault, repeatable; keys:\n"
            "                           latency_ms, latency_jitter_ms  delay each request\n"
            "                           error_rate 0..1    answer 500/503 (alternating)\n"
            "                           burst_429 N        the next N requests get 429\n"
            "                           retry_after_s N    Retry-After of those 429s\n"
            "                           reset_rate 0..1    drop connections with no reply\n"
            "                           slow_body_ms N     trickle reply bodies over N ms\n"
            "  --ports-file PATH      also write the ports line to PATH (atomically)\n"
            "  --only a,b             start only these systems\n"
            "  --help                 this text\n"
            "\n"
            "systems in this build:");
    for (size_t i = 0; pb_sandbox_system_name(i); i++)
        fprintf(out, " %s", pb_sandbox_system_name(i));
    fprintf(out,
            "\n\n"
            "settings file:\n"
            "  {\"bind\":\"127.0.0.1\",\n"
            "   \"xero\":{\"port\":0, \"enabled\":true, \"faults\":{\"latency_ms\":50},\n"
            "           ...emulator settings, e.g. \"client_id\", \"limits\"...},\n"
            "   \"opayo\":{...}}\n"
            "  A system whose key is absent or has \"enabled\":false is not started.\n"
            "\n"
            "output: one JSON line when listening, e.g.\n"
            "  {\"bind\":\"127.0.0.1\",\"pid\":1234,\"ports\":{\"xero\":41234}}\n"
            "\n"
            "run-time admin routes on every system's port:\n"
            "  GET  /_sandbox/health\n"
            "  GET  /_sandbox/faults     live fault settings and counters\n"
            "  POST /_sandbox/faults     merge a JSON object; {\"reset\":true} clears all\n"
            "  GET  /_sandbox/stats      emulator counters (plus fault counters)\n"
            "  POST /_sandbox/reset      clear the emulator's data\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "paybridge-sandbox: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\ntry 'paybridge-sandbox --help'\n");
    return 2;
}

static int known_system(const char *name, size_t len)
{
    const char *s;
    for (size_t i = 0; (s = pb_sandbox_system_name(i)); i++)
        if (strlen(s) == len && !strncmp(s, name, len))
            return 1;
    return 0;
}

/* settings[name] as an object, created (or turned from false into {}) when needed. */
static json_t *system_conf(json_t *settings, const char *name)
{
    json_t *conf = json_object_get(settings, name);
    if (!json_is_object(conf)) {
        conf = json_object();
        json_object_set_new(settings, name, conf);
    }
    return conf;
}

/* A fault value from text: true/false, an integer, or a decimal. */
static json_t *fault_value(const char *text)
{
    char *end;
    long long n;
    double d;
    if (!strcmp(text, "true"))
        return json_true();
    if (!strcmp(text, "false"))
        return json_false();
    if (!*text)
        return NULL;
    errno = 0;
    n = strtoll(text, &end, 10);
    if (!errno && !*end)
        return json_integer(n);
    errno = 0;
    d = strtod(text, &end);
    if (!errno && !*end)
        return json_real(d);
    return NULL;
}

static int write_ports_file(const char *path, const char *line)
{
    char tmp[4096];
    FILE *f;
    int ok;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp))
        return -1;
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    ok = fprintf(f, "%s\n", line) >= 0;
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* 1 when the first `nlen` characters of `a` name an option (all take a value). */
static int flag_known(const char *a, size_t nlen)
{
    static const char *const fixed[] = {"--bind", "--config", "--ports-file", "--only", "--fault",
                                        NULL};
    for (size_t i = 0; fixed[i]; i++)
        if (strlen(fixed[i]) == nlen && !strncmp(a, fixed[i], nlen))
            return 1;
    return nlen > 7 && !strncmp(a, "--", 2) && !strncmp(a + nlen - 5, "-port", 5) &&
           known_system(a + 2, nlen - 7);
}

/* Value of "--name VALUE" or "--name=VALUE"; advances *i. NULL when missing. */
static const char *flag_value(int argc, char **argv, int *i, const char *eq)
{
    if (eq)
        return eq + 1;
    if (*i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

int main(int argc, char **argv)
{
    json_t *settings = NULL, *flags = json_object();
    const char *config = NULL, *ports_file = NULL, *only = NULL;
    struct pb_sandbox *sb = NULL;
    struct pb_err err = {0};
    sigset_t sigs;
    char *line = NULL;
    json_t *out;
    int sig, rc = 0;
    const char *key;
    /* as the engine does (pb_engine_new): keep freed memory instead of giving
     * it back and faulting it in again for the next request (each Xero PUT
     * parses and frees a batch of 50 documents) */
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    json_t *v;

    if (!flags)
        return 1;
    /* Flags go into `flags` first; they are laid over the config at the end. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '='), *val;
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            json_decref(flags);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0) {
            rc = usage_error("unexpected argument '%s'", a);
            goto out;
        }
        if (!flag_known(a, nlen)) {
            rc = usage_error("unknown option '%s'", a);
            goto out;
        }
        if (!(val = flag_value(argc, argv, &i, eq))) {
            rc = usage_error("%s needs a value", a);
            goto out;
        }
        if (nlen == 6 && !strncmp(a, "--bind", 6)) {
            json_object_set_new(flags, "bind", json_string(val));
        } else if (nlen == 8 && !strncmp(a, "--config", 8)) {
            config = val;
        } else if (nlen == 12 && !strncmp(a, "--ports-file", 12)) {
            ports_file = val;
        } else if (nlen == 6 && !strncmp(a, "--only", 6)) {
            only = val;
        } else if (nlen == 7 && !strncmp(a, "--fault", 7)) {
            const char *colon = strchr(val, ':'), *feq = colon ? strchr(colon, '=') : NULL;
            char sysname[64], fkey[64];
            json_t *fv;
            if (!colon || !feq || colon == val || feq == colon + 1 ||
                (size_t)(colon - val) >= sizeof(sysname) ||
                (size_t)(feq - colon - 1) >= sizeof(fkey)) {
                rc = usage_error("--fault wants SYSTEM:KEY=VALUE, got '%s'", val);
                goto out;
            }
            snprintf(sysname, sizeof(sysname), "%.*s", (int)(colon - val), val);
            snprintf(fkey, sizeof(fkey), "%.*s", (int)(feq - colon - 1), colon + 1);
            if (!known_system(sysname, strlen(sysname))) {
                rc = usage_error("--fault: unknown system '%s'", sysname);
                goto out;
            }
            if (!(fv = fault_value(feq + 1))) {
                rc = usage_error("--fault: '%s' is not a number or true/false", feq + 1);
                goto out;
            }
            {
                struct pb_err ferr = {0};
                json_t *one = json_pack("{s:O}", fkey, fv);
                if (!one || sbx_faults_check(one, &ferr)) {
                    json_decref(one);
                    json_decref(fv);
                    rc = usage_error("--fault: %s", ferr.msg);
                    goto out;
                }
                json_decref(one);
            }
            {
                json_t *conf = system_conf(flags, sysname);
                json_t *faults = json_object_get(conf, "faults");
                if (!faults) {
                    faults = json_object();
                    json_object_set_new(conf, "faults", faults);
                }
                json_object_set_new(faults, fkey, fv);
            }
        } else if (nlen > 7 && !strncmp(a + nlen - 5, "-port", 5) &&
                   known_system(a + 2, nlen - 7)) {
            char sysname[64], *end;
            long port;
            snprintf(sysname, sizeof(sysname), "%.*s", (int)(nlen - 7), a + 2);
            errno = 0;
            port = strtol(val, &end, 10);
            if (errno || !*val || *end || port < 0 || port > 65535) {
                rc = usage_error("port must be a number from 0 to 65535, got '%s'", val);
                goto out;
            }
            json_object_set_new(system_conf(flags, sysname), "port", json_integer(port));
        } else {
            rc = usage_error("unknown option '%s'", a);
            goto out;
        }
    }

    if (config) {
        json_error_t jerr;
        settings = json_load_file(config, 0, &jerr);
        if (!json_is_object(settings)) {
            fprintf(stderr, "paybridge-sandbox: %s: %s\n", config,
                    settings ? "must hold a JSON object" : jerr.text);
            rc = 1;
            goto out;
        }
    } else {
        settings = json_object();
        for (size_t i = 0; pb_sandbox_system_name(i); i++)
            json_object_set_new(settings, pb_sandbox_system_name(i), json_object());
    }
    json_object_foreach(flags, key, v)
    {
        if (!json_is_object(v)) {
            json_object_set(settings, key, v);
            continue;
        }
        json_t *conf = system_conf(settings, key);
        json_t *faults = json_object_get(v, "faults");
        json_t *port = json_object_get(v, "port");
        json_object_del(conf, "enabled");
        if (port)
            json_object_set(conf, "port", port);
        if (faults) {
            json_t *have = json_object_get(conf, "faults");
            if (json_is_object(have))
                json_object_update(have, faults);
            else
                json_object_set(conf, "faults", faults);
        }
    }
    if (only) {
        const char *p = only;
        /* Check the names, then enable those and drop every other system. */
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            if (n && !known_system(p, n)) {
                rc = usage_error("--only: unknown system in '%s'", only);
                goto out;
            }
            p += n + (comma ? 1 : 0);
        }
        for (size_t i = 0; pb_sandbox_system_name(i); i++) {
            const char *name = pb_sandbox_system_name(i);
            size_t n = strlen(name);
            const char *s = only;
            int listed = 0;
            while (*s) {
                const char *comma = strchr(s, ',');
                size_t len = comma ? (size_t)(comma - s) : strlen(s);
                if (len == n && !strncmp(s, name, n))
                    listed = 1;
                s += len + (comma ? 1 : 0);
            }
            if (listed)
                json_object_del(system_conf(settings, name), "enabled");
            else
                json_object_del(settings, name);
        }
    }

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (pb_sandbox_start(settings, &sb, &err)) {
        fprintf(stderr, "paybridge-sandbox: %s\n", err.msg);
        rc = 1;
        goto out;
    }
    {
        json_t *bind = json_object_get(settings, "bind");
        out = json_pack("{s:s,s:I,s:o}", "bind", json_is_string(bind) ? json_string_value(bind)
                                                                      : "127.0.0.1",
                        "pid", (json_int_t)getpid(), "ports", pb_sandbox_ports_json(sb));
    }
    line = out ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    if (!line) {
        rc = 1;
        goto out;
    }
    printf("%s\n", line);
    fflush(stdout);
    if (ports_file && write_ports_file(ports_file, line) != 0) {
        fprintf(stderr, "paybridge-sandbox: cannot write %s: %s\n", ports_file, strerror(errno));
        rc = 1;
        goto out;
    }
    do {
        if (sigwait(&sigs, &sig) != 0)
            break;
    } while (sig != SIGINT && sig != SIGTERM);
    fprintf(stderr, "paybridge-sandbox: signal %d, stopping\n", sig);

out:
    pb_sandbox_stop(sb);
    free(line);
    json_decref(settings);
    json_decref(flags);
    return rc;
}
